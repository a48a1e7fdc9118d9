/* What the two Firebase workers (hosting-propagator, function-handler) share: the job
 * wrapper of a DeployRequest (ledger claim, validation, the target's Google credentials,
 * the answer and the ledger completion), calls to Google APIs through sn_provider with a
 * cached OAuth2 token (sn_gauth), the deploy record (provider:deploy:<id>, fields
 * prefixed by the role: "hosting.*", "functions.*"), the artifact and its firebase.json.
 * Not a role: agents/firebase/hosting_propagator.c and function_handler.c are. */
#ifndef FIREBASE_COMMON_H
#define FIREBASE_COMMON_H

#include <jansson.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_artifact.h"
#include "sentinel/sn_deploy_op.h"
#include "sentinel/sn_gauth.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_provider.h"

#define FB_IDENTITY_PATH ".well-known/sentinel-release.json"

typedef struct fb_state fb_state_t;

/* One op being served on a job thread. Strings of the reply live in the request; the
 * answer and the ledger job are @dop's (fail with sn_deploy_op_fail(op->dop, ...), renew
 * the lease with sn_deploy_op_renew(op->dop)). */
typedef struct {
    sn_ctx_t *ctx;
    fb_state_t *st;
    sn_request_t *req;
    sn_deploy_op_t *dop; /* request-owned */
    const char *module;  /* log module: the role's name */
    const char *opname;  /* validated: one of the role's ops */
    const Sentinel__V1__DeployRequest *in;
    const Sentinel__V1__Deploy *dep;
    const sn_target_config_t *target;
    sn_gauth_t *gauth;   /* the target's credentials (borrowed from the state) */
    sn_provider_t *prov; /* budget + breaker of (firebase, client_email) */
    sn_http_t *http;     /* this job thread's client */
    char *token;         /* current access token (cleansed at the end) */
    sn_provider_budget_t budget;
    int retries_left;    /* retries of safe calls left for the whole op */
    char label[64];      /* the deploy id as a Google label value */
    int64_t deadline_ms; /* the op's absolute deadline (sn_mono_ms) */
    Sentinel__V1__DeployResult *res;
    Sentinel__V1__Deploy *out;
    sn_artifact_t *store; /* borrowed from the state */
} fb_op_t;

typedef void(fb_op_fn)(fb_op_t *op);

/* The shared state of a role: targets of type firebase, their credentials (made on first
 * use, kept for the process) and the artifact store. NULL if the store cannot be opened. */
fb_state_t *fb_state_new(sn_ctx_t *ctx, const char *module);
void fb_state_destroy(fb_state_t **self_p);

/* The job function body: claims the ledger job named by label job_id, validates the
 * request (op in @ops, names, a firebase target), prepares credentials and a client,
 * runs @fn, completes the job with the packed result, logs one line. Always SN_OK (the
 * answer is the DeployResult). */
sn_rc_t fb_job(sn_ctx_t *ctx, fb_state_t *st, const sn_request_t *req, sn_envelope_t *reply,
               const char *const *ops, fb_op_fn *fn);

/* Calls a Google JSON API: @method @url with @body (borrowed, may be NULL), Bearer token,
 * through the breaker/budget, retried only if @is_idempotent; a 401 fetches a new token
 * once. SN_OK with *out (may be NULL; caller decrefs); SN_ERROR / SN_AGAIN with the
 * result NOT marked failed: @why gets "<status> <STATUS>: <message>" or the transport
 * reason. *status (may be NULL) gets the HTTP status. */
SN_NODISCARD sn_rc_t fb_api(fb_op_t *op, const char *method, const char *url, json_t *body,
                            bool is_idempotent, json_t **out, long *status, char *why,
                            size_t why_len);

/* Sends raw bytes (uploads): @content_type, with the Bearer token if @with_auth; retried
 * if @is_idempotent. The answer's body is ignored; 2xx is SN_OK. As fb_api otherwise. */
SN_NODISCARD sn_rc_t fb_send(fb_op_t *op, const char *method, const char *url,
                             const char *content_type, const void *body, size_t len, bool with_auth,
                             bool is_idempotent, int timeout_ms, char *why, size_t why_len);

/* The deploy record field "<prefix>.<name>" (caller frees), or NULL (absent or Redis down:
 * *is_down set, may be NULL). */
char *fb_rec_get(fb_op_t *op, const char *prefix, const char *name, bool *is_down);
/* Puts the field unconditionally. False if Redis did not take it. */
bool fb_rec_put(fb_op_t *op, const char *prefix, const char *name, const char *value);

/* Extracts the request's artifact into a fresh temp dir (caller removes it with
 * sn_artifact_rmtree and frees the path). NULL with the result marked failed. */
char *fb_extract(fb_op_t *op);

/* The artifact's firebase.json (new reference) or NULL: *is_bad set when it exists but
 * does not parse as a JSON object (the result is then marked failed). */
json_t *fb_firebase_json(fb_op_t *op, const char *dir, bool *is_bad);

/* True for a relative path inside the tree: no absolute path, no "..", no empty name. */
bool fb_rel_path_is_safe(const char *path);

/* The request-owned copy of @s. */
char *fb_keep(fb_op_t *op, const char *s);

/* @s lowercased with every character outside [a-z0-9-] turned into '-', at most @max
 * characters, into @out (@max + 1 bytes). */
void fb_slug(const char *s, char *out, size_t max);

#endif
