/* Integration tests for sn_audit against a real redis-server: append and verify, the
 * archive (and its trimming of Redis), tampering in Redis and in the archive named at
 * its first bad index, a consistent rewrite caught by the signed heads, two appenders
 * racing on the compare-and-set, a writer SIGKILLed in a loop of appends (this binary
 * re-executed as the child), and archive I/O failures that fail closed and raise an
 * alert. */
#include "sn_test.h"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sentinel/sn_audit.h"
#include "sentinel/sn_crypto.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

typedef struct {
    sn_test_redis_t redis;
    char *ns;
    char *dir;
    char *archive;
    char *key;
    sn_redis_opts_t ropts;
    sn_redis_t *r;
    redisContext *raw;
    sn_source_t src;
} s_fx_t;

static int s_setup(void **state)
{
    s_fx_t *fx = sn_calloc(1, sizeof *fx);
    assert_true(sn_test_redis_start(&fx->redis));
    fx->ns = sn_test_namespace("audit");
    fx->dir = sn_test_tmpdir("audit");
    fx->archive = sn_strdupf("%s/audit.log", fx->dir);
    fx->key = sn_strdupf("%s/audit.key", fx->dir);
    fx->ropts = (sn_redis_opts_t){
        .unix_path = fx->redis.unix_path, .namespace_ = fx->ns, .timeout_ms = 2000};
    fx->r = sn_redis_new(&fx->ropts);
    assert_non_null(fx->r);
    fx->raw = redisConnectUnix(fx->redis.unix_path);
    assert_true(fx->raw && !fx->raw->err);
    sn_source_init(&fx->src, "test", "audit");
    *state = fx;
    return 0;
}

static int s_teardown(void **state)
{
    s_fx_t *fx = *state;
    redisFree(fx->raw);
    sn_redis_destroy(&fx->r);
    sn_test_redis_destroy(&fx->redis);
    sn_test_rmdir(fx->dir);
    free(fx->dir);
    free(fx->archive);
    free(fx->key);
    free(fx->ns);
    free(fx);
    return 0;
}

static sn_audit_t *s_audit(s_fx_t *fx, int sign_every)
{
    sn_audit_opts_t o = {.redis = fx->r,
                         .source = &fx->src,
                         .archive_path = fx->archive,
                         .key_file = fx->key,
                         .sign_every = sign_every};
    sn_audit_t *a = sn_audit_new(&o);
    assert_non_null(a);
    return a;
}

/* @n intent + outcome pairs: 2n records. */
static void s_append_pairs(sn_audit_t *a, int n, const char *actor)
{
    for (int i = 0; i < n; i++) {
        uint64_t id = 0;
        char subject[64];
        snprintf(subject, sizeof subject, "proj/env/target-%d", i);
        assert_int_equal(sn_audit_intent(a, actor, "deploy.stage", subject, "run queued", &id),
                         SN_OK);
        assert_true(id > 0);
        assert_int_equal(sn_audit_outcome(a, id, i % 3 != 0, "release r1"), SN_OK);
    }
}

static sn_rc_t s_verify(s_fx_t *fx, sn_audit_report_t *rep)
{
    return sn_audit_verify(fx->r, fx->archive, fx->key, 2000, rep);
}

static redisReply *s_rawf(s_fx_t *fx, const char *fmt, const char *key)
{
    char *full = sn_strdupf("%s%s", fx->ns, key);
    redisReply *r = redisCommand(fx->raw, fmt, full);
    free(full);
    assert_non_null(r);
    return r;
}

static uint64_t s_head_index(s_fx_t *fx)
{
    redisReply *r = s_rawf(fx, "GET %s", SN_AUDIT_HEAD);
    uint64_t v = r->type == REDIS_REPLY_STRING ? strtoull(r->str, NULL, 10) : 0;
    freeReplyObject(r);
    return v;
}

