/* Integration tests for sn_leader against a real redis-server: one leader per role,
 * takeover after the holder stops renewing, a standby's next try right after the
 * holder's lock lapses, fenced writes (old and forged fences
 * refused), the fence floored at Redis TIME, step-down when Redis goes away or the lock
 * is lost, token-checked release. */
#include "sn_test.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sentinel/sn_leader.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define TTL_MS 450

static sn_test_redis_t s_srv;

static int s_setup(void **state)
{
    return sn_test_redis_start(&s_srv) ? 0 : -1;
}

static int s_teardown(void **state)
{
    if (s_srv.pid > 0)
        kill(s_srv.pid, SIGCONT);
    sn_test_redis_destroy(&s_srv);
    return 0;
}

static sn_redis_t *s_redis(const char *ns)
{
    sn_redis_opts_t o = {.unix_path = s_srv.unix_path, .namespace_ = ns, .timeout_ms = 500};
    sn_redis_t *r = sn_redis_new(&o);
    assert_non_null(r);
    return r;
}

/* redis-cli "<cmd> <ns><key> [extra]" */
static char *s_cli(const char *cmd, const char *ns, const char *key, const char *extra)
{
    char *args = sn_strdupf("%s %s%s %s", cmd, ns, key, extra ? extra : "");
    char *out = sn_test_redis_cli(&s_srv, args);
    free(args);
    return out;
}

static void test_sn_leader_bad_args(void **state)
{
    char *ns = sn_test_namespace("bad");
    sn_redis_t *r = s_redis(ns);
    assert_null(sn_leader_new(r, "", "a", TTL_MS));
    assert_null(sn_leader_new(r, NULL, "a", TTL_MS));
    assert_null(sn_leader_new(r, "ro|le", "a", TTL_MS));
    assert_null(sn_leader_new(r, "role", "", TTL_MS));
    assert_null(sn_leader_new(r, "role", "a", 5));
    sn_leader_t *l = sn_leader_new(r, "role", "a", TTL_MS);
    assert_non_null(l);
    assert_string_equal(sn_leader_role(l), "role");
    assert_string_equal(sn_leader_instance(l), "a");
    assert_int_equal(sn_leader_renew_interval_ms(l), TTL_MS / 3);
    assert_false(sn_leader_is_leader(l));
    assert_int_equal(sn_leader_fence(l), 0);
    assert_int_equal(sn_leader_renew(l), SN_DECLINED); /* not leader */
    const char *f[] = {"x"}, *v[] = {"1"}, *nul[] = {NULL};
    assert_int_equal(sn_leader_fenced_hset(l, 1, NULL, 1, f, v, NULL), SN_ERROR);
    assert_int_equal(sn_leader_fenced_hset(l, 1, "k", 0, f, v, NULL), SN_ERROR);
    assert_int_equal(sn_leader_fenced_hset(l, 1, "k", 1, nul, v, NULL), SN_ERROR);
    assert_int_equal(sn_leader_fenced_hset(l, 1, "k", 1, f, nul, NULL), SN_ERROR);
    /* No lock at all: every fence is refused. */
    assert_int_equal(sn_leader_fenced_hset(l, 1, "k", 1, f, v, NULL), SN_DECLINED);
    sn_leader_destroy(&l);
    assert_null(l);
    sn_leader_destroy(NULL);
    sn_redis_destroy(&r);
    free(ns);
}

/* Paces a tick loop (the loop's timer, not a synchronisation): sleeps until @until_ms. */
static void s_pace(int64_t until_ms)
{
    int64_t left = until_ms - sn_mono_ms();
    if (left > 0) {
        struct timespec ts = {left / 1000, (left % 1000) * 1000000};
        nanosleep(&ts, NULL);
    }
}

static bool s_not_leads(void *arg)
{
    return !sn_leader_is_leader(arg);
}

/* Two instances on one role: exactly one leads; when it stops renewing, the other takes
 * over within ttl + one renew interval, and never while the first still thinks it leads. */
