/* The sentinelctl commands that read the mesh, against a private redis-server and (for
 * status and call) the real sentinel-broker: `events` (table, NDJSON, --type,
 * --since-id, -f with Ctrl-C = 130, malformed entries), `jobs` and `jobs --dead` (the
 * ledger's hash format), `status` (agent hashes as the runtime writes them, and the
 * broker's services) and `call` (reply printed as JSON, a timeout exits 1, bad --data
 * exits 2). */
#include "test_ctl_util.h"

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "sentinel/sn_envelope.h"

typedef struct {
    sn_test_redis_t redis;
    char *dir;
    char *ns;
    char *config;
    char *rpc;
    redisContext *c;
    pid_t broker;
} fixture_t;

static int s_setup(void **state)
{
    fixture_t *f = sn_calloc(1, sizeof *f);
    assert_true(sn_test_redis_start(&f->redis));
    f->dir = sn_test_tmpdir("ctldata");
    f->ns = sn_test_namespace("ctl");
    f->config = sn_strdupf("%s/sentinel.yml", f->dir);
    f->rpc = sn_strdupf("tcp://127.0.0.1:%d", sn_test_free_port());
    char *text = sn_strdupf("namespace: \"%s\"\n"
                            "state_dir: %s/var\n"
                            "redis:\n  unix_path: %s\n  timeout_ms: 2000\n"
                            "broker:\n  rpc: %s\n  pub: tcp://127.0.0.1:%d\n"
                            "  sub: tcp://127.0.0.1:%d\n",
                            f->ns, f->dir, f->redis.unix_path, f->rpc, sn_test_free_port(),
                            sn_test_free_port());
    ctl_write_file(f->config, text, false);
    free(text);
    struct timeval tv = {2, 0};
    f->c = redisConnectUnixWithTimeout(f->redis.unix_path, tv);
    assert_non_null(f->c);
    assert_int_equal(f->c->err, 0);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    fixture_t *f = *state;
    if (f->broker > 0)
        assert_int_equal(sn_test_stop(f->broker, SIGTERM, 5000), 0);
    redisFree(f->c);
    sn_test_redis_destroy(&f->redis);
    sn_test_rmdir(f->dir);
    free(f->dir);
    free(f->ns);
    free(f->config);
    free(f->rpc);
    free(f);
    return 0;
}

/* XADD <ns>events * type T env <bytes>; returns the stream id (caller frees). */
static char *s_xadd_raw(fixture_t *f, const char *type, const void *env, size_t len)
{
    char *key = sn_strdupf("%sevents", f->ns);
    const char *argv[] = {"XADD", key, "*", "type", type, "env", env};
    size_t lens[] = {4, strlen(key), 1, 4, strlen(type), 3, len};
    redisReply *r = redisCommandArgv(f->c, 7, argv, lens);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    char *id = sn_strdup(r->str);
    freeReplyObject(r);
    free(key);
    return id;
}

static char *s_xadd(fixture_t *f, sn_source_t *src, const char *type, const char *subject)
{
    sn_envelope_t env;
    char eid[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, src, type, eid);
    env.subject = (char *)subject;
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&env, &len);
    char *id = s_xadd_raw(f, type, bytes, len);
    free(bytes);
    return id;
}

