/* The job ledger (see sn_ledger.h for the contract and docs/redis.md for the keys).
 *
 * Every rule is enforced inside a Redis Function, with Redis TIME as the only clock, so
 * workers on several hosts with skewed clocks agree on who holds a lease. The C side
 * validates input, builds the events (an Envelope must be stamped and packed here, the
 * script only stores the bytes) and calls the publish callback after Redis answered.
 *
 * Redispatch runs in two calls: a read-only function lists the lapsed leases of the
 * role (id, attempt, limit), C builds a job.dead_lettered envelope for each job at its
 * limit, and the writing function re-checks every job (still claimed, still lapsed,
 * same attempt) before it requeues or dead-letters it and XADDs the prepared event. A
 * job that changed in between is simply skipped until the next round.
 *
 * Scripts derive job:<id> keys from the namespace passed as an argument: fine on a
 * single Redis primary (the deployment this system targets), not cluster-safe. */
#include "sentinel/sn_ledger.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_leader.h"
#include "sentinel/sn_log.h"

#define S_LIB_NAME "sentinel_ledger"
#define S_DEFAULT_MAX_LEASE_MS (3600 * 1000)
#define S_DEFAULT_LEASE_MS (30 * 1000)
#define S_DEFAULT_MAX_ATTEMPTS 3
#define S_DEFAULT_MAXLEN 100000
#define S_LAPSED_LIMIT 1000

