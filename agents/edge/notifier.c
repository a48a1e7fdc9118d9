/* notifier (edge): routes journal events to people, as operators know it from
 * Alertmanager (docs/notify-routing.md; ARCHITECTURE §2, §4, §7 step 9). Replicas run
 * active-active and share everything through Redis:
 *
 * Intake. Each replica consumes the journal through the consumer group "notifier"
 * (consumer = its instance): every entry goes to one replica, an entry left pending by a
 * dead replica is reclaimed (XAUTOCLAIM after claim_idle_ms). An event is routed through
 * the route tree (notify_route.h) and added to the pending group of every route it
 * reaches — a Redis hash of its events plus a due time in the zset notify:groups, in one
 * Redis Function call (idempotent on route and event id) — and only then acknowledged.
 *
 * Sending. Every replica polls notify:groups for due groups and claims one with a lease
 * (notify:group:<key>:claim, SET NX semantics in Lua). The claim cuts the batch (the events
 * gathered so far, or the standing alerts for a repeat), which stays in Redis until every
 * channel of the route is done: the notification log notify:log:<notification-id>:<channel>
 * says per channel "sent", "failed", "retry <n> <at>" or "muted". A replica that dies
 * mid-send loses its lease; another replica resumes the same batch with the same
 * notification id and skips the channels already logged — at least once: a channel that
 * accepted the message just before the crash, and whose "sent" was not yet written, gets
 * it twice. Retries are scheduled, never slept: a 429's wait moves the group's due time
 * and the thread goes on with other groups. A permanent channel error is logged "failed",
 * never retried, and raises alert.raised notify.channel_failed (critical) that the next
 * notifications route to the OTHER channels.
 *
 * Silences (service notify.silence) and inhibition rules are applied when a batch is sent,
 * as in Alertmanager; muted events are recorded in notify:muted:<event-id>.
 *
 * Threads: the loop thread only starts/stops the delivery thread and hands silence
 * requests to a job thread. The delivery thread owns the journal reader, the channel
 * sender and the journal writer for alerts, and may block (every call has a timeout). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "notify_channels.h"
#include "notify_route.h"
#include "sentinel/sn_agent.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define S_MAX_EVENT_AGE_MS (3600LL * 1000) /* older events are history, not news */
#define S_ROLE "notifier"
#define S_GROUP "notifier"
#define S_SERVICE "notify.silence"
#define S_LIBRARY "sentinel_notify"
#define S_LOG_RETENTION_MS 604800000LL /* 7 days: notification log, muted marks */
#define S_SEEN_TTL_MS "86400000"       /* an event joins a route's group once a day */
#define S_SILENCE_KEEP_MS 604800000LL  /* an expired silence is listed 7 more days */
#define S_STANDING_MAX_MS 86400000LL   /* a standing alert repeats for a day at most */
#define S_CHANFAIL_TTL_MS "600000"     /* one channel_failed alert per channel per 10 min */
#define S_RETRY_AFTER_CAP_MS 900000    /* the longest wait a service may ask for */
#define S_BACKOFF_BASE_MS 200
#define S_BACKOFF_CAP_MS 10000
#define S_REDIS_TIMEOUT_MS 1000
#define S_NEXT_WAIT_MS 100
#define S_INTAKE_BURST 32
#define S_DUE_BATCH "16"
#define S_MIN_CLAIM_IDLE_MS 5000
#define S_READ_BATCH 8
#define S_LEASE_MARGIN_MS 5000
#define S_CE_TYPE_PREFIX "dev.sentinel."
#define S_GROUP_CE_TYPE "dev.sentinel.notification"
#define S_ALERT_CHANNEL_FAILED "notify.channel_failed"
#define S_MAX_SILENCE_MATCHERS 16
#define S_MAX_TEXT 1024

typedef struct {
    const sn_channel_config_t *cfg; /* borrowed from the runtime's config */
    notify_severity_t min;
    bool is_log;
    int timeout_ms;
    int max_attempts;
} s_channel_t;

typedef struct {
    sn_ctx_t *ctx;
    const sn_config_t *cfg;
    notify_tree_t *tree;
    s_channel_t *channels;
    size_t channel_count;
    const sn_inhibit_config_t *rules;
    size_t rule_count;
    int claim_idle_ms;
    char owner[160]; /* "<instance> <incarnation>": the claim value */
    pthread_t thread;
    bool has_thread;
    int quit; /* atomic */
    /* delivery thread only */
    sn_journal_reader_t *reader;
    notify_sender_t *sender;
    sn_journal_t *journal;
    sn_source_t source;
} s_state_t;

/* One event of a batch being sent. */
typedef struct {
    sn_envelope_t *env;
    notify_labels_t labels;
    char *enc;      /* notify_labels_encode */
    char *ce;       /* its CloudEvents JSON */
    char muted[96]; /* "" or "silenced <id>" / "inhibited" */
    char summary[512];
} s_item_t;

typedef struct {
    char *id;
    char **matchers;
    size_t matcher_count;
    int64_t starts_ms, ends_ms;
} s_silence_t;

