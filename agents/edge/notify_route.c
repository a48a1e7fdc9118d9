/* The notifier's routing as pure functions: labels, matchers, the compiled route tree,
 * group keys, inhibition and durations (contract in notify_route.h). Inheritance is
 * resolved once when the tree is compiled, so routing an event is a walk over plain
 * structs. */
#include "notify_route.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_crypto.h"

#define S_SEP '\x1f'
#define S_MAX_DEPTH 16

const char *const notify_label_names[NOTIFY_LABEL_COUNT] = {"severity", "project", "environment",
                                                            "target",   "type",    "alertname"};

enum { S_L_SEVERITY = 0, S_L_PROJECT, S_L_ENVIRONMENT, S_L_TARGET, S_L_TYPE, S_L_ALERTNAME };

static const char *const s_default_group_by[] = {"project", "environment", "type", NULL};
static const char *const s_group_by_all[] = {"...", NULL};

static char *s_default_source[] = {"severity=critical", "type=deploy.*", NULL};
static char *s_default_target[] = {"severity=warning", NULL};
static char *s_default_equal[] = {"project", "environment", NULL};
static const sn_inhibit_config_t s_default_rule = {
    .source_match = s_default_source, .target_match = s_default_target, .equal = s_default_equal};

struct notify_tree {
    notify_route_t root;
    bool is_legacy;
    const sn_inhibit_config_t *rules;
    size_t rule_count;
    const char **all_channels;
};

static int s_label_index(const char *name, size_t len);
static bool s_matcher_holds(const char *m, const notify_labels_t *l);
static sn_rc_t s_compile(notify_route_t *dst, const sn_route_config_t *src,
                         const notify_route_t *parent, const sn_config_t *cfg, int depth, char *why,
                         size_t why_len);
static void s_route_fini(notify_route_t *r);
static size_t s_walk(const notify_route_t *r, const notify_labels_t *l, const notify_route_t **out,
                     size_t n, size_t max);
static const notify_route_t *s_find(const notify_route_t *r, const char *id);
static size_t s_strv_len(char *const *v);
static bool s_is_legacy(const sn_notify_config_t *n);

/* ---- labels ------------------------------------------------------------------------------ */

const char *notify_labels_get(const notify_labels_t *l, const char *name)
{
    int i = s_label_index(name, strlen(name));
    return i < 0 ? NULL : l->v[i];
}

bool notify_labels_set(notify_labels_t *l, const char *name, const char *value)
{
    int i = s_label_index(name, strlen(name));
    if (i < 0)
        return false;
    sn_strlcpy(l->v[i], value ? value : "", NOTIFY_LABEL_MAX);
    return true;
}

bool notify_severity_parse(const char *name, notify_severity_t *out)
{
    if (!name)
        return false;
    if (strcmp(name, "info") == 0)
        *out = NOTIFY_SEV_INFO;
    else if (strcmp(name, "warning") == 0)
        *out = NOTIFY_SEV_WARNING;
    else if (strcmp(name, "critical") == 0)
        *out = NOTIFY_SEV_CRITICAL;
    else
        return false;
    return true;
}

const char *notify_severity_name(notify_severity_t s)
{
    return s == NOTIFY_SEV_CRITICAL ? "critical" : s == NOTIFY_SEV_WARNING ? "warning" : "info";
}

static bool s_type_severity(const sn_envelope_t *env, notify_severity_t *out)
{
    static const struct {
        const char *type;
        notify_severity_t severity;
    } s_table[] = {
        {"build.succeeded", NOTIFY_SEV_INFO},   {"build.warning", NOTIFY_SEV_WARNING},
        {"build.failed", NOTIFY_SEV_CRITICAL},  {"deploy.promoted", NOTIFY_SEV_INFO},
        {"deploy.failed", NOTIFY_SEV_CRITICAL}, {"deploy.rolled_back", NOTIFY_SEV_CRITICAL},
        {"deploy.stuck", NOTIFY_SEV_WARNING},   {"run.succeeded", NOTIFY_SEV_INFO},
        {"run.failed", NOTIFY_SEV_CRITICAL},    {"run.rolled_back", NOTIFY_SEV_CRITICAL},
        {"gate.rejected", NOTIFY_SEV_CRITICAL},
    };
    if (!env->type)
        return false;
    if (strcmp(env->type, "alert.raised") == 0) {
        const char *s = env->body_case == SENTINEL__V1__ENVELOPE__BODY_ALERT && env->alert
                            ? env->alert->severity
                            : NULL;
        if (!notify_severity_parse(s, out))
            *out = NOTIFY_SEV_WARNING;
        return true;
    }
    for (size_t i = 0; i < SN_ARRAY_LEN(s_table); i++)
        if (strcmp(env->type, s_table[i].type) == 0) {
            *out = s_table[i].severity;
            return true;
        }
    return false;
}

