/* The job wrapper and Google API plumbing shared by hosting-propagator and
 * function-handler (see firebase_common.h). The job shape follows local-deployer: claim
 * the ledger job before any side effect, validate every name before it is used in a key
 * or a URL, answer a DeployResult, complete the job with it. Credentials are made per
 * target on first use (the key file is read once per process) and shared by the job
 * threads; each job thread has its own HTTP client for the op. */
#include "firebase_common.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sentinel/sn_crypto.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_log.h"

#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_MAX_ATTEMPTS 5
#define MAX_OP_MS (20 * 60 * 1000)
#define FIREBASE_JSON_MAX (1024 * 1024)
#define WHY_MAX 256
#define FB_MAX_ACTIVE 64

typedef struct {
    const sn_target_config_t *cfg;
    sn_gauth_t *gauth;
    sn_provider_t *prov;
} s_target_t;

struct fb_state {
    const char *module;
    const sn_config_t *cfg;
    char *instance;
    sn_artifact_t *store;
    pthread_mutex_t mu; /* guards the lazily made credentials and active */
    s_target_t *targets;
    size_t target_count;
    char *active[FB_MAX_ACTIVE]; /* deploy ids being served by this process (under mu) */
};

static sn_rc_t s_credentials(fb_op_t *op, s_target_t *t);
static void s_google_why(const sn_http_response_t *resp, const char *fallback, char *why,
                         size_t why_len);
static void s_budget_before(fb_op_t *op, int *before);
static void s_budget_after(fb_op_t *op, int before);

fb_state_t *fb_state_new(sn_ctx_t *ctx, const char *module)
{
    const sn_config_t *cfg = sn_ctx_config(ctx);
    sn_artifact_t *store = sn_deploy_op_store_new(ctx);
    if (!store)
        return NULL;
    fb_state_t *st = sn_calloc(1, sizeof *st);
    st->module = module;
    st->cfg = cfg;
    st->instance = sn_strdup(sn_ctx_instance(ctx));
    st->store = store;
    pthread_mutex_init(&st->mu, NULL);
    st->targets = sn_calloc(cfg->target_count ? cfg->target_count : 1, sizeof *st->targets);
    size_t n = 0;
    for (size_t i = 0; i < cfg->target_count; i++) {
        if (cfg->targets[i].type && strcmp(cfg->targets[i].type, "firebase") == 0)
            st->targets[n++].cfg = &cfg->targets[i];
    }
    st->target_count = n;
    sn_info(module, "serving firebase targets=%zu artifacts=%s", n, sn_artifact_dir(store));
    return st;
}

void fb_state_destroy(fb_state_t **self_p)
{
    fb_state_t *st = *self_p;
    if (!st)
        return;
    for (size_t i = 0; i < st->target_count; i++) {
        sn_gauth_destroy(&st->targets[i].gauth);
        sn_provider_destroy(&st->targets[i].prov);
    }
    free(st->targets);
    pthread_mutex_destroy(&st->mu);
    sn_artifact_destroy(&st->store);
    free(st->instance);
    free(st);
    *self_p = NULL;
}

