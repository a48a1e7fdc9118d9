/* railway-bridge (BuildPilot): deploys `railway` targets through Railway's public GraphQL
 * API (../shared/contracts/railway.md). It serves deploy.railway with DeployRequest ops:
 *
 *  - stage: Railway has no preview, so stage and promote are one step. The service's
 *    variables SENTINEL_DEPLOY_ID, SENTINEL_COMMIT and SENTINEL_RELEASE_JSON (the release
 *    identity, so the app can serve /.well-known/sentinel-release.json) are set with
 *    variableCollectionUpsert (skipDeploys: the deploy below picks them up), the service
 *    is deployed in the environment with serviceInstanceDeployV2, whose deployment id is
 *    recorded in provider:deploy:<deploy-id> BEFORE the deployment is followed to a
 *    terminal state (SUCCESS/SLEEPING ok; FAILED, CRASHED, REMOVED, SKIPPED fail). The
 *    deployment's URL is both preview_url and live_url (the target's url otherwise).
 *  - promote: confirms that the staged deployment is live (follows it if still running).
 *  - rollback: deploymentRollback to to_release_id, or to the deployment that was active
 *    before the request's deploy staged, then follows the new deployment.
 *
 * Every call goes through sn_provider (the per-token request budget and circuit breaker
 * shared through Redis, retries for queries only, one attempt budget per op); GraphQL
 * `errors` are failures whatever the HTTP status; the token (Authorization: Bearer, or
 * Project-Access-Token for token_kind "project") is never logged. Ops are idempotent on
 * the deploy id: a re-dispatched job finds the recorded deployment and follows it instead
 * of deploying again. Ledger jobs (envelope label job_id) are claimed before any side
 * effect, renewed while following, and completed with the packed DeployResult. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_deploy_op.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_provider.h"
#include "sentinel/sn_redis.h"

#define LOG_MODULE "railway-bridge"
#define DEFAULT_REQUEST_TIMEOUT_MS 30000
#define DEFAULT_POLL_INTERVAL_MS 1000
#define DEFAULT_OP_DEADLINE_MS (15 * 60 * 1000)
#define REPLY_MARGIN_MS 500
#define GQL_MESSAGE_MAX 160

/* Record fields (provider:deploy:<deploy-id>). */
#define F_STAGE_ID "stage.deployment_id"
#define F_STAGE_PREVIOUS "stage.previous_deployment_id"
#define F_STAGE_LATEST_BEFORE "stage.latest_before"
#define F_STAGE_STATUS "stage.status"
#define F_ROLLBACK_TO "rollback.to"
#define F_ROLLBACK_LATEST_BEFORE "rollback.latest_before"
#define F_ROLLBACK_ID "rollback.deployment_id"

/* The GraphQL documents (operation names as in the contract). */
static const char s_q_latest[] =
    "query LatestDeployment($serviceId: String!, $environmentId: String!) { "
    "serviceInstance(serviceId: $serviceId, environmentId: $environmentId) { "
    "latestDeployment { id status } activeDeployments { id status } } }";
static const char s_q_status[] = "query DeploymentStatus($id: String!) { deployment(id: $id) { "
                                 "id status statusUpdatedAt url staticUrl } }";
static const char s_m_vars[] =
    "mutation VariableCollectionUpsert($input: VariableCollectionUpsertInput!) { "
    "variableCollectionUpsert(input: $input) }";
static const char s_m_deploy[] =
    "mutation ServiceInstanceDeployV2($environmentId: String!, $serviceId: String!) { "
    "serviceInstanceDeployV2(environmentId: $environmentId, serviceId: $serviceId) }";
static const char s_m_rollback[] =
    "mutation DeploymentRollback($id: String!) { deploymentRollback(id: $id) }";

typedef struct {
    const sn_target_config_t *cfg; /* borrowed from the runtime's config */
    sn_provider_t *provider;
    pthread_mutex_t mu; /* one op at a time per target in this process */
} s_target_t;

typedef struct {
    const sn_config_t *cfg;
    char *instance;
    s_target_t *targets;
    size_t target_count;
} s_state_t;

