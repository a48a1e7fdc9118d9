/* railway-bridge through the real mesh: a private redis-server, the broker, sentinel-agent
 * railway-bridge processes and the Railway fake (tests/fakes/fake_railway.py), which
 * enforces the GraphQL contract, counts deployments per SENTINEL_DEPLOY_ID variable and
 * serves the active deployment's release identity at its service URL.
 *
 * Shown: a full deploy (stage = redeploy with the SENTINEL_* variables, followed to
 * SUCCESS; the URL serves the release identity and deployment-watcher's verify.check
 * passes there for that deploy id only; promote confirms without deploying; a retried
 * stage deploys nothing) with both token forms, a bad token refused (permanent,
 * "Not Authorized"), a failed deploy (FAILED, permanent; the old release keeps serving),
 * rollback to the previous deployment (the old identity is served again; a retry rolls
 * back nothing more), 429 with Retry-After waited out, a 5xx burst retried (and a longer
 * one failing transient without any deployment), a hang cut by the request timeout, an
 * HTML page with 200 refused, bad requests, and a kill -9 of the worker while it follows
 * its deployment: the re-dispatched ledger job resumes that deployment (the fake counts
 * one deployment for the deploy id). */
#include "sn_mesh.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "sentinel/sn_crypto.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_leader.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_redis.h"

#define SERVICE "deploy.railway"
#define TOKEN "rw-account-secret-1"
#define PTOKEN "rw-project-secret-2"
#define S_TARGET_COMMON                                                                            \
    "    type: railway\n"                                                                          \
    "    api_base: %s/graphql/v2\n"                                                                \
    "    project: proj-1\n"                                                                        \
    "    service_id: svc-1\n"                                                                      \
    "    environment_id: env-1\n"                                                                  \
    "    request_timeout_ms: 1000\n"                                                               \
    "    max_attempts: 4\n"                                                                        \
    "    poll_interval_ms: 50\n"

typedef struct {
    sn_mesh_t m;
    char *fake_dir;
    char *base; /* http://127.0.0.1:<port> */
    pid_t fake_pid;
    sn_http_t *http;
    size_t worker;
} s_world_t;

static s_world_t W;

static bool s_file_exists(void *arg)
{
    struct stat st;
    return stat((const char *)arg, &st) == 0 && st.st_size > 0;
}

/* ---- the fake ------------------------------------------------------------------------------ */

static char *s_get(const char *path_query, long *status)
{
    char *url = sn_strdupf("%s%s", W.base, path_query);
    sn_http_request_t req = {.url = url, .timeout_ms = 5000};
    sn_http_response_t resp;
    assert_int_equal(sn_http_perform(W.http, &req, &resp), SN_OK);
    char *body = sn_strdup(resp.body);
    if (status)
        *status = resp.status;
    sn_http_response_fini(&resp);
    free(url);
    return body;
}

/* Resets the fake and sets its behaviour. */
static void s_fake(const char *query)
{
    char *pq = sn_strdupf("/__control?reset=1&deploy_ms=200&%s", query);
    long status = 0;
    free(s_get(pq, &status));
    assert_int_equal(status, 200);
    free(pq);
}

/* Changes behaviour without a reset. */
static void s_fake_set(const char *query)
{
    char *pq = sn_strdupf("/__control?%s", query);
    free(s_get(pq, NULL));
    free(pq);
}

static json_t *s_stats(void)
{
    char *body = s_get("/__stats", NULL);
    json_t *j = json_loads(body, 0, NULL);
    free(body);
    assert_non_null(j);
    return j;
}

static long s_stat(const char *key)
{
    json_t *j = s_stats();
    long v = (long)json_integer_value(json_object_get(j, key));
    json_decref(j);
    return v;
}

static long s_deployments_of(const char *deploy_id)
{
    json_t *j = s_stats();
    long v =
        (long)json_integer_value(json_object_get(json_object_get(j, "by_deploy_id"), deploy_id));
    json_decref(j);
    return v;
}

