/* notifier (edge): routes journal events to people (ARCHITECTURE §2, §7 step 9). Replicas
 * run active-active: each consumes the journal through the consumer group "notifier"
 * (consumer = its instance), so every entry goes to one replica and an entry left pending
 * by a dead replica is reclaimed by another (XAUTOCLAIM after claim_idle_ms).
 *
 * Severity (docs/pipeline.md): build.succeeded info, build.warning warning, build.failed
 * critical, deploy.promoted info, deploy.failed and deploy.rolled_back critical,
 * deploy.stuck warning, run.succeeded info, run.failed and run.rolled_back critical,
 * gate.rejected critical, alert.raised with the alert's own severity (warning if unset).
 * Other events are acknowledged without a notification. Each configured channel whose
 * min_severity allows it gets the event: `log` one line, `file` one CloudEvents JSON line
 * appended and fsynced, `webhook` a structured-mode CloudEvents POST signed with
 * HMAC-SHA256 (header X-Sentinel-Signature: t=<unix>,v1=<hex of HMAC(secret, "<t>.<body>")>),
 * retried with backoff on transport errors, 408, 429 (Retry-After honoured, capped) and
 * 5xx up to the channel's max_attempts, never on other 4xx.
 *
 * Exactly once in steady state, at least once across crashes: before sending, a replica
 * takes the notification log entry notify:log:<event-id>:<channel> with SET NX semantics
 * ("sending <instance> <incarnation>", expiring after the longest a send can take); after
 * the send it writes "sent ..." (or "failed ...") kept 7 days; the journal entry is
 * acknowledged only when every channel is sent, failed or already sent. A replica that
 * finds another's "sending" mark leaves the entry pending (it comes back through the
 * group) unless that replica is dead — its agent:notifier:<instance> registration expired,
 * or the mark is from an earlier incarnation of itself — in which case it takes the mark
 * over with a compare-and-set and sends. So a replica killed after the receiver accepted
 * and before "sent" was written causes one duplicate (counted as notify_takeovers); a
 * replica killed before sending loses nothing. Receivers can dedupe on the CloudEvents id.
 *
 * Threads: the loop thread does nothing but start and stop the delivery thread, which owns
 * the journal reader and the HTTP client and may block (every call has a timeout). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_backoff.h"
#include "sentinel/sn_crypto.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define S_ROLE "notifier"
#define S_GROUP "notifier"
#define S_LIBRARY "sentinel_notify"
#define S_LOG_RETENTION_MS "604800000" /* 7 days */
#define S_RETRY_AFTER_CAP_MS 30000
#define S_BACKOFF_BASE_MS 200
#define S_BACKOFF_CAP_MS 10000
#define S_REDIS_TIMEOUT_MS 1000
#define S_NEXT_WAIT_MS 200
#define S_MIN_CLAIM_IDLE_MS 5000
#define S_READ_BATCH 8 /* entries taken at once: small, so a slow webhook holds few */
#define S_CE_TYPE_PREFIX "dev.sentinel."
#define S_SIGNATURE_HEADER "X-Sentinel-Signature"

typedef enum { S_INFO = 0, S_WARNING = 1, S_CRITICAL = 2 } s_severity_t;

typedef enum { S_CH_LOG, S_CH_FILE, S_CH_WEBHOOK } s_channel_type_t;

typedef struct {
    const sn_channel_config_t *cfg; /* borrowed from the runtime's config */
    s_channel_type_t type;
    s_severity_t min;
    int timeout_ms;
    int max_attempts;
} s_channel_t;

/* What happened to one (event, channel). */
typedef enum {
    S_DONE, /* sent, failed for good, or already handled: nothing more to do */
    S_BUSY, /* another live replica holds it, Redis is away, or we are stopping: later */
} s_outcome_t;

