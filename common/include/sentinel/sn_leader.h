/* Leader election with fencing tokens for one role, on Redis.
 *
 * The lock is <ns>leader:<role>, a string "<fence>|<token>|<instance>" with a PX ttl,
 * taken in ONE Redis Function (SET NX PX + INCR <ns>fence:<role>, the fence floored at
 * Redis TIME in microseconds and stored back, so it stays monotonic even if Redis loses
 * the counter). Renew and release check the random token. The holder steps down AT ONCE
 * (sn_leader_is_leader turns false without waiting for Redis) when a renewal fails for
 * any reason or when its local clock says the ttl (minus a safety margin) has elapsed
 * since the start of the last successful renewal.
 *
 * Fenced writes compare the caller's fence for EQUALITY with the fence in the current
 * lock value inside the script, so neither an old fence nor a forged higher one passes.
 * Other Redis Function libraries embed SN_LEADER_LUA_FENCE_OK to do the same check. */
#ifndef SN_LEADER_H
#define SN_LEADER_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_redis.h"

typedef struct sn_leader sn_leader_t;

typedef enum {
    SN_LEADER_NONE = 0,         /* no change */
    SN_LEADER_ELECTED = 1,      /* this instance now leads (new fence) */
    SN_LEADER_STEPPED_DOWN = 2, /* this instance no longer leads */
} sn_leader_change_t;

/* Lua for other libraries: `sn_fence_ok(lock_key, fence)` is true only if the lock at
 * @lock_key (pass <ns>leader:<role> as a KEYS entry) exists and its fence equals the
 * decimal string @fence. Paste it at the top of a library body, e.g.
 *   sn_redis_add_library(r, "mylib", SN_LEADER_LUA_FENCE_OK "redis.register_function(...)");
 * and call `if not sn_fence_ok(KEYS[1], ARGV[1]) then return 0 end` before writing. */
#define SN_LEADER_LUA_FENCE_OK                                                                     \
    "local function sn_fence_ok(lock_key, fence)\n"                                                \
    "  local v = redis.call('GET', lock_key)\n"                                                    \
    "  if not v then return false end\n"                                                           \
    "  local cur = string.match(v, '^(%d+)|')\n"                                                   \
    "  return cur ~= nil and type(fence) == 'string' and cur == fence\n"                           \
    "end\n"

/* A (not yet held) lock for @role on @redis (borrowed: must outlive the lock), held as
 * @instance, with a ttl of @ttl_ms (>= 30). Strings are copied. Registers the
 * "sentinel_leader" library on @redis. NULL on bad arguments (empty role or instance,
 * '|' in the role, ttl too short). */
sn_leader_t *sn_leader_new(sn_redis_t *redis, const char *role, const char *instance, int ttl_ms);

/* Releases the lock if held (by token, best effort), frees, sets *self_p = NULL.
 * NULL-safe. */
void sn_leader_destroy(sn_leader_t **self_p);

/* Tries to take the lock and starts a new term: SN_OK: held, *fence (may be NULL) set
 * to the new fence; SN_DECLINED: held by another instance; SN_AGAIN: Redis unreachable
 * or slow; SN_ERROR: Redis refused the script. Loop thread. */
SN_NODISCARD sn_rc_t sn_leader_try(sn_leader_t *self, uint64_t *fence);

/* Extends the held lock by the ttl if its token is still ours (SN_REDIS_LEASE channel).
 * SN_OK: renewed. Any failure steps down at once: SN_DECLINED (not leader, or the lock
 * is gone or someone else's), SN_AGAIN (Redis unreachable or past the deadline),
 * SN_ERROR (script refused). Loop thread. */
SN_NODISCARD sn_rc_t sn_leader_renew(sn_leader_t *self);

/* Deletes the lock if its token is ours and steps down. SN_OK: released; SN_DECLINED:
 * not held by us; SN_AGAIN: Redis unreachable (the lock then lapses by its ttl).
 * Loop thread. */
SN_NODISCARD sn_rc_t sn_leader_release(sn_leader_t *self);

/* Call at sn_leader_next_tick_ms (or every sn_leader_renew_interval_ms): renews when
 * leading (or steps down when the local renewal deadline has passed or the renewal
 * fails), tries to take the lock when not. @now_ms is sn_mono_ms(). Returns what
 * changed. Loop thread. */
sn_leader_change_t sn_leader_tick(sn_leader_t *self, int64_t now_ms);

/* When sn_leader_tick wants to run next, as an absolute sn_mono_ms() time: one renew
 * interval after the last tick while leading (or after a step-down, an error or Redis
 * trouble); after a refusal by another holder's lock (sn_leader_tick or sn_leader_try),
 * a few ms (3..8, jittered) after that lock's PTTL lapses, at least 5 ms and at most one
 * renew interval away — so a standby takes over right after the lock expires instead of
 * up to a renew interval later, without polling faster than that while the holder
 * renews. 0 (tick now) before the first tick. Loop thread. */
int64_t sn_leader_next_tick_ms(sn_leader_t *self);

/* True while this instance holds the lock and the local renewal deadline has not
 * passed. Any thread. */
bool sn_leader_is_leader(sn_leader_t *self);

/* The fence of the current term, 0 when not leading. Any thread. */
uint64_t sn_leader_fence(sn_leader_t *self);

/* ttl / 3: how often the holder renews (the longest sn_leader_next_tick_ms waits). */
int sn_leader_renew_interval_ms(sn_leader_t *self);

/* The role and instance (owned by @self). */
const char *sn_leader_role(sn_leader_t *self);
const char *sn_leader_instance(sn_leader_t *self);

/* HSET on <ns>@key the @nfields pairs (@fields[i] C strings, @values[i] binary with
 * @value_lens, or C strings if NULL) only if @fence equals the current fence of this
 * role's lock, checked inside the script. SN_OK: written; SN_DECLINED: fence refused
 * (old, forged, or no lock); SN_AGAIN: Redis trouble; SN_ERROR: bad arguments.
 * Any thread (SN_REDIS_MAIN channel). */
SN_NODISCARD sn_rc_t sn_leader_fenced_hset(sn_leader_t *self, uint64_t fence, const char *key,
                                           int nfields, const char **fields, const char **values,
                                           const size_t *value_lens);

#endif
