/* FirebaseDeployExecutor's coordinator through the real mesh: a private redis-server, the
 * broker, sentinel-agent processes of resource-validator (real, on artifacts in the store),
 * two firebase-executors (leader and standby), firebase-sync and, for its test,
 * cloud-sync-sentinel against tests/fakes/fake_firebase.py (a service-account key made
 * here). firebase.hosting and firebase.functions are scripted stand-ins registered in the
 * test process with sn_worker (they record every call, can fail or hold a call).
 *
 * Shown: stage runs validate, then functions and hosting at once, then propagation on the
 * preview URL, then the sync check (recorded state without cloud-sync-sentinel), counts
 * usage, and a repeated stage is answered from the record; promote records the expected
 * live state; rollback rolls back both parts; a failing hosting stage rolls back the
 * functions (not hosting) and fails; a failed validation uploads nothing; bad requests are
 * refused; an executor killed (-9) mid-deploy is replaced by the standby, which resumes
 * (validation and functions not done again) while firebase-sync (deploy.firebase, a
 * ledger job) resends and reports progress into the job; cloud-sync-sentinel raises one
 * firebase.drift alert per drift and one firebase.resource alert over budget. */
#include "sn_mesh.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <czmq.h>
#include <zmq.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "sentinel/sn_artifact.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_leader.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"
#include "sentinel/sn_worker.h"

#define S_MAX_SEEN 256
#define S_MAX_HELD 8
#define S_FN_SHA "1111111111111111111111111111111111111111111111111111111111111111"

typedef struct {
    char service[32];
    char op[16];
    char deploy_id[64];
    char live_url[128];
} s_seen_t;

typedef struct {
    sn_mesh_t m;
    sn_config_t cfg;
    sn_redis_t *redis;
    sn_artifact_t *store;
    char good[SN_ARTIFACT_SHA_LEN + 1];
    char bad[SN_ARTIFACT_SHA_LEN + 1];
    pthread_t thread;
    volatile int stop;
    pthread_mutex_t mu;
    s_seen_t seen[S_MAX_SEEN];
    int seen_count;
    char fail_hosting_stage[64]; /* deploy id whose hosting stage fails */
    char hold_hosting_stage[64]; /* deploy id whose hosting stage is held */
    volatile int release_held;
    sn_worker_ticket_t held[S_MAX_HELD];
    sn_envelope_t *held_env[S_MAX_HELD];
    int held_count;
    int fake_port;
    pid_t fake;
    char *fake_log;
} s_world_t;

static s_world_t *s_w;

/* ---- the stand-in workers -------------------------------------------------------------- */

static void s_reply(s_world_t *w, sn_worker_t *wk, const sn_worker_ticket_t *t,
                    const sn_worker_event_t *ev, const sn_envelope_t *in)
{
    const Sentinel__V1__DeployRequest *dr = in->deploy_request;
    Sentinel__V1__Deploy d = *dr->deploy;
    Sentinel__V1__DeployResult res = SENTINEL__V1__DEPLOY_RESULT__INIT;
    res.ok = true;
    res.deploy = &d;
    char version[128], prev[128], preview[160], live[160];
    snprintf(version, sizeof version, "sites/demo-site/versions/v-%s", d.deploy_id);
    snprintf(prev, sizeof prev, "sites/demo-site/versions/v-before");
    snprintf(preview, sizeof preview, "http://preview.test/%s", d.deploy_id);
    snprintf(live, sizeof live, "http://live.test/");
    bool is_hosting = strcmp(ev->service, "firebase.hosting") == 0;
    pthread_mutex_lock(&w->mu);
    bool fails = is_hosting && strcmp(dr->op, "stage") == 0 &&
                 strcmp(d.deploy_id, w->fail_hosting_stage) == 0;
    pthread_mutex_unlock(&w->mu);
    if (fails) {
        res.ok = false;
        res.reason = "populateFiles: 400 INVALID_ARGUMENT: bad hash";
    } else if (is_hosting && strcmp(dr->op, "stage") == 0) {
        d.preview_url = preview;
        d.release_id = version;
        d.provider_deployment_id = version;
    } else if (is_hosting && strcmp(dr->op, "promote") == 0) {
        d.live_url = live;
        d.release_id = version;
        d.previous_release_id = prev;
    } else if (is_hosting && strcmp(dr->op, "rollback") == 0) {
        d.live_url = live;
        d.release_id = prev;
    } else if (!is_hosting) {
        d.release_id = S_FN_SHA;
    }
    sn_envelope_t out;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&out, &w->m.source, "deploy.result", id);
    out.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT;
    out.deploy_result = &res;
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&out, &len);
    if (sn_worker_reply(wk, t, bytes, len) != SN_OK)
        sn_warn("stub", "reply dropped");
    free(bytes);
}

static void s_request(s_world_t *w, sn_worker_t *wk, sn_worker_event_t *ev)
{
    sn_envelope_t *in = sn_envelope_unpack(ev->body, ev->body_len, SN_MAX_FRAME_BYTES, NULL);
    if (!in || in->body_case != SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST ||
        !in->deploy_request->deploy) {
        if (sn_worker_nak(wk, &ev->ticket, SN_NAK_INVALID) != SN_OK)
            sn_warn("stub", "nak dropped");
        sn_envelope_free(&in);
        return;
    }
    const Sentinel__V1__DeployRequest *dr = in->deploy_request;
    pthread_mutex_lock(&w->mu);
    if (w->seen_count < S_MAX_SEEN) {
        s_seen_t *s = &w->seen[w->seen_count++];
        sn_strlcpy(s->service, ev->service, sizeof s->service);
        sn_strlcpy(s->op, dr->op, sizeof s->op);
        sn_strlcpy(s->deploy_id, dr->deploy->deploy_id, sizeof s->deploy_id);
        sn_strlcpy(s->live_url, dr->deploy->live_url, sizeof s->live_url);
    }
    bool hold = strcmp(ev->service, "firebase.hosting") == 0 && strcmp(dr->op, "stage") == 0 &&
                strcmp(dr->deploy->deploy_id, w->hold_hosting_stage) == 0 && !w->release_held &&
                w->held_count < S_MAX_HELD;
    if (hold) {
        w->held[w->held_count] = ev->ticket;
        w->held_env[w->held_count++] = in;
    }
    pthread_mutex_unlock(&w->mu);
    if (hold)
        return;
    s_reply(w, wk, &ev->ticket, ev, in);
    sn_envelope_free(&in);
}

