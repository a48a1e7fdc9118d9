/* Integration test of hosting-propagator (and sn_gauth's token exchange) with real
 * processes: redis-server, the broker, a sentinel-agent hosting-propagator, and the fake
 * Google (tests/fakes/fake_firebase.py), which verifies every JWT assertion's RS256
 * signature with the public key of the key generated here, enforces the Hosting REST
 * contract (sha256(gzip) of every upload, CREATED -> FINALIZED, releases of FINALIZED
 * versions only) and serves what is released on each channel.
 *
 * Shown: the token (cached: one fetch for two asks, a new one after invalidate, a key the
 * fake does not know refused as invalid_grant, a token endpoint answering HTML with 200 is
 * no token); a full deploy (stage -> preview channel serves the identity, promote -> live,
 * propagation) with one version and one release per channel, also when retried; file
 * hashes equal sha256(gzip(file)) computed here with zlib, and the served bytes equal the
 * files; rollback to the previous version (retried: no second release); failed deploys
 * and bad requests write nothing at the provider; 429 with Retry-After honoured; a 5xx
 * burst retried, a longer one failing transient within the attempt budget; a hang cut by
 * the timeout and retried; HTML with 200 retried; a worker killed mid-upload and the job
 * resumed by another without a second version or release. */
#include "test_firebase_util.h"

#include <zlib.h>

#include "sentinel/sn_crypto.h"
#include "sentinel/sn_gauth.h"

#define SERVICE "firebase.hosting"

static fbt_t s_t;
static char s_sha1[SN_ARTIFACT_SHA_LEN + 1];
static char s_sha2[SN_ARTIFACT_SHA_LEN + 1];
static char s_sha_bad[SN_ARTIFACT_SHA_LEN + 1];
static char s_sha_badcfg[SN_ARTIFACT_SHA_LEN + 1];
static size_t s_agent;

static const char *const s_files1[] = {"firebase.json",
                                       "{\"hosting\": {\"public\": \"public\"}}",
                                       "public/index.html",
                                       "<h1>release one</h1>\n",
                                       "public/css/app.css",
                                       "body { color: #333; }\n",
                                       "README.md",
                                       "not deployed: outside the public dir\n",
                                       NULL};

static void s_spawn_agent(void)
{
    char instance[64];
    snprintf(instance, sizeof instance, "hosting-%zu", s_t.mesh.agent_count + 1);
    s_agent = sn_mesh_agent_bin(&s_t.mesh, "sentinel-agent", "hosting-propagator", instance);
    assert_true(sn_mesh_wait_service(&s_t.mesh, SERVICE, 1, 10000));
}

static int s_setup(void **state)
{
    fbt_setup(&s_t, "fbhost");
    fbt_artifact(&s_t, "a1", s_files1, s_sha1);
    const char *const files2[] = {
        "firebase.json",
        "{\"hosting\": [{\"site\": \"other\", \"public\": \"x\"}, {\"site\": \"demo-site\", "
        "\"public\": \"www\", \"cleanUrls\": true, \"trailingSlash\": false, "
        "\"headers\": [{\"source\": \"**/*.html\", \"headers\": [{\"key\": \"X-Frame-Options\", "
        "\"value\": \"DENY\"}]}], "
        "\"redirects\": [{\"source\": \"/old\", \"destination\": \"/about\", \"type\": 301}], "
        "\"rewrites\": [{\"source\": \"/api/**\", \"function\": {\"functionId\": \"api\", "
        "\"region\": \"us-central1\"}}, {\"source\": \"**\", \"destination\": "
        "\"/index.html\"}]}]}",
        "www/index.html",
        "<h1>release two</h1>\n",
        "www/about.html",
        "<h1>about</h1>\n",
        NULL};
    fbt_artifact(&s_t, "a2", files2, s_sha2);
    const char *const bad[] = {"firebase.json", "{\"hosting\": {\"public\": \"../etc\"}}",
                               "index.html", "x", NULL};
    fbt_artifact(&s_t, "abad", bad, s_sha_bad);
    const char *const badcfg[] = {"firebase.json",
                                  "{\"hosting\": {\"public\": \".\", \"rewrites\": [{\"source\": "
                                  "\"**\", \"destination\": \"/a\", \"function\": \"f\"}]}}",
                                  "index.html", "x", NULL};
    fbt_artifact(&s_t, "abadcfg", badcfg, s_sha_badcfg);
    s_spawn_agent();
    *state = &s_t;
    return 0;
}

