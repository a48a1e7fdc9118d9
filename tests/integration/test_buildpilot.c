/* buildpilot through the real mesh: redis-server, the broker and sentinel-agent
 * buildpilot processes, with FAKE workers in this process (one sn_worker thread serving
 * gate.check, build.local, deploy.local.testhost, verify.check and heal.rollback) that
 * claim ledger jobs like real workers, record every request, and answer as each test
 * scripts them. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <zmq.h>

#include <czmq.h>

#include "sn_mesh.h"

#include "sentinel/sn_ledger.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"
#include "sentinel/sn_worker.h"

#include "buildpilot_fsm.h" /* BP_RUN_RETRY_BUDGET */

#define T_MAX_RECORDS 512
#define T_MAX_HELD 16

static const char *const s_services[] = {"gate.check",   "build.local",   "deploy.local.testhost",
                                         "verify.check", "heal.rollback", NULL};

/* What the fakes do; set by the test (under mu). */
typedef struct {
    int reject_gate;          /* 1 or 2: that gate says no */
    const char *fail_verify;  /* verify fails when the url contains this */
    const char *fail_promote; /* promote fails for this target */
    bool hold_gate1;          /* keep gate-1 requests until released */
    bool hold_stage;          /* keep stage requests until released */
    bool hold_build;
    int transient_stage; /* stage answers "transient" this many times per deploy; -1: always */
    bool nak_stage;      /* stage requests are NAKed without claiming their job */
} t_script_t;

typedef struct {
    sn_worker_ticket_t ticket;
    sn_envelope_t *req;
    char service[64];
    char job_id[SN_LEDGER_ID_MAX + 1];
    uint64_t epoch;
    int64_t renewed_ms;
} t_held_t;

typedef struct {
    sn_mesh_t mesh;
    sn_redis_t *redis;
    sn_ledger_t *ledger;
    sn_source_t source;
    pthread_t thread;
    pthread_mutex_t mu;
    volatile int stop;
    t_script_t script;
    char *records[T_MAX_RECORDS]; /* "service op id" per request */
    size_t record_count;
    t_held_t held[T_MAX_HELD];
    size_t held_count;
} t_fix_t;

/* ---- fake workers ------------------------------------------------------------------------ */

static void s_record(t_fix_t *t, const char *fmt_service, const char *op, const char *id)
{
    pthread_mutex_lock(&t->mu);
    if (t->record_count < T_MAX_RECORDS)
        t->records[t->record_count++] = sn_strdupf("%s %s %s", fmt_service, op, id);
    pthread_mutex_unlock(&t->mu);
}

static int s_count(t_fix_t *t, const char *service, const char *op, const char *id)
{
    char *want = sn_strdupf("%s %s %s", service, op, id);
    int n = 0;
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->record_count; i++)
        if (strcmp(t->records[i], want) == 0)
            n++;
    pthread_mutex_unlock(&t->mu);
    free(want);
    return n;
}

/* Counts requests to @service whose record starts with "@service @op". */
static int s_count_op(t_fix_t *t, const char *service, const char *op)
{
    char *want = sn_strdupf("%s %s ", service, op);
    int n = 0;
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->record_count; i++)
        if (strncmp(t->records[i], want, strlen(want)) == 0)
            n++;
    pthread_mutex_unlock(&t->mu);
    free(want);
    return n;
}

/* Builds the scripted answer to @req; *result gets the packed result message for the
 * ledger (caller frees). Returns the packed reply envelope (caller frees). */
static uint8_t *s_answer(t_fix_t *t, const char *service, const sn_envelope_t *req, size_t *len,
                         uint8_t **result, size_t *result_len)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &t->source, "fake.reply", id);
    Sentinel__V1__GateResult g = SENTINEL__V1__GATE_RESULT__INIT;
    Sentinel__V1__BuildResult b = SENTINEL__V1__BUILD_RESULT__INIT;
    Sentinel__V1__DeployResult d = SENTINEL__V1__DEPLOY_RESULT__INIT;
    Sentinel__V1__VerifyResult v = SENTINEL__V1__VERIFY_RESULT__INIT;
    Sentinel__V1__Deploy dep = SENTINEL__V1__DEPLOY__INIT;
    char *reasons[] = {"fake policy refuses"};
    char artifact[80], prev[80];
    pthread_mutex_lock(&t->mu);
    t_script_t sc = t->script;
    pthread_mutex_unlock(&t->mu);
    *result = NULL;
    *result_len = 0;
    if (strcmp(service, "gate.check") == 0) {
        g.ok = (int)req->gate_request->gate != sc.reject_gate;
        if (!g.ok) {
            g.reasons = reasons;
            g.n_reasons = 1;
        }
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_GATE_RESULT;
        env.gate_result = &g;
    } else if (strcmp(service, "build.local") == 0) {
        snprintf(artifact, sizeof artifact, "art-%s", req->build_request->sha);
        b.ok = true;
        b.artifact_sha256 = artifact;
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_BUILD_RESULT;
        env.build_result = &b;
        *result_len = sentinel__v1__build_result__get_packed_size(&b);
        *result = sn_malloc(*result_len + 1);
        sentinel__v1__build_result__pack(&b, *result);
    } else if (strcmp(service, "verify.check") == 0) {
        v.ok = !(sc.fail_verify && strstr(req->verify_request->url, sc.fail_verify));
        v.reason = v.ok ? "" : "fake check failed";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_VERIFY_RESULT;
        env.verify_result = &v;
        *result_len = sentinel__v1__verify_result__get_packed_size(&v);
        *result = sn_malloc(*result_len + 1);
        sentinel__v1__verify_result__pack(&v, *result);
    } else {
        const Sentinel__V1__DeployRequest *dr = req->deploy_request;
        dep = *dr->deploy;
        snprintf(prev, sizeof prev, "prev-%s", dr->deploy->target);
        dep.release_id = dr->deploy->deploy_id;
        dep.previous_release_id = prev;
        d.ok = !(strcmp(dr->op, "promote") == 0 && sc.fail_promote &&
                 strcmp(sc.fail_promote, dr->deploy->target) == 0);
        d.reason = d.ok ? "" : "fake promote failed";
        if (strcmp(dr->op, "stage") == 0 && sc.transient_stage != 0 &&
            (sc.transient_stage < 0 ||
             s_count(t, service, "stage", dr->deploy->deploy_id) <= sc.transient_stage)) {
            d.ok = false;
            d.is_transient = true;
            d.reason = "fake transient failure";
        }
        d.deploy = &dep;
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT;
        env.deploy_result = &d;
        *result_len = sentinel__v1__deploy_result__get_packed_size(&d);
        *result = sn_malloc(*result_len + 1);
        sentinel__v1__deploy_result__pack(&d, *result);
    }
    return sn_envelope_pack(&env, len);
}

