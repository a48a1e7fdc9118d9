/* rss: memory of the runtime's processes.
 *  1. An idle release-built sentinel-test-agent test-echo process (registered with a broker
 *     process on a mesh): RssAnon and VmRSS from /proc/PID/status.
 *  2. A sentinel-broker process with 1,000 agent-like peers (each a DEALER that sent READY,
 *     a PUB and a SUB with its own subscription, all connected) against a bare libzmq
 *     ROUTER/XSUB/XPUB process (this binary as `_bare`, same socket options and HWMs) with
 *     the same peers. The peers live in 4 helper processes (`_peers`, 250 each). Measured
 *     once every connection is accepted (the server's fd count) and RSS has settled.
 *  3. A broker process with one SIGSTOPped subscriber (`_sub`, an sn_bus subscriber) while
 *     10^6 events are published: broker RSS growth, then SIGCONT and the subscriber's gap
 *     report (sn_bus detects the missing seqs). */
#include "bench.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "sentinel/sn_bus.h"
#include "sentinel/sn_proto.h"
#include "sn_mesh.h"

#define S_PEERS 1000
#define S_PEER_PROCS 4
#define S_EVENT_HWM 10000 /* the broker's XPUB SNDHWM */
#define S_EVENTS 1000000
#define S_RSS_REPS 3

static volatile sig_atomic_t s_stop;

static void s_on_term(int sig)
{
    (void)sig;
    s_stop = 1;
}

static void s_nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Samples RSS every 200 ms until two samples in a row are within 64 KiB (10 s at most). */
static long s_settled_kib(pid_t pid, const char *field)
{
    long prev = bench_status_kib(pid, field);
    for (int i = 0; i < 50; i++) {
        s_nap_ms(200);
        long cur = bench_status_kib(pid, field);
        if (cur >= 0 && prev >= 0 && labs(cur - prev) < 64)
            return cur;
        prev = cur;
    }
    return prev;
}

static double s_mib(long kib)
{
    return (double)kib / 1024.0;
}

/* ---- helper processes -------------------------------------------------------------------- */

/* `_bare RPC PUB SUB`: ROUTER, XSUB and XPUB bound with the broker's options; reads and drops
 * everything until SIGTERM. */
