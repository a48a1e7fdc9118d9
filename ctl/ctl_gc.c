/* `sentinelctl gc [--dry-run]`: applies the retentions of docs/redis.md (ARCHITECTURE §5).
 * Steps, each bounded by one deadline for the whole command, idempotent, safe while the
 * mesh runs, and logged as one line with its counts:
 *
 *   journal       events older than runtime.journal_max_age_s (sn_journal_trim);
 *   audit         the chain archived to audit_archive, then trimmed from Redis
 *                 (sn_audit_archive: never a record that is not in the archive);
 *   dead-letters  jobs:dead cut to its newest retention.dead_letters entries;
 *   runs          terminal runs last updated before retention.runs_max_age_s, with their
 *                 deploy:<id> and approval:<run> keys and their runs:all / runs:<project>
 *                 entries; never a run that is not terminal, the newest succeeded run of an
 *                 environment (or its last_verified_run), nor a run with a release in a
 *                 release history. Index entries whose run record is gone go too;
 *   jobs          the ledger records (job:<id>, job:<id>:fx) of those runs once they are
 *                 done, failed or dead, and old ended jobs whose run no longer exists;
 *   files         <state_dir>/builds/<run-id>.log of deleted (or long gone) runs, and work
 *                 dirs <state_dir>/builds/<run-id>/ older than retention.work_dir_max_age_s;
 *   artifacts     artifacts no kept release refers to (the artifact of a release is its
 *                 run's artifact_sha256), keeping those of runs in flight, each
 *                 environment's last_verified_artifact and anything stored within the last
 *                 hour (a build whose run does not name its artifact yet), with their
 *                 artifact:<sha> records.
 *
 * The Redis view comes from one SCAN of the namespace in pages. A run or job is deleted by
 * one Redis Function that checks again, atomically, that it is still terminal and old, so
 * a run that changed meanwhile is kept. Whatever cannot be read (a run record that does
 * not parse, a release entry whose run is unknown) is kept, and the artifact step is
 * skipped when the set of artifacts to keep cannot be known for sure. Every key family
 * not listed here has a TTL or an owner that deletes it (docs/redis.md). */
#include "ctl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <czmq.h>

#include "sentinel/sn_artifact.h"
#include "sentinel/sn_audit.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define CMD "gc"
#define LOG_MODULE "gc"
#define CTL_GC_LIBRARY "sentinel_gc"
#define CTL_GC_SCAN_COUNT "1000"
#define CTL_GC_PAGE 1000
#define CTL_GC_BUDGET_MS (10 * 60 * 1000)      /* the whole command */
#define CTL_GC_ARTIFACT_GRACE_MS (3600 * 1000) /* a fresh artifact may not be named yet */
#define CTL_GC_RECORD_MAX (4 * 1024 * 1024)    /* largest run record read */
#define CTL_GC_ITEMS_MAX 100000                /* dry-run items listed */

/* sn_gc_run KEYS: run:<id> runs:active runs:all runs:<project> approval:<id> deploy:<d>...
 *           ARGV: run_id cutoff_ms
 *   -> 1 deleted; 0 kept (no longer terminal, updated since, or active again). A missing
 *      run record only drops the index entries (a dangling member).
 * sn_gc_job KEYS: job:<id> job:<id>:fx jobs:dead  ARGV: id
 *   -> 1 deleted; 0 kept (not done, failed or dead). */
static const char s_gc_lua[] =
    "local terminal = {succeeded = true, failed = true, cancelled = true, superseded = true,\n"
    "                  rejected = true, rolled_back = true}\n"
    "local function gc_run(keys, args)\n"
    "  if #keys < 5 or #args ~= 2 then return redis.error_reply('SNBAD usage') end\n"
    "  local id, cutoff = args[1], tonumber(args[2])\n"
    "  if not cutoff then return redis.error_reply('SNBAD cutoff') end\n"
    "  local st = redis.call('HMGET', keys[1], 'state', 'updated_ms')\n"
    "  if st[1] then\n"
    "    if not terminal[st[1]] then return 0 end\n"
    "    local u = tonumber(st[2])\n"
    "    if not u or u > cutoff then return 0 end\n"
    "  end\n"
    "  if redis.call('SISMEMBER', keys[2], id) == 1 then return 0 end\n"
    "  redis.call('ZREM', keys[3], id)\n"
    "  redis.call('ZREM', keys[4], id)\n"
    "  redis.call('DEL', keys[5])\n"
    "  for i = 6, #keys do\n"
    "    local owner = redis.call('HGET', keys[i], 'run_id')\n"
    "    if not owner or owner == id then redis.call('DEL', keys[i]) end\n"
    "  end\n"
    "  redis.call('DEL', keys[1])\n"
    "  return 1\n"
    "end\n"
    "local function gc_job(keys, args)\n"
    "  if #keys ~= 3 or #args ~= 1 then return redis.error_reply('SNBAD usage') end\n"
    "  local s = redis.call('HGET', keys[1], 'state')\n"
    "  if s ~= 'done' and s ~= 'failed' and s ~= 'dead' then return 0 end\n"
    "  redis.call('DEL', keys[1], keys[2])\n"
    "  redis.call('LREM', keys[3], 0, args[1])\n"
    "  return 1\n"
    "end\n"
    "redis.register_function('sn_gc_run', gc_run)\n"
    "redis.register_function('sn_gc_job', gc_job)\n";

/* A growable list of strings (owned). */
typedef struct {
    char **v;
    size_t n, cap;
} s_strs_t;

/* One step's outcome. */
typedef struct {
    const char *name;
    int64_t deleted; /* deleted, or that would be with --dry-run */
    int64_t kept;    /* examined and kept */
    bool is_failed;
    char note[256];
} s_step_t;

typedef struct {
    char *id;
    Sentinel__V1__Run *pb; /* NULL: the record does not parse (kept) */
    const char *keep_why;  /* NULL: may go */
    bool is_doomed;        /* chosen for deletion (dry-run: would be) */
} s_run_t;

typedef struct {
    sn_config_t *cfg;
    sn_redis_t *redis;
    const char *ns;
    bool is_dry_run;
    int64_t deadline_ms; /* sn_mono_ms */
    int64_t now_ms;      /* wall clock at start */
    int64_t cutoff_ms;   /* runs last updated at or before this may go */
    char *state_dir;
    json_t *items; /* dry-run: what would go */
    /* the view from the scan */
    bool is_scanned;   /* the SCAN completed */
    bool is_unsure;    /* the artifacts to keep cannot be known for sure */
    s_strs_t run_keys; /* run ids with a run:<id> key */
    s_strs_t project_zsets;
    s_strs_t env_keys;
    s_strs_t release_keys;
    s_strs_t fnsrc_keys; /* firebase:fnsrc:*: the source zips a functions rollback needs */
    s_strs_t job_ids;
    s_strs_t artifact_shas;
    s_run_t *runs;
    size_t run_count;
    zhash_t *run_index;      /* id -> s_run_t * */
    zhash_t *active;         /* runs:active members */
    zhash_t *keep_artifacts; /* sha -> "why" */
    zhash_t *doomed_runs;    /* ids of runs deleted (would be) in this gc */
    s_step_t steps[8];
    size_t step_count;
} s_gc_t;

