/* GitHub REST client: one retry loop that applies the contract's rate-limit rules, the
 * App installation-token cache, the per-URL ETag cache and the two-leg download of
 * redirected blobs (see sn_github.h for the contract).
 *
 * Why the rules look the way they do: GitHub answers both primary and secondary limits
 * with 403 or 429, and also answers a permission problem with 403; only the headers and
 * the message tell them apart, and retrying a permission 403 just burns the budget. A
 * request refused by a rate limit was not executed, so it is safe to repeat whatever its
 * method; a POST that met a 5xx or a timeout may have been executed, so only the caller
 * can say whether repeating it is harmless. */
#include "sentinel/sn_github.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sentinel/sn_backoff.h"
#include "sentinel/sn_crypto.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_log.h"

#define S_MODULE "github"
#define S_DEFAULT_TIMEOUT_MS 15000
#define S_DEFAULT_ATTEMPTS 5
#define S_DEFAULT_MAX_WAIT_S 900
#define S_SECONDARY_WAIT_MS 60000
#define S_RETRY_BASE_MS 1000
#define S_RETRY_CAP_MS 30000
#define S_REFRESH_MARGIN_S 300
#define S_ETAG_ENTRIES 256
#define S_MAX_BODY (16 * 1024 * 1024)
#define S_SLEEP_SLICE_MS 50
#define S_JWT_BACKDATE_S 60
#define S_JWT_LIFETIME_S 540

typedef struct {
    char *url;
    char *etag;
    char *body;
    uint64_t used; /* LRU clock */
} s_etag_t;

struct sn_github {
    const sn_github_config_t *cfg;
    sn_github_opts_t opts;
    char *base;   /* api_base without a trailing slash */
    char *origin; /* scheme://authority of base */
    int timeout_ms;
    int max_attempts;
    int64_t max_wait_ms;
    bool is_app;
    pthread_mutex_t lock; /* token, etags, stats */
    pthread_mutex_t mint_lock;
    char *inst_token;
    int64_t inst_expires_s;
    s_etag_t *etags;
    size_t etag_count;
    uint64_t etag_clock;
    sn_github_stats_t stats;
};

/* One attempt loop's request. */
typedef struct {
    const char *method;
    const char *url;
    const char *body; /* JSON text or NULL */
    unsigned flags;
    const char *jwt;    /* App endpoints: this instead of the token */
    bool want_redirect; /* a 3xx is the answer (downloads) */
} s_call_t;

static sn_rc_t s_perform(sn_github_t *self, const s_call_t *call, sn_github_response_t *resp);
static sn_rc_t s_token(sn_github_t *self, char **token);
static void s_forget_token(sn_github_t *self);
static bool s_sleep(sn_github_t *self, int64_t ms);
static char *s_url(sn_github_t *self, const char *path_or_url);
static bool s_same_origin(sn_github_t *self, const char *url);
static char *s_etag_lookup(sn_github_t *self, const char *url, char **body);
static void s_etag_store(sn_github_t *self, const char *url, const char *etag, const char *body);
static char *s_link_next(const char *link);
static bool s_is_json_type(const char *ctype);
static char *s_b64url(const unsigned char *data, size_t len);
static bool s_parse_iso8601(const char *s, int64_t *out);
static int64_t s_header_i64(const sn_http_response_t *r, const char *name);

/* ---- lifecycle ------------------------------------------------------------------------- */

