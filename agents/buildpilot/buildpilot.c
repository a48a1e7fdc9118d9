/* buildpilot: the only owner of a run (ARCHITECTURE §2, §7). An exclusive leader role:
 * it serves run.trigger, run.approve, run.cancel, env.freeze, env.unfreeze and
 * env.rollback only while it leads, and keeps every run in flight in memory, loaded from
 * Redis (the set runs:active) on election, so a standby resumes exactly where the last
 * leader's journal commits left each run.
 *
 * Every transition is ONE fenced journal commit (fence key "leader:buildpilot") that
 * rewrites the run:<id> record (Run protobuf and index fields), the deploy:<id> records,
 * the environment keys that change with it (envlock, env hash, queue, approval) and the
 * event announcing it. The work a run needs (gate checks, build, stage, verify, promote,
 * rollback) is derived from the record alone (step states and deploy phases), so nothing
 * outside Redis is needed to resume: long operations are ledger jobs with deterministic
 * ids ("<run>.<work>[.<target>]"), created before the call and sent with label job_id;
 * a job already done when a new leader looks at it yields its stored result. Calls that
 * end in a NAK or a local timeout decide nothing: the job is sent again (same attempt)
 * while it is queued, the ledger re-dispatches lapsed leases (attempt + 1) up to the
 * attempt limit, and a dead-lettered job fails its step. Each running step has a
 * deadline (environment step_timeout_s, approval_timeout_s / approval expiry) enforced
 * here on the tick.
 *
 * The envlock is taken and released only by this role, in fenced commits on its loop
 * thread, from its in-memory view of every active run: with one fenced writer a
 * "set only if free" script would check nothing the fence does not already guarantee.
 *
 * Identity (approvals): the requester of a run and an approver are the principal the
 * broker attached to the request; a label `on_behalf_of` (the end user behind the
 * gateway's API token) replaces it only when the caller is the principal "gateway", or
 * when CURVE is off (then every caller is "anonymous" and could call us directly anyway). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define BP_ROLE "buildpilot"
#define BP_LOCK_KEY "leader:" BP_ROLE
#define BP_MODULE "buildpilot"
#define BP_RESEND_MS 1000 /* a queued job or a gate call is sent again after this */
#define BP_KEY_MAX 200
#define BP_TRUSTED_PRINCIPAL "gateway"

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

static const char *const s_step_names[BP_STEP_COUNT] = {
    "commit", "trigger",        "gate1",   "build",       "gate2",    "plan",   "approval",
    "stage",  "verify_preview", "promote", "verify_live", "rollback", "notify",
};

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
} bp_work_t;

static const struct {
    const char *tag;
    bool is_job;
    int step;
} s_works[] = {
    [BP_W_GATE1] = {"gate1", false, BP_STEP_GATE1},
    [BP_W_BUILD] = {"build", true, BP_STEP_BUILD},
    [BP_W_GATE2] = {"gate2", false, BP_STEP_GATE2},
    [BP_W_STAGE] = {"stage", true, BP_STEP_STAGE},
    [BP_W_VPREVIEW] = {"vpreview", true, BP_STEP_VERIFY_PREVIEW},
    [BP_W_PROMOTE] = {"promote", true, BP_STEP_PROMOTE},
    [BP_W_VLIVE] = {"vlive", true, BP_STEP_VERIFY_LIVE},
    [BP_W_ROLLBACK] = {"rollback", true, BP_STEP_ROLLBACK},
};

typedef Sentinel__V1__Run bp_pb_run_t;
typedef Sentinel__V1__Deploy bp_pb_deploy_t;
typedef Sentinel__V1__Step bp_pb_step_t;

/* A run in flight (the leader holds every non-terminal run). */
typedef struct bp_run {
    bp_pb_run_t *run; /* heap protobuf-c tree, freed with sentinel__v1__run__free_unpacked */
    struct bp_run *next;
} bp_run_t;

/* One work item's call state, by key ("<run>.<tag>[.<target>]" = the job id). */
typedef struct bp_call {
    char key[BP_KEY_MAX];
    char run_id[64];
    bp_work_t work;
    int deploy; /* index in run->deploys, -1 for run-level work */
    bool is_inflight;
    bool is_created; /* ledger job exists */
    int64_t last_send_ms;
    uint32_t naks;
    struct bp_call *next;
} bp_call_t;

typedef struct {
    bp_run_t *runs;
    bp_call_t *calls;
    bool needs_load;
} bp_t;

typedef struct {
    bp_t *st;
    char key[BP_KEY_MAX];
} bp_done_arg_t;

/* ---- small helpers ------------------------------------------------------------------- */

static void s_str_set(char **field, const char *value)
{
    if (*field && *field != protobuf_c_empty_string)
        free(*field);
    *field = sn_strdup(value ? value : "");
}

static bool s_str_empty(const char *s)
{
    return !s || !*s;
}

static bool s_is_terminal(Sentinel__V1__RunState state)
{
    return state >= SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED;
}

/* "awaiting_approval" for RUN_AWAITING_APPROVAL: the index field `state` of run:<id>. */
static void s_enum_name(const ProtobufCEnumDescriptor *desc, int value, const char *prefix,
                        char *out, size_t len)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(desc, value);
    const char *name = v ? v->name : "unspecified";
    size_t plen = strlen(prefix);
    if (strncmp(name, prefix, plen) == 0)
        name += plen;
    size_t i = 0;
    for (; name[i] && i + 1 < len; i++)
        out[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] - 'A' + 'a' : name[i]);
    out[i] = '\0';
}

static void s_state_name(Sentinel__V1__RunState state, char *out, size_t len)
{
    s_enum_name(&sentinel__v1__run_state__descriptor, (int)state, "RUN_", out, len);
}

static void s_phase_name(Sentinel__V1__DeployPhase phase, char *out, size_t len)
{
    s_enum_name(&sentinel__v1__deploy_phase__descriptor, (int)phase, "DEPLOY_", out, len);
}

/* Job ids allow [A-Za-z0-9._:-]: anything else in a target name becomes '_'. */
static void s_work_key(const bp_pb_run_t *r, bp_work_t w, const char *target, char *out, size_t len)
{
    if (target)
        snprintf(out, len, "%s.%s.%s", r->run_id, s_works[w].tag, target);
    else
        snprintf(out, len, "%s.%s", r->run_id, s_works[w].tag);
    for (char *p = out; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == ':' || *p == '-'))
            *p = '_';
}

static bp_pb_step_t *s_step(bp_pb_run_t *r, int step)
{
    const char *name = s_step_names[step];
    for (size_t i = 0; i < r->n_steps; i++)
        if (r->steps[i]->name && strcmp(r->steps[i]->name, name) == 0)
            return r->steps[i];
    /* A record written without this step (older writer): add it. */
    r->steps = sn_realloc(r->steps, (r->n_steps + 1) * sizeof *r->steps);
    bp_pb_step_t *s = sn_calloc(1, sizeof *s);
    sentinel__v1__step__init(s);
    s->name = sn_strdup(name);
    s->state = SENTINEL__V1__STEP_STATE__STEP_PENDING;
    r->steps[r->n_steps++] = s;
    return s;
}

static void s_step_start(bp_pb_run_t *r, int step, int64_t timeout_ms)
{
    bp_pb_step_t *s = s_step(r, step);
    int64_t now = sn_wall_ms();
    s->state = SENTINEL__V1__STEP_STATE__STEP_RUNNING;
    s->started_unix_ms = now;
    s->finished_unix_ms = 0;
    s->deadline_unix_ms = timeout_ms > 0 ? now + timeout_ms : 0;
}

static void s_step_end(bp_pb_run_t *r, int step, Sentinel__V1__StepState state, const char *reason)
{
    bp_pb_step_t *s = s_step(r, step);
    int64_t now = sn_wall_ms();
    if (!s->started_unix_ms)
        s->started_unix_ms = now;
    s->state = state;
    s->finished_unix_ms = now;
    if (reason)
        s_str_set(&s->reason, reason);
}

/* Ends @step with @state only if it is still running (a TIMED_OUT stays). */
static void s_step_close(bp_pb_run_t *r, int step, Sentinel__V1__StepState state)
{
    if (s_step(r, step)->state == SENTINEL__V1__STEP_STATE__STEP_RUNNING)
        s_step_end(r, step, state, NULL);
}

static bool s_step_is(bp_pb_run_t *r, int step, Sentinel__V1__StepState state)
{
    return s_step(r, step)->state == state;
}

/* Sets the run's failure reason unless one is already recorded (the first cause wins). */
static void s_fail_reason(bp_pb_run_t *r, const char *reason)
{
    if (s_str_empty(r->reason))
        s_str_set(&r->reason, reason);
}

static const sn_environment_config_t *s_env_cfg(sn_ctx_t *ctx, const bp_pb_run_t *r)
{
    const sn_project_config_t *p = sn_config_project(sn_ctx_config(ctx), r->project);
    return p ? sn_config_environment(p, r->environment) : NULL;
}

static int64_t s_step_timeout_ms(sn_ctx_t *ctx, const bp_pb_run_t *r)
{
    const sn_environment_config_t *e = s_env_cfg(ctx, r);
    return (int64_t)(e && e->step_timeout_s > 0 ? e->step_timeout_s : 600) * 1000;
}

static bp_run_t *s_find_run(bp_t *st, const char *run_id)
{
    for (bp_run_t *br = st->runs; br; br = br->next)
        if (strcmp(br->run->run_id, run_id) == 0)
            return br;
    return NULL;
}

static bp_call_t *s_find_call(bp_t *st, const char *key)
{
    for (bp_call_t *c = st->calls; c; c = c->next)
        if (strcmp(c->key, key) == 0)
            return c;
    return NULL;
}

static bool s_same_env(const bp_pb_run_t *a, const char *project, const char *env)
{
    return strcmp(a->project, project) == 0 && strcmp(a->environment, env) == 0;
}

/* The identity a request acts for (see the file comment). */
static const char *s_identity(sn_ctx_t *ctx, const sn_request_t *req)
{
    const char *principal = sn_request_principal(req);
    if (s_str_empty(principal))
        principal = "anonymous";
    const char *obo = sn_envelope_label(sn_request_envelope(req), "on_behalf_of");
    if (!s_str_empty(obo) &&
        (strcmp(principal, BP_TRUSTED_PRINCIPAL) == 0 ||
         (!sn_ctx_config(ctx)->broker.curve && strcmp(principal, "anonymous") == 0)))
        return obo;
    return principal;
}

/* ---- the record ----------------------------------------------------------------------- */

