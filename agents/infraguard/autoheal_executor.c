/* autoheal-executor (InfraGuard): executes the repairs buildpilot and infraguard ask for,
 * never deciding one itself (ARCHITECTURE §2).
 *
 * heal.rollback (DeployRequest, op "rollback"): forwarded to deploy.local.<host> of the
 * target (the target's `host` in the config, else this process's host); the deployer's
 * DeployResult is the answer. A NAK from the deployer becomes ok=false with the reason
 * and is_transient set when trying again may help.
 *
 * heal.retry (a DeployRequest or BuildRequest whose previous try failed with
 * is_transient; the caller classifies): forwarded to deploy.local.<host> or build.local
 * with exponential backoff and jitter between attempts, as long as the answers are
 * transient failures, within a budget kept in Redis so it holds across restarts and
 * replicas: at most S_BUDGET_PER_DEPLOY attempts per deploy id (run id for builds) per
 * day and S_BUDGET_PER_TARGET per target (project for builds) per hour, taken atomically
 * by one Redis Function before each attempt (keys heal:budget:<deploy-id>,
 * heal:budget:target:<target>, heal:budget:build:<run-id>, heal:budget:project:<project>).
 * Past the budget the answer is ok=false "retry budget exhausted ..." (or the last
 * forwarded answer, when this call already made attempts).
 *
 * Every attempt is audited: an intent in the audit chain before it (no intent recorded:
 * no attempt, fail closed) and an outcome after; each is also journaled as a `heal.action`
 * event (body deploy or alert; labels action, phase, reason, target, attempt, ok) so the
 * notifier and the API see it.
 *
 * Everything runs on the loop thread: forwarding is sn_ctx_call, backoff timers are
 * checked by on_tick, Redis calls (budget, journal) carry short timeouts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_audit.h"
#include "sentinel/sn_backoff.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define S_ROLE "autoheal-executor"
#define S_LIBRARY "sentinel_heal"
#define S_BUDGET_PER_DEPLOY 3
#define S_BUDGET_PER_TARGET 10
#define S_BUDGET_DEPLOY_TTL_MS "86400000" /* a day */
#define S_BUDGET_TARGET_TTL_MS "3600000"  /* an hour */
#define S_BACKOFF_BASE_MS 400
#define S_BACKOFF_CAP_MS 30000
#define S_ANSWER_MARGIN_MS 250
#define S_MIN_CALL_MS 500
#define S_REDIS_TIMEOUT_MS 500
#define S_REASON_MAX 256

static const char s_lua[] =
    "redis.register_function('sentinel_heal_budget_take', function(keys, args)\n"
    "  local limit_a, limit_b = tonumber(args[1]), tonumber(args[2])\n"
    "  local a = tonumber(redis.call('GET', keys[1]) or '0')\n"
    "  local b = tonumber(redis.call('GET', keys[2]) or '0')\n"
    "  if a >= limit_a then return {0, a, b, 'a'} end\n"
    "  if b >= limit_b then return {0, a, b, 'b'} end\n"
    "  a = redis.call('INCR', keys[1])\n"
    "  if a == 1 then redis.call('PEXPIRE', keys[1], args[3]) end\n"
    "  b = redis.call('INCR', keys[2])\n"
    "  if b == 1 then redis.call('PEXPIRE', keys[2], args[4]) end\n"
    "  return {1, a, b, ''}\n"
    "end)\n";

typedef enum { S_ROLLBACK = 1, S_RETRY_DEPLOY, S_RETRY_BUILD } s_kind_t;

/* One heal request being worked on. */
typedef struct s_state s_state_t;

typedef struct s_pending {
    struct s_pending *next;
    s_state_t *st;
    sn_request_t *req;
    s_kind_t kind;
    char *service;     /* where it is forwarded */
    char *budget_a;    /* heal:budget:<deploy-id> | heal:budget:build:<run-id> */
    char *budget_b;    /* heal:budget:target:<target> | heal:budget:project:<project> */
    const char *what;  /* deploy id or run id (borrowed from the request) */
    const char *scope; /* target or project (borrowed) */
    sn_backoff_t backoff;
    int64_t due_ms;    /* next attempt; 0 while a call is in flight */
    uint32_t attempts; /* made by this request */
    uint8_t *last;     /* the last forwarded answer (packed envelope), for an early end */
    size_t last_len;
    uint64_t audit_id; /* the audit intent of the attempt in flight */
} s_pending_t;

