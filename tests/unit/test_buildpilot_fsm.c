/* Unit tests for buildpilot's run state machine (agents/buildpilot/buildpilot_fsm.c): the
 * (state, event) -> action table driven as a pure function, without Redis or a broker.
 * Each test feeds events to a run record and checks the record and the effect the
 * driver would carry out. */
#include "sn_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buildpilot_fsm.h"

static const char *s_yaml = "projects:\n"
                            "  - name: app\n"
                            "    repo: /nonexistent/app\n"
                            "    environments:\n"
                            "      - name: staging\n"
                            "        branch: staging\n"
                            "        step_timeout_s: 15\n"
                            "        targets: [t1, t2]\n"
                            "      - name: production\n"
                            "        branch: main\n"
                            "        approval_timeout_s: 3600\n"
                            "        approval:\n"
                            "          required: true\n"
                            "          expiry_s: 60\n"
                            "          approvers: [bob, carol]\n"
                            "        targets: [t1]\n"
                            "      - name: mixed\n"
                            "        branch: mixed\n"
                            "        targets: [t1, rw]\n"
                            "targets:\n"
                            "  - name: t1\n"
                            "    type: local_static\n"
                            "    listen: 127.0.0.1:9201\n"
                            "    preview_listen: 127.0.0.1:9101\n"
                            "  - name: t2\n"
                            "    type: local_static\n"
                            "    listen: 127.0.0.1:9202\n"
                            "    preview_listen: 127.0.0.1:9102\n"
                            "  - name: rw\n"
                            "    type: railway\n"
                            "    token: t\n"
                            "    service_id: s\n"
                            "    environment_id: e\n";

static sn_config_t s_cfg;

static int s_setup(void **state)
{
    (void)state;
    char err[512];
    sn_rc_t rc = sn_config_load_string("fsm.yml", s_yaml, strlen(s_yaml), &s_cfg, err, sizeof err);
    if (rc != SN_OK)
        print_error("config: %s\n", err);
    return rc == SN_OK ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    sn_config_fini(&s_cfg);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */

/* Handles @ev once; returns the effect. */
static bp_effect_t s_handle(bp_pb_run_t *r, bp_event_t ev)
{
    bp_effect_t out;
    bp_fsm_handle(&s_cfg, r, &ev, &out);
    return out;
}

/* Handles @ev and everything it leads to, as bp_drive does without the store: follows
 * `then` events and ends the run when an effect says so. Returns the types committed,
 * comma-separated (static buffer). */
static const char *s_drive(bp_pb_run_t *r, bp_event_t ev)
{
    static char types[512];
    types[0] = '\0';
    for (;;) {
        bp_effect_t out = s_handle(r, ev);
        if (!out.is_handled || out.nak || out.note)
            return types;
        if (out.type)
            snprintf(types + strlen(types), sizeof types - strlen(types), "%s%s",
                     types[0] ? "," : "", out.type);
        if (out.end) {
            bp_fsm_finish(r, out.end, NULL);
            char name[32];
            bp_state_name(out.end, name, sizeof name);
            snprintf(types + strlen(types), sizeof types - strlen(types), "%srun.%s",
                     types[0] ? "," : "", name);
            return types;
        }
        if (out.then == BP_EV_NONE)
            return types;
        ev = (bp_event_t){.kind = out.then, .deploy = -1};
    }
}

static bp_event_t s_result(bp_work_t w, int deploy, const sn_envelope_t *reply)
{
    return (bp_event_t){.kind = BP_EV_RESULT, .work = w, .deploy = deploy, .reply = reply};
}

static sn_envelope_t s_gate_reply(Sentinel__V1__GateResult *g, bool ok)
{
    sentinel__v1__gate_result__init(g);
    g->ok = ok;
    sn_envelope_t env;
    sentinel__v1__envelope__init(&env);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_GATE_RESULT;
    env.gate_result = g;
    return env;
}

static sn_envelope_t s_build_reply(Sentinel__V1__BuildResult *b, bool ok, bool is_transient)
{
    sentinel__v1__build_result__init(b);
    b->ok = ok;
    b->is_transient = is_transient;
    b->artifact_sha256 = ok ? "art1" : "";
    b->reason = ok ? "" : "registry unreachable";
    sn_envelope_t env;
    sentinel__v1__envelope__init(&env);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_BUILD_RESULT;
    env.build_result = b;
    return env;
}

static sn_envelope_t s_deploy_reply(Sentinel__V1__DeployResult *d, bool ok, bool is_transient,
                                    const char *reason)
{
    sentinel__v1__deploy_result__init(d);
    d->ok = ok;
    d->is_transient = is_transient;
    d->reason = (char *)(reason ? reason : "");
    sn_envelope_t env;
    sentinel__v1__envelope__init(&env);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT;
    env.deploy_result = d;
    return env;
}

static sn_envelope_t s_verify_reply(Sentinel__V1__VerifyResult *v, bool ok)
{
    sentinel__v1__verify_result__init(v);
    v->ok = ok;
    v->reason = ok ? "" : "status 500";
    sn_envelope_t env;
    sentinel__v1__envelope__init(&env);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_VERIFY_RESULT;
    env.verify_result = v;
    return env;
}

static Sentinel__V1__StepState s_step_state(bp_pb_run_t *r, int step)
{
    return bp_step(r, step)->state;
}

/* A run of @env driven up to STAGING (gate 1, build, gate 2 all ok). */
static bp_pb_run_t *s_run_to_staging_env(const char *env)
{
    bp_pb_run_t *r = bp_run_new("app", env, "refs/heads/staging", "sha1", "push", "alice");
    (void)s_drive(r, (bp_event_t){.kind = BP_EV_START, .deploy = -1});
    Sentinel__V1__GateResult g;
    Sentinel__V1__BuildResult b;
    sn_envelope_t gate = s_gate_reply(&g, true), build = s_build_reply(&b, true, false);
    (void)s_drive(r, s_result(BP_W_GATE1, -1, &gate));
    (void)s_drive(r, s_result(BP_W_BUILD, -1, &build));
    (void)s_drive(r, s_result(BP_W_GATE2, -1, &gate));
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_STAGING);
    return r;
}

