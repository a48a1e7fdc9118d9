/* Integration tests for sn_github against the GitHub fake (tests/fakes/fake_github.py):
 * the contract's headers reach the fake and it refuses requests without them; ETag 304s
 * are answered from the cache and cost no rate limit; 500 bursts are retried for GET and
 * not for POST; a hang is cut by the timeout and retried; HTML or garbage with 200 is a
 * failure; a permission 403 is never retried; 429/403 with retry-after, the primary limit
 * (remaining 0 until reset) and secondary limits without any header (>= the floor, then
 * exponentially longer) are waited out; waits over max_wait_s and attempts over
 * max_attempts give up; the App JWT is RS256 with the right claims, the installation
 * token is cached, refreshed before expiry and re-minted after a 401; log and artifact
 * redirects are followed without the token (the blob host refuses any Authorization);
 * lists follow Link rel="next". */
#include "sn_test.h"

#include <fcntl.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sentinel/sn_crypto.h"
#include "sentinel/sn_github.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_json.h"
#include "sn_fake_github.h"

#define S_TOKEN "test-token"

typedef struct {
    sn_fake_github_t fake;
    sn_github_config_t cfg;
    sn_github_t *gh;
    char *dir;
} s_world_t;

static sn_github_opts_t s_fast_opts(void)
{
    sn_github_opts_t o = {.secondary_wait_ms = 200, .retry_base_ms = 20, .retry_cap_ms = 100};
    return o;
}

static int s_group_setup(void **state)
{
    s_world_t *w = sn_calloc(1, sizeof *w);
    *state = w;
    w->dir = sn_test_tmpdir("ghclient");
    return sn_fake_github_start(&w->fake) ? 0 : -1;
}

static int s_group_teardown(void **state)
{
    s_world_t *w = *state;
    bool ok = sn_fake_github_stop(&w->fake);
    sn_test_rmdir(w->dir);
    free(w->dir);
    free(w);
    return ok ? 0 : -1;
}

/* Every test: a reset fake, a token client with fast waits. */
static int s_setup(void **state)
{
    s_world_t *w = *state;
    if (!sn_fake_github_control(&w->fake, "reset", "{}"))
        return -1;
    memset(&w->cfg, 0, sizeof w->cfg);
    w->cfg.api_base = w->fake.url;
    w->cfg.token = S_TOKEN;
    w->cfg.request_timeout_ms = 2000;
    w->cfg.max_attempts = 4;
    w->cfg.max_wait_s = 10;
    sn_github_opts_t o = s_fast_opts();
    w->gh = sn_github_new(&w->cfg, &o);
    return w->gh ? 0 : -1;
}

static int s_teardown(void **state)
{
    s_world_t *w = *state;
    sn_github_destroy(&w->gh);
    return 0;
}

static void s_run(s_world_t *w, const char *extra)
{
    assert_true(sn_fake_github_controlf(
        &w->fake, "run",
        "{\"repo\":\"o/r\",\"id\":5,\"head_sha\":\"abc\",\"conclusion\":\"failure\"%s}",
        extra ? extra : ""));
}

/* GET runs with the client; returns rc. */
static sn_rc_t s_get_runs(s_world_t *w, sn_github_response_t *resp)
{
    return sn_github_request(w->gh, "GET", "/repos/o/r/actions/runs?branch=main", NULL, 0, resp);
}

static int s_api_requests(s_world_t *w)
{
    return (int)sn_fake_github_stat(&w->fake, "api_requests");
}

/* ---- headers ------------------------------------------------------------------------------ */

