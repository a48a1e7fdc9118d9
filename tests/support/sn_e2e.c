/* End-to-end harness: the whole product under `sentinelctl up`. */
#include "sn_e2e.h"

#include "sentinel/sn_crypto.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SN_SOURCE_DIR
#define SN_SOURCE_DIR "."
#endif

static bool s_sh(const char *cwd, const char *fmt, ...) SN_PRINTF(2, 3);

/* Runs a shell command line built from trusted test values; true on exit 0. */
static bool s_sh(const char *cwd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *cmd = NULL;
    if (vasprintf(&cmd, fmt, ap) < 0)
        cmd = NULL;
    va_end(ap);
    SN_ASSERT(cmd);
    char *full = sn_strdupf("cd '%s' && %s >/dev/null 2>&1", cwd ? cwd : "/", cmd);
    int rc = system(full);
    free(full);
    free(cmd);
    return rc == 0;
}

static bool s_ready(void *arg)
{
    sn_e2e_t *self = arg;
    /* buildpilot leads and local-deployer and nginx serve. */
    if (sn_test_count_in_file(self->log, "elected leader") < 1)
        return false;
    long status = 0;
    char *body = sn_e2e_get(self->preview_port, "/", &status);
    free(body);
    return status > 0;
}

bool sn_e2e_start(sn_e2e_t *self, const char *tag, const char *extra_yaml)
{
    sn_e2e_opts_t o = {.tag = tag, .extra_yaml = extra_yaml};
    return sn_e2e_start_ex(self, &o);
}