static void s_help(void);
static int s_gc(s_gc_t *gc, const ctl_opts_t *opts);
static s_step_t *s_step(s_gc_t *gc, const char *name);
static void s_step_done(s_gc_t *gc, s_step_t *st);
static void s_item(s_gc_t *gc, const char *step, const char *item, const char *detail);
static bool s_late(const s_gc_t *gc);
static void s_journal(s_gc_t *gc);
static void s_audit(s_gc_t *gc);
static void s_dead_letters(s_gc_t *gc);
static void s_scan(s_gc_t *gc);
static void s_load_runs(s_gc_t *gc);
static void s_protect(s_gc_t *gc);
static void s_runs(s_gc_t *gc);
static void s_jobs(s_gc_t *gc);
static void s_files(s_gc_t *gc);
static void s_artifacts(s_gc_t *gc);
static void s_print(const s_gc_t *gc, const ctl_opts_t *opts);
static void s_gc_fini(s_gc_t *gc);
static redisReply *s_cmd(s_gc_t *gc, int argc, const char **argv, const size_t *lens);
static char *s_key(const s_gc_t *gc, const char *fmt, ...) SN_PRINTF(2, 3);
static void s_strs_push(s_strs_t *s, const char *str, size_t len);
static void s_strs_fini(s_strs_t *s);
static bool s_is_terminal(int state);
static void s_keep_run(s_gc_t *gc, const char *id, const char *why);
static void s_keep_artifact(s_gc_t *gc, const char *sha, const char *why);

int ctl_cmd_gc(ctl_opts_t *opts, int argc, char **argv)
{
    static const struct option longopts[] = {
        CTL_COMMON_LONGOPTS, {"dry-run", no_argument, NULL, 'n'}, {NULL, 0, NULL, 0}};
    bool is_dry_run = false;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":" CTL_COMMON_SHORTOPTS "n", longopts, NULL)) != -1) {
        int handled = ctl_opts_handle(opts, CMD, c, optarg);
        if (handled < 0)
            return CTL_EXIT_USAGE;
        if (handled > 0)
            continue;
        if (c == 'n') {
            is_dry_run = true;
            continue;
        }
        return ctl_bad_option(CMD, c, argv);
    }
    if (opts->is_help) {
        s_help();
        return CTL_EXIT_OK;
    }
    if (optind < argc)
        return ctl_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    ctl_output_setup(opts->is_no_color);

    sn_config_t cfg;
    if (ctl_config_load(CMD, opts->config_path, &cfg) != SN_OK)
        return CTL_EXIT_FAIL;
    sn_log_init("ctl", "gc");
    sn_log_level_t level;
    if (!getenv("SN_LOG_LEVEL") && sn_log_parse_level(cfg.log_level, &level) == SN_OK)
        sn_log_set_level(level);
    /* A direct connection first: when Redis is away, say so with the reason and stop. */
    redisContext *probe = ctl_redis_connect(CMD, &cfg);
    if (!probe) {
        sn_config_fini(&cfg);
        return CTL_EXIT_FAIL;
    }
    redisFree(probe);

    char *sock = ctl_redis_socket_path(&cfg);
    sn_redis_opts_t ro = {
        .unix_path = sock,
        .host = cfg.redis.host ? cfg.redis.host : "127.0.0.1",
        .port = cfg.redis.port > 0 ? cfg.redis.port : 6379,
        .namespace_ = cfg.namespace_,
        .timeout_ms = cfg.redis.timeout_ms > 0 ? cfg.redis.timeout_ms : 2000,
        .name = "gc",
    };
    s_gc_t gc = {
        .cfg = &cfg,
        .redis = sn_redis_new(&ro),
        .is_dry_run = is_dry_run,
        .deadline_ms = sn_mono_ms() + CTL_GC_BUDGET_MS,
        .now_ms = sn_wall_ms(),
        .state_dir = sn_strdup(cfg.state_dir ? cfg.state_dir : "./var"),
        .items = json_array(),
        .run_index = zhash_new(),
        .active = zhash_new(),
        .keep_artifacts = zhash_new(),
        .doomed_runs = zhash_new(),
    };
    int rc = CTL_EXIT_FAIL;
    if (!gc.redis) {
        ctl_err(CMD, "no usable redis address in the config");
    } else {
        gc.ns = sn_redis_ns(gc.redis);
        sn_redis_add_library(gc.redis, CTL_GC_LIBRARY, s_gc_lua);
        rc = s_gc(&gc, opts);
    }
    s_gc_fini(&gc);
    free(sock);
    sn_config_fini(&cfg);
    return rc;
}

static void s_help(void)
{
    printf("usage: sentinelctl gc [--dry-run]\n\n"
           "Applies the retentions of docs/redis.md, each step bounded and safe while the\n"
           "mesh runs, one log line per step with its counts (stderr):\n"
           "  journal       events older than runtime.journal_max_age_s\n"
           "  audit         archive the audit chain to audit_archive, then trim Redis\n"
           "  dead-letters  keep the newest retention.dead_letters entries of jobs:dead\n"
           "  runs          terminal runs older than retention.runs_max_age_s, with their\n"
           "                deploys and approval; never a run in flight, the last\n"
           "                successful run of an environment, or a run in a release history\n"
           "  jobs          ledger jobs of those runs (done, failed or dead)\n"
           "  files         build logs of deleted runs; build work dirs older than\n"
           "                retention.work_dir_max_age_s\n"
           "  artifacts     artifacts no kept release, run in flight or environment's last\n"
           "                verified artifact refers to\n"
           "  -n, --dry-run   delete nothing; print what would go (table: STEP ITEM DETAIL)\n"
           "Output: a table STEP DELETED KEPT RESULT NOTE, or with -o json one document\n"
           "{\"dry_run\", \"ok\", \"steps\": [...], \"items\": [...]} (items with --dry-run).\n"
           "Exit 0 when every step succeeded, 1 otherwise (e.g. redis unreachable).\n"
           "`sentinelctl up` runs it every retention.gc_interval_s (default a day).\n");
}

