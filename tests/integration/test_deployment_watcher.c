/* deployment-watcher through the real mesh: a private redis-server, the broker, a
 * sentinel-agent deployment-watcher process, a fake site (tests/fakes/fake_http.py)
 * serving a release identity and a fake DNS responder (tests/fakes/fake_dns.py).
 * verify.check passes only after N consecutive successes, names the reason of a failure
 * (old release identity, status, latency, DNS), fails an unreachable URL at its deadline
 * (not before, not much after), claims and completes a ledger job; the leader's duty
 * reports each stuck deploy once per phase. */
#include "sn_mesh.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sentinel/sn_http.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_leader.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_redis.h"

typedef struct {
    sn_mesh_t m;
    char *site;     /* http://127.0.0.1:<port> */
    char *resolver; /* 127.0.0.1:<port> of the fake DNS */
    pid_t site_pid, dns_pid;
    sn_http_t *http;
    sn_redis_t *redis; /* the test's own view of the mesh's Redis */
} s_world_t;

static bool s_file_exists(void *arg)
{
    struct stat st;
    return stat((const char *)arg, &st) == 0 && st.st_size > 0;
}

/* Starts a tests/fakes script on a free port; *addr receives "127.0.0.1:<port>". */
static pid_t s_fake(s_world_t *w, const char *script, const char *extra1, const char *extra2,
                    char **addr)
{
    int port = sn_test_free_port();
    char *path = sn_strdupf("%s/tests/fakes/%s", SN_SOURCE_DIR, script);
    char *ready = sn_strdupf("%s/%s.ready", w->m.dir, script);
    char *log = sn_strdupf("%s/%s.log", w->m.dir, script);
    char *port_s = sn_strdupf("%d", port);
    char *argv[] = {"/usr/bin/python3", path,           "--port", port_s, "--ready", ready,
                    (char *)extra1,     (char *)extra2, NULL};
    pid_t pid = sn_test_spawn(argv, log);
    bool ok = pid > 0 && sn_test_wait_for(s_file_exists, ready, 10000);
    *addr = sn_strdupf("127.0.0.1:%d", port);
    free(path);
    free(ready);
    free(log);
    free(port_s);
    return ok ? pid : -1;
}

static int s_setup(void **state)
{
    s_world_t *w = sn_calloc(1, sizeof *w);
    *state = w;
    if (!sn_mesh_start(&w->m, "watch", NULL))
        return -1;
    char *addr = NULL;
    w->site_pid = s_fake(w, "fake_http.py", NULL, NULL, &addr);
    w->site = sn_strdupf("http://%s", addr);
    free(addr);
    w->dns_pid = s_fake(w, "fake_dns.py", "--record", "site.test=127.0.0.1", &w->resolver);
    if (w->site_pid <= 0 || w->dns_pid <= 0)
        return -1;
    /* The stuck threshold is 1 s here (inherited by the agent). */
    setenv("SENTINEL_STUCK_AFTER_MS", "1000", 1);
    (void)sn_mesh_agent_bin(&w->m, "sentinel-agent", "deployment-watcher", "watch1");
    unsetenv("SENTINEL_STUCK_AFTER_MS");
    w->http = sn_http_new();
    sn_redis_opts_t ro = {.unix_path = w->m.redis.unix_path, .namespace_ = w->m.ns};
    w->redis = sn_redis_new(&ro);
    if (!w->http || !w->redis || !sn_mesh_wait_service(&w->m, "verify.check", 1, 15000))
        return -1;
    return 0;
}

static int s_teardown(void **state)
{
    s_world_t *w = *state;
    sn_http_destroy(&w->http);
    sn_redis_destroy(&w->redis);
    if (w->site_pid > 0)
        sn_test_stop(w->site_pid, SIGTERM, 5000);
    if (w->dns_pid > 0)
        sn_test_stop(w->dns_pid, SIGTERM, 5000);
    int bad = sn_mesh_stop(&w->m);
    free(w->site);
    free(w->resolver);
    free(w);
    return bad == 0 ? 0 : -1;
}

