/* Integration test of cloudflare-deployer with real processes: redis-server, the broker,
 * sentinel-agent cloudflare-deployer (1, then 4 processes), a deployment-watcher (the
 * release identity is verified through the URLs the deployer reports), and the fake
 * Cloudflare API (tests/fakes/fake_cloudflare.py: v4 envelope, Bearer token / upload JWT,
 * BLAKE3 hash verification of every manifest entry, a per-token request budget it
 * enforces, injected faults, deployments served on their own ports).
 *
 * Shown: stage = a preview deployment whose URL serves the release and its identity;
 * promote = a production deployment of the same manifest (nothing uploaded again); a
 * second release uploads only the changed files; a repeated promote makes no second
 * deployment; rollback returns to the previous production deployment (and a retry stays
 * there; a deploy that never went live has nothing to undo; a preview is refused); a
 * deployment failing in its deploy stage fails the op with the log's last line; 429 with
 * Retry-After is waited out; a 5xx burst, a hang and HTML-with-200 are retried on safe
 * calls, and on the (unsafe) create the deployer lists before it creates again, so each
 * deploy id has exactly one deployment; a worker killed (-9) while following its
 * deployment, re-dispatched through the ledger, resumes it without a second deployment;
 * four processes sharing one token never pass the budget the fake enforces. */
#include "sn_mesh.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "sentinel/sn_artifact.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_leader.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_log.h"

#define SERVICE "deploy.cloudflare"
#define BUDGET 20
#define BUDGET_WINDOW_MS 2000

typedef struct {
    sn_mesh_t mesh;
    sn_config_t cfg;
    sn_artifact_t *store;
    char sha1[SN_ARTIFACT_SHA_LEN + 1];
    char sha2[SN_ARTIFACT_SHA_LEN + 1];
    int port;
    pid_t fake;
    char *fake_log;
    char *ready;
    sn_http_t *http;
    size_t deployer;
    int deployers;
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

/* GET @url; returns the status (0 on a transport error) and the body in *body (caller
 * frees; may be NULL). */
static long s_get(const char *url, char **body)
{
    sn_http_request_t req = {.url = url, .timeout_ms = 5000};
    sn_http_response_t resp;
    long status = 0;
    if (sn_http_perform(s_fix.http, &req, &resp) == SN_OK)
        status = resp.status;
    if (body)
        *body = sn_strdup(resp.body ? resp.body : "");
    sn_http_response_fini(&resp);
    return status;
}

static void s_control(const char *query)
{
    char *url = sn_strdupf("http://127.0.0.1:%d/__control?%s", s_fix.port, query);
    assert_int_equal(s_get(url, NULL), 200);
    free(url);
}

/* The fake's /__stats (caller json_decref's). */
static json_t *s_stats(void)
{
    char *url = sn_strdupf("http://127.0.0.1:%d/__stats", s_fix.port);
    char *body = NULL;
    assert_int_equal(s_get(url, &body), 200);
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j);
    free(body);
    free(url);
    return j;
}

/* An integer under /__stats (@sub: a nested object's key, or NULL). */
static long s_stat(const char *key, const char *sub)
{
    json_t *j = s_stats();
    json_t *v = json_object_get(j, key);
    if (sub)
        v = json_object_get(v, sub);
    long n = json_is_integer(v) ? (long)json_integer_value(v) : 0;
    json_decref(j);
    return n;
}

static uint8_t *s_pack_request(const char *op, const char *deploy_id, const char *target,
                               const char *sha, const char *commit, const char *to,
                               const char *job_id, size_t *len)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &s_fix.mesh.source, "deploy.request", id);
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    d.deploy_id = (char *)deploy_id;
    d.run_id = (char *)deploy_id; /* one run per deploy here: its own preview branch */
    d.project = "hello";
    d.environment = "production";
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
    uint8_t *bytes = sn_envelope_pack(&env, len);
    sn_envelope_fini_labels(&env);
    return bytes;
}

/* Calls the deployer; the unpacked reply (caller frees) or NULL on a NAK or timeout. */
static sn_envelope_t *s_call(const char *op, const char *deploy_id, const char *target,
                             const char *sha, const char *commit, const char *to,
                             const char *job_id)
{
    size_t len = 0;
    uint8_t *bytes = s_pack_request(op, deploy_id, target, sha, commit, to, job_id, &len);
    uint8_t *out = NULL;
    size_t out_len = 0;
    sn_nak_reason_t reason = SN_NAK_NONE;
    sn_rc_t rc =
        sn_rpc_call(s_fix.mesh.client, SERVICE, bytes, len, 45000, &out, &out_len, &reason);
    free(bytes);
    sn_envelope_t *reply = NULL;
    if (rc == SN_OK)
        reply = sn_envelope_unpack(out, out_len, SN_MAX_FRAME_BYTES, NULL);
    else
        print_error("%s %s: rpc rc=%s nak=%d\n", op, deploy_id, sn_rc_str(rc), (int)reason);
    free(out);
    return reply;
}

