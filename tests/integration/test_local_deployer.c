/* Integration test of local-deployer with real processes: redis-server, the broker, a
 * sentinel-agent local-deployer (SENTINEL_HOST=testhost, so it serves
 * deploy.local.testhost) and nginx started from the configuration `sentinelctl up`
 * generates (ctl/ctl_nginx.c, compiled into this test), on free ports.
 *
 * Shown: nginx -t accepts the generated config; stage -> the preview port serves the
 * release and its identity (no-store); promote -> the live port serves it; a second
 * release, then rollback -> the first serves again, and a retried rollback stays there;
 * idempotency (one release dir, one history entry); a client requesting the live site
 * without pause through promote, rollback and a kill -9 of local-deployer sees 0
 * failures; a ledger job is claimed and completed once (a retry gets the stored
 * result); bad requests get ok=false with a reason and write nothing outside the sites
 * dir; local_command targets run the user's commands with the SENTINEL_* environment,
 * fail on a non-zero exit and are killed at their timeout; `sentinelctl up` starts
 * nginx for the local_static targets and stops it. */
#include "sn_mesh.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sentinel/sn_artifact.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_leader.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_log.h"

/* The generator is part of sentinelctl, not of a library: compile it in here. */
#include "../../ctl/ctl_nginx.c"

#define SERVICE "deploy.local.testhost"

typedef struct {
    sn_mesh_t mesh;
    sn_config_t cfg;
    char *sites;
    sn_artifact_t *store;
    char sha1[SN_ARTIFACT_SHA_LEN + 1];
    char sha2[SN_ARTIFACT_SHA_LEN + 1];
    int live_port, preview_port;
    pid_t nginx;
    char *nginx_log;
    char *marker; /* file the local_command promote writes */
    size_t deployer;
} s_fix_t;

static s_fix_t s_fix;

/* ---- helpers ------------------------------------------------------------------------------- */

static void s_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/* One HTTP/1.0 GET on 127.0.0.1:@port. Returns the status (0 on a transport error);
 * the body and headers are copied into @out (may be NULL). */
static int s_http_get(int port, const char *path, char *out, size_t out_len)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char resp[8192];
    size_t got = 0;
    int status = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        char req[512];
        int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
        if (write(fd, req, (size_t)n) == n) {
            ssize_t r;
            while (got < sizeof resp - 1 && (r = read(fd, resp + got, sizeof resp - 1 - got)) > 0)
                got += (size_t)r;
            resp[got] = '\0';
            if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1)
                status = 0;
        }
    }
    close(fd);
    if (out) {
        snprintf(out, out_len, "%s", got ? resp : "");
    }
    return status;
}

/* Calls the deployer. @job_id adds the label. Returns the unpacked reply (caller frees)
 * or NULL on a NAK (*nak set) or timeout. */
static sn_envelope_t *s_call(const char *op, const char *deploy_id, const char *target,
                             const char *sha, const char *commit, const char *to,
                             const char *job_id, sn_nak_reason_t *nak)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &s_fix.mesh.source, "deploy.request", id);
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    d.deploy_id = (char *)deploy_id;
    d.run_id = "run-1";
    d.project = "hello";
    d.environment = "staging";
    d.target = (char *)target;
    Sentinel__V1__DeployRequest req = SENTINEL__V1__DEPLOY_REQUEST__INIT;
    req.op = (char *)op;
    req.deploy = &d;
    req.artifact_sha256 = (char *)(sha ? sha : "");
    req.commit = (char *)(commit ? commit : "");
    req.to_release_id = (char *)(to ? to : "");
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST;
    env.deploy_request = &req;
    if (job_id)
        sn_envelope_add_label(&env, "job_id", job_id);
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&env, &len);
    sn_envelope_fini_labels(&env);
    uint8_t *out = NULL;
    size_t out_len = 0;
    sn_nak_reason_t reason = SN_NAK_NONE;
    sn_rc_t rc =
        sn_rpc_call(s_fix.mesh.client, SERVICE, bytes, len, 15000, &out, &out_len, &reason);
    free(bytes);
    if (nak)
        *nak = reason;
    sn_envelope_t *reply = NULL;
    if (rc == SN_OK)
        reply = sn_envelope_unpack(out, out_len, SN_MAX_FRAME_BYTES, NULL);
    free(out);
    return reply;
}

