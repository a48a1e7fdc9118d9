/* The main job end to end on the embedded default: `sentinelctl up` with every product
 * role, nginx serving local targets, the hello-site as the project's repository. */
#include "sn_e2e.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sentinel/v1/pipeline.pb-c.h"

#define RUN_TIMEOUT_MS 90000

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
    char *bad = sn_e2e_commit(&e, "staging", "src/index.html",
                              "<html><body>broken page</body></html>\n");
    assert_non_null(bad);
    run = sn_e2e_find_run(&e, "staging", bad, 30000);
    assert_non_null(run);
    char *bad_run = sn_strdup(run->run_id);
    sentinel__v1__run__free_unpacked(run, NULL);
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
    run = sn_e2e_find_run(&e, "staging", good, 30000);
    assert_non_null(run);
    char *rb_run = sn_strdup(run->run_id);
    sentinel__v1__run__free_unpacked(run, NULL);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e2e_staging_good_bad_and_live_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
