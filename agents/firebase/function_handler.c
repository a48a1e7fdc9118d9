/* function-handler (FirebaseDeployExecutor): Cloud Functions (2nd gen) through the v2 REST
 * API, serving firebase.functions with DeployRequest ops (docs/firebase.md):
 *
 *  - stage: every function the artifact's firebase.json declares (functions[].endpoints)
 *    is deployed from its codebase's source dir, zipped deterministically (a stored zip:
 *    sorted names, fixed times; written here, no zip library) and kept in the artifact
 *    store by its sha256: generateUploadUrl, PUT the zip to the signed URL WITHOUT an
 *    Authorization header, then create (404) or patch each function and poll each
 *    long-running operation to its end; the reason names every function that failed;
 *  - promote: a confirmation (functions are live once deployed);
 *  - rollback: the API has none, so each function gets the source it had before this
 *    deploy again (the per-function history firebase:fnsrc:<p>:<e>:<t>:<fn> in Redis, the
 *    zips from the artifact store), or the source named by to_release_id.
 *
 * The source sha256, the upload object and each operation name go to the deploy record
 * (provider:deploy:<id>, fields functions.*) before they are waited on, so a re-dispatched
 * job polls the operations it started instead of deploying again. */
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
#include "sentinel/sn_id.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define LOG_MODULE "function-handler"
#define REC "functions"
#define DEFAULT_FUNCTIONS_BASE "https://cloudfunctions.googleapis.com/v2"
#define DEFAULT_REGION "us-central1"
#define DEFAULT_RUNTIME "nodejs20"
#define MAX_ENDPOINTS 64
#define MAX_CODEBASES 8
#define MAX_ZIP_FILES 20000
#define MAX_ZIP_BYTES (100 * 1024 * 1024) /* the signed upload's limit */
#define HISTORY_KEEP 20
#define REDIS_TIMEOUT_MS 2000
#define WHY 320

typedef struct {
    char *source; /* relative dir in the artifact */
    char *runtime;
    char sha[SN_SHA256_HEX_LEN + 1];
    char *bucket, *object; /* where the zip was uploaded */
} s_codebase_t;

typedef struct {
    char *id;
    char *entry;
    char *memory; /* may be NULL */
    int timeout_s;
    size_t codebase;
    char *op;     /* operation name */
    char *result; /* "ok" or the error text */
    char *hist;   /* rollback: this deploy's history entry "<deploy_id> <sha>" */
} s_endpoint_t;

typedef struct {
    s_codebase_t cb[MAX_CODEBASES];
    size_t cb_count;
    s_endpoint_t ep[MAX_ENDPOINTS];
    size_t ep_count;
} s_plan_t;

static sn_rc_t s_init(sn_ctx_t *ctx, void **state);
static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req);
static void s_destroy(sn_ctx_t *ctx, void *state);
static sn_rc_t s_job(sn_ctx_t *ctx, void *state, const sn_request_t *req, sn_envelope_t *reply,
                     const char **nak_reason);
static void s_run(fb_op_t *op);
static void s_stage(fb_op_t *op);
static void s_promote(fb_op_t *op);
static void s_rollback(fb_op_t *op);
static sn_rc_t s_plan(fb_op_t *op, json_t *fj, s_plan_t *plan);
static void s_plan_fini(s_plan_t *plan);
static char *s_api(fb_op_t *op, const char *fmt, ...) SN_PRINTF(2, 3);
static sn_rc_t s_zip_dir(fb_op_t *op, const char *dir, uint8_t **zip, size_t *len);
static sn_rc_t s_keep_zip(fb_op_t *op, const uint8_t *zip, size_t len, char *sha);
static uint8_t *s_load_zip(fb_op_t *op, const char *sha, size_t *len);
static sn_rc_t s_upload(fb_op_t *op, const uint8_t *zip, size_t len, char **bucket, char **object);
static sn_rc_t s_deploy_fn(fb_op_t *op, s_endpoint_t *ep, const s_codebase_t *cb,
                           const char *rec_prefix, bool only_source);
static void s_poll(fb_op_t *op, s_plan_t *plan, const char *rec_prefix);
static char *s_history_key(fb_op_t *op, const char *fn);
static void s_history_push(fb_op_t *op, const char *fn, const char *sha);

static const char *const s_ops[] = {"stage", "promote", "rollback", NULL};

const sn_role_t function_handler_role = {
    .name = "function-handler",
    .agent = "FirebaseDeployExecutor",
    .summary = "Cloud Functions v2: source zip upload, create/patch, operations, rollback",
    .services = (const char *const[]){"firebase.functions", NULL},
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
    else
        s_rollback(op);
}

/* ---- stage ----------------------------------------------------------------------------- */

