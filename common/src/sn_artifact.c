/* The content-addressed artifact store: a deterministic ustar writer that hashes while it
 * writes, an atomic publish (temp file, fsync, rename, fsync of the directory), and a
 * defensive ustar reader that extracts with openat() and O_NOFOLLOW, one path component
 * at a time, so that no member can land outside the destination, whatever the archive
 * says. See sn_artifact.h for the contract. */
#include "sentinel/sn_artifact.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "sentinel/sn_id.h"
#include "sentinel/sn_log.h"

#define LOG_MODULE "artifact"

#define TAR_BLOCK 512
#define TAR_NAME_LEN 100
#define TAR_PREFIX_LEN 155
#define TAR_PATH_MAX (TAR_PREFIX_LEN + 1 + TAR_NAME_LEN)
#define TAR_MAX_SIZE 077777777777ULL /* 11 octal digits: 8 GiB - 1 */
#define IO_BUF_LEN (64 * 1024)
#define TMP_MAX_AGE_S 3600
#define WALK_MAX_DEPTH 64

struct sn_artifact {
    char *dir;
    sn_redis_t *redis; /* borrowed, may be NULL */
};

/* The archive being written: a buffered fd that hashes every byte it writes. */
typedef struct {
    int fd;
    EVP_MD_CTX *md;
    uint8_t buf[IO_BUF_LEN];
    size_t used;
    uint64_t total;
    sn_rc_t rc; /* first error; later writes are no-ops */
} s_writer_t;

static sn_rc_t s_mkdirs(const char *path, mode_t mode);
static sn_rc_t s_hash_file(const char *path, char out[SN_ARTIFACT_SHA_LEN + 1], uint64_t *bytes);
static sn_rc_t s_hash_fd(int fd, const char *name, char out[SN_ARTIFACT_SHA_LEN + 1],
                         uint64_t *bytes);
static void s_hex(const uint8_t *digest, unsigned len, char *out);
static void s_write(s_writer_t *w, const void *data, size_t len);
static void s_flush(s_writer_t *w);
static sn_rc_t s_walk(s_writer_t *w, int dirfd, const char *rel, int depth);
static sn_rc_t s_emit_header(s_writer_t *w, const char *name, char type, mode_t mode, uint64_t size,
                             const char *link);
static sn_rc_t s_emit_file(s_writer_t *w, int dirfd, const char *leaf, const char *name,
                           const struct stat *st);
static void s_record(sn_artifact_t *self, const char *sha, const char *path, uint64_t bytes);
static sn_rc_t s_extract(int tarfd, int destfd, const char *tar_path);
static bool s_dir_is_empty(const char *path);

sn_artifact_t *sn_artifact_new(const char *dir, sn_redis_t *redis)
{
    SN_ASSERT(dir && *dir);
    if (s_mkdirs(dir, 0700) != SN_OK)
        return NULL;
    sn_artifact_t *self = sn_calloc(1, sizeof *self);
    self->dir = sn_strdup(dir);
    self->redis = redis;
    return self;
}

void sn_artifact_destroy(sn_artifact_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->dir);
    free(*self_p);
    *self_p = NULL;
}

const char *sn_artifact_dir(sn_artifact_t *self)
{
    return self->dir;
}

bool sn_artifact_sha_is_valid(const char *sha)
{
    if (!sha)
        return false;
    size_t i = 0;
    for (; sha[i]; i++)
        if (!((sha[i] >= '0' && sha[i] <= '9') || (sha[i] >= 'a' && sha[i] <= 'f')))
            return false;
    return i == SN_ARTIFACT_SHA_LEN;
}

