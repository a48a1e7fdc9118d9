/* Unit tests for sn_artifact: deterministic archives (same tree, other mtimes and
 * creation order: same hash; readable by GNU tar), the round trip through extract
 * (contents, exec bits, symlinks), corruption and missing artifacts, hostile archives
 * (`..`, absolute names, symlinks that escape, a path through a symlink, duplicates,
 * hard links, garbage), what put_dir refuses (missing dir, fifo), a non-empty
 * destination, gc and rmtree. No Redis: the store runs without one. */
#include "sn_test.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "sentinel/sn_artifact.h"

static void s_write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

/* A small site: index.html, a subdir with an executable, a relative symlink, an empty
 * dir, and a file larger than one tar block. Files are written in @order (0 or 1) so
 * two trees differ in creation order and mtimes. */
static void s_make_site(const char *root, int order)
{
    char *p;
    p = sn_strdupf("%s/assets", root);
    assert_int_equal(mkdir(p, 0700), 0);
    free(p);
    p = sn_strdupf("%s/empty", root);
    assert_int_equal(mkdir(p, 0755), 0);
    free(p);
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    for (int i = 0; i < 2; i++) {
        if ((i == 0) == (order == 0)) {
            p = sn_strdupf("%s/index.html", root);
            s_write_file(p, "<h1>hello</h1>\n", 0600);
            free(p);
        } else {
            p = sn_strdupf("%s/assets/run.sh", root);
            s_write_file(p, "#!/bin/sh\necho hi\n", 0700);
            free(p);
            p = sn_strdupf("%s/assets/big.txt", root);
            s_write_file(p, big, 0644);
            free(p);
        }
    }
    p = sn_strdupf("%s/home.html", root);
    assert_int_equal(symlink("index.html", p), 0);
    free(p);
    if (order == 1) {
        /* Different mtimes must not change the archive. */
        p = sn_strdupf("%s/index.html", root);
        struct timeval tv[2] = {{1000000, 0}, {1000000, 0}};
        assert_int_equal(utimes(p, tv), 0);
        free(p);
    }
}

static void s_sha256_hex(const void *data, size_t len, char out[65])
{
    uint8_t d[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    assert_int_equal(EVP_Digest(data, len, d, &n, EVP_sha256(), NULL), 1);
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* ---- a hand-made ustar writer for hostile archives ------------------------------------- */

typedef struct {
    uint8_t *data;
    size_t len;
} s_tar_t;

static void s_tar_member(s_tar_t *t, const char *name, char type, const char *link,
                         const char *content)
{
    size_t clen = content ? strlen(content) : 0;
    size_t padded = (clen + 511) / 512 * 512;
    t->data = sn_realloc(t->data, t->len + 512 + padded);
    uint8_t *h = t->data + t->len;
    memset(h, 0, 512 + padded);
    memcpy(h, name, strlen(name));
    snprintf((char *)h + 100, 8, "%07o", 0644);
    snprintf((char *)h + 108, 8, "%07o", 0);
    snprintf((char *)h + 116, 8, "%07o", 0);
    snprintf((char *)h + 124, 12, "%011o", (unsigned)clen);
    snprintf((char *)h + 136, 12, "%011o", 0);
    h[156] = (uint8_t)type;
    if (link)
        memcpy(h + 157, link, strlen(link));
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++)
        sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
    if (clen)
        memcpy(h + 512, content, clen);
    t->len += 512 + padded;
}

/* Ends @t, stores it in @store under its real hash (so verify passes and only the
 * reader can refuse it) and writes the sha into @sha. */
static void s_tar_store(s_tar_t *t, sn_artifact_t *store, char sha[65])
{
    t->data = sn_realloc(t->data, t->len + 1024);
    memset(t->data + t->len, 0, 1024);
    t->len += 1024;
    s_sha256_hex(t->data, t->len, sha);
    char *path = sn_artifact_path(store, sha);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, t->data, t->len), (ssize_t)t->len);
    close(fd);
    free(path);
    free(t->data);
    t->data = NULL;
    t->len = 0;
}

typedef struct {
    char *dir;
    sn_artifact_t *store;
} s_fix_t;