/* Calls and checks ok == @ok (and a reason containing @reason_part). Caller frees. */
static sn_envelope_t *s_expect(bool ok, const char *reason_part, const char *op,
                               const char *deploy_id, const char *target, const char *sha,
                               const char *to)
{
    sn_envelope_t *r = s_call(op, deploy_id, target, sha, "c0ffee", to, NULL);
    assert_non_null(r);
    assert_int_equal(r->body_case, SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT);
    const Sentinel__V1__DeployResult *res = r->deploy_result;
    if (res->ok != ok || (reason_part && !strstr(res->reason, reason_part)))
        print_error("%s %s: ok=%d reason=%s\n", op, deploy_id, res->ok, res->reason);
    assert_int_equal(res->ok, ok);
    if (reason_part)
        assert_non_null(strstr(res->reason, reason_part));
    assert_non_null(res->deploy);
    return r;
}

/* Fetches @base + @path and checks the status is 200 and the body has @needle. */
static void s_expect_body(const char *base, const char *path, const char *needle)
{
    size_t n = strlen(base);
    char *url = sn_strdupf("%.*s%s", (int)(n && base[n - 1] == '/' ? n - 1 : n), base, path);
    char *body = NULL;
    long st = s_get(url, &body);
    if (st != 200 || !strstr(body, needle))
        print_error("GET %s: %ld %s (want %s)\n", url, st, body, needle);
    assert_int_equal(st, 200);
    assert_non_null(strstr(body, needle));
    free(body);
    free(url);
}

/* verify.check through deployment-watcher: @url serves release @deploy_id. */
static void s_verify(const char *url, const char *deploy_id, bool want_ok)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &s_fix.mesh.source, "verify.request", id);
    Sentinel__V1__VerifyRequest vr = SENTINEL__V1__VERIFY_REQUEST__INIT;
    vr.deploy_id = (char *)deploy_id;
    vr.url = (char *)url;
    vr.expect_status = 200;
    vr.expect_deploy_id = (char *)deploy_id;
    vr.expect_commit = "c0ffee";
    vr.consecutive = 2;
    vr.interval_ms = 50;
    vr.deadline_ms = want_ok ? 5000 : 600;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_VERIFY_REQUEST;
    env.verify_request = &vr;
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&env, &len);
    uint8_t *out = NULL;
    size_t out_len = 0;
    sn_nak_reason_t nak = SN_NAK_NONE;
    sn_rc_t rc =
        sn_rpc_call(s_fix.mesh.client, "verify.check", bytes, len, 15000, &out, &out_len, &nak);
    free(bytes);
    assert_int_equal(rc, SN_OK);
    sn_envelope_t *r = sn_envelope_unpack(out, out_len, SN_MAX_FRAME_BYTES, NULL);
    free(out);
    assert_non_null(r);
    assert_int_equal(r->body_case, SENTINEL__V1__ENVELOPE__BODY_VERIFY_RESULT);
    if (r->verify_result->ok != want_ok)
        print_error("verify %s for %s: ok=%d reason=%s\n", url, deploy_id, r->verify_result->ok,
                    r->verify_result->reason);
    assert_int_equal(r->verify_result->ok, want_ok);
    sn_envelope_free(&r);
}

static void s_spawn_deployer(void)
{
    sn_mesh_t *m = &s_fix.mesh;
    char instance[64];
    snprintf(instance, sizeof instance, "cf-deployer-%zu", m->agent_count + 1);
    s_fix.deployer = sn_mesh_agent_bin(m, "sentinel-agent", "cloudflare-deployer", instance);
}

static bool s_fake_ready(void *arg)
{
    (void)arg;
    struct stat sb;
    return stat(s_fix.ready, &sb) == 0 && sb.st_size > 0;
}

/* ---- set-up ------------------------------------------------------------------------------ */

