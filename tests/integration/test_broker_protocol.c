/* The corner rules of docs/protocol.md, each against the real broker in-process (or, for the
 * client and worker libraries, a fake broker: a bare ROUTER): the end of the startup grace
 * (§5.4), which malformed messages are answered (§9, §2.4), a worker leaving with
 * DISCONNECT (§3.4), a dead worker or client that speaks again (§7.2), DISCONNECT to an
 * sn_rpc client (§4) and sn_worker enforcing its own credit (§3.3). Each broker is private
 * to its test, so counters are exact. */
#include "test_broker_harness.h"

#include "broker_server.h"

#define HB 100
#define S_ROUTE "\x00\x6b\x8b\x45\x67"

/* One received message: frames kept alive for the decoded view. */
typedef struct {
    zmq_msg_t f[SN_PROTO_MAX_FRAMES + 1];
    size_t n;
    uint8_t rid[SN_PROTO_MAX_ROUTE];
    size_t rid_len;
    sn_proto_msg_t m;
} s_rx_t;

static void s_rx_fini(s_rx_t *rx)
{
    for (size_t i = 0; i < rx->n; i++)
        zmq_msg_close(&rx->f[i]);
    rx->n = 0;
}

typedef void (*s_pump_fn)(void *arg);

/* Receives the next message that is not a HEARTBEAT on @sock (a DEALER, or a ROUTER if
 * @is_router: then the routing id is kept in rx->rid) within @timeout_ms, decoded as
 * travelling @dir. While waiting, sends a HEARTBEAT with @hb_flags every HB (none if < 0)
 * and calls @pump(@arg) if given. False on timeout or if it does not decode. */
static bool s_rx(void *sock, bool is_router, sn_proto_dir_t dir, int hb_flags, s_pump_fn pump,
                 void *arg, int timeout_ms, s_rx_t *rx)
{
    int64_t deadline = sn_mono_ms() + timeout_ms;
    int64_t next_hb = 0;
    for (;;) {
        int64_t now = sn_mono_ms();
        if (hb_flags >= 0 && now >= next_hb) {
            sn_proto_msg_t hb = {.cmd = SN_PROTO_HEARTBEAT, .flags = (uint8_t)hb_flags};
            assert_int_equal(sn_proto_send(sock, NULL, 0, &hb, SN_PROTO_UP), SN_OK);
            next_hb = now + HB;
        }
        if (pump)
            pump(arg);
        if (now >= deadline)
            return false;
        zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 10) <= 0)
            continue;
        rx->n = 0;
        int more = 1;
        while (more && rx->n < SN_PROTO_MAX_FRAMES + 1) {
            zmq_msg_init(&rx->f[rx->n]);
            assert_true(zmq_msg_recv(&rx->f[rx->n], sock, 0) >= 0);
            more = zmq_msg_more(&rx->f[rx->n]);
            rx->n++;
        }
        assert_false(more);
        size_t skip = is_router ? 1 : 0;
        if (is_router) {
            rx->rid_len = zmq_msg_size(&rx->f[0]);
            memcpy(rx->rid, zmq_msg_data(&rx->f[0]), rx->rid_len);
        }
        sn_proto_bytes_t views[SN_PROTO_MAX_FRAMES + 1];
        for (size_t i = skip; i < rx->n; i++)
            views[i - skip] = (sn_proto_bytes_t){zmq_msg_data(&rx->f[i]), zmq_msg_size(&rx->f[i])};
        const char *why = NULL;
        if (sn_proto_decode(views, rx->n - skip, dir, &rx->m, &why) != SN_OK) {
            sn_warn("test", "undecodable message: %s", why);
            s_rx_fini(rx);
            return false;
        }
        if (rx->m.cmd != SN_PROTO_HEARTBEAT)
            return true;
        s_rx_fini(rx);
    }
}

/* A client or worker DEALER's next non-HEARTBEAT message from the broker. */
static bool s_peer_rx(void *sock, int hb_flags, int timeout_ms, s_rx_t *rx)
{
    return s_rx(sock, false, SN_PROTO_DOWN, hb_flags, NULL, NULL, timeout_ms, rx);
}

