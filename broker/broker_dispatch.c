/* Service dispatch. One table of peers (by routing id), one of services, one of
 * outstanding requests (by "<client routing id hex>:<request id>"). A request is either
 * queued on its service or held by one worker slot (a worker's credit for one service);
 * it is freed exactly once, when it is answered, cancelled, expired or its client is gone.
 * The broker never re-sends a request (docs/protocol.md §4). A fourth table remembers, for
 * a while, the routing ids of peers the broker dropped (§7.2), so that one that speaks
 * again is told DISCONNECT once instead of being taken for a new peer. */
#include "broker_dispatch.h"

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sentinel/sn_envelope.h"
#include "sentinel/sn_log.h"

#define S_KEY_MAX (2 * SN_PROTO_MAX_ROUTE + 32)
#define S_SERVICES_NAME "broker.services"
/* Dropped peers are remembered for S_GONE_WINDOWS silence windows, at most S_GONE_MAX. */
#define S_GONE_WINDOWS 10
#define S_GONE_MAX 4096

typedef struct s_peer s_peer_t;
typedef struct s_service s_service_t;

typedef struct {
    s_peer_t *worker;
    s_service_t *svc;
    uint32_t credit;
    uint32_t used;
    uint64_t last_used; /* dispatch sequence number of the last dispatch; 0 = never */
    uint64_t reg_seq;   /* registration order, the LRU tie-break */
} s_slot_t;

struct s_peer {
    char key[2 * SN_PROTO_MAX_ROUTE + 1];
    uint8_t rid[SN_PROTO_MAX_ROUTE];
    size_t rid_len;
    char principal[SN_PROTO_MAX_NAME + 1];
    int64_t expires_at;
    bool is_worker;
    zlistx_t *slots;      /* s_slot_t*, owned */
    const char *last_why; /* last malformed reason logged for this peer */
};

struct s_service {
    char *name;
    zlistx_t *slots; /* s_slot_t*, borrowed from peers */
    zlistx_t *queue; /* s_request_t*, borrowed from requests */
    uint64_t served;
    int64_t idle_since; /* 0 while it has workers or queued requests */
    bool known;         /* a READY listed it (§5.4); false: only queued in the grace */
};

/* A routing id the broker dropped: declared dead, or told DISCONNECT. */
typedef struct {
    char key[2 * SN_PROTO_MAX_ROUTE + 1];
    int64_t expires_at;
    bool disconnect_sent;
} s_gone_t;

typedef struct {
    char key[S_KEY_MAX];
    s_peer_t *client;
    uint64_t id;
    uint32_t attempt;
    int64_t deadline_at;
    s_service_t *svc;
    zmq_msg_t env;
    char principal[SN_PROTO_MAX_NAME + 1];
    s_slot_t *slot; /* NULL while queued */
    void *qhandle;  /* handle in svc->queue while queued */
} s_request_t;

struct broker_dispatch {
    void *router;
    broker_acl_t *acl;
    broker_stats_t *stats;
    broker_dispatch_opts_t opts;
    zhash_t *peers;       /* key -> s_peer_t*, owned */
    zhash_t *services;    /* name -> s_service_t*, owned */
    zhash_t *requests;    /* key -> s_request_t*, owned */
    zhash_t *gone;        /* key -> s_gone_t*, borrowed from gone_order */
    zlistx_t *gone_order; /* s_gone_t*, owned, oldest first (= soonest to expire) */
    int64_t started_at;
    int64_t next_heartbeat;
    uint64_t dispatch_seq;
    uint64_t reg_seq;
    int64_t forbidden_logged_at; /* refusals are logged at most once a second */
    int64_t malformed_logged_at; /* the same for malformed input from unknown peers */
    sn_source_t source;
};

static void s_hex(const uint8_t *data, size_t len, char *out);
static void s_req_key(char *out, const uint8_t *rid, size_t rid_len, uint64_t id);
static s_peer_t *s_peer_require(broker_dispatch_t *self, const zmq_msg_t *rid);
static void s_peer_remove(broker_dispatch_t *self, s_peer_t *peer, const char *why);
static void s_peer_drop(broker_dispatch_t *self, s_peer_t *peer, bool disconnect, const char *why);
static void s_gone_destroy(void **item);
static void s_gone_add(broker_dispatch_t *self, const char *key, bool disconnect_sent);
static void s_gone_del(broker_dispatch_t *self, s_gone_t *g);
static void s_on_gone(broker_dispatch_t *self, s_gone_t *g, const zmq_msg_t *rid,
                      const sn_proto_msg_t *m);
static void s_on_bad_answer(broker_dispatch_t *self, const zmq_msg_t *rid, const sn_proto_msg_t *m);
static void s_service_free(broker_dispatch_t *self, s_service_t *svc);
static s_service_t *s_service_require(broker_dispatch_t *self, const char *name);
static void s_on_ready(broker_dispatch_t *self, s_peer_t *peer, const sn_proto_msg_t *m);
static void s_on_request(broker_dispatch_t *self, s_peer_t *peer, const sn_proto_msg_t *m,
                         zmq_msg_t *env);
