/* The gateway role as a real process (sentinel-agent gateway) against a real mesh
 * (redis-server, broker): every route's happy path over HTTP (libcurl), the writes
 * reaching a fake buildpilot worker in this process with the token name in label
 * on_behalf_of, bad requests answered 4xx with nothing reaching the worker, /metrics
 * parsed by a strict exposition checker, the SSE stream (CloudEvents validated against
 * the CDEvents schemas, ids = stream ids, Last-Event-ID resume without gap or duplicate,
 * type filter, keep-alive, gap after trimming) and the SSE cap. */
#include "sn_mesh.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <zmq.h>

#include "sentinel/sn_crypto.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_redis.h"
#include "sentinel/sn_worker.h"

#define S_VIEWER "viewer-token-1"
#define S_OPERATOR "operator-token-1"
#define S_MAX_SSE 3
#define S_MAX_BODY 1024
#define S_PYTHON "/usr/bin/python3"

/* ---- the fake buildpilot ------------------------------------------------------------------ */

typedef struct {
    char service[64];
    char on_behalf_of[64];
    char detail[256];
} s_seen_t;

typedef struct {
    sn_worker_t *worker;
    pthread_t thread;
    pthread_mutex_t mu;
    bool quit;
    s_seen_t seen[64];
    int count;
    sn_source_t src;
} s_fake_t;

static void s_fake_handle(s_fake_t *f, sn_worker_event_t *ev)
{
    sn_envelope_t *env = sn_envelope_unpack(ev->body, ev->body_len, SN_MAX_FRAME_BYTES, NULL);
    s_seen_t s = {0};
    sn_strlcpy(s.service, ev->service, sizeof s.service);
    bool is_dry = false;
    if (env) {
        const char *who = sn_envelope_label(env, "on_behalf_of");
        sn_strlcpy(s.on_behalf_of, who ? who : "", sizeof s.on_behalf_of);
        if (env->body_case == SENTINEL__V1__ENVELOPE__BODY_TRIGGER) {
            snprintf(s.detail, sizeof s.detail, "%s/%s ref=%s sha=%s dry=%d", env->trigger->project,
                     env->trigger->environment, env->trigger->ref, env->trigger->sha,
                     (int)env->trigger->dry_run);
            is_dry = env->trigger->dry_run;
        } else if (env->body_case == SENTINEL__V1__ENVELOPE__BODY_CONTROL) {
            snprintf(s.detail, sizeof s.detail, "%s run=%s %s/%s to=%s", env->control->action,
                     env->control->run_id, env->control->project, env->control->environment,
                     env->control->to_run);
        }
    }
    pthread_mutex_lock(&f->mu);
    if (f->count < (int)SN_ARRAY_LEN(f->seen))
        f->seen[f->count++] = s;
    pthread_mutex_unlock(&f->mu);
    sn_envelope_t reply;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&reply, &f->src, "reply", id);
    Sentinel__V1__RunRef ref = SENTINEL__V1__RUN_REF__INIT;
    ref.run_id = "01JNEWRUN";
    ref.state = is_dry ? SENTINEL__V1__RUN_STATE__RUN_STATE_UNSPECIFIED
                       : SENTINEL__V1__RUN_STATE__RUN_QUEUED;
    ref.message = is_dry ? "plan: build, stage web" : ev->service;
    reply.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN_REF;
    reply.run_ref = &ref;
    size_t len;
    uint8_t *bytes = sn_envelope_pack(&reply, &len);
    if (sn_worker_reply(f->worker, &ev->ticket, bytes, len) != SN_OK)
        fprintf(stderr, "fake buildpilot: reply not sent\n");
    free(bytes);
    sn_envelope_free(&env);
}

static void *s_fake_run(void *arg)
{
    s_fake_t *f = arg;
    for (;;) {
        pthread_mutex_lock(&f->mu);
        bool quit = f->quit;
        pthread_mutex_unlock(&f->mu);
        if (quit)
            break;
        zmq_pollitem_t item = {.socket = sn_worker_socket(f->worker), .events = ZMQ_POLLIN};
        zmq_poll(&item, 1, 50);
        sn_worker_event_t ev;
        while (sn_worker_recv(f->worker, &ev) == SN_OK) {
            if (ev.type == SN_WORKER_REQUEST)
                s_fake_handle(f, &ev);
            sn_worker_event_fini(&ev);
        }
    }
    return NULL;
}

/* ---- fixture -------------------------------------------------------------------------------- */

typedef struct {
    sn_mesh_t m;
    pid_t gw;
    char *gw_log;
    int port;
    char base[64];
    s_fake_t fake;
    sn_redis_t *redis;
    sn_journal_t *journal;
    sn_source_t src;
    char *state_dir;
} s_world_t;

static s_world_t W;
static bool s_quiet; /* while polling for the gateway to come up */

static char *s_hex_sha(const char *token)
{
    uint8_t d[SN_SHA256_LEN];
    assert_int_equal(sn_sha256(token, strlen(token), d), SN_OK);
    char *hex = sn_malloc(SN_SHA256_HEX_LEN + 1);
    sn_hex_encode(d, sizeof d, hex);
    return hex;
}

/* ---- HTTP ------------------------------------------------------------------------------------ */

