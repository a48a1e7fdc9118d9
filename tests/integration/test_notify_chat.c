/* End-to-end tests of the notifier role with the chat and mail channels (issue 4, "with the
 * Telegram, Slack, Discord and SMTP fakes"): a real mesh (redis-server, broker) with two
 * sentinel-agent notifier replicas, channels of type telegram, slack, discord and email
 * pointed at tests/fakes/fake_chat.py and tests/fakes/fake_smtp.py (STARTTLS with a
 * certificate made here by openssl, trusted through the channel's `ca_file`, AUTH), driven
 * by events committed into the journal from this process. Every check is made on what the
 * fakes received (/__messages, the SMTP fake's JSON records) and on the chat fake's
 * /__stats (requests per service, rate-limit violations, refused requests).
 *
 * Route tree (group_wait 300 ms, group_interval 800 ms):
 *   root                  -> slack   (where the notify.channel_failed alert lands)
 *     project=chat        -> tg, slack, discord, mail
 *     project=crash       -> tg, slack, discord, mail   (group_wait 3 s: time to kill)
 *     project=perm        -> tgbad   (a Telegram chat the Bot API does not know)
 * and the default inhibit rule. Each test uses its own environment names, so its groups
 * are its own; a group's messages are found by its title "... for <project>/<env>". */
#include "sn_mesh.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sentinel/sn_http.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define S_PYTHON "/usr/bin/python3"
#define S_TG_TOKEN "987654:AAH-chatE2eTelegramToken_xyz"
#define S_TG_CHAT "12345"
#define S_TG_BAD_CHAT "424242" /* not a chat the fake knows: 400 chat not found */
#define S_SLACK_PATH "/services/T0E2E/B0E2E/slackE2eSecretPart"
#define S_DISCORD_ID "998877665544332211"
#define S_DISCORD_TOKEN "discord-e2e-secret-token"
#define S_SMTP_USER "mailer"
#define S_SMTP_PASSWORD "smtp-e2e-Pa55word"
#define S_FROM_DOMAIN "example.org"
#define S_REASON "tests <failed> & \"flaky\""
#define S_REASON_HTML "tests &lt;failed&gt; &amp; &quot;flaky&quot;"
#define S_GROUP_WAIT_S 0.3
#define S_TG_RETRY_S 4     /* the Telegram 429's parameters.retry_after */
#define S_DC_RETRY "2.5"   /* the Discord 429's float retry_after */
#define S_DC_RETRY_MS 2500 /* ... exactly, in ms: not the header's rounded-up 3 s */
#define S_ALERT_NAME_FAILED "notify.channel_failed"

static const char *const s_services[] = {"telegram", "slack", "discord"};
static const char *const s_channels[] = {"tg", "slack", "discord", "mail"};

typedef struct {
    sn_mesh_t mesh;
    char *dir;
    char *ca, *key;
    char *smtp_record;
    int chat_port, smtp_port;
    pid_t chat, smtp;
    redisContext *raw;
    sn_redis_t *r;
    sn_journal_t *j;
    sn_source_t src;
    sn_http_t *http;
    pid_t n1, n2;
} s_fx_t;

/* ---- the fakes ------------------------------------------------------------------------- */

static bool s_file_exists(void *arg)
{
    return access((const char *)arg, F_OK) == 0;
}

static pid_t s_spawn_fake(s_fx_t *fx, const char *const *args, const char *tag)
{
    char *ready = sn_strdupf("%s/%s.ready", fx->dir, tag);
    char *log = sn_strdupf("%s/%s.log", fx->dir, tag);
    char *argv[32];
    size_t n = 0;
    argv[n++] = (char *)S_PYTHON;
    for (size_t i = 0; args[i] && n + 3 < SN_ARRAY_LEN(argv); i++)
        argv[n++] = (char *)args[i];
    argv[n++] = (char *)"--ready";
    argv[n++] = ready;
    argv[n] = NULL;
    pid_t pid = sn_test_spawn(argv, log);
    assert_true(pid > 0);
    assert_true(sn_test_wait_for(s_file_exists, ready, 15000));
    free(ready);
    free(log);
    return pid;
}

static void s_chat_ctl(s_fx_t *fx, const char *json)
{
    char *url = sn_strdupf("http://127.0.0.1:%d/__control", fx->chat_port);
    const char *h[] = {"Content-Type: application/json", NULL};
    sn_http_request_t req = {
        .url = url, .headers = h, .body = json, .body_len = strlen(json), .timeout_ms = 5000};
    sn_http_response_t resp;
    assert_int_equal(sn_http_perform(fx->http, &req, &resp), SN_OK);
    assert_int_equal(resp.status, 200);
    sn_http_response_fini(&resp);
    free(url);
}

static json_t *s_chat_get(s_fx_t *fx, const char *path)
{
    char *url = sn_strdupf("http://127.0.0.1:%d%s", fx->chat_port, path);
    sn_http_request_t req = {.url = url, .timeout_ms = 5000};
    sn_http_response_t resp;
    assert_int_equal(sn_http_perform(fx->http, &req, &resp), SN_OK);
    assert_int_equal(resp.status, 200);
    json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
    assert_non_null(j);
    sn_http_response_fini(&resp);
    free(url);
    return j;
}

typedef struct {
    int requests[3]; /* telegram, slack, discord */
    int violations;
    int refused;
} s_stats_t;