static void s_on_answer(broker_dispatch_t *self, s_peer_t *peer, const sn_proto_msg_t *m,
                        zmq_msg_t *env);
static void s_on_cancel(broker_dispatch_t *self, s_peer_t *peer, const sn_proto_msg_t *m);
static void s_dispatch(broker_dispatch_t *self, s_service_t *svc);
static void s_request_free(broker_dispatch_t *self, s_request_t *req);
static void s_nak(broker_dispatch_t *self, const uint8_t *rid, size_t rid_len, uint64_t id,
                  uint32_t attempt, uint8_t reason);
static void s_send(broker_dispatch_t *self, const uint8_t *rid, size_t rid_len,
                   const sn_proto_msg_t *m, zmq_msg_t *env);
static void s_send_simple(broker_dispatch_t *self, s_peer_t *peer, sn_proto_cmd_t cmd);
static void s_answer_services(broker_dispatch_t *self, s_peer_t *peer, const sn_proto_msg_t *m);
static void s_malformed(broker_dispatch_t *self, const zmq_msg_t *rid, const char *why);

broker_dispatch_t *broker_dispatch_new(void *router, broker_acl_t *acl, broker_stats_t *stats,
                                       const broker_dispatch_opts_t *opts)
{
    SN_ASSERT(router && acl && stats && opts);
    broker_dispatch_t *self = sn_calloc(1, sizeof *self);
    self->router = router;
    self->acl = acl;
    self->stats = stats;
    self->opts = *opts;
    self->peers = zhash_new();
    self->services = zhash_new();
    self->requests = zhash_new();
    self->gone = zhash_new();
    self->gone_order = zlistx_new();
    zlistx_set_destructor(self->gone_order, s_gone_destroy);
    self->started_at = sn_mono_ms();
    self->next_heartbeat = self->started_at + opts->heartbeat_ms;
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    sn_source_init(&self->source, "broker", pid);
    return self;
}

void broker_dispatch_destroy(broker_dispatch_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    broker_dispatch_t *self = *self_p;
    for (s_request_t *r = zhash_first(self->requests); r; r = zhash_next(self->requests)) {
        zmq_msg_close(&r->env);
        free(r);
    }
    zhash_destroy(&self->requests);
    for (s_service_t *s = zhash_first(self->services); s; s = zhash_next(self->services)) {
        zlistx_destroy(&s->slots);
        zlistx_destroy(&s->queue);
        free(s->name);
        free(s);
    }
    zhash_destroy(&self->services);
    for (s_peer_t *p = zhash_first(self->peers); p; p = zhash_next(self->peers)) {
        for (s_slot_t *sl = zlistx_first(p->slots); sl; sl = zlistx_next(p->slots))
            free(sl);
        zlistx_destroy(&p->slots);
        free(p);
    }
    zhash_destroy(&self->peers);
    zhash_destroy(&self->gone);
    zlistx_destroy(&self->gone_order);
    free(self);
    *self_p = NULL;
}

void broker_dispatch_on_message(broker_dispatch_t *self, zmq_msg_t *frames, size_t count,
                                const char *principal)
{
    SN_ASSERT(count >= 1);
    zmq_msg_t *rid = &frames[0];
    if (zmq_msg_size(rid) == 0 || zmq_msg_size(rid) > SN_PROTO_MAX_ROUTE) {
        self->stats->malformed++;
        return;
    }
    sn_proto_bytes_t views[SN_PROTO_MAX_FRAMES];
    size_t n = count - 1;
    if (n > SN_PROTO_MAX_FRAMES) {
        s_malformed(self, rid, "too-many-frames");
        return;
    }
    for (size_t i = 0; i < n; i++)
        views[i] = (sn_proto_bytes_t){zmq_msg_data(&frames[i + 1]), zmq_msg_size(&frames[i + 1])};
    sn_proto_msg_t m;
    const char *why = NULL;
    if (sn_proto_decode(views, n, SN_PROTO_UP, &m, &why) != SN_OK) {
        /* §9: dropped and counted; answered when it names a request we can answer. */
        s_malformed(self, rid, why);
        if (m.cmd == SN_PROTO_REQUEST && m.request_id != 0)
            s_nak(self, zmq_msg_data(rid), zmq_msg_size(rid), m.request_id, m.attempt,
                  SN_NAK_INVALID);
        else if (m.cmd == SN_PROTO_REPLY || m.cmd == SN_PROTO_NAK)
            s_on_bad_answer(self, rid, &m);
        return;
    }
    char key[2 * SN_PROTO_MAX_ROUTE + 1];
    s_hex(zmq_msg_data(rid), zmq_msg_size(rid), key);
    s_gone_t *gone = zhash_lookup(self->gone, key);
    if (gone) {
        s_on_gone(self, gone, rid, &m);
        return;
    }
    if (m.cmd == SN_PROTO_DISCONNECT) {
        s_peer_t *peer = zhash_lookup(self->peers, key);
        if (peer)
            s_peer_remove(self, peer, "disconnect");
        return;
    }
    s_peer_t *peer = s_peer_require(self, rid);
    sn_strlcpy(peer->principal, principal, sizeof peer->principal);
    peer->expires_at = sn_mono_ms() + (int64_t)self->opts.heartbeat_ms * self->opts.liveness;
    switch (m.cmd) {
    case SN_PROTO_READY:
        s_on_ready(self, peer, &m);
        break;
    case SN_PROTO_REQUEST:
        s_on_request(self, peer, &m, &frames[4]);
        break;
    case SN_PROTO_REPLY:
        s_on_answer(self, peer, &m, &frames[4]);
        break;
    case SN_PROTO_NAK:
        s_on_answer(self, peer, &m, NULL);
        break;
    case SN_PROTO_CANCEL:
        s_on_cancel(self, peer, &m);
        break;
    case SN_PROTO_HEARTBEAT:
        if ((m.flags & SN_PROTO_HB_WORKER) && !peer->is_worker) {
            /* A worker we do not know (we restarted, or declared it dead): make it
             * reconnect and register again. */
            sn_info("broker", "unknown worker heartbeat, sending DISCONNECT peer=%s", peer->key);
            s_peer_drop(self, peer, true, NULL);
        }
        break;
    default:
        break;
    }
}