/* clang-format off */
static const char s_lua[] =
    SN_LEADER_LUA_FENCE_OK
    "local function s_num(n) return string.format('%.0f', n) end\n"
    "local function s_now_ms()\n"
    "  local t = redis.call('TIME')\n"
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "end\n"
    "local function s_hash(key)\n"
    "  local a = redis.call('HGETALL', key)\n"
    "  if #a == 0 then return nil end\n"
    "  local h = {}\n"
    "  for i = 1, #a, 2 do h[a[i]] = a[i + 1] end\n"
    "  return h\n"
    "end\n"
    /* nil if the claim with @epoch is current and its lease live, else the reason */
    "local function s_live(h, epoch, now)\n"
    "  if not h then return 'absent' end\n"
    "  if h.state ~= 'claimed' then return 'state' end\n"
    "  if h.epoch ~= epoch then return 'epoch' end\n"
    "  if tonumber(h.lease_deadline_ms) <= now then return 'lapsed' end\n"
    "  return nil\n"
    "end\n"
    /* KEYS lock, job, open; ARGV fence, id, kind, service, role, max_attempts, lease_ms,
     * lease_max_ms, payload, correlation_id */
    "redis.register_function('sn_job_create', function(keys, args)\n"
    "  if not sn_fence_ok(keys[1], args[1]) then return {'fence'} end\n"
    "  if redis.call('EXISTS', keys[2]) == 1 then return {'exists'} end\n"
    "  local now = s_num(s_now_ms())\n"
    "  redis.call('HSET', keys[2], 'id', args[2], 'kind', args[3], 'service', args[4],\n"
    "    'owner_role', args[5], 'owner', '', 'epoch', '0', 'lease_deadline_ms', '0',\n"
    "    'lease_ms', args[7], 'lease_max_ms', args[8], 'claimed_ms', '0', 'attempt', '1',\n"
    "    'max_attempts', args[6], 'state', 'queued', 'payload', args[9],\n"
    "    'correlation_id', args[10], 'created_ms', now, 'updated_ms', now)\n"
    "  redis.call('SADD', keys[3], args[2])\n"
    "  return {'ok'}\n"
    "end)\n"
    /* KEYS job, leases; ARGV instance, lease_ms */
    "redis.register_function('sn_job_claim', function(keys, args)\n"
    "  local h = s_hash(keys[1])\n"
    "  if not h then return {'absent'} end\n"
    "  if h.state ~= 'queued' and h.state ~= 'claimed' then return {'state'} end\n"
    "  local now = s_now_ms()\n"
    "  if h.state == 'claimed' and tonumber(h.lease_deadline_ms) > now and h.owner ~= args[1] then\n"
    "    return {'leased'}\n"
    "  end\n"
    "  local lease = tonumber(args[2])\n"
    "  if not lease or lease <= 0 then lease = tonumber(h.lease_ms) end\n"
    "  local max = tonumber(h.lease_max_ms)\n"
    "  if lease > max then lease = max end\n"
    "  local epoch = s_num(tonumber(h.epoch) + 1)\n"
    "  local deadline = s_num(now + lease)\n"
    "  redis.call('HSET', keys[1], 'owner', args[1], 'epoch', epoch, 'state', 'claimed',\n"
    "    'claimed_ms', s_num(now), 'lease_deadline_ms', deadline, 'updated_ms', s_num(now))\n"
    "  redis.call('ZADD', keys[2], deadline, h.id)\n"
    "  return {'ok', epoch, s_num(lease), h.kind, h.service, h.owner_role, h.attempt,\n"
    "    h.max_attempts, h.lease_ms, h.payload, h.correlation_id}\n"
    "end)\n"
    /* KEYS job, leases; ARGV epoch, lease_ms */
    "redis.register_function('sn_job_renew', function(keys, args)\n"
    "  local h = s_hash(keys[1])\n"
    "  local now = s_now_ms()\n"
    "  local why = s_live(h, args[1], now)\n"
    "  if why then return {why} end\n"
    "  local hard = tonumber(h.claimed_ms) + tonumber(h.lease_max_ms)\n"
    "  if now >= hard then return {'max'} end\n"
    "  local lease = tonumber(args[2])\n"
    "  if not lease or lease <= 0 then lease = tonumber(h.lease_ms) end\n"
    "  local deadline = now + lease\n"
    "  if deadline > hard then deadline = hard end\n"
    "  redis.call('HSET', keys[1], 'lease_deadline_ms', s_num(deadline), 'updated_ms', s_num(now))\n"
    "  redis.call('ZADD', keys[2], s_num(deadline), h.id)\n"
    "  return {'ok', s_num(deadline - now)}\n"
    "end)\n"
    /* KEYS job, leases, events; ARGV epoch, ok, result, prefix, maxlen, type, env */
    "redis.register_function('sn_job_finish', function(keys, args)\n"
    "  local h = s_hash(keys[1])\n"
    "  local now = s_now_ms()\n"
    "  local why = s_live(h, args[1], now)\n"
    "  if why then return {why} end\n"
    "  local state = 'failed'\n"
    "  if args[2] == '1' then state = 'done' end\n"
    "  redis.call('HSET', keys[1], 'state', state, 'ok', args[2], 'result', args[3],\n"
    "    'lease_deadline_ms', '0', 'updated_ms', s_num(now))\n"
    "  redis.call('ZREM', keys[2], h.id)\n"
    "  redis.call('SREM', args[4] .. 'jobs:open:' .. h.owner_role, h.id)\n"
    "  local sid = ''\n"
    "  if args[7] ~= '' then\n"
    "    sid = redis.call('XADD', keys[3], 'MAXLEN', '~', args[5], '*', 'type', args[6],\n"
    "      'env', args[7])\n"
    "  end\n"
    "  return {'ok', sid}\n"
    "end)\n"
    /* KEYS job, target; ARGV epoch, op (incr|hset), field, value */
    "redis.register_function('sn_job_guarded', function(keys, args)\n"
    "  local h = s_hash(keys[1])\n"
    "  local why = s_live(h, args[1], s_now_ms())\n"
    "  if why then return {why} end\n"
    "  if args[2] == 'incr' then\n"
    "    return {'ok', s_num(redis.call('INCR', keys[2]))}\n"
    "  elseif args[2] == 'hset' and args[4] then\n"
    "    redis.call('HSET', keys[2], args[3], args[4])\n"
    "    return {'ok', '1'}\n"
    "  end\n"
    "  return redis.error_reply('ERR sn_job_guarded: unknown op')\n"
    "end)\n"
    /* KEYS leases; ARGV role, prefix, limit -> flat {id, attempt, max_attempts, kind,
     * correlation_id}... of the role's claimed jobs whose lease lapsed */
    "redis.register_function{function_name='sn_job_lapsed', flags={'no-writes'},\n"
    "  callback=function(keys, args)\n"
    "  local now = s_now_ms()\n"
    "  local ids = redis.call('ZRANGEBYSCORE', keys[1], '-inf', s_num(now), 'LIMIT', 0,\n"
    "    tonumber(args[3]))\n"
    "  local out = {}\n"
    "  for _, id in ipairs(ids) do\n"
    "    local h = redis.call('HMGET', args[2] .. 'job:' .. id, 'state', 'owner_role',\n"
    "      'attempt', 'max_attempts', 'kind', 'correlation_id')\n"
    "    if h[1] == 'claimed' and h[2] == args[1] then\n"
    "      out[#out + 1] = id\n"
    "      out[#out + 1] = h[3]\n"
    "      out[#out + 1] = h[4]\n"
    "      out[#out + 1] = h[5] or ''\n"
    "      out[#out + 1] = h[6] or ''\n"
    "    end\n"
    "  end\n"
    "  return out\n"
    "end}\n"
    /* KEYS lock, leases, open, dead, events; ARGV fence, role, prefix, maxlen, then
     * triples (id, attempt seen, dead-letter envelope or '') */
    "redis.register_function('sn_job_redispatch', function(keys, args)\n"
    "  if not sn_fence_ok(keys[1], args[1]) then return {'fence'} end\n"
    "  local now = s_now_ms()\n"
    "  local requeued, dead = {}, {}\n"
    "  for i = 5, #args - 2, 3 do\n"
    "    local id, seen, env = args[i], args[i + 1], args[i + 2]\n"
    "    local jk = args[3] .. 'job:' .. id\n"
    "    local h = redis.call('HMGET', jk, 'state', 'owner_role', 'attempt', 'max_attempts',\n"
    "      'lease_deadline_ms')\n"
    "    if h[1] == 'claimed' and h[2] == args[2] and h[3] == seen and\n"
    "        tonumber(h[5]) <= now then\n"
    "      local attempt = tonumber(h[3])\n"
    "      if attempt >= tonumber(h[4]) then\n"
    "        if env ~= '' then\n"
    "          redis.call('HSET', jk, 'state', 'dead', 'lease_deadline_ms', '0',\n"
    "            'updated_ms', s_num(now))\n"
    "          redis.call('ZREM', keys[2], id)\n"
    "          redis.call('SREM', keys[3], id)\n"
    "          redis.call('LPUSH', keys[4], id)\n"
    "          local sid = redis.call('XADD', keys[5], 'MAXLEN', '~', args[4], '*',\n"
    "            'type', 'job.dead_lettered', 'env', env)\n"
    "          dead[#dead + 1] = id\n"
    "          dead[#dead + 1] = sid\n"
    "        end\n"
    "      else\n"
    "        redis.call('HSET', jk, 'attempt', s_num(attempt + 1), 'state', 'queued',\n"
    "          'owner', '', 'lease_deadline_ms', '0', 'updated_ms', s_num(now))\n"
    "        redis.call('ZREM', keys[2], id)\n"
    "        requeued[#requeued + 1] = id\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  return {'ok', requeued, dead}\n"
    "end)\n";
