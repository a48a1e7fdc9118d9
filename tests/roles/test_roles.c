/* Test roles for the runtime, built only into sentinel-test-agent:
 *  - test-echo: answers "test.echo" (at once, or after "hold:<ms>" on a job thread);
 *  - test-slow: "test.slow" claims a ledger job, works for a while renewing its lease,
 *    then records one side effect and completes, each write checked against its epoch;
 *  - test-leader: exclusive leader that counts its terms with fenced writes, creates
 *    ledger jobs on "test.jobs.submit", dispatches them to test.slow, re-dispatches
 *    lapsed leases and adopts open jobs when elected. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_log.h"

#define TEST_LEADER_ROLE "test-leader"

static void s_nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- test-echo --------------------------------------------------------------------------- */

static sn_rc_t s_echo_hold(sn_ctx_t *ctx, void *state, const sn_request_t *req,
                           sn_envelope_t *reply, const char **nak_reason)
{
    const Sentinel__V1__Note *in = sn_request_envelope(req)->note;
    int64_t hold_ms = strtoll(in->text + 5, NULL, 10);
    sn_info("test-echo", "holding ms=%lld", (long long)hold_ms);
    int64_t until = sn_mono_ms() + hold_ms;
    while (sn_mono_ms() < until && !sn_ctx_is_stopping(ctx))
        s_nap_ms(10);
    Sentinel__V1__Note *note = sn_request_alloc((sn_request_t *)req, sizeof *note);
    sentinel__v1__note__init(note);
    note->text = sn_request_strdup((sn_request_t *)req, sn_ctx_instance(ctx));
    note->n = hold_ms;
    reply->type = "test.echoed";
    reply->body_case = SENTINEL__V1__ENVELOPE__BODY_NOTE;
    reply->note = note;
    return SN_OK;
}

static void s_echo_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_NOTE || !env->note->text) {
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    if (strncmp(env->note->text, "hold:", 5) == 0) {
        sn_request_defer(ctx, req, s_echo_hold, state);
        return;
    }
    Sentinel__V1__Note note = SENTINEL__V1__NOTE__INIT;
    note.text = env->note->text;
    Sentinel__V1__Note__AttrsEntry who = SENTINEL__V1__NOTE__ATTRS_ENTRY__INIT;
    who.key = "instance";
    who.value = (char *)sn_ctx_instance(ctx);
    Sentinel__V1__Note__AttrsEntry principal = SENTINEL__V1__NOTE__ATTRS_ENTRY__INIT;
    principal.key = "principal";
    principal.value = (char *)sn_request_principal(req);
    Sentinel__V1__Note__AttrsEntry *attrs[] = {&who, &principal};
    note.attrs = attrs;
    note.n_attrs = 2;
    sn_envelope_t reply;
    sentinel__v1__envelope__init(&reply);
    reply.type = "test.echoed";
    reply.body_case = SENTINEL__V1__ENVELOPE__BODY_NOTE;
    reply.note = &note;
    sn_request_reply(ctx, req, &reply);
}

static const sn_role_t s_test_echo = {
    .name = "test-echo",
    .agent = "Test",
    .summary = "echoes test.echo requests (hold:<ms> answers from a job thread)",
    .services = (const char *const[]){"test.echo", NULL},
    .credit = 2,
    .on_request = s_echo_request,
};

/* ---- test-slow --------------------------------------------------------------------------- */

static void s_slow_answer(sn_request_t *req, sn_envelope_t *reply, const char *text, int64_t n)
{
    Sentinel__V1__Note *note = sn_request_alloc(req, sizeof *note);
    sentinel__v1__note__init(note);
    note->text = sn_request_strdup(req, text);
    note->n = n;
    reply->type = "test.slow.done";
    reply->body_case = SENTINEL__V1__ENVELOPE__BODY_NOTE;
    reply->note = note;
}

