/* Integration tests for the github-workflow role: a real mesh (redis-server, broker), the
 * sentinel-agent github-workflow process and the GitHub fake (tests/fakes/fake_github.py).
 * Run and deploy events are journalled from this process (sn_journal_commit), as
 * buildpilot would; the fake's request log shows what reached GitHub and in which order.
 * Covered: commit statuses and deployment statuses in order for a successful run (pending,
 * deployment + in_progress, success with the live URL, success; the replaced deployment
 * goes inactive) and for failed and rejected runs; one deployment per run and environment;
 * events of other projects ignored; github.feedback (job, step, log tail); github.rerun
 * (also permission 403 not retried); github.dispatch (inputs; a workflow without
 * workflow_dispatch refused); sentinelctl github rerun|dispatch; github.policy facts and
 * verdicts; malformed requests. */
#include "sn_mesh.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "sentinel/sn_journal.h"
#include "sentinel/sn_redis.h"
#include "sn_fake_github.h"

#define S_REPO "acme/site"
#define S_PUBLIC "http://sentinel.test:8700"
#define S_WAIT_MS 15000

typedef struct {
    sn_mesh_t mesh;
    sn_fake_github_t fake;
    sn_redis_t *r;
    sn_journal_t *j;
    sn_source_t src;
    redisContext *raw;
} s_fx_t;

static s_fx_t *s_fx;

/* ---- fixture ---------------------------------------------------------------------------- */

static bool s_group_exists(void *arg)
{
    s_fx_t *fx = arg;
    char *key = sn_strdupf("%sevents", fx->mesh.ns);
    redisReply *r = redisCommand(fx->raw, "XINFO CONSUMERS %s github-workflow", key);
    free(key);
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1;
    if (r)
        freeReplyObject(r);
    return ok;
}

static int s_group_setup(void **state)
{
    s_fx_t *fx = sn_calloc(1, sizeof *fx);
    s_fx = fx;
    *state = fx;
    if (!sn_fake_github_start(&fx->fake))
        return -1;
    char *yaml = sn_strdupf("github:\n"
                            "  api_base: %s\n"
                            "  token: test-token\n"
                            "  request_timeout_ms: 3000\n"
                            "  max_attempts: 3\n"
                            "  public_url: %s\n"
                            "targets:\n"
                            "  - name: site\n    type: local_command\n"
                            "    stage_command: \"true\"\n    promote_command: \"true\"\n"
                            "projects:\n"
                            "  - name: web\n    source_type: github\n    github_repo: %s\n"
                            "    environments:\n"
                            "      - {name: staging, branch: staging, targets: [site]}\n"
                            "      - name: production\n        branch: main\n"
                            "        targets: [site]\n"
                            "        require_branch_protection: true\n"
                            "        required_approvals: 2\n"
                            "        require_signed: true\n",
                            fx->fake.url, S_PUBLIC, S_REPO);
    bool ok = sn_mesh_start(&fx->mesh, "ghwf", yaml);
    free(yaml);
    if (!ok)
        return -1;
    fx->raw = redisConnectUnix(fx->mesh.redis.unix_path);
    if (!fx->raw || fx->raw->err)
        return -1;
    sn_redis_opts_t ro = {
        .unix_path = fx->mesh.redis.unix_path, .namespace_ = fx->mesh.ns, .timeout_ms = 2000};
    fx->r = sn_redis_new(&ro);
    sn_source_init(&fx->src, "buildpilot", "test");
    sn_journal_opts_t jo = {.redis = fx->r, .source = &fx->src};
    fx->j = sn_journal_new(&jo);
    (void)sn_mesh_agent_bin(&fx->mesh, "sentinel-agent", "github-workflow", "gw1");
    if (!sn_mesh_wait_service(&fx->mesh, "github.policy", 1, S_WAIT_MS))
        return -1;
    return sn_test_wait_for(s_group_exists, fx, S_WAIT_MS) ? 0 : -1;
}

static int s_group_teardown(void **state)
{
    s_fx_t *fx = *state;
    int bad = sn_mesh_stop(&fx->mesh);
    if (!sn_fake_github_stop(&fx->fake))
        bad++;
    sn_journal_destroy(&fx->j);
    sn_redis_destroy(&fx->r);
    if (fx->raw)
        redisFree(fx->raw);
    free(fx);
    return bad == 0 ? 0 : -1;
}

static int s_setup(void **state)
{
    s_fx_t *fx = *state;
    return sn_fake_github_control(&fx->fake, "reset", "{}") ? 0 : -1;
}

/* ---- journal ---------------------------------------------------------------------------- */