static void s_finish_request(t_fix_t *t, sn_worker_t *w, const sn_worker_ticket_t *ticket,
                             const char *service, const sn_envelope_t *req, const char *job_id,
                             uint64_t epoch)
{
    size_t len = 0, rlen = 0;
    uint8_t *result = NULL;
    uint8_t *bytes = s_answer(t, service, req, &len, &result, &rlen);
    bool ok = true;
    if (job_id) {
        /* The verdict of the step is in the result; the job itself ran fine. */
        sn_rc_t rc = sn_ledger_complete(t->ledger, job_id, epoch, ok, result, rlen);
        if (rc != SN_OK)
            sn_warn("fake", "complete refused job=%s rc=%s", job_id, sn_rc_str(rc));
    }
    if (sn_worker_reply(w, ticket, bytes, len) != SN_OK)
        sn_info("fake", "reply dropped (requester gone) service=%s", service);
    free(bytes);
    free(result);
}

static void s_nak(sn_worker_t *w, const sn_worker_ticket_t *ticket, sn_nak_reason_t reason)
{
    if (sn_worker_nak(w, ticket, reason) != SN_OK)
        sn_info("fake", "nak dropped");
}

static void s_handle(t_fix_t *t, sn_worker_t *w, sn_worker_event_t *ev)
{
    sn_envelope_t *req = sn_envelope_unpack(ev->body, ev->body_len, SN_MAX_FRAME_BYTES, NULL);
    if (!req) {
        s_nak(w, &ev->ticket, SN_NAK_INVALID);
        return;
    }
    const char *op = "-", *id = req->correlation_id ? req->correlation_id : "-";
    bool hold = false;
    pthread_mutex_lock(&t->mu);
    t_script_t sc = t->script;
    pthread_mutex_unlock(&t->mu);
    if (req->body_case == SENTINEL__V1__ENVELOPE__BODY_GATE_REQUEST) {
        op = req->gate_request->gate == 1 ? "gate1" : "gate2";
        hold = sc.hold_gate1 && req->gate_request->gate == 1;
    } else if (req->body_case == SENTINEL__V1__ENVELOPE__BODY_BUILD_REQUEST) {
        op = "build";
        hold = sc.hold_build;
    } else if (req->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST) {
        op = req->deploy_request->op;
        id = req->deploy_request->deploy->deploy_id;
        hold = sc.hold_stage && strcmp(op, "stage") == 0;
        if (strcmp(op, "rollback") == 0)
            s_record(t, ev->service, "to",
                     *req->deploy_request->to_release_id ? req->deploy_request->to_release_id
                                                         : "-");
        if (sc.nak_stage && strcmp(op, "stage") == 0) {
            s_record(t, ev->service, "stage-nak", id);
            s_nak(w, &ev->ticket, SN_NAK_OVERLOADED);
            sn_envelope_free(&req);
            return;
        }
    } else if (req->body_case == SENTINEL__V1__ENVELOPE__BODY_VERIFY_REQUEST) {
        op = strstr(req->verify_request->url, ":91") ? "preview" : "live";
        id = req->verify_request->deploy_id;
    } else {
        s_nak(w, &ev->ticket, SN_NAK_INVALID);
        sn_envelope_free(&req);
        return;
    }
    s_record(t, ev->service, op, id);
    const char *job_id = sn_envelope_label(req, "job_id");
    uint64_t epoch = 0;
    if (job_id) {
        sn_rc_t rc = sn_ledger_claim(t->ledger, job_id, "fake", 0, &epoch, NULL);
        if (rc != SN_OK) {
            s_record(t, ev->service, "claim-refused", id);
            s_nak(w, &ev->ticket, SN_NAK_OVERLOADED);
            sn_envelope_free(&req);
            return;
        }
    }
    if (hold && t->held_count < T_MAX_HELD) {
        t_held_t *h = &t->held[t->held_count++];
        h->ticket = ev->ticket;
        h->req = req;
        sn_strlcpy(h->service, ev->service, sizeof h->service);
        sn_strlcpy(h->job_id, job_id ? job_id : "", sizeof h->job_id);
        h->epoch = epoch;
        h->renewed_ms = sn_mono_ms();
        return;
    }
    s_finish_request(t, w, &ev->ticket, ev->service, req, job_id, epoch);
    sn_envelope_free(&req);
}

/* Renews the leases of held jobs; answers them once their hold is lifted. */
static void s_held(t_fix_t *t, sn_worker_t *w)
{
    pthread_mutex_lock(&t->mu);
    t_script_t sc = t->script;
    pthread_mutex_unlock(&t->mu);
    for (size_t i = 0; i < t->held_count;) {
        t_held_t *h = &t->held[i];
        bool still =
            (h->req->body_case == SENTINEL__V1__ENVELOPE__BODY_GATE_REQUEST && sc.hold_gate1) ||
            (h->req->body_case == SENTINEL__V1__ENVELOPE__BODY_BUILD_REQUEST && sc.hold_build) ||
            (h->req->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST && sc.hold_stage);
        if (still) {
            if (h->job_id[0] && sn_mono_ms() - h->renewed_ms > 300) {
                if (sn_ledger_renew(t->ledger, h->job_id, h->epoch, 0, NULL) != SN_OK)
                    sn_warn("fake", "renew refused job=%s", h->job_id);
                h->renewed_ms = sn_mono_ms();
            }
            i++;
            continue;
        }
        s_finish_request(t, w, &h->ticket, h->service, h->req, h->job_id[0] ? h->job_id : NULL,
                         h->epoch);
        sn_envelope_free(&h->req);
        t->held[i] = t->held[--t->held_count];
    }
}

static void *s_fake_thread(void *arg)
{
    t_fix_t *t = arg;
    sn_worker_t *w = sn_worker_new(t->mesh.rpc, NULL);
    SN_ASSERT(w);
    sn_worker_set_heartbeat(w, 200, 3);
    for (size_t i = 0; s_services[i]; i++)
        SN_ASSERT(sn_worker_serve(w, s_services[i], 20) == SN_OK);
    while (!t->stop) {
        zmq_pollitem_t item = {.socket = sn_worker_socket(w), .events = ZMQ_POLLIN};
        (void)zmq_poll(&item, 1, 20);
        sn_worker_event_t ev;
        while (sn_worker_recv(w, &ev) == SN_OK) {
            if (ev.type == SN_WORKER_REQUEST)
                s_handle(t, w, &ev);
            sn_worker_event_fini(&ev);
        }
        s_held(t, w);
        sn_worker_tick(w);
    }
    for (size_t i = 0; i < t->held_count; i++)
        sn_envelope_free(&t->held[i].req);
    sn_worker_destroy(&w);
    return NULL;
}

/* ---- fixture -------------------------------------------------------------------------------- */