int broker_dispatch_tick(broker_dispatch_t *self, int64_t now)
{
    int grace = self->opts.startup_grace_ms;
    bool in_grace = grace > 0 && now - self->started_at < grace;
    /* Queued requests past their deadline; at the end of the startup grace, those for
     * services no worker registered (§5.4). */
    zlist_t *touched = zlist_new();
    for (s_service_t *s = zhash_first(self->services); s; s = zhash_next(self->services))
        zlist_append(touched, s);
    for (s_service_t *s = zlist_first(touched); s; s = zlist_next(touched)) {
        if (!s->known && !in_grace) {
            s_request_t *r = zlistx_first(s->queue);
            while (r) {
                s_request_t *next = zlistx_next(s->queue);
                s_nak(self, r->client->rid, r->client->rid_len, r->id, r->attempt,
                      SN_NAK_NO_SUCH_SERVICE);
                s_request_free(self, r);
                r = next;
            }
            sn_info("broker", "startup grace over, no worker for service=%s", s->name);
            s_service_free(self, s);
            continue;
        }
        s_request_t *r = zlistx_first(s->queue);
        while (r) {
            s_request_t *next = zlistx_next(s->queue);
            if (r->deadline_at <= now) {
                s_nak(self, r->client->rid, r->client->rid_len, r->id, r->attempt, SN_NAK_EXPIRED);
                s_request_free(self, r);
            }
            r = next;
        }
        if (s->known && zlistx_size(s->slots) == 0 && zlistx_size(s->queue) == 0) {
            if (s->idle_since == 0)
                s->idle_since = now;
            else if (now - s->idle_since >=
                     (int64_t)self->opts.heartbeat_ms * self->opts.liveness) {
                sn_info("broker", "service forgotten service=%s", s->name);
                s_service_free(self, s);
            }
        } else {
            s->idle_since = 0;
        }
    }
    zlist_destroy(&touched);

    /* Silent peers. */
    zlist_t *dead = zlist_new();
    for (s_peer_t *p = zhash_first(self->peers); p; p = zhash_next(self->peers))
        if (p->expires_at <= now)
            zlist_append(dead, p);
    for (s_peer_t *p = zlist_first(dead); p; p = zlist_next(dead))
        s_peer_drop(self, p, false, "heartbeat expired");
    zlist_destroy(&dead);
    for (s_gone_t *g = zlistx_first(self->gone_order); g && g->expires_at <= now;
         g = zlistx_first(self->gone_order))
        s_gone_del(self, g);

    if (now >= self->next_heartbeat) {
        for (s_peer_t *p = zhash_first(self->peers); p; p = zhash_next(self->peers))
            s_send_simple(self, p, SN_PROTO_HEARTBEAT);
        self->next_heartbeat = now + self->opts.heartbeat_ms;
    }
    uint64_t workers = 0;
    for (s_peer_t *p = zhash_first(self->peers); p; p = zhash_next(self->peers))
        workers += p->is_worker;
    self->stats->workers = workers;
    self->stats->peers = zhash_size(self->peers);
    int64_t wait = self->next_heartbeat - now;
    return (int)(wait < 50 ? (wait < 0 ? 0 : wait) : 50);
}

