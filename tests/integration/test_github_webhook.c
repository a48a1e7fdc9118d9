/* POST /webhooks/github on the real gateway process (sentinel-agent gateway) against a
 * real redis-server and broker: every fixture of shared/fixtures/github/ (byte for byte,
 * signed with the test secret) produces the expected github.<event> journal entry with
 * the normalised GithubEvent; a bad, missing or SHA-1-only signature and a tampered body
 * get 401 and record nothing (no journal entry, no delivery key); the same delivery twice
 * and a second delivery with the same meaning are recorded once; ping is answered 200
 * and unknown events 202, both recording nothing; an oversize body 413, a form-encoded
 * hook 415, a repository off the allow-list 403, missing headers and bad JSON 400; and,
 * with build-validator running behind it, a completed workflow_run delivered again and
 * again gives ONE run.trigger (a fake buildpilot worker in this process counts them). */
#include "sn_mesh.h"

#include <czmq.h>
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "sentinel/sn_crypto.h"
#include "sentinel/sn_redis.h"
#include "sentinel/sn_webhook.h"
#include "sentinel/sn_worker.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#define S_SECRET "It's a Secret to Everybody"
#define S_MAX_BYTES 65536
#define S_FIXTURES SN_SHARED_DIR "/fixtures/github"

/* ---- the fake buildpilot: counts run.trigger per (project, sha) ------------------------- */

static struct {
    pthread_mutex_t mu;
    char keys[64][128];
    size_t n;
    int stop;
    pthread_t th;
    const char *endpoint;
} s_bp = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void s_bp_answer(sn_worker_t *w, sn_worker_event_t *ev, sn_source_t *src)
{
    sn_envelope_t *env = sn_envelope_unpack(ev->body, ev->body_len, SN_MAX_FRAME_BYTES, NULL);
    if (!env || env->body_case != SENTINEL__V1__ENVELOPE__BODY_TRIGGER) {
        if (sn_worker_nak(w, &ev->ticket, SN_NAK_INVALID) != SN_OK)
            fprintf(stderr, "fake: nak dropped\n");
        sn_envelope_free(&env);
        return;
    }
    pthread_mutex_lock(&s_bp.mu);
    if (s_bp.n < SN_ARRAY_LEN(s_bp.keys))
        snprintf(s_bp.keys[s_bp.n++], sizeof s_bp.keys[0], "%s/%s", env->trigger->project,
                 env->trigger->sha);
    pthread_mutex_unlock(&s_bp.mu);
    Sentinel__V1__RunRef ref = SENTINEL__V1__RUN_REF__INIT;
    ref.run_id = "run-1";
    ref.state = SENTINEL__V1__RUN_STATE__RUN_QUEUED;
    sn_envelope_t reply;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&reply, src, "run.ref", id);
    reply.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN_REF;
    reply.run_ref = &ref;
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&reply, &len);
    if (sn_worker_reply(w, &ev->ticket, bytes, len) != SN_OK)
        fprintf(stderr, "fake: reply dropped\n");
    free(bytes);
    sn_envelope_free(&env);
}

static void *s_bp_thread(void *arg)
{
    (void)arg;
    sn_source_t src;
    sn_source_init(&src, "fake-buildpilot", "f1");
    sn_worker_t *w = sn_worker_new(s_bp.endpoint, NULL);
    SN_ASSERT(w);
    sn_worker_set_heartbeat(w, 200, 3);
    SN_ASSERT(sn_worker_serve(w, "run.trigger", 4) == SN_OK);
    while (!__atomic_load_n(&s_bp.stop, __ATOMIC_ACQUIRE)) {
        zmq_pollitem_t it = {.socket = sn_worker_socket(w), .events = ZMQ_POLLIN};
        zmq_poll(&it, 1, 50);
        sn_worker_event_t ev;
        while (sn_worker_recv(w, &ev) == SN_OK) {
            if (ev.type == SN_WORKER_REQUEST)
                s_bp_answer(w, &ev, &src);
            sn_worker_event_fini(&ev);
        }
    }
    sn_worker_destroy(&w);
    return NULL;
}

