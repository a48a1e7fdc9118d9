/* The main job end to end on the embedded default: `sentinelctl up` with every product
 * role, nginx serving local targets, the hello-site as the project's repository. */
#include "sn_e2e.h"

#include <pthread.h>
#include <stdio.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/v1/pipeline.pb-c.h"

#include <jansson.h>

#define RUN_TIMEOUT_MS 90000

static int s_deliveries(sn_e2e_t *e, const char *type);
static bool s_notifiers_idle(void *arg);

static const Sentinel__V1__Step *s_step(const Sentinel__V1__Run *run, const char *name)
{
    for (size_t i = 0; i < run->n_steps; i++)
        if (strcmp(run->steps[i]->name, name) == 0)
            return run->steps[i];
    return NULL;
}

/* The release identity the live site serves. */
static char *s_identity(int port)
{
    long status = 0;
    char *body = sn_e2e_get(port, "/.well-known/sentinel-release.json", &status);
    if (status != 200) {
        free(body);
        return NULL;
    }
    return body;
}

/* A client requesting the live site without pause, counting failures. */
typedef struct {
    int port;
    volatile int stop;
    int requests;
    int failures;
} s_client_t;

static void *s_client_loop(void *arg)
{
    s_client_t *c = arg;
    while (!c->stop) {
        long status = 0;
        char *body = sn_e2e_get(c->port, "/", &status);
        c->requests++;
        if (status != 200 || !body || !strstr(body, "Hello from Sentinel"))
            c->failures++;
        free(body);
    }
    return NULL;
}

