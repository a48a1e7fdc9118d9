/* Integration tests for sn_ledger against a real redis-server: fenced create, claim /
 * renew / complete, a live lease refused to another owner, a frozen worker's late write
 * refused after a re-claim, redispatch with attempt + 1, dead-lettering at the limit
 * with the event in the journal stream before the publish callback, the hard maximum on
 * renewals, adoption lists, and garbage or absent job ids. */
#include "sn_test.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sentinel/sn_leader.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_redis.h"

#define ROLE "pilot"

static sn_test_redis_t s_srv;

typedef struct {
    char *ns;
    sn_redis_t *redis;
    sn_leader_t *leader;
    uint64_t fence;
    sn_source_t source;
    sn_ledger_t *ledger;
    /* publish callback record */
    int published;
    char topic[64];
    uint8_t env[4096];
    size_t env_len;
    bool stored_before_publish;
} s_fix_t;

static int s_setup(void **state)
{
    return sn_test_redis_start(&s_srv) ? 0 : -1;
}

static int s_teardown(void **state)
{
    if (s_srv.pid > 0)
        kill(s_srv.pid, SIGCONT);
    sn_test_redis_destroy(&s_srv);
    return 0;
}

/* The event is already in the stream when we are called (outbox rule). */
static void s_publish(void *arg, const char *topic, const uint8_t *env, size_t len)
{
    s_fix_t *f = arg;
    f->published++;
    snprintf(f->topic, sizeof f->topic, "%s", topic);
    SN_ASSERT(len <= sizeof f->env);
    memcpy(f->env, env, len);
    f->env_len = len;
    char *stream = sn_strdupf("%sevents", f->ns);
    const char *argv[] = {"XREVRANGE", stream, "+", "-", "COUNT", "1"};
    redisReply *r = NULL;
    f->stored_before_publish = false;
    if (sn_redis_cmd(f->redis, SN_REDIS_MAIN, 0, &r, 6, argv, NULL) == SN_OK) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
            redisReply *fields = r->element[0]->element[1];
            for (size_t i = 0; i + 1 < fields->elements; i += 2)
                if (strcmp(fields->element[i]->str, "env") == 0 &&
                    fields->element[i + 1]->len == len &&
                    memcmp(fields->element[i + 1]->str, env, len) == 0)
                    f->stored_before_publish = true;
        }
        freeReplyObject(r);
    }
    free(stream);
}

static s_fix_t *s_fix(const char *tag)
{
    s_fix_t *f = sn_calloc(1, sizeof *f);
    f->ns = sn_test_namespace(tag);
    sn_redis_opts_t o = {.unix_path = s_srv.unix_path, .namespace_ = f->ns, .timeout_ms = 1000};
    f->redis = sn_redis_new(&o);
    assert_non_null(f->redis);
    f->leader = sn_leader_new(f->redis, ROLE, "leader-1", 5000);
    assert_int_equal(sn_leader_try(f->leader, &f->fence), SN_OK);
    sn_source_init(&f->source, ROLE, "leader-1");
    f->ledger = sn_ledger_new(f->redis, &f->source);
    sn_ledger_set_publish(f->ledger, s_publish, f);
    return f;
}

static void s_fix_free(s_fix_t *f)
{
    sn_ledger_destroy(&f->ledger);
    assert_null(f->ledger);
    sn_leader_destroy(&f->leader);
    sn_redis_destroy(&f->redis);
    free(f->ns);
    free(f);
}

static sn_rc_t s_create(s_fix_t *f, const char *id, uint32_t max_attempts, int64_t lease_ms)
{
    static const uint8_t payload[] = {'{', 0, '}', 0xff};
    Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
    spec.job_id = (char *)id;
    spec.kind = "test.slow";
    spec.service = "test.work";
    spec.max_attempts = max_attempts;
    spec.lease_ms = lease_ms;
    spec.payload.data = (uint8_t *)payload;
    spec.payload.len = sizeof payload;
    spec.correlation_id = "run-1";
    return sn_ledger_create(f->ledger, f->fence, ROLE, &spec);
}