/* clang-format on */

struct sn_ledger {
    sn_redis_t *redis;
    sn_source_t *source;
    sn_ledger_publish_fn publish;
    void *publish_arg;
    int64_t max_lease_ms;
    long maxlen;
};

static sn_rc_t s_status(const redisReply *r, const char *what, const char *job_id);
static bool s_role_ok(const char *role);
static void s_ids_push(sn_ledger_ids_t *ids, const char *s, size_t len);
static sn_rc_t s_ids_from_reply(const redisReply *r, sn_ledger_ids_t *out);
static int64_t s_i64(const redisReply *r);
static sn_rc_t s_job_fcall(sn_ledger_t *self, sn_redis_chan_t chan, const char *fn,
                           const char *what, const char *job_id, const char *key, int nargs,
                           const char **args, const size_t *lens, redisReply **r);
static sn_rc_t s_read(sn_ledger_t *self, const char *cmd, char *key, int nextra, const char **extra,
                      redisReply **r);
static sn_rc_t s_read_ids(sn_ledger_t *self, const char *cmd, char *key, int nextra,
                          const char **extra, sn_ledger_ids_t *out);

void sn_ledger_ids_fini(sn_ledger_ids_t *self)
{
    if (!self)
        return;
    for (size_t i = 0; i < self->count; i++)
        free(self->ids[i]);
    free(self->ids);
    self->ids = NULL;
    self->count = 0;
}

void sn_ledger_job_fini(sn_ledger_job_t *self)
{
    if (!self)
        return;
    sn_ledger_spec_free(&self->spec);
    free(self->owner);
    free(self->result);
    memset(self, 0, sizeof *self);
}

void sn_ledger_redispatch_fini(sn_ledger_redispatch_t *self)
{
    if (!self)
        return;
    sn_ledger_ids_fini(&self->requeued);
    sn_ledger_ids_fini(&self->dead);
    sn_ledger_ids_fini(&self->dead_stream_ids);
}

sn_ledger_t *sn_ledger_new(sn_redis_t *redis, sn_source_t *source)
{
    SN_ASSERT(redis && source);
    sn_ledger_t *self = sn_calloc(1, sizeof *self);
    self->redis = redis;
    self->source = source;
    self->max_lease_ms = S_DEFAULT_MAX_LEASE_MS;
    self->maxlen = S_DEFAULT_MAXLEN;
    sn_redis_add_library(redis, S_LIB_NAME, s_lua);
    return self;
}

void sn_ledger_destroy(sn_ledger_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free(*self_p);
    *self_p = NULL;
}

void sn_ledger_set_publish(sn_ledger_t *self, sn_ledger_publish_fn fn, void *arg)
{
    SN_ASSERT(self);
    self->publish = fn;
    self->publish_arg = arg;
}

void sn_ledger_set_max_lease_ms(sn_ledger_t *self, int64_t max_lease_ms)
{
    SN_ASSERT(self && max_lease_ms >= 10);
    self->max_lease_ms = max_lease_ms;
}

void sn_ledger_set_events_maxlen(sn_ledger_t *self, long maxlen)
{
    SN_ASSERT(self && maxlen > 0);
    self->maxlen = maxlen;
}

bool sn_ledger_id_is_valid(const char *job_id)
{
    if (!job_id)
        return false;
    size_t n = 0;
    for (const char *p = job_id; *p; p++, n++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == ':' || c == '-';
        if (!ok || n >= SN_LEDGER_ID_MAX)
            return false;
    }
    return n > 0;
}

