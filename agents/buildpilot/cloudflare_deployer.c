/* cloudflare-deployer (BuildPilot): Cloudflare Pages Direct Upload as wrangler does it
 * (shared/contracts/cloudflare-pages.md §4), serving deploy.cloudflare with DeployRequest
 * ops for targets of type cloudflare_pages (docs/cloudflare.md):
 *
 *  - stage: extract the artifact, add .well-known/sentinel-release.json, hash every file
 *    (hex(BLAKE3(base64(bytes) + extension))[0:32]), get an upload JWT, check-missing,
 *    upload only the missing files in buckets, upsert the hashes, create a preview
 *    deployment (branch "sentinel-<run>") with the manifest, follow its stages; the
 *    preview URL is the deployment's own `url`;
 *  - promote: a production deployment (branch = production_branch) of the same manifest
 *    (kept in the deploy record by stage; the files are already uploaded, so check-missing
 *    finds none; if some expired, the artifact is uploaded again); live URL = its alias;
 *  - rollback: the rollback endpoint to to_release_id, or to the production deployment
 *    that was live before the request's deploy (recorded by promote).
 *
 * Every provider call goes through sn_provider (shared per-token budget, breaker,
 * retries for safe calls only, one attempt budget per op) and every answer's envelope
 * `success` is checked. Creating a deployment is not idempotent: before it a marker is
 * written in the deploy record, after it the deployment id (HSETNX) — BEFORE it is
 * followed; a re-dispatched job finds the id and resumes, or finds the marker and looks
 * for its deployment in the project's list (the commit message carries deploy=<id>)
 * before it creates one. A request whose envelope carries label `job_id` is a ledger job,
 * claimed before any side effect and completed with the packed DeployResult. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_artifact.h"
#include "sentinel/sn_blake3.h"
#include "sentinel/sn_crypto.h"
#include "sentinel/sn_deploy_op.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_provider.h"
#include "sentinel/sn_redis.h"

#define LOG_MODULE "cloudflare-deployer"
#define PROVIDER "cloudflare"
#define TARGET_TYPE "cloudflare_pages"
#define DEFAULT_API_BASE "https://api.cloudflare.com/client/v4"
#define IDENTITY_PATH "/.well-known/sentinel-release.json"
#define MAX_FILE_BYTES (25 * 1024 * 1024)
#define DEFAULT_MAX_FILES 20000
#define BUCKET_MAX_BYTES (40 * 1024 * 1024)
#define BUCKET_MAX_FILES 2000
#define HASH_HEX_LEN 32
#define API_MAX_BODY (8 * 1024 * 1024)
#define CODE_UNAUTHORIZED_JWT 8000013
#define CODE_UNKNOWN 8000000
#define LIST_PER_PAGE 25
#define OP_DEFAULT_DEADLINE_MS (30 * 60 * 1000)
#define REPLY_MARGIN_MS 300

typedef struct {
    const sn_target_config_t *cfg; /* borrowed from the runtime's config */
    sn_provider_t *provider;       /* per target: its token is the credential */
} s_target_t;

typedef struct {
    const sn_config_t *cfg;
    char *instance;
    char *work_dir; /* <state_dir>/cloudflare */
    sn_artifact_t *store;
    s_target_t *targets;
    size_t target_count;
} s_state_t;

/* One file of the site. */
typedef struct {
    char *path; /* "/index.html" */
    char *abs;  /* on disk */
    char hash[HASH_HEX_LEN + 1];
    const char *content_type;
    size_t size;
} s_file_t;

/* One op being served (job thread). */
typedef struct {
    sn_ctx_t *ctx;
    s_state_t *st;
    sn_request_t *req;
    const Sentinel__V1__DeployRequest *in;
    const Sentinel__V1__Deploy *dep;
    const s_target_t *target;
    const char *opname;
    sn_http_t *http;
    char *auth_api; /* "Authorization: Bearer <token>" (cleansed at the end) */
    char *auth_jwt; /* the same with the upload JWT */
    char *api;      /* api_base without a trailing slash */
    char *project_url;
    int max_files;
    /* one attempt budget per op: every call gets one attempt plus what is left of it */
    sn_provider_budget_t budget;
    int retries_left;
    int64_t deadline_ms;
    /* the answer and the ledger job (request-owned) */
    sn_deploy_op_t *dop;
    Sentinel__V1__DeployResult *res;
    Sentinel__V1__Deploy *out;
    char api_reason[256]; /* the last API failure */
    long api_code;        /* its first envelope error code, 0 if none */
} s_op_t;

static sn_rc_t s_init(sn_ctx_t *ctx, void **state);
static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req);
static void s_destroy(sn_ctx_t *ctx, void *state);
static sn_rc_t s_job(sn_ctx_t *ctx, void *state, const sn_request_t *req, sn_envelope_t *reply,
                     const char **nak_reason);
static void s_run(s_op_t *op);
static void s_stage_or_promote(s_op_t *op, bool is_promote);
static void s_rollback(s_op_t *op);

const sn_role_t cloudflare_deployer_role = {
    .name = "cloudflare-deployer",
    .agent = "BuildPilot",
    .summary = "Cloudflare Pages Direct Upload: preview (stage), production (promote), rollback",
    .services = (const char *const[]){"deploy.cloudflare", NULL},
    .leadership = SN_LEADERSHIP_NONE,
    .credit = 1, /* scale with processes: the request budget is shared through Redis */
    .init = s_init,
    .on_request = s_request,
    .destroy = s_destroy,
};

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    const sn_config_t *cfg = sn_ctx_config(ctx);
    const char *state_dir = cfg->state_dir ? cfg->state_dir : "./var";
    s_state_t *st = sn_calloc(1, sizeof *st);
    *state = st;
    st->cfg = cfg;
    st->instance = sn_strdup(sn_ctx_instance(ctx));
    st->store = sn_deploy_op_store_new(ctx);
    st->work_dir = sn_strdupf("%s/cloudflare", state_dir);
    if (!st->store || (mkdir(st->work_dir, 0700) != 0 && errno != EEXIST)) {
        sn_error(LOG_MODULE, "cannot use work dir %s or the artifact store: %s", st->work_dir,
                 strerror(errno));
        return SN_ERROR;
    }
    st->targets = sn_calloc(cfg->target_count ? cfg->target_count : 1, sizeof *st->targets);
    for (size_t i = 0; i < cfg->target_count; i++) {
        const sn_target_config_t *t = &cfg->targets[i];
        if (!t->type || strcmp(t->type, TARGET_TYPE) != 0)
            continue;
        s_target_t *mine = &st->targets[st->target_count++];
        mine->cfg = t;
        if (t->token && strlen(t->token) >= 4)
            sn_log_add_secret(t->token); /* masked in every log line, whatever happens */
        sn_provider_opts_t po;
        sn_provider_opts_from_target(&po, PROVIDER, t);
        /* One second more than the provider's window: a request granted at the edge of
         * our window reaches Cloudflare a few ms later, and must still fit in its window. */
        po.budget_window_s = (t->budget_window_s > 0 ? t->budget_window_s : 300) + 1;
        mine->provider = sn_provider_new(sn_ctx_redis(ctx), &po);
        if (!mine->provider)
            return SN_ERROR;
        sn_info(LOG_MODULE, "target=%s project=%s account=%s budget=%d/%ds token=%s",
                t->name ? t->name : "", t->project ? t->project : "",
                t->account_id ? t->account_id : "", t->budget_requests, po.budget_window_s,
                sn_provider_cred_hash(mine->provider));
    }
    sn_info(LOG_MODULE, "serving deploy.cloudflare targets=%zu", st->target_count);
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    (void)ctx;
    s_state_t *st = state;
    if (!st)
        return;
    for (size_t i = 0; i < st->target_count; i++)
        sn_provider_destroy(&st->targets[i].provider);
    free(st->targets);
    sn_artifact_destroy(&st->store);
    free(st->work_dir);
    free(st->instance);
    free(st);
}

