/* deployment-watcher (InfraGuard): verification as a service and the watch over deploys
 * in flight. It only reports; buildpilot decides (ARCHITECTURE §2, §7 step 8).
 *
 * verify.check (VerifyRequest -> VerifyResult), on a job thread: the URL is polled every
 * interval_ms until `consecutive` successes in a row or the deadline. One attempt
 * succeeds when the status is expect_status, the latency is within max_latency_ms, the
 * body contains body_contains (if set), the release identity at
 * <origin>/.well-known/sentinel-release.json names expect_deploy_id / expect_commit (if
 * set: an old release or a stale edge never passes), and dns_name resolves (through
 * c-ares, against dns_resolvers) to dns_expect (if set). Any failure resets the streak.
 * A request carrying label `job_id` is a ledger job: claimed before the first attempt,
 * its lease renewed while polling, completed with its epoch (result = the packed
 * VerifyResult). A claim refused answers NAK forbidden (held elsewhere or finished),
 * unknown job NAK invalid, Redis away NAK overloaded.
 *
 * Leader duty: every few seconds, one SCAN page at a time over deploy:<id> hashes; a
 * deploy whose `phase` is STAGING, PROMOTING or ROLLING_BACK and whose last update
 * (`updated_ms` of the deploy hash, else of its run) is older than the stuck threshold
 * gets ONE `deploy.stuck` event per phase (marker key stuck:<deploy-id>:<phase>, SET NX
 * with a week's expiry), journaled with the leader's fence and no state change. The
 * threshold is $SENTINEL_STUCK_AFTER_MS (default 120 s) until the config grows a key. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_dns.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define S_ROLE "deployment-watcher"
#define S_IDENTITY_PATH "/.well-known/sentinel-release.json"
#define S_REASON_MAX 512
#define S_DEFAULT_INTERVAL_MS 500
#define S_DEFAULT_DEADLINE_MS 30000
#define S_ATTEMPT_CAP_MS 10000 /* one HTTP attempt without a latency limit */
#define S_ANSWER_MARGIN_MS 250 /* answer this long before the broker's deadline */
#define S_IDENTITY_MAX_BYTES (64 * 1024)
#define S_DNS_TIMEOUT_MS 2000
#define S_SCAN_INTERVAL_MS 2000
#define S_SCAN_COUNT "100"
#define S_STUCK_AFTER_MS_DEFAULT 120000
#define S_STUCK_MARK_TTL_MS "604800000"
#define S_REDIS_TIMEOUT_MS 500

typedef struct {
    int64_t stuck_after_ms;
    int64_t next_scan_ms;
    char cursor[32]; /* SCAN cursor; "0" between passes */
    bool is_mid_pass;
} s_state_t;

/* One verification in progress (job thread). */
typedef struct {
    const Sentinel__V1__VerifyRequest *vr;
    sn_http_t *http;
    char *origin;
    uint32_t expect_status;
    int64_t deadline_at_ms;
    uint32_t last_status;
    uint32_t last_latency_ms;
    bool is_cut; /* the attempt timed out on a timeout the deadline had shortened */
    char reason[S_REASON_MAX];
} s_verify_t;

static sn_rc_t s_verify_job(sn_ctx_t *ctx, void *state, const sn_request_t *req,
                            sn_envelope_t *reply, const char **nak_reason);
static bool s_attempt(s_verify_t *v);
static bool s_check_identity(s_verify_t *v, int64_t timeout_ms);
static bool s_check_dns(s_verify_t *v);
static bool s_nap_until(sn_ctx_t *ctx, int64_t until_ms);
static void s_scan_page(sn_ctx_t *ctx, s_state_t *st);
static void s_check_deploy(sn_ctx_t *ctx, s_state_t *st, const char *key);
static Sentinel__V1__DeployPhase s_phase_parse(const char *text);
static const char *s_phase_name(Sentinel__V1__DeployPhase phase);