static int s_gc(s_gc_t *gc, const ctl_opts_t *opts)
{
    const char *ping[] = {"PING"};
    redisReply *r = s_cmd(gc, 1, ping, NULL);
    if (!r) {
        ctl_err(CMD, "redis does not answer (see the lines above)");
        return CTL_EXIT_FAIL;
    }
    freeReplyObject(r);
    int64_t max_age_ms = gc->cfg->retention.runs_max_age_s * 1000;
    gc->cutoff_ms = gc->now_ms - (max_age_ms > 0 ? max_age_ms : INT64_C(90) * 86400000);
    sn_info(LOG_MODULE,
            "%s: runs_max_age_s=%" PRId64 " journal_max_age_s=%" PRId64 " dead_letters=%" PRId64,
            gc->is_dry_run ? "dry run" : "started", gc->cfg->retention.runs_max_age_s,
            gc->cfg->runtime.journal_max_age_s, gc->cfg->retention.dead_letters);

    s_journal(gc);
    s_audit(gc);
    s_dead_letters(gc);
    s_scan(gc);
    if (gc->is_scanned) {
        s_load_runs(gc);
        s_protect(gc);
    }
    s_runs(gc);
    s_jobs(gc);
    s_files(gc);
    s_artifacts(gc);

    s_print(gc, opts);
    for (size_t i = 0; i < gc->step_count; i++)
        if (gc->steps[i].is_failed)
            return CTL_EXIT_FAIL;
    return CTL_EXIT_OK;
}

/* ---- steps ----------------------------------------------------------------------------- */

static void s_journal(s_gc_t *gc)
{
    s_step_t *st = s_step(gc, "journal");
    int64_t max_age_s = gc->cfg->runtime.journal_max_age_s;
    if (max_age_s <= 0) {
        snprintf(st->note, sizeof st->note, "no age limit");
        s_step_done(gc, st);
        return;
    }
    if (!gc->is_dry_run) {
        sn_source_t src;
        sn_source_init(&src, "sentinelctl", "gc");
        sn_journal_opts_t jo = {.redis = gc->redis,
                                .source = &src,
                                .max_len = gc->cfg->runtime.journal_max_len,
                                .timeout_ms = 0};
        sn_journal_t *j = sn_journal_new(&jo);
        int64_t trimmed = 0;
        sn_rc_t rc = sn_journal_trim(j, max_age_s, &trimmed);
        sn_journal_destroy(&j);
        if (rc != SN_OK) {
            st->is_failed = true;
            snprintf(st->note, sizeof st->note, "trim failed (%s)", sn_rc_str(rc));
        } else {
            st->deleted = trimmed;
        }
        s_step_done(gc, st);
        return;
    }
    /* Dry run: count the entries older than the cutoff, by Redis' clock as the trim does. */
    const char *time_argv[] = {"TIME"};
    redisReply *t = s_cmd(gc, 1, time_argv, NULL);
    if (!t || t->type != REDIS_REPLY_ARRAY || t->elements != 2) {
        st->is_failed = true;
        snprintf(st->note, sizeof st->note, "redis TIME failed");
        if (t)
            freeReplyObject(t);
        s_step_done(gc, st);
        return;
    }
    int64_t now =
        strtoll(t->element[0]->str, NULL, 10) * 1000 + strtoll(t->element[1]->str, NULL, 10) / 1000;
    freeReplyObject(t);
    char *key = s_key(gc, "%s", SN_JOURNAL_STREAM);
    char start[64] = "-", end[32];
    snprintf(end, sizeof end, "(%" PRId64 "-0", now - max_age_s * 1000);
    for (;;) {
        if (s_late(gc)) {
            snprintf(st->note, sizeof st->note, "deadline: at least this many");
            break;
        }
        const char *argv[] = {"XRANGE", key, start, end, "COUNT", CTL_GC_SCAN_COUNT};
        redisReply *r = s_cmd(gc, 6, argv, NULL);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            st->is_failed = r == NULL;
            if (r)
                freeReplyObject(r);
            break;
        }
        size_t n = r->elements;
        st->deleted += (int64_t)n;
        if (n > 0) {
            redisReply *last = r->element[n - 1];
            if (last->type == REDIS_REPLY_ARRAY && last->elements >= 1 &&
                last->element[0]->type == REDIS_REPLY_STRING)
                snprintf(start, sizeof start, "(%s", last->element[0]->str);
            else
                n = 0;
        }
        freeReplyObject(r);
        if (n < CTL_GC_PAGE)
            break;
    }
    free(key);
    if (st->deleted > 0) {
        char what[64];
        snprintf(what, sizeof what, "%" PRId64 " entries", st->deleted);
        s_item(gc, "journal", "events", what);
    }
    s_step_done(gc, st);
}

static void s_audit(s_gc_t *gc)
{
    s_step_t *st = s_step(gc, "audit");
    const char *archive = gc->cfg->audit_archive;
    char *fallback_archive = archive ? NULL : sn_strdupf("%s/audit.log", gc->state_dir);
    if (!archive)
        archive = fallback_archive;
    char *stream = s_key(gc, "%s", SN_AUDIT_STREAM);
    const char *xlen[] = {"XLEN", stream};
    redisReply *r = s_cmd(gc, 2, xlen, NULL);
    int64_t in_redis = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r)
        freeReplyObject(r);
    const char *first[] = {"XRANGE", stream, "-", "+", "COUNT", "1"};
    r = in_redis > 0 ? s_cmd(gc, 6, first, NULL) : NULL;
    uint64_t first_index = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
        r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements >= 1)
        first_index = strtoull(r->element[0]->element[0]->str, NULL, 10);
    if (r)
        freeReplyObject(r);
    free(stream);
    if (in_redis < 0) {
        st->is_failed = true;
        snprintf(st->note, sizeof st->note, "cannot read the audit stream");
        goto out;
    }
    if (in_redis == 0) {
        snprintf(st->note, sizeof st->note, "nothing to archive");
        goto out;
    }
    /* The records before first_index were archived somewhere: if that is not the file
     * configured here (another state_dir, another host), archiving would split the chain
     * between two files. Refuse rather than trim. */
    struct stat sb;
    bool has_archive = stat(archive, &sb) == 0;
    if (first_index > 1 && !has_archive) {
        st->is_failed = true;
        snprintf(st->note, sizeof st->note,
                 "archive %s missing while redis starts at record %" PRIu64
                 ": not archiving (wrong state_dir or audit_archive?)",
                 archive, first_index);
        goto out;
    }
    char *dir = sn_strdup(archive);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    bool has_dir = !slash || dir[0] == '\0' || (stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode));
    free(dir);
    if (!has_dir) {
        /* Not an archive I/O error of the mesh: do not let sn_audit raise audit:failed. */
        st->is_failed = true;
        snprintf(st->note, sizeof st->note, "the directory of %s does not exist", archive);
        goto out;
    }
    if (gc->is_dry_run) {
        st->deleted = in_redis;
        char what[96];
        snprintf(what, sizeof what, "%" PRId64 " records to %s", in_redis, archive);
        s_item(gc, "audit", "audit", what);
        goto out;
    }
    sn_source_t src;
    sn_source_init(&src, "sentinelctl", "gc");
    const char *key_file = gc->cfg->audit_key_file;
    char *fallback_key = key_file ? NULL : sn_strdupf("%s/audit.key", gc->state_dir);
    sn_audit_opts_t ao = {.redis = gc->redis,
                          .source = &src,
                          .archive_path = archive,
                          .key_file = key_file ? key_file : fallback_key,
                          .sign_every = -1};
    sn_audit_t *audit = sn_audit_new(&ao);
    free(fallback_key);
    if (!audit) {
        st->is_failed = true;
        snprintf(st->note, sizeof st->note, "audit key file unusable (see above)");
        goto out;
    }
    uint64_t archived = 0;
    sn_rc_t rc = sn_audit_archive(audit, 0, &archived);
    sn_audit_destroy(&audit);
    st->deleted = (int64_t)archived;
    if (rc != SN_OK) {
        st->is_failed = true;
        snprintf(st->note, sizeof st->note, "archive failed (%s)", sn_rc_str(rc));
    } else {
        snprintf(st->note, sizeof st->note, "archived to %s", archive);
    }