static void s_stage(fb_op_t *op)
{
    char *state = fb_rec_get(op, REC, "state", NULL);
    char *dir = NULL;
    json_t *fj = NULL;
    s_plan_t plan = {0};
    if (state && strcmp(state, "ok") == 0) {
        char *src = fb_rec_get(op, REC, "source", NULL);
        op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED;
        op->out->release_id = fb_keep(op, src);
        op->out->provider_deployment_id = op->out->release_id;
        free(src);
        goto out;
    }
    if (!(dir = fb_extract(op)))
        goto out;
    bool is_bad = false;
    fj = fb_firebase_json(op, dir, &is_bad);
    if (is_bad || s_plan(op, fj, &plan) != SN_OK)
        goto out;
    if (plan.ep_count == 0) {
        op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED;
        op->res->reason = "no functions";
        fb_rec_put(op, REC, "state", "ok");
        goto out;
    }
    /* The list of functions, for promote and rollback. */
    char list[MAX_ENDPOINTS * 64] = "";
    for (size_t i = 0; i < plan.ep_count; i++) {
        size_t n = strlen(list);
        snprintf(list + n, sizeof list - n, "%s%s", i ? "," : "", plan.ep[i].id);
    }
    if (!fb_rec_put(op, REC, "list", list)) {
        sn_deploy_op_fail(op->dop, true, "redis unavailable: cannot write the deploy record");
        goto out;
    }
    for (size_t c = 0; c < plan.cb_count; c++) {
        s_codebase_t *cb = &plan.cb[c];
        char field[32];
        snprintf(field, sizeof field, "obj.%zu", c);
        char *obj = fb_rec_get(op, REC, field, NULL);
        char *sep = obj ? strchr(obj, ' ') : NULL;
        snprintf(field, sizeof field, "src.%zu", c);
        char *sha = fb_rec_get(op, REC, field, NULL);
        if (obj && sep && sha && sn_artifact_sha_is_valid(sha)) {
            /* Uploaded by an earlier attempt of this deploy. */
            *sep = '\0';
            cb->bucket = sn_strdup(obj);
            cb->object = sn_strdup(sep + 1);
            memcpy(cb->sha, sha, sizeof cb->sha);
            free(obj);
            free(sha);
            continue;
        }
        free(obj);
        free(sha);
        char *src = sn_strdupf("%s/%s", dir, cb->source);
        uint8_t *zip = NULL;
        size_t len = 0;
        sn_rc_t rc = s_zip_dir(op, src, &zip, &len);
        free(src);
        if (rc == SN_OK)
            rc = s_keep_zip(op, zip, len, cb->sha);
        if (rc == SN_OK && !fb_rec_put(op, REC, field, cb->sha)) {
            sn_deploy_op_fail(op->dop, true, "redis unavailable: cannot write the deploy record");
            rc = SN_ERROR;
        }
        if (rc == SN_OK)
            rc = s_upload(op, zip, len, &cb->bucket, &cb->object);
        free(zip);
        if (rc != SN_OK)
            goto out;
        char *v = sn_strdupf("%s %s", cb->bucket, cb->object);
        snprintf(field, sizeof field, "obj.%zu", c);
        bool ok = fb_rec_put(op, REC, field, v);
        free(v);
        if (!ok) {
            sn_deploy_op_fail(op->dop, true, "redis unavailable: cannot write the deploy record");
            goto out;
        }
    }
    fb_rec_put(op, REC, "source", plan.cb[0].sha);
    for (size_t i = 0; i < plan.ep_count && op->res->ok; i++)
        if (s_deploy_fn(op, &plan.ep[i], &plan.cb[plan.ep[i].codebase], "", false) != SN_OK)
            goto out;
    s_poll(op, &plan, "");
    if (!op->res->ok)
        goto out;
    for (size_t i = 0; i < plan.ep_count; i++)
        if (plan.ep[i].result && strcmp(plan.ep[i].result, "ok") == 0)
            s_history_push(op, plan.ep[i].id, plan.cb[plan.ep[i].codebase].sha);
    char failed[512] = "";
    size_t bad = 0;
    for (size_t i = 0; i < plan.ep_count; i++) {
        if (plan.ep[i].result && strcmp(plan.ep[i].result, "ok") == 0)
            continue;
        size_t n = strlen(failed);
        snprintf(failed + n, sizeof failed - n, "%s%s (%.120s)", bad++ ? "; " : "", plan.ep[i].id,
                 plan.ep[i].result ? plan.ep[i].result : "did not finish");
    }
    if (bad) {
        fb_rec_put(op, REC, "state", "failed");
        sn_deploy_op_fail(op->dop, false, "functions failed: %s", failed);
        goto out;
    }
    fb_rec_put(op, REC, "state", "ok");
    op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED;
    op->out->release_id = fb_keep(op, plan.cb[0].sha);
    op->out->provider_deployment_id = op->out->release_id;
    op->out->staged_unix_ms = sn_wall_ms();
out:
    if (dir && sn_artifact_rmtree(dir) != SN_OK)
        sn_warn(LOG_MODULE, "cannot remove %s", dir);
    free(dir);
    json_decref(fj);
    s_plan_fini(&plan);
    free(state);
}

/* Creates (404) or patches one function, recording its operation. With a recorded
 * operation (a resumed job) nothing is sent. @only_source: patch the source only
 * (rollback; runtime and entry point stay as they are). */