static int s_bp_count(const char *project, const char *sha)
{
    char key[128];
    snprintf(key, sizeof key, "%s/%s", project, sha);
    int c = 0;
    pthread_mutex_lock(&s_bp.mu);
    for (size_t i = 0; i < s_bp.n; i++)
        c += strcmp(s_bp.keys[i], key) == 0;
    pthread_mutex_unlock(&s_bp.mu);
    return c;
}

typedef struct {
    sn_mesh_t m;
    pid_t gw;
    char *gw_log;
    char base[64];
    sn_redis_t *redis;
    int delivery_seq;
} s_world_t;

static s_world_t W;
static bool s_quiet;

/* ---- HTTP -------------------------------------------------------------------------------- */

typedef struct {
    long status;
    char *body;
    size_t len;
} s_resp_t;

static size_t s_collect(char *data, size_t size, size_t n, void *arg)
{
    s_resp_t *r = arg;
    size_t add = size * n;
    r->body = sn_realloc(r->body, r->len + add + 1);
    memcpy(r->body + r->len, data, add);
    r->len += add;
    r->body[r->len] = '\0';
    return add;
}

/* A delivery: @headers are extra "Name: value" lines (NULL-terminated, may be NULL). */
static s_resp_t s_post(const char *path, const char *body, size_t len, const char *const *headers)
{
    s_resp_t r = {0};
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "%s%s", W.base, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    h = curl_slist_append(h, "User-Agent: GitHub-Hookshot/044aadd");
    for (size_t i = 0; headers && headers[i]; i++)
        h = curl_slist_append(h, headers[i]);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    else if (!s_quiet)
        fprintf(stderr, "curl POST %s: %s\n", path, curl_easy_strerror(rc));
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (!r.body)
        r.body = sn_strdup("");
    return r;
}

typedef struct {
    char event[64];
    char delivery[64];
    char sig[128]; /* "" = no signature header */
    char ctype[96];
    const char *extra; /* another header line, or NULL */
} s_hdrs_t;

static s_hdrs_t s_hdrs(const char *event, const char *body, size_t len)
{
    s_hdrs_t h = {0};
    snprintf(h.event, sizeof h.event, "%s", event);
    snprintf(h.delivery, sizeof h.delivery, "72d3162e-cc78-11e3-81ab-%012d", ++W.delivery_seq);
    char sig[72];
    assert_int_equal(sn_webhook_sign_github(S_SECRET, strlen(S_SECRET), body, len, sig), SN_OK);
    snprintf(h.sig, sizeof h.sig, "%s", sig);
    snprintf(h.ctype, sizeof h.ctype, "application/json");
    return h;
}

static s_resp_t s_deliver(const s_hdrs_t *d, const char *body, size_t len)
{
    char ev[96], del[96], sig[160], ct[128];
    const char *lines[6];
    size_t n = 0;
    if (d->event[0]) {
        snprintf(ev, sizeof ev, "X-GitHub-Event: %s", d->event);
        lines[n++] = ev;
    }
    if (d->delivery[0]) {
        snprintf(del, sizeof del, "X-GitHub-Delivery: %s", d->delivery);
        lines[n++] = del;
    }
    if (d->sig[0]) {
        snprintf(sig, sizeof sig, "X-Hub-Signature-256: %s", d->sig);
        lines[n++] = sig;
    }
    snprintf(ct, sizeof ct, "Content-Type: %s", d->ctype);
    lines[n++] = ct;
    if (d->extra)
        lines[n++] = d->extra;
    lines[n] = NULL;
    return s_post("/webhooks/github", body, len, lines);
}

static const char *s_status_field(const s_resp_t *r)
{
    static char out[64];
    json_t *j = json_loads(r->body, 0, NULL);
    const char *s = json_string_value(json_object_get(j, "status"));
    if (!s)
        s = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    snprintf(out, sizeof out, "%s", s ? s : "(none)");
    json_decref(j);
    return out;
}

static bool s_healthy(void *arg)
{
    (void)arg;
    s_resp_t r = {0};
    CURL *c = curl_easy_init();
    char url[128];
    snprintf(url, sizeof url, "%s/healthz", W.base);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 2000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_easy_cleanup(c);
    free(r.body);
    return r.status == 200;
}

/* ---- journal ------------------------------------------------------------------------------- */

