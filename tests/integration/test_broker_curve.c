/* The broker with CURVE and its own ZAP handler: a configured key works (rpc and events) and
 * the worker sees the caller's principal; an unknown key and a revoked key get nothing; a
 * key revoked at runtime is cut off on its open connection; subscriptions outside a
 * principal's prefixes and publishes of forbidden topics are refused; serving without
 * permission is refused; a second CURVE broker in the process (no authenticator of its own)
 * refuses to start. */
#include "test_broker_harness.h"

#include "broker_server.h"

#define HB 100

typedef struct {
    zcert_t *cert;
    sn_curve_keys_t keys;
} s_id_t;

static char *s_dir;
static zcert_t *s_server;
static s_id_t s_alice, s_bob, s_carol, s_mallory;
static broker_server_t *s_broker;

static void s_id_init(s_id_t *id)
{
    id->cert = zcert_new();
    id->keys.server_public = zcert_public_txt(s_server);
    id->keys.public_key = zcert_public_txt(id->cert);
    id->keys.secret_key = zcert_secret_txt(id->cert);
}

static int s_setup(void **state)
{
    s_dir = sn_test_tmpdir("broker-curve");
    s_server = zcert_new();
    char *path = sn_strdupf("%s/server.cert", s_dir);
    if (zcert_save(s_server, path) != 0)
        return -1;
    s_id_init(&s_alice);
    s_id_init(&s_bob);
    s_id_init(&s_carol);
    s_id_init(&s_mallory);

    sn_principal_config_t principals[3] = {
        {.name = "alice",
         .public_key = (char *)zcert_public_txt(s_alice.cert),
         .publish = (char *[]){"deploy.*", "run.*", NULL},
         .subscribe = (char *[]){"deploy.", NULL},
         .call = (char *[]){"*", NULL},
         .serve = (char *[]){"echo", NULL}},
        {.name = "bob",
         .public_key = (char *)zcert_public_txt(s_bob.cert),
         .publish = (char *[]){"deploy.*", NULL},
         .subscribe = (char *[]){"", NULL},
         .call = (char *[]){"*", NULL},
         .serve = (char *[]){"echo", NULL}},
        {.name = "carol",
         .public_key = (char *)zcert_public_txt(s_carol.cert),
         .publish = (char *[]){NULL},
         .subscribe = (char *[]){NULL},
         .call = (char *[]){"echo", NULL},
         .serve = (char *[]){NULL}},
    };
    sn_broker_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.rpc = "tcp://127.0.0.1:*";
    cfg.pub = "tcp://127.0.0.1:*";
    cfg.sub = "tcp://127.0.0.1:*";
    cfg.curve = true;
    cfg.server_secret_file = path;
    cfg.principals = principals;
    cfg.principal_count = 3;
    cfg.revoked = (char *[]){(char *)zcert_public_txt(s_bob.cert), NULL};
    cfg.heartbeat_ms = HB;
    s_broker = broker_server_new(&cfg, NULL);
    free(path);
    return s_broker ? 0 : -1;
}

static int s_teardown(void **state)
{
    broker_server_destroy(&s_broker);
    zcert_destroy(&s_alice.cert);
    zcert_destroy(&s_bob.cert);
    zcert_destroy(&s_carol.cert);
    zcert_destroy(&s_mallory.cert);
    zcert_destroy(&s_server);
    sn_test_rmdir(s_dir);
    free(s_dir);
    return 0;
}

static broker_stats_t s_stats(void)
{
    broker_stats_t st;
    broker_server_stats(s_broker, &st);
    return st;
}

static sn_rpc_t *s_client(const s_id_t *id)
{
    sn_rpc_t *rpc = sn_rpc_new(broker_server_endpoint(s_broker, "rpc"), &id->keys);
    assert_non_null(rpc);
    sn_rpc_set_heartbeat(rpc, HB, 3);
    return rpc;
}

/* Calls echo until it works (CURVE handshake, worker registration); NULL after 5 s. */
static char *s_call_until_ok(sn_rpc_t *rpc, const char *body)
{
    int64_t deadline = sn_mono_ms() + 5000;
    while (sn_mono_ms() < deadline) {
        char *r = rpc_call_str(rpc, "echo", body, 500, NULL);
        if (r)
            return r;
    }
    return NULL;
}

static void test_broker_curve_rpc_keys(void **state)
{
    tw_t w;
    tw_start_curve(&w, "alice-w", broker_server_endpoint(s_broker, "rpc"), "echo", 4, HB, false,
                   &s_alice.keys);
    sn_rpc_t *alice = s_client(&s_alice);
    char *r = s_call_until_ok(alice, "hi");
    assert_non_null(r);
    assert_string_equal(r, "alice-w:hi");
    free(r);
    assert_string_equal(w.last_principal, "alice");

    /* Carol works until her key is revoked; then nothing, even on the open connection. */
    sn_rpc_t *carol = s_client(&s_carol);
    r = s_call_until_ok(carol, "c1");
    assert_non_null(r);
    assert_string_equal(w.last_principal, "carol");
    free(r);
    /* Carol may not call anything but echo. */
    sn_nak_reason_t nak = SN_NAK_NONE;
    assert_null(rpc_call_str(carol, "broker.services", "", 1000, &nak));
    assert_int_equal(nak, SN_NAK_FORBIDDEN);
    uint64_t revoked = s_stats().revoked_dropped;
    broker_server_revoke(s_broker, zcert_public_txt(s_carol.cert));
    int served = atomic_load(&w.served);
    /* No answer: a timeout, or the client's own worker-lost once it gives the silent
     * broker up. Never a REPLY, never a broker NAK. */
    assert_null(rpc_call_str(carol, "echo", "c2", 400, &nak));
    assert_true(nak == SN_NAK_NONE || nak == SN_NAK_WORKER_LOST);
    assert_true(s_stats().revoked_dropped > revoked);
    assert_int_equal(atomic_load(&w.served), served);

    /* An unknown key and a key revoked in the config get nothing at all. */
    sn_rpc_t *mallory = s_client(&s_mallory);
    sn_rpc_t *bob = s_client(&s_bob);
    assert_null(rpc_call_str(mallory, "echo", "m", 500, &nak));
    assert_true(nak == SN_NAK_NONE || nak == SN_NAK_WORKER_LOST);
    assert_null(rpc_call_str(bob, "echo", "b", 500, &nak));
    assert_true(nak == SN_NAK_NONE || nak == SN_NAK_WORKER_LOST);
    assert_int_equal(atomic_load(&w.served), served);

    /* Alice is unaffected. */
    r = rpc_call_str(alice, "echo", "again", 2000, NULL);
    assert_non_null(r);
    free(r);
    sn_rpc_destroy(&mallory);
    sn_rpc_destroy(&bob);
    sn_rpc_destroy(&carol);
    sn_rpc_destroy(&alice);
    tw_stop(&w);
}

