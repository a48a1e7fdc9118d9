/* `sentinelctl status`: the agents registered in Redis under
 * `<ns>agent:<role>:<instance>` (the runtime writes a hash: role, instance, agent, host,
 * pid, version, config_hash, leader, fence, started_ms, seen_ms, counters; a string
 * value holding a JSON object or AgentInfo protobuf bytes is read too), and the broker's
 * services (a `broker.services` call, docs/protocol.md §7.1). Prints what it could read;
 * exits 1 if Redis or the broker did not answer. */
#include "ctl.h"

#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_envelope.h"
#include "sentinel/sn_rpc.h"
#include "sentinel/v1/mesh.pb-c.h"

#define CMD "status"
#define CTL_STATUS_TIMEOUT_MS 2000
#define CTL_STATUS_MAX_AGENTS 10000

typedef struct {
    char *role;
    char *instance;
    char *host;
    long long pid;
    char *version;
    char *config_hash;
    bool is_leader;
    unsigned long long fence;
    long long started_unix_ms;
    long long seen_unix_ms;
    long long ttl_ms;
    char *agent;      /* the agent a role belongs to, e.g. "BuildPilot" */
    json_t *counters; /* the metrics pushed with the heartbeat, or NULL */
} ctl_agent_t;

static void s_help(void);
static sn_rc_t s_read_agents(redisContext *c, const char *ns, ctl_agent_t **out, size_t *count);
static void s_agent_from_key(redisContext *c, const char *key, const char *ns, ctl_agent_t *a);
static void s_agent_fini(ctl_agent_t *a);
static sn_envelope_t *s_services(const sn_config_t *cfg, int timeout_ms);
static int s_cmp_agent(const void *x, const void *y);

