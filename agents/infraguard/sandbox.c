/* Build sandbox (see sandbox.h). The child is set up between fork and exec with
 * async-signal-safe calls only (everything it needs is prepared before the fork): its
 * own process group, stdin from /dev/null, output to the given descriptor, every other
 * descriptor closed, signal mask and dispositions reset, limits, then setgroups /
 * setgid / setuid, then execve with the given environment. The parent polls the child
 * every few milliseconds, reading captured output in between, and enforces the timeout
 * on the whole group. */
#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sentinel/sn_log.h"

#define S_POLL_MS 10
#define S_DEFAULT_GRACE_MS 2000
#define S_DEFAULT_PROGRESS_MS 1000
#define S_REAP_DEADLINE_MS 5000

extern char **environ;

static int s_warned_not_root; /* atomic */

static void s_child(char *const argv[], const sandbox_opts_t *o, char *const *envp, int in_fd,
                    int out_fd, int err_fd, bool do_drop, uid_t uid, gid_t gid);
static void s_kill_group(pid_t pgid, int sig);
static void s_reap_group(pid_t pgid);
static void s_nap_ms(int ms);

void sandbox_result_fini(sandbox_result_t *self)
{
    if (!self)
        return;
    free(self->output);
    self->output = NULL;
    self->output_len = 0;
}

sn_rc_t sandbox_lookup_user(const char *user, uid_t *uid, gid_t *gid)
{
    struct passwd pw, *res = NULL;
    char buf[4096];
    int err = getpwnam_r(user, &pw, buf, sizeof buf, &res);
    if (err != 0 || !res) {
        sn_error("sandbox", "unknown user user=%s", user);
        return SN_ERROR;
    }
    *uid = pw.pw_uid;
    *gid = pw.pw_gid;
    return SN_OK;
}

