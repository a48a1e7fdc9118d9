/* The journal: atomic state-plus-event writes through one Redis Function, the outbox
 * publish after Redis answered, age trimming, and a reader thread that replays from a
 * cursor and follows the stream live (or shares it through a consumer group). */
#include "sentinel/sn_journal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_id.h"
#include "sentinel/sn_leader.h"
#include "sentinel/sn_log.h"

/* Library "sentinel_journal". Validation runs completely before the first write: a Lua
 * error half-way through would leave the earlier writes in place (scripts have no
 * rollback), so arity, numbers and key types (tracked through the batch) are checked
 * first. The fence check is sn_leader's own (the lock value layout is sn_leader's). */
const char sn_journal_lua[] = SN_LEADER_LUA_FENCE_OK
    "local OPS = {\n"
    "  SET = {n = 2, result = 'string', px = 2},\n"
    "  DEL = {n = 0, result = 'none'},\n"
    "  HSET = {n = 2, want = 'hash', result = 'hash'},\n"
    "  HDEL = {n = 1, want = 'hash'},\n"
    "  ZADD = {n = 2, want = 'zset', result = 'zset', score = 1},\n"
    "  ZREM = {n = 1, want = 'zset'},\n"
    "  SADD = {n = 1, want = 'set', result = 'set'},\n"
    "  SREM = {n = 1, want = 'set'},\n"
    "  LPUSH = {n = 1, want = 'list', result = 'list'},\n"
    "  LTRIM = {n = 2, want = 'list', ints = true},\n"
    "  PEXPIRE = {n = 1, px = 1},\n"
    "}\n"
    "local function bad(msg) return redis.error_reply('SNBAD ' .. msg) end\n"
    "local function is_uint(s) return string.match(s, '^%d+$') ~= nil and #s <= 15 end\n"
    "local function is_int(s) return string.match(s, '^%-?%d+$') ~= nil and #s <= 15 end\n"
    /* One event's part of ARGV from args[i]: nops op... type env. Op key indices are
     * 1-based among keys[kbase .. kbase + nk - 1]; @limit is the last index ops may
     * use (the final type and env always follow). Returns the event and the index after
     * it, or nil and the reason. Nothing is written here. */
    "local function parse_event(keys, args, kbase, nk, i, limit, type_of, types)\n"
    "  if not args[i] or not is_uint(args[i]) then return nil, 'nops' end\n"
    "  local nops = tonumber(args[i])\n"
    "  i = i + 1\n"
    "  local plan = {}\n"
    "  for n = 1, nops do\n"
    "    if i + 1 > limit then return nil, 'op ' .. n .. ' truncated' end\n"
    "    local name = args[i]\n"
    "    local spec = OPS[name]\n"
    "    if not spec then return nil, 'unknown op ' .. name end\n"
    "    if not is_uint(args[i + 1]) then return nil, 'op ' .. n .. ' key index' end\n"
    "    local idx = tonumber(args[i + 1])\n"
    "    local k = keys[kbase + idx - 1]\n"
    "    if idx < 1 or idx > nk or not k then return nil, 'op ' .. n .. ' key' end\n"
    "    if i + 1 + spec.n > limit then return nil, 'op ' .. n .. ' truncated' end\n"
    "    local a = {}\n"
    "    for j = 1, spec.n do a[j] = args[i + 1 + j] end\n"
    "    if spec.px and not is_uint(a[spec.px]) then return nil, 'op ' .. n .. ' ms' end\n"
    "    if spec.score then\n"
    "      local s = tonumber(a[1])\n"
    "      if s == nil or s ~= s then return nil, 'op ' .. n .. ' score' end\n"
    "    end\n"
    "    if spec.ints and not (is_int(a[1]) and is_int(a[2])) then\n"
    "      return nil, 'op ' .. n .. ' range'\n"
    "    end\n"
    "    if spec.want then\n"
    "      local t = type_of(k)\n"
    "      if t ~= 'none' and t ~= spec.want then\n"
    "        return nil, 'op ' .. n .. ' ' .. name .. ' on a ' .. t\n"
    "      end\n"
    "    end\n"
    "    if spec.result then types[k] = spec.result end\n"
    "    plan[n] = {name, k, a}\n"
    "    i = i + 2 + spec.n\n"
    "  end\n"
    "  local ev_type, env = args[i], args[i + 1]\n"
    "  if not ev_type or not env or ev_type == '' or #ev_type > 255 or env == '' then\n"
    "    return nil, 'event'\n"
    "  end\n"
    "  return {plan = plan, type = ev_type, env = env}, i + 2\n"
    "end\n"
    /* Checks max_len and the fence (ARGV 1, 2); returns the key base after the events
     * key (and the lock), the type cache, or nil and an error reply. */
    "local function prologue(keys, args)\n"
    "  if not is_uint(args[1]) then return nil, bad('max_len') end\n"
    "  local fence = args[2]\n"
    "  local base = 2\n"
    "  if fence ~= '' then\n"
    "    if not string.match(fence, '^%d+$') or #fence > 20 or #keys < 2 then\n"
    "      return nil, bad('fence')\n"
    "    end\n"
    "    if redis.call('TYPE', keys[2])['ok'] ~= 'string' or not sn_fence_ok(keys[2], fence) then\n"
    "      return nil, redis.error_reply('SNFENCE fence ' .. fence .. ' is not current')\n"
    "    end\n"
    "    base = 3\n"
    "  end\n"
    "  local types = {}\n"
    "  local function type_of(k)\n"
    "    if types[k] == nil then types[k] = redis.call('TYPE', k)['ok'] end\n"
    "    return types[k]\n"
    "  end\n"
    "  local et = type_of(keys[1])\n"
    "  if et ~= 'stream' and et ~= 'none' then return nil, bad('events is a ' .. et) end\n"
    "  return base, type_of, types\n"
    "end\n"
    "local function apply(keys, max_len, ev)\n"
    "  for n = 1, #ev.plan do\n"
    "    local name, k, a = ev.plan[n][1], ev.plan[n][2], ev.plan[n][3]\n"
    "    if name == 'SET' then\n"
    "      if a[2] ~= '0' then redis.call('SET', k, a[1], 'PX', a[2])\n"
    "      else redis.call('SET', k, a[1]) end\n"
    "    elseif name == 'DEL' then redis.call('DEL', k)\n"
    "    else redis.call(name, k, unpack(a)) end\n"
    "  end\n"
    "  if max_len ~= '0' then\n"
    "    return redis.call('XADD', keys[1], 'MAXLEN', '~', max_len, '*', 'type', ev.type,\n"
    "                      'env', ev.env)\n"
    "  end\n"
    "  return redis.call('XADD', keys[1], '*', 'type', ev.type, 'env', ev.env)\n"
    "end\n"
    /* KEYS events [lock] opkeys...; ARGV max_len fence|'' nops op... type env -> id */
    "local function commit(keys, args)\n"
    "  local nargs = #args\n"
    "  if nargs < 5 or #keys < 1 then return bad('too few arguments') end\n"
    "  local base, type_of, types = prologue(keys, args)\n"
    "  if not base then return type_of end\n"
    "  local ev, nxt = parse_event(keys, args, base, #keys - base + 1, 3, nargs - 2, type_of,\n"
    "                              types)\n"
    "  if not ev then return bad(nxt) end\n"
    "  if nxt ~= nargs + 1 then return bad('trailing arguments') end\n"
    "  return apply(keys, args[1], ev)\n"
    "end\n"
    /* KEYS events [lock] (opkeys of event 1) (opkeys of event 2)...;
     * ARGV max_len fence|'' nevents (nkeys nops op... type env) x nevents -> {id...}.
     * Every event is validated (types tracked across the whole batch) before the first
     * write, so a bad event anywhere writes nothing. */
    "local function commit_batch(keys, args)\n"
    "  local nargs = #args\n"
    "  if nargs < 7 or #keys < 1 then return bad('too few arguments') end\n"
    "  local base, type_of, types = prologue(keys, args)\n"
    "  if not base then return type_of end\n"
    "  if not is_uint(args[3]) then return bad('nevents') end\n"
    "  local nevents = tonumber(args[3])\n"
    "  if nevents < 1 or nevents * 4 > nargs - 3 then return bad('nevents') end\n"
    "  local evs = {}\n"
    "  local i, kbase = 4, base\n"
    "  for e = 1, nevents do\n"
    "    if not args[i] or not is_uint(args[i]) then return bad('event ' .. e .. ' nkeys') end\n"
    "    local nk = tonumber(args[i])\n"
    "    if kbase + nk - 1 > #keys then return bad('event ' .. e .. ' keys') end\n"
    "    local ev, nxt = parse_event(keys, args, kbase, nk, i + 1, nargs - 2, type_of, types)\n"
    "    if not ev then return bad('event ' .. e .. ': ' .. nxt) end\n"
    "    evs[e] = ev\n"
    "    i, kbase = nxt, kbase + nk\n"
    "  end\n"
    "  if i ~= nargs + 1 then return bad('trailing arguments') end\n"
    "  if kbase ~= #keys + 1 then return bad('trailing keys') end\n"
    "  local ids = {}\n"
    "  for e = 1, nevents do ids[e] = apply(keys, args[1], evs[e]) end\n"
    "  return ids\n"
    "end\n"
    "local function trim(keys, args)\n"
    "  if #keys ~= 1 or #args ~= 1 or not is_uint(args[1]) then return bad('usage') end\n"
    "  local t = redis.call('TYPE', keys[1])['ok']\n"
    "  if t == 'none' then return 0 end\n"
    "  if t ~= 'stream' then return bad('events is a ' .. t) end\n"
    "  local now = redis.call('TIME')\n"
    "  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)\n"
    "  local min = now_ms - tonumber(args[1])\n"
    "  if min <= 0 then return 0 end\n"
    "  return redis.call('XTRIM', keys[1], 'MINID', string.format('%.0f', min) .. '-0')\n"
    "end\n"
    "redis.register_function('sentinel_journal_commit', commit)\n"
    "redis.register_function('sentinel_journal_commit_batch', commit_batch)\n"
    "redis.register_function('sentinel_journal_trim', trim)\n";

