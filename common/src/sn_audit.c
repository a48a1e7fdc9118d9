/* The audit chain: records built and hashed here, appended with a compare-and-set on the
 * head inside one Redis Function, archived to an fsynced file before Redis is trimmed,
 * the head signed with a key Redis never sees, and verification of all of it.
 *
 * Why the client computes the hash: the key that signs heads must never reach Redis, and
 * verification must not trust anything Redis says, so the bytes that are hashed are the
 * bytes stored; Redis only guarantees the append is atomic and linear (the CAS).
 * Why the archive is read back for its last index instead of a counter in Redis: a crash
 * between the fsync and the counter update would duplicate or skip records; the file
 * itself is the truth, under flock. */
#include "sentinel/sn_audit.h"

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "sentinel/sn_crypto.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"

#define S_DEFAULT_SIGN_EVERY 64
#define S_DEFAULT_CAS_ATTEMPTS 64
#define S_BATCH 256
#define S_KEY_LEN 32
#define S_RECENT 32             /* recent intents remembered to label their outcomes */
#define S_RETRY_ARCHIVE_MS 5000 /* while failing, an intent re-tries the archive this often */
#define S_HEAD_MAX 128
#define S_SIG_CONTEXT "sentinel-audit-head:v1:"
#define S_REC_JSON_FLAGS (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII)

const char sn_audit_lua[] =
    "local function bad(msg) return redis.error_reply('SNBAD ' .. msg) end\n"
    "local function append(keys, args)\n"
    "  if #keys ~= 3 or #args ~= 6 then return bad('usage') end\n"
    "  if args[6] == '1' then\n"
    "    local f = redis.call('GET', keys[3])\n"
    "    if f then return redis.error_reply('SNFAILED ' .. f) end\n"
    "  end\n"
    "  local head = redis.call('GET', keys[2])\n"
    "  if not head then head = '' end\n"
    "  if head ~= args[1] then return {0, head} end\n"
    "  local idx = 0\n"
    "  if head ~= '' then idx = tonumber(string.match(head, '^(%d+) ')) or -1 end\n"
    "  if idx < 0 then return bad('head is corrupt') end\n"
    "  if not string.match(args[2], '^%d+$') or tonumber(args[2]) ~= idx + 1 then\n"
    "    return bad('index is not head + 1')\n"
    "  end\n"
    "  if not string.match(args[3], '^[0-9a-f]+$') or #args[3] ~= 64 then return bad('hash') end\n"
    "  if not string.match(args[4], '^%d+$') then return bad('time') end\n"
    "  redis.call('XADD', keys[1], args[2] .. '-0', 'hash', args[3], 'rec', args[5])\n"
    "  redis.call('SET', keys[2], args[2] .. ' ' .. args[3] .. ' ' .. args[4])\n"
    "  return {1, ''}\n"
    "end\n"
    "redis.register_function('sentinel_audit_append', append)\n";

typedef struct {
    uint64_t index;
    char hash[SN_SHA256_HEX_LEN + 1]; /* "" with index 0: the genesis */
    int64_t time_ms;
} s_head_t;

typedef struct {
    uint64_t index;
    char *actor, *action, *subject;
} s_recent_t;

struct sn_audit {
    sn_redis_t *redis;
    sn_source_t *source;
    sn_journal_t *journal; /* alerts; NULL without a source */
    char *archive_path;
    char *key_file;
    uint8_t key[S_KEY_LEN];
    int timeout_ms;
    int sign_every;
    int archive_every;
    int max_cas_attempts;

    pthread_mutex_t mu;
    s_head_t head;
    bool has_head;
    uint64_t signed_index;
    bool is_failed;
    int64_t retry_archive_at_ms;
    bool is_remote_failed_logged;
    s_recent_t recent[S_RECENT];
    size_t recent_next;
    sn_audit_stats_t stats;
};

/* A growable byte buffer. */
typedef struct {
    char *data;
    size_t len, cap;
} s_buf_t;

static void s_buf_add(s_buf_t *b, const void *p, size_t n);
static void s_buf_addf(s_buf_t *b, const char *fmt, ...) SN_PRINTF(2, 3);
static sn_rc_t s_load_key(const char *path, bool is_create, uint8_t key[S_KEY_LEN]);
static bool s_head_parse(const char *s, s_head_t *out);
static void s_head_format(const s_head_t *h, char *out, size_t len);
static sn_rc_t s_get_head(sn_redis_t *redis, int timeout_ms, s_head_t *out);
static sn_rc_t s_append(sn_audit_t *self, bool is_intent, const char *actor, const char *action,
                        const char *subject, const char *text, uint64_t intent, bool ok,
                        uint64_t *index);
static char *s_build_record(const s_head_t *head, uint64_t index, int64_t time_ms, bool is_intent,
                            const char *actor, const char *action, const char *subject,
                            const char *text, uint64_t intent, bool ok);
static sn_rc_t s_hash_record(const char *prev_hex, const char *rec, size_t len,
                             char out[SN_SHA256_HEX_LEN + 1]);
static void s_sign(const uint8_t key[S_KEY_LEN], uint64_t index, const char *hash_hex,
                   char out[SN_SHA256_HEX_LEN + 1]);
static sn_rc_t s_sign_locked(sn_audit_t *self);
static sn_rc_t s_archive_locked(sn_audit_t *self, uint64_t up_to, uint64_t *archived);
static void s_fail(sn_audit_t *self, const char *what, int err);
static void s_raise_alert(sn_audit_t *self, const char *summary);
static void s_remember(sn_audit_t *self, uint64_t index, const char *actor, const char *action,
                       const char *subject);
static sn_rc_t s_read_file(const char *path, char **out, size_t *len, bool *is_missing);
static sn_rc_t s_xrange(sn_redis_t *redis, int timeout_ms, const char *start, uint64_t end,
                        redisReply **out);
static bool s_entry_fields(const redisReply *entry, uint64_t *index, const char **hash,
                           const char **rec, size_t *rec_len);
static sn_rc_t s_hgetall(sn_redis_t *redis, int timeout_ms, const char *key, redisReply **out);

/* ---- the writer ------------------------------------------------------------------------ */

sn_audit_t *sn_audit_new(const sn_audit_opts_t *opts)
{
    SN_ASSERT(opts && opts->redis);
    if (!opts->archive_path || !opts->archive_path[0] || !opts->key_file || !opts->key_file[0]) {
        sn_error("audit", "audit needs an archive path and a key file");
        return NULL;
    }
    sn_audit_t *self = sn_calloc(1, sizeof *self);
    if (s_load_key(opts->key_file, true, self->key) != SN_OK) {
        free(self);
        return NULL;
    }
    self->redis = opts->redis;
    self->source = opts->source;
    self->archive_path = sn_strdup(opts->archive_path);
    self->key_file = sn_strdup(opts->key_file);
    self->timeout_ms = opts->timeout_ms;
    self->sign_every = opts->sign_every == 0 ? S_DEFAULT_SIGN_EVERY : opts->sign_every;
    self->archive_every = opts->archive_every > 0 ? opts->archive_every : 0;
    self->max_cas_attempts =
        opts->max_cas_attempts > 0 ? opts->max_cas_attempts : S_DEFAULT_CAS_ATTEMPTS;
    pthread_mutex_init(&self->mu, NULL);
    sn_redis_add_library(self->redis, SN_AUDIT_LIBRARY, sn_audit_lua);
    if (opts->source) {
        sn_journal_opts_t jo = {
            .redis = opts->redis, .source = opts->source, .timeout_ms = opts->timeout_ms};
        self->journal = sn_journal_new(&jo);
    }
    return self;
}

