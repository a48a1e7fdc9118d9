/* Leadership through real processes: failover after kill -9 within ttl + one renew
 * interval, fencing of stale and forged writes, a frozen leader that wakes up and steps
 * down, and Redis stopped and restarted under running agents. */
#include "sn_mesh.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_leader.h"
#include "sentinel/sn_redis.h"

#define TTL_MS 1500
#define RENEW_MS 500

/* The instance holding the test-leader lock ("" if none) and its fence. */
static void s_lock(sn_mesh_t *m, char *instance, size_t len, uint64_t *fence)
{
    char *v = sn_mesh_get(m, "leader:test-leader");
    instance[0] = '\0';
    *fence = 0;
    if (v && *v) {
        char *bar1 = strchr(v, '|');
        char *bar2 = bar1 ? strchr(bar1 + 1, '|') : NULL;
        if (bar2) {
            *fence = strtoull(v, NULL, 10);
            sn_strlcpy(instance, bar2 + 1, len);
        }
    }
    free(v);
}

typedef struct {
    sn_mesh_t *m;
    const char *not_this; /* wait for a holder other than this ("" = any) */
} s_lock_wait_t;

static bool s_lock_held(void *arg)
{
    s_lock_wait_t *w = arg;
    char who[64];
    uint64_t fence;
    s_lock(w->m, who, sizeof who, &fence);
    return who[0] && strcmp(who, w->not_this) != 0;
}

static bool s_wait_holder(sn_mesh_t *m, const char *not_this, int timeout_ms)
{
    s_lock_wait_t w = {m, not_this};
    return sn_test_wait_for(s_lock_held, &w, timeout_ms);
}

static void test_mesh_leader_failover_fencing_and_frozen_leader(void **state)
{
    sn_mesh_t m;
    assert_true(sn_mesh_start(&m, "leader", NULL));
    sn_mesh_agent(&m, "test-leader", "lead1");
    sn_mesh_agent(&m, "test-leader", "lead2");
    assert_true(s_wait_holder(&m, "", 10000));
    char first[64];
    uint64_t first_fence;
    s_lock(&m, first, sizeof first, &first_fence);
    assert_true(first_fence > 0);
    /* Exactly one leads: the other registers as a follower. */
    const char *other = strcmp(first, "lead1") == 0 ? "lead2" : "lead1";
    assert_true(sn_mesh_wait_log(&m, first, "elected leader", 5000));
    /* Its term is on record before it dies (the kill below must not race the write). */
    char term_line[96];
    snprintf(term_line, sizeof term_line, "term recorded fence=%llu rc=ok",
             (unsigned long long)first_fence);
    assert_true(sn_mesh_wait_log(&m, first, term_line, 5000));
    assert_int_equal(sn_test_count_in_file(sn_mesh_find(&m, other)->log, "elected leader"), 0);

    /* kill -9 the leader: the other leads within ttl + one renew interval. */
    sn_mesh_agent_t *victim = sn_mesh_find(&m, first);
    int64_t t0 = sn_mono_ms();
    kill(victim->pid, SIGKILL);
    assert_true(sn_test_stop(victim->pid, SIGKILL, 2000) >= 0);
    victim->pid = 0;
    assert_true(s_wait_holder(&m, first, TTL_MS + RENEW_MS + 2000));
    int64_t failover_ms = sn_mono_ms() - t0;
    char second[64];
    uint64_t second_fence;
    s_lock(&m, second, sizeof second, &second_fence);
    assert_string_equal(second, other);
    assert_true(second_fence > first_fence);
    fprintf(stderr, "failover took %lld ms (ttl %d + renew %d)\n", (long long)failover_ms, TTL_MS,
            RENEW_MS);
    assert_true(failover_ms <= TTL_MS + RENEW_MS + 250);

    /* Fencing: the old fence and a forged higher one are refused, the current one works. */
    sn_redis_opts_t ro = {.unix_path = m.redis.unix_path, .namespace_ = m.ns, .timeout_ms = 1000};
    sn_redis_t *redis = sn_redis_new(&ro);
    sn_leader_t *probe = sn_leader_new(redis, "test-leader", "probe", TTL_MS);
    const char *fields[] = {"by"};
    const char *values[] = {"test"};
    assert_int_equal(
        sn_leader_fenced_hset(probe, first_fence, "test:fenced", 1, fields, values, NULL),
        SN_DECLINED);
    assert_int_equal(sn_leader_fenced_hset(probe, second_fence + 1000000, "test:fenced", 1, fields,
                                           values, NULL),
                     SN_DECLINED);
    assert_int_equal(
        sn_leader_fenced_hset(probe, second_fence, "test:fenced", 1, fields, values, NULL), SN_OK);

    /* Freeze the leader past its ttl: a third instance takes over; the frozen one wakes,
     * steps down and acts no more. */
    sn_mesh_agent(&m, "test-leader", "lead3");
    sn_mesh_agent_t *frozen = sn_mesh_find(&m, second);
    snprintf(term_line, sizeof term_line, "term recorded fence=%llu rc=ok",
             (unsigned long long)second_fence);
    assert_true(sn_mesh_wait_log(&m, second, term_line, 5000));
    kill(frozen->pid, SIGSTOP);
    assert_true(s_wait_holder(&m, second, TTL_MS + RENEW_MS + 5000));
    char third[64];
    uint64_t third_fence;
    s_lock(&m, third, sizeof third, &third_fence);
    assert_string_equal(third, "lead3");
    kill(frozen->pid, SIGCONT);
    assert_true(sn_mesh_wait_log(&m, second, "stepped down", 5000));
    /* Its old fence is refused; the lock stays with lead3; its registration says follower. */
    assert_int_equal(
        sn_leader_fenced_hset(probe, second_fence, "test:fenced", 1, fields, values, NULL),
        SN_DECLINED);
    char *key = sn_strdupf("agent:test-leader:%s", second);
    bool is_follower = false;
    for (int64_t end = sn_mono_ms() + 5000; !is_follower && sn_mono_ms() < end;) {
        char *flag = sn_mesh_hget(&m, key, "leader");
        is_follower = flag && strcmp(flag, "0") == 0;
        free(flag);
    }
    free(key);
    assert_true(is_follower);
    char now_holder[64];
    uint64_t now_fence;
    s_lock(&m, now_holder, sizeof now_holder, &now_fence);
    assert_string_equal(now_holder, "lead3");
    assert_true(now_fence == third_fence);
    /* Every term was recorded with its own fence, by the instance that held it. */
    snprintf(term_line, sizeof term_line, "term recorded fence=%llu rc=ok",
             (unsigned long long)third_fence);
    assert_true(sn_mesh_wait_log(&m, "lead3", term_line, 5000));
    char *cmd = sn_strdupf("HGETALL '%stest:terms'", m.ns);
    char *all = sn_test_redis_cli(&m.redis, cmd);
    free(cmd);
    char f1[32], f2[32], f3[32];
    snprintf(f1, sizeof f1, "%llu", (unsigned long long)first_fence);
    snprintf(f2, sizeof f2, "%llu", (unsigned long long)second_fence);
    snprintf(f3, sizeof f3, "%llu", (unsigned long long)third_fence);
    assert_non_null(strstr(all, f1));
    assert_non_null(strstr(all, f2));
    assert_non_null(strstr(all, f3));
    free(all);

    sn_leader_destroy(&probe);
    sn_redis_destroy(&redis);
    assert_int_equal(sn_mesh_stop(&m), 0);
}