sn_github_t *sn_github_new(const sn_github_config_t *cfg, const sn_github_opts_t *opts)
{
    SN_ASSERT(cfg);
    if (!cfg->api_base || !cfg->api_base[0]) {
        sn_error(S_MODULE, "github.api_base is not set");
        return NULL;
    }
    bool has_token = cfg->token && cfg->token[0];
    bool has_app = cfg->app_id && cfg->app_id[0] && cfg->installation_id &&
                   cfg->installation_id[0] && cfg->private_key_file && cfg->private_key_file[0];
    if (!has_token && !has_app) {
        sn_error(S_MODULE, "github: neither a token nor a complete App (app_id, "
                           "installation_id, private_key_file) is configured");
        return NULL;
    }
    char *origin = sn_http_url_origin(cfg->api_base);
    if (!origin) {
        char *red = sn_http_redact_url(cfg->api_base);
        sn_error(S_MODULE, "github.api_base %s is not an http(s) URL", red);
        free(red);
        return NULL;
    }
    if (!has_token) { /* check the key now: a bad key file is a config error, not a retry */
        char *jwt = sn_github_app_jwt(cfg->app_id, cfg->private_key_file, sn_wall_ms() / 1000);
        if (!jwt) {
            free(origin);
            return NULL;
        }
        sn_crypto_cleanse(jwt, strlen(jwt));
        free(jwt);
    } else {
        sn_log_add_secret(cfg->token);
    }
    sn_github_t *self = sn_calloc(1, sizeof *self);
    self->cfg = cfg;
    if (opts)
        self->opts = *opts;
    if (self->opts.secondary_wait_ms <= 0)
        self->opts.secondary_wait_ms = S_SECONDARY_WAIT_MS;
    if (self->opts.retry_base_ms <= 0)
        self->opts.retry_base_ms = S_RETRY_BASE_MS;
    if (self->opts.retry_cap_ms <= 0)
        self->opts.retry_cap_ms = S_RETRY_CAP_MS;
    if (self->opts.token_refresh_margin_s <= 0)
        self->opts.token_refresh_margin_s = S_REFRESH_MARGIN_S;
    if (self->opts.etag_cache_entries == 0)
        self->opts.etag_cache_entries = S_ETAG_ENTRIES;
    self->base = sn_strdup(cfg->api_base);
    size_t n = strlen(self->base);
    while (n > 0 && self->base[n - 1] == '/')
        self->base[--n] = '\0';
    self->origin = origin;
    self->timeout_ms = cfg->request_timeout_ms > 0 ? cfg->request_timeout_ms : S_DEFAULT_TIMEOUT_MS;
    self->max_attempts = cfg->max_attempts > 0 ? cfg->max_attempts : S_DEFAULT_ATTEMPTS;
    self->max_wait_ms =
        (int64_t)(cfg->max_wait_s > 0 ? cfg->max_wait_s : S_DEFAULT_MAX_WAIT_S) * 1000;
    self->is_app = !has_token;
    self->etags = sn_calloc(self->opts.etag_cache_entries, sizeof *self->etags);
    pthread_mutex_init(&self->lock, NULL);
    pthread_mutex_init(&self->mint_lock, NULL);
    return self;
}

void sn_github_destroy(sn_github_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_github_t *self = *self_p;
    if (self->inst_token) {
        sn_crypto_cleanse(self->inst_token, strlen(self->inst_token));
        free(self->inst_token);
    }
    for (size_t i = 0; i < self->etag_count; i++) {
        free(self->etags[i].url);
        free(self->etags[i].etag);
        free(self->etags[i].body);
    }
    free(self->etags);
    free(self->base);
    free(self->origin);
    pthread_mutex_destroy(&self->lock);
    pthread_mutex_destroy(&self->mint_lock);
    free(self);
    *self_p = NULL;
}

/* ---- calls ------------------------------------------------------------------------------ */

sn_rc_t sn_github_request(sn_github_t *self, const char *method, const char *path_or_url,
                          const json_t *body, unsigned flags, sn_github_response_t *resp)
{
    SN_ASSERT(self && method && path_or_url && resp);
    memset(resp, 0, sizeof *resp);
    resp->rate_remaining = resp->rate_reset = -1;
    char *url = s_url(self, path_or_url);
    if (!url) {
        snprintf(resp->message, sizeof resp->message, "not a path on the API's origin");
        return SN_ERROR;
    }
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    s_call_t call = {.method = method, .url = url, .body = text, .flags = flags};
    sn_rc_t rc = s_perform(self, &call, resp);
    free(text);
    free(url);
    return rc;
}

sn_rc_t sn_github_list(sn_github_t *self, const char *path, const char *key, size_t max_items,
                       json_t **items, sn_github_response_t *resp)
{
    SN_ASSERT(self && path && items);
    sn_github_response_t local;
    sn_github_response_t *r = resp ? resp : &local;
    json_t *all = json_array();
    char *next = sn_strdup(path);
    sn_rc_t rc = SN_OK;
    while (next && json_array_size(all) < max_items) {
        rc = sn_github_request(self, "GET", next, NULL, 0, r);
        free(next);
        next = NULL;
        if (rc != SN_OK)
            break;
        json_t *arr = key ? json_object_get(r->json, key) : r->json;
        if (!json_is_array(arr)) {
            snprintf(r->message, sizeof r->message, "list without %s array", key ? key : "an");
            rc = SN_ERROR;
            break;
        }
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v)
        {
            if (json_array_size(all) >= max_items)
                break;
            json_array_append(all, v);
        }
        if (r->link_next && s_same_origin(self, r->link_next))
            next = sn_strdup(r->link_next);
        if (next) /* the last page's response stays for the caller */
            sn_github_response_fini(r);
    }
    free(next);
    if (!resp)
        sn_github_response_fini(&local);
    if (rc != SN_OK) {
        json_decref(all);
        *items = NULL;
        return rc;
    }
    *items = all;
    return SN_OK;
}

