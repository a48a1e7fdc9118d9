/* `sentinelctl gc` against a private redis-server, without a mesh: Redis is seeded the
 * way buildpilot, the ledger, local-deployer, the artifact store, the journal and the audit
 * chain write it (docs/pipeline.md, docs/redis.md), with runs that must go (old and
 * terminal) and runs that must stay (in flight, the last success of an environment, in a
 * release history, recent, unreadable), artifacts on disk (referenced, unreferenced,
 * fresh), build logs and work dirs, journal entries with old ids and audit records.
 * --dry-run changes nothing and lists what would go; gc deletes exactly that; a second gc
 * deletes nothing more; the audit chain still verifies; Redis down exits 1 with a clear
 * message; an archive that is not where the config says, or a release whose run cannot
 * be read, make the step fail without deleting anything. */
#include "test_ctl_util.h"

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "sentinel/sn_audit.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_redis.h"

#define DAY_MS INT64_C(86400000)

typedef struct {
    sn_test_redis_t redis;
    char *dir;
    char *var;
    char *ns;
    char *config;
    redisContext *c;
    int64_t now;
} fixture_t;

static void s_write_config(fixture_t *f, const char *extra)
{
    char *text = sn_strdupf("namespace: \"%s\"\n"
                            "state_dir: %s\n"
                            "log_level: info\n"
                            "redis:\n  unix_path: %s\n  timeout_ms: 2000\n"
                            "runtime:\n  journal_max_age_s: 1d\n"
                            "retention:\n  dead_letters: 3\n  runs_max_age_s: 90d\n%s",
                            f->ns, f->var, f->redis.unix_path, extra ? extra : "");
    ctl_write_file(f->config, text, false);
    free(text);
}

static int s_setup(void **state)
{
    fixture_t *f = sn_calloc(1, sizeof *f);
    assert_true(sn_test_redis_start(&f->redis));
    f->dir = sn_test_tmpdir("ctlgc");
    f->var = sn_strdupf("%s/var", f->dir);
    assert_int_equal(mkdir(f->var, 0700), 0);
    char *p = sn_strdupf("%s/builds", f->var);
    assert_int_equal(mkdir(p, 0711), 0);
    free(p);
    p = sn_strdupf("%s/artifacts", f->var);
    assert_int_equal(mkdir(p, 0700), 0);
    free(p);
    f->ns = sn_test_namespace("gc");
    f->config = sn_strdupf("%s/sentinel.yml", f->dir);
    s_write_config(f, NULL);
    struct timeval tv = {2, 0};
    f->c = redisConnectUnixWithTimeout(f->redis.unix_path, tv);
    assert_non_null(f->c);
    assert_int_equal(f->c->err, 0);
    f->now = sn_wall_ms();
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    fixture_t *f = *state;
    redisFree(f->c);
    sn_test_redis_destroy(&f->redis);
    sn_test_rmdir(f->dir);
    free(f->dir);
    free(f->var);
    free(f->ns);
    free(f->config);
    free(f);
    return 0;
}

/* ---- seeding --------------------------------------------------------------------------- */

/* Runs a command (printf-style with %s / %b, keys relative to the namespace written by
 * the caller) and returns the reply (caller frees). */