sn_rc_t sn_ledger_create(sn_ledger_t *self, uint64_t fence, const char *role,
                         const Sentinel__V1__JobSpec *spec)
{
    SN_ASSERT(self);
    if (!s_role_ok(role) || !spec || !sn_ledger_id_is_valid(spec->job_id) || !spec->kind ||
        !spec->service || (spec->owner_role && *spec->owner_role && strcmp(spec->owner_role, role)))
        return SN_ERROR;
    if (spec->lease_ms < 0)
        return SN_ERROR;
    char fs[24], max_attempts[16], lease[24], lease_max[24];
    snprintf(fs, sizeof fs, "%" PRIu64, fence);
    snprintf(max_attempts, sizeof max_attempts, "%" PRIu32,
             spec->max_attempts ? spec->max_attempts : S_DEFAULT_MAX_ATTEMPTS);
    int64_t lease_ms = spec->lease_ms ? spec->lease_ms : S_DEFAULT_LEASE_MS;
    snprintf(lease, sizeof lease, "%" PRId64, lease_ms);
    snprintf(lease_max, sizeof lease_max, "%" PRId64, self->max_lease_ms);
    char *lock = sn_strdupf("leader:%s", role);
    char *job = sn_strdupf("job:%s", spec->job_id);
    char *open = sn_strdupf("jobs:open:%s", role);
    const char *keys[] = {lock, job, open};
    const char *corr = spec->correlation_id ? spec->correlation_id : "";
    const char *args[] = {fs,
                          spec->job_id,
                          spec->kind,
                          spec->service,
                          role,
                          max_attempts,
                          lease,
                          lease_max,
                          spec->payload.data ? (const char *)spec->payload.data : "",
                          corr};
    size_t lens[SN_ARRAY_LEN(args)];
    for (size_t i = 0; i < SN_ARRAY_LEN(args); i++)
        lens[i] = i == 8 ? spec->payload.len : strlen(args[i]);
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_fcall(self->redis, SN_REDIS_MAIN, 0, &r, "sn_job_create", 3, keys,
                                (int)SN_ARRAY_LEN(args), args, lens);
    free(lock);
    free(job);
    free(open);
    if (rc != SN_OK)
        return rc;
    rc = s_status(r, "create", spec->job_id);
    freeReplyObject(r);
    return rc;
}

sn_rc_t sn_ledger_claim(sn_ledger_t *self, const char *job_id, const char *instance,
                        int64_t lease_ms, uint64_t *epoch, Sentinel__V1__JobSpec **spec_out)
{
    SN_ASSERT(self);
    if (spec_out)
        *spec_out = NULL;
    if (!sn_ledger_id_is_valid(job_id) || !instance || !*instance || lease_ms < 0)
        return SN_ERROR;
    char lease[24];
    snprintf(lease, sizeof lease, "%" PRId64, lease_ms);
    const char *args[] = {instance, lease};
    redisReply *r = NULL;
    sn_rc_t rc = s_job_fcall(self, SN_REDIS_LEASE, "sn_job_claim", "claim", job_id, "jobs:leases",
                             2, args, NULL, &r);
    if (rc != SN_OK)
        return rc;
    if (r->elements < 11) {
        rc = SN_ERROR;
        goto out;
    }
    for (size_t i = 1; i < 11; i++)
        if (r->element[i]->type != REDIS_REPLY_STRING) {
            sn_warn("ledger", "claim %s: malformed job record", job_id);
            rc = SN_ERROR;
            goto out;
        }
    if (epoch)
        *epoch = (uint64_t)s_i64(r->element[1]);
    if (spec_out) {
        Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
        spec.job_id = (char *)job_id;
        spec.kind = r->element[3]->str;
        spec.service = r->element[4]->str;
        spec.owner_role = r->element[5]->str;
        spec.attempt = (uint32_t)s_i64(r->element[6]);
        spec.max_attempts = (uint32_t)s_i64(r->element[7]);
        spec.lease_ms = s_i64(r->element[8]);
        spec.payload.data = (uint8_t *)r->element[9]->str;
        spec.payload.len = r->element[9]->len;
        spec.correlation_id = r->element[10]->str;
        size_t n = sentinel__v1__job_spec__get_packed_size(&spec);
        uint8_t *buf = sn_malloc(n ? n : 1);
        sentinel__v1__job_spec__pack(&spec, buf);
        *spec_out = sentinel__v1__job_spec__unpack(NULL, n, buf);
        free(buf);
        SN_ASSERT(*spec_out);
    }
out:
    freeReplyObject(r);
    return rc;
}

sn_rc_t sn_ledger_renew(sn_ledger_t *self, const char *job_id, uint64_t epoch, int64_t lease_ms,
                        int64_t *granted_ms)
{
    SN_ASSERT(self);
    if (!sn_ledger_id_is_valid(job_id) || lease_ms < 0)
        return SN_ERROR;
    char es[24], lease[24];
    snprintf(es, sizeof es, "%" PRIu64, epoch);
    snprintf(lease, sizeof lease, "%" PRId64, lease_ms);
    const char *args[] = {es, lease};
    redisReply *r = NULL;
    sn_rc_t rc = s_job_fcall(self, SN_REDIS_LEASE, "sn_job_renew", "renew", job_id, "jobs:leases",
                             2, args, NULL, &r);
    if (rc != SN_OK)
        return rc;
    if (granted_ms)
        *granted_ms = r->elements >= 2 ? s_i64(r->element[1]) : 0;
    freeReplyObject(r);
    return SN_OK;
}

