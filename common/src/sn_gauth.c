/* Google service-account OAuth2: the RS256 JWT bearer grant and a per-process token
 * cache. The key is parsed into an EVP_PKEY once; its PEM text and every assertion and
 * token copy are cleansed before they are freed. One mutex guards the cache and is held
 * across a refresh, so N job threads asking at once cost one call to the endpoint. */
#include "sentinel/sn_gauth.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sentinel/sn_backoff.h"
#include "sentinel/sn_crypto.h"
#include "sentinel/sn_log.h"

#define LOG_MODULE "gauth"
#define TOKEN_LIFETIME_S 3600
#define REFRESH_EARLY_S 300
#define FETCH_ATTEMPTS 3
#define TOKEN_MAX_BODY (64 * 1024)

struct sn_gauth {
    EVP_PKEY *key;
    char *client_email;
    char *key_id; /* may be NULL */
    char *token_uri;
    char *scope;
    pthread_mutex_t mu;
    char *token;           /* cached access token, or NULL */
    int64_t refresh_at_ms; /* sn_wall_ms after which the cached token is not handed out */
    uint64_t fetches;
};

static char *s_read_file(const char *path, size_t *len);
static sn_rc_t s_fetch(sn_gauth_t *self, sn_http_t *http, int timeout_ms, char *why,
                       size_t why_len);
static void s_why(char *why, size_t why_len, const char *fmt, ...) SN_PRINTF(3, 4);

sn_gauth_t *sn_gauth_new(const char *key_file, const char *token_uri, const char *scope)
{
    SN_ASSERT(key_file);
    size_t len = 0;
    char *text = s_read_file(key_file, &len);
    if (!text)
        return NULL;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    sn_crypto_cleanse(text, len);
    free(text);
    sn_gauth_t *self = NULL;
    if (!json_is_object(root)) {
        /* jerr.text may quote key bytes: only the position is logged. */
        sn_error(LOG_MODULE, "key file %s is not a JSON object (line %d)", key_file, jerr.line);
        goto out;
    }
    const char *type = json_string_value(json_object_get(root, "type"));
    const char *email = json_string_value(json_object_get(root, "client_email"));
    const char *pem = json_string_value(json_object_get(root, "private_key"));
    const char *kid = json_string_value(json_object_get(root, "private_key_id"));
    const char *uri = json_string_value(json_object_get(root, "token_uri"));
    if (type && strcmp(type, "service_account") != 0) {
        sn_error(LOG_MODULE, "key file %s has type '%.40s', not service_account", key_file, type);
        goto out;
    }
    if (!email || !*email || !pem || !*pem) {
        sn_error(LOG_MODULE, "key file %s lacks client_email or private_key", key_file);
        goto out;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)strlen(pem));
    EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!key || EVP_PKEY_base_id(key) != EVP_PKEY_RSA) {
        unsigned long e = ERR_get_error();
        sn_error(LOG_MODULE, "key file %s: private_key is not an RSA PEM key (%s)", key_file,
                 e ? ERR_reason_error_string(e) : "another key type");
        ERR_clear_error();
        EVP_PKEY_free(key);
        goto out;
    }
    self = sn_calloc(1, sizeof *self);
    self->key = key;
    self->client_email = sn_strdup(email);
    self->key_id = kid && *kid ? sn_strdup(kid) : NULL;
    self->token_uri = sn_strdup(token_uri && *token_uri ? token_uri
                                : uri && *uri           ? uri
                                                        : SN_GAUTH_DEFAULT_TOKEN_URI);
    self->scope = sn_strdup(scope && *scope ? scope : SN_GAUTH_SCOPE_CLOUD);
    pthread_mutex_init(&self->mu, NULL);
out:
    if (root) {
        /* The PEM lives in jansson's memory: wipe it before jansson frees it. */
        json_t *pk = json_object_get(root, "private_key");
        const char *p = json_string_value(pk);
        if (p)
            sn_crypto_cleanse((void *)p, strlen(p));
        json_decref(root);
    }
    return self;
}

void sn_gauth_destroy(sn_gauth_t **self_p)
{
    SN_ASSERT(self_p);
    sn_gauth_t *self = *self_p;
    if (!self)
        return;
    EVP_PKEY_free(self->key);
    sn_gauth_token_free(&self->token);
    pthread_mutex_destroy(&self->mu);
    free(self->client_email);
    free(self->key_id);
    free(self->token_uri);
    free(self->scope);
    free(self);
    *self_p = NULL;
}

const char *sn_gauth_client_email(const sn_gauth_t *self)
{
    return self->client_email;
}

