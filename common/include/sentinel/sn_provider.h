/* What every cloud deployer (cloudflare-deployer, railway-bridge, the firebase roles)
 * shares when it talks to a provider API:
 *
 * - a request budget per (provider, credential), shared through Redis by every process
 *   and thread: a sliding-window log in ONE Redis Function, so that N processes never
 *   make more than budget_requests calls in any budget_window_s window;
 * - a circuit breaker per (provider, credential) in Redis: it opens after K consecutive
 *   transient failures seen by any process, lets one probe through after a cool-down
 *   (half-open) and closes on the probe's success; while open, calls fail fast (transient);
 * - sn_provider_call: acquire, perform with the request's timeout, classify (2xx ok; 429,
 *   5xx and transport trouble transient; other 4xx permanent), and retry with exponential
 *   backoff + jitter (or exactly the Retry-After the provider asked for, capped) only
 *   when the call is safe to repeat, counting attempts against one attempt budget per
 *   deploy op and never passing its absolute deadline;
 * - sn_provider_call_json: the same, refusing "garbage with 200" (a body that is not JSON,
 *   or a Content-Type that is not JSON) as a transient failure;
 * - the deploy record: a Redis hash per deploy id where a deployer writes the provider's
 *   deployment id (set-if-absent) BEFORE it waits on it, so that a re-dispatched job
 *   resumes that deployment instead of starting a second one.
 *
 * Redis keys (under the namespace; <cred> = first 16 hex of sha256(credential), never
 * the credential itself):
 *   provider:budget:<provider>:<cred>   ZSET of grants (member: random token, score: ms)
 *   provider:breaker:<provider>:<cred>  HASH state, failures, opened_ms, probe_until_ms
 *   provider:deploy:<deploy-id>         HASH of op fields ("stage.deployment_id", ...)
 *
 * Threads: an sn_provider_t is immutable after sn_provider_new and may be used from any
 * thread at once (Redis goes through sn_redis, which is thread-safe). The sn_http_t passed
 * to a call belongs to the calling thread. Calls that wait (acquire, retries) sleep on
 * the calling thread: run them on job threads, never on the loop thread. */
#ifndef SN_PROVIDER_H
#define SN_PROVIDER_H

#include <jansson.h>

#include "sentinel/sn_common.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_redis.h"

typedef struct sn_provider sn_provider_t;

#define SN_PROVIDER_REASON_MAX 256
#define SN_PROVIDER_CRED_HEX_LEN 16
#define SN_PROVIDER_DEFAULT_BREAKER_THRESHOLD 5
#define SN_PROVIDER_DEFAULT_BREAKER_COOLDOWN_MS 30000
#define SN_PROVIDER_DEFAULT_RETRY_AFTER_CAP_MS 60000
#define SN_PROVIDER_DEFAULT_BACKOFF_BASE_MS 500
#define SN_PROVIDER_DEFAULT_BACKOFF_CAP_MS 15000
#define SN_PROVIDER_RECORD_TTL_S (30 * 24 * 3600)

/* How a provider is reached and limited. Strings are copied by sn_provider_new. Zero
 * values take the defaults above; budget_requests <= 0 means "no budget". */
typedef struct {
    const char *provider;       /* "railway", "cloudflare", "firebase" (key component) */
    const char *credential;     /* the token or key id; hashed for the keys, never logged;
                                   NULL or "" hashes the empty string */
    int budget_requests;        /* grants per window, every process together */
    int budget_window_s;        /* the sliding window */
    int breaker_threshold;      /* consecutive transient failures that open the breaker */
    int breaker_cooldown_ms;    /* open -> half-open after this */
    int64_t retry_after_cap_ms; /* longest Retry-After honoured */
    int64_t backoff_base_ms;    /* retry backoff: base * 2^n, jittered, capped */
    int64_t backoff_cap_ms;
    int redis_timeout_ms; /* each Redis call; default 1000 */
} sn_provider_opts_t;

/* Fills @opts from a target's cloud fields (budget_requests, budget_window_s) for
 * @provider; @opts borrows @provider and the target's token: keep @target alive until
 * sn_provider_new has copied them. The other fields are zeroed (defaults). */
