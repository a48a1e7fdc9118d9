/* Helpers for the Firebase worker integration tests (test_firebase_hosting.c,
 * test_firebase_functions.c): a service-account key generated here (RSA 2048, its public
 * half handed to the fake, which verifies every JWT assertion's signature), the fake
 * (tests/fakes/fake_firebase.py) on a free port, a mesh (redis, broker) with one firebase
 * target pointing at the fake, artifacts in the store, calls with DeployRequest bodies,
 * the fake's control and stats, ledger jobs. Header-only (static functions). */
#ifndef TEST_FIREBASE_UTIL_H
#define TEST_FIREBASE_UTIL_H

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sn_mesh.h"

#include <czmq.h>

#include "sentinel/sn_artifact.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_leader.h"
#include "sentinel/sn_ledger.h"

typedef struct {
    sn_mesh_t mesh;
    sn_config_t cfg;
    sn_artifact_t *store;
    char *dir;
    char *key_file;
    char *pub_file;
    int port;
    pid_t fake;
    char *fake_log;
    char base[64]; /* http://127.0.0.1:PORT */
    sn_http_t *http;
} fbt_t;

SN_UNUSED static void fbt_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

SN_UNUSED static bool fbt_file_exists(void *arg)
{
    return access((const char *)arg, F_OK) == 0;
}

/* Writes the key pair: key JSON (token_uri = the fake's /token) and the public PEM. */
SN_UNUSED static void fbt_make_key(fbt_t *t)
{
    EVP_PKEY *key = EVP_RSA_gen(2048);
    assert_non_null(key);
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL), 1);
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    char *pem = sn_strndup(data, (size_t)n);
    BIO_free(b);
    t->pub_file = sn_strdupf("%s/pub.pem", t->dir);
    FILE *f = fopen(t->pub_file, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PUBKEY(f, key), 1);
    fclose(f);
    EVP_PKEY_free(key);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "type", "service_account", "project_id",
                          "demo-project", "private_key_id", "k1", "private_key", pem,
                          "client_email", "deployer@demo-project.iam.gserviceaccount.com",
                          "token_uri", "http://placeholder.invalid/token");
    char *uri = sn_strdupf("%s/token", t->base);
    json_object_set_new(o, "token_uri", json_string(uri));
    free(uri);
    t->key_file = sn_strdupf("%s/key.json", t->dir);
    assert_int_equal(json_dump_file(o, t->key_file, 0), 0);
    chmod(t->key_file, 0600);
    json_decref(o);
    free(pem);
}

SN_UNUSED static void fbt_start_fake(fbt_t *t)
{
    char *script = sn_strdupf("%s/tests/fakes/fake_firebase.py", SN_SOURCE_DIR);
    char *ready = sn_strdupf("%s/fake.ready", t->dir);
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", t->port);
    t->fake_log = sn_strdupf("%s/fake.log", t->dir);
    char *argv[] = {"/usr/bin/python3",
                    script,
                    "--port",
                    port_s,
                    "--ready",
                    ready,
                    "--public-key",
                    t->pub_file,
                    "--project",
                    "demo-project",
                    "--site",
                    "demo-site",
                    NULL};
    t->fake = sn_test_spawn(argv, t->fake_log);
    assert_true(t->fake > 0);
    assert_true(sn_test_wait_for(fbt_file_exists, ready, 10000));
    free(ready);
    free(script);
}

/* Everything up: key, fake, mesh with target "fb" (and "fbnocreds": a firebase target
 * whose key file does not exist). */
SN_UNUSED static void fbt_setup(fbt_t *t, const char *tag)
{
    memset(t, 0, sizeof *t);
    t->dir = sn_test_tmpdir(tag);
    t->port = sn_test_free_port();
    snprintf(t->base, sizeof t->base, "http://127.0.0.1:%d", t->port);
    fbt_make_key(t);
    fbt_start_fake(t);
    char *yaml = sn_strdupf("targets:\n"
                            "  - name: fb\n"
                            "    type: firebase\n"
                            "    project: demo-project\n"
                            "    site: demo-site\n"
                            "    credentials_file: %s\n"
                            "    api_base: %s/v1beta1\n"
                            "    functions_api_base: %s/v2\n"
                            "    request_timeout_ms: 1500\n"
                            "    max_attempts: 4\n"
                            "    poll_interval_ms: 100\n"
                            "  - name: fbnocreds\n"
                            "    type: firebase\n"
                            "    project: demo-project\n"
                            "    credentials_file: %s/missing.json\n"
                            "    api_base: %s/v1beta1\n",
                            t->key_file, t->base, t->base, t->dir, t->base);
    bool ok = sn_mesh_start(&t->mesh, tag, yaml);
    free(yaml);
    assert_true(ok);
    char err[512] = "";
    if (sn_config_load(t->mesh.config, &t->cfg, err, sizeof err) != SN_OK)
        print_error("config: %s\n", err);
    assert_string_equal(err, "");
    t->store = sn_artifact_new(t->cfg.artifact_dir, NULL);
    assert_non_null(t->store);
    t->http = sn_http_new();
    assert_non_null(t->http);
}