sn_rc_t fb_job(sn_ctx_t *ctx, fb_state_t *st, const sn_request_t *creq, sn_envelope_t *reply,
               const char *const *ops, fb_op_fn *fn)
{
    sn_request_t *req = (sn_request_t *)creq;
    const Sentinel__V1__DeployRequest *in = sn_request_envelope(req)->deploy_request;
    fb_op_t op = {.ctx = ctx, .st = st, .req = req, .in = in, .module = st->module};
    op.store = st->store;
    op.dop = sn_deploy_op_begin(ctx, req, reply, st->module);
    op.dep = sn_deploy_op_deploy(op.dop);
    op.res = sn_deploy_op_result(op.dop);
    op.out = sn_deploy_op_out(op.dop);
    op.out->provider = "firebase";
    const char *opname = in->op ? in->op : "";
    op.opname = "unknown-op";
    for (size_t i = 0; ops[i]; i++)
        if (strcmp(ops[i], opname) == 0)
            op.opname = ops[i];
    int64_t t0 = sn_mono_ms();
    int64_t dl = sn_request_deadline_ms(req);
    op.deadline_ms = dl > t0 ? dl - 500 : t0 + MAX_OP_MS;
    if (op.deadline_ms - t0 > MAX_OP_MS)
        op.deadline_ms = t0 + MAX_OP_MS;

    sn_deploy_op_claim_t claim = sn_deploy_op_claim(op.dop, st->instance, op.opname);
    if (claim == SN_DEPLOY_OP_ANSWERED)
        return SN_OK;
    if (claim == SN_DEPLOY_OP_REFUSED)
        goto log;

    s_target_t *t = NULL;
    bool is_rollback = strcmp(opname, "rollback") == 0;
    if (strcmp(op.opname, "unknown-op") == 0) {
        sn_deploy_op_fail(op.dop, false, "unknown op '%s'", sn_deploy_op_name_shown(opname));
    } else if (!in->deploy) {
        sn_deploy_op_fail(op.dop, false, "missing deploy");
    } else if (!sn_deploy_op_name_is_valid(op.dep->deploy_id) &&
               !(is_rollback && !*op.dep->deploy_id)) {
        sn_deploy_op_fail(op.dop, false, "invalid deploy id");
    } else if (!sn_deploy_op_name_is_valid(op.dep->target)) {
        sn_deploy_op_fail(op.dop, false, "invalid target name");
    } else if (!sn_deploy_op_name_is_valid(op.dep->project) ||
               !sn_deploy_op_name_is_valid(op.dep->environment) ||
               (*op.dep->run_id && !sn_deploy_op_name_is_valid(op.dep->run_id))) {
        sn_deploy_op_fail(op.dop, false, "invalid project, environment or run id");
    } else {
        for (size_t i = 0; i < st->target_count && !t; i++)
            if (st->targets[i].cfg->name && strcmp(st->targets[i].cfg->name, op.dep->target) == 0)
                t = &st->targets[i];
        if (!t)
            sn_deploy_op_fail(op.dop, false, "unknown firebase target '%s'", op.dep->target);
    }
    /* One op per deploy id at a time in this process (the ledger claim covers the
     * processes): a second request for it while the first runs is refused, transient. */
    int slot = -1;
    if (t && *op.dep->deploy_id) {
        pthread_mutex_lock(&st->mu);
        bool is_busy = false;
        for (int i = 0; i < FB_MAX_ACTIVE; i++) {
            if (st->active[i] && strcmp(st->active[i], op.dep->deploy_id) == 0)
                is_busy = true;
            else if (!st->active[i] && slot < 0)
                slot = i;
        }
        if (is_busy || slot < 0) {
            slot = -1;
            sn_deploy_op_fail(op.dop, true, "deploy %s is already being served by this worker",
                              op.dep->deploy_id);
            t = NULL;
        } else {
            st->active[slot] = sn_strdup(op.dep->deploy_id);
        }
        pthread_mutex_unlock(&st->mu);
    }
    if (t && s_credentials(&op, t) == SN_OK) {
        op.target = t->cfg;
        op.gauth = t->gauth;
        op.prov = t->prov;
        int max_attempts =
            op.target->max_attempts > 0 ? op.target->max_attempts : DEFAULT_MAX_ATTEMPTS;
        sn_provider_budget_init(&op.budget, max_attempts, op.deadline_ms);
        op.retries_left = 3 * max_attempts;
        fb_slug(op.dep->deploy_id, op.label, 63);
        op.http = sn_http_new();
        if (!op.http)
            sn_deploy_op_fail(op.dop, true, "no HTTP client");
        else
            fn(&op);
        sn_gauth_token_free(&op.token);
        sn_http_destroy(&op.http);
    }
    if (slot >= 0) {
        pthread_mutex_lock(&st->mu);
        free(st->active[slot]);
        st->active[slot] = NULL;
        pthread_mutex_unlock(&st->mu);
    }
    sn_deploy_op_finish(op.dop);
    sn_deploy_op_complete(op.dop, op.opname);
log:
    if (op.res->ok)
        sn_info(st->module, "%s ok target=%s deploy=%s release=%s job=%s ms=%lld", op.opname,
                sn_deploy_op_name_shown(op.dep->target), sn_deploy_op_name_shown(op.dep->deploy_id),
                op.out->release_id ? op.out->release_id : "", sn_deploy_op_job_shown(op.dop),
                (long long)(sn_mono_ms() - t0));
    else
        sn_warn(st->module, "%s failed target=%s deploy=%s job=%s transient=%d reason=%s",
                op.opname, sn_deploy_op_name_shown(op.dep->target),
                sn_deploy_op_name_shown(op.dep->deploy_id), sn_deploy_op_job_shown(op.dop),
                op.res->is_transient, op.res->reason);
    return SN_OK;
}