static void *s_stub_thread(void *arg)
{
    s_world_t *w = arg;
    sn_worker_t *wk = sn_worker_new(w->m.rpc, NULL);
    SN_ASSERT(wk);
    sn_worker_set_heartbeat(wk, 200, 3);
    SN_ASSERT(sn_worker_serve(wk, "firebase.hosting", 8) == SN_OK);
    SN_ASSERT(sn_worker_serve(wk, "firebase.functions", 8) == SN_OK);
    while (!w->stop) {
        zmq_pollitem_t item = {.socket = sn_worker_socket(wk), .events = ZMQ_POLLIN};
        (void)zmq_poll(&item, 1, 20);
        sn_worker_event_t ev;
        while (sn_worker_recv(wk, &ev) == SN_OK) {
            if (ev.type == SN_WORKER_REQUEST)
                s_request(w, wk, &ev);
            sn_worker_event_fini(&ev);
        }
        /* Held calls are answered outside the lock (s_reply takes it). */
        sn_worker_ticket_t tickets[S_MAX_HELD];
        sn_envelope_t *envs[S_MAX_HELD];
        int nheld = 0;
        pthread_mutex_lock(&w->mu);
        if (w->release_held) {
            for (int i = 0; i < w->held_count; i++) {
                tickets[nheld] = w->held[i];
                envs[nheld++] = w->held_env[i];
            }
            w->held_count = 0;
        }
        pthread_mutex_unlock(&w->mu);
        for (int i = 0; i < nheld; i++) {
            sn_worker_event_t fake = {.type = SN_WORKER_REQUEST};
            sn_strlcpy(fake.service, "firebase.hosting", sizeof fake.service);
            s_reply(w, wk, &tickets[i], &fake, envs[i]);
            sn_envelope_free(&envs[i]);
        }
        sn_worker_tick(wk);
    }
    for (int i = 0; i < w->held_count; i++)
        sn_envelope_free(&w->held_env[i]);
    sn_worker_destroy(&wk);
    return NULL;
}

static int s_seen(const char *service, const char *op, const char *deploy_id)
{
    int n = 0;
    pthread_mutex_lock(&s_w->mu);
    for (int i = 0; i < s_w->seen_count; i++)
        if (strcmp(s_w->seen[i].service, service) == 0 && strcmp(s_w->seen[i].op, op) == 0 &&
            strcmp(s_w->seen[i].deploy_id, deploy_id) == 0)
            n++;
    pthread_mutex_unlock(&s_w->mu);
    return n;
}

static int s_seen_any(const char *deploy_id)
{
    int n = 0;
    pthread_mutex_lock(&s_w->mu);
    for (int i = 0; i < s_w->seen_count; i++)
        n += strcmp(s_w->seen[i].deploy_id, deploy_id) == 0;
    pthread_mutex_unlock(&s_w->mu);
    return n;
}

/* ---- helpers ------------------------------------------------------------------------------- */

static void s_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    SN_ASSERT(f);
    fputs(text, f);
    SN_ASSERT(fclose(f) == 0);
}

/* An artifact from (relative path, content) pairs. */
static void s_artifact(const char *tag, const char *const *files, char sha[SN_ARTIFACT_SHA_LEN + 1])
{
    char *root = sn_strdupf("%s/src-%s", s_w->m.dir, tag);
    SN_ASSERT(mkdir(root, 0755) == 0);
    for (size_t i = 0; files[i]; i += 2) {
        char *path = sn_strdupf("%s/%s", root, files[i]);
        char *slash = strrchr(path, '/');
        *slash = '\0';
        (void)mkdir(path, 0755);
        *slash = '/';
        s_write_file(path, files[i + 1]);
        free(path);
    }
    SN_ASSERT(sn_artifact_put_dir(s_w->store, root, sha, NULL) == SN_OK);
    free(root);
}

/* A service-account key for the fake: key.json and the public key PEM. */
static void s_make_key(const char *dir, int port)
{
    EVP_PKEY *pk = EVP_RSA_gen(2048);
    SN_ASSERT(pk);
    BIO *b = BIO_new(BIO_s_mem());
    SN_ASSERT(PEM_write_bio_PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL) == 1);
    char *pem = NULL;
    long n = BIO_get_mem_data(b, &pem);
    char *priv = sn_strndup(pem, (size_t)n);
    BIO_free(b);
    char *pub_path = sn_strdupf("%s/pub.pem", dir);
    FILE *f = fopen(pub_path, "w");
    SN_ASSERT(f && PEM_write_PUBKEY(f, pk) == 1);
    fclose(f);
    free(pub_path);
    EVP_PKEY_free(pk);
    char *uri = sn_strdupf("http://127.0.0.1:%d/token", port);
    json_t *key =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "type", "service_account", "project_id",
                  "demo-project", "private_key_id", "k1", "private_key", priv, "client_email",
                  "sentinel@demo-project.iam.gserviceaccount.com", "token_uri", uri);
    char *path = sn_strdupf("%s/key.json", dir);
    SN_ASSERT(json_dump_file(key, path, 0) == 0);
    json_decref(key);
    free(path);
    free(uri);
    free(priv);
}

