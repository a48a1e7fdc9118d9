/* Unit tests for sn_common, sn_log, sn_id, sn_backoff and sn_envelope basics. */
#include "sn_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sentinel/sn_backoff.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_log.h"

static void test_sn_common_parse_i64(void **state)
{
    int64_t v = 0;
    assert_int_equal(sn_parse_i64("42", 0, 100, &v), SN_OK);
    assert_int_equal(v, 42);
    assert_int_equal(sn_parse_i64("-1", 0, 100, &v), SN_ERROR);
    assert_int_equal(sn_parse_i64("12x", 0, 100, &v), SN_ERROR);
    assert_int_equal(sn_parse_i64("", 0, 100, &v), SN_ERROR);
    assert_int_equal(sn_parse_i64("99999999999999999999", INT64_MIN, INT64_MAX, &v), SN_ERROR);
}

static void test_sn_common_strlcpy(void **state)
{
    char b[4];
    assert_true(sn_strlcpy(b, "abc", sizeof b));
    assert_false(sn_strlcpy(b, "abcdef", sizeof b));
    assert_string_equal(b, "abc");
}

static void test_sn_id_sortable_and_valid(void **state)
{
    char prev[SN_ID_LEN + 1], cur[SN_ID_LEN + 1];
    sn_id_new(prev);
    assert_true(sn_id_is_valid(prev));
    for (int i = 0; i < 10000; i++) {
        sn_id_new(cur);
        assert_true(sn_id_is_valid(cur));
        assert_true(strcmp(prev, cur) < 0);
        memcpy(prev, cur, sizeof cur);
    }
    int64_t t = sn_id_time_ms(cur);
    assert_true(llabs(t - sn_wall_ms()) < 5000);
    assert_false(sn_id_is_valid("not-an-id"));
    assert_false(sn_id_is_valid("8ZZZZZZZZZZZZZZZZZZZZZZZZZ")); /* overflows 128 bits */
    assert_false(sn_id_is_valid("0000000000000000000000000I"));
    assert_false(sn_id_is_valid(NULL));
}

static void test_sn_backoff_bounded_and_growing(void **state)
{
    sn_backoff_t b;
    sn_backoff_init(&b, 100, 1000);
    int64_t d0 = sn_backoff_next(&b);
    assert_true(d0 >= 50 && d0 <= 100);
    for (int i = 0; i < 50; i++) {
        int64_t d = sn_backoff_next(&b);
        assert_true(d >= 0 && d <= 1000);
        if (i > 5)
            assert_true(d >= 500);
    }
    sn_backoff_reset(&b);
    assert_true(sn_backoff_next(&b) <= 100);
}

static void test_sn_log_redacts_and_flattens(void **state)
{
    char path[] = "/tmp/sn-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    sn_log_init("tester", "1");
    sn_log_set_fd(fd);
    sn_log_add_secret("hunter2-secret");
    sn_info("unit", "token=%s next\nline", "hunter2-secret");
    sn_debug("unit", "invisible");
    sn_log_set_fd(2);
    sn_log_clear_secrets();
    close(fd);
    char *text = sn_test_read_file(path);
    unlink(path);
    assert_non_null(text);
    assert_null(strstr(text, "hunter2"));
    assert_non_null(strstr(text, "INFO tester/1 unit: token=[redacted] next line\n"));
    assert_null(strstr(text, "invisible"));
    free(text);
}

static void test_sn_envelope_round_trip(void **state)
{
    sn_source_t src;
    sn_source_init(&src, "tester", "a");
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &src, "test.hello", id);
    sn_envelope_add_label(&env, "k", "v");
    Sentinel__V1__Note note = SENTINEL__V1__NOTE__INIT;
    note.text = "hi";
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_NOTE;
    env.note = &note;
    size_t len;
    uint8_t *buf = sn_envelope_pack(&env, &len);
    sn_envelope_fini_labels(&env);
    const char *why = NULL;
    sn_envelope_t *back = sn_envelope_unpack(buf, len, SN_MAX_FRAME_BYTES, &why);
    assert_non_null(back);
    assert_string_equal(back->type, "test.hello");
    assert_string_equal(back->source, "sentinel/tester/a");
    assert_int_equal(back->seq, 1);
    assert_int_equal(back->incarnation, src.incarnation);
    assert_string_equal(sn_envelope_label(back, "k"), "v");
    assert_string_equal(back->note->text, "hi");
    sn_envelope_free(&back);
    assert_null(back);

    assert_null(sn_envelope_unpack(buf, len, len - 1, &why));
    assert_string_equal(why, "oversized");
    assert_null(sn_envelope_unpack(buf, 0, 100, &why));
    assert_string_equal(why, "empty");
    uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    assert_null(sn_envelope_unpack(garbage, sizeof garbage, 100, &why));
    assert_string_equal(why, "unparsable");
    /* Parses as protobuf but has no id: refused. */
    uint8_t typed_only[] = {0x1a, 0x01, 'x'};
    assert_null(sn_envelope_unpack(typed_only, sizeof typed_only, 100, &why));
    assert_string_equal(why, "bad-id");
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_common_parse_i64),
        cmocka_unit_test(test_sn_common_strlcpy),
        cmocka_unit_test(test_sn_id_sortable_and_valid),
        cmocka_unit_test(test_sn_backoff_bounded_and_growing),
        cmocka_unit_test(test_sn_log_redacts_and_flattens),
        cmocka_unit_test(test_sn_envelope_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
