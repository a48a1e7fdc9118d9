/* The job wrapper every deployer role shares (local-deployer, cloudflare-deployer,
 * railway-bridge, the Firebase workers): the answer to a DeployRequest is a DeployResult
 * whose deploy is the request's Deploy as the op leaves it; a request whose envelope
 * carries label `job_id` is a ledger job, claimed before any side effect (a retry of a
 * finished job is answered with the result stored with it), its lease renewed while the
 * op runs, and completed with the packed DeployResult. The role keeps only its provider
 * logic: validation of its targets, the ops themselves and its log line.
 *
 * An op lives in its request's memory (sn_request_alloc): it is freed with the request,
 * there is nothing to destroy. It is used by the job thread that owns the request. */
#ifndef SN_DEPLOY_OP_H
#define SN_DEPLOY_OP_H

#include <stdarg.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_artifact.h"

/* Longest name (deploy id, target, project, ...) sn_deploy_op_name_is_valid accepts. */
#define SN_DEPLOY_OP_NAME_MAX 128

typedef struct sn_deploy_op sn_deploy_op_t;

/* What sn_deploy_op_claim found. */
typedef enum {
    SN_DEPLOY_OP_GO = 0,   /* a claimed ledger job, or not a ledger job: run the op */
    SN_DEPLOY_OP_ANSWERED, /* the job finished before: the reply is its stored result */
    SN_DEPLOY_OP_REFUSED,  /* not claimable (malformed id, held, unknown, Redis down):
                              the result is failed with the reason */
} sn_deploy_op_claim_t;

/* The on_request of a role served with DeployRequests: a body that is not a
 * deploy_request is NAKed "invalid" (logged under @module), anything else is deferred to
 * @fn on a job thread with @state. Ownership of @req passes. Loop thread. */
void sn_deploy_op_defer(sn_ctx_t *ctx, sn_request_t *req, const char *module, sn_job_fn *fn,
                        void *state);

/* Starts the answer to the DeployRequest of @req (its envelope must carry one): a
 * DeployResult, ok, whose deploy is a shallow copy of the request's Deploy (an empty one
 * when it has none; the strings stay in the request), set as @reply's body (type
 * "deploy.result"). @ctx and @module (the log module) are borrowed and must outlive the
 * op. The op and the reply live in @req's memory. Job thread owning @req. */
sn_deploy_op_t *sn_deploy_op_begin(sn_ctx_t *ctx, sn_request_t *req, sn_envelope_t *reply,
                                   const char *module);

/* The request's Deploy, or an empty one when it has none (borrowed). */
const Sentinel__V1__Deploy *sn_deploy_op_deploy(const sn_deploy_op_t *self);
/* The reply's DeployResult (request-owned; the role fills it). */
Sentinel__V1__DeployResult *sn_deploy_op_result(sn_deploy_op_t *self);
/* The reply's Deploy (request-owned; the role fills it). */
Sentinel__V1__Deploy *sn_deploy_op_out(sn_deploy_op_t *self);

/* Marks the result failed (not ok, @is_transient) with a reason formatted from @fmt
 * (at most 511 bytes, request-owned copy). A later failure replaces an earlier one. */
void sn_deploy_op_fail(sn_deploy_op_t *self, bool is_transient, const char *fmt, ...)
    SN_PRINTF(3, 4);
/* sn_deploy_op_fail with a va_list. */
void sn_deploy_op_vfail(sn_deploy_op_t *self, bool is_transient, const char *fmt, va_list ap)
    SN_PRINTF(3, 0);

/* If the request's envelope carries label job_id, claims that ledger job for @instance
 * (borrowed) before any side effect. SN_DEPLOY_OP_GO: claimed (lease taken from the job's
 * spec, 30 s if none), or no label; SN_DEPLOY_OP_ANSWERED: the job is done and the reply
 * is now the result stored with it (logged with @opname); SN_DEPLOY_OP_REFUSED: the
 * result is failed with the reason (transient when another worker holds the job or Redis
 * is down). Call once, first. */
SN_NODISCARD sn_deploy_op_claim_t sn_deploy_op_claim(sn_deploy_op_t *self, const char *instance,
                                                     const char *opname);

/* The claimed ledger job's id (request-owned), or NULL when the op is not a claimed job. */
const char *sn_deploy_op_job_id(const sn_deploy_op_t *self);
/* The job id for a log line: the label when it is a valid id, "(invalid)" when it is
 * malformed, "-" when there is none. */
const char *sn_deploy_op_job_shown(const sn_deploy_op_t *self);

/* Renews the claimed job's lease once a third of it passed. True when there is no job or
 * the lease is held; false once it is lost (the op must stop acting). */
bool sn_deploy_op_renew(sn_deploy_op_t *self);
/* True once a renewal was refused: another worker may own the job now. */
bool sn_deploy_op_is_lease_lost(const sn_deploy_op_t *self);

/* Closes the reply: stamps the deploy's finished_unix_ms; a failed result whose phase is
 * not DEPLOY_FAILED yet gets that phase and its reason as the deploy's error. */
void sn_deploy_op_finish(sn_deploy_op_t *self);
/* Completes a claimed ledger job with the packed DeployResult (done if ok, else failed);
 * a refusal (lease lapsed) is logged with @opname. Nothing when not a claimed job. */
void sn_deploy_op_complete(sn_deploy_op_t *self, const char *opname);

/* Fills @id (caller's) with the release identity of the op's deploy: its deploy id, run
 * id, project, environment and target, the request's commit, created now. The strings
 * are borrowed from the request. */
void sn_deploy_op_identity(const sn_deploy_op_t *self, Sentinel__V1__ReleaseIdentity *id);
/* That identity as sn_json renders it, compact (caller frees). */
char *sn_deploy_op_identity_json(const sn_deploy_op_t *self);

/* A deep copy of @src in @req's memory (NULL strings become ""), for a reply built from
 * a result that does not live in the request. Any thread owning @req. */
Sentinel__V1__Deploy *sn_deploy_op_deploy_dup(sn_request_t *req, const Sentinel__V1__Deploy *src);

/* True for 1..SN_DEPLOY_OP_NAME_MAX characters of [A-Za-z0-9._-] not starting with '.':
 * safe in a path, a Redis key, a URL and a log line. */
bool sn_deploy_op_name_is_valid(const char *s);
/* @name for a log line: "" when NULL or empty, "(invalid)" when not a valid name. */
const char *sn_deploy_op_name_shown(const char *name);

/* The artifact store of @ctx's config (artifact_dir, else <state_dir>/artifacts, with
 * state_dir "./var" when unset), with the context's Redis. NULL (logged) if its directory
 * cannot be made. The caller destroys it. Loop thread (init). */
sn_artifact_t *sn_deploy_op_store_new(sn_ctx_t *ctx);

#endif