typedef struct {
    sn_ctx_t *ctx;
    s_channel_t *channels;
    size_t channel_count;
    int claim_idle_ms;
    pthread_t thread;
    bool has_thread;
    int quit; /* atomic */
    /* delivery thread only */
    sn_journal_reader_t *reader;
    sn_http_t *http;
    char incarnation[24];
} s_state_t;

/* The event being delivered, rendered once for every channel. */
typedef struct {
    const sn_envelope_t *env;
    s_severity_t severity;
    char *ce_json; /* the CloudEvents structured-mode body */
    char summary[512];
} s_event_t;

static const char s_lua[] =
    "local function begin(keys, args)\n"
    "  if #keys ~= 1 or #args ~= 3 then return redis.error_reply('SNBAD usage') end\n"
    "  local cur = redis.call('GET', keys[1])\n"
    "  if cur and cur ~= args[3] then return {0, cur} end\n"
    "  if not cur and args[3] ~= '' then return {0, ''} end\n"
    "  redis.call('SET', keys[1], args[1], 'PX', args[2])\n"
    "  return {1, ''}\n"
    "end\n"
    "local function release(keys, args)\n"
    "  if #keys ~= 1 or #args ~= 1 then return redis.error_reply('SNBAD usage') end\n"
    "  if redis.call('GET', keys[1]) == args[1] then return redis.call('DEL', keys[1]) end\n"
    "  return 0\n"
    "end\n"
    "redis.register_function('sentinel_notify_begin', begin)\n"
    "redis.register_function('sentinel_notify_release', release)\n";

static sn_rc_t s_init(sn_ctx_t *ctx, void **state);
static void s_destroy(sn_ctx_t *ctx, void *state);
static void *s_run(void *arg);
static void s_handle(s_state_t *st, sn_journal_entry_t *e);
static bool s_severity_of(const sn_envelope_t *env, s_severity_t *out);
static const char *s_severity_name(s_severity_t s);
static bool s_parse_severity(const char *name, s_severity_t *out);
static char *s_cloudevent(const sn_envelope_t *env, s_severity_t sev);
static void s_summary(const sn_envelope_t *env, char *out, size_t len);
static s_outcome_t s_deliver(s_state_t *st, const s_channel_t *ch, const s_event_t *ev);
static sn_rc_t s_send(s_state_t *st, const s_channel_t *ch, const s_event_t *ev, char *why,
                      size_t why_len);
static sn_rc_t s_send_file(const s_channel_t *ch, const s_event_t *ev, char *why, size_t len);
static sn_rc_t s_send_webhook(s_state_t *st, const s_channel_t *ch, const s_event_t *ev, char *why,
                              size_t why_len);
static bool s_is_stopping(s_state_t *st);
static bool s_sleep(s_state_t *st, int64_t ms);
static bool s_agent_alive(s_state_t *st, const char *instance);
static void s_log_set(s_state_t *st, const char *key, const char *value);

const sn_role_t notifier_role = {
    .name = S_ROLE,
    .agent = "edge",
    .summary = "routes journal events to log, file and webhook channels (replicated)",
    .leadership = SN_LEADERSHIP_NONE,
    .credit = 1,
    .init = s_init,
    .destroy = s_destroy,
};

