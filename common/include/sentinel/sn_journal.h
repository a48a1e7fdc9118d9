/* The journal: the `events` stream in Redis, which is the record (ARCHITECTURE §4).
 * Writing follows the outbox rule: a state change and the event that announces it are
 * written in ONE Redis Function call (library "sentinel_journal"), and only after Redis
 * answered is the same envelope published on the bus. Reading replays from a stream id
 * and continues live on a dedicated connection and thread, with an explicit gap when
 * the cursor is older than the retention, or shares the entries between replicas with a
 * consumer group (each entry handled by one replica, reclaimed if that replica dies).
 *
 * Stream entry format, fixed (other modules write it from their own Lua):
 *   XADD <ns>events MAXLEN ~ <max_len> * type <type> env <Envelope bytes>
 * Keys and scripts are listed in docs/redis.md. */
#ifndef SN_JOURNAL_H
#define SN_JOURNAL_H

#include <czmq.h>

#include "sentinel/sn_bus.h"
#include "sentinel/sn_common.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_redis.h"

#define SN_JOURNAL_LIBRARY "sentinel_journal"
#define SN_JOURNAL_STREAM "events"         /* key, under the namespace */
#define SN_JOURNAL_GAP_TYPE "sentinel.gap" /* type of the Gap entries a reader delivers */
#define SN_JOURNAL_ID_MAX 48               /* a stream id "<ms>-<seq>" and its NUL */
#define SN_JOURNAL_DEFAULT_MAX_LEN 1000000
#define SN_JOURNAL_BATCH_MAX 256 /* events per sn_journal_commit_batch */

/* The Lua body of library "sentinel_journal" (without the #!lua line). Functions:
 *   sentinel_journal_commit  KEYS: events [lock] opkeys...
 *                            ARGV: max_len fence|"" nops op... type env  -> stream id
 *   sentinel_journal_commit_batch
 *                            KEYS: events [lock] (opkeys of event 1) (opkeys of event 2)...
 *                            ARGV: max_len fence|"" nevents
 *                                  (nkeys nops op... type env) x nevents -> {stream id...}
 *   sentinel_journal_trim    KEYS: events  ARGV: max_age_ms              -> trimmed count
 * Role Lua that writes events must add them in the same entry format. */
extern const char sn_journal_lua[];

/* ---- writing ----------------------------------------------------------------------- */

typedef struct sn_journal sn_journal_t;

/* Called after Redis acknowledged a write and before the bus publish (metrics, tests). */
typedef void(sn_journal_written_fn)(void *arg, const char *stream_id);

typedef struct {
    sn_redis_t *redis;   /* borrowed; must outlive the journal */
    sn_bus_pub_t *bus;   /* borrowed; NULL: journal only, nothing published */
    sn_source_t *source; /* borrowed: stamps source, incarnation and seq */
    int64_t max_len;     /* MAXLEN ~ cap; 0: SN_JOURNAL_DEFAULT_MAX_LEN */
    int timeout_ms;      /* per write; <= 0: the Redis default */
    sn_journal_written_fn *on_written;
    void *on_written_arg;
} sn_journal_opts_t;

/* What a write produced. */
typedef struct {
    char stream_id[SN_JOURNAL_ID_MAX]; /* the journal cursor of the event */
    char event_id[SN_ID_LEN + 1];      /* the envelope id (ULID) */
    uint64_t seq;                      /* the envelope seq */
    bool is_published;                 /* handed to the bus (best effort beyond that) */
} sn_journal_result_t;

/* Registers the library on @opts->redis and returns the writer. It belongs to one
 * thread (the bus publisher does); Redis need not be up. */
sn_journal_t *sn_journal_new(const sn_journal_opts_t *opts);
/* Frees; NULL-safe; sets *self_p = NULL. */
void sn_journal_destroy(sn_journal_t **self_p);

/* A batch of state operations applied with the event, validated in Lua before any
 * write (arity, numbers, key types), so a bad batch writes nothing. Keys are relative to
 * the namespace; values are binary-safe (copied). */
typedef struct sn_journal_ops sn_journal_ops_t;

sn_journal_ops_t *sn_journal_ops_new(void);
void sn_journal_ops_destroy(sn_journal_ops_t **self_p);
/* SET key value [PX px_ms] (px_ms 0: no expiry). */
void sn_journal_ops_set(sn_journal_ops_t *self, const char *key, const void *value, size_t len,
                        int64_t px_ms);
void sn_journal_ops_del(sn_journal_ops_t *self, const char *key);
/* HSET key field value (one field per op; add several ops for several fields). */
void sn_journal_ops_hset(sn_journal_ops_t *self, const char *key, const char *field,
                         const void *value, size_t len);
