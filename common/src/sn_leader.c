/* Leader election with fencing tokens (see sn_leader.h for the contract).
 *
 * The step-down rule is local: the lock is valid, as far as this process knows, until
 * (start of the last successful acquire/renew) + ttl - margin. The start of the call is
 * used, not the answer, because Redis set the expiry somewhere in between. The margin
 * covers clock-rate differences and the time a caller takes to act on is_leader. */
#include "sentinel/sn_leader.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_id.h"
#include "sentinel/sn_log.h"

#define S_LIB_NAME "sentinel_leader"
#define S_TOKEN_BYTES 16
#define S_MIN_TTL_MS 30
/* A standby refused by a live lock tries again S_RETRY_SLACK_MS plus up to
 * S_RETRY_JITTER_MS after the lock's PTTL, and never sooner than S_RETRY_MIN_MS. */
#define S_RETRY_SLACK_MS 3
#define S_RETRY_JITTER_MS 5
#define S_RETRY_MIN_MS 5

/* clang-format off */
static const char s_lua[] =
    SN_LEADER_LUA_FENCE_OK
    "local function s_num(n) return string.format('%.0f', n) end\n"
    "local function s_token_of(v) return string.match(v, '^%d+|([^|]+)|') end\n"
    /* KEYS lock, fence counter; ARGV token, instance, ttl_ms
     *   -> {1, fence} | {0, fence, holder, the lock's PTTL} */
    "redis.register_function('sn_leader_acquire', function(keys, args)\n"
    "  local ttl = tonumber(args[3])\n"
    "  if not ttl or ttl <= 0 then return redis.error_reply('ERR bad ttl') end\n"
    "  local v = redis.call('GET', keys[1])\n"
    "  if v and s_token_of(v) ~= args[1] then\n"
    "    return {0, string.match(v, '^(%d+)|') or '0', string.match(v, '^%d+|[^|]+|(.*)$') or '',\n"
    "            redis.call('PTTL', keys[1])}\n"
    "  end\n"
    "  local n = redis.call('INCR', keys[2])\n"
    "  local t = redis.call('TIME')\n"
    "  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "  local fence = n\n"
    "  if now_us > n then\n"
    "    fence = now_us\n"
    "    redis.call('SET', keys[2], s_num(fence))\n"
    "  end\n"
    "  local fs = s_num(fence)\n"
    "  redis.call('SET', keys[1], fs .. '|' .. args[1] .. '|' .. args[2], 'PX', ttl)\n"
    "  return {1, fs}\n"
    "end)\n"
    /* KEYS lock; ARGV token, ttl_ms -> 1 renewed | 0 not ours */
    "redis.register_function('sn_leader_renew', function(keys, args)\n"
    "  local v = redis.call('GET', keys[1])\n"
    "  if not v or s_token_of(v) ~= args[1] then return 0 end\n"
    "  redis.call('PEXPIRE', keys[1], tonumber(args[2]))\n"
    "  return 1\n"
    "end)\n"
    /* KEYS lock; ARGV token -> 1 released | 0 not ours */
    "redis.register_function('sn_leader_release', function(keys, args)\n"
    "  local v = redis.call('GET', keys[1])\n"
    "  if not v or s_token_of(v) ~= args[1] then return 0 end\n"
    "  redis.call('DEL', keys[1])\n"
    "  return 1\n"
    "end)\n"
    /* KEYS lock, target hash; ARGV fence, field, value, ... -> 1 written | 0 refused */
    "redis.register_function('sn_fenced_hset', function(keys, args)\n"
    "  if #args < 3 or (#args - 1) % 2 ~= 0 then\n"
    "    return redis.error_reply('ERR fields and values must pair')\n"
    "  end\n"
    "  if not sn_fence_ok(keys[1], args[1]) then return 0 end\n"
    "  redis.call('HSET', keys[2], unpack(args, 2))\n"
    "  return 1\n"
    "end)\n";
/* clang-format on */

