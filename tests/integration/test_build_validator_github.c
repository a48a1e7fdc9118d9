/* build-validator in GitHub mode through the real mesh (redis-server, broker,
 * sentinel-agent build-validator) and the GitHub fake (tests/fakes/fake_github.py): the
 * github.* events the gateway records (written here straight into the journal) and the
 * leader's polling turn workflow runs into exactly one run.trigger per verified commit
 * (a fake buildpilot worker in this process records them), required workflows that are
 * not all green trigger nothing and a failed one publishes build.failed with the
 * feedback of github.feedback (served by the same fake worker), a commit that is not the
 * branch head is never triggered, a lost webhook is caught by polling (with conditional
 * requests), and build.local of a GitHub project downloads the verified run's artifact
 * through its redirect without the token, checks its digest and stores it as a
 * deterministic tar. Negative checks ("no trigger") wait for a barrier: a later event of
 * another project whose trigger proves the earlier ones were handled (one consumer
 * handles the journal in order). */
#include "sn_mesh.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <czmq.h>

#include "sentinel/sn_artifact.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_worker.h"

#define S_FEEDBACK "make: *** [all] error: boom"

/* ---- the fake buildpilot / github-workflow worker ---------------------------------------- */

typedef struct {
    char project[64], environment[64], ref[128], sha[72], trigger[16];
    uint64_t run_ids[4];
    size_t n_run_ids;
} s_rec_t;

static struct {
    pthread_mutex_t mu;
    s_rec_t recs[256];
    size_t n;
    int feedback_calls;
    uint64_t feedback_run;
    int stop;
    pthread_t th;
    char *endpoint;
} s_fake = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void s_fake_reply(sn_worker_t *w, sn_worker_event_t *ev, sn_envelope_t *reply)
{
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(reply, &len);
    if (sn_worker_reply(w, &ev->ticket, bytes, len) != SN_OK)
        fprintf(stderr, "fake: reply dropped\n");
    free(bytes);
}