sn_rc_t sn_ledger_complete(sn_ledger_t *self, const char *job_id, uint64_t epoch, bool ok,
                           const uint8_t *result, size_t result_len)
{
    SN_ASSERT(self);
    if (!sn_ledger_id_is_valid(job_id) || (result_len && !result))
        return SN_ERROR;
    const char *type = ok ? "job.completed" : "job.failed";
    Sentinel__V1__JobResult jr = SENTINEL__V1__JOB_RESULT__INIT;
    jr.job_id = (char *)job_id;
    jr.ok = ok;
    jr.epoch = epoch;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, self->source, type, id);
    env.subject = (char *)job_id;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_JOB_RESULT;
    env.job_result = &jr;
    size_t env_len = 0;
    uint8_t *env_buf = sn_envelope_pack(&env, &env_len);

    char es[24], maxlen[24];
    snprintf(es, sizeof es, "%" PRIu64, epoch);
    snprintf(maxlen, sizeof maxlen, "%ld", self->maxlen);
    char *job = sn_strdupf("job:%s", job_id);
    const char *keys[] = {job, "jobs:leases", "events"};
    const char *args[] = {es,
                          ok ? "1" : "0",
                          result ? (const char *)result : "",
                          sn_redis_ns(self->redis),
                          maxlen,
                          type,
                          (const char *)env_buf};
    size_t lens[SN_ARRAY_LEN(args)];
    for (size_t i = 0; i < SN_ARRAY_LEN(args); i++)
        lens[i] = i == 2 ? result_len : i == 6 ? env_len : strlen(args[i]);
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_fcall(self->redis, SN_REDIS_MAIN, 0, &r, "sn_job_finish", 3, keys,
                                (int)SN_ARRAY_LEN(args), args, lens);
    free(job);
    if (rc == SN_OK) {
        rc = s_status(r, "complete", job_id);
        freeReplyObject(r);
    }
    if (rc == SN_OK && self->publish)
        self->publish(self->publish_arg, type, env_buf, env_len);
    free(env_buf);
    return rc;
}

static sn_rc_t s_guarded(sn_ledger_t *self, const char *job_id, uint64_t epoch, const char *key,
                         const char *op, const char *field, const uint8_t *value, size_t value_len,
                         int64_t *out)
{
    if (!sn_ledger_id_is_valid(job_id) || !key || !*key)
        return SN_ERROR;
    char es[24];
    snprintf(es, sizeof es, "%" PRIu64, epoch);
    const char *args[] = {es, op, field ? field : "", value ? (const char *)value : ""};
    size_t lens[] = {strlen(es), strlen(op), strlen(args[2]), value ? value_len : 0};
    redisReply *r = NULL;
    sn_rc_t rc = s_job_fcall(self, SN_REDIS_MAIN, "sn_job_guarded", "guarded write", job_id, key, 4,
                             args, lens, &r);
    if (rc != SN_OK)
        return rc;
    if (out)
        *out = r->elements >= 2 ? s_i64(r->element[1]) : 0;
    freeReplyObject(r);
    return SN_OK;
}

sn_rc_t sn_ledger_guarded_incr(sn_ledger_t *self, const char *job_id, uint64_t epoch,
                               const char *key, int64_t *value)
{
    SN_ASSERT(self);
    return s_guarded(self, job_id, epoch, key, "incr", NULL, NULL, 0, value);
}

sn_rc_t sn_ledger_guarded_hset(sn_ledger_t *self, const char *job_id, uint64_t epoch,
                               const char *key, const char *field, const uint8_t *value,
                               size_t value_len)
{
    SN_ASSERT(self);
    if (!field || !*field || (value_len && !value))
        return SN_ERROR;
    static const uint8_t empty[1] = {0};
    return s_guarded(self, job_id, epoch, key, "hset", field, value ? value : empty, value_len,
                     NULL);
}