static sn_rc_t s_deploy_fn(fb_op_t *op, s_endpoint_t *ep, const s_codebase_t *cb,
                           const char *rec_prefix, bool only_source)
{
    char field[160];
    snprintf(field, sizeof field, "%sop.%s", rec_prefix, ep->id);
    ep->op = fb_rec_get(op, REC, field, NULL);
    if (ep->op)
        return SN_OK;
    char why[WHY] = "";
    const char *region =
        op->target->region && *op->target->region ? op->target->region : DEFAULT_REGION;
    char *name =
        sn_strdupf("projects/%s/locations/%s/functions/%s", op->target->project, region, ep->id);
    char *url = s_api(op, "/%s", name);
    long status = 0;
    json_t *cur = NULL;
    sn_rc_t rc = fb_api(op, "GET", url, NULL, true, &cur, &status, why, sizeof why);
    bool is_new = rc != SN_OK && status == 404;
    json_decref(cur);
    if (rc != SN_OK && !is_new) {
        sn_deploy_op_fail(op->dop, rc != SN_ERROR, "function %s: %s", ep->id, why);
        free(url);
        free(name);
        return SN_ERROR;
    }
    char src_label[64];
    fb_slug(cb->sha, src_label, 63);
    json_t *body =
        json_pack("{s:s, s:{s:s, s:s}, s:{s:{s:{s:s, s:s}}}}", "name", name, "labels",
                  "sentinel-deploy", op->label, "sentinel-source", src_label, "buildConfig",
                  "source", "storageSource", "bucket", cb->bucket, "object", cb->object);
    json_t *bc = json_object_get(body, "buildConfig");
    if (!only_source || is_new) {
        json_object_set_new(bc, "runtime", json_string(cb->runtime));
        json_object_set_new(bc, "entryPoint", json_string(ep->entry));
        json_t *sc = json_object();
        if (ep->memory)
            json_object_set_new(sc, "availableMemory", json_string(ep->memory));
        if (ep->timeout_s > 0)
            json_object_set_new(sc, "timeoutSeconds", json_integer(ep->timeout_s));
        json_object_set_new(body, "serviceConfig", sc);
    }
    json_t *resp = NULL;
    free(url);
    if (is_new) {
        if (!sn_deploy_op_renew(op->dop)) {
            sn_deploy_op_fail(op->dop, false, "job lease lost before creating %s", ep->id);
            json_decref(body);
            free(name);
            return SN_ERROR;
        }
        url = s_api(op, "/projects/%s/locations/%s/functions?functionId=%s", op->target->project,
                    region, ep->id);
        rc = fb_api(op, "POST", url, body, false, &resp, NULL, why, sizeof why);
    } else {
        url = s_api(op, "/%s?updateMask=%s", name,
                    only_source ? "buildConfig.source,labels"
                                : "buildConfig.source,buildConfig.runtime,buildConfig.entryPoint,"
                                  "serviceConfig,labels");
        rc = fb_api(op, "PATCH", url, body, true, &resp, NULL, why, sizeof why);
    }
    json_decref(body);
    free(url);
    free(name);
    const char *opname = json_string_value(json_object_get(resp, "name"));
    if (rc != SN_OK || !opname || strstr(opname, "/operations/") == NULL) {
        sn_deploy_op_fail(op->dop, rc != SN_ERROR, "%s of %s: %s", is_new ? "create" : "patch",
                          ep->id, rc == SN_OK ? "answer without an operation" : why);
        json_decref(resp);
        return SN_ERROR;
    }
    ep->op = sn_strdup(opname);
    json_decref(resp);
    if (!fb_rec_put(op, REC, field, ep->op)) {
        sn_deploy_op_fail(op->dop, true, "redis unavailable: operation of %s not recorded", ep->id);
        return SN_ERROR;
    }
    sn_info(LOG_MODULE, "%s deploy=%s function=%s operation=%s", is_new ? "create" : "patch",
            op->dep->deploy_id[0] ? op->dep->deploy_id : "-", ep->id, ep->op);
    return SN_OK;
}

/* Polls every endpoint's operation until each is done (ep->result "ok" or the error),
 * recording results; the result is marked failed only for trouble polling. */
static void s_poll(fb_op_t *op, s_plan_t *plan, const char *rec_prefix)
{
    int interval = op->target->poll_interval_ms > 0 ? op->target->poll_interval_ms : 1000;
    char why[WHY] = "";
    for (size_t i = 0; i < plan->ep_count; i++) {
        char field[160];
        snprintf(field, sizeof field, "%sdone.%s", rec_prefix, plan->ep[i].id);
        plan->ep[i].result = fb_rec_get(op, REC, field, NULL);
    }
    for (;;) {
        size_t open = 0;
        for (size_t i = 0; i < plan->ep_count; i++) {
            s_endpoint_t *ep = &plan->ep[i];
            if (ep->result || !ep->op)
                continue;
            char *url = s_api(op, "/%s", ep->op);
            json_t *resp = NULL;
            sn_rc_t rc = fb_api(op, "GET", url, NULL, true, &resp, NULL, why, sizeof why);
            free(url);
            if (rc != SN_OK) {
                sn_deploy_op_fail(op->dop, rc != SN_ERROR, "operation of %s: %s", ep->id, why);
                json_decref(resp);
                return;
            }
            json_t *done = json_object_get(resp, "done");
            if (done && !json_is_boolean(done)) {
                sn_deploy_op_fail(op->dop, true, "operation of %s: done is not a boolean", ep->id);
                json_decref(resp);
                return;
            }
            if (json_is_true(done)) {
                json_t *err = json_object_get(resp, "error");
                const char *msg = json_string_value(json_object_get(err, "message"));
                ep->result = err ? sn_strdup(msg ? msg : "failed") : sn_strdup("ok");
                char field[160];
                snprintf(field, sizeof field, "%sdone.%s", rec_prefix, ep->id);
                fb_rec_put(op, REC, field, ep->result);
                if (err)
                    sn_warn(LOG_MODULE, "function %s failed deploy=%s: %.200s", ep->id,
                            op->dep->deploy_id, ep->result);
            } else {
                open++;
            }
            json_decref(resp);
        }
        if (open == 0)
            return;
        if (!sn_deploy_op_renew(op->dop) || sn_ctx_is_stopping(op->ctx)) {
            sn_deploy_op_fail(op->dop, !sn_deploy_op_is_lease_lost(op->dop),
                              "interrupted while %zu operations run (%s)", open,
                              sn_deploy_op_is_lease_lost(op->dop) ? "job lease lost" : "shutdown");
            return;
        }
        if (!sn_provider_sleep(interval, op->deadline_ms)) {
            sn_deploy_op_fail(op->dop, true, "%zu operations still running at the deadline", open);
            return;
        }
    }
}

