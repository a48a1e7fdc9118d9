/* build-validator through the real mesh (redis-server, broker, sentinel-agent): local
 * builds into the artifact store with a log per run, the sandbox seen from a build step
 * (clean environment, unprivileged user), timeouts and failing steps, ledger jobs claimed
 * and completed, bad requests refused, and new commits reaching run.trigger from
 * `source.push` and from ref polling exactly once (a fake run.trigger worker in this
 * process records what it receives). */
#include "sn_mesh.h"

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <czmq.h>

#include "sentinel/sn_artifact.h"
#include "sentinel/sn_leader.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_worker.h"

#define S_SECRET_VALUE "sn-build-secret-0f9e8d7c"
#define S_CANARY_VALUE "sn-canary-value-5a4b3c"

/* ---- the fake run.trigger worker --------------------------------------------------------- */

typedef struct {
    char project[64], ref[128], sha[72], trigger[16];
} s_rec_t;

static struct {
    pthread_mutex_t mu;
    s_rec_t recs[512];
    size_t n;
    char fail_project[64]; /* NAK the first trigger of this project and sha */
    char fail_once[72];
    bool has_failed;
    int stop;
    pthread_t th;
    char *endpoint;
} s_fake = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void s_fake_answer(sn_worker_t *w, sn_worker_event_t *ev, sn_source_t *src)
{
    sn_envelope_t *env = sn_envelope_unpack(ev->body, ev->body_len, SN_MAX_FRAME_BYTES, NULL);
    if (!env || env->body_case != SENTINEL__V1__ENVELOPE__BODY_TRIGGER) {
        if (sn_worker_nak(w, &ev->ticket, SN_NAK_INVALID) != SN_OK)
            fprintf(stderr, "fake: nak dropped\n");
        sn_envelope_free(&env);
        return;
    }
    const Sentinel__V1__TriggerRequest *t = env->trigger;
    pthread_mutex_lock(&s_fake.mu);
    bool fail = !s_fake.has_failed &&
                (strcmp(s_fake.fail_once, t->sha) == 0 || strcmp(s_fake.fail_once, "*") == 0) &&
                strcmp(s_fake.fail_project, t->project) == 0;
    s_fake.has_failed |= fail;
    size_t n = s_fake.n;
    if (n < SN_ARRAY_LEN(s_fake.recs)) {
        s_rec_t *r = &s_fake.recs[s_fake.n++];
        snprintf(r->project, sizeof r->project, "%s", t->project);
        snprintf(r->ref, sizeof r->ref, "%s", t->ref);
        snprintf(r->sha, sizeof r->sha, "%s", t->sha);
        snprintf(r->trigger, sizeof r->trigger, "%s", t->trigger);
    }
    pthread_mutex_unlock(&s_fake.mu);
    if (fail) {
        if (sn_worker_nak(w, &ev->ticket, SN_NAK_OVERLOADED) != SN_OK)
            fprintf(stderr, "fake: nak dropped\n");
    } else {
        char run_id[32];
        snprintf(run_id, sizeof run_id, "run-%zu", n + 1);
        Sentinel__V1__RunRef ref = SENTINEL__V1__RUN_REF__INIT;
        ref.run_id = run_id;
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
    }
    sn_envelope_free(&env);
}

static void *s_fake_thread(void *arg)
{
    (void)arg;
    sn_source_t src;
    sn_source_init(&src, "fake-buildpilot", "f1");
    sn_worker_t *w = sn_worker_new(s_fake.endpoint, NULL);
    SN_ASSERT(w);
    sn_worker_set_heartbeat(w, 200, 3);
    SN_ASSERT(sn_worker_serve(w, "run.trigger", 4) == SN_OK);
    while (!__atomic_load_n(&s_fake.stop, __ATOMIC_ACQUIRE)) {
        zmq_pollitem_t it = {.socket = sn_worker_socket(w), .events = ZMQ_POLLIN};
        int t = sn_worker_timeout_ms(w);
        zmq_poll(&it, 1, t < 50 ? t : 50);
        sn_worker_event_t ev;
        while (sn_worker_recv(w, &ev) == SN_OK) {
            if (ev.type == SN_WORKER_REQUEST)
                s_fake_answer(w, &ev, &src);
            sn_worker_event_fini(&ev);
        }
    }
    sn_worker_destroy(&w);
    return NULL;
}

