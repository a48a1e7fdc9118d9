/* The event relay without CURVE: [topic][body] from a PUB reaches SUBs by prefix, is never
 * decoded (garbage bodies pass), and malformed event messages are dropped and counted. */
#include "test_broker_harness.h"

#include "broker_server.h"

static broker_server_t *s_broker;

static int s_setup(void **state)
{
    sn_broker_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.rpc = "tcp://127.0.0.1:*";
    cfg.pub = "tcp://127.0.0.1:*";
    cfg.sub = "tcp://127.0.0.1:*";
    s_broker = broker_server_new(&cfg, NULL);
    return s_broker ? 0 : -1;
}

static int s_teardown(void **state)
{
    broker_server_destroy(&s_broker);
    return 0;
}

static broker_stats_t s_stats(void)
{
    broker_stats_t st;
    broker_server_stats(s_broker, &st);
    return st;
}

static void test_broker_events_relay_by_prefix(void **state)
{
    void *pub = raw_connect(ZMQ_PUB, broker_server_endpoint(s_broker, "pub"), NULL);
    void *sub_deploy = raw_connect(ZMQ_SUB, broker_server_endpoint(s_broker, "sub"), NULL);
    void *sub_all = raw_connect(ZMQ_SUB, broker_server_endpoint(s_broker, "sub"), NULL);
    zmq_setsockopt(sub_deploy, ZMQ_SUBSCRIBE, "deploy.", 7);
    zmq_setsockopt(sub_all, ZMQ_SUBSCRIBE, "", 0);
    int others = 0;
    assert_true(pub_until_seen(pub, sub_deploy, "deploy.promoted", &others));
    assert_int_equal(others, 0);
    assert_true(pub_until_seen(pub, sub_all, "deploy.promoted", NULL));
    /* Now both are live: run.started reaches only sub_all, deploy.x both, in order. */
    pub_send(pub, "run.started", "\xff\x00garbage");
    pub_send(pub, "deploy.x", "body");
    char got[64];
    /* sub_deploy may still hold copies of the warm-up topic; skip those. */
    do {
        assert_true(sub_recv(sub_deploy, got, sizeof got, 2000));
    } while (strcmp(got, "deploy.promoted") == 0);
    assert_string_equal(got, "deploy.x");
    do {
        assert_true(sub_recv(sub_all, got, sizeof got, 2000));
    } while (strcmp(got, "deploy.promoted") == 0);
    assert_string_equal(got, "run.started");
    assert_true(sub_recv(sub_all, got, sizeof got, 2000));
    assert_string_equal(got, "deploy.x");
    broker_stats_t st = s_stats();
    assert_true(st.relayed >= 4);
    assert_true(st.subscribed >= 2);
    assert_int_equal(st.subscribe_refused, 0);

    /* Malformed events: one frame only, three frames. Dropped and counted; relay goes on. */
    uint64_t malformed = st.malformed;
    zmq_send(pub, "deploy.bad", 10, 0);
    zmq_send(pub, "deploy.bad3", 11, ZMQ_SNDMORE);
    zmq_send(pub, "a", 1, ZMQ_SNDMORE);
    zmq_send(pub, "b", 1, 0);
    pub_send(pub, "deploy.after", "ok");
    assert_true(sub_recv(sub_deploy, got, sizeof got, 2000));
    assert_string_equal(got, "deploy.after");
    assert_int_equal(s_stats().malformed, malformed + 2);
    zmq_close(pub);
    zmq_close(sub_deploy);
    zmq_close(sub_all);
}

int main(void)
{
    sn_log_init("test", "broker-events");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broker_events_relay_by_prefix),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