static void s_commit_run(s_fx_t *fx, const char *type, const char *project, const char *env_name,
                         const char *run_id, const char *sha, const char *reason)
{
    char id[SN_ID_LEN + 1];
    sn_envelope_t env;
    sn_envelope_stamp(&env, &fx->src, type, id);
    Sentinel__V1__Run run = SENTINEL__V1__RUN__INIT;
    run.run_id = (char *)run_id;
    run.project = (char *)project;
    run.environment = (char *)env_name;
    run.sha = (char *)sha;
    run.reason = (char *)reason;
    env.correlation_id = (char *)run_id;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN;
    env.run = &run;
    assert_int_equal(sn_journal_commit(fx->j, NULL, NULL, 0, &env, NULL), SN_OK);
}

static void s_commit_deploy(s_fx_t *fx, const char *type, const char *env_name, const char *run_id,
                            const char *deploy_id, const char *live_url)
{
    char id[SN_ID_LEN + 1];
    sn_envelope_t env;
    sn_envelope_stamp(&env, &fx->src, type, id);
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    d.deploy_id = (char *)deploy_id;
    d.run_id = (char *)run_id;
    d.project = "web";
    d.environment = (char *)env_name;
    d.target = "site";
    d.live_url = (char *)live_url;
    env.correlation_id = (char *)run_id;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY;
    env.deploy = &d;
    assert_int_equal(sn_journal_commit(fx->j, NULL, NULL, 0, &env, NULL), SN_OK);
}

/* ---- the fake's request log ---------------------------------------------------------------- */

typedef struct {
    s_fx_t *fx;
    const char *path;
    size_t count;
} s_count_t;

static bool s_posts_at_least(void *arg)
{
    s_count_t *c = arg;
    json_t *log = sn_fake_github_requests(&c->fx->fake, c->path);
    size_t n = 0, i;
    json_t *e;
    json_array_foreach(log, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "method")), "POST") == 0)
            n++;
    }
    json_decref(log);
    return n >= c->count;
}

static void s_wait_posts(s_fx_t *fx, const char *path, size_t count)
{
    s_count_t c = {fx, path, count};
    if (!sn_test_wait_for(s_posts_at_least, &c, S_WAIT_MS))
        fail_msg("fewer than %zu POSTs to %s", count, path);
}

/* The POSTs to the repository in order, one line each: "status pending", "deployment",
 * "dstatus <id> in_progress <environment_url>". */
static json_t *s_post_lines(s_fx_t *fx)
{
    json_t *log = sn_fake_github_requests(&fx->fake, "/repos/" S_REPO "/");
    json_t *out = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(log, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "method")), "POST") != 0)
            continue;
        const char *path = json_string_value(json_object_get(e, "path"));
        json_t *b = json_object_get(e, "body");
        const char *state = json_string_value(json_object_get(b, "state"));
        char *line;
        if (strstr(path, "/statuses/") && !strstr(path, "/deployments/")) {
            line = sn_strdupf("status %s %s", state, strrchr(path, '/') + 1);
        } else if (strstr(path, "/deployments/")) {
            const char *p = strstr(path, "/deployments/") + 13;
            const char *url = json_string_value(json_object_get(b, "environment_url"));
            line = sn_strdupf("dstatus %.*s %s%s%s", (int)(strchr(p, '/') - p), p, state,
                              url ? " " : "", url ? url : "");
        } else if (strstr(path, "/deployments")) {
            line = sn_strdupf("deployment %s", json_string_value(json_object_get(b, "ref")));
        } else {
            line = sn_strdupf("other %s", path);
        }
        json_array_append_new(out, json_string(line));
        free(line);
    }
    json_decref(log);
    return out;
}

static void s_expect_lines(json_t *lines, const char *const *want)
{
    size_t n = 0;
    while (want[n])
        n++;
    char *dump = json_dumps(lines, 0);
    if (json_array_size(lines) != n)
        fail_msg("expected %zu POSTs, got %s", n, dump);
    for (size_t i = 0; i < n; i++) {
        const char *got = json_string_value(json_array_get(lines, i));
        if (strcmp(got, want[i]) != 0)
            fail_msg("POST %zu: expected '%s', got '%s' (all: %s)", i, want[i], got, dump);
    }
    free(dump);
}

/* The id of the newest deployment in the fake (as a string, caller frees). */
static char *s_last_deployment_id(s_fx_t *fx)
{
    json_t *st = sn_fake_github_state(&fx->fake);
    json_t *deps =
        json_object_get(json_object_get(json_object_get(st, "repos"), S_REPO), "deployments");
    json_t *last = json_array_get(deps, json_array_size(deps) - 1);
    char *id =
        last ? sn_strdupf("%" JSON_INTEGER_FORMAT, json_integer_value(json_object_get(last, "id")))
             : NULL;
    json_decref(st);
    return id;
}

/* ---- statuses and deployments --------------------------------------------------------------- */