static redisReply *s_redis(fixture_t *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(f->c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    return r;
}

static void s_do(fixture_t *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(f->c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR)
        print_error("redis: %s\n", r->str);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
}

static bool s_exists(fixture_t *f, const char *key)
{
    redisReply *r = s_redis(f, "EXISTS %s%s", f->ns, key);
    bool yes = r->integer == 1;
    freeReplyObject(r);
    return yes;
}

static long long s_int(fixture_t *f, const char *cmd, const char *key)
{
    redisReply *r = s_redis(f, "%s %s%s", cmd, f->ns, key);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long n = r->integer;
    freeReplyObject(r);
    return n;
}

static bool s_in_zset(fixture_t *f, const char *key, const char *member)
{
    redisReply *r = s_redis(f, "ZSCORE %s%s %s", f->ns, key, member);
    bool yes = r->type == REDIS_REPLY_STRING;
    freeReplyObject(r);
    return yes;
}

static const char *s_state_name(Sentinel__V1__RunState s)
{
    switch (s) {
    case SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED:
        return "succeeded";
    case SENTINEL__V1__RUN_STATE__RUN_FAILED:
        return "failed";
    case SENTINEL__V1__RUN_STATE__RUN_BUILDING:
        return "building";
    default:
        return "queued";
    }
}

/* run:<id> as buildpilot writes it, with one deploy (deploy:<id>-d), an approval, the
 * indexes, runs:active when not terminal, and a build log. */
static void s_put_run(fixture_t *f, const char *id, const char *env, Sentinel__V1__RunState state,
                      int64_t updated, const char *artifact)
{
    Sentinel__V1__Run run = SENTINEL__V1__RUN__INIT;
    Sentinel__V1__Deploy dep = SENTINEL__V1__DEPLOY__INIT;
    Sentinel__V1__Deploy *deps[] = {&dep};
    char *deploy_id = sn_strdupf("%s-d", id);
    dep.deploy_id = deploy_id;
    dep.run_id = (char *)id;
    dep.target = "web";
    run.run_id = (char *)id;
    run.project = "shop";
    run.environment = (char *)env;
    run.state = state;
    run.created_unix_ms = updated - 60000;
    run.updated_unix_ms = updated;
    run.artifact_sha256 = (char *)(artifact ? artifact : "");
    run.n_deploys = 1;
    run.deploys = deps;
    size_t len = sentinel__v1__run__get_packed_size(&run);
    uint8_t *buf = sn_malloc(len);
    sentinel__v1__run__pack(&run, buf);
    s_do(f, "HSET %srun:%s pb %b state %s project shop environment %s updated_ms %lld", f->ns, id,
         buf, len, s_state_name(state), env, (long long)updated);
    s_do(f, "HSET %sdeploy:%s pb x phase live run_id %s", f->ns, deploy_id, id);
    s_do(f, "HSET %sapproval:%s required 1", f->ns, id);
    s_do(f, "ZADD %sruns:all %lld %s", f->ns, (long long)run.created_unix_ms, id);
    s_do(f, "ZADD %sruns:shop %lld %s", f->ns, (long long)run.created_unix_ms, id);
    if (state < SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED)
        s_do(f, "SADD %sruns:active %s", f->ns, id);
    char *log = sn_strdupf("%s/builds/%s.log", f->var, id);
    ctl_write_file(log, "build output\n", false);
    free(log);
    free(buf);
    free(deploy_id);
}

static void s_put_job(fixture_t *f, const char *id, const char *state, const char *run_id,
                      int64_t updated)
{
    s_do(f, "HSET %sjob:%s id %s state %s correlation_id %s updated_ms %lld kind build", f->ns, id,
         id, state, run_id, (long long)updated);
    s_do(f, "HSET %sjob:%s:fx provider_id p-1", f->ns, id);
    if (strcmp(state, "dead") == 0)
        s_do(f, "LPUSH %sjobs:dead %s", f->ns, id);
}

static void s_put_release(fixture_t *f, const char *env, const char *run_id)
{
    Sentinel__V1__ReleaseIdentity rel = SENTINEL__V1__RELEASE_IDENTITY__INIT;
    char *deploy_id = sn_strdupf("%s-d", run_id);
    rel.deploy_id = deploy_id;
    rel.run_id = (char *)run_id;
    rel.project = "shop";
    rel.environment = (char *)env;
    rel.target = "web";
    size_t len = sentinel__v1__release_identity__get_packed_size(&rel);
    uint8_t *buf = sn_malloc(len);
    sentinel__v1__release_identity__pack(&rel, buf);
    s_do(f, "LPUSH %srelease:shop:%s:web %b", f->ns, env, buf, len);
    free(buf);
    free(deploy_id);
}

/* A 64-hex sha made of @c. */
static void s_sha(char c, char out[65])
{
    memset(out, c, 64);
    out[64] = '\0';
}

static char *s_artifact_path(fixture_t *f, const char *sha)
{
    return sn_strdupf("%s/artifacts/%s.tar", f->var, sha);
}

static void s_set_age(const char *path, int64_t age_ms)
{
    int64_t when = sn_wall_ms() - age_ms;
    struct timespec ts[2] = {{.tv_sec = when / 1000, .tv_nsec = 0},
                             {.tv_sec = when / 1000, .tv_nsec = 0}};
    assert_int_equal(utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW), 0);
}

