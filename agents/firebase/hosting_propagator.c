/* hosting-propagator (FirebaseDeployExecutor): Firebase Hosting through its REST API
 * (v1beta1), serving firebase.hosting with DeployRequest ops (docs/firebase.md):
 *
 *  - stage: the artifact's public dir (firebase.json hosting.public) plus the release
 *    identity at /.well-known/sentinel-release.json becomes a new version: create (labels
 *    carry the deploy id), populateFiles with sha256(gzip(file)), upload exactly the gzipped
 *    bytes that were hashed to the returned uploadUrl, finalize; then a release on the
 *    run's preview channel, whose url is the preview URL;
 *  - promote: a release of that version on the live channel;
 *  - rollback: a release on live of the version live before (or of to_release_id);
 *  - propagation: the live site serves this deploy's identity.
 *
 * Every provider id is written to the deploy record (provider:deploy:<id>, fields
 * hosting.*) as soon as it exists, and the non-idempotent calls (releases) are preceded by
 * a lease check and a reconciliation (is the newest release on the channel already ours?),
 * so a re-dispatched job resumes: one version and one release per channel per deploy. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "firebase_common.h"
#include "sentinel/sn_crypto.h"
#include "sentinel/sn_log.h"

#define LOG_MODULE "hosting-propagator"
#define REC "hosting"
#define DEFAULT_HOSTING_BASE "https://firebasehosting.googleapis.com/v1beta1"
#define POPULATE_BATCH 1000
#define MAX_FILES 20000
#define MAX_FILE_BYTES (256 * 1024 * 1024)
#define CHANNEL_TTL "604800s"
#define PROPAGATION_MAX_MS 300000
#define WHY 320

typedef struct {
    char *path; /* "/index.html" */
    uint8_t *gz;
    size_t gz_len;
    char hash[SN_SHA256_HEX_LEN + 1];
} s_file_t;

typedef struct {
    s_file_t *items;
    size_t count;
} s_files_t;

static sn_rc_t s_init(sn_ctx_t *ctx, void **state);
static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req);
static void s_destroy(sn_ctx_t *ctx, void *state);
static sn_rc_t s_job(sn_ctx_t *ctx, void *state, const sn_request_t *req, sn_envelope_t *reply,
                     const char **nak_reason);
static void s_run(fb_op_t *op);
static void s_stage(fb_op_t *op);
static void s_promote(fb_op_t *op);
static void s_rollback(fb_op_t *op);
static void s_propagation(fb_op_t *op);
static char *s_api(fb_op_t *op, const char *fmt, ...) SN_PRINTF(2, 3);
static const char *s_site(fb_op_t *op);
static sn_rc_t s_collect(fb_op_t *op, const char *root, const char *identity, s_files_t *files);
static void s_files_free(s_files_t *files);
static sn_rc_t s_upload_version(fb_op_t *op, const char *version, s_files_t *files, json_t *config);
static sn_rc_t s_release(fb_op_t *op, const char *channel, const char *version,
                         const char *message);
static sn_rc_t s_newest_release(fb_op_t *op, const char *channel, char **newest, char **second);
static char *s_default_url(fb_op_t *op);

static const char *const s_ops[] = {"stage", "promote", "rollback", "propagation", NULL};

const sn_role_t hosting_propagator_role = {
    .name = "hosting-propagator",
    .agent = "FirebaseDeployExecutor",
    .summary = "Firebase Hosting: versions, gzip+sha256 uploads, preview channels, releases",
    .services = (const char *const[]){"firebase.hosting", NULL},
    .leadership = SN_LEADERSHIP_NONE,
    .credit = 2,
    .init = s_init,
    .on_request = s_request,
    .destroy = s_destroy,
};

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    fb_state_t *st = fb_state_new(ctx, LOG_MODULE);
    *state = st;
    return st ? SN_OK : SN_ERROR;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    fb_state_t *st = state;
    fb_state_destroy(&st);
}

static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    sn_deploy_op_defer(ctx, req, LOG_MODULE, s_job, state);
}

static sn_rc_t s_job(sn_ctx_t *ctx, void *state, const sn_request_t *req, sn_envelope_t *reply,
                     const char **nak_reason)
{
    (void)nak_reason;
    return fb_job(ctx, state, req, reply, s_ops, s_run);
}

static void s_run(fb_op_t *op)
{
    if (strcmp(op->opname, "stage") == 0)
        s_stage(op);
    else if (strcmp(op->opname, "promote") == 0)
        s_promote(op);
    else if (strcmp(op->opname, "rollback") == 0)
        s_rollback(op);
    else
        s_propagation(op);
}

/* ---- stage ----------------------------------------------------------------------------- */

/* The hosting entry of firebase.json (an object, or an array of sites: the one whose
 * "site" is ours, else the first), borrowed from @fj; NULL if none. */
