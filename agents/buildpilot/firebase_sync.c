/* firebase-sync (BuildPilot): hands a run's Firebase targets to FirebaseDeployExecutor and
 * reports back into the run. It serves deploy.firebase with the contract of
 * deploy.local.<host> (docs/pipeline.md): DeployRequest op stage / promote / rollback ->
 * DeployResult, a ledger job named by label `job_id` claimed before anything is asked
 * (a job already done is answered with its stored result), idempotent on the deploy id
 * (firebase-executor answers a finished op from its record).
 *
 * The request goes to firebase.deploy (firebase-executor's leader). While it runs, the
 * executor's `firebase.step` events for that deploy are its progress: each one renews
 * the job's lease and is written into the job's side-effect record (job:<id>:fx field
 * `firebase_step` = "<op> <step> <state>", epoch-guarded), and logged. A call that is not
 * answered (no leader during a failover, worker-lost, a local timeout) is sent again after
 * a short backoff until the request's deadline: the new leader resumes from its record.
 * The answer completes the job with the packed DeployResult and is the reply.
 *
 * Everything runs on the loop thread (sn_ctx_call, ledger calls with their timeouts). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_log.h"

#define S_ROLE "firebase-sync"
#define S_MARGIN_MS 300
#define S_RESEND_MS 400
#define S_RESEND_MAX_MS 3000

typedef struct s_pending {
    struct s_pending *next;
    uint64_t id;
    sn_request_t *req;
    const Sentinel__V1__DeployRequest *in; /* borrowed from the request */
    const char *job_id;                    /* NULL: not a ledger job */
    uint64_t epoch;
    int64_t lease_ms;
    int64_t renewed_ms;
    bool is_inflight;
    int64_t due_ms; /* resend time after an unanswered call */
    int64_t backoff_ms;
    uint32_t sends;
} s_pending_t;

typedef struct {
    s_pending_t *pending;
    uint64_t next_id;
} s_state_t;

typedef struct {
    s_state_t *st;
    uint64_t id;
} s_arg_t;

static void s_send(sn_ctx_t *ctx, s_state_t *st, s_pending_t *p);

static s_pending_t *s_find(s_state_t *st, uint64_t id)
{
    for (s_pending_t *p = st->pending; p; p = p->next)
        if (p->id == id)
            return p;
    return NULL;
}

static void s_unlink(s_state_t *st, s_pending_t *p)
{
    for (s_pending_t **q = &st->pending; *q; q = &(*q)->next)
        if (*q == p) {
            *q = p->next;
            return;
        }
}

/* Replies with @res (borrowed) and frees @p. */
static void s_answer(sn_ctx_t *ctx, s_state_t *st, s_pending_t *p,
                     const Sentinel__V1__DeployResult *res)
{
    if (p->job_id) {
        size_t len = sentinel__v1__deploy_result__get_packed_size(res);
        uint8_t *bytes = sn_malloc(len ? len : 1);
        sentinel__v1__deploy_result__pack(res, bytes);
        sn_rc_t rc =
            sn_ledger_complete(sn_ctx_ledger(ctx), p->job_id, p->epoch, res->ok, bytes, len);
        free(bytes);
        if (rc != SN_OK)
            sn_warn(S_ROLE, "job=%s epoch=%llu not completed: %s (lease lapsed?)", p->job_id,
                    (unsigned long long)p->epoch, sn_rc_str(rc));
    }
    const Sentinel__V1__Deploy *d = p->in->deploy;
    if (res->ok)
        sn_info(S_ROLE, "%s ok deploy=%s target=%s release=%s job=%s", p->in->op, d->deploy_id,
                d->target, res->deploy ? res->deploy->release_id : "", p->job_id ? p->job_id : "-");
    else
        sn_warn(S_ROLE, "%s failed deploy=%s target=%s transient=%d reason=%s", p->in->op,
                d->deploy_id, d->target, res->is_transient, res->reason ? res->reason : "");
    sn_envelope_t env;
    sentinel__v1__envelope__init(&env);
    env.type = "deploy.result";
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT;
    env.deploy_result = (Sentinel__V1__DeployResult *)res;
    s_unlink(st, p);
    sn_request_reply(ctx, p->req, &env);
    free(p);
}

static void s_fail(sn_ctx_t *ctx, s_state_t *st, s_pending_t *p, bool is_transient,
                   const char *reason)
{
    Sentinel__V1__DeployResult res = SENTINEL__V1__DEPLOY_RESULT__INIT;
    res.reason = (char *)reason;
    res.is_transient = is_transient;
    res.deploy = p->in->deploy;
    s_answer(ctx, st, p, &res);
}

