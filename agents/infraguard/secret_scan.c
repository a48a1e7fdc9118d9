/* Leaked-credential scanner (see secret_scan.h). One pass over the bytes: at each
 * position only the patterns that can start with that byte are tried, so the cost is
 * linear whatever the line lengths. Patterns are anchored on word boundaries so that
 * longer identifiers that merely contain a prefix ("ghp_" in the middle of a word, a
 * 41-character base64 run) do not match. A finding records where it matched; the matched
 * bytes are never copied anywhere. */
#include "secret_scan.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "sentinel/sn_log.h"

#define S_DEFAULT_FILE_BYTES ((size_t)16 << 20)
#define S_DEFAULT_BINARY_BYTES ((size_t)1 << 20)
#define S_DEFAULT_TOTAL_BYTES ((uint64_t)1 << 30)
#define S_BINARY_PROBE 8192
#define S_AWS_NEAR_LINES 5
#define S_AWS_RING 16
#define S_KEYWORD_WINDOW 200
#define S_MAX_DEPTH 64
#define S_TAR_BLOCK 512
#define S_TAR_MAX_NAME 4096

typedef struct {
    size_t max_file_bytes;
    size_t max_binary_bytes;
    uint64_t max_total_bytes;
} s_limits_t;

static void s_limits(const secret_scan_opts_t *opts, s_limits_t *l);
static void s_scan_bounded(const char *name, const uint8_t *data, size_t len, const s_limits_t *l,
                           secret_findings_t *out);
static sn_rc_t s_scan_dirfd(int dfd, const char *rel, int depth, const s_limits_t *l,
                            secret_findings_t *out);

void secret_findings_init(secret_findings_t *self)
{
    memset(self, 0, sizeof *self);
}

void secret_findings_fini(secret_findings_t *self)
{
    if (!self)
        return;
    for (size_t i = 0; i < self->count; i++)
        free(self->items[i].file);
    free(self->items);
    memset(self, 0, sizeof *self);
}

/* ---- the patterns ------------------------------------------------------------------ */

static void s_add(secret_findings_t *out, const char *name, uint32_t line, const char *kind)
{
    for (size_t i = out->count; i-- > 0;) {
        secret_finding_t *f = &out->items[i];
        if (f->line == line && f->kind == kind && strcmp(f->file, name) == 0)
            return;
    }
    if (out->count >= SECRET_SCAN_MAX_FINDINGS) {
        out->is_truncated = true;
        return;
    }
    if (out->count == out->cap) {
        out->cap = out->cap ? out->cap * 2 : 8;
        out->items = sn_realloc(out->items, out->cap * sizeof *out->items);
    }
    out->items[out->count++] = (secret_finding_t){sn_strdup(name), line, kind};
}

