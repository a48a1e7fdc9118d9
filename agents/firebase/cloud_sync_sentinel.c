/* cloud-sync-sentinel (FirebaseDeployExecutor): compares what is live at Firebase with
 * what Sentinel recorded, and watches resource consumption against the target's budgets.
 * Leadership "duty": every instance serves firebase.sync; the periodic watch runs on the
 * leader only (active/standby).
 *
 * Recorded state (written by firebase-executor when a promote or rollback finished):
 * firebase:live:<project>:<env>:<target> (hash: hosting_version, functions_source,
 * deploy_id, updated_ms). Functions have no version number: after a deploy (when the
 * record has no `functions_seen` field) the first pass takes each function's updateTime
 * as the baseline (`fn:<id>`, set `functions_seen`); the functions are those
 * function-handler deployed (firebase:fnsrc:<project>:<env>:<target>:<id>).
 *
 * Periodic watch, every drift_check_interval_ms (the shortest of the firebase targets'
 * values, default 60000), per firebase
 * target of every project environment:
 *  - drift: the live channel's newest release's version (Hosting REST) differs from
 *    hosting_version, or a function's updateTime differs from its baseline, or the
 *    function is gone -> `alert.raised` (Alert name "firebase.drift", severity warning)
 *    journaled once per drift (marker firebase:drift:<p>:<e>:<t> = the drift's text; a
 *    different drift alerts again; the marker is removed when live matches again);
 *  - resources: today's usage (firebase:usage:<p>:<e>:<t>:<yyyymmdd>, counted by
 *    firebase-executor: deploys, upload_bytes, function_count; function_count is also
 *    the number of functions live) over budget_deploys_per_day, budget_upload_bytes or
 *    budget_function_count -> `alert.raised` (name "firebase.resource", severity warning,
 *    docs/pipeline.md), once per target, kind and day (marker firebase:resource:...).
 *
 * firebase.sync (DeployRequest op "check"): one comparison now for the request's target:
 * Hosting's live version against deploy.release_id when set (firebase-executor sets it to
 * the version it just promoted), else against the record; every recorded function must
 * exist and be ACTIVE. ok, or ok=false with the difference.
 *
 * Threads: firebase.sync runs on job threads; the watch runs on a thread of this role
 * (HTTP through sn_provider with the target's sn_gauth token; Redis through sn_redis; the
 * alerts through a journal of its own, journal only: the notifier reads the journal). */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_gauth.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_provider.h"
#include "sentinel/sn_redis.h"

#define S_ROLE "cloud-sync-sentinel"
#define S_LOCK_KEY "leader:" S_ROLE
#define S_DEFAULT_INTERVAL_MS 60000
#define S_REDIS_TIMEOUT_MS 1000
#define S_DRIFT_TTL_MS "604800000"    /* 7 days */
#define S_RESOURCE_TTL_MS "172800000" /* 2 days */
#define S_DRIFT_MAX 1024
#define S_MAX_FUNCTIONS 64
#define S_DEFAULT_HOSTING "https://firebasehosting.googleapis.com/v1beta1"
#define S_DEFAULT_FUNCTIONS "https://cloudfunctions.googleapis.com/v2"

/* One firebase target as deployed in one project environment. */
typedef struct {
    const sn_target_config_t *cfg; /* borrowed from the config */
    const char *project;
    const char *environment;
    sn_gauth_t *gauth; /* made on first use (under mu) */
    sn_provider_t *prov;
} s_target_t;

typedef struct {
    sn_ctx_t *ctx;
    sn_redis_t *redis;
    s_target_t *targets;
    size_t target_count;
    pthread_mutex_t mu;
    pthread_t thread;
    bool has_thread;
    atomic_bool is_stopping;
    atomic_bool is_leader;
    atomic_uint_fast64_t fence;
    int64_t interval_ms;
    sn_source_t *source;
} s_state_t;

/* What one comparison found. */
typedef struct {
    char text[S_DRIFT_MAX]; /* "; "-joined differences, "" when in sync */
    size_t at;
    bool is_unknown; /* live state could not be read (transient): no verdict */
    char why[256];
    int live_functions;
} s_cmp_t;