typedef struct {
    long status;
    char *body;
    size_t len;
    char content_type[128];
    char www_auth[128];
    char allow[64];
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

static size_t s_header(char *data, size_t size, size_t n, void *arg)
{
    s_resp_t *r = arg;
    size_t len = size * n;
    char line[256];
    size_t c = len < sizeof line - 1 ? len : sizeof line - 1;
    memcpy(line, data, c);
    line[c] = '\0';
    while (c && (line[c - 1] == '\r' || line[c - 1] == '\n'))
        line[--c] = '\0';
    if (strncasecmp(line, "WWW-Authenticate: ", 18) == 0)
        sn_strlcpy(r->www_auth, line + 18, sizeof r->www_auth);
    if (strncasecmp(line, "Allow: ", 7) == 0)
        sn_strlcpy(r->allow, line + 7, sizeof r->allow);
    return len;
}

/* One request; @token NULL: no Authorization. @ctype NULL: application/json when a body
 * is given. */
static s_resp_t s_http(const char *method, const char *path, const char *token, const char *ctype,
                       const char *body)
{
    s_resp_t r = {0};
    CURL *c = curl_easy_init();
    char url[512];
    snprintf(url, sizeof url, "%s%s", W.base, path);
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, s_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    struct curl_slist *h = NULL;
    char auth[256];
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
    }
    if (body) {
        char ct[160];
        snprintf(ct, sizeof ct, "Content-Type: %s", ctype ? ctype : "application/json");
        h = curl_slist_append(h, ct);
        h = curl_slist_append(h, "Expect:");
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
        char *ct = NULL;
        curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
        if (ct)
            sn_strlcpy(r.content_type, ct, sizeof r.content_type);
    } else if (!s_quiet) {
        fprintf(stderr, "curl %s %s: %s\n", method, path, errbuf);
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (!r.body)
        r.body = sn_strdup("");
    return r;
}

static json_t *s_json(const s_resp_t *r)
{
    json_t *j = json_loads(r->body, 0, NULL);
    if (!j)
        fprintf(stderr, "not JSON: %s\n", r->body);
    assert_non_null(j);
    return j;
}

static const char *s_error_code(const s_resp_t *r)
{
    static char code[64];
    json_t *j = json_loads(r->body, 0, NULL);
    const char *c = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    sn_strlcpy(code, c ? c : "", sizeof code);
    bool has_message = json_is_string(json_object_get(json_object_get(j, "error"), "message"));
    json_decref(j);
    return has_message ? code : "(no message)";
}

static bool s_healthy(void *arg)
{
    s_resp_t r = s_http("GET", "/healthz", NULL, NULL, NULL);
    bool ok = r.status == 200;
    free(r.body);
    return ok;
}

/* ---- setup ---------------------------------------------------------------------------------- */

static int s_setup(void **state)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    memset(&W, 0, sizeof W);
    W.port = sn_test_free_port();
    snprintf(W.base, sizeof W.base, "http://127.0.0.1:%d", W.port);
    char *vh = s_hex_sha(S_VIEWER), *oh = s_hex_sha(S_OPERATOR);
    char *yaml =
        sn_strdupf("projects:\n"
                   "  - name: hello\n"
                   "    repo: /tmp\n"
                   "    poll_interval_ms: 0\n"
                   "    environments:\n"
                   "      - {name: staging, branch: staging, targets: [web]}\n"
                   "      - {name: production, branch: main, targets: [web]}\n"
                   "targets:\n"
                   "  - {name: web, type: local_static, listen: \"127.0.0.1:%d\", "
                   "preview_listen: \"127.0.0.1:%d\"}\n"
                   "gateway:\n"
                   "  listen: 127.0.0.1:%d\n"
                   "  max_sse: %d\n"
                   "  max_body_bytes: %d\n"
                   "  tokens:\n"
                   "    - {name: viewer1, sha256: %s, role: viewer}\n"
                   "    - {name: ops, sha256: %s, role: operator}\n",
                   sn_test_free_port(), sn_test_free_port(), W.port, S_MAX_SSE, S_MAX_BODY, vh, oh);
    free(vh);
    free(oh);
    bool ok = sn_mesh_start(&W.m, "gateway", yaml);
    free(yaml);
    assert_true(ok);
    W.state_dir = sn_strdupf("%s/var", W.m.dir);
    mkdir(W.state_dir, 0755);
    char *builds = sn_strdupf("%s/builds", W.state_dir);
    mkdir(builds, 0755);
    free(builds);

    /* The fake buildpilot in this process. */
    pthread_mutex_init(&W.fake.mu, NULL);
    sn_source_init(&W.fake.src, "buildpilot", "fake");
    W.fake.worker = sn_worker_new(W.m.rpc, NULL);
    assert_non_null(W.fake.worker);
    sn_worker_set_heartbeat(W.fake.worker, 200, 3);
    static const char *const services[] = {"run.trigger",  "run.approve", "run.cancel",
                                           "env.rollback", "env.freeze",  "env.unfreeze"};
    for (size_t i = 0; i < SN_ARRAY_LEN(services); i++)
        assert_int_equal(sn_worker_serve(W.fake.worker, services[i], 8), SN_OK);
    assert_int_equal(pthread_create(&W.fake.thread, NULL, s_fake_run, &W.fake), 0);

    /* A journal writer and a Redis handle of the test's own. */
    sn_redis_opts_t ro = {
        .unix_path = W.m.redis.unix_path, .namespace_ = W.m.ns, .timeout_ms = 2000};
    W.redis = sn_redis_new(&ro);
    assert_non_null(W.redis);
    sn_source_init(&W.src, "buildpilot", "test");
    sn_journal_opts_t jo = {.redis = W.redis, .source = &W.src};
    W.journal = sn_journal_new(&jo);
    assert_non_null(W.journal);
    sn_source_init(&W.src, "buildpilot", "test");

    /* The gateway process. */
    W.gw_log = sn_strdupf("%s/gateway.log", W.m.dir);
    setenv("SENTINEL_GATEWAY_KEEPALIVE_MS", "300", 1);
    char *bin = sn_test_bin("sentinel-agent");
    char *argv[] = {bin, "gateway", "--config", W.m.config, "--instance", "gw1", NULL};
    W.gw = sn_test_spawn(argv, W.gw_log);
    free(bin);
    assert_true(W.gw > 0);
    s_quiet = true;
    assert_true(sn_test_wait_for(s_healthy, NULL, 15000));
    s_quiet = false;
    assert_true(sn_mesh_wait_service(&W.m, "run.trigger", 1, 10000));
    return 0;
}

static int s_teardown(void **state)
{
    int st = sn_test_stop(W.gw, SIGTERM, 5000);
    bool clean = st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (!clean || getenv("SN_MESH_DUMP")) {
        char *log = sn_test_read_file(W.gw_log);
        fprintf(stderr, "---- gateway (status %d) ----\n%s", st, log ? log : "");
        free(log);
    }
    pthread_mutex_lock(&W.fake.mu);
    W.fake.quit = true;
    pthread_mutex_unlock(&W.fake.mu);
    pthread_join(W.fake.thread, NULL);
    sn_worker_destroy(&W.fake.worker);
    pthread_mutex_destroy(&W.fake.mu);
    sn_journal_destroy(&W.journal);
    sn_redis_destroy(&W.redis);
    int bad = sn_mesh_stop(&W.m);
    free(W.gw_log);
    free(W.state_dir);
    curl_global_cleanup();
    return clean && bad == 0 ? 0 : -1;
}

/* ---- seeding -----------------------------------------------------------------------------------
 */

static void s_redis_cmd(int argc, const char **argv, const size_t *lens)
{
    redisReply *r = NULL;
    assert_int_equal(sn_redis_cmd(W.redis, SN_REDIS_MAIN, 2000, &r, argc, argv, lens), SN_OK);
    assert_true(r->type != REDIS_REPLY_ERROR);
    freeReplyObject(r);
}

