/* The audit chain (ARCHITECTURE §9, RELIABILITY I4): an intent record before every side
 * effect and an outcome record after. Each record is one line of canonical JSON (compact,
 * sorted keys, ASCII) holding its index, its time in ms (inside the hash), the actor,
 * action, subject, reason or detail and the previous record's hash; its hash is
 * SHA-256(prev_hash || record bytes), computed by the client. A record is appended to the
 * stream `audit` (entry id "<index>-0", fields `hash`, `rec`) together with the new head
 * `audit:head` ("<index> <hash hex> <time_ms>") by ONE Redis Function that first checks
 * the head the client built on is still the head (compare-and-set): a writer that lost
 * the race re-reads the head and retries, a bounded number of times.
 *
 * Before Redis is trimmed the records are appended to an archive file (O_APPEND, fsync,
 * flock against other archivers) as lines `R <hash hex> <record>`; the head is signed
 * periodically with HMAC-SHA256 under a key that only lives in a local file (created 0600
 * if missing; Redis never sees it), stored in the hash `audit:sig` (field <index>, value
 * "<hash hex> <hmac hex>") and moved into the archive as lines `S <index> <hash> <hmac>`.
 * An I/O error on the archive (disk full, EIO, a path that is not writable) fails closed:
 * every later intent is refused — in this process at once, and in every process through
 * the key `audit:failed`, which the append function checks — until an archive succeeds
 * again; an `alert.raised` event is journaled when the failure begins.
 *
 * Keys (under the namespace): audit, audit:head, audit:sig, audit:failed. Library
 * "sentinel_audit". */
#ifndef SN_AUDIT_H
#define SN_AUDIT_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_redis.h"

#define SN_AUDIT_LIBRARY "sentinel_audit"
#define SN_AUDIT_STREAM "audit"
#define SN_AUDIT_HEAD "audit:head"
#define SN_AUDIT_SIG "audit:sig"
#define SN_AUDIT_FAILED "audit:failed"
#define SN_AUDIT_FIELD_MAX 1024 /* longer actor/action/subject/reason/detail are cut */

/* The Lua body of library "sentinel_audit". Function:
 *   sentinel_audit_append KEYS: audit audit:head audit:failed
 *                         ARGV: expected_head index hash time_ms record check_failed
 *     -> {1, ""} appended; {0, current_head} lost the race; error "SNFAILED <why>" when
 *        check_failed is "1" and the archive is failing; "SNBAD ..." on bad arguments. */
extern const char sn_audit_lua[];

typedef struct sn_audit sn_audit_t;

typedef struct {
    sn_redis_t *redis;        /* borrowed; must outlive the audit */
    sn_source_t *source;      /* borrowed; stamps alert.raised; NULL: alerts are only logged */
    const char *archive_path; /* the archive file (cfg->audit_archive); copied */
    const char *key_file;     /* the head-signing key (cfg->audit_key_file); copied */
    int timeout_ms;           /* per Redis call; <= 0: the Redis default */
    int sign_every;           /* sign the head after every N-th record; 0: 64; < 0: never */
    int archive_every;        /* archive and trim after every N-th record; <= 0: never (only
                                 sn_audit_archive) */
    int max_cas_attempts;     /* compare-and-set attempts per record; <= 0: 64 */
} sn_audit_opts_t;

typedef struct {
    uint64_t appended;    /* records appended by this handle */
    uint64_t cas_retries; /* appends that lost the race and retried */
    uint64_t refused;     /* intents refused (archive failing, Redis down, contention) */
    uint64_t signatures;  /* heads signed */
    uint64_t archived;    /* records written to the archive */
} sn_audit_stats_t;

/* Loads the signing key from @opts->key_file (creating it, 0600, with 32 random bytes in
 * hex if missing; refusing a key file readable by group or others) and registers the
 * library. NULL (logged) if the key file is unusable or an option is missing. The handle
 * is thread-safe: several threads may append through it. Redis need not be up. */
sn_audit_t *sn_audit_new(const sn_audit_opts_t *opts);
/* Frees (the key is cleansed), sets *self_p = NULL. NULL-safe. */
void sn_audit_destroy(sn_audit_t **self_p);

/* Appends an intent record (before a side effect). @actor, @action, @subject, @reason are
 * borrowed (NULL = ""); *record_id receives the record's index. SN_OK: recorded, the side
 * effect may proceed. Anything else means NO side effect: SN_ERROR when the archive is
 * failing (fail closed) or on bad input, SN_AGAIN when Redis is unreachable or the
 * compare-and-set kept losing. Any thread. */
