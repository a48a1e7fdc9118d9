/* Envelope -> CloudEvents JSON with CDEvents 0.5.1 data. Each mapped type has one small
 * builder that returns the CDEvent `subject` (id + content) or NULL when the body lacks a
 * field the schema requires; the caller then falls back to a plain Sentinel CloudEvent,
 * so nothing this module emits under a dev.cdevents type can fail its schema. */
#include "sentinel/sn_cloudevents.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sentinel/sn_json.h"

#define S_SENTINEL_TYPE_PREFIX "dev.sentinel."

typedef json_t *(s_subject_fn)(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts);

typedef struct {
    const char *type;      /* Sentinel event type */
    const char *cdevent;   /* CDEvents type */
    s_subject_fn *subject; /* builds {"id", "content"} or NULL */
} s_mapping_t;

static s_subject_fn s_pipelinerun_queued, s_pipelinerun_started, s_pipelinerun_finished,
    s_build_finished, s_service_deployed, s_service_rolledback, s_incident, s_change_merged;

static const s_mapping_t s_mappings[] = {
    {"run.queued", "dev.cdevents.pipelinerun.queued.0.3.0", s_pipelinerun_queued},
    {"run.started", "dev.cdevents.pipelinerun.started.0.3.0", s_pipelinerun_started},
    {"run.succeeded", "dev.cdevents.pipelinerun.finished.0.3.0", s_pipelinerun_finished},
    {"run.failed", "dev.cdevents.pipelinerun.finished.0.3.0", s_pipelinerun_finished},
    {"run.cancelled", "dev.cdevents.pipelinerun.finished.0.3.0", s_pipelinerun_finished},
    {"run.superseded", "dev.cdevents.pipelinerun.finished.0.3.0", s_pipelinerun_finished},
    {"run.rejected", "dev.cdevents.pipelinerun.finished.0.3.0", s_pipelinerun_finished},
    {"run.rolled_back", "dev.cdevents.pipelinerun.finished.0.3.0", s_pipelinerun_finished},
    {"build.succeeded", "dev.cdevents.build.finished.0.3.0", s_build_finished},
    {"build.failed", "dev.cdevents.build.finished.0.3.0", s_build_finished},
    {"build.warning", "dev.cdevents.build.finished.0.3.0", s_build_finished},
    {"deploy.promoted", "dev.cdevents.service.deployed.0.3.0", s_service_deployed},
    {"deploy.rolled_back", "dev.cdevents.service.rolledback.0.3.0", s_service_rolledback},
    {"alert.raised", "dev.cdevents.incident.detected.0.3.0", s_incident},
    {"alert.resolved", "dev.cdevents.incident.resolved.0.3.0", s_incident},
    {"source.pushed", "dev.cdevents.change.merged.0.3.0", s_change_merged},
    {"change.merged", "dev.cdevents.change.merged.0.3.0", s_change_merged},
};

static const s_mapping_t *s_find(const char *type);
static json_t *s_subject_of(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts,
                            const s_mapping_t **map_out);
static json_t *s_sentinel_data(const sn_envelope_t *env);
static char *s_source(const sn_envelope_t *env);
static bool s_nonempty(const char *s);
static char *s_pct(const char *s);

const char *sn_cloudevents_cdevent_type(const char *type)
{
    const s_mapping_t *m = type ? s_find(type) : NULL;
    return m ? m->cdevent : NULL;
}

void sn_cloudevents_type(const sn_envelope_t *env, char *out, size_t out_len)
{
    const s_mapping_t *map = NULL;
    json_t *subject = s_subject_of(env, NULL, &map);
    if (subject) {
        sn_strlcpy(out, map->cdevent, out_len);
        json_decref(subject);
        return;
    }
    snprintf(out, out_len, S_SENTINEL_TYPE_PREFIX "%s", env->type ? env->type : "");
}

