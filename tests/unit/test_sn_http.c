/* sn_http against a local fake site (tests/fakes/fake_http.py on a free port): statuses,
 * the body and header caps, timeouts, refused connections, bad URLs, Retry-After and URL
 * redaction. */
#include "sn_test.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sentinel/sn_http.h"

typedef struct {
    char *dir;
    char *ready;
    char *base;
    pid_t pid;
    sn_http_t *http;
} s_site_t;

static bool s_file_exists(void *arg)
{
    struct stat st;
    return stat((const char *)arg, &st) == 0 && st.st_size > 0;
}

static int s_setup(void **state)
{
    s_site_t *s = sn_calloc(1, sizeof *s);
    s->dir = sn_test_tmpdir("http");
    s->ready = sn_strdupf("%s/ready", s->dir);
    int port = sn_test_free_port();
    s->base = sn_strdupf("http://127.0.0.1:%d", port);
    char *script = sn_strdupf("%s/tests/fakes/fake_http.py", SN_SOURCE_DIR);
    char *port_s = sn_strdupf("%d", port);
    char *log = sn_strdupf("%s/fake.log", s->dir);
    char *argv[] = {"/usr/bin/python3", script, "--port", port_s, "--ready", s->ready, NULL};
    s->pid = sn_test_spawn(argv, log);
    free(script);
    free(port_s);
    free(log);
    if (s->pid <= 0 || !sn_test_wait_for(s_file_exists, s->ready, 10000))
        return -1;
    s->http = sn_http_new();
    *state = s;
    return s->http ? 0 : -1;
}

static int s_teardown(void **state)
{
    s_site_t *s = *state;
    sn_http_destroy(&s->http);
    if (s->pid > 0)
        sn_test_stop(s->pid, SIGTERM, 5000);
    sn_test_rmdir(s->dir);
    free(s->dir);
    free(s->ready);
    free(s->base);
    free(s);
    return 0;
}

/* GET base+path with @timeout_ms and @cap (0: default). */
static sn_rc_t s_get(s_site_t *s, const char *path, int timeout_ms, size_t cap,
                     sn_http_response_t *resp)
{
    char *url = sn_strdupf("%s%s", s->base, path);
    sn_http_request_t req = {.url = url, .timeout_ms = timeout_ms, .max_body_bytes = cap};
    sn_rc_t rc = sn_http_perform(s->http, &req, resp);
    free(url);
    return rc;
}

static void s_control(s_site_t *s, const char *query)
{
    char *path = sn_strdupf("/__control?reset=1&%s", query);
    sn_http_response_t resp;
    assert_int_equal(s_get(s, path, 5000, 0, &resp), SN_OK);
    assert_int_equal(resp.status, 200);
    sn_http_response_fini(&resp);
    free(path);
}

static void test_sn_http_status_body_headers(void **state)
{
    s_site_t *s = *state;
    s_control(s, "body=hi+there");
    sn_http_response_t resp;
    assert_int_equal(s_get(s, "/", 5000, 0, &resp), SN_OK);
    assert_int_equal(resp.status, 200);
    assert_string_equal(resp.body, "hi there");
    assert_int_equal(resp.body_len, 8);
    assert_string_equal(sn_http_response_header(&resp, "content-type"), "text/plain");
    assert_string_equal(sn_http_response_header(&resp, "CONTENT-LENGTH"), "8");
    assert_null(sn_http_response_header(&resp, "X-Absent"));
    assert_int_equal(resp.retry_after_ms, -1);
    assert_false(resp.is_timeout);
    assert_string_equal(resp.error, "");
    assert_true(resp.latency_ms >= 0 && resp.latency_ms < 5000);
    sn_http_response_fini(&resp);
    sn_http_response_fini(&resp); /* idempotent */

    /* The same handle again (connection reuse, options reset): a HEAD has no body. */
    char *url = sn_strdupf("%s/", s->base);
    sn_http_request_t head = {.method = "HEAD", .url = url, .timeout_ms = 5000};
    assert_int_equal(sn_http_perform(s->http, &head, &resp), SN_OK);
    assert_int_equal(resp.status, 200);
    assert_int_equal(resp.body_len, 0);
    assert_string_equal(resp.body, "");
    sn_http_response_fini(&resp);
    free(url);
}

static void test_sn_http_error_status_is_a_response(void **state)
{
    s_site_t *s = *state;
    s_control(s, "status=503&body=down");
    sn_http_response_t resp;
    assert_int_equal(s_get(s, "/", 5000, 0, &resp), SN_OK);
    assert_int_equal(resp.status, 503);
    assert_string_equal(resp.body, "down");
    sn_http_response_fini(&resp);
    s_control(s, "status=404");
    assert_int_equal(s_get(s, "/x", 5000, 0, &resp), SN_OK);
    assert_int_equal(resp.status, 404);
    sn_http_response_fini(&resp);
}