static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    sn_deploy_op_defer(ctx, req, LOG_MODULE, s_job, state);
}

/* ---- the job ----------------------------------------------------------------------------- */

static sn_rc_t s_job(sn_ctx_t *ctx, void *state, const sn_request_t *creq, sn_envelope_t *reply,
                     const char **nak_reason)
{
    (void)nak_reason;
    sn_request_t *req = (sn_request_t *)creq;
    s_state_t *st = state;
    const Sentinel__V1__DeployRequest *in = sn_request_envelope(req)->deploy_request;
    s_op_t op = {.ctx = ctx, .st = st, .req = req, .in = in};
    op.dop = sn_deploy_op_begin(ctx, req, reply, LOG_MODULE);
    op.dep = sn_deploy_op_deploy(op.dop);
    op.res = sn_deploy_op_result(op.dop);
    op.out = sn_deploy_op_out(op.dop);
    op.out->provider = TARGET_TYPE;
    const char *opname = in->op && *in->op ? in->op : "";
    bool is_known_op = strcmp(opname, "stage") == 0 || strcmp(opname, "promote") == 0 ||
                       strcmp(opname, "rollback") == 0;
    op.opname = is_known_op ? opname : "unknown-op";
    int64_t t0 = sn_mono_ms();

    sn_deploy_op_claim_t claim = sn_deploy_op_claim(op.dop, st->instance, op.opname);
    if (claim == SN_DEPLOY_OP_ANSWERED)
        return SN_OK;
    if (claim == SN_DEPLOY_OP_REFUSED)
        goto log;
    s_run(&op);
    sn_deploy_op_finish(op.dop);
    sn_deploy_op_complete(op.dop, op.opname);
log:
    if (op.res->ok)
        sn_info(LOG_MODULE,
                "%s ok target=%s deploy=%s deployment=%s url=%s previous=%s job=%s ms=%lld",
                op.opname, sn_deploy_op_name_shown(op.dep->target),
                sn_deploy_op_name_shown(op.dep->deploy_id),
                op.out->provider_deployment_id ? op.out->provider_deployment_id : "",
                strcmp(opname, "stage") == 0 ? (op.out->preview_url ? op.out->preview_url : "")
                                             : (op.out->live_url ? op.out->live_url : ""),
                op.out->previous_release_id ? op.out->previous_release_id : "",
                sn_deploy_op_job_shown(op.dop), (long long)(sn_mono_ms() - t0));
    else
        sn_warn(LOG_MODULE, "%s failed target=%s deploy=%s job=%s transient=%d reason=%s",
                op.opname, sn_deploy_op_name_shown(op.dep->target),
                sn_deploy_op_name_shown(op.dep->deploy_id), sn_deploy_op_job_shown(op.dop),
                op.res->is_transient, op.res->reason);
    return SN_OK;
}

/* Validates the request, sets up the op's client and runs it. */
static void s_run(s_op_t *op)
{
    const char *opname = op->in->op ? op->in->op : "";
    const Sentinel__V1__Deploy *d = op->dep;
    bool is_rollback = strcmp(opname, "rollback") == 0;
    if (strcmp(op->opname, "unknown-op") == 0) {
        sn_deploy_op_fail(op->dop, false, "unknown op '%s' (stage, promote, rollback)",
                          sn_deploy_op_name_shown(opname));
        return;
    }
    if (!op->in->deploy) {
        sn_deploy_op_fail(op->dop, false, "missing deploy");
        return;
    }
    if (!sn_deploy_op_name_is_valid(d->deploy_id) && !(is_rollback && !*d->deploy_id)) {
        sn_deploy_op_fail(op->dop, false, "invalid deploy id");
        return;
    }
    if (!sn_deploy_op_name_is_valid(d->target)) {
        sn_deploy_op_fail(op->dop, false, "invalid target name");
        return;
    }
    if (!sn_deploy_op_name_is_valid(d->project) || !sn_deploy_op_name_is_valid(d->environment) ||
        (d->run_id && *d->run_id && !sn_deploy_op_name_is_valid(d->run_id))) {
        sn_deploy_op_fail(op->dop, false, "invalid project, environment or run id");
        return;
    }
    for (size_t i = 0; i < op->st->target_count && !op->target; i++)
        if (op->st->targets[i].cfg->name && strcmp(op->st->targets[i].cfg->name, d->target) == 0)
            op->target = &op->st->targets[i];
    if (!op->target) {
        sn_deploy_op_fail(op->dop, false,
                          "unknown target '%s' (no cloudflare_pages target of that name)",
                          d->target);
        return;
    }
    const sn_target_config_t *t = op->target->cfg;
    if (!t->token || !*t->token || !sn_deploy_op_name_is_valid(t->account_id) ||
        !sn_deploy_op_name_is_valid(t->project)) {
        sn_deploy_op_fail(op->dop, false, "target '%s' needs token, account_id and project",
                          d->target);
        return;
    }
    const char *base = t->api_base && *t->api_base ? t->api_base : DEFAULT_API_BASE;
    size_t n = strlen(base);
    while (n > 0 && base[n - 1] == '/')
        n--;
    op->api = sn_strndup(base, n);
    op->project_url =
        sn_strdupf("%s/accounts/%s/pages/projects/%s", op->api, t->account_id, t->project);
    op->auth_api = sn_strdupf("Authorization: Bearer %s", t->token);
    op->max_files = DEFAULT_MAX_FILES;
    /* The op's deadline: the caller's, less the time to answer. */
    int64_t now = sn_mono_ms();
    int64_t dl = sn_request_deadline_ms(op->req);
    op->deadline_ms = dl > now ? dl - REPLY_MARGIN_MS : now + OP_DEFAULT_DEADLINE_MS;
    int max_attempts = t->max_attempts > 0 ? t->max_attempts : 5;
    op->retries_left = max_attempts - 1;
    sn_provider_budget_init(&op->budget, 1, op->deadline_ms);
    op->http = sn_http_new();
    if (!op->http) {
        sn_deploy_op_fail(op->dop, true, "no HTTP client");
    } else if (is_rollback) {
        s_rollback(op);
    } else {
        s_stage_or_promote(op, strcmp(opname, "promote") == 0);
    }
    sn_http_destroy(&op->http);
    sn_crypto_cleanse(op->auth_api, strlen(op->auth_api));
    free(op->auth_api);
    if (op->auth_jwt) {
        sn_crypto_cleanse(op->auth_jwt, strlen(op->auth_jwt));
        free(op->auth_jwt);
    }
    free(op->project_url);
    free(op->api);
}

/* ---- the API ------------------------------------------------------------------------------ */