static int s_teardown(void **state)
{
    fbt_teardown(&s_t);
    return 0;
}

/* The identity the URL serves: its deployId (caller frees) or "". */
static char *s_identity(const char *base)
{
    char *url = sn_strdupf("%s/.well-known/sentinel-release.json", base);
    json_t *j = fbt_get_json(&s_t, url, NULL);
    free(url);
    const char *d = json_string_value(json_object_get(j, "deployId"));
    char *out = sn_strdup(d ? d : "");
    json_decref(j);
    return out;
}

static sn_envelope_t *s_ok(const char *op, const char *deploy_id, const char *sha)
{
    return fbt_expect(&s_t, true, NULL, SERVICE, op, deploy_id, "fb", sha, NULL);
}

/* sha256(gzip level 9 of @text) computed here with zlib (header mtime 0). */
static void s_gzip_sha(const char *text, char out[SN_SHA256_HEX_LEN + 1])
{
    z_stream zs = {0};
    assert_int_equal(deflateInit2(&zs, 9, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY), Z_OK);
    uint8_t buf[4096];
    zs.next_in = (Bytef *)text;
    zs.avail_in = (uInt)strlen(text);
    zs.next_out = buf;
    zs.avail_out = sizeof buf;
    assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
    uint8_t sum[SN_SHA256_LEN];
    assert_int_equal(sn_sha256(buf, zs.total_out, sum), SN_OK);
    deflateEnd(&zs);
    sn_hex_encode(sum, sizeof sum, out);
}

/* The files map (path -> hash) of the version labelled @label (borrowed from *root). */
static json_t *s_version_files(const char *label, json_t **root)
{
    char *url = sn_strdupf("%s/__versions", s_t.base);
    *root = fbt_get_json(&s_t, url, NULL);
    free(url);
    assert_non_null(*root);
    const char *name;
    json_t *v;
    json_object_foreach(*root, name, v)
    {
        const char *l =
            json_string_value(json_object_get(json_object_get(v, "labels"), "sentinel-deploy"));
        if (l && strcmp(l, label) == 0)
            return json_object_get(v, "files");
    }
    return NULL;
}

/* firebase.json's hosting config reached the version (translated to the REST
 * ServingConfig, which the fake checks and applies). */
static void s_expect_serving_config(const char *preview)
{
    long status = 0;
    char *url = sn_strdupf("%s/some/deep/link", preview); /* rewrite ** -> /index.html */
    char *body = fbt_get_text(&s_t, url, &status);
    assert_int_equal(status, 200);
    assert_string_equal(body, "<h1>release two</h1>\n");
    free(body);
    free(url);
    url = sn_strdupf("%s/about", preview); /* cleanUrls */
    body = fbt_get_text(&s_t, url, &status);
    assert_int_equal(status, 200);
    assert_string_equal(body, "<h1>about</h1>\n");
    free(body);
    free(url);
    url = sn_strdupf("%s/old", preview);
    body = fbt_get_text(&s_t, url, &status);
    assert_int_equal(status, 301);
    free(body);
    free(url);
    char *vurl = sn_strdupf("%s/__versions", s_t.base);
    json_t *root = fbt_get_json(&s_t, vurl, NULL);
    free(vurl);
    const char *name;
    json_t *v, *cfg = NULL;
    json_object_foreach(root, name, v)
    {
        const char *l =
            json_string_value(json_object_get(json_object_get(v, "labels"), "sentinel-deploy"));
        if (l && strcmp(l, "d2") == 0)
            cfg = json_object_get(v, "config");
    }
    assert_non_null(cfg);
    assert_string_equal(json_string_value(json_object_get(cfg, "trailingSlashBehavior")), "REMOVE");
    json_t *rw = json_array_get(json_object_get(cfg, "rewrites"), 0);
    assert_string_equal(json_string_value(json_object_get(rw, "glob")), "/api/**");
    assert_string_equal(json_string_value(json_object_get(rw, "function")), "api");
    json_t *hd = json_array_get(json_object_get(cfg, "headers"), 0);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(hd, "headers"), "X-Frame-Options")),
        "DENY");
    json_decref(root);
}

/* ---- sn_gauth against the fake ----------------------------------------------------------- */