static void s_seed_run(const char *id, const char *project, const char *environment,
                       int64_t created_ms)
{
    Sentinel__V1__Run run = SENTINEL__V1__RUN__INIT;
    run.run_id = (char *)id;
    run.project = (char *)project;
    run.environment = (char *)environment;
    run.ref = "main";
    run.state = SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED;
    run.created_unix_ms = created_ms;
    size_t len = sentinel__v1__run__get_packed_size(&run);
    uint8_t *buf = sn_malloc(len);
    sentinel__v1__run__pack(&run, buf);
    char *key = sn_strdupf("%srun:%s", W.m.ns, id);
    const char *argv[] = {"HSET",      key,       "pb",    (const char *)buf, "state",
                          "succeeded", "project", project, "environment",     environment};
    size_t lens[] = {4, strlen(key), 2, len, 5, 9, 7, strlen(project), 11, strlen(environment)};
    s_redis_cmd(10, argv, lens);
    free(buf);
    free(key);
    char *all = sn_strdupf("%sruns:all", W.m.ns);
    char score[32];
    snprintf(score, sizeof score, "%lld", (long long)created_ms);
    const char *z[] = {"ZADD", all, score, id};
    s_redis_cmd(4, z, NULL);
    free(all);
}

static int s_fake_count(void)
{
    pthread_mutex_lock(&W.fake.mu);
    int n = W.fake.count;
    pthread_mutex_unlock(&W.fake.mu);
    return n;
}

static s_seen_t s_fake_last(void)
{
    pthread_mutex_lock(&W.fake.mu);
    s_seen_t s = W.fake.seen[W.fake.count - 1];
    pthread_mutex_unlock(&W.fake.mu);
    return s;
}

/* ---- routes ------------------------------------------------------------------------------------
 */

static bool s_gateway_registered(void *arg)
{
    char *v = sn_mesh_hget(&W.m, "agent:gateway:gw1", "role");
    bool ok = v && strcmp(v, "gateway") == 0;
    free(v);
    return ok;
}

static void test_gateway_read_routes(void **state)
{
    s_resp_t r = s_http("GET", "/readyz", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    json_t *j = s_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "broker")), "up");
    json_decref(j);
    free(r.body);

    s_seed_run("01JRUNOLD", "hello", "staging", 1000);
    s_seed_run("01JRUNNEW", "hello", "production", 2000);
    r = s_http("GET", "/api/v1/runs", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.content_type, "application/json");
    j = s_json(&r);
    json_t *runs = json_object_get(j, "runs");
    assert_int_equal(json_array_size(runs), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(runs, 0), "runId")),
                        "01JRUNNEW");
    assert_string_equal(json_string_value(json_object_get(json_array_get(runs, 0), "state")),
                        "RUN_SUCCEEDED");
    json_decref(j);
    free(r.body);
    r = s_http("GET", "/api/v1/runs?limit=1", S_VIEWER, NULL, NULL);
    j = s_json(&r);
    assert_int_equal(json_array_size(json_object_get(j, "runs")), 1);
    json_decref(j);
    free(r.body);

    r = s_http("GET", "/api/v1/runs/01JRUNOLD", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 200);
    j = s_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "environment")), "staging");
    json_decref(j);
    free(r.body);
    r = s_http("GET", "/api/v1/runs/01JNOPE", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 404);
    assert_string_equal(s_error_code(&r), "not_found");
    free(r.body);

    /* The build log, as text; an id that tries to leave builds/ is just unknown. */
    char *log = sn_strdupf("%s/builds/01JRUNOLD.log", W.state_dir);
    FILE *f = fopen(log, "w");
    assert_non_null(f);
    fputs("step 1: make\nok\n", f);
    fclose(f);
    free(log);
    r = s_http("GET", "/api/v1/runs/01JRUNOLD/logs", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.content_type, "text/plain; charset=utf-8");
    assert_string_equal(r.body, "step 1: make\nok\n");
    free(r.body);
    r = s_http("GET", "/api/v1/runs/..%2F..%2Fsentinel.yml/logs", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 404);
    free(r.body);
    r = s_http("GET", "/api/v1/runs/01JRUNNEW/logs", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 404);
    free(r.body);

    /* Environments with each target's release history, newest first. */
    Sentinel__V1__ReleaseIdentity ri = SENTINEL__V1__RELEASE_IDENTITY__INIT;
    ri.project = "hello";
    ri.environment = "production";
    ri.target = "web";
    ri.commit = "9f2c1e7";
    char *key = sn_strdupf("%srelease:hello:production:web", W.m.ns);
    for (int i = 1; i <= 2; i++) {
        char did[16];
        snprintf(did, sizeof did, "dep%d", i);
        ri.deploy_id = did;
        size_t len = sentinel__v1__release_identity__get_packed_size(&ri);
        uint8_t *buf = sn_malloc(len);
        sentinel__v1__release_identity__pack(&ri, buf);
        const char *argv[] = {"LPUSH", key, (const char *)buf};
        size_t lens[] = {5, strlen(key), len};
        s_redis_cmd(3, argv, lens);
        free(buf);
    }
    free(key);
    key = sn_strdupf("%senv:hello:production", W.m.ns);
    const char *hs[] = {"HSET", key, "frozen", "1", "current_run", "01JRUNNEW"};
    s_redis_cmd(6, hs, NULL);
    free(key);
    r = s_http("GET", "/api/v1/environments", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 200);
    j = s_json(&r);
    json_t *envs = json_object_get(j, "environments");
    assert_int_equal(json_array_size(envs), 2);
    json_t *prod = json_array_get(envs, 1);
    assert_string_equal(json_string_value(json_object_get(prod, "name")), "production");
    assert_true(json_is_true(json_object_get(prod, "frozen")));
    assert_string_equal(json_string_value(json_object_get(prod, "currentRun")), "01JRUNNEW");
    json_t *rel = json_object_get(json_array_get(json_object_get(prod, "targets"), 0), "releases");
    assert_int_equal(json_array_size(rel), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(rel, 0), "deployId")),
                        "dep2");
    assert_false(json_is_true(json_object_get(json_array_get(envs, 0), "frozen")));
    json_decref(j);
    free(r.body);

    /* Agents: the gateway registers itself with its heartbeat. */
    assert_true(sn_test_wait_for(s_gateway_registered, NULL, 10000));
    r = s_http("GET", "/api/v1/agents", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 200);
    j = s_json(&r);
    json_t *agents = json_object_get(j, "agents");
    bool found = false;
    for (size_t i = 0; i < json_array_size(agents); i++) {
        json_t *a = json_array_get(agents, i);
        if (strcmp(json_string_value(json_object_get(a, "instance")), "gw1") == 0) {
            found = true;
            assert_true(json_is_object(json_object_get(a, "counters")));
            assert_true(json_is_integer(json_object_get(a, "pid")));
        }
    }
    assert_true(found);
    json_decref(j);
    free(r.body);

    /* Unknown route, wrong method. */
    r = s_http("GET", "/api/v1/nope", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 404);
    free(r.body);
    r = s_http("PUT", "/api/v1/runs", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 405);
    assert_string_equal(r.allow, "GET");
    assert_string_equal(s_error_code(&r), "method_not_allowed");
    free(r.body);
}

