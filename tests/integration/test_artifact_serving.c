/* Artifacts served to other hosts, with real processes: redis-server, the broker, a
 * sentinel-agent gateway on "host A" (its store is the test's artifact store), and
 * sentinel-agent local-deployers on "host B" and "host C" (SENTINEL_HOST=hostb/hostc,
 * each with its own state_dir and an empty store) whose artifact_source is the gateway
 * (B) or a fake gateway in python that serves wrong bytes (C).
 *
 * Shown: GET/HEAD /api/v1/artifacts/{sha256} with an agent, viewer or operator token
 * (body = the file, Content-Type, Content-Length, ETag, Repr-Digest and Digest right),
 * 304 for If-None-Match; 401 without or with a bad token; an agent token refused on every
 * other route (403); 400 for malformed shas, 404 for an absent one, 405 for POST; a
 * corrupted file (a byte flipped in place, or a file under another artifact's name) is
 * not served (500), logged, alerted once (alert.raised in the journal), and served again
 * once repaired; a 20 MiB artifact streams without the gateway's RSS growing by that;
 * host B stages an artifact that exists only on host A (fetched through the gateway with
 * the agent token, hash checked, stored) and nginx serves the release; the token is in no
 * log; host C refuses a tampered download after one retry with a reason naming the hash
 * mismatch, keeps nothing, and recovers when the retry gets the right bytes; a truncated
 * download, a 404, a 403 and a 503 are refused with their reasons (4xx at once, the rest
 * after one retry). */
#include "sn_mesh.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "sentinel/sn_artifact.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_crypto.h"

/* The generator is part of sentinelctl, not of a library: compile it in here. */
#include "../../ctl/ctl_nginx.c"

#define S_AGENT_TOKEN "agent-token-7f3a"
#define S_VIEWER_TOKEN "viewer-token-7f3a"
#define S_OPERATOR_TOKEN "operator-token-7f3a"
#define S_PYTHON "/usr/bin/python3"
#define S_LARGE_BYTES (20 * 1024 * 1024)

typedef struct {
    sn_mesh_t m;
    sn_artifact_t *store_a; /* host A's store (the gateway's) */
    int gw_port;
    char base[64];
    pid_t gw;
    char *gw_log;
    int fake_port;
    pid_t fake;
    char *fake_log;
    pid_t ld_b, ld_c;
    char *ld_b_log, *ld_c_log;
    char *cfg_b, *cfg_c;
    char *state_b, *state_c;
    int site_b_live, site_b_preview;
    pid_t nginx;
    char *nginx_log;
    sn_redis_t *redis;
} s_world_t;

static s_world_t W;
static bool s_quiet;

/* ---- helpers -------------------------------------------------------------------------------- */

static char *s_hex_sha(const char *token)
{
    uint8_t d[SN_SHA256_LEN];
    assert_int_equal(sn_sha256(token, strlen(token), d), SN_OK);
    char *hex = sn_malloc(SN_SHA256_HEX_LEN + 1);
    sn_hex_encode(d, sizeof d, hex);
    return hex;
}

static void s_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/* A build output directory with index.html = @text, stored in host A's store. */
static void s_put(const char *tag, const char *text, char sha[SN_ARTIFACT_SHA_LEN + 1])
{
    char *src = sn_strdupf("%s/src-%s", W.m.dir, tag);
    assert_int_equal(mkdir(src, 0755), 0);
    char *index = sn_strdupf("%s/index.html", src);
    s_write_file(index, text);
    assert_int_equal(sn_artifact_put_dir(W.store_a, src, sha, NULL), SN_OK);
    free(index);
    free(src);
}

typedef struct {
    long status;
    char *body;
    size_t len;
    EVP_MD_CTX *md; /* set: the body is hashed, not kept */
    uint64_t streamed;
    char content_type[128];
    char content_length[32];
    char etag[96];
    char repr_digest[96];
    char digest[96];
} s_resp_t;

static size_t s_collect(char *data, size_t size, size_t n, void *arg)
{
    s_resp_t *r = arg;
    size_t add = size * n;
    if (r->md) {
        EVP_DigestUpdate(r->md, data, add);
        r->streamed += add;
        return add;
    }
    r->body = sn_realloc(r->body, r->len + add + 1);
    memcpy(r->body + r->len, data, add);
    r->len += add;
    r->body[r->len] = '\0';
    return add;
}