/* Expects a NAK (@id, @attempt, @reason) as the next message on @sock. */
static void s_expect_nak(void *sock, int hb_flags, uint64_t id, uint32_t attempt, int reason)
{
    s_rx_t rx;
    assert_true(s_peer_rx(sock, hb_flags, 2000, &rx));
    assert_int_equal(rx.m.cmd, SN_PROTO_NAK);
    assert_true(rx.m.request_id == id);
    assert_int_equal(rx.m.attempt, attempt);
    assert_int_equal(rx.m.reason, reason);
    s_rx_fini(&rx);
}

/* Sends raw frames on a DEALER. */
static void s_send_raw(void *sock, const sn_proto_bytes_t *f, size_t n)
{
    for (size_t i = 0; i < n; i++)
        assert_true(zmq_send(sock, f[i].data, f[i].len, i + 1 < n ? ZMQ_SNDMORE : 0) >= 0);
}

static void s_send(void *sock, const sn_proto_msg_t *m)
{
    assert_int_equal(sn_proto_send(sock, NULL, 0, m, SN_PROTO_UP), SN_OK);
}

static void s_request(void *sock, const char *service, uint64_t id, uint32_t attempt,
                      uint32_t deadline_ms)
{
    sn_proto_msg_t m = {.cmd = SN_PROTO_REQUEST,
                        .request_id = id,
                        .attempt = attempt,
                        .deadline_ms = deadline_ms,
                        .service = {(const uint8_t *)service, strlen(service)},
                        .envelope = {(const uint8_t *)"body", 4}};
    s_send(sock, &m);
}

static void s_ready(void *sock, const char *service, uint16_t credit)
{
    sn_proto_msg_t m = {.cmd = SN_PROTO_READY, .entry_count = 1};
    m.entries[0] = (sn_proto_entry_t){{(const uint8_t *)service, strlen(service)}, credit};
    s_send(sock, &m);
}

static broker_server_t *s_broker_new(int heartbeat_ms, int grace_ms)
{
    sn_broker_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.rpc = "tcp://127.0.0.1:*";
    cfg.pub = "tcp://127.0.0.1:*";
    cfg.sub = "tcp://127.0.0.1:*";
    cfg.heartbeat_ms = heartbeat_ms;
    cfg.heartbeat_liveness = 3;
    cfg.max_frame_bytes = 64 * 1024;
    broker_tuning_t tuning = {.startup_grace_ms = grace_ms};
    broker_server_t *b = broker_server_new(&cfg, &tuning);
    assert_non_null(b);
    return b;
}

static broker_stats_t s_stats(broker_server_t *b)
{
    broker_stats_t st;
    broker_server_stats(b, &st);
    return st;
}

/* A raw worker registered for @service with @credit (waits until the broker lists it). */
static void *s_raw_worker(broker_server_t *b, const char *service, uint16_t credit)
{
    void *w = raw_connect(ZMQ_DEALER, broker_server_endpoint(b, "rpc"), NULL);
    s_ready(w, service, credit);
    int64_t deadline = sn_mono_ms() + 3000;
    while (s_stats(b).workers < 1) {
        assert_true(sn_mono_ms() < deadline);
        s_rx_t rx;
        assert_false(s_peer_rx(w, SN_PROTO_HB_WORKER, 20, &rx));
    }
    return w;
}

/* The REQUEST the raw worker @w receives next (heartbeating as a worker). */
static void s_worker_takes(void *w, uint64_t id, s_rx_t *rx)
{
    assert_true(s_peer_rx(w, SN_PROTO_HB_WORKER, 2000, rx));
    assert_int_equal(rx->m.cmd, SN_PROTO_REQUEST);
    assert_true(rx->m.request_id == id);
}