/* ---- /metrics: a strict checker of the 0.0.4 text format and promtool's lint rules ---------- */

typedef struct {
    char name[200];
    char type[16];
    bool has_help, has_samples, has_inf, has_sum, has_count;
} s_family_t;

static bool s_name_ok(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return false; /* also refuses ':' */
        if (i > 0 && islower((unsigned char)s[i - 1]) && isupper((unsigned char)s[i]))
            return false; /* camelCase */
    }
    return true;
}

static bool s_has_part(const char *name, const char *part)
{
    char buf[256];
    sn_strlcpy(buf, name, sizeof buf);
    for (char *p = buf; p;) {
        char *u = strchr(p, '_');
        if (u)
            *u = '\0';
        if (strcmp(p, part) == 0)
            return true;
        p = u ? u + 1 : NULL;
    }
    return false;
}

static bool s_ends(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Returns the number of problems (printed). */
static int s_check_exposition(const char *text, s_family_t *fams, size_t *nfam, size_t max)
{
    int bad = 0;
    size_t len = strlen(text);
    if (len == 0 || text[len - 1] != '\n') {
        fprintf(stderr, "metrics: the last line does not end with \\n\n");
        bad++;
    }
    char **series = NULL;
    size_t nseries = 0;
    s_family_t *cur = NULL;
    *nfam = 0;
    for (const char *line = text; *line;) {
        const char *eol = strchr(line, '\n');
        size_t n = eol ? (size_t)(eol - line) : strlen(line);
        char buf[1024];
        assert_true(n < sizeof buf);
        memcpy(buf, line, n);
        buf[n] = '\0';
        line += n + (eol ? 1 : 0);
        if (n == 0)
            continue;
        if (strncmp(buf, "# HELP ", 7) == 0 || strncmp(buf, "# TYPE ", 7) == 0) {
            bool is_help = buf[2] == 'H';
            char *name = buf + 7;
            char *sp = strchr(name, ' ');
            if (!sp || !s_name_ok(name, (size_t)(sp - name))) {
                fprintf(stderr, "metrics: bad metadata line %s\n", buf);
                bad++;
                continue;
            }
            *sp = '\0';
            s_family_t *f = NULL;
            for (size_t i = 0; i < *nfam; i++)
                if (strcmp(fams[i].name, name) == 0)
                    f = &fams[i];
            if (!f) {
                assert_true(*nfam < max);
                f = &fams[(*nfam)++];
                memset(f, 0, sizeof *f);
                sn_strlcpy(f->name, name, sizeof f->name);
            } else if (f != cur || f->has_samples) {
                fprintf(stderr, "metrics: %s metadata after samples or split family\n", name);
                bad++;
            }
            if (is_help) {
                if (f->has_help) {
                    fprintf(stderr, "metrics: second HELP for %s\n", name);
                    bad++;
                }
                f->has_help = true;
            } else {
                const char *t = sp + 1;
                if (f->type[0] ||
                    (strcmp(t, "counter") && strcmp(t, "gauge") && strcmp(t, "histogram") &&
                     strcmp(t, "summary") && strcmp(t, "untyped"))) {
                    fprintf(stderr, "metrics: bad or second TYPE %s %s\n", name, t);
                    bad++;
                }
                sn_strlcpy(f->type, t, sizeof f->type);
            }
            cur = f;
            continue;
        }
        if (buf[0] == '#')
            continue;
        /* name{labels} value */
        char *brace = strchr(buf, '{');
        char *sp = strchr(buf, ' ');
        size_t name_len = brace && brace < sp ? (size_t)(brace - buf) : sp ? (size_t)(sp - buf) : n;
        if (!sp || !s_name_ok(buf, name_len)) {
            fprintf(stderr, "metrics: bad sample line %s\n", buf);
            bad++;
            continue;
        }
        char name[256];
        memcpy(name, buf, name_len);
        name[name_len] = '\0';
        const char *value = sp + 1;
        if (brace && brace < sp) {
            /* label pairs: name="value" with \\ \" \n escapes */
            const char *p = brace + 1;
            while (*p && *p != '}') {
                const char *eq = strchr(p, '=');
                if (!eq || !s_name_ok(p, (size_t)(eq - p)) || eq[1] != '"') {
                    fprintf(stderr, "metrics: bad label in %s\n", buf);
                    bad++;
                    break;
                }
                p = eq + 2;
                while (*p && *p != '"')
                    p += *p == '\\' ? 2 : 1;
                if (*p != '"') {
                    bad++;
                    break;
                }
                p++;
                if (*p == ',')
                    p++;
            }
            if (*p != '}') {
                fprintf(stderr, "metrics: unterminated labels in %s\n", buf);
                bad++;
                continue;
            }
            value = p + 2;
            sp = (char *)p + 1;
        }
        char *end = NULL;
        double v = strtod(value, &end);
        if (!end || end == value || *end || isnan(v)) {
            fprintf(stderr, "metrics: bad value in %s\n", buf);
            bad++;
        }
        /* The family this sample belongs to must be the current one. */
        if (!cur ||
            (strcmp(name, cur->name) != 0 && !(strcmp(cur->type, "histogram") == 0 &&
                                               strncmp(name, cur->name, strlen(cur->name)) == 0))) {
            fprintf(stderr, "metrics: sample %s outside its family\n", name);
            bad++;
            continue;
        }
        cur->has_samples = true;
        if (strcmp(cur->type, "histogram") == 0) {
            if (strstr(buf, "le=\"+Inf\""))
                cur->has_inf = true;
            if (s_ends(name, "_sum"))
                cur->has_sum = true;
            if (s_ends(name, "_count"))
                cur->has_count = true;
        }
        char key[1024];
        snprintf(key, sizeof key, "%.*s", (int)(sp - buf), buf);
        for (size_t i = 0; i < nseries; i++)
            if (strcmp(series[i], key) == 0) {
                fprintf(stderr, "metrics: not unique %s\n", key);
                bad++;
            }
        series = sn_realloc(series, (nseries + 1) * sizeof *series);
        series[nseries++] = sn_strdup(key);
    }
    for (size_t i = 0; i < nseries; i++)
        free(series[i]);
    free(series);
    /* promlint's rules per family. */
    static const char *const abbrev[] = {"s",  "ms", "us",           "ns",      "sec", "b",
                                         "kb", "mb", "gb",           "tb",      "pb",  "m",
                                         "h",  "d",  "milliseconds", "minutes", NULL};
    for (size_t i = 0; i < *nfam; i++) {
        s_family_t *f = &fams[i];
        if (!f->has_help || !f->type[0] || !f->has_samples) {
            fprintf(stderr, "metrics: %s lacks HELP, TYPE or samples\n", f->name);
            bad++;
        }
        bool is_counter = strcmp(f->type, "counter") == 0;
        if (is_counter != s_ends(f->name, "_total")) {
            fprintf(stderr, "metrics: %s: _total suffix vs TYPE %s\n", f->name, f->type);
            bad++;
        }
        if (strcmp(f->type, "histogram") != 0 &&
            (s_ends(f->name, "_bucket") || s_ends(f->name, "_count") || s_ends(f->name, "_sum"))) {
            fprintf(stderr, "metrics: %s: reserved suffix\n", f->name);
            bad++;
        }
        if (strcmp(f->type, "histogram") == 0 && !(f->has_inf && f->has_sum && f->has_count)) {
            fprintf(stderr, "metrics: histogram %s incomplete\n", f->name);
            bad++;
        }
        for (size_t k = 0; abbrev[k]; k++)
            if (s_has_part(f->name, abbrev[k])) {
                fprintf(stderr, "metrics: %s: unit %s\n", f->name, abbrev[k]);
                bad++;
            }
        static const char *const types[] = {"counter", "gauge", "histogram", "summary", NULL};
        for (size_t k = 0; types[k]; k++)
            if (s_has_part(f->name, types[k])) {
                fprintf(stderr, "metrics: %s: type word in name\n", f->name);
                bad++;
            }
    }
    return bad;
}

static s_family_t *s_find_family(s_family_t *fams, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(fams[i].name, name) == 0)
            return &fams[i];
    return NULL;
}

