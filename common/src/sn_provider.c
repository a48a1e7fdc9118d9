/* Shared provider behaviour: the Redis-backed request budget and circuit breaker, the
 * classifying and retrying call helper, and the deploy record. The budget and the
 * breaker are Redis Functions (one library, loaded by sn_redis on every connect) so that
 * every decision is one atomic step on the server's clock, whatever the number of
 * processes; the call helper only sleeps and counts. */
#include "sentinel/sn_provider.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "sentinel/sn_backoff.h"
#include "sentinel/sn_crypto.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_log.h"

#define S_LIB_NAME "sentinel_provider"
#define S_MODULE "provider"
#define S_DEFAULT_REDIS_TIMEOUT_MS 1000
#define S_BREAKER_TTL_MS (24 * 3600 * 1000)

/* clang-format off */
static const char s_lua[] =
    "local function s_now_ms()\n"
    "  local t = redis.call('TIME')\n"
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "end\n"
    /* Sliding-window log. KEYS budget; ARGV limit, window_ms, member.
     * A grant at `now` is allowed iff fewer than `limit` grants lie in (now - window, now],
     * so no window of that length ever holds more than `limit` grants.
     * -> {1, now} granted | {0, wait_ms} */
    "redis.register_function('sn_provider_acquire', function(keys, args)\n"
    "  local limit = tonumber(args[1])\n"
    "  local window = tonumber(args[2])\n"
    "  local now = s_now_ms()\n"
    "  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now - window)\n"
    "  local count = redis.call('ZCARD', keys[1])\n"
    "  if count < limit then\n"
    "    redis.call('ZADD', keys[1], now, args[3])\n"
    "    redis.call('PEXPIRE', keys[1], window + 1000)\n"
    "    return {1, now}\n"
    "  end\n"
    "  local oldest = redis.call('ZRANGE', keys[1], 0, 0, 'WITHSCORES')\n"
    "  local wait = tonumber(oldest[2]) + window - now\n"
    "  if wait < 1 then wait = 1 end\n"
    "  return {0, wait}\n"
    "end)\n"
    /* KEYS breaker; ARGV cooldown_ms, probe_ms -> {'ok'|'probe'|'open', retry_in_ms} */
    "redis.register_function('sn_provider_breaker_allow', function(keys, args)\n"
    "  local h = redis.call('HMGET', keys[1], 'state', 'opened_ms', 'probe_until_ms')\n"
    "  local state = h[1]\n"
    "  if not state or state == 'closed' then return {'ok', 0} end\n"
    "  local now = s_now_ms()\n"
    "  local cooldown = tonumber(args[1])\n"
    "  if state == 'open' then\n"
    "    local ready = tonumber(h[2]) + cooldown\n"
    "    if now < ready then return {'open', ready - now} end\n"
    "  else\n"
    "    local until_ms = tonumber(h[3] or '0')\n"
    "    if now < until_ms then return {'open', until_ms - now} end\n"
    "  end\n"
    "  redis.call('HSET', keys[1], 'state', 'half_open', 'probe_until_ms', now + tonumber(args[2]))\n"
    "  return {'probe', 0}\n"
    "end)\n"
    /* KEYS breaker; ARGV outcome ('ok'|'transient'), threshold, ttl_ms -> state */
    "redis.register_function('sn_provider_breaker_record', function(keys, args)\n"
    "  if args[1] ~= 'transient' then\n"
    "    redis.call('DEL', keys[1])\n"
    "    return 'closed'\n"
    "  end\n"
    "  local state = redis.call('HGET', keys[1], 'state')\n"
    "  local failures = redis.call('HINCRBY', keys[1], 'failures', 1)\n"
    "  redis.call('PEXPIRE', keys[1], tonumber(args[3]))\n"
    "  if state == 'half_open' or state == 'open' or failures >= tonumber(args[2]) then\n"
    "    redis.call('HSET', keys[1], 'state', 'open', 'opened_ms', s_now_ms())\n"
    "    return 'open'\n"
    "  end\n"
    "  redis.call('HSET', keys[1], 'state', 'closed')\n"
    "  return 'closed'\n"
    "end)\n"
    /* KEYS breaker; ARGV cooldown_ms -> {state, failures} (open past its cool-down
     * reads as half_open) */
    "redis.register_function{function_name='sn_provider_breaker_get', flags={'no-writes'},\n"
    "  callback=function(keys, args)\n"
    "  local h = redis.call('HMGET', keys[1], 'state', 'failures', 'opened_ms')\n"
    "  local state = h[1] or 'closed'\n"
    "  local failures = tonumber(h[2] or '0')\n"
    "  if state == 'open' and s_now_ms() >= tonumber(h[3]) + tonumber(args[1]) then\n"
    "    state = 'half_open'\n"
    "  end\n"
    "  return {state, failures}\n"
    "end}\n"
    /* KEYS record; ARGV field, value, ttl_s, only_if_absent -> {1} | {0, existing} */
    "redis.register_function('sn_provider_record_set', function(keys, args)\n"
    "  if args[4] == '1' then\n"
    "    local cur = redis.call('HGET', keys[1], args[1])\n"
    "    if cur then return {0, cur} end\n"
    "  end\n"
    "  redis.call('HSET', keys[1], args[1], args[2])\n"
    "  redis.call('EXPIRE', keys[1], tonumber(args[3]))\n"
    "  return {1}\n"
    "end)\n";
