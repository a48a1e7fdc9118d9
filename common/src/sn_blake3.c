/* BLAKE3 from the specification: a binary Merkle tree of 1024-byte chunks, each chunk a
 * chain of 64-byte block compressions, parents compressing the concatenated chaining values
 * of their two children, and the root compressed with the ROOT flag once per 64 bytes of
 * extendable output (the output block counter). The compression function is seven rounds
 * of the ChaCha-like G mixing over a 16-word state, with the message words permuted between
 * rounds. This is the straightforward portable form (one block at a time); it favours being
 * easy to check against the specification over speed. */
#include "sentinel/sn_blake3.h"

#include <string.h>

#include "sentinel/sn_common.h"
#include "sentinel/sn_crypto.h"

enum {
    S_CHUNK_START = 1u << 0,
    S_CHUNK_END = 1u << 1,
    S_PARENT = 1u << 2,
    S_ROOT = 1u << 3,
    S_KEYED_HASH = 1u << 4,
    S_DERIVE_KEY_CONTEXT = 1u << 5,
    S_DERIVE_KEY_MATERIAL = 1u << 6,
};

/* The initialisation vector: the same constants as SHA-256's. */
static const uint32_t s_iv[8] = {0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
                                 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19};

/* Applied to the message words between rounds. */
static const uint8_t s_msg_permutation[16] = {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8};

/* What is needed to produce a node's chaining value or, for the root, any number of output
 * blocks: the inputs to its final compression. */
typedef struct {
    uint32_t input_cv[8];
    uint32_t block_words[16];
    uint64_t counter;
    uint32_t block_len;
    uint32_t flags;
} s_output_t;

static void s_init_with(sn_blake3_t *self, const uint32_t key[8], uint32_t flags);
static void s_compress(const uint32_t cv[8], const uint32_t block_words[16], uint64_t counter,
                       uint32_t block_len, uint32_t flags, uint32_t out[16]);
static void s_words_from_le_bytes(const uint8_t *bytes, size_t word_count, uint32_t *words);
static void s_compress_buffered_block(sn_blake3_t *self, uint32_t extra_flags);
static uint32_t s_chunk_start_flag(const sn_blake3_t *self);
static size_t s_chunk_len(const sn_blake3_t *self);
static void s_chunk_output(const sn_blake3_t *self, s_output_t *out);
static void s_parent_output(const uint32_t left[8], const uint32_t right[8], const uint32_t key[8],
                            uint32_t flags, s_output_t *out);
static void s_output_cv(const s_output_t *output, uint32_t cv[8]);
static void s_add_chunk_cv(sn_blake3_t *self, const uint32_t cv[8], uint64_t total_chunks);

void sn_blake3_init(sn_blake3_t *self)
{
    SN_ASSERT(self);
    s_init_with(self, s_iv, 0);
}

void sn_blake3_init_keyed(sn_blake3_t *self, const uint8_t key[SN_BLAKE3_KEY_LEN])
{
    SN_ASSERT(self && key);
    uint32_t key_words[8];
    s_words_from_le_bytes(key, 8, key_words);
    s_init_with(self, key_words, S_KEYED_HASH);
    sn_crypto_cleanse(key_words, sizeof key_words);
}

void sn_blake3_init_derive_key(sn_blake3_t *self, const char *context)
{
    SN_ASSERT(self && context);
    /* Two stages: the context string is hashed on its own (DERIVE_KEY_CONTEXT) into a
     * context key, which then keys the hashing of the key material (DERIVE_KEY_MATERIAL). */
    sn_blake3_t context_hasher;
    s_init_with(&context_hasher, s_iv, S_DERIVE_KEY_CONTEXT);
    sn_blake3_update(&context_hasher, context, strlen(context));
    uint8_t context_key[SN_BLAKE3_KEY_LEN];
    sn_blake3_finalize(&context_hasher, context_key, sizeof context_key);
    uint32_t key_words[8];
    s_words_from_le_bytes(context_key, 8, key_words);
    s_init_with(self, key_words, S_DERIVE_KEY_MATERIAL);
}