out:
    free(fallback_archive);
    s_step_done(gc, st);
}

static void s_dead_letters(s_gc_t *gc)
{
    s_step_t *st = s_step(gc, "dead-letters");
    int64_t keep = gc->cfg->retention.dead_letters;
    char *key = s_key(gc, "jobs:dead");
    const char *llen[] = {"LLEN", key};
    redisReply *r = s_cmd(gc, 2, llen, NULL);
    int64_t len = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r)
        freeReplyObject(r);
    if (len < 0) {
        st->is_failed = true;
        snprintf(st->note, sizeof st->note, "cannot read jobs:dead");
    } else if (len <= keep) {
        st->kept = len;
    } else {
        st->kept = keep;
        st->deleted = len - keep;
        if (gc->is_dry_run) {
            char what[64];
            snprintf(what, sizeof what, "%" PRId64 " oldest of %" PRId64, len - keep, len);
            s_item(gc, "dead-letters", "jobs:dead", what);
        } else {
            /* LTRIM 0 -1 would keep everything: keeping none is a DEL. */
            char stop[24];
            snprintf(stop, sizeof stop, "%" PRId64, keep - 1);
            const char *ltrim[] = {"LTRIM", key, "0", stop};
            const char *del[] = {"DEL", key};
            r = keep > 0 ? s_cmd(gc, 4, ltrim, NULL) : s_cmd(gc, 2, del, NULL);
            if (!r || r->type == REDIS_REPLY_ERROR) {
                st->is_failed = true;
                st->deleted = 0;
                snprintf(st->note, sizeof st->note, "LTRIM failed");
            }
            if (r)
                freeReplyObject(r);
        }
    }
    free(key);
    s_step_done(gc, st);
}

/* One SCAN of the namespace, in pages: the runs, indexes, environments, release
 * histories, jobs and artifact records there are. */
static void s_scan(s_gc_t *gc)
{
    char *match = s_key(gc, "*");
    char cursor[32] = "0";
    size_t nslen = strlen(gc->ns);
    for (;;) {
        if (s_late(gc)) {
            sn_warn(LOG_MODULE, "deadline passed while scanning: runs, jobs and artifacts "
                                "are left for the next gc");
            break;
        }
        const char *argv[] = {"SCAN", cursor, "MATCH", match, "COUNT", CTL_GC_SCAN_COUNT};
        redisReply *r = s_cmd(gc, 6, argv, NULL);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
            if (r)
                freeReplyObject(r);
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            redisReply *k = keys->element[i];
            if (k->type != REDIS_REPLY_STRING || k->len <= nslen)
                continue;
            const char *name = k->str + nslen;
            size_t len = k->len - nslen;
            if (strncmp(name, "run:", 4) == 0 && !memchr(name + 4, ':', len - 4))
                s_strs_push(&gc->run_keys, name + 4, len - 4);
            else if (strncmp(name, "runs:", 5) == 0 && !memchr(name + 5, ':', len - 5) &&
                     strcmp(name, "runs:active") != 0)
                s_strs_push(&gc->project_zsets, name, len); /* runs:all too */
            else if (strncmp(name, "env:", 4) == 0)
                s_strs_push(&gc->env_keys, name, len);
            else if (strncmp(name, "release:", 8) == 0)
                s_strs_push(&gc->release_keys, name, len);
            else if (strncmp(name, "firebase:fnsrc:", 15) == 0)
                s_strs_push(&gc->fnsrc_keys, name, len);
            else if (strncmp(name, "job:", 4) == 0)
                s_strs_push(&gc->job_ids, name + 4, len - 4);
            else if (strncmp(name, "artifact:", 9) == 0)
                s_strs_push(&gc->artifact_shas, name + 9, len - 9);
        }
        freeReplyObject(r);
        if (strcmp(cursor, "0") == 0) {
            gc->is_scanned = true;
            break;
        }
    }
    free(match);
}

static void s_load_runs(s_gc_t *gc)
{
    gc->runs = sn_calloc(gc->run_keys.n + 1, sizeof *gc->runs);
    for (size_t i = 0; i < gc->run_keys.n; i++) {
        s_run_t *run = &gc->runs[gc->run_count++];
        run->id = gc->run_keys.v[i];
        zhash_insert(gc->run_index, run->id, run);
        char *key = s_key(gc, "run:%s", run->id);
        const char *argv[] = {"HGET", key, "pb"};
        redisReply *r = s_cmd(gc, 3, argv, NULL);
        free(key);
        if (!r) {
            gc->is_scanned = false; /* a partial view decides nothing */
            return;
        }
        if (r->type == REDIS_REPLY_STRING && r->len > 0 && r->len <= CTL_GC_RECORD_MAX)
            run->pb = sentinel__v1__run__unpack(NULL, r->len, (const uint8_t *)r->str);
        freeReplyObject(r);
        if (!run->pb || !run->pb->run_id || strcmp(run->pb->run_id, run->id) != 0) {
            if (run->pb)
                sentinel__v1__run__free_unpacked(run->pb, NULL);
            run->pb = NULL;
            run->keep_why = "record does not parse";
            sn_warn(LOG_MODULE, "run:%s holds no readable Run: kept", run->id);
        }
    }
}

/* Marks what must stay: runs in flight, each environment's last success, every run
 * with a release in a release history, and the artifacts they (will) deploy. */