static sn_rc_t s_slow_job(sn_ctx_t *ctx, void *state, const sn_request_t *creq,
                          sn_envelope_t *reply, const char **nak_reason)
{
    sn_request_t *req = (sn_request_t *)creq;
    const Sentinel__V1__JobSpec *in = sn_request_envelope(req)->job;
    sn_ledger_t *ledger = sn_ctx_ledger(ctx);
    uint64_t epoch = 0;
    Sentinel__V1__JobSpec *spec = NULL;
    sn_rc_t rc = sn_ledger_claim(ledger, in->job_id, sn_ctx_instance(ctx), 0, &epoch, &spec);
    if (rc != SN_OK) {
        sn_info("test-slow", "claim refused job=%s rc=%s", in->job_id, sn_rc_str(rc));
        s_slow_answer(req, reply, "claim-refused", 0);
        return SN_OK;
    }
    int64_t work_ms = 0;
    if (spec->payload.len > 0 && spec->payload.len < 20) {
        char buf[24];
        memcpy(buf, spec->payload.data, spec->payload.len);
        buf[spec->payload.len] = '\0';
        work_ms = strtoll(buf, NULL, 10);
    }
    int64_t lease_ms = spec->lease_ms;
    sn_ledger_spec_free(&spec);
    sn_info("test-slow", "claimed job=%s epoch=%llu work_ms=%lld", in->job_id,
            (unsigned long long)epoch, (long long)work_ms);
    int64_t start = sn_mono_ms(), last_renew = start;
    while (sn_mono_ms() - start < work_ms) {
        s_nap_ms(10);
        if (sn_mono_ms() - last_renew >= lease_ms / 3) {
            rc = sn_ledger_renew(ledger, in->job_id, epoch, 0, NULL);
            if (rc != SN_OK) {
                sn_info("test-slow", "lease lost job=%s epoch=%llu rc=%s", in->job_id,
                        (unsigned long long)epoch, sn_rc_str(rc));
                s_slow_answer(req, reply, "lease-lost", (int64_t)epoch);
                return SN_OK;
            }
            last_renew = sn_mono_ms();
        }
    }
    /* The side effect, counted once per job whatever happens to the workers. */
    char *key = sn_strdupf("test:effects:%s", in->job_id);
    rc = sn_ledger_guarded_incr(ledger, in->job_id, epoch, key, NULL);
    free(key);
    if (rc != SN_OK) {
        sn_info("test-slow", "side effect refused job=%s epoch=%llu rc=%s", in->job_id,
                (unsigned long long)epoch, sn_rc_str(rc));
        s_slow_answer(req, reply, "stale", (int64_t)epoch);
        return SN_OK;
    }
    rc = sn_ledger_complete(ledger, in->job_id, epoch, true, NULL, 0);
    sn_info("test-slow", "completed job=%s epoch=%llu rc=%s", in->job_id, (unsigned long long)epoch,
            sn_rc_str(rc));
    s_slow_answer(req, reply, rc == SN_OK ? "done" : "complete-refused", (int64_t)epoch);
    return SN_OK;
}

static void s_slow_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_JOB || !env->job->job_id ||
        !sn_ledger_id_is_valid(env->job->job_id)) {
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    sn_request_defer(ctx, req, s_slow_job, state);
}

static const sn_role_t s_test_slow = {
    .name = "test-slow",
    .agent = "Test",
    .summary = "claims ledger jobs on test.slow, works, records one side effect",
    .services = (const char *const[]){"test.slow", NULL},
    .credit = 1,
    .on_request = s_slow_request,
};

/* ---- test-leader ------------------------------------------------------------------------- */

#define TEST_LEADER_MAX_INFLIGHT 256

typedef struct {
    char *inflight[TEST_LEADER_MAX_INFLIGHT]; /* job ids with a call outstanding */
    uint64_t unrecorded_fence;                /* a term not yet recorded (Redis was slow) */
} s_leader_state_t;