static void test_e2e_staging_good_bad_and_live_failure(void **state)
{
    sn_e2e_t e;
    assert_true(sn_e2e_start(&e, "e2e", NULL));

    /* 1. The seeded staging branch is built, verified and goes live. */
    Sentinel__V1__Run *run = sn_e2e_find_run(&e, "staging", NULL, 30000);
    assert_non_null(run);
    char *first_run = sn_strdup(run->run_id);
    char *first_sha = sn_strdup(run->sha);
    sentinel__v1__run__free_unpacked(run, NULL);
    run = sn_e2e_wait_run(&e, first_run, RUN_TIMEOUT_MS);
    assert_non_null(run);
    if (run->state != SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED)
        fail_msg("first run ended %d: %s", run->state, run->reason);
    for (size_t i = 0; i < run->n_steps; i++)
        assert_true(run->steps[i]->state == SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED ||
                    run->steps[i]->state == SENTINEL__V1__STEP_STATE__STEP_SKIPPED);
    assert_int_equal(run->n_deploys, 1);
    char *live_deploy = sn_strdup(run->deploys[0]->deploy_id);
    sentinel__v1__run__free_unpacked(run, NULL);
    long status = 0;
    char *page = sn_e2e_get(e.live_port, "/", &status);
    assert_int_equal(status, 200);
    assert_non_null(strstr(page, "Hello from Sentinel"));
    free(page);
    char *id = s_identity(e.live_port);
    assert_non_null(id);
    assert_non_null(strstr(id, live_deploy));
    assert_non_null(strstr(id, first_sha));
    free(id);
    char *out = NULL;
    assert_int_equal(sn_e2e_ctl(&e, &out, (const char *[]){"run", "show", first_run, NULL}), 0);
    assert_non_null(strstr(out, "succeeded"));
    free(out);
    assert_int_equal(sn_e2e_ctl(&e, &out, (const char *[]){"history", "hello", "staging", NULL}),
                     0);
    assert_non_null(strstr(out, live_deploy));
    free(out);
    assert_int_equal(sn_e2e_ctl(&e, &out, (const char *[]){"run", "logs", first_run, NULL}), 0);
    assert_non_null(strstr(out, "build.sh: built public/"));
    free(out);

    /* 2. A bad commit fails its preview verification: nothing is promoted. */
    char *bad =
        sn_e2e_commit(&e, "staging", "src/index.html", "<html><body>broken page</body></html>\n");
    assert_non_null(bad);
    char *bad_run = sn_e2e_run_id(&e, "staging", bad, 30000);
    assert_non_null(bad_run);
    run = sn_e2e_wait_run(&e, bad_run, RUN_TIMEOUT_MS);
    assert_non_null(run);
    assert_int_equal(run->state, SENTINEL__V1__RUN_STATE__RUN_FAILED);
    const Sentinel__V1__Step *vp = s_step(run, "verify_preview");
    assert_non_null(vp);
    assert_int_equal(vp->state, SENTINEL__V1__STEP_STATE__STEP_FAILED);
    const Sentinel__V1__Step *pr = s_step(run, "promote");
    assert_true(!pr || pr->state != SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED);
    sentinel__v1__run__free_unpacked(run, NULL);
    id = s_identity(e.live_port);
    assert_non_null(strstr(id, live_deploy)); /* still the first release */
    free(id);

    /* 3. A good commit that passes on preview and fails live is rolled back; a client
     * requesting the site throughout sees no failure. */
    s_client_t client = {.port = e.live_port};
    pthread_t th;
    pthread_create(&th, NULL, s_client_loop, &client);
    char *flag = sn_strdupf("%s/live-broken", e.dir);
    FILE *f = fopen(flag, "w");
    assert_non_null(f);
    fclose(f);
    char *good = sn_e2e_commit(&e, "staging", "src/index.html",
                               "<html><body><h1>Hello from Sentinel</h1> v2</body></html>\n");
    assert_non_null(good);
    char *rb_run = sn_e2e_run_id(&e, "staging", good, 30000);
    assert_non_null(rb_run);
    run = sn_e2e_wait_run(&e, rb_run, RUN_TIMEOUT_MS);
    assert_non_null(run);
    if (run->state != SENTINEL__V1__RUN_STATE__RUN_ROLLED_BACK)
        fail_msg("live failure ended %d: %s", run->state, run->reason);
    assert_true(run->reason && *run->reason);
    sentinel__v1__run__free_unpacked(run, NULL);
    unlink(flag);
    id = s_identity(e.live_port);
    assert_non_null(strstr(id, live_deploy)); /* the previous release serves again */
    free(id);
    client.stop = 1;
    pthread_join(th, NULL);
    fprintf(stderr, "client: %d requests, %d failures through deploy and rollback\n",
            client.requests, client.failures);
    assert_true(client.requests > 10);
    assert_int_equal(client.failures, 0);
    /* The rollback is critical: with two notifier replicas the webhook got it once. */
    assert_true(sn_test_wait_for(s_notifiers_idle, &e, 15000));
    assert_int_equal(s_deliveries(&e, "dev.sentinel.run.rolled_back"), 1);

    free(flag);
    free(good);
    free(rb_run);
    free(bad);
    free(bad_run);
    free(live_deploy);
    free(first_run);
    free(first_sha);
    assert_int_equal(sn_e2e_stop(&e), 0);
}

/* Counts webhook deliveries whose CloudEvents type is @type and that the receiver found
 * correctly signed and well formed. */
static int s_deliveries(sn_e2e_t *e, const char *type)
{
    long status = 0;
    char *body = sn_e2e_get(e->sink_port, "/_deliveries", &status);
    if (!body)
        return -1;
    json_t *list = json_loads(body, 0, NULL);
    free(body);
    int n = 0;
    size_t i;
    json_t *d;
    json_array_foreach(list, i, d)
    {
        const char *t = json_string_value(json_object_get(d, "type"));
        if (t && strcmp(t, type) == 0 && json_is_true(json_object_get(d, "signature_ok")) &&
            json_is_true(json_object_get(d, "cloudevent_ok")))
            n++;
    }
    json_decref(list);
    return n;
}