void sn_blake3_update(sn_blake3_t *self, const void *data, size_t len)
{
    SN_ASSERT(self && (data || len == 0));
    const uint8_t *in = data;
    while (len > 0) {
        /* A full chunk is finished only once more input arrives: the last chunk must stay
         * open because it may be the root, which is compressed differently. */
        if (s_chunk_len(self) == SN_BLAKE3_CHUNK_LEN) {
            s_output_t out;
            s_chunk_output(self, &out);
            uint32_t cv[8];
            s_output_cv(&out, cv);
            uint64_t total_chunks = self->chunk_counter + 1;
            s_add_chunk_cv(self, cv, total_chunks);
            memcpy(self->chunk_cv, self->key, sizeof self->chunk_cv);
            self->chunk_counter = total_chunks;
            memset(self->block, 0, sizeof self->block);
            self->block_len = 0;
            self->blocks_compressed = 0;
        }
        /* Likewise a full block is compressed only when more input follows it, since the
         * chunk's last block carries CHUNK_END. */
        if (self->block_len == SN_BLAKE3_BLOCK_LEN) {
            s_compress_buffered_block(self, 0);
        }
        size_t want = SN_BLAKE3_BLOCK_LEN - self->block_len;
        size_t take = len < want ? len : want;
        memcpy(self->block + self->block_len, in, take);
        self->block_len = (uint8_t)(self->block_len + take);
        in += take;
        len -= take;
    }
}

void sn_blake3_finalize(const sn_blake3_t *self, uint8_t *out, size_t out_len)
{
    SN_ASSERT(self && (out || out_len == 0));
    /* Fold the open chunk and then the stack from the top (most recent, rightmost subtree)
     * down; the last node built is the root. */
    s_output_t output;
    s_chunk_output(self, &output);
    for (size_t i = self->cv_stack_len; i > 0; i--) {
        uint32_t right[8];
        s_output_cv(&output, right);
        s_parent_output(self->cv_stack[i - 1], right, self->key, self->flags, &output);
    }
    uint64_t counter = 0;
    while (out_len > 0) {
        uint32_t words[16];
        s_compress(output.input_cv, output.block_words, counter, output.block_len,
                   output.flags | S_ROOT, words);
        uint8_t block[SN_BLAKE3_BLOCK_LEN];
        for (size_t w = 0; w < 16; w++) {
            block[4 * w] = (uint8_t)words[w];
            block[4 * w + 1] = (uint8_t)(words[w] >> 8);
            block[4 * w + 2] = (uint8_t)(words[w] >> 16);
            block[4 * w + 3] = (uint8_t)(words[w] >> 24);
        }
        size_t take = out_len < sizeof block ? out_len : sizeof block;
        memcpy(out, block, take);
        out += take;
        out_len -= take;
        counter++;
    }
}

void sn_blake3_hex(const void *data, size_t len, char out[SN_BLAKE3_HEX_LEN + 1])
{
    SN_ASSERT(out);
    sn_blake3_t hasher;
    sn_blake3_init(&hasher);
    sn_blake3_update(&hasher, data, len);
    uint8_t digest[SN_BLAKE3_OUT_LEN];
    sn_blake3_finalize(&hasher, digest, sizeof digest);
    sn_hex_encode(digest, sizeof digest, out);
}

static void s_init_with(sn_blake3_t *self, const uint32_t key[8], uint32_t flags)
{
    memset(self, 0, sizeof *self);
    memcpy(self->key, key, sizeof self->key);
    memcpy(self->chunk_cv, key, sizeof self->chunk_cv);
    self->flags = flags;
}

static inline uint32_t s_rotr(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32 - n));
}

/* The mixing function G on state words a, b, c, d with message words mx, my. */
static inline void s_g(uint32_t *v, size_t a, size_t b, size_t c, size_t d, uint32_t mx,
                       uint32_t my)
{
    v[a] = v[a] + v[b] + mx;
    v[d] = s_rotr(v[d] ^ v[a], 16);
    v[c] = v[c] + v[d];
    v[b] = s_rotr(v[b] ^ v[c], 12);
    v[a] = v[a] + v[b] + my;
    v[d] = s_rotr(v[d] ^ v[a], 8);
    v[c] = v[c] + v[d];
    v[b] = s_rotr(v[b] ^ v[c], 7);
}

static void s_round(uint32_t *v, const uint32_t *m)
{
    /* Columns, then diagonals. */
    s_g(v, 0, 4, 8, 12, m[0], m[1]);
    s_g(v, 1, 5, 9, 13, m[2], m[3]);
    s_g(v, 2, 6, 10, 14, m[4], m[5]);
    s_g(v, 3, 7, 11, 15, m[6], m[7]);
    s_g(v, 0, 5, 10, 15, m[8], m[9]);
    s_g(v, 1, 6, 11, 12, m[10], m[11]);
    s_g(v, 2, 7, 8, 13, m[12], m[13]);
    s_g(v, 3, 4, 9, 14, m[14], m[15]);
}

/* The compression function: all 16 output words (the first 8 are the new chaining value;
 * the root's extended output uses all 16). */