static bool s_inflight_has(s_leader_state_t *st, const char *job_id)
{
    for (int i = 0; i < TEST_LEADER_MAX_INFLIGHT; i++)
        if (st->inflight[i] && strcmp(st->inflight[i], job_id) == 0)
            return true;
    return false;
}

static bool s_inflight_add(s_leader_state_t *st, const char *job_id)
{
    for (int i = 0; i < TEST_LEADER_MAX_INFLIGHT; i++)
        if (!st->inflight[i]) {
            st->inflight[i] = sn_strdup(job_id);
            return true;
        }
    return false;
}

static void s_inflight_del(s_leader_state_t *st, const char *job_id)
{
    for (int i = 0; i < TEST_LEADER_MAX_INFLIGHT; i++)
        if (st->inflight[i] && strcmp(st->inflight[i], job_id) == 0) {
            free(st->inflight[i]);
            st->inflight[i] = NULL;
        }
}

typedef struct {
    s_leader_state_t *st;
    char job_id[SN_LEDGER_ID_MAX + 1];
} s_call_arg_t;

static void s_dispatch_done(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply,
                            const char *nak_reason)
{
    s_call_arg_t *ca = arg;
    sn_info("test-leader", "dispatch answered job=%s result=%s", ca->job_id,
            reply && reply->note && reply->note->text ? reply->note->text
                                                      : (nak_reason ? nak_reason : "?"));
    s_inflight_del(ca->st, ca->job_id);
    free(ca);
}

/* Sends job @job_id to test.slow with the job's current attempt. */
static void s_dispatch(sn_ctx_t *ctx, s_leader_state_t *st, const char *job_id)
{
    if (s_inflight_has(st, job_id))
        return;
    sn_ledger_job_t job;
    if (sn_ledger_get(sn_ctx_ledger(ctx), job_id, &job) != SN_OK)
        return;
    if (job.state == SN_JOB_QUEUED && s_inflight_add(st, job_id)) {
        sn_envelope_t env;
        char id[SN_ID_LEN + 1];
        sn_envelope_stamp(&env, sn_ctx_source(ctx), "test.slow.run", id);
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_JOB;
        env.job = job.spec;
        env.fence = sn_ctx_fence(ctx);
        s_call_arg_t *ca = sn_calloc(1, sizeof *ca);
        ca->st = st;
        sn_strlcpy(ca->job_id, job_id, sizeof ca->job_id);
        sn_info("test-leader", "dispatch job=%s attempt=%u", job_id, job.spec->attempt);
        sn_ctx_call(ctx, "test.slow", &env, 30000, job.spec->attempt, s_dispatch_done, ca);
    }
    sn_ledger_job_fini(&job);
}

static sn_rc_t s_leader_init(sn_ctx_t *ctx, void **state)
{
    *state = sn_calloc(1, sizeof(s_leader_state_t));
    return SN_OK;
}

static void s_leader_destroy(sn_ctx_t *ctx, void *state)
{
    s_leader_state_t *st = state;
    for (int i = 0; i < TEST_LEADER_MAX_INFLIGHT; i++)
        free(st->inflight[i]);
    free(st);
}

/* Records the term @fence with a fenced write (one field per fence). SN_AGAIN: retry. */
static sn_rc_t s_record_term(sn_ctx_t *ctx, uint64_t fence);

static void s_leader_leadership(sn_ctx_t *ctx, void *state, bool is_leader, uint64_t fence)
{
    s_leader_state_t *st = state;
    st->unrecorded_fence = 0;
    if (is_leader && s_record_term(ctx, fence) == SN_AGAIN)
        st->unrecorded_fence = fence; /* retried on every tick while this term lasts */
}

