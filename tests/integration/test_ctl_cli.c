/* sentinelctl without a running mesh: usage errors (exit 2, one line on stderr, nothing
 * on stdout), help, `config check` on good and bad files, and `keygen`. Runs the real
 * binary. */
#include "test_ctl_util.h"

#include <czmq.h>
#include <jansson.h>

typedef struct {
    char *dir;
} fixture_t;

static int s_setup(void **state)
{
    fixture_t *f = sn_calloc(1, sizeof *f);
    f->dir = sn_test_tmpdir("ctlcli");
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    fixture_t *f = *state;
    sn_test_rmdir(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* Exit 2, exactly one line on stderr that names the problem, nothing on stdout. */
static void s_expect_usage(fixture_t *f, const char *const *args, const char *needle)
{
    ctl_result_t r = ctl_run(f->dir, args);
    if (r.status != 2 || !strstr(r.err, needle))
        print_error("args[0]=%s status=%d stderr=%s\n", args[0] ? args[0] : "(none)", r.status,
                    r.err);
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, needle));
    assert_int_equal(ctl_count_lines(r.err), 1);
    assert_string_equal(r.out, "");
    ctl_result_fini(&r);
}

static void test_ctl_cli_usage_errors_exit_2(void **state)
{
    fixture_t *f = *state;
    s_expect_usage(f, (const char *[]){NULL}, "usage");
    s_expect_usage(f, (const char *[]){"frobnicate", NULL}, "unknown command 'frobnicate'");
    s_expect_usage(f, (const char *[]){"--bogus", "status", NULL}, "unknown option '--bogus'");
    s_expect_usage(f, (const char *[]){"status", "--bogus", NULL}, "unknown option '--bogus'");
    s_expect_usage(f, (const char *[]){"status", "-x", NULL}, "unknown option '-x'");
    s_expect_usage(f, (const char *[]){"-o", "yaml", "status", NULL}, "unknown output format");
    s_expect_usage(f, (const char *[]){"events", "-o", NULL}, "needs a value");
    s_expect_usage(f, (const char *[]){"events", "--since-id", "abc", NULL}, "not a stream id");
    s_expect_usage(f, (const char *[]){"events", "--since-id", "12-", NULL}, "not a stream id");
    s_expect_usage(f, (const char *[]){"events", "extra", NULL}, "unexpected argument");
    s_expect_usage(f, (const char *[]){"config", NULL}, "missing subcommand");
    s_expect_usage(f, (const char *[]){"config", "lint", NULL}, "unknown subcommand 'lint'");
    s_expect_usage(f, (const char *[]){"config", "check", "a.yml", "b.yml", NULL},
                   "unexpected argument");
    s_expect_usage(f, (const char *[]){"keygen", NULL}, "missing DIR");
    s_expect_usage(f, (const char *[]){"keygen", f->dir, "--name", "../evil", NULL}, "bad --name");
    s_expect_usage(f, (const char *[]){"up", "a.yml", "b.yml", NULL}, "unexpected argument");
    s_expect_usage(f, (const char *[]){"jobs", "--dead", "x", NULL}, "unexpected argument");
    s_expect_usage(f, (const char *[]){"call", NULL}, "missing SERVICE");
    s_expect_usage(f, (const char *[]){"call", "echo", NULL}, "--data");
    s_expect_usage(f, (const char *[]){"call", "echo", "--data", "{}", "--timeout", "-5", NULL},
                   "--timeout");
}

static void test_ctl_cli_help_exits_0(void **state)
{
    fixture_t *f = *state;
    const char *cmds[] = {"up", "status", "events", "call", "jobs", "config", "keygen"};
    for (size_t i = 0; i < SN_ARRAY_LEN(cmds); i++) {
        ctl_result_t r = ctl_run(f->dir, (const char *[]){cmds[i], "--help", NULL});
        assert_int_equal(r.status, 0);
        assert_non_null(strstr(r.out, "usage: sentinelctl"));
        assert_non_null(strstr(r.out, cmds[i]));
        ctl_result_fini(&r);
    }
    ctl_result_t r = ctl_run(f->dir, (const char *[]){"--help", NULL});
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "exit codes"));
    ctl_result_fini(&r);
}