static void test_sn_http_body_cap(void **state)
{
    s_site_t *s = *state;
    sn_http_response_t resp;
    /* With a Content-Length over the cap. */
    s_control(s, "body_size=5000");
    assert_int_equal(s_get(s, "/", 5000, 1000, &resp), SN_ERROR);
    assert_true(resp.is_too_large);
    assert_true(strlen(resp.error) > 0);
    sn_http_response_fini(&resp);
    /* Exactly at the cap is fine. */
    assert_int_equal(s_get(s, "/", 5000, 5000, &resp), SN_OK);
    assert_int_equal(resp.body_len, 5000);
    assert_false(resp.is_too_large);
    sn_http_response_fini(&resp);
    /* Without a Content-Length: the write callback stops it. */
    s_control(s, "body_size=5000&no_length=1");
    assert_int_equal(s_get(s, "/", 5000, 1000, &resp), SN_ERROR);
    assert_true(resp.is_too_large);
    assert_true(resp.body_len <= 1000);
    sn_http_response_fini(&resp);
    assert_int_equal(s_get(s, "/", 5000, 0, &resp), SN_OK);
    assert_int_equal(resp.body_len, 5000);
    sn_http_response_fini(&resp);
}

/* A download into a temp file: SN_OK with *written; the file holds the body. */
static sn_rc_t s_download(s_site_t *s, const char *path, uint64_t max, sn_http_progress_fn *fn,
                          void *arg, int *fd_out, uint64_t *written, sn_http_response_t *resp)
{
    char *file = sn_strdupf("%s/dl-XXXXXX", s->dir);
    int fd = mkstemp(file);
    assert_true(fd >= 0);
    unlink(file);
    free(file);
    char *url = sn_strdupf("%s%s", s->base, path);
    sn_http_request_t req = {.url = url, .timeout_ms = 5000, .max_body_bytes = 100};
    sn_rc_t rc = sn_http_download(s->http, &req, fd, max, fn, arg, written, resp);
    free(url);
    *fd_out = fd;
    return rc;
}

static bool s_stop_at_once(void *arg, uint64_t received)
{
    (*(int *)arg)++;
    return false;
}

static void test_sn_http_download_to_fd(void **state)
{
    s_site_t *s = *state;
    sn_http_response_t resp;
    int fd = -1;
    uint64_t written = 0;
    /* a 2xx body goes to the file, not to memory (bigger than max_body_bytes: no cap) */
    s_control(s, "body_size=300000");
    assert_int_equal(s_download(s, "/", 1000000, NULL, NULL, &fd, &written, &resp), SN_OK);
    assert_int_equal(resp.status, 200);
    assert_true(written == 300000);
    assert_int_equal(resp.body_len, 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, 300000);
    char c = 0;
    assert_int_equal(pread(fd, &c, 1, 299999), 1);
    assert_int_equal(c, 'x');
    close(fd);
    sn_http_response_fini(&resp);
    /* over max_bytes: SN_ERROR, is_too_large, with and without a Content-Length */
    assert_int_equal(s_download(s, "/", 1000, NULL, NULL, &fd, &written, &resp), SN_ERROR);
    assert_true(resp.is_too_large);
    assert_true(written <= 1000);
    close(fd);
    sn_http_response_fini(&resp);
    s_control(s, "body_size=300000&no_length=1");
    assert_int_equal(s_download(s, "/", 1000, NULL, NULL, &fd, &written, &resp), SN_ERROR);
    assert_true(resp.is_too_large);
    assert_true(written <= 1000);
    close(fd);
    sn_http_response_fini(&resp);
    /* a non-2xx body stays in memory (capped by max_body_bytes), the file stays empty */
    s_control(s, "status=404&body=gone");
    assert_int_equal(s_download(s, "/", 1000, NULL, NULL, &fd, &written, &resp), SN_OK);
    assert_int_equal(resp.status, 404);
    assert_string_equal(resp.body, "gone");
    assert_true(written == 0);
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, 0);
    close(fd);
    sn_http_response_fini(&resp);
    /* the progress callback can stop it: SN_AGAIN */
    s_control(s, "body_size=300000&delay_ms=300");
    int calls = 0;
    assert_int_equal(s_download(s, "/", 1000000, s_stop_at_once, &calls, &fd, &written, &resp),
                     SN_AGAIN);
    assert_true(calls >= 1);
    assert_string_equal(resp.error, "aborted by the caller");
    close(fd);
    sn_http_response_fini(&resp);
    /* a file that cannot be written: SN_AGAIN naming the write */
    s_control(s, "body_size=3000");
    char *url = sn_strdupf("%s/", s->base);
    sn_http_request_t req = {.url = url, .timeout_ms = 5000};
    int rfd = open("/dev/null", O_RDONLY);
    assert_true(rfd >= 0);
    assert_int_equal(sn_http_download(s->http, &req, rfd, 10000, NULL, NULL, NULL, &resp),
                     SN_AGAIN);
    assert_non_null(strstr(resp.error, "cannot write the body"));
    close(rfd);
    sn_http_response_fini(&resp);
    free(url);
    /* a refused connection: SN_AGAIN, as for sn_http_perform */
    int port = sn_test_free_port();
    url = sn_strdupf("http://127.0.0.1:%d/", port);
    req.url = url;
    rfd = open("/dev/null", O_WRONLY);
    assert_int_equal(sn_http_download(s->http, &req, rfd, 10000, NULL, NULL, NULL, &resp),
                     SN_AGAIN);
    close(rfd);
    sn_http_response_fini(&resp);
    free(url);
}