/* clang-format on */

struct sn_provider {
    sn_redis_t *redis;
    char *provider;
    char cred_hex[SN_PROVIDER_CRED_HEX_LEN + 1];
    char *budget_key;  /* without the namespace (sn_redis_fcall adds it) */
    char *breaker_key; /* likewise */
    int budget_requests;
    int64_t budget_window_ms;
    int breaker_threshold;
    int64_t breaker_cooldown_ms;
    int64_t retry_after_cap_ms;
    int64_t backoff_base_ms;
    int64_t backoff_cap_ms;
    int redis_timeout_ms;
};

static void s_sleep_ms(int64_t ms);
static sn_rc_t s_call(sn_provider_t *self, sn_http_t *http, const sn_http_request_t *req,
                      bool is_idempotent, sn_provider_budget_t *budget, sn_http_response_t *resp,
                      json_t **json);
static bool s_is_json_content_type(const char *value);
static char *s_record_key(sn_redis_t *redis, const char *deploy_id);

void sn_provider_opts_from_target(sn_provider_opts_t *opts, const char *provider,
                                  const sn_target_config_t *target)
{
    SN_ASSERT(opts && provider && target);
    memset(opts, 0, sizeof *opts);
    opts->provider = provider;
    opts->credential = target->token;
    opts->budget_requests = target->budget_requests;
    opts->budget_window_s = target->budget_window_s;
}

sn_provider_t *sn_provider_new(sn_redis_t *redis, const sn_provider_opts_t *opts)
{
    SN_ASSERT(redis && opts);
    if (!opts->provider || !opts->provider[0]) {
        sn_error(S_MODULE, "provider options without a provider name");
        return NULL;
    }
    sn_provider_t *self = sn_calloc(1, sizeof *self);
    self->redis = redis;
    self->provider = sn_strdup(opts->provider);
    const char *cred = opts->credential ? opts->credential : "";
    uint8_t digest[SN_SHA256_LEN];
    char hex[2 * SN_SHA256_LEN + 1];
    SN_ASSERT(sn_sha256(cred, strlen(cred), digest) == SN_OK);
    sn_hex_encode(digest, sizeof digest, hex);
    memcpy(self->cred_hex, hex, SN_PROVIDER_CRED_HEX_LEN);
    self->cred_hex[SN_PROVIDER_CRED_HEX_LEN] = '\0';
    self->budget_key = sn_strdupf("provider:budget:%s:%s", self->provider, self->cred_hex);
    self->breaker_key = sn_strdupf("provider:breaker:%s:%s", self->provider, self->cred_hex);
    self->budget_requests = opts->budget_requests > 0 ? opts->budget_requests : 0;
    self->budget_window_ms =
        (int64_t)(opts->budget_window_s > 0 ? opts->budget_window_s : 300) * 1000;
    self->breaker_threshold = opts->breaker_threshold > 0 ? opts->breaker_threshold
                                                          : SN_PROVIDER_DEFAULT_BREAKER_THRESHOLD;
    self->breaker_cooldown_ms = opts->breaker_cooldown_ms > 0
                                    ? opts->breaker_cooldown_ms
                                    : SN_PROVIDER_DEFAULT_BREAKER_COOLDOWN_MS;
    self->retry_after_cap_ms = opts->retry_after_cap_ms > 0
                                   ? opts->retry_after_cap_ms
                                   : SN_PROVIDER_DEFAULT_RETRY_AFTER_CAP_MS;
    self->backoff_base_ms =
        opts->backoff_base_ms > 0 ? opts->backoff_base_ms : SN_PROVIDER_DEFAULT_BACKOFF_BASE_MS;
    self->backoff_cap_ms =
        opts->backoff_cap_ms > 0 ? opts->backoff_cap_ms : SN_PROVIDER_DEFAULT_BACKOFF_CAP_MS;
    if (self->backoff_cap_ms < self->backoff_base_ms)
        self->backoff_cap_ms = self->backoff_base_ms;
    self->redis_timeout_ms =
        opts->redis_timeout_ms > 0 ? opts->redis_timeout_ms : S_DEFAULT_REDIS_TIMEOUT_MS;
    sn_redis_add_library(redis, S_LIB_NAME, s_lua);
    return self;
}