sn_rc_t sandbox_run(char *const argv[], const sandbox_opts_t *o, sandbox_result_t *out)
{
    SN_ASSERT(argv && argv[0] && o && out);
    memset(out, 0, sizeof *out);
    uid_t uid = 0;
    gid_t gid = 0;
    bool do_drop = false;
    if (o->user) {
        if (geteuid() == 0) {
            if (sandbox_lookup_user(o->user, &uid, &gid) != SN_OK)
                return SN_ERROR;
            do_drop = true;
        } else if (!__atomic_exchange_n(&s_warned_not_root, 1, __ATOMIC_RELAXED)) {
            sn_warn("sandbox", "not running as root: commands run as the current user, not %s",
                    o->user);
        }
    }
    /* Orphans of the group become our children, so we can reap them all. */
    (void)prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

    int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null_fd < 0) {
        sn_error("sandbox", "cannot open /dev/null: %s", strerror(errno));
        return SN_ERROR;
    }
    int pipefd[2] = {-1, -1};
    if (o->capture_max > 0 && pipe2(pipefd, O_CLOEXEC) != 0) {
        sn_error("sandbox", "pipe failed: %s", strerror(errno));
        close(null_fd);
        return SN_ERROR;
    }
    int err_fd = o->out_fd >= 0 ? o->out_fd : null_fd;
    int out_fd = o->capture_max > 0 ? pipefd[1] : err_fd;
    char *const *envp = o->envp ? o->envp : environ;

    int64_t start = sn_mono_ms();
    pid_t pid = fork();
    if (pid < 0) {
        sn_error("sandbox", "fork failed: %s", strerror(errno));
        close(null_fd);
        if (pipefd[0] >= 0) {
            close(pipefd[0]);
            close(pipefd[1]);
        }
        return SN_ERROR;
    }
    if (pid == 0)
        s_child(argv, o, envp, null_fd, out_fd, err_fd, do_drop, uid, gid);
    (void)setpgid(pid, pid); /* also in the child: whichever runs first */
    close(null_fd);
    if (pipefd[1] >= 0)
        close(pipefd[1]);

    size_t cap = o->capture_max;
    if (cap > 0)
        out->output = sn_malloc(cap + 1);
    int64_t deadline = o->timeout_ms > 0 ? start + o->timeout_ms : 0;
    int grace = o->kill_grace_ms > 0 ? o->kill_grace_ms : S_DEFAULT_GRACE_MS;
    int progress_ms = o->progress_ms > 0 ? o->progress_ms : S_DEFAULT_PROGRESS_MS;
    int64_t next_progress = start + progress_ms;
    int64_t kill_at = 0;
    sandbox_end_t forced = 0;
    int status = 0;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR) {
            sn_error("sandbox", "waitpid failed pid=%d: %s", (int)pid, strerror(errno));
            status = 0;
            break;
        }
        if (pipefd[0] >= 0) {
            struct pollfd p = {.fd = pipefd[0], .events = POLLIN};
            if (poll(&p, 1, S_POLL_MS) > 0) {
                char buf[4096];
                ssize_t n = read(pipefd[0], buf, sizeof buf);
                if (n > 0) {
                    size_t room = cap - out->output_len;
                    size_t k = (size_t)n < room ? (size_t)n : room;
                    memcpy(out->output + out->output_len, buf, k);
                    out->output_len += k;
                    out->is_output_truncated |= k < (size_t)n;
                } else if (n == 0) {
                    close(pipefd[0]);
                    pipefd[0] = -1;
                }
            }
        } else {
            s_nap_ms(S_POLL_MS);
        }
        int64_t now = sn_mono_ms();
        if (!forced && deadline && now >= deadline)
            forced = SANDBOX_TIMED_OUT;
        if (!forced && o->progress && now >= next_progress) {
            next_progress = now + progress_ms;
            if (!o->progress(o->progress_arg))
                forced = SANDBOX_ABORTED;
        }
        if (forced && !kill_at) {
            s_kill_group(pid, SIGTERM);
            kill_at = now + grace;
        } else if (kill_at && now >= kill_at) {
            s_kill_group(pid, SIGKILL);
            kill_at = now + grace;
        }
    }
    /* Whatever the leader did, nothing of its group outlives the run. */
    s_kill_group(pid, SIGKILL);
    s_reap_group(pid);
    if (pipefd[0] >= 0) {
        (void)fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
        char buf[4096];
        ssize_t n;
        while ((n = read(pipefd[0], buf, sizeof buf)) > 0) {
            size_t room = cap - out->output_len;
            size_t k = (size_t)n < room ? (size_t)n : room;
            memcpy(out->output + out->output_len, buf, k);
            out->output_len += k;
            out->is_output_truncated |= k < (size_t)n;
        }
        close(pipefd[0]);
    }
    if (out->output)
        out->output[out->output_len] = '\0';
    out->duration_ms = sn_mono_ms() - start;
    if (forced) {
        out->end = forced;
        out->code = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    } else if (WIFEXITED(status)) {
        out->end = SANDBOX_EXITED;
        out->code = WEXITSTATUS(status);
    } else {
        out->end = SANDBOX_SIGNALED;
        out->code = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    }
    return SN_OK;
}

static _Thread_local uid_t s_chown_uid;
static _Thread_local gid_t s_chown_gid;

