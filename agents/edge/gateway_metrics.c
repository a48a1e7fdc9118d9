/* The agent registry (agent:<role>:<instance> hashes the runtime writes with each
 * heartbeat) as JSON for /api/v1/agents, and as Prometheus text exposition 0.0.4 for
 * /metrics (contracts/sse-and-metrics.md §b): every counter of every agent, labelled
 * role and instance, names sanitised to pass promtool's lint — snake_case, a "sentinel_"
 * prefix, no abbreviated units (a trailing _ms becomes _seconds and the value is scaled),
 * no reserved suffixes, counter TYPE only for names ending in _total (the rest are
 * gauges); sn_metrics histograms (<name>_bucket_le_<ms>, _sum_ms, _count) become real
 * histograms in seconds. One HELP and TYPE per family, families sorted, each family's
 * samples together, no duplicate series. */
#include "gateway.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_SCAN_ROUNDS 1000
#define S_NAME_MAX 200

/* ---- the registry ----------------------------------------------------------------------- */

static char *s_camel(const char *snake)
{
    char *out = sn_strdup(snake);
    size_t o = 0;
    for (size_t i = 0; snake[i]; i++) {
        if (snake[i] == '_' && snake[i + 1]) {
            out[o++] = (char)toupper((unsigned char)snake[++i]);
            continue;
        }
        out[o++] = snake[i];
    }
    out[o] = '\0';
    return out;
}

static json_t *s_agent_json(const redisReply *h)
{
    json_t *a = json_object();
    for (size_t i = 0; i + 1 < h->elements; i += 2) {
        const redisReply *k = h->element[i], *v = h->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        int64_t n = 0;
        json_t *value;
        if (strcmp(k->str, "counters") == 0) {
            value = json_loadb(v->str, v->len, 0, NULL);
            if (!value || !json_is_object(value)) {
                json_decref(value);
                value = json_object();
            }
        } else if (strcmp(k->str, "leader") == 0) {
            value = json_boolean(strcmp(v->str, "1") == 0);
        } else if ((strcmp(k->str, "pid") == 0 || strcmp(k->str, "started_ms") == 0 ||
                    strcmp(k->str, "seen_ms") == 0) &&
                   sn_parse_i64(v->str, INT64_MIN, INT64_MAX, &n) == SN_OK) {
            value = json_integer(n);
        } else {
            value = json_stringn(v->str, v->len);
            if (!value)
                continue; /* not UTF-8 */
        }
        char *name = s_camel(k->str);
        json_object_set_new(a, name, value);
        free(name);
    }
    return a;
}

static const char *s_str(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

static int s_agent_cmp(const void *a, const void *b)
{
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    int c = strcmp(s_str(x, "role"), s_str(y, "role"));
    return c ? c : strcmp(s_str(x, "instance"), s_str(y, "instance"));
}

json_t *gateway_agents_load(gateway_t *gw)
{
    const char *ns = sn_redis_ns(gw->redis);
    /* The namespace is literal text in the MATCH pattern: escape glob characters. */
    size_t n = strlen(ns);
    char *pattern = sn_malloc(2 * n + sizeof "agent:*");
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (strchr("*?[]\\", ns[i]))
            pattern[o++] = '\\';
        pattern[o++] = ns[i];
    }
    memcpy(pattern + o, "agent:*", sizeof "agent:*");
    json_t *list = json_array();
    char cursor[32] = "0";
    bool ok = true;
    for (int round = 0; round < S_SCAN_ROUNDS && ok; round++) {
        const char *argv[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "200"};
        redisReply *r = NULL;
        if (sn_redis_cmd(gw->redis, SN_REDIS_MAIN, GATEWAY_REDIS_TIMEOUT_MS, &r, 6, argv, NULL) !=
                SN_OK ||
            r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING) {
            if (r)
                freeReplyObject(r);
            ok = false;
            break;
        }
        sn_strlcpy(cursor, r->element[0]->str, sizeof cursor);
        const redisReply *keys = r->element[1];
        for (size_t i = 0; keys->type == REDIS_REPLY_ARRAY && i < keys->elements && ok; i++) {
            if (keys->element[i]->type != REDIS_REPLY_STRING)
                continue;
            const char *hargv[] = {"HGETALL", keys->element[i]->str};
            redisReply *h = NULL;
            if (sn_redis_cmd(gw->redis, SN_REDIS_MAIN, GATEWAY_REDIS_TIMEOUT_MS, &h, 2, hargv,
                             NULL) != SN_OK) {
                ok = false;
                break;
            }
            /* Another type under agent:* (or a key that expired meanwhile): skip it. */
            if (h->type == REDIS_REPLY_ARRAY && h->elements > 0) {
                json_t *a = s_agent_json(h);
                if (json_string_value(json_object_get(a, "role")) &&
                    json_string_value(json_object_get(a, "instance")))
                    json_array_append_new(list, a);
                else
                    json_decref(a);
            }
            freeReplyObject(h);
        }
        freeReplyObject(r);
        if (strcmp(cursor, "0") == 0)
            break;
    }
    free(pattern);
    if (!ok) {
        json_decref(list);
        return NULL;
    }
    size_t count = json_array_size(list);
    json_t **items = sn_calloc(count ? count : 1, sizeof *items);
    for (size_t i = 0; i < count; i++)
        items[i] = json_incref(json_array_get(list, i));
    qsort(items, count, sizeof *items, s_agent_cmp);
    json_array_clear(list);
    for (size_t i = 0; i < count; i++)
        json_array_append_new(list, items[i]);
    free(items);
    return list;
}