typedef struct {
    sn_gauth_t *g;
    sn_http_t *http;
    const char *first;
} s_token_wait_t;

static bool s_token_changed(void *arg)
{
    s_token_wait_t *w = arg;
    char *tok = NULL;
    char why[256];
    bool changed = sn_gauth_token(w->g, w->http, 5000, &tok, why, sizeof why) == SN_OK &&
                   strcmp(tok, w->first) != 0;
    sn_gauth_token_free(&tok);
    return changed;
}

static void test_firebase_hosting_token_exchange(void **state)
{
    sn_gauth_t *g = sn_gauth_new(s_t.key_file, NULL, NULL);
    assert_non_null(g);
    sn_http_t *http = sn_http_new();
    char *tok = NULL, *tok2 = NULL;
    char why[256];
    long before = fbt_stat(&s_t, NULL, "tokens_issued");
    assert_int_equal(sn_gauth_token(g, http, 5000, &tok, why, sizeof why), SN_OK);
    assert_non_null(strstr(tok, "fake-at-"));
    assert_int_equal(sn_gauth_token(g, http, 5000, &tok2, why, sizeof why), SN_OK);
    assert_string_equal(tok, tok2); /* cached */
    assert_int_equal(sn_gauth_fetch_count(g), 1);
    assert_int_equal(fbt_stat(&s_t, NULL, "tokens_issued"), before + 1);
    sn_gauth_token_free(&tok2);
    sn_gauth_invalidate(g);
    assert_int_equal(sn_gauth_token(g, http, 5000, &tok2, why, sizeof why), SN_OK);
    assert_string_not_equal(tok, tok2);
    assert_int_equal(sn_gauth_fetch_count(g), 2);
    sn_gauth_token_free(&tok);
    sn_gauth_token_free(&tok2);
    assert_null(tok);

    /* A token that lives 1 s is handed out for half of that, then replaced. */
    fbt_control(&s_t, "token_expires_in=1");
    sn_gauth_invalidate(g);
    assert_int_equal(sn_gauth_token(g, http, 5000, &tok, why, sizeof why), SN_OK);
    assert_int_equal(sn_gauth_token(g, http, 5000, &tok2, why, sizeof why), SN_OK);
    assert_string_equal(tok, tok2);
    sn_gauth_token_free(&tok2);
    s_token_wait_t tw = {g, http, tok};
    assert_true(sn_test_wait_for(s_token_changed, &tw, 5000));
    sn_gauth_token_free(&tok);
    fbt_control(&s_t, "reset=1");

    /* HTML with 200 from the token endpoint is no token (retried, then transient). */
    fbt_control(&s_t, "html_next=5&fault_match=/token");
    sn_gauth_invalidate(g);
    assert_int_equal(sn_gauth_token(g, http, 5000, &tok, why, sizeof why), SN_AGAIN);
    assert_null(tok);
    assert_non_null(strstr(why, "without a usable token"));
    fbt_control(&s_t, "reset=1");
    sn_gauth_destroy(&g);

    /* A key the fake does not know: the signature fails, invalid_grant, permanent. */
    EVP_PKEY *other = EVP_RSA_gen(2048);
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(b, other, NULL, NULL, 0, NULL, NULL), 1);
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    json_t *o = json_pack("{s:s, s:s, s:s%, s:s}", "type", "service_account", "client_email",
                          "intruder@demo-project.iam.gserviceaccount.com", "private_key", data,
                          (size_t)n, "token_uri", "http://placeholder.invalid/token");
    BIO_free(b);
    EVP_PKEY_free(other);
    char *path = sn_strdupf("%s/other.json", s_t.dir);
    assert_int_equal(json_dump_file(o, path, 0), 0);
    json_decref(o);
    char *uri = sn_strdupf("%s/token", s_t.base);
    g = sn_gauth_new(path, uri, NULL);
    assert_non_null(g);
    long refused = fbt_stat(&s_t, NULL, "token_refused");
    assert_int_equal(sn_gauth_token(g, http, 5000, &tok, why, sizeof why), SN_ERROR);
    assert_non_null(strstr(why, "invalid_grant"));
    assert_int_equal(fbt_stat(&s_t, NULL, "token_refused"), refused + 1);
    sn_gauth_destroy(&g);
    /* The right key with the wrong audience (token_uri override elsewhere): refused too. */
    char *wrong = sn_strdupf("%s/token?x=1", s_t.base);
    g = sn_gauth_new(s_t.key_file, wrong, NULL);
    assert_int_equal(sn_gauth_token(g, http, 5000, &tok, why, sizeof why), SN_ERROR);
    sn_gauth_destroy(&g);
    free(wrong);
    free(uri);
    free(path);
    sn_http_destroy(&http);
}