sn_rc_t fb_api(fb_op_t *op, const char *method, const char *url, json_t *body, bool is_idempotent,
               json_t **out, long *status, char *why, size_t why_len)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_t *json = NULL;
    sn_rc_t rc = SN_ERROR;
    for (int round = 0; round < 2; round++) {
        char twhy[WHY_MAX] = "";
        if (!op->token) {
            int timeout = op->target->request_timeout_ms > 0 ? op->target->request_timeout_ms
                                                             : DEFAULT_TIMEOUT_MS;
            sn_rc_t trc =
                sn_gauth_token(op->gauth, op->http, timeout, &op->token, twhy, sizeof twhy);
            if (trc != SN_OK) {
                snprintf(why, why_len, "no access token: %s", twhy);
                rc = trc;
                break;
            }
        }
        char *auth = sn_strdupf("Authorization: Bearer %s", op->token);
        char *quota = sn_strdupf("x-goog-user-project: %s", op->target->project);
        const char *headers[] = {auth, quota, "Accept: application/json",
                                 text ? "Content-Type: application/json" : NULL, NULL};
        sn_http_request_t req = {
            .method = method,
            .url = url,
            .headers = headers,
            .body = text,
            .body_len = text ? strlen(text) : 0,
            .timeout_ms = op->target->request_timeout_ms > 0 ? op->target->request_timeout_ms
                                                             : DEFAULT_TIMEOUT_MS,
        };
        sn_http_response_t resp;
        int before;
        s_budget_before(op, &before);
        rc = sn_provider_call_json(op->prov, op->http, &req, is_idempotent, &op->budget, &resp,
                                   &json);
        s_budget_after(op, before);
        sn_crypto_cleanse(auth, strlen(auth));
        free(auth);
        free(quota);
        if (status)
            *status = resp.status;
        if (rc != SN_OK)
            s_google_why(&resp, op->budget.reason, why, why_len);
        bool is_401 = rc != SN_OK && resp.status == 401;
        sn_http_response_fini(&resp);
        if (is_401 && round == 0) {
            /* The token expired early or was revoked: one new token, one more try. */
            sn_gauth_invalidate(op->gauth);
            sn_gauth_token_free(&op->token);
            continue;
        }
        break;
    }
    free(text);
    if (out)
        *out = json;
    else
        json_decref(json);
    return rc;
}

sn_rc_t fb_send(fb_op_t *op, const char *method, const char *url, const char *content_type,
                const void *body, size_t len, bool with_auth, bool is_idempotent, int timeout_ms,
                char *why, size_t why_len)
{
    char *auth = NULL;
    if (with_auth) {
        char twhy[WHY_MAX] = "";
        if (!op->token) {
            sn_rc_t trc =
                sn_gauth_token(op->gauth, op->http, timeout_ms, &op->token, twhy, sizeof twhy);
            if (trc != SN_OK) {
                snprintf(why, why_len, "no access token: %s", twhy);
                return trc;
            }
        }
        auth = sn_strdupf("Authorization: Bearer %s", op->token);
    }
    char *ctype = sn_strdupf("Content-Type: %s", content_type);
    const char *headers[] = {ctype, auth, NULL};
    sn_http_request_t req = {.method = method,
                             .url = url,
                             .headers = headers,
                             .body = body,
                             .body_len = len,
                             .timeout_ms = timeout_ms};
    sn_http_response_t resp;
    int before;
    s_budget_before(op, &before);
    sn_rc_t rc = sn_provider_call(op->prov, op->http, &req, is_idempotent, &op->budget, &resp);
    s_budget_after(op, before);
    if (rc != SN_OK)
        s_google_why(&resp, op->budget.reason, why, why_len);
    sn_http_response_fini(&resp);
    if (auth) {
        sn_crypto_cleanse(auth, strlen(auth));
        free(auth);
    }
    free(ctype);
    return rc;
}

char *fb_rec_get(fb_op_t *op, const char *prefix, const char *name, bool *is_down)
{
    char *field = sn_strdupf("%s.%s", prefix, name);
    char *value = NULL;
    sn_rc_t rc = sn_provider_record_get(sn_ctx_redis(op->ctx), op->dep->deploy_id, field, &value);
    free(field);
    if (is_down)
        *is_down = rc == SN_AGAIN;
    if (rc != SN_OK) {
        free(value);
        return NULL;
    }
    return value;
}

bool fb_rec_put(fb_op_t *op, const char *prefix, const char *name, const char *value)
{
    char *field = sn_strdupf("%s.%s", prefix, name);
    sn_rc_t rc = sn_provider_record_put(sn_ctx_redis(op->ctx), op->dep->deploy_id, field, value);
    free(field);
    return rc == SN_OK;
}

char *fb_extract(fb_op_t *op)
{
    const char *sha = op->in->artifact_sha256;
    if (!sn_artifact_sha_is_valid(sha)) {
        sn_deploy_op_fail(op->dop, false, "invalid artifact sha256");
        return NULL;
    }
    char rnd[17];
    sn_random_hex(rnd, 8);
    char *dir = sn_strdupf("%s/.tmp-fb-%s", sn_artifact_dir(op->store), rnd);
    sn_rc_t rc = sn_artifact_extract(op->store, sha, dir);
    if (rc != SN_OK) {
        sn_deploy_op_fail(op->dop, rc == SN_AGAIN,
                          rc == SN_DECLINED ? "artifact %s is not in the store"
                          : rc == SN_AGAIN  ? "artifact %s could not be read"
                                            : "artifact %s is corrupted or unsafe (refused)",
                          sha);
        free(dir);
        return NULL;
    }
    return dir;
}