/* ---- promote / rollback ------------------------------------------------------------------- */

static void s_promote(fb_op_t *op)
{
    char *state = fb_rec_get(op, REC, "state", NULL);
    char *src = fb_rec_get(op, REC, "source", NULL);
    if (!state || strcmp(state, "ok") != 0)
        sn_deploy_op_fail(op->dop, false, "functions of deploy %s are not deployed (%s)",
                          op->dep->deploy_id, state ? state : "not staged");
    else {
        op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE;
        op->out->release_id = fb_keep(op, src);
        op->out->provider_deployment_id = op->out->release_id;
        op->out->promoted_unix_ms = sn_wall_ms();
    }
    free(state);
    free(src);
}

/* The sha after "<deploy_id> <sha>" in @fn's history (caller frees); NULL if this deploy
 * is not in it (*entry NULL) or nothing is before it. *entry gets our entry (caller frees). */
static char *s_history_previous(fb_op_t *op, const char *fn, char **entry, bool *is_down)
{
    *entry = NULL;
    *is_down = false;
    char *key = s_history_key(op, fn);
    const char *argv[] = {"LRANGE", key, "0", "-1"};
    redisReply *r = NULL;
    sn_rc_t rc =
        sn_redis_cmd(sn_ctx_redis(op->ctx), SN_REDIS_MAIN, REDIS_TIMEOUT_MS, &r, 4, argv, NULL);
    free(key);
    if (rc != SN_OK || r->type != REDIS_REPLY_ARRAY) {
        *is_down = true;
        if (r)
            freeReplyObject(r);
        return NULL;
    }
    char *out = NULL;
    size_t n = strlen(op->dep->deploy_id);
    for (size_t i = 0; i < r->elements; i++) {
        const char *e = r->element[i]->str;
        if (e && strncmp(e, op->dep->deploy_id, n) == 0 && e[n] == ' ') {
            *entry = sn_strdup(e);
            if (i + 1 < r->elements && r->element[i + 1]->str) {
                const char *sp = strchr(r->element[i + 1]->str, ' ');
                if (sp && sn_artifact_sha_is_valid(sp + 1))
                    out = sn_strdup(sp + 1);
            }
            break;
        }
    }
    freeReplyObject(r);
    return out;
}

