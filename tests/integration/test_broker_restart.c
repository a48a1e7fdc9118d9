/* sentinel-broker as a process: killed with SIGKILL and restarted on the same ports, an
 * sn_worker reconnects by itself (new socket, READY again) and serves, and a client's calls
 * work again; SIGTERM stops it with exit status 0; a non-loopback bind without CURVE makes
 * it exit 1. */
#include "test_broker_harness.h"

#include <signal.h>
#include <sys/wait.h>

#define HB 100

typedef struct {
    char *dir;
    char *log;
    char rpc[64], pub[64], sub[64], hb[16];
    pid_t pid;
} s_proc_t;

static void s_proc_init(s_proc_t *p)
{
    memset(p, 0, sizeof *p);
    p->dir = sn_test_tmpdir("broker-restart");
    p->log = sn_strdupf("%s/broker.log", p->dir);
    snprintf(p->rpc, sizeof p->rpc, "tcp://127.0.0.1:%d", sn_test_free_port());
    snprintf(p->pub, sizeof p->pub, "tcp://127.0.0.1:%d", sn_test_free_port());
    snprintf(p->sub, sizeof p->sub, "tcp://127.0.0.1:%d", sn_test_free_port());
    snprintf(p->hb, sizeof p->hb, "%d", HB);
}

static void s_proc_start(s_proc_t *p)
{
    char *bin = sn_test_bin("sentinel-broker");
    char *argv[] = {bin,     "--rpc", p->rpc,           "--pub", p->pub,
                    "--sub", p->sub,  "--heartbeat-ms", p->hb,   NULL};
    p->pid = sn_test_spawn(argv, p->log);
    free(bin);
    assert_true(p->pid > 0);
}

static void s_proc_fini(s_proc_t *p)
{
    if (p->pid > 0)
        sn_test_stop(p->pid, SIGKILL, 2000);
    sn_test_rmdir(p->dir);
    free(p->dir);
    free(p->log);
}

/* Calls echo until it answers; false after @timeout_ms. */
static bool s_call_until_ok(sn_rpc_t *rpc, int timeout_ms)
{
    int64_t deadline = sn_mono_ms() + timeout_ms;
    while (sn_mono_ms() < deadline) {
        char *r = rpc_call_str(rpc, "echo", "ping", 300, NULL);
        if (r) {
            bool ok = strcmp(r, "w1:ping") == 0;
            free(r);
            return ok;
        }
    }
    return false;
}

static void test_broker_restart_workers_and_clients_recover(void **state)
{
    s_proc_t p;
    s_proc_init(&p);
    s_proc_start(&p);
    tw_t w;
    tw_start(&w, "w1", p.rpc, "echo", 2, HB, false);
    sn_rpc_t *rpc = sn_rpc_new(p.rpc, NULL);
    assert_non_null(rpc);
    sn_rpc_set_heartbeat(rpc, HB, 3);
    assert_true(s_call_until_ok(rpc, 10000));
    int connects = atomic_load(&w.connects);

    assert_true(sn_test_stop(p.pid, SIGKILL, 2000) != -1);
    p.pid = 0;
    /* While it is down, a call fails (timeout or the client's own worker-lost). */
    sn_nak_reason_t nak;
    assert_null(rpc_call_str(rpc, "echo", "down", 500, &nak));
    s_proc_start(&p);
    int64_t t0 = sn_mono_ms();
    assert_true(s_call_until_ok(rpc, 10000));
    sn_info("test", "calls work again %lld ms after the restart", (long long)(sn_mono_ms() - t0));
    assert_true(atomic_load(&w.connects) > connects); /* it re-registered on a new socket */

    int status = sn_test_stop(p.pid, SIGTERM, 5000);
    p.pid = 0;
    assert_true(status != -1);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_true(sn_test_count_in_file(p.log, "signal 15, shutting down") == 1);
    sn_rpc_destroy(&rpc);
    tw_stop(&w);
    s_proc_fini(&p);
}

static void test_broker_process_refuses_public_bind(void **state)
{
    s_proc_t p;
    s_proc_init(&p);
    snprintf(p.rpc, sizeof p.rpc, "tcp://0.0.0.0:%d", sn_test_free_port());
    s_proc_start(&p);
    int status = sn_test_stop(p.pid, 0, 5000); /* signal 0: just wait for it to exit */
    p.pid = 0;
    assert_true(status != -1);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    assert_int_equal(sn_test_count_in_file(p.log, "not loopback and CURVE is off"), 1);
    s_proc_fini(&p);
}

int main(void)
{
    sn_log_init("test", "broker-restart");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broker_restart_workers_and_clients_recover),
        cmocka_unit_test(test_broker_process_refuses_public_bind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