/* Calls and checks the answer is a DeployResult with ok == @ok (and, if @reason_part,
 * a reason containing it). Returns the reply (caller frees). */
static sn_envelope_t *s_expect(bool ok, const char *reason_part, const char *op,
                               const char *deploy_id, const char *target, const char *sha,
                               const char *commit, const char *to, const char *job_id)
{
    sn_envelope_t *r = s_call(op, deploy_id, target, sha, commit, to, job_id, NULL);
    assert_non_null(r);
    assert_int_equal(r->body_case, SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT);
    const Sentinel__V1__DeployResult *res = r->deploy_result;
    if (res->ok != ok || (reason_part && !strstr(res->reason, reason_part)))
        print_error("%s %s/%s: ok=%d reason=%s\n", op, target, deploy_id, res->ok, res->reason);
    assert_int_equal(res->ok, ok);
    if (reason_part)
        assert_non_null(strstr(res->reason, reason_part));
    assert_non_null(res->deploy);
    return r;
}

static size_t s_count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

/* LLEN of the release history of @target (redis-cli output). */
static char *s_history_len(const char *target)
{
    char *args = sn_strdupf("LLEN '%srelease:hello:staging:%s'", s_fix.mesh.ns, target);
    char *out = sn_test_redis_cli(&s_fix.mesh.redis, args);
    free(args);
    return out;
}

typedef struct {
    int port;
    const char *needle;
} s_serve_wait_t;

static bool s_serves(void *arg)
{
    s_serve_wait_t *w = arg;
    char body[8192];
    return s_http_get(w->port, "/", body, sizeof body) == 200 && strstr(body, w->needle);
}

static void s_expect_serves(int port, const char *needle)
{
    s_serve_wait_t w = {port, needle};
    assert_true(sn_test_wait_for(s_serves, &w, 5000));
}

static void s_spawn_deployer(void)
{
    sn_mesh_t *m = &s_fix.mesh;
    char instance[64];
    snprintf(instance, sizeof instance, "local-deployer-%zu", m->agent_count + 1);
    s_fix.deployer = sn_mesh_agent_bin(m, "sentinel-agent", "local-deployer", instance);
    assert_true(sn_mesh_wait_service(m, SERVICE, 1, 10000));
}

static bool s_nginx_up(void *arg)
{
    (void)arg;
    return ctl_nginx_is_ready(&s_fix.cfg, "testhost");
}

/* ---- set-up ------------------------------------------------------------------------------ */

