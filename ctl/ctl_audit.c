/* `sentinelctl audit verify` and `sentinelctl audit tail [-n N]`: the audit chain
 * (sn_audit.h) read from the archive file and the Redis stream of the configured mesh.
 * verify checks everything from the first record and exits 0 when intact, 1 with
 * "tampered at index N: reason" when not; tail prints the last N records. Both read only;
 * the head-signing key is read, never created, by this command. */
#include "ctl.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_audit.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define CMD "audit"
#define CTL_AUDIT_TAIL_DEFAULT 20
#define CTL_AUDIT_TAIL_MAX 100000

typedef struct {
    char **lines; /* ring of the last N records (canonical JSON + hash) */
    char **hashes;
    size_t cap, count, next;
} ctl_ring_t;

static void s_help(void);
static int s_verify(ctl_opts_t *opts, const sn_config_t *cfg, sn_redis_t *redis,
                    const char *archive, const char *key);
static int s_tail(ctl_opts_t *opts, const sn_config_t *cfg, sn_redis_t *redis, const char *archive,
                  size_t n);
static void s_on_record(void *arg, uint64_t index, const char *hash_hex, const char *rec,
                        size_t rec_len, bool from_archive);
static void s_print_record(const ctl_opts_t *opts, ctl_table_t *t, const char *rec,
                           const char *hash);

int ctl_cmd_audit(ctl_opts_t *opts, int argc, char **argv)
{
    static const struct option longopts[] = {
        CTL_COMMON_LONGOPTS, {"lines", required_argument, NULL, 'n'}, {NULL, 0, NULL, 0}};
    int64_t n = CTL_AUDIT_TAIL_DEFAULT;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":" CTL_COMMON_SHORTOPTS "n:", longopts, NULL)) != -1) {
        int handled = ctl_opts_handle(opts, CMD, c, optarg);
        if (handled < 0)
            return CTL_EXIT_USAGE;
        if (handled > 0)
            continue;
        if (c == 'n') {
            if (sn_parse_i64(optarg, 1, CTL_AUDIT_TAIL_MAX, &n) != SN_OK)
                return ctl_usage_error(CMD, "-n '%s' is not a count in [1, %d]", optarg,
                                       CTL_AUDIT_TAIL_MAX);
            continue;
        }
        return ctl_bad_option(CMD, c, argv);
    }
    if (opts->is_help) {
        s_help();
        return CTL_EXIT_OK;
    }
    if (optind >= argc)
        return ctl_usage_error(CMD, "missing subcommand: verify or tail");
    const char *sub = argv[optind];
    bool is_verify = strcmp(sub, "verify") == 0;
    if (!is_verify && strcmp(sub, "tail") != 0)
        return ctl_usage_error(CMD, "unknown subcommand '%s' (verify or tail)", sub);
    if (optind + 1 < argc)
        return ctl_usage_error(CMD, "unexpected argument '%s'", argv[optind + 1]);
    ctl_output_setup(opts->is_no_color);

    sn_config_t cfg;
    if (ctl_config_load(CMD, opts->config_path, &cfg) != SN_OK)
        return CTL_EXIT_FAIL;
    const char *state = cfg.state_dir ? cfg.state_dir : "./var";
    char *archive =
        cfg.audit_archive ? sn_strdup(cfg.audit_archive) : sn_strdupf("%s/audit.log", state);
    char *key =
        cfg.audit_key_file ? sn_strdup(cfg.audit_key_file) : sn_strdupf("%s/audit.key", state);
    char *sock = ctl_redis_socket_path(&cfg);
    sn_redis_opts_t ro = {
        .unix_path = sock,
        .host = cfg.redis.host ? cfg.redis.host : "127.0.0.1",
        .port = cfg.redis.port > 0 ? cfg.redis.port : 6379,
        .namespace_ = cfg.namespace_,
        .timeout_ms = cfg.redis.timeout_ms > 0 ? cfg.redis.timeout_ms : 2000,
        .name = "ctl",
    };
    /* The Redis threads log their connection state; a command keeps stderr for results. */
    sn_log_set_level(SN_LOG_WARN);
    sn_redis_t *redis = sn_redis_new(&ro);
    int rc = CTL_EXIT_FAIL;
    if (!redis)
        ctl_err(CMD, "no usable redis address in the config");
    else if (is_verify)
        rc = s_verify(opts, &cfg, redis, archive, key);
    else
        rc = s_tail(opts, &cfg, redis, archive, (size_t)n);
    sn_redis_destroy(&redis);
    free(sock);
    free(archive);
    free(key);
    sn_config_fini(&cfg);
    return rc;
}

static void s_help(void)
{
    printf("usage: sentinelctl audit verify\n"
           "       sentinelctl audit tail [-n N]\n\n"
           "verify  checks the audit chain from its first record: the archive file\n"
           "        (audit_archive) then the Redis stream, every hash, the order, the\n"
           "        times, the head and the signed heads (key: audit_key_file).\n"
           "        Exit 0: intact; 1: 'tampered at index N: reason' (or Redis\n"
           "        unreachable). A torn last line of the archive (a writer killed\n"
           "        mid-write) is reported as truncated, not as tampering.\n"
           "tail    prints the last N records (default %d), oldest first:\n"
           "          table: INDEX TIME KIND ACTOR ACTION SUBJECT OK TEXT\n"
           "          json:  the record as stored plus \"hash\", one per line\n"
           "  -n, --lines N   how many records\n",
           CTL_AUDIT_TAIL_DEFAULT);
}