static long long s_stream_len(s_fx_t *fx, const char *key)
{
    redisReply *r = s_rawf(fx, "XLEN %s", key);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

/* ---- appending and verifying --------------------------------------------------------- */

typedef struct {
    uint64_t next;
    int count;
    int from_archive;
    bool is_ordered;
} s_scan_t;

static void s_on_record(void *arg, uint64_t index, const char *hash_hex, const char *rec,
                        size_t rec_len, bool from_archive)
{
    s_scan_t *s = arg;
    if (index != s->next)
        s->is_ordered = false;
    s->next = index + 1;
    s->count++;
    s->from_archive += from_archive;
    assert_int_equal(strlen(hash_hex), SN_SHA256_HEX_LEN);
    assert_true(rec_len > 10 && rec[0] == '{');
}

static void test_sn_audit_append_archive_verify(void **state)
{
    s_fx_t *fx = *state;
    sn_audit_report_t rep;
    /* An empty chain verifies. */
    assert_int_equal(s_verify(fx, &rep), SN_OK);
    assert_int_equal(rep.records, 0);

    sn_audit_t *a = s_audit(fx, 4);
    struct stat st;
    assert_int_equal(stat(fx->key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    s_append_pairs(a, 10, "buildpilot/bp-1");
    assert_int_equal(s_head_index(fx), 20);
    assert_int_equal(s_verify(fx, &rep), SN_OK);
    assert_int_equal(rep.records, 20);
    assert_int_equal(rep.first_index, 1);
    assert_int_equal(rep.last_index, 20);
    assert_int_equal(rep.head_index, 20);
    assert_int_equal(rep.signatures, 5); /* heads 4, 8, 12, 16, 20 */
    assert_false(rep.is_truncated);

    /* Outcomes name their intent and carry its action; a record id of 0 is refused. */
    redisReply *r = s_rawf(fx, "XRANGE %s 2-0 2-0", SN_AUDIT_STREAM);
    assert_int_equal(r->elements, 1);
    const char *rec = r->element[0]->element[1]->element[3]->str;
    assert_non_null(strstr(rec, "\"intent\":1"));
    assert_non_null(strstr(rec, "\"kind\":\"outcome\""));
    assert_non_null(strstr(rec, "\"action\":\"deploy.stage\""));
    assert_non_null(strstr(rec, "\"time_ms\":"));
    freeReplyObject(r);
    assert_int_equal(sn_audit_outcome(a, 0, true, "x"), SN_ERROR);

    /* Archive part of it: the archive takes 1..12 (and their signatures), Redis keeps
     * the rest, and the whole still verifies. */
    uint64_t archived = 0;
    assert_int_equal(sn_audit_archive(a, 12, &archived), SN_OK);
    assert_int_equal(archived, 12);
    assert_int_equal(s_stream_len(fx, SN_AUDIT_STREAM), 8);
    assert_int_equal(sn_test_count_in_file(fx->archive, "\nR ") + 1, 12);
    assert_int_equal(sn_test_count_in_file(fx->archive, "S "), 3);
    assert_int_equal(s_verify(fx, &rep), SN_OK);
    assert_int_equal(rep.records, 20);
    assert_int_equal(rep.signatures, 5);
    /* Archiving again up to the same point writes nothing; up to the head takes the rest. */
    assert_int_equal(sn_audit_archive(a, 12, &archived), SN_OK);
    assert_int_equal(archived, 0);
    assert_int_equal(sn_audit_archive(a, 0, &archived), SN_OK);
    assert_int_equal(archived, 8);
    assert_int_equal(s_stream_len(fx, SN_AUDIT_STREAM), 0);
    assert_int_equal(stat(fx->archive, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* The chain goes on after everything was archived. */
    s_append_pairs(a, 3, "autoheal/ah-1");
    assert_int_equal(s_verify(fx, &rep), SN_OK);
    assert_int_equal(rep.records, 26);
    assert_int_equal(rep.head_index, 26);

    /* Reading for `audit tail`: every record once, in order, archive first. */
    s_scan_t sc = {.next = 1, .is_ordered = true};
    assert_int_equal(sn_audit_scan(fx->r, fx->archive, 1, 2000, s_on_record, &sc), SN_OK);
    assert_int_equal(sc.count, 26);
    assert_int_equal(sc.from_archive, 20);
    assert_true(sc.is_ordered);
    sc = (s_scan_t){.next = 19, .is_ordered = true};
    assert_int_equal(sn_audit_scan(fx->r, fx->archive, 19, 2000, s_on_record, &sc), SN_OK);
    assert_int_equal(sc.count, 8);

    /* Without the key the signatures cannot be checked, which is said, not an error. */
    assert_int_equal(sn_audit_verify(fx->r, fx->archive, NULL, 2000, &rep), SN_OK);
    assert_true(rep.is_key_missing);
    assert_int_equal(rep.signatures, 0);

    sn_audit_stats_t s;
    sn_audit_stats(a, &s);
    assert_int_equal(s.appended, 26);
    assert_int_equal(s.archived, 20);
    assert_true(s.signatures >= 5);
    sn_audit_destroy(&a);
    assert_null(a);
    sn_audit_destroy(&a); /* NULL-safe */
}

static void test_sn_audit_key_file_rules(void **state)
{
    s_fx_t *fx = *state;
    sn_audit_opts_t o = {.redis = fx->r, .archive_path = fx->archive, .key_file = fx->key};
    /* Group-readable: refused. */
    int fd = open(fx->key, O_WRONLY | O_CREAT, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "00", 2), 2);
    close(fd);
    assert_int_equal(chmod(fx->key, 0644), 0);
    assert_null(sn_audit_new(&o));
    /* 0600 but not 64 hex characters: refused. */
    assert_int_equal(chmod(fx->key, 0600), 0);
    assert_null(sn_audit_new(&o));
    /* Missing options: refused. */
    sn_audit_opts_t bad = {.redis = fx->r, .archive_path = fx->archive};
    assert_null(sn_audit_new(&bad));
    /* Missing file: created. */
    assert_int_equal(unlink(fx->key), 0);
    sn_audit_t *a = sn_audit_new(&o);
    assert_non_null(a);
    s_append_pairs(a, 32, "x"); /* default sign_every 64: one signature */
    sn_audit_destroy(&a);
    sn_audit_report_t rep;
    assert_int_equal(s_verify(fx, &rep), SN_OK);
    assert_int_equal(rep.signatures, 1);
    /* Another key: the signature does not verify. */
    char *other = sn_strdupf("%s/other.key", fx->dir);
    sn_audit_opts_t o2 = {.redis = fx->r, .archive_path = fx->archive, .key_file = other};
    a = sn_audit_new(&o2);
    assert_non_null(a);
    sn_audit_destroy(&a);
    assert_int_equal(sn_audit_verify(fx->r, fx->archive, other, 2000, &rep), SN_ERROR);
    assert_int_equal(rep.bad_index, 64);
    assert_non_null(strstr(rep.reason, "signature"));
    free(other);
}

/* ---- tampering ------------------------------------------------------------------------ */

typedef void(s_edit_fn)(uint64_t index, char **hash, char **rec, void *arg);

/* Rewrites the whole stream (ids kept) through @edit: how someone with Redis access would
 * change a record of an append-only stream. */
static void s_rewrite_stream(s_fx_t *fx, s_edit_fn *edit, void *arg)
{
    redisReply *all = s_rawf(fx, "XRANGE %s - +", SN_AUDIT_STREAM);
    assert_int_equal(all->type, REDIS_REPLY_ARRAY);
    freeReplyObject(s_rawf(fx, "DEL %s", SN_AUDIT_STREAM));
    char *key = sn_strdupf("%s%s", fx->ns, SN_AUDIT_STREAM);
    for (size_t i = 0; i < all->elements; i++) {
        redisReply *e = all->element[i];
        const char *id = e->element[0]->str;
        char *hash = sn_strdup(e->element[1]->element[1]->str);
        char *rec = sn_strdup(e->element[1]->element[3]->str);
        edit(strtoull(id, NULL, 10), &hash, &rec, arg);
        redisReply *r = redisCommand(fx->raw, "XADD %s %s hash %s rec %s", key, id, hash, rec);
        assert_non_null(r);
        assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
        freeReplyObject(r);
        free(hash);
        free(rec);
    }
    free(key);
    freeReplyObject(all);
}

static char *s_replace(const char *s, const char *from, const char *to)
{
    const char *p = strstr(s, from);
    assert_non_null(p);
    return sn_strdupf("%.*s%s%s", (int)(p - s), s, to, p + strlen(from));
}

static void s_edit_actor_5(uint64_t index, char **hash, char **rec, void *arg)
{
    if (index != 5)
        return;
    char *n = s_replace(*rec, "\"actor\":\"bp\"", "\"actor\":\"mallory\"");
    free(*rec);
    *rec = n;
}

/* A rewrite from @from on that recomputes every hash (no key, so no signatures). */
typedef struct {
    uint64_t from;
    char prev[SN_SHA256_HEX_LEN + 1];
} s_rechain_t;

static void s_edit_rechain(uint64_t index, char **hash, char **rec, void *arg)
{
    s_rechain_t *rc = arg;
    if (index >= rc->from) {
        json_t *j = json_loads(*rec, 0, NULL);
        assert_non_null(j);
        if (index == rc->from)
            json_object_set_new(j, "actor", json_string("mallory"));
        json_object_set_new(j, "prev", json_string(rc->prev));
        free(*rec);
        *rec = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
        json_decref(j);
        uint8_t prev[SN_SHA256_LEN], d[SN_SHA256_LEN];
        assert_int_equal(sn_hex_decode(rc->prev, SN_SHA256_HEX_LEN, prev, sizeof prev), SN_OK);
        struct iovec iov[2] = {{prev, sizeof prev}, {*rec, strlen(*rec)}};
        assert_int_equal(sn_sha256_v(iov, 2, d), SN_OK);
        char hex[SN_SHA256_HEX_LEN + 1];
        sn_hex_encode(d, sizeof d, hex);
        free(*hash);
        *hash = sn_strdup(hex);
    }
    sn_strlcpy(rc->prev, *hash, sizeof rc->prev);
}

static void test_sn_audit_tamper_in_redis(void **state)
{
    s_fx_t *fx = *state;
    sn_audit_t *a = s_audit(fx, 4);
    s_append_pairs(a, 6, "bp"); /* 12 records, signed at 4, 8, 12 */
    sn_audit_report_t rep;
    assert_int_equal(s_verify(fx, &rep), SN_OK);

    /* Keep a pristine copy to restore between attacks. */
    redisReply *dump = s_rawf(fx, "DUMP %s", SN_AUDIT_STREAM);
    assert_int_equal(dump->type, REDIS_REPLY_STRING);
    char *skey = sn_strdupf("%s%s", fx->ns, SN_AUDIT_STREAM);

    /* 1. One record altered in place: named at its index. */
    s_rewrite_stream(fx, s_edit_actor_5, NULL);
    assert_int_equal(s_verify(fx, &rep), SN_ERROR);
    assert_int_equal(rep.bad_index, 5);
    assert_non_null(strstr(rep.reason, "hash mismatch"));

    /* 2. A record deleted from the middle. */
    redisReply *r = redisCommand(fx->raw, "RESTORE %s 0 %b REPLACE", skey, dump->str, dump->len);
    freeReplyObject(r);
    assert_int_equal(s_verify(fx, &rep), SN_OK);
    r = redisCommand(fx->raw, "XDEL %s 7-0", skey);
    freeReplyObject(r);
    assert_int_equal(s_verify(fx, &rep), SN_ERROR);
    assert_int_equal(rep.bad_index, 7);
    assert_non_null(strstr(rep.reason, "missing"));

    /* 3. A consistent rewrite from 6 on (every hash recomputed, head updated): the chain
     * holds, the signed head at 8 does not. */
    r = redisCommand(fx->raw, "RESTORE %s 0 %b REPLACE", skey, dump->str, dump->len);
    freeReplyObject(r);
    s_rechain_t rc = {.from = 6};
    s_rewrite_stream(fx, s_edit_rechain, &rc);
    char *hkey = sn_strdupf("%s%s", fx->ns, SN_AUDIT_HEAD);
    r = redisCommand(fx->raw, "GET %s", hkey);
    char *old_head = sn_strdup(r->str);
    freeReplyObject(r);
    char *new_head = sn_strdupf("12 %s %s", rc.prev, strrchr(old_head, ' ') + 1);
    freeReplyObject(redisCommand(fx->raw, "SET %s %s", hkey, new_head));
    assert_int_equal(s_verify(fx, &rep), SN_ERROR);
    assert_int_equal(rep.bad_index, 8);
    assert_non_null(strstr(rep.reason, "signed head"));

    /* 4. Restored, then a forged signature. */
    r = redisCommand(fx->raw, "RESTORE %s 0 %b REPLACE", skey, dump->str, dump->len);
    freeReplyObject(r);
    freeReplyObject(redisCommand(fx->raw, "SET %s %s", hkey, old_head));
    assert_int_equal(s_verify(fx, &rep), SN_OK);
    char *sigkey = sn_strdupf("%s%s", fx->ns, SN_AUDIT_SIG);
    r = redisCommand(fx->raw, "HGET %s 4", sigkey);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    char *forged = sn_strdup(r->str);
    freeReplyObject(r);
    forged[strlen(forged) - 1] = forged[strlen(forged) - 1] == '0' ? '1' : '0';
    freeReplyObject(redisCommand(fx->raw, "HSET %s 4 %s", sigkey, forged));
    assert_int_equal(s_verify(fx, &rep), SN_ERROR);
    assert_int_equal(rep.bad_index, 4);
    assert_non_null(strstr(rep.reason, "signature"));
    freeReplyObject(redisCommand(fx->raw, "HDEL %s 4", sigkey));

    /* 5. The newest records removed and the head moved back: the signature of head 12
     * is beyond the chain. */
    freeReplyObject(redisCommand(fx->raw, "XDEL %s 11-0 12-0", skey));
    r = redisCommand(fx->raw, "XRANGE %s 10-0 10-0", skey);
    char *h10 = sn_strdupf("10 %s 1", r->element[0]->element[1]->element[1]->str);
    freeReplyObject(r);
    freeReplyObject(redisCommand(fx->raw, "SET %s %s", hkey, h10));
    assert_int_equal(s_verify(fx, &rep), SN_ERROR);
    assert_int_equal(rep.bad_index, 11);

    /* 6. The head deleted while records exist. */
    r = redisCommand(fx->raw, "RESTORE %s 0 %b REPLACE", skey, dump->str, dump->len);
    freeReplyObject(r);
    freeReplyObject(redisCommand(fx->raw, "DEL %s", hkey));
    assert_int_equal(s_verify(fx, &rep), SN_ERROR);
    assert_int_equal(rep.bad_index, 13);

    free(h10);
    free(forged);
    free(sigkey);
    free(old_head);
    free(new_head);
    free(hkey);
    free(skey);
    freeReplyObject(dump);
    sn_audit_destroy(&a);
}

static void s_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_sn_audit_tamper_in_archive(void **state)
{
    s_fx_t *fx = *state;
    sn_audit_t *a = s_audit(fx, 4);
    s_append_pairs(a, 5, "bp"); /* 10 records */
    assert_int_equal(sn_audit_archive(a, 0, NULL), SN_OK);
    sn_audit_report_t rep;
    assert_int_equal(s_verify(fx, &rep), SN_OK);
    assert_int_equal(rep.records, 10);
    char *pristine = sn_test_read_file(fx->archive);
    assert_non_null(pristine);

    /* A byte of record 3 changed. */
    char *p = strstr(pristine, "\"index\":3,");
    assert_non_null(p);
    char *edited = sn_strdup(pristine);
    char *q = strstr(edited + (p - pristine), "\"subject\":\"proj/env/target-1\"");
    assert_non_null(q);
    q[strlen("\"subject\":\"proj/env/target-")] = '9';
    s_write_text(fx->archive, edited);
    assert_int_equal(s_verify(fx, &rep), SN_ERROR);
    assert_int_equal(rep.bad_index, 3);
    assert_non_null(strstr(rep.reason, "archive line"));

    /* An unreadable line in the middle. */
    char *line4 = strstr(pristine, "\"index\":4,");
    char *start4 = line4;
    while (start4 > pristine && start4[-1] != '\n')
        start4--;
    char *garbled = sn_strdupf("%.*sgarbage\n%s", (int)(start4 - pristine), pristine, start4);
    s_write_text(fx->archive, garbled);
    assert_int_equal(s_verify(fx, &rep), SN_ERROR);
    assert_int_equal(rep.bad_index, 4);

    /* A record removed from the archive. */
    char *end4 = strchr(start4, '\n') + 1;
    char *removed = sn_strdupf("%.*s%s", (int)(start4 - pristine), pristine, end4);
    s_write_text(fx->archive, removed);
    assert_int_equal(s_verify(fx, &rep), SN_ERROR);
    assert_int_equal(rep.bad_index, 4);

    /* A torn last line (a writer killed mid-write): reported, not tampering; the next
     * archive cuts it. */
    char *torn = sn_strdupf("%sR 0123456789abcdef{\"ind", pristine);
    s_write_text(fx->archive, torn);
    assert_int_equal(s_verify(fx, &rep), SN_OK);
    assert_true(rep.is_truncated);
    assert_int_equal(rep.truncated_bytes, strlen("R 0123456789abcdef{\"ind"));
    assert_int_equal(rep.records, 10);
    uint64_t id = 0;
    assert_int_equal(sn_audit_intent(a, "bp", "x", "y", "z", &id), SN_OK);
    assert_int_equal(sn_audit_archive(a, 0, NULL), SN_OK);
    assert_int_equal(s_verify(fx, &rep), SN_OK);
    assert_false(rep.is_truncated);
    assert_int_equal(rep.records, 11);

    free(torn);
    free(removed);
    free(garbled);
    free(edited);
    free(pristine);
    sn_audit_destroy(&a);
}

/* ---- concurrency and crashes ------------------------------------------------------------ */

typedef struct {
    s_fx_t *fx;
    const char *actor;
    int pairs;
    sn_audit_stats_t stats;
} s_thread_arg_t;

static void *s_appender(void *arg)
{
    s_thread_arg_t *t = arg;
    sn_audit_t *a = s_audit(t->fx, 16);
    s_append_pairs(a, t->pairs, t->actor);
    sn_audit_stats(a, &t->stats);
    sn_audit_destroy(&a);
    return NULL;
}

/* Every process of a host opens the audit chain at once: the first start creates the
 * key, and no opener may ever read it half-written. */
typedef struct {
    s_fx_t *fx;
    const char *key;
    pthread_barrier_t *go;
    bool ok;
} s_opener_t;

static void *s_opener(void *arg)
{
    s_opener_t *o = arg;
    sn_audit_opts_t opts = {.redis = o->fx->r, .archive_path = o->fx->archive, .key_file = o->key};
    pthread_barrier_wait(o->go);
    sn_audit_t *a = sn_audit_new(&opts);
    o->ok = a != NULL;
    sn_audit_destroy(&a);
    return NULL;
}

static void test_sn_audit_key_created_once_under_concurrent_opens(void **state)
{
    s_fx_t *fx = *state;
    enum { ROUNDS = 20, THREADS = 8 };
    for (int round = 0; round < ROUNDS; round++) {
        char *key = sn_strdupf("%s/race-%d.key", fx->dir, round);
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, THREADS);
        pthread_t th[THREADS];
        s_opener_t op[THREADS];
        for (int i = 0; i < THREADS; i++) {
            op[i] = (s_opener_t){fx, key, &go, false};
            assert_int_equal(pthread_create(&th[i], NULL, s_opener, &op[i]), 0);
        }
        for (int i = 0; i < THREADS; i++) {
            pthread_join(th[i], NULL);
            assert_true(op[i].ok);
        }
        pthread_barrier_destroy(&go);
        struct stat st;
        assert_int_equal(stat(key, &st), 0);
        assert_int_equal(st.st_size, 65); /* 64 hex characters and a newline */
        free(key);
    }
}

static void test_sn_audit_concurrent_appenders(void **state)
{
    s_fx_t *fx = *state;
    /* Two handles, as two processes would have: they race on the compare-and-set. */
    s_thread_arg_t t1 = {.fx = fx, .actor = "one", .pairs = 150};
    s_thread_arg_t t2 = {.fx = fx, .actor = "two", .pairs = 150};
    pthread_t a, b;
    assert_int_equal(pthread_create(&a, NULL, s_appender, &t1), 0);
    assert_int_equal(pthread_create(&b, NULL, s_appender, &t2), 0);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    assert_int_equal(t1.stats.appended + t2.stats.appended, 600);
    sn_audit_report_t rep;
    assert_int_equal(s_verify(fx, &rep), SN_OK);
    assert_int_equal(rep.records, 600);
    assert_int_equal(rep.head_index, 600);
    fprintf(stderr, "cas retries: %" PRIu64 " + %" PRIu64 "\n", t1.stats.cas_retries,
            t2.stats.cas_retries);
}

/* argv: --child unix_path ns archive key. Appends (and archives every 16) until killed. */
static int s_child_main(int argc, char **argv)
{
    if (argc < 6)
        return 3;
    sn_log_init("test", "audit-child");
    sn_redis_opts_t ro = {.unix_path = argv[2], .namespace_ = argv[3], .timeout_ms = 2000};
    sn_redis_t *r = sn_redis_new(&ro);
    sn_audit_opts_t o = {.redis = r,
                         .archive_path = argv[4],
                         .key_file = argv[5],
                         .sign_every = 8,
                         .archive_every = 16};
    sn_audit_t *a = sn_audit_new(&o);
    if (!a)
        return 4;
    for (;;) {
        uint64_t id = 0;
        if (sn_audit_intent(a, "child", "loop", "s", "r", &id) == SN_OK &&
            sn_audit_outcome(a, id, true, "d") != SN_OK)
            return 5;
    }
}

typedef struct {
    s_fx_t *fx;
    uint64_t at_least;
} s_head_wait_t;

static bool s_head_reached(void *arg)
{
    s_head_wait_t *w = arg;
    return s_head_index(w->fx) >= w->at_least;
}

static void test_sn_audit_writer_killed_mid_append(void **state)
{
    s_fx_t *fx = *state;
    char *bin = sn_strdupf("%s/test_sn_audit", SN_TEST_BIN_DIR);
    for (int round = 0; round < 4; round++) {
        uint64_t before = s_head_index(fx);
        char *argv[] = {bin, "--child", fx->redis.unix_path, fx->ns, fx->archive, fx->key, NULL};
        pid_t pid = sn_test_spawn(argv, NULL);
        assert_true(pid > 0);
        s_head_wait_t w = {.fx = fx, .at_least = before + 40 + (uint64_t)round * 7};
        assert_true(sn_test_wait_for(s_head_reached, &w, 15000));
        assert_int_equal(kill(pid, SIGKILL), 0);
        int st = 0;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFSIGNALED(st));
        sn_audit_report_t rep;
        assert_int_equal(s_verify(fx, &rep), SN_OK);
        assert_int_equal(rep.last_index, s_head_index(fx));
        assert_int_equal(rep.records, rep.last_index);
    }
    /* A torn last line as a kill during the archive write would leave it. */
    FILE *f = fopen(fx->archive, "a");
    assert_non_null(f);
    fputs("R 00ff{\"index\":", f);
    fclose(f);
    sn_audit_report_t rep;
    assert_int_equal(s_verify(fx, &rep), SN_OK);
    assert_true(rep.is_truncated);
    assert_int_equal(rep.records, s_head_index(fx));
    free(bin);
}

/* ---- archive failures ----------------------------------------------------------------- */

static bool s_has_alert(s_fx_t *fx)
{
    redisReply *r = s_rawf(fx, "XRANGE %s - +", "events");
    bool found = false;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++)
        if (strcmp(r->element[i]->element[1]->element[1]->str, "alert.raised") == 0)
            found = true;
    freeReplyObject(r);
    return found;
}

static void test_sn_audit_archive_failure_fails_closed(void **state)
{
    s_fx_t *fx = *state;
    /* The archive path is a directory: open fails with EISDIR. */
    assert_int_equal(mkdir(fx->archive, 0700), 0);
    sn_audit_t *a = s_audit(fx, 4);
    sn_audit_opts_t o2 = {.redis = fx->r, .archive_path = fx->archive, .key_file = fx->key};
    sn_audit_t *other = sn_audit_new(&o2); /* another process, as it were */
    assert_non_null(other);
    uint64_t id = 0;
    assert_int_equal(sn_audit_intent(a, "bp", "deploy", "p/e/t", "r", &id), SN_OK);
    assert_int_equal(sn_audit_archive(a, 0, NULL), SN_ERROR);
    assert_true(sn_audit_is_failed(a));
    assert_true(s_has_alert(fx));
    /* Fail closed: no intent here nor in the other process; an outcome is still kept. */
    uint64_t id2 = 0;
    assert_int_equal(sn_audit_intent(a, "bp", "deploy", "p/e/t", "r", &id2), SN_ERROR);
    assert_int_equal(id2, 0);
    assert_int_equal(sn_audit_intent(other, "bp", "deploy", "p/e/t", "r", &id2), SN_ERROR);
    assert_int_equal(sn_audit_outcome(a, id, false, "after the failure"), SN_OK);
    sn_audit_stats_t s;
    sn_audit_stats(a, &s);
    assert_int_equal(s.refused, 1);
    /* Only one alert per failure. */
    assert_int_equal(sn_audit_archive(a, 0, NULL), SN_ERROR);
    redisReply *r = s_rawf(fx, "XLEN %s", "events");
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);

    /* Fixed: the next archive succeeds and lifts the state everywhere. */
    assert_int_equal(rmdir(fx->archive), 0);
    assert_int_equal(sn_audit_archive(a, 0, NULL), SN_OK);
    assert_false(sn_audit_is_failed(a));
    assert_int_equal(sn_audit_intent(a, "bp", "deploy", "p/e/t", "r", &id2), SN_OK);
    assert_int_equal(sn_audit_intent(other, "bp", "deploy", "p/e/t", "r", &id2), SN_OK);
    sn_audit_report_t rep;
    assert_int_equal(s_verify(fx, &rep), SN_OK);
    assert_int_equal(rep.records, 4);

    sn_audit_destroy(&a);
    sn_audit_destroy(&other);
}

