/* Integration tests for sn_provider against a real redis-server and the scriptable fake
 * site (tests/fakes/fake_http.py): four threads with their own Redis connections share one
 * request budget and never exceed it in any window (checked on the server's grant times);
 * acquire gives up at its deadline; the breaker opens after K transient failures seen by
 * any handle, fails fast while open, lets one probe through after the cool-down, re-opens
 * on a failed probe and closes on a good one; Retry-After is waited out exactly; a
 * non-idempotent call is never retried; the attempt budget and the deadline bound every
 * call; a 4xx is permanent; garbage with 200 is refused by the JSON helper; URLs in
 * reasons are redacted; the deploy record is set-if-absent; Redis down is transient. */
#include "sn_test.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sentinel/sn_http.h"
#include "sentinel/sn_provider.h"
#include "sentinel/sn_redis.h"

#define S_SECRET "tok-very-secret-123"

typedef struct {
    sn_test_redis_t srv;
    char *dir;
    char *site; /* http://127.0.0.1:<port> */
    pid_t site_pid;
    sn_http_t *http;
    char *ns;
    sn_redis_t *redis;
} s_world_t;

static bool s_file_exists(void *arg)
{
    struct stat st;
    return stat((const char *)arg, &st) == 0 && st.st_size > 0;
}

static int s_setup(void **state)
{
    s_world_t *w = sn_calloc(1, sizeof *w);
    *state = w;
    if (!sn_test_redis_start(&w->srv))
        return -1;
    w->dir = sn_test_tmpdir("provider");
    int port = sn_test_free_port();
    char *path = sn_strdupf("%s/tests/fakes/fake_http.py", SN_SOURCE_DIR);
    char *ready = sn_strdupf("%s/fake.ready", w->dir);
    char *log = sn_strdupf("%s/fake.log", w->dir);
    char *port_s = sn_strdupf("%d", port);
    char *argv[] = {"/usr/bin/python3", path, "--port", port_s, "--ready", ready, NULL};
    w->site_pid = sn_test_spawn(argv, log);
    bool ok = w->site_pid > 0 && sn_test_wait_for(s_file_exists, ready, 10000);
    w->site = sn_strdupf("http://127.0.0.1:%d", port);
    free(path);
    free(ready);
    free(log);
    free(port_s);
    w->http = sn_http_new();
    w->ns = sn_test_namespace("prov");
    sn_redis_opts_t ro = {.unix_path = w->srv.unix_path, .namespace_ = w->ns};
    w->redis = sn_redis_new(&ro);
    return ok && w->http && w->redis ? 0 : -1;
}

static int s_teardown(void **state)
{
    s_world_t *w = *state;
    sn_http_destroy(&w->http);
    sn_redis_destroy(&w->redis);
    int bad = 0;
    if (w->site_pid > 0 && sn_test_stop(w->site_pid, SIGTERM, 5000) != 0)
        bad = 1;
    sn_test_redis_destroy(&w->srv);
    sn_test_rmdir(w->dir);
    free(w->dir);
    free(w->site);
    free(w->ns);
    free(w);
    return bad ? -1 : 0;
}

/* Sets the fake site's behaviour (after a reset of behaviour and counters). */
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

/* A provider handle with fast test timings; @name keeps tests' keys apart. */
static sn_provider_t *s_provider(sn_redis_t *redis, const char *name, int budget, int window_s)
{
    sn_provider_opts_t o = {.provider = name,
                            .credential = S_SECRET,
                            .budget_requests = budget,
                            .budget_window_s = window_s,
                            .breaker_threshold = 3,
                            .breaker_cooldown_ms = 400,
                            .retry_after_cap_ms = 5000,
                            .backoff_base_ms = 20,
                            .backoff_cap_ms = 80};
    sn_provider_t *p = sn_provider_new(redis, &o);
    assert_non_null(p);
    return p;
}

/* ---- budget ------------------------------------------------------------------------------ */

