/* Integration tests for sn_redis against a real redis-server of the test's own: calls,
 * binary safety, deadlines with a frozen Redis or a busy Redis thread, restart with
 * reconnect, Function libraries surviving a restart and FUNCTION FLUSH, the per-thread
 * connection, and one log line per connection state change. */
#include "sn_test.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

static sn_test_redis_t s_srv;

static int s_setup(void **state)
{
    if (!sn_test_redis_start(&s_srv))
        return -1;
    return 0;
}

static int s_teardown(void **state)
{
    if (s_srv.pid > 0)
        kill(s_srv.pid, SIGCONT);
    sn_test_redis_destroy(&s_srv);
    return 0;
}

static sn_redis_t *s_new(const char *tag, int timeout_ms, char **ns)
{
    *ns = sn_test_namespace(tag);
    sn_redis_opts_t o = {.unix_path = s_srv.unix_path, .namespace_ = *ns, .timeout_ms = timeout_ms};
    sn_redis_t *r = sn_redis_new(&o);
    assert_non_null(r);
    return r;
}

static sn_rc_t s_cmd2(sn_redis_t *r, sn_redis_chan_t chan, int timeout_ms, redisReply **reply,
                      const char *a, const char *b)
{
    const char *argv[] = {a, b};
    return sn_redis_cmd(r, chan, timeout_ms, reply, b ? 2 : 1, argv, NULL);
}

static bool s_ping_ok(void *arg)
{
    redisReply *rep = NULL;
    if (s_cmd2(arg, SN_REDIS_MAIN, 200, &rep, "PING", NULL) != SN_OK)
        return false;
    bool ok = rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "PONG") == 0;
    freeReplyObject(rep);
    return ok;
}

static bool s_is_up(void *arg)
{
    return sn_redis_is_up(arg);
}

static bool s_is_down(void *arg)
{
    return !sn_redis_is_up(arg);
}

static void test_sn_redis_bad_opts(void **state)
{
    sn_redis_opts_t none = {0};
    assert_null(sn_redis_new(&none));
    sn_redis_opts_t bad_port = {.host = "127.0.0.1", .port = 0};
    assert_null(sn_redis_new(&bad_port));
    assert_null(sn_redis_conn_new(&none));
    sn_redis_destroy(NULL);
    sn_redis_conn_destroy(NULL);
}

static void test_sn_redis_calls_and_binary_values(void **state)
{
    char *ns;
    sn_redis_t *r = s_new("calls", 1000, &ns);
    assert_string_equal(sn_redis_ns(r), ns);
    char *key = sn_strdupf("%sbin", ns);
    const char value[] = {'a', 0, 'b', '\r', '\n', (char)0xff, 0};
    const char *set[] = {"SET", key, value};
    size_t setlen[] = {3, strlen(key), sizeof value};
    redisReply *rep = NULL;
    assert_int_equal(sn_redis_cmd(r, SN_REDIS_MAIN, 0, &rep, 3, set, setlen), SN_OK);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    assert_int_equal(s_cmd2(r, SN_REDIS_LEASE, 0, &rep, "GET", key), SN_OK);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_int_equal(rep->len, sizeof value);
    assert_memory_equal(rep->str, value, sizeof value);
    freeReplyObject(rep);

    /* An error reply is SN_OK: the caller inspects it. */
    assert_int_equal(s_cmd2(r, SN_REDIS_MAIN, 0, &rep, "NOSUCHCOMMAND", NULL), SN_OK);
    assert_int_equal(rep->type, REDIS_REPLY_ERROR);
    assert_false(sn_redis_reply_is_transient(rep));
    freeReplyObject(rep);

    /* Bad arguments are refused before anything is sent. */
    const char *nul[] = {"GET", NULL};
    assert_int_equal(sn_redis_cmd(r, SN_REDIS_MAIN, 0, &rep, 2, nul, NULL), SN_ERROR);
    assert_null(rep);
    assert_int_equal(sn_redis_cmd(r, SN_REDIS_MAIN, 0, &rep, 0, set, NULL), SN_ERROR);
    assert_int_equal(sn_redis_cmd(r, (sn_redis_chan_t)7, 0, &rep, 1, set, NULL), SN_ERROR);
    assert_int_equal(sn_redis_fcall(r, SN_REDIS_MAIN, 0, &rep, NULL, 0, NULL, 0, NULL, NULL),
                     SN_ERROR);
    assert_int_equal(sn_redis_fcall(r, SN_REDIS_MAIN, 0, &rep, "f", -1, NULL, 0, NULL, NULL),
                     SN_ERROR);
    const char *nullkey[] = {NULL};
    assert_int_equal(sn_redis_fcall(r, SN_REDIS_MAIN, 0, &rep, "f", 1, nullkey, 0, NULL, NULL),
                     SN_ERROR);

    assert_true(sn_test_wait_for(s_is_up, r, 2000));
    sn_redis_stats_t st;
    sn_redis_stats(r, &st);
    assert_true(st.calls >= 3);
    assert_int_equal(st.timeouts, 0);
    sn_redis_destroy(&r);
    assert_null(r);
    free(key);
    free(ns);
}