static json_t *s_hosting_entry(fb_op_t *op, json_t *fj)
{
    json_t *h = json_object_get(fj, "hosting");
    if (json_is_array(h)) {
        json_t *pick = json_array_get(h, 0), *e;
        size_t i;
        json_array_foreach(h, i, e)
        {
            const char *site = json_string_value(json_object_get(e, "site"));
            if (site && strcmp(site, s_site(op)) == 0)
                pick = e;
        }
        h = pick;
    }
    return json_is_object(h) ? h : NULL;
}

/* Copies the pattern of a firebase.json rule (source / glob -> glob, regex -> regex) into
 * @out. False if it has none or both. */
static bool s_rule_pattern(json_t *rule, json_t *out)
{
    const char *src = json_string_value(json_object_get(rule, "source"));
    const char *glob = json_string_value(json_object_get(rule, "glob"));
    const char *regex = json_string_value(json_object_get(rule, "regex"));
    if (!glob)
        glob = src;
    if ((glob != NULL) == (regex != NULL))
        return false;
    json_object_set_new(out, glob ? "glob" : "regex", json_string(glob ? glob : regex));
    return true;
}

/* The version's ServingConfig from the hosting entry (what firebase-tools sends): headers,
 * redirects, rewrites (to a path, a function or a Cloud Run service), cleanUrls,
 * trailingSlash. A new reference, or NULL with the result marked failed. */
static json_t *s_serving_config(fb_op_t *op, json_t *h)
{
    json_t *cfg = json_object();
    json_t *arr, *rule;
    size_t i;
    const char *bad = NULL;
    if ((arr = json_object_get(h, "headers"))) {
        json_t *out = json_array();
        json_array_foreach(arr, i, rule)
        {
            json_t *r = json_object(), *map = json_object(), *hv;
            size_t k;
            json_t *hs = json_object_get(rule, "headers");
            if (!s_rule_pattern(rule, r) || !json_is_array(hs))
                bad = "headers";
            json_array_foreach(hs, k, hv)
            {
                const char *key = json_string_value(json_object_get(hv, "key"));
                const char *val = json_string_value(json_object_get(hv, "value"));
                if (!key || !val)
                    bad = "headers";
                else
                    json_object_set_new(map, key, json_string(val));
            }
            json_object_set_new(r, "headers", map);
            json_array_append_new(out, r);
        }
        json_object_set_new(cfg, "headers", out);
    }
    if ((arr = json_object_get(h, "redirects"))) {
        json_t *out = json_array();
        json_array_foreach(arr, i, rule)
        {
            json_t *r = json_object();
            const char *dest = json_string_value(json_object_get(rule, "destination"));
            json_int_t type = json_integer_value(json_object_get(rule, "type"));
            if (!s_rule_pattern(rule, r) || !dest)
                bad = "redirects";
            json_object_set_new(r, "location", json_string(dest ? dest : ""));
            json_object_set_new(r, "statusCode", json_integer(type == 302 ? 302 : 301));
            json_array_append_new(out, r);
        }
        json_object_set_new(cfg, "redirects", out);
    }
    if ((arr = json_object_get(h, "rewrites"))) {
        json_t *out = json_array();
        json_array_foreach(arr, i, rule)
        {
            json_t *r = json_object();
            const char *dest = json_string_value(json_object_get(rule, "destination"));
            json_t *fn = json_object_get(rule, "function");
            json_t *run = json_object_get(rule, "run");
            int kinds = (dest != NULL) + (fn != NULL) + (run != NULL);
            if (!s_rule_pattern(rule, r) || kinds != 1)
                bad = "rewrites";
            if (dest) {
                json_object_set_new(r, "path", json_string(dest));
            } else if (json_is_string(fn)) {
                json_object_set(r, "function", fn);
            } else if (json_is_object(fn)) {
                /* {functionId, region}: a 2nd gen function is served by its Cloud Run
                 * service of the same name. */
                const char *id = json_string_value(json_object_get(fn, "functionId"));
                const char *reg = json_string_value(json_object_get(fn, "region"));
                if (!id)
                    bad = "rewrites";
                json_object_set_new(r, "function", json_string(id ? id : ""));
                if (reg)
                    json_object_set_new(r, "functionRegion", json_string(reg));
            } else if (json_is_object(run)) {
                json_object_set(r, "run", run);
            } else if (kinds == 1) {
                bad = "rewrites";
            }
            json_array_append_new(out, r);
        }
        json_object_set_new(cfg, "rewrites", out);
    }
    json_t *v;
    if ((v = json_object_get(h, "cleanUrls"))) {
        if (!json_is_boolean(v))
            bad = "cleanUrls";
        json_object_set(cfg, "cleanUrls", v);
    }
    if ((v = json_object_get(h, "trailingSlash"))) {
        if (!json_is_boolean(v))
            bad = "trailingSlash";
        json_object_set_new(cfg, "trailingSlashBehavior",
                            json_string(json_is_true(v) ? "ADD" : "REMOVE"));
    }
    if (bad) {
        sn_deploy_op_fail(op->dop, false,
                          "firebase.json: hosting.%s has an entry Firebase Hosting cannot take",
                          bad);
        json_decref(cfg);
        return NULL;
    }
    return cfg;
}

