/* HTTP client over libcurl's easy interface: one handle per owning thread (reset before
 * every transfer, so its connection cache survives but no option leaks from one request
 * to the next), hard timeouts, capped bodies and headers, Retry-After, URL redaction. */
#include "sentinel/sn_http.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "sentinel/sn_log.h"

#define S_MAX_REDIRECTS 5L
#define S_USER_AGENT "sentinel/" SN_VERSION

struct sn_http {
    CURL *curl;
};

/* Transfer state shared with the curl callbacks. */
typedef struct {
    sn_http_response_t *resp;
    size_t cap;
    size_t body_alloc;
    size_t header_bytes;
    /* downloads (sn_http_download): a 2xx body goes to fd */
    CURL *curl;
    int fd; /* -1: everything in memory */
    uint64_t file_cap;
    uint64_t written;
    int is_2xx; /* -1 until the first body byte */
    int write_errno;
    sn_http_progress_fn *progress;
    void *progress_arg;
    bool is_aborted;
} s_xfer_t;

static pthread_once_t s_curl_once = PTHREAD_ONCE_INIT;
static bool s_curl_ok;

static void s_curl_init(void);
static size_t s_on_body(char *data, size_t size, size_t nmemb, void *arg);
static size_t s_on_header(char *data, size_t size, size_t nmemb, void *arg);
static int s_on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                         curl_off_t ulnow);
static sn_rc_t s_perform(sn_http_t *self, const sn_http_request_t *req, sn_http_response_t *resp,
                         s_xfer_t *x);
static void s_headers_clear(sn_http_response_t *resp);
static sn_rc_t s_classify(CURLcode code, s_xfer_t *x);
static void s_append(char **buf, size_t *len, size_t *alloc, const char *s, size_t n);
static char *s_url_part(CURLU *u, CURLUPart part);

sn_http_t *sn_http_new(void)
{
    pthread_once(&s_curl_once, s_curl_init);
    if (!s_curl_ok)
        return NULL;
    CURL *curl = curl_easy_init();
    if (!curl) {
        sn_error("http", "curl_easy_init failed");
        return NULL;
    }
    sn_http_t *self = sn_calloc(1, sizeof *self);
    self->curl = curl;
    return self;
}

void sn_http_destroy(sn_http_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_http_t *self = *self_p;
    curl_easy_cleanup(self->curl);
    free(self);
    *self_p = NULL;
}

sn_rc_t sn_http_perform(sn_http_t *self, const sn_http_request_t *req, sn_http_response_t *resp)
{
    SN_ASSERT(self && req && resp);
    s_xfer_t x = {.fd = -1};
    return s_perform(self, req, resp, &x);
}

sn_rc_t sn_http_download(sn_http_t *self, const sn_http_request_t *req, int fd, uint64_t max_bytes,
                         sn_http_progress_fn *progress, void *progress_arg, uint64_t *written,
                         sn_http_response_t *resp)
{
    SN_ASSERT(self && req && resp && fd >= 0 && max_bytes > 0);
    s_xfer_t x = {
        .fd = fd,
        .file_cap = max_bytes,
        .is_2xx = -1,
        .progress = progress,
        .progress_arg = progress_arg,
    };
    sn_rc_t rc = s_perform(self, req, resp, &x);
    if (written)
        *written = x.written;
    return rc;
}