/* -1 if broker.services does not list @service, else its worker count. */
static int s_listed(sn_rpc_t *rpc, const char *service)
{
    uint8_t *reply = NULL;
    size_t len = 0;
    sn_nak_reason_t nak;
    assert_int_equal(sn_rpc_call(rpc, "broker.services", "", 0, 2000, &reply, &len, &nak), SN_OK);
    sn_envelope_t *env = sn_envelope_unpack(reply, len, SN_MAX_FRAME_BYTES, NULL);
    assert_non_null(env);
    int out = -1;
    for (size_t i = 0; i < env->services->n_services; i++)
        if (strcmp(env->services->services[i]->name, service) == 0)
            out = (int)env->services->services[i]->workers;
    sn_envelope_free(&env);
    free(reply);
    return out;
}

/* §5.4: a request queued in the startup grace for a service nobody registers is answered
 * no-such-service when the grace ends (not expired at its deadline); queueing it did not
 * make the service known. */
static void test_grace_end_answers_no_such_service(void **state)
{
    int64_t t0 = sn_mono_ms();
    broker_server_t *b = s_broker_new(HB, 600);
    sn_rpc_t *rpc = sn_rpc_new(broker_server_endpoint(b, "rpc"), NULL);
    assert_non_null(rpc);
    sn_rpc_set_heartbeat(rpc, HB, 3);
    uint64_t id = 0;
    assert_int_equal(sn_rpc_send(rpc, "ghost", "q", 1, 10000, 1, &id), SN_OK);
    assert_int_equal(s_listed(rpc, "ghost"), -1); /* queued, but not known */
    assert_true(sn_mono_ms() - t0 < 600);         /* still in the grace */
    sn_rpc_result_t r;
    assert_true(rpc_wait_result(rpc, &r, 3000));
    assert_true(r.request_id == id);
    assert_true(r.is_nak);
    assert_int_equal(r.reason, SN_NAK_NO_SUCH_SERVICE);
    assert_true(sn_mono_ms() - t0 < 3000); /* at the grace's end, far before 10 s */
    assert_int_equal(s_stats(b).nak[SN_NAK_EXPIRED], 0);
    /* And it is not known afterwards either: the next request is refused at once. */
    sn_nak_reason_t nak = SN_NAK_NONE;
    assert_null(rpc_call_str(rpc, "ghost", "again", 2000, &nak));
    assert_int_equal(nak, SN_NAK_NO_SUCH_SERVICE);
    assert_int_equal(s_stats(b).nak[SN_NAK_NO_SUCH_SERVICE], 2);
    sn_rpc_destroy(&rpc);
    broker_server_destroy(&b);
}

/* §9: exactly the malformed REQUESTs whose ids can be read and are non-zero are answered
 * NAK invalid; request_id 0 is dropped and counted. */
static void test_malformed_requests_answered(void **state)
{
    broker_server_t *b = s_broker_new(HB, -1);
    void *c = raw_connect(ZMQ_DEALER, broker_server_endpoint(b, "rpc"), NULL);
    broker_stats_t before = s_stats(b);
    sn_proto_bytes_t f[6];
    f[0] = (sn_proto_bytes_t){(const uint8_t *)"SNP\x01\x02", 5};
    f[1] = (sn_proto_bytes_t){(const uint8_t *)"echo", 4};
    f[3] = (sn_proto_bytes_t){(const uint8_t *)"", 0};
    f[4] = (sn_proto_bytes_t){(const uint8_t *)"extra", 5};
    /* An extra (5th) frame. */
    f[2] = (sn_proto_bytes_t){(const uint8_t *)"\0\0\0\0\0\0\0\x0d\0\0\x03\xe8\0\0\0\x01", 16};
    s_send_raw(c, f, 5);
    s_expect_nak(c, 0, 13, 1, SN_NAK_INVALID);
    /* The envelope frame missing. */
    f[2] = (sn_proto_bytes_t){(const uint8_t *)"\0\0\0\0\0\0\0\x0e\0\0\x03\xe8\0\0\0\x01", 16};
    s_send_raw(c, f, 3);
    s_expect_nak(c, 0, 14, 1, SN_NAK_INVALID);
    /* attempt 0: answered with the attempt it carried. */
    f[2] = (sn_proto_bytes_t){(const uint8_t *)"\0\0\0\0\0\0\0\x0f\0\0\x03\xe8\0\0\0\0", 16};
    s_send_raw(c, f, 4);
    s_expect_nak(c, 0, 15, 0, SN_NAK_INVALID);
    /* request_id 0 (with an extra frame too): unanswerable, only counted. The valid request
     * after it is answered first, so nothing came for it. */
    f[2] = (sn_proto_bytes_t){(const uint8_t *)"\0\0\0\0\0\0\0\0\0\0\x03\xe8\0\0\0\x01", 16};
    s_send_raw(c, f, 5);
    s_send_raw(c, f, 4);
    s_request(c, "nobody", 16, 1, 1000);
    s_expect_nak(c, 0, 16, 1, SN_NAK_NO_SUCH_SERVICE);
    broker_stats_t after = s_stats(b);
    assert_int_equal(after.malformed, before.malformed + 5);
    assert_int_equal(after.nak[SN_NAK_INVALID], before.nak[SN_NAK_INVALID] + 3);
    zmq_close(c);
    broker_server_destroy(&b);
}