/* Calls @service with a DeployRequest. Returns the reply (caller frees) or NULL. */
static sn_envelope_t *s_call(const char *service, const char *op, const char *deploy_id,
                             const char *target, const char *sha, const char *job_id,
                             int timeout_ms)
{
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    d.deploy_id = (char *)deploy_id;
    d.run_id = "run-1";
    d.project = "web";
    d.environment = "prod";
    d.target = (char *)target;
    Sentinel__V1__DeployRequest dr = SENTINEL__V1__DEPLOY_REQUEST__INIT;
    dr.op = (char *)op;
    dr.deploy = &d;
    dr.artifact_sha256 = (char *)(sha ? sha : "");
    dr.commit = "c0ffee";
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &s_w->m.source, "deploy.request", id);
    env.correlation_id = "run-1";
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST;
    env.deploy_request = &dr;
    if (job_id)
        sn_envelope_add_label(&env, "job_id", job_id);
    sn_envelope_t *reply = NULL;
    sn_nak_reason_t nak = SN_NAK_NONE;
    sn_rc_t rc = sn_mesh_call(&s_w->m, service, &env, timeout_ms, &reply, &nak);
    sn_envelope_fini_labels(&env);
    if (rc != SN_OK)
        print_error("%s %s %s: rc=%d nak=%d\n", service, op, deploy_id, rc, (int)nak);
    if (reply)
        assert_int_equal(reply->body_case, SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT);
    return reply;
}

/* The firebase.step events of @deploy_id in journal order as "op.step.state" strings. */
static size_t s_steps(const char *deploy_id, char out[][64], size_t max)
{
    size_t count = 0, n = 0;
    sn_envelope_t **envs = sn_mesh_journal(&s_w->m, s_w->redis, &count);
    for (size_t i = 0; i < count && n < max; i++) {
        sn_envelope_t *e = envs[i];
        if (strcmp(e->type, "firebase.step") == 0 &&
            e->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY &&
            strcmp(e->deploy->deploy_id, deploy_id) == 0)
            snprintf(out[n++], 64, "%s.%s.%s", sn_envelope_label(e, "op"),
                     sn_envelope_label(e, "step"), sn_envelope_label(e, "state"));
    }
    sn_mesh_envelopes_free(envs, count);
    return n;
}

static long s_index(char steps[][64], size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(steps[i], what) == 0)
            return (long)i;
    return -1;
}

static int s_alerts(const char *name)
{
    size_t count = 0;
    int n = 0;
    sn_envelope_t **envs = sn_mesh_journal(&s_w->m, s_w->redis, &count);
    for (size_t i = 0; i < count; i++)
        if (strcmp(envs[i]->type, "alert.raised") == 0 &&
            envs[i]->body_case == SENTINEL__V1__ENVELOPE__BODY_ALERT &&
            strcmp(envs[i]->alert->name, name) == 0)
            n++;
    sn_mesh_envelopes_free(envs, count);
    return n;
}

/* ---- fixture ------------------------------------------------------------------------------- */

static bool s_file_exists(void *arg)
{
    return access((const char *)arg, F_OK) == 0;
}

