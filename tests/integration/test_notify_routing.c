/* Integration tests for the notifier's routing (docs/notify-routing.md): a real mesh
 * (redis-server, broker) with two sentinel-agent notifier replicas and a gateway, the fake
 * webhook receiver tests/fakes/webhook_sink.py behind two webhook channels (/hook and
 * /hook2) and a file channel, events injected into the journal from this process.
 *
 * Route tree under test (group_wait 1 s, group_interval 2 s, repeat_interval 4 s):
 *   root -> file
 *     project=alpha                 -> hook   (continue)
 *     project=alpha, type=deploy.*  -> hook2
 *     project=beta                  -> hook   (group_by project, environment)
 *     project=delta                 -> hook2  (group_wait 0)
 *     project=crash                 -> hook   (group_wait 4 s: time to kill the replicas)
 * and the default inhibit rule. Each test uses its own environment name, so its groups
 * are its own. */
#include "sn_mesh.h"
#include "test_ctl_util.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "sentinel/sn_crypto.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define S_SECRET "routing-webhook-secret-0123456789"
#define S_PYTHON "/usr/bin/python3"
#define S_OPERATOR "operator-token-routing-0123456789"
#define S_VIEWER "viewer-token-routing-0123456789"
#define S_GROUP_WAIT_S 1.0
#define S_GROUP_INTERVAL_S 2.0
#define S_REPEAT_S 4.0
#define S_ALERT_NAME_FAILED "notify.channel_failed"

typedef struct {
    sn_mesh_t mesh;
    char *out_dir;
    char *file_path;
    char *sink_log;
    int sink_port;
    int gw_port;
    pid_t sink;
    redisContext *raw;
    sn_redis_t *r;
    sn_journal_t *j;
    sn_source_t src;
    sn_http_t *http;
    pid_t n1, n2;
} s_fx_t;

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

/* The deliveries carrying event @id (in data.events of a grouped notification) on @path
 * (NULL: any). */
typedef struct {
    int attempts;
    int accepted;
    int repeats; /* accepted with data.repeat */
    int events;  /* events in the last accepted delivery */
    bool all_valid;
    double first_at, accepted_at, last_accepted_at;
    char id[64];     /* the notification id of the last accepted delivery */
    char any_id[64]; /* that of the last delivery, accepted or not */
} s_tally_t;

static bool s_has_event(json_t *d, const char *id)
{
    json_t *ids = json_object_get(d, "event_ids");
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v)
    {
        if (json_string_value(v) && strcmp(json_string_value(v), id) == 0)
            return true;
    }
    return false;
}

static s_tally_t s_tally(s_fx_t *fx, const char *id, const char *path)
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
        const char *p = json_string_value(json_object_get(d, "path"));
        if (path && (!p || strcmp(p, path) != 0))
            continue;
        if (!s_has_event(d, id))
            continue;
        double at = json_real_value(json_object_get(d, "at"));
        if (t.attempts++ == 0)
            t.first_at = at;
        int status = (int)json_integer_value(json_object_get(d, "status"));
        const char *any = json_string_value(json_object_get(d, "id"));
        sn_strlcpy(t.any_id, any ? any : "", sizeof t.any_id);
        if (status >= 200 && status < 300) {
            if (t.accepted++ == 0)
                t.accepted_at = at;
            t.last_accepted_at = at;
            t.repeats += json_is_true(json_object_get(d, "repeat"));
            t.events = (int)json_array_size(json_object_get(d, "event_ids"));
            const char *nid = json_string_value(json_object_get(d, "id"));
            sn_strlcpy(t.id, nid ? nid : "", sizeof t.id);
        }
        if (!json_is_true(json_object_get(d, "signature_ok")) ||
            !json_is_true(json_object_get(d, "cloudevent_ok"))) {
            t.all_valid = false;
            char *dump = json_dumps(d, 0);
            fprintf(stderr, "invalid delivery: %s\n", dump);
            free(dump);
        }
    }
    json_decref(arr);
    return t;
}

typedef struct {
    s_fx_t *fx;
    const char *id;
    const char *path;
    int n;
} s_wait_t;

static bool s_accepted(void *arg)
{
    s_wait_t *w = arg;
    return s_tally(w->fx, w->id, w->path).accepted >= w->n;
}

static bool s_attempted(void *arg)
{
    s_wait_t *w = arg;
    return s_tally(w->fx, w->id, w->path).attempts >= w->n;
}

static bool s_file_has(void *arg)
{
    s_wait_t *w = arg;
    return sn_test_count_in_file(w->fx->file_path, w->id) >= w->n;
}

static double s_now_s(void)
{
    return (double)sn_wall_ms() / 1000.0;
}

/* ---- the mesh --------------------------------------------------------------------------- */

static char *s_hex_sha(const char *token)
{
    uint8_t d[SN_SHA256_LEN];
    assert_int_equal(sn_sha256(token, strlen(token), d), SN_OK);
    char *hex = sn_malloc(SN_SHA256_HEX_LEN + 1);
    sn_hex_encode(d, sizeof d, hex);
    return hex;
}

static pid_t s_spawn(s_fx_t *fx, const char *role, const char *instance)
{
    size_t i = sn_mesh_agent_bin(&fx->mesh, "sentinel-agent", role, instance);
    return fx->mesh.agents[i].pid;
}

static long long s_pending(s_fx_t *fx)
{
    char *key = sn_strdupf("%sevents", fx->mesh.ns);
    redisReply *r = redisCommand(fx->raw, "XPENDING %s notifier", key);
    free(key);
    assert_non_null(r);
    long long v = -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER)
        v = r->element[0]->integer;
    freeReplyObject(r);
    return v;
}