void sn_provider_destroy(sn_provider_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_provider_t *self = *self_p;
    free(self->provider);
    free(self->budget_key);
    free(self->breaker_key);
    free(self);
    *self_p = NULL;
}

const char *sn_provider_cred_hash(const sn_provider_t *self)
{
    SN_ASSERT(self);
    return self->cred_hex;
}

sn_rc_t sn_provider_acquire(sn_provider_t *self, int64_t deadline_ms, int64_t *granted_ms)
{
    SN_ASSERT(self);
    if (granted_ms)
        *granted_ms = 0;
    if (self->budget_requests <= 0)
        return SN_OK;
    if (deadline_ms <= 0)
        deadline_ms = sn_mono_ms() + self->budget_window_ms;
    char limit[24], window[24], member[33];
    snprintf(limit, sizeof limit, "%d", self->budget_requests);
    snprintf(window, sizeof window, "%lld", (long long)self->budget_window_ms);
    sn_random_hex(member, 16);
    const char *keys[] = {self->budget_key};
    const char *args[] = {limit, window, member};
    for (;;) {
        redisReply *reply = NULL;
        sn_rc_t rc = sn_redis_fcall(self->redis, SN_REDIS_MAIN, self->redis_timeout_ms, &reply,
                                    "sn_provider_acquire", 1, keys, 3, args, NULL);
        if (rc != SN_OK)
            return SN_AGAIN;
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
            reply->element[0]->type != REDIS_REPLY_INTEGER ||
            reply->element[1]->type != REDIS_REPLY_INTEGER) {
            sn_warn(S_MODULE, "budget acquire: unexpected reply provider=%s err=%s", self->provider,
                    reply->type == REDIS_REPLY_ERROR ? reply->str : "shape");
            freeReplyObject(reply);
            return SN_AGAIN;
        }
        bool is_granted = reply->element[0]->integer == 1;
        int64_t value = reply->element[1]->integer;
        freeReplyObject(reply);
        if (is_granted) {
            if (granted_ms)
                *granted_ms = value;
            return SN_OK;
        }
        int64_t now = sn_mono_ms();
        if (now + value > deadline_ms)
            return SN_AGAIN;
        /* A little jitter so that waiters do not all wake in the same millisecond. */
        s_sleep_ms(value + (int64_t)(sn_random_u64() % 5));
    }
}