/* One op being served (job thread). */
typedef struct {
    sn_ctx_t *ctx;
    s_state_t *st;
    sn_request_t *req;
    const Sentinel__V1__DeployRequest *in;
    const Sentinel__V1__Deploy *dep;
    s_target_t *t;
    sn_deploy_op_t *dop; /* the answer and the ledger job (request-owned) */
    sn_http_t *http;
    sn_provider_budget_t budget;
    int fail_left; /* failed attempts the op still tolerates (target max_attempts) */
    int64_t deadline_ms;
    Sentinel__V1__DeployResult *res; /* the reply body (request-owned memory) */
    Sentinel__V1__Deploy *out;
} s_op_t;

static sn_rc_t s_init(sn_ctx_t *ctx, void **state);
static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req);
static void s_destroy(sn_ctx_t *ctx, void *state);
static sn_rc_t s_job(sn_ctx_t *ctx, void *state, const sn_request_t *req, sn_envelope_t *reply,
                     const char **nak_reason);
static void s_fail(s_op_t *op, bool is_transient, const char *fmt, ...) SN_PRINTF(3, 4);
static void s_stage(s_op_t *op);
static void s_promote(s_op_t *op);
static void s_rollback(s_op_t *op);
static json_t *s_gql(s_op_t *op, const char *name, const char *document, json_t *vars,
                     bool is_idempotent, const char *field);
static sn_rc_t s_latest(s_op_t *op, char **latest_id, char **active_id);
static bool s_follow(s_op_t *op, const char *deployment_id, char **url);
static bool s_renew(s_op_t *op);
static char *s_record_get(s_op_t *op, const char *deploy_id, const char *field, bool *is_error);
static bool s_record_set(s_op_t *op, const char *deploy_id, const char *field, const char *value,
                         char **kept);
static bool s_record_put_ok(s_op_t *op, const char *deploy_id, const char *field,
                            const char *value);