static bool s_two_consumers(void *arg)
{
    s_fx_t *fx = arg;
    char *key = sn_strdupf("%sevents", fx->mesh.ns);
    redisReply *r = redisCommand(fx->raw, "XINFO CONSUMERS %s notifier", key);
    free(key);
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements >= 2;
    if (r)
        freeReplyObject(r);
    return ok;
}

static bool s_gateway_up(void *arg)
{
    s_fx_t *fx = arg;
    char *url = sn_strdupf("http://127.0.0.1:%d/healthz", fx->gw_port);
    sn_http_request_t req = {.url = url, .timeout_ms = 1000};
    sn_http_response_t resp;
    bool ok = sn_http_perform(fx->http, &req, &resp) == SN_OK && resp.status == 200;
    sn_http_response_fini(&resp);
    free(url);
    return ok;
}

static int s_group_setup(void **state)
{
    s_fx_t *fx = sn_calloc(1, sizeof *fx);
    fx->out_dir = sn_test_tmpdir("routing-out");
    fx->file_path = sn_strdupf("%s/notifications.jsonl", fx->out_dir);
    fx->sink_log = sn_strdupf("%s/sink.log", fx->out_dir);
    fx->sink_port = sn_test_free_port();
    fx->gw_port = sn_test_free_port();
    char *oh = s_hex_sha(S_OPERATOR), *vh = s_hex_sha(S_VIEWER);
    char *extra = sn_strdupf(
        "channels:\n"
        "  - name: file\n    type: file\n    path: %s\n"
        "  - name: hook\n    type: webhook\n    url: http://127.0.0.1:%d/hook\n"
        "    secret: \"%s\"\n    timeout_ms: 2000\n    max_attempts: 4\n"
        "  - name: hook2\n    type: webhook\n    url: http://127.0.0.1:%d/hook2\n"
        "    secret: \"%s\"\n    timeout_ms: 2000\n    max_attempts: 4\n"
        "notify:\n"
        "  route:\n"
        "    channels: [file]\n"
        "    group_wait_ms: 1000\n"
        "    group_interval_ms: 2000\n"
        "    repeat_interval_ms: 4000\n"
        "    routes:\n"
        "      - match: [\"project=alpha\"]\n        channels: [hook]\n        continue: true\n"
        "      - match: [\"project=alpha\", \"type=deploy.*\"]\n        channels: [hook2]\n"
        "      - match: [\"project=beta\"]\n        channels: [hook]\n"
        "        group_by: [project, environment]\n"
        "      - match: [\"project=delta\"]\n        channels: [hook2]\n"
        "        group_wait_ms: 0\n"
        "      - match: [\"project=crash\"]\n        channels: [hook]\n"
        "        group_wait_ms: 4000\n"
        "gateway:\n"
        "  listen: 127.0.0.1:%d\n"
        "  tokens:\n"
        "    - {name: viewer1, sha256: %s, role: viewer}\n"
        "    - {name: ops, sha256: %s, role: operator}\n",
        fx->file_path, fx->sink_port, S_SECRET, fx->sink_port, S_SECRET, fx->gw_port, vh, oh);
    free(oh);
    free(vh);
    bool ok = sn_mesh_start(&fx->mesh, "routing", extra);
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

    fx->n1 = s_spawn(fx, "notifier", "n1");
    fx->n2 = s_spawn(fx, "notifier", "n2");
    s_spawn(fx, "gateway", "gw");
    assert_true(sn_test_wait_for(s_two_consumers, fx, 15000));
    assert_true(sn_mesh_wait_service(&fx->mesh, "notify.silence", 2, 15000));
    assert_true(sn_test_wait_for(s_gateway_up, fx, 15000));
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

/* Journals an event of @type about @project/@env: a Deploy body for deploy.*, an Alert
 * (name "disk", @severity) for alert.*, a Run otherwise. The event id goes into @id. */
static void s_commit(s_fx_t *fx, const char *type, const char *project, const char *env_name,
                     const char *severity, char id[SN_ID_LEN + 1])
{
    sn_envelope_t env;
    sn_envelope_stamp(&env, &fx->src, type, id);
    char subject[128];
    snprintf(subject, sizeof subject, "%s/%s/web", project, env_name);
    env.subject = subject;
    Sentinel__V1__Run run = SENTINEL__V1__RUN__INIT;
    Sentinel__V1__Deploy dep = SENTINEL__V1__DEPLOY__INIT;
    char deploy_id[160];
    Sentinel__V1__Alert alert = SENTINEL__V1__ALERT__INIT;
    Sentinel__V1__Alert__LabelsEntry l1 = SENTINEL__V1__ALERT__LABELS_ENTRY__INIT;
    Sentinel__V1__Alert__LabelsEntry l2 = SENTINEL__V1__ALERT__LABELS_ENTRY__INIT;
    Sentinel__V1__Alert__LabelsEntry *labels[] = {&l1, &l2};
    if (strncmp(type, "deploy.", 7) == 0) {
        snprintf(deploy_id, sizeof deploy_id, "dep-%s-%s", project, env_name);
        dep.deploy_id = deploy_id;
        dep.project = (char *)project;
        dep.environment = (char *)env_name;
        dep.target = "web";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY;
        env.deploy = &dep;
    } else if (strncmp(type, "alert.", 6) == 0) {
        alert.name = "disk";
        alert.severity = (char *)severity;
        alert.summary = "disk 91% full";
        l1.key = "project";
        l1.value = (char *)project;
        l2.key = "environment";
        l2.value = (char *)env_name;
        alert.labels = labels;
        alert.n_labels = 2;
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_ALERT;
        env.alert = &alert;
    } else {
        run.run_id = id;
        run.project = (char *)project;
        run.environment = (char *)env_name;
        run.sha = "0123456789abcdef0123456789abcdef01234567";
        run.reason = "routing test";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN;
        env.run = &run;
    }
    assert_int_equal(sn_journal_commit(fx->j, NULL, NULL, 0, &env, NULL), SN_OK);
}

static char *s_rget(s_fx_t *fx, const char *key)
{
    return sn_mesh_get(&fx->mesh, key);
}

typedef struct {
    s_fx_t *fx;
    const char *id;
    const char *prefix;
} s_muted_t;

static bool s_is_muted(void *arg)
{
    s_muted_t *m = arg;
    char *key = sn_strdupf("notify:muted:%s", m->id);
    char *v = s_rget(m->fx, key);
    free(key);
    bool ok = v && strncmp(v, m->prefix, strlen(m->prefix)) == 0;
    free(v);
    return ok;
}

/* ---- grouping ------------------------------------------------------------------------------ */

static void test_routing_burst_is_one_message_per_group(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true}");
    char ids[5][SN_ID_LEN + 1];
    double t0 = s_now_s();
    for (int i = 0; i < 5; i++)
        s_commit(fx, "run.failed", "alpha", "burst", NULL, ids[i]);
    s_wait_t w = {.fx = fx, .id = ids[0], .path = "/hook", .n = 1};
    assert_true(sn_test_wait_for(s_accepted, &w, 15000));
    s_tally_t t0t = s_tally(fx, ids[0], "/hook");
    /* group_wait gathered the burst: one message with all five, after group_wait. */
    assert_int_equal(t0t.events, 5);
    assert_true(t0t.accepted_at - t0 >= S_GROUP_WAIT_S - 0.1);
    assert_true(t0t.all_valid);
    for (int i = 0; i < 5; i++) {
        s_tally_t t = s_tally(fx, ids[i], NULL);
        assert_int_equal(t.accepted, 1); /* once, by one of the two replicas, nowhere else */
        assert_int_equal(t.attempts, 1);
        assert_string_equal(t.id, t0t.id);
    }
    /* The notification log says so. */
    char *key = sn_strdupf("notify:log:%s:hook", t0t.id);
    char *v = s_rget(fx, key);
    free(key);
    assert_non_null(v);
    assert_true(strncmp(v, "sent ", 5) == 0);
    free(v);
    assert_int_equal(s_pending(fx), 0);
}