static const char s_good_yaml[] = "namespace: \"tcli:\"\n"
                                  "state_dir: /tmp/sn-ctlcli-state\n"
                                  "redis: embedded\n"
                                  "processes:\n"
                                  "  - role: test-echo\n"
                                  "    instances: 2\n"
                                  "  - role: test-leader\n";

static void test_ctl_cli_config_check_good(void **state)
{
    fixture_t *f = *state;
    char *path = sn_strdupf("%s/good.yml", f->dir);
    ctl_write_file(path, s_good_yaml, false);

    ctl_result_t r = ctl_run(f->dir, (const char *[]){"config", "check", path, NULL});
    assert_int_equal(r.status, 0);
    assert_true(strncmp(r.out, "ok", 2) == 0);
    assert_non_null(strstr(r.out, "namespace\ttcli:\n")); /* not a tty: tab-separated */
    assert_non_null(strstr(r.out, "2 roles, 3 instances"));
    assert_null(strstr(r.out, "\033[")); /* no color when piped */
    assert_string_equal(r.err, "");
    ctl_result_fini(&r);

    /* The shipped example is valid, and starts every role its targets need. */
    char *example = sn_strdupf("%s/examples/sentinel.yml", SN_SOURCE_DIR);
    r = ctl_run(f->dir, (const char *[]){"config", "check", example, NULL});
    assert_int_equal(r.status, 0);
    assert_string_equal(r.err, "");
    ctl_result_fini(&r);
    free(example);

    /* A cloud target whose deployer roles are not started here: a warning, not an error. */
    char *cloud = sn_strdupf("%s/cloud.yml", f->dir);
    char *yaml = sn_strdupf("%stargets:\n  - {name: cf, type: cloudflare_pages, account_id: a, "
                            "project: p, token: t}\n",
                            s_good_yaml);
    ctl_write_file(cloud, yaml, false);
    r = ctl_run(f->dir, (const char *[]){"config", "check", cloud, NULL});
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.err, "cloudflare_pages targets need role cloudflare-deployer"));
    assert_null(strstr(r.err, "token: t"));
    ctl_result_fini(&r);
    free(yaml);
    free(cloud);

    /* -c and $SENTINEL_CONFIG name the default file. */
    r = ctl_run(f->dir, (const char *[]){"-c", path, "config", "check", NULL});
    assert_int_equal(r.status, 0);
    ctl_result_fini(&r);
    char *env = sn_strdupf("SENTINEL_CONFIG=%s", path);
    r = ctl_run_env(f->dir, (const char *[]){"config", "check", NULL}, (const char *[]){env, NULL},
                    15000);
    assert_int_equal(r.status, 0);
    ctl_result_fini(&r);
    free(env);

    /* JSON: one document with the summary; CLICOLOR_FORCE does not color JSON. */
    r = ctl_run_env(f->dir, (const char *[]){"config", "check", "-o", "json", path, NULL},
                    (const char *[]){"CLICOLOR_FORCE=1", NULL}, 15000);
    assert_int_equal(r.status, 0);
    assert_int_equal(ctl_count_lines(r.out), 1);
    json_error_t jerr;
    json_t *doc = json_loads(r.out, 0, &jerr);
    assert_non_null(doc);
    assert_true(json_is_true(json_object_get(doc, "ok")));
    assert_string_equal(json_string_value(json_object_get(doc, "namespace")), "tcli:");
    assert_true(json_is_true(json_object_get(json_object_get(doc, "redis"), "embedded")));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(doc, "redis"), "unix_path")),
        "/tmp/sn-ctlcli-state/redis.sock");
    json_t *procs = json_object_get(doc, "processes");
    assert_int_equal(json_array_size(procs), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(procs, 0), "instances")), 2);
    json_decref(doc);
    ctl_result_fini(&r);

    /* CLICOLOR_FORCE colors the table even when piped; NO_COLOR wins over it. */
    r = ctl_run_env(f->dir, (const char *[]){"config", "check", path, NULL},
                    (const char *[]){"CLICOLOR_FORCE=1", NULL}, 15000);
    assert_non_null(strstr(r.out, "\033["));
    ctl_result_fini(&r);
    r = ctl_run_env(f->dir, (const char *[]){"config", "check", path, NULL},
                    (const char *[]){"CLICOLOR_FORCE=1", "NO_COLOR=1", NULL}, 15000);
    assert_null(strstr(r.out, "\033["));
    ctl_result_fini(&r);
    r = ctl_run_env(f->dir, (const char *[]){"config", "check", "--no-color", path, NULL},
                    (const char *[]){"CLICOLOR_FORCE=1", NULL}, 15000);
    assert_null(strstr(r.out, "\033["));
    ctl_result_fini(&r);
    free(path);
}

