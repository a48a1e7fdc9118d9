/* A minimal, strict zip extractor for GitHub Actions artifacts (build-validator, GitHub
 * mode): the central directory is read from the end of the file, every entry must be
 * stored (method 0) or deflated (method 8, through zlib's raw inflate), unencrypted, with
 * a safe relative name, and its CRC-32 and size must match. ZIP64 archives, encrypted
 * entries, absolute names, `..` components, backslashes, duplicate names and a total size
 * over the caller's cap are refused. Files are written 0644 and directories 0755 under the
 * destination (nothing else: no symlinks, no modes from the archive). Any thread. */
#ifndef ZIP_READER_H
#define ZIP_READER_H

#include "sentinel/sn_common.h"

/* Extracts the zip at @zip_path into @dest_dir (must exist and be empty). At most
 * @max_bytes uncompressed bytes in all (> 0). SN_OK with *files (may be NULL) set to the
 * count of files written; SN_ERROR for a refused or malformed archive with a reason in
 * @err (@err_len bytes, may be NULL); SN_AGAIN for an I/O error (disk full, EIO). On any
 * failure what was written stays for the caller to remove with the work dir. */
SN_NODISCARD sn_rc_t zip_reader_extract(const char *zip_path, const char *dest_dir,
                                        uint64_t max_bytes, size_t *files, char *err,
                                        size_t err_len);

#endif