static void s_stage(fb_op_t *op)
{
    const Sentinel__V1__Deploy *d = op->dep;
    char why[WHY] = "";
    char *dir = NULL, *version = NULL, *identity = NULL, *url = NULL, *channel_url = NULL;
    char *newest = NULL, *pub = NULL;
    json_t *fj = NULL, *resp = NULL, *config = NULL;
    s_files_t files = {0};
    bool is_down = false;

    version = fb_rec_get(op, REC, "version", &is_down);
    if (is_down) {
        sn_deploy_op_fail(op->dop, true, "redis unavailable: cannot read the deploy record");
        goto out;
    }
    char *finalized = fb_rec_get(op, REC, "finalized", NULL);
    bool is_final = finalized && strcmp(finalized, "1") == 0;
    free(finalized);
    if (!is_final) {
        /* The identity is fixed once (a resumed upload must hash the same bytes). */
        identity = fb_rec_get(op, REC, "identity", NULL);
        if (!identity) {
            identity = sn_deploy_op_identity_json(op->dop);
            if (!fb_rec_put(op, REC, "identity", identity)) {
                sn_deploy_op_fail(op->dop, true,
                                  "redis unavailable: cannot write the deploy record");
                goto out;
            }
        }
        if (!(dir = fb_extract(op)))
            goto out;
        bool is_bad = false;
        fj = fb_firebase_json(op, dir, &is_bad);
        if (is_bad)
            goto out;
        json_t *h = s_hosting_entry(op, fj);
        const char *rel = fj ? json_string_value(json_object_get(h, "public")) : ".";
        if (!rel || !fb_rel_path_is_safe(rel)) {
            sn_deploy_op_fail(op->dop, false, "firebase.json: hosting.public is %s",
                              rel ? "not a relative path inside the artifact" : "missing");
            goto out;
        }
        config = h ? s_serving_config(op, h) : json_object();
        if (!config)
            goto out;
        pub = sn_strdupf("%s/%s", dir, rel);
        if (s_collect(op, pub, identity, &files) != SN_OK)
            goto out;
        if (!version) {
            url = s_api(op, "/projects/-/sites/%s/versions", s_site(op));
            json_t *body = json_pack("{s:s, s:{s:s, s:s}}", "status", "CREATED", "labels",
                                     "sentinel-deploy", op->label, "managed-by", "sentinel");
            sn_rc_t rc = fb_api(op, "POST", url, body, true, &resp, NULL, why, sizeof why);
            json_decref(body);
            const char *name = json_string_value(json_object_get(resp, "name"));
            if (rc != SN_OK || !name || strncmp(name, "sites/", 6) != 0) {
                sn_deploy_op_fail(op->dop, rc != SN_ERROR, "create version: %s",
                                  rc == SN_OK ? "answer without a version name" : why);
                goto out;
            }
            version = sn_strdup(name);
            if (!fb_rec_put(op, REC, "version", version)) {
                sn_deploy_op_fail(op->dop, true, "redis unavailable: version %s not recorded",
                                  version);
                goto out;
            }
            sn_info(LOG_MODULE, "version created deploy=%s version=%s files=%zu", d->deploy_id,
                    version, files.count);
        } else {
            sn_info(LOG_MODULE, "resuming deploy=%s version=%s", d->deploy_id, version);
        }
        if (s_upload_version(op, version, &files, config) != SN_OK)
            goto out;
        if (!fb_rec_put(op, REC, "finalized", "1")) {
            sn_deploy_op_fail(op->dop, true, "redis unavailable: finalize not recorded");
            goto out;
        }
    }

    /* The run's preview channel (created if missing), then a release on it. */
    char slug[41];
    fb_slug(*d->run_id ? d->run_id : d->deploy_id, slug, 31);
    char *channel = sn_strdupf("sentinel-%s", slug);
    free(url);
    url = s_api(op, "/projects/%s/sites/%s/channels?channelId=%s", op->target->project, s_site(op),
                channel);
    json_decref(resp);
    resp = NULL;
    json_t *cbody = json_pack("{s:s}", "ttl", CHANNEL_TTL);
    long status = 0;
    sn_rc_t rc = fb_api(op, "POST", url, cbody, true, &resp, &status, why, sizeof why);
    json_decref(cbody);
    if (rc != SN_OK && status == 409) {
        free(url);
        url = s_api(op, "/projects/%s/sites/%s/channels/%s", op->target->project, s_site(op),
                    channel);
        rc = fb_api(op, "GET", url, NULL, true, &resp, NULL, why, sizeof why);
    }
    const char *curl = json_string_value(json_object_get(resp, "url"));
    if (rc != SN_OK || !curl || !*curl) {
        sn_deploy_op_fail(op->dop, rc != SN_ERROR, "preview channel %s: %s", channel,
                          rc == SN_OK ? "answer without a url" : why);
        free(channel);
        goto out;
    }
    channel_url = sn_strdup(curl);
    fb_rec_put(op, REC, "channel", channel);
    char *released = fb_rec_get(op, REC, "preview_released", NULL);
    bool is_released = released && strcmp(released, "1") == 0;
    free(released);
    if (!is_released) {
        rc = s_newest_release(op, channel, &newest, NULL);
        if (rc != SN_OK) {
            free(channel);
            goto out;
        }
        if (!newest || strcmp(newest, version) != 0) {
            if (!sn_deploy_op_renew(op->dop)) {
                sn_deploy_op_fail(op->dop, false, "job lease lost before the preview release");
                free(channel);
                goto out;
            }
            if (s_release(op, channel, version, "sentinel preview") != SN_OK) {
                free(channel);
                goto out;
            }
        }
        fb_rec_put(op, REC, "preview_released", "1");
    }
    fb_rec_put(op, REC, "preview_url", channel_url);
    free(channel);
    op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED;
    op->out->preview_url = fb_keep(op, channel_url);
    op->out->release_id = fb_keep(op, version);
    op->out->provider_deployment_id = op->out->release_id;
    op->out->staged_unix_ms = sn_wall_ms();
out:
    if (dir && sn_artifact_rmtree(dir) != SN_OK)
        sn_warn(LOG_MODULE, "cannot remove %s", dir);
    s_files_free(&files);
    json_decref(fj);
    json_decref(config);
    json_decref(resp);
    free(newest);
    free(pub);
    free(channel_url);
    free(url);
    free(identity);
    free(version);
    free(dir);
}

