/* Notification channels (notify_channels.h): renders a notify_message_t for each channel
 * type and makes exactly one delivery attempt, classifying the answer as sent, retry
 * (with the wait the service asked for) or permanent. The signed webhook is the same
 * delivery the notifier always made (docs/operations.md "Notifier"); the chat services
 * follow /work/shared/contracts/notifications.md; email goes through libcurl's SMTP. */
#include "notify_channels.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "sentinel/sn_crypto.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_log.h"

#define S_MOD "notify"
#define S_DEFAULT_TIMEOUT_MS 5000
#define S_TELEGRAM_BASE "https://api.telegram.org"
#define S_TELEGRAM_MAX 4096          /* UTF-16 units after entity parsing */
#define S_TELEGRAM_TITLE_MAX 512     /* the bold first line */
#define S_SLACK_SECTION_MAX 3000     /* section text */
#define S_SLACK_CONTEXT_MAX 10       /* elements of a context block */
#define S_DISCORD_TITLE_MAX 256      /* embed title */
#define S_DISCORD_DESC_MAX 4096      /* embed description */
#define S_DISCORD_TOTAL_MAX 6000     /* all embed text together */
#define S_DISCORD_FIELDS_MAX 25      /* embed fields */
#define S_SUBJECT_MAX 200            /* mail Subject text before encoding */
#define S_RETRY_AFTER_CAP_MS 3600000 /* longest wait believed from a service */
#define S_MAX_RESPONSE 65536
#define S_DETAIL_MAX 160 /* service error text kept in @why */
#define S_SIGNATURE_HEADER "X-Sentinel-Signature"
#define S_ELLIPSIS "\xe2\x80\xa6" /* U+2026, one UTF-16 unit */

typedef enum {
    S_LOG,
    S_FILE,
    S_WEBHOOK,
    S_TELEGRAM,
    S_SLACK,
    S_DISCORD,
    S_EMAIL,
    S_UNKNOWN
} s_type_t;

/* The earliest time (monotonic) a channel may be sent to again. */
typedef struct {
    char *name;
    int64_t until_ms;
} s_cooldown_t;

struct notify_sender {
    const sn_config_t *cfg;
    sn_http_t *http;
    CURL *smtp;
    char *ca_file;
    s_cooldown_t *cooldowns;
    size_t cooldown_count;
};

/* A growable string. */
typedef struct {
    char *data;
    size_t len, cap;
} s_buf_t;

/* What one attempt found, before it is turned into an outcome. */
typedef struct {
    notify_outcome_t outcome;
    int64_t retry_after_ms; /* RETRY: the wait asked for, -1 none */
    int64_t next_ms;        /* SENT: the wait before the next send (rate-limit bucket) */
} s_result_t;

/* The upload state of one mail. */
typedef struct {
    const char *data;
    size_t len, off;
} s_upload_t;

static s_type_t s_type_of(const char *type);
static const char *s_type_name(s_type_t t);
static s_result_t s_send_log(const sn_channel_config_t *ch, const notify_message_t *msg);
static s_result_t s_send_file(const sn_channel_config_t *ch, const notify_message_t *msg, char *why,
                              size_t why_len);
static s_result_t s_send_webhook(notify_sender_t *self, const sn_channel_config_t *ch,
                                 const notify_message_t *msg, char *why, size_t why_len);
static s_result_t s_send_telegram(notify_sender_t *self, const sn_channel_config_t *ch,
                                  const notify_message_t *msg, char *why, size_t why_len);
static s_result_t s_send_slack(notify_sender_t *self, const sn_channel_config_t *ch,
                               const notify_message_t *msg, char *why, size_t why_len);
static s_result_t s_send_discord(notify_sender_t *self, const sn_channel_config_t *ch,
                                 const notify_message_t *msg, char *why, size_t why_len);
static s_result_t s_send_email(notify_sender_t *self, const sn_channel_config_t *ch,
                               const notify_message_t *msg, char *why, size_t why_len);
static void s_why(char *why, size_t len, const char *fmt, ...) SN_PRINTF(3, 4);
static int s_utf8_next(const unsigned char *p, uint32_t *cp);
static char *s_clean_text(const char *text, bool is_one_line);
static char *s_body_text(const notify_message_t *msg);
static char *s_headline(const notify_message_t *msg);
static void s_detail(const char *in, size_t in_len, char *out, size_t out_len);
static int s_timeout_ms(const sn_channel_config_t *ch);
static const char *s_ca_file(const notify_sender_t *self, const sn_channel_config_t *ch);
static s_result_t s_http_class(sn_rc_t hrc, const sn_http_response_t *resp, const char *who,
                               char *why, size_t why_len);
static int64_t s_header_retry_after(const sn_http_response_t *resp);
static bool s_parse_seconds(const char *s, int64_t *ms);
static int64_t s_seconds_to_ms(double seconds);
static s_cooldown_t *s_cooldown(notify_sender_t *self, const char *name);
static void s_buf_add(s_buf_t *b, const char *s, size_t n);
static void s_buf_adds(s_buf_t *b, const char *s);
static void s_buf_addf(s_buf_t *b, const char *fmt, ...) SN_PRINTF(2, 3);
static bool s_is_bad_header_text(const char *s);
static char *s_address(const char *from);
static char *s_mail_message(const sn_channel_config_t *ch, const notify_message_t *msg);
static void s_qp_encode(s_buf_t *b, const char *text);
static size_t s_upload_read(char *dst, size_t size, size_t nitems, void *arg);

/* ---- the sender --------------------------------------------------------------------------- */

notify_sender_t *notify_sender_new(const sn_config_t *cfg)
{
    sn_http_t *http = sn_http_new(); /* runs curl_global_init once */
    if (!http)
        return NULL;
    CURL *smtp = curl_easy_init();
    if (!smtp) {
        sn_error(S_MOD, "cannot create a curl handle for smtp");
        sn_http_destroy(&http);
        return NULL;
    }
    notify_sender_t *self = sn_calloc(1, sizeof *self);
    self->cfg = cfg;
    self->http = http;
    self->smtp = smtp;
    return self;
}

void notify_sender_destroy(notify_sender_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    notify_sender_t *self = *self_p;
    sn_http_destroy(&self->http);
    curl_easy_cleanup(self->smtp);
    for (size_t i = 0; i < self->cooldown_count; i++)
        free(self->cooldowns[i].name);
    free(self->cooldowns);
    free(self->ca_file);
    free(self);
    *self_p = NULL;
}

void notify_sender_set_ca_file(notify_sender_t *self, const char *path)
{
    SN_ASSERT(self);
    free(self->ca_file);
    self->ca_file = path && path[0] ? sn_strdup(path) : NULL;
}