static int s_setup(void **state)
{
    (void)state;
    zsys_init();
    s_w = sn_calloc(1, sizeof *s_w);
    pthread_mutex_init(&s_w->mu, NULL);
    s_w->fake_port = sn_test_free_port();
    char *kdir = sn_test_tmpdir("fbkey");
    s_make_key(kdir, s_w->fake_port);
    char *yaml = sn_strdupf("projects:\n"
                            "  - name: web\n"
                            "    repo: /nonexistent/web\n"
                            "    environments:\n"
                            "      - name: prod\n"
                            "        branch: main\n"
                            "        targets:\n"
                            "          - fb\n"
                            "targets:\n"
                            "  - name: fb\n"
                            "    type: firebase\n"
                            "    project: demo-project\n"
                            "    site: demo-site\n"
                            "    credentials_file: %s/key.json\n"
                            "    oauth_token_uri: http://127.0.0.1:%d/token\n"
                            "    api_base: http://127.0.0.1:%d/v1beta1\n"
                            "    functions_api_base: http://127.0.0.1:%d/v2\n"
                            "    request_timeout_ms: 3000\n"
                            "    max_attempts: 2\n"
                            "    budget_deploys_per_day: 2\n"
                            "    drift_check_interval_ms: 200ms\n"
                            "  - name: plain\n"
                            "    type: local_static\n"
                            "    listen: 127.0.0.1:1\n"
                            "    preview_listen: 127.0.0.1:2\n",
                            kdir, s_w->fake_port, s_w->fake_port, s_w->fake_port);
    bool ok = sn_mesh_start(&s_w->m, "fbexec", yaml);
    free(yaml);
    if (!ok)
        return -1;
    char err[512] = "";
    if (sn_config_load(s_w->m.config, &s_w->cfg, err, sizeof err) != SN_OK) {
        print_error("config: %s\n", err);
        return -1;
    }
    sn_redis_opts_t ro = {.unix_path = s_w->m.redis.unix_path, .namespace_ = s_w->m.ns};
    s_w->redis = sn_redis_new(&ro);
    s_w->store = sn_artifact_new(s_w->cfg.artifact_dir, NULL);
    SN_ASSERT(s_w->store);

    /* The fake (for cloud-sync-sentinel). */
    char *ready = sn_strdupf("%s/fake.ready", s_w->m.dir);
    char *port = sn_strdupf("%d", s_w->fake_port);
    char *pub = sn_strdupf("%s/pub.pem", kdir);
    char *script = sn_strdupf("%s/tests/fakes/fake_firebase.py", SN_SOURCE_DIR);
    s_w->fake_log = sn_strdupf("%s/fake.log", s_w->m.dir);
    char *argv[] = {"/usr/bin/python3", script, "--port", port, "--ready", ready,
                    "--public-key",     pub,    NULL};
    s_w->fake = sn_test_spawn(argv, s_w->fake_log);
    bool is_ready = sn_test_wait_for(s_file_exists, ready, 10000);
    free(ready);
    free(port);
    free(pub);
    free(script);
    free(kdir);
    if (!is_ready)
        return -1;

    static const char *const good[] = {
        "firebase.json",
        "{\"hosting\": {\"public\": \"public\", \"rewrites\": [{\"source\": \"/api/**\", "
        "\"function\": \"api\"}]},\n \"functions\": {\"source\": \"functions\", \"runtime\": "
        "\"nodejs20\", \"endpoints\": {\"api\": {\"entryPoint\": \"api\"}}}}\n",
        "public/index.html",
        "<h1>hello firebase</h1>\n",
        "functions/package.json",
        "{\"name\": \"fns\", \"main\": \"index.js\", \"engines\": {\"node\": \"20\"}}\n",
        "functions/index.js",
        "exports.api = (req, res) => res.send('ok');\n",
        NULL};
    static const char *const bad[] = {
        "firebase.json",
        "{\"hosting\": {\"public\": \"dist\", \"rewrites\": [{\"source\": \"/x\", \"function\": "
        "\"ghost\"}]}}\n",
        "public/index.html", "<h1>bad</h1>\n", NULL};
    s_artifact("good", good, s_w->good);
    s_artifact("bad", bad, s_w->bad);

    if (pthread_create(&s_w->thread, NULL, s_stub_thread, s_w) != 0)
        return -1;
    sn_mesh_agent_bin(&s_w->m, "sentinel-agent", "resource-validator", "rv1");
    sn_mesh_agent_bin(&s_w->m, "sentinel-agent", "firebase-executor", "fx1");
    sn_mesh_agent_bin(&s_w->m, "sentinel-agent", "firebase-executor", "fx2");
    sn_mesh_agent_bin(&s_w->m, "sentinel-agent", "firebase-sync", "fsync1");
    if (!sn_mesh_wait_service(&s_w->m, "firebase.validate", 1, 15000) ||
        !sn_mesh_wait_service(&s_w->m, "firebase.deploy", 1, 15000) ||
        !sn_mesh_wait_service(&s_w->m, "deploy.firebase", 1, 15000) ||
        !sn_mesh_wait_service(&s_w->m, "firebase.hosting", 1, 15000) ||
        !sn_mesh_wait_service(&s_w->m, "firebase.functions", 1, 15000))
        return -1;
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    s_w->stop = 1;
    pthread_join(s_w->thread, NULL);
    int bad = sn_mesh_stop(&s_w->m);
    if (s_w->fake > 0)
        (void)sn_test_stop(s_w->fake, SIGTERM, 5000);
    sn_artifact_destroy(&s_w->store);
    sn_redis_destroy(&s_w->redis);
    sn_config_fini(&s_w->cfg);
    pthread_mutex_destroy(&s_w->mu);
    free(s_w->fake_log);
    free(s_w);
    s_w = NULL;
    return bad == 0 ? 0 : -1;
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_firebase_executor_stage_order_promote_rollback(void **state)
{
    (void)state;
    sn_envelope_t *r = s_call("firebase.deploy", "stage", "d-ok", "fb", s_w->good, NULL, 20000);
    assert_non_null(r);
    if (!r->deploy_result->ok)
        print_error("stage: %s\n", r->deploy_result->reason);
    assert_true(r->deploy_result->ok);
    assert_string_equal(r->deploy_result->deploy->preview_url, "http://preview.test/d-ok");
    assert_string_equal(r->deploy_result->deploy->release_id, "sites/demo-site/versions/v-d-ok");
    assert_int_equal(r->deploy_result->deploy->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED);
    assert_int_equal(r->deploy_result->function_count, 1);
    assert_true(r->deploy_result->upload_bytes > 0);
    sn_envelope_free(&r);

    /* The order, from the journal: validate, then both parts, then propagation, then sync. */
    char steps[64][64];
    size_t n = s_steps("d-ok", steps, 64);
    long v_done = s_index(steps, n, "stage.validate.done");
    long f_run = s_index(steps, n, "stage.functions.running");
    long h_run = s_index(steps, n, "stage.hosting.running");
    long f_done = s_index(steps, n, "stage.functions.done");
    long h_done = s_index(steps, n, "stage.hosting.done");
    long p_run = s_index(steps, n, "stage.propagation.running");
    long p_done = s_index(steps, n, "stage.propagation.done");
    long s_run = s_index(steps, n, "stage.sync.running");
    long fin = s_index(steps, n, "stage.final.done");
    assert_true(v_done >= 0 && f_run > v_done && h_run > v_done);
    assert_true(f_done >= 0 && h_done >= 0);
    assert_true(p_run > f_done && p_run > h_done);
    assert_true(s_run > p_done && p_done >= 0);
    assert_true(fin > s_run);
    /* Functions and hosting were both asked before either answered (at once). */
    assert_true(f_run < h_done && h_run < f_done);
    /* Propagation watched the preview URL. */
    pthread_mutex_lock(&s_w->mu);
    bool watched = false;
    for (int i = 0; i < s_w->seen_count; i++)
        if (strcmp(s_w->seen[i].op, "propagation") == 0 &&
            strcmp(s_w->seen[i].deploy_id, "d-ok") == 0)
            watched = strcmp(s_w->seen[i].live_url, "http://preview.test/d-ok") == 0;
    pthread_mutex_unlock(&s_w->mu);
    assert_true(watched);
    assert_int_equal(s_seen("firebase.functions", "stage", "d-ok"), 1);
    assert_int_equal(s_seen("firebase.hosting", "stage", "d-ok"), 1);

    /* Usage counted once for the budgets. */
    char day[16];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(day, sizeof day, "%Y%m%d", &tm);
    char *key = sn_strdupf("firebase:usage:web:prod:fb:%s", day);
    char *deploys = sn_mesh_hget(&s_w->m, key, "deploys");
    assert_non_null(deploys);
    assert_string_equal(deploys, "1");
    free(deploys);

    /* A repeated stage is answered from the record: no part is asked again. */
    int before = s_seen_any("d-ok");
    r = s_call("firebase.deploy", "stage", "d-ok", "fb", s_w->good, NULL, 20000);
    assert_non_null(r);
    assert_true(r->deploy_result->ok);
    assert_string_equal(r->deploy_result->deploy->preview_url, "http://preview.test/d-ok");
    sn_envelope_free(&r);
    assert_int_equal(s_seen_any("d-ok"), before);
    /* ...from its final record, not by finishing again. */
    size_t finals = 0;
    n = s_steps("d-ok", steps, 64);
    for (size_t i = 0; i < n; i++)
        finals += strcmp(steps[i], "stage.final.done") == 0;
    assert_int_equal(finals, 1);
    char *fin_state = sn_mesh_hget(&s_w->m, "firebase:deploy:d-ok", "stage.final");
    assert_string_equal(fin_state, "done");
    free(fin_state);
    deploys = sn_mesh_hget(&s_w->m, key, "deploys");
    assert_string_equal(deploys, "1");
    free(deploys);
    free(key);

    /* promote: both parts, propagation on the live URL, the expected state recorded. */
    r = s_call("firebase.deploy", "promote", "d-ok", "fb", s_w->good, NULL, 20000);
    assert_non_null(r);
    assert_true(r->deploy_result->ok);
    assert_string_equal(r->deploy_result->deploy->live_url, "http://live.test/");
    assert_string_equal(r->deploy_result->deploy->previous_release_id,
                        "sites/demo-site/versions/v-before");
    assert_int_equal(r->deploy_result->deploy->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE);
    sn_envelope_free(&r);
    assert_int_equal(s_seen("firebase.hosting", "promote", "d-ok"), 1);
    assert_int_equal(s_seen("firebase.functions", "promote", "d-ok"), 1);
    char *hv = sn_mesh_hget(&s_w->m, "firebase:live:web:prod:fb", "hosting_version");
    assert_string_equal(hv, "sites/demo-site/versions/v-d-ok");
    free(hv);
    char *fs = sn_mesh_hget(&s_w->m, "firebase:live:web:prod:fb", "functions_source");
    assert_string_equal(fs, S_FN_SHA);
    free(fs);

    /* rollback: both parts; the record follows. A hosting version as to_release_id is
     * not handed to functions. */
    r = s_call("firebase.deploy", "rollback", "d-ok", "fb", NULL, NULL, 20000);
    assert_non_null(r);
    assert_true(r->deploy_result->ok);
    assert_int_equal(r->deploy_result->deploy->phase,
                     SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK);
    assert_string_equal(r->deploy_result->deploy->release_id, "sites/demo-site/versions/v-before");
    sn_envelope_free(&r);
    assert_int_equal(s_seen("firebase.hosting", "rollback", "d-ok"), 1);
    assert_int_equal(s_seen("firebase.functions", "rollback", "d-ok"), 1);
    hv = sn_mesh_hget(&s_w->m, "firebase:live:web:prod:fb", "hosting_version");
    assert_string_equal(hv, "sites/demo-site/versions/v-before");
    free(hv);
}

static void test_firebase_executor_hosting_failure_rolls_back_functions(void **state)
{
    (void)state;
    pthread_mutex_lock(&s_w->mu);
    sn_strlcpy(s_w->fail_hosting_stage, "d-hfail", sizeof s_w->fail_hosting_stage);
    pthread_mutex_unlock(&s_w->mu);
    sn_envelope_t *r = s_call("firebase.deploy", "stage", "d-hfail", "fb", s_w->good, NULL, 20000);
    assert_non_null(r);
    assert_false(r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->reason, "hosting: populateFiles: 400"));
    assert_non_null(strstr(r->deploy_result->reason, "functions rolled back"));
    assert_int_equal(r->deploy_result->deploy->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED);
    sn_envelope_free(&r);
    assert_int_equal(s_seen("firebase.functions", "stage", "d-hfail"), 1);
    assert_int_equal(s_seen("firebase.functions", "rollback", "d-hfail"), 1);
    /* A staged Hosting version is not live: nothing to roll back there; nothing after. */
    assert_int_equal(s_seen("firebase.hosting", "rollback", "d-hfail"), 0);
    assert_int_equal(s_seen("firebase.hosting", "propagation", "d-hfail"), 0);
}