json_t *fb_firebase_json(fb_op_t *op, const char *dir, bool *is_bad)
{
    *is_bad = false;
    char *path = sn_strdupf("%s/firebase.json", dir);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    free(path);
    if (fd < 0)
        return NULL;
    struct stat sb;
    json_t *root = NULL;
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size <= FIREBASE_JSON_MAX) {
        json_error_t err;
        root = json_loadfd(fd, 0, &err);
        if (!json_is_object(root)) {
            sn_deploy_op_fail(op->dop, false,
                              "firebase.json in the artifact is not a JSON object (line %d: %s)",
                              err.line, err.text);
            json_decref(root);
            root = NULL;
            *is_bad = true;
        }
    } else {
        sn_deploy_op_fail(op->dop, false,
                          "firebase.json in the artifact is not a regular file under 1 MiB");
        *is_bad = true;
    }
    close(fd);
    return root;
}

bool fb_rel_path_is_safe(const char *path)
{
    if (!path || !*path || path[0] == '/' || strlen(path) > 1024)
        return false;
    const char *p = path;
    for (;;) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return false;
        if (!e)
            return true;
        p = e + 1;
    }
}

char *fb_keep(fb_op_t *op, const char *s)
{
    return sn_request_strdup(op->req, s ? s : "");
}

void fb_slug(const char *s, char *out, size_t max)
{
    size_t n = 0;
    for (; s && s[n] && n < max; n++) {
        char c = (char)tolower((unsigned char)s[n]);
        out[n] = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ? c : '-';
    }
    out[n] = '\0';
}

/* ---- statics ----------------------------------------------------------------------------- */

/* Makes the target's gauth and provider handles on first use (under the state's lock). */
static sn_rc_t s_credentials(fb_op_t *op, s_target_t *t)
{
    fb_state_t *st = op->st;
    sn_rc_t rc = SN_OK;
    pthread_mutex_lock(&st->mu);
    if (!t->gauth) {
        const sn_target_config_t *c = t->cfg;
        if (!c->credentials_file || !*c->credentials_file || !c->project || !*c->project) {
            sn_deploy_op_fail(op->dop, false, "target '%s' needs project and credentials_file",
                              c->name);
            rc = SN_ERROR;
        } else {
            t->gauth = sn_gauth_new(c->credentials_file, c->oauth_token_uri, NULL);
            if (!t->gauth) {
                sn_deploy_op_fail(op->dop, false,
                                  "target '%s': the credentials file cannot be used (see log)",
                                  c->name);
                rc = SN_ERROR;
            }
        }
    }
    if (rc == SN_OK && !t->prov) {
        sn_provider_opts_t opts;
        sn_provider_opts_from_target(&opts, "firebase", t->cfg);
        opts.credential = sn_gauth_client_email(t->gauth);
        t->prov = sn_provider_new(sn_ctx_redis(op->ctx), &opts);
        if (!t->prov) {
            sn_deploy_op_fail(op->dop, true, "no provider handle");
            rc = SN_AGAIN;
        }
    }
    pthread_mutex_unlock(&st->mu);
    return rc;
}

/* "<status> <STATUS>: <message>" from Google's error envelope, else @fallback. */
static void s_google_why(const sn_http_response_t *resp, const char *fallback, char *why,
                         size_t why_len)
{
    json_t *root = NULL;
    if (resp->status >= 400 && resp->body && resp->body_len)
        root = json_loadb(resp->body, resp->body_len, 0, NULL);
    json_t *err = json_object_get(root, "error");
    const char *status = json_string_value(json_object_get(err, "status"));
    const char *msg = json_string_value(json_object_get(err, "message"));
    if (status || msg)
        snprintf(why, why_len, "%ld %s: %.160s", resp->status, status ? status : "",
                 msg ? msg : "");
    else
        snprintf(why, why_len, "%s", fallback && *fallback ? fallback : "request failed");
    json_decref(root);
}

/* One retry budget per op: each call may make its first attempt plus what is left of the
 * op's retries (and never more than max_attempts). */
static void s_budget_before(fb_op_t *op, int *before)
{
    int per_call = op->target->max_attempts > 0 ? op->target->max_attempts : DEFAULT_MAX_ATTEMPTS;
    int extra = op->retries_left < per_call - 1 ? op->retries_left : per_call - 1;
    if (extra < 0)
        extra = 0;
    *before = op->budget.attempts;
    op->budget.max_attempts = op->budget.attempts + 1 + extra;
}

static void s_budget_after(fb_op_t *op, int before)
{
    int made = op->budget.attempts - before;
    if (made > 1)
        op->retries_left -= made - 1;
}
