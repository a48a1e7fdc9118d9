/* The gateway's routes. Reads come straight from Redis (docs/pipeline.md key layout) with
 * short timeouts; writes become service calls to buildpilot (run.trigger, run.approve,
 * run.cancel, env.rollback, env.freeze, env.unfreeze) carrying the authenticated token
 * name in label `on_behalf_of`. Every write is validated completely before the call, so
 * a 4xx never reaches a service. */
#include "gateway.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sentinel/sn_journal.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_log.h"

#define S_RUNS_DEFAULT 50
#define S_RUNS_MAX 500
#define S_RELEASES_SHOWN 10
#define S_FIELD_MAX 256

static enum MHD_Result s_call(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req,
                              const char *service, sn_envelope_t *env, int deadline_ms);
static sn_rc_t s_redis(gateway_t *gw, redisReply **reply, int argc, const char **argv,
                       const size_t *lens);
static enum MHD_Result s_redis_down(struct MHD_Connection *conn);

bool gateway_id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > 64 || strcmp(id, ".") == 0 || strcmp(id, "..") == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

/* ---- health ------------------------------------------------------------------------------- */

enum MHD_Result gateway_api_healthz(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    return gateway_reply_json(conn, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
}

enum MHD_Result gateway_api_readyz(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    const char *argv[] = {"PING"};
    redisReply *reply = NULL;
    req->ready_redis = 0;
    if (s_redis(gw, &reply, 1, argv, NULL) == SN_OK) {
        req->ready_redis = reply->type != REDIS_REPLY_ERROR;
        freeReplyObject(reply);
    }
    /* The broker: a broker.services call must come back within the deadline. */
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, sn_ctx_source(gw->ctx), "broker.services", id);
    return s_call(gw, conn, req, "broker.services", &env, GATEWAY_READY_DEADLINE_MS);
}

static enum MHD_Result s_readyz_finish(gateway_t *gw, struct MHD_Connection *conn,
                                       gateway_req_t *req)
{
    bool broker = req->call->rc == SN_OK;
    bool redis = req->ready_redis == 1;
    return gateway_reply_json(conn, broker && redis ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
                              json_pack("{s:s, s:s, s:s}", "status",
                                        broker && redis ? "ready" : "not_ready", "redis",
                                        redis ? "up" : "down", "broker", broker ? "up" : "down"));
}

/* ---- runs ------------------------------------------------------------------------------------ */

static json_t *s_run_json(const uint8_t *data, size_t len)
{
    Sentinel__V1__Run *run = sentinel__v1__run__unpack(NULL, len, data);
    if (!run)
        return NULL;
    json_t *j = sn_json_from_message(&run->base);
    sentinel__v1__run__free_unpacked(run, NULL);
    return j;
}

/* HGET run:<id> pb: SN_OK with *out (NULL when absent), SN_AGAIN when Redis is down. */
static sn_rc_t s_load_run(gateway_t *gw, const char *id, json_t **out)
{
    *out = NULL;
    char *key = sn_strdupf("%srun:%s", sn_redis_ns(gw->redis), id);
    const char *argv[] = {"HGET", key, "pb"};
    redisReply *reply = NULL;
    sn_rc_t rc = s_redis(gw, &reply, 3, argv, NULL);
    free(key);
    if (rc != SN_OK)
        return SN_AGAIN;
    if (reply->type == REDIS_REPLY_STRING) {
        *out = s_run_json((const uint8_t *)reply->str, reply->len);
        if (!*out)
            sn_warn("gateway", "run:%s holds a Run that does not parse", id);
    }
    freeReplyObject(reply);
    return SN_OK;
}