sn_rc_t sn_artifact_put_dir(sn_artifact_t *self, const char *dir,
                            char sha_out[SN_ARTIFACT_SHA_LEN + 1], uint64_t *bytes)
{
    sha_out[0] = '\0';
    int srcfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (srcfd < 0) {
        sn_error(LOG_MODULE, "cannot open build output %s: %s", dir, strerror(errno));
        return SN_ERROR;
    }
    char rnd[17];
    sn_random_hex(rnd, 8);
    char *tmp = sn_strdupf("%s/.tmp-%s.tar", self->dir, rnd);
    char *final = NULL;
    s_writer_t *w = sn_calloc(1, sizeof *w);
    w->fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    w->md = EVP_MD_CTX_new();
    sn_rc_t rc = SN_AGAIN;
    if (w->fd < 0) {
        sn_error(LOG_MODULE, "cannot create %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (!w->md || EVP_DigestInit_ex(w->md, EVP_sha256(), NULL) != 1) {
        sn_error(LOG_MODULE, "EVP sha256 init failed");
        goto out;
    }
    rc = s_walk(w, srcfd, "", 0);
    if (rc != SN_OK)
        goto out;
    uint8_t zero[2 * TAR_BLOCK] = {0};
    s_write(w, zero, sizeof zero);
    s_flush(w);
    if (w->rc != SN_OK) {
        rc = w->rc;
        goto out;
    }
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned dlen = 0;
    if (EVP_DigestFinal_ex(w->md, digest, &dlen) != 1 || dlen != SN_ARTIFACT_SHA_LEN / 2) {
        sn_error(LOG_MODULE, "EVP sha256 final failed");
        rc = SN_AGAIN;
        goto out;
    }
    if (fsync(w->fd) != 0) {
        sn_error(LOG_MODULE, "fsync %s: %s", tmp, strerror(errno));
        rc = SN_AGAIN;
        goto out;
    }
    close(w->fd);
    w->fd = -1;
    char sha[SN_ARTIFACT_SHA_LEN + 1];
    s_hex(digest, dlen, sha);
    final = sn_artifact_path(self, sha);
    if (access(final, F_OK) == 0) {
        /* Same content already stored: keep the old file (its inode may be open). */
        unlink(tmp);
    } else if (rename(tmp, final) != 0) {
        sn_error(LOG_MODULE, "rename %s -> %s: %s", tmp, final, strerror(errno));
        rc = SN_AGAIN;
        goto out;
    }
    int dfd = open(self->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        if (fsync(dfd) != 0)
            sn_warn(LOG_MODULE, "fsync %s: %s", self->dir, strerror(errno));
        close(dfd);
    }
    memcpy(sha_out, sha, sizeof sha);
    if (bytes)
        *bytes = w->total;
    s_record(self, sha, final, w->total);
    sn_info(LOG_MODULE, "stored artifact sha256=%s bytes=%llu from=%s", sha,
            (unsigned long long)w->total, dir);
    rc = SN_OK;
out:
    if (w->fd >= 0)
        close(w->fd);
    if (rc != SN_OK)
        unlink(tmp);
    EVP_MD_CTX_free(w->md);
    free(w);
    free(tmp);
    free(final);
    close(srcfd);
    return rc;
}

char *sn_artifact_path(sn_artifact_t *self, const char *sha)
{
    if (!sn_artifact_sha_is_valid(sha))
        return NULL;
    return sn_strdupf("%s/%s.tar", self->dir, sha);
}

bool sn_artifact_exists(sn_artifact_t *self, const char *sha)
{
    char *path = sn_artifact_path(self, sha);
    bool ok = path && access(path, F_OK) == 0;
    free(path);
    return ok;
}

sn_rc_t sn_artifact_verify(sn_artifact_t *self, const char *sha)
{
    char *path = sn_artifact_path(self, sha);
    if (!path)
        return SN_ERROR;
    char got[SN_ARTIFACT_SHA_LEN + 1];
    sn_rc_t rc = s_hash_file(path, got, NULL);
    if (rc == SN_OK && strcmp(got, sha) != 0) {
        sn_error(LOG_MODULE, "artifact corrupted: %s hashes to sha256=%s", path, got);
        rc = SN_ERROR;
    }
    free(path);
    return rc;
}

sn_rc_t sn_artifact_hash_fd(int fd, char sha_out[SN_ARTIFACT_SHA_LEN + 1], uint64_t *bytes)
{
    sha_out[0] = '\0';
    return s_hash_fd(fd, "artifact", sha_out, bytes);
}

sn_rc_t sn_artifact_import_file(sn_artifact_t *self, const char *path, const char *expected_sha,
                                char got_sha[SN_ARTIFACT_SHA_LEN + 1])
{
    char got[SN_ARTIFACT_SHA_LEN + 1] = "";
    if (got_sha)
        got_sha[0] = '\0';
    if (!sn_artifact_sha_is_valid(expected_sha)) {
        sn_error(LOG_MODULE, "import of %s refused: invalid expected sha256", path);
        return SN_ERROR;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        int err = errno;
        sn_error(LOG_MODULE, "cannot open %s: %s", path,
                 err == ELOOP ? "a symlink, not a regular file" : strerror(err));
        return err == ELOOP ? SN_ERROR : SN_AGAIN;
    }
    struct stat st;
    uint64_t bytes = 0;
    sn_rc_t rc = SN_AGAIN;
    char *final = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        sn_error(LOG_MODULE, "cannot import %s: not a regular file", path);
        rc = SN_ERROR;
        goto out;
    }
    rc = s_hash_fd(fd, path, got, &bytes);
    if (rc != SN_OK)
        goto out;
    if (got_sha)
        memcpy(got_sha, got, sizeof got);
    if (strcmp(got, expected_sha) != 0) {
        sn_error(LOG_MODULE, "import refused: %s (%llu bytes) hashes to sha256=%s, expected %s",
                 path, (unsigned long long)bytes, got, expected_sha);
        rc = SN_ERROR;
        goto out;
    }
    if (fsync(fd) != 0) {
        sn_error(LOG_MODULE, "fsync %s: %s", path, strerror(errno));
        rc = SN_AGAIN;
        goto out;
    }
    /* The hashed bytes are what lands in the store: the caller's temp file is its own
     * (created O_EXCL), so nothing writes it between the hash and the rename. */
    final = sn_artifact_path(self, got);
    if (access(final, F_OK) == 0) {
        unlink(path); /* same content already stored */
    } else if (rename(path, final) != 0) {
        sn_error(LOG_MODULE, "rename %s -> %s: %s", path, final, strerror(errno));
        rc = SN_AGAIN;
        goto out;
    }
    int dfd = open(self->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        if (fsync(dfd) != 0)
            sn_warn(LOG_MODULE, "fsync %s: %s", self->dir, strerror(errno));
        close(dfd);
    }
    sn_info(LOG_MODULE, "imported artifact sha256=%s bytes=%llu", got, (unsigned long long)bytes);
    rc = SN_OK;
out:
    close(fd);
    free(final);
    return rc;
}

