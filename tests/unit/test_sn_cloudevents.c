/* sn_cloudevents: Sentinel envelopes as CloudEvents JSON with CDEvents 0.5.1 data, checked
 * field by field here and against the official JSON schemas by
 * tests/integration/validate_cdevents.py (stdlib Python). */
#include "sn_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "sentinel/sn_cloudevents.h"

#define S_PYTHON "/usr/bin/python3"

typedef struct {
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_source_t src;
    Sentinel__V1__Run run;
    Sentinel__V1__Deploy deploy;
    Sentinel__V1__Alert alert;
    Sentinel__V1__Alert__LabelsEntry label_env, label_project, label_incident;
    Sentinel__V1__Alert__LabelsEntry *labels[3];
    Sentinel__V1__TriggerRequest trigger;
} s_fixture_t;

static void s_init(s_fixture_t *f, const char *type)
{
    memset(f, 0, sizeof *f);
    sn_source_init(&f->src, "buildpilot", "bp-1");
    sn_envelope_stamp(&f->env, &f->src, type, f->id);
    f->env.time_unix_ms = INT64_C(1777885964123); /* 2026-05-04T09:12:44.123Z */
    f->env.correlation_id = "01JRUN";
}

static void s_with_run(s_fixture_t *f, const char *reason)
{
    Sentinel__V1__Run run = SENTINEL__V1__RUN__INIT;
    f->run = run;
    f->run.run_id = "01JRUN";
    f->run.project = "hello";
    f->run.environment = "staging";
    f->run.reason = (char *)reason;
    f->run.artifact_sha256 = "ab12";
    f->env.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN;
    f->env.run = &f->run;
}

static void s_with_deploy(s_fixture_t *f)
{
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    f->deploy = d;
    f->deploy.deploy_id = "01JDEP";
    f->deploy.run_id = "01JRUN";
    f->deploy.project = "hello";
    f->deploy.environment = "production";
    f->deploy.target = "web";
    f->deploy.release_id = "01JREL2";
    f->deploy.previous_release_id = "01JREL1";
    f->env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY;
    f->env.deploy = &f->deploy;
}

static void s_with_alert(s_fixture_t *f)
{
    Sentinel__V1__Alert a = SENTINEL__V1__ALERT__INIT;
    f->alert = a;
    f->alert.name = "deploy-failed";
    f->alert.severity = "critical";
    f->alert.summary = "live verification failed";
    Sentinel__V1__Alert__LabelsEntry e = SENTINEL__V1__ALERT__LABELS_ENTRY__INIT;
    f->label_env = e;
    f->label_env.key = "environment";
    f->label_env.value = "production";
    f->label_project = e;
    f->label_project.key = "project";
    f->label_project.value = "hello";
    f->label_incident = e;
    f->label_incident.key = "incident_id";
    f->label_incident.value = "inc-7";
    f->labels[0] = &f->label_env;
    f->labels[1] = &f->label_project;
    f->labels[2] = &f->label_incident;
    f->alert.n_labels = 3;
    f->alert.labels = f->labels;
    f->env.body_case = SENTINEL__V1__ENVELOPE__BODY_ALERT;
    f->env.alert = &f->alert;
}

static json_t *s_ce(const sn_envelope_t *env)
{
    sn_cloudevents_opts_t opts = {.sequence = "1777885964123-0",
                                  .api_base = "http://127.0.0.1:8700"};
    char *text = sn_cloudevents_dumps(env, &opts);
    assert_non_null(text);
    assert_null(strchr(text, '\n'));
    assert_null(strchr(text, '\r'));
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    assert_non_null(j);
    return j;
}

static const char *s_get(json_t *j, const char *path)
{
    /* "a.b.c" */
    char buf[256];
    sn_strlcpy(buf, path, sizeof buf);
    json_t *cur = j;
    for (char *p = buf; p && cur;) {
        char *dot = strchr(p, '.');
        if (dot)
            *dot = '\0';
        cur = json_object_get(cur, p);
        p = dot ? dot + 1 : NULL;
    }
    return json_string_value(cur);
}

