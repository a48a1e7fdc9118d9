/* The gateway role's internals, shared by its files: gateway.c (the role, the HTTP
 * daemon, routing, authentication, errors), gateway_api.c (the JSON routes),
 * gateway_sse.c (the journal feeder and the SSE clients), gateway_metrics.c (/metrics and
 * the agent registry), gateway_rpc.c (the service-call thread), gateway_artifact.c
 * (artifact downloads for the deployers of other hosts).
 *
 * Threads: libmicrohttpd runs an epoll thread pool; handlers there read Redis with short
 * timeouts (sn_redis_cmd is thread-safe) and never wait for a service: a service call is
 * queued to the rpc thread and the connection suspended until the answer (or the
 * deadline) resumes it. The feeder thread reads the journal and fans events out to the
 * SSE clients, resuming the connections it gave data to. */
#ifndef GATEWAY_H
#define GATEWAY_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_crypto.h"
#include "sentinel/sn_proto.h"
#include "sentinel/sn_redis.h"

#define GATEWAY_REDIS_TIMEOUT_MS 500
#define GATEWAY_CALL_DEADLINE_MS 10000
#define GATEWAY_READY_DEADLINE_MS 1000
#define GATEWAY_KEEPALIVE_MS 15000
#define GATEWAY_MAX_PARAMS 2

typedef struct gateway gateway_t;
typedef struct gateway_rpc gateway_rpc_t;
typedef struct gateway_sse gateway_sse_t;
typedef struct gateway_call gateway_call_t;
typedef struct gateway_artifacts gateway_artifacts_t;
typedef struct gateway_github gateway_github_t;

typedef enum {
    GATEWAY_ROLE_NONE = 0, /* no authentication (healthz, readyz) */
    GATEWAY_ROLE_VIEWER = 1,
    GATEWAY_ROLE_OPERATOR = 2,
    GATEWAY_ROLE_ADMIN = 3,
    /* Outside the hierarchy: the deployers of other hosts. Only routes with is_agent_ok
     * (the artifact downloads) accept it; every other route answers 403. */
    GATEWAY_ROLE_AGENT = 4,
} gateway_role_t;

typedef struct {
    char *name;
    uint8_t digest[SN_SHA256_LEN];
    gateway_role_t role;
} gateway_token_t;

typedef struct gateway_req gateway_req_t;

/* A route handler: runs on an MHD thread on the last call for a request, and queues a
 * response or suspends the connection (after queueing a service call). */
typedef enum MHD_Result(gateway_handler_fn)(gateway_t *gw, struct MHD_Connection *conn,
                                            gateway_req_t *req);

typedef struct {
    const char *method;
    const char *pattern; /* segments; "*" captures a parameter */
    gateway_role_t role; /* least role allowed */
    bool has_body;       /* takes an optional JSON body */
    bool is_sse;
    gateway_handler_fn *handler;
    bool is_agent_ok; /* a token with role agent may use it too */
} gateway_route_t;

/* Per-request state (MHD's con_cls), freed when MHD reports the request completed. */
struct gateway_req {
    const gateway_route_t *route;
    char *params[GATEWAY_MAX_PARAMS];
    const char *principal; /* token name (borrowed from the config) */
    gateway_role_t role;
    bool is_started;
    char *body; /* at most max_body_bytes + 1 */
    size_t body_len;
    uint64_t body_seen;
    bool is_too_large;
    gateway_call_t *call; /* a service call in flight or answered */
    bool is_dry_run;
    int ready_redis; /* readyz: the Redis probe's result, 1 up, 0 down */
};

struct gateway {
    sn_ctx_t *ctx;
    const sn_config_t *cfg;
    sn_redis_t *redis;
    sn_metrics_t *metrics;
    struct MHD_Daemon *daemon;
    char *api_base;
    int keepalive_ms;
    gateway_token_t *tokens;
    size_t token_count;
    int conns;     /* open TCP connections (atomic) */
    int sse_count; /* SSE streams (atomic) */
    gateway_sse_t *sse;
    gateway_rpc_t *rpc;
    gateway_artifacts_t *artifacts;
    gateway_github_t *github;
};

/* ---- gateway.c: responses --------------------------------------------------------------- */

/* Queues @json (stolen) as application/json with @status. */
enum MHD_Result gateway_reply_json(struct MHD_Connection *conn, unsigned status, json_t *json);
/* Queues {"error": {"code": @code, "message": ...}} with @status. */
enum MHD_Result gateway_reply_error(struct MHD_Connection *conn, unsigned status, const char *code,
                                    const char *fmt, ...) SN_PRINTF(4, 5);
/* Queues @len bytes (copied) with @status and @content_type. */
enum MHD_Result gateway_reply_text(struct MHD_Connection *conn, unsigned status,
                                   const char *content_type, const char *text, size_t len);

/* ---- gateway_api.c: routes ---------------------------------------------------------------- */

gateway_handler_fn gateway_api_healthz, gateway_api_readyz, gateway_api_runs, gateway_api_run_show,
    gateway_api_run_logs, gateway_api_environments, gateway_api_agents, gateway_api_deploy,
    gateway_api_approve, gateway_api_cancel, gateway_api_rollback, gateway_api_freeze,
    gateway_api_unfreeze, gateway_api_metrics, gateway_api_events;

/* Called on the last handler call after a service call finished: queues the response. */
enum MHD_Result gateway_api_finish(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req);

/* True if @id is a safe run id (letters, digits, '-', '_', '.', 1..64, not "." / ".."). */
bool gateway_id_ok(const char *id);