sn_rc_t sn_github_download(sn_github_t *self, const char *path, int fd, uint64_t max_bytes,
                           uint64_t *written, sn_github_response_t *resp)
{
    SN_ASSERT(self && path && fd >= 0 && max_bytes > 0 && resp);
    if (written)
        *written = 0;
    off_t start = lseek(fd, 0, SEEK_CUR);
    char *url = s_url(self, path);
    memset(resp, 0, sizeof *resp);
    if (!url) {
        snprintf(resp->message, sizeof resp->message, "not a path on the API's origin");
        return SN_ERROR;
    }
    sn_rc_t rc = SN_AGAIN;
    sn_backoff_t bo;
    sn_backoff_init(&bo, self->opts.retry_base_ms, self->opts.retry_cap_ms);
    for (int leg = 1; leg <= self->max_attempts; leg++) {
        sn_github_response_fini(resp);
        resp->rate_remaining = resp->rate_reset = -1;
        s_call_t call = {
            .method = "GET", .url = url, .want_redirect = true, .flags = SN_GITHUB_NO_CACHE};
        rc = s_perform(self, &call, resp);
        if (rc != SN_OK)
            break;
        if (!resp->location) {
            snprintf(resp->message, sizeof resp->message, "expected a redirect, got status %ld",
                     resp->status);
            rc = SN_ERROR;
            break;
        }
        /* The second leg: another host, short-lived URL, NO Authorization header. */
        const char *hdrs[] = {"User-Agent: " SN_GITHUB_USER_AGENT, "Accept: */*", NULL};
        sn_http_request_t req = {.method = "GET",
                                 .url = resp->location,
                                 .headers = hdrs,
                                 .timeout_ms = self->timeout_ms * 4,
                                 .connect_timeout_ms = self->timeout_ms};
        if (start >= 0 && (lseek(fd, start, SEEK_SET) < 0 || ftruncate(fd, start) != 0)) {
            snprintf(resp->message, sizeof resp->message, "cannot rewind the output: %s",
                     strerror(errno));
            rc = SN_ERROR;
            break;
        }
        sn_http_t *http = sn_http_new();
        if (!http) {
            rc = SN_AGAIN;
            break;
        }
        sn_http_response_t hr;
        uint64_t n = 0;
        sn_rc_t hrc = sn_http_download(http, &req, fd, max_bytes, NULL, NULL, &n, &hr);
        sn_http_destroy(&http);
        if (written)
            *written = n;
        char *red = sn_http_redact_url(resp->location);
        if (hrc == SN_OK && hr.status >= 200 && hr.status < 300) {
            resp->status = hr.status;
            sn_http_response_fini(&hr);
            free(red);
            rc = SN_OK;
            break;
        }
        if (hrc == SN_ERROR || (hrc == SN_OK && hr.status >= 400 && hr.status < 500)) {
            /* too large, or the blob host refused: an expired link is worth one more leg */
            sn_warn(S_MODULE, "download of %s failed: %s status=%ld", red,
                    hr.error[0] ? hr.error : "refused", hr.status);
            resp->status = hr.status;
            snprintf(resp->message, sizeof resp->message, "download refused (status %ld%s)",
                     hr.status, hr.is_too_large ? ", too large" : "");
            rc = hr.is_too_large || hr.status != 403 ? SN_ERROR : SN_AGAIN;
        } else {
            resp->status = hr.status;
            snprintf(resp->message, sizeof resp->message, "download failed: %.200s",
                     hr.error[0] ? hr.error : "server error");
            rc = SN_AGAIN;
        }
        sn_http_response_fini(&hr);
        free(red);
        if (rc == SN_ERROR || leg == self->max_attempts)
            break;
        if (!s_sleep(self, sn_backoff_next(&bo)))
            break;
    }
    free(url);
    return rc;
}