const sn_role_t railway_bridge_role = {
    .name = "railway-bridge",
    .agent = "BuildPilot",
    .summary = "deploys railway targets through Railway's GraphQL API",
    .services = (const char *const[]){"deploy.railway", NULL},
    .leadership = SN_LEADERSHIP_NONE,
    .credit = 2,
    .init = s_init,
    .on_request = s_request,
    .destroy = s_destroy,
};

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    const sn_config_t *cfg = sn_ctx_config(ctx);
    s_state_t *st = sn_calloc(1, sizeof *st);
    st->cfg = cfg;
    st->instance = sn_strdup(sn_ctx_instance(ctx));
    st->targets = sn_calloc(cfg->target_count ? cfg->target_count : 1, sizeof *st->targets);
    size_t mine = 0;
    for (size_t i = 0; i < cfg->target_count; i++) {
        const sn_target_config_t *t = &cfg->targets[i];
        if (!t->type || strcmp(t->type, "railway") != 0)
            continue;
        s_target_t *mt = &st->targets[st->target_count++];
        mt->cfg = t;
        pthread_mutex_init(&mt->mu, NULL);
        if (t->token && *t->token)
            sn_log_add_secret(t->token);
        sn_provider_opts_t o;
        sn_provider_opts_from_target(&o, "railway", t);
        mt->provider = sn_provider_new(sn_ctx_redis(ctx), &o);
        mine++;
    }
    *state = st;
    sn_info(LOG_MODULE, "serving railway targets=%zu", mine);
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    s_state_t *st = state;
    if (!st)
        return;
    for (size_t i = 0; i < st->target_count; i++) {
        pthread_mutex_destroy(&st->targets[i].mu);
        sn_provider_destroy(&st->targets[i].provider);
    }
    free(st->targets);
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
    sn_request_t *req = (sn_request_t *)creq;
    s_state_t *st = state;
    const Sentinel__V1__DeployRequest *in = sn_request_envelope(req)->deploy_request;
    s_op_t op = {.ctx = ctx, .st = st, .req = req, .in = in};
    op.dop = sn_deploy_op_begin(ctx, req, reply, LOG_MODULE);
    op.dep = sn_deploy_op_deploy(op.dop);
    op.res = sn_deploy_op_result(op.dop);
    op.out = sn_deploy_op_out(op.dop);
    const char *opname = in->op && *in->op ? in->op : "";
    bool is_known_op = strcmp(opname, "stage") == 0 || strcmp(opname, "promote") == 0 ||
                       strcmp(opname, "rollback") == 0;
    int64_t t0 = sn_mono_ms();
    if (sn_deploy_op_claim(op.dop, st->instance, is_known_op ? opname : "unknown-op") !=
        SN_DEPLOY_OP_GO)
        goto log; /* answered with its stored result, or refused */

    /* Validation before any call. */
    const char *tname = op.dep->target;
    const char *to = in->to_release_id ? in->to_release_id : "";
    if (!is_known_op) {
        s_fail(&op, false, "unknown op '%s' (stage, promote, rollback)",
               sn_deploy_op_name_shown(opname));
    } else if (!in->deploy) {
        s_fail(&op, false, "missing deploy");
    } else if (!sn_deploy_op_name_is_valid(op.dep->deploy_id) &&
               !(strcmp(opname, "rollback") == 0 && !*op.dep->deploy_id && *to)) {
        s_fail(&op, false, "invalid deploy id");
    } else if (*to && !sn_deploy_op_name_is_valid(to)) {
        s_fail(&op, false, "invalid to_release_id");
    } else if (!sn_deploy_op_name_is_valid(tname)) {
        s_fail(&op, false, "invalid target name");
    } else {
        for (size_t i = 0; i < st->target_count && !op.t; i++)
            if (st->targets[i].cfg->name && strcmp(st->targets[i].cfg->name, tname) == 0)
                op.t = &st->targets[i];
        const sn_target_config_t *tc = op.t ? op.t->cfg : NULL;
        if (!op.t) {
            s_fail(&op, false, "unknown railway target '%s'", tname);
        } else if (!op.t->provider || !tc->api_base || !tc->token || !*tc->token ||
                   !sn_deploy_op_name_is_valid(tc->service_id) ||
                   !sn_deploy_op_name_is_valid(tc->environment_id)) {
            s_fail(&op, false, "target '%s' lacks api_base, token, service_id or environment_id",
                   tname);
        } else if (strcmp(opname, "stage") == 0 && !sn_deploy_op_name_is_valid(tc->project)) {
            s_fail(&op, false, "target '%s' needs \"project\" (the Railway project id)", tname);
        } else {
            op.out->provider = "railway";
            op.http = sn_http_new();
            /* A plain request ends at its caller's deadline (a little before, so that the
             * answer arrives in time). A ledger job outlives its caller's patience: its
             * result is stored with the job, so it follows the deployment for up to
             * DEFAULT_OP_DEADLINE_MS while its lease is renewed. */
            int64_t deadline = sn_request_deadline_ms(req);
            int64_t now = sn_mono_ms();
            if (sn_deploy_op_job_id(op.dop) || deadline <= 0)
                op.deadline_ms = now + DEFAULT_OP_DEADLINE_MS;
            else if (deadline > now + 2 * REPLY_MARGIN_MS)
                op.deadline_ms = deadline - REPLY_MARGIN_MS;
            else
                op.deadline_ms = deadline;
            /* The attempt budget is widened per call (s_gql) so that successful polls cost
             * nothing: the op tolerates max_attempts failed attempts in all. */
            sn_provider_budget_init(&op.budget, 1, op.deadline_ms);
            op.fail_left = tc->max_attempts > 0 ? tc->max_attempts : 5;
            if (!op.http) {
                s_fail(&op, true, "no HTTP client");
            } else {
                pthread_mutex_lock(&op.t->mu);
                if (strcmp(opname, "stage") == 0)
                    s_stage(&op);
                else if (strcmp(opname, "promote") == 0)
                    s_promote(&op);
                else
                    s_rollback(&op);
                pthread_mutex_unlock(&op.t->mu);
            }
            sn_http_destroy(&op.http);
        }
    }
    sn_deploy_op_finish(op.dop);
    if (!sn_deploy_op_is_lease_lost(op.dop))
        sn_deploy_op_complete(op.dop, opname);
log:
    opname = is_known_op ? opname : "unknown-op";
    const char *job_id = sn_deploy_op_job_shown(op.dop);
    if (op.res->ok)
        sn_info(LOG_MODULE,
                "%s ok target=%s deploy=%s deployment=%s previous=%s url=%s job=%s calls=%d "
                "ms=%lld",
                opname, sn_deploy_op_name_shown(op.dep->target),
                sn_deploy_op_name_shown(op.dep->deploy_id),
                op.out->provider_deployment_id ? op.out->provider_deployment_id : "",
                op.out->previous_release_id ? op.out->previous_release_id : "",
                op.out->live_url ? op.out->live_url : "", job_id, op.budget.attempts,
                (long long)(sn_mono_ms() - t0));
    else
        sn_warn(LOG_MODULE, "%s failed target=%s deploy=%s job=%s transient=%d reason=%s", opname,
                sn_deploy_op_name_shown(op.dep->target), sn_deploy_op_name_shown(op.dep->deploy_id),
                job_id, op.res->is_transient, op.res->reason);
    (void)nak_reason;
    return SN_OK;
}

