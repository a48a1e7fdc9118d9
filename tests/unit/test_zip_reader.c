/* zip_reader (agents/infraguard/zip_reader.c): archives written here by a small zip
 * writer (stored and raw-deflate entries, the layout actions/upload-artifact and Python's
 * zipfile produce) are extracted byte for byte, and every hostile or broken archive is
 * refused: path traversal, absolute names, backslashes, duplicates, a file in the way of a
 * directory, CRC and size mismatches, the size cap, encryption, ZIP64 markers, unknown
 * methods, truncation and garbage. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <zlib.h>

#include "sn_test.h"
#include "zip_reader.h"

/* ---- a tiny zip writer ---------------------------------------------------------------- */

typedef struct {
    const char *name;
    const void *data;
    size_t len;
    int method;             /* 0 stored, 8 deflate, other: written as stored with that id */
    uint32_t crc_xor;       /* corrupts the CRC */
    uint16_t flags;         /* e.g. 1 = encrypted */
    int64_t usize_override; /* >= 0: the declared uncompressed size */
} s_entry_t;

typedef struct {
    uint8_t *buf;
    size_t len;
} s_bytes_t;

static void s_put(s_bytes_t *b, const void *p, size_t n)
{
    b->buf = sn_realloc(b->buf, b->len + n);
    memcpy(b->buf + b->len, p, n);
    b->len += n;
}

static void s_u16(s_bytes_t *b, uint32_t v)
{
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    s_put(b, x, 2);
}

static void s_u32(s_bytes_t *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    s_put(b, x, 4);
}

static uint8_t *s_deflate(const void *data, size_t len, size_t *out_len)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    assert_int_equal(deflateInit2(&zs, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&zs, (uLong)len) + 16;
    uint8_t *out = sn_malloc(cap);
    zs.next_in = (Bytef *)data;
    zs.avail_in = (uInt)len;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
    *out_len = cap - zs.avail_out;
    deflateEnd(&zs);
    return out;
}

/* Writes the archive of @n entries to @path; @cut > 0 keeps only the first @cut bytes. */
static void s_write_zip(const char *path, const s_entry_t *e, size_t n, size_t cut)
{
    s_bytes_t body = {0}, cd = {0};
    for (size_t i = 0; i < n; i++) {
        uint32_t crc = (uint32_t)crc32(0L, (const Bytef *)e[i].data, (uInt)e[i].len) ^ e[i].crc_xor;
        size_t clen = e[i].len;
        uint8_t *cdata = NULL;
        if (e[i].method == 8)
            cdata = s_deflate(e[i].data, e[i].len, &clen);
        uint32_t usize =
            e[i].usize_override >= 0 ? (uint32_t)e[i].usize_override : (uint32_t)e[i].len;
        uint32_t off = (uint32_t)body.len;
        size_t nlen = strlen(e[i].name);
        s_u32(&body, 0x04034b50u);
        s_u16(&body, 20);
        s_u16(&body, e[i].flags);
        s_u16(&body, (uint32_t)e[i].method);
        s_u16(&body, 0);
        s_u16(&body, 0);
        s_u32(&body, crc);
        s_u32(&body, (uint32_t)clen);
        s_u32(&body, usize);
        s_u16(&body, (uint32_t)nlen);
        s_u16(&body, 0);
        s_put(&body, e[i].name, nlen);
        s_put(&body, cdata ? cdata : e[i].data, clen);
        s_u32(&cd, 0x02014b50u);
        s_u16(&cd, 0x031e);
        s_u16(&cd, 20);
        s_u16(&cd, e[i].flags);
        s_u16(&cd, (uint32_t)e[i].method);
        s_u16(&cd, 0);
        s_u16(&cd, 0);
        s_u32(&cd, crc);
        s_u32(&cd, (uint32_t)clen);
        s_u32(&cd, usize);
        s_u16(&cd, (uint32_t)nlen);
        s_u16(&cd, 0);
        s_u16(&cd, 0);
        s_u16(&cd, 0);
        s_u16(&cd, 0);
        s_u32(&cd, 0100644u << 16);
        s_u32(&cd, off);
        s_put(&cd, e[i].name, nlen);
        free(cdata);
    }
    uint32_t cd_off = (uint32_t)body.len;
    s_put(&body, cd.buf, cd.len);
    s_u32(&body, 0x06054b50u);
    s_u16(&body, 0);
    s_u16(&body, 0);
    s_u16(&body, (uint32_t)n);
    s_u16(&body, (uint32_t)n);
    s_u32(&body, (uint32_t)cd.len);
    s_u32(&body, cd_off);
    s_u16(&body, 0);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(body.buf, 1, cut ? cut : body.len, f), cut ? cut : body.len);
    fclose(f);
    free(body.buf);
    free(cd.buf);
}