SN_UNUSED static void fbt_teardown(fbt_t *t)
{
    sn_http_destroy(&t->http);
    int bad = sn_mesh_stop(&t->mesh);
    assert_true(sn_test_stop(t->fake, SIGTERM, 5000) >= 0);
    sn_artifact_destroy(&t->store);
    sn_config_fini(&t->cfg);
    sn_test_rmdir(t->dir);
    free(t->dir);
    free(t->key_file);
    free(t->pub_file);
    free(t->fake_log);
    assert_int_equal(bad, 0);
}

/* An artifact from (relative path, content) pairs, NULL-terminated; @sha gets its hash. */
SN_UNUSED static void fbt_artifact(fbt_t *t, const char *name, const char *const *files,
                                   char sha[SN_ARTIFACT_SHA_LEN + 1])
{
    char *root = sn_strdupf("%s/%s", t->dir, name);
    assert_int_equal(mkdir(root, 0755), 0);
    for (size_t i = 0; files[i]; i += 2) {
        char *path = sn_strdupf("%s/%s", root, files[i]);
        for (char *s = path + strlen(root) + 1; *s; s++)
            if (*s == '/') {
                *s = '\0';
                mkdir(path, 0755);
                *s = '/';
            }
        fbt_write(path, files[i + 1]);
        free(path);
    }
    assert_int_equal(sn_artifact_put_dir(t->store, root, sha, NULL), SN_OK);
    free(root);
}

/* Calls @service through @client; returns the reply (caller frees) or NULL on
 * NAK/timeout. */
SN_UNUSED static sn_envelope_t *fbt_call_on(fbt_t *t, sn_rpc_t *client, const char *service,
                                            const char *op, const char *deploy_id,
                                            const char *run_id, const char *target, const char *sha,
                                            const char *to, const char *live_url,
                                            const char *job_id, int timeout_ms)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &t->mesh.source, "deploy.request", id);
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    d.deploy_id = (char *)deploy_id;
    d.run_id = (char *)run_id;
    d.project = "hello";
    d.environment = "staging";
    d.target = (char *)target;
    d.live_url = (char *)(live_url ? live_url : "");
    Sentinel__V1__DeployRequest req = SENTINEL__V1__DEPLOY_REQUEST__INIT;
    req.op = (char *)op;
    req.deploy = &d;
    req.artifact_sha256 = (char *)(sha ? sha : "");
    req.commit = "c0ffee";
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
    sn_rc_t rc = sn_rpc_call(client, service, bytes, len, timeout_ms, &out, &out_len, &reason);
    free(bytes);
    sn_envelope_t *reply = NULL;
    if (rc == SN_OK)
        reply = sn_envelope_unpack(out, out_len, SN_MAX_FRAME_BYTES, NULL);
    free(out);
    return reply;
}

SN_UNUSED static sn_envelope_t *fbt_call(fbt_t *t, const char *service, const char *op,
                                         const char *deploy_id, const char *run_id,
                                         const char *target, const char *sha, const char *to,
                                         const char *live_url, const char *job_id, int timeout_ms)
{
    return fbt_call_on(t, t->mesh.client, service, op, deploy_id, run_id, target, sha, to, live_url,
                       job_id, timeout_ms);
}

/* A stage call as a ledger job from another thread with its own client (a caller that
 * goes on waiting while the test kills the worker). */
typedef struct {
    fbt_t *t;
    const char *service, *deploy_id, *run_id, *sha, *job_id;
    pthread_t th;
    sn_envelope_t *reply;
} fbt_async_t;

static void *fbt_async_main(void *arg)
{
    fbt_async_t *a = arg;
    sn_rpc_t *client = sn_rpc_new(a->t->mesh.rpc, NULL);
    if (client) {
        a->reply = fbt_call_on(a->t, client, a->service, "stage", a->deploy_id, a->run_id, "fb",
                               a->sha, NULL, NULL, a->job_id, 30000);
        sn_rpc_destroy(&client);
    }
    return NULL;
}

