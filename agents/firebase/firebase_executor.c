/* firebase-executor (FirebaseDeployExecutor's coordinator): deploys ONE Firebase target
 * in the order of ARCHITECTURE §7 step 7, serving firebase.deploy (DeployRequest ->
 * DeployResult) while it leads (exclusive; a standby takes over when the lock lapses):
 *
 *  - stage:    validate (firebase.validate) -> functions stage (firebase.functions) and
 *              hosting stage (firebase.hosting) at once -> propagation on the preview URL
 *              (firebase.hosting op propagation) -> sync check (firebase.sync op check of
 *              cloud-sync-sentinel; when none serves, the recorded expected state stands);
 *  - promote:  hosting promote and functions promote (a confirmation) at once ->
 *              propagation on the live URL -> the expected live state is recorded ->
 *              sync check;
 *  - rollback: functions rollback and hosting rollback at once.
 *
 * When a part fails, the parts of this target that changed are rolled back (functions
 * that were deployed; hosting once a release went to live) and the answer is ok=false
 * with the first failure's reason; rolling back the run's OTHER targets is buildpilot's
 * decision. A validation failure uploads nothing.
 *
 * Progress lives in Redis, hash firebase:deploy:<deploy-id> (fields "<op>.<step>" =
 * running | done | failed, "<op>.<step>.pb" = the part's DeployResult, "<op>.final.pb" =
 * the answer), each change written by one fenced journal commit together with its
 * `firebase.step` event (outbox rule), so a new leader that gets the request again (the
 * caller resends after worker-lost) resumes: finished parts are not called again, parts
 * that were running are asked again (the workers are idempotent on the deploy id), a
 * finished op is answered from its record. Usage per target and day (deploys, upload
 * bytes, function count: firebase:usage:<project>:<env>:<target>:<yyyymmdd>) is counted
 * once per deploy when validation passed, for cloud-sync-sentinel's budgets.
 *
 * Everything runs on the loop thread: calls are sn_ctx_call, Redis calls carry short
 * timeouts, a NAKed call is tried again on a tick until the request's deadline. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_deploy_op.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define S_ROLE "firebase-executor"
#define S_LOCK_KEY "leader:" S_ROLE
#define S_LIBRARY "sentinel_firebase_exec"
#define S_REDIS_TIMEOUT_MS 500
#define S_RETRY_MS 500
#define S_MARGIN_MS 500
#define S_DEFAULT_DEADLINE_MS 600000
#define S_RECORD_TTL_MS INT64_C(2592000000) /* 30 days */
#define S_USAGE_TTL_MS "259200000"          /* 3 days */
#define S_WAITERS 4

/* Counts a deploy's usage once (HSETNX on its record). KEYS: deploy record, usage hash.
 * ARGV: upload bytes, function count, usage ttl ms. Returns 1 if counted now. */
static const char s_lua[] =
    "redis.register_function('sn_firebase_usage', function(keys, args)\n"
    "  if redis.call('HSETNX', keys[1], 'counted', '1') == 0 then return 0 end\n"
    "  redis.call('HINCRBY', keys[2], 'deploys', 1)\n"
    "  redis.call('HINCRBY', keys[2], 'upload_bytes', args[1])\n"
    "  local f = tonumber(redis.call('HGET', keys[2], 'function_count') or '0')\n"
    "  if tonumber(args[2]) > f then redis.call('HSET', keys[2], 'function_count', args[2]) end\n"
    "  redis.call('PEXPIRE', keys[2], args[3])\n"
    "  return 1\n"
    "end)\n";

typedef enum {
    P_VALIDATE = 0,
    P_FUNCTIONS,
    P_HOSTING,
    P_PROMOTE_FUNCTIONS,
    P_PROMOTE_HOSTING,
    P_PROPAGATION,
    P_SYNC,
    P_ROLLBACK_FUNCTIONS,
    P_ROLLBACK_HOSTING,
    P_COUNT,
} s_part_t;

static const struct {
    const char *name; /* the step's name in the record and the events */
    const char *service;
    const char *op;
} s_parts[P_COUNT] = {
    [P_VALIDATE] = {"validate", "firebase.validate", "validate"},
    [P_FUNCTIONS] = {"functions", "firebase.functions", "stage"},
    [P_HOSTING] = {"hosting", "firebase.hosting", "stage"},
    [P_PROMOTE_FUNCTIONS] = {"promote_functions", "firebase.functions", "promote"},
    [P_PROMOTE_HOSTING] = {"promote_hosting", "firebase.hosting", "promote"},
    [P_PROPAGATION] = {"propagation", "firebase.hosting", "propagation"},
    [P_SYNC] = {"sync", "firebase.sync", "check"},
    [P_ROLLBACK_FUNCTIONS] = {"rollback_functions", "firebase.functions", "rollback"},
    [P_ROLLBACK_HOSTING] = {"rollback_hosting", "firebase.hosting", "rollback"},
};

typedef enum { S_NONE = 0, S_INFLIGHT, S_DONE, S_FAILED } s_pstate_t;

typedef struct s_state s_state_t;