/* Reads the first error of a v4 envelope into op->api_code / op->api_reason. */
static void s_envelope_error(s_op_t *op, const json_t *root, long status)
{
    const json_t *errs = json_is_object(root) ? json_object_get(root, "errors") : NULL;
    const json_t *e0 = json_is_array(errs) ? json_array_get(errs, 0) : NULL;
    const json_t *code = e0 ? json_object_get(e0, "code") : NULL;
    const json_t *msg = e0 ? json_object_get(e0, "message") : NULL;
    op->api_code = json_is_integer(code) ? (long)json_integer_value(code) : 0;
    /* Only a printable prefix of the provider's message: no control characters in logs. */
    char clean[160] = "";
    if (json_is_string(msg)) {
        const char *s = json_string_value(msg);
        size_t i = 0;
        for (; s[i] && i < sizeof clean - 1; i++)
            clean[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
        clean[i] = '\0';
    }
    snprintf(op->api_reason, sizeof op->api_reason, "HTTP %ld, code %ld: %s", status, op->api_code,
             clean[0] ? clean : "(no message)");
}

/* One API call. @auth: the Authorization line; @content_type: for @body (may be NULL).
 * SN_OK with *result (a new reference to the envelope's `result`, may be JSON null; the
 * caller decrefs) when the envelope says success; SN_ERROR: refused (4xx, or success
 * false); SN_AGAIN: transient (budget spent, 429, 5xx, timeout, garbage with 200).
 * op->api_reason says why. @is_idempotent: may be retried within the op's budget. */
static sn_rc_t s_api(s_op_t *op, const char *method, const char *url, const char *auth,
                     const char *content_type, const void *body, size_t body_len,
                     bool is_idempotent, json_t **result)
{
    *result = NULL;
    op->api_code = 0;
    op->api_reason[0] = '\0';
    sn_deploy_op_renew(op->dop);
    if (sn_deploy_op_is_lease_lost(op->dop)) {
        snprintf(op->api_reason, sizeof op->api_reason, "job lease lost");
        return SN_AGAIN;
    }
    const sn_target_config_t *t = op->target->cfg;
    char *ctype = content_type ? sn_strdupf("Content-Type: %s", content_type) : NULL;
    const char *headers[] = {auth, "Accept: application/json", ctype, NULL};
    sn_http_request_t req = {
        .method = method,
        .url = url,
        .headers = headers,
        .body = body,
        .body_len = body_len,
        .timeout_ms = t->request_timeout_ms > 0 ? t->request_timeout_ms : 30000,
        .connect_timeout_ms = 10000,
        .max_body_bytes = API_MAX_BODY,
    };
    /* This call: one attempt, plus the retries the op has left when it is safe. */
    int before = op->budget.attempts;
    op->budget.max_attempts = before + 1 + (is_idempotent ? op->retries_left : 0);
    sn_http_response_t resp;
    json_t *root = NULL;
    sn_rc_t rc = sn_provider_call_json(op->target->provider, op->http, &req, is_idempotent,
                                       &op->budget, &resp, &root);
    int used = op->budget.attempts - before;
    int allowed = op->budget.max_attempts - before;
    if (used > 1)
        op->retries_left -= used - 1;
    if (op->retries_left < 0)
        op->retries_left = 0;
    free(ctype);
    if (rc == SN_OK) {
        const json_t *ok = json_object_get(root, "success");
        if (!json_is_boolean(ok)) {
            snprintf(op->api_reason, sizeof op->api_reason,
                     "HTTP %ld without a v4 envelope (no success)", resp.status);
            rc = SN_AGAIN; /* garbage with 200 */
        } else if (!json_is_true(ok)) {
            s_envelope_error(op, root, resp.status);
            rc = SN_ERROR;
        } else {
            json_t *r = json_object_get(root, "result");
            *result = r ? json_incref(r) : json_null();
        }
    } else {
        /* A refusal carries an envelope worth reading (the code, e.g. 8000013). */
        json_t *err = NULL;
        char why[128];
        if (resp.status >= 400 && sn_provider_parse_json(&resp, &err, why, sizeof why) == SN_OK) {
            s_envelope_error(op, err, resp.status);
            json_decref(err);
            size_t used_len = strlen(op->api_reason);
            snprintf(op->api_reason + used_len, sizeof op->api_reason - used_len,
                     " (%s, attempt %d/%d)", rc == SN_AGAIN ? "transient" : "refused", used,
                     allowed);
        } else {
            snprintf(op->api_reason, sizeof op->api_reason, "%s", op->budget.reason);
        }
    }
    json_decref(root);
    sn_http_response_fini(&resp);
    return rc;
}

static const char *s_jstr(const json_t *obj, const char *key)
{
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Gets a fresh upload JWT (and its max_file_count_allowed). */
static sn_rc_t s_upload_token(s_op_t *op)
{
    char *url = sn_strdupf("%s/upload-token", op->project_url);
    json_t *r = NULL;
    sn_rc_t rc = s_api(op, "GET", url, op->auth_api, NULL, NULL, 0, true, &r);
    free(url);
    if (rc != SN_OK)
        return rc;
    const char *jwt = s_jstr(r, "jwt");
    size_t n = jwt ? strlen(jwt) : 0;
    bool is_shaped = n > 0 && n < 8192 &&
                     strspn(jwt, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                 "0123456789-_.=") == n;
    if (!is_shaped) {
        snprintf(op->api_reason, sizeof op->api_reason, "upload-token answered no usable jwt");
        json_decref(r);
        return SN_AGAIN;
    }
    if (op->auth_jwt) {
        sn_crypto_cleanse(op->auth_jwt, strlen(op->auth_jwt));
        free(op->auth_jwt);
    }
    op->auth_jwt = sn_strdupf("Authorization: Bearer %s", jwt);
    /* The payload's max_file_count_allowed caps the file count. */
    const char *dot1 = strchr(jwt, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    uint8_t *payload = NULL;
    size_t plen = 0;
    if (dot2 &&
        sn_json_base64_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &payload, &plen) == SN_OK) {
        json_t *p = json_loadb((const char *)payload, plen, 0, NULL);
        const json_t *m = p ? json_object_get(p, "max_file_count_allowed") : NULL;
        if (json_is_integer(m) && json_integer_value(m) > 0 && json_integer_value(m) < INT_MAX)
            op->max_files = (int)json_integer_value(m);
        json_decref(p);
        free(payload);
    }
    json_decref(r);
    return SN_OK;
}

/* An asset call with the upload JWT, refreshed once when it expired (code 8000013). */
static sn_rc_t s_asset_api(s_op_t *op, const char *what, const char *body, json_t **result)
{
    char *url = sn_strdupf("%s/pages/assets/%s", op->api, what);
    sn_rc_t rc = SN_ERROR;
    for (int round = 0; round < 2; round++) {
        if (!op->auth_jwt && (rc = s_upload_token(op)) != SN_OK)
            break;
        rc = s_api(op, "POST", url, op->auth_jwt, "application/json", body, strlen(body), true,
                   result);
        if (rc != SN_ERROR || op->api_code != CODE_UNAUTHORIZED_JWT)
            break;
        sn_info(LOG_MODULE, "upload JWT refused (code %d): getting a new one",
                CODE_UNAUTHORIZED_JWT);
        sn_crypto_cleanse(op->auth_jwt, strlen(op->auth_jwt));
        free(op->auth_jwt);
        op->auth_jwt = NULL;
    }
    free(url);
    return rc;
}

/* ---- the site's files --------------------------------------------------------------------- */

static const char *s_content_type(const char *path)
{
    static const char *const map[][2] = {
        {"html", "text/html"},
        {"htm", "text/html"},
        {"css", "text/css"},
        {"js", "application/javascript"},
        {"mjs", "application/javascript"},
        {"json", "application/json"},
        {"map", "application/json"},
        {"webmanifest", "application/manifest+json"},
        {"txt", "text/plain"},
        {"xml", "application/xml"},
        {"svg", "image/svg+xml"},
        {"png", "image/png"},
        {"jpg", "image/jpeg"},
        {"jpeg", "image/jpeg"},
        {"gif", "image/gif"},
        {"webp", "image/webp"},
        {"ico", "image/x-icon"},
        {"wasm", "application/wasm"},
        {"woff", "font/woff"},
        {"woff2", "font/woff2"},
        {"pdf", "application/pdf"},
        {"mp4", "video/mp4"},
    };
    const char *slash = strrchr(path, '/');
    const char *dot = strrchr(slash ? slash : path, '.');
    if (dot)
        for (size_t i = 0; i < SN_ARRAY_LEN(map); i++)
            if (strcasecmp(dot + 1, map[i][0]) == 0)
                return map[i][1];
    return "application/octet-stream";
}

/* The file's extension without the dot ("" if none): part of the hash input. */
static const char *s_extension(const char *path)
{
    const char *slash = strrchr(path, '/');
    const char *dot = strrchr(slash ? slash : path, '.');
    return dot ? dot + 1 : "";
}

static char *s_read_all(const char *path, size_t max, size_t *len)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (size_t)sb.st_size > max) {
        close(fd);
        return NULL;
    }
    size_t size = (size_t)sb.st_size;
    char *buf = sn_malloc(size + 1);
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got != size) {
        free(buf);
        return NULL;
    }
    buf[size] = '\0';
    *len = size;
    return buf;
}

