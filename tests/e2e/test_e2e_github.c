/* GitHub end to end: the whole product under `sentinelctl up` with a GitHub project
 * pointed at the GitHub fake. A signed `workflow_run` completed/success delivery for the
 * head of `main` goes through the gateway, build-validator decides the verdict, the
 * verified run's Actions artifact is what deploys (the page served is the one the fake's
 * workflow uploaded), infraguard asks github.policy for the branch protection the
 * environment requires, and github-workflow writes the commit statuses and deployment
 * statuses in order. An unprotected branch rejects the next commit at gate 1. */
#include "sn_e2e.h"
#include "sn_fake_github.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "sentinel/sn_webhook.h"

#define S_REPO "octo-org/web"
#define S_SECRET "e2e-github-secret"
#define S_SHA1 "1111111111111111111111111111111111111111"
#define S_SHA2 "2222222222222222222222222222222222222222"
#define RUN_TIMEOUT_MS 90000

/* A workflow_run delivery (the shape of the fixture, trimmed to what is read). */
static char *s_workflow_run_body(uint64_t id, const char *sha)
{
    return sn_strdupf(
        "{\"action\":\"completed\",\"repository\":{\"full_name\":\"%s\",\"name\":\"web\","
        "\"owner\":{\"login\":\"octo-org\"}},\"workflow\":{\"id\":7,\"name\":\"CI\","
        "\"path\":\".github/workflows/ci.yml\"},\"workflow_run\":{\"id\":%llu,\"name\":\"CI\","
        "\"workflow_id\":7,\"head_branch\":\"main\",\"head_sha\":\"%s\",\"event\":\"push\","
        "\"status\":\"completed\",\"conclusion\":\"success\",\"run_attempt\":1,"
        "\"path\":\".github/workflows/ci.yml\",\"created_at\":\"2026-12-03T10:00:00Z\","
        "\"updated_at\":\"2026-12-03T10:01:00Z\"},\"sender\":{\"login\":\"octocat\"}}",
        S_REPO, (unsigned long long)id, sha);
}

/* POSTs a signed delivery to the gateway; the HTTP status (0: no answer). */
static long s_deliver_once(int port, const char *event, const char *delivery, const char *body)
{
    char sig[72];
    assert_int_equal(sn_webhook_sign_github(S_SECRET, strlen(S_SECRET), body, strlen(body), sig),
                     SN_OK);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    char *url = sn_strdupf("http://127.0.0.1:%d/webhooks/github", port);
    char *h_event = sn_strdupf("X-GitHub-Event: %s", event);
    char *h_delivery = sn_strdupf("X-GitHub-Delivery: %s", delivery);
    char *h_sig = sn_strdupf("X-Hub-Signature-256: %s", sig);
    struct curl_slist *hs = curl_slist_append(NULL, "Content-Type: application/json");
    hs = curl_slist_append(hs, h_event);
    hs = curl_slist_append(hs, h_delivery);
    hs = curl_slist_append(hs, h_sig);
    hs = curl_slist_append(hs, "User-Agent: GitHub-Hookshot/e2e");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hs);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    FILE *devnull = fopen("/dev/null", "w");
    curl_easy_setopt(c, CURLOPT_WRITEDATA, devnull);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    fclose(devnull);
    curl_slist_free_all(hs);
    curl_easy_cleanup(c);
    free(url);
    free(h_event);
    free(h_delivery);
    free(h_sig);
    return status;
}

/* As s_deliver_once, waiting up to 15 s for the gateway to listen (it starts with the
 * other roles; the harness only waits for buildpilot and nginx). */
static long s_deliver(int port, const char *event, const char *delivery, const char *body)
{
    int64_t until = sn_mono_ms() + 15000;
    long status = 0;
    while ((status = s_deliver_once(port, event, delivery, body)) == 0 && sn_mono_ms() < until) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return status;
}

/* The fake's POSTs to the repository as lines: "status <state>", "deployment",
 * "dstatus <state>" — in the order they arrived, for @sha's commit statuses and every
 * deployment (this test has one deployment per run). */