void sn_provider_opts_from_target(sn_provider_opts_t *opts, const char *provider,
                                  const sn_target_config_t *target);

/* A provider handle on @redis (borrowed: must outlive the handle). Registers the
 * provider Function library with @redis. NULL if @opts has no provider name. Any thread. */
sn_provider_t *sn_provider_new(sn_redis_t *redis, const sn_provider_opts_t *opts);

/* Frees (no Redis traffic), sets *self_p = NULL. NULL-safe. No call may be in progress. */
void sn_provider_destroy(sn_provider_t **self_p);

/* The first 16 hex digits of sha256(credential) (borrowed, lives as long as @self). */
const char *sn_provider_cred_hash(const sn_provider_t *self);

/* ---- request budget -------------------------------------------------------------------- */

/* Takes one request from the shared budget, sleeping until the sliding window has room,
 * but never past @deadline_ms (monotonic, sn_mono_ms; <= 0: wait at most one window).
 * SN_OK: granted (*granted_ms, if not NULL, gets the Redis server time of the grant in
 * unix ms); SN_AGAIN: the deadline comes before room does (nothing taken), or Redis is
 * unreachable. Without a budget, SN_OK at once (*granted_ms = 0). Any thread. */
SN_NODISCARD sn_rc_t sn_provider_acquire(sn_provider_t *self, int64_t deadline_ms,
                                         int64_t *granted_ms);

/* ---- circuit breaker ------------------------------------------------------------------- */

typedef enum {
    SN_PROVIDER_BREAKER_CLOSED = 0,
    SN_PROVIDER_BREAKER_OPEN = 1,
    SN_PROVIDER_BREAKER_HALF_OPEN = 2, /* a probe may go (or is in flight) */
} sn_provider_breaker_state_t;

typedef enum {
    SN_PROVIDER_OUTCOME_OK = 0,        /* the provider answered (2xx) */
    SN_PROVIDER_OUTCOME_TRANSIENT = 1, /* 429, 5xx, transport trouble, garbage 200 */
    SN_PROVIDER_OUTCOME_PERMANENT = 2, /* other 4xx: the provider is up, the call is wrong */
} sn_provider_outcome_t;

/* May a call go now? SN_OK: yes (closed, or this caller is the one half-open probe);
 * SN_AGAIN: the breaker is open (or a probe is already in flight): fail fast, transient;
 * *retry_in_ms (may be NULL) gets the time left of the cool-down. SN_AGAIN also when
 * Redis is unreachable. Any thread. */
SN_NODISCARD sn_rc_t sn_provider_breaker_allow(sn_provider_t *self, int64_t *retry_in_ms);

/* Reports the outcome of a call that went: OK and PERMANENT close the breaker and reset
 * the count; TRANSIENT counts one more consecutive failure, opening the breaker at the
 * threshold (and re-opening it after a failed probe). SN_AGAIN if Redis is unreachable.
 * Any thread. */
SN_NODISCARD sn_rc_t sn_provider_breaker_record(sn_provider_t *self, sn_provider_outcome_t outcome);

/* The breaker's current state and consecutive failure count (either may be NULL).
 * SN_AGAIN if Redis is unreachable. Any thread. */
SN_NODISCARD sn_rc_t sn_provider_breaker_get(sn_provider_t *self,
                                             sn_provider_breaker_state_t *state, int *failures);

/* ---- calls ----------------------------------------------------------------------------- */

/* One attempt budget per deploy op (a plain value struct, the caller's storage), shared
 * by every call of the op: every HTTP attempt counts, no attempt starts once @attempts
 * reached @max_attempts, and no attempt or sleep passes the deadline. A caller that polls
 * (successful calls that should not use up the op's retries) may move max_attempts per
 * call, e.g. to attempts + 1 + the retries it still grants; @failures tells how many
 * attempts failed. */
typedef struct {
    int max_attempts;                    /* attempts the op may make; from the target; <= 0: 1 */
    int attempts;                        /* HTTP attempts made so far (successful or not) */
    int failures;                        /* failed attempts so far */
    int64_t deadline_ms;                 /* absolute monotonic (sn_mono_ms); <= 0: none */
    long last_status;                    /* HTTP status of the last attempt (0: none arrived) */
    bool is_transient;                   /* how the last failure was classified */
    char reason[SN_PROVIDER_REASON_MAX]; /* the last failure, secret-free (redacted URL) */
} sn_provider_budget_t;