static int s_setup(void **state)
{
    memset(&s_fix, 0, sizeof s_fix);
    s_fix.port = sn_test_free_port();
    char *yaml = sn_strdupf("targets:\n"
                            "  - name: cf\n"
                            "    type: cloudflare_pages\n"
                            "    api_base: http://127.0.0.1:%d/client/v4\n"
                            "    token: tok-main\n"
                            "    account_id: acct0123\n"
                            "    project: site\n"
                            "    production_branch: main\n"
                            "    poll_interval_ms: 50\n"
                            "    request_timeout_ms: 1500\n"
                            "    max_attempts: 5\n"
                            "  - name: cfb\n"
                            "    type: cloudflare_pages\n"
                            "    api_base: http://127.0.0.1:%d/client/v4/\n"
                            "    token: tok-budget\n"
                            "    account_id: acct0123\n"
                            "    project: site\n"
                            "    poll_interval_ms: 50\n"
                            "    budget_requests: %d\n"
                            "    budget_window_s: %d\n"
                            "  - name: cfx\n"
                            "    type: cloudflare_pages\n"
                            "    api_base: http://127.0.0.1:%d/client/v4\n"
                            "    token: tok-flaky\n"
                            "    account_id: acct0123\n"
                            "    project: site\n"
                            "    poll_interval_ms: 50\n"
                            "  - name: cfy\n"
                            "    type: cloudflare_pages\n"
                            "    api_base: http://127.0.0.1:%d/client/v4\n"
                            "    token: tok-html\n"
                            "    account_id: acct0123\n"
                            "    project: site\n"
                            "    poll_interval_ms: 50\n"
                            "    max_attempts: 2\n"
                            "  - name: cfbad\n"
                            "    type: cloudflare_pages\n"
                            "    api_base: http://127.0.0.1:%d/client/v4\n"
                            "    token: tok-wrong\n"
                            "    account_id: acct0123\n"
                            "    project: site\n"
                            "  - name: local\n"
                            "    type: local_static\n"
                            "    listen: 127.0.0.1:1\n"
                            "    preview_listen: 127.0.0.1:2\n",
                            s_fix.port, s_fix.port, BUDGET, BUDGET_WINDOW_MS / 1000, s_fix.port,
                            s_fix.port, s_fix.port);
    bool ok = sn_mesh_start(&s_fix.mesh, "cfdeploy", yaml);
    free(yaml);
    assert_true(ok);
    char err[512] = "";
    if (sn_config_load(s_fix.mesh.config, &s_fix.cfg, err, sizeof err) != SN_OK)
        print_error("config: %s\n", err);
    assert_string_equal(err, "");

    /* The fake. */
    s_fix.ready = sn_strdupf("%s/fake.ready", s_fix.mesh.dir);
    s_fix.fake_log = sn_strdupf("%s/fake.log", s_fix.mesh.dir);
    char *script = sn_strdupf("%s/tests/fakes/fake_cloudflare.py", SN_SOURCE_DIR);
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", s_fix.port);
    char *argv[] = {"/usr/bin/python3", script,      "--port",   port_s,     "--ready",
                    s_fix.ready,        "--token",   "tok-main", "--token",  "tok-budget",
                    "--token",          "tok-flaky", "--token",  "tok-html", "--account",
                    "acct0123",         "--project", "site",     NULL};
    s_fix.fake = sn_test_spawn(argv, s_fix.fake_log);
    free(script);
    assert_true(s_fix.fake > 0);
    assert_true(sn_test_wait_for(s_fake_ready, NULL, 10000));
    s_fix.http = sn_http_new();
    assert_non_null(s_fix.http);

    /* Two releases in the store the deployer uses: the second changes index.html only. */
    s_fix.store = sn_artifact_new(s_fix.cfg.artifact_dir, NULL);
    assert_non_null(s_fix.store);
    for (int i = 1; i <= 2; i++) {
        char *src = sn_strdupf("%s/src%d", s_fix.mesh.dir, i);
        char *css = sn_strdupf("%s/css", src);
        assert_int_equal(mkdir(src, 0755), 0);
        assert_int_equal(mkdir(css, 0755), 0);
        char *p = sn_strdupf("%s/index.html", src);
        s_write_file(p, i == 1 ? "<h1>cloudflare one</h1>\n" : "<h1>cloudflare two</h1>\n");
        free(p);
        p = sn_strdupf("%s/site.css", css);
        s_write_file(p, "body { color: #333; }\n");
        free(p);
        p = sn_strdupf("%s/LICENSE", src);
        s_write_file(p, "no extension here\n");
        free(p);
        p = sn_strdupf("%s/_headers", src);
        s_write_file(p, "/*\n  X-Frame-Options: DENY\n");
        free(p);
        assert_int_equal(
            sn_artifact_put_dir(s_fix.store, src, i == 1 ? s_fix.sha1 : s_fix.sha2, NULL), SN_OK);
        free(css);
        free(src);
    }

    sn_mesh_agent_bin(&s_fix.mesh, "sentinel-agent", "deployment-watcher", "watcher-1");
    s_spawn_deployer();
    assert_true(sn_mesh_wait_service(&s_fix.mesh, SERVICE, 1, 10000));
    assert_true(sn_mesh_wait_service(&s_fix.mesh, "verify.check", 1, 10000));
    *state = &s_fix;
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    int bad = 0;
    if (s_fix.fake > 0 && sn_test_stop(s_fix.fake, SIGTERM, 5000) < 0)
        bad++;
    sn_http_destroy(&s_fix.http);
    bad += sn_mesh_stop(&s_fix.mesh);
    sn_artifact_destroy(&s_fix.store);
    sn_config_fini(&s_fix.cfg);
    free(s_fix.ready);
    free(s_fix.fake_log);
    return bad == 0 ? 0 : -1;
}

/* ---- tests -------------------------------------------------------------------------------- */

/* Every test starts without injected faults. */
static int s_clean(void **state)
{
    (void)state;
    s_control("rate_limit_next=0&error_next=0&hang_next=0&html_next=0&fault_path=&fault_method="
              "&fail_deploys=0&deploy_latency_ms=0");
    return 0;
}

static char s_prod1[64], s_prod2[64];