static json_t *s_posts(sn_fake_github_t *fake, const char *sha)
{
    json_t *log = sn_fake_github_requests(fake, "/repos/" S_REPO "/");
    json_t *out = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(log, i, e)
    {
        const char *method = json_string_value(json_object_get(e, "method"));
        const char *path = json_string_value(json_object_get(e, "path"));
        if (!method || strcmp(method, "POST") != 0 || !path)
            continue;
        json_t *b = json_object_get(e, "body");
        const char *state = json_string_value(json_object_get(b, "state"));
        char *line = NULL;
        if (strstr(path, "/deployments/") && strstr(path, "/statuses"))
            line = sn_strdupf("dstatus %s", state ? state : "?");
        else if (strstr(path, "/deployments"))
            line = sn_strdup("deployment");
        else if (strstr(path, "/statuses/") && strstr(path, sha))
            line = sn_strdupf("status %s", state ? state : "?");
        if (line)
            json_array_append_new(out, json_string(line));
        free(line);
    }
    json_decref(log);
    return out;
}

typedef struct {
    sn_fake_github_t *fake;
    const char *sha;
    size_t want;
} s_posts_arg_t;

static bool s_has_posts(void *arg)
{
    s_posts_arg_t *a = arg;
    json_t *lines = s_posts(a->fake, a->sha);
    bool ok = json_array_size(lines) >= a->want;
    json_decref(lines);
    return ok;
}