static void test_firebase_executor_validation_failure_uploads_nothing(void **state)
{
    (void)state;
    sn_envelope_t *r = s_call("firebase.deploy", "stage", "d-bad", "fb", s_w->bad, NULL, 20000);
    assert_non_null(r);
    assert_false(r->deploy_result->ok);
    const char *why = r->deploy_result->reason;
    assert_non_null(strstr(why, "validate: validation failed"));
    assert_non_null(strstr(why, "hosting.public: directory 'dist' is not in the artifact"));
    assert_non_null(strstr(why, "function 'ghost'"));
    assert_non_null(strstr(why, "nothing uploaded"));
    sn_envelope_free(&r);
    assert_int_equal(s_seen_any("d-bad"), 0);

    /* Bad requests: refused with a reason, nothing asked of anyone. */
    r = s_call("firebase.deploy", "deploy", "d-x1", "fb", s_w->good, NULL, 5000);
    assert_false(r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->reason, "unknown op"));
    sn_envelope_free(&r);
    r = s_call("firebase.deploy", "stage", "d-x2", "plain", s_w->good, NULL, 5000);
    assert_false(r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->reason, "not a firebase target"));
    sn_envelope_free(&r);
    r = s_call("firebase.deploy", "stage", "../x", "fb", s_w->good, NULL, 5000);
    assert_false(r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->reason, "invalid deploy"));
    sn_envelope_free(&r);
    r = s_call("firebase.deploy", "stage", "d-x3", "fb", "nothex", NULL, 5000);
    assert_false(r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->reason, "invalid artifact"));
    sn_envelope_free(&r);
    /* The validator itself refuses an artifact that is not in the store. */
    r = s_call("firebase.validate", "validate", "d-x4", "fb",
               "0000000000000000000000000000000000000000000000000000000000000000", NULL, 5000);
    assert_false(r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->reason, "not in the store"));
    sn_envelope_free(&r);
    r = s_call("firebase.validate", "stage", "d-x5", "fb", s_w->good, NULL, 5000);
    assert_false(r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->reason, "unknown op"));
    sn_envelope_free(&r);
    /* And answers the good artifact with what a deploy uploads. */
    r = s_call("firebase.validate", "validate", "d-x6", "fb", s_w->good, NULL, 5000);
    assert_true(r->deploy_result->ok);
    assert_int_equal(r->deploy_result->function_count, 1);
    assert_int_equal(r->deploy_result->n_problems, 0);
    sn_envelope_free(&r);
    r = s_call("firebase.validate", "validate", "d-x7", "fb", s_w->bad, NULL, 5000);
    assert_false(r->deploy_result->ok);
    assert_int_equal(r->deploy_result->n_problems, 2);
    sn_envelope_free(&r);
    assert_int_equal(s_seen_any("d-x1") + s_seen_any("d-x2") + s_seen_any("d-x3"), 0);
}