static const char *s_alert_label(const Sentinel__V1__Alert *a, const char *key)
{
    for (size_t i = 0; a && i < a->n_labels; i++)
        if (a->labels[i]->key && strcmp(a->labels[i]->key, key) == 0)
            return a->labels[i]->value;
    return NULL;
}

void notify_labels_any(const sn_envelope_t *env, notify_labels_t *out)
{
    memset(out, 0, sizeof *out);
    notify_severity_t sev = NOTIFY_SEV_INFO;
    (void)s_type_severity(env, &sev);
    out->severity = sev;
    sn_strlcpy(out->v[S_L_SEVERITY], notify_severity_name(sev), NOTIFY_LABEL_MAX);
    sn_strlcpy(out->v[S_L_TYPE], env->type ? env->type : "", NOTIFY_LABEL_MAX);
    const char *project = NULL, *environment = NULL, *target = NULL;
    switch (env->body_case) {
    case SENTINEL__V1__ENVELOPE__BODY_RUN:
        if (env->run) {
            project = env->run->project;
            environment = env->run->environment;
        }
        break;
    case SENTINEL__V1__ENVELOPE__BODY_DEPLOY:
        if (env->deploy) {
            project = env->deploy->project;
            environment = env->deploy->environment;
            target = env->deploy->target;
        }
        break;
    case SENTINEL__V1__ENVELOPE__BODY_ALERT:
        if (env->alert) {
            project = s_alert_label(env->alert, "project");
            environment = s_alert_label(env->alert, "environment");
            target = s_alert_label(env->alert, "target");
            sn_strlcpy(out->v[S_L_ALERTNAME], env->alert->name ? env->alert->name : "",
                       NOTIFY_LABEL_MAX);
        }
        break;
    default:
        break;
    }
    /* The subject "<project>/<environment>/<target>" fills what the body left out. */
    const char *subj = env->subject ? env->subject : "";
    const char *parts[3] = {project, environment, target};
    for (int i = 0; i < 3 && *subj; i++) {
        const char *slash = strchr(subj, '/');
        size_t n = slash ? (size_t)(slash - subj) : strlen(subj);
        if (!parts[i] || !parts[i][0]) {
            char *dst = out->v[S_L_PROJECT + i];
            size_t m = n < NOTIFY_LABEL_MAX - 1 ? n : NOTIFY_LABEL_MAX - 1;
            memcpy(dst, subj, m);
            dst[m] = '\0';
            parts[i] = NULL;
        }
        subj = slash ? slash + 1 : subj + n;
    }
    for (int i = 0; i < 3; i++)
        if (parts[i] && parts[i][0])
            sn_strlcpy(out->v[S_L_PROJECT + i], parts[i], NOTIFY_LABEL_MAX);
}

bool notify_labels_from_envelope(const sn_envelope_t *env, notify_labels_t *out)
{
    notify_severity_t sev;
    if (!s_type_severity(env, &sev))
        return false;
    notify_labels_any(env, out);
    return true;
}

/* ---- matchers ---------------------------------------------------------------------------- */

sn_rc_t notify_matcher_check(const char *m, char *why, size_t why_len)
{
    const char *eq = m ? strchr(m, '=') : NULL;
    if (!eq) {
        snprintf(why, why_len, "matcher \"%.64s\" is not key=value", m ? m : "");
        return SN_ERROR;
    }
    if (s_label_index(m, (size_t)(eq - m)) < 0) {
        snprintf(why, why_len,
                 "matcher \"%.64s\": unknown label (use severity, project, "
                 "environment, target, type or alertname)",
                 m);
        return SN_ERROR;
    }
    if (!eq[1]) {
        snprintf(why, why_len, "matcher \"%.64s\" has an empty value", m);
        return SN_ERROR;
    }
    notify_severity_t s;
    if (eq - m == 8 && strncmp(m, "severity", 8) == 0 && !notify_severity_parse(eq + 1, &s)) {
        snprintf(why, why_len, "matcher \"%.64s\": severity is info, warning or critical", m);
        return SN_ERROR;
    }
    return SN_OK;
}

