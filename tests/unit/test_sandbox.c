/* Unit tests of the build sandbox (agents/infraguard/sandbox.c): the child sees only the
 * environment it is given, runs as the unprivileged user when we are root, gets its
 * limits and no inherited descriptors, and a timeout leaves no process of its group
 * behind (background children included); exit statuses and signals are reported. */
#include "sn_test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sandbox.h"

typedef struct {
    char *dir;
    char *log;
    int fd;
} s_fix_t;

static int s_setup(void **state)
{
    s_fix_t *f = sn_calloc(1, sizeof *f);
    f->dir = sn_test_tmpdir("sandbox");
    f->log = sn_strdupf("%s/run.log", f->dir);
    f->fd = open(f->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(f->fd >= 0);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    s_fix_t *f = *state;
    close(f->fd);
    sn_test_rmdir(f->dir);
    free(f->dir);
    free(f->log);
    free(f);
    return 0;
}

/* Says go on once, then stop. */
static bool s_stop(void *arg)
{
    int *calls = arg;
    return ++*calls < 2;
}

static sandbox_result_t s_sh(s_fix_t *f, const char *script, sandbox_opts_t *o)
{
    char *argv[] = {"/bin/sh", "-c", (char *)script, NULL};
    o->out_fd = f->fd;
    sandbox_result_t res;
    assert_int_equal(sandbox_run(argv, o, &res), SN_OK);
    return res;
}

/* True if a process (not a zombie) of group @pgid exists. */
static bool s_group_alive(pid_t pgid)
{
    DIR *d = opendir("/proc");
    assert_non_null(d);
    bool alive = false;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && !alive) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char *path = sn_strdupf("/proc/%s/stat", e->d_name);
        char *stat = sn_test_read_file(path);
        free(path);
        if (!stat)
            continue;
        char *rp = strrchr(stat, ')');
        char state = 0;
        int ppid = 0, pgrp = 0;
        if (rp && sscanf(rp + 2, "%c %d %d", &state, &ppid, &pgrp) == 3 && pgrp == pgid &&
            state != 'Z')
            alive = true;
        free(stat);
    }
    closedir(d);
    return alive;
}

/* The integer after @key in the log, or -1. */
static long s_log_value(s_fix_t *f, const char *key)
{
    char *text = sn_test_read_file(f->log);
    assert_non_null(text);
    char *p = strstr(text, key);
    long v = p ? strtol(p + strlen(key), NULL, 10) : -1;
    free(text);
    return v;
}

static void test_sandbox_env_is_only_what_is_given(void **state)
{
    s_fix_t *f = *state;
    setenv("SN_SECRET_CANARY", "canary-value-1234", 1);
    char *env[] = {"PATH=/usr/bin:/bin", "HOME=/nonexistent", "LANG=C.UTF-8", "DECLARED=yes", NULL};
    sandbox_opts_t o = {.envp = env, .timeout_ms = 10000};
    sandbox_result_t res = s_sh(f, "env", &o);
    assert_int_equal(res.end, SANDBOX_EXITED);
    assert_int_equal(res.code, 0);
    char *text = sn_test_read_file(f->log);
    assert_non_null(strstr(text, "DECLARED=yes\n"));
    assert_non_null(strstr(text, "LANG=C.UTF-8\n"));
    assert_null(strstr(text, "SN_SECRET_CANARY"));
    assert_null(strstr(text, "canary-value-1234"));
    /* Nothing of this process's environment: PATH is the one given. */
    assert_non_null(strstr(text, "PATH=/usr/bin:/bin\n"));
    assert_null(strstr(text, "SN_TEST"));
    free(text);
    unsetenv("SN_SECRET_CANARY");
}