/* The pid of the buildpilot instance that leads, from its registration. */
static pid_t s_leader_pid(sn_e2e_t *e)
{
    redisReply *keys = redisCommand(e->redis, "KEYS %sagent:buildpilot:*", e->ns);
    pid_t pid = 0;
    for (size_t i = 0; keys && keys->type == REDIS_REPLY_ARRAY && i < keys->elements; i++) {
        redisReply *r = redisCommand(e->redis, "HMGET %s leader pid", keys->element[i]->str);
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->str &&
            strcmp(r->element[0]->str, "1") == 0 && r->element[1]->str)
            pid = (pid_t)strtol(r->element[1]->str, NULL, 10);
        if (r)
            freeReplyObject(r);
    }
    if (keys)
        freeReplyObject(keys);
    return pid;
}

static bool s_one_rejection(void *arg)
{
    return s_deliveries(arg, "dev.sentinel.gate.rejected") >= 1;
}

/* The notifiers' consumer group has read everything and acknowledged it. */
static bool s_notifiers_idle(void *arg)
{
    sn_e2e_t *e = arg;
    redisReply *r = redisCommand(e->redis, "XPENDING %sevents notifier", e->ns);
    bool idle = r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
                r->element[0]->type == REDIS_REPLY_INTEGER && r->element[0]->integer == 0;
    if (r)
        freeReplyObject(r);
    return idle;
}

typedef struct {
    sn_e2e_t *e;
    const char *run_id;
} s_run_wait_t;

static bool s_awaiting_approval(void *arg)
{
    s_run_wait_t *w = arg;
    Sentinel__V1__Run *run = sn_e2e_load_run(w->e, w->run_id);
    bool is_waiting = run && run->state == SENTINEL__V1__RUN_STATE__RUN_AWAITING_APPROVAL;
    if (run)
        sentinel__v1__run__free_unpacked(run, NULL);
    return is_waiting;
}

typedef struct {
    sn_e2e_t *e;
    const char *path;
    const char *token;
    long status;
} s_approve_t;

/* One approval attempt; done once buildpilot (not the gateway's 503) answered. */
static bool s_approve_answered(void *arg)
{
    s_approve_t *a = arg;
    free(sn_e2e_http("POST", a->e->gateway_port, a->path, a->token, "{}", NULL, 10000, &a->status));
    return a->status != 0 && a->status != 503 && a->status != 504;
}

static const char s_fake_key[] =
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----\n";