static void test_sn_github_headers_and_fake_enforcement(void **state)
{
    s_world_t *w = *state;
    s_run(w, NULL);
    sn_github_response_t r;
    assert_int_equal(s_get_runs(w, &r), SN_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "total_count")), 1);
    assert_true(r.rate_remaining > 0 && r.rate_reset > 0);
    sn_github_response_fini(&r);
    json_t *log = sn_fake_github_requests(&w->fake, "/actions/runs");
    assert_int_equal(json_array_size(log), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(log, 0), "auth")),
                        "bearer:" S_TOKEN);
    json_decref(log);

    /* the fake refuses what is off-contract, in GitHub's error shape */
    struct {
        const char *hdrs[5];
        long status;
    } cases[] = {
        {{"Accept: application/vnd.github+json", "X-GitHub-Api-Version: 2022-11-28",
          "User-Agent: t", NULL},
         401},
        {{"Authorization: Bearer " S_TOKEN, "X-GitHub-Api-Version: 2022-11-28", "User-Agent: t",
          "Accept: application/json", NULL},
         415},
        {{"Authorization: Bearer " S_TOKEN, "Accept: application/vnd.github+json", "User-Agent: t",
          NULL},
         400},
        {{"Authorization: Bearer wrong", "Accept: application/vnd.github+json",
          "X-GitHub-Api-Version: 2022-11-28", "User-Agent: t", NULL},
         401},
    };
    sn_http_t *http = sn_http_new();
    char *url = sn_strdupf("%s/repos/o/r/actions/runs", w->fake.url);
    for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
        sn_http_request_t req = {.url = url, .headers = cases[i].hdrs, .timeout_ms = 5000};
        sn_http_response_t hr;
        assert_int_equal(sn_http_perform(http, &req, &hr), SN_OK);
        assert_int_equal(hr.status, cases[i].status);
        json_t *b = json_loads(hr.body, 0, NULL);
        assert_true(json_is_string(json_object_get(b, "message")));
        assert_true(json_is_string(json_object_get(b, "documentation_url")));
        json_decref(b);
        sn_http_response_fini(&hr);
    }
    free(url);
    sn_http_destroy(&http);

    /* a bad token is a permanent 401: one attempt */
    sn_github_config_t bad = w->cfg;
    bad.token = "not-the-token";
    sn_github_t *gh = sn_github_new(&bad, NULL);
    assert_int_equal(sn_github_request(gh, "GET", "/repos/o/r/actions/runs", NULL, 0, &r),
                     SN_ERROR);
    assert_int_equal(r.status, 401);
    assert_int_equal(r.attempts, 1);
    assert_string_equal(r.message, "Bad credentials");
    sn_github_response_fini(&r);
    /* a 422 is a refusal, not retried */
    json_t *body = json_pack("{s:s}", "context", "x"); /* no state */
    assert_int_equal(sn_github_request(w->gh, "POST", "/repos/o/r/statuses/abc", body,
                                       SN_GITHUB_RETRY_UNSAFE, &r),
                     SN_ERROR);
    assert_int_equal(r.status, 422);
    assert_int_equal(r.attempts, 1);
    json_decref(body);
    sn_github_response_fini(&r);
    /* the token never leaves for another origin */
    assert_int_equal(sn_github_request(w->gh, "GET", "http://127.0.0.2:1/x", NULL, 0, &r),
                     SN_ERROR);
    sn_github_response_fini(&r);
    sn_github_destroy(&gh);
}

static void test_sn_github_new_refuses_bad_config(void **state)
{
    s_world_t *w = *state;
    sn_github_config_t c = {0};
    assert_null(sn_github_new(&c, NULL)); /* no api_base */
    c.api_base = w->fake.url;
    assert_null(sn_github_new(&c, NULL)); /* no credentials */
    c.app_id = "1";
    c.installation_id = "2";
    assert_null(sn_github_new(&c, NULL)); /* App without a key */
    char *junk = sn_strdupf("%s/junk.pem", w->dir);
    FILE *f = fopen(junk, "w");
    fputs("not a key\n", f);
    fclose(f);
    c.private_key_file = junk;
    assert_null(sn_github_new(&c, NULL)); /* App with a key that is not one */
    c.private_key_file = NULL;
    c.token = "t";
    c.api_base = "ftp://x";
    assert_null(sn_github_new(&c, NULL));
    free(junk);
    char *e = sn_github_escape("feature/x y");
    assert_string_equal(e, "feature%2Fx%20y");
    free(e);
}

/* ---- ETag ----------------------------------------------------------------------------------- */

static void test_sn_github_etag_304_costs_nothing(void **state)
{
    s_world_t *w = *state;
    s_run(w, NULL);
    sn_github_response_t r;
    assert_int_equal(s_get_runs(w, &r), SN_OK);
    assert_false(r.is_not_modified);
    sn_github_response_fini(&r);
    int64_t used = sn_fake_github_stat(&w->fake, "rate_used");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(s_get_runs(w, &r), SN_OK);
        assert_true(r.is_not_modified);
        assert_int_equal(r.status, 200);
        json_t *runs = json_object_get(r.json, "workflow_runs");
        assert_int_equal(json_array_size(runs), 1);
        sn_github_response_fini(&r);
    }
    assert_int_equal(sn_fake_github_stat(&w->fake, "rate_used"), used);
    assert_int_equal(sn_fake_github_stat(&w->fake, "not_modified"), 3);
    json_t *log = sn_fake_github_requests(&w->fake, "/actions/runs");
    assert_int_equal(json_array_size(log), 4);
    assert_true(json_is_string(json_object_get(json_array_get(log, 3), "if_none_match")));
    json_decref(log);
    /* a change is seen at once */
    assert_true(sn_fake_github_control(&w->fake, "run",
                                       "{\"repo\":\"o/r\",\"id\":6,\"head_sha\":\"def\"}"));
    assert_int_equal(s_get_runs(w, &r), SN_OK);
    assert_false(r.is_not_modified);
    assert_int_equal(json_integer_value(json_object_get(r.json, "total_count")), 2);
    sn_github_response_fini(&r);
    sn_github_stats_t st;
    sn_github_stats(w->gh, &st);
    assert_int_equal(st.not_modified, 3);
}