static int s_chown_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (lchown(path, s_chown_uid, s_chown_gid) != 0) {
        sn_error("sandbox", "chown failed path=%s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

sn_rc_t sandbox_chown_tree(const char *path, uid_t uid, gid_t gid)
{
    s_chown_uid = uid;
    s_chown_gid = gid;
    return nftw(path, s_chown_one, 32, FTW_PHYS) == 0 ? SN_OK : SN_ERROR;
}

char *sandbox_find_program(const char *name)
{
    const char *path = getenv("PATH");
    char *list = sn_strdupf("%s:/usr/local/bin:/usr/bin:/bin", path ? path : "");
    char *found = NULL;
    for (char *dir = list, *next; dir && !found; dir = next) {
        next = strchr(dir, ':');
        if (next)
            *next++ = '\0';
        if (*dir != '/')
            continue;
        char *cand = sn_strdupf("%s/%s", dir, name);
        if (access(cand, X_OK) == 0)
            found = cand;
        else
            free(cand);
    }
    free(list);
    return found;
}

const char *sandbox_describe(const sandbox_result_t *res, char *buf, size_t len)
{
    switch (res->end) {
    case SANDBOX_EXITED:
        snprintf(buf, len, "exited %d", res->code);
        break;
    case SANDBOX_SIGNALED:
        snprintf(buf, len, "killed by signal %d", res->code);
        break;
    case SANDBOX_TIMED_OUT:
        snprintf(buf, len, "timed out");
        break;
    case SANDBOX_ABORTED:
        snprintf(buf, len, "aborted");
        break;
    default:
        snprintf(buf, len, "did not run");
        break;
    }
    return buf;
}

/* ---- helpers -------------------------------------------------------------------------- */

/* Writes a fixed message on fd 2 of the child (async-signal-safe) and exits. */
static _Noreturn void s_child_fail(const char *what, int code)
{
    ssize_t n = write(2, what, strlen(what));
    (void)n;
    _exit(code);
}

static void s_set_limit(int resource, rlim_t value)
{
    struct rlimit rl = {value, value};
    (void)setrlimit(resource, &rl);
}

/* The child between fork and exec: async-signal-safe calls only. */
static void s_child(char *const argv[], const sandbox_opts_t *o, char *const *envp, int in_fd,
                    int out_fd, int err_fd, bool do_drop, uid_t uid, gid_t gid)
{
    (void)setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL);
    if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
        _exit(127);
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
#endif
    {
        long max = sysconf(_SC_OPEN_MAX);
        if (max < 0 || max > 65536)
            max = 65536;
        for (int fd = 3; fd < max; fd++)
            (void)close(fd);
    }
    if (o->cwd && chdir(o->cwd) != 0)
        s_child_fail("sandbox: cannot enter the working directory\n", 127);
    if (o->rlimit_as_mb > 0)
        s_set_limit(RLIMIT_AS, (rlim_t)o->rlimit_as_mb << 20);
    if (o->rlimit_nproc > 0)
        s_set_limit(RLIMIT_NPROC, (rlim_t)o->rlimit_nproc);
    if (o->rlimit_fsize_mb > 0)
        s_set_limit(RLIMIT_FSIZE, (rlim_t)o->rlimit_fsize_mb << 20);
    if (o->is_core_disabled)
        s_set_limit(RLIMIT_CORE, 0);
    if (do_drop) {
        if (setgroups(1, &gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0)
            s_child_fail("sandbox: cannot drop privileges\n", 126);
        if (setuid(0) == 0)
            s_child_fail("sandbox: privileges not dropped\n", 126);
    }
    execve(argv[0], argv, envp);
    s_child_fail("sandbox: exec failed\n", 127);
}

static void s_kill_group(pid_t pgid, int sig)
{
    if (kill(-pgid, sig) != 0 && errno != ESRCH)
        sn_warn("sandbox", "kill failed pgid=%d sig=%d: %s", (int)pgid, sig, strerror(errno));
}

/* Reaps every member of group @pgid that is (or became, as an orphan) our child. */
static void s_reap_group(pid_t pgid)
{
    int64_t until = sn_mono_ms() + S_REAP_DEADLINE_MS;
    for (;;) {
        int st;
        pid_t w = waitpid(-pgid, &st, WNOHANG);
        if (w > 0)
            continue;
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) /* ECHILD: none left */
            return;
        if (sn_mono_ms() >= until) {
            sn_warn("sandbox", "processes of group pgid=%d still running after SIGKILL", (int)pgid);
            return;
        }
        s_kill_group(pgid, SIGKILL);
        s_nap_ms(2);
    }
}

static void s_nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}
