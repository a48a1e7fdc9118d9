/* Integration tests for sn_journal against a real redis-server (tests/support) and an
 * in-test XSUB/XPUB proxy: atomic commits, group commits (all or nothing, published in
 * order after the write), fencing, the outbox order, replay + live
 * reading, gaps after trimming, consumer groups with a dead replica, and two child
 * processes (this same binary re-executed): one SIGKILLed between its journal write and
 * its publish, one SIGTERMed right after a burst. */
#include "sn_test.h"

#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "sentinel/sn_bus.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_leader.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

/* ---- fixtures ---------------------------------------------------------------------- */

/* Everything one test needs: a redis-server, a namespace, the Redis threads, a bus
 * path with a subscriber that already receives, a source and the journal. */
typedef struct {
    sn_test_redis_t redis;
    char *ns;
    sn_redis_opts_t ropts;
    sn_redis_t *r;
    redisContext *raw;
    sn_test_proxy_t proxy;
    sn_bus_pub_t *pub;
    sn_bus_sub_t *sub;
    sn_source_t src;
    sn_journal_t *j;
} s_fx_t;

static int s_setup(void **state)
{
    s_fx_t *fx = sn_calloc(1, sizeof *fx);
    assert_true(sn_test_redis_start(&fx->redis));
    fx->ns = sn_test_namespace("journal");
    fx->ropts = (sn_redis_opts_t){
        .unix_path = fx->redis.unix_path, .namespace_ = fx->ns, .timeout_ms = 1000};
    fx->r = sn_redis_new(&fx->ropts);
    assert_non_null(fx->r);
    fx->raw = redisConnectUnix(fx->redis.unix_path);
    assert_true(fx->raw && !fx->raw->err);
    assert_true(sn_test_proxy_start(&fx->proxy));
    sn_bus_opts_t po = {.endpoint = fx->proxy.pub_ep};
    sn_bus_opts_t so = {.endpoint = fx->proxy.sub_ep};
    fx->pub = sn_bus_pub_new(&po);
    fx->sub = sn_bus_sub_new(&so);
    sn_bus_sub_subscribe(fx->sub, "");
    sn_source_init(&fx->src, "test", "journal");
    assert_int_equal(sn_bus_flush(fx->pub, fx->sub, &fx->src, 10000, NULL, NULL), SN_OK);
    sn_journal_opts_t jo = {.redis = fx->r, .bus = fx->pub, .source = &fx->src};
    fx->j = sn_journal_new(&jo);
    *state = fx;
    return 0;
}

static int s_teardown(void **state)
{
    s_fx_t *fx = *state;
    sn_journal_destroy(&fx->j);
    sn_bus_sub_destroy(&fx->sub);
    sn_bus_pub_destroy(&fx->pub);
    sn_test_proxy_stop(&fx->proxy);
    redisFree(fx->raw);
    sn_redis_destroy(&fx->r);
    sn_test_redis_destroy(&fx->redis);
    free(fx->ns);
    free(fx);
    return 0;
}

/* A raw command on the test's own context, with the namespace applied to @key. */
static redisReply *s_raw(s_fx_t *fx, const char *fmt, const char *key)
{
    char *full = sn_strdupf("%s%s", fx->ns, key);
    redisReply *r = redisCommand(fx->raw, fmt, full);
    free(full);
    assert_non_null(r);
    return r;
}