#define S_TYPE_MAX 255

struct sn_journal {
    sn_redis_t *redis;
    sn_bus_pub_t *bus;
    sn_source_t *source;
    int64_t max_len;
    int timeout_ms;
    sn_journal_written_fn *on_written;
    void *on_written_arg;
    sn_journal_stats_t stats;
};

/* A growable list of binary-safe strings. */
typedef struct {
    char **items;
    size_t *lens;
    size_t count;
} s_strv_t;

struct sn_journal_ops {
    s_strv_t keys; /* distinct op keys, relative to the namespace */
    s_strv_t args; /* name, key index (1-based among op keys), arguments... per op */
    size_t count;
};

static void s_strv_push(s_strv_t *v, const void *data, size_t len);
static void s_strv_fini(s_strv_t *v);
static size_t s_ops_key(sn_journal_ops_t *self, const char *key);
static void s_ops_begin(sn_journal_ops_t *self, const char *name, const char *key);
static uint8_t *s_stamp_pack(sn_journal_t *self, sn_envelope_t *env, bool is_fenced, uint64_t fence,
                             sn_journal_result_t *out, size_t *len);
static sn_rc_t s_fcall_publish(sn_journal_t *self, const char *fn, int nkeys, const char **keys,
                               int nargs, const char **args, const size_t *arglens,
                               const char *type, const uint8_t *env, size_t env_len,
                               sn_journal_result_t *out);
static sn_rc_t s_refused(sn_journal_t *self, const redisReply *r, const char *fn, const char *type);
static bool s_is_stream_id(const redisReply *r);
static void s_written(sn_journal_t *self, const char *type, const uint8_t *env, size_t env_len,
                      sn_journal_result_t *out);

/* ---- writing ----------------------------------------------------------------------- */

sn_journal_t *sn_journal_new(const sn_journal_opts_t *opts)
{
    SN_ASSERT(opts && opts->redis && opts->source);
    sn_journal_t *self = sn_calloc(1, sizeof *self);
    self->redis = opts->redis;
    self->bus = opts->bus;
    self->source = opts->source;
    self->max_len = opts->max_len > 0 ? opts->max_len : SN_JOURNAL_DEFAULT_MAX_LEN;
    self->timeout_ms = opts->timeout_ms;
    self->on_written = opts->on_written;
    self->on_written_arg = opts->on_written_arg;
    sn_redis_add_library(self->redis, SN_JOURNAL_LIBRARY, sn_journal_lua);
    return self;
}

void sn_journal_destroy(sn_journal_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free(*self_p);
    *self_p = NULL;
}

sn_journal_ops_t *sn_journal_ops_new(void)
{
    return sn_calloc(1, sizeof(sn_journal_ops_t));
}

void sn_journal_ops_destroy(sn_journal_ops_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    s_strv_fini(&(*self_p)->keys);
    s_strv_fini(&(*self_p)->args);
    free(*self_p);
    *self_p = NULL;
}

void sn_journal_ops_set(sn_journal_ops_t *self, const char *key, const void *value, size_t len,
                        int64_t px_ms)
{
    SN_ASSERT(px_ms >= 0);
    char px[24];
    snprintf(px, sizeof px, "%" PRId64, px_ms);
    s_ops_begin(self, "SET", key);
    s_strv_push(&self->args, value, len);
    s_strv_push(&self->args, px, strlen(px));
}

void sn_journal_ops_del(sn_journal_ops_t *self, const char *key)
{
    s_ops_begin(self, "DEL", key);
}

void sn_journal_ops_hset(sn_journal_ops_t *self, const char *key, const char *field,
                         const void *value, size_t len)
{
    s_ops_begin(self, "HSET", key);
    s_strv_push(&self->args, field, strlen(field));
    s_strv_push(&self->args, value, len);
}

void sn_journal_ops_hdel(sn_journal_ops_t *self, const char *key, const char *field)
{
    s_ops_begin(self, "HDEL", key);
    s_strv_push(&self->args, field, strlen(field));
}

void sn_journal_ops_zadd(sn_journal_ops_t *self, const char *key, double score, const char *member)
{
    char s[40];
    snprintf(s, sizeof s, "%.17g", score);
    s_ops_begin(self, "ZADD", key);
    s_strv_push(&self->args, s, strlen(s));
    s_strv_push(&self->args, member, strlen(member));
}

void sn_journal_ops_zrem(sn_journal_ops_t *self, const char *key, const char *member)
{
    s_ops_begin(self, "ZREM", key);
    s_strv_push(&self->args, member, strlen(member));
}

