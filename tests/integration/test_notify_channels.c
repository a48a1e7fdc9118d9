/* Integration tests for the notification channels (agents/edge/notify_channels.c), calling
 * notify_send directly against the fakes: tests/fakes/fake_chat.py (Telegram Bot API,
 * Slack incoming webhooks, Discord webhooks, each enforcing its contract and its rate
 * limits), tests/fakes/fake_smtp.py (aiosmtpd: STARTTLS with a certificate made here by
 * openssl, implicit TLS, no TLS, AUTH; it checks every message against RFC 5322) and
 * tests/integration/webhook_receiver_doc.py (a receiver of the signed webhook written from
 * the documentation alone), whose bodies are validated against the CDEvents schemas by
 * validate_cdevents.py. Also: the rendering helpers, channel validation, hangs bounded by
 * the channel timeout, and no secret in any log line (captured through sn_log_set_fd). */
#include "sn_test.h"

#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "notify_channels.h"
#include "sentinel/sn_cloudevents.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_log.h"

#define S_PYTHON "/usr/bin/python3"
#define S_TG_TOKEN "987654:AAH-secretTelegramToken_xyz"
#define S_SLACK_PATH "/services/T0TEST/B0TEST/slackSecretPart42"
#define S_DISCORD_ID "556677889900112233"
#define S_DISCORD_TOKEN "discord-secret-token-Zz9"
#define S_SMTP_USER "mailer"
#define S_SMTP_PASSWORD "smtp-Pa55word-secret"
#define S_HOOK_SECRET "hook-secret-0123456789abcdef"

typedef struct {
    char *dir;
    char *log_path;
    int log_fd;
    char *ca;
    int chat_port, smtp_port, smtps_port, plain_port, hook_port;
    pid_t chat, smtp, smtps, plain, hook;
    char *smtp_record, *smtps_record, *plain_record;
    char *hook_record, *hook_bodies;
    sn_http_t *http;
    notify_sender_t *sender;
    sn_config_t cfg;
} s_fx_t;

static s_fx_t *s_fx;

/* ---- helpers ------------------------------------------------------------------------------- */

static bool s_file_exists(void *arg)
{
    return access((const char *)arg, F_OK) == 0;
}

static pid_t s_spawn_fake(const char *const *args, const char *tag)
{
    char *ready = sn_strdupf("%s/%s.ready", s_fx->dir, tag);
    char *log = sn_strdupf("%s/%s.log", s_fx->dir, tag);
    char *argv[32];
    size_t n = 0;
    argv[n++] = (char *)S_PYTHON;
    for (; args[n - 1]; n++)
        argv[n] = (char *)args[n - 1];
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

static int s_run(char *const argv[])
{
    pid_t pid = sn_test_spawn(argv, NULL);
    assert_true(pid > 0);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* POST /__control to the chat fake. */
static void s_ctl(const char *json)
{
    char *url = sn_strdupf("http://127.0.0.1:%d/__control", s_fx->chat_port);
    const char *h[] = {"Content-Type: application/json", NULL};
    sn_http_request_t req = {
        .url = url, .headers = h, .body = json, .body_len = strlen(json), .timeout_ms = 5000};
    sn_http_response_t resp;
    assert_int_equal(sn_http_perform(s_fx->http, &req, &resp), SN_OK);
    assert_int_equal(resp.status, 200);
    sn_http_response_fini(&resp);
    free(url);
}

static json_t *s_get(const char *path)
{
    char *url = sn_strdupf("http://127.0.0.1:%d%s", s_fx->chat_port, path);
    sn_http_request_t req = {.url = url, .timeout_ms = 5000};
    sn_http_response_t resp;
    assert_int_equal(sn_http_perform(s_fx->http, &req, &resp), SN_OK);
    assert_int_equal(resp.status, 200);
    json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
    assert_non_null(j);
    sn_http_response_fini(&resp);
    free(url);
    return j;
}

static int s_violations(void)
{
    json_t *j = s_get("/__stats");
    int v = (int)json_integer_value(json_object_get(j, "violations"));
    json_decref(j);
    return v;
}

static int s_requests(const char *service)
{
    json_t *j = s_get("/__stats");
    int v = (int)json_integer_value(json_object_get(json_object_get(j, "requests"), service));
    json_decref(j);
    return v;
}

/* The last message the chat fake accepted for @service (new reference) or NULL. */
static json_t *s_last(const char *service)
{
    json_t *all = s_get("/__messages");
    json_t *found = NULL;
    size_t i;
    json_t *m;
    json_array_foreach(all, i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "service")), service) == 0)
            found = m;
    }
    if (found)
        json_incref(found);
    json_decref(all);
    return found;
}

static size_t s_count(const char *service)
{
    json_t *all = s_get("/__messages");
    size_t n = 0, i;
    json_t *m;
    json_array_foreach(all, i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "service")), service) == 0)
            n++;
    }
    json_decref(all);
    return n;
}

typedef struct {
    notify_sender_t *sender;
    const sn_channel_config_t *ch;
} s_ready_t;

static bool s_is_ready(void *arg)
{
    s_ready_t *r = arg;
    return notify_sender_ready_in_ms(r->sender, r->ch) == 0;
}

static notify_message_t s_msg(const char *title, const char *text)
{
    static const char *const s_labels[] = {"project", "hello", "environment", "production", NULL};
    return (notify_message_t){.severity = "critical",
                              .title = title,
                              .text = text,
                              .event_type = "deploy.rolled_back",
                              .event_id = "01JTESTEVENT0000000000000A",
                              .subject = "hello/production",
                              .cloudevent_json = "{\"specversion\":\"1.0\",\"id\":\"x\"}",
                              .labels_kv = s_labels};
}

static sn_channel_config_t s_telegram(const char *chat_id)
{
    static char base[64];
    snprintf(base, sizeof base, "http://127.0.0.1:%d/", s_fx->chat_port);
    return (sn_channel_config_t){.name = (char *)"tg",
                                 .type = (char *)"telegram",
                                 .api_base = base,
                                 .token = (char *)S_TG_TOKEN,
                                 .chat_id = (char *)chat_id,
                                 .timeout_ms = 3000};
}

static sn_channel_config_t s_slack(char *url_buf, size_t len, const char *path)
{
    snprintf(url_buf, len, "http://127.0.0.1:%d%s", s_fx->chat_port, path);
    return (sn_channel_config_t){
        .name = (char *)"sl", .type = (char *)"slack", .url = url_buf, .timeout_ms = 3000};
}

static sn_channel_config_t s_discord(char *url_buf, size_t len, const char *id, const char *tok)
{
    snprintf(url_buf, len, "http://127.0.0.1:%d/api/v10/webhooks/%s/%s", s_fx->chat_port, id, tok);
    return (sn_channel_config_t){
        .name = (char *)"dc", .type = (char *)"discord", .url = url_buf, .timeout_ms = 3000};
}