/* ---- gateway_silence.c: silences (the notifier's notify.silence) -------------------------- */

/* POST /api/v1/silences (operator): {"matchers": ["key=value", ...], "comment": "...",
 * "duration": "2h" | "ends_unix_ms": N, "starts_unix_ms"?: N}; GET /api/v1/silences
 * (viewer, ?expired=true to include expired ones); DELETE /api/v1/silences/{id}
 * (operator). Validated here, then a call of notify.silence; the answer is
 * {"silences": [...]}. */
gateway_handler_fn gateway_api_silence_create, gateway_api_silence_list, gateway_api_silence_expire;

/* ---- gateway_metrics.c: agents and /metrics ----------------------------------------------- */

/* The agent:<role>:<instance> hashes as a JSON array of objects (every field; "counters"
 * parsed), sorted by role and instance. NULL if Redis did not answer. */
json_t *gateway_agents_load(gateway_t *gw);
/* Prometheus text exposition 0.0.4 of every agent's counters (caller frees), or NULL if
 * Redis did not answer. */
char *gateway_metrics_render(gateway_t *gw);
/* Renders the exposition for @agents (as gateway_agents_load returns them). Caller frees. */
char *gateway_metrics_render_agents(const json_t *agents);

/* ---- gateway_rpc.c: service calls ----------------------------------------------------------- */

typedef void(gateway_call_done_fn)(gateway_call_t *call, void *arg);

struct gateway_call {
    char *service;
    uint8_t *body;
    size_t body_len;
    int deadline_ms;
    gateway_call_done_fn *done;
    void *arg;
    /* results, set by the rpc thread before done runs */
    sn_rc_t rc; /* SN_OK reply; SN_DECLINED NAK; SN_AGAIN timeout or shutdown */
    sn_nak_reason_t nak;
    uint8_t *reply;
    size_t reply_len;
    bool is_done; /* atomic */
    /* rpc thread */
    uint64_t request_id;
    int64_t local_deadline_ms;
    gateway_call_t *next;
};

/* Starts the rpc thread with its own broker client (fully up on return). NULL on error. */
gateway_rpc_t *gateway_rpc_new(const sn_config_t *cfg);
/* Fails every call in flight (rc SN_AGAIN, done runs), stops the thread, frees. NULL-safe. */
void gateway_rpc_destroy(gateway_rpc_t **self_p);
/* Queues @call (ownership stays with the caller, who frees it with gateway_call_free after
 * done ran). @done runs on the rpc thread exactly once. Any thread. */
void gateway_rpc_submit(gateway_rpc_t *self, gateway_call_t *call);
void gateway_call_free(gateway_call_t **call_p);

/* ---- gateway_artifact.c: artifact downloads ------------------------------------------------ */

/* The artifact store of cfg->artifact_dir (created if missing), a verdict cache and a
 * journal writer for alerts. NULL (logged) if the directory cannot be used. Init only. */
gateway_artifacts_t *gateway_artifacts_new(gateway_t *gw);
/* Frees; NULL-safe; sets *self_p = NULL. After the daemon stopped. */
void gateway_artifacts_destroy(gateway_artifacts_t **self_p);
/* GET and HEAD /api/v1/artifacts/{sha256}: 400 on a malformed sha, 404 if absent, 500 if
 * the file does not hash to its name (never served; logged and alerted), else 200 with
 * the file streamed from disk (or 304 for a matching If-None-Match). MHD threads. */
gateway_handler_fn gateway_api_artifact;

/* ---- gateway_github.c: GitHub webhooks ------------------------------------------------------ */

/* Registers the recording Redis Function; never NULL. Init only. */
gateway_github_t *gateway_github_new(gateway_t *gw);
/* Frees; NULL-safe; sets *self_p = NULL. After the daemon stopped. */
void gateway_github_destroy(gateway_github_t **self_p);
/* The body cap of webhook routes (github.max_webhook_bytes). */
int64_t gateway_github_max_bytes(const gateway_t *gw);
/* Header checks before the body is read: 415 unless application/json, 401 without
 * X-Hub-Signature-256 (or without a configured secret), 400 without sane X-GitHub-Event
 * and X-GitHub-Delivery. MHD_YES to read the body, or after queueing the error. */
enum MHD_Result gateway_github_start(gateway_t *gw, struct MHD_Connection *conn,
                                     gateway_req_t *req);
/* POST /webhooks/github on the whole body: signature (401), ping (200), unknown event
 * (202, dropped), JSON (400), allow-list (403), then dedupe on delivery id and meaning
 * and the journal entry github.<event> in one Redis call: 202 recorded, 200 duplicate,
 * 503 when Redis does not answer. MHD threads. */
gateway_handler_fn gateway_github_webhook;

/* ---- gateway_sse.c: the event stream -------------------------------------------------------- */

gateway_sse_t *gateway_sse_new(gateway_t *gw);
/* Ends every stream (resumed, then END_OF_STREAM), stops the feeder, frees. NULL-safe. */
void gateway_sse_destroy(gateway_sse_t **self_p);
/* Ends every stream and waits (bounded) until MHD has let go of them. */
void gateway_sse_close_all(gateway_sse_t *self);
/* Opens a stream for @conn from @cursor (NULL: from now; "0": everything kept) with type
 * prefix filters @types (comma-separated, NULL: all). Queues the 200 response. */
enum MHD_Result gateway_sse_open(gateway_sse_t *self, struct MHD_Connection *conn,
                                 const char *cursor, const char *types);

#endif