/* ---- callbacks ---------------------------------------------------------------------------- */

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    s_state_t *st = sn_calloc(1, sizeof *st);
    st->stuck_after_ms = S_STUCK_AFTER_MS_DEFAULT;
    const char *env = getenv("SENTINEL_STUCK_AFTER_MS");
    int64_t v = 0;
    if (env && sn_parse_i64(env, 100, INT64_C(86400000) * 30, &v) == SN_OK)
        st->stuck_after_ms = v;
    else if (env)
        sn_warn(S_ROLE, "ignoring SENTINEL_STUCK_AFTER_MS=\"%.32s\" (want 100..2592000000)", env);
    sn_strlcpy(st->cursor, "0", sizeof st->cursor);
    *state = st;
    sn_info(S_ROLE, "ready stuck_after_ms=%lld", (long long)st->stuck_after_ms);
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    free(state);
}

static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    const Sentinel__V1__VerifyRequest *vr =
        env->body_case == SENTINEL__V1__ENVELOPE__BODY_VERIFY_REQUEST ? env->verify_request : NULL;
    char *origin = vr && vr->url ? sn_http_url_origin(vr->url) : NULL;
    const char *job_id = sn_envelope_label(env, "job_id");
    const char *why = NULL;
    if (!vr)
        why = "no verify_request body";
    else if (!origin)
        why = "url is not an absolute http(s) URL";
    else if (job_id && !sn_ledger_id_is_valid(job_id))
        why = "malformed job_id label";
    else if (vr->expect_status > 599)
        why = "expect_status out of range";
    for (size_t i = 0; vr && !why && i < vr->n_dns_resolvers; i++)
        if (!sn_dns_resolver_is_valid(vr->dns_resolvers[i]))
            why = "malformed dns resolver";
    free(origin);
    if (why) {
        sn_warn(S_ROLE, "verify refused: %s", why);
        sn_metrics_add(sn_ctx_metrics(ctx), "verify_invalid", 1);
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    sn_request_defer(ctx, req, s_verify_job, state);
}

static void s_tick(sn_ctx_t *ctx, void *state, bool is_leader)
{
    s_state_t *st = state;
    if (!is_leader) {
        sn_strlcpy(st->cursor, "0", sizeof st->cursor);
        st->is_mid_pass = false;
        return;
    }
    if (!st->is_mid_pass && sn_mono_ms() < st->next_scan_ms)
        return;
    s_scan_page(ctx, st);
}

const sn_role_t deployment_watcher_role = {
    .name = S_ROLE,
    .agent = "InfraGuard",
    .summary = "verification as a service (HTTP, release identity, DNS); reports stuck deploys",
    .services = (const char *const[]){"verify.check", NULL},
    .leadership = SN_LEADERSHIP_DUTY,
    .credit = 4,
    .tick_ms = 500,
    .init = s_init,
    .on_request = s_request,
    .on_tick = s_tick,
    .destroy = s_destroy,
};

/* ---- verification (job thread) ------------------------------------------------------------ */