static void s_put_artifact(fixture_t *f, const char *sha, int64_t age_ms)
{
    char *path = s_artifact_path(f, sha);
    ctl_write_file(path, "tar bytes", false);
    s_set_age(path, age_ms);
    s_do(f, "HSET %sartifact:%s path %s bytes 9 created_ms 1", f->ns, sha, path);
    free(path);
}

static bool s_file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

static bool s_artifact_exists(fixture_t *f, const char *sha)
{
    char *path = s_artifact_path(f, sha);
    bool yes = s_file_exists(path);
    free(path);
    return yes;
}

static sn_redis_t *s_sn_redis(fixture_t *f)
{
    sn_redis_opts_t ro = {.unix_path = f->redis.unix_path, .namespace_ = f->ns, .timeout_ms = 2000};
    sn_redis_t *r = sn_redis_new(&ro);
    assert_non_null(r);
    return r;
}

/* @n intent + outcome pairs through sn_audit (key file and @archive under state_dir). */
static void s_audit_records(fixture_t *f, int n, const char *archive, bool is_archived)
{
    sn_redis_t *redis = s_sn_redis(f);
    char *key = sn_strdupf("%s/audit.key", f->var);
    char *path = archive ? sn_strdup(archive) : sn_strdupf("%s/audit.log", f->var);
    sn_audit_opts_t o = {.redis = redis, .archive_path = path, .key_file = key, .sign_every = -1};
    sn_audit_t *a = sn_audit_new(&o);
    assert_non_null(a);
    for (int i = 0; i < n; i++) {
        uint64_t id = 0;
        assert_int_equal(sn_audit_intent(a, "test", "deploy", "shop/staging/web", "why", &id),
                         SN_OK);
        assert_int_equal(sn_audit_outcome(a, id, true, "done"), SN_OK);
    }
    if (is_archived)
        assert_int_equal(sn_audit_archive(a, 0, NULL), SN_OK);
    sn_audit_destroy(&a);
    sn_redis_destroy(&redis);
    free(key);
    free(path);
}

/* The world of the main test. Ids: R1 old failed (goes), R2 old succeeded and the newest
 * success of staging (stays), R3 old succeeded in a release history (stays), R4 old
 * succeeded, superseded as the last success by R2 (goes), R5 in flight (stays), R6 recent
 * failed (stays), R7 old with an unreadable record (stays). */
typedef struct {
    char a2[65], a3[65], a4[65], a5[65], unref[65], young[65];
} world_t;

static void s_seed(fixture_t *f, world_t *w)
{
    int64_t old = f->now - 100 * DAY_MS;
    s_sha('2', w->a2);
    s_sha('3', w->a3);
    s_sha('4', w->a4);
    s_sha('5', w->a5);
    s_sha('a', w->unref);
    s_sha('b', w->young);
    s_put_run(f, "R1", "staging", SENTINEL__V1__RUN_STATE__RUN_FAILED, old, NULL);
    s_put_run(f, "R2", "staging", SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED, old + 1000, w->a2);
    s_put_run(f, "R3", "prod", SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED, old, w->a3);
    s_put_run(f, "R4", "staging", SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED, old - 1000, w->a4);
    s_put_run(f, "R5", "staging", SENTINEL__V1__RUN_STATE__RUN_BUILDING, old, w->a5);
    s_put_run(f, "R6", "staging", SENTINEL__V1__RUN_STATE__RUN_FAILED, f->now - DAY_MS, NULL);
    s_do(f, "HSET %srun:R7 pb garbage state failed updated_ms 1", f->ns);
    s_do(f, "ZADD %sruns:all 1 R7", f->ns);
    /* a newer success in prod that is not in the release history: the last success */
    s_put_run(f, "R8", "prod", SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED, old + 5000, NULL);
    s_put_release(f, "prod", "R3");
    s_do(f, "HSET %senv:shop:staging frozen 0 last_verified_artifact %s", f->ns, w->a2);
    /* a dangling index entry */
    s_do(f, "ZADD %sruns:all %lld ghost", f->ns, (long long)(old - 5000));
    /* jobs */
    s_put_job(f, "R1.build", "done", "R1", old);
    s_put_job(f, "R1.stage.web", "dead", "R1", old);
    s_put_job(f, "R1.vlive.web", "queued", "R1", old);
    s_put_job(f, "R2.build", "done", "R2", old);
    s_put_job(f, "X.orphan", "failed", "nowhere", old);
    s_put_job(f, "X.fresh", "failed", "nowhere", f->now);
    for (int i = 1; i <= 5; i++)
        s_do(f, "LPUSH %sjobs:dead d%d", f->ns, i);
    /* artifacts */
    s_put_artifact(f, w->a2, 50 * DAY_MS);
    s_put_artifact(f, w->a3, 50 * DAY_MS);
    s_put_artifact(f, w->a4, 50 * DAY_MS);
    s_put_artifact(f, w->a5, 50 * DAY_MS);
    s_put_artifact(f, w->unref, 50 * DAY_MS);
    s_put_artifact(f, w->young, 60 * 1000);
    char gone[65];
    s_sha('c', gone);
    char *gone_path = s_artifact_path(f, gone);
    s_do(f, "HSET %sartifact:%s path %s bytes 9", f->ns, gone, gone_path);
    free(gone_path);
    s_do(f, "HSET %sartifact:%s path /elsewhere/%s.tar bytes 9", f->ns, w->young, w->young);
    /* work dirs: one leftover, one of today */
    char *p = sn_strdupf("%s/builds/old-work", f->var);
    assert_int_equal(mkdir(p, 0700), 0);
    char *inner = sn_strdupf("%s/file", p);
    ctl_write_file(inner, "x", false);
    free(inner);
    s_set_age(p, 3 * DAY_MS);
    free(p);
    p = sn_strdupf("%s/builds/R5", f->var);
    assert_int_equal(mkdir(p, 0700), 0);
    s_set_age(p, 3 * DAY_MS); /* old but its run is in flight */
    free(p);
    p = sn_strdupf("%s/builds/new-work", f->var);
    assert_int_equal(mkdir(p, 0700), 0);
    free(p);
    /* journal: three entries of 1970, two of now */
    for (int i = 1; i <= 3; i++)
        s_do(f, "XADD %sevents %d-0 type old env x", f->ns, i * 1000);
    for (int i = 0; i < 2; i++)
        s_do(f, "XADD %sevents * type new env x", f->ns);
    /* audit: 3 pairs */
    s_audit_records(f, 3, NULL, false);
}