struct sn_leader {
    sn_redis_t *redis;
    char *role;
    char *instance;
    char *lock_key; /* without the namespace: sn_redis_fcall adds it */
    char *fence_key;
    int ttl_ms;
    int margin_ms;
    char token[2 * S_TOKEN_BYTES + 1];
    bool is_leader;      /* atomic */
    uint64_t fence;      /* atomic */
    int64_t valid_until; /* atomic, monotonic ms */
    bool ever_led;       /* loop thread: release on destroy even after a step-down */
    int64_t next_tick;   /* loop thread: when sn_leader_tick wants to run next (0: now) */
};

static void s_step_down(sn_leader_t *self, const char *why);
static bool s_reply_int(const redisReply *r, long long *out);
static int64_t s_retry_at(sn_leader_t *self, long long pttl);

sn_leader_t *sn_leader_new(sn_redis_t *redis, const char *role, const char *instance, int ttl_ms)
{
    SN_ASSERT(redis);
    if (!role || !*role || strchr(role, '|') || !instance || !*instance || ttl_ms < S_MIN_TTL_MS)
        return NULL;
    sn_leader_t *self = sn_calloc(1, sizeof *self);
    self->redis = redis;
    self->role = sn_strdup(role);
    self->instance = sn_strdup(instance);
    self->lock_key = sn_strdupf("leader:%s", role);
    self->fence_key = sn_strdupf("fence:%s", role);
    self->ttl_ms = ttl_ms;
    self->margin_ms = ttl_ms / 5;
    sn_random_hex(self->token, S_TOKEN_BYTES);
    sn_redis_add_library(redis, S_LIB_NAME, s_lua);
    return self;
}

void sn_leader_destroy(sn_leader_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_leader_t *self = *self_p;
    if (self->ever_led) {
        sn_rc_t rc = sn_leader_release(self);
        (void)rc; /* best effort: otherwise the lock lapses by its ttl */
    }
    free(self->role);
    free(self->instance);
    free(self->lock_key);
    free(self->fence_key);
    free(self);
    *self_p = NULL;
}

sn_rc_t sn_leader_try(sn_leader_t *self, uint64_t *fence)
{
    SN_ASSERT(self);
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%d", self->ttl_ms);
    const char *keys[] = {self->lock_key, self->fence_key};
    const char *args[] = {self->token, self->instance, ttl};
    int64_t start = sn_mono_ms();
    /* Whatever happens below, the next try is one renew interval away unless a refusal
     * says when the holder's lock lapses. */
    self->next_tick = start + self->ttl_ms / 3;
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_fcall(self->redis, SN_REDIS_LEASE, self->ttl_ms / 3, &r,
                                "sn_leader_acquire", 2, keys, 3, args, NULL);
    if (rc != SN_OK)
        return rc;
    long long won = 0, pttl = -1;
    uint64_t f = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 && s_reply_int(r->element[0], &won) &&
        r->element[1]->type == REDIS_REPLY_STRING) {
        f = strtoull(r->element[1]->str, NULL, 10);
        rc = won == 1 ? SN_OK : SN_DECLINED;
        if (won != 1 && r->elements >= 4)
            (void)s_reply_int(r->element[3], &pttl);
    } else {
        sn_warn("leader", "role %s: acquire refused by Redis: %s", self->role,
                r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        rc = sn_redis_reply_is_transient(r) ? SN_AGAIN : SN_ERROR;
    }
    freeReplyObject(r);
    if (rc == SN_DECLINED)
        self->next_tick = s_retry_at(self, pttl);
    if (rc != SN_OK)
        return rc;
    if (start + self->ttl_ms - self->margin_ms <= sn_mono_ms()) {
        /* The answer came too late to be of use: the lock may already be gone. */
        return SN_AGAIN;
    }
    __atomic_store_n(&self->fence, f, __ATOMIC_SEQ_CST);
    __atomic_store_n(&self->valid_until, start + self->ttl_ms - self->margin_ms, __ATOMIC_SEQ_CST);
    __atomic_store_n(&self->is_leader, true, __ATOMIC_SEQ_CST);
    self->ever_led = true;
    sn_info("leader", "role %s: elected instance=%s fence=%" PRIu64, self->role, self->instance, f);
    if (fence)
        *fence = f;
    return SN_OK;
}