/* ---- deploys ------------------------------------------------------------------------------- */

static void test_firebase_hosting_full_deploy(void **state)
{
    sn_envelope_t *r = s_ok("stage", "D1", s_sha1);
    const Sentinel__V1__Deploy *d = r->deploy_result->deploy;
    assert_int_equal(d->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED);
    assert_non_null(strstr(d->preview_url, "/__site/demo-site/channel/sentinel-run-1"));
    assert_non_null(strstr(d->release_id, "sites/demo-site/versions/"));
    assert_string_equal(d->provider_deployment_id, d->release_id);
    char *version = sn_strdup(d->release_id);
    char *preview = sn_strdup(d->preview_url);
    sn_envelope_free(&r);
    char *id = s_identity(preview);
    assert_string_equal(id, "D1");
    free(id);
    char *url = sn_strdupf("%s/", preview);
    long status = 0;
    char *body = fbt_get_text(&s_t, url, &status);
    assert_int_equal(status, 200);
    assert_string_equal(body, "<h1>release one</h1>\n");
    free(body);
    free(url);
    url = sn_strdupf("%s/README.md", preview);
    body = fbt_get_text(&s_t, url, &status);
    assert_int_equal(status, 404); /* only the public dir is deployed */
    free(body);
    free(url);

    /* A retried stage: no second version, no second preview release. */
    r = s_ok("stage", "D1", s_sha1);
    assert_string_equal(r->deploy_result->deploy->release_id, version);
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, "versions_by_deploy", "d1"), 1);
    assert_int_equal(fbt_stat(&s_t, "releases_by_deploy", "d1/preview"), 1);
    assert_int_equal(fbt_stat(&s_t, NULL, "off_contract"), 0);
    assert_int_equal(fbt_stat(&s_t, NULL, "upload_rejected"), 0);

    /* Hashes: sha256(gzip(file)) computed here; served bytes equal the files. */
    json_t *root = NULL;
    json_t *files = s_version_files("d1", &root);
    assert_non_null(files);
    assert_int_equal(json_object_size(files), 3); /* index, css, identity */
    char want[SN_SHA256_HEX_LEN + 1];
    s_gzip_sha("<h1>release one</h1>\n", want);
    assert_string_equal(json_string_value(json_object_get(files, "/index.html")), want);
    s_gzip_sha("body { color: #333; }\n", want);
    assert_string_equal(json_string_value(json_object_get(files, "/css/app.css")), want);
    assert_non_null(json_object_get(files, "/.well-known/sentinel-release.json"));
    json_decref(root);

    /* Promote: live serves D1; a retry makes no second live release. */
    r = s_ok("promote", "D1", NULL);
    d = r->deploy_result->deploy;
    assert_int_equal(d->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE);
    assert_string_equal(d->release_id, version);
    assert_string_equal(d->previous_release_id, "");
    char *live = sn_strdup(d->live_url);
    assert_non_null(strstr(live, "/__site/demo-site/live"));
    sn_envelope_free(&r);
    r = s_ok("promote", "D1", NULL);
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, "releases_by_deploy", "d1/live"), 1);
    id = s_identity(live);
    assert_string_equal(id, "D1");
    free(id);
    r = fbt_call(&s_t, SERVICE, "propagation", "D1", "run-1", "fb", NULL, NULL, live, NULL, 10000);
    assert_non_null(r);
    assert_true(r->deploy_result->ok);
    sn_envelope_free(&r);
    free(live);
    free(preview);
    free(version);
}