static const char *s_yaml = "  job_lease_ms: 1500\n"
                            "  job_max_attempts: 4\n"
                            "projects:\n"
                            "  - name: app\n"
                            "    repo: /nonexistent/app\n"
                            "    environments:\n"
                            "      - name: staging\n"
                            "        branch: staging\n"
                            "        step_timeout_s: 15\n"
                            "        targets:\n"
                            "          - t1\n"
                            "          - t2\n"
                            "      - name: production\n"
                            "        branch: main\n"
                            "        promote_from: staging\n"
                            "        step_timeout_s: 15\n"
                            "        approval:\n"
                            "          required: true\n"
                            "        targets:\n"
                            "          - t1\n"
                            "      - name: gated\n"
                            "        branch: gated\n"
                            "        step_timeout_s: 15\n"
                            "        approval:\n"
                            "          required: true\n"
                            "          expiry_s: 2\n"
                            "        targets:\n"
                            "          - t1\n"
                            "      - name: quick\n"
                            "        branch: quick\n"
                            "        step_timeout_s: 2\n"
                            "        targets:\n"
                            "          - t1\n"
                            "targets:\n"
                            "  - name: t1\n"
                            "    type: local_static\n"
                            "    host: testhost\n"
                            "    listen: 127.0.0.1:9201\n"
                            "    preview_listen: 127.0.0.1:9101\n"
                            "  - name: t2\n"
                            "    type: local_static\n"
                            "    host: testhost\n"
                            "    listen: 127.0.0.1:9202\n"
                            "    preview_listen: 127.0.0.1:9102\n";

static t_fix_t *s_start(const char *tag, int pilots)
{
    t_fix_t *t = sn_calloc(1, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    SN_ASSERT(sn_mesh_start(&t->mesh, tag, s_yaml));
    sn_redis_opts_t ro = {
        .unix_path = t->mesh.redis.unix_path, .namespace_ = t->mesh.ns, .timeout_ms = 1000};
    t->redis = sn_redis_new(&ro);
    sn_source_init(&t->source, "fake", "workers");
    t->ledger = sn_ledger_new(t->redis, &t->source);
    SN_ASSERT(pthread_create(&t->thread, NULL, s_fake_thread, t) == 0);
    for (int i = 0; i < pilots; i++) {
        char name[16];
        snprintf(name, sizeof name, "bp%d", i + 1);
        sn_mesh_agent_bin(&t->mesh, "sentinel-agent", "buildpilot", name);
        if (i == 0) /* bp1 leads: started first and elected before the others exist */
            assert_true(sn_mesh_wait_service(&t->mesh, "run.trigger", 1, 10000));
    }
    assert_true(sn_mesh_wait_service(&t->mesh, "verify.check", 1, 10000));
    return t;
}

static void s_stop(t_fix_t **tp)
{
    t_fix_t *t = *tp;
    t->stop = 1;
    pthread_join(t->thread, NULL);
    int bad = sn_mesh_stop(&t->mesh);
    sn_ledger_destroy(&t->ledger);
    sn_redis_destroy(&t->redis);
    for (size_t i = 0; i < t->record_count; i++)
        free(t->records[i]);
    pthread_mutex_destroy(&t->mu);
    free(t);
    *tp = NULL;
    assert_int_equal(bad, 0);
}

static void s_script(t_fix_t *t, const t_script_t *sc)
{
    pthread_mutex_lock(&t->mu);
    t->script = *sc;
    pthread_mutex_unlock(&t->mu);
}

/* ---- calls and reads --------------------------------------------------------------------- */

/* Calls @service; returns the RunRef reply (caller frees the envelope) or NULL with *nak. */
static sn_envelope_t *s_call(t_fix_t *t, const char *service, sn_envelope_t *env,
                             sn_nak_reason_t *nak)
{
    sn_envelope_t *reply = NULL;
    sn_nak_reason_t reason = SN_NAK_NONE;
    sn_rc_t rc = sn_mesh_call(&t->mesh, service, env, 5000, &reply, &reason);
    if (nak)
        *nak = reason;
    if (rc != SN_OK)
        return NULL;
    assert_non_null(reply);
    assert_int_equal(reply->body_case, SENTINEL__V1__ENVELOPE__BODY_RUN_REF);
    return reply;
}

/* run.trigger (a dry run when @dry); returns the run id (heap) or NULL; *msg (may be NULL)
 * gets the message. */
static char *s_trigger_ex(t_fix_t *t, const char *env_name, const char *ref, const char *sha,
                          const char *obo, bool dry, char **msg)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &t->mesh.source, "run.trigger", id);
    Sentinel__V1__TriggerRequest tr = SENTINEL__V1__TRIGGER_REQUEST__INIT;
    tr.project = "app";
    tr.environment = (char *)(env_name ? env_name : "");
    tr.ref = (char *)ref;
    tr.sha = (char *)sha;
    tr.trigger = "push";
    tr.dry_run = dry;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_TRIGGER;
    env.trigger = &tr;
    if (obo)
        sn_envelope_add_label(&env, "on_behalf_of", obo);
    sn_envelope_t *reply = s_call(t, "run.trigger", &env, NULL);
    sn_envelope_fini_labels(&env);
    assert_non_null(reply);
    char *run_id = reply->run_ref->run_id && *reply->run_ref->run_id
                       ? sn_strdup(reply->run_ref->run_id)
                       : NULL;
    if (msg)
        *msg = sn_strdup(reply->run_ref->message ? reply->run_ref->message : "");
    sn_envelope_free(&reply);
    return run_id;
}

static char *s_trigger(t_fix_t *t, const char *env_name, const char *ref, const char *sha,
                       const char *obo, char **msg)
{
    return s_trigger_ex(t, env_name, ref, sha, obo, false, msg);
}

/* A RunControl call; returns the reply (caller frees) or NULL with *nak. */
static sn_envelope_t *s_control(t_fix_t *t, const char *service, const char *run_id,
                                const char *env_name, const char *obo, sn_nak_reason_t *nak)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &t->mesh.source, service, id);
    Sentinel__V1__RunControl c = SENTINEL__V1__RUN_CONTROL__INIT;
    c.run_id = (char *)(run_id ? run_id : "");
    c.project = "app";
    c.environment = (char *)(env_name ? env_name : "");
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_CONTROL;
    env.control = &c;
    if (obo)
        sn_envelope_add_label(&env, "on_behalf_of", obo);
    sn_envelope_t *reply = s_call(t, service, &env, nak);
    sn_envelope_fini_labels(&env);
    return reply;
}

static char *s_hget(t_fix_t *t, const char *key, const char *field)
{
    char *k = sn_strdupf("%s%s", t->mesh.ns, key);
    const char *argv[] = {"HGET", k, field};
    redisReply *r = NULL;
    char *out = NULL;
    if (sn_redis_cmd(t->redis, SN_REDIS_MAIN, 0, &r, 3, argv, NULL) == SN_OK) {
        if (r->type == REDIS_REPLY_STRING)
            out = sn_strndup(r->str, r->len);
        freeReplyObject(r);
    }
    free(k);
    return out;
}