/* ---- exposition ---------------------------------------------------------------------------- */

typedef enum { S_GAUGE, S_COUNTER, S_HISTOGRAM } s_type_t;

typedef struct {
    char family[S_NAME_MAX];
    s_type_t type;
    char *line; /* the sample line(s), ending in '\n' */
    size_t order;
} s_sample_t;

typedef struct {
    s_sample_t *items;
    size_t count, cap;
} s_samples_t;

static void s_push(s_samples_t *s, const char *family, s_type_t type, char *line)
{
    if (s->count == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->items = sn_realloc(s->items, s->cap * sizeof *s->items);
    }
    s_sample_t *x = &s->items[s->count];
    sn_strlcpy(x->family, family, sizeof x->family);
    x->type = type;
    x->line = line;
    x->order = s->count++;
}

static int s_sample_cmp(const void *a, const void *b)
{
    const s_sample_t *x = a, *y = b;
    int c = strcmp(x->family, y->family);
    if (c)
        return c;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* A label value with \\, \" and \n escaped (caller frees). */
static char *s_label(const char *v)
{
    size_t n = strlen(v);
    char *out = sn_malloc(2 * n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] == '\\' || v[i] == '"') {
            out[o++] = '\\';
            out[o++] = v[i];
        } else if (v[i] == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = v[i];
        }
    }
    out[o] = '\0';
    return out;
}

static bool s_is_abbrev(const char *part)
{
    static const char *const abbrev[] = {"s",  "ms", "us", "ns", "sec", "b", "kb", "mb",
                                         "gb", "tb", "pb", "m",  "h",   "d", NULL};
    for (size_t i = 0; abbrev[i]; i++)
        if (strcmp(part, abbrev[i]) == 0)
            return true;
    return false;
}

/* snake_case of @in into @out: camelCase split, other characters '_', runs collapsed. */
static void s_snake(const char *in, char *out, size_t out_len)
{
    size_t o = 0;
    for (size_t i = 0; in[i] && o + 2 < out_len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (isupper(c)) {
            if (i > 0 && (islower((unsigned char)in[i - 1]) || isdigit((unsigned char)in[i - 1])) &&
                o > 0 && out[o - 1] != '_')
                out[o++] = '_';
            out[o++] = (char)tolower(c);
        } else if (islower(c) || isdigit(c)) {
            out[o++] = (char)c;
        } else if (o > 0 && out[o - 1] != '_') {
            out[o++] = '_';
        }
    }
    while (o > 0 && out[o - 1] == '_')
        o--;
    out[o] = '\0';
}

/* The family name for counter @raw: "sentinel_" + sanitised parts. *scale receives the
 * factor the value is multiplied by (unit conversion), *type the TYPE. */