static s_stats_t s_stats(s_fx_t *fx)
{
    json_t *j = s_chat_get(fx, "/__stats");
    s_stats_t s = {.violations = (int)json_integer_value(json_object_get(j, "violations")),
                   .refused = (int)json_integer_value(json_object_get(j, "refused"))};
    for (size_t i = 0; i < SN_ARRAY_LEN(s_services); i++)
        s.requests[i] =
            (int)json_integer_value(json_object_get(json_object_get(j, "requests"), s_services[i]));
    json_decref(j);
    return s;
}

/* The messages of @service the chat fake accepted whose JSON mentions @needle: their
 * number, and (if @last) a new reference to the last one. */
static int s_chat_count(s_fx_t *fx, const char *service, const char *needle, json_t **last)
{
    json_t *all = s_chat_get(fx, "/__messages");
    int n = 0;
    size_t i;
    json_t *m;
    if (last)
        *last = NULL;
    json_array_foreach(all, i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "service")), service) != 0)
            continue;
        char *dump = json_dumps(m, 0);
        if (dump && strstr(dump, needle)) {
            n++;
            if (last) {
                json_decref(*last);
                *last = json_incref(m);
            }
        }
        free(dump);
    }
    json_decref(all);
    return n;
}

/* The mails the SMTP fake accepted whose Subject contains @needle (same contract). */
static int s_mail_count(s_fx_t *fx, const char *needle, json_t **last)
{
    if (last)
        *last = NULL;
    char *all = sn_test_read_file(fx->smtp_record);
    if (!all)
        return 0;
    int n = 0;
    char *save = NULL;
    for (char *line = strtok_r(all, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *rec = json_loads(line, 0, NULL);
        assert_non_null(rec);
        const char *subject = json_string_value(json_object_get(rec, "subject"));
        if (subject && strstr(subject, needle)) {
            n++;
            if (last) {
                json_decref(*last);
                *last = json_incref(rec);
            }
        }
        json_decref(rec);
    }
    free(all);
    return n;
}

/* How many messages about @needle channel @channel (index in s_channels) received. */
static int s_received(s_fx_t *fx, size_t channel, const char *needle)
{
    return channel < SN_ARRAY_LEN(s_services) ? s_chat_count(fx, s_services[channel], needle, NULL)
                                              : s_mail_count(fx, needle, NULL);
}

typedef struct {
    s_fx_t *fx;
    const char *needle;
} s_wait_t;

static bool s_on_every_channel(void *arg)
{
    s_wait_t *w = arg;
    for (size_t c = 0; c < SN_ARRAY_LEN(s_channels); c++)
        if (s_received(w->fx, c, w->needle) < 1)
            return false;
    return true;
}

static bool s_on_slack(void *arg)
{
    s_wait_t *w = arg;
    return s_chat_count(w->fx, "slack", w->needle, NULL) >= 1;
}

static bool s_on_telegram(void *arg)
{
    s_wait_t *w = arg;
    return s_chat_count(w->fx, "telegram", w->needle, NULL) >= 1;
}

static void s_expect_once_everywhere(s_fx_t *fx, const char *needle)
{
    for (size_t c = 0; c < SN_ARRAY_LEN(s_channels); c++) {
        int n = s_received(fx, c, needle);
        if (n != 1)
            fprintf(stderr, "%s: %d messages about \"%s\"\n", s_channels[c], n, needle);
        assert_int_equal(n, 1);
    }
}

static void s_expect_nowhere(s_fx_t *fx, const char *needle)
{
    for (size_t c = 0; c < SN_ARRAY_LEN(s_channels); c++)
        assert_int_equal(s_received(fx, c, needle), 0);
}

static double s_now_s(void)
{
    return (double)sn_wall_ms() / 1000.0;
}

/* ---- Redis --------------------------------------------------------------------------- */

static char *s_rget(s_fx_t *fx, const char *key)
{
    return sn_mesh_get(&fx->mesh, key);
}

/* The notification id of a mail: the left part of its Message-ID. Caller frees. */
static char *s_mail_nid(json_t *rec)
{
    json_t *ids = json_object_get(json_object_get(rec, "headers"), "message-id");
    const char *v = json_string_value(json_array_get(ids, 0));
    assert_non_null(v);
    const char *lt = strchr(v, '<'), *dot = strstr(v, ".sentinel@");
    assert_non_null(lt);
    assert_non_null(dot);
    assert_true(dot > lt + 1);
    return sn_strdupf("%.*s", (int)(dot - lt - 1), lt + 1);
}

/* The notification log entry of @nid on @channel (caller frees; NULL if none). */
static char *s_nlog(s_fx_t *fx, const char *nid, const char *channel)
{
    char *key = sn_strdupf("notify:log:%s:%s", nid, channel);
    char *v = s_rget(fx, key);
    free(key);
    if (v && !v[0]) {
        free(v);
        v = NULL;
    }
    return v;
}

/* Values of notify:log:*:@channel that start with @prefix. */
static int s_nlogs_with(s_fx_t *fx, const char *channel, const char *prefix)
{
    char *pattern = sn_strdupf("%snotify:log:*:%s", fx->mesh.ns, channel);
    redisReply *r = redisCommand(fx->raw, "KEYS %s", pattern);
    free(pattern);
    assert_non_null(r);
    int n = 0;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *v = redisCommand(fx->raw, "GET %s", r->element[i]->str);
        n += v && v->type == REDIS_REPLY_STRING && strncmp(v->str, prefix, strlen(prefix)) == 0;
        if (v)
            freeReplyObject(v);
    }
    freeReplyObject(r);
    return n;
}