static bool s_has(const sn_ledger_ids_t *ids, const char *id)
{
    for (size_t i = 0; i < ids->count; i++)
        if (strcmp(ids->ids[i], id) == 0)
            return true;
    return false;
}

static sn_job_state_t s_state(s_fix_t *f, const char *id, sn_ledger_job_t *out)
{
    sn_ledger_job_t j;
    assert_int_equal(sn_ledger_get(f->ledger, id, &j), SN_OK);
    sn_job_state_t st = j.state;
    if (out)
        *out = j;
    else
        sn_ledger_job_fini(&j);
    return st;
}

static void test_sn_ledger_create_fenced(void **state)
{
    s_fix_t *f = s_fix("create");
    Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
    spec.job_id = "job-1";
    spec.kind = "k";
    spec.service = "s";
    assert_int_equal(sn_ledger_create(f->ledger, f->fence + 1, ROLE, &spec), SN_DECLINED);
    assert_int_equal(sn_ledger_create(f->ledger, f->fence - 1, ROLE, &spec), SN_DECLINED);
    assert_int_equal(sn_ledger_create(f->ledger, 0, ROLE, &spec), SN_DECLINED);
    assert_int_equal(sn_ledger_create(f->ledger, f->fence, "other-role", &spec), SN_DECLINED);
    sn_ledger_job_t j;
    assert_int_equal(sn_ledger_get(f->ledger, "job-1", &j), SN_ERROR); /* nothing written */

    assert_int_equal(sn_ledger_create(f->ledger, f->fence, ROLE, &spec), SN_OK);
    assert_int_equal(sn_ledger_create(f->ledger, f->fence, ROLE, &spec), SN_OK); /* idempotent */
    assert_int_equal(s_state(f, "job-1", &j), SN_JOB_QUEUED);
    assert_int_equal(j.spec->attempt, 1);
    assert_int_equal(j.spec->max_attempts, 3);
    assert_int_equal(j.spec->lease_ms, 30000);
    assert_string_equal(j.spec->owner_role, ROLE);
    assert_int_equal(j.epoch, 0);
    assert_true(j.created_ms > 0);
    sn_ledger_job_fini(&j);
    sn_ledger_ids_t open;
    assert_int_equal(sn_ledger_open_jobs(f->ledger, ROLE, &open), SN_OK);
    assert_int_equal(open.count, 1);
    assert_true(s_has(&open, "job-1"));
    sn_ledger_ids_fini(&open);

    /* Bad input never reaches Redis. */
    Sentinel__V1__JobSpec bad = spec;
    bad.job_id = "has space";
    assert_int_equal(sn_ledger_create(f->ledger, f->fence, ROLE, &bad), SN_ERROR);
    bad.job_id = "";
    assert_int_equal(sn_ledger_create(f->ledger, f->fence, ROLE, &bad), SN_ERROR);
    bad.job_id = NULL;
    assert_int_equal(sn_ledger_create(f->ledger, f->fence, ROLE, &bad), SN_ERROR);
    bad = spec;
    bad.owner_role = "someone-else";
    assert_int_equal(sn_ledger_create(f->ledger, f->fence, ROLE, &bad), SN_ERROR);
    bad = spec;
    bad.kind = NULL;
    assert_int_equal(sn_ledger_create(f->ledger, f->fence, ROLE, &bad), SN_ERROR);
    assert_int_equal(sn_ledger_create(f->ledger, f->fence, "", &spec), SN_ERROR);
    assert_int_equal(sn_ledger_create(f->ledger, f->fence, NULL, &spec), SN_ERROR);
    assert_int_equal(sn_ledger_create(f->ledger, f->fence, "a b", &spec), SN_ERROR);
    assert_int_equal(sn_ledger_create(f->ledger, f->fence, ROLE, NULL), SN_ERROR);
    assert_int_equal(f->published, 0);
    s_fix_free(f);
}