sn_rc_t notify_channel_prepare(const sn_channel_config_t *ch, char *why, size_t why_len)
{
    SN_ASSERT(ch);
    const char *sev = ch->min_severity ? ch->min_severity : "info";
    s_type_t t = s_type_of(ch->type);
    if (strcmp(sev, "info") != 0 && strcmp(sev, "warning") != 0 && strcmp(sev, "critical") != 0) {
        s_why(why, why_len, "unknown min_severity");
        return SN_ERROR;
    }
    bool is_http_url =
        ch->url && (strncmp(ch->url, "http://", 7) == 0 || strncmp(ch->url, "https://", 8) == 0);
    switch (t) {
    case S_LOG:
        break;
    case S_FILE:
        if (!ch->path || !ch->path[0]) {
            s_why(why, why_len, "type file needs a path");
            return SN_ERROR;
        }
        break;
    case S_WEBHOOK:
        if (!is_http_url) {
            s_why(why, why_len, "type webhook needs an http(s) url");
            return SN_ERROR;
        }
        if (!ch->secret || !ch->secret[0] || strncmp(ch->secret, "${", 2) == 0) {
            /* Unsigned deliveries would teach receivers to accept forgeries. */
            s_why(why, why_len, "webhook without a resolved secret");
            return SN_ERROR;
        }
        sn_log_add_secret(ch->secret);
        break;
    case S_TELEGRAM:
        if (!ch->token || !ch->token[0] || strncmp(ch->token, "${", 2) == 0 ||
            strchr(ch->token, '/') || strchr(ch->token, '?')) {
            s_why(why, why_len, "telegram needs a resolved token");
            return SN_ERROR;
        }
        if (!ch->chat_id || !ch->chat_id[0]) {
            s_why(why, why_len, "telegram needs a chat_id");
            return SN_ERROR;
        }
        if (ch->api_base && strncmp(ch->api_base, "http://", 7) != 0 &&
            strncmp(ch->api_base, "https://", 8) != 0) {
            s_why(why, why_len, "telegram api_base is not an http(s) URL");
            return SN_ERROR;
        }
        sn_log_add_secret(ch->token);
        break;
    case S_SLACK:
    case S_DISCORD:
        if (!is_http_url) {
            s_why(why, why_len, "type %s needs an http(s) url", s_type_name(t));
            return SN_ERROR;
        }
        sn_log_add_secret(ch->url); /* the URL is the credential */
        break;
    case S_EMAIL: {
        bool is_smtp = ch->url && strncmp(ch->url, "smtp://", 7) == 0;
        bool is_smtps = ch->url && strncmp(ch->url, "smtps://", 8) == 0;
        if (!is_smtp && !is_smtps) {
            s_why(why, why_len, "email needs an smtp:// or smtps:// url");
            return SN_ERROR;
        }
        if (!ch->from || !ch->from[0] || s_is_bad_header_text(ch->from)) {
            s_why(why, why_len, "email needs a from address (one line of ASCII)");
            return SN_ERROR;
        }
        if (!ch->to || !ch->to[0]) {
            s_why(why, why_len, "email needs at least one to address");
            return SN_ERROR;
        }
        for (char **a = ch->to; *a; a++)
            if (!(*a)[0] || s_is_bad_header_text(*a)) {
                s_why(why, why_len, "email: a to address is empty or not one line of ASCII");
                return SN_ERROR;
            }
        if (ch->password && ch->password[0] && is_smtp && !ch->starttls) {
            /* CURLUSESSL_TRY would fall back to plain text: never with credentials. */
            s_why(why, why_len, "email: credentials over smtp:// need starttls: true");
            return SN_ERROR;
        }
        if (ch->password && ch->password[0])
            sn_log_add_secret(ch->password);
        break;
    }
    case S_UNKNOWN:
        s_why(why, why_len, "unknown channel type");
        return SN_ERROR;
    }
    if (why && why_len)
        why[0] = '\0';
    return SN_OK;
}

notify_outcome_t notify_send(notify_sender_t *self, const sn_channel_config_t *ch,
                             const notify_message_t *msg, int64_t *retry_after_ms, char *why,
                             size_t why_len)
{
    SN_ASSERT(self && ch && msg && retry_after_ms);
    SN_ASSERT(msg->severity && msg->title && msg->event_id);
    char spare[256];
    if (!why || why_len == 0) {
        why = spare;
        why_len = sizeof spare;
    }
    why[0] = '\0';
    s_type_t t = s_type_of(ch->type);
    const char *name = ch->name ? ch->name : "-";
    int64_t now = sn_mono_ms();
    s_cooldown_t *cd = t == S_LOG || t == S_FILE ? NULL : s_cooldown(self, name);
    if (cd && cd->until_ms > now) {
        *retry_after_ms = cd->until_ms - now;
        s_why(why, why_len, "%s rate limit: %" PRId64 " ms to wait", s_type_name(t),
              *retry_after_ms);
        return NOTIFY_RETRY;
    }
    s_result_t r = {.outcome = NOTIFY_PERMANENT, .retry_after_ms = -1};
    switch (t) {
    case S_LOG:
        r = s_send_log(ch, msg);
        break;
    case S_FILE:
        r = s_send_file(ch, msg, why, why_len);
        break;
    case S_WEBHOOK:
        r = s_send_webhook(self, ch, msg, why, why_len);
        break;
    case S_TELEGRAM:
        r = s_send_telegram(self, ch, msg, why, why_len);
        break;
    case S_SLACK:
        r = s_send_slack(self, ch, msg, why, why_len);
        break;
    case S_DISCORD:
        r = s_send_discord(self, ch, msg, why, why_len);
        break;
    case S_EMAIL:
        r = s_send_email(self, ch, msg, why, why_len);
        break;
    case S_UNKNOWN:
        s_why(why, why_len, "unknown channel type");
        break;
    }
    now = sn_mono_ms();
    switch (r.outcome) {
    case NOTIFY_SENT:
        why[0] = '\0';
        *retry_after_ms = r.next_ms > 0 ? r.next_ms : 0;
        if (cd && r.next_ms > 0)
            cd->until_ms = now + r.next_ms;
        if (t != S_LOG)
            sn_debug(S_MOD, "channel %s (%s) sent %s %s", name, s_type_name(t),
                     msg->event_type ? msg->event_type : "-", msg->event_id);
        break;
    case NOTIFY_RETRY:
        *retry_after_ms = r.retry_after_ms;
        if (cd && r.retry_after_ms > 0)
            cd->until_ms = now + r.retry_after_ms;
        sn_debug(S_MOD, "channel %s (%s) not sent %s: %s (retry after %" PRId64 " ms)", name,
                 s_type_name(t), msg->event_id, why, r.retry_after_ms);
        break;
    case NOTIFY_PERMANENT:
        *retry_after_ms = -1;
        sn_debug(S_MOD, "channel %s (%s) refused %s for good: %s", name, s_type_name(t),
                 msg->event_id, why);
        break;
    }
    return r.outcome;
}

