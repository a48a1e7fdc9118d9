/* The broker actor: binds the three endpoints (and, with CURVE, its own ZAP handler before
 * them), then runs one zmq_poll loop that drains up to S_BATCH messages per socket per
 * wake-up with ZMQ_DONTWAIT. The event relay reads only the topic frame and forwards the
 * original zmq_msg_t frames; subscriptions are applied by hand (XPUB manual mode) after a
 * permission check. Service calls go to broker_dispatch. */
#include "broker_server.h"

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker_acl.h"
#include "broker_dispatch.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_log.h"

#define S_BATCH 256
#define S_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define S_EVENT_SNDHWM 10000

struct broker_server {
    zactor_t *actor;
    char *endpoints[3]; /* rpc, pub, sub as bound */
};

/* Everything the actor thread owns. */
typedef struct {
    zsock_t *pipe;
    broker_acl_t *acl;
    char *ep[3];
    bool curve;
    char *secret_file;
    int heartbeat_ms;
    int liveness;
    int64_t max_frame_bytes;
    broker_tuning_t tuning;
    void *zap;
    void *router, *xsub, *xpub;
    broker_dispatch_t *dispatch;
    broker_stats_t stats;
    int64_t publish_refused_logged_at; /* refusals are logged at most once a second */
    bool terminated;
} s_actor_t;

static const char *s_names[3] = {"rpc", "pub", "sub"};

static void s_actor(zsock_t *pipe, void *arg);
static sn_rc_t s_start(s_actor_t *a, char *why, size_t why_len);
static void s_stop(s_actor_t *a);
static void s_on_pipe(s_actor_t *a);
static void s_on_router(s_actor_t *a);
static void s_on_xsub(s_actor_t *a);
static void s_on_xpub(s_actor_t *a);
static void s_on_zap(s_actor_t *a);
static const char *s_principal_of(s_actor_t *a, zmq_msg_t *msg);
static void s_drain_rest(void *sock);

broker_server_t *broker_server_new(const sn_broker_config_t *cfg, const broker_tuning_t *tuning)
{
    SN_ASSERT(cfg);
    s_actor_t *a = sn_calloc(1, sizeof *a);
    a->ep[0] = sn_strdup(cfg->rpc ? cfg->rpc : "tcp://127.0.0.1:7700");
    a->ep[1] = sn_strdup(cfg->pub ? cfg->pub : "tcp://127.0.0.1:7701");
    a->ep[2] = sn_strdup(cfg->sub ? cfg->sub : "tcp://127.0.0.1:7702");
    a->curve = cfg->curve;
    a->secret_file = cfg->server_secret_file ? sn_strdup(cfg->server_secret_file) : NULL;
    a->heartbeat_ms = cfg->heartbeat_ms > 0 ? cfg->heartbeat_ms : 1000;
    a->liveness = cfg->heartbeat_liveness > 0 ? cfg->heartbeat_liveness : 3;
    a->max_frame_bytes = cfg->max_frame_bytes > 0 ? cfg->max_frame_bytes : SN_MAX_FRAME_BYTES;
    if (tuning)
        a->tuning = *tuning;
    if (a->tuning.max_queue == 0)
        a->tuning.max_queue = 1000;
    if (a->tuning.default_deadline_ms == 0)
        a->tuning.default_deadline_ms = SN_PROTO_DEFAULT_DEADLINE_MS;
    if (a->tuning.startup_grace_ms == 0)
        a->tuning.startup_grace_ms = a->heartbeat_ms * a->liveness;
    a->acl = broker_acl_new(cfg);

    broker_server_t *self = sn_calloc(1, sizeof *self);
    self->actor = zactor_new(s_actor, a);
    /* The actor answers "OK rpc pub sub" once bound, or "FAIL"; on FAIL it has freed a. */
    char *status = NULL;
    if (zstr_recvx(self->actor, &status, &self->endpoints[0], &self->endpoints[1],
                   &self->endpoints[2], NULL) < 1 ||
        !status || strcmp(status, "OK") != 0) {
        zstr_free(&status);
        broker_server_destroy(&self);
        return NULL;
    }
    zstr_free(&status);
    return self;
}