static int s_keys(s_fx_t *fx, const char *suffix_pattern)
{
    char *pattern = sn_strdupf("%s%s", fx->mesh.ns, suffix_pattern);
    redisReply *r = redisCommand(fx->raw, "KEYS %s", pattern);
    free(pattern);
    assert_non_null(r);
    int n = r->type == REDIS_REPLY_ARRAY ? (int)r->elements : -1;
    freeReplyObject(r);
    return n;
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

/* True once event @id sits in a pending group's events hash. */
static bool s_in_group(void *arg)
{
    s_muted_t *g = arg;
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

/* ---- the mesh ------------------------------------------------------------------------- */

static pid_t s_spawn(s_fx_t *fx, const char *role, const char *instance)
{
    size_t i = sn_mesh_agent_bin(&fx->mesh, "sentinel-agent", role, instance);
    return fx->mesh.agents[i].pid;
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

static int s_run(char *const argv[])
{
    pid_t pid = sn_test_spawn(argv, NULL);
    assert_true(pid > 0);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int s_group_setup(void **state)
{
    s_fx_t *fx = sn_calloc(1, sizeof *fx);
    fx->dir = sn_test_tmpdir("notify-chat");
    fx->ca = sn_strdupf("%s/cert.pem", fx->dir);
    fx->key = sn_strdupf("%s/key.pem", fx->dir);
    fx->smtp_record = sn_strdupf("%s/smtp.jsonl", fx->dir);
    /* A self-signed certificate for 127.0.0.1: the SMTP fake's, and the channel's CA. */
    char *argv[] = {(char *)"/usr/bin/openssl",
                    (char *)"req",
                    (char *)"-x509",
                    (char *)"-newkey",
                    (char *)"ec",
                    (char *)"-pkeyopt",
                    (char *)"ec_paramgen_curve:prime256v1",
                    (char *)"-nodes",
                    (char *)"-keyout",
                    fx->key,
                    (char *)"-out",
                    fx->ca,
                    (char *)"-days",
                    (char *)"2",
                    (char *)"-subj",
                    (char *)"/CN=127.0.0.1",
                    (char *)"-addext",
                    (char *)"subjectAltName=DNS:localhost,IP:127.0.0.1",
                    NULL};
    assert_int_equal(s_run(argv), 0);

    fx->chat_port = sn_test_free_port();
    fx->smtp_port = sn_test_free_port();
    char chat_port[16], smtp_port[16];
    snprintf(chat_port, sizeof chat_port, "%d", fx->chat_port);
    snprintf(smtp_port, sizeof smtp_port, "%d", fx->smtp_port);
    char *chat = sn_strdupf("%s/tests/fakes/fake_chat.py", SN_SOURCE_DIR);
    char *smtp = sn_strdupf("%s/tests/fakes/fake_smtp.py", SN_SOURCE_DIR);
    const char *a_chat[] = {chat,
                            "--port",
                            chat_port,
                            "--telegram-token",
                            S_TG_TOKEN,
                            "--telegram-chats",
                            S_TG_CHAT,
                            "--slack-path",
                            S_SLACK_PATH,
                            "--discord-webhook",
                            S_DISCORD_ID "/" S_DISCORD_TOKEN,
                            NULL};
    fx->chat = s_spawn_fake(fx, a_chat, "chat");
    const char *a_smtp[] = {smtp,    "--port",   smtp_port,   "--record",   fx->smtp_record,
                            "--tls", "starttls", "--cert",    fx->ca,       "--key",
                            fx->key, "--user",   S_SMTP_USER, "--password", S_SMTP_PASSWORD,
                            NULL};
    fx->smtp = s_spawn_fake(fx, a_smtp, "smtp");
    free(chat);
    free(smtp);
    fx->http = sn_http_new();
    assert_non_null(fx->http);

    char *extra = sn_strdupf(
        "channels:\n"
        "  - name: tg\n    type: telegram\n    api_base: http://127.0.0.1:%d/\n"
        "    token: \"%s\"\n    chat_id: \"%s\"\n    timeout_ms: 3000\n    max_attempts: 4\n"
        "  - name: tgbad\n    type: telegram\n    api_base: http://127.0.0.1:%d/\n"
        "    token: \"%s\"\n    chat_id: \"%s\"\n    timeout_ms: 3000\n    max_attempts: 4\n"
        "  - name: slack\n    type: slack\n    url: http://127.0.0.1:%d%s\n"
        "    timeout_ms: 3000\n    max_attempts: 4\n"
        "  - name: discord\n    type: discord\n"
        "    url: http://127.0.0.1:%d/api/webhooks/%s/%s\n"
        "    timeout_ms: 3000\n    max_attempts: 4\n"
        "  - name: mail\n    type: email\n    url: smtp://127.0.0.1:%d/ci.example.org\n"
        "    from: \"Sentinel <sentinel@%s>\"\n    to: [ops@example.org, dev@example.org]\n"
        "    username: %s\n    password: \"%s\"\n    starttls: true\n    ca_file: %s\n"
        "    timeout_ms: 5000\n    max_attempts: 4\n"
        "notify:\n"
        "  route:\n"
        "    channels: [slack]\n"
        "    group_wait_ms: 300\n"
        "    group_interval_ms: 800\n"
        "    repeat_interval_ms: 600000\n"
        "    routes:\n"
        "      - match: [\"project=chat\"]\n        channels: [tg, slack, discord, mail]\n"
        "      - match: [\"project=crash\"]\n        channels: [tg, slack, discord, mail]\n"
        "        group_wait_ms: 3000\n"
        "      - match: [\"project=perm\"]\n        channels: [tgbad]\n",
        fx->chat_port, S_TG_TOKEN, S_TG_CHAT, fx->chat_port, S_TG_TOKEN, S_TG_BAD_CHAT,
        fx->chat_port, S_SLACK_PATH, fx->chat_port, S_DISCORD_ID, S_DISCORD_TOKEN, fx->smtp_port,
        S_FROM_DOMAIN, S_SMTP_USER, S_SMTP_PASSWORD, fx->ca);
    bool ok = sn_mesh_start(&fx->mesh, "notify-chat", extra);
    free(extra);
    assert_true(ok);

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
    assert_true(sn_test_wait_for(s_two_consumers, fx, 15000));
    assert_true(sn_mesh_wait_service(&fx->mesh, "notify.silence", 2, 15000));
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
    pid_t fakes[] = {fx->chat, fx->smtp};
    for (size_t i = 0; i < SN_ARRAY_LEN(fakes); i++)
        if (fakes[i] > 0 && sn_test_stop(fakes[i], SIGTERM, 5000) == -1)
            bad++;
    sn_http_destroy(&fx->http);
    sn_test_rmdir(fx->dir);
    free(fx->dir);
    free(fx->ca);
    free(fx->key);
    free(fx->smtp_record);
    free(fx);
    return bad == 0 ? 0 : -1;
}

/* ---- events ------------------------------------------------------------------------------ */

/* Journals an event of @type about @project/@env: a Deploy body for deploy.*, else a Run
 * (reason S_REASON). The event id goes into @id. */
static void s_commit(s_fx_t *fx, const char *type, const char *project, const char *env_name,
                     char id[SN_ID_LEN + 1])
{
    sn_envelope_t env;
    sn_envelope_stamp(&env, &fx->src, type, id);
    char subject[128];
    snprintf(subject, sizeof subject, "%s/%s/web", project, env_name);
    env.subject = subject;
    Sentinel__V1__Run run = SENTINEL__V1__RUN__INIT;
    Sentinel__V1__Deploy dep = SENTINEL__V1__DEPLOY__INIT;
    char deploy_id[160];
    if (strncmp(type, "deploy.", 7) == 0) {
        snprintf(deploy_id, sizeof deploy_id, "dep-%s-%s", project, env_name);
        dep.deploy_id = deploy_id;
        dep.project = (char *)project;
        dep.environment = (char *)env_name;
        dep.target = "web";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY;
        env.deploy = &dep;
    } else {
        run.run_id = id;
        run.project = (char *)project;
        run.environment = (char *)env_name;
        run.sha = "0123456789abcdef0123456789abcdef01234567";
        run.reason = S_REASON;
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN;
        env.run = &run;
    }
    assert_int_equal(sn_journal_commit(fx->j, NULL, NULL, 0, &env, NULL), SN_OK);
}

/* ---- (1) a burst is one message per channel, two replicas --------------------------------- */

#define S_BURST 6

static void test_chat_burst_is_one_message_per_channel(void **state)
{
    s_fx_t *fx = *state;
    s_chat_ctl(fx, "{\"reset\": true}");
    assert_true(sn_test_alive(fx->n1) && sn_test_alive(fx->n2));
    char ids[S_BURST][SN_ID_LEN + 1];
    double t0 = s_now_s();
    for (int i = 0; i < S_BURST; i++)
        s_commit(fx, "run.failed", "chat", "burst", ids[i]);
    s_wait_t w = {.fx = fx, .needle = "for chat/burst"};
    assert_true(sn_test_wait_for(s_on_every_channel, &w, 15000));
    double arrived = s_now_s();
    assert_true(arrived - t0 >= S_GROUP_WAIT_S - 0.05); /* group_wait gathered the burst */
    /* One message per channel, with all six events, sent by exactly one replica. */
    s_expect_once_everywhere(fx, "6 run.failed events for chat/burst");
    s_stats_t st = s_stats(fx);
    assert_int_equal(st.requests[0], 1);
    assert_int_equal(st.requests[1], 1);
    assert_int_equal(st.requests[2], 1);
    assert_int_equal(st.violations, 0);
    assert_int_equal(st.refused, 0);

    /* Telegram: sendMessage to the chat, HTML with the CI text escaped. */
    json_t *m = NULL;
    assert_int_equal(s_chat_count(fx, "telegram", "for chat/burst", &m), 1);
    assert_string_equal(json_string_value(json_object_get(m, "parse_mode")), "HTML");
    assert_int_equal(json_integer_value(json_object_get(m, "chat_id")), 12345);
    const char *raw = json_string_value(json_object_get(m, "raw"));
    const char *visible = json_string_value(json_object_get(m, "text"));
    assert_non_null(strstr(raw, "<b>"));
    assert_non_null(strstr(raw, S_REASON_HTML));
    assert_null(strstr(raw, "<failed>"));
    assert_non_null(strstr(visible, S_REASON));
    for (int i = 0; i < S_BURST; i++)
        assert_non_null(strstr(visible, ids[i])); /* one line per event */
    json_decref(m);

    /* Slack: text fallback, section and context blocks, mrkdwn-escaped. */
    assert_int_equal(s_chat_count(fx, "slack", "for chat/burst", &m), 1);
    json_t *js = json_object_get(m, "json");
    assert_non_null(strstr(json_string_value(json_object_get(js, "text")), "CRITICAL"));
    json_t *blocks = json_object_get(js, "blocks");
    assert_true(json_array_size(blocks) >= 2);
    const char *section = json_string_value(
        json_object_get(json_object_get(json_array_get(blocks, 0), "text"), "text"));
    assert_non_null(section);
    assert_non_null(strstr(section, "&lt;failed&gt; &amp;"));
    assert_null(strstr(section, "<failed>"));
    json_decref(m);

    /* Discord: one embed, mentions disabled, the notification id in the footer. */
    assert_int_equal(s_chat_count(fx, "discord", "for chat/burst", &m), 1);
    js = json_object_get(m, "json");
    json_t *embed = json_array_get(json_object_get(js, "embeds"), 0);
    assert_non_null(embed);
    assert_non_null(strstr(json_string_value(json_object_get(embed, "title")), "chat/burst"));
    assert_non_null(strstr(json_string_value(json_object_get(embed, "description")), S_REASON));
    assert_int_equal(
        json_array_size(json_object_get(json_object_get(js, "allowed_mentions"), "parse")), 0);
    const char *footer =
        json_string_value(json_object_get(json_object_get(embed, "footer"), "text"));
    assert_non_null(footer);

    /* Email: one RFC 5322 message over STARTTLS with AUTH, to both recipients. */
    json_t *rec = NULL;
    assert_int_equal(s_mail_count(fx, "for chat/burst", &rec), 1);
    json_t *problems = json_object_get(rec, "problems");
    if (json_array_size(problems) != 0) {
        char *d = json_dumps(problems, 0);
        fprintf(stderr, "mail problems: %s\n", d);
        free(d);
    }
    assert_int_equal(json_array_size(problems), 0);
    assert_true(json_is_true(json_object_get(rec, "tls")));
    assert_string_equal(json_string_value(json_object_get(rec, "auth_user")), S_SMTP_USER);
    assert_string_equal(json_string_value(json_object_get(rec, "mail_from")),
                        "sentinel@" S_FROM_DOMAIN);
    assert_int_equal(json_array_size(json_object_get(rec, "rcpt_tos")), 2);
    json_t *hdr = json_object_get(rec, "headers");
    static const char *const one_each[] = {"date", "from", "to", "subject", "message-id"};
    for (size_t i = 0; i < SN_ARRAY_LEN(one_each); i++)
        assert_int_equal(json_array_size(json_object_get(hdr, one_each[i])), 1);
    const char *to = json_string_value(json_array_get(json_object_get(hdr, "to"), 0));
    assert_non_null(strstr(to, "ops@example.org"));
    assert_non_null(strstr(to, "dev@example.org"));
    assert_non_null(strstr(json_string_value(json_object_get(rec, "subject")), "[Sentinel]"));
    assert_non_null(strstr(json_string_value(json_object_get(rec, "body")), S_REASON));
    char *nid = s_mail_nid(rec);
    assert_true(sn_id_is_valid(nid));
    json_decref(rec);
    /* The same notification everywhere: the Discord footer names the mail's id. */
    assert_non_null(strstr(footer, nid));
    json_decref(m);

    /* The notification log: each channel sent once, by one of the two replicas. */
    for (size_t c = 0; c < SN_ARRAY_LEN(s_channels); c++) {
        char *v = s_nlog(fx, nid, s_channels[c]);
        assert_non_null(v);
        assert_true(strncmp(v, "sent n1 ", 8) == 0 || strncmp(v, "sent n2 ", 8) == 0);
        free(v);
    }
    free(nid);
}

/* ---- (2) 429s waited out exactly, even by the other replica ------------------------------ */

/* True when a line of @path contains both @a and @b. */
static bool s_log_line_has(const char *path, const char *a, const char *b)
{
    char *text = sn_test_read_file(path);
    if (!text)
        return false;
    bool found = false;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && !found;
         line = strtok_r(NULL, "\n", &save))
        found = strstr(line, a) && strstr(line, b);
    free(text);
    return found;
}

typedef struct {
    s_fx_t *fx;
    int which; /* out: 1 = n1, 2 = n2 logged the Discord retry */
} s_who_t;

/* The replica that got both 429s (one step: tg, slack, discord, mail) has logged the
 * Discord retry and closed the step (no claim left, the mail is out). */
static bool s_limited_step_done(void *arg)
{
    s_who_t *w = arg;
    char *want = sn_strdupf(" in %d ms", S_DC_RETRY_MS);
    w->which = 0;
    for (int i = 1; i <= 2 && !w->which; i++) {
        sn_mesh_agent_t *a = sn_mesh_find(&w->fx->mesh, i == 1 ? "n1" : "n2");
        if (a && s_log_line_has(a->log, "channel discord: ", want))
            w->which = i;
    }
    free(want);
    return w->which && s_mail_count(w->fx, "for chat/limited", NULL) == 1 &&
           s_keys(w->fx, "notify:group:*:claim") == 0;
}

/* The consumer @name of the notifier group has not read for at least @ms. */
typedef struct {
    s_fx_t *fx;
    const char *name;
    long long ms;
} s_idle_t;

static bool s_consumer_idle(void *arg)
{
    s_idle_t *w = arg;
    char *key = sn_strdupf("%sevents", w->fx->mesh.ns);
    redisReply *r = redisCommand(w->fx->raw, "XINFO CONSUMERS %s notifier", key);
    free(key);
    bool ok = false;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *c = r->element[i];
        const char *name = NULL;
        long long idle = -1;
        for (size_t k = 0; c->type == REDIS_REPLY_ARRAY && k + 1 < c->elements; k += 2) {
            const char *f = c->element[k]->str;
            if (f && strcmp(f, "name") == 0)
                name = c->element[k + 1]->str;
            else if (f && strcmp(f, "idle") == 0)
                idle = c->element[k + 1]->integer;
        }
        if (name && strcmp(name, w->name) == 0)
            ok = idle >= w->ms;
    }
    if (r)
        freeReplyObject(r);
    return ok;
}

static bool s_refused_two(void *arg)
{
    return s_stats(arg).refused >= 2;
}

#define S_LIM_GROUPS 3

static void test_chat_429_waited_out_exactly(void **state)
{
    s_fx_t *fx = *state;
    /* The next Telegram call gets 429 retry_after 4, the next Discord call 429 with a float
     * retry_after of 2.5 s (its Retry-After header says 3). */
    char *script = sn_strdupf("{\"reset\": true, \"telegram\": [\"429:%d\"], \"discord\": "
                              "[\"429:%s\"], \"discord_limit\": 50}",
                              S_TG_RETRY_S, S_DC_RETRY);
    s_chat_ctl(fx, script);
    free(script);
    char id[SN_ID_LEN + 1];
    s_commit(fx, "run.failed", "chat", "limited", id);
    assert_true(sn_test_wait_for(s_refused_two, fx, 15000));
    double limited_at = s_now_s();
    /* Exactly the waits asked for: the replica logs the retry in 4000 and 2500 ms. */
    s_who_t who = {.fx = fx};
    assert_true(sn_test_wait_for(s_limited_step_done, &who, 10000));
    sn_mesh_agent_t *x = sn_mesh_find(&fx->mesh, who.which == 1 ? "n1" : "n2");
    char *tg_wait = sn_strdupf(" in %d ms", S_TG_RETRY_S * 1000);
    assert_true(s_log_line_has(x->log, "channel tg: ", tg_wait));
    free(tg_wait);
    /* Slack and mail did not wait for the others. */
    assert_int_equal(s_chat_count(fx, "slack", "for chat/limited", NULL), 1);

    /* The replica that was told to wait pauses; the other one knows nothing of the 429s
     * from its own calls, and must still not call Telegram or Discord before the waits are
     * over when new groups for them come due. */
    pid_t xpid = who.which == 1 ? fx->n1 : fx->n2;
    assert_int_equal(kill(xpid, SIGSTOP), 0);
    s_idle_t idle = {.fx = fx, .name = x->instance, .ms = 800}; /* its last read is over */
    assert_true(sn_test_wait_for(s_consumer_idle, &idle, 5000));
    char lim_ids[S_LIM_GROUPS][SN_ID_LEN + 1];
    char needles[S_LIM_GROUPS][32];
    for (int g = 0; g < S_LIM_GROUPS; g++) {
        char env_name[16];
        snprintf(env_name, sizeof env_name, "lim%d", g);
        snprintf(needles[g], sizeof needles[g], "for chat/%s", env_name);
        s_commit(fx, "run.failed", "chat", env_name, lim_ids[g]);
    }
    for (int g = 0; g < S_LIM_GROUPS; g++) {
        s_wait_t w = {.fx = fx, .needle = needles[g]};
        bool ok = sn_test_wait_for(s_on_slack, &w, 10000);
        if (!ok)
            kill(xpid, SIGCONT);
        assert_true(ok);
    }
    s_stats_t mid = s_stats(fx);
    assert_int_equal(kill(xpid, SIGCONT), 0);
    assert_int_equal(mid.violations, 0);
    assert_true(s_now_s() - limited_at < S_TG_RETRY_S); /* that was inside the wait */

    s_wait_t w = {.fx = fx, .needle = "for chat/limited"};
    assert_true(sn_test_wait_for(s_on_telegram, &w, 15000));
    double sent_at = s_now_s();
    assert_true(sent_at - limited_at < S_TG_RETRY_S + 1.5); /* not much later either */
    assert_true(sn_test_wait_for(s_on_every_channel, &w, 10000));
    for (int g = 0; g < S_LIM_GROUPS; g++) {
        s_wait_t wg = {.fx = fx, .needle = needles[g]};
        assert_true(sn_test_wait_for(s_on_every_channel, &wg, 15000));
    }
    s_expect_once_everywhere(fx, "for chat/limited");
    for (int g = 0; g < S_LIM_GROUPS; g++)
        s_expect_once_everywhere(fx, needles[g]);
    /* Nothing was sent early: no violation, no 429 but the two scripted ones, one request
     * per message plus the refused one. */
    s_stats_t st = s_stats(fx);
    if (st.violations || st.refused != 2)
        fprintf(stderr, "violations %d refused %d requests tg %d discord %d\n", st.violations,
                st.refused, st.requests[0], st.requests[2]);
    assert_int_equal(st.violations, 0);
    assert_int_equal(st.refused, 2);
    assert_int_equal(st.requests[0], S_LIM_GROUPS + 2);
    assert_int_equal(st.requests[1], S_LIM_GROUPS + 1);
    assert_int_equal(st.requests[2], S_LIM_GROUPS + 2);
    assert_true(sn_mesh_wait_service(&fx->mesh, "notify.silence", 2, 15000));
}

/* ---- (3) silences ----------------------------------------------------------------------- */

static sn_envelope_t *s_silence_call(s_fx_t *fx, Sentinel__V1__SilenceRequest *body)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &fx->src, "notify.silence", id);
    sn_envelope_add_label(&env, "on_behalf_of", "chat-tester");
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_SILENCE_REQUEST;
    env.silence_request = body;
    sn_envelope_t *reply = NULL;
    sn_rc_t rc = sn_mesh_call(&fx->mesh, "notify.silence", &env, 5000, &reply, NULL);
    sn_envelope_fini_labels(&env);
    return rc == SN_OK ? reply : NULL;
}