int64_t notify_sender_ready_in_ms(notify_sender_t *self, const sn_channel_config_t *ch)
{
    SN_ASSERT(self && ch);
    for (size_t i = 0; i < self->cooldown_count; i++)
        if (strcmp(self->cooldowns[i].name, ch->name ? ch->name : "-") == 0) {
            int64_t left = self->cooldowns[i].until_ms - sn_mono_ms();
            return left > 0 ? left : 0;
        }
    return 0;
}

const char *notify_outcome_name(notify_outcome_t outcome)
{
    switch (outcome) {
    case NOTIFY_SENT:
        return "sent";
    case NOTIFY_RETRY:
        return "retry";
    case NOTIFY_PERMANENT:
        return "permanent";
    }
    return "?";
}

char *notify_escape_html(const char *text)
{
    s_buf_t b = {0};
    s_buf_add(&b, "", 0);
    for (const char *p = text ? text : ""; *p; p++) {
        switch (*p) {
        case '&':
            s_buf_adds(&b, "&amp;");
            break;
        case '<':
            s_buf_adds(&b, "&lt;");
            break;
        case '>':
            s_buf_adds(&b, "&gt;");
            break;
        case '"':
            s_buf_adds(&b, "&quot;");
            break;
        default:
            s_buf_add(&b, p, 1);
        }
    }
    return b.data;
}

size_t notify_utf16_len(const char *text)
{
    size_t n = 0;
    const unsigned char *p = (const unsigned char *)(text ? text : "");
    while (*p) {
        uint32_t cp;
        int k = s_utf8_next(p, &cp);
        if (k == 0) {
            n++; /* an invalid byte: counted as one replacement character */
            p++;
            continue;
        }
        n += cp >= 0x10000 ? 2 : 1;
        p += k;
    }
    return n;
}

char *notify_truncate_utf16(const char *text, size_t max_units)
{
    text = text ? text : "";
    if (notify_utf16_len(text) <= max_units)
        return sn_strdup(text);
    if (max_units == 0)
        return sn_strdup("");
    size_t units = 0;
    const unsigned char *p = (const unsigned char *)text;
    while (*p) {
        uint32_t cp;
        int k = s_utf8_next(p, &cp);
        size_t w = k == 0 ? 1 : (cp >= 0x10000 ? 2 : 1);
        if (units + w > max_units - 1) /* room for the ellipsis */
            break;
        units += w;
        p += k == 0 ? 1 : k;
    }
    size_t keep = (size_t)((const char *)p - text);
    char *out = sn_malloc(keep + sizeof S_ELLIPSIS);
    memcpy(out, text, keep);
    memcpy(out + keep, S_ELLIPSIS, sizeof S_ELLIPSIS);
    return out;
}

char *notify_rfc2047_subject(const char *text)
{
    char *clean = s_clean_text(text, true);
    bool is_ascii = true;
    for (const unsigned char *p = (const unsigned char *)clean; *p; p++)
        if (*p >= 0x7f)
            is_ascii = false;
    /* "=?" inside plain text would read as an encoded-word: encode that too. */
    if (is_ascii && !strstr(clean, "=?"))
        return clean;
    /* Words of at most 45 input bytes: base64 of 60 chars + 12 of markup = 72 <= 75. */
    s_buf_t b = {0};
    s_buf_add(&b, "", 0);
    const unsigned char *p = (const unsigned char *)clean;
    while (*p) {
        const unsigned char *start = p;
        while (*p) {
            uint32_t cp;
            int k = s_utf8_next(p, &cp);
            k = k == 0 ? 1 : k;
            if ((size_t)(p - start) + (size_t)k > 45)
                break;
            p += k;
        }
        char *b64 = sn_json_base64_encode(start, (size_t)(p - start));
        s_buf_addf(&b, "%s=?UTF-8?B?%s?=", b.len ? "\r\n " : "", b64);
        free(b64);
    }
    free(clean);
    return b.data;
}

/* ---- log and file ------------------------------------------------------------------------- */

static s_result_t s_send_log(const sn_channel_config_t *ch, const notify_message_t *msg)
{
    /* The line the notifier always wrote (docs/operations.md). */
    sn_info(S_MOD, "%s %s subject=%s id=%s: %s", msg->severity,
            msg->event_type ? msg->event_type : "-",
            msg->subject && msg->subject[0] ? msg->subject : "-", msg->event_id, msg->title);
    return (s_result_t){.outcome = NOTIFY_SENT};
}

static s_result_t s_send_file(const sn_channel_config_t *ch, const notify_message_t *msg, char *why,
                              size_t why_len)
{
    s_result_t r = {.outcome = NOTIFY_RETRY, .retry_after_ms = -1};
    if (!msg->cloudevent_json) {
        s_why(why, why_len, "no CloudEvent to write");
        r.outcome = NOTIFY_PERMANENT;
        return r;
    }
    int fd = open(ch->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        s_why(why, why_len, "open %s: %s", ch->path, strerror(errno));
        return r;
    }
    /* One write per line: O_APPEND keeps lines of concurrent replicas whole. */
    size_t n = strlen(msg->cloudevent_json);
    char *line = sn_malloc(n + 1);
    memcpy(line, msg->cloudevent_json, n);
    line[n] = '\n';
    ssize_t w = write(fd, line, n + 1);
    int err = w == (ssize_t)(n + 1) ? 0 : (w < 0 ? errno : EIO);
    if (err == 0 && fsync(fd) != 0)
        err = errno;
    free(line);
    close(fd);
    if (err != 0) {
        s_why(why, why_len, "write %s: %s", ch->path, strerror(err));
        return r;
    }
    r.outcome = NOTIFY_SENT;
    return r;
}

/* ---- the signed webhook ------------------------------------------------------------------- */