#define S_THREADS 4
#define S_PER_THREAD 5
#define S_LIMIT 4

typedef struct {
    s_world_t *w;
    int64_t grants[S_PER_THREAD];
    int ok;
} s_worker_t;

static void *s_budget_worker(void *arg)
{
    s_worker_t *k = arg;
    /* Its own Redis connection and handle: as a separate process would have. */
    sn_redis_opts_t ro = {.unix_path = k->w->srv.unix_path, .namespace_ = k->w->ns};
    sn_redis_t *redis = sn_redis_new(&ro);
    sn_provider_opts_t o = {.provider = "budgeted",
                            .credential = S_SECRET,
                            .budget_requests = S_LIMIT,
                            .budget_window_s = 1};
    sn_provider_t *p = sn_provider_new(redis, &o);
    for (int i = 0; i < S_PER_THREAD; i++)
        if (sn_provider_acquire(p, sn_mono_ms() + 20000, &k->grants[i]) == SN_OK)
            k->ok++;
    sn_provider_destroy(&p);
    sn_redis_destroy(&redis);
    return NULL;
}

static int s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_sn_provider_budget_shared_never_exceeded(void **state)
{
    s_world_t *w = *state;
    s_worker_t workers[S_THREADS];
    pthread_t th[S_THREADS];
    int64_t start = sn_mono_ms();
    for (int i = 0; i < S_THREADS; i++) {
        memset(&workers[i], 0, sizeof workers[i]);
        workers[i].w = w;
        assert_int_equal(pthread_create(&th[i], NULL, s_budget_worker, &workers[i]), 0);
    }
    int64_t all[S_THREADS * S_PER_THREAD];
    int n = 0;
    for (int i = 0; i < S_THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(workers[i].ok, S_PER_THREAD);
        for (int j = 0; j < S_PER_THREAD; j++)
            all[n++] = workers[i].grants[j];
    }
    int64_t elapsed = sn_mono_ms() - start;
    qsort(all, (size_t)n, sizeof all[0], s_cmp_i64);
    /* In every window of 1000 ms ending at a grant, at most S_LIMIT grants. */
    for (int i = 0; i < n; i++) {
        int in_window = 0;
        for (int j = 0; j <= i; j++)
            if (all[j] > all[i] - 1000)
                in_window++;
        assert_true(in_window <= S_LIMIT);
    }
    /* 20 grants at 4 per second need at least 4 full windows after the first. */
    assert_true(all[n - 1] - all[0] >= 4000);
    assert_true(elapsed >= 4000);
    assert_true(elapsed < 12000);
    /* The key names the provider and a hash of the credential, never the credential. */
    sn_provider_t *p = s_provider(w->redis, "budgeted", S_LIMIT, 1);
    char *args = sn_strdupf("-n 0 KEYS %sprovider:budget:*", w->ns);
    char *keys = sn_test_redis_cli(&w->srv, args);
    assert_non_null(keys);
    assert_non_null(strstr(keys, sn_provider_cred_hash(p)));
    assert_null(strstr(keys, S_SECRET));
    assert_int_equal(strlen(sn_provider_cred_hash(p)), 16);
    free(keys);
    free(args);
    sn_provider_destroy(&p);
}