/* ---- lifecycle ------------------------------------------------------------------------- */

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    const sn_config_t *cfg = sn_ctx_config(ctx);
    s_state_t *st = sn_calloc(1, sizeof *st);
    st->ctx = ctx;
    st->channels = sn_calloc(cfg->channel_count ? cfg->channel_count : 1, sizeof *st->channels);
    for (size_t i = 0; i < cfg->channel_count; i++) {
        const sn_channel_config_t *c = &cfg->channels[i];
        s_channel_t ch = {.cfg = c,
                          .timeout_ms = c->timeout_ms > 0 ? c->timeout_ms : 5000,
                          .max_attempts = c->max_attempts > 0 ? c->max_attempts : 5};
        const char *type = c->type ? c->type : "";
        if (!s_parse_severity(c->min_severity ? c->min_severity : "info", &ch.min)) {
            sn_error("notify", "channel %s: unknown min_severity; channel disabled", c->name);
            continue;
        }
        if (strcmp(type, "log") == 0) {
            ch.type = S_CH_LOG;
        } else if (strcmp(type, "file") == 0 && c->path && c->path[0]) {
            ch.type = S_CH_FILE;
        } else if (strcmp(type, "webhook") == 0 && c->url && c->url[0]) {
            if (!c->secret || !c->secret[0] || strncmp(c->secret, "${", 2) == 0) {
                /* Unsigned deliveries would teach receivers to accept forgeries. */
                sn_error("notify",
                         "channel %s: webhook without a resolved secret; channel "
                         "disabled",
                         c->name);
                continue;
            }
            sn_log_add_secret(c->secret);
            ch.type = S_CH_WEBHOOK;
        } else {
            sn_error("notify", "channel %s: type %s needs %s; channel disabled", c->name, type,
                     strcmp(type, "file") == 0 ? "a path" : "a url");
            continue;
        }
        st->channels[st->channel_count++] = ch;
    }
    if (st->channel_count == 0)
        sn_warn("notify", "no usable channels: events are acknowledged without notifications");
    int ttl = cfg->runtime.agent_ttl_ms > 0 ? cfg->runtime.agent_ttl_ms : 15000;
    st->claim_idle_ms = 2 * ttl > S_MIN_CLAIM_IDLE_MS ? 2 * ttl : S_MIN_CLAIM_IDLE_MS;
    snprintf(st->incarnation, sizeof st->incarnation, "%" PRIu64, sn_ctx_source(ctx)->incarnation);
    sn_redis_add_library(sn_ctx_redis(ctx), S_LIBRARY, s_lua);
    if (pthread_create(&st->thread, NULL, s_run, st) != 0) {
        sn_error("notify", "cannot start the delivery thread: %s", strerror(errno));
        free(st->channels);
        free(st);
        return SN_ERROR;
    }
    st->has_thread = true;
    sn_info("notify", "notifier up: %zu channels, group=%s consumer=%s claim_idle_ms=%d",
            st->channel_count, S_GROUP, sn_ctx_instance(ctx), st->claim_idle_ms);
    *state = st;
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    s_state_t *st = state;
    if (!st)
        return;
    __atomic_store_n(&st->quit, 1, __ATOMIC_RELEASE);
    if (st->has_thread)
        pthread_join(st->thread, NULL);
    free(st->channels);
    free(st);
}

/* ---- the delivery thread ------------------------------------------------------------------ */

static void *s_run(void *arg)
{
    s_state_t *st = arg;
    const sn_config_t *cfg = sn_ctx_config(st->ctx);
    sn_redis_opts_t ro = {
        .unix_path = cfg->redis.unix_path,
        .host = cfg->redis.host,
        .port = cfg->redis.port,
        .namespace_ = cfg->namespace_,
        .timeout_ms = cfg->redis.timeout_ms,
        .name = "notify",
    };
    sn_journal_reader_opts_t jo = {
        .redis = &ro,
        .cursor = "$", /* a new group starts with what happens from now on */
        .batch = S_READ_BATCH,
        .group = S_GROUP,
        .consumer = sn_ctx_instance(st->ctx),
        .claim_idle_ms = st->claim_idle_ms,
    };
    st->reader = sn_journal_reader_new(&jo);
    st->http = sn_http_new();
    if (!st->reader || !st->http) {
        sn_error("notify", "cannot start the journal reader or the http client");
        goto out;
    }
    while (!s_is_stopping(st)) {
        sn_journal_entry_t e;
        if (sn_journal_reader_next(st->reader, S_NEXT_WAIT_MS, &e) != SN_OK)
            continue;
        s_handle(st, &e);
        sn_journal_entry_fini(&e);
    }
out:
    sn_journal_reader_destroy(&st->reader); /* sends the acknowledgements given */
    sn_http_destroy(&st->http);
    return NULL;
}

