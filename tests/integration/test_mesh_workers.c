/* Service calls through the real mesh: workers share the load, a worker killed in the
 * middle of a request is answered NAK worker-lost, and the broker can be killed and
 * restarted under running agents. */
#include "sn_mesh.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static void test_mesh_three_workers_serve_and_kill_gives_worker_lost(void **state)
{
    sn_mesh_t m;
    assert_true(sn_mesh_start(&m, "workers", NULL));
    sn_mesh_agent(&m, "test-echo", "echo1");
    sn_mesh_agent(&m, "test-echo", "echo2");
    sn_mesh_agent(&m, "test-echo", "echo3");
    assert_true(sn_mesh_wait_service(&m, "test.echo", 3, 15000));

    /* Every request answered, by more than one worker (LRU dispatch). */
    int served[3] = {0, 0, 0};
    for (int i = 0; i < 30; i++) {
        sn_envelope_t *reply = NULL;
        assert_int_equal(sn_mesh_call_note(&m, "test.echo", "ping", i, 5000, &reply, NULL), SN_OK);
        assert_non_null(reply);
        assert_string_equal(reply->note->text, "ping");
        const char *who = NULL;
        for (size_t k = 0; k < reply->note->n_attrs; k++)
            if (strcmp(reply->note->attrs[k]->key, "instance") == 0)
                who = reply->note->attrs[k]->value;
        assert_non_null(who);
        served[who[4] - '1']++;
        sn_envelope_free(&reply);
    }
    assert_true(served[0] > 0 && served[1] > 0 && served[2] > 0);

    /* A request held by a worker that dies: the broker answers worker-lost. */
    uint64_t rid = 0;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &m.source, "test.call", id);
    Sentinel__V1__Note note = SENTINEL__V1__NOTE__INIT;
    note.text = "hold:20000";
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_NOTE;
    env.note = &note;
    size_t len;
    uint8_t *bytes = sn_envelope_pack(&env, &len);
    assert_int_equal(sn_rpc_send(m.client, "test.echo", bytes, len, 30000, 1, &rid), SN_OK);
    free(bytes);
    sn_mesh_agent_t *holder = NULL;
    int64_t deadline = sn_mono_ms() + 5000;
    while (!holder && sn_mono_ms() < deadline) {
        zmq_pollitem_t wait = {.socket = sn_rpc_socket(m.client), .events = ZMQ_POLLIN};
        zmq_poll(&wait, 1, 20);
        sn_rpc_tick(m.client); /* keep heartbeats going */
        for (size_t i = 0; i < m.agent_count; i++)
            if (sn_test_count_in_file(m.agents[i].log, "holding ms=20000") > 0)
                holder = &m.agents[i];
    }
    assert_non_null(holder);
    kill(holder->pid, SIGKILL);
    assert_true(sn_test_stop(holder->pid, SIGKILL, 2000) >= 0);
    holder->pid = 0;
    int64_t killed_at = sn_mono_ms();
    sn_rpc_result_t res = {0};
    bool got = false;
    while (!got && sn_mono_ms() - killed_at < 5000) {
        zmq_pollitem_t item = {.socket = sn_rpc_socket(m.client), .events = ZMQ_POLLIN};
        zmq_poll(&item, 1, 50);
        if (sn_rpc_recv(m.client, &res) == SN_OK)
            got = true;
    }
    assert_true(got);
    assert_int_equal(res.request_id, rid);
    assert_true(res.is_nak);
    assert_int_equal(res.reason, SN_NAK_WORKER_LOST);
    sn_rpc_result_fini(&res);

    /* The others keep serving. */
    sn_envelope_t *reply = NULL;
    assert_int_equal(sn_mesh_call_note(&m, "test.echo", "after", 0, 5000, &reply, NULL), SN_OK);
    sn_envelope_free(&reply);
    assert_int_equal(sn_mesh_stop(&m), 0);
}

static void test_mesh_broker_restart_agents_reconnect(void **state)
{
    sn_mesh_t m;
    assert_true(sn_mesh_start(&m, "brestart", NULL));
    sn_mesh_agent(&m, "test-echo", "echo1");
    sn_mesh_agent(&m, "test-leader", "lead1");
    sn_mesh_agent(&m, "test-slow", "slow1");
    assert_true(sn_mesh_wait_service(&m, "test.echo", 1, 15000));
    assert_true(sn_mesh_wait_service(&m, "test.jobs.submit", 1, 15000));
    sn_envelope_t *reply = NULL;
    assert_int_equal(sn_mesh_call_note(&m, "test.jobs.submit", "before", 100, 5000, &reply, NULL),
                     SN_OK);
    sn_envelope_free(&reply);

    /* A request held when the broker dies is answered worker-lost by the client library
     * at once, even though a new broker is up before any heartbeat goes missing. */
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &m.source, "test.call", id);
    Sentinel__V1__Note note = SENTINEL__V1__NOTE__INIT;
    note.text = "hold:5000";
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_NOTE;
    env.note = &note;
    size_t len;
    uint8_t *bytes = sn_envelope_pack(&env, &len);
    uint64_t rid = 0;
    assert_int_equal(sn_rpc_send(m.client, "test.echo", bytes, len, 30000, 1, &rid), SN_OK);
    free(bytes);
    assert_true(sn_mesh_wait_log(&m, "echo1", "holding ms=5000", 5000));

    kill(m.broker, SIGKILL);
    assert_true(sn_test_stop(m.broker, SIGKILL, 2000) >= 0);
    assert_true(sn_mesh_broker_start(&m));
    int64_t restarted = sn_mono_ms();
    sn_rpc_result_t res = {0};
    bool got = false;
    while (!got && sn_mono_ms() - restarted < 3000) {
        zmq_pollitem_t item = {.socket = sn_rpc_socket(m.client), .events = ZMQ_POLLIN};
        zmq_poll(&item, 1, 20);
        got = sn_rpc_recv(m.client, &res) == SN_OK;
    }
    assert_true(got);
    assert_int_equal(res.request_id, rid);
    assert_true(res.is_nak);
    assert_int_equal(res.reason, SN_NAK_WORKER_LOST);
    sn_rpc_result_fini(&res);
    /* Every agent re-registers by itself within 10 s (RELIABILITY: broker restart). */
    assert_true(sn_mesh_wait_service(&m, "test.echo", 1, 10000));
    assert_true(sn_mesh_wait_service(&m, "test.slow", 1, 10000));
    assert_true(sn_mesh_wait_service(&m, "test.jobs.submit", 1, 10000));
    assert_true(sn_mono_ms() - restarted < 10000);
    assert_int_equal(sn_mesh_call_note(&m, "test.echo", "again", 0, 5000, &reply, NULL), SN_OK);
    sn_envelope_free(&reply);
    assert_int_equal(sn_mesh_call_note(&m, "test.jobs.submit", "after", 100, 5000, &reply, NULL),
                     SN_OK);
    sn_envelope_free(&reply);
    /* Nothing recorded is lost: both jobs complete. */
    int64_t deadline = sn_mono_ms() + 10000;
    bool done = false;
    while (!done && sn_mono_ms() < deadline) {
        char *a = sn_mesh_hget(&m, "job:before", "state");
        char *b = sn_mesh_hget(&m, "job:after", "state");
        done = a && b && strcmp(a, "done") == 0 && strcmp(b, "done") == 0;
        free(a);
        free(b);
        sn_rpc_tick(m.client);
    }
    assert_true(done);
    assert_int_equal(sn_mesh_stop(&m), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mesh_three_workers_serve_and_kill_gives_worker_lost),
        cmocka_unit_test(test_mesh_broker_restart_agents_reconnect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
