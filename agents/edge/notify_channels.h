/* Notification channels: one delivery attempt of one message to one configured channel
 * (sn_channel_config_t) — log, file (JSON lines), webhook (CloudEvents, signed), telegram
 * (Bot API sendMessage, HTML), slack (incoming webhook), discord (execute webhook) and
 * email (SMTP through libcurl). The notifier decides what to send, when, and how often to
 * retry; this module only renders and sends, classifies the outcome, and tells how long
 * the service asked to be left alone. docs/notifications.md is the operator's view.
 *
 * One attempt per call, never a sleep: a 429 answer returns NOTIFY_RETRY with the wait the
 * service asked for, so a rate-limited channel never holds up other groups; the caller
 * schedules the retry. The sender also remembers each channel's "not before" time (a
 * Telegram/Slack/Discord 429, a Discord X-RateLimit-Remaining of 0): a send to a channel
 * that is cooling down returns NOTIFY_RETRY at once, without a request, so even a caller
 * that retries early never breaks a service's limit. That memory is per sender (per
 * thread and process), not shared between replicas.
 *
 * Secrets never reach a log or a @why text: the Telegram token (it is in the URL path),
 * Slack and Discord webhook URLs, the webhook HMAC secret and the SMTP password. Lines name
 * the channel and its type only (webhook and email URLs are logged redacted).
 *
 * Threads: a notify_sender_t (its HTTP client, its SMTP handle, its cooldowns) belongs to
 * one thread; make one per delivery thread. The free functions are thread-safe. */
#ifndef NOTIFY_CHANNELS_H
#define NOTIFY_CHANNELS_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_config.h"

typedef struct notify_sender notify_sender_t;

/* What to say. Every string is borrowed for the duration of notify_send; UTF-8. Plain
 * text throughout: each channel escapes for its own markup (Telegram HTML, Slack mrkdwn,
 * Discord markdown mentions disabled, RFC 2047 for the mail Subject). */
typedef struct {
    const char *severity;         /* "info" | "warning" | "critical" (required) */
    const char *title;            /* one line: the notification's headline (required; a line
                                     break in it is replaced by a space) */
    const char *text;             /* the body, may span lines; NULL or "" = none */
    const char *event_type;       /* e.g. "deploy.rolled_back"; for a group, the first event's */
    const char *event_id;         /* the notification's id (the event's, or the group
                                     notification's): the mail's Message-ID and log lines
                                     (required). The webhook's X-Sentinel-Event-Id is the
                                     id inside cloudevent_json (this one if it has none). */
    const char *subject;          /* the CloudEvents subject; may be NULL */
    const char *cloudevent_json;  /* the CloudEvents structured-mode JSON: the webhook's body
                                     and the file channel's line, sent byte for byte.
                                     Required for webhook and file; others ignore it. */
    const char *const *labels_kv; /* label pairs: key, value, key, value, ..., NULL (may be
                                     NULL); shown as a fields/context list */
} notify_message_t;

typedef enum {
    NOTIFY_SENT,      /* the service accepted the message */
    NOTIFY_RETRY,     /* not sent, may succeed later: transport error, timeout, 408, 429,
                         5xx, SMTP 4xx, a channel cooling down. Caller waits *retry_after_ms
                         when >= 0 (else its own backoff) and counts the attempt against the
                         channel's max_attempts. A timeout may still have delivered: these
                         services are not idempotent. */
    NOTIFY_PERMANENT, /* never retry this message on this channel: a 4xx meaning the
                         channel is misconfigured or dead (Telegram 400 chat not found, 401,
                         403 bot blocked; Slack 4xx such as no_service, invalid_token,
                         channel_not_found; Discord 401/403/404; webhook 4xx other than
                         408/429; SMTP 5xx, login denied), an unusable channel config, or a
                         message the service refuses as such (invalid_payload). @why says
                         which; the notifier raises an alert on the other channels. */
} notify_outcome_t;

