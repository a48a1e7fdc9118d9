/* The gateway's artifact downloads: GET and HEAD /api/v1/artifacts/{sha256} serve the
 * content-addressed store (ARCHITECTURE §7) to the deployers of other hosts. The file is
 * opened once, checked against its name by hashing that very fd, and streamed from the
 * same fd by libmicrohttpd (sendfile; never buffered in memory), so what was checked is
 * what is sent. A file whose bytes do not hash to its name is never served: 500, one
 * error line and one alert.raised event per corrupted version of the file.
 *
 * Hashing a large artifact on every request would make downloads cost a full read each,
 * so verdicts are cached by the file's identity (device, inode, size, mtime and ctime,
 * both in nanoseconds): any write to the file, even one that puts the mtime back, moves
 * the ctime and forces a new check. The cache is a small table with least-recently-used
 * replacement under a mutex; hashing happens outside the lock.
 *
 * Headers: Content-Type application/x-tar, Content-Length, ETag "<sha256>",
 * Repr-Digest (RFC 9530, sha-256 as a structured byte sequence) and the older Digest
 * (RFC 3230) for clients that only know that one; If-None-Match with the ETag gets 304.
 * The artifact is immutable, so it may be cached privately for a year. */
#include "gateway.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "sentinel/sn_artifact.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"

#define S_CACHE_SLOTS 128
#define S_JOURNAL_TIMEOUT_MS 1000
#define S_B64_LEN 45 /* base64 of 32 bytes: 44 characters and a NUL */

typedef struct {
    char sha[SN_ARTIFACT_SHA_LEN + 1]; /* "" = free slot */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    struct timespec ctime;
    bool is_good;
    uint64_t used; /* LRU tick */
} s_verdict_t;

struct gateway_artifacts {
    gateway_t *gw;
    sn_artifact_t *store;
    pthread_mutex_t mu; /* the cache */
    s_verdict_t cache[S_CACHE_SLOTS];
    uint64_t tick;
    pthread_mutex_t journal_mu; /* the journal belongs to whoever holds this */
    sn_source_t source;
    sn_journal_t *journal;
};

static bool s_same_file(const s_verdict_t *v, const char *sha, const struct stat *st);
static int s_cache_get(gateway_artifacts_t *self, const char *sha, const struct stat *st);
static void s_cache_put(gateway_artifacts_t *self, const char *sha, const struct stat *st,
                        bool is_good);
static void s_alert(gateway_artifacts_t *self, const char *sha, const char *got);
static void s_digest_b64(const char *sha, char out[S_B64_LEN]);

gateway_artifacts_t *gateway_artifacts_new(gateway_t *gw)
{
    const sn_config_t *cfg = gw->cfg;
    char *dir = cfg->artifact_dir
                    ? sn_strdup(cfg->artifact_dir)
                    : sn_strdupf("%s/artifacts", cfg->state_dir ? cfg->state_dir : "./var");
    sn_artifact_t *store = sn_artifact_new(dir, NULL);
    free(dir);
    if (!store)
        return NULL;
    gateway_artifacts_t *self = sn_calloc(1, sizeof *self);
    self->gw = gw;
    self->store = store;
    pthread_mutex_init(&self->mu, NULL);
    pthread_mutex_init(&self->journal_mu, NULL);
    sn_source_init(&self->source, "gateway", sn_ctx_instance(gw->ctx));
    sn_journal_opts_t jo = {
        .redis = gw->redis,
        .source = &self->source,
        .max_len = cfg->runtime.journal_max_len,
        .timeout_ms = S_JOURNAL_TIMEOUT_MS,
    };
    self->journal = sn_journal_new(&jo);
    if (!self->journal)
        sn_warn("gateway", "no journal writer: corrupted artifacts will be logged, not alerted");
    return self;
}

void gateway_artifacts_destroy(gateway_artifacts_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gateway_artifacts_t *self = *self_p;
    sn_journal_destroy(&self->journal);
    sn_artifact_destroy(&self->store);
    pthread_mutex_destroy(&self->mu);
    pthread_mutex_destroy(&self->journal_mu);
    free(self);
    *self_p = NULL;
}

