/* The job ledger (ARCHITECTURE §10): work that must not be lost is a job in Redis,
 * created by the leader that owns it, claimed by a worker under a lease with an epoch,
 * renewed as the worker progresses (never beyond a hard maximum), finished with a write
 * that checks the epoch, and re-dispatched by the owning role's leader when its lease
 * lapses, up to an attempt limit, after which it is dead-lettered with an alert event.
 *
 * Every operation is one Redis Function (library "sentinel_ledger") with namespaced
 * keys: job:<id> (hash), jobs:leases (ZSET by lease deadline, Redis TIME ms),
 * jobs:open:<role> (SET of queued or claimed jobs, for adoption by a new leader),
 * jobs:dead (LIST), and the journal stream events. State changes that announce an event
 * XADD it in the same function call; the publish callback runs only after Redis
 * answered (the outbox rule). Reads (open jobs, dead jobs, get) are plain commands.
 * See docs/redis.md. All functions may be called from any thread once the ledger is set
 * up (the setters are for set-up time); the publish callback runs on the caller's thread.
 *
 * Return codes: SN_OK done; SN_DECLINED refused by the ledger's rules (fence not equal
 * to the role's current fence, stale epoch, live lease held by another owner, lapsed
 * lease, hard maximum reached, job not in a state that allows it); SN_AGAIN Redis
 * unreachable or slow (the write may or may not have happened; retrying is safe: every
 * write is guarded); SN_ERROR bad input (malformed id, empty role, unknown job). */
#ifndef SN_LEDGER_H
#define SN_LEDGER_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_redis.h"
#include "sentinel/v1/mesh.pb-c.h"

typedef struct sn_ledger sn_ledger_t;

/* Called after Redis stored an event: @topic is the event type, @env the packed
 * Envelope (both valid only during the call). Runs on the thread that called the ledger. */
typedef void (*sn_ledger_publish_fn)(void *arg, const char *topic, const uint8_t *env, size_t len);

typedef enum {
    SN_JOB_UNKNOWN = 0,
    SN_JOB_QUEUED,
    SN_JOB_CLAIMED,
    SN_JOB_DONE,
    SN_JOB_FAILED,
    SN_JOB_DEAD,
} sn_job_state_t;

#define SN_LEDGER_ID_MAX 128

/* A list of job ids (plain value struct; sn_ledger_ids_fini frees the contents). */
typedef struct {
    char **ids;
    size_t count;
} sn_ledger_ids_t;

void sn_ledger_ids_fini(sn_ledger_ids_t *self);

/* One job as read by sn_ledger_get (plain value struct; sn_ledger_job_fini frees). */
typedef struct {
    Sentinel__V1__JobSpec *spec; /* protobuf-c unpacked: attempt is the current attempt */
    sn_job_state_t state;
    char *owner; /* instance holding or last holding the lease, "" if none */
    uint64_t epoch;
    int64_t lease_deadline_ms; /* Redis TIME ms, 0 if not claimed */
    int64_t lease_max_ms;
    int64_t claimed_ms;
    int64_t created_ms;
    int64_t updated_ms;
    bool ok; /* for done/failed */
    uint8_t *result;
    size_t result_len;
} sn_ledger_job_t;

void sn_ledger_job_fini(sn_ledger_job_t *self);

/* What a redispatch did: ids put back in the queue (attempt + 1) and ids dead-lettered
 * with the stream id of each job.dead_lettered event (dead_stream_ids.ids[i] belongs to
 * dead.ids[i]). sn_ledger_redispatch_fini frees. */
typedef struct {
    sn_ledger_ids_t requeued;
    sn_ledger_ids_t dead;
    sn_ledger_ids_t dead_stream_ids;
} sn_ledger_redispatch_t;

void sn_ledger_redispatch_fini(sn_ledger_redispatch_t *self);

/* A ledger on @redis (borrowed) whose events are stamped with @source (borrowed; both
 * must outlive the ledger). Registers the "sentinel_ledger" library on @redis. */
sn_ledger_t *sn_ledger_new(sn_redis_t *redis, sn_source_t *source);

/* Frees; NULL-safe; sets *self_p = NULL. */
void sn_ledger_destroy(sn_ledger_t **self_p);

/* Sets the callback for events stored by this ledger (NULL: none). Before use. */
void sn_ledger_set_publish(sn_ledger_t *self, sn_ledger_publish_fn fn, void *arg);

/* Hard maximum for a lease measured from its claim, stored into jobs created from now
 * on (default 1 hour, minimum 10 ms). Before use. */
void sn_ledger_set_max_lease_ms(sn_ledger_t *self, int64_t max_lease_ms);

/* Approximate length cap of the events stream for XADD MAXLEN ~ (default 100000). */
void sn_ledger_set_events_maxlen(sn_ledger_t *self, long maxlen);