static long long s_raw_int(s_fx_t *fx, const char *fmt, const char *key)
{
    redisReply *r = s_raw(fx, fmt, key);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static char *s_raw_str(s_fx_t *fx, const char *fmt, const char *key)
{
    redisReply *r = s_raw(fx, fmt, key);
    char *v =
        r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ? sn_strdup(r->str) : NULL;
    freeReplyObject(r);
    return v;
}

static long long s_xlen(s_fx_t *fx)
{
    return s_raw_int(fx, "XLEN %s", SN_JOURNAL_STREAM);
}

/* An event with a Note body numbered @n (the journal stamps the rest). */
typedef struct {
    sn_envelope_t env;
    Sentinel__V1__Note note;
} s_event_t;

static sn_envelope_t *s_event(s_event_t *e, const char *type, int64_t n)
{
    sentinel__v1__envelope__init(&e->env);
    sentinel__v1__note__init(&e->note);
    e->env.type = (char *)type;
    e->note.n = n;
    e->env.body_case = SENTINEL__V1__ENVELOPE__BODY_NOTE;
    e->env.note = &e->note;
    return &e->env;
}

static sn_rc_t s_commit_n(s_fx_t *fx, const char *type, int64_t n, sn_journal_result_t *res)
{
    s_event_t e;
    return sn_journal_commit(fx->j, NULL, NULL, 0, s_event(&e, type, n), res);
}

/* Counts events other than flush markers that reach @sub before the flush marker of a
 * round trip started now: a barrier for "nothing else was published". */
static void s_count_event(void *arg, const sn_bus_event_t *ev)
{
    (*(int *)arg)++;
}

static int s_bus_events_before_barrier(s_fx_t *fx)
{
    int n = 0;
    assert_int_equal(sn_bus_flush(fx->pub, fx->sub, &fx->src, 5000, s_count_event, &n), SN_OK);
    return n;
}

/* ---- commit ------------------------------------------------------------------------ */

static void test_sn_journal_commit_is_atomic_and_published(void **state)
{
    s_fx_t *fx = *state;
    sn_journal_ops_t *ops = sn_journal_ops_new();
    sn_journal_ops_hset(ops, "run:1", "state", "running", 7);
    sn_journal_ops_hset(ops, "run:1", "bin", "a\0b", 3);
    sn_journal_ops_set(ops, "envlock:p:e", "run:1", 5, 60000);
    sn_journal_ops_zadd(ops, "runs:p", 1.5, "run:1");
    sn_journal_ops_sadd(ops, "set:x", "m1");
    sn_journal_ops_lpush(ops, "release:p:e:t", "v1", 2);
    sn_journal_ops_ltrim(ops, "release:p:e:t", 0, 9);
    sn_journal_ops_set(ops, "gone", "x", 1, 0);
    sn_journal_ops_del(ops, "gone");
    assert_int_equal(sn_journal_ops_count(ops), 9);

    s_event_t e;
    sn_journal_result_t res;
    sn_envelope_t *env = s_event(&e, "run.started", 1);
    assert_int_equal(sn_journal_commit(fx->j, ops, NULL, 0, env, &res), SN_OK);
    sn_journal_ops_destroy(&ops);
    assert_null(ops);
    assert_true(sn_journal_id_parse(res.stream_id, NULL, NULL));
    assert_true(sn_id_is_valid(res.event_id));
    assert_int_equal(res.seq, 1);
    assert_true(res.is_published);
    assert_int_equal(env->incarnation, fx->src.incarnation);

    /* State and event are both there. */
    char *v = s_raw_str(fx, "HGET %s state", "run:1");
    assert_string_equal(v, "running");
    free(v);
    assert_int_equal(s_raw_int(fx, "HSTRLEN %s bin", "run:1"), 3);
    assert_true(s_raw_int(fx, "PTTL %s", "envlock:p:e") > 0);
    v = s_raw_str(fx, "ZSCORE %s run:1", "runs:p");
    assert_string_equal(v, "1.5");
    free(v);
    assert_int_equal(s_raw_int(fx, "SISMEMBER %s m1", "set:x"), 1);
    assert_int_equal(s_raw_int(fx, "LLEN %s", "release:p:e:t"), 1);
    assert_int_equal(s_raw_int(fx, "EXISTS %s", "gone"), 0);
    assert_int_equal(s_xlen(fx), 1);

    /* The entry has the fixed format; the bus carried the same bytes. */
    redisReply *x = s_raw(fx, "XRANGE %s - +", SN_JOURNAL_STREAM);
    assert_int_equal(x->elements, 1);
    redisReply *entry = x->element[0];
    assert_string_equal(entry->element[0]->str, res.stream_id);
    redisReply *f = entry->element[1];
    assert_int_equal(f->elements, 4);
    assert_string_equal(f->element[0]->str, "type");
    assert_string_equal(f->element[1]->str, "run.started");
    assert_string_equal(f->element[2]->str, "env");
    sn_envelope_t *stored =
        sn_envelope_unpack(f->element[3]->str, f->element[3]->len, SN_MAX_FRAME_BYTES, NULL);
    assert_non_null(stored);
    assert_string_equal(stored->id, res.event_id);
    assert_int_equal(stored->seq, 1);
    assert_int_equal(stored->incarnation, fx->src.incarnation);
    assert_string_equal(stored->source, fx->src.name);
    sn_envelope_free(&stored);

    sn_bus_event_t ev;
    assert_int_equal(sn_bus_sub_recv(fx->sub, 5000, &ev), SN_OK);
    assert_string_equal(ev.topic, "run.started");
    assert_int_equal(ev.raw_len, f->element[3]->len);
    assert_memory_equal(ev.raw, f->element[3]->str, ev.raw_len);
    sn_bus_event_fini(&ev);
    freeReplyObject(x);

    sn_journal_stats_t st;
    sn_journal_stats(fx->j, &st);
    assert_int_equal(st.committed, 1);
    assert_int_equal(st.published, 1);
}

static void test_sn_journal_bad_batch_writes_nothing(void **state)
{
    s_fx_t *fx = *state;
    redisReply *r = s_raw(fx, "SET %s text", "plain");
    freeReplyObject(r);

    /* A valid first op, then HSET on a string: refused before the first write. */
    sn_journal_ops_t *ops = sn_journal_ops_new();
    sn_journal_ops_set(ops, "first", "1", 1, 0);
    sn_journal_ops_hset(ops, "plain", "f", "v", 1);
    s_event_t e;
    assert_int_equal(sn_journal_commit(fx->j, ops, NULL, 0, s_event(&e, "t.x", 1), NULL), SN_ERROR);
    sn_journal_ops_destroy(&ops);
    /* A SET then HSET on the same key in one batch: the tracked type catches it. */
    ops = sn_journal_ops_new();
    sn_journal_ops_set(ops, "fresh", "1", 1, 0);
    sn_journal_ops_hset(ops, "fresh", "f", "v", 1);
    assert_int_equal(sn_journal_commit(fx->j, ops, NULL, 0, s_event(&e, "t.x", 1), NULL), SN_ERROR);
    sn_journal_ops_destroy(&ops);

    const char *nan_score[] = {"nan", "m"};
    const char *bad_px[] = {"v", "soon"};
    const char *short_args[] = {"only-one"};
    const char *bad_range[] = {"0", "x"};
    struct {
        const char *name;
        int argc;
        const char **argv;
    } cases[] = {
        {"FLUSHALL", 0, NULL},   {"ZADD", 2, nan_score},  {"SET", 2, bad_px},
        {"HSET", 1, short_args}, {"LTRIM", 2, bad_range}, {"hset", 1, short_args},
    };
    for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
        ops = sn_journal_ops_new();
        sn_journal_ops_set(ops, "first", "1", 1, 0);
        sn_journal_ops_raw(ops, cases[i].name, "k", cases[i].argc, cases[i].argv);
        assert_int_equal(sn_journal_commit(fx->j, ops, NULL, 0, s_event(&e, "t.x", 1), NULL),
                         SN_ERROR);
        sn_journal_ops_destroy(&ops);
    }
    /* Events without a type, or too large, never reach Redis. */
    assert_int_equal(sn_journal_commit(fx->j, NULL, NULL, 0, s_event(&e, "", 1), NULL), SN_ERROR);
    s_event(&e, "t.big", 1);
    char *big = sn_calloc(1, SN_MAX_EVENT_BYTES + 1);
    memset(big, 'a', SN_MAX_EVENT_BYTES);
    e.note.text = big;
    assert_int_equal(sn_journal_commit(fx->j, NULL, NULL, 0, &e.env, NULL), SN_ERROR);
    free(big);
    assert_int_equal(sn_journal_commit(fx->j, NULL, "", 1, s_event(&e, "t.x", 1), NULL), SN_ERROR);

    assert_int_equal(s_raw_int(fx, "EXISTS %s", "first"), 0);
    assert_int_equal(s_raw_int(fx, "EXISTS %s", "fresh"), 0);
    assert_int_equal(s_raw_int(fx, "EXISTS %s", SN_JOURNAL_STREAM), 0);
    assert_int_equal(s_bus_events_before_barrier(fx), 0);

    /* The Lua refuses a hand-made call with a broken layout too (not only our encoder). */
    const char *keys[] = {SN_JOURNAL_STREAM};
    const char *args[] = {"10", "", "5"}; /* claims 5 ops, has none */
    assert_int_equal(sn_journal_commit_fcall(fx->j, "sentinel_journal_commit", 1, keys, 3, args,
                                             NULL, s_event(&e, "t.x", 1), NULL),
                     SN_ERROR);
    const char *args2[] = {"-1", "", "0"};
    assert_int_equal(sn_journal_commit_fcall(fx->j, "sentinel_journal_commit", 1, keys, 3, args2,
                                             NULL, s_event(&e, "t.x", 1), NULL),
                     SN_ERROR);
    assert_int_equal(s_xlen(fx), 0);
}

