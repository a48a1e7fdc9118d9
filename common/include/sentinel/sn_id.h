/* Identifiers: ULIDs (26 Crockford base32 chars, sortable by time, monotonic within a
 * process) and random 64-bit values (incarnations, tokens). Thread-safe. */
#ifndef SN_ID_H
#define SN_ID_H

#include "sentinel/sn_common.h"

#define SN_ID_LEN 26

/* Writes a new ULID and its terminator into @out (SN_ID_LEN + 1 bytes). */
void sn_id_new(char out[SN_ID_LEN + 1]);
/* True if @s is a syntactically valid ULID. */
bool sn_id_is_valid(const char *s);
/* Milliseconds encoded in a valid ULID, or -1. */
int64_t sn_id_time_ms(const char *s);
/* A random 64-bit value from the OS (never 0). */
uint64_t sn_random_u64(void);
/* Fills @buf with @len random bytes from the OS. */
void sn_random_bytes(void *buf, size_t len);
/* Writes @len random bytes as lowercase hex into @out (2*len+1 bytes). */
void sn_random_hex(char *out, size_t len);

#endif