static ctl_result_t s_ctl(fixture_t *f, const char *const *args)
{
    const char *argv[16] = {"-c", f->config};
    size_t n = 2;
    for (size_t i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return ctl_run(f->dir, argv);
}

/* Line @i (0-based) of @text, copied. */
static char *s_line(const char *text, size_t i)
{
    const char *p = text;
    for (size_t k = 0; k < i && p; k++) {
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    if (!p || !*p)
        return NULL;
    return sn_strndup(p, strcspn(p, "\n"));
}

static void test_ctl_data_events_table_and_json(void **state)
{
    fixture_t *f = *state;
    sn_source_t src;
    sn_source_init(&src, "test-role", "t-1");
    char *id1 = s_xadd(f, &src, "deploy.promoted", "shop/prod/web");
    char *id2 = s_xadd(f, &src, "run.started", "shop/prod");
    char *id3 = s_xadd_raw(f, "deploy.rolled_back", "garbage", 7);
    char *id4 = s_xadd(f, &src, "deploy.rolled_back", "shop/prod/api");

    /* Table, piped: tab-separated, no header, one line per event, oldest first. */
    ctl_result_t r = s_ctl(f, (const char *[]){"events", NULL});
    assert_int_equal(r.status, 0);
    assert_int_equal(ctl_count_lines(r.out), 4);
    char *line = s_line(r.out, 0);
    char *prefix = sn_strdupf("%s\t", id1);
    assert_true(strncmp(line, prefix, strlen(prefix)) == 0);
    assert_non_null(strstr(line, "\tdeploy.promoted\tshop/prod/web\tsentinel/test-role/t-1"));
    free(prefix);
    free(line);
    line = s_line(r.out, 2);
    assert_non_null(strstr(line, id3));
    assert_non_null(strstr(line, "(malformed)"));
    free(line);
    assert_non_null(strstr(r.err, id3)); /* the refused envelope is reported */
    ctl_result_fini(&r);

    /* NDJSON: one parseable document per event. */
    r = s_ctl(f, (const char *[]){"events", "-o", "json", NULL});
    assert_int_equal(r.status, 0);
    assert_int_equal(ctl_count_lines(r.out), 4);
    const char *ids[] = {id1, id2, id3, id4};
    for (size_t i = 0; i < 4; i++) {
        line = s_line(r.out, i);
        json_error_t jerr;
        json_t *doc = json_loads(line, 0, &jerr);
        assert_non_null(doc);
        assert_string_equal(json_string_value(json_object_get(doc, "stream_id")), ids[i]);
        json_t *env = json_object_get(doc, "envelope");
        if (i == 2) {
            assert_null(env);
            assert_non_null(json_object_get(doc, "error"));
            assert_string_equal(json_string_value(json_object_get(doc, "type")),
                                "deploy.rolled_back");
        } else {
            assert_non_null(env);
            assert_true(sn_id_is_valid(json_string_value(json_object_get(env, "id"))));
            assert_string_equal(json_string_value(json_object_get(env, "type")),
                                json_string_value(json_object_get(doc, "type")));
            assert_string_equal(json_string_value(json_object_get(env, "source")),
                                "sentinel/test-role/t-1");
        }
        json_decref(doc);
        free(line);
    }
    ctl_result_fini(&r);

    /* --type filters by prefix. */
    r = s_ctl(f, (const char *[]){"events", "--type", "deploy.", NULL});
    assert_int_equal(r.status, 0);
    assert_int_equal(ctl_count_lines(r.out), 3);
    assert_null(strstr(r.out, "run.started"));
    ctl_result_fini(&r);
    r = s_ctl(f, (const char *[]){"events", "--type", "deploy.promoted", "-o", "json", NULL});
    assert_int_equal(ctl_count_lines(r.out), 1);
    ctl_result_fini(&r);

    /* --since-id: strictly after. */
    r = s_ctl(f, (const char *[]){"events", "--since-id", id2, NULL});
    assert_int_equal(r.status, 0);
    assert_int_equal(ctl_count_lines(r.out), 2);
    assert_null(strstr(r.out, id2));
    assert_non_null(strstr(r.out, id4));
    ctl_result_fini(&r);
    r = s_ctl(f, (const char *[]){"events", "--since-id", id4, NULL});
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "");
    ctl_result_fini(&r);

    free(id1);
    free(id2);
    free(id3);
    free(id4);
}

static void test_ctl_data_events_many_and_empty(void **state)
{
    fixture_t *f = *state;
    ctl_result_t r = s_ctl(f, (const char *[]){"events", NULL});
    assert_int_equal(r.status, 0); /* no stream yet: nothing, success */
    assert_string_equal(r.out, "");
    ctl_result_fini(&r);

    /* More than one XRANGE batch. */
    sn_source_t src;
    sn_source_init(&src, "bulk", "1");
    for (int i = 0; i < 1203; i++)
        free(s_xadd(f, &src, "bulk.tick", "x"));
    r = s_ctl(f, (const char *[]){"events", NULL});
    assert_int_equal(r.status, 0);
    assert_int_equal(ctl_count_lines(r.out), 1203);
    ctl_result_fini(&r);
}

/* A cursor older than what the journal kept: the output says so on stderr. */
static void test_ctl_data_events_gap(void **state)
{
    fixture_t *f = *state;
    sn_source_t src;
    sn_source_init(&src, "gap", "1");
    char *first = s_xadd(f, &src, "a.first", "x");
    char *second = s_xadd(f, &src, "a.second", "x");
    for (int i = 0; i < 3; i++)
        free(s_xadd(f, &src, "a.later", "x"));
    redisReply *r = redisCommand(f->c, "XTRIM %sevents MAXLEN 2", f->ns);
    assert_non_null(r);
    assert_int_equal(r->integer, 3);
    freeReplyObject(r);

    ctl_result_t res = s_ctl(f, (const char *[]){"events", "--since-id", first, NULL});
    assert_int_equal(res.status, 0);
    assert_int_equal(ctl_count_lines(res.out), 2);
    assert_non_null(strstr(res.err, "gap:"));
    ctl_result_fini(&res);

    /* A cursor inside what is kept: no gap reported. */
    res = s_ctl(f, (const char *[]){"events", NULL});
    char *kept = s_line(res.out, 0);
    ctl_result_fini(&res);
    assert_non_null(kept);
    kept[strcspn(kept, "\t")] = '\0';
    res = s_ctl(f, (const char *[]){"events", "--since-id", kept, NULL});
    assert_int_equal(ctl_count_lines(res.out), 1);
    assert_null(strstr(res.err, "gap:"));
    ctl_result_fini(&res);
    free(kept);
    free(first);
    free(second);
}

typedef struct {
    const char *path;
    const char *needle;
} file_wait_t;

static bool s_file_has(void *arg)
{
    file_wait_t *w = arg;
    return sn_test_count_in_file(w->path, w->needle) > 0;
}

static void test_ctl_data_events_follow(void **state)
{
    fixture_t *f = *state;
    sn_source_t src;
    sn_source_init(&src, "follow", "1");
    char *old = s_xadd(f, &src, "old.event", "before");
    char *out = sn_strdupf("%s/follow.out", f->dir);
    char *err = sn_strdupf("%s/follow.err", f->dir);

    /* --since-id replays what came after it, then follows. */
    pid_t pid = ctl_spawn(
        (const char *[]){"-c", f->config, "events", "-f", "-o", "json", "--since-id", "0-1", NULL},
        NULL, out, err);
    file_wait_t w = {out, old};
    assert_true(sn_test_wait_for(s_file_has, &w, 10000));
    char *fresh = s_xadd(f, &src, "new.event", "after");
    w.needle = fresh;
    assert_true(sn_test_wait_for(s_file_has, &w, 10000));

    /* Redis restarts under the follower: it reconnects and goes on from its cursor. */
    assert_true(sn_test_redis_restart(&f->redis));
    redisFree(f->c);
    struct timeval tv = {2, 0};
    f->c = redisConnectUnixWithTimeout(f->redis.unix_path, tv);
    assert_int_equal(f->c->err, 0);
    char *later = s_xadd(f, &src, "after.restart", "again");
    w.needle = later;
    assert_true(sn_test_wait_for(s_file_has, &w, 15000));
    assert_true(sn_test_count_in_file(err, "reconnect") >= 1);

    assert_int_equal(kill(pid, SIGINT), 0);
    assert_int_equal(ctl_wait(pid, 5000), 130);
    char *text = sn_test_read_file(out);
    assert_int_equal(ctl_count_lines(text), 3);
    free(text);
    free(later);

    /* Without --since-id: only what arrives from now on (none of the old events). */
    pid = ctl_spawn((const char *[]){"-c", f->config, "events", "-f", NULL}, NULL, out, err);
    char *tick = NULL;
    int64_t deadline = sn_mono_ms() + 10000;
    bool seen = false;
    while (!seen && sn_mono_ms() < deadline) {
        free(tick);
        tick = s_xadd(f, &src, "tick", "t");
        w.needle = tick;
        seen = sn_test_wait_for(s_file_has, &w, 200);
    }
    assert_true(seen);
    assert_int_equal(sn_test_count_in_file(out, old), 0);
    assert_int_equal(sn_test_count_in_file(out, fresh), 0);
    assert_int_equal(kill(pid, SIGINT), 0);
    assert_int_equal(ctl_wait(pid, 5000), 130);

    free(tick);
    free(old);
    free(fresh);
    free(out);
    free(err);
}

static void s_hset_job(fixture_t *f, const char *id, const char *state, const char *owner,
                       const char *lease_deadline, const char *attempt, const char *created)
{
    char *key = sn_strdupf("%sjob:%s", f->ns, id);
    const char *argv[] = {
        "HSET",         key,          "id",        id,           "kind",
        "test.slow",    "service",    "test.slow", "owner_role", "test-leader",
        "owner",        owner,        "epoch",     "1",          "lease_deadline_ms",
        lease_deadline, "lease_ms",   "30000",     "attempt",    attempt,
        "max_attempts", "3",          "state",     state,        "payload",
        "{}",           "created_ms", created,     "updated_ms", created};
    redisReply *r = redisCommandArgv(f->c, (int)SN_ARRAY_LEN(argv), argv, NULL);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
    free(key);
}

static void test_ctl_data_jobs(void **state)
{
    fixture_t *f = *state;
    ctl_result_t r = s_ctl(f, (const char *[]){"jobs", NULL});
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "");
    ctl_result_fini(&r);

    char *far = sn_strdupf("%lld", (long long)sn_wall_ms() + 3600 * 1000);
    s_hset_job(f, "job-b", "claimed", "test-slow-1", far, "2", "2000");
    s_hset_job(f, "job-a", "queued", "", "0", "1", "1000");
    s_hset_job(f, "job-c", "done", "", "0", "1", "3000");
    s_hset_job(f, "job-d", "dead", "", "0", "3", "500");
    char *dead = sn_strdupf("%sjobs:dead", f->ns);
    redisReply *rr = redisCommand(f->c, "LPUSH %s job-d job-gone", dead);
    freeReplyObject(rr);

    /* Open jobs only, oldest first. */
    r = s_ctl(f, (const char *[]){"jobs", NULL});
    assert_int_equal(r.status, 0);
    assert_int_equal(ctl_count_lines(r.out), 2);
    char *line = s_line(r.out, 0);
    assert_true(strncmp(line, "job-a\tqueued\ttest.slow\ttest.slow\ttest-leader\t1/3\t-\t-", 49) ==
                0);
    free(line);
    line = s_line(r.out, 1);
    assert_true(strncmp(line, "job-b\tclaimed\t", 14) == 0);
    assert_non_null(strstr(line, "\t2/3\ttest-slow-1\t"));
    assert_non_null(strstr(line, "59m")); /* about an hour of lease left */
    free(line);
    ctl_result_fini(&r);

    r = s_ctl(f, (const char *[]){"jobs", "-o", "json", NULL});
    assert_int_equal(r.status, 0);
    assert_int_equal(ctl_count_lines(r.out), 2);
    line = s_line(r.out, 1);
    json_error_t jerr;
    json_t *doc = json_loads(line, 0, &jerr);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "id")), "job-b");
    assert_string_equal(json_string_value(json_object_get(doc, "state")), "claimed");
    assert_int_equal(json_integer_value(json_object_get(doc, "attempt")), 2);
    assert_string_equal(json_string_value(json_object_get(doc, "owner")), "test-slow-1");
    json_decref(doc);
    free(line);
    ctl_result_fini(&r);

    /* Dead letters, newest first; a job whose hash is gone still shows. */
    r = s_ctl(f, (const char *[]){"jobs", "--dead", NULL});
    assert_int_equal(r.status, 0);
    assert_int_equal(ctl_count_lines(r.out), 2);
    assert_true(strncmp(r.out, "job-gone\tdead\t", 14) == 0);
    line = s_line(r.out, 1);
    assert_true(strncmp(line, "job-d\tdead\ttest.slow\t", 21) == 0);
    free(line);
    ctl_result_fini(&r);

    /* A jobs:dead of the wrong type is an error, not a crash. */
    rr = redisCommand(f->c, "DEL %s", dead);
    freeReplyObject(rr);
    rr = redisCommand(f->c, "SET %s oops", dead);
    freeReplyObject(rr);
    r = s_ctl(f, (const char *[]){"jobs", "--dead", NULL});
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "WRONGTYPE"));
    ctl_result_fini(&r);
    free(dead);
    free(far);
}