void sn_audit_destroy(sn_audit_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_audit_t *self = *self_p;
    sn_crypto_cleanse(self->key, sizeof self->key);
    sn_journal_destroy(&self->journal);
    for (size_t i = 0; i < S_RECENT; i++) {
        free(self->recent[i].actor);
        free(self->recent[i].action);
        free(self->recent[i].subject);
    }
    pthread_mutex_destroy(&self->mu);
    free(self->archive_path);
    free(self->key_file);
    free(self);
    *self_p = NULL;
}

sn_rc_t sn_audit_intent(sn_audit_t *self, const char *actor, const char *action,
                        const char *subject, const char *reason, uint64_t *record_id)
{
    SN_ASSERT(self && record_id);
    *record_id = 0;
    return s_append(self, true, actor, action, subject, reason, 0, false, record_id);
}

sn_rc_t sn_audit_outcome(sn_audit_t *self, uint64_t record_id, bool ok, const char *detail)
{
    SN_ASSERT(self);
    if (record_id == 0)
        return SN_ERROR;
    uint64_t index = 0;
    return s_append(self, false, NULL, NULL, NULL, detail, record_id, ok, &index);
}

sn_rc_t sn_audit_sign(sn_audit_t *self)
{
    pthread_mutex_lock(&self->mu);
    sn_rc_t rc = s_sign_locked(self);
    pthread_mutex_unlock(&self->mu);
    return rc;
}

sn_rc_t sn_audit_archive(sn_audit_t *self, uint64_t up_to, uint64_t *archived)
{
    pthread_mutex_lock(&self->mu);
    sn_rc_t rc = s_archive_locked(self, up_to, archived);
    pthread_mutex_unlock(&self->mu);
    return rc;
}

bool sn_audit_is_failed(sn_audit_t *self)
{
    pthread_mutex_lock(&self->mu);
    bool failed = self->is_failed;
    pthread_mutex_unlock(&self->mu);
    return failed;
}

void sn_audit_stats(sn_audit_t *self, sn_audit_stats_t *out)
{
    pthread_mutex_lock(&self->mu);
    *out = self->stats;
    pthread_mutex_unlock(&self->mu);
}

/* ---- verification ----------------------------------------------------------------------- */

/* The chain as verified so far: hashes of records first..last. */
typedef struct {
    sn_audit_report_t *rep;
    uint8_t (*hashes)[SN_SHA256_LEN];
    size_t cap;
    uint64_t first, last;
    int64_t last_time;
    bool is_bad;
} s_chain_t;

typedef struct {
    uint64_t index;
    char hash[SN_SHA256_HEX_LEN + 1];
    char sig[SN_SHA256_HEX_LEN + 1];
} s_sig_t;

typedef struct {
    s_sig_t *v;
    size_t n, cap;
} s_sigs_t;

static void s_bad(s_chain_t *c, uint64_t index, const char *fmt, ...) SN_PRINTF(3, 4);
static void s_chain_add(s_chain_t *c, const char *hash_hex, size_t hash_len, const char *rec,
                        size_t rec_len, const char *where);
static void s_sigs_add(s_sigs_t *s, uint64_t index, const char *hash, size_t hash_len,
                       const char *sig, size_t sig_len);
static void s_verify_archive(s_chain_t *c, s_sigs_t *sigs, const char *text, size_t len);
static bool s_parse_sig_line(const char *line, size_t len, uint64_t *index, const char **hash,
                             const char **sig);

sn_rc_t sn_audit_verify(sn_redis_t *redis, const char *archive_path, const char *key_file,
                        int timeout_ms, sn_audit_report_t *out)
{
    SN_ASSERT(redis && out);
    memset(out, 0, sizeof *out);
    s_chain_t c = {.rep = out};
    s_sigs_t sigs = {0};
    char *text = NULL;
    size_t text_len = 0;
    redisReply *r = NULL;
    sn_rc_t rc = SN_AGAIN;
    uint8_t key[S_KEY_LEN];
    bool has_key = key_file && s_load_key(key_file, false, key) == SN_OK;
    out->is_key_missing = !has_key;

    /* The head first: records appended while we read come after it and are accepted. */
    s_head_t head = {0};
    if (s_get_head(redis, timeout_ms, &head) != SN_OK) {
        snprintf(out->reason, sizeof out->reason, "redis unreachable or audit:head unreadable");
        goto out;
    }
    out->head_index = head.index;

    bool is_missing = false;
    if (archive_path && s_read_file(archive_path, &text, &text_len, &is_missing) != SN_OK) {
        snprintf(out->reason, sizeof out->reason, "cannot read the archive %s: %s", archive_path,
                 strerror(errno));
        goto out;
    }
    if (text)
        s_verify_archive(&c, &sigs, text, text_len);

    /* Then the stream, in batches, from its first entry. */
    char start[48] = "-";
    while (!c.is_bad) {
        if (s_xrange(redis, timeout_ms, start, 0, &r) != SN_OK) {
            snprintf(out->reason, sizeof out->reason, "redis unreachable while reading audit");
            goto out;
        }
        for (size_t i = 0; i < r->elements && !c.is_bad; i++) {
            uint64_t idx = 0;
            const char *hash = NULL, *rec = NULL;
            size_t rec_len = 0;
            if (!s_entry_fields(r->element[i], &idx, &hash, &rec, &rec_len)) {
                s_bad(&c, c.last + 1, "redis entry %zu of the batch has no hash/rec fields", i);
                break;
            }
            s_chain_add(&c, hash, strlen(hash), rec, rec_len, "redis");
            snprintf(start, sizeof start, "(%" PRIu64 "-0", idx);
        }
        size_t n = r->elements;
        freeReplyObject(r);
        r = NULL;
        if (n < S_BATCH)
            break;
    }

    /* The head must be a record of the chain. */
    if (!c.is_bad && head.index > 0) {
        if (head.index > c.last)
            s_bad(&c, c.last + 1,
                  "records %" PRIu64 "..%" PRIu64 " are missing (head is at %" PRIu64 ")",
                  c.last + 1, head.index, head.index);
        else if (head.index >= c.first) {
            char hex[SN_SHA256_HEX_LEN + 1];
            sn_hex_encode(c.hashes[head.index - c.first], SN_SHA256_LEN, hex);
            if (strcmp(hex, head.hash) != 0)
                s_bad(&c, head.index, "audit:head names another hash than the record's");
        }
    } else if (!c.is_bad && head.index == 0 && c.last > 0) {
        s_bad(&c, c.last + 1, "audit:head is missing but %" PRIu64 " records exist", c.last);
    }

    /* Signatures from audit:sig. */
    if (s_hgetall(redis, timeout_ms, SN_AUDIT_SIG, &r) != SN_OK) {
        snprintf(out->reason, sizeof out->reason, "redis unreachable while reading audit:sig");
        goto out;
    }
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *f = r->element[i], *v = r->element[i + 1];
        uint64_t idx = 0;
        int64_t tmp = 0;
        const char *sp = v->type == REDIS_REPLY_STRING ? memchr(v->str, ' ', v->len) : NULL;
        if (f->type != REDIS_REPLY_STRING || !sp ||
            sn_parse_i64(f->str, 1, INT64_MAX, &tmp) != SN_OK) {
            s_bad(&c, c.last + 1, "audit:sig holds an unreadable entry");
            continue;
        }
        idx = (uint64_t)tmp;
        s_sigs_add(&sigs, idx, v->str, (size_t)(sp - v->str), sp + 1,
                   v->len - (size_t)(sp - v->str) - 1);
    }
    freeReplyObject(r);
    r = NULL;

    /* Every signature must be valid and sign the record the chain has at its index. The
     * first bad index wins, whether the chain or a signature found it. */
    for (size_t i = 0; i < sigs.n && has_key; i++) {
        s_sig_t *s = &sigs.v[i];
        uint64_t limit = c.is_bad ? out->bad_index : UINT64_MAX;
        if (s->index >= limit)
            continue;
        char want[SN_SHA256_HEX_LEN + 1];
        s_sign(key, s->index, s->hash, want);
        if (!sn_crypto_equal_str(want, s->sig)) {
            s_bad(&c, s->index, "the signature of head %" PRIu64 " is not valid", s->index);
            continue;
        }
        if (s->index > c.last) {
            s_bad(&c, c.last + 1,
                  "a signed head at %" PRIu64 " is beyond the last record %" PRIu64
                  " (records removed)",
                  s->index, c.last);
            continue;
        }
        if (s->index < c.first)
            continue;
        char hex[SN_SHA256_HEX_LEN + 1];
        sn_hex_encode(c.hashes[s->index - c.first], SN_SHA256_LEN, hex);
        if (strcmp(hex, s->hash) != 0) {
            s_bad(&c, s->index, "record differs from the signed head (chain rewritten)");
            continue;
        }
        out->signatures++;
    }
    out->first_index = c.first;
    out->last_index = c.last;
    rc = c.is_bad ? SN_ERROR : SN_OK;