static void s_done(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply, const char *nak_reason)
{
    s_arg_t *a = arg;
    s_state_t *st = a->st;
    s_pending_t *p = s_find(st, a->id);
    free(a);
    if (!p)
        return;
    p->is_inflight = false;
    if (reply && reply->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT &&
        reply->deploy_result) {
        s_answer(ctx, st, p, reply->deploy_result);
        return;
    }
    if (nak_reason && strcmp(nak_reason, "shutdown") == 0)
        return; /* destroy hands it back */
    p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : S_RESEND_MS;
    if (p->backoff_ms > S_RESEND_MAX_MS)
        p->backoff_ms = S_RESEND_MAX_MS;
    p->due_ms = sn_mono_ms() + p->backoff_ms;
    sn_info(S_ROLE, "firebase.deploy not answered deploy=%s: %s (sending again in %lldms)",
            p->in->deploy->deploy_id,
            reply        ? "no deploy_result"
            : nak_reason ? nak_reason
                         : "?",
            (long long)p->backoff_ms);
}

static void s_send(sn_ctx_t *ctx, s_state_t *st, s_pending_t *p)
{
    const sn_envelope_t *in_env = sn_request_envelope(p->req);
    int64_t left = sn_request_deadline_ms(p->req) - sn_mono_ms() - S_MARGIN_MS;
    if (left < 500) {
        s_fail(ctx, st, p, true, "firebase-executor did not answer before the deadline");
        return;
    }
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, sn_ctx_source(ctx), "deploy.request", id);
    env.correlation_id = in_env->correlation_id;
    env.subject = in_env->subject;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST;
    env.deploy_request = (Sentinel__V1__DeployRequest *)p->in;
    s_arg_t *a = sn_calloc(1, sizeof *a);
    a->st = st;
    a->id = p->id;
    p->is_inflight = true;
    p->due_ms = 0;
    p->sends++;
    sn_ctx_call(ctx, "firebase.deploy", &env, (int)left, p->sends, s_done, a);
}

/* Renews the lease of @p's job when a third of it has passed (or @is_forced). */
static void s_renew(sn_ctx_t *ctx, s_pending_t *p, bool is_forced)
{
    if (!p->job_id)
        return;
    int64_t now = sn_mono_ms();
    if (!is_forced && now - p->renewed_ms < p->lease_ms / 3)
        return;
    sn_rc_t rc = sn_ledger_renew(sn_ctx_ledger(ctx), p->job_id, p->epoch, 0, NULL);
    if (rc == SN_OK)
        p->renewed_ms = now;
    else if (rc == SN_DECLINED)
        sn_warn(S_ROLE, "job=%s lease lost: the ledger will hand it to another worker", p->job_id);
}

/* A Deploy with at least a deploy id and a target of [A-Za-z0-9._-]. */
static bool s_name_is_valid(const char *s)
{
    if (!s || !*s || strlen(s) > 128)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '.' || *s == '_' || *s == '-'))
            return false;
    return true;
}

static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    s_state_t *st = state;
    const sn_envelope_t *env = sn_request_envelope(req);
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST || !env->deploy_request) {
        sn_info(S_ROLE, "refused request: body is not a deploy_request");
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    s_pending_t *p = sn_calloc(1, sizeof *p);
    p->id = ++st->next_id;
    p->req = req;
    p->in = env->deploy_request;
    p->next = st->pending;
    st->pending = p;
    const Sentinel__V1__Deploy *d = p->in->deploy;
    if (!d || !s_name_is_valid(d->deploy_id) || !s_name_is_valid(d->target) || !p->in->op) {
        static Sentinel__V1__Deploy s_empty = SENTINEL__V1__DEPLOY__INIT;
        Sentinel__V1__DeployResult res = SENTINEL__V1__DEPLOY_RESULT__INIT;
        res.reason = "invalid deploy (deploy id, target, op)";
        res.deploy = d ? (Sentinel__V1__Deploy *)d : &s_empty;
        sn_warn(S_ROLE, "refused request: %s", res.reason);
        s_unlink(st, p);
        free(p);
        sn_envelope_t out;
        sentinel__v1__envelope__init(&out);
        out.type = "deploy.result";
        out.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT;
        out.deploy_result = &res;
        sn_request_reply(ctx, req, &out);
        return;
    }
    const char *job_id = sn_envelope_label(env, "job_id");
    if (job_id) {
        if (!sn_ledger_id_is_valid(job_id)) {
            s_fail(ctx, st, p, false, "malformed job id");
            return;
        }
        Sentinel__V1__JobSpec *spec = NULL;
        sn_rc_t rc =
            sn_ledger_claim(sn_ctx_ledger(ctx), job_id, sn_ctx_instance(ctx), 0, &p->epoch, &spec);
        if (rc != SN_OK) {
            sn_ledger_job_t job;
            memset(&job, 0, sizeof job);
            bool has_job =
                rc == SN_DECLINED && sn_ledger_get(sn_ctx_ledger(ctx), job_id, &job) == SN_OK;
            Sentinel__V1__DeployResult *done =
                has_job && job.state == SN_JOB_DONE && job.result_len
                    ? sentinel__v1__deploy_result__unpack(NULL, job.result_len, job.result)
                    : NULL;
            if (done) {
                sn_info(S_ROLE, "job=%s already done: answered its stored result", job_id);
                s_answer(ctx, st, p, done);
                sentinel__v1__deploy_result__free_unpacked(done, NULL);
            } else {
                char why[256];
                snprintf(why, sizeof why, "cannot claim job %s: %s", job_id,
                         has_job          ? sn_job_state_str(job.state)
                         : rc == SN_AGAIN ? "redis unavailable"
                                          : "unknown job");
                s_fail(ctx, st, p, rc == SN_AGAIN || (has_job && job.state == SN_JOB_CLAIMED), why);
            }
            if (has_job)
                sn_ledger_job_fini(&job);
            return;
        }
        p->job_id = job_id;
        p->lease_ms = spec && spec->lease_ms > 0 ? spec->lease_ms : 30000;
        p->renewed_ms = sn_mono_ms();
        sn_ledger_spec_free(&spec);
    }
    sn_info(S_ROLE, "%s deploy=%s target=%s job=%s: to firebase.deploy", p->in->op, d->deploy_id,
            d->target, job_id ? job_id : "-");
    s_send(ctx, st, p);
}

