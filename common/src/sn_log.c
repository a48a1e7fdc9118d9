/* The process log: one line per event, identity prefix, secrets masked. */
#include "sentinel/sn_log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SN_LOG_LINE_MAX 4096
#define SN_LOG_SECRETS_MAX 64

static const char *s_level_names[] = {"DEBUG", "INFO", "WARN", "ERROR", "OFF"};
static sn_log_level_t s_level = SN_LOG_INFO;
static char s_ident[128] = "sentinel/-";
static int s_fd = 2;
static pthread_mutex_t s_mutex = PTHREAD_MUTEX_INITIALIZER;
static char *s_secrets[SN_LOG_SECRETS_MAX];
static size_t s_secret_count;

static void s_redact(char *line, size_t cap);

void sn_log_init(const char *role, const char *instance)
{
    pthread_mutex_lock(&s_mutex);
    snprintf(s_ident, sizeof s_ident, "%s/%s", role ? role : "sentinel", instance ? instance : "-");
    pthread_mutex_unlock(&s_mutex);
    const char *env = getenv("SN_LOG_LEVEL");
    sn_log_level_t level;
    if (env && sn_log_parse_level(env, &level) == SN_OK)
        sn_log_set_level(level);
}

void sn_log_set_level(sn_log_level_t level)
{
    __atomic_store_n(&s_level, level, __ATOMIC_RELAXED);
}

sn_log_level_t sn_log_level(void)
{
    return __atomic_load_n(&s_level, __ATOMIC_RELAXED);
}

sn_rc_t sn_log_parse_level(const char *name, sn_log_level_t *out)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    for (size_t i = 0; i < SN_ARRAY_LEN(names); i++)
        if (name && strcmp(name, names[i]) == 0) {
            *out = (sn_log_level_t)i;
            return SN_OK;
        }
    return SN_ERROR;
}

void sn_log_add_secret(const char *secret)
{
    if (!secret || strlen(secret) < 4)
        return;
    pthread_mutex_lock(&s_mutex);
    bool known = false;
    for (size_t i = 0; i < s_secret_count; i++)
        known = known || strcmp(s_secrets[i], secret) == 0;
    if (!known && s_secret_count < SN_LOG_SECRETS_MAX)
        s_secrets[s_secret_count++] = sn_strdup(secret);
    pthread_mutex_unlock(&s_mutex);
}

void sn_log_clear_secrets(void)
{
    pthread_mutex_lock(&s_mutex);
    for (size_t i = 0; i < s_secret_count; i++)
        free(s_secrets[i]);
    s_secret_count = 0;
    pthread_mutex_unlock(&s_mutex);
}

void sn_log_set_fd(int fd)
{
    s_fd = fd;
}

void sn_log_write(sn_log_level_t level, const char *module, const char *fmt, ...)
{
    if (level < SN_LOG_DEBUG || level >= SN_LOG_OFF)
        return;
    char line[SN_LOG_LINE_MAX];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    pthread_mutex_lock(&s_mutex);
    int n = snprintf(line, sizeof line,
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, s_level_names[level], s_ident, module ? module : "-");
    if (n < 0)
        n = 0;
    if ((size_t)n < sizeof line) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        va_end(ap);
    }
    /* One event, one line: newlines inside a message are flattened. */
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    s_redact(line, sizeof line);
    size_t len = strlen(line);
    if (len + 1 < sizeof line) {
        line[len++] = '\n';
    } else {
        line[len - 1] = '\n';
    }
    ssize_t off = 0;
    while ((size_t)off < len) {
        ssize_t w = write(s_fd, line + off, len - (size_t)off);
        if (w <= 0)
            break;
        off += w;
    }
    pthread_mutex_unlock(&s_mutex);
}

/* Replaces every registered secret by a marker, in place (caller holds the mutex). */
static void s_redact(char *line, size_t cap)
{
    static const char mark[] = "[redacted]";
    for (size_t i = 0; i < s_secret_count; i++) {
        const char *secret = s_secrets[i];
        size_t slen = strlen(secret);
        char *hit;
        char *from = line;
        while ((hit = strstr(from, secret)) != NULL) {
            size_t tail = strlen(hit + slen);
            size_t head = (size_t)(hit - line);
            size_t mlen = sizeof mark - 1;
            if (head + mlen + 1 > cap) {
                *hit = '\0';
                break;
            }
            if (head + mlen + tail + 1 > cap)
                tail = cap - 1 - head - mlen;
            memmove(hit + mlen, hit + slen, tail);
            memcpy(hit, mark, mlen);
            hit[mlen + tail] = '\0';
            from = hit + mlen;
        }
    }
}