static s_result_t s_send_webhook(notify_sender_t *self, const sn_channel_config_t *ch,
                                 const notify_message_t *msg, char *why, size_t why_len)
{
    s_result_t r = {.outcome = NOTIFY_PERMANENT, .retry_after_ms = -1};
    if (!msg->cloudevent_json) {
        s_why(why, why_len, "no CloudEvent to send");
        return r;
    }
    const char *body = msg->cloudevent_json;
    size_t body_len = strlen(body);
    /* The signature covers the timestamp, so a captured delivery cannot be replayed later
     * under a fresh one; it is computed for every attempt. */
    char t[24];
    snprintf(t, sizeof t, "%" PRId64, sn_wall_ms() / 1000);
    struct iovec iov[3] = {{.iov_base = t, .iov_len = strlen(t)},
                           {.iov_base = (void *)".", .iov_len = 1},
                           {.iov_base = (void *)body, .iov_len = body_len}};
    uint8_t mac[SN_SHA256_LEN];
    char hex[SN_SHA256_HEX_LEN + 1];
    if (!ch->secret || sn_hmac_sha256_v(ch->secret, strlen(ch->secret), iov, 3, mac) != SN_OK) {
        s_why(why, why_len, "cannot sign");
        return r;
    }
    sn_hex_encode(mac, sizeof mac, hex);
    char sig[160], id_h[160];
    snprintf(sig, sizeof sig, S_SIGNATURE_HEADER ": t=%s,v1=%s", t, hex);
    /* The header names the body's CloudEvent id (what receivers deduplicate on), whatever
     * id the caller tracks the notification under. */
    json_t *ce = json_loadb(body, body_len, 0, NULL);
    const char *ce_id = json_is_object(ce) ? json_string_value(json_object_get(ce, "id")) : NULL;
    snprintf(id_h, sizeof id_h, "X-Sentinel-Event-Id: %s", ce_id ? ce_id : msg->event_id);
    json_decref(ce);
    const char *headers[] = {"Content-Type: application/cloudevents+json; charset=UTF-8", sig, id_h,
                             "User-Agent: sentinel-notifier/" SN_VERSION, NULL};
    sn_http_request_t req = {.method = "POST",
                             .url = ch->url,
                             .headers = headers,
                             .body = body,
                             .body_len = body_len,
                             .timeout_ms = s_timeout_ms(ch),
                             .max_body_bytes = S_MAX_RESPONSE};
    sn_http_response_t resp;
    sn_rc_t hrc = sn_http_perform(self->http, &req, &resp);
    char *url = sn_http_redact_url(ch->url);
    r = s_http_class(hrc, &resp, url, why, why_len);
    free(url);
    sn_http_response_fini(&resp);
    return r;
}

/* ---- Telegram ----------------------------------------------------------------------------- */

static s_result_t s_send_telegram(notify_sender_t *self, const sn_channel_config_t *ch,
                                  const notify_message_t *msg, char *why, size_t why_len)
{
    s_result_t r = {.outcome = NOTIFY_RETRY, .retry_after_ms = -1};
    /* The visible text is "<headline>\n\n<body>"; the 4096 limit counts it after entity
     * parsing, so it is cut as plain text before escaping. */
    char *head_full = s_headline(msg);
    char *head = notify_truncate_utf16(head_full, S_TELEGRAM_TITLE_MAX);
    char *body_full = s_body_text(msg);
    size_t used = notify_utf16_len(head) + (body_full[0] ? 2 : 0);
    char *body = notify_truncate_utf16(body_full, S_TELEGRAM_MAX - used);
    char *eh = notify_escape_html(head), *eb = notify_escape_html(body);
    char *html = sn_strdupf("<b>%s</b>%s%s", eh, body[0] ? "\n\n" : "", eb);
    free(head_full);
    free(head);
    free(body_full);
    free(body);
    free(eh);
    free(eb);

    /* chat_id: an integer (int64, groups negative) or "@channelusername". */
    int64_t chat_num;
    json_t *chat = sn_parse_i64(ch->chat_id, INT64_MIN, INT64_MAX, &chat_num) == SN_OK
                       ? json_integer((json_int_t)chat_num)
                       : json_string(ch->chat_id);
    json_t *j = json_pack("{s:o, s:s, s:s, s:{s:b}}", "chat_id", chat, "text", html, "parse_mode",
                          "HTML", "link_preview_options", "is_disabled", 1);
    free(html);
    if (!j) {
        s_why(why, why_len, "cannot render the message");
        r.outcome = NOTIFY_PERMANENT;
        return r;
    }
    char *payload = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    const char *base = ch->api_base && ch->api_base[0] ? ch->api_base : S_TELEGRAM_BASE;
    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/')
        bl--;
    char *url = sn_strdupf("%.*s/bot%s/sendMessage", (int)bl, base, ch->token ? ch->token : "");
    const char *headers[] = {"Content-Type: application/json",
                             "User-Agent: sentinel-notifier/" SN_VERSION, NULL};
    sn_http_request_t req = {.method = "POST",
                             .url = url,
                             .headers = headers,
                             .body = payload,
                             .body_len = strlen(payload),
                             .timeout_ms = s_timeout_ms(ch),
                             .max_body_bytes = S_MAX_RESPONSE};
    sn_http_response_t resp;
    sn_rc_t hrc = sn_http_perform(self->http, &req, &resp);
    free(payload);
    /* The URL holds the token: wipe it. */
    memset(url, 0, strlen(url));
    free(url);
    if (hrc != SN_OK) {
        r = s_http_class(hrc, &resp, "telegram", why, why_len);
        sn_http_response_fini(&resp);
        return r;
    }
    /* Every answer is the Bot API envelope {ok, result | error_code, description,
     * parameters}; the HTTP status mirrors error_code. */
    json_t *env = json_loadb(resp.body, resp.body_len, 0, NULL);
    json_t *ok = json_is_object(env) ? json_object_get(env, "ok") : NULL;
    long status = resp.status;
    if (status == 200 && json_is_true(ok)) {
        r.outcome = NOTIFY_SENT;
        goto out;
    }
    if (!json_is_boolean(ok)) {
        /* Garbage with any status is not the Bot API: a proxy or an outage page. */
        s_why(why, why_len, "telegram answered %ld without the Bot API envelope", status);
        r.retry_after_ms = status == 429 || status == 503 ? s_header_retry_after(&resp) : -1;
        r.outcome = status >= 400 && status < 500 && status != 408 && status != 429
                        ? NOTIFY_PERMANENT
                        : NOTIFY_RETRY;
        goto out;
    }
    json_t *code_j = json_object_get(env, "error_code");
    long code = json_is_integer(code_j) ? (long)json_integer_value(code_j) : status;
    const char *desc = json_string_value(json_object_get(env, "description"));
    char detail[S_DETAIL_MAX];
    s_detail(desc ? desc : "", desc ? strlen(desc) : 0, detail, sizeof detail);
    json_t *params = json_object_get(env, "parameters");
    json_t *ra = json_is_object(params) ? json_object_get(params, "retry_after") : NULL;
    json_t *mig = json_is_object(params) ? json_object_get(params, "migrate_to_chat_id") : NULL;
    if (code == 429) {
        r.outcome = NOTIFY_RETRY;
        if (json_is_number(ra) && json_number_value(ra) >= 0)
            r.retry_after_ms = s_seconds_to_ms(json_number_value(ra));
        else
            r.retry_after_ms = s_header_retry_after(&resp);
        if (r.retry_after_ms > S_RETRY_AFTER_CAP_MS)
            r.retry_after_ms = S_RETRY_AFTER_CAP_MS;
        s_why(why, why_len, "telegram 429: %s", detail);
    } else if (json_is_integer(mig)) {
        r.outcome = NOTIFY_PERMANENT;
        s_why(why, why_len,
              "telegram: the group became supergroup %" JSON_INTEGER_FORMAT "; set chat_id to it",
              json_integer_value(mig));
    } else if (code >= 500 || code == 408) {
        r.outcome = NOTIFY_RETRY;
        r.retry_after_ms = s_header_retry_after(&resp);
        s_why(why, why_len, "telegram %ld: %s", code, detail);
    } else {
        /* 400 chat not found / can't parse entities, 401 bad token, 403 blocked or
         * kicked, 404: the same request can never succeed. */
        r.outcome = NOTIFY_PERMANENT;
        s_why(why, why_len, "telegram %ld: %s", code, detail);
    }
out:
    json_decref(env);
    sn_http_response_fini(&resp);
    return r;
}

