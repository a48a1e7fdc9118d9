/* GitHub REST client (API version 2022-11-28, shared/contracts/github.md): the base URL
 * and credentials from the `github:` config section; every request carries
 * Authorization: Bearer, Accept: application/vnd.github+json, X-GitHub-Api-Version and a
 * User-Agent, and has a hard timeout (request_timeout_ms).
 *
 * Auth: a token (Bearer), or a GitHub App: an RS256 JWT signed with the App's private key
 * (iat = now - 60 s, exp = now + 9 min, iss = app_id) buys an installation token
 * (POST /app/installations/{id}/access_tokens), cached until token_refresh_margin_s before
 * its expires_at and re-minted once when GitHub answers 401 to it.
 *
 * Rate limits, in the contract's decision order for a 403 or 429: `retry-after` present ->
 * wait that long; else `x-ratelimit-remaining: 0` -> wait until `x-ratelimit-reset`; else a
 * 429, or a 403 whose message says "rate limit" -> a secondary limit: wait at least
 * secondary_wait_ms (60 s), then exponentially longer; any other 403 is a permission error
 * and is NEVER retried. A wait longer than max_wait_s is not taken (the call fails with
 * SN_AGAIN at once). 5xx, timeouts and transport errors are retried with backoff for GET
 * (and for other methods only with SN_GITHUB_RETRY_UNSAFE); a 200 that is not JSON
 * (GitHub's HTML "unicorn" page) is such a failure too. At most max_attempts attempts.
 *
 * Conditional requests: a GET's 200 with an ETag is cached per URL; the next GET of that
 * URL sends If-None-Match and a 304 (which costs no rate limit) is answered from the cache.
 *
 * Redirected downloads (job logs, artifact zips): the API's 302 is not followed with the
 * token; the Location is fetched in a second request without any Authorization header.
 *
 * Threads: an sn_github_t is thread-safe (token and ETag caches are locked); each call
 * uses its own curl handle. Secrets (tokens, the JWT, the key) are never logged. */
#ifndef SN_GITHUB_H
#define SN_GITHUB_H

#include <jansson.h>

#include "sentinel/sn_common.h"
#include "sentinel/sn_config.h"

typedef struct sn_github sn_github_t;

#define SN_GITHUB_API_VERSION "2022-11-28"
#define SN_GITHUB_USER_AGENT "sentinel-ci"
#define SN_GITHUB_MESSAGE_MAX 256

/* Knobs that are not configuration (tests shorten the waits). Zero values = defaults. */
typedef struct {
    int64_t secondary_wait_ms;      /* floor of a secondary-limit wait; default 60000 */
    int64_t retry_base_ms;          /* first backoff after a 5xx / timeout; default 1000 */
    int64_t retry_cap_ms;           /* longest such backoff; default 30000 */
    int64_t token_refresh_margin_s; /* re-mint this long before expires_at; default 300 */
    size_t etag_cache_entries;      /* URLs remembered; default 256 */
    /* Polled during every wait (may be NULL): true = give up now (SN_AGAIN). */
    bool (*should_stop)(void *arg);
    void *should_stop_arg;
} sn_github_opts_t;

/* Flags of sn_github_request. */
#define SN_GITHUB_RETRY_UNSAFE 0x1u /* repeating this non-GET after a 5xx/timeout is harmless */
#define SN_GITHUB_NO_CACHE 0x2u     /* GET without the ETag cache */

/* What a call produced (caller's storage; free the contents with sn_github_response_fini). */
typedef struct {
    long status;               /* HTTP status of the final answer (200 for a 304 served from cache);
                                  0 when none arrived */
    json_t *json;              /* the parsed body (owned), NULL when there was none (204) */
    bool is_not_modified;      /* answered 304: json is the cached body */
    bool is_permission_denied; /* a 403 that is not a rate limit */
    bool is_rate_limited;      /* gave up on a rate limit (wait too long / attempts used) */
    int attempts;              /* requests sent */
    int64_t rate_remaining;    /* last x-ratelimit-remaining, -1 if absent */
    int64_t rate_reset;        /* last x-ratelimit-reset (epoch s), -1 if absent */
    char *location;            /* Location of a 3xx (owned), else NULL */
    char *link_next;           /* rel="next" URL of a Link header (owned), else NULL */
    char message[SN_GITHUB_MESSAGE_MAX]; /* GitHub's "message", or our own reason */
} sn_github_response_t;

