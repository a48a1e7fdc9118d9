/* autoheal-executor through the real mesh: a private redis-server, the broker, a
 * sentinel-agent autoheal-executor process, and fake deployers registered in the test
 * process with sn_worker (deploy.local.testhost, the process's own host, and
 * deploy.local.cfghost, the configured host of target "web") that record every request.
 * heal.rollback is forwarded to the target's host; heal.retry retries transient failures
 * with backoff within a budget kept in Redis (3 per deploy) that survives a restart of
 * autoheal; every action is journaled as heal.action (intent, outcome); bad requests are
 * refused. */
#include "sn_mesh.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <zmq.h>

#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"
#include "sentinel/sn_worker.h"

#define S_MAX_SEEN 64

typedef struct {
    char service[64];
    char op[16];
    char deploy_id[64];
} s_seen_t;

typedef struct {
    sn_mesh_t m;
    sn_redis_t *redis;
    pthread_t thread;
    volatile int stop;
    pthread_mutex_t mu;
    s_seen_t seen[S_MAX_SEEN];
    int seen_count;
    volatile int mode; /* 0: ok; 1: fail transient; 2: fail permanent */
    size_t autoheal;   /* index of the current autoheal agent */
} s_world_t;

static const char *s_services[] = {"deploy.local.testhost", "deploy.local.cfghost", NULL};

/* ---- the fake deployers ----------------------------------------------------------------- */

static void s_answer(s_world_t *w, sn_worker_t *wk, sn_worker_event_t *ev)
{
    sn_envelope_t *in = sn_envelope_unpack(ev->body, ev->body_len, SN_MAX_FRAME_BYTES, NULL);
    if (!in || in->body_case != SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST) {
        if (sn_worker_nak(wk, &ev->ticket, SN_NAK_INVALID) != SN_OK)
            sn_warn("fake", "nak dropped");
        sn_envelope_free(&in);
        return;
    }
    pthread_mutex_lock(&w->mu);
    if (w->seen_count < S_MAX_SEEN) {
        s_seen_t *s = &w->seen[w->seen_count++];
        sn_strlcpy(s->service, ev->service, sizeof s->service);
        sn_strlcpy(s->op, in->deploy_request->op, sizeof s->op);
        sn_strlcpy(s->deploy_id, in->deploy_request->deploy->deploy_id, sizeof s->deploy_id);
    }
    int mode = w->mode;
    pthread_mutex_unlock(&w->mu);
    Sentinel__V1__DeployResult res = SENTINEL__V1__DEPLOY_RESULT__INIT;
    res.ok = mode == 0;
    res.is_transient = mode == 1;
    res.reason = mode == 0 ? "" : mode == 1 ? "connection reset by provider" : "bad artifact";
    res.deploy = in->deploy_request->deploy;
    sn_envelope_t out;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&out, &w->m.source, "deploy.result", id);
    out.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT;
    out.deploy_result = &res;
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&out, &len);
    if (sn_worker_reply(wk, &ev->ticket, bytes, len) != SN_OK)
        sn_warn("fake", "reply dropped");
    free(bytes);
    sn_envelope_free(&in);
}

static void *s_fake_thread(void *arg)
{
    s_world_t *w = arg;
    sn_worker_t *wk = sn_worker_new(w->m.rpc, NULL);
    SN_ASSERT(wk);
    sn_worker_set_heartbeat(wk, 200, 3);
    for (size_t i = 0; s_services[i]; i++)
        SN_ASSERT(sn_worker_serve(wk, s_services[i], 4) == SN_OK);
    while (!w->stop) {
        zmq_pollitem_t item = {.socket = sn_worker_socket(wk), .events = ZMQ_POLLIN};
        (void)zmq_poll(&item, 1, 20);
        sn_worker_event_t ev;
        while (sn_worker_recv(wk, &ev) == SN_OK) {
            if (ev.type == SN_WORKER_REQUEST)
                s_answer(w, wk, &ev);
            sn_worker_event_fini(&ev);
        }
        sn_worker_tick(wk);
    }
    sn_worker_destroy(&wk);
    return NULL;
}

static int s_seen(s_world_t *w, const char *service, const char *deploy_id, const char *op)
{
    int n = 0;
    pthread_mutex_lock(&w->mu);
    for (int i = 0; i < w->seen_count; i++)
        if (strcmp(w->seen[i].service, service) == 0 &&
            strcmp(w->seen[i].deploy_id, deploy_id) == 0 && (!op || strcmp(w->seen[i].op, op) == 0))
            n++;
    pthread_mutex_unlock(&w->mu);
    return n;
}