static ctl_result_t s_ctl(fixture_t *f, const char *const *args)
{
    const char *argv[16] = {"-c", f->config};
    size_t n = 2;
    for (size_t i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return ctl_run_env(f->dir, argv, NULL, 30000);
}

/* The JSON document gc printed, with its step @name (borrowed from the document). */
static json_t *s_doc(const ctl_result_t *r)
{
    json_error_t err;
    json_t *doc = json_loads(r->out, 0, &err);
    if (!doc)
        print_error("not json (%s): %s\nstderr: %s\n", err.text, r->out, r->err);
    assert_non_null(doc);
    return doc;
}

static json_t *s_stepj(json_t *doc, const char *name)
{
    size_t i;
    json_t *st;
    json_array_foreach(json_object_get(doc, "steps"), i, st)
    {
        if (strcmp(json_string_value(json_object_get(st, "step")), name) == 0)
            return st;
    }
    fail_msg("no step %s", name);
    return NULL;
}

static long long s_deleted(json_t *doc, const char *name)
{
    return json_integer_value(json_object_get(s_stepj(doc, name), "deleted"));
}

static bool s_step_ok(json_t *doc, const char *name)
{
    return json_is_true(json_object_get(s_stepj(doc, name), "ok"));
}

static bool s_has_item(json_t *doc, const char *step, const char *item)
{
    size_t i;
    json_t *it;
    json_array_foreach(json_object_get(doc, "items"), i, it)
    {
        if (strcmp(json_string_value(json_object_get(it, "step")), step) == 0 &&
            strstr(json_string_value(json_object_get(it, "item")), item))
            return true;
    }
    return false;
}

static char *s_path(fixture_t *f, const char *rel)
{
    return sn_strdupf("%s/%s", f->var, rel);
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_ctl_gc_dry_run_then_gc_then_nothing(void **state)
{
    fixture_t *f = *state;
    world_t w;
    s_seed(f, &w);
    char *archive = s_path(f, "audit.log");
    char *r1_log = s_path(f, "builds/R1.log");
    char *r2_log = s_path(f, "builds/R2.log");
    char *old_work = s_path(f, "builds/old-work");
    char *r5_work = s_path(f, "builds/R5");
    char *new_work = s_path(f, "builds/new-work");

    /* --dry-run: reports, deletes nothing. */
    ctl_result_t r = s_ctl(f, (const char *[]){"gc", "--dry-run", "-o", "json", NULL});
    if (r.status != 0)
        print_error("stdout: %s\nstderr: %s\n", r.out, r.err);
    assert_int_equal(r.status, 0);
    json_t *doc = s_doc(&r);
    assert_true(json_is_true(json_object_get(doc, "dry_run")));
    assert_true(json_is_true(json_object_get(doc, "ok")));
    assert_int_equal(s_deleted(doc, "journal"), 3);
    assert_int_equal(s_deleted(doc, "audit"), 6);
    assert_int_equal(s_deleted(doc, "dead-letters"), 3); /* 6 entries, keep 3 */
    assert_int_equal(s_deleted(doc, "runs"), 3);         /* R1, R4, ghost index entry */
    assert_int_equal(s_deleted(doc, "jobs"), 3);         /* R1.build, R1.stage.web, X.orphan */
    assert_int_equal(s_deleted(doc, "files"), 3);        /* R1.log, R4.log, old-work */
    assert_int_equal(s_deleted(doc, "artifacts"), 3);    /* a4, unref, record of c... */
    assert_true(s_has_item(doc, "runs", "R1"));
    assert_true(s_has_item(doc, "runs", "R4"));
    assert_true(s_has_item(doc, "runs", "ghost"));
    assert_false(s_has_item(doc, "runs", "R2"));
    assert_true(s_has_item(doc, "jobs", "X.orphan"));
    assert_false(s_has_item(doc, "jobs", "R1.vlive.web"));
    assert_true(s_has_item(doc, "artifacts", w.a4));
    assert_true(s_has_item(doc, "artifacts", w.unref));
    assert_false(s_has_item(doc, "artifacts", w.a2));
    assert_true(s_has_item(doc, "files", "old-work"));
    json_decref(doc);
    assert_non_null(strstr(r.err, "runs: would delete=3"));
    ctl_result_fini(&r);
    assert_true(s_exists(f, "run:R1"));
    assert_true(s_exists(f, "run:R4"));
    assert_true(s_exists(f, "deploy:R1-d"));
    assert_true(s_exists(f, "job:R1.build"));
    assert_true(s_in_zset(f, "runs:all", "ghost"));
    assert_int_equal(s_int(f, "XLEN", "events"), 5);
    assert_int_equal(s_int(f, "XLEN", "audit"), 6);
    assert_int_equal(s_int(f, "LLEN", "jobs:dead"), 6);
    assert_true(s_artifact_exists(f, w.unref));
    assert_true(s_file_exists(r1_log));
    assert_true(s_file_exists(old_work));
    assert_false(s_file_exists(archive));

    /* The table form lists the same items, one per line when piped. */
    r = s_ctl(f, (const char *[]){"gc", "-n", NULL});
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "runs\tR1\t"));
    assert_non_null(strstr(r.out, "artifacts\t"));
    assert_null(strstr(r.out, "runs\tR2\t"));
    ctl_result_fini(&r);
    assert_true(s_exists(f, "run:R1"));

    /* gc: exactly that goes. */
    r = s_ctl(f, (const char *[]){"gc", "-o", "json", NULL});
    if (r.status != 0)
        print_error("stdout: %s\nstderr: %s\n", r.out, r.err);
    assert_int_equal(r.status, 0);
    doc = s_doc(&r);
    assert_false(json_is_true(json_object_get(doc, "dry_run")));
    assert_null(json_object_get(doc, "items"));
    assert_int_equal(s_deleted(doc, "journal"), 3);
    assert_int_equal(s_deleted(doc, "audit"), 6);
    assert_int_equal(s_deleted(doc, "dead-letters"), 3);
    assert_int_equal(s_deleted(doc, "runs"), 3);
    assert_int_equal(s_deleted(doc, "jobs"), 3);
    assert_int_equal(s_deleted(doc, "files"), 3);
    assert_int_equal(s_deleted(doc, "artifacts"), 3);
    json_decref(doc);
    assert_non_null(strstr(r.err, "runs: deleted=3"));
    ctl_result_fini(&r);
    /* gone */
    const char *gone[] = {
        "run:R1",           "deploy:R1-d",         "approval:R1",  "run:R4",
        "deploy:R4-d",      "approval:R4",         "job:R1.build", "job:R1.build:fx",
        "job:R1.stage.web", "job:R1.stage.web:fx", "job:X.orphan", NULL};
    for (size_t i = 0; gone[i]; i++) {
        if (s_exists(f, gone[i]))
            print_error("still there: %s\n", gone[i]);
        assert_false(s_exists(f, gone[i]));
    }
    assert_false(s_in_zset(f, "runs:all", "R1"));
    assert_false(s_in_zset(f, "runs:shop", "R1"));
    assert_false(s_in_zset(f, "runs:all", "R4"));
    assert_false(s_in_zset(f, "runs:all", "ghost"));
    /* kept */
    const char *kept[] = {"run:R2",
                          "run:R3",
                          "run:R5",
                          "run:R6",
                          "run:R7",
                          "run:R8",
                          "deploy:R2-d",
                          "deploy:R3-d",
                          "approval:R5",
                          "job:R1.vlive.web",
                          "job:R2.build",
                          "job:X.fresh",
                          "env:shop:staging",
                          "release:shop:prod:web",
                          NULL};
    for (size_t i = 0; kept[i]; i++) {
        if (!s_exists(f, kept[i]))
            print_error("gone: %s\n", kept[i]);
        assert_true(s_exists(f, kept[i]));
    }
    assert_true(s_in_zset(f, "runs:all", "R2"));
    assert_true(s_in_zset(f, "runs:all", "R7"));
    redisReply *mr = s_redis(f, "SISMEMBER %sruns:active R5", f->ns);
    assert_int_equal(mr->integer, 1);
    freeReplyObject(mr);
    assert_int_equal(s_int(f, "XLEN", "events"), 2);
    assert_int_equal(s_int(f, "XLEN", "audit"), 0);
    assert_true(s_file_exists(archive));
    struct stat sb;
    assert_int_equal(stat(archive, &sb), 0);
    assert_true(sb.st_size > 0);
    assert_int_equal(s_int(f, "LLEN", "jobs:dead"), 3);
    redisReply *lr = s_redis(f, "LRANGE %sjobs:dead 0 -1", f->ns);
    assert_string_equal(lr->element[0]->str, "d5");
    assert_string_equal(lr->element[2]->str, "d3");
    freeReplyObject(lr);
    assert_false(s_artifact_exists(f, w.a4));
    assert_false(s_artifact_exists(f, w.unref));
    assert_true(s_artifact_exists(f, w.a2));
    assert_true(s_artifact_exists(f, w.a3));
    assert_true(s_artifact_exists(f, w.a5));
    assert_true(s_artifact_exists(f, w.young));
    char c_sha[65];
    s_sha('c', c_sha);
    char *akey = sn_strdupf("artifact:%s", c_sha);
    assert_false(s_exists(f, akey));
    free(akey);
    akey = sn_strdupf("artifact:%s", w.unref);
    assert_false(s_exists(f, akey));
    free(akey);
    akey = sn_strdupf("artifact:%s", w.young); /* another store's record */
    assert_true(s_exists(f, akey));
    free(akey);
    assert_false(s_file_exists(r1_log));
    assert_true(s_file_exists(r2_log));
    assert_false(s_file_exists(old_work));
    assert_true(s_file_exists(r5_work));
    assert_true(s_file_exists(new_work));

    /* The chain still verifies from its first record, now out of the archive. */
    r = s_ctl(f, (const char *[]){"audit", "verify", NULL});
    if (r.status != 0)
        print_error("stdout: %s\nstderr: %s\n", r.out, r.err);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "6 records"));
    ctl_result_fini(&r);

    /* A second gc deletes nothing more. */
    r = s_ctl(f, (const char *[]){"gc", "-o", "json", NULL});
    assert_int_equal(r.status, 0);
    doc = s_doc(&r);
    const char *steps[] = {"journal", "audit", "dead-letters", "runs",
                           "jobs",    "files", "artifacts"};
    for (size_t i = 0; i < SN_ARRAY_LEN(steps); i++) {
        if (s_deleted(doc, steps[i]) != 0)
            print_error("second gc deleted in %s\n", steps[i]);
        assert_int_equal(s_deleted(doc, steps[i]), 0);
        assert_true(s_step_ok(doc, steps[i]));
    }
    json_decref(doc);
    ctl_result_fini(&r);

    /* and the table form of a real gc: one row per step */
    r = s_ctl(f, (const char *[]){"gc", NULL});
    assert_int_equal(r.status, 0);
    assert_int_equal(ctl_count_lines(r.out), 7);
    assert_non_null(strstr(r.out, "runs\t0\t"));
    ctl_result_fini(&r);

    free(archive);
    free(r1_log);
    free(r2_log);
    free(old_work);
    free(r5_work);
    free(new_work);
}