sn_rc_t sn_artifact_extract(sn_artifact_t *self, const char *sha, const char *dest_dir)
{
    sn_rc_t rc = sn_artifact_verify(self, sha);
    if (rc != SN_OK) {
        if (rc == SN_DECLINED)
            sn_warn(LOG_MODULE, "artifact sha256=%s is not in the store %s", sha, self->dir);
        return rc;
    }
    bool is_created = false;
    if (mkdir(dest_dir, 0755) == 0) {
        is_created = true;
    } else if (errno != EEXIST || !s_dir_is_empty(dest_dir)) {
        sn_error(LOG_MODULE, "cannot extract into %s: %s", dest_dir,
                 errno == EEXIST ? "not an empty directory" : strerror(errno));
        return SN_ERROR;
    }
    char *path = sn_artifact_path(self, sha);
    int tarfd = open(path, O_RDONLY | O_CLOEXEC);
    int destfd = open(dest_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (tarfd < 0 || destfd < 0) {
        sn_error(LOG_MODULE, "cannot open %s: %s", tarfd < 0 ? path : dest_dir, strerror(errno));
        rc = SN_AGAIN;
    } else {
        rc = s_extract(tarfd, destfd, path);
    }
    if (tarfd >= 0)
        close(tarfd);
    if (destfd >= 0)
        close(destfd);
    if (rc != SN_OK) {
        /* Nothing half-extracted stays behind. */
        if (sn_artifact_rmtree(dest_dir) == SN_OK && !is_created && mkdir(dest_dir, 0755) != 0)
            sn_warn(LOG_MODULE, "cannot recreate %s: %s", dest_dir, strerror(errno));
    } else {
        sn_debug(LOG_MODULE, "extracted sha256=%s into %s", sha, dest_dir);
    }
    free(path);
    return rc;
}

sn_rc_t sn_artifact_gc(sn_artifact_t *self, const char *const *keep, size_t keep_count,
                       size_t *removed)
{
    if (removed)
        *removed = 0;
    DIR *d = opendir(self->dir);
    if (!d) {
        sn_error(LOG_MODULE, "cannot read %s: %s", self->dir, strerror(errno));
        return SN_AGAIN;
    }
    size_t count = 0;
    time_t now = time(NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        size_t len = strlen(name);
        if (strncmp(name, ".tmp-", 5) == 0) {
            struct stat st;
            if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                now - st.st_mtime > TMP_MAX_AGE_S)
                unlinkat(dirfd(d), name, 0);
            continue;
        }
        if (len != SN_ARTIFACT_SHA_LEN + 4 || strcmp(name + SN_ARTIFACT_SHA_LEN, ".tar") != 0)
            continue;
        char sha[SN_ARTIFACT_SHA_LEN + 1];
        memcpy(sha, name, SN_ARTIFACT_SHA_LEN);
        sha[SN_ARTIFACT_SHA_LEN] = '\0';
        if (!sn_artifact_sha_is_valid(sha))
            continue;
        bool is_kept = false;
        for (size_t i = 0; i < keep_count && !is_kept; i++)
            is_kept = keep[i] && strcmp(keep[i], sha) == 0;
        if (is_kept)
            continue;
        if (unlinkat(dirfd(d), name, 0) != 0) {
            sn_warn(LOG_MODULE, "cannot remove artifact %s/%s: %s", self->dir, name,
                    strerror(errno));
            continue;
        }
        count++;
        if (self->redis) {
            char *key = sn_strdupf("%sartifact:%s", sn_redis_ns(self->redis), sha);
            const char *argv[] = {"DEL", key};
            redisReply *r = NULL;
            if (sn_redis_cmd(self->redis, SN_REDIS_MAIN, 0, &r, 2, argv, NULL) == SN_OK)
                freeReplyObject(r);
            free(key);
        }
    }
    closedir(d);
    if (count > 0)
        sn_info(LOG_MODULE, "gc removed=%zu kept=%zu dir=%s", count, keep_count, self->dir);
    if (removed)
        *removed = count;
    return SN_OK;
}

