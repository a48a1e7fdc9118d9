/* Integration test of function-handler with real processes: redis-server, the broker, a
 * sentinel-agent function-handler and the fake Google (tests/fakes/fake_firebase.py),
 * which enforces the Cloud Functions v2 contract: a signed upload URL that REJECTS an
 * Authorization header and takes only a valid zip, create/patch naming an uploaded object,
 * operations that finish after N polls, functions that fail on demand.
 *
 * Shown: a full deploy of two functions (created, ACTIVE, running the zip whose sha256 is
 * the release id and which the artifact store keeps; the zip is deterministic: the same
 * source gives the same sha256); promote confirms; a redeploy patches; a failing function
 * is named in the reason; rollback redeploys the previous source (and a retry does not
 * deploy again); bad firebase.json and requests are refused before any provider call;
 * 429 with Retry-After, a 503 burst on the operation polls, a hang and HTML with 200 are
 * retried; a worker killed while operations run is resumed by another without a second
 * deployment. */
#include "test_firebase_util.h"

#include "sentinel/sn_crypto.h"

#define SERVICE "firebase.functions"

static fbt_t s_t;
static char s_sha1[SN_ARTIFACT_SHA_LEN + 1];
static char s_sha1b[SN_ARTIFACT_SHA_LEN + 1]; /* same functions source, other site */
static char s_sha2[SN_ARTIFACT_SHA_LEN + 1];
static char s_sha_bad[SN_ARTIFACT_SHA_LEN + 1];
static char s_sha_none[SN_ARTIFACT_SHA_LEN + 1];
static size_t s_agent;

#define FIREBASE_JSON                                                                              \
    "{\"hosting\": {\"public\": \"public\"}, \"functions\": {\"source\": \"functions\", "          \
    "\"runtime\": \"nodejs20\", \"endpoints\": {\"api\": {\"availableMemory\": \"256Mi\"}, "       \
    "\"worker\": {\"entryPoint\": \"work\", \"timeoutSeconds\": 60}}}}"

static void s_spawn_agent(void)
{
    char instance[64];
    snprintf(instance, sizeof instance, "functions-%zu", s_t.mesh.agent_count + 1);
    s_agent = sn_mesh_agent_bin(&s_t.mesh, "sentinel-agent", "function-handler", instance);
    assert_true(sn_mesh_wait_service(&s_t.mesh, SERVICE, 1, 10000));
}

static int s_setup(void **state)
{
    fbt_setup(&s_t, "fbfn");
    const char *const f1[] = {"firebase.json",
                              FIREBASE_JSON,
                              "public/index.html",
                              "one",
                              "functions/index.js",
                              "exports.api = () => 1;\n",
                              "functions/package.json",
                              "{\"engines\": {\"node\": \"20\"}}",
                              "functions/node_modules/x/index.js",
                              "ignored",
                              NULL};
    fbt_artifact(&s_t, "a1", f1, s_sha1);
    const char *const f1b[] = {"firebase.json",
                               FIREBASE_JSON,
                               "public/index.html",
                               "one, other site",
                               "functions/index.js",
                               "exports.api = () => 1;\n",
                               "functions/package.json",
                               "{\"engines\": {\"node\": \"20\"}}",
                               NULL};
    fbt_artifact(&s_t, "a1b", f1b, s_sha1b);
    const char *const f2[] = {"firebase.json",
                              FIREBASE_JSON,
                              "functions/index.js",
                              "exports.api = () => 2;\n",
                              "functions/package.json",
                              "{\"engines\": {\"node\": \"20\"}}",
                              NULL};
    fbt_artifact(&s_t, "a2", f2, s_sha2);
    const char *const bad[] = {"firebase.json",
                               "{\"functions\": {\"source\": \"../up\", \"endpoints\": {}}}", "x",
                               "y", NULL};
    fbt_artifact(&s_t, "abad", bad, s_sha_bad);
    const char *const none[] = {"firebase.json", "{\"hosting\": {\"public\": \".\"}}", "x", "y",
                                NULL};
    fbt_artifact(&s_t, "anone", none, s_sha_none);
    s_spawn_agent();
    *state = &s_t;
    return 0;
}