struct s_state {
    s_pending_t *pending;
};

static void s_rollback(sn_ctx_t *ctx, s_state_t *st, sn_request_t *req);
static void s_retry(sn_ctx_t *ctx, s_state_t *st, sn_request_t *req);
static void s_next_attempt(sn_ctx_t *ctx, s_state_t *st, s_pending_t *p);
static void s_forward(sn_ctx_t *ctx, s_pending_t *p);
static void s_on_forwarded(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply,
                           const char *nak_reason);
static void s_finish_with(sn_ctx_t *ctx, s_state_t *st, s_pending_t *p, const sn_envelope_t *fwd);
static void s_finish_failed(sn_ctx_t *ctx, s_state_t *st, s_pending_t *p, const char *reason,
                            bool is_transient);
static sn_rc_t s_audit(sn_ctx_t *ctx, s_pending_t *p, const char *phase, const char *reason,
                       bool ok);
static char *s_deploy_service(sn_ctx_t *ctx, const char *target);
static bool s_nak_is_transient(const char *nak);
static void s_pending_free(s_state_t *st, s_pending_t *p);

/* ---- callbacks ---------------------------------------------------------------------------- */

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    sn_redis_add_library(sn_ctx_redis(ctx), S_LIBRARY, s_lua);
    s_state_t *st = sn_calloc(1, sizeof *st);
    *state = st;
    sn_info(S_ROLE, "ready budget_per_deploy=%d budget_per_target=%d", S_BUDGET_PER_DEPLOY,
            S_BUDGET_PER_TARGET);
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    s_state_t *st = state;
    /* Calls in flight were answered "shutdown" by the runtime before this; what is left
     * waits for a backoff: hand it back. */
    while (st->pending) {
        s_pending_t *p = st->pending;
        sn_request_nak(ctx, p->req, "worker-lost");
        p->req = NULL;
        s_pending_free(st, p);
    }
    free(st);
}

static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    if (strcmp(sn_request_service(req), "heal.rollback") == 0)
        s_rollback(ctx, state, req);
    else
        s_retry(ctx, state, req);
}

static void s_tick(sn_ctx_t *ctx, void *state, bool is_leader)
{
    s_state_t *st = state;
    int64_t now = sn_mono_ms();
    for (s_pending_t *p = st->pending, *next; p; p = next) {
        next = p->next;
        if (p->due_ms > 0 && now >= p->due_ms) {
            p->due_ms = 0;
            s_forward(ctx, p);
        }
    }
}

const sn_role_t autoheal_executor_role = {
    .name = S_ROLE,
    .agent = "InfraGuard",
    .summary = "executes rollbacks and transient-failure retries within a budget, audited",
    .services = (const char *const[]){"heal.rollback", "heal.retry", NULL},
    .leadership = SN_LEADERSHIP_NONE,
    .credit = 4,
    .tick_ms = 50,
    .init = s_init,
    .on_request = s_request,
    .on_tick = s_tick,
    .destroy = s_destroy,
};

/* ---- heal.rollback ----------------------------------------------------------------------- */

static bool s_deploy_request_ok(const Sentinel__V1__DeployRequest *dr)
{
    return dr && dr->op && dr->deploy && dr->deploy->deploy_id && *dr->deploy->deploy_id &&
           dr->deploy->target && *dr->deploy->target && strlen(dr->deploy->target) <= 128 &&
           strlen(dr->deploy->deploy_id) <= 128;
}