static int s_setup(void **state)
{
    s_fix_t *f = sn_calloc(1, sizeof *f);
    f->dir = sn_test_tmpdir("artifact");
    char *store_dir = sn_strdupf("%s/store/deep", f->dir);
    f->store = sn_artifact_new(store_dir, NULL);
    free(store_dir);
    assert_non_null(f->store);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    s_fix_t *f = *state;
    sn_artifact_destroy(&f->store);
    assert_null(f->store);
    sn_test_rmdir(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

static bool s_exists(const char *dir, const char *rel)
{
    char *p = sn_strdupf("%s/%s", dir, rel);
    struct stat st;
    bool ok = lstat(p, &st) == 0;
    free(p);
    return ok;
}

/* Extracting hostile archive @sha must fail with SN_ERROR and leave nothing behind. */
static void s_expect_refused(s_fix_t *f, const char *sha)
{
    char *dest = sn_strdupf("%s/rel/x/y", f->dir);
    char *parent = sn_strdupf("%s/rel/x", f->dir);
    char *rel = sn_strdupf("%s/rel", f->dir);
    sn_test_rmdir(rel);
    assert_int_equal(mkdir(rel, 0755), 0);
    assert_int_equal(mkdir(parent, 0755), 0);
    assert_int_equal(sn_artifact_extract(f->store, sha, dest), SN_ERROR);
    struct stat st;
    assert_int_equal(lstat(dest, &st), -1); /* created by the call, removed again */
    assert_false(s_exists(f->dir, "evil"));
    assert_false(s_exists(f->dir, "rel/evil"));
    assert_false(s_exists(f->dir, "rel/x/evil"));
    assert_false(s_exists("/tmp", "sn-artifact-evil"));
    free(dest);
    free(parent);
    free(rel);
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_sn_artifact_put_is_deterministic(void **state)
{
    s_fix_t *f = *state;
    char *a = sn_strdupf("%s/a", f->dir), *b = sn_strdupf("%s/b", f->dir);
    assert_int_equal(mkdir(a, 0755), 0);
    assert_int_equal(mkdir(b, 0700), 0);
    s_make_site(a, 0);
    s_make_site(b, 1);
    char sha_a[SN_ARTIFACT_SHA_LEN + 1], sha_b[SN_ARTIFACT_SHA_LEN + 1];
    uint64_t bytes = 0;
    assert_int_equal(sn_artifact_put_dir(f->store, a, sha_a, &bytes), SN_OK);
    assert_true(sn_artifact_sha_is_valid(sha_a));
    assert_int_equal(sn_artifact_put_dir(f->store, b, sha_b, NULL), SN_OK);
    assert_string_equal(sha_a, sha_b);
    assert_true(sn_artifact_exists(f->store, sha_a));
    char *path = sn_artifact_path(f->store, sha_a);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal((uint64_t)st.st_size, bytes);
    assert_int_equal(bytes % 512, 0);
    /* The file hashes to its name, and GNU tar reads it with the expected members. */
    char *bytes_text = sn_test_read_file(path);
    assert_non_null(bytes_text);
    free(bytes_text);
    assert_int_equal(sn_artifact_verify(f->store, sha_a), SN_OK);
    char *cmd = sn_strdupf("tar -tvf '%s'", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char listing[4096] = {0};
    size_t n = fread(listing, 1, sizeof listing - 1, p);
    listing[n] = '\0';
    assert_int_equal(pclose(p), 0);
    assert_non_null(strstr(listing, "assets/run.sh"));
    assert_non_null(strstr(listing, "-rwxr-xr-x 0/0"));
    assert_non_null(strstr(listing, "home.html -> index.html"));
    assert_non_null(strstr(listing, "1970-01-01"));
    /* Sorted by name: assets/ before empty/ before home.html before index.html. */
    assert_true(strstr(listing, "assets/") < strstr(listing, "empty/"));
    assert_true(strstr(listing, "home.html") < strstr(listing, "index.html"));
    /* A changed file changes the hash. */
    char *idx = sn_strdupf("%s/index.html", b);
    s_write_file(idx, "<h1>changed</h1>\n", 0644);
    assert_int_equal(sn_artifact_put_dir(f->store, b, sha_b, NULL), SN_OK);
    assert_string_not_equal(sha_a, sha_b);
    free(idx);
    free(cmd);
    free(path);
    free(a);
    free(b);
}

static void test_sn_artifact_extract_round_trip(void **state)
{
    s_fix_t *f = *state;
    char *src = sn_strdupf("%s/src", f->dir);
    assert_int_equal(mkdir(src, 0755), 0);
    s_make_site(src, 0);
    char sha[SN_ARTIFACT_SHA_LEN + 1];
    assert_int_equal(sn_artifact_put_dir(f->store, src, sha, NULL), SN_OK);
    char *dest = sn_strdupf("%s/out/release", f->dir);
    char *out = sn_strdupf("%s/out", f->dir);
    assert_int_equal(mkdir(out, 0755), 0);
    assert_int_equal(sn_artifact_extract(f->store, sha, dest), SN_OK);
    char *p = sn_strdupf("%s/index.html", dest);
    char *text = sn_test_read_file(p);
    assert_string_equal(text, "<h1>hello</h1>\n");
    free(text);
    free(p);
    p = sn_strdupf("%s/assets/run.sh", dest);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_true(st.st_mode & S_IXUSR);
    free(p);
    p = sn_strdupf("%s/assets/big.txt", dest);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_size, 2999);
    free(p);
    p = sn_strdupf("%s/home.html", dest);
    char target[64] = {0};
    assert_int_equal(readlink(p, target, sizeof target - 1), (ssize_t)strlen("index.html"));
    assert_string_equal(target, "index.html");
    free(p);
    assert_true(s_exists(dest, "empty"));
    /* Re-archiving the extracted tree gives the same artifact. */
    char sha2[SN_ARTIFACT_SHA_LEN + 1];
    assert_int_equal(sn_artifact_put_dir(f->store, dest, sha2, NULL), SN_OK);
    assert_string_equal(sha, sha2);
    /* A non-empty destination is refused and left alone. */
    assert_int_equal(sn_artifact_extract(f->store, sha, dest), SN_ERROR);
    assert_true(s_exists(dest, "index.html"));
    /* An existing empty destination is fine. */
    char *empty = sn_strdupf("%s/out/empty", f->dir);
    assert_int_equal(mkdir(empty, 0755), 0);
    assert_int_equal(sn_artifact_extract(f->store, sha, empty), SN_OK);
    assert_true(s_exists(empty, "assets/run.sh"));
    free(empty);
    free(dest);
    free(out);
    free(src);
}

static void test_sn_artifact_detects_corruption(void **state)
{
    s_fix_t *f = *state;
    char *src = sn_strdupf("%s/src", f->dir);
    assert_int_equal(mkdir(src, 0755), 0);
    s_make_site(src, 0);
    char sha[SN_ARTIFACT_SHA_LEN + 1];
    assert_int_equal(sn_artifact_put_dir(f->store, src, sha, NULL), SN_OK);
    char *path = sn_artifact_path(f->store, sha);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    char c;
    assert_int_equal(pread(fd, &c, 1, 600), 1);
    c ^= 0x20;
    assert_int_equal(pwrite(fd, &c, 1, 600), 1);
    close(fd);
    assert_int_equal(sn_artifact_verify(f->store, sha), SN_ERROR);
    char *dest = sn_strdupf("%s/dest", f->dir);
    assert_int_equal(sn_artifact_extract(f->store, sha, dest), SN_ERROR);
    struct stat st;
    assert_int_equal(lstat(dest, &st), -1);
    /* Truncated: also corrupted. */
    assert_int_equal(truncate(path, 700), 0);
    assert_int_equal(sn_artifact_verify(f->store, sha), SN_ERROR);
    free(dest);
    free(path);
    free(src);
}

static void test_sn_artifact_missing_and_invalid(void **state)
{
    s_fix_t *f = *state;
    const char *absent = "0000000000000000000000000000000000000000000000000000000000000000";
    assert_false(sn_artifact_exists(f->store, absent));
    assert_int_equal(sn_artifact_verify(f->store, absent), SN_DECLINED);
    char *dest = sn_strdupf("%s/dest", f->dir);
    assert_int_equal(sn_artifact_extract(f->store, absent, dest), SN_DECLINED);
    assert_false(s_exists(f->dir, "dest"));
    const char *bad[] = {"",
                         "abc",
                         "../../../../etc/passwd",
                         "ABCDEF0000000000000000000000000000000000000000000000000000000000",
                         "00000000000000000000000000000000000000000000000000000000000000000",
                         NULL};
    for (int i = 0; bad[i]; i++) {
        assert_false(sn_artifact_sha_is_valid(bad[i]));
        assert_null(sn_artifact_path(f->store, bad[i]));
        assert_int_equal(sn_artifact_verify(f->store, bad[i]), SN_ERROR);
        assert_int_equal(sn_artifact_extract(f->store, bad[i], dest), SN_ERROR);
    }
    assert_false(sn_artifact_sha_is_valid(NULL));
    free(dest);
}

static void test_sn_artifact_refuses_dotdot_members(void **state)
{
    s_fix_t *f = *state;
    char sha[65];
    s_tar_t t = {0};
    s_tar_member(&t, "index.html", '0', NULL, "ok\n");
    s_tar_member(&t, "../evil", '0', NULL, "pwned\n");
    s_tar_store(&t, f->store, sha);
    assert_int_equal(sn_artifact_verify(f->store, sha), SN_OK);
    s_expect_refused(f, sha);

    s_tar_member(&t, "a/../../../evil", '0', NULL, "pwned\n");
    s_tar_store(&t, f->store, sha);
    s_expect_refused(f, sha);

    s_tar_member(&t, "./../evil/", '5', NULL, NULL);
    s_tar_store(&t, f->store, sha);
    s_expect_refused(f, sha);
}

static void test_sn_artifact_refuses_absolute_and_links(void **state)
{
    s_fix_t *f = *state;
    char sha[65];
    s_tar_t t = {0};
    s_tar_member(&t, "/tmp/sn-artifact-evil", '0', NULL, "pwned\n");
    s_tar_store(&t, f->store, sha);
    s_expect_refused(f, sha);

    /* A symlink out, then a file through it. */
    s_tar_member(&t, "evil", '2', "/tmp", NULL);
    s_tar_store(&t, f->store, sha);
    s_expect_refused(f, sha);
    s_tar_member(&t, "up", '2', "../../..", NULL);
    s_tar_store(&t, f->store, sha);
    s_expect_refused(f, sha);
    s_tar_member(&t, "sub/", '5', NULL, NULL);
    s_tar_member(&t, "sub/up", '2', "../..", NULL);
    s_tar_store(&t, f->store, sha);
    s_expect_refused(f, sha);

    /* Even a link that stays inside may not be walked through by a later member. */
    s_tar_member(&t, "real/", '5', NULL, NULL);
    s_tar_member(&t, "alias", '2', "real", NULL);
    s_tar_member(&t, "alias/evil", '0', NULL, "x\n");
    s_tar_store(&t, f->store, sha);
    s_expect_refused(f, sha);

    /* Hard links, devices, duplicates and garbage. */
    s_tar_member(&t, "evil", '1', "/etc/passwd", NULL);
    s_tar_store(&t, f->store, sha);
    s_expect_refused(f, sha);
    s_tar_member(&t, "evil", '3', NULL, NULL);
    s_tar_store(&t, f->store, sha);
    s_expect_refused(f, sha);
    s_tar_member(&t, "same", '0', NULL, "1\n");
    s_tar_member(&t, "same", '0', NULL, "2\n");
    s_tar_store(&t, f->store, sha);
    s_expect_refused(f, sha);
    t.data = sn_calloc(1, 512);
    memcpy(t.data, "this is not a tar header", 24);
    t.len = 512;
    s_tar_store(&t, f->store, sha);
    s_expect_refused(f, sha);
    /* No end marker: the member is there but the archive is cut. */
    s_tar_member(&t, "cut", '0', NULL, "x\n");
    s_sha256_hex(t.data, t.len, sha);
    char *path = sn_artifact_path(f->store, sha);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_int_equal(write(fd, t.data, t.len), (ssize_t)t.len);
    close(fd);
    free(path);
    free(t.data);
    s_expect_refused(f, sha);

    /* A symlink that stays inside is accepted. */
    t = (s_tar_t){0};
    s_tar_member(&t, "docs/", '5', NULL, NULL);
    s_tar_member(&t, "docs/index.html", '0', NULL, "docs\n");
    s_tar_member(&t, "docs/home.html", '2', "../docs/index.html", NULL);
    s_tar_store(&t, f->store, sha);
    char *dest = sn_strdupf("%s/good", f->dir);
    assert_int_equal(sn_artifact_extract(f->store, sha, dest), SN_OK);
    char *p = sn_strdupf("%s/docs/home.html", dest);
    char *text = sn_test_read_file(p);
    assert_string_equal(text, "docs\n");
    free(text);
    free(p);
    free(dest);
}

static void test_sn_artifact_put_refuses_bad_input(void **state)
{
    s_fix_t *f = *state;
    char sha[SN_ARTIFACT_SHA_LEN + 1];
    char *missing = sn_strdupf("%s/nope", f->dir);
    assert_int_equal(sn_artifact_put_dir(f->store, missing, sha, NULL), SN_ERROR);
    assert_string_equal(sha, "");
    char *src = sn_strdupf("%s/src", f->dir);
    assert_int_equal(mkdir(src, 0755), 0);
    char *fifo = sn_strdupf("%s/pipe", src);
    assert_int_equal(mkfifo(fifo, 0644), 0);
    assert_int_equal(sn_artifact_put_dir(f->store, src, sha, NULL), SN_ERROR);
    /* No temp file stays behind, and no artifact was stored. */
    char *cmd = sn_strdupf("ls -A '%s' | wc -l", sn_artifact_dir(f->store));
    FILE *p = popen(cmd, "r");
    int count = -1;
    assert_int_equal(fscanf(p, "%d", &count), 1);
    pclose(p);
    assert_int_equal(count, 0);
    /* A file (not a directory) is refused too. */
    unlink(fifo);
    char *file = sn_strdupf("%s/f", src);
    s_write_file(file, "x", 0644);
    assert_int_equal(sn_artifact_put_dir(f->store, file, sha, NULL), SN_ERROR);
    /* An empty directory is a valid (empty) artifact. */
    unlink(file);
    assert_int_equal(sn_artifact_put_dir(f->store, src, sha, NULL), SN_OK);
    assert_int_equal(sn_artifact_verify(f->store, sha), SN_OK);
    free(file);
    free(cmd);
    free(fifo);
    free(src);
    free(missing);
}

static void test_sn_artifact_import_file(void **state)
{
    s_fix_t *f = *state;
    char *src = sn_strdupf("%s/site", f->dir);
    assert_int_equal(mkdir(src, 0755), 0);
    s_make_site(src, 0);
    char sha[65];
    assert_int_equal(sn_artifact_put_dir(f->store, src, sha, NULL), SN_OK);
    char *stored = sn_artifact_path(f->store, sha);
    size_t len = 0;
    char *bytes = sn_test_read_file(stored);
    assert_non_null(bytes);
    struct stat st;
    assert_int_equal(stat(stored, &st), 0);
    len = (size_t)st.st_size;

    /* hash_fd: the whole file whatever the fd's offset, the offset left alone */
    int fd = open(stored, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(lseek(fd, 100, SEEK_SET), 100);
    char got[65];
    uint64_t n = 0;
    assert_int_equal(sn_artifact_hash_fd(fd, got, &n), SN_OK);
    assert_string_equal(got, sha);
    assert_true(n == len);
    assert_int_equal(lseek(fd, 0, SEEK_CUR), 100);
    close(fd);

    /* a second store (another host) imports the bytes under their hash */
    char *dir2 = sn_strdupf("%s/store2", f->dir);
    sn_artifact_t *other = sn_artifact_new(dir2, NULL);
    assert_non_null(other);
    char *tmp = sn_strdupf("%s/.tmp-fetch-1.tar", dir2);
    FILE *out = fopen(tmp, "wb");
    assert_non_null(out);
    assert_int_equal(fwrite(bytes, 1, len, out), len);
    assert_int_equal(fclose(out), 0);
    char seen[65];
    assert_int_equal(sn_artifact_import_file(other, tmp, sha, seen), SN_OK);
    assert_string_equal(seen, sha);
    assert_int_equal(access(tmp, F_OK), -1); /* moved */
    assert_int_equal(sn_artifact_verify(other, sha), SN_OK);
    /* again (same content already there): SN_OK, the temp file removed */
    out = fopen(tmp, "wb");
    assert_int_equal(fwrite(bytes, 1, len, out), len);
    assert_int_equal(fclose(out), 0);
    assert_int_equal(sn_artifact_import_file(other, tmp, sha, NULL), SN_OK);
    assert_int_equal(access(tmp, F_OK), -1);

    /* tampered: one byte changed -> SN_ERROR, nothing stored, the file left to the caller */
    char *sha2 = sn_strdup(sha);
    sha2[0] = sha2[0] == '0' ? '1' : '0'; /* an artifact the second store does not have */
    out = fopen(tmp, "wb");
    bytes[len / 2] ^= 1;
    assert_int_equal(fwrite(bytes, 1, len, out), len);
    assert_int_equal(fclose(out), 0);
    assert_int_equal(sn_artifact_import_file(other, tmp, sha2, seen), SN_ERROR);
    assert_string_not_equal(seen, sha2);
    assert_false(sn_artifact_exists(other, sha2));
    assert_int_equal(access(tmp, F_OK), 0);
    /* truncated */
    assert_int_equal(truncate(tmp, (off_t)len / 2), 0);
    assert_int_equal(sn_artifact_import_file(other, tmp, sha2, NULL), SN_ERROR);
    assert_false(sn_artifact_exists(other, sha2));
    /* bad input */
    assert_int_equal(sn_artifact_import_file(other, tmp, "abc", seen), SN_ERROR);
    assert_string_equal(seen, "");
    assert_int_equal(sn_artifact_import_file(other, tmp, "../../x", NULL), SN_ERROR);
    assert_int_equal(sn_artifact_import_file(other, dir2, sha2, NULL), SN_ERROR);
    char *missing = sn_strdupf("%s/nope", dir2);
    assert_int_equal(sn_artifact_import_file(other, missing, sha2, NULL), SN_AGAIN);
    char *link = sn_strdupf("%s/link.tar", dir2);
    assert_int_equal(symlink(stored, link), 0);
    assert_int_equal(sn_artifact_import_file(other, link, sha, NULL), SN_ERROR); /* O_NOFOLLOW */
    unlink(tmp);
    sn_artifact_destroy(&other);
    free(link);
    free(missing);
    free(sha2);
    free(tmp);
    free(dir2);
    free(bytes);
    free(stored);
    free(src);
}

static void test_sn_artifact_gc_keeps_referenced(void **state)
{
    s_fix_t *f = *state;
    char sha[3][SN_ARTIFACT_SHA_LEN + 1];
    for (int i = 0; i < 3; i++) {
        char *src = sn_strdupf("%s/src%d", f->dir, i);
        assert_int_equal(mkdir(src, 0755), 0);
        char *file = sn_strdupf("%s/index.html", src);
        char *text = sn_strdupf("release %d\n", i);
        s_write_file(file, text, 0644);
        assert_int_equal(sn_artifact_put_dir(f->store, src, sha[i], NULL), SN_OK);
        free(text);
        free(file);
        free(src);
    }
    /* A stale temp file from an interrupted put, and a fresh one (maybe in progress). */
    char *stale = sn_strdupf("%s/.tmp-dead.tar", sn_artifact_dir(f->store));
    char *fresh = sn_strdupf("%s/.tmp-live.tar", sn_artifact_dir(f->store));
    s_write_file(stale, "x", 0644);
    s_write_file(fresh, "x", 0644);
    struct timeval old[2] = {{1000, 0}, {1000, 0}};
    assert_int_equal(utimes(stale, old), 0);
    const char *keep[] = {sha[0], sha[2]};
    size_t removed = 99;
    assert_int_equal(sn_artifact_gc(f->store, keep, 2, &removed), SN_OK);
    assert_int_equal(removed, 1);
    assert_true(sn_artifact_exists(f->store, sha[0]));
    assert_false(sn_artifact_exists(f->store, sha[1]));
    assert_true(sn_artifact_exists(f->store, sha[2]));
    assert_int_equal(access(stale, F_OK), -1);
    assert_int_equal(access(fresh, F_OK), 0);
    assert_int_equal(sn_artifact_gc(f->store, NULL, 0, &removed), SN_OK);
    assert_int_equal(removed, 2);
    free(stale);
    free(fresh);
}

static void test_sn_artifact_rmtree_does_not_follow_links(void **state)
{
    s_fix_t *f = *state;
    char *outside = sn_strdupf("%s/outside", f->dir);
    assert_int_equal(mkdir(outside, 0755), 0);
    char *keepme = sn_strdupf("%s/keep.txt", outside);
    s_write_file(keepme, "keep", 0644);
    char *tree = sn_strdupf("%s/tree", f->dir);
    char *sub = sn_strdupf("%s/tree/sub", f->dir);
    assert_int_equal(mkdir(tree, 0755), 0);
    assert_int_equal(mkdir(sub, 0755), 0);
    char *link = sn_strdupf("%s/tree/sub/link", f->dir);
    assert_int_equal(symlink(outside, link), 0);
    assert_int_equal(sn_artifact_rmtree(tree), SN_OK);
    assert_int_equal(access(tree, F_OK), -1);
    assert_int_equal(access(keepme, F_OK), 0);
    assert_int_equal(sn_artifact_rmtree(tree), SN_OK); /* missing: fine */
    free(link);
    free(sub);
    free(tree);
    free(keepme);
    free(outside);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sn_artifact_put_is_deterministic, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_artifact_extract_round_trip, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_artifact_detects_corruption, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_artifact_missing_and_invalid, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_artifact_refuses_dotdot_members, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_artifact_refuses_absolute_and_links, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_artifact_put_refuses_bad_input, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_artifact_import_file, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_artifact_gc_keeps_referenced, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_artifact_rmtree_does_not_follow_links, s_setup,
                                        s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
