/* Cloud targets end to end: the whole product under `sentinelctl up` with the staging
 * environment deploying to four targets at once — the local static site (nginx),
 * Cloudflare Pages, Firebase Hosting and Railway, each cloud target pointed at its fake
 * (tests/fakes/fake_cloudflare.py, fake_firebase.py, fake_railway.py) — with every cloud
 * role running (cloudflare-deployer, railway-bridge, firebase-sync, firebase-executor,
 * resource-validator, hosting-propagator, function-handler).
 *
 * Shown:
 * 1. The seeded staging commit gives one run whose four deploys (local_static,
 *    cloudflare_pages, firebase, railway) are dispatched at once (all four stage jobs
 *    created, and claimed, before the first cloud stage finished), verified through each
 *    fake's served URL and promoted; every live URL serves that release's identity and
 *    every fake counts exactly one provider deployment per deploy id and op.
 * 2. Railway's deployment fails (fake: fail_next): the run fails at stage naming the
 *    railway target; nothing went live anywhere (the three others only staged, on
 *    previews; a failed Railway deployment leaves the previous one active), so every live
 *    URL still serves release 1 and nothing is rolled back.
 * 3. Cloudflare's deployment fails (fake: fail_deploys): Railway has no preview, its stage
 *    was its live deploy, so the run rolls Railway back (one deploymentRollback) and it
 *    serves release 1 again.
 * 4. Railway's deployment goes live and then crashes (fake: crash_next): promote fails on
 *    the railway target after the three others went live; all four are rolled back
 *    (deploy.rolled_back for each, phase ROLLED_BACK) and serve release 1 again: the local
 *    site, Cloudflare's production alias, Firebase's live channel and Railway. */
#include "sn_e2e.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "sentinel/sn_envelope.h"
#include "sentinel/v1/pipeline.pb-c.h"

#define RUN_TIMEOUT_MS 60000
#define CF_TOKEN "cf-e2e-token-0123456789"
#define RW_TOKEN "rw-e2e-token-0123456789"
#define S_CHECK_TAIL "consecutive: 2, interval_ms: 100, deadline_ms: 8000}\n"

typedef struct {
    char *dir;
    int cf_port, fb_port, rw_port;
    pid_t cf, fb, rw;
    char *key_file, *pub_file;
} s_fakes_t;

static bool s_file_exists(void *arg)
{
    return access((const char *)arg, F_OK) == 0;
}

/* A service-account key (RSA 2048): key JSON whose token_uri is the fake's, and the public
 * half for the fake to verify the JWT assertions with. */
static void s_make_key(s_fakes_t *f)
{
    EVP_PKEY *key = EVP_RSA_gen(2048);
    assert_non_null(key);
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL), 1);
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    char *pem = sn_strndup(data, (size_t)n);
    BIO_free(b);
    f->pub_file = sn_strdupf("%s/pub.pem", f->dir);
    FILE *out = fopen(f->pub_file, "w");
    assert_non_null(out);
    assert_int_equal(PEM_write_PUBKEY(out, key), 1);
    fclose(out);
    EVP_PKEY_free(key);
    char *uri = sn_strdupf("http://127.0.0.1:%d/token", f->fb_port);
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "type", "service_account", "project_id",
                  "demo-project", "private_key_id", "k1", "private_key", pem, "client_email",
                  "deployer@demo-project.iam.gserviceaccount.com", "token_uri", uri);
    f->key_file = sn_strdupf("%s/key.json", f->dir);
    assert_int_equal(json_dump_file(o, f->key_file, 0), 0);
    chmod(f->key_file, 0600);
    json_decref(o);
    free(uri);
    free(pem);
}