static void test_sn_cloudevents_run_started_is_pipelinerun_started(void **state)
{
    s_fixture_t f;
    s_init(&f, "run.started");
    s_with_run(&f, "");
    json_t *ce = s_ce(&f.env);
    assert_string_equal(s_get(ce, "specversion"), "1.0");
    assert_string_equal(s_get(ce, "id"), f.id);
    assert_string_equal(s_get(ce, "source"), "/sentinel/buildpilot/bp-1");
    assert_string_equal(s_get(ce, "type"), "dev.cdevents.pipelinerun.started.0.3.0");
    assert_string_equal(s_get(ce, "subject"), "01JRUN");
    assert_string_equal(s_get(ce, "time"), "2026-05-04T09:12:44.123Z");
    assert_string_equal(s_get(ce, "datacontenttype"), "application/json");
    assert_string_equal(s_get(ce, "sequence"), "1777885964123-0");
    assert_string_equal(s_get(ce, "sentineltype"), "run.started");
    assert_string_equal(s_get(ce, "data.context.specversion"), "0.5.1");
    assert_string_equal(s_get(ce, "data.context.id"), f.id);
    assert_string_equal(s_get(ce, "data.context.type"), "dev.cdevents.pipelinerun.started.0.3.0");
    assert_string_equal(s_get(ce, "data.context.timestamp"), "2026-05-04T09:12:44.123Z");
    assert_string_equal(s_get(ce, "data.context.chainId"), "01JRUN");
    assert_string_equal(s_get(ce, "data.subject.content.pipelineName"), "hello/staging");
    assert_string_equal(s_get(ce, "data.subject.content.uri"),
                        "http://127.0.0.1:8700/api/v1/runs/01JRUN");
    assert_string_equal(s_get(ce, "data.customData.run.runId"), "01JRUN");
    json_decref(ce);
    sn_envelope_fini_labels(&f.env);
}

static void test_sn_cloudevents_run_terminal_outcomes(void **state)
{
    static const struct {
        const char *type, *outcome;
    } cases[] = {{"run.succeeded", "success"}, {"run.failed", "failure"},
                 {"run.rejected", "failure"},  {"run.rolled_back", "failure"},
                 {"run.cancelled", "cancel"},  {"run.superseded", "cancel"}};
    for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
        s_fixture_t f;
        s_init(&f, cases[i].type);
        s_with_run(&f, "verify_live failed:\nstatus 500");
        json_t *ce = s_ce(&f.env);
        assert_string_equal(s_get(ce, "type"), "dev.cdevents.pipelinerun.finished.0.3.0");
        assert_string_equal(s_get(ce, "data.subject.content.outcome"), cases[i].outcome);
        assert_string_equal(s_get(ce, "data.subject.content.errors"),
                            "verify_live failed:\nstatus 500");
        json_decref(ce);
    }
}

static void test_sn_cloudevents_deploys_are_service_events(void **state)
{
    s_fixture_t f;
    s_init(&f, "deploy.promoted");
    s_with_deploy(&f);
    json_t *ce = s_ce(&f.env);
    assert_string_equal(s_get(ce, "type"), "dev.cdevents.service.deployed.0.3.0");
    assert_string_equal(s_get(ce, "subject"), "hello/production/web");
    assert_string_equal(s_get(ce, "data.subject.content.environment.id"), "hello/production");
    assert_string_equal(s_get(ce, "data.subject.content.artifactId"), "pkg:generic/hello@01JREL2");
    json_decref(ce);

    /* With the artifact hash labelled, the purl carries it. */
    sn_envelope_add_label(&f.env, "artifact_sha256", "0b31b1c0");
    ce = s_ce(&f.env);
    assert_string_equal(s_get(ce, "data.subject.content.artifactId"),
                        "pkg:generic/hello@sha256%3A0b31b1c0");
    json_decref(ce);
    sn_envelope_fini_labels(&f.env);

    s_init(&f, "deploy.rolled_back");
    s_with_deploy(&f);
    ce = s_ce(&f.env);
    assert_string_equal(s_get(ce, "type"), "dev.cdevents.service.rolledback.0.3.0");
    assert_string_equal(s_get(ce, "data.subject.content.artifactId"), "pkg:generic/hello@01JREL1");
    json_decref(ce);
}

static void test_sn_cloudevents_alerts_are_incidents_paired_by_subject(void **state)
{
    s_fixture_t f;
    s_init(&f, "alert.raised");
    s_with_alert(&f);
    json_t *a = s_ce(&f.env);
    assert_string_equal(s_get(a, "type"), "dev.cdevents.incident.detected.0.3.0");
    assert_string_equal(s_get(a, "data.subject.id"), "inc-7");
    assert_string_equal(s_get(a, "data.subject.content.environment.id"), "hello/production");
    assert_string_equal(s_get(a, "data.subject.content.description"), "live verification failed");
    s_init(&f, "alert.resolved");
    s_with_alert(&f);
    json_t *b = s_ce(&f.env);
    assert_string_equal(s_get(b, "type"), "dev.cdevents.incident.resolved.0.3.0");
    assert_string_equal(s_get(b, "data.subject.id"), "inc-7");
    json_decref(a);
    json_decref(b);
}