static int s_rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0 && errno != ENOENT) {
        sn_error(LOG_MODULE, "cannot remove %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

sn_rc_t sn_artifact_rmtree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? SN_OK : SN_AGAIN;
    if (!S_ISDIR(st.st_mode))
        return unlink(path) == 0 || errno == ENOENT ? SN_OK : SN_AGAIN;
    return nftw(path, s_rm_cb, 16, FTW_DEPTH | FTW_PHYS) == 0 ? SN_OK : SN_AGAIN;
}

/* ---- helpers --------------------------------------------------------------------------- */

static sn_rc_t s_mkdirs(const char *path, mode_t mode)
{
    char *p = sn_strdup(path);
    sn_rc_t rc = SN_OK;
    for (char *s = p + 1;; s++) {
        bool is_end = *s == '\0';
        if (*s == '/' || is_end) {
            char saved = *s;
            *s = '\0';
            if (mkdir(p, mode) != 0 && errno != EEXIST) {
                sn_error(LOG_MODULE, "cannot create %s: %s", p, strerror(errno));
                rc = SN_ERROR;
                break;
            }
            *s = saved;
        }
        if (is_end)
            break;
    }
    free(p);
    return rc;
}

static void s_hex(const uint8_t *digest, unsigned len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < len; i++) {
        out[2 * i] = hex[digest[i] >> 4];
        out[2 * i + 1] = hex[digest[i] & 15];
    }
    out[2 * len] = '\0';
}

/* SN_DECLINED if @path does not exist; SN_AGAIN on read errors. */
static sn_rc_t s_hash_file(const char *path, char out[SN_ARTIFACT_SHA_LEN + 1], uint64_t *bytes)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return SN_DECLINED;
        sn_error(LOG_MODULE, "cannot open %s: %s", path, strerror(errno));
        return SN_AGAIN;
    }
    sn_rc_t rc = s_hash_fd(fd, path, out, bytes);
    close(fd);
    return rc;
}

/* Hashes @fd from offset 0 to its end with pread (the fd's offset is left alone). */
static sn_rc_t s_hash_fd(int fd, const char *name, char out[SN_ARTIFACT_SHA_LEN + 1],
                         uint64_t *bytes)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    uint8_t *buf = sn_malloc(IO_BUF_LEN);
    sn_rc_t rc = SN_AGAIN;
    uint64_t total = 0;
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        goto out;
    for (;;) {
        ssize_t n = pread(fd, buf, IO_BUF_LEN, (off_t)total);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            sn_error(LOG_MODULE, "read %s: %s", name, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        if (EVP_DigestUpdate(md, buf, (size_t)n) != 1)
            goto out;
        total += (uint64_t)n;
    }
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned dlen = 0;
    if (EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != SN_ARTIFACT_SHA_LEN / 2)
        goto out;
    s_hex(digest, dlen, out);
    if (bytes)
        *bytes = total;
    rc = SN_OK;
out:
    EVP_MD_CTX_free(md);
    free(buf);
    return rc;
}

static void s_flush(s_writer_t *w)
{
    size_t off = 0;
    while (w->rc == SN_OK && off < w->used) {
        ssize_t n = write(w->fd, w->buf + off, w->used - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            sn_error(LOG_MODULE, "write artifact: %s", strerror(errno));
            w->rc = SN_AGAIN;
            break;
        }
        off += (size_t)n;
    }
    w->used = 0;
}

