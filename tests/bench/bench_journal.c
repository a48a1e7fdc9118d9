/* journal: the outbox write as the runtime does it against raw XADDs of the same entry
 * pipelined by 64 on the same redis-server (appendonly yes, appendfsync always, from
 * sn_test_redis_start). Median of BENCH_REPS paired runs. The goal's figure is the group
 * commit a burst uses: sn_journal_commit_batch of 64 events (one Redis Function call, so
 * one round trip and one fsync for the 64, then 64 bus publishes to an in-process broker).
 * Also reported: sn_journal_commit one event at a time (one call and one fsync per event),
 * raw XADD one at a time (unpipelined), which isolates what pipelining buys, and the
 * runtime's single-event Function pipelined by 64 from a raw context. */
#include "bench.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "broker_server.h"
#include "sentinel/sn_bus.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_redis.h"
#include "sn_test.h"

#define S_NS "bench:"
#define S_TYPE "bench.journal"
#define S_COMMITS 3000  /* one at a time */
#define S_BURST 64      /* events per group commit, as the raw XADDs are pipelined */
#define S_BATCHED 30000 /* events per group-commit run */
#define S_XADDS 60000
#define S_PIPELINE 64
#define S_UNPIPELINED 3000

typedef struct {
    sn_journal_t *journal;
    sn_envelope_t env;
    sn_envelope_t burst[S_BURST]; /* copies of env, one per event of a group commit */
    redisContext *rc;
    const char *stream;
    uint8_t *bytes; /* one packed envelope of the same size, for the raw XADDs */
    size_t len;
} s_bench_t;

static double s_commit_rate(s_bench_t *b, int count)
{
    int64_t t0 = sn_mono_us();
    for (int i = 0; i < count; i++) {
        sn_journal_result_t res;
        b->env.time_unix_ms = 0;
        sn_rc_t rc = sn_journal_commit(b->journal, NULL, NULL, 0, &b->env, &res);
        if (rc != SN_OK || !res.is_published) {
            bench_note("journal: commit %d failed rc=%s published=%d", i, sn_rc_str(rc),
                       (int)res.is_published);
            return -1;
        }
    }
    return count / ((double)(sn_mono_us() - t0) / 1e6);
}

/* A burst of S_BURST events committed together: one sn_journal_commit_batch call. */
static double s_batch_rate(s_bench_t *b, int count)
{
    sn_envelope_t *envs[S_BURST];
    sn_journal_result_t res[S_BURST];
    int64_t t0 = sn_mono_us();
    for (int i = 0; i < count; i += S_BURST) {
        size_t n = (size_t)(count - i < S_BURST ? count - i : S_BURST);
        for (size_t k = 0; k < n; k++) {
            b->burst[k] = b->env;
            b->burst[k].time_unix_ms = 0;
            envs[k] = &b->burst[k];
        }
        sn_rc_t rc = sn_journal_commit_batch(b->journal, n, NULL, NULL, 0, envs, res);
        if (rc != SN_OK || !res[n - 1].is_published) {
            bench_note("journal: batch at %d failed rc=%s published=%d", i, sn_rc_str(rc),
                       (int)res[n - 1].is_published);
            return -1;
        }
    }
    return count / ((double)(sn_mono_us() - t0) / 1e6);
}

static void s_xadd_append(s_bench_t *b)
{
    const char *argv[] = {"XADD", b->stream, "MAXLEN", "~",   "1000000",
                          "*",    "type",    S_TYPE,   "env", (const char *)b->bytes};
    size_t lens[10];
    for (int i = 0; i < 9; i++)
        lens[i] = strlen(argv[i]);
    lens[9] = b->len;
    SN_ASSERT(redisAppendCommandArgv(b->rc, 10, argv, lens) == REDIS_OK);
}

/* The runtime's own function, sentinel_journal_commit (no ops, no fence), from a raw
 * context: what a batched commit could reach. */
static void s_fcall_append(s_bench_t *b)
{
    const char *argv[] = {"FCALL", "sentinel_journal_commit", "1", b->stream, "1000000", "", "0",
                          S_TYPE,  (const char *)b->bytes};
    size_t lens[9];
    for (int i = 0; i < 8; i++)
        lens[i] = strlen(argv[i]);
    lens[8] = b->len;
    SN_ASSERT(redisAppendCommandArgv(b->rc, 9, argv, lens) == REDIS_OK);
}

static bool s_xadd_reply(s_bench_t *b)
{
    redisReply *reply = NULL;
    if (redisGetReply(b->rc, (void **)&reply) != REDIS_OK || !reply ||
        reply->type != REDIS_REPLY_STRING) {
        bench_note("journal: XADD failed: %s", reply && reply->str ? reply->str : b->rc->errstr);
        if (reply)
            freeReplyObject(reply);
        return false;
    }
    freeReplyObject(reply);
    return true;
}

static double s_xadd_rate(s_bench_t *b, int count, int depth, bool is_fcall)
{
    int64_t t0 = sn_mono_us();
    for (int i = 0; i < count; i += depth) {
        int n = count - i < depth ? count - i : depth;
        for (int k = 0; k < n; k++)
            if (is_fcall)
                s_fcall_append(b);
            else
                s_xadd_append(b);
        for (int k = 0; k < n; k++)
            if (!s_xadd_reply(b))
                return -1;
    }
    return count / ((double)(sn_mono_us() - t0) / 1e6);
}