static void test_routing_group_interval(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true}");
    char a[SN_ID_LEN + 1], b[SN_ID_LEN + 1], c[SN_ID_LEN + 1];
    s_commit(fx, "run.failed", "alpha", "interval", NULL, a);
    s_wait_t w = {.fx = fx, .id = a, .path = "/hook", .n = 1};
    assert_true(sn_test_wait_for(s_accepted, &w, 15000));
    s_tally_t ta = s_tally(fx, a, "/hook");
    /* New events in a group already notified wait for group_interval, together. */
    s_commit(fx, "run.failed", "alpha", "interval", NULL, b);
    s_commit(fx, "run.failed", "alpha", "interval", NULL, c);
    s_wait_t wb = {.fx = fx, .id = b, .path = "/hook", .n = 1};
    assert_true(sn_test_wait_for(s_accepted, &wb, 15000));
    s_tally_t tb = s_tally(fx, b, "/hook");
    s_tally_t tc = s_tally(fx, c, "/hook");
    assert_int_equal(tb.events, 2);
    assert_string_equal(tb.id, tc.id);
    assert_string_not_equal(tb.id, ta.id);
    assert_true(tb.accepted_at - ta.accepted_at >= S_GROUP_INTERVAL_S - 0.1);
    assert_int_equal(s_tally(fx, a, NULL).accepted, 1); /* a is not sent again */
}

static void test_routing_match_and_continue(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true}");
    char dep[SN_ID_LEN + 1], other[SN_ID_LEN + 1];
    s_commit(fx, "deploy.failed", "alpha", "cont", NULL, dep);
    s_commit(fx, "run.failed", "gamma", "cont", NULL, other);
    /* alpha deploy: route 1 (continue) -> hook and route 2 -> hook2, each once. */
    s_wait_t w1 = {.fx = fx, .id = dep, .path = "/hook", .n = 1};
    s_wait_t w2 = {.fx = fx, .id = dep, .path = "/hook2", .n = 1};
    assert_true(sn_test_wait_for(s_accepted, &w1, 15000));
    assert_true(sn_test_wait_for(s_accepted, &w2, 15000));
    /* gamma matches no child: the root's file channel, not the webhooks. */
    s_wait_t wf = {.fx = fx, .id = other, .n = 1};
    assert_true(sn_test_wait_for(s_file_has, &wf, 15000));
    char *text = sn_test_read_file(fx->file_path);
    assert_non_null(text);
    assert_non_null(strstr(text, "dev.sentinel.notification"));
    free(text);
    assert_int_equal(s_tally(fx, dep, "/hook").accepted, 1);
    assert_int_equal(s_tally(fx, dep, "/hook2").accepted, 1);
    assert_int_equal(s_tally(fx, other, NULL).attempts, 0);
    assert_int_equal(sn_test_count_in_file(fx->file_path, dep), 0); /* the root did not match */
}