static void test_sn_provider_acquire_deadline(void **state)
{
    s_world_t *w = *state;
    sn_provider_t *p = s_provider(w->redis, "slow", 1, 30);
    int64_t granted = 0;
    assert_int_equal(sn_provider_acquire(p, sn_mono_ms() + 1000, &granted), SN_OK);
    assert_true(granted > 0);
    int64_t t0 = sn_mono_ms();
    /* The window frees only in 30 s: the deadline comes first, at once. */
    assert_int_equal(sn_provider_acquire(p, sn_mono_ms() + 300, &granted), SN_AGAIN);
    assert_int_equal(granted, 0);
    assert_true(sn_mono_ms() - t0 < 1000);
    /* A call through the empty budget fails transient without a request. */
    s_site(w, "status=200");
    char *url = sn_strdupf("%s/x", w->site);
    sn_http_request_t req = {.url = url, .timeout_ms = 2000};
    sn_provider_budget_t b;
    sn_provider_budget_init(&b, 3, sn_mono_ms() + 300);
    sn_http_response_t resp;
    assert_int_equal(sn_provider_call(p, w->http, &req, true, &b, &resp), SN_AGAIN);
    assert_non_null(strstr(b.reason, "request budget"));
    assert_int_equal(b.attempts, 0);
    assert_int_equal(s_site_requests(w), 0);
    sn_http_response_fini(&resp);
    /* No budget configured: never waits. */
    sn_provider_t *free_p = s_provider(w->redis, "unlimited", 0, 0);
    for (int i = 0; i < 50; i++)
        assert_int_equal(sn_provider_acquire(free_p, sn_mono_ms() + 10, NULL), SN_OK);
    sn_provider_destroy(&free_p);
    free(url);
    sn_provider_destroy(&p);
}

/* ---- breaker ----------------------------------------------------------------------------- */

typedef struct {
    sn_provider_t *p;
    sn_provider_breaker_state_t want;
} s_state_wait_t;

static bool s_breaker_is(void *arg)
{
    s_state_wait_t *sw = arg;
    sn_provider_breaker_state_t st;
    return sn_provider_breaker_get(sw->p, &st, NULL) == SN_OK && st == sw->want;
}

static sn_rc_t s_call_once(s_world_t *w, sn_provider_t *p, bool is_idempotent, int max_attempts,
                           sn_provider_budget_t *b)
{
    char *url = sn_strdupf("%s/api", w->site);
    sn_http_request_t req = {.url = url, .timeout_ms = 3000};
    sn_provider_budget_init(b, max_attempts, sn_mono_ms() + 10000);
    sn_http_response_t resp;
    sn_rc_t rc = sn_provider_call(p, w->http, &req, is_idempotent, b, &resp);
    sn_http_response_fini(&resp);
    free(url);
    return rc;
}