sn_rc_t sn_ledger_redispatch(sn_ledger_t *self, uint64_t fence, const char *role,
                             sn_ledger_redispatch_t *out)
{
    SN_ASSERT(self && out);
    memset(out, 0, sizeof *out);
    if (!s_role_ok(role))
        return SN_ERROR;
    const char *ns = sn_redis_ns(self->redis);
    char limit[16];
    snprintf(limit, sizeof limit, "%d", S_LAPSED_LIMIT);
    const char *lkeys[] = {"jobs:leases"};
    const char *largs[] = {role, ns, limit};
    redisReply *lapsed = NULL;
    sn_rc_t rc = sn_redis_fcall(self->redis, SN_REDIS_MAIN, 0, &lapsed, "sn_job_lapsed", 1, lkeys,
                                3, largs, NULL);
    if (rc != SN_OK)
        return rc;
    if (lapsed->type != REDIS_REPLY_ARRAY) {
        rc = s_status(lapsed, "redispatch", role);
        freeReplyObject(lapsed);
        return rc == SN_OK ? SN_ERROR : rc;
    }
    /* Build one dead-letter envelope per job at its limit, then one writing call (made
     * even with no candidates, so that a caller with a wrong fence always hears it). */
    size_t njobs = lapsed->elements / 5;
    int nargs = 4 + 3 * (int)njobs;
    const char **args = sn_calloc((size_t)nargs, sizeof *args);
    size_t *lens = sn_calloc((size_t)nargs, sizeof *lens);
    uint8_t **envs = sn_calloc(njobs, sizeof *envs);
    size_t *env_lens = sn_calloc(njobs, sizeof *env_lens);
    char fs[24], maxlen[24];
    snprintf(fs, sizeof fs, "%" PRIu64, fence);
    snprintf(maxlen, sizeof maxlen, "%ld", self->maxlen);
    args[0] = fs;
    args[1] = role;
    args[2] = ns;
    args[3] = maxlen;
    for (int i = 0; i < 4; i++)
        lens[i] = strlen(args[i]);
    for (size_t j = 0; j < njobs; j++) {
        redisReply **e = &lapsed->element[5 * j];
        bool ok = true;
        for (int k = 0; k < 5; k++)
            ok = ok && e[k]->type == REDIS_REPLY_STRING;
        const char *id = ok ? e[0]->str : "";
        args[4 + 3 * j] = id;
        lens[4 + 3 * j] = strlen(id);
        args[5 + 3 * j] = ok ? e[1]->str : "";
        lens[5 + 3 * j] = strlen(args[5 + 3 * j]);
        args[6 + 3 * j] = "";
        if (ok && s_i64(e[1]) >= s_i64(e[2])) {
            Sentinel__V1__JobDeadLettered jd = SENTINEL__V1__JOB_DEAD_LETTERED__INIT;
            jd.job_id = e[0]->str;
            jd.kind = e[3]->str;
            jd.attempts = (uint32_t)s_i64(e[1]);
            jd.reason = "lease lapsed at the attempt limit";
            sn_envelope_t env;
            char eid[SN_ID_LEN + 1];
            sn_envelope_stamp(&env, self->source, "job.dead_lettered", eid);
            env.subject = e[0]->str;
            env.correlation_id = e[4]->str;
            env.fence = fence;
            env.body_case = SENTINEL__V1__ENVELOPE__BODY_JOB_DEAD;
            env.job_dead = &jd;
            envs[j] = sn_envelope_pack(&env, &env_lens[j]);
            args[6 + 3 * j] = (const char *)envs[j];
            lens[6 + 3 * j] = env_lens[j];
        }
    }
    char *lock = sn_strdupf("leader:%s", role);
    char *open = sn_strdupf("jobs:open:%s", role);
    const char *keys[] = {lock, "jobs:leases", open, "jobs:dead", "events"};
    redisReply *r = NULL;
    rc = sn_redis_fcall(self->redis, SN_REDIS_MAIN, 0, &r, "sn_job_redispatch", 5, keys, nargs,
                        args, lens);
    free(lock);
    free(open);
    if (rc == SN_OK) {
        rc = s_status(r, "redispatch", role);
        if (rc == SN_OK && r->elements >= 3) {
            if (s_ids_from_reply(r->element[1], &out->requeued) != SN_OK)
                rc = SN_ERROR;
            const redisReply *d = r->element[2];
            for (size_t i = 0; rc == SN_OK && d->type == REDIS_REPLY_ARRAY && i + 1 < d->elements;
                 i += 2) {
                s_ids_push(&out->dead, d->element[i]->str, d->element[i]->len);
                s_ids_push(&out->dead_stream_ids, d->element[i + 1]->str, d->element[i + 1]->len);
            }
        }
        freeReplyObject(r);
    }
    if (rc == SN_OK) {
        for (size_t i = 0; i < out->dead.count; i++)
            sn_warn("ledger", "job %s dead-lettered (role %s) event=%s", out->dead.ids[i], role,
                    out->dead_stream_ids.ids[i]);
        /* Outbox: publish only what Redis stored, after it answered. */
        for (size_t i = 0; self->publish && i < out->dead.count; i++)
            for (size_t j = 0; j < njobs; j++)
                if (envs[j] && strcmp(args[4 + 3 * j], out->dead.ids[i]) == 0) {
                    self->publish(self->publish_arg, "job.dead_lettered", envs[j], env_lens[j]);
                    break;
                }
    } else {
        sn_ledger_redispatch_fini(out);
    }
    for (size_t j = 0; j < njobs; j++)
        free(envs[j]);
    free(envs);
    free(env_lens);
    free(args);
    free(lens);
    freeReplyObject(lapsed);
    return rc;
}

sn_rc_t sn_ledger_open_jobs(sn_ledger_t *self, const char *role, sn_ledger_ids_t *out)
{
    SN_ASSERT(self && out);
    memset(out, 0, sizeof *out);
    if (!s_role_ok(role))
        return SN_ERROR;
    return s_read_ids(self, "SMEMBERS",
                      sn_strdupf("%sjobs:open:%s", sn_redis_ns(self->redis), role), 0, NULL, out);
}