bool notify_matchers_match(char *const *match, const notify_labels_t *l)
{
    for (size_t i = 0; match && match[i]; i++)
        if (!s_matcher_holds(match[i], l))
            return false;
    return true;
}

/* ---- the route tree ------------------------------------------------------------------------ */

notify_tree_t *notify_tree_new(const sn_config_t *cfg, char *why, size_t why_len)
{
    notify_tree_t *t = sn_calloc(1, sizeof *t);
    t->all_channels = sn_calloc(cfg->channel_count + 1, sizeof *t->all_channels);
    for (size_t i = 0; i < cfg->channel_count; i++)
        t->all_channels[i] = cfg->channels[i].name;
    t->is_legacy = s_is_legacy(&cfg->notify);
    /* The root's "parent": the defaults. */
    notify_route_t defaults = {
        .channels = t->all_channels,
        .channel_count = cfg->channel_count,
        .group_by = (const char **)(t->is_legacy ? s_group_by_all : s_default_group_by),
        .group_wait_ms = t->is_legacy ? 0 : NOTIFY_DEFAULT_GROUP_WAIT_MS,
        .group_interval_ms = t->is_legacy ? 0 : NOTIFY_DEFAULT_GROUP_INTERVAL_MS,
        .repeat_interval_ms = t->is_legacy ? 0 : NOTIFY_DEFAULT_REPEAT_INTERVAL_MS,
    };
    defaults.is_group_by_all = t->is_legacy;
    if (t->is_legacy) {
        t->root = defaults;
        t->root.channels = sn_calloc(cfg->channel_count + 1, sizeof *t->root.channels);
        memcpy(t->root.channels, t->all_channels, cfg->channel_count * sizeof *t->all_channels);
        t->root.group_by = sn_calloc(2, sizeof *t->root.group_by);
        t->root.group_by[0] = "...";
        snprintf(t->root.id, sizeof t->root.id, "r0");
        return t;
    }
    if (s_compile(&t->root, &cfg->notify.route, &defaults, cfg, 0, why, why_len) != SN_OK) {
        notify_tree_destroy(&t);
        return NULL;
    }
    snprintf(t->root.id, sizeof t->root.id, "r0");
    if (cfg->notify.route.match && cfg->notify.route.match[0]) {
        snprintf(why, why_len, "the root route matches everything: it takes no matchers");
        notify_tree_destroy(&t);
        return NULL;
    }
    for (size_t i = 0; i < cfg->notify.inhibit_count; i++) {
        const sn_inhibit_config_t *r = &cfg->notify.inhibit_rules[i];
        char *const *lists[] = {r->source_match, r->target_match};
        for (size_t k = 0; k < 2; k++)
            for (size_t j = 0; lists[k] && lists[k][j]; j++)
                if (notify_matcher_check(lists[k][j], why, why_len) != SN_OK) {
                    notify_tree_destroy(&t);
                    return NULL;
                }
        for (size_t j = 0; r->equal && r->equal[j]; j++)
            if (s_label_index(r->equal[j], strlen(r->equal[j])) < 0) {
                snprintf(why, why_len, "inhibit rule %zu: equal names unknown label \"%.64s\"",
                         i + 1, r->equal[j]);
                notify_tree_destroy(&t);
                return NULL;
            }
    }
    if (cfg->notify.inhibit_count > 0) {
        t->rules = cfg->notify.inhibit_rules;
        t->rule_count = cfg->notify.inhibit_count;
    } else {
        t->rules = &s_default_rule;
        t->rule_count = 1;
    }
    return t;
}

void notify_tree_destroy(notify_tree_t **self_p)
{
    SN_ASSERT(self_p);
    notify_tree_t *t = *self_p;
    if (!t)
        return;
    s_route_fini(&t->root);
    free(t->all_channels);
    free(t);
    *self_p = NULL;
}

const notify_route_t *notify_tree_root(const notify_tree_t *self)
{
    return &self->root;
}

