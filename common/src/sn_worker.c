/* Worker side of SNP/1. The worker keeps its service table (name, credit) across
 * connections: every new socket starts with READY listing all of it. Its heartbeats carry
 * the worker flag, so a broker that does not know it (restarted, or declared it dead)
 * answers DISCONNECT and the worker re-registers on a new socket. It also keeps the set
 * of requests it holds on the current socket, so that it enforces its own credit: a
 * REQUEST for a service it does not serve, or beyond its credit, is refused here with a
 * NAK (docs/protocol.md §3.3) and never reaches the application. */
#include "sentinel/sn_worker.h"

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_envelope.h"
#include "sentinel/sn_link.h"
#include "sentinel/sn_log.h"

typedef struct {
    char name[SN_PROTO_MAX_NAME + 1];
    uint32_t credit;
    uint32_t held; /* requests of this service held on the current socket */
} s_service_t;

/* Key of a held request: "<route hex>:<request id>:<attempt>". */
#define S_HELD_KEY_MAX (2 * SN_PROTO_MAX_ROUTE + 48)

struct sn_worker {
    sn_link_t *link; /* its connects count is the ticket generation */
    s_service_t services[SN_PROTO_MAX_SERVICES];
    size_t service_count;
    zhash_t *held;    /* held key -> s_service_t* (borrowed from services) */
    uint64_t refused; /* REQUESTs refused here (unknown service, beyond credit) */
};

static void s_on_connect(void *arg);
static void s_on_lost(void *arg, const char *why);
static uint8_t s_heartbeat_flags(void *arg);
static sn_rc_t s_answer(sn_worker_t *self, const sn_worker_ticket_t *t, sn_proto_msg_t *m);
static void s_held_key(char *out, const uint8_t *route, size_t route_len, uint64_t id,
                       uint32_t attempt);
static s_service_t *s_held_take(sn_worker_t *self, const uint8_t *route, size_t route_len,
                                uint64_t id, uint32_t attempt);
static bool s_admit(sn_worker_t *self, const sn_proto_msg_t *m);

sn_worker_t *sn_worker_new(const char *endpoint, const sn_curve_keys_t *curve)
{
    SN_ASSERT(endpoint);
    sn_worker_t *self = sn_calloc(1, sizeof *self);
    self->held = zhash_new();
    sn_link_hooks_t hooks = {.module = "worker",
                             .arg = self,
                             .on_connect = s_on_connect,
                             .on_lost = s_on_lost,
                             .heartbeat_flags = s_heartbeat_flags};
    self->link = sn_link_new(endpoint, curve, &hooks);
    if (!self->link) {
        zhash_destroy(&self->held);
        free(self);
        return NULL;
    }
    sn_link_start(self->link);
    return self;
}

void sn_worker_destroy(sn_worker_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_worker_t *self = *self_p;
    if (sn_link_is_connected(self->link)) {
        sn_proto_msg_t m = {.cmd = SN_PROTO_DISCONNECT};
        if (sn_link_send(self->link, &m) != SN_OK)
            sn_debug("worker", "DISCONNECT not sent");
    }
    sn_link_destroy(&self->link);
    zhash_destroy(&self->held);
    free(self);
    *self_p = NULL;
}

void sn_worker_set_heartbeat(sn_worker_t *self, int heartbeat_ms, int liveness)
{
    sn_link_set_heartbeat(self->link, heartbeat_ms, liveness);
}

sn_rc_t sn_worker_serve(sn_worker_t *self, const char *service, uint32_t credit)
{
    if (!service || !sn_proto_name_ok(service, strlen(service)) || credit > SN_PROTO_MAX_CREDIT)
        return SN_ERROR;
    s_service_t *s = NULL;
    for (size_t i = 0; i < self->service_count; i++)
        if (strcmp(self->services[i].name, service) == 0)
            s = &self->services[i];
    if (!s) {
        if (self->service_count == SN_PROTO_MAX_SERVICES)
            return SN_ERROR;
        s = &self->services[self->service_count++];
        sn_strlcpy(s->name, service, sizeof s->name);
    }
    s->credit = credit;
    if (sn_link_is_connected(self->link))
        s_on_connect(self);
    return SN_OK;
}