typedef struct {
    sn_redis_t *r;
    const char *key;
    int n;
    int failures;
} s_worker_t;

static void *s_incr_thread(void *arg)
{
    s_worker_t *w = arg;
    for (int i = 0; i < w->n; i++) {
        redisReply *rep = NULL;
        if (s_cmd2(w->r, SN_REDIS_MAIN, 2000, &rep, "INCR", w->key) != SN_OK)
            w->failures++;
        else
            freeReplyObject(rep);
    }
    return NULL;
}

/* Many threads at once, and what one call costs (printed; bounded loosely for ASan). */
static void test_sn_redis_any_thread_and_cost(void **state)
{
    char *ns;
    sn_redis_t *r = s_new("threads", 1000, &ns);
    char *key = sn_strdupf("%scounter", ns);
    pthread_t th[4];
    s_worker_t w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (s_worker_t){.r = r, .key = key, .n = 300};
        assert_int_equal(pthread_create(&th[i], NULL, s_incr_thread, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    redisReply *rep = NULL;
    assert_int_equal(s_cmd2(r, SN_REDIS_MAIN, 0, &rep, "GET", key), SN_OK);
    assert_string_equal(rep->str, "1200");
    freeReplyObject(rep);

    const int n = 2000;
    int64_t t0 = sn_mono_us();
    for (int i = 0; i < n; i++) {
        assert_int_equal(s_cmd2(r, SN_REDIS_MAIN, 0, &rep, "PING", NULL), SN_OK);
        freeReplyObject(rep);
    }
    int64_t per_call = (sn_mono_us() - t0) / n;
    redisContext *c = redisConnectUnix(s_srv.unix_path);
    assert_true(c && !c->err);
    t0 = sn_mono_us();
    for (int i = 0; i < n; i++)
        freeReplyObject(redisCommand(c, "PING"));
    int64_t direct = (sn_mono_us() - t0) / n;
    redisFree(c);
    print_message("sn_redis_cmd PING: %lld us per call (direct hiredis: %lld us)\n",
                  (long long)per_call, (long long)direct);
    assert_true(per_call < 2000);
    sn_redis_destroy(&r);
    free(key);
    free(ns);
}

typedef struct {
    sn_redis_t *r;
    int timeout_ms;
    sn_rc_t rc;
    int64_t took_ms;
} s_slow_t;

static void *s_slow_call(void *arg)
{
    s_slow_t *s = arg;
    redisReply *rep = NULL;
    int64_t t0 = sn_mono_ms();
    s->rc = s_cmd2(s->r, SN_REDIS_MAIN, s->timeout_ms, &rep, "PING", NULL);
    s->took_ms = sn_mono_ms() - t0;
    if (rep)
        freeReplyObject(rep);
    return NULL;
}

/* kill -STOP: every call returns SN_AGAIN within its deadline, also when the Redis thread
 * is itself stuck in an earlier call; after -CONT calls work again. */
static void test_sn_redis_frozen_redis_deadline(void **state)
{
    char *ns;
    sn_redis_t *r = s_new("frozen", 2000, &ns);
    assert_true(sn_test_wait_for(s_ping_ok, r, 3000));
    assert_int_equal(kill(s_srv.pid, SIGSTOP), 0);

    redisReply *rep = NULL;
    int64_t t0 = sn_mono_ms();
    assert_int_equal(s_cmd2(r, SN_REDIS_MAIN, 200, &rep, "PING", NULL), SN_AGAIN);
    int64_t took = sn_mono_ms() - t0;
    assert_null(rep);
    assert_true(took >= 190 && took < 400);
    t0 = sn_mono_ms();
    assert_int_equal(s_cmd2(r, SN_REDIS_LEASE, 150, &rep, "PING", NULL), SN_AGAIN);
    took = sn_mono_ms() - t0;
    assert_true(took >= 140 && took < 350);

    /* The main thread is now busy for 1.5 s with a slow call; a second caller still gets
     * its answer (SN_AGAIN) at its own deadline. */
    s_slow_t slow = {.r = r, .timeout_ms = 1500};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_slow_call, &slow), 0);
    t0 = sn_mono_ms();
    while (sn_mono_ms() - t0 < 50) /* let the slow call reach the thread first */
        assert_int_equal(s_cmd2(r, SN_REDIS_LEASE, 10, &rep, "PING", NULL), SN_AGAIN);
    t0 = sn_mono_ms();
    assert_int_equal(s_cmd2(r, SN_REDIS_MAIN, 100, &rep, "PING", NULL), SN_AGAIN);
    took = sn_mono_ms() - t0;
    assert_true(took < 250);
    pthread_join(th, NULL);
    assert_int_equal(slow.rc, SN_AGAIN);
    assert_true(slow.took_ms < 1800);

    sn_redis_stats_t st;
    sn_redis_stats(r, &st);
    assert_true(st.timeouts >= 3);
    assert_true(st.again >= st.timeouts);

    assert_int_equal(kill(s_srv.pid, SIGCONT), 0);
    assert_true(sn_test_wait_for(s_ping_ok, r, 5000));
    sn_redis_destroy(&r);
    free(ns);
}