sn_rc_t sn_leader_renew(sn_leader_t *self)
{
    SN_ASSERT(self);
    if (!__atomic_load_n(&self->is_leader, __ATOMIC_SEQ_CST))
        return SN_DECLINED;
    int64_t start = sn_mono_ms();
    int64_t left = __atomic_load_n(&self->valid_until, __ATOMIC_SEQ_CST) - start;
    if (left <= 0) {
        s_step_down(self, "renewal deadline passed");
        return SN_AGAIN;
    }
    int timeout = self->ttl_ms / 3;
    if (left < timeout)
        timeout = (int)left;
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%d", self->ttl_ms);
    const char *keys[] = {self->lock_key};
    const char *args[] = {self->token, ttl};
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_fcall(self->redis, SN_REDIS_LEASE, timeout, &r, "sn_leader_renew", 1,
                                keys, 2, args, NULL);
    if (rc != SN_OK) {
        s_step_down(self, "renewal failed: Redis unreachable or slow");
        return rc;
    }
    long long ok = 0;
    if (!s_reply_int(r, &ok)) {
        s_step_down(self, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected renewal reply");
        rc = sn_redis_reply_is_transient(r) ? SN_AGAIN : SN_ERROR;
    } else if (ok != 1) {
        s_step_down(self, "lock lost (token mismatch or expired)");
        rc = SN_DECLINED;
    } else if (start + self->ttl_ms - self->margin_ms <= sn_mono_ms()) {
        s_step_down(self, "renewal answered too late");
        rc = SN_AGAIN;
    } else {
        __atomic_store_n(&self->valid_until, start + self->ttl_ms - self->margin_ms,
                         __ATOMIC_SEQ_CST);
    }
    freeReplyObject(r);
    return rc;
}

sn_rc_t sn_leader_release(sn_leader_t *self)
{
    SN_ASSERT(self);
    bool was = __atomic_load_n(&self->is_leader, __ATOMIC_SEQ_CST);
    if (was)
        s_step_down(self, "released");
    const char *keys[] = {self->lock_key};
    const char *args[] = {self->token};
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_fcall(self->redis, SN_REDIS_LEASE, self->ttl_ms / 3, &r,
                                "sn_leader_release", 1, keys, 1, args, NULL);
    if (rc != SN_OK)
        return rc;
    long long ok = 0;
    if (!s_reply_int(r, &ok))
        rc = sn_redis_reply_is_transient(r) ? SN_AGAIN : SN_ERROR;
    else
        rc = ok == 1 ? SN_OK : SN_DECLINED;
    freeReplyObject(r);
    return rc;
}

sn_leader_change_t sn_leader_tick(sn_leader_t *self, int64_t now_ms)
{
    SN_ASSERT(self);
    if (__atomic_load_n(&self->is_leader, __ATOMIC_SEQ_CST)) {
        /* The holder renews every interval, counted from the end of this tick as the
         * loop always did; a step-down waits one interval before trying again. */
        sn_leader_change_t change = SN_LEADER_STEPPED_DOWN;
        if (now_ms >= __atomic_load_n(&self->valid_until, __ATOMIC_SEQ_CST))
            s_step_down(self, "renewal deadline passed");
        else if (sn_leader_renew(self) == SN_OK)
            change = SN_LEADER_NONE;
        self->next_tick = sn_mono_ms() + self->ttl_ms / 3;
        return change;
    }
    if (sn_leader_try(self, NULL) != SN_OK)
        return SN_LEADER_NONE; /* next_tick set by the try */
    self->next_tick = sn_mono_ms() + self->ttl_ms / 3;
    return SN_LEADER_ELECTED;
}

int64_t sn_leader_next_tick_ms(sn_leader_t *self)
{
    SN_ASSERT(self);
    return self->next_tick;
}

bool sn_leader_is_leader(sn_leader_t *self)
{
    SN_ASSERT(self);
    return __atomic_load_n(&self->is_leader, __ATOMIC_SEQ_CST) &&
           sn_mono_ms() < __atomic_load_n(&self->valid_until, __ATOMIC_SEQ_CST);
}

uint64_t sn_leader_fence(sn_leader_t *self)
{
    SN_ASSERT(self);
    return sn_leader_is_leader(self) ? __atomic_load_n(&self->fence, __ATOMIC_SEQ_CST) : 0;
}

int sn_leader_renew_interval_ms(sn_leader_t *self)
{
    SN_ASSERT(self);
    return self->ttl_ms / 3;
}

const char *sn_leader_role(sn_leader_t *self)
{
    SN_ASSERT(self);
    return self->role;
}

const char *sn_leader_instance(sn_leader_t *self)
{
    SN_ASSERT(self);
    return self->instance;
}

sn_rc_t sn_leader_fenced_hset(sn_leader_t *self, uint64_t fence, const char *key, int nfields,
                              const char **fields, const char **values, const size_t *value_lens)
{
    SN_ASSERT(self);
    if (!key || !*key || nfields <= 0 || nfields > 10000 || !fields || !values)
        return SN_ERROR;
    for (int i = 0; i < nfields; i++)
        if (!fields[i] || !values[i])
            return SN_ERROR;
    int nargs = 1 + 2 * nfields;
    const char **args = sn_calloc((size_t)nargs, sizeof *args);
    size_t *lens = sn_calloc((size_t)nargs, sizeof *lens);
    char fs[24];
    snprintf(fs, sizeof fs, "%" PRIu64, fence);
    args[0] = fs;
    lens[0] = strlen(fs);
    for (int i = 0; i < nfields; i++) {
        args[1 + 2 * i] = fields[i];
        lens[1 + 2 * i] = strlen(fields[i]);
        args[2 + 2 * i] = values[i];
        lens[2 + 2 * i] = value_lens ? value_lens[i] : strlen(values[i]);
    }
    const char *keys[] = {self->lock_key, key};
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_fcall(self->redis, SN_REDIS_MAIN, 0, &r, "sn_fenced_hset", 2, keys, nargs,
                                args, lens);
    free(args);
    free(lens);
    if (rc != SN_OK)
        return rc;
    long long ok = 0;
    if (!s_reply_int(r, &ok)) {
        sn_warn("leader", "role %s: fenced write refused by Redis: %s", self->role,
                r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        rc = sn_redis_reply_is_transient(r) ? SN_AGAIN : SN_ERROR;
    } else {
        rc = ok == 1 ? SN_OK : SN_DECLINED;
    }
    freeReplyObject(r);
    return rc;
}

static void s_step_down(sn_leader_t *self, const char *why)
{
    if (!__atomic_exchange_n(&self->is_leader, false, __ATOMIC_SEQ_CST))
        return;
    if (strcmp(why, "released") == 0) {
        sn_info("leader", "role %s: released instance=%s", self->role, self->instance);
        return;
    }
    sn_warn("leader", "role %s: stepped down instance=%s fence=%" PRIu64 ": %s", self->role,
            self->instance, __atomic_load_n(&self->fence, __ATOMIC_SEQ_CST), why);
}

/* When a standby refused by a lock with @pttl ms left (-1/-2: no expiry or unknown)
 * should try again: just after the lapse, with a little jitter so that several standbys
 * do not arrive in the same millisecond, no sooner than S_RETRY_MIN_MS (a lock about to
 * lapse cannot make a standby spin) and no later than one renew interval. Measured from
 * the answer, which is after Redis read the PTTL, so the try never lands early. */
static int64_t s_retry_at(sn_leader_t *self, long long pttl)
{
    int64_t interval = self->ttl_ms / 3;
    if (pttl < 0)
        return sn_mono_ms() + interval;
    int64_t delay =
        pttl + S_RETRY_SLACK_MS + (int64_t)(sn_random_u64() % (uint64_t)(S_RETRY_JITTER_MS + 1));
    if (delay < S_RETRY_MIN_MS)
        delay = S_RETRY_MIN_MS;
    if (delay > interval)
        delay = interval;
    return sn_mono_ms() + delay;
}

static bool s_reply_int(const redisReply *r, long long *out)
{
    if (!r || r->type != REDIS_REPLY_INTEGER)
        return false;
    *out = r->integer;
    return true;
}
