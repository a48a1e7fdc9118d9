/* buildpilot's run record and its store: the pure helpers every transition is written
 * with, and the one fenced journal commit that persists a transition (buildpilot_run.h). */
#include "buildpilot_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

const char *const bp_step_names[BP_STEP_COUNT] = {
    "commit", "trigger",        "gate1",   "build",       "gate2",    "plan",   "approval",
    "stage",  "verify_preview", "promote", "verify_live", "rollback", "notify",
};

const bp_work_info_t bp_works[BP_W_COUNT] = {
    [BP_W_GATE1] = {"gate1", false, BP_STEP_GATE1},
    [BP_W_BUILD] = {"build", true, BP_STEP_BUILD},
    [BP_W_GATE2] = {"gate2", false, BP_STEP_GATE2},
    [BP_W_STAGE] = {"stage", true, BP_STEP_STAGE},
    [BP_W_VPREVIEW] = {"vpreview", true, BP_STEP_VERIFY_PREVIEW},
    [BP_W_PROMOTE] = {"promote", true, BP_STEP_PROMOTE},
    [BP_W_VLIVE] = {"vlive", true, BP_STEP_VERIFY_LIVE},
    [BP_W_ROLLBACK] = {"rollback", true, BP_STEP_ROLLBACK},
};

static void s_enum_name(const ProtobufCEnumDescriptor *desc, int value, const char *prefix,
                        char *out, size_t len);

/* ---- the record --------------------------------------------------------------------------- */

void bp_str_set(char **field, const char *value)
{
    if (*field && *field != protobuf_c_empty_string)
        free(*field);
    *field = sn_strdup(value ? value : "");
}

bool bp_str_empty(const char *s)
{
    return !s || !*s;
}

bool bp_state_is_terminal(Sentinel__V1__RunState state)
{
    return state >= SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED;
}

void bp_state_name(Sentinel__V1__RunState state, char *out, size_t len)
{
    s_enum_name(&sentinel__v1__run_state__descriptor, (int)state, "RUN_", out, len);
}

void bp_phase_name(Sentinel__V1__DeployPhase phase, char *out, size_t len)
{
    s_enum_name(&sentinel__v1__deploy_phase__descriptor, (int)phase, "DEPLOY_", out, len);
}

void bp_work_key(const bp_pb_run_t *r, bp_work_t w, const char *target, char *out, size_t len)
{
    if (target)
        snprintf(out, len, "%s.%s.%s", r->run_id, bp_works[w].tag, target);
    else
        snprintf(out, len, "%s.%s", r->run_id, bp_works[w].tag);
    for (char *p = out; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == ':' || *p == '-'))
            *p = '_';
}