bool notify_tree_is_legacy(const notify_tree_t *self)
{
    return self->is_legacy;
}

const notify_route_t *notify_tree_find(const notify_tree_t *self, const char *id)
{
    return id ? s_find(&self->root, id) : NULL;
}

const sn_inhibit_config_t *notify_tree_inhibit_rules(const notify_tree_t *self, size_t *count)
{
    *count = self->rule_count;
    return self->rules;
}

size_t notify_tree_route(const notify_tree_t *self, const notify_labels_t *l,
                         const notify_route_t **out, size_t max)
{
    SN_ASSERT(max >= 1);
    size_t n = s_walk(&self->root, l, out, 0, max);
    SN_ASSERT(n >= 1);
    return n;
}

void notify_group_key(const notify_route_t *r, const notify_labels_t *l, const char *event_id,
                      char out[NOTIFY_GROUP_KEY_MAX])
{
    /* The digest input names every label, so {project=a, environment=bc} and
     * {project=ab, environment=c} differ. */
    size_t cap = 64 + (size_t)NOTIFY_LABEL_COUNT * (NOTIFY_LABEL_MAX + 24);
    char *buf = sn_malloc(cap);
    size_t n = 0;
    if (r->is_group_by_all) {
        n = (size_t)snprintf(buf, cap, "event=%s", event_id ? event_id : "");
    } else {
        for (size_t i = 0; r->group_by && r->group_by[i] && n < cap; i++) {
            const char *v = notify_labels_get(l, r->group_by[i]);
            int w = snprintf(buf + n, cap - n, "%s=%s%c", r->group_by[i], v ? v : "", S_SEP);
            if (w < 0)
                break;
            n += (size_t)w;
        }
        if (n > cap)
            n = cap;
    }
    uint8_t d[SN_SHA256_LEN];
    SN_ASSERT(sn_sha256(buf, n, d) == SN_OK);
    free(buf);
    char hex[SN_SHA256_HEX_LEN + 1];
    sn_hex_encode(d, sizeof d, hex);
    snprintf(out, NOTIFY_GROUP_KEY_MAX, "%s-%.16s", r->id, hex);
}

/* ---- inhibition ------------------------------------------------------------------------- */

bool notify_inhibits(const sn_inhibit_config_t *rule, const notify_labels_t *src,
                     const notify_labels_t *target, bool same)
{
    if (same)
        return false;
    if (!notify_matchers_match(rule->source_match, src) ||
        !notify_matchers_match(rule->target_match, target))
        return false;
    for (size_t i = 0; rule->equal && rule->equal[i]; i++) {
        const char *a = notify_labels_get(src, rule->equal[i]);
        const char *b = notify_labels_get(target, rule->equal[i]);
        if (!a || !b || strcmp(a, b) != 0)
            return false;
    }
    return true;
}

bool notify_is_inhibit_source(const sn_inhibit_config_t *rules, size_t count,
                              const notify_labels_t *l)
{
    for (size_t i = 0; i < count; i++)
        if (notify_matchers_match(rules[i].source_match, l))
            return true;
    return false;
}

char *notify_labels_encode(const notify_labels_t *l)
{
    size_t cap = 8 + (size_t)NOTIFY_LABEL_COUNT * NOTIFY_LABEL_MAX;
    char *s = sn_malloc(cap);
    size_t n = (size_t)snprintf(s, cap, "%d", (int)l->severity);
    for (int i = 0; i < NOTIFY_LABEL_COUNT; i++) {
        size_t m = strnlen(l->v[i], NOTIFY_LABEL_MAX - 1);
        s[n++] = S_SEP;
        for (size_t k = 0; k < m; k++)
            s[n++] = l->v[i][k] == S_SEP ? ' ' : l->v[i][k];
    }
    s[n] = '\0';
    return s;
}

bool notify_labels_decode(const char *s, notify_labels_t *out)
{
    memset(out, 0, sizeof *out);
    if (!s || (s[0] < '0' || s[0] > '2') || s[1] != S_SEP)
        return false;
    out->severity = (notify_severity_t)(s[0] - '0');
    const char *p = s + 2;
    for (int i = 0; i < NOTIFY_LABEL_COUNT; i++) {
        const char *end = strchr(p, S_SEP);
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n >= NOTIFY_LABEL_MAX || (i < NOTIFY_LABEL_COUNT - 1 && !end) ||
            (i == NOTIFY_LABEL_COUNT - 1 && end))
            return false;
        memcpy(out->v[i], p, n);
        out->v[i][n] = '\0';
        p += n + (end ? 1 : 0);
    }
    return true;
}