static void test_gateway_metrics_exposition(void **state)
{
    /* An agent whose counter names break every rule, next to the real ones. */
    char *key = sn_strdupf("%sagent:fake:f\"1", W.m.ns);
    const char *counters =
        "{\"jobs_total\":7,\"queueDepth\":3,\"latency_ms\":1500,\"odd.name:x\":1,"
        "\"requests_count\":9,\"gauge_counter\":2,\"Odd.Name-X\":5,"
        "\"rpc_bucket_le_1\":1,\"rpc_bucket_le_5\":3,\"rpc_bucket_le_60000\":4,"
        "\"rpc_sum_ms\":2500,\"rpc_count\":4}";
    const char *argv[] = {"HSET", key,       "role",  "fake",   "instance", "f\"1",     "host",
                          "h\\1", "version", "0.1.0", "leader", "1",        "counters", counters};
    s_redis_cmd(14, argv, NULL);
    free(key);
    assert_true(sn_test_wait_for(s_gateway_registered, NULL, 10000));

    s_resp_t r = s_http("GET", "/metrics", NULL, NULL, NULL);
    assert_int_equal(r.status, 401);
    free(r.body);
    r = s_http("GET", "/metrics", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
    s_family_t fams[256];
    size_t n = 0;
    int bad = s_check_exposition(r.body, fams, &n, SN_ARRAY_LEN(fams));
    if (bad)
        fprintf(stderr, "%s", r.body);
    assert_int_equal(bad, 0);
    s_family_t *f = s_find_family(fams, n, "sentinel_jobs_total");
    assert_non_null(f);
    assert_string_equal(f->type, "counter");
    f = s_find_family(fams, n, "sentinel_rpc_seconds");
    assert_non_null(f);
    assert_string_equal(f->type, "histogram");
    assert_non_null(s_find_family(fams, n, "sentinel_queue_depth"));
    assert_non_null(s_find_family(fams, n, "sentinel_latency_seconds"));
    assert_non_null(
        strstr(r.body, "sentinel_latency_seconds{role=\"fake\",instance=\"f\\\"1\"} 1.5\n"));
    assert_non_null(strstr(r.body, "sentinel_rpc_seconds_bucket{role=\"fake\",instance=\"f\\\"1\","
                                   "le=\"0.005\"} 3\n"));
    assert_non_null(strstr(r.body, "sentinel_rpc_seconds_bucket{role=\"fake\",instance=\"f\\\"1\","
                                   "le=\"+Inf\"} 4\n"));
    assert_non_null(
        strstr(r.body, "sentinel_rpc_seconds_sum{role=\"fake\",instance=\"f\\\"1\"} 2.5\n"));
    assert_non_null(strstr(r.body, "sentinel_agent_leader{role=\"fake\",instance=\"f\\\"1\"} 1\n"));
    /* The gateway's own counters, pushed with its heartbeat. */
    assert_non_null(strstr(r.body, "role=\"gateway\",instance=\"gw1\""));
    free(r.body);

    /* The checker itself refuses what promtool refuses. */
    static const char *const broken[] = {
        "# HELP a_total x\n# TYPE a_total counter\na_total 1",      /* no final \n */
        "# HELP a x\n# TYPE a counter\na 1\n",                      /* counter w/o _total */
        "# HELP a_ms x\n# TYPE a_ms gauge\na_ms 1\n",               /* abbreviated unit */
        "# HELP a x\n# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n", /* not unique */
        "# HELP a x\n# TYPE a gauge\na 1\n# HELP c x\n# TYPE c gauge\nc 1\na 2\n", /* split */
        "# HELP aB x\n# TYPE aB gauge\naB 1\n",                                    /* camelCase */
    };
    for (size_t i = 0; i < SN_ARRAY_LEN(broken); i++) {
        size_t m = 0;
        assert_true(s_check_exposition(broken[i], fams, &m, SN_ARRAY_LEN(fams)) > 0);
    }
}

/* ---- writes ------------------------------------------------------------------------------------
 */

static void test_gateway_writes_reach_buildpilot_on_behalf_of(void **state)
{
    int before = s_fake_count();
    s_resp_t r = s_http("POST", "/api/v1/deploys", S_OPERATOR, NULL,
                        "{\"project\":\"hello\",\"environment\":\"production\",\"ref\":\"main\","
                        "\"sha\":\"9f2c1e7\"}");
    assert_int_equal(r.status, 202);
    json_t *j = s_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "runId")), "01JNEWRUN");
    assert_string_equal(json_string_value(json_object_get(j, "state")), "RUN_QUEUED");
    json_decref(j);
    free(r.body);
    assert_int_equal(s_fake_count(), before + 1);
    s_seen_t s = s_fake_last();
    assert_string_equal(s.service, "run.trigger");
    assert_string_equal(s.on_behalf_of, "ops");
    assert_string_equal(s.detail, "hello/production ref=main sha=9f2c1e7 dry=0");

    /* dry run: the plan, 200; ref defaults to the environment's branch. */
    r = s_http("POST", "/api/v1/deploys", S_OPERATOR, "application/json; charset=utf-8",
               "{\"project\":\"hello\",\"environment\":\"staging\",\"dry_run\":true}");
    assert_int_equal(r.status, 200);
    j = s_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "message")), "plan: build, stage web");
    json_decref(j);
    free(r.body);
    assert_string_equal(s_fake_last().detail, "hello/staging ref=staging sha= dry=1");

    s_seed_run("01JAPPROVE", "hello", "production", 3000);
    r = s_http("POST", "/api/v1/runs/01JAPPROVE/approve", S_OPERATOR, NULL, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);
    s = s_fake_last();
    assert_string_equal(s.service, "run.approve");
    assert_string_equal(s.on_behalf_of, "ops");
    assert_string_equal(s.detail, "approve run=01JAPPROVE / to=");

    r = s_http("POST", "/api/v1/runs/01JAPPROVE/cancel", S_OPERATOR, NULL,
               "{\"reason\":\"not today\"}");
    assert_int_equal(r.status, 200);
    free(r.body);
    assert_string_equal(s_fake_last().service, "run.cancel");

    r = s_http("POST", "/api/v1/environments/hello/production/rollback", S_OPERATOR, NULL,
               "{\"to_run\":\"01JRUNOLD\"}");
    assert_int_equal(r.status, 202);
    free(r.body);
    s = s_fake_last();
    assert_string_equal(s.service, "env.rollback");
    assert_string_equal(s.detail, "rollback run= hello/production to=01JRUNOLD");

    r = s_http("POST", "/api/v1/environments/hello/staging/freeze", S_OPERATOR, NULL, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);
    assert_string_equal(s_fake_last().service, "env.freeze");
    r = s_http("POST", "/api/v1/environments/hello/staging/freeze", S_OPERATOR, NULL,
               "{\"frozen\":false}");
    assert_int_equal(r.status, 200);
    free(r.body);
    assert_string_equal(s_fake_last().service, "env.unfreeze");
    r = s_http("DELETE", "/api/v1/environments/hello/staging/freeze", S_OPERATOR, NULL, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);
    s = s_fake_last();
    assert_string_equal(s.service, "env.unfreeze");
    assert_string_equal(s.on_behalf_of, "ops");
    assert_int_equal(s_fake_count(), before + 8);
}

