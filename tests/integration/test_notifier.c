/* Integration tests for the notifier role: a real mesh (redis-server, broker) with two
 * sentinel-agent notifier replicas, the fake webhook receiver tests/fakes/webhook_sink.py
 * (checks the signature and the CloudEvents body, answers scripted statuses), events
 * injected into the journal from this process with sn_journal_commit. Exactly once in
 * steady state, retries on 5xx and 429 (Retry-After), none on 400, severity routing, a
 * malformed entry, and a replica killed with SIGKILL while events flow. */
#include "sn_mesh.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "sentinel/sn_http.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define S_SECRET "test-webhook-secret-0123456789"
#define S_PYTHON "/usr/bin/python3"

typedef struct {
    sn_mesh_t mesh;
    char *out_dir;
    char *file_path;
    char *sink_log;
    int sink_port;
    pid_t sink;
    redisContext *raw;
    sn_redis_t *r;
    sn_journal_t *j;
    sn_source_t src;
    sn_http_t *http;
    pid_t n1, n2;
} s_fx_t;

static s_fx_t *s_fx;

/* ---- the sink ----------------------------------------------------------------------- */

static char *s_sink_get(s_fx_t *fx, const char *path)
{
    char *url = sn_strdupf("http://127.0.0.1:%d%s", fx->sink_port, path);
    sn_http_request_t req = {.url = url, .timeout_ms = 2000};
    sn_http_response_t resp;
    char *out = NULL;
    if (sn_http_perform(fx->http, &req, &resp) == SN_OK && resp.status == 200)
        out = sn_strdup(resp.body);
    sn_http_response_fini(&resp);
    free(url);
    return out;
}

static void s_sink_control(s_fx_t *fx, const char *json)
{
    char *url = sn_strdupf("http://127.0.0.1:%d/_control", fx->sink_port);
    sn_http_request_t req = {
        .method = "POST", .url = url, .body = json, .body_len = strlen(json), .timeout_ms = 2000};
    sn_http_response_t resp;
    assert_int_equal(sn_http_perform(fx->http, &req, &resp), SN_OK);
    assert_int_equal(resp.status, 200);
    sn_http_response_fini(&resp);
    free(url);
}

static bool s_sink_up(void *arg)
{
    char *s = s_sink_get(arg, "/_health");
    free(s);
    return s != NULL;
}

/* Deliveries of event @id: total attempts, accepted (2xx), and whether all were signed
 * and valid CloudEvents. */
typedef struct {
    int attempts;
    int accepted;
    bool all_valid;
    double first_at, accepted_at;
    char type[96];
    char severity[32];
} s_tally_t;

static s_tally_t s_tally(s_fx_t *fx, const char *id)
{
    s_tally_t t = {.all_valid = true};
    char *text = s_sink_get(fx, "/_deliveries");
    assert_non_null(text);
    json_t *arr = json_loads(text, 0, NULL);
    free(text);
    assert_true(json_is_array(arr));
    size_t i;
    json_t *d;
    json_array_foreach(arr, i, d)
    {
        const char *did = json_string_value(json_object_get(d, "id"));
        if (!did || strcmp(did, id) != 0)
            continue;
        double at = json_real_value(json_object_get(d, "at"));
        if (t.attempts++ == 0)
            t.first_at = at;
        int status = (int)json_integer_value(json_object_get(d, "status"));
        if (status >= 200 && status < 300) {
            t.accepted++;
            t.accepted_at = at;
        }
        if (!json_is_true(json_object_get(d, "signature_ok")) ||
            !json_is_true(json_object_get(d, "cloudevent_ok"))) {
            t.all_valid = false;
            char *dump = json_dumps(d, 0);
            fprintf(stderr, "invalid delivery: %s\n", dump);
            free(dump);
        }
        const char *type = json_string_value(json_object_get(d, "type"));
        const char *sev = json_string_value(json_object_get(d, "severity"));
        sn_strlcpy(t.type, type ? type : "", sizeof t.type);
        sn_strlcpy(t.severity, sev ? sev : "", sizeof t.severity);
    }
    json_decref(arr);
    return t;
}

