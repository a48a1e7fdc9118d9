/* The DeployRequest job wrapper shared by the deployer roles (see sn_deploy_op.h). The op
 * and every string of the reply are allocated in the request's memory, so a role's job
 * function can return from any point without a cleanup path for them. */
#include "sentinel/sn_deploy_op.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_json.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_log.h"

#define SN_DEPLOY_OP_LEASE_MS 30000
#define SN_DEPLOY_OP_REASON_MAX 512

struct sn_deploy_op {
    sn_ctx_t *ctx;
    sn_request_t *req;
    const char *module;
    const char *label; /* the envelope's job_id label, NULL if none */
    const Sentinel__V1__DeployRequest *in;
    const Sentinel__V1__Deploy *dep;
    Sentinel__V1__DeployResult *res;
    Sentinel__V1__Deploy *out;
    const char *job_id; /* set once claimed */
    uint64_t epoch;
    int64_t lease_ms;
    int64_t renewed_ms;
    bool is_lease_lost;
};

static bool s_answer_stored(sn_deploy_op_t *self, const uint8_t *bytes, size_t len);
static void s_copy_outcome(sn_request_t *req, Sentinel__V1__Deploy *dst,
                           const Sentinel__V1__Deploy *src);
static char *s_keep(sn_request_t *req, const char *s);

void sn_deploy_op_defer(sn_ctx_t *ctx, sn_request_t *req, const char *module, sn_job_fn *fn,
                        void *state)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST || !env->deploy_request) {
        sn_info(module, "refused request: body is not a deploy_request");
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    sn_request_defer(ctx, req, fn, state);
}

sn_deploy_op_t *sn_deploy_op_begin(sn_ctx_t *ctx, sn_request_t *req, sn_envelope_t *reply,
                                   const char *module)
{
    static const Sentinel__V1__Deploy s_empty = SENTINEL__V1__DEPLOY__INIT;
    const sn_envelope_t *env = sn_request_envelope(req);
    const Sentinel__V1__DeployRequest *in = env->deploy_request;
    SN_ASSERT(in);
    sn_deploy_op_t *self = sn_request_alloc(req, sizeof *self);
    memset(self, 0, sizeof *self);
    self->ctx = ctx;
    self->req = req;
    self->module = module;
    self->label = sn_envelope_label(env, "job_id");
    self->in = in;
    self->dep = in->deploy ? in->deploy : &s_empty;
    self->res = sn_request_alloc(req, sizeof *self->res);
    sentinel__v1__deploy_result__init(self->res);
    self->out = sn_request_alloc(req, sizeof *self->out);
    *self->out = *self->dep; /* shallow: the strings live in the request envelope */
    self->res->deploy = self->out;
    self->res->ok = true;
    reply->type = "deploy.result";
    reply->body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT;
    reply->deploy_result = self->res;
    return self;
}

const Sentinel__V1__Deploy *sn_deploy_op_deploy(const sn_deploy_op_t *self)
{
    return self->dep;
}

Sentinel__V1__DeployResult *sn_deploy_op_result(sn_deploy_op_t *self)
{
    return self->res;
}

Sentinel__V1__Deploy *sn_deploy_op_out(sn_deploy_op_t *self)
{
    return self->out;
}

void sn_deploy_op_fail(sn_deploy_op_t *self, bool is_transient, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sn_deploy_op_vfail(self, is_transient, fmt, ap);
    va_end(ap);
}

void sn_deploy_op_vfail(sn_deploy_op_t *self, bool is_transient, const char *fmt, va_list ap)
{
    char buf[SN_DEPLOY_OP_REASON_MAX];
    vsnprintf(buf, sizeof buf, fmt, ap);
    self->res->ok = false;
    self->res->is_transient = is_transient;
    self->res->reason = sn_request_strdup(self->req, buf);
}