sn_rc_t sn_github_fetch_tail(sn_github_t *self, const char *path, size_t max_bytes, char **text,
                             sn_github_response_t *resp)
{
    SN_ASSERT(self && path && text && max_bytes > 0);
    *text = NULL;
    FILE *f = tmpfile();
    if (!f) {
        memset(resp, 0, sizeof *resp);
        sn_error(S_MODULE, "tmpfile: %s", strerror(errno));
        snprintf(resp->message, sizeof resp->message, "no temporary file");
        return SN_AGAIN;
    }
    uint64_t n = 0;
    sn_rc_t rc = sn_github_download(self, path, fileno(f), (uint64_t)256 * 1024 * 1024, &n, resp);
    if (rc == SN_OK) {
        uint64_t from = n > max_bytes ? n - max_bytes : 0;
        size_t len = (size_t)(n - from);
        char *buf = sn_malloc(len + 1);
        ssize_t got = pread(fileno(f), buf, len, (off_t)from);
        if (got < 0 || (size_t)got != len) {
            free(buf);
            snprintf(resp->message, sizeof resp->message, "cannot read the log back");
            rc = SN_AGAIN;
        } else {
            buf[len] = '\0';
            size_t skip = 0;
            if (from > 0) { /* start at a line boundary when there is one */
                char *nl = memchr(buf, '\n', len);
                if (nl && (size_t)(nl - buf) + 1 < len)
                    skip = (size_t)(nl - buf) + 1;
            }
            if (skip)
                memmove(buf, buf + skip, len - skip + 1);
            *text = buf;
        }
    }
    fclose(f);
    return rc;
}

void sn_github_response_fini(sn_github_response_t *resp)
{
    if (!resp)
        return;
    json_decref(resp->json);
    free(resp->location);
    free(resp->link_next);
    memset(resp, 0, sizeof *resp);
}

char *sn_github_escape(const char *segment)
{
    SN_ASSERT(segment);
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(segment);
    char *out = sn_malloc(3 * n + 1);
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)segment[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            out[j++] = (char)c;
        } else {
            out[j++] = '%';
            out[j++] = hex[c >> 4];
            out[j++] = hex[c & 15];
        }
    }
    out[j] = '\0';
    return out;
}

char *sn_github_app_jwt(const char *app_id, const char *pem_file, int64_t now_s)
{
    SN_ASSERT(app_id && pem_file);
    FILE *f = fopen(pem_file, "r");
    if (!f) {
        sn_error(S_MODULE, "cannot open the App private key %s: %s", pem_file, strerror(errno));
        return NULL;
    }
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!key || EVP_PKEY_base_id(key) != EVP_PKEY_RSA) {
        unsigned long e = ERR_get_error();
        sn_error(S_MODULE, "the App private key %s is not an RSA PEM key: %s", pem_file,
                 e ? ERR_reason_error_string(e) : "wrong key type");
        ERR_clear_error();
        EVP_PKEY_free(key);
        return NULL;
    }
    const char *header = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
    json_t *claims = json_pack("{s:I,s:I,s:s}", "iat", (json_int_t)(now_s - S_JWT_BACKDATE_S),
                               "exp", (json_int_t)(now_s + S_JWT_LIFETIME_S), "iss", app_id);
    char *ctext = json_dumps(claims, JSON_COMPACT);
    json_decref(claims);
    char *h64 = s_b64url((const unsigned char *)header, strlen(header));
    char *c64 = s_b64url((const unsigned char *)ctext, strlen(ctext));
    free(ctext);
    char *input = sn_strdupf("%s.%s", h64, c64);
    free(h64);
    free(c64);
    char *jwt = NULL;
    unsigned char *sig = NULL;
    size_t sig_len = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(md, NULL, &sig_len, (const unsigned char *)input, strlen(input)) != 1)
        goto fail;
    sig = sn_malloc(sig_len);
    if (EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)input, strlen(input)) != 1)
        goto fail;
    char *s64 = s_b64url(sig, sig_len);
    jwt = sn_strdupf("%s.%s", input, s64);
    free(s64);
    goto out;
fail:;
    unsigned long e = ERR_get_error();
    sn_error(S_MODULE, "cannot sign the App JWT: %s", e ? ERR_reason_error_string(e) : "?");
    ERR_clear_error();
out:
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    free(sig);
    free(input);
    return jwt;
}

void sn_github_stats(sn_github_t *self, sn_github_stats_t *out)
{
    SN_ASSERT(self && out);
    pthread_mutex_lock(&self->lock);
    *out = self->stats;
    pthread_mutex_unlock(&self->lock);
}

/* ---- the attempt loop ------------------------------------------------------------------- */

static void s_count(sn_github_t *self, uint64_t *field)
{
    pthread_mutex_lock(&self->lock);
    (*field)++;
    pthread_mutex_unlock(&self->lock);
}

