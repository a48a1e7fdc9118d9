/* buildpilot's run record: the Run protobuf (pipeline.proto) as buildpilot keeps it, its
 * steps and deploys, the names and keys derived from it, and its store: the one fenced
 * journal commit that writes run:<id>, deploy:<id> and the event of a transition, and the
 * reads of runs and environments back from Redis.
 *
 * The record helpers (everything above "store") are pure: they touch only the protobuf
 * and the configuration, so the state machine built on them (buildpilot_fsm.h) runs
 * without Redis. The store functions run on the role's loop thread. */
#ifndef BUILDPILOT_RUN_H
#define BUILDPILOT_RUN_H

#include "sentinel/sn_agent.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_journal.h"

#define BP_ROLE "buildpilot"
#define BP_LOCK_KEY "leader:" BP_ROLE
#define BP_MODULE "buildpilot"
#define BP_KEY_MAX 200

/* The steps of a run, in order (pipeline.proto Step.name). */
enum {
    BP_STEP_COMMIT,
    BP_STEP_TRIGGER,
    BP_STEP_GATE1,
    BP_STEP_BUILD,
    BP_STEP_GATE2,
    BP_STEP_PLAN,
    BP_STEP_APPROVAL,
    BP_STEP_STAGE,
    BP_STEP_VERIFY_PREVIEW,
    BP_STEP_PROMOTE,
    BP_STEP_VERIFY_LIVE,
    BP_STEP_ROLLBACK,
    BP_STEP_NOTIFY,
    BP_STEP_COUNT
};

extern const char *const bp_step_names[BP_STEP_COUNT];

/* The work a run may need; one call (and for jobs one ledger job) per item. */
typedef enum {
    BP_W_GATE1,
    BP_W_BUILD,
    BP_W_GATE2,
    BP_W_STAGE,
    BP_W_VPREVIEW,
    BP_W_PROMOTE,
    BP_W_VLIVE,
    BP_W_ROLLBACK,
    BP_W_COUNT
} bp_work_t;

typedef struct {
    const char *tag; /* in job ids: "<run>.<tag>[.<target>]" */
    bool is_job;     /* a ledger job (else a plain call repeated until answered) */
    int step;        /* the step it belongs to */
} bp_work_info_t;

extern const bp_work_info_t bp_works[BP_W_COUNT];

typedef Sentinel__V1__Run bp_pb_run_t;
typedef Sentinel__V1__Deploy bp_pb_deploy_t;
typedef Sentinel__V1__Step bp_pb_step_t;

/* ---- the record (pure) ------------------------------------------------------------------ */

/* Replaces a protobuf-c string field with a copy of @value (NULL = ""). */
void bp_str_set(char **field, const char *value);
bool bp_str_empty(const char *s);
bool bp_state_is_terminal(Sentinel__V1__RunState state);
/* "awaiting_approval" for RUN_AWAITING_APPROVAL: the index field `state` of run:<id>. */
void bp_state_name(Sentinel__V1__RunState state, char *out, size_t len);
/* "live_verified" for DEPLOY_LIVE_VERIFIED: the index field `phase` of deploy:<id>. */
void bp_phase_name(Sentinel__V1__DeployPhase phase, char *out, size_t len);
/* The key (= ledger job id) of work @w of @r, per target when @target is not NULL;
 * characters a job id does not allow become '_'. */
void bp_work_key(const bp_pb_run_t *r, bp_work_t w, const char *target, char *out, size_t len);

/* A new QUEUED run (heap protobuf tree: free with sentinel__v1__run__free_unpacked); every
 * step present, commit done, trigger running. Strings are copied; @trigger "" means "api". */
bp_pb_run_t *bp_run_new(const char *project, const char *env, const char *ref, const char *sha,
                        const char *trigger, const char *requested_by);
