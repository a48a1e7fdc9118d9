/* The gateway role: the HTTP API of the mesh (libmicrohttpd, an epoll thread pool with
 * suspend/resume). This file owns the role table, the daemon, routing, authentication
 * (Bearer tokens compared by SHA-256 in constant time; roles viewer < operator < admin),
 * the connection caps (SSE streams apart from the rest), body limits and the error
 * format {"error": {"code", "message"}}. The routes live in gateway_api.c,
 * gateway_artifact.c and gateway_github.c (POST /webhooks/github, authenticated by its
 * HMAC signature instead of a token, with its own body cap). A token with role agent (a
 * deployer on another host) may only download artifacts: every other route answers it 403.
 *
 * Without any configured token the gateway is read-only for loopback clients: GETs from
 * 127.0.0.0/8 and ::1 are served, every write is refused (403) and remote clients get
 * 401. /healthz and /readyz never need a token. */
#include "gateway.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "sentinel/sn_log.h"

#define S_POOL_THREADS 4
#define S_CONN_SLACK 16
#define S_DISCARD_FACTOR 4 /* a chunked body this many times the limit closes the connection */

static const gateway_route_t s_routes[] = {
    {"GET", "/healthz", GATEWAY_ROLE_NONE, false, false, gateway_api_healthz, false},
    {"GET", "/readyz", GATEWAY_ROLE_NONE, false, false, gateway_api_readyz, false},
    {"GET", "/metrics", GATEWAY_ROLE_VIEWER, false, false, gateway_api_metrics, false},
    {"GET", "/api/v1/runs", GATEWAY_ROLE_VIEWER, false, false, gateway_api_runs, false},
    {"GET", "/api/v1/runs/*", GATEWAY_ROLE_VIEWER, false, false, gateway_api_run_show, false},
    {"GET", "/api/v1/runs/*/logs", GATEWAY_ROLE_VIEWER, false, false, gateway_api_run_logs, false},
    {"GET", "/api/v1/environments", GATEWAY_ROLE_VIEWER, false, false, gateway_api_environments,
     false},
    {"GET", "/api/v1/agents", GATEWAY_ROLE_VIEWER, false, false, gateway_api_agents, false},
    {"GET", "/api/v1/events", GATEWAY_ROLE_VIEWER, false, true, gateway_api_events, false},
    {"POST", "/api/v1/deploys", GATEWAY_ROLE_OPERATOR, true, false, gateway_api_deploy, false},
    {"POST", "/api/v1/runs/*/approve", GATEWAY_ROLE_OPERATOR, true, false, gateway_api_approve,
     false},
    {"POST", "/api/v1/runs/*/cancel", GATEWAY_ROLE_OPERATOR, true, false, gateway_api_cancel,
     false},
    {"POST", "/api/v1/environments/*/*/rollback", GATEWAY_ROLE_OPERATOR, true, false,
     gateway_api_rollback, false},
    {"POST", "/api/v1/environments/*/*/freeze", GATEWAY_ROLE_OPERATOR, true, false,
     gateway_api_freeze, false},
    {"DELETE", "/api/v1/environments/*/*/freeze", GATEWAY_ROLE_OPERATOR, true, false,
     gateway_api_unfreeze, false},
    {"GET", "/api/v1/artifacts/*", GATEWAY_ROLE_VIEWER, false, false, gateway_api_artifact, true},
    {"HEAD", "/api/v1/artifacts/*", GATEWAY_ROLE_VIEWER, false, false, gateway_api_artifact, true},
    {"POST", "/api/v1/silences", GATEWAY_ROLE_OPERATOR, true, false, gateway_api_silence_create,
     false},
    {"GET", "/api/v1/silences", GATEWAY_ROLE_VIEWER, false, false, gateway_api_silence_list, false},
    {"DELETE", "/api/v1/silences/*", GATEWAY_ROLE_OPERATOR, false, false,
     gateway_api_silence_expire, false},
    {"POST", "/webhooks/github", GATEWAY_ROLE_NONE, true, false, gateway_github_webhook, false},
};

static sn_rc_t s_init(sn_ctx_t *ctx, void **state);
static void s_destroy(sn_ctx_t *ctx, void *state);
static enum MHD_Result s_access(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload_data,
                                size_t *upload_data_size, void **con_cls);