static const char s_lua[] =
    /* KEYS groups meta events seen active standing; ARGV gk event_id env now wait interval
     * route labels nid_hint standing_key seen_ttl -> 1 added, 0 seen before */
    "local function ingest(keys, args)\n"
    "  if #keys ~= 6 or #args ~= 11 then return redis.error_reply('SNBAD usage') end\n"
    "  if not redis.call('SET', keys[4], '1', 'NX', 'PX', args[11]) then return 0 end\n"
    "  redis.call('HSET', keys[3], args[2], args[3])\n"
    "  if args[10] ~= '' then\n"
    "    redis.call('HSET', keys[5], args[10], args[3])\n"
    "    redis.call('HSET', keys[6], args[10], args[1])\n"
    "  end\n"
    "  if redis.call('EXISTS', keys[2]) == 0 then\n"
    "    redis.call('HSET', keys[2], 'route', args[7], 'labels', args[8], 'seq', '0')\n"
    "  end\n"
    "  if args[9] ~= '' then redis.call('HSETNX', keys[2], 'next_nid', args[9]) end\n"
    "  local now = tonumber(args[4])\n"
    "  local last = redis.call('HGET', keys[2], 'last_sent')\n"
    "  local want\n"
    "  if last then want = math.max(now, tonumber(last) + tonumber(args[6]))\n"
    "  else want = now + tonumber(args[5]) end\n"
    "  local due = redis.call('ZSCORE', keys[1], args[1])\n"
    "  if due and tonumber(due) <= want then return 1 end\n"
    "  redis.call('ZADD', keys[1], want, args[1])\n"
    "  return 1\n"
    "end\n"
    /* KEYS groups meta events batch active claim; ARGV gk now owner lease repeat fresh_nid
     * -> {0} nothing to send now | {1, nid, seq, kind} claimed */
    "local function claim(keys, args)\n"
    "  if #keys ~= 6 or #args ~= 6 then return redis.error_reply('SNBAD usage') end\n"
    "  local now = tonumber(args[2])\n"
    "  local due = redis.call('ZSCORE', keys[1], args[1])\n"
    "  if not due or tonumber(due) > now then return {0} end\n"
    "  local c = redis.call('GET', keys[6])\n"
    "  if c and c ~= args[3] then\n"
    "    local ttl = redis.call('PTTL', keys[6])\n"
    "    if ttl < 0 then ttl = 1000 end\n"
    "    redis.call('ZADD', keys[1], now + ttl, args[1])\n"
    "    return {0}\n"
    "  end\n"
    "  if redis.call('EXISTS', keys[2]) == 0 then\n"
    "    redis.call('ZREM', keys[1], args[1])\n"
    "    redis.call('DEL', keys[3], keys[4], keys[6])\n"
    "    return {0}\n"
    "  end\n"
    "  local function take()\n"
    "    redis.call('SET', keys[6], args[3], 'PX', args[4])\n"
    "    redis.call('ZADD', keys[1], now + tonumber(args[4]), args[1])\n"
    "  end\n"
    "  if redis.call('EXISTS', keys[4]) == 1 then\n"
    "    take()\n"
    "    local m = redis.call('HMGET', keys[2], 'nid', 'seq', 'kind')\n"
    "    return {1, m[1] or args[6], m[2] or '0', m[3] or 'new'}\n"
    "  end\n"
    "  local kind\n"
    "  if redis.call('HLEN', keys[3]) > 0 then\n"
    "    redis.call('RENAME', keys[3], keys[4])\n"
    "    kind = 'new'\n"
    "  else\n"
    "    local last = tonumber(redis.call('HGET', keys[2], 'last_sent') or '0')\n"
    "    local rep = tonumber(args[5])\n"
    "    local active = redis.call('HLEN', keys[5])\n"
    "    if active > 0 and rep > 0 and now - last >= rep then\n"
    "      redis.call('HSET', keys[4], unpack(redis.call('HGETALL', keys[5])))\n"
    "      kind = 'repeat'\n"
    "    elseif active > 0 and rep > 0 then\n"
    "      redis.call('ZADD', keys[1], last + rep, args[1])\n"
    "      return {0}\n"
    "    else\n"
    "      redis.call('ZREM', keys[1], args[1])\n"
    "      redis.call('DEL', keys[2], keys[5])\n"
    "      return {0}\n"
    "    end\n"
    "  end\n"
    "  local nid = redis.call('HGET', keys[2], 'next_nid') or args[6]\n"
    "  redis.call('HDEL', keys[2], 'next_nid')\n"
    "  local seq = redis.call('HINCRBY', keys[2], 'seq', 1)\n"
    "  redis.call('HSET', keys[2], 'nid', nid, 'kind', kind)\n"
    "  take()\n"
    "  return {1, nid, tostring(seq), kind}\n"
    "end\n"
    /* KEYS groups meta events batch active claim; ARGV gk owner now interval -> 1 | 0 */
    "local function finish(keys, args)\n"
    "  if #keys ~= 6 or #args ~= 4 then return redis.error_reply('SNBAD usage') end\n"
    "  if redis.call('GET', keys[6]) ~= args[2] then return 0 end\n"
    "  redis.call('DEL', keys[4], keys[6])\n"
    "  redis.call('HSET', keys[2], 'last_sent', args[3])\n"
    "  redis.call('HDEL', keys[2], 'nid', 'kind')\n"
    "  local now, iv = tonumber(args[3]), tonumber(args[4])\n"
    "  if iv <= 0 and redis.call('HLEN', keys[3]) == 0 and redis.call('HLEN', keys[5]) == 0 then\n"
    "    redis.call('ZREM', keys[1], args[1])\n"
    "    redis.call('DEL', keys[2])\n"
    "    return 1\n"
    "  end\n"
    "  redis.call('ZADD', keys[1], now + math.max(iv, 0), args[1])\n"
    "  return 1\n"
    "end\n"
    /* KEYS groups claim; ARGV gk owner at -> 1 | 0 */
    "local function postpone(keys, args)\n"
    "  if #keys ~= 2 or #args ~= 3 then return redis.error_reply('SNBAD usage') end\n"
    "  if redis.call('GET', keys[2]) ~= args[2] then return 0 end\n"
    "  redis.call('DEL', keys[2])\n"
    "  redis.call('ZADD', keys[1], args[3], args[1])\n"
    "  return 1\n"
    "end\n"
    /* KEYS silence set; ARGV id ttl field value ... -> 1 */
    "local function silence_put(keys, args)\n"
    "  if #keys ~= 2 or #args < 4 then return redis.error_reply('SNBAD usage') end\n"
    "  redis.call('HSET', keys[1], unpack(args, 3))\n"
    "  redis.call('PEXPIRE', keys[1], args[2])\n"
    "  redis.call('SADD', keys[2], args[1])\n"
    "  return 1\n"
    "end\n"
    /* KEYS silence; ARGV now keep -> 1 expired | 0 unknown */
    "local function silence_expire(keys, args)\n"
    "  if #keys ~= 1 or #args ~= 2 then return redis.error_reply('SNBAD usage') end\n"
    "  if redis.call('EXISTS', keys[1]) == 0 then return 0 end\n"
    "  local now = tonumber(args[1])\n"
    "  local ends = tonumber(redis.call('HGET', keys[1], 'ends_unix_ms') or '0')\n"
    "  if ends > now then redis.call('HSET', keys[1], 'ends_unix_ms', args[1]) end\n"
    "  local starts = tonumber(redis.call('HGET', keys[1], 'starts_unix_ms') or '0')\n"
    "  if starts > now then redis.call('HSET', keys[1], 'starts_unix_ms', args[1]) end\n"
    "  redis.call('PEXPIRE', keys[1], args[2])\n"
    "  return 1\n"
    "end\n"
    "redis.register_function('sentinel_notify_ingest', ingest)\n"
    "redis.register_function('sentinel_notify_claim', claim)\n"
    "redis.register_function('sentinel_notify_finish', finish)\n"
    "redis.register_function('sentinel_notify_postpone', postpone)\n"
    "redis.register_function('sentinel_notify_silence_put', silence_put)\n"
    "redis.register_function('sentinel_notify_silence_expire', silence_expire)\n";

static sn_rc_t s_init(sn_ctx_t *ctx, void **state);
static void s_destroy(sn_ctx_t *ctx, void *state);
static void s_on_request(sn_ctx_t *ctx, void *state, sn_request_t *req);
static sn_rc_t s_silence_job(sn_ctx_t *ctx, void *state, const sn_request_t *req,
                             sn_envelope_t *reply, const char **nak_reason);
static void *s_run(void *arg);
static bool s_ingest(s_state_t *st, const sn_envelope_t *env, const uint8_t *raw, size_t raw_len);
static bool s_resolve(s_state_t *st, const sn_envelope_t *env, const notify_labels_t *l);
static void s_flush_due(s_state_t *st);
static void s_flush_group(s_state_t *st, const char *gk);
static char *s_cloudevent(const sn_envelope_t *env, notify_severity_t sev);
static void s_summary(const sn_envelope_t *env, char *out, size_t len);
static bool s_is_stopping(s_state_t *st);
static sn_rc_t s_cmd(s_state_t *st, redisReply **r, int argc, const char **argv,
                     const size_t *lens);
static sn_rc_t s_fcall(s_state_t *st, redisReply **r, const char *fn, int nkeys, const char **keys,
                       int nargs, const char **args, const size_t *lens);
static char *s_key(s_state_t *st, const char *fmt, ...) SN_PRINTF(2, 3);
static char *s_get(s_state_t *st, const char *key);
static void s_set(s_state_t *st, const char *key, const char *value, int64_t px_ms);
static s_silence_t *s_silences_load(s_state_t *st, bool with_expired, size_t *count);
static void s_silences_free(s_silence_t *s, size_t n);
static const s_channel_t *s_channel(const s_state_t *st, const char *name);

const sn_role_t notifier_role = {
    .name = S_ROLE,
    .agent = "edge",
    .summary = "routes journal events to channels: route tree, groups, silences, inhibition "
               "(replicated)",
    .services = (const char *const[]){S_SERVICE, NULL},
    .leadership = SN_LEADERSHIP_NONE,
    .credit = 1,
    .init = s_init,
    .on_request = s_on_request,
    .destroy = s_destroy,
};

/* ---- lifecycle ------------------------------------------------------------------------- */

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    const sn_config_t *cfg = sn_ctx_config(ctx);
    char why[256] = "";
    notify_tree_t *tree = notify_tree_new(cfg, why, sizeof why);
    if (!tree) {
        sn_error("notify", "notify: %s", why);
        return SN_ERROR;
    }
    s_state_t *st = sn_calloc(1, sizeof *st);
    st->ctx = ctx;
    st->cfg = cfg;
    st->tree = tree;
    st->rules = notify_tree_inhibit_rules(tree, &st->rule_count);
    st->channels = sn_calloc(cfg->channel_count ? cfg->channel_count : 1, sizeof *st->channels);
    for (size_t i = 0; i < cfg->channel_count; i++) {
        const sn_channel_config_t *c = &cfg->channels[i];
        s_channel_t ch = {.cfg = c,
                          .timeout_ms = c->timeout_ms > 0 ? c->timeout_ms : 5000,
                          .max_attempts = c->max_attempts > 0 ? c->max_attempts : 5};
        if (!notify_severity_parse(c->min_severity ? c->min_severity : "info", &ch.min)) {
            sn_error("notify", "channel %s: unknown min_severity; channel disabled", c->name);
            continue;
        }
        ch.is_log = c->type && strcmp(c->type, "log") == 0;
        if (!ch.is_log && notify_channel_prepare(c, why, sizeof why) != SN_OK) {
            sn_error("notify", "channel %s: %s; channel disabled", c->name, why);
            continue;
        }
        if (ch.is_log)
            ch.timeout_ms = 100;
        st->channels[st->channel_count++] = ch;
    }
    if (st->channel_count == 0)
        sn_warn("notify", "no usable channels: events are acknowledged without notifications");
    int ttl = cfg->runtime.agent_ttl_ms > 0 ? cfg->runtime.agent_ttl_ms : 15000;
    st->claim_idle_ms = 2 * ttl > S_MIN_CLAIM_IDLE_MS ? 2 * ttl : S_MIN_CLAIM_IDLE_MS;
    snprintf(st->owner, sizeof st->owner, "%s %" PRIu64, sn_ctx_instance(ctx),
             sn_ctx_source(ctx)->incarnation);
    sn_source_init(&st->source, S_ROLE, sn_ctx_instance(ctx));
    sn_redis_add_library(sn_ctx_redis(ctx), S_LIBRARY, s_lua);
    if (pthread_create(&st->thread, NULL, s_run, st) != 0) {
        sn_error("notify", "cannot start the delivery thread: %s", strerror(errno));
        notify_tree_destroy(&st->tree);
        free(st->channels);
        free(st);
        return SN_ERROR;
    }
    st->has_thread = true;
    const notify_route_t *root = notify_tree_root(tree);
    sn_info("notify",
            "notifier up: %zu channels, %s routing (group_wait_ms=%d group_interval_ms=%d "
            "repeat_interval_ms=%d), %zu inhibit rules, group=%s consumer=%s",
            st->channel_count, notify_tree_is_legacy(tree) ? "per-event" : "grouped",
            root->group_wait_ms, root->group_interval_ms, root->repeat_interval_ms, st->rule_count,
            S_GROUP, sn_ctx_instance(ctx));
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
    notify_tree_destroy(&st->tree);
    free(st->channels);
    free(st);
}