static void s_write(s_writer_t *w, const void *data, size_t len)
{
    if (w->rc != SN_OK)
        return;
    if (EVP_DigestUpdate(w->md, data, len) != 1) {
        w->rc = SN_AGAIN;
        return;
    }
    w->total += len;
    const uint8_t *p = data;
    while (len > 0) {
        size_t room = sizeof w->buf - w->used;
        size_t take = len < room ? len : room;
        memcpy(w->buf + w->used, p, take);
        w->used += take;
        p += take;
        len -= take;
        if (w->used == sizeof w->buf)
            s_flush(w);
    }
}

static int s_strcmp_p(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Archives the entries of @dirfd (member names prefixed with @rel) in byte order. */
static sn_rc_t s_walk(s_writer_t *w, int dirfd, const char *rel, int depth)
{
    if (depth > WALK_MAX_DEPTH) {
        sn_error(LOG_MODULE, "build output nests deeper than %d at %s", WALK_MAX_DEPTH, rel);
        return SN_ERROR;
    }
    int fd = dup(dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        sn_error(LOG_MODULE, "cannot read directory %s: %s", *rel ? rel : ".", strerror(errno));
        if (fd >= 0)
            close(fd);
        return SN_AGAIN;
    }
    char **names = NULL;
    size_t count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        names = sn_realloc(names, (count + 1) * sizeof *names);
        names[count++] = sn_strdup(e->d_name);
    }
    closedir(d);
    if (count > 1)
        qsort(names, count, sizeof *names, s_strcmp_p);
    sn_rc_t rc = SN_OK;
    for (size_t i = 0; i < count && rc == SN_OK; i++) {
        char *name = sn_strdupf("%s%s", rel, names[i]);
        struct stat st;
        if (fstatat(dirfd, names[i], &st, AT_SYMLINK_NOFOLLOW) != 0) {
            sn_error(LOG_MODULE, "stat %s: %s", name, strerror(errno));
            rc = SN_AGAIN;
        } else if (S_ISDIR(st.st_mode)) {
            char *dname = sn_strdupf("%s/", name);
            rc = s_emit_header(w, dname, '5', 0755, 0, NULL);
            int sub = rc == SN_OK
                          ? openat(dirfd, names[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                          : -1;
            if (rc == SN_OK && sub < 0) {
                sn_error(LOG_MODULE, "cannot open directory %s: %s", name, strerror(errno));
                rc = SN_AGAIN;
            }
            if (sub >= 0) {
                rc = s_walk(w, sub, dname, depth + 1);
                close(sub);
            }
            free(dname);
        } else if (S_ISREG(st.st_mode)) {
            rc = s_emit_file(w, dirfd, names[i], name, &st);
        } else if (S_ISLNK(st.st_mode)) {
            char target[TAR_NAME_LEN + 2];
            ssize_t n = readlinkat(dirfd, names[i], target, sizeof target);
            if (n < 0 || n > TAR_NAME_LEN) {
                sn_error(LOG_MODULE, "symlink %s: %s", name,
                         n < 0 ? strerror(errno) : "target longer than 100 bytes");
                rc = SN_ERROR;
            } else {
                target[n] = '\0';
                rc = s_emit_header(w, name, '2', 0777, 0, target);
            }
        } else {
            sn_error(LOG_MODULE, "cannot archive %s: not a file, directory or symlink", name);
            rc = SN_ERROR;
        }
        free(name);
    }
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
    return rc;
}

static void s_octal(char *field, size_t width, uint64_t value)
{
    /* width - 1 digits and a NUL, zero-padded, as GNU tar writes them. */
    char tmp[24];
    snprintf(tmp, sizeof tmp, "%0*llo", (int)(width - 1), (unsigned long long)value);
    memcpy(field, tmp, width - 1);
    field[width - 1] = '\0';
}

static sn_rc_t s_emit_header(s_writer_t *w, const char *name, char type, mode_t mode, uint64_t size,
                             const char *link)
{
    uint8_t h[TAR_BLOCK] = {0};
    size_t len = strlen(name);
    if (len <= TAR_NAME_LEN) {
        memcpy(h, name, len);
    } else {
        /* ustar: prefix (<= 155) '/' name (<= 100), split at a slash. */
        const char *split = NULL;
        for (const char *s = name + len - 1; s > name; s--)
            if (*s == '/' && (size_t)(s - name) <= TAR_PREFIX_LEN &&
                len - (size_t)(s - name) - 1 <= TAR_NAME_LEN && s[1] != '\0') {
                split = s;
                break;
            }
        if (!split) {
            sn_error(LOG_MODULE, "cannot archive %s: path longer than ustar allows", name);
            return SN_ERROR;
        }
        memcpy(h + 345, name, (size_t)(split - name));
        memcpy(h, split + 1, len - (size_t)(split - name) - 1);
    }
    if (size > TAR_MAX_SIZE) {
        sn_error(LOG_MODULE, "cannot archive %s: 8 GiB or larger", name);
        return SN_ERROR;
    }
    s_octal((char *)h + 100, 8, mode);
    s_octal((char *)h + 108, 8, 0);
    s_octal((char *)h + 116, 8, 0);
    s_octal((char *)h + 124, 12, size);
    s_octal((char *)h + 136, 12, 0);
    h[156] = (uint8_t)type;
    if (link)
        memcpy(h + 157, link, strlen(link));
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (size_t i = 0; i < TAR_BLOCK; i++)
        sum += h[i];
    char tmp[16];
    snprintf(tmp, sizeof tmp, "%06o", sum);
    memcpy(h + 148, tmp, 6);
    h[154] = '\0';
    h[155] = ' ';
    s_write(w, h, sizeof h);
    return w->rc;
}

static sn_rc_t s_emit_file(s_writer_t *w, int dirfd, const char *leaf, const char *name,
                           const struct stat *st)
{
    int fd = openat(dirfd, leaf, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        sn_error(LOG_MODULE, "cannot open %s: %s", name, strerror(errno));
        return SN_AGAIN;
    }
    mode_t mode = (st->st_mode & 0111) ? 0755 : 0644;
    uint64_t size = (uint64_t)st->st_size;
    sn_rc_t rc = s_emit_header(w, name, '0', mode, size, NULL);
    uint8_t *buf = sn_malloc(IO_BUF_LEN);
    uint64_t left = size;
    while (rc == SN_OK && left > 0) {
        size_t want = left < IO_BUF_LEN ? (size_t)left : IO_BUF_LEN;
        ssize_t n = read(fd, buf, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            sn_error(LOG_MODULE, "read %s: %s", name,
                     n < 0 ? strerror(errno) : "file shrank while archiving");
            rc = SN_AGAIN;
            break;
        }
        s_write(w, buf, (size_t)n);
        rc = w->rc;
        left -= (uint64_t)n;
    }
    free(buf);
    close(fd);
    if (rc == SN_OK && size % TAR_BLOCK) {
        uint8_t pad[TAR_BLOCK] = {0};
        s_write(w, pad, TAR_BLOCK - size % TAR_BLOCK);
        rc = w->rc;
    }
    return rc;
}

static void s_record(sn_artifact_t *self, const char *sha, const char *path, uint64_t bytes)
{
    if (!self->redis)
        return;
    char *key = sn_strdupf("%sartifact:%s", sn_redis_ns(self->redis), sha);
    char *nbytes = sn_strdupf("%llu", (unsigned long long)bytes);
    char *now = sn_strdupf("%lld", (long long)sn_wall_ms());
    const char *hset[] = {"HSET", key, "path", path, "bytes", nbytes};
    const char *hsetnx[] = {"HSETNX", key, "created_ms", now};
    redisReply *r = NULL;
    bool ok = sn_redis_cmd(self->redis, SN_REDIS_MAIN, 0, &r, 6, hset, NULL) == SN_OK &&
              r->type != REDIS_REPLY_ERROR;
    if (r)
        freeReplyObject(r);
    r = NULL;
    ok = ok && sn_redis_cmd(self->redis, SN_REDIS_MAIN, 0, &r, 4, hsetnx, NULL) == SN_OK &&
         r->type != REDIS_REPLY_ERROR;
    if (r)
        freeReplyObject(r);
    if (!ok)
        sn_warn(LOG_MODULE, "artifact sha256=%s stored but not recorded in Redis", sha);
    free(key);
    free(nbytes);
    free(now);
}

static bool s_dir_is_empty(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return false;
    bool is_empty = true;
    struct dirent *e;
    while (is_empty && (e = readdir(d)) != NULL)
        is_empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(d);
    return is_empty;
}

/* ---- the reader ------------------------------------------------------------------------ */

/* Reads exactly @len bytes: SN_OK, SN_DECLINED at a clean EOF before any byte, SN_ERROR
 * on a truncated archive, SN_AGAIN on an I/O error. */
static sn_rc_t s_read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, (uint8_t *)buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return SN_AGAIN;
        if (n == 0)
            return got == 0 ? SN_DECLINED : SN_ERROR;
        got += (size_t)n;
    }
    return SN_OK;
}