enum MHD_Result gateway_api_artifact(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    gateway_artifacts_t *self = gw->artifacts;
    const char *sha = req->params[0];
    if (!sn_artifact_sha_is_valid(sha))
        return gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                   "an artifact is named by its sha256: 64 lowercase hex digits");
    char *path = sn_artifact_path(self->store, sha);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    int err = errno;
    free(path);
    if (fd < 0 && err == ENOENT) {
        sn_metrics_add(gw->metrics, "artifact_not_found", 1);
        return gateway_reply_error(conn, MHD_HTTP_NOT_FOUND, "not_found",
                                   "no artifact with this sha256 here");
    }
    struct stat st;
    bool is_file = fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    if (!is_file) {
        if (fd >= 0)
            close(fd);
        sn_error("gateway", "artifact sha256=%s cannot be served: %s", sha,
                 fd < 0 ? strerror(err) : "not a regular file");
        return gateway_reply_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
                                   "the artifact cannot be read");
    }
    int verdict = s_cache_get(self, sha, &st);
    if (verdict < 0) {
        char got[SN_ARTIFACT_SHA_LEN + 1];
        sn_rc_t rc = sn_artifact_hash_fd(fd, got, NULL);
        if (rc != SN_OK) {
            close(fd);
            return gateway_reply_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                                       "the artifact could not be read; try again");
        }
        verdict = strcmp(got, sha) == 0;
        s_cache_put(self, sha, &st, verdict == 1);
        if (!verdict) {
            sn_error("gateway", "artifact corrupted, not served: %s/%s.tar holds sha256=%s",
                     sn_artifact_dir(self->store), sha, got);
            sn_metrics_add(gw->metrics, "artifact_corrupted", 1);
            s_alert(self, sha, got);
        }
    }
    if (!verdict) {
        close(fd);
        return gateway_reply_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "artifact_corrupted",
                                   "the stored artifact does not match its sha256; not served");
    }
    char etag[SN_ARTIFACT_SHA_LEN + 3];
    snprintf(etag, sizeof etag, "\"%s\"", sha);
    const char *inm = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "If-None-Match");
    struct MHD_Response *r;
    unsigned status = MHD_HTTP_OK;
    if (inm && (strcmp(inm, etag) == 0 || strcmp(inm, "*") == 0)) {
        close(fd);
        status = MHD_HTTP_NOT_MODIFIED;
        r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    } else {
        /* MHD owns fd from here (closed with the response). */
        r = MHD_create_response_from_fd((uint64_t)st.st_size, fd);
        if (!r)
            close(fd);
    }
    if (!r)
        return MHD_NO;
    char b64[S_B64_LEN];
    s_digest_b64(sha, b64);
    char repr[S_B64_LEN + 16], digest[S_B64_LEN + 16];
    snprintf(repr, sizeof repr, "sha-256=:%s:", b64);
    snprintf(digest, sizeof digest, "sha-256=%s", b64);
    MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, etag);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL,
                            "private, max-age=31536000, immutable");
    if (status == MHD_HTTP_OK) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/x-tar");
        MHD_add_response_header(r, "Repr-Digest", repr);
        MHD_add_response_header(r, "Digest", digest);
        MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    }
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    bool is_head = strcmp(req->route->method, "HEAD") == 0;
    sn_metrics_add(gw->metrics, status == MHD_HTTP_OK ? "artifact_served" : "artifact_not_modified",
                   1);
    if (status == MHD_HTTP_OK && !is_head)
        sn_metrics_add(gw->metrics, "artifact_bytes", (int64_t)st.st_size);
    sn_info("gateway", "artifact %s sha256=%s bytes=%lld status=%u to=%s", req->route->method, sha,
            (long long)st.st_size, status, req->principal ? req->principal : "-");
    return ret;
}

/* ---- statics ---------------------------------------------------------------------------- */