/* ---- the delivery thread ------------------------------------------------------------------ */

static void *s_run(void *arg)
{
    s_state_t *st = arg;
    const sn_config_t *cfg = st->cfg;
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
        /* A new group starts at the beginning of the journal: the notifier may start
         * after the first events (`sentinelctl up` starts every role at once). Events older
         * than S_MAX_EVENT_AGE_MS are acknowledged unsent, so a first start on an old
         * journal does not replay history. Later starts resume where the group is. */
        .cursor = "0",
        .batch = S_READ_BATCH,
        .group = S_GROUP,
        .consumer = sn_ctx_instance(st->ctx),
        .claim_idle_ms = st->claim_idle_ms,
    };
    st->reader = sn_journal_reader_new(&jo);
    st->sender = notify_sender_new(cfg);
    sn_journal_opts_t wo = {.redis = sn_ctx_redis(st->ctx),
                            .source = &st->source,
                            .max_len = cfg->runtime.journal_max_len,
                            .timeout_ms = S_REDIS_TIMEOUT_MS};
    st->journal = sn_journal_new(&wo);
    if (!st->reader || !st->sender || !st->journal) {
        sn_error("notify", "cannot start the journal reader, writer or the channel sender");
        goto out;
    }
    sn_metrics_t *m = sn_ctx_metrics(st->ctx);
    while (!s_is_stopping(st)) {
        for (int n = 0; n < S_INTAKE_BURST && !s_is_stopping(st); n++) {
            sn_journal_entry_t e;
            if (sn_journal_reader_next(st->reader, n == 0 ? S_NEXT_WAIT_MS : 0, &e) != SN_OK)
                break;
            bool is_done = true;
            if (!e.is_gap) {
                if (!e.env)
                    sn_metrics_add(m, "notify_malformed", 1);
                else if (e.env->time_unix_ms > 0 &&
                         sn_wall_ms() - e.env->time_unix_ms > S_MAX_EVENT_AGE_MS)
                    sn_metrics_add(m, "notify_too_old", 1);
                else
                    is_done = s_ingest(st, e.env, e.raw, e.raw_len);
            }
            if (is_done && e.id[0] && sn_journal_reader_ack(st->reader, e.id) != SN_OK)
                sn_debug("notify", "ack of %s refused", e.id);
            if (!is_done)
                sn_metrics_add(m, "notify_deferred", 1); /* pending: comes back reclaimed */
            sn_journal_entry_fini(&e);
        }
        s_flush_due(st);
    }
out:
    sn_journal_reader_destroy(&st->reader); /* sends the acknowledgements given */
    notify_sender_destroy(&st->sender);
    sn_journal_destroy(&st->journal);
    return NULL;
}

/* ---- intake --------------------------------------------------------------------------- */

/* The key that identifies a standing alert until it is resolved, or "" for one-shot
 * events. */
static void s_standing_key(const sn_envelope_t *env, const notify_labels_t *l, char *out,
                           size_t len)
{
    out[0] = '\0';
    if (!env->type)
        return;
    if (strcmp(env->type, "deploy.stuck") == 0) {
        const char *id = env->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY && env->deploy &&
                                 env->deploy->deploy_id && env->deploy->deploy_id[0]
                             ? env->deploy->deploy_id
                             : (env->subject ? env->subject : "");
        snprintf(out, len, "deploy.stuck:%s", id);
    } else if (strcmp(env->type, "alert.raised") == 0 || strcmp(env->type, "alert.resolved") == 0) {
        snprintf(out, len, "alert:%s:%s/%s/%s", notify_labels_get(l, "alertname"),
                 notify_labels_get(l, "project"), notify_labels_get(l, "environment"),
                 notify_labels_get(l, "target"));
    }
}

/* Resolving events end standing alerts (no more repeats) and the inhibition of their
 * sources: deploy.promoted / deploy.failed / deploy.rolled_back end the deploy.stuck of
 * their deploy; alert.resolved ends the alert.raised of the same name and labels;
 * deploy.promoted and run.succeeded end every inhibiting source of their project and
 * environment, alert.resolved those of its alert. False if Redis did not answer. */
static bool s_resolve(s_state_t *st, const sn_envelope_t *env, const notify_labels_t *l)
{
    if (notify_tree_is_legacy(st->tree))
        return true; /* no standing alerts, no inhibition */
    const char *type = env->type ? env->type : "";
    char key[512] = "";
    bool is_alert = strcmp(type, "alert.resolved") == 0;
    if (is_alert) {
        s_standing_key(env, l, key, sizeof key);
    } else if ((strcmp(type, "deploy.promoted") == 0 || strcmp(type, "deploy.failed") == 0 ||
                strcmp(type, "deploy.rolled_back") == 0) &&
               env->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY && env->deploy &&
               env->deploy->deploy_id && env->deploy->deploy_id[0]) {
        snprintf(key, sizeof key, "deploy.stuck:%s", env->deploy->deploy_id);
    }
    bool ok = true;
    redisReply *r = NULL;
    if (key[0]) {
        char *standing = s_key(st, "notify:standing");
        const char *argv[] = {"HGET", standing, key};
        if (s_cmd(st, &r, 3, argv, NULL) != SN_OK) {
            ok = false;
        } else if (r->type == REDIS_REPLY_STRING) {
            char *active = s_key(st, "notify:group:%s:active", r->str);
            const char *a1[] = {"HDEL", active, key};
            const char *a2[] = {"HDEL", standing, key};
            redisReply *r2 = NULL;
            if (s_cmd(st, &r2, 3, a1, NULL) == SN_OK)
                freeReplyObject(r2);
            if (s_cmd(st, &r2, 3, a2, NULL) == SN_OK)
                freeReplyObject(r2);
            sn_info("notify", "%s %s resolves standing %s", type, env->id, key);
            free(active);
        }
        if (r)
            freeReplyObject(r);
        r = NULL;
        free(standing);
    }
    bool ends_sources =
        is_alert || strcmp(type, "deploy.promoted") == 0 || strcmp(type, "run.succeeded") == 0;
    if (!ends_sources || !ok)
        return ok;
    char *zkey = s_key(st, "notify:inhibitors");
    const char *argv[] = {"ZRANGE", zkey, "0", "-1"};
    if (s_cmd(st, &r, 4, argv, NULL) != SN_OK) {
        free(zkey);
        return false;
    }
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        notify_labels_t src;
        const char *member = r->element[i]->str;
        if (!member || !notify_labels_decode(member, &src))
            continue;
        bool same_place =
            strcmp(notify_labels_get(&src, "project"), notify_labels_get(l, "project")) == 0 &&
            strcmp(notify_labels_get(&src, "environment"), notify_labels_get(l, "environment")) ==
                0;
        if (is_alert)
            same_place = same_place && strcmp(notify_labels_get(&src, "alertname"),
                                              notify_labels_get(l, "alertname")) == 0;
        if (!same_place)
            continue;
        const char *a[] = {"ZREM", zkey, member};
        redisReply *r2 = NULL;
        if (s_cmd(st, &r2, 3, a, NULL) == SN_OK)
            freeReplyObject(r2);
        sn_info("notify", "%s %s ends the inhibition by %s of %s/%s", type, env->id,
                notify_labels_get(&src, "type"), notify_labels_get(&src, "project"),
                notify_labels_get(&src, "environment"));
    }
    freeReplyObject(r);
    free(zkey);
    return true;
}

/* Routes one journal event into its pending groups. True when it is safely recorded (or
 * needs no notification): the entry may be acknowledged. */