static void test_sn_journal_fenced_commit(void **state)
{
    s_fx_t *fx = *state;
    /* A real term of sn_leader: the lock value layout is theirs. */
    sn_leader_t *leader = sn_leader_new(fx->r, "buildpilot", "inst-1", 5000);
    assert_non_null(leader);
    uint64_t fence = 0;
    assert_int_equal(sn_leader_try(leader, &fence), SN_OK);
    assert_true(fence > 0);
    s_event_t e;
    sn_journal_ops_t *ops = sn_journal_ops_new();
    sn_journal_ops_hset(ops, "run:9", "state", "promoted", 8);

    /* Stale and forged-high fences, and a lock that is not there: nothing written,
     * nothing published. */
    assert_int_equal(
        sn_journal_commit(fx->j, ops, "leader:buildpilot", fence - 1, s_event(&e, "t.f", 1), NULL),
        SN_DECLINED);
    assert_int_equal(
        sn_journal_commit(fx->j, ops, "leader:buildpilot", fence + 1, s_event(&e, "t.f", 2), NULL),
        SN_DECLINED);
    assert_int_equal(
        sn_journal_commit(fx->j, ops, "leader:none", fence, s_event(&e, "t.f", 3), NULL),
        SN_DECLINED);
    /* An instance name ending in the right digits must not fool the check. */
    redisReply *r = s_raw(fx, "SET %s 5|tok|inst-77", "leader:other");
    freeReplyObject(r);
    assert_int_equal(sn_journal_commit(fx->j, ops, "leader:other", 77, s_event(&e, "t.f", 4), NULL),
                     SN_DECLINED);
    r = s_raw(fx, "HSET %s fence 5", "leader:hash");
    freeReplyObject(r);
    assert_int_equal(sn_journal_commit(fx->j, ops, "leader:hash", 5, s_event(&e, "t.f", 5), NULL),
                     SN_DECLINED);
    assert_int_equal(s_raw_int(fx, "EXISTS %s", "run:9"), 0);
    assert_int_equal(s_raw_int(fx, "EXISTS %s", SN_JOURNAL_STREAM), 0);
    assert_int_equal(s_bus_events_before_barrier(fx), 0);

    /* The current fence: written, and the envelope carries it. */
    sn_journal_result_t res;
    sn_envelope_t *env = s_event(&e, "t.f", 6);
    assert_int_equal(sn_journal_commit(fx->j, ops, "leader:buildpilot", fence, env, &res), SN_OK);
    assert_int_equal(env->fence, fence);
    assert_int_equal(s_raw_int(fx, "EXISTS %s", "run:9"), 1);
    assert_int_equal(s_xlen(fx), 1);
    assert_int_equal(sn_journal_commit(fx->j, NULL, "leader:other", 5, s_event(&e, "t.f", 7), NULL),
                     SN_OK);

    /* The lock lapses (released here): the old fence no longer writes. */
    assert_int_equal(sn_leader_release(leader), SN_OK);
    assert_int_equal(
        sn_journal_commit(fx->j, ops, "leader:buildpilot", fence, s_event(&e, "t.f", 8), NULL),
        SN_DECLINED);
    sn_leader_destroy(&leader);
    sn_journal_ops_destroy(&ops);
    sn_journal_stats_t st;
    sn_journal_stats(fx->j, &st);
    assert_int_equal(st.declined, 6);
    assert_int_equal(st.committed, 2);
}

static void test_sn_journal_redis_down_publishes_nothing(void **state)
{
    s_fx_t *fx = *state;
    sn_journal_result_t res;
    assert_int_equal(s_commit_n(fx, "t.up", 1, &res), SN_OK);
    sn_bus_event_t ev;
    assert_int_equal(sn_bus_sub_recv(fx->sub, 5000, &ev), SN_OK);
    sn_bus_event_fini(&ev);

    sn_test_redis_stop(&fx->redis);
    assert_int_equal(s_commit_n(fx, "t.down", 2, &res), SN_AGAIN);
    assert_false(res.is_published);
    assert_int_equal(s_bus_events_before_barrier(fx), 0);
    sn_journal_stats_t st;
    sn_journal_stats(fx->j, &st);
    assert_int_equal(st.published, 1);
    assert_int_equal(st.failed, 1);

    /* Back up: the library is loaded again on reconnect and writes resume. */
    assert_true(sn_test_redis_restart(&fx->redis));
    redisFree(fx->raw);
    fx->raw = redisConnectUnix(fx->redis.unix_path);
    sn_rc_t rc = SN_AGAIN;
    for (int64_t end = sn_mono_ms() + 10000; rc == SN_AGAIN && sn_mono_ms() < end;)
        rc = s_commit_n(fx, "t.again", 3, &res);
    assert_int_equal(rc, SN_OK);
    assert_int_equal(s_xlen(fx), 2); /* t.up survived the restart (AOF), plus t.again */
}

static void test_sn_journal_commit_fcall_variant(void **state)
{
    s_fx_t *fx = *state;
    /* A role library following the contract: last two ARGV are type and env. */
    const char *lua = "redis.register_function('test_role_write', function(keys, args)\n"
                      "  redis.call('SET', keys[2], args[1])\n"
                      "  return redis.call('XADD', keys[1], 'MAXLEN', '~', '1000', '*',\n"
                      "    'type', args[#args - 1], 'env', args[#args])\n"
                      "end)\n"
                      "redis.register_function('test_role_fenced', function(keys, args)\n"
                      "  return redis.error_reply('SNFENCE stale')\n"
                      "end)\n";
    sn_redis_add_library(fx->r, "test_role", lua);
    const char *keys[] = {SN_JOURNAL_STREAM, "role:state"};
    const char *args[] = {"hello"};
    s_event_t e;
    sn_journal_result_t res;
    assert_int_equal(sn_journal_commit_fcall(fx->j, "test_role_write", 2, keys, 1, args, NULL,
                                             s_event(&e, "role.did", 1), &res),
                     SN_OK);
    assert_true(res.is_published);
    char *v = s_raw_str(fx, "GET %s", "role:state");
    assert_string_equal(v, "hello");
    free(v);
    assert_int_equal(sn_journal_commit_fcall(fx->j, "test_role_fenced", 2, keys, 1, args, NULL,
                                             s_event(&e, "role.did", 2), &res),
                     SN_DECLINED);
    assert_int_equal(sn_journal_commit_fcall(fx->j, "no_such_function", 2, keys, 1, args, NULL,
                                             s_event(&e, "role.did", 3), &res),
                     SN_ERROR);
    sn_bus_event_t ev;
    assert_int_equal(sn_bus_sub_recv(fx->sub, 5000, &ev), SN_OK);
    assert_string_equal(ev.topic, "role.did");
    sn_bus_event_fini(&ev);
    assert_int_equal(s_bus_events_before_barrier(fx), 0);
    assert_int_equal(s_xlen(fx), 1);
}

/* ---- group commit ------------------------------------------------------------------ */