static bool s_held(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&s_w->mu);
    bool held = s_w->held_count > 0;
    pthread_mutex_unlock(&s_w->mu);
    return held;
}

typedef struct {
    const char *deploy_id;
    int count;
} s_stage_wait_t;

static bool s_hosting_stage_seen(void *arg)
{
    s_stage_wait_t *w = arg;
    return s_seen("firebase.hosting", "stage", w->deploy_id) >= w->count;
}

/* Waits for @cond (NULL: only for the result) while keeping the mesh client alive (it must
 * read the broker's heartbeats); the result of request @rid, when it comes, goes into
 * *res and *got. */
static bool s_pump_until(bool (*cond)(void *), void *arg, int timeout_ms, uint64_t rid,
                         sn_rpc_result_t *res, bool *got)
{
    int64_t until = sn_mono_ms() + timeout_ms;
    while (sn_mono_ms() < until) {
        if (cond ? cond(arg) : *got)
            return true;
        zmq_pollitem_t item = {.socket = sn_rpc_socket(s_w->m.client), .events = ZMQ_POLLIN};
        (void)zmq_poll(&item, 1, 20);
        sn_rpc_result_t r;
        while (sn_rpc_recv(s_w->m.client, &r) == SN_OK) {
            if (r.request_id == rid && !*got) {
                *res = r;
                *got = true;
            } else {
                sn_rpc_result_fini(&r);
            }
        }
    }
    return cond ? cond(arg) : *got;
}

static void test_firebase_executor_failover_resumes_through_firebase_sync(void **state)
{
    (void)state;
    /* A ledger job as buildpilot creates it. */
    sn_source_t src;
    sn_source_init(&src, "test", "ledger");
    sn_leader_t *leader = sn_leader_new(s_w->redis, "buildpilot", "test-lead", 30000);
    uint64_t fence = 0;
    assert_int_equal(sn_leader_try(leader, &fence), SN_OK);
    sn_ledger_t *ledger = sn_ledger_new(s_w->redis, &src);
    Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
    spec.job_id = "run-1.stage.fb";
    spec.kind = "stage";
    spec.service = "deploy.firebase";
    spec.owner_role = "buildpilot";
    spec.lease_ms = 5000;
    assert_int_equal(sn_ledger_create(ledger, fence, "buildpilot", &spec), SN_OK);

    pthread_mutex_lock(&s_w->mu);
    sn_strlcpy(s_w->hold_hosting_stage, "d-fo", sizeof s_w->hold_hosting_stage);
    pthread_mutex_unlock(&s_w->mu);

    /* deploy.firebase, asynchronously: the executor is killed while it waits. */
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    d.deploy_id = "d-fo";
    d.run_id = "run-1";
    d.project = "web";
    d.environment = "prod";
    d.target = "fb";
    Sentinel__V1__DeployRequest dr = SENTINEL__V1__DEPLOY_REQUEST__INIT;
    dr.op = "stage";
    dr.deploy = &d;
    dr.artifact_sha256 = s_w->good;
    dr.commit = "c0ffee";
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &s_w->m.source, "deploy.request", id);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST;
    env.deploy_request = &dr;
    sn_envelope_add_label(&env, "job_id", "run-1.stage.fb");
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&env, &len);
    sn_envelope_fini_labels(&env);
    uint64_t rid = 0;
    assert_int_equal(sn_rpc_send(s_w->m.client, "deploy.firebase", bytes, len, 45000, 1, &rid),
                     SN_OK);
    free(bytes);
    sn_rpc_result_t res;
    memset(&res, 0, sizeof res);
    bool got = false;
    assert_true(s_pump_until(s_held, NULL, 15000, rid, &res, &got));

    /* kill -9 the leading executor. */
    char *lock = sn_mesh_get(&s_w->m, "leader:firebase-executor");
    assert_non_null(lock);
    const char *inst = strrchr(lock, '|');
    assert_non_null(inst);
    sn_mesh_agent_t *victim = sn_mesh_find(&s_w->m, inst + 1);
    assert_non_null(victim);
    assert_int_equal(kill(victim->pid, SIGKILL), 0);
    assert_true(sn_test_stop(victim->pid, SIGKILL, 2000) >= 0);
    victim->pid = 0;
    free(lock);
    /* The held call is answered now (to a dead caller); the standby asks again. */
    s_w->release_held = 1;
    s_stage_wait_t sw = {"d-fo", 2};
    assert_true(s_pump_until(s_hosting_stage_seen, &sw, 20000, rid, &res, &got));
    assert_true(s_pump_until(NULL, NULL, 30000, rid, &res, &got));
    assert_false(res.is_nak);
    sn_envelope_t *r = sn_envelope_unpack(res.body, res.body_len, SN_MAX_FRAME_BYTES, NULL);
    sn_rpc_result_fini(&res);
    assert_non_null(r);
    if (!r->deploy_result->ok)
        print_error("failover stage: %s\n", r->deploy_result->reason);
    assert_true(r->deploy_result->ok);
    assert_string_equal(r->deploy_result->deploy->preview_url, "http://preview.test/d-fo");
    sn_envelope_free(&r);

    /* Resumed, not redone: validation once, functions once. */
    assert_int_equal(sn_test_count_in_file(s_w->m.agents[0].log, "valid deploy=d-fo"), 1);
    assert_int_equal(s_seen("firebase.functions", "stage", "d-fo"), 1);
    assert_int_equal(s_seen("firebase.hosting", "stage", "d-fo"), 2);
    char steps[64][64];
    size_t n = s_steps("d-fo", steps, 64);
    assert_true(s_index(steps, n, "stage.final.done") >= 0);

    /* firebase-sync completed the job with the result, and recorded progress in it. */
    sn_ledger_job_t job;
    assert_int_equal(sn_ledger_get(ledger, "run-1.stage.fb", &job), SN_OK);
    assert_int_equal(job.state, SN_JOB_DONE);
    assert_true(job.ok);
    assert_int_equal(job.epoch, 1);
    sn_ledger_job_fini(&job);
    char *progress = sn_mesh_hget(&s_w->m, "job:run-1.stage.fb:fx", "firebase_step");
    assert_non_null(progress);
    assert_non_null(strstr(progress, "stage "));
    free(progress);
    /* A redelivery gets the stored result. */
    r = s_call("deploy.firebase", "stage", "d-fo", "fb", s_w->good, "run-1.stage.fb", 10000);
    assert_non_null(r);
    assert_true(r->deploy_result->ok);
    sn_envelope_free(&r);
    /* deploy.firebase without a job: promote end to end. */
    r = s_call("deploy.firebase", "promote", "d-fo", "fb", s_w->good, NULL, 20000);
    assert_non_null(r);
    assert_true(r->deploy_result->ok);
    assert_string_equal(r->deploy_result->deploy->live_url, "http://live.test/");
    sn_envelope_free(&r);
    r = s_call("deploy.firebase", "stage", "d-nj", "fb", s_w->good, "no-such-job", 5000);
    assert_false(r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->reason, "unknown job"));
    sn_envelope_free(&r);
    r = s_call("deploy.firebase", "stage", "d-nj", "fb", s_w->good, "bad job!", 5000);
    assert_false(r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->reason, "malformed job id"));
    sn_envelope_free(&r);
    assert_int_equal(s_seen_any("d-nj"), 0);
    r = s_call("deploy.firebase", "stage", "", "fb", s_w->good, NULL, 5000);
    assert_false(r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->reason, "invalid deploy"));
    sn_envelope_free(&r);
    sn_ledger_destroy(&ledger);
    sn_leader_destroy(&leader);
}