/* firebase.step from firebase-executor: progress of one of our deploys. */
static void s_event(sn_ctx_t *ctx, void *state, const sn_envelope_t *env)
{
    s_state_t *st = state;
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_DEPLOY || !env->deploy ||
        !env->deploy->deploy_id)
        return;
    const char *op = sn_envelope_label(env, "op");
    const char *step = sn_envelope_label(env, "step");
    const char *state_s = sn_envelope_label(env, "state");
    for (s_pending_t *p = st->pending; p; p = p->next) {
        if (strcmp(p->in->deploy->deploy_id, env->deploy->deploy_id) != 0 ||
            (op && strcmp(op, p->in->op) != 0))
            continue;
        char progress[160];
        snprintf(progress, sizeof progress, "%s %s %s", op ? op : "?", step ? step : "?",
                 state_s ? state_s : "?");
        sn_info(S_ROLE, "progress deploy=%s %s", p->in->deploy->deploy_id, progress);
        sn_metrics_add(sn_ctx_metrics(ctx), "firebase_steps", 1);
        if (p->job_id) {
            s_renew(ctx, p, true);
            char *fx = sn_strdupf("job:%s:fx", p->job_id);
            sn_rc_t rc =
                sn_ledger_guarded_hset(sn_ctx_ledger(ctx), p->job_id, p->epoch, fx, "firebase_step",
                                       (const uint8_t *)progress, strlen(progress));
            free(fx);
            if (rc == SN_DECLINED)
                sn_warn(S_ROLE, "job=%s: progress refused (lease lost)", p->job_id);
        }
    }
}

static void s_tick(sn_ctx_t *ctx, void *state, bool is_leader)
{
    (void)is_leader;
    s_state_t *st = state;
    int64_t now = sn_mono_ms();
    for (s_pending_t *p = st->pending, *next; p; p = next) {
        next = p->next;
        s_renew(ctx, p, false);
        if (!p->is_inflight && p->due_ms && now >= p->due_ms)
            s_send(ctx, st, p);
    }
}

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    (void)ctx;
    *state = sn_calloc(1, sizeof(s_state_t));
    sn_info(S_ROLE, "serving deploy.firebase (forwarded to firebase.deploy)");
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    s_state_t *st = state;
    if (!st)
        return;
    while (st->pending) {
        s_pending_t *p = st->pending;
        st->pending = p->next;
        sn_request_nak(ctx, p->req, "worker-lost"); /* the job's lease lapses: re-dispatched */
        free(p);
    }
    free(st);
}

const sn_role_t firebase_sync_role = {
    .name = S_ROLE,
    .agent = "BuildPilot",
    .summary = "hands a run's Firebase targets to firebase-executor and reports back",
    .services = (const char *const[]){"deploy.firebase", NULL},
    .subscriptions = (const char *const[]){"firebase.step", NULL},
    .leadership = SN_LEADERSHIP_NONE,
    .credit = 8,
    .tick_ms = 100,
    .init = s_init,
    .on_event = s_event,
    .on_request = s_request,
    .on_tick = s_tick,
    .destroy = s_destroy,
};