static void test_gateway_bad_requests_change_nothing(void **state)
{
    int before = s_fake_count();
    static const struct {
        const char *method, *path, *token, *ctype, *body;
        long status;
        const char *code;
    } cases[] = {
        {"POST", "/api/v1/deploys", S_OPERATOR, NULL, "{\"project\":", 400, "bad_json"},
        {"POST", "/api/v1/deploys", S_OPERATOR, NULL, "[1,2]", 400, "bad_json"},
        {"POST", "/api/v1/deploys", S_OPERATOR, NULL, "{\"project\":\"hello\"}", 400,
         "bad_request"},
        {"POST", "/api/v1/deploys", S_OPERATOR, NULL,
         "{\"project\":\"hello\",\"environment\":\"staging\",\"bogus\":1}", 400, "bad_request"},
        {"POST", "/api/v1/deploys", S_OPERATOR, NULL,
         "{\"project\":\"hello\",\"environment\":\"staging\",\"dry_run\":\"yes\"}", 400,
         "bad_request"},
        {"POST", "/api/v1/deploys", S_OPERATOR, NULL,
         "{\"project\":\"hello\",\"environment\":\"staging\",\"sha\":\"zz\"}", 400, "bad_request"},
        {"POST", "/api/v1/deploys", S_OPERATOR, NULL, "", 400, "bad_request"},
        {"POST", "/api/v1/deploys", S_OPERATOR, NULL,
         "{\"project\":\"nope\",\"environment\":\"staging\"}", 404, "not_found"},
        {"POST", "/api/v1/deploys", S_OPERATOR, NULL,
         "{\"project\":\"hello\",\"environment\":\"qa\"}", 404, "not_found"},
        {"POST", "/api/v1/runs/01JNOPE/approve", S_OPERATOR, NULL, NULL, 404, "not_found"},
        {"POST", "/api/v1/environments/nope/staging/rollback", S_OPERATOR, NULL, NULL, 404,
         "not_found"},
        {"POST", "/api/v1/environments/hello/staging/rollback", S_OPERATOR, NULL,
         "{\"to_run\":\"../x\"}", 400, "bad_request"},
        {"POST", "/api/v1/deploys", NULL, NULL,
         "{\"project\":\"hello\",\"environment\":\"staging\"}", 401, "unauthorized"},
        {"POST", "/api/v1/deploys", "wrong-token", NULL,
         "{\"project\":\"hello\",\"environment\":\"staging\"}", 401, "unauthorized"},
        {"GET", "/api/v1/runs", NULL, NULL, NULL, 401, "unauthorized"},
        {"POST", "/api/v1/deploys", S_VIEWER, NULL,
         "{\"project\":\"hello\",\"environment\":\"staging\"}", 403, "forbidden"},
        {"DELETE", "/api/v1/environments/hello/staging/freeze", S_VIEWER, NULL, NULL, 403,
         "forbidden"},
        {"POST", "/api/v1/deploys", S_OPERATOR, "text/plain",
         "{\"project\":\"hello\",\"environment\":\"staging\"}", 415, "unsupported_media_type"},
        {"GET", "/api/v1/runs?limit=0", S_VIEWER, NULL, NULL, 400, "bad_request"},
        {"GET", "/api/v1/events", S_VIEWER, NULL, NULL, 0, NULL}, /* placeholder, skipped */
    };
    for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
        if (!cases[i].code)
            continue;
        s_resp_t r =
            s_http(cases[i].method, cases[i].path, cases[i].token, cases[i].ctype, cases[i].body);
        if (r.status != cases[i].status)
            fprintf(stderr, "case %zu: %s %s -> %ld %s\n", i, cases[i].method, cases[i].path,
                    r.status, r.body);
        assert_int_equal(r.status, cases[i].status);
        assert_string_equal(s_error_code(&r), cases[i].code);
        assert_string_equal(r.content_type, "application/json");
        if (r.status == 401)
            assert_string_equal(r.www_auth, "Bearer realm=\"sentinel\"");
        free(r.body);
    }
    /* A body over max_body_bytes: 413 before it is read. */
    char *big = sn_malloc(S_MAX_BODY + 200);
    memset(big, ' ', S_MAX_BODY + 199);
    big[0] = '{';
    memcpy(big + S_MAX_BODY + 190, "\"a\":1}   ", 9);
    big[S_MAX_BODY + 199] = '\0';
    s_resp_t r = s_http("POST", "/api/v1/deploys", S_OPERATOR, NULL, big);
    assert_int_equal(r.status, 413);
    assert_string_equal(s_error_code(&r), "too_large");
    free(r.body);
    free(big);
    /* A bad Last-Event-ID. */
    r = s_http("GET", "/api/v1/events?lastEventId=junk", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 400);
    free(r.body);

    /* Nothing reached buildpilot, and the gateway still serves. */
    assert_int_equal(s_fake_count(), before);
    r = s_http("GET", "/healthz", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);
}