/* hex(BLAKE3(base64(bytes) + extension))[0:32] of the file at @abs (wrangler's hash). */
static sn_rc_t s_hash_file(const char *abs, const char *path, char out[HASH_HEX_LEN + 1],
                           size_t *size)
{
    size_t len = 0;
    char *bytes = s_read_all(abs, MAX_FILE_BYTES, &len);
    if (!bytes)
        return SN_ERROR;
    char *b64 = sn_json_base64_encode((const uint8_t *)bytes, len);
    const char *ext = s_extension(path);
    sn_blake3_t h;
    sn_blake3_init(&h);
    sn_blake3_update(&h, b64, strlen(b64));
    sn_blake3_update(&h, ext, strlen(ext));
    uint8_t digest[HASH_HEX_LEN / 2];
    sn_blake3_finalize(&h, digest, sizeof digest);
    sn_hex_encode(digest, sizeof digest, out);
    out[HASH_HEX_LEN] = '\0';
    *size = len;
    free(b64);
    free(bytes);
    return SN_OK;
}

typedef struct {
    s_file_t *items;
    size_t count;
    char *special[3]; /* _headers, _redirects, _routes.json at the root (contents) */
} s_files_t;

static void s_files_fini(s_files_t *f)
{
    for (size_t i = 0; i < f->count; i++) {
        free(f->items[i].path);
        free(f->items[i].abs);
    }
    free(f->items);
    for (size_t i = 0; i < SN_ARRAY_LEN(f->special); i++)
        free(f->special[i]);
    memset(f, 0, sizeof *f);
}

static const char *const s_special_names[3] = {"_headers", "_redirects", "_routes.json"};

/* Walks @dir (@rel: "" or "/sub") the way wrangler does: skips _worker.js, the special
 * files (sent as form fields instead), functions/, .DS_Store, node_modules, .git and
 * symlinks. Fails on an over-size file or too many files (reason set). */
static sn_rc_t s_walk(s_op_t *op, const char *dir, const char *rel, s_files_t *out)
{
    DIR *d = opendir(dir);
    if (!d) {
        sn_deploy_op_fail(op->dop, true, "cannot read %s: %s", dir, strerror(errno));
        return SN_ERROR;
    }
    sn_rc_t rc = SN_OK;
    struct dirent *e;
    while (rc == SN_OK && (e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || strcmp(name, ".DS_Store") == 0 ||
            strcmp(name, "node_modules") == 0 || strcmp(name, ".git") == 0)
            continue;
        bool is_root = !*rel;
        if (is_root && (strcmp(name, "_worker.js") == 0 || strcmp(name, "functions") == 0))
            continue;
        char *abs = sn_strdupf("%s/%s", dir, name);
        char *path = sn_strdupf("%s/%s", rel, name);
        struct stat sb;
        if (lstat(abs, &sb) != 0 || S_ISLNK(sb.st_mode)) {
            /* symlinks are skipped, like wrangler */
        } else if (S_ISDIR(sb.st_mode)) {
            rc = s_walk(op, abs, path, out);
        } else if (S_ISREG(sb.st_mode)) {
            long special = -1;
            for (size_t i = 0; is_root && i < SN_ARRAY_LEN(s_special_names); i++)
                if (strcmp(name, s_special_names[i]) == 0)
                    special = (long)i;
            size_t size = 0;
            if ((size_t)sb.st_size > MAX_FILE_BYTES) {
                sn_deploy_op_fail(op->dop, false,
                                  "file %.200s is %lld bytes, over Cloudflare's 25 MiB", path,
                                  (long long)sb.st_size);
                rc = SN_ERROR;
            } else if (special >= 0) {
                free(out->special[special]);
                out->special[special] = s_read_all(abs, MAX_FILE_BYTES, &size);
            } else if (out->count >= (size_t)op->max_files) {
                sn_deploy_op_fail(op->dop, false, "more than %d files (Cloudflare's limit)",
                                  op->max_files);
                rc = SN_ERROR;
            } else {
                out->items = sn_realloc(out->items, (out->count + 1) * sizeof *out->items);
                s_file_t *f = &out->items[out->count];
                memset(f, 0, sizeof *f);
                if (s_hash_file(abs, path, f->hash, &f->size) != SN_OK) {
                    sn_deploy_op_fail(op->dop, true, "cannot read %.200s", path);
                    rc = SN_ERROR;
                } else {
                    f->path = path;
                    f->abs = abs;
                    f->content_type = s_content_type(path);
                    out->count++;
                    path = abs = NULL;
                }
            }
        }
        free(abs);
        free(path);
    }
    closedir(d);
    return rc;
}

/* Writes the release identity into the extracted site. */
static sn_rc_t s_write_identity(s_op_t *op, const char *site)
{
    char *json = sn_deploy_op_identity_json(op->dop);
    char *wk = sn_strdupf("%s/.well-known", site);
    char *path = sn_strdupf("%s" IDENTITY_PATH, site);
    sn_rc_t rc = SN_ERROR;
    struct stat sb;
    if (json &&
        (mkdir(wk, 0755) == 0 || (errno == EEXIST && lstat(wk, &sb) == 0 && S_ISDIR(sb.st_mode)))) {
        (void)unlink(path);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        size_t len = strlen(json);
        if (fd >= 0) {
            if (write(fd, json, len) == (ssize_t)len && write(fd, "\n", 1) == 1)
                rc = SN_OK;
            close(fd);
        }
    }
    if (rc != SN_OK)
        sn_deploy_op_fail(op->dop, true, "cannot write the release identity: %s", strerror(errno));
    free(path);
    free(wk);
    free(json);
    return rc;
}

/* The manifest {"/path": "hash", ...} of @files (new reference). */
static json_t *s_manifest(const s_files_t *files)
{
    json_t *m = json_object();
    for (size_t i = 0; i < files->count; i++)
        json_object_set_new(m, files->items[i].path, json_string(files->items[i].hash));
    return m;
}