static void s_handle(s_state_t *st, sn_journal_entry_t *e)
{
    sn_metrics_t *m = sn_ctx_metrics(st->ctx);
    if (e->is_gap)
        return;
    s_event_t ev = {.env = e->env};
    if (!e->env) {
        sn_metrics_add(m, "notify_malformed", 1);
        goto ack;
    }
    if (!s_severity_of(e->env, &ev.severity))
        goto ack;
    ev.ce_json = s_cloudevent(e->env, ev.severity);
    if (!ev.ce_json) {
        sn_warn("notify", "event %s (%s) cannot be rendered; skipped", e->env->id, e->env->type);
        sn_metrics_add(m, "notify_malformed", 1);
        goto ack;
    }
    s_summary(e->env, ev.summary, sizeof ev.summary);
    bool is_all_done = true;
    for (size_t i = 0; i < st->channel_count; i++) {
        const s_channel_t *ch = &st->channels[i];
        if (ev.severity < ch->min)
            continue;
        if (s_deliver(st, ch, &ev) == S_BUSY)
            is_all_done = false;
    }
    free(ev.ce_json);
    if (!is_all_done) {
        sn_metrics_add(m, "notify_deferred", 1);
        return; /* stays pending in the group: comes back when reclaimed */
    }
ack:
    if (e->id[0] && sn_journal_reader_ack(st->reader, e->id) != SN_OK)
        sn_debug("notify", "ack of %s refused", e->id);
}

/* ---- one (event, channel) ------------------------------------------------------------- */

/* FCALL sentinel_notify_begin: SN_OK taken; SN_DECLINED held (*cur = its value, caller
 * frees); SN_AGAIN Redis away. */
static sn_rc_t s_begin(s_state_t *st, const char *key, const char *mark, int64_t ttl_ms,
                       const char *expected, char **cur)
{
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);
    const char *keys[] = {key};
    const char *args[] = {mark, ttl, expected};
    redisReply *r = NULL;
    *cur = NULL;
    if (sn_redis_fcall(sn_ctx_redis(st->ctx), SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r,
                       "sentinel_notify_begin", 1, keys, 3, args, NULL) != SN_OK)
        return SN_AGAIN;
    sn_rc_t rc = SN_AGAIN;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_INTEGER && r->element[1]->type == REDIS_REPLY_STRING) {
        rc = r->element[0]->integer == 1 ? SN_OK : SN_DECLINED;
        if (rc == SN_DECLINED)
            *cur = sn_strdup(r->element[1]->str);
    } else if (r->type == REDIS_REPLY_ERROR) {
        sn_warn("notify", "notification log refused: %s", r->str);
    }
    freeReplyObject(r);
    return rc;
}