/* Step @step of @r (added, pending, if the record lacks it). Borrowed. */
bp_pb_step_t *bp_step(bp_pb_run_t *r, int step);
/* Running from now, with a deadline @timeout_ms ahead (0: none). */
void bp_step_start(bp_pb_run_t *r, int step, int64_t timeout_ms);
/* Ends @step with @state now; @reason (copied; NULL keeps the old one). */
void bp_step_end(bp_pb_run_t *r, int step, Sentinel__V1__StepState state, const char *reason);
/* Ends @step with @state only if it is still running (a TIMED_OUT stays). */
void bp_step_close(bp_pb_run_t *r, int step, Sentinel__V1__StepState state);
bool bp_step_is(bp_pb_run_t *r, int step, Sentinel__V1__StepState state);
/* Sets the run's failure reason unless one is already recorded (the first cause wins). */
void bp_fail_reason(bp_pb_run_t *r, const char *reason);
bool bp_same_env(const bp_pb_run_t *r, const char *project, const char *env);
/* The environment of @r in @cfg, or NULL (borrowed). */
const sn_environment_config_t *bp_env_cfg(const sn_config_t *cfg, const bp_pb_run_t *r);
/* The step deadline of @r's environment (step_timeout_s, default 600 s). */
int64_t bp_step_timeout_ms(const sn_config_t *cfg, const bp_pb_run_t *r);
/* Adds one deploy per target of @r's environment, in @phase. */
void bp_run_plan(const sn_config_t *cfg, bp_pb_run_t *r, Sentinel__V1__DeployPhase phase);
/* True if a deploy is in @phase (and, with @no_error, has no error recorded). */
bool bp_any_phase(const bp_pb_run_t *r, Sentinel__V1__DeployPhase phase, bool no_error);
/* True once anything failed: a run reason, a failed deploy or a deploy error. */
bool bp_is_failing(const bp_pb_run_t *r);

/* ---- the store (loop thread) ---------------------------------------------------------------- */

/* Writes @r (run:<id> with its index fields, runs:active membership, every deploy:<id>)
 * with the extra writes @ops (owned; may be NULL) and the event @type (body: the run, or
 * deploy @deploy when >= 0; labels step=@step and @label_key=@label_value when not NULL)
 * in ONE commit fenced by the buildpilot leader lock. Sets r->updated_unix_ms. Logs the
 * transition, or the refusal. True when committed. */
bool bp_store_commit(sn_ctx_t *ctx, bp_pb_run_t *r, sn_journal_ops_t *ops, const char *type,
                     const char *step, int deploy, const char *label_key, const char *label_value);
/* Reads every run of runs:active that is not terminal: *runs (caller frees the array and
 * each run) and *count. SN_AGAIN when Redis did not answer (nothing returned). */
SN_NODISCARD sn_rc_t bp_store_load(sn_ctx_t *ctx, bp_pb_run_t ***runs, size_t *count);
/* Reads a (terminal or not) run record; NULL if absent or unreadable. Caller frees. */
bp_pb_run_t *bp_store_read(sn_ctx_t *ctx, const char *run_id);
/* Field @field of env:<project>:<env> (caller frees; NULL if absent or on error). */
char *bp_store_env_field(sn_ctx_t *ctx, const char *project, const char *env, const char *field);

/* Extra writes of a transition, added to @ops from @r. */
void bp_ops_take_env(sn_journal_ops_t *ops, const bp_pb_run_t *r);
void bp_ops_release_env(sn_journal_ops_t *ops, const bp_pb_run_t *r);
void bp_ops_approval_request(sn_journal_ops_t *ops, const bp_pb_run_t *r);
void bp_ops_approval_granted(sn_journal_ops_t *ops, const bp_pb_run_t *r);
void bp_ops_last_verified(sn_journal_ops_t *ops, const bp_pb_run_t *r);
/* runs:all and runs:<project> learn a new run. */
void bp_ops_index(sn_journal_ops_t *ops, const bp_pb_run_t *r);

#endif