static void test_sandbox_runs_as_nobody_when_root(void **state)
{
    s_fix_t *f = *state;
    sandbox_opts_t o = {.user = "nobody", .timeout_ms = 10000, .cwd = f->dir};
    sandbox_result_t res = s_sh(f, "echo uid=$(id -u) gid=$(id -g) groups=$(id -G)", &o);
    assert_int_equal(res.end, SANDBOX_EXITED);
    assert_int_equal(res.code, 0);
    if (geteuid() == 0) {
        uid_t uid;
        gid_t gid;
        assert_int_equal(sandbox_lookup_user("nobody", &uid, &gid), SN_OK);
        assert_int_equal(s_log_value(f, "uid="), (long)uid);
        assert_int_equal(s_log_value(f, "gid="), (long)gid);
        assert_int_equal(s_log_value(f, "groups="), (long)gid);
    } else {
        assert_int_equal(s_log_value(f, "uid="), (long)geteuid());
    }
    /* An unknown user is refused before anything runs. */
    char *argv[] = {"/bin/true", NULL};
    sandbox_opts_t bad = {.user = "no-such-user-sn", .out_fd = -1};
    sandbox_result_t r2;
    if (geteuid() == 0)
        assert_int_equal(sandbox_run(argv, &bad, &r2), SN_ERROR);
}

static void test_sandbox_timeout_kills_the_group(void **state)
{
    s_fix_t *f = *state;
    sandbox_opts_t o = {.timeout_ms = 300, .kill_grace_ms = 500};
    int64_t t0 = sn_mono_ms();
    sandbox_result_t res =
        s_sh(f, "echo pgid=$$; sleep 1000 & echo bg=$!; trap '' TERM; sleep 1000; sleep 1000", &o);
    int64_t took = sn_mono_ms() - t0;
    assert_int_equal(res.end, SANDBOX_TIMED_OUT);
    assert_true(took >= 300 && took < 5000);
    long pgid = s_log_value(f, "pgid=");
    long bg = s_log_value(f, "bg=");
    assert_true(pgid > 1 && bg > 1);
    assert_false(s_group_alive((pid_t)pgid));
    assert_int_equal(kill((pid_t)bg, 0), -1);
    assert_int_equal(errno, ESRCH);
}

static void test_sandbox_background_children_do_not_survive(void **state)
{
    s_fix_t *f = *state;
    sandbox_opts_t o = {.timeout_ms = 10000};
    sandbox_result_t res = s_sh(f, "echo pgid=$$; (sleep 1000 &) ; sleep 1000 & exit 0", &o);
    assert_int_equal(res.end, SANDBOX_EXITED);
    assert_int_equal(res.code, 0);
    long pgid = s_log_value(f, "pgid=");
    assert_true(pgid > 1);
    assert_false(s_group_alive((pid_t)pgid));
}

static void test_sandbox_reports_exit_status_and_signal(void **state)
{
    s_fix_t *f = *state;
    sandbox_opts_t o = {.timeout_ms = 10000};
    sandbox_result_t res = s_sh(f, "exit 3", &o);
    assert_int_equal(res.end, SANDBOX_EXITED);
    assert_int_equal(res.code, 3);
    char buf[64];
    assert_string_equal(sandbox_describe(&res, buf, sizeof buf), "exited 3");
    res = s_sh(f, "kill -9 $$", &o);
    assert_int_equal(res.end, SANDBOX_SIGNALED);
    assert_int_equal(res.code, SIGKILL);
    assert_string_equal(sandbox_describe(&res, buf, sizeof buf), "killed by signal 9");
    /* A working directory that does not exist: the child reports 127. */
    sandbox_opts_t bad = {.timeout_ms = 10000, .cwd = "/nonexistent/sn-dir"};
    res = s_sh(f, "true", &bad);
    assert_int_equal(res.end, SANDBOX_EXITED);
    assert_int_equal(res.code, 127);
    /* A program that does not exist. */
    char *argv[] = {"/nonexistent/sn-prog", NULL};
    sandbox_opts_t o2 = {.out_fd = -1};
    assert_int_equal(sandbox_run(argv, &o2, &res), SN_OK);
    assert_int_equal(res.end, SANDBOX_EXITED);
    assert_int_equal(res.code, 127);
}