static void test_e2e_production_approval_gates_notify_sse_audit(void **state)
{
    sn_e2e_t e;
    assert_true(sn_e2e_start(&e, "e2eprod", NULL));
    Sentinel__V1__Run *run = sn_e2e_find_run(&e, "staging", NULL, 30000);
    assert_non_null(run);
    char *staging_run = sn_strdup(run->run_id);
    char *staging_sha = sn_strdup(run->sha);
    sentinel__v1__run__free_unpacked(run, NULL);
    run = sn_e2e_wait_run(&e, staging_run, RUN_TIMEOUT_MS);
    assert_non_null(run);
    assert_int_equal(run->state, SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED);
    sentinel__v1__run__free_unpacked(run, NULL);

    /* 1. An artifact with a private key is rejected by gate 2; the value is nowhere. */
    char *leaky = sn_e2e_commit(&e, "staging", "src/deploy.pem", s_fake_key);
    assert_non_null(leaky);
    char *leaky_run = sn_e2e_run_id(&e, "staging", leaky, 30000);
    assert_non_null(leaky_run);
    run = sn_e2e_wait_run(&e, leaky_run, RUN_TIMEOUT_MS);
    assert_non_null(run);
    assert_int_equal(run->state, SENTINEL__V1__RUN_STATE__RUN_REJECTED);
    assert_non_null(strstr(run->reason, "deploy.pem"));
    sentinel__v1__run__free_unpacked(run, NULL);
    const char *secret_line = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun";
    assert_int_equal(sn_test_count_in_file(e.log, secret_line), 0);
    char *path = sn_strdupf("/api/v1/runs/%s", leaky_run);
    long status = 0;
    char *api =
        sn_e2e_http("GET", e.gateway_port, path, SN_E2E_TOKEN_ALICE, NULL, NULL, 3000, &status);
    assert_int_equal(status, 200);
    assert_null(strstr(api, secret_line));
    free(api);
    free(path);
    redisReply *events = redisCommand(e.redis, "XRANGE %sevents - +", e.ns);
    assert_non_null(events);
    for (size_t i = 0; i < events->elements; i++)
        for (size_t f = 0; f < events->element[i]->element[1]->elements; f++) {
            redisReply *v = events->element[i]->element[1]->element[f];
            assert_true(v->len < strlen(secret_line) ||
                        !memmem(v->str, v->len, secret_line, strlen(secret_line)));
        }
    freeReplyObject(events);
    /* The rejection is critical: both notifier replicas run, the webhook gets it once.
     * Counted once the notifiers' consumer group has nothing pending: every entry handled. */
    assert_true(sn_test_wait_for(s_one_rejection, &e, 15000));
    assert_true(sn_test_wait_for(s_notifiers_idle, &e, 15000));
    assert_int_equal(s_deliveries(&e, "dev.sentinel.gate.rejected"), 1);

    /* 2. Production: alice asks, the leader dies while the run waits, alice may not approve
     * her own run, bob does, and the artifact staging verified goes live. */
    long st = 0;
    char *reply =
        sn_e2e_http("POST", e.gateway_port, "/api/v1/deploys", SN_E2E_TOKEN_ALICE,
                    "{\"project\": \"hello\", \"environment\": \"production\"}", NULL, 10000, &st);
    assert_int_equal(st, 202);
    json_t *doc = json_loads(reply, 0, NULL);
    free(reply);
    const char *rid = json_string_value(json_object_get(doc, "runId"));
    if (!rid)
        rid = json_string_value(json_object_get(doc, "run_id"));
    assert_non_null(rid);
    char *prod_run = sn_strdup(rid);
    json_decref(doc);
    s_run_wait_t waiting = {&e, prod_run};
    assert_true(sn_test_wait_for(s_awaiting_approval, &waiting, 30000));
    pid_t leader = s_leader_pid(&e);
    assert_true(leader > 0);
    kill(leader, SIGKILL);
    char *approve = sn_strdupf("/api/v1/runs/%s/approve", prod_run);
    /* 503 while leadership moves to the standby; then the answer is buildpilot's. */
    s_approve_t self_approval = {&e, approve, SN_E2E_TOKEN_ALICE, 0};
    assert_true(sn_test_wait_for(s_approve_answered, &self_approval, 20000));
    assert_int_equal(self_approval.status, 403);
    free(sn_e2e_http("POST", e.gateway_port, approve, SN_E2E_TOKEN_BOB, "{}", NULL, 10000, &st));
    assert_int_equal(st, 200);
    run = sn_e2e_wait_run(&e, prod_run, RUN_TIMEOUT_MS);
    assert_non_null(run);
    if (run->state != SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED)
        fail_msg("production run ended %d: %s", run->state, run->reason);
    assert_string_equal(run->sha, staging_sha);
    assert_string_equal(run->approval->approved_by, "bob");
    sentinel__v1__run__free_unpacked(run, NULL);
    char *id = s_identity(e.prod_port);
    assert_non_null(id);
    assert_non_null(strstr(id, staging_sha));
    free(id);

    /* 2b. The same through the CLI: deploy without --ref takes the environment's branch;
     * the person who asked may not approve; someone else may. */
    char *out = NULL;
    setenv("SENTINEL_USER", "carol", 1);
    assert_int_equal(sn_e2e_ctl(&e, &out,
                                (const char *[]){"deploy", "hello", "production", "--detach", "-o",
                                                 "json", NULL}),
                     0);
    json_t *ref = json_loads(out, 0, NULL);
    free(out);
    assert_non_null(ref);
    char *cli_run = sn_strdup(json_string_value(json_object_get(ref, "runId")));
    json_decref(ref);
    s_run_wait_t cli_waiting = {&e, cli_run};
    assert_true(sn_test_wait_for(s_awaiting_approval, &cli_waiting, 30000));
    assert_int_equal(sn_e2e_ctl(&e, NULL, (const char *[]){"approve", cli_run, NULL}), 4);
    setenv("SENTINEL_USER", "dave", 1);
    assert_int_equal(sn_e2e_ctl(&e, NULL, (const char *[]){"approve", cli_run, NULL}), 0);
    unsetenv("SENTINEL_USER");
    run = sn_e2e_wait_run(&e, cli_run, RUN_TIMEOUT_MS);
    assert_non_null(run);
    assert_int_equal(run->state, SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED);
    assert_string_equal(run->approval->approved_by, "dave");
    sentinel__v1__run__free_unpacked(run, NULL);
    free(cli_run);

    /* 3. The SSE stream from the start: every event valid CloudEvents / CDEvents. */
    char *sse = sn_e2e_http("GET", e.gateway_port, "/api/v1/events", SN_E2E_TOKEN_ALICE, NULL,
                            "Last-Event-ID: 0-0", 3000, &st);
    assert_int_equal(st, 200);
    assert_non_null(sse);
    char *jsonl = sn_strdupf("%s/events.jsonl", e.dir);
    FILE *f = fopen(jsonl, "w");
    assert_non_null(f);
    int events_seen = 0;
    for (char *p = sse; p && *p;) {
        char *nl = strchr(p, '\n');
        if (nl)
            *nl = '\0';
        if (strncmp(p, "data: ", 6) == 0) {
            fprintf(f, "%s\n", p + 6);
            events_seen++;
        }
        p = nl ? nl + 1 : NULL;
    }
    fclose(f);
    free(sse);
    assert_true(events_seen > 10);
    char *cmd = sn_strdupf("/usr/bin/python3 %s/tests/integration/validate_cdevents.py --schemas "
                           "%s/fixtures/cdevents/schemas %s >&2",
                           SN_SOURCE_DIR, SN_SHARED_DIR, jsonl);
    int rc = system(cmd);
    assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
    assert_true(sn_test_count_in_file(jsonl, "dev.cdevents.pipelinerun.finished") >= 2);
    assert_true(sn_test_count_in_file(jsonl, "dev.cdevents.service.deployed") >= 2);
    free(cmd);
    free(jsonl);

    /* 4. The audit chain verifies from its first record. */
    assert_int_equal(sn_e2e_ctl(&e, &out, (const char *[]){"audit", "verify", NULL}), 0);
    free(out);

    free(approve);
    free(prod_run);
    free(leaky_run);
    free(leaky);
    free(staging_run);
    free(staging_sha);
    assert_int_equal(sn_e2e_stop(&e), 0);
}

