/* BLAKE3, the asset hash: a portable C11 implementation written from the BLAKE3
 * specification (no Debian package ships a C library for it). Plain hashing, keyed hashing
 * (a 32-byte key) and key derivation (a context string), each with extendable output of any
 * length. The hasher is a plain value struct in the caller's storage: no allocation, no
 * globals, so any thread may use its own hasher; one hasher belongs to one thread at a
 * time. */
#ifndef SN_BLAKE3_H
#define SN_BLAKE3_H

#include <stddef.h>
#include <stdint.h>

#define SN_BLAKE3_KEY_LEN 32
#define SN_BLAKE3_OUT_LEN 32     /* the default output length */
#define SN_BLAKE3_HEX_LEN 64     /* hex of the default output, without the NUL */
#define SN_BLAKE3_BLOCK_LEN 64   /* bytes per compression */
#define SN_BLAKE3_CHUNK_LEN 1024 /* bytes per chunk (leaf of the tree) */
/* Chunk chaining values the stack may hold: one per level of a tree of 2^54 chunks
 * (2^64 bytes of input). */
#define SN_BLAKE3_MAX_DEPTH 54

/* Hasher state. Fields are private to sn_blake3.c: set up with one of the _init functions,
 * never by hand. Needs no _fini (it holds no resources); it may hold key material, so wipe
 * it (sn_crypto_cleanse) when a keyed hasher is done with if that matters. */
typedef struct {
    uint32_t key[8];                    /* key words: the IV, the key, or the derived context key */
    uint32_t flags;                     /* mode flags applied to every compression */
    uint32_t chunk_cv[8];               /* chaining value of the chunk in progress */
    uint64_t chunk_counter;             /* index of the chunk in progress */
    uint8_t block[SN_BLAKE3_BLOCK_LEN]; /* buffered bytes of the block in progress */
    uint8_t block_len;                  /* bytes in block[] */
    uint8_t blocks_compressed;          /* blocks of the current chunk already compressed */
    uint8_t cv_stack_len;               /* entries in cv_stack */
    uint32_t cv_stack[SN_BLAKE3_MAX_DEPTH][8]; /* chaining values of completed subtrees */
} sn_blake3_t;

/* Prepares @self for plain hashing (the default mode). */
void sn_blake3_init(sn_blake3_t *self);

/* Prepares @self for keyed hashing under the 32 bytes at @key (copied; the caller keeps
 * ownership of @key). */
void sn_blake3_init_keyed(sn_blake3_t *self, const uint8_t key[SN_BLAKE3_KEY_LEN]);

/* Prepares @self for key derivation with the NUL-terminated @context string (borrowed,
 * read only during the call; should be a hardcoded, globally unique, application-specific
 * string). The key material is then fed with sn_blake3_update. */
void sn_blake3_init_derive_key(sn_blake3_t *self, const char *context);

/* Absorbs @len bytes at @data (borrowed; may be NULL only when @len is 0). May be called any
 * number of times, also after sn_blake3_finalize: the input is the concatenation. */
void sn_blake3_update(sn_blake3_t *self, const void *data, size_t len);

/* Writes the first @out_len bytes of the extendable output for everything absorbed so far
 * to @out (any length; 0 writes nothing). Does not change @self, so it may be called again,
 * with the same result, or followed by more updates. A shorter output is a prefix of a
 * longer one. */
void sn_blake3_finalize(const sn_blake3_t *self, uint8_t *out, size_t out_len);

/* Convenience: the default 32-byte hash of @len bytes at @data as lowercase hex into @out
 * (64 characters and a NUL). */
void sn_blake3_hex(const void *data, size_t len, char out[SN_BLAKE3_HEX_LEN + 1]);

#endif