static void s_grab(const char *line, const char *name, char *out, size_t out_len)
{
    size_t n = strlen(name);
    if (strncasecmp(line, name, n) == 0 && line[n] == ':') {
        const char *v = line + n + 1;
        while (*v == ' ')
            v++;
        sn_strlcpy(out, v, out_len);
    }
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
    s_grab(line, "Content-Type", r->content_type, sizeof r->content_type);
    s_grab(line, "Content-Length", r->content_length, sizeof r->content_length);
    s_grab(line, "ETag", r->etag, sizeof r->etag);
    s_grab(line, "Repr-Digest", r->repr_digest, sizeof r->repr_digest);
    s_grab(line, "Digest", r->digest, sizeof r->digest);
    return len;
}

/* One request to the gateway. @token NULL: no Authorization; @extra_header may be NULL;
 * @md set: the body is hashed into it instead of kept. */
static s_resp_t s_http(const char *method, const char *path, const char *token,
                       const char *extra_header, EVP_MD_CTX *md)
{
    s_resp_t r = {.md = md};
    CURL *c = curl_easy_init();
    char url[512];
    snprintf(url, sizeof url, "%s%s", W.base, path);
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "GET") != 0)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L); /* dot segments reach the gateway */
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
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
    if (extra_header)
        h = curl_slist_append(h, extra_header);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    else if (!s_quiet)
        fprintf(stderr, "curl %s %s: %s\n", method, path, errbuf);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (!r.body)
        r.body = sn_strdup("");
    return r;
}

static const char *s_error_code(const s_resp_t *r)
{
    static char code[64];
    json_t *j = json_loads(r->body, 0, NULL);
    const char *c = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    sn_strlcpy(code, c ? c : "", sizeof code);
    json_decref(j);
    return code;
}

static void s_expect_status(const char *method, const char *path, const char *token, long status,
                            const char *code)
{
    s_resp_t r = s_http(method, path, token, NULL, NULL);
    if (r.status != status || (code && strcmp(s_error_code(&r), code) != 0))
        print_error("%s %s: status %ld body %s\n", method, path, r.status, r.body);
    assert_int_equal(r.status, status);
    if (code)
        assert_string_equal(s_error_code(&r), code);
    free(r.body);
}

static char *s_read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    char *buf = sn_malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* The base64 of the sha256 @hex, as Repr-Digest carries it. */
static void s_b64(const char *hex, char out[64])
{
    uint8_t raw[32];
    assert_int_equal(sn_hex_decode(hex, 64, raw, sizeof raw), SN_OK);
    EVP_EncodeBlock((unsigned char *)out, raw, (int)sizeof raw);
}

/* A line of /proc/<pid>/status in kB: "VmRSS" now, "VmHWM" the peak so far. */
static long s_status_kb(pid_t pid, const char *field)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    char *text = sn_test_read_file(path);
    assert_non_null(text);
    char key[32];
    snprintf(key, sizeof key, "\n%s:", field);
    const char *p = strstr(text, key);
    assert_non_null(p);
    long kb = strtol(p + strlen(key), NULL, 10);
    free(text);
    return kb;
}

/* How many alert.raised events for artifact @sha the journal holds. */
static int s_alerts_for(const char *sha)
{
    size_t count = 0;
    sn_envelope_t **envs = sn_mesh_journal(&W.m, W.redis, &count);
    int n = 0;
    for (size_t i = 0; i < count; i++) {
        const sn_envelope_t *e = envs[i];
        if (strcmp(e->type, "alert.raised") == 0 &&
            e->body_case == SENTINEL__V1__ENVELOPE__BODY_ALERT &&
            strcmp(e->alert->name, "artifact-corrupted") == 0 && strstr(e->alert->summary, sha))
            n++;
    }
    sn_mesh_envelopes_free(envs, count);
    return n;
}

typedef struct {
    const char *sha;
    int want;
} s_alert_wait_t;

static bool s_alerted(void *arg)
{
    s_alert_wait_t *w = arg;
    return s_alerts_for(w->sha) >= w->want;
}

static bool s_healthy(void *arg)
{
    (void)arg;
    s_resp_t r = s_http("GET", "/healthz", NULL, NULL, NULL);
    bool ok = r.status == 200;
    free(r.body);
    return ok;
}

static bool s_file_exists(void *arg)
{
    return access((const char *)arg, F_OK) == 0;
}

/* A process of sentinel-agent @role with @config as @instance on host @host. */
static pid_t s_spawn_agent(const char *role, const char *config, const char *instance,
                           const char *host, const char *log)
{
    setenv("SENTINEL_HOST", host, 1);
    char *bin = sn_test_bin("sentinel-agent");
    char *argv[] = {bin,          (char *)role,     "--config", (char *)config,
                    "--instance", (char *)instance, NULL};
    pid_t pid = sn_test_spawn(argv, log);
    free(bin);
    assert_true(pid > 0);
    return pid;
}

