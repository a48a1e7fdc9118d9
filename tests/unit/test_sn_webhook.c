/* Unit tests for sn_webhook: GitHub's signature over the raw bytes, sha256= only. */
#include "sn_test.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_webhook.h"

static const char s_secret[] = "It's a Secret to Everybody";

static void test_sn_webhook_official_vector(void **state)
{
    const char body[] = "Hello, World!";
    const char want[] = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    char header[72];
    assert_int_equal(sn_webhook_sign_github(s_secret, strlen(s_secret), body, strlen(body), header),
                     SN_OK);
    assert_string_equal(header, want);
    const char *why = "unset";
    assert_int_equal(
        sn_webhook_verify_github(s_secret, strlen(s_secret), body, strlen(body), want, &why),
        SN_OK);
    assert_null(why);
}

/* Every refusal, each with its reason. */
static void test_sn_webhook_refusals(void **state)
{
    const char body[] = "Hello, World!";
    const size_t blen = strlen(body), slen = strlen(s_secret);
    const char *good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    struct {
        const char *header;
        const char *why;
    } cases[] = {
        {NULL, SN_WEBHOOK_MISSING},
        {"", SN_WEBHOOK_MISSING},
        {"sha1=01a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4", SN_WEBHOOK_NOT_SHA256},
        {"757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17", SN_WEBHOOK_NOT_SHA256},
        {"SHA256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
         SN_WEBHOOK_NOT_SHA256},
        {"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1",
         SN_WEBHOOK_MALFORMED},
        {"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17 ",
         SN_WEBHOOK_MALFORMED},
        {"sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
         SN_WEBHOOK_MALFORMED},
        {"sha256=857107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
         SN_WEBHOOK_MISMATCH},
    };
    for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
        const char *why = NULL;
        assert_int_equal(
            sn_webhook_verify_github(s_secret, slen, body, blen, cases[i].header, &why),
            SN_DECLINED);
        assert_string_equal(why, cases[i].why);
    }
    const char *why = NULL;
    assert_int_equal(sn_webhook_verify_github("another secret", 14, body, blen, good, &why),
                     SN_DECLINED);
    assert_string_equal(why, SN_WEBHOOK_MISMATCH);
    assert_int_equal(sn_webhook_verify_github("", 0, body, blen, good, &why), SN_DECLINED);
    assert_string_equal(why, SN_WEBHOOK_NO_SECRET);
    assert_int_equal(sn_webhook_verify_github(NULL, 0, body, blen, good, &why), SN_DECLINED);
    assert_string_equal(why, SN_WEBHOOK_NO_SECRET);
    /* One byte more or less of body: refused. */
    assert_int_equal(sn_webhook_verify_github(s_secret, slen, body, blen - 1, good, &why),
                     SN_DECLINED);
    assert_string_equal(why, SN_WEBHOOK_MISMATCH);
}

/* Every real payload in the fixtures: its signature verifies over the exact bytes, and
 * any single flipped byte (or a trailing newline added by a re-encoder) does not. */
static void test_sn_webhook_fixtures(void **state)
{
    char *dir_path = sn_strdupf("%s/fixtures/github", SN_SHARED_DIR);
    DIR *dir = opendir(dir_path);
    assert_non_null(dir);
    int checked = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n < 6 || strcmp(e->d_name + n - 5, ".json") != 0)
            continue;
        char *path = sn_strdupf("%s/%s", dir_path, e->d_name);
        char *body = sn_test_read_file(path);
        assert_non_null(body);
        size_t len = strlen(body);
        char header[72];
        assert_int_equal(sn_webhook_sign_github(s_secret, strlen(s_secret), body, len, header),
                         SN_OK);
        const char *why = NULL;
        assert_int_equal(
            sn_webhook_verify_github(s_secret, strlen(s_secret), body, len, header, &why), SN_OK);
        for (size_t at = 0; at < len; at += len / 7 + 1) {
            body[at] ^= 0x01;
            assert_int_equal(
                sn_webhook_verify_github(s_secret, strlen(s_secret), body, len, header, &why),
                SN_DECLINED);
            assert_string_equal(why, SN_WEBHOOK_MISMATCH);
            body[at] ^= 0x01;
        }
        char *reencoded = sn_strdupf("%s\n", body);
        assert_int_equal(
            sn_webhook_verify_github(s_secret, strlen(s_secret), reencoded, len + 1, header, &why),
            SN_DECLINED);
        free(reencoded);
        free(body);
        free(path);
        checked++;
    }
    closedir(dir);
    free(dir_path);
    assert_true(checked >= 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_webhook_official_vector),
        cmocka_unit_test(test_sn_webhook_refusals),
        cmocka_unit_test(test_sn_webhook_fixtures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