static void test_github_workflow_success_order_and_inactive(void **state)
{
    s_fx_t *fx = *state;
    const char *sha1 = "1111111111111111111111111111111111111111";
    s_commit_run(fx, "run.started", "web", "staging", "RUN1", sha1, NULL);
    s_wait_posts(fx, "/statuses/", 1);
    s_commit_deploy(fx, "deploy.staged", "staging", "RUN1", "DEP1", NULL);
    s_wait_posts(fx, "/deployments", 2); /* the deployment and its in_progress */
    s_commit_deploy(fx, "deploy.staged", "staging", "RUN1", "DEP1b", NULL); /* 2nd target */
    s_commit_deploy(fx, "deploy.promoted", "staging", "RUN1", "DEP1",
                    "http://staging.example.test/");
    s_commit_run(fx, "run.succeeded", "web", "staging", "RUN1", sha1, NULL);
    s_wait_posts(fx,
                 "/statuses/"
                 "1111111111111111111111111111111111111111",
                 2);
    char *dep1 = s_last_deployment_id(fx);
    assert_non_null(dep1);
    json_t *lines = s_post_lines(fx);
    char *l2 = sn_strdupf("dstatus %s in_progress", dep1);
    char *l3 = sn_strdupf("dstatus %s success http://staging.example.test/", dep1);
    s_expect_lines(lines, (const char *const[]){
                              "status pending 1111111111111111111111111111111111111111",
                              "deployment 1111111111111111111111111111111111111111", l2, l3,
                              "status success 1111111111111111111111111111111111111111", NULL});
    json_decref(lines);
    free(l2);
    free(l3);

    /* the details: context per environment, a link to the run, no auto-merge, no checks */
    json_t *log = sn_fake_github_requests(&fx->fake, "/statuses/1111");
    json_t *b = json_object_get(json_array_get(log, 0), "body");
    assert_string_equal(json_string_value(json_object_get(b, "context")), "sentinel/staging");
    assert_string_equal(json_string_value(json_object_get(b, "target_url")),
                        S_PUBLIC "/api/v1/runs/RUN1");
    json_decref(log);
    log = sn_fake_github_requests(&fx->fake, "/repos/" S_REPO "/deployments");
    b = json_object_get(json_array_get(log, 0), "body");
    assert_true(json_is_false(json_object_get(b, "auto_merge")));
    assert_int_equal(json_array_size(json_object_get(b, "required_contexts")), 0);
    assert_true(json_is_array(json_object_get(b, "required_contexts")));
    assert_string_equal(json_string_value(json_object_get(b, "environment")), "staging");
    assert_string_equal(json_string_value(json_object_get(json_object_get(b, "payload"), "run_id")),
                        "RUN1");
    json_decref(log);
    assert_int_equal(sn_fake_github_stat(&fx->fake, "api_requests"), 5);

    /* a second successful run replaces the first: RUN1's deployment goes inactive */
    const char *sha2 = "2222222222222222222222222222222222222222";
    s_commit_run(fx, "run.started", "web", "staging", "RUN2", sha2, NULL);
    s_commit_deploy(fx, "deploy.staged", "staging", "RUN2", "DEP2", NULL);
    s_commit_deploy(fx, "deploy.verified", "staging", "RUN2", "DEP2", "http://staging2.test/");
    s_commit_run(fx, "run.succeeded", "web", "staging", "RUN2", sha2, NULL);
    s_wait_posts(fx, "/statuses/2222222222222222222222222222222222222222", 2);
    char *dep2 = s_last_deployment_id(fx);
    assert_string_not_equal(dep1, dep2);
    lines = s_post_lines(fx);
    char *w2 = sn_strdupf("dstatus %s in_progress", dep2);
    char *w3 = sn_strdupf("dstatus %s success http://staging2.test/", dep2);
    char *w4 = sn_strdupf("dstatus %s inactive", dep1);
    json_t *tail = json_array();
    for (size_t i = 5; i < json_array_size(lines); i++)
        json_array_append(tail, json_array_get(lines, i));
    s_expect_lines(tail, (const char *const[]){
                             "status pending 2222222222222222222222222222222222222222",
                             "deployment 2222222222222222222222222222222222222222", w2, w3, w4,
                             "status success 2222222222222222222222222222222222222222", NULL});
    json_decref(tail);
    json_decref(lines);
    free(w2);
    free(w3);
    free(w4);
    free(dep1);
    free(dep2);
}