static void test_sn_provider_breaker_open_half_open_close(void **state)
{
    s_world_t *w = *state;
    /* Two handles (two processes' view) of one (provider, credential). */
    sn_provider_t *a = s_provider(w->redis, "brk", 0, 0);
    sn_provider_t *b2 = s_provider(w->redis, "brk", 0, 0);
    sn_provider_budget_t b;
    sn_provider_breaker_state_t st;
    int failures = -1;
    s_site(w, "status=503");
    assert_int_equal(s_call_once(w, a, false, 1, &b), SN_AGAIN);
    assert_int_equal(s_call_once(w, b2, false, 1, &b), SN_AGAIN);
    assert_int_equal(sn_provider_breaker_get(a, &st, &failures), SN_OK);
    assert_int_equal(st, SN_PROVIDER_BREAKER_CLOSED);
    assert_int_equal(failures, 2);
    /* A 4xx means the provider is up: the count starts again. */
    s_site(w, "status=404");
    assert_int_equal(s_call_once(w, a, false, 1, &b), SN_ERROR);
    assert_int_equal(sn_provider_breaker_get(a, &st, &failures), SN_OK);
    assert_int_equal(failures, 0);
    s_site(w, "status=503");
    for (int i = 0; i < 3; i++)
        assert_int_equal(s_call_once(w, i % 2 ? a : b2, false, 1, &b), SN_AGAIN);
    assert_int_equal(sn_provider_breaker_get(b2, &st, &failures), SN_OK);
    assert_int_equal(st, SN_PROVIDER_BREAKER_OPEN);
    assert_int_equal(failures, 3);
    assert_int_equal(s_site_requests(w), 3);
    /* Open: both handles fail fast, nothing reaches the provider. */
    s_site(w, "status=200");
    assert_int_equal(s_call_once(w, a, true, 5, &b), SN_AGAIN);
    assert_true(b.is_transient);
    assert_non_null(strstr(b.reason, "circuit open"));
    assert_int_equal(b.attempts, 0);
    assert_int_equal(s_call_once(w, b2, true, 5, &b), SN_AGAIN);
    assert_int_equal(s_site_requests(w), 0);
    int64_t retry_in = 0;
    assert_int_equal(sn_provider_breaker_allow(a, &retry_in), SN_AGAIN);
    assert_true(retry_in > 0 && retry_in <= 400);
    /* Half-open after the cool-down; a failed probe opens it again. */
    s_state_wait_t sw = {.p = a, .want = SN_PROVIDER_BREAKER_HALF_OPEN};
    assert_true(sn_test_wait_for(s_breaker_is, &sw, 3000));
    s_site(w, "status=502");
    assert_int_equal(s_call_once(w, a, false, 1, &b), SN_AGAIN);
    assert_int_equal(b.attempts, 1);
    assert_int_equal(sn_provider_breaker_get(a, &st, NULL), SN_OK);
    assert_int_equal(st, SN_PROVIDER_BREAKER_OPEN);
    assert_int_equal(s_call_once(w, b2, false, 1, &b), SN_AGAIN);
    assert_int_equal(b.attempts, 0);
    assert_int_equal(s_site_requests(w), 1);
    /* Only one probe at a time: the second caller in half-open fails fast. */
    assert_true(sn_test_wait_for(s_breaker_is, &sw, 3000));
    assert_int_equal(sn_provider_breaker_allow(a, NULL), SN_OK);
    assert_int_equal(sn_provider_breaker_allow(b2, NULL), SN_AGAIN);
    /* The probe succeeds: closed, for every handle. */
    assert_int_equal(sn_provider_breaker_record(a, SN_PROVIDER_OUTCOME_OK), SN_OK);
    assert_int_equal(sn_provider_breaker_get(b2, &st, &failures), SN_OK);
    assert_int_equal(st, SN_PROVIDER_BREAKER_CLOSED);
    assert_int_equal(failures, 0);
    s_site(w, "status=200");
    assert_int_equal(s_call_once(w, b2, false, 1, &b), SN_OK);
    assert_int_equal(s_site_requests(w), 1);
    sn_provider_destroy(&a);
    sn_provider_destroy(&b2);
}

/* ---- calls -------------------------------------------------------------------------------- */

static void test_sn_provider_retry_after_waited_out(void **state)
{
    s_world_t *w = *state;
    sn_provider_t *p = s_provider(w->redis, "ra", 0, 0);
    s_site(w, "status=200&fail_first=1&fail_status=429&header=Retry-After:1");
    sn_provider_budget_t b;
    int64_t t0 = sn_mono_ms();
    assert_int_equal(s_call_once(w, p, true, 5, &b), SN_OK);
    int64_t elapsed = sn_mono_ms() - t0;
    /* Exactly the second asked for, not the 20-80 ms backoff. */
    assert_true(elapsed >= 1000);
    assert_true(elapsed < 2500);
    assert_int_equal(b.attempts, 2);
    assert_int_equal(s_site_requests(w), 2);
    /* A Retry-After beyond the deadline is not waited for: transient at once. */
    s_site(w, "status=429&header=Retry-After:5");
    char *url = sn_strdupf("%s/api", w->site);
    sn_http_request_t req = {.url = url, .timeout_ms = 3000};
    sn_provider_budget_init(&b, 5, sn_mono_ms() + 1500);
    sn_http_response_t resp;
    t0 = sn_mono_ms();
    assert_int_equal(sn_provider_call(p, w->http, &req, true, &b, &resp), SN_AGAIN);
    assert_true(sn_mono_ms() - t0 < 1000);
    assert_int_equal(resp.status, 429);
    assert_int_equal(b.last_status, 429);
    assert_non_null(strstr(b.reason, "HTTP 429"));
    assert_non_null(strstr(b.reason, "deadline"));
    assert_int_equal(s_site_requests(w), 1);
    sn_http_response_fini(&resp);
    /* The cap: Retry-After 5 s honoured as at most retry_after_cap_ms. */
    sn_provider_opts_t o = {.provider = "racap", .retry_after_cap_ms = 300};
    sn_provider_t *capped = sn_provider_new(w->redis, &o);
    s_site(w, "status=200&fail_first=1&fail_status=503&header=Retry-After:5");
    sn_provider_budget_init(&b, 3, sn_mono_ms() + 10000);
    t0 = sn_mono_ms();
    assert_int_equal(sn_provider_call(capped, w->http, &req, true, &b, &resp), SN_OK);
    elapsed = sn_mono_ms() - t0;
    assert_true(elapsed >= 300 && elapsed < 2000);
    sn_http_response_fini(&resp);
    sn_provider_destroy(&capped);
    free(url);
    sn_provider_destroy(&p);
}