/* A full disk: the archive is a symlink to /dev/full (ENOSPC on write). */
static void test_sn_audit_disk_full(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(symlink("/dev/full", fx->archive), 0);
    sn_audit_t *a = s_audit(fx, 4);
    uint64_t id = 0;
    assert_int_equal(sn_audit_intent(a, "bp", "deploy", "p/e/t", "r", &id), SN_OK);
    assert_int_equal(sn_audit_archive(a, 0, NULL), SN_ERROR);
    assert_true(sn_audit_is_failed(a));
    assert_true(s_has_alert(fx));
    assert_int_equal(sn_audit_intent(a, "bp", "deploy", "p/e/t", "r", &id), SN_ERROR);
    /* Nothing was trimmed from Redis: the records wait there. */
    assert_int_equal(s_stream_len(fx, SN_AUDIT_STREAM), 1);
    sn_audit_destroy(&a);
}

/* ---- sentinelctl audit ------------------------------------------------------------------ */

static void s_edit_ok_6(uint64_t index, char **hash, char **rec, void *arg)
{
    if (index != 6)
        return;
    char *n = s_replace(*rec, "\"ok\":true", "\"ok\":false");
    free(*rec);
    *rec = n;
}

/* Runs `sentinelctl -c CONFIG ARGS...`; returns the exit code, *out the output (both
 * streams, caller frees). */