void sn_journal_ops_sadd(sn_journal_ops_t *self, const char *key, const char *member)
{
    s_ops_begin(self, "SADD", key);
    s_strv_push(&self->args, member, strlen(member));
}

void sn_journal_ops_srem(sn_journal_ops_t *self, const char *key, const char *member)
{
    s_ops_begin(self, "SREM", key);
    s_strv_push(&self->args, member, strlen(member));
}

void sn_journal_ops_lpush(sn_journal_ops_t *self, const char *key, const void *value, size_t len)
{
    s_ops_begin(self, "LPUSH", key);
    s_strv_push(&self->args, value, len);
}

void sn_journal_ops_ltrim(sn_journal_ops_t *self, const char *key, int64_t start, int64_t stop)
{
    char a[24], b[24];
    snprintf(a, sizeof a, "%" PRId64, start);
    snprintf(b, sizeof b, "%" PRId64, stop);
    s_ops_begin(self, "LTRIM", key);
    s_strv_push(&self->args, a, strlen(a));
    s_strv_push(&self->args, b, strlen(b));
}

void sn_journal_ops_pexpire(sn_journal_ops_t *self, const char *key, int64_t ms)
{
    SN_ASSERT(ms >= 0);
    char a[24];
    snprintf(a, sizeof a, "%" PRId64, ms);
    s_ops_begin(self, "PEXPIRE", key);
    s_strv_push(&self->args, a, strlen(a));
}

void sn_journal_ops_raw(sn_journal_ops_t *self, const char *name, const char *key, int argc,
                        const char **argv)
{
    s_ops_begin(self, name, key);
    for (int i = 0; i < argc; i++)
        s_strv_push(&self->args, argv[i], strlen(argv[i]));
}

size_t sn_journal_ops_count(const sn_journal_ops_t *self)
{
    return self ? self->count : 0;
}

sn_rc_t sn_journal_commit(sn_journal_t *self, const sn_journal_ops_t *ops, const char *fence_key,
                          uint64_t fence, sn_envelope_t *env, sn_journal_result_t *out)
{
    SN_ASSERT(self && env);
    sn_journal_result_t local;
    if (!out)
        out = &local;
    if (fence_key && !*fence_key)
        return SN_ERROR;
    size_t env_len = 0;
    uint8_t *bytes = s_stamp_pack(self, env, fence_key != NULL, fence, out, &env_len);
    if (!bytes) {
        self->stats.failed++;
        return SN_ERROR;
    }
    size_t nops = ops ? ops->count : 0;
    size_t nkeys = 1 + (fence_key ? 1 : 0) + (ops ? ops->keys.count : 0);
    size_t nargs = 3 + (ops ? ops->args.count : 0);
    const char **keys = sn_calloc(nkeys, sizeof *keys);
    const char **args = sn_calloc(nargs, sizeof *args);
    size_t *lens = sn_calloc(nargs, sizeof *lens);
    size_t k = 0;
    keys[k++] = SN_JOURNAL_STREAM;
    if (fence_key)
        keys[k++] = fence_key;
    for (size_t i = 0; ops && i < ops->keys.count; i++)
        keys[k++] = ops->keys.items[i];

    char max_len[24], fence_s[24], nops_s[24];
    snprintf(max_len, sizeof max_len, "%" PRId64, self->max_len);
    if (fence_key)
        snprintf(fence_s, sizeof fence_s, "%" PRIu64, fence);
    else
        fence_s[0] = '\0';
    snprintf(nops_s, sizeof nops_s, "%zu", nops);
    size_t a = 0;
    args[a] = max_len;
    lens[a++] = strlen(max_len);
    args[a] = fence_s;
    lens[a++] = strlen(fence_s);
    args[a] = nops_s;
    lens[a++] = strlen(nops_s);
    for (size_t i = 0; ops && i < ops->args.count; i++) {
        args[a] = ops->args.items[i];
        lens[a++] = ops->args.lens[i];
    }
    sn_rc_t rc = s_fcall_publish(self, "sentinel_journal_commit", (int)nkeys, keys, (int)nargs,
                                 args, lens, env->type, bytes, env_len, out);
    free(keys);
    free(args);
    free(lens);
    free(bytes);
    return rc;
}

sn_rc_t sn_journal_commit_batch(sn_journal_t *self, size_t count,
                                const sn_journal_ops_t *const *ops, const char *fence_key,
                                uint64_t fence, sn_envelope_t *const *envs,
                                sn_journal_result_t *results)
{
    SN_ASSERT(self);
    if (count == 0 || count > SN_JOURNAL_BATCH_MAX || !envs || (fence_key && !*fence_key)) {
        sn_warn("journal", "refusing a batch of %zu events (1..%d, envelopes, fence key)", count,
                SN_JOURNAL_BATCH_MAX);
        return SN_ERROR;
    }
    for (size_t i = 0; i < count; i++)
        if (!envs[i]) {
            sn_warn("journal", "refusing a batch with no envelope at %zu", i);
            return SN_ERROR;
        }
    sn_journal_result_t *res = results ? results : sn_calloc(count, sizeof *res);
    uint8_t **bytes = sn_calloc(count, sizeof *bytes);
    size_t *bytes_len = sn_calloc(count, sizeof *bytes_len);
    /* Per event: its op key count and op count as decimal strings. */
    char(*nums)[24] = sn_calloc(2 * count, sizeof *nums);
    const char **keys = NULL, **args = NULL;
    size_t *lens = NULL;
    redisReply *r = NULL;
    sn_rc_t rc = SN_OK;
    size_t nkeys = 1 + (fence_key ? 1 : 0), nargs = 3;
    for (size_t i = 0; i < count; i++) {
        bytes[i] = s_stamp_pack(self, envs[i], fence_key != NULL, fence, &res[i], &bytes_len[i]);
        if (!bytes[i]) {
            self->stats.failed++;
            rc = SN_ERROR;
            goto out;
        }
        const sn_journal_ops_t *o = ops ? ops[i] : NULL;
        nkeys += o ? o->keys.count : 0;
        nargs += 4 + (o ? o->args.count : 0);
    }
    keys = sn_calloc(nkeys, sizeof *keys);
    args = sn_calloc(nargs, sizeof *args);
    lens = sn_calloc(nargs, sizeof *lens);
    size_t k = 0, a = 0;
    keys[k++] = SN_JOURNAL_STREAM;
    if (fence_key)
        keys[k++] = fence_key;
    char max_len[24], fence_s[24], nevents[24];
    snprintf(max_len, sizeof max_len, "%" PRId64, self->max_len);
    if (fence_key)
        snprintf(fence_s, sizeof fence_s, "%" PRIu64, fence);
    else
        fence_s[0] = '\0';
    snprintf(nevents, sizeof nevents, "%zu", count);
#define S_ARG(p, n) (args[a] = (p), lens[a] = (n), a++)
    S_ARG(max_len, strlen(max_len));
    S_ARG(fence_s, strlen(fence_s));
    S_ARG(nevents, strlen(nevents));
    for (size_t i = 0; i < count; i++) {
        const sn_journal_ops_t *o = ops ? ops[i] : NULL;
        snprintf(nums[2 * i], sizeof nums[0], "%zu", o ? o->keys.count : 0);
        snprintf(nums[2 * i + 1], sizeof nums[0], "%zu", o ? o->count : 0);
        S_ARG(nums[2 * i], strlen(nums[2 * i]));
        S_ARG(nums[2 * i + 1], strlen(nums[2 * i + 1]));
        for (size_t j = 0; o && j < o->keys.count; j++)
            keys[k++] = o->keys.items[j];
        for (size_t j = 0; o && j < o->args.count; j++)
            S_ARG(o->args.items[j], o->args.lens[j]);
        S_ARG(envs[i]->type, strlen(envs[i]->type));
        S_ARG((const char *)bytes[i], bytes_len[i]);
    }
#undef S_ARG
    SN_ASSERT(k == nkeys && a == nargs);
    rc = sn_redis_fcall(self->redis, SN_REDIS_MAIN, self->timeout_ms, &r,
                        "sentinel_journal_commit_batch", (int)nkeys, keys, (int)nargs, args, lens);
    if (rc != SN_OK) {
        self->stats.failed++;
        r = NULL;
        goto out; /* logged by sn_redis */
    }
    if (r->type == REDIS_REPLY_ERROR) {
        rc = s_refused(self, r, "sentinel_journal_commit_batch", envs[0]->type);
        goto out;
    }
    bool is_ok = r->type == REDIS_REPLY_ARRAY && r->elements == count;
    for (size_t i = 0; is_ok && i < count; i++)
        is_ok = s_is_stream_id(r->element[i]);
    if (!is_ok) {
        sn_error("journal", "batch answered without %zu stream ids: reply_type=%d", count, r->type);
        self->stats.failed++;
        rc = SN_ERROR;
        goto out;
    }
    /* Written, all of them: only now does anything reach the bus, in order. */
    for (size_t i = 0; i < count; i++) {
        memcpy(res[i].stream_id, r->element[i]->str, r->element[i]->len + 1);
        s_written(self, envs[i]->type, bytes[i], bytes_len[i], &res[i]);
    }
out:
    if (r)
        freeReplyObject(r);
    for (size_t i = 0; i < count; i++)
        free(bytes[i]);
    free(bytes);
    free(bytes_len);
    free(nums);
    free(keys);
    free(args);
    free(lens);
    if (res != results)
        free(res);
    return rc;
}