static int s_teardown(void **state)
{
    fbt_teardown(&s_t);
    return 0;
}

/* The fake's view of function @id: its state and source sha256 (borrowed from *root). */
static json_t *s_function(const char *id, json_t **root)
{
    char *url = sn_strdupf("%s/__functions", s_t.base);
    *root = fbt_get_json(&s_t, url, NULL);
    free(url);
    assert_non_null(*root);
    return json_object_get(*root, id);
}

static void s_expect_function(const char *id, const char *state, const char *sha)
{
    json_t *root = NULL;
    json_t *f = s_function(id, &root);
    assert_non_null(f);
    assert_string_equal(json_string_value(json_object_get(f, "state")), state);
    if (sha)
        assert_string_equal(json_string_value(json_object_get(f, "source_sha256")), sha);
    json_decref(root);
}

static sn_envelope_t *s_ok(const char *op, const char *deploy_id, const char *sha)
{
    return fbt_expect(&s_t, true, NULL, SERVICE, op, deploy_id, "fb", sha, NULL);
}

static void test_firebase_functions_full_deploy(void **state)
{
    sn_envelope_t *r = s_ok("stage", "F1", s_sha1);
    const Sentinel__V1__Deploy *d = r->deploy_result->deploy;
    assert_int_equal(d->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED);
    assert_true(sn_artifact_sha_is_valid(d->release_id));
    char *src1 = sn_strdup(d->release_id);
    sn_envelope_free(&r);
    /* The zip is kept in the artifact store under its sha256. */
    assert_int_equal(sn_artifact_verify(s_t.store, src1), SN_OK);
    s_expect_function("api", "ACTIVE", src1);
    s_expect_function("worker", "ACTIVE", src1);
    assert_int_equal(fbt_stat(&s_t, "function_deploys_by_deploy", "f1"), 2);
    assert_int_equal(fbt_stat(&s_t, NULL, "zip_uploads"), 1);
    assert_int_equal(fbt_stat(&s_t, NULL, "zip_auth_rejected"), 0);
    assert_int_equal(fbt_stat(&s_t, NULL, "off_contract"), 0);
    /* A retried stage: answered from the record, nothing deployed again. */
    r = s_ok("stage", "F1", s_sha1);
    assert_string_equal(r->deploy_result->deploy->release_id, src1);
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, "function_deploys_by_deploy", "f1"), 2);
    r = s_ok("promote", "F1", NULL);
    assert_int_equal(r->deploy_result->deploy->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE);
    assert_string_equal(r->deploy_result->deploy->release_id, src1);
    sn_envelope_free(&r);
    /* Same functions source in another artifact: the same zip bytes (deterministic);
     * the functions exist now, so they are patched. */
    r = s_ok("stage", "F1B", s_sha1b);
    assert_string_equal(r->deploy_result->deploy->release_id, src1);
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, "function_deploys_by_deploy", "f1b"), 2);
    /* An artifact without functions: ok, nothing deployed. */
    r = s_ok("stage", "F0", s_sha_none);
    assert_string_equal(r->deploy_result->reason, "no functions");
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, "function_deploys_by_deploy", "f0"), 0);
    /* Its rollback (a run whose other target failed) has nothing to undo: ok, and no
     * provider call. */
    long before = fbt_stat(&s_t, NULL, "requests");
    r = s_ok("rollback", "F0", NULL);
    assert_int_equal(r->deploy_result->deploy->phase,
                     SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK);
    assert_string_equal(r->deploy_result->reason, "no functions");
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, NULL, "requests"), before);
    free(src1);
}