/* ---- Slack -------------------------------------------------------------------------------- */

static s_result_t s_send_slack(notify_sender_t *self, const sn_channel_config_t *ch,
                               const notify_message_t *msg, char *why, size_t why_len)
{
    s_result_t r = {.outcome = NOTIFY_PERMANENT, .retry_after_ms = -1};
    char *head = s_headline(msg);
    char *eh = notify_escape_html(head); /* mrkdwn escapes & < > the same way */
    char *body_full = s_body_text(msg);
    char *body = notify_truncate_utf16(body_full, S_SLACK_SECTION_MAX / 2);
    char *eb = notify_escape_html(body);
    /* The section text must stay within 3000 characters after escaping. */
    char *section_full = sn_strdupf("*%s*%s%s", eh, eb[0] ? "\n" : "", eb);
    char *section = notify_truncate_utf16(section_full, S_SLACK_SECTION_MAX);
    char *fallback = notify_truncate_utf16(eh, S_SLACK_SECTION_MAX);
    json_t *blocks = json_array();
    json_array_append_new(blocks, json_pack("{s:s, s:{s:s, s:s}}", "type", "section", "text",
                                            "type", "mrkdwn", "text", section));
    json_t *elems = json_array();
    for (const char *const *kv = msg->labels_kv; kv && kv[0] && kv[1]; kv += 2) {
        if (json_array_size(elems) >= S_SLACK_CONTEXT_MAX)
            break;
        char *k = notify_escape_html(kv[0]), *v = notify_escape_html(kv[1]);
        char *e = sn_strdupf("*%s:* %s", k, v);
        char *et = notify_truncate_utf16(e, 300);
        json_array_append_new(elems, json_pack("{s:s, s:s}", "type", "mrkdwn", "text", et));
        free(k);
        free(v);
        free(e);
        free(et);
    }
    if (json_array_size(elems) > 0)
        json_array_append_new(blocks,
                              json_pack("{s:s, s:o}", "type", "context", "elements", elems));
    else
        json_decref(elems);
    json_t *j = json_pack("{s:s, s:o, s:b}", "text", fallback, "blocks", blocks, "unfurl_links", 0);
    free(head);
    free(eh);
    free(body_full);
    free(body);
    free(eb);
    free(section_full);
    free(section);
    free(fallback);
    if (!j) {
        s_why(why, why_len, "cannot render the message");
        return r;
    }
    char *payload = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    const char *headers[] = {"Content-Type: application/json",
                             "User-Agent: sentinel-notifier/" SN_VERSION, NULL};
    sn_http_request_t req = {.method = "POST",
                             .url = ch->url,
                             .headers = headers,
                             .body = payload,
                             .body_len = strlen(payload),
                             .timeout_ms = s_timeout_ms(ch),
                             .max_body_bytes = S_MAX_RESPONSE};
    sn_http_response_t resp;
    sn_rc_t hrc = sn_http_perform(self->http, &req, &resp);
    free(payload);
    if (hrc == SN_OK && resp.status != 200 && resp.status != 408 && resp.status != 429 &&
        resp.status < 500) {
        /* The body is an error string: invalid_payload, no_service, channel_not_found,
         * invalid_token, action_prohibited... all final. */
        char detail[S_DETAIL_MAX];
        s_detail(resp.body, resp.body_len, detail, sizeof detail);
        s_why(why, why_len, "slack %ld: %s", resp.status, detail);
        r.outcome = NOTIFY_PERMANENT;
    } else {
        r = s_http_class(hrc, &resp, "slack", why, why_len);
        if (r.outcome == NOTIFY_RETRY && hrc == SN_OK) {
            char detail[S_DETAIL_MAX];
            s_detail(resp.body, resp.body_len, detail, sizeof detail);
            s_why(why, why_len, "slack %ld: %s", resp.status, detail);
        }
    }
    sn_http_response_fini(&resp);
    return r;
}

/* ---- Discord ------------------------------------------------------------------------------ */