/* ---- SSE
 * ------------------------------------------------------------------------------------------ */

typedef struct {
    pthread_t thread;
    pthread_mutex_t mu;
    char url[512];
    char last_event_id[64];
    char *buf;
    size_t len;
    long status;
    bool stop;
    bool done;
} s_sse_t;

static size_t s_sse_write(char *data, size_t size, size_t n, void *arg)
{
    s_sse_t *s = arg;
    pthread_mutex_lock(&s->mu);
    s->buf = sn_realloc(s->buf, s->len + size * n + 1);
    memcpy(s->buf + s->len, data, size * n);
    s->len += size * n;
    s->buf[s->len] = '\0';
    pthread_mutex_unlock(&s->mu);
    return size * n;
}

static int s_sse_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    s_sse_t *s = arg;
    pthread_mutex_lock(&s->mu);
    bool stop = s->stop;
    pthread_mutex_unlock(&s->mu);
    return stop ? 1 : 0;
}

static void *s_sse_run(void *arg)
{
    s_sse_t *s = arg;
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, s->url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 60000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_sse_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, s_sse_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, s);
    struct curl_slist *h = curl_slist_append(NULL, "Authorization: Bearer " S_VIEWER);
    h = curl_slist_append(h, "Accept: text/event-stream");
    char lei[128];
    if (s->last_event_id[0]) {
        snprintf(lei, sizeof lei, "Last-Event-ID: %s", s->last_event_id);
        h = curl_slist_append(h, lei);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    pthread_mutex_lock(&s->mu);
    s->status = status;
    s->done = true;
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static s_sse_t *s_sse_open(const char *query, const char *last_event_id)
{
    s_sse_t *s = sn_calloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    snprintf(s->url, sizeof s->url, "%s/api/v1/events%s", W.base, query ? query : "");
    if (last_event_id)
        sn_strlcpy(s->last_event_id, last_event_id, sizeof s->last_event_id);
    assert_int_equal(pthread_create(&s->thread, NULL, s_sse_run, s), 0);
    return s;
}

static void s_sse_close(s_sse_t **s_p)
{
    s_sse_t *s = *s_p;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    free(s->buf);
    free(s);
    *s_p = NULL;
}

static char *s_sse_text(s_sse_t *s)
{
    pthread_mutex_lock(&s->mu);
    char *t = sn_strdup(s->buf ? s->buf : "");
    pthread_mutex_unlock(&s->mu);
    return t;
}

typedef struct {
    char id[64];
    char event[160];
    char *data;
} s_event_t;

/* Parses complete blocks (ending in a blank line) into events; comments are counted. */
static size_t s_sse_events(s_sse_t *s, s_event_t *out, size_t max, int *comments)
{
    char *text = s_sse_text(s);
    size_t n = 0;
    if (comments)
        *comments = 0;
    char *p = text;
    for (;;) {
        char *end = strstr(p, "\n\n");
        if (!end)
            break;
        *end = '\0';
        s_event_t e = {0};
        bool has_data = false;
        for (char *line = p; line;) {
            char *nl = strchr(line, '\n');
            if (nl)
                *nl = '\0';
            if (line[0] == ':' && comments)
                (*comments)++;
            else if (strncmp(line, "id: ", 4) == 0)
                sn_strlcpy(e.id, line + 4, sizeof e.id);
            else if (strncmp(line, "event: ", 7) == 0)
                sn_strlcpy(e.event, line + 7, sizeof e.event);
            else if (strncmp(line, "data: ", 6) == 0) {
                assert_false(has_data); /* one line of JSON per event */
                e.data = sn_strdup(line + 6);
                has_data = true;
            }
            line = nl ? nl + 1 : NULL;
        }
        if (has_data && n < max)
            out[n++] = e;
        else
            free(e.data);
        p = end + 2;
    }
    free(text);
    return n;
}

static void s_events_free(s_event_t *ev, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ev[i].data);
}

static bool s_sse_started(s_sse_t *s)
{
    char *t = s_sse_text(s);
    bool started = strstr(t, "retry: 3000") != NULL;
    free(t);
    return started;
}

static bool s_sse_settled(void *arg)
{
    s_sse_t *s = arg;
    pthread_mutex_lock(&s->mu);
    bool done = s->done;
    pthread_mutex_unlock(&s->mu);
    return done || s_sse_started(s);
}

/* Opens a stream, again while the gateway refuses it (503), until it starts. */
static s_sse_t *s_sse_open_retry(const char *query, const char *last_event_id)
{
    int64_t deadline = sn_mono_ms() + 10000;
    while (sn_mono_ms() < deadline) {
        s_sse_t *s = s_sse_open(query, last_event_id);
        if (sn_test_wait_for(s_sse_settled, s, 5000) && s_sse_started(s))
            return s;
        s_sse_close(&s);
    }
    fail_msg("the event stream did not start");
    return NULL;
}

typedef struct {
    s_sse_t *s;
    size_t want;
    const char *needle;
} s_sse_wait_t;

static bool s_sse_has(void *arg)
{
    s_sse_wait_t *w = arg;
    if (w->needle) {
        char *t = s_sse_text(w->s);
        bool ok = strstr(t, w->needle) != NULL;
        free(t);
        return ok;
    }
    s_event_t ev[64];
    size_t n = s_sse_events(w->s, ev, SN_ARRAY_LEN(ev), NULL);
    s_events_free(ev, n);
    return n >= w->want;
}

static bool s_sse_wait(s_sse_t *s, size_t want, const char *needle, int timeout_ms)
{
    s_sse_wait_t w = {s, want, needle};
    return sn_test_wait_for(s_sse_has, &w, timeout_ms);
}