static void s_fake_answer(sn_worker_t *w, sn_worker_event_t *ev, sn_source_t *src)
{
    sn_envelope_t *env = sn_envelope_unpack(ev->body, ev->body_len, SN_MAX_FRAME_BYTES, NULL);
    sn_envelope_t reply;
    char id[SN_ID_LEN + 1];
    if (env && strcmp(ev->service, "github.feedback") == 0 &&
        env->body_case == SENTINEL__V1__ENVELOPE__BODY_GITHUB_REQUEST) {
        /* As github-workflow answers (proto/sentinel/v1/github.proto). */
        pthread_mutex_lock(&s_fake.mu);
        s_fake.feedback_calls++;
        s_fake.feedback_run = env->github_request->workflow_run_id;
        pthread_mutex_unlock(&s_fake.mu);
        Sentinel__V1__GithubJobFeedback job = SENTINEL__V1__GITHUB_JOB_FEEDBACK__INIT;
        job.name = "build";
        job.conclusion = "failure";
        job.failed_step = "make";
        job.log_tail = S_FEEDBACK;
        Sentinel__V1__GithubJobFeedback *jobs[] = {&job};
        Sentinel__V1__GithubResult res = SENTINEL__V1__GITHUB_RESULT__INIT;
        res.ok = true;
        res.conclusion = "failure";
        res.n_jobs = 1;
        res.jobs = jobs;
        sn_envelope_stamp(&reply, src, "github.result", id);
        reply.body_case = SENTINEL__V1__ENVELOPE__BODY_GITHUB_RESULT;
        reply.github_result = &res;
        s_fake_reply(w, ev, &reply);
    } else if (env && env->body_case == SENTINEL__V1__ENVELOPE__BODY_TRIGGER) {
        const Sentinel__V1__TriggerRequest *t = env->trigger;
        pthread_mutex_lock(&s_fake.mu);
        size_t n = s_fake.n;
        if (n < SN_ARRAY_LEN(s_fake.recs)) {
            s_rec_t *r = &s_fake.recs[s_fake.n++];
            snprintf(r->project, sizeof r->project, "%s", t->project);
            snprintf(r->environment, sizeof r->environment, "%s", t->environment);
            snprintf(r->ref, sizeof r->ref, "%s", t->ref);
            snprintf(r->sha, sizeof r->sha, "%s", t->sha);
            snprintf(r->trigger, sizeof r->trigger, "%s", t->trigger);
            for (size_t i = 0; i < t->n_workflow_run_ids && i < 4; i++)
                r->run_ids[r->n_run_ids++] = t->workflow_run_ids[i];
        }
        pthread_mutex_unlock(&s_fake.mu);
        char run_id[32];
        snprintf(run_id, sizeof run_id, "run-%zu", n + 1);
        Sentinel__V1__RunRef ref = SENTINEL__V1__RUN_REF__INIT;
        ref.run_id = run_id;
        ref.state = SENTINEL__V1__RUN_STATE__RUN_QUEUED;
        sn_envelope_stamp(&reply, src, "run.ref", id);
        reply.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN_REF;
        reply.run_ref = &ref;
        s_fake_reply(w, ev, &reply);
    } else if (sn_worker_nak(w, &ev->ticket, SN_NAK_INVALID) != SN_OK) {
        fprintf(stderr, "fake: nak dropped\n");
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
    SN_ASSERT(sn_worker_serve(w, "github.feedback", 4) == SN_OK);
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

/* Triggers of (@project, @sha) received; the last one copied into *out (may be NULL). */
static int s_triggers(const char *project, const char *sha, s_rec_t *out)
{
    int c = 0;
    pthread_mutex_lock(&s_fake.mu);
    for (size_t i = 0; i < s_fake.n; i++)
        if (strcmp(s_fake.recs[i].project, project) == 0 && strcmp(s_fake.recs[i].sha, sha) == 0) {
            c++;
            if (out)
                *out = s_fake.recs[i];
        }
    pthread_mutex_unlock(&s_fake.mu);
    return c;
}

/* ---- fixture ----------------------------------------------------------------------------- */

static struct {
    sn_mesh_t mesh;
    pid_t fake_gh;
    int gh_port;
    char *state_dir;
    sn_redis_t *redis;
    sn_journal_t *journal;
    sn_source_t source;
    int barrier_seq;
} F;

static bool s_file_exists(void *arg)
{
    struct stat st;
    return stat((const char *)arg, &st) == 0 && st.st_size > 0;
}

typedef struct {
    char *body;
    size_t len;
} s_buf_t;

static size_t s_collect(char *data, size_t size, size_t n, void *arg)
{
    s_buf_t *b = arg;
    b->body = sn_realloc(b->body, b->len + size * n + 1);
    memcpy(b->body + b->len, data, size * n);
    b->len += size * n;
    b->body[b->len] = '\0';
    return size * n;
}

/* GET or POST (@json not NULL) on the fake's control side; the parsed answer. */
static json_t *s_gh(const char *path, const char *json)
{
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", F.gh_port, path);
    s_buf_t b = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    struct curl_slist *h = NULL;
    if (json) {
        h = curl_slist_append(h, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, json);
    }
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK || status != 200)
        fprintf(stderr, "fake github %s: curl %d status %ld %s\n", path, rc, status,
                b.body ? b.body : "");
    assert_int_equal(rc, CURLE_OK);
    assert_int_equal(status, 200);
    json_t *j = json_loads(b.body, 0, NULL);
    free(b.body);
    assert_non_null(j);
    return j;
}

static void s_gh_run(const char *json)
{
    json_decref(s_gh("/__control/run", json));
}

static int s_setup(void **state)
{
    (void)state;
    zsys_init();
    curl_global_init(CURL_GLOBAL_DEFAULT);
    memset(&F, 0, sizeof F);
    F.gh_port = sn_test_free_port();
    char *yaml =
        sn_strdupf("targets:\n"
                   "  - name: site\n    type: local_command\n"
                   "    stage_command: \"true\"\n    promote_command: \"true\"\n"
                   "github:\n"
                   "  api_base: http://127.0.0.1:%d\n"
                   "  token: test-token\n"
                   "  request_timeout_ms: 5000\n"
                   "  max_attempts: 2\n"
                   "projects:\n"
                   "  - name: web\n    source_type: github\n    github_repo: acme/web\n"
                   "    poll_interval_ms: 0\n"
                   "    environments: [{name: production, branch: main, targets: [site]}]\n"
                   "  - name: api\n    source_type: github\n    github_repo: acme/api\n"
                   "    poll_interval_ms: 0\n"
                   "    environments:\n"
                   "      - {name: production, branch: main, targets: [site], "
                   "required_workflows: [CI, Lint]}\n"
                   "  - name: barrier\n    source_type: github\n    github_repo: acme/barrier\n"
                   "    poll_interval_ms: 0\n"
                   "    environments: [{name: production, branch: main, targets: [site]}]\n"
                   "  - name: polled\n    source_type: github\n    github_repo: acme/polled\n"
                   "    poll_interval_ms: 200\n    artifact_name: site\n"
                   "    environments: [{name: production, branch: main, targets: [site]}]\n",
                   F.gh_port);
    SN_ASSERT(sn_mesh_start(&F.mesh, "bvgh", yaml));
    free(yaml);
    F.state_dir = sn_strdupf("%s/var", F.mesh.dir);

    /* The GitHub fake. */
    char *script = sn_strdupf("%s/tests/fakes/fake_github.py", SN_SOURCE_DIR);
    char *ready = sn_strdupf("%s/fake_github.ready", F.mesh.dir);
    char *log = sn_strdupf("%s/fake_github.log", F.mesh.dir);
    char port[16];
    snprintf(port, sizeof port, "%d", F.gh_port);
    char *argv[] = {"/usr/bin/python3", script, "--port", port, "--ready", ready, NULL};
    F.fake_gh = sn_test_spawn(argv, log);
    SN_ASSERT(F.fake_gh > 0 && sn_test_wait_for(s_file_exists, ready, 10000));
    free(script);
    free(ready);
    free(log);

    s_fake.endpoint = F.mesh.rpc;
    SN_ASSERT(pthread_create(&s_fake.th, NULL, s_fake_thread, NULL) == 0);
    (void)sn_mesh_agent_bin(&F.mesh, "sentinel-agent", "build-validator", "bv1");
    SN_ASSERT(sn_mesh_wait_service(&F.mesh, "build.local", 1, 15000));
    SN_ASSERT(sn_mesh_wait_service(&F.mesh, "run.trigger", 1, 15000));

    sn_redis_opts_t ro = {
        .unix_path = F.mesh.redis.unix_path, .namespace_ = F.mesh.ns, .timeout_ms = 2000};
    F.redis = sn_redis_new(&ro);
    sn_source_init(&F.source, "gateway", "test");
    sn_journal_opts_t jo = {.redis = F.redis, .source = &F.source};
    F.journal = sn_journal_new(&jo);
    SN_ASSERT(F.journal);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    __atomic_store_n(&s_fake.stop, 1, __ATOMIC_RELEASE);
    pthread_join(s_fake.th, NULL);
    int bad = sn_mesh_stop(&F.mesh);
    if (F.fake_gh > 0)
        sn_test_stop(F.fake_gh, SIGTERM, 5000);
    sn_journal_destroy(&F.journal);
    sn_redis_destroy(&F.redis);
    free(F.state_dir);
    curl_global_cleanup();
    return bad == 0 ? 0 : -1;
}

/* ---- events -----------------------------------------------------------------------------------
 */

/* Records a github.workflow_run event as the gateway would. */
static void s_workflow_run(const char *repo, const char *branch, const char *sha,
                           const char *workflow, uint64_t run_id, uint32_t attempt,
                           const char *status, const char *conclusion)
{
    Sentinel__V1__GithubEvent ev = SENTINEL__V1__GITHUB_EVENT__INIT;
    ev.repo = (char *)repo;
    ev.event = "workflow_run";
    ev.action = strcmp(status, "completed") == 0 ? "completed" : "requested";
    char delivery[64];
    snprintf(delivery, sizeof delivery, "d-%" PRIu64 "-%u-%s", run_id, attempt, status);
    ev.delivery_id = delivery;
    ev.head_sha = (char *)sha;
    ev.head_branch = (char *)branch;
    ev.workflow_name = (char *)workflow;
    ev.run_id = run_id;
    ev.run_attempt = attempt;
    ev.status = (char *)status;
    ev.conclusion = (char *)conclusion;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &F.source, "github.workflow_run", id);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_GITHUB_EVENT;
    env.github_event = &ev;
    assert_int_equal(sn_journal_commit(F.journal, NULL, NULL, 0, &env, NULL), SN_OK);
}

