/* Unit tests for sn_blake3: every case of the official BLAKE3 test vectors in all three
 * modes (hash, keyed_hash, derive_key) at the full extended length and at 32 bytes,
 * incremental updates in odd-sized pieces, repeated finalize, update after finalize, and
 * the hex convenience. */
#include "sn_test.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_blake3.h"
#include "sentinel/sn_crypto.h"

#define S_VECTORS_PATH SN_SHARED_DIR "/fixtures/blake3/test_vectors.json"

typedef enum { S_MODE_HASH, S_MODE_KEYED, S_MODE_DERIVE } s_mode_t;

static const char *s_mode_names[] = {"hash", "keyed_hash", "derive_key"};

typedef struct {
    json_t *root;
    const char *key;     /* 32 ASCII bytes */
    const char *context; /* derive_key context string */
    json_t *cases;
} s_vectors_t;

static void s_vectors_load(s_vectors_t *v)
{
    json_error_t err;
    v->root = json_load_file(S_VECTORS_PATH, 0, &err);
    if (!v->root)
        fail_msg("cannot load %s: %s (line %d)", S_VECTORS_PATH, err.text, err.line);
    v->key = json_string_value(json_object_get(v->root, "key"));
    v->context = json_string_value(json_object_get(v->root, "context_string"));
    v->cases = json_object_get(v->root, "cases");
    assert_non_null(v->key);
    assert_int_equal(strlen(v->key), SN_BLAKE3_KEY_LEN);
    assert_non_null(v->context);
    assert_true(json_is_array(v->cases));
    assert_true(json_array_size(v->cases) > 0);
}

/* The test input: bytes i % 251. */
static uint8_t *s_input(size_t len)
{
    uint8_t *buf = sn_malloc(len ? len : 1);
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(i % 251);
    return buf;
}

static void s_init_mode(sn_blake3_t *h, s_mode_t mode, const s_vectors_t *v)
{
    switch (mode) {
    case S_MODE_HASH:
        sn_blake3_init(h);
        break;
    case S_MODE_KEYED:
        sn_blake3_init_keyed(h, (const uint8_t *)v->key);
        break;
    case S_MODE_DERIVE:
        sn_blake3_init_derive_key(h, v->context);
        break;
    }
}

/* Output of @mode over @input fed in pieces of @piece bytes (0: one update), as hex. */
static char *s_digest_hex(const s_vectors_t *v, s_mode_t mode, const uint8_t *input, size_t len,
                          size_t piece, size_t out_len)
{
    sn_blake3_t h;
    s_init_mode(&h, mode, v);
    if (piece == 0) {
        sn_blake3_update(&h, input, len);
    } else {
        for (size_t off = 0; off < len; off += piece)
            sn_blake3_update(&h, input + off, len - off < piece ? len - off : piece);
    }
    uint8_t *out = sn_malloc(out_len ? out_len : 1);
    sn_blake3_finalize(&h, out, out_len);
    char *hex = sn_malloc(2 * out_len + 1);
    sn_hex_encode(out, out_len, hex);
    free(out);
    return hex;
}

static void test_sn_blake3_official_vectors(void **state)
{
    s_vectors_t v;
    s_vectors_load(&v);
    size_t index;
    json_t *c;
    json_array_foreach(v.cases, index, c)
    {
        json_int_t input_len = json_integer_value(json_object_get(c, "input_len"));
        assert_true(input_len >= 0);
        uint8_t *input = s_input((size_t)input_len);
        for (s_mode_t mode = S_MODE_HASH; mode <= S_MODE_DERIVE; mode++) {
            const char *want = json_string_value(json_object_get(c, s_mode_names[mode]));
            assert_non_null(want);
            size_t ext_len = strlen(want) / 2;
            assert_true(ext_len > SN_BLAKE3_OUT_LEN);
            char *got = s_digest_hex(&v, mode, input, (size_t)input_len, 0, ext_len);
            if (strcmp(got, want) != 0)
                fail_msg("%s input_len=%lld extended: got %s want %s", s_mode_names[mode],
                         (long long)input_len, got, want);
            free(got);
            got = s_digest_hex(&v, mode, input, (size_t)input_len, 0, SN_BLAKE3_OUT_LEN);
            if (strncmp(got, want, SN_BLAKE3_HEX_LEN) != 0)
                fail_msg("%s input_len=%lld 32 bytes: got %s", s_mode_names[mode],
                         (long long)input_len, got);
            free(got);
        }
        free(input);
    }
    json_decref(v.root);
}