void sn_journal_ops_hdel(sn_journal_ops_t *self, const char *key, const char *field);
void sn_journal_ops_zadd(sn_journal_ops_t *self, const char *key, double score, const char *member);
void sn_journal_ops_zrem(sn_journal_ops_t *self, const char *key, const char *member);
void sn_journal_ops_sadd(sn_journal_ops_t *self, const char *key, const char *member);
void sn_journal_ops_srem(sn_journal_ops_t *self, const char *key, const char *member);
void sn_journal_ops_lpush(sn_journal_ops_t *self, const char *key, const void *value, size_t len);
void sn_journal_ops_ltrim(sn_journal_ops_t *self, const char *key, int64_t start, int64_t stop);
void sn_journal_ops_pexpire(sn_journal_ops_t *self, const char *key, int64_t ms);
/* Appends a raw op (name and its arguments after the key), for tests of the Lua
 * validation; prefer the typed helpers. */
void sn_journal_ops_raw(sn_journal_ops_t *self, const char *name, const char *key, int argc,
                        const char **argv);
size_t sn_journal_ops_count(const sn_journal_ops_t *self);

/* Writes @ops (NULL: none) and the event @env atomically, then publishes @env on the
 * bus as [topic=env->type][the same bytes]. @env is the caller's (type and body set);
 * this call stamps id (if unset), source, time (if 0), incarnation, seq and, when
 * fenced, fence — the pointers it sets are restored before returning, the numbers stay.
 * Fencing (@fence_key not NULL, the leader lock "leader:<role>" of sn_leader): before
 * anything, the function compares @fence with the fence in the current lock value for
 * EQUALITY (sn_leader's sn_fence_ok) and writes nothing if they differ or the lock is
 * gone (lapsed).
 * SN_OK: written (and published if there is a bus; a refused publish is only counted);
 * SN_DECLINED: fence mismatch, nothing written; SN_ERROR: bad input or a batch the Lua
 * refused, nothing written; SN_AGAIN: Redis unreachable or too slow — it may or may not
 * have been written, and nothing was published (a journal reader sees it if it was).
 * A failed write still consumed its seq, so bus subscribers may report a gap that the
 * journal then shows to be empty: gaps are hints to replay, never proof of loss. */
SN_NODISCARD sn_rc_t sn_journal_commit(sn_journal_t *self, const sn_journal_ops_t *ops,
                                       const char *fence_key, uint64_t fence, sn_envelope_t *env,
                                       sn_journal_result_t *out);

/* Group commit: writes @count events (1..SN_JOURNAL_BATCH_MAX), each with its own state
 * operations (@ops NULL: none for any; ops[i] NULL: none for event i), in ONE Redis
 * Function call — one round trip and, with appendfsync always, one fsync for the lot —
 * then publishes envs[0..count-1] on the bus in that order. All or nothing: every event
 * and op is validated (key types tracked across the whole batch) before the first write,
 * and the fence (as sn_journal_commit, @fence_key NULL: unfenced) is checked once for
 * the batch, so a refusal writes none of them. Each envs[i] is stamped as by
 * sn_journal_commit (seqs consecutive, in order); @results (may be NULL) has @count
 * slots, results[i] for envs[i]; stream ids are increasing. Arrays are borrowed.
 * Returns as sn_journal_commit, for the whole batch: SN_OK: all written (and handed to
 * the bus one by one); SN_DECLINED: fence refused, nothing written; SN_ERROR: bad input
 * (count out of range, a NULL env, an event without type or too large, a batch the Lua
 * refused), nothing written; SN_AGAIN: unknown outcome, nothing published. Owner thread. */
SN_NODISCARD sn_rc_t sn_journal_commit_batch(sn_journal_t *self, size_t count,
                                             const sn_journal_ops_t *const *ops,
                                             const char *fence_key, uint64_t fence,
                                             sn_envelope_t *const *envs,
                                             sn_journal_result_t *results);

/* The same outbox rule through any Redis Function @fn whose contract is: the last two
 * ARGV are the type and the envelope bytes, it XADDs them in the entry format above and
 * returns the stream id (errors "SNFENCE ..." -> SN_DECLINED, other errors -> SN_ERROR
 * or SN_AGAIN when transient). @keys are relative to the namespace; @args/@arglens as
 * sn_redis_fcall (the type and env are appended here). */
SN_NODISCARD sn_rc_t sn_journal_commit_fcall(sn_journal_t *self, const char *fn, int nkeys,
                                             const char **keys, int nargs, const char **args,
                                             const size_t *arglens, sn_envelope_t *env,
                                             sn_journal_result_t *out);

/* Removes entries older than @max_age_s (by their stream id, against Redis TIME).
 * *trimmed (may be NULL) receives the count. SN_AGAIN if Redis is unreachable. */