out:
    sn_crypto_cleanse(key, sizeof key);
    if (r)
        freeReplyObject(r);
    free(text);
    free(c.hashes);
    free(sigs.v);
    return rc;
}

sn_rc_t sn_audit_scan(sn_redis_t *redis, const char *archive_path, uint64_t from_index,
                      int timeout_ms, sn_audit_record_fn *fn, void *arg)
{
    char *text = NULL;
    size_t len = 0;
    bool is_missing = false;
    uint64_t next = from_index > 0 ? from_index : 1;
    if (archive_path && s_read_file(archive_path, &text, &len, &is_missing) == SN_OK && text) {
        const char *p = text, *end = text + len;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            if (!nl)
                break; /* torn last line */
            size_t l = (size_t)(nl - p);
            if (l > 67 && p[0] == 'R' && p[1] == ' ' && p[66] == ' ') {
                json_t *j = json_loadb(p + 67, l - 67, 0, NULL);
                json_int_t idx = j ? json_integer_value(json_object_get(j, "index")) : 0;
                json_decref(j);
                if (idx > 0 && (uint64_t)idx >= next) {
                    char hash[SN_SHA256_HEX_LEN + 1];
                    memcpy(hash, p + 2, SN_SHA256_HEX_LEN);
                    hash[SN_SHA256_HEX_LEN] = '\0';
                    fn(arg, (uint64_t)idx, hash, p + 67, l - 67, true);
                    next = (uint64_t)idx + 1;
                }
            }
            p = nl + 1;
        }
    }
    free(text);
    char start[48];
    snprintf(start, sizeof start, "%" PRIu64 "-0", next);
    for (;;) {
        redisReply *r = NULL;
        if (s_xrange(redis, timeout_ms, start, 0, &r) != SN_OK)
            return SN_AGAIN;
        for (size_t i = 0; i < r->elements; i++) {
            uint64_t idx = 0;
            const char *hash = NULL, *rec = NULL;
            size_t rec_len = 0;
            if (!s_entry_fields(r->element[i], &idx, &hash, &rec, &rec_len))
                continue;
            if (idx >= next) {
                fn(arg, idx, hash, rec, rec_len, false);
                next = idx + 1;
            }
            snprintf(start, sizeof start, "(%" PRIu64 "-0", idx);
        }
        size_t n = r->elements;
        freeReplyObject(r);
        if (n < S_BATCH)
            return SN_OK;
    }
}

/* ---- appending ---------------------------------------------------------------------- */

