/* Helpers for the sentinelctl integration tests: run the real binary with arguments and
 * extra environment, capture stdout and stderr separately, bound the run with a deadline.
 * Header-only (static functions) so that each test_ctl_*.c stays one executable. */
#ifndef TEST_CTL_UTIL_H
#define TEST_CTL_UTIL_H

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sn_test.h"

typedef struct {
    int status; /* exit code, 128+signal if killed, -1 on timeout */
    char *out;  /* stdout */
    char *err;  /* stderr */
} ctl_result_t;

SN_UNUSED static void ctl_result_fini(ctl_result_t *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof *r);
}

/* Starts sentinelctl with @args (NULL-terminated, without argv[0]) and @env ("K=V"
 * entries, NULL-terminated, may be NULL), stdout to @out_path, stderr to @err_path.
 * Returns the pid. */
SN_UNUSED static pid_t ctl_spawn(const char *const *args, const char *const *env,
                                 const char *out_path, const char *err_path)
{
    /* SN_TEST_BIN_DIR is defined for test executables, not for the support library. */
    char *bin = sn_strdupf("%s/sentinelctl", SN_TEST_BIN_DIR);
    size_t n = 0;
    while (args[n])
        n++;
    char **argv = sn_calloc(n + 2, sizeof(char *));
    argv[0] = bin;
    for (size_t i = 0; i < n; i++)
        argv[i + 1] = (char *)args[i];
    pid_t pid = fork();
    SN_ASSERT(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        for (size_t i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        int fo = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fi = open("/dev/null", O_RDONLY);
        if (fo < 0 || fe < 0 || fi < 0)
            _exit(126);
        dup2(fi, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    free(argv);
    free(bin);
    return pid;
}

/* Waits up to @timeout_ms for @pid; returns the exit code (128+signal when killed), or
 * -1 after killing it on timeout. */
SN_UNUSED static int ctl_wait(pid_t pid, int timeout_ms)
{
    int64_t deadline = sn_mono_ms() + timeout_ms;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0)
            return -1;
        if (sn_mono_ms() >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

/* Runs sentinelctl to completion (deadline @timeout_ms) in @dir (for the capture
 * files) and captures its result. */
SN_UNUSED static ctl_result_t ctl_run_env(const char *dir, const char *const *args,
                                          const char *const *env, int timeout_ms)
{
    char *out_path = sn_strdupf("%s/ctl.out", dir);
    char *err_path = sn_strdupf("%s/ctl.err", dir);
    pid_t pid = ctl_spawn(args, env, out_path, err_path);
    ctl_result_t r = {.status = ctl_wait(pid, timeout_ms)};
    r.out = sn_test_read_file(out_path);
    r.err = sn_test_read_file(err_path);
    if (!r.out)
        r.out = sn_strdup("");
    if (!r.err)
        r.err = sn_strdup("");
    free(out_path);
    free(err_path);
    return r;
}

SN_UNUSED static ctl_result_t ctl_run(const char *dir, const char *const *args)
{
    return ctl_run_env(dir, args, NULL, 15000);
}

/* Writes @text into @path (mode 0644, or 0755 with @is_exec). */
SN_UNUSED static void ctl_write_file(const char *path, const char *text, bool is_exec)
{
    FILE *f = fopen(path, "w");
    SN_ASSERT(f);
    fputs(text, f);
    fclose(f);
    chmod(path, is_exec ? 0755 : 0644);
}

/* Number of lines in @text. */
SN_UNUSED static size_t ctl_count_lines(const char *text)
{
    size_t n = 0;
    for (const char *p = text; *p; p++)
        n += *p == '\n';
    return n;
}

#endif