/* Marks the result failed with a reason (request-owned copy). The first failure wins: a
 * lost lease noticed while a failed op unwinds does not hide its cause. */
static void s_fail(s_op_t *op, bool is_transient, const char *fmt, ...)
{
    if (!op->res->ok)
        return;
    va_list ap;
    va_start(ap, fmt);
    sn_deploy_op_vfail(op->dop, is_transient, fmt, ap);
    va_end(ap);
}

/* ---- ops --------------------------------------------------------------------------------- */

static void s_set_urls(s_op_t *op, char *url)
{
    const char *u = url && *url ? url : op->t->cfg->url ? op->t->cfg->url : "";
    op->out->live_url = sn_request_strdup(op->req, u);
    op->out->preview_url = op->out->live_url;
}

static void s_stage(s_op_t *op)
{
    const sn_target_config_t *tc = op->t->cfg;
    const char *deploy_id = op->dep->deploy_id;
    bool is_error = false;
    char *dep = s_record_get(op, deploy_id, F_STAGE_ID, &is_error);
    char *previous = NULL, *latest_before = NULL, *identity = NULL, *url = NULL;
    json_t *r = NULL;
    if (is_error)
        goto out;
    if (dep) {
        sn_info(LOG_MODULE, "stage deploy=%s resumes railway deployment=%s", deploy_id, dep);
    } else {
        /* What is live (for rollback) and the newest deployment before ours, recorded
         * once: a re-dispatch keeps the first values. */
        previous = s_record_get(op, deploy_id, F_STAGE_PREVIOUS, &is_error);
        latest_before = s_record_get(op, deploy_id, F_STAGE_LATEST_BEFORE, &is_error);
        if (is_error)
            goto out;
        bool is_requested = latest_before != NULL;
        if (!previous || !latest_before) {
            char *lat = NULL, *act = NULL;
            if (s_latest(op, &lat, &act) != SN_OK)
                goto out;
            if (!previous && !s_record_set(op, deploy_id, F_STAGE_PREVIOUS, act, &previous)) {
                free(lat);
                free(act);
                goto out;
            }
            if (!latest_before &&
                !s_record_set(op, deploy_id, F_STAGE_LATEST_BEFORE, lat, &latest_before)) {
                free(lat);
                free(act);
                goto out;
            }
            if (!previous)
                previous = act, act = NULL;
            if (!latest_before)
                latest_before = lat, lat = NULL;
            free(lat);
            free(act);
        } else {
            /* A previous attempt got as far as the deploy mutation but recorded no id: it
             * died in between, or the mutation timed out. If the service has a newer
             * deployment than before, it is that one: adopt it instead of deploying again. */
            char *lat = NULL;
            if (s_latest(op, &lat, NULL) != SN_OK)
                goto out;
            if (is_requested && lat && *lat && strcmp(lat, latest_before) != 0) {
                sn_warn(LOG_MODULE,
                        "stage deploy=%s adopts railway deployment=%s (created after an "
                        "interrupted attempt)",
                        deploy_id, lat);
                if (!s_record_set(op, deploy_id, F_STAGE_ID, lat, &dep)) {
                    free(lat);
                    goto out;
                }
                if (!dep)
                    dep = lat, lat = NULL;
            }
            free(lat);
        }
    }
    if (!dep) {
        identity = sn_deploy_op_identity_json(op->dop);
        json_t *vars = json_pack("{s:{s:s, s:s, s:s, s:{s:s, s:s, s:s}, s:b}}", "input",
                                 "projectId", tc->project, "environmentId", tc->environment_id,
                                 "serviceId", tc->service_id, "variables", "SENTINEL_DEPLOY_ID",
                                 deploy_id, "SENTINEL_COMMIT", op->in->commit ? op->in->commit : "",
                                 "SENTINEL_RELEASE_JSON", identity, "skipDeploys", 1);
        SN_ASSERT(vars);
        /* Setting the same values again is harmless: safe to repeat. */
        r = s_gql(op, "VariableCollectionUpsert", s_m_vars, vars, true, "variableCollectionUpsert");
        if (!r)
            goto out;
        if (!json_is_true(r)) {
            s_fail(op, false, "railway refused the variables (variableCollectionUpsert false)");
            goto out;
        }
        json_decref(r);
        vars = json_pack("{s:s, s:s}", "environmentId", tc->environment_id, "serviceId",
                         tc->service_id);
        /* Not safe to repeat: a second call starts a second deployment. */
        r = s_gql(op, "ServiceInstanceDeployV2", s_m_deploy, vars, false,
                  "serviceInstanceDeployV2");
        if (!r)
            goto out;
        const char *id = json_string_value(r);
        if (!sn_deploy_op_name_is_valid(id)) {
            s_fail(op, false, "railway answered serviceInstanceDeployV2 without a deployment id");
            goto out;
        }
        /* Recorded before waiting: a re-dispatched job follows this deployment. */
        if (!s_record_set(op, deploy_id, F_STAGE_ID, id, &dep))
            goto out;
        if (dep)
            sn_warn(LOG_MODULE, "stage deploy=%s: deployment %s was recorded first, %s started too",
                    deploy_id, dep, id);
        else
            dep = sn_strdup(id);
        sn_info(LOG_MODULE, "stage deploy=%s started railway deployment=%s", deploy_id, dep);
    }
    op->out->provider_deployment_id = sn_request_strdup(op->req, dep);
    op->out->release_id = op->out->provider_deployment_id;
    if (!previous)
        previous = s_record_get(op, deploy_id, F_STAGE_PREVIOUS, &is_error);
    if (previous && *previous)
        op->out->previous_release_id = sn_request_strdup(op->req, previous);
    if (!s_follow(op, dep, &url))
        goto out;
    if (sn_provider_record_put(sn_ctx_redis(op->ctx), deploy_id, F_STAGE_STATUS, "SUCCESS") !=
        SN_OK)
        sn_warn(LOG_MODULE, "stage deploy=%s: status not recorded (redis)", deploy_id);
    s_set_urls(op, url);
    op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED;
    op->out->staged_unix_ms = sn_wall_ms();
out:
    json_decref(r);
    free(url);
    free(identity);
    free(previous);
    free(latest_before);
    free(dep);
}

