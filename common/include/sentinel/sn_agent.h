/* The agent runtime: the loop that runs one role in one process. The runtime owns the
 * process, config, logging, signals, the broker sockets (service worker, rpc client,
 * bus), Redis, leader election, the job threads, heartbeats, the registration in Redis,
 * metrics and shutdown; a role is a static table of optional callbacks (nginx-module
 * style) that only touches its context's accessors.
 *
 * Threads: every callback runs on the loop thread and must not block. Long work runs on
 * a job thread (one per unit of credit) through sn_request_defer; the job function may
 * block (Redis and HTTP calls with their own timeouts) and its result is posted back to
 * the loop, which answers the request. */
#ifndef SN_AGENT_H
#define SN_AGENT_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_metrics.h"

typedef struct sn_ctx sn_ctx_t;         /* the role's view of the runtime */
typedef struct sn_request sn_request_t; /* one service request handed to the role */
typedef struct sn_redis sn_redis_t;
typedef struct sn_ledger sn_ledger_t;
typedef struct sn_journal sn_journal_t;
typedef struct sn_audit sn_audit_t;

typedef enum {
    SN_LEADERSHIP_NONE = 0,  /* every instance serves */
    SN_LEADERSHIP_EXCLUSIVE, /* serves only while it leads */
    SN_LEADERSHIP_DUTY,      /* serves always; on_tick duties only on the leader */
} sn_leadership_t;

typedef struct sn_role {
    const char *name;                 /* "cloudflare-deployer" */
    const char *agent;                /* "BuildPilot" */
    const char *summary;              /* one line for --list-roles */
    const char *const *services;      /* NULL-terminated; "{host}" expands to sn_ctx_host */
    const char *const *subscriptions; /* NULL-terminated bus topic prefixes */
    sn_leadership_t leadership;
    int credit;  /* concurrent requests per service = job threads; default 1 */
    int tick_ms; /* on_tick period; default 1000 */

    /* Creates the role's state. SN_OK or the process exits 1. */
    sn_rc_t (*init)(sn_ctx_t *ctx, void **state);
    /* A bus event matching a subscription (borrowed; valid during the call). */
    void (*on_event)(sn_ctx_t *ctx, void *state, const sn_envelope_t *env);
    /* A request: answer now (sn_request_reply / sn_request_nak) or defer to a job thread.
     * Ownership of @req passes to the role's answer call. */
    void (*on_request)(sn_ctx_t *ctx, void *state, sn_request_t *req);
    /* Called every tick_ms; @is_leader tells whether duties should run. */
    void (*on_tick)(sn_ctx_t *ctx, void *state, bool is_leader);
    /* Leadership changed (elected with @fence, or stepped down with fence 0). */
    void (*on_leadership)(sn_ctx_t *ctx, void *state, bool is_leader, uint64_t fence);
    /* Called once at shutdown after the last job finished or was handed back. */
    void (*destroy)(sn_ctx_t *ctx, void *state);
} sn_role_t;

/* ---- the agent host ------------------------------------------------------------------ */

/* main() of sentinel-agent: `ROLE --config FILE [--instance ID]`, `--list-roles`.
 * @roles is NULL-terminated. Returns the process exit code. */
int sn_agent_main(int argc, char **argv, const sn_role_t *const *roles);

/* ---- context accessors (loop thread unless stated) ------------------------------------ */

const sn_config_t *sn_ctx_config(sn_ctx_t *ctx);
const char *sn_ctx_role(sn_ctx_t *ctx);
const char *sn_ctx_instance(sn_ctx_t *ctx);
/* This process's host name: $SENTINEL_HOST, else gethostname(). Expands "{host}" in
 * service names. */
const char *sn_ctx_host(sn_ctx_t *ctx);
sn_source_t *sn_ctx_source(sn_ctx_t *ctx);   /* any thread */
sn_redis_t *sn_ctx_redis(sn_ctx_t *ctx);     /* any thread */
sn_ledger_t *sn_ctx_ledger(sn_ctx_t *ctx);   /* any thread */
sn_journal_t *sn_ctx_journal(sn_ctx_t *ctx); /* any thread */
sn_metrics_t *sn_ctx_metrics(sn_ctx_t *ctx); /* any thread */
/* The audit chain (thread-safe), or NULL when it could not be opened: a role then performs
 * no side effect (fail closed). Any thread. */
sn_audit_t *sn_ctx_audit(sn_ctx_t *ctx);
bool sn_ctx_is_leader(sn_ctx_t *ctx);
uint64_t sn_ctx_fence(sn_ctx_t *ctx); /* 0 when not leading */
/* True once shutdown began: job functions should finish or hand their job back. Any thread. */
bool sn_ctx_is_stopping(sn_ctx_t *ctx);

/* Publishes a stamped envelope on the bus only (no journal: for hints and markers). */
void sn_ctx_publish(sn_ctx_t *ctx, const sn_envelope_t *env);

/* Calls @service asynchronously; @done runs on the loop thread with the reply envelope
 * (borrowed) or NULL and a NAK reason ("timeout" when the deadline passed locally). */
typedef void(sn_call_done_fn)(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply,
                              const char *nak_reason);
void sn_ctx_call(sn_ctx_t *ctx, const char *service, const sn_envelope_t *env, int deadline_ms,
                 uint32_t attempt, sn_call_done_fn *done, void *arg);

/* ---- requests -------------------------------------------------------------------------- */

const char *sn_request_service(const sn_request_t *req);
const char *sn_request_principal(const sn_request_t *req);
uint32_t sn_request_attempt(const sn_request_t *req);
int64_t sn_request_deadline_ms(const sn_request_t *req); /* absolute, sn_mono_ms clock */
const sn_envelope_t *sn_request_envelope(const sn_request_t *req);

/* Memory that lives as long as @req: for the fields of a reply envelope. Any thread that
 * owns @req at the moment. */
void *sn_request_alloc(sn_request_t *req, size_t size);
char *sn_request_strdup(sn_request_t *req, const char *s);

/* Answers with @reply (borrowed; the runtime stamps source and causation) and frees @req. */
void sn_request_reply(sn_ctx_t *ctx, sn_request_t *req, sn_envelope_t *reply);
/* Refuses with @reason (a protocol NAK reason) and frees @req. */
void sn_request_nak(sn_ctx_t *ctx, sn_request_t *req, const char *reason);

/* A job function: runs on a job thread, may block (with timeouts). Fills @reply (stamped
 * by the runtime afterwards) and returns SN_OK, or returns another code to NAK the request
 * with @nak_reason (static string). Must return soon after sn_ctx_is_stopping(). */
typedef sn_rc_t(sn_job_fn)(sn_ctx_t *ctx, void *state, const sn_request_t *req,
                           sn_envelope_t *reply, const char **nak_reason);
/* Runs @fn on a job thread and answers @req with its result. Ownership of @req passes. */
void sn_request_defer(sn_ctx_t *ctx, sn_request_t *req, sn_job_fn *fn, void *state);

#endif
