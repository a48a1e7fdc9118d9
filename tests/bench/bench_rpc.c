/* rpc: the same raw SNP/1 client (a DEALER, frames by sn_proto) and the same raw echo
 * worker through the broker (in-process actor) and through the cheapest relay that speaks
 * the same frames: one ROUTER that remembers the worker's route and forwards by route,
 * draining up to 256 messages per wake-up, no validation, no queue, no timers. Ping-pong
 * latency (one request in flight) and throughput (256 in flight), median of BENCH_REPS
 * paired runs; then the end-to-end figure through Sentinel's own runtime: sn_rpc against a
 * sentinel-test-agent test-echo process behind a sentinel-broker process (sn_mesh). */
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
#include "sentinel/sn_rpc.h"
#include "sn_mesh.h"

#define S_SERVICE "bench.echo"
#define S_BODY_LEN 512
#define S_LAT_COUNT 10000
#define S_THR_COUNT 100000
#define S_INFLIGHT 256
#define S_E2E_LAT_COUNT 3000
#define S_E2E_THR_COUNT 20000
#define S_MAX_FRAMES 8

/* ---- raw echo worker -------------------------------------------------------------------- */

typedef struct {
    void *sock;
    pthread_t thread;
    atomic_int stop;
    atomic_uint_fast64_t served;
} s_worker_t;

static int s_recv_frames(void *sock, zmq_msg_t *frames, sn_proto_bytes_t *bytes, int flags)
{
    int n = 0;
    for (;;) {
        zmq_msg_init(&frames[n]);
        if (zmq_msg_recv(&frames[n], sock, n == 0 ? flags : 0) < 0) {
            zmq_msg_close(&frames[n]);
            for (int i = 0; i < n; i++)
                zmq_msg_close(&frames[i]);
            return -1;
        }
        bool more = zmq_msg_more(&frames[n]);
        if (n < S_MAX_FRAMES - 1)
            n++;
        else
            zmq_msg_close(&frames[n]); /* too many: keep the first ones */
        if (!more)
            break;
    }
    for (int i = 0; bytes && i < n; i++) {
        bytes[i].data = zmq_msg_data(&frames[i]);
        bytes[i].len = zmq_msg_size(&frames[i]);
    }
    return n;
}

static void s_close_frames(zmq_msg_t *frames, int n)
{
    for (int i = 0; i < n; i++)
        zmq_msg_close(&frames[i]);
}

static void *s_worker_main(void *arg)
{
    s_worker_t *w = arg;
    sn_proto_msg_t ready;
    memset(&ready, 0, sizeof ready);
    ready.cmd = SN_PROTO_READY;
    ready.entry_count = 1;
    ready.entries[0].service = (sn_proto_bytes_t){(const uint8_t *)S_SERVICE, strlen(S_SERVICE)};
    ready.entries[0].credit = SN_PROTO_MAX_CREDIT;
    SN_ASSERT(sn_proto_send(w->sock, NULL, 0, &ready, SN_PROTO_UP) == SN_OK);
    while (!atomic_load(&w->stop)) {
        zmq_pollitem_t item = {w->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 100) <= 0)
            continue;
        for (int k = 0; k < 256; k++) {
            zmq_msg_t frames[S_MAX_FRAMES];
            sn_proto_bytes_t bytes[S_MAX_FRAMES];
            int n = s_recv_frames(w->sock, frames, bytes, ZMQ_DONTWAIT);
            if (n < 0)
                break;
            sn_proto_msg_t in;
            const char *why = NULL;
            if (sn_proto_decode(bytes, (size_t)n, SN_PROTO_DOWN, &in, &why) == SN_OK &&
                in.cmd == SN_PROTO_REQUEST) {
                sn_proto_msg_t out;
                memset(&out, 0, sizeof out);
                out.cmd = SN_PROTO_REPLY;
                out.request_id = in.request_id;
                out.attempt = in.attempt;
                out.route = in.route;
                out.envelope = in.envelope;
                if (sn_proto_send(w->sock, NULL, 0, &out, SN_PROTO_UP) != SN_OK)
                    bench_note("rpc: worker reply refused");
                atomic_fetch_add(&w->served, 1);
            }
            s_close_frames(frames, n);
        }
    }
    return NULL;
}