static void test_sn_http_header_cap(void **state)
{
    s_site_t *s = *state;
    sn_http_response_t resp;
    s_control(s, "many_headers=150");
    assert_int_equal(s_get(s, "/", 5000, 0, &resp), SN_ERROR);
    assert_true(resp.is_too_large);
    sn_http_response_fini(&resp);
    s_control(s, "many_headers=20");
    assert_int_equal(s_get(s, "/", 5000, 0, &resp), SN_OK);
    assert_non_null(sn_http_response_header(&resp, "X-Extra-19"));
    sn_http_response_fini(&resp);
}

static void test_sn_http_timeout_ends_within_the_timeout(void **state)
{
    s_site_t *s = *state;
    s_control(s, "delay_ms=10000");
    sn_http_response_t resp;
    int64_t t0 = sn_mono_ms();
    assert_int_equal(s_get(s, "/", 400, 0, &resp), SN_AGAIN);
    int64_t took = sn_mono_ms() - t0;
    assert_true(resp.is_timeout);
    assert_int_equal(resp.status, 0);
    assert_true(strlen(resp.error) > 0);
    assert_true(took >= 350);
    assert_true(took < 1500);
    sn_http_response_fini(&resp);
}

static void test_sn_http_connection_refused_is_transient(void **state)
{
    s_site_t *s = *state;
    char *url = sn_strdupf("http://127.0.0.1:%d/", sn_test_free_port());
    sn_http_request_t req = {.url = url, .timeout_ms = 2000};
    sn_http_response_t resp;
    assert_int_equal(sn_http_perform(s->http, &req, &resp), SN_AGAIN);
    assert_int_equal(resp.status, 0);
    assert_false(resp.is_timeout);
    assert_true(strlen(resp.error) > 0);
    sn_http_response_fini(&resp);
    free(url);
}

static void test_sn_http_bad_requests_are_refused(void **state)
{
    s_site_t *s = *state;
    sn_http_response_t resp;
    const char *bad[] = {"ftp://127.0.0.1/x", "file:///etc/passwd", "not a url", "gopher://h/"};
    for (size_t i = 0; i < SN_ARRAY_LEN(bad); i++) {
        sn_http_request_t req = {.url = bad[i], .timeout_ms = 1000};
        assert_int_equal(sn_http_perform(s->http, &req, &resp), SN_ERROR);
        assert_int_equal(resp.status, 0);
        sn_http_response_fini(&resp);
    }
    sn_http_request_t no_url = {.timeout_ms = 1000};
    assert_int_equal(sn_http_perform(s->http, &no_url, &resp), SN_ERROR);
    sn_http_response_fini(&resp);
    char *url = sn_strdupf("%s/", s->base);
    sn_http_request_t no_timeout = {.url = url};
    assert_int_equal(sn_http_perform(s->http, &no_timeout, &resp), SN_ERROR);
    assert_string_equal(resp.error, "no timeout");
    sn_http_response_fini(&resp);
    free(url);
}

static void test_sn_http_retry_after_from_response(void **state)
{
    s_site_t *s = *state;
    s_control(s, "status=429&header=Retry-After:7");
    sn_http_response_t resp;
    assert_int_equal(s_get(s, "/", 5000, 0, &resp), SN_OK);
    assert_int_equal(resp.status, 429);
    assert_int_equal(resp.retry_after_ms, 7000);
    sn_http_response_fini(&resp);
    s_control(s, "status=503&header=Retry-After:later");
    assert_int_equal(s_get(s, "/", 5000, 0, &resp), SN_OK);
    assert_int_equal(resp.retry_after_ms, -1);
    sn_http_response_fini(&resp);
}