/* One deploy op being driven. */
typedef struct s_run {
    struct s_run *next;
    uint64_t id;
    sn_request_t *reqs[S_WAITERS]; /* the first and any resends waiting for the answer */
    size_t req_count;
    Sentinel__V1__DeployRequest *in; /* unpacked copy (heap): outlives any one request */
    char op[16];
    char *hkey; /* firebase:deploy:<id> (relative) */
    char *subject;
    s_pstate_t ps[P_COUNT];
    Sentinel__V1__DeployResult *res[P_COUNT]; /* finished parts (heap, unpacked) */
    int64_t due_ms[P_COUNT];                  /* a NAKed call goes again at this time */
    const char *nak[P_COUNT];                 /* the last NAK reason (static) */
    int64_t deadline_ms;
    bool is_failing;
    bool is_transient;
    s_part_t failed_part;
    bool is_recorded_only; /* the sync check found no cloud-sync-sentinel */
    bool is_counted;       /* usage counted (once per deploy, guarded in Redis too) */
} s_run_t;

struct s_state {
    s_run_t *runs;
    uint64_t next_id;
};

typedef struct {
    s_state_t *st;
    uint64_t run_id;
    s_part_t part;
} s_call_arg_t;

static void s_drive(sn_ctx_t *ctx, s_state_t *st, s_run_t *r);

/* ---- helpers --------------------------------------------------------------------------------- */

static s_run_t *s_find(s_state_t *st, uint64_t id)
{
    for (s_run_t *r = st->runs; r; r = r->next)
        if (r->id == id)
            return r;
    return NULL;
}

static void s_run_free(s_state_t *st, s_run_t *r)
{
    for (s_run_t **p = &st->runs; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            break;
        }
    for (int i = 0; i < P_COUNT; i++)
        if (r->res[i])
            sentinel__v1__deploy_result__free_unpacked(r->res[i], NULL);
    if (r->in)
        sentinel__v1__deploy_request__free_unpacked(r->in, NULL);
    free(r->hkey);
    free(r->subject);
    free(r);
}

static bool s_is_sha(const char *s)
{
    if (!s || strlen(s) != 64)
        return false;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
            return false;
    return true;
}

static const char *s_str(const char *s)
{
    return s ? s : "";
}

static uint8_t *s_pack_result(const Sentinel__V1__DeployResult *res, size_t *len)
{
    *len = sentinel__v1__deploy_result__get_packed_size(res);
    uint8_t *b = sn_malloc(*len ? *len : 1);
    sentinel__v1__deploy_result__pack(res, b);
    return b;
}

/* ---- the record (journal commits) ------------------------------------------------------------ */

/* One fenced commit: HSET field @field = @value (and @pb under "<field>.pb" if given) on
 * the deploy record, with a firebase.step event. @extra_ops may add more ops. */
static sn_rc_t s_commit(sn_ctx_t *ctx, s_run_t *r, const char *step, const char *state,
                        const char *reason, const Sentinel__V1__DeployResult *pb,
                        sn_journal_ops_t *extra_ops)
{
    sn_journal_ops_t *ops = extra_ops ? extra_ops : sn_journal_ops_new();
    char field[64], pbfield[80], now[32];
    snprintf(field, sizeof field, "%s.%s", r->op, step);
    snprintf(pbfield, sizeof pbfield, "%s.pb", field);
    snprintf(now, sizeof now, "%lld", (long long)sn_wall_ms());
    sn_journal_ops_hset(ops, r->hkey, field, state, strlen(state));
    uint8_t *bytes = NULL;
    if (pb) {
        size_t len = 0;
        bytes = s_pack_result(pb, &len);
        sn_journal_ops_hset(ops, r->hkey, pbfield, bytes, len);
    }
    const Sentinel__V1__Deploy *d = r->in->deploy;
    sn_journal_ops_hset(ops, r->hkey, "updated_ms", now, strlen(now));
    sn_journal_ops_hset(ops, r->hkey, "target", d->target, strlen(d->target));
    sn_journal_ops_hset(ops, r->hkey, "run_id", s_str(d->run_id), strlen(s_str(d->run_id)));
    sn_journal_ops_pexpire(ops, r->hkey, S_RECORD_TTL_MS);

    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, sn_ctx_source(ctx), "firebase.step", id);
    env.subject = r->subject;
    env.correlation_id = d->run_id;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY;
    env.deploy = (Sentinel__V1__Deploy *)d;
    sn_envelope_add_label(&env, "op", r->op);
    sn_envelope_add_label(&env, "step", step);
    sn_envelope_add_label(&env, "state", state);
    if (reason && *reason)
        sn_envelope_add_label(&env, "reason", reason);
    sn_rc_t rc =
        sn_journal_commit(sn_ctx_journal(ctx), ops, S_LOCK_KEY, sn_ctx_fence(ctx), &env, NULL);
    sn_envelope_fini_labels(&env);
    sn_journal_ops_destroy(&ops);
    free(bytes);
    if (rc != SN_OK)
        sn_warn(S_ROLE, "step not recorded deploy=%s op=%s step=%s state=%s rc=%s", d->deploy_id,
                r->op, step, state, sn_rc_str(rc));
    return rc;
}

/* Loads what an earlier leader (or an earlier request) recorded for this op. True when
 * the op already has its final answer (then *final is set, caller frees). */