static bool s_ingest(s_state_t *st, const sn_envelope_t *env, const uint8_t *raw, size_t raw_len)
{
    sn_metrics_t *m = sn_ctx_metrics(st->ctx);
    notify_labels_t l;
    notify_labels_any(env, &l);
    if (!s_resolve(st, env, &l))
        return false;
    if (!notify_labels_from_envelope(env, &l))
        return true; /* not a notification */
    const notify_route_t *routes[NOTIFY_MAX_MATCHED];
    size_t n = notify_tree_route(st->tree, &l, routes, NOTIFY_MAX_MATCHED);
    bool is_legacy = notify_tree_is_legacy(st->tree);
    char *enc = notify_labels_encode(&l);
    int64_t now = sn_wall_ms();
    bool ok = true;
    if (!is_legacy && notify_is_inhibit_source(st->rules, st->rule_count, &l)) {
        /* Active for the root's repeat_interval, or until a resolving event. */
        char *zkey = s_key(st, "notify:inhibitors");
        char score[32];
        snprintf(score, sizeof score, "%" PRId64,
                 now + notify_tree_root(st->tree)->repeat_interval_ms);
        const char *argv[] = {"ZADD", zkey, score, enc};
        redisReply *r = NULL;
        if (s_cmd(st, &r, 4, argv, NULL) == SN_OK)
            freeReplyObject(r);
        else
            ok = false;
        free(zkey);
    }
    for (size_t i = 0; i < n && ok; i++) {
        const notify_route_t *rt = routes[i];
        char gk[NOTIFY_GROUP_KEY_MAX];
        notify_group_key(rt, &l, env->id, gk);
        char standing[512] = "";
        if (!is_legacy && rt->repeat_interval_ms > 0)
            s_standing_key(env, &l, standing, sizeof standing);
        char *kg = sn_strdupf("notify:groups");
        char *km = sn_strdupf("notify:group:%s", gk);
        char *ke = sn_strdupf("notify:group:%s:events", gk);
        char *ks = sn_strdupf("notify:seen:%s:%s", rt->id, env->id);
        char *ka = sn_strdupf("notify:group:%s:active", gk);
        const char *keys[] = {kg, km, ke, ks, ka, "notify:standing"};
        char snow[24], swait[24], siv[24];
        snprintf(snow, sizeof snow, "%" PRId64, now);
        snprintf(swait, sizeof swait, "%d", rt->group_wait_ms);
        snprintf(siv, sizeof siv, "%d", rt->group_interval_ms);
        const char *args[] = {
            gk,     env->id, (const char *)raw,        snow,     swait,        siv,
            rt->id, enc,     is_legacy ? env->id : "", standing, S_SEEN_TTL_MS};
        size_t lens[SN_ARRAY_LEN(args)];
        for (size_t k = 0; k < SN_ARRAY_LEN(args); k++)
            lens[k] = k == 2 ? raw_len : strlen(args[k]);
        redisReply *r = NULL;
        if (s_fcall(st, &r, "sentinel_notify_ingest", 6, keys, (int)SN_ARRAY_LEN(args), args,
                    lens) != SN_OK) {
            ok = false;
        } else {
            if (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
                sn_debug("notify", "%s %s joins group %s", env->type, env->id, gk);
            else if (r->type == REDIS_REPLY_INTEGER)
                sn_metrics_add(m, "notify_duplicates_suppressed", 1);
            else
                ok = false;
            freeReplyObject(r);
        }
        free(kg);
        free(km);
        free(ke);
        free(ks);
        free(ka);
    }
    free(enc);
    if (ok)
        sn_metrics_add(m, "notify_events_grouped", 1);
    return ok;
}

/* ---- sending ------------------------------------------------------------------------------ */

static void s_flush_due(s_state_t *st)
{
    char *zkey = s_key(st, "notify:groups");
    char now[24];
    snprintf(now, sizeof now, "%" PRId64, sn_wall_ms());
    const char *argv[] = {"ZRANGEBYSCORE", zkey, "-inf", now, "LIMIT", "0", S_DUE_BATCH};
    redisReply *r = NULL;
    sn_rc_t rc = s_cmd(st, &r, 7, argv, NULL);
    free(zkey);
    if (rc != SN_OK)
        return;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements && !s_is_stopping(st); i++)
        if (r->element[i]->type == REDIS_REPLY_STRING)
            s_flush_group(st, r->element[i]->str);
    freeReplyObject(r);
}

static int s_item_cmp(const void *a, const void *b)
{
    const s_item_t *x = a, *y = b;
    return strcmp(x->env->id, y->env->id);
}

/* What one channel should do with the batch. */
typedef enum { S_STEP_DONE, S_STEP_LATER } s_step_t;

typedef struct {
    s_state_t *st;
    const char *gk;
    const char *nid;
    const notify_route_t *route;
    bool is_repeat;
    s_item_t *items;
    size_t count;
} s_batch_t;

/* The group's CloudEvents JSON: type dev.sentinel.notification, id the notification id,
 * data {group, route, repeat, labels (the group_by values), events: [CloudEvents]}. */
static char *s_group_cloudevent(const s_batch_t *b, const s_item_t **sel, size_t n,
                                notify_severity_t sev)
{
    json_t *events = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *ce = json_loads(sel[i]->ce, 0, NULL);
        if (ce)
            json_array_append_new(events, ce);
    }
    json_t *labels = json_object();
    for (size_t i = 0; b->route->group_by && b->route->group_by[i]; i++) {
        const char *v = notify_labels_get(&sel[0]->labels, b->route->group_by[i]);
        if (v)
            json_object_set_new(labels, b->route->group_by[i], json_string(v));
    }
    char when[40];
    int64_t ms = sn_wall_ms();
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t w = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + w, sizeof when - w, ".%03dZ", (int)(ms % 1000));
    json_t *ce =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:{s:s, s:s, s:b, s:o, s:o}}", "specversion",
                  "1.0", "id", b->nid, "source", "sentinel/notifier", "type", S_GROUP_CE_TYPE,
                  "time", when, "datacontenttype", "application/json", "severity",
                  notify_severity_name(sev), "data", "group", b->gk, "route", b->route->id,
                  "repeat", b->is_repeat, "labels", labels, "events", events);
    if (!ce)
        return NULL;
    char *s = json_dumps(ce, JSON_COMPACT);
    json_decref(ce);
    return s;
}

/* The alert.raised notify.channel_failed for @ch, journaled so that the notifier routes
 * it like any alert (excluding @ch). Once per channel per S_CHANFAIL_TTL_MS. */
static void s_raise_channel_failed(s_state_t *st, const s_channel_t *ch, const char *why)
{
    char *gate = s_key(st, "notify:chanfail:%s", ch->cfg->name);
    const char *argv[] = {"SET", gate, "1", "NX", "PX", S_CHANFAIL_TTL_MS};
    redisReply *r = NULL;
    bool first = false;
    if (s_cmd(st, &r, 6, argv, NULL) == SN_OK) {
        first = r->type == REDIS_REPLY_STATUS;
        freeReplyObject(r);
    }
    free(gate);
    if (!first)
        return;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &st->source, "alert.raised", id);
    Sentinel__V1__Alert alert = SENTINEL__V1__ALERT__INIT;
    alert.name = S_ALERT_CHANNEL_FAILED;
    alert.severity = "critical";
    char *summary = sn_strdupf("notification channel %s (%s) failed permanently: %s", ch->cfg->name,
                               ch->cfg->type ? ch->cfg->type : "?", why);
    alert.summary = summary;
    Sentinel__V1__Alert__LabelsEntry e1 = SENTINEL__V1__ALERT__LABELS_ENTRY__INIT;
    e1.key = "channel";
    e1.value = ch->cfg->name;
    Sentinel__V1__Alert__LabelsEntry *entries[] = {&e1};
    alert.n_labels = 1;
    alert.labels = entries;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_ALERT;
    env.alert = &alert;
    sn_journal_result_t res;
    if (sn_journal_commit(st->journal, NULL, NULL, 0, &env, &res) == SN_OK)
        sn_warn("notify", "alert.raised %s channel=%s id=%s", S_ALERT_CHANNEL_FAILED, ch->cfg->name,
                id);
    else
        sn_warn("notify", "alert %s for channel %s not journaled (redis away)",
                S_ALERT_CHANNEL_FAILED, ch->cfg->name);
    free(summary);
}

/* True if @it is a channel_failed alert about @ch (never sent to the channel it is about). */
static bool s_is_about(const s_item_t *it, const s_channel_t *ch)
{
    const sn_envelope_t *env = it->env;
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_ALERT || !env->alert || !env->alert->name ||
        strcmp(env->alert->name, S_ALERT_CHANNEL_FAILED) != 0)
        return false;
    for (size_t i = 0; i < env->alert->n_labels; i++)
        if (env->alert->labels[i]->key && strcmp(env->alert->labels[i]->key, "channel") == 0)
            return env->alert->labels[i]->value &&
                   strcmp(env->alert->labels[i]->value, ch->cfg->name) == 0;
    return false;
}

/* The wait a service asked for (a 429's, or Discord's exhausted bucket) is the channel's,
 * not one replica's: it is shared through notify:cooldown:<channel> (PX the wait), so no
 * replica calls the service before the wait is over — the sender's own memory covers only
 * the replica that got the answer. */
static void s_cooldown_share(s_state_t *st, const s_channel_t *ch, int64_t wait_ms)
{
    char *key = s_key(st, "notify:cooldown:%s", ch->cfg->name);
    s_set(st, key, sn_ctx_instance(st->ctx), wait_ms);
    free(key);
}

/* Milliseconds left of @ch's shared cooldown (0: none, or Redis did not answer). */
static int64_t s_cooldown_left(s_state_t *st, const s_channel_t *ch)
{
    char *key = s_key(st, "notify:cooldown:%s", ch->cfg->name);
    const char *argv[] = {"PTTL", key};
    redisReply *r = NULL;
    int64_t left = 0;
    if (s_cmd(st, &r, 2, argv, NULL) == SN_OK) {
        if (r->type == REDIS_REPLY_INTEGER && r->integer > 0)
            left = r->integer;
        freeReplyObject(r);
    }
    free(key);
    return left;
}