static void s_protect(s_gc_t *gc)
{
    char *active = s_key(gc, "runs:active");
    const char *smembers[] = {"SMEMBERS", active};
    redisReply *r = s_cmd(gc, 2, smembers, NULL);
    free(active);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        gc->is_scanned = false;
        if (r)
            freeReplyObject(r);
        return;
    }
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type == REDIS_REPLY_STRING) {
            zhash_insert(gc->active, r->element[i]->str, (void *)"active");
            s_keep_run(gc, r->element[i]->str, "in flight");
        }
    freeReplyObject(r);

    /* Runs: in flight by state too (runs:active may lag a crash), and the newest
     * succeeded run of each environment. */
    zhash_t *newest = zhash_new(); /* "<project>/<env>" -> s_run_t * */
    for (size_t i = 0; i < gc->run_count; i++) {
        s_run_t *run = &gc->runs[i];
        if (!run->pb)
            continue;
        if (!s_is_terminal(run->pb->state)) {
            run->keep_why = "in flight";
            if (run->pb->artifact_sha256 && *run->pb->artifact_sha256)
                s_keep_artifact(gc, run->pb->artifact_sha256, "run in flight");
            continue;
        }
        if (run->pb->state != SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED)
            continue;
        char *env = sn_strdupf("%s/%s", run->pb->project ? run->pb->project : "",
                               run->pb->environment ? run->pb->environment : "");
        s_run_t *cur = zhash_lookup(newest, env);
        if (!cur || cur->pb->created_unix_ms < run->pb->created_unix_ms)
            zhash_update(newest, env, run);
        free(env);
    }
    for (s_run_t *run = zhash_first(newest); run; run = zhash_next(newest))
        if (!run->keep_why)
            run->keep_why = "last successful run of its environment";
    zhash_destroy(&newest);
    /* A run in flight whose record is unreadable may be building an artifact: unsure. */
    for (void *it = zhash_first(gc->active); it; it = zhash_next(gc->active)) {
        s_run_t *run = zhash_lookup(gc->run_index, zhash_cursor(gc->active));
        if (!run || !run->pb)
            gc->is_unsure = true;
    }

    /* env:<p>:<e>: last verified run and artifact, the run holding it. */
    for (size_t i = 0; i < gc->env_keys.n; i++) {
        char *key = s_key(gc, "%s", gc->env_keys.v[i]);
        const char *argv[] = {"HMGET", key, "last_verified_run", "last_verified_artifact",
                              "current_run"};
        r = s_cmd(gc, 5, argv, NULL);
        free(key);
        if (!r) {
            gc->is_scanned = false;
            return;
        }
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
            if (r->element[0]->type == REDIS_REPLY_STRING && r->element[0]->len > 0)
                s_keep_run(gc, r->element[0]->str, "last verified run of its environment");
            if (r->element[1]->type == REDIS_REPLY_STRING && r->element[1]->len > 0)
                s_keep_artifact(gc, r->element[1]->str, "last verified artifact");
            if (r->element[2]->type == REDIS_REPLY_STRING && r->element[2]->len > 0)
                s_keep_run(gc, r->element[2]->str, "holds its environment");
        }
        freeReplyObject(r);
    }

    /* function-handler's source histories ("<deploy-id> <sha256>", newest first): the
     * zips a Cloud Functions rollback redeploys are artifacts too. */
    for (size_t i = 0; i < gc->fnsrc_keys.n; i++) {
        char *key = s_key(gc, "%s", gc->fnsrc_keys.v[i]);
        const char *argv[] = {"LRANGE", key, "0", "-1"};
        redisReply *fr = s_cmd(gc, 4, argv, NULL);
        free(key);
        if (!fr) {
            gc->is_scanned = false;
            return;
        }
        for (size_t k = 0; fr->type == REDIS_REPLY_ARRAY && k < fr->elements; k++) {
            redisReply *e = fr->element[k];
            const char *sp = e->type == REDIS_REPLY_STRING ? strrchr(e->str, ' ') : NULL;
            if (sp && sn_artifact_sha_is_valid(sp + 1)) {
                s_keep_artifact(gc, sp + 1, "a function's source history");
            } else {
                sn_warn(LOG_MODULE,
                        "%s holds an entry that does not parse: artifacts are not collected",
                        gc->fnsrc_keys.v[i]);
                gc->is_unsure = true;
            }
        }
        freeReplyObject(fr);
    }

    /* release histories: the runs of the releases, and their artifacts. */
    for (size_t i = 0; i < gc->release_keys.n; i++) {
        char *key = s_key(gc, "%s", gc->release_keys.v[i]);
        const char *argv[] = {"LRANGE", key, "0", "-1"};
        r = s_cmd(gc, 4, argv, NULL);
        free(key);
        if (!r) {
            gc->is_scanned = false;
            return;
        }
        for (size_t k = 0; r->type == REDIS_REPLY_ARRAY && k < r->elements; k++) {
            redisReply *e = r->element[k];
            Sentinel__V1__ReleaseIdentity *rel =
                e->type == REDIS_REPLY_STRING && e->len <= CTL_GC_RECORD_MAX
                    ? sentinel__v1__release_identity__unpack(NULL, e->len, (const uint8_t *)e->str)
                    : NULL;
            if (!rel || !rel->run_id || !*rel->run_id) {
                sn_warn(LOG_MODULE,
                        "%s holds an entry that does not parse: artifacts are not "
                        "collected",
                        gc->release_keys.v[i]);
                gc->is_unsure = true;
            } else {
                s_keep_run(gc, rel->run_id, "in a release history");
                s_run_t *run = zhash_lookup(gc->run_index, rel->run_id);
                if (!run || !run->pb) {
                    sn_warn(LOG_MODULE,
                            "%s refers to run %s, which cannot be read: artifacts are "
                            "not collected",
                            gc->release_keys.v[i], rel->run_id);
                    gc->is_unsure = true;
                } else if (run->pb->artifact_sha256 && *run->pb->artifact_sha256) {
                    s_keep_artifact(gc, run->pb->artifact_sha256, "in a release history");
                }
            }
            if (rel)
                sentinel__v1__release_identity__free_unpacked(rel, NULL);
        }
        freeReplyObject(r);
    }
}