/* How many triggers of (@project, @sha, @trigger) were received (@trigger NULL: any). */
static int s_fake_count(const char *project, const char *sha, const char *trigger)
{
    int c = 0;
    pthread_mutex_lock(&s_fake.mu);
    for (size_t i = 0; i < s_fake.n; i++)
        if (strcmp(s_fake.recs[i].project, project) == 0 && strcmp(s_fake.recs[i].sha, sha) == 0 &&
            (!trigger || strcmp(s_fake.recs[i].trigger, trigger) == 0))
            c++;
    pthread_mutex_unlock(&s_fake.mu);
    return c;
}

/* The next trigger of (@project, @sha) is refused once. */
static void s_fake_fail_once(const char *project, const char *sha)
{
    pthread_mutex_lock(&s_fake.mu);
    snprintf(s_fake.fail_project, sizeof s_fake.fail_project, "%s", project);
    snprintf(s_fake.fail_once, sizeof s_fake.fail_once, "%s", sha);
    s_fake.has_failed = false;
    pthread_mutex_unlock(&s_fake.mu);
}

/* ---- fixture ------------------------------------------------------------------------------ */

typedef struct {
    sn_mesh_t mesh;
    char *repo_dir;
    char *repo;
    char *state_dir;
    sn_redis_t *redis;
    sn_source_t source;
} s_fix_t;

static s_fix_t s_fix;

static void s_sh(const char *fmt, ...) SN_PRINTF(1, 2);

static void s_sh(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *cmd = NULL;
    SN_ASSERT(vasprintf(&cmd, fmt, ap) >= 0);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    SN_ASSERT(rc == 0);
    free(cmd);
}

/* The sha of @ref in the test repository (caller frees). */
static char *s_rev(const char *ref)
{
    char *cmd = sn_strdupf("git -C '%s' rev-parse '%s'", s_fix.repo, ref);
    FILE *p = popen(cmd, "r");
    free(cmd);
    SN_ASSERT(p);
    char buf[128] = "";
    if (!fgets(buf, sizeof buf, p))
        buf[0] = '\0';
    pclose(p);
    buf[strcspn(buf, "\n")] = '\0';
    return sn_strdup(buf);
}

/* A new commit on @branch changing a file; returns its sha (caller frees). */
static char *s_commit(const char *branch, const char *text)
{
    s_sh("cd '%s' && git checkout -q '%s' && echo '%s' > site/page.txt && git add -A && "
         "git commit -q -m '%s'",
         s_fix.repo, branch, text, text);
    char *ref = sn_strdupf("refs/heads/%s", branch);
    char *sha = s_rev(ref);
    free(ref);
    return sha;
}

static sn_rc_t s_call(const char *service, sn_envelope_t *env, int timeout_ms,
                      sn_envelope_t **reply, sn_nak_reason_t *nak)
{
    return sn_mesh_call(&s_fix.mesh, service, env, timeout_ms, reply, nak);
}