/* One step of channel @ch for the batch: already done, not yet due (retry), or one
 * attempt. S_STEP_LATER sets *at_ms (wall clock) to when it is due again. */
static s_step_t s_channel_step(const s_batch_t *b, const s_channel_t *ch, int64_t *at_ms)
{
    s_state_t *st = b->st;
    sn_metrics_t *m = sn_ctx_metrics(st->ctx);
    char *key = s_key(st, "notify:log:%s:%s", b->nid, ch->cfg->name);
    char *cur = s_get(st, key);
    s_step_t out = S_STEP_DONE;
    const s_item_t **sel = sn_calloc(b->count ? b->count : 1, sizeof *sel);
    char *title = NULL, *text = NULL, *group_ce = NULL;
    int attempts = 0;
    int64_t now = sn_wall_ms();
    if (!cur) {
        out = S_STEP_LATER; /* Redis away: try again soon */
        *at_ms = now + 1000;
        goto out;
    }
    if (strncmp(cur, "retry ", 6) == 0) {
        long long at = 0;
        if (sscanf(cur, "retry %d %lld", &attempts, &at) != 2)
            attempts = 0;
        if (at > now) {
            out = S_STEP_LATER;
            *at_ms = at;
            goto out;
        }
    } else if (cur[0]) {
        goto out; /* sent, failed or muted */
    }
    size_t n = 0, muted = 0;
    bool has_channel_alert = false;
    notify_severity_t sev = NOTIFY_SEV_INFO;
    for (size_t i = 0; i < b->count; i++) {
        const s_item_t *it = &b->items[i];
        if (it->labels.severity < ch->min || s_is_about(it, ch))
            continue;
        if (it->muted[0]) {
            muted++;
            continue;
        }
        sel[n++] = it;
        if (it->labels.severity > sev)
            sev = it->labels.severity;
        if (it->env->alert && it->env->alert->name &&
            strcmp(it->env->alert->name, S_ALERT_CHANNEL_FAILED) == 0)
            has_channel_alert = true;
    }
    if (n == 0) {
        if (muted > 0) {
            s_set(st, key, "muted", S_LOG_RETENTION_MS);
            sn_info("notify", "notification %s to %s: every event muted (silenced or inhibited)",
                    b->nid, ch->cfg->name);
        }
        goto out;
    }
    int64_t cooling = notify_sender_ready_in_ms(st->sender, ch->cfg);
    int64_t shared = s_cooldown_left(st, ch);
    if (shared > cooling)
        cooling = shared;
    if (cooling > 0) {
        out = S_STEP_LATER;
        *at_ms = now + cooling;
        goto out;
    }
    bool is_single = notify_tree_is_legacy(st->tree);
    const sn_envelope_t *first = sel[0]->env;
    if (is_single) {
        title = sn_strdup(sel[0]->summary);
    } else {
        const notify_labels_t *l0 = &sel[0]->labels;
        bool same_type = true;
        for (size_t i = 1; i < n && same_type; i++)
            same_type = strcmp(sel[i]->env->type, first->type) == 0;
        title = sn_strdupf(
            "%s%s: %zu %s event%s for %s/%s", b->is_repeat ? "[repeat] " : "",
            notify_severity_name(sev), n, same_type ? first->type : "", n == 1 ? "" : "s",
            notify_labels_get(l0, "project")[0] ? notify_labels_get(l0, "project") : "-",
            notify_labels_get(l0, "environment")[0] ? notify_labels_get(l0, "environment") : "-");
        size_t cap = 64, len = 0;
        text = sn_malloc(cap);
        text[0] = '\0';
        for (size_t i = 0; i < n; i++) {
            char line[700];
            int w = snprintf(line, sizeof line, "%s%s %s", i ? "\n" : "", sel[i]->env->type,
                             sel[i]->summary);
            size_t wl = w < 0 ? 0 : (size_t)w >= sizeof line ? sizeof line - 1 : (size_t)w;
            if (len + wl + 1 > cap) {
                while (len + wl + 1 > cap)
                    cap *= 2;
                text = sn_realloc(text, cap);
            }
            memcpy(text + len, line, wl);
            len += wl;
            text[len] = '\0';
        }
        group_ce = s_group_cloudevent(b, sel, n, sev);
    }
    char subject[300];
    if (is_single)
        snprintf(subject, sizeof subject, "%s", first->subject ? first->subject : "");
    else
        snprintf(subject, sizeof subject, "%s/%s", notify_labels_get(&sel[0]->labels, "project"),
                 notify_labels_get(&sel[0]->labels, "environment"));
    const char *kv[2 * NOTIFY_LABEL_COUNT + 1];
    size_t nkv = 0;
    for (size_t i = 0; b->route->group_by && b->route->group_by[i] && nkv + 2 < SN_ARRAY_LEN(kv);
         i++) {
        const char *v = notify_labels_get(&sel[0]->labels, b->route->group_by[i]);
        if (v && v[0]) {
            kv[nkv++] = b->route->group_by[i];
            kv[nkv++] = v;
        }
    }
    kv[nkv] = NULL;
    notify_message_t msg = {.severity = notify_severity_name(sev),
                            .title = title,
                            .text = text,
                            .event_type = first->type,
                            .event_id = b->nid,
                            .subject = subject[0] ? subject : NULL,
                            .cloudevent_json = is_single ? sel[0]->ce : group_ce,
                            .labels_kv = nkv ? kv : NULL};
    char why[256] = "";
    int64_t retry_after = -1;
    notify_outcome_t oc;
    if (ch->is_log) {
        /* The log channel: one line, by exactly one replica. */
        if (is_single)
            sn_info("notify", "%s %s subject=%s id=%s: %s", msg.severity, first->type,
                    first->subject && first->subject[0] ? first->subject : "-", b->nid, title);
        else
            sn_info("notify", "%s notification subject=%s id=%s: %s", msg.severity, subject, b->nid,
                    title);
        oc = NOTIFY_SENT;
    } else {
        oc = notify_send(st->sender, ch->cfg, &msg, &retry_after, why, sizeof why);
    }
    attempts++;
    if (retry_after > 0 && !ch->is_log && oc != NOTIFY_PERMANENT)
        s_cooldown_share(st, ch, retry_after);
    if (oc == NOTIFY_SENT) {
        char *v = sn_strdupf("sent %s %" PRId64, sn_ctx_instance(st->ctx), sn_wall_ms());
        s_set(st, key, v, S_LOG_RETENTION_MS);
        free(v);
        sn_metrics_add(m, "notify_sent", 1);
        if (!ch->is_log)
            sn_info("notify", "%s sent %s (%zu event%s, group %s, attempt %d)", ch->cfg->name,
                    b->nid, n, n == 1 ? "" : "s", b->gk, attempts);
    } else if (oc == NOTIFY_PERMANENT || attempts >= ch->max_attempts) {
        char *v = oc == NOTIFY_PERMANENT ? sn_strdupf("failed %s", why)
                                         : sn_strdupf("failed %s after %d attempts", why, attempts);
        s_set(st, key, v, S_LOG_RETENTION_MS);
        free(v);
        sn_warn("notify", "channel %s gave up on %s (%s): %s%s", ch->cfg->name, b->nid, first->type,
                why, oc == NOTIFY_PERMANENT ? " (permanent)" : "");
        sn_metrics_add(m, "notify_failed", 1);
        if (oc == NOTIFY_PERMANENT && !has_channel_alert)
            s_raise_channel_failed(st, ch, why);
    } else {
        int64_t delay = retry_after;
        if (delay < 0) {
            int shift = attempts - 1 < 10 ? attempts - 1 : 10;
            delay = (int64_t)S_BACKOFF_BASE_MS << shift;
            if (delay > S_BACKOFF_CAP_MS)
                delay = S_BACKOFF_CAP_MS;
        } else if (delay > S_RETRY_AFTER_CAP_MS) {
            delay = S_RETRY_AFTER_CAP_MS;
        }
        *at_ms = sn_wall_ms() + delay;
        char *v = sn_strdupf("retry %d %" PRId64 " %s", attempts, *at_ms, why);
        s_set(st, key, v, S_LOG_RETENTION_MS);
        free(v);
        sn_info("notify", "channel %s: %s; retry %d/%d of %s in %" PRId64 " ms", ch->cfg->name, why,
                attempts + 1, ch->max_attempts, b->nid, delay);
        sn_metrics_add(m, "notify_retries", 1);
        out = S_STEP_LATER;
    }
out:
    free(title);
    free(text);
    free(group_ce);
    free(sel);
    free(cur);
    free(key);
    return out;
}

/* Marks the events of the batch muted by an active silence or an active inhibiting
 * source (recorded in notify:muted:<event-id>). */