/* ---- transient failures -------------------------------------------------------------------- */

static void test_sn_github_500_burst_get_retried_post_not(void **state)
{
    s_world_t *w = *state;
    s_run(w, NULL);
    sn_github_response_t r;
    assert_true(sn_fake_github_control(&w->fake, "fail",
                                       "{\"path\":\"/actions/runs\",\"mode\":\"server\","
                                       "\"count\":2,\"status\":502}"));
    assert_int_equal(s_get_runs(w, &r), SN_OK);
    assert_int_equal(r.attempts, 3);
    sn_github_response_fini(&r);
    /* a burst longer than the attempts: bounded */
    assert_true(sn_fake_github_control(&w->fake, "fail",
                                       "{\"path\":\"/actions/jobs\",\"mode\":\"server\","
                                       "\"count\":10}"));
    int before = s_api_requests(w);
    assert_int_equal(sn_github_request(w->gh, "GET", "/repos/o/r/actions/jobs/1", NULL, 0, &r),
                     SN_AGAIN);
    assert_int_equal(r.attempts, 4);
    assert_int_equal(s_api_requests(w) - before, 4);
    sn_github_response_fini(&r);
    /* POST: may have been applied, so not repeated */
    assert_true(sn_fake_github_control(&w->fake, "fail",
                                       "{\"path\":\"/statuses/\",\"mode\":\"server\","
                                       "\"count\":1}"));
    json_t *body = json_pack("{s:s,s:s}", "state", "pending", "context", "sentinel");
    assert_int_equal(sn_github_request(w->gh, "POST", "/repos/o/r/statuses/abc", body, 0, &r),
                     SN_AGAIN);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(r.status, 500);
    sn_github_response_fini(&r);
    /* ... unless the caller says repeating is harmless */
    assert_true(sn_fake_github_control(&w->fake, "fail",
                                       "{\"path\":\"/statuses/\",\"mode\":\"server\","
                                       "\"count\":1}"));
    assert_int_equal(sn_github_request(w->gh, "POST", "/repos/o/r/statuses/abc", body,
                                       SN_GITHUB_RETRY_UNSAFE, &r),
                     SN_OK);
    assert_int_equal(r.status, 201);
    assert_int_equal(r.attempts, 2);
    sn_github_response_fini(&r);
    json_decref(body);
}

static void test_sn_github_hang_cut_by_timeout(void **state)
{
    s_world_t *w = *state;
    s_run(w, NULL);
    sn_github_response_t r;
    w->cfg.request_timeout_ms = 400;
    assert_true(sn_fake_github_control(&w->fake, "fail",
                                       "{\"path\":\"/actions/runs\",\"mode\":\"hang\","
                                       "\"count\":1,\"hang_ms\":5000}"));
    int64_t t0 = sn_mono_ms();
    sn_github_t *gh = sn_github_new(&w->cfg, &(sn_github_opts_t){.retry_base_ms = 20});
    assert_int_equal(sn_github_request(gh, "GET", "/repos/o/r/actions/runs", NULL, 0, &r), SN_OK);
    int64_t took = sn_mono_ms() - t0;
    assert_int_equal(r.attempts, 2);
    assert_true(took >= 380 && took < 3000);
    sn_github_response_fini(&r);
    /* all attempts hang: SN_AGAIN, bounded */
    assert_true(sn_fake_github_control(&w->fake, "fail",
                                       "{\"path\":\"/actions/runs\",\"mode\":\"hang\","
                                       "\"count\":4,\"hang_ms\":3000}"));
    t0 = sn_mono_ms();
    assert_int_equal(sn_github_request(gh, "GET", "/repos/o/r/actions/runs", NULL, 0, &r),
                     SN_AGAIN);
    took = sn_mono_ms() - t0;
    assert_int_equal(r.attempts, 4);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.message, "timeout");
    assert_true(took < 4 * 400 + 1500);
    sn_github_response_fini(&r);
    sn_github_destroy(&gh);
}