static void s_promote(s_op_t *op)
{
    const char *deploy_id = op->dep->deploy_id;
    bool is_error = false;
    char *url = NULL;
    char *dep = s_record_get(op, deploy_id, F_STAGE_ID, &is_error);
    char *previous = dep ? s_record_get(op, deploy_id, F_STAGE_PREVIOUS, &is_error) : NULL;
    if (is_error)
        goto out;
    if (!dep) {
        s_fail(op, false, "deploy %s was not staged on railway", deploy_id);
        goto out;
    }
    op->out->provider_deployment_id = sn_request_strdup(op->req, dep);
    op->out->release_id = op->out->provider_deployment_id;
    if (previous && *previous)
        op->out->previous_release_id = sn_request_strdup(op->req, previous);
    /* Stage made it live already: confirm (or wait for a stage still running). */
    if (!s_follow(op, dep, &url))
        goto out;
    s_set_urls(op, url);
    op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE;
    op->out->promoted_unix_ms = sn_wall_ms();
out:
    free(url);
    free(previous);
    free(dep);
}

static void s_rollback(s_op_t *op)
{
    const char *deploy_id = op->dep->deploy_id && *op->dep->deploy_id ? op->dep->deploy_id : NULL;
    const char *to_req =
        op->in->to_release_id && *op->in->to_release_id ? op->in->to_release_id : NULL;
    bool is_error = false;
    char *to = NULL, *latest_before = NULL, *requested = NULL, *dep = NULL, *url = NULL;
    char *lat = NULL, *act = NULL;
    json_t *r = NULL;
    if (to_req) {
        to = sn_strdup(to_req);
    } else {
        to = s_record_get(op, deploy_id, F_STAGE_PREVIOUS, &is_error);
        if (is_error)
            goto out;
        if (!to || !*to) {
            char *staged = s_record_get(op, deploy_id, F_STAGE_ID, &is_error);
            if (is_error)
                goto out;
            if (!staged) {
                /* That deploy never reached railway: nothing to undo. */
                op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK;
                s_set_urls(op, NULL);
                goto out;
            }
            free(staged);
            s_fail(op, false, "no railway deployment was live before deploy %s", deploy_id);
            goto out;
        }
    }
    op->out->release_id = sn_request_strdup(op->req, to);
    /* Already rolled back by an earlier attempt of this request: follow that. */
    if (deploy_id) {
        dep = s_record_get(op, deploy_id, F_ROLLBACK_ID, &is_error);
        requested = s_record_get(op, deploy_id, F_ROLLBACK_TO, &is_error);
        latest_before = s_record_get(op, deploy_id, F_ROLLBACK_LATEST_BEFORE, &is_error);
        if (is_error)
            goto out;
        if (requested && strcmp(requested, to) != 0) {
            free(dep);
            free(requested);
            free(latest_before);
            dep = requested = latest_before = NULL;
        }
    }
    if (!dep) {
        if (s_latest(op, &lat, &act) != SN_OK)
            goto out;
        if (!requested && act && strcmp(act, to) == 0) {
            /* What we would return to is live: nothing to do. */
            op->out->provider_deployment_id = sn_request_strdup(op->req, to);
            op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK;
            s_set_urls(op, NULL);
            goto out;
        }
        if (!requested) {
            if (deploy_id &&
                (!s_record_put_ok(op, deploy_id, F_ROLLBACK_LATEST_BEFORE, lat ? lat : "") ||
                 !s_record_put_ok(op, deploy_id, F_ROLLBACK_TO, to)))
                goto out;
            latest_before = sn_strdup(lat ? lat : "");
            json_t *vars = json_pack("{s:s}", "id", to);
            r = s_gql(op, "DeploymentRollback", s_m_rollback, vars, false, "deploymentRollback");
            if (!r)
                goto out;
            if (!json_is_true(r)) {
                s_fail(op, false, "railway refused to roll back to %s", to);
                goto out;
            }
            sn_info(LOG_MODULE, "rollback deploy=%s to railway deployment=%s requested",
                    deploy_id ? deploy_id : "-", to);
        }
        /* deploymentRollback answers no id: the new deployment is the service's latest
         * one once it differs from the latest one before the request. */
        for (;;) {
            if (lat && *lat && strcmp(lat, latest_before ? latest_before : "") != 0) {
                dep = lat;
                lat = NULL;
                break;
            }
            if (!sn_provider_sleep(op->t->cfg->poll_interval_ms > 0 ? op->t->cfg->poll_interval_ms
                                                                    : DEFAULT_POLL_INTERVAL_MS,
                                   op->deadline_ms) ||
                !s_renew(op)) {
                s_fail(op, true, "the rollback deployment did not appear before the deadline");
                goto out;
            }
            free(lat);
            free(act);
            lat = act = NULL;
            if (s_latest(op, &lat, &act) != SN_OK)
                goto out;
        }
        if (deploy_id && !s_record_put_ok(op, deploy_id, F_ROLLBACK_ID, dep))
            goto out;
    }
    op->out->provider_deployment_id = sn_request_strdup(op->req, dep);
    if (!s_follow(op, dep, &url))
        goto out;
    s_set_urls(op, url);
    op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK;
out:
    json_decref(r);
    free(lat);
    free(act);
    free(url);
    free(dep);
    free(requested);
    free(latest_before);
    free(to);
}