void broker_server_destroy(broker_server_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    broker_server_t *self = *self_p;
    zactor_destroy(&self->actor);
    for (int i = 0; i < 3; i++)
        zstr_free(&self->endpoints[i]);
    free(self);
    *self_p = NULL;
}

const char *broker_server_endpoint(broker_server_t *self, const char *which)
{
    for (int i = 0; i < 3; i++)
        if (which && strcmp(which, s_names[i]) == 0)
            return self->endpoints[i];
    return NULL;
}

void broker_server_stats(broker_server_t *self, broker_stats_t *out)
{
    zstr_send(self->actor, "STATS");
    zframe_t *f = zframe_recv(self->actor);
    SN_ASSERT(f && zframe_size(f) == sizeof *out);
    memcpy(out, zframe_data(f), sizeof *out);
    zframe_destroy(&f);
}

void broker_server_revoke(broker_server_t *self, const char *public_key)
{
    zstr_sendx(self->actor, "REVOKE", public_key, NULL);
    zsock_wait(self->actor);
}

static void s_actor(zsock_t *pipe, void *arg)
{
    s_actor_t *a = arg;
    a->pipe = pipe;
    char why[256] = "";
    if (s_start(a, why, sizeof why) != SN_OK) {
        sn_error("broker", "refusing to start: %s", why);
        s_stop(a);
        zsock_signal(pipe, 0);
        zstr_send(pipe, "FAIL");
        /* Wait for $TERM so that zactor_destroy finds us. */
        char *cmd = zstr_recv(pipe);
        zstr_free(&cmd);
        return;
    }
    zsock_signal(pipe, 0);
    zstr_sendx(pipe, "OK", a->ep[0], a->ep[1], a->ep[2], NULL);
    sn_info("broker", "up rpc=%s pub=%s sub=%s curve=%s", a->ep[0], a->ep[1], a->ep[2],
            a->curve ? "on" : "off");

    zmq_pollitem_t items[5] = {
        {zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
        {a->router, 0, ZMQ_POLLIN, 0},
        {a->xsub, 0, ZMQ_POLLIN, 0},
        {a->xpub, 0, ZMQ_POLLIN, 0},
        {a->zap, 0, ZMQ_POLLIN, 0},
    };
    int nitems = a->zap ? 5 : 4;
    int timeout = broker_dispatch_tick(a->dispatch, sn_mono_ms());
    while (!a->terminated) {
        int rc = zmq_poll(items, nitems, timeout);
        if (rc < 0 && errno != EINTR) {
            sn_error("broker", "poll failed: %s", zmq_strerror(errno));
            break;
        }
        if (rc > 0) {
            if (items[4].revents & ZMQ_POLLIN)
                s_on_zap(a);
            if (items[1].revents & ZMQ_POLLIN)
                s_on_router(a);
            if (items[2].revents & ZMQ_POLLIN)
                s_on_xsub(a);
            if (items[3].revents & ZMQ_POLLIN)
                s_on_xpub(a);
            if (items[0].revents & ZMQ_POLLIN)
                s_on_pipe(a);
        }
        timeout = broker_dispatch_tick(a->dispatch, sn_mono_ms());
    }
    sn_info("broker", "stopping");
    s_stop(a);
}

static sn_rc_t s_bind(s_actor_t *a, void *sock, int i, char *why, size_t why_len)
{
    if (zmq_bind(sock, a->ep[i]) != 0) {
        snprintf(why, why_len, "cannot bind %s endpoint %s: %s", s_names[i], a->ep[i],
                 zmq_strerror(errno));
        return SN_ERROR;
    }
    char buf[256];
    size_t len = sizeof buf;
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, buf, &len) == 0) {
        free(a->ep[i]);
        a->ep[i] = sn_strdup(buf);
    }
    return SN_OK;
}