/* §2.4/§9: a worker NAK with an unknown reason, or a REPLY with an extra frame, for a
 * request it holds: the client gets NAK worker-lost, the credit returns. */
static void test_worker_malformed_answer(void **state)
{
    broker_server_t *b = s_broker_new(HB, -1);
    void *w = s_raw_worker(b, "raw", 2);
    void *c = raw_connect(ZMQ_DEALER, broker_server_endpoint(b, "rpc"), NULL);
    broker_stats_t before = s_stats(b);
    s_request(c, "raw", 21, 1, 5000);
    s_rx_t rx;
    s_worker_takes(w, 21, &rx);
    sn_proto_bytes_t f[5] = {
        {(const uint8_t *)"SNP\x01\x04", 5},
        {(const uint8_t *)"\0\0\0\0\0\0\0\x15\0\0\0\x01", 12},
        rx.m.route,
        {(const uint8_t *)"\x09", 1},
    };
    s_send_raw(w, f, 4);
    s_rx_fini(&rx);
    s_expect_nak(c, 0, 21, 1, SN_NAK_WORKER_LOST);
    /* Both units of credit are free again: two requests are dispatched at once. */
    s_request(c, "raw", 22, 1, 5000);
    s_request(c, "raw", 23, 1, 5000);
    s_worker_takes(w, 22, &rx);
    s_rx_t rx2;
    s_worker_takes(w, 23, &rx2);
    s_rx_fini(&rx2);
    /* A REPLY with an extra frame. */
    f[0] = (sn_proto_bytes_t){(const uint8_t *)"SNP\x01\x03", 5};
    f[1] = (sn_proto_bytes_t){(const uint8_t *)"\0\0\0\0\0\0\0\x16\0\0\0\x01", 12};
    f[2] = rx.m.route;
    f[3] = (sn_proto_bytes_t){(const uint8_t *)"env", 3};
    f[4] = (sn_proto_bytes_t){(const uint8_t *)"extra", 5};
    s_send_raw(w, f, 5);
    s_rx_fini(&rx);
    s_expect_nak(c, 0, 22, 1, SN_NAK_WORKER_LOST);
    broker_stats_t after = s_stats(b);
    assert_int_equal(after.malformed, before.malformed + 2);
    assert_int_equal(after.nak[SN_NAK_WORKER_LOST], before.nak[SN_NAK_WORKER_LOST] + 2);
    assert_int_equal(after.stale_replies, before.stale_replies);
    zmq_close(c);
    zmq_close(w);
    broker_server_destroy(&b);
}

/* §3.4: a worker that leaves with DISCONNECT: what it held is answered worker-lost at once,
 * long before its silence would have been noticed (heartbeat 1 s x 3 here). */