/* {"hashes": [...]} of the manifest's values (every hash once). */
static char *s_hashes_body(const json_t *manifest)
{
    json_t *seen = json_object();
    json_t *arr = json_array();
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)manifest, key, v)
    {
        const char *h = json_string_value(v);
        if (h && !json_object_get(seen, h)) {
            json_object_set_new(seen, h, json_true());
            json_array_append_new(arr, json_string(h));
        }
    }
    json_t *body = json_pack("{s:o}", "hashes", arr);
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    json_decref(seen);
    return s;
}

/* check-missing; *missing gets the array of hashes Cloudflare lacks (new reference). */
static sn_rc_t s_check_missing(s_op_t *op, const json_t *manifest, json_t **missing)
{
    char *body = s_hashes_body(manifest);
    sn_rc_t rc = s_asset_api(op, "check-missing", body, missing);
    free(body);
    if (rc == SN_OK && !json_is_array(*missing)) {
        json_decref(*missing);
        *missing = NULL;
        snprintf(op->api_reason, sizeof op->api_reason, "check-missing answered no array");
        rc = SN_AGAIN;
    }
    return rc;
}

/* Uploads the files whose hash is in @missing, in buckets. */
static sn_rc_t s_upload(s_op_t *op, const s_files_t *files, const json_t *missing, size_t *count,
                        size_t *bytes)
{
    json_t *want = json_object();
    size_t i;
    json_t *v;
    json_array_foreach((json_t *)missing, i, v)
    {
        if (json_is_string(v))
            json_object_set_new(want, json_string_value(v), json_true());
    }
    sn_rc_t rc = SN_OK;
    json_t *bucket = json_array();
    size_t bucket_bytes = 0;
    *count = *bytes = 0;
    for (size_t k = 0; k <= files->count && rc == SN_OK; k++) {
        json_t *item = NULL;
        size_t item_len = 0;
        if (k < files->count) {
            const s_file_t *f = &files->items[k];
            if (!json_object_get(want, f->hash))
                continue;
            json_object_del(want, f->hash); /* two paths, one content: uploaded once */
            size_t len = 0;
            char *content = s_read_all(f->abs, MAX_FILE_BYTES, &len);
            if (!content) {
                sn_deploy_op_fail(op->dop, true, "cannot read %.200s", f->path);
                rc = SN_ERROR;
                break;
            }
            char *b64 = sn_json_base64_encode((const uint8_t *)content, len);
            item_len = strlen(b64);
            item = json_pack("{s:s, s:s, s:{s:s}, s:b}", "key", f->hash, "value", b64, "metadata",
                             "contentType", f->content_type, "base64", 1);
            free(b64);
            free(content);
            *bytes += len;
            (*count)++;
        }
        bool is_full = item && json_array_size(bucket) > 0 &&
                       (bucket_bytes + item_len > BUCKET_MAX_BYTES ||
                        json_array_size(bucket) >= BUCKET_MAX_FILES);
        if ((is_full || (!item && json_array_size(bucket) > 0))) {
            char *body = json_dumps(bucket, JSON_COMPACT);
            json_t *r = NULL;
            rc = s_asset_api(op, "upload", body, &r);
            json_decref(r);
            free(body);
            json_array_clear(bucket);
            bucket_bytes = 0;
        }
        if (item) {
            json_array_append_new(bucket, item);
            bucket_bytes += item_len;
        }
    }
    json_decref(bucket);
    json_decref(want);
    return rc;
}

/* Extracts the artifact, adds the identity, hashes, uploads what is missing and upserts
 * the hashes. *manifest gets the manifest (new reference). The reason is set on failure. */
static sn_rc_t s_prepare(s_op_t *op, s_files_t *files, json_t **manifest)
{
    const char *sha = op->in->artifact_sha256;
    *manifest = NULL;
    if (!sn_artifact_sha_is_valid(sha)) {
        sn_deploy_op_fail(op->dop, false, "invalid artifact sha256");
        return SN_ERROR;
    }
    char rnd[17];
    sn_random_hex(rnd, 8);
    char *site = sn_strdupf("%s/site-%s-%s", op->st->work_dir, op->dep->deploy_id, rnd);
    sn_rc_t rc = sn_artifact_extract(op->st->store, sha, site);
    if (rc != SN_OK) {
        sn_deploy_op_fail(op->dop, rc == SN_AGAIN,
                          rc == SN_DECLINED ? "artifact %s is not in the store"
                          : rc == SN_AGAIN  ? "artifact %s could not be read"
                                            : "artifact %s is corrupted or unsafe (refused)",
                          sha);
        free(site);
        return SN_ERROR;
    }
    int64_t t0 = sn_mono_ms();
    rc = s_write_identity(op, site);
    if (rc == SN_OK)
        rc = s_upload_token(op); /* before the walk: the JWT caps the file count */
    if (rc != SN_OK && op->res->ok)
        sn_deploy_op_fail(op->dop, rc == SN_AGAIN, "upload token: %s", op->api_reason);
    if (rc == SN_OK)
        rc = s_walk(op, site, "", files);
    json_t *missing = NULL;
    size_t uploaded = 0, bytes = 0;
    if (rc == SN_OK) {
        *manifest = s_manifest(files);
        rc = s_check_missing(op, *manifest, &missing);
        if (rc != SN_OK)
            sn_deploy_op_fail(op->dop, rc == SN_AGAIN, "check-missing: %s", op->api_reason);
    }
    if (rc == SN_OK && json_array_size(missing) > 0) {
        rc = s_upload(op, files, missing, &uploaded, &bytes);
        if (rc != SN_OK && op->res->ok)
            sn_deploy_op_fail(op->dop, rc == SN_AGAIN, "upload: %s", op->api_reason);
    }
    if (rc == SN_OK) {
        char *body = s_hashes_body(*manifest);
        json_t *r = NULL;
        /* Only slows future deploys when it fails (wrangler): logged, not fatal. */
        if (s_asset_api(op, "upsert-hashes", body, &r) != SN_OK)
            sn_warn(LOG_MODULE, "upsert-hashes failed deploy=%s: %s", op->dep->deploy_id,
                    op->api_reason);
        json_decref(r);
        free(body);
        sn_info(LOG_MODULE, "assets deploy=%s files=%zu uploaded=%zu bytes=%zu ms=%lld",
                op->dep->deploy_id, files->count, uploaded, bytes, (long long)(sn_mono_ms() - t0));
    }
    json_decref(missing);
    if (rc != SN_OK) {
        json_decref(*manifest);
        *manifest = NULL;
    }
    if (sn_artifact_rmtree(site) != SN_OK)
        sn_warn(LOG_MODULE, "cannot remove %s", site);
    free(site);
    return rc;
}

/* ---- deployments ------------------------------------------------------------------------- */

/* True if @message names @deploy_id as "deploy=<id>" (a whole token). */
static bool s_message_names(const char *message, const char *deploy_id)
{
    size_t n = strlen(deploy_id);
    for (const char *p = message ? strstr(message, "deploy=") : NULL; p;
         p = strstr(p + 1, "deploy=")) {
        bool is_start = p == message || p[-1] == ' ';
        if (is_start && strncmp(p + 7, deploy_id, n) == 0 && (p[7 + n] == '\0' || p[7 + n] == ' '))
            return true;
    }
    return false;
}

/* Looks for a deployment of this deploy and environment created before (a create whose
 * answer was lost, or a worker killed before it recorded the id). SN_OK with *id (caller
 * frees), SN_DECLINED: none, else the failure. */