static void test_mesh_redis_restart_leaders_step_down_agents_survive(void **state)
{
    sn_mesh_t m;
    assert_true(sn_mesh_start(&m, "rrestart", NULL));
    sn_mesh_agent(&m, "test-leader", "lead1");
    sn_mesh_agent(&m, "test-slow", "slow1");
    sn_mesh_agent(&m, "test-echo", "echo1");
    assert_true(sn_mesh_wait_service(&m, "test.jobs.submit", 1, 15000));
    assert_true(sn_mesh_wait_service(&m, "test.echo", 1, 15000));

    sn_test_redis_stop(&m.redis);
    int64_t t0 = sn_mono_ms();
    assert_true(sn_mesh_wait_log(&m, "lead1", "stepped down", TTL_MS + RENEW_MS + 1000));
    fprintf(stderr, "stepped down %lld ms after redis stopped\n", (long long)(sn_mono_ms() - t0));
    /* Agents keep running; work that needs no Redis still flows. */
    for (size_t i = 0; i < m.agent_count; i++)
        assert_true(sn_test_alive(m.agents[i].pid));
    sn_envelope_t *reply = NULL;
    assert_int_equal(sn_mesh_call_note(&m, "test.echo", "no-redis", 0, 5000, &reply, NULL), SN_OK);
    sn_envelope_free(&reply);

    assert_true(sn_test_redis_restart(&m.redis));
    /* Leadership comes back and the Redis Functions still work (reloaded). */
    assert_true(sn_mesh_wait_service(&m, "test.jobs.submit", 1, 15000));
    assert_int_equal(
        sn_mesh_call_note(&m, "test.jobs.submit", "post-restart", 100, 5000, &reply, NULL), SN_OK);
    sn_envelope_free(&reply);
    bool done = false;
    for (int64_t end = sn_mono_ms() + 10000; !done && sn_mono_ms() < end;) {
        char *st = sn_mesh_hget(&m, "job:post-restart", "state");
        done = st && strcmp(st, "done") == 0;
        free(st);
    }
    assert_true(done);
    for (size_t i = 0; i < m.agent_count; i++)
        assert_true(sn_test_alive(m.agents[i].pid));
    assert_int_equal(sn_mesh_stop(&m), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mesh_leader_failover_fencing_and_frozen_leader),
        cmocka_unit_test(test_mesh_redis_restart_leaders_step_down_agents_survive),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