typedef struct {
    s_fx_t *fx;
    int calls;
    long long xlen_seen[8]; /* the stream length at each on_written call */
    char ids[8][SN_JOURNAL_ID_MAX];
} s_written_t;

static void s_on_written(void *arg, const char *stream_id)
{
    s_written_t *w = arg;
    assert_true(w->calls < 8);
    w->xlen_seen[w->calls] = s_xlen(w->fx);
    sn_strlcpy(w->ids[w->calls], stream_id, SN_JOURNAL_ID_MAX);
    w->calls++;
}

enum { S_BATCH = 5 };

/* FCALLs the server has run so far (INFO commandstats). */
static long long s_fcall_count(s_fx_t *fx)
{
    redisReply *r = redisCommand(fx->raw, "INFO commandstats");
    assert_true(r && r->type == REDIS_REPLY_STRING);
    const char *p = strstr(r->str, "cmdstat_fcall:calls=");
    long long n = p ? strtoll(p + strlen("cmdstat_fcall:calls="), NULL, 10) : 0;
    freeReplyObject(r);
    return n;
}

/* Five events, each with its own ops: one call, all written before the first publish,
 * published in order with consecutive seqs and increasing stream ids. */
static void test_sn_journal_commit_batch_writes_then_publishes_in_order(void **state)
{
    s_fx_t *fx = *state;
    s_written_t w = {.fx = fx};
    sn_journal_opts_t jo = {.redis = fx->r,
                            .bus = fx->pub,
                            .source = &fx->src,
                            .on_written = s_on_written,
                            .on_written_arg = &w};
    sn_journal_t *j = sn_journal_new(&jo);
    s_event_t e[S_BATCH];
    sn_envelope_t *envs[S_BATCH];
    sn_journal_ops_t *ops[S_BATCH];
    sn_journal_result_t res[S_BATCH];
    for (int i = 0; i < S_BATCH; i++) {
        envs[i] = s_event(&e[i], "t.batch", i);
        ops[i] = sn_journal_ops_new();
        char key[32], val[8];
        snprintf(key, sizeof key, "run:%d", i);
        snprintf(val, sizeof val, "s%d", i);
        sn_journal_ops_hset(ops[i], key, "state", val, strlen(val));
        sn_journal_ops_sadd(ops[i], "runs", key); /* a key shared across events */
    }
    sn_journal_ops_destroy(&ops[3]); /* an event without ops (NULL) */
    uint64_t seq0 = fx->src.seq;
    long long fcalls0 = s_fcall_count(fx);
    assert_int_equal(sn_journal_commit_batch(j, S_BATCH, (const sn_journal_ops_t *const *)ops, NULL,
                                             0, envs, res),
                     SN_OK);
    assert_int_equal(s_fcall_count(fx), fcalls0 + 1); /* one call for the five */
    /* Every on_written (and so every publish, which follows it) saw all five entries. */
    assert_int_equal(w.calls, S_BATCH);
    for (int i = 0; i < S_BATCH; i++) {
        assert_int_equal(w.xlen_seen[i], S_BATCH);
        assert_string_equal(w.ids[i], res[i].stream_id);
        assert_true(res[i].is_published);
        assert_int_equal(res[i].seq, seq0 + 1 + (uint64_t)i);
        if (i > 0)
            assert_true(sn_journal_id_cmp(res[i - 1].stream_id, res[i].stream_id) < 0);
    }
    for (int i = 0; i < S_BATCH; i++) {
        char key[32];
        snprintf(key, sizeof key, "run:%d", i);
        assert_int_equal(s_raw_int(fx, "EXISTS %s", key), i == 3 ? 0 : 1);
    }
    assert_int_equal(s_raw_int(fx, "SCARD %s", "runs"), S_BATCH - 1);

    /* The stream holds them in order; the bus carried the same bytes in the same order. */
    redisReply *x = s_raw(fx, "XRANGE %s - +", SN_JOURNAL_STREAM);
    assert_int_equal(x->elements, S_BATCH);
    for (int i = 0; i < S_BATCH; i++) {
        redisReply *entry = x->element[i];
        assert_string_equal(entry->element[0]->str, res[i].stream_id);
        redisReply *f = entry->element[1];
        sn_bus_event_t ev;
        assert_int_equal(sn_bus_sub_recv(fx->sub, 5000, &ev), SN_OK);
        assert_string_equal(ev.topic, "t.batch");
        assert_int_equal(ev.env->seq, res[i].seq);
        assert_int_equal(ev.env->note->n, i);
        assert_string_equal(ev.env->id, res[i].event_id);
        assert_int_equal(ev.raw_len, f->element[3]->len);
        assert_memory_equal(ev.raw, f->element[3]->str, ev.raw_len);
        sn_bus_event_fini(&ev);
    }
    freeReplyObject(x);
    assert_int_equal(s_bus_events_before_barrier(fx), 0);
    sn_journal_stats_t st;
    sn_journal_stats(j, &st);
    assert_int_equal(st.committed, S_BATCH);
    assert_int_equal(st.published, S_BATCH);
    /* results may be NULL; a batch of one works. */
    assert_int_equal(sn_journal_commit_batch(j, 1, NULL, NULL, 0, envs, NULL), SN_OK);
    assert_int_equal(s_xlen(fx), S_BATCH + 1);
    for (int i = 0; i < S_BATCH; i++)
        sn_journal_ops_destroy(&ops[i]);
    sn_journal_destroy(&j);
}

/* A bad op in the 3rd of 5 events, a type clash between two events, a fence refusal,
 * a bad envelope, bad counts: nothing written, nothing published. */
