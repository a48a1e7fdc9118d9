/* relay: [topic][512 B] events through the broker (in-process actor) against a bare
 * zmq_proxy_steerable(XSUB, XPUB) with the same socket options and HWMs, 1 and 4
 * subscribers, without and with CURVE. Delivered rate, median of BENCH_REPS paired runs.
 *
 * Losslessness: the broker's XPUB drops at its HWM by design (ARCHITECTURE §3), so neither
 * relay runs with NODROP; instead the same credit window governs both: the publisher never
 * runs more than S_WINDOW messages ahead of the slowest subscriber. S_WINDOW is below half
 * of every dropping queue's HWM (libzmq tells a writer about reads in steps of HWM / 2), so
 * no PUB or XPUB queue can fill. Each subscriber checks that it got every seq in order, and
 * a run that lost or reordered anything counts as "could not measure". */
#include "bench.h"

#include <czmq.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "broker_server.h"
#include "sentinel/sn_proto.h"
#include "sn_test.h"

#define S_BODY_LEN 512
#define S_HWM 10000 /* = the broker's XPUB SNDHWM (S_EVENT_SNDHWM) */
#define S_WINDOW 2048
#define S_MAX_SUBS 4
#define S_TOPIC_DATA "bench.data"
#define S_TOPIC_WARM "bench.warm"
#define S_RECV_TIMEOUT_MS 3000

typedef struct {
    const char *pub_ep;
    const char *sub_ep;
    const sn_curve_keys_t *curve; /* client keys, or NULL */
} s_target_t;

typedef struct s_run s_run_t;

typedef struct {
    s_run_t *run;
    void *sock;
    pthread_t thread;
    atomic_uint_fast64_t received; /* data messages, in order */
    atomic_int is_warm;
    bool is_ok;
    int64_t done_us;
} s_sub_t;

struct s_run {
    void *ctx;
    uint64_t count;
    int nsubs;
    s_sub_t subs[S_MAX_SUBS];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void *pub;
};

/* The zmq_proxy baseline. */
typedef struct {
    void *xsub, *xpub, *ctl;
    pthread_t thread;
    char pub_ep[256], sub_ep[256];
} s_proxy_t;

static void s_client_setup(void *s, const sn_curve_keys_t *curve, int hwm_opt)
{
    sn_rc_t rc = sn_proto_socket_setup(s, 0, curve);
    SN_ASSERT(rc == SN_OK);
    int hwm = S_HWM;
    zmq_setsockopt(s, hwm_opt, &hwm, sizeof hwm);
}

static void *s_sub_main(void *arg)
{
    s_sub_t *sub = arg;
    s_run_t *run = sub->run;
    uint64_t expected = 0;
    int64_t last_progress = sn_mono_ms();
    while (expected < run->count) {
        zmq_msg_t topic, body;
        zmq_msg_init(&topic);
        if (zmq_msg_recv(&topic, sub->sock, 0) < 0) {
            zmq_msg_close(&topic);
            if (sn_mono_ms() - last_progress > S_RECV_TIMEOUT_MS) {
                bench_note("relay: subscriber stalled at %llu of %llu",
                           (unsigned long long)expected, (unsigned long long)run->count);
                break;
            }
            continue;
        }
        zmq_msg_init(&body);
        int rc = zmq_msg_recv(&body, sub->sock, 0);
        bool is_data = zmq_msg_size(&topic) == strlen(S_TOPIC_DATA) &&
                       memcmp(zmq_msg_data(&topic), S_TOPIC_DATA, strlen(S_TOPIC_DATA)) == 0;
        if (rc >= 0 && !is_data) {
            atomic_store(&sub->is_warm, 1);
        } else if (rc == S_BODY_LEN) {
            uint64_t seq;
            memcpy(&seq, zmq_msg_data(&body), sizeof seq);
            if (seq != expected) {
                bench_note("relay: subscriber expected seq %llu, got %llu (lost or reordered)",
                           (unsigned long long)expected, (unsigned long long)seq);
                zmq_msg_close(&topic);
                zmq_msg_close(&body);
                break;
            }
            expected++;
            last_progress = sn_mono_ms();
            if (expected % 128 == 0 || expected == run->count) {
                pthread_mutex_lock(&run->mu);
                atomic_store(&sub->received, expected);
                pthread_cond_broadcast(&run->cv);
                pthread_mutex_unlock(&run->mu);
            }
        }
        zmq_msg_close(&topic);
        zmq_msg_close(&body);
    }
    sub->done_us = sn_mono_us();
    sub->is_ok = expected == run->count;
    pthread_mutex_lock(&run->mu);
    atomic_store(&sub->received, sub->is_ok ? expected : UINT64_MAX / 2);
    pthread_cond_broadcast(&run->cv);
    pthread_mutex_unlock(&run->mu);
    return NULL;
}