/* Host @host's config: the mesh's, with its own state_dir and an artifact_source. */
static char *s_host_config(const char *host, const char *source_url, char **state_dir)
{
    char *text = sn_test_read_file(W.m.config);
    assert_non_null(text);
    char *old = sn_strdupf("state_dir: %s/var\n", W.m.dir);
    char *at = strstr(text, old);
    assert_non_null(at);
    *state_dir = sn_strdupf("%s/%s", W.m.dir, host);
    char *yaml = sn_strdupf("%.*sstate_dir: %s\n%s"
                            "artifact_source:\n"
                            "  url: \"%s\"\n"
                            "  token: \"${env:SN_TEST_ARTIFACT_TOKEN}\"\n"
                            "  timeout_ms: 20000\n",
                            (int)(at - text), text, *state_dir, at + strlen(old), source_url);
    char *path = sn_strdupf("%s/sentinel-%s.yml", W.m.dir, host);
    s_write_file(path, yaml);
    free(yaml);
    free(old);
    free(text);
    return path;
}

static bool s_stop_ok(pid_t pid, const char *name, const char *log)
{
    if (pid <= 0)
        return true;
    int st = sn_test_stop(pid, SIGTERM, 5000);
    bool ok = st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (!ok || getenv("SN_MESH_DUMP")) {
        char *text = log ? sn_test_read_file(log) : NULL;
        fprintf(stderr, "---- %s (status %d) ----\n%s", name, st, text ? text : "");
        free(text);
    }
    return ok;
}

/* Asks @service to stage @sha as deploy @deploy_id of @target. The reply (caller frees). */
static sn_envelope_t *s_stage(const char *service, const char *target, const char *deploy_id,
                              const char *sha)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &W.m.source, "deploy.request", id);
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    d.deploy_id = (char *)deploy_id;
    d.run_id = "run-1";
    d.project = "hello";
    d.environment = "staging";
    d.target = (char *)target;
    Sentinel__V1__DeployRequest req = SENTINEL__V1__DEPLOY_REQUEST__INIT;
    req.op = "stage";
    req.deploy = &d;
    req.artifact_sha256 = (char *)sha;
    req.commit = "c0ffee";
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST;
    env.deploy_request = &req;
    sn_envelope_t *reply = NULL;
    sn_nak_reason_t nak = SN_NAK_NONE;
    sn_rc_t rc = sn_mesh_call(&W.m, service, &env, 30000, &reply, &nak);
    if (rc != SN_OK)
        print_error("%s: rc %d nak %d\n", service, rc, (int)nak);
    assert_int_equal(rc, SN_OK);
    assert_non_null(reply);
    assert_int_equal(reply->body_case, SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT);
    return reply;
}

