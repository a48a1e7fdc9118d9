/* Allocation, assertions, clocks and small parsing helpers used everywhere. */
#include "sentinel/sn_common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void sn_assert_fail(const char *expr, const char *file, int line, const char *func)
{
    fprintf(stderr, "assertion failed: %s at %s:%d (%s)\n", expr, file, line, func);
    fflush(stderr);
    abort();
}

static void s_oom(size_t size)
{
    fprintf(stderr, "out of memory allocating %zu bytes\n", size);
    abort();
}

void *sn_malloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        s_oom(size);
    return p;
}

void *sn_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        s_oom(count * size);
    return p;
}

void *sn_realloc(void *ptr, size_t size)
{
    void *p = realloc(ptr, size ? size : 1);
    if (!p)
        s_oom(size);
    return p;
}

char *sn_strdup(const char *s)
{
    SN_ASSERT(s);
    return sn_strndup(s, strlen(s));
}

char *sn_strndup(const char *s, size_t n)
{
    SN_ASSERT(s);
    size_t len = strnlen(s, n);
    char *p = sn_malloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

char *sn_strdupf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *p = NULL;
    int n = vasprintf(&p, fmt, ap);
    va_end(ap);
    if (n < 0)
        s_oom(0);
    return p;
}

const char *sn_rc_str(sn_rc_t rc)
{
    switch (rc) {
    case SN_OK:
        return "ok";
    case SN_ERROR:
        return "error";
    case SN_AGAIN:
        return "again";
    case SN_DECLINED:
        return "declined";
    }
    return "unknown";
}

int64_t sn_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t sn_mono_ms(void)
{
    return sn_mono_us() / 1000;
}

int64_t sn_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

sn_rc_t sn_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (!s || !*s)
        return SN_ERROR;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno || *end != '\0' || v < min || v > max)
        return SN_ERROR;
    *out = v;
    return SN_OK;
}

bool sn_strlcpy(char *dst, const char *src, size_t dst_len)
{
    SN_ASSERT(dst && src && dst_len > 0);
    size_t n = strlen(src);
    bool fits = n < dst_len;
    if (!fits)
        n = dst_len - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
    return fits;
}