static bp_pb_run_t *s_run_to_staging(void)
{
    return s_run_to_staging_env("staging");
}

static void s_all_targets(bp_pb_run_t *r, bp_work_t w, const sn_envelope_t *reply)
{
    for (size_t i = 0; i < r->n_deploys; i++)
        (void)s_drive(r, s_result(w, (int)i, reply));
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_buildpilot_fsm_start(void **state)
{
    (void)state;
    bp_pb_run_t *r = bp_run_new("app", "staging", "refs/heads/staging", "sha1", "", "alice");
    assert_string_equal(r->trigger, "api");
    assert_true(bp_fsm_is_queued(r));
    bp_effect_t out = s_handle(r, (bp_event_t){.kind = BP_EV_START, .deploy = -1});
    assert_true(out.is_handled);
    assert_string_equal(out.type, "run.started");
    assert_int_equal(out.ops, BP_OPS_TAKE_ENV);
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_GATING);
    assert_int_equal(s_step_state(r, BP_STEP_TRIGGER), SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED);
    assert_int_equal(s_step_state(r, BP_STEP_GATE1), SENTINEL__V1__STEP_STATE__STEP_RUNNING);
    assert_true(bp_step(r, BP_STEP_GATE1)->deadline_unix_ms > sn_wall_ms() + 14000);
    /* A second start is not a transition of GATING. */
    out = s_handle(r, (bp_event_t){.kind = BP_EV_START, .deploy = -1});
    assert_false(out.is_handled);
    sentinel__v1__run__free_unpacked(r, NULL);

    /* A rollback run goes straight to rolling back every target. */
    r = bp_run_new("app", "staging", "", "", "rollback", "alice");
    out = s_handle(r, (bp_event_t){.kind = BP_EV_START, .deploy = -1});
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_ROLLING_BACK);
    assert_int_equal(r->n_deploys, 2);
    for (size_t i = 0; i < r->n_deploys; i++)
        assert_int_equal(r->deploys[i]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK);
    assert_int_equal(s_step_state(r, BP_STEP_BUILD), SENTINEL__V1__STEP_STATE__STEP_SKIPPED);
    Sentinel__V1__DeployResult d;
    sn_envelope_t ok = s_deploy_reply(&d, true, false, NULL);
    (void)s_drive(r, s_result(BP_W_ROLLBACK, 0, &ok));
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_ROLLING_BACK); /* t2 still out */
    assert_string_equal(s_drive(r, s_result(BP_W_ROLLBACK, 1, &ok)),
                        "deploy.rolled_back,run.succeeded");
    assert_int_equal(s_step_state(r, BP_STEP_ROLLBACK), SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED);
    sentinel__v1__run__free_unpacked(r, NULL);
}