static bool s_load(sn_ctx_t *ctx, s_run_t *r, Sentinel__V1__DeployResult **final)
{
    *final = NULL;
    sn_redis_t *redis = sn_ctx_redis(ctx);
    char *key = sn_strdupf("%s%s", sn_redis_ns(redis), r->hkey);
    const char *argv[] = {"HGETALL", key};
    redisReply *rep = NULL;
    sn_rc_t rc = sn_redis_cmd(redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &rep, 2, argv, NULL);
    free(key);
    if (rc != SN_OK || !rep || rep->type != REDIS_REPLY_ARRAY) {
        if (rep)
            freeReplyObject(rep);
        return false; /* nothing known: start from the beginning (workers are idempotent) */
    }
    size_t oplen = strlen(r->op);
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const redisReply *f = rep->element[i], *v = rep->element[i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (strncmp(f->str, r->op, oplen) != 0 || f->str[oplen] != '.')
            continue;
        const char *rest = f->str + oplen + 1;
        if (strcmp(rest, "final.pb") == 0) {
            *final = sentinel__v1__deploy_result__unpack(NULL, v->len, (const uint8_t *)v->str);
            continue;
        }
        for (int p = 0; p < P_COUNT; p++) {
            size_t nl = strlen(s_parts[p].name);
            if (strncmp(rest, s_parts[p].name, nl) != 0)
                continue;
            if (rest[nl] == '\0') {
                if (strcmp(v->str, "done") == 0 && r->ps[p] != S_FAILED)
                    r->ps[p] = S_DONE;
                else if (strcmp(v->str, "failed") == 0)
                    r->ps[p] = S_FAILED;
            } else if (strcmp(rest + nl, ".pb") == 0 && !r->res[p]) {
                r->res[p] =
                    sentinel__v1__deploy_result__unpack(NULL, v->len, (const uint8_t *)v->str);
            }
        }
    }
    freeReplyObject(rep);
    /* A part recorded done or failed without its result is asked again. */
    for (int p = 0; p < P_COUNT; p++)
        if ((r->ps[p] == S_DONE || r->ps[p] == S_FAILED) && !r->res[p])
            r->ps[p] = S_NONE;
    return *final != NULL;
}

/* ---- answering ------------------------------------------------------------------------------- */

static char *s_rstrdup(sn_request_t *req, const char *s)
{
    return sn_request_strdup(req, s ? s : "");
}

/* Builds the answer into @req's memory from @res (the final result). */
static void s_reply_one(sn_ctx_t *ctx, sn_request_t *req, const Sentinel__V1__DeployResult *res)
{
    Sentinel__V1__DeployResult *out = sn_request_alloc(req, sizeof *out);
    sentinel__v1__deploy_result__init(out);
    out->ok = res->ok;
    out->is_transient = res->is_transient;
    out->reason = s_rstrdup(req, res->reason);
    out->upload_bytes = res->upload_bytes;
    out->function_count = res->function_count;
    if (res->deploy)
        out->deploy = sn_deploy_op_deploy_dup(req, res->deploy);
    sn_envelope_t env;
    sentinel__v1__envelope__init(&env);
    env.type = "deploy.result";
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT;
    env.deploy_result = out;
    sn_request_reply(ctx, req, &env);
}

static void s_reply_all(sn_ctx_t *ctx, s_run_t *r, const Sentinel__V1__DeployResult *res)
{
    for (size_t i = 0; i < r->req_count; i++)
        s_reply_one(ctx, r->reqs[i], res);
    r->req_count = 0;
}

/* The final answer of @r from its parts; recorded, then sent. */
static void s_finish(sn_ctx_t *ctx, s_state_t *st, s_run_t *r, bool ok, const char *fmt, ...)
    SN_PRINTF(5, 6);