/* ---- the mesh --------------------------------------------------------------------------- */

static pid_t s_spawn_notifier(s_fx_t *fx, const char *instance)
{
    size_t i = sn_mesh_agent_bin(&fx->mesh, "sentinel-agent", "notifier", instance);
    return fx->mesh.agents[i].pid;
}

static long long s_group_int(s_fx_t *fx, const char *cmd_fmt)
{
    char *key = sn_strdupf("%sevents", fx->mesh.ns);
    redisReply *r = redisCommand(fx->raw, cmd_fmt, key);
    free(key);
    assert_non_null(r);
    long long v = -1;
    if (r->type == REDIS_REPLY_ARRAY && strstr(cmd_fmt, "CONSUMERS"))
        v = (long long)r->elements;
    else if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
             r->element[0]->type == REDIS_REPLY_INTEGER)
        v = r->element[0]->integer;
    freeReplyObject(r);
    return v;
}

static bool s_two_consumers(void *arg)
{
    return s_group_int(arg, "XINFO CONSUMERS %s notifier") >= 2;
}

static bool s_nothing_pending(void *arg)
{
    return s_group_int(arg, "XPENDING %s notifier") == 0;
}

static int s_group_setup(void **state)
{
    s_fx_t *fx = sn_calloc(1, sizeof *fx);
    s_fx = fx;
    fx->out_dir = sn_test_tmpdir("notify-out");
    fx->file_path = sn_strdupf("%s/notifications.jsonl", fx->out_dir);
    fx->sink_log = sn_strdupf("%s/sink.log", fx->out_dir);
    fx->sink_port = sn_test_free_port();
    char *extra = sn_strdupf("channels:\n"
                             "  - name: ops-log\n    type: log\n"
                             "  - name: ops-file\n    type: file\n    path: %s\n"
                             "  - name: hook\n    type: webhook\n"
                             "    url: http://127.0.0.1:%d/hook\n"
                             "    secret: \"%s\"\n"
                             "    min_severity: warning\n"
                             "    timeout_ms: 2000\n    max_attempts: 4\n",
                             fx->file_path, fx->sink_port, S_SECRET);
    bool ok = sn_mesh_start(&fx->mesh, "notify", extra);
    free(extra);
    assert_true(ok);

    char *script = sn_strdupf("%s/tests/fakes/webhook_sink.py", SN_SOURCE_DIR);
    char port[16];
    snprintf(port, sizeof port, "%d", fx->sink_port);
    char *argv[] = {S_PYTHON, script, "--port", port, "--secret", S_SECRET, NULL};
    fx->sink = sn_test_spawn(argv, fx->sink_log);
    free(script);
    assert_true(fx->sink > 0);
    fx->http = sn_http_new();
    assert_true(sn_test_wait_for(s_sink_up, fx, 10000));

    fx->raw = redisConnectUnix(fx->mesh.redis.unix_path);
    assert_true(fx->raw && !fx->raw->err);
    sn_redis_opts_t ro = {
        .unix_path = fx->mesh.redis.unix_path, .namespace_ = fx->mesh.ns, .timeout_ms = 2000};
    fx->r = sn_redis_new(&ro);
    sn_source_init(&fx->src, "buildpilot", "test");
    sn_journal_opts_t jo = {.redis = fx->r, .source = &fx->src};
    fx->j = sn_journal_new(&jo);
    assert_non_null(fx->j);

    fx->n1 = s_spawn_notifier(fx, "n1");
    fx->n2 = s_spawn_notifier(fx, "n2");
    assert_true(sn_test_wait_for(s_two_consumers, fx, 15000));
    *state = fx;
    return 0;
}