static Sentinel__V1__Run *s_run(t_fix_t *t, const char *run_id)
{
    char *k = sn_strdupf("%srun:%s", t->mesh.ns, run_id);
    const char *argv[] = {"HGET", k, "pb"};
    redisReply *r = NULL;
    Sentinel__V1__Run *run = NULL;
    if (sn_redis_cmd(t->redis, SN_REDIS_MAIN, 0, &r, 3, argv, NULL) == SN_OK) {
        if (r->type == REDIS_REPLY_STRING)
            run = sentinel__v1__run__unpack(NULL, r->len, (const uint8_t *)r->str);
        freeReplyObject(r);
    }
    free(k);
    return run;
}

typedef struct {
    t_fix_t *t;
    const char *run_id;
    const char *state;
} t_state_wait_t;

static bool s_state_is(void *arg)
{
    t_state_wait_t *w = arg;
    char *k = sn_strdupf("run:%s", w->run_id);
    char *state = s_hget(w->t, k, "state");
    free(k);
    bool ok = state && strcmp(state, w->state) == 0;
    free(state);
    return ok;
}

static bool s_wait_state(t_fix_t *t, const char *run_id, const char *state, int timeout_ms)
{
    t_state_wait_t w = {t, run_id, state};
    bool ok = sn_test_wait_for(s_state_is, &w, timeout_ms);
    if (!ok) {
        char *k = sn_strdupf("run:%s", run_id);
        char *now = s_hget(t, k, "state");
        fprintf(stderr, "run %s: want state %s, have %s\n", run_id, state, now ? now : "(none)");
        free(now);
        free(k);
    }
    return ok;
}

typedef struct {
    t_fix_t *t;
    const char *service, *op;
    int n;
} t_count_wait_t;

static bool s_count_reached(void *arg)
{
    t_count_wait_t *w = arg;
    return s_count_op(w->t, w->service, w->op) >= w->n;
}

static bool s_wait_count(t_fix_t *t, const char *service, const char *op, int n)
{
    t_count_wait_t w = {t, service, op, n};
    return sn_test_wait_for(s_count_reached, &w, 10000);
}

/* The event types of @run_id in journal order, comma-separated (caller frees). */
static char *s_events(t_fix_t *t, const char *run_id)
{
    size_t count = 0;
    sn_envelope_t **envs = sn_mesh_journal(&t->mesh, t->redis, &count);
    size_t cap = 4096, len = 0;
    char *out = sn_calloc(1, cap);
    for (size_t i = 0; i < count; i++) {
        const sn_envelope_t *env = envs[i];
        if (env->correlation_id && strcmp(env->correlation_id, run_id) == 0 &&
            strncmp(env->type, "job.", 4) != 0) {
            size_t need = strlen(env->type) + 2;
            if (len + need >= cap) {
                cap *= 2;
                out = sn_realloc(out, cap);
            }
            len += (size_t)snprintf(out + len, cap - len, "%s%s", len ? "," : "", env->type);
        }
    }
    sn_mesh_envelopes_free(envs, count);
    return out;
}

static const char *s_step_state(const Sentinel__V1__Run *r, const char *name)
{
    for (size_t i = 0; i < r->n_steps; i++)
        if (strcmp(r->steps[i]->name, name) == 0) {
            const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
                &sentinel__v1__step_state__descriptor, (int)r->steps[i]->state);
            return v ? v->name : "?";
        }
    return "missing";
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_buildpilot_good_run(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-good", 1);
    char *run_id = s_trigger(t, NULL, "refs/heads/staging", "sha1", NULL, NULL);
    assert_non_null(run_id);
    assert_true(s_wait_state(t, run_id, "succeeded", 20000));
    Sentinel__V1__Run *r = s_run(t, run_id);
    assert_non_null(r);
    assert_string_equal(r->environment, "staging");
    assert_string_equal(r->artifact_sha256, "art-sha1");
    const char *ok_steps[] = {"commit", "trigger",        "gate1",   "build",       "gate2", "plan",
                              "stage",  "verify_preview", "promote", "verify_live", "notify"};
    for (size_t i = 0; i < SN_ARRAY_LEN(ok_steps); i++)
        assert_string_equal(s_step_state(r, ok_steps[i]), "STEP_SUCCEEDED");
    assert_string_equal(s_step_state(r, "approval"), "STEP_SKIPPED");
    assert_string_equal(s_step_state(r, "rollback"), "STEP_SKIPPED");
    assert_int_equal(r->n_deploys, 2);
    for (size_t i = 0; i < r->n_deploys; i++) {
        assert_int_equal(r->deploys[i]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE_VERIFIED);
        assert_int_equal(s_count(t, "deploy.local.testhost", "stage", r->deploys[i]->deploy_id), 1);
        assert_int_equal(s_count(t, "deploy.local.testhost", "promote", r->deploys[i]->deploy_id),
                         1);
    }
    char *events = s_events(t, run_id);
    assert_string_equal(events,
                        "run.queued,run.started,run.step,build.succeeded,run.step,"
                        "deploy.staged,deploy.staged,run.step,deploy.verified,deploy.verified,"
                        "run.step,deploy.promoted,deploy.promoted,run.step,deploy.verified,"
                        "deploy.verified,run.succeeded");
    free(events);
    char *artifact = s_hget(t, "env:app:staging", "last_verified_artifact");
    assert_non_null(artifact);
    assert_string_equal(artifact, "art-sha1");
    free(artifact);
    char *lock = sn_mesh_get(&t->mesh, "envlock:app:staging");
    assert_string_equal(lock, "");
    free(lock);
    char *dk = sn_strdupf("deploy:%s", r->deploys[0]->deploy_id);
    char *phase = s_hget(t, dk, "phase");
    assert_string_equal(phase, "live_verified");
    free(phase);
    free(dk);
    sentinel__v1__run__free_unpacked(r, NULL);

    /* The same commit again once the run ended: a new run (dedupe is for runs in flight). */
    char *again = s_trigger(t, "staging", "refs/heads/staging", "sha1", NULL, NULL);
    assert_non_null(again);
    assert_string_not_equal(again, run_id);
    assert_true(s_wait_state(t, again, "succeeded", 20000));
    free(again);

    /* Bad input: unknown project, no environment for the ref, wrong body. */
    char *msg = NULL;
    char *none = s_trigger(t, NULL, "refs/heads/nowhere", "sha2", NULL, &msg);
    assert_null(none);
    assert_string_equal(msg, "no environment for this ref");
    free(msg);
    sn_nak_reason_t nak = SN_NAK_NONE;
    sn_envelope_t *reply = s_control(t, "run.trigger", "x", "staging", NULL, &nak);
    assert_null(reply);
    assert_int_equal(nak, SN_NAK_INVALID);
    reply = s_control(t, "run.cancel", "01NOSUCHRUN", NULL, NULL, &nak);
    assert_non_null(reply);
    assert_string_equal(reply->run_ref->message, "unknown run");
    sn_envelope_free(&reply);
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &t->mesh.source, "run.trigger", id);
    Sentinel__V1__TriggerRequest tr = SENTINEL__V1__TRIGGER_REQUEST__INIT;
    tr.project = "nope";
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_TRIGGER;
    env.trigger = &tr;
    reply = s_call(t, "run.trigger", &env, NULL);
    assert_non_null(reply);
    assert_string_equal(reply->run_ref->message, "unknown project");
    sn_envelope_free(&reply);
    free(run_id);
    s_stop(&t);
}