static int s_verify(ctl_opts_t *opts, const sn_config_t *cfg, sn_redis_t *redis,
                    const char *archive, const char *key)
{
    sn_audit_report_t rep;
    sn_rc_t rc = sn_audit_verify(redis, archive, key, 0, &rep);
    if (rc == SN_AGAIN) {
        ctl_err(CMD, "cannot verify: %s", rep.reason);
        return CTL_EXIT_FAIL;
    }
    if (opts->format == CTL_FORMAT_JSON) {
        json_t *doc =
            json_pack("{s:b, s:I, s:I, s:I, s:I, s:I, s:b, s:b}", "ok", rc == SN_OK, "records",
                      (json_int_t)rep.records, "first_index", (json_int_t)rep.first_index,
                      "last_index", (json_int_t)rep.last_index, "head_index",
                      (json_int_t)rep.head_index, "signatures", (json_int_t)rep.signatures,
                      "truncated", rep.is_truncated, "key_missing", rep.is_key_missing);
        if (rc != SN_OK) {
            json_object_set_new(doc, "bad_index", json_integer((json_int_t)rep.bad_index));
            json_object_set_new(doc, "reason", json_string(rep.reason));
        }
        ctl_json_print(doc);
        json_decref(doc);
    } else if (rc == SN_OK) {
        printf("%sok%s: %" PRIu64 " records (%" PRIu64 "..%" PRIu64 "), head %" PRIu64 ", %" PRIu64
               " signed heads verified\n",
               ctl_color("green"), ctl_color("reset"), rep.records, rep.first_index, rep.last_index,
               rep.head_index, rep.signatures);
    } else {
        printf("%stampered at index %" PRIu64 "%s: %s\n", ctl_color("red"), rep.bad_index,
               ctl_color("reset"), rep.reason);
    }
    if (rep.is_truncated)
        ctl_err(CMD,
                "the archive %s ends with a truncated record (%" PRIu64 " bytes, a writer "
                "killed mid-write); those records are still in Redis and the next "
                "archive run removes the torn line",
                archive, rep.truncated_bytes);
    if (rep.is_key_missing)
        ctl_err(CMD, "no key file %s: signed heads were not checked", key);
    (void)cfg;
    return rc == SN_OK ? CTL_EXIT_OK : CTL_EXIT_FAIL;
}

static int s_tail(ctl_opts_t *opts, const sn_config_t *cfg, sn_redis_t *redis, const char *archive,
                  size_t n)
{
    ctl_ring_t ring = {.cap = n};
    ring.lines = sn_calloc(n, sizeof *ring.lines);
    ring.hashes = sn_calloc(n, sizeof *ring.hashes);
    int rc = CTL_EXIT_OK;
    if (sn_audit_scan(redis, archive, 1, 0, s_on_record, &ring) != SN_OK) {
        ctl_err(CMD, "cannot read the audit stream: redis unreachable");
        rc = CTL_EXIT_FAIL;
        goto out;
    }
    static const char *const headers[] = {"INDEX",   "TIME", "KIND", "ACTOR", "ACTION",
                                          "SUBJECT", "OK",   "TEXT", NULL};
    ctl_table_t *t = opts->format == CTL_FORMAT_TABLE ? ctl_table_new(headers) : NULL;
    size_t start = ring.count < ring.cap ? 0 : ring.next;
    for (size_t i = 0; i < ring.count; i++) {
        size_t k = (start + i) % ring.cap;
        s_print_record(opts, t, ring.lines[k], ring.hashes[k]);
    }
    if (t) {
        ctl_table_print(t);
        ctl_table_destroy(&t);
    }
out:
    for (size_t i = 0; i < ring.cap; i++) {
        free(ring.lines[i]);
        free(ring.hashes[i]);
    }
    free(ring.lines);
    free(ring.hashes);
    (void)cfg;
    return rc;
}

static void s_on_record(void *arg, uint64_t index, const char *hash_hex, const char *rec,
                        size_t rec_len, bool from_archive)
{
    ctl_ring_t *ring = arg;
    free(ring->lines[ring->next]);
    free(ring->hashes[ring->next]);
    ring->lines[ring->next] = sn_strndup(rec, rec_len);
    ring->hashes[ring->next] = sn_strdup(hash_hex);
    ring->next = (ring->next + 1) % ring->cap;
    if (ring->count < ring->cap)
        ring->count++;
}

static const char *s_str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static void s_print_record(const ctl_opts_t *opts, ctl_table_t *t, const char *rec,
                           const char *hash)
{
    json_t *o = json_loads(rec, 0, NULL);
    if (!o) {
        ctl_err(CMD, "a record does not parse (run `sentinelctl audit verify`)");
        return;
    }
    if (!t) {
        json_object_set_new(o, "hash", json_string(hash));
        ctl_json_print(o);
        json_decref(o);
        return;
    }
    char idx[24], when[40];
    snprintf(idx, sizeof idx, "%" JSON_INTEGER_FORMAT,
             json_integer_value(json_object_get(o, "index")));
    ctl_format_time((long long)json_integer_value(json_object_get(o, "time_ms")), when,
                    sizeof when);
    const char *kind = s_str(o, "kind");
    bool is_outcome = strcmp(kind, "outcome") == 0;
    char text[SN_AUDIT_FIELD_MAX + 32];
    if (is_outcome)
        snprintf(text, sizeof text, "intent %" JSON_INTEGER_FORMAT ": %s",
                 json_integer_value(json_object_get(o, "intent")), s_str(o, "detail"));
    else
        snprintf(text, sizeof text, "%s", s_str(o, "reason"));
    const char *ok = is_outcome ? (json_is_true(json_object_get(o, "ok")) ? "yes" : "no") : "";
    const char *cells[] = {
        idx, when, kind, s_str(o, "actor"), s_str(o, "action"), s_str(o, "subject"), ok, text};
    ctl_table_add_row(t, cells, SN_ARRAY_LEN(cells));
    json_decref(o);
}