static bool s_upper_digit(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool s_alnum(uint8_t c)
{
    return s_upper_digit(c) || (c >= 'a' && c <= 'z');
}

/* A character that continues a token (identifiers, tokens with - and _). */
static bool s_word(uint8_t c)
{
    return s_alnum(c) || c == '_' || c == '-';
}

static bool s_b64(uint8_t c)
{
    return s_alnum(c) || c == '/' || c == '+';
}

static bool s_has(const uint8_t *d, size_t len, size_t i, const char *lit)
{
    size_t n = strlen(lit);
    return len - i >= n && memcmp(d + i, lit, n) == 0;
}

/* Count of bytes from @i satisfying @pred, up to @max + 1. */
static size_t s_run(const uint8_t *d, size_t len, size_t i, bool (*pred)(uint8_t), size_t max)
{
    size_t n = 0;
    while (i + n < len && n <= max && pred(d[i + n]))
        n++;
    return n;
}

/* "-----BEGIN <LABEL>PRIVATE KEY-----" or "... PRIVATE KEY BLOCK-----" (PGP). */
static const char *s_pem(const uint8_t *d, size_t len, size_t i)
{
    static const char begin[] = "-----BEGIN ";
    if (!s_has(d, len, i, begin))
        return NULL;
    size_t s = i + sizeof begin - 1, k = s;
    while (k < len && k - s < 48 && (s_upper_digit(d[k]) || d[k] == ' '))
        k++;
    if (!s_has(d, len, k, "-----"))
        return NULL;
    size_t label = k - s;
    bool is_key = (label >= 11 && memcmp(d + k - 11, "PRIVATE KEY", 11) == 0) ||
                  (label >= 17 && memcmp(d + k - 17, "PRIVATE KEY BLOCK", 17) == 0);
    if (!is_key)
        return NULL;
    return label >= 7 && memcmp(d + s, "OPENSSH", 7) == 0 ? "openssh-private-key" : "private-key";
}

/* AKIA/ASIA + 16 of [A-Z0-9], bounded by non-alphanumerics. */
static bool s_aws_key_id(const uint8_t *d, size_t len, size_t i)
{
    if (i > 0 && s_alnum(d[i - 1]))
        return false;
    if (!s_has(d, len, i, "AKIA") && !s_has(d, len, i, "ASIA"))
        return false;
    return s_run(d, len, i + 4, s_upper_digit, 16) == 16 && (i + 20 == len || !s_alnum(d[i + 20]));
}

/* ghp_/gho_/ghu_/ghs_/ghr_ + 36 alphanumerics, or github_pat_ + 82 of [A-Za-z0-9_]. */
static bool s_github(const uint8_t *d, size_t len, size_t i)
{
    if (i > 0 && s_word(d[i - 1]))
        return false;
    if (len - i >= 4 && d[i] == 'g' && d[i + 1] == 'h' && memchr("pousr", d[i + 2], 5) &&
        d[i + 3] == '_') {
        size_t n = s_run(d, len, i + 4, s_alnum, 36);
        return n == 36 && (i + 40 == len || !s_word(d[i + 40]));
    }
    if (s_has(d, len, i, "github_pat_")) {
        size_t n = 0;
        while (i + 11 + n < len && n <= 82 && (s_alnum(d[i + 11 + n]) || d[i + 11 + n] == '_'))
            n++;
        return n == 82 && (i + 93 == len || !s_word(d[i + 93]));
    }
    return false;
}

static bool s_slack_char(uint8_t c)
{
    return s_alnum(c) || c == '-';
}

/* xoxb-, xoxp-, xoxa-, xoxr-, xoxs- + at least 10 of [A-Za-z0-9-] with a digit. */
static bool s_slack(const uint8_t *d, size_t len, size_t i)
{
    if (i > 0 && s_word(d[i - 1]))
        return false;
    if (!s_has(d, len, i, "xox") || len - i < 5 || !d[i + 3] || !memchr("bpars", d[i + 3], 5) ||
        d[i + 4] != '-')
        return false;
    size_t n = s_run(d, len, i + 5, s_slack_char, 255);
    if (n < 10)
        return false;
    for (size_t k = 0; k < n; k++)
        if (d[i + 5 + k] >= '0' && d[i + 5 + k] <= '9')
            return true;
    return false;
}

static size_t s_skip_ws(const uint8_t *d, size_t len, size_t k)
{
    while (k < len && (d[k] == ' ' || d[k] == '\t' || d[k] == '\r' || d[k] == '\n'))
        k++;
    return k;
}

/* "type" : "service_account" */
static bool s_sa_type(const uint8_t *d, size_t len, size_t i)
{
    if (!s_has(d, len, i, "\"type\""))
        return false;
    size_t k = s_skip_ws(d, len, i + 6);
    if (k >= len || d[k] != ':')
        return false;
    k = s_skip_ws(d, len, k + 1);
    return s_has(d, len, k, "\"service_account\"");
}

/* "private_key" : */
static bool s_sa_key(const uint8_t *d, size_t len, size_t i)
{
    if (!s_has(d, len, i, "\"private_key\""))
        return false;
    size_t k = s_skip_ws(d, len, i + 13);
    return k < len && d[k] == ':';
}

/* A 40-character base64 run (AWS secret access key shape) with upper, lower and digit. */
static bool s_aws_secret_shape(const uint8_t *d, size_t start, size_t n, size_t len)
{
    if (n != 40 || (start + n < len && d[start + n] == '='))
        return false;
    bool up = false, low = false, dig = false;
    for (size_t k = start; k < start + n; k++) {
        up |= d[k] >= 'A' && d[k] <= 'Z';
        low |= d[k] >= 'a' && d[k] <= 'z';
        dig |= d[k] >= '0' && d[k] <= '9';
    }
    return up && low && dig;
}

/* True if the @window bytes before @i on the same line name an AWS secret key. */
static bool s_aws_secret_keyword(const uint8_t *d, size_t line_start, size_t i)
{
    static const char *const words[] = {"aws_secret", "secret_access_key", "secretaccesskey",
                                        "aws-secret"};
    size_t from = i - line_start > S_KEYWORD_WINDOW ? i - S_KEYWORD_WINDOW : line_start;
    for (size_t w = 0; w < SN_ARRAY_LEN(words); w++) {
        size_t n = strlen(words[w]);
        for (size_t k = from; k + n <= i; k++)
            if (strncasecmp((const char *)d + k, words[w], n) == 0)
                return true;
    }
    return false;
}

void secret_scan_buffer(const char *name, const uint8_t *d, size_t len, secret_findings_t *out)
{
    SN_ASSERT(name && out && (d || len == 0));
    uint32_t line = 1;
    size_t line_start = 0;
    size_t b64_end = 0;        /* end of the base64 run already examined */
    uint32_t aws_key_line = 0; /* last line with an access key id */
    uint32_t ring[S_AWS_RING]; /* lines of recent secret-shaped runs */
    size_t ring_n = 0;
    uint32_t sa_type_line = 0, sa_key_line = 0;

    for (size_t i = 0; i < len; i++) {
        uint8_t c = d[i];
        if (c == '\n') {
            line++;
            line_start = i + 1;
            continue;
        }
        if (i >= b64_end && s_b64(c) && (i == 0 || !s_b64(d[i - 1]))) {
            size_t n = s_run(d, len, i, s_b64, 41);
            b64_end = i + n;
            if (s_aws_secret_shape(d, i, n, len)) {
                if (aws_key_line && line - aws_key_line <= S_AWS_NEAR_LINES)
                    s_add(out, name, line, "aws-secret-key");
                else if (s_aws_secret_keyword(d, line_start, i))
                    s_add(out, name, line, "aws-secret-key");
                else
                    ring[ring_n++ % S_AWS_RING] = line;
            }
        }
        const char *kind = NULL;
        switch (c) {
        case '-':
            kind = s_pem(d, len, i);
            break;
        case 'A':
            if (s_aws_key_id(d, len, i)) {
                kind = "aws-access-key";
                aws_key_line = line;
                size_t first = ring_n > S_AWS_RING ? ring_n - S_AWS_RING : 0;
                for (size_t k = first; k < ring_n; k++)
                    if (line - ring[k % S_AWS_RING] <= S_AWS_NEAR_LINES)
                        s_add(out, name, ring[k % S_AWS_RING], "aws-secret-key");
                ring_n = 0;
            }
            break;
        case 'g':
            if (s_github(d, len, i))
                kind = "github-token";
            break;
        case 'x':
            if (s_slack(d, len, i))
                kind = "slack-token";
            break;
        case '"':
            if (!sa_type_line && s_sa_type(d, len, i))
                sa_type_line = line;
            if (!sa_key_line && s_sa_key(d, len, i))
                sa_key_line = line;
            break;
        default:
            break;
        }
        if (kind)
            s_add(out, name, line, kind);
    }
    if (sa_type_line && sa_key_line)
        s_add(out, name, sa_key_line, "gcp-service-account");
    out->files_scanned++;
    out->bytes_scanned += len;
}

/* ---- directories --------------------------------------------------------------------- */

sn_rc_t secret_scan_dir(const char *root, const secret_scan_opts_t *opts, secret_findings_t *out)
{
    s_limits_t l;
    s_limits(opts, &l);
    int dfd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        sn_error("secret-scan", "cannot open directory path=%s: %s", root, strerror(errno));
        return SN_ERROR;
    }
    sn_rc_t rc = s_scan_dirfd(dfd, "", 0, &l, out);
    close(dfd);
    return rc;
}