sn_rc_t sn_journal_commit_fcall(sn_journal_t *self, const char *fn, int nkeys, const char **keys,
                                int nargs, const char **args, const size_t *arglens,
                                sn_envelope_t *env, sn_journal_result_t *out)
{
    SN_ASSERT(self && fn && env && nkeys >= 0 && nargs >= 0);
    sn_journal_result_t local;
    if (!out)
        out = &local;
    size_t env_len = 0;
    uint8_t *bytes = s_stamp_pack(self, env, false, 0, out, &env_len);
    if (!bytes) {
        self->stats.failed++;
        return SN_ERROR;
    }
    sn_rc_t rc = s_fcall_publish(self, fn, nkeys, keys, nargs, args, arglens, env->type, bytes,
                                 env_len, out);
    free(bytes);
    return rc;
}

sn_rc_t sn_journal_trim(sn_journal_t *self, int64_t max_age_s, int64_t *trimmed)
{
    SN_ASSERT(self && max_age_s >= 0);
    char age[24];
    snprintf(age, sizeof age, "%" PRId64, max_age_s * 1000);
    const char *keys[] = {SN_JOURNAL_STREAM};
    const char *args[] = {age};
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_fcall(self->redis, SN_REDIS_MAIN, self->timeout_ms, &r,
                                "sentinel_journal_trim", 1, keys, 1, args, NULL);
    if (rc != SN_OK)
        return rc;
    if (r->type == REDIS_REPLY_INTEGER) {
        if (trimmed)
            *trimmed = r->integer;
        if (r->integer > 0)
            sn_info("journal", "trimmed entries older than %" PRId64 " s: count=%lld", max_age_s,
                    r->integer);
    } else {
        rc = r->type == REDIS_REPLY_ERROR && sn_redis_reply_is_transient(r) ? SN_AGAIN : SN_ERROR;
        sn_warn("journal", "trim failed: %s", r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
    }
    freeReplyObject(r);
    return rc;
}

void sn_journal_stats(const sn_journal_t *self, sn_journal_stats_t *out)
{
    *out = self->stats;
}

/* ---- writing helpers --------------------------------------------------------------- */

static void s_strv_push(s_strv_t *v, const void *data, size_t len)
{
    SN_ASSERT(data || len == 0);
    v->items = sn_realloc(v->items, (v->count + 1) * sizeof *v->items);
    v->lens = sn_realloc(v->lens, (v->count + 1) * sizeof *v->lens);
    char *copy = sn_malloc(len + 1);
    if (len)
        memcpy(copy, data, len);
    copy[len] = '\0';
    v->items[v->count] = copy;
    v->lens[v->count] = len;
    v->count++;
}

static void s_strv_fini(s_strv_t *v)
{
    for (size_t i = 0; i < v->count; i++)
        free(v->items[i]);
    free(v->items);
    free(v->lens);
    memset(v, 0, sizeof *v);
}

/* The 1-based index of @key among the op keys, added if new. */
static size_t s_ops_key(sn_journal_ops_t *self, const char *key)
{
    for (size_t i = 0; i < self->keys.count; i++)
        if (strcmp(self->keys.items[i], key) == 0)
            return i + 1;
    s_strv_push(&self->keys, key, strlen(key));
    return self->keys.count;
}

static void s_ops_begin(sn_journal_ops_t *self, const char *name, const char *key)
{
    SN_ASSERT(self && name && key && *key);
    char idx[24];
    snprintf(idx, sizeof idx, "%zu", s_ops_key(self, key));
    s_strv_push(&self->args, name, strlen(name));
    s_strv_push(&self->args, idx, strlen(idx));
    self->count++;
}

/* Stamps the attributes the journal owns and packs. The pointers set here (id, source)
 * refer to storage that ends with the call, so they are put back before returning. */
static uint8_t *s_stamp_pack(sn_journal_t *self, sn_envelope_t *env, bool is_fenced, uint64_t fence,
                             sn_journal_result_t *out, size_t *len)
{
    memset(out, 0, sizeof *out);
    if (!env->type || !*env->type || strlen(env->type) > S_TYPE_MAX) {
        sn_warn("journal", "refusing an event without a valid type");
        return NULL;
    }
    char *old_id = env->id;
    char *old_source = env->source;
    if (env->id && sn_id_is_valid(env->id))
        memcpy(out->event_id, env->id, SN_ID_LEN + 1);
    else
        sn_id_new(out->event_id);
    env->id = out->event_id;
    env->source = self->source->name;
    if (env->time_unix_ms == 0)
        env->time_unix_ms = sn_wall_ms();
    env->incarnation = self->source->incarnation;
    env->seq = sn_source_next_seq(self->source);
    if (is_fenced)
        env->fence = fence;
    out->seq = env->seq;
    size_t n = sentinel__v1__envelope__get_packed_size(env);
    uint8_t *bytes = NULL;
    if (n <= SN_MAX_EVENT_BYTES)
        bytes = sn_envelope_pack(env, len);
    else
        sn_warn("journal", "refusing an event of %zu bytes: type=%s", n, env->type);
    env->id = old_id;
    env->source = old_source;
    return bytes;
}

/* FCALL with the type and envelope appended, map the reply, then publish. */
static sn_rc_t s_fcall_publish(sn_journal_t *self, const char *fn, int nkeys, const char **keys,
                               int nargs, const char **args, const size_t *arglens,
                               const char *type, const uint8_t *env, size_t env_len,
                               sn_journal_result_t *out)
{
    int total = nargs + 2;
    const char **argv = sn_calloc((size_t)total, sizeof *argv);
    size_t *lens = sn_calloc((size_t)total, sizeof *lens);
    for (int i = 0; i < nargs; i++) {
        argv[i] = args[i];
        lens[i] = arglens ? arglens[i] : strlen(args[i]);
    }
    argv[nargs] = type;
    lens[nargs] = strlen(type);
    argv[nargs + 1] = (const char *)env;
    lens[nargs + 1] = env_len;
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_fcall(self->redis, SN_REDIS_MAIN, self->timeout_ms, &r, fn, nkeys, keys,
                                total, argv, lens);
    free(argv);
    free(lens);
    if (rc != SN_OK) {
        self->stats.failed++;
        return rc; /* logged by sn_redis */
    }
    if (r->type == REDIS_REPLY_ERROR) {
        rc = s_refused(self, r, fn, type);
        freeReplyObject(r);
        return rc;
    }
    if (!s_is_stream_id(r)) {
        sn_error("journal", "write answered without a stream id: fn=%s type=%s reply_type=%d", fn,
                 type, r->type);
        self->stats.failed++;
        freeReplyObject(r);
        return SN_ERROR;
    }
    memcpy(out->stream_id, r->str, r->len + 1);
    freeReplyObject(r);
    s_written(self, type, env, env_len, out);
    return SN_OK;
}

/* An error reply of a journal write: SNFENCE -> SN_DECLINED, else SN_ERROR or SN_AGAIN. */
static sn_rc_t s_refused(sn_journal_t *self, const redisReply *r, const char *fn, const char *type)
{
    if (strncmp(r->str, "SNFENCE", 7) == 0) {
        self->stats.declined++;
        sn_info("journal", "fenced write refused: fn=%s type=%s: %s", fn, type, r->str);
        return SN_DECLINED;
    }
    self->stats.failed++;
    sn_warn("journal", "write refused: fn=%s type=%s: %s", fn, type, r->str);
    return sn_redis_reply_is_transient(r) ? SN_AGAIN : SN_ERROR;
}

static bool s_is_stream_id(const redisReply *r)
{
    return (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) &&
           r->len < SN_JOURNAL_ID_MAX && sn_journal_id_parse(r->str, NULL, NULL);
}

/* After Redis acknowledged the write of one event: count, tell on_written, publish. */
static void s_written(sn_journal_t *self, const char *type, const uint8_t *env, size_t env_len,
                      sn_journal_result_t *out)
{
    self->stats.committed++;
    if (self->on_written)
        self->on_written(self->on_written_arg, out->stream_id);
    if (self->bus) {
        if (sn_bus_pub_send(self->bus, type, env, env_len) == SN_OK) {
            out->is_published = true;
            self->stats.published++;
        } else {
            self->stats.publish_failed++;
        }
    }
}

/* ---- ids --------------------------------------------------------------------------- */

bool sn_journal_id_parse(const char *id, uint64_t *ms, uint64_t *seq)
{
    if (!id || !*id)
        return false;
    char *end = NULL;
    errno = 0;
    if (*id < '0' || *id > '9')
        return false;
    unsigned long long m = strtoull(id, &end, 10);
    if (errno)
        return false;
    unsigned long long s = 0;
    if (*end == '-') {
        const char *p = end + 1;
        if (*p < '0' || *p > '9')
            return false;
        s = strtoull(p, &end, 10);
        if (errno)
            return false;
    }
    if (*end != '\0')
        return false;
    if (ms)
        *ms = m;
    if (seq)
        *seq = s;
    return true;
}

int sn_journal_id_cmp(const char *a, const char *b)
{
    uint64_t am = 0, as = 0, bm = 0, bs = 0;
    bool ok_a = sn_journal_id_parse(a, &am, &as);
    bool ok_b = sn_journal_id_parse(b, &bm, &bs);
    SN_ASSERT(ok_a && ok_b);
    if (am != bm)
        return am < bm ? -1 : 1;
    if (as != bs)
        return as < bs ? -1 : 1;
    return 0;
}

/* ---- reading ----------------------------------------------------------------------- */

/* What the reader thread works from (owned by the reader, read-only in the thread
 * except the cursor). */
typedef struct {
    char *unix_path, *host, *ns, *name;
    int port, timeout_ms;
    char cursor[SN_JOURNAL_ID_MAX]; /* "$" until resolved */
    int batch, block_ms, claim_idle_ms;
    char *group, *consumer;
} s_reader_cfg_t;

struct sn_journal_reader {
    s_reader_cfg_t cfg;
    zactor_t *actor;
    sn_journal_reader_stats_t stats;
    int64_t malformed_logged_ms;
};

/* The thread's working state. */
typedef struct {
    s_reader_cfg_t *cfg;
    zsock_t *pipe;
    sn_redis_conn_t *conn;
    char *key;
    bool is_terminated;
    bool needs_prepare;
    bool is_pending_phase;
    char pending_cursor[SN_JOURNAL_ID_MAX];
    char claim_cursor[SN_JOURNAL_ID_MAX];
    char gap_reported_for[SN_JOURNAL_ID_MAX];
    int64_t next_claim_ms;
} s_reader_t;

static void s_reader_actor(zsock_t *pipe, void *arg);
static bool s_cursor_valid(const char *c);

sn_journal_reader_t *sn_journal_reader_new(const sn_journal_reader_opts_t *opts)
{
    SN_ASSERT(opts && opts->redis);
    const char *cursor = opts->cursor ? opts->cursor : "$";
    if (!s_cursor_valid(cursor)) {
        sn_error("journal", "bad reader cursor: %s", cursor);
        return NULL;
    }
    if ((opts->group != NULL) != (opts->consumer != NULL) ||
        (opts->group && (!*opts->group || !*opts->consumer))) {
        sn_error("journal", "a consumer group needs both a group and a consumer name");
        return NULL;
    }
    if (!opts->redis->unix_path && !opts->redis->host) {
        sn_error("journal", "reader needs a Redis address");
        return NULL;
    }
    sn_journal_reader_t *self = sn_calloc(1, sizeof *self);
    s_reader_cfg_t *c = &self->cfg;
    c->unix_path = opts->redis->unix_path ? sn_strdup(opts->redis->unix_path) : NULL;
    c->host = opts->redis->host ? sn_strdup(opts->redis->host) : NULL;
    c->ns = sn_strdup(opts->redis->namespace_ ? opts->redis->namespace_ : "sentinel:");
    c->name = sn_strdup(opts->redis->name ? opts->redis->name : "journal-reader");
    c->port = opts->redis->port;
    c->timeout_ms = opts->redis->timeout_ms > 0 ? opts->redis->timeout_ms : 1000;
    if (strcmp(cursor, "0") == 0)
        cursor = "0-0";
    sn_strlcpy(c->cursor, cursor, sizeof c->cursor);
    c->batch = opts->batch > 0 ? opts->batch : 100;
    c->block_ms = opts->block_ms > 0 ? opts->block_ms : 500;
    c->claim_idle_ms = opts->claim_idle_ms > 0 ? opts->claim_idle_ms : 30000;
    c->group = opts->group ? sn_strdup(opts->group) : NULL;
    c->consumer = opts->consumer ? sn_strdup(opts->consumer) : NULL;
    self->actor = zactor_new(s_reader_actor, c);
    SN_ASSERT(self->actor);
    return self;
}

void sn_journal_reader_destroy(sn_journal_reader_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_journal_reader_t *self = *self_p;
    zactor_destroy(&self->actor);
    s_reader_cfg_t *c = &self->cfg;
    free(c->unix_path);
    free(c->host);
    free(c->ns);
    free(c->name);
    free(c->group);
    free(c->consumer);
    free(self);
    *self_p = NULL;
}

zsock_t *sn_journal_reader_sock(sn_journal_reader_t *self)
{
    return zactor_sock(self->actor);
}

void sn_journal_entry_fini(sn_journal_entry_t *entry)
{
    if (!entry)
        return;
    free(entry->type);
    free(entry->raw);
    sn_envelope_free(&entry->env);
    memset(entry, 0, sizeof *entry);
}

/* A heap envelope (freed with sn_envelope_free) carrying a Gap body. */
static sn_envelope_t *s_gap_envelope(const char *requested, const char *first, uint64_t missed)
{
    char id[SN_ID_LEN + 1];
    sn_id_new(id);
    Sentinel__V1__Gap gap = SENTINEL__V1__GAP__INIT;
    gap.requested_id = (char *)requested;
    gap.first_id = (char *)first;
    gap.missed_at_least = missed;
    sn_envelope_t env;
    sentinel__v1__envelope__init(&env);
    env.id = id;
    env.source = "sentinel/journal/reader";
    env.type = SN_JOURNAL_GAP_TYPE;
    env.time_unix_ms = sn_wall_ms();
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_GAP;
    env.gap = &gap;
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&env, &len);
    sn_envelope_t *out = sn_envelope_unpack(bytes, len, SN_MAX_FRAME_BYTES, NULL);
    SN_ASSERT(out);
    free(bytes);
    return out;
}