int ctl_cmd_status(ctl_opts_t *opts, int argc, char **argv)
{
    static const struct option longopts[] = {CTL_COMMON_LONGOPTS,
                                             {"timeout", required_argument, NULL, CTL_OPT_TIMEOUT},
                                             {NULL, 0, NULL, 0}};
    int64_t timeout_ms = CTL_STATUS_TIMEOUT_MS;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":" CTL_COMMON_SHORTOPTS, longopts, NULL)) != -1) {
        int handled = ctl_opts_handle(opts, CMD, c, optarg);
        if (handled < 0)
            return CTL_EXIT_USAGE;
        if (handled > 0)
            continue;
        if (c == CTL_OPT_TIMEOUT) {
            if (sn_parse_i64(optarg, 1, 600000, &timeout_ms) != SN_OK)
                return ctl_usage_error(CMD, "--timeout must be milliseconds in [1, 600000]");
        } else {
            return ctl_bad_option(CMD, c, argv);
        }
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
    int rc = CTL_EXIT_OK;
    ctl_agent_t *agents = NULL;
    size_t agent_count = 0;
    bool is_redis_ok = false;
    long long now_ms = sn_wall_ms();
    redisContext *ctx = ctl_redis_connect(CMD, &cfg);
    if (ctx && s_read_agents(ctx, ns, &agents, &agent_count) == SN_OK)
        is_redis_ok = true;
    else
        rc = CTL_EXIT_FAIL;
    sn_envelope_t *services = s_services(&cfg, (int)timeout_ms);
    if (!services)
        rc = CTL_EXIT_FAIL;
    const Sentinel__V1__ServiceList *list =
        services && services->body_case == SENTINEL__V1__ENVELOPE__BODY_SERVICES
            ? services->services
            : NULL;

    if (opts->format == CTL_FORMAT_JSON) {
        json_t *ja = json_array();
        for (size_t i = 0; i < agent_count; i++) {
            const ctl_agent_t *a = &agents[i];
            json_array_append_new(
                ja,
                json_pack("{s:s?, s:s?, s:s?, s:s?, s:I, s:s?, s:s?, s:b, s:I, s:I, s:I, s:I, "
                          "s:O?}",
                          "role", a->role, "instance", a->instance, "agent", a->agent, "host",
                          a->host, "pid", (json_int_t)a->pid, "version", a->version, "config_hash",
                          a->config_hash, "is_leader", a->is_leader, "fence", (json_int_t)a->fence,
                          "started_unix_ms", (json_int_t)a->started_unix_ms, "seen_unix_ms",
                          (json_int_t)a->seen_unix_ms, "ttl_ms", (json_int_t)a->ttl_ms, "counters",
                          a->counters));
        }
        json_t *js = json_array();
        for (size_t i = 0; list && i < list->n_services; i++) {
            const Sentinel__V1__ServiceInfo *s = list->services[i];
            json_array_append_new(
                js, json_pack("{s:s, s:I, s:I, s:I, s:I}", "name", s->name, "workers",
                              (json_int_t)s->workers, "idle_credit", (json_int_t)s->idle_credit,
                              "queued", (json_int_t)s->queued, "served", (json_int_t)s->served));
        }
        json_t *counters = json_object();
        for (size_t i = 0; services && i < services->n_labels; i++)
            json_object_set_new(counters, services->labels[i]->key,
                                json_string(services->labels[i]->value));
        json_t *doc =
            json_pack("{s:{s:b}, s:{s:s?, s:b, s:o}, s:o, s:o}", "redis", "reachable", is_redis_ok,
                      "broker", "rpc", cfg.broker.rpc, "reachable", services != NULL, "counters",
                      counters, "agents", ja, "services", js);
        SN_ASSERT(doc);
        ctl_json_print(doc);
        json_decref(doc);
    } else {
        const char *headers[] = {"ROLE",    "INSTANCE", "AGENT",  "HOST", "PID",
                                 "VERSION", "LEADER",   "UPTIME", "SEEN", NULL};
        ctl_table_t *t = ctl_table_new(headers);
        for (size_t i = 0; i < agent_count; i++) {
            const ctl_agent_t *a = &agents[i];
            char pid[24] = "-", age[24] = "-", seen[32] = "-";
            if (a->pid > 0)
                snprintf(pid, sizeof pid, "%lld", a->pid);
            if (a->started_unix_ms > 0)
                ctl_format_age(now_ms - a->started_unix_ms, age, sizeof age);
            if (a->seen_unix_ms > 0) {
                ctl_format_age(now_ms - a->seen_unix_ms, seen, sizeof seen - 4);
                size_t sl = strlen(seen);
                snprintf(seen + sl, sizeof seen - sl, " ago");
            }
            const char *cells[] = {a->role,
                                   a->instance,
                                   a->agent,
                                   a->host,
                                   pid,
                                   a->version,
                                   a->is_leader ? "yes" : "no",
                                   age,
                                   seen};
            ctl_table_add_row(t, cells, SN_ARRAY_LEN(cells));
        }
        if (ctl_output_is_tty())
            printf("%sagents%s (%zu)\n", ctl_color("bold"), ctl_color("reset"), agent_count);
        ctl_table_print(t);
        ctl_table_destroy(&t);
        const char *sheaders[] = {"SERVICE", "WORKERS", "IDLE_CREDIT", "QUEUED", "SERVED", NULL};
        ctl_table_t *st = ctl_table_new(sheaders);
        for (size_t i = 0; list && i < list->n_services; i++) {
            const Sentinel__V1__ServiceInfo *s = list->services[i];
            char w[16], ic[16], q[16], sv[24];
            snprintf(w, sizeof w, "%u", s->workers);
            snprintf(ic, sizeof ic, "%u", s->idle_credit);
            snprintf(q, sizeof q, "%u", s->queued);
            snprintf(sv, sizeof sv, "%llu", (unsigned long long)s->served);
            const char *cells[] = {s->name, w, ic, q, sv};
            ctl_table_add_row(st, cells, SN_ARRAY_LEN(cells));
        }
        if (ctl_output_is_tty())
            printf("\n%sservices%s (%zu)\n", ctl_color("bold"), ctl_color("reset"),
                   list ? list->n_services : 0);
        ctl_table_print(st);
        ctl_table_destroy(&st);
    }

    for (size_t i = 0; i < agent_count; i++)
        s_agent_fini(&agents[i]);
    free(agents);
    sn_envelope_free(&services);
    if (ctx)
        redisFree(ctx);
    sn_config_fini(&cfg);
    return rc;
}