static void test_sn_cloudevents_push_is_change_merged_and_build_finished(void **state)
{
    s_fixture_t f;
    s_init(&f, "source.pushed");
    Sentinel__V1__TriggerRequest t = SENTINEL__V1__TRIGGER_REQUEST__INIT;
    f.trigger = t;
    f.trigger.project = "hello";
    f.trigger.ref = "refs/heads/main";
    f.trigger.sha = "9f2c1e7";
    f.env.body_case = SENTINEL__V1__ENVELOPE__BODY_TRIGGER;
    f.env.trigger = &f.trigger;
    json_t *ce = s_ce(&f.env);
    assert_string_equal(s_get(ce, "type"), "dev.cdevents.change.merged.0.3.0");
    assert_string_equal(s_get(ce, "subject"), "hello@9f2c1e7");
    assert_string_equal(s_get(ce, "data.subject.content.repository.id"), "hello");
    json_decref(ce);

    s_init(&f, "build.failed");
    s_with_run(&f, "exit 2");
    ce = s_ce(&f.env);
    assert_string_equal(s_get(ce, "type"), "dev.cdevents.build.finished.0.3.0");
    assert_string_equal(s_get(ce, "data.subject.content.artifactId"),
                        "pkg:generic/hello@sha256%3Aab12");
    json_decref(ce);
}

static void test_sn_cloudevents_unmapped_or_incomplete_is_plain(void **state)
{
    s_fixture_t f;
    s_init(&f, "run.step");
    s_with_run(&f, "");
    sn_envelope_add_label(&f.env, "step", "build");
    json_t *ce = s_ce(&f.env);
    assert_string_equal(s_get(ce, "type"), "dev.sentinel.run.step");
    assert_string_equal(s_get(ce, "data.run.runId"), "01JRUN");
    assert_string_equal(s_get(ce, "data.labels.step"), "build");
    assert_null(json_object_get(json_object_get(ce, "data"), "context"));
    assert_null(json_object_get(json_object_get(ce, "data"), "id")); /* attributes stripped */
    json_decref(ce);
    sn_envelope_fini_labels(&f.env);
    assert_null(sn_cloudevents_cdevent_type("run.step"));
    assert_string_equal(sn_cloudevents_cdevent_type("run.queued"),
                        "dev.cdevents.pipelinerun.queued.0.3.0");

    /* A mapped type whose body lacks what the schema requires falls back. */
    s_init(&f, "run.started");
    ce = s_ce(&f.env);
    assert_string_equal(s_get(ce, "type"), "dev.sentinel.run.started");
    json_decref(ce);
    s_init(&f, "deploy.promoted");
    s_with_deploy(&f);
    f.deploy.environment = "";
    ce = s_ce(&f.env);
    assert_string_equal(s_get(ce, "type"), "dev.sentinel.deploy.promoted");
    char type[SN_CLOUDEVENTS_TYPE_MAX];
    sn_cloudevents_type(&f.env, type, sizeof type);
    assert_string_equal(type, "dev.sentinel.deploy.promoted");
    json_decref(ce);

    /* Without options: zero-padded seq and urn URIs. */
    s_init(&f, "run.queued");
    s_with_run(&f, "");
    char *text = sn_cloudevents_dumps(&f.env, NULL);
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    char seq[24];
    snprintf(seq, sizeof seq, "%020llu", (unsigned long long)f.env.seq);
    assert_string_equal(s_get(j, "sequence"), seq);
    assert_string_equal(s_get(j, "data.subject.content.uri"), "urn:sentinel:run:01JRUN");
    json_decref(j);
}

static void test_sn_cloudevents_time_format(void **state)
{
    char out[32];
    sn_cloudevents_time(0, out, sizeof out);
    assert_string_equal(out, "1970-01-01T00:00:00.000Z");
    sn_cloudevents_time(INT64_C(1777885964007), out, sizeof out);
    assert_string_equal(out, "2026-05-04T09:12:44.007Z");
}