static void s_push(const char *repo, const char *branch, const char *sha)
{
    Sentinel__V1__GithubEvent ev = SENTINEL__V1__GITHUB_EVENT__INIT;
    ev.repo = (char *)repo;
    ev.event = "push";
    char ref[128];
    snprintf(ref, sizeof ref, "refs/heads/%s", branch);
    ev.ref = ref;
    ev.head_branch = (char *)branch;
    ev.head_sha = (char *)sha;
    ev.delivery_id = "push-delivery";
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &F.source, "github.push", id);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_GITHUB_EVENT;
    env.github_event = &ev;
    assert_int_equal(sn_journal_commit(F.journal, NULL, NULL, 0, &env, NULL), SN_OK);
}

typedef struct {
    const char *project;
    const char *sha;
    int count;
} s_wait_t;

static bool s_has_triggers(void *arg)
{
    const s_wait_t *w = arg;
    return s_triggers(w->project, w->sha, NULL) >= w->count;
}

/* A 40-hex sha from @n. */
static void s_sha(char out[41], unsigned n)
{
    snprintf(out, 41, "%08x%032x", n, n * 2654435761u);
}

/* Everything recorded before this call has been handled once this returns. */
static void s_barrier(void)
{
    char sha[41];
    s_sha(sha, 0xb0000000u + (unsigned)++F.barrier_seq);
    s_workflow_run("acme/barrier", "main", sha, "CI", 9000000u + (unsigned)F.barrier_seq, 1,
                   "completed", "success");
    s_wait_t w = {"barrier", sha, 1};
    assert_true(sn_test_wait_for(s_has_triggers, &w, 15000));
}