/* populateFiles in batches, uploads of what is required, finalize with @config. */
static sn_rc_t s_upload_version(fb_op_t *op, const char *version, s_files_t *files, json_t *config)
{
    char why[WHY] = "";
    sn_rc_t rc = SN_OK;
    char *url = s_api(op, "/%s:populateFiles", version);
    json_t *resp = NULL;
    size_t uploaded = 0;
    uint64_t bytes = 0;
    for (size_t at = 0; at < files->count && rc == SN_OK; at += POPULATE_BATCH) {
        json_t *map = json_object();
        for (size_t i = at; i < files->count && i < at + POPULATE_BATCH; i++)
            json_object_set_new(map, files->items[i].path, json_string(files->items[i].hash));
        json_t *body = json_pack("{s:o}", "files", map);
        rc = fb_api(op, "POST", url, body, true, &resp, NULL, why, sizeof why);
        json_decref(body);
        const char *upload_url = json_string_value(json_object_get(resp, "uploadUrl"));
        json_t *need = json_object_get(resp, "uploadRequiredHashes");
        if (rc != SN_OK || (json_array_size(need) > 0 && !upload_url)) {
            sn_deploy_op_fail(op->dop, rc != SN_ERROR, "populateFiles: %s",
                              rc == SN_OK ? "uploadRequiredHashes without an uploadUrl" : why);
            rc = SN_ERROR;
            break;
        }
        size_t k;
        json_t *h;
        json_array_foreach(need, k, h)
        {
            const char *hash = json_string_value(h);
            s_file_t *f = NULL;
            for (size_t i = 0; i < files->count && !f && hash; i++)
                if (strcmp(files->items[i].hash, hash) == 0)
                    f = &files->items[i];
            if (!f) {
                sn_deploy_op_fail(op->dop, false, "populateFiles asked for a hash we did not send");
                rc = SN_ERROR;
                break;
            }
            if (!sn_deploy_op_renew(op->dop) || sn_ctx_is_stopping(op->ctx)) {
                sn_deploy_op_fail(
                    op->dop, !sn_deploy_op_is_lease_lost(op->dop), "upload interrupted (%s)",
                    sn_deploy_op_is_lease_lost(op->dop) ? "job lease lost" : "shutdown");
                rc = SN_ERROR;
                break;
            }
            char *up = sn_strdupf("%s/%s", upload_url, hash);
            int timeout =
                op->target->request_timeout_ms > 0 ? op->target->request_timeout_ms : 30000;
            timeout += (int)(f->gz_len / (50 * 1024)); /* slow links: 50 KB/s floor */
            /* Content-addressed: safe to repeat. */
            rc = fb_send(op, "POST", up, "application/octet-stream", f->gz, f->gz_len, true, true,
                         timeout, why, sizeof why);
            free(up);
            if (rc != SN_OK) {
                sn_deploy_op_fail(op->dop, rc != SN_ERROR, "upload of %s: %s", f->path, why);
                rc = SN_ERROR;
                break;
            }
            uploaded++;
            bytes += f->gz_len;
        }
        json_decref(resp);
        resp = NULL;
    }
    free(url);
    if (rc != SN_OK)
        return SN_ERROR;
    /* Finalize: only CREATED -> FINALIZED; a retry that finds it FINALIZED is done. */
    url = s_api(op, "/projects/-/%s?updateMask=status,config", version);
    json_t *body = json_pack("{s:s, s:O}", "status", "FINALIZED", "config", config);
    long status = 0;
    rc = fb_api(op, "PATCH", url, body, true, &resp, &status, why, sizeof why);
    json_decref(body);
    free(url);
    const char *vs = json_string_value(json_object_get(resp, "status"));
    bool is_final = rc == SN_OK && vs && strcmp(vs, "FINALIZED") == 0;
    if (rc != SN_OK && status == 400 && strstr(why, "FAILED_PRECONDITION")) {
        json_decref(resp);
        resp = NULL;
        url = s_api(op, "/%s", version);
        char why2[WHY];
        if (fb_api(op, "GET", url, NULL, true, &resp, NULL, why2, sizeof why2) == SN_OK) {
            vs = json_string_value(json_object_get(resp, "status"));
            is_final = vs && strcmp(vs, "FINALIZED") == 0;
        }
        free(url);
    }
    json_decref(resp);
    if (!is_final) {
        sn_deploy_op_fail(op->dop, rc != SN_ERROR, "finalize %s: %s", version,
                          rc == SN_OK ? "the version is not FINALIZED" : why);
        return SN_ERROR;
    }
    sn_info(LOG_MODULE, "version finalized deploy=%s version=%s uploaded=%zu bytes=%llu",
            op->dep->deploy_id, version, uploaded, (unsigned long long)bytes);
    return SN_OK;
}