static uint64_t s_min_received(s_run_t *run)
{
    uint64_t m = UINT64_MAX;
    for (int i = 0; i < run->nsubs; i++) {
        uint64_t r = atomic_load(&run->subs[i].received);
        if (r < m)
            m = r;
    }
    return m;
}

static bool s_all_warm(void *arg)
{
    s_run_t *run = arg;
    zmq_send(run->pub, S_TOPIC_WARM, strlen(S_TOPIC_WARM), ZMQ_SNDMORE);
    zmq_send(run->pub, "w", 1, 0);
    for (int i = 0; i < run->nsubs; i++)
        if (!atomic_load(&run->subs[i].is_warm))
            return false;
    return true;
}

/* One measured run: returns deliveries per second, or -1 if anything was lost. */
static double s_measure(void *ctx, const s_target_t *t, int nsubs, uint64_t count)
{
    s_run_t *run = sn_calloc(1, sizeof *run);
    run->ctx = ctx;
    run->count = count;
    run->nsubs = nsubs;
    pthread_mutex_init(&run->mu, NULL);
    pthread_cond_init(&run->cv, NULL);
    run->pub = zmq_socket(ctx, ZMQ_PUB);
    s_client_setup(run->pub, t->curve, ZMQ_SNDHWM);
    SN_ASSERT(zmq_connect(run->pub, t->pub_ep) == 0);
    for (int i = 0; i < nsubs; i++) {
        s_sub_t *sub = &run->subs[i];
        sub->run = run;
        sub->sock = zmq_socket(ctx, ZMQ_SUB);
        s_client_setup(sub->sock, t->curve, ZMQ_RCVHWM);
        int tmo = 200;
        zmq_setsockopt(sub->sock, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
        zmq_setsockopt(sub->sock, ZMQ_SUBSCRIBE, "bench.", 6);
        SN_ASSERT(zmq_connect(sub->sock, t->sub_ep) == 0);
        SN_ASSERT(pthread_create(&sub->thread, NULL, s_sub_main, sub) == 0);
    }
    double rate = -1;
    if (!sn_test_wait_for(s_all_warm, run, 10000)) {
        bench_note("relay: subscriptions did not propagate within 10 s");
        for (int i = 0; i < nsubs; i++)
            atomic_store(&run->subs[i].received, 0);
        run->count = 0; /* lets the subscriber threads end */
    } else {
        uint8_t body[S_BODY_LEN];
        memset(body, 0xA5, sizeof body);
        int64_t t0 = sn_mono_us();
        uint64_t low = 0;
        for (uint64_t seq = 0; seq < count; seq++) {
            if (seq - low >= S_WINDOW) {
                pthread_mutex_lock(&run->mu);
                while ((low = s_min_received(run)) + S_WINDOW <= seq) {
                    struct timespec ts;
                    clock_gettime(CLOCK_REALTIME, &ts);
                    ts.tv_sec += 2;
                    pthread_cond_timedwait(&run->cv, &run->mu, &ts);
                }
                pthread_mutex_unlock(&run->mu);
                if (low > count)
                    break; /* a subscriber gave up */
            }
            memcpy(body, &seq, sizeof seq);
            zmq_send(run->pub, S_TOPIC_DATA, strlen(S_TOPIC_DATA), ZMQ_SNDMORE);
            zmq_send(run->pub, body, sizeof body, 0);
        }
        int64_t t_end = t0;
        bool ok = true;
        for (int i = 0; i < nsubs; i++) {
            pthread_join(run->subs[i].thread, NULL);
            run->subs[i].thread = 0;
            ok = ok && run->subs[i].is_ok;
            if (run->subs[i].done_us > t_end)
                t_end = run->subs[i].done_us;
        }
        if (ok && t_end > t0)
            rate = (double)count * nsubs / ((double)(t_end - t0) / 1e6);
    }
    for (int i = 0; i < nsubs; i++) {
        if (run->subs[i].thread)
            pthread_join(run->subs[i].thread, NULL);
        zmq_close(run->subs[i].sock);
    }
    zmq_close(run->pub);
    pthread_mutex_destroy(&run->mu);
    pthread_cond_destroy(&run->cv);
    free(run);
    return rate;
}

static void *s_proxy_main(void *arg)
{
    s_proxy_t *p = arg;
    zmq_proxy_steerable(p->xsub, p->xpub, NULL, p->ctl);
    zmq_close(p->xsub);
    zmq_close(p->xpub);
    zmq_close(p->ctl);
    return NULL;
}

static void s_bound(void *s, char *out, size_t len)
{
    SN_ASSERT(zmq_bind(s, "tcp://127.0.0.1:*") == 0);
    zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, out, &len);
}