static void s_on_ready(broker_dispatch_t *self, s_peer_t *peer, const sn_proto_msg_t *m)
{
    size_t applied = 0;
    for (size_t i = 0; i < m->entry_count; i++) {
        const sn_proto_entry_t *e = &m->entries[i];
        char name[SN_PROTO_MAX_NAME + 1];
        memcpy(name, e->service.data, e->service.len);
        name[e->service.len] = '\0';
        if (strcmp(name, S_SERVICES_NAME) == 0 ||
            !broker_acl_may_serve(self->acl, peer->principal, name, e->service.len)) {
            self->stats->serve_refused++;
            sn_warn("broker", "READY refused: may not serve principal=%s service=%s peer=%s",
                    peer->principal, name, peer->key);
            continue;
        }
        applied++;
        s_service_t *svc = s_service_require(self, name);
        svc->known = true;
        s_slot_t *slot = NULL;
        for (s_slot_t *sl = zlistx_first(peer->slots); sl; sl = zlistx_next(peer->slots))
            if (sl->svc == svc)
                slot = sl;
        if (!slot) {
            slot = sn_calloc(1, sizeof *slot);
            slot->worker = peer;
            slot->svc = svc;
            slot->reg_seq = ++self->reg_seq;
            zlistx_add_end(peer->slots, slot);
            zlistx_add_end(svc->slots, slot);
            sn_info("broker", "worker ready service=%s credit=%u principal=%s peer=%s", name,
                    e->credit, peer->principal, peer->key);
        }
        slot->credit = e->credit;
        svc->idle_since = 0;
    }
    if (applied > 0)
        peer->is_worker = true;
    if (!peer->is_worker) {
        s_peer_drop(self, peer, true, NULL);
        return;
    }
    for (s_slot_t *sl = zlistx_first(peer->slots); sl; sl = zlistx_next(peer->slots))
        s_dispatch(self, sl->svc);
}

static void s_on_request(broker_dispatch_t *self, s_peer_t *peer, const sn_proto_msg_t *m,
                         zmq_msg_t *env)
{
    char name[SN_PROTO_MAX_NAME + 1];
    memcpy(name, m->service.data, m->service.len);
    name[m->service.len] = '\0';
    if (!broker_acl_may_call(self->acl, peer->principal, name, m->service.len)) {
        int64_t now = sn_mono_ms();
        if (now - self->forbidden_logged_at >= 1000) {
            self->forbidden_logged_at = now;
            sn_warn("broker", "REQUEST refused: may not call principal=%s service=%s",
                    peer->principal, name);
        }
        s_nak(self, peer->rid, peer->rid_len, m->request_id, m->attempt, SN_NAK_FORBIDDEN);
        return;
    }
    if (strcmp(name, S_SERVICES_NAME) == 0) {
        s_answer_services(self, peer, m);
        return;
    }
    char key[S_KEY_MAX];
    s_req_key(key, peer->rid, peer->rid_len, m->request_id);
    if (zhash_lookup(self->requests, key)) {
        sn_warn("broker", "duplicate request id=%llu peer=%s", (unsigned long long)m->request_id,
                peer->key);
        s_nak(self, peer->rid, peer->rid_len, m->request_id, m->attempt, SN_NAK_INVALID);
        return;
    }
    int64_t now = sn_mono_ms();
    s_service_t *svc = zhash_lookup(self->services, name);
    if (!svc || !svc->known) {
        /* Unknown (§5.4): queued only during the startup grace; that does not make the
         * service known. */
        int grace = self->opts.startup_grace_ms;
        if (grace <= 0 || now - self->started_at >= grace) {
            s_nak(self, peer->rid, peer->rid_len, m->request_id, m->attempt,
                  SN_NAK_NO_SUCH_SERVICE);
            return;
        }
        svc = s_service_require(self, name);
    }
    if (zlistx_size(svc->queue) >= self->opts.max_queue) {
        s_nak(self, peer->rid, peer->rid_len, m->request_id, m->attempt, SN_NAK_OVERLOADED);
        return;
    }
    s_request_t *req = sn_calloc(1, sizeof *req);
    memcpy(req->key, key, sizeof req->key);
    req->client = peer;
    req->id = m->request_id;
    req->attempt = m->attempt;
    uint32_t d = m->deadline_ms ? m->deadline_ms : self->opts.default_deadline_ms;
    req->deadline_at = now + d;
    req->svc = svc;
    zmq_msg_init(&req->env);
    zmq_msg_move(&req->env, env);
    sn_strlcpy(req->principal, peer->principal, sizeof req->principal);
    req->qhandle = zlistx_add_end(svc->queue, req);
    zhash_insert(self->requests, req->key, req);
    svc->idle_since = 0;
    self->stats->requests++;
    s_dispatch(self, svc);
}