static void test_ctl_gc_redis_down(void **state)
{
    fixture_t *f = *state;
    sn_test_redis_stop(&f->redis);
    int64_t t0 = sn_mono_ms();
    ctl_result_t r = s_ctl(f, (const char *[]){"gc", NULL});
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "sentinelctl gc: cannot reach redis at unix:"));
    assert_string_equal(r.out, "");
    assert_true(sn_mono_ms() - t0 < 10000);
    ctl_result_fini(&r);
    assert_true(sn_test_redis_restart(&f->redis));
}

static void test_ctl_gc_usage(void **state)
{
    fixture_t *f = *state;
    ctl_result_t r = s_ctl(f, (const char *[]){"gc", "now", NULL});
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "unexpected argument 'now'"));
    ctl_result_fini(&r);
    r = s_ctl(f, (const char *[]){"gc", "--bogus", NULL});
    assert_int_equal(r.status, 2);
    ctl_result_fini(&r);
    r = s_ctl(f, (const char *[]){"gc", "--help", NULL});
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "--dry-run"));
    ctl_result_fini(&r);
    /* a bad retention in the config: the loader's message, exit 1, nothing read */
    s_write_config(f, "  bogus: 1\n");
    r = s_ctl(f, (const char *[]){"gc", NULL});
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "retention.bogus: unknown key"));
    ctl_result_fini(&r);
}