static int s_group_teardown(void **state)
{
    s_fx_t *fx = *state;
    if (!fx)
        return 0;
    sn_journal_destroy(&fx->j);
    sn_redis_destroy(&fx->r);
    redisFree(fx->raw);
    int bad = sn_mesh_stop(&fx->mesh);
    if (fx->sink > 0) {
        int st = sn_test_stop(fx->sink, SIGTERM, 5000);
        if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            bad++;
    }
    sn_http_destroy(&fx->http);
    sn_test_rmdir(fx->out_dir);
    free(fx->out_dir);
    free(fx->file_path);
    free(fx->sink_log);
    free(fx);
    return bad == 0 ? 0 : -1;
}

/* ---- events ------------------------------------------------------------------------------ */

/* Journals a run event of @type; the event id goes into @id. */
static void s_commit_run(s_fx_t *fx, const char *type, const char *reason, char id[SN_ID_LEN + 1])
{
    sn_envelope_t env;
    sn_envelope_stamp(&env, &fx->src, type, id);
    env.subject = "hello/staging";
    Sentinel__V1__Run run = SENTINEL__V1__RUN__INIT;
    run.run_id = id;
    run.project = "hello";
    run.environment = "staging";
    run.sha = "0123456789abcdef0123456789abcdef01234567";
    run.state = SENTINEL__V1__RUN_STATE__RUN_FAILED;
    run.reason = (char *)reason;
    env.correlation_id = id;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN;
    env.run = &run;
    sn_journal_result_t res;
    assert_int_equal(sn_journal_commit(fx->j, NULL, NULL, 0, &env, &res), SN_OK);
    assert_string_equal(res.event_id, id);
}

static void s_commit_alert(s_fx_t *fx, const char *severity, char id[SN_ID_LEN + 1])
{
    sn_envelope_t env;
    sn_envelope_stamp(&env, &fx->src, "alert.raised", id);
    Sentinel__V1__Alert alert = SENTINEL__V1__ALERT__INIT;
    alert.name = "disk";
    alert.severity = (char *)severity;
    alert.summary = "disk 91% full";
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_ALERT;
    env.alert = &alert;
    assert_int_equal(sn_journal_commit(fx->j, NULL, NULL, 0, &env, NULL), SN_OK);
}

typedef struct {
    s_fx_t *fx;
    const char *id;
    int accepted;
} s_wait_t;

static bool s_accepted(void *arg)
{
    s_wait_t *w = arg;
    return s_tally(w->fx, w->id).accepted >= w->accepted;
}

static bool s_attempted(void *arg)
{
    s_wait_t *w = arg;
    return s_tally(w->fx, w->id).attempts >= w->accepted;
}

static char *s_log_value(s_fx_t *fx, const char *id, const char *channel)
{
    char *key = sn_strdupf("notify:log:%s:%s", id, channel);
    char *v = sn_mesh_get(&fx->mesh, key);
    free(key);
    return v;
}

static bool s_log_done(void *arg)
{
    s_wait_t *w = arg;
    char *v = s_log_value(w->fx, w->id, "ops-file");
    bool done = v && strncmp(v, "sent", 4) == 0;
    free(v);
    return done;
}