/* ---- Railway ------------------------------------------------------------------------------ */

/* The first GraphQL error's message, cut and with control characters replaced. */
static void s_gql_message(json_t *errors, char *out, size_t out_len)
{
    const char *m = json_string_value(json_object_get(json_array_get(errors, 0), "message"));
    snprintf(out, out_len, "%s", m ? m : "(no message)");
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = ' ';
}

/* POSTs one GraphQL operation (@vars is stolen) and returns a new reference to
 * data.@field, or NULL with the op failed: transport and HTTP failures as sn_provider
 * classified them, any `errors` (even with HTTP 200) and a missing `data` as failures. */
static json_t *s_gql(s_op_t *op, const char *name, const char *document, json_t *vars,
                     bool is_idempotent, const char *field)
{
    const sn_target_config_t *tc = op->t->cfg;
    json_t *body =
        json_pack("{s:s, s:s, s:o}", "operationName", name, "query", document, "variables", vars);
    SN_ASSERT(body);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    SN_ASSERT(text);
    bool is_project = tc->token_kind && strcmp(tc->token_kind, "project") == 0;
    char *auth = is_project ? sn_strdupf("Project-Access-Token: %s", tc->token)
                            : sn_strdupf("Authorization: Bearer %s", tc->token);
    const char *headers[] = {"Content-Type: application/json", "Accept: application/json", auth,
                             NULL};
    sn_http_request_t req = {
        .method = "POST",
        .url = tc->api_base,
        .headers = headers,
        .body = text,
        .body_len = strlen(text),
        .timeout_ms =
            tc->request_timeout_ms > 0 ? tc->request_timeout_ms : DEFAULT_REQUEST_TIMEOUT_MS,
    };
    sn_http_response_t resp;
    json_t *json = NULL, *out = NULL;
    int failures_before = op->budget.failures;
    op->budget.max_attempts = op->budget.attempts + (op->fail_left <= 0 ? 0
                                                     : is_idempotent    ? op->fail_left
                                                                        : 1);
    sn_rc_t rc = sn_provider_call_json(op->t->provider, op->http, &req, is_idempotent, &op->budget,
                                       &resp, &json);
    op->fail_left -= op->budget.failures - failures_before;
    memset(auth, 0, strlen(auth));
    free(auth);
    free(text);
    if (rc != SN_OK) {
        s_fail(op, rc == SN_AGAIN, "railway %s: %s", name, op->budget.reason);
        goto out;
    }
    json_t *errors = json_object_get(json, "errors");
    if (json_is_array(errors) && json_array_size(errors) > 0) {
        char msg[GQL_MESSAGE_MAX];
        s_gql_message(errors, msg, sizeof msg);
        bool is_transient = strstr(msg, "rate limit") || strstr(msg, "Rate limit") ||
                            strstr(msg, "Internal") || strstr(msg, "timeout");
        s_fail(op, is_transient, "railway %s: GraphQL error: %s", name, msg);
        goto out;
    }
    json_t *data = json_object_get(json, "data");
    json_t *value = json_is_object(data) ? json_object_get(data, field) : NULL;
    if (!value || json_is_null(value)) {
        s_fail(op, false, "railway %s: answer without data.%s", name, field);
        goto out;
    }
    out = json_incref(value);
out:
    json_decref(json);
    sn_http_response_fini(&resp);
    return out;
}

