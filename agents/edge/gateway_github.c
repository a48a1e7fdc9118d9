/* POST /webhooks/github: GitHub deliveries into the journal (docs/github-in.md).
 *
 * Order of checks, cheapest and least trusting first. Before the body is read
 * (gateway_github_start): the content type (application/json only: a hook configured
 * as form-encoded gets 415), the signature header present (401), the event and delivery
 * headers present and sane (400), the size cap github.max_webhook_bytes (413, also while
 * the body streams in). On the whole body (gateway_github_webhook): X-Hub-Signature-256
 * over the raw bytes, constant time, sha256= only (401: nothing else happens, nothing is
 * parsed); `ping` answered 200; an event Sentinel does not use acknowledged 202 and
 * dropped; the JSON parsed (400); the repository on the allow-list (the github_repo of a
 * configured project, compared case-insensitively; otherwise 403 and nothing recorded);
 * then ONE Redis Function call deduplicates on the delivery id AND on what the delivery
 * means, and appends the normalised event `github.<event>` (body GithubEvent) to the
 * journal in the same step: 202 recorded, 200 duplicate, 503 when Redis does not answer
 * (GitHub shows the delivery as failed; redeliver it). All of this is bounded by the
 * Redis timeout, far inside GitHub's 10 s: the work happens after, in build-validator,
 * which reads the journal through a consumer group. */
#include "gateway.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_webhook.h"

#define S_LIB "sentinel_github_in"
#define S_REDIS_TIMEOUT_MS 2000
#define S_DELIVERY_TTL_MS (30LL * 24 * 3600 * 1000) /* ARCHITECTURE §5: 30 days */
#define S_NAME_MAX 64

/* clang-format off */
/* KEYS: delivery:<id> delivery:key:<hash> events
 * ARGV: ttl_ms max_len type env -> {1, stream id} | {0, "delivery"} | {0, "meaning"} */
static const char s_lua[] =
    "local function s_record(keys, args)\n"
    "  if redis.call('EXISTS', keys[1]) == 1 then return {0, 'delivery'} end\n"
    "  if redis.call('EXISTS', keys[2]) == 1 then\n"
    "    redis.call('SET', keys[1], 'duplicate', 'PX', args[1])\n"
    "    return {0, 'meaning'}\n"
    "  end\n"
    "  local id = redis.call('XADD', keys[3], 'MAXLEN', '~', args[2], '*', 'type', args[3],\n"
    "                        'env', args[4])\n"
    "  redis.call('SET', keys[1], id, 'PX', args[1])\n"
    "  redis.call('SET', keys[2], id, 'PX', args[1])\n"
    "  return {1, id}\n"
    "end\n"
    "redis.register_function('sentinel_github_record', s_record)\n";
/* clang-format on */

/* The events Sentinel records; anything else is acknowledged and dropped. */
static const char *const s_known[] = {
    "push",         "workflow_run",        "workflow_job", "check_suite",       "check_run",
    "pull_request", "pull_request_review", "deployment",   "deployment_status", NULL,
};

struct gateway_github {
    gateway_t *gw;
    sn_source_t source; /* stamps the recorded envelopes (thread-safe seq) */
    int64_t max_len;
};

static bool s_is_known(const char *event);
static bool s_token_ok(const char *s, bool is_event);
static const char *s_jstr(json_t *root, const char *path);
static uint64_t s_juint(json_t *root, const char *path);
static void s_normalise(json_t *root, const char *event, Sentinel__V1__GithubEvent *ev,
                        char **meaning);