/* The github.* entries recorded so far (free with sn_mesh_envelopes_free). */
static sn_envelope_t **s_github_events(size_t *count)
{
    size_t n = 0;
    sn_envelope_t **all = sn_mesh_journal(&W.m, W.redis, &n);
    sn_envelope_t **out = sn_calloc(n + 1, sizeof *out);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(all[i]->type, "github.", 7) == 0) {
            out[k++] = all[i];
            all[i] = NULL;
        }
    }
    for (size_t i = 0; i < n; i++)
        sn_envelope_free(&all[i]);
    free(all);
    *count = k;
    return out;
}

static size_t s_github_count(void)
{
    size_t n = 0;
    sn_envelope_t **evs = s_github_events(&n);
    sn_mesh_envelopes_free(evs, n);
    return n;
}

/* The recorded event of delivery @delivery (a copy: caller frees), or NULL. */
static sn_envelope_t *s_find(const char *delivery)
{
    size_t n = 0;
    sn_envelope_t **evs = s_github_events(&n);
    sn_envelope_t *found = NULL;
    for (size_t i = 0; i < n && !found; i++)
        if (evs[i]->body_case == SENTINEL__V1__ENVELOPE__BODY_GITHUB_EVENT &&
            strcmp(evs[i]->github_event->delivery_id, delivery) == 0) {
            found = evs[i];
            evs[i] = NULL;
        }
    sn_mesh_envelopes_free(evs, n);
    return found;
}

static char *s_fixture(const char *name, size_t *len)
{
    char *path = sn_strdupf("%s/%s", S_FIXTURES, name);
    char *text = sn_test_read_file(path);
    free(path);
    assert_non_null(text);
    *len = strlen(text);
    return text;
}

/* ---- setup -------------------------------------------------------------------------------- */

static int s_setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    memset(&W, 0, sizeof W);
    int port = sn_test_free_port();
    snprintf(W.base, sizeof W.base, "http://127.0.0.1:%d", port);
    char *yaml = sn_strdupf(
        "projects:\n"
        "  - name: hello\n    source_type: github\n    github_repo: Codertocat/Hello-World\n"
        "    poll_interval_ms: 0\n"
        "    environments: [{name: production, branch: main, targets: [web]}]\n"
        "  - name: octo\n    source_type: github\n    github_repo: octo-org/octo-repo\n"
        "    poll_interval_ms: 0\n"
        "    environments: [{name: production, branch: master, targets: [web]}]\n"
        "targets:\n"
        "  - {name: web, type: local_static, listen: \"127.0.0.1:%d\", "
        "preview_listen: \"127.0.0.1:%d\"}\n"
        "github:\n"
        "  api_base: http://127.0.0.1:%d\n"
        "  token: test-token\n"
        "  webhook_secret: \"%s\"\n"
        "  max_webhook_bytes: %d\n"
        "gateway:\n"
        "  listen: 127.0.0.1:%d\n",
        sn_test_free_port(), sn_test_free_port(), sn_test_free_port(), S_SECRET, S_MAX_BYTES, port);
    bool ok = sn_mesh_start(&W.m, "ghwebhook", yaml);
    free(yaml);
    assert_true(ok);
    char *state_dir = sn_strdupf("%s/var", W.m.dir);
    mkdir(state_dir, 0755);
    free(state_dir);
    sn_redis_opts_t ro = {
        .unix_path = W.m.redis.unix_path, .namespace_ = W.m.ns, .timeout_ms = 2000};
    W.redis = sn_redis_new(&ro);
    assert_non_null(W.redis);
    W.gw_log = sn_strdupf("%s/gateway.log", W.m.dir);
    char *bin = sn_test_bin("sentinel-agent");
    char *argv[] = {bin, "gateway", "--config", W.m.config, "--instance", "gw1", NULL};
    W.gw = sn_test_spawn(argv, W.gw_log);
    free(bin);
    assert_true(W.gw > 0);
    s_quiet = true;
    assert_true(sn_test_wait_for(s_healthy, NULL, 15000));
    s_quiet = false;
    /* build-validator behind the gateway, and a fake buildpilot. */
    s_bp.endpoint = W.m.rpc;
    assert_int_equal(pthread_create(&s_bp.th, NULL, s_bp_thread, NULL), 0);
    (void)sn_mesh_agent_bin(&W.m, "sentinel-agent", "build-validator", "bv1");
    assert_true(sn_mesh_wait_service(&W.m, "build.local", 1, 15000));
    assert_true(sn_mesh_wait_service(&W.m, "run.trigger", 1, 15000));
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    int st = sn_test_stop(W.gw, SIGTERM, 5000);
    bool clean = st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    char *log = sn_test_read_file(W.gw_log);
    if (!clean || getenv("SN_MESH_DUMP"))
        fprintf(stderr, "---- gateway (status %d) ----\n%s", st, log ? log : "");
    /* The secret never reaches the log. */
    bool leaked = log && strstr(log, S_SECRET);
    free(log);
    __atomic_store_n(&s_bp.stop, 1, __ATOMIC_RELEASE);
    pthread_join(s_bp.th, NULL);
    sn_redis_destroy(&W.redis);
    int bad = sn_mesh_stop(&W.m);
    free(W.gw_log);
    curl_global_cleanup();
    return clean && bad == 0 && !leaked ? 0 : -1;
}

