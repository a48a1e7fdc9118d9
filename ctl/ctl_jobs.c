/* `sentinelctl jobs [--dead]`: the job ledger as it stands in Redis (sn_ledger.h):
 * open jobs are the `<ns>job:<id>` hashes in state queued or claimed; `--dead` lists
 * `<ns>jobs:dead` (job ids, newest first) with what is left of each job. Read-only, on
 * one timeout-bounded hiredis context; the hashes are read field by field so that a
 * field the ledger adds later does not break the listing. */
#include "ctl.h"

#include <stdlib.h>
#include <string.h>

#define CMD "jobs"
#define CTL_JOBS_SCAN_COUNT "500"
#define CTL_JOBS_MAX 100000

typedef struct {
    char *id;
    char *state;
    char *owner;
    char *epoch;
    long long lease_deadline_ms;
    long long created_ms;
    long long updated_ms;
    char *kind;
    char *service;
    char *owner_role;
    char *correlation_id;
    long long attempt;
    long long max_attempts;
    long long lease_ms;
    char *reason; /* "error" or "reason" field, if the job has one */
} ctl_job_t;

static void s_help(void);
static sn_rc_t s_read_job(redisContext *c, const char *ns, const char *id, ctl_job_t *job);
static void s_job_fini(ctl_job_t *job);
static void s_set(char **slot, const redisReply *v);
static bool s_is_open(const ctl_job_t *job);
static void s_print(const ctl_opts_t *opts, ctl_job_t *jobs, size_t count, long long now_ms);
static long long s_redis_time_ms(redisContext *c);
static int s_cmp_job(const void *a, const void *b);

int ctl_cmd_jobs(ctl_opts_t *opts, int argc, char **argv)
{
    static const struct option longopts[] = {
        CTL_COMMON_LONGOPTS, {"dead", no_argument, NULL, CTL_OPT_DEAD}, {NULL, 0, NULL, 0}};
    bool is_dead = false;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":" CTL_COMMON_SHORTOPTS, longopts, NULL)) != -1) {
        int handled = ctl_opts_handle(opts, CMD, c, optarg);
        if (handled < 0)
            return CTL_EXIT_USAGE;
        if (handled > 0)
            continue;
        if (c == CTL_OPT_DEAD)
            is_dead = true;
        else
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
    const char *ns = cfg.namespace_ ? cfg.namespace_ : "sentinel:";
    int rc = CTL_EXIT_FAIL;
    ctl_job_t *jobs = NULL;
    size_t count = 0, cap = 0;
    redisContext *ctx = ctl_redis_connect(CMD, &cfg);
    if (!ctx)
        goto out;
    long long now_ms = s_redis_time_ms(ctx);

    if (is_dead) {
        char *key = sn_strdupf("%sjobs:dead", ns);
        const char *args[] = {"LRANGE", key, "0", "-1"};
        redisReply *r = redisCommandArgv(ctx, 4, args, NULL);
        free(key);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            ctl_err(CMD, "redis: LRANGE jobs:dead: %s",
                    !r                             ? ctx->errstr
                    : r->type == REDIS_REPLY_ERROR ? r->str
                                                   : "not a list");
            if (r)
                freeReplyObject(r);
            goto out;
        }
        jobs = sn_calloc(r->elements ? r->elements : 1, sizeof(ctl_job_t));
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_STRING)
                continue;
            ctl_job_t *job = &jobs[count++];
            if (s_read_job(ctx, ns, e->str, job) != SN_OK) {
                freeReplyObject(r);
                goto out;
            }
            if (!job->state)
                job->state = sn_strdup("dead"); /* the hash expired with its run */
        }
        freeReplyObject(r);
    } else {
        char *pattern = sn_strdupf("%sjob:*", ns);
        char cursor[32] = "0";
        do {
            const char *args[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", CTL_JOBS_SCAN_COUNT,
                                  "TYPE", "hash"};
            redisReply *r = redisCommandArgv(ctx, 8, args, NULL);
            if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
                ctl_err(CMD, "redis: SCAN: %s",
                        !r                             ? ctx->errstr
                        : r->type == REDIS_REPLY_ERROR ? r->str
                                                       : "bad reply");
                if (r)
                    freeReplyObject(r);
                free(pattern);
                goto out;
            }
            sn_strlcpy(cursor, r->element[0]->str, sizeof cursor);
            const redisReply *keys = r->element[1];
            for (size_t i = 0; i < keys->elements && count < CTL_JOBS_MAX; i++) {
                const char *id = keys->element[i]->str + strlen(ns) + strlen("job:");
                if (count == cap) {
                    cap = cap ? cap * 2 : 64;
                    jobs = sn_realloc(jobs, cap * sizeof(ctl_job_t));
                }
                ctl_job_t *job = &jobs[count];
                memset(job, 0, sizeof *job);
                if (s_read_job(ctx, ns, id, job) != SN_OK) {
                    freeReplyObject(r);
                    free(pattern);
                    goto out;
                }
                if (s_is_open(job))
                    count++;
                else
                    s_job_fini(job);
            }
            freeReplyObject(r);
        } while (strcmp(cursor, "0") != 0);
        free(pattern);
        if (count > 1)
            qsort(jobs, count, sizeof(ctl_job_t), s_cmp_job);
    }
    s_print(opts, jobs, count, now_ms);
    rc = CTL_EXIT_OK;
