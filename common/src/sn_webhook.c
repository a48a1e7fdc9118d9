/* GitHub webhook signatures: HMAC-SHA256 over the raw body, compared in constant time. */
#include "sentinel/sn_webhook.h"

#include <string.h>

#include "sentinel/sn_crypto.h"

#define S_PREFIX "sha256="
#define S_PREFIX_LEN 7
#define S_MAC_LEN 32

sn_rc_t sn_webhook_verify_github(const void *secret, size_t secret_len, const void *body,
                                 size_t body_len, const char *header, const char **why)
{
    const char *reason = NULL;
    uint8_t want[S_MAC_LEN], got[S_MAC_LEN];
    memset(got, 0, sizeof got);
    if (!secret || secret_len == 0)
        reason = SN_WEBHOOK_NO_SECRET;
    else if (!header || !*header)
        reason = SN_WEBHOOK_MISSING;
    else if (strncmp(header, S_PREFIX, S_PREFIX_LEN) != 0)
        reason = SN_WEBHOOK_NOT_SHA256;
    else if (strlen(header) != S_PREFIX_LEN + 2 * S_MAC_LEN ||
             sn_hex_decode(header + S_PREFIX_LEN, 2 * S_MAC_LEN, got, sizeof got) != SN_OK)
        reason = SN_WEBHOOK_MALFORMED;
    /* The MAC is computed and compared whatever happened above, so a refusal costs the
     * same time as a check (an empty key still gives a MAC). */
    static const uint8_t s_none = 0;
    if (sn_hmac_sha256(secret && secret_len ? secret : &s_none,
                       secret && secret_len ? secret_len : 1, body_len ? body : &s_none, body_len,
                       want) != SN_OK) {
        sn_crypto_cleanse(want, sizeof want);
        return SN_ERROR;
    }
    bool is_equal = sn_crypto_equal(want, got, sizeof want);
    sn_crypto_cleanse(want, sizeof want);
    if (!reason && !is_equal)
        reason = SN_WEBHOOK_MISMATCH;
    if (why)
        *why = reason;
    return reason ? SN_DECLINED : SN_OK;
}

sn_rc_t sn_webhook_sign_github(const void *secret, size_t secret_len, const void *body,
                               size_t body_len, char out[72])
{
    static const uint8_t s_none = 0;
    uint8_t mac[S_MAC_LEN];
    if (sn_hmac_sha256(secret, secret_len, body_len ? body : &s_none, body_len, mac) != SN_OK)
        return SN_ERROR;
    memcpy(out, S_PREFIX, S_PREFIX_LEN);
    sn_hex_encode(mac, sizeof mac, out + S_PREFIX_LEN);
    out[S_PREFIX_LEN + 2 * S_MAC_LEN] = '\0';
    return SN_OK;
}