static sn_rc_t s_find_created(s_op_t *op, const char *env, const char *branch, char **id)
{
    *id = NULL;
    char *url =
        sn_strdupf("%s/deployments?env=%s&page=1&per_page=%d", op->project_url, env, LIST_PER_PAGE);
    json_t *r = NULL;
    sn_rc_t rc = s_api(op, "GET", url, op->auth_api, NULL, NULL, 0, true, &r);
    free(url);
    if (rc != SN_OK)
        return rc;
    rc = SN_DECLINED;
    size_t i;
    json_t *d;
    json_array_foreach(r, i, d)
    {
        const json_t *trig = json_object_get(d, "deployment_trigger");
        const json_t *md = trig ? json_object_get(trig, "metadata") : NULL;
        const char *b = s_jstr(md, "branch");
        const char *msg = s_jstr(md, "commit_message");
        const char *did = s_jstr(d, "id");
        if (did && b && strcmp(b, branch) == 0 && s_message_names(msg, op->dep->deploy_id)) {
            *id = sn_strdup(did);
            rc = SN_OK;
            break;
        }
    }
    json_decref(r);
    return rc;
}

static void s_part(char **body, size_t *len, const char *boundary, const char *name,
                   const char *value)
{
    char *head =
        sn_strdupf("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n", boundary, name);
    size_t hl = strlen(head), vl = strlen(value);
    *body = sn_realloc(*body, *len + hl + vl + 3);
    memcpy(*body + *len, head, hl);
    memcpy(*body + *len + hl, value, vl);
    memcpy(*body + *len + hl + vl, "\r\n", 3);
    *len += hl + vl + 2;
    free(head);
}

/* POST deployments (multipart). Not idempotent: one attempt. SN_OK with *id. */
static sn_rc_t s_create(s_op_t *op, const char *branch, const json_t *manifest,
                        const s_files_t *files, char **id)
{
    *id = NULL;
    char rnd[17];
    sn_random_hex(rnd, 8);
    char boundary[48];
    snprintf(boundary, sizeof boundary, "sentinel-%s", rnd);
    char *mtext = json_dumps(manifest, JSON_COMPACT);
    char *message = sn_strdupf("sentinel %s deploy=%s run=%s", op->opname, op->dep->deploy_id,
                               op->dep->run_id && *op->dep->run_id ? op->dep->run_id : "-");
    char *body = NULL;
    size_t len = 0;
    s_part(&body, &len, boundary, "manifest", mtext);
    s_part(&body, &len, boundary, "branch", branch);
    if (op->in->commit && *op->in->commit && sn_deploy_op_name_is_valid(op->in->commit))
        s_part(&body, &len, boundary, "commit_hash", op->in->commit);
    s_part(&body, &len, boundary, "commit_message", message);
    s_part(&body, &len, boundary, "commit_dirty", "false");
    for (size_t i = 0; files && i < SN_ARRAY_LEN(files->special); i++)
        if (files->special[i])
            s_part(&body, &len, boundary, s_special_names[i], files->special[i]);
    char *end = sn_strdupf("--%s--\r\n", boundary);
    size_t el = strlen(end);
    body = sn_realloc(body, len + el + 1);
    memcpy(body + len, end, el + 1);
    len += el;
    char *ctype = sn_strdupf("multipart/form-data; boundary=%s", boundary);
    char *url = sn_strdupf("%s/deployments", op->project_url);
    json_t *r = NULL;
    sn_rc_t rc = s_api(op, "POST", url, op->auth_api, ctype, body, len, false, &r);
    if (rc == SN_OK) {
        const char *did = s_jstr(r, "id");
        if (did && *did && strlen(did) < 128 && sn_deploy_op_name_is_valid(did)) {
            *id = sn_strdup(did);
        } else {
            snprintf(op->api_reason, sizeof op->api_reason, "create answered no deployment id");
            rc = SN_AGAIN;
        }
    }
    json_decref(r);
    free(url);
    free(ctype);
    free(end);
    free(body);
    free(message);
    free(mtext);
    return rc;
}

typedef struct {
    bool is_done;
    bool is_success;
    char stage[32];
    char status[32];
    char *url;
    char *alias;
} s_follow_t;

static void s_follow_fini(s_follow_t *f)
{
    free(f->url);
    free(f->alias);
    memset(f, 0, sizeof *f);
}

/* Reads a deployment object's terminal state and URLs into @f. */
static void s_read_deployment(const json_t *d, s_follow_t *f)
{
    const json_t *latest = json_object_get(d, "latest_stage");
    const char *name = s_jstr(latest, "name");
    const char *status = s_jstr(latest, "status");
    snprintf(f->stage, sizeof f->stage, "%s", name ? name : "?");
    snprintf(f->status, sizeof f->status, "%s", status ? status : "?");
    f->is_done = false;
    /* wrangler: deploy/success or deploy/failure; any stage failed or canceled ends it. */
    if (name && status && strcmp(name, "deploy") == 0 &&
        (strcmp(status, "success") == 0 || strcmp(status, "failure") == 0)) {
        f->is_done = true;
        f->is_success = strcmp(status, "success") == 0;
    }
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(d, "stages"), i, s)
    {
        const char *st = s_jstr(s, "status");
        if (st && (strcmp(st, "failure") == 0 || strcmp(st, "canceled") == 0)) {
            f->is_done = true;
            f->is_success = false;
            snprintf(f->stage, sizeof f->stage, "%s", s_jstr(s, "name") ? s_jstr(s, "name") : "?");
            snprintf(f->status, sizeof f->status, "%s", st);
        }
    }
    free(f->url);
    free(f->alias);
    const char *url = s_jstr(d, "url");
    f->url = url ? sn_strdup(url) : NULL;
    /* The first alias on pages.dev (wrangler), else the first alias. */
    const char *alias = NULL;
    json_array_foreach(json_object_get(d, "aliases"), i, s)
    {
        const char *a = json_string_value(s);
        if (!a)
            continue;
        if (!alias)
            alias = a;
        size_t n = strlen(a);
        while (n > 0 && a[n - 1] == '/')
            n--;
        if (n >= 10 && strncmp(a + n - 10, ".pages.dev", 10) == 0) {
            alias = a;
            break;
        }
    }
    f->alias = alias ? sn_strdup(alias) : NULL;
}

/* The last line of the deployment's log: the failure reason wrangler shows. */
static char *s_last_log_line(s_op_t *op, const char *id)
{
    char *url = sn_strdupf("%s/deployments/%s/history/logs?size=10000000", op->project_url, id);
    json_t *r = NULL;
    char *line = NULL;
    if (s_api(op, "GET", url, op->auth_api, NULL, NULL, 0, true, &r) == SN_OK) {
        const json_t *data = json_object_get(r, "data");
        size_t n = json_array_size(data);
        const char *l = n ? s_jstr(json_array_get(data, n - 1), "line") : NULL;
        if (l) {
            line = sn_strndup(l, 200);
            for (char *p = line; *p; p++)
                if ((unsigned char)*p < 0x20 || *p == 0x7f)
                    *p = ' ';
        }
    }
    json_decref(r);
    free(url);
    return line;
}