static int s_logs_count(s_fx_t *fx, const char *needle)
{
    int n = 0;
    for (size_t i = 0; i < fx->mesh.agent_count; i++)
        n += sn_test_count_in_file(fx->mesh.agents[i].log, needle);
    return n;
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_notifier_run_failed_exactly_once(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true}");
    char id[SN_ID_LEN + 1];
    s_commit_run(fx, "run.failed", "preview verification failed", id);
    s_wait_t w = {.fx = fx, .id = id, .accepted = 1};
    assert_true(sn_test_wait_for(s_accepted, &w, 15000));
    assert_true(sn_test_wait_for(s_log_done, &w, 10000));
    /* Acknowledged in the group: nothing can deliver it again. */
    assert_true(sn_test_wait_for(s_nothing_pending, fx, 10000));
    s_tally_t t = s_tally(fx, id);
    assert_int_equal(t.accepted, 1);
    assert_int_equal(t.attempts, 1);
    assert_true(t.all_valid);
    assert_string_equal(t.type, "dev.sentinel.run.failed");
    assert_string_equal(t.severity, "critical");
    char *v = s_log_value(fx, id, "hook");
    assert_non_null(v);
    assert_true(strncmp(v, "sent ", 5) == 0);
    free(v);
    /* The file channel: one JSON line with the event, the data being the Run. */
    assert_int_equal(sn_test_count_in_file(fx->file_path, id), 2); /* id and data.runId */
    char *text = sn_test_read_file(fx->file_path);
    assert_non_null(text);
    json_error_t err;
    json_t *ce =
        json_loads(strstr(text, "{\"specversion\"") ? text : "", JSON_DISABLE_EOF_CHECK, &err);
    assert_non_null(ce);
    assert_string_equal(json_string_value(json_object_get(ce, "id")), id);
    json_t *data = json_object_get(ce, "data");
    assert_string_equal(json_string_value(json_object_get(data, "project")), "hello");
    assert_string_equal(json_string_value(json_object_get(data, "reason")),
                        "preview verification failed");
    assert_string_equal(json_string_value(json_object_get(ce, "subject")), "hello/staging");
    json_decref(ce);
    free(text);
    /* The log channel: one line by exactly one replica. */
    char *needle = sn_strdupf("critical run.failed subject=hello/staging id=%s", id);
    assert_int_equal(s_logs_count(fx, needle), 1);
    free(needle);
}

static void test_notifier_severity_routing_and_bad_entries(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true}");
    char ok_id[SN_ID_LEN + 1], step_id[SN_ID_LEN + 1], alert_id[SN_ID_LEN + 1];
    s_commit_run(fx, "run.succeeded", "", ok_id); /* info: file and log, not the webhook */
    s_commit_run(fx, "run.step", "", step_id);    /* not notified at all */
    /* A journal entry whose envelope does not parse: acknowledged and skipped. */
    char *key = sn_strdupf("%sevents", fx->mesh.ns);
    freeReplyObject(redisCommand(fx->raw, "XADD %s * type run.failed env garbage", key));
    free(key);
    s_commit_alert(fx, "warning", alert_id); /* the webhook gets warnings */
    s_wait_t w = {.fx = fx, .id = alert_id, .accepted = 1};
    assert_true(sn_test_wait_for(s_accepted, &w, 15000));
    s_wait_t w2 = {.fx = fx, .id = ok_id};
    assert_true(sn_test_wait_for(s_log_done, &w2, 10000));
    assert_true(sn_test_wait_for(s_nothing_pending, fx, 10000));
    s_tally_t t = s_tally(fx, alert_id);
    assert_int_equal(t.accepted, 1);
    assert_string_equal(t.severity, "warning");
    assert_int_equal(s_tally(fx, ok_id).attempts, 0);
    assert_int_equal(s_tally(fx, step_id).attempts, 0);
    assert_true(sn_test_count_in_file(fx->file_path, ok_id) >= 1);
    assert_int_equal(sn_test_count_in_file(fx->file_path, step_id), 0);
    char *v = s_log_value(fx, step_id, "ops-file");
    assert_true(!v || !v[0]); /* no notification log entry at all */
    free(v);
    /* Both replicas still serve. */
    assert_true(sn_test_alive(fx->n1) && sn_test_alive(fx->n2));
}

static void test_notifier_retries_5xx_then_delivers_once(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true, \"script\": [\"500\", \"503\"]}");
    char id[SN_ID_LEN + 1];
    s_commit_run(fx, "run.rolled_back", "live verification failed: 502", id);
    s_wait_t w = {.fx = fx, .id = id, .accepted = 1};
    assert_true(sn_test_wait_for(s_accepted, &w, 20000));
    assert_true(sn_test_wait_for(s_nothing_pending, fx, 10000));
    s_tally_t t = s_tally(fx, id);
    assert_int_equal(t.attempts, 3);
    assert_int_equal(t.accepted, 1);
    assert_true(t.all_valid);
}