/* The rate-limit wait for a 403/429 in ms; -1: not a rate limit (a permission error). */
static int64_t s_rate_wait(sn_github_t *self, const sn_http_response_t *hr,
                           const sn_github_response_t *resp, int *secondary_count)
{
    const char *ra = sn_http_response_header(hr, "retry-after");
    if (ra) {
        int64_t d = 0;
        if (sn_http_parse_retry_after(ra, sn_wall_ms(), self->max_wait_ms + 1000, &d) == SN_OK)
            return d;
    }
    if (resp->rate_remaining == 0 && resp->rate_reset > 0) {
        int64_t d = resp->rate_reset * 1000 - sn_wall_ms() + 1000; /* reset is whole seconds */
        return d > 0 ? d : 0;
    }
    if (hr->status == 429 || strcasestr(resp->message, "rate limit")) {
        int k = (*secondary_count)++;
        int64_t d = self->opts.secondary_wait_ms;
        for (int i = 0; i < k && d <= self->max_wait_ms; i++)
            d *= 2;
        return d;
    }
    return -1;
}

static sn_rc_t s_perform(sn_github_t *self, const s_call_t *call, sn_github_response_t *resp)
{
    bool is_get = strcmp(call->method, "GET") == 0 || strcmp(call->method, "HEAD") == 0;
    bool may_repeat = is_get || (call->flags & SN_GITHUB_RETRY_UNSAFE);
    bool use_cache = strcmp(call->method, "GET") == 0 && !(call->flags & SN_GITHUB_NO_CACHE);
    sn_backoff_t bo;
    sn_backoff_init(&bo, self->opts.retry_base_ms, self->opts.retry_cap_ms);
    int secondary_count = 0;
    bool has_reminted = false;
    char *url = sn_strdup(call->url);
    char *red = sn_http_redact_url(url);
    sn_http_t *http = sn_http_new();
    sn_rc_t rc = SN_AGAIN;
    if (!http) {
        snprintf(resp->message, sizeof resp->message, "no http client");
        goto out;
    }
    for (int attempt = 1; attempt <= self->max_attempts; attempt++) {
        char *token = NULL;
        if (call->jwt) {
            token = sn_strdup(call->jwt);
        } else {
            sn_rc_t trc = s_token(self, &token);
            if (trc != SN_OK) {
                snprintf(resp->message, sizeof resp->message, "no installation token");
                rc = trc;
                goto out;
            }
        }
        char *auth = sn_strdupf("Authorization: Bearer %s", token);
        char *cached_body = NULL;
        char *etag = use_cache ? s_etag_lookup(self, url, &cached_body) : NULL;
        char *inm = etag ? sn_strdupf("If-None-Match: %s", etag) : NULL;
        const char *hdrs[8];
        size_t nh = 0;
        hdrs[nh++] = auth;
        hdrs[nh++] = "Accept: application/vnd.github+json";
        hdrs[nh++] = "X-GitHub-Api-Version: " SN_GITHUB_API_VERSION;
        hdrs[nh++] = "User-Agent: " SN_GITHUB_USER_AGENT;
        if (call->body)
            hdrs[nh++] = "Content-Type: application/json";
        if (inm)
            hdrs[nh++] = inm;
        hdrs[nh] = NULL;
        sn_http_request_t req = {.method = call->method,
                                 .url = url,
                                 .headers = hdrs,
                                 .body = call->body,
                                 .body_len = call->body ? strlen(call->body) : 0,
                                 .timeout_ms = self->timeout_ms,
                                 .max_body_bytes = S_MAX_BODY};
        sn_http_response_t hr;
        sn_rc_t hrc = sn_http_perform(http, &req, &hr);
        sn_crypto_cleanse(auth, strlen(auth));
        free(auth);
        sn_crypto_cleanse(token, strlen(token));
        free(token);
        free(inm);
        free(etag);
        resp->attempts = attempt;
        if (attempt > 1)
            s_count(self, &self->stats.retries);
        s_count(self, &self->stats.requests);
        int64_t wait_ms = -1;
        if (hrc != SN_OK) {
            resp->status = 0;
            snprintf(resp->message, sizeof resp->message, "%s",
                     hr.is_timeout ? "timeout" : (hr.error[0] ? hr.error : "transport error"));
            sn_http_response_fini(&hr);
            free(cached_body);
            rc = hrc == SN_ERROR && !hr.is_timeout ? SN_ERROR : SN_AGAIN;
            if (rc == SN_ERROR || !may_repeat)
                goto out;
            sn_warn(S_MODULE, "%s %s: %s (attempt %d/%d)", call->method, red, resp->message,
                    attempt, self->max_attempts);
            wait_ms = sn_backoff_next(&bo);
            goto again;
        }
        resp->status = hr.status;
        resp->rate_remaining = s_header_i64(&hr, "x-ratelimit-remaining");
        resp->rate_reset = s_header_i64(&hr, "x-ratelimit-reset");
        json_decref(resp->json);
        resp->json = NULL;
        resp->message[0] = '\0';
        if (hr.status == 304 && cached_body) {
            resp->json = json_loads(cached_body, 0, NULL);
            free(cached_body);
            sn_http_response_fini(&hr);
            if (!resp->json) { /* cannot happen: only parsed bodies are cached */
                snprintf(resp->message, sizeof resp->message, "cached body unreadable");
                rc = SN_ERROR;
                goto out;
            }
            resp->status = 200;
            resp->is_not_modified = true;
            s_count(self, &self->stats.not_modified);
            rc = SN_OK;
            goto out;
        }
        free(cached_body);
        const char *ctype = sn_http_response_header(&hr, "content-type");
        if (hr.body_len > 0 && s_is_json_type(ctype)) {
            resp->json = json_loadb(hr.body, hr.body_len, 0, NULL);
            json_t *m = json_object_get(resp->json, "message");
            if (json_is_string(m))
                snprintf(resp->message, sizeof resp->message, "%s", json_string_value(m));
        }
        if (hr.status >= 200 && hr.status < 300) {
            bool has_body = hr.body_len > 0 && hr.status != 204;
            if (has_body && !resp->json) {
                /* HTML (the unicorn page) or garbage with 200: not an answer */
                snprintf(resp->message, sizeof resp->message, "status %ld without a JSON body",
                         hr.status);
                sn_warn(S_MODULE, "%s %s: %s (attempt %d/%d)", call->method, red, resp->message,
                        attempt, self->max_attempts);
                sn_http_response_fini(&hr);
                rc = SN_AGAIN;
                if (!may_repeat)
                    goto out;
                wait_ms = sn_backoff_next(&bo);
                goto again;
            }
            const char *link = sn_http_response_header(&hr, "link");
            free(resp->link_next);
            resp->link_next = link ? s_link_next(link) : NULL;
            const char *et = sn_http_response_header(&hr, "etag");
            if (use_cache && et && hr.status == 200 && resp->json)
                s_etag_store(self, url, et, hr.body);
            sn_http_response_fini(&hr);
            rc = SN_OK;
            goto out;
        }
        if (hr.status >= 300 && hr.status < 400) {
            const char *loc = sn_http_response_header(&hr, "location");
            free(resp->location);
            resp->location = loc ? sn_strdup(loc) : NULL;
            sn_http_response_fini(&hr);
            if (call->want_redirect && resp->location) {
                rc = SN_OK;
                goto out;
            }
            if (resp->location && s_same_origin(self, resp->location) &&
                resp->status != 304) { /* a moved API resource: ask there, with the token */
                free(url);
                url = sn_strdup(resp->location);
                continue;
            }
            snprintf(resp->message, sizeof resp->message, "unexpected redirect (status %ld)",
                     resp->status);
            rc = SN_ERROR;
            goto out;
        }
        if (hr.status == 401 && self->is_app && !call->jwt && !has_reminted) {
            has_reminted = true; /* the installation token expired or was revoked */
            s_forget_token(self);
            sn_http_response_fini(&hr);
            sn_info(S_MODULE, "%s %s: 401 with the installation token; minting a new one",
                    call->method, red);
            continue;
        }
        if (hr.status == 403 || hr.status == 429) {
            wait_ms = s_rate_wait(self, &hr, resp, &secondary_count);
            sn_http_response_fini(&hr);
            if (wait_ms < 0) {
                resp->is_permission_denied = true;
                sn_warn(S_MODULE, "%s %s: permission denied (403: %s); not retried", call->method,
                        red, resp->message);
                rc = SN_ERROR;
                goto out;
            }
            rc = SN_AGAIN;
            if (wait_ms > self->max_wait_ms || attempt == self->max_attempts) {
                resp->is_rate_limited = true;
                sn_warn(S_MODULE,
                        "%s %s: rate limited (status %ld), wait %" PRId64
                        " ms %s; giving up after attempt %d",
                        call->method, red, resp->status, wait_ms,
                        wait_ms > self->max_wait_ms ? "is over max_wait_s" : "allowed", attempt);
                goto out;
            }
            sn_warn(S_MODULE, "%s %s: rate limited (status %ld); waiting %" PRId64 " ms",
                    call->method, red, resp->status, wait_ms);
            s_count(self, &self->stats.rate_waits);
            if (!s_sleep(self, wait_ms))
                goto out;
            continue;
        }
        if (hr.status >= 500 || hr.status == 408) {
            sn_http_response_fini(&hr);
            if (!resp->message[0])
                snprintf(resp->message, sizeof resp->message, "server error");
            rc = SN_AGAIN;
            if (!may_repeat)
                goto out;
            sn_warn(S_MODULE, "%s %s: status %ld (attempt %d/%d)", call->method, red, resp->status,
                    attempt, self->max_attempts);
            wait_ms = sn_backoff_next(&bo);
            goto again;
        }
        sn_http_response_fini(&hr); /* any other 4xx: a refusal, permanent */
        if (!resp->message[0])
            snprintf(resp->message, sizeof resp->message, "status %ld", resp->status);
        rc = SN_ERROR;
        goto out;
    again:
        if (attempt == self->max_attempts)
            goto out;
        if (!s_sleep(self, wait_ms))
            goto out;
    }
out:
    sn_http_destroy(&http);
    free(red);
    free(url);
    return rc;
}