static bool s_past(void *arg)
{
    return sn_wall_ms() > *(const int64_t *)arg;
}

/* Every chat channel logged its part of a batch as muted. */
static bool s_muted_everywhere(void *arg)
{
    for (size_t c = 0; c < SN_ARRAY_LEN(s_channels); c++)
        if (s_nlogs_with(arg, s_channels[c], "muted") < 1)
            return false;
    return true;
}

static void test_chat_silence_holds_then_expires(void **state)
{
    s_fx_t *fx = *state;
    s_chat_ctl(fx, "{\"reset\": true}");
    char *m[] = {"project=chat", "environment=quiet"};
    Sentinel__V1__Silence s = SENTINEL__V1__SILENCE__INIT;
    s.matchers = m;
    s.n_matchers = 2;
    s.comment = "chat e2e maintenance";
    Sentinel__V1__SilenceRequest body = SENTINEL__V1__SILENCE_REQUEST__INIT;
    body.op = "create";
    body.silence = &s;
    body.duration = "3s";
    sn_envelope_t *reply = s_silence_call(fx, &body);
    assert_non_null(reply);
    assert_int_equal(reply->body_case, SENTINEL__V1__ENVELOPE__BODY_SILENCE_LIST);
    assert_int_equal(reply->silence_list->n_silences, 1);
    char sid[SN_ID_LEN + 1];
    sn_strlcpy(sid, reply->silence_list->silences[0]->id, sizeof sid);
    assert_string_equal(reply->silence_list->silences[0]->state, "active");
    int64_t ends = reply->silence_list->silences[0]->ends_unix_ms;
    sn_envelope_free(&reply);

    /* Matching: muted on every chat channel. Not matching: sent. */
    char quiet[SN_ID_LEN + 1], loud[SN_ID_LEN + 1], later[SN_ID_LEN + 1];
    s_commit(fx, "run.failed", "chat", "quiet", quiet);
    s_commit(fx, "run.failed", "chat", "loudly", loud);
    char *prefix = sn_strdupf("silenced %s", sid);
    s_muted_t mu = {.fx = fx, .id = quiet, .prefix = prefix};
    assert_true(sn_test_wait_for(s_is_muted, &mu, 10000));
    free(prefix);
    s_wait_t wl = {.fx = fx, .needle = "for chat/loudly"};
    assert_true(sn_test_wait_for(s_on_every_channel, &wl, 15000));
    assert_true(sn_test_wait_for(s_muted_everywhere, fx, 5000));
    for (size_t c = 0; c < SN_ARRAY_LEN(s_channels); c++)
        assert_int_equal(s_nlogs_with(fx, s_channels[c], "muted"), 1);
    s_expect_nowhere(fx, "for chat/quiet");
    s_expect_once_everywhere(fx, "for chat/loudly");

    /* The silence runs out: the next event of that group goes out, alone. */
    assert_true(sn_test_wait_for(s_past, &ends, 10000));
    s_commit(fx, "run.failed", "chat", "quiet", later);
    s_wait_t wq = {.fx = fx, .needle = "for chat/quiet"};
    assert_true(sn_test_wait_for(s_on_every_channel, &wq, 15000));
    s_expect_once_everywhere(fx, "1 run.failed event for chat/quiet");
    json_t *tg = NULL;
    assert_int_equal(s_chat_count(fx, "telegram", "for chat/quiet", &tg), 1);
    const char *text = json_string_value(json_object_get(tg, "text"));
    assert_non_null(strstr(text, later));
    assert_null(strstr(text, quiet)); /* the silenced event is not sent afterwards */
    json_decref(tg);
    assert_int_equal(s_stats(fx).violations, 0);

    Sentinel__V1__SilenceRequest list = SENTINEL__V1__SILENCE_REQUEST__INIT;
    list.op = "list";
    list.include_expired = true;
    reply = s_silence_call(fx, &list);
    assert_non_null(reply);
    assert_int_equal(reply->body_case, SENTINEL__V1__ENVELOPE__BODY_SILENCE_LIST);
    bool expired = false;
    for (size_t i = 0; i < reply->silence_list->n_silences; i++)
        if (strcmp(reply->silence_list->silences[i]->id, sid) == 0)
            expired = strcmp(reply->silence_list->silences[i]->state, "expired") == 0;
    assert_true(expired);
    sn_envelope_free(&reply);
}