static size_t s_count_prefix(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

static json_t *s_fake(const char *path)
{
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", W.fake_port, path);
    s_resp_t r = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_cleanup(c);
    json_t *j = json_loads(r.body ? r.body : "", 0, NULL);
    free(r.body);
    return j;
}

static int s_fake_requests(void)
{
    json_t *j = s_fake("/__stats");
    assert_non_null(j);
    int n = (int)json_integer_value(json_object_get(j, "requests"));
    json_t *auth = json_object_get(j, "auth");
    for (size_t i = 0; i < json_array_size(auth); i++)
        assert_string_equal(json_string_value(json_array_get(auth, i)), "Bearer " S_AGENT_TOKEN);
    json_decref(j);
    return n;
}

static void s_fake_mode(const char *mode)
{
    char path[128];
    snprintf(path, sizeof path, "/__control?mode=%s", mode);
    json_decref(s_fake(path)); /* "ok", not JSON */
}

typedef struct {
    int port;
    const char *needle;
} s_serve_wait_t;

static bool s_serves(void *arg)
{
    s_serve_wait_t *w = arg;
    CURL *c = curl_easy_init();
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", w->port);
    s_resp_t r = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 2000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    bool ok = curl_easy_perform(c) == CURLE_OK;
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    ok = ok && status == 200 && r.body && strstr(r.body, w->needle);
    free(r.body);
    return ok;
}

/* ---- set-up ------------------------------------------------------------------------------- */

static int s_setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    memset(&W, 0, sizeof W);
    W.gw_port = sn_test_free_port();
    snprintf(W.base, sizeof W.base, "http://127.0.0.1:%d", W.gw_port);
    W.site_b_live = sn_test_free_port();
    W.site_b_preview = sn_test_free_port();
    int c_live = sn_test_free_port(), c_preview = sn_test_free_port();
    char *ah = s_hex_sha(S_AGENT_TOKEN), *vh = s_hex_sha(S_VIEWER_TOKEN),
         *oh = s_hex_sha(S_OPERATOR_TOKEN);
    char *yaml =
        sn_strdupf("targets:\n"
                   "  - {name: siteb, type: local_static, host: hostb, "
                   "listen: \"127.0.0.1:%d\", preview_listen: \"127.0.0.1:%d\"}\n"
                   "  - {name: sitec, type: local_static, host: hostc, "
                   "listen: \"127.0.0.1:%d\", preview_listen: \"127.0.0.1:%d\"}\n"
                   "gateway:\n"
                   "  listen: 127.0.0.1:%d\n"
                   "  tokens:\n"
                   "    - {name: hostb-deployer, sha256: %s, role: agent}\n"
                   "    - {name: viewer1, sha256: %s, role: viewer}\n"
                   "    - {name: ops, sha256: %s, role: operator}\n",
                   W.site_b_live, W.site_b_preview, c_live, c_preview, W.gw_port, ah, vh, oh);
    free(ah);
    free(vh);
    free(oh);
    bool ok = sn_mesh_start(&W.m, "artsrv", yaml);
    free(yaml);
    assert_true(ok);
    sn_redis_opts_t ro = {
        .unix_path = W.m.redis.unix_path, .namespace_ = W.m.ns, .timeout_ms = 2000};
    W.redis = sn_redis_new(&ro);
    assert_non_null(W.redis);

    /* Host A: the store and its gateway. */
    char *store = sn_strdupf("%s/var/artifacts", W.m.dir);
    W.store_a = sn_artifact_new(store, NULL);
    free(store);
    assert_non_null(W.store_a);
    setenv("SN_TEST_ARTIFACT_TOKEN", S_AGENT_TOKEN, 1);
    W.gw_log = sn_strdupf("%s/gateway.log", W.m.dir);
    W.gw = s_spawn_agent("gateway", W.m.config, "gw-a", "hosta", W.gw_log);
    s_quiet = true;
    assert_true(sn_test_wait_for(s_healthy, NULL, 15000));
    s_quiet = false;

    /* The fake gateway that host C fetches from (serving host A's store). */
    W.fake_port = sn_test_free_port();
    char *ready = sn_strdupf("%s/fake.ready", W.m.dir);
    char *script = sn_strdupf("%s/tests/fakes/fake_artifact_gateway.py", SN_SOURCE_DIR);
    char port[16];
    snprintf(port, sizeof port, "%d", W.fake_port);
    char *fargv[] = {S_PYTHON,  script, "--port",  port,
                     "--ready", ready,  "--store", (char *)sn_artifact_dir(W.store_a),
                     NULL};
    W.fake_log = sn_strdupf("%s/fake.log", W.m.dir);
    W.fake = sn_test_spawn(fargv, W.fake_log);
    assert_true(W.fake > 0);
    assert_true(sn_test_wait_for(s_file_exists, ready, 10000));
    free(script);
    free(ready);

    /* Hosts B and C: their own state dirs, empty stores. */
    W.cfg_b = s_host_config("hostb", W.base, &W.state_b);
    char fake_url[64];
    snprintf(fake_url, sizeof fake_url, "http://127.0.0.1:%d/", W.fake_port);
    W.cfg_c = s_host_config("hostc", fake_url, &W.state_c);
    W.ld_b_log = sn_strdupf("%s/ld-b.log", W.m.dir);
    W.ld_c_log = sn_strdupf("%s/ld-c.log", W.m.dir);
    W.ld_b = s_spawn_agent("local-deployer", W.cfg_b, "ld-b", "hostb", W.ld_b_log);
    W.ld_c = s_spawn_agent("local-deployer", W.cfg_c, "ld-c", "hostc", W.ld_c_log);
    assert_true(sn_mesh_wait_service(&W.m, "deploy.local.hostb", 1, 15000));
    assert_true(sn_mesh_wait_service(&W.m, "deploy.local.hostc", 1, 15000));
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    bool ok = true;
    if (W.nginx > 0)
        ok = sn_test_stop(W.nginx, SIGTERM, 5000) >= 0 && ok;
    ok = s_stop_ok(W.ld_b, "ld-b", W.ld_b_log) && ok;
    ok = s_stop_ok(W.ld_c, "ld-c", W.ld_c_log) && ok;
    ok = s_stop_ok(W.gw, "gateway", W.gw_log) && ok;
    ok = s_stop_ok(W.fake, "fake gateway", W.fake_log) && ok;
    sn_redis_destroy(&W.redis);
    sn_artifact_destroy(&W.store_a);
    int bad = sn_mesh_stop(&W.m);
    free(W.gw_log);
    free(W.fake_log);
    free(W.ld_b_log);
    free(W.ld_c_log);
    free(W.cfg_b);
    free(W.cfg_c);
    free(W.state_b);
    free(W.state_c);
    free(W.nginx_log);
    unsetenv("SN_TEST_ARTIFACT_TOKEN");
    curl_global_cleanup();
    return ok && bad == 0 ? 0 : -1;
}