static int s_setup(void **state)
{
    (void)state;
    zsys_init();
    setenv("GIT_AUTHOR_NAME", "Sentinel Test", 1);
    setenv("GIT_AUTHOR_EMAIL", "test@example.com", 1);
    setenv("GIT_COMMITTER_NAME", "Sentinel Test", 1);
    setenv("GIT_COMMITTER_EMAIL", "test@example.com", 1);
    /* The agent inherits these: only the declared secret may reach a build step. */
    setenv("SN_TEST_BUILD_SECRET", S_SECRET_VALUE, 1);
    setenv("SN_SECRET_CANARY", S_CANARY_VALUE, 1);

    s_fix.repo_dir = sn_test_tmpdir("bv-repo");
    s_fix.repo = sn_strdupf("%s/site-repo", s_fix.repo_dir);
    s_sh("git init -q -b main '%s' && mkdir -p '%s/site' && echo '<h1>hello</h1>' > "
         "'%s/site/index.html' && cd '%s' && git add -A && git commit -q -m first && "
         "git branch staging",
         s_fix.repo, s_fix.repo, s_fix.repo, s_fix.repo);
    char *staging = s_commit("staging", "staging-1");
    free(staging);

    char *yaml = sn_strdupf(
        "targets:\n"
        "  - name: site\n    type: local_command\n"
        "    stage_command: \"true\"\n    promote_command: \"true\"\n"
        "projects:\n"
        "  - name: web\n    repo: %s\n    poll_interval_ms: 100\n"
        "    build_steps:\n"
        "      - \"mkdir -p out && cp -R site/. out/ && echo built-$SENTINEL_COMMIT > "
        "out/built.txt\"\n"
        "      - \"env; echo uid=$(id -u)\"\n"
        "    build_output: out\n    build_timeout_s: 30\n"
        "    build_env: [\"DECLARED=yes\"]\n    build_secrets: [\"SN_TEST_BUILD_SECRET\"]\n"
        "    environments:\n"
        "      - {name: staging, branch: staging, targets: [site]}\n"
        "      - {name: production, branch: main, targets: [site]}\n"
        "  - name: pushonly\n    repo: %s\n    poll_interval_ms: 0\n"
        "    build_steps: [\"true\"]\n"
        "    environments: [{name: staging, branch: staging, targets: [site]}]\n"
        "  - name: hang\n    repo: %s\n    poll_interval_ms: 0\n"
        "    build_steps: [\"echo pgid=$$; sleep 1000 & sleep 1000\"]\n    build_timeout_s: 1\n"
        "    environments: [{name: staging, branch: staging, targets: [site]}]\n"
        "  - name: fail\n    repo: %s\n    poll_interval_ms: 0\n"
        "    build_steps: [\"true\", \"echo failing; exit 3\"]\n"
        "    environments: [{name: staging, branch: staging, targets: [site]}]\n"
        "  - name: gone\n    repo: %s/nope\n    poll_interval_ms: 0\n"
        "    build_steps: [\"true\"]\n"
        "    environments: [{name: staging, branch: staging, targets: [site]}]\n",
        s_fix.repo, s_fix.repo, s_fix.repo, s_fix.repo, s_fix.repo_dir);
    SN_ASSERT(sn_mesh_start(&s_fix.mesh, "bv", yaml));
    free(yaml);
    s_fix.state_dir = sn_strdupf("%s/var", s_fix.mesh.dir);

    s_fake.endpoint = s_fix.mesh.rpc;
    SN_ASSERT(pthread_create(&s_fake.th, NULL, s_fake_thread, NULL) == 0);
    (void)sn_mesh_agent_bin(&s_fix.mesh, "sentinel-agent", "build-validator", "bv1");
    SN_ASSERT(sn_mesh_wait_service(&s_fix.mesh, "build.local", 1, 15000));
    SN_ASSERT(sn_mesh_wait_service(&s_fix.mesh, "run.trigger", 1, 15000));

    sn_redis_opts_t ro = {
        .unix_path = s_fix.mesh.redis.unix_path, .namespace_ = s_fix.mesh.ns, .timeout_ms = 2000};
    s_fix.redis = sn_redis_new(&ro);
    sn_source_init(&s_fix.source, "test", "bv");
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    __atomic_store_n(&s_fake.stop, 1, __ATOMIC_RELEASE);
    pthread_join(s_fake.th, NULL);
    if (getenv("SN_BV_KEEP")) {
        char *cmd = sn_strdupf("cp -r '%s' /tmp/bv-keep", s_fix.mesh.dir);
        if (system(cmd) != 0)
            fprintf(stderr, "keep failed\n");
        free(cmd);
    }
    int bad = sn_mesh_stop(&s_fix.mesh);
    sn_redis_destroy(&s_fix.redis);
    sn_test_rmdir(s_fix.repo_dir);
    free(s_fix.repo_dir);
    free(s_fix.repo);
    free(s_fix.state_dir);
    return bad == 0 ? 0 : -1;
}

/* ---- builds ------------------------------------------------------------------------------- */