static void test_sn_leader_one_leader_and_takeover(void **state)
{
    char *ns = sn_test_namespace("takeover");
    sn_redis_t *ra = s_redis(ns), *rb = s_redis(ns);
    sn_leader_t *a = sn_leader_new(ra, "pilot", "a", TTL_MS);
    sn_leader_t *b = sn_leader_new(rb, "pilot", "b", TTL_MS);
    int interval = sn_leader_renew_interval_ms(a);

    assert_int_equal(sn_leader_tick(a, sn_mono_ms()), SN_LEADER_ELECTED);
    uint64_t fa = sn_leader_fence(a);
    assert_true(fa > 0);
    int64_t last_renew = sn_mono_ms();
    for (int i = 0; i < 6; i++) { /* both tick for two ttls: a keeps it, b never gets it */
        int64_t t = sn_mono_ms();
        last_renew = t;
        assert_int_equal(sn_leader_tick(a, t), SN_LEADER_NONE);
        assert_int_equal(sn_leader_tick(b, t), SN_LEADER_NONE);
        assert_true(sn_leader_is_leader(a));
        assert_false(sn_leader_is_leader(b));
        uint64_t f = 0;
        assert_int_equal(sn_leader_try(b, &f), SN_DECLINED);
        s_pace(t + interval);
    }
    assert_int_equal(sn_leader_fence(a), fa); /* renewals keep the fence */
    char *v = s_cli("GET", ns, "leader:pilot", NULL);
    char *want = sn_strdupf("%" PRIu64 "|", fa);
    assert_true(strncmp(v, want, strlen(want)) == 0);
    assert_non_null(strstr(v, "|a"));
    free(v);
    free(want);

    /* a stops renewing (frozen loop); b ticks every interval. */
    int64_t elected_at = 0;
    bool a_led_when_b_won = true;
    while (sn_mono_ms() < last_renew + 3 * TTL_MS) {
        int64_t t = sn_mono_ms();
        if (sn_leader_tick(b, t) == SN_LEADER_ELECTED) {
            elected_at = t;
            a_led_when_b_won = sn_leader_is_leader(a);
            break;
        }
        s_pace(t + interval);
    }
    assert_true(elected_at > 0);
    assert_false(a_led_when_b_won);
    assert_true(elected_at - last_renew <= TTL_MS + interval + 100);
    assert_true(sn_leader_fence(b) > fa);
    /* a wakes up: its renewal finds b's token and it steps down at once. */
    assert_int_equal(sn_leader_tick(a, sn_mono_ms()), SN_LEADER_STEPPED_DOWN);
    assert_false(sn_leader_is_leader(a));
    assert_true(sn_leader_is_leader(b));

    sn_leader_destroy(&a); /* must not release b's lock */
    assert_true(sn_leader_is_leader(b));
    assert_int_equal(sn_leader_renew(b), SN_OK);
    sn_leader_destroy(&b);
    v = s_cli("EXISTS", ns, "leader:pilot", NULL);
    assert_string_equal(v, "0");
    free(v);
    sn_redis_destroy(&ra);
    sn_redis_destroy(&rb);
    free(ns);
}

/* The standby's next try follows the holder's lock: while the holder renews, a standby
 * tries once per renew interval (no tight loop); once the holder stops, the standby's
 * next try lands just after the lock lapses, not up to a renew interval later. The
 * standby starts half an interval out of phase with the holder, where a fixed-interval
 * standby would take over ~interval/2 (150 ms) after the expiry. */
#define S_PHASE_TTL_MS 900

