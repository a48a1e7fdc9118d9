/* The real broker in-process on tcp://127.0.0.1:*, with sn_worker and sn_rpc: LRU with
 * credit, worker-lost, expired, no-such-service, overloaded, cancel, stale replies,
 * broker.services, and malformed input refused while good clients keep working. */
#include "test_broker_harness.h"

#include "broker_server.h"

#define HB 100

static broker_server_t *s_broker;
static const char *s_rpc_ep;

static int s_setup(void **state)
{
    sn_broker_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.rpc = "tcp://127.0.0.1:*";
    cfg.pub = "tcp://127.0.0.1:*";
    cfg.sub = "tcp://127.0.0.1:*";
    cfg.heartbeat_ms = HB;
    cfg.heartbeat_liveness = 3;
    cfg.max_frame_bytes = 64 * 1024;
    broker_tuning_t tuning = {.max_queue = 2, .startup_grace_ms = -1};
    s_broker = broker_server_new(&cfg, &tuning);
    if (!s_broker)
        return -1;
    s_rpc_ep = broker_server_endpoint(s_broker, "rpc");
    return strncmp(s_rpc_ep, "tcp://127.0.0.1:", 16) == 0 && s_rpc_ep[16] != '*' ? 0 : -1;
}

static int s_teardown(void **state)
{
    broker_server_destroy(&s_broker);
    return s_broker == NULL ? 0 : -1;
}

static sn_rpc_t *s_client(void)
{
    sn_rpc_t *rpc = sn_rpc_new(s_rpc_ep, NULL);
    assert_non_null(rpc);
    sn_rpc_set_heartbeat(rpc, HB, 3);
    return rpc;
}

static broker_stats_t s_stats(void)
{
    broker_stats_t st;
    broker_server_stats(s_broker, &st);
    return st;
}

/* Waits until a call to @service succeeds (workers registered). */
static void s_wait_service(sn_rpc_t *rpc, const char *service)
{
    int64_t deadline = sn_mono_ms() + 5000;
    for (;;) {
        sn_nak_reason_t nak;
        char *r = rpc_call_str(rpc, service, "ping", 1000, &nak);
        if (r) {
            free(r);
            return;
        }
        assert_true(sn_mono_ms() < deadline);
        zmq_poll(NULL, 0, 20);
    }
}

static void test_broker_lru_with_credit(void **state)
{
    tw_t w[3];
    const char *names[3] = {"wa", "wb", "wc"};
    for (int i = 0; i < 3; i++)
        tw_start(&w[i], names[i], s_rpc_ep, "lru", 2, HB, false);
    sn_rpc_t *rpc = s_client();
    for (int i = 0; i < 3; i++)
        assert_true(tw_wait(&w[i].registered, 1));
    s_wait_service(rpc, "lru");
    /* Each reply frees the credit again, so LRU alone decides: a strict rotation. */
    char seq[6][4];
    for (int i = 0; i < 6; i++) {
        char *r = rpc_call_str(rpc, "lru", "x", 2000, NULL);
        assert_non_null(r);
        assert_int_equal(strlen(r), 4); /* "wa:x" */
        memcpy(seq[i], r, 2);
        seq[i][2] = '\0';
        free(r);
    }
    assert_string_not_equal(seq[0], seq[1]);
    assert_string_not_equal(seq[1], seq[2]);
    assert_string_not_equal(seq[0], seq[2]);
    for (int i = 3; i < 6; i++)
        assert_string_equal(seq[i], seq[i - 3]);
    for (int i = 0; i < 3; i++)
        tw_stop(&w[i]);
    sn_rpc_destroy(&rpc);
}