static void s_on_answer(broker_dispatch_t *self, s_peer_t *peer, const sn_proto_msg_t *m,
                        zmq_msg_t *env)
{
    if (!peer->is_worker) {
        self->stats->stale_replies++;
        sn_warn("broker",
                "%s from a peer that is not a registered worker, sending DISCONNECT "
                "peer=%s",
                sn_proto_cmd_name(m->cmd), peer->key);
        s_peer_drop(self, peer, true, NULL);
        return;
    }
    char key[S_KEY_MAX];
    s_req_key(key, m->route.data, m->route.len, m->request_id);
    s_request_t *req = zhash_lookup(self->requests, key);
    if (!req || !req->slot || req->slot->worker != peer || req->attempt != m->attempt) {
        self->stats->stale_replies++;
        sn_info("broker", "stale %s dropped id=%llu attempt=%u peer=%s", sn_proto_cmd_name(m->cmd),
                (unsigned long long)m->request_id, m->attempt, peer->key);
        return;
    }
    s_service_t *svc = req->svc;
    if (m->cmd == SN_PROTO_REPLY) {
        sn_proto_msg_t out = {.cmd = SN_PROTO_REPLY,
                              .request_id = req->id,
                              .attempt = req->attempt,
                              .envelope = {zmq_msg_data(env), zmq_msg_size(env)}};
        s_send(self, req->client->rid, req->client->rid_len, &out, env);
        self->stats->replies++;
    } else {
        s_nak(self, req->client->rid, req->client->rid_len, req->id, req->attempt, m->reason);
    }
    s_request_free(self, req);
    s_dispatch(self, svc);
}

static void s_on_cancel(broker_dispatch_t *self, s_peer_t *peer, const sn_proto_msg_t *m)
{
    char key[S_KEY_MAX];
    s_req_key(key, peer->rid, peer->rid_len, m->request_id);
    s_request_t *req = zhash_lookup(self->requests, key);
    if (!req || req->attempt != m->attempt)
        return;
    self->stats->cancels++;
    s_service_t *svc = req->svc;
    if (req->slot) {
        sn_proto_msg_t out = {.cmd = SN_PROTO_CANCEL,
                              .request_id = req->id,
                              .attempt = req->attempt,
                              .route = {peer->rid, peer->rid_len}};
        s_send(self, req->slot->worker->rid, req->slot->worker->rid_len, &out, NULL);
    }
    s_request_free(self, req);
    s_dispatch(self, svc);
}

static void s_dispatch(broker_dispatch_t *self, s_service_t *svc)
{
    while (zlistx_size(svc->queue) > 0) {
        s_slot_t *best = NULL;
        for (s_slot_t *sl = zlistx_first(svc->slots); sl; sl = zlistx_next(svc->slots)) {
            if (sl->used >= sl->credit)
                continue;
            if (!best || sl->last_used < best->last_used ||
                (sl->last_used == best->last_used && sl->reg_seq < best->reg_seq))
                best = sl;
        }
        if (!best)
            return;
        s_request_t *req = zlistx_first(svc->queue);
        zlistx_delete(svc->queue, req->qhandle);
        req->qhandle = NULL;
        int64_t left = req->deadline_at - sn_mono_ms();
        if (left <= 0) {
            s_nak(self, req->client->rid, req->client->rid_len, req->id, req->attempt,
                  SN_NAK_EXPIRED);
            s_request_free(self, req);
            continue;
        }
        sn_proto_msg_t out = {
            .cmd = SN_PROTO_REQUEST,
            .request_id = req->id,
            .attempt = req->attempt,
            .deadline_ms = (uint32_t)left,
            .service = {(const uint8_t *)svc->name, strlen(svc->name)},
            .envelope = {zmq_msg_data(&req->env), zmq_msg_size(&req->env)},
            .principal = {(const uint8_t *)req->principal, strlen(req->principal)},
            .route = {req->client->rid, req->client->rid_len},
        };
        s_peer_t *w = best->worker;
        if (sn_proto_send_zmsg(self->router, w->rid, w->rid_len, &out, SN_PROTO_DOWN, &req->env) !=
            SN_OK) {
            self->stats->send_failed++;
            sn_warn("broker", "dispatch to worker failed peer=%s: %s", w->key, zmq_strerror(errno));
            best->credit = 0; /* it will expire; send it nothing more */
            s_nak(self, req->client->rid, req->client->rid_len, req->id, req->attempt,
                  SN_NAK_WORKER_LOST);
            s_request_free(self, req);
            continue;
        }
        best->used++;
        best->last_used = ++self->dispatch_seq;
        req->slot = best;
        svc->served++;
        self->stats->dispatched++;
    }
}

static void s_request_free(broker_dispatch_t *self, s_request_t *req)
{
    if (req->qhandle)
        zlistx_delete(req->svc->queue, req->qhandle);
    if (req->slot && req->slot->used > 0)
        req->slot->used--;
    zhash_delete(self->requests, req->key);
    zmq_msg_close(&req->env);
    free(req);
}