/* Records already archived elsewhere (another state_dir): the configured archive does
 * not exist while Redis starts past record 1. gc refuses to archive and trims nothing. */
static void test_ctl_gc_audit_archive_elsewhere(void **state)
{
    fixture_t *f = *state;
    char *other = sn_strdupf("%s/other-audit.log", f->dir);
    s_audit_records(f, 2, other, true);  /* records 1..4 archived to the other file */
    s_audit_records(f, 1, other, false); /* records 5..6 in Redis */
    assert_int_equal(s_int(f, "XLEN", "audit"), 2);
    ctl_result_t r = s_ctl(f, (const char *[]){"gc", "-o", "json", NULL});
    assert_int_equal(r.status, 1);
    json_t *doc = s_doc(&r);
    assert_false(json_is_true(json_object_get(doc, "ok")));
    assert_false(s_step_ok(doc, "audit"));
    assert_non_null(strstr(json_string_value(json_object_get(s_stepj(doc, "audit"), "note")),
                           "missing while redis starts at record 5"));
    assert_true(s_step_ok(doc, "runs")); /* the other steps still ran */
    json_decref(doc);
    ctl_result_fini(&r);
    assert_int_equal(s_int(f, "XLEN", "audit"), 2);
    assert_false(s_exists(f, "audit:failed"));
    char *archive = s_path(f, "audit.log");
    assert_false(s_file_exists(archive));
    free(archive);
    free(other);
}