static void test_sn_github_html_and_garbage_with_200_fail(void **state)
{
    s_world_t *w = *state;
    s_run(w, NULL);
    sn_github_response_t r;
    assert_true(sn_fake_github_control(
        &w->fake, "fail", "{\"path\":\"/actions/runs\",\"mode\":\"html\",\"count\":1}"));
    assert_int_equal(s_get_runs(w, &r), SN_OK); /* retried, second answer is JSON */
    assert_int_equal(r.attempts, 2);
    assert_non_null(json_object_get(r.json, "workflow_runs"));
    sn_github_response_fini(&r);
    assert_true(sn_fake_github_control(
        &w->fake, "fail", "{\"path\":\"/actions/runs\",\"mode\":\"html\",\"count\":10}"));
    assert_int_equal(
        sn_github_request(w->gh, "GET", "/repos/o/r/actions/runs", NULL, SN_GITHUB_NO_CACHE, &r),
        SN_AGAIN);
    assert_int_equal(r.attempts, 4);
    assert_null(r.json);
    assert_non_null(strstr(r.message, "without a JSON body"));
    sn_github_response_fini(&r);
    assert_true(sn_fake_github_control(&w->fake, "reset", "{}"));
    assert_true(sn_fake_github_control(
        &w->fake, "fail", "{\"path\":\"/statuses\",\"mode\":\"garbage\",\"count\":1}"));
    json_t *body = json_pack("{s:s}", "state", "success");
    assert_int_equal(sn_github_request(w->gh, "POST", "/repos/o/r/statuses/abc", body, 0, &r),
                     SN_AGAIN);
    assert_int_equal(r.attempts, 1);
    json_decref(body);
    sn_github_response_fini(&r);
}

/* ---- rate limits --------------------------------------------------------------------------------
 */

static void test_sn_github_permission_403_not_retried(void **state)
{
    s_world_t *w = *state;
    s_run(w, NULL);
    sn_github_response_t r;
    assert_true(sn_fake_github_control(
        &w->fake, "fail", "{\"path\":\"/rerun-failed-jobs\",\"mode\":\"permission\",\"count\":5}"));
    int before = s_api_requests(w);
    assert_int_equal(sn_github_request(w->gh, "POST", "/repos/o/r/actions/runs/5/rerun-failed-jobs",
                                       NULL, SN_GITHUB_RETRY_UNSAFE, &r),
                     SN_ERROR);
    assert_int_equal(r.status, 403);
    assert_true(r.is_permission_denied);
    assert_false(r.is_rate_limited);
    assert_int_equal(r.attempts, 1);
    assert_string_equal(r.message, "Resource not accessible by integration");
    assert_int_equal(s_api_requests(w) - before, 1);
    sn_github_response_fini(&r);
}

static void s_expect_waited(s_world_t *w, const char *rule, int64_t min_ms, int64_t max_ms,
                            int attempts)
{
    sn_github_response_t r;
    assert_true(sn_fake_github_control(&w->fake, "fail", rule));
    int64_t t0 = sn_mono_ms();
    assert_int_equal(sn_github_request(w->gh, "GET", "/repos/o/r/actions/runs/5", NULL, 0, &r),
                     SN_OK);
    int64_t took = sn_mono_ms() - t0;
    if (took < min_ms || took > max_ms)
        fail_msg("rule %s: took %lld ms, expected [%lld, %lld]", rule, (long long)took,
                 (long long)min_ms, (long long)max_ms);
    assert_int_equal(r.attempts, attempts);
    assert_int_equal(json_integer_value(json_object_get(r.json, "id")), 5);
    sn_github_response_fini(&r);
}

