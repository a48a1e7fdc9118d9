/* The job ledger through the real mesh: a worker killed or frozen while it holds a claimed
 * job; the owning leader re-dispatches after the lease lapses; the side effect happens
 * exactly once and the frozen worker's late writes are refused by the epoch check. */
#include "sn_mesh.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    sn_mesh_t *mesh;
    const char *job;
    const char *want;
} s_job_wait_t;

static bool s_job_state_is(void *arg)
{
    s_job_wait_t *w = arg;
    char *key = sn_strdupf("job:%s", w->job);
    char *state = sn_mesh_hget(w->mesh, key, "state");
    free(key);
    bool ok = state && strcmp(state, w->want) == 0;
    free(state);
    return ok;
}

static bool s_wait_job(sn_mesh_t *m, const char *job, const char *state, int timeout_ms)
{
    s_job_wait_t w = {m, job, state};
    return sn_test_wait_for(s_job_state_is, &w, timeout_ms);
}

static char *s_job_field(sn_mesh_t *m, const char *job, const char *field)
{
    char *key = sn_strdupf("job:%s", job);
    char *v = sn_mesh_hget(m, key, field);
    free(key);
    return v;
}

static int s_effects(sn_mesh_t *m, const char *job)
{
    char *key = sn_strdupf("test:effects:%s", job);
    char *v = sn_mesh_get(m, key);
    free(key);
    int n = v && *v ? (int)strtol(v, NULL, 10) : 0;
    free(v);
    return n;
}

/* Starts a leader and two slow workers and submits @job (work @work_ms). Returns the
 * instance that claimed it (static storage). */
static const char *s_setup_and_submit(sn_mesh_t *m, const char *tag, const char *job, int work_ms)
{
    assert_true(sn_mesh_start(m, tag, NULL));
    sn_mesh_agent(m, "test-leader", "lead1");
    sn_mesh_agent(m, "test-slow", "slowA");
    sn_mesh_agent(m, "test-slow", "slowB");
    assert_true(sn_mesh_wait_service(m, "test.slow", 2, 15000));
    assert_true(sn_mesh_wait_service(m, "test.jobs.submit", 1, 15000));
    sn_envelope_t *reply = NULL;
    sn_nak_reason_t nak;
    assert_int_equal(sn_mesh_call_note(m, "test.jobs.submit", job, work_ms, 5000, &reply, &nak),
                     SN_OK);
    assert_non_null(reply);
    assert_string_equal(reply->ack->id, job);
    sn_envelope_free(&reply);
    assert_true(s_wait_job(m, job, "claimed", 5000));
    static char owner[64];
    char *o = s_job_field(m, job, "owner");
    sn_strlcpy(owner, o, sizeof owner);
    free(o);
    assert_non_null(sn_mesh_find(m, owner));
    return owner;
}

static void test_mesh_ledger_killed_worker_job_redispatched_once(void **state)
{
    sn_mesh_t m;
    const char *owner = s_setup_and_submit(&m, "kill", "job-kill", 1500);
    sn_mesh_agent_t *victim = sn_mesh_find(&m, owner);
    kill(victim->pid, SIGKILL);
    assert_true(sn_test_stop(victim->pid, SIGKILL, 2000) >= 0);
    victim->pid = 0;
    /* Lease 1000 ms + leader tick 200 ms + the other worker's 1500 ms of work. */
    assert_true(s_wait_job(&m, "job-kill", "done", 15000));
    char *attempt = s_job_field(&m, "job-kill", "attempt");
    char *done_by = s_job_field(&m, "job-kill", "owner");
    assert_string_equal(attempt, "2");
    assert_string_not_equal(done_by, owner);
    free(attempt);
    free(done_by);
    assert_int_equal(s_effects(&m, "job-kill"), 1);
    assert_int_equal(sn_mesh_stop(&m), 0);
}

static void test_mesh_ledger_frozen_worker_late_writes_refused(void **state)
{
    sn_mesh_t m;
    const char *owner = s_setup_and_submit(&m, "freeze", "job-freeze", 2000);
    char frozen[64];
    sn_strlcpy(frozen, owner, sizeof frozen);
    sn_mesh_agent_t *victim = sn_mesh_find(&m, frozen);
    kill(victim->pid, SIGSTOP);
    /* Another worker finishes it after the lease lapsed. */
    assert_true(s_wait_job(&m, "job-freeze", "done", 15000));
    char *done_by = s_job_field(&m, "job-freeze", "owner");
    assert_string_not_equal(done_by, frozen);
    free(done_by);
    assert_int_equal(s_effects(&m, "job-freeze"), 1);
    kill(victim->pid, SIGCONT);
    /* The frozen worker wakes, its renewal (or its side effect) is refused by the epoch
     * check, and it stops acting. */
    assert_true(sn_mesh_wait_log(&m, frozen, "lease lost job=job-freeze", 5000) ||
                sn_mesh_wait_log(&m, frozen, "side effect refused job=job-freeze", 100));
    assert_int_equal(s_effects(&m, "job-freeze"), 1);
    char *state_now = s_job_field(&m, "job-freeze", "state");
    assert_string_equal(state_now, "done");
    free(state_now);
    assert_int_equal(sn_mesh_stop(&m), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mesh_ledger_killed_worker_job_redispatched_once),
        cmocka_unit_test(test_mesh_ledger_frozen_worker_late_writes_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