static char *s_frame_str(zframe_t *f)
{
    return f ? sn_strndup((const char *)zframe_data(f), zframe_size(f)) : sn_strdup("");
}

sn_rc_t sn_journal_reader_next(sn_journal_reader_t *self, int timeout_ms, sn_journal_entry_t *out)
{
    SN_ASSERT(self && out);
    memset(out, 0, sizeof *out);
    void *s = zsock_resolve(zactor_sock(self->actor));
    zmq_pollitem_t item = {.socket = s, .events = ZMQ_POLLIN};
    if (zmq_poll(&item, 1, timeout_ms > 0 ? timeout_ms : 0) <= 0 || !(item.revents & ZMQ_POLLIN))
        return SN_AGAIN;
    zmsg_t *msg = zmsg_recv(zactor_sock(self->actor));
    if (!msg)
        return SN_AGAIN;
    zframe_t *kind = zmsg_first(msg);
    SN_ASSERT(kind && zframe_size(kind) == 1);
    char k = (char)zframe_data(kind)[0];
    if (k == 'G') {
        char *requested = s_frame_str(zmsg_next(msg));
        char *first = s_frame_str(zmsg_next(msg));
        char *missed_s = s_frame_str(zmsg_next(msg));
        int64_t missed = 1;
        if (sn_parse_i64(missed_s, 0, INT64_MAX, &missed) != SN_OK)
            missed = 1;
        out->is_gap = true;
        out->type = sn_strdup(SN_JOURNAL_GAP_TYPE);
        out->env = s_gap_envelope(requested, first, (uint64_t)missed);
        self->stats.gaps++;
        free(requested);
        free(first);
        free(missed_s);
    } else {
        SN_ASSERT(k == 'E');
        zframe_t *id = zmsg_next(msg);
        zframe_t *type = zmsg_next(msg);
        zframe_t *env = zmsg_next(msg);
        zframe_t *flags = zmsg_next(msg);
        SN_ASSERT(id && type && env && flags && zframe_size(id) < SN_JOURNAL_ID_MAX);
        memcpy(out->id, zframe_data(id), zframe_size(id));
        out->id[zframe_size(id)] = '\0';
        out->type = s_frame_str(type);
        out->raw_len = zframe_size(env);
        out->raw = sn_malloc(out->raw_len ? out->raw_len : 1);
        if (out->raw_len)
            memcpy(out->raw, zframe_data(env), out->raw_len);
        out->is_claimed = zframe_size(flags) == 1 && zframe_data(flags)[0] == 'C';
        const char *why = NULL;
        out->env = sn_envelope_unpack(out->raw, out->raw_len, SN_MAX_FRAME_BYTES, &why);
        if (!out->env) {
            self->stats.malformed++;
            int64_t now = sn_mono_ms();
            if (now - self->malformed_logged_ms >= 1000) {
                self->malformed_logged_ms = now;
                sn_warn("journal", "entry with a malformed envelope: id=%s reason=%s", out->id,
                        why);
            }
        }
    }
    self->stats.delivered++;
    zmsg_destroy(&msg);
    return SN_OK;
}