typedef struct {
    uint64_t want;
} s_cond_t;

static bool s_serve_refused(void *arg)
{
    return s_stats().serve_refused >= ((s_cond_t *)arg)->want;
}

static void test_broker_curve_serve_forbidden(void **state)
{
    /* Alice may serve only echo. */
    tw_t w;
    s_cond_t c = {s_stats().serve_refused + 1};
    tw_start_curve(&w, "alice-x", broker_server_endpoint(s_broker, "rpc"), "deploy.secret", 1, HB,
                   false, &s_alice.keys);
    assert_true(sn_test_wait_for(s_serve_refused, &c, 5000));
    tw_stop(&w);
    sn_rpc_t *alice = s_client(&s_alice);
    sn_nak_reason_t nak = SN_NAK_NONE;
    assert_null(rpc_call_str(alice, "deploy.secret", "x", 2000, &nak));
    assert_int_equal(nak, SN_NAK_NO_SUCH_SERVICE);
    sn_rpc_destroy(&alice);
}

static void test_broker_curve_events(void **state)
{
    const char *pub_ep = broker_server_endpoint(s_broker, "pub");
    const char *sub_ep = broker_server_endpoint(s_broker, "sub");
    void *pub = raw_connect(ZMQ_PUB, pub_ep, &s_alice.keys);
    void *sub_ok = raw_connect(ZMQ_SUB, sub_ep, &s_alice.keys);
    void *sub_run = raw_connect(ZMQ_SUB, sub_ep, &s_alice.keys);
    void *sub_mallory = raw_connect(ZMQ_SUB, sub_ep, &s_mallory.keys);
    void *pub_mallory = raw_connect(ZMQ_PUB, pub_ep, &s_mallory.keys);
    uint64_t refused = s_stats().subscribe_refused;
    zmq_setsockopt(sub_ok, ZMQ_SUBSCRIBE, "deploy.", 7);
    zmq_setsockopt(sub_run, ZMQ_SUBSCRIBE, "run.", 4); /* outside alice's prefixes */
    zmq_setsockopt(sub_mallory, ZMQ_SUBSCRIBE, "", 0);
    assert_true(pub_until_seen(pub, sub_ok, "deploy.promoted", NULL));
    assert_true(s_stats().subscribe_refused >= refused + 1);

    uint64_t pub_refused = s_stats().publish_refused;
    for (int i = 0; i < 5; i++) {
        pub_send(pub, "run.started", "r");         /* allowed to publish, nobody may see it */
        pub_send(pub, "secret.topic", "s");        /* forbidden topic */
        pub_send(pub_mallory, "deploy.evil", "e"); /* unknown key */
    }
    pub_send(pub, "deploy.last", "l");
    char got[64];
    do {
        assert_true(sub_recv(sub_ok, got, sizeof got, 2000));
        assert_string_not_equal(got, "deploy.evil");
    } while (strcmp(got, "deploy.last") != 0);
    assert_int_equal(s_stats().publish_refused, pub_refused + 5);
    /* The refused subscription and the unknown key received nothing. */
    assert_false(sub_recv(sub_run, got, sizeof got, 100));
    assert_false(sub_recv(sub_mallory, got, sizeof got, 100));
    zmq_close(pub);
    zmq_close(pub_mallory);
    zmq_close(sub_ok);
    zmq_close(sub_run);
    zmq_close(sub_mallory);
}

static void test_broker_curve_second_broker_has_no_authenticator(void **state)
{
    char *path = sn_strdupf("%s/server.cert", s_dir);
    sn_broker_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.rpc = "tcp://127.0.0.1:*";
    cfg.pub = "tcp://127.0.0.1:*";
    cfg.sub = "tcp://127.0.0.1:*";
    cfg.curve = true;
    cfg.server_secret_file = path;
    /* The ZAP endpoint of this process is taken by the first broker: refuse. */
    assert_null(broker_server_new(&cfg, NULL));
    /* A public-only certificate (no secret key) is refused as well. */
    char *pub_path = sn_strdupf("%s/public-only.cert", s_dir);
    assert_int_equal(zcert_save_public(s_server, pub_path), 0);
    cfg.server_secret_file = pub_path;
    assert_null(broker_server_new(&cfg, NULL));
    free(pub_path);
    free(path);
}

int main(void)
{
    sn_log_init("test", "broker-curve");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broker_curve_rpc_keys),
        cmocka_unit_test(test_broker_curve_serve_forbidden),
        cmocka_unit_test(test_broker_curve_events),
        cmocka_unit_test(test_broker_curve_second_broker_has_no_authenticator),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