static const char s_lib[] = "redis.register_function('sn_test_echo', function(keys, args)\n"
                            "  redis.call('SET', keys[1], args[1])\n"
                            "  return args[1]\n"
                            "end)\n";

static bool s_echo_ok(void *arg)
{
    redisReply *rep = NULL;
    const char *keys[] = {"echo"};
    const char *args[] = {"hello"};
    if (sn_redis_fcall(arg, SN_REDIS_MAIN, 300, &rep, "sn_test_echo", 1, keys, 1, args, NULL) !=
        SN_OK)
        return false;
    bool ok = rep->type == REDIS_REPLY_STRING && strcmp(rep->str, "hello") == 0;
    freeReplyObject(rep);
    return ok;
}

/* Redis stopped: calls fail fast with SN_AGAIN; restarted: calls and Functions work
 * again; FUNCTION FLUSH: reloaded by itself. One log line per state change. */
static void test_sn_redis_restart_and_functions(void **state)
{
    char *logpath = sn_strdupf("/tmp/sn-redis-log-%d.txt", (int)getpid());
    int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    sn_log_set_fd(fd);

    char *ns;
    sn_redis_t *r = s_new("restart", 500, &ns);
    sn_redis_add_library(r, "sn_test_lib", s_lib);
    sn_redis_add_library(r, "sn_test_lib", s_lib); /* identical: no-op */
    assert_true(sn_test_wait_for(s_echo_ok, r, 3000));
    char *key = sn_strdupf("GET %secho", ns);
    char *got = sn_test_redis_cli(&s_srv, key);
    assert_string_equal(got, "hello");
    free(got);

    sn_test_redis_stop(&s_srv);
    redisReply *rep = NULL;
    for (int i = 0; i < 20; i++) {
        int64_t t0 = sn_mono_ms();
        assert_int_equal(s_cmd2(r, SN_REDIS_MAIN, 300, &rep, "PING", NULL), SN_AGAIN);
        assert_true(sn_mono_ms() - t0 < 400);
    }
    assert_true(sn_test_wait_for(s_is_down, r, 2000));

    assert_true(sn_test_redis_restart(&s_srv));
    assert_true(sn_test_wait_for(s_echo_ok, r, 5000));
    assert_true(sn_test_wait_for(s_is_up, r, 2000));
    sn_redis_stats_t st;
    sn_redis_stats(r, &st);
    assert_true(st.reconnects >= 1);

    got = sn_test_redis_cli(&s_srv, "FUNCTION FLUSH");
    assert_string_equal(got, "OK");
    free(got);
    assert_true(s_echo_ok(r)); /* "Function not found" -> reload -> retried once */

    sn_redis_destroy(&r);
    sn_log_set_fd(2);
    close(fd);
    assert_int_equal(sn_test_count_in_file(logpath, "main: lost connection"), 1);
    assert_int_equal(sn_test_count_in_file(logpath, "main: connected"), 2);
    unlink(logpath);
    free(logpath);
    free(key);
    free(ns);
}