/* Calls build.local; returns the reply (caller frees) or NULL with *nak set. */
static sn_envelope_t *s_build(const char *run_id, const char *project, const char *sha,
                              const char *job_id, sn_nak_reason_t *nak)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &s_fix.mesh.source, "build.local", id);
    Sentinel__V1__BuildRequest b = SENTINEL__V1__BUILD_REQUEST__INIT;
    b.run_id = (char *)run_id;
    b.project = (char *)project;
    b.ref = "refs/heads/staging";
    b.sha = (char *)sha;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_BUILD_REQUEST;
    env.build_request = &b;
    if (job_id)
        sn_envelope_add_label(&env, "job_id", job_id);
    sn_envelope_t *reply = NULL;
    sn_nak_reason_t reason = SN_NAK_NONE;
    sn_rc_t rc = s_call("build.local", &env, 30000, &reply, &reason);
    sn_envelope_fini_labels(&env);
    if (nak)
        *nak = reason;
    if (rc != SN_OK)
        return NULL;
    assert_non_null(reply);
    assert_int_equal(reply->body_case, SENTINEL__V1__ENVELOPE__BODY_BUILD_RESULT);
    return reply;
}

static void test_build_validator_builds_into_the_store(void **state)
{
    (void)state;
    char *sha = s_rev("refs/heads/staging");
    sn_envelope_t *reply = s_build("run-ok-1", "web", sha, NULL, NULL);
    assert_non_null(reply);
    const Sentinel__V1__BuildResult *r = reply->build_result;
    if (!r->ok)
        fprintf(stderr, "build failed: %s\n", r->reason);
    assert_true(r->ok);
    assert_false(r->is_transient);
    assert_true(sn_artifact_sha_is_valid(r->artifact_sha256));
    assert_true(r->artifact_bytes > 0);
    assert_true(r->duration_ms >= 0);
    /* The artifact is in the store under its hash, and verifies. */
    char *art_dir = sn_strdupf("%s/artifacts", s_fix.state_dir);
    sn_artifact_t *store = sn_artifact_new(art_dir, NULL);
    assert_non_null(store);
    assert_true(sn_artifact_exists(store, r->artifact_sha256));
    assert_int_equal(sn_artifact_verify(store, r->artifact_sha256), SN_OK);
    char *out = sn_strdupf("%s/extract", s_fix.mesh.dir);
    assert_int_equal(sn_artifact_extract(store, r->artifact_sha256, out), SN_OK);
    char *built = sn_strdupf("%s/built.txt", out);
    char *text = sn_test_read_file(built);
    assert_non_null(text);
    char *want = sn_strdupf("built-%s\n", sha);
    assert_string_equal(text, want);
    free(want);
    free(text);
    free(built);
    free(out);
    sn_artifact_destroy(&store);
    free(art_dir);

    /* The log of the run: the step's environment is only what was declared. */
    char *log = sn_strdupf("%s/builds/run-ok-1.log", s_fix.state_dir);
    assert_string_equal(r->log_path, log);
    char *body = sn_test_read_file(log);
    assert_non_null(body);
    assert_non_null(strstr(body, "DECLARED=yes\n"));
    assert_non_null(strstr(body, "SENTINEL_PROJECT=web\n"));
    assert_non_null(strstr(body, "SENTINEL_REF=refs/heads/staging\n"));
    assert_non_null(strstr(body, "SENTINEL_COMMIT="));
    assert_non_null(strstr(body, "PATH=/usr/local/bin:/usr/bin:/bin\n"));
    assert_non_null(strstr(body, "SN_TEST_BUILD_SECRET=" S_SECRET_VALUE "\n"));
    assert_null(strstr(body, "SN_SECRET_CANARY"));
    assert_null(strstr(body, S_CANARY_VALUE));
    assert_null(strstr(body, "SN_LOG"));
    assert_null(strstr(body, "GIT_AUTHOR_NAME"));
    if (geteuid() == 0)
        assert_non_null(strstr(body, "uid=65534\n"));
    free(body);
    /* The work dir is gone; the agent's own log never shows the secret's value. */
    char *work = sn_strdupf("%s/builds/run-ok-1", s_fix.state_dir);
    struct stat st;
    assert_int_not_equal(stat(work, &st), 0);
    free(work);
    assert_int_equal(sn_test_count_in_file(sn_mesh_find(&s_fix.mesh, "bv1")->log, S_SECRET_VALUE),
                     0);
    free(log);
    sn_envelope_free(&reply);
    free(sha);
}