static sn_channel_config_t s_email(char *url, size_t len, const char *scheme, int port, char **to)
{
    snprintf(url, len, "%s://127.0.0.1:%d/ci.example.org", scheme, port);
    return (sn_channel_config_t){.name = (char *)"mail",
                                 .type = (char *)"email",
                                 .url = url,
                                 .from = (char *)"Sentinel <sentinel@example.org>",
                                 .to = to,
                                 .username = (char *)S_SMTP_USER,
                                 .password = (char *)S_SMTP_PASSWORD,
                                 .starttls = true,
                                 .timeout_ms = 5000};
}

/* The last JSON line of @path (new reference). */
static json_t *s_last_line(const char *path)
{
    char *all = sn_test_read_file(path);
    assert_non_null(all);
    size_t n = strlen(all);
    while (n > 0 && all[n - 1] == '\n')
        all[--n] = '\0';
    char *nl = strrchr(all, '\n');
    json_t *j = json_loads(nl ? nl + 1 : all, 0, NULL);
    assert_non_null(j);
    free(all);
    return j;
}

static int s_lines(const char *path)
{
    return sn_test_count_in_file(path, "\n");
}

/* A TCP socket that listens and never accepts: connections complete in the backlog and
 * then nothing is ever said (a hung server). */
static int s_black_hole(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 8), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* ---- setup ------------------------------------------------------------------------------- */