/* Sets the fake site's behaviour (after a reset). */
static void s_site(s_world_t *w, const char *query)
{
    char *url = sn_strdupf("%s/__control?reset=1&%s", w->site, query);
    sn_http_request_t req = {.url = url, .timeout_ms = 5000};
    sn_http_response_t resp;
    assert_int_equal(sn_http_perform(w->http, &req, &resp), SN_OK);
    assert_int_equal(resp.status, 200);
    sn_http_response_fini(&resp);
    free(url);
}

/* Requests counted by the fake site on its pages (not the identity). */
static int s_site_requests(s_world_t *w)
{
    char *url = sn_strdupf("%s/__stats", w->site);
    sn_http_request_t req = {.url = url, .timeout_ms = 5000};
    sn_http_response_t resp;
    assert_int_equal(sn_http_perform(w->http, &req, &resp), SN_OK);
    const char *p = strstr(resp.body, "\"requests\": ");
    assert_non_null(p);
    int n = (int)strtol(p + 12, NULL, 10);
    sn_http_response_fini(&resp);
    free(url);
    return n;
}

/* Calls verify.check with @vr (and label job_id if set). SN_OK with *out (free with
 * sn_envelope_free), or the rpc code with *nak. */
static sn_rc_t s_verify(s_world_t *w, Sentinel__V1__VerifyRequest *vr, const char *job_id,
                        int timeout_ms, sn_envelope_t **out, sn_nak_reason_t *nak)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &w->m.source, "verify.request", id);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_VERIFY_REQUEST;
    env.verify_request = vr;
    if (job_id)
        sn_envelope_add_label(&env, "job_id", job_id);
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&env, &len);
    sn_envelope_fini_labels(&env);
    uint8_t *reply = NULL;
    size_t reply_len = 0;
    *nak = SN_NAK_NONE;
    *out = NULL;
    sn_rc_t rc =
        sn_rpc_call(w->m.client, "verify.check", bytes, len, timeout_ms, &reply, &reply_len, nak);
    free(bytes);
    if (rc == SN_OK) {
        *out = sn_envelope_unpack(reply, reply_len, SN_MAX_FRAME_BYTES, NULL);
        assert_non_null(*out);
        assert_int_equal((*out)->body_case, SENTINEL__V1__ENVELOPE__BODY_VERIFY_RESULT);
    }
    free(reply);
    return rc;
}

static void s_request_init(s_world_t *w, Sentinel__V1__VerifyRequest *vr, char *url)
{
    sentinel__v1__verify_request__init(vr);
    vr->deploy_id = "dep-1";
    vr->url = url;
    vr->expect_status = 200;
    vr->consecutive = 3;
    vr->interval_ms = 100;
    vr->deadline_ms = 5000;
}

static void test_deployment_watcher_passes_after_consecutive_successes(void **state)
{
    s_world_t *w = *state;
    s_site(w, "deploy_id=dep-1&commit=abc123&body=Hello+from+Sentinel");
    char *url = sn_strdupf("%s/index.html", w->site);
    Sentinel__V1__VerifyRequest vr;
    s_request_init(w, &vr, url);
    vr.expect_deploy_id = "dep-1";
    vr.expect_commit = "abc123";
    vr.body_contains = "Hello from";
    vr.max_latency_ms = 2000;
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    assert_int_equal(s_verify(w, &vr, NULL, 15000, &out, &nak), SN_OK);
    Sentinel__V1__VerifyResult *r = out->verify_result;
    assert_true(r->ok);
    assert_int_equal(r->attempts, 3);
    assert_int_equal(r->last_status, 200);
    assert_non_null(strstr(r->reason, "3 consecutive"));
    assert_int_equal(s_site_requests(w), 3);
    sn_envelope_free(&out);

    /* The body check is a check: a page without the text never passes. */
    vr.body_contains = "Goodbye";
    vr.deadline_ms = 800;
    assert_int_equal(s_verify(w, &vr, NULL, 15000, &out, &nak), SN_OK);
    assert_false(out->verify_result->ok);
    assert_non_null(strstr(out->verify_result->reason, "body does not contain \"Goodbye\""));
    sn_envelope_free(&out);
    free(url);
}