static void s_peer_remove(broker_dispatch_t *self, s_peer_t *peer, const char *why)
{
    if (why)
        sn_info("broker", "peer gone peer=%s principal=%s worker=%s reason=%s", peer->key,
                peer->principal, peer->is_worker ? "yes" : "no", why);
    zlist_t *mine = zlist_new();
    for (s_request_t *r = zhash_first(self->requests); r; r = zhash_next(self->requests))
        if (r->client == peer || (r->slot && r->slot->worker == peer))
            zlist_append(mine, r);
    zlist_t *touched = zlist_new();
    for (s_request_t *r = zlist_first(mine); r; r = zlist_next(mine)) {
        if (r->slot && r->slot->worker == peer) {
            if (r->client != peer)
                s_nak(self, r->client->rid, r->client->rid_len, r->id, r->attempt,
                      SN_NAK_WORKER_LOST);
        } else if (r->slot) {
            /* A dispatched request of a client that is gone: cancel it at its worker. */
            sn_proto_msg_t out = {.cmd = SN_PROTO_CANCEL,
                                  .request_id = r->id,
                                  .attempt = r->attempt,
                                  .route = {peer->rid, peer->rid_len}};
            s_send(self, r->slot->worker->rid, r->slot->worker->rid_len, &out, NULL);
            zlist_append(touched, r->svc);
        }
        s_request_free(self, r);
    }
    zlist_destroy(&mine);
    for (s_slot_t *sl = zlistx_first(peer->slots); sl; sl = zlistx_next(peer->slots)) {
        void *h = zlistx_find(sl->svc->slots, sl);
        if (h)
            zlistx_delete(sl->svc->slots, h);
        free(sl);
    }
    zlistx_purge(peer->slots);
    zlistx_destroy(&peer->slots);
    zhash_delete(self->peers, peer->key);
    free(peer);
    for (s_service_t *s = zlist_first(touched); s; s = zlist_next(touched))
        s_dispatch(self, s);
    zlist_destroy(&touched);
}

/* Removes @peer (answering or cancelling what it had, like s_peer_remove) and remembers
 * its routing id (§7.2): after a DISCONNECT (@disconnect: sent here), so that what it still
 * sends is dropped without another DISCONNECT; after its silence, if it had state we
 * dropped (it was a worker, or a client with requests), so that it is told DISCONNECT when
 * it speaks again. */
static void s_peer_drop(broker_dispatch_t *self, s_peer_t *peer, bool disconnect, const char *why)
{
    bool had_state = peer->is_worker;
    for (s_request_t *r = zhash_first(self->requests); r && !had_state;
         r = zhash_next(self->requests))
        had_state = r->client == peer;
    if (disconnect)
        s_send_simple(self, peer, SN_PROTO_DISCONNECT);
    char key[sizeof peer->key];
    memcpy(key, peer->key, sizeof key);
    s_peer_remove(self, peer, why);
    if (disconnect || had_state)
        s_gone_add(self, key, disconnect);
}

static void s_gone_destroy(void **item)
{
    if (item && *item) {
        free(*item);
        *item = NULL;
    }
}

static void s_gone_add(broker_dispatch_t *self, const char *key, bool disconnect_sent)
{
    s_gone_t *old = zhash_lookup(self->gone, key);
    if (old)
        s_gone_del(self, old);
    if (zlistx_size(self->gone_order) >= S_GONE_MAX)
        s_gone_del(self, zlistx_first(self->gone_order));
    s_gone_t *g = sn_calloc(1, sizeof *g);
    sn_strlcpy(g->key, key, sizeof g->key);
    g->expires_at =
        sn_mono_ms() + (int64_t)S_GONE_WINDOWS * self->opts.heartbeat_ms * self->opts.liveness;
    g->disconnect_sent = disconnect_sent;
    zlistx_add_end(self->gone_order, g);
    zhash_insert(self->gone, g->key, g);
}

static void s_gone_del(broker_dispatch_t *self, s_gone_t *g)
{
    zhash_delete(self->gone, g->key);
    void *h = zlistx_find(self->gone_order, g);
    SN_ASSERT(h);
    zlistx_delete(self->gone_order, h); /* frees g */
}

/* A valid message from a routing id the broker dropped (§7.2). It is not taken for a new
 * peer: a REQUEST is answered NAK worker-lost, a REPLY/NAK counted as stale, and the peer
 * is told DISCONNECT once, so that it starts again on a new socket. */