static void s_worker_start(s_worker_t *w, void *ctx, const char *endpoint)
{
    memset(w, 0, sizeof *w);
    w->sock = zmq_socket(ctx, ZMQ_DEALER);
    sn_rc_t rc = sn_proto_socket_setup(w->sock, 0, NULL);
    SN_ASSERT(rc == SN_OK);
    SN_ASSERT(zmq_connect(w->sock, endpoint) == 0);
    SN_ASSERT(pthread_create(&w->thread, NULL, s_worker_main, w) == 0);
}

static void s_worker_stop(s_worker_t *w)
{
    atomic_store(&w->stop, 1);
    pthread_join(w->thread, NULL);
    zmq_close(w->sock);
}

/* ---- the minimal ROUTER relay ----------------------------------------------------------- */

typedef struct {
    void *router, *ctl;
    pthread_t thread;
    char endpoint[256];
    uint8_t worker[SN_PROTO_MAX_ROUTE];
    size_t worker_len;
} s_relay_t;

static void s_relay_forward(s_relay_t *r, zmq_msg_t *f, int n)
{
    if (n < 2 || zmq_msg_size(&f[1]) != SN_PROTO_HEADER_LEN)
        return;
    uint8_t cmd = ((const uint8_t *)zmq_msg_data(&f[1]))[4];
    if (cmd == SN_PROTO_READY && zmq_msg_size(&f[0]) <= sizeof r->worker) {
        r->worker_len = zmq_msg_size(&f[0]);
        memcpy(r->worker, zmq_msg_data(&f[0]), r->worker_len);
    } else if (cmd == SN_PROTO_REQUEST && n == 5 && r->worker_len) {
        /* [client][hdr][service][meta][env] -> [worker][hdr][service][meta][env][who][client] */
        zmq_send(r->router, r->worker, r->worker_len, ZMQ_SNDMORE | ZMQ_DONTWAIT);
        for (int i = 1; i < 5; i++)
            zmq_msg_send(&f[i], r->router, ZMQ_SNDMORE | ZMQ_DONTWAIT);
        zmq_send(r->router, "anonymous", 9, ZMQ_SNDMORE | ZMQ_DONTWAIT);
        zmq_msg_send(&f[0], r->router, ZMQ_DONTWAIT);
    } else if (cmd == SN_PROTO_REPLY && n == 5) {
        /* [worker][hdr][ids][client][env] -> [client][hdr][ids][env] */
        zmq_msg_send(&f[3], r->router, ZMQ_SNDMORE | ZMQ_DONTWAIT);
        zmq_msg_send(&f[1], r->router, ZMQ_SNDMORE | ZMQ_DONTWAIT);
        zmq_msg_send(&f[2], r->router, ZMQ_SNDMORE | ZMQ_DONTWAIT);
        zmq_msg_send(&f[4], r->router, ZMQ_DONTWAIT);
    }
}

static void *s_relay_main(void *arg)
{
    s_relay_t *r = arg;
    zmq_pollitem_t items[2] = {{r->router, 0, ZMQ_POLLIN, 0}, {r->ctl, 0, ZMQ_POLLIN, 0}};
    for (;;) {
        if (zmq_poll(items, 2, -1) < 0)
            continue;
        if (items[1].revents & ZMQ_POLLIN)
            break;
        for (int k = 0; k < 256; k++) {
            zmq_msg_t f[S_MAX_FRAMES];
            int n = s_recv_frames(r->router, f, NULL, ZMQ_DONTWAIT);
            if (n < 0)
                break;
            s_relay_forward(r, f, n);
            s_close_frames(f, n);
        }
    }
    zmq_close(r->router);
    zmq_close(r->ctl);
    return NULL;
}

static s_relay_t *s_relay_start(void **ctl_out)
{
    void *ctx = zsys_init(); /* where the broker actor lives */
    s_relay_t *r = sn_calloc(1, sizeof *r);
    r->router = zmq_socket(ctx, ZMQ_ROUTER);
    sn_rc_t rc = sn_proto_socket_setup(r->router, 0, NULL);
    SN_ASSERT(rc == SN_OK);
    SN_ASSERT(zmq_bind(r->router, "tcp://127.0.0.1:*") == 0);
    size_t len = sizeof r->endpoint;
    zmq_getsockopt(r->router, ZMQ_LAST_ENDPOINT, r->endpoint, &len);
    r->ctl = zmq_socket(ctx, ZMQ_PAIR);
    SN_ASSERT(zmq_bind(r->ctl, "inproc://bench-rpc-relay") == 0);
    *ctl_out = zmq_socket(ctx, ZMQ_PAIR);
    SN_ASSERT(zmq_connect(*ctl_out, "inproc://bench-rpc-relay") == 0);
    SN_ASSERT(pthread_create(&r->thread, NULL, s_relay_main, r) == 0);
    return r;
}