sn_rc_t sn_journal_reader_ack(sn_journal_reader_t *self, const char *id)
{
    SN_ASSERT(self);
    if (!self->cfg.group || !sn_journal_id_parse(id, NULL, NULL))
        return SN_ERROR;
    return zstr_sendx(zactor_sock(self->actor), "ACK", id, NULL) == 0 ? SN_OK : SN_AGAIN;
}

void sn_journal_reader_stats(const sn_journal_reader_t *self, sn_journal_reader_stats_t *out)
{
    *out = self->stats;
}

/* ---- the reader thread ------------------------------------------------------------- */

static bool s_cursor_valid(const char *c)
{
    return strcmp(c, "$") == 0 || (sn_journal_id_parse(c, NULL, NULL) && strlen(c) < 40);
}

/* Runs a command on the thread's connection; SN_AGAIN marks the connection suspect so
 * that the next read starts with a fresh prepare (gap check, group creation). */
static sn_rc_t s_cmd(s_reader_t *r, int timeout_ms, redisReply **reply, int argc, const char **argv)
{
    sn_rc_t rc = sn_redis_conn_cmd(r->conn, timeout_ms, reply, argc, argv, NULL);
    if (rc != SN_OK)
        r->needs_prepare = true;
    return rc;
}

/* Handles commands from the owner without waiting: ACK (XACK now) and $TERM. */
static void s_drain_pipe(s_reader_t *r)
{
    void *p = zsock_resolve(r->pipe);
    for (;;) {
        zmq_pollitem_t item = {.socket = p, .events = ZMQ_POLLIN};
        if (zmq_poll(&item, 1, 0) <= 0)
            return;
        zmsg_t *msg = zmsg_recv(r->pipe);
        if (!msg) {
            r->is_terminated = true;
            return;
        }
        char *cmd = zmsg_popstr(msg);
        if (cmd && strcmp(cmd, "$TERM") == 0) {
            r->is_terminated = true;
        } else if (cmd && strcmp(cmd, "ACK") == 0 && r->cfg->group) {
            char *id = zmsg_popstr(msg);
            const char *argv[] = {"XACK", r->key, r->cfg->group, id};
            redisReply *rep = NULL;
            if (id && s_cmd(r, 0, &rep, 4, argv) == SN_OK) {
                if (rep->type == REDIS_REPLY_ERROR)
                    sn_warn("journal", "XACK %s refused: %s", id, rep->str);
                freeReplyObject(rep);
            } /* else: still pending, reclaimed and delivered again later */
            free(id);
        }
        free(cmd);
        zmsg_destroy(&msg);
    }
}