static bool s_ts_equal(struct timespec a, struct timespec b)
{
    return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

static bool s_same_file(const s_verdict_t *v, const char *sha, const struct stat *st)
{
    return strcmp(v->sha, sha) == 0 && v->dev == st->st_dev && v->ino == st->st_ino &&
           v->size == st->st_size && s_ts_equal(v->mtime, st->st_mtim) &&
           s_ts_equal(v->ctime, st->st_ctim);
}

/* 1 good, 0 bad, -1 unknown (not cached, or the file changed since). */
static int s_cache_get(gateway_artifacts_t *self, const char *sha, const struct stat *st)
{
    int verdict = -1;
    pthread_mutex_lock(&self->mu);
    for (size_t i = 0; i < S_CACHE_SLOTS; i++) {
        s_verdict_t *v = &self->cache[i];
        if (v->sha[0] && s_same_file(v, sha, st)) {
            v->used = ++self->tick;
            verdict = v->is_good;
            break;
        }
    }
    pthread_mutex_unlock(&self->mu);
    return verdict;
}

static void s_cache_put(gateway_artifacts_t *self, const char *sha, const struct stat *st,
                        bool is_good)
{
    pthread_mutex_lock(&self->mu);
    /* The slot of this sha (an older version of the file), else a free one, else the LRU. */
    s_verdict_t *slot = NULL;
    for (size_t i = 0; i < S_CACHE_SLOTS && !slot; i++)
        if (strcmp(self->cache[i].sha, sha) == 0)
            slot = &self->cache[i];
    for (size_t i = 0; i < S_CACHE_SLOTS && !slot; i++)
        if (!self->cache[i].sha[0])
            slot = &self->cache[i];
    if (!slot) {
        slot = &self->cache[0];
        for (size_t i = 1; i < S_CACHE_SLOTS; i++)
            if (self->cache[i].used < slot->used)
                slot = &self->cache[i];
    }
    memcpy(slot->sha, sha, SN_ARTIFACT_SHA_LEN + 1);
    slot->dev = st->st_dev;
    slot->ino = st->st_ino;
    slot->size = st->st_size;
    slot->mtime = st->st_mtim;
    slot->ctime = st->st_ctim;
    slot->is_good = is_good;
    slot->used = ++self->tick;
    pthread_mutex_unlock(&self->mu);
}

/* alert.raised into the journal (the notifier routes it). Once per corrupted version:
 * the cache remembers the bad verdict, so later requests do not alert again. */
static void s_alert(gateway_artifacts_t *self, const char *sha, const char *got)
{
    if (!self->journal)
        return;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &self->source, "alert.raised", id);
    env.subject = (char *)"artifact";
    Sentinel__V1__Alert alert = SENTINEL__V1__ALERT__INIT;
    alert.name = (char *)"artifact-corrupted";
    alert.severity = (char *)"critical";
    char text[320];
    snprintf(text, sizeof text,
             "artifact sha256=%s in %s is corrupted (its bytes hash to %s); the gateway refuses "
             "to serve it",
             sha, sn_artifact_dir(self->store), got);
    alert.summary = text;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_ALERT;
    env.alert = &alert;
    sn_journal_result_t res;
    pthread_mutex_lock(&self->journal_mu);
    sn_rc_t rc = sn_journal_commit(self->journal, NULL, NULL, 0, &env, &res);
    pthread_mutex_unlock(&self->journal_mu);
    if (rc != SN_OK)
        sn_warn("gateway", "alert.raised for artifact sha256=%s not journaled: %s", sha,
                sn_rc_str(rc));
}

static void s_digest_b64(const char *sha, char out[S_B64_LEN])
{
    uint8_t raw[SN_ARTIFACT_SHA_LEN / 2];
    for (size_t i = 0; i < sizeof raw; i++) {
        unsigned hi = (unsigned)(sha[2 * i] <= '9' ? sha[2 * i] - '0' : sha[2 * i] - 'a' + 10);
        unsigned lo =
            (unsigned)(sha[2 * i + 1] <= '9' ? sha[2 * i + 1] - '0' : sha[2 * i + 1] - 'a' + 10);
        raw[i] = (uint8_t)(hi << 4 | lo);
    }
    int n = EVP_EncodeBlock((unsigned char *)out, raw, (int)sizeof raw);
    SN_ASSERT(n == S_B64_LEN - 1);
}