static void test_deployment_watcher_old_release_identity_fails(void **state)
{
    s_world_t *w = *state;
    /* The old release answers 200 on every page: only its identity gives it away. */
    s_site(w, "deploy_id=dep-0&commit=old000");
    char *url = sn_strdupf("%s/", w->site);
    Sentinel__V1__VerifyRequest vr;
    s_request_init(w, &vr, url);
    vr.expect_deploy_id = "dep-1";
    vr.expect_commit = "abc123";
    vr.deadline_ms = 1000;
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    assert_int_equal(s_verify(w, &vr, NULL, 15000, &out, &nak), SN_OK);
    Sentinel__V1__VerifyResult *r = out->verify_result;
    assert_false(r->ok);
    assert_true(r->attempts >= 2);
    assert_non_null(strstr(r->reason, "release identity is deploy dep-0, expected dep-1"));
    assert_non_null(strstr(r->reason, "deadline passed after"));
    sn_envelope_free(&out);

    /* Right deploy id, wrong commit. */
    s_site(w, "deploy_id=dep-1&commit=old000");
    assert_int_equal(s_verify(w, &vr, NULL, 15000, &out, &nak), SN_OK);
    assert_false(out->verify_result->ok);
    assert_non_null(
        strstr(out->verify_result->reason, "release identity is commit old000, expected abc123"));
    sn_envelope_free(&out);

    /* No identity served at all. */
    s_site(w, "deploy_id=");
    assert_int_equal(s_verify(w, &vr, NULL, 15000, &out, &nak), SN_OK);
    assert_false(out->verify_result->ok);
    assert_non_null(strstr(out->verify_result->reason, "release identity unavailable: status 404"));
    sn_envelope_free(&out);
    free(url);
}

static void test_deployment_watcher_streak_resets_after_failures(void **state)
{
    s_world_t *w = *state;
    /* 503, 503, 503, then 200s: passes with the 5th attempt (two in a row), not before. */
    s_site(w, "fail_first=3&fail_status=503&deploy_id=dep-1&commit=abc123");
    char *url = sn_strdupf("%s/", w->site);
    Sentinel__V1__VerifyRequest vr;
    s_request_init(w, &vr, url);
    vr.consecutive = 2;
    vr.expect_deploy_id = "dep-1";
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    assert_int_equal(s_verify(w, &vr, NULL, 15000, &out, &nak), SN_OK);
    assert_true(out->verify_result->ok);
    assert_int_equal(out->verify_result->attempts, 5);
    assert_int_equal(s_site_requests(w), 5);
    sn_envelope_free(&out);

    /* A failure between successes resets the streak: only 503s until the deadline. */
    s_site(w, "status=503");
    vr.deadline_ms = 700;
    assert_int_equal(s_verify(w, &vr, NULL, 15000, &out, &nak), SN_OK);
    assert_false(out->verify_result->ok);
    assert_int_equal(out->verify_result->last_status, 503);
    assert_non_null(strstr(out->verify_result->reason, "status 503"));
    sn_envelope_free(&out);
    free(url);
}

static void test_deployment_watcher_latency_over_max_fails(void **state)
{
    s_world_t *w = *state;
    s_site(w, "delay_ms=400");
    char *url = sn_strdupf("%s/", w->site);
    Sentinel__V1__VerifyRequest vr;
    s_request_init(w, &vr, url);
    vr.max_latency_ms = 150;
    vr.consecutive = 1;
    vr.deadline_ms = 1200;
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    assert_int_equal(s_verify(w, &vr, NULL, 15000, &out, &nak), SN_OK);
    Sentinel__V1__VerifyResult *r = out->verify_result;
    assert_false(r->ok);
    assert_non_null(strstr(r->reason, "latency "));
    assert_non_null(strstr(r->reason, " ms > 150"));
    assert_true(r->last_latency_ms >= 350);
    sn_envelope_free(&out);
    free(url);
}

static void test_deployment_watcher_unreachable_fails_at_the_deadline(void **state)
{
    s_world_t *w = *state;
    char *url = sn_strdupf("http://127.0.0.1:%d/", sn_test_free_port());
    Sentinel__V1__VerifyRequest vr;
    s_request_init(w, &vr, url);
    vr.interval_ms = 300;
    vr.deadline_ms = 2000;
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    int64_t t0 = sn_mono_ms();
    assert_int_equal(s_verify(w, &vr, NULL, 15000, &out, &nak), SN_OK);
    int64_t took = sn_mono_ms() - t0;
    Sentinel__V1__VerifyResult *r = out->verify_result;
    assert_false(r->ok);
    assert_int_equal(r->last_status, 0);
    assert_true(r->attempts >= 5);
    assert_non_null(strstr(r->reason, "request failed"));
    assert_non_null(strstr(r->reason, "deadline passed after"));
    assert_true(took >= 1950);
    assert_true(took < 2800);
    sn_envelope_free(&out);
    free(url);
}