static void s_help(void)
{
    printf("usage: sentinelctl status [--timeout MS]\n\n"
           "Shows the agents registered in Redis and the services the broker knows.\n"
           "  table: ROLE INSTANCE AGENT HOST PID VERSION LEADER UPTIME SEEN, then\n"
           "         SERVICE WORKERS IDLE_CREDIT QUEUED SERVED (tab-separated when piped)\n"
           "  json:  {\"redis\":{..},\"broker\":{..},\"agents\":[..],\"services\":[..]}\n"
           "      --timeout MS  wait for the broker at most MS (default %d)\n"
           "exit 1 if Redis or the broker did not answer (what could be read is printed).\n",
           CTL_STATUS_TIMEOUT_MS);
}

static sn_rc_t s_read_agents(redisContext *c, const char *ns, ctl_agent_t **out, size_t *count)
{
    char *pattern = sn_strdupf("%sagent:*", ns);
    char cursor[32] = "0";
    size_t cap = 0;
    sn_rc_t rc = SN_OK;
    do {
        const char *args[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "500"};
        redisReply *r = redisCommandArgv(c, 6, args, NULL);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            ctl_err(CMD, "redis: SCAN: %s",
                    !r                             ? c->errstr
                    : r->type == REDIS_REPLY_ERROR ? r->str
                                                   : "bad reply");
            if (r)
                freeReplyObject(r);
            rc = SN_ERROR;
            break;
        }
        sn_strlcpy(cursor, r->element[0]->str, sizeof cursor);
        const redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements && *count < CTL_STATUS_MAX_AGENTS; i++) {
            if (*count == cap) {
                cap = cap ? cap * 2 : 16;
                *out = sn_realloc(*out, cap * sizeof(ctl_agent_t));
            }
            ctl_agent_t *a = &(*out)[*count];
            memset(a, 0, sizeof *a);
            s_agent_from_key(c, keys->element[i]->str, ns, a);
            (*count)++;
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    free(pattern);
    if (*count > 1)
        qsort(*out, *count, sizeof(ctl_agent_t), s_cmp_agent);
    return rc;
}

static void s_set_str(char **slot, const char *v, size_t len)
{
    free(*slot);
    *slot = sn_strndup(v, len);
}