/* ---- fixture ------------------------------------------------------------------------------ */

static const char *s_yaml = "targets:\n"
                            "  - name: web\n"
                            "    type: local_static\n"
                            "    host: cfghost\n"
                            "    listen: 127.0.0.1:9301\n"
                            "    preview_listen: 127.0.0.1:9302\n";

static size_t s_start_autoheal(s_world_t *w, const char *instance)
{
    /* Targets without a configured host go to this process's host. */
    setenv("SENTINEL_HOST", "testhost", 1);
    size_t i = sn_mesh_agent_bin(&w->m, "sentinel-agent", "autoheal-executor", instance);
    unsetenv("SENTINEL_HOST");
    return i;
}

static int s_setup(void **state)
{
    zsys_init();
    s_world_t *w = sn_calloc(1, sizeof *w);
    *state = w;
    pthread_mutex_init(&w->mu, NULL);
    if (!sn_mesh_start(&w->m, "heal", s_yaml))
        return -1;
    sn_redis_opts_t ro = {.unix_path = w->m.redis.unix_path, .namespace_ = w->m.ns};
    w->redis = sn_redis_new(&ro);
    if (pthread_create(&w->thread, NULL, s_fake_thread, w) != 0)
        return -1;
    w->autoheal = s_start_autoheal(w, "heal1");
    if (!sn_mesh_wait_service(&w->m, "heal.retry", 1, 15000) ||
        !sn_mesh_wait_service(&w->m, "deploy.local.testhost", 1, 15000))
        return -1;
    return 0;
}

static int s_teardown(void **state)
{
    s_world_t *w = *state;
    w->stop = 1;
    pthread_join(w->thread, NULL);
    sn_redis_destroy(&w->redis);
    int bad = sn_mesh_stop(&w->m);
    pthread_mutex_destroy(&w->mu);
    free(w);
    return bad == 0 ? 0 : -1;
}

/* Calls @service with a DeployRequest (@op, @deploy_id, @target). SN_OK with *out. */
static sn_rc_t s_call(s_world_t *w, const char *service, const char *op, const char *deploy_id,
                      const char *target, int timeout_ms, sn_envelope_t **out, sn_nak_reason_t *nak)
{
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    d.deploy_id = (char *)deploy_id;
    d.target = (char *)target;
    d.run_id = "run-9";
    Sentinel__V1__DeployRequest dr = SENTINEL__V1__DEPLOY_REQUEST__INIT;
    dr.op = (char *)op;
    dr.deploy = &d;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &w->m.source, "deploy.request", id);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST;
    env.deploy_request = &dr;
    sn_envelope_add_label(&env, "reason", "live verification failed");
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&env, &len);
    sn_envelope_fini_labels(&env);
    uint8_t *reply = NULL;
    size_t reply_len = 0;
    *out = NULL;
    *nak = SN_NAK_NONE;
    sn_rc_t rc = sn_rpc_call(w->m.client, service, bytes, len, timeout_ms, &reply, &reply_len, nak);
    free(bytes);
    if (rc == SN_OK) {
        *out = sn_envelope_unpack(reply, reply_len, SN_MAX_FRAME_BYTES, NULL);
        assert_non_null(*out);
        assert_int_equal((*out)->body_case, SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT);
    }
    free(reply);
    return rc;
}

/* heal.action events in the journal about @deploy_id with label phase = @phase. */
static int s_actions(s_world_t *w, const char *deploy_id, const char *phase)
{
    size_t count = 0;
    sn_envelope_t **envs = sn_mesh_journal(&w->m, w->redis, &count);
    int n = 0;
    for (size_t i = 0; i < count; i++) {
        sn_envelope_t *env = envs[i];
        if (strcmp(env->type, "heal.action") == 0 &&
            env->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY &&
            strcmp(env->deploy->deploy_id, deploy_id) == 0 &&
            strcmp(sn_envelope_label(env, "phase"), phase) == 0) {
            assert_non_null(sn_envelope_label(env, "action"));
            assert_non_null(sn_envelope_label(env, "target"));
            assert_non_null(sn_envelope_label(env, "reason"));
            n++;
        }
    }
    sn_mesh_envelopes_free(envs, count);
    return n;
}

/* Records of the audit chain (stream <ns>audit) that name @deploy_id. */
static int s_audited(s_world_t *w, const char *deploy_id)
{
    char *key = sn_strdupf("%saudit", w->m.ns);
    const char *argv[] = {"XRANGE", key, "-", "+"};
    redisReply *r = NULL;
    int n = 0;
    if (sn_redis_cmd(w->redis, SN_REDIS_MAIN, 2000, &r, 4, argv, NULL) == SN_OK &&
        r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *fields = r->element[i]->element[1];
            for (size_t f = 0; f < fields->elements; f++)
                if (fields->element[f]->str && strstr(fields->element[f]->str, deploy_id)) {
                    n++;
                    break;
                }
        }
    }
    if (r)
        freeReplyObject(r);
    free(key);
    return n;
}