/* A release whose run cannot be read: which artifact it deploys is unknown, so no
 * artifact is collected (the runs step still works). */
static void test_ctl_gc_release_of_unknown_run(void **state)
{
    fixture_t *f = *state;
    char sha[65];
    s_sha('d', sha);
    s_put_artifact(f, sha, 50 * DAY_MS);
    s_put_release(f, "staging", "vanished");
    s_put_run(f, "R1", "staging", SENTINEL__V1__RUN_STATE__RUN_FAILED, f->now - 100 * DAY_MS, NULL);
    s_do(f, "LPUSH %srelease:shop:staging:api garbage-entry", f->ns);
    ctl_result_t r = s_ctl(f, (const char *[]){"gc", "-o", "json", NULL});
    assert_int_equal(r.status, 1);
    json_t *doc = s_doc(&r);
    assert_false(s_step_ok(doc, "artifacts"));
    assert_int_equal(s_deleted(doc, "artifacts"), 0);
    assert_true(s_step_ok(doc, "runs"));
    assert_int_equal(s_deleted(doc, "runs"), 1);
    json_decref(doc);
    assert_non_null(strstr(r.err, "refers to run vanished"));
    ctl_result_fini(&r);
    assert_true(s_artifact_exists(f, sha));
    assert_false(s_exists(f, "run:R1"));
}