static bp_pb_run_t *s_run_new(const char *project, const char *env, const char *ref,
                              const char *sha, const char *trigger, const char *requested_by)
{
    bp_pb_run_t *r = sn_calloc(1, sizeof *r);
    sentinel__v1__run__init(r);
    char id[SN_ID_LEN + 1];
    sn_id_new(id);
    s_str_set(&r->run_id, id);
    s_str_set(&r->project, project);
    s_str_set(&r->environment, env);
    s_str_set(&r->ref, ref);
    s_str_set(&r->sha, sha);
    s_str_set(&r->trigger, s_str_empty(trigger) ? "api" : trigger);
    s_str_set(&r->requested_by, requested_by);
    r->state = SENTINEL__V1__RUN_STATE__RUN_QUEUED;
    r->created_unix_ms = sn_wall_ms();
    r->approval = sn_calloc(1, sizeof *r->approval);
    sentinel__v1__approval__init(r->approval);
    for (int i = 0; i < BP_STEP_COUNT; i++)
        (void)s_step(r, i);
    s_step_end(r, BP_STEP_COMMIT, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    s_step_start(r, BP_STEP_TRIGGER, 0);
    return r;
}

static void s_run_free(bp_run_t **br_p)
{
    if (!*br_p)
        return;
    sentinel__v1__run__free_unpacked((*br_p)->run, NULL);
    free(*br_p);
    *br_p = NULL;
}

static void s_runs_clear(bp_t *st)
{
    while (st->runs) {
        bp_run_t *br = st->runs;
        st->runs = br->next;
        s_run_free(&br);
    }
}

/* Adds the rewrite of the queue of (project, env): the QUEUED runs held in memory, minus
 * @leaving, oldest first (index 0). */
static void s_ops_queue(bp_t *st, sn_journal_ops_t *ops, const char *project, const char *env,
                        const char *leaving)
{
    char *key = sn_strdupf("runs:%s:%s:queue", project, env);
    sn_journal_ops_del(ops, key);
    const char *last = NULL; /* push newest first: LPUSH leaves the oldest at the head */
    for (;;) {
        const char *best = NULL;
        for (bp_run_t *br = st->runs; br; br = br->next) {
            const bp_pb_run_t *r = br->run;
            if (r->state != SENTINEL__V1__RUN_STATE__RUN_QUEUED || !s_same_env(r, project, env) ||
                (leaving && strcmp(r->run_id, leaving) == 0))
                continue;
            if (last && strcmp(r->run_id, last) >= 0)
                continue;
            if (!best || strcmp(r->run_id, best) > 0)
                best = r->run_id;
        }
        if (!best)
            break;
        sn_journal_ops_lpush(ops, key, best, strlen(best));
        last = best;
    }
    free(key);
}

/* Writes @br's record with @ops (owned; may be NULL) and the event @type (body: the run,
 * or deploy @deploy when >= 0) in one fenced commit. On any failure the in-memory view
 * can no longer be trusted: it is reloaded from Redis on the next tick. */
static bool s_commit(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, sn_journal_ops_t *ops, const char *type,
                     const char *step, int deploy, const char *label_key, const char *label_value)
{
    bp_pb_run_t *r = br->run;
    r->updated_unix_ms = sn_wall_ms();
    if (!ops)
        ops = sn_journal_ops_new();
    size_t len = sentinel__v1__run__get_packed_size(r);
    uint8_t *buf = sn_malloc(len ? len : 1);
    sentinel__v1__run__pack(r, buf);
    char state[32], updated[24];
    s_state_name(r->state, state, sizeof state);
    snprintf(updated, sizeof updated, "%lld", (long long)r->updated_unix_ms);
    char *key = sn_strdupf("run:%s", r->run_id);
    sn_journal_ops_hset(ops, key, "pb", buf, len);
    sn_journal_ops_hset(ops, key, "state", state, strlen(state));
    sn_journal_ops_hset(ops, key, "project", r->project, strlen(r->project));
    sn_journal_ops_hset(ops, key, "environment", r->environment, strlen(r->environment));
    sn_journal_ops_hset(ops, key, "updated_ms", updated, strlen(updated));
    if (s_is_terminal(r->state))
        sn_journal_ops_srem(ops, "runs:active", r->run_id);
    else
        sn_journal_ops_sadd(ops, "runs:active", r->run_id);
    for (size_t i = 0; i < r->n_deploys; i++) {
        bp_pb_deploy_t *d = r->deploys[i];
        size_t dlen = sentinel__v1__deploy__get_packed_size(d);
        uint8_t *dbuf = sn_malloc(dlen ? dlen : 1);
        sentinel__v1__deploy__pack(d, dbuf);
        char phase[32];
        s_phase_name(d->phase, phase, sizeof phase);
        char *dkey = sn_strdupf("deploy:%s", d->deploy_id);
        sn_journal_ops_hset(ops, dkey, "pb", dbuf, dlen);
        sn_journal_ops_hset(ops, dkey, "phase", phase, strlen(phase));
        sn_journal_ops_hset(ops, dkey, "run_id", r->run_id, strlen(r->run_id));
        free(dkey);
        free(dbuf);
    }
    sn_envelope_t env;
    sentinel__v1__envelope__init(&env);
    env.type = (char *)type;
    env.correlation_id = r->run_id;
    char *subject = NULL;
    if (deploy >= 0 && (size_t)deploy < r->n_deploys) {
        subject = sn_strdupf("%s/%s/%s", r->project, r->environment, r->deploys[deploy]->target);
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY;
        env.deploy = r->deploys[deploy];
    } else {
        subject = sn_strdupf("%s/%s", r->project, r->environment);
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN;
        env.run = r;
    }
    env.subject = subject;
    if (step)
        sn_envelope_add_label(&env, "step", step);
    if (label_key)
        sn_envelope_add_label(&env, label_key, label_value);
    sn_journal_result_t res;
    sn_rc_t rc =
        sn_journal_commit(sn_ctx_journal(ctx), ops, BP_LOCK_KEY, sn_ctx_fence(ctx), &env, &res);
    if (rc == SN_OK)
        sn_info(BP_MODULE, "%s run=%s state=%s%s%s", type, r->run_id, state,
                deploy >= 0 ? " target=" : "", deploy >= 0 ? r->deploys[deploy]->target : "");
    else {
        sn_warn(BP_MODULE, "commit refused type=%s run=%s rc=%s: reloading runs", type, r->run_id,
                sn_rc_str(rc));
        st->needs_load = true;
        sn_metrics_add(sn_ctx_metrics(ctx), "commit_failed", 1);
    }
    sn_envelope_fini_labels(&env);
    free(subject);
    free(key);
    free(buf);
    sn_journal_ops_destroy(&ops);
    return rc == SN_OK;
}

/* Loads every active run from Redis (runs:active). */
static void s_load(bp_t *st, sn_ctx_t *ctx)
{
    sn_redis_t *redis = sn_ctx_redis(ctx);
    char *key = sn_strdupf("%sruns:active", sn_redis_ns(redis));
    const char *argv[] = {"SMEMBERS", key};
    redisReply *rep = NULL;
    sn_rc_t rc = sn_redis_cmd(redis, SN_REDIS_MAIN, 0, &rep, 2, argv, NULL);
    free(key);
    if (rc != SN_OK || rep->type != REDIS_REPLY_ARRAY) {
        if (rep)
            freeReplyObject(rep);
        return; /* try again next tick */
    }
    s_runs_clear(st);
    size_t loaded = 0;
    for (size_t i = 0; i < rep->elements; i++) {
        if (rep->element[i]->type != REDIS_REPLY_STRING)
            continue;
        char *rkey = sn_strdupf("%srun:%s", sn_redis_ns(redis), rep->element[i]->str);
        const char *hargv[] = {"HGET", rkey, "pb"};
        redisReply *h = NULL;
        rc = sn_redis_cmd(redis, SN_REDIS_MAIN, 0, &h, 3, hargv, NULL);
        free(rkey);
        if (rc != SN_OK) {
            freeReplyObject(rep);
            s_runs_clear(st);
            return;
        }
        bp_pb_run_t *r = NULL;
        if (h->type == REDIS_REPLY_STRING && h->len > 0 && h->len <= SN_MAX_EVENT_BYTES)
            r = sentinel__v1__run__unpack(NULL, h->len, (const uint8_t *)h->str);
        freeReplyObject(h);
        if (!r || s_str_empty(r->run_id) || s_is_terminal(r->state)) {
            if (!r)
                sn_warn(BP_MODULE, "active run without a readable record run=%s",
                        rep->element[i]->str);
            if (r)
                sentinel__v1__run__free_unpacked(r, NULL);
            continue;
        }
        if (!r->approval) {
            r->approval = sn_calloc(1, sizeof *r->approval);
            sentinel__v1__approval__init(r->approval);
        }
        bp_run_t *br = sn_calloc(1, sizeof *br);
        br->run = r;
        br->next = st->runs;
        st->runs = br;
        loaded++;
    }
    freeReplyObject(rep);
    st->needs_load = false;
    sn_info(BP_MODULE, "resumed active runs count=%zu", loaded);
}

/* ---- transitions ---------------------------------------------------------------------- */

static void s_advance(bp_t *st, sn_ctx_t *ctx, bp_run_t *br);
static void s_kick(bp_t *st, sn_ctx_t *ctx, const char *run_id);
static void s_kick_env(bp_t *st, sn_ctx_t *ctx, const char *project, const char *env);

/* Ends @br in terminal @state with @reason: open steps closed, the environment released
 * if it held it, the run leaves runs:active, and the run is dropped from memory. */
static void s_finish(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, Sentinel__V1__RunState state,
                     const char *reason, sn_journal_ops_t *ops)
{
    bp_pb_run_t *r = br->run;
    bool held = r->state != SENTINEL__V1__RUN_STATE__RUN_QUEUED;
    Sentinel__V1__StepState open_end = state == SENTINEL__V1__RUN_STATE__RUN_CANCELLED ||
                                               state == SENTINEL__V1__RUN_STATE__RUN_SUPERSEDED
                                           ? SENTINEL__V1__STEP_STATE__STEP_CANCELLED
                                       : state == SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED
                                           ? SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED
                                           : SENTINEL__V1__STEP_STATE__STEP_FAILED;
    for (int i = 0; i < BP_STEP_COUNT; i++) {
        if (i == BP_STEP_NOTIFY)
            continue;
        bp_pb_step_t *s = s_step(r, i);
        if (s->state == SENTINEL__V1__STEP_STATE__STEP_RUNNING)
            s_step_end(r, i, open_end, NULL);
        else if (s->state == SENTINEL__V1__STEP_STATE__STEP_PENDING)
            s_step_end(r, i, SENTINEL__V1__STEP_STATE__STEP_SKIPPED, NULL);
    }
    s_step_end(r, BP_STEP_NOTIFY, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, "outcome journaled");
    for (size_t i = 0; i < r->n_deploys; i++) {
        bp_pb_deploy_t *d = r->deploys[i];
        if (d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PLANNED ||
            d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGING)
            d->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_CANCELLED;
        if (!d->finished_unix_ms)
            d->finished_unix_ms = sn_wall_ms();
    }
    if (reason)
        s_str_set(&r->reason, reason);
    if (!ops)
        ops = sn_journal_ops_new();
    if (held) {
        char *lock = sn_strdupf("envlock:%s:%s", r->project, r->environment);
        char *envk = sn_strdupf("env:%s:%s", r->project, r->environment);
        sn_journal_ops_del(ops, lock);
        sn_journal_ops_hset(ops, envk, "current_run", "", 0);
        free(lock);
        free(envk);
    } else {
        s_ops_queue(st, ops, r->project, r->environment, r->run_id);
    }
    r->state = state;
    char name[32];
    s_state_name(state, name, sizeof name);
    char *type = sn_strdupf("run.%s", name);
    char *project = sn_strdup(r->project), *env = sn_strdup(r->environment);
    bool ok = s_commit(st, ctx, br, ops, type, NULL, -1, NULL, NULL);
    free(type);
    if (ok) {
        char *metric = sn_strdupf("runs_%s", name);
        sn_metrics_add(sn_ctx_metrics(ctx), metric, 1);
        free(metric);
        for (bp_run_t **p = &st->runs; *p; p = &(*p)->next)
            if (*p == br) {
                *p = br->next;
                break;
            }
        s_run_free(&br);
        if (held)
            s_kick_env(st, ctx, project, env);
    }
    free(project);
    free(env);
}

static void s_plan(sn_ctx_t *ctx, bp_pb_run_t *r, Sentinel__V1__DeployPhase phase)
{
    const sn_config_t *cfg = sn_ctx_config(ctx);
    const sn_environment_config_t *e = s_env_cfg(ctx, r);
    for (size_t i = 0; e && e->targets && e->targets[i]; i++) {
        const sn_target_config_t *t = sn_config_target(cfg, e->targets[i]);
        bp_pb_deploy_t *d = sn_calloc(1, sizeof *d);
        sentinel__v1__deploy__init(d);
        char *id = sn_strdupf("%s-%s", r->run_id, e->targets[i]);
        s_str_set(&d->deploy_id, id);
        free(id);
        s_str_set(&d->run_id, r->run_id);
        s_str_set(&d->project, r->project);
        s_str_set(&d->environment, r->environment);
        s_str_set(&d->target, e->targets[i]);
        s_str_set(&d->provider, t && t->type ? t->type : "");
        if (t) {
            char *pv = t->preview_url      ? sn_strdup(t->preview_url)
                       : t->preview_listen ? sn_strdupf("http://%s", t->preview_listen)
                                           : sn_strdup("");
            char *lv = t->url      ? sn_strdup(t->url)
                       : t->listen ? sn_strdupf("http://%s", t->listen)
                                   : sn_strdup("");
            s_str_set(&d->preview_url, pv);
            s_str_set(&d->live_url, lv);
            free(pv);
            free(lv);
        }
        d->phase = phase;
        r->deploys = sn_realloc(r->deploys, (r->n_deploys + 1) * sizeof *r->deploys);
        r->deploys[r->n_deploys++] = d;
    }
}

/* QUEUED -> holds the environment. */
static void s_start(bp_t *st, sn_ctx_t *ctx, bp_run_t *br)
{
    bp_pb_run_t *r = br->run;
    sn_journal_ops_t *ops = sn_journal_ops_new();
    s_ops_queue(st, ops, r->project, r->environment, r->run_id);
    char *lock = sn_strdupf("envlock:%s:%s", r->project, r->environment);
    char *envk = sn_strdupf("env:%s:%s", r->project, r->environment);
    sn_journal_ops_set(ops, lock, r->run_id, strlen(r->run_id), 0);
    sn_journal_ops_hset(ops, envk, "current_run", r->run_id, strlen(r->run_id));
    free(lock);
    free(envk);
    s_step_end(r, BP_STEP_TRIGGER, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    if (strcmp(r->trigger, "rollback") == 0) {
        for (int i = BP_STEP_GATE1; i <= BP_STEP_VERIFY_LIVE; i++)
            s_step_end(r, i, SENTINEL__V1__STEP_STATE__STEP_SKIPPED, "rollback run");
        s_plan(ctx, r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK);
        s_step_start(r, BP_STEP_ROLLBACK, s_step_timeout_ms(ctx, r));
        r->state = SENTINEL__V1__RUN_STATE__RUN_ROLLING_BACK;
    } else {
        s_step_start(r, BP_STEP_GATE1, s_step_timeout_ms(ctx, r));
        r->state = SENTINEL__V1__RUN_STATE__RUN_GATING;
    }
    (void)s_commit(st, ctx, br, ops, "run.started", NULL, -1, NULL, NULL);
}

/* Gate 2 passed: plan, then wait for approval or stage. */
static void s_begin_stage(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, const char *type)
{
    bp_pb_run_t *r = br->run;
    for (size_t i = 0; i < r->n_deploys; i++)
        r->deploys[i]->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGING;
    s_step_start(r, BP_STEP_STAGE, s_step_timeout_ms(ctx, r));
    r->state = SENTINEL__V1__RUN_STATE__RUN_STAGING;
    (void)s_commit(st, ctx, br, NULL, type, "stage", -1, NULL, NULL);
}

static void s_after_gate2(bp_t *st, sn_ctx_t *ctx, bp_run_t *br)
{
    bp_pb_run_t *r = br->run;
    s_step_end(r, BP_STEP_GATE2, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    s_step_start(r, BP_STEP_PLAN, 0);
    s_plan(ctx, r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PLANNED);
    if (r->n_deploys == 0) {
        s_step_end(r, BP_STEP_PLAN, SENTINEL__V1__STEP_STATE__STEP_FAILED, "no targets");
        s_finish(st, ctx, br, SENTINEL__V1__RUN_STATE__RUN_FAILED, "environment has no targets",
                 NULL);
        return;
    }
    s_step_end(r, BP_STEP_PLAN, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    const sn_environment_config_t *e = s_env_cfg(ctx, r);
    if (!e || !e->approval.required) {
        s_step_end(r, BP_STEP_APPROVAL, SENTINEL__V1__STEP_STATE__STEP_SKIPPED, "not required");
        s_begin_stage(st, ctx, br, "run.step");
        return;
    }
    int64_t timeout_ms = (int64_t)e->approval_timeout_s * 1000;
    if (e->approval.expiry_s > 0 && (int64_t)e->approval.expiry_s * 1000 < timeout_ms)
        timeout_ms = (int64_t)e->approval.expiry_s * 1000;
    s_step_start(r, BP_STEP_APPROVAL, timeout_ms);
    Sentinel__V1__Approval *a = r->approval;
    a->required = true;
    a->expires_unix_ms = s_step(r, BP_STEP_APPROVAL)->deadline_unix_ms;
    s_str_set(&a->requested_by, r->requested_by);
    size_t n = 0;
    while (e->approval.approvers && e->approval.approvers[n])
        n++;
    if (a->n_approvers == 0 && n > 0) {
        a->approvers = sn_calloc(n, sizeof *a->approvers);
        for (size_t i = 0; i < n; i++)
            a->approvers[i] = sn_strdup(e->approval.approvers[i]);
        a->n_approvers = n;
    }
    char approvers[512] = "";
    size_t off = 0;
    for (size_t i = 0; i < a->n_approvers && off < sizeof approvers; i++)
        off += (size_t)snprintf(approvers + off, sizeof approvers - off, "%s%s", i ? "," : "",
                                a->approvers[i]);
    char expires[24];
    snprintf(expires, sizeof expires, "%lld", (long long)a->expires_unix_ms);
    sn_journal_ops_t *ops = sn_journal_ops_new();
    char *key = sn_strdupf("approval:%s", r->run_id);
    sn_journal_ops_hset(ops, key, "required", "1", 1);
    sn_journal_ops_hset(ops, key, "approvers", approvers, strlen(approvers));
    sn_journal_ops_hset(ops, key, "requested_by", r->requested_by, strlen(r->requested_by));
    sn_journal_ops_hset(ops, key, "expires_ms", expires, strlen(expires));
    free(key);
    r->state = SENTINEL__V1__RUN_STATE__RUN_AWAITING_APPROVAL;
    (void)s_commit(st, ctx, br, ops, "run.awaiting_approval", "approval", -1, NULL, NULL);
}

static void s_begin_rollback(bp_t *st, sn_ctx_t *ctx, bp_run_t *br)
{
    bp_pb_run_t *r = br->run;
    for (size_t i = 0; i < r->n_deploys; i++) {
        bp_pb_deploy_t *d = r->deploys[i];
        if (d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE ||
            d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE_VERIFIED ||
            d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PROMOTING)
            d->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK;
    }
    s_step_start(r, BP_STEP_ROLLBACK, s_step_timeout_ms(ctx, r));
    r->state = SENTINEL__V1__RUN_STATE__RUN_ROLLING_BACK;
    sn_warn(BP_MODULE, "rolling back run=%s reason=%s", r->run_id, r->reason);
    (void)s_commit(st, ctx, br, NULL, "run.step", "rollback", -1, NULL, NULL);
}

static bool s_any_phase(const bp_pb_run_t *r, Sentinel__V1__DeployPhase phase, bool no_error)
{
    for (size_t i = 0; i < r->n_deploys; i++)
        if (r->deploys[i]->phase == phase && (!no_error || s_str_empty(r->deploys[i]->error)))
            return true;
    return false;
}

static bool s_failing(const bp_pb_run_t *r)
{
    if (!s_str_empty(r->reason))
        return true;
    for (size_t i = 0; i < r->n_deploys; i++)
        if (r->deploys[i]->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED ||
            !s_str_empty(r->deploys[i]->error))
            return true;
    return false;
}

/* Joins the per-target work of the current state once no sibling is in flight. */
static void s_advance(bp_t *st, sn_ctx_t *ctx, bp_run_t *br)
{
    bp_pb_run_t *r = br->run;
    if (st->needs_load || !sn_ctx_is_leader(ctx))
        return;
    switch (r->state) {
    case SENTINEL__V1__RUN_STATE__RUN_QUEUED: {
        const char *oldest = NULL;
        for (bp_run_t *o = st->runs; o; o = o->next) {
            if (!s_same_env(o->run, r->project, r->environment))
                continue;
            if (o->run->state != SENTINEL__V1__RUN_STATE__RUN_QUEUED)
                return; /* the environment is held */
            if (!oldest || strcmp(o->run->run_id, oldest) < 0)
                oldest = o->run->run_id;
        }
        if (oldest && strcmp(oldest, r->run_id) == 0)
            s_start(st, ctx, br);
        return;
    }
    case SENTINEL__V1__RUN_STATE__RUN_STAGING:
        if (s_any_phase(r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGING, false))
            return;
        if (s_failing(r)) {
            s_fail_reason(r, "stage failed");
            s_finish(st, ctx, br, SENTINEL__V1__RUN_STATE__RUN_FAILED, NULL, NULL);
            return;
        }
        s_step_end(r, BP_STEP_STAGE, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
        s_step_start(r, BP_STEP_VERIFY_PREVIEW, s_step_timeout_ms(ctx, r));
        r->state = SENTINEL__V1__RUN_STATE__RUN_VERIFYING_PREVIEW;
        (void)s_commit(st, ctx, br, NULL, "run.step", "verify_preview", -1, NULL, NULL);
        return;
    case SENTINEL__V1__RUN_STATE__RUN_VERIFYING_PREVIEW:
        if (s_any_phase(r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED, false))
            return;
        if (s_failing(r)) {
            s_fail_reason(r, "preview verification failed");
            s_finish(st, ctx, br, SENTINEL__V1__RUN_STATE__RUN_FAILED, NULL, NULL);
            return;
        }
        s_step_end(r, BP_STEP_VERIFY_PREVIEW, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
        for (size_t i = 0; i < r->n_deploys; i++)
            r->deploys[i]->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PROMOTING;
        s_step_start(r, BP_STEP_PROMOTE, s_step_timeout_ms(ctx, r));
        r->state = SENTINEL__V1__RUN_STATE__RUN_PROMOTING;
        (void)s_commit(st, ctx, br, NULL, "run.step", "promote", -1, NULL, NULL);
        return;
    case SENTINEL__V1__RUN_STATE__RUN_PROMOTING:
        if (s_any_phase(r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PROMOTING, false))
            return;
        if (s_failing(r)) {
            s_fail_reason(r, "promote failed");
            s_step_close(r, BP_STEP_PROMOTE, SENTINEL__V1__STEP_STATE__STEP_FAILED);
            if (s_any_phase(r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE, false))
                s_begin_rollback(st, ctx, br);
            else
                s_finish(st, ctx, br,
                         strncmp(r->reason, "cancelled", 9) == 0
                             ? SENTINEL__V1__RUN_STATE__RUN_CANCELLED
                             : SENTINEL__V1__RUN_STATE__RUN_FAILED,
                         NULL, NULL);
            return;
        }
        s_step_end(r, BP_STEP_PROMOTE, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
        s_step_start(r, BP_STEP_VERIFY_LIVE, s_step_timeout_ms(ctx, r));
        r->state = SENTINEL__V1__RUN_STATE__RUN_VERIFYING_LIVE;
        (void)s_commit(st, ctx, br, NULL, "run.step", "verify_live", -1, NULL, NULL);
        return;
    case SENTINEL__V1__RUN_STATE__RUN_VERIFYING_LIVE:
        if (s_any_phase(r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE, true))
            return;
        if (s_failing(r)) {
            s_fail_reason(r, "live verification failed");
            s_step_close(r, BP_STEP_VERIFY_LIVE, SENTINEL__V1__STEP_STATE__STEP_FAILED);
            s_begin_rollback(st, ctx, br);
            return;
        }
        s_step_end(r, BP_STEP_VERIFY_LIVE, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
        {
            sn_journal_ops_t *ops = sn_journal_ops_new();
            char *envk = sn_strdupf("env:%s:%s", r->project, r->environment);
            sn_journal_ops_hset(ops, envk, "last_verified_artifact", r->artifact_sha256,
                                strlen(r->artifact_sha256));
            sn_journal_ops_hset(ops, envk, "last_verified_run", r->run_id, strlen(r->run_id));
            sn_journal_ops_hset(ops, envk, "last_verified_sha", r->sha, strlen(r->sha));
            free(envk);
            s_finish(st, ctx, br, SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED, NULL, ops);
        }
        return;
    case SENTINEL__V1__RUN_STATE__RUN_ROLLING_BACK: {
        if (s_any_phase(r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK, false))
            return;
        bp_pb_step_t *rb = s_step(r, BP_STEP_ROLLBACK);
        bool rb_failed = !s_str_empty(rb->reason);
        if (rb->state == SENTINEL__V1__STEP_STATE__STEP_RUNNING)
            s_step_end(r, BP_STEP_ROLLBACK,
                       rb_failed ? SENTINEL__V1__STEP_STATE__STEP_FAILED
                                 : SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED,
                       NULL);
        Sentinel__V1__RunState end = SENTINEL__V1__RUN_STATE__RUN_ROLLED_BACK;
        if (rb_failed || rb->state == SENTINEL__V1__STEP_STATE__STEP_TIMED_OUT)
            end = SENTINEL__V1__RUN_STATE__RUN_FAILED;
        else if (strcmp(r->trigger, "rollback") == 0)
            end = SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED;
        else if (strncmp(r->reason, "cancelled", 9) == 0)
            end = SENTINEL__V1__RUN_STATE__RUN_CANCELLED;
        if (end == SENTINEL__V1__RUN_STATE__RUN_FAILED) {
            char *why = sn_strdupf("%s; rollback failed: %s", r->reason,
                                   s_str_empty(rb->reason) ? "timed out" : rb->reason);
            s_finish(st, ctx, br, end, why, NULL);
            free(why);
        } else {
            s_finish(st, ctx, br, end, NULL, NULL);
        }
        return;
    }
    default:
        return;
    }
}

/* Starts the oldest queued run of an environment that has just been released. */
static void s_kick_env(bp_t *st, sn_ctx_t *ctx, const char *project, const char *env)
{
    for (bp_run_t *br = st->runs; br; br = br->next)
        if (s_same_env(br->run, project, env) &&
            br->run->state == SENTINEL__V1__RUN_STATE__RUN_QUEUED) {
            s_advance(st, ctx, br);
            return;
        }
}

/* ---- results --------------------------------------------------------------------------- */

/* Applies the answer to one work item: @reply (borrowed) or, when NULL, the failure
 * @why. Stale answers (the record moved on) are ignored. */
static void s_apply(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, bp_work_t w, int di,
                    const sn_envelope_t *reply, const char *why)
{
    bp_pb_run_t *r = br->run;
    bp_pb_deploy_t *d = di >= 0 && (size_t)di < r->n_deploys ? r->deploys[di] : NULL;
    char reason[512];
    bool ok = false;
    switch (w) {
    case BP_W_GATE1:
    case BP_W_GATE2: {
        if (!s_step_is(r, s_works[w].step, SENTINEL__V1__STEP_STATE__STEP_RUNNING))
            return;
        const Sentinel__V1__GateResult *g =
            reply && reply->body_case == SENTINEL__V1__ENVELOPE__BODY_GATE_RESULT
                ? reply->gate_result
                : NULL;
        if (!g) {
            snprintf(reason, sizeof reason, "gate %d: %s", w == BP_W_GATE1 ? 1 : 2,
                     why ? why : "bad reply");
            s_step_end(r, s_works[w].step, SENTINEL__V1__STEP_STATE__STEP_FAILED, reason);
            s_finish(st, ctx, br, SENTINEL__V1__RUN_STATE__RUN_FAILED, reason, NULL);
            return;
        }
        if (!g->ok) {
            size_t off = (size_t)snprintf(reason, sizeof reason,
                                          "gate %d rejected:", w == BP_W_GATE1 ? 1 : 2);
            for (size_t i = 0; i < g->n_reasons && off < sizeof reason; i++)
                off += (size_t)snprintf(reason + off, sizeof reason - off, "%s %s", i ? ";" : "",
                                        g->reasons[i]);
            for (size_t i = 0; i < g->n_findings && off < sizeof reason; i++)
                off += (size_t)snprintf(reason + off, sizeof reason - off, "; %s at %s:%u",
                                        g->findings[i]->kind, g->findings[i]->file,
                                        g->findings[i]->line);
            s_step_end(r, s_works[w].step, SENTINEL__V1__STEP_STATE__STEP_FAILED, reason);
            s_str_set(&r->reason, reason);
            if (!s_commit(st, ctx, br, NULL, "gate.rejected", s_step_names[s_works[w].step], -1,
                          NULL, NULL))
                return;
            s_finish(st, ctx, br, SENTINEL__V1__RUN_STATE__RUN_REJECTED, NULL, NULL);
            return;
        }
        if (w == BP_W_GATE2) {
            s_after_gate2(st, ctx, br);
            return;
        }
        s_step_end(r, BP_STEP_GATE1, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
        r->state = SENTINEL__V1__RUN_STATE__RUN_BUILDING;
        if (!s_str_empty(r->artifact_sha256)) {
            char *note = sn_strdupf("promoted artifact of run %s", r->promoted_from_run);
            s_step_end(r, BP_STEP_BUILD, SENTINEL__V1__STEP_STATE__STEP_SKIPPED, note);
            free(note);
            s_step_start(r, BP_STEP_GATE2, s_step_timeout_ms(ctx, r));
            (void)s_commit(st, ctx, br, NULL, "run.step", "gate2", -1, NULL, NULL);
        } else {
            s_step_start(r, BP_STEP_BUILD, s_step_timeout_ms(ctx, r));
            (void)s_commit(st, ctx, br, NULL, "run.step", "build", -1, NULL, NULL);
        }
        return;
    }
    case BP_W_BUILD: {
        if (!s_step_is(r, BP_STEP_BUILD, SENTINEL__V1__STEP_STATE__STEP_RUNNING))
            return;
        const Sentinel__V1__BuildResult *b =
            reply && reply->body_case == SENTINEL__V1__ENVELOPE__BODY_BUILD_RESULT
                ? reply->build_result
                : NULL;
        if (b && b->ok && !s_str_empty(b->artifact_sha256)) {
            s_str_set(&r->artifact_sha256, b->artifact_sha256);
            s_step_end(r, BP_STEP_BUILD, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
            s_step_start(r, BP_STEP_GATE2, s_step_timeout_ms(ctx, r));
            (void)s_commit(st, ctx, br, NULL, "build.succeeded", "gate2", -1, NULL, NULL);
            return;
        }
        snprintf(reason, sizeof reason, "build failed: %s",
                 b && !s_str_empty(b->reason) ? b->reason
                 : b                          ? "no artifact"
                                              : (why ? why : "bad reply"));
        s_step_end(r, BP_STEP_BUILD, SENTINEL__V1__STEP_STATE__STEP_FAILED, reason);
        s_str_set(&r->reason, reason);
        if (!s_commit(st, ctx, br, NULL, "build.failed", "build", -1, NULL, NULL))
            return;
        s_finish(st, ctx, br, SENTINEL__V1__RUN_STATE__RUN_FAILED, NULL, NULL);
        return;
    }
    default:
        break;
    }
    /* Per-target work. */
    if (!d)
        return;
    static const Sentinel__V1__DeployPhase expect[] = {
        [BP_W_STAGE] = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGING,
        [BP_W_VPREVIEW] = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED,
        [BP_W_PROMOTE] = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PROMOTING,
        [BP_W_VLIVE] = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE,
        [BP_W_ROLLBACK] = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK,
    };
    if (d->phase != expect[w] || (w == BP_W_VLIVE && !s_str_empty(d->error)))
        return;
    const char *fail = why ? why : "bad reply";
    if (w == BP_W_VPREVIEW || w == BP_W_VLIVE) {
        const Sentinel__V1__VerifyResult *v =
            reply && reply->body_case == SENTINEL__V1__ENVELOPE__BODY_VERIFY_RESULT
                ? reply->verify_result
                : NULL;
        ok = v && v->ok;
        if (v && !v->ok)
            fail = s_str_empty(v->reason) ? "verification failed" : v->reason;
    } else {
        const Sentinel__V1__DeployResult *res =
            reply && reply->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT
                ? reply->deploy_result
                : NULL;
        ok = res && res->ok;
        if (res && !res->ok)
            fail = s_str_empty(res->reason) ? "deployer failed" : res->reason;
        const bp_pb_deploy_t *got = res ? res->deploy : NULL;
        if (ok && got) {
            if (!s_str_empty(got->preview_url))
                s_str_set(&d->preview_url, got->preview_url);
            if (!s_str_empty(got->live_url))
                s_str_set(&d->live_url, got->live_url);
            if (!s_str_empty(got->release_id) && w != BP_W_ROLLBACK)
                s_str_set(&d->release_id, got->release_id);
            if (!s_str_empty(got->previous_release_id) && w != BP_W_ROLLBACK)
                s_str_set(&d->previous_release_id, got->previous_release_id);
            if (!s_str_empty(got->provider_deployment_id))
                s_str_set(&d->provider_deployment_id, got->provider_deployment_id);
        }
    }
    int64_t now = sn_wall_ms();
    const char *type = NULL, *stage_label = NULL;
    switch (w) {
    case BP_W_STAGE:
        d->phase = ok ? SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED
                      : SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
        if (ok)
            d->staged_unix_ms = now;
        type = ok ? "deploy.staged" : "deploy.failed";
        snprintf(reason, sizeof reason, "stage failed on %s: %s", d->target, fail);
        break;
    case BP_W_VPREVIEW:
        d->phase = ok ? SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PREVIEW_VERIFIED
                      : SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
        type = ok ? "deploy.verified" : "deploy.failed";
        stage_label = "preview";
        snprintf(reason, sizeof reason, "preview verification failed on %s: %s", d->target, fail);
        break;
    case BP_W_PROMOTE:
        d->phase = ok ? SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE
                      : SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
        if (ok)
            d->promoted_unix_ms = now;
        type = ok ? "deploy.promoted" : "deploy.failed";
        snprintf(reason, sizeof reason, "promote failed on %s: %s", d->target, fail);
        break;
    case BP_W_VLIVE:
        if (ok)
            d->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE_VERIFIED;
        type = ok ? "deploy.verified" : "deploy.failed";
        stage_label = "live";
        snprintf(reason, sizeof reason, "live verification failed on %s: %s", d->target, fail);
        break;
    case BP_W_ROLLBACK:
        d->phase = ok ? SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK
                      : SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
        d->finished_unix_ms = now;
        type = ok ? "deploy.rolled_back" : "deploy.failed";
        stage_label = "rollback";
        snprintf(reason, sizeof reason, "rollback failed on %s: %s", d->target, fail);
        break;
    default:
        return;
    }
    if (!ok) {
        s_str_set(&d->error, reason);
        if (w == BP_W_ROLLBACK) {
            bp_pb_step_t *rb = s_step(r, BP_STEP_ROLLBACK);
            if (s_str_empty(rb->reason))
                s_str_set(&rb->reason, reason);
        } else {
            s_fail_reason(r, reason);
        }
        sn_warn(BP_MODULE, "%s run=%s", reason, r->run_id);
    }
    if (!s_commit(st, ctx, br, NULL, type, s_step_names[s_works[w].step], di,
                  stage_label ? "stage" : NULL, stage_label))
        return;
    s_advance(st, ctx, br);
}

/* Decodes a job's stored result: a reply Envelope, or the bare result message of @w. */
static sn_envelope_t *s_job_result(bp_work_t w, const sn_ledger_job_t *job)
{
    if (!job->result || job->result_len == 0)
        return NULL;
    sn_envelope_t *env = sn_envelope_unpack(job->result, job->result_len, SN_MAX_FRAME_BYTES, NULL);
    if (env)
        return env;
    env = sn_calloc(1, sizeof *env);
    sentinel__v1__envelope__init(env);
    switch (w) {
    case BP_W_BUILD:
        env->build_result = sentinel__v1__build_result__unpack(NULL, job->result_len, job->result);
        env->body_case = env->build_result ? SENTINEL__V1__ENVELOPE__BODY_BUILD_RESULT : 0;
        break;
    case BP_W_VPREVIEW:
    case BP_W_VLIVE:
        env->verify_result =
            sentinel__v1__verify_result__unpack(NULL, job->result_len, job->result);
        env->body_case = env->verify_result ? SENTINEL__V1__ENVELOPE__BODY_VERIFY_RESULT : 0;
        break;
    default:
        env->deploy_result =
            sentinel__v1__deploy_result__unpack(NULL, job->result_len, job->result);
        env->body_case = env->deploy_result ? SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT : 0;
        break;
    }
    if (env->body_case == 0) {
        free(env);
        return NULL;
    }
    /* Owned by protobuf-c now: fields are heap, the envelope frees them all. */
    env->id = sn_strdup("");
    env->type = sn_strdup("");
    return env;
}

/* ---- calls ------------------------------------------------------------------------------- */

static void s_call_done(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply,
                        const char *nak_reason)
{
    bp_done_arg_t *a = arg;
    bp_t *st = a->st;
    bp_call_t *c = s_find_call(st, a->key);
    free(a);
    if (!c)
        return;
    c->is_inflight = false;
    bp_run_t *br = s_find_run(st, c->run_id);
    if (!br || !sn_ctx_is_leader(ctx))
        return;
    if (!reply) {
        /* Decides nothing: the job is sent again (queued) or re-dispatched by the ledger
         * (lapsed lease); the step's deadline bounds it all. */
        if (c->naks++ == 0)
            sn_warn(BP_MODULE, "call not answered key=%s reason=%s: will retry", c->key,
                    nak_reason ? nak_reason : "?");
        return;
    }
    char run_id[64];
    sn_strlcpy(run_id, c->run_id, sizeof run_id);
    s_apply(st, ctx, br, c->work, c->deploy, reply, NULL);
    s_kick(st, ctx, run_id);
}

static void s_send(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, bp_call_t *c, uint32_t attempt,
                   const Sentinel__V1__JobSpec *spec_for_payload)
{
    (void)spec_for_payload;
    bp_pb_run_t *r = br->run;
    bp_pb_deploy_t *d =
        c->deploy >= 0 && (size_t)c->deploy < r->n_deploys ? r->deploys[c->deploy] : NULL;
    const sn_project_config_t *p = sn_config_project(sn_ctx_config(ctx), r->project);
    const sn_target_config_t *t = d ? sn_config_target(sn_ctx_config(ctx), d->target) : NULL;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    Sentinel__V1__GateRequest g = SENTINEL__V1__GATE_REQUEST__INIT;
    Sentinel__V1__BuildRequest b = SENTINEL__V1__BUILD_REQUEST__INIT;
    Sentinel__V1__DeployRequest dr = SENTINEL__V1__DEPLOY_REQUEST__INIT;
    Sentinel__V1__VerifyRequest v = SENTINEL__V1__VERIFY_REQUEST__INIT;
    char *service = NULL, *url = NULL;
    const char *type = "run.request";
    sn_envelope_stamp(&env, sn_ctx_source(ctx), type, id);
    switch (c->work) {
    case BP_W_GATE1:
    case BP_W_GATE2:
        g.run_id = r->run_id;
        g.project = r->project;
        g.environment = r->environment;
        g.ref = r->ref;
        g.sha = r->sha;
        g.gate = c->work == BP_W_GATE1 ? 1 : 2;
        g.artifact_sha256 = r->artifact_sha256;
        g.source_path = p && p->repo ? p->repo : "";
        env.type = "gate.check";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_GATE_REQUEST;
        env.gate_request = &g;
        service = sn_strdup("gate.check");
        break;
    case BP_W_BUILD:
        b.run_id = r->run_id;
        b.project = r->project;
        b.ref = r->ref;
        b.sha = r->sha;
        env.type = "build.request";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_BUILD_REQUEST;
        env.build_request = &b;
        service = sn_strdup("build.local");
        break;
    case BP_W_STAGE:
    case BP_W_PROMOTE:
    case BP_W_ROLLBACK:
        if (!d)
            return;
        dr.op = c->work == BP_W_STAGE ? "stage" : c->work == BP_W_PROMOTE ? "promote" : "rollback";
        dr.deploy = d;
        dr.artifact_sha256 = r->artifact_sha256;
        dr.commit = r->sha;
        if (c->work == BP_W_ROLLBACK) {
            if (strcmp(r->trigger, "rollback") == 0 && !s_str_empty(r->rollback_to)) {
                url = sn_strdupf("%s-%s", r->rollback_to, d->target);
                dr.to_release_id = url;
            } else {
                dr.to_release_id = d->previous_release_id;
            }
            service = sn_strdup("heal.rollback");
        } else {
            const char *host = t && !s_str_empty(t->host) ? t->host : sn_ctx_host(ctx);
            service = sn_strdupf("deploy.local.%s", host);
        }
        env.type = "deploy.request";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST;
        env.deploy_request = &dr;
        break;
    case BP_W_VPREVIEW:
    case BP_W_VLIVE: {
        if (!d)
            return;
        const char *base = c->work == BP_W_VPREVIEW ? d->preview_url : d->live_url;
        const char *path = t && t->check.path ? t->check.path : "/";
        size_t blen = strlen(base);
        if (blen && base[blen - 1] == '/')
            blen--;
        url = sn_strdupf("%.*s%s", (int)blen, base, path);
        v.deploy_id = d->deploy_id;
        v.url = url;
        v.expect_status = t ? (uint32_t)t->check.status : 200;
        v.body_contains = t && t->check.body_contains ? t->check.body_contains : "";
        v.max_latency_ms = t ? (uint32_t)t->check.max_latency_ms : 2000;
        v.expect_deploy_id = d->deploy_id;
        v.expect_commit = r->sha;
        v.consecutive = t ? (uint32_t)t->check.consecutive : 1;
        v.interval_ms = t ? (uint32_t)t->check.interval_ms : 500;
        v.deadline_ms = t ? (uint32_t)t->check.deadline_ms : 30000;
        v.dns_name = t && t->check.dns_name ? t->check.dns_name : "";
        v.dns_expect = t && t->check.dns_expect ? t->check.dns_expect : "";
        size_t nres = 0;
        while (t && t->check.dns_resolvers && t->check.dns_resolvers[nres])
            nres++;
        v.n_dns_resolvers = nres;
        v.dns_resolvers = nres ? t->check.dns_resolvers : NULL;
        env.type = "verify.request";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_VERIFY_REQUEST;
        env.verify_request = &v;
        service = sn_strdup("verify.check");
        break;
    }
    }
    env.correlation_id = r->run_id;
    env.fence = sn_ctx_fence(ctx);
    if (s_works[c->work].is_job)
        sn_envelope_add_label(&env, "job_id", c->key);
    int64_t deadline = s_step(r, s_works[c->work].step)->deadline_unix_ms;
    int64_t left = deadline > 0 ? deadline - sn_wall_ms() : 600000;
    if (left < 1000)
        left = 1000;
    if (left > 86400000)
        left = 86400000;
    bp_done_arg_t *a = sn_calloc(1, sizeof *a);
    a->st = st;
    sn_strlcpy(a->key, c->key, sizeof a->key);
    c->is_inflight = true;
    c->last_send_ms = sn_mono_ms();
    sn_debug(BP_MODULE, "call service=%s key=%s attempt=%u", service, c->key, attempt);
    sn_ctx_call(ctx, service, &env, (int)left, attempt, s_call_done, a);
    sn_envelope_fini_labels(&env);
    free(service);
    free(url);
}

/* Makes sure work item (@w, deploy @di) of @br is under way: its job exists, a call is
 * out, or its stored outcome is applied. */
static void s_dispatch(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, bp_work_t w, int di)
{
    bp_pb_run_t *r = br->run;
    char key[BP_KEY_MAX];
    s_work_key(r, w, di >= 0 ? r->deploys[di]->target : NULL, key, sizeof key);
    bp_call_t *c = s_find_call(st, key);
    if (!c) {
        c = sn_calloc(1, sizeof *c);
        sn_strlcpy(c->key, key, sizeof c->key);
        sn_strlcpy(c->run_id, r->run_id, sizeof c->run_id);
        c->work = w;
        c->deploy = di;
        c->next = st->calls;
        st->calls = c;
    }
    if (c->is_inflight)
        return;
    bool is_due = c->last_send_ms == 0 || sn_mono_ms() - c->last_send_ms >= BP_RESEND_MS;
    if (!s_works[w].is_job) {
        if (is_due)
            s_send(st, ctx, br, c, 1, NULL);
        return;
    }
    sn_ledger_t *ledger = sn_ctx_ledger(ctx);
    if (!c->is_created) {
        const sn_runtime_config_t *rt = &sn_ctx_config(ctx)->runtime;
        Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
        spec.job_id = key;
        spec.kind = (char *)s_works[w].tag;
        spec.service = "";
        spec.owner_role = BP_ROLE;
        spec.max_attempts = rt->job_max_attempts > 0 ? (uint32_t)rt->job_max_attempts : 0;
        spec.lease_ms = rt->job_lease_ms > 0 ? rt->job_lease_ms : 0;
        spec.correlation_id = r->run_id;
        sn_rc_t rc = sn_ledger_create(ledger, sn_ctx_fence(ctx), BP_ROLE, &spec);
        if (rc != SN_OK) {
            sn_warn(BP_MODULE, "cannot create job=%s rc=%s", key, sn_rc_str(rc));
            return;
        }
        c->is_created = true;
    }
    sn_ledger_job_t job;
    memset(&job, 0, sizeof job);
    if (sn_ledger_get(ledger, key, &job) != SN_OK)
        return;
    switch (job.state) {
    case SN_JOB_QUEUED:
        if (is_due)
            s_send(st, ctx, br, c, job.spec ? job.spec->attempt : 1, job.spec);
        break;
    case SN_JOB_DONE:
    case SN_JOB_FAILED: {
        sn_envelope_t *env = s_job_result(w, &job);
        s_apply(st, ctx, br, w, di, env, env ? NULL : "job finished without a readable result");
        sn_envelope_free(&env);
        break;
    }
    case SN_JOB_DEAD: {
        char why[96];
        snprintf(why, sizeof why, "job dead-lettered after %u attempts",
                 job.spec ? job.spec->attempt : 0);
        s_apply(st, ctx, br, w, di, NULL, why);
        break;
    }
    default:
        break; /* claimed: the worker holds it under its lease */
    }
    sn_ledger_job_fini(&job);
}

/* Every work item @br needs now, from its record alone. */
static void s_run_work(bp_t *st, sn_ctx_t *ctx, bp_run_t *br)
{
    bp_pb_run_t *r = br->run;
    if (s_step_is(r, BP_STEP_GATE1, SENTINEL__V1__STEP_STATE__STEP_RUNNING)) {
        s_dispatch(st, ctx, br, BP_W_GATE1, -1);
        return;
    }
    if (s_step_is(r, BP_STEP_BUILD, SENTINEL__V1__STEP_STATE__STEP_RUNNING)) {
        s_dispatch(st, ctx, br, BP_W_BUILD, -1);
        return;
    }
    if (s_step_is(r, BP_STEP_GATE2, SENTINEL__V1__STEP_STATE__STEP_RUNNING)) {
        s_dispatch(st, ctx, br, BP_W_GATE2, -1);
        return;
    }
    bp_work_t w;
    Sentinel__V1__DeployPhase phase;
    switch (r->state) {
    case SENTINEL__V1__RUN_STATE__RUN_STAGING:
        w = BP_W_STAGE, phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGING;
        break;
    case SENTINEL__V1__RUN_STATE__RUN_VERIFYING_PREVIEW:
        w = BP_W_VPREVIEW, phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED;
        break;
    case SENTINEL__V1__RUN_STATE__RUN_PROMOTING:
        w = BP_W_PROMOTE, phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PROMOTING;
        break;
    case SENTINEL__V1__RUN_STATE__RUN_VERIFYING_LIVE:
        w = BP_W_VLIVE, phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE;
        break;
    case SENTINEL__V1__RUN_STATE__RUN_ROLLING_BACK:
        w = BP_W_ROLLBACK, phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK;
        break;
    default:
        return;
    }
    /* s_dispatch may apply a stored result and end the run: stop when it left memory. */
    char run_id[64];
    sn_strlcpy(run_id, r->run_id, sizeof run_id);
    size_t n = r->n_deploys;
    for (size_t i = 0; i < n; i++) {
        if (s_find_run(st, run_id) != br || br->run->state != r->state || st->needs_load)
            return;
        bp_pb_deploy_t *d = br->run->deploys[i];
        if (d->phase == phase && (w != BP_W_VLIVE || s_str_empty(d->error)))
            s_dispatch(st, ctx, br, w, (int)i);
    }
}

/* Sends the work a run needs now, without waiting for the tick (step latency). */
static void s_kick(bp_t *st, sn_ctx_t *ctx, const char *run_id)
{
    bp_run_t *br = st->needs_load ? NULL : s_find_run(st, run_id);
    if (br)
        s_run_work(st, ctx, br);
}

/* The deadline of the running step passed: TIMED_OUT, and the run fails (rolling back
 * whatever may be live). */
static void s_check_deadline(bp_t *st, sn_ctx_t *ctx, bp_run_t *br)
{
    bp_pb_run_t *r = br->run;
    int64_t now = sn_wall_ms();
    for (int i = 0; i < BP_STEP_COUNT; i++) {
        bp_pb_step_t *s = s_step(r, i);
        if (s->state != SENTINEL__V1__STEP_STATE__STEP_RUNNING || s->deadline_unix_ms <= 0 ||
            now < s->deadline_unix_ms)
            continue;
        char reason[96];
        if (i == BP_STEP_APPROVAL)
            snprintf(reason, sizeof reason, "approval expired");
        else
            snprintf(reason, sizeof reason, "step %s timed out", s_step_names[i]);
        s_step_end(r, i, SENTINEL__V1__STEP_STATE__STEP_TIMED_OUT, reason);
        if (i == BP_STEP_ROLLBACK) {
            s_str_set(&s->reason, reason);
            for (size_t k = 0; k < r->n_deploys; k++)
                if (r->deploys[k]->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK) {
                    r->deploys[k]->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
                    s_str_set(&r->deploys[k]->error, reason);
                }
        } else {
            s_fail_reason(r, reason);
        }
        sn_warn(BP_MODULE, "%s run=%s", reason, r->run_id);
        if (i <= BP_STEP_APPROVAL) {
            s_finish(st, ctx, br, SENTINEL__V1__RUN_STATE__RUN_FAILED, NULL, NULL);
            return;
        }
        /* In-flight siblings are given up: a promote that may have happened is rolled
         * back like a live one. */
        for (size_t k = 0; k < r->n_deploys; k++) {
            bp_pb_deploy_t *d = r->deploys[k];
            if (d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGING ||
                d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED) {
                d->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
                s_str_set(&d->error, reason);
            } else if (d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PROMOTING ||
                       (d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE &&
                        s_str_empty(d->error))) {
                d->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE;
                s_str_set(&d->error, reason);
            }
        }
        if (!s_commit(st, ctx, br, NULL, "run.step", s_step_names[i], -1, NULL, NULL))
            return;
        s_advance(st, ctx, br);
        return;
    }
}

/* ---- requests -------------------------------------------------------------------------- */

static void s_reply_ref(sn_ctx_t *ctx, sn_request_t *req, const char *run_id,
                        Sentinel__V1__RunState state, const char *message)
{
    Sentinel__V1__RunRef ref = SENTINEL__V1__RUN_REF__INIT;
    ref.run_id = (char *)(run_id ? run_id : "");
    ref.state = state;
    ref.message = (char *)(message ? message : "");
    sn_envelope_t reply;
    sentinel__v1__envelope__init(&reply);
    reply.type = "run.ref";
    reply.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN_REF;
    reply.run_ref = &ref;
    sn_request_reply(ctx, req, &reply);
}

/* Reads env:<project>:<env> field @field (caller frees; NULL if absent or on error). */
static char *s_env_field(sn_ctx_t *ctx, const char *project, const char *env, const char *field)
{
    sn_redis_t *redis = sn_ctx_redis(ctx);
    char *key = sn_strdupf("%senv:%s:%s", sn_redis_ns(redis), project, env);
    const char *argv[] = {"HGET", key, field};
    redisReply *rep = NULL;
    sn_rc_t rc = sn_redis_cmd(redis, SN_REDIS_MAIN, 0, &rep, 3, argv, NULL);
    free(key);
    char *out = NULL;
    if (rc == SN_OK && rep->type == REDIS_REPLY_STRING && rep->len > 0)
        out = sn_strndup(rep->str, rep->len);
    if (rep)
        freeReplyObject(rep);
    return out;
}

/* Reads a (terminal or not) run record from Redis; NULL if absent. */
static bp_pb_run_t *s_read_run(sn_ctx_t *ctx, const char *run_id)
{
    sn_redis_t *redis = sn_ctx_redis(ctx);
    char *key = sn_strdupf("%srun:%s", sn_redis_ns(redis), run_id);
    const char *argv[] = {"HGET", key, "pb"};
    redisReply *rep = NULL;
    sn_rc_t rc = sn_redis_cmd(redis, SN_REDIS_MAIN, 0, &rep, 3, argv, NULL);
    free(key);
    bp_pb_run_t *r = NULL;
    if (rc == SN_OK && rep->type == REDIS_REPLY_STRING && rep->len > 0 &&
        rep->len <= SN_MAX_EVENT_BYTES)
        r = sentinel__v1__run__unpack(NULL, rep->len, (const uint8_t *)rep->str);
    if (rep)
        freeReplyObject(rep);
    return r;
}

/* The branch of a ref: "refs/heads/main" -> "main". */
static const char *s_branch(const char *ref)
{
    return strncmp(ref, "refs/heads/", 11) == 0 ? ref + 11 : ref;
}

/* Creates and queues one run of @tr for environment @e; *msg gets a refusal (static or
 * heap in *msg_heap). */
static bp_run_t *s_queue_run(bp_t *st, sn_ctx_t *ctx, const sn_project_config_t *p,
                             const sn_environment_config_t *e,
                             const Sentinel__V1__TriggerRequest *tr, const char *who, char **msg)
{
    char *frozen = s_env_field(ctx, p->name, e->name, "frozen");
    bool is_frozen = frozen && strcmp(frozen, "1") == 0;
    free(frozen);
    if (is_frozen) {
        *msg = sn_strdupf("environment %s/%s is frozen", p->name, e->name);
        return NULL;
    }
    char *sha = sn_strdup(tr->sha ? tr->sha : "");
    char *artifact = NULL, *from_run = NULL;
    if (!s_str_empty(e->promote_from) || !s_str_empty(tr->promote_from_run)) {
        if (!s_str_empty(tr->promote_from_run)) {
            bp_pb_run_t *src = s_read_run(ctx, tr->promote_from_run);
            if (src && src->state == SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED &&
                strcmp(src->project, p->name) == 0 && !s_str_empty(src->artifact_sha256) &&
                (s_str_empty(e->promote_from) || strcmp(src->environment, e->promote_from) == 0)) {
                artifact = sn_strdup(src->artifact_sha256);
                from_run = sn_strdup(src->run_id);
                free(sha);
                sha = sn_strdup(src->sha);
            }
            if (src)
                sentinel__v1__run__free_unpacked(src, NULL);
            if (!artifact) {
                *msg = sn_strdupf("run %s is not a verified run of %s/%s to promote",
                                  tr->promote_from_run, p->name,
                                  e->promote_from ? e->promote_from : "*");
                free(sha);
                return NULL;
            }
        } else {
            artifact = s_env_field(ctx, p->name, e->promote_from, "last_verified_artifact");
            from_run = s_env_field(ctx, p->name, e->promote_from, "last_verified_run");
            char *vsha = s_env_field(ctx, p->name, e->promote_from, "last_verified_sha");
            bool mismatch = vsha && !s_str_empty(sha) && strcmp(vsha, sha) != 0;
            if (!artifact || mismatch) {
                *msg = !artifact ? sn_strdupf("no verified artifact in %s/%s to promote", p->name,
                                              e->promote_from)
                                 : sn_strdupf("commit %s was not verified in %s/%s (last "
                                              "verified: %s)",
                                              sha, p->name, e->promote_from, vsha);
                free(vsha);
                free(artifact);
                free(from_run);
                free(sha);
                return NULL;
            }
            free(sha);
            sha = vsha ? vsha : sn_strdup("");
        }
    }
    if (s_str_empty(sha)) {
        *msg = sn_strdup("no commit: sha is required");
        free(sha);
        free(artifact);
        free(from_run);
        return NULL;
    }
    /* Dedupe on (project, env, sha) among runs in flight. */
    for (bp_run_t *o = st->runs; o; o = o->next)
        if (s_same_env(o->run, p->name, e->name) && strcmp(o->run->sha, sha) == 0 &&
            strcmp(o->run->trigger, "rollback") != 0) {
            *msg = sn_strdupf("duplicate: run %s already has %s", o->run->run_id, sha);
            free(sha);
            free(artifact);
            free(from_run);
            return o;
        }
    bp_pb_run_t *r = s_run_new(p->name, e->name, tr->ref ? tr->ref : "", sha, tr->trigger, who);
    if (artifact) {
        s_str_set(&r->artifact_sha256, artifact);
        s_str_set(&r->promoted_from_run, from_run ? from_run : "");
        s_str_set(&r->trigger, "promotion");
    }
    free(sha);
    free(artifact);
    free(from_run);
    bp_run_t *br = sn_calloc(1, sizeof *br);
    br->run = r;
    br->next = st->runs;
    st->runs = br;
    sn_journal_ops_t *ops = sn_journal_ops_new();
    char *pk = sn_strdupf("runs:%s", p->name);
    sn_journal_ops_zadd(ops, "runs:all", (double)r->created_unix_ms, r->run_id);
    sn_journal_ops_zadd(ops, pk, (double)r->created_unix_ms, r->run_id);
    free(pk);
    s_ops_queue(st, ops, p->name, e->name, NULL);
    if (!s_commit(st, ctx, br, ops, "run.queued", NULL, -1, NULL, NULL)) {
        *msg = sn_strdup("cannot record the run (Redis): try again");
        return NULL;
    }
    return br;
}

/* Marks the other queued runs of @br's environment superseded. */
static void s_supersede(bp_t *st, sn_ctx_t *ctx, bp_run_t *br)
{
    char run_id[64], project[256], env[256];
    sn_strlcpy(run_id, br->run->run_id, sizeof run_id);
    sn_strlcpy(project, br->run->project, sizeof project);
    sn_strlcpy(env, br->run->environment, sizeof env);
    for (bool again = true; again && !st->needs_load;) {
        again = false;
        for (bp_run_t *o = st->runs; o; o = o->next) {
            bp_pb_run_t *r = o->run;
            if (strcmp(r->run_id, run_id) == 0 || !s_same_env(r, project, env) ||
                r->state != SENTINEL__V1__RUN_STATE__RUN_QUEUED || strcmp(r->run_id, run_id) > 0)
                continue;
            s_str_set(&r->superseded_by, run_id);
            char *why = sn_strdupf("superseded by %s", run_id);
            s_finish(st, ctx, o, SENTINEL__V1__RUN_STATE__RUN_SUPERSEDED, why, NULL);
            free(why);
            again = true; /* the list changed */
            break;
        }
    }
}

static void s_trigger(bp_t *st, sn_ctx_t *ctx, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    const Sentinel__V1__TriggerRequest *tr = env->trigger;
    const sn_project_config_t *p =
        s_str_empty(tr->project) ? NULL : sn_config_project(sn_ctx_config(ctx), tr->project);
    if (!p) {
        s_reply_ref(ctx, req, NULL, SENTINEL__V1__RUN_STATE__RUN_STATE_UNSPECIFIED,
                    "unknown project");
        return;
    }
    const sn_environment_config_t *envs[32];
    size_t n = 0;
    if (!s_str_empty(tr->environment)) {
        const sn_environment_config_t *e = sn_config_environment(p, tr->environment);
        if (e)
            envs[n++] = e;
    } else if (!s_str_empty(tr->ref)) {
        for (size_t i = 0; i < p->environment_count && n < SN_ARRAY_LEN(envs); i++)
            if (p->environments[i].branch &&
                strcmp(p->environments[i].branch, s_branch(tr->ref)) == 0)
                envs[n++] = &p->environments[i];
    }
    if (n == 0) {
        s_reply_ref(ctx, req, NULL, SENTINEL__V1__RUN_STATE__RUN_STATE_UNSPECIFIED,
                    s_str_empty(tr->environment) ? "no environment for this ref"
                                                 : "unknown environment");
        return;
    }
    if (tr->dry_run) {
        char msg[256];
        snprintf(msg, sizeof msg, "dry run: would queue %zu run(s), first on %s/%s", n, p->name,
                 envs[0]->name);
        s_reply_ref(ctx, req, NULL, SENTINEL__V1__RUN_STATE__RUN_STATE_UNSPECIFIED, msg);
        return;
    }
    const char *who = s_identity(ctx, req);
    char *first_id = NULL, *message = NULL;
    Sentinel__V1__RunState first_state = SENTINEL__V1__RUN_STATE__RUN_STATE_UNSPECIFIED;
    for (size_t i = 0; i < n; i++) {
        char *msg = NULL;
        bp_run_t *br = s_queue_run(st, ctx, p, envs[i], tr, who, &msg);
        if (br && !msg) {
            const sn_environment_config_t *e = envs[i];
            if (e->supersede)
                s_supersede(st, ctx, br);
            if (!first_id) {
                first_id = sn_strdup(br->run->run_id);
                first_state = br->run->state;
            }
            char id[64];
            sn_strlcpy(id, br->run->run_id, sizeof id);
            s_advance(st, ctx, br);
            s_kick(st, ctx, id);
        } else if (br && !first_id) { /* duplicate */
            first_id = sn_strdup(br->run->run_id);
            first_state = br->run->state;
        }
        if (msg && !message)
            message = msg;
        else
            free(msg);
    }
    sn_info(BP_MODULE, "trigger project=%s ref=%s by=%s run=%s%s%s", p->name,
            tr->ref ? tr->ref : "", who, first_id ? first_id : "-", message ? " note=" : "",
            message ? message : "");
    s_reply_ref(ctx, req, first_id, first_state, message ? message : "queued");
    free(first_id);
    free(message);
}

static void s_approve(bp_t *st, sn_ctx_t *ctx, sn_request_t *req, bp_run_t *br)
{
    bp_pb_run_t *r = br->run;
    if (r->state != SENTINEL__V1__RUN_STATE__RUN_AWAITING_APPROVAL) {
        s_reply_ref(ctx, req, r->run_id, r->state, "run is not awaiting approval");
        return;
    }
    const char *who = s_identity(ctx, req);
    if (strcmp(who, r->requested_by) == 0) {
        sn_warn(BP_MODULE, "self-approval refused run=%s by=%s", r->run_id, who);
        sn_request_nak(ctx, req, "forbidden");
        return;
    }
    Sentinel__V1__Approval *a = r->approval;
    if (a->n_approvers > 0) {
        bool allowed = false;
        for (size_t i = 0; i < a->n_approvers; i++)
            if (strcmp(a->approvers[i], who) == 0)
                allowed = true;
        if (!allowed) {
            sn_warn(BP_MODULE, "approval refused run=%s by=%s: not an approver", r->run_id, who);
            sn_request_nak(ctx, req, "forbidden");
            return;
        }
    }
    s_str_set(&a->approved_by, who);
    a->approved_unix_ms = sn_wall_ms();
    s_step_end(r, BP_STEP_APPROVAL, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    sn_journal_ops_t *ops = sn_journal_ops_new();
    char *key = sn_strdupf("approval:%s", r->run_id);
    char ms[24];
    snprintf(ms, sizeof ms, "%lld", (long long)a->approved_unix_ms);
    sn_journal_ops_hset(ops, key, "approved_by", who, strlen(who));
    sn_journal_ops_hset(ops, key, "approved_ms", ms, strlen(ms));
    free(key);
    char *by = sn_strdup(who);
    bool ok = s_commit(st, ctx, br, ops, "run.approved", "approval", -1, "by", by);
    free(by);
    if (!ok) {
        sn_request_nak(ctx, req, "overloaded");
        return;
    }
    char run_id[64];
    sn_strlcpy(run_id, r->run_id, sizeof run_id);
    s_begin_stage(st, ctx, br, "run.step");
    s_reply_ref(ctx, req, r->run_id, r->state, "approved");
    s_kick(st, ctx, run_id);
}

static void s_cancel(bp_t *st, sn_ctx_t *ctx, sn_request_t *req, bp_run_t *br, const char *why_in)
{
    bp_pb_run_t *r = br->run;
    char run_id[64];
    sn_strlcpy(run_id, r->run_id, sizeof run_id);
    char *why = sn_strdupf("cancelled by %s%s%s", s_identity(ctx, req),
                           s_str_empty(why_in) ? "" : ": ", s_str_empty(why_in) ? "" : why_in);
    Sentinel__V1__RunState state = r->state;
    if (state == SENTINEL__V1__RUN_STATE__RUN_ROLLING_BACK) {
        s_reply_ref(ctx, req, run_id, state, "already rolling back");
        free(why);
        return;
    }
    sn_info(BP_MODULE, "cancel run=%s state=%d", run_id, (int)state);
    if (state == SENTINEL__V1__RUN_STATE__RUN_PROMOTING ||
        state == SENTINEL__V1__RUN_STATE__RUN_VERIFYING_LIVE) {
        /* Something may be live: roll it back first (after in-flight promotes answer). */
        s_str_set(&r->reason, why);
        for (size_t i = 0; i < r->n_deploys; i++)
            if (r->deploys[i]->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE &&
                s_str_empty(r->deploys[i]->error))
                s_str_set(&r->deploys[i]->error, why);
        if (s_commit(st, ctx, br, NULL, "run.step", "cancel", -1, NULL, NULL))
            s_advance(st, ctx, br);
    } else {
        s_finish(st, ctx, br, SENTINEL__V1__RUN_STATE__RUN_CANCELLED, why, NULL);
    }
    free(why);
    bp_run_t *now = s_find_run(st, run_id);
    s_reply_ref(ctx, req, run_id, now ? now->run->state : SENTINEL__V1__RUN_STATE__RUN_CANCELLED,
                now ? "cancelling: rolling back what was promoted" : "cancelled");
}

static void s_env_control(bp_t *st, sn_ctx_t *ctx, sn_request_t *req,
                          const Sentinel__V1__RunControl *rc, const char *action)
{
    const sn_project_config_t *p =
        s_str_empty(rc->project) ? NULL : sn_config_project(sn_ctx_config(ctx), rc->project);
    const sn_environment_config_t *e =
        p && !s_str_empty(rc->environment) ? sn_config_environment(p, rc->environment) : NULL;
    if (!e) {
        s_reply_ref(ctx, req, NULL, SENTINEL__V1__RUN_STATE__RUN_STATE_UNSPECIFIED,
                    "unknown project or environment");
        return;
    }
    if (strcmp(action, "rollback") == 0) {
        bp_pb_run_t *r = s_run_new(p->name, e->name, "", "", "rollback", s_identity(ctx, req));
        s_str_set(&r->rollback_to, rc->to_run ? rc->to_run : "");
        s_str_set(&r->reason, "");
        bp_run_t *br = sn_calloc(1, sizeof *br);
        br->run = r;
        br->next = st->runs;
        st->runs = br;
        sn_journal_ops_t *ops = sn_journal_ops_new();
        char *pk = sn_strdupf("runs:%s", p->name);
        sn_journal_ops_zadd(ops, "runs:all", (double)r->created_unix_ms, r->run_id);
        sn_journal_ops_zadd(ops, pk, (double)r->created_unix_ms, r->run_id);
        free(pk);
        s_ops_queue(st, ops, p->name, e->name, NULL);
        char id[64];
        sn_strlcpy(id, r->run_id, sizeof id);
        if (!s_commit(st, ctx, br, ops, "run.queued", NULL, -1, NULL, NULL)) {
            sn_request_nak(ctx, req, "overloaded");
            return;
        }
        s_advance(st, ctx, br);
        bp_run_t *now = s_find_run(st, id);
        s_reply_ref(ctx, req, id, now ? now->run->state : SENTINEL__V1__RUN_STATE__RUN_QUEUED,
                    "rollback queued");
        return;
    }
    bool freeze = strcmp(action, "freeze") == 0;
    sn_journal_ops_t *ops = sn_journal_ops_new();
    char *key = sn_strdupf("env:%s:%s", p->name, e->name);
    sn_journal_ops_hset(ops, key, "frozen", freeze ? "1" : "0", 1);
    free(key);
    sn_envelope_t ev;
    sentinel__v1__envelope__init(&ev);
    ev.type = freeze ? "env.frozen" : "env.unfrozen";
    char *subject = sn_strdupf("%s/%s", p->name, e->name);
    ev.subject = subject;
    Sentinel__V1__RunControl body = SENTINEL__V1__RUN_CONTROL__INIT;
    body.project = p->name;
    body.environment = e->name;
    body.action = (char *)action;
    body.reason = rc->reason ? rc->reason : "";
    ev.body_case = SENTINEL__V1__ENVELOPE__BODY_CONTROL;
    ev.control = &body;
    const char *who = s_identity(ctx, req);
    sn_envelope_add_label(&ev, "by", who);
    sn_rc_t rcode =
        sn_journal_commit(sn_ctx_journal(ctx), ops, BP_LOCK_KEY, sn_ctx_fence(ctx), &ev, NULL);
    sn_envelope_fini_labels(&ev);
    sn_journal_ops_destroy(&ops);
    free(subject);
    if (rcode != SN_OK) {
        sn_request_nak(ctx, req, "overloaded");
        return;
    }
    sn_info(BP_MODULE, "%s project=%s env=%s by=%s", ev.type, p->name, e->name, who);
    s_reply_ref(ctx, req, NULL, SENTINEL__V1__RUN_STATE__RUN_STATE_UNSPECIFIED,
                freeze ? "frozen" : "unfrozen");
}

static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    bp_t *st = state;
    const char *service = sn_request_service(req);
    const sn_envelope_t *env = sn_request_envelope(req);
    if (!sn_ctx_is_leader(ctx) || st->needs_load) {
        if (sn_ctx_is_leader(ctx))
            s_load(st, ctx);
        if (!sn_ctx_is_leader(ctx) || st->needs_load) {
            sn_request_nak(ctx, req, "overloaded");
            return;
        }
    }
    if (strcmp(service, "run.trigger") == 0) {
        if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_TRIGGER) {
            sn_request_nak(ctx, req, "invalid");
            return;
        }
        s_trigger(st, ctx, req);
        return;
    }
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_CONTROL) {
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    const Sentinel__V1__RunControl *rc = env->control;
    if (strcmp(service, "env.freeze") == 0 || strcmp(service, "env.unfreeze") == 0 ||
        strcmp(service, "env.rollback") == 0) {
        s_env_control(st, ctx, req, rc, service + 4);
        return;
    }
    if (s_str_empty(rc->run_id)) {
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    bp_run_t *br = s_find_run(st, rc->run_id);
    if (!br) {
        bp_pb_run_t *r = s_read_run(ctx, rc->run_id);
        s_reply_ref(ctx, req, rc->run_id,
                    r ? r->state : SENTINEL__V1__RUN_STATE__RUN_STATE_UNSPECIFIED,
                    r ? "run has ended" : "unknown run");
        if (r)
            sentinel__v1__run__free_unpacked(r, NULL);
        return;
    }
    if (strcmp(service, "run.approve") == 0)
        s_approve(st, ctx, req, br);
    else if (strcmp(service, "run.cancel") == 0)
        s_cancel(st, ctx, req, br, rc->reason);
    else
        sn_request_nak(ctx, req, "invalid");
}

/* ---- lifecycle ------------------------------------------------------------------------- */

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    (void)ctx;
    bp_t *st = sn_calloc(1, sizeof *st);
    *state = st;
    return SN_OK;
}

static void s_leadership(sn_ctx_t *ctx, void *state, bool is_leader, uint64_t fence)
{
    bp_t *st = state;
    (void)fence;
    if (is_leader) {
        st->needs_load = true;
        s_load(st, ctx);
    } else {
        s_runs_clear(st);
        st->needs_load = true;
    }
}

static void s_tick(sn_ctx_t *ctx, void *state, bool is_leader)
{
    bp_t *st = state;
    if (!is_leader)
        return;
    if (st->needs_load)
        s_load(st, ctx);
    if (st->needs_load)
        return;
    sn_ledger_redispatch_t rd;
    memset(&rd, 0, sizeof rd);
    if (sn_ledger_redispatch(sn_ctx_ledger(ctx), sn_ctx_fence(ctx), BP_ROLE, &rd) == SN_OK) {
        for (size_t i = 0; i < rd.requeued.count; i++)
            sn_info(BP_MODULE, "job lease lapsed, re-dispatching job=%s", rd.requeued.ids[i]);
        for (size_t i = 0; i < rd.dead.count; i++)
            sn_warn(BP_MODULE, "job dead-lettered job=%s", rd.dead.ids[i]);
        sn_ledger_redispatch_fini(&rd);
    }
    /* Deadlines, queue starts and work; each may end runs, so walk by id. */
    char ids[256][64];
    size_t n = 0;
    for (bp_run_t *br = st->runs; br && n < SN_ARRAY_LEN(ids); br = br->next)
        sn_strlcpy(ids[n++], br->run->run_id, sizeof ids[0]);
    for (size_t i = 0; i < n && !st->needs_load; i++) {
        bp_run_t *br = s_find_run(st, ids[i]);
        if (br)
            s_check_deadline(st, ctx, br);
        br = st->needs_load ? NULL : s_find_run(st, ids[i]);
        if (br)
            s_advance(st, ctx, br);
        br = st->needs_load ? NULL : s_find_run(st, ids[i]);
        if (br)
            s_run_work(st, ctx, br);
    }
    /* Forget call records of runs that ended. */
    for (bp_call_t **p = &st->calls; *p;) {
        bp_call_t *c = *p;
        if (!c->is_inflight && !s_find_run(st, c->run_id)) {
            *p = c->next;
            free(c);
        } else {
            p = &c->next;
        }
    }
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    (void)ctx;
    bp_t *st = state;
    s_runs_clear(st);
    while (st->calls) {
        bp_call_t *c = st->calls;
        st->calls = c->next;
        free(c);
    }
    free(st);
}

const sn_role_t buildpilot_role = {
    .name = BP_ROLE,
    .agent = "BuildPilot",
    .summary = "the only owner of a run: its state machine, queue, approvals, rollbacks",
    .services = (const char *const[]){"run.trigger", "run.approve", "run.cancel", "env.freeze",
                                      "env.unfreeze", "env.rollback", NULL},
    .leadership = SN_LEADERSHIP_EXCLUSIVE,
    .credit = 1,
    .tick_ms = 200,
    .init = s_init,
    .on_request = s_request,
    .on_tick = s_tick,
    .on_leadership = s_leadership,
    .destroy = s_destroy,
};