/* ---- promote / rollback ------------------------------------------------------------------- */

static void s_promote(fb_op_t *op)
{
    char *version = fb_rec_get(op, REC, "version", NULL);
    char *finalized = fb_rec_get(op, REC, "finalized", NULL);
    char *newest = NULL, *second = NULL, *previous = NULL, *live = NULL;
    if (!version || !finalized || strcmp(finalized, "1") != 0) {
        sn_deploy_op_fail(op->dop, false, "deploy %s is not staged (no finalized version recorded)",
                          op->dep->deploy_id);
        goto out;
    }
    if (s_newest_release(op, "live", &newest, &second) != SN_OK)
        goto out;
    char *released = fb_rec_get(op, REC, "live_released", NULL);
    bool is_live = newest && strcmp(newest, version) == 0;
    previous = fb_rec_get(op, REC, "previous", NULL);
    if (!is_live) {
        /* What goes back on rollback: recorded before the release. */
        if (!previous) {
            previous = sn_strdup(newest ? newest : "");
            if (!fb_rec_put(op, REC, "previous", previous)) {
                free(released);
                sn_deploy_op_fail(op->dop, true,
                                  "redis unavailable: previous release not recorded");
                goto out;
            }
        }
        if (!sn_deploy_op_renew(op->dop)) {
            free(released);
            sn_deploy_op_fail(op->dop, false, "job lease lost before the live release");
            goto out;
        }
        if (s_release(op, "live", version, "sentinel promote") != SN_OK) {
            free(released);
            goto out;
        }
    } else if (!previous) {
        previous = sn_strdup(second ? second : "");
    }
    free(released);
    fb_rec_put(op, REC, "live_released", "1");
    live = s_default_url(op);
    if (!live)
        goto out;
    fb_rec_put(op, REC, "live_url", live);
    op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE;
    op->out->live_url = fb_keep(op, live);
    op->out->release_id = fb_keep(op, version);
    op->out->provider_deployment_id = op->out->release_id;
    op->out->previous_release_id = fb_keep(op, previous);
    op->out->promoted_unix_ms = sn_wall_ms();
out:
    free(live);
    free(previous);
    free(newest);
    free(second);
    free(finalized);
    free(version);
}

/* Is @name "sites/<our site>/versions/<id>" with a sane id? */
static bool s_version_is_ours(fb_op_t *op, const char *name)
{
    char *prefix = sn_strdupf("sites/%s/versions/", s_site(op));
    size_t n = strlen(prefix);
    bool ok = name && strncmp(name, prefix, n) == 0 && name[n];
    for (size_t i = n; ok && name[i]; i++)
        ok = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
             (name[i] >= 'A' && name[i] <= 'Z') || name[i] == '-' || name[i] == '_';
    free(prefix);
    return ok;
}