static void test_sn_leader_standby_tries_right_after_expiry(void **state)
{
    char *ns = sn_test_namespace("expiry");
    sn_redis_t *ra = s_redis(ns), *rb = s_redis(ns);
    sn_leader_t *a = sn_leader_new(ra, "pilot", "a", S_PHASE_TTL_MS);
    sn_leader_t *b = sn_leader_new(rb, "pilot", "b", S_PHASE_TTL_MS);
    int interval = sn_leader_renew_interval_ms(a);
    assert_int_equal(sn_leader_next_tick_ms(b), 0); /* before the first tick: now */

    int64_t t = sn_mono_ms();
    assert_int_equal(sn_leader_tick(a, t), SN_LEADER_ELECTED);
    int64_t next_a = sn_leader_next_tick_ms(a);
    assert_true(next_a >= t + interval && next_a <= sn_mono_ms() + interval);
    s_pace(t + interval / 2);

    /* Both run on their own schedules for two ttls: a renews every interval, b tries
     * once per interval (the lock always has more than an interval left). */
    int b_ticks = 0;
    int64_t last_renew_start = t, last_renew_end = t;
    int64_t end = sn_mono_ms() + 2 * S_PHASE_TTL_MS;
    while (sn_mono_ms() < end) {
        int64_t now = sn_mono_ms();
        if (now >= sn_leader_next_tick_ms(a)) {
            last_renew_start = now;
            assert_int_equal(sn_leader_tick(a, now), SN_LEADER_NONE);
            last_renew_end = sn_mono_ms();
            next_a = sn_leader_next_tick_ms(a);
            assert_true(next_a >= last_renew_end + interval - 1 &&
                        next_a <= last_renew_end + interval);
        }
        now = sn_mono_ms();
        if (now >= sn_leader_next_tick_ms(b)) {
            assert_int_equal(sn_leader_tick(b, now), SN_LEADER_NONE);
            b_ticks++;
            int64_t next_b = sn_leader_next_tick_ms(b);
            assert_true(next_b >= sn_mono_ms() + 5 - 1 && next_b <= sn_mono_ms() + interval);
        }
        int64_t wake = sn_leader_next_tick_ms(a) < sn_leader_next_tick_ms(b)
                           ? sn_leader_next_tick_ms(a)
                           : sn_leader_next_tick_ms(b);
        s_pace(wake);
    }
    assert_true(sn_leader_is_leader(a));
    assert_true(b_ticks >= 2 * S_PHASE_TTL_MS / interval - 1);
    assert_true(b_ticks <= 2 * S_PHASE_TTL_MS / interval + 2);

    /* a freezes (no more ticks). Its lock lapses between last_renew_start + ttl and
     * last_renew_end + ttl; b, ticking only when it asks to, takes over right after. */
    int64_t elected_at = 0;
    int tries = 0;
    end = last_renew_end + 3 * S_PHASE_TTL_MS;
    while (!elected_at && sn_mono_ms() < end) {
        s_pace(sn_leader_next_tick_ms(b));
        int64_t now = sn_mono_ms();
        tries++;
        if (sn_leader_tick(b, now) == SN_LEADER_ELECTED)
            elected_at = now;
    }
    assert_true(elected_at > 0);
    int64_t late = elected_at - (last_renew_end + S_PHASE_TTL_MS);
    sn_info("test", "standby elected %" PRId64 " ms after the lock's latest expiry, %d tries", late,
            tries);
    assert_true(elected_at >= last_renew_start + S_PHASE_TTL_MS);
    assert_true(late <= 75);
    assert_true(tries <= S_PHASE_TTL_MS / interval + 3);
    /* The new holder renews every interval; the old one steps down at its next tick. */
    int64_t next_b = sn_leader_next_tick_ms(b);
    assert_true(next_b >= elected_at + interval && next_b <= sn_mono_ms() + interval);
    assert_int_equal(sn_leader_tick(a, sn_mono_ms()), SN_LEADER_STEPPED_DOWN);
    assert_true(sn_leader_next_tick_ms(a) <= sn_mono_ms() + interval);

    /* A lock without expiry (set by hand): the standby falls back to the interval. */
    sn_leader_destroy(&b);
    char *v = s_cli("SET", ns, "leader:pilot", "'1|tok|other'");
    assert_string_equal(v, "OK");
    free(v);
    t = sn_mono_ms();
    assert_int_equal(sn_leader_try(a, NULL), SN_DECLINED);
    assert_true(sn_leader_next_tick_ms(a) >= t + interval);
    assert_true(sn_leader_next_tick_ms(a) <= sn_mono_ms() + interval);
    sn_leader_destroy(&a);
    sn_redis_destroy(&ra);
    sn_redis_destroy(&rb);
    free(ns);
}

static sn_rc_t s_write(sn_leader_t *l, uint64_t fence, const char *value)
{
    const char *f[] = {"who"}, *v[] = {value};
    return sn_leader_fenced_hset(l, fence, "target", 1, f, v, NULL);
}