void *sn_worker_socket(sn_worker_t *self)
{
    return sn_link_socket(self->link);
}

sn_rc_t sn_worker_recv(sn_worker_t *self, sn_worker_event_t *ev)
{
    SN_ASSERT(ev);
    memset(ev, 0, sizeof *ev);
    sn_worker_tick(self);
    sn_proto_msg_t m;
    while (sn_link_recv(self->link, &m) == SN_OK) {
        if (m.cmd == SN_PROTO_CANCEL &&
            !s_held_take(self, m.route.data, m.route.len, m.request_id, m.attempt))
            continue; /* already answered (the CANCEL crossed our answer): nothing to stop */
        if (m.cmd == SN_PROTO_REQUEST && !s_admit(self, &m))
            continue; /* refused with a NAK by s_admit */
        if (m.cmd != SN_PROTO_REQUEST && m.cmd != SN_PROTO_CANCEL)
            continue;
        ev->type = m.cmd == SN_PROTO_REQUEST ? SN_WORKER_REQUEST : SN_WORKER_CANCEL;
        memcpy(ev->ticket.route, m.route.data, m.route.len);
        ev->ticket.route_len = m.route.len;
        ev->ticket.request_id = m.request_id;
        ev->ticket.attempt = m.attempt;
        ev->ticket.generation = sn_link_connects(self->link);
        if (m.cmd == SN_PROTO_REQUEST) {
            memcpy(ev->service, m.service.data, m.service.len);
            memcpy(ev->principal, m.principal.data, m.principal.len);
            ev->deadline_ms = m.deadline_ms;
            ev->deadline_at_ms = sn_mono_ms() + m.deadline_ms;
            if (m.envelope.len > 0) {
                ev->body = sn_malloc(m.envelope.len);
                memcpy(ev->body, m.envelope.data, m.envelope.len);
                ev->body_len = m.envelope.len;
            }
        }
        return SN_OK;
    }
    return SN_AGAIN;
}

void sn_worker_event_fini(sn_worker_event_t *ev)
{
    if (ev) {
        free(ev->body);
        ev->body = NULL;
        ev->body_len = 0;
    }
}

uint64_t sn_worker_refused(sn_worker_t *self)
{
    return self->refused;
}

sn_rc_t sn_worker_reply(sn_worker_t *self, const sn_worker_ticket_t *ticket, const void *env,
                        size_t len)
{
    sn_proto_msg_t m = {.cmd = SN_PROTO_REPLY, .envelope = {env, len}};
    return s_answer(self, ticket, &m);
}

sn_rc_t sn_worker_nak(sn_worker_t *self, const sn_worker_ticket_t *ticket, sn_nak_reason_t reason)
{
    if (reason < 1 || reason > SN_NAK_REASON_MAX)
        return SN_ERROR;
    sn_proto_msg_t m = {.cmd = SN_PROTO_NAK, .reason = (uint8_t)reason};
    return s_answer(self, ticket, &m);
}

void sn_worker_tick(sn_worker_t *self)
{
    sn_link_tick(self->link);
}

int sn_worker_timeout_ms(sn_worker_t *self)
{
    return sn_link_timeout_ms(self->link);
}

uint32_t sn_worker_connects(sn_worker_t *self)
{
    return sn_link_connects(self->link);
}

bool sn_worker_is_registered(sn_worker_t *self)
{
    return sn_link_is_connected(self->link) && sn_link_has_heard(self->link);
}

static sn_rc_t s_answer(sn_worker_t *self, const sn_worker_ticket_t *t, sn_proto_msg_t *m)
{
    SN_ASSERT(t && t->route_len > 0 && t->route_len <= SN_PROTO_MAX_ROUTE);
    if (t->generation != sn_link_connects(self->link) || !sn_link_is_connected(self->link))
        return SN_DECLINED;
    m->request_id = t->request_id;
    m->attempt = t->attempt;
    m->route = (sn_proto_bytes_t){t->route, t->route_len};
    if (sn_link_send(self->link, m) != SN_OK)
        return SN_AGAIN;
    /* The unit of credit returns once the answer is on its way. An answer to a request we
     * no longer hold (cancelled) is still sent: the broker drops it as stale (§4). */
    (void)s_held_take(self, t->route, t->route_len, t->request_id, t->attempt);
    return SN_OK;
}