static void s_finish(sn_ctx_t *ctx, s_state_t *st, s_run_t *r, bool ok, const char *fmt, ...)
{
    char reason[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    const Sentinel__V1__Deploy *in = r->in->deploy;
    Sentinel__V1__Deploy d = *in; /* shallow; strings from the request copy and part results */
    Sentinel__V1__DeployResult res = SENTINEL__V1__DEPLOY_RESULT__INIT;
    res.ok = ok;
    res.reason = reason;
    res.is_transient = !ok && r->is_transient;
    res.deploy = &d;
    d.provider = "firebase";
    int64_t now = sn_wall_ms();
    const Sentinel__V1__DeployResult *v = r->res[P_VALIDATE];
    if (v) {
        res.upload_bytes = v->upload_bytes;
        res.function_count = v->function_count;
    }
    const Sentinel__V1__DeployResult *h = NULL;
    if (strcmp(r->op, "stage") == 0) {
        h = r->res[P_HOSTING];
        if (ok && h && h->deploy) {
            d.preview_url = h->deploy->preview_url;
            d.release_id = h->deploy->release_id;
            d.provider_deployment_id = h->deploy->provider_deployment_id;
            d.staged_unix_ms = now;
        }
        d.phase = ok ? SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED
                     : SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
    } else if (strcmp(r->op, "promote") == 0) {
        h = r->res[P_PROMOTE_HOSTING];
        if (ok && h && h->deploy) {
            d.live_url = h->deploy->live_url;
            d.release_id = h->deploy->release_id;
            d.previous_release_id = h->deploy->previous_release_id;
            d.promoted_unix_ms = now;
        }
        d.phase = ok ? SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE
                     : SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
    } else {
        h = r->res[P_ROLLBACK_HOSTING];
        if (h && h->deploy) {
            d.live_url = h->deploy->live_url;
            d.release_id = h->deploy->release_id;
            d.previous_release_id = h->deploy->previous_release_id;
        }
        d.phase = ok ? SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK
                     : SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
    }
    d.error = ok ? "" : reason;
    d.finished_unix_ms = now;

    sn_journal_ops_t *ops = sn_journal_ops_new();
    /* What should be live now: cloud-sync-sentinel compares the provider with it. */
    bool is_live_change = ok && strcmp(r->op, "stage") != 0;
    if (is_live_change) {
        char *lkey = sn_strdupf("firebase:live:%s:%s:%s", in->project, in->environment, in->target);
        const Sentinel__V1__DeployResult *f = strcmp(r->op, "promote") == 0
                                                  ? r->res[P_PROMOTE_FUNCTIONS]
                                                  : r->res[P_ROLLBACK_FUNCTIONS];
        const char *hv = h && h->deploy ? s_str(h->deploy->release_id) : "";
        const char *fs = f && f->deploy ? s_str(f->deploy->release_id) : "";
        char now_s[32];
        snprintf(now_s, sizeof now_s, "%lld", (long long)now);
        sn_journal_ops_hset(ops, lkey, "hosting_version", hv, strlen(hv));
        sn_journal_ops_hset(ops, lkey, "functions_source", fs, strlen(fs));
        sn_journal_ops_hset(ops, lkey, "deploy_id", in->deploy_id, strlen(in->deploy_id));
        sn_journal_ops_hset(ops, lkey, "updated_ms", now_s, strlen(now_s));
        /* The functions baseline is taken again by the sentinel after a deploy. */
        sn_journal_ops_hdel(ops, lkey, "functions_seen");
        free(lkey);
    }
    (void)s_commit(ctx, r, "final", ok ? "done" : "failed", ok ? NULL : reason, &res, ops);
    if (ok)
        sn_info(S_ROLE, "%s ok deploy=%s target=%s release=%s%s", r->op, in->deploy_id, in->target,
                s_str(d.release_id), r->is_recorded_only ? " sync=recorded" : "");
    else
        sn_warn(S_ROLE, "%s failed deploy=%s target=%s reason=%s", r->op, in->deploy_id, in->target,
                reason);
    sn_metrics_add(sn_ctx_metrics(ctx), ok ? "firebase_ops_ok" : "firebase_ops_failed", 1);
    s_reply_all(ctx, r, &res);
    s_run_free(st, r);
}

/* ---- calls ----------------------------------------------------------------------------------- */

static void s_call_done(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply,
                        const char *nak_reason);

static void s_call(sn_ctx_t *ctx, s_state_t *st, s_run_t *r, s_part_t p)
{
    const Sentinel__V1__DeployRequest *in = r->in;
    Sentinel__V1__Deploy d = *in->deploy;
    Sentinel__V1__DeployRequest dr = SENTINEL__V1__DEPLOY_REQUEST__INIT;
    dr.op = (char *)s_parts[p].op;
    dr.deploy = &d;
    dr.artifact_sha256 = in->artifact_sha256;
    dr.commit = in->commit;
    dr.to_release_id = "";
    if (p == P_PROPAGATION) {
        /* The URL to watch: the preview channel after stage, the site after promote. */
        const Sentinel__V1__DeployResult *h =
            strcmp(r->op, "stage") == 0 ? r->res[P_HOSTING] : r->res[P_PROMOTE_HOSTING];
        const char *url = h && h->deploy ? (strcmp(r->op, "stage") == 0 ? h->deploy->preview_url
                                                                        : h->deploy->live_url)
                                         : "";
        d.live_url = (char *)s_str(url);
    }
    if (p == P_SYNC) {
        /* What must be live: the version just promoted; after a stage, what is recorded. */
        const Sentinel__V1__DeployResult *h = r->res[P_PROMOTE_HOSTING];
        d.release_id = strcmp(r->op, "promote") == 0 && h && h->deploy
                           ? (char *)s_str(h->deploy->release_id)
                           : "";
    }
    if (p == P_PROMOTE_HOSTING && r->res[P_HOSTING] && r->res[P_HOSTING]->deploy)
        d.release_id = r->res[P_HOSTING]->deploy->release_id;
    if (strcmp(r->op, "rollback") == 0 && in->to_release_id && *in->to_release_id) {
        /* One release id for two parts: a version name is Hosting's, a sha256 a
         * functions source; each part gets only its own kind. */
        const char *to = in->to_release_id;
        if ((p == P_ROLLBACK_HOSTING && strncmp(to, "sites/", 6) == 0) ||
            (p == P_ROLLBACK_FUNCTIONS && s_is_sha(to)))
            dr.to_release_id = (char *)to;
    }
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, sn_ctx_source(ctx), "deploy.request", id);
    env.subject = r->subject;
    env.correlation_id = d.run_id;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST;
    env.deploy_request = &dr;
    sn_envelope_add_label(&env, "firebase_step", s_parts[p].name);
    int64_t left = r->deadline_ms - sn_mono_ms() - S_MARGIN_MS;
    if (left < 1000)
        left = 1000;
    s_call_arg_t *a = sn_calloc(1, sizeof *a);
    a->st = st;
    a->run_id = r->id;
    a->part = p;
    r->ps[p] = S_INFLIGHT;
    r->due_ms[p] = 0;
    sn_debug(S_ROLE, "call %s op=%s deploy=%s", s_parts[p].service, s_parts[p].op, d.deploy_id);
    sn_ctx_call(ctx, s_parts[p].service, &env, (int)left, 1, s_call_done, a);
    sn_envelope_fini_labels(&env);
}