/* Equality, not order: an old fence and a forged higher one are both refused. */
static void test_sn_leader_fenced_writes(void **state)
{
    char *ns = sn_test_namespace("fenced");
    sn_redis_t *r = s_redis(ns);
    sn_leader_t *a = sn_leader_new(r, "pilot", "a", TTL_MS);
    sn_leader_t *b = sn_leader_new(r, "pilot", "b", TTL_MS);
    uint64_t fa = 0, fb = 0;
    assert_int_equal(sn_leader_try(a, &fa), SN_OK);
    assert_int_equal(s_write(a, fa, "a"), SN_OK);
    assert_int_equal(sn_leader_release(a), SN_OK);
    assert_false(sn_leader_is_leader(a));
    assert_int_equal(sn_leader_try(b, &fb), SN_OK);
    assert_true(fb > fa);

    assert_int_equal(s_write(a, fa, "old"), SN_DECLINED);
    assert_int_equal(s_write(a, fb + 1000, "forged"), SN_DECLINED);
    assert_int_equal(s_write(a, UINT64_MAX, "forged"), SN_DECLINED);
    assert_int_equal(s_write(a, 0, "zero"), SN_DECLINED);
    assert_int_equal(s_write(b, fb, "b"), SN_OK);
    char *v = s_cli("HGET", ns, "target", "who");
    assert_string_equal(v, "b");
    free(v);

    /* Binary values pass intact. */
    const char bin[] = {'x', 0, 'y'};
    const char *f[] = {"bin"}, *vals[] = {bin};
    size_t lens[] = {sizeof bin};
    assert_int_equal(sn_leader_fenced_hset(b, fb, "target", 1, f, vals, lens), SN_OK);
    v = s_cli("HSTRLEN", ns, "target", "bin");
    assert_string_equal(v, "3");
    free(v);

    /* Release checks the token: a cannot release b's lock. */
    assert_int_equal(sn_leader_release(a), SN_DECLINED);
    assert_true(sn_leader_is_leader(b));
    sn_leader_destroy(&a);
    sn_leader_destroy(&b);
    sn_redis_destroy(&r);
    free(ns);
}

/* The fence never falls below Redis TIME in µs, so it stays monotonic even when the
 * counter is lost; and the Functions come back by themselves after FUNCTION FLUSH. */
static void test_sn_leader_fence_floored_at_time(void **state)
{
    char *ns = sn_test_namespace("floor");
    sn_redis_t *r = s_redis(ns);
    sn_leader_t *a = sn_leader_new(r, "pilot", "a", TTL_MS);
    uint64_t f1 = 0, f2 = 0, f3 = 0;
    assert_int_equal(sn_leader_try(a, &f1), SN_OK);
    uint64_t wall_us = (uint64_t)sn_wall_ms() * 1000;
    assert_true(f1 + 60ull * 1000000 > wall_us && f1 < wall_us + 60ull * 1000000);
    assert_int_equal(sn_leader_release(a), SN_OK);

    char *v = s_cli("DEL", ns, "fence:pilot", NULL);
    assert_string_equal(v, "1");
    free(v);
    assert_int_equal(sn_leader_try(a, &f2), SN_OK);
    assert_true(f2 > f1);
    v = s_cli("GET", ns, "fence:pilot", NULL);
    char *want = sn_strdupf("%" PRIu64, f2);
    assert_string_equal(v, want);
    free(v);
    free(want);

    v = sn_test_redis_cli(&s_srv, "FUNCTION FLUSH");
    assert_string_equal(v, "OK");
    free(v);
    assert_int_equal(sn_leader_renew(a), SN_OK);
    /* A new term of the same holder gets a new, higher fence. */
    assert_int_equal(sn_leader_try(a, &f3), SN_OK);
    assert_true(f3 > f2);
    sn_leader_destroy(&a);
    sn_redis_destroy(&r);
    free(ns);
}

/* Redis goes away: the leader steps down within its ttl, also with no tick at all
 * (is_leader follows the local deadline); it is elected again when Redis is back. */