/* Whatever the registration holds, the key itself names role and instance. */
static void s_agent_from_key(redisContext *c, const char *key, const char *ns, ctl_agent_t *a)
{
    const char *rest = key + strlen(ns) + strlen("agent:");
    const char *colon = strchr(rest, ':');
    a->role = colon ? sn_strndup(rest, (size_t)(colon - rest)) : sn_strdup(rest);
    a->instance = sn_strdup(colon ? colon + 1 : "");
    a->ttl_ms = -1;
    redisReply *r = redisCommand(c, "PTTL %s", key);
    if (r && r->type == REDIS_REPLY_INTEGER)
        a->ttl_ms = r->integer;
    if (r)
        freeReplyObject(r);
    r = redisCommand(c, "TYPE %s", key);
    bool is_hash = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "hash") == 0;
    bool is_string = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "string") == 0;
    if (r)
        freeReplyObject(r);
    if (is_hash) {
        r = redisCommand(c, "HGETALL %s", key);
        for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
            const redisReply *f = r->element[i], *v = r->element[i + 1];
            if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            if (strcmp(f->str, "host") == 0)
                s_set_str(&a->host, v->str, v->len);
            else if (strcmp(f->str, "pid") == 0)
                a->pid = strtoll(v->str, NULL, 10);
            else if (strcmp(f->str, "version") == 0)
                s_set_str(&a->version, v->str, v->len);
            else if (strcmp(f->str, "config_hash") == 0)
                s_set_str(&a->config_hash, v->str, v->len);
            else if (strcmp(f->str, "is_leader") == 0 || strcmp(f->str, "leader") == 0)
                a->is_leader = strcmp(v->str, "1") == 0 || strcmp(v->str, "true") == 0;
            else if (strcmp(f->str, "fence") == 0)
                a->fence = strtoull(v->str, NULL, 10);
            else if (strcmp(f->str, "started_unix_ms") == 0 || strcmp(f->str, "started_ms") == 0)
                a->started_unix_ms = strtoll(v->str, NULL, 10);
            else if (strcmp(f->str, "seen_ms") == 0 || strcmp(f->str, "seen_unix_ms") == 0)
                a->seen_unix_ms = strtoll(v->str, NULL, 10);
            else if (strcmp(f->str, "agent") == 0)
                s_set_str(&a->agent, v->str, v->len);
            else if (strcmp(f->str, "role") == 0)
                s_set_str(&a->role, v->str, v->len);
            else if (strcmp(f->str, "instance") == 0)
                s_set_str(&a->instance, v->str, v->len);
            else if (strcmp(f->str, "counters") == 0) {
                json_decref(a->counters);
                a->counters = json_loadb(v->str, v->len, 0, NULL);
            }
        }
        if (r)
            freeReplyObject(r);
        return;
    }
    if (!is_string)
        return;
    r = redisCommand(c, "GET %s", key);
    if (r && r->type == REDIS_REPLY_STRING && r->len > 0 && r->str[0] == '{') {
        json_t *doc = json_loadb(r->str, r->len, 0, NULL);
        if (doc) {
            const char *s;
            if ((s = json_string_value(json_object_get(doc, "host"))))
                s_set_str(&a->host, s, strlen(s));
            if ((s = json_string_value(json_object_get(doc, "version"))))
                s_set_str(&a->version, s, strlen(s));
            if ((s = json_string_value(json_object_get(doc, "config_hash"))))
                s_set_str(&a->config_hash, s, strlen(s));
            a->pid = json_integer_value(json_object_get(doc, "pid"));
            a->is_leader = json_is_true(json_object_get(doc, "is_leader"));
            json_t *st = json_object_get(doc, "started_unix_ms");
            a->started_unix_ms = json_is_string(st) ? strtoll(json_string_value(st), NULL, 10)
                                                    : json_integer_value(st);
            if ((s = json_string_value(json_object_get(doc, "agent"))))
                s_set_str(&a->agent, s, strlen(s));
            json_decref(doc);
        }
    } else if (r && r->type == REDIS_REPLY_STRING) {
        Sentinel__V1__AgentInfo *info =
            sentinel__v1__agent_info__unpack(NULL, r->len, (const uint8_t *)r->str);
        if (info) {
            s_set_str(&a->host, info->host, strlen(info->host));
            s_set_str(&a->version, info->version, strlen(info->version));
            s_set_str(&a->config_hash, info->config_hash, strlen(info->config_hash));
            a->pid = info->pid;
            a->is_leader = info->is_leader;
            a->fence = info->fence;
            a->started_unix_ms = info->started_unix_ms;
            sentinel__v1__agent_info__free_unpacked(info, NULL);
        }
    }
    if (r)
        freeReplyObject(r);
}

static void s_agent_fini(ctl_agent_t *a)
{
    free(a->role);
    free(a->instance);
    free(a->host);
    free(a->version);
    free(a->config_hash);
    free(a->agent);
    json_decref(a->counters);
}

/* The broker's own reply to broker.services, or NULL (reported on stderr). */
static sn_envelope_t *s_services(const sn_config_t *cfg, int timeout_ms)
{
    sn_rpc_t *rpc = ctl_rpc_new(CMD, cfg);
    if (!rpc)
        return NULL;
    sn_source_t src;
    sn_source_init(&src, "ctl", "status");
    sn_envelope_t req;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&req, &src, "broker.services", id);
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&req, &len);
    uint8_t *reply = NULL;
    size_t reply_len = 0;
    sn_nak_reason_t nak = SN_NAK_NONE;
    sn_envelope_t *env = NULL;
    sn_rc_t rc =
        sn_rpc_call(rpc, "broker.services", bytes, len, timeout_ms, &reply, &reply_len, &nak);
    if (rc == SN_OK) {
        const char *why = NULL;
        env = sn_envelope_unpack(reply, reply_len, SN_MAX_FRAME_BYTES, &why);
        if (!env)
            ctl_err(CMD, "broker: the broker.services reply is not an envelope (%s)", why);
    } else if (rc == SN_DECLINED) {
        ctl_err(CMD, "broker: broker.services: NAK %s", sn_nak_reason_name(nak));
    } else {
        ctl_err(CMD, "broker: no answer from %s within %dms", cfg->broker.rpc, timeout_ms);
    }
    free(reply);
    free(bytes);
    sn_rpc_destroy(&rpc);
    return env;
}

static int s_cmp_agent(const void *x, const void *y)
{
    const ctl_agent_t *a = x, *b = y;
    int c = strcmp(a->role, b->role);
    return c ? c : strcmp(a->instance, b->instance);
}