json_t *sn_cloudevents_cdevent(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts)
{
    const s_mapping_t *map = NULL;
    json_t *subject = s_subject_of(env, opts, &map);
    if (!subject)
        return NULL;
    char ts[32];
    sn_cloudevents_time(env->time_unix_ms, ts, sizeof ts);
    char *source = s_source(env);
    json_t *context =
        json_pack("{s:s, s:s, s:s, s:s, s:s}", "specversion", SN_CDEVENTS_SPECVERSION, "id",
                  env->id, "source", source, "type", map->cdevent, "timestamp", ts);
    free(source);
    SN_ASSERT(context);
    if (s_nonempty(env->correlation_id))
        json_object_set_new(context, "chainId", json_string(env->correlation_id));
    json_t *ev = json_object();
    json_object_set_new(ev, "context", context);
    json_object_set_new(ev, "subject", subject);
    json_t *custom = s_sentinel_data(env);
    if (custom && json_object_size(custom) > 0) {
        json_object_set_new(ev, "customData", custom);
        json_object_set_new(ev, "customDataContentType", json_string("application/json"));
    } else {
        json_decref(custom);
    }
    return ev;
}

json_t *sn_cloudevents_from_envelope(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts)
{
    SN_ASSERT(env && env->id && env->type);
    json_t *ce = json_object();
    json_t *cdevent = sn_cloudevents_cdevent(env, opts);
    char type[SN_CLOUDEVENTS_TYPE_MAX];
    char ts[32];
    sn_cloudevents_time(env->time_unix_ms, ts, sizeof ts);
    char *source = s_source(env);
    json_object_set_new(ce, "specversion", json_string(SN_CLOUDEVENTS_SPECVERSION));
    json_object_set_new(ce, "id", json_string(env->id));
    json_object_set_new(ce, "source", json_string(source));
    free(source);
    if (cdevent) {
        json_t *ctx = json_object_get(cdevent, "context");
        json_t *subj = json_object_get(cdevent, "subject");
        json_object_set(ce, "type", json_object_get(ctx, "type"));
        json_object_set(ce, "subject", json_object_get(subj, "id"));
    } else {
        snprintf(type, sizeof type, S_SENTINEL_TYPE_PREFIX "%s", env->type);
        json_object_set_new(ce, "type", json_string(type));
        if (s_nonempty(env->subject))
            json_object_set_new(ce, "subject", json_string(env->subject));
    }
    json_object_set_new(ce, "time", json_string(ts));
    json_object_set_new(ce, "datacontenttype", json_string("application/json"));
    if (opts && opts->sequence) {
        json_object_set_new(ce, "sequence", json_string(opts->sequence));
    } else {
        char seq[24];
        snprintf(seq, sizeof seq, "%020" PRIu64, env->seq);
        json_object_set_new(ce, "sequence", json_string(seq));
    }
    json_object_set_new(ce, "sentineltype", json_string(env->type));
    if (s_nonempty(env->correlation_id))
        json_object_set_new(ce, "correlationid", json_string(env->correlation_id));
    json_object_set_new(ce, "data", cdevent ? cdevent : s_sentinel_data(env));
    return ce;
}

char *sn_cloudevents_dumps(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts)
{
    json_t *ce = sn_cloudevents_from_envelope(env, opts);
    /* Compact jansson output escapes control characters, so it is one line. */
    char *text = json_dumps(ce, JSON_COMPACT);
    json_decref(ce);
    SN_ASSERT(text);
    return text;
}

void sn_cloudevents_time(int64_t unix_ms, char *out, size_t out_len)
{
    if (unix_ms < 0)
        unix_ms = 0;
    time_t secs = (time_t)(unix_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char base[24];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, out_len, "%s.%03dZ", base, (int)(unix_ms % 1000));
}

/* ---- subject builders ----------------------------------------------------------------- */

static const Sentinel__V1__Run *s_run(const sn_envelope_t *env)
{
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_RUN || !env->run ||
        !s_nonempty(env->run->run_id))
        return NULL;
    return env->run;
}