static sn_rc_t s_append(sn_audit_t *self, bool is_intent, const char *actor, const char *action,
                        const char *subject, const char *text, uint64_t intent, bool ok,
                        uint64_t *index)
{
    pthread_mutex_lock(&self->mu);
    sn_rc_t rc = SN_AGAIN;
    if (is_intent && self->is_failed) {
        /* Fail closed; now and then see whether the archive works again. */
        if (sn_mono_ms() >= self->retry_archive_at_ms) {
            self->retry_archive_at_ms = sn_mono_ms() + S_RETRY_ARCHIVE_MS;
            if (s_archive_locked(self, 0, NULL) != SN_OK) {
                self->stats.refused++;
                rc = SN_ERROR;
                goto out;
            }
        } else {
            self->stats.refused++;
            rc = SN_ERROR;
            goto out;
        }
    }
    if (!self->has_head) {
        if (s_get_head(self->redis, self->timeout_ms, &self->head) != SN_OK) {
            self->stats.refused += is_intent;
            goto out;
        }
        self->has_head = true;
    }
    const char *a_actor = actor, *a_action = action, *a_subject = subject;
    if (!is_intent)
        for (size_t i = 0; i < S_RECENT; i++)
            if (self->recent[i].index == intent) {
                a_actor = self->recent[i].actor;
                a_action = self->recent[i].action;
                a_subject = self->recent[i].subject;
            }
    for (int attempt = 0; attempt < self->max_cas_attempts; attempt++) {
        s_head_t *h = &self->head;
        uint64_t idx = h->index + 1;
        int64_t now = sn_wall_ms();
        int64_t t = now > h->time_ms ? now : h->time_ms; /* times never go backwards */
        char *rec =
            s_build_record(h, idx, t, is_intent, a_actor, a_action, a_subject, text, intent, ok);
        char hash[SN_SHA256_HEX_LEN + 1];
        if (s_hash_record(h->hash, rec, strlen(rec), hash) != SN_OK) {
            free(rec);
            rc = SN_ERROR;
            goto out;
        }
        char expected[S_HEAD_MAX], idx_s[24], t_s[24];
        s_head_format(h, expected, sizeof expected);
        snprintf(idx_s, sizeof idx_s, "%" PRIu64, idx);
        snprintf(t_s, sizeof t_s, "%" PRId64, t);
        const char *keys[] = {SN_AUDIT_STREAM, SN_AUDIT_HEAD, SN_AUDIT_FAILED};
        const char *args[] = {expected, idx_s, hash, t_s, rec, is_intent ? "1" : "0"};
        redisReply *r = NULL;
        sn_rc_t frc = sn_redis_fcall(self->redis, SN_REDIS_MAIN, self->timeout_ms, &r,
                                     "sentinel_audit_append", 3, keys, 6, args, NULL);
        free(rec);
        if (frc != SN_OK) {
            self->has_head = false; /* it may or may not have been appended */
            rc = SN_AGAIN;
            break;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            if (strncmp(r->str, "SNFAILED", 8) == 0) {
                if (!self->is_remote_failed_logged)
                    sn_warn("audit", "intent refused: the audit archive is failing (%s)",
                            r->str + (r->len > 9 ? 9 : r->len));
                self->is_remote_failed_logged = true;
                rc = SN_ERROR;
            } else {
                sn_error("audit", "append refused by redis: %s", r->str);
                rc = sn_redis_reply_is_transient(r) ? SN_AGAIN : SN_ERROR;
            }
            self->has_head = false;
            freeReplyObject(r);
            break;
        }
        bool ok_reply = r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                        r->element[0]->type == REDIS_REPLY_INTEGER;
        if (ok_reply && r->element[0]->integer == 1) {
            self->is_remote_failed_logged = false;
            sn_strlcpy(h->hash, hash, sizeof h->hash);
            h->index = idx;
            h->time_ms = t;
            *index = idx;
            self->stats.appended++;
            freeReplyObject(r);
            rc = SN_OK;
            break;
        }
        /* Lost the race: continue from the head Redis has now. */
        s_head_t cur = {0};
        bool is_parsed = ok_reply && r->element[1]->type == REDIS_REPLY_STRING &&
                         s_head_parse(r->element[1]->str, &cur);
        freeReplyObject(r);
        if (!is_parsed) {
            sn_error("audit", "audit:head is corrupt; refusing to append");
            self->has_head = false;
            rc = SN_ERROR;
            break;
        }
        self->head = cur;
        self->stats.cas_retries++;
        /* A writer appending back to back can starve us (its next call always reaches
         * Redis before our retry): after two losses, wait a jittered moment so our retry
         * lands at a random point of its cycle. */
        if (attempt >= 1) {
            int cap_us = 1000 << (attempt < 4 ? attempt : 4);
            struct timespec ts = {0, (long)(sn_random_u64() % (uint64_t)cap_us) * 1000L};
            nanosleep(&ts, NULL);
        }
    }
    if (rc == SN_AGAIN && self->has_head)
        sn_warn("audit", "append gave up after %d compare-and-set attempts",
                self->max_cas_attempts);
    if (rc != SN_OK) {
        self->stats.refused += is_intent;
        goto out;
    }
    if (is_intent)
        s_remember(self, *index, actor, action, subject);
    if (self->sign_every > 0 && *index % (uint64_t)self->sign_every == 0 &&
        s_sign_locked(self) != SN_OK)
        sn_debug("audit", "head not signed this time");
    if (self->archive_every > 0 && *index % (uint64_t)self->archive_every == 0 &&
        s_archive_locked(self, *index, NULL) != SN_OK)
        sn_debug("audit", "archive did not complete"); /* logged where it failed */
out:
    pthread_mutex_unlock(&self->mu);
    return rc;
}

static void s_json_str(json_t *obj, const char *key, const char *value)
{
    if (!value)
        value = "";
    size_t len = strnlen(value, SN_AUDIT_FIELD_MAX);
    json_t *s = json_stringn(value, len);
    if (!s) {
        /* Not valid UTF-8 (or cut inside a sequence): keep ASCII, mark the rest. */
        char *copy = sn_strndup(value, len);
        for (char *p = copy; *p; p++)
            if ((unsigned char)*p >= 0x80)
                *p = '?';
        s = json_string(copy);
        free(copy);
    }
    json_object_set_new(obj, key, s);
}

static char *s_build_record(const s_head_t *head, uint64_t index, int64_t time_ms, bool is_intent,
                            const char *actor, const char *action, const char *subject,
                            const char *text, uint64_t intent, bool ok)
{
    json_t *o = json_object();
    json_object_set_new(o, "index", json_integer((json_int_t)index));
    json_object_set_new(o, "time_ms", json_integer(time_ms));
    json_object_set_new(o, "kind", json_string(is_intent ? "intent" : "outcome"));
    s_json_str(o, "actor", actor);
    s_json_str(o, "action", action);
    s_json_str(o, "subject", subject);
    if (is_intent) {
        s_json_str(o, "reason", text);
    } else {
        json_object_set_new(o, "intent", json_integer((json_int_t)intent));
        json_object_set_new(o, "ok", json_boolean(ok));
        s_json_str(o, "detail", text);
    }
    char prev[SN_SHA256_HEX_LEN + 1];
    if (head->index == 0)
        memset(prev, '0', SN_SHA256_HEX_LEN);
    else
        memcpy(prev, head->hash, SN_SHA256_HEX_LEN);
    prev[SN_SHA256_HEX_LEN] = '\0';
    json_object_set_new(o, "prev", json_string(prev));
    char *s = json_dumps(o, S_REC_JSON_FLAGS);
    json_decref(o);
    SN_ASSERT(s);
    return s;
}

/* hash = SHA-256(prev hash bytes || record bytes); the genesis prev is 32 zero bytes. */
static sn_rc_t s_hash_record(const char *prev_hex, const char *rec, size_t len,
                             char out[SN_SHA256_HEX_LEN + 1])
{
    uint8_t prev[SN_SHA256_LEN] = {0};
    if (prev_hex && prev_hex[0] &&
        sn_hex_decode(prev_hex, strlen(prev_hex), prev, sizeof prev) != SN_OK)
        return SN_ERROR;
    struct iovec iov[2] = {{.iov_base = prev, .iov_len = sizeof prev},
                           {.iov_base = (void *)rec, .iov_len = len}};
    uint8_t d[SN_SHA256_LEN];
    if (sn_sha256_v(iov, 2, d) != SN_OK)
        return SN_ERROR;
    sn_hex_encode(d, sizeof d, out);
    return SN_OK;
}

static void s_remember(sn_audit_t *self, uint64_t index, const char *actor, const char *action,
                       const char *subject)
{
    s_recent_t *r = &self->recent[self->recent_next];
    self->recent_next = (self->recent_next + 1) % S_RECENT;
    free(r->actor);
    free(r->action);
    free(r->subject);
    r->index = index;
    r->actor = sn_strndup(actor ? actor : "", SN_AUDIT_FIELD_MAX);
    r->action = sn_strndup(action ? action : "", SN_AUDIT_FIELD_MAX);
    r->subject = sn_strndup(subject ? subject : "", SN_AUDIT_FIELD_MAX);
}

/* ---- signing ------------------------------------------------------------------------ */