static void test_firebase_hosting_rollback(void **state)
{
    /* D1 is live (previous test). D2 goes live, then back. */
    sn_envelope_t *r = s_ok("stage", "D1", s_sha1);
    char *v1 = sn_strdup(r->deploy_result->deploy->release_id);
    sn_envelope_free(&r);
    r = s_ok("promote", "D1", NULL);
    sn_envelope_free(&r);
    r = fbt_call(&s_t, SERVICE, "stage", "D2", "run-2", "fb", s_sha2, NULL, NULL, NULL, 30000);
    assert_true(r && r->deploy_result->ok);
    assert_non_null(strstr(r->deploy_result->deploy->preview_url, "sentinel-run-2"));
    char *v2 = sn_strdup(r->deploy_result->deploy->release_id);
    s_expect_serving_config(r->deploy_result->deploy->preview_url);
    sn_envelope_free(&r);
    r = s_ok("promote", "D2", NULL);
    assert_string_equal(r->deploy_result->deploy->previous_release_id, v1);
    char *live = sn_strdup(r->deploy_result->deploy->live_url);
    sn_envelope_free(&r);
    char *id = s_identity(live);
    assert_string_equal(id, "D2");
    free(id);
    /* Propagation of D1 now fails (the site serves D2): transient, names what it saw. */
    r = fbt_call(&s_t, SERVICE, "propagation", "D1", "run-1", "fb", NULL, NULL, live, NULL, 3000);
    assert_non_null(r);
    assert_false(r->deploy_result->ok);
    assert_true(r->deploy_result->is_transient);
    assert_non_null(strstr(r->deploy_result->reason, "deploy D2"));
    sn_envelope_free(&r);

    long d1_live = fbt_stat(&s_t, "releases_by_deploy", "d1/live");
    r = s_ok("rollback", "D2", NULL);
    assert_int_equal(r->deploy_result->deploy->phase,
                     SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK);
    assert_string_equal(r->deploy_result->deploy->release_id, v1);
    assert_string_equal(r->deploy_result->deploy->previous_release_id, v2);
    sn_envelope_free(&r);
    id = s_identity(live);
    assert_string_equal(id, "D1");
    free(id);
    assert_int_equal(fbt_stat(&s_t, "releases_by_deploy", "d1/live"), d1_live + 1);
    r = s_ok("rollback", "D2", NULL); /* retried: already there */
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, "releases_by_deploy", "d1/live"), d1_live + 1);
    /* Explicit to_release_id: forward to v2 again, then a bad one. */
    r = fbt_expect(&s_t, true, NULL, SERVICE, "rollback", "", "fb", NULL, v2);
    sn_envelope_free(&r);
    id = s_identity(live);
    assert_string_equal(id, "D2");
    free(id);
    r = fbt_expect(&s_t, false, "to_release_id", SERVICE, "rollback", "", "fb", NULL,
                   "sites/elsewhere/versions/1");
    sn_envelope_free(&r);
    /* A staged deploy that never went live: nothing to undo. */
    r = fbt_call(&s_t, SERVICE, "stage", "D3", "run-3", "fb", s_sha1, NULL, NULL, NULL, 30000);
    assert_true(r && r->deploy_result->ok);
    sn_envelope_free(&r);
    long releases = fbt_stat(&s_t, "releases_by_deploy", "d2/live");
    r = s_ok("rollback", "D3", NULL);
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, "releases_by_deploy", "d2/live"), releases);
    id = s_identity(live);
    assert_string_equal(id, "D2");
    free(id);
    free(live);
    free(v1);
    free(v2);
}

static void test_firebase_hosting_failures_and_bad_requests(void **state)
{
    long versions = fbt_stat(&s_t, NULL, "requests");
    sn_envelope_t *r;
    r = fbt_expect(&s_t, false, "hosting.public", SERVICE, "stage", "B1", "fb", s_sha_bad, NULL);
    assert_false(r->deploy_result->is_transient);
    assert_int_equal(r->deploy_result->deploy->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED);
    sn_envelope_free(&r);
    r = fbt_expect(&s_t, false, "hosting.rewrites", SERVICE, "stage", "B1", "fb", s_sha_badcfg,
                   NULL);
    sn_envelope_free(&r);
    r = fbt_expect(&s_t, false, "not in the store", SERVICE, "stage", "B1", "fb",
                   "0000000000000000000000000000000000000000000000000000000000000000", NULL);
    sn_envelope_free(&r);
    r = fbt_expect(&s_t, false, "invalid artifact", SERVICE, "stage", "B1", "fb", "../x", NULL);
    sn_envelope_free(&r);
    r = fbt_expect(&s_t, false, "unknown firebase target", SERVICE, "stage", "B1", "nope", s_sha1,
                   NULL);
    sn_envelope_free(&r);
    r = fbt_expect(&s_t, false, "credentials", SERVICE, "stage", "B1", "fbnocreds", s_sha1, NULL);
    sn_envelope_free(&r);
    const char *bad_ids[] = {"../x", "a/b", "x y", ".h", "", NULL};
    for (int i = 0; bad_ids[i]; i++) {
        r = fbt_expect(&s_t, false, "invalid deploy id", SERVICE, "stage", bad_ids[i], "fb", s_sha1,
                       NULL);
        sn_envelope_free(&r);
    }
    r = fbt_expect(&s_t, false, "unknown op", SERVICE, "deploy", "B1", "fb", s_sha1, NULL);
    sn_envelope_free(&r);
    r = fbt_expect(&s_t, false, "not staged", SERVICE, "promote", "B9", "fb", NULL, NULL);
    sn_envelope_free(&r);
    r = fbt_expect(&s_t, false, "nothing recorded", SERVICE, "rollback", "B9", "fb", NULL, NULL);
    sn_envelope_free(&r);
    /* None of these reached the provider. */
    assert_int_equal(fbt_stat(&s_t, NULL, "requests"), versions);
    assert_int_equal(fbt_stat(&s_t, "versions_by_deploy", "b1"), 0);
}

