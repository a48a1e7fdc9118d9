/* Hashes and MACs for the audit chain, webhook signatures and token digests: SHA-256 and
 * HMAC-SHA256 through OpenSSL's EVP interfaces, a constant-time comparison and hex
 * encoding. Pure functions on caller buffers: any thread. Keys passed in are never
 * copied into memory this module keeps; temporary key material is cleansed. */
#ifndef SN_CRYPTO_H
#define SN_CRYPTO_H

#include <sys/uio.h>

#include "sentinel/sn_common.h"

#define SN_SHA256_LEN 32
#define SN_SHA256_HEX_LEN 64 /* without the NUL */

/* SHA-256 of @len bytes at @data into @out. SN_ERROR only if OpenSSL fails (logged). */
SN_NODISCARD sn_rc_t sn_sha256(const void *data, size_t len, uint8_t out[SN_SHA256_LEN]);

/* SHA-256 of the concatenation of @iovcnt buffers (e.g. prev_hash || record). */
SN_NODISCARD sn_rc_t sn_sha256_v(const struct iovec *iov, int iovcnt, uint8_t out[SN_SHA256_LEN]);

/* HMAC-SHA256 of @len bytes at @data under @key (@key_len bytes, may be 0) into @out. */
SN_NODISCARD sn_rc_t sn_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                                    uint8_t out[SN_SHA256_LEN]);

/* HMAC-SHA256 over the concatenation of @iovcnt buffers (e.g. "<t>." || body). */
SN_NODISCARD sn_rc_t sn_hmac_sha256_v(const void *key, size_t key_len, const struct iovec *iov,
                                      int iovcnt, uint8_t out[SN_SHA256_LEN]);

/* True if the @len bytes at @a and @b are equal; the time taken does not depend on
 * where they differ (CRYPTO_memcmp). */
bool sn_crypto_equal(const void *a, const void *b, size_t len);

/* True if the strings are equal, in time independent of their contents (lengths may
 * leak). NULL equals nothing. */
bool sn_crypto_equal_str(const char *a, const char *b);

/* Lowercase hex of @len bytes into @out, which must hold 2 * @len + 1 bytes. */
void sn_hex_encode(const uint8_t *data, size_t len, char *out);

/* Decodes exactly @out_len bytes from the hex text @hex of @hex_len characters (upper or
 * lower case). SN_ERROR if @hex_len != 2 * @out_len or a character is not hex; @out is
 * then unspecified. */
SN_NODISCARD sn_rc_t sn_hex_decode(const char *hex, size_t hex_len, uint8_t *out, size_t out_len);

/* Wipes @len bytes at @p so the compiler cannot elide it (OPENSSL_cleanse). NULL-safe. */
void sn_crypto_cleanse(void *p, size_t len);

#endif