static void test_github_workflow_failed_and_rejected_runs(void **state)
{
    s_fx_t *fx = *state;
    const char *sha = "3333333333333333333333333333333333333333";
    s_commit_run(fx, "run.started", "web", "production", "RUN3", sha, NULL);
    s_commit_deploy(fx, "deploy.staged", "production", "RUN3", "DEP3", NULL);
    s_wait_posts(fx, "/deployments", 2);
    s_commit_deploy(fx, "deploy.failed", "production", "RUN3", "DEP3", NULL);
    s_commit_run(fx, "run.failed", "web", "production", "RUN3", sha, "preview verification failed");
    s_wait_posts(fx, "/statuses/3333333333333333333333333333333333333333", 2);
    char *dep = s_last_deployment_id(fx);
    json_t *lines = s_post_lines(fx);
    char *l2 = sn_strdupf("dstatus %s in_progress", dep);
    char *l3 = sn_strdupf("dstatus %s failure", dep);
    s_expect_lines(lines, (const char *const[]){
                              "status pending 3333333333333333333333333333333333333333",
                              "deployment 3333333333333333333333333333333333333333", l2, l3,
                              "status failure 3333333333333333333333333333333333333333", NULL});
    json_decref(lines);
    free(l2);
    free(l3);
    free(dep);
    json_t *log = sn_fake_github_requests(&fx->fake, "/statuses/3333");
    json_t *b = json_object_get(json_array_get(log, 1), "body");
    assert_string_equal(json_string_value(json_object_get(b, "context")), "sentinel/production");
    assert_non_null(strstr(json_string_value(json_object_get(b, "description")),
                           "preview verification failed"));
    json_decref(log);

    /* rejected by a gate before any deploy: pending then failure, no deployment */
    assert_true(sn_fake_github_control(&fx->fake, "reset", "{}"));
    const char *sha4 = "4444444444444444444444444444444444444444";
    s_commit_run(fx, "run.started", "web", "staging", "RUN4", sha4, NULL);
    s_commit_run(fx, "run.rejected", "web", "staging", "RUN4", sha4, "secret found");
    /* events of a project that is not on GitHub, and of an unknown one, are ignored */
    s_commit_run(fx, "run.started", "other", "staging", "RUN5", sha4, NULL);
    s_wait_posts(fx, "/statuses/4444444444444444444444444444444444444444", 2);
    /* a duplicate terminal event (redelivery) writes nothing more */
    s_commit_run(fx, "run.started", "web", "staging", "RUN4", sha4, NULL);
    s_commit_run(fx, "run.rejected", "web", "staging", "RUN4", sha4, "secret found");
    /* a marker event after them, to know they were handled */
    const char *sha6 = "6666666666666666666666666666666666666666";
    s_commit_run(fx, "run.started", "web", "staging", "RUN6", sha6, NULL);
    s_wait_posts(fx, "/statuses/6666666666666666666666666666666666666666", 1);
    lines = s_post_lines(fx);
    s_expect_lines(lines, (const char *const[]){
                              "status pending 4444444444444444444444444444444444444444",
                              "status failure 4444444444444444444444444444444444444444",
                              "status pending 6666666666666666666666666666666666666666", NULL});
    json_decref(lines);
}

/* buildpilot's run record is the fallback: the commit for a deploy event of a run not seen
 * starting, and the live URL when deploy.promoted was not handled (yet). */
static void test_github_workflow_run_record_fallback(void **state)
{
    s_fx_t *fx = *state;
    const char *sha = "7777777777777777777777777777777777777777";
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    d.deploy_id = "DEP7";
    d.live_url = "http://from-record.test/";
    Sentinel__V1__Deploy *ds[] = {&d};
    Sentinel__V1__Run run = SENTINEL__V1__RUN__INIT;
    run.run_id = "RUN7";
    run.project = "web";
    run.environment = "staging";
    run.sha = (char *)sha;
    run.deploys = ds;
    run.n_deploys = 1;
    size_t len = sentinel__v1__run__get_packed_size(&run);
    uint8_t *buf = sn_malloc(len);
    sentinel__v1__run__pack(&run, buf);
    char *key = sn_strdupf("%srun:RUN7", fx->mesh.ns);
    redisReply *r = redisCommand(fx->raw, "HSET %s pb %b", key, buf, len);
    assert_non_null(r);
    freeReplyObject(r);
    free(key);
    free(buf);
    s_commit_deploy(fx, "deploy.staged", "staging", "RUN7", "DEP7", NULL);
    s_wait_posts(fx, "/deployments", 2);
    s_commit_run(fx, "run.succeeded", "web", "staging", "RUN7", sha, NULL);
    s_wait_posts(fx, "/statuses/7777777777777777777777777777777777777777", 1);
    char *dep = s_last_deployment_id(fx);
    json_t *lines = s_post_lines(fx);
    char *l2 = sn_strdupf("dstatus %s in_progress", dep);
    char *l3 = sn_strdupf("dstatus %s success http://from-record.test/", dep);
    /* the staging deployment of the first test is replaced: inactive, if that test ran */
    json_t *mine = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(lines, i, v)
    {
        if (!strstr(json_string_value(v), "inactive"))
            json_array_append(mine, v);
    }
    s_expect_lines(mine, (const char *const[]){
                             "deployment 7777777777777777777777777777777777777777", l2, l3,
                             "status success 7777777777777777777777777777777777777777", NULL});
    json_decref(mine);
    json_decref(lines);
    free(l2);
    free(l3);
    free(dep);
}