/* Polls deployment @id until it ends (poll_interval_ms). The reason is set on failure. */
static sn_rc_t s_follow(s_op_t *op, const char *id, s_follow_t *f)
{
    char *url = sn_strdupf("%s/deployments/%s", op->project_url, id);
    int interval = op->target->cfg->poll_interval_ms > 0 ? op->target->cfg->poll_interval_ms : 1000;
    sn_rc_t rc = SN_AGAIN;
    for (;;) {
        json_t *r = NULL;
        rc = s_api(op, "GET", url, op->auth_api, NULL, NULL, 0, true, &r);
        if (rc != SN_OK) {
            sn_deploy_op_fail(op->dop, rc == SN_AGAIN || op->api_code == 0,
                              "following deployment %s: %s", id, op->api_reason);
            break;
        }
        s_read_deployment(r, f);
        json_decref(r);
        if (f->is_done)
            break;
        if (sn_ctx_is_stopping(op->ctx) || sn_deploy_op_is_lease_lost(op->dop)) {
            sn_deploy_op_fail(op->dop, true, "stopped while following deployment %s (%s)", id,
                              sn_deploy_op_is_lease_lost(op->dop) ? "job lease lost" : "shutdown");
            rc = SN_AGAIN;
            break;
        }
        if (!sn_provider_sleep(interval, op->deadline_ms)) {
            sn_deploy_op_fail(op->dop, true,
                              "deployment %s not finished before the deadline (stage %s %s)", id,
                              f->stage, f->status);
            rc = SN_AGAIN;
            break;
        }
    }
    if (rc == SN_OK && !f->is_success) {
        char *line = s_last_log_line(op, id);
        sn_deploy_op_fail(op->dop, false, "deployment %s failed in stage %s (%s)%s%s", id, f->stage,
                          f->status, line ? ": " : "", line ? line : "");
        free(line);
        rc = SN_ERROR;
    }
    free(url);
    return rc;
}

/* Record field "<op>.<name>" (stack buffer). */
#define FIELD(buf, opname, name) (snprintf((buf), sizeof(buf), "%s.%s", (opname), (name)), (buf))

/* The deployment this op created before (recorded, or found through the marker), or a
 * new one. *id set on SN_OK; the reason is set otherwise. */
static sn_rc_t s_deployment_for(s_op_t *op, bool is_promote, const char *branch, char **id,
                                bool *is_resumed)
{
    sn_redis_t *redis = sn_ctx_redis(op->ctx);
    const char *did = op->dep->deploy_id;
    const char *env = is_promote ? "production" : "preview";
    char f_id[64], f_marker[64], f_manifest[64], f_prev[64];
    FIELD(f_id, op->opname, "deployment_id");
    FIELD(f_marker, op->opname, "creating");
    FIELD(f_manifest, "stage", "manifest");
    FIELD(f_prev, "promote", "previous");
    *id = NULL;
    *is_resumed = false;
    sn_rc_t rc = sn_provider_record_get(redis, did, f_id, id);
    if (rc == SN_AGAIN) {
        sn_deploy_op_fail(op->dop, true, "deploy record unreadable (redis)");
        return SN_AGAIN;
    }
    if (rc == SN_OK) {
        *is_resumed = true;
        return SN_OK;
    }
    char *marker = NULL;
    if (sn_provider_record_get(redis, did, f_marker, &marker) == SN_OK) {
        /* A create went out before and its id was not recorded: was it made? */
        rc = s_find_created(op, env, branch, id);
        free(marker);
        if (rc == SN_OK) {
            sn_info(LOG_MODULE, "%s deploy=%s: found deployment %s created before", op->opname, did,
                    *id);
            goto record;
        }
        if (rc != SN_DECLINED) {
            sn_deploy_op_fail(op->dop, rc == SN_AGAIN, "listing deployments: %s", op->api_reason);
            return rc;
        }
    }
    /* Promote: what is live now is the release a rollback returns to. */
    if (is_promote) {
        json_t *p = NULL;
        rc = s_api(op, "GET", op->project_url, op->auth_api, NULL, NULL, 0, true, &p);
        if (rc != SN_OK) {
            sn_deploy_op_fail(op->dop, rc == SN_AGAIN, "reading the project: %s", op->api_reason);
            return rc;
        }
        const char *prev = s_jstr(json_object_get(p, "canonical_deployment"), "id");
        if (prev && sn_deploy_op_name_is_valid(prev) &&
            sn_provider_record_set(redis, did, f_prev, prev, NULL) == SN_AGAIN) {
            json_decref(p);
            sn_deploy_op_fail(op->dop, true, "deploy record unwritable (redis)");
            return SN_AGAIN;
        }
        json_decref(p);
    }
    /* The files: promote reuses stage's manifest when Cloudflare still has every file. */
    s_files_t files = {0};
    json_t *manifest = NULL;
    char *stored = NULL;
    if (is_promote && sn_provider_record_get(redis, did, f_manifest, &stored) == SN_OK) {
        json_t *m = json_loads(stored, 0, NULL);
        json_t *missing = NULL;
        if (json_is_object(m) && json_object_size(m) > 0 &&
            s_check_missing(op, m, &missing) == SN_OK && json_array_size(missing) == 0)
            manifest = json_incref(m);
        json_decref(missing);
        json_decref(m);
        free(stored);
    }
    if (!manifest && s_prepare(op, &files, &manifest) != SN_OK) {
        s_files_fini(&files);
        return SN_ERROR; /* the reason is set */
    }
    if (!is_promote) {
        char *text = json_dumps(manifest, JSON_COMPACT);
        rc = sn_provider_record_put(redis, did, f_manifest, text);
        free(text);
        if (rc != SN_OK) {
            sn_deploy_op_fail(op->dop, true, "deploy record unwritable (redis)");
            json_decref(manifest);
            s_files_fini(&files);
            return SN_AGAIN;
        }
    }
    /* The marker first, then the create: a worker killed in between finds its deployment
     * by listing instead of creating a second. A create that failed transiently is only
     * repeated after the list shows it was not made. */
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)sn_wall_ms());
    if (sn_provider_record_put(redis, did, f_marker, now) != SN_OK) {
        sn_deploy_op_fail(op->dop, true, "deploy record unwritable (redis)");
        json_decref(manifest);
        s_files_fini(&files);
        return SN_AGAIN;
    }
    for (;;) {
        rc = s_create(op, branch, manifest, &files, id);
        if (rc == SN_OK)
            break;
        if (rc == SN_ERROR && op->api_code != CODE_UNKNOWN) {
            sn_deploy_op_fail(op->dop, false, "create deployment refused: %s", op->api_reason);
            break;
        }
        char why[256];
        snprintf(why, sizeof why, "%s", op->api_reason);
        sn_rc_t frc = s_find_created(op, env, branch, id);
        if (frc == SN_OK)
            break;
        if (frc != SN_DECLINED || op->retries_left <= 0 || sn_ctx_is_stopping(op->ctx)) {
            sn_deploy_op_fail(op->dop, true, "create deployment: %s", why);
            rc = SN_AGAIN;
            break;
        }
        op->retries_left--;
        sn_info(LOG_MODULE, "%s deploy=%s: create failed (%s), not made: retrying", op->opname, did,
                why);
    }
    json_decref(manifest);
    s_files_fini(&files);
    if (rc != SN_OK && !*id)
        return rc;
    rc = SN_OK;