static s_result_t s_send_discord(notify_sender_t *self, const sn_channel_config_t *ch,
                                 const notify_message_t *msg, char *why, size_t why_len)
{
    s_result_t r = {.outcome = NOTIFY_PERMANENT, .retry_after_ms = -1};
    /* One embed; its texts together stay within 6000 characters. */
    char *head_full = s_headline(msg);
    char *title = notify_truncate_utf16(head_full, S_DISCORD_TITLE_MAX);
    char *footer_full = sn_strdupf("%s %s", msg->event_type ? msg->event_type : "-", msg->event_id);
    char *footer = notify_truncate_utf16(footer_full, 200);
    size_t used = notify_utf16_len(title) + notify_utf16_len(footer);
    json_t *fields = json_array();
    for (const char *const *kv = msg->labels_kv; kv && kv[0] && kv[1]; kv += 2) {
        if (json_array_size(fields) >= S_DISCORD_FIELDS_MAX)
            break;
        char *n = notify_truncate_utf16(kv[0][0] ? kv[0] : "-", 64);
        char *v = notify_truncate_utf16(kv[1][0] ? kv[1] : "-", 256);
        used += notify_utf16_len(n) + notify_utf16_len(v);
        json_array_append_new(fields,
                              json_pack("{s:s, s:s, s:b}", "name", n, "value", v, "inline", 1));
        free(n);
        free(v);
    }
    char *body_full = s_body_text(msg);
    size_t room = S_DISCORD_TOTAL_MAX > used ? S_DISCORD_TOTAL_MAX - used : 0;
    char *desc =
        notify_truncate_utf16(body_full, room < S_DISCORD_DESC_MAX ? room : S_DISCORD_DESC_MAX);
    int color = strcmp(msg->severity, "critical") == 0  ? 0xD93025
                : strcmp(msg->severity, "warning") == 0 ? 0xF9AB00
                                                        : 0x1E8E3E;
    json_t *embed = json_pack("{s:s, s:s, s:i, s:{s:s}}", "type", "rich", "title", title, "color",
                              color, "footer", "text", footer);
    if (embed && desc[0])
        json_object_set_new(embed, "description", json_string(desc));
    if (embed && json_array_size(fields) > 0)
        json_object_set(embed, "fields", fields);
    json_decref(fields);
    /* allowed_mentions parse [] : CI text never pings @everyone, roles or users. */
    json_t *j =
        embed ? json_pack("{s:[o], s:{s:[]}}", "embeds", embed, "allowed_mentions", "parse") : NULL;
    free(head_full);
    free(title);
    free(footer_full);
    free(footer);
    free(body_full);
    free(desc);
    if (!j) {
        s_why(why, why_len, "cannot render the message");
        return r;
    }
    char *payload = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    /* wait=true: 200 with the message means it was saved (204 does not promise that). */
    char *url = strstr(ch->url, "wait=") ? sn_strdup(ch->url)
                : strchr(ch->url, '?')   ? sn_strdupf("%s&wait=true", ch->url)
                                         : sn_strdupf("%s?wait=true", ch->url);
    const char *headers[] = {"Content-Type: application/json",
                             "User-Agent: sentinel-notifier/" SN_VERSION, NULL};
    sn_http_request_t req = {.method = "POST",
                             .url = url,
                             .headers = headers,
                             .body = payload,
                             .body_len = strlen(payload),
                             .timeout_ms = s_timeout_ms(ch),
                             .max_body_bytes = S_MAX_RESPONSE};
    sn_http_response_t resp;
    sn_rc_t hrc = sn_http_perform(self->http, &req, &resp);
    free(payload);
    free(url);
    if (hrc != SN_OK) {
        r = s_http_class(hrc, &resp, "discord", why, why_len);
        goto out;
    }
    long status = resp.status;
    int64_t reset_ms = -1;
    const char *remaining = sn_http_response_header(&resp, "X-RateLimit-Remaining");
    const char *reset_after = sn_http_response_header(&resp, "X-RateLimit-Reset-After");
    if (reset_after && !s_parse_seconds(reset_after, &reset_ms))
        reset_ms = -1;
    if (status == 200 || status == 204) {
        r.outcome = NOTIFY_SENT;
        /* The bucket is empty: the next call would be a 429. Wait Reset-After. */
        if (remaining && strcmp(remaining, "0") == 0 && reset_ms > 0)
            r.next_ms = reset_ms;
        goto out;
    }
    json_t *e = json_loadb(resp.body, resp.body_len, 0, NULL);
    const char *message =
        json_is_object(e) ? json_string_value(json_object_get(e, "message")) : NULL;
    json_t *code_j = json_is_object(e) ? json_object_get(e, "code") : NULL;
    char detail[S_DETAIL_MAX];
    if (message)
        s_detail(message, strlen(message), detail, sizeof detail);
    else
        s_detail(resp.body, resp.body_len, detail, sizeof detail);
    if (status == 429) {
        json_t *ra = json_is_object(e) ? json_object_get(e, "retry_after") : NULL;
        int64_t ms = -1;
        if (json_is_number(ra) && json_number_value(ra) >= 0)
            ms = s_seconds_to_ms(json_number_value(ra)); /* float seconds */
        else if (reset_ms >= 0)
            ms = reset_ms;
        else
            ms = s_header_retry_after(&resp);
        r.outcome = NOTIFY_RETRY;
        r.retry_after_ms = ms > S_RETRY_AFTER_CAP_MS ? S_RETRY_AFTER_CAP_MS : ms;
        const char *global = sn_http_response_header(&resp, "X-RateLimit-Global");
        s_why(why, why_len, "discord 429%s: %s",
              global && strcmp(global, "true") == 0 ? " (global)" : "", detail);
    } else if (status >= 500 || status == 408) {
        r.outcome = NOTIFY_RETRY;
        r.retry_after_ms = s_header_retry_after(&resp);
        s_why(why, why_len, "discord %ld: %s", status, detail);
    } else {
        /* 401/403 bad token, 404 code 10015 unknown webhook (deleted), 400 invalid form
         * body: never loop on those (Cloudflare bans IPs that do). */
        r.outcome = NOTIFY_PERMANENT;
        if (json_is_integer(code_j))
            s_why(why, why_len, "discord %ld (code %" JSON_INTEGER_FORMAT "): %s", status,
                  json_integer_value(code_j), detail);
        else
            s_why(why, why_len, "discord %ld: %s", status, detail);
    }
    json_decref(e);
out:
    sn_http_response_fini(&resp);
    return r;
}

/* ---- email -------------------------------------------------------------------------------- */

static s_result_t s_send_email(notify_sender_t *self, const sn_channel_config_t *ch,
                               const notify_message_t *msg, char *why, size_t why_len)
{
    s_result_t r = {.outcome = NOTIFY_PERMANENT, .retry_after_ms = -1};
    char *from = s_address(ch->from);
    char *mail_from = sn_strdupf("<%s>", from);
    struct curl_slist *rcpt = NULL;
    for (char **a = ch->to; a && *a; a++) {
        char *addr = s_address(*a);
        char *entry = sn_strdupf("<%s>", addr);
        rcpt = curl_slist_append(rcpt, entry);
        free(entry);
        free(addr);
    }
    char *message = s_mail_message(ch, msg);
    s_upload_t up = {.data = message, .len = strlen(message)};
    char err[CURL_ERROR_SIZE] = "";
    CURL *c = self->smtp;
    curl_easy_reset(c);
    bool is_smtps = strncmp(ch->url, "smtps://", 8) == 0;
    curl_easy_setopt(c, CURLOPT_URL, ch->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, is_smtps ? "smtps" : "smtp");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)s_timeout_ms(ch));
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)s_timeout_ms(ch));
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
    if (!is_smtps && ch->starttls)
        curl_easy_setopt(c, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
    const char *ca = s_ca_file(self, ch);
    if (ca)
        curl_easy_setopt(c, CURLOPT_CAINFO, ca);
    if (ch->username && ch->username[0])
        curl_easy_setopt(c, CURLOPT_USERNAME, ch->username);
    if (ch->password && ch->password[0])
        curl_easy_setopt(c, CURLOPT_PASSWORD, ch->password);
    curl_easy_setopt(c, CURLOPT_MAIL_FROM, mail_from);
    curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpt);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, s_upload_read);
    curl_easy_setopt(c, CURLOPT_READDATA, &up);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)up.len);
    CURLcode cc = curl_easy_perform(c);
    long reply = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &reply);
    /* Drop the borrowed buffers (and the password) from the handle before freeing them. */
    curl_easy_reset(c);
    char *url = sn_http_redact_url(ch->url);
    if (cc == CURLE_OK) {
        r.outcome = NOTIFY_SENT;
    } else if (reply >= 400 && reply < 500) {
        r.outcome = NOTIFY_RETRY; /* 421 busy, 450/451/452 try later */
        s_why(why, why_len, "smtp %s answered %ld: %s", url, reply, err[0] ? err : "-");
    } else if (reply >= 500) {
        s_why(why, why_len, "smtp %s answered %ld: %s", url, reply, err[0] ? err : "-");
    } else {
        switch (cc) {
        case CURLE_LOGIN_DENIED:
        case CURLE_USE_SSL_FAILED: /* the server cannot STARTTLS: never go plain */
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_URL_MALFORMAT:
        case CURLE_UNSUPPORTED_PROTOCOL:
            break;
        default:
            r.outcome = NOTIFY_RETRY; /* timeout, refused, reset, DNS */
        }
        s_why(why, why_len, "smtp %s: %s", url, err[0] ? err : curl_easy_strerror(cc));
    }
    free(url);
    curl_slist_free_all(rcpt);
    free(message);
    free(mail_from);
    free(from);
    return r;
}