/* ---- (4) inhibition ---------------------------------------------------------------------- */

static void test_chat_inhibition_holds(void **state)
{
    s_fx_t *fx = *state;
    s_chat_ctl(fx, "{\"reset\": true}");
    char failed[SN_ID_LEN + 1], stuck[SN_ID_LEN + 1], other[SN_ID_LEN + 1];
    /* A critical deploy failure, the warning it causes (same project and environment), and
     * a warning of another environment. */
    s_commit(fx, "deploy.failed", "chat", "inhibit", failed);
    s_commit(fx, "deploy.stuck", "chat", "inhibit", stuck);
    s_commit(fx, "deploy.stuck", "chat", "elsewhere", other);
    s_wait_t wf = {.fx = fx, .needle = "deploy.failed event for chat/inhibit"};
    assert_true(sn_test_wait_for(s_on_every_channel, &wf, 15000));
    s_wait_t we = {.fx = fx, .needle = "deploy.stuck event for chat/elsewhere"};
    assert_true(sn_test_wait_for(s_on_every_channel, &we, 15000));
    s_muted_t mu = {.fx = fx, .id = stuck, .prefix = "inhibited by deploy.failed"};
    assert_true(sn_test_wait_for(s_is_muted, &mu, 10000));
    s_expect_nowhere(fx, "deploy.stuck event for chat/inhibit");
    s_expect_once_everywhere(fx, "deploy.failed event for chat/inhibit");
    s_expect_once_everywhere(fx, "deploy.stuck event for chat/elsewhere");
    json_t *tg = NULL;
    assert_int_equal(s_chat_count(fx, "telegram", "for chat/elsewhere", &tg), 1);
    assert_non_null(strstr(json_string_value(json_object_get(tg, "text")), "WARNING"));
    json_decref(tg);
}

