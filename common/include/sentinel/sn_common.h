/* Basic vocabulary shared by every Sentinel module: return codes, always-on
 * assertions, allocation that aborts on exhaustion, attributes and clocks. */
#ifndef SN_COMMON_H
#define SN_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The small return vocabulary (nginx style). */
typedef enum {
    SN_OK = 0,        /* done */
    SN_ERROR = -1,    /* permanent: bad input, protocol violation, refused */
    SN_AGAIN = -2,    /* transient: timeout, peer down; retry with backoff */
    SN_DECLINED = -3, /* not mine: held elsewhere, stale epoch or fence */
} sn_rc_t;

#define SN_NODISCARD __attribute__((warn_unused_result))
#define SN_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define SN_UNUSED __attribute__((unused))
#define SN_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Programmer errors. Always compiled in; never put side effects inside. */
#define SN_ASSERT(expr)                                                                            \
    do {                                                                                           \
        if (!(expr))                                                                               \
            sn_assert_fail(#expr, __FILE__, __LINE__, __func__);                                   \
    } while (0)

_Noreturn void sn_assert_fail(const char *expr, const char *file, int line, const char *func);

/* Allocation: out of memory aborts, so callers have no OOM branches. */
void *sn_malloc(size_t size);
void *sn_calloc(size_t count, size_t size);
void *sn_realloc(void *ptr, size_t size);
char *sn_strdup(const char *s);
char *sn_strndup(const char *s, size_t n);
/* printf into a fresh heap string (caller frees). */
char *sn_strdupf(const char *fmt, ...) SN_PRINTF(1, 2);

/* Returns the name of @rc ("ok", "error", "again", "declined"). */
const char *sn_rc_str(sn_rc_t rc);

/* Monotonic clock in milliseconds / microseconds (for deadlines and intervals). */
int64_t sn_mono_ms(void);
int64_t sn_mono_us(void);
/* Wall clock in milliseconds since the epoch (for records, never for deadlines). */
int64_t sn_wall_ms(void);

/* Parses a base-10 signed integer in [min, max]; SN_ERROR on junk or range. */
SN_NODISCARD sn_rc_t sn_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);

/* Copies at most dst_len-1 bytes and terminates; returns false when truncated. */
bool sn_strlcpy(char *dst, const char *src, size_t dst_len);

#endif