static void s_family(const char *raw, char *out, size_t out_len, double *scale, s_type_t *type)
{
    char snake[S_NAME_MAX];
    s_snake(raw, snake, sizeof snake);
    *scale = 1;
    size_t o = (size_t)snprintf(out, out_len, "sentinel");
    char *parts[64];
    size_t np = 0;
    for (char *p = snake; *p && np < SN_ARRAY_LEN(parts);) {
        parts[np++] = p;
        char *u = strchr(p, '_');
        if (!u)
            break;
        *u = '\0';
        p = u + 1;
    }
    bool has_unit = false;
    for (size_t i = 0; i < np; i++) {
        const char *part = parts[i];
        if (strcmp(part, "ms") == 0 && !has_unit) {
            part = "seconds";
            *scale = 0.001;
            has_unit = true;
        } else if (strcmp(part, "us") == 0 && !has_unit) {
            part = "seconds";
            *scale = 1e-6;
            has_unit = true;
        } else if ((strcmp(part, "s") == 0 || strcmp(part, "sec") == 0) && !has_unit) {
            part = "seconds";
            has_unit = true;
        } else if (s_is_abbrev(part) || strcmp(part, "counter") == 0 ||
                   strcmp(part, "gauge") == 0 || strcmp(part, "histogram") == 0 ||
                   strcmp(part, "summary") == 0) {
            o += (size_t)snprintf(out + o, o < out_len ? out_len - o : 0, "_%sx", part);
            continue;
        }
        o += (size_t)snprintf(out + o, o < out_len ? out_len - o : 0, "_%s", part);
    }
    if (o >= out_len)
        out[out_len - 1] = '\0';
    size_t len = strlen(out);
    /* Reserved suffixes belong to histograms and summaries. */
    static const char *const reserved[] = {"_bucket", "_count", "_sum", "_info", NULL};
    for (size_t i = 0; reserved[i]; i++) {
        size_t rl = strlen(reserved[i]);
        if (len > rl && strcmp(out + len - rl, reserved[i]) == 0 && len + 7 < out_len) {
            memcpy(out + len, "_value", 7);
            len += 6;
        }
    }
    *type = len > 6 && strcmp(out + len - 6, "_total") == 0 ? S_COUNTER : S_GAUGE;
}

static void s_value(char *out, size_t out_len, int64_t v, double scale)
{
    if (scale == 1)
        snprintf(out, out_len, "%lld", (long long)v);
    else
        snprintf(out, out_len, "%.9g", (double)v * scale);
}

/* Counters of one agent: histograms first collected by base name. */
static void s_agent_samples(s_samples_t *s, const json_t *agent)
{
    char *role = s_label(s_str(agent, "role"));
    char *instance = s_label(s_str(agent, "instance"));
    char labels[512];
    snprintf(labels, sizeof labels, "role=\"%s\",instance=\"%s\"", role, instance);
    json_t *counters = json_object_get(agent, "counters");
    const char *name;
    json_t *value;
    /* Histograms: every <base>_bucket_le_<ms>. */
    json_t *bases = json_object();
    json_object_foreach(counters, name, value)
    {
        const char *b = strstr(name, "_bucket_le_");
        if (b && json_is_integer(value)) {
            char *base = sn_strndup(name, (size_t)(b - name));
            json_object_set_new(bases, base, json_true());
            free(base);
        }
    }
    json_object_foreach(bases, name, value)
    {
        char fam[S_NAME_MAX];
        double scale;
        s_type_t type;
        s_family(name, fam, sizeof fam - 16, &scale, &type);
        size_t fl = strlen(fam);
        if (fl < 8 || strcmp(fam + fl - 8, "_seconds") != 0)
            memcpy(fam + fl, "_seconds", 9);
        /* Buckets sorted by bound. */
        double bounds[64];
        int64_t counts[64];
        size_t nb = 0;
        const char *k;
        json_t *v;
        size_t bl = strlen(name);
        json_object_foreach(counters, k, v)
        {
            if (strncmp(k, name, bl) != 0 || strncmp(k + bl, "_bucket_le_", 11) != 0 ||
                nb >= SN_ARRAY_LEN(bounds))
                continue;
            char *end = NULL;
            double ms = strtod(k + bl + 11, &end);
            if (!end || *end || !isfinite(ms))
                continue;
            size_t at = nb++;
            while (at > 0 && bounds[at - 1] > ms) {
                bounds[at] = bounds[at - 1];
                counts[at] = counts[at - 1];
                at--;
            }
            bounds[at] = ms;
            counts[at] = json_integer_value(v);
        }
        char *sum_key = sn_strdupf("%s_sum_ms", name);
        char *count_key = sn_strdupf("%s_count", name);
        int64_t sum_ms = json_integer_value(json_object_get(counters, sum_key));
        int64_t count = json_integer_value(json_object_get(counters, count_key));
        free(sum_key);
        free(count_key);
        size_t cap = 256 * (nb + 3);
        char *text = sn_malloc(cap);
        size_t o = 0;
        for (size_t i = 0; i < nb; i++)
            o += (size_t)snprintf(text + o, cap - o, "%s_bucket{%s,le=\"%.9g\"} %lld\n", fam,
                                  labels, bounds[i] / 1000.0, (long long)counts[i]);
        o += (size_t)snprintf(text + o, cap - o, "%s_bucket{%s,le=\"+Inf\"} %lld\n", fam, labels,
                              (long long)count);
        o += (size_t)snprintf(text + o, cap - o, "%s_sum{%s} %.9g\n", fam, labels,
                              (double)sum_ms / 1000.0);
        snprintf(text + o, cap - o, "%s_count{%s} %lld\n", fam, labels, (long long)count);
        s_push(s, fam, S_HISTOGRAM, text);
    }
    json_object_foreach(counters, name, value)
    {
        if (!json_is_integer(value) || strstr(name, "_bucket_le_"))
            continue;
        size_t nl = strlen(name);
        bool is_hist_part = false;
        const char *hk;
        json_t *hv;
        json_object_foreach(bases, hk, hv)
        {
            size_t hl = strlen(hk);
            if (nl > hl && strncmp(name, hk, hl) == 0 &&
                (strcmp(name + hl, "_sum_ms") == 0 || strcmp(name + hl, "_count") == 0))
                is_hist_part = true;
        }
        if (is_hist_part)
            continue;
        char fam[S_NAME_MAX];
        double scale;
        s_type_t type;
        s_family(name, fam, sizeof fam, &scale, &type);
        char v[48];
        s_value(v, sizeof v, json_integer_value(value), scale);
        s_push(s, fam, type, sn_strdupf("%s{%s} %s\n", fam, labels, v));
    }
    json_decref(bases);
    /* Who is there, and who leads. */
    char *version = s_label(s_str(agent, "version"));
    char *host = s_label(s_str(agent, "host"));
    s_push(s, "sentinel_agent_info", S_GAUGE,
           sn_strdupf("sentinel_agent_info{%s,host=\"%s\",version=\"%s\"} 1\n", labels, host,
                      version));
    s_push(s, "sentinel_agent_leader", S_GAUGE,
           sn_strdupf("sentinel_agent_leader{%s} %d\n", labels,
                      json_is_true(json_object_get(agent, "leader")) ? 1 : 0));
    free(version);
    free(host);
    free(role);
    free(instance);
}