out:
    for (size_t i = 0; i < count; i++)
        s_job_fini(&jobs[i]);
    free(jobs);
    if (ctx)
        redisFree(ctx);
    sn_config_fini(&cfg);
    return rc;
}

static void s_help(void)
{
    printf("usage: sentinelctl jobs [--dead]\n\n"
           "Lists the open jobs of the job ledger (queued or claimed), oldest first, or\n"
           "with --dead the dead-lettered jobs, newest first.\n"
           "  table: JOB STATE KIND SERVICE ROLE ATTEMPT OWNER LEASE\n"
           "  json:  one document per job per line (NDJSON), see docs/operations.md\n");
}

/* Reads job:<id>; a missing hash leaves only the id set. */
static sn_rc_t s_read_job(redisContext *c, const char *ns, const char *id, ctl_job_t *job)
{
    memset(job, 0, sizeof *job);
    job->id = sn_strdup(id);
    char *key = sn_strdupf("%sjob:%s", ns, id);
    const char *args[] = {"HGETALL", key};
    redisReply *r = redisCommandArgv(c, 2, args, NULL);
    free(key);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        ctl_err(CMD, "redis: HGETALL job:%s: %s", id,
                !r                             ? c->errstr
                : r->type == REDIS_REPLY_ERROR ? r->str
                                               : "not a hash");
        if (r)
            freeReplyObject(r);
        return SN_ERROR;
    }
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *f = r->element[i], *v = r->element[i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        const char *name = f->str;
        if (strcmp(name, "kind") == 0) {
            s_set(&job->kind, v);
        } else if (strcmp(name, "service") == 0) {
            s_set(&job->service, v);
        } else if (strcmp(name, "owner_role") == 0) {
            s_set(&job->owner_role, v);
        } else if (strcmp(name, "correlation_id") == 0) {
            s_set(&job->correlation_id, v);
        } else if (strcmp(name, "attempt") == 0) {
            job->attempt = strtoll(v->str, NULL, 10);
        } else if (strcmp(name, "max_attempts") == 0) {
            job->max_attempts = strtoll(v->str, NULL, 10);
        } else if (strcmp(name, "lease_ms") == 0) {
            job->lease_ms = strtoll(v->str, NULL, 10);
        } else if (strcmp(name, "state") == 0) {
            s_set(&job->state, v);
        } else if (strcmp(name, "owner") == 0) {
            s_set(&job->owner, v);
        } else if (strcmp(name, "epoch") == 0) {
            s_set(&job->epoch, v);
        } else if (strcmp(name, "lease_deadline_ms") == 0 || strcmp(name, "lease_deadline") == 0 ||
                   strcmp(name, "deadline") == 0) {
            job->lease_deadline_ms = strtoll(v->str, NULL, 10);
        } else if (strcmp(name, "created_ms") == 0 || strcmp(name, "created") == 0) {
            job->created_ms = strtoll(v->str, NULL, 10);
        } else if (strcmp(name, "updated_ms") == 0 || strcmp(name, "updated") == 0) {
            job->updated_ms = strtoll(v->str, NULL, 10);
        } else if (strcmp(name, "reason") == 0 || strcmp(name, "error") == 0) {
            s_set(&job->reason, v);
        }
    }
    freeReplyObject(r);
    return SN_OK;
}