static void test_sn_github_rate_limits_waited_out(void **state)
{
    s_world_t *w = *state;
    s_run(w, NULL);
    /* retry-after, on 429 and on 403 */
    s_expect_waited(w, "{\"path\":\"/runs/5\",\"mode\":\"secondary429\",\"retry_after\":1}", 950,
                    2500, 2);
    s_expect_waited(w, "{\"path\":\"/runs/5\",\"mode\":\"secondary\",\"retry_after\":1}", 950, 2500,
                    2);
    /* primary: remaining 0 -> until x-ratelimit-reset (whole seconds, + 1 s margin) */
    s_expect_waited(w, "{\"path\":\"/runs/5\",\"mode\":\"primary\",\"reset_in\":1}", 900, 3500, 2);
    s_expect_waited(w, "{\"path\":\"/runs/5\",\"mode\":\"primary429\",\"reset_in\":1}", 900, 3500,
                    2);
    /* secondary without any header: the floor (200 ms here), then twice as long */
    s_expect_waited(w, "{\"path\":\"/runs/5\",\"mode\":\"bare403\",\"count\":2}", 600, 1500, 3);
    s_expect_waited(w, "{\"path\":\"/runs/5\",\"mode\":\"bare429\",\"count\":1}", 200, 900, 2);
    /* 403 secondary message with rate headers but no retry-after: a secondary limit too */
    s_expect_waited(w, "{\"path\":\"/runs/5\",\"mode\":\"secondary\",\"count\":1}", 200, 900, 2);
    sn_github_stats_t st;
    sn_github_stats(w->gh, &st);
    assert_int_equal(st.rate_waits, 8);
}

static void test_sn_github_rate_limit_bounds(void **state)
{
    s_world_t *w = *state;
    s_run(w, NULL);
    sn_github_response_t r;
    /* a wait longer than max_wait_s (10 s here) is not taken */
    assert_true(sn_fake_github_control(
        &w->fake, "fail", "{\"path\":\"/runs/5\",\"mode\":\"secondary429\",\"retry_after\":60}"));
    int64_t t0 = sn_mono_ms();
    assert_int_equal(sn_github_request(w->gh, "GET", "/repos/o/r/actions/runs/5", NULL, 0, &r),
                     SN_AGAIN);
    assert_true(sn_mono_ms() - t0 < 1000);
    assert_true(r.is_rate_limited);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(r.status, 429);
    sn_github_response_fini(&r);
    assert_true(sn_fake_github_control(
        &w->fake, "fail", "{\"path\":\"/runs/5\",\"mode\":\"primary\",\"reset_in\":3600}"));
    assert_int_equal(sn_github_request(w->gh, "GET", "/repos/o/r/actions/runs/5", NULL, 0, &r),
                     SN_AGAIN);
    assert_true(r.is_rate_limited);
    assert_int_equal(r.rate_remaining, 0);
    sn_github_response_fini(&r);
    assert_true(sn_fake_github_control(&w->fake, "rate", "{\"remaining\":5000}"));
    /* attempts bound the secondary backoff too */
    assert_true(sn_fake_github_control(&w->fake, "fail",
                                       "{\"path\":\"/runs/5\",\"mode\":\"bare429\",\"count\":10}"));
    sn_github_config_t c = w->cfg;
    c.max_attempts = 3;
    sn_github_t *gh = sn_github_new(&c, &(sn_github_opts_t){.secondary_wait_ms = 50});
    int before = s_api_requests(w);
    assert_int_equal(sn_github_request(gh, "GET", "/repos/o/r/actions/runs/5", NULL, 0, &r),
                     SN_AGAIN);
    assert_true(r.is_rate_limited);
    assert_int_equal(r.attempts, 3);
    assert_int_equal(s_api_requests(w) - before, 3);
    sn_github_response_fini(&r);
    sn_github_destroy(&gh);
    /* a rate-limited POST was not executed: it is repeated even without RETRY_UNSAFE */
    assert_true(sn_fake_github_control(
        &w->fake, "fail", "{\"path\":\"/statuses/\",\"mode\":\"bare403\",\"count\":1}"));
    json_t *body = json_pack("{s:s}", "state", "pending");
    assert_int_equal(sn_github_request(w->gh, "POST", "/repos/o/r/statuses/abc", body, 0, &r),
                     SN_OK);
    assert_int_equal(r.attempts, 2);
    json_decref(body);
    sn_github_response_fini(&r);
}

/* ---- the App ------------------------------------------------------------------------------------
 */

static bool s_openssl(const char *const *args)
{
    char *argv[8] = {0};
    argv[0] = "/usr/bin/openssl";
    for (int i = 0; args[i] && i < 6; i++)
        argv[i + 1] = (char *)args[i];
    pid_t pid = sn_test_spawn(argv, "/dev/null");
    int status = -1;
    return pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
           WEXITSTATUS(status) == 0;
}