static void s_runs(s_gc_t *gc)
{
    s_step_t *st = s_step(gc, "runs");
    if (!gc->is_scanned) {
        st->is_failed = true;
        snprintf(st->note, sizeof st->note, "no complete view of redis: nothing deleted");
        s_step_done(gc, st);
        return;
    }
    for (size_t i = 0; i < gc->run_count; i++) {
        s_run_t *run = &gc->runs[i];
        const Sentinel__V1__Run *pb = run->pb;
        if (run->keep_why || !pb || !s_is_terminal(pb->state) ||
            pb->updated_unix_ms > gc->cutoff_ms) {
            st->kept++;
            continue;
        }
        if (s_late(gc)) {
            snprintf(st->note, sizeof st->note, "deadline: the rest is left for the next gc");
            st->kept += (int64_t)(gc->run_count - i);
            break;
        }
        char age[32], detail[256];
        ctl_format_age(gc->now_ms - pb->updated_unix_ms, age, sizeof age);
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(
            &sentinel__v1__run_state__descriptor, (int)pb->state);
        char state[32] = "";
        const char *name = ev ? ev->name : "unknown";
        if (strncmp(name, "RUN_", 4) == 0)
            name += 4;
        for (size_t k = 0; name[k] && k + 1 < sizeof state; k++)
            state[k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] - 'A' + 'a' : name[k]);
        snprintf(detail, sizeof detail, "%s/%s %s, updated %s ago, %zu deploys", pb->project,
                 pb->environment, state, age, pb->n_deploys);
        if (gc->is_dry_run) {
            run->is_doomed = true;
        } else {
            size_t nkeys = 5 + pb->n_deploys;
            char **keys = sn_calloc(nkeys, sizeof *keys);
            keys[0] = sn_strdupf("run:%s", run->id);
            keys[1] = sn_strdup("runs:active");
            keys[2] = sn_strdup("runs:all");
            keys[3] = sn_strdupf("runs:%s", pb->project ? pb->project : "");
            keys[4] = sn_strdupf("approval:%s", run->id);
            for (size_t d = 0; d < pb->n_deploys; d++)
                keys[5 + d] = sn_strdupf("deploy:%s", pb->deploys[d]->deploy_id);
            char cutoff[24];
            snprintf(cutoff, sizeof cutoff, "%" PRId64, gc->cutoff_ms);
            const char *args[] = {run->id, cutoff};
            redisReply *r = NULL;
            sn_rc_t rc = sn_redis_fcall(gc->redis, SN_REDIS_MAIN, 0, &r, "sn_gc_run", (int)nkeys,
                                        (const char **)keys, 2, args, NULL);
            for (size_t k = 0; k < nkeys; k++)
                free(keys[k]);
            free(keys);
            if (rc != SN_OK || r->type != REDIS_REPLY_INTEGER) {
                if (r && r->type == REDIS_REPLY_ERROR)
                    sn_warn(LOG_MODULE, "sn_gc_run run=%s: %s", run->id, r->str);
                if (r)
                    freeReplyObject(r);
                st->is_failed = true;
                snprintf(st->note, sizeof st->note, "redis refused or unreachable");
                break;
            }
            run->is_doomed = r->integer == 1;
            freeReplyObject(r);
            if (!run->is_doomed) {
                st->kept++;
                continue;
            }
        }
        zhash_insert(gc->doomed_runs, run->id, run);
        st->deleted++;
        s_item(gc, "runs", run->id, detail);
    }
    /* Index entries older than the cutoff whose run record is gone. */
    for (size_t z = 0; z < gc->project_zsets.n && !st->is_failed && !s_late(gc); z++) {
        char *key = s_key(gc, "%s", gc->project_zsets.v[z]);
        char max[24];
        snprintf(max, sizeof max, "%" PRId64, gc->cutoff_ms);
        const char *argv[] = {"ZRANGEBYSCORE", key, "-inf", max};
        redisReply *r = s_cmd(gc, 4, argv, NULL);
        for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
            const char *id = r->element[i]->str;
            if (r->element[i]->type != REDIS_REPLY_STRING || zhash_lookup(gc->run_index, id))
                continue;
            if (!gc->is_dry_run) {
                const char *zrem[] = {"ZREM", key, id};
                redisReply *z2 = s_cmd(gc, 3, zrem, NULL);
                if (z2)
                    freeReplyObject(z2);
            }
            char *item = sn_strdupf("%s %s", gc->project_zsets.v[z], id);
            s_item(gc, "runs", item, "index entry of a run that no longer exists");
            free(item);
            st->deleted++;
        }
        if (r)
            freeReplyObject(r);
        free(key);
    }
    s_step_done(gc, st);
}

static void s_jobs(s_gc_t *gc)
{
    s_step_t *st = s_step(gc, "jobs");
    if (!gc->is_scanned) {
        st->is_failed = true;
        snprintf(st->note, sizeof st->note, "no complete view of redis: nothing deleted");
        s_step_done(gc, st);
        return;
    }
    for (size_t i = 0; i < gc->job_ids.n; i++) {
        const char *id = gc->job_ids.v[i];
        if (s_late(gc)) {
            snprintf(st->note, sizeof st->note, "deadline: the rest is left for the next gc");
            break;
        }
        char *key = s_key(gc, "job:%s", id);
        const char *argv[] = {"HMGET", key, "id", "state", "correlation_id", "updated_ms"};
        redisReply *r = s_cmd(gc, 6, argv, NULL);
        free(key);
        if (!r) {
            st->is_failed = true;
            snprintf(st->note, sizeof st->note, "redis unreachable");
            break;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 ||
            r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, id) != 0) {
            freeReplyObject(r); /* not a job record (job:<id>:fx goes with its job) */
            continue;
        }
        const char *state = r->element[1]->type == REDIS_REPLY_STRING ? r->element[1]->str : "";
        const char *run_id = r->element[2]->type == REDIS_REPLY_STRING ? r->element[2]->str : "";
        int64_t updated =
            r->element[3]->type == REDIS_REPLY_STRING ? strtoll(r->element[3]->str, NULL, 10) : 0;
        bool is_ended = strcmp(state, "done") == 0 || strcmp(state, "failed") == 0 ||
                        strcmp(state, "dead") == 0;
        const char *why = NULL;
        if (is_ended && *run_id && zhash_lookup(gc->doomed_runs, run_id))
            why = "its run is deleted";
        else if (is_ended && (!*run_id || !zhash_lookup(gc->run_index, run_id)) &&
                 updated <= gc->cutoff_ms)
            why = "ended long ago, its run no longer exists";
        char detail[160];
        snprintf(detail, sizeof detail, "%s, run %s: %s", state, *run_id ? run_id : "-",
                 why ? why : "");
        freeReplyObject(r);
        if (!why) {
            st->kept++;
            continue;
        }
        if (!gc->is_dry_run) {
            char *keys[] = {sn_strdupf("job:%s", id), sn_strdupf("job:%s:fx", id),
                            sn_strdup("jobs:dead")};
            const char *args[] = {id};
            redisReply *fr = NULL;
            sn_rc_t rc = sn_redis_fcall(gc->redis, SN_REDIS_MAIN, 0, &fr, "sn_gc_job", 3,
                                        (const char **)keys, 1, args, NULL);
            for (size_t k = 0; k < SN_ARRAY_LEN(keys); k++)
                free(keys[k]);
            bool is_deleted = rc == SN_OK && fr->type == REDIS_REPLY_INTEGER && fr->integer == 1;
            bool is_error = rc != SN_OK || fr->type == REDIS_REPLY_ERROR;
            if (fr)
                freeReplyObject(fr);
            if (is_error) {
                st->is_failed = true;
                snprintf(st->note, sizeof st->note, "redis refused or unreachable");
                break;
            }
            if (!is_deleted) {
                st->kept++;
                continue;
            }
        }
        st->deleted++;
        s_item(gc, "jobs", id, detail);
    }
    s_step_done(gc, st);
}