static void s_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe);
static void s_notify_conn(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe);
static void s_mhd_log(void *cls, const char *fmt, va_list ap);
static void s_ascii(char *s);

const sn_role_t gateway_role = {
    .name = "gateway",
    .agent = "Edge",
    .summary = "HTTP API, SSE event stream and /metrics (libmicrohttpd)",
    .init = s_init,
    .destroy = s_destroy,
};

/* ---- responses ---------------------------------------------------------------------------- */

enum MHD_Result gateway_reply_text(struct MHD_Connection *conn, unsigned status,
                                   const char *content_type, const char *text, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"sentinel\"");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result gateway_reply_json(struct MHD_Connection *conn, unsigned status, json_t *json)
{
    char *text = json_dumps(json, JSON_COMPACT);
    json_decref(json);
    SN_ASSERT(text);
    size_t len = strlen(text);
    text = sn_realloc(text, len + 2);
    text[len++] = '\n';
    text[len] = '\0';
    enum MHD_Result ret = gateway_reply_text(conn, status, "application/json", text, len);
    free(text);
    return ret;
}

enum MHD_Result gateway_reply_error(struct MHD_Connection *conn, unsigned status, const char *code,
                                    const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s_ascii(msg);
    return gateway_reply_json(conn, status,
                              json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", msg));
}

/* ---- the role ------------------------------------------------------------------------------- */

static gateway_role_t s_role_parse(const char *role)
{
    if (!role)
        return GATEWAY_ROLE_NONE;
    if (strcmp(role, "viewer") == 0)
        return GATEWAY_ROLE_VIEWER;
    if (strcmp(role, "operator") == 0)
        return GATEWAY_ROLE_OPERATOR;
    if (strcmp(role, "admin") == 0)
        return GATEWAY_ROLE_ADMIN;
    if (strcmp(role, "agent") == 0)
        return GATEWAY_ROLE_AGENT;
    return GATEWAY_ROLE_NONE;
}

static sn_rc_t s_load_tokens(gateway_t *gw)
{
    const sn_gateway_config_t *g = &gw->cfg->gateway;
    gw->tokens = sn_calloc(g->token_count ? g->token_count : 1, sizeof *gw->tokens);
    for (size_t i = 0; i < g->token_count; i++) {
        const sn_token_config_t *t = &g->tokens[i];
        gateway_token_t *tok = &gw->tokens[gw->token_count];
        tok->role = s_role_parse(t->role);
        if (!t->name || !t->sha256 || tok->role == GATEWAY_ROLE_NONE ||
            sn_hex_decode(t->sha256, strlen(t->sha256), tok->digest, SN_SHA256_LEN) != SN_OK) {
            sn_error("gateway",
                     "gateway.tokens[%zu]: needs a name, a sha256 hex digest and a "
                     "role viewer|operator|admin|agent",
                     i);
            return SN_ERROR;
        }
        tok->name = t->name;
        gw->token_count++;
    }
    return SN_OK;
}

/* Resolves gateway.listen ("host:port", "[v6]:port") into @ss. */
static sn_rc_t s_listen_addr(const char *listen, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen || (size_t)(colon - listen) >= sizeof host)
        return SN_ERROR;
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    char *h = host;
    size_t hl = strlen(h);
    if (h[0] == '[' && hl > 2 && h[hl - 1] == ']') {
        h[hl - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    if (getaddrinfo(h, colon + 1, &hints, &res) != 0 || !res)
        return SN_ERROR;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return SN_OK;
}

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    gateway_t *gw = sn_calloc(1, sizeof *gw);
    gw->ctx = ctx;
    gw->cfg = sn_ctx_config(ctx);
    gw->redis = sn_ctx_redis(ctx);
    gw->metrics = sn_ctx_metrics(ctx);
    const sn_gateway_config_t *g = &gw->cfg->gateway;
    *state = gw;
    gw->api_base = sn_strdupf("http://%s", g->listen);
    gw->keepalive_ms = GATEWAY_KEEPALIVE_MS;
    const char *ka = getenv("SENTINEL_GATEWAY_KEEPALIVE_MS");
    int64_t v = 0;
    if (ka && *ka && sn_parse_i64(ka, 10, 3600000, &v) == SN_OK)
        gw->keepalive_ms = (int)v;
    if (s_load_tokens(gw) != SN_OK)
        return SN_ERROR;
    struct sockaddr_storage ss;
    socklen_t ss_len = 0;
    if (s_listen_addr(g->listen, &ss, &ss_len) != SN_OK) {
        sn_error("gateway", "cannot resolve gateway.listen=%s", g->listen);
        return SN_ERROR;
    }
    gw->rpc = gateway_rpc_new(gw->cfg);
    if (!gw->rpc)
        return SN_ERROR;
    gw->sse = gateway_sse_new(gw);
    if (!gw->sse)
        return SN_ERROR;
    gw->artifacts = gateway_artifacts_new(gw);
    if (!gw->artifacts)
        return SN_ERROR;
    gw->github = gateway_github_new(gw);
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    unsigned limit = (unsigned)(g->max_connections + g->max_sse + S_CONN_SLACK);
    gw->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, s_access, gw, MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, gw,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)S_POOL_THREADS, MHD_OPTION_CONNECTION_LIMIT, limit, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)60, MHD_OPTION_NOTIFY_COMPLETED, s_completed, gw, MHD_OPTION_NOTIFY_CONNECTION,
        s_notify_conn, gw, MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1, MHD_OPTION_END);
    if (!gw->daemon) {
        sn_error("gateway", "cannot listen on %s", g->listen);
        return SN_ERROR;
    }
    sn_info("gateway", "listening on %s tokens=%zu max_sse=%d max_connections=%d%s", g->listen,
            gw->token_count, g->max_sse, g->max_connections,
            gw->token_count ? "" : " (no tokens: read-only for loopback clients)");
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    gateway_t *gw = state;
    if (!gw)
        return;
    /* Suspended connections must be resumed before the daemon stops: end the streams,
     * answer the calls in flight, then stop. */
    if (gw->daemon)
        MHD_quiesce_daemon(gw->daemon);
    if (gw->sse)
        gateway_sse_close_all(gw->sse);
    gateway_rpc_destroy(&gw->rpc);
    if (gw->daemon)
        MHD_stop_daemon(gw->daemon);
    gateway_sse_destroy(&gw->sse);
    gateway_artifacts_destroy(&gw->artifacts);
    gateway_github_destroy(&gw->github);
    free(gw->tokens);
    free(gw->api_base);
    free(gw);
}