static void s_sign(const uint8_t key[S_KEY_LEN], uint64_t index, const char *hash_hex,
                   char out[SN_SHA256_HEX_LEN + 1])
{
    char msg[S_HEAD_MAX];
    int n = snprintf(msg, sizeof msg, S_SIG_CONTEXT "%" PRIu64 ":%s", index, hash_hex);
    uint8_t d[SN_SHA256_LEN];
    if (n < 0 || (size_t)n >= sizeof msg ||
        sn_hmac_sha256(key, S_KEY_LEN, msg, (size_t)n, d) != SN_OK) {
        out[0] = '\0'; /* never equal to a real signature */
        return;
    }
    sn_hex_encode(d, sizeof d, out);
}

static sn_rc_t s_sign_locked(sn_audit_t *self)
{
    s_head_t h;
    if (s_get_head(self->redis, self->timeout_ms, &h) != SN_OK)
        return SN_AGAIN;
    if (h.index == 0 || h.index == self->signed_index)
        return SN_OK;
    char sig[SN_SHA256_HEX_LEN + 1], idx[24];
    s_sign(self->key, h.index, h.hash, sig);
    snprintf(idx, sizeof idx, "%" PRIu64, h.index);
    char *value = sn_strdupf("%s %s", h.hash, sig);
    char *key = sn_strdupf("%s" SN_AUDIT_SIG, sn_redis_ns(self->redis));
    const char *argv[] = {"HSET", key, idx, value};
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_cmd(self->redis, SN_REDIS_MAIN, self->timeout_ms, &r, 4, argv, NULL);
    free(value);
    free(key);
    if (rc != SN_OK)
        return SN_AGAIN;
    rc = r->type == REDIS_REPLY_ERROR ? SN_ERROR : SN_OK;
    if (rc != SN_OK)
        sn_error("audit", "HSET audit:sig refused: %s", r->str);
    freeReplyObject(r);
    if (rc == SN_OK) {
        self->signed_index = h.index;
        self->stats.signatures++;
    }
    return rc;
}

/* ---- archiving -------------------------------------------------------------------- */

static int s_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (w == 0)
            return EIO;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The index of the last whole R line of the archive (0 if none), cutting a torn tail off
 * a regular file. SN_ERROR with errno on an I/O error; SN_DECLINED if the last whole
 * line is unreadable (the archive was damaged: nothing is trimmed then). */
static sn_rc_t s_archive_last(int fd, const char *path, uint64_t *last)
{
    *last = 0;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return SN_ERROR;
    if (!S_ISREG(st.st_mode) || st.st_size == 0)
        return SN_OK;
    off_t size = st.st_size;
    size_t window = 64 * 1024;
    for (;;) {
        if ((off_t)window > size)
            window = (size_t)size;
        char *buf = sn_malloc(window);
        off_t from = size - (off_t)window;
        ssize_t n = pread(fd, buf, window, from);
        if (n != (ssize_t)window) {
            free(buf);
            if (n >= 0)
                errno = EIO;
            return SN_ERROR;
        }
        size_t end = window;
        if (from + (off_t)end == st.st_size && buf[end - 1] != '\n') {
            /* A torn tail: cut it (its records are still in Redis). */
            size_t keep = end;
            while (keep > 0 && buf[keep - 1] != '\n')
                keep--;
            if (keep > 0 || from == 0) {
                off_t new_size = from + (off_t)keep;
                if (ftruncate(fd, new_size) != 0) {
                    free(buf);
                    return SN_ERROR;
                }
                sn_warn("audit", "archive %s: removed a torn last line (%lld bytes)", path,
                        (long long)(st.st_size - new_size));
                end = keep;
                size = new_size;
            }
        }
        /* Walk whole lines backwards to the last R line. */
        size_t stop = end;
        while (stop > 0) {
            size_t b = stop - 1; /* the '\n' of this line */
            size_t s = b;
            while (s > 0 && buf[s - 1] != '\n')
                s--;
            if (s == 0 && from > 0)
                break; /* the line may start before the window */
            size_t l = b - s;
            if (l > 67 && buf[s] == 'R' && buf[s + 1] == ' ') {
                json_t *j = json_loadb(buf + s + 67, l - 67, 0, NULL);
                json_int_t idx = j ? json_integer_value(json_object_get(j, "index")) : 0;
                json_decref(j);
                free(buf);
                if (idx <= 0)
                    return SN_DECLINED;
                *last = (uint64_t)idx;
                return SN_OK;
            }
            if (!(l > 0 && buf[s] == 'S')) {
                free(buf);
                return SN_DECLINED;
            }
            stop = s;
        }
        free(buf);
        if (from == 0)
            return SN_OK; /* only S lines, or empty */
        if (window >= (size_t)size)
            return SN_OK;
        window *= 4;
    }
}