sn_deploy_op_claim_t sn_deploy_op_claim(sn_deploy_op_t *self, const char *instance,
                                        const char *opname)
{
    const char *job_id = self->label;
    if (!job_id)
        return SN_DEPLOY_OP_GO;
    if (!sn_ledger_id_is_valid(job_id)) {
        sn_deploy_op_fail(self, false, "malformed job id");
        return SN_DEPLOY_OP_REFUSED;
    }
    sn_ledger_t *ledger = sn_ctx_ledger(self->ctx);
    Sentinel__V1__JobSpec *spec = NULL;
    sn_rc_t rc = sn_ledger_claim(ledger, job_id, instance, 0, &self->epoch, &spec);
    if (rc == SN_OK) {
        self->job_id = job_id;
        self->lease_ms = spec && spec->lease_ms > 0 ? spec->lease_ms : SN_DEPLOY_OP_LEASE_MS;
        self->renewed_ms = sn_mono_ms();
        sn_ledger_spec_free(&spec);
        return SN_DEPLOY_OP_GO;
    }
    sn_ledger_job_t job = {0};
    bool has_job = rc == SN_DECLINED && sn_ledger_get(ledger, job_id, &job) == SN_OK;
    sn_deploy_op_claim_t claim = SN_DEPLOY_OP_REFUSED;
    if (has_job && job.state == SN_JOB_DONE && job.result_len > 0 &&
        s_answer_stored(self, job.result, job.result_len)) {
        /* Finished before (a retry after a lost reply): answer what it answered. */
        sn_info(self->module, "%s job=%s already done: answered its stored result", opname, job_id);
        claim = SN_DEPLOY_OP_ANSWERED;
    } else if (has_job) {
        bool is_held = job.state == SN_JOB_CLAIMED;
        sn_deploy_op_fail(self, is_held, "job %s is %s%s%s", job_id, sn_job_state_str(job.state),
                          is_held ? " by " : "", is_held && job.owner ? job.owner : "");
    } else {
        sn_deploy_op_fail(self, rc == SN_AGAIN, "cannot claim job %s: %s", job_id,
                          rc == SN_AGAIN ? "redis unavailable" : "unknown job");
    }
    if (has_job)
        sn_ledger_job_fini(&job);
    return claim;
}

const char *sn_deploy_op_job_id(const sn_deploy_op_t *self)
{
    return self->job_id;
}

const char *sn_deploy_op_job_shown(const sn_deploy_op_t *self)
{
    if (!self->label)
        return "-";
    return sn_ledger_id_is_valid(self->label) ? self->label : "(invalid)";
}

bool sn_deploy_op_renew(sn_deploy_op_t *self)
{
    if (!self->job_id)
        return true;
    if (self->is_lease_lost)
        return false;
    int64_t now = sn_mono_ms();
    if (now - self->renewed_ms < self->lease_ms / 3)
        return true;
    sn_rc_t rc = sn_ledger_renew(sn_ctx_ledger(self->ctx), self->job_id, self->epoch, 0, NULL);
    if (rc == SN_OK)
        self->renewed_ms = now;
    else if (rc == SN_DECLINED)
        self->is_lease_lost = true;
    return !self->is_lease_lost;
}

bool sn_deploy_op_is_lease_lost(const sn_deploy_op_t *self)
{
    return self->is_lease_lost;
}

void sn_deploy_op_finish(sn_deploy_op_t *self)
{
    self->out->finished_unix_ms = sn_wall_ms();
    if (!self->res->ok && self->out->phase != SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED) {
        self->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
        self->out->error = self->res->reason;
    }
}

void sn_deploy_op_complete(sn_deploy_op_t *self, const char *opname)
{
    if (!self->job_id)
        return;
    size_t len = sentinel__v1__deploy_result__get_packed_size(self->res);
    uint8_t *bytes = sn_malloc(len ? len : 1);
    sentinel__v1__deploy_result__pack(self->res, bytes);
    sn_rc_t rc = sn_ledger_complete(sn_ctx_ledger(self->ctx), self->job_id, self->epoch,
                                    self->res->ok, bytes, len);
    free(bytes);
    if (rc != SN_OK)
        sn_warn(self->module, "%s job=%s epoch=%llu not completed: %s (lease lapsed?)", opname,
                self->job_id, (unsigned long long)self->epoch, sn_rc_str(rc));
}