static void s_rollback(fb_op_t *op)
{
    const char *to = op->in->to_release_id;
    char *list = *op->dep->deploy_id ? fb_rec_get(op, REC, "list", NULL) : NULL;
    s_plan_t plan = {0};
    char kept[256] = "";
    if (to && *to && !sn_artifact_sha_is_valid(to)) {
        sn_deploy_op_fail(op->dop, false, "to_release_id is not a source sha256");
        goto out;
    }
    if (!list) {
        /* A stage that found no functions recorded `state` ok and no list: nothing of
         * this deploy runs on Cloud Functions, so there is nothing to roll back. */
        char *state = *op->dep->deploy_id ? fb_rec_get(op, REC, "state", NULL) : NULL;
        bool is_none = state && strcmp(state, "ok") == 0;
        free(state);
        if (is_none) {
            op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK;
            op->res->reason = "no functions";
            goto out;
        }
        sn_deploy_op_fail(op->dop, false, "no functions recorded for deploy %s",
                          op->dep->deploy_id);
        goto out;
    }
    /* A rollback already done for this deploy (a retry) is answered from the record. */
    char prefix[32] = "rb.";
    if (to && *to) {
        snprintf(prefix, sizeof prefix, "rb.%.12s.", to);
    } else {
        char *done = fb_rec_get(op, REC, "rb.state", NULL);
        if (done && strncmp(done, "ok ", 3) == 0) {
            op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK;
            op->out->release_id = fb_keep(op, done + 3);
            free(done);
            goto out;
        }
        free(done);
    }
    /* One codebase per distinct source to go back to; runtime/entry point stay. */
    for (char *fn = list, *next; fn && *fn && plan.ep_count < MAX_ENDPOINTS; fn = next) {
        char *comma = strchr(fn, ',');
        next = comma ? comma + 1 : NULL;
        if (comma)
            *comma = '\0';
        bool is_down = false;
        char *hist = NULL;
        char *sha = s_history_previous(op, fn, &hist, &is_down);
        if (to && *to) {
            free(sha);
            sha = sn_strdup(to);
        }
        if (is_down) {
            free(sha);
            free(hist);
            sn_deploy_op_fail(op->dop, true, "redis unavailable: cannot read the history of %s",
                              fn);
            goto out;
        }
        if (!sha) {
            size_t n = strlen(kept);
            snprintf(kept + n, sizeof kept - n, "%s%s", n ? ", " : "", fn);
            free(hist);
            continue;
        }
        size_t c = 0;
        while (c < plan.cb_count && strcmp(plan.cb[c].sha, sha) != 0)
            c++;
        if (c == plan.cb_count) {
            if (c == MAX_CODEBASES) {
                free(sha);
                free(hist);
                continue;
            }
            memcpy(plan.cb[c].sha, sha, SN_SHA256_HEX_LEN + 1);
            plan.cb_count++;
        }
        free(sha);
        s_endpoint_t *ep = &plan.ep[plan.ep_count++];
        ep->id = sn_strdup(fn);
        ep->entry = sn_strdup(fn);
        ep->codebase = c;
        ep->hist = hist;
    }
    for (size_t c = 0; c < plan.cb_count; c++) {
        size_t len = 0;
        uint8_t *zip = s_load_zip(op, plan.cb[c].sha, &len);
        if (!zip)
            goto out;
        sn_rc_t rc = s_upload(op, zip, len, &plan.cb[c].bucket, &plan.cb[c].object);
        free(zip);
        if (rc != SN_OK)
            goto out;
    }
    for (size_t i = 0; i < plan.ep_count; i++)
        if (s_deploy_fn(op, &plan.ep[i], &plan.cb[plan.ep[i].codebase], prefix, true) != SN_OK)
            goto out;
    s_poll(op, &plan, prefix);
    if (!op->res->ok)
        goto out;
    char failed[512] = "";
    size_t bad = 0;
    for (size_t i = 0; i < plan.ep_count; i++) {
        if (plan.ep[i].result && strcmp(plan.ep[i].result, "ok") == 0) {
            /* This deploy's source no longer runs: out of the history, so the next
             * deploy's rollback does not come back to it. */
            if (plan.ep[i].hist && !(to && *to)) {
                char *key = s_history_key(op, plan.ep[i].id);
                const char *argv[] = {"LREM", key, "0", plan.ep[i].hist};
                redisReply *r = NULL;
                if (sn_redis_cmd(sn_ctx_redis(op->ctx), SN_REDIS_MAIN, REDIS_TIMEOUT_MS, &r, 4,
                                 argv, NULL) != SN_OK)
                    sn_warn(LOG_MODULE, "function %s: history not trimmed (redis)", plan.ep[i].id);
                if (r)
                    freeReplyObject(r);
                free(key);
            }
            continue;
        }
        size_t n = strlen(failed);
        snprintf(failed + n, sizeof failed - n, "%s%s (%.120s)", bad++ ? "; " : "", plan.ep[i].id,
                 plan.ep[i].result ? plan.ep[i].result : "did not finish");
    }
    if (bad) {
        sn_deploy_op_fail(op->dop, false, "rollback failed for functions: %s", failed);
        goto out;
    }
    op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK;
    op->out->release_id = fb_keep(op, plan.cb_count ? plan.cb[0].sha : "");
    if (!(to && *to)) {
        char *v = sn_strdupf("ok %s", op->out->release_id);
        fb_rec_put(op, REC, "rb.state", v);
        free(v);
    }
    if (kept[0]) {
        char *r = sn_strdupf("no earlier source, left as deployed: %s", kept);
        op->res->reason = fb_keep(op, r);
        free(r);
    }
out:
    s_plan_fini(&plan);
    free(list);
}

/* ---- plan: firebase.json -> codebases and endpoints ------------------------------------------ */

static bool s_fn_id_is_valid(const char *s)
{
    if (!s || !(*s >= 'a' && *s <= 'z') || strlen(s) > 62)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-'))
            return false;
    return true;
}

static sn_rc_t s_plan(fb_op_t *op, json_t *fj, s_plan_t *plan)
{
    json_t *fns = json_object_get(fj, "functions");
    if (!fns)
        return SN_OK;
    size_t count = json_is_array(fns) ? json_array_size(fns) : 1;
    for (size_t c = 0; c < count; c++) {
        json_t *cb = json_is_array(fns) ? json_array_get(fns, c) : fns;
        if (!json_is_object(cb)) {
            sn_deploy_op_fail(op->dop, false, "firebase.json: functions[%zu] is not an object", c);
            return SN_ERROR;
        }
        json_t *eps = json_object_get(cb, "endpoints");
        if (!eps)
            continue;
        const char *source = json_string_value(json_object_get(cb, "source"));
        const char *runtime = json_string_value(json_object_get(cb, "runtime"));
        if (!source)
            source = "functions";
        if (!fb_rel_path_is_safe(source) || !json_is_object(eps) ||
            plan->cb_count == MAX_CODEBASES) {
            sn_deploy_op_fail(op->dop, false,
                              "firebase.json: functions[%zu] needs a relative source and an "
                              "endpoints object (at most %d codebases)",
                              c, MAX_CODEBASES);
            return SN_ERROR;
        }
        size_t ci = plan->cb_count++;
        plan->cb[ci].source = sn_strdup(source);
        plan->cb[ci].runtime = sn_strdup(runtime ? runtime : DEFAULT_RUNTIME);
        const char *id;
        json_t *e;
        json_object_foreach(eps, id, e)
        {
            if (!s_fn_id_is_valid(id) || !json_is_object(e) || plan->ep_count == MAX_ENDPOINTS) {
                sn_deploy_op_fail(op->dop, false,
                                  "firebase.json: endpoint '%.64s' is not a function id "
                                  "([a-z][a-z0-9-]*) with an object (at most %d)",
                                  id, MAX_ENDPOINTS);
                return SN_ERROR;
            }
            for (size_t k = 0; k < plan->ep_count; k++)
                if (strcmp(plan->ep[k].id, id) == 0) {
                    sn_deploy_op_fail(op->dop, false,
                                      "firebase.json: function %s is declared twice", id);
                    return SN_ERROR;
                }
            s_endpoint_t *ep = &plan->ep[plan->ep_count++];
            const char *entry = json_string_value(json_object_get(e, "entryPoint"));
            const char *mem = json_string_value(json_object_get(e, "availableMemory"));
            ep->id = sn_strdup(id);
            ep->entry = sn_strdup(entry && *entry ? entry : id);
            ep->memory = mem ? sn_strdup(mem) : NULL;
            ep->timeout_s = (int)json_integer_value(json_object_get(e, "timeoutSeconds"));
            ep->codebase = ci;
        }
    }
    return SN_OK;
}