static int s_group_setup(void **state)
{
    s_fx_t *fx = sn_calloc(1, sizeof *fx);
    s_fx = fx;
    fx->dir = sn_test_tmpdir("notify-channels");
    fx->log_path = sn_strdupf("%s/sentinel.log", fx->dir);
    fx->log_fd = open(fx->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    assert_true(fx->log_fd >= 0);
    sn_log_set_fd(fx->log_fd);
    sn_log_set_level(SN_LOG_DEBUG); /* every line the module can write is checked */

    /* A self-signed certificate for 127.0.0.1, used as its own CA by the client. */
    fx->ca = sn_strdupf("%s/cert.pem", fx->dir);
    char *key = sn_strdupf("%s/key.pem", fx->dir);
    char *argv[] = {(char *)"/usr/bin/openssl",
                    (char *)"req",
                    (char *)"-x509",
                    (char *)"-newkey",
                    (char *)"ec",
                    (char *)"-pkeyopt",
                    (char *)"ec_paramgen_curve:prime256v1",
                    (char *)"-nodes",
                    (char *)"-keyout",
                    key,
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

    char ports[5][16];
    int *pp[] = {&fx->chat_port, &fx->smtp_port, &fx->smtps_port, &fx->plain_port, &fx->hook_port};
    for (int i = 0; i < 5; i++) {
        *pp[i] = sn_test_free_port();
        snprintf(ports[i], sizeof ports[i], "%d", *pp[i]);
    }
    char *chat = sn_strdupf("%s/tests/fakes/fake_chat.py", SN_SOURCE_DIR);
    char *smtp = sn_strdupf("%s/tests/fakes/fake_smtp.py", SN_SOURCE_DIR);
    char *hook = sn_strdupf("%s/tests/integration/webhook_receiver_doc.py", SN_SOURCE_DIR);
    char *dc = sn_strdupf("%s/%s", S_DISCORD_ID, S_DISCORD_TOKEN);
    fx->smtp_record = sn_strdupf("%s/smtp.jsonl", fx->dir);
    fx->smtps_record = sn_strdupf("%s/smtps.jsonl", fx->dir);
    fx->plain_record = sn_strdupf("%s/plain.jsonl", fx->dir);
    fx->hook_record = sn_strdupf("%s/hook.jsonl", fx->dir);
    fx->hook_bodies = sn_strdupf("%s/hook-bodies.jsonl", fx->dir);
    const char *a_chat[] = {chat,
                            "--port",
                            ports[0],
                            "--telegram-token",
                            S_TG_TOKEN,
                            "--slack-path",
                            S_SLACK_PATH,
                            "--discord-webhook",
                            dc,
                            "--telegram-chats",
                            "12345,-1001234567890,@alerts,666",
                            NULL};
    fx->chat = s_spawn_fake(a_chat, "chat");
    const char *a_smtp[] = {smtp,    "--port",   ports[1],    "--record",   fx->smtp_record,
                            "--tls", "starttls", "--cert",    fx->ca,       "--key",
                            key,     "--user",   S_SMTP_USER, "--password", S_SMTP_PASSWORD,
                            NULL};
    fx->smtp = s_spawn_fake(a_smtp, "smtp");
    const char *a_smtps[] = {smtp,    "--port",   ports[2], "--record", fx->smtps_record,
                             "--tls", "implicit", "--cert", fx->ca,     "--key",
                             key,     NULL};
    fx->smtps = s_spawn_fake(a_smtps, "smtps");
    const char *a_plain[] = {smtp,    "--port", ports[3], "--record", fx->plain_record,
                             "--tls", "none",   NULL};
    fx->plain = s_spawn_fake(a_plain, "plain");
    const char *a_hook[] = {hook,       "--port",        ports[4],   "--secret",      S_HOOK_SECRET,
                            "--record", fx->hook_record, "--bodies", fx->hook_bodies, NULL};
    fx->hook = s_spawn_fake(a_hook, "hook");
    free(chat);
    free(smtp);
    free(hook);
    free(dc);
    free(key);
    fx->http = sn_http_new();
    assert_non_null(fx->http);
    fx->sender = notify_sender_new(&fx->cfg);
    assert_non_null(fx->sender);
    notify_sender_set_ca_file(fx->sender, fx->ca);
    /* As the notifier does at start: every channel prepared, its secrets registered. */
    char why[256], u1[256], u2[256], u3[128];
    char *to[] = {(char *)"ops@example.org", NULL};
    sn_channel_config_t chans[] = {s_telegram("12345"),
                                   s_slack(u1, sizeof u1, S_SLACK_PATH),
                                   s_discord(u2, sizeof u2, S_DISCORD_ID, S_DISCORD_TOKEN),
                                   s_email(u3, sizeof u3, "smtp", fx->smtp_port, to),
                                   {.name = (char *)"hook",
                                    .type = (char *)"webhook",
                                    .url = u1,
                                    .secret = (char *)S_HOOK_SECRET}};
    for (size_t i = 0; i < SN_ARRAY_LEN(chans); i++)
        assert_int_equal(notify_channel_prepare(&chans[i], why, sizeof why), SN_OK);
    *state = fx;
    return 0;
}

static int s_group_teardown(void **state)
{
    s_fx_t *fx = s_fx;
    int bad = 0;
    pid_t pids[] = {fx->chat, fx->smtp, fx->smtps, fx->plain, fx->hook};
    for (size_t i = 0; i < SN_ARRAY_LEN(pids); i++) {
        int st = sn_test_stop(pids[i], SIGTERM, 5000);
        if (st == -1)
            bad++;
    }
    notify_sender_destroy(&fx->sender);
    sn_http_destroy(&fx->http);
    sn_log_set_fd(2);
    close(fx->log_fd);
    sn_test_rmdir(fx->dir);
    free(fx->dir);
    free(fx->log_path);
    free(fx->ca);
    free(fx->smtp_record);
    free(fx->smtps_record);
    free(fx->plain_record);
    free(fx->hook_record);
    free(fx->hook_bodies);
    free(fx);
    return bad == 0 ? 0 : -1;
}

/* ---- rendering and validation ------------------------------------------------------------- */

static void test_notify_channels_rendering(void **state)
{
    char *e = notify_escape_html("a<b>&\"c\" <i>");
    assert_string_equal(e, "a&lt;b&gt;&amp;&quot;c&quot; &lt;i&gt;");
    free(e);
    e = notify_escape_html(NULL);
    assert_string_equal(e, "");
    free(e);

    assert_int_equal(notify_utf16_len("abc"), 3);
    assert_int_equal(notify_utf16_len("\xc3\xa9"), 1);         /* é */
    assert_int_equal(notify_utf16_len("\xf0\x9f\x9a\x80"), 2); /* rocket: a surrogate pair */
    assert_int_equal(notify_utf16_len("\xff"
                                      "a"),
                     2); /* invalid byte counts one */

    char *t = notify_truncate_utf16("hello", 5);
    assert_string_equal(t, "hello");
    free(t);
    t = notify_truncate_utf16("hello world", 6);
    assert_string_equal(t, "hello\xe2\x80\xa6");
    assert_int_equal(notify_utf16_len(t), 6);
    free(t);
    /* A surrogate pair is never split: 3 units of room keep "a" + the ellipsis. */
    t = notify_truncate_utf16("a\xf0\x9f\x9a\x80\xf0\x9f\x9a\x80", 3);
    assert_string_equal(t, "a\xe2\x80\xa6");
    free(t);
    t = notify_truncate_utf16("abc", 0);
    assert_string_equal(t, "");
    free(t);

    char *s = notify_rfc2047_subject("plain subject");
    assert_string_equal(s, "plain subject");
    free(s);
    s = notify_rfc2047_subject("line\r\nBcc: evil@example.org");
    assert_null(strchr(s, '\r'));
    assert_null(strchr(s, '\n'));
    free(s);
    s = notify_rfc2047_subject("=?UTF-8?B?Zm9v?= spoof");
    assert_true(strncmp(s, "=?UTF-8?B?", 10) == 0);
    assert_null(strstr(s, "spoof")); /* encoded, not passed through */
    free(s);
    /* Long non-ASCII: several encoded-words, each <= 75 chars, decoding back exactly. */
    const char *word = "D\xc3\xa9ploiement \xc3\xa9"
                       "chou\xc3\xa9 \xe2\x9c\x93 ";
    char *long_subject = sn_strdupf("%s%s%s%s%s", word, word, word, word, word);
    s = notify_rfc2047_subject(long_subject);
    char *decoded = sn_strdup("");
    int words = 0;
    for (char *p = s; (p = strstr(p, "=?UTF-8?B?")) != NULL;) {
        char *end = strstr(p + 10, "?=");
        assert_non_null(end);
        assert_true(end + 2 - p <= 75);
        uint8_t *raw = NULL;
        size_t raw_len = 0;
        assert_int_equal(sn_json_base64_decode(p + 10, (size_t)(end - p - 10), &raw, &raw_len),
                         SN_OK);
        char *joined = sn_strdupf("%s%.*s", decoded, (int)raw_len, (const char *)raw);
        free(decoded);
        decoded = joined;
        free(raw);
        words++;
        p = end + 2;
        if (*p) {
            assert_memory_equal(p, "\r\n ", 3); /* folded */
        }
    }
    assert_true(words >= 2);
    assert_string_equal(decoded, long_subject);
    free(decoded);
    free(s);
    free(long_subject);

    assert_string_equal(notify_outcome_name(NOTIFY_SENT), "sent");
    assert_string_equal(notify_outcome_name(NOTIFY_RETRY), "retry");
    assert_string_equal(notify_outcome_name(NOTIFY_PERMANENT), "permanent");
}

static void test_notify_channels_prepare(void **state)
{
    char why[256];
    char *to_ok[] = {(char *)"ops@example.org", NULL};
    char *to_crlf[] = {(char *)"ops@example.org\r\nBcc: x@y", NULL};
    char *to_none[] = {NULL};
    const struct {
        sn_channel_config_t ch;
        bool ok;
    } cases[] = {
        {{.name = (char *)"l", .type = (char *)"log"}, true},
        {{.name = (char *)"l", .type = (char *)"log", .min_severity = (char *)"loud"}, false},
        {{.name = (char *)"x", .type = (char *)"pager"}, false},
        {{.name = (char *)"x", .type = NULL}, false},
        {{.name = (char *)"f", .type = (char *)"file"}, false},
        {{.name = (char *)"f", .type = (char *)"file", .path = (char *)"/tmp/x"}, true},
        {{.name = (char *)"w",
          .type = (char *)"webhook",
          .url = (char *)"http://h/x",
          .secret = (char *)"${env:NOPE}"},
         false},
        {{.name = (char *)"w",
          .type = (char *)"webhook",
          .url = (char *)"ftp://h/x",
          .secret = (char *)"abcdefgh"},
         false},
        {{.name = (char *)"w",
          .type = (char *)"webhook",
          .url = (char *)"https://h/x",
          .secret = (char *)"abcdefgh"},
         true},
        {{.name = (char *)"t", .type = (char *)"telegram", .chat_id = (char *)"1"}, false},
        {{.name = (char *)"t",
          .type = (char *)"telegram",
          .token = (char *)"${env:TG}",
          .chat_id = (char *)"1"},
         false},
        {{.name = (char *)"t",
          .type = (char *)"telegram",
          .token = (char *)"12:ab/../x",
          .chat_id = (char *)"1"},
         false},
        {{.name = (char *)"t", .type = (char *)"telegram", .token = (char *)"12:abcdef"}, false},
        {{.name = (char *)"t",
          .type = (char *)"telegram",
          .token = (char *)"12:abcdef",
          .chat_id = (char *)"-100123",
          .api_base = (char *)"file:///etc"},
         false},
        {{.name = (char *)"t",
          .type = (char *)"telegram",
          .token = (char *)"12:abcdef",
          .chat_id = (char *)"-100123"},
         true},
        {{.name = (char *)"s", .type = (char *)"slack"}, false},
        {{.name = (char *)"s", .type = (char *)"slack", .url = (char *)"https://hooks/x"}, true},
        {{.name = (char *)"d", .type = (char *)"discord", .url = (char *)"hooks"}, false},
        {{.name = (char *)"e",
          .type = (char *)"email",
          .url = (char *)"http://mail",
          .from = (char *)"a@b",
          .to = to_ok},
         false},
        {{.name = (char *)"e", .type = (char *)"email", .url = (char *)"smtp://mail", .to = to_ok},
         false},
        {{.name = (char *)"e",
          .type = (char *)"email",
          .url = (char *)"smtp://mail",
          .from = (char *)"a@b",
          .to = to_none},
         false},
        {{.name = (char *)"e",
          .type = (char *)"email",
          .url = (char *)"smtp://mail",
          .from = (char *)"a@b",
          .to = to_crlf,
          .starttls = true},
         false},
        {{.name = (char *)"e",
          .type = (char *)"email",
          .url = (char *)"smtp://mail",
          .from = (char *)"a@b\nBcc: c@d",
          .to = to_ok,
          .starttls = true},
         false},
        {{.name = (char *)"e",
          .type = (char *)"email",
          .url = (char *)"smtp://mail",
          .from = (char *)"J\xc3\xbcrgen <j@b>",
          .to = to_ok,
          .starttls = true},
         false},
        {{.name = (char *)"e",
          .type = (char *)"email",
          .url = (char *)"smtp://mail",
          .from = (char *)"a@b",
          .to = to_ok,
          .password = (char *)"pw-secret",
          .starttls = false},
         false},
        {{.name = (char *)"e",
          .type = (char *)"email",
          .url = (char *)"smtp://mail",
          .from = (char *)"a@b",
          .to = to_ok,
          .password = (char *)"pw-secret",
          .starttls = true},
         true},
        {{.name = (char *)"e",
          .type = (char *)"email",
          .url = (char *)"smtps://mail",
          .from = (char *)"a@b",
          .to = to_ok,
          .password = (char *)"pw-secret"},
         true},
    };
    for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
        why[0] = 'x';
        sn_rc_t rc = notify_channel_prepare(&cases[i].ch, why, sizeof why);
        if ((rc == SN_OK) != cases[i].ok)
            fail_msg("case %zu (%s): rc %d why %s", i, cases[i].ch.type, rc, why);
        if (rc != SN_OK)
            assert_true(why[0] != '\0' && why[0] != 'x');
    }
}

/* ---- log and file -------------------------------------------------------------------------- */

static void test_notify_channels_log_and_file(void **state)
{
    int64_t ra = 123;
    char why[256];
    sn_channel_config_t log = {.name = (char *)"ops-log", .type = (char *)"log"};
    notify_message_t m = s_msg("deploy d1 of hello rolled back", NULL);
    assert_int_equal(notify_send(s_fx->sender, &log, &m, &ra, why, sizeof why), NOTIFY_SENT);
    assert_int_equal(ra, 0);
    assert_string_equal(why, "");
    assert_int_equal(sn_test_count_in_file(s_fx->log_path,
                                           "notify: critical deploy.rolled_back "
                                           "subject=hello/production id=01JTESTEVENT0000000000000A:"
                                           " deploy d1 of hello rolled back"),
                     1);

    char *path = sn_strdupf("%s/notifications.jsonl", s_fx->dir);
    sn_channel_config_t file = {.name = (char *)"ops-file", .type = (char *)"file", .path = path};
    assert_int_equal(notify_send(s_fx->sender, &file, &m, &ra, why, sizeof why), NOTIFY_SENT);
    assert_int_equal(notify_send(s_fx->sender, &file, &m, &ra, why, sizeof why), NOTIFY_SENT);
    char *content = sn_test_read_file(path);
    assert_string_equal(content, "{\"specversion\":\"1.0\",\"id\":\"x\"}\n"
                                 "{\"specversion\":\"1.0\",\"id\":\"x\"}\n");
    free(content);
    /* No CloudEvent: a programming slip of the caller, never retried. */
    notify_message_t bare = m;
    bare.cloudevent_json = NULL;
    assert_int_equal(notify_send(s_fx->sender, &file, &bare, &ra, why, sizeof why),
                     NOTIFY_PERMANENT);
    assert_int_equal(ra, -1);
    /* A directory that does not exist (yet): retried. */
    sn_channel_config_t nodir = {
        .name = (char *)"f2", .type = (char *)"file", .path = (char *)"/nonexistent-dir/x"};
    assert_int_equal(notify_send(s_fx->sender, &nodir, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_non_null(strstr(why, "No such file"));
    free(path);
}

/* ---- Telegram ------------------------------------------------------------------------------ */

static void test_notify_channels_telegram_delivers_html(void **state)
{
    s_ctl("{\"reset\": true}");
    int64_t ra = -5;
    char why[256];
    sn_channel_config_t ch = s_telegram("12345");
    notify_message_t m = s_msg("deploy <b>d1</b> & \"x\" rolled back", "a < b > c & d\n<script>");
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_SENT);
    assert_int_equal(ra, 0);
    json_t *msg = s_last("telegram");
    assert_non_null(msg);
    assert_int_equal(json_integer_value(json_object_get(msg, "chat_id")), 12345);
    assert_string_equal(json_string_value(json_object_get(msg, "parse_mode")), "HTML");
    const char *visible = json_string_value(json_object_get(msg, "text"));
    assert_string_equal(visible, "[CRITICAL] deploy <b>d1</b> & \"x\" rolled back\n\n"
                                 "a < b > c & d\n<script>\n\nproject: hello\n"
                                 "environment: production");
    const char *raw = json_string_value(json_object_get(msg, "raw"));
    assert_true(strncmp(raw, "<b>[CRITICAL] deploy &lt;b&gt;d1&lt;/b&gt; &amp; ", 47) == 0);
    assert_non_null(strstr(raw, "&lt;script&gt;"));
    json_t *prev = json_object_get(json_object_get(msg, "json"), "link_preview_options");
    assert_true(json_is_true(json_object_get(prev, "is_disabled")));
    json_decref(msg);

    /* A supergroup id beyond 32 bits goes out as a JSON integer. */
    sn_channel_config_t big = s_telegram("-1001234567890");
    assert_int_equal(notify_send(s_fx->sender, &big, &m, &ra, why, sizeof why), NOTIFY_SENT);
    msg = s_last("telegram");
    assert_true(json_is_integer(json_object_get(msg, "chat_id")));
    assert_true(json_integer_value(json_object_get(msg, "chat_id")) == -1001234567890LL);
    json_decref(msg);
    sn_channel_config_t named = s_telegram("@alerts");
    assert_int_equal(notify_send(s_fx->sender, &named, &m, &ra, why, sizeof why), NOTIFY_SENT);

    /* 6000 characters with astral ones: cut to the 4096-unit limit, ellipsis at the end
     * (the fake refuses anything longer). */
    char *longtext = sn_malloc(6000 * 4 + 1);
    size_t o = 0;
    for (int i = 0; i < 6000; i++) {
        const char *c = i % 3 == 0 ? "\xf0\x9f\x9a\x80" : i % 3 == 1 ? "\xc3\xa9" : "<";
        memcpy(longtext + o, c, strlen(c));
        o += strlen(c);
    }
    longtext[o] = '\0';
    m.text = longtext;
    m.labels_kv = NULL;
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_SENT);
    msg = s_last("telegram");
    visible = json_string_value(json_object_get(msg, "text"));
    assert_true(notify_utf16_len(visible) <= 4096);
    assert_true(notify_utf16_len(visible) >= 4094);
    assert_string_equal(visible + strlen(visible) - 3, "\xe2\x80\xa6");
    json_decref(msg);
    free(longtext);
    assert_int_equal(s_count("telegram"), 4);
    assert_int_equal(s_violations(), 0);
}

static void test_notify_channels_telegram_429_exact(void **state)
{
    s_ctl("{\"reset\": true, \"telegram\": [\"429:1\"]}");
    int64_t ra = 0;
    char why[256];
    sn_channel_config_t ch = s_telegram("12345");
    notify_message_t m = s_msg("run failed", "build step 3");
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_int_equal(ra, 1000); /* parameters.retry_after, exactly */
    assert_non_null(strstr(why, "429"));
    assert_true(notify_sender_ready_in_ms(s_fx->sender, &ch) > 500);
    /* Sending again at once: refused locally, nothing reaches the service. */
    int before = s_requests("telegram");
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_true(ra > 0 && ra <= 1000);
    assert_int_equal(s_requests("telegram"), before);
    assert_int_equal(s_violations(), 0);
    /* The fake does enforce the wait: a sender that forgot it is caught. */
    notify_sender_t *other = notify_sender_new(&s_fx->cfg);
    assert_int_equal(notify_send(other, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    notify_sender_destroy(&other);
    assert_int_equal(s_violations(), 1);
    /* Waited out: delivered once, no further violation. */
    s_ready_t r = {s_fx->sender, &ch};
    assert_true(sn_test_wait_for(s_is_ready, &r, 3000));
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_SENT);
    assert_int_equal(s_violations(), 1);
    assert_int_equal(s_count("telegram"), 1);
}

static void test_notify_channels_telegram_permanent_and_transient(void **state)
{
    s_ctl("{\"reset\": true, \"telegram_blocked\": [\"666\"]}");
    int64_t ra = 0;
    char why[256];
    notify_message_t m = s_msg("x", NULL);
    sn_channel_config_t unknown = s_telegram("999");
    assert_int_equal(notify_send(s_fx->sender, &unknown, &m, &ra, why, sizeof why),
                     NOTIFY_PERMANENT);
    assert_int_equal(ra, -1);
    assert_non_null(strstr(why, "chat not found"));
    sn_channel_config_t blocked = s_telegram("666");
    assert_int_equal(notify_send(s_fx->sender, &blocked, &m, &ra, why, sizeof why),
                     NOTIFY_PERMANENT);
    assert_non_null(strstr(why, "blocked"));
    sn_channel_config_t bad_token = s_telegram("12345");
    bad_token.token = (char *)"987654:AAH-wrong";
    assert_int_equal(notify_send(s_fx->sender, &bad_token, &m, &ra, why, sizeof why),
                     NOTIFY_PERMANENT);
    assert_non_null(strstr(why, "401"));
    assert_null(strstr(why, "AAH")); /* the token never appears in a reason */

    sn_channel_config_t ch = s_telegram("12345");
    s_ctl("{\"telegram\": [\"500:Internal Server Error\", \"502:Bad Gateway\"]}");
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_int_equal(ra, -1);
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    /* A hang is cut by the channel timeout and is transient. */
    s_ctl("{\"telegram\": [\"hang:4000\"]}");
    ch.timeout_ms = 600;
    int64_t t0 = sn_mono_ms();
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_true(sn_mono_ms() - t0 < 2500);
    /* A server that accepts and never answers. */
    int port;
    int hole = s_black_hole(&port);
    char base[64];
    snprintf(base, sizeof base, "http://127.0.0.1:%d", port);
    ch.api_base = base;
    t0 = sn_mono_ms();
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_true(sn_mono_ms() - t0 < 2500);
    close(hole);
    assert_int_equal(s_count("telegram"), 0);
}

/* ---- Slack --------------------------------------------------------------------------------- */

static void test_notify_channels_slack(void **state)
{
    s_ctl("{\"reset\": true}");
    int64_t ra = 0;
    char why[256], url[256];
    sn_channel_config_t ch = s_slack(url, sizeof url, S_SLACK_PATH);
    notify_message_t m = s_msg("deploy <!channel> & rolled back", "reason: <http://x|y>");
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_SENT);
    json_t *msg = s_last("slack");
    assert_non_null(msg);
    assert_string_equal(json_string_value(json_object_get(msg, "text")),
                        "[CRITICAL] deploy &lt;!channel&gt; &amp; rolled back");
    json_t *blocks = json_object_get(json_object_get(msg, "json"), "blocks");
    const char *section = json_string_value(
        json_object_get(json_object_get(json_array_get(blocks, 0), "text"), "text"));
    assert_non_null(strstr(section, "reason: &lt;http://x|y&gt;"));
    assert_string_equal(
        json_string_value(json_object_get(
            json_array_get(json_object_get(json_array_get(blocks, 1), "elements"), 0), "text")),
        "*project:* hello");
    json_decref(msg);

    /* 429 + Retry-After, exactly, enforced. */
    s_ctl("{\"slack\": [\"429:1\"]}");
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_int_equal(ra, 1000);
    int before = s_requests("slack");
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_int_equal(s_requests("slack"), before);
    s_ready_t r = {s_fx->sender, &ch};
    assert_true(sn_test_wait_for(s_is_ready, &r, 3000));
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_SENT);
    assert_int_equal(s_violations(), 0);

    /* Error strings: 4xx final, 5xx retried. */
    s_ctl("{\"slack\": [\"404:no_service\", \"410:channel_is_archived\", \"403:invalid_token\","
          " \"400:invalid_payload\", \"500:rollup_error\"]}");
    const char *expect[] = {"no_service", "channel_is_archived", "invalid_token",
                            "invalid_payload"};
    for (size_t i = 0; i < SN_ARRAY_LEN(expect); i++) {
        assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why),
                         NOTIFY_PERMANENT);
        assert_non_null(strstr(why, expect[i]));
    }
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_non_null(strstr(why, "rollup_error"));
    /* A revoked webhook (unknown path). */
    char url2[256];
    sn_channel_config_t gone = s_slack(url2, sizeof url2, "/services/T0TEST/B0TEST/revoked1");
    assert_int_equal(notify_send(s_fx->sender, &gone, &m, &ra, why, sizeof why), NOTIFY_PERMANENT);
    assert_non_null(strstr(why, "no_service"));
    assert_null(strstr(why, "revoked1"));
    assert_int_equal(s_count("slack"), 2);
}