void sn_deploy_op_identity(const sn_deploy_op_t *self, Sentinel__V1__ReleaseIdentity *id)
{
    const Sentinel__V1__Deploy *d = self->dep;
    sentinel__v1__release_identity__init(id);
    id->deploy_id = d->deploy_id;
    id->run_id = d->run_id;
    id->commit = self->in->commit ? self->in->commit : "";
    id->project = d->project;
    id->environment = d->environment;
    id->target = d->target;
    id->created_unix_ms = sn_wall_ms();
}

char *sn_deploy_op_identity_json(const sn_deploy_op_t *self)
{
    Sentinel__V1__ReleaseIdentity id;
    sn_deploy_op_identity(self, &id);
    return sn_json_dumps_message(&id.base, JSON_COMPACT);
}

Sentinel__V1__Deploy *sn_deploy_op_deploy_dup(sn_request_t *req, const Sentinel__V1__Deploy *src)
{
    Sentinel__V1__Deploy *d = sn_request_alloc(req, sizeof *d);
    sentinel__v1__deploy__init(d);
    d->deploy_id = s_keep(req, src->deploy_id);
    d->run_id = s_keep(req, src->run_id);
    d->project = s_keep(req, src->project);
    d->environment = s_keep(req, src->environment);
    d->target = s_keep(req, src->target);
    s_copy_outcome(req, d, src);
    return d;
}

bool sn_deploy_op_name_is_valid(const char *s)
{
    if (!s || !*s || s[0] == '.')
        return false;
    for (size_t n = 0; s[n]; n++) {
        char c = s[n];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok || n >= SN_DEPLOY_OP_NAME_MAX)
            return false;
    }
    return true;
}

const char *sn_deploy_op_name_shown(const char *name)
{
    return !name || !*name ? "" : sn_deploy_op_name_is_valid(name) ? name : "(invalid)";
}

sn_artifact_t *sn_deploy_op_store_new(sn_ctx_t *ctx)
{
    const sn_config_t *cfg = sn_ctx_config(ctx);
    const char *state_dir = cfg->state_dir ? cfg->state_dir : "./var";
    char *dir =
        cfg->artifact_dir ? sn_strdup(cfg->artifact_dir) : sn_strdupf("%s/artifacts", state_dir);
    sn_artifact_t *store = sn_artifact_new(dir, sn_ctx_redis(ctx));
    free(dir);
    return store;
}

/* ---- statics ----------------------------------------------------------------------------- */

/* Fills the reply from a DeployResult stored with a finished job: every field the op sets
 * (the stored answer is the answer). False if unreadable. */
static bool s_answer_stored(sn_deploy_op_t *self, const uint8_t *bytes, size_t len)
{
    Sentinel__V1__DeployResult *done = sentinel__v1__deploy_result__unpack(NULL, len, bytes);
    if (!done)
        return false;
    self->res->ok = done->ok;
    self->res->is_transient = done->is_transient;
    if (done->reason && *done->reason)
        self->res->reason = sn_request_strdup(self->req, done->reason);
    if (done->deploy)
        s_copy_outcome(self->req, self->out, done->deploy);
    sentinel__v1__deploy_result__free_unpacked(done, NULL);
    return true;
}

/* What an op sets on a Deploy (all but its identity), strings into @req's memory. */
static void s_copy_outcome(sn_request_t *req, Sentinel__V1__Deploy *dst,
                           const Sentinel__V1__Deploy *src)
{
    dst->provider = s_keep(req, src->provider);
    dst->phase = src->phase;
    dst->preview_url = s_keep(req, src->preview_url);
    dst->live_url = s_keep(req, src->live_url);
    dst->release_id = s_keep(req, src->release_id);
    dst->previous_release_id = s_keep(req, src->previous_release_id);
    dst->provider_deployment_id = s_keep(req, src->provider_deployment_id);
    dst->error = s_keep(req, src->error);
    dst->staged_unix_ms = src->staged_unix_ms;
    dst->promoted_unix_ms = src->promoted_unix_ms;
    dst->finished_unix_ms = src->finished_unix_ms;
}

static char *s_keep(sn_request_t *req, const char *s)
{
    return sn_request_strdup(req, s ? s : "");
}