sn_rc_t sn_ledger_dead_jobs(sn_ledger_t *self, size_t max, sn_ledger_ids_t *out)
{
    SN_ASSERT(self && out);
    memset(out, 0, sizeof *out);
    if (max == 0)
        return SN_OK;
    char stop[24];
    snprintf(stop, sizeof stop, "%zu", max - 1);
    const char *range[] = {"0", stop};
    return s_read_ids(self, "LRANGE", sn_strdupf("%sjobs:dead", sn_redis_ns(self->redis)), 2, range,
                      out);
}

static sn_job_state_t s_state_parse(const char *s)
{
    static const struct {
        const char *name;
        sn_job_state_t state;
    } map[] = {{"queued", SN_JOB_QUEUED},
               {"claimed", SN_JOB_CLAIMED},
               {"done", SN_JOB_DONE},
               {"failed", SN_JOB_FAILED},
               {"dead", SN_JOB_DEAD}};
    for (size_t i = 0; i < SN_ARRAY_LEN(map); i++)
        if (strcmp(s, map[i].name) == 0)
            return map[i].state;
    return SN_JOB_UNKNOWN;
}

sn_rc_t sn_ledger_get(sn_ledger_t *self, const char *job_id, sn_ledger_job_t *out)
{
    SN_ASSERT(self && out);
    memset(out, 0, sizeof *out);
    if (!sn_ledger_id_is_valid(job_id))
        return SN_ERROR;
    redisReply *r = NULL;
    sn_rc_t rc = s_read(self, "HGETALL", sn_strdupf("%sjob:%s", sn_redis_ns(self->redis), job_id),
                        0, NULL, &r);
    if (rc != SN_OK)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0 || r->elements % 2) {
        rc = r->type == REDIS_REPLY_ERROR && sn_redis_reply_is_transient(r) ? SN_AGAIN : SN_ERROR;
        freeReplyObject(r);
        return rc;
    }
    Sentinel__V1__JobSpec spec = SENTINEL__V1__JOB_SPEC__INIT;
    spec.job_id = (char *)job_id;
    out->owner = sn_strdup("");
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        const char *f = k->str;
        if (strcmp(f, "kind") == 0)
            spec.kind = v->str;
        else if (strcmp(f, "service") == 0)
            spec.service = v->str;
        else if (strcmp(f, "owner_role") == 0)
            spec.owner_role = v->str;
        else if (strcmp(f, "correlation_id") == 0)
            spec.correlation_id = v->str;
        else if (strcmp(f, "attempt") == 0)
            spec.attempt = (uint32_t)s_i64(v);
        else if (strcmp(f, "max_attempts") == 0)
            spec.max_attempts = (uint32_t)s_i64(v);
        else if (strcmp(f, "lease_ms") == 0)
            spec.lease_ms = s_i64(v);
        else if (strcmp(f, "payload") == 0) {
            spec.payload.data = (uint8_t *)v->str;
            spec.payload.len = v->len;
        } else if (strcmp(f, "state") == 0)
            out->state = s_state_parse(v->str);
        else if (strcmp(f, "owner") == 0) {
            free(out->owner);
            out->owner = sn_strndup(v->str, v->len);
        } else if (strcmp(f, "epoch") == 0)
            out->epoch = (uint64_t)s_i64(v);
        else if (strcmp(f, "lease_deadline_ms") == 0)
            out->lease_deadline_ms = s_i64(v);
        else if (strcmp(f, "lease_max_ms") == 0)
            out->lease_max_ms = s_i64(v);
        else if (strcmp(f, "claimed_ms") == 0)
            out->claimed_ms = s_i64(v);
        else if (strcmp(f, "created_ms") == 0)
            out->created_ms = s_i64(v);
        else if (strcmp(f, "updated_ms") == 0)
            out->updated_ms = s_i64(v);
        else if (strcmp(f, "ok") == 0)
            out->ok = strcmp(v->str, "1") == 0;
        else if (strcmp(f, "result") == 0) {
            out->result = sn_malloc(v->len + 1);
            memcpy(out->result, v->str, v->len);
            out->result[v->len] = 0;
            out->result_len = v->len;
        }
    }
    size_t n = sentinel__v1__job_spec__get_packed_size(&spec);
    uint8_t *buf = sn_malloc(n ? n : 1);
    sentinel__v1__job_spec__pack(&spec, buf);
    out->spec = sentinel__v1__job_spec__unpack(NULL, n, buf);
    SN_ASSERT(out->spec);
    free(buf);
    freeReplyObject(r);
    return SN_OK;
}

void sn_ledger_spec_free(Sentinel__V1__JobSpec **spec_p)
{
    if (spec_p && *spec_p) {
        sentinel__v1__job_spec__free_unpacked(*spec_p, NULL);
        *spec_p = NULL;
    }
}