sn_rc_t sn_provider_breaker_allow(sn_provider_t *self, int64_t *retry_in_ms)
{
    SN_ASSERT(self);
    if (retry_in_ms)
        *retry_in_ms = 0;
    char cooldown[24];
    snprintf(cooldown, sizeof cooldown, "%lld", (long long)self->breaker_cooldown_ms);
    const char *keys[] = {self->breaker_key};
    const char *args[] = {cooldown, cooldown};
    redisReply *reply = NULL;
    if (sn_redis_fcall(self->redis, SN_REDIS_MAIN, self->redis_timeout_ms, &reply,
                       "sn_provider_breaker_allow", 1, keys, 2, args, NULL) != SN_OK)
        return SN_AGAIN;
    sn_rc_t rc = SN_AGAIN;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        reply->element[1]->type == REDIS_REPLY_INTEGER) {
        const char *verdict = reply->element[0]->str;
        if (strcmp(verdict, "ok") == 0) {
            rc = SN_OK;
        } else if (strcmp(verdict, "probe") == 0) {
            sn_info(S_MODULE, "circuit half-open: probing provider=%s cred=%s", self->provider,
                    self->cred_hex);
            rc = SN_OK;
        } else if (retry_in_ms) {
            *retry_in_ms = reply->element[1]->integer;
        }
    } else {
        sn_warn(S_MODULE, "breaker allow: unexpected reply provider=%s err=%s", self->provider,
                reply->type == REDIS_REPLY_ERROR ? reply->str : "shape");
    }
    freeReplyObject(reply);
    return rc;
}

sn_rc_t sn_provider_breaker_record(sn_provider_t *self, sn_provider_outcome_t outcome)
{
    SN_ASSERT(self);
    char threshold[24], ttl[24];
    snprintf(threshold, sizeof threshold, "%d", self->breaker_threshold);
    snprintf(ttl, sizeof ttl, "%lld", (long long)S_BREAKER_TTL_MS);
    const char *keys[] = {self->breaker_key};
    const char *args[] = {outcome == SN_PROVIDER_OUTCOME_TRANSIENT ? "transient" : "ok", threshold,
                          ttl};
    redisReply *reply = NULL;
    if (sn_redis_fcall(self->redis, SN_REDIS_MAIN, self->redis_timeout_ms, &reply,
                       "sn_provider_breaker_record", 1, keys, 3, args, NULL) != SN_OK)
        return SN_AGAIN;
    sn_rc_t rc = SN_AGAIN;
    if (reply->type == REDIS_REPLY_STRING) {
        rc = SN_OK;
        if (outcome == SN_PROVIDER_OUTCOME_TRANSIENT && strcmp(reply->str, "open") == 0)
            sn_warn(S_MODULE, "circuit open provider=%s cred=%s cooldown_ms=%lld", self->provider,
                    self->cred_hex, (long long)self->breaker_cooldown_ms);
    } else {
        sn_warn(S_MODULE, "breaker record: unexpected reply provider=%s err=%s", self->provider,
                reply->type == REDIS_REPLY_ERROR ? reply->str : "shape");
    }
    freeReplyObject(reply);
    return rc;
}

sn_rc_t sn_provider_breaker_get(sn_provider_t *self, sn_provider_breaker_state_t *state,
                                int *failures)
{
    SN_ASSERT(self);
    char cooldown[24];
    snprintf(cooldown, sizeof cooldown, "%lld", (long long)self->breaker_cooldown_ms);
    const char *keys[] = {self->breaker_key};
    const char *args[] = {cooldown};
    redisReply *reply = NULL;
    if (sn_redis_fcall(self->redis, SN_REDIS_MAIN, self->redis_timeout_ms, &reply,
                       "sn_provider_breaker_get", 1, keys, 1, args, NULL) != SN_OK)
        return SN_AGAIN;
    sn_rc_t rc = SN_AGAIN;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        reply->element[1]->type == REDIS_REPLY_INTEGER) {
        const char *s = reply->element[0]->str;
        if (state)
            *state = strcmp(s, "open") == 0        ? SN_PROVIDER_BREAKER_OPEN
                     : strcmp(s, "half_open") == 0 ? SN_PROVIDER_BREAKER_HALF_OPEN
                                                   : SN_PROVIDER_BREAKER_CLOSED;
        if (failures)
            *failures = (int)reply->element[1]->integer;
        rc = SN_OK;
    }
    freeReplyObject(reply);
    return rc;
}

void sn_provider_budget_init(sn_provider_budget_t *budget, int max_attempts, int64_t deadline_ms)
{
    SN_ASSERT(budget);
    memset(budget, 0, sizeof *budget);
    budget->max_attempts = max_attempts > 0 ? max_attempts : 1;
    budget->deadline_ms = deadline_ms > 0 ? deadline_ms : 0;
}