static void test_firebase_hosting_429_retry_after(void **state)
{
    fbt_control(&s_t, "reset=1&fail_next=2&fail_status=429&retry_after=1&fault_match=:populate");
    long faults = fbt_stat(&s_t, NULL, "faults");
    int64_t t0 = sn_mono_ms();
    sn_envelope_t *r = s_ok("stage", "R429", s_sha1);
    int64_t ms = sn_mono_ms() - t0;
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, NULL, "faults"), faults + 2);
    assert_true(ms >= 1900); /* two waits of Retry-After: 1 s */
    assert_int_equal(fbt_stat(&s_t, "versions_by_deploy", "r429"), 1);
    fbt_control(&s_t, "reset=1");
}

static void test_firebase_hosting_5xx_burst(void **state)
{
    /* Three 503s on version create: retried (4 attempts per call). */
    fbt_control(&s_t, "reset=1&fail_next=3&fail_status=503&fault_match=/versions");
    sn_envelope_t *r = s_ok("stage", "B503", s_sha1);
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, "versions_by_deploy", "b503"), 1);
    /* A longer burst: the attempt budget ends it, transient, nothing created. */
    fbt_control(&s_t, "reset=1&fail_next=4&fail_status=500&fault_match=/versions");
    long faults = fbt_stat(&s_t, NULL, "faults");
    r = fbt_expect(&s_t, false, "create version", SERVICE, "stage", "B500", "fb", s_sha1, NULL);
    assert_true(r->deploy_result->is_transient);
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, "versions_by_deploy", "b500"), 0);
    assert_int_equal(fbt_stat(&s_t, NULL, "faults"), faults + 4);
    fbt_control(&s_t, "reset=1");
    /* The next call finds the provider well again (the breaker closed on success). */
    r = s_ok("stage", "B500", s_sha1);
    sn_envelope_free(&r);
}

static void test_firebase_hosting_hang_and_html(void **state)
{
    /* A hang past request_timeout_ms (1.5 s) on a safe call: cut and retried. */
    fbt_control(&s_t, "reset=1&hang_next=1&hang_ms=4000&fault_match=/releases");
    long faults = fbt_stat(&s_t, NULL, "faults");
    int64_t t0 = sn_mono_ms();
    sn_envelope_t *r = s_ok("stage", "H1", s_sha1);
    int64_t ms = sn_mono_ms() - t0;
    sn_envelope_free(&r);
    assert_true(ms >= 1400 && ms < 4000);
    assert_int_equal(fbt_stat(&s_t, NULL, "faults"), faults + 1);
    /* HTML with 200 for the channel: garbage is a failure, retried, then fine. */
    fbt_control(&s_t, "reset=1&html_next=1&fault_match=/channels");
    faults = fbt_stat(&s_t, NULL, "faults");
    r = fbt_call(&s_t, SERVICE, "stage", "H2", "run-h2", "fb", s_sha1, NULL, NULL, NULL, 30000);
    assert_true(r && r->deploy_result->ok);
    sn_envelope_free(&r);
    assert_int_equal(fbt_stat(&s_t, NULL, "faults"), faults + 1);
    /* HTML with 200 every time: the stage fails (transient), never "ok". */
    fbt_control(&s_t, "reset=1&html_next=10&fault_match=/channels");
    r = fbt_call(&s_t, SERVICE, "stage", "H3", "run-h3", "fb", s_sha1, NULL, NULL, NULL, 30000);
    assert_non_null(r);
    assert_false(r->deploy_result->ok);
    assert_true(r->deploy_result->is_transient);
    sn_envelope_free(&r);
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
        fbt_call(&s_t, SERVICE, "stage", "K1", "run-k1", "fb", s_sha1, NULL, NULL, w->job, 20000);
    return w->reply && w->reply->deploy_result->ok;
}