/* ---- App installation token ----------------------------------------------------------- */

static sn_rc_t s_mint(sn_github_t *self)
{
    char *jwt =
        sn_github_app_jwt(self->cfg->app_id, self->cfg->private_key_file, sn_wall_ms() / 1000);
    if (!jwt)
        return SN_ERROR;
    char *inst = sn_github_escape(self->cfg->installation_id);
    char *url = sn_strdupf("%s/app/installations/%s/access_tokens", self->base, inst);
    free(inst);
    s_call_t call = {.method = "POST",
                     .url = url,
                     .body = "{}",
                     .jwt = jwt,
                     .flags = SN_GITHUB_RETRY_UNSAFE /* minting twice is harmless */};
    sn_github_response_t resp = {0};
    sn_rc_t rc = s_perform(self, &call, &resp);
    sn_crypto_cleanse(jwt, strlen(jwt));
    free(jwt);
    free(url);
    if (rc != SN_OK) {
        sn_error(S_MODULE, "minting an installation token failed: status=%ld %s", resp.status,
                 resp.message);
        sn_github_response_fini(&resp);
        return rc;
    }
    const char *tok = json_string_value(json_object_get(resp.json, "token"));
    const char *exp = json_string_value(json_object_get(resp.json, "expires_at"));
    int64_t exp_s = 0;
    if (!tok || !tok[0] || !exp || !s_parse_iso8601(exp, &exp_s)) {
        sn_error(S_MODULE, "installation token answer without token/expires_at");
        sn_github_response_fini(&resp);
        return SN_AGAIN;
    }
    pthread_mutex_lock(&self->lock);
    if (self->inst_token) {
        sn_crypto_cleanse(self->inst_token, strlen(self->inst_token));
        free(self->inst_token);
    }
    self->inst_token = sn_strdup(tok);
    self->inst_expires_s = exp_s;
    self->stats.tokens_minted++;
    pthread_mutex_unlock(&self->lock);
    sn_info(S_MODULE, "installation token minted, expires_at=%s", exp);
    sn_crypto_cleanse((char *)tok, strlen(tok));
    sn_github_response_fini(&resp);
    return SN_OK;
}