/* fail_after: a release that keeps failing is answered at once, long before the deadline,
 * and a success in between resets the count. */
static void test_deployment_watcher_fail_after_answers_early(void **state)
{
    s_world_t *w = *state;
    char *url = sn_strdupf("http://127.0.0.1:%d/", sn_test_free_port());
    Sentinel__V1__VerifyRequest vr;
    s_request_init(w, &vr, url);
    vr.interval_ms = 100;
    vr.deadline_ms = 10000;
    vr.fail_after = 3;
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    int64_t t0 = sn_mono_ms();
    assert_int_equal(s_verify(w, &vr, NULL, 15000, &out, &nak), SN_OK);
    int64_t took = sn_mono_ms() - t0;
    Sentinel__V1__VerifyResult *r = out->verify_result;
    assert_false(r->ok);
    assert_int_equal(r->attempts, 3);
    assert_non_null(strstr(r->reason, "3 failed attempts in a row"));
    assert_true(took < 3000); /* not the 10 s deadline */
    sn_envelope_free(&out);
    free(url);
}

static void test_deployment_watcher_dns_check(void **state)
{
    s_world_t *w = *state;
    s_site(w, "status=200");
    char *url = sn_strdupf("%s/", w->site);
    Sentinel__V1__VerifyRequest vr;
    s_request_init(w, &vr, url);
    vr.consecutive = 1;
    vr.deadline_ms = 1500;
    vr.dns_name = "site.test";
    vr.dns_expect = "127.0.0.1";
    char *resolvers[] = {w->resolver};
    vr.dns_resolvers = resolvers;
    vr.n_dns_resolvers = 1;
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    assert_int_equal(s_verify(w, &vr, NULL, 15000, &out, &nak), SN_OK);
    assert_true(out->verify_result->ok);
    sn_envelope_free(&out);

    vr.dns_expect = "10.9.9.9";
    assert_int_equal(s_verify(w, &vr, NULL, 15000, &out, &nak), SN_OK);
    assert_false(out->verify_result->ok);
    assert_non_null(strstr(out->verify_result->reason,
                           "dns site.test resolves to 127.0.0.1, expected 10.9.9.9"));
    sn_envelope_free(&out);

    vr.dns_name = "missing.test";
    vr.dns_expect = NULL;
    assert_int_equal(s_verify(w, &vr, NULL, 15000, &out, &nak), SN_OK);
    assert_false(out->verify_result->ok);
    assert_non_null(strstr(out->verify_result->reason, "dns missing.test: "));
    sn_envelope_free(&out);
    free(url);
}