/* Reads at most @max bytes of regular file @name in @dfd; NULL if unreadable. */
static uint8_t *s_read_bounded(int dfd, const char *name, size_t max, size_t *len)
{
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return NULL;
    }
    size_t want = (uint64_t)st.st_size < max ? (size_t)st.st_size : max;
    uint8_t *buf = sn_malloc(want + 1);
    size_t got = 0;
    while (got < want) {
        ssize_t n = read(fd, buf + got, want - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    *len = got;
    return buf;
}

static sn_rc_t s_scan_dirfd(int dfd, const char *rel, int depth, const s_limits_t *l,
                            secret_findings_t *out)
{
    if (depth > S_MAX_DEPTH)
        return SN_OK;
    int dup_fd = dup(dfd);
    DIR *dir = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!dir) {
        if (dup_fd >= 0)
            close(dup_fd);
        out->files_skipped++;
        return SN_OK;
    }
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *path = *rel ? sn_strdupf("%s/%s", rel, e->d_name) : sn_strdup(e->d_name);
        struct stat st;
        if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            out->files_skipped++;
        } else if (S_ISDIR(st.st_mode)) {
            int sub = openat(dfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0) {
                (void)s_scan_dirfd(sub, path, depth + 1, l, out);
                close(sub);
            } else {
                out->files_skipped++;
            }
        } else if (S_ISREG(st.st_mode) && out->bytes_scanned < l->max_total_bytes) {
            size_t len = 0;
            uint8_t *buf = s_read_bounded(dfd, e->d_name, l->max_file_bytes, &len);
            if (buf)
                s_scan_bounded(path, buf, len, l, out);
            else
                out->files_skipped++;
            free(buf);
        } else {
            out->files_skipped++;
        }
        free(path);
    }
    closedir(dir);
    return SN_OK;
}