static bool s_third(void *arg)
{
    s_wait_t *w = arg;
    return s_tally(w->fx, w->id, w->path).accepted >= 3;
}

static void test_routing_repeat_standing_alert(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true}");
    char id[SN_ID_LEN + 1], res[SN_ID_LEN + 1];
    s_commit(fx, "alert.raised", "alpha", "repeat", "warning", id);
    s_wait_t w = {.fx = fx, .id = id, .path = "/hook", .n = 1};
    assert_true(sn_test_wait_for(s_accepted, &w, 15000));
    s_tally_t t1 = s_tally(fx, id, "/hook");
    assert_int_equal(t1.repeats, 0);
    /* Still active after repeat_interval: sent again, marked repeat. */
    w.n = 2;
    assert_true(sn_test_wait_for(s_accepted, &w, 15000));
    s_tally_t t2 = s_tally(fx, id, "/hook");
    assert_int_equal(t2.repeats, 1);
    assert_true(t2.last_accepted_at - t1.accepted_at >= S_REPEAT_S - 0.2);
    assert_string_not_equal(t2.id, t1.id);
    /* Resolved: no more repeats (waited for well beyond one more repeat_interval). */
    s_commit(fx, "alert.resolved", "alpha", "repeat", "warning", res);
    assert_false(sn_test_wait_for(s_third, &w, (int)(S_REPEAT_S * 1000) + 2500));
    assert_int_equal(s_tally(fx, res, NULL).attempts, 0); /* resolved is not notified */
}

/* ---- silences --------------------------------------------------------------------------- */

/* Calls notify.silence with @body; returns the reply (caller frees) or NULL on a NAK. */
static sn_envelope_t *s_silence_call(s_fx_t *fx, Sentinel__V1__SilenceRequest *body,
                                     sn_nak_reason_t *nak)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &fx->src, "notify.silence", id);
    sn_envelope_add_label(&env, "on_behalf_of", "tester");
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_SILENCE_REQUEST;
    env.silence_request = body;
    sn_envelope_t *reply = NULL;
    sn_nak_reason_t n = SN_NAK_NONE;
    sn_rc_t rc = sn_mesh_call(&fx->mesh, "notify.silence", &env, 5000, &reply, &n);
    sn_envelope_fini_labels(&env);
    if (nak)
        *nak = n;
    return rc == SN_OK ? reply : NULL;
}

static const char *s_error_code(sn_envelope_t *reply)
{
    return reply && reply->body_case == SENTINEL__V1__ENVELOPE__BODY_ERROR && reply->error
               ? reply->error->code
               : "";
}

static void s_expect_invalid(s_fx_t *fx, char **matchers, size_t n, const char *comment,
                             const char *duration, const char *code)
{
    Sentinel__V1__Silence s = SENTINEL__V1__SILENCE__INIT;
    s.matchers = matchers;
    s.n_matchers = n;
    s.comment = (char *)comment;
    Sentinel__V1__SilenceRequest body = SENTINEL__V1__SILENCE_REQUEST__INIT;
    body.op = "create";
    body.silence = &s;
    body.duration = (char *)duration;
    sn_envelope_t *reply = s_silence_call(fx, &body, NULL);
    assert_non_null(reply);
    assert_string_equal(s_error_code(reply), code);
    sn_envelope_free(&reply);
}

static void test_routing_silence_holds_and_expires(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true}");
    char *m[] = {"project=beta", "environment=silenced"};
    Sentinel__V1__Silence s = SENTINEL__V1__SILENCE__INIT;
    s.matchers = m;
    s.n_matchers = 2;
    s.comment = "maintenance window";
    Sentinel__V1__SilenceRequest body = SENTINEL__V1__SILENCE_REQUEST__INIT;
    body.op = "create";
    body.silence = &s;
    body.duration = "1h";
    sn_envelope_t *reply = s_silence_call(fx, &body, NULL);
    assert_non_null(reply);
    assert_int_equal(reply->body_case, SENTINEL__V1__ENVELOPE__BODY_SILENCE_LIST);
    assert_int_equal(reply->silence_list->n_silences, 1);
    Sentinel__V1__Silence *got = reply->silence_list->silences[0];
    char sid[SN_ID_LEN + 1];
    sn_strlcpy(sid, got->id, sizeof sid);
    assert_true(sn_id_is_valid(sid));
    assert_string_equal(got->state, "active");
    assert_string_equal(got->created_by, "tester");
    assert_int_equal(got->n_matchers, 2);
    assert_true(got->ends_unix_ms - got->starts_unix_ms == 3600000);
    sn_envelope_free(&reply);

    /* A silenced event is not sent, and is recorded as silenced. */
    char e1[SN_ID_LEN + 1], e2[SN_ID_LEN + 1], loud[SN_ID_LEN + 1];
    s_commit(fx, "deploy.failed", "beta", "silenced", NULL, e1);
    s_commit(fx, "deploy.failed", "beta", "loud", NULL, loud); /* not matched: sent */
    s_wait_t wl = {.fx = fx, .id = loud, .path = "/hook", .n = 1};
    assert_true(sn_test_wait_for(s_accepted, &wl, 15000));
    char *prefix = sn_strdupf("silenced %s", sid);
    s_muted_t mu = {.fx = fx, .id = e1, .prefix = prefix};
    assert_true(sn_test_wait_for(s_is_muted, &mu, 10000));
    free(prefix);
    assert_int_equal(s_tally(fx, e1, NULL).attempts, 0);

    /* Listed. */
    Sentinel__V1__SilenceRequest list = SENTINEL__V1__SILENCE_REQUEST__INIT;
    list.op = "list";
    reply = s_silence_call(fx, &list, NULL);
    assert_non_null(reply);
    assert_int_equal(reply->body_case, SENTINEL__V1__ENVELOPE__BODY_SILENCE_LIST);
    bool found = false;
    for (size_t i = 0; i < reply->silence_list->n_silences; i++)
        found = found || strcmp(reply->silence_list->silences[i]->id, sid) == 0;
    assert_true(found);
    sn_envelope_free(&reply);

    /* Expired: the next event is sent. */
    Sentinel__V1__SilenceRequest ex = SENTINEL__V1__SILENCE_REQUEST__INIT;
    ex.op = "expire";
    ex.id = sid;
    reply = s_silence_call(fx, &ex, NULL);
    assert_non_null(reply);
    assert_int_equal(reply->body_case, SENTINEL__V1__ENVELOPE__BODY_SILENCE_LIST);
    assert_string_equal(reply->silence_list->silences[0]->state, "expired");
    sn_envelope_free(&reply);
    s_commit(fx, "deploy.failed", "beta", "silenced", NULL, e2);
    s_wait_t w2 = {.fx = fx, .id = e2, .path = "/hook", .n = 1};
    assert_true(sn_test_wait_for(s_accepted, &w2, 15000));
    assert_int_equal(s_tally(fx, e1, NULL).attempts, 0); /* the silenced one stays unsent */

    /* An expired silence is listed only when asked for. */
    reply = s_silence_call(fx, &list, NULL);
    for (size_t i = 0; reply && i < reply->silence_list->n_silences; i++)
        assert_string_not_equal(reply->silence_list->silences[i]->id, sid);
    sn_envelope_free(&reply);
    list.include_expired = true;
    reply = s_silence_call(fx, &list, NULL);
    found = false;
    for (size_t i = 0; reply && i < reply->silence_list->n_silences; i++)
        found = found || strcmp(reply->silence_list->silences[i]->id, sid) == 0;
    assert_true(found);
    sn_envelope_free(&reply);
}