static void test_cloudflare_full_deploy(void **state)
{
    (void)state;
    /* stage: a preview deployment serving the release and its identity. */
    sn_envelope_t *r = s_expect(true, NULL, "stage", "d1", "cf", s_fix.sha1, NULL);
    Sentinel__V1__Deploy *d = r->deploy_result->deploy;
    assert_int_equal(d->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED);
    assert_string_equal(d->provider, "cloudflare_pages");
    assert_int_equal(strlen(d->provider_deployment_id), 36);
    assert_string_equal(d->release_id, d->provider_deployment_id);
    assert_true(strncmp(d->preview_url, "http://127.0.0.1:", 17) == 0);
    s_expect_body(d->preview_url, "/", "cloudflare one");
    s_expect_body(d->preview_url, "/css/site.css", "color");
    s_expect_body(d->preview_url, "/.well-known/sentinel-release.json", "\"deployId\":\"d1\"");
    s_verify(d->preview_url, "d1", true);
    s_verify(d->preview_url, "d0", false); /* another identity is refused */
    char *stage_id = sn_strdup(d->provider_deployment_id);
    sn_envelope_free(&r);
    /* index.html, css/site.css, LICENSE, the identity; _headers went as a form field. */
    assert_int_equal(s_stat("files_uploaded", NULL), 4);
    assert_int_equal(s_stat("hash_mismatches", NULL), 0);
    assert_int_equal(s_stat("deployments_by_deploy_env", "d1/preview"), 1);
    /* The record names the deployment. */
    char *rec = sn_mesh_hget(&s_fix.mesh, "provider:deploy:d1", "stage.deployment_id");
    assert_non_null(rec);
    assert_string_equal(rec, stage_id);
    free(rec);

    /* promote: a production deployment of the same manifest, nothing uploaded again. */
    r = s_expect(true, NULL, "promote", "d1", "cf", s_fix.sha1, NULL);
    d = r->deploy_result->deploy;
    assert_int_equal(d->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE);
    assert_string_not_equal(d->provider_deployment_id, stage_id);
    assert_string_equal(d->previous_release_id, "");
    snprintf(s_prod1, sizeof s_prod1, "%s", d->release_id);
    s_expect_body(d->live_url, "/", "cloudflare one");
    s_verify(d->live_url, "d1", true);
    char *live1 = sn_strdup(d->live_url);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("files_uploaded", NULL), 4);
    assert_int_equal(s_stat("deployments_by_deploy_env", "d1/production"), 1);

    /* A second release: only the changed files (index.html and the identity) go up. */
    r = s_expect(true, NULL, "stage", "d2", "cf", s_fix.sha2, NULL);
    s_expect_body(r->deploy_result->deploy->preview_url, "/", "cloudflare two");
    sn_envelope_free(&r);
    assert_int_equal(s_stat("files_uploaded", NULL), 6);
    r = s_expect(true, NULL, "promote", "d2", "cf", s_fix.sha2, NULL);
    d = r->deploy_result->deploy;
    assert_string_equal(d->previous_release_id, s_prod1);
    assert_string_equal(d->live_url, live1);
    snprintf(s_prod2, sizeof s_prod2, "%s", d->release_id);
    sn_envelope_free(&r);
    s_expect_body(live1, "/", "cloudflare two");
    s_verify(live1, "d2", true);
    /* A repeated promote (a lost reply): the same deployment, no second one. */
    r = s_expect(true, NULL, "promote", "d2", "cf", s_fix.sha2, NULL);
    assert_string_equal(r->deploy_result->deploy->release_id, s_prod2);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("deployments_by_deploy_env", "d2/production"), 1);
    assert_int_equal(s_stat("budget_violations", NULL), 0);
    free(live1);
    free(stage_id);
}

static void test_cloudflare_rollback(void **state)
{
    (void)state;
    /* Back from d2 to what was live before it. */
    sn_envelope_t *r = s_expect(true, NULL, "rollback", "d2", "cf", NULL, NULL);
    Sentinel__V1__Deploy *d = r->deploy_result->deploy;
    assert_int_equal(d->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK);
    assert_string_equal(d->release_id, s_prod1);
    assert_string_equal(d->previous_release_id, s_prod2);
    s_expect_body(d->live_url, "/", "cloudflare one");
    s_verify(d->live_url, "d1", true);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("rollbacks", NULL), 1);
    /* A retry finds it live: no second rollback call. */
    r = s_expect(true, NULL, "rollback", "d2", "cf", NULL, NULL);
    assert_string_equal(r->deploy_result->deploy->release_id, s_prod1);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("rollbacks", NULL), 1);
    /* To a named release. */
    r = s_expect(true, NULL, "rollback", "", "cf", NULL, s_prod2);
    s_expect_body(r->deploy_result->deploy->live_url, "/", "cloudflare two");
    sn_envelope_free(&r);
    assert_int_equal(s_stat("rollbacks", NULL), 2);
    /* To a release named by its Sentinel deploy id (what a "rollback to run" names). */
    r = s_expect(true, NULL, "rollback", "", "cf", NULL, "d1");
    assert_string_equal(r->deploy_result->deploy->release_id, s_prod1);
    s_expect_body(r->deploy_result->deploy->live_url, "/", "cloudflare one");
    sn_envelope_free(&r);
    assert_int_equal(s_stat("rollbacks", NULL), 3);
    r = s_expect(false, "not a deployment this deployer made live", "rollback", "", "cf", NULL,
                 "d-unknown");
    sn_envelope_free(&r);
    /* A deploy that never went live: nothing to undo. */
    r = s_expect(true, NULL, "rollback", "d-never", "cf", NULL, NULL);
    assert_int_equal(r->deploy_result->deploy->phase,
                     SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("rollbacks", NULL), 3);
    /* A preview deployment cannot be rolled back to (Cloudflare refuses). */
    char *pid = sn_mesh_hget(&s_fix.mesh, "provider:deploy:d1", "stage.deployment_id");
    r = s_expect(false, "8000036", "rollback", "", "cf", NULL, pid);
    assert_false(r->deploy_result->is_transient);
    sn_envelope_free(&r);
    free(pid);
    /* The first production deploy has nothing before it. */
    r = s_expect(false, "no production deployment before d1", "rollback", "d1", "cf", NULL, NULL);
    sn_envelope_free(&r);
}