static void test_sandbox_limits_and_descriptors(void **state)
{
    s_fix_t *f = *state;
    int leak = open("/dev/null", O_RDONLY); /* without O_CLOEXEC on purpose */
    assert_true(leak >= 0);
    sandbox_opts_t o = {.timeout_ms = 10000,
                        .rlimit_as_mb = 512,
                        .rlimit_nproc = 77,
                        .rlimit_fsize_mb = 1,
                        .is_core_disabled = true};
    sandbox_result_t res =
        s_sh(f, "cat /proc/self/limits; echo fds=$(ls /proc/self/fd | wc -l)", &o);
    close(leak);
    assert_int_equal(res.end, SANDBOX_EXITED);
    assert_int_equal(res.code, 0);
    char *text = sn_test_read_file(f->log);
    assert_non_null(strstr(text, "Max address space         536870912"));
    assert_non_null(strstr(text, "Max processes             77"));
    assert_non_null(strstr(text, "Max file size             1048576"));
    assert_non_null(strstr(text, "Max core file size        0"));
    free(text);
    /* ls sees 0, 1, 2 and its own directory descriptor: nothing inherited. */
    assert_int_equal(s_log_value(f, "fds="), 4);
    /* Writing past the file size limit fails. */
    res = s_sh(f, "head -c 3000000 /dev/zero > big",
               &(sandbox_opts_t){.timeout_ms = 10000, .cwd = f->dir, .rlimit_fsize_mb = 1});
    assert_false(res.end == SANDBOX_EXITED && res.code == 0);
}

static void test_sandbox_capture_and_abort(void **state)
{
    s_fix_t *f = *state;
    char *argv[] = {"/bin/sh", "-c", "echo hello; echo to-stderr >&2", NULL};
    sandbox_opts_t o = {.out_fd = f->fd, .capture_max = 64, .timeout_ms = 10000};
    sandbox_result_t res;
    assert_int_equal(sandbox_run(argv, &o, &res), SN_OK);
    assert_string_equal(res.output, "hello\n");
    assert_false(res.is_output_truncated);
    sandbox_result_fini(&res);
    assert_true(sn_test_count_in_file(f->log, "to-stderr") == 1);
    o.capture_max = 3;
    assert_int_equal(sandbox_run(argv, &o, &res), SN_OK);
    assert_string_equal(res.output, "hel");
    assert_true(res.is_output_truncated);
    sandbox_result_fini(&res);

    /* Progress returning false stops the run. */
    int calls = 0;
    char *slow[] = {"/bin/sh", "-c", "sleep 1000", NULL};
    sandbox_opts_t p = {.out_fd = -1, .progress_ms = 50, .kill_grace_ms = 500};
    p.progress = s_stop;
    p.progress_arg = &calls;
    int64_t t0 = sn_mono_ms();
    assert_int_equal(sandbox_run(slow, &p, &res), SN_OK);
    assert_int_equal(res.end, SANDBOX_ABORTED);
    assert_true(sn_mono_ms() - t0 < 3000);
    assert_int_equal(calls, 2);
}

static void test_sandbox_chown_and_find(void **state)
{
    s_fix_t *f = *state;
    char *sub = sn_strdupf("%s/tree", f->dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    char *file = sn_strdupf("%s/tree/a", f->dir);
    close(open(file, O_WRONLY | O_CREAT, 0644));
    char *link = sn_strdupf("%s/tree/l", f->dir);
    assert_int_equal(symlink("/etc/hostname", link), 0);
    struct stat before;
    assert_int_equal(stat("/etc/hostname", &before), 0);
    if (geteuid() == 0) {
        assert_int_equal(sandbox_chown_tree(sub, 65534, 65534), SN_OK);
        struct stat st;
        assert_int_equal(stat(file, &st), 0);
        assert_int_equal(st.st_uid, 65534);
        assert_int_equal(lstat(link, &st), 0);
        assert_int_equal(st.st_uid, 65534);
        assert_int_equal(stat("/etc/hostname", &st), 0);
        assert_int_equal(st.st_uid, before.st_uid); /* the target is untouched */
    }
    char *missing = sn_strdupf("%s/none", f->dir);
    assert_int_equal(sandbox_chown_tree(missing, 0, 0), SN_ERROR);
    char *sh = sandbox_find_program("sh");
    assert_non_null(sh);
    assert_true(sh[0] == '/');
    assert_null(sandbox_find_program("sn-no-such-program-xyz"));
    free(sh);
    free(missing);
    free(link);
    free(file);
    free(sub);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sandbox_env_is_only_what_is_given, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_runs_as_nobody_when_root, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_timeout_kills_the_group, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_background_children_do_not_survive, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_reports_exit_status_and_signal, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_limits_and_descriptors, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_capture_and_abort, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_chown_and_find, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