static void s_mute(s_state_t *st, s_item_t *items, size_t count)
{
    int64_t now = sn_wall_ms();
    size_t ns = 0;
    s_silence_t *sil = s_silences_load(st, false, &ns);
    notify_labels_t *src = NULL;
    size_t nsrc = 0;
    char **src_enc = NULL;
    if (!notify_tree_is_legacy(st->tree)) {
        char *zkey = s_key(st, "notify:inhibitors");
        char snow[24];
        snprintf(snow, sizeof snow, "%" PRId64, now);
        const char *a1[] = {"ZREMRANGEBYSCORE", zkey, "-inf", snow};
        const char *a2[] = {"ZRANGEBYSCORE", zkey, snow, "+inf"};
        redisReply *r = NULL;
        if (s_cmd(st, &r, 4, a1, NULL) == SN_OK)
            freeReplyObject(r);
        if (s_cmd(st, &r, 4, a2, NULL) == SN_OK) {
            if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
                src = sn_calloc(r->elements, sizeof *src);
                src_enc = sn_calloc(r->elements, sizeof *src_enc);
                for (size_t i = 0; i < r->elements; i++)
                    if (r->element[i]->str && notify_labels_decode(r->element[i]->str, &src[nsrc]))
                        src_enc[nsrc++] = sn_strdup(r->element[i]->str);
            }
            freeReplyObject(r);
        }
        free(zkey);
    }
    for (size_t i = 0; i < count; i++) {
        s_item_t *it = &items[i];
        for (size_t k = 0; k < ns && !it->muted[0]; k++)
            if (sil[k].starts_ms <= now && now < sil[k].ends_ms &&
                notify_matchers_match(sil[k].matchers, &it->labels))
                snprintf(it->muted, sizeof it->muted, "silenced %s", sil[k].id);
        for (size_t k = 0; k < nsrc && !it->muted[0]; k++)
            for (size_t r = 0; r < st->rule_count && !it->muted[0]; r++)
                if (notify_inhibits(&st->rules[r], &src[k], &it->labels,
                                    strcmp(src_enc[k], it->enc) == 0))
                    snprintf(it->muted, sizeof it->muted, "inhibited by %s",
                             notify_labels_get(&src[k], "type"));
        if (it->muted[0]) {
            char *key = s_key(st, "notify:muted:%s", it->env->id);
            s_set(st, key, it->muted, S_LOG_RETENTION_MS);
            free(key);
            sn_info("notify", "%s %s %s", it->env->type, it->env->id, it->muted);
            sn_metrics_add(sn_ctx_metrics(st->ctx), "notify_muted", 1);
        }
    }
    for (size_t k = 0; k < nsrc; k++)
        free(src_enc[k]);
    free(src_enc);
    free(src);
    s_silences_free(sil, ns);
}

static void s_flush_group(s_state_t *st, const char *gk)
{
    char route_id[32];
    size_t rl = strcspn(gk, "-");
    snprintf(route_id, sizeof route_id, "%.*s", (int)(rl < sizeof route_id ? rl : 0), gk);
    const notify_route_t *route = notify_tree_find(st->tree, route_id);
    if (!route)
        route = notify_tree_root(st->tree); /* the config changed: send it anyway */
    int64_t lease = S_LEASE_MARGIN_MS;
    for (size_t i = 0; i < route->channel_count; i++) {
        const s_channel_t *ch = s_channel(st, route->channels[i]);
        if (ch)
            lease += ch->timeout_ms + 1000;
    }
    char *kg = sn_strdupf("notify:groups");
    char *km = sn_strdupf("notify:group:%s", gk);
    char *ke = sn_strdupf("notify:group:%s:events", gk);
    char *kb = sn_strdupf("notify:group:%s:batch", gk);
    char *ka = sn_strdupf("notify:group:%s:active", gk);
    char *kc = sn_strdupf("notify:group:%s:claim", gk);
    const char *keys[] = {kg, km, ke, kb, ka, kc};
    char snow[24], slease[24], srep[24], fresh[SN_ID_LEN + 1];
    snprintf(snow, sizeof snow, "%" PRId64, sn_wall_ms());
    snprintf(slease, sizeof slease, "%" PRId64, lease);
    snprintf(srep, sizeof srep, "%d", route->repeat_interval_ms);
    sn_id_new(fresh);
    const char *args[] = {gk, snow, st->owner, slease, srep, fresh};
    redisReply *r = NULL;
    s_item_t *items = NULL;
    size_t count = 0;
    redisReply *batch = NULL;
    if (s_fcall(st, &r, "sentinel_notify_claim", 6, keys, 6, args, NULL) != SN_OK)
        goto out;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[0]->integer != 1 ||
        r->elements != 4) {
        if (r->type == REDIS_REPLY_ERROR)
            sn_warn("notify", "claim of group %s refused: %s", gk, r->str);
        goto out;
    }
    char nid[64];
    snprintf(nid, sizeof nid, "%s", r->element[1]->str ? r->element[1]->str : fresh);
    bool is_repeat = r->element[3]->str && strcmp(r->element[3]->str, "repeat") == 0;
    const char *a[] = {"HGETALL", kb};
    char *full_kb = s_key(st, "%s", kb);
    a[1] = full_kb;
    sn_rc_t rc = s_cmd(st, &batch, 2, a, NULL);
    free(full_kb);
    if (rc != SN_OK || batch->type != REDIS_REPLY_ARRAY)
        goto out; /* the lease runs out and the group comes back */
    items = sn_calloc(batch->elements / 2 + 1, sizeof *items);
    int64_t now = sn_wall_ms();
    for (size_t i = 0; i + 1 < batch->elements; i += 2) {
        redisReply *v = batch->element[i + 1];
        sn_envelope_t *env = sn_envelope_unpack(v->str, v->len, SN_MAX_FRAME_BYTES, NULL);
        if (!env) {
            sn_metrics_add(sn_ctx_metrics(st->ctx), "notify_malformed", 1);
            continue;
        }
        s_item_t *it = &items[count];
        notify_labels_any(env, &it->labels);
        if (is_repeat && env->time_unix_ms > 0 && now - env->time_unix_ms > S_STANDING_MAX_MS) {
            /* A standing alert nobody resolved stops repeating after a day. */
            char *akey = s_key(st, "%s", ka);
            const char *hd[] = {"HDEL", akey, batch->element[i]->str};
            redisReply *r2 = NULL;
            if (s_cmd(st, &r2, 3, hd, NULL) == SN_OK)
                freeReplyObject(r2);
            free(akey);
            sn_envelope_free(&env);
            continue;
        }
        it->env = env;
        (void)notify_labels_from_envelope(env, &it->labels);
        it->enc = notify_labels_encode(&it->labels);
        it->ce = s_cloudevent(env, it->labels.severity);
        if (!it->ce)
            it->ce = sn_strdup("{}");
        s_summary(env, it->summary, sizeof it->summary);
        count++;
    }
    if (count > 1)
        qsort(items, count, sizeof *items, s_item_cmp);
    s_mute(st, items, count);
    s_batch_t b = {.st = st,
                   .gk = gk,
                   .nid = nid,
                   .route = route,
                   .is_repeat = is_repeat,
                   .items = items,
                   .count = count};
    int64_t later = 0;
    for (size_t i = 0; i < route->channel_count && !s_is_stopping(st); i++) {
        const s_channel_t *ch = s_channel(st, route->channels[i]);
        if (!ch)
            continue; /* disabled at start (logged then) */
        int64_t at = 0;
        if (s_channel_step(&b, ch, &at) == S_STEP_LATER && (later == 0 || at < later))
            later = at;
    }
    freeReplyObject(r);
    r = NULL;
    if (s_is_stopping(st) && later == 0)
        later = sn_wall_ms(); /* hand it back at once */
    if (later) {
        char sat[24];
        snprintf(sat, sizeof sat, "%" PRId64, later);
        const char *pk[] = {kg, kc};
        const char *pa[] = {gk, st->owner, sat};
        if (s_fcall(st, &r, "sentinel_notify_postpone", 2, pk, 3, pa, NULL) != SN_OK)
            r = NULL;
    } else {
        char sdone[24], siv[24];
        snprintf(sdone, sizeof sdone, "%" PRId64, sn_wall_ms());
        snprintf(siv, sizeof siv, "%d", route->group_interval_ms);
        const char *fa[] = {gk, st->owner, sdone, siv};
        if (s_fcall(st, &r, "sentinel_notify_finish", 6, keys, 4, fa, NULL) != SN_OK)
            r = NULL;
        else if (r->type == REDIS_REPLY_INTEGER && r->integer == 0)
            sn_warn("notify", "group %s: lease lost before the batch %s was closed", gk, nid);
    }
out:
    for (size_t i = 0; i < count; i++) {
        sn_envelope_free(&items[i].env);
        free(items[i].enc);
        free(items[i].ce);
    }
    free(items);
    if (batch)
        freeReplyObject(batch);
    if (r)
        freeReplyObject(r);
    free(kg);
    free(km);
    free(ke);
    free(kb);
    free(ka);
    free(kc);
}

/* ---- silences (service notify.silence) ------------------------------------------------- */

static void s_on_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_SILENCE_REQUEST || !env->silence_request) {
        sn_info("notify", "refused request: body is not a silence_request");
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    sn_request_defer(ctx, req, s_silence_job, state);
}