static void s_on_gone(broker_dispatch_t *self, s_gone_t *g, const zmq_msg_t *rid,
                      const sn_proto_msg_t *m)
{
    const uint8_t *r = zmq_msg_data((zmq_msg_t *)rid);
    size_t rlen = zmq_msg_size((zmq_msg_t *)rid);
    if (m->cmd == SN_PROTO_DISCONNECT) {
        s_gone_del(self, g); /* it has closed that socket */
        return;
    }
    if (m->cmd == SN_PROTO_REQUEST)
        s_nak(self, r, rlen, m->request_id, m->attempt, SN_NAK_WORKER_LOST);
    else if (m->cmd == SN_PROTO_REPLY || m->cmd == SN_PROTO_NAK)
        self->stats->stale_replies++;
    if (!g->disconnect_sent) {
        sn_info("broker", "%s from a peer declared dead, sending DISCONNECT peer=%s",
                sn_proto_cmd_name(m->cmd), g->key);
        sn_proto_msg_t out = {.cmd = SN_PROTO_DISCONNECT};
        s_send(self, r, rlen, &out, NULL);
        g->disconnect_sent = true;
    }
}

/* A malformed REPLY or NAK whose ids and route could be read (§9), e.g. a NAK with an
 * unknown reason: if it is for a request this worker holds, the client must not be left
 * waiting: it is answered NAK worker-lost and the worker's credit returns. */
static void s_on_bad_answer(broker_dispatch_t *self, const zmq_msg_t *rid, const sn_proto_msg_t *m)
{
    char pkey[2 * SN_PROTO_MAX_ROUTE + 1];
    s_hex(zmq_msg_data((zmq_msg_t *)rid), zmq_msg_size((zmq_msg_t *)rid), pkey);
    s_peer_t *peer = zhash_lookup(self->peers, pkey);
    if (!peer || !peer->is_worker || m->route.len == 0)
        return;
    char key[S_KEY_MAX];
    s_req_key(key, m->route.data, m->route.len, m->request_id);
    s_request_t *req = zhash_lookup(self->requests, key);
    if (!req || !req->slot || req->slot->worker != peer || req->attempt != m->attempt)
        return;
    sn_warn("broker", "malformed %s for request id=%llu attempt=%u: answered worker-lost peer=%s",
            sn_proto_cmd_name(m->cmd), (unsigned long long)m->request_id, m->attempt, peer->key);
    s_service_t *svc = req->svc;
    s_nak(self, req->client->rid, req->client->rid_len, req->id, req->attempt, SN_NAK_WORKER_LOST);
    s_request_free(self, req);
    s_dispatch(self, svc);
}

static void s_service_free(broker_dispatch_t *self, s_service_t *svc)
{
    SN_ASSERT(zlistx_size(svc->queue) == 0 && zlistx_size(svc->slots) == 0);
    zhash_delete(self->services, svc->name);
    zlistx_destroy(&svc->slots);
    zlistx_destroy(&svc->queue);
    free(svc->name);
    free(svc);
}

static s_peer_t *s_peer_require(broker_dispatch_t *self, const zmq_msg_t *rid)
{
    char key[2 * SN_PROTO_MAX_ROUTE + 1];
    s_hex(zmq_msg_data((zmq_msg_t *)rid), zmq_msg_size((zmq_msg_t *)rid), key);
    s_peer_t *peer = zhash_lookup(self->peers, key);
    if (peer)
        return peer;
    peer = sn_calloc(1, sizeof *peer);
    memcpy(peer->key, key, sizeof peer->key);
    peer->rid_len = zmq_msg_size((zmq_msg_t *)rid);
    memcpy(peer->rid, zmq_msg_data((zmq_msg_t *)rid), peer->rid_len);
    peer->slots = zlistx_new();
    zhash_insert(self->peers, peer->key, peer);
    return peer;
}

static s_service_t *s_service_require(broker_dispatch_t *self, const char *name)
{
    s_service_t *svc = zhash_lookup(self->services, name);
    if (svc)
        return svc;
    svc = sn_calloc(1, sizeof *svc);
    svc->name = sn_strdup(name);
    svc->slots = zlistx_new();
    svc->queue = zlistx_new();
    zhash_insert(self->services, svc->name, svc);
    return svc;
}

static void s_nak(broker_dispatch_t *self, const uint8_t *rid, size_t rid_len, uint64_t id,
                  uint32_t attempt, uint8_t reason)
{
    sn_proto_msg_t out = {
        .cmd = SN_PROTO_NAK, .request_id = id, .attempt = attempt, .reason = reason};
    if (reason <= SN_NAK_REASON_MAX)
        self->stats->nak[reason]++;
    s_send(self, rid, rid_len, &out, NULL);
}

static void s_send(broker_dispatch_t *self, const uint8_t *rid, size_t rid_len,
                   const sn_proto_msg_t *m, zmq_msg_t *env)
{
    sn_rc_t rc = env ? sn_proto_send_zmsg(self->router, rid, rid_len, m, SN_PROTO_DOWN, env)
                     : sn_proto_send(self->router, rid, rid_len, m, SN_PROTO_DOWN);
    if (rc != SN_OK) {
        self->stats->send_failed++;
        sn_debug("broker", "send %s failed: %s", sn_proto_cmd_name(m->cmd), zmq_strerror(errno));
    }
}