gateway_github_t *gateway_github_new(gateway_t *gw)
{
    gateway_github_t *self = sn_calloc(1, sizeof *self);
    self->gw = gw;
    sn_source_init(&self->source, "gateway", sn_ctx_instance(gw->ctx));
    self->max_len = gw->cfg->runtime.journal_max_len > 0 ? gw->cfg->runtime.journal_max_len
                                                         : SN_JOURNAL_DEFAULT_MAX_LEN;
    sn_redis_add_library(gw->redis, S_LIB, s_lua);
    bool has_github = false;
    for (size_t i = 0; i < gw->cfg->project_count; i++)
        has_github |= gw->cfg->projects[i].github_repo != NULL;
    if (!gw->cfg->github.webhook_secret || !*gw->cfg->github.webhook_secret) {
        if (has_github)
            sn_warn("gateway", "github.webhook_secret is not set: every GitHub delivery gets 401");
    } else {
        sn_log_add_secret(gw->cfg->github.webhook_secret);
    }
    return self;
}

void gateway_github_destroy(gateway_github_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free(*self_p);
    *self_p = NULL;
}

int64_t gateway_github_max_bytes(const gateway_t *gw)
{
    int64_t max = gw->cfg->github.max_webhook_bytes;
    return max > 0 ? max : 26214400;
}