/* ---- Discord ------------------------------------------------------------------------------- */

static void test_notify_channels_discord(void **state)
{
    s_ctl("{\"reset\": true, \"discord_limit\": 100}");
    int64_t ra = 0;
    char why[256], url[256];
    sn_channel_config_t ch = s_discord(url, sizeof url, S_DISCORD_ID, S_DISCORD_TOKEN);
    notify_message_t m = s_msg("deploy rolled back @everyone", "why: health check failed");
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_SENT);
    assert_int_equal(ra, 0);
    json_t *msg = s_last("discord");
    json_t *body = json_object_get(msg, "json");
    json_t *embed = json_array_get(json_object_get(body, "embeds"), 0);
    assert_string_equal(json_string_value(json_object_get(embed, "title")),
                        "[CRITICAL] deploy rolled back @everyone");
    assert_string_equal(json_string_value(json_object_get(embed, "description")),
                        "why: health check failed\n\nproject: hello\nenvironment: production");
    assert_int_equal(json_integer_value(json_object_get(embed, "color")), 0xD93025);
    assert_int_equal(json_array_size(json_object_get(embed, "fields")), 2);
    json_t *am = json_object_get(json_object_get(body, "allowed_mentions"), "parse");
    assert_true(json_is_array(am) && json_array_size(am) == 0);
    json_decref(msg);

    /* A huge body is cut so that every embed limit holds (the fake checks them). */
    char *huge = sn_malloc(9001);
    memset(huge, 'x', 9000);
    huge[9000] = '\0';
    notify_message_t big = m;
    big.text = huge;
    assert_int_equal(notify_send(s_fx->sender, &ch, &big, &ra, why, sizeof why), NOTIFY_SENT);
    free(huge);

    /* 429 with a float retry_after: waited exactly (ms, rounded up). */
    s_ctl("{\"discord\": [\"429:0.3\"]}");
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_int_equal(ra, 300); /* 0.3 * 1000 is 300.00000000000006 in binary */
    int before = s_requests("discord");
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_int_equal(s_requests("discord"), before);
    s_ready_t r = {s_fx->sender, &ch};
    assert_true(sn_test_wait_for(s_is_ready, &r, 3000));
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_SENT);

    /* A bucket of 2 per 1.5 s: the second send empties it, so the third waits
     * X-RateLimit-Reset-After before asking instead of collecting a 429. */
    s_ctl("{\"discord_limit\": 2, \"discord_window_s\": 1.5}");
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_SENT);
    assert_int_equal(ra, 0);
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_SENT);
    assert_true(ra > 0 && ra <= 1500);
    before = s_requests("discord");
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_true(ra > 0 && ra <= 1500);
    assert_int_equal(s_requests("discord"), before);
    assert_true(sn_test_wait_for(s_is_ready, &r, 3000));
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_SENT);
    assert_int_equal(s_violations(), 0);
    /* The fake catches a sender that ignores the bucket: 429 with a float retry_after. */
    notify_sender_t *other = notify_sender_new(&s_fx->cfg);
    notify_sender_t *third = notify_sender_new(&s_fx->cfg);
    ra = 0;
    for (int i = 0; i < 3 && ra == 0; i++) /* until `other` empties the bucket */
        assert_int_equal(notify_send(other, &ch, &m, &ra, why, sizeof why), NOTIFY_SENT);
    assert_true(ra > 0);
    assert_int_equal(notify_send(third, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_true(ra > 0 && ra <= 1500);
    assert_non_null(strstr(why, "429"));
    notify_sender_destroy(&other);
    notify_sender_destroy(&third);
    assert_int_equal(s_violations(), 1);
    s_ctl("{\"discord_limit\": 100}");

    /* Dead webhooks are final. */
    char url2[256];
    sn_channel_config_t unknown = s_discord(url2, sizeof url2, "1111", S_DISCORD_TOKEN);
    unknown.name = (char *)"dc-unknown";
    assert_int_equal(notify_send(s_fx->sender, &unknown, &m, &ra, why, sizeof why),
                     NOTIFY_PERMANENT);
    assert_non_null(strstr(why, "10015"));
    sn_channel_config_t badtok = s_discord(url2, sizeof url2, S_DISCORD_ID, "wrong-token");
    badtok.name = (char *)"dc-badtok";
    assert_int_equal(notify_send(s_fx->sender, &badtok, &m, &ra, why, sizeof why),
                     NOTIFY_PERMANENT);
    assert_non_null(strstr(why, "401"));
    s_ctl("{\"discord\": [\"503:unavailable\"]}");
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
}

/* ---- email --------------------------------------------------------------------------------- */

static void test_notify_channels_email_starttls(void **state)
{
    int64_t ra = 0;
    char why[512], url[128];
    char *to[] = {(char *)"ops@example.org", (char *)"Dev Team <dev@example.org>", NULL};
    sn_channel_config_t ch = s_email(url, sizeof url, "smtp", s_fx->smtp_port, to);
    char *longline = sn_malloc(2001);
    memset(longline, 'L', 2000);
    longline[2000] = '\0';
    char *text =
        sn_strdupf("premi\xc3\xa8re ligne\n.\n..deux points\n%s\nfin = \xe2\x9c\x93 ", longline);
    notify_message_t m = s_msg("D\xc3\xa9ploiement \xc3\xa9"
                               "chou\xc3\xa9 \xe2\x9c\x93 <x>",
                               text);
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_SENT);
    assert_string_equal(why, "");
    json_t *rec = s_last_line(s_fx->smtp_record);
    json_t *problems = json_object_get(rec, "problems");
    if (json_array_size(problems) > 0)
        fail_msg("message problems: %s", json_string_value(json_array_get(problems, 0)));
    assert_true(json_is_true(json_object_get(rec, "tls")));
    assert_string_equal(json_string_value(json_object_get(rec, "auth_user")), S_SMTP_USER);
    assert_string_equal(json_string_value(json_object_get(rec, "mail_from")),
                        "sentinel@example.org");
    json_t *rcpt = json_object_get(rec, "rcpt_tos");
    assert_int_equal(json_array_size(rcpt), 2);
    assert_string_equal(json_string_value(json_array_get(rcpt, 1)), "dev@example.org");
    assert_string_equal(json_string_value(json_object_get(rec, "subject")),
                        "[Sentinel] [CRITICAL] D\xc3\xa9ploiement \xc3\xa9"
                        "chou\xc3\xa9 "
                        "\xe2\x9c\x93 <x>");
    json_t *h = json_object_get(rec, "headers");
    const char *mid = json_string_value(json_array_get(json_object_get(h, "message-id"), 0));
    assert_string_equal(mid, "<01JTESTEVENT0000000000000A.sentinel@example.org>");
    const char *hto = json_string_value(json_array_get(json_object_get(h, "to"), 0));
    assert_non_null(strstr(hto, "ops@example.org"));
    assert_non_null(strstr(hto, "dev@example.org"));
    assert_string_equal(json_string_value(json_array_get(json_object_get(h, "from"), 0)),
                        "Sentinel <sentinel@example.org>");
    assert_non_null(json_object_get(h, "date"));
    const char *body = json_string_value(json_object_get(rec, "body"));
    char *want = sn_strdupf("[CRITICAL] D\xc3\xa9ploiement \xc3\xa9"
                            "chou\xc3\xa9 "
                            "\xe2\x9c\x93 <x>\n\n%s\n\nproject: hello\nenvironment: "
                            "production\n\ndeploy.rolled_back 01JTESTEVENT0000000000000A\n",
                            text);
    assert_string_equal(body, want);
    free(want);
    /* On the wire: CRLF only, no line over 998 (the 2000-char line went soft-broken). */
    const char *raw = json_string_value(json_object_get(rec, "raw"));
    assert_null(strstr(raw, longline));
    json_decref(rec);
    free(longline);
    free(text);
}