static json_t *s_run_subject(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts,
                             json_t **content_out)
{
    const Sentinel__V1__Run *run = s_run(env);
    if (!run)
        return NULL;
    char *pipeline = sn_strdupf("%s/%s", run->project ? run->project : "",
                                run->environment ? run->environment : "");
    char *id = s_pct(run->run_id);
    char *uri = opts && opts->api_base ? sn_strdupf("%s/api/v1/runs/%s", opts->api_base, id)
                                       : sn_strdupf("urn:sentinel:run:%s", id);
    json_t *content = json_pack("{s:s, s:s}", "pipelineName", pipeline, "uri", uri);
    free(pipeline);
    free(id);
    free(uri);
    *content_out = content;
    return json_pack("{s:s, s:O}", "id", run->run_id, "content", content);
}

static json_t *s_pipelinerun_queued(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts)
{
    json_t *content = NULL;
    json_t *subject = s_run_subject(env, opts, &content);
    json_decref(content);
    return subject;
}

static json_t *s_pipelinerun_started(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts)
{
    return s_pipelinerun_queued(env, opts);
}

static json_t *s_pipelinerun_finished(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts)
{
    json_t *content = NULL;
    json_t *subject = s_run_subject(env, opts, &content);
    if (!subject)
        return NULL;
    const char *t = env->type;
    const char *outcome = strcmp(t, "run.succeeded") == 0 ? "success"
                          : strcmp(t, "run.cancelled") == 0 || strcmp(t, "run.superseded") == 0
                              ? "cancel"
                              : "failure";
    json_object_set_new(content, "outcome", json_string(outcome));
    if (s_nonempty(env->run->reason))
        json_object_set_new(content, "errors", json_string(env->run->reason));
    json_decref(content);
    return subject;
}

/* purl of an artifact: pkg:generic/<project>@sha256%3A<hex>, or @<version> without a hash. */
static char *s_purl(const char *project, const char *sha256, const char *version)
{
    char *name = s_pct(s_nonempty(project) ? project : "sentinel");
    char *out;
    if (s_nonempty(sha256)) {
        char *h = s_pct(sha256);
        out = sn_strdupf("pkg:generic/%s@sha256%%3A%s", name, h);
        free(h);
    } else if (s_nonempty(version)) {
        char *v = s_pct(version);
        out = sn_strdupf("pkg:generic/%s@%s", name, v);
        free(v);
    } else {
        out = NULL;
    }
    free(name);
    return out;
}

static json_t *s_build_finished(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts)
{
    const Sentinel__V1__Run *run = s_run(env);
    if (!run)
        return NULL;
    json_t *content = json_object();
    char *purl = s_purl(run->project, run->artifact_sha256, NULL);
    if (purl)
        json_object_set_new(content, "artifactId", json_string(purl));
    free(purl);
    return json_pack("{s:s, s:o}", "id", run->run_id, "content", content);
}

static json_t *s_service(const sn_envelope_t *env, bool is_rollback)
{
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_DEPLOY || !env->deploy)
        return NULL;
    const Sentinel__V1__Deploy *d = env->deploy;
    if (!s_nonempty(d->project) || !s_nonempty(d->environment) || !s_nonempty(d->target))
        return NULL;
    /* The artifact now running: the hash when the producer labelled it, else the release
     * (for a rollback, the release returned to). */
    const char *version = NULL;
    if (is_rollback && s_nonempty(d->previous_release_id))
        version = d->previous_release_id;
    else if (s_nonempty(d->release_id))
        version = d->release_id;
    else
        version = d->deploy_id;
    char *purl = s_purl(d->project, sn_envelope_label(env, "artifact_sha256"), version);
    if (!purl)
        return NULL;
    char *env_id = sn_strdupf("%s/%s", d->project, d->environment);
    char *subject_id = sn_strdupf("%s/%s/%s", d->project, d->environment, d->target);
    json_t *subject = json_pack("{s:s, s:{s:{s:s}, s:s}}", "id", subject_id, "content",
                                "environment", "id", env_id, "artifactId", purl);
    free(purl);
    free(env_id);
    free(subject_id);
    return subject;
}

static json_t *s_service_deployed(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts)
{
    return s_service(env, false);
}

static json_t *s_service_rolledback(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts)
{
    return s_service(env, true);
}