static s_outcome_t s_deliver(s_state_t *st, const s_channel_t *ch, const s_event_t *ev)
{
    sn_metrics_t *m = sn_ctx_metrics(st->ctx);
    const char *instance = sn_ctx_instance(st->ctx);
    char *key = sn_strdupf("notify:log:%s:%s", ev->env->id, ch->cfg->name);
    char *mark = sn_strdupf("sending %s %s", instance, st->incarnation);
    /* Longest a send can take, so that a mark of a replica that vanished expires. */
    int64_t ttl_ms = (int64_t)ch->max_attempts * (ch->timeout_ms + S_RETRY_AFTER_CAP_MS) + 10000;
    char *cur = NULL;
    s_outcome_t out = S_BUSY;
    sn_rc_t rc = s_begin(st, key, mark, ttl_ms, "", &cur);
    if (rc == SN_DECLINED) {
        char who[128] = "", inc[32] = "";
        if (strncmp(cur, "sent", 4) == 0 || strncmp(cur, "failed", 6) == 0) {
            sn_metrics_add(m, "notify_duplicates_suppressed", 1);
            out = S_DONE;
            goto out;
        }
        bool is_dead = false;
        if (sscanf(cur, "sending %127s %31s", who, inc) == 2) {
            if (strcmp(who, instance) == 0)
                is_dead = strcmp(inc, st->incarnation) != 0; /* our own earlier life */
            else
                is_dead = !s_agent_alive(st, who);
        }
        if (!is_dead)
            goto out; /* a live replica is on it (or the mark vanished meanwhile: later) */
        char *again = NULL;
        rc = s_begin(st, key, mark, ttl_ms, cur, &again);
        free(again);
        if (rc != SN_OK)
            goto out;
        sn_warn("notify",
                "taking over %s/%s from %s (gone mid-send: the receiver may get it "
                "twice)",
                ev->env->id, ch->cfg->name, who);
        sn_metrics_add(m, "notify_takeovers", 1);
    }
    if (rc != SN_OK)
        goto out; /* Redis away: the entry stays pending */
    char why[256] = "";
    rc = s_send(st, ch, ev, why, sizeof why);
    if (rc == SN_OK) {
        char *v = sn_strdupf("sent %s %" PRId64, instance, sn_wall_ms());
        s_log_set(st, key, v);
        free(v);
        sn_metrics_add(m, "notify_sent", 1);
        out = S_DONE;
    } else if (rc == SN_ERROR) {
        char *v = sn_strdupf("failed %s", why);
        s_log_set(st, key, v);
        free(v);
        sn_warn("notify", "channel %s gave up on %s %s: %s", ch->cfg->name, ev->env->type,
                ev->env->id, why);
        sn_metrics_add(m, "notify_failed", 1);
        out = S_DONE;
    } else {
        /* Stopping mid-send: hand it back at once instead of waiting for the mark to
         * expire. */
        const char *keys[] = {key};
        const char *args[] = {mark};
        redisReply *r = NULL;
        if (sn_redis_fcall(sn_ctx_redis(st->ctx), SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r,
                           "sentinel_notify_release", 1, keys, 1, args, NULL) == SN_OK)
            freeReplyObject(r);
    }
out:
    free(cur);
    free(mark);
    free(key);
    return out;
}

/* SN_OK sent; SN_ERROR given up (@why says why); SN_AGAIN stopping before it was sent. */
static sn_rc_t s_send(s_state_t *st, const s_channel_t *ch, const s_event_t *ev, char *why,
                      size_t why_len)
{
    switch (ch->type) {
    case S_CH_LOG:
        sn_info("notify", "%s %s subject=%s id=%s: %s", s_severity_name(ev->severity),
                ev->env->type, ev->env->subject && ev->env->subject[0] ? ev->env->subject : "-",
                ev->env->id, ev->summary);
        return SN_OK;
    case S_CH_FILE: {
        sn_backoff_t b;
        sn_backoff_init(&b, S_BACKOFF_BASE_MS, S_BACKOFF_CAP_MS);
        for (int attempt = 1;; attempt++) {
            if (s_send_file(ch, ev, why, why_len) == SN_OK)
                return SN_OK;
            if (attempt >= ch->max_attempts)
                return SN_ERROR;
            if (!s_sleep(st, sn_backoff_next(&b)))
                return SN_AGAIN;
        }
    }
    case S_CH_WEBHOOK:
        return s_send_webhook(st, ch, ev, why, why_len);
    }
    return SN_ERROR;
}

static sn_rc_t s_send_file(const s_channel_t *ch, const s_event_t *ev, char *why, size_t len)
{
    int fd = open(ch->cfg->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(why, len, "open %s: %s", ch->cfg->path, strerror(errno));
        return SN_ERROR;
    }
    /* One write per line: O_APPEND keeps lines of concurrent replicas whole. */
    size_t n = strlen(ev->ce_json);
    char *line = sn_malloc(n + 1);
    memcpy(line, ev->ce_json, n);
    line[n] = '\n';
    ssize_t w = write(fd, line, n + 1);
    int err = w == (ssize_t)(n + 1) ? 0 : (w < 0 ? errno : EIO);
    if (err == 0 && fsync(fd) != 0)
        err = errno;
    free(line);
    close(fd);
    if (err != 0) {
        snprintf(why, len, "write %s: %s", ch->cfg->path, strerror(err));
        return SN_ERROR;
    }
    return SN_OK;
}