/* ---- tests -------------------------------------------------------------------------------- */

typedef struct {
    const char *file;
    const char *event;
    const char *repo;
    const char *action;
    const char *head_sha;
    const char *head_branch;
    uint64_t run_id;
    const char *status;
    const char *conclusion;
    uint64_t pr_number;
    uint64_t job_id;
} s_expect_t;

static const s_expect_t s_fixtures[] = {
    {"push.json", "push", "Codertocat/Hello-World", "", "0000000000000000000000000000000000000000",
     "", 0, "", "", 0, 0},
    {"push.new_branch.json", "push", "Codertocat/Hello-World", "",
     "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "master", 0, "", "", 0, 0},
    {"workflow_run.requested.json", "workflow_run", "octo-org/octo-repo", "requested",
     "3484a3fb816e0859fd6e1cea078d76385ff50625", "master", 289782451, "queued", "", 0, 0},
    {"workflow_run.completed.json", "workflow_run", "octo-org/octo-repo", "completed",
     "3484a3fb816e0859fd6e1cea078d76385ff50625", "master", 289782451, "completed", "success", 0, 0},
    {"workflow_job.queued.json", "workflow_job", "Codertocat/Hello-World", "queued",
     "3484a3fb816e0859fd6e1cea078d76385ff50625", "main", 2202229078, "queued", "", 0, 289782451},
    {"workflow_job.in_progress.json", "workflow_job", "Codertocat/Hello-World", "in_progress",
     "3484a3fb816e0859fd6e1cea078d76385ff50625", "main", 2202229078, "in_progress", "", 0,
     289782451},
    {"workflow_job.completed.json", "workflow_job", "Codertocat/Hello-World", "completed",
     "3484a3fb816e0859fd6e1cea078d76385ff50625", "main", 2202229078, "completed", "success", 0,
     289782451},
    {"workflow_job.completed.failure.json", "workflow_job", "Codertocat/Hello-World", "completed",
     "3484a3fb816e0859fd6e1cea078d76385ff50625", "main", 2202229078, "completed", "failure", 0,
     289782451},
    {"check_suite.completed.json", "check_suite", "Codertocat/Hello-World", "completed",
     "ec26c3e57ca3a959ca5aad62de7213c562f8c821", "changes", 0, "completed", "success", 2, 0},
    {"check_run.completed.json", "check_run", "Codertocat/Hello-World", "completed", NULL, NULL, 0,
     "completed", NULL, 2, 0},
    {"pull_request.opened.json", "pull_request", "Codertocat/Hello-World", "opened", NULL, NULL, 0,
     "", "", 2, 0},
    {"pull_request.synchronize.json", "pull_request", "Codertocat/Hello-World", "synchronize", NULL,
     NULL, 0, "", "", 2, 0},
    {"pull_request_review.submitted.json", "pull_request_review", "Codertocat/Hello-World",
     "submitted", NULL, NULL, 0, "", "", 2, 0},
    {"deployment.created.json", "deployment", "Codertocat/Hello-World", "created", NULL, NULL, 0,
     "", "", 0, 0},
    {"deployment_status.created.json", "deployment_status", "Codertocat/Hello-World", "created",
     "f95f852bd8fca8fcc58a9a2d6c842781e32a215e", NULL, 0, "", "", 0, 0},
};

static void s_check_event(const s_expect_t *x, const char *delivery, const char *body, size_t len)
{
    sn_envelope_t *env = s_find(delivery);
    if (!env)
        fprintf(stderr, "no journal entry for %s\n", x->file);
    assert_non_null(env);
    char type[64];
    snprintf(type, sizeof type, "github.%s", x->event);
    assert_string_equal(env->type, type);
    assert_int_equal(env->body_case, SENTINEL__V1__ENVELOPE__BODY_GITHUB_EVENT);
    const Sentinel__V1__GithubEvent *ev = env->github_event;
    assert_string_equal(ev->event, x->event);
    assert_string_equal(ev->repo, x->repo);
    assert_string_equal(ev->action, x->action);
    if (x->head_sha)
        assert_string_equal(ev->head_sha, x->head_sha);
    if (x->head_branch)
        assert_string_equal(ev->head_branch, x->head_branch);
    assert_true(ev->run_id == x->run_id);
    if (x->status)
        assert_string_equal(ev->status, x->status);
    if (x->conclusion)
        assert_string_equal(ev->conclusion, x->conclusion);
    assert_true(ev->pr_number == x->pr_number);
    assert_true(ev->job_id == x->job_id || x->job_id == 0);
    /* The body hash is of the exact bytes delivered. */
    uint8_t d[SN_SHA256_LEN];
    char hex[SN_SHA256_HEX_LEN + 1];
    assert_int_equal(sn_sha256(body, len, d), SN_OK);
    sn_hex_encode(d, sizeof d, hex);
    assert_string_equal(ev->body_sha256, hex);
    assert_true(ev->received_unix_ms > 0);
    sn_envelope_free(&env);
}

static void test_github_webhook_every_fixture_is_recorded(void **state)
{
    (void)state;
    size_t before = s_github_count();
    for (size_t i = 0; i < SN_ARRAY_LEN(s_fixtures); i++) {
        const s_expect_t *x = &s_fixtures[i];
        size_t len = 0;
        char *body = s_fixture(x->file, &len);
        s_hdrs_t h = s_hdrs(x->event, body, len);
        s_resp_t r = s_deliver(&h, body, len);
        if (r.status != 202)
            fprintf(stderr, "%s: %ld %s\n", x->file, r.status, r.body);
        assert_int_equal(r.status, 202);
        assert_string_equal(s_status_field(&r), "recorded");
        free(r.body);
        s_check_event(x, h.delivery, body, len);
        free(body);
    }
    /* workflow_run.in_progress: derived from requested (no upstream example exists). */
    size_t len = 0;
    char *req = s_fixture("workflow_run.requested.json", &len);
    json_t *j = json_loads(req, 0, NULL);
    free(req);
    assert_non_null(j);
    json_object_set_new(j, "action", json_string("in_progress"));
    json_object_set_new(json_object_get(j, "workflow_run"), "status", json_string("in_progress"));
    char *body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    len = strlen(body);
    s_hdrs_t h = s_hdrs("workflow_run", body, len);
    s_resp_t r = s_deliver(&h, body, len);
    assert_int_equal(r.status, 202);
    free(r.body);
    const s_expect_t x = {"(derived) workflow_run.in_progress",
                          "workflow_run",
                          "octo-org/octo-repo",
                          "in_progress",
                          "3484a3fb816e0859fd6e1cea078d76385ff50625",
                          "master",
                          289782451,
                          "in_progress",
                          "",
                          0,
                          0};
    s_check_event(&x, h.delivery, body, len);
    free(body);
    assert_int_equal(s_github_count(), before + SN_ARRAY_LEN(s_fixtures) + 1);
    /* The workflow name of the fixture comes from workflow.name (workflow_run.name is ""). */
    sn_envelope_t *env = s_find(h.delivery);
    assert_string_equal(env->github_event->workflow_name, "test");
    sn_envelope_free(&env);

    /* ping: answered, nothing recorded. */
    char *ping = s_fixture("ping.json", &len);
    h = s_hdrs("ping", ping, len);
    r = s_deliver(&h, ping, len);
    assert_int_equal(r.status, 200);
    free(r.body);
    free(ping);
    assert_int_equal(s_github_count(), before + SN_ARRAY_LEN(s_fixtures) + 1);
}

static bool s_delivery_key_absent(const char *delivery)
{
    char *key = sn_strdupf("delivery:%s", delivery);
    char *v = sn_mesh_get(&W.m, key);
    free(key);
    bool absent = !v || !*v;
    free(v);
    return absent;
}

static void test_github_webhook_bad_signatures_record_nothing(void **state)
{
    (void)state;
    size_t before = s_github_count();
    size_t len = 0;
    char *body = s_fixture("push.new_branch.json", &len);

    /* Signed with another secret. */
    s_hdrs_t h = s_hdrs("push", body, len);
    char sig[72];
    assert_int_equal(sn_webhook_sign_github("wrong secret", 12, body, len, sig), SN_OK);
    snprintf(h.sig, sizeof h.sig, "%s", sig);
    s_resp_t r = s_deliver(&h, body, len);
    assert_int_equal(r.status, 401);
    free(r.body);
    assert_true(s_delivery_key_absent(h.delivery));

    /* No signature at all. */
    h = s_hdrs("push", body, len);
    h.sig[0] = '\0';
    r = s_deliver(&h, body, len);
    assert_int_equal(r.status, 401);
    free(r.body);
    assert_true(s_delivery_key_absent(h.delivery));

    /* SHA-1 only: the legacy header with a correct sha1= HMAC is no fallback. */
    h = s_hdrs("push", body, len);
    h.sig[0] = '\0';
    uint8_t mac[20];
    unsigned mac_len = 0;
    assert_non_null(HMAC(EVP_sha1(), S_SECRET, (int)strlen(S_SECRET), (const uint8_t *)body, len,
                         mac, &mac_len));
    char hex[41], legacy[80];
    sn_hex_encode(mac, 20, hex);
    snprintf(legacy, sizeof legacy, "X-Hub-Signature: sha1=%s", hex);
    h.extra = legacy;
    r = s_deliver(&h, body, len);
    assert_int_equal(r.status, 401);
    free(r.body);
    /* ... nor is sha1= in the sha256 header. */
    h = s_hdrs("push", body, len);
    snprintf(h.sig, sizeof h.sig, "sha1=%s", hex);
    r = s_deliver(&h, body, len);
    assert_int_equal(r.status, 401);
    free(r.body);

    /* A valid signature over other bytes: one byte of the body changed. */
    h = s_hdrs("push", body, len);
    char *tampered = sn_strdup(body);
    char *p = strstr(tampered, "master");
    assert_non_null(p);
    p[0] = 'n';
    r = s_deliver(&h, tampered, len);
    assert_int_equal(r.status, 401);
    free(r.body);
    free(tampered);
    assert_true(s_delivery_key_absent(h.delivery));

    /* Unauthenticated bad input of every other kind is refused before parsing too. */
    h = s_hdrs("push", "{not json", 9);
    h.sig[0] = '\0';
    r = s_deliver(&h, "{not json", 9);
    assert_int_equal(r.status, 401);
    free(r.body);

    assert_int_equal(s_github_count(), before);
    free(body);
}

static void test_github_webhook_deduplicates(void **state)
{
    (void)state;
    size_t len = 0;
    char *body = s_fixture("workflow_run.completed.json", &len);
    /* Make it a fresh meaning for this test: another run id. */
    json_t *j = json_loads(body, 0, NULL);
    free(body);
    json_object_set_new(json_object_get(j, "workflow_run"), "id", json_integer(777001));
    body = json_dumps(j, JSON_COMPACT);
    len = strlen(body);
    size_t before = s_github_count();

    s_hdrs_t h = s_hdrs("workflow_run", body, len);
    s_resp_t r = s_deliver(&h, body, len);
    assert_int_equal(r.status, 202);
    free(r.body);
    /* Redelivery: same GUID. */
    r = s_deliver(&h, body, len);
    assert_int_equal(r.status, 200);
    assert_string_equal(s_status_field(&r), "duplicate");
    assert_non_null(strstr(r.body, "delivery"));
    free(r.body);
    /* Another delivery that means the same (same run, attempt, status, conclusion). */
    h = s_hdrs("workflow_run", body, len);
    r = s_deliver(&h, body, len);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "meaning"));
    free(r.body);
    assert_int_equal(s_github_count(), before + 1);
    /* A later attempt of the same run means something new. */
    json_object_set_new(json_object_get(j, "workflow_run"), "run_attempt", json_integer(2));
    char *body2 = json_dumps(j, JSON_COMPACT);
    h = s_hdrs("workflow_run", body2, strlen(body2));
    r = s_deliver(&h, body2, strlen(body2));
    assert_int_equal(r.status, 202);
    free(r.body);
    assert_int_equal(s_github_count(), before + 2);
    /* The delivery keys expire (30 days). */
    char *key = sn_strdupf("%sdelivery:%s", W.m.ns, h.delivery);
    const char *argv[] = {"PTTL", key};
    redisReply *rr = NULL;
    assert_int_equal(sn_redis_cmd(W.redis, SN_REDIS_MAIN, 2000, &rr, 2, argv, NULL), SN_OK);
    assert_int_equal(rr->type, REDIS_REPLY_INTEGER);
    assert_true(rr->integer > 29LL * 24 * 3600 * 1000);
    freeReplyObject(rr);
    free(key);
    free(body2);
    free(body);
    json_decref(j);
}