static void test_notify_channels_email_failures(void **state)
{
    int64_t ra = 0;
    char why[512], url[128];
    char *to[] = {(char *)"ops@example.org", NULL};
    notify_message_t m = s_msg("mail", "body");
    int lines = s_lines(s_fx->smtp_record);

    sn_channel_config_t ch = s_email(url, sizeof url, "smtp", s_fx->smtp_port, to);
    ch.password = (char *)"wrong-password";
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_PERMANENT);
    assert_null(strstr(why, "wrong-password"));

    char *tempfail[] = {(char *)"tempfail@example.org", NULL};
    ch = s_email(url, sizeof url, "smtp", s_fx->smtp_port, tempfail);
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_non_null(strstr(why, "451"));
    char *reject[] = {(char *)"reject@example.org", NULL};
    ch = s_email(url, sizeof url, "smtp", s_fx->smtp_port, reject);
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_PERMANENT);
    assert_non_null(strstr(why, "550"));

    /* The certificate is not trusted without the test CA: never sent in the clear. */
    notify_sender_t *plain_trust = notify_sender_new(&s_fx->cfg);
    ch = s_email(url, sizeof url, "smtp", s_fx->smtp_port, to);
    assert_int_equal(notify_send(plain_trust, &ch, &m, &ra, why, sizeof why), NOTIFY_PERMANENT);
    notify_sender_destroy(&plain_trust);

    /* A server without STARTTLS while starttls is required: final, nothing sent. */
    sn_channel_config_t nostls = s_email(url, sizeof url, "smtp", s_fx->plain_port, to);
    nostls.username = nostls.password = NULL;
    assert_int_equal(notify_send(s_fx->sender, &nostls, &m, &ra, why, sizeof why),
                     NOTIFY_PERMANENT);
    assert_int_equal(s_lines(s_fx->plain_record), 0);
    /* ... and with starttls: false the same server takes it (no credentials). */
    nostls.starttls = false;
    assert_int_equal(notify_send(s_fx->sender, &nostls, &m, &ra, why, sizeof why), NOTIFY_SENT);
    assert_int_equal(s_lines(s_fx->plain_record), 1);

    /* smtps:// : implicit TLS. */
    sn_channel_config_t tls = s_email(url, sizeof url, "smtps", s_fx->smtps_port, to);
    tls.username = tls.password = NULL;
    assert_int_equal(notify_send(s_fx->sender, &tls, &m, &ra, why, sizeof why), NOTIFY_SENT);
    json_t *rec = s_last_line(s_fx->smtps_record);
    assert_true(json_is_true(json_object_get(rec, "tls")));
    assert_int_equal(json_array_size(json_object_get(rec, "problems")), 0);
    json_decref(rec);

    /* A server that never says hello: transient, within the timeout. */
    int port;
    int hole = s_black_hole(&port);
    sn_channel_config_t hung = s_email(url, sizeof url, "smtp", port, to);
    hung.timeout_ms = 700;
    int64_t t0 = sn_mono_ms();
    assert_int_equal(notify_send(s_fx->sender, &hung, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_true(sn_mono_ms() - t0 < 3000);
    close(hole);
    assert_int_equal(s_lines(s_fx->smtp_record), lines); /* none of these was accepted */
}

/* ---- the signed webhook -------------------------------------------------------------------- */

static char *s_cloudevent(const char *type, char id[SN_ID_LEN + 1])
{
    sn_source_t src;
    sn_source_init(&src, "buildpilot", "test");
    sn_envelope_t env;
    sn_envelope_stamp(&env, &src, type, id);
    env.subject = "hello/production";
    env.correlation_id = id;
    Sentinel__V1__Run run = SENTINEL__V1__RUN__INIT;
    Sentinel__V1__Deploy dep = SENTINEL__V1__DEPLOY__INIT;
    Sentinel__V1__Alert alert = SENTINEL__V1__ALERT__INIT;
    if (strncmp(type, "run.", 4) == 0 || strncmp(type, "build.", 6) == 0) {
        run.run_id = id;
        run.project = "hello";
        run.environment = "production";
        run.sha = "0123456789abcdef0123456789abcdef01234567";
        run.state = SENTINEL__V1__RUN_STATE__RUN_FAILED;
        run.reason = "step build failed";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN;
        env.run = &run;
    } else if (strncmp(type, "deploy.", 7) == 0) {
        dep.deploy_id = id;
        dep.run_id = id;
        dep.project = "hello";
        dep.environment = "production";
        dep.target = "web";
        dep.live_url = "https://hello.example.org/";
        dep.release_id = "r2";
        dep.previous_release_id = "r1";
        dep.error = "health check failed";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY;
        env.deploy = &dep;
    } else {
        alert.name = "disk";
        alert.severity = "critical";
        alert.summary = "disk 91% full";
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_ALERT;
        env.alert = &alert;
    }
    char *s = sn_cloudevents_dumps(&env, NULL);
    assert_non_null(s);
    return s;
}

static void test_notify_channels_webhook_verifies_from_docs(void **state)
{
    int64_t ra = 0;
    char why[256], url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hooks/sentinel?token=q", s_fx->hook_port);
    sn_channel_config_t ch = {.name = (char *)"hook",
                              .type = (char *)"webhook",
                              .url = url,
                              .secret = (char *)S_HOOK_SECRET,
                              .timeout_ms = 3000};
    const char *types[] = {"run.failed",      "run.rolled_back",    "build.failed",
                           "deploy.promoted", "deploy.rolled_back", "deploy.failed",
                           "alert.raised"};
    for (size_t i = 0; i < SN_ARRAY_LEN(types); i++) {
        char id[SN_ID_LEN + 1];
        char *ce = s_cloudevent(types[i], id);
        notify_message_t m = s_msg(types[i], NULL);
        m.event_type = types[i];
        /* The notifier tracks some notifications under ids of its own: the header still
         * names the body's CloudEvent. */
        m.event_id = i % 2 ? "01JNOTIFICATIONID000000000" : id;
        m.cloudevent_json = ce;
        assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_SENT);
        json_t *rec = s_last_line(s_fx->hook_record);
        assert_true(json_is_true(json_object_get(rec, "verified")));
        assert_string_equal(json_string_value(json_object_get(rec, "id")), id);
        json_decref(rec);
        free(ce);
    }
    /* Every body validates against the CloudEvents rules and the CDEvents schemas. */
    char *validator = sn_strdupf("%s/tests/integration/validate_cdevents.py", SN_SOURCE_DIR);
    char *schemas = sn_strdupf("%s/fixtures/cdevents/schemas", SN_SHARED_DIR);
    char *argv[] = {(char *)S_PYTHON, validator,         (char *)"--schemas",
                    schemas,          s_fx->hook_bodies, NULL};
    assert_int_equal(s_run(argv), 0);
    assert_int_equal(s_lines(s_fx->hook_bodies), (int)SN_ARRAY_LEN(types));
    /* ...and the validator can fail: a body missing its CDEvent context id. */
    char *badf = sn_strdupf("%s/bad-bodies.jsonl", s_fx->dir);
    char id[SN_ID_LEN + 1];
    char *ce = s_cloudevent("deploy.promoted", id);
    json_t *j = json_loads(ce, 0, NULL);
    json_t *ctx = json_object_get(json_object_get(j, "data"), "context");
    assert_non_null(ctx);
    json_object_del(ctx, "id");
    assert_int_equal(json_dump_file(j, badf, JSON_COMPACT), 0);
    json_decref(j);
    free(ce);
    argv[4] = badf;
    assert_int_equal(s_run(argv), 1);
    free(badf);
    free(validator);
    free(schemas);

    /* A wrong secret: the documented check refuses it (401), which is final. */
    sn_channel_config_t wrong = ch;
    wrong.secret = (char *)"not-the-secret-at-all";
    notify_message_t m = s_msg("x", NULL);
    ce = s_cloudevent("run.failed", id);
    m.event_id = id;
    m.cloudevent_json = ce;
    assert_int_equal(notify_send(s_fx->sender, &wrong, &m, &ra, why, sizeof why), NOTIFY_PERMANENT);
    assert_non_null(strstr(why, "401"));
    assert_null(strstr(why, "token=q")); /* query values are redacted */
    json_t *rec = s_last_line(s_fx->hook_record);
    assert_true(json_is_false(json_object_get(rec, "verified")));
    assert_string_equal(json_string_value(json_object_get(rec, "why")), "signature mismatch");
    json_decref(rec);
    free(ce);
}