/* ---- routing and authentication ------------------------------------------------------------ */

/* Matches @url against @pattern, capturing "*" segments into @params (heap). */
static bool s_match(const char *pattern, const char *url, char **params)
{
    size_t n = 0;
    const char *p = pattern, *u = url;
    while (*p && *u) {
        if (*p != '/' || *u != '/')
            return false;
        p++;
        u++;
        const char *pe = strchr(p, '/');
        const char *ue = strchr(u, '/');
        size_t pl = pe ? (size_t)(pe - p) : strlen(p);
        size_t ul = ue ? (size_t)(ue - u) : strlen(u);
        if (pl == 1 && p[0] == '*') {
            if (ul == 0 || n >= GATEWAY_MAX_PARAMS)
                return false;
            if (params)
                params[n] = sn_strndup(u, ul);
            n++;
        } else if (pl != ul || memcmp(p, u, pl) != 0) {
            return false;
        }
        p += pl;
        u += ul;
    }
    return *p == '\0' && *u == '\0';
}

static void s_free_params(char **params)
{
    for (size_t i = 0; i < GATEWAY_MAX_PARAMS; i++) {
        free(params[i]);
        params[i] = NULL;
    }
}

static bool s_is_loopback(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return false;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return true;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            return in6->sin6_addr.s6_addr[12] == 127;
    }
    return false;
}

/* Authenticates the request for @need. Returns 0 when allowed, else the HTTP status
 * (401 or 403) with a static message in *why. */