/* Starts zmq_proxy_steerable on the czmq context (where the broker's ZAP handler lives) with
 * the broker's socket options: common options, XPUB SNDHWM S_HWM, CURVE server if @secret. */
static s_proxy_t *s_proxy_start(void **ctl_out, const char *secret)
{
    static int n;
    void *ctx = zsys_init();
    s_proxy_t *p = sn_calloc(1, sizeof *p);
    p->xsub = zmq_socket(ctx, ZMQ_XSUB);
    p->xpub = zmq_socket(ctx, ZMQ_XPUB);
    void *socks[2] = {p->xsub, p->xpub};
    for (int i = 0; i < 2; i++) {
        sn_rc_t rc = sn_proto_socket_setup(socks[i], 0, NULL);
        SN_ASSERT(rc == SN_OK);
        if (secret) {
            int on = 1;
            zmq_setsockopt(socks[i], ZMQ_CURVE_SERVER, &on, sizeof on);
            zmq_setsockopt(socks[i], ZMQ_CURVE_SECRETKEY, secret, 41);
            zmq_setsockopt(socks[i], ZMQ_ZAP_DOMAIN, "global", 6);
        }
    }
    int hwm = S_HWM;
    zmq_setsockopt(p->xpub, ZMQ_SNDHWM, &hwm, sizeof hwm);
    s_bound(p->xsub, p->pub_ep, sizeof p->pub_ep);
    s_bound(p->xpub, p->sub_ep, sizeof p->sub_ep);
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://bench-proxy-%d", n++);
    p->ctl = zmq_socket(ctx, ZMQ_PAIR);
    SN_ASSERT(zmq_bind(p->ctl, ep) == 0);
    *ctl_out = zmq_socket(ctx, ZMQ_PAIR);
    SN_ASSERT(zmq_connect(*ctl_out, ep) == 0);
    SN_ASSERT(pthread_create(&p->thread, NULL, s_proxy_main, p) == 0);
    return p;
}

static void s_proxy_stop(s_proxy_t **p_p, void *ctl)
{
    s_proxy_t *p = *p_p;
    zmq_send(ctl, "TERMINATE", 9, 0);
    pthread_join(p->thread, NULL);
    zmq_close(ctl);
    free(p);
    *p_p = NULL;
}