/* Build logs of deleted runs (and of runs long gone), leftover work dirs. */
static void s_files(s_gc_t *gc)
{
    s_step_t *st = s_step(gc, "files");
    char *builds = sn_strdupf("%s/builds", gc->state_dir);
    DIR *d = opendir(builds);
    if (!d) {
        if (errno != ENOENT) {
            st->is_failed = true;
            snprintf(st->note, sizeof st->note, "cannot read %s: %s", builds, strerror(errno));
        }
        free(builds);
        s_step_done(gc, st);
        return;
    }
    int64_t work_max_ms = gc->cfg->retention.work_dir_max_age_s * 1000;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (name[0] == '.' || s_late(gc))
            continue;
        struct stat sb;
        if (fstatat(dirfd(d), name, &sb, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        int64_t mtime_ms = (int64_t)sb.st_mtim.tv_sec * 1000 + sb.st_mtim.tv_nsec / 1000000;
        char *path = sn_strdupf("%s/%s", builds, name);
        const char *why = NULL;
        size_t len = strlen(name);
        bool is_dir = S_ISDIR(sb.st_mode);
        if (S_ISREG(sb.st_mode) && len > 4 && strcmp(name + len - 4, ".log") == 0) {
            char *run_id = sn_strndup(name, len - 4);
            if (zhash_lookup(gc->doomed_runs, run_id))
                why = "build log of a deleted run";
            else if (gc->is_scanned && !zhash_lookup(gc->run_index, run_id) &&
                     !zhash_lookup(gc->active, run_id) && mtime_ms <= gc->cutoff_ms)
                why = "build log of a run that no longer exists";
            free(run_id);
        } else if (is_dir && gc->is_scanned && !zhash_lookup(gc->active, name) &&
                   gc->now_ms - mtime_ms > work_max_ms) {
            why = "leftover work dir";
        }
        if (!why) {
            st->kept++;
            free(path);
            continue;
        }
        sn_rc_t rc = SN_OK;
        if (!gc->is_dry_run) {
            if (is_dir) {
                rc = sn_artifact_rmtree(path);
            } else if (unlink(path) != 0 && errno != ENOENT) {
                sn_warn(LOG_MODULE, "cannot remove %s: %s", path, strerror(errno));
                rc = SN_AGAIN;
            }
        }
        if (rc == SN_OK) {
            st->deleted++;
            s_item(gc, "files", path, why);
        } else {
            st->is_failed = true;
            snprintf(st->note, sizeof st->note, "cannot remove some files (see above)");
        }
        free(path);
    }
    closedir(d);
    free(builds);
    s_step_done(gc, st);
}

static void s_artifacts(s_gc_t *gc)
{
    s_step_t *st = s_step(gc, "artifacts");
    if (!gc->is_scanned || gc->is_unsure) {
        st->is_failed = true;
        snprintf(st->note, sizeof st->note, "%s: nothing deleted",
                 !gc->is_scanned ? "no complete view of redis"
                                 : "what to keep is not known for sure (see above)");
        s_step_done(gc, st);
        return;
    }
    const char *dir = gc->cfg->artifact_dir;
    char *fallback = dir ? NULL : sn_strdupf("%s/artifacts", gc->state_dir);
    if (!dir)
        dir = fallback;
    /* Fresh artifacts stay: a build stored it, its run does not name it yet. */
    DIR *d = opendir(dir);
    s_strs_t doomed = {0};
    if (!d && errno != ENOENT) {
        st->is_failed = true;
        snprintf(st->note, sizeof st->note, "cannot read %s: %s", dir, strerror(errno));
        goto out;
    }
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        struct stat sb;
        if (strncmp(e->d_name, ".tmp-", 5) == 0) {
            /* an interrupted put (sn_artifact_put_dir's temp file) */
            if (!gc->is_dry_run && fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
                gc->now_ms - (int64_t)sb.st_mtim.tv_sec * 1000 > CTL_GC_ARTIFACT_GRACE_MS)
                unlinkat(dirfd(d), e->d_name, 0);
            continue;
        }
        if (len != SN_ARTIFACT_SHA_LEN + 4 || strcmp(e->d_name + SN_ARTIFACT_SHA_LEN, ".tar") != 0)
            continue;
        char sha[SN_ARTIFACT_SHA_LEN + 1];
        memcpy(sha, e->d_name, SN_ARTIFACT_SHA_LEN);
        sha[SN_ARTIFACT_SHA_LEN] = '\0';
        if (!sn_artifact_sha_is_valid(sha))
            continue;
        if (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        int64_t mtime_ms = (int64_t)sb.st_mtim.tv_sec * 1000 + sb.st_mtim.tv_nsec / 1000000;
        if (gc->now_ms - mtime_ms < CTL_GC_ARTIFACT_GRACE_MS)
            s_keep_artifact(gc, sha, "stored within the last hour");
        if (zhash_lookup(gc->keep_artifacts, sha))
            st->kept++;
        else
            s_strs_push(&doomed, sha, SN_ARTIFACT_SHA_LEN);
    }
    if (d)
        closedir(d);
    /* Removed here rather than by sn_artifact_gc, which takes no age: an artifact stored
     * after the listing above would not be in its keep list. Each file is checked again
     * just before it goes. */
    for (size_t i = 0; i < doomed.n && !s_late(gc); i++) {
        const char *sha = doomed.v[i];
        char *path = sn_strdupf("%s/%s.tar", dir, sha);
        struct stat sb;
        if (stat(path, &sb) != 0 ||
            gc->now_ms - ((int64_t)sb.st_mtim.tv_sec * 1000 + sb.st_mtim.tv_nsec / 1000000) <
                CTL_GC_ARTIFACT_GRACE_MS) {
            free(path);
            continue;
        }
        if (!gc->is_dry_run) {
            if (unlink(path) != 0 && errno != ENOENT) {
                sn_warn(LOG_MODULE, "cannot remove %s: %s", path, strerror(errno));
                st->is_failed = true;
                snprintf(st->note, sizeof st->note, "cannot remove some artifacts (see above)");
                free(path);
                continue;
            }
            char *key = s_key(gc, "artifact:%s", sha);
            const char *del[] = {"DEL", key};
            redisReply *r = s_cmd(gc, 2, del, NULL);
            if (r)
                freeReplyObject(r);
            free(key);
        }
        free(path);
        st->deleted++;
        s_item(gc, "artifacts", sha, "no kept release, run in flight or environment refers to it");
    }
    /* artifact:<sha> records of artifacts this store no longer has. */
    for (size_t i = 0; i < gc->artifact_shas.n && !st->is_failed && !s_late(gc); i++) {
        const char *sha = gc->artifact_shas.v[i];
        if (!sn_artifact_sha_is_valid(sha) || zhash_lookup(gc->keep_artifacts, sha))
            continue;
        bool is_doomed = false;
        for (size_t k = 0; k < doomed.n && !is_doomed; k++)
            is_doomed = strcmp(doomed.v[k], sha) == 0;
        char *key = s_key(gc, "artifact:%s", sha);
        char *path = sn_strdupf("%s/%s.tar", dir, sha);
        const char *argv[] = {"HGET", key, "path"};
        redisReply *r = is_doomed ? NULL : s_cmd(gc, 3, argv, NULL);
        /* Only records of this store: another host's store says another path. */
        bool is_orphan = r && r->type == REDIS_REPLY_STRING && strcmp(r->str, path) == 0 &&
                         access(path, F_OK) != 0;
        if (r)
            freeReplyObject(r);
        if (is_orphan) {
            if (!gc->is_dry_run) {
                const char *del[] = {"DEL", key};
                redisReply *dr = s_cmd(gc, 2, del, NULL);
                if (dr)
                    freeReplyObject(dr);
            }
            char *item = sn_strdupf("artifact:%s", sha);
            s_item(gc, "artifacts", item, "record of an artifact no longer stored");
            free(item);
            st->deleted++;
        }
        free(path);
        free(key);
    }
out:
    s_strs_fini(&doomed);
    free(fallback);
    s_step_done(gc, st);
}

/* ---- output ---------------------------------------------------------------------------- */

static void s_print(const s_gc_t *gc, const ctl_opts_t *opts)
{
    if (opts->format == CTL_FORMAT_JSON) {
        bool ok = true;
        json_t *steps = json_array();
        for (size_t i = 0; i < gc->step_count; i++) {
            const s_step_t *st = &gc->steps[i];
            ok = ok && !st->is_failed;
            json_array_append_new(steps, json_pack("{s:s, s:I, s:I, s:b, s:s}", "step", st->name,
                                                   "deleted", (json_int_t)st->deleted, "kept",
                                                   (json_int_t)st->kept, "ok", !st->is_failed,
                                                   "note", st->note));
        }
        json_t *doc =
            json_pack("{s:b, s:b, s:o}", "dry_run", gc->is_dry_run, "ok", ok, "steps", steps);
        if (gc->is_dry_run)
            json_object_set(doc, "items", gc->items);
        ctl_json_print(doc);
        json_decref(doc);
        return;
    }
    if (gc->is_dry_run) {
        static const char *const headers[] = {"STEP", "WOULD DELETE", "DETAIL", NULL};
        ctl_table_t *t = ctl_table_new(headers);
        size_t i;
        json_t *item;
        json_array_foreach(gc->items, i, item)
        {
            const char *cells[] = {json_string_value(json_object_get(item, "step")),
                                   json_string_value(json_object_get(item, "item")),
                                   json_string_value(json_object_get(item, "detail"))};
            ctl_table_add_row(t, cells, SN_ARRAY_LEN(cells));
        }
        ctl_table_print(t);
        ctl_table_destroy(&t);
        return;
    }
    static const char *const headers[] = {"STEP", "DELETED", "KEPT", "RESULT", "NOTE", NULL};
    ctl_table_t *t = ctl_table_new(headers);
    for (size_t i = 0; i < gc->step_count; i++) {
        const s_step_t *st = &gc->steps[i];
        char deleted[24], kept[24];
        snprintf(deleted, sizeof deleted, "%" PRId64, st->deleted);
        snprintf(kept, sizeof kept, "%" PRId64, st->kept);
        const char *cells[] = {st->name, deleted, kept, st->is_failed ? "failed" : "ok", st->note};
        ctl_table_add_row(t, cells, SN_ARRAY_LEN(cells));
    }
    ctl_table_print(t);
    ctl_table_destroy(&t);
}

/* ---- helpers --------------------------------------------------------------------------- */

static s_step_t *s_step(s_gc_t *gc, const char *name)
{
    SN_ASSERT(gc->step_count < SN_ARRAY_LEN(gc->steps));
    s_step_t *st = &gc->steps[gc->step_count++];
    st->name = name;
    return st;
}

static void s_step_done(s_gc_t *gc, s_step_t *st)
{
    const char *verb = gc->is_dry_run ? "would delete" : "deleted";
    if (st->is_failed)
        sn_warn(LOG_MODULE, "%s: failed %s=%" PRId64 " kept=%" PRId64 ": %s", st->name, verb,
                st->deleted, st->kept, st->note);
    else
        sn_info(LOG_MODULE, "%s: %s=%" PRId64 " kept=%" PRId64 "%s%s", st->name, verb, st->deleted,
                st->kept, st->note[0] ? " note=" : "", st->note);
}

static void s_item(s_gc_t *gc, const char *step, const char *item, const char *detail)
{
    if (!gc->is_dry_run || json_array_size(gc->items) >= CTL_GC_ITEMS_MAX)
        return;
    json_array_append_new(
        gc->items, json_pack("{s:s, s:s, s:s}", "step", step, "item", item, "detail", detail));
}

static bool s_late(const s_gc_t *gc)
{
    return sn_mono_ms() >= gc->deadline_ms;
}

/* One command on the main channel; NULL (logged once by sn_redis) when Redis did not
 * answer. The caller frees the reply. */
static redisReply *s_cmd(s_gc_t *gc, int argc, const char **argv, const size_t *lens)
{
    redisReply *r = NULL;
    if (sn_redis_cmd(gc->redis, SN_REDIS_MAIN, 0, &r, argc, argv, lens) != SN_OK)
        return NULL;
    return r;
}

static char *s_key(const s_gc_t *gc, const char *fmt, ...)
{
    char rel[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rel, sizeof rel, fmt, ap);
    va_end(ap);
    return sn_strdupf("%s%s", gc->ns, rel);
}

static void s_strs_push(s_strs_t *s, const char *str, size_t len)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->v = sn_realloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = sn_strndup(str, len);
}

