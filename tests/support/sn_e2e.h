/* End-to-end harness: `sentinelctl up` on a generated config (embedded redis, broker,
 * nginx, every product role) in a temp dir, the hello-site seeded as the project's
 * repository, plus helpers to push commits, read runs and fetch pages. */
#ifndef SN_E2E_H
#define SN_E2E_H

#include "sn_test.h"

#include <hiredis/hiredis.h>

#include "sentinel/v1/pipeline.pb-c.h"

typedef struct {
    char *dir;    /* temp dir: config, state, clone */
    char *config; /* sentinel.yml */
    char *state;  /* state_dir */
    char *repo;   /* the project's bare repository */
    char *clone;  /* a working clone for pushing commits */
    char *log;    /* sentinelctl up's output */
    char *ns;     /* key namespace */
    int live_port, preview_port, prod_port, prod_preview_port, gateway_port, fake_port;
    int sink_port; /* the webhook receiver (tests/fakes/webhook_sink.py) */
    pid_t up;
    pid_t fake; /* the live-check proxy (tests/fakes/flaky_proxy.py) */
    pid_t sink;
    redisContext *redis;
} sn_e2e_t;

/* Writes the config (@extra appended), starts `sentinelctl up` and waits until the
 * buildpilot, local-deployer and nginx are up. */
bool sn_e2e_start(sn_e2e_t *self, const char *tag, const char *extra_yaml);
/* What a test changes in the generated config. Every string may be NULL. */
typedef struct {
    const char *tag;
    const char *extra_yaml;      /* appended at the end (top-level sections) */
    const char *extra_processes; /* "  - {role: ..., instances: N}\n" lines */
    const char *extra_targets;   /* "  - {name: ..., type: ...}\n" items of `targets:` */
    const char *extra_projects;  /* "  - name: ...\n" items of `projects:` */
    const char *staging_targets; /* the staging environment's list, default
                                    "[hello-staging]" */
} sn_e2e_opts_t;

/* As sn_e2e_start, with @opts. */
bool sn_e2e_start_ex(sn_e2e_t *self, const sn_e2e_opts_t *opts);
/* SIGTERM to the supervisor: returns its exit status (0 expected); removes the dir unless
 * the test failed (SN_E2E_KEEP set). Dumps the log on failure. */
int sn_e2e_stop(sn_e2e_t *self);

/* Writes @text into @path (relative to the clone), commits and pushes to @branch; the
 * post-receive hook tells Sentinel. Returns the new commit's sha (caller frees). */
char *sn_e2e_commit(sn_e2e_t *self, const char *branch, const char *path, const char *text);

/* The newest run of @env for commit @sha (NULL sha: any), waiting up to @timeout_ms for
 * it to exist. Caller frees with sentinel__v1__run__free_unpacked. */
Sentinel__V1__Run *sn_e2e_find_run(sn_e2e_t *self, const char *env, const char *sha,
                                   int timeout_ms);
/* The id of that run (caller frees), or NULL if none appeared within @timeout_ms. */
char *sn_e2e_run_id(sn_e2e_t *self, const char *env, const char *sha, int timeout_ms);
/* Waits until run @run_id is terminal; returns it (caller frees) or NULL on timeout. */
Sentinel__V1__Run *sn_e2e_wait_run(sn_e2e_t *self, const char *run_id, int timeout_ms);
Sentinel__V1__Run *sn_e2e_load_run(sn_e2e_t *self, const char *run_id);

/* API tokens the harness configures: operators "alice" and "bob", viewer "viewer". */
#define SN_E2E_TOKEN_ALICE "alice-e2e-token-0123456789"
#define SN_E2E_TOKEN_BOB "bob-e2e-token-0123456789"
#define SN_E2E_WEBHOOK_SECRET "e2e-webhook-secret-42"

/* GET http://127.0.0.1:@port@path; returns the body (caller frees) and *status, or NULL. */
char *sn_e2e_get(int port, const char *path, long *status);
/* @method (GET/POST) with an optional Bearer @token, JSON @body (may be NULL), extra
 * header @header (may be NULL) and a total @timeout_ms; body returned as sn_e2e_get. */
char *sn_e2e_http(const char *method, int port, const char *path, const char *token,
                  const char *body, const char *header, int timeout_ms, long *status);

/* Runs sentinelctl with @args (a NULL-terminated list after "-c CONFIG"), capturing stdout
 * into *out (caller frees, may be NULL); returns the exit status. */
int sn_e2e_ctl(sn_e2e_t *self, char **out, const char *const *args);

#endif