/* The RFC 5322 message: CRLF lines, headers ASCII-only (RFC 2047 Subject), the body
 * quoted-printable so that no line passes 76 octets and none starts with a dot. */
static char *s_mail_message(const sn_channel_config_t *ch, const notify_message_t *msg)
{
    static const char *const s_days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const s_months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    s_buf_t b = {0};
    time_t now = (time_t)(sn_wall_ms() / 1000);
    struct tm tm;
    gmtime_r(&now, &tm);
    s_buf_addf(&b, "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n", s_days[tm.tm_wday],
               tm.tm_mday, s_months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
               tm.tm_sec);
    s_buf_addf(&b, "From: %s\r\n", ch->from);
    s_buf_adds(&b, "To: ");
    for (char **a = ch->to; a && *a; a++)
        s_buf_addf(&b, "%s%s", a == ch->to ? "" : ",\r\n ", *a);
    s_buf_adds(&b, "\r\n");
    char *head = s_headline(msg);
    char *cut = notify_truncate_utf16(head, S_SUBJECT_MAX);
    char *subject_text = sn_strdupf("[Sentinel] %s", cut);
    char *subject = notify_rfc2047_subject(subject_text);
    s_buf_addf(&b, "Subject: %s\r\n", subject);
    free(head);
    free(cut);
    free(subject_text);
    free(subject);
    /* Message-ID: <id-left@domain>: the event id (dot-atom characters only) and the
     * domain of the From address, so a retried mail keeps its id. */
    char *from = s_address(ch->from);
    const char *at = strrchr(from, '@');
    const char *domain = at && at[1] ? at + 1 : "sentinel.invalid";
    s_buf_adds(&b, "Message-ID: <");
    for (const char *p = msg->event_id; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-' || c == '_';
        s_buf_add(&b, ok ? &c : "-", 1);
    }
    s_buf_adds(&b, ".sentinel@");
    for (const char *p = domain; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-';
        s_buf_add(&b, ok ? &c : "-", 1);
    }
    s_buf_adds(&b, ">\r\n");
    free(from);
    s_buf_adds(&b, "MIME-Version: 1.0\r\n"
                   "Content-Type: text/plain; charset=UTF-8\r\n"
                   "Content-Transfer-Encoding: quoted-printable\r\n"
                   "Auto-Submitted: auto-generated\r\n");
    s_buf_addf(&b, "X-Sentinel-Severity: %s\r\n",
               strcmp(msg->severity, "critical") == 0  ? "critical"
               : strcmp(msg->severity, "warning") == 0 ? "warning"
                                                       : "info");
    s_buf_adds(&b, "\r\n");
    char *clean_title = s_headline(msg);
    char *body = s_body_text(msg);
    char *text = sn_strdupf("%s\n\n%s%s%s %s\n", clean_title, body, body[0] ? "\n\n" : "",
                            msg->event_type ? msg->event_type : "-", msg->event_id);
    s_qp_encode(&b, text);
    free(clean_title);
    free(body);
    free(text);
    return b.data;
}

/* Quoted-printable (RFC 2045 §6.7): lines end in CRLF, encoded lines <= 76 octets with
 * soft breaks, '=' and non-ASCII encoded, trailing white space encoded, and a '.' that
 * would start a line encoded too, so SMTP's end-of-data can never be met in the body. */
static void s_qp_encode(s_buf_t *b, const char *text)
{
    static const char s_hex[] = "0123456789ABCDEF";
    size_t col = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '\r')
            continue;
        if (*p == '\n') {
            s_buf_adds(b, "\r\n");
            col = 0;
            continue;
        }
        char tok[4];
        size_t n;
        bool is_eol = p[1] == '\0' || p[1] == '\n' || (p[1] == '\r' && p[2] == '\n');
        bool literal =
            (*p >= 33 && *p <= 126 && *p != '=') || ((*p == ' ' || *p == '\t') && !is_eol);
        if (*p == '.' && col == 0)
            literal = false;
        if (literal) {
            tok[0] = (char)*p;
            n = 1;
        } else {
            tok[0] = '=';
            tok[1] = s_hex[*p >> 4];
            tok[2] = s_hex[*p & 0xf];
            n = 3;
        }
        if (col + n > 75) {
            s_buf_adds(b, "=\r\n");
            col = 0;
            if (*p == '.' && n == 1) {
                tok[0] = '=';
                tok[1] = '2';
                tok[2] = 'E';
                n = 3;
            }
        }
        s_buf_add(b, tok, n);
        col += n;
    }
    if (col > 0)
        s_buf_adds(b, "\r\n");
}

static size_t s_upload_read(char *dst, size_t size, size_t nitems, void *arg)
{
    s_upload_t *up = arg;
    size_t room = size * nitems;
    size_t n = up->len - up->off < room ? up->len - up->off : room;
    memcpy(dst, up->data + up->off, n);
    up->off += n;
    return n;
}

/* "Name <a@b>" -> "a@b"; "a@b" -> "a@b". Caller frees. */
static char *s_address(const char *from)
{
    const char *lt = strrchr(from, '<');
    const char *gt = lt ? strchr(lt, '>') : NULL;
    if (lt && gt)
        return sn_strndup(lt + 1, (size_t)(gt - lt - 1));
    while (*from == ' ')
        from++;
    size_t n = strlen(from);
    while (n > 0 && from[n - 1] == ' ')
        n--;
    return sn_strndup(from, n);
}

/* ---- shared helpers ----------------------------------------------------------------------- */

static s_type_t s_type_of(const char *type)
{
    static const char *const s_names[] = {"log",   "file",    "webhook", "telegram",
                                          "slack", "discord", "email"};
    for (size_t i = 0; type && i < SN_ARRAY_LEN(s_names); i++)
        if (strcmp(type, s_names[i]) == 0)
            return (s_type_t)i;
    return S_UNKNOWN;
}

static const char *s_type_name(s_type_t t)
{
    static const char *const s_names[] = {"log",   "file",    "webhook", "telegram",
                                          "slack", "discord", "email",   "unknown"};
    return s_names[t];
}

static int s_timeout_ms(const sn_channel_config_t *ch)
{
    return ch->timeout_ms > 0 ? ch->timeout_ms : S_DEFAULT_TIMEOUT_MS;
}

/* The CA bundle for @ch's TLS peer: the channel's `ca_file`, else the sender's (tests),
 * else NULL (the system store). */
static const char *s_ca_file(const notify_sender_t *self, const sn_channel_config_t *ch)
{
    return ch->ca_file && ch->ca_file[0] ? ch->ca_file : self->ca_file;
}

/* The usual HTTP classification: 2xx sent; 408, 429, 5xx and transport trouble retry
 * (Retry-After kept); other 4xx and unusable URLs are permanent. @who is safe to log. */