static void test_sn_leader_steps_down_without_redis(void **state)
{
    char *ns = sn_test_namespace("down");
    sn_redis_t *r = s_redis(ns);
    sn_leader_t *a = sn_leader_new(r, "pilot", "a", TTL_MS);
    assert_int_equal(sn_leader_tick(a, sn_mono_ms()), SN_LEADER_ELECTED);

    /* Frozen Redis, loop keeps ticking: the first failed renewal steps down. */
    assert_int_equal(sn_leader_renew(a), SN_OK);
    int64_t t0 = sn_mono_ms();
    assert_int_equal(kill(s_srv.pid, SIGSTOP), 0);
    int64_t down_at = 0;
    while (sn_mono_ms() < t0 + 2 * TTL_MS) {
        int64_t t = sn_mono_ms();
        if (sn_leader_tick(a, t) == SN_LEADER_STEPPED_DOWN) {
            down_at = sn_mono_ms();
            break;
        }
        s_pace(t + sn_leader_renew_interval_ms(a));
    }
    assert_true(down_at > 0);
    assert_false(sn_leader_is_leader(a));
    assert_true(down_at - t0 <= TTL_MS);
    assert_int_equal(kill(s_srv.pid, SIGCONT), 0);

    /* No tick at all (a frozen loop): is_leader turns false by the local deadline. */
    uint64_t f = 0;
    int64_t start = sn_mono_ms();
    while (sn_leader_try(a, &f) != SN_OK && sn_mono_ms() < start + 5000)
        s_pace(sn_mono_ms() + 20);
    assert_true(sn_leader_is_leader(a));
    t0 = sn_mono_ms();
    sn_test_redis_stop(&s_srv);
    assert_true(sn_test_wait_for(s_not_leads, a, TTL_MS));
    assert_true(sn_mono_ms() - t0 <= TTL_MS);
    assert_int_equal(sn_leader_tick(a, sn_mono_ms()), SN_LEADER_STEPPED_DOWN);
    assert_int_equal(sn_leader_tick(a, sn_mono_ms()), SN_LEADER_NONE); /* Redis down */

    assert_true(sn_test_redis_restart(&s_srv));
    start = sn_mono_ms();
    sn_leader_change_t ch = SN_LEADER_NONE;
    while (ch != SN_LEADER_ELECTED && sn_mono_ms() < start + 5000) {
        int64_t t = sn_mono_ms();
        ch = sn_leader_tick(a, t);
        if (ch != SN_LEADER_ELECTED)
            s_pace(t + 20);
    }
    assert_int_equal(ch, SN_LEADER_ELECTED);
    assert_true(sn_leader_fence(a) > f);
    sn_leader_destroy(&a);
    sn_redis_destroy(&r);
    free(ns);
}

/* The lock is deleted behind the holder's back and taken by another: the holder's
 * renewal is refused (token mismatch) and it steps down at once. */
static void test_sn_leader_token_mismatch(void **state)
{
    char *ns = sn_test_namespace("token");
    sn_redis_t *r = s_redis(ns);
    sn_leader_t *a = sn_leader_new(r, "pilot", "a", TTL_MS);
    sn_leader_t *b = sn_leader_new(r, "pilot", "b", TTL_MS);
    assert_int_equal(sn_leader_try(a, NULL), SN_OK);
    char *v = s_cli("DEL", ns, "leader:pilot", NULL);
    assert_string_equal(v, "1");
    free(v);
    assert_int_equal(sn_leader_try(b, NULL), SN_OK);
    assert_int_equal(sn_leader_renew(a), SN_DECLINED);
    assert_false(sn_leader_is_leader(a));
    assert_int_equal(sn_leader_fence(a), 0);
    assert_int_equal(sn_leader_renew(b), SN_OK);
    sn_leader_destroy(&a);
    sn_leader_destroy(&b);
    sn_redis_destroy(&r);
    free(ns);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_leader_bad_args),
        cmocka_unit_test(test_sn_leader_one_leader_and_takeover),
        cmocka_unit_test(test_sn_leader_standby_tries_right_after_expiry),
        cmocka_unit_test(test_sn_leader_fenced_writes),
        cmocka_unit_test(test_sn_leader_fence_floored_at_time),
        cmocka_unit_test(test_sn_leader_steps_down_without_redis),
        cmocka_unit_test(test_sn_leader_token_mismatch),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