static void test_sn_ledger_claim_renew_complete(void **state)
{
    s_fix_t *f = s_fix("claim");
    assert_int_equal(s_create(f, "job-2", 3, 2000), SN_OK);
    uint64_t e1 = 0, e2 = 0;
    Sentinel__V1__JobSpec *spec = NULL;
    assert_int_equal(sn_ledger_claim(f->ledger, "job-2", "w1", 0, &e1, &spec), SN_OK);
    assert_int_equal(e1, 1);
    assert_non_null(spec);
    assert_string_equal(spec->job_id, "job-2");
    assert_string_equal(spec->kind, "test.slow");
    assert_string_equal(spec->service, "test.work");
    assert_string_equal(spec->owner_role, ROLE);
    assert_string_equal(spec->correlation_id, "run-1");
    assert_int_equal(spec->attempt, 1);
    assert_int_equal(spec->payload.len, 4);
    assert_memory_equal(spec->payload.data, "{\0}\xff", 4);
    sn_ledger_spec_free(&spec);
    assert_null(spec);

    /* A live lease is not taken by another owner. */
    assert_int_equal(sn_ledger_claim(f->ledger, "job-2", "w2", 0, &e2, NULL), SN_DECLINED);
    int64_t granted = 0;
    assert_int_equal(sn_ledger_renew(f->ledger, "job-2", e1, 1500, &granted), SN_OK);
    assert_int_equal(granted, 1500);
    assert_int_equal(sn_ledger_renew(f->ledger, "job-2", e1 + 1, 1500, NULL), SN_DECLINED);
    sn_ledger_job_t j;
    assert_int_equal(s_state(f, "job-2", &j), SN_JOB_CLAIMED);
    assert_string_equal(j.owner, "w1");
    assert_int_equal(j.epoch, e1);
    assert_true(j.lease_deadline_ms > j.claimed_ms);
    sn_ledger_job_fini(&j);

    int64_t v = 0;
    assert_int_equal(sn_ledger_guarded_incr(f->ledger, "job-2", e1, "fx:job-2", &v), SN_OK);
    assert_int_equal(v, 1);
    const uint8_t rec[] = {1, 0, 2};
    assert_int_equal(
        sn_ledger_guarded_hset(f->ledger, "job-2", e1, "job:job-2:fx", "deploy", rec, sizeof rec),
        SN_OK);

    const uint8_t result[] = {'o', 'k', 0, '!'};
    assert_int_equal(sn_ledger_complete(f->ledger, "job-2", e1, true, result, sizeof result),
                     SN_OK);
    assert_int_equal(f->published, 1);
    assert_string_equal(f->topic, "job.completed");
    assert_true(f->stored_before_publish);
    sn_envelope_t *env = sn_envelope_unpack(f->env, f->env_len, SN_MAX_EVENT_BYTES, NULL);
    assert_non_null(env);
    assert_int_equal(env->body_case, SENTINEL__V1__ENVELOPE__BODY_JOB_RESULT);
    assert_string_equal(env->job_result->job_id, "job-2");
    assert_true(env->job_result->ok);
    assert_int_equal(env->job_result->epoch, e1);
    sn_envelope_free(&env);

    assert_int_equal(s_state(f, "job-2", &j), SN_JOB_DONE);
    assert_true(j.ok);
    assert_int_equal(j.result_len, sizeof result);
    assert_memory_equal(j.result, result, sizeof result);
    sn_ledger_job_fini(&j);
    /* Done is final: no second completion, no claim, no guarded write. */
    assert_int_equal(sn_ledger_complete(f->ledger, "job-2", e1, false, NULL, 0), SN_DECLINED);
    assert_int_equal(sn_ledger_claim(f->ledger, "job-2", "w2", 0, &e2, NULL), SN_DECLINED);
    assert_int_equal(sn_ledger_guarded_incr(f->ledger, "job-2", e1, "fx:job-2", &v), SN_DECLINED);
    sn_ledger_ids_t open;
    assert_int_equal(sn_ledger_open_jobs(f->ledger, ROLE, &open), SN_OK);
    assert_false(s_has(&open, "job-2"));
    sn_ledger_ids_fini(&open);

    /* A failed job: state failed and a job.failed event. */
    assert_int_equal(s_create(f, "job-2b", 3, 2000), SN_OK);
    assert_int_equal(sn_ledger_claim(f->ledger, "job-2b", "w1", 0, &e1, NULL), SN_OK);
    assert_int_equal(sn_ledger_complete(f->ledger, "job-2b", e1, false, NULL, 0), SN_OK);
    assert_string_equal(f->topic, "job.failed");
    assert_int_equal(s_state(f, "job-2b", NULL), SN_JOB_FAILED);
    s_fix_free(f);
}