/* ---- tar ------------------------------------------------------------------------------ */

typedef struct {
    FILE *f;             /* file source, or */
    const uint8_t *data; /* memory source */
    size_t len, pos;
    EVP_MD_CTX *md; /* file source: hash of every byte read */
    bool is_error;
} s_src_t;

/* Reads exactly @n bytes (or fewer at EOF: returns the count). */
static size_t s_src_read(s_src_t *src, uint8_t *buf, size_t n)
{
    if (!src->f) {
        size_t k = src->len - src->pos < n ? src->len - src->pos : n;
        memcpy(buf, src->data + src->pos, k);
        src->pos += k;
        return k;
    }
    size_t k = fread(buf, 1, n, src->f);
    if (k < n && ferror(src->f))
        src->is_error = true;
    if (k > 0 && src->md)
        EVP_DigestUpdate(src->md, buf, k);
    return k;
}

/* Parses a numeric tar field: octal (NUL/space padded) or base-256. */
static bool s_tar_num(const uint8_t *f, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (f[0] & 0x80) {
        if (f[0] != 0x80)
            return false; /* negative or absurd */
        for (size_t i = 1; i < n; i++) {
            if (v >> 55)
                return false;
            v = (v << 8) | f[i];
        }
        *out = v;
        return true;
    }
    size_t i = 0;
    while (i < n && f[i] == ' ')
        i++;
    bool any = false;
    for (; i < n && f[i] >= '0' && f[i] <= '7'; i++) {
        if (v >> 60)
            return false;
        v = v * 8 + (uint64_t)(f[i] - '0');
        any = true;
    }
    for (; i < n; i++)
        if (f[i] != ' ' && f[i] != '\0')
            return false;
    *out = v;
    return any;
}