/* Validates a job id: 1..SN_LEDGER_ID_MAX characters of [A-Za-z0-9._:-]. */
bool sn_ledger_id_is_valid(const char *job_id);

/* Creates job @spec->job_id (queued, attempt 1) owned by @role, if @fence equals the
 * current fence of @role's leader lock. @spec is borrowed; its owner_role must be empty
 * or @role; max_attempts 0 means 3; lease_ms 0 means 30 s. An existing job with that
 * id is left unchanged and SN_OK returned (idempotent). Any thread. */
SN_NODISCARD sn_rc_t sn_ledger_create(sn_ledger_t *self, uint64_t fence, const char *role,
                                      const Sentinel__V1__JobSpec *spec);

/* Claims the job for @instance with a lease of @lease_ms (0: the job's lease_ms; capped
 * by the hard maximum): bumps the epoch and returns it in *epoch, the lease deadline is
 * set from Redis TIME. Refused (SN_DECLINED) while another owner's lease is live and for
 * jobs that are done, failed or dead; SN_ERROR for an unknown job. *spec_out (may be
 * NULL) receives the job (free with sn_ledger_spec_free). SN_REDIS_LEASE channel. */
SN_NODISCARD sn_rc_t sn_ledger_claim(sn_ledger_t *self, const char *job_id, const char *instance,
                                     int64_t lease_ms, uint64_t *epoch,
                                     Sentinel__V1__JobSpec **spec_out);

/* Extends the lease of the claim with @epoch by @lease_ms (0: the job's lease_ms) from
 * now, but never beyond claim time + hard maximum. *granted_ms (may be NULL) receives
 * the lease actually granted. SN_DECLINED on a stale epoch, a lease that already
 * lapsed, or the hard maximum reached: the worker must stop. SN_REDIS_LEASE channel. */
SN_NODISCARD sn_rc_t sn_ledger_renew(sn_ledger_t *self, const char *job_id, uint64_t epoch,
                                     int64_t lease_ms, int64_t *granted_ms);

/* Finishes the claim with @epoch: done (@ok) or failed, storing @result (binary,
 * may be NULL/0), and in the same call appends a job.completed / job.failed event;
 * the publish callback runs after. SN_DECLINED on a stale epoch or lapsed lease
 * (a frozen worker's late write). */
SN_NODISCARD sn_rc_t sn_ledger_complete(sn_ledger_t *self, const char *job_id, uint64_t epoch,
                                        bool ok, const uint8_t *result, size_t result_len);

/* INCR <ns>@key only if @epoch is the job's current epoch and its lease is live;
 * *value (may be NULL) receives the new value. SN_DECLINED otherwise. */
SN_NODISCARD sn_rc_t sn_ledger_guarded_incr(sn_ledger_t *self, const char *job_id, uint64_t epoch,
                                            const char *key, int64_t *value);

/* HSET <ns>@key @field @value (binary) under the same guard as sn_ledger_guarded_incr
 * (e.g. the job's side-effect record). */
SN_NODISCARD sn_rc_t sn_ledger_guarded_hset(sn_ledger_t *self, const char *job_id, uint64_t epoch,
                                            const char *key, const char *field,
                                            const uint8_t *value, size_t value_len);

/* For @role's leader (@fence must equal the role's current fence): every claimed job
 * of @role whose lease lapsed (Redis TIME) goes back to queued with attempt + 1 and no
 * owner, or, at its attempt limit, to dead (pushed on jobs:dead, a job.dead_lettered
 * event appended in the same call, then published). *out (caller's, zeroed here) gets
 * the ids; the leader dispatches the requeued ones again. At most 1000 lapsed leases are
 * examined per call. */
SN_NODISCARD sn_rc_t sn_ledger_redispatch(sn_ledger_t *self, uint64_t fence, const char *role,
                                          sn_ledger_redispatch_t *out);

/* The open (queued or claimed) jobs of @role, for a new leader to adopt. */
SN_NODISCARD sn_rc_t sn_ledger_open_jobs(sn_ledger_t *self, const char *role, sn_ledger_ids_t *out);

/* Up to @max dead-lettered job ids, newest first. */
SN_NODISCARD sn_rc_t sn_ledger_dead_jobs(sn_ledger_t *self, size_t max, sn_ledger_ids_t *out);

/* Reads one job into *out (caller's; free with sn_ledger_job_fini). SN_ERROR: unknown
 * job or malformed id. */
SN_NODISCARD sn_rc_t sn_ledger_get(sn_ledger_t *self, const char *job_id, sn_ledger_job_t *out);

/* Frees a spec returned by sn_ledger_claim; NULL-safe; nulls *spec_p. */
void sn_ledger_spec_free(Sentinel__V1__JobSpec **spec_p);

/* "queued", "claimed", "done", "failed", "dead" or "unknown". */
const char *sn_job_state_str(sn_job_state_t state);

#endif