const char *sn_gauth_token_uri(const sn_gauth_t *self)
{
    return self->token_uri;
}

char *sn_gauth_assertion(sn_gauth_t *self, int64_t now_s)
{
    json_t *hdr = json_pack("{s:s, s:s}", "alg", "RS256", "typ", "JWT");
    if (self->key_id)
        json_object_set_new(hdr, "kid", json_string(self->key_id));
    json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:I}", "iss", self->client_email, "scope",
                               self->scope, "aud", self->token_uri, "iat", (json_int_t)now_s, "exp",
                               (json_int_t)(now_s + TOKEN_LIFETIME_S));
    char *h = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
    char *c = json_dumps(claims, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(hdr);
    json_decref(claims);
    char *h64 = sn_gauth_b64url(h, strlen(h));
    char *c64 = sn_gauth_b64url(c, strlen(c));
    free(h);
    free(c);
    char *input = sn_strdupf("%s.%s", h64, c64);
    free(h64);
    free(c64);
    char *out = NULL;
    unsigned char *sig = NULL;
    size_t sig_len = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, self->key) != 1 ||
        EVP_DigestSign(md, NULL, &sig_len, (const unsigned char *)input, strlen(input)) != 1)
        goto fail;
    sig = sn_malloc(sig_len);
    if (EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)input, strlen(input)) != 1)
        goto fail;
    char *s64 = sn_gauth_b64url(sig, sig_len);
    out = sn_strdupf("%s.%s", input, s64);
    free(s64);
    goto done;
fail:
    sn_error(LOG_MODULE, "RS256 signing failed: %s", ERR_reason_error_string(ERR_get_error()));
    ERR_clear_error();
done:
    EVP_MD_CTX_free(md);
    free(sig);
    free(input);
    return out;
}

sn_rc_t sn_gauth_token(sn_gauth_t *self, sn_http_t *http, int timeout_ms, char **token, char *why,
                       size_t why_len)
{
    SN_ASSERT(self && http && token);
    *token = NULL;
    s_why(why, why_len, "%s", "");
    pthread_mutex_lock(&self->mu);
    sn_rc_t rc = SN_OK;
    if (!self->token || sn_wall_ms() >= self->refresh_at_ms)
        rc = s_fetch(self, http, timeout_ms, why, why_len);
    if (rc == SN_OK)
        *token = sn_strdup(self->token);
    pthread_mutex_unlock(&self->mu);
    return rc;
}

void sn_gauth_token_free(char **token_p)
{
    SN_ASSERT(token_p);
    if (*token_p) {
        sn_crypto_cleanse(*token_p, strlen(*token_p));
        free(*token_p);
        *token_p = NULL;
    }
}

void sn_gauth_invalidate(sn_gauth_t *self)
{
    pthread_mutex_lock(&self->mu);
    sn_gauth_token_free(&self->token);
    pthread_mutex_unlock(&self->mu);
}

uint64_t sn_gauth_fetch_count(sn_gauth_t *self)
{
    pthread_mutex_lock(&self->mu);
    uint64_t n = self->fetches;
    pthread_mutex_unlock(&self->mu);
    return n;
}

char *sn_gauth_b64url(const void *data, size_t len)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const uint8_t *p = data;
    char *out = sn_malloc(len / 3 * 4 + 5);
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
        out[o++] = tbl[v >> 6 & 63];
        out[o++] = tbl[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
        out[o++] = tbl[v >> 6 & 63];
    }
    out[o] = '\0';
    return out;
}

/* ---- statics ----------------------------------------------------------------------------- */

static void s_why(char *why, size_t why_len, const char *fmt, ...)
{
    if (!why || !why_len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
}

static char *s_read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        sn_error(LOG_MODULE, "cannot open key file %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    char *buf = NULL;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size <= 0 ||
        sb.st_size > SN_GAUTH_MAX_KEY_FILE_BYTES) {
        sn_error(LOG_MODULE, "key file %s is not a regular file of 1..%d bytes", path,
                 SN_GAUTH_MAX_KEY_FILE_BYTES);
        goto out;
    }
    buf = sn_malloc((size_t)sb.st_size + 1);
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)sb.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            sn_error(LOG_MODULE, "cannot read key file %s: %s", path,
                     n < 0 ? strerror(errno) : "short read");
            sn_crypto_cleanse(buf, got);
            free(buf);
            buf = NULL;
            goto out;
        }
        got += (size_t)n;
    }
    buf[got] = '\0';
    *len = got;
out:
    close(fd);
    return buf;
}