static sn_rc_t s_verify_job(sn_ctx_t *ctx, void *state, const sn_request_t *creq,
                            sn_envelope_t *reply, const char **nak_reason)
{
    sn_request_t *req = (sn_request_t *)creq;
    const sn_envelope_t *env = sn_request_envelope(req);
    const Sentinel__V1__VerifyRequest *vr = env->verify_request;
    const char *job_id = sn_envelope_label(env, "job_id");
    sn_ledger_t *ledger = sn_ctx_ledger(ctx);
    uint64_t epoch = 0;
    int64_t lease_ms = 0;
    if (job_id) {
        Sentinel__V1__JobSpec *spec = NULL;
        sn_rc_t rc = sn_ledger_claim(ledger, job_id, sn_ctx_instance(ctx), 0, &epoch, &spec);
        if (rc != SN_OK) {
            sn_info(S_ROLE, "verify job not claimed job=%s rc=%s", job_id, sn_rc_str(rc));
            *nak_reason = rc == SN_DECLINED ? "forbidden"
                          : rc == SN_AGAIN  ? "overloaded"
                                            : "invalid";
            return rc;
        }
        lease_ms = spec && spec->lease_ms > 0 ? spec->lease_ms : 30000;
        sn_ledger_spec_free(&spec);
    }

    int64_t start = sn_mono_ms();
    s_verify_t v = {.vr = vr, .expect_status = vr->expect_status ? vr->expect_status : 200};
    v.origin = sn_http_url_origin(vr->url);
    v.http = sn_http_new();
    uint32_t consecutive = vr->consecutive ? vr->consecutive : 1;
    int64_t interval = vr->interval_ms ? vr->interval_ms : S_DEFAULT_INTERVAL_MS;
    v.deadline_at_ms = start + (vr->deadline_ms ? vr->deadline_ms : S_DEFAULT_DEADLINE_MS);
    int64_t req_deadline = sn_request_deadline_ms(req);
    if (req_deadline > 0 && req_deadline - S_ANSWER_MARGIN_MS < v.deadline_at_ms)
        v.deadline_at_ms = req_deadline - S_ANSWER_MARGIN_MS;
    char *safe_url = sn_http_redact_url(vr->url);
    sn_info(S_ROLE,
            "verify start deploy=%s url=%s consecutive=%u interval_ms=%lld deadline_ms=%lld%s%s",
            vr->deploy_id ? vr->deploy_id : "", safe_url, consecutive, (long long)interval,
            (long long)(v.deadline_at_ms - start), job_id ? " job=" : "", job_id ? job_id : "");

    uint32_t attempts = 0, streak = 0, failures = 0;
    bool ok = false, is_lost = false, is_stopped = false, is_fail_fast = false;
    int64_t last_renew = start;
    char fail[S_REASON_MAX] = "";
    while (v.http) {
        int64_t t0 = sn_mono_ms();
        attempts++;
        if (s_attempt(&v)) {
            failures = 0;
            if (++streak >= consecutive) {
                ok = true;
                break;
            }
        } else {
            streak = 0;
            /* An attempt cut short by the deadline says less than the one before it. */
            if (!v.is_cut || !fail[0])
                sn_strlcpy(fail, v.reason, sizeof fail);
            sn_debug(S_ROLE, "verify attempt failed deploy=%s attempt=%u reason=\"%s\"",
                     vr->deploy_id ? vr->deploy_id : "", attempts, v.reason);
            /* A release that keeps failing is not waited for: rolling it back early is
             * what shortens the outage (fail_after 0 keeps waiting for the deadline). */
            if (vr->fail_after && ++failures >= vr->fail_after) {
                is_fail_fast = true;
                break;
            }
        }
        if (sn_mono_ms() >= v.deadline_at_ms)
            break;
        /* The last wait ends at the deadline: a failure is answered at the deadline, not
         * an interval before it. The job's lease is renewed while waiting. */
        int64_t next = t0 + interval;
        int64_t until = next < v.deadline_at_ms ? next : v.deadline_at_ms;
        for (;;) {
            int64_t renew_at = job_id ? last_renew + lease_ms / 3 : INT64_MAX;
            if (!s_nap_until(ctx, renew_at < until ? renew_at : until)) {
                is_stopped = true;
                break;
            }
            if (job_id && sn_mono_ms() >= renew_at) {
                if (sn_ledger_renew(ledger, job_id, epoch, 0, NULL) == SN_DECLINED) {
                    is_lost = true;
                    break;
                }
                last_renew = sn_mono_ms();
            }
            if (sn_mono_ms() >= until)
                break;
        }
        if (is_stopped || is_lost || sn_mono_ms() >= v.deadline_at_ms)
            break;
    }
    if (is_fail_fast)
        sn_info(S_ROLE, "verify failed fast deploy=%s failures=%u",
                vr->deploy_id ? vr->deploy_id : "", failures);
    if (!v.http)
        snprintf(fail, sizeof fail, "no HTTP client");
    sn_http_destroy(&v.http);
    free(v.origin);

    if (is_lost || is_stopped) {
        sn_info(S_ROLE, "verify abandoned deploy=%s attempts=%u reason=%s",
                vr->deploy_id ? vr->deploy_id : "", attempts,
                is_lost ? "lease lost" : "shutting down");
        free(safe_url);
        *nak_reason = "worker-lost";
        return SN_AGAIN;
    }

    Sentinel__V1__VerifyResult *res = sn_request_alloc(req, sizeof *res);
    sentinel__v1__verify_result__init(res);
    res->ok = ok;
    res->attempts = attempts;
    res->last_status = v.last_status;
    res->last_latency_ms = v.last_latency_ms;
    char reason[S_REASON_MAX + 64];
    if (ok)
        snprintf(reason, sizeof reason, "%u consecutive successes", streak);
    else if (is_fail_fast)
        snprintf(reason, sizeof reason, "%s; %u failed attempts in a row", fail, failures);
    else
        snprintf(reason, sizeof reason, "%s; deadline passed after %u attempts",
                 fail[0] ? fail : "no successful streak", attempts);
    res->reason = sn_request_strdup(req, reason);
    int64_t took = sn_mono_ms() - start;
    if (ok)
        sn_info(S_ROLE, "verify passed deploy=%s url=%s attempts=%u ms=%lld",
                vr->deploy_id ? vr->deploy_id : "", safe_url, attempts, (long long)took);
    else
        sn_warn(S_ROLE, "verify failed deploy=%s url=%s attempts=%u ms=%lld reason=\"%s\"",
                vr->deploy_id ? vr->deploy_id : "", safe_url, attempts, (long long)took, reason);
    free(safe_url);
    sn_metrics_add(sn_ctx_metrics(ctx), ok ? "verify_passed" : "verify_failed", 1);
    sn_metrics_observe_ms(sn_ctx_metrics(ctx), "verify_ms", (double)took);

    if (job_id) {
        size_t len = sentinel__v1__verify_result__get_packed_size(res);
        uint8_t *buf = sn_malloc(len ? len : 1);
        sentinel__v1__verify_result__pack(res, buf);
        sn_rc_t rc = sn_ledger_complete(ledger, job_id, epoch, ok, buf, len);
        free(buf);
        if (rc != SN_OK)
            sn_warn(S_ROLE, "verify job completion refused job=%s epoch=%llu rc=%s", job_id,
                    (unsigned long long)epoch, sn_rc_str(rc));
    }
    reply->type = "verify.result";
    reply->subject = env->subject;
    reply->body_case = SENTINEL__V1__ENVELOPE__BODY_VERIFY_RESULT;
    reply->verify_result = res;
    return SN_OK;
}