enum MHD_Result gateway_api_runs(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    int64_t limit = S_RUNS_DEFAULT;
    const char *ls = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "limit");
    if (ls && sn_parse_i64(ls, 1, S_RUNS_MAX, &limit) != SN_OK)
        return gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                   "limit must be an integer in [1, %d]", S_RUNS_MAX);
    const char *project = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "project");
    if (project && !sn_config_project(gw->cfg, project))
        return gateway_reply_error(conn, MHD_HTTP_NOT_FOUND, "not_found", "unknown project");
    char *key = project ? sn_strdupf("%sruns:%s", sn_redis_ns(gw->redis), project)
                        : sn_strdupf("%sruns:all", sn_redis_ns(gw->redis));
    char stop[24];
    snprintf(stop, sizeof stop, "%lld", (long long)(limit - 1));
    const char *argv[] = {"ZREVRANGE", key, "0", stop};
    redisReply *ids = NULL;
    sn_rc_t rc = s_redis(gw, &ids, 4, argv, NULL);
    free(key);
    if (rc != SN_OK)
        return s_redis_down(conn);
    json_t *runs = json_array();
    for (size_t i = 0; ids->type == REDIS_REPLY_ARRAY && i < ids->elements; i++) {
        const redisReply *e = ids->element[i];
        if (e->type != REDIS_REPLY_STRING || !gateway_id_ok(e->str))
            continue;
        json_t *run = NULL;
        if (s_load_run(gw, e->str, &run) != SN_OK) {
            json_decref(runs);
            freeReplyObject(ids);
            return s_redis_down(conn);
        }
        if (run)
            json_array_append_new(runs, run);
    }
    freeReplyObject(ids);
    return gateway_reply_json(conn, MHD_HTTP_OK, json_pack("{s:o}", "runs", runs));
}

enum MHD_Result gateway_api_run_show(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    if (!gateway_id_ok(req->params[0]))
        return gateway_reply_error(conn, MHD_HTTP_NOT_FOUND, "not_found", "no such run");
    json_t *run = NULL;
    if (s_load_run(gw, req->params[0], &run) != SN_OK)
        return s_redis_down(conn);
    if (!run)
        return gateway_reply_error(conn, MHD_HTTP_NOT_FOUND, "not_found", "no such run");
    return gateway_reply_json(conn, MHD_HTTP_OK, run);
}