static void test_deployment_watcher_bad_requests_are_refused(void **state)
{
    s_world_t *w = *state;
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    /* Not a verify_request at all. */
    assert_int_equal(sn_mesh_call_note(&w->m, "verify.check", "hello", 0, 5000, &out, &nak),
                     SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    Sentinel__V1__VerifyRequest vr;
    const char *bad_urls[] = {"ftp://127.0.0.1/", "not a url", ""};
    for (size_t i = 0; i < SN_ARRAY_LEN(bad_urls); i++) {
        s_request_init(w, &vr, (char *)bad_urls[i]);
        assert_int_equal(s_verify(w, &vr, NULL, 5000, &out, &nak), SN_DECLINED);
        assert_int_equal(nak, SN_NAK_INVALID);
    }
    char *url = sn_strdupf("%s/", w->site);
    s_request_init(w, &vr, url);
    vr.url = NULL;
    assert_int_equal(s_verify(w, &vr, NULL, 5000, &out, &nak), SN_DECLINED);
    s_request_init(w, &vr, url);
    char *resolvers[] = {"localhost:53"};
    vr.dns_name = "site.test";
    vr.dns_resolvers = resolvers;
    vr.n_dns_resolvers = 1;
    assert_int_equal(s_verify(w, &vr, NULL, 5000, &out, &nak), SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    s_request_init(w, &vr, url);
    assert_int_equal(s_verify(w, &vr, "bad job id!", 5000, &out, &nak), SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    /* The agent is still serving. */
    s_site(w, "status=200");
    vr.consecutive = 1;
    assert_int_equal(s_verify(w, &vr, NULL, 5000, &out, &nak), SN_OK);
    assert_true(out->verify_result->ok);
    sn_envelope_free(&out);
    free(url);
}

static void test_deployment_watcher_claims_and_completes_ledger_job(void **state)
{
    s_world_t *w = *state;
    /* The test plays the owning leader: it holds the lock of "test-owner" and creates
     * the job with its fence. */
    sn_leader_t *leader = sn_leader_new(w->redis, "test-owner", "t1", 10000);
    uint64_t fence = 0;
    assert_int_equal(sn_leader_try(leader, &fence), SN_OK);
    sn_source_t src;
    sn_source_init(&src, "test-owner", "t1");
    sn_ledger_t *ledger = sn_ledger_new(w->redis, &src);
    Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
    spec.job_id = "verify-job-1";
    spec.kind = "verify.check";
    spec.service = "verify.check";
    spec.lease_ms = 5000;
    assert_int_equal(sn_ledger_create(ledger, fence, "test-owner", &spec), SN_OK);

    s_site(w, "deploy_id=dep-1&commit=abc123");
    char *url = sn_strdupf("%s/", w->site);
    Sentinel__V1__VerifyRequest vr;
    s_request_init(w, &vr, url);
    vr.consecutive = 2;
    vr.expect_deploy_id = "dep-1";
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    assert_int_equal(s_verify(w, &vr, "verify-job-1", 15000, &out, &nak), SN_OK);
    assert_true(out->verify_result->ok);
    sn_envelope_free(&out);

    sn_ledger_job_t job;
    assert_int_equal(sn_ledger_get(ledger, "verify-job-1", &job), SN_OK);
    assert_int_equal(job.state, SN_JOB_DONE);
    assert_true(job.ok);
    assert_string_equal(job.owner, "watch1");
    Sentinel__V1__VerifyResult *stored =
        sentinel__v1__verify_result__unpack(NULL, job.result_len, job.result);
    assert_non_null(stored);
    assert_true(stored->ok);
    assert_int_equal(stored->attempts, 2);
    sentinel__v1__verify_result__free_unpacked(stored, NULL);
    sn_ledger_job_fini(&job);

    /* A finished job is not verified again: the claim is refused. */
    assert_int_equal(s_verify(w, &vr, "verify-job-1", 15000, &out, &nak), SN_DECLINED);
    assert_int_equal(nak, SN_NAK_FORBIDDEN);
    /* An unknown job: invalid. */
    assert_int_equal(s_verify(w, &vr, "verify-job-unknown", 15000, &out, &nak), SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    free(url);
    sn_ledger_destroy(&ledger);
    assert_int_equal(sn_leader_release(leader), SN_OK);
    sn_leader_destroy(&leader);
}

/* ---- the leader's duty ---------------------------------------------------------------------- */

typedef struct {
    s_world_t *w;
    const char *deploy_id;
    int want;
} s_stuck_wait_t;

/* deploy.stuck events in the journal for @deploy_id. */
static int s_stuck_events(s_world_t *w, const char *deploy_id, char *phase_out, size_t phase_len)
{
    size_t count = 0;
    sn_envelope_t **envs = sn_mesh_journal(&w->m, w->redis, &count);
    int n = 0;
    for (size_t i = 0; i < count; i++) {
        sn_envelope_t *env = envs[i];
        if (strcmp(env->type, "deploy.stuck") == 0 &&
            env->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY &&
            strcmp(env->deploy->deploy_id, deploy_id) == 0) {
            n++;
            if (phase_out)
                sn_strlcpy(phase_out, sn_envelope_label(env, "phase"), phase_len);
            assert_true(env->fence > 0);
        }
    }
    sn_mesh_envelopes_free(envs, count);
    return n;
}

static bool s_stuck_reached(void *arg)
{
    s_stuck_wait_t *sw = arg;
    return s_stuck_events(sw->w, sw->deploy_id, NULL, 0) >= sw->want;
}

static void s_hset_deploy(s_world_t *w, const char *id, const char *phase, int64_t updated_ms,
                          bool with_pb)
{
    char *key = sn_strdupf("%sdeploy:%s", w->m.ns, id);
    char updated[32];
    snprintf(updated, sizeof updated, "%lld", (long long)updated_ms);
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    d.deploy_id = (char *)id;
    d.run_id = "run-1";
    d.project = "hello";
    d.environment = "staging";
    d.target = "web";
    uint8_t buf[256];
    size_t len = sentinel__v1__deploy__pack(&d, buf);
    const char *argv[] = {"HSET",  key,          "phase", phase, "run_id",
                          "run-1", "updated_ms", updated, "pb",  (const char *)buf};
    size_t lens[] = {4, strlen(key), 5, strlen(phase), 6, 5, 10, strlen(updated), 2, len};
    redisReply *r = NULL;
    assert_int_equal(sn_redis_cmd(w->redis, SN_REDIS_MAIN, 2000, &r, with_pb ? 10 : 8, argv, lens),
                     SN_OK);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    free(key);
}

static void test_deployment_watcher_reports_stuck_deploys_once(void **state)
{
    s_world_t *w = *state;
    int64_t now = sn_wall_ms();
    s_hset_deploy(w, "dep-old", "STAGING", now - 5000, true);      /* stuck */
    s_hset_deploy(w, "dep-fresh", "DEPLOY_PROMOTING", now, false); /* stuck in ~1 s */
    s_hset_deploy(w, "dep-live", "LIVE", now - 60000, true);       /* done: never */
    s_stuck_wait_t sw = {w, "dep-old", 1};
    assert_true(sn_test_wait_for(s_stuck_reached, &sw, 10000));
    char phase[32] = "";
    assert_int_equal(s_stuck_events(w, "dep-old", phase, sizeof phase), 1);
    assert_string_equal(phase, "STAGING");
    /* A later pass reports the fresh one once it is old enough, and nothing again for the
     * first: once per deploy per phase. */
    s_stuck_wait_t sw2 = {w, "dep-fresh", 1};
    assert_true(sn_test_wait_for(s_stuck_reached, &sw2, 10000));
    assert_int_equal(s_stuck_events(w, "dep-fresh", phase, sizeof phase), 1);
    assert_string_equal(phase, "PROMOTING");
    assert_int_equal(s_stuck_events(w, "dep-old", NULL, 0), 1);
    assert_int_equal(s_stuck_events(w, "dep-live", NULL, 0), 0);
    /* A new phase of the same deploy is a new report. */
    s_hset_deploy(w, "dep-old", "ROLLING_BACK", sn_wall_ms() - 5000, true);
    s_stuck_wait_t sw3 = {w, "dep-old", 2};
    assert_true(sn_test_wait_for(s_stuck_reached, &sw3, 10000));
    /* By now several passes ran: still exactly one report per deploy and phase. */
    assert_int_equal(s_stuck_events(w, "dep-old", phase, sizeof phase), 2);
    assert_string_equal(phase, "ROLLING_BACK");
    assert_int_equal(s_stuck_events(w, "dep-fresh", NULL, 0), 1);
    assert_int_equal(s_stuck_events(w, "dep-live", NULL, 0), 0);
    assert_true(sn_mesh_wait_log(&w->m, "watch1", "deploy stuck deploy=dep-old", 1000));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deployment_watcher_passes_after_consecutive_successes),
        cmocka_unit_test(test_deployment_watcher_fail_after_answers_early),
        cmocka_unit_test(test_deployment_watcher_old_release_identity_fails),
        cmocka_unit_test(test_deployment_watcher_streak_resets_after_failures),
        cmocka_unit_test(test_deployment_watcher_latency_over_max_fails),
        cmocka_unit_test(test_deployment_watcher_unreachable_fails_at_the_deadline),
        cmocka_unit_test(test_deployment_watcher_dns_check),
        cmocka_unit_test(test_deployment_watcher_bad_requests_are_refused),
        cmocka_unit_test(test_deployment_watcher_claims_and_completes_ledger_job),
        cmocka_unit_test(test_deployment_watcher_reports_stuck_deploys_once),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
