/* buildpilot's dispatch (buildpilot_dispatch.h). Long work is a ledger job with a
 * deterministic id ("<run>.<work>[.<target>]"), created (fenced) before the call and sent
 * with label job_id; a job already done when a leader looks at it yields its stored
 * result. Calls that end in a NAK or a local timeout decide nothing: the job is sent
 * again (same attempt) while it is queued, the ledger re-dispatches lapsed leases
 * (attempt + 1) up to the attempt limit, and a dead-lettered job fails its step. A
 * transient failure goes to heal.retry as a plain call (autoheal-executor makes several
 * attempts per call, which one job id could not carry).
 *
 * Audit: before a side effect is asked for (stage, promote, rollback, or a retry of one)
 * an intent is recorded; the answer applied records its outcome. No intent, no request:
 * while the audit refuses (an archive failing: fail closed) the item is not sent and is
 * tried again every BP_RESEND_MS until its step's deadline. */
#include "buildpilot_dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_audit.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_log.h"

#define BP_RESEND_MS 1000 /* a queued job or a gate call is sent again after this */

typedef struct {
    bp_t *st;
    char key[BP_KEY_MAX];
} s_done_arg_t;

static bp_call_t *s_find_call(bp_t *st, const char *key);
static bp_call_t *s_call_for(bp_t *st, bp_run_t *br, bp_work_t w, int di);
static void s_send(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, bp_call_t *c, uint32_t attempt);
static void s_dispatch(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, bp_work_t w, int di);
static void s_call_done(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply,
                        const char *nak_reason);
static sn_envelope_t *s_job_result(bp_work_t w, const sn_ledger_job_t *job);
static void s_result(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, bp_call_t *c,
                     const sn_envelope_t *reply, const char *why);
static bool s_audit_intent(sn_ctx_t *ctx, bp_pb_run_t *r, bp_call_t *c);
static void s_audit_outcome(sn_ctx_t *ctx, bp_call_t *c, const sn_envelope_t *reply,
                            const char *why);

/* ---- public ------------------------------------------------------------------------------ */

