/* `sentinelctl events [-f] [--type PREFIX] [--since-id ID]`: reads the journal, the
 * `<ns>events` stream (entries `type <type> env <Envelope bytes>`), with XRANGE in
 * batches, and with -f keeps following it with XREAD BLOCK (a bounded block time, so
 * Ctrl-C is seen within it; exit 130), reconnecting with backoff if Redis goes away.
 * The stream id is the cursor: what --since-id takes and what every line starts with.
 * Plain hiredis on one owned, timeout-bounded context: the journal reader's thread and
 * consumer-group machinery are more than a one-shot command needs. */
#include "ctl.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sentinel/sn_backoff.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_json.h"

#define CMD "events"
#define CTL_EVENTS_BATCH 500
#define CTL_EVENTS_BLOCK_MS 500
#define CTL_EVENTS_ID_MAX 48

static volatile sig_atomic_t s_interrupted;

typedef struct {
    const char *type_prefix;
    size_t printed;
    size_t malformed;
    ctl_format_t format;
} ctl_events_t;

static void s_help(void);
static void s_on_sigint(int sig);
static bool s_id_ok(const char *id);
static int s_read_range(ctl_events_t *ev, redisContext *c, const char *key, char *cursor);
static int s_follow(ctl_events_t *ev, redisContext **cp, const sn_config_t *cfg, const char *key,
                    char *cursor);
static bool s_set_follow_timeout(redisContext *c);
static void s_print_entry(ctl_events_t *ev, const redisReply *entry, char *cursor);
static void s_check_gap(redisContext *c, const char *key, const char *since);
static int s_id_cmp(const char *a, const char *b);

int ctl_cmd_events(ctl_opts_t *opts, int argc, char **argv)
{
    static const struct option longopts[] = {
        CTL_COMMON_LONGOPTS,
        {"follow", no_argument, NULL, 'f'},
        {"type", required_argument, NULL, CTL_OPT_TYPE},
        {"since-id", required_argument, NULL, CTL_OPT_SINCE_ID},
        {NULL, 0, NULL, 0}};
    ctl_events_t ev = {0};
    bool is_follow = false;
    const char *since = NULL;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":" CTL_COMMON_SHORTOPTS "f", longopts, NULL)) != -1) {
        int handled = ctl_opts_handle(opts, CMD, c, optarg);
        if (handled < 0)
            return CTL_EXIT_USAGE;
        if (handled > 0)
            continue;
        switch (c) {
        case 'f':
            is_follow = true;
            break;
        case CTL_OPT_TYPE:
            ev.type_prefix = optarg;
            break;
        case CTL_OPT_SINCE_ID:
            since = optarg;
            break;
        default:
            return ctl_bad_option(CMD, c, argv);
        }
    }
    if (opts->is_help) {
        s_help();
        return CTL_EXIT_OK;
    }
    if (optind < argc)
        return ctl_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (since && !s_id_ok(since))
        return ctl_usage_error(CMD, "--since-id '%s' is not a stream id (<ms>-<seq>)", since);
    ctl_output_setup(opts->is_no_color);
    ev.format = opts->format;

    sn_config_t cfg;
    if (ctl_config_load(CMD, opts->config_path, &cfg) != SN_OK)
        return CTL_EXIT_FAIL;
    int rc = CTL_EXIT_FAIL;
    char *key = sn_strdupf("%sevents", cfg.namespace_ ? cfg.namespace_ : "sentinel:");
    redisContext *ctx = ctl_redis_connect(CMD, &cfg);
    if (!ctx)
        goto out;

    /* The cursor: strictly after --since-id; from the start without it, except that
     * -f without --since-id shows only what comes next (like tail -f). */
    char cursor[CTL_EVENTS_ID_MAX] = "";
    if (since) {
        sn_strlcpy(cursor, since, sizeof cursor);
        s_check_gap(ctx, key, since);
    }
    struct sigaction sa = {.sa_handler = s_on_sigint};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    if (!is_follow || since)
        rc = s_read_range(&ev, ctx, key, cursor);
    else
        rc = CTL_EXIT_OK;
    if (rc == CTL_EXIT_OK && is_follow) {
        if (!since) {
            redisReply *r = redisCommand(ctx, "XREVRANGE %s + - COUNT 1", key);
            if (!r) {
                ctl_err(CMD, "redis: %s", ctx->errstr);
                rc = CTL_EXIT_FAIL;
                goto out;
            }
            if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
                r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements == 2)
                sn_strlcpy(cursor, r->element[0]->element[0]->str, sizeof cursor);
            else
                sn_strlcpy(cursor, "0-0", sizeof cursor);
            freeReplyObject(r);
        }
        rc = s_follow(&ev, &ctx, &cfg, key, cursor);
    }
    if (ev.malformed)
        ctl_err(CMD, "%zu entries had an envelope that does not parse", ev.malformed);
out:
    if (s_interrupted)
        rc = CTL_EXIT_INTERRUPTED;
    if (ctx)
        redisFree(ctx);
    free(key);
    sn_config_fini(&cfg);
    return rc;
}