static void test_worker_disconnect_answers_at_once(void **state)
{
    broker_server_t *b = s_broker_new(1000, -1);
    void *w = s_raw_worker(b, "raw", 1);
    void *c = raw_connect(ZMQ_DEALER, broker_server_endpoint(b, "rpc"), NULL);
    s_request(c, "raw", 31, 1, 10000);
    s_rx_t rx;
    s_worker_takes(w, 31, &rx);
    s_rx_fini(&rx);
    int64_t t0 = sn_mono_ms();
    sn_proto_msg_t bye = {.cmd = SN_PROTO_DISCONNECT};
    s_send(w, &bye);
    s_expect_nak(c, 0, 31, 1, SN_NAK_WORKER_LOST);
    assert_true(sn_mono_ms() - t0 < 1500);
    assert_int_equal(s_stats(b).workers, 0);
    zmq_close(c);
    zmq_close(w);
    broker_server_destroy(&b);
}

/* §3.4/§7.2: a worker declared dead wakes up, sends its late REPLY and heartbeats: the
 * REPLY is a stale reply, never relayed, and it gets exactly one DISCONNECT. */
static void test_dead_worker_disconnected_once(void **state)
{
    broker_server_t *b = s_broker_new(HB, -1);
    void *w = s_raw_worker(b, "raw", 1);
    void *c = raw_connect(ZMQ_DEALER, broker_server_endpoint(b, "rpc"), NULL);
    s_request(c, "raw", 41, 1, 10000);
    s_rx_t rx;
    s_worker_takes(w, 41, &rx);
    /* The worker is silent now; the client keeps heartbeating. */
    s_expect_nak(c, 0, 41, 1, SN_NAK_WORKER_LOST);
    uint64_t stale = s_stats(b).stale_replies;
    sn_proto_msg_t late = {.cmd = SN_PROTO_REPLY,
                           .request_id = 41,
                           .attempt = 1,
                           .route = rx.m.route,
                           .envelope = {(const uint8_t *)"late", 4}};
    s_send(w, &late);
    s_rx_fini(&rx);
    sn_proto_msg_t hb = {.cmd = SN_PROTO_HEARTBEAT, .flags = SN_PROTO_HB_WORKER};
    s_send(w, &hb);
    s_send(w, &hb);
    assert_true(s_peer_rx(w, -1, 2000, &rx));
    assert_int_equal(rx.m.cmd, SN_PROTO_DISCONNECT);
    s_rx_fini(&rx);
    /* Nothing more for it: no second DISCONNECT (and no heartbeats: it is not a peer). */
    assert_false(s_peer_rx(w, -1, 5 * HB, &rx));
    assert_int_equal(s_stats(b).stale_replies, stale + 1);
    /* The client never sees the late REPLY. */
    assert_false(s_peer_rx(c, 0, 3 * HB, &rx));
    zmq_close(c);
    zmq_close(w);
    broker_server_destroy(&b);
}

/* Keeps a raw worker alive while another socket is being waited on. */
typedef struct {
    void *sock;
    int64_t next;
} s_keepalive_t;

static void s_pump_keepalive(void *arg)
{
    s_keepalive_t *k = arg;
    if (sn_mono_ms() < k->next)
        return;
    sn_proto_msg_t hb = {.cmd = SN_PROTO_HEARTBEAT, .flags = SN_PROTO_HB_WORKER};
    assert_int_equal(sn_proto_send(k->sock, NULL, 0, &hb, SN_PROTO_UP), SN_OK);
    k->next = sn_mono_ms() + HB;
}

/* Waits (keeping the raw worker @w alive) until the broker knows @lo..@hi peers. */
static void s_wait_peers(broker_server_t *b, void *w, uint64_t lo, uint64_t hi)
{
    int64_t deadline = sn_mono_ms() + 3000;
    for (;;) {
        uint64_t peers = s_stats(b).peers;
        if (peers >= lo && peers <= hi)
            return;
        assert_true(sn_mono_ms() < deadline);
        s_rx_t rx;
        assert_false(s_peer_rx(w, SN_PROTO_HB_WORKER, 20, &rx));
    }
}