int bench_rss_bare_main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    signal(SIGTERM, s_on_term);
    void *ctx = zmq_ctx_new();
    int types[3] = {ZMQ_ROUTER, ZMQ_XSUB, ZMQ_XPUB};
    void *s[3];
    for (int i = 0; i < 3; i++) {
        s[i] = zmq_socket(ctx, types[i]);
        if (sn_proto_socket_setup(s[i], 0, NULL) != SN_OK || zmq_bind(s[i], argv[i]) != 0)
            return 1;
    }
    int one = 1, hwm = S_EVENT_HWM;
    zmq_setsockopt(s[0], ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(s[2], ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_send(s[1], "\x01", 1, 0);
    printf("bare up\n");
    fflush(stdout);
    zmq_pollitem_t items[3] = {
        {s[0], 0, ZMQ_POLLIN, 0}, {s[1], 0, ZMQ_POLLIN, 0}, {s[2], 0, ZMQ_POLLIN, 0}};
    while (!s_stop) {
        if (zmq_poll(items, 3, 100) <= 0)
            continue;
        for (int i = 0; i < 3; i++)
            for (int k = 0; k < 256 && (items[i].revents & ZMQ_POLLIN); k++) {
                zmq_msg_t m;
                zmq_msg_init(&m);
                int rc = zmq_msg_recv(&m, s[i], ZMQ_DONTWAIT);
                zmq_msg_close(&m);
                if (rc < 0)
                    break;
            }
    }
    int zero = 0;
    for (int i = 0; i < 3; i++) {
        zmq_setsockopt(s[i], ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(s[i]);
    }
    zmq_ctx_term(ctx);
    return 0;
}

/* `_peers N RPC PUB SUB`: N agent-like peers; prints "peers ready", waits for SIGTERM. */
int bench_rss_peers_main(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    signal(SIGTERM, s_on_term);
    int n = (int)strtol(argv[0], NULL, 10);
    void *ctx = zmq_ctx_new();
    zmq_ctx_set(ctx, ZMQ_MAX_SOCKETS, 3 * n + 16);
    void **socks = sn_calloc((size_t)(3 * n), sizeof *socks);
    for (int i = 0; i < n; i++) {
        int types[3] = {ZMQ_DEALER, ZMQ_PUB, ZMQ_SUB};
        for (int k = 0; k < 3; k++) {
            void *s = zmq_socket(ctx, types[k]);
            if (!s || sn_proto_socket_setup(s, 0, NULL) != SN_OK) {
                fprintf(stderr, "peer socket %d: %s\n", 3 * i + k, zmq_strerror(errno));
                return 1;
            }
            if (types[k] == ZMQ_SUB) {
                char prefix[64];
                int len = snprintf(prefix, sizeof prefix, "agent.%d.%d.", (int)getpid(), i);
                zmq_setsockopt(s, ZMQ_SUBSCRIBE, prefix, (size_t)len);
            }
            if (zmq_connect(s, argv[1 + k]) != 0)
                return 1;
            socks[3 * i + k] = s;
        }
        sn_proto_msg_t ready;
        memset(&ready, 0, sizeof ready);
        ready.cmd = SN_PROTO_READY;
        ready.entry_count = 1;
        ready.entries[0].service = (sn_proto_bytes_t){(const uint8_t *)"bench.rss", 9};
        ready.entries[0].credit = 1;
        if (sn_proto_send(socks[3 * i], NULL, 0, &ready, SN_PROTO_UP) != SN_OK)
            fprintf(stderr, "READY not queued\n");
    }
    printf("peers ready\n");
    fflush(stdout);
    while (!s_stop)
        pause();
    int zero = 0;
    for (int i = 0; i < 3 * n; i++) {
        zmq_setsockopt(socks[i], ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(socks[i]);
    }
    free(socks);
    zmq_ctx_term(ctx);
    return 0;
}

/* `_sub SUB`: an sn_bus subscriber to "bench."; prints "warm" on the first event, and on a
 * "bench.end" event its counters, then exits. */
int bench_rss_sub_main(int argc, char **argv)
{
    if (argc < 1)
        return 2;
    sn_bus_opts_t o = {.endpoint = argv[0]};
    sn_bus_sub_t *sub = sn_bus_sub_new(&o);
    if (!sub)
        return 1;
    sn_bus_sub_subscribe(sub, "bench.");
    bool warm = false;
    int64_t deadline = sn_mono_ms() + 180000;
    int rc = 1;
    while (sn_mono_ms() < deadline) {
        sn_bus_event_t ev;
        if (sn_bus_sub_recv(sub, 500, &ev) != SN_OK)
            continue;
        if (!warm) {
            warm = true;
            printf("warm\n");
            fflush(stdout);
        }
        bool is_end = strcmp(ev.topic, "bench.end") == 0;
        sn_bus_event_fini(&ev);
        if (is_end) {
            sn_bus_stats_t st;
            sn_bus_sub_stats(sub, &st);
            printf("stats received=%llu gaps=%llu missed=%llu\n", (unsigned long long)st.received,
                   (unsigned long long)st.gaps, (unsigned long long)st.missed);
            fflush(stdout);
            rc = 0;
            break;
        }
    }
    sn_bus_sub_destroy(&sub);
    return rc;
}

/* ---- the measurements --------------------------------------------------------------------- */

static bool s_idle_agent(void)
{
    sn_mesh_t mesh;
    bool ok = false;
    if (!sn_mesh_start(&mesh, "bench-rss", NULL)) {
        bench_note("rss: mesh did not start");
        sn_mesh_stop(&mesh);
        return false;
    }
    size_t i = sn_mesh_agent(&mesh, "test-echo", "echo-rss");
    pid_t pid = mesh.agents[i].pid;
    sn_envelope_t *reply = NULL;
    if (!sn_mesh_wait_service(&mesh, "test.echo", 1, 10000) ||
        sn_mesh_call_note(&mesh, "test.echo", "hello", 1, 5000, &reply, NULL) != SN_OK) {
        bench_note("rss: test-echo did not answer");
    } else {
        long anon = s_settled_kib(pid, "RssAnon");
        long rss = bench_status_kib(pid, "VmRSS");
        bench_figure("agent_rss_anon_mib", s_mib(anon), "MiB");
        bench_figure("agent_vmrss_mib", s_mib(rss), "MiB");
        bench_goal("agent_rss_anon_mib", s_mib(anon), true, 6);
        ok = anon > 0;
    }
    sn_envelope_free(&reply);
    if (sn_mesh_stop(&mesh) != 0)
        bench_note("rss: a mesh process did not exit cleanly");
    return ok;
}

typedef struct {
    pid_t pid;
    int want;
} s_fd_wait_t;

static bool s_fds_reached(void *arg)
{
    s_fd_wait_t *w = arg;
    return bench_fd_count(w->pid) >= w->want;
}

typedef struct {
    const char *path;
    const char *needle;
} s_log_wait_t;

static bool s_log_has(void *arg)
{
    s_log_wait_t *w = arg;
    return sn_test_count_in_file(w->path, w->needle) > 0;
}

/* Starts the server (@is_bare: this binary as _bare, else sentinel-broker), connects the
 * peers, and measures its settled RssAnon and VmRSS (KiB). False if it could not. */
static bool s_server_with_peers(const char *dir, bool is_bare, long *anon, long *rss)
{
    char *ep[3];
    for (int i = 0; i < 3; i++)
        ep[i] = sn_strdupf("tcp://127.0.0.1:%d", sn_test_free_port());
    char *log = sn_strdupf("%s/%s.log", dir, is_bare ? "bare" : "broker");
    char *bin = sn_test_bin("sentinel-broker");
    pid_t server;
    if (is_bare) {
        char *argv[] = {(char *)bench_self_exe(), "_bare", ep[0], ep[1], ep[2], NULL};
        server = sn_test_spawn(argv, log);
    } else {
        char *argv[] = {bin,   "--rpc",          ep[0],   "--pub", ep[1], "--sub",
                        ep[2], "--heartbeat-ms", "60000", NULL};
        server = sn_test_spawn(argv, log);
    }
    pid_t peers[S_PEER_PROCS] = {0};
    bool ok = false;
    s_log_wait_t lw = {log, is_bare ? "bare up" : "broker: up"};
    if (server <= 0 || !sn_test_wait_for(s_log_has, &lw, 5000)) {
        bench_note("rss: %s did not start", is_bare ? "bare server" : "broker");
        goto out;
    }
    int base = bench_fd_count(server);
    char count[16];
    snprintf(count, sizeof count, "%d", S_PEERS / S_PEER_PROCS);
    for (int i = 0; i < S_PEER_PROCS; i++) {
        char *plog = sn_strdupf("%s/peers-%d.log", dir, i);
        char *argv[] = {(char *)bench_self_exe(), "_peers", count, ep[0], ep[1], ep[2], NULL};
        peers[i] = sn_test_spawn(argv, plog);
        free(plog);
    }
    s_fd_wait_t fw = {server, base + 3 * S_PEERS};
    if (!sn_test_wait_for(s_fds_reached, &fw, 60000)) {
        bench_note("rss: only %d of %d connections accepted", bench_fd_count(server) - base,
                   3 * S_PEERS);
        goto out;
    }
    *anon = s_settled_kib(server, "RssAnon");
    *rss = bench_status_kib(server, "VmRSS");
    ok = *anon > 0 && *rss > 0;
out:
    for (int i = 0; i < S_PEER_PROCS; i++)
        if (peers[i] > 0 && sn_test_stop(peers[i], SIGTERM, 5000) != 0)
            bench_note("rss: a peer process did not exit 0");
    if (server > 0 && sn_test_stop(server, SIGTERM, 5000) != 0)
        bench_note("rss: %s did not exit 0", is_bare ? "bare server" : "broker");
    for (int i = 0; i < 3; i++)
        free(ep[i]);
    free(log);
    free(bin);
    return ok;
}

static bool s_broker_peers(const char *dir)
{
    double ratio[S_RSS_REPS], vratio[S_RSS_REPS], ba[S_RSS_REPS], xa[S_RSS_REPS];
    double bv[S_RSS_REPS], xv[S_RSS_REPS];
    for (int r = 0; r < S_RSS_REPS; r++) {
        long b_anon = 0, b_rss = 0, x_anon = 0, x_rss = 0;
        bool ok = r % 2 == 0 ? s_server_with_peers(dir, false, &b_anon, &b_rss) &&
                                   s_server_with_peers(dir, true, &x_anon, &x_rss)
                             : s_server_with_peers(dir, true, &x_anon, &x_rss) &&
                                   s_server_with_peers(dir, false, &b_anon, &b_rss);
        if (!ok)
            return false;
        ba[r] = s_mib(b_anon), xa[r] = s_mib(x_anon), bv[r] = s_mib(b_rss), xv[r] = s_mib(x_rss);
        ratio[r] = ba[r] / xa[r];
        vratio[r] = bv[r] / xv[r];
        bench_note("rss 1000 peers rep %d: broker anon %.1f MiB rss %.1f MiB | bare anon %.1f "
                   "MiB rss %.1f MiB",
                   r, ba[r], bv[r], xa[r], xv[r]);
    }
    bench_figure("broker_1000_peers_rss_anon_mib", bench_median(ba, S_RSS_REPS), "MiB");
    bench_figure("broker_1000_peers_vmrss_mib", bench_median(bv, S_RSS_REPS), "MiB");
    bench_figure("bare_1000_peers_rss_anon_mib", bench_median(xa, S_RSS_REPS), "MiB");
    bench_figure("bare_1000_peers_vmrss_mib", bench_median(xv, S_RSS_REPS), "MiB");
    double m = bench_median(ratio, S_RSS_REPS);
    bench_figure("broker_rss_ratio", m, "ratio");
    bench_goal("broker_rss_ratio", m, true, 1.25);
    bench_figure("broker_vmrss_ratio", bench_median(vratio, S_RSS_REPS), "ratio");
    return true;
}

typedef struct {
    sn_bus_pub_t *pub;
    sn_source_t *src;
    const char *log;
    const char *topic;
} s_warm_t;

static bool s_send_until_logged(void *arg)
{
    s_warm_t *w = arg;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, w->src, w->topic, id);
    if (sn_bus_pub_send_env(w->pub, &env) != SN_OK)
        return false;
    return sn_test_count_in_file(w->log, strcmp(w->topic, "bench.end") == 0 ? "stats " : "warm") >
           0;
}

static bool s_stopped_sub(const char *dir)
{
    char *ep[3];
    for (int i = 0; i < 3; i++)
        ep[i] = sn_strdupf("tcp://127.0.0.1:%d", sn_test_free_port());
    char *blog = sn_strdupf("%s/broker-stopped.log", dir);
    char *slog = sn_strdupf("%s/sub.log", dir);
    char *bin = sn_test_bin("sentinel-broker");
    char *bargv[] = {bin, "--rpc", ep[0], "--pub", ep[1], "--sub", ep[2], NULL};
    pid_t broker = sn_test_spawn(bargv, blog);
    char *sargv[] = {(char *)bench_self_exe(), "_sub", ep[2], NULL};
    pid_t sub = sn_test_spawn(sargv, slog);
    sn_bus_opts_t o = {.endpoint = ep[1], .hwm = S_EVENT_HWM};
    sn_bus_pub_t *pub = sn_bus_pub_new(&o);
    sn_source_t src;
    sn_source_init(&src, "bench", "stopped-sub");
    bool ok = false;
    s_warm_t w = {pub, &src, slog, "bench.warm"};
    if (broker <= 0 || sub <= 0 || !pub || !sn_test_wait_for(s_send_until_logged, &w, 10000)) {
        bench_note("rss: stopped-sub setup failed");
        goto out;
    }
    long before = s_settled_kib(broker, "RssAnon");
    long hwm_before = bench_status_kib(broker, "VmHWM");
    kill(sub, SIGSTOP);
    static char text[401];
    memset(text, 's', sizeof text - 1);
    Sentinel__V1__Note note = SENTINEL__V1__NOTE__INIT;
    note.text = text;
    size_t frame = 0;
    int64_t t0 = sn_mono_ms();
    for (int i = 0; i < S_EVENTS; i++) {
        sn_envelope_t env;
        char id[SN_ID_LEN + 1];
        sn_envelope_stamp(&env, &src, "bench.flood", id);
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_NOTE;
        env.note = &note;
        size_t len = 0;
        uint8_t *bytes = sn_envelope_pack(&env, &len);
        frame = len;
        if (sn_bus_pub_send(pub, "bench.flood", bytes, len) != SN_OK)
            bench_note("rss: publish refused");
        free(bytes);
    }
    long after = s_settled_kib(broker, "RssAnon");
    long hwm_after = bench_status_kib(broker, "VmHWM");
    bench_note("rss: published %d events of %zu bytes in %.1f s; broker RssAnon %ld -> %ld KiB, "
               "VmHWM %ld -> %ld KiB",
               S_EVENTS, frame, (double)(sn_mono_ms() - t0) / 1000.0, before, after, hwm_before,
               hwm_after);
    kill(sub, SIGCONT);
    s_warm_t e = {pub, &src, slog, "bench.end"};
    if (!sn_test_wait_for(s_send_until_logged, &e, 60000)) {
        bench_note("rss: the subscriber did not report after SIGCONT");
        goto out;
    }
    char *text_log = sn_test_read_file(slog);
    const char *st = text_log ? strstr(text_log, "stats ") : NULL;
    unsigned long long received = 0, gaps = 0, missed = 0;
    if (!st ||
        sscanf(st, "stats received=%llu gaps=%llu missed=%llu", &received, &gaps, &missed) != 3) {
        bench_note("rss: subscriber report unreadable");
        free(text_log);
        goto out;
    }
    free(text_log);
    double growth = s_mib(after - before);
    double limit = (double)S_EVENT_HWM * (double)frame / (1024.0 * 1024.0) + 8.0;
    bench_figure("stopped_sub_growth_mib", growth, "MiB");
    bench_figure("stopped_sub_peak_growth_mib", s_mib(hwm_after - hwm_before), "MiB");
    bench_goal("stopped_sub_growth_mib", growth, true, limit);
    bench_figure("stopped_sub_received", (double)received, "events");
    bench_figure("stopped_sub_gaps", (double)gaps, "gaps");
    bench_figure("stopped_sub_missed", (double)missed, "seqs");
    bench_goal("stopped_sub_gaps", (double)gaps, false, 1);
    ok = true;
out:
    sn_bus_pub_destroy(&pub);
    if (sub > 0) {
        kill(sub, SIGCONT);
        if (sn_test_alive(sub))
            sn_test_stop(sub, SIGTERM, 5000);
        else
            waitpid(sub, NULL, 0);
    }
    if (broker > 0 && sn_test_stop(broker, SIGTERM, 5000) != 0)
        bench_note("rss: broker did not exit 0");
    for (int i = 0; i < 3; i++)
        free(ep[i]);
    free(blog);
    free(slog);
    free(bin);
    return ok;
}

int bench_rss(void)
{
    bench_raise_nofile();
    char *dir = sn_test_tmpdir("bench-rss");
    bool ok = s_idle_agent();
    ok = s_broker_peers(dir) && ok;
    ok = s_stopped_sub(dir) && ok;
    sn_test_rmdir(dir);
    free(dir);
    return ok ? 0 : 1;
}