static bool s_tar_checksum_ok(const uint8_t *h)
{
    uint64_t want = 0;
    if (!s_tar_num(h + 148, 8, &want))
        return false;
    uint64_t sum = 0;
    for (size_t i = 0; i < S_TAR_BLOCK; i++)
        sum += (i >= 148 && i < 156) ? ' ' : h[i];
    return sum == want;
}

static bool s_all_zero(const uint8_t *h)
{
    for (size_t i = 0; i < S_TAR_BLOCK; i++)
        if (h[i])
            return false;
    return true;
}

/* Reads an entry's data: keeps the first @keep bytes (in *buf, NUL-terminated), reads
 * and drops the rest and the padding. False on a truncated archive. */
static bool s_tar_data(s_src_t *src, uint64_t size, size_t keep, uint8_t **buf, size_t *len)
{
    uint64_t padded = (size + S_TAR_BLOCK - 1) / S_TAR_BLOCK * S_TAR_BLOCK;
    size_t k = size < keep ? (size_t)size : keep;
    *buf = sn_malloc(k + 1);
    *len = k;
    if (s_src_read(src, *buf, k) != k)
        return false;
    (*buf)[k] = '\0';
    uint64_t rest = padded - k;
    uint8_t junk[8192];
    while (rest > 0) {
        size_t n = rest < sizeof junk ? (size_t)rest : sizeof junk;
        if (s_src_read(src, junk, n) != n)
            return false;
        rest -= n;
    }
    return true;
}

/* The pax "path" record of an extended header, if any (heap). */
static char *s_pax_path(const uint8_t *d, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t rec = 0, k = i;
        while (k < len && d[k] >= '0' && d[k] <= '9' && rec < len)
            rec = rec * 10 + (size_t)(d[k++] - '0');
        if (k >= len || d[k] != ' ' || rec == 0 || rec > len - i)
            return NULL;
        const uint8_t *kv = d + k + 1, *end = d + i + rec;
        if (end - kv > 5 && memcmp(kv, "path=", 5) == 0 && end[-1] == '\n')
            return sn_strndup((const char *)kv + 5, (size_t)(end - kv - 6));
        i += rec;
    }
    return NULL;
}

static sn_rc_t s_scan_tar_src(s_src_t *src, const s_limits_t *l, secret_findings_t *out)
{
    uint8_t h[S_TAR_BLOCK];
    char *long_name = NULL;
    sn_rc_t rc = SN_ERROR;
    for (;;) {
        size_t got = s_src_read(src, h, S_TAR_BLOCK);
        if (got == 0 && !src->is_error) {
            rc = SN_OK; /* EOF without end blocks: tolerated */
            break;
        }
        if (got != S_TAR_BLOCK)
            break;
        if (s_all_zero(h)) {
            rc = SN_OK;
            break;
        }
        uint64_t size = 0;
        if (!s_tar_checksum_ok(h) || !s_tar_num(h + 124, 12, &size))
            break;
        char type = (char)h[156];
        uint8_t *buf = NULL;
        size_t len = 0;
        if (type == 'x' || type == 'L') {
            if (!s_tar_data(src, size, S_TAR_MAX_NAME * 4, &buf, &len))
                break;
            free(long_name);
            long_name = type == 'L' ? sn_strndup((const char *)buf, len) : s_pax_path(buf, len);
            free(buf);
            continue;
        }
        char name[S_TAR_BLOCK];
        if (long_name) {
            snprintf(name, sizeof name, "%s", long_name);
        } else if (memcmp(h + 257, "ustar", 5) == 0 && h[345]) {
            snprintf(name, sizeof name, "%.155s/%.100s", (const char *)h + 345,
                     (const char *)h + 0);
        } else {
            snprintf(name, sizeof name, "%.100s", (const char *)h);
        }
        free(long_name);
        long_name = NULL;
        bool is_regular = type == '0' || type == '\0' || type == '7';
        bool in_budget = out->bytes_scanned < l->max_total_bytes;
        if (!s_tar_data(src, size, is_regular && in_budget ? l->max_file_bytes : 0, &buf, &len)) {
            free(buf);
            break;
        }
        if (is_regular && in_budget) {
            const char *shown = strncmp(name, "./", 2) == 0 ? name + 2 : name;
            s_scan_bounded(shown, buf, len, l, out);
        } else {
            out->files_skipped += is_regular || type == '2' || type == '1' ? 1 : 0;
        }
        free(buf);
    }
    free(long_name);
    return rc;
}