static void test_github_webhook_refusals(void **state)
{
    (void)state;
    size_t before = s_github_count();
    size_t len = 0;
    char *body = s_fixture("push.new_branch.json", &len);

    /* An event Sentinel does not use: acknowledged, dropped. */
    s_hdrs_t h = s_hdrs("star", body, len);
    s_resp_t r = s_deliver(&h, body, len);
    assert_int_equal(r.status, 202);
    assert_string_equal(s_status_field(&r), "ignored");
    free(r.body);
    assert_true(s_delivery_key_absent(h.delivery));

    /* Over github.max_webhook_bytes: 413 before reading it. */
    size_t big_len = S_MAX_BYTES + 100;
    char *big = sn_malloc(big_len + 1);
    memset(big, ' ', big_len);
    big[0] = '{';
    big[big_len - 1] = '}';
    big[big_len] = '\0';
    h = s_hdrs("push", big, big_len);
    r = s_deliver(&h, big, big_len);
    assert_int_equal(r.status, 413);
    free(r.body);
    free(big);

    /* A hook configured as form-encoded (payload=...), correctly signed: 415. */
    char *form = sn_strdupf("payload=%s", "%7B%22zen%22%3A%22x%22%7D");
    h = s_hdrs("push", form, strlen(form));
    snprintf(h.ctype, sizeof h.ctype, "application/x-www-form-urlencoded");
    r = s_deliver(&h, form, strlen(form));
    assert_int_equal(r.status, 415);
    free(r.body);
    free(form);

    /* A repository that is not a configured project's: 403, nothing recorded. */
    json_t *j = json_loads(body, 0, NULL);
    json_object_set_new(json_object_get(j, "repository"), "full_name", json_string("evil/repo"));
    char *evil = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    h = s_hdrs("push", evil, strlen(evil));
    r = s_deliver(&h, evil, strlen(evil));
    assert_int_equal(r.status, 403);
    free(r.body);
    assert_true(s_delivery_key_absent(h.delivery));
    free(evil);
    /* The allow-list ignores case, as GitHub does. */
    j = json_loads(body, 0, NULL);
    json_object_set_new(json_object_get(j, "repository"), "full_name",
                        json_string("codertocat/hello-world"));
    json_object_set_new(j, "after", json_string("1111111111111111111111111111111111111111"));
    char *lower = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    h = s_hdrs("push", lower, strlen(lower));
    r = s_deliver(&h, lower, strlen(lower));
    assert_int_equal(r.status, 202);
    free(r.body);
    free(lower);

    /* Missing event or delivery header: 400. */
    h = s_hdrs("push", body, len);
    h.event[0] = '\0';
    r = s_deliver(&h, body, len);
    assert_int_equal(r.status, 400);
    free(r.body);
    h = s_hdrs("push", body, len);
    h.delivery[0] = '\0';
    r = s_deliver(&h, body, len);
    assert_int_equal(r.status, 400);
    free(r.body);
    /* Signed but not JSON: 400. */
    h = s_hdrs("push", "[1, 2", 5);
    r = s_deliver(&h, "[1, 2", 5);
    assert_int_equal(r.status, 400);
    free(r.body);
    /* Only POST. */
    s_resp_t g = {0};
    CURL *c = curl_easy_init();
    char url[128];
    snprintf(url, sizeof url, "%s/webhooks/github", W.base);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &g);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &g.status);
    curl_easy_cleanup(c);
    assert_int_equal(g.status, 405);
    free(g.body);

    /* Only the case-insensitive repository push was recorded. */
    assert_int_equal(s_github_count(), before + 1);
    free(body);
    /* The gateway logged each refusal without the secret (checked at teardown). */
    assert_true(sn_test_count_in_file(W.gw_log, "status=401") >= 1);
    assert_true(sn_test_count_in_file(W.gw_log, "status=403") >= 1);
}