static void s_compress(const uint32_t cv[8], const uint32_t block_words[16], uint64_t counter,
                       uint32_t block_len, uint32_t flags, uint32_t out[16])
{
    uint32_t v[16] = {
        cv[0],
        cv[1],
        cv[2],
        cv[3],
        cv[4],
        cv[5],
        cv[6],
        cv[7],
        s_iv[0],
        s_iv[1],
        s_iv[2],
        s_iv[3],
        (uint32_t)counter,
        (uint32_t)(counter >> 32),
        block_len,
        flags,
    };
    uint32_t m[16];
    memcpy(m, block_words, sizeof m);
    for (int r = 0; r < 7; r++) {
        s_round(v, m);
        if (r < 6) {
            uint32_t permuted[16];
            for (size_t i = 0; i < 16; i++)
                permuted[i] = m[s_msg_permutation[i]];
            memcpy(m, permuted, sizeof m);
        }
    }
    for (size_t i = 0; i < 8; i++) {
        out[i] = v[i] ^ v[i + 8];
        out[i + 8] = v[i + 8] ^ cv[i];
    }
}

static void s_words_from_le_bytes(const uint8_t *bytes, size_t word_count, uint32_t *words)
{
    for (size_t i = 0; i < word_count; i++) {
        const uint8_t *p = bytes + 4 * i;
        words[i] =
            (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    }
}

/* Compresses the full buffered block into the chunk's chaining value. */
static void s_compress_buffered_block(sn_blake3_t *self, uint32_t extra_flags)
{
    uint32_t block_words[16];
    s_words_from_le_bytes(self->block, 16, block_words);
    uint32_t out[16];
    s_compress(self->chunk_cv, block_words, self->chunk_counter, SN_BLAKE3_BLOCK_LEN,
               self->flags | s_chunk_start_flag(self) | extra_flags, out);
    memcpy(self->chunk_cv, out, sizeof self->chunk_cv);
    self->blocks_compressed++;
    memset(self->block, 0, sizeof self->block);
    self->block_len = 0;
}

static uint32_t s_chunk_start_flag(const sn_blake3_t *self)
{
    return self->blocks_compressed == 0 ? S_CHUNK_START : 0;
}

static size_t s_chunk_len(const sn_blake3_t *self)
{
    return (size_t)self->blocks_compressed * SN_BLAKE3_BLOCK_LEN + self->block_len;
}

/* The open chunk's last block (zero-padded; possibly empty) with CHUNK_END. */
static void s_chunk_output(const sn_blake3_t *self, s_output_t *out)
{
    memcpy(out->input_cv, self->chunk_cv, sizeof out->input_cv);
    s_words_from_le_bytes(self->block, 16, out->block_words);
    out->counter = self->chunk_counter;
    out->block_len = self->block_len;
    out->flags = self->flags | s_chunk_start_flag(self) | S_CHUNK_END;
}

/* A parent node: its block is the two children's chaining values, its counter is 0. */
static void s_parent_output(const uint32_t left[8], const uint32_t right[8], const uint32_t key[8],
                            uint32_t flags, s_output_t *out)
{
    memcpy(out->input_cv, key, sizeof out->input_cv);
    memcpy(out->block_words, left, 8 * sizeof(uint32_t));
    memcpy(out->block_words + 8, right, 8 * sizeof(uint32_t));
    out->counter = 0;
    out->block_len = SN_BLAKE3_BLOCK_LEN;
    out->flags = flags | S_PARENT;
}

static void s_output_cv(const s_output_t *output, uint32_t cv[8])
{
    uint32_t words[16];
    s_compress(output->input_cv, output->block_words, output->counter, output->block_len,
               output->flags, words);
    memcpy(cv, words, 8 * sizeof(uint32_t));
}

/* Pushes a completed (non-final) chunk's chaining value, first merging every subtree it
 * completes: after @total_chunks chunks, each trailing zero bit of the count is a pair of
 * equal-sized subtrees that can be joined. Merging is lazy (only when another chunk
 * follows) because the final merges must not be done before we know which node is the
 * root. */
static void s_add_chunk_cv(sn_blake3_t *self, const uint32_t cv[8], uint64_t total_chunks)
{
    uint32_t merged[8];
    memcpy(merged, cv, sizeof merged);
    while ((total_chunks & 1) == 0) {
        SN_ASSERT(self->cv_stack_len > 0);
        self->cv_stack_len--;
        s_output_t parent;
        s_parent_output(self->cv_stack[self->cv_stack_len], merged, self->key, self->flags,
                        &parent);
        s_output_cv(&parent, merged);
        total_chunks >>= 1;
    }
    SN_ASSERT(self->cv_stack_len < SN_BLAKE3_MAX_DEPTH);
    memcpy(self->cv_stack[self->cv_stack_len], merged, sizeof merged);
    self->cv_stack_len++;
}