static int s_setup(void **state)
{
    setenv("SENTINEL_HOST", "testhost", 1);
    memset(&s_fix, 0, sizeof s_fix);
    s_fix.live_port = sn_test_free_port();
    s_fix.preview_port = sn_test_free_port();
    int p3 = sn_test_free_port(), p4 = sn_test_free_port();
    char *tmp = sn_test_tmpdir("ld-marker");
    s_fix.marker = sn_strdupf("%s/promoted.txt", tmp);
    free(tmp);
    char *yaml =
        sn_strdupf("targets:\n"
                   "  - name: site\n"
                   "    type: local_static\n"
                   "    listen: 127.0.0.1:%d\n"
                   "    preview_listen: 127.0.0.1:%d\n"
                   "    keep_releases: 3\n"
                   "  - name: site2\n"
                   "    type: local_static\n"
                   "    host: testhost\n"
                   "    listen: 127.0.0.1:%d\n"
                   "    preview_listen: 127.0.0.1:%d\n"
                   "  - name: elsewhere\n"
                   "    type: local_static\n"
                   "    host: otherhost\n"
                   "    listen: 127.0.0.1:1\n"
                   "    preview_listen: 127.0.0.1:2\n"
                   "  - name: cmd\n"
                   "    type: local_command\n"
                   "    stage_command: 'test -f index.html && echo \"$SENTINEL_OP\" > staged.txt'\n"
                   "    promote_command: 'echo \"$SENTINEL_DEPLOY_ID $SENTINEL_COMMIT "
                   "$SENTINEL_ENVIRONMENT $SENTINEL_TARGET $${SN_SECRET_PROBE:-clean}\" > %s'\n"
                   "    health_command: 'test \"$SENTINEL_RELEASE_DIR\" = \"$(pwd)\"'\n"
                   "  - name: cmdfail\n"
                   "    type: local_command\n"
                   "    stage_command: 'exit 3'\n"
                   "    promote_command: 'true'\n"
                   "  - name: cmdslow\n"
                   "    type: local_command\n"
                   "    stage_command: 'sleep 30'\n"
                   "    promote_command: 'true'\n"
                   "    command_timeout_ms: 300\n",
                   s_fix.live_port, s_fix.preview_port, p3, p4, s_fix.marker);
    bool ok = sn_mesh_start(&s_fix.mesh, "ldeploy", yaml);
    free(yaml);
    assert_true(ok);
    char err[512] = "";
    if (sn_config_load(s_fix.mesh.config, &s_fix.cfg, err, sizeof err) != SN_OK)
        print_error("config: %s\n", err);
    assert_string_equal(err, "");

    /* Two artifacts in the store the deployer uses. */
    s_fix.store = sn_artifact_new(s_fix.cfg.artifact_dir, NULL);
    assert_non_null(s_fix.store);
    for (int i = 1; i <= 2; i++) {
        char *src = sn_strdupf("%s/src%d", s_fix.mesh.dir, i);
        assert_int_equal(mkdir(src, 0755), 0);
        char *index = sn_strdupf("%s/index.html", src);
        char *text = sn_strdupf("<h1>release %s</h1>\n", i == 1 ? "one" : "two");
        s_write_file(index, text);
        assert_int_equal(
            sn_artifact_put_dir(s_fix.store, src, i == 1 ? s_fix.sha1 : s_fix.sha2, NULL), SN_OK);
        free(text);
        free(index);
        free(src);
    }

    /* nginx from the generated configuration (what `sentinelctl up` runs). */
    ctl_nginx_t ng;
    assert_int_equal(ctl_nginx_write(&s_fix.cfg, "testhost", &ng), SN_OK);
    assert_int_equal(ng.servers, 4); /* site and site2, live and preview; not elsewhere */
    char *bin = ctl_nginx_find_binary();
    assert_non_null(bin);
    s_fix.nginx_log = sn_strdupf("%s/nginx.out", s_fix.mesh.dir);
    char *targv[] = {bin, "-t", "-q", "-c", ng.conf, "-p", ng.prefix, "-e", ng.error_log, NULL};
    pid_t t = sn_test_spawn(targv, s_fix.nginx_log);
    int st = 0;
    assert_int_equal(waitpid(t, &st, 0), t);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char *log = sn_test_read_file(s_fix.nginx_log);
        print_error("nginx -t failed:\n%s\n", log ? log : "");
        free(log);
    }
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char *argv[] = {bin, "-c", ng.conf, "-p", ng.prefix, "-e", ng.error_log, NULL};
    s_fix.nginx = sn_test_spawn(argv, s_fix.nginx_log);
    assert_true(s_fix.nginx > 0);
    assert_true(sn_test_wait_for(s_nginx_up, NULL, 10000));
    char *state_dir = sn_strdup(ng.prefix); /* <abs state_dir>/nginx */
    *strrchr(state_dir, '/') = '\0';
    s_fix.sites = sn_strdupf("%s/sites", state_dir);
    free(state_dir);
    free(bin);
    ctl_nginx_fini(&ng);

    s_spawn_deployer();
    *state = &s_fix;
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    if (s_fix.nginx > 0) {
        int st = sn_test_stop(s_fix.nginx, SIGTERM, 5000);
        assert_true(st >= 0);
    }
    int bad = sn_mesh_stop(&s_fix.mesh);
    sn_artifact_destroy(&s_fix.store);
    sn_config_fini(&s_fix.cfg);
    char *dir = sn_strdup(s_fix.marker);
    *strrchr(dir, '/') = '\0';
    sn_test_rmdir(dir);
    free(dir);
    free(s_fix.marker);
    free(s_fix.sites);
    free(s_fix.nginx_log);
    return bad == 0 ? 0 : -1;
}

/* ---- the client that never pauses ----------------------------------------------------------- */

typedef struct {
    int port;
    atomic_bool stop;
    atomic_long ok;
    atomic_long failed;
    char last_failure[256];
} s_client_t;

static void *s_client_loop(void *arg)
{
    s_client_t *c = arg;
    while (!atomic_load(&c->stop)) {
        char body[8192];
        int status = s_http_get(c->port, "/", body, sizeof body);
        if (status == 200 && strstr(body, "<h1>release "))
            atomic_fetch_add(&c->ok, 1);
        else {
            atomic_fetch_add(&c->failed, 1);
            snprintf(c->last_failure, sizeof c->last_failure, "status=%d body=%.120s", status,
                     body);
        }
    }
    return NULL;
}