static void test_cloudflare_bad_requests(void **state)
{
    (void)state;
    long before = s_stat("requests", NULL);
    sn_envelope_t *r = s_expect(false, "unknown op", "explode", "b1", "cf", s_fix.sha1, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "invalid deploy id", "stage", "../b1", "cf", s_fix.sha1, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "unknown target", "stage", "b1", "local", s_fix.sha1, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "unknown target", "stage", "b1", "nope", s_fix.sha1, NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "invalid artifact", "stage", "b1", "cf", "abc", NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "not in the store", "stage", "b1", "cf",
                 "0000000000000000000000000000000000000000000000000000000000000000", NULL);
    sn_envelope_free(&r);
    r = s_expect(false, "invalid to_release_id", "rollback", "", "cf", NULL, "a/b");
    sn_envelope_free(&r);
    /* None of them reached the provider. */
    assert_int_equal(s_stat("requests", NULL), before);
    /* A refused token: a permanent failure naming the envelope's code. */
    r = s_expect(false, "code 10000", "stage", "b2", "cfbad", s_fix.sha1, NULL);
    assert_false(r->deploy_result->is_transient);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("deployments_by_deploy_id", "b2"), 0);
}

static void test_cloudflare_failed_deploy(void **state)
{
    (void)state;
    s_control("fail_deploys=1");
    sn_envelope_t *r =
        s_expect(false, "failed in stage deploy", "stage", "d3", "cf", s_fix.sha1, NULL);
    assert_false(r->deploy_result->is_transient);
    assert_non_null(strstr(r->deploy_result->reason, "simulated deploy failure"));
    assert_int_equal(r->deploy_result->deploy->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("deployments_by_deploy_id", "d3"), 1);
}

static void test_cloudflare_429_retry_after(void **state)
{
    (void)state;
    s_control("rate_limit_next=1&retry_after=1&fault_path=check-missing");
    long limited = s_stat("rate_limited", NULL);
    int64_t t0 = sn_mono_ms();
    sn_envelope_t *r = s_expect(true, NULL, "stage", "d4", "cf", s_fix.sha1, NULL);
    int64_t ms = sn_mono_ms() - t0;
    sn_envelope_free(&r);
    print_message("429 with Retry-After 1: stage took %lld ms\n", (long long)ms);
    assert_true(ms >= 1000);
    assert_int_equal(s_stat("rate_limited", NULL), limited + 1);
    assert_int_equal(s_stat("deployments_by_deploy_id", "d4"), 1);
    s_control("fault_path=");
}

static void test_cloudflare_5xx_burst(void **state)
{
    (void)state;
    /* On the polls (safe): retried with backoff. */
    s_control("error_next=3&fault_path=/deployments/&fault_method=GET");
    sn_envelope_t *r = s_expect(true, NULL, "stage", "d5", "cf", s_fix.sha1, NULL);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("deployments_by_deploy_id", "d5"), 1);
    /* On the create (unsafe): listed first, then created once. */
    s_control("error_next=1&fault_path=/deployments&fault_method=POST");
    r = s_expect(true, NULL, "stage", "d6", "cf", s_fix.sha1, NULL);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("deployments_by_deploy_id", "d6"), 1);
    /* More 5xx than the attempt budget (on token tok-flaky): a transient failure, no
     * deployment; the five failures in a row opened that token's circuit breaker, so the
     * next op fails fast without a request. */
    s_control("error_next=50&fault_path=check-missing&fault_method=");
    long before = s_stat("requests", NULL);
    r = s_expect(false, "check-missing", "stage", "d7", "cfx", s_fix.sha1, NULL);
    assert_true(r->deploy_result->is_transient);
    assert_non_null(strstr(r->deploy_result->reason, "attempt 5/5"));
    sn_envelope_free(&r);
    assert_int_equal(s_stat("deployments_by_deploy_id", "d7"), 0);
    assert_int_equal(s_stat("requests", NULL), before + 6); /* token + 5 check-missing */
    s_control("error_next=0&fault_path=");
    r = s_expect(false, "circuit open", "stage", "d7", "cfx", s_fix.sha1, NULL);
    assert_true(r->deploy_result->is_transient);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("requests", NULL), before + 6);
}