typedef struct {
    s_fix_t *f;
    const char *id;
} s_job_ref_t;

static bool s_lease_lapsed(void *arg)
{
    s_job_ref_t *ref = arg;
    sn_ledger_job_t j;
    if (sn_ledger_get(ref->f->ledger, ref->id, &j) != SN_OK)
        return false;
    char *out = sn_test_redis_cli(&s_srv, "TIME");
    long long sec = 0, usec = 0;
    bool ok = out && sscanf(out, "%lld\n%lld", &sec, &usec) == 2;
    free(out);
    bool lapsed = ok && j.lease_deadline_ms <= sec * 1000 + usec / 1000;
    sn_ledger_job_fini(&j);
    return lapsed;
}

/* A frozen worker's late writes are refused once another worker re-claimed the job. */
static void test_sn_ledger_late_write_refused(void **state)
{
    s_fix_t *f = s_fix("late");
    assert_int_equal(s_create(f, "job-3", 3, 5000), SN_OK);
    uint64_t e1 = 0, e2 = 0;
    assert_int_equal(sn_ledger_claim(f->ledger, "job-3", "w1", 150, &e1, NULL), SN_OK);
    s_job_ref_t ref = {f, "job-3"};
    assert_true(sn_test_wait_for(s_lease_lapsed, &ref, 3000));
    /* Lapsed: w1 can no longer renew or write, even before anyone re-claims. */
    assert_int_equal(sn_ledger_renew(f->ledger, "job-3", e1, 150, NULL), SN_DECLINED);
    int64_t v = 0;
    assert_int_equal(sn_ledger_guarded_incr(f->ledger, "job-3", e1, "fx:job-3", &v), SN_DECLINED);
    assert_int_equal(sn_ledger_claim(f->ledger, "job-3", "w2", 5000, &e2, NULL), SN_OK);
    assert_true(e2 > e1);
    assert_int_equal(sn_ledger_complete(f->ledger, "job-3", e1, true, NULL, 0), SN_DECLINED);
    assert_int_equal(sn_ledger_guarded_incr(f->ledger, "job-3", e1, "fx:job-3", &v), SN_DECLINED);
    assert_int_equal(sn_ledger_renew(f->ledger, "job-3", e1, 150, NULL), SN_DECLINED);
    assert_int_equal(sn_ledger_guarded_incr(f->ledger, "job-3", e2, "fx:job-3", &v), SN_OK);
    assert_int_equal(v, 1);
    assert_int_equal(sn_ledger_complete(f->ledger, "job-3", e2, true, NULL, 0), SN_OK);
    char *cmd = sn_strdupf("GET %sfx:job-3", f->ns);
    char *got = sn_test_redis_cli(&s_srv, cmd);
    assert_string_equal(got, "1"); /* exactly one side effect counted */
    free(got);
    free(cmd);
    sn_ledger_job_t j;
    assert_int_equal(s_state(f, "job-3", &j), SN_JOB_DONE);
    assert_string_equal(j.owner, "w2");
    sn_ledger_job_fini(&j);
    s_fix_free(f);
}

typedef struct {
    s_fix_t *f;
    sn_ledger_redispatch_t out;
} s_redispatch_t;

static bool s_redispatched(void *arg)
{
    s_redispatch_t *rd = arg;
    sn_ledger_redispatch_fini(&rd->out);
    if (sn_ledger_redispatch(rd->f->ledger, rd->f->fence, ROLE, &rd->out) != SN_OK)
        return false;
    return rd->out.requeued.count + rd->out.dead.count > 0;
}

/* Lapsed lease: requeued with attempt + 1; at the limit: dead-lettered, the event in the
 * journal stream in the same call, the callback after. */