int bench_journal(void)
{
    sn_test_redis_t redis;
    memset(&redis, 0, sizeof redis);
    if (!sn_test_redis_start(&redis)) {
        bench_note("journal: redis-server did not start");
        return 1;
    }
    int ret = 1;
    sn_broker_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.rpc = "tcp://127.0.0.1:*";
    cfg.pub = "tcp://127.0.0.1:*";
    cfg.sub = "tcp://127.0.0.1:*";
    broker_server_t *broker = broker_server_new(&cfg, NULL);
    sn_redis_opts_t ro = {.unix_path = redis.unix_path, .namespace_ = S_NS, .timeout_ms = 2000};
    sn_redis_t *r = sn_redis_new(&ro);
    sn_bus_opts_t bo = {.endpoint = broker ? broker_server_endpoint(broker, "pub") : NULL};
    sn_bus_pub_t *pub = broker ? sn_bus_pub_new(&bo) : NULL;
    sn_source_t src;
    sn_source_init(&src, "bench", "journal");
    s_bench_t b;
    memset(&b, 0, sizeof b);
    sn_journal_opts_t jo = {.redis = r, .bus = pub, .source = &src, .timeout_ms = 2000};
    b.journal = r && pub ? sn_journal_new(&jo) : NULL;
    b.rc = redisConnectUnixWithTimeout(redis.unix_path, (struct timeval){2, 0});
    b.stream = S_NS SN_JOURNAL_STREAM;
    if (!broker || !r || !pub || !b.journal || !b.rc || b.rc->err) {
        bench_note("journal: setup failed");
        goto out;
    }
    redisSetTimeout(b.rc, (struct timeval){5, 0});

    /* A ~512-byte event: a Note with 400 characters of text. */
    static char text[401];
    memset(text, 'j', sizeof text - 1);
    Sentinel__V1__Note note = SENTINEL__V1__NOTE__INIT;
    note.text = text;
    sentinel__v1__envelope__init(&b.env);
    b.env.type = S_TYPE;
    b.env.body_case = SENTINEL__V1__ENVELOPE__BODY_NOTE;
    b.env.note = &note;
    sn_envelope_t stamped;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&stamped, &src, S_TYPE, id);
    stamped.body_case = SENTINEL__V1__ENVELOPE__BODY_NOTE;
    stamped.note = &note;
    b.bytes = sn_envelope_pack(&stamped, &b.len);
    bench_note("journal: envelope %zu bytes", b.len);

    /* Warm-up: loads the library, fills the AOF's first pages. */
    if (s_commit_rate(&b, 200) < 0 || s_batch_rate(&b, 2000) < 0 ||
        s_xadd_rate(&b, 2000, S_PIPELINE, false) < 0)
        goto out;
    double ratio[BENCH_REPS], one_ratio[BENCH_REPS], g[BENCH_REPS], c[BENCH_REPS], x[BENCH_REPS],
        u[BENCH_REPS], f[BENCH_REPS];
    for (int i = 0; i < BENCH_REPS; i++) {
        if (i % 2 == 0) {
            g[i] = s_batch_rate(&b, S_BATCHED);
            x[i] = s_xadd_rate(&b, S_XADDS, S_PIPELINE, false);
        } else {
            x[i] = s_xadd_rate(&b, S_XADDS, S_PIPELINE, false);
            g[i] = s_batch_rate(&b, S_BATCHED);
        }
        c[i] = s_commit_rate(&b, S_COMMITS);
        u[i] = s_xadd_rate(&b, S_UNPIPELINED, 1, false);
        f[i] = s_xadd_rate(&b, S_XADDS / 2, S_PIPELINE, true);
        if (g[i] < 0 || c[i] < 0 || x[i] < 0 || u[i] < 0 || f[i] < 0)
            goto out;
        ratio[i] = g[i] / x[i];
        one_ratio[i] = c[i] / x[i];
        bench_note("journal rep %d: batch|64 %.0f/s commit|1 %.0f/s xadd|64 %.0f/s xadd|1 %.0f/s "
                   "fcall|64 %.0f/s ratio %.3f (one at a time %.3f)",
                   i, g[i], c[i], x[i], u[i], f[i], ratio[i], one_ratio[i]);
    }
    bench_figure("journal_batch64_commit_rate", bench_median(g, BENCH_REPS), "events/s");
    bench_figure("journal_one_at_a_time_commit_rate", bench_median(c, BENCH_REPS), "events/s");
    bench_figure("journal_xadd_pipelined_rate", bench_median(x, BENCH_REPS), "events/s");
    bench_figure("journal_xadd_unpipelined_rate", bench_median(u, BENCH_REPS), "events/s");
    bench_figure("journal_fcall_pipelined_rate", bench_median(f, BENCH_REPS), "events/s");
    bench_figure("journal_one_at_a_time_ratio", bench_median(one_ratio, BENCH_REPS), "ratio");
    double m = bench_median(ratio, BENCH_REPS);
    bench_figure("journal_ratio", m, "ratio");
    bench_goal("journal_ratio", m, false, 0.5);
    sn_journal_stats_t st;
    sn_journal_stats(b.journal, &st);
    bench_note("journal: committed=%llu published=%llu failed=%llu",
               (unsigned long long)st.committed, (unsigned long long)st.published,
               (unsigned long long)st.failed);
    ret = 0;
out:
    free(b.bytes);
    if (b.rc)
        redisFree(b.rc);
    sn_journal_destroy(&b.journal);
    sn_bus_pub_destroy(&pub);
    sn_redis_destroy(&r);
    broker_server_destroy(&broker);
    sn_test_redis_destroy(&redis);
    return ret;
}