SN_UNUSED static void fbt_async_start(fbt_async_t *a)
{
    zsys_init();
    assert_int_equal(pthread_create(&a->th, NULL, fbt_async_main, a), 0);
}

/* Joins; the reply the thread got (NULL: a NAK such as worker-lost, or a timeout). */
SN_UNUSED static sn_envelope_t *fbt_async_join(fbt_async_t *a)
{
    pthread_join(a->th, NULL);
    return a->reply;
}

/* Calls and checks ok == @ok (and the reason contains @part if given). Caller frees. */
SN_UNUSED static sn_envelope_t *fbt_expect(fbt_t *t, bool ok, const char *part, const char *service,
                                           const char *op, const char *deploy_id,
                                           const char *target, const char *sha, const char *to)
{
    sn_envelope_t *r =
        fbt_call(t, service, op, deploy_id, "run-1", target, sha, to, NULL, NULL, 30000);
    assert_non_null(r);
    assert_int_equal(r->body_case, SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT);
    const Sentinel__V1__DeployResult *res = r->deploy_result;
    if (res->ok != ok || (part && (!res->reason || !strstr(res->reason, part))))
        print_error("%s %s %s: ok=%d reason=%s\n", service, op, deploy_id, res->ok, res->reason);
    assert_int_equal(res->ok, ok);
    if (part)
        assert_non_null(strstr(res->reason, part));
    assert_non_null(res->deploy);
    return r;
}

/* GET @path on the fake; the parsed JSON (caller decrefs) or NULL. *status optional. */
SN_UNUSED static json_t *fbt_get_json(fbt_t *t, const char *url, long *status)
{
    sn_http_request_t req = {.url = url, .timeout_ms = 5000};
    sn_http_response_t resp;
    json_t *j = NULL;
    if (sn_http_perform(t->http, &req, &resp) == SN_OK)
        j = json_loadb(resp.body, resp.body_len, 0, NULL);
    if (status)
        *status = resp.status;
    sn_http_response_fini(&resp);
    return j;
}

/* GET @url's body as a string (caller frees); "" on failure. */
SN_UNUSED static char *fbt_get_text(fbt_t *t, const char *url, long *status)
{
    sn_http_request_t req = {.url = url, .timeout_ms = 5000};
    sn_http_response_t resp;
    char *s = sn_strdup("");
    if (sn_http_perform(t->http, &req, &resp) == SN_OK) {
        free(s);
        s = sn_strndup(resp.body, resp.body_len);
    }
    if (status)
        *status = resp.status;
    sn_http_response_fini(&resp);
    return s;
}

SN_UNUSED static void fbt_control(fbt_t *t, const char *query)
{
    char *url = sn_strdupf("%s/__control?%s", t->base, query);
    json_t *j = fbt_get_json(t, url, NULL);
    assert_non_null(j);
    json_decref(j);
    free(url);
}

/* An integer from /__stats: a top-level counter, or @key inside the map @map. */
SN_UNUSED static long fbt_stat(fbt_t *t, const char *map, const char *key)
{
    char *url = sn_strdupf("%s/__stats", t->base);
    json_t *j = fbt_get_json(t, url, NULL);
    free(url);
    assert_non_null(j);
    json_t *v = map ? json_object_get(json_object_get(j, map), key) : json_object_get(j, key);
    long n = (long)json_integer_value(v);
    json_decref(j);
    return n;
}

/* A ledger job (lease @lease_ms) created as buildpilot's leader would. */
SN_UNUSED static void fbt_make_job(fbt_t *t, const char *job_id, const char *service,
                                   int64_t lease_ms)
{
    sn_redis_opts_t ro = {.unix_path = t->mesh.redis.unix_path, .namespace_ = t->mesh.ns};
    sn_redis_t *redis = sn_redis_new(&ro);
    sn_source_t src;
    sn_source_init(&src, "test", "ledger");
    sn_leader_t *leader = sn_leader_new(redis, "buildpilot", "test-lead", 10000);
    uint64_t fence = 0;
    assert_int_equal(sn_leader_try(leader, &fence), SN_OK);
    sn_ledger_t *ledger = sn_ledger_new(redis, &src);
    Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
    spec.job_id = (char *)job_id;
    spec.kind = "deploy.stage";
    spec.service = (char *)service;
    spec.owner_role = "buildpilot";
    spec.lease_ms = lease_ms;
    assert_int_equal(sn_ledger_create(ledger, fence, "buildpilot", &spec), SN_OK);
    sn_ledger_destroy(&ledger);
    sn_leader_destroy(&leader);
    sn_redis_destroy(&redis);
}

#endif