enum MHD_Result gateway_api_run_logs(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    /* The id is checked before it becomes part of a path (no '/', no "..") . */
    if (!gateway_id_ok(req->params[0]))
        return gateway_reply_error(conn, MHD_HTTP_NOT_FOUND, "not_found", "no such run");
    char *path = sn_strdupf("%s/builds/%s.log", gw->cfg->state_dir, req->params[0]);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    int err = errno;
    free(path);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        if (fd < 0 && err != ENOENT)
            sn_warn("gateway", "cannot open the log of run=%s: %s", req->params[0], strerror(err));
        return gateway_reply_error(conn, MHD_HTTP_NOT_FOUND, "not_found", "no log for this run");
    }
    struct MHD_Response *r = MHD_create_response_from_fd((uint64_t)st.st_size, fd);
    if (!r) {
        close(fd);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

/* ---- environments ------------------------------------------------------------------------------
 */

static const char *s_hash_field(const redisReply *h, const char *field)
{
    if (!h || h->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < h->elements; i += 2)
        if (h->element[i]->type == REDIS_REPLY_STRING && strcmp(h->element[i]->str, field) == 0 &&
            h->element[i + 1]->type == REDIS_REPLY_STRING)
            return h->element[i + 1]->str;
    return NULL;
}

static sn_rc_t s_env_json(gateway_t *gw, const sn_project_config_t *p,
                          const sn_environment_config_t *e, json_t **out)
{
    const char *ns = sn_redis_ns(gw->redis);
    char *key = sn_strdupf("%senv:%s:%s", ns, p->name, e->name);
    const char *argv[] = {"HGETALL", key};
    redisReply *h = NULL;
    sn_rc_t rc = s_redis(gw, &h, 2, argv, NULL);
    free(key);
    if (rc != SN_OK)
        return SN_AGAIN;
    const char *frozen = s_hash_field(h, "frozen");
    const char *current = s_hash_field(h, "current_run");
    const char *verified = s_hash_field(h, "last_verified_artifact");
    json_t *j = json_pack("{s:s, s:s, s:s?, s:b, s:b}", "project", p->name, "name", e->name,
                          "branch", e->branch, "frozen", frozen && strcmp(frozen, "1") == 0,
                          "approvalRequired", e->approval.required);
    SN_ASSERT(j);
    if (current && *current)
        json_object_set_new(j, "currentRun", json_string(current));
    if (verified && *verified)
        json_object_set_new(j, "lastVerifiedArtifact", json_string(verified));
    freeReplyObject(h);
    json_t *targets = json_array();
    for (size_t t = 0; e->targets && e->targets[t]; t++) {
        const sn_target_config_t *tc = sn_config_target(gw->cfg, e->targets[t]);
        char *rkey = sn_strdupf("%srelease:%s:%s:%s", ns, p->name, e->name, e->targets[t]);
        char stop[16];
        snprintf(stop, sizeof stop, "%d", S_RELEASES_SHOWN - 1);
        const char *largv[] = {"LRANGE", rkey, "0", stop};
        redisReply *l = NULL;
        rc = s_redis(gw, &l, 4, largv, NULL);
        free(rkey);
        if (rc != SN_OK) {
            json_decref(targets);
            json_decref(j);
            return SN_AGAIN;
        }
        json_t *releases = json_array();
        for (size_t i = 0; l->type == REDIS_REPLY_ARRAY && i < l->elements; i++) {
            const redisReply *x = l->element[i];
            if (x->type != REDIS_REPLY_STRING)
                continue;
            Sentinel__V1__ReleaseIdentity *ri =
                sentinel__v1__release_identity__unpack(NULL, x->len, (const uint8_t *)x->str);
            if (!ri)
                continue;
            json_t *rj = sn_json_from_message(&ri->base);
            sentinel__v1__release_identity__free_unpacked(ri, NULL);
            if (rj)
                json_array_append_new(releases, rj);
        }
        freeReplyObject(l);
        json_t *tj = json_pack("{s:s, s:o}", "name", e->targets[t], "releases", releases);
        if (tc && tc->type)
            json_object_set_new(tj, "type", json_string(tc->type));
        if (tc && tc->url)
            json_object_set_new(tj, "url", json_string(tc->url));
        json_array_append_new(targets, tj);
    }
    json_object_set_new(j, "targets", targets);
    *out = j;
    return SN_OK;
}

enum MHD_Result gateway_api_environments(gateway_t *gw, struct MHD_Connection *conn,
                                         gateway_req_t *req)
{
    const char *only = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "project");
    if (only && !sn_config_project(gw->cfg, only))
        return gateway_reply_error(conn, MHD_HTTP_NOT_FOUND, "not_found", "unknown project");
    json_t *list = json_array();
    for (size_t i = 0; i < gw->cfg->project_count; i++) {
        const sn_project_config_t *p = &gw->cfg->projects[i];
        if (only && strcmp(only, p->name) != 0)
            continue;
        for (size_t k = 0; k < p->environment_count; k++) {
            json_t *e = NULL;
            if (s_env_json(gw, p, &p->environments[k], &e) != SN_OK) {
                json_decref(list);
                return s_redis_down(conn);
            }
            json_array_append_new(list, e);
        }
    }
    return gateway_reply_json(conn, MHD_HTTP_OK, json_pack("{s:o}", "environments", list));
}

/* ---- agents, metrics, events ------------------------------------------------------------------
 */

enum MHD_Result gateway_api_agents(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    json_t *agents = gateway_agents_load(gw);
    if (!agents)
        return s_redis_down(conn);
    return gateway_reply_json(conn, MHD_HTTP_OK, json_pack("{s:o}", "agents", agents));
}

enum MHD_Result gateway_api_metrics(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    char *text = gateway_metrics_render(gw);
    if (!text)
        return s_redis_down(conn);
    enum MHD_Result ret = gateway_reply_text(
        conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text));
    free(text);
    return ret;
}