/* Runs the validator on @path; returns its exit status. */
static int s_validate(const char *path, bool self_test)
{
    char *cmd = sn_strdupf("%s %s/tests/integration/validate_cdevents.py --schemas "
                           "%s/fixtures/cdevents/schemas %s%s%s %s",
                           S_PYTHON, SN_SOURCE_DIR, SN_SHARED_DIR, self_test ? "--self-test " : "",
                           self_test ? SN_SHARED_DIR : "",
                           self_test ? "/fixtures/cdevents/conformance" : "", path);
    int st = system(cmd);
    free(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void s_write_line(FILE *out, const sn_envelope_t *env)
{
    sn_cloudevents_opts_t opts = {.sequence = "1-0", .api_base = "http://127.0.0.1:8700"};
    char *text = sn_cloudevents_dumps(env, &opts);
    fprintf(out, "%s\n", text);
    free(text);
}

static void test_sn_cloudevents_valid_against_official_schemas(void **state)
{
    char *dir = sn_test_tmpdir("ce");
    char *path = sn_strdupf("%s/events.jsonl", dir);
    FILE *out = fopen(path, "w");
    assert_non_null(out);
    static const char *const run_types[] = {"run.queued",   "run.started",     "run.succeeded",
                                            "run.failed",   "run.cancelled",   "run.superseded",
                                            "run.rejected", "run.rolled_back", "build.succeeded",
                                            "build.failed", "build.warning",   "run.step"};
    size_t cdevents = 0;
    for (size_t i = 0; i < SN_ARRAY_LEN(run_types); i++) {
        s_fixture_t f;
        s_init(&f, run_types[i]);
        s_with_run(&f, i % 2 ? "a reason" : "");
        s_write_line(out, &f.env);
        cdevents += sn_cloudevents_cdevent_type(run_types[i]) != NULL;
    }
    static const char *const deploy_types[] = {"deploy.promoted", "deploy.rolled_back",
                                               "deploy.staged"};
    for (size_t i = 0; i < SN_ARRAY_LEN(deploy_types); i++) {
        s_fixture_t f;
        s_init(&f, deploy_types[i]);
        s_with_deploy(&f);
        s_write_line(out, &f.env);
    }
    static const char *const alert_types[] = {"alert.raised", "alert.resolved"};
    for (size_t i = 0; i < SN_ARRAY_LEN(alert_types); i++) {
        s_fixture_t f;
        s_init(&f, alert_types[i]);
        s_with_alert(&f);
        f.alert.n_labels = i; /* also without environment labels */
        s_write_line(out, &f.env);
    }
    s_fixture_t f;
    s_init(&f, "source.pushed");
    Sentinel__V1__TriggerRequest t = SENTINEL__V1__TRIGGER_REQUEST__INIT;
    t.project = "hello";
    t.ref = "main";
    f.env.body_case = SENTINEL__V1__ENVELOPE__BODY_TRIGGER;
    f.env.trigger = &t;
    s_write_line(out, &f.env);
    assert_int_equal(fclose(out), 0);
    assert_true(cdevents >= 10);
    assert_int_equal(s_validate(path, true), 0);

    /* The same check fails on a CDEvent with a field its schema does not allow. */
    char *bad = sn_strdupf("%s/bad.json", dir);
    out = fopen(bad, "w");
    assert_non_null(out);
    s_init(&f, "run.started");
    s_with_run(&f, "");
    json_t *ce = s_ce(&f.env);
    json_object_set_new(
        json_object_get(json_object_get(json_object_get(ce, "data"), "subject"), "content"), "url",
        json_string("http://old/0.4-style"));
    char *text = json_dumps(ce, JSON_COMPACT);
    fprintf(out, "%s\n", text);
    free(text);
    json_decref(ce);
    assert_int_equal(fclose(out), 0);
    assert_int_equal(s_validate(bad, false), 1);

    sn_test_rmdir(dir);
    free(bad);
    free(path);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_cloudevents_run_started_is_pipelinerun_started),
        cmocka_unit_test(test_sn_cloudevents_run_terminal_outcomes),
        cmocka_unit_test(test_sn_cloudevents_deploys_are_service_events),
        cmocka_unit_test(test_sn_cloudevents_alerts_are_incidents_paired_by_subject),
        cmocka_unit_test(test_sn_cloudevents_push_is_change_merged_and_build_finished),
        cmocka_unit_test(test_sn_cloudevents_unmapped_or_incomplete_is_plain),
        cmocka_unit_test(test_sn_cloudevents_time_format),
        cmocka_unit_test(test_sn_cloudevents_valid_against_official_schemas),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