static sn_rc_t s_record_term(sn_ctx_t *ctx, uint64_t fence)
{
    char *lock_key = sn_strdupf("leader:%s", TEST_LEADER_ROLE);
    char *field = sn_strdupf("%llu", (unsigned long long)fence);
    sn_journal_ops_t *ops = sn_journal_ops_new();
    sn_journal_ops_hset(ops, "test:terms", field, sn_ctx_instance(ctx),
                        strlen(sn_ctx_instance(ctx)));
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, sn_ctx_source(ctx), "test.term", id);
    sn_journal_result_t res;
    sn_rc_t rc = sn_journal_commit(sn_ctx_journal(ctx), ops, lock_key, fence, &env, &res);
    sn_info("test-leader", "term recorded fence=%s rc=%s", field, sn_rc_str(rc));
    sn_journal_ops_destroy(&ops);
    free(field);
    free(lock_key);
    return rc;
}

static void s_leader_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_NOTE || !env->note->text ||
        !sn_ledger_id_is_valid(env->note->text)) {
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    const Sentinel__V1__Note *in = env->note;
    char work[24];
    snprintf(work, sizeof work, "%lld", (long long)in->n);
    Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
    spec.job_id = in->text;
    spec.kind = "test.slow";
    spec.service = "test.slow";
    spec.owner_role = TEST_LEADER_ROLE;
    spec.max_attempts = 3;
    spec.lease_ms = 1000;
    spec.payload.data = (uint8_t *)work;
    spec.payload.len = strlen(work);
    sn_rc_t rc = sn_ledger_create(sn_ctx_ledger(ctx), sn_ctx_fence(ctx), TEST_LEADER_ROLE, &spec);
    if (rc != SN_OK) {
        sn_request_nak(ctx, req, rc == SN_AGAIN ? "overloaded" : "forbidden");
        return;
    }
    s_dispatch(ctx, state, in->text);
    Sentinel__V1__Ack ack = SENTINEL__V1__ACK__INIT;
    ack.id = in->text;
    sn_envelope_t reply;
    sentinel__v1__envelope__init(&reply);
    reply.type = "test.jobs.accepted";
    reply.body_case = SENTINEL__V1__ENVELOPE__BODY_ACK;
    reply.ack = &ack;
    sn_request_reply(ctx, req, &reply);
}

static void s_leader_tick(sn_ctx_t *ctx, void *state, bool is_leader)
{
    if (!is_leader)
        return;
    s_leader_state_t *st = state;
    if (st->unrecorded_fence && st->unrecorded_fence == sn_ctx_fence(ctx) &&
        s_record_term(ctx, st->unrecorded_fence) != SN_AGAIN)
        st->unrecorded_fence = 0;
    sn_ledger_t *ledger = sn_ctx_ledger(ctx);
    sn_ledger_redispatch_t rd;
    if (sn_ledger_redispatch(ledger, sn_ctx_fence(ctx), TEST_LEADER_ROLE, &rd) == SN_OK) {
        for (size_t i = 0; i < rd.dead.count; i++)
            sn_warn("test-leader", "job dead-lettered job=%s", rd.dead.ids[i]);
        sn_ledger_redispatch_fini(&rd);
    }
    /* Adoption and retry: every queued job of ours without a call in flight goes out. */
    sn_ledger_ids_t open;
    if (sn_ledger_open_jobs(ledger, TEST_LEADER_ROLE, &open) == SN_OK) {
        for (size_t i = 0; i < open.count; i++)
            s_dispatch(ctx, state, open.ids[i]);
        sn_ledger_ids_fini(&open);
    }
}

static const sn_role_t s_test_leader = {
    .name = TEST_LEADER_ROLE,
    .agent = "Test",
    .summary = "exclusive leader: counts terms, owns and re-dispatches test.slow jobs",
    .services = (const char *const[]){"test.jobs.submit", NULL},
    .leadership = SN_LEADERSHIP_EXCLUSIVE,
    .credit = 1,
    .tick_ms = 200,
    .init = s_leader_init,
    .on_request = s_leader_request,
    .on_tick = s_leader_tick,
    .on_leadership = s_leader_leadership,
    .destroy = s_leader_destroy,
};

const sn_role_t *const sn_roles[] = {&s_test_echo, &s_test_slow, &s_test_leader, NULL};