/* True if a process (not a zombie) of group @pgid exists. */
static bool s_group_alive(long pgid)
{
    DIR *d = opendir("/proc");
    assert_non_null(d);
    bool alive = false;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && !alive) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char *path = sn_strdupf("/proc/%s/stat", e->d_name);
        char *stat = sn_test_read_file(path);
        free(path);
        char *rp = stat ? strrchr(stat, ')') : NULL;
        char st = 0;
        int ppid = 0, pgrp = 0;
        if (rp && sscanf(rp + 2, "%c %d %d", &st, &ppid, &pgrp) == 3 && pgrp == pgid && st != 'Z')
            alive = true;
        free(stat);
    }
    closedir(d);
    return alive;
}

static void test_build_validator_timeout_and_failing_step(void **state)
{
    (void)state;
    char *sha = s_rev("refs/heads/staging");
    int64_t t0 = sn_mono_ms();
    sn_envelope_t *reply = s_build("run-hang-1", "hang", sha, NULL, NULL);
    assert_non_null(reply);
    assert_false(reply->build_result->ok);
    assert_false(reply->build_result->is_transient);
    assert_string_equal(reply->build_result->reason, "timed out after 1 s");
    assert_true(sn_mono_ms() - t0 < 10000);
    char *log = sn_strdupf("%s/builds/run-hang-1.log", s_fix.state_dir);
    char *body = sn_test_read_file(log);
    assert_non_null(body);
    char *p = strstr(body, "\npgid=");
    assert_non_null(p);
    long pgid = strtol(p + 6, NULL, 10);
    assert_true(pgid > 1);
    assert_false(s_group_alive(pgid)); /* the background sleep went with it */
    free(body);
    free(log);
    sn_envelope_free(&reply);

    reply = s_build("run-fail-1", "fail", sha, NULL, NULL);
    assert_non_null(reply);
    assert_false(reply->build_result->ok);
    assert_false(reply->build_result->is_transient);
    assert_string_equal(reply->build_result->reason, "step 2 exited 3");
    log = sn_strdupf("%s/builds/run-fail-1.log", s_fix.state_dir);
    assert_int_equal(sn_test_count_in_file(log, "\nfailing\n"), 1);
    free(log);
    sn_envelope_free(&reply);

    /* A commit the repository does not have, a repository that does not exist. */
    reply = s_build("run-nosha-1", "web", "0123456789abcdef0123456789abcdef01234567", NULL, NULL);
    assert_non_null(reply);
    assert_false(reply->build_result->ok);
    assert_false(reply->build_result->is_transient);
    assert_non_null(strstr(reply->build_result->reason, "not found"));
    sn_envelope_free(&reply);
    reply = s_build("run-gone-1", "gone", sha, NULL, NULL);
    assert_non_null(reply);
    assert_false(reply->build_result->ok);
    assert_non_null(strstr(reply->build_result->reason, "not found"));
    sn_envelope_free(&reply);
    free(sha);
}