static void test_buildpilot_gate_rejects(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-gate", 1);
    s_script(t, &(t_script_t){.reject_gate = 1});
    char *run_id = s_trigger(t, "staging", "refs/heads/staging", "bad1", NULL, NULL);
    assert_non_null(run_id);
    assert_true(s_wait_state(t, run_id, "rejected", 15000));
    assert_int_equal(s_count_op(t, "build.local", "build"), 0);
    assert_int_equal(s_count_op(t, "deploy.local.testhost", "stage"), 0);
    Sentinel__V1__Run *r = s_run(t, run_id);
    assert_non_null(strstr(r->reason, "fake policy refuses"));
    assert_string_equal(s_step_state(r, "gate1"), "STEP_FAILED");
    sentinel__v1__run__free_unpacked(r, NULL);
    char *events = s_events(t, run_id);
    assert_string_equal(events, "run.queued,run.started,gate.rejected,run.rejected");
    free(events);
    free(run_id);
    s_stop(&t);
}

static void test_buildpilot_preview_fails(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-preview", 1);
    s_script(t, &(t_script_t){.fail_verify = ":9102"});
    char *run_id = s_trigger(t, "staging", "refs/heads/staging", "pv1", NULL, NULL);
    assert_true(s_wait_state(t, run_id, "failed", 15000));
    assert_int_equal(s_count_op(t, "deploy.local.testhost", "promote"), 0);
    assert_int_equal(s_count_op(t, "heal.rollback", "rollback"), 0);
    Sentinel__V1__Run *r = s_run(t, run_id);
    assert_non_null(strstr(r->reason, "preview verification failed on t2"));
    assert_string_equal(s_step_state(r, "promote"), "STEP_SKIPPED");
    sentinel__v1__run__free_unpacked(r, NULL);
    free(run_id);
    s_stop(&t);
}

static void test_buildpilot_live_fails_rolls_back(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-live", 1);
    s_script(t, &(t_script_t){.fail_verify = ":9201"});
    char *run_id = s_trigger(t, "staging", "refs/heads/staging", "lv1", NULL, NULL);
    assert_true(s_wait_state(t, run_id, "rolled_back", 15000));
    Sentinel__V1__Run *r = s_run(t, run_id);
    assert_non_null(strstr(r->reason, "live verification failed on t1"));
    assert_string_equal(s_step_state(r, "rollback"), "STEP_SUCCEEDED");
    for (size_t i = 0; i < r->n_deploys; i++) {
        assert_int_equal(s_count(t, "heal.rollback", "rollback", r->deploys[i]->deploy_id), 1);
        assert_int_equal(r->deploys[i]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK);
    }
    sentinel__v1__run__free_unpacked(r, NULL);
    char *artifact = s_hget(t, "env:app:staging", "last_verified_artifact");
    assert_null(artifact);
    free(run_id);
    s_stop(&t);
}

static void test_buildpilot_one_target_fails_promote(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-promote", 1);
    s_script(t, &(t_script_t){.fail_promote = "t2"});
    char *run_id = s_trigger(t, "staging", "refs/heads/staging", "pf1", NULL, NULL);
    assert_true(s_wait_state(t, run_id, "rolled_back", 15000));
    Sentinel__V1__Run *r = s_run(t, run_id);
    assert_non_null(strstr(r->reason, "promote failed on t2"));
    assert_int_equal(s_count(t, "heal.rollback", "rollback", r->deploys[0]->deploy_id), 1);
    assert_int_equal(s_count(t, "heal.rollback", "rollback", r->deploys[1]->deploy_id), 0);
    assert_int_equal(r->deploys[0]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK);
    assert_int_equal(r->deploys[1]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED);
    assert_int_equal(s_count_op(t, "verify.check", "live"), 0);
    sentinel__v1__run__free_unpacked(r, NULL);
    free(run_id);
    s_stop(&t);
}

static void test_buildpilot_approval_survives_restart(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-approval", 2);
    /* Nothing verified on staging yet: production refuses to promote. */
    char *msg = NULL;
    char *none = s_trigger(t, "production", "refs/heads/main", "", "alice", &msg);
    assert_null(none);
    assert_non_null(strstr(msg, "no verified artifact"));
    free(msg);
    char *staging = s_trigger(t, "staging", "refs/heads/staging", "st1", NULL, NULL);
    assert_true(s_wait_state(t, staging, "succeeded", 20000));
    int builds = s_count_op(t, "build.local", "build");
    char *run_id = s_trigger(t, "production", "refs/heads/main", "", "alice", NULL);
    assert_non_null(run_id);
    assert_true(s_wait_state(t, run_id, "awaiting_approval", 15000));
    char *ak = sn_strdupf("approval:%s", run_id);
    char *requested_by = s_hget(t, ak, "requested_by");
    assert_string_equal(requested_by, "alice");
    free(requested_by);
    /* Self-approval: refused, nothing changes. */
    sn_nak_reason_t nak = SN_NAK_NONE;
    sn_envelope_t *reply = s_control(t, "run.approve", run_id, NULL, "alice", &nak);
    assert_null(reply);
    assert_int_equal(nak, SN_NAK_FORBIDDEN);
    /* The leader dies; the standby takes over with the run still waiting. */
    sn_mesh_agent_t *bp1 = sn_mesh_find(&t->mesh, "bp1");
    kill(bp1->pid, SIGKILL);
    (void)sn_test_stop(bp1->pid, SIGKILL, 5000);
    bp1->pid = -1;
    assert_true(sn_mesh_wait_log(&t->mesh, "bp2", "elected leader", 10000));
    assert_true(sn_mesh_wait_service(&t->mesh, "run.approve", 1, 10000));
    assert_true(s_wait_state(t, run_id, "awaiting_approval", 1000));
    reply = s_control(t, "run.approve", run_id, NULL, "bob", &nak);
    assert_non_null(reply);
    assert_string_equal(reply->run_ref->message, "approved");
    sn_envelope_free(&reply);
    assert_true(s_wait_state(t, run_id, "succeeded", 20000));
    char *approved_by = s_hget(t, ak, "approved_by");
    assert_string_equal(approved_by, "bob");
    free(approved_by);
    Sentinel__V1__Run *r = s_run(t, run_id);
    assert_string_equal(r->artifact_sha256, "art-st1");
    assert_string_equal(r->sha, "st1");
    assert_string_equal(r->promoted_from_run, staging);
    assert_string_equal(s_step_state(r, "build"), "STEP_SKIPPED");
    assert_string_equal(s_step_state(r, "approval"), "STEP_SUCCEEDED");
    assert_string_equal(r->approval->approved_by, "bob");
    sentinel__v1__run__free_unpacked(r, NULL);
    assert_int_equal(s_count_op(t, "build.local", "build"), builds); /* nothing rebuilt */
    char *events = s_events(t, run_id);
    assert_non_null(strstr(events, "run.awaiting_approval,run.approved,run.step"));
    free(events);
    free(ak);
    free(staging);
    free(run_id);
    s_stop(&t);
}