static sn_rc_t s_archive_locked(sn_audit_t *self, uint64_t up_to, uint64_t *archived)
{
    if (archived)
        *archived = 0;
    sn_rc_t rc = SN_ERROR;
    redisReply *r = NULL, *sigs = NULL;
    s_buf_t buf = {0};
    uint64_t written = 0;
    int fd = open(self->archive_path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        s_fail(self, "open", errno);
        return SN_ERROR;
    }
    if (flock(fd, LOCK_EX) != 0) {
        s_fail(self, "flock", errno);
        goto out;
    }
    uint64_t last = 0;
    sn_rc_t lrc = s_archive_last(fd, self->archive_path, &last);
    if (lrc == SN_ERROR) {
        s_fail(self, "read", errno);
        goto out;
    }
    if (lrc == SN_DECLINED) {
        sn_error("audit",
                 "archive %s: the last line is unreadable; not archiving (run "
                 "`sentinelctl audit verify`)",
                 self->archive_path);
        goto out;
    }
    struct stat st;
    off_t orig_size = fstat(fd, &st) == 0 ? st.st_size : -1;
    if (up_to == 0) {
        s_head_t h;
        if (s_get_head(self->redis, self->timeout_ms, &h) != SN_OK) {
            rc = SN_AGAIN;
            goto out;
        }
        up_to = h.index;
    }
    if (up_to <= last) {
        rc = SN_OK;
        goto trim;
    }
    if (s_hgetall(self->redis, self->timeout_ms, SN_AUDIT_SIG, &sigs) != SN_OK) {
        rc = SN_AGAIN;
        goto out;
    }
    char start[48];
    snprintf(start, sizeof start, "%" PRIu64 "-0", last + 1);
    uint64_t expect = last + 1;
    for (;;) {
        if (s_xrange(self->redis, self->timeout_ms, start, up_to, &r) != SN_OK) {
            rc = SN_AGAIN;
            goto out;
        }
        for (size_t i = 0; i < r->elements; i++) {
            uint64_t idx = 0;
            const char *hash = NULL, *rec = NULL;
            size_t rec_len = 0;
            if (!s_entry_fields(r->element[i], &idx, &hash, &rec, &rec_len) || idx != expect) {
                sn_error("audit",
                         "audit records from %" PRIu64 " are missing in redis and in "
                         "the archive; not archiving",
                         expect);
                goto out;
            }
            s_buf_addf(&buf, "R %s ", hash);
            s_buf_add(&buf, rec, rec_len);
            s_buf_add(&buf, "\n", 1);
            for (size_t k = 0; k + 1 < sigs->elements; k += 2) {
                const redisReply *f = sigs->element[k], *v = sigs->element[k + 1];
                int64_t si = 0;
                if (f->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
                    sn_parse_i64(f->str, 1, INT64_MAX, &si) == SN_OK && (uint64_t)si == idx)
                    s_buf_addf(&buf, "S %" PRIu64 " %s\n", idx, v->str);
            }
            expect = idx + 1;
            snprintf(start, sizeof start, "(%" PRIu64 "-0", idx);
            written++;
        }
        size_t n = r->elements;
        freeReplyObject(r);
        r = NULL;
        if (n < S_BATCH || expect > up_to)
            break;
    }
    if (expect <= up_to) {
        sn_error("audit",
                 "audit records %" PRIu64 "..%" PRIu64 " are not in redis; archived "
                 "up to %" PRIu64,
                 expect, up_to, expect - 1);
        up_to = expect - 1;
    }
    int err = buf.len ? s_write_all(fd, buf.data, buf.len) : 0;
    if (err == 0 && fsync(fd) != 0)
        err = errno;
    if (err != 0) {
        /* Leave no partial line behind if we can. */
        if (orig_size >= 0 && ftruncate(fd, orig_size) != 0)
            sn_debug("audit", "could not cut the partial write");
        s_fail(self, "write", err);
        goto out;
    }
    self->stats.archived += written;
    if (archived)
        *archived = written;
trim:
    /* Only now, with the records on disk, may Redis forget them. */
    {
        uint64_t trim_to = up_to < last ? last : up_to;
        char minid[48];
        snprintf(minid, sizeof minid, "%" PRIu64 "-0", trim_to + 1);
        char *key = sn_strdupf("%s" SN_AUDIT_STREAM, sn_redis_ns(self->redis));
        const char *argv[] = {"XTRIM", key, "MINID", minid};
        sn_rc_t trc = sn_redis_cmd(self->redis, SN_REDIS_MAIN, self->timeout_ms, &r, 4, argv, NULL);
        free(key);
        if (trc == SN_OK) {
            freeReplyObject(r);
            r = NULL;
        }
        if (sigs || s_hgetall(self->redis, self->timeout_ms, SN_AUDIT_SIG, &sigs) == SN_OK) {
            char *skey = sn_strdupf("%s" SN_AUDIT_SIG, sn_redis_ns(self->redis));
            for (size_t k = 0; k + 1 < sigs->elements; k += 2) {
                int64_t si = 0;
                const redisReply *f = sigs->element[k];
                if (f->type != REDIS_REPLY_STRING ||
                    sn_parse_i64(f->str, 1, INT64_MAX, &si) != SN_OK || (uint64_t)si > trim_to)
                    continue;
                const char *hdel[] = {"HDEL", skey, f->str};
                if (sn_redis_cmd(self->redis, SN_REDIS_MAIN, self->timeout_ms, &r, 3, hdel, NULL) ==
                    SN_OK) {
                    freeReplyObject(r);
                    r = NULL;
                }
            }
            free(skey);
        }
    }
    /* Our success lifts the fail-closed state, ours and any other process's mark. */
    {
        char *fkey = sn_strdupf("%s" SN_AUDIT_FAILED, sn_redis_ns(self->redis));
        const char *argv[] = {"DEL", fkey};
        sn_rc_t drc = sn_redis_cmd(self->redis, SN_REDIS_MAIN, self->timeout_ms, &r, 2, argv, NULL);
        free(fkey);
        if (drc != SN_OK) {
            rc = SN_AGAIN; /* still marked failed in Redis: try again later */
            goto out;
        }
        bool was_marked = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
        freeReplyObject(r);
        r = NULL;
        if (self->is_failed || was_marked)
            sn_info("audit", "archive %s works again; side effects resume", self->archive_path);
        self->is_failed = false;
    }
    rc = SN_OK;
out:
    if (r)
        freeReplyObject(r);
    if (sigs)
        freeReplyObject(sigs);
    free(buf.data);
    close(fd); /* releases the flock */
    return rc;
}

/* An archive I/O error: fail closed here and, through audit:failed, everywhere; alert
 * once per failure. */
static void s_fail(sn_audit_t *self, const char *what, int err)
{
    char why[256];
    snprintf(why, sizeof why, "%s %s: %s", what, self->archive_path, strerror(err));
    bool was_failed = self->is_failed;
    self->is_failed = true;
    self->retry_archive_at_ms = sn_mono_ms() + S_RETRY_ARCHIVE_MS;
    char *fkey = sn_strdupf("%s" SN_AUDIT_FAILED, sn_redis_ns(self->redis));
    const char *argv[] = {"SET", fkey, why};
    redisReply *r = NULL;
    if (sn_redis_cmd(self->redis, SN_REDIS_MAIN, self->timeout_ms, &r, 3, argv, NULL) == SN_OK)
        freeReplyObject(r);
    free(fkey);
    if (was_failed)
        return;
    sn_error("audit", "archive failed, refusing side effects until it works: %s", why);
    s_raise_alert(self, why);
}

static void s_raise_alert(sn_audit_t *self, const char *summary)
{
    if (!self->journal)
        return;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, self->source, "alert.raised", id);
    env.subject = (char *)"audit";
    Sentinel__V1__Alert alert = SENTINEL__V1__ALERT__INIT;
    alert.name = (char *)"audit-archive-failed";
    alert.severity = (char *)"critical";
    char text[320];
    snprintf(text, sizeof text, "audit archive failing, side effects refused: %s", summary);
    alert.summary = text;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_ALERT;
    env.alert = &alert;
    sn_journal_result_t res;
    if (sn_journal_commit(self->journal, NULL, NULL, 0, &env, &res) != SN_OK)
        sn_warn("audit", "alert.raised could not be journaled");
}

/* ---- the key file ------------------------------------------------------------------ */