static void s_start_broker(fixture_t *f)
{
    char *bin = sn_strdupf("%s/sentinel-broker", SN_TEST_BIN_DIR);
    char *log = sn_strdupf("%s/broker.log", f->dir);
    char *argv[] = {bin, "--config", f->config, NULL};
    f->broker = sn_test_spawn(argv, log);
    assert_true(f->broker > 0);
    free(bin);
    free(log);
}

typedef struct {
    fixture_t *f;
} status_wait_t;

static bool s_status_ok(void *arg)
{
    fixture_t *f = arg;
    ctl_result_t r = s_ctl(f, (const char *[]){"status", "--timeout", "500", NULL});
    bool ok = r.status == 0;
    ctl_result_fini(&r);
    return ok;
}

static void test_ctl_data_status(void **state)
{
    fixture_t *f = *state;
    /* No broker yet: agents are printed, exit 1 with the reason. */
    char *key = sn_strdupf("%sagent:test-echo:test-echo-1", f->ns);
    char *started = sn_strdupf("%lld", (long long)sn_wall_ms() - 65000);
    char *seen = sn_strdupf("%lld", (long long)sn_wall_ms() - 1000);
    const char *argv[] = {"HSET",        key,
                          "role",        "test-echo",
                          "instance",    "test-echo-1",
                          "host",        "h1",
                          "pid",         "4242",
                          "version",     "0.1.0",
                          "config_hash", "abc",
                          "leader",      "1",
                          "fence",       "7",
                          "started_ms",  started,
                          "seen_ms",     seen,
                          "agent",       "Test",
                          "counters",    "{\"jobs_busy\":0}"};
    redisReply *rr = redisCommandArgv(f->c, (int)SN_ARRAY_LEN(argv), argv, NULL);
    freeReplyObject(rr);
    rr = redisCommand(f->c, "PEXPIRE %s 60000", key);
    freeReplyObject(rr);

    ctl_result_t r = s_ctl(f, (const char *[]){"status", "--timeout", "300", NULL});
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "no answer"));
    assert_non_null(strstr(r.out, "test-echo\ttest-echo-1\tTest\th1\t4242\t0.1.0\tyes\t1m"));
    ctl_result_fini(&r);

    s_start_broker(f);
    assert_true(sn_test_wait_for(s_status_ok, f, 10000));
    r = s_ctl(f, (const char *[]){"status", "-o", "json", NULL});
    assert_int_equal(r.status, 0);
    json_error_t jerr;
    json_t *doc = json_loads(r.out, 0, &jerr);
    assert_non_null(doc);
    assert_true(json_is_true(json_object_get(json_object_get(doc, "broker"), "reachable")));
    json_t *agents = json_object_get(doc, "agents");
    assert_int_equal(json_array_size(agents), 1);
    json_t *a = json_array_get(agents, 0);
    assert_string_equal(json_string_value(json_object_get(a, "role")), "test-echo");
    assert_int_equal(json_integer_value(json_object_get(a, "pid")), 4242);
    assert_true(json_is_true(json_object_get(a, "is_leader")));
    assert_int_equal(json_integer_value(json_object_get(a, "fence")), 7);
    assert_true(json_integer_value(json_object_get(a, "ttl_ms")) > 0);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(a, "counters"), "jobs_busy")), 0);
    assert_true(json_is_array(json_object_get(doc, "services")));
    json_decref(doc);
    ctl_result_fini(&r);
    free(key);
    free(started);
    free(seen);
}