bool sn_e2e_start_ex(sn_e2e_t *self, const sn_e2e_opts_t *opts)
{
    const char *tag = opts->tag;
    const char *extra_yaml = opts->extra_yaml;
    memset(self, 0, sizeof *self);
    self->dir = sn_test_tmpdir(tag);
    chmod(self->dir, 0711); /* builds run as nobody under <dir>/var/builds */
    self->state = sn_strdupf("%s/var", self->dir);
    self->config = sn_strdupf("%s/sentinel.yml", self->dir);
    self->repo = sn_strdupf("%s/var/hello-site.git", self->dir);
    self->clone = sn_strdupf("%s/clone", self->dir);
    self->log = sn_strdupf("%s/up.log", self->dir);
    self->ns = sn_strdupf("e2e%d:", (int)getpid());
    self->live_port = sn_test_free_port();
    self->preview_port = sn_test_free_port();
    self->prod_port = sn_test_free_port();
    self->prod_preview_port = sn_test_free_port();
    self->gateway_port = sn_test_free_port();
    self->fake_port = sn_test_free_port();
    self->sink_port = sn_test_free_port();
    char alice[65], bob[65];
    uint8_t digest[32];
    SN_ASSERT(sn_sha256(SN_E2E_TOKEN_ALICE, strlen(SN_E2E_TOKEN_ALICE), digest) == SN_OK);
    sn_hex_encode(digest, sizeof digest, alice);
    SN_ASSERT(sn_sha256(SN_E2E_TOKEN_BOB, strlen(SN_E2E_TOKEN_BOB), digest) == SN_OK);
    sn_hex_encode(digest, sizeof digest, bob);
    FILE *f = fopen(self->config, "w");
    if (!f)
        return false;
    fprintf(f,
            "namespace: \"%s\"\n"
            "state_dir: %s\n"
            "log_level: info\n"
            "broker:\n  rpc: tcp://127.0.0.1:%d\n  pub: tcp://127.0.0.1:%d\n"
            "  sub: tcp://127.0.0.1:%d\n  heartbeat_ms: 250\n  heartbeat_liveness: 4\n"
            "redis: embedded\n"
            "runtime:\n  leader_ttl_ms: 1500\n  job_lease_ms: 5s\n  shutdown_grace_ms: 3s\n"
            "  agent_ttl_ms: 3s\n"
            "processes:\n"
            "  - {role: buildpilot, instances: 2}\n"
            "  - {role: build-validator, instances: 1}\n"
            "  - {role: infraguard, instances: 1}\n"
            "  - {role: local-deployer, instances: 1}\n"
            "  - {role: deployment-watcher, instances: 1}\n"
            "  - {role: autoheal-executor, instances: 1}\n"
            "  - {role: notifier, instances: 2}\n"
            "  - {role: gateway, instances: 1}\n"
            "%s"
            "projects:\n"
            "  - name: hello\n"
            "    repo: %s\n"
            "    seed_from: %s/examples/hello-site\n"
            "    poll_interval_ms: 500ms\n"
            "    build_steps: [\"./build.sh\"]\n"
            "    build_output: public\n"
            "    build_timeout_s: 8\n"
            "    environments:\n"
            "      - name: staging\n"
            "        branch: staging\n"
            "        targets: %s\n"
            "        step_timeout_s: 60\n"
            "      - name: production\n"
            "        branch: main\n"
            "        approval: {required: true}\n"
            "        promote_from: staging\n"
            "        targets: [hello-prod]\n"
            "        step_timeout_s: 60\n"
            "%s"
            "targets:\n"
            "  - name: hello-staging\n"
            "    type: local_static\n"
            "    listen: 127.0.0.1:%d\n"
            "    preview_listen: 127.0.0.1:%d\n"
            "    url: http://127.0.0.1:%d\n"
            "    check: {path: /, status: 200, body_contains: \"Hello from Sentinel\", "
            "consecutive: 2, interval_ms: 100, deadline_ms: 5000}\n"
            "  - name: hello-prod\n"
            "    type: local_static\n"
            "    listen: 127.0.0.1:%d\n"
            "    preview_listen: 127.0.0.1:%d\n"
            "    check: {path: /, status: 200, body_contains: \"Hello from Sentinel\", "
            "consecutive: 2, interval_ms: 100, deadline_ms: 5000}\n"
            "%s"
            "channels:\n"
            "  - {name: log, type: log}\n"
            "  - {name: file, type: file, path: %s/notifications.jsonl}\n"
            "  - {name: hook, type: webhook, url: \"http://127.0.0.1:%d/hook\", "
            "secret: \"%s\", min_severity: critical, max_attempts: 3}\n"
            "gateway:\n  listen: 127.0.0.1:%d\n"
            "  tokens:\n"
            "    - {name: alice, role: operator, sha256: %s}\n"
            "    - {name: bob, role: operator, sha256: %s}\n"
            "%s",
            self->ns, self->state, sn_test_free_port(), sn_test_free_port(), sn_test_free_port(),
            opts->extra_processes ? opts->extra_processes : "", self->repo, SN_SOURCE_DIR,
            opts->staging_targets ? opts->staging_targets : "[hello-staging]",
            opts->extra_projects ? opts->extra_projects : "", self->live_port, self->preview_port,
            self->fake_port, self->prod_port, self->prod_preview_port,
            opts->extra_targets ? opts->extra_targets : "", self->state, self->sink_port,
            SN_E2E_WEBHOOK_SECRET, self->gateway_port, alice, bob, extra_yaml ? extra_yaml : "");
    fclose(f);

    /* The staging target's live URL goes through a proxy the test can break. */
    char *fake = sn_strdupf("%s/tests/fakes/flaky_proxy.py", SN_SOURCE_DIR);
    char *port = sn_strdupf("%d", self->fake_port);
    char *upstream = sn_strdupf("http://127.0.0.1:%d", self->live_port);
    char *flag = sn_strdupf("%s/live-broken", self->dir);
    char *fake_log = sn_strdupf("%s/flaky_proxy.log", self->dir);
    char *fake_argv[] = {"/usr/bin/python3", fake,          "--port", port, "--upstream",
                         upstream,           "--fail-flag", flag,     NULL};
    self->fake = sn_test_spawn(fake_argv, fake_log);
    free(fake);
    free(port);
    free(upstream);
    free(flag);
    free(fake_log);

    /* The webhook receiver checks signatures and CloudEvents bodies and records. */
    char *sink = sn_strdupf("%s/tests/fakes/webhook_sink.py", SN_SOURCE_DIR);
    char *sink_port = sn_strdupf("%d", self->sink_port);
    char *sink_log = sn_strdupf("%s/webhook_sink.log", self->dir);
    char *sink_argv[] = {"/usr/bin/python3",    sink, "--port", sink_port, "--secret",
                         SN_E2E_WEBHOOK_SECRET, NULL};
    self->sink = sn_test_spawn(sink_argv, sink_log);
    free(sink);
    free(sink_port);
    free(sink_log);

    char *ctl = sn_test_bin("sentinelctl");
    char *argv[] = {ctl, "up", self->config, NULL};
    self->up = sn_test_spawn(argv, self->log);
    free(ctl);
    if (self->up <= 0 || !sn_test_wait_for(s_ready, self, 60000))
        return false;
    char *sock = sn_strdupf("%s/redis.sock", self->state);
    struct timeval tv = {2, 0};
    self->redis = redisConnectUnixWithTimeout(sock, tv);
    free(sock);
    if (!self->redis || self->redis->err)
        return false;
    redisSetTimeout(self->redis, tv);
    return s_sh(self->dir,
                "git clone -q '%s' clone && cd clone && git config user.email "
                "dev@example.com && git config user.name Dev",
                self->repo);
}