static void test_routing_silence_bad_requests(void **state)
{
    s_fx_t *fx = *state;
    char *good[] = {"project=beta"};
    char *bad_label[] = {"colour=red"};
    char *bad_shape[] = {"project"};
    char *bad_sev[] = {"severity=urgent"};
    s_expect_invalid(fx, NULL, 0, "c", "1h", "invalid");
    s_expect_invalid(fx, bad_label, 1, "c", "1h", "invalid");
    s_expect_invalid(fx, bad_shape, 1, "c", "1h", "invalid");
    s_expect_invalid(fx, bad_sev, 1, "c", "1h", "invalid");
    s_expect_invalid(fx, good, 1, "", "1h", "invalid");
    s_expect_invalid(fx, good, 1, "c", "2x", "invalid");
    s_expect_invalid(fx, good, 1, "c", "", "invalid"); /* no duration, no end */
    s_expect_invalid(fx, good, 1, "c", "400d", "invalid");
    /* expire: unknown, malformed. */
    Sentinel__V1__SilenceRequest ex = SENTINEL__V1__SILENCE_REQUEST__INIT;
    ex.op = "expire";
    char unknown[SN_ID_LEN + 1];
    sn_id_new(unknown);
    ex.id = unknown;
    sn_envelope_t *reply = s_silence_call(fx, &ex, NULL);
    assert_string_equal(s_error_code(reply), "not_found");
    sn_envelope_free(&reply);
    ex.id = "../../etc";
    reply = s_silence_call(fx, &ex, NULL);
    assert_string_equal(s_error_code(reply), "invalid");
    sn_envelope_free(&reply);
    Sentinel__V1__SilenceRequest op = SENTINEL__V1__SILENCE_REQUEST__INIT;
    op.op = "destroy";
    reply = s_silence_call(fx, &op, NULL);
    assert_string_equal(s_error_code(reply), "invalid");
    sn_envelope_free(&reply);
    /* Not a silence request at all: NAK invalid. */
    sn_envelope_t *r2 = NULL;
    sn_nak_reason_t nak = SN_NAK_NONE;
    assert_int_equal(sn_mesh_call_note(&fx->mesh, "notify.silence", "hi", 1, 5000, &r2, &nak),
                     SN_DECLINED);
    assert_int_equal(nak, SN_NAK_INVALID);
    sn_envelope_free(&r2);
}

/* ---- inhibition ------------------------------------------------------------------------ */