static void test_buildpilot_fsm_good_run(void **state)
{
    (void)state;
    bp_pb_run_t *r = s_run_to_staging();
    assert_string_equal(r->artifact_sha256, "art1");
    assert_int_equal(s_step_state(r, BP_STEP_APPROVAL), SENTINEL__V1__STEP_STATE__STEP_SKIPPED);
    Sentinel__V1__DeployResult d;
    Sentinel__V1__VerifyResult v;
    sn_envelope_t ok = s_deploy_reply(&d, true, false, NULL), vok = s_verify_reply(&v, true);
    /* Per-target work joins only once every sibling answered. */
    assert_string_equal(s_drive(r, s_result(BP_W_STAGE, 0, &ok)), "deploy.staged");
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_STAGING);
    assert_string_equal(s_drive(r, s_result(BP_W_STAGE, 1, &ok)), "deploy.staged,run.step");
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_VERIFYING_PREVIEW);
    /* A stale answer (stage again) changes nothing. */
    bp_effect_t out = s_handle(r, s_result(BP_W_STAGE, 0, &ok));
    assert_true(out.is_handled);
    assert_null(out.type);
    assert_int_equal(out.end, 0);
    s_all_targets(r, BP_W_VPREVIEW, &vok);
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_PROMOTING);
    s_all_targets(r, BP_W_PROMOTE, &ok);
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_VERIFYING_LIVE);
    (void)s_drive(r, s_result(BP_W_VLIVE, 0, &vok));
    out = s_handle(r, s_result(BP_W_VLIVE, 1, &vok));
    assert_string_equal(out.type, "deploy.verified");
    assert_string_equal(out.label_value, "live");
    assert_int_equal(out.then, BP_EV_JOIN);
    out = s_handle(r, (bp_event_t){.kind = BP_EV_JOIN, .deploy = -1});
    assert_int_equal(out.end, SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED);
    assert_int_equal(out.ops, BP_OPS_LAST_VERIFIED);
    bp_fsm_finish(r, out.end, NULL);
    assert_int_equal(s_step_state(r, BP_STEP_NOTIFY), SENTINEL__V1__STEP_STATE__STEP_SUCCEEDED);
    assert_int_equal(s_step_state(r, BP_STEP_ROLLBACK), SENTINEL__V1__STEP_STATE__STEP_SKIPPED);
    /* A terminal run handles nothing. */
    out = s_handle(r, (bp_event_t){.kind = BP_EV_CANCEL, .deploy = -1, .who = "bob"});
    assert_false(out.is_handled);
    sentinel__v1__run__free_unpacked(r, NULL);
}