/* The service's latest deployment id and its first active (SUCCESS) deployment id in the
 * environment; each "" when there is none (caller frees both; @active may be NULL). */
static sn_rc_t s_latest(s_op_t *op, char **latest_id, char **active_id)
{
    *latest_id = NULL;
    if (active_id)
        *active_id = NULL;
    json_t *vars = json_pack("{s:s, s:s}", "serviceId", op->t->cfg->service_id, "environmentId",
                             op->t->cfg->environment_id);
    json_t *si = s_gql(op, "LatestDeployment", s_q_latest, vars, true, "serviceInstance");
    if (!si)
        return SN_ERROR;
    const char *lat =
        json_string_value(json_object_get(json_object_get(si, "latestDeployment"), "id"));
    const char *act = NULL;
    json_t *actives = json_object_get(si, "activeDeployments");
    size_t i;
    json_t *a;
    json_array_foreach(actives, i, a)
    {
        const char *status = json_string_value(json_object_get(a, "status"));
        if (status && (strcmp(status, "SUCCESS") == 0 || strcmp(status, "SLEEPING") == 0)) {
            act = json_string_value(json_object_get(a, "id"));
            break;
        }
    }
    bool is_bad =
        (lat && !sn_deploy_op_name_is_valid(lat)) || (act && !sn_deploy_op_name_is_valid(act));
    if (is_bad) {
        json_decref(si);
        s_fail(op, false, "railway LatestDeployment: malformed deployment id");
        return SN_ERROR;
    }
    *latest_id = sn_strdup(lat ? lat : "");
    if (active_id)
        *active_id = sn_strdup(act ? act : "");
    json_decref(si);
    return SN_OK;
}

/* Follows @deployment_id to a terminal state. True on SUCCESS (or SLEEPING), with *url
 * the deployment's URL (caller frees; NULL if it has none); false with the op failed. */