/* One attempt; false with v->reason set on failure. */
static bool s_attempt(s_verify_t *v)
{
    const Sentinel__V1__VerifyRequest *vr = v->vr;
    int64_t remaining = v->deadline_at_ms - sn_mono_ms();
    int64_t timeout = vr->max_latency_ms ? (int64_t)vr->max_latency_ms + 1000 : S_ATTEMPT_CAP_MS;
    bool is_shortened = timeout > remaining;
    if (is_shortened)
        timeout = remaining;
    if (timeout < 100)
        timeout = 100;
    sn_http_request_t hreq = {.url = vr->url, .timeout_ms = (int)timeout};
    sn_http_response_t resp;
    sn_rc_t rc = sn_http_perform(v->http, &hreq, &resp);
    v->is_cut = is_shortened && resp.is_timeout;
    v->last_status = (uint32_t)resp.status;
    v->last_latency_ms = (uint32_t)resp.latency_ms;
    bool ok = false;
    if (rc != SN_OK) {
        if (resp.is_timeout)
            snprintf(v->reason, sizeof v->reason, "no answer within %lld ms", (long long)timeout);
        else if (resp.is_too_large)
            snprintf(v->reason, sizeof v->reason, "response too large");
        else
            snprintf(v->reason, sizeof v->reason, "request failed: %s", resp.error);
    } else if ((uint32_t)resp.status != v->expect_status) {
        snprintf(v->reason, sizeof v->reason, "status %ld", resp.status);
    } else if (vr->max_latency_ms && resp.latency_ms > vr->max_latency_ms) {
        snprintf(v->reason, sizeof v->reason, "latency %lld ms > %u", (long long)resp.latency_ms,
                 vr->max_latency_ms);
    } else if (vr->body_contains && *vr->body_contains &&
               !memmem(resp.body, resp.body_len, vr->body_contains, strlen(vr->body_contains))) {
        /* Never the body itself in a reason: only what was looked for. */
        snprintf(v->reason, sizeof v->reason, "body does not contain \"%.64s\"", vr->body_contains);
    } else {
        ok = true;
    }
    sn_http_response_fini(&resp);
    if (ok && ((vr->expect_deploy_id && *vr->expect_deploy_id) ||
               (vr->expect_commit && *vr->expect_commit)))
        ok = s_check_identity(v, timeout);
    if (ok && vr->dns_name && *vr->dns_name)
        ok = s_check_dns(v);
    return ok;
}