static void test_sn_provider_non_idempotent_never_retried(void **state)
{
    s_world_t *w = *state;
    sn_provider_t *p = s_provider(w->redis, "nonidem", 0, 0);
    sn_provider_budget_t b;
    s_site(w, "status=200&fail_first=1&fail_status=503");
    assert_int_equal(s_call_once(w, p, false, 5, &b), SN_AGAIN);
    assert_int_equal(b.attempts, 1);
    assert_true(b.is_transient);
    assert_int_equal(s_site_requests(w), 1);
    s_site(w, "status=200&fail_first=1&fail_status=429&header=Retry-After:0");
    assert_int_equal(s_call_once(w, p, false, 5, &b), SN_AGAIN);
    assert_int_equal(s_site_requests(w), 1);
    /* The same failure on an idempotent call is retried (after a success has reset the
     * breaker's count, which the two failures above brought near its threshold). */
    assert_int_equal(sn_provider_breaker_record(p, SN_PROVIDER_OUTCOME_OK), SN_OK);
    s_site(w, "status=200&fail_first=2&fail_status=500");
    assert_int_equal(s_call_once(w, p, true, 5, &b), SN_OK);
    assert_int_equal(b.attempts, 3);
    assert_int_equal(s_site_requests(w), 3);
    sn_provider_destroy(&p);
}

static void test_sn_provider_attempt_budget_and_permanent(void **state)
{
    s_world_t *w = *state;
    sn_provider_t *p = s_provider(w->redis, "attempts", 0, 0);
    char *url = sn_strdupf("%s/api", w->site);
    sn_http_request_t req = {.url = url, .timeout_ms = 3000};
    sn_provider_budget_t b;
    sn_http_response_t resp;
    /* One budget for the whole op: 2 attempts on the first call, 1 left for the second. */
    sn_provider_budget_init(&b, 3, sn_mono_ms() + 10000);
    sn_provider_budget_t *bp = &b;
    s_site(w, "status=200&fail_first=1&fail_status=503");
    assert_int_equal(sn_provider_call(p, w->http, &req, true, bp, &resp), SN_OK);
    assert_int_equal(b.attempts, 2);
    assert_int_equal(b.failures, 1);
    sn_http_response_fini(&resp);
    s_site(w, "status=500");
    assert_int_equal(sn_provider_call(p, w->http, &req, true, bp, &resp), SN_AGAIN);
    assert_int_equal(b.attempts, 3);
    assert_int_equal(b.failures, 2);
    assert_int_equal(s_site_requests(w), 1);
    assert_non_null(strstr(b.reason, "HTTP 500"));
    sn_http_response_fini(&resp);
    /* Spent: no further request at all, even one that would succeed. */
    s_site(w, "status=200");
    assert_int_equal(sn_provider_call(p, w->http, &req, true, bp, &resp), SN_AGAIN);
    assert_int_equal(s_site_requests(w), 0);
    sn_http_response_fini(&resp);
    /* A poller widens the budget per call: successful calls then cost no retries. */
    for (int i = 0; i < 5; i++) {
        b.max_attempts = b.attempts + 1;
        assert_int_equal(sn_provider_call(p, w->http, &req, true, bp, &resp), SN_OK);
        sn_http_response_fini(&resp);
    }
    assert_int_equal(b.attempts, 8);
    assert_int_equal(s_site_requests(w), 5);
    /* 4xx other than 429: permanent, never retried, body kept for the caller. */
    s_site(w, "status=403&body=denied");
    sn_provider_budget_init(&b, 5, sn_mono_ms() + 10000);
    assert_int_equal(sn_provider_call(p, w->http, &req, true, &b, &resp), SN_ERROR);
    assert_false(b.is_transient);
    assert_int_equal(resp.status, 403);
    assert_string_equal(resp.body, "denied");
    assert_int_equal(b.attempts, 1);
    assert_int_equal(s_site_requests(w), 1);
    sn_http_response_fini(&resp);
    /* A URL sn_http refuses: permanent. */
    sn_http_request_t bad = {.url = "ftp://example.invalid/x", .timeout_ms = 1000};
    sn_provider_budget_init(&b, 5, 0);
    assert_int_equal(sn_provider_call(p, w->http, &bad, true, &b, &resp), SN_ERROR);
    assert_int_equal(b.attempts, 1);
    sn_http_response_fini(&resp);
    free(url);
    sn_provider_destroy(&p);
}