static void test_sn_http_retry_after_parse(void **state)
{
    int64_t d = -1;
    /* Sun, 06 Nov 1994 08:49:37 GMT = 784111777 s. */
    int64_t now = 784111777000LL - 10000;
    assert_int_equal(sn_http_parse_retry_after("120", now, 0, &d), SN_OK);
    assert_int_equal(d, 60000); /* default cap 60 s */
    assert_int_equal(sn_http_parse_retry_after("12", now, 0, &d), SN_OK);
    assert_int_equal(d, 12000);
    assert_int_equal(sn_http_parse_retry_after(" 5 ", now, 0, &d), SN_OK);
    assert_int_equal(d, 5000);
    assert_int_equal(sn_http_parse_retry_after("0", now, 0, &d), SN_OK);
    assert_int_equal(d, 0);
    assert_int_equal(sn_http_parse_retry_after("99999999999999999999999", now, 0, &d), SN_OK);
    assert_int_equal(d, 60000);
    assert_int_equal(sn_http_parse_retry_after("30", now, 10000, &d), SN_OK);
    assert_int_equal(d, 10000);
    assert_int_equal(sn_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now, 0, &d), SN_OK);
    assert_int_equal(d, 10000);
    assert_int_equal(sn_http_parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now, 0, &d),
                     SN_OK);
    assert_int_equal(d, 10000);
    assert_int_equal(sn_http_parse_retry_after("Sun Nov  6 08:49:37 1994", now, 0, &d), SN_OK);
    assert_int_equal(d, 10000);
    /* A date in the past: retry now. A date far ahead: capped. */
    assert_int_equal(sn_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now + 60000, 0, &d),
                     SN_OK);
    assert_int_equal(d, 0);
    assert_int_equal(sn_http_parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT", now, 5000, &d),
                     SN_OK);
    assert_int_equal(d, 5000);
    const char *bad[] = {"",      "   ",  "-5",   "5s", "1.5",
                         "12 34", "soon", "0x10", "+3", "Someday, never"};
    for (size_t i = 0; i < SN_ARRAY_LEN(bad); i++) {
        d = 4242;
        assert_int_equal(sn_http_parse_retry_after(bad[i], now, 0, &d), SN_ERROR);
        assert_int_equal(d, 4242);
    }
    assert_int_equal(sn_http_parse_retry_after(NULL, now, 0, &d), SN_ERROR);
}

static void s_redacts(const char *url, const char *want)
{
    char *got = sn_http_redact_url(url);
    assert_string_equal(got, want);
    free(got);
}

static void test_sn_http_redact_url(void **state)
{
    s_redacts("https://user:s3cret@example.com:8443/p/a?token=abc&x=1#frag",
              "https://example.com:8443/p/a?token=[redacted]&x=[redacted]");
    s_redacts("https://hooks.example.com/services/T0/B0?sig=deadbeef",
              "https://hooks.example.com/services/T0/B0?sig=[redacted]");
    s_redacts("http://127.0.0.1:8080/", "http://127.0.0.1:8080/");
    s_redacts("http://h/p?flag&k=", "http://h/p?flag&k=[redacted]");
    s_redacts("http://tok@h/", "http://h/");
    s_redacts("not a url", "[unparseable url]");
    s_redacts(NULL, "(null)");
    char *got = sn_http_redact_url("https://u:hunter2@h/x?api_key=hunter3");
    assert_null(strstr(got, "hunter2"));
    assert_null(strstr(got, "hunter3"));
    free(got);
}

static void test_sn_http_url_origin(void **state)
{
    char *o = sn_http_url_origin("http://127.0.0.1:8080/a/b?q=1#f");
    assert_string_equal(o, "http://127.0.0.1:8080");
    free(o);
    o = sn_http_url_origin("https://example.com");
    assert_string_equal(o, "https://example.com");
    free(o);
    assert_null(sn_http_url_origin("ftp://example.com/x"));
    assert_null(sn_http_url_origin("junk"));
    assert_null(sn_http_url_origin(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_http_status_body_headers),
        cmocka_unit_test(test_sn_http_error_status_is_a_response),
        cmocka_unit_test(test_sn_http_body_cap),
        cmocka_unit_test(test_sn_http_download_to_fd),
        cmocka_unit_test(test_sn_http_header_cap),
        cmocka_unit_test(test_sn_http_timeout_ends_within_the_timeout),
        cmocka_unit_test(test_sn_http_connection_refused_is_transient),
        cmocka_unit_test(test_sn_http_bad_requests_are_refused),
        cmocka_unit_test(test_sn_http_retry_after_from_response),
        cmocka_unit_test(test_sn_http_retry_after_parse),
        cmocka_unit_test(test_sn_http_redact_url),
        cmocka_unit_test(test_sn_http_url_origin),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