/* Waits up to @ms for the owner (commands or $TERM), then handles what came. */
static void s_idle(s_reader_t *r, int64_t ms)
{
    if (ms > 0) {
        zmq_pollitem_t item = {.socket = zsock_resolve(r->pipe), .events = ZMQ_POLLIN};
        zmq_poll(&item, 1, (long)ms);
    }
    s_drain_pipe(r);
}

/* Sends one message to the owner, waiting while its queue is full but still obeying
 * $TERM. False if terminated. */
static bool s_send(s_reader_t *r, zmsg_t **msg_p)
{
    void *p = zsock_resolve(r->pipe);
    for (;;) {
        if (r->is_terminated) {
            zmsg_destroy(msg_p);
            return false;
        }
        zmq_pollitem_t item = {.socket = p, .events = ZMQ_POLLIN | ZMQ_POLLOUT};
        zmq_poll(&item, 1, 100);
        if (item.revents & ZMQ_POLLIN)
            s_drain_pipe(r);
        if ((item.revents & ZMQ_POLLOUT) && !r->is_terminated) {
            /* Once the first frame is queued, the others of the message always are. */
            if (zmsg_send(msg_p, r->pipe) == 0)
                return true;
            if (zmq_errno() != EAGAIN && zmq_errno() != EINTR) {
                zmsg_destroy(msg_p);
                r->is_terminated = true;
                return false;
            }
        }
    }
}

static const redisReply *s_map_get(const redisReply *map, const char *name)
{
    if (!map || map->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < map->elements; i += 2) {
        const redisReply *k = map->element[i];
        if ((k->type == REDIS_REPLY_STRING || k->type == REDIS_REPLY_STATUS) &&
            strcmp(k->str, name) == 0)
            return map->element[i + 1];
    }
    return NULL;
}

static const char *s_str(const redisReply *r)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) ? r->str : NULL;
}

/* Plain mode: resolve "$" and check for a gap. Group mode: create the group. */
static sn_rc_t s_prepare(s_reader_t *r)
{
    s_reader_cfg_t *c = r->cfg;
    redisReply *rep = NULL;
    if (c->group) {
        const char *start = strcmp(c->cursor, "$") == 0 ? "$" : c->cursor;
        const char *argv[] = {"XGROUP", "CREATE", r->key, c->group, start, "MKSTREAM"};
        sn_rc_t rc = s_cmd(r, 0, &rep, 6, argv);
        if (rc != SN_OK)
            return rc;
        if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "BUSYGROUP", 9) != 0) {
            sn_warn("journal", "XGROUP CREATE %s %s: %s", r->key, c->group, rep->str);
            rc = SN_AGAIN;
        }
        freeReplyObject(rep);
        return rc;
    }
    const char *argv[] = {"XINFO", "STREAM", r->key};
    sn_rc_t rc = s_cmd(r, 0, &rep, 3, argv);
    if (rc != SN_OK)
        return rc;
    if (rep->type == REDIS_REPLY_ERROR) {
        /* No stream yet: nothing was ever written, so nothing can be missed. */
        if (strcmp(c->cursor, "$") == 0)
            sn_strlcpy(c->cursor, "0-0", sizeof c->cursor);
        freeReplyObject(rep);
        return SN_OK;
    }
    if (strcmp(c->cursor, "$") == 0) {
        const char *last = s_str(s_map_get(rep, "last-generated-id"));
        sn_strlcpy(c->cursor, last && sn_journal_id_parse(last, NULL, NULL) ? last : "0-0",
                   sizeof c->cursor);
        freeReplyObject(rep);
        return SN_OK;
    }
    /* Redis 7.0 records XDEL in max-deleted-entry-id but not trimming, so: a deleted id
     * after the cursor proves a gap; otherwise entries were removed (entries-added >
     * length), the cursor is before the first entry (or the end of an emptied stream)
     * and its own entry is gone: what followed it may have been trimmed too. */
    const char *max_deleted = s_str(s_map_get(rep, "max-deleted-entry-id"));
    const char *last_id = s_str(s_map_get(rep, "last-generated-id"));
    const redisReply *first = s_map_get(rep, "first-entry");
    const char *first_id = first && first->type == REDIS_REPLY_ARRAY && first->elements >= 1
                               ? s_str(first->element[0])
                               : NULL;
    if (first_id && !sn_journal_id_parse(first_id, NULL, NULL))
        first_id = NULL;
    const redisReply *added = s_map_get(rep, "entries-added");
    const redisReply *length = s_map_get(rep, "length");
    long long removed =
        added && length && added->type == REDIS_REPLY_INTEGER && length->type == REDIS_REPLY_INTEGER
            ? added->integer - length->integer
            : 0;
    bool is_origin = strcmp(c->cursor, "0-0") == 0;
    bool is_proven = !is_origin && max_deleted && sn_journal_id_parse(max_deleted, NULL, NULL) &&
                     sn_journal_id_cmp(c->cursor, max_deleted) < 0;
    bool is_possible = false;
    if (!is_origin && removed > 0) {
        if (first_id)
            is_possible = sn_journal_id_cmp(c->cursor, first_id) < 0;
        else if (last_id && sn_journal_id_parse(last_id, NULL, NULL))
            is_possible = sn_journal_id_cmp(c->cursor, last_id) < 0;
    }
    if (is_possible && !is_proven && first_id) {
        const char *argv2[] = {"XRANGE", r->key, c->cursor, c->cursor};
        redisReply *one = NULL;
        if (s_cmd(r, 0, &one, 4, argv2) != SN_OK) {
            freeReplyObject(rep);
            return SN_AGAIN;
        }
        if (one->type == REDIS_REPLY_ARRAY && one->elements > 0)
            is_possible = false; /* the cursor's entry is still there: nothing after it went */
        freeReplyObject(one);
    }
    bool is_gap = (is_proven || is_possible) && strcmp(r->gap_reported_for, c->cursor) != 0;
    if (is_gap) {
        sn_strlcpy(r->gap_reported_for, c->cursor, sizeof r->gap_reported_for);
        sn_warn("journal", "cursor %s is older than the journal's retention: first=%s", c->cursor,
                first_id ? first_id : "(empty)");
        zmsg_t *m = zmsg_new();
        zmsg_addmem(m, "G", 1);
        zmsg_addstr(m, c->cursor);
        zmsg_addstr(m, first_id ? first_id : "");
        zmsg_addstr(m, is_proven ? "1" : "0");
        freeReplyObject(rep);
        return s_send(r, &m) ? SN_OK : SN_AGAIN;
    }
    freeReplyObject(rep);
    return SN_OK;
}

/* Sends the entries of one XREAD/XREADGROUP/XAUTOCLAIM entry list; the cursor follows.
 * Entries whose fields are gone (deleted while pending) are acknowledged and skipped.
 * Returns the number delivered, or -1 if terminated. */