static void test_sn_ledger_redispatch_and_dead_letter(void **state)
{
    s_fix_t *f = s_fix("redispatch");
    assert_int_equal(s_create(f, "job-4", 2, 100), SN_OK);
    assert_int_equal(s_create(f, "job-4-live", 2, 10000), SN_OK);
    uint64_t e = 0, elive = 0;
    assert_int_equal(sn_ledger_claim(f->ledger, "job-4", "w1", 0, &e, NULL), SN_OK);
    assert_int_equal(sn_ledger_claim(f->ledger, "job-4-live", "w1", 0, &elive, NULL), SN_OK);

    s_redispatch_t rd = {.f = f};
    /* Not the leader's fence: refused, nothing changes. */
    assert_int_equal(sn_ledger_redispatch(f->ledger, f->fence + 1, ROLE, &rd.out), SN_DECLINED);
    assert_int_equal(rd.out.requeued.count, 0);
    assert_int_equal(sn_ledger_redispatch(f->ledger, f->fence, "", &rd.out), SN_ERROR);

    assert_true(sn_test_wait_for(s_redispatched, &rd, 3000));
    assert_int_equal(rd.out.requeued.count, 1);
    assert_string_equal(rd.out.requeued.ids[0], "job-4");
    assert_int_equal(rd.out.dead.count, 0);
    sn_ledger_job_t j;
    assert_int_equal(s_state(f, "job-4", &j), SN_JOB_QUEUED);
    assert_int_equal(j.spec->attempt, 2);
    assert_string_equal(j.owner, "");
    sn_ledger_job_fini(&j);
    assert_int_equal(s_state(f, "job-4-live", NULL), SN_JOB_CLAIMED); /* live lease kept */
    /* The old epoch is dead for good. */
    assert_int_equal(sn_ledger_complete(f->ledger, "job-4", e, true, NULL, 0), SN_DECLINED);

    /* Second attempt lapses too: at the limit (2), dead-lettered. */
    assert_int_equal(sn_ledger_claim(f->ledger, "job-4", "w2", 0, &e, NULL), SN_OK);
    assert_int_equal(f->published, 0);
    assert_true(sn_test_wait_for(s_redispatched, &rd, 3000));
    assert_int_equal(rd.out.requeued.count, 0);
    assert_int_equal(rd.out.dead.count, 1);
    assert_string_equal(rd.out.dead.ids[0], "job-4");
    assert_int_equal(rd.out.dead_stream_ids.count, 1);
    assert_int_equal(s_state(f, "job-4", NULL), SN_JOB_DEAD);

    assert_int_equal(f->published, 1);
    assert_string_equal(f->topic, "job.dead_lettered");
    assert_true(f->stored_before_publish);
    sn_envelope_t *env = sn_envelope_unpack(f->env, f->env_len, SN_MAX_EVENT_BYTES, NULL);
    assert_non_null(env);
    assert_string_equal(env->type, "job.dead_lettered");
    assert_int_equal(env->body_case, SENTINEL__V1__ENVELOPE__BODY_JOB_DEAD);
    assert_string_equal(env->job_dead->job_id, "job-4");
    assert_string_equal(env->job_dead->kind, "test.slow");
    assert_int_equal(env->job_dead->attempts, 2);
    assert_int_equal(env->fence, f->fence);
    assert_string_equal(env->correlation_id, "run-1");
    sn_envelope_free(&env);

    /* The stream entry named by the returned id is that event. */
    char *cmd = sn_strdupf("XRANGE %sevents %s %s", f->ns, rd.out.dead_stream_ids.ids[0],
                           rd.out.dead_stream_ids.ids[0]);
    char *got = sn_test_redis_cli(&s_srv, cmd);
    assert_non_null(strstr(got, "job.dead_lettered"));
    free(got);
    free(cmd);

    sn_ledger_ids_t dead, open;
    assert_int_equal(sn_ledger_dead_jobs(f->ledger, 10, &dead), SN_OK);
    assert_int_equal(dead.count, 1);
    assert_string_equal(dead.ids[0], "job-4");
    sn_ledger_ids_fini(&dead);
    assert_int_equal(sn_ledger_dead_jobs(f->ledger, 0, &dead), SN_OK);
    assert_int_equal(dead.count, 0);
    assert_int_equal(sn_ledger_open_jobs(f->ledger, ROLE, &open), SN_OK);
    assert_int_equal(open.count, 1);
    assert_true(s_has(&open, "job-4-live"));
    sn_ledger_ids_fini(&open);
    /* Dead is final. */
    assert_int_equal(sn_ledger_claim(f->ledger, "job-4", "w3", 0, &e, NULL), SN_DECLINED);
    sn_ledger_redispatch_fini(&rd.out);
    s_fix_free(f);
}