static void test_buildpilot_supersede_and_cancel(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-queue", 1);
    s_script(t, &(t_script_t){.hold_gate1 = true});
    char *r1 = s_trigger(t, "staging", "refs/heads/staging", "q1", NULL, NULL);
    assert_true(s_wait_count(t, "gate.check", "gate1", 1));
    char *r2 = s_trigger(t, "staging", "refs/heads/staging", "q2", NULL, NULL);
    /* A duplicate of a run in flight answers the existing run. */
    char *msg = NULL;
    char *dup = s_trigger(t, "staging", "refs/heads/staging", "q2", NULL, &msg);
    assert_string_equal(dup, r2);
    assert_non_null(strstr(msg, "duplicate"));
    free(msg);
    free(dup);
    char *queue = NULL;
    {
        char *k = sn_strdupf("LRANGE '%sruns:app:staging:queue' 0 -1", t->mesh.ns);
        queue = sn_test_redis_cli(&t->mesh.redis, k);
        free(k);
    }
    assert_string_equal(queue, r2);
    free(queue);
    char *r3 = s_trigger(t, "staging", "refs/heads/staging", "q3", NULL, NULL);
    assert_true(s_wait_state(t, r2, "superseded", 5000));
    Sentinel__V1__Run *run2 = s_run(t, r2);
    assert_string_equal(run2->superseded_by, r3);
    sentinel__v1__run__free_unpacked(run2, NULL);
    assert_true(s_wait_state(t, r3, "queued", 1000));
    assert_true(s_wait_state(t, r1, "gating", 1000));
    char *lock = sn_mesh_get(&t->mesh, "envlock:app:staging");
    assert_string_equal(lock, r1);
    free(lock);
    /* Cancel the running one: r3 takes the environment and runs to the end. */
    sn_envelope_t *reply = s_control(t, "run.cancel", r1, NULL, NULL, NULL);
    assert_non_null(reply);
    assert_int_equal(reply->run_ref->state, SENTINEL__V1__RUN_STATE__RUN_CANCELLED);
    sn_envelope_free(&reply);
    assert_true(s_wait_state(t, r1, "cancelled", 2000));
    s_script(t, &(t_script_t){0});
    assert_true(s_wait_state(t, r3, "succeeded", 20000));
    assert_int_equal(s_count_op(t, "build.local", "build"), 1);
    /* Cancelling an ended run changes nothing. */
    reply = s_control(t, "run.cancel", r3, NULL, NULL, NULL);
    assert_non_null(reply);
    assert_string_equal(reply->run_ref->message, "run has ended");
    sn_envelope_free(&reply);
    free(r1);
    free(r2);
    free(r3);
    s_stop(&t);
}

static void test_buildpilot_leader_killed_mid_stage(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-kill", 2);
    s_script(t, &(t_script_t){.hold_stage = true});
    char *run_id = s_trigger(t, "staging", "refs/heads/staging", "k1", NULL, NULL);
    assert_true(s_wait_count(t, "deploy.local.testhost", "stage", 2));
    sn_mesh_agent_t *bp1 = sn_mesh_find(&t->mesh, "bp1");
    kill(bp1->pid, SIGKILL);
    (void)sn_test_stop(bp1->pid, SIGKILL, 5000);
    bp1->pid = -1;
    assert_true(sn_mesh_wait_log(&t->mesh, "bp2", "elected leader", 10000));
    s_script(t, &(t_script_t){0});
    assert_true(s_wait_state(t, run_id, "succeeded", 20000));
    Sentinel__V1__Run *r = s_run(t, run_id);
    for (size_t i = 0; i < r->n_deploys; i++) {
        assert_int_equal(s_count(t, "deploy.local.testhost", "stage", r->deploys[i]->deploy_id), 1);
        assert_int_equal(s_count(t, "deploy.local.testhost", "promote", r->deploys[i]->deploy_id),
                         1);
    }
    sentinel__v1__run__free_unpacked(r, NULL);
    free(run_id);
    s_stop(&t);
}

static void test_buildpilot_freeze_and_timeout(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-freeze", 1);
    sn_envelope_t *reply = s_control(t, "env.freeze", NULL, "quick", NULL, NULL);
    assert_non_null(reply);
    assert_string_equal(reply->run_ref->message, "frozen");
    sn_envelope_free(&reply);
    char *msg = NULL;
    char *none = s_trigger(t, "quick", "refs/heads/quick", "f1", NULL, &msg);
    assert_null(none);
    assert_non_null(strstr(msg, "frozen"));
    free(msg);
    reply = s_control(t, "env.freeze", NULL, "nowhere", NULL, NULL);
    assert_non_null(reply);
    assert_string_equal(reply->run_ref->message, "unknown project or environment");
    sn_envelope_free(&reply);
    reply = s_control(t, "env.unfreeze", NULL, "quick", NULL, NULL);
    assert_non_null(reply);
    sn_envelope_free(&reply);
    /* A build that never answers: the step times out (2 s) and the run fails. */
    s_script(t, &(t_script_t){.hold_build = true});
    char *run_id = s_trigger(t, "quick", "refs/heads/quick", "f1", NULL, NULL);
    assert_non_null(run_id);
    assert_true(s_wait_state(t, run_id, "failed", 10000));
    Sentinel__V1__Run *r = s_run(t, run_id);
    assert_string_equal(r->reason, "step build timed out");
    assert_string_equal(s_step_state(r, "build"), "STEP_TIMED_OUT");
    sentinel__v1__run__free_unpacked(r, NULL);
    char *lock = sn_mesh_get(&t->mesh, "envlock:app:quick");
    assert_string_equal(lock, "");
    free(lock);
    s_script(t, &(t_script_t){0});
    free(run_id);
    s_stop(&t);
}

/* Starts one more product agent (@role as @instance) and waits for @service. */
static void s_add_agent(t_fix_t *t, const char *role, const char *instance, const char *service)
{
    sn_mesh_agent_bin(&t->mesh, "sentinel-agent", role, instance);
    assert_true(sn_mesh_wait_service(&t->mesh, service, 1, 10000));
}

/* The number of keys of the mesh's namespace matching @pattern (after the namespace). */
static size_t s_key_count(t_fix_t *t, const char *pattern)
{
    char *k = sn_strdupf("%s%s", t->mesh.ns, pattern);
    const char *argv[] = {"KEYS", k};
    redisReply *r = NULL;
    size_t n = 0;
    if (sn_redis_cmd(t->redis, SN_REDIS_MAIN, 0, &r, 2, argv, NULL) == SN_OK) {
        if (r->type == REDIS_REPLY_ARRAY)
            n = r->elements;
        freeReplyObject(r);
    }
    free(k);
    return n;
}