static void s_cmp_add(s_cmp_t *c, const char *fmt, ...) SN_PRINTF(2, 3);
static void s_cmp_add(s_cmp_t *c, const char *fmt, ...)
{
    if (c->at + 4 >= sizeof c->text)
        return;
    if (c->at)
        c->at += (size_t)snprintf(c->text + c->at, sizeof c->text - c->at, "; ");
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->text + c->at, sizeof c->text - c->at, fmt, ap);
    va_end(ap);
    if (n > 0)
        c->at += (size_t)n;
    if (c->at >= sizeof c->text)
        c->at = sizeof c->text - 1;
}

/* ---- provider access ------------------------------------------------------------------------ */

/* The target's credentials, made once. False (logged once) if they cannot be. */
static bool s_creds(s_state_t *st, s_target_t *t)
{
    pthread_mutex_lock(&st->mu);
    if (!t->gauth && t->cfg->credentials_file) {
        t->gauth = sn_gauth_new(t->cfg->credentials_file, t->cfg->oauth_token_uri, NULL);
        if (t->gauth) {
            sn_provider_opts_t o;
            sn_provider_opts_from_target(&o, "firebase", t->cfg);
            o.credential = sn_gauth_client_email(t->gauth);
            t->prov = sn_provider_new(st->redis, &o);
        }
    }
    bool ok = t->gauth && t->prov;
    pthread_mutex_unlock(&st->mu);
    return ok;
}

/* GET @url as JSON with the target's token. SN_OK with *out; SN_DECLINED for a 404;
 * SN_ERROR / SN_AGAIN with @why. */
static sn_rc_t s_get(s_state_t *st, s_target_t *t, sn_http_t *http, const char *url, json_t **out,
                     char *why, size_t why_len)
{
    *out = NULL;
    int timeout = t->cfg->request_timeout_ms > 0 ? t->cfg->request_timeout_ms : 30000;
    if (!s_creds(st, t)) {
        snprintf(why, why_len, "no usable credentials_file for target %s", t->cfg->name);
        return SN_ERROR;
    }
    char *token = NULL;
    sn_rc_t rc = sn_gauth_token(t->gauth, http, timeout, &token, why, why_len);
    if (rc != SN_OK)
        return rc;
    char *auth = sn_strdupf("Authorization: Bearer %s", token);
    sn_gauth_token_free(&token);
    char *quota = sn_strdupf("x-goog-user-project: %s", t->cfg->project ? t->cfg->project : "");
    const char *headers[] = {auth, "Accept: application/json", quota, NULL};
    sn_http_request_t req = {.url = url, .headers = headers, .timeout_ms = timeout};
    sn_provider_budget_t budget;
    sn_provider_budget_init(&budget, t->cfg->max_attempts > 0 ? t->cfg->max_attempts : 3,
                            sn_mono_ms() + 3 * (int64_t)timeout);
    sn_http_response_t resp;
    rc = sn_provider_call_json(t->prov, http, &req, true, &budget, &resp, out);
    if (rc != SN_OK) {
        if (resp.status == 404)
            rc = SN_DECLINED;
        else if (resp.status == 401)
            sn_gauth_invalidate(t->gauth);
        snprintf(why, why_len, "%s", budget.reason);
    }
    sn_http_response_fini(&resp);
    free(auth);
    free(quota);
    return rc;
}

/* The version name live on the Hosting site now (caller frees), or NULL (@why set;
 * *is_transient says whether asking later may help). "" when nothing was ever released. */
static char *s_live_version(s_state_t *st, s_target_t *t, sn_http_t *http, char *why,
                            size_t why_len, bool *is_transient)
{
    const char *base = t->cfg->api_base ? t->cfg->api_base : S_DEFAULT_HOSTING;
    const char *site = t->cfg->site && *t->cfg->site ? t->cfg->site : t->cfg->project;
    char *url = sn_strdupf("%s/sites/%s/channels/live/releases?pageSize=1", base, site);
    json_t *j = NULL;
    sn_rc_t rc = s_get(st, t, http, url, &j, why, why_len);
    free(url);
    *is_transient = rc == SN_AGAIN;
    if (rc == SN_DECLINED)
        return sn_strdup(""); /* no live channel yet */
    if (rc != SN_OK)
        return NULL;
    json_t *rels = json_object_get(j, "releases");
    json_t *first = json_is_array(rels) ? json_array_get(rels, 0) : NULL;
    const char *name =
        json_string_value(json_object_get(json_object_get(first, "version"), "name"));
    char *out = sn_strdup(name ? name : "");
    json_decref(j);
    return out;
}