static char *s_budget(s_world_t *w, const char *deploy_id)
{
    char *key = sn_strdupf("heal:budget:%s", deploy_id);
    char *v = sn_mesh_get(&w->m, key);
    free(key);
    return v;
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_autoheal_rollback_forwarded_to_the_target_host(void **state)
{
    s_world_t *w = *state;
    w->mode = 0;
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    /* "other" is not configured: this process's host. */
    assert_int_equal(s_call(w, "heal.rollback", "rollback", "dep-rb1", "other", 10000, &out, &nak),
                     SN_OK);
    assert_true(out->deploy_result->ok);
    assert_string_equal(out->deploy_result->deploy->deploy_id, "dep-rb1");
    sn_envelope_free(&out);
    assert_int_equal(s_seen(w, "deploy.local.testhost", "dep-rb1", "rollback"), 1);
    /* "web" is configured with host cfghost. */
    assert_int_equal(s_call(w, "heal.rollback", "rollback", "dep-rb2", "web", 10000, &out, &nak),
                     SN_OK);
    assert_true(out->deploy_result->ok);
    sn_envelope_free(&out);
    assert_int_equal(s_seen(w, "deploy.local.cfghost", "dep-rb2", "rollback"), 1);
    assert_int_equal(s_seen(w, "deploy.local.testhost", "dep-rb2", NULL), 0);
    /* Audited: an intent and an outcome each. */
    assert_int_equal(s_actions(w, "dep-rb1", "intent"), 1);
    assert_int_equal(s_actions(w, "dep-rb1", "outcome"), 1);
    assert_true(s_audited(w, "dep-rb1") >= 2); /* intent and outcome in the audit chain */
    assert_int_equal(s_actions(w, "dep-rb2", "intent"), 1);
    /* A deployer failure is passed on, not retried by a rollback. */
    w->mode = 2;
    assert_int_equal(s_call(w, "heal.rollback", "rollback", "dep-rb3", "other", 10000, &out, &nak),
                     SN_OK);
    assert_false(out->deploy_result->ok);
    assert_string_equal(out->deploy_result->reason, "bad artifact");
    sn_envelope_free(&out);
    assert_int_equal(s_seen(w, "deploy.local.testhost", "dep-rb3", NULL), 1);
    w->mode = 0;
}

static void test_autoheal_bad_requests_are_refused(void **state)
{
    s_world_t *w = *state;
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    /* A rollback that is not a rollback. */
    assert_int_equal(s_call(w, "heal.rollback", "stage", "dep-x", "other", 5000, &out, &nak),
                     SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    /* No deploy id, no target, unknown op. */
    assert_int_equal(s_call(w, "heal.rollback", "rollback", "", "other", 5000, &out, &nak),
                     SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    assert_int_equal(s_call(w, "heal.retry", "stage", "dep-x", "", 5000, &out, &nak), SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    assert_int_equal(s_call(w, "heal.retry", "explode", "dep-x", "other", 5000, &out, &nak),
                     SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    /* Not a deploy or build request at all. */
    assert_int_equal(sn_mesh_call_note(&w->m, "heal.retry", "again", 0, 5000, &out, &nak),
                     SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    assert_int_equal(sn_mesh_call_note(&w->m, "heal.rollback", "back", 0, 5000, &out, &nak),
                     SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    assert_int_equal(s_seen(w, "deploy.local.testhost", "dep-x", NULL), 0);
    char *budget = s_budget(w, "dep-x");
    assert_string_equal(budget, "");
    free(budget);
}

static void test_autoheal_retry_succeeds_and_spends_one_unit(void **state)
{
    s_world_t *w = *state;
    w->mode = 0;
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    assert_int_equal(s_call(w, "heal.retry", "stage", "dep-ok", "other", 10000, &out, &nak), SN_OK);
    assert_true(out->deploy_result->ok);
    assert_string_equal(sn_envelope_label(out, "heal_attempts"), "1");
    sn_envelope_free(&out);
    assert_int_equal(s_seen(w, "deploy.local.testhost", "dep-ok", "stage"), 1);
    char *budget = s_budget(w, "dep-ok");
    assert_string_equal(budget, "1");
    free(budget);
    assert_int_equal(s_actions(w, "dep-ok", "intent"), 1);
    assert_int_equal(s_actions(w, "dep-ok", "outcome"), 1);
}

static void test_autoheal_retry_budget_enforced_across_restart(void **state)
{
    s_world_t *w = *state;
    w->mode = 1; /* every try fails transiently */
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    int64_t t0 = sn_mono_ms();
    assert_int_equal(s_call(w, "heal.retry", "promote", "dep-b", "other", 20000, &out, &nak),
                     SN_OK);
    int64_t took = sn_mono_ms() - t0;
    /* Three attempts with backoff between them, then the budget ends it. */
    assert_false(out->deploy_result->ok);
    assert_true(out->deploy_result->is_transient);
    assert_string_equal(sn_envelope_label(out, "heal_attempts"), "3");
    sn_envelope_free(&out);
    assert_int_equal(s_seen(w, "deploy.local.testhost", "dep-b", "promote"), 3);
    assert_true(took >= 200 + 400 + 800 - 100); /* jittered over the upper half */
    char *budget = s_budget(w, "dep-b");
    assert_string_equal(budget, "3");
    free(budget);
    assert_int_equal(s_actions(w, "dep-b", "intent"), 3);
    assert_int_equal(s_actions(w, "dep-b", "outcome"), 3);

    /* Asked again: refused at once, nothing forwarded. */
    assert_int_equal(s_call(w, "heal.retry", "promote", "dep-b", "other", 20000, &out, &nak),
                     SN_OK);
    assert_false(out->deploy_result->ok);
    assert_false(out->deploy_result->is_transient);
    assert_non_null(strstr(out->deploy_result->reason, "retry budget exhausted"));
    sn_envelope_free(&out);
    assert_int_equal(s_seen(w, "deploy.local.testhost", "dep-b", NULL), 3);

    /* autoheal restarts (SIGTERM, exit 0): the budget is in Redis and still spent. */
    sn_mesh_agent_t *a = &w->m.agents[w->autoheal];
    int st = sn_test_stop(a->pid, SIGTERM, 5000);
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    a->pid = 0;
    w->autoheal = s_start_autoheal(w, "heal2");
    assert_true(sn_mesh_wait_service(&w->m, "heal.retry", 1, 15000));
    w->mode = 0; /* even a deployer that would now succeed is not asked */
    assert_int_equal(s_call(w, "heal.retry", "promote", "dep-b", "other", 20000, &out, &nak),
                     SN_OK);
    assert_false(out->deploy_result->ok);
    assert_non_null(strstr(out->deploy_result->reason, "retry budget exhausted"));
    assert_non_null(strstr(out->deploy_result->reason, "deploy dep-b used 3 of 3"));
    sn_envelope_free(&out);
    assert_int_equal(s_seen(w, "deploy.local.testhost", "dep-b", NULL), 3);
    /* Another deploy still has its own budget. */
    assert_int_equal(s_call(w, "heal.retry", "promote", "dep-c", "other", 20000, &out, &nak),
                     SN_OK);
    assert_true(out->deploy_result->ok);
    sn_envelope_free(&out);
    assert_true(sn_mesh_wait_log(&w->m, "heal2", "retry refused retry budget exhausted", 1000));
}

static void test_autoheal_per_target_budget(void **state)
{
    s_world_t *w = *state;
    /* Ten units per target per hour across deploys: fill target "busy" directly. */
    char *args = sn_strdupf("SET '%sheal:budget:target:busy' 10 PX 60000", w->m.ns);
    char *o = sn_test_redis_cli(&w->m.redis, args);
    free(o);
    free(args);
    w->mode = 0;
    sn_envelope_t *out = NULL;
    sn_nak_reason_t nak;
    assert_int_equal(s_call(w, "heal.retry", "stage", "dep-t", "busy", 10000, &out, &nak), SN_OK);
    assert_false(out->deploy_result->ok);
    assert_non_null(strstr(out->deploy_result->reason, "retry budget exhausted: target busy"));
    sn_envelope_free(&out);
    assert_int_equal(s_seen(w, "deploy.local.testhost", "dep-t", NULL), 0);
    /* Nothing of the deploy's own budget was spent by the refusal. */
    char *budget = s_budget(w, "dep-t");
    assert_string_equal(budget, "");
    free(budget);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_autoheal_rollback_forwarded_to_the_target_host),
        cmocka_unit_test(test_autoheal_bad_requests_are_refused),
        cmocka_unit_test(test_autoheal_retry_succeeds_and_spends_one_unit),
        cmocka_unit_test(test_autoheal_retry_budget_enforced_across_restart),
        cmocka_unit_test(test_autoheal_per_target_budget),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
