/* The content-addressed artifact store (ARCHITECTURE §7): a build's output directory
 * becomes one deterministic ustar archive (members sorted by name, mtime 0, uid/gid 0,
 * no user or group names, modes normalised to 0644/0755), named by the SHA-256 of its
 * bytes: <dir>/<sha256>.tar. The archive is written by our own small ustar writer (no
 * shell, no tar binary), hashed while it is written to a temp file, fsynced and renamed
 * into place, so a reader never sees half an artifact. Extraction uses our own reader:
 * it accepts only regular files, directories and symlinks whose target stays inside the
 * destination, refuses absolute names, `..` components and paths through a symlink,
 * and verifies the hash first, so a corrupted artifact is never deployed.
 *
 * Redis is optional: with a handle, put_dir records artifact:<sha256> (hash: path,
 * bytes, created_ms) and gc deletes the records of what it removes. A store may be used
 * from any thread; concurrent puts of the same content are safe (same name, same bytes). */
#ifndef SN_ARTIFACT_H
#define SN_ARTIFACT_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_redis.h"

typedef struct sn_artifact sn_artifact_t;

/* Length of a sha256 in lowercase hex, without the terminator. */
#define SN_ARTIFACT_SHA_LEN 64

/* A store in directory @dir (created 0700 with its parents if missing). @redis is
 * borrowed and may be NULL; it must outlive the store. NULL (logged) if @dir cannot be
 * created. */
sn_artifact_t *sn_artifact_new(const char *dir, sn_redis_t *redis);

/* Frees; NULL-safe; sets *self_p = NULL. */
void sn_artifact_destroy(sn_artifact_t **self_p);

/* The store's directory (owned by @self). */
const char *sn_artifact_dir(sn_artifact_t *self);

/* True if @sha is exactly 64 lowercase hex digits. */
bool sn_artifact_sha_is_valid(const char *sha);

/* Archives directory @dir into the store. On SN_OK @sha_out holds the sha256 (hex) and
 * *bytes (may be NULL) the archive size; an artifact with that hash already present is
 * kept as it is (same content). SN_ERROR for what no retry cures: @dir missing or not a
 * directory, a member that cannot be archived (device, fifo, socket, a path over 255
 * bytes, a file of 8 GiB or more); SN_AGAIN for I/O errors (disk full, EIO). Logged. */
SN_NODISCARD sn_rc_t sn_artifact_put_dir(sn_artifact_t *self, const char *dir,
                                         char sha_out[SN_ARTIFACT_SHA_LEN + 1], uint64_t *bytes);

/* Path of the artifact @sha in the store (whether or not it exists); caller frees.
 * NULL if @sha is not a valid sha256. */
char *sn_artifact_path(sn_artifact_t *self, const char *sha);

/* True if the artifact file exists (no hash check). */
bool sn_artifact_exists(sn_artifact_t *self, const char *sha);

/* Re-hashes the stored artifact. SN_OK: its bytes hash to @sha; SN_ERROR: corrupted
 * (logged with both hashes) or @sha invalid; SN_DECLINED: not in the store; SN_AGAIN:
 * read error. */
SN_NODISCARD sn_rc_t sn_artifact_verify(sn_artifact_t *self, const char *sha);

/* Hashes the whole of file @fd (from offset 0, with pread: the fd's offset is left
 * alone) into @sha_out; *bytes (may be NULL) gets its size. SN_AGAIN on a read error
 * (logged). For a reader that must serve exactly the bytes it checked (the gateway).
 * Any thread. */
SN_NODISCARD sn_rc_t sn_artifact_hash_fd(int fd, char sha_out[SN_ARTIFACT_SHA_LEN + 1],
                                         uint64_t *bytes);

/* Moves the file at @path (a temp file of the caller's, on the store's filesystem, e.g.
 * <dir>/.tmp-*: gc removes such files left behind) into the store as artifact
 * @expected_sha, if and only if its bytes hash to @expected_sha: hashed, fsynced, renamed
 * atomically, directory fsynced. @got_sha (may be NULL) receives the hash of what the
 * file holds (empty if it could not be read). SN_OK: stored (@path is gone; an artifact
 * with that hash already present is kept and @path removed); SN_ERROR: the hash differs
 * (logged with both hashes), @expected_sha is invalid, or @path is not a regular file (a
 * symlink included) — @path is left for the caller to remove; SN_AGAIN: an I/O error
 * (@path left too). No Redis record is written: the record describes the store that
 * built the artifact. Any thread. */
SN_NODISCARD sn_rc_t sn_artifact_import_file(sn_artifact_t *self, const char *path,
                                             const char *expected_sha,
                                             char got_sha[SN_ARTIFACT_SHA_LEN + 1]);

/* Verifies the artifact, then extracts it into @dest_dir, which must not exist or be
 * empty (created 0755 if missing). Members with an absolute name, a `..` component, a
 * path through a symlink, a symlink whose target leaves @dest_dir, a duplicate name or
 * an unsupported type (hard link, device, fifo) make the whole extraction fail: then
 * everything written under @dest_dir is removed again (the directory itself too, if
 * this call created it). Returns as sn_artifact_verify, and SN_ERROR for a refused or
 * malformed archive or a non-empty @dest_dir. Logged. */
SN_NODISCARD sn_rc_t sn_artifact_extract(sn_artifact_t *self, const char *sha,
                                         const char *dest_dir);

/* Removes every artifact that is not in @keep (@keep_count sha256 strings, borrowed),
 * and temp files of interrupted puts older than an hour; with Redis, deletes the
 * artifact:<sha> records of what it removed. *removed (may be NULL) gets the count of
 * artifacts removed. SN_AGAIN if the directory cannot be read. */
SN_NODISCARD sn_rc_t sn_artifact_gc(sn_artifact_t *self, const char *const *keep, size_t keep_count,
                                    size_t *removed);

/* Removes @path and everything below it without following symlinks (a missing path
 * is SN_OK). For callers that clean up release and work directories. SN_AGAIN on an
 * I/O error (logged). */
SN_NODISCARD sn_rc_t sn_artifact_rmtree(const char *path);

#endif