const char *sn_job_state_str(sn_job_state_t state)
{
    switch (state) {
    case SN_JOB_QUEUED:
        return "queued";
    case SN_JOB_CLAIMED:
        return "claimed";
    case SN_JOB_DONE:
        return "done";
    case SN_JOB_FAILED:
        return "failed";
    case SN_JOB_DEAD:
        return "dead";
    default:
        return "unknown";
    }
}

/* ---- statics ------------------------------------------------------------------------- */

/* Maps a script's {'status', ...} answer to a return code. Refusals are routine (debug);
 * an error reply means a broken script or a Redis in trouble: logged here, once. */
static sn_rc_t s_status(const redisReply *r, const char *what, const char *job_id)
{
    if (r->type == REDIS_REPLY_ERROR) {
        if (sn_redis_reply_is_transient(r))
            return SN_AGAIN;
        sn_warn("ledger", "%s %s: Redis refused: %s", what, job_id, r->str);
        return SN_ERROR;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_STRING) {
        sn_warn("ledger", "%s %s: unexpected reply type %d", what, job_id, r->type);
        return SN_ERROR;
    }
    const char *s = r->element[0]->str;
    if (strcmp(s, "ok") == 0 || strcmp(s, "exists") == 0)
        return SN_OK;
    sn_debug("ledger", "%s %s: refused (%s)", what, job_id, s);
    if (strcmp(s, "absent") == 0)
        return SN_ERROR;
    return SN_DECLINED; /* fence, epoch, leased, lapsed, max, state */
}

static bool s_role_ok(const char *role)
{
    if (!role || !*role || strlen(role) > SN_LEDGER_ID_MAX)
        return false;
    for (const char *p = role; *p; p++)
        if (*p == '|' || *p == ' ' || (unsigned char)*p < 0x21)
            return false;
    return true;
}

static void s_ids_push(sn_ledger_ids_t *ids, const char *s, size_t len)
{
    ids->ids = sn_realloc(ids->ids, (ids->count + 1) * sizeof *ids->ids);
    ids->ids[ids->count++] = sn_strndup(s ? s : "", s ? len : 0);
}

static sn_rc_t s_ids_from_reply(const redisReply *r, sn_ledger_ids_t *out)
{
    if (r->type == REDIS_REPLY_ERROR)
        return sn_redis_reply_is_transient(r) ? SN_AGAIN : SN_ERROR;
    if (r->type != REDIS_REPLY_ARRAY)
        return SN_ERROR;
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type == REDIS_REPLY_STRING)
            s_ids_push(out, r->element[i]->str, r->element[i]->len);
    return SN_OK;
}

static int64_t s_i64(const redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (r->type != REDIS_REPLY_STRING)
        return 0;
    int64_t v = 0;
    if (sn_parse_i64(r->str, INT64_MIN, INT64_MAX, &v) != SN_OK)
        return 0;
    return v;
}

/* FCALL @fn on the keys job:<job_id> and @key (both namespaced by sn_redis_fcall) with
 * @nargs @args (@lens NULL for C strings); the answer is checked by s_status (@what names
 * the operation in its log). SN_OK with the reply in *r (caller frees); otherwise the
 * reply is freed here and *r is NULL. */
static sn_rc_t s_job_fcall(sn_ledger_t *self, sn_redis_chan_t chan, const char *fn,
                           const char *what, const char *job_id, const char *key, int nargs,
                           const char **args, const size_t *lens, redisReply **r)
{
    char *job = sn_strdupf("job:%s", job_id);
    const char *keys[] = {job, key};
    *r = NULL;
    sn_rc_t rc = sn_redis_fcall(self->redis, chan, 0, r, fn, 2, keys, nargs, args, lens);
    free(job);
    if (rc != SN_OK)
        return rc;
    rc = s_status(*r, what, job_id);
    if (rc != SN_OK) {
        freeReplyObject(*r);
        *r = NULL;
    }
    return rc;
}

/* A plain read: @cmd on @key (owned: freed here, already namespaced) followed by @nextra
 * (at most 2) more arguments. sn_redis_cmd's code, with the reply in *r (caller frees) on
 * SN_OK. */
static sn_rc_t s_read(sn_ledger_t *self, const char *cmd, char *key, int nextra, const char **extra,
                      redisReply **r)
{
    SN_ASSERT(nextra >= 0 && nextra <= 2);
    const char *argv[4] = {cmd, key};
    for (int i = 0; i < nextra; i++)
        argv[2 + i] = extra[i];
    *r = NULL;
    sn_rc_t rc = sn_redis_cmd(self->redis, SN_REDIS_MAIN, 0, r, 2 + nextra, argv, NULL);
    free(key);
    return rc;
}

/* s_read of a list or set of ids into *out. */
static sn_rc_t s_read_ids(sn_ledger_t *self, const char *cmd, char *key, int nextra,
                          const char **extra, sn_ledger_ids_t *out)
{
    redisReply *r = NULL;
    sn_rc_t rc = s_read(self, cmd, key, nextra, extra, &r);
    if (rc != SN_OK)
        return rc;
    rc = s_ids_from_reply(r, out);
    freeReplyObject(r);
    return rc;
}