static void test_sn_provider_deadline_honoured(void **state)
{
    s_world_t *w = *state;
    sn_provider_t *p = s_provider(w->redis, "deadline", 0, 0);
    /* A hang: the per-attempt timeout (10 s) is cut to the op's deadline. */
    s_site(w, "status=200&delay_ms=4000");
    char *url = sn_strdupf("%s/api", w->site);
    sn_http_request_t req = {.url = url, .timeout_ms = 10000};
    sn_provider_budget_t b;
    sn_http_response_t resp;
    sn_provider_budget_init(&b, 5, sn_mono_ms() + 700);
    int64_t t0 = sn_mono_ms();
    assert_int_equal(sn_provider_call(p, w->http, &req, true, &b, &resp), SN_AGAIN);
    int64_t elapsed = sn_mono_ms() - t0;
    assert_true(elapsed >= 600);
    assert_true(elapsed < 1800);
    assert_true(b.is_transient);
    assert_true(b.attempts >= 1);
    sn_http_response_fini(&resp);
    /* A deadline already passed: nothing sent. */
    s_site(w, "status=200");
    sn_provider_budget_init(&b, 5, sn_mono_ms() - 1);
    assert_int_equal(sn_provider_call(p, w->http, &req, true, &b, &resp), SN_AGAIN);
    assert_int_equal(b.attempts, 0);
    assert_non_null(strstr(b.reason, "deadline"));
    assert_int_equal(s_site_requests(w), 0);
    sn_http_response_fini(&resp);
    /* Transport trouble (nothing listens) is transient. */
    int port = sn_test_free_port();
    char *dead = sn_strdupf("http://127.0.0.1:%d/x?token=" S_SECRET, port);
    sn_http_request_t dreq = {.url = dead, .timeout_ms = 1000};
    sn_provider_budget_init(&b, 2, sn_mono_ms() + 5000);
    assert_int_equal(sn_provider_call(p, w->http, &dreq, true, &b, &resp), SN_AGAIN);
    assert_int_equal(b.attempts, 2);
    assert_true(b.is_transient);
    /* The reason carries the redacted URL, never the query secret. */
    assert_null(strstr(b.reason, S_SECRET));
    assert_non_null(strstr(b.reason, "[redacted]"));
    sn_http_response_fini(&resp);
    free(dead);
    free(url);
    sn_provider_destroy(&p);
}