/* The build.failed events of @project in the journal (and the last one's reason). */
static int s_build_failed(const char *project, char *reason, size_t reason_len,
                          const char **workflow_label)
{
    size_t n = 0;
    sn_envelope_t **envs = sn_mesh_journal(&F.mesh, F.redis, &n);
    int c = 0;
    static char label[64];
    for (size_t i = 0; i < n; i++) {
        if (strcmp(envs[i]->type, "build.failed") != 0 ||
            envs[i]->body_case != SENTINEL__V1__ENVELOPE__BODY_RUN ||
            strcmp(envs[i]->run->project, project) != 0)
            continue;
        c++;
        if (reason)
            snprintf(reason, reason_len, "%s", envs[i]->run->reason);
        const char *l = sn_envelope_label(envs[i], "workflow");
        snprintf(label, sizeof label, "%s", l ? l : "");
        if (workflow_label)
            *workflow_label = label;
    }
    sn_mesh_envelopes_free(envs, n);
    return c;
}

static bool s_has_build_failed(void *arg)
{
    return s_build_failed((const char *)arg, NULL, 0, NULL) >= 1;
}

/* ---- tests ------------------------------------------------------------------------------------
 */

static void test_bv_github_success_triggers_once(void **state)
{
    (void)state;
    char a[41];
    s_sha(a, 1);
    s_workflow_run("acme/web", "main", a, "CI", 1001, 1, "queued", "");
    s_workflow_run("acme/web", "main", a, "CI", 1001, 1, "completed", "success");
    s_wait_t w = {"web", a, 1};
    assert_true(sn_test_wait_for(s_has_triggers, &w, 15000));
    /* The same completion again (a redelivery, or webhook and poll), and a stale
     * "in_progress" arriving late: still one run. */
    s_workflow_run("acme/web", "main", a, "CI", 1001, 1, "completed", "success");
    s_workflow_run("acme/web", "main", a, "CI", 1001, 1, "in_progress", "");
    /* A branch no environment deploys, and a repository nobody configured. */
    char f[41];
    s_sha(f, 2);
    s_workflow_run("acme/web", "feature/x", f, "CI", 1002, 1, "completed", "success");
    s_workflow_run("acme/other", "main", f, "CI", 1003, 1, "completed", "success");
    s_barrier();
    s_rec_t rec;
    assert_int_equal(s_triggers("web", a, &rec), 1);
    assert_string_equal(rec.environment, "production");
    assert_string_equal(rec.ref, "refs/heads/main");
    assert_string_equal(rec.trigger, "github");
    assert_int_equal(rec.n_run_ids, 1);
    assert_true(rec.run_ids[0] == 1001);
    assert_int_equal(s_triggers("web", f, NULL), 0);
    /* The verdict is recorded for build.local. */
    char *key = sn_strdupf("github:verified:web:%s", a);
    char *v = sn_mesh_get(&F.mesh, key);
    assert_non_null(v);
    assert_string_equal(v, "1001");
    free(v);
    free(key);

    /* A commit that is not the branch head (a newer push is known) is not triggered. */
    char old[41], head[41];
    s_sha(old, 3);
    s_sha(head, 4);
    s_push("acme/web", "main", head);
    s_workflow_run("acme/web", "main", old, "CI", 1004, 1, "completed", "success");
    s_barrier();
    assert_int_equal(s_triggers("web", old, NULL), 0);
    s_workflow_run("acme/web", "main", head, "CI", 1005, 1, "completed", "success");
    w = (s_wait_t){"web", head, 1};
    assert_true(sn_test_wait_for(s_has_triggers, &w, 15000));
}

