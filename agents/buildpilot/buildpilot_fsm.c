/* buildpilot's run state machine: the (state, event) table and its actions
 * (buildpilot_fsm.h). Each action is the whole decision of one transition; buildpilot.c
 * only carries out the effect it describes. */
#include "buildpilot_fsm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_log.h"

#define S_REASON_MAX 512

typedef void(s_action_fn)(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev,
                          bp_effect_t *out);

static s_action_fn s_start, s_gate_result, s_building_result, s_target_result, s_join_stage,
    s_join_preview, s_join_promote, s_join_live, s_join_rollback, s_deadline, s_approve, s_proceed,
    s_cancel;

#define S_ANY ((Sentinel__V1__RunState)-1) /* every non-terminal state */
#define S_STATE(x) SENTINEL__V1__RUN_STATE__RUN_##x

/* The table: the first row matching (state, event) wins. */
static const struct {
    Sentinel__V1__RunState state;
    bp_event_kind_t event;
    s_action_fn *action;
} s_table[] = {
    {S_STATE(QUEUED), BP_EV_START, s_start},
    {S_STATE(GATING), BP_EV_RESULT, s_gate_result},
    {S_STATE(BUILDING), BP_EV_RESULT, s_building_result},
    {S_STATE(AWAITING_APPROVAL), BP_EV_APPROVE, s_approve},
    {S_STATE(AWAITING_APPROVAL), BP_EV_PROCEED, s_proceed},
    {S_STATE(AWAITING_APPROVAL), BP_EV_JOIN, s_proceed}, /* approved, stage not recorded */
    {S_STATE(STAGING), BP_EV_RESULT, s_target_result},
    {S_STATE(STAGING), BP_EV_JOIN, s_join_stage},
    {S_STATE(VERIFYING_PREVIEW), BP_EV_RESULT, s_target_result},
    {S_STATE(VERIFYING_PREVIEW), BP_EV_JOIN, s_join_preview},
    {S_STATE(PROMOTING), BP_EV_RESULT, s_target_result},
    {S_STATE(PROMOTING), BP_EV_JOIN, s_join_promote},
    {S_STATE(VERIFYING_LIVE), BP_EV_RESULT, s_target_result},
    {S_STATE(VERIFYING_LIVE), BP_EV_JOIN, s_join_live},
    {S_STATE(ROLLING_BACK), BP_EV_RESULT, s_target_result},
    {S_STATE(ROLLING_BACK), BP_EV_JOIN, s_join_rollback},
    {S_ANY, BP_EV_DEADLINE, s_deadline},
    {S_ANY, BP_EV_CANCEL, s_cancel},
};

static const char *const s_event_names[BP_EV_COUNT] = {
    "none", "start", "result", "join", "proceed", "deadline", "approve", "cancel",
};

static void s_begin_stage(const sn_config_t *cfg, bp_pb_run_t *r, bp_effect_t *out);
static void s_begin_rollback(const sn_config_t *cfg, bp_pb_run_t *r, bp_effect_t *out);
static void s_after_gate2(const sn_config_t *cfg, bp_pb_run_t *r, bp_effect_t *out);
static bool s_retry_or_budget(bp_pb_run_t *r, const bp_event_t *ev, const char *label,
                              bp_effect_t *out, char *fail, size_t fail_len);
static void s_effect(bp_effect_t *out, const char *type, const char *step);
static bool s_any_live_stage(const sn_config_t *cfg, const bp_pb_run_t *r);

/* ---- public ------------------------------------------------------------------------------ */

void bp_fsm_handle(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev, bp_effect_t *out)
{
    memset(out, 0, sizeof *out);
    out->deploy = -1;
    if (bp_state_is_terminal(r->state))
        return;
    for (size_t i = 0; i < SN_ARRAY_LEN(s_table); i++) {
        if (s_table[i].event != ev->kind ||
            (s_table[i].state != S_ANY && s_table[i].state != r->state))
            continue;
        out->is_handled = true;
        s_table[i].action(cfg, r, ev, out);
        return;
    }
}