/* The deployId the service URL serves in its release identity ("" on 404). */
static char *s_served_identity(const char *url, char *commit, size_t commit_len)
{
    char *u = sn_strdupf("%s/.well-known/sentinel-release.json", url);
    sn_http_request_t req = {.url = u, .timeout_ms = 5000};
    sn_http_response_t resp;
    assert_int_equal(sn_http_perform(W.http, &req, &resp), SN_OK);
    char *out = sn_strdup("");
    if (resp.status == 200) {
        json_t *j = json_loads(resp.body, 0, NULL);
        assert_non_null(j);
        free(out);
        out = sn_strdup(json_string_value(json_object_get(j, "deployId")));
        if (commit)
            snprintf(commit, commit_len, "%s", json_string_value(json_object_get(j, "commit")));
        json_decref(j);
    }
    sn_http_response_fini(&resp);
    free(u);
    return out;
}

/* ---- calls --------------------------------------------------------------------------------- */

static sn_rc_t s_call(const char *op, const char *deploy_id, const char *target, const char *commit,
                      const char *to, const char *job_id, int timeout_ms, sn_envelope_t **reply)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &W.m.source, "deploy.request", id);
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    d.deploy_id = (char *)deploy_id;
    d.run_id = "run-1";
    d.project = "hello";
    d.environment = "production";
    d.target = (char *)target;
    Sentinel__V1__DeployRequest req = SENTINEL__V1__DEPLOY_REQUEST__INIT;
    req.op = (char *)op;
    req.deploy = &d;
    req.commit = (char *)(commit ? commit : "");
    req.to_release_id = (char *)(to ? to : "");
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST;
    env.deploy_request = &req;
    if (job_id)
        sn_envelope_add_label(&env, "job_id", job_id);
    sn_nak_reason_t nak = SN_NAK_NONE;
    sn_rc_t rc = sn_mesh_call(&W.m, SERVICE, &env, timeout_ms, reply, &nak);
    sn_envelope_fini_labels(&env);
    return rc;
}

/* Calls and checks ok == @ok (and the reason contains @reason_part). Caller frees. */
static sn_envelope_t *s_expect(bool ok, const char *reason_part, const char *op,
                               const char *deploy_id, const char *target, const char *commit,
                               const char *to)
{
    sn_envelope_t *r = NULL;
    assert_int_equal(s_call(op, deploy_id, target, commit, to, NULL, 20000, &r), SN_OK);
    assert_non_null(r);
    assert_int_equal(r->body_case, SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT);
    const Sentinel__V1__DeployResult *res = r->deploy_result;
    if (res->ok != ok || (reason_part && !strstr(res->reason, reason_part)))
        print_error("%s %s/%s: ok=%d reason=%s\n", op, target, deploy_id, res->ok, res->reason);
    assert_int_equal(res->ok, ok);
    if (reason_part)
        assert_non_null(strstr(res->reason, reason_part));
    assert_non_null(res->deploy);
    /* Never a token in an answer. */
    assert_null(strstr(res->reason, TOKEN));
    assert_null(strstr(res->reason, PTOKEN));
    return r;
}

/* deployment-watcher's verify.check of @url against the release identity it serves. */
static bool s_verified(const char *url, const char *deploy_id, const char *commit, char *reason,
                       size_t reason_len)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &W.m.source, "verify.request", id);
    Sentinel__V1__VerifyRequest vr = SENTINEL__V1__VERIFY_REQUEST__INIT;
    vr.deploy_id = (char *)deploy_id;
    vr.url = sn_strdupf("%s/", url);
    vr.expect_status = 200;
    vr.expect_deploy_id = (char *)deploy_id;
    vr.expect_commit = (char *)commit;
    vr.consecutive = 2;
    vr.interval_ms = 50;
    vr.deadline_ms = 3000;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_VERIFY_REQUEST;
    env.verify_request = &vr;
    sn_envelope_t *reply = NULL;
    sn_rc_t rc = sn_mesh_call(&W.m, "verify.check", &env, 10000, &reply, NULL);
    free(vr.url);
    bool ok = rc == SN_OK && reply &&
              reply->body_case == SENTINEL__V1__ENVELOPE__BODY_VERIFY_RESULT &&
              reply->verify_result->ok;
    snprintf(reason, reason_len, "%s",
             reply && reply->body_case == SENTINEL__V1__ENVELOPE__BODY_VERIFY_RESULT
                 ? reply->verify_result->reason
                 : "no answer");
    sn_envelope_free(&reply);
    return ok;
}

