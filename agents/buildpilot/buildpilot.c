/* buildpilot: the only owner of a run (ARCHITECTURE §2, §7). An exclusive leader role:
 * it serves run.trigger, run.approve, run.cancel, env.freeze, env.unfreeze and
 * env.rollback only while it leads, and keeps every run in flight in memory, loaded from
 * Redis (the set runs:active) on election, so a standby resumes exactly where the last
 * leader's journal commits left each run.
 *
 * This file is the role: its table, its requests, leadership and the tick, and the driver
 * that carries out what the state machine (buildpilot_fsm.c) decides. Every transition is
 * ONE fenced journal commit (buildpilot_run.c) that rewrites the run:<id> record, the
 * deploy:<id> records, the environment keys that change with it (envlock, env hash,
 * queue, approval) and the event announcing it. The work a run needs is derived from the
 * record alone (buildpilot_dispatch.c), so nothing outside Redis is needed to resume.
 * Each running step has a deadline (environment step_timeout_s, approval_timeout_s /
 * approval expiry) enforced on the tick.
 *
 * The envlock is taken and released only by this role, in fenced commits on its loop
 * thread, from its in-memory view of every active run: with one fenced writer a
 * "set only if free" script would check nothing the fence does not already guarantee.
 *
 * Identity (approvals): the requester of a run and an approver are the principal the
 * broker attached to the request; a label `on_behalf_of` (the end user behind the
 * gateway's API token) replaces it only when the caller is the principal "gateway", or
 * when CURVE is off (then every caller is "anonymous" and could call us directly anyway). */
#include "buildpilot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buildpilot_dispatch.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_log.h"

#define BP_TRUSTED_PRINCIPAL "gateway"
#define BP_MAX_ENVS 32

/* Where the artifact of a new run comes from (s_resolve). */
typedef struct {
    char *sha;
    char *artifact; /* NULL: built by the run */
    char *from_run; /* the verified run whose artifact is promoted */
} s_source_t;

static void s_finish(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, Sentinel__V1__RunState state,
                     unsigned ops_flags);
static bool s_commit(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, sn_journal_ops_t *ops, const char *type,
                     const char *step, int deploy, const char *label_key, const char *label_value);
static sn_journal_ops_t *s_ops(bp_t *st, bp_run_t *br, unsigned flags);
static void s_ops_queue(bp_t *st, sn_journal_ops_t *ops, const char *project, const char *env,
                        const char *leaving);
static void s_kick_env(bp_t *st, sn_ctx_t *ctx, const char *project, const char *env);
static void s_load(bp_t *st, sn_ctx_t *ctx);
static bp_run_t *s_adopt(bp_t *st, bp_pb_run_t *r);
static void s_run_free(bp_run_t **br_p);
static void s_runs_clear(bp_t *st);
static const char *s_identity(sn_ctx_t *ctx, const sn_request_t *req);
static void s_reply_ref(sn_ctx_t *ctx, sn_request_t *req, const char *run_id,
                        Sentinel__V1__RunState state, const char *message);
static void s_trigger(bp_t *st, sn_ctx_t *ctx, sn_request_t *req);
static void s_approve(bp_t *st, sn_ctx_t *ctx, sn_request_t *req, bp_run_t *br);
static void s_cancel(bp_t *st, sn_ctx_t *ctx, sn_request_t *req, bp_run_t *br, const char *why);
static void s_env_control(bp_t *st, sn_ctx_t *ctx, sn_request_t *req,
                          const Sentinel__V1__RunControl *rc, const char *action);