static unsigned s_authorize(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req,
                            const gateway_route_t *route, const char **why)
{
    gateway_role_t need = route->role;
    if (need == GATEWAY_ROLE_NONE)
        return 0;
    const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!auth) {
        if (gw->token_count == 0 && s_is_loopback(conn)) {
            if (need > GATEWAY_ROLE_VIEWER) {
                *why = "no API token is configured: the gateway is read-only";
                return MHD_HTTP_FORBIDDEN;
            }
            req->principal = "loopback";
            req->role = GATEWAY_ROLE_VIEWER;
            return 0;
        }
        *why = "a Bearer token is required";
        return MHD_HTTP_UNAUTHORIZED;
    }
    if (strncasecmp(auth, "Bearer ", 7) != 0) {
        *why = "expected a Bearer token";
        return MHD_HTTP_UNAUTHORIZED;
    }
    const char *token = auth + 7;
    while (*token == ' ')
        token++;
    uint8_t digest[SN_SHA256_LEN];
    if (!*token || sn_sha256(token, strlen(token), digest) != SN_OK) {
        *why = "invalid token";
        return MHD_HTTP_UNAUTHORIZED;
    }
    /* Compare with every token, whatever matched, so the time does not tell which. */
    const gateway_token_t *found = NULL;
    for (size_t i = 0; i < gw->token_count; i++)
        if (sn_crypto_equal(digest, gw->tokens[i].digest, SN_SHA256_LEN))
            found = &gw->tokens[i];
    sn_crypto_cleanse(digest, sizeof digest);
    if (!found) {
        *why = "invalid token";
        return MHD_HTTP_UNAUTHORIZED;
    }
    req->principal = found->name;
    req->role = found->role;
    if (found->role == GATEWAY_ROLE_AGENT) {
        if (route->is_agent_ok)
            return 0;
        *why = "an agent token may only fetch artifacts";
        return MHD_HTTP_FORBIDDEN;
    }
    if (found->role < need) {
        *why = need == GATEWAY_ROLE_ADMIN ? "this needs the admin role"
                                          : "this needs the operator role";
        return MHD_HTTP_FORBIDDEN;
    }
    return 0;
}

/* A webhook route: authenticated by its own signature (role NONE), its body capped by
 * github.max_webhook_bytes instead of gateway.max_body_bytes, content type and headers
 * checked by gateway_github_start before the body is read. */
static bool s_is_webhook(const gateway_route_t *route)
{
    return route->handler == gateway_github_webhook;
}

static int64_t s_body_max(const gateway_t *gw, const gateway_route_t *route)
{
    return s_is_webhook(route) ? gateway_github_max_bytes(gw) : gw->cfg->gateway.max_body_bytes;
}

static bool s_is_json(const char *content_type)
{
    if (!content_type)
        return false;
    size_t n = strlen("application/json");
    if (strncasecmp(content_type, "application/json", n) != 0)
        return false;
    char c = content_type[n];
    return c == '\0' || c == ';' || c == ' ';
}

/* The first call for a request (headers read, no body yet): route, caps, auth, body
 * headers. Returns MHD_YES with req->route set to continue, or after queueing an error. */