/* A sender for the calling thread. @cfg is borrowed (must outlive the sender); it is used
 * for the instance-independent defaults only — channels are passed to each notify_send.
 * NULL only if libcurl cannot make a handle (logged). */
notify_sender_t *notify_sender_new(const sn_config_t *cfg);
/* Frees; NULL-safe; sets *self_p = NULL. Owning thread only. */
void notify_sender_destroy(notify_sender_t **self_p);

/* Test and deployment hook until the channel config has a `ca_file` field: a PEM CA
 * bundle (copied; NULL = the system store) used to verify the SMTP server's certificate
 * (STARTTLS and smtps://) for every email channel of this sender. A channel's own ca_file,
 * once the config has one, wins. HTTPS channels use the system store. Verification is
 * never switched off. */
void notify_sender_set_ca_file(notify_sender_t *self, const char *path);

/* Checks that @ch has what its type needs (telegram: token, chat_id; slack, discord,
 * webhook: an http(s) url; webhook: a resolved secret; email: smtp:// or smtps:// url,
 * from, at least one to, no CR/LF in addresses; file: path; min_severity known) and
 * registers its secrets with sn_log_add_secret so they are masked in any log line. Call
 * once per channel before sending (the notifier disables a channel that fails).
 * SN_OK, or SN_ERROR with a reason in @why (no secret in it). Any thread. */
SN_NODISCARD sn_rc_t notify_channel_prepare(const sn_channel_config_t *ch, char *why,
                                            size_t why_len);

/* One attempt to deliver @msg on @ch (borrowed; prepared with notify_channel_prepare).
 * Blocks at most ch->timeout_ms (default 5000) plus connect time, never sleeps.
 * *retry_after_ms (required) is set on every return: on NOTIFY_RETRY the wait the service
 * asked for before any next send to this channel, exactly (Telegram parameters.retry_after
 * seconds, Discord's float retry_after or Reset-After, Retry-After headers), or the
 * channel's remaining cooldown, or -1 when the service said nothing (use your backoff);
 * on NOTIFY_SENT the wait before the next send is allowed (Discord bucket exhausted), else
 * 0; on NOTIFY_PERMANENT -1. @why (may be NULL) gets a one-line reason on failure ("" on
 * success), never containing a secret. Logs one debug line per attempt (the log channel:
 * its info line); the caller, which knows the attempt count and the group, logs the
 * outcome at info/warn with @why. Owning thread only. */
notify_outcome_t notify_send(notify_sender_t *self, const sn_channel_config_t *ch,
                             const notify_message_t *msg, int64_t *retry_after_ms, char *why,
                             size_t why_len);

/* Milliseconds until @ch may be sent to again from this sender (0 = now). Lets a caller
 * schedule without a wasted call. Owning thread only. */
int64_t notify_sender_ready_in_ms(notify_sender_t *self, const sn_channel_config_t *ch);

/* "NOTIFY_SENT" -> "sent", "retry", "permanent". */
const char *notify_outcome_name(notify_outcome_t outcome);

/* ---- rendering, exposed for tests and for the notifier's own texts ---------------------- */

/* @text with & < > replaced by &amp; &lt; &gt; (and " by &quot;) — Telegram HTML and
 * Slack mrkdwn escaping. Caller frees. NULL-safe (returns ""). */
char *notify_escape_html(const char *text);
/* Length of UTF-8 @text in UTF-16 code units (how Telegram counts its 4096 limit). */
size_t notify_utf16_len(const char *text);
/* A copy of @text cut to at most @max_units UTF-16 units on a character boundary; when
 * cut, the last character kept is "…" (so the result still fits). Caller frees. */
char *notify_truncate_utf16(const char *text, size_t max_units);
/* The Subject header value for @text: itself when printable ASCII, else RFC 2047
 * encoded-words (=?UTF-8?B?...?=, each <= 75 chars, folded with CRLF SP), never splitting
 * a character. Control characters become spaces. Caller frees. */
char *notify_rfc2047_subject(const char *text);

#endif