static void test_sn_provider_garbage_200_refused(void **state)
{
    s_world_t *w = *state;
    /* A high breaker threshold: this test makes many transient failures in a row. */
    sn_provider_opts_t o = {.provider = "garbage", .breaker_threshold = 100};
    sn_provider_t *p = sn_provider_new(w->redis, &o);
    char *url = sn_strdupf("%s/api", w->site);
    sn_http_request_t req = {.url = url, .timeout_ms = 3000};
    sn_provider_budget_t b;
    sn_http_response_t resp;
    json_t *json = NULL;
    /* An HTML page with 200 (text/plain from the fake). */
    s_site(w, "status=200&body=%3Chtml%3Eoops%3C%2Fhtml%3E");
    sn_provider_budget_init(&b, 2, sn_mono_ms() + 5000);
    assert_int_equal(sn_provider_call_json(p, w->http, &req, true, &b, &resp, &json), SN_AGAIN);
    assert_null(json);
    assert_true(b.is_transient);
    assert_non_null(strstr(b.reason, "not JSON"));
    assert_int_equal(b.attempts, 2);
    assert_int_equal(s_site_requests(w), 2);
    sn_http_response_fini(&resp);
    /* JSON content type, body not JSON. */
    s_site(w, "status=200&body=%3Chtml%3E&header=Content-Type:application/json");
    sn_provider_budget_init(&b, 1, sn_mono_ms() + 5000);
    assert_int_equal(sn_provider_call_json(p, w->http, &req, true, &b, &resp, &json), SN_AGAIN);
    assert_null(json);
    assert_non_null(strstr(b.reason, "not valid JSON"));
    sn_http_response_fini(&resp);
    /* A JSON scalar is not a document. */
    s_site(w, "status=200&body=42&header=Content-Type:application/json");
    sn_provider_budget_init(&b, 1, sn_mono_ms() + 5000);
    assert_int_equal(sn_provider_call_json(p, w->http, &req, true, &b, &resp, &json), SN_AGAIN);
    sn_http_response_fini(&resp);
    /* Good JSON, with parameters on the content type. */
    s_site(w, "status=200&body=%7B%22ok%22%3Atrue%7D&header=Content-Type:application/json;"
              "+charset=utf-8");
    sn_provider_budget_init(&b, 1, sn_mono_ms() + 5000);
    assert_int_equal(sn_provider_call_json(p, w->http, &req, true, &b, &resp, &json), SN_OK);
    assert_non_null(json);
    assert_true(json_is_true(json_object_get(json, "ok")));
    json_decref(json);
    sn_http_response_fini(&resp);
    /* The plain call does not judge the body. */
    s_site(w, "status=200&body=%3Chtml%3E");
    sn_provider_budget_init(&b, 1, 0);
    assert_int_equal(sn_provider_call(p, w->http, &req, true, &b, &resp), SN_OK);
    sn_http_response_fini(&resp);
    /* sn_provider_parse_json on hand-made responses. */
    char reason[SN_PROVIDER_REASON_MAX];
    sn_http_header_t h = {.name = "content-type", .value = "application/problem+json"};
    sn_http_response_t r = {
        .status = 200, .body = "[1]", .body_len = 3, .headers = &h, .header_count = 1};
    assert_int_equal(sn_provider_parse_json(&r, &json, reason, sizeof reason), SN_OK);
    json_decref(json);
    h.value = "application/jsonx";
    assert_int_equal(sn_provider_parse_json(&r, &json, reason, sizeof reason), SN_ERROR);
    assert_null(json);
    r.header_count = 0;
    assert_int_equal(sn_provider_parse_json(&r, &json, reason, sizeof reason), SN_ERROR);
    assert_non_null(strstr(reason, "missing"));
    free(url);
    sn_provider_destroy(&p);
}

/* ---- deploy record ------------------------------------------------------------------------ */