static void test_ctl_data_call(void **state)
{
    fixture_t *f = *state;
    /* No broker: a timeout is a failure (exit 1), reported on stderr. */
    ctl_result_t r = s_ctl(
        f, (const char *[]){"call", "test.echo", "--data", "{\"x\":1}", "--timeout", "300", NULL});
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "no answer within 300ms"));
    assert_string_equal(r.out, "");
    ctl_result_fini(&r);

    /* Bad --data is a usage error that names the problem. */
    r = s_ctl(f, (const char *[]){"call", "test.echo", "--data", "{\"x\":", NULL});
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "not JSON"));
    ctl_result_fini(&r);
    r = s_ctl(f, (const char *[]){"call", "test.echo", "--data", "[1]", NULL});
    assert_int_equal(r.status, 2);
    ctl_result_fini(&r);
    r = s_ctl(f, (const char *[]){"call", "test.echo", "--data", "{\"labels\":{\"a\":1}}", NULL});
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "labels"));
    ctl_result_fini(&r);

    /* The broker answers broker.services itself: the reply is printed as JSON. */
    s_start_broker(f);
    assert_true(sn_test_wait_for(s_status_ok, f, 10000));
    r = s_ctl(f, (const char *[]){"-o", "json", "call", "broker.services", "--data",
                                  "{\"type\":\"broker.services\",\"subject\":\"cli\"}", NULL});
    assert_int_equal(r.status, 0);
    assert_int_equal(ctl_count_lines(r.out), 1);
    json_error_t jerr;
    json_t *doc = json_loads(r.out, 0, &jerr);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "type")), "broker.services");
    assert_non_null(json_object_get(doc, "labels"));
    json_decref(doc);
    ctl_result_fini(&r);
    /* Table mode prints the same document indented. */
    r = s_ctl(f,
              (const char *[]){"call", "broker.services", "--data", "{\"any\":\"thing\"}", NULL});
    assert_int_equal(r.status, 0);
    assert_true(ctl_count_lines(r.out) > 3);
    doc = json_loads(r.out, 0, &jerr);
    assert_non_null(doc);
    json_decref(doc);
    ctl_result_fini(&r);
}