static sn_rc_t s_start(s_actor_t *a, char *why, size_t why_len)
{
    if (!a->curve) {
        for (int i = 0; i < 3; i++)
            if (!broker_endpoint_is_loopback(a->ep[i])) {
                snprintf(why, why_len,
                         "%s endpoint %s is not loopback and CURVE is off (turn on curve)",
                         s_names[i], a->ep[i]);
                return SN_ERROR;
            }
    }
    char secret[41] = "";
    if (a->curve) {
        zcert_t *cert = a->secret_file ? zcert_load(a->secret_file) : NULL;
        if (!cert) {
            snprintf(why, why_len, "CURVE is on but the server secret file %s cannot be read",
                     a->secret_file ? a->secret_file : "(none)");
            return SN_ERROR;
        }
        sn_strlcpy(secret, zcert_secret_txt(cert), sizeof secret);
        zcert_destroy(&cert);
        if (strcmp(secret, "0000000000000000000000000000000000000000") == 0) {
            snprintf(why, why_len, "CURVE server certificate %s has no secret key", a->secret_file);
            return SN_ERROR;
        }
        /* Our own ZAP handler, bound before any CURVE socket: without it libzmq would
         * admit any client that knows the server key. */
        a->zap = zmq_socket(zsys_init(), ZMQ_REP);
        int linger = 0;
        zmq_setsockopt(a->zap, ZMQ_LINGER, &linger, sizeof linger);
        if (zmq_bind(a->zap, S_ZAP_ENDPOINT) != 0) {
            snprintf(why, why_len, "CURVE is on but no authenticator: cannot bind %s: %s",
                     S_ZAP_ENDPOINT, zmq_strerror(errno));
            return SN_ERROR;
        }
    }
    void *ctx = zsys_init();
    int types[3] = {ZMQ_ROUTER, ZMQ_XSUB, ZMQ_XPUB};
    void **socks[3] = {&a->router, &a->xsub, &a->xpub};
    for (int i = 0; i < 3; i++) {
        *socks[i] = zmq_socket(ctx, types[i]);
        SN_ASSERT(*socks[i]);
        if (sn_proto_socket_setup(*socks[i], a->max_frame_bytes, NULL) != SN_OK) {
            snprintf(why, why_len, "socket options refused");
            return SN_ERROR;
        }
        if (a->curve) {
            int on = 1;
            zmq_setsockopt(*socks[i], ZMQ_CURVE_SERVER, &on, sizeof on);
            zmq_setsockopt(*socks[i], ZMQ_CURVE_SECRETKEY, secret, 41);
            zmq_setsockopt(*socks[i], ZMQ_ZAP_DOMAIN, "global", 6);
        }
    }
    int one = 1, hwm = S_EVENT_SNDHWM;
    zmq_setsockopt(a->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(a->xpub, ZMQ_XPUB_VERBOSER, &one, sizeof one);
    zmq_setsockopt(a->xpub, ZMQ_XPUB_MANUAL, &one, sizeof one);
    zmq_setsockopt(a->xpub, ZMQ_SNDHWM, &hwm, sizeof hwm);
    for (int i = 0; i < 3; i++)
        if (s_bind(a, *socks[i], i, why, why_len) != SN_OK)
            return SN_ERROR;
    /* XSUB: everything, so every publisher's messages reach us. */
    if (zmq_send(a->xsub, "\x01", 1, 0) != 1) {
        snprintf(why, why_len, "XSUB subscribe failed: %s", zmq_strerror(errno));
        return SN_ERROR;
    }
    broker_dispatch_opts_t opts = {
        .heartbeat_ms = a->heartbeat_ms,
        .liveness = a->liveness,
        .max_queue = a->tuning.max_queue,
        .default_deadline_ms = a->tuning.default_deadline_ms,
        .startup_grace_ms = a->tuning.startup_grace_ms,
    };
    a->dispatch = broker_dispatch_new(a->router, a->acl, &a->stats, &opts);
    return SN_OK;
}

static void s_stop(s_actor_t *a)
{
    broker_dispatch_destroy(&a->dispatch);
    void *socks[4] = {a->router, a->xsub, a->xpub, a->zap};
    for (int i = 0; i < 4; i++)
        if (socks[i])
            zmq_close(socks[i]);
    broker_acl_destroy(&a->acl);
    for (int i = 0; i < 3; i++)
        free(a->ep[i]);
    free(a->secret_file);
    free(a);
}

static void s_on_pipe(s_actor_t *a)
{
    zmsg_t *msg = zmsg_recv(a->pipe);
    if (!msg) {
        a->terminated = true;
        return;
    }
    char *cmd = zmsg_popstr(msg);
    if (!cmd || strcmp(cmd, "$TERM") == 0) {
        a->terminated = true;
    } else if (strcmp(cmd, "STATS") == 0) {
        zframe_t *f = zframe_new(&a->stats, sizeof a->stats);
        zframe_send(&f, a->pipe, 0);
    } else if (strcmp(cmd, "REVOKE") == 0) {
        char *key = zmsg_popstr(msg);
        if (key) {
            broker_acl_revoke(a->acl, key);
            sn_info("broker", "key revoked key=%.8s...", key);
        }
        zstr_free(&key);
        zsock_signal(a->pipe, 0);
    }
    zstr_free(&cmd);
    zmsg_destroy(&msg);
}

static void s_on_router(s_actor_t *a)
{
    zmq_msg_t frames[SN_PROTO_MAX_FRAMES + 1];
    for (int k = 0; k < S_BATCH; k++) {
        zmq_msg_init(&frames[0]);
        if (zmq_msg_recv(&frames[0], a->router, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&frames[0]);
            return;
        }
        size_t n = 1;
        bool too_many = false;
        while (zmq_msg_more(&frames[n - 1])) {
            if (n == SN_PROTO_MAX_FRAMES + 1) {
                too_many = true;
                s_drain_rest(a->router);
                break;
            }
            zmq_msg_init(&frames[n]);
            if (zmq_msg_recv(&frames[n], a->router, 0) < 0) {
                zmq_msg_close(&frames[n]);
                break;
            }
            n++;
        }
        if (too_many) {
            a->stats.malformed++;
            sn_warn("broker", "malformed message refused why=too-many-frames");
        } else if (n >= 2) {
            const char *principal = s_principal_of(a, &frames[1]);
            if (!principal) {
                a->stats.revoked_dropped++;
            } else {
                broker_dispatch_on_message(a->dispatch, frames, n, principal);
            }
        } else {
            a->stats.malformed++;
        }
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&frames[i]);
    }
}