/* Starts part @p unless it finished or is under way (or waits for a retry). */
static void s_ensure(sn_ctx_t *ctx, s_state_t *st, s_run_t *r, s_part_t p)
{
    if (r->ps[p] != S_NONE || (r->due_ms[p] && sn_mono_ms() < r->due_ms[p]))
        return;
    if (s_commit(ctx, r, s_parts[p].name, "running", NULL, NULL, NULL) == SN_DECLINED)
        return; /* no longer the leader: the step-down hands the request back */
    s_call(ctx, st, r, p);
}

static void s_call_done(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply,
                        const char *nak_reason)
{
    s_call_arg_t *a = arg;
    s_state_t *st = a->st;
    s_part_t p = a->part;
    s_run_t *r = s_find(st, a->run_id);
    free(a);
    if (!r || r->ps[p] != S_INFLIGHT)
        return;
    const Sentinel__V1__DeployResult *res =
        reply && reply->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT
            ? reply->deploy_result
            : NULL;
    if (!res) {
        const char *why = reply ? "answer without a deploy_result" : s_str(nak_reason);
        if (p == P_SYNC && nak_reason && strcmp(nak_reason, "no-such-service") == 0) {
            /* No cloud-sync-sentinel: the recorded expected state is the check. */
            Sentinel__V1__DeployResult ok = SENTINEL__V1__DEPLOY_RESULT__INIT;
            ok.ok = true;
            ok.reason = "no cloud-sync-sentinel: expected state recorded";
            size_t len = 0;
            uint8_t *bytes = s_pack_result(&ok, &len);
            r->res[p] = sentinel__v1__deploy_result__unpack(NULL, len, bytes);
            free(bytes);
            r->ps[p] = S_DONE;
            r->is_recorded_only = true;
            (void)s_commit(ctx, r, s_parts[p].name, "done", NULL, &ok, NULL);
        } else {
            /* Decides nothing: asked again after a pause, until the request's deadline. */
            r->ps[p] = S_NONE;
            r->nak[p] = reply ? "invalid answer" : (nak_reason ? nak_reason : "no answer");
            r->due_ms[p] = sn_mono_ms() + S_RETRY_MS;
            sn_info(S_ROLE, "%s not answered deploy=%s step=%s: %s (asking again)",
                    s_parts[p].service, r->in->deploy->deploy_id, s_parts[p].name, why);
        }
    } else {
        size_t len = 0;
        uint8_t *bytes = s_pack_result(res, &len);
        if (r->res[p])
            sentinel__v1__deploy_result__free_unpacked(r->res[p], NULL);
        r->res[p] = sentinel__v1__deploy_result__unpack(NULL, len, bytes);
        free(bytes);
        r->ps[p] = res->ok ? S_DONE : S_FAILED;
        (void)s_commit(ctx, r, s_parts[p].name, res->ok ? "done" : "failed",
                       res->ok ? NULL : res->reason, res, NULL);
        sn_info(S_ROLE, "step %s deploy=%s op=%s ok=%d%s%s", s_parts[p].name,
                r->in->deploy->deploy_id, r->op, res->ok,
                res->ok ? "" : " reason=", res->ok ? "" : s_str(res->reason));
    }
    s_drive(ctx, st, r);
}

/* ---- the order ------------------------------------------------------------------------------- */

static const char *s_reason_of(const s_run_t *r, s_part_t p)
{
    const Sentinel__V1__DeployResult *res = r->res[p];
    return res && res->reason && *res->reason ? res->reason : "failed";
}

/* Marks the run failing on part @p (first failure wins). */
static void s_fail_on(s_run_t *r, s_part_t p)
{
    if (r->is_failing)
        return;
    r->is_failing = true;
    r->failed_part = p;
    r->is_transient = r->res[p] && r->res[p]->is_transient;
}

static bool s_settled(const s_run_t *r, s_part_t p)
{
    return r->ps[p] == S_DONE || r->ps[p] == S_FAILED;
}