static void test_e2e_github_workflow_run_deploys(void **state)
{
    (void)state;
    sn_fake_github_t fake;
    assert_true(sn_fake_github_start(&fake));
    /* main is protected (the environment requires it); run 501 of CI on S_SHA1 uploaded
     * the site the deploy must serve. */
    assert_true(sn_fake_github_control(
        &fake, "protection",
        "{\"repo\":\"" S_REPO "\",\"branch\":\"main\",\"protection\":{\"enforce_admins\":"
        "{\"enabled\":true},\"required_pull_request_reviews\":{\"required_approving_review_"
        "count\":0}}}"));
    assert_true(sn_fake_github_control(
        &fake, "run",
        "{\"repo\":\"" S_REPO "\",\"id\":501,\"name\":\"CI\",\"workflow_id\":7,"
        "\"head_branch\":\"main\",\"head_sha\":\"" S_SHA1 "\",\"status\":\"completed\","
        "\"conclusion\":\"success\",\"artifacts\":[{\"id\":901,\"name\":\"site\",\"files\":"
        "{\"index.html\":\"<h1>Hello from Sentinel, built by GitHub run 501</h1>\"}}]}"));

    assert_true(sn_fake_github_control(&fake, "commit",
                                       "{\"repo\":\"" S_REPO "\",\"sha\":\"" S_SHA1
                                       "\",\"verified\":false,\"reason\":\"unsigned\"}"));
    assert_true(sn_fake_github_control(&fake, "commit",
                                       "{\"repo\":\"" S_REPO "\",\"sha\":\"" S_SHA2
                                       "\",\"verified\":false,\"reason\":\"unsigned\"}"));
    int live = sn_test_free_port(), preview = sn_test_free_port();
    char *targets = sn_strdupf(
        "  - name: web-prod\n"
        "    type: local_static\n"
        "    listen: 127.0.0.1:%d\n"
        "    preview_listen: 127.0.0.1:%d\n"
        "    check: {path: /, status: 200, body_contains: \"built by GitHub\", consecutive: 2, "
        "interval_ms: 100, deadline_ms: 5000}\n",
        live, preview);
    const char *projects = "  - name: web\n"
                           "    source_type: github\n"
                           "    github_repo: " S_REPO "\n"
                           "    artifact_name: site\n"
                           "    poll_interval_ms: 1s\n"
                           "    environments:\n"
                           "      - name: web-production\n"
                           "        branch: main\n"
                           "        required_workflows: [CI]\n"
                           "        require_branch_protection: true\n"
                           "        targets: [web-prod]\n"
                           "        step_timeout_s: 60\n";
    char *extra = sn_strdupf("github:\n"
                             "  api_base: %s\n"
                             "  token: test-token\n"
                             "  webhook_secret: " S_SECRET "\n"
                             "  request_timeout_ms: 5s\n",
                             fake.url);
    sn_e2e_opts_t o = {
        .tag = "e2e-gh",
        .extra_yaml = extra,
        .extra_processes = "  - {role: github-workflow, instances: 1}\n",
        .extra_targets = targets,
        .extra_projects = projects,
    };
    sn_e2e_t e;
    assert_true(sn_e2e_start_ex(&e, &o));

    /* 1. The delivery (twice: GitHub redelivers) gives one run that deploys the
     * artifact of run 501. */
    char *body = s_workflow_run_body(501, S_SHA1);
    long st1 = s_deliver(e.gateway_port, "workflow_run", "d-501-a", body);
    long st2 = s_deliver(e.gateway_port, "workflow_run", "d-501-a", body);
    if (st1 != 202 || st2 != 200)
        fail_msg("deliveries answered %ld then %ld (want 202 recorded, 200 duplicate)", st1, st2);
    free(body);
    char *run_id = sn_e2e_run_id(&e, "web-production", S_SHA1, 30000);
    assert_non_null(run_id);
    Sentinel__V1__Run *run = sn_e2e_wait_run(&e, run_id, RUN_TIMEOUT_MS);
    assert_non_null(run);
    if (run->state != SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED)
        fail_msg("github run ended %d: %s", run->state, run->reason);
    assert_int_equal(run->n_workflow_run_ids, 1);
    assert_true(run->workflow_run_ids[0] == 501);
    sentinel__v1__run__free_unpacked(run, NULL);
    long status = 0;
    char *page = sn_e2e_get(live, "/", &status);
    assert_int_equal(status, 200);
    assert_non_null(strstr(page, "built by GitHub run 501"));
    free(page);
    /* one run only for the commit */
    redisReply *all = redisCommand(e.redis, "ZRANGE %sruns:web 0 -1", e.ns);
    assert_non_null(all);
    assert_int_equal(all->elements, 1);
    freeReplyObject(all);

    /* 2. GitHub shows it: pending, the deployment, in_progress, success (deployment),
     * success (commit status), in that order. */
    s_posts_arg_t pa = {&fake, S_SHA1, 5};
    if (!sn_test_wait_for(s_has_posts, &pa, 20000)) {
        json_t *got = s_posts(&fake, S_SHA1);
        char *dump = json_dumps(got, 0);
        fail_msg("statuses on the fake: %s", dump);
    }
    json_t *lines = s_posts(&fake, S_SHA1);
    const char *want[] = {"status pending", "deployment", "dstatus in_progress", "dstatus success",
                          "status success"};
    char *dump = json_dumps(lines, 0);
    assert_int_equal(json_array_size(lines), SN_ARRAY_LEN(want));
    for (size_t i = 0; i < SN_ARRAY_LEN(want); i++)
        if (strcmp(json_string_value(json_array_get(lines, i)), want[i]) != 0)
            fail_msg("POST %zu: expected \"%s\" in %s", i, want[i], dump);
    free(dump);
    json_decref(lines);

    /* 3. main loses its protection: the next verified commit is rejected at gate 1 with
     * GitHub's reason, and nothing is deployed. */
    assert_true(sn_fake_github_control(
        &fake, "protection", "{\"repo\":\"" S_REPO "\",\"branch\":\"main\",\"protection\":null}"));
    assert_true(sn_fake_github_control(
        &fake, "run",
        "{\"repo\":\"" S_REPO "\",\"id\":502,\"name\":\"CI\",\"workflow_id\":7,"
        "\"head_branch\":\"main\",\"head_sha\":\"" S_SHA2 "\",\"status\":\"completed\","
        "\"conclusion\":\"success\",\"artifacts\":[{\"id\":902,\"name\":\"site\",\"files\":"
        "{\"index.html\":\"<h1>unprotected</h1>\"}}]}"));
    body = s_workflow_run_body(502, S_SHA2);
    long st3 = s_deliver(e.gateway_port, "workflow_run", "d-502-a", body);
    assert_true(st3 == 202 || st3 == 200);
    free(body);
    char *run2 = sn_e2e_run_id(&e, "web-production", S_SHA2, 30000);
    assert_non_null(run2);
    run = sn_e2e_wait_run(&e, run2, RUN_TIMEOUT_MS);
    assert_non_null(run);
    assert_int_equal(run->state, SENTINEL__V1__RUN_STATE__RUN_REJECTED);
    if (!strstr(run->reason, "protect"))
        fail_msg("rejected for: %s", run->reason);
    sentinel__v1__run__free_unpacked(run, NULL);
    page = sn_e2e_get(live, "/", &status);
    assert_non_null(strstr(page, "built by GitHub run 501"));
    free(page);

    free(run_id);
    free(run2);
    free(targets);
    free(extra);
    assert_int_equal(sn_e2e_stop(&e), 0);
    assert_true(sn_fake_github_stop(&fake));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e2e_github_workflow_run_deploys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
