/* `sentinelctl up` on first start creates a project's repository from seed_from: bare,
 * branches main and staging with the seed's files, and a post-receive hook that runs
 * `sentinelctl notify push`. A second start leaves it alone. */
#include "sn_test.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

typedef struct {
    const char *path;
} s_file_wait_t;

typedef struct {
    const char *log;
    int count;
} s_log_wait_t;

/* The supervisor has its signal handling up once it started redis. */
static bool s_started(void *arg)
{
    s_log_wait_t *w = arg;
    return sn_test_count_in_file(w->log, "started redis") >= w->count;
}

static bool s_exists(void *arg)
{
    struct stat st;
    return stat(((s_file_wait_t *)arg)->path, &st) == 0;
}

static char *s_git(const char *repo, const char *args)
{
    char *cmd = sn_strdupf("git --git-dir '%s' %s 2>&1", repo, args);
    FILE *p = popen(cmd, "r");
    free(cmd);
    char buf[4096] = "";
    size_t n = p ? fread(buf, 1, sizeof buf - 1, p) : 0;
    buf[n] = '\0';
    if (p)
        pclose(p);
    return sn_strdup(buf);
}

static void test_ctl_seed_creates_repo_once(void **state)
{
    char *dir = sn_test_tmpdir("seed");
    char *repo = sn_strdupf("%s/var/hello.git", dir);
    char *config = sn_strdupf("%s/sentinel.yml", dir);
    FILE *f = fopen(config, "w");
    assert_non_null(f);
    fprintf(f,
            "namespace: \"seed:\"\nstate_dir: %s/var\nredis: embedded\n"
            "broker:\n  rpc: tcp://127.0.0.1:%d\n  pub: tcp://127.0.0.1:%d\n"
            "  sub: tcp://127.0.0.1:%d\n"
            "projects:\n  - name: hello\n    repo: %s\n    seed_from: %s/examples/hello-site\n"
            "    environments:\n      - {name: staging, branch: staging}\n",
            dir, sn_test_free_port(), sn_test_free_port(), sn_test_free_port(), repo,
            SN_SOURCE_DIR);
    fclose(f);
    char *ctl = sn_test_bin("sentinelctl");
    char *log = sn_strdupf("%s/up.log", dir);
    char *argv[] = {ctl, "up", config, NULL};
    pid_t pid = sn_test_spawn(argv, log);
    char *hook = sn_strdupf("%s/hooks/post-receive", repo);
    s_file_wait_t w = {hook};
    assert_true(sn_test_wait_for(s_exists, &w, 20000));
    s_log_wait_t started = {log, 1};
    assert_true(sn_test_wait_for(s_started, &started, 20000));
    int st = sn_test_stop(pid, SIGTERM, 10000);
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);

    char *branches = s_git(repo, "branch --list");
    assert_non_null(strstr(branches, "main"));
    assert_non_null(strstr(branches, "staging"));
    char *files = s_git(repo, "ls-tree -r --name-only staging");
    assert_non_null(strstr(files, "build.sh"));
    assert_non_null(strstr(files, "src/index.html"));
    char *hook_text = sn_test_read_file(hook);
    assert_non_null(strstr(hook_text, "notify push --project 'hello'"));
    struct stat hs;
    assert_int_equal(stat(hook, &hs), 0);
    assert_true(hs.st_mode & S_IXUSR);
    char *head1 = s_git(repo, "rev-parse main");

    /* A second start keeps the repository (and whatever was pushed to it). */
    pid = sn_test_spawn(argv, log);
    started.count = 2;
    assert_true(sn_test_wait_for(s_started, &started, 20000));
    st = sn_test_stop(pid, SIGTERM, 10000);
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char *head2 = s_git(repo, "rev-parse main");
    assert_string_equal(head1, head2);
    assert_int_equal(sn_test_count_in_file(log, "created repository"), 1);

    free(head1);
    free(head2);
    free(hook_text);
    free(files);
    free(branches);
    free(hook);
    free(argv[0]);
    free(log);
    free(config);
    free(repo);
    sn_test_rmdir(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctl_seed_creates_repo_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