/* A library Redis refuses is logged, and calls still end (error reply, no loop). */
static void test_sn_redis_bad_library(void **state)
{
    char *ns;
    sn_redis_t *r = s_new("badlib", 500, &ns);
    sn_redis_add_library(r, "sn_test_broken", "this is not lua (");
    redisReply *rep = NULL;
    const char *keys[] = {"x"};
    assert_int_equal(
        sn_redis_fcall(r, SN_REDIS_MAIN, 500, &rep, "sn_test_missing", 1, keys, 0, NULL, NULL),
        SN_OK);
    assert_int_equal(rep->type, REDIS_REPLY_ERROR);
    freeReplyObject(rep);
    assert_true(s_ping_ok(r));
    sn_redis_destroy(&r);
    free(ns);
}

/* The per-thread connection: XREAD BLOCK within its timeout, fast failure and backoff
 * when Redis is unreachable. */
static void test_sn_redis_conn_blocking_read(void **state)
{
    char *ns = sn_test_namespace("conn");
    sn_redis_opts_t o = {.unix_path = s_srv.unix_path, .namespace_ = ns, .timeout_ms = 300};
    sn_redis_conn_t *c = sn_redis_conn_new(&o);
    assert_non_null(c);
    assert_false(sn_redis_conn_is_up(c));
    assert_string_equal(sn_redis_conn_ns(c), ns);
    char *stream = sn_strdupf("%sevents", ns);
    const char *xread[] = {"XREAD", "BLOCK", "150", "STREAMS", stream, "$"};
    redisReply *rep = NULL;
    int64_t t0 = sn_mono_ms();
    assert_int_equal(sn_redis_conn_cmd(c, 1000, &rep, 6, xread, NULL), SN_OK);
    int64_t took = sn_mono_ms() - t0;
    assert_int_equal(rep->type, REDIS_REPLY_NIL);
    freeReplyObject(rep);
    assert_true(took >= 140 && took < 800);
    assert_true(sn_redis_conn_is_up(c));

    /* A block longer than the timeout: the call ends at the timeout, context dropped. */
    const char *xlong[] = {"XREAD", "BLOCK", "2000", "STREAMS", stream, "$"};
    t0 = sn_mono_ms();
    assert_int_equal(sn_redis_conn_cmd(c, 200, &rep, 6, xlong, NULL), SN_AGAIN);
    assert_true(sn_mono_ms() - t0 < 500);
    assert_false(sn_redis_conn_is_up(c));
    assert_true(sn_redis_conn_retry_at_ms(c) > 0);

    /* Unreachable: refused at once while the backoff runs. */
    sn_redis_opts_t gone = {.unix_path = "/tmp/sn-no-such-redis.sock", .timeout_ms = 300};
    sn_redis_conn_t *g = sn_redis_conn_new(&gone);
    const char *ping[] = {"PING"};
    assert_int_equal(sn_redis_conn_cmd(g, 0, &rep, 1, ping, NULL), SN_AGAIN);
    t0 = sn_mono_ms();
    assert_int_equal(sn_redis_conn_cmd(g, 0, &rep, 1, ping, NULL), SN_AGAIN);
    assert_true(sn_mono_ms() - t0 < 50);
    assert_int_equal(sn_redis_conn_cmd(g, 0, &rep, 0, ping, NULL), SN_ERROR);
    sn_redis_conn_destroy(&g);

    sn_redis_conn_destroy(&c);
    assert_null(c);
    free(stream);
    free(ns);
}

/* No Redis at all: new works, calls fail with SN_AGAIN, destroy is clean. */
static void test_sn_redis_no_server(void **state)
{
    sn_redis_opts_t o = {.unix_path = "/tmp/sn-no-such-redis.sock", .timeout_ms = 200};
    sn_redis_t *r = sn_redis_new(&o);
    assert_non_null(r);
    assert_string_equal(sn_redis_ns(r), "sentinel:");
    redisReply *rep = NULL;
    int64_t t0 = sn_mono_ms();
    assert_int_equal(s_cmd2(r, SN_REDIS_MAIN, 0, &rep, "PING", NULL), SN_AGAIN);
    assert_true(sn_mono_ms() - t0 < 300);
    assert_false(sn_redis_is_up(r));
    sn_redis_destroy(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_redis_bad_opts),
        cmocka_unit_test(test_sn_redis_calls_and_binary_values),
        cmocka_unit_test(test_sn_redis_any_thread_and_cost),
        cmocka_unit_test(test_sn_redis_frozen_redis_deadline),
        cmocka_unit_test(test_sn_redis_restart_and_functions),
        cmocka_unit_test(test_sn_redis_bad_library),
        cmocka_unit_test(test_sn_redis_conn_blocking_read),
        cmocka_unit_test(test_sn_redis_no_server),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
