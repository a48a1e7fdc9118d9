/* The leaked-credential scanner of gate 2 (ARCHITECTURE §7): finds PEM and OpenSSH
 * private keys, AWS access key ids and the secret keys near them, GitHub tokens, Slack
 * tokens and Google service-account JSON in a buffer, a directory tree or a tar archive.
 * A finding names the file, the line and the kind, never the matched value: nothing the
 * scanner outputs contains a byte of the credential. Files are scanned bounded (text up
 * to max_file_bytes, binary files up to max_binary_bytes) and symlinks are never
 * followed. Pure computation plus file reads: any thread. */
#ifndef SECRET_SCAN_H
#define SECRET_SCAN_H

#include "sentinel/sn_common.h"

#define SECRET_SCAN_MAX_FINDINGS 256

/* One finding: where, and what kind ("private-key", "openssh-private-key",
 * "aws-access-key", "aws-secret-key", "github-token", "slack-token",
 * "gcp-service-account"). */
typedef struct {
    char *file;       /* path relative to the scanned root (heap, owned by the list) */
    uint32_t line;    /* 1-based */
    const char *kind; /* static string */
} secret_finding_t;

/* What a scan found (plain value struct: secret_findings_init / _fini). Findings are
 * unique by (file, line, kind); after SECRET_SCAN_MAX_FINDINGS the rest are counted in
 * is_truncated only. */
typedef struct {
    secret_finding_t *items;
    size_t count;
    size_t cap;
    bool is_truncated;
    uint64_t files_scanned;
    uint64_t files_skipped; /* not regular files, or beyond the total budget */
    uint64_t bytes_scanned;
} secret_findings_t;

void secret_findings_init(secret_findings_t *self);
/* Frees the findings; the struct is zeroed (reusable after init). NULL-safe. */
void secret_findings_fini(secret_findings_t *self);

/* Bounds; a zeroed struct (or NULL) means the defaults. */
typedef struct {
    size_t max_file_bytes;    /* text files: bytes scanned per file, default 16 MiB */
    size_t max_binary_bytes;  /* files with a NUL in their first 8 KiB: default 1 MiB */
    uint64_t max_total_bytes; /* whole scan, default 1 GiB; later files are skipped */
} secret_scan_opts_t;

/* Scans @len bytes (any content: binary, no final newline, huge lines) as file @name
 * (copied into the findings). Appends to @out. */
void secret_scan_buffer(const char *name, const uint8_t *data, size_t len, secret_findings_t *out);

/* Scans every regular file under directory @root (symlinks neither followed nor
 * scanned, depth at most 64). SN_ERROR (logged) when @root is not a readable directory;
 * unreadable files inside are counted as skipped. */
SN_NODISCARD sn_rc_t secret_scan_dir(const char *root, const secret_scan_opts_t *opts,
                                     secret_findings_t *out);

/* Scans the regular files of the tar archive at @path (ustar, pax `path` records, GNU
 * long names; links, directories and devices skipped) and computes the SHA-256 of the
 * whole file into @sha256_hex (may be NULL). SN_ERROR (logged) when the file cannot be
 * read or is not a well-formed tar (bad header checksum, truncated entry). */
SN_NODISCARD sn_rc_t secret_scan_tar(const char *path, const secret_scan_opts_t *opts,
                                     secret_findings_t *out, char sha256_hex[65]);

/* The same from memory (for the fuzzer and tests); no hash. */
SN_NODISCARD sn_rc_t secret_scan_tar_buffer(const uint8_t *data, size_t len,
                                            const secret_scan_opts_t *opts, secret_findings_t *out);

#endif