bp_pb_run_t *bp_run_new(const char *project, const char *env, const char *ref, const char *sha,
                        const char *trigger, const char *requested_by)
{
    bp_pb_run_t *r = sn_calloc(1, sizeof *r);
    sentinel__v1__run__init(r);
    char id[SN_ID_LEN + 1];
    sn_id_new(id);
    bp_str_set(&r->run_id, id);
    bp_str_set(&r->project, project);
    bp_str_set(&r->environment, env);
    bp_str_set(&r->ref, ref);
    bp_str_set(&r->sha, sha);
    bp_str_set(&r->trigger, bp_str_empty(trigger) ? "api" : trigger);
    bp_str_set(&r->requested_by, requested_by);
    r->state = SENTINEL__V1__RUN_STATE__RUN_QUEUED;
    r->created_unix_ms = sn_wall_ms();
    r->approval = sn_calloc(1, sizeof *r->approval);
    sentinel__v1__approval__init(r->approval);
    for (int i = 0; i < BP_STEP_COUNT; i++)
        (void)bp_step(r, i);
    bp_step_end(r, BP_STEP_COMMIT, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    bp_step_start(r, BP_STEP_TRIGGER, 0);
    return r;
}

bp_pb_step_t *bp_step(bp_pb_run_t *r, int step)
{
    SN_ASSERT(step >= 0 && step < BP_STEP_COUNT);
    const char *name = bp_step_names[step];
    for (size_t i = 0; i < r->n_steps; i++)
        if (r->steps[i]->name && strcmp(r->steps[i]->name, name) == 0)
            return r->steps[i];
    /* A record written without this step (older writer): add it. */
    r->steps = sn_realloc(r->steps, (r->n_steps + 1) * sizeof *r->steps);
    bp_pb_step_t *s = sn_calloc(1, sizeof *s);
    sentinel__v1__step__init(s);
    s->name = sn_strdup(name);
    s->state = SENTINEL__V1__STEP_STATE__STEP_PENDING;
    r->steps[r->n_steps++] = s;
    return s;
}

void bp_step_start(bp_pb_run_t *r, int step, int64_t timeout_ms)
{
    bp_pb_step_t *s = bp_step(r, step);
    int64_t now = sn_wall_ms();
    s->state = SENTINEL__V1__STEP_STATE__STEP_RUNNING;
    s->started_unix_ms = now;
    s->finished_unix_ms = 0;
    s->deadline_unix_ms = timeout_ms > 0 ? now + timeout_ms : 0;
}

void bp_step_end(bp_pb_run_t *r, int step, Sentinel__V1__StepState state, const char *reason)
{
    bp_pb_step_t *s = bp_step(r, step);
    int64_t now = sn_wall_ms();
    if (!s->started_unix_ms)
        s->started_unix_ms = now;
    s->state = state;
    s->finished_unix_ms = now;
    if (reason)
        bp_str_set(&s->reason, reason);
}

void bp_step_close(bp_pb_run_t *r, int step, Sentinel__V1__StepState state)
{
    if (bp_step(r, step)->state == SENTINEL__V1__STEP_STATE__STEP_RUNNING)
        bp_step_end(r, step, state, NULL);
}

bool bp_step_is(bp_pb_run_t *r, int step, Sentinel__V1__StepState state)
{
    return bp_step(r, step)->state == state;
}

void bp_fail_reason(bp_pb_run_t *r, const char *reason)
{
    if (bp_str_empty(r->reason))
        bp_str_set(&r->reason, reason);
}

bool bp_same_env(const bp_pb_run_t *r, const char *project, const char *env)
{
    return strcmp(r->project, project) == 0 && strcmp(r->environment, env) == 0;
}

const sn_environment_config_t *bp_env_cfg(const sn_config_t *cfg, const bp_pb_run_t *r)
{
    const sn_project_config_t *p = sn_config_project(cfg, r->project);
    return p ? sn_config_environment(p, r->environment) : NULL;
}

int64_t bp_step_timeout_ms(const sn_config_t *cfg, const bp_pb_run_t *r)
{
    const sn_environment_config_t *e = bp_env_cfg(cfg, r);
    return (int64_t)(e && e->step_timeout_s > 0 ? e->step_timeout_s : 600) * 1000;
}

void bp_run_plan(const sn_config_t *cfg, bp_pb_run_t *r, Sentinel__V1__DeployPhase phase)
{
    const sn_environment_config_t *e = bp_env_cfg(cfg, r);
    for (size_t i = 0; e && e->targets && e->targets[i]; i++) {
        const sn_target_config_t *t = sn_config_target(cfg, e->targets[i]);
        bp_pb_deploy_t *d = sn_calloc(1, sizeof *d);
        sentinel__v1__deploy__init(d);
        char *id = sn_strdupf("%s-%s", r->run_id, e->targets[i]);
        bp_str_set(&d->deploy_id, id);
        free(id);
        bp_str_set(&d->run_id, r->run_id);
        bp_str_set(&d->project, r->project);
        bp_str_set(&d->environment, r->environment);
        bp_str_set(&d->target, e->targets[i]);
        bp_str_set(&d->provider, t && t->type ? t->type : "");
        if (t) {
            char *pv = t->preview_url      ? sn_strdup(t->preview_url)
                       : t->preview_listen ? sn_strdupf("http://%s", t->preview_listen)
                                           : sn_strdup("");
            char *lv = t->url      ? sn_strdup(t->url)
                       : t->listen ? sn_strdupf("http://%s", t->listen)
                                   : sn_strdup("");
            bp_str_set(&d->preview_url, pv);
            bp_str_set(&d->live_url, lv);
            free(pv);
            free(lv);
        }
        d->phase = phase;
        r->deploys = sn_realloc(r->deploys, (r->n_deploys + 1) * sizeof *r->deploys);
        r->deploys[r->n_deploys++] = d;
    }
}

bool bp_any_phase(const bp_pb_run_t *r, Sentinel__V1__DeployPhase phase, bool no_error)
{
    for (size_t i = 0; i < r->n_deploys; i++)
        if (r->deploys[i]->phase == phase && (!no_error || bp_str_empty(r->deploys[i]->error)))
            return true;
    return false;
}

bool bp_is_failing(const bp_pb_run_t *r)
{
    if (!bp_str_empty(r->reason))
        return true;
    for (size_t i = 0; i < r->n_deploys; i++)
        if (r->deploys[i]->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED ||
            !bp_str_empty(r->deploys[i]->error))
            return true;
    return false;
}

/* ---- the store ------------------------------------------------------------------------------ */

bool bp_store_commit(sn_ctx_t *ctx, bp_pb_run_t *r, sn_journal_ops_t *ops, const char *type,
                     const char *step, int deploy, const char *label_key, const char *label_value)
{
    r->updated_unix_ms = sn_wall_ms();
    if (!ops)
        ops = sn_journal_ops_new();
    size_t len = sentinel__v1__run__get_packed_size(r);
    uint8_t *buf = sn_malloc(len ? len : 1);
    sentinel__v1__run__pack(r, buf);
    char state[32], updated[24];
    bp_state_name(r->state, state, sizeof state);
    snprintf(updated, sizeof updated, "%lld", (long long)r->updated_unix_ms);
    char *key = sn_strdupf("run:%s", r->run_id);
    sn_journal_ops_hset(ops, key, "pb", buf, len);
    sn_journal_ops_hset(ops, key, "state", state, strlen(state));
    sn_journal_ops_hset(ops, key, "project", r->project, strlen(r->project));
    sn_journal_ops_hset(ops, key, "environment", r->environment, strlen(r->environment));
    sn_journal_ops_hset(ops, key, "updated_ms", updated, strlen(updated));
    if (bp_state_is_terminal(r->state))
        sn_journal_ops_srem(ops, "runs:active", r->run_id);
    else
        sn_journal_ops_sadd(ops, "runs:active", r->run_id);
    for (size_t i = 0; i < r->n_deploys; i++) {
        bp_pb_deploy_t *d = r->deploys[i];
        size_t dlen = sentinel__v1__deploy__get_packed_size(d);
        uint8_t *dbuf = sn_malloc(dlen ? dlen : 1);
        sentinel__v1__deploy__pack(d, dbuf);
        char phase[32];
        bp_phase_name(d->phase, phase, sizeof phase);
        char *dkey = sn_strdupf("deploy:%s", d->deploy_id);
        sn_journal_ops_hset(ops, dkey, "pb", dbuf, dlen);
        sn_journal_ops_hset(ops, dkey, "phase", phase, strlen(phase));
        sn_journal_ops_hset(ops, dkey, "run_id", r->run_id, strlen(r->run_id));
        free(dkey);
        free(dbuf);
    }
    sn_envelope_t env;
    sentinel__v1__envelope__init(&env);
    env.type = (char *)type;
    env.correlation_id = r->run_id;
    char *subject = NULL;
    if (deploy >= 0 && (size_t)deploy < r->n_deploys) {
        subject = sn_strdupf("%s/%s/%s", r->project, r->environment, r->deploys[deploy]->target);
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY;
        env.deploy = r->deploys[deploy];
    } else {
        subject = sn_strdupf("%s/%s", r->project, r->environment);
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN;
        env.run = r;
    }
    env.subject = subject;
    if (step)
        sn_envelope_add_label(&env, "step", step);
    if (label_key)
        sn_envelope_add_label(&env, label_key, label_value);
    sn_journal_result_t res;
    sn_rc_t rc =
        sn_journal_commit(sn_ctx_journal(ctx), ops, BP_LOCK_KEY, sn_ctx_fence(ctx), &env, &res);
    if (rc == SN_OK) {
        sn_info(BP_MODULE, "%s run=%s state=%s%s%s", type, r->run_id, state,
                deploy >= 0 ? " target=" : "", deploy >= 0 ? r->deploys[deploy]->target : "");
    } else {
        sn_warn(BP_MODULE, "commit refused type=%s run=%s rc=%s: reloading runs", type, r->run_id,
                sn_rc_str(rc));
        sn_metrics_add(sn_ctx_metrics(ctx), "commit_failed", 1);
    }
    sn_envelope_fini_labels(&env);
    free(subject);
    free(key);
    free(buf);
    sn_journal_ops_destroy(&ops);
    return rc == SN_OK;
}

sn_rc_t bp_store_load(sn_ctx_t *ctx, bp_pb_run_t ***runs, size_t *count)
{
    *runs = NULL;
    *count = 0;
    sn_redis_t *redis = sn_ctx_redis(ctx);
    char *key = sn_strdupf("%sruns:active", sn_redis_ns(redis));
    const char *argv[] = {"SMEMBERS", key};
    redisReply *rep = NULL;
    sn_rc_t rc = sn_redis_cmd(redis, SN_REDIS_MAIN, 0, &rep, 2, argv, NULL);
    free(key);
    if (rc != SN_OK || rep->type != REDIS_REPLY_ARRAY) {
        if (rep)
            freeReplyObject(rep);
        return SN_AGAIN;
    }
    bp_pb_run_t **out = sn_calloc(rep->elements + 1, sizeof *out);
    size_t n = 0;
    for (size_t i = 0; i < rep->elements; i++) {
        if (rep->element[i]->type != REDIS_REPLY_STRING)
            continue;
        char *rkey = sn_strdupf("%srun:%s", sn_redis_ns(redis), rep->element[i]->str);
        const char *hargv[] = {"HGET", rkey, "pb"};
        redisReply *h = NULL;
        rc = sn_redis_cmd(redis, SN_REDIS_MAIN, 0, &h, 3, hargv, NULL);
        free(rkey);
        if (rc != SN_OK) {
            freeReplyObject(rep);
            for (size_t k = 0; k < n; k++)
                sentinel__v1__run__free_unpacked(out[k], NULL);
            free(out);
            return SN_AGAIN;
        }
        bp_pb_run_t *r = NULL;
        if (h->type == REDIS_REPLY_STRING && h->len > 0 && h->len <= SN_MAX_EVENT_BYTES)
            r = sentinel__v1__run__unpack(NULL, h->len, (const uint8_t *)h->str);
        freeReplyObject(h);
        if (!r || bp_str_empty(r->run_id) || bp_state_is_terminal(r->state)) {
            if (!r)
                sn_warn(BP_MODULE, "active run without a readable record run=%s",
                        rep->element[i]->str);
            if (r)
                sentinel__v1__run__free_unpacked(r, NULL);
            continue;
        }
        if (!r->approval) {
            r->approval = sn_calloc(1, sizeof *r->approval);
            sentinel__v1__approval__init(r->approval);
        }
        out[n++] = r;
    }
    freeReplyObject(rep);
    *runs = out;
    *count = n;
    return SN_OK;
}

bp_pb_run_t *bp_store_read(sn_ctx_t *ctx, const char *run_id)
{
    sn_redis_t *redis = sn_ctx_redis(ctx);
    char *key = sn_strdupf("%srun:%s", sn_redis_ns(redis), run_id);
    const char *argv[] = {"HGET", key, "pb"};
    redisReply *rep = NULL;
    sn_rc_t rc = sn_redis_cmd(redis, SN_REDIS_MAIN, 0, &rep, 3, argv, NULL);
    free(key);
    bp_pb_run_t *r = NULL;
    if (rc == SN_OK && rep->type == REDIS_REPLY_STRING && rep->len > 0 &&
        rep->len <= SN_MAX_EVENT_BYTES)
        r = sentinel__v1__run__unpack(NULL, rep->len, (const uint8_t *)rep->str);
    if (rep)
        freeReplyObject(rep);
    return r;
}

char *bp_store_env_field(sn_ctx_t *ctx, const char *project, const char *env, const char *field)
{
    sn_redis_t *redis = sn_ctx_redis(ctx);
    char *key = sn_strdupf("%senv:%s:%s", sn_redis_ns(redis), project, env);
    const char *argv[] = {"HGET", key, field};
    redisReply *rep = NULL;
    sn_rc_t rc = sn_redis_cmd(redis, SN_REDIS_MAIN, 0, &rep, 3, argv, NULL);
    free(key);
    char *out = NULL;
    if (rc == SN_OK && rep->type == REDIS_REPLY_STRING && rep->len > 0)
        out = sn_strndup(rep->str, rep->len);
    if (rep)
        freeReplyObject(rep);
    return out;
}

void bp_ops_take_env(sn_journal_ops_t *ops, const bp_pb_run_t *r)
{
    char *lock = sn_strdupf("envlock:%s:%s", r->project, r->environment);
    char *envk = sn_strdupf("env:%s:%s", r->project, r->environment);
    sn_journal_ops_set(ops, lock, r->run_id, strlen(r->run_id), 0);
    sn_journal_ops_hset(ops, envk, "current_run", r->run_id, strlen(r->run_id));
    free(lock);
    free(envk);
}

void bp_ops_release_env(sn_journal_ops_t *ops, const bp_pb_run_t *r)
{
    char *lock = sn_strdupf("envlock:%s:%s", r->project, r->environment);
    char *envk = sn_strdupf("env:%s:%s", r->project, r->environment);
    sn_journal_ops_del(ops, lock);
    sn_journal_ops_hset(ops, envk, "current_run", "", 0);
    free(lock);
    free(envk);
}

void bp_ops_approval_request(sn_journal_ops_t *ops, const bp_pb_run_t *r)
{
    const Sentinel__V1__Approval *a = r->approval;
    char approvers[512] = "";
    size_t off = 0;
    for (size_t i = 0; i < a->n_approvers && off < sizeof approvers; i++)
        off += (size_t)snprintf(approvers + off, sizeof approvers - off, "%s%s", i ? "," : "",
                                a->approvers[i]);
    char expires[24];
    snprintf(expires, sizeof expires, "%lld", (long long)a->expires_unix_ms);
    char *key = sn_strdupf("approval:%s", r->run_id);
    sn_journal_ops_hset(ops, key, "required", "1", 1);
    sn_journal_ops_hset(ops, key, "approvers", approvers, strlen(approvers));
    sn_journal_ops_hset(ops, key, "requested_by", r->requested_by, strlen(r->requested_by));
    sn_journal_ops_hset(ops, key, "expires_ms", expires, strlen(expires));
    free(key);
}

void bp_ops_approval_granted(sn_journal_ops_t *ops, const bp_pb_run_t *r)
{
    const Sentinel__V1__Approval *a = r->approval;
    char *key = sn_strdupf("approval:%s", r->run_id);
    char ms[24];
    snprintf(ms, sizeof ms, "%lld", (long long)a->approved_unix_ms);
    sn_journal_ops_hset(ops, key, "approved_by", a->approved_by, strlen(a->approved_by));
    sn_journal_ops_hset(ops, key, "approved_ms", ms, strlen(ms));
    free(key);
}

void bp_ops_last_verified(sn_journal_ops_t *ops, const bp_pb_run_t *r)
{
    char *envk = sn_strdupf("env:%s:%s", r->project, r->environment);
    sn_journal_ops_hset(ops, envk, "last_verified_artifact", r->artifact_sha256,
                        strlen(r->artifact_sha256));
    sn_journal_ops_hset(ops, envk, "last_verified_run", r->run_id, strlen(r->run_id));
    sn_journal_ops_hset(ops, envk, "last_verified_sha", r->sha, strlen(r->sha));
    free(envk);
}

void bp_ops_index(sn_journal_ops_t *ops, const bp_pb_run_t *r)
{
    char *pk = sn_strdupf("runs:%s", r->project);
    sn_journal_ops_zadd(ops, "runs:all", (double)r->created_unix_ms, r->run_id);
    sn_journal_ops_zadd(ops, pk, (double)r->created_unix_ms, r->run_id);
    free(pk);
}

/* ---- helpers ----------------------------------------------------------------------------- */

static void s_enum_name(const ProtobufCEnumDescriptor *desc, int value, const char *prefix,
                        char *out, size_t len)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(desc, value);
    const char *name = v ? v->name : "unspecified";
    size_t plen = strlen(prefix);
    if (strncmp(name, prefix, plen) == 0)
        name += plen;
    size_t i = 0;
    for (; name[i] && i + 1 < len; i++)
        out[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] - 'A' + 'a' : name[i]);
    out[i] = '\0';
}