static void test_routing_inhibition_holds(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true}");
    char failed[SN_ID_LEN + 1], stuck[SN_ID_LEN + 1], elsewhere[SN_ID_LEN + 1];
    /* A critical deploy failure and the warning it causes, same project and environment;
     * and a warning of another environment. */
    s_commit(fx, "deploy.failed", "beta", "inhibit", NULL, failed);
    s_commit(fx, "deploy.stuck", "beta", "inhibit", NULL, stuck);
    s_commit(fx, "deploy.stuck", "beta", "inhibit-other", NULL, elsewhere);
    s_wait_t w = {.fx = fx, .id = failed, .path = "/hook", .n = 1};
    assert_true(sn_test_wait_for(s_accepted, &w, 15000));
    s_wait_t we = {.fx = fx, .id = elsewhere, .path = "/hook", .n = 1};
    assert_true(sn_test_wait_for(s_accepted, &we, 15000));
    s_muted_t mu = {.fx = fx, .id = stuck, .prefix = "inhibited by deploy.failed"};
    assert_true(sn_test_wait_for(s_is_muted, &mu, 10000));
    assert_int_equal(s_tally(fx, stuck, NULL).attempts, 0);
    assert_int_equal(s_tally(fx, failed, "/hook").events, 1);
    /* A deploy.promoted ends the inhibition: the next warning is sent. */
    char prom[SN_ID_LEN + 1], later[SN_ID_LEN + 1];
    s_commit(fx, "deploy.promoted", "beta", "inhibit", NULL, prom);
    s_wait_t wp = {.fx = fx, .id = prom, .path = "/hook", .n = 1};
    assert_true(sn_test_wait_for(s_accepted, &wp, 15000));
    s_commit(fx, "deploy.stuck", "beta", "inhibit", NULL, later);
    s_wait_t wl = {.fx = fx, .id = later, .path = "/hook", .n = 1};
    assert_true(sn_test_wait_for(s_accepted, &wl, 15000));
}

/* ---- replicas, crashes --------------------------------------------------------------------- */

#define S_GROUPS 8

static void test_routing_two_replicas_send_each_group_once(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true}");
    assert_true(sn_test_alive(fx->n1) && sn_test_alive(fx->n2));
    char ids[S_GROUPS][2][SN_ID_LEN + 1];
    for (int g = 0; g < S_GROUPS; g++) {
        char env_name[16];
        snprintf(env_name, sizeof env_name, "rep%d", g);
        s_commit(fx, "run.failed", "alpha", env_name, NULL, ids[g][0]);
        s_commit(fx, "run.failed", "alpha", env_name, NULL, ids[g][1]);
    }
    for (int g = 0; g < S_GROUPS; g++) {
        s_wait_t w = {.fx = fx, .id = ids[g][1], .path = "/hook", .n = 1};
        assert_true(sn_test_wait_for(s_accepted, &w, 15000));
    }
    int senders_n1 = 0, senders_n2 = 0;
    for (int g = 0; g < S_GROUPS; g++) {
        s_tally_t a = s_tally(fx, ids[g][0], NULL), b = s_tally(fx, ids[g][1], NULL);
        assert_int_equal(a.accepted, 1);
        assert_int_equal(a.attempts, 1);
        assert_int_equal(b.accepted, 1);
        assert_string_equal(a.id, b.id);
        assert_int_equal(a.events, 2);
        char *key = sn_strdupf("notify:log:%s:hook", a.id);
        char *v = s_rget(fx, key);
        free(key);
        assert_non_null(v);
        senders_n1 += strncmp(v, "sent n1 ", 8) == 0;
        senders_n2 += strncmp(v, "sent n2 ", 8) == 0;
        free(v);
    }
    assert_int_equal(senders_n1 + senders_n2, S_GROUPS);
    fprintf(stderr, "groups sent by n1: %d, by n2: %d\n", senders_n1, senders_n2);
}

typedef struct {
    s_fx_t *fx;
    const char *id;
} s_grouped_t;

/* True once event @id sits in a pending group's events hash. */
static bool s_in_group(void *arg)
{
    s_grouped_t *g = arg;
    char *pattern = sn_strdupf("%snotify:group:*:events", g->fx->mesh.ns);
    redisReply *r = redisCommand(g->fx->raw, "KEYS %s", pattern);
    free(pattern);
    bool found = false;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements && !found; i++) {
        redisReply *h = redisCommand(g->fx->raw, "HEXISTS %s %s", r->element[i]->str, g->id);
        found = h && h->type == REDIS_REPLY_INTEGER && h->integer == 1;
        if (h)
            freeReplyObject(h);
    }
    if (r)
        freeReplyObject(r);
    return found;
}

static void s_kill9(s_fx_t *fx, pid_t pid)
{
    assert_int_equal(kill(pid, SIGKILL), 0);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    for (size_t i = 0; i < fx->mesh.agent_count; i++)
        if (fx->mesh.agents[i].pid == pid)
            fx->mesh.agents[i].pid = -1;
}

static void test_routing_killed_between_wait_and_send_loses_nothing(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true}");
    char id[SN_ID_LEN + 1];
    s_commit(fx, "run.failed", "crash", "crash", NULL, id);
    s_grouped_t g = {.fx = fx, .id = id};
    assert_true(sn_test_wait_for(s_in_group, &g, 5000));
    /* Both replicas die inside group_wait (4 s on this route): the group lives on in
     * Redis only. */
    s_kill9(fx, fx->n1);
    s_kill9(fx, fx->n2);
    assert_int_equal(s_tally(fx, id, NULL).attempts, 0); /* nothing was sent before */
    assert_true(s_in_group(&g));
    fx->n1 = s_spawn(fx, "notifier", "n1");
    fx->n2 = s_spawn(fx, "notifier", "n2");
    s_wait_t w = {.fx = fx, .id = id, .path = "/hook", .n = 1};
    assert_true(sn_test_wait_for(s_accepted, &w, 20000));
    assert_true(sn_mesh_wait_service(&fx->mesh, "notify.silence", 2, 15000));
    s_tally_t t = s_tally(fx, id, NULL);
    assert_int_equal(t.accepted, 1);
    assert_int_equal(t.attempts, 1);
}

/* ---- channel errors ------------------------------------------------------------------------ */