static void test_sn_journal_commit_batch_all_or_nothing(void **state)
{
    s_fx_t *fx = *state;
    redisReply *rr = s_raw(fx, "SET %s text", "plain");
    freeReplyObject(rr);
    s_event_t e[S_BATCH];
    sn_envelope_t *envs[S_BATCH];
    sn_journal_ops_t *ops[S_BATCH];
    for (int i = 0; i < S_BATCH; i++) {
        envs[i] = s_event(&e[i], "t.atomic", i);
        ops[i] = sn_journal_ops_new();
        char key[32];
        snprintf(key, sizeof key, "ok:%d", i);
        sn_journal_ops_set(ops[i], key, "1", 1, 0);
    }
    const sn_journal_ops_t *const *cops = (const sn_journal_ops_t *const *)ops;
    /* The 3rd event's second op is HSET on a string. */
    sn_journal_ops_hset(ops[2], "plain", "f", "v", 1);
    assert_int_equal(sn_journal_commit_batch(fx->j, S_BATCH, cops, NULL, 0, envs, NULL), SN_ERROR);
    sn_journal_ops_destroy(&ops[2]);
    ops[2] = sn_journal_ops_new();
    sn_journal_ops_set(ops[2], "ok:2", "1", 1, 0);
    /* Event 1 makes "shared" a string; event 4 wants it as a hash: the type tracked
     * across the batch refuses it before any write. */
    sn_journal_ops_set(ops[0], "shared", "1", 1, 0);
    sn_journal_ops_hset(ops[3], "shared", "f", "v", 1);
    assert_int_equal(sn_journal_commit_batch(fx->j, S_BATCH, cops, NULL, 0, envs, NULL), SN_ERROR);
    sn_journal_ops_destroy(&ops[3]);
    ops[3] = sn_journal_ops_new();
    sn_journal_ops_set(ops[3], "ok:3", "1", 1, 0);

    /* Fenced: a stale fence refuses the whole batch; the current one writes all. */
    sn_leader_t *leader = sn_leader_new(fx->r, "batcher", "inst-1", 5000);
    uint64_t fence = 0;
    assert_int_equal(sn_leader_try(leader, &fence), SN_OK);
    assert_int_equal(
        sn_journal_commit_batch(fx->j, S_BATCH, cops, "leader:batcher", fence - 1, envs, NULL),
        SN_DECLINED);
    assert_int_equal(
        sn_journal_commit_batch(fx->j, S_BATCH, cops, "leader:nobody", fence, envs, NULL),
        SN_DECLINED);

    /* Bad input, refused before Redis. */
    assert_int_equal(sn_journal_commit_batch(fx->j, 0, cops, NULL, 0, envs, NULL), SN_ERROR);
    assert_int_equal(
        sn_journal_commit_batch(fx->j, SN_JOURNAL_BATCH_MAX + 1, cops, NULL, 0, envs, NULL),
        SN_ERROR);
    assert_int_equal(sn_journal_commit_batch(fx->j, S_BATCH, cops, NULL, 0, NULL, NULL), SN_ERROR);
    assert_int_equal(sn_journal_commit_batch(fx->j, S_BATCH, cops, "", fence, envs, NULL),
                     SN_ERROR);
    sn_envelope_t *holey[S_BATCH] = {envs[0], envs[1], NULL, envs[3], envs[4]};
    assert_int_equal(sn_journal_commit_batch(fx->j, S_BATCH, cops, NULL, 0, holey, NULL), SN_ERROR);
    e[2].env.type = "";
    assert_int_equal(sn_journal_commit_batch(fx->j, S_BATCH, cops, NULL, 0, envs, NULL), SN_ERROR);
    e[2].env.type = "t.atomic";

    for (int i = 0; i < S_BATCH; i++) {
        char key[32];
        snprintf(key, sizeof key, "ok:%d", i);
        assert_int_equal(s_raw_int(fx, "EXISTS %s", key), 0);
    }
    assert_int_equal(s_raw_int(fx, "EXISTS %s", "shared"), 0);
    assert_int_equal(s_raw_int(fx, "EXISTS %s", SN_JOURNAL_STREAM), 0);
    assert_int_equal(s_bus_events_before_barrier(fx), 0);

    /* The Lua refuses hand-made layouts too: more events claimed than given, an event's
     * key count beyond KEYS, keys left over. */
    char *stream = sn_strdupf("%s%s", fx->ns, SN_JOURNAL_STREAM);
    char *k1 = sn_strdupf("%sk1", fx->ns);
    const char *bad[][12] = {
        {"FCALL", "sentinel_journal_commit_batch", "1", stream, "10", "", "3", "0", "0", "t", "e",
         NULL},
        {"FCALL", "sentinel_journal_commit_batch", "1", stream, "10", "", "1", "2", "0", "t", "e",
         NULL},
        {"FCALL", "sentinel_journal_commit_batch", "2", stream, k1, "10", "", "1", "0", "0", "t",
         "e"},
        {"FCALL", "sentinel_journal_commit_batch", "1", stream, "10", "", "1", "0", "0", "t", "e",
         "extra"},
    };
    for (size_t c = 0; c < SN_ARRAY_LEN(bad); c++) {
        int argc = 0;
        while (argc < 12 && bad[c][argc])
            argc++;
        redisReply *r = redisCommandArgv(fx->raw, argc, bad[c], NULL);
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_ERROR);
        assert_non_null(strstr(r->str, "SNBAD"));
        freeReplyObject(r);
    }
    free(stream);
    free(k1);
    assert_int_equal(s_raw_int(fx, "EXISTS %s", SN_JOURNAL_STREAM), 0);

    /* The current fence: all five written, each envelope carries it. */
    sn_journal_result_t res[S_BATCH];
    assert_int_equal(
        sn_journal_commit_batch(fx->j, S_BATCH, cops, "leader:batcher", fence, envs, res), SN_OK);
    for (int i = 0; i < S_BATCH; i++) {
        assert_int_equal(envs[i]->fence, fence);
        assert_true(res[i].is_published);
    }
    assert_int_equal(s_xlen(fx), S_BATCH);
    assert_int_equal(s_raw_int(fx, "EXISTS %s", "ok:4"), 1);
    sn_journal_stats_t st;
    sn_journal_stats(fx->j, &st);
    assert_int_equal(st.declined, 2);
    assert_int_equal(st.committed, S_BATCH);
    sn_leader_destroy(&leader);
    for (int i = 0; i < S_BATCH; i++)
        sn_journal_ops_destroy(&ops[i]);
}

/* ---- reading ----------------------------------------------------------------------- */

static sn_journal_reader_t *s_reader(s_fx_t *fx, const char *cursor, const char *group,
                                     const char *consumer, int claim_idle_ms)
{
    sn_journal_reader_opts_t o = {.redis = &fx->ropts,
                                  .cursor = cursor,
                                  .batch = 7,
                                  .block_ms = 100,
                                  .group = group,
                                  .consumer = consumer,
                                  .claim_idle_ms = claim_idle_ms};
    sn_journal_reader_t *rd = sn_journal_reader_new(&o);
    assert_non_null(rd);
    return rd;
}