/* The bearer credential for API calls (caller frees and cleanses). */
static sn_rc_t s_token(sn_github_t *self, char **token)
{
    if (!self->is_app) {
        *token = sn_strdup(self->cfg->token);
        return SN_OK;
    }
    pthread_mutex_lock(&self->mint_lock); /* one mint at a time; others wait and reuse it */
    sn_rc_t rc = SN_OK;
    for (int round = 0; round < 2; round++) {
        pthread_mutex_lock(&self->lock);
        int64_t now = sn_wall_ms() / 1000;
        bool is_fresh =
            self->inst_token && now < self->inst_expires_s - self->opts.token_refresh_margin_s;
        *token = is_fresh ? sn_strdup(self->inst_token) : NULL;
        pthread_mutex_unlock(&self->lock);
        if (*token || round == 1)
            break;
        rc = s_mint(self);
        if (rc != SN_OK)
            break;
    }
    pthread_mutex_unlock(&self->mint_lock);
    if (rc == SN_OK && !*token) {
        /* a token that expires within the margin right away: use it anyway, once */
        pthread_mutex_lock(&self->lock);
        *token = self->inst_token ? sn_strdup(self->inst_token) : NULL;
        pthread_mutex_unlock(&self->lock);
        if (!*token)
            rc = SN_AGAIN;
    }
    return rc;
}