static void s_relay_stop(s_relay_t **r_p, void *ctl)
{
    zmq_send(ctl, "STOP", 4, 0);
    pthread_join((*r_p)->thread, NULL);
    zmq_close(ctl);
    free(*r_p);
    *r_p = NULL;
}

/* ---- the raw client --------------------------------------------------------------------- */

typedef struct {
    void *sock;
    uint64_t next_id;
    uint8_t body[S_BODY_LEN];
} s_client_t;

static void s_client_init(s_client_t *c, void *ctx, const char *endpoint)
{
    memset(c, 0, sizeof *c);
    c->sock = zmq_socket(ctx, ZMQ_DEALER);
    sn_rc_t rc = sn_proto_socket_setup(c->sock, 0, NULL);
    SN_ASSERT(rc == SN_OK);
    SN_ASSERT(zmq_connect(c->sock, endpoint) == 0);
    memset(c->body, 0x5A, sizeof c->body);
}

static bool s_client_send(s_client_t *c)
{
    sn_proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.cmd = SN_PROTO_REQUEST;
    m.service = (sn_proto_bytes_t){(const uint8_t *)S_SERVICE, strlen(S_SERVICE)};
    m.request_id = ++c->next_id;
    m.deadline_ms = 30000;
    m.attempt = 1;
    m.envelope = (sn_proto_bytes_t){c->body, sizeof c->body};
    return sn_proto_send(c->sock, NULL, 0, &m, SN_PROTO_UP) == SN_OK;
}

/* Receives the next REPLY (skipping heartbeats): 1, 0 if none (@flags ZMQ_DONTWAIT) or a
 * timeout, -1 for a NAK or anything unexpected. */
static int s_client_recv(s_client_t *c, int flags)
{
    for (;;) {
        if (!(flags & ZMQ_DONTWAIT)) {
            zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN, 0};
            if (zmq_poll(&item, 1, 3000) <= 0)
                return 0;
        }
        zmq_msg_t frames[S_MAX_FRAMES];
        sn_proto_bytes_t bytes[S_MAX_FRAMES];
        int n = s_recv_frames(c->sock, frames, bytes, ZMQ_DONTWAIT);
        if (n < 0)
            return 0;
        sn_proto_msg_t in;
        const char *why = NULL;
        sn_rc_t rc = sn_proto_decode(bytes, (size_t)n, SN_PROTO_DOWN, &in, &why);
        s_close_frames(frames, n);
        if (rc == SN_OK && in.cmd == SN_PROTO_HEARTBEAT)
            continue;
        if (rc == SN_OK && in.cmd == SN_PROTO_REPLY)
            return 1;
        bench_note("rpc: unexpected answer cmd=%s reason=%s why=%s",
                   rc == SN_OK ? sn_proto_cmd_name(in.cmd) : "?",
                   rc == SN_OK ? sn_nak_reason_name(in.reason) : "-", why ? why : "-");
        return -1;
    }
}

/* Ping-pong: fills @lat_us with @n round trips; false if one failed. */
static bool s_pingpong(s_client_t *c, int64_t *lat_us, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int64_t t0 = sn_mono_us();
        if (!s_client_send(c) || s_client_recv(c, 0) != 1)
            return false;
        if (lat_us)
            lat_us[i] = sn_mono_us() - t0;
    }
    return true;
}

/* @total requests with @inflight outstanding; requests per second, or -1. */
static double s_throughput(s_client_t *c, uint64_t total, int inflight)
{
    int64_t t0 = sn_mono_us();
    uint64_t sent = 0, done = 0;
    while (sent < (uint64_t)inflight && sent < total)
        if (!s_client_send(c))
            return -1;
        else
            sent++;
    while (done < total) {
        int rc = s_client_recv(c, 0);
        if (rc != 1)
            return -1;
        done++;
        /* Drain what is already there, then refill the window. */
        while (done < total && (rc = s_client_recv(c, ZMQ_DONTWAIT)) == 1)
            done++;
        if (rc < 0)
            return -1;
        while (sent < total && sent - done < (uint64_t)inflight) {
            if (!s_client_send(c))
                return -1;
            sent++;
        }
    }
    return (double)total / ((double)(sn_mono_us() - t0) / 1e6);
}