static void test_firebase_functions_failure_and_rollback(void **state)
{
    json_t *root = NULL;
    char *src1 =
        sn_strdup(json_string_value(json_object_get(s_function("api", &root), "source_sha256")));
    json_decref(root);
    /* worker fails: the reason names it, not api. */
    fbt_control(&s_t, "reset=1&fail_functions=worker");
    sn_envelope_t *r = fbt_expect(&s_t, false, "functions failed: worker", SERVICE, "stage", "F2",
                                  "fb", s_sha2, NULL);
    assert_null(strstr(r->deploy_result->reason, "api ("));
    assert_false(r->deploy_result->is_transient);
    sn_envelope_free(&r);
    r = fbt_expect(&s_t, false, "not deployed", SERVICE, "promote", "F2", "fb", NULL, NULL);
    sn_envelope_free(&r);
    fbt_control(&s_t, "reset=1");
    s_expect_function("worker", "FAILED", NULL);
    s_expect_function("api", "ACTIVE", NULL);
    /* The executor rolls the failed stage back: api gets its previous source again;
     * worker never ran F2's source (its deploy failed) and is left as it is. */
    r = s_ok("rollback", "F2", NULL);
    assert_string_equal(r->deploy_result->deploy->release_id, src1);
    assert_non_null(strstr(r->deploy_result->reason, "left as deployed: worker"));
    sn_envelope_free(&r);
    s_expect_function("api", "ACTIVE", src1);

    /* F3 deploys the new source; its rollback brings the previous one back. */
    r = s_ok("stage", "F3", s_sha2);
    char *src2 = sn_strdup(r->deploy_result->deploy->release_id);
    sn_envelope_free(&r);
    assert_string_not_equal(src1, src2);
    s_expect_function("api", "ACTIVE", src2);
    long before = fbt_stat(&s_t, "function_deploys_by_deploy", "f3");
    r = s_ok("rollback", "F3", NULL);
    assert_int_equal(r->deploy_result->deploy->phase,
                     SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK);
    assert_string_equal(r->deploy_result->deploy->release_id, src1);
    sn_envelope_free(&r);
    s_expect_function("api", "ACTIVE", src1);
    s_expect_function("worker", "ACTIVE", src1);
    assert_int_equal(fbt_stat(&s_t, "function_deploys_by_deploy", "f3"), before + 2);
    /* Retried: nothing deployed again. */
    r = s_ok("rollback", "F3", NULL);
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, "function_deploys_by_deploy", "f3"), before + 2);
    /* to_release_id: an explicit source sha256; a malformed one is refused. */
    r = fbt_expect(&s_t, true, NULL, SERVICE, "rollback", "F1", "fb", NULL, src2);
    sn_envelope_free(&r);
    s_expect_function("api", "ACTIVE", src2);
    r = fbt_expect(&s_t, false, "to_release_id", SERVICE, "rollback", "F1", "fb", NULL, "abc");
    sn_envelope_free(&r);
    free(src1);
    free(src2);
}

static void test_firebase_functions_bad_requests(void **state)
{
    long before = fbt_stat(&s_t, NULL, "requests");
    sn_envelope_t *r =
        fbt_expect(&s_t, false, "relative source", SERVICE, "stage", "X1", "fb", s_sha_bad, NULL);
    sn_envelope_free(&r);
    r = fbt_expect(&s_t, false, "unknown op", SERVICE, "propagation", "X1", "fb", s_sha1, NULL);
    sn_envelope_free(&r);
    r = fbt_expect(&s_t, false, "invalid deploy id", SERVICE, "stage", "../x", "fb", s_sha1, NULL);
    sn_envelope_free(&r);
    r = fbt_expect(&s_t, false, "no functions recorded", SERVICE, "rollback", "X9", "fb", NULL,
                   NULL);
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, NULL, "requests"), before);
}

static void test_firebase_functions_transient_faults(void **state)
{
    /* 429 with Retry-After on the patch of api (safe to repeat). */
    fbt_control(&s_t,
                "reset=1&fail_next=1&fail_status=429&retry_after=1&fault_match=/functions/api");
    long faults = fbt_stat(&s_t, NULL, "faults");
    int64_t t0 = sn_mono_ms();
    sn_envelope_t *r = s_ok("stage", "T1", s_sha1);
    sn_envelope_free(&r);
    assert_true(sn_mono_ms() - t0 >= 950);
    assert_int_equal(fbt_stat(&s_t, NULL, "faults"), faults + 1);
    /* A 503 burst on the operation polls. */
    fbt_control(&s_t, "reset=1&fail_next=3&fail_status=503&fault_match=/operations/");
    faults = fbt_stat(&s_t, NULL, "faults");
    r = s_ok("stage", "T2", s_sha2);
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, NULL, "faults"), faults + 3);
    /* A hang on generateUploadUrl, cut by the timeout and retried. */
    fbt_control(&s_t, "reset=1&hang_next=1&hang_ms=4000&fault_match=generateUploadUrl");
    faults = fbt_stat(&s_t, NULL, "faults");
    r = s_ok("stage", "T3", s_sha1);
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, NULL, "faults"), faults + 1);
    /* HTML with 200 on an operation poll: not "done", a failure, retried. */
    fbt_control(&s_t, "reset=1&html_next=1&fault_match=/operations/");
    faults = fbt_stat(&s_t, NULL, "faults");
    r = s_ok("stage", "T4", s_sha2);
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, NULL, "faults"), faults + 1);
    assert_int_equal(fbt_stat(&s_t, "function_deploys_by_deploy", "t4"), 2);
    fbt_control(&s_t, "reset=1");
}