/* ---- services ------------------------------------------------------------------------------- */

static sn_envelope_t *s_call(s_fx_t *fx, const char *service, Sentinel__V1__GithubRequest *req,
                             sn_nak_reason_t *nak)
{
    char id[SN_ID_LEN + 1];
    sn_envelope_t env;
    sn_envelope_stamp(&env, &fx->mesh.source, service, id);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_GITHUB_REQUEST;
    env.github_request = req;
    sn_envelope_t *reply = NULL;
    sn_rc_t rc = sn_mesh_call(&fx->mesh, service, &env, 20000, &reply, nak);
    if (rc != SN_OK)
        return NULL;
    assert_non_null(reply);
    assert_int_equal(reply->body_case, SENTINEL__V1__ENVELOPE__BODY_GITHUB_RESULT);
    return reply;
}

static const char s_failed_run[] =
    "{\"repo\":\"" S_REPO "\",\"id\":501,\"head_sha\":\"5555555555555555555555555555555555555555\","
    "\"conclusion\":\"failure\",\"jobs\":["
    "{\"id\":9001,\"name\":\"lint\",\"conclusion\":\"success\",\"log\":\"ok\\n\"},"
    "{\"id\":9002,\"name\":\"build\",\"conclusion\":\"failure\","
    "\"steps\":[{\"name\":\"checkout\",\"conclusion\":\"success\"},"
    "{\"name\":\"make\",\"conclusion\":\"failure\"},{\"name\":\"upload\",\"conclusion\":"
    "\"skipped\"}],"
    "\"log\":\"cc -c main.c\\nmain.c:3: error: expected ';'\\nmake: *** [all] Error 1\\n\"},"
    "{\"id\":9003,\"name\":\"test\",\"conclusion\":\"timed_out\",\"steps\":[{\"name\":\"run\","
    "\"conclusion\":\"timed_out\"}],\"log\":\"waiting...\\n\"}]}";