typedef struct {
    double p50, p99, p999, thr;
} s_result_t;

static bool s_measure(s_client_t *c, int64_t *lat, s_result_t *out)
{
    if (!s_pingpong(c, lat, S_LAT_COUNT))
        return false;
    out->p50 = bench_quantile(lat, S_LAT_COUNT, 0.50);
    out->p99 = bench_quantile(lat, S_LAT_COUNT, 0.99);
    out->p999 = bench_quantile(lat, S_LAT_COUNT, 0.999);
    out->thr = s_throughput(c, S_THR_COUNT, S_INFLIGHT);
    return out->thr > 0;
}

/* ---- end to end through the runtime ------------------------------------------------------ */

static bool s_e2e(void)
{
    sn_mesh_t mesh;
    bool ok = false;
    if (!sn_mesh_start(&mesh, "bench-rpc", NULL)) {
        bench_note("rpc: mesh did not start");
        sn_mesh_stop(&mesh);
        return false;
    }
    sn_mesh_agent(&mesh, "test-echo", "echo-1");
    int64_t *lat = sn_calloc(S_E2E_LAT_COUNT, sizeof *lat);
    if (!sn_mesh_wait_service(&mesh, "test.echo", 1, 10000)) {
        bench_note("rpc: test-echo did not register");
        goto out;
    }
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &mesh.source, "test.call", id);
    Sentinel__V1__Note note = SENTINEL__V1__NOTE__INIT;
    char text[401];
    memset(text, 'x', sizeof text - 1);
    text[sizeof text - 1] = '\0';
    note.text = text;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_NOTE;
    env.note = &note;
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&env, &len);
    for (size_t i = 0; i < S_E2E_LAT_COUNT + 200; i++) {
        uint8_t *reply = NULL;
        size_t reply_len = 0;
        sn_nak_reason_t nak;
        int64_t t0 = sn_mono_us();
        sn_rc_t rc =
            sn_rpc_call(mesh.client, "test.echo", bytes, len, 5000, &reply, &reply_len, &nak);
        int64_t dt = sn_mono_us() - t0;
        free(reply);
        if (rc != SN_OK) {
            bench_note("rpc: e2e call failed rc=%s", sn_rc_str(rc));
            free(bytes);
            goto out;
        }
        if (i >= 200) /* the first ones warm up */
            lat[i - 200] = dt;
    }
    bench_figure("rpc_e2e_p50", bench_quantile(lat, S_E2E_LAT_COUNT, 0.50), "us");
    bench_figure("rpc_e2e_p99", bench_quantile(lat, S_E2E_LAT_COUNT, 0.99), "us");
    bench_figure("rpc_e2e_p999", bench_quantile(lat, S_E2E_LAT_COUNT, 0.999), "us");
    /* Throughput with S_INFLIGHT outstanding (the broker queues beyond the agent's credit). */
    int64_t t0 = sn_mono_us();
    uint64_t sent = 0, done = 0;
    bool failed = false;
    while (done < S_E2E_THR_COUNT && !failed) {
        while (sent < S_E2E_THR_COUNT && sent - done < S_INFLIGHT) {
            uint64_t rid;
            if (sn_rpc_send(mesh.client, "test.echo", bytes, len, 10000, 1, &rid) != SN_OK)
                break;
            sent++;
        }
        zmq_pollitem_t item = {sn_rpc_socket(mesh.client), 0, ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, 100);
        sn_rpc_result_t res;
        while (sn_rpc_recv(mesh.client, &res) == SN_OK) {
            if (res.is_nak) {
                bench_note("rpc: e2e NAK %s", sn_nak_reason_name(res.reason));
                failed = true;
            }
            sn_rpc_result_fini(&res);
            done++;
        }
        if (sn_mono_us() - t0 > 60 * 1000000LL)
            failed = true;
    }
    free(bytes);
    if (failed)
        goto out;
    bench_figure("rpc_e2e_thr", (double)done / ((double)(sn_mono_us() - t0) / 1e6), "req/s");
    ok = true;
out:
    free(lat);
    if (sn_mesh_stop(&mesh) != 0)
        bench_note("rpc: a mesh process did not exit cleanly");
    return ok;
}