/* A bad file: exit 1, nothing on stdout, "file:line:col: key: message" on stderr. */
static void s_expect_bad(fixture_t *f, const char *name, const char *yaml, const char *where)
{
    char *path = sn_strdupf("%s/%s", f->dir, name);
    ctl_write_file(path, yaml, false);
    ctl_result_t r = ctl_run(f->dir, (const char *[]){"config", "check", path, NULL});
    char *expect = sn_strdupf("%s:%s", path, where);
    if (r.status != 1 || !strstr(r.err, expect))
        print_error("%s: status=%d stderr=%s\n", name, r.status, r.err);
    assert_int_equal(r.status, 1);
    assert_string_equal(r.out, "");
    assert_true(strncmp(r.err, expect, strlen(expect)) == 0);
    free(expect);
    free(path);
    ctl_result_fini(&r);
}

static void test_ctl_cli_config_check_bad(void **state)
{
    fixture_t *f = *state;
    s_expect_bad(f, "unknown.yml", "namespace: \"x:\"\nbogus_key: 1\n", "2:1: bogus_key: ");
    s_expect_bad(f, "type.yml", "redis:\n  port: abc\n", "2:9: redis.port: ");
    s_expect_bad(f, "instances.yml", "processes:\n  - role: a\n    instances: 0\n",
                 "3:16: processes[0].instances: ");
    s_expect_bad(f, "syntax.yml", "processes:\n  - role: a\n    instances: [1\n", "4:1:");

    char *missing = sn_strdupf("%s/missing.yml", f->dir);
    ctl_result_t r = ctl_run(f->dir, (const char *[]){"config", "check", missing, NULL});
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, missing));
    ctl_result_fini(&r);
    free(missing);
}