static bool s_check_identity(s_verify_t *v, int64_t timeout_ms)
{
    const Sentinel__V1__VerifyRequest *vr = v->vr;
    char *url = sn_strdupf("%s%s", v->origin, S_IDENTITY_PATH);
    sn_http_request_t hreq = {
        .url = url, .timeout_ms = (int)timeout_ms, .max_body_bytes = S_IDENTITY_MAX_BYTES};
    sn_http_response_t resp;
    sn_rc_t rc = sn_http_perform(v->http, &hreq, &resp);
    free(url);
    bool ok = false;
    if (rc != SN_OK) {
        snprintf(v->reason, sizeof v->reason, "release identity unavailable: %s",
                 resp.is_timeout ? "timeout" : resp.error);
    } else if (resp.status != 200) {
        snprintf(v->reason, sizeof v->reason, "release identity unavailable: status %ld",
                 resp.status);
    } else {
        char err[160] = "";
        Sentinel__V1__ReleaseIdentity *id = (Sentinel__V1__ReleaseIdentity *)sn_json_parse_message(
            &sentinel__v1__release_identity__descriptor, resp.body, resp.body_len, err, sizeof err);
        if (!id) {
            snprintf(v->reason, sizeof v->reason, "release identity unreadable: %s", err);
        } else {
            const char *got_deploy = id->deploy_id ? id->deploy_id : "";
            const char *got_commit = id->commit ? id->commit : "";
            if (vr->expect_deploy_id && *vr->expect_deploy_id &&
                strcmp(got_deploy, vr->expect_deploy_id) != 0)
                snprintf(v->reason, sizeof v->reason,
                         "release identity is deploy %.80s, expected %.80s",
                         *got_deploy ? got_deploy : "(none)", vr->expect_deploy_id);
            else if (vr->expect_commit && *vr->expect_commit &&
                     strcmp(got_commit, vr->expect_commit) != 0)
                snprintf(v->reason, sizeof v->reason,
                         "release identity is commit %.80s, expected %.80s",
                         *got_commit ? got_commit : "(none)", vr->expect_commit);
            else
                ok = true;
            protobuf_c_message_free_unpacked(&id->base, NULL);
        }
    }
    sn_http_response_fini(&resp);
    return ok;
}

static bool s_check_dns(s_verify_t *v)
{
    const Sentinel__V1__VerifyRequest *vr = v->vr;
    const char **resolvers = sn_calloc(vr->n_dns_resolvers + 1, sizeof *resolvers);
    for (size_t i = 0; i < vr->n_dns_resolvers; i++)
        resolvers[i] = vr->dns_resolvers[i];
    int64_t timeout = v->deadline_at_ms - sn_mono_ms();
    if (timeout > S_DNS_TIMEOUT_MS)
        timeout = S_DNS_TIMEOUT_MS;
    if (timeout < 100)
        timeout = 100;
    sn_dns_result_t r;
    sn_rc_t rc = sn_dns_resolve(vr->dns_name, resolvers, (int)timeout, &r);
    free(resolvers);
    if (rc != SN_OK) {
        snprintf(v->reason, sizeof v->reason, "dns %.80s: %s", vr->dns_name, r.error);
        return false;
    }
    if (vr->dns_expect && *vr->dns_expect && !sn_dns_result_has(&r, vr->dns_expect)) {
        char got[128] = "";
        for (size_t i = 0; i < r.count; i++) {
            size_t used = strlen(got);
            snprintf(got + used, sizeof got - used, "%s%s", i ? "," : "", r.addrs[i]);
        }
        snprintf(v->reason, sizeof v->reason, "dns %.80s resolves to %s, expected %.64s",
                 vr->dns_name, got, vr->dns_expect);
        return false;
    }
    return true;
}