/* The source zips function-handler keeps for a Cloud Functions rollback are artifacts
 * no run names: the per-function source histories keep them; an entry that does not
 * parse makes the artifact step unsure (nothing collected). */
static void test_ctl_gc_function_sources_kept(void **state)
{
    fixture_t *f = *state;
    char kept[65], gone[65];
    s_sha('e', kept);
    s_sha('f', gone);
    s_put_artifact(f, kept, 50 * DAY_MS);
    s_put_artifact(f, gone, 50 * DAY_MS);
    char *entry = sn_strdupf("R9-fb %s", kept);
    s_do(f, "LPUSH %sfirebase:fnsrc:shop:prod:fb:api %s", f->ns, entry);
    free(entry);
    ctl_result_t r = s_ctl(f, (const char *[]){"gc", "--dry-run", "-o", "json", NULL});
    assert_int_equal(r.status, 0);
    json_t *doc = s_doc(&r);
    assert_true(s_has_item(doc, "artifacts", gone));
    assert_false(s_has_item(doc, "artifacts", kept));
    json_decref(doc);
    ctl_result_fini(&r);
    r = s_ctl(f, (const char *[]){"gc", "-o", "json", NULL});
    assert_int_equal(r.status, 0);
    ctl_result_fini(&r);
    assert_true(s_artifact_exists(f, kept));
    assert_false(s_artifact_exists(f, gone));

    s_put_artifact(f, gone, 50 * DAY_MS);
    s_do(f, "LPUSH %sfirebase:fnsrc:shop:prod:fb:api garbage", f->ns);
    r = s_ctl(f, (const char *[]){"gc", "-o", "json", NULL});
    assert_int_equal(r.status, 1);
    doc = s_doc(&r);
    assert_false(s_step_ok(doc, "artifacts"));
    assert_int_equal(s_deleted(doc, "artifacts"), 0);
    json_decref(doc);
    assert_non_null(strstr(r.err, "firebase:fnsrc:shop:prod:fb:api holds an entry"));
    ctl_result_fini(&r);
    assert_true(s_artifact_exists(f, gone));
}

typedef struct {
    const char *path, *needle;
    int count;
} log_wait_t;

static bool s_log_has(void *arg)
{
    const log_wait_t *w = arg;
    return sn_test_count_in_file(w->path, w->needle) >= w->count;
}

/* `sentinelctl up` runs gc once ready and then every retention.gc_interval_s, as a child
 * that is gone when up stops. */
static void test_ctl_gc_up_runs_it(void **state)
{
    fixture_t *f = *state;
    char *extra = sn_strdupf("  gc_interval_s: 1s\n"
                             "broker:\n  rpc: tcp://127.0.0.1:%d\n  pub: tcp://127.0.0.1:%d\n"
                             "  sub: tcp://127.0.0.1:%d\n",
                             sn_test_free_port(), sn_test_free_port(), sn_test_free_port());
    s_write_config(f, extra);
    free(extra);
    s_put_run(f, "R1", "staging", SENTINEL__V1__RUN_STATE__RUN_FAILED, f->now - 100 * DAY_MS, NULL);
    char *out = sn_strdupf("%s/up.out", f->dir);
    char *err = sn_strdupf("%s/up.err", f->dir);
    pid_t pid = ctl_spawn((const char *[]){"up", f->config, NULL}, NULL, out, err);
    log_wait_t twice = {err, "up: gc pid=", 2};
    bool ok = sn_test_wait_for(s_log_has, &twice, 20000);
    if (!ok) {
        char *log = sn_test_read_file(err);
        print_error("up's log:\n%s\n", log ? log : "");
        free(log);
    }
    assert_true(ok);
    assert_false(s_exists(f, "run:R1"));
    assert_true(sn_test_count_in_file(err, "gc: runs: deleted=1") >= 1);
    assert_int_equal(sn_test_count_in_file(err, "exited with status 1"), 0);
    assert_int_equal(kill(pid, SIGTERM), 0);
    assert_int_equal(ctl_wait(pid, 15000), 0);
    free(out);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ctl_gc_dry_run_then_gc_then_nothing, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_gc_redis_down, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_gc_usage, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_gc_audit_archive_elsewhere, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_gc_function_sources_kept, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_gc_release_of_unknown_run, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_gc_up_runs_it, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