enum MHD_Result gateway_api_events(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    const char *cursor = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Last-Event-ID");
    if (!cursor || !*cursor)
        cursor = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "lastEventId");
    if (cursor && !*cursor)
        cursor = NULL;
    uint64_t ms, seq;
    if (cursor && strcmp(cursor, "0") != 0 &&
        (strlen(cursor) >= SN_JOURNAL_ID_MAX || !sn_journal_id_parse(cursor, &ms, &seq)))
        return gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                   "Last-Event-ID must be a journal stream id");
    const char *types = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "type");
    if (types && (!*types || strlen(types) > S_FIELD_MAX))
        return gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                   "type must be 1 to %d characters", S_FIELD_MAX);
    int n = __atomic_add_fetch(&gw->sse_count, 1, __ATOMIC_ACQ_REL);
    if (n > gw->cfg->gateway.max_sse) {
        __atomic_sub_fetch(&gw->sse_count, 1, __ATOMIC_ACQ_REL);
        sn_metrics_add(gw->metrics, "sse_refused", 1);
        sn_warn("gateway", "event stream refused: %d streams open (gateway.max_sse)", n - 1);
        return gateway_reply_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "over_capacity",
                                   "too many event streams");
    }
    return gateway_sse_open(gw->sse, conn, cursor, types);
}

/* ---- writes ------------------------------------------------------------------------------------
 */

/* Parses the optional JSON body into an object with only @allowed keys. An absent body
 * is {}. Queues a 400 and returns NULL on error. */
static json_t *s_body(struct MHD_Connection *conn, gateway_req_t *req, const char *const *allowed,
                      enum MHD_Result *ret)
{
    if (req->body_len == 0)
        return json_object();
    json_error_t jerr;
    json_t *obj = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj || !json_is_object(obj)) {
        json_decref(obj);
        *ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_json",
                                   "the body must be one JSON object");
        return NULL;
    }
    const char *key;
    json_t *value;
    json_object_foreach(obj, key, value)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++)
            ok = strcmp(allowed[i], key) == 0;
        if (!ok) {
            *ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                       "unknown field \"%.64s\"", key);
            json_decref(obj);
            return NULL;
        }
    }
    return obj;
}

/* Reads optional string @name of @obj into *out (borrowed). Queues 400 on a wrong type,
 * an over-long value or a control character. */
static bool s_str(struct MHD_Connection *conn, json_t *obj, const char *name, bool required,
                  const char **out, enum MHD_Result *ret)
{
    json_t *v = json_object_get(obj, name);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required)
            *ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                       "missing field \"%s\"", name);
        return !required;
    }
    const char *s = json_string_value(v);
    size_t n = s ? json_string_length(v) : 0;
    bool ok = s && n <= S_FIELD_MAX && strlen(s) == n && (!required || n > 0);
    for (size_t i = 0; ok && i < n; i++)
        ok = (unsigned char)s[i] >= 0x20 && s[i] != 0x7f;
    if (!ok) {
        *ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                   "field \"%s\" must be a non-empty string of at most %d "
                                   "printable characters",
                                   name, S_FIELD_MAX);
        return false;
    }
    *out = n ? s : NULL;
    return true;
}

static bool s_hex_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 7 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') ||
              (s[i] >= 'A' && s[i] <= 'F')))
            return false;
    return true;
}

static void s_stamp(gateway_t *gw, gateway_req_t *req, sn_envelope_t *env, const char *type,
                    char id[SN_ID_LEN + 1])
{
    sn_envelope_stamp(env, sn_ctx_source(gw->ctx), type, id);
    sn_envelope_add_label(env, "on_behalf_of", req->principal ? req->principal : "");
}