static sn_job_state_t s_job_state(t_fix_t *t, const char *job_id)
{
    sn_ledger_job_t job;
    memset(&job, 0, sizeof job);
    if (sn_ledger_get(t->ledger, job_id, &job) != SN_OK)
        return SN_JOB_UNKNOWN;
    sn_job_state_t state = job.state;
    sn_ledger_job_fini(&job);
    return state;
}

static void test_buildpilot_approval_expires(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-expiry", 1);
    char *r1 = s_trigger(t, "gated", "refs/heads/gated", "e1", "alice", NULL);
    assert_non_null(r1);
    assert_true(s_wait_state(t, r1, "awaiting_approval", 15000));
    char *r2 = s_trigger(t, "gated", "refs/heads/gated", "e2", "alice", NULL);
    assert_non_null(r2);
    assert_true(s_wait_state(t, r2, "queued", 1000));
    /* expiry_s 2: nobody approves r1; it fails, the environment passes to r2. */
    assert_true(s_wait_state(t, r1, "failed", 6000));
    Sentinel__V1__Run *r = s_run(t, r1);
    assert_string_equal(r->reason, "approval expired");
    assert_string_equal(s_step_state(r, "approval"), "STEP_TIMED_OUT");
    assert_string_equal(s_step_state(r, "stage"), "STEP_SKIPPED");
    sentinel__v1__run__free_unpacked(r, NULL);
    assert_int_equal(s_count_op(t, "deploy.local.testhost", "stage"), 0);
    assert_true(s_wait_state(t, r2, "awaiting_approval", 10000));
    char *lock = sn_mesh_get(&t->mesh, "envlock:app:gated");
    assert_string_equal(lock, r2);
    free(lock);
    /* Approving the expired run: it has ended. */
    sn_envelope_t *reply = s_control(t, "run.approve", r1, NULL, "bob", NULL);
    assert_non_null(reply);
    assert_string_equal(reply->run_ref->message, "run has ended");
    sn_envelope_free(&reply);
    reply = s_control(t, "run.approve", r2, NULL, "bob", NULL);
    assert_non_null(reply);
    assert_string_equal(reply->run_ref->message, "approved");
    sn_envelope_free(&reply);
    assert_true(s_wait_state(t, r2, "succeeded", 15000));
    free(r1);
    free(r2);
    s_stop(&t);
}

static void test_buildpilot_env_rollback(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-rollback", 1);
    char *good = s_trigger(t, "staging", "refs/heads/staging", "rb1", NULL, NULL);
    assert_true(s_wait_state(t, good, "succeeded", 20000));
    /* Bad input first: an unknown environment changes nothing. */
    sn_envelope_t *reply = s_control(t, "env.rollback", NULL, "nowhere", NULL, NULL);
    assert_non_null(reply);
    assert_string_equal(reply->run_ref->message, "unknown project or environment");
    sn_envelope_free(&reply);
    reply = s_control(t, "env.rollback", NULL, "staging", "carol", NULL);
    assert_non_null(reply);
    assert_string_equal(reply->run_ref->message, "rollback queued");
    char *rb = sn_strdup(reply->run_ref->run_id);
    sn_envelope_free(&reply);
    assert_true(s_wait_state(t, rb, "succeeded", 15000));
    Sentinel__V1__Run *r = s_run(t, rb);
    assert_string_equal(r->trigger, "rollback");
    assert_string_equal(r->requested_by, "carol");
    assert_string_equal(s_step_state(r, "rollback"), "STEP_SUCCEEDED");
    assert_string_equal(s_step_state(r, "stage"), "STEP_SKIPPED");
    assert_string_equal(s_step_state(r, "build"), "STEP_SKIPPED");
    assert_int_equal(r->n_deploys, 2); /* every target of the environment */
    for (size_t i = 0; i < r->n_deploys; i++) {
        assert_int_equal(r->deploys[i]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK);
        assert_int_equal(s_count(t, "heal.rollback", "rollback", r->deploys[i]->deploy_id), 1);
    }
    sentinel__v1__run__free_unpacked(r, NULL);
    /* No release named: each target goes back to its previous release. */
    assert_int_equal(s_count(t, "heal.rollback", "to", "-"), 2);
    assert_int_equal(s_count_op(t, "deploy.local.testhost", "stage"), 2); /* nothing staged */
    char *events = s_events(t, rb);
    assert_string_equal(
        events, "run.queued,run.started,deploy.rolled_back,deploy.rolled_back,run.succeeded");
    free(events);
    char *lock = sn_mesh_get(&t->mesh, "envlock:app:staging");
    assert_string_equal(lock, "");
    free(lock);
    free(rb);
    free(good);
    s_stop(&t);
}

static void test_buildpilot_transient_retried(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-transient", 1);
    s_add_agent(t, "autoheal-executor", "heal1", "heal.retry");
    /* Transient twice, then ok: heal.retry gets it through; the run succeeds. */
    s_script(t, &(t_script_t){.transient_stage = 2});
    char *run_id = s_trigger(t, "staging", "refs/heads/staging", "tr1", NULL, NULL);
    assert_true(s_wait_state(t, run_id, "succeeded", 25000));
    Sentinel__V1__Run *r = s_run(t, run_id);
    for (size_t i = 0; i < r->n_deploys; i++)
        assert_int_equal(s_count(t, "deploy.local.testhost", "stage", r->deploys[i]->deploy_id), 3);
    assert_true(r->heal_retries >= 2 && r->heal_retries <= BP_RUN_RETRY_BUDGET);
    sentinel__v1__run__free_unpacked(r, NULL);
    char *events = s_events(t, run_id);
    /* Each retry is journaled (run.step, label retry) and audited by autoheal (heal.action). */
    assert_non_null(strstr(events, "run.step,run.step,run.step,"));
    assert_non_null(strstr(events, "heal.action"));
    assert_non_null(strstr(events, "deploy.staged"));
    free(events);
    free(run_id);

    /* Always transient: autoheal's budget runs out and the step fails with its reason. */
    s_script(t, &(t_script_t){.transient_stage = -1});
    run_id = s_trigger(t, "staging", "refs/heads/staging", "tr2", NULL, NULL);
    assert_true(s_wait_state(t, run_id, "failed", 30000));
    r = s_run(t, run_id);
    assert_non_null(strstr(r->reason, "stage failed on t"));
    assert_non_null(strstr(r->reason, "retry budget exhausted"));
    assert_string_equal(s_step_state(r, "stage"), "STEP_FAILED");
    assert_string_equal(s_step_state(r, "promote"), "STEP_SKIPPED");
    sentinel__v1__run__free_unpacked(r, NULL);
    assert_int_equal(s_count_op(t, "deploy.local.testhost", "promote"), 2); /* run 1 only */
    free(run_id);
    s_script(t, &(t_script_t){0});
    s_stop(&t);
}