/* ---- records ----------------------------------------------------------------------------------
 */

static char *s_key(s_state_t *st, const char *fmt, ...) SN_PRINTF(2, 3);
static char *s_key(s_state_t *st, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return sn_strdupf("%s%s", sn_redis_ns(st->redis), buf);
}

static redisReply *s_cmd(s_state_t *st, int argc, const char **argv)
{
    redisReply *r = NULL;
    if (sn_redis_cmd(st->redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r, argc, argv, NULL) != SN_OK)
        return NULL;
    if (r && r->type == REDIS_REPLY_ERROR) {
        sn_warn(S_ROLE, "redis refused %s: %s", argv[0], r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* Field @f of a HGETALL reply, or NULL. */
static const char *s_field(const redisReply *h, const char *f)
{
    for (size_t i = 0; h && i + 1 < h->elements; i += 2)
        if (h->element[i]->type == REDIS_REPLY_STRING && strcmp(h->element[i]->str, f) == 0 &&
            h->element[i + 1]->type == REDIS_REPLY_STRING)
            return h->element[i + 1]->str;
    return NULL;
}

/* The function ids function-handler deployed for @t (SCAN of firebase:fnsrc:...:*). */
static size_t s_function_ids(s_state_t *st, s_target_t *t, char **ids, size_t max)
{
    char *match = s_key(st, "firebase:fnsrc:%s:%s:%s:*", t->project, t->environment, t->cfg->name);
    size_t prefix = strlen(match) - 1;
    size_t n = 0;
    char cursor[32] = "0";
    int rounds = 0;
    do {
        const char *argv[] = {"SCAN", cursor, "MATCH", match, "COUNT", "500"};
        redisReply *r = s_cmd(st, 6, argv);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            if (r)
                freeReplyObject(r);
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str ? r->element[0]->str : "0");
        const redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements && n < max; i++)
            if (keys->element[i]->type == REDIS_REPLY_STRING &&
                strlen(keys->element[i]->str) > prefix)
                ids[n++] = sn_strdup(keys->element[i]->str + prefix);
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0 && ++rounds < 1000);
    free(match);
    return n;
}

/* ---- the comparison ---------------------------------------------------------------------------
 */

/* Compares @t's live state with @expect_hosting (NULL: the record's) and, when
 * @with_baseline, every recorded function's updateTime with its baseline (taking the
 * baseline first after a deploy). */
static void s_compare(s_state_t *st, s_target_t *t, sn_http_t *http, const char *expect_hosting,
                      bool with_baseline, s_cmp_t *c)
{
    memset(c, 0, sizeof *c);
    char *lkey = s_key(st, "firebase:live:%s:%s:%s", t->project, t->environment, t->cfg->name);
    const char *hargv[] = {"HGETALL", lkey};
    redisReply *rec = s_cmd(st, 2, hargv);
    char *ids[S_MAX_FUNCTIONS];
    size_t nids = 0;
    if (!rec) {
        c->is_unknown = true;
        snprintf(c->why, sizeof c->why, "redis unavailable");
        goto out;
    }
    const char *recorded = s_field(rec, "hosting_version");
    const char *expect = expect_hosting && *expect_hosting ? expect_hosting : recorded;
    if (expect && *expect) {
        bool is_transient = false;
        char *live = s_live_version(st, t, http, c->why, sizeof c->why, &is_transient);
        if (!live) {
            c->is_unknown = true;
            goto out;
        }
        if (strcmp(live, expect) != 0)
            s_cmp_add(c, "hosting: live version is %s, recorded %s", *live ? live : "(none)",
                      expect);
        free(live);
    }
    nids = s_function_ids(st, t, ids, S_MAX_FUNCTIONS);
    bool has_baseline = s_field(rec, "functions_seen") != NULL;
    const char *fbase =
        t->cfg->functions_api_base ? t->cfg->functions_api_base : S_DEFAULT_FUNCTIONS;
    const char *region = t->cfg->region && *t->cfg->region ? t->cfg->region : "us-central1";
    for (size_t i = 0; i < nids; i++) {
        char *url = sn_strdupf("%s/projects/%s/locations/%s/functions/%s", fbase,
                               t->cfg->project ? t->cfg->project : "", region, ids[i]);
        json_t *fn = NULL;
        char why[256] = "";
        sn_rc_t rc = s_get(st, t, http, url, &fn, why, sizeof why);
        free(url);
        if (rc == SN_DECLINED) {
            s_cmp_add(c, "function %s is gone", ids[i]);
            continue;
        }
        if (rc != SN_OK) {
            c->is_unknown = true;
            snprintf(c->why, sizeof c->why, "function %.64s: %.160s", ids[i], why);
            json_decref(fn);
            goto out;
        }
        c->live_functions++;
        const char *state = json_string_value(json_object_get(fn, "state"));
        const char *updated = json_string_value(json_object_get(fn, "updateTime"));
        if (state && strcmp(state, "ACTIVE") != 0 && strcmp(state, "DEPLOYING") != 0)
            s_cmp_add(c, "function %s is %s", ids[i], state);
        if (with_baseline && updated && s_field(rec, "deploy_id")) {
            char field[160];
            snprintf(field, sizeof field, "fn:%s", ids[i]);
            const char *base = s_field(rec, field);
            if (!has_baseline || !base) {
                const char *argv[] = {"HSET", lkey, field, updated};
                redisReply *r = s_cmd(st, 4, argv);
                if (r)
                    freeReplyObject(r);
            } else if (strcmp(base, updated) != 0) {
                s_cmp_add(c, "function %s changed at %s outside Sentinel (recorded %s)", ids[i],
                          updated, base);
            }
        }
        json_decref(fn);
    }
    if (with_baseline && !has_baseline && s_field(rec, "deploy_id")) {
        const char *argv[] = {"HSET", lkey, "functions_seen", "1"};
        redisReply *r = s_cmd(st, 4, argv);
        if (r)
            freeReplyObject(r);
    }
out:
    for (size_t i = 0; i < nids; i++)
        free(ids[i]);
    if (rec)
        freeReplyObject(rec);
    free(lkey);
}

/* ---- alerts -----------------------------------------------------------------------------------
 */

/* Journals alert.raised (fenced by the leader lock) with @labels (key, value pairs,
 * NULL-terminated). SN_OK when recorded. */
static sn_rc_t s_alert(s_state_t *st, sn_journal_t *journal, s_target_t *t, const char *name,
                       const char *summary, const char *const *labels)
{
    Sentinel__V1__Alert alert = SENTINEL__V1__ALERT__INIT;
    alert.name = (char *)name;
    alert.severity = "warning";
    alert.summary = (char *)summary;
    size_t n = 3;
    while (labels && labels[2 * (n - 3)])
        n++;
    Sentinel__V1__Alert__LabelsEntry *entries = sn_calloc(n, sizeof *entries);
    Sentinel__V1__Alert__LabelsEntry **ptrs = sn_calloc(n, sizeof *ptrs);
    const char *kv[] = {"project",      t->project, "environment",
                        t->environment, "target",   t->cfg->name};
    for (size_t i = 0; i < n; i++) {
        sentinel__v1__alert__labels_entry__init(&entries[i]);
        entries[i].key = (char *)(i < 3 ? kv[2 * i] : labels[2 * (i - 3)]);
        entries[i].value = (char *)(i < 3 ? kv[2 * i + 1] : labels[2 * (i - 3) + 1]);
        ptrs[i] = &entries[i];
    }
    alert.n_labels = n;
    alert.labels = ptrs;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, st->source, "alert.raised", id);
    char *subject = sn_strdupf("%s/%s/%s", t->project, t->environment, t->cfg->name);
    env.subject = subject;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_ALERT;
    env.alert = &alert;
    sn_envelope_add_label(&env, "alert", name);
    sn_envelope_add_label(&env, "severity", "warning");
    sn_rc_t rc = sn_journal_commit(journal, NULL, S_LOCK_KEY, atomic_load(&st->fence), &env, NULL);
    sn_envelope_fini_labels(&env);
    free(subject);
    free(ptrs);
    free(entries);
    return rc;
}