static void test_notify_channels_webhook_classification(void **state)
{
    /* The Slack route of the chat fake answers scripted statuses before anything else. */
    s_ctl("{\"reset\": true, \"slack\": [\"429:1\", \"500:x\", \"408:x\", \"404:x\"]}");
    int64_t ra = 0;
    char why[256], url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", s_fx->chat_port, S_SLACK_PATH);
    sn_channel_config_t ch = {.name = (char *)"hook2",
                              .type = (char *)"webhook",
                              .url = url,
                              .secret = (char *)S_HOOK_SECRET,
                              .timeout_ms = 3000};
    notify_message_t m = s_msg("x", NULL);
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_int_equal(ra, 1000);
    s_ready_t r = {s_fx->sender, &ch};
    assert_true(sn_test_wait_for(s_is_ready, &r, 3000));
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_int_equal(ra, -1);
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_PERMANENT);
    assert_non_null(strstr(why, "404"));
    /* Connection refused: transient. */
    int port = sn_test_free_port();
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", port);
    assert_int_equal(notify_send(s_fx->sender, &ch, &m, &ra, why, sizeof why), NOTIFY_RETRY);
}

/* Last: every line this process logged, at debug level, after sn_log_clear_secrets (so
 * masking cannot hide a slip), and no secret appears. */