/* ---- the gateway ------------------------------------------------------------------------------
 */

static void test_artifact_serving_gateway_routes(void **state)
{
    (void)state;
    char sha[SN_ARTIFACT_SHA_LEN + 1];
    s_put("routes", "<h1>routes</h1>\n", sha);
    char *file = sn_artifact_path(W.store_a, sha);
    size_t file_len = 0;
    char *bytes = s_read_all(file, &file_len);
    char path[128];
    snprintf(path, sizeof path, "/api/v1/artifacts/%s", sha);
    char b64[64], want_repr[96], want_digest[96], want_etag[80], want_len[32];
    s_b64(sha, b64);
    snprintf(want_repr, sizeof want_repr, "sha-256=:%s:", b64);
    snprintf(want_digest, sizeof want_digest, "sha-256=%s", b64);
    snprintf(want_etag, sizeof want_etag, "\"%s\"", sha);
    snprintf(want_len, sizeof want_len, "%zu", file_len);

    /* every allowed role gets the file, byte for byte, with its headers */
    const char *const allowed[] = {S_AGENT_TOKEN, S_VIEWER_TOKEN, S_OPERATOR_TOKEN};
    for (size_t i = 0; i < SN_ARRAY_LEN(allowed); i++) {
        s_resp_t r = s_http("GET", path, allowed[i], NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.len, file_len);
        assert_memory_equal(r.body, bytes, file_len);
        assert_string_equal(r.content_type, "application/x-tar");
        assert_string_equal(r.content_length, want_len);
        assert_string_equal(r.etag, want_etag);
        assert_string_equal(r.repr_digest, want_repr);
        assert_string_equal(r.digest, want_digest);
        free(r.body);
    }
    /* HEAD: the same headers, no body */
    s_resp_t r = s_http("HEAD", path, S_AGENT_TOKEN, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 0);
    assert_string_equal(r.content_length, want_len);
    assert_string_equal(r.repr_digest, want_repr);
    assert_string_equal(r.etag, want_etag);
    free(r.body);
    /* a conditional GET with the ETag */
    char inm[128];
    snprintf(inm, sizeof inm, "If-None-Match: \"%s\"", sha);
    r = s_http("GET", path, S_AGENT_TOKEN, inm, NULL);
    assert_int_equal(r.status, 304);
    assert_int_equal(r.len, 0);
    free(r.body);

    /* authentication */
    s_expect_status("GET", path, NULL, 401, "unauthorized");
    s_expect_status("HEAD", path, NULL, 401, NULL);
    s_expect_status("GET", path, "not-a-token", 401, "unauthorized");
    /* the agent role reaches nothing else */
    s_expect_status("GET", "/api/v1/runs", S_AGENT_TOKEN, 403, "forbidden");
    s_expect_status("GET", "/api/v1/agents", S_AGENT_TOKEN, 403, "forbidden");
    s_expect_status("GET", "/metrics", S_AGENT_TOKEN, 403, "forbidden");
    s_expect_status("GET", "/api/v1/runs", S_VIEWER_TOKEN, 200, NULL);

    /* bad names and absent artifacts */
    char upper[SN_ARTIFACT_SHA_LEN + 1];
    for (size_t i = 0; i <= SN_ARTIFACT_SHA_LEN; i++)
        upper[i] = (char)(sha[i] >= 'a' && sha[i] <= 'f' ? sha[i] - 'a' + 'A' : sha[i]);
    char long_sha[SN_ARTIFACT_SHA_LEN + 2];
    snprintf(long_sha, sizeof long_sha, "%s0", sha);
    const char *const malformed[] = {
        "abc", upper, long_sha,
        "..",  "g",   "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"};
    for (size_t i = 0; i < SN_ARRAY_LEN(malformed); i++) {
        char p[256];
        snprintf(p, sizeof p, "/api/v1/artifacts/%s", malformed[i]);
        s_expect_status("GET", p, S_AGENT_TOKEN, 400, "bad_request");
    }
    s_expect_status("GET", "/api/v1/artifacts/../../etc/passwd", S_AGENT_TOKEN, 404, NULL);
    s_expect_status("GET",
                    "/api/v1/artifacts/"
                    "0000000000000000000000000000000000000000000000000000000000000000",
                    S_AGENT_TOKEN, 404, "not_found");
    s_expect_status("HEAD",
                    "/api/v1/artifacts/"
                    "0000000000000000000000000000000000000000000000000000000000000000",
                    S_AGENT_TOKEN, 404, NULL);
    s_expect_status("POST", path, S_OPERATOR_TOKEN, 405, "method_not_allowed");
    free(bytes);
    free(file);
}