static void s_rollback(fb_op_t *op)
{
    const char *to = op->in->to_release_id;
    char *ours = *op->dep->deploy_id ? fb_rec_get(op, REC, "version", NULL) : NULL;
    char *target = NULL, *newest = NULL, *live = NULL;
    if (to && *to) {
        if (!s_version_is_ours(op, to)) {
            sn_deploy_op_fail(op->dop, false, "to_release_id is not a version of site %s",
                              s_site(op));
            goto out;
        }
        target = sn_strdup(to);
    } else if (!ours) {
        sn_deploy_op_fail(op->dop, false, "nothing recorded for deploy %s and no to_release_id",
                          op->dep->deploy_id);
        goto out;
    }
    if (s_newest_release(op, "live", &newest, NULL) != SN_OK)
        goto out;
    if (!target) {
        char *released = fb_rec_get(op, REC, "live_released", NULL);
        target = fb_rec_get(op, REC, "previous", NULL);
        if (!released && !(newest && strcmp(newest, ours) == 0)) {
            /* This deploy's version never went live: nothing to undo. */
            free(released);
            op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK;
            op->out->release_id = fb_keep(op, newest);
            live = s_default_url(op);
            op->out->live_url = fb_keep(op, live);
            goto out;
        }
        free(released);
        if (!target || !*target) {
            sn_deploy_op_fail(op->dop, false, "no release before %s to go back to", ours);
            goto out;
        }
    }
    if (!(newest && strcmp(newest, target) == 0)) {
        if (!sn_deploy_op_renew(op->dop)) {
            sn_deploy_op_fail(op->dop, false, "job lease lost before the rollback release");
            goto out;
        }
        if (s_release(op, "live", target, "sentinel rollback") != SN_OK)
            goto out;
    }
    live = s_default_url(op);
    if (!live)
        goto out;
    op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK;
    op->out->release_id = fb_keep(op, target);
    op->out->previous_release_id = fb_keep(op, ours ? ours : newest);
    op->out->live_url = fb_keep(op, live);
out:
    free(live);
    free(newest);
    free(target);
    free(ours);
}

/* ---- propagation ------------------------------------------------------------------------ */

static void s_propagation(fb_op_t *op)
{
    char *base = NULL;
    if (op->dep->live_url && *op->dep->live_url)
        base = sn_strdup(op->dep->live_url);
    if (!base)
        base = fb_rec_get(op, REC, "live_url", NULL);
    if (!base && !(base = s_default_url(op)))
        return;
    size_t n = strlen(base);
    while (n > 0 && base[n - 1] == '/')
        n--;
    char *url = sn_strdupf("%.*s/" FB_IDENTITY_PATH, (int)n, base);
    char *shown = sn_http_redact_url(url);
    int64_t deadline = sn_mono_ms() + PROPAGATION_MAX_MS;
    if (deadline > op->deadline_ms)
        deadline = op->deadline_ms;
    int interval = op->target->poll_interval_ms > 0 ? op->target->poll_interval_ms : 1000;
    const char *commit = op->in->commit && *op->in->commit ? op->in->commit : NULL;
    char seen[160] = "nothing yet";
    bool is_ok = false;
    int checks = 0;
    for (;;) {
        checks++;
        const char *headers[] = {"Accept: application/json", "Cache-Control: no-cache", NULL};
        sn_http_request_t req = {
            .url = url, .headers = headers, .timeout_ms = 10000, .max_body_bytes = 64 * 1024};
        sn_http_response_t resp;
        sn_rc_t rc = sn_http_perform(op->http, &req, &resp);
        if (rc != SN_OK) {
            snprintf(seen, sizeof seen, "transport: %.120s", resp.error);
        } else if (resp.status != 200) {
            snprintf(seen, sizeof seen, "status %ld", resp.status);
        } else {
            json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
            const char *dep = json_string_value(json_object_get(j, "deployId"));
            const char *com = json_string_value(json_object_get(j, "commit"));
            if (!dep)
                snprintf(seen, sizeof seen, "an answer without a release identity");
            else if (strcmp(dep, op->dep->deploy_id) != 0)
                snprintf(seen, sizeof seen, "deploy %.100s", dep);
            else if (commit && (!com || strcmp(com, commit) != 0))
                snprintf(seen, sizeof seen, "deploy %.60s with commit %.60s", dep,
                         com ? com : "(none)");
            else
                is_ok = true;
            json_decref(j);
        }
        sn_http_response_fini(&resp);
        if (is_ok || sn_ctx_is_stopping(op->ctx) || !sn_deploy_op_renew(op->dop))
            break;
        if (!sn_provider_sleep(interval, deadline))
            break;
    }
    if (is_ok) {
        sn_info(LOG_MODULE, "propagated deploy=%s url=%s checks=%d", op->dep->deploy_id, shown,
                checks);
        op->out->live_url = fb_keep(op, base);
    } else {
        sn_deploy_op_fail(op->dop, true, "%s does not serve deploy %s after %d checks: last saw %s",
                          shown, op->dep->deploy_id, checks, seen);
    }
    free(shown);
    free(url);
    free(base);
}