/* §7.2: a client declared dead with a request outstanding that speaks again is told
 * DISCONNECT (once) and its new REQUEST answered worker-lost; a client that had nothing
 * outstanding is simply a new peer when it comes back. */
static void test_dead_client_returning(void **state)
{
    broker_server_t *b = s_broker_new(HB, -1);
    void *w = s_raw_worker(b, "raw", 2);
    void *c = raw_connect(ZMQ_DEALER, broker_server_endpoint(b, "rpc"), NULL);
    s_request(c, "raw", 51, 1, 10000);
    s_rx_t rx;
    s_worker_takes(w, 51, &rx);
    s_rx_fini(&rx);
    /* c is silent: the broker declares it dead and cancels its request at the worker. */
    assert_true(s_peer_rx(w, SN_PROTO_HB_WORKER, 2000, &rx));
    assert_int_equal(rx.m.cmd, SN_PROTO_CANCEL);
    assert_true(rx.m.request_id == 51);
    s_rx_fini(&rx);
    s_keepalive_t keep = {w, 0};
    sn_proto_msg_t hb = {.cmd = SN_PROTO_HEARTBEAT, .flags = 0};
    s_send(c, &hb);
    assert_true(s_rx(c, false, SN_PROTO_DOWN, -1, s_pump_keepalive, &keep, 2000, &rx));
    assert_int_equal(rx.m.cmd, SN_PROTO_DISCONNECT);
    s_rx_fini(&rx);
    s_request(c, "raw", 52, 1, 10000);
    assert_true(s_rx(c, false, SN_PROTO_DOWN, -1, s_pump_keepalive, &keep, 2000, &rx));
    assert_int_equal(rx.m.cmd, SN_PROTO_NAK);
    assert_true(rx.m.request_id == 52);
    assert_int_equal(rx.m.reason, SN_NAK_WORKER_LOST);
    s_rx_fini(&rx);
    /* No second DISCONNECT. */
    assert_false(s_rx(c, false, SN_PROTO_DOWN, -1, s_pump_keepalive, &keep, 3 * HB, &rx));
    assert_int_equal(s_stats(b).workers, 1);

    /* c2 heartbeats once, then is silent with nothing outstanding: declared dead... */
    void *c2 = raw_connect(ZMQ_DEALER, broker_server_endpoint(b, "rpc"), NULL);
    s_send(c2, &hb);
    s_wait_peers(b, w, 2, 2);
    s_wait_peers(b, w, 1, 1); /* only the worker left */
    /* ...and served normally when it comes back. */
    s_request(c2, "raw", 61, 1, 10000);
    s_worker_takes(w, 61, &rx);
    sn_proto_msg_t reply = {.cmd = SN_PROTO_REPLY,
                            .request_id = 61,
                            .attempt = 1,
                            .route = rx.m.route,
                            .envelope = {(const uint8_t *)"ok", 2}};
    s_send(w, &reply);
    s_rx_fini(&rx);
    assert_true(s_peer_rx(c2, 0, 2000, &rx));
    assert_int_equal(rx.m.cmd, SN_PROTO_REPLY);
    assert_true(rx.m.request_id == 61);
    s_rx_fini(&rx);
    zmq_close(c2);
    zmq_close(c);
    zmq_close(w);
    broker_server_destroy(&b);
}

/* A bare ROUTER standing in for the broker. */
static void *s_fake_broker(char *endpoint, size_t len)
{
    void *r = zmq_socket(zsys_init(), ZMQ_ROUTER);
    assert_non_null(r);
    assert_int_equal(sn_proto_socket_setup(r, 0, NULL), SN_OK);
    assert_int_equal(zmq_bind(r, "tcp://127.0.0.1:*"), 0);
    assert_int_equal(zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, endpoint, &len), 0);
    return r;
}

static void s_pump_rpc(void *arg)
{
    sn_rpc_tick(arg);
}