static sn_rc_t s_perform(sn_http_t *self, const sn_http_request_t *req, sn_http_response_t *resp,
                         s_xfer_t *xp)
{
    memset(resp, 0, sizeof *resp);
    resp->retry_after_ms = -1;
    resp->body = sn_calloc(1, 1);
    if (!req->url || req->timeout_ms <= 0) {
        sn_strlcpy(resp->error, !req->url ? "no url" : "no timeout", sizeof resp->error);
        return SN_ERROR;
    }
    s_xfer_t x = *xp;
    x.resp = resp;
    x.cap = req->max_body_bytes ? req->max_body_bytes : SN_HTTP_DEFAULT_MAX_BODY;
    x.body_alloc = 1;
    x.curl = self->curl;
    CURL *c = self->curl;
    curl_easy_reset(c);
    char errbuf[CURL_ERROR_SIZE];
    errbuf[0] = '\0';
    struct curl_slist *hdrs = NULL;
    for (size_t i = 0; req->headers && req->headers[i]; i++) {
        struct curl_slist *n = curl_slist_append(hdrs, req->headers[i]);
        SN_ASSERT(n);
        hdrs = n;
    }
    int connect_ms = req->connect_timeout_ms > 0 ? req->connect_timeout_ms : req->timeout_ms;
    if (connect_ms > req->timeout_ms)
        connect_ms = req->timeout_ms;
    CURLcode code = CURLE_OK;
#define S_SET(opt, val)                                                                            \
    do {                                                                                           \
        if (code == CURLE_OK)                                                                      \
            code = curl_easy_setopt(c, opt, val);                                                  \
    } while (0)
    S_SET(CURLOPT_ERRORBUFFER, errbuf);
    S_SET(CURLOPT_NOSIGNAL, 1L);
    S_SET(CURLOPT_TIMEOUT_MS, (long)req->timeout_ms);
    S_SET(CURLOPT_CONNECTTIMEOUT_MS, (long)connect_ms);
    S_SET(CURLOPT_URL, req->url);
    S_SET(CURLOPT_PROTOCOLS_STR, "http,https");
    S_SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    S_SET(CURLOPT_FOLLOWLOCATION, req->follow_redirects ? 1L : 0L);
    S_SET(CURLOPT_MAXREDIRS, S_MAX_REDIRECTS);
    S_SET(CURLOPT_USERAGENT, S_USER_AGENT);
    S_SET(CURLOPT_MAXFILESIZE_LARGE,
          (curl_off_t)(x.fd >= 0 && x.file_cap > x.cap ? x.file_cap : x.cap));
    if (x.fd >= 0) {
        S_SET(CURLOPT_NOPROGRESS, 0L);
        S_SET(CURLOPT_XFERINFOFUNCTION, s_on_progress);
        S_SET(CURLOPT_XFERINFODATA, &x);
    }
    S_SET(CURLOPT_WRITEFUNCTION, s_on_body);
    S_SET(CURLOPT_WRITEDATA, &x);
    S_SET(CURLOPT_HEADERFUNCTION, s_on_header);
    S_SET(CURLOPT_HEADERDATA, &x);
    if (hdrs)
        S_SET(CURLOPT_HTTPHEADER, hdrs);
    if (req->body) {
        S_SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        S_SET(CURLOPT_COPYPOSTFIELDS, (const char *)req->body);
    }
    if (req->method && strcmp(req->method, "HEAD") == 0)
        S_SET(CURLOPT_NOBODY, 1L);
    else if (req->method && strcmp(req->method, "GET") != 0 &&
             !(req->body && strcmp(req->method, "POST") == 0))
        S_SET(CURLOPT_CUSTOMREQUEST, req->method);
#undef S_SET
    sn_rc_t rc;
    if (code != CURLE_OK) {
        snprintf(resp->error, sizeof resp->error, "setup: %s", curl_easy_strerror(code));
        rc = SN_ERROR;
    } else {
        int64_t t0 = sn_mono_us();
        code = curl_easy_perform(c);
        resp->latency_ms = (sn_mono_us() - t0 + 500) / 1000;
        long status = 0;
        if (curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK)
            resp->status = status;
        if (code != CURLE_OK)
            snprintf(resp->error, sizeof resp->error, "%s",
                     errbuf[0] ? errbuf : curl_easy_strerror(code));
        rc = s_classify(code, &x);
    }
    curl_slist_free_all(hdrs);
    xp->written = x.written;
    /* curl keeps pointers to our buffers until the next reset. */
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    if (rc != SN_OK) {
        char *safe = sn_http_redact_url(req->url);
        sn_debug("http", "request failed url=%s rc=%s error=\"%s\"", safe, sn_rc_str(rc),
                 resp->error);
        free(safe);
        return rc;
    }
    const char *ra = sn_http_response_header(resp, "Retry-After");
    int64_t delay = 0;
    if (ra && sn_http_parse_retry_after(ra, sn_wall_ms(), 0, &delay) == SN_OK)
        resp->retry_after_ms = delay;
    return SN_OK;
}

void sn_http_response_fini(sn_http_response_t *resp)
{
    if (!resp)
        return;
    s_headers_clear(resp);
    free(resp->body);
    memset(resp, 0, sizeof *resp);
    resp->retry_after_ms = -1;
}

const char *sn_http_response_header(const sn_http_response_t *resp, const char *name)
{
    if (!resp || !name)
        return NULL;
    for (size_t i = resp->header_count; i-- > 0;)
        if (strcasecmp(resp->headers[i].name, name) == 0)
            return resp->headers[i].value;
    return NULL;
}