int bench_rpc(void)
{
    void *ctx = zmq_ctx_new();
    sn_broker_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.rpc = "tcp://127.0.0.1:*";
    cfg.pub = "tcp://127.0.0.1:*";
    cfg.sub = "tcp://127.0.0.1:*";
    cfg.heartbeat_ms = 60000; /* the raw peers do not heartbeat */
    broker_server_t *broker = broker_server_new(&cfg, NULL);
    if (!broker) {
        bench_note("rpc: broker did not start");
        zmq_ctx_term(ctx);
        return 1;
    }
    void *ctl = NULL;
    s_relay_t *relay = s_relay_start(&ctl);
    s_worker_t wb, wr;
    s_worker_start(&wb, ctx, broker_server_endpoint(broker, "rpc"));
    s_worker_start(&wr, ctx, relay->endpoint);
    s_client_t cb, cr;
    s_client_init(&cb, ctx, broker_server_endpoint(broker, "rpc"));
    s_client_init(&cr, ctx, relay->endpoint);
    int64_t *lat = sn_calloc(S_LAT_COUNT, sizeof *lat);
    bool ok = s_pingpong(&cb, NULL, 500) && s_pingpong(&cr, NULL, 500);
    if (!ok)
        bench_note("rpc: warm-up failed");
    double r50[BENCH_REPS], r99[BENCH_REPS], r999[BENCH_REPS], rthr[BENCH_REPS];
    double b50[BENCH_REPS], b99[BENCH_REPS], b999[BENCH_REPS], bthr[BENCH_REPS];
    double x50[BENCH_REPS], x99[BENCH_REPS], x999[BENCH_REPS], xthr[BENCH_REPS];
    for (int r = 0; r < BENCH_REPS && ok; r++) {
        s_result_t b, x;
        if (r % 2 == 0)
            ok = s_measure(&cb, lat, &b) && s_measure(&cr, lat, &x);
        else
            ok = s_measure(&cr, lat, &x) && s_measure(&cb, lat, &b);
        if (!ok) {
            bench_note("rpc: run %d failed: cannot measure", r);
            break;
        }
        b50[r] = b.p50, b99[r] = b.p99, b999[r] = b.p999, bthr[r] = b.thr;
        x50[r] = x.p50, x99[r] = x.p99, x999[r] = x.p999, xthr[r] = x.thr;
        r50[r] = b.p50 / x.p50;
        r99[r] = b.p99 / x.p99;
        r999[r] = b.p999 / x.p999;
        rthr[r] = b.thr / x.thr;
        bench_note("rpc rep %d: broker p50/p99/p999 %.0f/%.0f/%.0f us %.0f req/s | relay "
                   "%.0f/%.0f/%.0f us %.0f req/s",
                   r, b.p50, b.p99, b.p999, b.thr, x.p50, x.p99, x.p999, x.thr);
    }
    if (ok) {
        bench_figure("rpc_broker_p50", bench_median(b50, BENCH_REPS), "us");
        bench_figure("rpc_broker_p99", bench_median(b99, BENCH_REPS), "us");
        bench_figure("rpc_broker_p999", bench_median(b999, BENCH_REPS), "us");
        bench_figure("rpc_broker_thr", bench_median(bthr, BENCH_REPS), "req/s");
        bench_figure("rpc_relay_p50", bench_median(x50, BENCH_REPS), "us");
        bench_figure("rpc_relay_p99", bench_median(x99, BENCH_REPS), "us");
        bench_figure("rpc_relay_p999", bench_median(x999, BENCH_REPS), "us");
        bench_figure("rpc_relay_thr", bench_median(xthr, BENCH_REPS), "req/s");
        double m;
        bench_figure("rpc_p50_ratio", m = bench_median(r50, BENCH_REPS), "ratio");
        bench_goal("rpc_p50_ratio", m, true, 1.15);
        bench_figure("rpc_p99_ratio", m = bench_median(r99, BENCH_REPS), "ratio");
        bench_goal("rpc_p99_ratio", m, true, 1.3);
        bench_figure("rpc_p999_ratio", m = bench_median(r999, BENCH_REPS), "ratio");
        bench_goal("rpc_p999_ratio", m, true, 2.0);
        bench_figure("rpc_thr_ratio", m = bench_median(rthr, BENCH_REPS), "ratio");
        bench_goal("rpc_thr_ratio", m, false, 0.7);
    }
    free(lat);
    zmq_close(cb.sock);
    zmq_close(cr.sock);
    s_worker_stop(&wb);
    s_worker_stop(&wr);
    s_relay_stop(&relay, ctl);
    broker_server_destroy(&broker);
    zmq_ctx_term(ctx);
    if (ok)
        ok = s_e2e();
    return ok ? 0 : 1;
}