static void s_plan_fini(s_plan_t *plan)
{
    for (size_t i = 0; i < plan->cb_count; i++) {
        free(plan->cb[i].source);
        free(plan->cb[i].runtime);
        free(plan->cb[i].bucket);
        free(plan->cb[i].object);
    }
    for (size_t i = 0; i < plan->ep_count; i++) {
        free(plan->ep[i].id);
        free(plan->ep[i].entry);
        free(plan->ep[i].memory);
        free(plan->ep[i].op);
        free(plan->ep[i].result);
        free(plan->ep[i].hist);
    }
    memset(plan, 0, sizeof *plan);
}

/* ---- source zips ---------------------------------------------------------------------------- */

typedef struct {
    char *name; /* path inside the zip */
    char *path; /* on disk */
} s_entry_t;

typedef struct {
    s_entry_t *items;
    size_t count;
} s_entries_t;

static int s_entry_cmp(const void *a, const void *b)
{
    return strcmp(((const s_entry_t *)a)->name, ((const s_entry_t *)b)->name);
}

/* Files under @dir, skipping node_modules and .git (as firebase-tools' default ignore). */
static sn_rc_t s_list(fb_op_t *op, const char *dir, const char *rel, s_entries_t *out)
{
    DIR *dh = opendir(dir);
    if (!dh) {
        sn_deploy_op_fail(op->dop, false,
                          "functions source %s%s is not a directory of the artifact",
                          rel[0] ? rel : "", rel[0] ? "" : "dir");
        return SN_ERROR;
    }
    sn_rc_t rc = SN_OK;
    struct dirent *e;
    while (rc == SN_OK && (e = readdir(dh)) != NULL) {
        const char *n = e->d_name;
        if (strcmp(n, ".") == 0 || strcmp(n, "..") == 0 || strcmp(n, "node_modules") == 0 ||
            strcmp(n, ".git") == 0)
            continue;
        char *path = sn_strdupf("%s/%s", dir, n);
        char *name = rel[0] ? sn_strdupf("%s/%s", rel, n) : sn_strdup(n);
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
            rc = s_list(op, path, name, out);
            free(path);
            free(name);
        } else if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && out->count < MAX_ZIP_FILES) {
            out->items = sn_realloc(out->items, (out->count + 1) * sizeof *out->items);
            out->items[out->count++] = (s_entry_t){.name = name, .path = path};
        } else {
            free(path);
            free(name);
        }
    }
    closedir(dh);
    return rc;
}

static void s_put16(uint8_t **p, size_t *len, size_t *cap, uint32_t v, int bytes)
{
    if (*len + 4 > *cap) {
        *cap = *cap * 2 + 64;
        *p = sn_realloc(*p, *cap);
    }
    for (int i = 0; i < bytes; i++)
        (*p)[(*len)++] = (uint8_t)(v >> (8 * i));
}

static void s_put(uint8_t **p, size_t *len, size_t *cap, const void *data, size_t n)
{
    if (*len + n > *cap) {
        *cap = (*len + n) * 2;
        *p = sn_realloc(*p, *cap);
    }
    memcpy(*p + *len, data, n);
    *len += n;
}

/* A stored (uncompressed) zip of @dir: entries sorted by name, DOS time 1980-01-01 00:00,
 * mode 0644: the same tree always gives the same bytes (and the same sha256). */