static sn_rc_t s_load_key(const char *path, bool is_create, uint8_t key[S_KEY_LEN])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ENOENT && is_create) {
        char hex[2 * S_KEY_LEN + 2];
        uint8_t fresh[S_KEY_LEN];
        sn_random_bytes(fresh, sizeof fresh);
        sn_hex_encode(fresh, sizeof fresh, hex);
        sn_crypto_cleanse(fresh, sizeof fresh);
        hex[2 * S_KEY_LEN] = '\n';
        /* Written whole under a temporary name, then published with link(), which fails
         * if another process got there first: every process of a host starts at once and
         * none may ever read a half-written key. */
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof tmp, "%s.tmp-%d-%llx", path, (int)getpid(),
                 (unsigned long long)sn_random_u64());
        int wfd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (wfd >= 0) {
            int err = s_write_all(wfd, hex, 2 * S_KEY_LEN + 1);
            if (err == 0 && fsync(wfd) != 0)
                err = errno;
            close(wfd);
            sn_crypto_cleanse(hex, sizeof hex);
            if (err == 0) {
                if (link(tmp, path) == 0)
                    sn_info("audit", "created the head-signing key %s (keep it off Redis hosts)",
                            path);
                else if (errno != EEXIST)
                    err = errno; /* EEXIST: another process published its key first */
            }
            unlink(tmp);
            if (err != 0) {
                sn_error("audit", "cannot write the audit key %s: %s", path, strerror(err));
                return SN_ERROR;
            }
        } else {
            sn_crypto_cleanse(hex, sizeof hex);
            sn_error("audit", "cannot create the audit key %s: %s", path, strerror(errno));
            return SN_ERROR;
        }
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    }
    if (fd < 0) {
        if (is_create || errno != ENOENT)
            sn_error("audit", "cannot open the audit key %s: %s", path, strerror(errno));
        return SN_ERROR;
    }
    struct stat st;
    char hex[2 * S_KEY_LEN + 2];
    ssize_t n = -1;
    sn_rc_t rc = SN_ERROR;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        sn_error("audit", "the audit key %s is not a regular file", path);
        goto out;
    }
    if (st.st_mode & 077) {
        sn_error("audit", "the audit key %s is readable by group or others (chmod 600 it)", path);
        goto out;
    }
    n = read(fd, hex, sizeof hex);
    if (n < 2 * S_KEY_LEN || (n > 2 * S_KEY_LEN && hex[2 * S_KEY_LEN] != '\n') ||
        sn_hex_decode(hex, 2 * S_KEY_LEN, key, S_KEY_LEN) != SN_OK) {
        sn_error("audit", "the audit key %s is not %d hex characters", path, 2 * S_KEY_LEN);
        goto out;
    }
    rc = SN_OK;
out:
    sn_crypto_cleanse(hex, sizeof hex);
    close(fd);
    return rc;
}

/* ---- the head ------------------------------------------------------------------------ */

static bool s_head_parse(const char *s, s_head_t *out)
{
    memset(out, 0, sizeof *out);
    if (!s || !s[0])
        return true; /* the genesis */
    char idx[24], hash[SN_SHA256_HEX_LEN + 2], t[24];
    if (sscanf(s, "%23s %65s %23s", idx, hash, t) != 3 || strlen(hash) != SN_SHA256_HEX_LEN)
        return false;
    int64_t i = 0, tm = 0;
    if (sn_parse_i64(idx, 1, INT64_MAX, &i) != SN_OK || sn_parse_i64(t, 0, INT64_MAX, &tm) != SN_OK)
        return false;
    out->index = (uint64_t)i;
    out->time_ms = tm;
    sn_strlcpy(out->hash, hash, sizeof out->hash);
    return true;
}

static void s_head_format(const s_head_t *h, char *out, size_t len)
{
    if (h->index == 0)
        out[0] = '\0';
    else
        snprintf(out, len, "%" PRIu64 " %s %" PRId64, h->index, h->hash, h->time_ms);
}

static sn_rc_t s_get_head(sn_redis_t *redis, int timeout_ms, s_head_t *out)
{
    memset(out, 0, sizeof *out);
    char *key = sn_strdupf("%s" SN_AUDIT_HEAD, sn_redis_ns(redis));
    const char *argv[] = {"GET", key};
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_cmd(redis, SN_REDIS_MAIN, timeout_ms, &r, 2, argv, NULL);
    free(key);
    if (rc != SN_OK)
        return SN_AGAIN;
    rc = SN_OK;
    if (r->type == REDIS_REPLY_STRING) {
        if (!s_head_parse(r->str, out)) {
            sn_error("audit", "audit:head is corrupt");
            rc = SN_ERROR;
        }
    } else if (r->type != REDIS_REPLY_NIL) {
        rc = SN_ERROR;
    }
    freeReplyObject(r);
    return rc;
}

/* ---- reading ----------------------------------------------------------------------- */

static sn_rc_t s_read_file(const char *path, char **out, size_t *len, bool *is_missing)
{
    *out = NULL;
    *len = 0;
    *is_missing = false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            *is_missing = true;
            return SN_OK;
        }
        return SN_ERROR;
    }
    s_buf_t b = {0};
    char chunk[65536];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            free(b.data);
            errno = e;
            return SN_ERROR;
        }
        if (n == 0)
            break;
        s_buf_add(&b, chunk, (size_t)n);
    }
    close(fd);
    s_buf_add(&b, "", 1);
    *out = b.data;
    *len = b.len - 1;
    return SN_OK;
}

/* XRANGE audit @start (@end: 0 = "+") COUNT S_BATCH; *out is an array reply. */
static sn_rc_t s_xrange(sn_redis_t *redis, int timeout_ms, const char *start, uint64_t end,
                        redisReply **out)
{
    char *key = sn_strdupf("%s" SN_AUDIT_STREAM, sn_redis_ns(redis));
    char end_s[48], count[16];
    if (end == 0)
        sn_strlcpy(end_s, "+", sizeof end_s);
    else
        snprintf(end_s, sizeof end_s, "%" PRIu64 "-0", end);
    snprintf(count, sizeof count, "%d", S_BATCH);
    const char *argv[] = {"XRANGE", key, start, end_s, "COUNT", count};
    sn_rc_t rc = sn_redis_cmd(redis, SN_REDIS_MAIN, timeout_ms, out, 6, argv, NULL);
    free(key);
    if (rc != SN_OK)
        return SN_AGAIN;
    if ((*out)->type != REDIS_REPLY_ARRAY) {
        sn_warn("audit", "XRANGE audit: %s",
                (*out)->type == REDIS_REPLY_ERROR ? (*out)->str : "unexpected reply");
        freeReplyObject(*out);
        *out = NULL;
        return SN_AGAIN;
    }
    return SN_OK;
}

static bool s_entry_fields(const redisReply *entry, uint64_t *index, const char **hash,
                           const char **rec, size_t *rec_len)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING ||
        entry->element[1]->type != REDIS_REPLY_ARRAY)
        return false;
    uint64_t ms = 0, seq = 0;
    if (!sn_journal_id_parse(entry->element[0]->str, &ms, &seq))
        return false;
    *index = ms;
    *hash = NULL;
    *rec = NULL;
    const redisReply *f = entry->element[1];
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        if (f->element[i]->type != REDIS_REPLY_STRING ||
            f->element[i + 1]->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(f->element[i]->str, "hash") == 0)
            *hash = f->element[i + 1]->str;
        else if (strcmp(f->element[i]->str, "rec") == 0) {
            *rec = f->element[i + 1]->str;
            *rec_len = f->element[i + 1]->len;
        }
    }
    return *hash && *rec;
}

static sn_rc_t s_hgetall(sn_redis_t *redis, int timeout_ms, const char *key, redisReply **out)
{
    char *k = sn_strdupf("%s%s", sn_redis_ns(redis), key);
    const char *argv[] = {"HGETALL", k};
    sn_rc_t rc = sn_redis_cmd(redis, SN_REDIS_MAIN, timeout_ms, out, 2, argv, NULL);
    free(k);
    if (rc != SN_OK)
        return SN_AGAIN;
    if ((*out)->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(*out);
        *out = NULL;
        return SN_AGAIN;
    }
    return SN_OK;
}

/* ---- the verifier's chain --------------------------------------------------------------- */