typedef struct {
    s_client_t *client;
    long want;
} s_progress_t;

static bool s_client_has_more(void *arg)
{
    s_progress_t *p = arg;
    return atomic_load(&p->client->ok) >= p->want;
}

/* Waits until the client made @n more successful requests. */
static void s_client_progress(s_client_t *c, long n)
{
    s_progress_t p = {c, atomic_load(&c->ok) + n};
    assert_true(sn_test_wait_for(s_client_has_more, &p, 5000));
}

static bool s_promote_d2_answered(void *arg)
{
    (void)arg;
    sn_envelope_t *r = s_call("promote", "d2", "site", NULL, "c2", NULL, NULL, NULL);
    bool ok =
        r && r->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT && r->deploy_result->ok;
    sn_envelope_free(&r);
    return ok;
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_local_deployer_release_cycle(void **state)
{
    (void)state;
    char body[8192];
    /* stage -> preview serves it with its identity; live serves nothing yet. */
    sn_envelope_t *r = s_expect(true, NULL, "stage", "d1", "site", s_fix.sha1, "c1", NULL, NULL);
    assert_int_equal(r->deploy_result->deploy->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED);
    char *want = sn_strdupf("http://127.0.0.1:%d", s_fix.preview_port);
    assert_string_equal(r->deploy_result->deploy->preview_url, want);
    free(want);
    sn_envelope_free(&r);
    s_expect_serves(s_fix.preview_port, "release one");
    assert_int_equal(
        s_http_get(s_fix.preview_port, "/.well-known/sentinel-release.json", body, sizeof body),
        200);
    assert_non_null(strstr(body, "\"deployId\":\"d1\""));
    assert_non_null(strstr(body, "\"commit\":\"c1\""));
    assert_non_null(strstr(body, "\"target\":\"site\""));
    assert_non_null(strstr(body, "Cache-Control: no-store"));
    assert_int_equal(s_http_get(s_fix.live_port, "/", body, sizeof body), 404);

    /* stage twice: one release dir; the same id with another commit is refused. */
    r = s_expect(true, NULL, "stage", "d1", "site", s_fix.sha1, "c1", NULL, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "another identity", "stage", "d1", "site", s_fix.sha2, "cX", NULL, NULL);
    sn_envelope_free(&r);
    char *releases = sn_strdupf("%s/site/releases", s_fix.sites);
    assert_int_equal(s_count_entries(releases), 1);

    /* promote (twice) -> live serves it; one history entry. */
    r = s_expect(true, NULL, "promote", "d1", "site", NULL, "c1", NULL, NULL);
    assert_int_equal(r->deploy_result->deploy->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE);
    assert_string_equal(r->deploy_result->deploy->previous_release_id, "");
    sn_envelope_free(&r);
    r = s_expect(true, NULL, "promote", "d1", "site", NULL, "c1", NULL, NULL);
    sn_envelope_free(&r);
    s_expect_serves(s_fix.live_port, "release one");
    char *len = s_history_len("site");
    assert_string_equal(len, "1");
    free(len);

    /* A client that never pauses, through promote, rollback and a kill -9. */
    s_client_t client = {.port = s_fix.live_port};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_client_loop, &client), 0);
    s_client_progress(&client, 20);

    r = s_expect(true, NULL, "stage", "d2", "site", s_fix.sha2, "c2", NULL, NULL);
    sn_envelope_free(&r);
    s_expect_serves(s_fix.preview_port, "release two");
    s_expect_serves(s_fix.live_port, "release one"); /* staging does not touch live */
    r = s_expect(true, NULL, "promote", "d2", "site", NULL, "c2", NULL, NULL);
    assert_string_equal(r->deploy_result->deploy->previous_release_id, "d1");
    sn_envelope_free(&r);
    s_expect_serves(s_fix.live_port, "release two");
    s_client_progress(&client, 20);
    assert_int_equal(
        s_http_get(s_fix.live_port, "/.well-known/sentinel-release.json", body, sizeof body), 200);
    assert_non_null(strstr(body, "\"deployId\":\"d2\""));
    len = s_history_len("site");
    assert_string_equal(len, "2");
    free(len);

    /* rollback of d2 -> d1 serves again; a retried rollback stays on d1. */
    for (int i = 0; i < 2; i++) {
        r = s_expect(true, NULL, "rollback", "d2", "site", NULL, NULL, NULL, NULL);
        assert_int_equal(r->deploy_result->deploy->phase,
                         SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK);
        assert_string_equal(r->deploy_result->deploy->release_id, "d1");
        sn_envelope_free(&r);
        s_expect_serves(s_fix.live_port, "release one");
    }
    s_client_progress(&client, 20);
    /* Forward again by to_release_id. */
    r = s_expect(true, NULL, "rollback", "", "site", NULL, NULL, "d2", NULL);
    assert_string_equal(r->deploy_result->deploy->release_id, "d2");
    assert_string_equal(r->deploy_result->deploy->previous_release_id, "d1");
    sn_envelope_free(&r);
    s_expect_serves(s_fix.live_port, "release two");

    /* kill -9 local-deployer: the site does not notice. */
    sn_mesh_agent_t *a = &s_fix.mesh.agents[s_fix.deployer];
    assert_int_equal(sn_test_stop(a->pid, SIGKILL, 5000) >= 0, 1);
    a->pid = 0;
    s_client_progress(&client, 50);
    s_spawn_deployer();
    /* The broker may still list the dead worker for a heartbeat or two: wait until a
     * request (an idempotent promote of what is live) is answered by the new process. */
    assert_true(sn_test_wait_for(s_promote_d2_answered, NULL, 10000));
    s_client_progress(&client, 20);

    atomic_store(&client.stop, true);
    pthread_join(th, NULL);
    if (atomic_load(&client.failed) != 0)
        print_error("client failures: %ld, last: %s\n", atomic_load(&client.failed),
                    client.last_failure);
    assert_int_equal(atomic_load(&client.failed), 0);
    assert_true(atomic_load(&client.ok) >= 130);
    print_message("client: %ld requests, 0 failed\n", atomic_load(&client.ok));

    /* Retention: keep_releases 3, current and preview pinned. */
    r = s_expect(true, NULL, "stage", "d3", "site", s_fix.sha1, "c3", NULL, NULL);
    sn_envelope_free(&r);
    r = s_expect(true, NULL, "stage", "d4", "site", s_fix.sha2, "c4", NULL, NULL);
    sn_envelope_free(&r);
    r = s_expect(true, NULL, "stage", "d5", "site", s_fix.sha1, "c5", NULL, NULL);
    sn_envelope_free(&r);
    assert_int_equal(s_count_entries(releases), 4); /* d3 d4 d5 + d2 (current) */
    char *d1 = sn_strdupf("%s/d1", releases);
    assert_int_equal(access(d1, F_OK), -1);
    free(d1);
    s_expect_serves(s_fix.live_port, "release two");

    /* More failed releases in a row than keep_releases: each is promoted and rolled back,
     * and the release to return to is never pruned. */
    const char *bad[] = {"d6", "d7", "d8", "d9"};
    for (size_t i = 0; i < SN_ARRAY_LEN(bad); i++) {
        r = s_expect(true, NULL, "stage", bad[i], "site", s_fix.sha1, "cx", NULL, NULL);
        sn_envelope_free(&r);
        r = s_expect(true, NULL, "promote", bad[i], "site", s_fix.sha1, "cx", NULL, NULL);
        assert_string_equal(r->deploy_result->deploy->previous_release_id, "d2");
        sn_envelope_free(&r);
        r = s_expect(true, NULL, "rollback", bad[i], "site", NULL, NULL, "d2", NULL);
        sn_envelope_free(&r);
        s_expect_serves(s_fix.live_port, "release two");
    }
    free(releases);
}