enum MHD_Result gateway_api_deploy(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    static const char *const allowed[] = {"project", "environment", "ref", "sha", "dry_run", NULL};
    enum MHD_Result ret = MHD_NO;
    if (req->body_len == 0)
        return gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                   "a JSON body is required");
    json_t *obj = s_body(conn, req, allowed, &ret);
    if (!obj)
        return ret;
    const char *project, *environment, *ref, *sha;
    if (!s_str(conn, obj, "project", true, &project, &ret) ||
        !s_str(conn, obj, "environment", true, &environment, &ret) ||
        !s_str(conn, obj, "ref", false, &ref, &ret) || !s_str(conn, obj, "sha", false, &sha, &ret))
        goto out;
    json_t *dry = json_object_get(obj, "dry_run");
    if (dry && !json_is_boolean(dry)) {
        ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                  "field \"dry_run\" must be true or false");
        goto out;
    }
    if (sha && !s_hex_ok(sha)) {
        ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                  "field \"sha\" must be 7 to 64 hex digits");
        goto out;
    }
    const sn_project_config_t *p = sn_config_project(gw->cfg, project);
    if (!p) {
        ret = gateway_reply_error(conn, MHD_HTTP_NOT_FOUND, "not_found", "unknown project");
        goto out;
    }
    const sn_environment_config_t *e = sn_config_environment(p, environment);
    if (!e) {
        ret = gateway_reply_error(conn, MHD_HTTP_NOT_FOUND, "not_found",
                                  "unknown environment for this project");
        goto out;
    }
    req->is_dry_run = dry && json_is_true(dry);
    Sentinel__V1__TriggerRequest t = SENTINEL__V1__TRIGGER_REQUEST__INIT;
    t.project = (char *)p->name;
    t.environment = (char *)e->name;
    t.ref = (char *)(ref ? ref : e->branch ? e->branch : "");
    t.sha = (char *)(sha ? sha : "");
    t.trigger = "api";
    t.dry_run = req->is_dry_run;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    s_stamp(gw, req, &env, "run.trigger", id);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_TRIGGER;
    env.trigger = &t;
    sn_info("gateway", "deploy project=%s environment=%s ref=%s dry_run=%d by=%s", p->name, e->name,
            t.ref, (int)t.dry_run, req->principal);
    ret = s_call(gw, conn, req, "run.trigger", &env, GATEWAY_CALL_DEADLINE_MS);
    sn_envelope_fini_labels(&env);
out:
    json_decref(obj);
    return ret;
}

/* approve / cancel: the run must exist. */
static enum MHD_Result s_run_control(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req,
                                     const char *service, const char *action)
{
    static const char *const allowed[] = {"reason", NULL};
    const char *run_id = req->params[0];
    if (!gateway_id_ok(run_id))
        return gateway_reply_error(conn, MHD_HTTP_NOT_FOUND, "not_found", "no such run");
    enum MHD_Result ret = MHD_NO;
    json_t *obj = s_body(conn, req, allowed, &ret);
    if (!obj)
        return ret;
    const char *reason = NULL;
    if (!s_str(conn, obj, "reason", false, &reason, &ret))
        goto out;
    char *key = sn_strdupf("%srun:%s", sn_redis_ns(gw->redis), run_id);
    const char *argv[] = {"HEXISTS", key, "pb"};
    redisReply *reply = NULL;
    sn_rc_t rc = s_redis(gw, &reply, 3, argv, NULL);
    free(key);
    if (rc != SN_OK) {
        ret = s_redis_down(conn);
        goto out;
    }
    bool exists = reply->type == REDIS_REPLY_INTEGER && reply->integer == 1;
    freeReplyObject(reply);
    if (!exists) {
        ret = gateway_reply_error(conn, MHD_HTTP_NOT_FOUND, "not_found", "no such run");
        goto out;
    }
    Sentinel__V1__RunControl c = SENTINEL__V1__RUN_CONTROL__INIT;
    c.run_id = (char *)run_id;
    c.action = (char *)action;
    c.reason = (char *)(reason ? reason : "");
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    s_stamp(gw, req, &env, service, id);
    env.correlation_id = (char *)run_id;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_CONTROL;
    env.control = &c;
    sn_info("gateway", "%s run=%s by=%s", action, run_id, req->principal);
    ret = s_call(gw, conn, req, service, &env, GATEWAY_CALL_DEADLINE_MS);
    sn_envelope_fini_labels(&env);
out:
    json_decref(obj);
    return ret;
}

enum MHD_Result gateway_api_approve(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    return s_run_control(gw, conn, req, "run.approve", "approve");
}

enum MHD_Result gateway_api_cancel(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    return s_run_control(gw, conn, req, "run.cancel", "cancel");
}

/* rollback / freeze / unfreeze: the environment must be configured. @action NULL: freeze
 * or unfreeze as the body's "frozen" says (default freeze). */