static void s_bad(s_chain_t *c, uint64_t index, const char *fmt, ...)
{
    if (c->is_bad && c->rep->bad_index <= index)
        return; /* an earlier problem is already named */
    c->is_bad = true;
    c->rep->bad_index = index;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->rep->reason, sizeof c->rep->reason, fmt, ap);
    va_end(ap);
}

static void s_chain_add(s_chain_t *c, const char *hash_hex, size_t hash_len, const char *rec,
                        size_t rec_len, const char *where)
{
    uint64_t want = c->last + 1;
    json_t *j = json_loadb(rec, rec_len, JSON_REJECT_DUPLICATES, NULL);
    json_t *ji = j ? json_object_get(j, "index") : NULL;
    json_t *jt = j ? json_object_get(j, "time_ms") : NULL;
    json_t *jp = j ? json_object_get(j, "prev") : NULL;
    if (!json_is_integer(ji) || json_integer_value(ji) <= 0 || !json_is_integer(jt) ||
        !json_is_string(jp)) {
        s_bad(c, want, "%s: record unreadable", where);
        goto out;
    }
    uint64_t idx = (uint64_t)json_integer_value(ji);
    uint8_t hash[SN_SHA256_LEN];
    if (hash_len != SN_SHA256_HEX_LEN ||
        sn_hex_decode(hash_hex, hash_len, hash, sizeof hash) != SN_OK) {
        s_bad(c, idx, "%s: stored hash unreadable", where);
        goto out;
    }
    if (c->last > 0 && idx >= c->first && idx <= c->last) {
        /* Archived and not yet trimmed: it must be the same record. */
        if (!sn_crypto_equal(hash, c->hashes[idx - c->first], SN_SHA256_LEN))
            s_bad(c, idx, "%s: record differs from the archived one", where);
        goto out;
    }
    if (idx != want) {
        if (c->last == 0)
            s_bad(c, 1, "%s: the chain starts at %" PRIu64 ", records before it are missing", where,
                  idx);
        else if (idx > want)
            s_bad(c, want, "%s: records %" PRIu64 "..%" PRIu64 " are missing", where, want,
                  idx - 1);
        else
            s_bad(c, idx, "%s: record out of order", where);
        goto out;
    }
    uint8_t prev[SN_SHA256_LEN] = {0};
    if (c->last > 0)
        memcpy(prev, c->hashes[c->last - c->first], SN_SHA256_LEN);
    char prev_hex[SN_SHA256_HEX_LEN + 1];
    sn_hex_encode(prev, sizeof prev, prev_hex);
    if (strcmp(json_string_value(jp), prev_hex) != 0) {
        s_bad(c, idx, "%s: prev does not match the hash of record %" PRIu64, where, idx - 1);
        goto out;
    }
    struct iovec iov[2] = {{.iov_base = prev, .iov_len = sizeof prev},
                           {.iov_base = (void *)rec, .iov_len = rec_len}};
    uint8_t d[SN_SHA256_LEN];
    if (sn_sha256_v(iov, 2, d) != SN_OK || !sn_crypto_equal(d, hash, SN_SHA256_LEN)) {
        s_bad(c, idx, "%s: hash mismatch (record altered)", where);
        goto out;
    }
    int64_t t = json_integer_value(jt);
    if (t < c->last_time) {
        s_bad(c, idx, "%s: time goes backwards", where);
        goto out;
    }
    if (c->first == 0)
        c->first = idx;
    size_t pos = (size_t)(idx - c->first);
    if (pos >= c->cap) {
        c->cap = c->cap ? c->cap * 2 : 1024;
        c->hashes = sn_realloc(c->hashes, c->cap * SN_SHA256_LEN);
    }
    memcpy(c->hashes[pos], hash, SN_SHA256_LEN);
    c->last = idx;
    c->last_time = t;
    c->rep->records++;
out:
    json_decref(j);
}

static void s_sigs_add(s_sigs_t *s, uint64_t index, const char *hash, size_t hash_len,
                       const char *sig, size_t sig_len)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->v = sn_realloc(s->v, s->cap * sizeof *s->v);
    }
    s_sig_t *e = &s->v[s->n++];
    e->index = index;
    size_t hl = hash_len < SN_SHA256_HEX_LEN ? hash_len : SN_SHA256_HEX_LEN;
    size_t sl = sig_len < SN_SHA256_HEX_LEN ? sig_len : SN_SHA256_HEX_LEN;
    memcpy(e->hash, hash, hl);
    e->hash[hl] = '\0';
    memcpy(e->sig, sig, sl);
    e->sig[sl] = '\0';
    if (hash_len != SN_SHA256_HEX_LEN || sig_len != SN_SHA256_HEX_LEN)
        e->sig[0] = '\0'; /* malformed: never valid */
}

static bool s_parse_sig_line(const char *line, size_t len, uint64_t *index, const char **hash,
                             const char **sig)
{
    /* "S <index> <64 hex> <64 hex>" */
    if (len < 4 || line[0] != 'S' || line[1] != ' ')
        return false;
    const char *p = line + 2, *end = line + len;
    uint64_t v = 0;
    const char *digits = p;
    while (p < end && *p >= '0' && *p <= '9' && p - digits < 19)
        v = v * 10 + (uint64_t)(*p++ - '0');
    if (p == digits || p >= end || *p != ' ' || v == 0)
        return false;
    p++;
    if (end - p != 2 * SN_SHA256_HEX_LEN + 1 || p[SN_SHA256_HEX_LEN] != ' ')
        return false;
    *index = v;
    *hash = p;
    *sig = p + SN_SHA256_HEX_LEN + 1;
    return true;
}

static void s_verify_archive(s_chain_t *c, s_sigs_t *sigs, const char *text, size_t len)
{
    const char *p = text, *end = text + len;
    size_t line_no = 0;
    while (p < end && !c->is_bad) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            /* A writer killed mid-write leaves a line without its newline. */
            c->rep->is_truncated = true;
            c->rep->truncated_bytes = (uint64_t)(end - p);
            return;
        }
        line_no++;
        size_t l = (size_t)(nl - p);
        uint64_t idx = 0;
        const char *hash = NULL, *sig = NULL;
        if (l > 67 && p[0] == 'R' && p[1] == ' ' && p[66] == ' ') {
            char where[48];
            snprintf(where, sizeof where, "archive line %zu", line_no);
            s_chain_add(c, p + 2, SN_SHA256_HEX_LEN, p + 67, l - 67, where);
        } else if (s_parse_sig_line(p, l, &idx, &hash, &sig)) {
            s_sigs_add(sigs, idx, hash, SN_SHA256_HEX_LEN, sig, SN_SHA256_HEX_LEN);
        } else {
            s_bad(c, c->last + 1, "archive line %zu is unreadable", line_no);
        }
        p = nl + 1;
    }
}

/* ---- buffers ---------------------------------------------------------------------------- */

static void s_buf_add(s_buf_t *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        b->data = sn_realloc(b->data, cap);
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void s_buf_addf(s_buf_t *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    SN_ASSERT(n >= 0 && (size_t)n < sizeof tmp);
    s_buf_add(b, tmp, (size_t)n);
}