sn_rc_t sn_http_parse_retry_after(const char *value, int64_t now_unix_ms, int64_t cap_ms,
                                  int64_t *delay_ms)
{
    SN_ASSERT(delay_ms);
    if (cap_ms <= 0)
        cap_ms = SN_HTTP_DEFAULT_RETRY_AFTER_CAP_MS;
    if (!value)
        return SN_ERROR;
    while (*value == ' ' || *value == '\t')
        value++;
    size_t len = strlen(value);
    while (len > 0 && (value[len - 1] == ' ' || value[len - 1] == '\t'))
        len--;
    if (len == 0 || len > 64)
        return SN_ERROR;
    char buf[65];
    memcpy(buf, value, len);
    buf[len] = '\0';
    if (isdigit((unsigned char)buf[0])) {
        /* delta-seconds: 1*DIGIT, nothing else. Huge values saturate at the cap. */
        int64_t secs = 0;
        for (size_t i = 0; i < len; i++) {
            if (!isdigit((unsigned char)buf[i]))
                return SN_ERROR;
            if (secs <= cap_ms / 1000)
                secs = secs * 10 + (buf[i] - '0');
        }
        *delay_ms = secs > cap_ms / 1000 ? cap_ms : secs * 1000;
        if (*delay_ms > cap_ms)
            *delay_ms = cap_ms;
        return SN_OK;
    }
    /* HTTP-date: all three accepted forms start with a day name. */
    if (!isalpha((unsigned char)buf[0]))
        return SN_ERROR;
    time_t at = curl_getdate(buf, NULL);
    if (at == (time_t)-1)
        return SN_ERROR;
    int64_t delta = (int64_t)at * 1000 - now_unix_ms;
    if (delta < 0)
        delta = 0;
    *delay_ms = delta > cap_ms ? cap_ms : delta;
    return SN_OK;
}

char *sn_http_redact_url(const char *url)
{
    if (!url)
        return sn_strdup("(null)");
    CURLU *u = curl_url();
    SN_ASSERT(u);
    char *out = NULL;
    if (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK) {
        curl_url_cleanup(u);
        return sn_strdup("[unparseable url]");
    }
    char *scheme = s_url_part(u, CURLUPART_SCHEME);
    char *host = s_url_part(u, CURLUPART_HOST);
    char *port = s_url_part(u, CURLUPART_PORT);
    char *path = s_url_part(u, CURLUPART_PATH);
    char *query = s_url_part(u, CURLUPART_QUERY);
    size_t len = 0, alloc = 0;
    s_append(&out, &len, &alloc, scheme ? scheme : "", scheme ? strlen(scheme) : 0);
    s_append(&out, &len, &alloc, "://", 3);
    if (host)
        s_append(&out, &len, &alloc, host, strlen(host));
    if (port) {
        s_append(&out, &len, &alloc, ":", 1);
        s_append(&out, &len, &alloc, port, strlen(port));
    }
    if (path)
        s_append(&out, &len, &alloc, path, strlen(path));
    if (query && *query) {
        s_append(&out, &len, &alloc, "?", 1);
        const char *p = query;
        bool first = true;
        while (*p) {
            size_t n = strcspn(p, "&");
            size_t name_len = strcspn(p, "=&");
            if (!first)
                s_append(&out, &len, &alloc, "&", 1);
            first = false;
            s_append(&out, &len, &alloc, p, name_len);
            if (name_len < n)
                s_append(&out, &len, &alloc, "=[redacted]", 11);
            p += n;
            if (*p == '&')
                p++;
        }
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(query);
    curl_url_cleanup(u);
    return out;
}

char *sn_http_url_origin(const char *url)
{
    if (!url)
        return NULL;
    CURLU *u = curl_url();
    SN_ASSERT(u);
    char *out = NULL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK) {
        char *scheme = s_url_part(u, CURLUPART_SCHEME);
        if (scheme && (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0)) {
            /* Drop everything after the authority; curl re-renders the rest for us. */
            if (curl_url_set(u, CURLUPART_PATH, "/", 0) == CURLUE_OK &&
                curl_url_set(u, CURLUPART_QUERY, NULL, 0) == CURLUE_OK &&
                curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0) == CURLUE_OK) {
                char *full = s_url_part(u, CURLUPART_URL);
                if (full) {
                    size_t n = strlen(full);
                    if (n > 0 && full[n - 1] == '/')
                        n--;
                    out = sn_strndup(full, n);
                    curl_free(full);
                }
            }
        }
        curl_free(scheme);
    }
    curl_url_cleanup(u);
    return out;
}

/* ---- statics ---------------------------------------------------------------------------- */

static void s_curl_init(void)
{
    CURLcode code = curl_global_init(CURL_GLOBAL_DEFAULT);
    s_curl_ok = code == CURLE_OK;
    if (!s_curl_ok)
        sn_error("http", "curl_global_init failed: %s", curl_easy_strerror(code));
}