/* A build that hangs, three pushes in quick succession and a cancel. */
static void test_e2e_timeout_supersede_cancel(void **state)
{
    sn_e2e_t e;
    assert_true(sn_e2e_start(&e, "e2equeue", NULL));
    char *seed_run = sn_e2e_run_id(&e, "staging", NULL, 30000);
    assert_non_null(seed_run);
    Sentinel__V1__Run *run = sn_e2e_wait_run(&e, seed_run, RUN_TIMEOUT_MS);
    assert_non_null(run);
    assert_int_equal(run->state, SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED);
    sentinel__v1__run__free_unpacked(run, NULL);
    char *path = sn_strdupf("%s/examples/hello-site/build.sh", SN_SOURCE_DIR);
    char *good_build = sn_test_read_file(path);
    free(path);
    assert_non_null(good_build);

    /* 1. A build that hangs is killed at its timeout (8 s here); the run says so. */
    char *hang = sn_e2e_commit(&e, "staging", "build.sh", "#!/bin/sh\nsleep 1000\n");
    assert_non_null(hang);
    char *hang_run = sn_e2e_run_id(&e, "staging", hang, 30000);
    assert_non_null(hang_run);
    int64_t t0 = sn_mono_ms();
    run = sn_e2e_wait_run(&e, hang_run, RUN_TIMEOUT_MS);
    assert_non_null(run);
    assert_int_equal(run->state, SENTINEL__V1__RUN_STATE__RUN_FAILED);
    assert_non_null(strstr(run->reason, "timed out"));
    assert_true(sn_mono_ms() - t0 < 30000);
    sentinel__v1__run__free_unpacked(run, NULL);

    /* 2. Three pushes in quick succession while the first holds the environment: one run
     * at a time, the older queued run superseded by the newer; cancel stops the first. */
    char *a = sn_e2e_commit(&e, "staging", "build.sh", "#!/bin/sh\nsleep 999\n");
    assert_non_null(a);
    char *a_run = sn_e2e_run_id(&e, "staging", a, 30000);
    assert_non_null(a_run);
    char *b = sn_e2e_commit(&e, "staging", "build.sh", good_build);
    char *c = sn_e2e_commit(&e, "staging", "src/index.html",
                            "<html><body><h1>Hello from Sentinel</h1> third</body></html>\n");
    assert_non_null(b);
    assert_non_null(c);
    char *b_run = sn_e2e_run_id(&e, "staging", b, 30000);
    assert_non_null(b_run);
    char *c_run = sn_e2e_run_id(&e, "staging", c, 30000);
    assert_non_null(c_run);
    run = sn_e2e_wait_run(&e, b_run, 30000);
    assert_non_null(run);
    assert_int_equal(run->state, SENTINEL__V1__RUN_STATE__RUN_SUPERSEDED);
    /* Superseded by a run of the newer commit (one CI run saw a different run id here
     * than the newest run of c the harness found: the commit is what the spec promises). */
    Sentinel__V1__Run *by = sn_e2e_load_run(&e, run->superseded_by);
    assert_non_null(by);
    assert_string_equal(by->sha, c);
    sentinel__v1__run__free_unpacked(by, NULL);
    sentinel__v1__run__free_unpacked(run, NULL);
    run = sn_e2e_load_run(&e, c_run);
    assert_non_null(run);
    assert_int_equal(run->state, SENTINEL__V1__RUN_STATE__RUN_QUEUED); /* a still holds it */
    sentinel__v1__run__free_unpacked(run, NULL);
    assert_int_equal(sn_e2e_ctl(&e, NULL, (const char *[]){"cancel", a_run, NULL}), 0);
    run = sn_e2e_wait_run(&e, a_run, 30000);
    assert_non_null(run);
    assert_int_equal(run->state, SENTINEL__V1__RUN_STATE__RUN_CANCELLED);
    sentinel__v1__run__free_unpacked(run, NULL);
    run = sn_e2e_wait_run(&e, c_run, RUN_TIMEOUT_MS);
    assert_non_null(run);
    if (run->state != SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED)
        fail_msg("third run ended %d: %s", run->state, run->reason);
    sentinel__v1__run__free_unpacked(run, NULL);
    char *id = s_identity(e.live_port);
    assert_non_null(id);
    assert_non_null(strstr(id, c));
    free(id);

    free(a);
    free(b);
    free(c);
    free(a_run);
    free(b_run);
    free(c_run);
    free(hang);
    free(hang_run);
    free(good_build);
    free(seed_run);
    assert_int_equal(sn_e2e_stop(&e), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e2e_staging_good_bad_and_live_failure),
        cmocka_unit_test(test_e2e_production_approval_gates_notify_sse_audit),
        cmocka_unit_test(test_e2e_timeout_supersede_cancel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