/* A principal's public key, made by `sentinelctl keygen DIR --name NAME -o json`. */
static char *s_keygen(fixture_t *f, const char *dir, const char *name)
{
    ctl_result_t r =
        ctl_run(f->dir, (const char *[]){"-o", "json", "keygen", dir, "--name", name, NULL});
    assert_int_equal(r.status, 0);
    json_t *doc = json_loads(r.out, 0, NULL);
    assert_non_null(doc);
    char *key = sn_strdup(json_string_value(json_object_get(doc, "public_key")));
    json_decref(doc);
    ctl_result_fini(&r);
    return key;
}

typedef struct {
    fixture_t *f;
    const char *config;
} call_wait_t;

static bool s_curve_call_ok(void *arg)
{
    call_wait_t *w = arg;
    ctl_result_t r = ctl_run(w->f->dir, (const char *[]){"-c", w->config, "call", "broker.services",
                                                         "--data", "{}", "--timeout", "500", NULL});
    bool ok = r.status == 0;
    ctl_result_fini(&r);
    return ok;
}

/* With CURVE: keys from keygen, the client certificate from the config; a principal
 * that may not call the service gets NAK forbidden, which is exit 4. */
static void test_ctl_data_call_with_curve(void **state)
{
    fixture_t *f = *state;
    char *keys = sn_strdupf("%s/keys", f->dir);
    char *broker_key = s_keygen(f, keys, "broker");
    char *cli_key = s_keygen(f, keys, "cli");
    char *ro_key = s_keygen(f, keys, "ro");
    int rpc = sn_test_free_port();
    const char *certs[] = {"cli", "ro"};
    char *configs[2];
    for (size_t i = 0; i < 2; i++) {
        configs[i] = sn_strdupf("%s/curve-%s.yml", f->dir, certs[i]);
        char *text =
            sn_strdupf("namespace: \"%s\"\n"
                       "redis:\n  unix_path: %s\n"
                       "broker:\n  rpc: tcp://127.0.0.1:%d\n  pub: tcp://127.0.0.1:%d\n"
                       "  sub: tcp://127.0.0.1:%d\n  curve: true\n"
                       "  server_secret_file: %s/broker_secret\n  server_public_key: \"%s\"\n"
                       "  client_cert_file: %s/%s_secret\n"
                       "  principals:\n"
                       "    - name: cli\n      public_key: \"%s\"\n      call: [\"*\"]\n"
                       "    - name: ro\n      public_key: \"%s\"\n      call: [\"test.echo\"]\n",
                       f->ns, f->redis.unix_path, rpc, sn_test_free_port(), sn_test_free_port(),
                       keys, broker_key, keys, certs[i], cli_key, ro_key);
        ctl_write_file(configs[i], text, false);
        free(text);
    }
    char *bin = sn_strdupf("%s/sentinel-broker", SN_TEST_BIN_DIR);
    char *log = sn_strdupf("%s/broker.log", f->dir);
    char *argv[] = {bin, "--config", configs[0], NULL};
    f->broker = sn_test_spawn(argv, log);
    assert_true(f->broker > 0);

    call_wait_t w = {f, configs[0]};
    assert_true(sn_test_wait_for(s_curve_call_ok, &w, 10000));
    ctl_result_t r = ctl_run(f->dir, (const char *[]){"-c", configs[1], "call", "broker.services",
                                                      "--data", "{}", NULL});
    assert_int_equal(r.status, 4);
    assert_non_null(strstr(r.err, "NAK forbidden"));
    ctl_result_fini(&r);
    assert_true(sn_test_count_in_file(log, "connection admitted principal=ro") >= 1);

    /* A missing client certificate is a clear local error. */
    char *missing = sn_strdupf("%s/missing.yml", f->dir);
    char *text = sn_test_read_file(configs[1]);
    char *at = strstr(text, "ro_secret");
    assert_non_null(at);
    memcpy(at, "zz", 2);
    ctl_write_file(missing, text, false);
    r = ctl_run(f->dir, (const char *[]){"-c", missing, "call", "x", "--data", "{}", NULL});
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "cannot load the certificate"));
    ctl_result_fini(&r);

    free(text);
    free(missing);
    free(bin);
    free(log);
    for (size_t i = 0; i < 2; i++)
        free(configs[i]);
    free(keys);
    free(broker_key);
    free(cli_key);
    free(ro_key);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ctl_data_events_table_and_json, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_data_events_many_and_empty, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_data_events_gap, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_data_events_follow, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_data_jobs, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_data_status, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_data_call, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_data_call_with_curve, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