/* ---- set-up -------------------------------------------------------------------------------- */

static void s_spawn_worker(void)
{
    char instance[64];
    snprintf(instance, sizeof instance, "railway-%zu", W.m.agent_count + 1);
    W.worker = sn_mesh_agent_bin(&W.m, "sentinel-agent", "railway-bridge", instance);
}

static int s_setup(void **state)
{
    memset(&W, 0, sizeof W);
    *state = &W;
    W.fake_dir = sn_test_tmpdir("railway-fake");
    int port = sn_test_free_port();
    W.base = sn_strdupf("http://127.0.0.1:%d", port);
    char *script = sn_strdupf("%s/tests/fakes/fake_railway.py", SN_SOURCE_DIR);
    char *ready = sn_strdupf("%s/ready", W.fake_dir);
    char *log = sn_strdupf("%s/fake.log", W.fake_dir);
    char *port_s = sn_strdupf("%d", port);
    char *argv[] = {"/usr/bin/python3", script, "--port",          port_s, "--ready", ready,
                    "--token",          TOKEN,  "--project-token", PTOKEN, NULL};
    W.fake_pid = sn_test_spawn(argv, log);
    bool ok = W.fake_pid > 0 && sn_test_wait_for(s_file_exists, ready, 10000);
    free(script);
    free(ready);
    free(log);
    free(port_s);
    if (!ok)
        return -1;
    char *c1 = sn_strdupf(S_TARGET_COMMON, W.base);
    char *yaml = sn_strdupf("targets:\n"
                            "  - name: rw\n"
                            "    token: " TOKEN "\n%s"
                            "  - name: rwp\n"
                            "    token: " PTOKEN "\n"
                            "    token_kind: project\n%s"
                            "  - name: rwbad\n"
                            "    token: wrong-token\n%s"
                            "  - name: rwnoproj\n"
                            "    type: railway\n"
                            "    token: " TOKEN "\n"
                            "    api_base: %s/graphql/v2\n"
                            "    service_id: svc-1\n"
                            "    environment_id: env-1\n",
                            c1, c1, c1, W.base);
    free(c1);
    ok = sn_mesh_start(&W.m, "railway", yaml);
    free(yaml);
    if (!ok)
        return -1;
    W.http = sn_http_new();
    (void)sn_mesh_agent_bin(&W.m, "sentinel-agent", "deployment-watcher", "watch1");
    s_spawn_worker();
    return W.http && sn_mesh_wait_service(&W.m, SERVICE, 1, 15000) &&
                   sn_mesh_wait_service(&W.m, "verify.check", 1, 15000)
               ? 0
               : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    sn_http_destroy(&W.http);
    int bad = 0;
    if (W.fake_pid > 0 && sn_test_stop(W.fake_pid, SIGTERM, 5000) != 0)
        bad++;
    /* No token in any log line of the workers. */
    for (size_t i = 0; i < W.m.agent_count; i++) {
        if (sn_test_count_in_file(W.m.agents[i].log, TOKEN) != 0 ||
            sn_test_count_in_file(W.m.agents[i].log, PTOKEN) != 0) {
            print_error("a token leaked into %s\n", W.m.agents[i].log);
            bad++;
        }
    }
    bad += sn_mesh_stop(&W.m);
    sn_test_rmdir(W.fake_dir);
    free(W.fake_dir);
    free(W.base);
    return bad == 0 ? 0 : -1;
}

/* Deletes the circuit breaker of TOKEN (an operator's reset; the tests' shortcut past the
 * cool-down). */
