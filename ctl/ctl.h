/* sentinelctl's shared vocabulary: the global options every command accepts, the exit
 * codes of the CLI contract (contracts/sse-and-metrics.md §d.2), the command entry points
 * and the small helpers the command groups share (config loading, a timeout-bounded
 * Redis context, usage errors). Single-threaded: everything here runs on main's thread. */
#ifndef CTL_H
#define CTL_H

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>

#include <hiredis/hiredis.h>

#include "sentinel/sn_common.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_rpc.h"

#include "ctl_output.h"

/* Exit codes (§d.2): data on stdout, progress and errors on stderr. */
enum {
    CTL_EXIT_OK = 0,           /* success */
    CTL_EXIT_FAIL = 1,         /* generic failure, remote error, NAK, timeout */
    CTL_EXIT_USAGE = 2,        /* bad flag or argument */
    CTL_EXIT_WAITED = 3,       /* the thing waited for ended in failure */
    CTL_EXIT_AUTH = 4,         /* authentication required or denied */
    CTL_EXIT_PENDING = 8,      /* still pending */
    CTL_EXIT_INTERRUPTED = 130 /* SIGINT */
};

/* Default config when neither -c nor $SENTINEL_CONFIG names one. */
#define CTL_DEFAULT_CONFIG "sentinel.yml"
/* Default for `up` without FILE, -c or $SENTINEL_CONFIG. */
#define CTL_DEFAULT_UP_CONFIG "examples/sentinel.yml"

/* The global options (-c, -o, --no-color), after parsing. */
typedef struct {
    const char *config_path; /* -c, else $SENTINEL_CONFIG, else CTL_DEFAULT_CONFIG */
    bool is_config_explicit; /* -c given or $SENTINEL_CONFIG set */
    ctl_format_t format;     /* -o table|json, default table */
    bool is_no_color;        /* --no-color */
    bool is_help;            /* -h/--help seen */
} ctl_opts_t;

/* Long-option ids without a short letter. */
enum {
    CTL_OPT_NO_COLOR = 1000,
    CTL_OPT_TYPE,
    CTL_OPT_SINCE_ID,
    CTL_OPT_DATA,
    CTL_OPT_TIMEOUT,
    CTL_OPT_DEAD,
    CTL_OPT_NAME,
    CTL_OPT_FOREGROUND,
    CTL_OPT_COUNT,
    CTL_OPT_SERVICE_TYPE
};

/* The short and long spellings of the global options, for each command's getopt table. */
#define CTL_COMMON_SHORTOPTS "c:o:h"
#define CTL_COMMON_LONGOPTS                                                                        \
    {"config", required_argument, NULL, 'c'}, {"output", required_argument, NULL, 'o'},            \
        {"no-color", no_argument, NULL, CTL_OPT_NO_COLOR},                                         \
    {                                                                                              \
        "help", no_argument, NULL, 'h'                                                             \
    }

/* Fills @opts with defaults (environment included). */
void ctl_opts_init(ctl_opts_t *opts);
/* Handles global option @c with argument @arg. Returns 1 if handled, 0 if @c is not a
 * global option, -1 on a bad value (the usage error is already printed for @cmd). */
int ctl_opts_handle(ctl_opts_t *opts, const char *cmd, int c, const char *arg);

/* Prints "sentinelctl CMD: <message> (see 'sentinelctl CMD --help')" on stderr and
 * returns CTL_EXIT_USAGE. */
int ctl_usage_error(const char *cmd, const char *fmt, ...) SN_PRINTF(2, 3);
/* The usage error for getopt's '?' or ':' result @c (unknown option, missing argument). */
int ctl_bad_option(const char *cmd, int c, char **argv);
/* Prints "sentinelctl CMD: <message>" on stderr (errors and progress). */
void ctl_err(const char *cmd, const char *fmt, ...) SN_PRINTF(2, 3);

/* Loads @path into @cfg; on failure prints the loader's "file:line:col: key: message"
 * on stderr as it is (no prefix: editors jump to it) and returns SN_ERROR, @cfg freed.
 * @cmd is the calling command (kept for symmetry with the other helpers). */
SN_NODISCARD sn_rc_t ctl_config_load(const char *cmd, const char *path, sn_config_t *cfg);

/* The unix socket of the Redis in @cfg (explicit unix_path, or <state_dir>/redis.sock
 * when embedded), or NULL for TCP. Caller frees. */
char *ctl_redis_socket_path(const sn_config_t *cfg);
/* A connected, timeout-bounded Redis context for @cfg (caller frees with redisFree), or
 * NULL with the reason printed on stderr for @cmd. */
redisContext *ctl_redis_connect(const char *cmd, const sn_config_t *cfg);

/* A service-call client for the broker of @cfg: CURVE keys from broker.client_cert_file
 * and broker.server_public_key when broker.curve is on; heartbeat and frame limits from
 * the config. Caller destroys it. NULL with the reason printed on stderr for @cmd. */
sn_rpc_t *ctl_rpc_new(const char *cmd, const sn_config_t *cfg);

/* The directory holding the sentinel binaries: $SENTINEL_BIN_DIR, else the directory of
 * /proc/self/exe. Caller frees. */
char *ctl_bin_dir(void);

/* `up`, first start: creates each missing project repository that names seed_from (bare,
 * branches main and staging, a post-receive hook calling `notify push`). False if one
 * could not be created (each failure is reported on stderr). */
bool ctl_seed_repos(const sn_config_t *cfg, const char *config_path);

/* `up`, once everything started: where the sites, previews and API are, and what to try
 * next (stderr). */
void ctl_up_banner(const sn_config_t *cfg, const char *config_path);

/* Command entry points: @argv[0] is the command name; each returns an exit code. */
int ctl_cmd_config(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_keygen(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_up(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_status(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_events(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_call(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_jobs(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_runs(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_run(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_history(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_deploy(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_approve(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_cancel(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_rollback(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_freeze(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_unfreeze(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_notify(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_audit(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_gc(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_github(ctl_opts_t *opts, int argc, char **argv);
int ctl_cmd_silence(ctl_opts_t *opts, int argc, char **argv);

#endif