/* Drift: alert once per distinct drift; clear the marker once in sync. */
static void s_watch_drift(s_state_t *st, sn_journal_t *journal, s_target_t *t, const s_cmp_t *c)
{
    char *mkey = s_key(st, "firebase:drift:%s:%s:%s", t->project, t->environment, t->cfg->name);
    const char *gargv[] = {"GET", mkey};
    redisReply *m = s_cmd(st, 2, gargv);
    const char *seen = m && m->type == REDIS_REPLY_STRING ? m->str : NULL;
    if (!c->text[0]) {
        if (seen) {
            const char *dargv[] = {"DEL", mkey};
            redisReply *d = s_cmd(st, 2, dargv);
            if (d)
                freeReplyObject(d);
            sn_info(S_ROLE, "drift resolved target=%s/%s/%s", t->project, t->environment,
                    t->cfg->name);
        }
    } else if (!seen || strcmp(seen, c->text) != 0) {
        const char *labels[] = {"kind", "drift", NULL};
        char summary[S_DRIFT_MAX + 64];
        snprintf(summary, sizeof summary, "Firebase target %s drifted: %s", t->cfg->name, c->text);
        if (s_alert(st, journal, t, "firebase.drift", summary, labels) == SN_OK) {
            const char *sargv[] = {"SET", mkey, c->text, "PX", S_DRIFT_TTL_MS};
            redisReply *s = s_cmd(st, 5, sargv);
            if (s)
                freeReplyObject(s);
            sn_warn(S_ROLE, "drift target=%s/%s/%s: %s", t->project, t->environment, t->cfg->name,
                    c->text);
            sn_metrics_add(sn_ctx_metrics(st->ctx), "firebase_drift_alerts", 1);
        }
    }
    if (m)
        freeReplyObject(m);
    free(mkey);
}