/* Generates a key pair in w->dir/<name>.pem / .pub and registers the public one. */
static char *s_app_key(s_world_t *w, const char *name, bool do_register, int ttl_s)
{
    char *key = sn_strdupf("%s/%s.pem", w->dir, name);
    char *pub = sn_strdupf("%s/%s.pub", w->dir, name);
    assert_true(s_openssl((const char *[]){"genrsa", "-out", key, "2048", NULL}));
    assert_true(s_openssl((const char *[]){"rsa", "-in", key, "-pubout", "-out", pub, NULL}));
    if (do_register) {
        char *pem = sn_test_read_file(pub);
        json_t *b = json_pack("{s:s,s:s,s:s,s:i}", "app_id", "4242", "installation_id", "77",
                              "public_key_pem", pem, "token_ttl_s", ttl_s);
        char *text = json_dumps(b, 0);
        assert_true(sn_fake_github_control(&w->fake, "app", text));
        free(text);
        json_decref(b);
        free(pem);
    }
    free(pub);
    return key;
}

static void test_sn_github_app_jwt_claims(void **state)
{
    s_world_t *w = *state;
    char *key = s_app_key(w, "claims", false, 0);
    char *jwt = sn_github_app_jwt("4242", key, 1700000000);
    assert_non_null(jwt);
    char *dot1 = strchr(jwt, '.');
    char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    assert_non_null(dot2);
    uint8_t *raw = NULL;
    size_t raw_len = 0;
    assert_int_equal(sn_json_base64_decode(jwt, (size_t)(dot1 - jwt), &raw, &raw_len), SN_OK);
    json_t *h = json_loadb((const char *)raw, raw_len, 0, NULL);
    free(raw);
    assert_string_equal(json_string_value(json_object_get(h, "alg")), "RS256");
    assert_string_equal(json_string_value(json_object_get(h, "typ")), "JWT");
    json_decref(h);
    assert_int_equal(sn_json_base64_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &raw, &raw_len),
                     SN_OK);
    json_t *c = json_loadb((const char *)raw, raw_len, 0, NULL);
    free(raw);
    assert_int_equal(json_integer_value(json_object_get(c, "iat")), 1700000000 - 60);
    assert_int_equal(json_integer_value(json_object_get(c, "exp")), 1700000000 + 540);
    assert_string_equal(json_string_value(json_object_get(c, "iss")), "4242");
    json_decref(c);
    assert_null(strchr(jwt, '=')); /* base64url without padding */
    assert_null(strchr(jwt, '+'));
    free(jwt);
    assert_null(sn_github_app_jwt("4242", "/nonexistent/key.pem", 1700000000));
    free(key);
}

typedef struct {
    sn_github_t *gh;
    s_world_t *w;
} s_poll_t;

static bool s_minted_twice(void *arg)
{
    s_poll_t *p = arg;
    sn_github_response_t r;
    sn_rc_t rc =
        sn_github_request(p->gh, "GET", "/repos/o/r/actions/runs/5", NULL, SN_GITHUB_NO_CACHE, &r);
    sn_github_response_fini(&r);
    sn_github_stats_t st;
    sn_github_stats(p->gh, &st);
    return rc == SN_OK && st.tokens_minted >= 2;
}

static void test_sn_github_app_token_cached_refreshed_reminted(void **state)
{
    s_world_t *w = *state;
    s_run(w, NULL);
    char *key = s_app_key(w, "app", true, 3600);
    sn_github_config_t c = w->cfg;
    c.token = NULL;
    c.app_id = "4242";
    c.installation_id = "77";
    c.private_key_file = key;
    sn_github_opts_t o = s_fast_opts();
    sn_github_t *gh = sn_github_new(&c, &o);
    assert_non_null(gh);
    sn_github_response_t r;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(
            sn_github_request(gh, "GET", "/repos/o/r/actions/runs/5", NULL, SN_GITHUB_NO_CACHE, &r),
            SN_OK);
        sn_github_response_fini(&r);
    }
    sn_github_stats_t st;
    sn_github_stats(gh, &st);
    assert_int_equal(st.tokens_minted, 1); /* cached */
    assert_int_equal(sn_fake_github_stat(&w->fake, "tokens_minted"), 1);
    json_t *log = sn_fake_github_requests(&w->fake, NULL);
    assert_int_equal(json_array_size(log), 4);
    assert_string_equal(json_string_value(json_object_get(json_array_get(log, 0), "auth")), "jwt");
    const char *a1 = json_string_value(json_object_get(json_array_get(log, 1), "auth"));
    assert_true(strncmp(a1, "bearer:ghs_", 11) == 0);
    assert_string_equal(json_string_value(json_object_get(json_array_get(log, 3), "auth")), a1);
    json_decref(log);

    /* revoked (the fake forgets it): 401 -> one re-mint -> success */
    assert_true(sn_fake_github_control(&w->fake, "tokens", "{\"tokens\":[]}"));
    assert_int_equal(
        sn_github_request(gh, "GET", "/repos/o/r/actions/runs/5", NULL, SN_GITHUB_NO_CACHE, &r),
        SN_OK);
    assert_int_equal(r.attempts, 2);
    sn_github_response_fini(&r);
    sn_github_stats(gh, &st);
    assert_int_equal(st.tokens_minted, 2);
    sn_github_destroy(&gh);

    /* refreshed before expiry: tokens live 301 s, margin 300 s -> a new one within ~2 s */
    assert_true(sn_fake_github_control(&w->fake, "reset", "{}"));
    s_run(w, NULL);
    char *key2 = s_app_key(w, "app2", true, 302);
    c.private_key_file = key2;
    gh = sn_github_new(&c, &o);
    s_poll_t p = {.gh = gh, .w = w};
    assert_true(sn_test_wait_for(s_minted_twice, &p, 8000));
    sn_github_destroy(&gh);

    /* a key GitHub does not know: the mint fails with 401, nothing retried forever */
    char *other = s_app_key(w, "other", false, 0);
    c.private_key_file = other;
    gh = sn_github_new(&c, &o);
    assert_int_equal(sn_github_request(gh, "GET", "/repos/o/r/actions/runs/5", NULL, 0, &r),
                     SN_ERROR);
    sn_github_response_fini(&r);
    sn_github_stats(gh, &st);
    assert_int_equal(st.tokens_minted, 0);
    sn_github_destroy(&gh);
    free(other);
    free(key2);
    free(key);
}