/* Renewals never extend a lease beyond claim + the hard maximum. */
static void test_sn_ledger_hard_max_lease(void **state)
{
    s_fix_t *f = s_fix("hardmax");
    sn_ledger_set_max_lease_ms(f->ledger, 600);
    assert_int_equal(s_create(f, "job-5", 3, 200), SN_OK);
    uint64_t e = 0;
    assert_int_equal(sn_ledger_claim(f->ledger, "job-5", "w1", 5000, &e, NULL), SN_OK);
    sn_ledger_job_t j;
    assert_int_equal(s_state(f, "job-5", &j), SN_JOB_CLAIMED);
    int64_t hard = j.claimed_ms + 600;
    assert_true(j.lease_deadline_ms <= hard); /* the claim itself is capped */
    sn_ledger_job_fini(&j);
    int64_t t0 = sn_mono_ms();
    sn_rc_t rc = SN_OK;
    int64_t granted = 0;
    while (rc == SN_OK && sn_mono_ms() < t0 + 3000) {
        rc = sn_ledger_renew(f->ledger, "job-5", e, 200, &granted);
        if (rc == SN_OK) {
            assert_true(granted <= 200);
            assert_int_equal(s_state(f, "job-5", &j), SN_JOB_CLAIMED);
            assert_true(j.lease_deadline_ms <= hard);
            sn_ledger_job_fini(&j);
            struct timespec ts = {0, 40 * 1000 * 1000}; /* the worker's renew pace */
            nanosleep(&ts, NULL);
        }
    }
    assert_int_equal(rc, SN_DECLINED);
    assert_true(sn_mono_ms() - t0 < 1500);
    s_fix_free(f);
}