/* ---- fixture ---------------------------------------------------------------------------- */

static char *s_dir;
static int s_case;

/* Writes @n entries, extracts them into a fresh directory; returns the result. */
static sn_rc_t s_try(const s_entry_t *e, size_t n, size_t cut, uint64_t max, char *err,
                     size_t err_len, char **dest_out)
{
    char *zip = sn_strdupf("%s/case-%d.zip", s_dir, ++s_case);
    char *dest = sn_strdupf("%s/out-%d", s_dir, s_case);
    assert_int_equal(mkdir(dest, 0755), 0);
    s_write_zip(zip, e, n, cut);
    size_t files = 0;
    sn_rc_t rc = zip_reader_extract(zip, dest, max, &files, err, err_len);
    free(zip);
    if (dest_out)
        *dest_out = dest;
    else
        free(dest);
    return rc;
}

static int s_setup(void **state)
{
    (void)state;
    s_dir = sn_test_tmpdir("zip");
    return s_dir ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    sn_test_rmdir(s_dir);
    free(s_dir);
    return 0;
}

static char *s_read(const char *dir, const char *name)
{
    char *path = sn_strdupf("%s/%s", dir, name);
    char *text = sn_test_read_file(path);
    free(path);
    return text;
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_zip_reader_extracts_stored_and_deflated(void **state)
{
    (void)state;
    char big[20000];
    for (size_t i = 0; i < sizeof big - 1; i++)
        big[i] = (char)('a' + (i * 7) % 26);
    big[sizeof big - 1] = '\0';
    const s_entry_t e[] = {
        {"index.html", "<h1>hi</h1>", 11, 0, 0, 0, -1},
        {"assets/", "", 0, 0, 0, 0, -1},
        {"assets/app.js", big, strlen(big), 8, 0, 0, -1},
        {"deep/er/file.txt", "x", 1, 8, 0, 0, -1},
        {"empty.txt", "", 0, 8, 0, 0, -1},
    };
    char err[200];
    char *dest = NULL;
    assert_int_equal(s_try(e, 5, 0, 1 << 20, err, sizeof err, &dest), SN_OK);
    char *t = s_read(dest, "index.html");
    assert_string_equal(t, "<h1>hi</h1>");
    free(t);
    t = s_read(dest, "assets/app.js");
    assert_string_equal(t, big);
    free(t);
    t = s_read(dest, "deep/er/file.txt");
    assert_string_equal(t, "x");
    free(t);
    t = s_read(dest, "empty.txt");
    assert_string_equal(t, "");
    free(t);
    free(dest);
}

static void s_refused(const s_entry_t *e, size_t n, size_t cut, uint64_t max, const char *why)
{
    char err[200] = "";
    sn_rc_t rc = s_try(e, n, cut, max, err, sizeof err, NULL);
    if (rc != SN_ERROR || !strstr(err, why))
        fprintf(stderr, "case %d: rc=%d err=%s (expected %s)\n", s_case, rc, err, why);
    assert_int_equal(rc, SN_ERROR);
    assert_non_null(strstr(err, why));
}

static void test_zip_reader_refuses_unsafe_names(void **state)
{
    (void)state;
    const char *names[] = {"../evil", "a/../../evil", "/etc/evil", "a\\..\\evil", "./x",
                           "a//b",    "a/./b",        "..",        "a/..",        "bad\nname"};
    for (size_t i = 0; i < SN_ARRAY_LEN(names); i++) {
        s_entry_t e = {names[i], "x", 1, 0, 0, 0, -1};
        s_refused(&e, 1, 0, 1 << 20, "unsafe entry name");
    }
    /* Nothing escaped into the parent directory. */
    struct stat st;
    char *evil = sn_strdupf("%s/evil", s_dir);
    assert_int_not_equal(stat(evil, &st), 0);
    free(evil);
    const s_entry_t dup[] = {{"a.txt", "1", 1, 0, 0, 0, -1}, {"a.txt", "2", 1, 0, 0, 0, -1}};
    s_refused(dup, 2, 0, 1 << 20, "duplicate");
    const s_entry_t way[] = {{"a", "1", 1, 0, 0, 0, -1}, {"a/b", "2", 1, 0, 0, 0, -1}};
    s_refused(way, 2, 0, 1 << 20, "in the way");
}

static void test_zip_reader_refuses_broken_archives(void **state)
{
    (void)state;
    s_entry_t crc = {"a.txt", "hello", 5, 8, 0x1, 0, -1};
    s_refused(&crc, 1, 0, 1 << 20, "CRC-32 mismatch");
    s_entry_t stored_crc = {"a.txt", "hello", 5, 0, 0x10, 0, -1};
    s_refused(&stored_crc, 1, 0, 1 << 20, "CRC-32 mismatch");
    s_entry_t small = {"a.txt", "hello world", 11, 8, 0, 0, 4};
    s_refused(&small, 1, 0, 1 << 20, "larger than declared");
    s_entry_t large = {"a.txt", "hello", 5, 8, 0, 0, 50};
    s_refused(&large, 1, 0, 1 << 20, "size mismatch");
    char *zeros = sn_calloc(1, 100000);
    s_entry_t bomb = {"big", zeros, 100000, 8, 0, 0, -1};
    s_refused(&bomb, 1, 0, 50000, "size cap");
    free(zeros);
    s_entry_t enc = {"a.txt", "hello", 5, 0, 0, 1, -1};
    s_refused(&enc, 1, 0, 1 << 20, "encrypted");
    s_entry_t bz = {"a.txt", "hello", 5, 12, 0, 0, -1};
    s_refused(&bz, 1, 0, 1 << 20, "method 12");
    s_entry_t z64 = {"a.txt", "hello", 5, 0, 0, 0, 0xffffffffLL};
    s_refused(&z64, 1, 0, 1 << 20, "ZIP64");
    s_entry_t ok = {"a.txt", "hello", 5, 8, 0, 0, -1};
    s_refused(&ok, 1, 40, 1 << 20, "not a zip archive");
    s_refused(&ok, 1, 10, 1 << 20, "not a zip archive");
    /* Plain garbage. */
    char *path = sn_strdupf("%s/garbage.zip", s_dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("<html>unicorn</html> this is not a zip archive at all, just text", f);
    fclose(f);
    char *dest = sn_strdupf("%s/garbage-out", s_dir);
    assert_int_equal(mkdir(dest, 0755), 0);
    char err[200];
    assert_int_equal(zip_reader_extract(path, dest, 1 << 20, NULL, err, sizeof err), SN_ERROR);
    assert_int_equal(zip_reader_extract("/nonexistent/x.zip", dest, 1 << 20, NULL, err, sizeof err),
                     SN_AGAIN);
    free(path);
    free(dest);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zip_reader_extracts_stored_and_deflated),
        cmocka_unit_test(test_zip_reader_refuses_unsafe_names),
        cmocka_unit_test(test_zip_reader_refuses_broken_archives),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