SN_NODISCARD sn_rc_t sn_audit_intent(sn_audit_t *self, const char *actor, const char *action,
                                     const char *subject, const char *reason, uint64_t *record_id);

/* Appends the outcome of intent @record_id (after the side effect): @ok and @detail
 * (borrowed, NULL = ""). Recorded even while the archive is failing (the side effect has
 * happened; Redis keeps the record until an archive succeeds). SN_OK, or SN_AGAIN /
 * SN_ERROR as above. Any thread. */
SN_NODISCARD sn_rc_t sn_audit_outcome(sn_audit_t *self, uint64_t record_id, bool ok,
                                      const char *detail);

/* Signs the current head now (a no-op if it is already signed or the chain is empty).
 * SN_AGAIN if Redis is unreachable. Any thread. */
SN_NODISCARD sn_rc_t sn_audit_sign(sn_audit_t *self);

/* Appends the records not yet in the archive with index <= @up_to (0: up to the current
 * head), and the signatures among them, to the archive file, fsyncs it, then removes them
 * from Redis (XTRIM, HDEL). A torn last line (a writer killed mid-write) is cut off first;
 * those records are still in Redis. *archived (may be NULL) receives the count written.
 * SN_OK; SN_ERROR on an I/O error on the archive (intents now fail closed, alert raised)
 * or when records are missing from both places; SN_AGAIN when Redis is unreachable (the
 * archive may hold records Redis still has: harmless, verify accepts the overlap).
 * A success after a failure lifts the fail-closed state. Any thread. */
SN_NODISCARD sn_rc_t sn_audit_archive(sn_audit_t *self, uint64_t up_to, uint64_t *archived);

/* True while intents are refused because of an archive failure seen by this handle. */
bool sn_audit_is_failed(sn_audit_t *self);

void sn_audit_stats(sn_audit_t *self, sn_audit_stats_t *out);

/* ---- verification and reading (sentinelctl audit) ------------------------------------ */

typedef struct {
    uint64_t records;     /* whole records checked (archive and Redis, overlap once) */
    uint64_t first_index; /* 1 when the chain is complete; 0 when empty */
    uint64_t last_index;
    uint64_t head_index; /* audit:head's index (0: none) */
    uint64_t signatures; /* signatures checked and valid */
    bool is_key_missing; /* no key file: signatures could not be checked */
    bool is_truncated;   /* the archive ends with a torn line (a writer killed mid-write) */
    uint64_t truncated_bytes;
    uint64_t bad_index; /* the first bad index, when SN_ERROR */
    char reason[256];   /* why, when SN_ERROR */
} sn_audit_report_t;

/* Verifies the archive at @archive_path (may be missing) followed by the stream, from the
 * first record: indexes contiguous from 1, each prev equal to the previous hash, each hash
 * recomputed, times monotonic, audit:head matching, every signature (archive and
 * audit:sig) valid under the key in @key_file (not created; NULL or missing: signatures
 * are skipped and is_key_missing set) and matching the record it signs. A torn last line
 * of the archive is reported as is_truncated, not as tampering. SN_OK: intact; SN_ERROR:
 * tampered, out->bad_index and out->reason name the first bad record; SN_AGAIN: Redis
 * unreachable or the archive unreadable (out->reason says which). Any thread. */
SN_NODISCARD sn_rc_t sn_audit_verify(sn_redis_t *redis, const char *archive_path,
                                     const char *key_file, int timeout_ms, sn_audit_report_t *out);

/* One record as stored: @rec is its canonical JSON (not NUL-terminated, @rec_len bytes),
 * @hash_hex its hash. @from_archive tells where it was read. */
typedef void(sn_audit_record_fn)(void *arg, uint64_t index, const char *hash_hex, const char *rec,
                                 size_t rec_len, bool from_archive);

/* Calls @fn for every record with index >= @from_index, archive first then Redis, in
 * index order, each index once (no checks: that is sn_audit_verify). SN_AGAIN if Redis is
 * unreachable. Any thread. */
SN_NODISCARD sn_rc_t sn_audit_scan(sn_redis_t *redis, const char *archive_path, uint64_t from_index,
                                   int timeout_ms, sn_audit_record_fn *fn, void *arg);

#endif