typedef struct {
    const char *project, *sha;
} s_run_key_t;

static bool s_has_run(void *arg)
{
    const s_run_key_t *k = arg;
    return s_bp_count(k->project, k->sha) >= 1;
}

/* A completed/success workflow_run of @repo on @branch for @sha (fixture-derived). */
static char *s_completed_run(const char *repo, const char *branch, const char *sha, int64_t id)
{
    size_t len = 0;
    char *text = s_fixture("workflow_run.completed.json", &len);
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    json_object_set_new(json_object_get(j, "repository"), "full_name", json_string(repo));
    json_t *wr = json_object_get(j, "workflow_run");
    json_object_set_new(wr, "head_branch", json_string(branch));
    json_object_set_new(wr, "head_sha", json_string(sha));
    json_object_set_new(wr, "id", json_integer(id));
    char *body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return body;
}

static void test_github_webhook_one_run_per_commit(void **state)
{
    (void)state;
    /* The fixture workflow_run.completed (octo-org/octo-repo, master, success) was
     * delivered by the first test: build-validator triggered its commit. */
    const char *sha = "3484a3fb816e0859fd6e1cea078d76385ff50625";
    s_run_key_t k = {"octo", sha};
    assert_true(sn_test_wait_for(s_has_run, &k, 15000));
    /* The same delivery again, another delivery of the same completion, and a
     * redelivery after a newer run of the same workflow: all one run. */
    size_t len = 0;
    char *body = s_fixture("workflow_run.completed.json", &len);
    for (int i = 0; i < 3; i++) {
        s_hdrs_t h = s_hdrs("workflow_run", body, len);
        s_resp_t r = s_deliver(&h, body, len);
        assert_int_equal(r.status, 200);
        free(r.body);
    }
    free(body);
    /* A barrier: another project's commit, recorded after the above, triggers. */
    const char *other = "abcdefabcdefabcdefabcdefabcdefabcdef0001";
    char *barrier = s_completed_run("Codertocat/Hello-World", "main", other, 424242);
    s_hdrs_t h = s_hdrs("workflow_run", barrier, strlen(barrier));
    s_resp_t r = s_deliver(&h, barrier, strlen(barrier));
    assert_int_equal(r.status, 202);
    free(r.body);
    h = s_hdrs("workflow_run", barrier, strlen(barrier)); /* and its redelivery */
    r = s_deliver(&h, barrier, strlen(barrier));
    assert_int_equal(r.status, 200);
    free(r.body);
    free(barrier);
    k = (s_run_key_t){"hello", other};
    assert_true(sn_test_wait_for(s_has_run, &k, 15000));
    assert_int_equal(s_bp_count("octo", sha), 1);
    assert_int_equal(s_bp_count("hello", other), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_github_webhook_every_fixture_is_recorded),
        cmocka_unit_test(test_github_webhook_bad_signatures_record_nothing),
        cmocka_unit_test(test_github_webhook_deduplicates),
        cmocka_unit_test(test_github_webhook_refusals),
        cmocka_unit_test(test_github_webhook_one_run_per_commit),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