static void test_buildpilot_fsm_gate_rejects(void **state)
{
    (void)state;
    bp_pb_run_t *r = bp_run_new("app", "staging", "", "sha1", "push", "alice");
    (void)s_drive(r, (bp_event_t){.kind = BP_EV_START, .deploy = -1});
    Sentinel__V1__GateResult g;
    sn_envelope_t no = s_gate_reply(&g, false);
    char *reasons[] = {"unsigned commit"};
    g.reasons = reasons;
    g.n_reasons = 1;
    /* An answer to other work than gate 1 is not for this state. */
    bp_effect_t out = s_handle(r, s_result(BP_W_BUILD, -1, &no));
    assert_null(out.type);
    assert_string_equal(s_drive(r, s_result(BP_W_GATE1, -1, &no)), "gate.rejected,run.rejected");
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_REJECTED);
    assert_string_equal(r->reason, "gate 1 rejected: unsigned commit");
    assert_int_equal(s_step_state(r, BP_STEP_BUILD), SENTINEL__V1__STEP_STATE__STEP_SKIPPED);
    sentinel__v1__run__free_unpacked(r, NULL);

    /* No readable answer: failed with why. */
    r = bp_run_new("app", "staging", "", "sha1", "push", "alice");
    (void)s_drive(r, (bp_event_t){.kind = BP_EV_START, .deploy = -1});
    bp_event_t ev = s_result(BP_W_GATE1, -1, NULL);
    ev.why = "bad reply";
    assert_string_equal(s_drive(r, ev), "run.failed");
    assert_string_equal(r->reason, "gate 1: bad reply");
    sentinel__v1__run__free_unpacked(r, NULL);
}

static void test_buildpilot_fsm_approval(void **state)
{
    (void)state;
    bp_pb_run_t *r = bp_run_new("app", "production", "refs/heads/main", "sha1", "push", "alice");
    bp_str_set(&r->artifact_sha256, "art-verified");
    bp_str_set(&r->promoted_from_run, "01STAGING");
    (void)s_drive(r, (bp_event_t){.kind = BP_EV_START, .deploy = -1});
    Sentinel__V1__GateResult g;
    sn_envelope_t gate = s_gate_reply(&g, true);
    /* A promoted artifact skips the build. */
    assert_string_equal(s_drive(r, s_result(BP_W_GATE1, -1, &gate)), "run.step");
    assert_int_equal(s_step_state(r, BP_STEP_BUILD), SENTINEL__V1__STEP_STATE__STEP_SKIPPED);
    bp_effect_t out = s_handle(r, s_result(BP_W_GATE2, -1, &gate));
    assert_string_equal(out.type, "run.awaiting_approval");
    assert_int_equal(out.ops, BP_OPS_APPROVAL_REQUEST);
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_AWAITING_APPROVAL);
    /* The deadline is the shorter of approval_timeout_s (3600) and expiry_s (60). */
    int64_t deadline = bp_step(r, BP_STEP_APPROVAL)->deadline_unix_ms;
    assert_true(deadline > sn_wall_ms() + 55000 && deadline <= sn_wall_ms() + 60000);
    assert_int_equal(r->approval->expires_unix_ms, deadline);
    assert_int_equal(r->approval->n_approvers, 2);
    assert_string_equal(r->approval->requested_by, "alice");

    /* Self-approval and strangers: NAK forbidden, nothing changes. */
    out = s_handle(r, (bp_event_t){.kind = BP_EV_APPROVE, .deploy = -1, .who = "alice"});
    assert_string_equal(out.nak, "forbidden");
    out = s_handle(r, (bp_event_t){.kind = BP_EV_APPROVE, .deploy = -1, .who = "mallory"});
    assert_string_equal(out.nak, "forbidden");
    assert_int_equal(s_step_state(r, BP_STEP_APPROVAL), SENTINEL__V1__STEP_STATE__STEP_RUNNING);
    assert_string_equal(r->approval->approved_by, "");
    /* Not yet expired: the deadline event does nothing. */
    out = s_handle(r, (bp_event_t){.kind = BP_EV_DEADLINE, .deploy = -1, .now_ms = sn_wall_ms()});
    assert_true(out.is_handled);
    assert_null(out.type);
    assert_int_equal(out.end, 0);

    out = s_handle(r, (bp_event_t){.kind = BP_EV_APPROVE, .deploy = -1, .who = "bob"});
    assert_string_equal(out.type, "run.approved");
    assert_string_equal(out.label_key, "by");
    assert_string_equal(out.label_value, "bob");
    assert_int_equal(out.ops, BP_OPS_APPROVAL_GRANTED);
    assert_int_equal(out.then, BP_EV_PROCEED);
    /* The stage commit was lost (leader died): a JOIN on the resumed run proceeds. */
    out = s_handle(r, (bp_event_t){.kind = BP_EV_JOIN, .deploy = -1});
    assert_string_equal(out.type, "run.step");
    assert_string_equal(out.step, "stage");
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_STAGING);
    /* Approving a staging run is no transition. */
    out = s_handle(r, (bp_event_t){.kind = BP_EV_APPROVE, .deploy = -1, .who = "carol"});
    assert_false(out.is_handled);
    sentinel__v1__run__free_unpacked(r, NULL);
}