/* Rolls back what changed (@functions / @hosting), then answers failure. */
static void s_roll_back_and_fail(sn_ctx_t *ctx, s_state_t *st, s_run_t *r, bool functions,
                                 bool hosting)
{
    if (functions)
        s_ensure(ctx, st, r, P_ROLLBACK_FUNCTIONS);
    if (hosting)
        s_ensure(ctx, st, r, P_ROLLBACK_HOSTING);
    if ((functions && !s_settled(r, P_ROLLBACK_FUNCTIONS)) ||
        (hosting && !s_settled(r, P_ROLLBACK_HOSTING)))
        return;
    char done[160] = "";
    size_t at = 0;
    if (functions)
        at += (size_t)snprintf(done + at, sizeof done - at, "; functions %s",
                               r->ps[P_ROLLBACK_FUNCTIONS] == S_DONE ? "rolled back"
                                                                     : "NOT rolled back");
    if (hosting)
        snprintf(done + at, sizeof done - at, "; hosting %s",
                 r->ps[P_ROLLBACK_HOSTING] == S_DONE ? "rolled back" : "NOT rolled back");
    s_finish(ctx, st, r, false, "%s: %s%s", s_parts[r->failed_part].name,
             s_reason_of(r, r->failed_part), done);
}

static void s_drive_stage(sn_ctx_t *ctx, s_state_t *st, s_run_t *r)
{
    if (r->ps[P_VALIDATE] != S_DONE) {
        if (r->ps[P_VALIDATE] == S_FAILED) {
            r->is_transient = r->res[P_VALIDATE] && r->res[P_VALIDATE]->is_transient;
            s_finish(ctx, st, r, false, "validate: %s (nothing uploaded)",
                     s_reason_of(r, P_VALIDATE));
        } else {
            s_ensure(ctx, st, r, P_VALIDATE);
        }
        return;
    }
    /* Validation passed: this deploy uploads; count it once for the budgets. */
    if (r->res[P_VALIDATE] && !r->is_failing && !r->is_counted) {
        r->is_counted = true;
        const Sentinel__V1__Deploy *d = r->in->deploy;
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        char day[16], bytes[32], fns[16];
        strftime(day, sizeof day, "%Y%m%d", &tm);
        snprintf(bytes, sizeof bytes, "%llu", (unsigned long long)r->res[P_VALIDATE]->upload_bytes);
        snprintf(fns, sizeof fns, "%u", r->res[P_VALIDATE]->function_count);
        char *ukey =
            sn_strdupf("firebase:usage:%s:%s:%s:%s", d->project, d->environment, d->target, day);
        const char *keys[] = {r->hkey, ukey};
        const char *args[] = {bytes, fns, S_USAGE_TTL_MS};
        redisReply *rep = NULL;
        if (sn_redis_fcall(sn_ctx_redis(ctx), SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &rep,
                           "sn_firebase_usage", 2, keys, 3, args, NULL) == SN_OK &&
            rep) {
            if (rep->type == REDIS_REPLY_ERROR)
                sn_warn(S_ROLE, "usage not counted deploy=%s: %s", d->deploy_id, rep->str);
            freeReplyObject(rep);
        }
        free(ukey);
    }
    if (!r->is_failing) {
        s_ensure(ctx, st, r, P_FUNCTIONS);
        s_ensure(ctx, st, r, P_HOSTING);
        /* Both parts settle before anything else: what to roll back depends on both. */
        if (!s_settled(r, P_FUNCTIONS) || !s_settled(r, P_HOSTING))
            return;
        if (r->ps[P_FUNCTIONS] == S_FAILED)
            s_fail_on(r, P_FUNCTIONS);
        else if (r->ps[P_HOSTING] == S_FAILED)
            s_fail_on(r, P_HOSTING);
    }
    if (!r->is_failing) {
        s_ensure(ctx, st, r, P_PROPAGATION);
        if (!s_settled(r, P_PROPAGATION))
            return;
        if (r->ps[P_PROPAGATION] == S_FAILED)
            s_fail_on(r, P_PROPAGATION);
    }
    if (!r->is_failing) {
        s_ensure(ctx, st, r, P_SYNC);
        if (!s_settled(r, P_SYNC))
            return;
        if (r->ps[P_SYNC] == S_FAILED)
            s_fail_on(r, P_SYNC);
    }
    if (r->is_failing) {
        /* Functions went live when they were deployed (even a failed stage may have
         * changed some): back to the previous sources. A staged Hosting version is only
         * on a preview channel: nothing live to undo. */
        s_roll_back_and_fail(ctx, st, r, true, false);
        return;
    }
    s_finish(ctx, st, r, true, "staged: functions %s, hosting %s",
             s_str(r->res[P_FUNCTIONS]->deploy ? r->res[P_FUNCTIONS]->deploy->release_id : ""),
             s_str(r->res[P_HOSTING]->deploy ? r->res[P_HOSTING]->deploy->release_id : ""));
}