/* Zeroes @budget and sets max_attempts and the absolute @deadline_ms. */
void sn_provider_budget_init(sn_provider_budget_t *budget, int max_attempts, int64_t deadline_ms);

/* Performs @req (its timeout_ms is each attempt's timeout, shortened to what is left of
 * the budget's deadline) through the breaker and the request budget, into *resp (the
 * caller's storage, zeroed here; free with sn_http_response_fini in every case).
 * SN_OK: a 2xx response is in *resp. SN_ERROR: permanent — a 4xx other than 429, a bad
 * request or URL; *resp holds the response. SN_AGAIN: transient — 429, 5xx, transport
 * trouble, breaker open, no budget before the deadline, attempts or deadline exhausted;
 * *resp holds the last response if any. @budget->reason says why (no secret, no body).
 * Retries happen only when @is_idempotent: after the provider's Retry-After (capped by
 * retry_after_cap_ms) when it sent one, else after an exponential backoff with jitter;
 * never past @budget->deadline_ms nor beyond @budget->max_attempts attempts in total.
 * A non-idempotent call makes exactly one attempt. Logs the redacted URL only.
 * Calling thread (owns @http). */
SN_NODISCARD sn_rc_t sn_provider_call(sn_provider_t *self, sn_http_t *http,
                                      const sn_http_request_t *req, bool is_idempotent,
                                      sn_provider_budget_t *budget, sn_http_response_t *resp);

/* As sn_provider_call, and a 2xx must also carry a JSON Content-Type and a body that
 * parses as a JSON object or array: anything else ("garbage with 200", an HTML error page
 * from a proxy) is a transient failure (retried when @is_idempotent). On SN_OK *json gets
 * the parsed body (caller json_decref's); on failure *json is NULL. */
SN_NODISCARD sn_rc_t sn_provider_call_json(sn_provider_t *self, sn_http_t *http,
                                           const sn_http_request_t *req, bool is_idempotent,
                                           sn_provider_budget_t *budget, sn_http_response_t *resp,
                                           json_t **json);

/* Checks that @resp carries a JSON Content-Type and a JSON object or array body; SN_OK
 * with *json set (caller json_decref's), else SN_ERROR with a short reason (no body text)
 * in @reason. Pure: any thread. */
SN_NODISCARD sn_rc_t sn_provider_parse_json(const sn_http_response_t *resp, json_t **json,
                                            char *reason, size_t reason_len);

/* Sleeps @ms (<= 0: not at all), capped so it never passes @deadline_ms (<= 0: none).
 * Returns false if the deadline cut the sleep short. For pollers. Any thread. */
bool sn_provider_sleep(int64_t ms, int64_t deadline_ms);

/* ---- deploy record ----------------------------------------------------------------------- */

/* Reads field @field of provider:deploy:<@deploy_id>. SN_OK with *value set (caller
 * frees); SN_DECLINED: absent (*value NULL); SN_AGAIN: Redis unreachable. Any thread. */
SN_NODISCARD sn_rc_t sn_provider_record_get(sn_redis_t *redis, const char *deploy_id,
                                            const char *field, char **value);

/* Sets @field to @value only if it is absent (HSETNX; the record lives
 * SN_PROVIDER_RECORD_TTL_S). SN_OK: set; SN_DECLINED: already set — *existing (may be
 * NULL) gets the recorded value (caller frees); SN_AGAIN: Redis unreachable (it may or
 * may not have been set: read it back). Any thread. */
SN_NODISCARD sn_rc_t sn_provider_record_set(sn_redis_t *redis, const char *deploy_id,
                                            const char *field, const char *value, char **existing);

/* Sets @field to @value unconditionally (status fields: "stage.status" = "success").
 * SN_OK or SN_AGAIN. Any thread. */
SN_NODISCARD sn_rc_t sn_provider_record_put(sn_redis_t *redis, const char *deploy_id,
                                            const char *field, const char *value);

#endif