static void s_strs_fini(s_strs_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof *s);
}

static bool s_is_terminal(int state)
{
    return state >= SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED &&
           state <= SENTINEL__V1__RUN_STATE__RUN_ROLLED_BACK;
}

static void s_keep_run(s_gc_t *gc, const char *id, const char *why)
{
    s_run_t *run = zhash_lookup(gc->run_index, id);
    if (run && !run->keep_why)
        run->keep_why = why;
}

static void s_keep_artifact(s_gc_t *gc, const char *sha, const char *why)
{
    if (sn_artifact_sha_is_valid(sha))
        zhash_insert(gc->keep_artifacts, sha, (void *)why);
}

static void s_gc_fini(s_gc_t *gc)
{
    for (size_t i = 0; i < gc->run_count; i++)
        if (gc->runs[i].pb)
            sentinel__v1__run__free_unpacked(gc->runs[i].pb, NULL);
    free(gc->runs);
    zhash_destroy(&gc->run_index);
    zhash_destroy(&gc->active);
    zhash_destroy(&gc->keep_artifacts);
    zhash_destroy(&gc->doomed_runs);
    s_strs_fini(&gc->run_keys);
    s_strs_fini(&gc->project_zsets);
    s_strs_fini(&gc->env_keys);
    s_strs_fini(&gc->release_keys);
    s_strs_fini(&gc->fnsrc_keys);
    s_strs_fini(&gc->job_ids);
    s_strs_fini(&gc->artifact_shas);
    json_decref(gc->items);
    free(gc->state_dir);
    sn_redis_destroy(&gc->redis);
}