/* ---- (6) a permanent Telegram error ----------------------------------------------------- */

static bool s_tgbad_failed(void *arg)
{
    return s_nlogs_with(arg, "tgbad", "failed ") >= 1;
}

static void test_chat_permanent_error_alerts_on_slack(void **state)
{
    s_fx_t *fx = *state;
    s_chat_ctl(fx, "{\"reset\": true}");
    char id[SN_ID_LEN + 1];
    s_commit(fx, "run.failed", "perm", "perm", id);
    s_wait_t w = {.fx = fx, .needle = S_ALERT_NAME_FAILED};
    assert_true(sn_test_wait_for(s_on_slack, &w, 15000));
    assert_true(sn_test_wait_for(s_tgbad_failed, fx, 5000));
    json_t *m = NULL;
    assert_int_equal(s_chat_count(fx, "slack", S_ALERT_NAME_FAILED, &m), 1);
    char *dump = json_dumps(m, 0);
    assert_non_null(strstr(dump, "tgbad"));
    assert_non_null(strstr(dump, "chat not found"));
    assert_null(strstr(dump, S_TG_TOKEN)); /* the token is in the URL path, never in text */
    free(dump);
    json_decref(m);
    /* Only Slack (the root route) got the alert; the bad chat was called once, and its
     * notification is logged failed for good. */
    assert_int_equal(s_chat_count(fx, "telegram", S_ALERT_NAME_FAILED, NULL), 0);
    assert_int_equal(s_chat_count(fx, "discord", S_ALERT_NAME_FAILED, NULL), 0);
    assert_int_equal(s_chat_count(fx, "telegram", "for perm/perm", NULL), 0);
    s_stats_t st = s_stats(fx);
    assert_int_equal(st.requests[0], 1);
    assert_int_equal(st.refused, 1);
    assert_int_equal(st.violations, 0);
    assert_int_equal(s_nlogs_with(fx, "tgbad", "retry "), 0);
}

