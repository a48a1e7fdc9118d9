/* The gateway's silence routes (docs/notify-routing.md "Silences"): POST /api/v1/silences
 * (operator) creates one, GET /api/v1/silences (viewer) lists them, DELETE
 * /api/v1/silences/{id} (operator) expires one. Each becomes a call of the notifier's
 * service notify.silence (body SilenceRequest, reply SilenceList or Error) after the
 * request was validated completely, so a 4xx never reaches the notifier; the creator is
 * the authenticated token's name. */
#include "gateway.h"

#include <string.h>

#include "notify_route.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_log.h"

#define S_SERVICE "notify.silence"
#define S_MAX_MATCHERS 16
#define S_MAX_MATCHER 256
#define S_MAX_COMMENT 1024

static enum MHD_Result s_call(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req,
                              Sentinel__V1__SilenceRequest *body);
static bool s_printable(const char *s, size_t n);

enum MHD_Result gateway_api_silence_create(gateway_t *gw, struct MHD_Connection *conn,
                                           gateway_req_t *req)
{
    if (req->body_len == 0)
        return gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                   "a JSON body is required");
    json_error_t jerr;
    json_t *obj = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    enum MHD_Result ret;
    const char **matchers = NULL;
    if (!obj || !json_is_object(obj)) {
        ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_json",
                                  "the body must be one JSON object");
        goto out;
    }
    static const char *const allowed[] = {"matchers",       "comment",      "duration",
                                          "starts_unix_ms", "ends_unix_ms", NULL};
    const char *key;
    json_t *value;
    json_object_foreach(obj, key, value)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++)
            ok = strcmp(allowed[i], key) == 0;
        if (!ok) {
            ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                      "unknown field \"%.64s\"", key);
            goto out;
        }
    }
    json_t *jm = json_object_get(obj, "matchers");
    size_t nm = json_is_array(jm) ? json_array_size(jm) : 0;
    if (nm == 0 || nm > S_MAX_MATCHERS) {
        ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                  "field \"matchers\" must be an array of 1 to %d \"key=value\" "
                                  "strings",
                                  S_MAX_MATCHERS);
        goto out;
    }
    matchers = sn_calloc(nm, sizeof *matchers);
    for (size_t i = 0; i < nm; i++) {
        json_t *m = json_array_get(jm, i);
        const char *s = json_string_value(m);
        char why[256];
        if (!s || !s_printable(s, json_string_length(m)) || strlen(s) > S_MAX_MATCHER) {
            ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                      "matchers[%zu] must be a printable string", i);
            goto out;
        }
        if (notify_matcher_check(s, why, sizeof why) != SN_OK) {
            ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request", "%s", why);
            goto out;
        }
        matchers[i] = s;
    }
    json_t *jc = json_object_get(obj, "comment");
    const char *comment = json_string_value(jc);
    if (!comment || !comment[0] || strlen(comment) > S_MAX_COMMENT ||
        !s_printable(comment, json_string_length(jc))) {
        ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                  "field \"comment\" must be a non-empty printable string of at "
                                  "most %d bytes",
                                  S_MAX_COMMENT);
        goto out;
    }
    json_t *jd = json_object_get(obj, "duration");
    json_t *js = json_object_get(obj, "starts_unix_ms");
    json_t *je = json_object_get(obj, "ends_unix_ms");
    const char *duration = json_string_value(jd);
    int64_t dms = 0;
    if ((jd && (!duration || !notify_duration_parse(duration, &dms))) ||
        (js && (!json_is_integer(js) || json_integer_value(js) < 0)) ||
        (je && (!json_is_integer(je) || json_integer_value(je) <= 0))) {
        ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                  "\"duration\" is like \"2h\" or \"1h30m\" (at most 366d); "
                                  "\"starts_unix_ms\" and \"ends_unix_ms\" are epoch milliseconds");
        goto out;
    }
    if (!duration == !je) {
        ret = gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                  "give exactly one of \"duration\" and \"ends_unix_ms\"");
        goto out;
    }
    Sentinel__V1__Silence s = SENTINEL__V1__SILENCE__INIT;
    s.matchers = (char **)matchers;
    s.n_matchers = nm;
    s.comment = (char *)comment;
    s.created_by = (char *)(req->principal ? req->principal : "anonymous");
    s.starts_unix_ms = js ? json_integer_value(js) : 0;
    s.ends_unix_ms = je ? json_integer_value(je) : 0;
    Sentinel__V1__SilenceRequest body = SENTINEL__V1__SILENCE_REQUEST__INIT;
    body.op = "create";
    body.silence = &s;
    body.duration = (char *)(duration ? duration : "");
    sn_info("gateway", "silence create by=%s matchers=%zu", s.created_by, nm);
    ret = s_call(gw, conn, req, &body);
out:
    free(matchers);
    json_decref(obj);
    return ret;
}

enum MHD_Result gateway_api_silence_list(gateway_t *gw, struct MHD_Connection *conn,
                                         gateway_req_t *req)
{
    const char *expired = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "expired");
    if (expired && strcmp(expired, "true") != 0 && strcmp(expired, "false") != 0)
        return gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                   "\"expired\" is true or false");
    Sentinel__V1__SilenceRequest body = SENTINEL__V1__SILENCE_REQUEST__INIT;
    body.op = "list";
    body.include_expired = expired && strcmp(expired, "true") == 0;
    return s_call(gw, conn, req, &body);
}

enum MHD_Result gateway_api_silence_expire(gateway_t *gw, struct MHD_Connection *conn,
                                           gateway_req_t *req)
{
    const char *id = req->params[0];
    if (!id || !sn_id_is_valid(id))
        return gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                   "the silence id is a ULID");
    Sentinel__V1__SilenceRequest body = SENTINEL__V1__SILENCE_REQUEST__INIT;
    body.op = "expire";
    body.id = (char *)id;
    sn_info("gateway", "silence expire id=%s by=%s", id, req->principal ? req->principal : "-");
    return s_call(gw, conn, req, &body);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static void s_call_done(gateway_call_t *call, void *arg)
{
    (void)call;
    MHD_resume_connection(arg);
}

static enum MHD_Result s_call(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req,
                              Sentinel__V1__SilenceRequest *body)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, sn_ctx_source(gw->ctx), S_SERVICE, id);
    sn_envelope_add_label(&env, "on_behalf_of", req->principal ? req->principal : "");
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_SILENCE_REQUEST;
    env.silence_request = body;
    gateway_call_t *call = sn_calloc(1, sizeof *call);
    call->service = sn_strdup(S_SERVICE);
    call->body = sn_envelope_pack(&env, &call->body_len);
    sn_envelope_fini_labels(&env);
    call->deadline_ms = GATEWAY_CALL_DEADLINE_MS;
    call->done = s_call_done;
    call->arg = conn;
    req->call = call;
    sn_metrics_add(gw->metrics, "service_calls", 1);
    MHD_suspend_connection(conn);
    gateway_rpc_submit(gw->rpc, call);
    return MHD_YES;
}

/* True if the @n bytes of @s are printable (no NUL inside, no control character). */
static bool s_printable(const char *s, size_t n)
{
    if (strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}