static void test_local_deployer_ledger_job(void **state)
{
    (void)state;
    sn_redis_opts_t ro = {.unix_path = s_fix.mesh.redis.unix_path, .namespace_ = s_fix.mesh.ns};
    sn_redis_t *redis = sn_redis_new(&ro);
    sn_source_t src;
    sn_source_init(&src, "test", "ledger");
    sn_leader_t *leader = sn_leader_new(redis, "buildpilot", "test-lead", 10000);
    uint64_t fence = 0;
    assert_int_equal(sn_leader_try(leader, &fence), SN_OK);
    sn_ledger_t *ledger = sn_ledger_new(redis, &src);
    Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
    spec.job_id = "job-stage-j1";
    spec.kind = "deploy.stage";
    spec.service = SERVICE;
    spec.owner_role = "buildpilot";
    assert_int_equal(sn_ledger_create(ledger, fence, "buildpilot", &spec), SN_OK);

    sn_envelope_t *r =
        s_expect(true, NULL, "stage", "j1", "site2", s_fix.sha1, "cj", NULL, "job-stage-j1");
    sn_envelope_free(&r);
    sn_ledger_job_t job;
    assert_int_equal(sn_ledger_get(ledger, "job-stage-j1", &job), SN_OK);
    assert_int_equal(job.state, SN_JOB_DONE);
    assert_true(job.ok);
    assert_int_equal(job.epoch, 1);
    assert_true(job.result_len > 0);
    sn_ledger_job_fini(&job);
    /* A redelivery: answered from the stored result, not claimed again. */
    r = s_expect(true, NULL, "stage", "j1", "site2", s_fix.sha1, "cj", NULL, "job-stage-j1");
    assert_string_equal(r->deploy_result->deploy->release_id, "j1");
    sn_envelope_free(&r);
    assert_int_equal(sn_ledger_get(ledger, "job-stage-j1", &job), SN_OK);
    assert_int_equal(job.epoch, 1);
    sn_ledger_job_fini(&job);
    /* An unknown job: refused before any side effect. */
    r = s_expect(false, "unknown job", "stage", "j2", "site2", s_fix.sha1, "cj", NULL, "job-nope");
    sn_envelope_free(&r);
    char *j2 = sn_strdupf("%s/site2/releases/j2", s_fix.sites);
    assert_int_equal(access(j2, F_OK), -1);
    free(j2);
    sn_ledger_destroy(&ledger);
    sn_leader_destroy(&leader);
    sn_redis_destroy(&redis);
}