static void test_cloudflare_hang(void **state)
{
    (void)state;
    /* A hang on a safe call: the 1.5 s timeout, then a retry. */
    s_control("hang_next=1&hang_ms=4000&fault_path=upload-token");
    int64_t t0 = sn_mono_ms();
    sn_envelope_t *r = s_expect(true, NULL, "stage", "d8", "cf", s_fix.sha1, NULL);
    sn_envelope_free(&r);
    assert_true(sn_mono_ms() - t0 >= 1500);
    /* A hang on the create: listed (not made), created once. */
    s_control("hang_next=1&hang_ms=4000&fault_path=/deployments&fault_method=POST");
    r = s_expect(true, NULL, "stage", "d9", "cf", s_fix.sha1, NULL);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("deployments_by_deploy_id", "d9"), 1);
    s_control("fault_path=&fault_method=");
}

static void test_cloudflare_html_200(void **state)
{
    (void)state;
    s_control("html_next=1&fault_path=upsert-hashes");
    sn_envelope_t *r = s_expect(true, NULL, "stage", "d10", "cf", s_fix.sha1, NULL);
    sn_envelope_free(&r);
    s_control("html_next=1&fault_path=/deployments&fault_method=POST");
    r = s_expect(true, NULL, "stage", "d11", "cf", s_fix.sha1, NULL);
    sn_envelope_free(&r);
    assert_int_equal(s_stat("deployments_by_deploy_id", "d11"), 1);
    /* HTML on every poll (token tok-html): never taken for a result. */
    s_control("html_next=50&fault_path=/deployments/&fault_method=GET");
    r = s_expect(false, "not JSON", "stage", "d12", "cfy", s_fix.sha1, NULL);
    assert_true(r->deploy_result->is_transient);
    sn_envelope_free(&r);
    s_control("html_next=0&fault_path=&fault_method=");
    assert_int_equal(s_stat("budget_violations", NULL), 0);
}

/* GET/POST on the fake's API with Bearer @auth; the status, the body in *out (caller
 * frees). */
static long s_api(const char *method, const char *path, const char *auth, const char *ctype,
                  const char *body, char **out)
{
    char *url = sn_strdupf("http://127.0.0.1:%d/client/v4%s", s_fix.port, path);
    char *a = sn_strdupf("Authorization: Bearer %s", auth);
    char *c = ctype ? sn_strdupf("Content-Type: %s", ctype) : NULL;
    const char *headers[] = {a, c, NULL};
    sn_http_request_t req = {.method = method,
                             .url = url,
                             .headers = headers,
                             .body = body,
                             .body_len = body ? strlen(body) : 0,
                             .timeout_ms = 5000};
    sn_http_response_t resp;
    long status = 0;
    if (sn_http_perform(s_fix.http, &req, &resp) == SN_OK)
        status = resp.status;
    *out = sn_strdup(resp.body ? resp.body : "");
    sn_http_response_fini(&resp);
    free(c);
    free(a);
    free(url);
    return status;
}

/* The fake really checks hashes: content whose BLAKE3 is not its key is refused at the
 * deployment, so the deployer's deploys passing means its hashes are Cloudflare's. It
 * also keeps the two credentials apart. */
static void test_cloudflare_fake_checks_hashes(void **state)
{
    (void)state;
    const char *proj = "/accounts/acct0123/pages/projects/site";
    char *body = NULL;
    char *path = sn_strdupf("%s/upload-token", proj);
    assert_int_equal(s_api("GET", path, "tok-main", NULL, NULL, &body), 200);
    free(path);
    json_t *j = json_loads(body, 0, NULL);
    free(body);
    char *jwt = sn_strdup(json_string_value(json_object_get(json_object_get(j, "result"), "jwt")));
    json_decref(j);
    assert_int_equal(s_api("POST", "/pages/assets/check-missing", "tok-main", "application/json",
                           "{\"hashes\":[]}", &body),
                     401);
    free(body);
    path = sn_strdupf("%s/deployments", proj);
    assert_int_equal(s_api("GET", path, jwt, NULL, NULL, &body), 401);
    free(body);
    /* "aGk=" is base64("hi"); the key claims another content. */
    const char *key = "0123456789abcdef0123456789abcdef";
    char *up = sn_strdupf("[{\"key\":\"%s\",\"value\":\"aGk=\",\"metadata\":{\"contentType\":"
                          "\"text/plain\"},\"base64\":true}]",
                          key);
    assert_int_equal(s_api("POST", "/pages/assets/upload", jwt, "application/json", up, &body),
                     200);
    free(body);
    free(up);
    char *mp = sn_strdupf("--b\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n"
                          "{\"/hi.txt\":\"%s\"}\r\n--b\r\nContent-Disposition: form-data; "
                          "name=\"branch\"\r\n\r\nx\r\n--b--\r\n",
                          key);
    long before = s_stat("hash_mismatches", NULL);
    assert_int_equal(s_api("POST", path, "tok-main", "multipart/form-data; boundary=b", mp, &body),
                     400);
    assert_non_null(strstr(body, "does not match"));
    free(body);
    assert_int_equal(s_stat("hash_mismatches", NULL), before + 1);
    free(mp);
    free(path);
    free(jwt);
}