static int s_ctl(s_fx_t *fx, const char *config, char **out, const char *a1, const char *a2,
                 const char *a3, const char *a4)
{
    char *bin = sn_test_bin("sentinelctl");
    char *log = sn_strdupf("%s/ctl-%d.out", fx->dir, (int)sn_mono_us());
    char *argv[] = {bin,        "-c",       (char *)config, (char *)a1,
                    (char *)a2, (char *)a3, (char *)a4,     NULL};
    pid_t pid = sn_test_spawn(argv, log);
    assert_true(pid > 0);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    *out = sn_test_read_file(log);
    if (!*out)
        *out = sn_strdup("");
    free(log);
    free(bin);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static void test_sn_audit_ctl_verify_and_tail(void **state)
{
    s_fx_t *fx = *state;
    char *config = sn_strdupf("%s/sentinel.yml", fx->dir);
    char *yaml = sn_strdupf("namespace: \"%s\"\nstate_dir: %s/var\n"
                            "redis:\n  unix_path: %s\n"
                            "audit_archive: %s\naudit_key_file: %s\n",
                            fx->ns, fx->dir, fx->redis.unix_path, fx->archive, fx->key);
    s_write_text(config, yaml);
    free(yaml);
    sn_audit_t *a = s_audit(fx, 4);
    s_append_pairs(a, 5, "bp"); /* 10 records */
    assert_int_equal(sn_audit_archive(a, 4, NULL), SN_OK);

    char *out = NULL;
    assert_int_equal(s_ctl(fx, config, &out, "audit", "verify", NULL, NULL), 0);
    assert_non_null(strstr(out, "ok: 10 records (1..10), head 10, 2 signed heads verified"));
    free(out);
    assert_int_equal(s_ctl(fx, config, &out, "-o", "json", "audit", "verify"), 0);
    assert_non_null(strstr(out, "\"ok\":true"));
    free(out);

    /* tail: the last records, oldest first, from the archive and Redis alike. */
    assert_int_equal(s_ctl(fx, config, &out, "audit", "tail", "-n", "3"), 0);
    assert_non_null(strstr(out, "8\t"));
    assert_non_null(strstr(out, "10\t"));
    assert_null(strstr(out, "7\t"));
    assert_non_null(strstr(out, "deploy.stage"));
    free(out);
    assert_int_equal(s_ctl(fx, config, &out, "-o", "json", "audit", "tail"), 0);
    int lines = 0;
    for (char *p = out; (p = strstr(p, "\"hash\"")); p++)
        lines++;
    assert_int_equal(lines, 10);
    free(out);

    /* Tampering: exit 1 naming the index. */
    s_rewrite_stream(fx, s_edit_ok_6, NULL);
    assert_int_equal(s_ctl(fx, config, &out, "audit", "verify", NULL, NULL), 1);
    assert_non_null(strstr(out, "tampered at index 6: "));
    free(out);
    assert_int_equal(s_ctl(fx, config, &out, "-o", "json", "audit", "verify"), 1);
    assert_non_null(strstr(out, "\"bad_index\":6"));
    free(out);

    /* Usage errors. */
    assert_int_equal(s_ctl(fx, config, &out, "audit", "bogus", NULL, NULL), 2);
    free(out);
    assert_int_equal(s_ctl(fx, config, &out, "audit", NULL, NULL, NULL), 2);
    free(out);
    assert_int_equal(s_ctl(fx, config, &out, "audit", "tail", "-n", "0"), 2);
    free(out);
    assert_int_equal(s_ctl(fx, config, &out, "audit", "verify", "extra", NULL), 2);
    free(out);

    free(config);
    sn_audit_destroy(&a);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--child") == 0)
        return s_child_main(argc, argv);
    sn_log_init("test", "audit");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sn_audit_append_archive_verify, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_audit_key_file_rules, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_audit_tamper_in_redis, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_audit_tamper_in_archive, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_audit_key_created_once_under_concurrent_opens,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_audit_concurrent_appenders, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_audit_writer_killed_mid_append, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_audit_archive_failure_fails_closed, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_audit_disk_full, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sn_audit_ctl_verify_and_tail, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