static enum MHD_Result s_start(gateway_t *gw, struct MHD_Connection *conn, gateway_req_t *req,
                               const char *url, const char *method)
{
    req->is_started = true;
    const gateway_route_t *route = NULL;
    bool path_known = false;
    char allow[64] = "";
    for (size_t i = 0; i < SN_ARRAY_LEN(s_routes) && !route; i++) {
        if (!s_match(s_routes[i].pattern, url, NULL))
            continue;
        path_known = true;
        size_t used = strlen(allow);
        snprintf(allow + used, sizeof allow - used, "%s%s", used ? ", " : "", s_routes[i].method);
        if (strcmp(s_routes[i].method, method) == 0) {
            route = &s_routes[i];
            s_match(route->pattern, url, req->params);
        }
    }
    if (!route) {
        if (!path_known) {
            sn_metrics_add(gw->metrics, "http_not_found", 1);
            return gateway_reply_error(conn, MHD_HTTP_NOT_FOUND, "not_found", "no route %s", url);
        }
        char *msg = sn_strdupf("%s is not allowed here (allowed: %s)", method, allow);
        s_ascii(msg);
        json_t *err =
            json_pack("{s:{s:s, s:s}}", "error", "code", "method_not_allowed", "message", msg);
        free(msg);
        char *text = json_dumps(err, JSON_COMPACT);
        json_decref(err);
        SN_ASSERT(text);
        struct MHD_Response *r =
            MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
        enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_METHOD_NOT_ALLOWED, r);
        MHD_destroy_response(r);
        return ret;
    }
    /* API connections are capped apart from SSE streams (which gateway_api_events caps). */
    int conns = __atomic_load_n(&gw->conns, __ATOMIC_RELAXED);
    int sse = __atomic_load_n(&gw->sse_count, __ATOMIC_RELAXED);
    if (!route->is_sse && conns - sse > gw->cfg->gateway.max_connections) {
        sn_metrics_add(gw->metrics, "http_over_capacity", 1);
        return gateway_reply_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "over_capacity",
                                   "too many connections");
    }
    const char *why = NULL;
    unsigned status = s_authorize(gw, conn, req, route, &why);
    if (status) {
        sn_metrics_add(gw->metrics,
                       status == MHD_HTTP_UNAUTHORIZED ? "http_unauthorized" : "http_forbidden", 1);
        sn_info("gateway", "refused %s %s status=%u principal=%s: %s", method, url, status,
                req->principal ? req->principal : "-", why);
        return gateway_reply_error(conn, status,
                                   status == MHD_HTTP_UNAUTHORIZED ? "unauthorized" : "forbidden",
                                   "%s", why);
    }
    req->route = route;
    const char *clen = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Transfer-Encoding");
    int64_t len = 0;
    bool has_body = te != NULL;
    if (clen) {
        if (sn_parse_i64(clen, 0, INT64_MAX, &len) != SN_OK)
            return gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                       "bad Content-Length");
        has_body = has_body || len > 0;
    }
    if (has_body && !route->has_body)
        return gateway_reply_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                                   "this route takes no body");
    if (has_body && len > s_body_max(gw, route)) {
        sn_metrics_add(gw->metrics, "http_too_large", 1);
        return gateway_reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "too_large",
                                   "the body is over %lld bytes", (long long)s_body_max(gw, route));
    }
    if (s_is_webhook(route))
        return gateway_github_start(gw, conn, req);
    if (has_body && !s_is_json(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type")))
        return gateway_reply_error(conn, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                   "the body must be application/json");
    return MHD_YES;
}

static enum MHD_Result s_access(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload_data,
                                size_t *upload_data_size, void **con_cls)
{
    gateway_t *gw = cls;
    gateway_req_t *req = *con_cls;
    if (!req) {
        req = sn_calloc(1, sizeof *req);
        *con_cls = req;
        sn_metrics_add(gw->metrics, "http_requests", 1);
        return s_start(gw, conn, req, url, method);
    }
    if (*upload_data_size) {
        /* Bounded: bytes past the limit are counted, not kept; far past it we hang up. */
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        req->body_seen += n;
        if (!req->route)
            return MHD_YES; /* an error is queued; MHD discards the rest */
        int64_t max = s_body_max(gw, req->route);
        if (req->body_seen > (uint64_t)max) {
            req->is_too_large = true;
            return req->body_seen > (uint64_t)max * S_DISCARD_FACTOR ? MHD_NO : MHD_YES;
        }
        req->body = sn_realloc(req->body, req->body_len + n + 1);
        memcpy(req->body + req->body_len, upload_data, n);
        req->body_len += n;
        req->body[req->body_len] = '\0';
        return MHD_YES;
    }
    if (!req->route)
        return MHD_YES; /* the error response is queued already */
    if (req->is_too_large) {
        sn_metrics_add(gw->metrics, "http_too_large", 1);
        return gateway_reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "too_large",
                                   "the body is over %lld bytes",
                                   (long long)s_body_max(gw, req->route));
    }
    if (req->call) {
        if (!__atomic_load_n(&req->call->is_done, __ATOMIC_ACQUIRE))
            return MHD_YES; /* not ours to answer yet (spurious call) */
        return gateway_api_finish(gw, conn, req);
    }
    return req->route->handler(gw, conn, req);
}

static void s_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe)
{
    gateway_req_t *req = *con_cls;
    if (!req)
        return;
    s_free_params(req->params);
    free(req->body);
    gateway_call_free(&req->call);
    free(req);
    *con_cls = NULL;
}

static void s_notify_conn(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    gateway_t *gw = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED)
        __atomic_add_fetch(&gw->conns, 1, __ATOMIC_RELAXED);
    else if (toe == MHD_CONNECTION_NOTIFY_CLOSED)
        __atomic_sub_fetch(&gw->conns, 1, __ATOMIC_RELAXED);
}

static void s_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    sn_warn("gateway", "libmicrohttpd: %s", line);
}

/* Client text (URLs, methods) in error messages: printable ASCII only, so the JSON is
 * valid whatever the client sent. */
static void s_ascii(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            *s = '?';
}