static void test_sn_provider_deploy_record(void **state)
{
    s_world_t *w = *state;
    char *v = NULL;
    assert_int_equal(sn_provider_record_get(w->redis, "dep-1", "stage.deployment_id", &v),
                     SN_DECLINED);
    assert_null(v);
    assert_int_equal(
        sn_provider_record_set(w->redis, "dep-1", "stage.deployment_id", "d-111", NULL), SN_OK);
    char *existing = NULL;
    assert_int_equal(
        sn_provider_record_set(w->redis, "dep-1", "stage.deployment_id", "d-222", &existing),
        SN_DECLINED);
    assert_string_equal(existing, "d-111");
    free(existing);
    assert_int_equal(sn_provider_record_get(w->redis, "dep-1", "stage.deployment_id", &v), SN_OK);
    assert_string_equal(v, "d-111");
    free(v);
    assert_int_equal(sn_provider_record_put(w->redis, "dep-1", "stage.status", "building"), SN_OK);
    assert_int_equal(sn_provider_record_put(w->redis, "dep-1", "stage.status", "success"), SN_OK);
    assert_int_equal(sn_provider_record_get(w->redis, "dep-1", "stage.status", &v), SN_OK);
    assert_string_equal(v, "success");
    free(v);
    /* Under the namespace, with a TTL. */
    char *args = sn_strdupf("TTL %sprovider:deploy:dep-1", w->ns);
    char *ttl = sn_test_redis_cli(&w->srv, args);
    assert_non_null(ttl);
    long t = strtol(ttl, NULL, 10);
    assert_true(t > 0 && t <= SN_PROVIDER_RECORD_TTL_S);
    free(ttl);
    free(args);
}

static void test_sn_provider_redis_down(void **state)
{
    s_world_t *w = *state;
    char *sock = sn_strdupf("%s/nothing.sock", w->dir);
    sn_redis_opts_t ro = {.unix_path = sock, .namespace_ = w->ns, .timeout_ms = 200};
    sn_redis_t *redis = sn_redis_new(&ro);
    sn_provider_opts_t o = {
        .provider = "down", .budget_requests = 10, .budget_window_s = 1, .redis_timeout_ms = 200};
    sn_provider_t *p = sn_provider_new(redis, &o);
    assert_int_equal(sn_provider_acquire(p, sn_mono_ms() + 300, NULL), SN_AGAIN);
    assert_int_equal(sn_provider_breaker_allow(p, NULL), SN_AGAIN);
    assert_int_equal(sn_provider_breaker_get(p, NULL, NULL), SN_AGAIN);
    char *v = NULL;
    assert_int_equal(sn_provider_record_get(redis, "d", "f", &v), SN_AGAIN);
    assert_int_equal(sn_provider_record_set(redis, "d", "f", "v", NULL), SN_AGAIN);
    s_site(w, "status=200");
    char *url = sn_strdupf("%s/api", w->site);
    sn_http_request_t req = {.url = url, .timeout_ms = 1000};
    sn_provider_budget_t b;
    sn_http_response_t resp;
    sn_provider_budget_init(&b, 2, sn_mono_ms() + 2000);
    assert_int_equal(sn_provider_call(p, w->http, &req, true, &b, &resp), SN_AGAIN);
    assert_true(b.is_transient);
    assert_int_equal(s_site_requests(w), 0);
    sn_http_response_fini(&resp);
    /* No provider name: refused. */
    sn_provider_opts_t none = {0};
    assert_null(sn_provider_new(redis, &none));
    free(url);
    sn_provider_destroy(&p);
    sn_redis_destroy(&redis);
    free(sock);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_provider_budget_shared_never_exceeded),
        cmocka_unit_test(test_sn_provider_acquire_deadline),
        cmocka_unit_test(test_sn_provider_breaker_open_half_open_close),
        cmocka_unit_test(test_sn_provider_retry_after_waited_out),
        cmocka_unit_test(test_sn_provider_non_idempotent_never_retried),
        cmocka_unit_test(test_sn_provider_attempt_budget_and_permanent),
        cmocka_unit_test(test_sn_provider_deadline_honoured),
        cmocka_unit_test(test_sn_provider_garbage_200_refused),
        cmocka_unit_test(test_sn_provider_deploy_record),
        cmocka_unit_test(test_sn_provider_redis_down),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