/* Resources: today's usage against the budgets, one alert per kind per day. */
static void s_watch_resources(s_state_t *st, sn_journal_t *journal, s_target_t *t, int live_fns)
{
    const sn_target_config_t *cfg = t->cfg;
    if (cfg->budget_deploys_per_day <= 0 && cfg->budget_upload_bytes <= 0 &&
        cfg->budget_function_count <= 0)
        return;
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char day[16];
    strftime(day, sizeof day, "%Y%m%d", &tm);
    char *ukey =
        s_key(st, "firebase:usage:%s:%s:%s:%s", t->project, t->environment, cfg->name, day);
    const char *argv[] = {"HGETALL", ukey};
    redisReply *u = s_cmd(st, 2, argv);
    free(ukey);
    if (!u)
        return;
    int64_t deploys = 0, bytes = 0, fns = 0;
    const char *v;
    if ((v = s_field(u, "deploys")) && sn_parse_i64(v, 0, INT64_MAX, &deploys) != SN_OK)
        deploys = 0;
    if ((v = s_field(u, "upload_bytes")) && sn_parse_i64(v, 0, INT64_MAX, &bytes) != SN_OK)
        bytes = 0;
    if ((v = s_field(u, "function_count")) && sn_parse_i64(v, 0, INT64_MAX, &fns) != SN_OK)
        fns = 0;
    freeReplyObject(u);
    if (live_fns > fns)
        fns = live_fns;
    const struct {
        const char *kind;
        int64_t used, budget;
    } checks[] = {
        {"deploys_per_day", deploys, cfg->budget_deploys_per_day},
        {"upload_bytes", bytes, cfg->budget_upload_bytes},
        {"function_count", fns, cfg->budget_function_count},
    };
    for (size_t i = 0; i < SN_ARRAY_LEN(checks); i++) {
        if (checks[i].budget <= 0 || checks[i].used <= checks[i].budget)
            continue;
        char *mkey = s_key(st, "firebase:resource:%s:%s:%s:%s:%s", t->project, t->environment,
                           cfg->name, day, checks[i].kind);
        const char *sargv[] = {"SET", mkey, "1", "NX", "PX", S_RESOURCE_TTL_MS};
        redisReply *m = s_cmd(st, 6, sargv);
        bool is_first = m && m->type == REDIS_REPLY_STATUS;
        if (m)
            freeReplyObject(m);
        if (is_first) {
            char used[32], budget[32], summary[256];
            snprintf(used, sizeof used, "%lld", (long long)checks[i].used);
            snprintf(budget, sizeof budget, "%lld", (long long)checks[i].budget);
            snprintf(summary, sizeof summary, "Firebase target %s is over its %s budget: %s > %s",
                     cfg->name, checks[i].kind, used, budget);
            const char *labels[] = {"kind", checks[i].kind, "used", used, "budget", budget, NULL};
            if (s_alert(st, journal, t, "firebase.resource", summary, labels) == SN_OK) {
                sn_warn(S_ROLE, "over budget target=%s/%s/%s kind=%s used=%s budget=%s", t->project,
                        t->environment, cfg->name, checks[i].kind, used, budget);
                sn_metrics_add(sn_ctx_metrics(st->ctx), "firebase_resource_alerts", 1);
            } else {
                const char *dargv[] = {"DEL", mkey}; /* not recorded: try again next pass */
                redisReply *d = s_cmd(st, 2, dargv);
                if (d)
                    freeReplyObject(d);
            }
        }
        free(mkey);
    }
}