/* A client for @cfg (borrowed: must outlive the client) and @opts (copied; NULL:
 * defaults). NULL (logged) when the config is unusable: no api_base, neither token nor a
 * complete App (app_id, installation_id, a readable RSA private_key_file). */
sn_github_t *sn_github_new(const sn_github_config_t *cfg, const sn_github_opts_t *opts);
/* Frees (cleansing the cached token and the key); NULL-safe; sets *self_p = NULL. */
void sn_github_destroy(sn_github_t **self_p);

/* Sends @method @path_or_url (a path like "/repos/o/r/statuses/SHA", or an absolute URL
 * on api_base's origin, e.g. a Link rel="next"), with @body (borrowed; NULL: none) as
 * JSON, following the rules above. Fills *resp (caller's storage, zeroed here).
 * SN_OK: a 2xx (or a 304 answered from the cache). A 3xx to the API's own origin is
 * followed (with the token); any other 3xx is SN_ERROR with resp->location set (use
 * sn_github_download for redirected blobs).
 * SN_ERROR: a permanent refusal (4xx other than rate limits, a permission 403, a 401
 * after one re-mint), resp->status and resp->message say which;
 * SN_AGAIN: transient (rate limit not waited out, 5xx, timeout, non-JSON 200) after the
 * attempts allowed. Any thread. */
SN_NODISCARD sn_rc_t sn_github_request(sn_github_t *self, const char *method,
                                       const char *path_or_url, const json_t *body, unsigned flags,
                                       sn_github_response_t *resp);

/* GETs a list, following Link rel="next" (same origin only) until absent or @max_items
 * collected. @key names the array inside a wrapped list ("jobs", "workflow_runs",
 * "artifacts"); NULL for a plain array. *items gets a new JSON array (caller decrefs).
 * Returns as sn_github_request (resp, may be NULL, describes the last page). */
SN_NODISCARD sn_rc_t sn_github_list(sn_github_t *self, const char *path, const char *key,
                                    size_t max_items, json_t **items, sn_github_response_t *resp);

/* GETs @path, which must answer a 3xx with a Location (job logs, artifact zips), then
 * GETs that Location WITHOUT any Authorization header and streams its 2xx body into @fd
 * (the caller's; written from its current offset) up to @max_bytes (more: SN_ERROR).
 * *written (may be NULL) gets the bytes written. A 410 (expired) or 404 is SN_ERROR; a
 * 2xx without a redirect is SN_ERROR (never trust a body we did not expect). Returns as
 * sn_github_request. Any thread. */
SN_NODISCARD sn_rc_t sn_github_download(sn_github_t *self, const char *path, int fd,
                                        uint64_t max_bytes, uint64_t *written,
                                        sn_github_response_t *resp);

/* The last @max_bytes of the redirected text at @path (a job log), NUL-terminated in
 * *text (caller frees), starting at a line boundary when one is in range. Returns as
 * sn_github_download (the whole log may be large: it goes through a temporary file). */
SN_NODISCARD sn_rc_t sn_github_fetch_tail(sn_github_t *self, const char *path, size_t max_bytes,
                                          char **text, sn_github_response_t *resp);

/* Frees the contents of @resp and zeroes it. NULL-safe, idempotent. */
void sn_github_response_fini(sn_github_response_t *resp);

/* @segment percent-encoded for one path segment (everything but A-Z a-z 0-9 - . _ ~), so
 * a branch "feature/x" stays one segment. Caller frees. */
char *sn_github_escape(const char *segment);

/* A fresh App JWT (header.claims.signature, RS256) for @app_id signed with the PEM private
 * key in @pem_file, iat = @now_s - 60, exp = @now_s + 540. Caller frees (and should
 * cleanse). NULL (logged) when the key cannot be read or signing fails. Any thread. */
char *sn_github_app_jwt(const char *app_id, const char *pem_file, int64_t now_s);

/* Counters (tests, metrics). */
typedef struct {
    uint64_t requests;      /* HTTP requests sent to the API (downloads' second leg excluded) */
    uint64_t not_modified;  /* 304s answered from the ETag cache */
    uint64_t tokens_minted; /* installation tokens bought */
    uint64_t rate_waits;    /* waits taken for a rate limit */
    uint64_t retries;       /* attempts after the first */
} sn_github_stats_t;
void sn_github_stats(sn_github_t *self, sn_github_stats_t *out);

#endif