void bp_fsm_finish(bp_pb_run_t *r, Sentinel__V1__RunState state, const char *reason)
{
    Sentinel__V1__StepState open_end = state == S_STATE(CANCELLED) || state == S_STATE(SUPERSEDED)
                                           ? SENTINEL__V1__STEP_STATE__STEP_CANCELLED
                                       : state == S_STATE(SUCCEEDED)
                                           ? SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED
                                           : SENTINEL__V1__STEP_STATE__STEP_FAILED;
    for (int i = 0; i < BP_STEP_COUNT; i++) {
        if (i == BP_STEP_NOTIFY)
            continue;
        bp_pb_step_t *s = bp_step(r, i);
        if (s->state == SENTINEL__V1__STEP_STATE__STEP_RUNNING)
            bp_step_end(r, i, open_end, NULL);
        else if (s->state == SENTINEL__V1__STEP_STATE__STEP_PENDING)
            bp_step_end(r, i, SENTINEL__V1__STEP_STATE__STEP_SKIPPED, NULL);
    }
    bp_step_end(r, BP_STEP_NOTIFY, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, "outcome journaled");
    for (size_t i = 0; i < r->n_deploys; i++) {
        bp_pb_deploy_t *d = r->deploys[i];
        if (d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PLANNED ||
            d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGING)
            d->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_CANCELLED;
        if (!d->finished_unix_ms)
            d->finished_unix_ms = sn_wall_ms();
    }
    if (reason)
        bp_str_set(&r->reason, reason);
    r->state = state;
}

bool bp_fsm_is_queued(const bp_pb_run_t *r)
{
    return r->state == S_STATE(QUEUED);
}

const char *bp_fsm_event_name(bp_event_kind_t kind)
{
    return kind >= 0 && kind < BP_EV_COUNT ? s_event_names[kind] : "?";
}

/* ---- actions ----------------------------------------------------------------------------- */