typedef struct {
    const char *name;
    int count;
} s_alert_wait_t;

static bool s_alert_count_at_least(void *arg)
{
    s_alert_wait_t *a = arg;
    return s_alerts(a->name) >= a->count;
}

static void s_hset(const char *key, const char *field, const char *value)
{
    char *k = sn_strdupf("%s%s", s_w->m.ns, key);
    const char *argv[] = {"HSET", k, field, value};
    redisReply *r = NULL;
    assert_int_equal(sn_redis_cmd(s_w->redis, SN_REDIS_MAIN, 2000, &r, 4, argv, NULL), SN_OK);
    freeReplyObject(r);
    free(k);
}

/* The label @key of the newest alert named @name, or NULL (static copy). */
static const char *s_alert_label(const char *name, const char *key)
{
    static char out[128];
    out[0] = '\0';
    size_t count = 0;
    sn_envelope_t **envs = sn_mesh_journal(&s_w->m, s_w->redis, &count);
    for (size_t i = 0; i < count; i++) {
        const sn_envelope_t *e = envs[i];
        if (strcmp(e->type, "alert.raised") != 0 || !e->alert || strcmp(e->alert->name, name))
            continue;
        if (strcmp(key, "severity") == 0)
            snprintf(out, sizeof out, "%s", e->alert->severity);
        for (size_t l = 0; l < e->alert->n_labels; l++)
            if (strcmp(e->alert->labels[l]->key, key) == 0)
                snprintf(out, sizeof out, "%s", e->alert->labels[l]->value);
    }
    sn_mesh_envelopes_free(envs, count);
    return out[0] ? out : NULL;
}

static void test_cloud_sync_sentinel_drift_and_resource(void **state)
{
    (void)state;
    /* Recorded: a version the site does not serve (nothing was released at the fake). */
    s_hset("firebase:live:web:prod:fb", "hosting_version", "sites/demo-site/versions/v-zzz");
    s_hset("firebase:live:web:prod:fb", "deploy_id", "d-zzz");
    char day[16];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(day, sizeof day, "%Y%m%d", &tm);
    char *ukey = sn_strdupf("firebase:usage:web:prod:fb:%s", day);
    s_hset(ukey, "deploys", "5"); /* budget_deploys_per_day: 2 */
    free(ukey);

    sn_mesh_agent_bin(&s_w->m, "sentinel-agent", "cloud-sync-sentinel", "css1");
    assert_true(sn_mesh_wait_service(&s_w->m, "firebase.sync", 1, 15000));

    s_alert_wait_t drift1 = {"firebase.drift", 1}, res1 = {"firebase.resource", 1};
    assert_true(sn_test_wait_for(s_alert_count_at_least, &drift1, 20000));
    assert_true(sn_test_wait_for(s_alert_count_at_least, &res1, 20000));
    assert_string_equal(s_alert_label("firebase.drift", "severity"), "warning");
    assert_string_equal(s_alert_label("firebase.drift", "target"), "fb");
    assert_string_equal(s_alert_label("firebase.resource", "severity"), "warning");
    assert_string_equal(s_alert_label("firebase.resource", "kind"), "deploys_per_day");
    assert_string_equal(s_alert_label("firebase.resource", "used"), "5");
    assert_string_equal(s_alert_label("firebase.resource", "budget"), "2");
    /* Once per drift and once per budget and day: several passes add nothing. */
    assert_true(sn_mesh_wait_log(&s_w->m, "css1", "drift target=web/prod/fb", 5000));
    s_alert_wait_t drift2 = {"firebase.drift", 2}, res2 = {"firebase.resource", 2};
    assert_false(sn_test_wait_for(s_alert_count_at_least, &drift2, 1500));
    assert_false(sn_test_wait_for(s_alert_count_at_least, &res2, 10));

    /* firebase.sync: one comparison now. */
    sn_envelope_t *r = s_call("firebase.sync", "check", "d-zzz", "fb", NULL, NULL, 10000);
    assert_non_null(r);
    assert_false(r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->reason, "out of sync: hosting: live version is "
                                                     "(none), recorded "
                                                     "sites/demo-site/versions/v-zzz"));
    sn_envelope_free(&r);
    r = s_call("firebase.sync", "check", "d-zzz", "plain", NULL, NULL, 10000);
    assert_false(r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->reason, "not a firebase target"));
    sn_envelope_free(&r);

    /* In sync again (nothing recorded to compare): the drift is resolved... */
    s_hset("firebase:live:web:prod:fb", "hosting_version", "");
    assert_true(sn_mesh_wait_log(&s_w->m, "css1", "drift resolved target=web/prod/fb", 10000));
    r = s_call("firebase.sync", "check", "d-zzz", "fb", NULL, NULL, 10000);
    assert_true(r->deploy_result->ok);
    sn_envelope_free(&r);
    /* ...and a new drift alerts again. */
    s_hset("firebase:live:web:prod:fb", "hosting_version", "sites/demo-site/versions/v-yyy");
    assert_true(sn_test_wait_for(s_alert_count_at_least, &drift2, 10000));
    assert_int_equal(s_alerts("firebase.resource"), 1);
}