bool notify_duration_parse(const char *s, int64_t *ms)
{
    if (!s || !*s)
        return false;
    int64_t total = 0;
    const char *p = s;
    bool unitless = true;
    while (*p) {
        if (*p < '0' || *p > '9')
            return false;
        int64_t n = 0;
        while (*p >= '0' && *p <= '9') {
            n = n * 10 + (*p - '0');
            if (n > 400LL * 86400)
                return false;
            p++;
        }
        int64_t unit = 1000;
        switch (*p) {
        case '\0':
            if (!unitless)
                return false; /* "1h30" */
            break;
        case 's':
            p++;
            break;
        case 'm':
            unit = 60000;
            p++;
            break;
        case 'h':
            unit = 3600000;
            p++;
            break;
        case 'd':
            unit = 86400000;
            p++;
            break;
        default:
            return false;
        }
        unitless = false;
        total += n * unit;
        if (total > 366LL * 86400000)
            return false;
    }
    if (total <= 0)
        return false;
    *ms = total;
    return true;
}

/* ---- helpers ---------------------------------------------------------------------------- */

static int s_label_index(const char *name, size_t len)
{
    for (int i = 0; i < NOTIFY_LABEL_COUNT; i++)
        if (strlen(notify_label_names[i]) == len && strncmp(notify_label_names[i], name, len) == 0)
            return i;
    return -1;
}

static bool s_matcher_holds(const char *m, const notify_labels_t *l)
{
    const char *eq = strchr(m, '=');
    if (!eq || !eq[1])
        return false;
    int i = s_label_index(m, (size_t)(eq - m));
    if (i < 0)
        return false;
    const char *want = eq + 1, *have = l->v[i];
    size_t n = strlen(want);
    if (n >= 2 && strcmp(want + n - 2, ".*") == 0)
        return strncmp(have, want, n - 1) == 0; /* the prefix with its dot */
    return strcmp(have, want) == 0;
}

static size_t s_strv_len(char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    return n;
}