static sn_rc_t s_reply_error(sn_request_t *req, sn_envelope_t *reply, const char *code,
                             const char *message)
{
    Sentinel__V1__Error *e = sn_request_alloc(req, sizeof *e);
    sentinel__v1__error__init(e);
    e->code = sn_request_strdup(req, code);
    e->message = sn_request_strdup(req, message);
    reply->type = "notify.silence.result";
    reply->body_case = SENTINEL__V1__ENVELOPE__BODY_ERROR;
    reply->error = e;
    return SN_OK;
}

static Sentinel__V1__Silence *s_silence_msg(sn_request_t *req, redisReply *h, int64_t now)
{
    Sentinel__V1__Silence *s = sn_request_alloc(req, sizeof *s);
    sentinel__v1__silence__init(s);
    for (size_t i = 0; h->type == REDIS_REPLY_ARRAY && i + 1 < h->elements; i += 2) {
        const char *k = h->element[i]->str, *v = h->element[i + 1]->str;
        if (!k || !v)
            continue;
        if (strcmp(k, "id") == 0) {
            s->id = sn_request_strdup(req, v);
        } else if (strcmp(k, "starts_unix_ms") == 0) {
            s->starts_unix_ms = strtoll(v, NULL, 10);
        } else if (strcmp(k, "ends_unix_ms") == 0) {
            s->ends_unix_ms = strtoll(v, NULL, 10);
        } else if (strcmp(k, "created_unix_ms") == 0) {
            s->created_unix_ms = strtoll(v, NULL, 10);
        } else if (strcmp(k, "created_by") == 0) {
            s->created_by = sn_request_strdup(req, v);
        } else if (strcmp(k, "comment") == 0) {
            s->comment = sn_request_strdup(req, v);
        } else if (strcmp(k, "matchers") == 0) {
            size_t n = 1;
            for (const char *p = v; *p; p++)
                n += *p == '\n';
            s->matchers = sn_request_alloc(req, n * sizeof *s->matchers);
            char *copy = sn_request_strdup(req, v);
            size_t m = 0;
            for (char *p = copy; p && *p && m < n;) {
                char *nl = strchr(p, '\n');
                if (nl)
                    *nl = '\0';
                s->matchers[m++] = p;
                p = nl ? nl + 1 : NULL;
            }
            s->n_matchers = m;
        }
    }
    s->state = now < s->starts_unix_ms ? "pending" : now < s->ends_unix_ms ? "active" : "expired";
    return s;
}

/* Reads silence @id into a message for the reply, NULL if absent or Redis away (*is_down). */
static Sentinel__V1__Silence *s_silence_read(s_state_t *st, sn_request_t *req, const char *id,
                                             bool *is_down)
{
    char *key = s_key(st, "silence:%s", id);
    const char *argv[] = {"HGETALL", key};
    redisReply *r = NULL;
    Sentinel__V1__Silence *s = NULL;
    *is_down = s_cmd(st, &r, 2, argv, NULL) != SN_OK;
    if (!*is_down) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements > 0)
            s = s_silence_msg(req, r, sn_wall_ms());
        freeReplyObject(r);
    }
    free(key);
    return s;
}

static sn_rc_t s_reply_list(sn_request_t *req, sn_envelope_t *reply, Sentinel__V1__Silence **items,
                            size_t n)
{
    Sentinel__V1__SilenceList *list = sn_request_alloc(req, sizeof *list);
    sentinel__v1__silence_list__init(list);
    list->silences = items;
    list->n_silences = n;
    reply->type = "notify.silence.result";
    reply->body_case = SENTINEL__V1__ENVELOPE__BODY_SILENCE_LIST;
    reply->silence_list = list;
    return SN_OK;
}

static bool s_printable(const char *s, size_t max)
{
    size_t n = 0;
    for (; s && s[n]; n++)
        if ((unsigned char)s[n] < 0x20 || s[n] == 0x7f || n >= max)
            return false;
    return true;
}

static sn_rc_t s_silence_create(s_state_t *st, sn_request_t *req, sn_envelope_t *reply,
                                const Sentinel__V1__SilenceRequest *in)
{
    const Sentinel__V1__Silence *s = in->silence;
    char why[256];
    if (!s || s->n_matchers == 0)
        return s_reply_error(req, reply, "invalid", "a silence needs at least one matcher");
    if (s->n_matchers > S_MAX_SILENCE_MATCHERS)
        return s_reply_error(req, reply, "invalid", "too many matchers (at most 16)");
    for (size_t i = 0; i < s->n_matchers; i++) {
        if (!s_printable(s->matchers[i], 256) ||
            notify_matcher_check(s->matchers[i], why, sizeof why) != SN_OK)
            return s_reply_error(req, reply, "invalid",
                                 s_printable(s->matchers[i], 256) ? why : "matcher not printable");
    }
    if (!s->comment || !s->comment[0] || !s_printable(s->comment, S_MAX_TEXT))
        return s_reply_error(req, reply, "invalid",
                             "a silence needs a comment (printable, at most 1024 bytes)");
    int64_t now = sn_wall_ms();
    int64_t starts = s->starts_unix_ms > 0 ? s->starts_unix_ms : now;
    int64_t ends = s->ends_unix_ms;
    if (in->duration && in->duration[0]) {
        int64_t d = 0;
        if (!notify_duration_parse(in->duration, &d))
            return s_reply_error(req, reply, "invalid",
                                 "duration is like 90s, 30m, 2h, 1h30m or 1d (at most 366d)");
        ends = starts + d;
    }
    if (ends <= 0)
        return s_reply_error(req, reply, "invalid", "a silence needs a duration or an end");
    if (ends <= starts || ends <= now)
        return s_reply_error(req, reply, "invalid",
                             "a silence must end after it starts and "
                             "in the future");
    const sn_envelope_t *env = sn_request_envelope(req);
    const char *by = s->created_by && s->created_by[0] ? s->created_by : NULL;
    if (!by)
        by = sn_envelope_label(env, "on_behalf_of");
    if (!by || !by[0])
        by = sn_request_principal(req);
    if (!by || !by[0])
        by = "anonymous";
    if (!s_printable(by, 128))
        return s_reply_error(req, reply, "invalid", "created_by not printable");
    char id[SN_ID_LEN + 1];
    sn_id_new(id);
    size_t mlen = 0;
    for (size_t i = 0; i < s->n_matchers; i++)
        mlen += strlen(s->matchers[i]) + 1;
    char *matchers = sn_malloc(mlen + 1);
    size_t off = 0;
    for (size_t i = 0; i < s->n_matchers; i++) {
        size_t n = strlen(s->matchers[i]);
        memcpy(matchers + off, s->matchers[i], n);
        off += n;
        matchers[off++] = '\n';
    }
    matchers[off ? off - 1 : 0] = '\0';
    char sstarts[24], sends[24], screated[24], ttl[24];
    snprintf(sstarts, sizeof sstarts, "%" PRId64, starts);
    snprintf(sends, sizeof sends, "%" PRId64, ends);
    snprintf(screated, sizeof screated, "%" PRId64, now);
    snprintf(ttl, sizeof ttl, "%" PRId64, (int64_t)(ends - now + S_SILENCE_KEEP_MS));
    char *k1 = sn_strdupf("silence:%s", id);
    const char *keys[] = {k1, "silences"};
    const char *args[] = {id,
                          ttl,
                          "id",
                          id,
                          "matchers",
                          matchers,
                          "starts_unix_ms",
                          sstarts,
                          "ends_unix_ms",
                          sends,
                          "created_by",
                          by,
                          "comment",
                          s->comment,
                          "created_unix_ms",
                          screated};
    redisReply *r = NULL;
    sn_rc_t rc = s_fcall(st, &r, "sentinel_notify_silence_put", 2, keys, (int)SN_ARRAY_LEN(args),
                         args, NULL);
    bool ok = rc == SN_OK && r->type == REDIS_REPLY_INTEGER;
    if (r)
        freeReplyObject(r);
    free(k1);
    if (!ok) {
        free(matchers);
        return s_reply_error(req, reply, "unavailable", "the state store did not answer");
    }
    sn_info("notify", "silence %s created by %s until %" PRId64 ": %s (%s)", id, by, ends, matchers,
            s->comment);
    free(matchers);
    bool down = false;
    Sentinel__V1__Silence *m = s_silence_read(st, req, id, &down);
    if (!m)
        return s_reply_error(req, reply, "unavailable", "the state store did not answer");
    Sentinel__V1__Silence **one = sn_request_alloc(req, sizeof *one);
    one[0] = m;
    return s_reply_list(req, reply, one, 1);
}