/* ---- helpers ---------------------------------------------------------------------------- */

static const char *s_site(fb_op_t *op)
{
    return op->target->site && *op->target->site ? op->target->site : op->target->project;
}

/* The Hosting API base + the formatted path (caller frees). */
static char *s_api(fb_op_t *op, const char *fmt, ...)
{
    const char *base =
        op->target->api_base && *op->target->api_base ? op->target->api_base : DEFAULT_HOSTING_BASE;
    size_t n = strlen(base);
    while (n > 0 && base[n - 1] == '/')
        n--;
    char path[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(path, sizeof path, fmt, ap);
    va_end(ap);
    return sn_strdupf("%.*s%s", (int)n, base, path);
}

/* One release of @version on @channel (not idempotent: one attempt). */
static sn_rc_t s_release(fb_op_t *op, const char *channel, const char *version, const char *message)
{
    char why[WHY] = "";
    char *url = s_api(op, "/projects/-/sites/%s/channels/%s/releases?versionName=%s", s_site(op),
                      channel, version);
    json_t *body = json_pack("{s:s}", "message", message);
    json_t *resp = NULL;
    sn_rc_t rc = fb_api(op, "POST", url, body, false, &resp, NULL, why, sizeof why);
    json_decref(body);
    free(url);
    const char *name = json_string_value(json_object_get(resp, "name"));
    if (rc != SN_OK || !name) {
        sn_deploy_op_fail(op->dop, rc != SN_ERROR, "release of %s on %s: %s", version, channel,
                          rc == SN_OK ? "answer without a release name" : why);
        json_decref(resp);
        return SN_ERROR;
    }
    sn_info(LOG_MODULE, "released deploy=%s channel=%s version=%s release=%s",
            op->dep->deploy_id[0] ? op->dep->deploy_id : "-", channel, version, name);
    json_decref(resp);
    return SN_OK;
}

/* The version names of the newest and second newest releases on @channel (NULL when
 * there are none). SN_OK, or the result marked failed. */
static sn_rc_t s_newest_release(fb_op_t *op, const char *channel, char **newest, char **second)
{
    char why[WHY] = "";
    *newest = NULL;
    if (second)
        *second = NULL;
    char *url = s_api(op, "/sites/%s/channels/%s/releases?pageSize=10", s_site(op), channel);
    json_t *resp = NULL;
    long status = 0;
    sn_rc_t rc = fb_api(op, "GET", url, NULL, true, &resp, &status, why, sizeof why);
    free(url);
    if (rc != SN_OK && status == 404 && strcmp(channel, "live") != 0) {
        json_decref(resp);
        return SN_OK; /* a channel without releases yet */
    }
    json_t *rels = json_object_get(resp, "releases");
    if (rc != SN_OK || (rels && !json_is_array(rels))) {
        sn_deploy_op_fail(op->dop, rc != SN_ERROR, "list releases of %s: %s", channel,
                          rc == SN_OK ? "releases is not an array" : why);
        json_decref(resp);
        return SN_ERROR;
    }
    const char *a = json_string_value(
        json_object_get(json_object_get(json_array_get(rels, 0), "version"), "name"));
    const char *b = json_string_value(
        json_object_get(json_object_get(json_array_get(rels, 1), "version"), "name"));
    *newest = a ? sn_strdup(a) : NULL;
    if (second)
        *second = b ? sn_strdup(b) : NULL;
    json_decref(resp);
    return SN_OK;
}

/* The site's defaultUrl (caller frees), or NULL with the result marked failed. */
static char *s_default_url(fb_op_t *op)
{
    char why[WHY] = "";
    char *url = s_api(op, "/projects/%s/sites/%s", op->target->project, s_site(op));
    json_t *resp = NULL;
    sn_rc_t rc = fb_api(op, "GET", url, NULL, true, &resp, NULL, why, sizeof why);
    free(url);
    const char *u = json_string_value(json_object_get(resp, "defaultUrl"));
    char *out = rc == SN_OK && u && *u ? sn_strdup(u) : NULL;
    if (!out)
        sn_deploy_op_fail(op->dop, rc != SN_ERROR, "site %s: %s", s_site(op),
                          rc == SN_OK ? "answer without a defaultUrl" : why);
    json_decref(resp);
    return out;
}

/* ---- files -------------------------------------------------------------------------------- */

/* gzip (level 9, zlib's header: mtime 0) of @len bytes: the bytes hashed and uploaded. */
static sn_rc_t s_gzip(const uint8_t *data, size_t len, uint8_t **out, size_t *out_len)
{
    z_stream zs = {0};
    if (deflateInit2(&zs, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return SN_ERROR;
    size_t cap = deflateBound(&zs, (uLong)len) + 32;
    *out = sn_malloc(cap);
    zs.next_in = (Bytef *)data;
    zs.avail_in = (uInt)len;
    zs.next_out = *out;
    zs.avail_out = (uInt)cap;
    int zr = deflate(&zs, Z_FINISH);
    *out_len = zs.total_out;
    deflateEnd(&zs);
    if (zr != Z_STREAM_END) {
        free(*out);
        *out = NULL;
        return SN_ERROR;
    }
    return SN_OK;
}

static sn_rc_t s_add_file(fb_op_t *op, s_files_t *files, const char *path, const uint8_t *data,
                          size_t len)
{
    if (files->count >= MAX_FILES) {
        sn_deploy_op_fail(op->dop, false, "more than %d files in the public dir", MAX_FILES);
        return SN_ERROR;
    }
    s_file_t f = {0};
    uint8_t sum[SN_SHA256_LEN];
    if (s_gzip(data, len, &f.gz, &f.gz_len) != SN_OK || sn_sha256(f.gz, f.gz_len, sum) != SN_OK) {
        free(f.gz);
        sn_deploy_op_fail(op->dop, false, "cannot gzip %s", path);
        return SN_ERROR;
    }
    sn_hex_encode(sum, sizeof sum, f.hash);
    f.path = sn_strdup(path);
    files->items = sn_realloc(files->items, (files->count + 1) * sizeof *files->items);
    files->items[files->count++] = f;
    return SN_OK;
}

static sn_rc_t s_walk(fb_op_t *op, const char *dir, const char *rel, s_files_t *files)
{
    DIR *dh = opendir(dir);
    if (!dh) {
        sn_deploy_op_fail(op->dop, false, "cannot read public dir %s%s: %s", rel[0] ? "" : "/", rel,
                          strerror(errno));
        return SN_ERROR;
    }
    sn_rc_t rc = SN_OK;
    struct dirent *e;
    while (rc == SN_OK && (e = readdir(dh)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *path = sn_strdupf("%s/%s", dir, e->d_name);
        char *r = sn_strdupf("%s/%s", rel, e->d_name);
        struct stat sb;
        if (stat(path, &sb) != 0) {
            /* A dangling symlink: nothing to serve. */
        } else if (S_ISDIR(sb.st_mode)) {
            rc = s_walk(op, path, r, files);
        } else if (S_ISREG(sb.st_mode) && strcmp(r, "/" FB_IDENTITY_PATH) != 0) {
            if (sb.st_size > MAX_FILE_BYTES) {
                sn_deploy_op_fail(op->dop, false, "%s is over %d MiB", r, MAX_FILE_BYTES >> 20);
                rc = SN_ERROR;
            } else {
                int fd = open(path, O_RDONLY | O_CLOEXEC);
                uint8_t *buf = sn_malloc((size_t)sb.st_size + 1);
                ssize_t got = fd >= 0 ? read(fd, buf, (size_t)sb.st_size) : -1;
                if (fd >= 0)
                    close(fd);
                if (got != (ssize_t)sb.st_size) {
                    sn_deploy_op_fail(op->dop, true, "cannot read %s", r);
                    rc = SN_ERROR;
                } else {
                    rc = s_add_file(op, files, r, buf, (size_t)got);
                }
                free(buf);
            }
        }
        free(path);
        free(r);
    }
    closedir(dh);
    return rc;
}

/* Every regular file under @root (symlinks followed: extraction keeps them inside), as
 * "/rel/path", plus the identity. */
static sn_rc_t s_collect(fb_op_t *op, const char *root, const char *identity, s_files_t *files)
{
    struct stat sb;
    if (stat(root, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        sn_deploy_op_fail(op->dop, false, "the public dir is not a directory of the artifact");
        return SN_ERROR;
    }
    if (s_walk(op, root, "", files) != SN_OK)
        return SN_ERROR;
    return s_add_file(op, files, "/" FB_IDENTITY_PATH, (const uint8_t *)identity, strlen(identity));
}

static void s_files_free(s_files_t *files)
{
    for (size_t i = 0; i < files->count; i++) {
        free(files->items[i].path);
        free(files->items[i].gz);
    }
    free(files->items);
    files->items = NULL;
    files->count = 0;
}