static sn_rc_t s_send_webhook(s_state_t *st, const s_channel_t *ch, const s_event_t *ev, char *why,
                              size_t why_len)
{
    const char *body = ev->ce_json;
    size_t body_len = strlen(body);
    sn_backoff_t b;
    sn_backoff_init(&b, S_BACKOFF_BASE_MS, S_BACKOFF_CAP_MS);
    char *url = sn_http_redact_url(ch->cfg->url);
    sn_rc_t rc = SN_ERROR;
    for (int attempt = 1;; attempt++) {
        /* The signature covers the timestamp, so a captured delivery cannot be replayed
         * later under a fresh one; it is recomputed for every attempt. */
        char t[24];
        snprintf(t, sizeof t, "%" PRId64, sn_wall_ms() / 1000);
        struct iovec iov[3] = {{.iov_base = t, .iov_len = strlen(t)},
                               {.iov_base = (void *)".", .iov_len = 1},
                               {.iov_base = (void *)body, .iov_len = body_len}};
        uint8_t mac[SN_SHA256_LEN];
        char hex[SN_SHA256_HEX_LEN + 1];
        if (sn_hmac_sha256_v(ch->cfg->secret, strlen(ch->cfg->secret), iov, 3, mac) != SN_OK) {
            snprintf(why, why_len, "cannot sign");
            break;
        }
        sn_hex_encode(mac, sizeof mac, hex);
        char sig[160], id_h[96];
        snprintf(sig, sizeof sig, S_SIGNATURE_HEADER ": t=%s,v1=%s", t, hex);
        snprintf(id_h, sizeof id_h, "X-Sentinel-Event-Id: %s", ev->env->id);
        const char *headers[] = {"Content-Type: application/cloudevents+json; charset=UTF-8", sig,
                                 id_h, "User-Agent: sentinel-notifier/" SN_VERSION, NULL};
        sn_http_request_t req = {.method = "POST",
                                 .url = ch->cfg->url,
                                 .headers = headers,
                                 .body = body,
                                 .body_len = body_len,
                                 .timeout_ms = ch->timeout_ms,
                                 .max_body_bytes = 64 * 1024};
        sn_http_response_t resp;
        sn_rc_t hrc = sn_http_perform(st->http, &req, &resp);
        long status = resp.status;
        int64_t retry_after = resp.retry_after_ms;
        bool is_retryable;
        if (hrc == SN_OK && status >= 200 && status < 300) {
            sn_http_response_fini(&resp);
            sn_info("notify", "webhook %s accepted %s %s (status %ld, attempt %d)", ch->cfg->name,
                    ev->env->type, ev->env->id, status, attempt);
            rc = SN_OK;
            break;
        }
        if (hrc == SN_OK) {
            if (snprintf(why, why_len, "%s answered %ld", url, status) >= (int)why_len)
                why[why_len - 1] = '\0'; /* a reason cut short is still a reason */
            is_retryable = status == 408 || status == 429 || status >= 500;
        } else {
            if (snprintf(why, why_len, "%s: %s", url,
                         resp.error[0] ? resp.error : "transfer failed") >= (int)why_len)
                why[why_len - 1] = '\0';
            is_retryable = hrc == SN_AGAIN;
        }
        sn_http_response_fini(&resp);
        if (!is_retryable || attempt >= ch->max_attempts) {
            if (is_retryable)
                snprintf(why + strlen(why), why_len - strlen(why), " after %d attempts", attempt);
            break;
        }
        int64_t delay = sn_backoff_next(&b);
        if (retry_after >= 0)
            delay = retry_after < S_RETRY_AFTER_CAP_MS ? retry_after : S_RETRY_AFTER_CAP_MS;
        sn_info("notify", "webhook %s: %s; retry %d/%d in %" PRId64 " ms", ch->cfg->name, why,
                attempt + 1, ch->max_attempts, delay);
        sn_metrics_add(sn_ctx_metrics(st->ctx), "notify_retries", 1);
        if (!s_sleep(st, delay)) {
            rc = SN_AGAIN;
            break;
        }
    }
    free(url);
    return rc;
}

