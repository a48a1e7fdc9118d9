/* Running commands for build-validator and infraguard without a shell between Sentinel
 * and the user's strings: a child in its own process group, with the environment it is
 * given and nothing else, optionally as an unprivileged user with resource limits, its
 * output going to a log file (or captured, bounded), and a timeout that kills the whole
 * group (SIGTERM, then SIGKILL after a grace period). The calling process becomes a
 * child subreaper (prctl PR_SET_CHILD_SUBREAPER) on the first run, so that a step's
 * background processes are reparented to it and reaped here: when a run returns, no
 * process of its group remains. Blocking: call from a job thread, never the loop. */
#ifndef SANDBOX_H
#define SANDBOX_H

#include <sys/types.h>

#include "sentinel/sn_common.h"

/* Called about every progress_ms while the child runs; returning false aborts the run
 * (the group is killed and the result is SANDBOX_ABORTED). */
typedef bool(sandbox_progress_fn)(void *arg);

typedef struct {
    const char *cwd;         /* working directory; NULL: inherit */
    char *const *envp;       /* the complete environment; NULL: this process's */
    const char *user;        /* run as this user (needs root); NULL: as this process */
    int64_t rlimit_as_mb;    /* RLIMIT_AS; 0: unchanged */
    int64_t rlimit_nproc;    /* RLIMIT_NPROC; 0: unchanged */
    int64_t rlimit_fsize_mb; /* RLIMIT_FSIZE; 0: unchanged */
    bool is_core_disabled;   /* RLIMIT_CORE 0 */
    int out_fd;              /* stdout and stderr go here; -1: /dev/null */
    size_t capture_max;      /* > 0: stdout captured (up to this many bytes), stderr to out_fd */
    int64_t timeout_ms;      /* <= 0: no timeout */
    int kill_grace_ms;       /* SIGTERM to SIGKILL; 0: 2000 */
    sandbox_progress_fn *progress;
    void *progress_arg;
    int progress_ms; /* 0: 1000 */
} sandbox_opts_t;

typedef enum {
    SANDBOX_EXITED = 1, /* exit status in code */
    SANDBOX_SIGNALED,   /* killed by signal code */
    SANDBOX_TIMED_OUT,  /* the group was killed at the timeout */
    SANDBOX_ABORTED,    /* progress returned false; the group was killed */
} sandbox_end_t;

typedef struct {
    sandbox_end_t end;
    int code;            /* exit status or signal number */
    int64_t duration_ms; /* from spawn to the last process of the group reaped */
    char *output;        /* captured stdout, NUL-terminated (heap; NULL if none) */
    size_t output_len;
    bool is_output_truncated;
} sandbox_result_t;

/* Frees the captured output. NULL-safe. */
void sandbox_result_fini(sandbox_result_t *self);

/* The uid/gid of @user; SN_ERROR (logged) if unknown. */
SN_NODISCARD sn_rc_t sandbox_lookup_user(const char *user, uid_t *uid, gid_t *gid);

/* Runs @argv (argv[0] is a path, no PATH search) as described by @opts and waits for
 * it and its whole process group. SN_OK with *out filled (caller finis) whatever the
 * child did; SN_ERROR (logged) if it could not be started (unknown user, fork or pipe
 * failure, bad cwd is reported as exit status 127 by the child instead). */
SN_NODISCARD sn_rc_t sandbox_run(char *const argv[], const sandbox_opts_t *opts,
                                 sandbox_result_t *out);

/* Changes the owner of @path and everything below it (lchown: symlinks themselves, never
 * their targets). SN_ERROR (logged) on the first failure. */
SN_NODISCARD sn_rc_t sandbox_chown_tree(const char *path, uid_t uid, gid_t gid);

/* The absolute path of program @name: the first executable in this process's PATH, else
 * in /usr/local/bin, /usr/bin, /bin. Caller frees; NULL if not found. */
char *sandbox_find_program(const char *name);

/* "step exited 1", "killed by signal 9", "timed out", "aborted" for @res into @buf. */
const char *sandbox_describe(const sandbox_result_t *res, char *buf, size_t len);

#endif