static void s_help(void)
{
    printf("usage: sentinelctl events [-f] [--type PREFIX] [--since-id ID]\n\n"
           "Prints the journal (<namespace>events), oldest first, one event per line:\n"
           "  table: STREAM_ID TIME TYPE SUBJECT SOURCE\n"
           "  json:  one document per line (NDJSON), see docs/operations.md\n"
           "  -f, --follow       keep printing new events (Ctrl-C exits 130); without\n"
           "                     --since-id only events that arrive from now on\n"
           "      --type PREFIX  only events whose type starts with PREFIX\n"
           "      --since-id ID  only events strictly after stream id ID\n");
}

static void s_on_sigint(int sig)
{
    (void)sig;
    s_interrupted = 1;
}

/* "<ms>" or "<ms>-<seq>", decimal. */
static bool s_id_ok(const char *id)
{
    if (!id || !*id || strlen(id) >= CTL_EVENTS_ID_MAX)
        return false;
    const char *p = id;
    size_t digits = 0;
    while (*p >= '0' && *p <= '9')
        p++, digits++;
    if (digits == 0)
        return false;
    if (*p == '\0')
        return true;
    if (*p++ != '-')
        return false;
    digits = 0;
    while (*p >= '0' && *p <= '9')
        p++, digits++;
    return digits > 0 && *p == '\0';
}

/* Everything after @cursor ("" = from the start) up to the end of the stream now;
 * @cursor advances to the last id read. */
static int s_read_range(ctl_events_t *ev, redisContext *c, const char *key, char *cursor)
{
    for (;;) {
        if (s_interrupted)
            return CTL_EXIT_INTERRUPTED;
        char *start = cursor[0] ? sn_strdupf("(%s", cursor) : sn_strdup("-");
        char count[16];
        snprintf(count, sizeof count, "%d", CTL_EVENTS_BATCH);
        const char *argv[] = {"XRANGE", key, start, "+", "COUNT", count};
        redisReply *r = redisCommandArgv(c, 6, argv, NULL);
        free(start);
        if (!r) {
            ctl_err(CMD, "redis: %s", c->errstr);
            return CTL_EXIT_FAIL;
        }
        if (r->type != REDIS_REPLY_ARRAY) {
            ctl_err(CMD, "redis: XRANGE: %s", r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
            freeReplyObject(r);
            return CTL_EXIT_FAIL;
        }
        size_t n = r->elements;
        for (size_t i = 0; i < n; i++)
            s_print_entry(ev, r->element[i], cursor);
        freeReplyObject(r);
        if (n < CTL_EVENTS_BATCH)
            return CTL_EXIT_OK;
    }
}

/* Follows from @cursor until SIGINT. A lost connection (Redis restarted) is reopened
 * with backoff, and reading continues from the cursor, so nothing is skipped. */
static int s_follow(ctl_events_t *ev, redisContext **cp, const sn_config_t *cfg, const char *key,
                    char *cursor)
{
    if (!s_set_follow_timeout(*cp))
        return CTL_EXIT_FAIL;
    char block[16], count[16];
    snprintf(block, sizeof block, "%d", CTL_EVENTS_BLOCK_MS);
    snprintf(count, sizeof count, "%d", CTL_EVENTS_BATCH);
    sn_backoff_t backoff;
    sn_backoff_init(&backoff, 200, 5000);
    while (!s_interrupted) {
        if (!*cp) {
            int64_t delay = sn_backoff_next(&backoff);
            struct timespec ts = {.tv_sec = delay / 1000, .tv_nsec = (delay % 1000) * 1000000};
            nanosleep(&ts, NULL); /* SIGINT interrupts it */
            if (s_interrupted)
                break;
            *cp = ctl_redis_connect(CMD, cfg);
            if (!*cp || !s_set_follow_timeout(*cp)) {
                if (*cp)
                    redisFree(*cp);
                *cp = NULL;
                continue;
            }
            ctl_err(CMD, "redis: reconnected; continuing after %s", cursor);
            sn_backoff_reset(&backoff);
        }
        redisContext *c = *cp;
        const char *argv[] = {"XREAD", "COUNT", count, "BLOCK", block, "STREAMS", key, cursor};
        redisReply *r = redisCommandArgv(c, 8, argv, NULL);
        if (!r) {
            if (s_interrupted)
                break;
            ctl_err(CMD, "redis: %s; reconnecting", c->errstr);
            redisFree(c);
            *cp = NULL;
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            ctl_err(CMD, "redis: XREAD: %s", r->str);
            freeReplyObject(r);
            return CTL_EXIT_FAIL;
        }
        /* [[key, [entry...]]] or nil when the block time passed. */
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
            r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements == 2) {
            const redisReply *entries = r->element[0]->element[1];
            for (size_t i = 0; entries->type == REDIS_REPLY_ARRAY && i < entries->elements; i++)
                s_print_entry(ev, entries->element[i], cursor);
        }
        freeReplyObject(r);
    }
    return CTL_EXIT_INTERRUPTED;
}