static void test_sn_journal_replay_then_live(void **state)
{
    s_fx_t *fx = *state;
    enum { N = 30, K = 12, M = 25 };
    char ids[N + M + 1][SN_JOURNAL_ID_MAX];
    for (int i = 1; i <= N; i++) {
        sn_journal_result_t res;
        assert_int_equal(s_commit_n(fx, "t.r", i, &res), SN_OK);
        memcpy(ids[i], res.stream_id, SN_JOURNAL_ID_MAX);
    }
    sn_journal_reader_t *rd = s_reader(fx, ids[K], NULL, NULL, 0);
    sn_journal_reader_t *from_new = s_reader(fx, "$", NULL, NULL, 0);
    sn_journal_reader_t *from_start = s_reader(fx, "0", NULL, NULL, 0);

    int expect = K + 1;
    int committed = N;
    while (expect <= N + M) {
        /* Keep writing while the reader reads. */
        if (committed < N + M && (expect > N - 5 || committed < N + 3)) {
            sn_journal_result_t res;
            committed++;
            assert_int_equal(s_commit_n(fx, "t.r", committed, &res), SN_OK);
            memcpy(ids[committed], res.stream_id, SN_JOURNAL_ID_MAX);
        }
        sn_journal_entry_t en;
        assert_int_equal(sn_journal_reader_next(rd, 5000, &en), SN_OK);
        assert_false(en.is_gap);
        assert_non_null(en.env);
        assert_int_equal(en.env->note->n, expect);
        assert_string_equal(en.id, ids[expect]);
        assert_string_equal(en.type, "t.r");
        sn_journal_entry_fini(&en);
        expect++;
    }
    sn_journal_entry_t en;
    assert_int_equal(sn_journal_reader_next(rd, 300, &en), SN_AGAIN); /* no duplicate */

    /* "$": only what came after it started, which is at least the last few live ones. */
    assert_int_equal(sn_journal_reader_next(from_new, 5000, &en), SN_OK);
    int64_t first_new = en.env->note->n;
    assert_true(first_new > N);
    sn_journal_entry_fini(&en);
    for (int64_t n = first_new + 1; n <= N + M; n++) {
        assert_int_equal(sn_journal_reader_next(from_new, 5000, &en), SN_OK);
        assert_int_equal(en.env->note->n, n);
        sn_journal_entry_fini(&en);
    }
    /* "0": everything. */
    for (int n = 1; n <= N + M; n++) {
        assert_int_equal(sn_journal_reader_next(from_start, 5000, &en), SN_OK);
        assert_int_equal(en.env->note->n, n);
        sn_journal_entry_fini(&en);
    }
    sn_journal_reader_stats_t st;
    sn_journal_reader_stats(rd, &st);
    assert_int_equal(st.delivered, N + M - K);
    assert_int_equal(st.gaps, 0);
    sn_journal_reader_destroy(&rd);
    sn_journal_reader_destroy(&from_new);
    sn_journal_reader_destroy(&from_start);
    assert_null(rd);
    sn_journal_reader_destroy(NULL);
}

static void test_sn_journal_reader_bad_options(void **state)
{
    s_fx_t *fx = *state;
    const char *bad[] = {"abc", "1-x", "-1", "", "1-2-3"};
    for (size_t i = 0; i < SN_ARRAY_LEN(bad); i++) {
        sn_journal_reader_opts_t o = {.redis = &fx->ropts, .cursor = bad[i]};
        assert_null(sn_journal_reader_new(&o));
    }
    sn_journal_reader_opts_t g = {.redis = &fx->ropts, .group = "g"};
    assert_null(sn_journal_reader_new(&g));
    sn_journal_reader_t *rd = s_reader(fx, "0", NULL, NULL, 0);
    assert_int_equal(sn_journal_reader_ack(rd, "1-1"), SN_ERROR); /* no group */
    sn_journal_reader_destroy(&rd);
    rd = s_reader(fx, "0", "g", "c", 0);
    assert_int_equal(sn_journal_reader_ack(rd, "junk"), SN_ERROR);
    sn_journal_reader_destroy(&rd);

    assert_true(sn_journal_id_parse("1-2", NULL, NULL));
    assert_true(sn_journal_id_parse("15", NULL, NULL));
    assert_false(sn_journal_id_parse("x", NULL, NULL));
    assert_false(sn_journal_id_parse("1-", NULL, NULL));
    assert_false(sn_journal_id_parse("99999999999999999999999-1", NULL, NULL));
    assert_true(sn_journal_id_cmp("1-2", "1-10") < 0);
    assert_true(sn_journal_id_cmp("2-0", "1-10") > 0);
    assert_int_equal(sn_journal_id_cmp("3", "3-0"), 0);
}

static void test_sn_journal_malformed_entry_counted(void **state)
{
    s_fx_t *fx = *state;
    char *key = sn_strdupf("%s%s", fx->ns, SN_JOURNAL_STREAM);
    redisReply *r = redisCommand(fx->raw, "XADD %s * type t.bad env %b", key, "\xff\x01", 2);
    freeReplyObject(r);
    free(key);
    assert_int_equal(s_commit_n(fx, "t.good", 1, NULL), SN_OK);
    sn_journal_reader_t *rd = s_reader(fx, "0-0", NULL, NULL, 0);
    sn_journal_entry_t en;
    assert_int_equal(sn_journal_reader_next(rd, 5000, &en), SN_OK);
    assert_null(en.env);
    assert_string_equal(en.type, "t.bad");
    assert_int_equal(en.raw_len, 2);
    sn_journal_entry_fini(&en);
    assert_int_equal(sn_journal_reader_next(rd, 5000, &en), SN_OK);
    assert_non_null(en.env);
    sn_journal_entry_fini(&en);
    sn_journal_reader_stats_t st;
    sn_journal_reader_stats(rd, &st);
    assert_int_equal(st.malformed, 1);
    sn_journal_reader_destroy(&rd);
}

static bool s_clock_passed(void *arg)
{
    return (uint64_t)sn_wall_ms() > *(uint64_t *)arg + 1;
}