static void test_ctl_cli_keygen_writes_loadable_pair(void **state)
{
    fixture_t *f = *state;
    char *dir = sn_strdupf("%s/keys", f->dir);
    ctl_result_t r = ctl_run(f->dir, (const char *[]){"keygen", dir, NULL});
    assert_int_equal(r.status, 0);
    char *pub = sn_strdupf("%s/sentinel", dir);
    char *sec = sn_strdupf("%s/sentinel_secret", dir);
    struct stat st;
    assert_int_equal(stat(sec, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(pub, &st), 0);
    assert_int_equal(st.st_mode & 0077, 0044); /* the public half is readable */

    zcert_t *cert = zcert_load(sec);
    assert_non_null(cert);
    zcert_t *pub_cert = zcert_load(pub);
    assert_non_null(pub_cert);
    assert_string_equal(zcert_public_txt(cert), zcert_public_txt(pub_cert));
    assert_string_not_equal(zcert_secret_txt(cert), "0000000000000000000000000000000000000000");
    assert_int_equal(strlen(zcert_public_txt(cert)), 40);
    /* The public key printed for the config is the one in the files. */
    char *line = sn_strdupf("public_key\t%s\n", zcert_public_txt(cert));
    assert_non_null(strstr(r.out, line));
    free(line);
    ctl_result_fini(&r);

    /* Refuses to overwrite: exit 1, both files unchanged. */
    char *before = sn_test_read_file(sec);
    r = ctl_run(f->dir, (const char *[]){"keygen", dir, NULL});
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "refusing to overwrite"));
    char *after = sn_test_read_file(sec);
    assert_string_equal(before, after);
    zcert_t *again = zcert_load(pub);
    assert_string_equal(zcert_public_txt(again), zcert_public_txt(cert));
    zcert_destroy(&again);
    free(before);
    free(after);
    ctl_result_fini(&r);

    /* Only the public file exists: still refused, and the public file is untouched. */
    assert_int_equal(unlink(sec), 0);
    r = ctl_run(f->dir, (const char *[]){"keygen", dir, NULL});
    assert_int_equal(r.status, 1);
    assert_int_equal(access(sec, F_OK), -1);
    ctl_result_fini(&r);

    /* --name and JSON output. */
    r = ctl_run(f->dir, (const char *[]){"-o", "json", "keygen", "--name", "broker", dir, NULL});
    assert_int_equal(r.status, 0);
    json_error_t jerr;
    json_t *doc = json_loads(r.out, 0, &jerr);
    assert_non_null(doc);
    char *bsec = sn_strdupf("%s/broker_secret", dir);
    assert_string_equal(json_string_value(json_object_get(doc, "secret_file")), bsec);
    zcert_t *bcert = zcert_load(bsec);
    assert_non_null(bcert);
    assert_string_equal(json_string_value(json_object_get(doc, "public_key")),
                        zcert_public_txt(bcert));
    assert_string_not_equal(zcert_public_txt(bcert), zcert_public_txt(cert));
    zcert_destroy(&bcert);
    json_decref(doc);
    ctl_result_fini(&r);

    /* A directory that cannot be created. */
    r = ctl_run(f->dir, (const char *[]){"keygen", "/proc/nope/keys", NULL});
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "cannot create"));
    ctl_result_fini(&r);

    zcert_destroy(&cert);
    zcert_destroy(&pub_cert);
    free(bsec);
    free(pub);
    free(sec);
    free(dir);
}

/* Runs @cmd under script(1), so that stdout is a terminal; returns its output. */
static char *s_run_on_tty(const char *cmd)
{
    char *line = sn_strdupf("script -qec '%s' /dev/null", cmd);
    FILE *p = popen(line, "r");
    free(line);
    assert_non_null(p);
    size_t cap = 8192, len = 0, n;
    char *out = sn_malloc(cap);
    while ((n = fread(out + len, 1, cap - len - 1, p)) > 0)
        len += n;
    out[len] = '\0';
    pclose(p);
    return out;
}

/* On a terminal: a header row, aligned columns, color unless NO_COLOR. */
static void test_ctl_cli_table_on_a_tty(void **state)
{
    fixture_t *f = *state;
    if (access("/usr/bin/script", X_OK) != 0) {
        print_message("script(1) not installed: skipped\n");
        skip();
    }
    char *path = sn_strdupf("%s/good.yml", f->dir);
    ctl_write_file(path, s_good_yaml, false);
    char *cmd = sn_strdupf("env -u NO_COLOR -u CLICOLOR_FORCE TERM=xterm %s/sentinelctl config "
                           "check %s",
                           SN_TEST_BIN_DIR, path);
    char *out = s_run_on_tty(cmd);
    assert_non_null(strstr(out, "\033[1mKEY        VALUE"));
    assert_non_null(strstr(out, "namespace  tcli:"));
    assert_null(strstr(out, "namespace\t"));
    free(out);
    free(cmd);
    cmd = sn_strdupf("env NO_COLOR=1 %s/sentinelctl config check %s", SN_TEST_BIN_DIR, path);
    out = s_run_on_tty(cmd);
    assert_non_null(strstr(out, "KEY        VALUE"));
    assert_null(strstr(out, "\033["));
    free(out);
    free(cmd);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ctl_cli_usage_errors_exit_2, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_cli_help_exits_0, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_cli_config_check_good, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_cli_config_check_bad, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_cli_table_on_a_tty, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_cli_keygen_writes_loadable_pair, s_setup,
                                        s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