static sn_rc_t s_silence_job(sn_ctx_t *ctx, void *state, const sn_request_t *creq,
                             sn_envelope_t *reply, const char **nak_reason)
{
    (void)ctx;
    (void)nak_reason;
    sn_request_t *req = (sn_request_t *)creq;
    s_state_t *st = state;
    const Sentinel__V1__SilenceRequest *in = sn_request_envelope(req)->silence_request;
    const char *op = in->op ? in->op : "";
    if (strcmp(op, "create") == 0)
        return s_silence_create(st, req, reply, in);
    if (strcmp(op, "expire") == 0) {
        if (!in->id || !sn_id_is_valid(in->id))
            return s_reply_error(req, reply, "invalid", "expire needs a silence id");
        char *key = s_key(st, "silence:%s", in->id);
        char *k1 = sn_strdupf("silence:%s", in->id);
        const char *keys[] = {k1};
        char snow[24], keep[24];
        snprintf(snow, sizeof snow, "%" PRId64, sn_wall_ms());
        snprintf(keep, sizeof keep, "%lld", (long long)S_SILENCE_KEEP_MS);
        const char *args[] = {snow, keep};
        redisReply *r = NULL;
        sn_rc_t rc = s_fcall(st, &r, "sentinel_notify_silence_expire", 1, keys, 2, args, NULL);
        long long found = rc == SN_OK && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
        if (r)
            freeReplyObject(r);
        free(k1);
        free(key);
        if (found < 0)
            return s_reply_error(req, reply, "unavailable", "the state store did not answer");
        if (found == 0)
            return s_reply_error(req, reply, "not_found", "no such silence");
        const char *by = sn_envelope_label(sn_request_envelope(req), "on_behalf_of");
        sn_info("notify", "silence %s expired by %s", in->id, by && by[0] ? by : "-");
        bool down = false;
        Sentinel__V1__Silence *m = s_silence_read(st, req, in->id, &down);
        if (!m)
            return s_reply_error(req, reply, "unavailable", "the state store did not answer");
        Sentinel__V1__Silence **one = sn_request_alloc(req, sizeof *one);
        one[0] = m;
        return s_reply_list(req, reply, one, 1);
    }
    if (strcmp(op, "list") == 0) {
        char *set = s_key(st, "silences");
        const char *argv[] = {"SMEMBERS", set};
        redisReply *r = NULL;
        if (s_cmd(st, &r, 2, argv, NULL) != SN_OK) {
            free(set);
            return s_reply_error(req, reply, "unavailable", "the state store did not answer");
        }
        size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
        Sentinel__V1__Silence **items = sn_request_alloc(req, (n ? n : 1) * sizeof *items);
        size_t k = 0;
        int64_t now = sn_wall_ms();
        for (size_t i = 0; i < n; i++) {
            bool down = false;
            Sentinel__V1__Silence *m = s_silence_read(st, req, r->element[i]->str, &down);
            if (!m && !down) {
                const char *sr[] = {"SREM", set, r->element[i]->str};
                redisReply *r2 = NULL;
                if (s_cmd(st, &r2, 3, sr, NULL) == SN_OK)
                    freeReplyObject(r2);
                continue;
            }
            if (m && (in->include_expired || m->ends_unix_ms > now))
                items[k++] = m;
        }
        freeReplyObject(r);
        free(set);
        /* Oldest first (ids are ULIDs). */
        for (size_t i = 1; i < k; i++)
            for (size_t j = i; j > 0 && strcmp(items[j - 1]->id ? items[j - 1]->id : "",
                                               items[j]->id ? items[j]->id : "") > 0;
                 j--) {
                Sentinel__V1__Silence *t = items[j];
                items[j] = items[j - 1];
                items[j - 1] = t;
            }
        return s_reply_list(req, reply, items, k);
    }
    return s_reply_error(req, reply, "invalid", "op must be create, list or expire");
}

/* The silences kept (active and pending; with @with_expired also expired ones). */
static s_silence_t *s_silences_load(s_state_t *st, bool with_expired, size_t *count)
{
    *count = 0;
    char *set = s_key(st, "silences");
    const char *argv[] = {"SMEMBERS", set};
    redisReply *r = NULL;
    if (s_cmd(st, &r, 2, argv, NULL) != SN_OK) {
        free(set);
        return NULL;
    }
    size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
    s_silence_t *out = sn_calloc(n ? n : 1, sizeof *out);
    int64_t now = sn_wall_ms();
    for (size_t i = 0; i < n; i++) {
        char *key = s_key(st, "silence:%s", r->element[i]->str);
        const char *hm[] = {"HMGET", key, "matchers", "starts_unix_ms", "ends_unix_ms"};
        redisReply *h = NULL;
        sn_rc_t rc = s_cmd(st, &h, 5, hm, NULL);
        free(key);
        if (rc != SN_OK)
            continue;
        if (h->type != REDIS_REPLY_ARRAY || h->elements != 3 || !h->element[0]->str ||
            !h->element[1]->str || !h->element[2]->str) {
            freeReplyObject(h);
            continue;
        }
        s_silence_t *s = &out[*count];
        s->starts_ms = strtoll(h->element[1]->str, NULL, 10);
        s->ends_ms = strtoll(h->element[2]->str, NULL, 10);
        if (!with_expired && s->ends_ms <= now) {
            freeReplyObject(h);
            continue;
        }
        s->id = sn_strdup(r->element[i]->str);
        /* Matchers split in place in a copy: one allocation for the list and the text. */
        const char *text = h->element[0]->str;
        size_t nm = 1;
        for (const char *p = text; *p; p++)
            nm += *p == '\n';
        s->matchers = sn_calloc(nm + 1, sizeof *s->matchers);
        char *copy = sn_strdup(text);
        for (char *p = copy; p && *p;) {
            char *nl = strchr(p, '\n');
            if (nl)
                *nl = '\0';
            s->matchers[s->matcher_count++] = p;
            p = nl ? nl + 1 : NULL;
        }
        if (s->matcher_count == 0)
            free(copy);
        freeReplyObject(h);
        (*count)++;
    }
    freeReplyObject(r);
    free(set);
    return out;
}

static void s_silences_free(s_silence_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i].matcher_count > 0)
            free(s[i].matchers[0]);
        free(s[i].matchers);
        free(s[i].id);
    }
    free(s);
}

/* ---- rendering -------------------------------------------------------------------------- */

/* The CloudEvents 1.0 structured-mode JSON of @env (contracts/cdevents.md §2): id = the
 * envelope id, type = "dev.sentinel.<type>", data = the body message as sn_json renders
 * it, extensions severity and sequence. Caller frees; NULL if the body cannot render. */
static char *s_cloudevent(const sn_envelope_t *env, notify_severity_t sev)
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
                  notify_severity_name(sev), "sequence", seq, "data", data);
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

static const s_channel_t *s_channel(const s_state_t *st, const char *name)
{
    for (size_t i = 0; i < st->channel_count; i++)
        if (strcmp(st->channels[i].cfg->name, name) == 0)
            return &st->channels[i];
    return NULL;
}

/* A command whose error replies count as failures (logged once here). */
static sn_rc_t s_cmd(s_state_t *st, redisReply **r, int argc, const char **argv, const size_t *lens)
{
    *r = NULL;
    sn_rc_t rc =
        sn_redis_cmd(sn_ctx_redis(st->ctx), SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, r, argc, argv, lens);
    if (rc == SN_OK && (*r)->type == REDIS_REPLY_ERROR) {
        sn_warn("notify", "redis %s: %s", argv[0], (*r)->str);
        freeReplyObject(*r);
        *r = NULL;
        return SN_AGAIN;
    }
    return rc;
}

static sn_rc_t s_fcall(s_state_t *st, redisReply **r, const char *fn, int nkeys, const char **keys,
                       int nargs, const char **args, const size_t *lens)
{
    *r = NULL;
    sn_rc_t rc = sn_redis_fcall(sn_ctx_redis(st->ctx), SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, r, fn,
                                nkeys, keys, nargs, args, lens);
    if (rc == SN_OK && (*r)->type == REDIS_REPLY_ERROR) {
        sn_warn("notify", "%s: %s", fn, (*r)->str);
        freeReplyObject(*r);
        *r = NULL;
        return SN_AGAIN;
    }
    return rc;
}

/* The namespaced key for the format. Caller frees. */
static char *s_key(s_state_t *st, const char *fmt, ...)
{
    const char *ns = sn_redis_ns(sn_ctx_redis(st->ctx));
    size_t nsl = strlen(ns);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    SN_ASSERT(n >= 0);
    char *out = sn_malloc(nsl + (size_t)n + 1);
    memcpy(out, ns, nsl);
    va_start(ap, fmt);
    vsnprintf(out + nsl, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return out;
}

/* GET @key: its value, "" if absent, NULL if Redis did not answer. Caller frees. */
static char *s_get(s_state_t *st, const char *key)
{
    const char *argv[] = {"GET", key};
    redisReply *r = NULL;
    if (s_cmd(st, &r, 2, argv, NULL) != SN_OK)
        return NULL;
    char *v = sn_strdup(r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
    return v;
}

/* SET @key @value PX @px_ms. A failure is logged: at worst a later attempt resends. */
static void s_set(s_state_t *st, const char *key, const char *value, int64_t px_ms)
{
    char px[24];
    snprintf(px, sizeof px, "%" PRId64, px_ms);
    const char *argv[] = {"SET", key, value, "PX", px};
    redisReply *r = NULL;
    if (s_cmd(st, &r, 5, argv, NULL) == SN_OK)
        freeReplyObject(r);
    else
        sn_warn("notify", "%s not updated (redis away)", key);
}
