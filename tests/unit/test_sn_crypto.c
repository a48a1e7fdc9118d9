/* Unit tests for sn_crypto: SHA-256 and HMAC-SHA256 against published vectors (FIPS 180-2,
 * RFC 4231), the vectored forms, constant-time comparison and hex. */
#include "sn_test.h"

#include <string.h>

#include "sentinel/sn_crypto.h"

static void s_expect_hex(const uint8_t *digest, const char *hex)
{
    char got[SN_SHA256_HEX_LEN + 1];
    sn_hex_encode(digest, SN_SHA256_LEN, got);
    assert_string_equal(got, hex);
}

static void test_sn_crypto_sha256_vectors(void **state)
{
    uint8_t d[SN_SHA256_LEN];
    assert_int_equal(sn_sha256("abc", 3, d), SN_OK);
    s_expect_hex(d, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(sn_sha256("", 0, d), SN_OK);
    s_expect_hex(d, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    assert_int_equal(sn_sha256(two, strlen(two), d), SN_OK);
    s_expect_hex(d, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void test_sn_crypto_sha256_vectored_equals_concatenation(void **state)
{
    uint8_t a[SN_SHA256_LEN], b[SN_SHA256_LEN];
    struct iovec iov[3] = {{.iov_base = "ab", .iov_len = 2},
                           {.iov_base = "", .iov_len = 0},
                           {.iov_base = "c", .iov_len = 1}};
    assert_int_equal(sn_sha256_v(iov, 3, a), SN_OK);
    assert_int_equal(sn_sha256("abc", 3, b), SN_OK);
    assert_memory_equal(a, b, SN_SHA256_LEN);
}

static void test_sn_crypto_hmac_rfc4231(void **state)
{
    uint8_t d[SN_SHA256_LEN];
    /* Test case 2: key "Jefe". */
    const char *data = "what do ya want for nothing?";
    assert_int_equal(sn_hmac_sha256("Jefe", 4, data, strlen(data), d), SN_OK);
    s_expect_hex(d, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    /* Test case 1: key 0x0b x 20, "Hi There". */
    uint8_t key[20];
    memset(key, 0x0b, sizeof key);
    assert_int_equal(sn_hmac_sha256(key, sizeof key, "Hi There", 8, d), SN_OK);
    s_expect_hex(d, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    /* Test case 6: a key longer than the block size (131 bytes of 0xaa). */
    uint8_t big[131];
    memset(big, 0xaa, sizeof big);
    const char *t6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    assert_int_equal(sn_hmac_sha256(big, sizeof big, t6, strlen(t6), d), SN_OK);
    s_expect_hex(d, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    /* Vectored: "<t>." || body as the webhook signature computes it. */
    uint8_t v[SN_SHA256_LEN];
    struct iovec iov[2] = {{.iov_base = "what do ya ", .iov_len = 11},
                           {.iov_base = "want for nothing?", .iov_len = 17}};
    assert_int_equal(sn_hmac_sha256_v("Jefe", 4, iov, 2, v), SN_OK);
    s_expect_hex(v, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    /* An empty key is allowed (HMAC pads it) and differs from a one-byte key. */
    uint8_t e[SN_SHA256_LEN], z[SN_SHA256_LEN];
    assert_int_equal(sn_hmac_sha256(NULL, 0, "x", 1, e), SN_OK);
    assert_int_equal(sn_hmac_sha256("k", 1, "x", 1, z), SN_OK);
    assert_false(sn_crypto_equal(e, z, SN_SHA256_LEN));
}

static void test_sn_crypto_equal(void **state)
{
    assert_true(sn_crypto_equal("abcd", "abcd", 4));
    assert_false(sn_crypto_equal("abcd", "abce", 4));
    assert_false(sn_crypto_equal("xbcd", "abcd", 4));
    assert_true(sn_crypto_equal(NULL, NULL, 0));
    assert_true(sn_crypto_equal_str("secret", "secret"));
    assert_false(sn_crypto_equal_str("secret", "secreT"));
    assert_false(sn_crypto_equal_str("secret", "secret2"));
    assert_false(sn_crypto_equal_str(NULL, "x"));
    assert_false(sn_crypto_equal_str("x", NULL));
}

static void test_sn_crypto_hex_round_trip_and_bad_input(void **state)
{
    uint8_t in[5] = {0x00, 0x7f, 0x80, 0xab, 0xff}, out[5];
    char hex[11];
    sn_hex_encode(in, sizeof in, hex);
    assert_string_equal(hex, "007f80abff");
    assert_int_equal(sn_hex_decode(hex, 10, out, sizeof out), SN_OK);
    assert_memory_equal(in, out, sizeof in);
    assert_int_equal(sn_hex_decode("007F80ABFF", 10, out, sizeof out), SN_OK);
    assert_memory_equal(in, out, sizeof in);
    /* Wrong length, odd length, non-hex characters, NULL. */
    assert_int_equal(sn_hex_decode("007f80ab", 8, out, sizeof out), SN_ERROR);
    assert_int_equal(sn_hex_decode("007f80abf", 9, out, sizeof out), SN_ERROR);
    assert_int_equal(sn_hex_decode("007f80abfg", 10, out, sizeof out), SN_ERROR);
    assert_int_equal(sn_hex_decode(" 07f80abff", 10, out, sizeof out), SN_ERROR);
    assert_int_equal(sn_hex_decode(NULL, 10, out, sizeof out), SN_ERROR);
    char empty[1];
    sn_hex_encode(in, 0, empty);
    assert_string_equal(empty, "");
}

static void test_sn_crypto_cleanse(void **state)
{
    uint8_t key[16];
    memset(key, 0x5a, sizeof key);
    sn_crypto_cleanse(key, sizeof key);
    for (size_t i = 0; i < sizeof key; i++)
        assert_int_equal(key[i], 0);
    sn_crypto_cleanse(NULL, 10); /* NULL-safe */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_crypto_sha256_vectors),
        cmocka_unit_test(test_sn_crypto_sha256_vectored_equals_concatenation),
        cmocka_unit_test(test_sn_crypto_hmac_rfc4231),
        cmocka_unit_test(test_sn_crypto_equal),
        cmocka_unit_test(test_sn_crypto_hex_round_trip_and_bad_input),
        cmocka_unit_test(test_sn_crypto_cleanse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