static void test_routing_permanent_error_alerts_other_channel(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true, \"script\": [\"400\"]}");
    char id[SN_ID_LEN + 1];
    s_commit(fx, "deploy.failed", "beta", "perm", NULL, id);
    s_wait_t w = {.fx = fx, .id = id, .path = "/hook", .n = 1};
    assert_true(sn_test_wait_for(s_attempted, &w, 15000));
    /* Not retried; the alert reaches the file channel (the root route: the hook route
     * does not match an alert without project beta). */
    s_wait_t wf = {.fx = fx, .id = S_ALERT_NAME_FAILED, .n = 1};
    assert_true(sn_test_wait_for(s_file_has, &wf, 15000));
    s_tally_t t = s_tally(fx, id, "/hook");
    assert_int_equal(t.attempts, 1);
    assert_int_equal(t.accepted, 0);
    char *key = sn_strdupf("notify:log:%s:hook", t.any_id);
    char *v = s_rget(fx, key);
    free(key);
    assert_non_null(v);
    assert_true(strncmp(v, "failed ", 7) == 0);
    free(v);
    char *text = sn_test_read_file(fx->file_path);
    assert_non_null(strstr(text, "\"channel\":\"hook\""));
    assert_non_null(strstr(text, "critical"));
    free(text);
}

static void test_routing_429_waited_out_without_blocking(void **state)
{
    s_fx_t *fx = *state;
    s_sink_control(fx, "{\"reset\": true, \"script\": [\"429:3\"]}");
    char slow[SN_ID_LEN + 1], fast[SN_ID_LEN + 1];
    s_commit(fx, "deploy.failed", "beta", "limited", NULL, slow);
    s_wait_t ws = {.fx = fx, .id = slow, .path = "/hook", .n = 1};
    assert_true(sn_test_wait_for(s_attempted, &ws, 15000));
    double limited_at = s_now_s();
    /* Another group on another channel goes out while the first waits. */
    s_commit(fx, "run.failed", "delta", "limited", NULL, fast);
    s_wait_t wf = {.fx = fx, .id = fast, .path = "/hook2", .n = 1};
    assert_true(sn_test_wait_for(s_accepted, &wf, 15000));
    assert_true(sn_test_wait_for(s_accepted, &ws, 20000));
    s_tally_t ts = s_tally(fx, slow, "/hook"), tf = s_tally(fx, fast, "/hook2");
    assert_int_equal(ts.attempts, 2);
    assert_int_equal(ts.accepted, 1);
    assert_true(ts.accepted_at - ts.first_at >= 2.9); /* Retry-After: 3 waited out */
    assert_true(ts.accepted_at - ts.first_at < 6.0);
    assert_true(tf.accepted_at < ts.accepted_at); /* not blocked behind the 429 */
    assert_true(tf.accepted_at - limited_at < 2.9);
}

/* ---- the API and the CLI ------------------------------------------------------------------- */

typedef struct {
    long status;
    json_t *json;
} s_resp_t;

static s_resp_t s_api(s_fx_t *fx, const char *method, const char *path, const char *token,
                      const char *body)
{
    char *url = sn_strdupf("http://127.0.0.1:%d%s", fx->gw_port, path);
    char auth[128];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    const char *headers[] = {auth, "Content-Type: application/json", NULL};
    sn_http_request_t req = {.method = method,
                             .url = url,
                             .headers = headers,
                             .body = body,
                             .body_len = body ? strlen(body) : 0,
                             .timeout_ms = 10000};
    sn_http_response_t resp;
    s_resp_t out = {0};
    assert_int_equal(sn_http_perform(fx->http, &req, &resp), SN_OK);
    out.status = resp.status;
    out.json = resp.body ? json_loads(resp.body, 0, NULL) : NULL;
    sn_http_response_fini(&resp);
    free(url);
    return out;
}