/* Commits one event to the journal; returns its stream id in @sid. */
static void s_commit(const char *type, bool with_deploy, char sid[SN_JOURNAL_ID_MAX])
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &W.src, type, id);
    env.correlation_id = "01JRUNSSE";
    Sentinel__V1__Run run = SENTINEL__V1__RUN__INIT;
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    if (with_deploy) {
        d.deploy_id = "01JDEP";
        d.run_id = "01JRUNSSE";
        d.project = "hello";
        d.environment = "staging";
        d.target = "web";
        d.release_id = "01JDEP";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY;
        env.deploy = &d;
    } else {
        run.run_id = "01JRUNSSE";
        run.project = "hello";
        run.environment = "staging";
        run.reason = "line one\nline two";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN;
        env.run = &run;
    }
    sn_journal_result_t res;
    assert_int_equal(sn_journal_commit(W.journal, NULL, NULL, 0, &env, &res), SN_OK);
    sn_strlcpy(sid, res.stream_id, SN_JOURNAL_ID_MAX);
}

static void test_gateway_sse_stream(void **state)
{
    s_sse_t *a = s_sse_open(NULL, NULL);
    assert_true(s_sse_wait(a, 0, "retry: 3000\n\n", 10000));
    char sid[5][SN_JOURNAL_ID_MAX];
    s_commit("run.started", false, sid[0]);
    s_commit("deploy.promoted", true, sid[1]);
    s_commit("run.step", false, sid[2]);
    s_commit("run.failed", false, sid[3]);
    assert_true(s_sse_wait(a, 4, NULL, 10000));
    s_event_t ev[64];
    size_t n = s_sse_events(a, ev, SN_ARRAY_LEN(ev), NULL);
    assert_int_equal(n, 4);
    static const char *const types[] = {
        "dev.cdevents.pipelinerun.started.0.3.0", "dev.cdevents.service.deployed.0.3.0",
        "dev.sentinel.run.step", "dev.cdevents.pipelinerun.finished.0.3.0"};
    char *path = sn_strdupf("%s/sse.jsonl", W.m.dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(ev[i].id, sid[i]); /* in order, id = stream id */
        assert_string_equal(ev[i].event, types[i]);
        json_t *ce = json_loads(ev[i].data, 0, NULL);
        assert_non_null(ce);
        assert_string_equal(json_string_value(json_object_get(ce, "type")), types[i]);
        assert_string_equal(json_string_value(json_object_get(ce, "sequence")), sid[i]);
        json_decref(ce);
        fprintf(f, "%s\n", ev[i].data);
    }
    assert_int_equal(fclose(f), 0);
    s_events_free(ev, n);
    /* Every event is a valid CloudEvent, CDEvents valid against the official schemas. */
    char *cmd = sn_strdupf("%s %s/tests/integration/validate_cdevents.py --schemas "
                           "%s/fixtures/cdevents/schemas %s",
                           S_PYTHON, SN_SOURCE_DIR, SN_SHARED_DIR, path);
    int st = system(cmd);
    free(cmd);
    free(path);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    /* Keep-alive comments while idle (interval 300 ms in this test). */
    assert_true(s_sse_wait(a, 0, "\n:ka\n\n", 5000));

    /* Resume after the first event: exactly what was missed, then live, no duplicate. */
    s_sse_t *b = s_sse_open(NULL, sid[0]);
    /* A type filter, from the beginning of the journal. */
    s_sse_t *c = s_sse_open("?type=deploy.&lastEventId=0", NULL);
    assert_true(s_sse_wait(b, 3, NULL, 10000));
    assert_true(s_sse_wait(c, 1, NULL, 10000));
    s_commit("run.succeeded", false, sid[4]);
    assert_true(s_sse_wait(b, 4, NULL, 10000));
    assert_true(s_sse_wait(a, 5, NULL, 10000));
    n = s_sse_events(b, ev, SN_ARRAY_LEN(ev), NULL);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(ev[i].id, sid[i + 1]);
    s_events_free(ev, n);
    n = s_sse_events(c, ev, SN_ARRAY_LEN(ev), NULL);
    assert_int_equal(n, 1);
    assert_string_equal(ev[0].id, sid[1]);
    assert_string_equal(ev[0].event, "dev.cdevents.service.deployed.0.3.0");
    s_events_free(ev, n);

    /* Trim the journal: a cursor older than what is kept gets a gap first. */
    char *key = sn_strdupf("%s%s", W.m.ns, SN_JOURNAL_STREAM);
    const char *trim[] = {"XTRIM", key, "MAXLEN", "2"};
    s_redis_cmd(4, trim, NULL);
    free(key);
    s_sse_close(&c);
    /* C's slot frees when the gateway notices C left (its next keep-alive write). */
    s_sse_t *d = s_sse_open_retry(NULL, sid[0]);
    assert_true(s_sse_wait(d, 3, NULL, 10000));
    n = s_sse_events(d, ev, SN_ARRAY_LEN(ev), NULL);
    assert_int_equal(n, 3);
    assert_string_equal(ev[0].event, "gap");
    assert_string_equal(ev[0].id, "");
    json_t *gap = json_loads(ev[0].data, 0, NULL);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(gap, "data"), "requestedId")), sid[0]);
    assert_string_equal(json_string_value(json_object_get(json_object_get(gap, "data"), "firstId")),
                        sid[3]);
    json_decref(gap);
    assert_string_equal(ev[1].id, sid[3]);
    assert_string_equal(ev[2].id, sid[4]);
    s_events_free(ev, n);
    s_sse_close(&a);
    s_sse_close(&b);
    s_sse_close(&d);
}

static void test_gateway_sse_cap(void **state)
{
    /* Streams closed by earlier tests are noticed at their next keep-alive: retry. */
    s_sse_t *open[S_MAX_SSE] = {0};
    for (int i = 0; i < S_MAX_SSE; i++)
        open[i] = s_sse_open_retry(NULL, NULL);
    s_resp_t r = s_http("GET", "/api/v1/events", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 503);
    assert_string_equal(s_error_code(&r), "over_capacity");
    free(r.body);
    /* The API is capped apart: it still answers. */
    r = s_http("GET", "/api/v1/runs", S_VIEWER, NULL, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);
    s_sse_close(&open[0]);
    s_sse_t *again = s_sse_open_retry(NULL, NULL);
    s_sse_close(&again);
    for (int i = 1; i < S_MAX_SSE; i++)
        s_sse_close(&open[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gateway_read_routes),
        cmocka_unit_test(test_gateway_metrics_exposition),
        cmocka_unit_test(test_gateway_writes_reach_buildpilot_on_behalf_of),
        cmocka_unit_test(test_gateway_bad_requests_change_nothing),
        cmocka_unit_test(test_gateway_sse_stream),
        cmocka_unit_test(test_gateway_sse_cap),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