int sn_e2e_stop(sn_e2e_t *self)
{
    if (self->redis)
        redisFree(self->redis);
    int st = sn_test_stop(self->up, SIGTERM, 20000);
    int code = (st >= 0 && WIFEXITED(st)) ? WEXITSTATUS(st) : -1;
    if (self->fake > 0)
        sn_test_stop(self->fake, SIGTERM, 5000);
    if (self->sink > 0)
        sn_test_stop(self->sink, SIGTERM, 5000);
    if (code != 0 || getenv("SN_E2E_DUMP")) {
        char *text = sn_test_read_file(self->log);
        if (text) {
            size_t len = strlen(text);
            fprintf(stderr, "---- sentinelctl up (exit %d) ----\n%s\n", code,
                    len > 20000 ? text + len - 20000 : text);
            free(text);
        }
    }
    if (!getenv("SN_E2E_KEEP"))
        sn_test_rmdir(self->dir);
    free(self->dir);
    free(self->config);
    free(self->state);
    free(self->repo);
    free(self->clone);
    free(self->log);
    free(self->ns);
    return code;
}

char *sn_e2e_commit(sn_e2e_t *self, const char *branch, const char *path, const char *text)
{
    if (!s_sh(self->clone, "git fetch -q origin && git checkout -q -B '%s' 'origin/%s'", branch,
              branch))
        return NULL;
    char *file = sn_strdupf("%s/%s", self->clone, path);
    FILE *f = fopen(file, "w");
    free(file);
    if (!f)
        return NULL;
    fputs(text, f);
    fclose(f);
    if (!s_sh(self->clone, "git add -A && git commit -q -m 'change %s' && git push -q origin '%s'",
              path, branch))
        return NULL;
    char *cmd = sn_strdupf("git -C '%s' rev-parse HEAD", self->clone);
    FILE *p = popen(cmd, "r");
    free(cmd);
    char sha[64] = "";
    if (p) {
        if (!fgets(sha, sizeof sha, p))
            sha[0] = '\0';
        pclose(p);
    }
    sha[strcspn(sha, "\n")] = '\0';
    return sha[0] ? sn_strdup(sha) : NULL;
}

Sentinel__V1__Run *sn_e2e_load_run(sn_e2e_t *self, const char *run_id)
{
    redisReply *r = redisCommand(self->redis, "HGET %srun:%s pb", self->ns, run_id);
    Sentinel__V1__Run *run = NULL;
    if (r && r->type == REDIS_REPLY_STRING)
        run = sentinel__v1__run__unpack(NULL, r->len, (const uint8_t *)r->str);
    if (r)
        freeReplyObject(r);
    return run;
}