static void s_rollback(sn_ctx_t *ctx, s_state_t *st, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    const Sentinel__V1__DeployRequest *dr =
        env->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST ? env->deploy_request : NULL;
    if (!s_deploy_request_ok(dr) || strcmp(dr->op, "rollback") != 0) {
        sn_warn(S_ROLE, "heal.rollback refused: %s",
                !dr ? "no deploy_request body" : "needs op rollback, deploy id and target");
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    s_pending_t *p = sn_calloc(1, sizeof *p);
    p->req = req;
    p->st = st;
    p->kind = S_ROLLBACK;
    p->what = dr->deploy->deploy_id;
    p->scope = dr->deploy->target;
    p->service = s_deploy_service(ctx, dr->deploy->target);
    p->next = st->pending;
    st->pending = p;
    s_forward(ctx, p);
}

/* ---- heal.retry -------------------------------------------------------------------------- */

static void s_retry(sn_ctx_t *ctx, s_state_t *st, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    s_pending_t *p = sn_calloc(1, sizeof *p);
    p->req = req;
    p->st = st;
    if (env->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST &&
        s_deploy_request_ok(env->deploy_request)) {
        const Sentinel__V1__DeployRequest *dr = env->deploy_request;
        if (strcmp(dr->op, "stage") != 0 && strcmp(dr->op, "promote") != 0 &&
            strcmp(dr->op, "rollback") != 0)
            goto invalid;
        p->kind = S_RETRY_DEPLOY;
        p->what = dr->deploy->deploy_id;
        p->scope = dr->deploy->target;
        p->service = s_deploy_service(ctx, p->scope);
        p->budget_a = sn_strdupf("heal:budget:%s", p->what);
        p->budget_b = sn_strdupf("heal:budget:target:%s", p->scope);
    } else if (env->body_case == SENTINEL__V1__ENVELOPE__BODY_BUILD_REQUEST &&
               env->build_request->run_id && *env->build_request->run_id &&
               strlen(env->build_request->run_id) <= 128 && env->build_request->project &&
               *env->build_request->project && strlen(env->build_request->project) <= 128) {
        p->kind = S_RETRY_BUILD;
        p->what = env->build_request->run_id;
        p->scope = env->build_request->project;
        p->service = sn_strdup("build.local");
        p->budget_a = sn_strdupf("heal:budget:build:%s", p->what);
        p->budget_b = sn_strdupf("heal:budget:project:%s", p->scope);
    } else {
        goto invalid;
    }
    sn_backoff_init(&p->backoff, S_BACKOFF_BASE_MS, S_BACKOFF_CAP_MS);
    p->next = st->pending;
    st->pending = p;
    s_next_attempt(ctx, st, p);
    return;
invalid:
    sn_warn(S_ROLE, "heal.retry refused: needs a deploy_request (op, deploy id, target) or a "
                    "build_request (run id, project)");
    free(p);
    sn_request_nak(ctx, req, "invalid");
}

/* Takes one unit of budget and schedules the attempt after its backoff, or ends. */
static void s_next_attempt(sn_ctx_t *ctx, s_state_t *st, s_pending_t *p)
{
    const char *keys[] = {p->budget_a, p->budget_b};
    char la[16], lb[16];
    snprintf(la, sizeof la, "%d", S_BUDGET_PER_DEPLOY);
    snprintf(lb, sizeof lb, "%d", S_BUDGET_PER_TARGET);
    const char *args[] = {la, lb, S_BUDGET_DEPLOY_TTL_MS, S_BUDGET_TARGET_TTL_MS};
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_fcall(sn_ctx_redis(ctx), SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r,
                                "sentinel_heal_budget_take", 2, keys, 4, args, NULL);
    if (rc != SN_OK || !r || r->type != REDIS_REPLY_ARRAY || r->elements != 4 ||
        r->element[0]->type != REDIS_REPLY_INTEGER) {
        sn_warn(S_ROLE, "retry budget unavailable %s=%s: %s",
                p->kind == S_RETRY_BUILD ? "run" : "deploy", p->what,
                r && r->type == REDIS_REPLY_ERROR ? r->str : sn_rc_str(rc));
        if (r)
            freeReplyObject(r);
        s_finish_failed(ctx, st, p, "retry budget unavailable (redis)", true);
        return;
    }
    bool is_taken = r->element[0]->integer == 1;
    long long used_a = r->element[1]->integer, used_b = r->element[2]->integer;
    bool is_scope =
        r->element[3]->type == REDIS_REPLY_STRING && strcmp(r->element[3]->str, "b") == 0;
    freeReplyObject(r);
    if (!is_taken) {
        char reason[S_REASON_MAX];
        if (is_scope)
            snprintf(reason, sizeof reason,
                     "retry budget exhausted: %s %s used %lld of %d per hour",
                     p->kind == S_RETRY_BUILD ? "project" : "target", p->scope, used_b,
                     S_BUDGET_PER_TARGET);
        else
            snprintf(reason, sizeof reason, "retry budget exhausted: %s %s used %lld of %d",
                     p->kind == S_RETRY_BUILD ? "run" : "deploy", p->what, used_a,
                     S_BUDGET_PER_DEPLOY);
        sn_warn(S_ROLE, "retry refused %s", reason);
        sn_metrics_add(sn_ctx_metrics(ctx), "heal_budget_refused", 1);
        if (p->last) {
            sn_envelope_t *last =
                sn_envelope_unpack(p->last, p->last_len, SN_MAX_FRAME_BYTES, NULL);
            if (last) {
                s_finish_with(ctx, st, p, last);
                sn_envelope_free(&last);
                return;
            }
        }
        s_finish_failed(ctx, st, p, reason, false);
        return;
    }
    /* The n-th retry of this deploy waits about base * 2^(n-1), jittered. */
    p->backoff.attempt = used_a > 1 ? (uint32_t)(used_a - 1) : 0;
    int64_t delay = sn_backoff_next(&p->backoff);
    int64_t deadline = sn_request_deadline_ms(p->req);
    if (deadline > 0 && sn_mono_ms() + delay + S_MIN_CALL_MS > deadline - S_ANSWER_MARGIN_MS) {
        /* The unit stays spent: the caller asked for more than its deadline allows. */
        s_finish_failed(ctx, st, p, "request deadline too short for the next retry", true);
        return;
    }
    sn_info(S_ROLE, "retry scheduled %s=%s scope=%s budget_used=%lld/%d delay_ms=%lld",
            p->kind == S_RETRY_BUILD ? "run" : "deploy", p->what, p->scope, used_a,
            S_BUDGET_PER_DEPLOY, (long long)delay);
    p->due_ms = sn_mono_ms() + delay;
}

/* ---- forwarding -------------------------------------------------------------------------- */

static void s_forward(sn_ctx_t *ctx, s_pending_t *p)
{
    s_state_t *st = p->st;
    const sn_envelope_t *in = sn_request_envelope(p->req);
    p->attempts++;
    /* The requester may say why (label "reason"); the audit names who asked either way. */
    const char *why = sn_envelope_label(in, "reason");
    char reason[S_REASON_MAX];
    if (why && *why)
        snprintf(reason, sizeof reason, "%.200s", why);
    else
        snprintf(reason, sizeof reason, "%s requested by %.100s",
                 p->kind == S_ROLLBACK ? "rollback" : "retry after a transient failure",
                 sn_request_principal(p->req));
    if (s_audit(ctx, p, "intent", reason, true) != SN_OK) {
        /* No record of the intent, no side effect. */
        s_finish_failed(ctx, st, p, "audit unavailable: action not taken", true);
        return;
    }
    int64_t left = sn_request_deadline_ms(p->req) - sn_mono_ms() - S_ANSWER_MARGIN_MS;
    if (left < S_MIN_CALL_MS)
        left = S_MIN_CALL_MS;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, sn_ctx_source(ctx), in->type && *in->type ? in->type : "heal.forward",
                      id);
    env.subject = in->subject;
    env.correlation_id = in->correlation_id;
    env.causation_id = in->id;
    env.n_labels = in->n_labels; /* job_id and the rest travel on */
    env.labels = in->labels;
    env.body_case = in->body_case;
    env.deploy_request = in->deploy_request; /* the oneof shares storage */
    sn_info(S_ROLE, "%s forwarded service=%s %s=%s attempt=%u",
            p->kind == S_ROLLBACK ? "rollback" : "retry", p->service,
            p->kind == S_RETRY_BUILD ? "run" : "deploy", p->what, p->attempts);
    sn_metrics_add(sn_ctx_metrics(ctx), p->kind == S_ROLLBACK ? "heal_rollbacks" : "heal_retries",
                   1);
    sn_ctx_call(ctx, p->service, &env, (int)left, 1, s_on_forwarded, p);
}