/* §4: DISCONNECT to a client: sn_rpc answers its outstanding requests locally with NAK
 * worker-lost and replaces its socket. */
static void test_rpc_disconnect_naks_outstanding(void **state)
{
    char ep[256];
    void *fake = s_fake_broker(ep, sizeof ep);
    sn_rpc_t *rpc = sn_rpc_new(ep, NULL);
    assert_non_null(rpc);
    sn_rpc_set_heartbeat(rpc, 1000, 3);
    uint64_t id = 0;
    assert_int_equal(sn_rpc_send(rpc, "svc", "q", 1, 10000, 1, &id), SN_OK);
    assert_int_equal(sn_rpc_send_id(rpc, 99, "svc", "q", 1, 10000, 0), SN_ERROR); /* attempt 0 */
    s_rx_t rx;
    /* The reference client heartbeats at once on connect: the HEARTBEAT came first. */
    assert_true(s_rx(fake, true, SN_PROTO_UP, -1, s_pump_rpc, rpc, 2000, &rx));
    assert_int_equal(rx.m.cmd, SN_PROTO_REQUEST);
    assert_true(rx.m.request_id == id);
    sn_proto_msg_t bye = {.cmd = SN_PROTO_DISCONNECT};
    assert_int_equal(sn_proto_send(fake, rx.rid, rx.rid_len, &bye, SN_PROTO_DOWN), SN_OK);
    s_rx_fini(&rx);
    sn_rpc_result_t r;
    assert_true(rpc_wait_result(rpc, &r, 2000));
    assert_true(r.request_id == id);
    assert_true(r.is_nak);
    assert_int_equal(r.reason, SN_NAK_WORKER_LOST);
    assert_int_equal(sn_rpc_outstanding(rpc), 0);
    assert_int_equal(sn_rpc_connects(rpc), 2);
    sn_rpc_destroy(&rpc);
    zmq_close(fake);
}

/* Worker events collected while pumping. */
typedef struct {
    sn_worker_t *w;
    sn_worker_event_t ev[8];
    int count;
} s_wq_t;

static void s_pump_worker(void *arg)
{
    s_wq_t *q = arg;
    sn_worker_event_t ev;
    while (sn_worker_recv(q->w, &ev) == SN_OK) {
        assert_true(q->count < 8);
        q->ev[q->count++] = ev;
    }
}

/* Sends a B->W REQUEST from the fake broker. */
static void s_fake_request(void *fake, const s_rx_t *peer, const char *service, uint64_t id)
{
    sn_proto_msg_t m = {.cmd = SN_PROTO_REQUEST,
                        .request_id = id,
                        .attempt = 1,
                        .deadline_ms = 5000,
                        .service = {(const uint8_t *)service, strlen(service)},
                        .envelope = {(const uint8_t *)"body", 4},
                        .principal = {(const uint8_t *)"anonymous", 9},
                        .route = {(const uint8_t *)S_ROUTE, 5}};
    assert_int_equal(sn_proto_send(fake, peer->rid, peer->rid_len, &m, SN_PROTO_DOWN), SN_OK);
}

static void s_fake_cancel(void *fake, const s_rx_t *peer, uint64_t id)
{
    sn_proto_msg_t m = {.cmd = SN_PROTO_CANCEL,
                        .request_id = id,
                        .attempt = 1,
                        .route = {(const uint8_t *)S_ROUTE, 5}};
    assert_int_equal(sn_proto_send(fake, peer->rid, peer->rid_len, &m, SN_PROTO_DOWN), SN_OK);
}

/* Pumps the worker until it has @want events. */
static void s_wq_wait(void *fake, s_wq_t *q, int want)
{
    int64_t deadline = sn_mono_ms() + 2000;
    while (q->count < want) {
        assert_true(sn_mono_ms() < deadline);
        s_pump_worker(q);
        zmq_poll(NULL, 0, 5);
    }
}

/* §3.3: sn_worker answers a REQUEST for a service it does not serve NAK invalid and one
 * beyond its credit NAK overloaded, itself; a CANCEL frees the credit; a CANCEL for an
 * answered request is not delivered. */