static void test_buildpilot_fsm_approval_expires(void **state)
{
    (void)state;
    bp_pb_run_t *r = bp_run_new("app", "production", "refs/heads/main", "sha1", "push", "alice");
    bp_str_set(&r->artifact_sha256, "art-verified");
    (void)s_drive(r, (bp_event_t){.kind = BP_EV_START, .deploy = -1});
    Sentinel__V1__GateResult g;
    sn_envelope_t gate = s_gate_reply(&g, true);
    (void)s_drive(r, s_result(BP_W_GATE1, -1, &gate));
    (void)s_drive(r, s_result(BP_W_GATE2, -1, &gate));
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_AWAITING_APPROVAL);
    int64_t later = bp_step(r, BP_STEP_APPROVAL)->deadline_unix_ms + 1;
    bp_effect_t out =
        s_handle(r, (bp_event_t){.kind = BP_EV_DEADLINE, .deploy = -1, .now_ms = later});
    assert_int_equal(out.end, SENTINEL__V1__RUN_STATE__RUN_FAILED);
    assert_null(out.type);
    assert_string_equal(r->reason, "approval expired");
    assert_int_equal(s_step_state(r, BP_STEP_APPROVAL), SENTINEL__V1__STEP_STATE__STEP_TIMED_OUT);
    bp_fsm_finish(r, out.end, NULL);
    assert_int_equal(s_step_state(r, BP_STEP_STAGE), SENTINEL__V1__STEP_STATE__STEP_SKIPPED);
    assert_int_equal(r->deploys[0]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_CANCELLED);
    sentinel__v1__run__free_unpacked(r, NULL);
}

static void test_buildpilot_fsm_live_fails_rolls_back(void **state)
{
    (void)state;
    bp_pb_run_t *r = s_run_to_staging();
    Sentinel__V1__DeployResult d;
    Sentinel__V1__VerifyResult v, vno;
    sn_envelope_t ok = s_deploy_reply(&d, true, false, NULL), vok = s_verify_reply(&v, true),
                  bad = s_verify_reply(&vno, false);
    s_all_targets(r, BP_W_STAGE, &ok);
    s_all_targets(r, BP_W_VPREVIEW, &vok);
    s_all_targets(r, BP_W_PROMOTE, &ok);
    (void)s_drive(r, s_result(BP_W_VLIVE, 0, &bad));
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_VERIFYING_LIVE); /* t2 in flight */
    assert_string_equal(s_drive(r, s_result(BP_W_VLIVE, 1, &vok)), "deploy.verified,run.step");
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_ROLLING_BACK);
    assert_string_equal(r->reason, "live verification failed on t1: status 500");
    for (size_t i = 0; i < r->n_deploys; i++)
        assert_int_equal(r->deploys[i]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK);
    s_all_targets(r, BP_W_ROLLBACK, &ok);
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_ROLLED_BACK);
    sentinel__v1__run__free_unpacked(r, NULL);
}