static void s_on_forwarded(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply,
                           const char *nak_reason)
{
    s_pending_t *p = arg;
    s_state_t *st = p->st;
    bool want_deploy = p->kind != S_RETRY_BUILD;
    bool has_body =
        reply && (want_deploy ? reply->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT
                              : reply->body_case == SENTINEL__V1__ENVELOPE__BODY_BUILD_RESULT);
    if (!has_body) {
        char reason[S_REASON_MAX];
        bool is_transient = reply ? false : s_nak_is_transient(nak_reason);
        snprintf(reason, sizeof reason, "%s: %s", p->service,
                 reply        ? "answer without a result body"
                 : nak_reason ? nak_reason
                              : "no answer");
        if (s_audit(ctx, p, "outcome", reason, false) != SN_OK)
            sn_warn(S_ROLE, "outcome not audited %s", p->what);
        if (p->kind != S_ROLLBACK && is_transient && !sn_ctx_is_stopping(ctx)) {
            s_next_attempt(ctx, st, p);
            return;
        }
        s_finish_failed(ctx, st, p, reason, is_transient);
        return;
    }
    bool ok = want_deploy ? reply->deploy_result->ok : reply->build_result->ok;
    bool is_transient =
        want_deploy ? reply->deploy_result->is_transient : reply->build_result->is_transient;
    const char *why = want_deploy ? reply->deploy_result->reason : reply->build_result->reason;
    if (s_audit(ctx, p, "outcome", why && *why ? why : ok ? "done" : "failed", ok) != SN_OK)
        sn_warn(S_ROLE, "outcome not audited %s", p->what);
    if (!ok && is_transient && p->kind != S_ROLLBACK && !sn_ctx_is_stopping(ctx)) {
        free(p->last);
        p->last = sn_envelope_pack(reply, &p->last_len);
        s_next_attempt(ctx, st, p);
        return;
    }
    s_finish_with(ctx, st, p, reply);
}