static void s_drive_promote(sn_ctx_t *ctx, s_state_t *st, s_run_t *r)
{
    if (!r->is_failing) {
        s_ensure(ctx, st, r, P_PROMOTE_FUNCTIONS);
        s_ensure(ctx, st, r, P_PROMOTE_HOSTING);
        if (!s_settled(r, P_PROMOTE_FUNCTIONS) || !s_settled(r, P_PROMOTE_HOSTING))
            return;
        if (r->ps[P_PROMOTE_HOSTING] == S_FAILED)
            s_fail_on(r, P_PROMOTE_HOSTING);
        else if (r->ps[P_PROMOTE_FUNCTIONS] == S_FAILED)
            s_fail_on(r, P_PROMOTE_FUNCTIONS);
    }
    if (!r->is_failing) {
        s_ensure(ctx, st, r, P_PROPAGATION);
        if (!s_settled(r, P_PROPAGATION))
            return;
        if (r->ps[P_PROPAGATION] == S_FAILED)
            s_fail_on(r, P_PROPAGATION);
    }
    if (!r->is_failing) {
        s_ensure(ctx, st, r, P_SYNC);
        if (!s_settled(r, P_SYNC))
            return;
        if (r->ps[P_SYNC] == S_FAILED)
            s_fail_on(r, P_SYNC);
    }
    if (r->is_failing) {
        /* Hosting may have released to live (a failed promote may have, too); the
         * functions of this deploy are live since its stage. */
        s_roll_back_and_fail(ctx, st, r, true, true);
        return;
    }
    s_finish(ctx, st, r, true, "live");
}

static void s_drive_rollback(sn_ctx_t *ctx, s_state_t *st, s_run_t *r)
{
    s_ensure(ctx, st, r, P_ROLLBACK_FUNCTIONS);
    s_ensure(ctx, st, r, P_ROLLBACK_HOSTING);
    if (!s_settled(r, P_ROLLBACK_FUNCTIONS) || !s_settled(r, P_ROLLBACK_HOSTING))
        return;
    bool ok = r->ps[P_ROLLBACK_FUNCTIONS] == S_DONE && r->ps[P_ROLLBACK_HOSTING] == S_DONE;
    if (!ok) {
        s_part_t p =
            r->ps[P_ROLLBACK_HOSTING] == S_FAILED ? P_ROLLBACK_HOSTING : P_ROLLBACK_FUNCTIONS;
        s_fail_on(r, p);
        s_finish(ctx, st, r, false, "%s: %s", s_parts[p].name, s_reason_of(r, p));
        return;
    }
    s_finish(ctx, st, r, true, "rolled back: hosting %s, functions %s",
             s_str(r->res[P_ROLLBACK_HOSTING]->deploy
                       ? r->res[P_ROLLBACK_HOSTING]->deploy->release_id
                       : ""),
             s_str(r->res[P_ROLLBACK_FUNCTIONS]->deploy
                       ? r->res[P_ROLLBACK_FUNCTIONS]->deploy->release_id
                       : ""));
}

static void s_drive(sn_ctx_t *ctx, s_state_t *st, s_run_t *r)
{
    if (strcmp(r->op, "stage") == 0)
        s_drive_stage(ctx, st, r);
    else if (strcmp(r->op, "promote") == 0)
        s_drive_promote(ctx, st, r);
    else
        s_drive_rollback(ctx, st, r);
}

/* ---- role callbacks -------------------------------------------------------------------------- */

static void s_refuse(sn_ctx_t *ctx, sn_request_t *req, const char *why)
{
    sn_warn(S_ROLE, "request refused: %s", why);
    Sentinel__V1__DeployResult res = SENTINEL__V1__DEPLOY_RESULT__INIT;
    res.reason = (char *)why;
    const sn_envelope_t *env = sn_request_envelope(req);
    if (env->deploy_request)
        res.deploy = env->deploy_request->deploy;
    s_reply_one(ctx, req, &res);
}