static void test_build_validator_refuses_bad_requests(void **state)
{
    (void)state;
    char *sha = s_rev("refs/heads/staging");
    sn_nak_reason_t nak = SN_NAK_NONE;
    assert_null(s_build("run-x", "no-such-project", sha, NULL, &nak));
    assert_int_equal(nak, SN_NAK_INVALID);
    assert_null(s_build("../escape", "web", sha, NULL, &nak));
    assert_int_equal(nak, SN_NAK_INVALID);
    assert_null(s_build("run-x", "web", "--upload-pack=evil", NULL, &nak));
    assert_int_equal(nak, SN_NAK_INVALID);
    assert_null(s_build("run-x", "web", sha, "bad job id!", &nak));
    assert_int_equal(nak, SN_NAK_INVALID);
    /* No body at all. */
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &s_fix.mesh.source, "build.local", id);
    sn_envelope_t *reply = NULL;
    assert_int_equal(s_call("build.local", &env, 5000, &reply, &nak), SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    assert_int_equal(s_call("source.push", &env, 5000, &reply, &nak), SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    char *escaped = sn_strdupf("%s/escape", s_fix.state_dir);
    struct stat st;
    assert_int_not_equal(stat(escaped, &st), 0);
    free(escaped);
    free(sha);
}

static void test_build_validator_claims_ledger_jobs(void **state)
{
    (void)state;
    sn_ledger_t *ledger = sn_ledger_new(s_fix.redis, &s_fix.source);
    sn_leader_t *leader = sn_leader_new(s_fix.redis, "test-owner", "t1", 10000);
    uint64_t fence = 0;
    assert_int_equal(sn_leader_try(leader, &fence), SN_OK);
    Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
    spec.job_id = "job-build-1";
    spec.kind = "build.local";
    spec.service = "build.local";
    spec.owner_role = "test-owner";
    spec.lease_ms = 1000; /* shorter than the build: it must be renewed */
    assert_int_equal(sn_ledger_create(ledger, fence, "test-owner", &spec), SN_OK);
    char *sha = s_rev("refs/heads/staging");
    sn_envelope_t *reply = s_build("run-job-1", "web", sha, "job-build-1", NULL);
    assert_non_null(reply);
    assert_true(reply->build_result->ok);
    sn_ledger_job_t job;
    assert_int_equal(sn_ledger_get(ledger, "job-build-1", &job), SN_OK);
    assert_int_equal(job.state, SN_JOB_DONE);
    assert_true(job.ok);
    Sentinel__V1__BuildResult *stored =
        sentinel__v1__build_result__unpack(NULL, job.result_len, job.result);
    assert_non_null(stored);
    assert_string_equal(stored->artifact_sha256, reply->build_result->artifact_sha256);
    sentinel__v1__build_result__free_unpacked(stored, NULL);
    sn_ledger_job_fini(&job);
    sn_envelope_free(&reply);
    /* The same job again: already done, nothing is built. */
    reply = s_build("run-job-2", "web", sha, "job-build-1", NULL);
    assert_non_null(reply);
    assert_false(reply->build_result->ok);
    assert_non_null(strstr(reply->build_result->reason, "not claimed"));
    char *log2 = sn_strdupf("%s/builds/run-job-2.log", s_fix.state_dir);
    struct stat st;
    assert_int_not_equal(stat(log2, &st), 0);
    free(log2);
    sn_envelope_free(&reply);
    free(sha);
    sn_leader_destroy(&leader);
    sn_ledger_destroy(&ledger);
}

/* ---- sources ------------------------------------------------------------------------------ */

static sn_envelope_t *s_push(const char *project, const char *ref, const char *sha,
                             sn_nak_reason_t *nak)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &s_fix.mesh.source, "source.push", id);
    Sentinel__V1__TriggerRequest t = SENTINEL__V1__TRIGGER_REQUEST__INIT;
    t.project = (char *)project;
    t.ref = (char *)ref;
    t.sha = (char *)sha;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_TRIGGER;
    env.trigger = &t;
    sn_envelope_t *reply = NULL;
    if (s_call("source.push", &env, 15000, &reply, nak) != SN_OK)
        return NULL;
    assert_non_null(reply);
    assert_int_equal(reply->body_case, SENTINEL__V1__ENVELOPE__BODY_ACK);
    return reply;
}