/* The socket timeout must outlast the block time. */
static bool s_set_follow_timeout(redisContext *c)
{
    int ms = CTL_EVENTS_BLOCK_MS + 2000;
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        ctl_err(CMD, "redis: %s", c->errstr);
        return false;
    }
    return true;
}

/* One stream entry: [id, [field, value, ...]]. Advances @cursor even when the entry is
 * filtered out or malformed, so the next read continues after it. */
static void s_print_entry(ctl_events_t *ev, const redisReply *entry, char *cursor)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *id = entry->element[0]->str;
    sn_strlcpy(cursor, id, CTL_EVENTS_ID_MAX);
    const redisReply *fields = entry->element[1];
    const char *type = NULL;
    const redisReply *raw = NULL;
    for (size_t i = 0; fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements; i += 2) {
        const redisReply *f = fields->element[i], *v = fields->element[i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(f->str, "type") == 0)
            type = v->str;
        else if (strcmp(f->str, "env") == 0)
            raw = v;
    }
    const char *why = NULL;
    sn_envelope_t *env =
        raw ? sn_envelope_unpack(raw->str, raw->len, SN_MAX_FRAME_BYTES, &why) : NULL;
    if (!raw)
        why = "no env field";
    if (!type && env)
        type = env->type;
    if (ev->type_prefix &&
        (!type || strncmp(type, ev->type_prefix, strlen(ev->type_prefix)) != 0)) {
        sn_envelope_free(&env);
        return;
    }
    if (!env) {
        ev->malformed++;
        ctl_err(CMD, "entry %s: envelope refused (%s)", id, why ? why : "unparsable");
    }
    if (ev->format == CTL_FORMAT_JSON) {
        json_t *doc = json_pack("{s:s, s:s?}", "stream_id", id, "type", type);
        SN_ASSERT(doc);
        json_t *ej = env ? sn_json_from_message(&env->base) : NULL;
        if (ej)
            json_object_set_new(doc, "envelope", ej);
        else
            json_object_set_new(doc, "error", json_string(why ? why : "not renderable"));
        ctl_json_print(doc);
        json_decref(doc);
    } else {
        static const int widths[] = {17, 24, 28, 32, 0};
        char when[40] = "-";
        if (env)
            ctl_format_time((long long)env->time_unix_ms, when, sizeof when);
        const char *cells[] = {id, when, type, env ? env->subject : "(malformed)",
                               env ? env->source : NULL};
        ctl_row_print(cells, widths, SN_ARRAY_LEN(cells));
    }
    ev->printed++;
    sn_envelope_free(&env);
}

/* Warns when entries after @since are gone from the journal: trimmed (the stream has
 * had more entries added than it holds, and @since is before its first entry) or
 * deleted (Redis 7 keeps the largest deleted id). The output then starts later than
 * asked, and says so. */
static void s_check_gap(redisContext *c, const char *key, const char *since)
{
    redisReply *r = redisCommand(c, "XINFO STREAM %s", key);
    if (!r)
        return;
    const char *max_deleted = NULL, *first = NULL;
    long long length = 0, added = 0;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        const redisReply *f = r->element[i], *v = r->element[i + 1];
        if (f->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(f->str, "max-deleted-entry-id") == 0 && v->type == REDIS_REPLY_STRING)
            max_deleted = v->str;
        else if (strcmp(f->str, "length") == 0 && v->type == REDIS_REPLY_INTEGER)
            length = v->integer;
        else if (strcmp(f->str, "entries-added") == 0 && v->type == REDIS_REPLY_INTEGER)
            added = v->integer;
        else if (strcmp(f->str, "first-entry") == 0 && v->type == REDIS_REPLY_ARRAY &&
                 v->elements == 2 && v->element[0]->type == REDIS_REPLY_STRING)
            first = v->element[0]->str;
    }
    bool is_gap = (max_deleted && s_id_cmp(since, max_deleted) < 0) ||
                  (added > length && (!first || s_id_cmp(since, first) < 0));
    if (is_gap)
        ctl_err(CMD,
                "gap: some events after %s are no longer in the journal (trimmed or "
                "deleted); continuing from %s",
                since, first ? first : "the end");
    freeReplyObject(r);
}

/* Compares two stream ids ("<ms>" or "<ms>-<seq>"): <0, 0, >0. */
static int s_id_cmp(const char *a, const char *b)
{
    unsigned long long am = 0, as = 0, bm = 0, bs = 0;
    char *end = NULL;
    am = strtoull(a, &end, 10);
    if (end && *end == '-')
        as = strtoull(end + 1, NULL, 10);
    bm = strtoull(b, &end, 10);
    if (end && *end == '-')
        bs = strtoull(end + 1, NULL, 10);
    if (am != bm)
        return am < bm ? -1 : 1;
    return as < bs ? -1 : as > bs ? 1 : 0;
}