static void test_buildpilot_fsm_promote_fails_one_target(void **state)
{
    (void)state;
    bp_pb_run_t *r = s_run_to_staging();
    Sentinel__V1__DeployResult d, dno;
    Sentinel__V1__VerifyResult v;
    sn_envelope_t ok = s_deploy_reply(&d, true, false, NULL), vok = s_verify_reply(&v, true),
                  no = s_deploy_reply(&dno, false, false, "disk full");
    s_all_targets(r, BP_W_STAGE, &ok);
    s_all_targets(r, BP_W_VPREVIEW, &vok);
    (void)s_drive(r, s_result(BP_W_PROMOTE, 1, &no));
    (void)s_drive(r, s_result(BP_W_PROMOTE, 0, &ok));
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_ROLLING_BACK);
    assert_int_equal(r->deploys[0]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK);
    assert_int_equal(r->deploys[1]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED);
    assert_string_equal(r->reason, "promote failed on t2: disk full");
    /* The rollback fails too: the run fails and says both. */
    assert_string_equal(s_drive(r, s_result(BP_W_ROLLBACK, 0, &no)), "deploy.failed,run.failed");
    assert_string_equal(r->reason, "promote failed on t2: disk full; rollback failed: rollback "
                                   "failed on t1: disk full");
    sentinel__v1__run__free_unpacked(r, NULL);
}

/* Railway has no preview: its stage is the live deploy. A run failing before promote
 * rolls back a Railway target whose stage succeeded, and only that one. */
static void test_buildpilot_fsm_live_stage_rolled_back(void **state)
{
    (void)state;
    Sentinel__V1__DeployResult d, dno;
    Sentinel__V1__VerifyResult v, vno;
    sn_envelope_t ok = s_deploy_reply(&d, true, false, NULL),
                  no = s_deploy_reply(&dno, false, false, "disk full"),
                  vok = s_verify_reply(&v, true), bad = s_verify_reply(&vno, false);
    /* t1's stage fails, rw's went live: rw is rolled back, t1 (a preview) is not. */
    bp_pb_run_t *r = s_run_to_staging_env("mixed");
    assert_string_equal(r->deploys[1]->target, "rw");
    (void)s_drive(r, s_result(BP_W_STAGE, 1, &ok));
    assert_string_equal(s_drive(r, s_result(BP_W_STAGE, 0, &no)), "deploy.failed,run.step");
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_ROLLING_BACK);
    assert_int_equal(s_step_state(r, BP_STEP_STAGE), SENTINEL__V1__STEP_STATE__STEP_FAILED);
    assert_int_equal(r->deploys[0]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED);
    assert_int_equal(r->deploys[1]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK);
    assert_string_equal(s_drive(r, s_result(BP_W_ROLLBACK, 1, &ok)),
                        "deploy.rolled_back,run.rolled_back");
    assert_string_equal(r->reason, "stage failed on t1: disk full");
    sentinel__v1__run__free_unpacked(r, NULL);
    /* rw's own stage fails: nothing went live anywhere, the run just fails. */
    r = s_run_to_staging_env("mixed");
    (void)s_drive(r, s_result(BP_W_STAGE, 0, &ok));
    assert_string_equal(s_drive(r, s_result(BP_W_STAGE, 1, &no)), "deploy.failed,run.failed");
    assert_int_equal(r->deploys[0]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED);
    sentinel__v1__run__free_unpacked(r, NULL);
    /* rw's check fails on its (live) release: rolled back; a local target's preview
     * failing the same way only fails the run. */
    r = s_run_to_staging_env("mixed");
    s_all_targets(r, BP_W_STAGE, &ok);
    (void)s_drive(r, s_result(BP_W_VPREVIEW, 0, &vok));
    assert_string_equal(s_drive(r, s_result(BP_W_VPREVIEW, 1, &bad)), "deploy.failed,run.step");
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_ROLLING_BACK);
    assert_int_equal(r->deploys[0]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_PREVIEW_VERIFIED);
    assert_int_equal(r->deploys[1]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK);
    (void)s_drive(r, s_result(BP_W_ROLLBACK, 1, &ok));
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_ROLLED_BACK);
    sentinel__v1__run__free_unpacked(r, NULL);
    /* rw's promote (a confirmation) fails after t1 went live: both are rolled back. */
    r = s_run_to_staging_env("mixed");
    s_all_targets(r, BP_W_STAGE, &ok);
    s_all_targets(r, BP_W_VPREVIEW, &vok);
    (void)s_drive(r, s_result(BP_W_PROMOTE, 0, &ok));
    (void)s_drive(r, s_result(BP_W_PROMOTE, 1, &no));
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_ROLLING_BACK);
    for (size_t i = 0; i < r->n_deploys; i++)
        assert_int_equal(r->deploys[i]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLING_BACK);
    sentinel__v1__run__free_unpacked(r, NULL);
}