/* ---- the watch thread --------------------------------------------------------------------------
 */

static void *s_watch(void *arg)
{
    s_state_t *st = arg;
    sn_http_t *http = sn_http_new();
    sn_journal_opts_t jo = {.redis = st->redis, .source = st->source};
    sn_journal_t *journal = sn_journal_new(&jo);
    int64_t next_ms = sn_mono_ms() + 200;
    while (!atomic_load(&st->is_stopping)) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
        if (sn_mono_ms() < next_ms)
            continue;
        next_ms = sn_mono_ms() + st->interval_ms;
        if (!atomic_load(&st->is_leader) || !http || !journal)
            continue;
        for (size_t i = 0; i < st->target_count && !atomic_load(&st->is_stopping); i++) {
            s_target_t *t = &st->targets[i];
            s_cmp_t c;
            s_compare(st, t, http, NULL, true, &c);
            if (c.is_unknown)
                sn_info(S_ROLE, "drift check skipped target=%s/%s/%s: %s", t->project,
                        t->environment, t->cfg->name, c.why);
            else
                s_watch_drift(st, journal, t, &c);
            s_watch_resources(st, journal, t, c.is_unknown ? 0 : c.live_functions);
        }
    }
    sn_journal_destroy(&journal);
    sn_http_destroy(&http);
    return NULL;
}

/* ---- firebase.sync ----------------------------------------------------------------------------
 */

static s_target_t *s_find_target(s_state_t *st, const Sentinel__V1__Deploy *d)
{
    for (size_t i = 0; d && i < st->target_count; i++) {
        s_target_t *t = &st->targets[i];
        if (strcmp(t->cfg->name, d->target) == 0 && strcmp(t->project, d->project) == 0 &&
            strcmp(t->environment, d->environment) == 0)
            return t;
    }
    return NULL;
}

static sn_rc_t s_job(sn_ctx_t *ctx, void *state, const sn_request_t *creq, sn_envelope_t *reply,
                     const char **nak_reason)
{
    (void)ctx;
    (void)nak_reason;
    sn_request_t *req = (sn_request_t *)creq;
    s_state_t *st = state;
    const Sentinel__V1__DeployRequest *in = sn_request_envelope(req)->deploy_request;
    Sentinel__V1__DeployResult *res = sn_request_alloc(req, sizeof *res);
    sentinel__v1__deploy_result__init(res);
    res->deploy = in->deploy;
    reply->type = "deploy.result";
    reply->body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT;
    reply->deploy_result = res;
    s_target_t *t = s_find_target(st, in->deploy);
    if (strcmp(in->op ? in->op : "", "check") != 0) {
        res->reason = "unknown op (check)";
    } else if (!t) {
        res->reason = "not a firebase target of that project environment";
    } else {
        sn_http_t *http = sn_http_new();
        s_cmp_t c;
        if (http) {
            s_compare(st, t, http, in->deploy->release_id, false, &c);
        } else {
            memset(&c, 0, sizeof c);
            c.is_unknown = true;
            snprintf(c.why, sizeof c.why, "no HTTP client");
        }
        sn_http_destroy(&http);
        char *why = c.is_unknown ? sn_strdupf("live state unknown: %s", c.why)
                    : c.text[0]  ? sn_strdupf("out of sync: %s", c.text)
                                 : sn_strdupf("in sync (%d functions live)", c.live_functions);
        res->ok = !c.is_unknown && !c.text[0];
        res->is_transient = c.is_unknown;
        res->reason = sn_request_strdup(req, why);
        free(why);
    }
    sn_info(S_ROLE, "check deploy=%s ok=%d reason=%s",
            in->deploy && in->deploy->deploy_id ? in->deploy->deploy_id : "", res->ok, res->reason);
    return SN_OK;
}