static pid_t s_spawn_fake(s_fakes_t *f, const char *name, int port, char **extra)
{
    char *script = sn_strdupf("%s/tests/fakes/%s.py", SN_SOURCE_DIR, name);
    char *ready = sn_strdupf("%s/%s.ready", f->dir, name);
    char *log = sn_strdupf("%s/%s.log", f->dir, name);
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    char *argv[24] = {"/usr/bin/python3", script, "--port", port_s, "--ready", ready};
    size_t n = 6;
    for (size_t i = 0; extra[i] && n < SN_ARRAY_LEN(argv) - 1; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t pid = sn_test_spawn(argv, log);
    assert_true(pid > 0);
    assert_true(sn_test_wait_for(s_file_exists, ready, 15000));
    free(script);
    free(ready);
    free(log);
    return pid;
}

static void s_fakes_start(s_fakes_t *f)
{
    memset(f, 0, sizeof *f);
    f->dir = sn_test_tmpdir("e2ecloud-fakes");
    f->cf_port = sn_test_free_port();
    f->fb_port = sn_test_free_port();
    f->rw_port = sn_test_free_port();
    s_make_key(f);
    /* Cloudflare's deployments take 600 ms, Railway's 600 ms: in flight together. */
    f->cf = s_spawn_fake(f, "fake_cloudflare", f->cf_port,
                         (char *[]){"--token", CF_TOKEN, "--account", "acct0123", "--project",
                                    "site", "--deploy-latency-ms", "600", NULL});
    f->fb = s_spawn_fake(f, "fake_firebase", f->fb_port,
                         (char *[]){"--public-key", f->pub_file, "--project", "demo-project",
                                    "--site", "demo-site", NULL});
    f->rw = s_spawn_fake(f, "fake_railway", f->rw_port,
                         (char *[]){"--token", RW_TOKEN, "--project", "proj-1", "--environment",
                                    "env-1", "--service", "svc-1", NULL});
}

static void s_fakes_stop(s_fakes_t *f, bool keep)
{
    sn_test_stop(f->cf, SIGTERM, 5000);
    sn_test_stop(f->fb, SIGTERM, 5000);
    sn_test_stop(f->rw, SIGTERM, 5000);
    if (!keep)
        sn_test_rmdir(f->dir);
    free(f->dir);
    free(f->key_file);
    free(f->pub_file);
}

/* GET @path on the fake at @port as JSON (NULL if it does not answer JSON). */
static json_t *s_get_json(int port, const char *path)
{
    long status = 0;
    char *body = sn_e2e_get(port, path, &status);
    json_t *j = body && status == 200 ? json_loads(body, 0, NULL) : NULL;
    free(body);
    return j;
}

static void s_control(int port, const char *query)
{
    char *path = sn_strdupf("/__control?%s", query);
    long status = 0;
    free(sn_e2e_get(port, path, &status));
    free(path);
    assert_int_equal(status, 200);
}

static json_int_t s_stat(int port, const char *map, const char *key)
{
    json_t *st = s_get_json(port, "/__stats");
    json_int_t v = map ? json_integer_value(json_object_get(json_object_get(st, map), key))
                       : json_integer_value(json_object_get(st, key));
    json_decref(st);
    return v;
}

/* The identity an absolute base URL (http://127.0.0.1:P[/path]) serves: its JSON, or
 * NULL. */
static json_t *s_identity(const char *base)
{
    int port = 0;
    const char *rest = NULL;
    if (!base || strncmp(base, "http://127.0.0.1:", 17) != 0)
        return NULL;
    port = (int)strtol(base + 17, (char **)&rest, 10);
    size_t len = strlen(rest);
    if (len && rest[len - 1] == '/')
        len--;
    char *path = sn_strdupf("%.*s/.well-known/sentinel-release.json", (int)len, rest);
    json_t *j = s_get_json(port, path);
    free(path);
    return j;
}

/* @base serves the identity of deploy @deploy_id and commit @sha. */
static void s_expect_identity(const char *what, const char *base, const char *deploy_id,
                              const char *sha)
{
    json_t *j = s_identity(base);
    const char *got = json_string_value(json_object_get(j, "deployId"));
    const char *commit = json_string_value(json_object_get(j, "commit"));
    if (!got || strcmp(got, deploy_id) != 0 || !commit || strcmp(commit, sha) != 0)
        fail_msg("%s (%s) serves deploy %s commit %s, expected %s %s", what, base ? base : "-",
                 got ? got : "none", commit ? commit : "none", deploy_id, sha);
    json_decref(j);
}

static const Sentinel__V1__Deploy *s_deploy(const Sentinel__V1__Run *run, const char *target)
{
    for (size_t i = 0; i < run->n_deploys; i++)
        if (strcmp(run->deploys[i]->target, target) == 0)
            return run->deploys[i];
    fail_msg("run %s has no deploy for %s", run->run_id, target);
    return NULL;
}

static const Sentinel__V1__Step *s_step(const Sentinel__V1__Run *run, const char *name)
{
    for (size_t i = 0; i < run->n_steps; i++)
        if (strcmp(run->steps[i]->name, name) == 0)
            return run->steps[i];
    return NULL;
}

static int64_t s_job_field(sn_e2e_t *e, const char *job, const char *field)
{
    redisReply *r = redisCommand(e->redis, "HGET %sjob:%s %s", e->ns, job, field);
    int64_t v = r && r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : -1;
    if (r)
        freeReplyObject(r);
    return v;
}

/* The journal's events of @type for run @run_id: the targets they name, comma-joined
 * (caller frees). */
static char *s_event_targets(sn_e2e_t *e, const char *type, const char *run_id)
{
    redisReply *r = redisCommand(e->redis, "XRANGE %sevents - +", e->ns);
    assert_non_null(r);
    char *out = sn_strdup("");
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *fields = r->element[i]->element[1];
        const char *t = NULL;
        redisReply *envb = NULL;
        for (size_t k = 0; k + 1 < fields->elements; k += 2) {
            if (strcmp(fields->element[k]->str, "type") == 0)
                t = fields->element[k + 1]->str;
            else if (strcmp(fields->element[k]->str, "env") == 0)
                envb = fields->element[k + 1];
        }
        if (!t || strcmp(t, type) != 0 || !envb)
            continue;
        sn_envelope_t *env = sn_envelope_unpack(envb->str, envb->len, SN_MAX_FRAME_BYTES, NULL);
        if (env && env->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY && env->deploy &&
            strcmp(env->deploy->run_id, run_id) == 0) {
            char *next = sn_strdupf("%s%s%s", out, *out ? "," : "", env->deploy->target);
            free(out);
            out = next;
        }
        sn_envelope_free(&env);
    }
    freeReplyObject(r);
    return out;
}