static void s_breaker_reset(void)
{
    uint8_t digest[SN_SHA256_LEN];
    char hex[2 * SN_SHA256_LEN + 1];
    assert_int_equal(sn_sha256(TOKEN, strlen(TOKEN), digest), SN_OK);
    sn_hex_encode(digest, sizeof digest, hex);
    hex[16] = '\0';
    char *args = sn_strdupf("DEL %sprovider:breaker:railway:%s", W.m.ns, hex);
    char *out = sn_test_redis_cli(&W.m.redis, args);
    assert_non_null(out);
    assert_string_equal(out, "1");
    free(out);
    free(args);
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_railway_bridge_full_deploy(void **state)
{
    (void)state;
    s_fake("");
    sn_envelope_t *r = s_expect(true, NULL, "stage", "d1", "rw", "c0ffee1", NULL);
    const Sentinel__V1__Deploy *d = r->deploy_result->deploy;
    assert_int_equal(d->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED);
    assert_string_equal(d->provider, "railway");
    assert_true(strlen(d->provider_deployment_id) > 0);
    assert_string_equal(d->release_id, d->provider_deployment_id);
    assert_string_equal(d->live_url, W.base);
    assert_string_equal(d->preview_url, W.base);
    assert_string_equal(d->previous_release_id, ""); /* nothing was live */
    char *dep1 = sn_strdup(d->provider_deployment_id);
    sn_envelope_free(&r);
    /* The service serves the release identity from the variables the bridge set. */
    char commit[64] = "";
    char *served = s_served_identity(W.base, commit, sizeof commit);
    assert_string_equal(served, "d1");
    assert_string_equal(commit, "c0ffee1");
    free(served);
    /* deployment-watcher verifies it at the deploy's URL; another deploy id never passes. */
    char why[256];
    bool is_verified = s_verified(W.base, "d1", "c0ffee1", why, sizeof why);
    if (!is_verified)
        print_error("verify: %s\n", why);
    assert_true(is_verified);
    assert_false(s_verified(W.base, "d0", "c0ffee1", why, sizeof why));
    assert_int_equal(s_deployments_of("d1"), 1);
    /* The deployment id was recorded under the deploy id. */
    char *rec = sn_mesh_hget(&W.m, "provider:deploy:d1", "stage.deployment_id");
    assert_string_equal(rec, dep1);
    free(rec);
    /* Promote confirms: live, no new deployment. */
    r = s_expect(true, NULL, "promote", "d1", "rw", "c0ffee1", NULL);
    d = r->deploy_result->deploy;
    assert_int_equal(d->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE);
    assert_string_equal(d->provider_deployment_id, dep1);
    assert_string_equal(d->live_url, W.base);
    sn_envelope_free(&r);
    /* A retried stage (a redelivery) follows the recorded deployment. */
    r = s_expect(true, NULL, "stage", "d1", "rw", "c0ffee1", NULL);
    assert_string_equal(r->deploy_result->deploy->provider_deployment_id, dep1);
    sn_envelope_free(&r);
    assert_int_equal(s_deployments_of("d1"), 1);
    assert_int_equal(s_stat("deployments"), 1);
    /* A second release: previous_release_id names the first. */
    r = s_expect(true, NULL, "stage", "d2", "rw", "c0ffee2", NULL);
    assert_string_equal(r->deploy_result->deploy->previous_release_id, dep1);
    sn_envelope_free(&r);
    served = s_served_identity(W.base, NULL, 0);
    assert_string_equal(served, "d2");
    free(served);
    json_t *j = s_stats();
    assert_true(json_integer_value(json_object_get(json_object_get(j, "auth"), "bearer")) > 0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "auth"), "project")), 0);
    assert_int_equal(json_integer_value(json_object_get(j, "rejected")), 0);
    json_decref(j);
    free(dep1);
}

static void test_railway_bridge_token_forms(void **state)
{
    (void)state;
    s_fake("");
    sn_envelope_t *r = s_expect(true, NULL, "stage", "p1", "rwp", "c1", NULL);
    sn_envelope_free(&r);
    json_t *j = s_stats();
    assert_true(json_integer_value(json_object_get(json_object_get(j, "auth"), "project")) > 0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "auth"), "bearer")), 0);
    json_decref(j);
    assert_int_equal(s_deployments_of("p1"), 1);
    /* A wrong token: GraphQL errors with HTTP 200 are a permanent failure. */
    r = s_expect(false, "Not Authorized", "stage", "b1", "rwbad", "c1", NULL);
    assert_false(r->deploy_result->is_transient);
    assert_int_equal(r->deploy_result->deploy->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED);
    sn_envelope_free(&r);
    assert_int_equal(s_deployments_of("b1"), 0);
}