static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    s_state_t *st = state;
    const sn_envelope_t *env = sn_request_envelope(req);
    const Sentinel__V1__DeployRequest *in =
        env->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST ? env->deploy_request : NULL;
    if (!in) {
        sn_info(S_ROLE, "refused request: body is not a deploy_request");
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    const char *op = s_str(in->op);
    const Sentinel__V1__Deploy *d = in->deploy;
    if (strcmp(op, "stage") != 0 && strcmp(op, "promote") != 0 && strcmp(op, "rollback") != 0) {
        s_refuse(ctx, req, "unknown op (stage, promote, rollback)");
        return;
    }
    if (!d || !sn_deploy_op_name_is_valid(d->deploy_id) || !sn_deploy_op_name_is_valid(d->target) ||
        !sn_deploy_op_name_is_valid(d->project) || !sn_deploy_op_name_is_valid(d->environment)) {
        s_refuse(ctx, req, "invalid deploy (deploy id, project, environment, target)");
        return;
    }
    const sn_target_config_t *t = sn_config_target(sn_ctx_config(ctx), d->target);
    if (!t || !t->type || strcmp(t->type, "firebase") != 0) {
        s_refuse(ctx, req, "not a firebase target");
        return;
    }
    if (strcmp(op, "stage") == 0 && !s_is_sha(in->artifact_sha256)) {
        s_refuse(ctx, req, "invalid artifact sha256");
        return;
    }
    /* A resend of an op under way joins it. */
    for (s_run_t *r = st->runs; r; r = r->next)
        if (strcmp(r->in->deploy->deploy_id, d->deploy_id) == 0 && strcmp(r->op, op) == 0) {
            if (r->req_count >= S_WAITERS) {
                sn_request_nak(ctx, req, "overloaded");
                return;
            }
            r->reqs[r->req_count++] = req;
            int64_t dl = sn_request_deadline_ms(req);
            if (dl > r->deadline_ms)
                r->deadline_ms = dl;
            return;
        }
    /* A private copy of the request: the run outlives the first request if it expires. */
    size_t len = sentinel__v1__deploy_request__get_packed_size(in);
    uint8_t *bytes = sn_malloc(len ? len : 1);
    sentinel__v1__deploy_request__pack(in, bytes);
    s_run_t *r = sn_calloc(1, sizeof *r);
    r->in = sentinel__v1__deploy_request__unpack(NULL, len, bytes);
    free(bytes);
    SN_ASSERT(r->in && r->in->deploy);
    r->id = ++st->next_id;
    r->reqs[r->req_count++] = req;
    sn_strlcpy(r->op, op, sizeof r->op);
    r->hkey = sn_strdupf("firebase:deploy:%s", d->deploy_id);
    r->subject = sn_strdupf("%s/%s/%s", d->project, d->environment, d->target);
    r->deadline_ms = sn_request_deadline_ms(req);
    if (r->deadline_ms <= sn_mono_ms())
        r->deadline_ms = sn_mono_ms() + S_DEFAULT_DEADLINE_MS;
    r->next = st->runs;
    st->runs = r;
    Sentinel__V1__DeployResult *final = NULL;
    if (s_load(ctx, r, &final)) {
        sn_info(S_ROLE, "%s deploy=%s already finished: answered its record", op, d->deploy_id);
        s_reply_all(ctx, r, final);
        sentinel__v1__deploy_result__free_unpacked(final, NULL);
        s_run_free(st, r);
        return;
    }
    int resumed = 0;
    for (int p = 0; p < P_COUNT; p++)
        resumed += s_settled(r, (s_part_t)p);
    sn_info(S_ROLE, "%s deploy=%s target=%s run=%s%s", op, d->deploy_id, d->target,
            s_str(d->run_id), resumed ? " (resuming recorded steps)" : "");
    s_drive(ctx, st, r);
}

static void s_tick(sn_ctx_t *ctx, void *state, bool is_leader)
{
    s_state_t *st = state;
    int64_t now = sn_mono_ms();
    for (s_run_t *r = st->runs, *next; r; r = next) {
        next = r->next;
        /* Requests past their deadline get a transient failure (the caller may resend:
         * the run resumes from its record); the run itself ends with them. */
        size_t kept = 0;
        for (size_t i = 0; i < r->req_count; i++) {
            if (sn_request_deadline_ms(r->reqs[i]) <= now) {
                Sentinel__V1__DeployResult res = SENTINEL__V1__DEPLOY_RESULT__INIT;
                res.reason = "deadline passed while deploying (resend to resume)";
                res.is_transient = true;
                res.deploy = r->in->deploy;
                s_reply_one(ctx, r->reqs[i], &res);
            } else {
                r->reqs[kept++] = r->reqs[i];
            }
        }
        r->req_count = kept;
        bool is_inflight = false;
        for (int p = 0; p < P_COUNT; p++)
            is_inflight |= r->ps[p] == S_INFLIGHT;
        if (kept == 0 && !is_inflight) {
            sn_warn(S_ROLE, "%s deploy=%s abandoned: no request waits for it any more", r->op,
                    r->in->deploy->deploy_id);
            s_run_free(st, r);
            continue;
        }
        bool is_due = false;
        for (int p = 0; p < P_COUNT; p++)
            is_due |= r->due_ms[p] && now >= r->due_ms[p];
        if (is_due && is_leader)
            s_drive(ctx, st, r);
    }
}

static void s_hand_back(sn_ctx_t *ctx, s_state_t *st)
{
    while (st->runs) {
        s_run_t *r = st->runs;
        for (size_t i = 0; i < r->req_count; i++)
            sn_request_nak(ctx, r->reqs[i], "worker-lost");
        r->req_count = 0;
        s_run_free(st, r);
    }
}

static void s_leadership(sn_ctx_t *ctx, void *state, bool is_leader, uint64_t fence)
{
    (void)fence;
    if (!is_leader) {
        /* The new leader resumes from the record when the callers resend. */
        s_hand_back(ctx, state);
    }
}

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    sn_redis_add_library(sn_ctx_redis(ctx), S_LIBRARY, s_lua);
    s_state_t *st = sn_calloc(1, sizeof *st);
    *state = st;
    sn_info(S_ROLE, "ready (serves firebase.deploy while leading)");
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    s_state_t *st = state;
    if (!st)
        return;
    s_hand_back(ctx, st);
    free(st);
}

const sn_role_t firebase_executor_role = {
    .name = S_ROLE,
    .agent = "FirebaseDeployExecutor",
    .summary = "orders validate, functions + hosting, propagation and sync check for one "
               "Firebase target; rolls back that target's parts on failure",
    .services = (const char *const[]){"firebase.deploy", NULL},
    .leadership = SN_LEADERSHIP_EXCLUSIVE,
    .credit = 16,
    .tick_ms = 100,
    .init = s_init,
    .on_request = s_request,
    .on_tick = s_tick,
    .on_leadership = s_leadership,
    .destroy = s_destroy,
};