static enum MHD_Result s_env_control(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req,
                                     const char *action)
{
    static const char *const rollback_keys[] = {"reason", "to_run", NULL};
    static const char *const freeze_keys[] = {"reason", "frozen", NULL};
    const sn_project_config_t *p = sn_config_project(gw->cfg, req->params[0]);
    const sn_environment_config_t *e = p ? sn_config_environment(p, req->params[1]) : NULL;
    if (!p || !e)
        return gateway_reply_error(conn, MHD_HTTP_NOT_FOUND, "not_found",
                                   p ? "unknown environment for this project" : "unknown project");
    bool is_rollback = action && strcmp(action, "rollback") == 0;
    enum MHD_Result ret = MHD_NO;
    json_t *obj = s_body(conn, req, is_rollback ? rollback_keys : freeze_keys, &ret);
    if (!obj)
        return ret;
    const char *reason = NULL, *to_run = NULL;
    if (!s_str(conn, obj, "reason", false, &reason, &ret) ||
        (is_rollback && !s_str(conn, obj, "to_run", false, &to_run, &ret)))
        goto out;
    if (to_run && !gateway_id_ok(to_run)) {
        ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                  "field \"to_run\" is not a run id");
        goto out;
    }
    if (!action) {
        json_t *frozen = json_object_get(obj, "frozen");
        if (frozen && !json_is_boolean(frozen)) {
            ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                      "field \"frozen\" must be true or false");
            goto out;
        }
        action = frozen && json_is_false(frozen) ? "unfreeze" : "freeze";
    }
    char service[32];
    snprintf(service, sizeof service, "env.%s", action);
    Sentinel__V1__RunControl c = SENTINEL__V1__RUN_CONTROL__INIT;
    c.project = (char *)p->name;
    c.environment = (char *)e->name;
    c.action = (char *)action;
    c.reason = (char *)(reason ? reason : "");
    c.to_run = (char *)(to_run ? to_run : "");
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    s_stamp(gw, req, &env, service, id);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_CONTROL;
    env.control = &c;
    sn_info("gateway", "%s project=%s environment=%s by=%s", action, p->name, e->name,
            req->principal);
    ret = s_call(gw, conn, req, service, &env, GATEWAY_CALL_DEADLINE_MS);
    sn_envelope_fini_labels(&env);
out:
    json_decref(obj);
    return ret;
}

enum MHD_Result gateway_api_rollback(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    return s_env_control(gw, conn, req, "rollback");
}

enum MHD_Result gateway_api_freeze(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    return s_env_control(gw, conn, req, NULL);
}

enum MHD_Result gateway_api_unfreeze(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    return s_env_control(gw, conn, req, "unfreeze");
}

/* ---- answers ------------------------------------------------------------------------------------
 */

static unsigned s_error_status(const char *code)
{
    if (!code)
        return MHD_HTTP_BAD_GATEWAY;
    if (strcmp(code, "invalid") == 0 || strcmp(code, "bad_request") == 0)
        return MHD_HTTP_BAD_REQUEST;
    if (strcmp(code, "forbidden") == 0)
        return MHD_HTTP_FORBIDDEN;
    if (strcmp(code, "not_found") == 0)
        return MHD_HTTP_NOT_FOUND;
    if (strcmp(code, "conflict") == 0 || strcmp(code, "frozen") == 0)
        return MHD_HTTP_CONFLICT;
    return MHD_HTTP_BAD_GATEWAY;
}

