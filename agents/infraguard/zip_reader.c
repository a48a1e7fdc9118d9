/* The zip extractor of zip_reader.h. The central directory is the index (local headers
 * are only used to find where the data starts); each entry's data must lie before the
 * central directory. Written without libzip (not installed on this machine kind) on zlib,
 * which is: stored and deflated entries cover what actions/upload-artifact produces. */
#include "zip_reader.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "sentinel/sn_log.h"

#define S_EOCD_SIG 0x06054b50u
#define S_CDH_SIG 0x02014b50u
#define S_LFH_SIG 0x04034b50u
#define S_EOCD_LEN 22
#define S_CDH_LEN 46
#define S_LFH_LEN 30
#define S_MAX_COMMENT 65535
#define S_MAX_CD_BYTES (64u * 1024 * 1024)
#define S_CHUNK (64 * 1024)
#define S_NAME_MAX 1024

typedef struct {
    int fd;
    uint64_t size;
    const char *dest;
    uint64_t max_bytes;
    uint64_t total;
    char *err;
    size_t err_len;
} s_zip_t;

static sn_rc_t s_fail(s_zip_t *z, sn_rc_t rc, const char *fmt, ...) SN_PRINTF(3, 4);

static sn_rc_t s_fail(s_zip_t *z, sn_rc_t rc, const char *fmt, ...)
{
    if (z->err && z->err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(z->err, z->err_len, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static uint32_t s_u16(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static uint32_t s_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Reads exactly @len bytes at @off. */
static sn_rc_t s_read_at(s_zip_t *z, void *buf, size_t len, uint64_t off)
{
    if (off > z->size || len > z->size - off)
        return s_fail(z, SN_ERROR, "truncated archive");
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(z->fd, (uint8_t *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return s_fail(z, n < 0 ? SN_AGAIN : SN_ERROR, "read failed: %s",
                          n < 0 ? strerror(errno) : "unexpected end of file");
        done += (size_t)n;
    }
    return SN_OK;
}

/* A relative name (a directory entry ends with '/') with no empty, "." or ".." component,
 * no backslash and no control byte. */
static bool s_name_is_safe(const char *name, size_t len)
{
    if (len == 0 || len >= S_NAME_MAX || name[0] == '/')
        return false;
    if (name[len - 1] == '/')
        len--;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && ((unsigned char)name[i] < 0x20 || name[i] == '\\' || name[i] == 0x7f))
            return false;
        if (i == len || name[i] == '/') {
            size_t n = i - start;
            if (n == 0 || (n == 1 && name[start] == '.') ||
                (n == 2 && name[start] == '.' && name[start + 1] == '.'))
                return false;
            start = i + 1;
        }
    }
    return true;
}

/* mkdir -p of @rel (a safe relative path) under z->dest; existing directories are fine,
 * anything else in the way is an error. */
static sn_rc_t s_mkdirs(s_zip_t *z, const char *rel)
{
    char *path = sn_strdupf("%s/%s", z->dest, rel);
    size_t base = strlen(z->dest) + 1;
    sn_rc_t rc = SN_OK;
    for (size_t i = base;; i++) {
        char c = path[i];
        if (c != '/' && c != '\0')
            continue;
        path[i] = '\0';
        if (i > base && mkdir(path, 0755) != 0) {
            struct stat st;
            if (errno != EEXIST || lstat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
                rc =
                    s_fail(z, errno == EEXIST ? SN_ERROR : SN_AGAIN, "cannot create %s: %s",
                           path + base, errno == EEXIST ? "a file is in the way" : strerror(errno));
                break;
            }
        }
        path[i] = c;
        if (c == '\0')
            break;
    }
    free(path);
    return rc;
}

static sn_rc_t s_write_all(s_zip_t *z, int fd, const uint8_t *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return s_fail(z, SN_AGAIN, "write failed: %s", strerror(errno));
        buf += n;
        len -= (size_t)n;
    }
    return SN_OK;
}

/* Copies (method 0) or inflates (method 8) @csize bytes at @off into @out_fd. */
static sn_rc_t s_entry_data(s_zip_t *z, int out_fd, int method, uint64_t off, uint64_t csize,
                            uint64_t usize, uint32_t crc_want, const char *name)
{
    uint8_t *in = sn_malloc(S_CHUNK);
    uint8_t *out = sn_malloc(S_CHUNK);
    uLong crc = crc32(0L, Z_NULL, 0);
    uint64_t written = 0, read_off = 0;
    sn_rc_t rc = SN_OK;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    bool has_inflate = false;
    if (method == 8) {
        if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) {
            rc = s_fail(z, SN_ERROR, "zlib init failed");
            goto out;
        }
        has_inflate = true;
    }
    bool is_end = false;
    while (!is_end) {
        size_t n = csize - read_off > S_CHUNK ? S_CHUNK : (size_t)(csize - read_off);
        if (n > 0) {
            rc = s_read_at(z, in, n, off + read_off);
            if (rc != SN_OK)
                goto out;
            read_off += n;
        }
        if (method == 0) {
            if (n == 0)
                break;
            crc = crc32(crc, in, (uInt)n);
            written += n;
            z->total += n;
            if (written > usize || z->total > z->max_bytes) {
                rc = s_fail(z, SN_ERROR, "%s: larger than declared or over the size cap", name);
                goto out;
            }
            rc = s_write_all(z, out_fd, in, n);
            if (rc != SN_OK)
                goto out;
            continue;
        }
        zs.next_in = in;
        zs.avail_in = (uInt)n;
        do {
            zs.next_out = out;
            zs.avail_out = S_CHUNK;
            int zr = inflate(&zs, Z_NO_FLUSH);
            if (zr != Z_OK && zr != Z_STREAM_END && !(zr == Z_BUF_ERROR && n == 0)) {
                rc = s_fail(z, SN_ERROR, "%s: corrupt deflate data", name);
                goto out;
            }
            size_t got = S_CHUNK - zs.avail_out;
            crc = crc32(crc, out, (uInt)got);
            written += got;
            z->total += got;
            if (written > usize || z->total > z->max_bytes) {
                rc = s_fail(z, SN_ERROR, "%s: larger than declared or over the size cap", name);
                goto out;
            }
            rc = s_write_all(z, out_fd, out, got);
            if (rc != SN_OK)
                goto out;
            if (zr == Z_STREAM_END) {
                is_end = true;
                break;
            }
            if (n == 0 && got == 0) {
                rc = s_fail(z, SN_ERROR, "%s: truncated deflate data", name);
                goto out;
            }
        } while (zs.avail_out == 0 || zs.avail_in > 0);
    }
    if (written != usize || (uint32_t)crc != crc_want)
        rc = s_fail(z, SN_ERROR, "%s: %s mismatch", name, written != usize ? "size" : "CRC-32");
out:
    if (has_inflate)
        inflateEnd(&zs);
    free(in);
    free(out);
    return rc;
}

/* One central directory entry at @h (its fixed part and name are in memory). */
static sn_rc_t s_entry(s_zip_t *z, const uint8_t *h, uint64_t cd_off, size_t *files)
{
    uint32_t flags = s_u16(h + 8), method = s_u16(h + 10), crc = s_u32(h + 16);
    uint32_t csize = s_u32(h + 20), usize = s_u32(h + 24), nlen = s_u16(h + 28);
    uint32_t lho = s_u32(h + 42);
    char name[S_NAME_MAX];
    if (nlen == 0 || nlen >= sizeof name)
        return s_fail(z, SN_ERROR, "entry name missing or too long");
    memcpy(name, h + S_CDH_LEN, nlen);
    name[nlen] = '\0';
    if (memchr(name, '\0', nlen) || !s_name_is_safe(name, nlen))
        return s_fail(z, SN_ERROR, "unsafe entry name");
    if (csize == 0xffffffffu || usize == 0xffffffffu || lho == 0xffffffffu)
        return s_fail(z, SN_ERROR, "%s: ZIP64 entries are not supported", name);
    if (flags & 0x1u)
        return s_fail(z, SN_ERROR, "%s: encrypted entries are not supported", name);
    if (name[nlen - 1] == '/') {
        name[nlen - 1] = '\0';
        return s_mkdirs(z, name);
    }
    if (method != 0 && method != 8)
        return s_fail(z, SN_ERROR, "%s: compression method %u is not supported", name, method);
    if (method == 0 && csize != usize)
        return s_fail(z, SN_ERROR, "%s: stored entry with different sizes", name);
    uint8_t lh[S_LFH_LEN];
    sn_rc_t rc = s_read_at(z, lh, sizeof lh, lho);
    if (rc != SN_OK)
        return rc;
    if (s_u32(lh) != S_LFH_SIG)
        return s_fail(z, SN_ERROR, "%s: bad local header", name);
    uint64_t data = (uint64_t)lho + S_LFH_LEN + s_u16(lh + 26) + s_u16(lh + 28);
    if (data > cd_off || csize > cd_off - data)
        return s_fail(z, SN_ERROR, "%s: data overlaps the central directory", name);
    char *slash = strrchr(name, '/');
    if (slash) {
        *slash = '\0';
        rc = s_mkdirs(z, name);
        *slash = '/';
        if (rc != SN_OK)
            return rc;
    }
    char *path = sn_strdupf("%s/%s", z->dest, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    free(path);
    if (fd < 0)
        return s_fail(z, errno == EEXIST ? SN_ERROR : SN_AGAIN, "%s: %s", name,
                      errno == EEXIST ? "duplicate entry" : strerror(errno));
    rc = s_entry_data(z, fd, (int)method, data, csize, usize, crc, name);
    if (close(fd) != 0 && rc == SN_OK)
        rc = s_fail(z, SN_AGAIN, "%s: close failed: %s", name, strerror(errno));
    if (rc == SN_OK && files)
        (*files)++;
    return rc;
}

sn_rc_t zip_reader_extract(const char *zip_path, const char *dest_dir, uint64_t max_bytes,
                           size_t *files, char *err, size_t err_len)
{
    SN_ASSERT(zip_path && dest_dir && max_bytes > 0);
    if (err && err_len)
        err[0] = '\0';
    if (files)
        *files = 0;
    s_zip_t z = {
        .fd = -1, .dest = dest_dir, .max_bytes = max_bytes, .err = err, .err_len = err_len};
    z.fd = open(zip_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (z.fd < 0)
        return s_fail(&z, SN_AGAIN, "cannot open the archive: %s", strerror(errno));
    struct stat st;
    sn_rc_t rc = SN_OK;
    uint8_t *tail = NULL, *cd = NULL;
    if (fstat(z.fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = s_fail(&z, SN_AGAIN, "cannot stat the archive");
        goto out;
    }
    z.size = (uint64_t)st.st_size;
    if (z.size < S_EOCD_LEN) {
        rc = s_fail(&z, SN_ERROR, "not a zip archive (too short)");
        goto out;
    }
    /* The end of central directory record: searched backwards over the comment. */
    size_t tail_len =
        z.size < S_EOCD_LEN + S_MAX_COMMENT ? (size_t)z.size : (size_t)(S_EOCD_LEN + S_MAX_COMMENT);
    tail = sn_malloc(tail_len);
    rc = s_read_at(&z, tail, tail_len, z.size - tail_len);
    if (rc != SN_OK)
        goto out;
    const uint8_t *eocd = NULL;
    for (size_t i = tail_len - S_EOCD_LEN + 1; i-- > 0;)
        if (s_u32(tail + i) == S_EOCD_SIG && i + S_EOCD_LEN + s_u16(tail + i + 20) == tail_len) {
            eocd = tail + i;
            break;
        }
    if (!eocd) {
        rc = s_fail(&z, SN_ERROR, "not a zip archive (no end of central directory)");
        goto out;
    }
    uint32_t entries = s_u16(eocd + 10), cd_size = s_u32(eocd + 12), cd_off = s_u32(eocd + 16);
    if (s_u16(eocd + 4) != 0 || s_u16(eocd + 6) != 0 || s_u16(eocd + 8) != entries) {
        rc = s_fail(&z, SN_ERROR, "multi-disk archives are not supported");
        goto out;
    }
    if (entries == 0xffffu || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
        rc = s_fail(&z, SN_ERROR, "ZIP64 archives are not supported");
        goto out;
    }
    uint64_t eocd_off = z.size - tail_len + (uint64_t)(eocd - tail);
    if (cd_size > S_MAX_CD_BYTES || (uint64_t)cd_off + cd_size > eocd_off) {
        rc = s_fail(&z, SN_ERROR, "central directory out of bounds");
        goto out;
    }
    cd = sn_malloc(cd_size ? cd_size : 1);
    rc = s_read_at(&z, cd, cd_size, cd_off);
    if (rc != SN_OK)
        goto out;
    size_t pos = 0;
    for (uint32_t i = 0; i < entries; i++) {
        if (cd_size - pos < S_CDH_LEN || s_u32(cd + pos) != S_CDH_SIG) {
            rc = s_fail(&z, SN_ERROR, "bad central directory entry %u", i);
            goto out;
        }
        size_t len = S_CDH_LEN + s_u16(cd + pos + 28) + s_u16(cd + pos + 30) + s_u16(cd + pos + 32);
        if (cd_size - pos < len) {
            rc = s_fail(&z, SN_ERROR, "central directory entry %u overflows", i);
            goto out;
        }
        rc = s_entry(&z, cd + pos, cd_off, files);
        if (rc != SN_OK)
            goto out;
        pos += len;
    }
out:
    free(tail);
    free(cd);
    close(z.fd);
    return rc;
}