static void test_buildpilot_fsm_transient_retry(void **state)
{
    (void)state;
    bp_pb_run_t *r = s_run_to_staging();
    Sentinel__V1__DeployResult d, dt;
    sn_envelope_t ok = s_deploy_reply(&d, true, false, NULL),
                  transient = s_deploy_reply(&dt, false, true, "connection reset");
    /* A transient failure asks heal.retry: no phase change, the retry counted. */
    bp_effect_t out = s_handle(r, s_result(BP_W_STAGE, 0, &transient));
    assert_true(out.is_retry);
    assert_string_equal(out.type, "run.step");
    assert_string_equal(out.step, "stage");
    assert_string_equal(out.label_key, "retry");
    assert_string_equal(out.label_value, "t1");
    assert_int_equal(out.then, BP_EV_NONE);
    assert_int_equal(r->deploys[0]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGING);
    assert_int_equal(r->heal_retries, 1);
    assert_true(bp_str_empty(r->reason));
    /* heal.retry answers ok: staged as usual. */
    (void)s_drive(r, s_result(BP_W_STAGE, 0, &ok));
    assert_int_equal(r->deploys[0]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED);
    /* The run's budget: BP_RUN_RETRY_BUDGET retries in all, then the step fails. */
    for (int i = 1; i < BP_RUN_RETRY_BUDGET; i++) {
        out = s_handle(r, s_result(BP_W_STAGE, 1, &transient));
        assert_true(out.is_retry);
    }
    assert_int_equal(r->heal_retries, BP_RUN_RETRY_BUDGET);
    assert_string_equal(s_drive(r, s_result(BP_W_STAGE, 1, &transient)),
                        "deploy.failed,run.failed");
    assert_non_null(strstr(r->reason, "stage failed on t2: retry budget exhausted: run "));
    assert_non_null(strstr(r->reason, "(last: connection reset)"));
    /* A non-transient failure never retries; autoheal's own "budget exhausted" answer is one. */
    bp_pb_run_t *r2 = s_run_to_staging();
    Sentinel__V1__DeployResult dx;
    sn_envelope_t exhausted =
        s_deploy_reply(&dx, false, false, "retry budget exhausted: deploy x used 3 of 3");
    out = s_handle(r2, s_result(BP_W_STAGE, 0, &exhausted));
    assert_false(out.is_retry);
    assert_string_equal(out.type, "deploy.failed");
    assert_string_equal(r2->reason,
                        "stage failed on t1: retry budget exhausted: deploy x used 3 of 3");
    sentinel__v1__run__free_unpacked(r2, NULL);
    sentinel__v1__run__free_unpacked(r, NULL);

    /* Builds too. */
    r = bp_run_new("app", "staging", "", "sha1", "push", "alice");
    (void)s_drive(r, (bp_event_t){.kind = BP_EV_START, .deploy = -1});
    Sentinel__V1__GateResult g;
    Sentinel__V1__BuildResult b;
    sn_envelope_t gate = s_gate_reply(&g, true), bt = s_build_reply(&b, false, true);
    (void)s_drive(r, s_result(BP_W_GATE1, -1, &gate));
    out = s_handle(r, s_result(BP_W_BUILD, -1, &bt));
    assert_true(out.is_retry);
    assert_string_equal(out.label_value, "build");
    assert_int_equal(s_step_state(r, BP_STEP_BUILD), SENTINEL__V1__STEP_STATE__STEP_RUNNING);
    r->heal_retries = BP_RUN_RETRY_BUDGET;
    assert_string_equal(s_drive(r, s_result(BP_W_BUILD, -1, &bt)), "build.failed,run.failed");
    assert_non_null(strstr(r->reason, "build failed: retry budget exhausted"));
    sentinel__v1__run__free_unpacked(r, NULL);
}