static void test_railway_bridge_failed_deploy(void **state)
{
    (void)state;
    s_fake("");
    sn_envelope_t *r = s_expect(true, NULL, "stage", "f0", "rw", "c0", NULL);
    sn_envelope_free(&r);
    s_fake_set("fail_next=1");
    r = s_expect(false, "ended FAILED", "stage", "f1", "rw", "c1", NULL);
    assert_false(r->deploy_result->is_transient);
    sn_envelope_free(&r);
    assert_int_equal(s_deployments_of("f1"), 1);
    /* The old release keeps serving. */
    char *served = s_served_identity(W.base, NULL, 0);
    assert_string_equal(served, "f0");
    free(served);
    /* Promote of a failed stage fails too, without deploying. */
    r = s_expect(false, "ended FAILED", "promote", "f1", "rw", "c1", NULL);
    sn_envelope_free(&r);
    /* Rolling the failed deploy back: what was live before still is; nothing to do. */
    r = s_expect(true, NULL, "rollback", "f1", "rw", NULL, NULL);
    assert_int_equal(r->deploy_result->deploy->phase,
                     SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("rollbacks"), 0);
    assert_int_equal(s_stat("deployments"), 2);
}

static void test_railway_bridge_rollback(void **state)
{
    (void)state;
    s_fake("");
    sn_envelope_t *r = s_expect(true, NULL, "stage", "r1", "rw", "c1", NULL);
    char *dep1 = sn_strdup(r->deploy_result->deploy->provider_deployment_id);
    sn_envelope_free(&r);
    r = s_expect(true, NULL, "stage", "r2", "rw", "c2", NULL);
    char *dep2 = sn_strdup(r->deploy_result->deploy->provider_deployment_id);
    sn_envelope_free(&r);
    char *served = s_served_identity(W.base, NULL, 0);
    assert_string_equal(served, "r2");
    free(served);
    r = s_expect(true, NULL, "rollback", "r2", "rw", NULL, NULL);
    const Sentinel__V1__Deploy *d = r->deploy_result->deploy;
    assert_int_equal(d->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK);
    assert_string_equal(d->release_id, dep1);
    assert_true(strlen(d->provider_deployment_id) > 0);
    assert_string_not_equal(d->provider_deployment_id, dep1);
    assert_string_not_equal(d->provider_deployment_id, dep2);
    char *rb = sn_strdup(d->provider_deployment_id);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("rollbacks"), 1);
    /* The first release's identity is served again. */
    char commit[64] = "";
    served = s_served_identity(W.base, commit, sizeof commit);
    assert_string_equal(served, "r1");
    assert_string_equal(commit, "c1");
    free(served);
    /* A retried rollback rolls back nothing more. */
    r = s_expect(true, NULL, "rollback", "r2", "rw", NULL, NULL);
    assert_string_equal(r->deploy_result->deploy->provider_deployment_id, rb);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("rollbacks"), 1);
    /* Forward again by to_release_id (no deploy id). */
    r = s_expect(true, NULL, "rollback", "", "rw", NULL, dep2);
    assert_string_equal(r->deploy_result->deploy->release_id, dep2);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("rollbacks"), 2);
    served = s_served_identity(W.base, NULL, 0);
    assert_string_equal(served, "r2");
    free(served);
    /* Rollback of a deploy that never reached Railway: nothing to undo. */
    r = s_expect(true, NULL, "rollback", "never", "rw", NULL, NULL);
    sn_envelope_free(&r);
    /* An unknown deployment: the GraphQL error is the reason. */
    r = s_expect(false, "not found", "rollback", "", "rw", NULL, "dep-9999");
    sn_envelope_free(&r);
    assert_int_equal(s_stat("rollbacks"), 2);
    free(rb);
    free(dep1);
    free(dep2);
}