static void s_job_fini(ctl_job_t *job)
{
    free(job->id);
    free(job->state);
    free(job->owner);
    free(job->epoch);
    free(job->reason);
    free(job->kind);
    free(job->service);
    free(job->owner_role);
    free(job->correlation_id);
    memset(job, 0, sizeof *job);
}

static bool s_is_open(const ctl_job_t *job)
{
    return job->state && (strcmp(job->state, "queued") == 0 || strcmp(job->state, "claimed") == 0);
}

static void s_print(const ctl_opts_t *opts, ctl_job_t *jobs, size_t count, long long now_ms)
{
    if (opts->format == CTL_FORMAT_JSON) {
        for (size_t i = 0; i < count; i++) {
            const ctl_job_t *j = &jobs[i];
            json_t *doc = json_pack(
                "{s:s, s:s?, s:s?, s:s?, s:s?, s:s?, s:I, s:I, s:I, s:s?, s:s?, s:I, s:I, s:I, "
                "s:s?}",
                "id", j->id, "state", j->state, "kind", j->kind, "service", j->service,
                "owner_role", j->owner_role, "correlation_id", j->correlation_id, "attempt",
                (json_int_t)j->attempt, "max_attempts", (json_int_t)j->max_attempts, "lease_ms",
                (json_int_t)j->lease_ms, "owner", j->owner, "epoch", j->epoch, "lease_deadline_ms",
                (json_int_t)j->lease_deadline_ms, "created_ms", (json_int_t)j->created_ms,
                "updated_ms", (json_int_t)j->updated_ms, "reason", j->reason);
            SN_ASSERT(doc);
            ctl_json_print(doc);
            json_decref(doc);
        }
        return;
    }
    const char *headers[] = {"JOB",     "STATE", "KIND",  "SERVICE", "ROLE",
                             "ATTEMPT", "OWNER", "LEASE", NULL};
    ctl_table_t *t = ctl_table_new(headers);
    for (size_t i = 0; i < count; i++) {
        const ctl_job_t *j = &jobs[i];
        char attempt[48] = "-", lease[32] = "-";
        if (j->attempt > 0)
            snprintf(attempt, sizeof attempt, "%lld/%lld", j->attempt, j->max_attempts);
        if (j->lease_deadline_ms > 0 && now_ms > 0) {
            long long left = j->lease_deadline_ms - now_ms;
            char age[24];
            ctl_format_age(left < 0 ? -left : left, age, sizeof age);
            snprintf(lease, sizeof lease, "%s%s", left < 0 ? "lapsed " : "", age);
        }
        const char *cells[] = {j->id,         j->state, j->kind,  j->service,
                               j->owner_role, attempt,  j->owner, lease};
        ctl_table_add_row(t, cells, SN_ARRAY_LEN(cells));
    }
    if (ctl_table_rows(t) == 0 && ctl_output_is_tty())
        fprintf(stderr, "no jobs\n");
    else
        ctl_table_print(t);
    ctl_table_destroy(&t);
}

/* Redis TIME in ms (leases are in Redis time), or 0. */
static long long s_redis_time_ms(redisContext *c)
{
    redisReply *r = redisCommand(c, "TIME");
    long long ms = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2)
        ms = strtoll(r->element[0]->str, NULL, 10) * 1000 +
             strtoll(r->element[1]->str, NULL, 10) / 1000;
    if (r)
        freeReplyObject(r);
    return ms;
}

static int s_cmp_job(const void *a, const void *b)
{
    const ctl_job_t *x = a, *y = b;
    if (x->created_ms != y->created_ms)
        return x->created_ms < y->created_ms ? -1 : 1;
    return strcmp(x->id, y->id);
}

static void s_set(char **slot, const redisReply *v)
{
    free(*slot);
    *slot = sn_strndup(v->str, v->len);
}