Sentinel__V1__Run *sn_e2e_find_run(sn_e2e_t *self, const char *env, const char *sha, int timeout_ms)
{
    int64_t deadline = sn_mono_ms() + timeout_ms;
    while (sn_mono_ms() < deadline) {
        redisReply *ids = redisCommand(self->redis, "ZREVRANGE %sruns:all 0 50", self->ns);
        for (size_t i = 0; ids && ids->type == REDIS_REPLY_ARRAY && i < ids->elements; i++) {
            Sentinel__V1__Run *run = sn_e2e_load_run(self, ids->element[i]->str);
            if (run && strcmp(run->environment, env) == 0 && (!sha || strcmp(run->sha, sha) == 0)) {
                freeReplyObject(ids);
                return run;
            }
            if (run)
                sentinel__v1__run__free_unpacked(run, NULL);
        }
        if (ids)
            freeReplyObject(ids);
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

char *sn_e2e_run_id(sn_e2e_t *self, const char *env, const char *sha, int timeout_ms)
{
    Sentinel__V1__Run *run = sn_e2e_find_run(self, env, sha, timeout_ms);
    char *id = run ? sn_strdup(run->run_id) : NULL;
    if (run)
        sentinel__v1__run__free_unpacked(run, NULL);
    return id;
}

static bool s_is_terminal(int state)
{
    return state >= SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED;
}

Sentinel__V1__Run *sn_e2e_wait_run(sn_e2e_t *self, const char *run_id, int timeout_ms)
{
    int64_t deadline = sn_mono_ms() + timeout_ms;
    while (sn_mono_ms() < deadline) {
        Sentinel__V1__Run *run = sn_e2e_load_run(self, run_id);
        if (run && s_is_terminal(run->state))
            return run;
        if (run)
            sentinel__v1__run__free_unpacked(run, NULL);
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

typedef struct {
    char *data;
    size_t len;
} s_buf_t;

static size_t s_write(char *ptr, size_t size, size_t n, void *arg)
{
    s_buf_t *b = arg;
    size_t add = size * n;
    if (b->len + add > 4 * 1024 * 1024)
        return 0;
    b->data = sn_realloc(b->data, b->len + add + 1);
    memcpy(b->data + b->len, ptr, add);
    b->len += add;
    b->data[b->len] = '\0';
    return add;
}

char *sn_e2e_get(int port, const char *path, long *status)
{
    return sn_e2e_http("GET", port, path, NULL, NULL, NULL, 3000, status);
}

char *sn_e2e_http(const char *method, int port, const char *path, const char *token,
                  const char *body, const char *header, int timeout_ms, long *status)
{
    CURL *c = curl_easy_init();
    if (!c)
        return NULL;
    char *url = sn_strdupf("http://127.0.0.1:%d%s", port, path);
    s_buf_t b = {sn_strdup(""), 0};
    struct curl_slist *headers = NULL;
    char *auth = token ? sn_strdupf("Authorization: Bearer %s", token) : NULL;
    if (auth)
        headers = curl_slist_append(headers, auth);
    if (body)
        headers = curl_slist_append(headers, "Content-Type: application/json");
    if (header)
        headers = curl_slist_append(headers, header);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    *status = 0;
    CURLcode rc = curl_easy_perform(c);
    /* A stream cut by our own timeout still has a status and what it received. */
    if (rc == CURLE_OK || rc == CURLE_OPERATION_TIMEDOUT)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    free(auth);
    free(url);
    if (*status == 0) {
        free(b.data);
        return NULL;
    }
    return b.data;
}

int sn_e2e_ctl(sn_e2e_t *self, char **out, const char *const *args)
{
    char *path = sn_strdupf("%s/ctl-%d.out", self->dir, (int)sn_mono_ms());
    char *argv[32];
    size_t n = 0;
    argv[n++] = sn_test_bin("sentinelctl");
    argv[n++] = "-c";
    argv[n++] = self->config;
    for (size_t i = 0; args[i] && n < SN_ARRAY_LEN(argv) - 1; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        FILE *f = freopen(path, "w", stdout);
        (void)f;
        execv(argv[0], argv);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    free(argv[0]);
    if (out)
        *out = sn_test_read_file(path);
    unlink(path);
    free(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