SN_NODISCARD sn_rc_t sn_journal_trim(sn_journal_t *self, int64_t max_age_s, int64_t *trimmed);

typedef struct {
    uint64_t committed; /* events Redis acknowledged (a batch counts each) */
    uint64_t declined;  /* fenced writes refused (a batch counts once) */
    uint64_t failed;    /* SN_ERROR and SN_AGAIN (a batch counts once) */
    uint64_t published; /* envelopes handed to the bus */
    uint64_t publish_failed;
} sn_journal_stats_t;

void sn_journal_stats(const sn_journal_t *self, sn_journal_stats_t *out);

/* ---- reading ----------------------------------------------------------------------- */

typedef struct sn_journal_reader sn_journal_reader_t;

/* Where to read from. The reader opens its own connection (its own thread) from
 * @redis; strings are copied. */
typedef struct {
    const sn_redis_opts_t *redis;
    /* "0" or "0-0": from the beginning; "$" or NULL: only new entries; an id: strictly
     * after it. With a group: where the group starts if it does not exist yet. */
    const char *cursor;
    int batch;    /* COUNT per read, default 100 */
    int block_ms; /* XREAD BLOCK time, default 500 (also bounds how fast destroy is) */
    /* Consumer group mode (both set): XREADGROUP, each entry to one consumer, the owner
     * acknowledges with sn_journal_reader_ack after handling it; entries pending longer
     * than @claim_idle_ms (default 30000) at any consumer are reclaimed (XAUTOCLAIM). A
     * consumer restarting under the same name first gets its own pending entries. */
    const char *group;
    const char *consumer;
    int claim_idle_ms;
} sn_journal_reader_opts_t;

/* One journal entry, or a gap. Everything belongs to the entry (sn_journal_entry_fini). */
typedef struct {
    char id[SN_JOURNAL_ID_MAX]; /* stream id; "" for a gap */
    char *type;                 /* the entry's `type` field */
    sn_envelope_t *env;         /* decoded; NULL if the bytes did not parse (counted) */
    uint8_t *raw;               /* the `env` bytes as stored */
    size_t raw_len;
    /* env is a synthetic SN_JOURNAL_GAP_TYPE envelope with body gap (requested_id, the
     * first id still kept, missed_at_least). Plain mode only, checked at start and after
     * each reconnect: the cursor is not 0, entries were removed, the cursor is before the
     * first entry kept and its own entry is gone. Redis 7.0 does not record trimmed ids,
     * so missed_at_least is 1 only when a deletion after the cursor is proven (XDEL) and
     * 0 when the cursor's own entry was trimmed and its successors may have been. */
    bool is_gap;
    bool is_claimed; /* group mode: taken over from another consumer */
} sn_journal_entry_t;

void sn_journal_entry_fini(sn_journal_entry_t *entry);

/* Starts the reader thread (fully up when this returns; Redis need not be up). At most
 * about a thousand entries wait for the owner (the pipe's HWM); then the thread waits.
 * NULL on bad options (a cursor that is not 0, $ or an id; group without consumer). */
sn_journal_reader_t *sn_journal_reader_new(const sn_journal_reader_opts_t *opts);
/* Stops the thread (within about block_ms; acknowledgements already given are sent
 * first), frees, sets *self_p = NULL. NULL-safe. */
void sn_journal_reader_destroy(sn_journal_reader_t **self_p);
/* The socket entries arrive on, to register with a zpoller/zloop (borrowed). */
zsock_t *sn_journal_reader_sock(sn_journal_reader_t *self);
/* Waits up to @timeout_ms for the next entry, in stream order (a gap comes before the
 * entries after it). SN_OK: @out filled; SN_AGAIN: nothing yet. Owner thread only. */
SN_NODISCARD sn_rc_t sn_journal_reader_next(sn_journal_reader_t *self, int timeout_ms,
                                            sn_journal_entry_t *out);
/* Group mode: acknowledges entry @id (XACK, sent by the reader thread before its next
 * read). SN_ERROR without a group or with a bad id. Owner thread only. */
SN_NODISCARD sn_rc_t sn_journal_reader_ack(sn_journal_reader_t *self, const char *id);

typedef struct {
    uint64_t delivered; /* entries handed to the owner */
    uint64_t malformed; /* entries whose envelope did not parse */
    uint64_t gaps;
} sn_journal_reader_stats_t;

void sn_journal_reader_stats(const sn_journal_reader_t *self, sn_journal_reader_stats_t *out);

/* Parses a stream id "<ms>-<seq>" (or "<ms>"). False on junk. */
bool sn_journal_id_parse(const char *id, uint64_t *ms, uint64_t *seq);
/* <0, 0, >0 as @a is before, equal to or after @b (both valid ids). */
int sn_journal_id_cmp(const char *a, const char *b);

#endif