static void test_sn_blake3_pieces_equal_one_update(void **state)
{
    s_vectors_t v;
    s_vectors_load(&v);
    static const size_t pieces[] = {1, 7, 63, 64, 65, 1023, 1024, 1025};
    /* Lengths that end inside a block, on a block, on a chunk, and across many chunks. */
    static const size_t lens[] = {0, 1, 64, 65, 1024, 1025, 2049, 8193, 31744, 102400};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        uint8_t *input = s_input(lens[li]);
        for (s_mode_t mode = S_MODE_HASH; mode <= S_MODE_DERIVE; mode++) {
            char *whole = s_digest_hex(&v, mode, input, lens[li], 0, 131);
            for (size_t pi = 0; pi < sizeof pieces / sizeof pieces[0]; pi++) {
                char *split = s_digest_hex(&v, mode, input, lens[li], pieces[pi], 131);
                if (strcmp(split, whole) != 0)
                    fail_msg("%s len=%zu piece=%zu differs from one update", s_mode_names[mode],
                             lens[li], pieces[pi]);
                free(split);
            }
            free(whole);
        }
        free(input);
    }
    json_decref(v.root);
}

static void test_sn_blake3_finalize_twice_and_update_after(void **state)
{
    uint8_t *input = s_input(5000);
    sn_blake3_t whole;
    sn_blake3_init(&whole);
    sn_blake3_update(&whole, input, 5000);
    uint8_t want[100];
    sn_blake3_finalize(&whole, want, sizeof want);

    sn_blake3_t h;
    sn_blake3_init(&h);
    sn_blake3_update(&h, input, 3000);
    uint8_t a[100], b[100];
    sn_blake3_finalize(&h, a, sizeof a);
    sn_blake3_finalize(&h, b, sizeof b);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, want, sizeof a);
    /* Finalize does not consume the state: more input continues the same message. */
    sn_blake3_update(&h, input + 3000, 2000);
    sn_blake3_finalize(&h, a, sizeof a);
    assert_memory_equal(a, want, sizeof a);
    /* A shorter output is a prefix of a longer one; zero length writes nothing. */
    uint8_t shorter[10];
    sn_blake3_finalize(&h, shorter, sizeof shorter);
    assert_memory_equal(shorter, want, sizeof shorter);
    sn_blake3_finalize(&h, NULL, 0);
    sn_blake3_update(&h, NULL, 0);
    sn_blake3_finalize(&h, a, sizeof a);
    assert_memory_equal(a, want, sizeof a);
    free(input);
}

static void test_sn_blake3_modes_differ(void **state)
{
    uint8_t key[SN_BLAKE3_KEY_LEN] = {0};
    uint8_t plain[32], keyed[32], other_key[32], derived[32], other_ctx[32];
    sn_blake3_t h;
    sn_blake3_init(&h);
    sn_blake3_finalize(&h, plain, 32);
    sn_blake3_init_keyed(&h, key);
    sn_blake3_finalize(&h, keyed, 32);
    key[31] = 1;
    sn_blake3_init_keyed(&h, key);
    sn_blake3_finalize(&h, other_key, 32);
    sn_blake3_init_derive_key(&h, "sentinel test context A");
    sn_blake3_finalize(&h, derived, 32);
    sn_blake3_init_derive_key(&h, "sentinel test context B");
    sn_blake3_finalize(&h, other_ctx, 32);
    assert_memory_not_equal(plain, keyed, 32);
    assert_memory_not_equal(keyed, other_key, 32);
    assert_memory_not_equal(plain, derived, 32);
    assert_memory_not_equal(derived, other_ctx, 32);
}

static void test_sn_blake3_hex(void **state)
{
    char hex[SN_BLAKE3_HEX_LEN + 1];
    sn_blake3_hex("", 0, hex);
    assert_string_equal(hex, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
    sn_blake3_hex(NULL, 0, hex);
    assert_string_equal(hex, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
    /* One byte 0x00: the input_len=1 vector. */
    uint8_t zero = 0;
    sn_blake3_hex(&zero, 1, hex);
    assert_string_equal(hex, "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_blake3_official_vectors),
        cmocka_unit_test(test_sn_blake3_pieces_equal_one_update),
        cmocka_unit_test(test_sn_blake3_finalize_twice_and_update_after),
        cmocka_unit_test(test_sn_blake3_modes_differ),
        cmocka_unit_test(test_sn_blake3_hex),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