typedef struct {
    const char *map, *key;
    long at_least;
} s_stat_wait_t;

static bool s_stat_reached(void *arg)
{
    s_stat_wait_t *w = arg;
    return fbt_stat(&s_t, w->map, w->key) >= w->at_least;
}

typedef struct {
    const char *job;
    sn_envelope_t *reply;
} s_job_wait_t;

static bool s_job_answers_ok(void *arg)
{
    s_job_wait_t *w = arg;
    sn_envelope_free(&w->reply);
    w->reply =
        fbt_call(&s_t, SERVICE, "stage", "K2", "run-k2", "fb", s_sha2, NULL, NULL, w->job, 20000);
    return w->reply && w->reply->deploy_result->ok;
}

static void test_firebase_functions_killed_mid_deploy_resumes(void **state)
{
    fbt_make_job(&s_t, "job-k2", SERVICE, 1500);
    /* Operations that take 100 polls (10 s): the worker is killed while they run. */
    fbt_control(&s_t, "reset=1&op_polls=100");
    fbt_async_t call = {&s_t, SERVICE, "K2", "run-k2", s_sha2, "job-k2", 0, NULL};
    fbt_async_start(&call);
    s_stat_wait_t w = {"function_deploys_by_deploy", "k2", 2};
    assert_true(sn_test_wait_for(s_stat_reached, &w, 10000));
    s_stat_wait_t wp = {NULL, "op_polls", fbt_stat(&s_t, NULL, "op_polls") + 2};
    assert_true(sn_test_wait_for(s_stat_reached, &wp, 10000));
    sn_mesh_agent_t *a = &s_t.mesh.agents[s_agent];
    assert_true(sn_test_stop(a->pid, SIGKILL, 5000) >= 0);
    a->pid = 0;
    /* The waiting caller learns that its worker is gone (worker-lost), no result. */
    sn_envelope_t *lost = fbt_async_join(&call);
    assert_null(lost);
    fbt_control(&s_t, "op_polls=2");
    s_spawn_agent();
    s_job_wait_t jw = {"job-k2", NULL};
    assert_true(sn_test_wait_for(s_job_answers_ok, &jw, 20000));
    sn_envelope_free(&jw.reply);
    /* The recorded operations were polled to their end: no second deployment. */
    assert_int_equal(fbt_stat(&s_t, "function_deploys_by_deploy", "k2"), 2);
    assert_int_equal(fbt_stat(&s_t, NULL, "zip_auth_rejected"), 0);
    fbt_control(&s_t, "reset=1");
}

static void test_firebase_functions_no_secret_in_logs(void **state)
{
    for (size_t i = 0; i < s_t.mesh.agent_count; i++) {
        char *log = sn_test_read_file(s_t.mesh.agents[i].log);
        assert_non_null(log);
        assert_null(strstr(log, "fake-at-"));
        assert_null(strstr(log, "Signature=abc"));
        assert_null(strstr(log, "PRIVATE KEY"));
        free(log);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_firebase_functions_full_deploy),
        cmocka_unit_test(test_firebase_functions_failure_and_rollback),
        cmocka_unit_test(test_firebase_functions_bad_requests),
        cmocka_unit_test(test_firebase_functions_transient_faults),
        cmocka_unit_test(test_firebase_functions_killed_mid_deploy_resumes),
        cmocka_unit_test(test_firebase_functions_no_secret_in_logs),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