/* A download's 2xx body: straight to the file, capped. */
static size_t s_on_file_body(s_xfer_t *x, const char *data, size_t n)
{
    if (n > x->file_cap - x->written) {
        x->resp->is_too_large = true;
        return 0;
    }
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(x->fd, data + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            x->write_errno = w < 0 ? errno : EIO;
            x->written += off;
            return 0;
        }
        off += (size_t)w;
    }
    x->written += n;
    return n;
}

static int s_on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                         curl_off_t ulnow)
{
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    s_xfer_t *x = arg;
    if (x->progress && !x->progress(x->progress_arg, x->written)) {
        x->is_aborted = true;
        return 1; /* CURLE_ABORTED_BY_CALLBACK */
    }
    return 0;
}

static size_t s_on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    s_xfer_t *x = arg;
    sn_http_response_t *r = x->resp;
    size_t n = size * nmemb;
    if (x->fd >= 0) {
        if (x->is_2xx < 0) {
            long status = 0;
            curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &status);
            x->is_2xx = status >= 200 && status < 300;
        }
        if (x->is_2xx)
            return s_on_file_body(x, data, n);
    }
    if (n > x->cap - r->body_len) {
        r->is_too_large = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (r->body_len + n + 1 > x->body_alloc) {
        size_t want = x->body_alloc * 2;
        while (want < r->body_len + n + 1)
            want *= 2;
        r->body = sn_realloc(r->body, want);
        x->body_alloc = want;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return n;
}

static size_t s_on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    s_xfer_t *x = arg;
    sn_http_response_t *r = x->resp;
    size_t n = size * nmemb;
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        /* A new response (after a redirect or 100 Continue): keep only the last one's. */
        s_headers_clear(r);
        x->header_bytes = 0;
    }
    x->header_bytes += n;
    if (x->header_bytes > SN_HTTP_MAX_HEADER_BYTES) {
        r->is_too_large = true;
        return 0;
    }
    const char *colon = memchr(data, ':', n);
    if (!colon || colon == data)
        return n; /* status line, blank line or junk: nothing to keep */
    if (r->header_count >= SN_HTTP_MAX_HEADERS) {
        r->is_too_large = true;
        return 0;
    }
    size_t name_len = (size_t)(colon - data);
    const char *v = colon + 1;
    const char *end = data + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    r->headers = sn_realloc(r->headers, (r->header_count + 1) * sizeof *r->headers);
    r->headers[r->header_count].name = sn_strndup(data, name_len);
    r->headers[r->header_count].value = sn_strndup(v, (size_t)(end - v));
    r->header_count++;
    return n;
}

static void s_headers_clear(sn_http_response_t *resp)
{
    for (size_t i = 0; i < resp->header_count; i++) {
        free(resp->headers[i].name);
        free(resp->headers[i].value);
    }
    free(resp->headers);
    resp->headers = NULL;
    resp->header_count = 0;
}

static sn_rc_t s_classify(CURLcode code, s_xfer_t *x)
{
    sn_http_response_t *r = x->resp;
    switch (code) {
    case CURLE_OK:
        return SN_OK;
    case CURLE_OPERATION_TIMEDOUT:
        r->is_timeout = true;
        return SN_AGAIN;
    case CURLE_FILESIZE_EXCEEDED:
        r->is_too_large = true;
        snprintf(r->error, sizeof r->error, "response body over %llu bytes",
                 (unsigned long long)(x->fd >= 0 && x->file_cap > x->cap ? x->file_cap : x->cap));
        return SN_ERROR;
    case CURLE_WRITE_ERROR:
        if (r->is_too_large) {
            snprintf(r->error, sizeof r->error, "response over its cap (%llu body bytes)",
                     (unsigned long long)(x->fd >= 0 && x->is_2xx == 1 ? x->file_cap : x->cap));
            return SN_ERROR;
        }
        if (x->write_errno)
            snprintf(r->error, sizeof r->error, "cannot write the body: %s",
                     strerror(x->write_errno));
        return SN_AGAIN;
    case CURLE_ABORTED_BY_CALLBACK:
        if (x->is_aborted)
            snprintf(r->error, sizeof r->error, "aborted by the caller");
        return SN_AGAIN;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return SN_AGAIN;
    default:
        return SN_ERROR;
    }
}

static void s_append(char **buf, size_t *len, size_t *alloc, const char *s, size_t n)
{
    if (*len + n + 1 > *alloc) {
        size_t want = *alloc ? *alloc * 2 : 64;
        while (want < *len + n + 1)
            want *= 2;
        *buf = sn_realloc(*buf, want);
        *alloc = want;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
}

/* A URL part (curl_free it) or NULL when absent. */
static char *s_url_part(CURLU *u, CURLUPart part)
{
    char *v = NULL;
    if (curl_url_get(u, part, &v, 0) != CURLUE_OK)
        return NULL;
    return v;
}