/* Answers with the body of @fwd (a forwarded answer) and frees @p. */
static void s_finish_with(sn_ctx_t *ctx, s_state_t *st, s_pending_t *p, const sn_envelope_t *fwd)
{
    sn_envelope_t out;
    sentinel__v1__envelope__init(&out);
    out.type = p->kind == S_RETRY_BUILD ? "build.result" : "deploy.result";
    out.subject = fwd->subject;
    out.body_case = fwd->body_case;
    out.deploy_result = fwd->deploy_result;
    char attempts[16];
    snprintf(attempts, sizeof attempts, "%u", p->attempts);
    sn_envelope_add_label(&out, "heal_attempts", attempts);
    bool ok = p->kind == S_RETRY_BUILD ? fwd->build_result->ok : fwd->deploy_result->ok;
    sn_info(
        S_ROLE, "%s answered %s=%s ok=%s attempts=%u", p->kind == S_ROLLBACK ? "rollback" : "retry",
        p->kind == S_RETRY_BUILD ? "run" : "deploy", p->what, ok ? "true" : "false", p->attempts);
    sn_request_reply(ctx, p->req, &out);
    sn_envelope_fini_labels(&out);
    p->req = NULL;
    s_pending_free(st, p);
}

/* Answers ok=false with @reason (DeployResult or BuildResult) and frees @p. */
static void s_finish_failed(sn_ctx_t *ctx, s_state_t *st, s_pending_t *p, const char *reason,
                            bool is_transient)
{
    const sn_envelope_t *in = sn_request_envelope(p->req);
    sn_envelope_t out;
    sentinel__v1__envelope__init(&out);
    out.subject = in->subject;
    Sentinel__V1__DeployResult dres = SENTINEL__V1__DEPLOY_RESULT__INIT;
    Sentinel__V1__BuildResult bres = SENTINEL__V1__BUILD_RESULT__INIT;
    if (p->kind == S_RETRY_BUILD) {
        bres.ok = false;
        bres.reason = (char *)reason;
        bres.is_transient = is_transient;
        out.type = "build.result";
        out.body_case = SENTINEL__V1__ENVELOPE__BODY_BUILD_RESULT;
        out.build_result = &bres;
    } else {
        dres.ok = false;
        dres.deploy = in->deploy_request->deploy;
        dres.reason = (char *)reason;
        dres.is_transient = is_transient;
        out.type = "deploy.result";
        out.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT;
        out.deploy_result = &dres;
    }
    char attempts[16];
    snprintf(attempts, sizeof attempts, "%u", p->attempts);
    sn_envelope_add_label(&out, "heal_attempts", attempts);
    sn_warn(S_ROLE, "%s not done %s=%s attempts=%u reason=\"%s\"",
            p->kind == S_ROLLBACK ? "rollback" : "retry",
            p->kind == S_RETRY_BUILD ? "run" : "deploy", p->what, p->attempts, reason);
    sn_request_reply(ctx, p->req, &out);
    sn_envelope_fini_labels(&out);
    p->req = NULL;
    s_pending_free(st, p);
}

/* ---- audit ------------------------------------------------------------------------------- */