static void test_worker_enforces_credit(void **state)
{
    char ep[256];
    void *fake = s_fake_broker(ep, sizeof ep);
    s_wq_t q = {.w = sn_worker_new(ep, NULL)};
    assert_non_null(q.w);
    sn_worker_set_heartbeat(q.w, 1000, 3);
    assert_int_equal(sn_worker_serve(q.w, "svc", 1), SN_OK);
    s_rx_t peer, rx;
    assert_true(s_rx(fake, true, SN_PROTO_UP, -1, s_pump_worker, &q, 2000, &peer));
    assert_int_equal(peer.m.cmd, SN_PROTO_READY);

    s_fake_request(fake, &peer, "other", 1);
    assert_true(s_rx(fake, true, SN_PROTO_UP, -1, s_pump_worker, &q, 2000, &rx));
    assert_int_equal(rx.m.cmd, SN_PROTO_NAK);
    assert_true(rx.m.request_id == 1);
    assert_int_equal(rx.m.reason, SN_NAK_INVALID);
    assert_memory_equal(rx.m.route.data, S_ROUTE, 5);
    s_rx_fini(&rx);

    s_fake_request(fake, &peer, "svc", 2);
    s_wq_wait(fake, &q, 1);
    assert_int_equal(q.ev[0].type, SN_WORKER_REQUEST);
    assert_true(q.ev[0].ticket.request_id == 2);

    s_fake_request(fake, &peer, "svc", 3); /* beyond credit 1 */
    assert_true(s_rx(fake, true, SN_PROTO_UP, -1, s_pump_worker, &q, 2000, &rx));
    assert_int_equal(rx.m.cmd, SN_PROTO_NAK);
    assert_true(rx.m.request_id == 3);
    assert_int_equal(rx.m.reason, SN_NAK_OVERLOADED);
    s_rx_fini(&rx);
    assert_int_equal(q.count, 1);

    assert_int_equal(sn_worker_reply(q.w, &q.ev[0].ticket, "done", 4), SN_OK);
    assert_true(s_rx(fake, true, SN_PROTO_UP, -1, s_pump_worker, &q, 2000, &rx));
    assert_int_equal(rx.m.cmd, SN_PROTO_REPLY);
    assert_true(rx.m.request_id == 2);
    s_rx_fini(&rx);

    s_fake_request(fake, &peer, "svc", 4); /* credit free again */
    s_wq_wait(fake, &q, 2);
    assert_true(q.ev[1].ticket.request_id == 4);
    s_fake_cancel(fake, &peer, 4);
    s_wq_wait(fake, &q, 3);
    assert_int_equal(q.ev[2].type, SN_WORKER_CANCEL);
    assert_true(q.ev[2].ticket.request_id == 4);
    s_fake_cancel(fake, &peer, 2); /* already answered: not delivered */
    s_fake_request(fake, &peer, "svc", 5);
    s_wq_wait(fake, &q, 4);
    assert_int_equal(q.ev[3].type, SN_WORKER_REQUEST);
    assert_true(q.ev[3].ticket.request_id == 5);
    assert_int_equal(sn_worker_refused(q.w), 2);

    for (int i = 0; i < q.count; i++)
        sn_worker_event_fini(&q.ev[i]);
    s_rx_fini(&peer);
    sn_worker_destroy(&q.w);
    zmq_close(fake);
}

int main(void)
{
    sn_log_init("test", "broker-protocol");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grace_end_answers_no_such_service),
        cmocka_unit_test(test_malformed_requests_answered),
        cmocka_unit_test(test_worker_malformed_answer),
        cmocka_unit_test(test_worker_disconnect_answers_at_once),
        cmocka_unit_test(test_dead_worker_disconnected_once),
        cmocka_unit_test(test_dead_client_returning),
        cmocka_unit_test(test_rpc_disconnect_naks_outstanding),
        cmocka_unit_test(test_worker_enforces_credit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