static void test_railway_bridge_rate_limit_5xx_hang_html(void **state)
{
    (void)state;
    /* 429 with Retry-After: 1 -> waited out exactly, then the deploy goes through. */
    s_fake("rate_limit=1&retry_after=1");
    int64_t t0 = sn_mono_ms();
    sn_envelope_t *r = s_expect(true, NULL, "stage", "q1", "rw", "c1", NULL);
    sn_envelope_free(&r);
    assert_true(sn_mono_ms() - t0 >= 1000);
    assert_int_equal(s_deployments_of("q1"), 1);
    /* A 5xx burst on the queries: retried. */
    s_fake("fail_5xx=2");
    r = s_expect(true, NULL, "stage", "q2", "rw", "c2", NULL);
    sn_envelope_free(&r);
    assert_int_equal(s_deployments_of("q2"), 1);
    /* A longer burst spends the op's attempt budget: transient, nothing deployed. */
    s_fake("fail_5xx=50");
    r = s_expect(false, "HTTP 503", "stage", "q3", "rw", "c3", NULL);
    assert_true(r->deploy_result->is_transient);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("deployments"), 0);
    assert_int_equal(s_stat("requests"), 4); /* max_attempts */
    /* The fifth consecutive failure opens the token's circuit (the retry after it already
     * fails fast), and then every call fails fast without a request. */
    r = s_expect(false, "circuit open", "stage", "q3", "rw", "c3", NULL);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("requests"), 5);
    r = s_expect(false, "circuit open", "stage", "q3", "rw", "c3", NULL);
    assert_true(r->deploy_result->is_transient);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("requests"), 5);
    s_breaker_reset(); /* instead of waiting out the 30 s cool-down */
    /* A hang: the request timeout (1 s) cuts it, the query is retried. */
    s_fake("hang_ms=3000&hang_count=1");
    t0 = sn_mono_ms();
    r = s_expect(true, NULL, "stage", "q4", "rw", "c4", NULL);
    sn_envelope_free(&r);
    int64_t elapsed = sn_mono_ms() - t0;
    assert_true(elapsed >= 1000 && elapsed < 8000);
    assert_int_equal(s_deployments_of("q4"), 1);
    /* HTML with 200: refused, retried. */
    s_fake("html=1");
    r = s_expect(true, NULL, "stage", "q5", "rw", "c5", NULL);
    sn_envelope_free(&r);
    assert_int_equal(s_deployments_of("q5"), 1);
    s_fake("html=50");
    r = s_expect(false, "not JSON", "stage", "q6", "rw", "c6", NULL);
    assert_true(r->deploy_result->is_transient);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("deployments"), 0);
    /* The breaker counted those failures; one good deploy closes it again. */
    s_fake("");
    r = s_expect(true, NULL, "stage", "q7", "rw", "c7", NULL);
    sn_envelope_free(&r);
}

static void test_railway_bridge_bad_requests(void **state)
{
    (void)state;
    s_fake("");
    sn_envelope_t *r = s_expect(false, "unknown op", "deploy", "x1", "rw", NULL, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "invalid deploy id", "stage", "../x", "rw", NULL, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "unknown railway target", "stage", "x1", "nope", NULL, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "needs \"project\"", "stage", "x1", "rwnoproj", NULL, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "was not staged", "promote", "x2", "rw", NULL, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "invalid to_release_id", "rollback", "x2", "rw", NULL, "a b");
    sn_envelope_free(&r);
    assert_int_equal(s_stat("deployments"), 0);
    /* A body that is not a deploy request: NAK. */
    sn_envelope_t *reply = NULL;
    sn_nak_reason_t nak = SN_NAK_NONE;
    assert_int_equal(sn_mesh_call_note(&W.m, SERVICE, "hi", 1, 5000, &reply, &nak), SN_DECLINED);
    assert_null(reply);
}

static bool s_recorded(void *arg)
{
    char *v = sn_mesh_hget(&W.m, "provider:deploy:k1", "stage.deployment_id");
    bool ok = v && *v;
    free(v);
    (void)arg;
    return ok;
}

typedef struct {
    sn_ledger_t *ledger;
    uint64_t fence;
} s_redispatch_t;

static bool s_requeued(void *arg)
{
    s_redispatch_t *rd = arg;
    sn_ledger_redispatch_t out;
    if (sn_ledger_redispatch(rd->ledger, rd->fence, "buildpilot", &out) != SN_OK)
        return false;
    bool ok = out.requeued.count == 1;
    sn_ledger_redispatch_fini(&out);
    return ok;
}

static sn_envelope_t *s_answer;