static void test_sn_journal_gap_after_trim(void **state)
{
    s_fx_t *fx = *state;
    char ids[11][SN_JOURNAL_ID_MAX];
    for (int i = 1; i <= 10; i++) {
        sn_journal_result_t res;
        assert_int_equal(s_commit_n(fx, "t.g", i, &res), SN_OK);
        memcpy(ids[i], res.stream_id, SN_JOURNAL_ID_MAX);
    }
    assert_int_equal(s_raw_int(fx, "XTRIM %s MAXLEN 5", SN_JOURNAL_STREAM), 5);

    /* A cursor at entry 3: entries 4 and 5 are gone -> gap first, then 6..10. */
    sn_journal_reader_t *rd = s_reader(fx, ids[3], NULL, NULL, 0);
    sn_journal_entry_t en;
    assert_int_equal(sn_journal_reader_next(rd, 5000, &en), SN_OK);
    assert_true(en.is_gap);
    assert_string_equal(en.type, SN_JOURNAL_GAP_TYPE);
    assert_int_equal(en.env->body_case, SENTINEL__V1__ENVELOPE__BODY_GAP);
    assert_string_equal(en.env->gap->requested_id, ids[3]);
    assert_string_equal(en.env->gap->first_id, ids[6]);
    assert_int_equal(en.env->gap->missed_at_least, 0); /* trimmed ids are not recorded */
    sn_journal_entry_fini(&en);
    for (int i = 6; i <= 10; i++) {
        assert_int_equal(sn_journal_reader_next(rd, 5000, &en), SN_OK);
        assert_false(en.is_gap);
        assert_int_equal(en.env->note->n, i);
        sn_journal_entry_fini(&en);
    }
    sn_journal_reader_destroy(&rd);

    /* A cursor at the first entry kept missed nothing; "0" never has a gap. */
    const char *cursors[] = {ids[6], "0"};
    for (size_t c = 0; c < SN_ARRAY_LEN(cursors); c++) {
        rd = s_reader(fx, cursors[c], NULL, NULL, 0);
        assert_int_equal(sn_journal_reader_next(rd, 5000, &en), SN_OK);
        assert_false(en.is_gap);
        assert_int_equal(en.env->note->n, c == 0 ? 7 : 6);
        sn_journal_entry_fini(&en);
        sn_journal_reader_destroy(&rd);
    }

    /* A deletion after the cursor (XDEL of entry 8) is proven: missed_at_least 1. */
    char *key = sn_strdupf("%s%s", fx->ns, SN_JOURNAL_STREAM);
    redisReply *d = redisCommand(fx->raw, "XDEL %s %s", key, ids[8]);
    freeReplyObject(d);
    free(key);
    rd = s_reader(fx, ids[7], NULL, NULL, 0);
    assert_int_equal(sn_journal_reader_next(rd, 5000, &en), SN_OK);
    assert_true(en.is_gap);
    assert_int_equal(en.env->gap->missed_at_least, 1);
    sn_journal_entry_fini(&en);
    assert_int_equal(sn_journal_reader_next(rd, 5000, &en), SN_OK);
    assert_int_equal(en.env->note->n, 9);
    sn_journal_entry_fini(&en);
    sn_journal_reader_destroy(&rd);

    /* Age trimming: nothing is an hour old; everything is older than 0 s once the
     * clock has moved past the last id's millisecond. */
    int64_t trimmed = -1;
    assert_int_equal(sn_journal_trim(fx->j, 3600, &trimmed), SN_OK);
    assert_int_equal(trimmed, 0);
    uint64_t last_ms = 0;
    assert_true(sn_journal_id_parse(ids[10], &last_ms, NULL));
    assert_true(sn_test_wait_for(s_clock_passed, &last_ms, 5000));
    assert_int_equal(sn_journal_trim(fx->j, 0, &trimmed), SN_OK);
    assert_int_equal(trimmed, 4);
    assert_int_equal(s_xlen(fx), 0);
}

/* Reads up to @max entries from @rd within @ms, acknowledging them if @ack; records the
 * note numbers seen in @seen (counts per number). */
static int s_drain(sn_journal_reader_t *rd, int ms, bool ack, int *seen, int seen_len,
                   bool *any_claimed)
{
    int n = 0;
    sn_journal_entry_t en;
    while (sn_journal_reader_next(rd, ms, &en) == SN_OK) {
        assert_non_null(en.env);
        int64_t k = en.env->note->n;
        assert_true(k >= 0 && k < seen_len);
        seen[k]++;
        if (en.is_claimed && any_claimed)
            *any_claimed = true;
        if (ack)
            assert_int_equal(sn_journal_reader_ack(rd, en.id), SN_OK);
        sn_journal_entry_fini(&en);
        n++;
    }
    return n;
}

typedef struct {
    s_fx_t *fx;
    long long want;
} s_pending_t;

static bool s_pending_is(void *arg)
{
    s_pending_t *p = arg;
    char *key = sn_strdupf("%s%s", p->fx->ns, SN_JOURNAL_STREAM);
    redisReply *r = redisCommand(p->fx->raw, "XPENDING %s g", key);
    free(key);
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
              r->element[0]->type == REDIS_REPLY_INTEGER && r->element[0]->integer == p->want;
    if (r)
        freeReplyObject(r);
    return ok;
}

static void test_sn_journal_consumer_group(void **state)
{
    s_fx_t *fx = *state;
    enum { N = 40, M = 10 };
    int seen_a[N + M + 1] = {0}, seen_b[N + M + 1] = {0};
    sn_journal_reader_t *a = s_reader(fx, "0", "g", "a", 60000);
    sn_journal_reader_t *b = s_reader(fx, "0", "g", "b", 60000);
    for (int i = 1; i <= N; i++)
        assert_int_equal(s_commit_n(fx, "t.c", i, NULL), SN_OK);
    int total = 0;
    for (int64_t end = sn_mono_ms() + 10000; total < N && sn_mono_ms() < end;) {
        total += s_drain(a, 50, true, seen_a, N + M + 1, NULL);
        total += s_drain(b, 50, true, seen_b, N + M + 1, NULL);
    }
    assert_int_equal(total, N);
    for (int i = 1; i <= N; i++)
        assert_int_equal(seen_a[i] + seen_b[i], 1); /* each entry handled exactly once */
    s_pending_t p = {fx, 0};
    assert_true(sn_test_wait_for(s_pending_is, &p, 5000));
    sn_journal_reader_destroy(&a);
    sn_journal_reader_destroy(&b);

    /* Replica "a2" takes M entries and dies without acknowledging them. */
    sn_journal_reader_t *a2 = s_reader(fx, "0", "g", "a2", 60000);
    for (int i = N + 1; i <= N + M; i++)
        assert_int_equal(s_commit_n(fx, "t.c", i, NULL), SN_OK);
    int got = 0;
    for (int64_t end = sn_mono_ms() + 10000; got < M && sn_mono_ms() < end;)
        got += s_drain(a2, 50, false, seen_a, N + M + 1, NULL);
    assert_int_equal(got, M);
    sn_journal_reader_destroy(&a2);
    p.want = M;
    assert_true(sn_test_wait_for(s_pending_is, &p, 5000));

    /* Replica "b" restarts with a short claim time: it reclaims them all. */
    b = s_reader(fx, "0", "g", "b", 200);
    bool any_claimed = false;
    got = 0;
    for (int64_t end = sn_mono_ms() + 10000; got < M && sn_mono_ms() < end;)
        got += s_drain(b, 50, true, seen_b, N + M + 1, &any_claimed);
    assert_int_equal(got, M);
    assert_true(any_claimed);
    for (int i = N + 1; i <= N + M; i++)
        assert_int_equal(seen_b[i], 1);
    p.want = 0;
    assert_true(sn_test_wait_for(s_pending_is, &p, 5000));
    sn_journal_reader_destroy(&b);
}

/* ---- child processes --------------------------------------------------------------- */

static void s_kill_self(void *arg, const char *stream_id)
{
    raise(SIGKILL); /* between the journal write and the publish */
}