typedef struct {
    const char *key, *field, *value;
} s_hwait_t;

static bool s_hash_is(void *arg)
{
    s_hwait_t *h = arg;
    char *v = sn_mesh_hget(&s_w->m, h->key, h->field);
    bool ok = v && strcmp(v, h->value) == 0;
    free(v);
    return ok;
}

/* The real workers (hosting-propagator, function-handler) against the fake, in place of
 * the stand-ins; cloud-sync-sentinel still watching. */
static void test_firebase_executor_with_real_workers(void **state)
{
    (void)state;
    s_w->stop = 1;
    pthread_join(s_w->thread, NULL);
    s_w->stop = 0;
    char *lkey = sn_strdupf("%sfirebase:live:web:prod:fb", s_w->m.ns);
    const char *argv[] = {"DEL", lkey};
    redisReply *rr = NULL;
    assert_int_equal(sn_redis_cmd(s_w->redis, SN_REDIS_MAIN, 2000, &rr, 2, argv, NULL), SN_OK);
    freeReplyObject(rr);
    free(lkey);
    int drifts = s_alerts("firebase.drift");
    sn_mesh_agent_bin(&s_w->m, "sentinel-agent", "hosting-propagator", "hp1");
    sn_mesh_agent_bin(&s_w->m, "sentinel-agent", "function-handler", "fh1");
    assert_true(sn_mesh_wait_service(&s_w->m, "firebase.hosting", 1, 15000));
    assert_true(sn_mesh_wait_service(&s_w->m, "firebase.functions", 1, 15000));

    sn_envelope_t *r = s_call("firebase.deploy", "stage", "d-real", "fb", s_w->good, NULL, 60000);
    assert_non_null(r);
    if (!r->deploy_result->ok)
        print_error("real stage: %s\n", r->deploy_result->reason);
    assert_true(r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->deploy->preview_url, "/__site/demo-site/channel/"));
    assert_non_null(strstr(r->deploy_result->deploy->release_id, "sites/demo-site/versions/"));
    sn_envelope_free(&r);
    r = s_call("firebase.deploy", "promote", "d-real", "fb", s_w->good, NULL, 60000);
    assert_non_null(r);
    if (!r->deploy_result->ok)
        print_error("real promote: %s\n", r->deploy_result->reason);
    assert_true(r->deploy_result->ok);
    char *identity =
        sn_strdupf("%s/.well-known/sentinel-release.json", r->deploy_result->deploy->live_url);
    char *version = sn_strdup(r->deploy_result->deploy->release_id);
    sn_envelope_free(&r);
    /* The site serves this deploy's identity; the record names the live version. */
    sn_http_t *http = sn_http_new();
    sn_http_request_t req = {.url = identity, .timeout_ms = 5000};
    sn_http_response_t resp;
    assert_int_equal(sn_http_perform(http, &req, &resp), SN_OK);
    assert_int_equal(resp.status, 200);
    assert_non_null(strstr(resp.body, "\"deployId\":\"d-real\""));
    sn_http_response_fini(&resp);
    sn_http_destroy(&http);
    free(identity);
    s_hwait_t hv = {"firebase:live:web:prod:fb", "hosting_version", version};
    assert_true(s_hash_is(&hv));
    /* The watch takes the functions baseline after the deploy and finds no drift. */
    s_hwait_t seen = {"firebase:live:web:prod:fb", "functions_seen", "1"};
    assert_true(sn_test_wait_for(s_hash_is, &seen, 15000));
    char *base = sn_mesh_hget(&s_w->m, "firebase:live:web:prod:fb", "fn:api");
    assert_non_null(base);
    free(base);
    r = s_call("firebase.sync", "check", "d-real", "fb", NULL, NULL, 10000);
    assert_true(r->deploy_result->ok);
    sn_envelope_free(&r);
    assert_int_equal(s_alerts("firebase.drift"), drifts);
    free(version);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_firebase_executor_stage_order_promote_rollback),
        cmocka_unit_test(test_firebase_executor_hosting_failure_rolls_back_functions),
        cmocka_unit_test(test_firebase_executor_validation_failure_uploads_nothing),
        cmocka_unit_test(test_firebase_executor_failover_resumes_through_firebase_sync),
        cmocka_unit_test(test_cloud_sync_sentinel_drift_and_resource),
        cmocka_unit_test(test_firebase_executor_with_real_workers),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