static void test_firebase_hosting_killed_mid_deploy_resumes(void **state)
{
    fbt_make_job(&s_t, "job-k1", SERVICE, 1500);
    fbt_control(&s_t, "reset=1&upload_delay_ms=1500");
    /* The call times out here while the worker uploads. */
    fbt_async_t call = {&s_t, SERVICE, "K1", "run-k1", s_sha1, "job-k1", 0, NULL};
    fbt_async_start(&call);
    /* Wait for the version to exist, then kill the worker in the middle of it. */
    s_stat_wait_t wv = {"versions_by_deploy", "k1", 1};
    assert_true(sn_test_wait_for(s_stat_reached, &wv, 10000));
    /* The same deploy asked again while it runs: refused (transient), not run twice. */
    sn_envelope_t *busy =
        fbt_call(&s_t, SERVICE, "stage", "K1", "run-k1", "fb", s_sha1, NULL, NULL, NULL, 5000);
    assert_non_null(busy);
    assert_false(busy->deploy_result->ok);
    assert_true(busy->deploy_result->is_transient);
    assert_non_null(strstr(busy->deploy_result->reason, "already being served"));
    sn_envelope_free(&busy);
    sn_mesh_agent_t *a = &s_t.mesh.agents[s_agent];
    assert_true(sn_test_stop(a->pid, SIGKILL, 5000) >= 0);
    a->pid = 0;
    /* The waiting caller learns that its worker is gone (worker-lost), no result. */
    sn_envelope_t *lost = fbt_async_join(&call);
    assert_null(lost);
    fbt_control(&s_t, "upload_delay_ms=0");
    s_spawn_agent();
    /* The job is re-run (attempt 2) once its lease lapsed: it resumes the version. */
    s_job_wait_t jw = {"job-k1", NULL};
    assert_true(sn_test_wait_for(s_job_answers_ok, &jw, 20000));
    assert_non_null(strstr(jw.reply->deploy_result->deploy->preview_url, "sentinel-run-k1"));
    sn_envelope_free(&jw.reply);
    assert_int_equal(fbt_stat(&s_t, "versions_by_deploy", "k1"), 1);
    assert_int_equal(fbt_stat(&s_t, "releases_by_deploy", "k1/preview"), 1);
    assert_true(
        sn_mesh_wait_log(&s_t.mesh, s_t.mesh.agents[s_agent].instance, "resuming deploy=K1", 1000));
    char *id = NULL;
    char *url = sn_strdupf("%s/__site/demo-site/channel/sentinel-run-k1", s_t.base);
    id = s_identity(url);
    assert_string_equal(id, "K1");
    free(id);
    free(url);
    fbt_control(&s_t, "reset=1");
}

static void test_firebase_hosting_no_secret_in_logs(void **state)
{
    for (size_t i = 0; i < s_t.mesh.agent_count; i++) {
        char *log = sn_test_read_file(s_t.mesh.agents[i].log);
        assert_non_null(log);
        assert_null(strstr(log, "fake-at-"));
        assert_null(strstr(log, "PRIVATE KEY"));
        assert_null(strstr(log, "Bearer"));
        free(log);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_firebase_hosting_token_exchange),
        cmocka_unit_test(test_firebase_hosting_full_deploy),
        cmocka_unit_test(test_firebase_hosting_rollback),
        cmocka_unit_test(test_firebase_hosting_failures_and_bad_requests),
        cmocka_unit_test(test_firebase_hosting_429_retry_after),
        cmocka_unit_test(test_firebase_hosting_5xx_burst),
        cmocka_unit_test(test_firebase_hosting_hang_and_html),
        cmocka_unit_test(test_firebase_hosting_killed_mid_deploy_resumes),
        cmocka_unit_test(test_firebase_hosting_no_secret_in_logs),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