/* Runs the paired repetitions of one variant and prints its figures. */
static bool s_variant(void *ctx, const s_target_t *broker, const s_target_t *proxy, int nsubs,
                      uint64_t count, const char *suffix, bool has_goal)
{
    double ratio[BENCH_REPS], b[BENCH_REPS], p[BENCH_REPS];
    for (int r = 0; r < BENCH_REPS; r++) {
        /* Alternate which side goes first, so that drift favours neither. */
        if (r % 2 == 0) {
            b[r] = s_measure(ctx, broker, nsubs, count);
            p[r] = s_measure(ctx, proxy, nsubs, count);
        } else {
            p[r] = s_measure(ctx, proxy, nsubs, count);
            b[r] = s_measure(ctx, broker, nsubs, count);
        }
        if (b[r] <= 0 || p[r] <= 0) {
            bench_note("relay: run %d of %dsub%s lost messages: cannot measure", r, nsubs, suffix);
            return false;
        }
        ratio[r] = b[r] / p[r];
        bench_note("relay %dsub%s rep %d: broker %.0f/s proxy %.0f/s ratio %.3f", nsubs, suffix, r,
                   b[r], p[r], ratio[r]);
    }
    char name[96];
    snprintf(name, sizeof name, "relay_broker_%dsub%s", nsubs, suffix);
    bench_figure(name, bench_median(b, BENCH_REPS), "deliveries/s");
    snprintf(name, sizeof name, "relay_proxy_%dsub%s", nsubs, suffix);
    bench_figure(name, bench_median(p, BENCH_REPS), "deliveries/s");
    snprintf(name, sizeof name, "relay_ratio_%dsub%s", nsubs, suffix);
    double m = bench_median(ratio, BENCH_REPS);
    bench_figure(name, m, "ratio");
    if (has_goal)
        bench_goal(name, m, false, 0.9);
    return true;
}

int bench_relay(void)
{
    void *ctx = zmq_ctx_new(); /* the clients' own context and I/O thread */
    char *dir = sn_test_tmpdir("bench-relay");
    bool ok = true;
    for (int curve = 0; curve < 2 && ok; curve++) {
        zcert_t *server = NULL, *client = NULL;
        char *path = NULL;
        sn_curve_keys_t keys;
        sn_principal_config_t principal = {
            .name = "bench",
            .publish = (char *[]){"bench.*", NULL},
            .subscribe = (char *[]){"bench.", NULL},
            .call = (char *[]){"*", NULL},
            .serve = (char *[]){NULL},
        };
        sn_broker_config_t cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.rpc = "tcp://127.0.0.1:*";
        cfg.pub = "tcp://127.0.0.1:*";
        cfg.sub = "tcp://127.0.0.1:*";
        cfg.heartbeat_ms = 60000;
        if (curve) {
            server = zcert_new();
            client = zcert_new();
            path = sn_strdupf("%s/server.cert", dir);
            SN_ASSERT(zcert_save(server, path) == 0);
            principal.public_key = (char *)zcert_public_txt(client);
            cfg.curve = true;
            cfg.server_secret_file = path;
            cfg.principals = &principal;
            cfg.principal_count = 1;
            cfg.revoked = (char *[]){NULL};
            keys.server_public = zcert_public_txt(server);
            keys.public_key = zcert_public_txt(client);
            keys.secret_key = zcert_secret_txt(client);
        }
        broker_server_t *broker = broker_server_new(&cfg, NULL);
        if (!broker) {
            bench_note("relay: broker did not start");
            ok = false;
        } else {
            void *ctl = NULL;
            s_proxy_t *proxy = s_proxy_start(&ctl, curve ? zcert_secret_txt(server) : NULL);
            s_target_t tb = {broker_server_endpoint(broker, "pub"),
                             broker_server_endpoint(broker, "sub"), curve ? &keys : NULL};
            s_target_t tp = {proxy->pub_ep, proxy->sub_ep, curve ? &keys : NULL};
            const char *suffix = curve ? "_curve" : "";
            uint64_t n1 = curve ? 120000 : 400000, n4 = curve ? 60000 : 200000;
            ok = s_variant(ctx, &tb, &tp, 1, n1, suffix, !curve) &&
                 s_variant(ctx, &tb, &tp, 4, n4, suffix, !curve);
            broker_stats_t st;
            broker_server_stats(broker, &st);
            bench_note("relay%s: broker relayed=%llu send_failed=%llu malformed=%llu", suffix,
                       (unsigned long long)st.relayed, (unsigned long long)st.send_failed,
                       (unsigned long long)st.malformed);
            s_proxy_stop(&proxy, ctl);
            broker_server_destroy(&broker);
        }
        zcert_destroy(&server);
        zcert_destroy(&client);
        free(path);
    }
    zmq_ctx_term(ctx);
    sn_test_rmdir(dir);
    free(dir);
    return ok ? 0 : 1;
}