static s_result_t s_http_class(sn_rc_t hrc, const sn_http_response_t *resp, const char *who,
                               char *why, size_t why_len)
{
    s_result_t r = {.outcome = NOTIFY_PERMANENT, .retry_after_ms = -1};
    if (hrc != SN_OK) {
        r.outcome = hrc == SN_AGAIN ? NOTIFY_RETRY : NOTIFY_PERMANENT;
        s_why(why, why_len, "%s: %s", who,
              resp->error[0] ? resp->error : (resp->is_timeout ? "timeout" : "transfer failed"));
        return r;
    }
    long st = resp->status;
    if (st >= 200 && st < 300) {
        r.outcome = NOTIFY_SENT;
        return r;
    }
    s_why(why, why_len, "%s answered %ld", who, st);
    if (st == 408 || st == 429 || st >= 500) {
        r.outcome = NOTIFY_RETRY;
        r.retry_after_ms = s_header_retry_after(resp);
    }
    return r;
}

/* Retry-After of @resp in ms (delta seconds or a date, capped at an hour), -1 if none. */
static int64_t s_header_retry_after(const sn_http_response_t *resp)
{
    const char *v = sn_http_response_header(resp, "Retry-After");
    int64_t ms;
    if (v && sn_http_parse_retry_after(v, sn_wall_ms(), S_RETRY_AFTER_CAP_MS, &ms) == SN_OK)
        return ms;
    return -1;
}

/* "1.234" seconds (decimals allowed, non-negative) -> ms rounded up. */
static bool s_parse_seconds(const char *s, int64_t *ms)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0) || v > 86400.0)
        return false;
    *ms = s_seconds_to_ms(v);
    return true;
}

/* Seconds (>= 0, may have decimals) to ms, rounded up, without the binary noise of
 * 64.57 * 1000 = 64570.00000000001 turning into 64571. */
static int64_t s_seconds_to_ms(double seconds)
{
    return (int64_t)ceil(seconds * 1000.0 - 1e-6);
}

static s_cooldown_t *s_cooldown(notify_sender_t *self, const char *name)
{
    for (size_t i = 0; i < self->cooldown_count; i++)
        if (strcmp(self->cooldowns[i].name, name) == 0)
            return &self->cooldowns[i];
    self->cooldowns =
        sn_realloc(self->cooldowns, (self->cooldown_count + 1) * sizeof *self->cooldowns);
    s_cooldown_t *cd = &self->cooldowns[self->cooldown_count++];
    cd->name = sn_strdup(name);
    cd->until_ms = 0;
    return cd;
}

static void s_why(char *why, size_t len, const char *fmt, ...)
{
    if (!why || len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(why, len, fmt, ap);
    va_end(ap);
    if (n < 0)
        why[0] = '\0';
}

/* A service's error text made safe for one log line: printable ASCII, at most
 * @out_len - 1 bytes. */
static void s_detail(const char *in, size_t in_len, char *out, size_t out_len)
{
    size_t o = 0;
    for (size_t i = 0; in && i < in_len && o + 1 < out_len; i++) {
        unsigned char c = (unsigned char)in[i];
        out[o++] = c >= 0x20 && c < 0x7f ? (char)c : ' ';
    }
    while (o > 0 && out[o - 1] == ' ')
        o--;
    out[o] = '\0';
    if (o == 0 && out_len > 1)
        snprintf(out, out_len, "-");
}

/* Decodes one UTF-8 character at @p: its length (1-4), or 0 if the bytes are not valid
 * UTF-8 (overlong, surrogate, out of range, truncated). */
static int s_utf8_next(const unsigned char *p, uint32_t *cp)
{
    if (p[0] < 0x80) {
        *cp = p[0];
        return 1;
    }
    int n;
    uint32_t c, min;
    if ((p[0] & 0xE0) == 0xC0) {
        n = 2, c = p[0] & 0x1F, min = 0x80;
    } else if ((p[0] & 0xF0) == 0xE0) {
        n = 3, c = p[0] & 0x0F, min = 0x800;
    } else if ((p[0] & 0xF8) == 0xF0) {
        n = 4, c = p[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    for (int i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (p[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return n;
}

/* @text as valid UTF-8 without control characters: invalid bytes become U+FFFD; tabs and
 * line breaks are kept unless @is_one_line (then they, like every other control
 * character, become spaces). Caller frees. NULL-safe. */
static char *s_clean_text(const char *text, bool is_one_line)
{
    s_buf_t b = {0};
    s_buf_add(&b, "", 0);
    const unsigned char *p = (const unsigned char *)(text ? text : "");
    while (*p) {
        uint32_t cp;
        int k = s_utf8_next(p, &cp);
        if (k == 0) {
            s_buf_adds(&b, "\xef\xbf\xbd");
            p++;
            continue;
        }
        if (cp == '\r') {
            p++;
            continue;
        }
        if ((cp < 0x20 && !(!is_one_line && (cp == '\n' || cp == '\t'))) || cp == 0x7f ||
            (cp >= 0x80 && cp < 0xA0))
            s_buf_adds(&b, " ");
        else
            s_buf_add(&b, (const char *)p, (size_t)k);
        p += k;
    }
    return b.data;
}

/* "[CRITICAL] title" as one clean line. Caller frees. */
static char *s_headline(const notify_message_t *msg)
{
    const char *s = msg->severity;
    const char *tag = strcmp(s, "critical") == 0  ? "CRITICAL"
                      : strcmp(s, "warning") == 0 ? "WARNING"
                                                  : "INFO";
    char *t = s_clean_text(msg->title, true);
    char *out = sn_strdupf("[%s] %s", tag, t);
    free(t);
    return out;
}

/* The clean body text followed by "key: value" lines of the labels. Caller frees. */
static char *s_body_text(const notify_message_t *msg)
{
    char *text = s_clean_text(msg->text, false);
    s_buf_t b = {0};
    s_buf_adds(&b, text);
    free(text);
    bool is_first = true;
    for (const char *const *kv = msg->labels_kv; kv && kv[0] && kv[1]; kv += 2) {
        char *k = s_clean_text(kv[0], true), *v = s_clean_text(kv[1], true);
        s_buf_addf(&b, "%s%s: %s", is_first ? (b.len ? "\n\n" : "") : "\n", k, v);
        is_first = false;
        free(k);
        free(v);
    }
    return b.data;
}

/* True unless @s is one line of printable ASCII (what a mail header can carry as is). */
static bool s_is_bad_header_text(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p > 0x7e)
            return true;
    return false;
}

static void s_buf_add(s_buf_t *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->data = sn_realloc(b->data, cap);
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void s_buf_adds(s_buf_t *b, const char *s)
{
    s_buf_add(b, s, strlen(s));
}

static void s_buf_addf(s_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    SN_ASSERT(n >= 0);
    s_buf_add(b, s, (size_t)n);
    free(s);
}