static bool s_has_target(const char *list, const char *target)
{
    size_t n = strlen(target);
    for (const char *p = list; (p = strstr(p, target)) != NULL; p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

/* A run of the staging environment for @sha, waited to its end. */
static Sentinel__V1__Run *s_run_of(sn_e2e_t *e, const char *sha)
{
    char *id = sn_e2e_run_id(e, "staging", sha, 30000);
    assert_non_null(id);
    Sentinel__V1__Run *run = sn_e2e_wait_run(e, id, RUN_TIMEOUT_MS);
    if (!run)
        fail_msg("run %s did not end within %d ms", id, RUN_TIMEOUT_MS);
    free(id);
    return run;
}

static const char *const s_targets[] = {"hello-staging", "cf", "fb", "rw"};
static const char *const s_providers[] = {"local_static", "cloudflare_pages", "firebase",
                                          "railway"};

static void test_e2e_four_targets_and_railway_failing(void **state)
{
    (void)state;
    int64_t t_start = sn_mono_ms();
    s_fakes_t f;
    s_fakes_start(&f);
    char *targets = sn_strdupf(
        "  - name: cf\n"
        "    type: cloudflare_pages\n"
        "    api_base: http://127.0.0.1:%d/client/v4\n"
        "    token: " CF_TOKEN "\n"
        "    account_id: acct0123\n"
        "    project: site\n"
        "    production_branch: main\n"
        "    poll_interval_ms: 100\n"
        "    request_timeout_ms: 5000\n"
        "    check: {path: /, status: 200, body_contains: \"Hello from Sentinel\", " S_CHECK_TAIL
        "  - name: fb\n"
        "    type: firebase\n"
        "    project: demo-project\n"
        "    site: demo-site\n"
        "    credentials_file: %s\n"
        "    oauth_token_uri: http://127.0.0.1:%d/token\n"
        "    api_base: http://127.0.0.1:%d/v1beta1\n"
        "    functions_api_base: http://127.0.0.1:%d/v2\n"
        "    poll_interval_ms: 100\n"
        "    request_timeout_ms: 5000\n"
        "    check: {path: /, status: 200, body_contains: \"Hello from Sentinel\", " S_CHECK_TAIL
        "  - name: rw\n"
        "    type: railway\n"
        "    api_base: http://127.0.0.1:%d/graphql/v2\n"
        "    token: " RW_TOKEN "\n"
        "    project: proj-1\n"
        "    service_id: svc-1\n"
        "    environment_id: env-1\n"
        "    poll_interval_ms: 100\n"
        "    request_timeout_ms: 5000\n"
        "    check: {path: /, status: 200, body_contains: \"railway app\", " S_CHECK_TAIL,
        f.cf_port, f.key_file, f.fb_port, f.fb_port, f.fb_port, f.rw_port);
    sn_e2e_opts_t o = {
        .tag = "e2ecloud",
        .extra_processes = "  - {role: cloudflare-deployer, instances: 1}\n"
                           "  - {role: railway-bridge, instances: 1}\n"
                           "  - {role: firebase-sync, instances: 1}\n"
                           "  - {role: firebase-executor, instances: 1}\n"
                           "  - {role: resource-validator, instances: 1}\n"
                           "  - {role: hosting-propagator, instances: 1}\n"
                           "  - {role: function-handler, instances: 1}\n",
        .extra_targets = targets,
        .staging_targets = "[hello-staging, cf, fb, rw]",
    };
    sn_e2e_t e;
    assert_true(sn_e2e_start_ex(&e, &o));
    /* Railway's deployments take 600 ms too. */
    s_control(f.rw_port, "deploy_ms=600");

    /* 1. The seeded staging commit: one run, four deploys at once, all live. */
    int64_t t0 = sn_mono_ms();
    Sentinel__V1__Run *run = sn_e2e_find_run(&e, "staging", NULL, 30000);
    assert_non_null(run);
    char *sha1 = sn_strdup(run->sha);
    sentinel__v1__run__free_unpacked(run, NULL);
    run = s_run_of(&e, sha1);
    if (run->state != SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED)
        fail_msg("first run ended %d: %s", run->state, run->reason);
    fprintf(stderr, "run 1 (four targets) took %lld ms\n", (long long)(sn_mono_ms() - t0));
    assert_int_equal(run->n_deploys, 4);
    for (size_t i = 0; i < run->n_steps; i++)
        if (run->steps[i]->state != SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED &&
            run->steps[i]->state != SENTINEL__V1__STEP_STATE__STEP_SKIPPED)
            fail_msg("step %s ended %d", run->steps[i]->name, run->steps[i]->state);
    const Sentinel__V1__Step *stage = s_step(run, "stage");
    assert_non_null(stage);
    assert_int_equal(stage->state, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED);
    char *dep1[4], *live[4];
    int64_t max_created = 0, max_claimed = 0, min_done = INT64_MAX, max_staged = 0,
            min_promoted = INT64_MAX;
    for (size_t i = 0; i < 4; i++) {
        const Sentinel__V1__Deploy *d = s_deploy(run, s_targets[i]);
        assert_string_equal(d->provider, s_providers[i]);
        assert_int_equal(d->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE_VERIFIED);
        assert_true(d->staged_unix_ms > 0 && d->promoted_unix_ms > 0);
        dep1[i] = sn_strdup(d->deploy_id);
        live[i] = sn_strdup(i == 0 ? "" : d->live_url);
        max_staged = d->staged_unix_ms > max_staged ? d->staged_unix_ms : max_staged;
        min_promoted = d->promoted_unix_ms < min_promoted ? d->promoted_unix_ms : min_promoted;
        /* The stage job of each target: when buildpilot created it, when its deployer
         * claimed it, when it was finished (its last update). */
        char job[160];
        snprintf(job, sizeof job, "%s.stage.%s", run->run_id, s_targets[i]);
        int64_t created = s_job_field(&e, job, "created_ms");
        int64_t claimed = s_job_field(&e, job, "claimed_ms");
        int64_t done = s_job_field(&e, job, "updated_ms");
        assert_true(created > 0 && claimed >= created && done >= claimed);
        fprintf(stderr, "stage %-13s created +%lld claimed +%lld done +%lld ms (staged +%lld)\n",
                s_targets[i], 0LL, (long long)(claimed - created), (long long)(done - created),
                (long long)(d->staged_unix_ms - stage->started_unix_ms));
        max_created = created > max_created ? created : max_created;
        max_claimed = claimed > max_claimed ? claimed : max_claimed;
        if (i > 0) /* the cloud ones: each takes hundreds of ms */
            min_done = done < min_done ? done : min_done;
    }
    /* At once: every stage job was dispatched and taken by its deployer before the first
     * cloud stage finished (the local one takes a few ms: it may be done by then); and the
     * four were staged before any was promoted. */
    if (!(max_created < min_done && max_claimed < min_done))
        fail_msg("stages not concurrent: last created %lld, last claimed %lld, first cloud "
                 "stage done %lld",
                 (long long)max_created, (long long)max_claimed, (long long)min_done);
    assert_true(max_staged <= min_promoted);
    char *run1 = sn_strdup(run->run_id);
    sentinel__v1__run__free_unpacked(run, NULL);
    /* Each live URL serves release 1. */
    char *local_live = sn_strdupf("http://127.0.0.1:%d", e.live_port);
    s_expect_identity("local live", local_live, dep1[0], sha1);
    s_expect_identity("cloudflare live", live[1], dep1[1], sha1);
    s_expect_identity("firebase live", live[2], dep1[2], sha1);
    s_expect_identity("railway live", live[3], dep1[3], sha1);
    /* One provider deployment per deploy id and op. */
    char key[160];
    snprintf(key, sizeof key, "%s/preview", dep1[1]);
    assert_int_equal(s_stat(f.cf_port, "deployments_by_deploy_env", key), 1);
    snprintf(key, sizeof key, "%s/production", dep1[1]);
    assert_int_equal(s_stat(f.cf_port, "deployments_by_deploy_env", key), 1);
    assert_int_equal(s_stat(f.cf_port, "deployments_by_deploy_id", dep1[1]), 2);
    char fbid[64];
    snprintf(fbid, sizeof fbid, "%s", dep1[2]);
    for (char *p = fbid; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    assert_int_equal(s_stat(f.fb_port, "versions_by_deploy", fbid), 1);
    snprintf(key, sizeof key, "%s/preview", fbid);
    assert_int_equal(s_stat(f.fb_port, "releases_by_deploy", key), 1);
    snprintf(key, sizeof key, "%s/live", fbid);
    assert_int_equal(s_stat(f.fb_port, "releases_by_deploy", key), 1);
    assert_int_equal(s_stat(f.rw_port, "by_deploy_id", dep1[3]), 1);
    assert_int_equal(s_stat(f.rw_port, NULL, "deployments"), 1);

    /* 2. Railway's next deployment fails: the run fails at stage naming rw; the others
     * were only staged (previews), so nothing live changed and nothing is rolled back. */
    s_control(f.rw_port, "fail_next=1");
    t0 = sn_mono_ms();
    char *sha2 = sn_e2e_commit(&e, "staging", "src/index.html",
                               "<html><body><h1>Hello from Sentinel</h1> two</body></html>\n");
    assert_non_null(sha2);
    run = s_run_of(&e, sha2);
    fprintf(stderr, "run 2 (railway fails its deployment) took %lld ms: %s\n",
            (long long)(sn_mono_ms() - t0), run->reason);
    if (run->state != SENTINEL__V1__RUN_STATE__RUN_FAILED)
        fail_msg("run 2 ended %d: %s", run->state, run->reason);
    assert_non_null(strstr(run->reason, "stage failed on rw"));
    assert_int_equal(s_deploy(run, "rw")->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED);
    for (size_t i = 0; i < 3; i++) {
        const Sentinel__V1__Deploy *d = s_deploy(run, s_targets[i]);
        assert_int_equal(d->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED);
        assert_int_equal(d->promoted_unix_ms, 0);
    }
    const Sentinel__V1__Step *pr = s_step(run, "promote");
    assert_true(!pr || pr->state != SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED);
    char *run2 = sn_strdup(run->run_id);
    char *dep2_cf = sn_strdup(s_deploy(run, "cf")->deploy_id);
    sentinel__v1__run__free_unpacked(run, NULL);
    s_expect_identity("local live after run 2", local_live, dep1[0], sha1);
    s_expect_identity("cloudflare live after run 2", live[1], dep1[1], sha1);
    s_expect_identity("firebase live after run 2", live[2], dep1[2], sha1);
    s_expect_identity("railway live after run 2", live[3], dep1[3], sha1);
    snprintf(key, sizeof key, "%s/production", dep2_cf);
    assert_int_equal(s_stat(f.cf_port, "deployments_by_deploy_env", key), 0);
    assert_int_equal(s_stat(f.rw_port, NULL, "rollbacks"), 0);
    char *rolled = s_event_targets(&e, "deploy.rolled_back", run2);
    assert_string_equal(rolled, "");
    free(rolled);

    /* 3. Cloudflare's next deployment fails: the run fails at stage naming cf. Railway
     * has no preview, so its stage was its live deploy: that one is rolled back
     * (deploymentRollback) and Railway serves release 1 again; local and Firebase were
     * previews only. */
    s_control(f.cf_port, "fail_deploys=1");
    t0 = sn_mono_ms();
    char *sha3 = sn_e2e_commit(&e, "staging", "src/index.html",
                               "<html><body><h1>Hello from Sentinel</h1> three</body></html>\n");
    assert_non_null(sha3);
    run = s_run_of(&e, sha3);
    fprintf(stderr, "run 3 (cloudflare fails its deployment) took %lld ms: %s\n",
            (long long)(sn_mono_ms() - t0), run->reason);
    if (run->state != SENTINEL__V1__RUN_STATE__RUN_ROLLED_BACK)
        fail_msg("run 3 ended %d: %s", run->state, run->reason);
    assert_non_null(strstr(run->reason, "stage failed on cf"));
    assert_int_equal(s_deploy(run, "cf")->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED);
    assert_int_equal(s_deploy(run, "hello-staging")->phase,
                     SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED);
    assert_int_equal(s_deploy(run, "fb")->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED);
    assert_int_equal(s_deploy(run, "rw")->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK);
    char *run3 = sn_strdup(run->run_id);
    sentinel__v1__run__free_unpacked(run, NULL);
    rolled = s_event_targets(&e, "deploy.rolled_back", run3);
    assert_string_equal(rolled, "rw");
    free(rolled);
    assert_int_equal(s_stat(f.rw_port, NULL, "rollbacks"), 1);
    s_expect_identity("local live after run 3", local_live, dep1[0], sha1);
    s_expect_identity("cloudflare live after run 3", live[1], dep1[1], sha1);
    s_expect_identity("firebase live after run 3", live[2], dep1[2], sha1);
    s_expect_identity("railway live after run 3", live[3], dep1[3], sha1);

    /* 4. Railway's next deployment goes live, then crashes: promote fails on rw after the
     * three others went live; all are rolled back (rw too: its stage was live) and serve
     * release 1 again. */
    s_control(f.rw_port, "crash_next=1");
    t0 = sn_mono_ms();
    char *sha4 = sn_e2e_commit(&e, "staging", "src/index.html",
                               "<html><body><h1>Hello from Sentinel</h1> four</body></html>\n");
    assert_non_null(sha4);
    run = s_run_of(&e, sha4);
    fprintf(stderr, "run 4 (railway crashes once live) took %lld ms: %s\n",
            (long long)(sn_mono_ms() - t0), run->reason);
    if (run->state != SENTINEL__V1__RUN_STATE__RUN_ROLLED_BACK)
        fail_msg("run 4 ended %d: %s", run->state, run->reason);
    assert_non_null(strstr(run->reason, "promote failed on rw"));
    assert_non_null(strstr(run->reason, "CRASHED"));
    const Sentinel__V1__Step *rb = s_step(run, "rollback");
    assert_non_null(rb);
    assert_int_equal(rb->state, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED);
    char *dep4[4];
    for (size_t i = 0; i < 4; i++) {
        const Sentinel__V1__Deploy *d = s_deploy(run, s_targets[i]);
        if (d->phase != SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK)
            fail_msg("%s ended in phase %d (%s)", s_targets[i], d->phase, d->error);
        if (i < 3)
            assert_true(d->promoted_unix_ms > 0); /* it was live */
        dep4[i] = sn_strdup(d->deploy_id);
    }
    char *run4 = sn_strdup(run->run_id);
    sentinel__v1__run__free_unpacked(run, NULL);
    rolled = s_event_targets(&e, "deploy.rolled_back", run4);
    fprintf(stderr, "deploy.rolled_back of run 4: %s\n", rolled);
    for (size_t i = 0; i < 4; i++)
        assert_true(s_has_target(rolled, s_targets[i]));
    free(rolled);
    char *promoted = s_event_targets(&e, "deploy.promoted", run4);
    for (size_t i = 0; i < 3; i++)
        assert_true(s_has_target(promoted, s_targets[i]));
    assert_false(s_has_target(promoted, "rw"));
    free(promoted);
    s_expect_identity("local live after rollback", local_live, dep1[0], sha1);
    s_expect_identity("cloudflare live after rollback", live[1], dep1[1], sha1);
    s_expect_identity("firebase live after rollback", live[2], dep1[2], sha1);
    s_expect_identity("railway live after rollback", live[3], dep1[3], sha1);
    /* The providers saw run 4 go live once, and one rollback each. */
    snprintf(key, sizeof key, "%s/production", dep4[1]);
    assert_int_equal(s_stat(f.cf_port, "deployments_by_deploy_env", key), 1);
    snprintf(fbid, sizeof fbid, "%s", dep4[2]);
    for (char *p = fbid; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    snprintf(key, sizeof key, "%s/live", fbid);
    assert_int_equal(s_stat(f.fb_port, "releases_by_deploy", key), 1);
    snprintf(key, sizeof key, "%s/live", dep1[2]);
    for (char *p = key; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    assert_int_equal(s_stat(f.fb_port, "releases_by_deploy", key), 2); /* release 1 again */
    assert_int_equal(s_stat(f.rw_port, "by_deploy_id", dep4[3]), 1);
    assert_int_equal(s_stat(f.rw_port, NULL, "rollbacks"), 2);

    for (size_t i = 0; i < 4; i++) {
        free(dep1[i]);
        free(live[i]);
    }
    for (size_t i = 0; i < 4; i++)
        free(dep4[i]);
    free(local_live);
    free(dep2_cf);
    free(run1);
    free(run2);
    free(run3);
    free(run4);
    free(sha1);
    free(sha2);
    free(sha3);
    free(sha4);
    free(targets);
    int code = sn_e2e_stop(&e);
    s_fakes_stop(&f, getenv("SN_E2E_KEEP") != NULL);
    fprintf(stderr, "e2e cloud test took %lld ms\n", (long long)(sn_mono_ms() - t_start));
    assert_int_equal(code, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e2e_four_targets_and_railway_failing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