static void test_bv_github_required_workflows(void **state)
{
    (void)state;
    char b[41];
    s_sha(b, 10);
    /* CI green, Lint not seen yet: nothing. */
    s_workflow_run("acme/api", "main", b, "CI", 2001, 1, "completed", "success");
    s_workflow_run("acme/api", "main", b, "Lint", 2002, 1, "in_progress", "");
    s_barrier();
    assert_int_equal(s_triggers("api", b, NULL), 0);
    assert_int_equal(s_build_failed("api", NULL, 0, NULL), 0);
    /* Lint fails: build.failed with the feedback, no run. */
    s_workflow_run("acme/api", "main", b, "Lint", 2002, 1, "completed", "failure");
    assert_true(sn_test_wait_for(s_has_build_failed, "api", 15000));
    char reason[1024];
    const char *workflow = NULL;
    assert_int_equal(s_build_failed("api", reason, sizeof reason, &workflow), 1);
    assert_string_equal(workflow, "Lint");
    assert_non_null(strstr(reason, "failure"));
    assert_non_null(strstr(reason, "job build failure at step make: " S_FEEDBACK));
    pthread_mutex_lock(&s_fake.mu);
    assert_int_equal(s_fake.feedback_calls, 1);
    assert_true(s_fake.feedback_run == 2002);
    pthread_mutex_unlock(&s_fake.mu);
    /* The same failure again: reported once. */
    s_workflow_run("acme/api", "main", b, "Lint", 2002, 1, "completed", "failure");
    s_barrier();
    assert_int_equal(s_build_failed("api", NULL, 0, NULL), 1);
    assert_int_equal(s_triggers("api", b, NULL), 0);
    pthread_mutex_lock(&s_fake.mu);
    assert_int_equal(s_fake.feedback_calls, 1);
    pthread_mutex_unlock(&s_fake.mu);
    /* Lint re-run (attempt 2) passes: one run with both workflow runs. */
    s_workflow_run("acme/api", "main", b, "Lint", 2002, 2, "completed", "success");
    s_wait_t w = {"api", b, 1};
    assert_true(sn_test_wait_for(s_has_triggers, &w, 15000));
    s_rec_t rec;
    assert_int_equal(s_triggers("api", b, &rec), 1);
    assert_int_equal(rec.n_run_ids, 2);
    assert_true(rec.run_ids[0] == 2001 && rec.run_ids[1] == 2002);
    /* An older attempt arriving late changes nothing. */
    s_workflow_run("acme/api", "main", b, "Lint", 2002, 1, "completed", "failure");
    s_barrier();
    assert_int_equal(s_triggers("api", b, NULL), 1);
    assert_int_equal(s_build_failed("api", NULL, 0, NULL), 1);
}