static void test_artifact_serving_corrupted_not_served(void **state)
{
    (void)state;
    char sha[SN_ARTIFACT_SHA_LEN + 1];
    s_put("corrupt", "<h1>soon corrupted</h1>\n", sha);
    char path[128];
    snprintf(path, sizeof path, "/api/v1/artifacts/%s", sha);
    /* served (and its verdict cached) */
    s_expect_status("GET", path, S_AGENT_TOKEN, 200, NULL);

    /* a byte flipped in place: same inode, same size */
    char *file = sn_artifact_path(W.store_a, sha);
    int fd = open(file, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b = 0;
    assert_int_equal(pread(fd, &b, 1, 520), 1);
    uint8_t flipped = b ^ 0x20;
    assert_int_equal(pwrite(fd, &flipped, 1, 520), 1);
    s_resp_t r = s_http("GET", path, S_AGENT_TOKEN, NULL, NULL);
    assert_int_equal(r.status, 500);
    assert_string_equal(s_error_code(&r), "artifact_corrupted");
    assert_null(strstr(r.body, "soon corrupted"));
    free(r.body);
    s_expect_status("HEAD", path, S_AGENT_TOKEN, 500, NULL);
    s_expect_status("GET", path, S_VIEWER_TOKEN, 500, "artifact_corrupted");
    s_alert_wait_t w = {sha, 1};
    assert_true(sn_test_wait_for(s_alerted, &w, 5000));
    assert_int_equal(s_alerts_for(sha), 1); /* once, not per request */
    assert_true(sn_test_count_in_file(W.gw_log, "artifact corrupted") >= 1);

    /* repaired: served again (the cache saw the file change) */
    assert_int_equal(pwrite(fd, &b, 1, 520), 1);
    close(fd);
    s_expect_status("GET", path, S_AGENT_TOKEN, 200, NULL);

    /* a file under another artifact's name */
    char other[SN_ARTIFACT_SHA_LEN + 1];
    s_put("other", "<h1>other</h1>\n", other);
    char *other_file = sn_artifact_path(W.store_a, other);
    size_t len = 0;
    char *bytes = s_read_all(file, &len);
    unlink(other_file);
    FILE *f = fopen(other_file, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    snprintf(path, sizeof path, "/api/v1/artifacts/%s", other);
    s_expect_status("GET", path, S_AGENT_TOKEN, 500, "artifact_corrupted");
    s_alert_wait_t w2 = {other, 1};
    assert_true(sn_test_wait_for(s_alerted, &w2, 5000));
    unlink(other_file);
    s_expect_status("GET", path, S_AGENT_TOKEN, 404, "not_found");
    free(bytes);
    free(other_file);
    free(file);
}

static void test_artifact_serving_large_streamed(void **state)
{
    (void)state;
    char *src = sn_strdupf("%s/src-large", W.m.dir);
    assert_int_equal(mkdir(src, 0755), 0);
    char *blob = sn_strdupf("%s/blob.bin", src);
    int fd = open(blob, O_WRONLY | O_CREAT | O_EXCL, 0644);
    assert_true(fd >= 0);
    uint8_t *chunk = sn_malloc(1024 * 1024);
    for (int i = 0; i < S_LARGE_BYTES / (1024 * 1024); i++) {
        sn_random_bytes(chunk, 1024 * 1024);
        assert_int_equal(write(fd, chunk, 1024 * 1024), 1024 * 1024);
    }
    free(chunk);
    close(fd);
    char sha[SN_ARTIFACT_SHA_LEN + 1];
    uint64_t size = 0;
    assert_int_equal(sn_artifact_put_dir(W.store_a, src, sha, &size), SN_OK);
    assert_true(size > S_LARGE_BYTES);
    char path[128];
    snprintf(path, sizeof path, "/api/v1/artifacts/%s", sha);

    /* warm up (the first request of the process allocates its pools) */
    s_expect_status("HEAD", path, S_AGENT_TOKEN, 200, NULL);
    long before = s_status_kb(W.gw, "VmRSS");
    long peak_before = s_status_kb(W.gw, "VmHWM");
    for (int round = 0; round < 2; round++) {
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        assert_int_equal(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
        s_resp_t r = s_http("GET", path, S_AGENT_TOKEN, NULL, md);
        assert_int_equal(r.status, 200);
        assert_true(r.streamed == size);
        uint8_t d[32];
        unsigned dl = 0;
        assert_int_equal(EVP_DigestFinal_ex(md, d, &dl), 1);
        char got[65];
        sn_hex_encode(d, 32, got);
        assert_string_equal(got, sha);
        EVP_MD_CTX_free(md);
        free(r.body);
    }
    long after = s_status_kb(W.gw, "VmRSS");
    long peak_after = s_status_kb(W.gw, "VmHWM");
    print_message("gateway VmRSS %ld -> %ld kB, peak %ld -> %ld kB over two %llu-byte "
                  "downloads\n",
                  before, after, peak_before, peak_after, (unsigned long long)size);
    /* far less than the 20 MiB served twice, now and at the peak */
    assert_true(after - before < 8 * 1024);
    assert_true(peak_after - peak_before < 8 * 1024);
    free(blob);
    free(src);
}

/* ---- the deployers ----------------------------------------------------------------------------
 */

static void test_artifact_serving_host_b_fetches(void **state)
{
    (void)state;
    char sha[SN_ARTIFACT_SHA_LEN + 1];
    s_put("hostb", "<h1>built on host A</h1>\n", sha);
    char *b_store = sn_strdupf("%s/artifacts", W.state_b);
    char *b_file = sn_strdupf("%s/%s.tar", b_store, sha);
    assert_int_equal(access(b_file, F_OK), -1); /* only host A has it */

    sn_envelope_t *reply = s_stage("deploy.local.hostb", "siteb", "dep-b1", sha);
    const Sentinel__V1__DeployResult *res = reply->deploy_result;
    if (!res->ok)
        print_error("stage on host B: %s\n", res->reason);
    assert_true(res->ok);
    assert_int_equal(res->deploy->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED);
    sn_envelope_free(&reply);
    /* the artifact is in B's store now, whole */
    sn_artifact_t *store_b = sn_artifact_new(b_store, NULL);
    assert_non_null(store_b);
    assert_int_equal(sn_artifact_verify(store_b, sha), SN_OK);
    sn_artifact_destroy(&store_b);
    assert_int_equal(s_count_prefix(b_store, ".tmp-"), 0);
    char *index = sn_strdupf("%s/sites/siteb/releases/dep-b1/index.html", W.state_b);
    char *text = sn_test_read_file(index);
    assert_non_null(text);
    assert_non_null(strstr(text, "built on host A"));
    free(text);
    free(index);

    /* nginx on host B serves the staged release on its preview address */
    sn_config_t cfg;
    char err[512] = "";
    if (sn_config_load(W.cfg_b, &cfg, err, sizeof err) != SN_OK)
        print_error("config: %s\n", err);
    assert_string_equal(err, "");
    ctl_nginx_t ng;
    assert_int_equal(ctl_nginx_write(&cfg, "hostb", &ng), SN_OK);
    assert_int_equal(ng.servers, 2); /* siteb only: sitec is host C's */
    char *bin = ctl_nginx_find_binary();
    assert_non_null(bin);
    W.nginx_log = sn_strdupf("%s/nginx.out", W.m.dir);
    char *argv[] = {bin, "-c", ng.conf, "-p", ng.prefix, "-e", ng.error_log, NULL};
    W.nginx = sn_test_spawn(argv, W.nginx_log);
    assert_true(W.nginx > 0);
    s_serve_wait_t sw = {W.site_b_preview, "built on host A"};
    assert_true(sn_test_wait_for(s_serves, &sw, 10000));
    free(bin);
    ctl_nginx_fini(&ng);
    sn_config_fini(&cfg);

    /* the second stage of the same artifact needs no fetch */
    int fetched = sn_test_count_in_file(W.ld_b_log, "fetched artifact");
    assert_int_equal(fetched, 1);
    reply = s_stage("deploy.local.hostb", "siteb", "dep-b2", sha);
    assert_true(reply->deploy_result->ok);
    sn_envelope_free(&reply);
    assert_int_equal(sn_test_count_in_file(W.ld_b_log, "fetched artifact"), 1);

    /* an artifact that host A does not have either: refused with the 404 */
    reply = s_stage("deploy.local.hostb", "siteb", "dep-b3",
                    "1111111111111111111111111111111111111111111111111111111111111111");
    res = reply->deploy_result;
    assert_false(res->ok);
    assert_false(res->is_transient);
    assert_non_null(strstr(res->reason, "404"));
    sn_envelope_free(&reply);

    /* the token is in no log */
    assert_int_equal(sn_test_count_in_file(W.ld_b_log, S_AGENT_TOKEN), 0);
    assert_int_equal(sn_test_count_in_file(W.gw_log, S_AGENT_TOKEN), 0);
    assert_true(sn_test_count_in_file(W.gw_log, "to=hostb-deployer") >= 1);
    free(b_file);
    free(b_store);
}

static void test_artifact_serving_tampered_source_refused(void **state)
{
    (void)state;
    char sha[SN_ARTIFACT_SHA_LEN + 1];
    s_put("hostc", "<h1>for host C</h1>\n", sha);
    char *c_store = sn_strdupf("%s/artifacts", W.state_c);
    char *c_file = sn_strdupf("%s/%s.tar", c_store, sha);

    /* wrong bytes every time: refused after one retry, nothing kept */
    s_fake_mode("bad");
    sn_envelope_t *reply = s_stage("deploy.local.hostc", "sitec", "dep-c1", sha);
    const Sentinel__V1__DeployResult *res = reply->deploy_result;
    assert_false(res->ok);
    assert_false(res->is_transient);
    if (!strstr(res->reason, "hash mismatch"))
        print_error("reason: %s\n", res->reason);
    assert_non_null(strstr(res->reason, "hash mismatch"));
    assert_non_null(strstr(res->reason, sha));
    sn_envelope_free(&reply);
    assert_int_equal(s_fake_requests(), 2);
    assert_int_equal(access(c_file, F_OK), -1);
    assert_int_equal(s_count_prefix(c_store, ".tmp-"), 0);
    char *rel = sn_strdupf("%s/sites/sitec/releases/dep-c1", W.state_c);
    assert_int_equal(access(rel, F_OK), -1);
    free(rel);

    /* a truncated body: refused too */
    s_fake_mode("truncate");
    reply = s_stage("deploy.local.hostc", "sitec", "dep-c2", sha);
    res = reply->deploy_result;
    assert_false(res->ok);
    assert_true(res->is_transient);
    assert_non_null(strstr(res->reason, "download failed"));
    sn_envelope_free(&reply);
    assert_int_equal(s_fake_requests(), 2);
    assert_int_equal(access(c_file, F_OK), -1);
    assert_int_equal(s_count_prefix(c_store, ".tmp-"), 0);

    /* a source that refuses the token */
    s_fake_mode("status&status=403");
    reply = s_stage("deploy.local.hostc", "sitec", "dep-c3", sha);
    res = reply->deploy_result;
    assert_false(res->ok);
    assert_false(res->is_transient);
    assert_non_null(strstr(res->reason, "403"));
    sn_envelope_free(&reply);
    assert_int_equal(s_fake_requests(), 1); /* no retry for a 4xx */

    /* a source in trouble (5xx): retried once, then a transient failure */
    s_fake_mode("status&status=503");
    reply = s_stage("deploy.local.hostc", "sitec", "dep-c5", sha);
    res = reply->deploy_result;
    assert_false(res->ok);
    assert_true(res->is_transient);
    assert_non_null(strstr(res->reason, "answered 503"));
    sn_envelope_free(&reply);
    assert_int_equal(s_fake_requests(), 2);

    /* wrong bytes once, then the right ones: the retry stages it */
    s_fake_mode("bad_once");
    reply = s_stage("deploy.local.hostc", "sitec", "dep-c4", sha);
    res = reply->deploy_result;
    if (!res->ok)
        print_error("reason: %s\n", res->reason);
    assert_true(res->ok);
    sn_envelope_free(&reply);
    assert_int_equal(s_fake_requests(), 2);
    assert_int_equal(access(c_file, F_OK), 0);
    assert_true(sn_test_count_in_file(W.ld_c_log, "hash mismatch") >= 1);
    assert_int_equal(sn_test_count_in_file(W.ld_c_log, S_AGENT_TOKEN), 0);
    free(c_file);
    free(c_store);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_artifact_serving_gateway_routes),
        cmocka_unit_test(test_artifact_serving_corrupted_not_served),
        cmocka_unit_test(test_artifact_serving_large_streamed),
        cmocka_unit_test(test_artifact_serving_host_b_fetches),
        cmocka_unit_test(test_artifact_serving_tampered_source_refused),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