char *gateway_metrics_render_agents(const json_t *agents)
{
    s_samples_t s = {0};
    for (size_t i = 0; i < json_array_size(agents); i++)
        s_agent_samples(&s, json_array_get(agents, i));
    qsort(s.items, s.count, sizeof *s.items, s_sample_cmp);
    size_t cap = 1024, len = 0;
    char *out = sn_malloc(cap);
    out[0] = '\0';
    static const char *const type_names[] = {"gauge", "counter", "histogram"};
    for (size_t i = 0; i < s.count;) {
        const char *fam = s.items[i].family;
        s_type_t type = s.items[i].type;
        char head[S_NAME_MAX * 2 + 128];
        int hn = snprintf(head, sizeof head,
                          "# HELP %s Sentinel agent counter, from the heartbeats.\n# TYPE %s %s\n",
                          fam, fam, type_names[type]);
        /* Every line of one family; a later kind under the same name, or the same series
         * twice (two counters sanitised to one name), is dropped. */
        size_t j = i;
        for (; j < s.count && strcmp(s.items[j].family, fam) == 0; j++) {
            const char *line = s.items[j].line;
            const char *brace = strchr(line, '}');
            size_t key_len = brace ? (size_t)(brace - line) : strlen(line);
            bool dup = s.items[j].type != type;
            for (size_t k = i; k < j && !dup; k++) {
                const char *o = s.items[k].line;
                const char *ob = strchr(o, '}');
                size_t ol = ob ? (size_t)(ob - o) : strlen(o);
                dup = ol == key_len && memcmp(o, line, ol) == 0 && s.items[k].type == type;
            }
            if (dup)
                continue;
            size_t need = (j == i ? (size_t)hn : 0) + strlen(line) + 1;
            if (len + need > cap) {
                cap = (len + need) * 2;
                out = sn_realloc(out, cap);
            }
            if (j == i) {
                memcpy(out + len, head, (size_t)hn);
                len += (size_t)hn;
            }
            memcpy(out + len, line, strlen(line));
            len += strlen(line);
            out[len] = '\0';
        }
        i = j;
    }
    for (size_t i = 0; i < s.count; i++)
        free(s.items[i].line);
    free(s.items);
    return out;
}

char *gateway_metrics_render(gateway_t *gw)
{
    json_t *agents = gateway_agents_load(gw);
    if (!agents)
        return NULL;
    char *text = gateway_metrics_render_agents(agents);
    json_decref(agents);
    return text;
}