sn_rc_t sn_provider_call(sn_provider_t *self, sn_http_t *http, const sn_http_request_t *req,
                         bool is_idempotent, sn_provider_budget_t *budget, sn_http_response_t *resp)
{
    return s_call(self, http, req, is_idempotent, budget, resp, NULL);
}

sn_rc_t sn_provider_call_json(sn_provider_t *self, sn_http_t *http, const sn_http_request_t *req,
                              bool is_idempotent, sn_provider_budget_t *budget,
                              sn_http_response_t *resp, json_t **json)
{
    SN_ASSERT(json);
    *json = NULL;
    return s_call(self, http, req, is_idempotent, budget, resp, json);
}

sn_rc_t sn_provider_parse_json(const sn_http_response_t *resp, json_t **json, char *reason,
                               size_t reason_len)
{
    SN_ASSERT(resp && json && reason && reason_len > 0);
    *json = NULL;
    reason[0] = '\0';
    const char *ctype = sn_http_response_header(resp, "Content-Type");
    if (!ctype || !s_is_json_content_type(ctype)) {
        snprintf(reason, reason_len, "response is not JSON (Content-Type %.60s)",
                 ctype ? ctype : "missing");
        return SN_ERROR;
    }
    json_error_t err;
    json_t *root = json_loadb(resp->body ? resp->body : "", resp->body_len, 0, &err);
    if (!root) {
        snprintf(reason, reason_len, "response body is not valid JSON (line %d column %d)",
                 err.line, err.column);
        return SN_ERROR;
    }
    if (!json_is_object(root) && !json_is_array(root)) {
        json_decref(root);
        snprintf(reason, reason_len, "response body is not a JSON object or array");
        return SN_ERROR;
    }
    *json = root;
    return SN_OK;
}

bool sn_provider_sleep(int64_t ms, int64_t deadline_ms)
{
    if (ms <= 0)
        return true;
    bool is_whole = true;
    if (deadline_ms > 0) {
        int64_t left = deadline_ms - sn_mono_ms();
        if (left < ms) {
            ms = left;
            is_whole = false;
        }
    }
    s_sleep_ms(ms);
    return is_whole;
}

sn_rc_t sn_provider_record_get(sn_redis_t *redis, const char *deploy_id, const char *field,
                               char **value)
{
    SN_ASSERT(redis && deploy_id && field && value);
    *value = NULL;
    char *key = s_record_key(redis, deploy_id);
    const char *argv[] = {"HGET", key, field};
    redisReply *reply = NULL;
    sn_rc_t rc = sn_redis_cmd(redis, SN_REDIS_MAIN, 0, &reply, 3, argv, NULL);
    free(key);
    if (rc != SN_OK)
        return SN_AGAIN;
    if (reply->type == REDIS_REPLY_STRING) {
        *value = sn_strndup(reply->str, reply->len);
        rc = SN_OK;
    } else if (reply->type == REDIS_REPLY_NIL) {
        rc = SN_DECLINED;
    } else {
        rc = SN_AGAIN;
    }
    freeReplyObject(reply);
    return rc;
}

static sn_rc_t s_record_write(sn_redis_t *redis, const char *deploy_id, const char *field,
                              const char *value, bool is_only_if_absent, char **existing)
{
    SN_ASSERT(redis && deploy_id && field && value);
    if (existing)
        *existing = NULL;
    char *key = sn_strdupf("provider:deploy:%s", deploy_id);
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%d", SN_PROVIDER_RECORD_TTL_S);
    const char *keys[] = {key};
    const char *args[] = {field, value, ttl, is_only_if_absent ? "1" : "0"};
    redisReply *reply = NULL;
    sn_rc_t rc = sn_redis_fcall(redis, SN_REDIS_MAIN, 0, &reply, "sn_provider_record_set", 1, keys,
                                4, args, NULL);
    free(key);
    if (rc != SN_OK)
        return SN_AGAIN;
    rc = SN_AGAIN;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
        reply->element[0]->type == REDIS_REPLY_INTEGER) {
        if (reply->element[0]->integer == 1) {
            rc = SN_OK;
        } else if (reply->elements == 2 && reply->element[1]->type == REDIS_REPLY_STRING) {
            if (existing)
                *existing = sn_strndup(reply->element[1]->str, reply->element[1]->len);
            rc = SN_DECLINED;
        }
    } else {
        sn_warn(S_MODULE, "deploy record: unexpected reply err=%s",
                reply->type == REDIS_REPLY_ERROR ? reply->str : "shape");
    }
    freeReplyObject(reply);
    return rc;
}