sn_rc_t secret_scan_tar(const char *path, const secret_scan_opts_t *opts, secret_findings_t *out,
                        char sha256_hex[65])
{
    s_limits_t l;
    s_limits(opts, &l);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        sn_error("secret-scan", "cannot open archive path=%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return SN_ERROR;
    }
    s_src_t src = {.f = f, .md = EVP_MD_CTX_new()};
    SN_ASSERT(src.md);
    EVP_DigestInit_ex(src.md, EVP_sha256(), NULL);
    sn_rc_t rc = s_scan_tar_src(&src, &l, out);
    /* Hash the rest (trailing blocks) so the digest covers the whole file. */
    uint8_t buf[8192];
    while (rc == SN_OK && s_src_read(&src, buf, sizeof buf) > 0) {
    }
    if (src.is_error)
        rc = SN_ERROR;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    EVP_DigestFinal_ex(src.md, md, &md_len);
    EVP_MD_CTX_free(src.md);
    fclose(f);
    if (rc != SN_OK)
        sn_error("secret-scan", "malformed or unreadable archive path=%s", path);
    if (sha256_hex) {
        for (unsigned int i = 0; i < md_len && i < 32; i++)
            snprintf(sha256_hex + 2 * i, 3, "%02x", md[i]);
        sha256_hex[64] = '\0';
    }
    return rc;
}

sn_rc_t secret_scan_tar_buffer(const uint8_t *data, size_t len, const secret_scan_opts_t *opts,
                               secret_findings_t *out)
{
    s_limits_t l;
    s_limits(opts, &l);
    s_src_t src = {.data = data, .len = len};
    return s_scan_tar_src(&src, &l, out);
}

/* ---- helpers -------------------------------------------------------------------------- */

static void s_limits(const secret_scan_opts_t *opts, s_limits_t *l)
{
    l->max_file_bytes = opts && opts->max_file_bytes ? opts->max_file_bytes : S_DEFAULT_FILE_BYTES;
    l->max_binary_bytes =
        opts && opts->max_binary_bytes ? opts->max_binary_bytes : S_DEFAULT_BINARY_BYTES;
    l->max_total_bytes =
        opts && opts->max_total_bytes ? opts->max_total_bytes : S_DEFAULT_TOTAL_BYTES;
}

/* Scans a file's bytes within the limits: binary files (a NUL early on) only at their
 * start, everything within the total budget. */
static void s_scan_bounded(const char *name, const uint8_t *data, size_t len, const s_limits_t *l,
                           secret_findings_t *out)
{
    size_t probe = len < S_BINARY_PROBE ? len : S_BINARY_PROBE;
    if (memchr(data, '\0', probe) && len > l->max_binary_bytes)
        len = l->max_binary_bytes;
    uint64_t left = l->max_total_bytes - out->bytes_scanned;
    if (len > left)
        len = (size_t)left;
    secret_scan_buffer(name, data, len, out);
}