static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST || !env->deploy_request ||
        !env->deploy_request->deploy) {
        sn_info(S_ROLE, "refused request: body is not a deploy_request with a deploy");
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    sn_request_defer(ctx, req, s_job, state);
}

/* ---- role callbacks ---------------------------------------------------------------------------
 */

static void s_leadership(sn_ctx_t *ctx, void *state, bool is_leader, uint64_t fence)
{
    (void)ctx;
    s_state_t *st = state;
    atomic_store(&st->fence, fence);
    atomic_store(&st->is_leader, is_leader);
    sn_info(S_ROLE, "%s the drift and resource watch", is_leader ? "running" : "stopped");
}

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    const sn_config_t *cfg = sn_ctx_config(ctx);
    s_state_t *st = sn_calloc(1, sizeof *st);
    *state = st;
    st->ctx = ctx;
    st->redis = sn_ctx_redis(ctx);
    st->source = sn_ctx_source(ctx);
    pthread_mutex_init(&st->mu, NULL);
    st->interval_ms = S_DEFAULT_INTERVAL_MS;
    for (size_t p = 0; p < cfg->project_count; p++) {
        const sn_project_config_t *pc = &cfg->projects[p];
        for (size_t e = 0; e < pc->environment_count; e++) {
            const sn_environment_config_t *ec = &pc->environments[e];
            for (size_t i = 0; ec->targets && ec->targets[i]; i++) {
                const sn_target_config_t *tc = sn_config_target(cfg, ec->targets[i]);
                if (!tc || !tc->type || strcmp(tc->type, "firebase") != 0)
                    continue;
                if (tc->drift_check_interval_ms > 0 &&
                    (st->target_count == 0 || tc->drift_check_interval_ms < st->interval_ms))
                    st->interval_ms = tc->drift_check_interval_ms;
                st->targets = sn_realloc(st->targets, (st->target_count + 1) * sizeof *st->targets);
                s_target_t *t = &st->targets[st->target_count++];
                memset(t, 0, sizeof *t);
                t->cfg = tc;
                t->project = pc->name;
                t->environment = ec->name;
            }
        }
    }
    if (pthread_create(&st->thread, NULL, s_watch, st) != 0) {
        sn_error(S_ROLE, "cannot start the watch thread");
        return SN_ERROR;
    }
    st->has_thread = true;
    sn_info(S_ROLE, "ready targets=%zu interval_ms=%lld", st->target_count,
            (long long)st->interval_ms);
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    (void)ctx;
    s_state_t *st = state;
    if (!st)
        return;
    atomic_store(&st->is_stopping, true);
    if (st->has_thread)
        pthread_join(st->thread, NULL);
    for (size_t i = 0; i < st->target_count; i++) {
        sn_provider_destroy(&st->targets[i].prov);
        sn_gauth_destroy(&st->targets[i].gauth);
    }
    free(st->targets);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

const sn_role_t cloud_sync_sentinel_role = {
    .name = S_ROLE,
    .agent = "FirebaseDeployExecutor",
    .summary = "Firebase drift (live vs recorded) and resource budgets; serves firebase.sync",
    .services = (const char *const[]){"firebase.sync", NULL},
    .leadership = SN_LEADERSHIP_DUTY,
    .credit = 2,
    .init = s_init,
    .on_request = s_request,
    .on_leadership = s_leadership,
    .destroy = s_destroy,
};