static bool s_is_json_type(const char *ct)
{
    if (!ct)
        return false;
    size_t n = strlen("application/json");
    return strncasecmp(ct, "application/json", n) == 0 &&
           (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

enum MHD_Result gateway_github_start(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req)
{
    (void)req;
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    const char *sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Hub-Signature-256");
    const char *event = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-GitHub-Event");
    const char *delivery = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-GitHub-Delivery");
    if (!s_is_json_type(ct)) {
        sn_metrics_add(gw->metrics, "github_webhook_refused", 1);
        sn_info("gateway", "github delivery refused status=415 delivery=%s: content type",
                delivery && s_token_ok(delivery, false) ? delivery : "-");
        return gateway_reply_error(conn, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                   "the hook must deliver application/json (form-encoded "
                                   "payload= is not accepted)");
    }
    if (!sig || !gw->cfg->github.webhook_secret || !*gw->cfg->github.webhook_secret) {
        sn_metrics_add(gw->metrics, "github_webhook_unauthorized", 1);
        sn_info("gateway", "github delivery refused status=401 delivery=%s: %s",
                delivery && s_token_ok(delivery, false) ? delivery : "-",
                !sig ? SN_WEBHOOK_MISSING : SN_WEBHOOK_NO_SECRET);
        return gateway_reply_error(conn, MHD_HTTP_UNAUTHORIZED, "unauthorized", "%s",
                                   !sig ? "X-Hub-Signature-256 is required"
                                        : "webhooks are not configured");
    }
    if (!event || !delivery || !s_token_ok(event, true) || !s_token_ok(delivery, false)) {
        sn_metrics_add(gw->metrics, "github_webhook_refused", 1);
        return gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                   "X-GitHub-Event and X-GitHub-Delivery are required");
    }
    return MHD_YES;
}

/* The one Redis call: dedupe on delivery and meaning, append to the journal. */
static sn_rc_t s_record(gateway_github_t *self, const char *delivery, const char *meaning_hex,
                        const char *type, const uint8_t *env, size_t env_len, char *stream_id,
                        size_t stream_id_len, const char **dup)
{
    char *k1 = sn_strdupf("delivery:%s", delivery);
    char *k2 = sn_strdupf("delivery:key:%s", meaning_hex);
    const char *keys[] = {k1, k2, SN_JOURNAL_STREAM};
    char ttl[24], max_len[24];
    snprintf(ttl, sizeof ttl, "%lld", (long long)S_DELIVERY_TTL_MS);
    snprintf(max_len, sizeof max_len, "%" PRId64, self->max_len);
    const char *args[] = {ttl, max_len, type, (const char *)env};
    size_t lens[] = {strlen(ttl), strlen(max_len), strlen(type), env_len};
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_fcall(self->gw->redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r,
                                "sentinel_github_record", 3, keys, 4, args, lens);
    free(k1);
    free(k2);
    if (rc != SN_OK)
        return SN_AGAIN;
    rc = SN_AGAIN;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_INTEGER && r->element[1]->type == REDIS_REPLY_STRING) {
        if (r->element[0]->integer == 1) {
            sn_strlcpy(stream_id, r->element[1]->str, stream_id_len);
            rc = SN_OK;
        } else {
            *dup = strcmp(r->element[1]->str, "meaning") == 0 ? "meaning" : "delivery";
            rc = SN_DECLINED;
        }
    } else {
        sn_warn("gateway", "github delivery not recorded: %s",
                r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    }
    freeReplyObject(r);
    return rc;
}

enum MHD_Result gateway_github_webhook(gateway_t *gw, struct MHD_Connection *conn,
                                       gateway_req_t *req)
{
    gateway_github_t *self = gw->github;
    const char *sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Hub-Signature-256");
    const char *event = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-GitHub-Event");
    const char *delivery = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-GitHub-Delivery");
    const char *secret = gw->cfg->github.webhook_secret;
    const char *body = req->body ? req->body : "";
    /* 1. The signature over the exact bytes received, before anything looks at them. */
    const char *why = NULL;
    sn_rc_t rc = sn_webhook_verify_github(secret, strlen(secret), body, req->body_len, sig, &why);
    if (rc != SN_OK) {
        sn_metrics_add(gw->metrics, "github_webhook_unauthorized", 1);
        sn_info("gateway", "github delivery refused status=401 delivery=%s event=%s: %s", delivery,
                event, why ? why : "signature check failed");
        return gateway_reply_error(conn, MHD_HTTP_UNAUTHORIZED, "unauthorized",
                                   "invalid X-Hub-Signature-256");
    }
    /* 2. Events Sentinel does not record. */
    if (strcmp(event, "ping") == 0) {
        sn_info("gateway", "github ping answered delivery=%s", delivery);
        return gateway_reply_json(conn, MHD_HTTP_OK, json_pack("{s:s}", "status", "pong"));
    }
    if (!s_is_known(event)) {
        sn_metrics_add(gw->metrics, "github_webhook_ignored", 1);
        sn_info("gateway",
                "github delivery ignored delivery=%s event=%s: not an event Sentinel "
                "uses",
                delivery, event);
        return gateway_reply_json(conn, MHD_HTTP_ACCEPTED, json_pack("{s:s}", "status", "ignored"));
    }
    /* 3. Parse, then the allow-list. */
    json_error_t jerr;
    json_t *root = json_loadb(body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        sn_metrics_add(gw->metrics, "github_webhook_refused", 1);
        sn_info("gateway", "github delivery refused status=400 delivery=%s: not a JSON object",
                delivery);
        return gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                   "the payload is not a JSON object");
    }
    const char *repo = s_jstr(root, "repository.full_name");
    const sn_project_config_t *proj = NULL;
    for (size_t i = 0; *repo && i < gw->cfg->project_count && !proj; i++)
        if (gw->cfg->projects[i].github_repo &&
            strcasecmp(gw->cfg->projects[i].github_repo, repo) == 0)
            proj = &gw->cfg->projects[i];
    if (!proj) {
        sn_metrics_add(gw->metrics, "github_webhook_forbidden", 1);
        char shown[128];
        snprintf(shown, sizeof shown, "%s", *repo ? repo : "(none)");
        for (char *p = shown; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
                *p = '?';
        json_decref(root);
        sn_info("gateway",
                "github delivery refused status=403 delivery=%s event=%s repo=%s: not "
                "on the allow-list",
                delivery, event, shown);
        return gateway_reply_error(conn, MHD_HTTP_FORBIDDEN, "forbidden",
                                   "repository %s is not a configured project", shown);
    }
    /* 4. Normalise and record (dedupe in the same call). */
    Sentinel__V1__GithubEvent ev = SENTINEL__V1__GITHUB_EVENT__INIT;
    char *meaning = NULL;
    s_normalise(root, event, &ev, &meaning);
    ev.event = (char *)event;
    ev.delivery_id = (char *)delivery;
    ev.received_unix_ms = sn_wall_ms();
    uint8_t digest[SN_SHA256_LEN];
    char body_hex[SN_SHA256_HEX_LEN + 1], meaning_hex[SN_SHA256_HEX_LEN + 1];
    SN_ASSERT(sn_sha256(body, req->body_len, digest) == SN_OK);
    sn_hex_encode(digest, sizeof digest, body_hex);
    ev.body_sha256 = body_hex;
    if (!meaning) /* no better meaning: the exact bytes */
        meaning = sn_strdupf("%s|%s|%s", event, ev.repo, body_hex);
    SN_ASSERT(sn_sha256(meaning, strlen(meaning), digest) == SN_OK);
    sn_hex_encode(digest, sizeof digest, meaning_hex);
    char *type = sn_strdupf("github.%s", event);
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &self->source, type, id);
    char *subject = sn_strdupf("%s/%s", proj->name, ev.repo);
    env.subject = subject;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_GITHUB_EVENT;
    env.github_event = &ev;
    size_t env_len = 0;
    uint8_t *bytes = sn_envelope_pack(&env, &env_len);
    char stream_id[SN_JOURNAL_ID_MAX] = "";
    const char *dup = NULL;
    enum MHD_Result ret;
    if (env_len > SN_MAX_EVENT_BYTES) {
        /* Normalised events are small; only absurd field values get here. */
        sn_metrics_add(gw->metrics, "github_webhook_refused", 1);
        ret = gateway_reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "too_large",
                                  "the normalised event is over %d bytes", SN_MAX_EVENT_BYTES);
    } else {
        rc = s_record(self, delivery, meaning_hex, type, bytes, env_len, stream_id,
                      sizeof stream_id, &dup);
        if (rc == SN_OK) {
            sn_metrics_add(gw->metrics, "github_webhook_recorded", 1);
            sn_info("gateway",
                    "github delivery recorded delivery=%s type=%s repo=%s action=%s sha=%s "
                    "stream_id=%s",
                    delivery, type, ev.repo, ev.action, ev.head_sha, stream_id);
            ret = gateway_reply_json(
                conn, MHD_HTTP_ACCEPTED,
                json_pack("{s:s, s:s, s:s}", "status", "recorded", "type", type, "id", stream_id));
        } else if (rc == SN_DECLINED) {
            sn_metrics_add(gw->metrics, "github_webhook_duplicate", 1);
            sn_info("gateway", "github delivery duplicate delivery=%s type=%s same=%s", delivery,
                    type, dup);
            ret = gateway_reply_json(conn, MHD_HTTP_OK,
                                     json_pack("{s:s, s:s}", "status", "duplicate", "same", dup));
        } else {
            sn_metrics_add(gw->metrics, "github_webhook_unavailable", 1);
            sn_warn("gateway",
                    "github delivery not recorded delivery=%s type=%s: redis "
                    "unavailable (answered 503: redeliver it)",
                    delivery, type);
            ret = gateway_reply_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                                      "the delivery could not be recorded; redeliver it");
        }
    }
    free(bytes);
    free(subject);
    free(type);
    free(meaning);
    json_decref(root); /* ev's strings point into root */
    return ret;
}