static const char *s_alert_label(const Sentinel__V1__Alert *a, const char *key)
{
    for (size_t i = 0; i < a->n_labels; i++)
        if (a->labels[i]->key && strcmp(a->labels[i]->key, key) == 0 &&
            s_nonempty(a->labels[i]->value))
            return a->labels[i]->value;
    return NULL;
}

/* incident.detected / resolved: subject.id is label incident_id, else the alert name
 * (identical for both events so consumers can pair them); environment.id is
 * "<project>/<environment>" from the labels, else "sentinel". */
static json_t *s_incident(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts)
{
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_ALERT || !env->alert)
        return NULL;
    const Sentinel__V1__Alert *a = env->alert;
    const char *id = s_alert_label(a, "incident_id");
    if (!id)
        id = a->name;
    if (!s_nonempty(id))
        return NULL;
    const char *project = s_alert_label(a, "project");
    const char *environment = s_alert_label(a, "environment");
    char *env_id = environment && project ? sn_strdupf("%s/%s", project, environment)
                                          : sn_strdup(environment ? environment : "sentinel");
    json_t *content = json_pack("{s:{s:s}}", "environment", "id", env_id);
    free(env_id);
    if (s_nonempty(a->summary))
        json_object_set_new(content, "description", json_string(a->summary));
    const char *target = s_alert_label(a, "target");
    if (target)
        json_object_set_new(content, "service", json_pack("{s:s}", "id", target));
    return json_pack("{s:s, s:o}", "id", id, "content", content);
}

/* change.merged from a push: subject.id "<project>@<sha>" (or the ref), repository.id the
 * project. */
static json_t *s_change_merged(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts)
{
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_TRIGGER || !env->trigger)
        return NULL;
    const Sentinel__V1__TriggerRequest *t = env->trigger;
    if (!s_nonempty(t->project))
        return NULL;
    const char *rev = s_nonempty(t->sha) ? t->sha : t->ref;
    if (!s_nonempty(rev))
        return NULL;
    char *id = sn_strdupf("%s@%s", t->project, rev);
    json_t *subject =
        json_pack("{s:s, s:{s:{s:s}}}", "id", id, "content", "repository", "id", t->project);
    free(id);
    return subject;
}

/* ---- helpers ---------------------------------------------------------------------------- */

static const s_mapping_t *s_find(const char *type)
{
    for (size_t i = 0; i < SN_ARRAY_LEN(s_mappings); i++)
        if (strcmp(s_mappings[i].type, type) == 0)
            return &s_mappings[i];
    return NULL;
}

static json_t *s_subject_of(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts,
                            const s_mapping_t **map_out)
{
    const s_mapping_t *map = env->type ? s_find(env->type) : NULL;
    if (!map || !s_nonempty(env->id))
        return NULL;
    *map_out = map;
    return map->subject(env, opts);
}

/* The envelope body in the proto3 JSON mapping, without the envelope attributes. */
static json_t *s_sentinel_data(const sn_envelope_t *env)
{
    static const char *const attrs[] = {
        "id",          "source", "type",        "subject", "timeUnixMs", "correlationId",
        "causationId", "fence",  "incarnation", "seq"};
    json_t *all = sn_json_from_message(&env->base);
    if (!all)
        return json_object();
    for (size_t i = 0; i < SN_ARRAY_LEN(attrs); i++)
        json_object_del(all, attrs[i]);
    return all;
}

/* A URI-reference: "/sentinel/<role>/<instance>" (path-absolute). */
static char *s_source(const sn_envelope_t *env)
{
    const char *src = s_nonempty(env->source) ? env->source : "sentinel";
    char *p = s_pct(src);
    char *out = p[0] == '/' ? sn_strdup(p) : sn_strdupf("/%s", p);
    free(p);
    return out;
}

static bool s_nonempty(const char *s)
{
    return s && *s;
}

/* Percent-encodes everything but unreserved characters and '/', so the result is safe in
 * a URI path or a purl. */
static char *s_pct(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = sn_malloc(3 * n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return out;
}