static void test_broker_credit_bounds_dispatch(void **state)
{
    tw_t w[3];
    const char *names[3] = {"ca", "cb", "cc"};
    for (int i = 0; i < 3; i++)
        tw_start(&w[i], names[i], s_rpc_ep, "credit", 1, HB, true);
    sn_rpc_t *rpc = s_client();
    for (int i = 0; i < 3; i++)
        assert_true(tw_wait(&w[i].registered, 1));
    uint64_t ids[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(sn_rpc_send(rpc, "credit", "q", 1, 5000, 1, &ids[i]), SN_OK);
    for (int i = 0; i < 3; i++)
        assert_true(tw_wait(&w[i].served, 1));
    /* One unit of credit each: the 4th waits in the queue. broker.services shows it. */
    uint8_t *reply = NULL;
    size_t len = 0;
    sn_nak_reason_t nak;
    assert_int_equal(sn_rpc_call(rpc, "broker.services", "", 0, 2000, &reply, &len, &nak), SN_OK);
    sn_envelope_t *env = sn_envelope_unpack(reply, len, SN_MAX_FRAME_BYTES, NULL);
    assert_non_null(env);
    assert_int_equal(env->body_case, SENTINEL__V1__ENVELOPE__BODY_SERVICES);
    bool found = false;
    for (size_t i = 0; i < env->services->n_services; i++) {
        Sentinel__V1__ServiceInfo *si = env->services->services[i];
        if (strcmp(si->name, "credit") == 0) {
            found = true;
            assert_int_equal(si->workers, 3);
            assert_int_equal(si->idle_credit, 0);
            assert_int_equal(si->queued, 1);
        }
    }
    assert_true(found);
    assert_non_null(sn_envelope_label(env, "malformed"));
    assert_non_null(sn_envelope_label(env, "nak.worker-lost"));
    sn_envelope_free(&env);
    free(reply);
    int total = atomic_load(&w[0].served) + atomic_load(&w[1].served) + atomic_load(&w[2].served);
    assert_int_equal(total, 3);
    /* Release everything: all four are answered exactly once. */
    for (int i = 0; i < 3; i++) {
        atomic_store(&w[i].hold, 0);
        atomic_store(&w[i].release, 1);
    }
    bool seen[4] = {false};
    for (int k = 0; k < 4; k++) {
        sn_rpc_result_t r;
        assert_true(rpc_wait_result(rpc, &r, 3000));
        assert_false(r.is_nak);
        for (int i = 0; i < 4; i++)
            if (r.request_id == ids[i]) {
                assert_false(seen[i]);
                seen[i] = true;
            }
        sn_rpc_result_fini(&r);
    }
    for (int i = 0; i < 3; i++)
        tw_stop(&w[i]);
    sn_rpc_destroy(&rpc);
}

static void test_broker_worker_lost(void **state)
{
    tw_t w;
    tw_start(&w, "frozen", s_rpc_ep, "lost", 1, HB, true);
    sn_rpc_t *rpc = s_client();
    assert_true(tw_wait(&w.registered, 1));
    uint64_t before = s_stats().nak[SN_NAK_WORKER_LOST];
    uint64_t id = 0;
    assert_int_equal(sn_rpc_send(rpc, "lost", "q", 1, 10000, 1, &id), SN_OK);
    assert_true(tw_wait(&w.served, 1));
    atomic_store(&w.freeze, 1); /* no more heartbeats: the broker must declare it dead */
    sn_rpc_result_t r;
    assert_true(rpc_wait_result(rpc, &r, 3000));
    assert_true(r.request_id == id);
    assert_true(r.is_nak);
    assert_int_equal(r.reason, SN_NAK_WORKER_LOST);
    assert_int_equal(s_stats().nak[SN_NAK_WORKER_LOST], before + 1);
    /* When it wakes up, the broker makes it re-register on a new socket. */
    atomic_store(&w.freeze, 0);
    assert_true(tw_wait(&w.connects, 2));
    tw_stop(&w);
    sn_rpc_destroy(&rpc);
}

static void test_broker_expired_and_overloaded(void **state)
{
    tw_t w;
    tw_start(&w, "busy", s_rpc_ep, "busy", 1, HB, true);
    sn_rpc_t *rpc = s_client();
    assert_true(tw_wait(&w.registered, 1));
    uint64_t first, q1, q2, over;
    assert_int_equal(sn_rpc_send(rpc, "busy", "a", 1, 10000, 1, &first), SN_OK);
    assert_true(tw_wait(&w.served, 1));
    /* The worker's credit is used: these queue (max_queue 2), the next is refused. */
    assert_int_equal(sn_rpc_send(rpc, "busy", "b", 1, 200, 1, &q1), SN_OK);
    assert_int_equal(sn_rpc_send(rpc, "busy", "c", 1, 250, 1, &q2), SN_OK);
    assert_int_equal(sn_rpc_send(rpc, "busy", "d", 1, 10000, 1, &over), SN_OK);
    sn_rpc_result_t r;
    assert_true(rpc_wait_result(rpc, &r, 2000));
    assert_true(r.request_id == over);
    assert_true(r.is_nak);
    assert_int_equal(r.reason, SN_NAK_OVERLOADED);
    int64_t t0 = sn_mono_ms();
    for (int i = 0; i < 2; i++) {
        assert_true(rpc_wait_result(rpc, &r, 2000));
        assert_true(r.request_id == (i == 0 ? q1 : q2));
        assert_true(r.is_nak);
        assert_int_equal(r.reason, SN_NAK_EXPIRED);
    }
    assert_true(sn_mono_ms() - t0 < 1000);
    atomic_store(&w.hold, 0);
    atomic_store(&w.release, 1);
    assert_true(rpc_wait_result(rpc, &r, 2000));
    assert_true(r.request_id == first);
    assert_false(r.is_nak);
    sn_rpc_result_fini(&r);
    tw_stop(&w);
    sn_rpc_destroy(&rpc);
}

static void test_broker_no_such_service(void **state)
{
    sn_rpc_t *rpc = s_client();
    sn_nak_reason_t nak = SN_NAK_NONE;
    char *r = rpc_call_str(rpc, "nobody.serves.this", "x", 2000, &nak);
    assert_null(r);
    assert_int_equal(nak, SN_NAK_NO_SUCH_SERVICE);
    sn_rpc_destroy(&rpc);
}

static void test_broker_cancel(void **state)
{
    tw_t w;
    tw_start(&w, "canc", s_rpc_ep, "cancel", 1, HB, true);
    sn_rpc_t *rpc = s_client();
    assert_true(tw_wait(&w.registered, 1));
    uint64_t running, queued;
    assert_int_equal(sn_rpc_send(rpc, "cancel", "a", 1, 10000, 1, &running), SN_OK);
    assert_true(tw_wait(&w.served, 1));
    assert_int_equal(sn_rpc_send(rpc, "cancel", "b", 1, 10000, 1, &queued), SN_OK);
    uint64_t cancels = s_stats().cancels;
    /* Cancel the queued one: it never reaches the worker. Cancel the running one: the
     * worker is told. */
    assert_int_equal(sn_rpc_cancel(rpc, queued, 1), SN_OK);
    assert_int_equal(sn_rpc_cancel(rpc, running, 1), SN_OK);
    assert_int_equal(sn_rpc_cancel(rpc, running, 1), SN_DECLINED);
    assert_true(tw_wait(&w.cancels, 1));
    broker_stats_t st = s_stats();
    assert_int_equal(st.cancels, cancels + 2);
    /* The worker answers the cancelled request anyway: dropped as stale, never delivered. */
    uint64_t stale = st.stale_replies;
    atomic_store(&w.release, 1);
    sn_rpc_result_t r;
    assert_false(rpc_wait_result(rpc, &r, 300));
    assert_int_equal(s_stats().stale_replies, stale + 1);
    assert_int_equal(atomic_load(&w.served), 1);
    assert_int_equal(sn_rpc_outstanding(rpc), 0);
    tw_stop(&w);
    sn_rpc_destroy(&rpc);
}

static void test_broker_stale_attempt_dropped(void **state)
{
    tw_t w;
    tw_start(&w, "stale", s_rpc_ep, "stale", 2, HB, true);
    sn_rpc_t *rpc = s_client();
    assert_true(tw_wait(&w.registered, 1));
    const uint64_t id = 777;
    assert_int_equal(sn_rpc_send_id(rpc, id, "stale", "a", 1, 10000, 1), SN_OK);
    assert_true(tw_wait(&w.served, 1));
    assert_int_equal(sn_rpc_cancel(rpc, id, 1), SN_OK);
    assert_int_equal(sn_rpc_send_id(rpc, id, "stale", "a", 1, 10000, 2), SN_OK);
    assert_true(tw_wait(&w.served, 2));
    uint64_t stale = s_stats().stale_replies;
    atomic_store(&w.release, 1); /* replies for attempt 1 (stale) then attempt 2 */
    sn_rpc_result_t r;
    assert_true(rpc_wait_result(rpc, &r, 2000));
    assert_true(r.request_id == id);
    assert_int_equal(r.attempt, 2);
    assert_false(r.is_nak);
    assert_int_equal(r.body_len, strlen("stale:held2"));
    assert_memory_equal(r.body, "stale:held2", r.body_len);
    sn_rpc_result_fini(&r);
    assert_int_equal(s_stats().stale_replies, stale + 1);
    tw_stop(&w);
    sn_rpc_destroy(&rpc);
}

/* Sends raw frames on a DEALER. */
static void s_send_raw(void *sock, const sn_proto_bytes_t *f, size_t n)
{
    for (size_t i = 0; i < n; i++)
        assert_true(zmq_send(sock, f[i].data, f[i].len, i + 1 < n ? ZMQ_SNDMORE : 0) >= 0);
}

typedef struct {
    uint64_t want;
} s_malformed_cond_t;

static bool s_malformed_at_least(void *arg)
{
    s_malformed_cond_t *c = arg;
    return s_stats().malformed >= c->want;
}

static bool s_stale_at_least(void *arg)
{
    s_malformed_cond_t *c = arg;
    return s_stats().stale_replies >= c->want;
}

static void test_broker_malformed_refused(void **state)
{
    tw_t w;
    tw_start(&w, "echo", s_rpc_ep, "echo", 4, HB, false);
    sn_rpc_t *rpc = s_client();
    assert_true(tw_wait(&w.registered, 1));
    s_wait_service(rpc, "echo");

    broker_stats_t before = s_stats();
    void *raw = zmq_socket(zsys_init(), ZMQ_DEALER);
    int linger = 0, timeo = 1000;
    zmq_setsockopt(raw, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(raw, ZMQ_RCVTIMEO, &timeo, sizeof timeo);
    assert_int_equal(zmq_connect(raw, s_rpc_ep), 0);
    const sn_proto_bytes_t meta = {(const uint8_t *)"\0\0\0\0\0\0\0\x05\0\0\x03\xe8\0\0\0\x01", 16};
    sn_proto_bytes_t f[4];
    /* too few frames */
    f[0] = (sn_proto_bytes_t){(const uint8_t *)"SNP\x01\x02", 5};
    s_send_raw(raw, f, 1);
    /* bad version */
    f[0] = (sn_proto_bytes_t){(const uint8_t *)"SNP\x09\x06", 5};
    f[1] = (sn_proto_bytes_t){(const uint8_t *)"\x00", 1};
    s_send_raw(raw, f, 2);
    /* unknown command */
    f[0] = (sn_proto_bytes_t){(const uint8_t *)"SNP\x01\x2a", 5};
    s_send_raw(raw, f, 2);
    /* garbage header */
    f[0] = (sn_proto_bytes_t){(const uint8_t *)"GET / HTTP/1.1", 14};
    s_send_raw(raw, f, 1);
    /* truncated meta */
    f[0] = (sn_proto_bytes_t){(const uint8_t *)"SNP\x01\x02", 5};
    f[1] = (sn_proto_bytes_t){(const uint8_t *)"echo", 4};
    f[2] = (sn_proto_bytes_t){(const uint8_t *)"\0\0\0", 3};
    f[3] = (sn_proto_bytes_t){(const uint8_t *)"x", 1};
    s_send_raw(raw, f, 4);
    s_malformed_cond_t c = {before.malformed + 5};
    assert_true(sn_test_wait_for(s_malformed_at_least, &c, 3000));

    /* A bad service name with a readable meta frame: NAK invalid for request 5. */
    f[1] = (sn_proto_bytes_t){(const uint8_t *)"ec ho", 5};
    f[2] = meta;
    s_send_raw(raw, f, 4);
    uint8_t buf[64];
    assert_int_equal(zmq_recv(raw, buf, sizeof buf, 0), 5);
    assert_memory_equal(buf, "SNP\x01\x04", 5);
    assert_int_equal(zmq_recv(raw, buf, sizeof buf, 0), 12);
    assert_int_equal(sn_proto_get_u64(buf), 5);
    assert_int_equal(zmq_recv(raw, buf, sizeof buf, 0), 1);
    assert_int_equal(buf[0], SN_NAK_INVALID);

    /* A REPLY for no request from a peer that is no worker: dropped, counted, DISCONNECT. */
    f[0] = (sn_proto_bytes_t){(const uint8_t *)"SNP\x01\x03", 5};
    f[1] = (sn_proto_bytes_t){(const uint8_t *)"\0\0\0\0\0\0\0\x09\0\0\0\x01", 12};
    f[2] = (sn_proto_bytes_t){(const uint8_t *)"\x00\x01\x02\x03\x04", 5};
    f[3] = (sn_proto_bytes_t){(const uint8_t *)"env", 3};
    s_send_raw(raw, f, 4);
    assert_int_equal(zmq_recv(raw, buf, sizeof buf, 0), 5);
    assert_memory_equal(buf, "SNP\x01\x07", 5);
    s_malformed_cond_t cs = {before.stale_replies + 1};
    assert_true(sn_test_wait_for(s_stale_at_least, &cs, 3000));

    /* A garbage (non-protobuf) body is relayed untouched: the broker does not decode it. */
    char *r = rpc_call_str(rpc, "echo", "\xff\xfe garbage", 2000, NULL);
    assert_non_null(r);
    assert_string_equal(r, "echo:\xff\xfe garbage");
    free(r);

    /* An oversized frame (> max_frame_bytes, 64 KiB here): libzmq drops the connection. */
    size_t big_len = 100 * 1024;
    char *big = sn_calloc(1, big_len);
    f[0] = (sn_proto_bytes_t){(const uint8_t *)"SNP\x01\x02", 5};
    f[1] = (sn_proto_bytes_t){(const uint8_t *)"echo", 4};
    f[2] = meta;
    f[3] = (sn_proto_bytes_t){(const uint8_t *)big, big_len};
    s_send_raw(raw, f, 4);
    free(big);
    int served = atomic_load(&w.served);

    /* The good client still works, and nobody crashed. */
    r = rpc_call_str(rpc, "echo", "still-ok", 2000, NULL);
    assert_non_null(r);
    assert_string_equal(r, "echo:still-ok");
    free(r);
    assert_int_equal(atomic_load(&w.served), served + 1); /* the big one never arrived */
    int timeo0 = 200;
    zmq_setsockopt(raw, ZMQ_RCVTIMEO, &timeo0, sizeof timeo0);
    assert_int_equal(zmq_recv(raw, buf, sizeof buf, 0), -1); /* and got no answer */
    zmq_close(raw);
    tw_stop(&w);
    sn_rpc_destroy(&rpc);
}

static void test_broker_refuses_non_loopback_without_curve(void **state)
{
    sn_broker_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.rpc = "tcp://0.0.0.0:*";
    cfg.pub = "tcp://127.0.0.1:*";
    cfg.sub = "tcp://127.0.0.1:*";
    assert_null(broker_server_new(&cfg, NULL));
    cfg.rpc = "tcp://127.0.0.1:*";
    cfg.sub = "tcp://192.168.1.1:*";
    assert_null(broker_server_new(&cfg, NULL));
    cfg.sub = "tcp://127.0.0.1;eth0:*";
    assert_null(broker_server_new(&cfg, NULL));
    /* CURVE on without a server key: refused too. */
    cfg.sub = "tcp://127.0.0.1:*";
    cfg.curve = true;
    assert_null(broker_server_new(&cfg, NULL));
}

int main(void)
{
    sn_log_init("test", "broker-rpc");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broker_lru_with_credit),
        cmocka_unit_test(test_broker_credit_bounds_dispatch),
        cmocka_unit_test(test_broker_worker_lost),
        cmocka_unit_test(test_broker_expired_and_overloaded),
        cmocka_unit_test(test_broker_no_such_service),
        cmocka_unit_test(test_broker_cancel),
        cmocka_unit_test(test_broker_stale_attempt_dropped),
        cmocka_unit_test(test_broker_malformed_refused),
        cmocka_unit_test(test_broker_refuses_non_loopback_without_curve),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