static sn_rc_t s_zip_dir(fb_op_t *op, const char *dir, uint8_t **zip, size_t *len)
{
    s_entries_t ents = {0};
    *zip = NULL;
    *len = 0;
    if (s_list(op, dir, "", &ents) != SN_OK)
        goto fail;
    if (ents.count == 0 || ents.count > 65535) {
        sn_deploy_op_fail(op->dop, false, "functions source has %zu files (1..65535 expected)",
                          ents.count);
        goto fail;
    }
    qsort(ents.items, ents.count, sizeof *ents.items, s_entry_cmp);
    size_t cap = 4096, n = 0;
    uint8_t *z = sn_malloc(cap);
    uint32_t *offs = sn_calloc(ents.count, sizeof *offs);
    uint32_t *crcs = sn_calloc(ents.count, sizeof *crcs);
    uint32_t *sizes = sn_calloc(ents.count, sizeof *sizes);
    sn_rc_t rc = SN_OK;
    for (size_t i = 0; i < ents.count && rc == SN_OK; i++) {
        int fd = open(ents.items[i].path, O_RDONLY | O_CLOEXEC);
        struct stat sb;
        if (fd < 0 || fstat(fd, &sb) != 0 || n + (size_t)sb.st_size > MAX_ZIP_BYTES) {
            sn_deploy_op_fail(op->dop, false,
                              "functions source: %s unreadable or the zip over %d MiB",
                              ents.items[i].name, MAX_ZIP_BYTES >> 20);
            if (fd >= 0)
                close(fd);
            rc = SN_ERROR;
            break;
        }
        uint8_t *buf = sn_malloc((size_t)sb.st_size + 1);
        ssize_t got = read(fd, buf, (size_t)sb.st_size);
        close(fd);
        if (got != (ssize_t)sb.st_size) {
            sn_deploy_op_fail(op->dop, true, "functions source: cannot read %s",
                              ents.items[i].name);
            free(buf);
            rc = SN_ERROR;
            break;
        }
        uint16_t nl = (uint16_t)strlen(ents.items[i].name);
        crcs[i] = (uint32_t)crc32(0L, buf, (uInt)got);
        sizes[i] = (uint32_t)got;
        offs[i] = (uint32_t)n;
        s_put16(&z, &n, &cap, 0x04034b50, 4);
        s_put16(&z, &n, &cap, 10, 2);     /* version needed 1.0 */
        s_put16(&z, &n, &cap, 0x0800, 2); /* UTF-8 names */
        s_put16(&z, &n, &cap, 0, 2);      /* stored */
        s_put16(&z, &n, &cap, 0, 2);      /* time 00:00 */
        s_put16(&z, &n, &cap, 0x21, 2);   /* date 1980-01-01 */
        s_put16(&z, &n, &cap, crcs[i], 4);
        s_put16(&z, &n, &cap, sizes[i], 4);
        s_put16(&z, &n, &cap, sizes[i], 4);
        s_put16(&z, &n, &cap, nl, 2);
        s_put16(&z, &n, &cap, 0, 2);
        s_put(&z, &n, &cap, ents.items[i].name, nl);
        s_put(&z, &n, &cap, buf, (size_t)got);
        free(buf);
    }
    if (rc == SN_OK) {
        uint32_t cd = (uint32_t)n;
        for (size_t i = 0; i < ents.count; i++) {
            uint16_t nl = (uint16_t)strlen(ents.items[i].name);
            s_put16(&z, &n, &cap, 0x02014b50, 4);
            s_put16(&z, &n, &cap, 0x0314, 2); /* made by: unix, 2.0 */
            s_put16(&z, &n, &cap, 10, 2);
            s_put16(&z, &n, &cap, 0x0800, 2);
            s_put16(&z, &n, &cap, 0, 2);
            s_put16(&z, &n, &cap, 0, 2);
            s_put16(&z, &n, &cap, 0x21, 2);
            s_put16(&z, &n, &cap, crcs[i], 4);
            s_put16(&z, &n, &cap, sizes[i], 4);
            s_put16(&z, &n, &cap, sizes[i], 4);
            s_put16(&z, &n, &cap, nl, 2);
            s_put16(&z, &n, &cap, 0, 2); /* extra */
            s_put16(&z, &n, &cap, 0, 2); /* comment */
            s_put16(&z, &n, &cap, 0, 2); /* disk */
            s_put16(&z, &n, &cap, 0, 2); /* internal attrs */
            s_put16(&z, &n, &cap, (uint32_t)0100644 << 16, 4);
            s_put16(&z, &n, &cap, offs[i], 4);
            s_put(&z, &n, &cap, ents.items[i].name, nl);
        }
        uint32_t cd_len = (uint32_t)n - cd;
        s_put16(&z, &n, &cap, 0x06054b50, 4);
        s_put16(&z, &n, &cap, 0, 2);
        s_put16(&z, &n, &cap, 0, 2);
        s_put16(&z, &n, &cap, (uint32_t)ents.count, 2);
        s_put16(&z, &n, &cap, (uint32_t)ents.count, 2);
        s_put16(&z, &n, &cap, cd_len, 4);
        s_put16(&z, &n, &cap, cd, 4);
        s_put16(&z, &n, &cap, 0, 2);
        *zip = z;
        *len = n;
    } else {
        free(z);
    }
    free(offs);
    free(crcs);
    free(sizes);
    for (size_t i = 0; i < ents.count; i++) {
        free(ents.items[i].name);
        free(ents.items[i].path);
    }
    free(ents.items);
    return rc;
fail:
    for (size_t i = 0; i < ents.count; i++) {
        free(ents.items[i].name);
        free(ents.items[i].path);
    }
    free(ents.items);
    return SN_ERROR;
}

/* Stores the zip in the artifact store by its sha256 (hex into @sha). */
static sn_rc_t s_keep_zip(fb_op_t *op, const uint8_t *zip, size_t len, char *sha)
{
    uint8_t sum[SN_SHA256_LEN];
    if (sn_sha256(zip, len, sum) != SN_OK) {
        sn_deploy_op_fail(op->dop, true, "cannot hash the source zip");
        return SN_ERROR;
    }
    sn_hex_encode(sum, sizeof sum, sha);
    if (sn_artifact_exists(op->store, sha))
        return SN_OK;
    char rnd[17];
    sn_random_hex(rnd, 8);
    char *tmp = sn_strdupf("%s/.tmp-fbzip-%s", sn_artifact_dir(op->store), rnd);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    sn_rc_t rc = SN_ERROR;
    if (fd >= 0 && write(fd, zip, len) == (ssize_t)len && close(fd) == 0) {
        fd = -1;
        rc = sn_artifact_import_file(op->store, tmp, sha, NULL);
    }
    if (fd >= 0)
        close(fd);
    if (rc != SN_OK) {
        unlink(tmp);
        sn_deploy_op_fail(op->dop, true, "cannot keep the source zip in the artifact store");
    }
    free(tmp);
    return rc;
}