static sn_rc_t s_compile(notify_route_t *dst, const sn_route_config_t *src,
                         const notify_route_t *parent, const sn_config_t *cfg, int depth, char *why,
                         size_t why_len)
{
    if (depth > S_MAX_DEPTH) {
        snprintf(why, why_len, "routes nested deeper than %d", S_MAX_DEPTH);
        return SN_ERROR;
    }
    dst->match = src->match;
    for (size_t i = 0; src->match && src->match[i]; i++)
        if (notify_matcher_check(src->match[i], why, why_len) != SN_OK)
            return SN_ERROR;
    size_t nch = s_strv_len(src->channels);
    if (nch > 0) {
        dst->channels = sn_calloc(nch + 1, sizeof *dst->channels);
        for (size_t i = 0; i < nch; i++) {
            bool known = false;
            for (size_t k = 0; k < cfg->channel_count && !known; k++)
                known = strcmp(cfg->channels[k].name, src->channels[i]) == 0;
            if (!known) {
                snprintf(why, why_len, "route %s names unknown channel \"%.64s\"", parent->id,
                         src->channels[i]);
                return SN_ERROR;
            }
            dst->channels[i] = src->channels[i];
        }
        dst->channel_count = nch;
    } else {
        dst->channels = sn_calloc(parent->channel_count + 1, sizeof *dst->channels);
        memcpy(dst->channels, parent->channels, parent->channel_count * sizeof *dst->channels);
        dst->channel_count = parent->channel_count;
    }
    size_t ng = s_strv_len(src->group_by);
    const char *const *gb = ng > 0 ? (const char *const *)src->group_by : parent->group_by;
    ng = 0;
    while (gb && gb[ng])
        ng++;
    dst->group_by = sn_calloc(ng + 1, sizeof *dst->group_by);
    for (size_t i = 0; i < ng; i++) {
        if (strcmp(gb[i], "...") == 0) {
            dst->is_group_by_all = true;
        } else if (s_label_index(gb[i], strlen(gb[i])) < 0) {
            snprintf(why, why_len, "group_by names unknown label \"%.64s\"", gb[i]);
            return SN_ERROR;
        }
        dst->group_by[i] = gb[i];
    }
    dst->group_wait_ms = src->group_wait_ms >= 0 ? src->group_wait_ms : parent->group_wait_ms;
    dst->group_interval_ms =
        src->group_interval_ms >= 0 ? src->group_interval_ms : parent->group_interval_ms;
    dst->repeat_interval_ms =
        src->repeat_interval_ms >= 0 ? src->repeat_interval_ms : parent->repeat_interval_ms;
    if (depth == 0) {
        /* The root has nothing to inherit: unset means the default. */
        if (src->group_wait_ms < 0)
            dst->group_wait_ms = NOTIFY_DEFAULT_GROUP_WAIT_MS;
        if (src->group_interval_ms <= 0)
            dst->group_interval_ms = NOTIFY_DEFAULT_GROUP_INTERVAL_MS;
        if (src->repeat_interval_ms <= 0)
            dst->repeat_interval_ms = NOTIFY_DEFAULT_REPEAT_INTERVAL_MS;
    }
    dst->is_continue = src->continue_;
    if (src->route_count > 0) {
        dst->children = sn_calloc(src->route_count, sizeof *dst->children);
        dst->child_count = src->route_count;
        for (size_t i = 0; i < src->route_count; i++) {
            char id[sizeof dst->id + 24];
            snprintf(id, sizeof id, "%s.%zu", depth == 0 ? "r0" : dst->id, i);
            if (!sn_strlcpy(dst->children[i].id, id, sizeof dst->children[i].id)) {
                snprintf(why, why_len, "routes nested too deep");
                return SN_ERROR;
            }
            if (s_compile(&dst->children[i], &src->routes[i], dst, cfg, depth + 1, why, why_len) !=
                SN_OK)
                return SN_ERROR;
        }
    }
    return SN_OK;
}

static void s_route_fini(notify_route_t *r)
{
    for (size_t i = 0; i < r->child_count; i++)
        s_route_fini(&r->children[i]);
    free(r->children);
    free(r->channels);
    free(r->group_by);
    memset(r, 0, sizeof *r);
}

static size_t s_walk(const notify_route_t *r, const notify_labels_t *l, const notify_route_t **out,
                     size_t n, size_t max)
{
    size_t start = n;
    for (size_t i = 0; i < r->child_count; i++) {
        const notify_route_t *c = &r->children[i];
        if (!notify_matchers_match(c->match, l))
            continue;
        n = s_walk(c, l, out, n, max);
        if (!c->is_continue)
            break;
    }
    if (n == start && n < max)
        out[n++] = r;
    return n;
}

static const notify_route_t *s_find(const notify_route_t *r, const char *id)
{
    if (strcmp(r->id, id) == 0)
        return r;
    for (size_t i = 0; i < r->child_count; i++) {
        const notify_route_t *f = s_find(&r->children[i], id);
        if (f)
            return f;
    }
    return NULL;
}

static bool s_is_default_group_by(char *const *g)
{
    if (!g || !g[0])
        return true;
    for (size_t i = 0; i < 4; i++) {
        if (!g[i] || !s_default_group_by[i])
            return !g[i] && !s_default_group_by[i];
        if (strcmp(g[i], s_default_group_by[i]) != 0)
            return false;
    }
    return false;
}

static bool s_is_legacy(const sn_notify_config_t *n)
{
    const sn_route_config_t *r = &n->route;
    return r->route_count == 0 && s_strv_len(r->match) == 0 && s_strv_len(r->channels) == 0 &&
           n->inhibit_count == 0 && s_is_default_group_by(r->group_by) &&
           (r->group_wait_ms <= 0 || r->group_wait_ms == NOTIFY_DEFAULT_GROUP_WAIT_MS) &&
           (r->group_interval_ms <= 0 ||
            r->group_interval_ms == NOTIFY_DEFAULT_GROUP_INTERVAL_MS) &&
           (r->repeat_interval_ms <= 0 ||
            r->repeat_interval_ms == NOTIFY_DEFAULT_REPEAT_INTERVAL_MS) &&
           !r->continue_;
}