/* ---- helpers ------------------------------------------------------------------------------- */

static bool s_is_known(const char *event)
{
    for (size_t i = 0; s_known[i]; i++)
        if (strcmp(s_known[i], event) == 0)
            return true;
    return false;
}

/* Header tokens: an event name [a-z_] or a delivery GUID [A-Za-z0-9-], 1..64 bytes. */
static bool s_token_ok(const char *s, bool is_event)
{
    size_t n = strlen(s);
    if (n == 0 || n > S_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = is_event ? ((c >= 'a' && c <= 'z') || c == '_')
                           : ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                              (c >= '0' && c <= '9') || c == '-');
        if (!ok)
            return false;
    }
    return true;
}

static json_t *s_jget(json_t *root, const char *path)
{
    char buf[128];
    sn_strlcpy(buf, path, sizeof buf);
    json_t *cur = root;
    char *seg = buf;
    while (cur && seg) {
        char *dot = strchr(seg, '.');
        if (dot)
            *dot = '\0';
        cur = json_is_object(cur) ? json_object_get(cur, seg) : NULL;
        seg = dot ? dot + 1 : NULL;
    }
    return cur;
}

/* A string member (borrowed from @root), or "" when absent or not a string. */
static const char *s_jstr(json_t *root, const char *path)
{
    const char *s = json_string_value(s_jget(root, path));
    return s ? s : "";
}