/* The new worker answers (the broker may still route to the dead one for a moment). */
static bool s_answered(void *arg)
{
    (void)arg;
    sn_envelope_free(&s_answer);
    return s_call("stage", "k1", "rw", "ck", NULL, "job-k1", 3000, &s_answer) == SN_OK && s_answer;
}

static void test_railway_bridge_kill_mid_deploy_resumes(void **state)
{
    (void)state;
    s_fake("hold=1");
    sn_redis_opts_t ro = {.unix_path = W.m.redis.unix_path, .namespace_ = W.m.ns};
    sn_redis_t *redis = sn_redis_new(&ro);
    sn_source_t src;
    sn_source_init(&src, "test", "ledger");
    sn_leader_t *leader = sn_leader_new(redis, "buildpilot", "test-lead", 30000);
    uint64_t fence = 0;
    assert_int_equal(sn_leader_try(leader, &fence), SN_OK);
    sn_ledger_t *ledger = sn_ledger_new(redis, &src);
    Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
    spec.job_id = "job-k1";
    spec.kind = "deploy.stage";
    spec.service = SERVICE;
    spec.owner_role = "buildpilot";
    spec.lease_ms = 1000;
    assert_int_equal(sn_ledger_create(ledger, fence, "buildpilot", &spec), SN_OK);
    /* The worker starts the deployment and follows it (held in BUILDING); our call times
     * out, the worker goes on. */
    sn_envelope_t *r = NULL;
    sn_rc_t rc = s_call("stage", "k1", "rw", "ck", NULL, "job-k1", 1500, &r);
    if (rc == SN_OK && r && r->deploy_result)
        print_error("stage answered early: ok=%d reason=%s\n", r->deploy_result->ok,
                    r->deploy_result->reason);
    sn_envelope_free(&r);
    assert_int_equal(rc, SN_AGAIN);
    assert_true(sn_test_wait_for(s_recorded, NULL, 10000));
    assert_int_equal(s_deployments_of("k1"), 1);
    /* kill -9 mid-deploy. */
    sn_mesh_agent_t *a = &W.m.agents[W.worker];
    assert_true(sn_test_stop(a->pid, SIGKILL, 5000) >= 0);
    a->pid = 0;
    /* The leader requeues the job once its lease lapsed; a new worker takes it. */
    s_redispatch_t rd = {ledger, fence};
    assert_true(sn_test_wait_for(s_requeued, &rd, 10000));
    s_spawn_worker();
    s_fake_set("hold=0");
    assert_true(sn_test_wait_for(s_answered, NULL, 20000));
    assert_int_equal(s_answer->body_case, SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT);
    if (!s_answer->deploy_result->ok)
        print_error("resume: %s\n", s_answer->deploy_result->reason);
    assert_true(s_answer->deploy_result->ok);
    char *rec = sn_mesh_hget(&W.m, "provider:deploy:k1", "stage.deployment_id");
    assert_string_equal(s_answer->deploy_result->deploy->provider_deployment_id, rec);
    free(rec);
    sn_envelope_free(&s_answer);
    /* One deployment for the deploy id, the identity served, the job done at attempt 2. */
    assert_int_equal(s_deployments_of("k1"), 1);
    assert_int_equal(s_stat("deployments"), 1);
    char *served = s_served_identity(W.base, NULL, 0);
    assert_string_equal(served, "k1");
    free(served);
    sn_ledger_job_t job;
    assert_int_equal(sn_ledger_get(ledger, "job-k1", &job), SN_OK);
    assert_int_equal(job.state, SN_JOB_DONE);
    assert_true(job.ok);
    assert_int_equal(job.spec->attempt, 2);
    sn_ledger_job_fini(&job);
    sn_ledger_destroy(&ledger);
    sn_leader_destroy(&leader);
    sn_redis_destroy(&redis);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_railway_bridge_full_deploy),
        cmocka_unit_test(test_railway_bridge_token_forms),
        cmocka_unit_test(test_railway_bridge_failed_deploy),
        cmocka_unit_test(test_railway_bridge_rollback),
        cmocka_unit_test(test_railway_bridge_rate_limit_5xx_hang_html),
        cmocka_unit_test(test_railway_bridge_bad_requests),
        cmocka_unit_test(test_railway_bridge_kill_mid_deploy_resumes),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