sn_rc_t sn_provider_record_set(sn_redis_t *redis, const char *deploy_id, const char *field,
                               const char *value, char **existing)
{
    return s_record_write(redis, deploy_id, field, value, true, existing);
}

sn_rc_t sn_provider_record_put(sn_redis_t *redis, const char *deploy_id, const char *field,
                               const char *value)
{
    return s_record_write(redis, deploy_id, field, value, false, NULL);
}

/* ---- statics ---------------------------------------------------------------------------- */

static void s_sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static bool s_is_json_content_type(const char *value)
{
    while (*value == ' ' || *value == '\t')
        value++;
    size_t len = strcspn(value, "; \t");
    if (len == strlen("application/json") && strncasecmp(value, "application/json", len) == 0)
        return true;
    /* application/problem+json, application/vnd.api+json, ... */
    return len > 5 && strncasecmp(value, "application/", 12) == 0 &&
           strncasecmp(value + len - 5, "+json", 5) == 0;
}

static char *s_record_key(sn_redis_t *redis, const char *deploy_id)
{
    return sn_strdupf("%sprovider:deploy:%s", sn_redis_ns(redis), deploy_id);
}

static sn_rc_t s_call(sn_provider_t *self, sn_http_t *http, const sn_http_request_t *req,
                      bool is_idempotent, sn_provider_budget_t *budget, sn_http_response_t *resp,
                      json_t **json)
{
    SN_ASSERT(self && http && req && req->url && budget && resp);
    SN_ASSERT(req->timeout_ms > 0);
    memset(resp, 0, sizeof *resp);
    const char *method = req->method ? req->method : (req->body ? "POST" : "GET");
    char *url = sn_http_redact_url(req->url);
    sn_backoff_t backoff;
    sn_backoff_init(&backoff, self->backoff_base_ms, self->backoff_cap_ms);
    sn_rc_t rc = SN_AGAIN;
    for (;;) {
        int64_t now = sn_mono_ms();
        if (budget->attempts >= budget->max_attempts) {
            if (!budget->reason[0])
                snprintf(budget->reason, sizeof budget->reason,
                         "attempt budget of %d spent before %s %s", budget->max_attempts, method,
                         url);
            budget->is_transient = true;
            rc = SN_AGAIN;
            break;
        }
        if (budget->deadline_ms > 0 && now >= budget->deadline_ms) {
            snprintf(budget->reason, sizeof budget->reason, "deadline passed before %s %s", method,
                     url);
            budget->is_transient = true;
            rc = SN_AGAIN;
            break;
        }
        int64_t retry_in_ms = 0;
        if (sn_provider_breaker_allow(self, &retry_in_ms) != SN_OK) {
            snprintf(budget->reason, sizeof budget->reason,
                     "circuit open for %s (retry in %lld ms): %s %s not sent", self->provider,
                     (long long)retry_in_ms, method, url);
            budget->is_transient = true;
            rc = SN_AGAIN;
            break;
        }
        int64_t acquire_deadline =
            budget->deadline_ms > 0 ? budget->deadline_ms : now + req->timeout_ms;
        if (sn_provider_acquire(self, acquire_deadline, NULL) != SN_OK) {
            snprintf(budget->reason, sizeof budget->reason,
                     "request budget of %s exhausted until the deadline: %s %s not sent",
                     self->provider, method, url);
            budget->is_transient = true;
            rc = SN_AGAIN;
            break;
        }
        sn_http_request_t attempt = *req;
        if (budget->deadline_ms > 0) {
            int64_t left = budget->deadline_ms - sn_mono_ms();
            if (left < 1)
                left = 1;
            if (left < attempt.timeout_ms)
                attempt.timeout_ms = (int)left;
            if (attempt.connect_timeout_ms > attempt.timeout_ms)
                attempt.connect_timeout_ms = attempt.timeout_ms;
        }
        budget->attempts++;
        sn_http_response_fini(resp);
        sn_rc_t hrc = sn_http_perform(http, &attempt, resp);
        budget->last_status = resp->status;
        sn_provider_outcome_t outcome;
        char why[160];
        if (hrc == SN_ERROR) {
            outcome = SN_PROVIDER_OUTCOME_PERMANENT;
            snprintf(why, sizeof why, "request failed: %.120s",
                     resp->error[0] ? resp->error : "bad request");
        } else if (hrc != SN_OK) {
            outcome = SN_PROVIDER_OUTCOME_TRANSIENT;
            snprintf(why, sizeof why, "%s: %.120s", resp->is_timeout ? "timeout" : "transport",
                     resp->error[0] ? resp->error : "no response");
        } else if (resp->status >= 200 && resp->status < 300) {
            outcome = SN_PROVIDER_OUTCOME_OK;
            if (json && sn_provider_parse_json(resp, json, why, sizeof why) != SN_OK)
                outcome = SN_PROVIDER_OUTCOME_TRANSIENT;
        } else if (resp->status == 429 || resp->status >= 500) {
            outcome = SN_PROVIDER_OUTCOME_TRANSIENT;
            snprintf(why, sizeof why, "HTTP %ld", resp->status);
        } else {
            outcome = SN_PROVIDER_OUTCOME_PERMANENT;
            snprintf(why, sizeof why, "HTTP %ld", resp->status);
        }
        /* The breaker judges the provider, not our request: a 4xx means it is up. */
        if (sn_provider_breaker_record(self, outcome) != SN_OK)
            sn_debug(S_MODULE, "breaker record lost provider=%s", self->provider);
        if (outcome == SN_PROVIDER_OUTCOME_OK) {
            budget->reason[0] = '\0';
            budget->is_transient = false;
            rc = SN_OK;
            break;
        }
        bool is_transient = outcome == SN_PROVIDER_OUTCOME_TRANSIENT;
        budget->failures++;
        budget->is_transient = is_transient;
        snprintf(budget->reason, sizeof budget->reason, "%s %s: %s (attempt %d/%d)", method, url,
                 why, budget->attempts, budget->max_attempts);
        if (!is_transient) {
            sn_warn(S_MODULE, "call failed provider=%s method=%s url=%s reason=\"%s\"",
                    self->provider, method, url, why);
            rc = SN_ERROR;
            break;
        }
        rc = SN_AGAIN;
        if (!is_idempotent) {
            sn_warn(S_MODULE,
                    "call failed provider=%s method=%s url=%s reason=\"%s\" retry=no "
                    "(not idempotent)",
                    self->provider, method, url, why);
            break;
        }
        if (budget->attempts >= budget->max_attempts) {
            sn_warn(S_MODULE,
                    "call failed provider=%s method=%s url=%s reason=\"%s\" retry=no "
                    "(attempts %d/%d)",
                    self->provider, method, url, why, budget->attempts, budget->max_attempts);
            break;
        }
        int64_t wait_ms;
        bool is_retry_after = hrc == SN_OK && resp->retry_after_ms >= 0;
        if (is_retry_after) {
            wait_ms = resp->retry_after_ms;
            if (wait_ms > self->retry_after_cap_ms)
                wait_ms = self->retry_after_cap_ms;
        } else {
            wait_ms = sn_backoff_next(&backoff);
        }
        if (budget->deadline_ms > 0 && sn_mono_ms() + wait_ms >= budget->deadline_ms) {
            sn_warn(S_MODULE,
                    "call failed provider=%s method=%s url=%s reason=\"%s\" retry=no "
                    "(wait %lld ms passes the deadline)",
                    self->provider, method, url, why, (long long)wait_ms);
            size_t used = strlen(budget->reason);
            snprintf(budget->reason + used, sizeof budget->reason - used,
                     "; retry after %lld ms would pass the deadline", (long long)wait_ms);
            break;
        }
        sn_info(S_MODULE,
                "call failed provider=%s method=%s url=%s reason=\"%s\" retry_in_ms=%lld%s "
                "attempt=%d/%d",
                self->provider, method, url, why, (long long)wait_ms,
                is_retry_after ? " (Retry-After)" : "", budget->attempts, budget->max_attempts);
        s_sleep_ms(wait_ms);
    }
    free(url);
    return rc;
}