/* QUEUED -> holds the environment: gate 1, or straight to the rollback for a rollback run. */
static void s_start(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev, bp_effect_t *out)
{
    (void)ev;
    bp_step_end(r, BP_STEP_TRIGGER, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    if (strcmp(r->trigger, "rollback") == 0) {
        for (int i = BP_STEP_GATE1; i <= BP_STEP_VERIFY_LIVE; i++)
            bp_step_end(r, i, SENTINEL__V1__STEP_STATE__STEP_SKIPPED, "rollback run");
        bp_run_plan(cfg, r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK);
        bp_step_start(r, BP_STEP_ROLLBACK, bp_step_timeout_ms(cfg, r));
        r->state = S_STATE(ROLLING_BACK);
    } else {
        bp_step_start(r, BP_STEP_GATE1, bp_step_timeout_ms(cfg, r));
        r->state = S_STATE(GATING);
    }
    s_effect(out, "run.started", NULL);
    out->ops = BP_OPS_TAKE_ENV;
}

/* A gate answered (gate 1 in GATING, gate 2 in BUILDING). */
static void s_gate_result(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev,
                          bp_effect_t *out)
{
    if (ev->work != BP_W_GATE1 && ev->work != BP_W_GATE2)
        return;
    int step = bp_works[ev->work].step;
    int gate = ev->work == BP_W_GATE1 ? 1 : 2;
    if (!bp_step_is(r, step, SENTINEL__V1__STEP_STATE__STEP_RUNNING))
        return; /* stale */
    char reason[S_REASON_MAX];
    const Sentinel__V1__GateResult *g =
        ev->reply && ev->reply->body_case == SENTINEL__V1__ENVELOPE__BODY_GATE_RESULT
            ? ev->reply->gate_result
            : NULL;
    if (!g) {
        snprintf(reason, sizeof reason, "gate %d: %s", gate, ev->why ? ev->why : "bad reply");
        bp_step_end(r, step, SENTINEL__V1__STEP_STATE__STEP_FAILED, reason);
        bp_str_set(&r->reason, reason);
        out->end = S_STATE(FAILED);
        return;
    }
    if (!g->ok) {
        size_t off = (size_t)snprintf(reason, sizeof reason, "gate %d rejected:", gate);
        for (size_t i = 0; i < g->n_reasons && off < sizeof reason; i++)
            off += (size_t)snprintf(reason + off, sizeof reason - off, "%s %s", i ? ";" : "",
                                    g->reasons[i]);
        for (size_t i = 0; i < g->n_findings && off < sizeof reason; i++)
            off +=
                (size_t)snprintf(reason + off, sizeof reason - off, "; %s at %s:%u",
                                 g->findings[i]->kind, g->findings[i]->file, g->findings[i]->line);
        bp_step_end(r, step, SENTINEL__V1__STEP_STATE__STEP_FAILED, reason);
        bp_str_set(&r->reason, reason);
        s_effect(out, "gate.rejected", bp_step_names[step]);
        out->end = S_STATE(REJECTED);
        return;
    }
    if (gate == 2) {
        s_after_gate2(cfg, r, out);
        return;
    }
    bp_step_end(r, BP_STEP_GATE1, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    r->state = S_STATE(BUILDING);
    if (!bp_str_empty(r->artifact_sha256)) {
        char *note = sn_strdupf("promoted artifact of run %s", r->promoted_from_run);
        bp_step_end(r, BP_STEP_BUILD, SENTINEL__V1__STEP_STATE__STEP_SKIPPED, note);
        free(note);
        bp_step_start(r, BP_STEP_GATE2, bp_step_timeout_ms(cfg, r));
        s_effect(out, "run.step", "gate2");
    } else {
        bp_step_start(r, BP_STEP_BUILD, bp_step_timeout_ms(cfg, r));
        s_effect(out, "run.step", "build");
    }
}

/* BUILDING: the build answered, or gate 2 did. */
static void s_building_result(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev,
                              bp_effect_t *out)
{
    if (ev->work == BP_W_GATE2) {
        s_gate_result(cfg, r, ev, out);
        return;
    }
    if (ev->work != BP_W_BUILD ||
        !bp_step_is(r, BP_STEP_BUILD, SENTINEL__V1__STEP_STATE__STEP_RUNNING))
        return;
    const Sentinel__V1__BuildResult *b =
        ev->reply && ev->reply->body_case == SENTINEL__V1__ENVELOPE__BODY_BUILD_RESULT
            ? ev->reply->build_result
            : NULL;
    if (b && b->ok && !bp_str_empty(b->artifact_sha256)) {
        bp_str_set(&r->artifact_sha256, b->artifact_sha256);
        bp_step_end(r, BP_STEP_BUILD, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
        bp_step_start(r, BP_STEP_GATE2, bp_step_timeout_ms(cfg, r));
        s_effect(out, "build.succeeded", "gate2");
        return;
    }
    char fail[S_REASON_MAX];
    snprintf(fail, sizeof fail, "%s",
             b && !bp_str_empty(b->reason) ? b->reason
             : b                           ? "no artifact"
                                           : (ev->why ? ev->why : "bad reply"));
    if (b && !b->ok && b->is_transient && s_retry_or_budget(r, ev, "build", out, fail, sizeof fail))
        return;
    char reason[S_REASON_MAX + 16];
    snprintf(reason, sizeof reason, "build failed: %s", fail);
    bp_step_end(r, BP_STEP_BUILD, SENTINEL__V1__STEP_STATE__STEP_FAILED, reason);
    bp_str_set(&r->reason, reason);
    s_effect(out, "build.failed", "build");
    out->end = S_STATE(FAILED);
}

/* A per-target answer (stage, verify preview, promote, verify live, rollback). Stale
 * answers (the deploy moved on) change nothing. */
static void s_target_result(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev,
                            bp_effect_t *out)
{
    (void)cfg;
    static const Sentinel__V1__DeployPhase expect[BP_W_COUNT] = {
        [BP_W_STAGE] = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGING,
        [BP_W_VPREVIEW] = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED,
        [BP_W_PROMOTE] = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PROMOTING,
        [BP_W_VLIVE] = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE,
        [BP_W_ROLLBACK] = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK,
    };
    bp_work_t w = ev->work;
    int di = ev->deploy;
    if (w < BP_W_STAGE || w >= BP_W_COUNT || di < 0 || (size_t)di >= r->n_deploys)
        return;
    bp_pb_deploy_t *d = r->deploys[di];
    if (d->phase != expect[w] || (w == BP_W_VLIVE && !bp_str_empty(d->error)))
        return;
    bool ok = false;
    char fail[S_REASON_MAX];
    snprintf(fail, sizeof fail, "%s", ev->why ? ev->why : "bad reply");
    if (w == BP_W_VPREVIEW || w == BP_W_VLIVE) {
        const Sentinel__V1__VerifyResult *v =
            ev->reply && ev->reply->body_case == SENTINEL__V1__ENVELOPE__BODY_VERIFY_RESULT
                ? ev->reply->verify_result
                : NULL;
        ok = v && v->ok;
        if (v && !v->ok)
            snprintf(fail, sizeof fail, "%s",
                     bp_str_empty(v->reason) ? "verification failed" : v->reason);
    } else {
        const Sentinel__V1__DeployResult *res =
            ev->reply && ev->reply->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT
                ? ev->reply->deploy_result
                : NULL;
        ok = res && res->ok;
        if (res && !res->ok)
            snprintf(fail, sizeof fail, "%s",
                     bp_str_empty(res->reason) ? "deployer failed" : res->reason);
        if (res && !res->ok && res->is_transient && w != BP_W_ROLLBACK &&
            s_retry_or_budget(r, ev, d->target, out, fail, sizeof fail))
            return;
        const bp_pb_deploy_t *got = res ? res->deploy : NULL;
        if (ok && got) {
            if (!bp_str_empty(got->preview_url))
                bp_str_set(&d->preview_url, got->preview_url);
            if (!bp_str_empty(got->live_url))
                bp_str_set(&d->live_url, got->live_url);
            if (!bp_str_empty(got->release_id) && w != BP_W_ROLLBACK)
                bp_str_set(&d->release_id, got->release_id);
            if (!bp_str_empty(got->previous_release_id) && w != BP_W_ROLLBACK)
                bp_str_set(&d->previous_release_id, got->previous_release_id);
            if (!bp_str_empty(got->provider_deployment_id))
                bp_str_set(&d->provider_deployment_id, got->provider_deployment_id);
        }
    }
    int64_t now = sn_wall_ms();
    const char *type = NULL, *stage_label = NULL;
    char reason[S_REASON_MAX + 128];
    switch (w) {
    case BP_W_STAGE:
        d->phase = ok ? SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED
                      : SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
        if (ok)
            d->staged_unix_ms = now;
        type = ok ? "deploy.staged" : "deploy.failed";
        snprintf(reason, sizeof reason, "stage failed on %s: %s", d->target, fail);
        break;
    case BP_W_VPREVIEW:
        d->phase = ok ? SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PREVIEW_VERIFIED
                      : SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
        type = ok ? "deploy.verified" : "deploy.failed";
        stage_label = "preview";
        snprintf(reason, sizeof reason, "preview verification failed on %s: %s", d->target, fail);
        break;
    case BP_W_PROMOTE:
        d->phase = ok ? SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE
                      : SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
        if (ok)
            d->promoted_unix_ms = now;
        type = ok ? "deploy.promoted" : "deploy.failed";
        snprintf(reason, sizeof reason, "promote failed on %s: %s", d->target, fail);
        break;
    case BP_W_VLIVE:
        if (ok)
            d->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE_VERIFIED;
        type = ok ? "deploy.verified" : "deploy.failed";
        stage_label = "live";
        snprintf(reason, sizeof reason, "live verification failed on %s: %s", d->target, fail);
        break;
    default: /* BP_W_ROLLBACK */
        d->phase = ok ? SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK
                      : SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
        d->finished_unix_ms = now;
        type = ok ? "deploy.rolled_back" : "deploy.failed";
        stage_label = "rollback";
        snprintf(reason, sizeof reason, "rollback failed on %s: %s", d->target, fail);
        break;
    }
    if (!ok) {
        bp_str_set(&d->error, reason);
        if (w == BP_W_ROLLBACK) {
            bp_pb_step_t *rb = bp_step(r, BP_STEP_ROLLBACK);
            if (bp_str_empty(rb->reason))
                bp_str_set(&rb->reason, reason);
        } else {
            bp_fail_reason(r, reason);
        }
        sn_warn(BP_MODULE, "%s run=%s", reason, r->run_id);
    }
    s_effect(out, type, bp_step_names[bp_works[w].step]);
    out->deploy = di;
    if (stage_label) {
        out->label_key = "stage";
        out->label_value = stage_label;
    }
    out->then = BP_EV_JOIN;
}

static void s_join_stage(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev,
                         bp_effect_t *out)
{
    (void)ev;
    if (bp_any_phase(r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGING, false))
        return;
    if (bp_is_failing(r)) {
        bp_fail_reason(r, "stage failed");
        if (s_any_live_stage(cfg, r)) {
            bp_step_close(r, BP_STEP_STAGE, SENTINEL__V1__STEP_STATE__STEP_FAILED);
            s_begin_rollback(cfg, r, out);
            return;
        }
        out->end = S_STATE(FAILED);
        return;
    }
    bp_step_end(r, BP_STEP_STAGE, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    bp_step_start(r, BP_STEP_VERIFY_PREVIEW, bp_step_timeout_ms(cfg, r));
    r->state = S_STATE(VERIFYING_PREVIEW);
    s_effect(out, "run.step", "verify_preview");
}

static void s_join_preview(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev,
                           bp_effect_t *out)
{
    (void)ev;
    if (bp_any_phase(r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED, false))
        return;
    if (bp_is_failing(r)) {
        bp_fail_reason(r, "preview verification failed");
        if (s_any_live_stage(cfg, r)) {
            bp_step_close(r, BP_STEP_VERIFY_PREVIEW, SENTINEL__V1__STEP_STATE__STEP_FAILED);
            s_begin_rollback(cfg, r, out);
            return;
        }
        out->end = S_STATE(FAILED);
        return;
    }
    bp_step_end(r, BP_STEP_VERIFY_PREVIEW, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    for (size_t i = 0; i < r->n_deploys; i++)
        r->deploys[i]->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PROMOTING;
    bp_step_start(r, BP_STEP_PROMOTE, bp_step_timeout_ms(cfg, r));
    r->state = S_STATE(PROMOTING);
    s_effect(out, "run.step", "promote");
}

static void s_join_promote(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev,
                           bp_effect_t *out)
{
    (void)ev;
    if (bp_any_phase(r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PROMOTING, false))
        return;
    if (bp_is_failing(r)) {
        bp_fail_reason(r, "promote failed");
        bp_step_close(r, BP_STEP_PROMOTE, SENTINEL__V1__STEP_STATE__STEP_FAILED);
        if (bp_any_phase(r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE, false) ||
            s_any_live_stage(cfg, r))
            s_begin_rollback(cfg, r, out);
        else
            out->end =
                strncmp(r->reason, "cancelled", 9) == 0 ? S_STATE(CANCELLED) : S_STATE(FAILED);
        return;
    }
    bp_step_end(r, BP_STEP_PROMOTE, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    bp_step_start(r, BP_STEP_VERIFY_LIVE, bp_step_timeout_ms(cfg, r));
    r->state = S_STATE(VERIFYING_LIVE);
    s_effect(out, "run.step", "verify_live");
}

static void s_join_live(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev,
                        bp_effect_t *out)
{
    (void)ev;
    if (bp_any_phase(r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE, true))
        return;
    if (bp_is_failing(r)) {
        bp_fail_reason(r, "live verification failed");
        bp_step_close(r, BP_STEP_VERIFY_LIVE, SENTINEL__V1__STEP_STATE__STEP_FAILED);
        s_begin_rollback(cfg, r, out);
        return;
    }
    bp_step_end(r, BP_STEP_VERIFY_LIVE, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    out->ops = BP_OPS_LAST_VERIFIED;
    out->end = S_STATE(SUCCEEDED);
}

static void s_join_rollback(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev,
                            bp_effect_t *out)
{
    (void)cfg;
    (void)ev;
    if (bp_any_phase(r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK, false))
        return;
    bp_pb_step_t *rb = bp_step(r, BP_STEP_ROLLBACK);
    bool rb_failed = !bp_str_empty(rb->reason);
    if (rb->state == SENTINEL__V1__STEP_STATE__STEP_RUNNING)
        bp_step_end(r, BP_STEP_ROLLBACK,
                    rb_failed ? SENTINEL__V1__STEP_STATE__STEP_FAILED
                              : SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED,
                    NULL);
    out->end = S_STATE(ROLLED_BACK);
    if (rb_failed || rb->state == SENTINEL__V1__STEP_STATE__STEP_TIMED_OUT)
        out->end = S_STATE(FAILED);
    else if (strcmp(r->trigger, "rollback") == 0)
        out->end = S_STATE(SUCCEEDED);
    else if (strncmp(r->reason, "cancelled", 9) == 0)
        out->end = S_STATE(CANCELLED);
    if (out->end == S_STATE(FAILED)) {
        char *why = sn_strdupf("%s; rollback failed: %s", r->reason,
                               bp_str_empty(rb->reason) ? "timed out" : rb->reason);
        bp_str_set(&r->reason, why);
        free(why);
    }
}

/* The deadline of the running step passed: TIMED_OUT, and the run fails (rolling back
 * whatever may be live). */
static void s_deadline(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev,
                       bp_effect_t *out)
{
    (void)cfg;
    for (int i = 0; i < BP_STEP_COUNT; i++) {
        bp_pb_step_t *s = bp_step(r, i);
        if (s->state != SENTINEL__V1__STEP_STATE__STEP_RUNNING || s->deadline_unix_ms <= 0 ||
            ev->now_ms < s->deadline_unix_ms)
            continue;
        char reason[96];
        if (i == BP_STEP_APPROVAL)
            snprintf(reason, sizeof reason, "approval expired");
        else
            snprintf(reason, sizeof reason, "step %s timed out", bp_step_names[i]);
        bp_step_end(r, i, SENTINEL__V1__STEP_STATE__STEP_TIMED_OUT, reason);
        if (i == BP_STEP_ROLLBACK) {
            bp_str_set(&s->reason, reason);
            for (size_t k = 0; k < r->n_deploys; k++)
                if (r->deploys[k]->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK) {
                    r->deploys[k]->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
                    bp_str_set(&r->deploys[k]->error, reason);
                }
        } else {
            bp_fail_reason(r, reason);
        }
        sn_warn(BP_MODULE, "%s run=%s", reason, r->run_id);
        if (i <= BP_STEP_APPROVAL) {
            out->end = S_STATE(FAILED);
            return;
        }
        /* In-flight siblings are given up: a promote that may have happened is rolled
         * back like a live one. */
        for (size_t k = 0; k < r->n_deploys; k++) {
            bp_pb_deploy_t *d = r->deploys[k];
            if (d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGING ||
                d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED) {
                d->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED;
                bp_str_set(&d->error, reason);
            } else if (d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PROMOTING ||
                       (d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE &&
                        bp_str_empty(d->error))) {
                d->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE;
                bp_str_set(&d->error, reason);
            }
        }
        s_effect(out, "run.step", bp_step_names[i]);
        out->then = BP_EV_JOIN;
        return;
    }
}

static void s_approve(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev,
                      bp_effect_t *out)
{
    (void)cfg;
    const char *who = ev->who ? ev->who : "";
    if (strcmp(who, r->requested_by) == 0) {
        sn_warn(BP_MODULE, "self-approval refused run=%s by=%s", r->run_id, who);
        out->nak = "forbidden";
        return;
    }
    Sentinel__V1__Approval *a = r->approval;
    if (a->n_approvers > 0) {
        bool allowed = false;
        for (size_t i = 0; i < a->n_approvers; i++)
            if (strcmp(a->approvers[i], who) == 0)
                allowed = true;
        if (!allowed) {
            sn_warn(BP_MODULE, "approval refused run=%s by=%s: not an approver", r->run_id, who);
            out->nak = "forbidden";
            return;
        }
    }
    bp_str_set(&a->approved_by, who);
    a->approved_unix_ms = sn_wall_ms();
    bp_step_end(r, BP_STEP_APPROVAL, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    s_effect(out, "run.approved", "approval");
    out->label_key = "by";
    out->label_value = a->approved_by;
    out->ops = BP_OPS_APPROVAL_GRANTED;
    out->then = BP_EV_PROCEED;
}

static void s_proceed(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev,
                      bp_effect_t *out)
{
    (void)ev;
    if (!bp_step_is(r, BP_STEP_APPROVAL, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED))
        return;
    s_begin_stage(cfg, r, out);
}

static void s_cancel(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev, bp_effect_t *out)
{
    (void)cfg;
    if (r->state == S_STATE(ROLLING_BACK)) {
        out->note = "already rolling back";
        return;
    }
    char *why = sn_strdupf("cancelled by %s%s%s", ev->who ? ev->who : "anonymous",
                           bp_str_empty(ev->reason) ? "" : ": ",
                           bp_str_empty(ev->reason) ? "" : ev->reason);
    bp_str_set(&r->reason, why);
    if (r->state == S_STATE(PROMOTING) || r->state == S_STATE(VERIFYING_LIVE)) {
        /* Something may be live: roll it back first (after in-flight promotes answer). */
        for (size_t i = 0; i < r->n_deploys; i++)
            if (r->deploys[i]->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE &&
                bp_str_empty(r->deploys[i]->error))
                bp_str_set(&r->deploys[i]->error, why);
        s_effect(out, "run.step", "cancel");
        out->then = BP_EV_JOIN;
    } else {
        out->end = S_STATE(CANCELLED);
    }
    free(why);
}

/* ---- helpers ----------------------------------------------------------------------------- */

static void s_effect(bp_effect_t *out, const char *type, const char *step)
{
    out->type = type;
    out->step = step;
}

/* Gate 2 passed: plan, then wait for approval or stage. */
static void s_after_gate2(const sn_config_t *cfg, bp_pb_run_t *r, bp_effect_t *out)
{
    bp_step_end(r, BP_STEP_GATE2, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    bp_step_start(r, BP_STEP_PLAN, 0);
    bp_run_plan(cfg, r, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PLANNED);
    if (r->n_deploys == 0) {
        bp_step_end(r, BP_STEP_PLAN, SENTINEL__V1__STEP_STATE__STEP_FAILED, "no targets");
        bp_str_set(&r->reason, "environment has no targets");
        out->end = S_STATE(FAILED);
        return;
    }
    bp_step_end(r, BP_STEP_PLAN, SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED, NULL);
    const sn_environment_config_t *e = bp_env_cfg(cfg, r);
    if (!e || !e->approval.required) {
        bp_step_end(r, BP_STEP_APPROVAL, SENTINEL__V1__STEP_STATE__STEP_SKIPPED, "not required");
        s_begin_stage(cfg, r, out);
        return;
    }
    int64_t timeout_ms = (int64_t)e->approval_timeout_s * 1000;
    if (e->approval.expiry_s > 0 &&
        (timeout_ms <= 0 || (int64_t)e->approval.expiry_s * 1000 < timeout_ms))
        timeout_ms = (int64_t)e->approval.expiry_s * 1000;
    bp_step_start(r, BP_STEP_APPROVAL, timeout_ms);
    Sentinel__V1__Approval *a = r->approval;
    a->required = true;
    a->expires_unix_ms = bp_step(r, BP_STEP_APPROVAL)->deadline_unix_ms;
    bp_str_set(&a->requested_by, r->requested_by);
    size_t n = 0;
    while (e->approval.approvers && e->approval.approvers[n])
        n++;
    if (a->n_approvers == 0 && n > 0) {
        a->approvers = sn_calloc(n, sizeof *a->approvers);
        for (size_t i = 0; i < n; i++)
            a->approvers[i] = sn_strdup(e->approval.approvers[i]);
        a->n_approvers = n;
    }
    r->state = S_STATE(AWAITING_APPROVAL);
    s_effect(out, "run.awaiting_approval", "approval");
    out->ops = BP_OPS_APPROVAL_REQUEST;
}

static void s_begin_stage(const sn_config_t *cfg, bp_pb_run_t *r, bp_effect_t *out)
{
    for (size_t i = 0; i < r->n_deploys; i++)
        r->deploys[i]->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGING;
    bp_step_start(r, BP_STEP_STAGE, bp_step_timeout_ms(cfg, r));
    r->state = S_STATE(STAGING);
    s_effect(out, "run.step", "stage");
}

/* A target without previews (Railway: docs/decisions.md) is live once its stage
 * succeeded, whatever happened to the deploy afterwards (a failed preview check or
 * promote confirmation): a failing run rolls it back like a promoted one. */
static bool s_is_live_stage(const sn_config_t *cfg, const bp_pb_deploy_t *d)
{
    if (d->staged_unix_ms <= 0 ||
        (d->phase != SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED &&
         d->phase != SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PREVIEW_VERIFIED &&
         d->phase != SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED))
        return false;
    const sn_target_config_t *t = sn_config_target(cfg, d->target);
    return t && !sn_config_target_has_preview(t);
}

static bool s_any_live_stage(const sn_config_t *cfg, const bp_pb_run_t *r)
{
    for (size_t i = 0; i < r->n_deploys; i++)
        if (s_is_live_stage(cfg, r->deploys[i]))
            return true;
    return false;
}

static void s_begin_rollback(const sn_config_t *cfg, bp_pb_run_t *r, bp_effect_t *out)
{
    for (size_t i = 0; i < r->n_deploys; i++) {
        bp_pb_deploy_t *d = r->deploys[i];
        if (d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE ||
            d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE_VERIFIED ||
            d->phase == SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PROMOTING || s_is_live_stage(cfg, d))
            d->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK;
    }
    bp_step_start(r, BP_STEP_ROLLBACK, bp_step_timeout_ms(cfg, r));
    r->state = S_STATE(ROLLING_BACK);
    sn_warn(BP_MODULE, "rolling back run=%s reason=%s", r->run_id, r->reason);
    s_effect(out, "run.step", "rollback");
}

/* A transient failure of @ev's work: within the run's budget, one more heal.retry (the
 * effect says so, true returned); past it, false with *fail naming the budget. */
static bool s_retry_or_budget(bp_pb_run_t *r, const bp_event_t *ev, const char *label,
                              bp_effect_t *out, char *fail, size_t fail_len)
{
    if (r->heal_retries >= BP_RUN_RETRY_BUDGET) {
        char last[256];
        snprintf(last, sizeof last, "%s", fail);
        snprintf(fail, fail_len, "retry budget exhausted: run %s used %u of %d (last: %s)",
                 r->run_id, r->heal_retries, BP_RUN_RETRY_BUDGET, last);
        return false;
    }
    r->heal_retries++;
    sn_info(BP_MODULE, "transient failure run=%s work=%s: asking heal.retry (%u of %d) reason=%s",
            r->run_id, bp_works[ev->work].tag, r->heal_retries, BP_RUN_RETRY_BUDGET, fail);
    s_effect(out, "run.step", bp_step_names[bp_works[ev->work].step]);
    out->label_key = "retry";
    out->label_value = label;
    out->is_retry = true;
    return true;
}
