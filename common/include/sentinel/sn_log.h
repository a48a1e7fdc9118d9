/* One line per event on stderr: `time level role/instance module: message key=value`.
 * The level is checked before any formatting. Registered secrets are masked in every
 * line, so a value that slips into a message never reaches the log. Thread-safe. */
#ifndef SN_LOG_H
#define SN_LOG_H

#include "sentinel/sn_common.h"

typedef enum {
    SN_LOG_DEBUG = 0,
    SN_LOG_INFO,
    SN_LOG_WARN,
    SN_LOG_ERROR,
    SN_LOG_OFF
} sn_log_level_t;

/* Sets the identity printed on every line (copied). Call once at start; NULL-safe. */
void sn_log_init(const char *role, const char *instance);
/* Sets the minimum level; the SN_LOG_LEVEL environment variable (debug|info|warn|error)
 * is read by sn_log_init. */
void sn_log_set_level(sn_log_level_t level);
sn_log_level_t sn_log_level(void);
/* Parses "debug", "info", "warn", "error", "off"; SN_ERROR if unknown. */
SN_NODISCARD sn_rc_t sn_log_parse_level(const char *name, sn_log_level_t *out);
/* Registers a secret (copied, >= 4 bytes) to be replaced by "[redacted]" in every line. */
void sn_log_add_secret(const char *secret);
/* Forgets all registered secrets (tests, shutdown). */
void sn_log_clear_secrets(void);
/* Redirects output to @fd (default 2). For tests. */
void sn_log_set_fd(int fd);

void sn_log_write(sn_log_level_t level, const char *module, const char *fmt, ...) SN_PRINTF(3, 4);

#define SN_LOG(level, module, ...)                                                                 \
    do {                                                                                           \
        if ((level) >= sn_log_level())                                                             \
            sn_log_write((level), (module), __VA_ARGS__);                                          \
    } while (0)
#define sn_debug(module, ...) SN_LOG(SN_LOG_DEBUG, module, __VA_ARGS__)
#define sn_info(module, ...) SN_LOG(SN_LOG_INFO, module, __VA_ARGS__)
#define sn_warn(module, ...) SN_LOG(SN_LOG_WARN, module, __VA_ARGS__)
#define sn_error(module, ...) SN_LOG(SN_LOG_ERROR, module, __VA_ARGS__)

#endif