/* One grant: the mutex is held. Fills self->token and refresh_at_ms on SN_OK. */
static sn_rc_t s_fetch(sn_gauth_t *self, sn_http_t *http, int timeout_ms, char *why, size_t why_len)
{
    sn_gauth_token_free(&self->token);
    sn_backoff_t bo;
    sn_backoff_init(&bo, 200, 2000);
    char *shown = sn_http_redact_url(self->token_uri);
    sn_rc_t rc = SN_AGAIN;
    for (int attempt = 1; attempt <= FETCH_ATTEMPTS; attempt++) {
        int64_t now_ms = sn_wall_ms();
        char *jwt = sn_gauth_assertion(self, now_ms / 1000);
        if (!jwt) {
            s_why(why, why_len, "cannot sign the JWT assertion");
            rc = SN_ERROR;
            break;
        }
        char *form = sn_strdupf(
            "grant_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Agrant-type%%3Ajwt-bearer&assertion=%s",
            jwt);
        sn_crypto_cleanse(jwt, strlen(jwt));
        free(jwt);
        const char *headers[] = {"Content-Type: application/x-www-form-urlencoded",
                                 "Accept: application/json", NULL};
        sn_http_request_t req = {.method = "POST",
                                 .url = self->token_uri,
                                 .headers = headers,
                                 .body = form,
                                 .body_len = strlen(form),
                                 .timeout_ms = timeout_ms > 0 ? timeout_ms : 30000,
                                 .max_body_bytes = TOKEN_MAX_BODY};
        sn_http_response_t resp;
        sn_rc_t hrc = sn_http_perform(http, &req, &resp);
        sn_crypto_cleanse(form, strlen(form));
        free(form);
        json_t *root = NULL;
        if (hrc != SN_OK) {
            s_why(why, why_len, "token endpoint %s unreachable: %s", shown,
                  resp.is_timeout ? "timeout"
                  : resp.error[0] ? resp.error
                                  : "error");
            rc = hrc == SN_ERROR ? SN_ERROR : SN_AGAIN;
        } else if (resp.status == 429 || resp.status >= 500) {
            s_why(why, why_len, "token endpoint %s answered %ld", shown, resp.status);
            rc = SN_AGAIN;
        } else {
            root = json_loadb(resp.body, resp.body_len, 0, NULL);
            const char *tok = json_string_value(json_object_get(root, "access_token"));
            const char *type = json_string_value(json_object_get(root, "token_type"));
            json_t *exp = json_object_get(root, "expires_in");
            json_int_t expires_in = json_is_integer(exp) ? json_integer_value(exp) : 0;
            if (resp.status != 200) {
                const char *code = json_string_value(json_object_get(root, "error"));
                s_why(why, why_len, "token endpoint %s refused the grant: %ld %.64s", shown,
                      resp.status, code ? code : "(no OAuth error code)");
                rc = SN_ERROR;
            } else if (!tok || !*tok || (type && strcasecmp(type, "Bearer") != 0) ||
                       expires_in <= 0) {
                /* Garbage with 200 (a proxy's HTML page, a truncated body) is no token. */
                s_why(why, why_len, "token endpoint %s answered 200 without a usable token", shown);
                rc = SN_AGAIN;
            } else {
                if (expires_in > TOKEN_LIFETIME_S)
                    expires_in = TOKEN_LIFETIME_S;
                /* Refreshed 5 minutes early; a short-lived token at half its life. */
                int64_t life_ms = (int64_t)expires_in * 1000;
                int64_t early_ms =
                    life_ms > 2 * REFRESH_EARLY_S * 1000 ? REFRESH_EARLY_S * 1000 : life_ms / 2;
                self->token = sn_strdup(tok);
                self->refresh_at_ms = now_ms + life_ms - early_ms;
                self->fetches++;
                rc = SN_OK;
            }
            if (tok)
                sn_crypto_cleanse((void *)tok, strlen(tok));
        }
        if (resp.body)
            sn_crypto_cleanse(resp.body, resp.body_len);
        json_decref(root);
        sn_http_response_fini(&resp);
        if (rc != SN_AGAIN || attempt == FETCH_ATTEMPTS)
            break;
        int64_t d = sn_backoff_next(&bo);
        struct timespec ts = {(time_t)(d / 1000), (long)(d % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (rc == SN_OK)
        sn_info(LOG_MODULE, "access token obtained for %s from %s", self->client_email, shown);
    else
        sn_warn(LOG_MODULE, "no access token for %s: %s", self->client_email,
                why && *why ? why : sn_rc_str(rc));
    free(shown);
    return rc;
}