static uint64_t s_juint(json_t *root, const char *path)
{
    json_t *v = s_jget(root, path);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

static const char *s_first(json_t *root, const char *a, const char *b, const char *c)
{
    const char *s = s_jstr(root, a);
    if (!*s && b)
        s = s_jstr(root, b);
    if (!*s && c)
        s = s_jstr(root, c);
    return s;
}

/* Fills @ev from the payload (strings borrowed from @root) and *meaning (heap) with what
 * the delivery means, for the second dedupe key. */
static void s_normalise(json_t *root, const char *event, Sentinel__V1__GithubEvent *ev,
                        char **meaning)
{
    ev->repo = (char *)s_jstr(root, "repository.full_name");
    ev->action = (char *)s_jstr(root, "action");
    ev->sender = (char *)s_jstr(root, "sender.login");
    ev->installation_id = s_juint(root, "installation.id");
    if (strcmp(event, "push") == 0) {
        ev->ref = (char *)s_jstr(root, "ref");
        ev->head_sha = (char *)s_jstr(root, "after");
        ev->before = (char *)s_jstr(root, "before");
        ev->deleted = json_is_true(s_jget(root, "deleted"));
        ev->html_url = (char *)s_jstr(root, "compare");
        if (strncmp(ev->ref, "refs/heads/", 11) == 0)
            ev->head_branch = ev->ref + 11;
        *meaning = sn_strdupf("push|%s|%s|%s", ev->repo, ev->ref, ev->head_sha);
    } else if (strcmp(event, "workflow_run") == 0) {
        ev->run_id = s_juint(root, "workflow_run.id");
        ev->run_attempt = (uint32_t)s_juint(root, "workflow_run.run_attempt");
        ev->head_sha = (char *)s_jstr(root, "workflow_run.head_sha");
        ev->head_branch = (char *)s_jstr(root, "workflow_run.head_branch");
        ev->workflow_name =
            (char *)s_first(root, "workflow_run.name", "workflow.name", "workflow_run.path");
        ev->workflow_id = s_juint(root, "workflow_run.workflow_id");
        ev->status = (char *)s_jstr(root, "workflow_run.status");
        ev->conclusion = (char *)s_jstr(root, "workflow_run.conclusion");
        ev->check_suite_id = s_juint(root, "workflow_run.check_suite_id");
        ev->html_url = (char *)s_jstr(root, "workflow_run.html_url");
        ev->trigger_event = (char *)s_jstr(root, "workflow_run.event");
        json_t *prs = s_jget(root, "workflow_run.pull_requests");
        if (json_is_array(prs) && json_array_size(prs) > 0)
            ev->pr_number = s_juint(json_array_get(prs, 0), "number");
        *meaning = sn_strdupf("workflow_run|%s|%" PRIu64 "|%u|%s|%s", ev->repo, ev->run_id,
                              ev->run_attempt, ev->status, ev->conclusion);
    } else if (strcmp(event, "workflow_job") == 0) {
        ev->job_id = s_juint(root, "workflow_job.id");
        ev->job_name = (char *)s_jstr(root, "workflow_job.name");
        ev->run_id = s_juint(root, "workflow_job.run_id");
        ev->run_attempt = (uint32_t)s_juint(root, "workflow_job.run_attempt");
        ev->head_sha = (char *)s_jstr(root, "workflow_job.head_sha");
        ev->head_branch = (char *)s_jstr(root, "workflow_job.head_branch");
        ev->workflow_name = (char *)s_jstr(root, "workflow_job.workflow_name");
        ev->status = (char *)s_jstr(root, "workflow_job.status");
        ev->conclusion = (char *)s_jstr(root, "workflow_job.conclusion");
        ev->html_url = (char *)s_jstr(root, "workflow_job.html_url");
        *meaning = sn_strdupf("workflow_job|%s|%" PRIu64 "|%u|%s|%s", ev->repo, ev->job_id,
                              ev->run_attempt, ev->status, ev->conclusion);
    } else if (strcmp(event, "check_suite") == 0 || strcmp(event, "check_run") == 0) {
        bool is_suite = event[6] == 's';
        const char *obj = is_suite ? "check_suite" : "check_run";
        char path[64];
#define S_P(field) (snprintf(path, sizeof path, "%s." field, obj), path)
        if (is_suite) {
            ev->check_suite_id = s_juint(root, S_P("id"));
            ev->head_branch = (char *)s_jstr(root, S_P("head_branch"));
            ev->html_url = (char *)s_jstr(root, S_P("url"));
        } else {
            ev->job_id = s_juint(root, S_P("id"));
            ev->job_name = (char *)s_jstr(root, S_P("name"));
            ev->check_suite_id = s_juint(root, "check_run.check_suite.id");
            ev->head_branch = (char *)s_jstr(root, "check_run.check_suite.head_branch");
            ev->html_url = (char *)s_jstr(root, S_P("html_url"));
        }
        ev->head_sha = (char *)s_jstr(root, S_P("head_sha"));
        ev->status = (char *)s_jstr(root, S_P("status"));
        ev->conclusion = (char *)s_jstr(root, S_P("conclusion"));
        json_t *prs = s_jget(root, S_P("pull_requests"));
#undef S_P
        if (json_is_array(prs) && json_array_size(prs) > 0)
            ev->pr_number = s_juint(json_array_get(prs, 0), "number");
        *meaning = sn_strdupf("%s|%s|%" PRIu64 "|%s|%s|%s", event, ev->repo,
                              is_suite ? ev->check_suite_id : ev->job_id, ev->action, ev->status,
                              ev->conclusion);
    } else if (strcmp(event, "pull_request") == 0 || strcmp(event, "pull_request_review") == 0) {
        ev->pr_number = s_juint(root, "pull_request.number");
        ev->head_sha = (char *)s_jstr(root, "pull_request.head.sha");
        ev->head_branch = (char *)s_jstr(root, "pull_request.head.ref");
        ev->html_url = (char *)s_jstr(root, "pull_request.html_url");
        ev->before = (char *)s_jstr(root, "before");
        if (strcmp(event, "pull_request") == 0) {
            ev->state = (char *)s_jstr(root, "pull_request.state");
            *meaning = sn_strdupf("pull_request|%s|%" PRIu64 "|%s|%s", ev->repo, ev->pr_number,
                                  ev->action, ev->head_sha);
        } else {
            ev->state = (char *)s_jstr(root, "review.state");
            *meaning = sn_strdupf("pull_request_review|%s|%" PRIu64 "|%s|%s", ev->repo,
                                  s_juint(root, "review.id"), ev->action, ev->state);
        }
    } else if (strcmp(event, "deployment") == 0 || strcmp(event, "deployment_status") == 0) {
        ev->deployment_id = s_juint(root, "deployment.id");
        ev->head_sha = (char *)s_jstr(root, "deployment.sha");
        ev->ref = (char *)s_jstr(root, "deployment.ref");
        ev->environment = (char *)s_jstr(root, "deployment.environment");
        if (strcmp(event, "deployment_status") == 0) {
            ev->state = (char *)s_jstr(root, "deployment_status.state");
            ev->html_url = (char *)s_jstr(root, "deployment_status.target_url");
            *meaning = sn_strdupf("deployment_status|%s|%" PRIu64, ev->repo,
                                  s_juint(root, "deployment_status.id"));
        } else {
            *meaning =
                sn_strdupf("deployment|%s|%" PRIu64 "|%s", ev->repo, ev->deployment_id, ev->action);
        }
    }
}