/* Garbage and absent ids, and a corrupted job record: errors, never a crash. */
static void test_sn_ledger_garbage_ids(void **state)
{
    s_fix_t *f = s_fix("garbage");
    uint64_t e = 0;
    int64_t v = 0;
    char longid[300];
    memset(longid, 'a', sizeof longid - 1);
    longid[sizeof longid - 1] = 0;
    const char *bad[] = {"", "a b", "x\ny", "../etc", "job|1", longid, "\xff\xfe"};
    for (size_t i = 0; i < SN_ARRAY_LEN(bad); i++) {
        assert_false(sn_ledger_id_is_valid(bad[i]));
        assert_int_equal(sn_ledger_claim(f->ledger, bad[i], "w", 0, &e, NULL), SN_ERROR);
        assert_int_equal(sn_ledger_renew(f->ledger, bad[i], 1, 0, NULL), SN_ERROR);
        assert_int_equal(sn_ledger_complete(f->ledger, bad[i], 1, true, NULL, 0), SN_ERROR);
        assert_int_equal(sn_ledger_guarded_incr(f->ledger, bad[i], 1, "k", &v), SN_ERROR);
    }
    assert_int_equal(sn_ledger_claim(f->ledger, NULL, "w", 0, &e, NULL), SN_ERROR);
    assert_int_equal(sn_ledger_claim(f->ledger, "ok-id", NULL, 0, &e, NULL), SN_ERROR);
    assert_int_equal(sn_ledger_claim(f->ledger, "ok-id", "w", -5, &e, NULL), SN_ERROR);
    assert_int_equal(sn_ledger_complete(f->ledger, "ok-id", 1, true, NULL, 3), SN_ERROR);
    assert_int_equal(sn_ledger_guarded_incr(f->ledger, "ok-id", 1, "", &v), SN_ERROR);
    assert_int_equal(sn_ledger_guarded_hset(f->ledger, "ok-id", 1, "k", NULL, NULL, 0), SN_ERROR);

    /* Absent (valid) ids. */
    assert_int_equal(sn_ledger_claim(f->ledger, "absent", "w", 0, &e, NULL), SN_ERROR);
    assert_int_equal(sn_ledger_renew(f->ledger, "absent", 1, 0, NULL), SN_ERROR);
    assert_int_equal(sn_ledger_complete(f->ledger, "absent", 1, true, NULL, 0), SN_ERROR);
    assert_int_equal(sn_ledger_guarded_incr(f->ledger, "absent", 1, "k", &v), SN_ERROR);
    sn_ledger_job_t j;
    assert_int_equal(sn_ledger_get(f->ledger, "absent", &j), SN_ERROR);
    assert_int_equal(sn_ledger_get(f->ledger, "a b", &j), SN_ERROR);

    /* A corrupted record (not written by the ledger): refused, not a crash. */
    char *cmd = sn_strdupf("HSET %sjob:broken state claimed epoch x lease_deadline_ms y", f->ns);
    char *got = sn_test_redis_cli(&s_srv, cmd);
    free(got);
    free(cmd);
    sn_rc_t rc = sn_ledger_claim(f->ledger, "broken", "w", 0, &e, NULL);
    assert_true(rc == SN_ERROR || rc == SN_DECLINED);
    rc = sn_ledger_renew(f->ledger, "broken", 1, 0, NULL);
    assert_true(rc == SN_ERROR || rc == SN_DECLINED);
    assert_int_equal(sn_ledger_get(f->ledger, "broken", &j), SN_OK);
    assert_int_equal(j.state, SN_JOB_CLAIMED);
    sn_ledger_job_fini(&j);
    /* A wrong-type key where a job should be. */
    cmd = sn_strdupf("SET %sjob:wrongtype hello", f->ns);
    got = sn_test_redis_cli(&s_srv, cmd);
    free(got);
    free(cmd);
    assert_int_equal(sn_ledger_claim(f->ledger, "wrongtype", "w", 0, &e, NULL), SN_ERROR);
    assert_int_equal(sn_ledger_get(f->ledger, "wrongtype", &j), SN_ERROR);
    assert_int_equal(f->published, 0);
    s_fix_free(f);
}

/* Redis gone: SN_AGAIN, never a hang; back: the ledger works again. */
static void test_sn_ledger_redis_down(void **state)
{
    s_fix_t *f = s_fix("down");
    assert_int_equal(s_create(f, "job-6", 3, 5000), SN_OK);
    sn_test_redis_stop(&s_srv);
    uint64_t e = 0;
    int64_t t0 = sn_mono_ms();
    assert_int_equal(sn_ledger_claim(f->ledger, "job-6", "w", 0, &e, NULL), SN_AGAIN);
    assert_int_equal(s_create(f, "job-7", 3, 5000), SN_AGAIN);
    sn_ledger_redispatch_t out;
    assert_int_equal(sn_ledger_redispatch(f->ledger, f->fence, ROLE, &out), SN_AGAIN);
    assert_true(sn_mono_ms() - t0 < 3000);
    assert_true(sn_test_redis_restart(&s_srv));
    sn_rc_t rc = SN_AGAIN;
    t0 = sn_mono_ms();
    while (rc == SN_AGAIN && sn_mono_ms() < t0 + 5000) {
        rc = sn_ledger_claim(f->ledger, "job-6", "w", 0, &e, NULL);
        if (rc == SN_AGAIN) {
            struct timespec ts = {0, 20 * 1000 * 1000}; /* retry pace */
            nanosleep(&ts, NULL);
        }
    }
    assert_int_equal(rc, SN_OK); /* the AOF kept the job */
    assert_int_equal(e, 1);
    s_fix_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_ledger_create_fenced),
        cmocka_unit_test(test_sn_ledger_claim_renew_complete),
        cmocka_unit_test(test_sn_ledger_late_write_refused),
        cmocka_unit_test(test_sn_ledger_redispatch_and_dead_letter),
        cmocka_unit_test(test_sn_ledger_hard_max_lease),
        cmocka_unit_test(test_sn_ledger_garbage_ids),
        cmocka_unit_test(test_sn_ledger_redis_down),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
