/* SHA-256 and HMAC-SHA256 through OpenSSL 3's EVP_MD and EVP_MAC interfaces (the HMAC_CTX
 * API is deprecated in 3.0), plus constant-time comparison and hex. Every OpenSSL call
 * counts as successful only when it returns 1; failures are logged here once with
 * ERR_get_error() and passed up as SN_ERROR. */
#include "sentinel/sn_crypto.h"

#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "sentinel/sn_log.h"

static void s_log_ssl(const char *what);

sn_rc_t sn_sha256(const void *data, size_t len, uint8_t out[SN_SHA256_LEN])
{
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    return sn_sha256_v(&iov, 1, out);
}

sn_rc_t sn_sha256_v(const struct iovec *iov, int iovcnt, uint8_t out[SN_SHA256_LEN])
{
    SN_ASSERT(iovcnt >= 0 && (iov || iovcnt == 0) && out);
    sn_rc_t rc = SN_ERROR;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        s_log_ssl("sha256 init");
        goto out;
    }
    for (int i = 0; i < iovcnt; i++)
        if (iov[i].iov_len && EVP_DigestUpdate(md, iov[i].iov_base, iov[i].iov_len) != 1) {
            s_log_ssl("sha256 update");
            goto out;
        }
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(md, out, &n) != 1 || n != SN_SHA256_LEN) {
        s_log_ssl("sha256 final");
        goto out;
    }
    rc = SN_OK;
out:
    EVP_MD_CTX_free(md);
    return rc;
}

sn_rc_t sn_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                       uint8_t out[SN_SHA256_LEN])
{
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    return sn_hmac_sha256_v(key, key_len, &iov, 1, out);
}

sn_rc_t sn_hmac_sha256_v(const void *key, size_t key_len, const struct iovec *iov, int iovcnt,
                         uint8_t out[SN_SHA256_LEN])
{
    SN_ASSERT(iovcnt >= 0 && (iov || iovcnt == 0) && out && (key || key_len == 0));
    sn_rc_t rc = SN_ERROR;
    EVP_MAC_CTX *mctx = NULL;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!mac) {
        s_log_ssl("hmac fetch");
        return SN_ERROR;
    }
    mctx = EVP_MAC_CTX_new(mac);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end()};
    /* OpenSSL refuses a NULL key pointer even with length 0: give it an empty buffer. */
    static const uint8_t s_empty[1];
    if (!mctx || EVP_MAC_init(mctx, key_len ? key : s_empty, key_len, params) != 1) {
        s_log_ssl("hmac init");
        goto out;
    }
    for (int i = 0; i < iovcnt; i++)
        if (iov[i].iov_len && EVP_MAC_update(mctx, iov[i].iov_base, iov[i].iov_len) != 1) {
            s_log_ssl("hmac update");
            goto out;
        }
    size_t n = 0;
    if (EVP_MAC_final(mctx, out, &n, SN_SHA256_LEN) != 1 || n != SN_SHA256_LEN) {
        s_log_ssl("hmac final");
        goto out;
    }
    rc = SN_OK;
out:
    EVP_MAC_CTX_free(mctx); /* frees the key schedule it copied, cleansed by OpenSSL */
    EVP_MAC_free(mac);
    return rc;
}

bool sn_crypto_equal(const void *a, const void *b, size_t len)
{
    SN_ASSERT((a && b) || len == 0);
    return len == 0 || CRYPTO_memcmp(a, b, len) == 0;
}

bool sn_crypto_equal_str(const char *a, const char *b)
{
    if (!a || !b)
        return false;
    size_t la = strlen(a), lb = strlen(b);
    if (la != lb)
        return false;
    return sn_crypto_equal(a, b, la);
}

void sn_hex_encode(const uint8_t *data, size_t len, char *out)
{
    static const char s_digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = s_digits[data[i] >> 4];
        out[2 * i + 1] = s_digits[data[i] & 0x0f];
    }
    out[2 * len] = '\0';
}

static int s_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

sn_rc_t sn_hex_decode(const char *hex, size_t hex_len, uint8_t *out, size_t out_len)
{
    if (!hex || hex_len != 2 * out_len)
        return SN_ERROR;
    for (size_t i = 0; i < out_len; i++) {
        int hi = s_nibble(hex[2 * i]), lo = s_nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return SN_ERROR;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return SN_OK;
}

void sn_crypto_cleanse(void *p, size_t len)
{
    if (p && len)
        OPENSSL_cleanse(p, len);
}

static void s_log_ssl(const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "unknown error";
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    sn_error("crypto", "%s failed: %s", what, buf);
}