static bool s_parse_octal(const uint8_t *field, size_t width, uint64_t *out)
{
    uint64_t v = 0;
    size_t i = 0;
    while (i < width && field[i] == ' ')
        i++;
    size_t digits = 0;
    for (; i < width && field[i] >= '0' && field[i] <= '7'; i++, digits++) {
        if (v > (UINT64_MAX >> 3))
            return false;
        v = (v << 3) | (uint64_t)(field[i] - '0');
    }
    for (; i < width; i++)
        if (field[i] != ' ' && field[i] != '\0')
            return false;
    *out = v;
    return digits > 0;
}

/* Splits a member path into clean components: "" and "." dropped, ".." and absolute
 * names refused. Returns the count (0: nothing left, e.g. "./"), or -1 if refused. */
static int s_components(char *path, char **comp, int max)
{
    if (path[0] == '/')
        return -1;
    int n = 0;
    char *save = NULL;
    for (char *c = strtok_r(path, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (strcmp(c, ".") == 0)
            continue;
        if (strcmp(c, "..") == 0 || n == max)
            return -1;
        comp[n++] = c;
    }
    return n;
}

/* True if symlink target @target, placed at depth @depth below the destination, stays
 * inside it (lexically; every later path is opened without following links anyway). */
static bool s_link_stays_inside(const char *target, int depth)
{
    if (!*target || target[0] == '/')
        return false;
    char *copy = sn_strdup(target);
    char *save = NULL;
    bool ok = true;
    for (char *c = strtok_r(copy, "/", &save); c && ok; c = strtok_r(NULL, "/", &save)) {
        if (strcmp(c, "..") == 0)
            ok = --depth >= 0;
        else if (strcmp(c, ".") != 0)
            depth++;
    }
    free(copy);
    return ok;
}

/* Opens (creating as needed) the directory holding the last of @n components below
 * @destfd, never following a symlink. -1 (errno set) on failure. */
static int s_open_parent(int destfd, char **comp, int n)
{
    int fd = dup(destfd);
    for (int i = 0; fd >= 0 && i < n - 1; i++) {
        if (mkdirat(fd, comp[i], 0755) != 0 && errno != EEXIST) {
            close(fd);
            return -1;
        }
        int next = openat(fd, comp[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        close(fd);
        fd = next;
    }
    return fd;
}

#define EXTRACT_MAX_DEPTH 64

static sn_rc_t s_extract(int tarfd, int destfd, const char *tar_path)
{
    uint8_t h[TAR_BLOCK];
    uint8_t *buf = sn_malloc(IO_BUF_LEN);
    sn_rc_t rc = SN_OK;
    size_t members = 0;
    for (;;) {
        sn_rc_t r = s_read_full(tarfd, h, sizeof h);
        if (r == SN_DECLINED) {
            sn_error(LOG_MODULE, "%s: archive ends without its end marker", tar_path);
            rc = SN_ERROR;
            break;
        }
        if (r != SN_OK) {
            sn_error(LOG_MODULE, "%s: %s", tar_path,
                     r == SN_ERROR ? "truncated header" : strerror(errno));
            rc = r;
            break;
        }
        bool is_zero = true;
        for (size_t i = 0; i < sizeof h && is_zero; i++)
            is_zero = h[i] == 0;
        if (is_zero)
            break; /* end of archive */
        uint64_t sum_want = 0, size = 0, mode = 0;
        unsigned sum = 0;
        for (size_t i = 0; i < sizeof h; i++)
            sum += (i >= 148 && i < 156) ? ' ' : h[i];
        if (memcmp(h + 257, "ustar", 5) != 0 || !s_parse_octal(h + 148, 8, &sum_want) ||
            sum_want != sum || !s_parse_octal(h + 124, 12, &size) ||
            !s_parse_octal(h + 100, 8, &mode)) {
            sn_error(LOG_MODULE, "%s: member %zu: malformed ustar header", tar_path, members);
            rc = SN_ERROR;
            break;
        }
        char path[TAR_PATH_MAX + 1] = {0};
        size_t plen = 0;
        if (h[345] && memcmp(h + 257, "ustar\0", 6) == 0) {
            plen = strnlen((const char *)h + 345, TAR_PREFIX_LEN);
            memcpy(path, h + 345, plen);
            path[plen++] = '/';
        }
        memcpy(path + plen, h, strnlen((const char *)h, TAR_NAME_LEN));
        char shown[TAR_PATH_MAX + 1];
        memcpy(shown, path, sizeof shown);
        char link[TAR_NAME_LEN + 1] = {0};
        memcpy(link, h + 157, strnlen((const char *)h + 157, TAR_NAME_LEN));
        char type = (char)h[156];
        char *comp[EXTRACT_MAX_DEPTH];
        int n = s_components(path, comp, EXTRACT_MAX_DEPTH);
        if (n < 0) {
            sn_error(LOG_MODULE, "%s: refused member '%s': absolute or '..' path", tar_path, shown);
            rc = SN_ERROR;
            break;
        }
        members++;
        if (type == '5') {
            if (n == 0)
                continue;
            int pfd = s_open_parent(destfd, comp, n);
            struct stat st;
            bool ok = pfd >= 0 && (mkdirat(pfd, comp[n - 1], 0755) == 0 ||
                                   (errno == EEXIST &&
                                    fstatat(pfd, comp[n - 1], &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                                    S_ISDIR(st.st_mode)));
            if (pfd >= 0)
                close(pfd);
            if (!ok) {
                sn_error(LOG_MODULE, "%s: refused directory '%s': %s", tar_path, shown,
                         strerror(errno));
                rc = SN_ERROR;
                break;
            }
            if (size != 0) {
                sn_error(LOG_MODULE, "%s: directory '%s' with a size", tar_path, shown);
                rc = SN_ERROR;
                break;
            }
            continue;
        }
        if (n == 0 || (type != '0' && type != '\0' && type != '2')) {
            sn_error(LOG_MODULE, "%s: refused member '%s': unsupported type '%c'", tar_path, shown,
                     type ? type : '0');
            rc = SN_ERROR;
            break;
        }
        int pfd = s_open_parent(destfd, comp, n);
        if (pfd < 0) {
            sn_error(LOG_MODULE, "%s: refused member '%s': %s", tar_path, shown,
                     errno == ELOOP || errno == ENOTDIR ? "path through a symlink"
                                                        : strerror(errno));
            rc = SN_ERROR;
            break;
        }
        if (type == '2') {
            bool ok = size == 0 && s_link_stays_inside(link, n - 1);
            if (!ok) {
                sn_error(LOG_MODULE, "%s: refused symlink '%s' -> '%s': leaves the release",
                         tar_path, shown, link);
                rc = SN_ERROR;
            } else if (symlinkat(link, pfd, comp[n - 1]) != 0) {
                sn_error(LOG_MODULE, "%s: symlink '%s': %s", tar_path, shown, strerror(errno));
                rc = SN_ERROR;
            }
            close(pfd);
            if (rc != SN_OK)
                break;
            continue;
        }
        mode_t fmode = (mode & 0111) ? 0755 : 0644;
        int fd =
            openat(pfd, comp[n - 1], O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, fmode);
        close(pfd);
        if (fd < 0) {
            sn_error(LOG_MODULE, "%s: refused member '%s': %s", tar_path, shown,
                     errno == EEXIST ? "duplicate name" : strerror(errno));
            rc = SN_ERROR;
            break;
        }
        uint64_t left = size + (size % TAR_BLOCK ? TAR_BLOCK - size % TAR_BLOCK : 0);
        uint64_t data_left = size;
        while (rc == SN_OK && left > 0) {
            size_t want = left < IO_BUF_LEN ? (size_t)left : IO_BUF_LEN;
            r = s_read_full(tarfd, buf, want);
            if (r != SN_OK) {
                sn_error(LOG_MODULE, "%s: member '%s' is truncated", tar_path, shown);
                rc = r == SN_AGAIN ? SN_AGAIN : SN_ERROR;
                break;
            }
            size_t data = data_left < want ? (size_t)data_left : want;
            size_t off = 0;
            while (off < data) {
                ssize_t wn = write(fd, buf + off, data - off);
                if (wn < 0 && errno == EINTR)
                    continue;
                if (wn < 0) {
                    sn_error(LOG_MODULE, "write '%s': %s", shown, strerror(errno));
                    rc = SN_AGAIN;
                    break;
                }
                off += (size_t)wn;
            }
            data_left -= data;
            left -= want;
        }
        /* A release must be whole on disk before its directory is renamed into place. */
        if (rc == SN_OK && fsync(fd) != 0) {
            sn_error(LOG_MODULE, "fsync '%s': %s", shown, strerror(errno));
            rc = SN_AGAIN;
        }
        close(fd);
        if (rc != SN_OK)
            break;
    }
    free(buf);
    return rc;
}