/* ---- the role ----------------------------------------------------------------------------- */

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    (void)ctx;
    bp_t *st = sn_calloc(1, sizeof *st);
    *state = st;
    return SN_OK;
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
    if (bp_str_empty(rc->run_id)) {
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    bp_run_t *br = bp_find_run(st, rc->run_id);
    if (!br) {
        bp_pb_run_t *r = bp_store_read(ctx, rc->run_id);
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
            if (!bp_dispatch_end_job(st, ctx, rd.requeued.ids[i]))
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
    int64_t now = sn_wall_ms();
    for (size_t i = 0; i < n && !st->needs_load; i++) {
        bp_run_t *br = bp_find_run(st, ids[i]);
        if (br) {
            bp_event_t ev = {.kind = BP_EV_DEADLINE, .now_ms = now};
            (void)bp_drive(st, ctx, br, &ev, NULL);
        }
        br = st->needs_load ? NULL : bp_find_run(st, ids[i]);
        if (br)
            bp_advance(st, ctx, br);
        br = st->needs_load ? NULL : bp_find_run(st, ids[i]);
        if (br)
            bp_dispatch_run_work(st, ctx, br);
    }
    bp_dispatch_gc(st);
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    (void)ctx;
    bp_t *st = state;
    s_runs_clear(st);
    bp_dispatch_clear(st);
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

/* ---- the driver (buildpilot.h) ------------------------------------------------------------- */

bp_run_t *bp_find_run(bp_t *st, const char *run_id)
{
    for (bp_run_t *br = st->runs; br; br = br->next)
        if (strcmp(br->run->run_id, run_id) == 0)
            return br;
    return NULL;
}

bool bp_drive(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, const bp_event_t *ev, bp_effect_t *first)
{
    const sn_config_t *cfg = sn_ctx_config(ctx);
    bp_event_t e = *ev;
    bool is_first = true;
    if (first) {
        memset(first, 0, sizeof *first);
        first->deploy = -1;
    }
    for (;;) {
        if (st->needs_load || !sn_ctx_is_leader(ctx))
            return false;
        bp_effect_t eff;
        bp_fsm_handle(cfg, br->run, &e, &eff);
        if (is_first && first)
            *first = eff;
        if (!eff.is_handled || eff.nak || eff.note)
            return true;
        unsigned ops = eff.ops;
        if (eff.type) {
            if (!s_commit(st, ctx, br, s_ops(st, br, ops), eff.type, eff.step, eff.deploy,
                          eff.label_key, eff.label_value))
                return false;
            if (is_first && first)
                first->is_committed = true;
            ops = 0;
            if (eff.is_retry)
                bp_dispatch_retry(st, ctx, br, e.work, e.deploy);
        }
        is_first = false;
        if (eff.end) {
            char run_id[64];
            sn_strlcpy(run_id, br->run->run_id, sizeof run_id);
            s_finish(st, ctx, br, eff.end, ops);
            return !bp_find_run(st, run_id) && !st->needs_load;
        }
        if (eff.then == BP_EV_NONE)
            return true;
        e = (bp_event_t){.kind = eff.then, .deploy = -1};
    }
}

void bp_advance(bp_t *st, sn_ctx_t *ctx, bp_run_t *br)
{
    bp_pb_run_t *r = br->run;
    if (st->needs_load || !sn_ctx_is_leader(ctx))
        return;
    if (!bp_fsm_is_queued(r)) {
        bp_event_t ev = {.kind = BP_EV_JOIN, .deploy = -1};
        (void)bp_drive(st, ctx, br, &ev, NULL);
        return;
    }
    const char *oldest = NULL;
    for (bp_run_t *o = st->runs; o; o = o->next) {
        if (!bp_same_env(o->run, r->project, r->environment))
            continue;
        if (!bp_fsm_is_queued(o->run))
            return; /* the environment is held */
        if (!oldest || strcmp(o->run->run_id, oldest) < 0)
            oldest = o->run->run_id;
    }
    if (oldest && strcmp(oldest, r->run_id) == 0) {
        bp_event_t ev = {.kind = BP_EV_START, .deploy = -1};
        (void)bp_drive(st, ctx, br, &ev, NULL);
    }
}

void bp_kick(bp_t *st, sn_ctx_t *ctx, const char *run_id)
{
    bp_run_t *br = st->needs_load ? NULL : bp_find_run(st, run_id);
    if (br)
        bp_dispatch_run_work(st, ctx, br);
}

/* ---- transitions carried out ---------------------------------------------------------------- */

/* Ends @br in terminal @state (bp_fsm_finish): the environment released if it held it (or
 * the queue rewritten without it), the run leaves runs:active and memory, its queued jobs
 * are closed, and the next queued run of the environment may start. */
static void s_finish(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, Sentinel__V1__RunState state,
                     unsigned ops_flags)
{
    bp_pb_run_t *r = br->run;
    bool held = !bp_fsm_is_queued(r);
    bp_fsm_finish(r, state, NULL);
    sn_journal_ops_t *ops = s_ops(st, br, ops_flags);
    if (held)
        bp_ops_release_env(ops, r);
    else
        s_ops_queue(st, ops, r->project, r->environment, r->run_id);
    char name[32];
    bp_state_name(state, name, sizeof name);
    char *type = sn_strdupf("run.%s", name);
    char *project = sn_strdup(r->project), *env = sn_strdup(r->environment);
    char run_id[64];
    sn_strlcpy(run_id, r->run_id, sizeof run_id);
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
        bp_dispatch_end_jobs(st, ctx, run_id);
        if (held)
            s_kick_env(st, ctx, project, env);
    }
    free(project);
    free(env);
}

static bool s_commit(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, sn_journal_ops_t *ops, const char *type,
                     const char *step, int deploy, const char *label_key, const char *label_value)
{
    bool ok = bp_store_commit(ctx, br->run, ops, type, step, deploy, label_key, label_value);
    if (!ok)
        st->needs_load = true; /* the in-memory view can no longer be trusted */
    return ok;
}

/* The extra writes BP_OPS_* @flags of @br (a new ops list, never NULL). */
static sn_journal_ops_t *s_ops(bp_t *st, bp_run_t *br, unsigned flags)
{
    bp_pb_run_t *r = br->run;
    sn_journal_ops_t *ops = sn_journal_ops_new();
    if (flags & BP_OPS_TAKE_ENV) {
        s_ops_queue(st, ops, r->project, r->environment, r->run_id);
        bp_ops_take_env(ops, r);
    }
    if (flags & BP_OPS_APPROVAL_REQUEST)
        bp_ops_approval_request(ops, r);
    if (flags & BP_OPS_APPROVAL_GRANTED)
        bp_ops_approval_granted(ops, r);
    if (flags & BP_OPS_LAST_VERIFIED)
        bp_ops_last_verified(ops, r);
    return ops;
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
            if (!bp_fsm_is_queued(r) || !bp_same_env(r, project, env) ||
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

/* Starts the oldest queued run of an environment that has just been released. */
static void s_kick_env(bp_t *st, sn_ctx_t *ctx, const char *project, const char *env)
{
    for (bp_run_t *br = st->runs; br; br = br->next)
        if (bp_same_env(br->run, project, env) && bp_fsm_is_queued(br->run)) {
            bp_advance(st, ctx, br);
            return;
        }
}

/* ---- memory --------------------------------------------------------------------------------- */

/* Loads every active run from Redis (runs:active), then closes queued jobs of runs that
 * ended (a leader that died between a run's end and its job sweep). */
static void s_load(bp_t *st, sn_ctx_t *ctx)
{
    bp_pb_run_t **runs = NULL;
    size_t count = 0;
    if (bp_store_load(ctx, &runs, &count) != SN_OK)
        return; /* try again next tick */
    s_runs_clear(st);
    for (size_t i = 0; i < count; i++)
        (void)s_adopt(st, runs[i]);
    free(runs);
    st->needs_load = false;
    sn_info(BP_MODULE, "resumed active runs count=%zu", count);
    sn_ledger_ids_t open;
    memset(&open, 0, sizeof open);
    if (sn_ledger_open_jobs(sn_ctx_ledger(ctx), BP_ROLE, &open) == SN_OK) {
        for (size_t i = 0; i < open.count; i++)
            (void)bp_dispatch_end_job(st, ctx, open.ids[i]);
        sn_ledger_ids_fini(&open);
    }
}

static bp_run_t *s_adopt(bp_t *st, bp_pb_run_t *r)
{
    bp_run_t *br = sn_calloc(1, sizeof *br);
    br->run = r;
    br->next = st->runs;
    st->runs = br;
    return br;
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

/* ---- requests ------------------------------------------------------------------------------- */

/* The identity a request acts for (see the file comment). */
static const char *s_identity(sn_ctx_t *ctx, const sn_request_t *req)
{
    const char *principal = sn_request_principal(req);
    if (bp_str_empty(principal))
        principal = "anonymous";
    const char *obo = sn_envelope_label(sn_request_envelope(req), "on_behalf_of");
    if (!bp_str_empty(obo) &&
        (strcmp(principal, BP_TRUSTED_PRINCIPAL) == 0 ||
         (!sn_ctx_config(ctx)->broker.curve && strcmp(principal, "anonymous") == 0)))
        return obo;
    return principal;
}

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

/* The branch of a ref: "refs/heads/main" -> "main". */
static const char *s_branch(const char *ref)
{
    return strncmp(ref, "refs/heads/", 11) == 0 ? ref + 11 : ref;
}

static void s_source_fini(s_source_t *src)
{
    free(src->sha);
    free(src->artifact);
    free(src->from_run);
    memset(src, 0, sizeof *src);
}

/* What a run of @tr on environment @e would deploy: its commit and, for an environment
 * that promotes, the verified artifact and run it comes from. Reads only. False with
 * *msg (heap) when the environment refuses (frozen, nothing verified to promote, no sha). */
static bool s_resolve(sn_ctx_t *ctx, const sn_project_config_t *p, const sn_environment_config_t *e,
                      const Sentinel__V1__TriggerRequest *tr, s_source_t *src, char **msg)
{
    memset(src, 0, sizeof *src);
    char *frozen = bp_store_env_field(ctx, p->name, e->name, "frozen");
    bool is_frozen = frozen && strcmp(frozen, "1") == 0;
    free(frozen);
    if (is_frozen) {
        *msg = sn_strdupf("environment %s/%s is frozen", p->name, e->name);
        return false;
    }
    src->sha = sn_strdup(tr->sha ? tr->sha : "");
    if (!bp_str_empty(tr->promote_from_run)) {
        bp_pb_run_t *from = bp_store_read(ctx, tr->promote_from_run);
        if (from && from->state == SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED &&
            strcmp(from->project, p->name) == 0 && !bp_str_empty(from->artifact_sha256) &&
            (bp_str_empty(e->promote_from) || strcmp(from->environment, e->promote_from) == 0)) {
            src->artifact = sn_strdup(from->artifact_sha256);
            src->from_run = sn_strdup(from->run_id);
            free(src->sha);
            src->sha = sn_strdup(from->sha);
        }
        if (from)
            sentinel__v1__run__free_unpacked(from, NULL);
        if (!src->artifact) {
            *msg =
                sn_strdupf("run %s is not a verified run of %s/%s to promote", tr->promote_from_run,
                           p->name, e->promote_from ? e->promote_from : "*");
            s_source_fini(src);
            return false;
        }
    } else if (!bp_str_empty(e->promote_from)) {
        src->artifact = bp_store_env_field(ctx, p->name, e->promote_from, "last_verified_artifact");
        src->from_run = bp_store_env_field(ctx, p->name, e->promote_from, "last_verified_run");
        char *vsha = bp_store_env_field(ctx, p->name, e->promote_from, "last_verified_sha");
        bool mismatch = vsha && !bp_str_empty(src->sha) && strcmp(vsha, src->sha) != 0;
        if (!src->artifact || mismatch) {
            *msg = !src->artifact ? sn_strdupf("no verified artifact in %s/%s to promote", p->name,
                                               e->promote_from)
                                  : sn_strdupf("commit %s was not verified in %s/%s (last "
                                               "verified: %s)",
                                               src->sha, p->name, e->promote_from, vsha);
            free(vsha);
            s_source_fini(src);
            return false;
        }
        free(src->sha);
        src->sha = vsha ? vsha : sn_strdup("");
    }
    if (bp_str_empty(src->sha)) {
        *msg = sn_strdup("no commit: sha is required");
        s_source_fini(src);
        return false;
    }
    return true;
}

/* Creates and queues one run of @tr for environment @e. NULL with *msg (heap) on a
 * refusal; the existing run with *msg "duplicate: ..." for a commit already in flight. */
static bp_run_t *s_queue_run(bp_t *st, sn_ctx_t *ctx, const sn_project_config_t *p,
                             const sn_environment_config_t *e,
                             const Sentinel__V1__TriggerRequest *tr, const char *who, char **msg)
{
    s_source_t src;
    if (!s_resolve(ctx, p, e, tr, &src, msg))
        return NULL;
    /* Dedupe on (project, env, sha) among runs in flight. */
    for (bp_run_t *o = st->runs; o; o = o->next)
        if (bp_same_env(o->run, p->name, e->name) && strcmp(o->run->sha, src.sha) == 0 &&
            strcmp(o->run->trigger, "rollback") != 0) {
            *msg = sn_strdupf("duplicate: run %s already has %s", o->run->run_id, src.sha);
            s_source_fini(&src);
            return o;
        }
    bp_pb_run_t *r =
        bp_run_new(p->name, e->name, tr->ref ? tr->ref : "", src.sha, tr->trigger, who);
    if (tr->n_workflow_run_ids > 0 && tr->n_workflow_run_ids <= 64) { /* GitHub's verdict */
        r->workflow_run_ids = sn_malloc(tr->n_workflow_run_ids * sizeof *r->workflow_run_ids);
        memcpy(r->workflow_run_ids, tr->workflow_run_ids,
               tr->n_workflow_run_ids * sizeof *r->workflow_run_ids);
        r->n_workflow_run_ids = tr->n_workflow_run_ids;
    }
    if (src.artifact) {
        bp_str_set(&r->artifact_sha256, src.artifact);
        bp_str_set(&r->promoted_from_run, src.from_run ? src.from_run : "");
        bp_str_set(&r->trigger, "promotion");
    }
    s_source_fini(&src);
    bp_run_t *br = s_adopt(st, r);
    sn_journal_ops_t *ops = sn_journal_ops_new();
    bp_ops_index(ops, r);
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
            if (strcmp(r->run_id, run_id) == 0 || !bp_same_env(r, project, env) ||
                !bp_fsm_is_queued(r) || strcmp(r->run_id, run_id) > 0)
                continue;
            bp_str_set(&r->superseded_by, run_id);
            char *why = sn_strdupf("superseded by %s", run_id);
            bp_str_set(&r->reason, why);
            free(why);
            s_finish(st, ctx, o, SENTINEL__V1__RUN_STATE__RUN_SUPERSEDED, 0);
            again = true; /* the list changed */
            break;
        }
    }
}

/* The plan of a dry run on @e, appended to @buf: what a run would deploy, from where,
 * and whether it would wait for approval. Reads only: nothing is created. */
static void s_describe(sn_ctx_t *ctx, const sn_project_config_t *p,
                       const sn_environment_config_t *e, const Sentinel__V1__TriggerRequest *tr,
                       char *buf, size_t len)
{
    size_t off = strlen(buf);
#define S_ADD(...)                                                                                 \
    do {                                                                                           \
        if (off < len)                                                                             \
            off += (size_t)snprintf(buf + off, len - off, __VA_ARGS__);                            \
    } while (0)
    S_ADD("%s%s/%s: targets ", off ? "; " : "", p->name, e->name);
    size_t n = 0;
    for (; e->targets && e->targets[n]; n++)
        S_ADD("%s%s", n ? "," : "", e->targets[n]);
    if (n == 0)
        S_ADD("(none)");
    s_source_t src;
    char *msg = NULL;
    if (!s_resolve(ctx, p, e, tr, &src, &msg)) {
        S_ADD(", would be refused: %s", msg);
        free(msg);
        return;
    }
    if (src.artifact)
        S_ADD(", artifact: promote from %s run %s (commit %s)",
              bp_str_empty(e->promote_from) ? "?" : e->promote_from,
              src.from_run ? src.from_run : "?", src.sha);
    else
        S_ADD(", artifact: build of %s", src.sha);
    S_ADD(", approval %s", e->approval.required ? "required" : "not required");
    s_source_fini(&src);
#undef S_ADD
}

static void s_trigger(bp_t *st, sn_ctx_t *ctx, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    const Sentinel__V1__TriggerRequest *tr = env->trigger;
    const sn_project_config_t *p =
        bp_str_empty(tr->project) ? NULL : sn_config_project(sn_ctx_config(ctx), tr->project);
    if (!p) {
        s_reply_ref(ctx, req, NULL, SENTINEL__V1__RUN_STATE__RUN_STATE_UNSPECIFIED,
                    "unknown project");
        return;
    }
    const sn_environment_config_t *envs[BP_MAX_ENVS];
    size_t n = 0;
    if (!bp_str_empty(tr->environment)) {
        const sn_environment_config_t *e = sn_config_environment(p, tr->environment);
        if (e)
            envs[n++] = e;
    } else if (!bp_str_empty(tr->ref)) {
        for (size_t i = 0; i < p->environment_count && n < SN_ARRAY_LEN(envs); i++)
            if (p->environments[i].branch &&
                strcmp(p->environments[i].branch, s_branch(tr->ref)) == 0)
                envs[n++] = &p->environments[i];
    }
    if (n == 0) {
        s_reply_ref(ctx, req, NULL, SENTINEL__V1__RUN_STATE__RUN_STATE_UNSPECIFIED,
                    bp_str_empty(tr->environment) ? "no environment for this ref"
                                                  : "unknown environment");
        return;
    }
    if (tr->dry_run) {
        char plan[2048] = "";
        for (size_t i = 0; i < n; i++)
            s_describe(ctx, p, envs[i], tr, plan, sizeof plan);
        char *msg = sn_strdupf("dry run: would queue %zu run(s): %s", n, plan);
        sn_info(BP_MODULE, "dry run project=%s ref=%s runs=%zu", p->name, tr->ref ? tr->ref : "",
                n);
        s_reply_ref(ctx, req, NULL, SENTINEL__V1__RUN_STATE__RUN_STATE_UNSPECIFIED, msg);
        free(msg);
        return;
    }
    const char *who = s_identity(ctx, req);
    char *first_id = NULL, *message = NULL;
    Sentinel__V1__RunState first_state = SENTINEL__V1__RUN_STATE__RUN_STATE_UNSPECIFIED;
    for (size_t i = 0; i < n; i++) {
        char *msg = NULL;
        bp_run_t *br = s_queue_run(st, ctx, p, envs[i], tr, who, &msg);
        if (br && !msg) {
            if (envs[i]->supersede)
                s_supersede(st, ctx, br);
            if (!first_id) {
                first_id = sn_strdup(br->run->run_id);
                first_state = br->run->state;
            }
            char id[64];
            sn_strlcpy(id, br->run->run_id, sizeof id);
            bp_advance(st, ctx, br);
            bp_kick(st, ctx, id);
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
    char run_id[64];
    sn_strlcpy(run_id, br->run->run_id, sizeof run_id);
    bp_event_t ev = {.kind = BP_EV_APPROVE, .deploy = -1, .who = s_identity(ctx, req)};
    bp_effect_t eff;
    bool ok = bp_drive(st, ctx, br, &ev, &eff);
    if (!eff.is_handled) {
        s_reply_ref(ctx, req, run_id, br->run->state, "run is not awaiting approval");
        return;
    }
    if (eff.nak) {
        sn_request_nak(ctx, req, eff.nak);
        return;
    }
    if (!eff.is_committed) {
        sn_request_nak(ctx, req, "overloaded");
        return;
    }
    /* Recorded: the stage begins now, or on the next tick if its commit failed. */
    bp_run_t *now = ok ? bp_find_run(st, run_id) : NULL;
    s_reply_ref(ctx, req, run_id, now ? now->run->state : SENTINEL__V1__RUN_STATE__RUN_STAGING,
                "approved");
    bp_kick(st, ctx, run_id);
}

static void s_cancel(bp_t *st, sn_ctx_t *ctx, sn_request_t *req, bp_run_t *br, const char *why)
{
    char run_id[64];
    sn_strlcpy(run_id, br->run->run_id, sizeof run_id);
    sn_info(BP_MODULE, "cancel run=%s state=%d", run_id, (int)br->run->state);
    bp_event_t ev = {
        .kind = BP_EV_CANCEL, .deploy = -1, .who = s_identity(ctx, req), .reason = why};
    bp_effect_t eff;
    (void)bp_drive(st, ctx, br, &ev, &eff);
    if (eff.note) {
        s_reply_ref(ctx, req, run_id, br->run->state, eff.note);
        return;
    }
    bp_run_t *now = bp_find_run(st, run_id);
    s_reply_ref(ctx, req, run_id, now ? now->run->state : SENTINEL__V1__RUN_STATE__RUN_CANCELLED,
                now ? "cancelling: rolling back what was promoted" : "cancelled");
}

static void s_env_control(bp_t *st, sn_ctx_t *ctx, sn_request_t *req,
                          const Sentinel__V1__RunControl *rc, const char *action)
{
    const sn_project_config_t *p =
        bp_str_empty(rc->project) ? NULL : sn_config_project(sn_ctx_config(ctx), rc->project);
    const sn_environment_config_t *e =
        p && !bp_str_empty(rc->environment) ? sn_config_environment(p, rc->environment) : NULL;
    if (!e) {
        s_reply_ref(ctx, req, NULL, SENTINEL__V1__RUN_STATE__RUN_STATE_UNSPECIFIED,
                    "unknown project or environment");
        return;
    }
    if (strcmp(action, "rollback") == 0) {
        bp_pb_run_t *r = bp_run_new(p->name, e->name, "", "", "rollback", s_identity(ctx, req));
        bp_str_set(&r->rollback_to, rc->to_run ? rc->to_run : "");
        bp_str_set(&r->reason, "");
        bp_run_t *br = s_adopt(st, r);
        sn_journal_ops_t *ops = sn_journal_ops_new();
        bp_ops_index(ops, r);
        s_ops_queue(st, ops, p->name, e->name, NULL);
        char id[64];
        sn_strlcpy(id, r->run_id, sizeof id);
        if (!s_commit(st, ctx, br, ops, "run.queued", NULL, -1, NULL, NULL)) {
            sn_request_nak(ctx, req, "overloaded");
            return;
        }
        bp_advance(st, ctx, br);
        bp_run_t *now = bp_find_run(st, id);
        s_reply_ref(ctx, req, id, now ? now->run->state : SENTINEL__V1__RUN_STATE__RUN_QUEUED,
                    "rollback queued");
        bp_kick(st, ctx, id);
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