typedef struct {
    sn_ledger_t *ledger;
    uint64_t fence;
    const char *job;
} s_redispatch_t;

static bool s_redispatched(void *arg)
{
    s_redispatch_t *w = arg;
    sn_ledger_redispatch_t out;
    memset(&out, 0, sizeof out);
    bool found = false;
    if (sn_ledger_redispatch(w->ledger, w->fence, "buildpilot", &out) == SN_OK)
        for (size_t i = 0; i < out.requeued.count; i++)
            found = found || strcmp(out.requeued.ids[i], w->job) == 0;
    sn_ledger_redispatch_fini(&out);
    return found;
}

static bool s_recorded(void *arg)
{
    char *v = sn_mesh_hget(&s_fix.mesh, "provider:deploy:dk", "stage.deployment_id");
    bool ok = v && strlen(v) == 36;
    if (ok)
        snprintf((char *)arg, 64, "%s", v);
    free(v);
    return ok;
}

static void test_cloudflare_kill_resume(void **state)
{
    (void)state;
    sn_redis_opts_t ro = {.unix_path = s_fix.mesh.redis.unix_path, .namespace_ = s_fix.mesh.ns};
    sn_redis_t *redis = sn_redis_new(&ro);
    sn_source_t src;
    sn_source_init(&src, "test", "ledger");
    sn_leader_t *leader = sn_leader_new(redis, "buildpilot", "test-lead", 30000);
    uint64_t fence = 0;
    assert_int_equal(sn_leader_try(leader, &fence), SN_OK);
    sn_ledger_t *ledger = sn_ledger_new(redis, &src);
    Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
    spec.job_id = "job-stage-dk";
    spec.kind = "deploy.stage";
    spec.service = SERVICE;
    spec.owner_role = "buildpilot";
    spec.lease_ms = 1000;
    assert_int_equal(sn_ledger_create(ledger, fence, "buildpilot", &spec), SN_OK);

    /* A slow deployment; the worker is killed while it follows it. */
    s_control("deploy_latency_ms=5000");
    size_t len = 0;
    uint8_t *bytes =
        s_pack_request("stage", "dk", "cf", s_fix.sha1, "c0ffee", NULL, "job-stage-dk", &len);
    uint64_t rid = 0;
    assert_int_equal(sn_rpc_send(s_fix.mesh.client, SERVICE, bytes, len, 30000, 1, &rid), SN_OK);
    free(bytes);
    char recorded[64] = "";
    assert_true(sn_test_wait_for(s_recorded, recorded, 15000));
    sn_mesh_agent_t *a = &s_fix.mesh.agents[s_fix.deployer];
    assert_true(sn_test_stop(a->pid, SIGKILL, 5000) >= 0);
    a->pid = 0;
    (void)sn_rpc_cancel(s_fix.mesh.client, rid, 1);
    assert_int_equal(s_stat("deployments_by_deploy_id", "dk"), 1);

    /* The lease lapses; the leader re-dispatches; a new worker resumes. */
    s_redispatch_t w = {ledger, fence, "job-stage-dk"};
    assert_true(sn_test_wait_for(s_redispatched, &w, 10000));
    s_spawn_deployer();
    assert_true(sn_mesh_wait_service(&s_fix.mesh, SERVICE, 1, 10000));
    sn_envelope_t *r = NULL;
    for (int i = 0; i < 5 && !r; i++) /* the broker may still list the dead worker */
        r = s_call("stage", "dk", "cf", s_fix.sha1, "c0ffee", NULL, "job-stage-dk");
    assert_non_null(r);
    if (!r->deploy_result->ok)
        print_error("resume: %s\n", r->deploy_result->reason);
    assert_true(r->deploy_result->ok);
    assert_string_equal(r->deploy_result->deploy->provider_deployment_id, recorded);
    s_expect_body(r->deploy_result->deploy->preview_url, "/", "cloudflare one");
    sn_envelope_free(&r);
    assert_int_equal(s_stat("deployments_by_deploy_id", "dk"), 1);
    sn_ledger_job_t job;
    assert_int_equal(sn_ledger_get(ledger, "job-stage-dk", &job), SN_OK);
    assert_int_equal(job.state, SN_JOB_DONE);
    assert_true(job.ok);
    assert_int_equal(job.epoch, 2);
    sn_ledger_job_fini(&job);
    s_control("deploy_latency_ms=0");

    sn_ledger_destroy(&ledger);
    sn_leader_destroy(&leader);
    sn_redis_destroy(&redis);
}