static void test_buildpilot_dry_run(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-dry", 1);
    char *msg = NULL;
    char *none = s_trigger_ex(t, NULL, "refs/heads/staging", "d1", NULL, true, &msg);
    assert_null(none);
    assert_non_null(strstr(msg, "dry run"));
    assert_non_null(strstr(msg, "app/staging: targets t1,t2"));
    assert_non_null(strstr(msg, "artifact: build of d1"));
    assert_non_null(strstr(msg, "approval not required"));
    free(msg);
    assert_int_equal(s_key_count(t, "run:*"), 0);
    assert_int_equal(s_key_count(t, "runs:*"), 0);
    assert_int_equal(s_key_count(t, "envlock:*"), 0);
    /* Production promotes: nothing verified yet, then the staging run's artifact. */
    none = s_trigger_ex(t, "production", "refs/heads/main", "", NULL, true, &msg);
    assert_null(none);
    assert_non_null(strstr(msg, "app/production: targets t1"));
    assert_non_null(strstr(msg, "would be refused: no verified artifact in app/staging"));
    free(msg);
    char *staging = s_trigger(t, "staging", "refs/heads/staging", "d2", NULL, NULL);
    assert_true(s_wait_state(t, staging, "succeeded", 20000));
    size_t runs = s_key_count(t, "run:*");
    assert_int_equal(runs, 1);
    none = s_trigger_ex(t, "production", "refs/heads/main", "", NULL, true, &msg);
    assert_null(none);
    char *want = sn_strdupf("artifact: promote from staging run %s (commit d2)", staging);
    assert_non_null(strstr(msg, want));
    assert_non_null(strstr(msg, "approval required"));
    free(want);
    free(msg);
    assert_int_equal(s_key_count(t, "run:*"), runs);
    assert_int_equal(s_count_op(t, "gate.check", "gate1"), 1);
    free(staging);
    s_stop(&t);
}

typedef struct {
    t_fix_t *t;
    int n;
} t_naks_t;

static bool s_more_stage_requests(void *arg)
{
    t_naks_t *w = arg;
    return s_count_op(w->t, "deploy.local.testhost", "stage-nak") > w->n;
}

static void test_buildpilot_ended_run_closes_jobs(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-jobs", 1);
    /* No deployer takes the stage jobs: they stay queued and are sent again. */
    s_script(t, &(t_script_t){.nak_stage = true});
    char *run_id = s_trigger(t, "staging", "refs/heads/staging", "j1", NULL, NULL);
    assert_true(s_wait_count(t, "deploy.local.testhost", "stage-nak", 3));
    char *job1 = sn_strdupf("%s.stage.t1", run_id), *job2 = sn_strdupf("%s.stage.t2", run_id);
    assert_int_equal(s_job_state(t, job1), SN_JOB_QUEUED);
    sn_envelope_t *reply = s_control(t, "run.cancel", run_id, NULL, NULL, NULL);
    assert_non_null(reply);
    assert_int_equal(reply->run_ref->state, SENTINEL__V1__RUN_STATE__RUN_CANCELLED);
    sn_envelope_free(&reply);
    /* The run ended: its queued jobs are closed, not left for a worker or a redispatch. */
    assert_int_equal(s_job_state(t, job1), SN_JOB_FAILED);
    assert_int_equal(s_job_state(t, job2), SN_JOB_FAILED);
    char *k = sn_strdupf("SISMEMBER '%sjobs:open:buildpilot' '%s'", t->mesh.ns, job1);
    char *member = sn_test_redis_cli(&t->mesh.redis, k);
    assert_string_equal(member, "0");
    free(member);
    free(k);
    /* And nothing is sent for it any more (a queued job was re-sent every second). */
    t_naks_t w = {t, s_count_op(t, "deploy.local.testhost", "stage-nak")};
    assert_false(sn_test_wait_for(s_more_stage_requests, &w, 2500));
    /* A worker that gets the job now cannot start it. */
    uint64_t epoch = 0;
    assert_int_equal(sn_ledger_claim(t->ledger, job1, "late", 0, &epoch, NULL), SN_DECLINED);
    free(job1);
    free(job2);
    free(run_id);
    s_script(t, &(t_script_t){0});
    s_stop(&t);
}

static void test_buildpilot_audit_fail_closed(void **state)
{
    (void)state;
    t_fix_t *t = s_start("bp-audit", 1);
    /* The audit archive is failing (as another process found): intents are refused. */
    char *cmd = sn_strdupf("SET '%saudit:failed' 'disk full (test)'", t->mesh.ns);
    free(sn_test_redis_cli(&t->mesh.redis, cmd));
    free(cmd);
    char *run_id = s_trigger(t, "staging", "refs/heads/staging", "au1", NULL, NULL);
    assert_true(s_wait_state(t, run_id, "staging", 15000));
    assert_true(sn_mesh_wait_log(&t->mesh, "bp1", "audit intent refused", 5000));
    /* No intent, no side effect: nothing was asked of the deployer. */
    assert_int_equal(s_count_op(t, "deploy.local.testhost", "stage"), 0);
    assert_true(s_wait_state(t, run_id, "staging", 1000));
    /* The archive recovers: the step goes on (within its deadline) and the run succeeds. */
    cmd = sn_strdupf("DEL '%saudit:failed'", t->mesh.ns);
    free(sn_test_redis_cli(&t->mesh.redis, cmd));
    free(cmd);
    assert_true(s_wait_state(t, run_id, "succeeded", 15000));
    /* One intent and one outcome per side effect: stage and promote on two targets. */
    cmd = sn_strdupf("XLEN '%saudit'", t->mesh.ns);
    char *len = sn_test_redis_cli(&t->mesh.redis, cmd);
    free(cmd);
    assert_string_equal(len, "8");
    free(len);
    Sentinel__V1__Run *r = s_run(t, run_id);
    for (size_t i = 0; i < r->n_deploys; i++)
        assert_int_equal(s_count(t, "deploy.local.testhost", "stage", r->deploys[i]->deploy_id), 1);
    sentinel__v1__run__free_unpacked(r, NULL);
    free(run_id);
    s_stop(&t);
}

int main(void)
{
    zsys_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buildpilot_good_run),
        cmocka_unit_test(test_buildpilot_gate_rejects),
        cmocka_unit_test(test_buildpilot_preview_fails),
        cmocka_unit_test(test_buildpilot_live_fails_rolls_back),
        cmocka_unit_test(test_buildpilot_one_target_fails_promote),
        cmocka_unit_test(test_buildpilot_approval_survives_restart),
        cmocka_unit_test(test_buildpilot_supersede_and_cancel),
        cmocka_unit_test(test_buildpilot_leader_killed_mid_stage),
        cmocka_unit_test(test_buildpilot_freeze_and_timeout),
        cmocka_unit_test(test_buildpilot_approval_expires),
        cmocka_unit_test(test_buildpilot_env_rollback),
        cmocka_unit_test(test_buildpilot_transient_retried),
        cmocka_unit_test(test_buildpilot_dry_run),
        cmocka_unit_test(test_buildpilot_ended_run_closes_jobs),
        cmocka_unit_test(test_buildpilot_audit_fail_closed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