static void s_held_key(char *out, const uint8_t *route, size_t route_len, uint64_t id,
                       uint32_t attempt)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < route_len; i++) {
        out[2 * i] = digits[route[i] >> 4];
        out[2 * i + 1] = digits[route[i] & 15];
    }
    snprintf(out + 2 * route_len, S_HELD_KEY_MAX - 2 * route_len, ":%llu:%u",
             (unsigned long long)id, attempt);
}

/* Forgets a held request and returns its unit of credit; its service, or NULL if it was
 * not held. */
static s_service_t *s_held_take(sn_worker_t *self, const uint8_t *route, size_t route_len,
                                uint64_t id, uint32_t attempt)
{
    char key[S_HELD_KEY_MAX];
    s_held_key(key, route, route_len, id, attempt);
    s_service_t *svc = zhash_lookup(self->held, key);
    if (!svc)
        return NULL;
    zhash_delete(self->held, key);
    if (svc->held > 0)
        svc->held--;
    return svc;
}

/* §3.3: a REQUEST for a service this worker does not serve is answered NAK invalid, one
 * beyond its current credit for the service (e.g. one that crossed a READY lowering it)
 * NAK overloaded. True if the request is admitted (and now held). */
static bool s_admit(sn_worker_t *self, const sn_proto_msg_t *m)
{
    s_service_t *svc = NULL;
    for (size_t i = 0; i < self->service_count && !svc; i++)
        if (strlen(self->services[i].name) == m->service.len &&
            memcmp(self->services[i].name, m->service.data, m->service.len) == 0)
            svc = &self->services[i];
    uint8_t reason = SN_NAK_NONE;
    if (!svc)
        reason = SN_NAK_INVALID;
    else if (svc->held >= svc->credit)
        reason = SN_NAK_OVERLOADED;
    if (reason != SN_NAK_NONE) {
        self->refused++;
        sn_warn("worker", "REQUEST refused id=%llu service=%.*s reason=%s",
                (unsigned long long)m->request_id, (int)m->service.len,
                (const char *)m->service.data, sn_nak_reason_name(reason));
        sn_proto_msg_t nak = {.cmd = SN_PROTO_NAK,
                              .request_id = m->request_id,
                              .attempt = m->attempt,
                              .route = m->route,
                              .reason = reason};
        if (sn_link_send(self->link, &nak) != SN_OK)
            sn_warn("worker", "NAK not sent: %s", zmq_strerror(errno));
        return false;
    }
    char key[S_HELD_KEY_MAX];
    s_held_key(key, m->route.data, m->route.len, m->request_id, m->attempt);
    if (zhash_insert(self->held, key, svc) == 0)
        svc->held++;
    return true;
}

/* Every new socket starts with READY listing the whole service table (nothing when it is
 * empty); sn_worker_serve sends it again at once when a credit changes. */
static void s_on_connect(void *arg)
{
    sn_worker_t *self = arg;
    if (self->service_count == 0)
        return;
    sn_proto_msg_t m = {.cmd = SN_PROTO_READY, .entry_count = self->service_count};
    for (size_t i = 0; i < self->service_count; i++) {
        m.entries[i].service = (sn_proto_bytes_t){(const uint8_t *)self->services[i].name,
                                                  strlen(self->services[i].name)};
        m.entries[i].credit = (uint16_t)self->services[i].credit;
    }
    if (sn_link_send(self->link, &m) != SN_OK)
        sn_warn("worker", "READY not sent: %s", zmq_strerror(errno));
}

/* The link is replacing its socket: what the old one held is gone with it (its broker
 * answered it worker-lost), and tickets of the old socket are refused by generation. */
static void s_on_lost(void *arg, const char *why)
{
    (void)why;
    sn_worker_t *self = arg;
    zhash_destroy(&self->held);
    self->held = zhash_new();
    for (size_t i = 0; i < self->service_count; i++)
        self->services[i].held = 0;
}

/* The worker flag makes a broker that does not know us answer DISCONNECT. */
static uint8_t s_heartbeat_flags(void *arg)
{
    sn_worker_t *self = arg;
    return self->service_count > 0 ? SN_PROTO_HB_WORKER : 0;
}