/* Waits until @until_ms in small steps; false as soon as the process is stopping. */
static bool s_nap_until(sn_ctx_t *ctx, int64_t until_ms)
{
    for (;;) {
        if (sn_ctx_is_stopping(ctx))
            return false;
        int64_t left = until_ms - sn_mono_ms();
        if (left <= 0)
            return true;
        if (left > 20)
            left = 20;
        struct timespec ts = {0, (long)left * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* ---- the leader's duty: stuck deploys ------------------------------------------------------ */

/* One SCAN page over <ns>deploy:*; the pass continues on the next tick. */
static void s_scan_page(sn_ctx_t *ctx, s_state_t *st)
{
    sn_redis_t *redis = sn_ctx_redis(ctx);
    char *match = sn_strdupf("%sdeploy:*", sn_redis_ns(redis));
    const char *argv[] = {"SCAN", st->cursor, "MATCH", match, "COUNT", S_SCAN_COUNT};
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_cmd(redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r, 6, argv, NULL);
    free(match);
    if (rc != SN_OK || !r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
        /* Redis away or odd: start over at the next interval. */
        if (r)
            freeReplyObject(r);
        sn_strlcpy(st->cursor, "0", sizeof st->cursor);
        st->is_mid_pass = false;
        st->next_scan_ms = sn_mono_ms() + S_SCAN_INTERVAL_MS;
        return;
    }
    sn_strlcpy(st->cursor, r->element[0]->str, sizeof st->cursor);
    size_t ns_len = strlen(sn_redis_ns(redis));
    for (size_t i = 0; i < r->element[1]->elements && sn_ctx_is_leader(ctx); i++) {
        const redisReply *k = r->element[1]->element[i];
        if (k->type != REDIS_REPLY_STRING || k->len <= ns_len + 7)
            continue;
        /* deploy:<id> only, not deploy:<id>:<anything> */
        if (strchr(k->str + ns_len + 7, ':'))
            continue;
        s_check_deploy(ctx, st, k->str);
    }
    freeReplyObject(r);
    st->is_mid_pass = strcmp(st->cursor, "0") != 0;
    if (!st->is_mid_pass)
        st->next_scan_ms = sn_mono_ms() + S_SCAN_INTERVAL_MS;
}

static int64_t s_reply_i64(const redisReply *r)
{
    int64_t v = 0;
    if (r && r->type == REDIS_REPLY_STRING && sn_parse_i64(r->str, 0, INT64_MAX, &v) == SN_OK)
        return v;
    return 0;
}

/* @key is the full (namespaced) key of one deploy hash. */
static void s_check_deploy(sn_ctx_t *ctx, s_state_t *st, const char *key)
{
    sn_redis_t *redis = sn_ctx_redis(ctx);
    const char *argv[] = {"HMGET", key, "pb", "phase", "run_id", "updated_ms"};
    redisReply *r = NULL;
    if (sn_redis_cmd(redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r, 6, argv, NULL) != SN_OK)
        return;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 4) {
        if (r)
            freeReplyObject(r); /* WRONGTYPE: not a deploy hash */
        return;
    }
    const redisReply *pb = r->element[0], *phase_r = r->element[1], *run_r = r->element[2];
    Sentinel__V1__Deploy *d = NULL;
    if (pb->type == REDIS_REPLY_STRING && pb->len > 0 && pb->len < SN_MAX_FRAME_BYTES)
        d = sentinel__v1__deploy__unpack(NULL, pb->len, (const uint8_t *)pb->str);
    Sentinel__V1__DeployPhase phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PHASE_UNSPECIFIED;
    if (phase_r->type == REDIS_REPLY_STRING)
        phase = s_phase_parse(phase_r->str);
    if (phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PHASE_UNSPECIFIED && d)
        phase = d->phase;
    bool is_in_flight = phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGING ||
                        phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PROMOTING ||
                        phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK;
    const char *run_id = run_r->type == REDIS_REPLY_STRING ? run_r->str
                         : d && d->run_id                  ? d->run_id
                                                           : "";
    int64_t updated = s_reply_i64(r->element[3]);
    if (is_in_flight && updated == 0 && *run_id) {
        /* The deploy hash has no update time: the run's is the next best. */
        char *run_key = sn_strdupf("%srun:%s", sn_redis_ns(redis), run_id);
        const char *rargv[] = {"HGET", run_key, "updated_ms"};
        redisReply *rr = NULL;
        if (sn_redis_cmd(redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &rr, 3, rargv, NULL) == SN_OK) {
            updated = s_reply_i64(rr);
            freeReplyObject(rr);
        }
        free(run_key);
    }
    int64_t age = sn_wall_ms() - updated;
    if (!is_in_flight || updated == 0 || age < st->stuck_after_ms)
        goto out;

    const char *deploy_id = key + strlen(sn_redis_ns(redis)) + 7;
    char *mark = sn_strdupf("%sstuck:%s:%s", sn_redis_ns(redis), deploy_id, s_phase_name(phase));
    const char *margv[] = {"SET", mark, sn_ctx_instance(ctx), "NX", "PX", S_STUCK_MARK_TTL_MS};
    redisReply *mr = NULL;
    bool is_first =
        sn_redis_cmd(redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &mr, 6, margv, NULL) == SN_OK &&
        mr && mr->type == REDIS_REPLY_STATUS;
    if (mr)
        freeReplyObject(mr);
    if (is_first) {
        Sentinel__V1__Deploy minimal = SENTINEL__V1__DEPLOY__INIT;
        Sentinel__V1__Deploy *body = d ? d : &minimal;
        if (!d) {
            minimal.deploy_id = (char *)deploy_id;
            minimal.run_id = (char *)run_id;
        }
        body->phase = phase;
        sn_envelope_t env;
        char id[SN_ID_LEN + 1];
        sn_envelope_stamp(&env, sn_ctx_source(ctx), "deploy.stuck", id);
        char *subject =
            d && d->project && *d->project
                ? sn_strdupf("%s/%s/%s", d->project, d->environment ? d->environment : "",
                             d->target ? d->target : "")
                : NULL;
        env.subject = subject;
        env.correlation_id = (char *)run_id;
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY;
        env.deploy = body;
        char age_s[32];
        snprintf(age_s, sizeof age_s, "%lld", (long long)age);
        sn_envelope_add_label(&env, "phase", s_phase_name(phase));
        sn_envelope_add_label(&env, "age_ms", age_s);
        char *lock_key = sn_strdupf("leader:%s", S_ROLE);
        sn_journal_result_t res;
        sn_rc_t rc =
            sn_journal_commit(sn_ctx_journal(ctx), NULL, lock_key, sn_ctx_fence(ctx), &env, &res);
        free(lock_key);
        sn_envelope_fini_labels(&env);
        free(subject);
        if (rc == SN_OK) {
            sn_warn(S_ROLE, "deploy stuck deploy=%s run=%s phase=%s age_ms=%lld", deploy_id, run_id,
                    s_phase_name(phase), (long long)age);
            sn_metrics_add(sn_ctx_metrics(ctx), "deploys_stuck", 1);
        } else {
            /* Not recorded: drop the marker so the next pass tries again. */
            sn_info(S_ROLE, "deploy.stuck not journaled deploy=%s rc=%s", deploy_id, sn_rc_str(rc));
            const char *dargv[] = {"DEL", mark};
            redisReply *dr = NULL;
            if (sn_redis_cmd(redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &dr, 2, dargv, NULL) ==
                SN_OK)
                freeReplyObject(dr);
        }
    }
    free(mark);
out:
    if (d)
        sentinel__v1__deploy__free_unpacked(d, NULL);
    freeReplyObject(r);
}

/* "STAGING", "DEPLOY_STAGING", "staging" or the enum number. */
static Sentinel__V1__DeployPhase s_phase_parse(const char *text)
{
    int64_t n = 0;
    if (sn_parse_i64(text, 0, 100, &n) == SN_OK) {
        const ProtobufCEnumValue *ev =
            protobuf_c_enum_descriptor_get_value(&sentinel__v1__deploy_phase__descriptor, (int)n);
        return ev ? (Sentinel__V1__DeployPhase)ev->value
                  : SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PHASE_UNSPECIFIED;
    }
    char up[48] = "DEPLOY_";
    size_t off = strncasecmp(text, "DEPLOY_", 7) == 0 ? 0 : 7;
    size_t i = 0;
    for (; text[i] && off + i < sizeof up - 1; i++)
        up[off + i] = (char)((text[i] >= 'a' && text[i] <= 'z') ? text[i] - 32 : text[i]);
    up[off + i] = '\0';
    const ProtobufCEnumValue *ev =
        protobuf_c_enum_descriptor_get_value_by_name(&sentinel__v1__deploy_phase__descriptor, up);
    return ev ? (Sentinel__V1__DeployPhase)ev->value
              : SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PHASE_UNSPECIFIED;
}

/* "STAGING" for DEPLOY_STAGING. */
static const char *s_phase_name(Sentinel__V1__DeployPhase phase)
{
    const ProtobufCEnumValue *ev =
        protobuf_c_enum_descriptor_get_value(&sentinel__v1__deploy_phase__descriptor, (int)phase);
    if (!ev)
        return "UNKNOWN";
    return strncmp(ev->name, "DEPLOY_", 7) == 0 ? ev->name + 7 : ev->name;
}