static void test_routing_silences_api_and_cli(void **state)
{
    s_fx_t *fx = *state;
    /* API: create (operator), list (viewer), expire (operator). */
    s_resp_t r = s_api(fx, "POST", "/api/v1/silences", S_OPERATOR,
                       "{\"matchers\": [\"project=beta\", \"type=deploy.*\"], \"comment\": "
                       "\"api test\", \"duration\": \"2h\"}");
    assert_int_equal(r.status, 200);
    json_t *s0 = json_array_get(json_object_get(r.json, "silences"), 0);
    const char *sid_c = json_string_value(json_object_get(s0, "id"));
    assert_non_null(sid_c);
    char sid[SN_ID_LEN + 1];
    sn_strlcpy(sid, sid_c, sizeof sid);
    assert_string_equal(json_string_value(json_object_get(s0, "createdBy")), "ops");
    assert_string_equal(json_string_value(json_object_get(s0, "state")), "active");
    json_decref(r.json);

    r = s_api(fx, "GET", "/api/v1/silences", S_VIEWER, NULL);
    assert_int_equal(r.status, 200);
    char *dump = json_dumps(r.json, 0);
    assert_non_null(strstr(dump, sid));
    free(dump);
    json_decref(r.json);

    /* Bad requests never reach the notifier; roles are enforced. */
    static const char *const bad[] = {
        "{\"matchers\": [\"colour=red\"], \"comment\": \"c\", \"duration\": \"1h\"}",
        "{\"matchers\": [], \"comment\": \"c\", \"duration\": \"1h\"}",
        "{\"matchers\": [\"project=a\"], \"duration\": \"1h\"}",
        "{\"matchers\": [\"project=a\"], \"comment\": \"c\"}",
        "{\"matchers\": [\"project=a\"], \"comment\": \"c\", \"duration\": \"soon\"}",
        "{\"matchers\": [\"project=a\"], \"comment\": \"c\", \"duration\": \"1h\", \"x\": 1}",
        "{\"matchers\": \"project=a\", \"comment\": \"c\", \"duration\": \"1h\"}",
        "not json",
    };
    for (size_t i = 0; i < SN_ARRAY_LEN(bad); i++) {
        r = s_api(fx, "POST", "/api/v1/silences", S_OPERATOR, bad[i]);
        if (r.status != 400)
            fprintf(stderr, "body %zu answered %ld\n", i, r.status);
        assert_int_equal(r.status, 400);
        json_decref(r.json);
    }
    r = s_api(fx, "POST", "/api/v1/silences", S_VIEWER,
              "{\"matchers\": [\"project=beta\"], \"comment\": \"c\", \"duration\": \"1h\"}");
    assert_int_equal(r.status, 403);
    json_decref(r.json);
    r = s_api(fx, "DELETE", "/api/v1/silences/not-an-id", S_OPERATOR, NULL);
    assert_int_equal(r.status, 400);
    json_decref(r.json);
    char unknown[SN_ID_LEN + 1];
    sn_id_new(unknown);
    char *path = sn_strdupf("/api/v1/silences/%s", unknown);
    r = s_api(fx, "DELETE", path, S_OPERATOR, NULL);
    assert_int_equal(r.status, 404);
    json_decref(r.json);
    free(path);
    path = sn_strdupf("/api/v1/silences/%s", sid);
    r = s_api(fx, "DELETE", path, S_VIEWER, NULL);
    assert_int_equal(r.status, 403);
    json_decref(r.json);
    r = s_api(fx, "DELETE", path, S_OPERATOR, NULL);
    assert_int_equal(r.status, 200);
    s0 = json_array_get(json_object_get(r.json, "silences"), 0);
    assert_string_equal(json_string_value(json_object_get(s0, "state")), "expired");
    json_decref(r.json);
    free(path);

    /* The CLI: add prints the id, list shows it, expire ends it. */
    const char *add[] = {
        "-c",      fx->mesh.config,   "silence", "add", "--match",   "project=beta",
        "--match", "environment=cli", "--for",   "2h",  "--comment", "cli test",
        NULL};
    ctl_result_t cr = ctl_run(fx->out_dir, add);
    if (cr.status != 0)
        fprintf(stderr, "silence add: %s%s\n", cr.out, cr.err);
    assert_int_equal(cr.status, 0);
    char cid[SN_ID_LEN + 1];
    sn_strlcpy(cid, cr.out, sizeof cid);
    assert_true(sn_id_is_valid(cid));
    ctl_result_fini(&cr);
    const char *ls[] = {"-c", fx->mesh.config, "silence", "list", NULL};
    cr = ctl_run(fx->out_dir, ls);
    assert_int_equal(cr.status, 0);
    assert_non_null(strstr(cr.out, cid));
    assert_non_null(strstr(cr.out, "environment=cli"));
    ctl_result_fini(&cr);
    const char *exp[] = {"-c", fx->mesh.config, "silence", "expire", cid, NULL};
    cr = ctl_run(fx->out_dir, exp);
    assert_int_equal(cr.status, 0);
    ctl_result_fini(&cr);
    cr = ctl_run(fx->out_dir, ls);
    assert_int_equal(cr.status, 0);
    assert_null(strstr(cr.out, cid));
    ctl_result_fini(&cr);
    /* Usage errors exit 2; what the notifier refuses exits 1. */
    const char *no_for[] = {"-c",           fx->mesh.config, "silence", "add", "--match",
                            "project=beta", "--comment",     "x",       NULL};
    cr = ctl_run(fx->out_dir, no_for);
    assert_int_equal(cr.status, 2);
    ctl_result_fini(&cr);
    const char *bad_sub[] = {"-c", fx->mesh.config, "silence", "mute", NULL};
    cr = ctl_run(fx->out_dir, bad_sub);
    assert_int_equal(cr.status, 2);
    ctl_result_fini(&cr);
    const char *bad_m[] = {"-c",         fx->mesh.config, "silence", "add",       "--match",
                           "colour=red", "--for",         "1h",      "--comment", "x",
                           NULL};
    cr = ctl_run(fx->out_dir, bad_m);
    assert_int_equal(cr.status, 1);
    assert_non_null(strstr(cr.err, "unknown label"));
    ctl_result_fini(&cr);
    const char *exp_unknown[] = {"-c", fx->mesh.config, "silence", "expire", unknown, NULL};
    cr = ctl_run(fx->out_dir, exp_unknown);
    assert_int_equal(cr.status, 1);
    ctl_result_fini(&cr);
}

int main(void)
{
    sn_log_init("test", "notify-routing");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routing_burst_is_one_message_per_group),
        cmocka_unit_test(test_routing_group_interval),
        cmocka_unit_test(test_routing_match_and_continue),
        /* Scripted sink answers first, while no standing alert repeats to the sink. */
        cmocka_unit_test(test_routing_permanent_error_alerts_other_channel),
        cmocka_unit_test(test_routing_429_waited_out_without_blocking),
        cmocka_unit_test(test_routing_silence_holds_and_expires),
        cmocka_unit_test(test_routing_silence_bad_requests),
        cmocka_unit_test(test_routing_inhibition_holds),
        cmocka_unit_test(test_routing_two_replicas_send_each_group_once),
        cmocka_unit_test(test_routing_killed_between_wait_and_send_loses_nothing),
        cmocka_unit_test(test_routing_silences_api_and_cli),
        cmocka_unit_test(test_routing_repeat_standing_alert),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