static void test_notify_channels_no_secret_in_logs(void **state)
{
    /* Up to here the secrets were registered (masking on, as in the notifier); from here
     * on they are not, so what follows proves the module itself never writes them. */
    char *before = sn_test_read_file(s_fx->log_path);
    size_t offset = before ? strlen(before) : 0;
    free(before);
    sn_log_clear_secrets();
    /* One more round of failures with every secret in play. */
    s_ctl("{\"reset\": true, \"telegram\": [\"429:1\"], \"slack\": [\"404:no_service\"]}");
    int64_t ra = 0;
    char why[512], url[256], url2[256], url3[128];
    notify_message_t m = s_msg("x", NULL);
    sn_channel_config_t tg = s_telegram("12345");
    tg.name = (char *)"tg-secrets";
    assert_int_equal(notify_send(s_fx->sender, &tg, &m, &ra, why, sizeof why), NOTIFY_RETRY);
    assert_null(strstr(why, S_TG_TOKEN));
    sn_channel_config_t sl = s_slack(url, sizeof url, S_SLACK_PATH);
    sl.name = (char *)"sl-secrets";
    assert_int_equal(notify_send(s_fx->sender, &sl, &m, &ra, why, sizeof why), NOTIFY_PERMANENT);
    assert_null(strstr(why, "slackSecretPart42"));
    sn_channel_config_t dc = s_discord(url2, sizeof url2, "1111", S_DISCORD_TOKEN);
    dc.name = (char *)"dc-secrets";
    assert_int_equal(notify_send(s_fx->sender, &dc, &m, &ra, why, sizeof why), NOTIFY_PERMANENT);
    assert_null(strstr(why, S_DISCORD_TOKEN));
    char *to[] = {(char *)"ops@example.org", NULL};
    sn_channel_config_t mail = s_email(url3, sizeof url3, "smtp", s_fx->smtp_port, to);
    mail.url =
        sn_strdupf("smtp://%s:%s@127.0.0.1:%d", S_SMTP_USER, S_SMTP_PASSWORD, s_fx->smtp_port);
    mail.password = (char *)"wrong-but-secret-pw";
    assert_int_equal(notify_send(s_fx->sender, &mail, &m, &ra, why, sizeof why), NOTIFY_PERMANENT);
    assert_null(strstr(why, S_SMTP_PASSWORD));
    assert_null(strstr(why, "wrong-but-secret-pw"));
    free(mail.url);

    char *log = sn_test_read_file(s_fx->log_path);
    assert_non_null(log);
    assert_true(strlen(log) > offset);
    const char *fresh = log + offset;
    assert_non_null(strstr(fresh, "tg-secrets")); /* the lines exist and name the channel */
    assert_non_null(strstr(fresh, "sl-secrets"));
    assert_non_null(strstr(fresh, "dc-secrets"));
    assert_non_null(strstr(fresh, "mail"));
    const char *secrets[] = {S_TG_TOKEN,      "AAH-secretTelegramToken", "slackSecretPart42",
                             S_DISCORD_TOKEN, S_SMTP_PASSWORD,           "wrong-but-secret-pw",
                             S_HOOK_SECRET,   "not-the-secret-at-all"};
    for (size_t i = 0; i < SN_ARRAY_LEN(secrets); i++)
        if (strstr(log, secrets[i]))
            fail_msg("secret %zu found in the log", i);
    assert_non_null(strstr(log, "[redacted]")); /* sn_http's own debug lines were masked */
    free(log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_notify_channels_rendering),
        cmocka_unit_test(test_notify_channels_prepare),
        cmocka_unit_test(test_notify_channels_log_and_file),
        cmocka_unit_test(test_notify_channels_telegram_delivers_html),
        cmocka_unit_test(test_notify_channels_telegram_429_exact),
        cmocka_unit_test(test_notify_channels_telegram_permanent_and_transient),
        cmocka_unit_test(test_notify_channels_slack),
        cmocka_unit_test(test_notify_channels_discord),
        cmocka_unit_test(test_notify_channels_email_starttls),
        cmocka_unit_test(test_notify_channels_email_failures),
        cmocka_unit_test(test_notify_channels_webhook_verifies_from_docs),
        cmocka_unit_test(test_notify_channels_webhook_classification),
        cmocka_unit_test(test_notify_channels_no_secret_in_logs),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