/* ---- (5) both replicas killed inside group_wait ------------------------------------------ */

static void s_kill9(s_fx_t *fx, pid_t pid)
{
    assert_int_equal(kill(pid, SIGKILL), 0);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    for (size_t i = 0; i < fx->mesh.agent_count; i++)
        if (fx->mesh.agents[i].pid == pid)
            fx->mesh.agents[i].pid = -1;
}

static void test_chat_killed_inside_group_wait_loses_nothing(void **state)
{
    s_fx_t *fx = *state;
    s_chat_ctl(fx, "{\"reset\": true}");
    char ids[3][SN_ID_LEN + 1];
    for (int i = 0; i < 3; i++)
        s_commit(fx, "run.failed", "crash", "crash", ids[i]);
    s_muted_t g = {.fx = fx, .id = ids[2]};
    assert_true(sn_test_wait_for(s_in_group, &g, 5000));
    /* Both replicas die inside group_wait (3 s on this route): the group lives on in Redis. */
    s_kill9(fx, fx->n1);
    s_kill9(fx, fx->n2);
    s_expect_nowhere(fx, "for crash/crash");
    s_stats_t st = s_stats(fx);
    assert_int_equal(st.requests[0] + st.requests[1] + st.requests[2], 0);
    assert_true(s_in_group(&g));
    fx->n1 = s_spawn(fx, "notifier", "n1");
    fx->n2 = s_spawn(fx, "notifier", "n2");
    s_wait_t w = {.fx = fx, .needle = "for crash/crash"};
    assert_true(sn_test_wait_for(s_on_every_channel, &w, 20000));
    assert_true(sn_mesh_wait_service(&fx->mesh, "notify.silence", 2, 15000));
    s_expect_once_everywhere(fx, "3 run.failed events for crash/crash");
    json_t *rec = NULL;
    assert_int_equal(s_mail_count(fx, "for crash/crash", &rec), 1);
    char *nid = s_mail_nid(rec);
    json_decref(rec);
    for (size_t c = 0; c < SN_ARRAY_LEN(s_channels); c++) {
        char *v = s_nlog(fx, nid, s_channels[c]);
        assert_non_null(v);
        assert_true(strncmp(v, "sent ", 5) == 0);
        free(v);
    }
    free(nid);
    st = s_stats(fx);
    assert_int_equal(st.requests[0], 1);
    assert_int_equal(st.requests[1], 1);
    assert_int_equal(st.requests[2], 1);
    assert_int_equal(st.violations, 0);
}

int main(void)
{
    sn_log_init("test", "notify-chat");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_burst_is_one_message_per_channel),
        cmocka_unit_test(test_chat_429_waited_out_exactly),
        cmocka_unit_test(test_chat_silence_holds_then_expires),
        cmocka_unit_test(test_chat_inhibition_holds),
        cmocka_unit_test(test_chat_permanent_error_alerts_on_slack),
        cmocka_unit_test(test_chat_killed_inside_group_wait_loses_nothing),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