/* ---- redirects ----------------------------------------------------------------------------------
 */

static void test_sn_github_log_and_artifact_redirect_without_token(void **state)
{
    s_world_t *w = *state;
    s_run(w, ",\"jobs\":[{\"id\":51,\"name\":\"build\",\"conclusion\":\"failure\","
             "\"log\":\"line one\\nline two\\nerror: boom\\n\"}],"
             "\"artifacts\":[{\"id\":61,\"name\":\"site\",\"files\":{\"index.html\":\"hi\"}},"
             "{\"id\":62,\"name\":\"old\",\"expired\":true}]");
    sn_github_response_t r;
    char *text = NULL;
    assert_int_equal(
        sn_github_fetch_tail(w->gh, "/repos/o/r/actions/jobs/51/logs", 1 << 20, &text, &r), SN_OK);
    assert_string_equal(text, "line one\nline two\nerror: boom\n");
    free(text);
    sn_github_response_fini(&r);
    /* the tail starts at a line boundary */
    assert_int_equal(sn_github_fetch_tail(w->gh, "/repos/o/r/actions/jobs/51/logs", 16, &text, &r),
                     SN_OK);
    assert_string_equal(text, "error: boom\n");
    free(text);
    sn_github_response_fini(&r);
    assert_int_equal(sn_fake_github_stat(&w->fake, "blob_requests"), 2);
    assert_int_equal(sn_fake_github_stat(&w->fake, "blob_auth_rejected"), 0);

    /* the artifact: zip bytes whose sha256 is the digest the API gives */
    json_t *arts = NULL;
    assert_int_equal(sn_github_list(w->gh, "/repos/o/r/actions/runs/5/artifacts?name=site",
                                    "artifacts", 100, &arts, NULL),
                     SN_OK);
    assert_int_equal(json_array_size(arts), 1);
    const char *digest = json_string_value(json_object_get(json_array_get(arts, 0), "digest"));
    assert_non_null(digest);
    char *zpath = sn_strdupf("%s/a.zip", w->dir);
    int fd = open(zpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
    uint64_t n = 0;
    assert_int_equal(
        sn_github_download(w->gh, "/repos/o/r/actions/artifacts/61/zip", fd, 1 << 20, &n, &r),
        SN_OK);
    sn_github_response_fini(&r);
    assert_true(n > 20);
    uint8_t *buf = sn_malloc(n);
    assert_int_equal(pread(fd, buf, n, 0), (ssize_t)n);
    assert_memory_equal(buf, "PK", 2);
    uint8_t md[32];
    SHA256(buf, n, md);
    char hex[65];
    sn_hex_encode(md, 32, hex);
    char *want = sn_strdupf("sha256:%s", hex);
    assert_string_equal(digest, want);
    free(want);
    free(buf);
    json_decref(arts);
    /* a too small cap: refused */
    assert_int_equal(
        sn_github_download(w->gh, "/repos/o/r/actions/artifacts/61/zip", fd, 10, &n, &r), SN_ERROR);
    sn_github_response_fini(&r);
    /* expired: 410 */
    assert_int_equal(
        sn_github_download(w->gh, "/repos/o/r/actions/artifacts/62/zip", fd, 1 << 20, &n, &r),
        SN_ERROR);
    assert_int_equal(r.status, 410);
    sn_github_response_fini(&r);
    /* the blob link expired before it was fetched: a new link each leg, then transient */
    assert_true(sn_fake_github_control(&w->fake, "blob_ttl", "{\"seconds\": -1}"));
    assert_int_equal(
        sn_github_download(w->gh, "/repos/o/r/actions/artifacts/61/zip", fd, 1 << 20, &n, &r),
        SN_AGAIN);
    assert_int_equal(r.status, 403);
    sn_github_response_fini(&r);
    assert_true(sn_fake_github_control(&w->fake, "blob_ttl", "{\"seconds\": 60}"));
    /* not a redirect at all: refused */
    assert_int_equal(sn_github_download(w->gh, "/repos/o/r/actions/runs/5", fd, 1 << 20, &n, &r),
                     SN_ERROR);
    sn_github_response_fini(&r);
    close(fd);
    free(zpath);
    json_t *log = sn_fake_github_requests(&w->fake, "/_blob/");
    size_t i;
    json_t *e;
    json_array_foreach(log, i, e)
    {
        assert_string_equal(json_string_value(json_object_get(e, "host")), "blob");
        assert_false(json_is_true(json_object_get(e, "blob_auth")));
    }
    assert_true(json_array_size(log) >= 4);
    json_decref(log);
    assert_int_equal(sn_fake_github_stat(&w->fake, "blob_auth_rejected"), 0);

    /* and the blob host does refuse a token, so the assertion above means something */
    json_t *l2 = NULL;
    sn_http_t *http = sn_http_new();
    assert_int_equal(
        sn_github_request(w->gh, "GET", "/repos/o/r/actions/jobs/51/logs", NULL, 0, &r), SN_ERROR);
    assert_non_null(r.location);
    const char *hdrs[] = {"Authorization: Bearer " S_TOKEN, NULL};
    sn_http_request_t req = {.url = r.location, .headers = hdrs, .timeout_ms = 5000};
    sn_http_response_t hr;
    assert_int_equal(sn_http_perform(http, &req, &hr), SN_OK);
    assert_int_equal(hr.status, 400);
    sn_http_response_fini(&hr);
    sn_http_destroy(&http);
    sn_github_response_fini(&r);
    json_decref(l2);
    assert_int_equal(sn_fake_github_stat(&w->fake, "blob_auth_rejected"), 1);
}

static void test_sn_github_list_follows_link_next(void **state)
{
    s_world_t *w = *state;
    json_t *jobs = json_array();
    for (int i = 0; i < 35; i++)
        json_array_append_new(jobs, json_pack("{s:i,s:s}", "id", 100 + i, "name", "j"));
    json_t *run = json_pack("{s:s,s:i,s:o}", "repo", "o/r", "id", 9, "jobs", jobs);
    char *text = json_dumps(run, 0);
    assert_true(sn_fake_github_control(&w->fake, "run", text));
    free(text);
    json_decref(run);
    json_t *items = NULL;
    sn_github_response_t r;
    assert_int_equal(
        sn_github_list(w->gh, "/repos/o/r/actions/runs/9/jobs", "jobs", 1000, &items, &r), SN_OK);
    assert_int_equal(json_array_size(items), 35);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(items, 34), "id")), 134);
    json_decref(items);
    sn_github_response_fini(&r);
    assert_int_equal(
        sn_github_list(w->gh, "/repos/o/r/actions/runs/9/jobs", "jobs", 10, &items, NULL), SN_OK);
    assert_int_equal(json_array_size(items), 10);
    json_decref(items);
    /* wrong key: refused */
    assert_int_equal(
        sn_github_list(w->gh, "/repos/o/r/actions/runs/9/jobs", "artifacts", 10, &items, NULL),
        SN_ERROR);
    assert_null(items);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sn_github_headers_and_fake_enforcement, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_github_new_refuses_bad_config, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_github_etag_304_costs_nothing, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_github_500_burst_get_retried_post_not, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_github_hang_cut_by_timeout, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_github_html_and_garbage_with_200_fail, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_github_permission_403_not_retried, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_github_rate_limits_waited_out, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_github_rate_limit_bounds, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_github_app_jwt_claims, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_github_app_token_cached_refreshed_reminted, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_github_log_and_artifact_redirect_without_token,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_github_list_follows_link_next, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