static bool s_has_not_modified(void *arg)
{
    (void)arg;
    json_t *st = s_gh("/__stats", NULL);
    bool ok = json_integer_value(json_object_get(st, "not_modified")) >= 2;
    json_decref(st);
    return ok;
}

static void test_bv_github_polling_catches_a_lost_webhook(void **state)
{
    (void)state;
    char p[41];
    s_sha(p, 20);
    /* No webhook at all: only the fake knows about this run. */
    char *run = sn_strdupf(
        "{\"repo\": \"acme/polled\", \"id\": 3001, \"name\": \"CI\", \"head_branch\": \"main\", "
        "\"head_sha\": \"%s\", \"status\": \"completed\", \"conclusion\": \"success\", "
        "\"artifacts\": [{\"id\": 31, \"name\": \"site\", \"files\": {\"index.html\": "
        "\"<h1>polled</h1>\", \"css/site.css\": \"body{}\"}}]}",
        p);
    s_gh_run(run);
    free(run);
    s_wait_t w = {"polled", p, 1};
    assert_true(sn_test_wait_for(s_has_triggers, &w, 15000));
    s_rec_t rec;
    assert_int_equal(s_triggers("polled", p, &rec), 1);
    assert_true(rec.n_run_ids == 1 && rec.run_ids[0] == 3001);
    /* Later polls are conditional: 304s, and still one run. */
    assert_true(sn_test_wait_for(s_has_not_modified, NULL, 15000));
    assert_int_equal(s_triggers("polled", p, NULL), 1);
}

/* build.local of project polled; the reply (caller frees) or NULL. */
static sn_envelope_t *s_build(const char *run_id, const char *sha, uint64_t gh_run)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &F.mesh.source, "build.local", id);
    Sentinel__V1__BuildRequest b = SENTINEL__V1__BUILD_REQUEST__INIT;
    b.run_id = (char *)run_id;
    b.project = "polled";
    b.ref = "refs/heads/main";
    b.sha = (char *)sha;
    b.n_workflow_run_ids = gh_run ? 1 : 0;
    b.workflow_run_ids = &gh_run;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_BUILD_REQUEST;
    env.build_request = &b;
    sn_envelope_t *reply = NULL;
    sn_nak_reason_t nak = SN_NAK_NONE;
    sn_rc_t rc = sn_mesh_call(&F.mesh, "build.local", &env, 30000, &reply, &nak);
    assert_int_equal(rc, SN_OK);
    assert_non_null(reply);
    assert_int_equal(reply->body_case, SENTINEL__V1__ENVELOPE__BODY_BUILD_RESULT);
    return reply;
}