static void test_github_workflow_feedback(void **state)
{
    s_fx_t *fx = *state;
    assert_true(sn_fake_github_control(&fx->fake, "run", s_failed_run));
    Sentinel__V1__GithubRequest req = SENTINEL__V1__GITHUB_REQUEST__INIT;
    req.project = "web";
    req.workflow_run_id = 501;
    req.log_tail_bytes = 64;
    sn_nak_reason_t nak;
    sn_envelope_t *reply = s_call(fx, "github.feedback", &req, &nak);
    assert_non_null(reply);
    const Sentinel__V1__GithubResult *res = reply->github_result;
    assert_true(res->ok);
    assert_string_equal(res->conclusion, "failure");
    assert_int_equal(res->n_jobs, 2);
    assert_string_equal(res->jobs[0]->name, "build");
    assert_int_equal(res->jobs[0]->job_id, 9002);
    assert_string_equal(res->jobs[0]->conclusion, "failure");
    assert_string_equal(res->jobs[0]->failed_step, "make");
    assert_int_equal(res->jobs[0]->failed_step_number, 2);
    assert_string_equal(res->jobs[0]->log_tail,
                        "main.c:3: error: expected ';'\nmake: *** [all] Error 1\n");
    assert_string_equal(res->jobs[1]->name, "test");
    assert_string_equal(res->jobs[1]->conclusion, "timed_out");
    assert_string_equal(res->jobs[1]->failed_step, "run");
    assert_string_equal(res->jobs[1]->log_tail, "waiting...\n");
    sn_envelope_free(&reply);
    /* the logs were fetched from the blob host without the token */
    assert_int_equal(sn_fake_github_stat(&fx->fake, "blob_requests"), 2);
    assert_int_equal(sn_fake_github_stat(&fx->fake, "blob_auth_rejected"), 0);

    /* an unknown run: a refusal with GitHub's status */
    req.workflow_run_id = 777;
    reply = s_call(fx, "github.feedback", &req, &nak);
    assert_false(reply->github_result->ok);
    assert_false(reply->github_result->is_transient);
    assert_int_equal(reply->github_result->status, 404);
    sn_envelope_free(&reply);
    /* not a github project / no project */
    req.project = "nope";
    reply = s_call(fx, "github.feedback", &req, &nak);
    assert_false(reply->github_result->ok);
    assert_non_null(strstr(reply->github_result->reason, "not a github project"));
    sn_envelope_free(&reply);
    req.project = "web";
    req.workflow_run_id = 0;
    reply = s_call(fx, "github.feedback", &req, &nak);
    assert_false(reply->github_result->ok);
    sn_envelope_free(&reply);
    /* a body that is not a github_request: NAK invalid */
    char id[SN_ID_LEN + 1];
    sn_envelope_t env;
    sn_envelope_stamp(&env, &fx->mesh.source, "github.rerun", id);
    sn_envelope_t *bad = NULL;
    nak = SN_NAK_NONE;
    assert_int_equal(sn_mesh_call(&fx->mesh, "github.rerun", &env, 10000, &bad, &nak), SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
}

/* Runs sentinelctl with @args; returns its exit code, *out its stdout+stderr. */
static int s_ctl(s_fx_t *fx, const char *const *args, char **out)
{
    char *bin = sn_test_bin("sentinelctl");
    char *log = sn_strdupf("%s/ctl-%d.log", fx->mesh.dir, (int)sn_random_u64() & 0xffff);
    char *argv[16] = {bin, "-c", fx->mesh.config};
    int n = 3;
    for (int i = 0; args[i] && n < 15; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    pid_t pid = sn_test_spawn(argv, log);
    int status = -1;
    assert_true(pid > 0);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    *out = sn_test_read_file(log);
    free(log);
    free(bin);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static json_t *s_run_state(s_fx_t *fx, const char *run_id)
{
    json_t *st = sn_fake_github_state(&fx->fake);
    json_t *run = json_object_get(
        json_object_get(json_object_get(json_object_get(st, "repos"), S_REPO), "runs"), run_id);
    json_incref(run);
    json_decref(st);
    return run;
}

static void test_github_workflow_rerun(void **state)
{
    s_fx_t *fx = *state;
    assert_true(sn_fake_github_control(&fx->fake, "run", s_failed_run));
    Sentinel__V1__GithubRequest req = SENTINEL__V1__GITHUB_REQUEST__INIT;
    req.project = "web";
    req.workflow_run_id = 501;
    sn_nak_reason_t nak;
    sn_envelope_t *reply = s_call(fx, "github.rerun", &req, &nak);
    assert_true(reply->github_result->ok);
    assert_int_equal(reply->github_result->status, 201);
    sn_envelope_free(&reply);
    json_t *run = s_run_state(fx, "501");
    assert_string_equal(json_string_value(json_array_get(json_object_get(run, "reruns"), 0)),
                        "rerun-failed-jobs");
    assert_int_equal(json_integer_value(json_object_get(run, "run_attempt")), 2);
    json_decref(run);

    /* permission 403: not retried, reported */
    assert_true(sn_fake_github_control(&fx->fake, "run", s_failed_run));
    assert_true(sn_fake_github_control(
        &fx->fake, "fail",
        "{\"path\":\"/rerun-failed-jobs\",\"mode\":\"permission\",\"count\":5}"));
    int64_t before = sn_fake_github_stat(&fx->fake, "api_requests");
    reply = s_call(fx, "github.rerun", &req, &nak);
    assert_false(reply->github_result->ok);
    assert_true(reply->github_result->is_permission_denied);
    assert_false(reply->github_result->is_transient);
    assert_int_equal(reply->github_result->status, 403);
    sn_envelope_free(&reply);
    assert_int_equal(sn_fake_github_stat(&fx->fake, "api_requests") - before, 1);

    /* through sentinelctl */
    assert_true(sn_fake_github_control(&fx->fake, "reset", "{}"));
    assert_true(sn_fake_github_control(&fx->fake, "run", s_failed_run));
    char *out = NULL;
    assert_int_equal(s_ctl(fx, (const char *[]){"github", "rerun", "web", "501", NULL}, &out), 0);
    assert_non_null(strstr(out, "re-run of the failed jobs of run 501"));
    free(out);
    /* the run is queued again: GitHub refuses a second re-run, exit 1 */
    assert_int_equal(s_ctl(fx, (const char *[]){"github", "rerun", "web", "501", NULL}, &out), 1);
    assert_non_null(strstr(out, "already running"));
    free(out);
    assert_int_equal(s_ctl(fx, (const char *[]){"github", "rerun", "web", "x1", NULL}, &out), 2);
    free(out);
    assert_int_equal(s_ctl(fx, (const char *[]){"github", "bogus", NULL}, &out), 2);
    free(out);
}

static void test_github_workflow_dispatch(void **state)
{
    s_fx_t *fx = *state;
    assert_true(sn_fake_github_control(
        &fx->fake, "workflow",
        "{\"repo\":\"" S_REPO "\",\"id\":7,\"path\":\".github/workflows/deploy.yml\","
        "\"name\":\"Deploy\",\"dispatch\":true,\"refs\":[\"main\",\"staging\"]}"));
    assert_true(sn_fake_github_control(&fx->fake, "workflow",
                                       "{\"repo\":\"" S_REPO
                                       "\",\"id\":8,\"path\":\".github/workflows/ci.yml\","
                                       "\"name\":\"CI\",\"dispatch\":false}"));
    Sentinel__V1__GithubRequest req = SENTINEL__V1__GITHUB_REQUEST__INIT;
    req.project = "web";
    req.workflow = "deploy.yml";
    req.ref = "main";
    Sentinel__V1__GithubRequest__InputsEntry e1 = SENTINEL__V1__GITHUB_REQUEST__INPUTS_ENTRY__INIT;
    e1.key = "target";
    e1.value = "prod";
    Sentinel__V1__GithubRequest__InputsEntry *ents[] = {&e1};
    req.inputs = ents;
    req.n_inputs = 1;
    sn_nak_reason_t nak;
    sn_envelope_t *reply = s_call(fx, "github.dispatch", &req, &nak);
    assert_true(reply->github_result->ok);
    uint64_t new_run = reply->github_result->workflow_run_id;
    assert_true(new_run > 0);
    assert_non_null(strstr(reply->github_result->run_url, "/actions/runs/"));
    sn_envelope_free(&reply);
    json_t *st = sn_fake_github_state(&fx->fake);
    json_t *d = json_array_get(
        json_object_get(json_object_get(json_object_get(st, "repos"), S_REPO), "dispatches"), 0);
    assert_string_equal(json_string_value(json_object_get(d, "ref")), "main");
    assert_string_equal(json_string_value(json_object_get(json_object_get(d, "inputs"), "target")),
                        "prod");
    assert_int_equal(json_integer_value(json_object_get(d, "run_id")), (json_int_t)new_run);
    json_decref(st);

    /* refusals: no workflow_dispatch trigger, unknown ref, unknown workflow */
    req.workflow = "ci.yml";
    reply = s_call(fx, "github.dispatch", &req, &nak);
    assert_false(reply->github_result->ok);
    assert_int_equal(reply->github_result->status, 422);
    sn_envelope_free(&reply);
    req.workflow = "deploy.yml";
    req.ref = "nope";
    reply = s_call(fx, "github.dispatch", &req, &nak);
    assert_false(reply->github_result->ok);
    assert_int_equal(reply->github_result->status, 422);
    sn_envelope_free(&reply);
    req.workflow = "missing.yml";
    req.ref = "main";
    reply = s_call(fx, "github.dispatch", &req, &nak);
    assert_int_equal(reply->github_result->status, 404);
    sn_envelope_free(&reply);

    /* through sentinelctl */
    char *out = NULL;
    assert_int_equal(s_ctl(fx,
                           (const char *[]){"github", "dispatch", "web", "deploy.yml", "staging",
                                            "reason=hotfix", "dry=false", NULL},
                           &out),
                     0);
    assert_non_null(strstr(out, "dispatched: run "));
    free(out);
    st = sn_fake_github_state(&fx->fake);
    d = json_array_get(
        json_object_get(json_object_get(json_object_get(st, "repos"), S_REPO), "dispatches"), 1);
    assert_string_equal(json_string_value(json_object_get(d, "ref")), "staging");
    assert_string_equal(json_string_value(json_object_get(json_object_get(d, "inputs"), "reason")),
                        "hotfix");
    assert_string_equal(json_string_value(json_object_get(json_object_get(d, "inputs"), "dry")),
                        "false");
    json_decref(st);
    assert_int_equal(
        s_ctl(fx, (const char *[]){"github", "dispatch", "web", "ci.yml", "main", NULL}, &out), 1);
    free(out);
    assert_int_equal(
        s_ctl(fx,
              (const char *[]){"github", "dispatch", "web", "deploy.yml", "main", "novalue", NULL},
              &out),
        2);
    free(out);
    assert_int_equal(s_ctl(fx, (const char *[]){"github", "dispatch", "web", NULL}, &out), 2);
    free(out);
}

static void test_github_workflow_policy(void **state)
{
    s_fx_t *fx = *state;
    const char *good = "9999999999999999999999999999999999999999";
    assert_true(sn_fake_github_control(
        &fx->fake, "protection",
        "{\"repo\":\"" S_REPO "\",\"branch\":\"main\",\"protection\":{"
        "\"required_status_checks\":{\"strict\":true,\"contexts\":[\"ci\"]},"
        "\"required_pull_request_reviews\":{\"required_approving_review_count\":2},"
        "\"enforce_admins\":{\"enabled\":true},\"required_signatures\":{\"enabled\":true}}}"));
    assert_true(sn_fake_github_controlf(
        &fx->fake, "pull",
        "{\"repo\":\"" S_REPO "\",\"number\":42,\"head_sha\":\"aaaa\",\"merge_commit_sha\":\"%s\","
        "\"reviews\":[{\"user\":\"alice\",\"state\":\"APPROVED\"},"
        "{\"user\":\"bob\",\"state\":\"CHANGES_REQUESTED\"},"
        "{\"user\":\"carol\",\"state\":\"APPROVED\"},{\"user\":\"carol\",\"state\":\"COMMENTED\"},"
        "{\"user\":\"bob\",\"state\":\"APPROVED\"},"
        "{\"user\":\"dave\",\"state\":\"APPROVED\"},{\"user\":\"dave\",\"state\":\"DISMISSED\"}]}",
        good));
    assert_true(sn_fake_github_controlf(&fx->fake, "commit",
                                        "{\"repo\":\"" S_REPO "\",\"sha\":\"%s\",\"verified\":true,"
                                        "\"reason\":\"valid\"}",
                                        good));
    Sentinel__V1__GithubRequest req = SENTINEL__V1__GITHUB_REQUEST__INIT;
    req.project = "web";
    req.environment = "production";
    req.sha = (char *)good;
    sn_nak_reason_t nak;
    sn_envelope_t *reply = s_call(fx, "github.policy", &req, &nak);
    const Sentinel__V1__GithubResult *res = reply->github_result;
    assert_true(res->ok);
    const Sentinel__V1__GithubPolicy *p = res->policy;
    assert_non_null(p);
    assert_string_equal(p->branch, "main");
    assert_true(p->branch_protected);
    assert_int_equal(p->required_approving_review_count, 2);
    assert_true(p->enforce_admins);
    assert_true(p->required_signatures);
    assert_int_equal(p->n_required_status_checks, 1);
    assert_string_equal(p->required_status_checks[0], "ci");
    assert_int_equal(p->pull_number, 42);
    assert_int_equal(p->approvals, 3); /* alice, bob (latest), carol (a comment changes nothing) */
    assert_true(p->signature_verified);
    assert_string_equal(p->signature_reason, "valid");
    assert_true(p->satisfied);
    assert_int_equal(p->n_violations, 0);
    sn_envelope_free(&reply);

    /* an unsigned commit with no pull request on an unprotected branch: three violations */
    const char *bad = "8888888888888888888888888888888888888888";
    assert_true(sn_fake_github_controlf(&fx->fake, "commit",
                                        "{\"repo\":\"" S_REPO
                                        "\",\"sha\":\"%s\",\"verified\":false,"
                                        "\"reason\":\"unsigned\"}",
                                        bad));
    assert_true(sn_fake_github_control(&fx->fake, "protection",
                                       "{\"repo\":\"" S_REPO
                                       "\",\"branch\":\"main\",\"protection\":null}"));
    req.sha = (char *)bad;
    reply = s_call(fx, "github.policy", &req, &nak);
    res = reply->github_result;
    assert_true(res->ok);
    p = res->policy;
    assert_false(p->branch_protected);
    assert_int_equal(p->pull_number, 0);
    assert_int_equal(p->approvals, 0);
    assert_false(p->signature_verified);
    assert_string_equal(p->signature_reason, "unsigned");
    assert_false(p->satisfied);
    assert_int_equal(p->n_violations, 3);
    assert_non_null(strstr(p->violations[0], "not protected"));
    assert_non_null(strstr(p->violations[1], "2 required"));
    assert_non_null(strstr(p->violations[2], "signature"));
    sn_envelope_free(&reply);

    /* staging requires nothing: satisfied with the same facts */
    req.environment = "staging";
    reply = s_call(fx, "github.policy", &req, &nak);
    assert_true(reply->github_result->ok);
    assert_true(reply->github_result->policy->satisfied);
    assert_string_equal(reply->github_result->policy->branch, "staging");
    sn_envelope_free(&reply);

    /* a commit GitHub does not know: a refusal; an unknown environment: refused */
    req.sha = "0000000000000000000000000000000000000001";
    reply = s_call(fx, "github.policy", &req, &nak);
    assert_false(reply->github_result->ok);
    assert_int_equal(reply->github_result->status, 422);
    sn_envelope_free(&reply);
    req.environment = "qa";
    reply = s_call(fx, "github.policy", &req, &nak);
    assert_false(reply->github_result->ok);
    sn_envelope_free(&reply);
    /* GitHub failing for good (500s): transient, bounded */
    req.environment = "production";
    req.sha = (char *)good;
    assert_true(sn_fake_github_control(
        &fx->fake, "fail", "{\"path\":\"/protection\",\"mode\":\"server\",\"count\":10}"));
    reply = s_call(fx, "github.policy", &req, &nak);
    assert_false(reply->github_result->ok);
    assert_true(reply->github_result->is_transient);
    sn_envelope_free(&reply);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_github_workflow_success_order_and_inactive, s_setup),
        cmocka_unit_test_setup(test_github_workflow_failed_and_rejected_runs, s_setup),
        cmocka_unit_test_setup(test_github_workflow_run_record_fallback, s_setup),
        cmocka_unit_test_setup(test_github_workflow_feedback, s_setup),
        cmocka_unit_test_setup(test_github_workflow_rerun, s_setup),
        cmocka_unit_test_setup(test_github_workflow_dispatch, s_setup),
        cmocka_unit_test_setup(test_github_workflow_policy, s_setup),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