/* ---- rendering -------------------------------------------------------------------------- */

static bool s_severity_of(const sn_envelope_t *env, s_severity_t *out)
{
    static const struct {
        const char *type;
        s_severity_t severity;
    } s_table[] = {
        {"build.succeeded", S_INFO},   {"build.warning", S_WARNING},
        {"build.failed", S_CRITICAL},  {"deploy.promoted", S_INFO},
        {"deploy.failed", S_CRITICAL}, {"deploy.rolled_back", S_CRITICAL},
        {"deploy.stuck", S_WARNING},   {"run.succeeded", S_INFO},
        {"run.failed", S_CRITICAL},    {"run.rolled_back", S_CRITICAL},
        {"gate.rejected", S_CRITICAL},
    };
    if (!env->type)
        return false;
    if (strcmp(env->type, "alert.raised") == 0) {
        const char *s = env->body_case == SENTINEL__V1__ENVELOPE__BODY_ALERT && env->alert
                            ? env->alert->severity
                            : NULL;
        if (!s || !s_parse_severity(s, out))
            *out = S_WARNING;
        return true;
    }
    for (size_t i = 0; i < SN_ARRAY_LEN(s_table); i++)
        if (strcmp(env->type, s_table[i].type) == 0) {
            *out = s_table[i].severity;
            return true;
        }
    return false;
}

static const char *s_severity_name(s_severity_t s)
{
    return s == S_CRITICAL ? "critical" : s == S_WARNING ? "warning" : "info";
}

static bool s_parse_severity(const char *name, s_severity_t *out)
{
    if (strcmp(name, "info") == 0)
        *out = S_INFO;
    else if (strcmp(name, "warning") == 0)
        *out = S_WARNING;
    else if (strcmp(name, "critical") == 0)
        *out = S_CRITICAL;
    else
        return false;
    return true;
}

/* The CloudEvents 1.0 structured-mode JSON of @env (contracts/cdevents.md §2): id = the
 * envelope id, type = "dev.sentinel.<type>", data = the body message as sn_json renders
 * it, extensions severity and sequence. Caller frees; NULL if the body cannot render. */
static char *s_cloudevent(const sn_envelope_t *env, s_severity_t sev)
{
    json_t *data = NULL;
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY__NOT_SET) {
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(
            &sentinel__v1__envelope__descriptor, (unsigned)env->body_case);
        if (!f || f->type != PROTOBUF_C_TYPE_MESSAGE)
            return NULL;
        const ProtobufCMessage *body =
            *(const ProtobufCMessage *const *)((const char *)env + f->offset);
        data = body ? sn_json_from_message(body) : json_object();
        if (!data)
            return NULL;
    } else {
        data = json_object();
    }
    char when[40];
    time_t secs = (time_t)(env->time_unix_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + n, sizeof when - n, ".%03dZ", (int)(env->time_unix_ms % 1000));
    char *type = sn_strdupf(S_CE_TYPE_PREFIX "%s", env->type);
    char seq[24];
    snprintf(seq, sizeof seq, "%020" PRIu64, env->seq);
    json_t *ce =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o}", "specversion", "1.0", "id",
                  env->id, "source", env->source && env->source[0] ? env->source : "sentinel",
                  "type", type, "time", when, "datacontenttype", "application/json", "severity",
                  s_severity_name(sev), "sequence", seq, "data", data);
    free(type);
    if (!ce)
        return NULL;
    if (env->subject && env->subject[0])
        json_object_set_new(ce, "subject", json_string(env->subject));
    char *s = json_dumps(ce, JSON_COMPACT);
    json_decref(ce);
    return s;
}

