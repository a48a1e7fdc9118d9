/* sn_dns against a tiny UDP DNS responder (tests/fakes/fake_dns.py on a free port): A and
 * AAAA answers, NXDOMAIN, a name without records, a silent resolver (ends within the
 * timeout), bad names and bad resolver strings. */
#include "sn_test.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sentinel/sn_dns.h"

typedef struct {
    char *dir;
    char *resolver;        /* answering */
    char *silent_resolver; /* never answers */
    pid_t pids[2];
} s_dns_t;

static bool s_file_exists(void *arg)
{
    struct stat st;
    return stat((const char *)arg, &st) == 0 && st.st_size > 0;
}

static pid_t s_start(s_dns_t *d, const char *tag, bool silent, char **resolver)
{
    int port = sn_test_free_port();
    char *ready = sn_strdupf("%s/%s.ready", d->dir, tag);
    char *log = sn_strdupf("%s/%s.log", d->dir, tag);
    char *script = sn_strdupf("%s/tests/fakes/fake_dns.py", SN_SOURCE_DIR);
    char *port_s = sn_strdupf("%d", port);
    char *argv[] = {"/usr/bin/python3",
                    script,
                    "--port",
                    port_s,
                    "--ready",
                    ready,
                    "--record",
                    "site.test=10.1.2.3",
                    "--record",
                    "site.test=10.1.2.4",
                    "--record",
                    "v6.test=2001:db8::7",
                    "--record",
                    "empty.test=",
                    silent ? "--silent" : NULL,
                    NULL};
    pid_t pid = sn_test_spawn(argv, log);
    bool ok = pid > 0 && sn_test_wait_for(s_file_exists, ready, 10000);
    *resolver = sn_strdupf("127.0.0.1:%d", port);
    free(ready);
    free(log);
    free(script);
    free(port_s);
    return ok ? pid : -1;
}

static int s_setup(void **state)
{
    s_dns_t *d = sn_calloc(1, sizeof *d);
    d->dir = sn_test_tmpdir("dns");
    d->pids[0] = s_start(d, "dns", false, &d->resolver);
    d->pids[1] = s_start(d, "silent", true, &d->silent_resolver);
    *state = d;
    return d->pids[0] > 0 && d->pids[1] > 0 ? 0 : -1;
}

static int s_teardown(void **state)
{
    s_dns_t *d = *state;
    for (int i = 0; i < 2; i++)
        if (d->pids[i] > 0)
            sn_test_stop(d->pids[i], SIGTERM, 5000);
    sn_test_rmdir(d->dir);
    free(d->dir);
    free(d->resolver);
    free(d->silent_resolver);
    free(d);
    return 0;
}

static void test_sn_dns_resolves_a_records(void **state)
{
    s_dns_t *d = *state;
    const char *resolvers[] = {d->resolver, NULL};
    sn_dns_result_t r;
    assert_int_equal(sn_dns_resolve("site.test", resolvers, 2000, &r), SN_OK);
    assert_int_equal(r.count, 2);
    assert_true(sn_dns_result_has(&r, "10.1.2.3"));
    assert_true(sn_dns_result_has(&r, "10.1.2.4"));
    assert_false(sn_dns_result_has(&r, "10.1.2.5"));
    assert_false(sn_dns_result_has(&r, "not-an-ip"));
    assert_string_equal(r.error, "");
    /* Trailing dot and case do not matter. */
    assert_int_equal(sn_dns_resolve("SITE.test.", resolvers, 2000, &r), SN_OK);
    assert_true(sn_dns_result_has(&r, "10.1.2.3"));
}

static void test_sn_dns_resolves_aaaa_records(void **state)
{
    s_dns_t *d = *state;
    const char *resolvers[] = {d->resolver, NULL};
    sn_dns_result_t r;
    assert_int_equal(sn_dns_resolve("v6.test", resolvers, 2000, &r), SN_OK);
    assert_int_equal(r.count, 1);
    assert_true(sn_dns_result_has(&r, "2001:db8::7"));
    assert_true(sn_dns_result_has(&r, "2001:0db8:0:0:0:0:0:7"));
    assert_false(sn_dns_result_has(&r, "10.1.2.3"));
}

static void test_sn_dns_unknown_name_is_declined(void **state)
{
    s_dns_t *d = *state;
    const char *resolvers[] = {d->resolver, NULL};
    sn_dns_result_t r;
    assert_int_equal(sn_dns_resolve("nope.test", resolvers, 2000, &r), SN_DECLINED);
    assert_int_equal(r.count, 0);
    assert_true(strlen(r.error) > 0);
    /* A known name without any record of either type. */
    assert_int_equal(sn_dns_resolve("empty.test", resolvers, 2000, &r), SN_DECLINED);
    assert_int_equal(r.count, 0);
}

static void test_sn_dns_silent_resolver_times_out(void **state)
{
    s_dns_t *d = *state;
    const char *resolvers[] = {d->silent_resolver, NULL};
    sn_dns_result_t r;
    int64_t t0 = sn_mono_ms();
    assert_int_equal(sn_dns_resolve("site.test", resolvers, 600, &r), SN_AGAIN);
    int64_t took = sn_mono_ms() - t0;
    assert_true(took >= 500);
    assert_true(took < 1500);
    assert_non_null(strstr(r.error, "timeout"));
    /* A second resolver that answers is used after the silent one. */
    const char *both[] = {d->silent_resolver, d->resolver, NULL};
    assert_int_equal(sn_dns_resolve("site.test", both, 3000, &r), SN_OK);
    assert_true(sn_dns_result_has(&r, "10.1.2.3"));
}

static void test_sn_dns_bad_input_is_refused(void **state)
{
    s_dns_t *d = *state;
    const char *resolvers[] = {d->resolver, NULL};
    sn_dns_result_t r;
    assert_int_equal(sn_dns_resolve("", resolvers, 1000, &r), SN_ERROR);
    assert_int_equal(sn_dns_resolve(NULL, resolvers, 1000, &r), SN_ERROR);
    assert_int_equal(sn_dns_resolve("has space.test", resolvers, 1000, &r), SN_ERROR);
    assert_int_equal(sn_dns_resolve("site.test", resolvers, 0, &r), SN_ERROR);
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(sn_dns_resolve(longname, resolvers, 1000, &r), SN_ERROR);
    const char *bad_resolvers[] = {"127.0.0.1:99999", "localhost:53", "1.2.3.4:", "[::1", "",
                                   "1.2.3.4:53x"};
    for (size_t i = 0; i < SN_ARRAY_LEN(bad_resolvers); i++) {
        const char *one[] = {bad_resolvers[i], NULL};
        assert_int_equal(sn_dns_resolve("site.test", one, 1000, &r), SN_ERROR);
        assert_non_null(strstr(r.error, "invalid resolver"));
        assert_false(sn_dns_resolver_is_valid(bad_resolvers[i]));
    }
    assert_true(sn_dns_resolver_is_valid("127.0.0.1"));
    assert_true(sn_dns_resolver_is_valid("127.0.0.1:5353"));
    assert_true(sn_dns_resolver_is_valid("[::1]:53"));
    assert_true(sn_dns_resolver_is_valid("::1"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_dns_resolves_a_records),
        cmocka_unit_test(test_sn_dns_resolves_aaaa_records),
        cmocka_unit_test(test_sn_dns_unknown_name_is_declined),
        cmocka_unit_test(test_sn_dns_silent_resolver_times_out),
        cmocka_unit_test(test_sn_dns_bad_input_is_refused),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