static void test_local_deployer_bad_requests(void **state)
{
    (void)state;
    size_t before = s_count_entries(s_fix.sites);
    sn_envelope_t *r;
    r = s_expect(false, "unknown target", "stage", "b1", "nope", s_fix.sha1, "c", NULL, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "not in the store", "stage", "b1", "site",
                 "0000000000000000000000000000000000000000000000000000000000000000", "c", NULL,
                 NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "invalid artifact", "stage", "b1", "site", "../../etc", "c", NULL, NULL);
    sn_envelope_free(&r);
    const char *bad_ids[] = {"../x", "..", ".hidden", "a/b", "x y", "", NULL};
    for (int i = 0; bad_ids[i]; i++) {
        r = s_expect(false, "invalid deploy id", "stage", bad_ids[i], "site", s_fix.sha1, "c", NULL,
                     NULL);
        sn_envelope_free(&r);
        r = s_expect(false, "invalid", "promote", bad_ids[i], "site", NULL, "c", NULL, NULL);
        sn_envelope_free(&r);
    }
    r = s_expect(false, "invalid target", "stage", "b1", "../site", s_fix.sha1, "c", NULL, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "invalid to_release_id", "rollback", "b1", "site", NULL, NULL, "../d1",
                 NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "served on host otherhost", "stage", "b1", "elsewhere", s_fix.sha1, "c",
                 NULL, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "unknown op", "deploy", "b1", "site", s_fix.sha1, "c", NULL, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "not staged", "promote", "never", "site", NULL, "c", NULL, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "no longer on this host", "rollback", "", "site", NULL, NULL, "gone", NULL);
    sn_envelope_free(&r);
    /* A body that is not a deploy_request: NAK invalid. */
    sn_envelope_t *note = NULL;
    sn_nak_reason_t nak = SN_NAK_NONE;
    assert_int_equal(sn_mesh_call_note(&s_fix.mesh, SERVICE, "hi", 0, 5000, &note, &nak),
                     SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    /* Nothing appeared outside the sites dir or in it. */
    assert_int_equal(s_count_entries(s_fix.sites), before);
    char *x = sn_strdupf("%s/../x", s_fix.sites);
    assert_int_equal(access(x, F_OK), -1);
    free(x);
    x = sn_strdupf("%s/x", s_fix.sites);
    assert_int_equal(access(x, F_OK), -1);
    free(x);
    char *releases = sn_strdupf("%s/site/releases/b1", s_fix.sites);
    assert_int_equal(access(releases, F_OK), -1);
    free(releases);
    /* The deployer is still serving. */
    s_expect_serves(s_fix.live_port, "release");
}

static void test_local_deployer_local_command(void **state)
{
    (void)state;
    setenv("SN_SECRET_PROBE", "leaked", 1); /* the test's env is not the command's */
    sn_envelope_t *r = s_expect(true, NULL, "stage", "k1", "cmd", s_fix.sha1, "ck1", NULL, NULL);
    sn_envelope_free(&r);
    char *staged = sn_strdupf("%s/cmd/releases/k1/staged.txt", s_fix.sites);
    char *text = sn_test_read_file(staged);
    assert_non_null(text);
    assert_string_equal(text, "stage\n");
    free(text);
    free(staged);
    r = s_expect(true, NULL, "promote", "k1", "cmd", NULL, "ck1", NULL, NULL);
    sn_envelope_free(&r);
    text = sn_test_read_file(s_fix.marker);
    assert_non_null(text);
    assert_string_equal(text, "k1 ck1 staging cmd clean\n");
    free(text);

    r = s_expect(false, "stage command exited with status 3", "stage", "k2", "cmdfail", s_fix.sha1,
                 "c", NULL, NULL);
    sn_envelope_free(&r);
    char *k2 = sn_strdupf("%s/cmdfail/releases/k2", s_fix.sites);
    assert_int_equal(access(k2, F_OK), -1); /* a failed stage leaves nothing */
    free(k2);
    int64_t t0 = sn_mono_ms();
    r = s_expect(false, "timed out", "stage", "k3", "cmdslow", s_fix.sha1, "c", NULL, NULL);
    assert_true(r->deploy_result->is_transient);
    sn_envelope_free(&r);
    assert_true(sn_mono_ms() - t0 < 5000);
}

static bool s_serves_any(void *arg)
{
    return s_http_get(*(int *)arg, "/", NULL, 0) != 0;
}

/* `sentinelctl up` with local_static targets starts nginx after the broker and stops it. */
static void test_local_deployer_ctl_up_runs_nginx(void **state)
{
    (void)state;
    char *dir = sn_test_tmpdir("ld-up");
    int live = sn_test_free_port(), preview = sn_test_free_port();
    char *cfg = sn_strdupf("%s/up.yml", dir);
    char *yaml = sn_strdupf("namespace: \"%sup:\"\n"
                            "state_dir: %s/var\n"
                            "broker:\n  rpc: tcp://127.0.0.1:%d\n  pub: tcp://127.0.0.1:%d\n"
                            "  sub: tcp://127.0.0.1:%d\n"
                            "redis:\n  unix_path: %s\n"
                            "runtime:\n  shutdown_grace_ms: 3000\n"
                            "targets:\n"
                            "  - name: upsite\n    type: local_static\n"
                            "    listen: 127.0.0.1:%d\n    preview_listen: 127.0.0.1:%d\n",
                            s_fix.mesh.ns, dir, sn_test_free_port(), sn_test_free_port(),
                            sn_test_free_port(), s_fix.mesh.redis.unix_path, live, preview);
    s_write_file(cfg, yaml);
    free(yaml);
    char *bin = sn_test_bin("sentinelctl");
    char *log = sn_strdupf("%s/up.log", dir);
    char *argv[] = {bin, "up", cfg, NULL};
    pid_t up = sn_test_spawn(argv, log);
    assert_true(up > 0);
    assert_true(sn_test_wait_for(s_serves_any, &live, 15000));
    char *conf = sn_strdupf("%s/var/nginx/nginx.conf", dir);
    assert_int_equal(sn_test_count_in_file(conf, "open_file_cache off"), 1);
    assert_int_equal(sn_test_count_in_file(conf, "/sites/upsite/current\""), 1);
    int st = sn_test_stop(up, SIGTERM, 10000);
    if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char *text = sn_test_read_file(log);
        print_error("sentinelctl up:\n%s\n", text ? text : "");
        free(text);
    }
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_true(sn_test_count_in_file(log, "started nginx") == 1);
    assert_int_equal(s_http_get(live, "/", NULL, 0), 0); /* nginx is gone */
    free(conf);
    free(log);
    free(bin);
    free(cfg);
    sn_test_rmdir(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_deployer_release_cycle),
        cmocka_unit_test(test_local_deployer_ledger_job),
        cmocka_unit_test(test_local_deployer_bad_requests),
        cmocka_unit_test(test_local_deployer_local_command),
        cmocka_unit_test(test_local_deployer_ctl_up_runs_nginx),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