static void s_summary(const sn_envelope_t *env, char *out, size_t len)
{
    switch (env->body_case) {
    case SENTINEL__V1__ENVELOPE__BODY_RUN: {
        const Sentinel__V1__Run *r = env->run;
        snprintf(out, len, "run %s of %s/%s at %.12s%s%s", r->run_id ? r->run_id : "-",
                 r->project ? r->project : "-", r->environment ? r->environment : "-",
                 r->sha ? r->sha : "-", r->reason && r->reason[0] ? ": " : "",
                 r->reason ? r->reason : "");
        return;
    }
    case SENTINEL__V1__ENVELOPE__BODY_DEPLOY: {
        const Sentinel__V1__Deploy *d = env->deploy;
        snprintf(out, len, "deploy %s of %s/%s/%s%s%s", d->deploy_id ? d->deploy_id : "-",
                 d->project ? d->project : "-", d->environment ? d->environment : "-",
                 d->target ? d->target : "-", d->error && d->error[0] ? ": " : "",
                 d->error ? d->error : "");
        return;
    }
    case SENTINEL__V1__ENVELOPE__BODY_ALERT:
        snprintf(out, len, "alert %s: %s", env->alert->name ? env->alert->name : "-",
                 env->alert->summary ? env->alert->summary : "");
        return;
    default:
        snprintf(out, len, "%s", env->type);
    }
}

/* ---- helpers ----------------------------------------------------------------------------- */

static bool s_is_stopping(s_state_t *st)
{
    return __atomic_load_n(&st->quit, __ATOMIC_ACQUIRE) || sn_ctx_is_stopping(st->ctx);
}

/* Sleeps @ms in slices; false if stopping began meanwhile. */
static bool s_sleep(s_state_t *st, int64_t ms)
{
    int64_t until = sn_mono_ms() + ms;
    for (;;) {
        if (s_is_stopping(st))
            return false;
        int64_t left = until - sn_mono_ms();
        if (left <= 0)
            return true;
        if (left > 100)
            left = 100;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)left * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* A replica is alive while its registration agent:notifier:<instance> exists. When Redis
 * cannot tell, it is presumed alive (no takeover, so no duplicate). */
static bool s_agent_alive(s_state_t *st, const char *instance)
{
    char *key = sn_strdupf("%sagent:%s:%s", sn_redis_ns(sn_ctx_redis(st->ctx)), S_ROLE, instance);
    const char *argv[] = {"EXISTS", key};
    redisReply *r = NULL;
    bool alive = true;
    if (sn_redis_cmd(sn_ctx_redis(st->ctx), SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r, 2, argv, NULL) ==
        SN_OK) {
        alive = !(r->type == REDIS_REPLY_INTEGER && r->integer == 0);
        freeReplyObject(r);
    }
    free(key);
    return alive;
}

/* SET notify:log:... @value PX 7 days. A failure leaves the "sending" mark, which expires:
 * at worst a later redelivery is sent again. */
static void s_log_set(s_state_t *st, const char *key, const char *value)
{
    char *full = sn_strdupf("%s%s", sn_redis_ns(sn_ctx_redis(st->ctx)), key);
    const char *argv[] = {"SET", full, value, "PX", S_LOG_RETENTION_MS};
    redisReply *r = NULL;
    if (sn_redis_cmd(sn_ctx_redis(st->ctx), SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r, 5, argv, NULL) ==
        SN_OK)
        freeReplyObject(r);
    else
        sn_warn("notify", "notification log %s not updated (redis away)", key);
    free(full);
}