static void s_send_simple(broker_dispatch_t *self, s_peer_t *peer, sn_proto_cmd_t cmd)
{
    sn_proto_msg_t out = {.cmd = cmd};
    s_send(self, peer->rid, peer->rid_len, &out, NULL);
}

static void s_answer_services(broker_dispatch_t *self, s_peer_t *peer, const sn_proto_msg_t *m)
{
    size_t n = zhash_size(self->services);
    Sentinel__V1__ServiceInfo *infos = sn_calloc(n ? n : 1, sizeof *infos);
    Sentinel__V1__ServiceInfo **ptrs = sn_calloc(n ? n : 1, sizeof *ptrs);
    size_t i = 0;
    for (s_service_t *s = zhash_first(self->services); s; s = zhash_next(self->services)) {
        if (!s->known)
            continue; /* only queued during the startup grace (§5.4) */
        Sentinel__V1__ServiceInfo *info = &infos[i];
        sentinel__v1__service_info__init(info);
        info->name = s->name;
        uint32_t idle = 0;
        for (s_slot_t *sl = zlistx_first(s->slots); sl; sl = zlistx_next(s->slots))
            if (sl->credit > sl->used)
                idle += sl->credit - sl->used;
        info->workers = (uint32_t)zlistx_size(s->slots);
        info->idle_credit = idle;
        info->queued = (uint32_t)zlistx_size(s->queue);
        info->served = s->served;
        ptrs[i++] = info;
    }
    Sentinel__V1__ServiceList list;
    sentinel__v1__service_list__init(&list);
    list.n_services = i;
    list.services = ptrs;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &self->source, S_SERVICES_NAME, id);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_SERVICES;
    env.services = &list;
    const broker_stats_t *st = self->stats;
    struct {
        const char *name;
        uint64_t v;
    } counters[] = {
        {"relayed", st->relayed},
        {"publish_refused", st->publish_refused},
        {"subscribe_refused", st->subscribe_refused},
        {"subscribed", st->subscribed},
        {"malformed", st->malformed},
        {"stale_replies", st->stale_replies},
        {"revoked_dropped", st->revoked_dropped},
        {"requests", st->requests},
        {"replies", st->replies},
        {"nak.no-such-service", st->nak[SN_NAK_NO_SUCH_SERVICE]},
        {"nak.forbidden", st->nak[SN_NAK_FORBIDDEN]},
        {"nak.expired", st->nak[SN_NAK_EXPIRED]},
        {"nak.worker-lost", st->nak[SN_NAK_WORKER_LOST]},
        {"nak.overloaded", st->nak[SN_NAK_OVERLOADED]},
        {"nak.invalid", st->nak[SN_NAK_INVALID]},
    };
    char values[SN_ARRAY_LEN(counters)][24];
    for (size_t k = 0; k < SN_ARRAY_LEN(counters); k++) {
        snprintf(values[k], sizeof values[k], "%llu", (unsigned long long)counters[k].v);
        sn_envelope_add_label(&env, counters[k].name, values[k]);
    }
    size_t len = 0;
    uint8_t *buf = sn_envelope_pack(&env, &len);
    sn_envelope_fini_labels(&env);
    sn_proto_msg_t out = {.cmd = SN_PROTO_REPLY,
                          .request_id = m->request_id,
                          .attempt = m->attempt,
                          .envelope = {buf, len}};
    s_send(self, peer->rid, peer->rid_len, &out, NULL);
    self->stats->replies++;
    free(buf);
    free(ptrs);
    free(infos);
}

static void s_malformed(broker_dispatch_t *self, const zmq_msg_t *rid, const char *why)
{
    self->stats->malformed++;
    char key[2 * SN_PROTO_MAX_ROUTE + 1];
    s_hex(zmq_msg_data((zmq_msg_t *)rid), zmq_msg_size((zmq_msg_t *)rid), key);
    s_peer_t *peer = zhash_lookup(self->peers, key);
    if (peer) {
        if (peer->last_why == why)
            return; /* once per peer and kind of error */
        peer->last_why = why;
    } else {
        int64_t now = sn_mono_ms();
        if (now - self->malformed_logged_at < 1000)
            return;
        self->malformed_logged_at = now;
    }
    sn_warn("broker", "malformed message refused why=%s peer=%s", why, key);
}

static void s_hex(const uint8_t *data, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[data[i] >> 4];
        out[2 * i + 1] = digits[data[i] & 15];
    }
    out[2 * len] = '\0';
}

static void s_req_key(char *out, const uint8_t *rid, size_t rid_len, uint64_t id)
{
    s_hex(rid, rid_len, out);
    snprintf(out + 2 * rid_len, S_KEY_MAX - 2 * rid_len, ":%llu", (unsigned long long)id);
}