static void test_build_validator_push_triggers_once(void **state)
{
    (void)state;
    char *sha = s_rev("refs/heads/staging");
    sn_envelope_t *reply = s_push("pushonly", "refs/heads/staging", sha, NULL);
    assert_non_null(reply);
    assert_non_null(strstr(reply->ack->id, "run-"));
    sn_envelope_free(&reply);
    assert_int_equal(s_fake_count("pushonly", sha, "push"), 1);
    char *seen = sn_mesh_get(&s_fix.mesh, "source:pushonly:refs/heads/staging");
    assert_string_equal(seen, sha);
    free(seen);
    /* The same push again (and with the short ref name): deduplicated. */
    reply = s_push("pushonly", "staging", sha, NULL);
    assert_non_null(reply);
    assert_string_equal(reply->ack->id, "duplicate");
    sn_envelope_free(&reply);
    assert_int_equal(s_fake_count("pushonly", sha, NULL), 1);
    /* A branch no environment deploys, an unknown project, a malformed sha. */
    reply = s_push("pushonly", "refs/heads/feature", sha, NULL);
    assert_non_null(reply);
    assert_string_equal(reply->ack->id, "ignored");
    sn_envelope_free(&reply);
    sn_nak_reason_t nak = SN_NAK_NONE;
    assert_null(s_push("nope", "refs/heads/staging", sha, &nak));
    assert_int_equal(nak, SN_NAK_INVALID);
    assert_null(s_push("pushonly", "refs/heads/staging", "xyz", &nak));
    assert_int_equal(nak, SN_NAK_INVALID);
    assert_null(s_push("pushonly", "refs/heads/../../x", sha, &nak));
    assert_int_equal(nak, SN_NAK_INVALID);

    /* run.trigger failing: the push is refused and the commit is not recorded, so the
     * hook's retry triggers it. */
    char *sha2 = s_commit("staging", "pushed-2");
    s_fake_fail_once("pushonly", sha2);
    assert_null(s_push("pushonly", "refs/heads/staging", sha2, &nak));
    assert_int_equal(nak, SN_NAK_OVERLOADED);
    seen = sn_mesh_get(&s_fix.mesh, "source:pushonly:refs/heads/staging");
    assert_string_equal(seen, sha);
    free(seen);
    reply = s_push("pushonly", "refs/heads/staging", sha2, NULL);
    assert_non_null(reply);
    assert_non_null(strstr(reply->ack->id, "run-"));
    sn_envelope_free(&reply);
    assert_int_equal(s_fake_count("pushonly", sha2, "push"), 2);
    free(sha2);
    free(sha);
}

typedef struct {
    const char *project, *sha;
    int count;
} s_wait_t;

static bool s_triggered(void *arg)
{
    s_wait_t *w = arg;
    return s_fake_count(w->project, w->sha, "poll") >= w->count;
}

static void test_build_validator_polling_sees_commits_once(void **state)
{
    (void)state;
    /* At first sight the leader reports every watched head (main and staging). */
    char *main_sha = s_rev("refs/heads/main");
    s_wait_t w = {"web", main_sha, 1};
    assert_true(sn_test_wait_for(s_triggered, &w, 15000));
    /* A new commit on staging, one whose first trigger fails (retried), then another. */
    char *c1 = s_commit("staging", "polled-1");
    w.sha = c1;
    assert_true(sn_test_wait_for(s_triggered, &w, 15000));
    s_fake_fail_once("web", "*"); /* the next one */
    char *c2 = s_commit("staging", "polled-2");
    w.sha = c2;
    w.count = 2; /* refused, then seen again on a later poll */
    assert_true(sn_test_wait_for(s_triggered, &w, 15000));
    w.count = 1;
    char *c3 = s_commit("staging", "polled-3");
    w.sha = c3;
    assert_true(sn_test_wait_for(s_triggered, &w, 15000));
    /* Polls went on after c1 and c2 were seen: each was triggered once (c2 once more
     * after its failed attempt), and the recorded head is the last one. */
    assert_int_equal(s_fake_count("web", c1, NULL), 1);
    assert_int_equal(s_fake_count("web", c2, NULL), 2);
    assert_int_equal(s_fake_count("web", main_sha, NULL), 1);
    char *seen = sn_mesh_get(&s_fix.mesh, "source:web:refs/heads/staging");
    assert_string_equal(seen, c3);
    free(seen);
    /* A push of what polling already saw is a duplicate. */
    sn_envelope_t *reply = s_push("web", "refs/heads/staging", c3, NULL);
    assert_non_null(reply);
    assert_string_equal(reply->ack->id, "duplicate");
    sn_envelope_free(&reply);
    assert_int_equal(s_fake_count("web", c3, NULL), 1);
    free(c1);
    free(c2);
    free(c3);
    free(main_sha);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_validator_builds_into_the_store),
        cmocka_unit_test(test_build_validator_timeout_and_failing_step),
        cmocka_unit_test(test_build_validator_refuses_bad_requests),
        cmocka_unit_test(test_build_validator_claims_ledger_jobs),
        cmocka_unit_test(test_build_validator_push_triggers_once),
        cmocka_unit_test(test_build_validator_polling_sees_commits_once),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