static void test_bv_github_artifact_is_fetched_checked_and_stored(void **state)
{
    (void)state;
    char p[41];
    s_sha(p, 20); /* the commit verified by polling above */
    sn_envelope_t *reply = s_build("run-gh-1", p, 3001);
    const Sentinel__V1__BuildResult *r = reply->build_result;
    if (!r->ok)
        fprintf(stderr, "build failed: %s\n", r->reason);
    assert_true(r->ok);
    assert_true(sn_artifact_sha_is_valid(r->artifact_sha256));
    char first[SN_ARTIFACT_SHA_LEN + 1];
    snprintf(first, sizeof first, "%s", r->artifact_sha256);
    /* The stored tar holds exactly the uploaded files. */
    char *art_dir = sn_strdupf("%s/artifacts", F.state_dir);
    sn_artifact_t *store = sn_artifact_new(art_dir, NULL);
    char *dest = sn_strdupf("%s/extract-1", F.mesh.dir);
    assert_int_equal(sn_artifact_extract(store, first, dest), SN_OK);
    char *index = sn_strdupf("%s/index.html", dest);
    char *css = sn_strdupf("%s/css/site.css", dest);
    char *text = sn_test_read_file(index);
    assert_non_null(text);
    assert_string_equal(text, "<h1>polled</h1>");
    free(text);
    text = sn_test_read_file(css);
    assert_string_equal(text, "body{}");
    free(text);
    free(index);
    free(css);
    sn_envelope_free(&reply);
    /* The zip came from the blob host without the token. */
    json_t *st = s_gh("/__stats", NULL);
    assert_true(json_integer_value(json_object_get(st, "blob_requests")) >= 1);
    assert_int_equal(json_integer_value(json_object_get(st, "blob_auth_rejected")), 0);
    json_decref(st);

    /* Without run ids in the request: build-validator's own verdict record is used, and
     * the same bytes give the same artifact. */
    reply = s_build("run-gh-2", p, 0);
    assert_true(reply->build_result->ok);
    assert_string_equal(reply->build_result->artifact_sha256, first);
    sn_envelope_free(&reply);

    /* A zip that does not match GitHub's digest is refused, not transient. */
    char q[41];
    s_sha(q, 21);
    char *run = sn_strdupf(
        "{\"repo\": \"acme/polled\", \"id\": 3002, \"name\": \"Other\", \"head_branch\": "
        "\"release\", \"head_sha\": \"%s\", \"artifacts\": [{\"id\": 32, \"name\": \"site\", "
        "\"digest\": \"sha256:%064d\"}]}",
        q, 0);
    s_gh_run(run);
    free(run);
    reply = s_build("run-gh-3", q, 3002);
    assert_false(reply->build_result->ok);
    assert_false(reply->build_result->is_transient);
    assert_non_null(strstr(reply->build_result->reason, "digest"));
    sn_envelope_free(&reply);

    /* An expired artifact, a run without it, an unknown commit: refused. */
    run = sn_strdupf("{\"repo\": \"acme/polled\", \"id\": 3003, \"name\": \"Other\", "
                     "\"head_branch\": \"release\", \"head_sha\": \"%s\", \"artifacts\": "
                     "[{\"id\": 33, \"name\": \"site\", \"expired\": true}]}",
                     q);
    s_gh_run(run);
    free(run);
    reply = s_build("run-gh-4", q, 3003);
    assert_false(reply->build_result->ok);
    assert_non_null(strstr(reply->build_result->reason, "expired"));
    sn_envelope_free(&reply);
    run = sn_strdupf("{\"repo\": \"acme/polled\", \"id\": 3004, \"name\": \"Other\", "
                     "\"head_branch\": \"release\", \"head_sha\": \"%s\", \"artifacts\": "
                     "[{\"id\": 34, \"name\": \"docs\"}]}",
                     q);
    s_gh_run(run);
    free(run);
    reply = s_build("run-gh-5", q, 3004);
    assert_false(reply->build_result->ok);
    assert_non_null(strstr(reply->build_result->reason, "no artifact named site"));
    sn_envelope_free(&reply);
    /* The artifact of another commit is never deployed for this one. */
    reply = s_build("run-gh-6", q, 3001);
    assert_false(reply->build_result->ok);
    assert_non_null(strstr(reply->build_result->reason, "built from"));
    sn_envelope_free(&reply);
    char u[41];
    s_sha(u, 22);
    reply = s_build("run-gh-7", u, 0);
    assert_false(reply->build_result->ok);
    assert_non_null(strstr(reply->build_result->reason, "no verified workflow run"));
    sn_envelope_free(&reply);

    sn_artifact_destroy(&store);
    sn_test_rmdir(dest);
    free(dest);
    free(art_dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bv_github_success_triggers_once),
        cmocka_unit_test(test_bv_github_required_workflows),
        cmocka_unit_test(test_bv_github_polling_catches_a_lost_webhook),
        cmocka_unit_test(test_bv_github_artifact_is_fetched_checked_and_stored),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