static void test_notifier_honours_retry_after(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true, \"script\": [\"429:1\"]}");
    char id[SN_ID_LEN + 1];
    s_commit_run(fx, "run.failed", "build failed", id);
    s_wait_t w = {.fx = fx, .id = id, .accepted = 1};
    assert_true(sn_test_wait_for(s_accepted, &w, 20000));
    s_tally_t t = s_tally(fx, id);
    assert_int_equal(t.attempts, 2);
    assert_true(t.accepted_at - t.first_at >= 0.9);
}

static bool s_hook_failed(void *arg)
{
    s_wait_t *w = arg;
    char *v = s_log_value(w->fx, w->id, "hook");
    bool failed = v && strncmp(v, "failed", 6) == 0;
    free(v);
    return failed;
}

static void test_notifier_no_retry_on_400(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true, \"script\": [\"400\", \"400\", \"400\"]}");
    char id[SN_ID_LEN + 1];
    s_commit_run(fx, "gate.rejected", "private key in dist/id_rsa:1", id);
    s_wait_t w = {.fx = fx, .id = id, .accepted = 1};
    assert_true(sn_test_wait_for(s_attempted, &w, 15000));
    assert_true(sn_test_wait_for(s_hook_failed, &w, 10000));
    assert_true(sn_test_wait_for(s_nothing_pending, fx, 10000));
    s_tally_t t = s_tally(fx, id);
    assert_int_equal(t.attempts, 1);
    assert_int_equal(t.accepted, 0);
    /* The other channels are not held back by the webhook's refusal. */
    assert_true(s_log_done(&w));
}

#define S_FLOW 40

typedef struct {
    s_fx_t *fx;
    char (*ids)[SN_ID_LEN + 1];
} s_flow_t;

static bool s_all_accepted(void *arg)
{
    s_flow_t *f = arg;
    for (int i = 0; i < S_FLOW; i++)
        if (s_tally(f->fx, f->ids[i]).accepted == 0)
            return false;
    return true;
}

static void test_notifier_replica_killed_while_events_flow(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true}");
    static char ids[S_FLOW][SN_ID_LEN + 1];
    /* A burst, with one replica SIGKILLed a third of the way through: both replicas are
     * busy with the first events when it dies. */
    for (int i = 0; i < S_FLOW; i++) {
        s_commit_run(fx, "run.failed", "flow", ids[i]);
        if (i == S_FLOW / 3) {
            assert_int_equal(kill(fx->n1, SIGKILL), 0);
            int st = 0;
            assert_int_equal(waitpid(fx->n1, &st, 0), fx->n1);
        }
    }
    /* The survivor reclaims what the dead one held (claim idle 2 x agent TTL = 6 s). */
    s_flow_t f = {.fx = fx, .ids = ids};
    bool all = sn_test_wait_for(s_all_accepted, &f, 40000);
    int duplicates = 0;
    for (int i = 0; i < S_FLOW; i++) {
        s_tally_t t = s_tally(fx, ids[i]);
        if (t.accepted == 0)
            fprintf(stderr, "event %d (%s) never delivered\n", i, ids[i]);
        assert_true(t.all_valid);
        duplicates += t.accepted > 1 ? t.accepted - 1 : 0;
        assert_true(sn_test_count_in_file(fx->file_path, ids[i]) >= 2);
    }
    assert_true(all);
    fprintf(stderr, "replica killed: %d events, all delivered, %d duplicates\n", S_FLOW,
            duplicates);
    assert_true(duplicates <= 2); /* at most what was in flight at the kill */
    assert_true(sn_test_wait_for(s_nothing_pending, fx, 20000));
}

int main(void)
{
    sn_log_init("test", "notifier");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_notifier_run_failed_exactly_once),
        cmocka_unit_test(test_notifier_severity_routing_and_bad_entries),
        cmocka_unit_test(test_notifier_retries_5xx_then_delivers_once),
        cmocka_unit_test(test_notifier_honours_retry_after),
        cmocka_unit_test(test_notifier_no_retry_on_400),
        cmocka_unit_test(test_notifier_replica_killed_while_events_flow),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