enum MHD_Result gateway_api_finish(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    if (req->route->handler == gateway_api_readyz)
        return s_readyz_finish(gw, conn, req);
    gateway_call_t *call = req->call;
    if (call->rc == SN_AGAIN) {
        sn_warn("gateway", "service=%s did not answer in time", call->service);
        return gateway_reply_error(conn, MHD_HTTP_GATEWAY_TIMEOUT, "timeout",
                                   "%s did not answer in time", call->service);
    }
    if (call->rc != SN_OK) {
        const char *reason = sn_nak_reason_name((int)call->nak);
        unsigned status = call->nak == SN_NAK_INVALID     ? MHD_HTTP_BAD_REQUEST
                          : call->nak == SN_NAK_FORBIDDEN ? MHD_HTTP_FORBIDDEN
                          : call->nak == SN_NAK_EXPIRED   ? MHD_HTTP_GATEWAY_TIMEOUT
                                                          : MHD_HTTP_SERVICE_UNAVAILABLE;
        sn_info("gateway", "service=%s refused: %s", call->service, reason);
        return gateway_reply_error(conn, status,
                                   status == MHD_HTTP_BAD_REQUEST ? "invalid"
                                   : status == MHD_HTTP_FORBIDDEN ? "forbidden"
                                                                  : "unavailable",
                                   "%s: %s", call->service, reason);
    }
    sn_envelope_t *reply =
        call->reply ? sn_envelope_unpack(call->reply, call->reply_len, SN_MAX_FRAME_BYTES, NULL)
                    : NULL;
    if (!reply)
        return gateway_reply_error(conn, MHD_HTTP_BAD_GATEWAY, "bad_gateway",
                                   "%s answered something unreadable", call->service);
    enum MHD_Result ret;
    if (reply->body_case == SENTINEL__V1__ENVELOPE__BODY_ERROR && reply->error) {
        ret = gateway_reply_error(conn, s_error_status(reply->error->code),
                                  reply->error->code && *reply->error->code ? reply->error->code
                                                                            : "error",
                                  "%s", reply->error->message ? reply->error->message : "");
    } else {
        json_t *all = sn_json_from_message(&reply->base);
        json_t *body = NULL;
        /* The body member of the oneof, e.g. "runRef": {...}. */
        static const char *const attrs[] = {
            "id",          "source", "type",        "subject", "timeUnixMs", "correlationId",
            "causationId", "fence",  "incarnation", "seq",     "labels"};
        for (size_t i = 0; all && i < SN_ARRAY_LEN(attrs); i++)
            json_object_del(all, attrs[i]);
        const char *k;
        json_t *v;
        json_object_foreach(all, k, v)
        {
            body = json_incref(v);
            break;
        }
        json_decref(all);
        bool creates = req->route->handler == gateway_api_deploy ||
                       req->route->handler == gateway_api_rollback;
        unsigned status = creates && !req->is_dry_run ? MHD_HTTP_ACCEPTED : MHD_HTTP_OK;
        ret = gateway_reply_json(conn, status, body ? body : json_object());
    }
    sn_envelope_free(&reply);
    return ret;
}

/* ---- helpers ------------------------------------------------------------------------------------
 */

static void s_call_done(gateway_call_t *call, void *arg)
{
    MHD_resume_connection(arg);
}

static enum MHD_Result s_call(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req,
                              const char *service, sn_envelope_t *env, int deadline_ms)
{
    gateway_call_t *call = sn_calloc(1, sizeof *call);
    call->service = sn_strdup(service);
    call->body = sn_envelope_pack(env, &call->body_len);
    call->deadline_ms = deadline_ms;
    call->done = s_call_done;
    call->arg = conn;
    req->call = call;
    sn_metrics_add(gw->metrics, "service_calls", 1);
    MHD_suspend_connection(conn);
    gateway_rpc_submit(gw->rpc, call);
    return MHD_YES;
}

static sn_rc_t s_redis(gateway_t *gw, redisReply **reply, int argc, const char **argv,
                       const size_t *lens)
{
    *reply = NULL;
    sn_rc_t rc =
        sn_redis_cmd(gw->redis, SN_REDIS_MAIN, GATEWAY_REDIS_TIMEOUT_MS, reply, argc, argv, lens);
    if (rc == SN_OK && (*reply)->type == REDIS_REPLY_ERROR &&
        strncmp((*reply)->str, "WRONGTYPE", 9) != 0) {
        sn_warn("gateway", "redis %s: %s", argv[0], (*reply)->str);
        freeReplyObject(*reply);
        *reply = NULL;
        return SN_AGAIN;
    }
    return rc;
}

static enum MHD_Result s_redis_down(struct MHD_Connection *conn)
{
    return gateway_reply_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                               "the state store did not answer in time");
}