/* argv: mode unix_path ns pub_ep sub_ep count */
static int s_child_main(int argc, char **argv)
{
    if (argc < 8)
        return 3;
    const char *mode = argv[2];
    int64_t count = 0;
    if (sn_parse_i64(argv[7], 1, 100000, &count) != SN_OK)
        return 3;
    sn_log_init("test", "child");
    zsys_init();
    sn_redis_opts_t ro = {.unix_path = argv[3], .namespace_ = argv[4], .timeout_ms = 2000};
    sn_redis_t *r = sn_redis_new(&ro);
    sn_bus_opts_t po = {.endpoint = argv[5]};
    sn_bus_opts_t so = {.endpoint = argv[6]};
    sn_bus_pub_t *pub = sn_bus_pub_new(&po);
    sn_bus_sub_t *sub = sn_bus_sub_new(&so);
    sn_source_t src;
    sn_source_init(&src, "test", mode);
    sn_journal_opts_t jo = {.redis = r, .bus = pub, .source = &src};
    if (strcmp(mode, "kill") == 0)
        jo.on_written = s_kill_self;
    sn_journal_t *j = sn_journal_new(&jo);
    int rc = 0;
    /* As the runtime does at start: wait until the bus path is up before the first
     * event (a fresh PUB drops until the broker's subscription has arrived). */
    if (strcmp(mode, "burst") == 0 && sn_bus_flush(pub, sub, &src, 10000, NULL, NULL) != SN_OK)
        rc = 6;
    for (int64_t i = 1; i <= count && rc == 0; i++) {
        s_event_t e;
        if (sn_journal_commit(j, NULL, NULL, 0, s_event(&e, "t.child", i), NULL) != SN_OK)
            rc = 4;
    }
    /* Burst mode: wait for SIGTERM (czmq's handler sets zsys_interrupted), then flush
     * the bus tail before closing, as the runtime does at shutdown. */
    while (rc == 0 && !zsys_interrupted) {
        sn_bus_event_t ev;
        if (sn_bus_sub_recv(sub, 100, &ev) == SN_OK)
            sn_bus_event_fini(&ev);
    }
    if (rc == 0 && sn_bus_flush(pub, sub, &src, 5000, NULL, NULL) != SN_OK)
        rc = 5;
    sn_journal_destroy(&j);
    sn_bus_sub_destroy(&sub);
    sn_bus_pub_destroy(&pub);
    sn_redis_destroy(&r);
    return rc;
}

static pid_t s_spawn_child(s_fx_t *fx, const char *mode, int count)
{
    /* SN_TEST_BIN_DIR is defined for test executables, not for the support library. */
    char *bin = sn_strdupf("%s/test_sn_journal", SN_TEST_BIN_DIR);
    char n[16];
    snprintf(n, sizeof n, "%d", count);
    char *argv[] = {bin,    "--child",        (char *)mode,     fx->redis.unix_path,
                    fx->ns, fx->proxy.pub_ep, fx->proxy.sub_ep, n,
                    NULL};
    pid_t pid = sn_test_spawn(argv, NULL);
    free(bin);
    assert_true(pid > 0);
    return pid;
}

static void test_sn_journal_killed_between_write_and_publish(void **state)
{
    s_fx_t *fx = *state;
    pid_t pid = s_spawn_child(fx, "kill", 1);
    int status = sn_test_stop(pid, 0, 20000); /* signal 0: just wait for it to end */
    assert_true(status != -1);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);
    /* The event is in the journal although it was never published. */
    assert_int_equal(s_xlen(fx), 1);
    redisReply *x = s_raw(fx, "XRANGE %s - +", SN_JOURNAL_STREAM);
    redisReply *f = x->element[0]->element[1];
    sn_envelope_t *env =
        sn_envelope_unpack(f->element[3]->str, f->element[3]->len, SN_MAX_FRAME_BYTES, NULL);
    assert_non_null(env);
    assert_string_equal(env->source, "sentinel/test/kill");
    assert_int_equal(env->seq, 1);
    sn_envelope_free(&env);
    freeReplyObject(x);
    assert_int_equal(s_bus_events_before_barrier(fx), 0);
    /* A reader replaying the journal gets it: the record is complete. */
    sn_journal_reader_t *rd = s_reader(fx, "0", NULL, NULL, 0);
    sn_journal_entry_t en;
    assert_int_equal(sn_journal_reader_next(rd, 5000, &en), SN_OK);
    assert_string_equal(en.type, "t.child");
    sn_journal_entry_fini(&en);
    sn_journal_reader_destroy(&rd);
}

typedef struct {
    s_fx_t *fx;
    long long want;
} s_xlen_t;

static bool s_xlen_is(void *arg)
{
    s_xlen_t *x = arg;
    return s_xlen(x->fx) == x->want;
}

static void test_sn_journal_sigterm_after_burst(void **state)
{
    s_fx_t *fx = *state;
    enum { N = 400 };
    pid_t pid = s_spawn_child(fx, "burst", N);
    s_xlen_t x = {fx, N};
    assert_true(sn_test_wait_for(s_xlen_is, &x, 20000));
    int status = sn_test_stop(pid, SIGTERM, 10000);
    assert_true(status != -1);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* Every event is in the journal (commit is synchronous)... */
    assert_int_equal(s_xlen(fx), N);
    /* ...and, thanks to the flush, every one also crossed the bus, in order. */
    int got = 0;
    bool saw_marker = false;
    for (;;) {
        sn_bus_event_t ev;
        if (sn_bus_sub_recv(fx->sub, 5000, &ev) != SN_OK)
            break;
        if (strcmp(ev.env->source, "sentinel/test/burst") == 0) {
            if (strcmp(ev.topic, SN_BUS_FLUSH_TYPE) == 0) {
                saw_marker = got == N; /* the shutdown flush; earlier ones warmed up */
            } else {
                got++;
                assert_int_equal(ev.env->seq, got);
                assert_false(ev.is_gap);
            }
        }
        sn_bus_event_fini(&ev);
        if (saw_marker)
            break;
    }
    assert_true(saw_marker);
    assert_int_equal(got, N);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--child") == 0)
        return s_child_main(argc, argv);
    sn_log_init("test", "journal");
    zsys_init();
    if (getenv("SN_TEST_SKIP")) /* e.g. "*redis_down*" while debugging */
        cmocka_set_skip_filter(getenv("SN_TEST_SKIP"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sn_journal_commit_is_atomic_and_published, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_journal_bad_batch_writes_nothing, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_journal_fenced_commit, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_journal_redis_down_publishes_nothing, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_journal_commit_fcall_variant, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_journal_commit_batch_writes_then_publishes_in_order,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_journal_commit_batch_all_or_nothing, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_journal_replay_then_live, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_journal_reader_bad_options, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_journal_malformed_entry_counted, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_journal_gap_after_trim, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_journal_consumer_group, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_journal_killed_between_write_and_publish, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_journal_sigterm_after_burst, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
