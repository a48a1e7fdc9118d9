/* HTTP client: a thin libcurl wrapper with the habits every outbound call needs. Each
 * transfer has a hard total timeout (CURLOPT_TIMEOUT_MS) and a connect timeout, runs
 * without signals (CURLOPT_NOSIGNAL), reports curl's own error text (CURLOPT_ERRORBUFFER),
 * only speaks http and https, never follows redirects unless asked, caps the response
 * body and headers it keeps, captures the response headers, and parses Retry-After
 * (delta seconds or an HTTP date, capped). The curl result and the HTTP status are kept
 * apart: sn_http_perform says whether a response arrived, the caller judges its status.
 * URLs are logged only through sn_http_redact_url (no userinfo, no query values).
 *
 * Threads: an sn_http_t (one CURL handle, kept for connection reuse) belongs to one
 * thread; the free functions are pure and may be called from any thread. */
#ifndef SN_HTTP_H
#define SN_HTTP_H

#include "sentinel/sn_common.h"

typedef struct sn_http sn_http_t;

#define SN_HTTP_DEFAULT_MAX_BODY (1024 * 1024)
#define SN_HTTP_MAX_HEADERS 100              /* response headers kept; more is an error */
#define SN_HTTP_MAX_HEADER_BYTES (64 * 1024) /* total response header bytes */
#define SN_HTTP_DEFAULT_RETRY_AFTER_CAP_MS 60000
#define SN_HTTP_ERROR_MAX 256

/* One request. Strings are borrowed for the duration of sn_http_perform. */
typedef struct {
    const char *method;         /* NULL: "GET" ("POST" when body is set) */
    const char *url;            /* http:// or https:// only */
    const char *const *headers; /* "Name: value" lines, NULL-terminated; may be NULL */
    const void *body;           /* request body (copied by curl); may be NULL */
    size_t body_len;
    int timeout_ms;         /* whole transfer; must be > 0 */
    int connect_timeout_ms; /* <= 0: timeout_ms */
    size_t max_body_bytes;  /* response body cap; 0: SN_HTTP_DEFAULT_MAX_BODY */
    bool follow_redirects;  /* at most 5, http/https only; default false */
} sn_http_request_t;

/* A response header (both strings owned by the response). */
typedef struct {
    char *name;
    char *value;
} sn_http_header_t;

/* What a transfer produced (plain value struct: the caller's storage, zeroed by
 * sn_http_perform; free the contents with sn_http_response_fini). */
typedef struct {
    long status; /* HTTP status; 0 when no response arrived */
    char *body;  /* NUL-terminated (binary-safe with body_len); never NULL after perform */
    size_t body_len;
    sn_http_header_t *headers; /* of the final response */
    size_t header_count;
    int64_t latency_ms;            /* from the start of the transfer to its end */
    int64_t retry_after_ms;        /* parsed Retry-After (capped at 60 s), -1 when absent or bad */
    bool is_timeout;               /* the transfer hit timeout_ms */
    bool is_too_large;             /* the body or the headers passed their cap: transfer aborted */
    char error[SN_HTTP_ERROR_MAX]; /* curl's error text when the transfer failed, else "" */
} sn_http_response_t;

/* A client for the calling thread (curl_global_init runs once, thread-safely, here).
 * NULL only if curl cannot make a handle (logged). */
sn_http_t *sn_http_new(void);
/* Frees; NULL-safe; sets *self_p = NULL. Owning thread only. */
void sn_http_destroy(sn_http_t **self_p);

/* Runs @req and fills *resp (caller's storage; always free with sn_http_response_fini).
 * SN_OK: a complete response arrived (whatever its status: check resp->status);
 * SN_AGAIN: transient trouble — timeout, connection refused or reset, DNS failure, a
 * partial response (resp->error says which; is_timeout for timeouts);
 * SN_ERROR: permanent — a malformed or non-http(s) URL, a bad request, a body or headers
 * over their cap (is_too_large). Failures are logged at debug level with the redacted URL;
 * the caller, which knows whether it matters, logs the outcome. Owning thread only. */
SN_NODISCARD sn_rc_t sn_http_perform(sn_http_t *self, const sn_http_request_t *req,
                                     sn_http_response_t *resp);

/* Download progress: called on the owning thread about once a second (and more often
 * while data flows) with the bytes written so far. Return false to abort the transfer. */
typedef bool(sn_http_progress_fn)(void *arg, uint64_t received);

/* As sn_http_perform, but streams the body of a 2xx response into @fd (the caller's,
 * written from its current offset, never closed) instead of memory, so an artifact of
 * gigabytes costs no heap. At most @max_bytes (> 0) are written: a body (or a
 * Content-Length) over it aborts with SN_ERROR and is_too_large. A non-2xx body is kept
 * in resp->body as usual (capped by req->max_body_bytes) for the caller to judge.
 * *written (may be NULL) gets the bytes written to @fd, also after a failure. A write
 * error on @fd (disk full) and an abort by @progress (may be NULL) are SN_AGAIN with
 * resp->error saying which. The caller checks resp->status and what arrived (a hash).
 * Owning thread only. */
SN_NODISCARD sn_rc_t sn_http_download(sn_http_t *self, const sn_http_request_t *req, int fd,
                                      uint64_t max_bytes, sn_http_progress_fn *progress,
                                      void *progress_arg, uint64_t *written,
                                      sn_http_response_t *resp);

/* Frees the contents of @resp and zeroes it. NULL-safe, idempotent. */
void sn_http_response_fini(sn_http_response_t *resp);

/* The value of the last response header named @name (case-insensitive), borrowed from
 * @resp, or NULL. */
const char *sn_http_response_header(const sn_http_response_t *resp, const char *name);

/* Parses a Retry-After value: delta seconds ("120") or an HTTP date (IMF-fixdate,
 * RFC 850 or asctime), relative to @now_unix_ms, into a delay in [0, @cap_ms] (@cap_ms
 * <= 0: SN_HTTP_DEFAULT_RETRY_AFTER_CAP_MS). A date in the past gives 0. SN_ERROR (and
 * *delay_ms untouched) for anything else: empty, negative, junk, trailing garbage. */
SN_NODISCARD sn_rc_t sn_http_parse_retry_after(const char *value, int64_t now_unix_ms,
                                               int64_t cap_ms, int64_t *delay_ms);

/* A copy of @url safe to log (caller frees): userinfo removed, every query value replaced
 * by "[redacted]" (names kept), fragment removed. Text that is not a URL is returned as
 * "[unparseable url]". NULL-safe ("(null)"). */
char *sn_http_redact_url(const char *url);

/* "scheme://authority" of @url (userinfo kept: the caller may need it for the request;
 * caller frees), or NULL if @url is not an absolute http(s) URL. */
char *sn_http_url_origin(const char *url);

#endif