static void s_on_xsub(s_actor_t *a)
{
    for (int k = 0; k < S_BATCH; k++) {
        zmq_msg_t topic, body;
        zmq_msg_init(&topic);
        if (zmq_msg_recv(&topic, a->xsub, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&topic);
            return;
        }
        size_t tlen = zmq_msg_size(&topic);
        if (!zmq_msg_more(&topic) || tlen == 0 || tlen > SN_PROTO_MAX_NAME) {
            if (zmq_msg_more(&topic))
                s_drain_rest(a->xsub);
            zmq_msg_close(&topic);
            a->stats.malformed++;
            sn_debug("broker", "event refused: bad topic frame or frame count");
            continue;
        }
        zmq_msg_init(&body);
        int rc = zmq_msg_recv(&body, a->xsub, 0);
        if (rc < 0 || zmq_msg_more(&body)) {
            if (rc >= 0)
                s_drain_rest(a->xsub);
            zmq_msg_close(&topic);
            zmq_msg_close(&body);
            a->stats.malformed++;
            sn_debug("broker", "event refused: expected [topic][envelope]");
            continue;
        }
        const char *principal = s_principal_of(a, &topic);
        if (!principal) {
            a->stats.revoked_dropped++;
        } else if (!broker_acl_may_publish(a->acl, principal, zmq_msg_data(&topic), tlen)) {
            a->stats.publish_refused++;
            int64_t now = sn_mono_ms();
            if (now - a->publish_refused_logged_at >= 1000) {
                a->publish_refused_logged_at = now;
                sn_warn("broker", "publish refused principal=%s topic=%.*s refused_total=%llu",
                        principal, (int)tlen, (const char *)zmq_msg_data(&topic),
                        (unsigned long long)a->stats.publish_refused);
            }
        } else if (zmq_msg_send(&topic, a->xpub, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
                   zmq_msg_send(&body, a->xpub, ZMQ_DONTWAIT) < 0) {
            a->stats.send_failed++;
        } else {
            a->stats.relayed++;
        }
        zmq_msg_close(&topic);
        zmq_msg_close(&body);
    }
}

static void s_on_xpub(s_actor_t *a)
{
    for (int k = 0; k < S_BATCH; k++) {
        zmq_msg_t sub;
        zmq_msg_init(&sub);
        if (zmq_msg_recv(&sub, a->xpub, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&sub);
            return;
        }
        const uint8_t *d = zmq_msg_data(&sub);
        size_t len = zmq_msg_size(&sub);
        if (zmq_msg_more(&sub) || len < 1 || d[0] > 1) {
            if (zmq_msg_more(&sub))
                s_drain_rest(a->xpub);
            a->stats.malformed++;
            zmq_msg_close(&sub);
            continue;
        }
        const char *principal = s_principal_of(a, &sub);
        if (d[0] == 0) {
            /* Unsubscribing is always allowed (a no-op for a refused prefix). */
            zmq_setsockopt(a->xpub, ZMQ_UNSUBSCRIBE, d + 1, len - 1);
        } else if (principal && broker_acl_may_subscribe(a->acl, principal, d + 1, len - 1)) {
            zmq_setsockopt(a->xpub, ZMQ_SUBSCRIBE, d + 1, len - 1);
            a->stats.subscribed++;
            sn_debug("broker", "subscription applied principal=%s prefix=%.*s", principal,
                     (int)(len - 1), (const char *)(d + 1));
        } else {
            if (!principal)
                a->stats.revoked_dropped++;
            a->stats.subscribe_refused++;
            sn_warn("broker", "subscription refused principal=%s prefix=%.*s",
                    principal ? principal : "(revoked)", (int)(len - 1), (const char *)(d + 1));
        }
        zmq_msg_close(&sub);
    }
}

/* ZAP (RFC 27): admit a configured, non-revoked CURVE key; User-Id = its principal. */
static void s_on_zap(s_actor_t *a)
{
    zmsg_t *req = zmsg_recv(a->zap);
    if (!req)
        return;
    if (zmsg_size(req) < 6) {
        zmsg_destroy(&req);
        return;
    }
    char *version = zmsg_popstr(req);
    char *request_id = zmsg_popstr(req);
    char *domain = zmsg_popstr(req);
    char *address = zmsg_popstr(req);
    char *identity = zmsg_popstr(req);
    char *mechanism = zmsg_popstr(req);
    zframe_t *cred = zmsg_pop(req);
    const char *principal = NULL;
    char z85[41] = "";
    if (mechanism && strcmp(mechanism, "CURVE") == 0 && cred && zframe_size(cred) == 32) {
        zmq_z85_encode(z85, zframe_data(cred), 32);
        principal = broker_acl_principal_for_key(a->acl, z85);
    }
    zmsg_t *rep = zmsg_new();
    zmsg_addstr(rep, "1.0");
    zmsg_addstr(rep, request_id ? request_id : "");
    zmsg_addstr(rep, principal ? "200" : "400");
    zmsg_addstr(rep, principal ? "OK" : "unknown or revoked key");
    zmsg_addstr(rep, principal ? principal : "");
    zmsg_addmem(rep, "", 0);
    if (principal)
        sn_info("broker", "connection admitted principal=%s address=%s", principal,
                address ? address : "");
    else
        sn_warn("broker", "connection refused mechanism=%s key=%.8s address=%s",
                mechanism ? mechanism : "?", z85, address ? address : "");
    zmsg_send(&rep, a->zap);
    zstr_free(&version);
    zstr_free(&request_id);
    zstr_free(&domain);
    zstr_free(&address);
    zstr_free(&identity);
    zstr_free(&mechanism);
    zframe_destroy(&cred);
    zmsg_destroy(&req);
}

/* The sender's principal, or NULL if its key has been revoked since it connected. */
static const char *s_principal_of(s_actor_t *a, zmq_msg_t *msg)
{
    if (!a->curve)
        return "anonymous";
    const char *uid = zmq_msg_gets(msg, "User-Id");
    if (!uid || !*uid || broker_acl_is_revoked(a->acl, uid))
        return NULL;
    return uid;
}

static void s_drain_rest(void *sock)
{
    int more = 1;
    size_t len = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &len) == 0 && more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        int rc = zmq_msg_recv(&m, sock, 0);
        zmq_msg_close(&m);
        if (rc < 0)
            break;
    }
}
