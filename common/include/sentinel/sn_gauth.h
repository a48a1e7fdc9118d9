/* Google service-account OAuth2 (the JWT bearer grant, RFC 7523): reads a key file
 * (client_email, private_key PEM, private_key_id, token_uri), signs an RS256 JWT with
 * OpenSSL (iss = client_email, scope, aud = token_uri, iat = now, exp = now + 3600), posts
 * `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>` to the token
 * URI and caches the access token until 5 minutes before it expires (half its life for
 * short-lived ones). The private key is parsed once and the PEM text cleansed; neither the
 * key, the assertion nor the access token is ever logged.
 *
 * Threads: an sn_gauth_t may be shared by every thread of a process (the cache is behind
 * a mutex; one thread refreshes while the others wait for its token). Each caller brings
 * its own sn_http_t (an HTTP client belongs to one thread). */
#ifndef SN_GAUTH_H
#define SN_GAUTH_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_http.h"

typedef struct sn_gauth sn_gauth_t;

#define SN_GAUTH_DEFAULT_TOKEN_URI "https://oauth2.googleapis.com/token"
#define SN_GAUTH_SCOPE_CLOUD "https://www.googleapis.com/auth/cloud-platform"
#define SN_GAUTH_MAX_KEY_FILE_BYTES (64 * 1024)

/* Loads the service-account key JSON at @key_file. @token_uri (may be NULL or "")
 * overrides the key's token_uri (which defaults to SN_GAUTH_DEFAULT_TOKEN_URI); it is also
 * the JWT's aud. @scope (NULL: SN_GAUTH_SCOPE_CLOUD) is a space-separated scope list. NULL
 * (logged, without key material) when the file is unreadable, over
 * SN_GAUTH_MAX_KEY_FILE_BYTES, not JSON, of another `type` than service_account, or
 * lacks client_email or a parseable RSA private_key. */
sn_gauth_t *sn_gauth_new(const char *key_file, const char *token_uri, const char *scope);

/* Frees (the key is freed by OpenSSL, the cached token cleansed); NULL-safe; sets
 * *self_p = NULL. No other thread may use @self any more. */
void sn_gauth_destroy(sn_gauth_t **self_p);

/* The key's client_email and the token URI in use (owned by @self). */
const char *sn_gauth_client_email(const sn_gauth_t *self);
const char *sn_gauth_token_uri(const sn_gauth_t *self);

/* A signed assertion for the time @now_s (unix seconds): "header.claims.signature", each
 * part base64url without padding. Caller frees (it is a credential: cleanse it). NULL
 * only if OpenSSL fails (logged). Any thread. */
char *sn_gauth_assertion(sn_gauth_t *self, int64_t now_s);

/* A valid access token in *token (caller frees with sn_gauth_token_free): the cached one,
 * or a new one fetched through @http (the caller's, for the calling thread) with
 * @timeout_ms per attempt, up to 3 attempts with backoff for transport errors, 429 and
 * 5xx. SN_OK; SN_ERROR: the token endpoint refused the grant (400/401/403: a disabled
 * key, a bad signature, clock skew) or answered something that is not a token — the
 * OAuth error code (never the token) is in @why; SN_AGAIN: it could not be reached or kept
 * failing transiently (@why says how). @why (may be NULL) gets one line. Any thread. */
SN_NODISCARD sn_rc_t sn_gauth_token(sn_gauth_t *self, sn_http_t *http, int timeout_ms, char **token,
                                    char *why, size_t why_len);

/* Cleanses and frees a token returned by sn_gauth_token; NULL-safe; sets *token_p = NULL. */
void sn_gauth_token_free(char **token_p);

/* Drops the cached token (after an API answered 401 to it), so the next sn_gauth_token
 * fetches a new one. Any thread. */
void sn_gauth_invalidate(sn_gauth_t *self);

/* Number of tokens fetched from the endpoint since sn_gauth_new (for tests and metrics). */
uint64_t sn_gauth_fetch_count(sn_gauth_t *self);

/* base64url without padding of @len bytes (caller frees). Pure; any thread. */
char *sn_gauth_b64url(const void *data, size_t len);

#endif