/* ---- four processes, one token, a small budget ---------------------------------------------- */

#define BUDGET_DEPLOYS 8

static void test_cloudflare_budget_shared(void **state)
{
    (void)state;
    char q[128];
    snprintf(q, sizeof q, "budget=%d&window_ms=%d", BUDGET, BUDGET_WINDOW_MS);
    s_control(q);
    for (int i = 0; i < 3; i++)
        s_spawn_deployer();
    assert_true(sn_mesh_wait_service(&s_fix.mesh, SERVICE, 4, 15000));
    long before = s_stat("by_token", "t1");
    /* Eight deploys at once over four processes on token tok-budget. */
    uint64_t ids[BUDGET_DEPLOYS];
    for (int i = 0; i < BUDGET_DEPLOYS; i++) {
        char did[16];
        snprintf(did, sizeof did, "bud%d", i);
        size_t len = 0;
        uint8_t *bytes = s_pack_request("stage", did, "cfb", i % 2 ? s_fix.sha1 : s_fix.sha2,
                                        "c0ffee", NULL, NULL, &len);
        assert_int_equal(sn_rpc_send(s_fix.mesh.client, SERVICE, bytes, len, 50000, 1, &ids[i]),
                         SN_OK);
        free(bytes);
    }
    int ok = 0, answered = 0;
    int64_t deadline = sn_mono_ms() + 55000;
    while (answered < BUDGET_DEPLOYS && sn_mono_ms() < deadline) {
        zmq_pollitem_t it = {sn_rpc_socket(s_fix.mesh.client), 0, ZMQ_POLLIN, 0};
        (void)zmq_poll(&it, 1, 100);
        sn_rpc_result_t res;
        while (sn_rpc_recv(s_fix.mesh.client, &res) == SN_OK) {
            bool mine = false;
            for (int i = 0; i < BUDGET_DEPLOYS; i++)
                mine = mine || res.request_id == ids[i];
            if (mine) {
                answered++;
                sn_envelope_t *r = res.is_nak ? NULL
                                              : sn_envelope_unpack(res.body, res.body_len,
                                                                   SN_MAX_FRAME_BYTES, NULL);
                if (r && r->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT &&
                    r->deploy_result->ok)
                    ok++;
                else
                    print_error("budget deploy: %s\n",
                                r && r->deploy_result ? r->deploy_result->reason : "nak");
                sn_envelope_free(&r);
            }
            sn_rpc_result_fini(&res);
        }
    }
    long used = s_stat("by_token", "t1") - before;
    long max_in_window = s_stat("max_in_window", "t1");
    print_message("4 processes, budget %d per %d ms: %d/%d deploys ok, %ld requests, max %ld in "
                  "a window, %ld violations\n",
                  BUDGET, BUDGET_WINDOW_MS, ok, BUDGET_DEPLOYS, used, max_in_window,
                  s_stat("budget_violations", NULL));
    if (s_stat("budget_violations", NULL) != 0) {
        json_t *j = s_stats();
        char *v = json_dumps(json_object_get(j, "last_violation"), JSON_COMPACT);
        print_error("last violation: %s\n", v);
        free(v);
        json_decref(j);
    }
    assert_int_equal(answered, BUDGET_DEPLOYS);
    assert_int_equal(ok, BUDGET_DEPLOYS);
    assert_true(used > 2 * BUDGET); /* the budget was pressed, not idle */
    assert_int_equal(s_stat("budget_violations", NULL), 0);
    assert_true(max_in_window <= BUDGET);
    /* The processes really shared the work. */
    int busy = 0;
    for (size_t i = 0; i < s_fix.mesh.agent_count; i++) {
        sn_mesh_agent_t *a = &s_fix.mesh.agents[i];
        if (a->pid > 0 && strncmp(a->instance, "cf-deployer-", 12) == 0 &&
            sn_test_count_in_file(a->log, "stage ok target=cfb") > 0)
            busy++;
    }
    assert_true(busy >= 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_cloudflare_full_deploy, s_clean),
        cmocka_unit_test_setup(test_cloudflare_rollback, s_clean),
        cmocka_unit_test_setup(test_cloudflare_bad_requests, s_clean),
        cmocka_unit_test_setup(test_cloudflare_failed_deploy, s_clean),
        cmocka_unit_test_setup(test_cloudflare_429_retry_after, s_clean),
        cmocka_unit_test_setup(test_cloudflare_5xx_burst, s_clean),
        cmocka_unit_test_setup(test_cloudflare_hang, s_clean),
        cmocka_unit_test_setup(test_cloudflare_html_200, s_clean),
        cmocka_unit_test_setup(test_cloudflare_fake_checks_hashes, s_clean),
        cmocka_unit_test_setup(test_cloudflare_kill_resume, s_clean),
        cmocka_unit_test_setup(test_cloudflare_budget_shared, s_clean),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