static void test_buildpilot_fsm_cancel(void **state)
{
    (void)state;
    /* Queued: cancelled at once, with who and why. */
    bp_pb_run_t *r = bp_run_new("app", "staging", "", "sha1", "push", "alice");
    bp_event_t cancel = {.kind = BP_EV_CANCEL, .deploy = -1, .who = "bob", .reason = "oops"};
    bp_effect_t out = s_handle(r, cancel);
    assert_int_equal(out.end, SENTINEL__V1__RUN_STATE__RUN_CANCELLED);
    assert_string_equal(r->reason, "cancelled by bob: oops");
    bp_fsm_finish(r, out.end, NULL);
    assert_int_equal(s_step_state(r, BP_STEP_TRIGGER), SENTINEL__V1__STEP_STATE__STEP_CANCELLED);
    sentinel__v1__run__free_unpacked(r, NULL);

    /* Promoting: what may be live is rolled back first, then the run is cancelled. */
    r = s_run_to_staging();
    Sentinel__V1__DeployResult d;
    Sentinel__V1__VerifyResult v;
    sn_envelope_t ok = s_deploy_reply(&d, true, false, NULL), vok = s_verify_reply(&v, true);
    s_all_targets(r, BP_W_STAGE, &ok);
    s_all_targets(r, BP_W_VPREVIEW, &vok);
    (void)s_drive(r, s_result(BP_W_PROMOTE, 0, &ok));
    cancel.reason = NULL;
    assert_string_equal(s_drive(r, cancel), "run.step");
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_PROMOTING); /* t2 in flight */
    assert_string_equal(s_drive(r, s_result(BP_W_PROMOTE, 1, &ok)), "deploy.promoted,run.step");
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_ROLLING_BACK);
    out = s_handle(r, cancel);
    assert_string_equal(out.note, "already rolling back");
    s_all_targets(r, BP_W_ROLLBACK, &ok);
    assert_int_equal(r->state, SENTINEL__V1__RUN_STATE__RUN_CANCELLED);
    assert_string_equal(r->reason, "cancelled by bob");
    sentinel__v1__run__free_unpacked(r, NULL);
}

static void test_buildpilot_fsm_step_deadline(void **state)
{
    (void)state;
    bp_pb_run_t *r = s_run_to_staging();
    Sentinel__V1__DeployResult d;
    sn_envelope_t ok = s_deploy_reply(&d, true, false, NULL);
    (void)s_drive(r, s_result(BP_W_STAGE, 0, &ok));
    int64_t later = bp_step(r, BP_STEP_STAGE)->deadline_unix_ms + 1;
    assert_string_equal(
        s_drive(r, (bp_event_t){.kind = BP_EV_DEADLINE, .deploy = -1, .now_ms = later}),
        "run.step,run.failed");
    assert_string_equal(r->reason, "step stage timed out");
    assert_int_equal(s_step_state(r, BP_STEP_STAGE), SENTINEL__V1__STEP_STATE__STEP_TIMED_OUT);
    assert_int_equal(r->deploys[0]->phase, SENTINEL__V1__DEPLOY_PHASE__DEPLOY_FAILED);
    assert_string_equal(bp_fsm_event_name(BP_EV_DEADLINE), "deadline");
    assert_string_equal(bp_fsm_event_name(BP_EV_COUNT), "?");
    sentinel__v1__run__free_unpacked(r, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buildpilot_fsm_start),
        cmocka_unit_test(test_buildpilot_fsm_good_run),
        cmocka_unit_test(test_buildpilot_fsm_gate_rejects),
        cmocka_unit_test(test_buildpilot_fsm_approval),
        cmocka_unit_test(test_buildpilot_fsm_approval_expires),
        cmocka_unit_test(test_buildpilot_fsm_live_fails_rolls_back),
        cmocka_unit_test(test_buildpilot_fsm_promote_fails_one_target),
        cmocka_unit_test(test_buildpilot_fsm_live_stage_rolled_back),
        cmocka_unit_test(test_buildpilot_fsm_transient_retry),
        cmocka_unit_test(test_buildpilot_fsm_cancel),
        cmocka_unit_test(test_buildpilot_fsm_step_deadline),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