static void s_forget_token(sn_github_t *self)
{
    pthread_mutex_lock(&self->lock);
    self->inst_expires_s = 0;
    pthread_mutex_unlock(&self->lock);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static bool s_sleep(sn_github_t *self, int64_t ms)
{
    int64_t end = sn_mono_ms() + ms;
    for (;;) {
        if (self->opts.should_stop && self->opts.should_stop(self->opts.should_stop_arg))
            return false;
        int64_t left = end - sn_mono_ms();
        if (left <= 0)
            return true;
        int64_t slice = left < S_SLEEP_SLICE_MS ? left : S_SLEEP_SLICE_MS;
        struct timespec ts = {.tv_sec = slice / 1000, .tv_nsec = (slice % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static char *s_url(sn_github_t *self, const char *path_or_url)
{
    if (path_or_url[0] == '/')
        return sn_strdupf("%s%s", self->base, path_or_url);
    if (!s_same_origin(self, path_or_url))
        return NULL; /* never send the token elsewhere */
    return sn_strdup(path_or_url);
}

static bool s_same_origin(sn_github_t *self, const char *url)
{
    char *o = sn_http_url_origin(url);
    bool same = o && strcasecmp(o, self->origin) == 0;
    free(o);
    return same;
}

static char *s_etag_lookup(sn_github_t *self, const char *url, char **body)
{
    char *etag = NULL;
    *body = NULL;
    pthread_mutex_lock(&self->lock);
    for (size_t i = 0; i < self->etag_count; i++) {
        if (strcmp(self->etags[i].url, url) == 0) {
            self->etags[i].used = ++self->etag_clock;
            etag = sn_strdup(self->etags[i].etag);
            *body = sn_strdup(self->etags[i].body);
            break;
        }
    }
    pthread_mutex_unlock(&self->lock);
    return etag;
}

static void s_etag_store(sn_github_t *self, const char *url, const char *etag, const char *body)
{
    pthread_mutex_lock(&self->lock);
    s_etag_t *slot = NULL;
    for (size_t i = 0; i < self->etag_count && !slot; i++)
        if (strcmp(self->etags[i].url, url) == 0)
            slot = &self->etags[i];
    if (!slot && self->etag_count < self->opts.etag_cache_entries)
        slot = &self->etags[self->etag_count++];
    if (!slot) { /* evict the least recently used */
        slot = &self->etags[0];
        for (size_t i = 1; i < self->etag_count; i++)
            if (self->etags[i].used < slot->used)
                slot = &self->etags[i];
    }
    free(slot->url);
    free(slot->etag);
    free(slot->body);
    slot->url = sn_strdup(url);
    slot->etag = sn_strdup(etag);
    slot->body = sn_strdup(body);
    slot->used = ++self->etag_clock;
    pthread_mutex_unlock(&self->lock);
}

/* The URL of rel="next" in a Link header (caller frees), or NULL. */
static char *s_link_next(const char *link)
{
    const char *p = link;
    while ((p = strchr(p, '<')) != NULL) {
        const char *end = strchr(p, '>');
        if (!end)
            return NULL;
        const char *params = end + 1;
        const char *stop = strchr(params, ',');
        size_t plen = stop ? (size_t)(stop - params) : strlen(params);
        char *pcopy = sn_strndup(params, plen);
        bool is_next = strstr(pcopy, "rel=\"next\"") != NULL;
        free(pcopy);
        if (is_next)
            return sn_strndup(p + 1, (size_t)(end - p - 1));
        p = end + 1;
    }
    return NULL;
}

static bool s_is_json_type(const char *ctype)
{
    if (!ctype)
        return false;
    return strncasecmp(ctype, "application/json", 16) == 0 ||
           strncasecmp(ctype, "application/vnd.github", 22) == 0;
}

static char *s_b64url(const unsigned char *data, size_t len)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *out = sn_malloc(4 * ((len + 2) / 3) + 1);
    size_t j = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)data[i + 1] << 8;
        if (i + 2 < len)
            v |= data[i + 2];
        out[j++] = tbl[(v >> 18) & 63];
        out[j++] = tbl[(v >> 12) & 63];
        if (i + 1 < len)
            out[j++] = tbl[(v >> 6) & 63];
        if (i + 2 < len)
            out[j++] = tbl[v & 63];
    }
    out[j] = '\0';
    return out;
}

/* "2026-12-03T11:11:07Z" -> epoch seconds. */
static bool s_parse_iso8601(const char *s, int64_t *out)
{
    struct tm tm = {0};
    int n = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &n) != 6)
        return false;
    if (s[n] != 'Z' && strcmp(s + n, "+00:00") != 0 && strncmp(s + n, ".", 1) != 0)
        return false;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return false;
    *out = (int64_t)t;
    return true;
}

static int64_t s_header_i64(const sn_http_response_t *r, const char *name)
{
    const char *v = sn_http_response_header(r, name);
    int64_t out = -1;
    if (!v || sn_parse_i64(v, 0, INT64_MAX, &out) != SN_OK)
        return -1;
    return out;
}