static bool s_follow(s_op_t *op, const char *deployment_id, char **url)
{
    *url = NULL;
    int interval =
        op->t->cfg->poll_interval_ms > 0 ? op->t->cfg->poll_interval_ms : DEFAULT_POLL_INTERVAL_MS;
    char last[32] = "";
    for (;;) {
        if (!s_renew(op))
            return false;
        json_t *vars = json_pack("{s:s}", "id", deployment_id);
        json_t *d = s_gql(op, "DeploymentStatus", s_q_status, vars, true, "deployment");
        if (!d)
            return false;
        const char *status = json_string_value(json_object_get(d, "status"));
        if (!status) {
            json_decref(d);
            s_fail(op, false, "railway deployment %s has no status", deployment_id);
            return false;
        }
        if (strcmp(status, last) != 0) {
            sn_info(LOG_MODULE, "railway deployment=%s status=%s deploy=%s", deployment_id, status,
                    sn_deploy_op_name_shown(op->dep->deploy_id));
            snprintf(last, sizeof last, "%s", status);
        }
        if (strcmp(status, "SUCCESS") == 0 || strcmp(status, "SLEEPING") == 0) {
            const char *u = json_string_value(json_object_get(d, "staticUrl"));
            if (!u || !*u)
                u = json_string_value(json_object_get(d, "url"));
            if (u && *u)
                *url = strstr(u, "://") ? sn_strdup(u) : sn_strdupf("https://%s", u);
            json_decref(d);
            return true;
        }
        if (strcmp(status, "FAILED") == 0 || strcmp(status, "CRASHED") == 0 ||
            strcmp(status, "REMOVED") == 0 || strcmp(status, "REMOVING") == 0 ||
            strcmp(status, "SKIPPED") == 0) {
            json_decref(d);
            s_fail(op, false, "railway deployment %s ended %s", deployment_id, last);
            return false;
        }
        json_decref(d);
        if (sn_ctx_is_stopping(op->ctx)) {
            s_fail(op, true, "shutting down while railway deployment %s is %s", deployment_id,
                   last);
            return false;
        }
        if (!sn_provider_sleep(interval, op->deadline_ms)) {
            s_fail(op, true, "railway deployment %s still %s at the deadline", deployment_id, last);
            return false;
        }
    }
}

/* Renews the job's lease when a third of it has passed. False (op failed) if it is lost. */
static bool s_renew(s_op_t *op)
{
    if (sn_deploy_op_renew(op->dop))
        return true;
    s_fail(op, true, "lost the lease of job %s", sn_deploy_op_job_id(op->dop));
    return false;
}

/* ---- the deploy record -------------------------------------------------------------------- */

/* The field's value (caller frees) or NULL when absent; *is_error set (op failed) when
 * Redis did not answer. */
static char *s_record_get(s_op_t *op, const char *deploy_id, const char *field, bool *is_error)
{
    char *v = NULL;
    sn_rc_t rc = sn_provider_record_get(sn_ctx_redis(op->ctx), deploy_id, field, &v);
    if (rc == SN_AGAIN) {
        s_fail(op, true, "cannot read the deploy record (redis)");
        *is_error = true;
    }
    return v;
}

/* Sets @field if absent. True on success; *kept (may be NULL) gets the value already
 * there when it was set before (caller frees). False (op failed) when Redis did not
 * answer. */
static bool s_record_set(s_op_t *op, const char *deploy_id, const char *field, const char *value,
                         char **kept)
{
    char *existing = NULL;
    sn_rc_t rc = sn_provider_record_set(sn_ctx_redis(op->ctx), deploy_id, field, value ? value : "",
                                        &existing);
    if (rc == SN_AGAIN) {
        s_fail(op, true, "cannot write the deploy record (redis)");
        return false;
    }
    if (kept)
        *kept = existing;
    else
        free(existing);
    return true;
}

/* Sets @field unconditionally. False (op failed) when Redis did not answer. */
static bool s_record_put_ok(s_op_t *op, const char *deploy_id, const char *field, const char *value)
{
    if (sn_provider_record_put(sn_ctx_redis(op->ctx), deploy_id, field, value) != SN_OK) {
        s_fail(op, true, "cannot write the deploy record (redis)");
        return false;
    }
    return true;
}

/* ---- names -------------------------------------------------------------------------------- */

/* 1..128 characters of [A-Za-z0-9._-], not starting with '.': safe in a Redis key, a log
 * line and a GraphQL variable. */
