/* Inbound webhook signatures. GitHub signs each delivery with `X-Hub-Signature-256:
 * sha256=<lowercase hex HMAC-SHA256(secret, raw body)>` (contracts/github.md); the check
 * runs over the exact bytes received, before any parsing, in constant time. Only sha256=
 * is accepted: the legacy SHA-1 header is never a fallback. Thread-safe, no allocation. */
#ifndef SN_WEBHOOK_H
#define SN_WEBHOOK_H

#include "sentinel/sn_common.h"

/* Why a signature was refused (static strings, safe to log: they never contain the
 * signature, the secret or the body). */
#define SN_WEBHOOK_MISSING "missing signature"
#define SN_WEBHOOK_NOT_SHA256 "not a sha256= signature"
#define SN_WEBHOOK_MALFORMED "malformed signature"
#define SN_WEBHOOK_MISMATCH "signature mismatch"
#define SN_WEBHOOK_NO_SECRET "no secret configured"

/* Checks @header (the X-Hub-Signature-256 value, may be NULL) against HMAC-SHA256 of the
 * @body_len bytes at @body keyed with @secret (@secret_len bytes). SN_OK when it matches;
 * SN_DECLINED otherwise, with *why (may be NULL) set to one of the reasons above; SN_ERROR
 * if OpenSSL fails. Every refusal takes the same comparison path as a match. */
SN_NODISCARD sn_rc_t sn_webhook_verify_github(const void *secret, size_t secret_len,
                                              const void *body, size_t body_len, const char *header,
                                              const char **why);

/* Writes the header value GitHub would send ("sha256=" + 64 hex + NUL, 72 bytes) into @out.
 * For tests and fake senders. SN_ERROR if OpenSSL fails. */
SN_NODISCARD sn_rc_t sn_webhook_sign_github(const void *secret, size_t secret_len, const void *body,
                                            size_t body_len, char out[72]);

#endif