record:;
    /* Recorded BEFORE it is followed: a re-dispatched job resumes it. */
    char *existing = NULL;
    sn_rc_t wrc = sn_provider_record_set(redis, did, f_id, *id, &existing);
    if (wrc == SN_DECLINED && existing && strcmp(existing, *id) != 0) {
        sn_warn(LOG_MODULE, "%s deploy=%s: deployment %s recorded meanwhile, following it",
                op->opname, did, existing);
        free(*id);
        *id = existing;
        existing = NULL;
    } else if (wrc == SN_AGAIN) {
        sn_warn(LOG_MODULE, "%s deploy=%s: deployment %s not recorded (redis)", op->opname, did,
                *id);
    }
    free(existing);
    sn_info(LOG_MODULE, "%s deploy=%s: deployment %s created on branch %s", op->opname, did, *id,
            branch);
    return rc;
}

static void s_stage_or_promote(s_op_t *op, bool is_promote)
{
    const sn_target_config_t *t = op->target->cfg;
    const Sentinel__V1__Deploy *d = op->dep;
    char *branch =
        is_promote ? sn_strdup(t->production_branch && *t->production_branch ? t->production_branch
                                                                             : "main")
                   : sn_strdupf("sentinel-%s", d->run_id && *d->run_id ? d->run_id : d->deploy_id);
    for (char *p = branch; !is_promote && *p; p++)
        *p = (*p >= 'A' && *p <= 'Z')   ? (char)(*p - 'A' + 'a')
             : (*p == '.' || *p == '_') ? '-'
                                        : *p;
    char *id = NULL;
    bool is_resumed = false;
    s_follow_t f = {0};
    if (s_deployment_for(op, is_promote, branch, &id, &is_resumed) != SN_OK)
        goto out;
    if (is_resumed)
        sn_info(LOG_MODULE, "%s deploy=%s: resuming deployment %s", op->opname, d->deploy_id, id);
    op->out->provider_deployment_id = sn_request_strdup(op->req, id);
    if (s_follow(op, id, &f) != SN_OK)
        goto out;
    char field[64];
    if (sn_provider_record_put(sn_ctx_redis(op->ctx), d->deploy_id,
                               FIELD(field, op->opname, "status"), "success") != SN_OK)
        sn_warn(LOG_MODULE, "%s deploy=%s: status not recorded (redis)", op->opname, d->deploy_id);
    op->out->release_id = sn_request_strdup(op->req, id);
    if (!is_promote) {
        op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED;
        op->out->preview_url = sn_request_strdup(op->req, f.url ? f.url : f.alias);
        op->out->staged_unix_ms = sn_wall_ms();
    } else {
        char *prev = NULL;
        if (sn_provider_record_get(sn_ctx_redis(op->ctx), d->deploy_id, "promote.previous",
                                   &prev) == SN_OK &&
            strcmp(prev, id) != 0)
            op->out->previous_release_id = sn_request_strdup(op->req, prev);
        free(prev);
        op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE;
        op->out->live_url = sn_request_strdup(op->req, f.alias ? f.alias : f.url);
        op->out->promoted_unix_ms = sn_wall_ms();
    }
    if (!(is_promote ? op->out->live_url : op->out->preview_url))
        sn_deploy_op_fail(op->dop, false, "deployment %s has no url", id);
out:
    s_follow_fini(&f);
    free(id);
    free(branch);
}

/* ---- rollback --------------------------------------------------------------------------- */

/* A Cloudflare deployment id: a UUID (8-4-4-4-12 hex digits). */
static bool s_is_uuid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (size_t i = 0; i < 36; i++) {
        bool is_dash = i == 8 || i == 13 || i == 18 || i == 23;
        char c = s[i];
        bool is_hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        if (is_dash ? c != '-' : !is_hex)
            return false;
    }
    return true;
}

static void s_rollback(s_op_t *op)
{
    const Sentinel__V1__Deploy *d = op->dep;
    sn_redis_t *redis = sn_ctx_redis(op->ctx);
    const char *to = op->in->to_release_id;
    char *target = NULL;
    char *promoted = NULL;
    json_t *p = NULL, *r = NULL;
    if (to && *to) {
        if (!sn_deploy_op_name_is_valid(to)) {
            sn_deploy_op_fail(op->dop, false, "invalid to_release_id");
            goto out;
        }
        /* A Sentinel deploy id (not a Cloudflare deployment id): its production one. */
        if (!s_is_uuid(to)) {
            sn_rc_t rc = sn_provider_record_get(redis, to, "promote.deployment_id", &target);
            if (rc != SN_OK) {
                sn_deploy_op_fail(op->dop, rc == SN_AGAIN,
                                  "release %s is not a deployment this deployer made live", to);
                goto out;
            }
        } else {
            target = sn_strdup(to);
        }
    } else if (d->deploy_id && *d->deploy_id) {
        sn_rc_t rc =
            sn_provider_record_get(redis, d->deploy_id, "promote.deployment_id", &promoted);
        if (rc == SN_AGAIN) {
            sn_deploy_op_fail(op->dop, true, "deploy record unreadable (redis)");
            goto out;
        }
        if (rc == SN_DECLINED) {
            /* That deploy never went live: nothing to undo. */
            op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK;
            sn_info(LOG_MODULE, "rollback deploy=%s: it never went live, nothing to undo",
                    d->deploy_id);
            goto out;
        }
        if (sn_provider_record_get(redis, d->deploy_id, "promote.previous", &target) != SN_OK) {
            sn_deploy_op_fail(op->dop, false, "no production deployment before %s to return to",
                              d->deploy_id);
            goto out;
        }
    } else {
        sn_deploy_op_fail(op->dop, false, "rollback needs to_release_id or a deploy id");
        goto out;
    }
    /* Already live (a retry): done. */
    sn_rc_t rc = s_api(op, "GET", op->project_url, op->auth_api, NULL, NULL, 0, true, &p);
    if (rc != SN_OK) {
        sn_deploy_op_fail(op->dop, rc == SN_AGAIN, "reading the project: %s", op->api_reason);
        goto out;
    }
    const char *live = s_jstr(json_object_get(p, "canonical_deployment"), "id");
    char *live_before = live ? sn_strdup(live) : NULL;
    s_follow_t f = {0};
    if (live_before && strcmp(live_before, target) == 0) {
        s_read_deployment(json_object_get(p, "canonical_deployment"), &f);
        sn_info(LOG_MODULE, "rollback deploy=%s: %s is live already",
                sn_deploy_op_name_shown(d->deploy_id), target);
    } else {
        char *url = sn_strdupf("%s/deployments/%s/rollback", op->project_url, target);
        rc = s_api(op, "POST", url, op->auth_api, NULL, NULL, 0, false, &r);
        free(url);
        if (rc == SN_OK) {
            s_read_deployment(r, &f);
        } else {
            sn_deploy_op_fail(op->dop, rc == SN_AGAIN || op->api_code == CODE_UNKNOWN,
                              "rollback to %s: %s", target, op->api_reason);
            free(live_before);
            goto out;
        }
    }
    op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK;
    op->out->release_id = sn_request_strdup(op->req, target);
    op->out->provider_deployment_id = op->out->release_id;
    if (live_before && strcmp(live_before, target) != 0)
        op->out->previous_release_id = sn_request_strdup(op->req, live_before);
    op->out->live_url = sn_request_strdup(op->req, f.alias ? f.alias : f.url);
    s_follow_fini(&f);
    free(live_before);
out:
    json_decref(p);
    json_decref(r);
    free(promoted);
    free(target);
}

/* ---- names ------------------------------------------------------------------------------- */

/* 1..128 characters of [A-Za-z0-9._-], not starting with '.': safe in a URL path, a
 * Redis key and a log line. */