static uint8_t *s_load_zip(fb_op_t *op, const char *sha, size_t *len)
{
    if (sn_artifact_verify(op->store, sha) != SN_OK) {
        sn_deploy_op_fail(op->dop, false, "source zip %s is not (intact) in the artifact store",
                          sha);
        return NULL;
    }
    char *path = sn_artifact_path(op->store, sha);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    struct stat sb;
    uint8_t *buf = NULL;
    if (fd >= 0 && fstat(fd, &sb) == 0 && sb.st_size > 0 && sb.st_size <= MAX_ZIP_BYTES) {
        buf = sn_malloc((size_t)sb.st_size);
        if (read(fd, buf, (size_t)sb.st_size) != (ssize_t)sb.st_size) {
            free(buf);
            buf = NULL;
        } else {
            *len = (size_t)sb.st_size;
        }
    }
    if (fd >= 0)
        close(fd);
    if (!buf)
        sn_deploy_op_fail(op->dop, true, "cannot read source zip %s", sha);
    return buf;
}

/* generateUploadUrl, then PUT the zip to the signed URL (no Authorization header). */
static sn_rc_t s_upload(fb_op_t *op, const uint8_t *zip, size_t len, char **bucket, char **object)
{
    char why[WHY] = "";
    const char *region =
        op->target->region && *op->target->region ? op->target->region : DEFAULT_REGION;
    char *url = s_api(op, "/projects/%s/locations/%s/functions:generateUploadUrl",
                      op->target->project, region);
    json_t *resp = NULL;
    json_t *empty = json_object();
    sn_rc_t rc = fb_api(op, "POST", url, empty, true, &resp, NULL, why, sizeof why);
    json_decref(empty);
    free(url);
    const char *up = json_string_value(json_object_get(resp, "uploadUrl"));
    json_t *ss = json_object_get(resp, "storageSource");
    const char *b = json_string_value(json_object_get(ss, "bucket"));
    const char *o = json_string_value(json_object_get(ss, "object"));
    if (rc != SN_OK || !up || !b || !o) {
        sn_deploy_op_fail(op->dop, rc != SN_ERROR, "generateUploadUrl: %s",
                          rc == SN_OK ? "answer without uploadUrl and storageSource" : why);
        json_decref(resp);
        return SN_ERROR;
    }
    int timeout = (op->target->request_timeout_ms > 0 ? op->target->request_timeout_ms : 30000) +
                  (int)(len / (50 * 1024));
    /* The signed URL is the credential: no Authorization header, and PUT is idempotent. */
    rc = fb_send(op, "PUT", up, "application/zip", zip, len, false, true, timeout, why, sizeof why);
    if (rc != SN_OK) {
        sn_deploy_op_fail(op->dop, rc != SN_ERROR, "source zip upload: %s", why);
        json_decref(resp);
        return SN_ERROR;
    }
    *bucket = sn_strdup(b);
    *object = sn_strdup(o);
    json_decref(resp);
    sn_info(LOG_MODULE, "source uploaded deploy=%s bytes=%zu object=%s",
            op->dep->deploy_id[0] ? op->dep->deploy_id : "-", len, *object);
    return SN_OK;
}

/* ---- helpers ---------------------------------------------------------------------------- */

static char *s_api(fb_op_t *op, const char *fmt, ...)
{
    const char *base = op->target->functions_api_base && *op->target->functions_api_base
                           ? op->target->functions_api_base
                           : DEFAULT_FUNCTIONS_BASE;
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

static char *s_history_key(fb_op_t *op, const char *fn)
{
    return sn_strdupf("%sfirebase:fnsrc:%s:%s:%s:%s", sn_redis_ns(sn_ctx_redis(op->ctx)),
                      op->dep->project, op->dep->environment, op->dep->target, fn);
}

/* LPUSH "<deploy_id> <sha>" unless already in the list; keep HISTORY_KEEP. */
static void s_history_push(fb_op_t *op, const char *fn, const char *sha)
{
    static const char *const lua =
        "local items = redis.call('LRANGE', KEYS[1], 0, -1)\n"
        "for _, v in ipairs(items) do if v == ARGV[1] then return 0 end end\n"
        "redis.call('LPUSH', KEYS[1], ARGV[1])\n"
        "redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)\n"
        "return 1\n";
    char *key = s_history_key(op, fn);
    char *entry = sn_strdupf("%s %s", op->dep->deploy_id, sha);
    char keep[16];
    snprintf(keep, sizeof keep, "%d", HISTORY_KEEP);
    const char *argv[] = {"EVAL", lua, "1", key, entry, keep};
    redisReply *r = NULL;
    sn_rc_t rc =
        sn_redis_cmd(sn_ctx_redis(op->ctx), SN_REDIS_MAIN, REDIS_TIMEOUT_MS, &r, 6, argv, NULL);
    if (rc != SN_OK || r->type == REDIS_REPLY_ERROR)
        sn_warn(LOG_MODULE, "function %s: source history not updated (redis)", fn);
    if (r)
        freeReplyObject(r);
    free(entry);
    free(key);
}