/* THE audit call site of this role. Until sn_audit is reachable from a role context, the
 * intent and outcome of each action are journal events `heal.action`; switch this one
 * function to sn_audit_intent (phase "intent", keeping the record id in @p) and
 * sn_audit_outcome (phase "outcome") when it is. SN_OK when recorded. */
static sn_rc_t s_audit(sn_ctx_t *ctx, s_pending_t *p, const char *phase, const char *reason,
                       bool ok)
{
    const sn_envelope_t *in = sn_request_envelope(p->req);
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, sn_ctx_source(ctx), "heal.action", id);
    env.subject = in->subject;
    env.correlation_id = in->correlation_id;
    env.causation_id = in->id;
    Sentinel__V1__Alert alert = SENTINEL__V1__ALERT__INIT;
    if (p->kind == S_RETRY_BUILD) {
        alert.name = "heal.retry";
        alert.severity = "info";
        alert.summary = (char *)reason;
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_ALERT;
        env.alert = &alert;
    } else {
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY;
        env.deploy = in->deploy_request->deploy;
    }
    char attempt[16];
    snprintf(attempt, sizeof attempt, "%u", p->attempts);
    sn_envelope_add_label(&env, "action", p->kind == S_ROLLBACK ? "rollback" : "retry");
    sn_envelope_add_label(&env, "phase", phase);
    sn_envelope_add_label(&env, "reason", reason);
    sn_envelope_add_label(&env, "target", p->scope);
    sn_envelope_add_label(&env, "service", p->service);
    sn_envelope_add_label(&env, "attempt", attempt);
    sn_envelope_add_label(&env, "requested_by", sn_request_principal(p->req));
    if (strcmp(phase, "outcome") == 0)
        sn_envelope_add_label(&env, "ok", ok ? "true" : "false");
    /* The audit record comes first: no intent in the chain, no side effect. */
    sn_audit_t *audit = sn_ctx_audit(ctx);
    sn_rc_t rc = SN_OK;
    bool is_intent = strcmp(phase, "intent") == 0;
    if (!audit) {
        rc = is_intent ? SN_ERROR : SN_OK;
        sn_warn(S_ROLE, "audit chain unavailable phase=%s %s", phase, p->what);
    } else if (is_intent) {
        char *actor = sn_strdupf("%s/%s", sn_ctx_role(ctx), sn_ctx_instance(ctx));
        rc = sn_audit_intent(audit, actor, p->kind == S_ROLLBACK ? "heal.rollback" : "heal.retry",
                             p->what, reason, &p->audit_id);
        free(actor);
    } else if (p->audit_id) {
        rc = sn_audit_outcome(audit, p->audit_id, ok, reason);
        p->audit_id = 0;
    }
    if (rc == SN_OK || !is_intent) {
        sn_journal_result_t res;
        sn_rc_t jrc = sn_journal_commit(sn_ctx_journal(ctx), NULL, NULL, 0, &env, &res);
        if (jrc != SN_OK)
            sn_warn(S_ROLE, "heal.action not journaled phase=%s %s rc=%s", phase, p->what,
                    sn_rc_str(jrc));
    }
    sn_envelope_fini_labels(&env);
    return rc;
}

/* ---- helpers ----------------------------------------------------------------------------- */

/* The target's deployer (sn_config_deploy_service): "deploy.local.<host>" with the
 * target's host, else this process's host; "deploy.cloudflare" and the like for cloud
 * targets. An unknown target goes to this host's local deployer, which refuses it. */
static char *s_deploy_service(sn_ctx_t *ctx, const char *target)
{
    const sn_target_config_t *t = sn_config_target(sn_ctx_config(ctx), target);
    if (!t)
        return sn_strdupf("deploy.local.%s", sn_ctx_host(ctx));
    return sn_config_deploy_service(t, sn_ctx_host(ctx));
}

/* "invalid" and "forbidden" will not change on a retry; a lost worker, overload, an
 * expired deadline, a missing service or a shutdown may. */
static bool s_nak_is_transient(const char *nak)
{
    return !nak || (strcmp(nak, "invalid") != 0 && strcmp(nak, "forbidden") != 0);
}

static void s_pending_free(s_state_t *st, s_pending_t *p)
{
    for (s_pending_t **pp = &st->pending; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    free(p->service);
    free(p->budget_a);
    free(p->budget_b);
    free(p->last);
    free(p);
}