void bp_dispatch_run_work(bp_t *st, sn_ctx_t *ctx, bp_run_t *br)
{
    bp_pb_run_t *r = br->run;
    if (bp_step_is(r, BP_STEP_GATE1, SENTINEL__V1__STEP_STATE__STEP_RUNNING)) {
        s_dispatch(st, ctx, br, BP_W_GATE1, -1);
        return;
    }
    if (bp_step_is(r, BP_STEP_BUILD, SENTINEL__V1__STEP_STATE__STEP_RUNNING)) {
        s_dispatch(st, ctx, br, BP_W_BUILD, -1);
        return;
    }
    if (bp_step_is(r, BP_STEP_GATE2, SENTINEL__V1__STEP_STATE__STEP_RUNNING)) {
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
    Sentinel__V1__RunState state = r->state;
    size_t n = r->n_deploys;
    for (size_t i = 0; i < n; i++) {
        if (bp_find_run(st, run_id) != br || br->run->state != state || st->needs_load)
            return;
        bp_pb_deploy_t *d = br->run->deploys[i];
        if (d->phase == phase && (w != BP_W_VLIVE || bp_str_empty(d->error)))
            s_dispatch(st, ctx, br, w, (int)i);
    }
}

void bp_dispatch_retry(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, bp_work_t w, int di)
{
    bp_call_t *c = s_call_for(st, br, w, di);
    c->is_retrying = true;
    if (!c->is_inflight)
        s_send(st, ctx, br, c, 1);
}

void bp_dispatch_end_jobs(bp_t *st, sn_ctx_t *ctx, const char *run_id)
{
    for (bp_call_t *c = st->calls; c; c = c->next)
        if (c->is_created && strcmp(c->run_id, run_id) == 0)
            (void)bp_dispatch_end_job(st, ctx, c->key);
}

bool bp_dispatch_end_job(bp_t *st, sn_ctx_t *ctx, const char *job_id)
{
    /* The run id is the job id up to its first '.'. */
    char run_id[64];
    const char *dot = strchr(job_id, '.');
    size_t len = dot ? (size_t)(dot - job_id) : strlen(job_id);
    if (st->needs_load || len == 0 || len >= sizeof run_id)
        return false;
    memcpy(run_id, job_id, len);
    run_id[len] = '\0';
    if (bp_find_run(st, run_id))
        return false;
    sn_ledger_t *ledger = sn_ctx_ledger(ctx);
    sn_ledger_job_t job;
    memset(&job, 0, sizeof job);
    if (sn_ledger_get(ledger, job_id, &job) != SN_OK)
        return false;
    bool is_queued = job.state == SN_JOB_QUEUED;
    sn_ledger_job_fini(&job);
    if (!is_queued)
        return false;
    /* The ledger has no cancel: the leader claims the job itself (nobody holds it) and
     * fails it, so no worker starts it and it leaves jobs:open. */
    uint64_t epoch = 0;
    static const char why[] = "run ended";
    if (sn_ledger_claim(ledger, job_id, sn_ctx_instance(ctx), 0, &epoch, NULL) != SN_OK ||
        sn_ledger_complete(ledger, job_id, epoch, false, (const uint8_t *)why, sizeof why - 1) !=
            SN_OK) {
        sn_warn(BP_MODULE, "cannot close job=%s of ended run=%s: a worker may still start it",
                job_id, run_id);
        return false;
    }
    sn_info(BP_MODULE, "job closed job=%s: its run ended", job_id);
    return true;
}

void bp_dispatch_gc(bp_t *st)
{
    for (bp_call_t **p = &st->calls; *p;) {
        bp_call_t *c = *p;
        if (!c->is_inflight && !bp_find_run(st, c->run_id)) {
            *p = c->next;
            free(c);
        } else {
            p = &c->next;
        }
    }
}

void bp_dispatch_clear(bp_t *st)
{
    while (st->calls) {
        bp_call_t *c = st->calls;
        st->calls = c->next;
        free(c);
    }
}

/* ---- calls -------------------------------------------------------------------------------- */

static bp_call_t *s_find_call(bp_t *st, const char *key)
{
    for (bp_call_t *c = st->calls; c; c = c->next)
        if (strcmp(c->key, key) == 0)
            return c;
    return NULL;
}

static bp_call_t *s_call_for(bp_t *st, bp_run_t *br, bp_work_t w, int di)
{
    bp_pb_run_t *r = br->run;
    char key[BP_KEY_MAX];
    bp_work_key(r, w, di >= 0 ? r->deploys[di]->target : NULL, key, sizeof key);
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
    return c;
}

/* The answer to @c: its audit outcome first (a retry it leads to is a new intent), then
 * the transition. */
static void s_result(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, bp_call_t *c,
                     const sn_envelope_t *reply, const char *why)
{
    s_audit_outcome(ctx, c, reply, why);
    bp_event_t ev = {
        .kind = BP_EV_RESULT, .work = c->work, .deploy = c->deploy, .reply = reply, .why = why};
    (void)bp_drive(st, ctx, br, &ev, NULL);
}

static void s_call_done(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply,
                        const char *nak_reason)
{
    s_done_arg_t *a = arg;
    bp_t *st = a->st;
    bp_call_t *c = s_find_call(st, a->key);
    free(a);
    if (!c)
        return;
    c->is_inflight = false;
    bp_run_t *br = bp_find_run(st, c->run_id);
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
    s_result(st, ctx, br, c, reply, NULL);
    bp_kick(st, ctx, run_id);
}

static void s_send(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, bp_call_t *c, uint32_t attempt)
{
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
    sn_envelope_stamp(&env, sn_ctx_source(ctx), "run.request", id);
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
        b.n_workflow_run_ids = r->n_workflow_run_ids;
        b.workflow_run_ids = r->workflow_run_ids;
        env.type = "build.request";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_BUILD_REQUEST;
        env.build_request = &b;
        service = sn_strdup(c->is_retrying ? "heal.retry" : "build.local");
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
            if (strcmp(r->trigger, "rollback") == 0 && !bp_str_empty(r->rollback_to)) {
                url = sn_strdupf("%s-%s", r->rollback_to, d->target);
                dr.to_release_id = url;
            } else {
                dr.to_release_id = d->previous_release_id;
            }
            service = sn_strdup("heal.rollback");
        } else if (c->is_retrying) {
            service = sn_strdup("heal.retry");
        } else {
            service = t ? sn_config_deploy_service(t, sn_ctx_host(ctx))
                        : sn_strdupf("deploy.local.%s", sn_ctx_host(ctx));
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
        v.fail_after = t ? (uint32_t)t->check.fail_after : 0;
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
    default:
        return;
    }
    if (!s_audit_intent(ctx, r, c)) {
        c->last_send_ms = sn_mono_ms(); /* no intent recorded, no side effect: later */
        free(service);
        free(url);
        return;
    }
    env.correlation_id = r->run_id;
    env.fence = sn_ctx_fence(ctx);
    if (c->is_retrying)
        sn_envelope_add_label(&env, "reason", "transient failure");
    else if (bp_works[c->work].is_job)
        sn_envelope_add_label(&env, "job_id", c->key);
    int64_t deadline = bp_step(r, bp_works[c->work].step)->deadline_unix_ms;
    int64_t left = deadline > 0 ? deadline - sn_wall_ms() : 600000;
    if (left < 1000)
        left = 1000;
    if (left > 86400000)
        left = 86400000;
    s_done_arg_t *a = sn_calloc(1, sizeof *a);
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
    bp_call_t *c = s_call_for(st, br, w, di);
    if (c->is_inflight)
        return;
    bool is_due = c->last_send_ms == 0 || sn_mono_ms() - c->last_send_ms >= BP_RESEND_MS;
    if (!bp_works[w].is_job || c->is_retrying) {
        if (is_due)
            s_send(st, ctx, br, c, 1);
        return;
    }
    sn_ledger_t *ledger = sn_ctx_ledger(ctx);
    if (!c->is_created) {
        const sn_runtime_config_t *rt = &sn_ctx_config(ctx)->runtime;
        Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
        spec.job_id = c->key;
        spec.kind = (char *)bp_works[w].tag;
        spec.service = "";
        spec.owner_role = BP_ROLE;
        spec.max_attempts = rt->job_max_attempts > 0 ? (uint32_t)rt->job_max_attempts : 0;
        spec.lease_ms = rt->job_lease_ms > 0 ? rt->job_lease_ms : 0;
        spec.correlation_id = r->run_id;
        sn_rc_t rc = sn_ledger_create(ledger, sn_ctx_fence(ctx), BP_ROLE, &spec);
        if (rc != SN_OK) {
            sn_warn(BP_MODULE, "cannot create job=%s rc=%s", c->key, sn_rc_str(rc));
            return;
        }
        c->is_created = true;
    }
    sn_ledger_job_t job;
    memset(&job, 0, sizeof job);
    if (sn_ledger_get(ledger, c->key, &job) != SN_OK)
        return;
    switch (job.state) {
    case SN_JOB_QUEUED:
        if (is_due)
            s_send(st, ctx, br, c, job.spec ? job.spec->attempt : 1);
        break;
    case SN_JOB_DONE:
    case SN_JOB_FAILED: {
        sn_envelope_t *env = s_job_result(w, &job);
        s_result(st, ctx, br, c, env, env ? NULL : "job finished without a readable result");
        sn_envelope_free(&env);
        break;
    }
    case SN_JOB_DEAD: {
        char why[96];
        snprintf(why, sizeof why, "job dead-lettered after %u attempts",
                 job.spec ? job.spec->attempt : 0);
        s_result(st, ctx, br, c, NULL, why);
        break;
    }
    default:
        break; /* claimed: the worker holds it under its lease */
    }
    sn_ledger_job_fini(&job);
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

/* ---- audit ---------------------------------------------------------------------------------- */

static bool s_is_side_effect(bp_work_t w)
{
    return w == BP_W_STAGE || w == BP_W_PROMOTE || w == BP_W_ROLLBACK;
}

/* Records the intent of @c's side effect once per request (a re-send of the same job
 * reuses it). True when the request may go out. */
static bool s_audit_intent(sn_ctx_t *ctx, bp_pb_run_t *r, bp_call_t *c)
{
    if (!s_is_side_effect(c->work) || c->audit_id != 0)
        return true;
    bp_pb_deploy_t *d =
        c->deploy >= 0 && (size_t)c->deploy < r->n_deploys ? r->deploys[c->deploy] : NULL;
    sn_audit_t *audit = sn_ctx_audit(ctx);
    sn_rc_t rc = SN_ERROR;
    if (audit && d) {
        char action[32], reason[256];
        snprintf(action, sizeof action, "%s%s", c->is_retrying ? "retry." : "",
                 bp_works[c->work].tag);
        snprintf(reason, sizeof reason, "run %s of %s/%s commit %s%s", r->run_id, r->project,
                 r->environment, r->sha,
                 c->is_retrying ? ": after a transient failure"
                 : c->work == BP_W_ROLLBACK && !bp_str_empty(r->reason) ? ": run failing"
                                                                        : "");
        rc = sn_audit_intent(audit, BP_ROLE, action, d->deploy_id, reason, &c->audit_id);
    }
    if (rc != SN_OK) {
        c->audit_id = 0;
        if (!c->is_audit_refused)
            sn_warn(BP_MODULE, "audit intent refused key=%s rc=%s: %s not requested (retrying)",
                    c->key, audit ? sn_rc_str(rc) : "no audit", bp_works[c->work].tag);
        c->is_audit_refused = true;
        sn_metrics_add(sn_ctx_metrics(ctx), "audit_refused", 1);
        return false;
    }
    c->is_audit_refused = false;
    return true;
}

/* Records the outcome of @c's intent, if one is open, from its answer. */
static void s_audit_outcome(sn_ctx_t *ctx, bp_call_t *c, const sn_envelope_t *reply,
                            const char *why)
{
    if (c->audit_id == 0)
        return;
    const Sentinel__V1__DeployResult *res =
        reply && reply->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT
            ? reply->deploy_result
            : NULL;
    bool ok = res && res->ok;
    const char *detail = res ? (ok ? "done" : res->reason) : (why ? why : "no result");
    sn_audit_t *audit = sn_ctx_audit(ctx);
    if (!audit || sn_audit_outcome(audit, c->audit_id, ok, detail) != SN_OK)
        sn_warn(BP_MODULE, "audit outcome not recorded key=%s intent=%llu", c->key,
                (unsigned long long)c->audit_id);
    c->audit_id = 0;
}