static int s_deliver(s_reader_t *r, const redisReply *entries, bool is_claimed, char *last_id)
{
    int n = 0;
    for (size_t i = 0; entries && entries->type == REDIS_REPLY_ARRAY && i < entries->elements;
         i++) {
        const redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2)
            continue;
        const char *id = s_str(e->element[0]);
        if (!id || !sn_journal_id_parse(id, NULL, NULL) || strlen(id) >= SN_JOURNAL_ID_MAX)
            continue;
        if (last_id)
            sn_strlcpy(last_id, id, SN_JOURNAL_ID_MAX);
        const redisReply *fields = e->element[1];
        if (fields->type != REDIS_REPLY_ARRAY) {
            if (r->cfg->group) {
                const char *argv[] = {"XACK", r->key, r->cfg->group, id};
                redisReply *rep = NULL;
                if (s_cmd(r, 0, &rep, 4, argv) == SN_OK)
                    freeReplyObject(rep);
            }
            continue;
        }
        const redisReply *type = s_map_get(fields, "type");
        const redisReply *env = s_map_get(fields, "env");
        zmsg_t *m = zmsg_new();
        zmsg_addmem(m, "E", 1);
        zmsg_addstr(m, id);
        zmsg_addmem(m, type && type->type == REDIS_REPLY_STRING ? type->str : "",
                    type && type->type == REDIS_REPLY_STRING ? type->len : 0);
        zmsg_addmem(m, env && env->type == REDIS_REPLY_STRING ? env->str : "",
                    env && env->type == REDIS_REPLY_STRING ? env->len : 0);
        zmsg_addmem(m, is_claimed ? "C" : "-", 1);
        if (!s_send(r, &m))
            return -1;
        n++;
    }
    return n;
}

/* Group mode: take over entries idle too long at any consumer (a dead replica). */
static void s_autoclaim(s_reader_t *r)
{
    s_reader_cfg_t *c = r->cfg;
    char idle[24], count[24];
    snprintf(idle, sizeof idle, "%d", c->claim_idle_ms);
    snprintf(count, sizeof count, "%d", c->batch);
    const char *argv[] = {"XAUTOCLAIM", r->key,          c->group, c->consumer,
                          idle,         r->claim_cursor, "COUNT",  count};
    redisReply *rep = NULL;
    if (s_cmd(r, 0, &rep, 8, argv) != SN_OK)
        return;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2) {
        const char *next = s_str(rep->element[0]);
        int n = s_deliver(r, rep->element[1], true, NULL);
        if (n > 0)
            sn_info("journal", "reclaimed %d idle entries: group=%s consumer=%s", n, c->group,
                    c->consumer);
        bool more = next && strcmp(next, "0-0") != 0 && strlen(next) < SN_JOURNAL_ID_MAX;
        sn_strlcpy(r->claim_cursor, more ? next : "0-0", sizeof r->claim_cursor);
        /* A scan that has not wrapped around continues at once. */
        r->next_claim_ms = sn_mono_ms() + (more ? 0 : c->claim_idle_ms / 2);
    } else {
        if (rep->type == REDIS_REPLY_ERROR)
            sn_warn("journal", "XAUTOCLAIM: %s", rep->str);
        r->next_claim_ms = sn_mono_ms() + c->claim_idle_ms / 2;
    }
    freeReplyObject(rep);
}

/* One read. Plain: XREAD from the cursor. Group: own pending entries first, then new. */
static void s_read(s_reader_t *r)
{
    s_reader_cfg_t *c = r->cfg;
    char count[24], block[24];
    snprintf(count, sizeof count, "%d", c->batch);
    snprintf(block, sizeof block, "%d", c->block_ms);
    int timeout = c->block_ms + c->timeout_ms;
    redisReply *rep = NULL;
    sn_rc_t rc;
    if (!c->group) {
        const char *argv[] = {"XREAD", "COUNT",   count,  "BLOCK",
                              block,   "STREAMS", r->key, c->cursor};
        rc = s_cmd(r, timeout, &rep, 8, argv);
    } else if (r->is_pending_phase) {
        const char *argv[] = {"XREADGROUP", "GROUP",   c->group, c->consumer,      "COUNT",
                              count,        "STREAMS", r->key,   r->pending_cursor};
        rc = s_cmd(r, 0, &rep, 9, argv);
    } else {
        const char *argv[] = {"XREADGROUP", "GROUP", c->group,  c->consumer, "COUNT", count,
                              "BLOCK",      block,   "STREAMS", r->key,      ">"};
        rc = s_cmd(r, timeout, &rep, 11, argv);
    }
    if (rc != SN_OK)
        return;
    if (rep->type == REDIS_REPLY_ERROR) {
        /* e.g. NOGROUP after the stream was deleted: prepare again, after a pause. */
        sn_warn("journal", "read on %s refused: %s", r->key, rep->str);
        r->needs_prepare = true;
        freeReplyObject(rep);
        s_idle(r, c->block_ms);
        return;
    }
    const redisReply *entries = NULL;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
        rep->element[0]->type == REDIS_REPLY_ARRAY && rep->element[0]->elements >= 2)
        entries = rep->element[0]->element[1];
    if (!c->group) {
        s_deliver(r, entries, false, c->cursor);
    } else if (r->is_pending_phase) {
        int n = s_deliver(r, entries, false, r->pending_cursor);
        if (n == 0 && (!entries || entries->elements == 0))
            r->is_pending_phase = false;
    } else {
        s_deliver(r, entries, false, NULL);
    }
    freeReplyObject(rep);
}

static void s_reader_actor(zsock_t *pipe, void *arg)
{
    s_reader_t r = {0};
    r.cfg = arg;
    r.pipe = pipe;
    sn_redis_opts_t ro = {
        .unix_path = r.cfg->unix_path,
        .host = r.cfg->host,
        .port = r.cfg->port,
        .namespace_ = r.cfg->ns,
        .timeout_ms = r.cfg->timeout_ms,
        .name = r.cfg->name,
    };
    r.conn = sn_redis_conn_new(&ro);
    SN_ASSERT(r.conn);
    r.key = sn_strdupf("%s%s", r.cfg->ns, SN_JOURNAL_STREAM);
    r.needs_prepare = true;
    r.is_pending_phase = r.cfg->group != NULL;
    sn_strlcpy(r.pending_cursor, "0-0", sizeof r.pending_cursor);
    sn_strlcpy(r.claim_cursor, "0-0", sizeof r.claim_cursor);
    zsock_signal(pipe, 0);

    while (!r.is_terminated) {
        s_drain_pipe(&r);
        if (r.is_terminated)
            break;
        int64_t retry_at = sn_redis_conn_retry_at_ms(r.conn);
        int64_t now = sn_mono_ms();
        if (retry_at > now) {
            s_idle(&r, retry_at - now);
            continue;
        }
        if (r.needs_prepare) {
            r.needs_prepare = false;
            if (s_prepare(&r) != SN_OK) {
                r.needs_prepare = true;
                s_idle(&r, 100);
                continue;
            }
        }
        if (r.cfg->group && !r.is_pending_phase && sn_mono_ms() >= r.next_claim_ms)
            s_autoclaim(&r);
        s_read(&r);
    }
    sn_redis_conn_destroy(&r.conn);
    free(r.key);
}
