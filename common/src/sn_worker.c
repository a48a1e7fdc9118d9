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

#include "sentinel/sn_backoff.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_log.h"

typedef struct {
    char name[SN_PROTO_MAX_NAME + 1];
    uint32_t credit;
    uint32_t held; /* requests of this service held on the current socket */
} s_service_t;

/* Key of a held request: "<route hex>:<request id>:<attempt>". */
#define S_HELD_KEY_MAX (2 * SN_PROTO_MAX_ROUTE + 48)

struct sn_worker {
    char *endpoint;
    bool has_curve;
    char server_key[41], public_key[41], secret_key[41];
    void *sock;
    bool connected;
    bool registered;
    uint32_t generation;
    int heartbeat_ms;
    int liveness;
    int64_t next_heartbeat;
    int64_t broker_deadline;
    int64_t connect_at;
    sn_backoff_t backoff;
    s_service_t services[SN_PROTO_MAX_SERVICES];
    size_t service_count;
    zhash_t *held;    /* held key -> s_service_t* (borrowed from services) */
    uint64_t refused; /* REQUESTs refused here (unknown service, beyond credit) */
};

static sn_rc_t s_open(sn_worker_t *self);
static void s_connect(sn_worker_t *self);
static void s_reset(sn_worker_t *self, const char *why);
static void s_send_ready(sn_worker_t *self);
static void s_heartbeat(sn_worker_t *self);
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
    self->endpoint = sn_strdup(endpoint);
    if (curve) {
        self->has_curve = true;
        sn_strlcpy(self->server_key, curve->server_public ? curve->server_public : "",
                   sizeof self->server_key);
        sn_strlcpy(self->public_key, curve->public_key ? curve->public_key : "",
                   sizeof self->public_key);
        sn_strlcpy(self->secret_key, curve->secret_key ? curve->secret_key : "",
                   sizeof self->secret_key);
    }
    self->heartbeat_ms = 1000;
    self->liveness = 3;
    sn_backoff_init(&self->backoff, 250, 10000);
    self->held = zhash_new();
    if (s_open(self) != SN_OK) {
        zhash_destroy(&self->held);
        free(self->endpoint);
        free(self);
        return NULL;
    }
    s_connect(self);
    return self;
}

void sn_worker_destroy(sn_worker_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_worker_t *self = *self_p;
    if (self->sock) {
        if (self->connected) {
            sn_proto_msg_t m = {.cmd = SN_PROTO_DISCONNECT};
            if (sn_proto_send(self->sock, NULL, 0, &m, SN_PROTO_UP) != SN_OK)
                sn_debug("worker", "DISCONNECT not sent");
        }
        zmq_close(self->sock);
    }
    zhash_destroy(&self->held);
    free(self->endpoint);
    free(self);
    *self_p = NULL;
}

void sn_worker_set_heartbeat(sn_worker_t *self, int heartbeat_ms, int liveness)
{
    SN_ASSERT(heartbeat_ms > 0 && liveness > 0);
    self->heartbeat_ms = heartbeat_ms;
    self->liveness = liveness;
    self->broker_deadline = sn_mono_ms() + (int64_t)heartbeat_ms * liveness;
    self->next_heartbeat = 0;
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
    if (self->connected)
        s_send_ready(self);
    return SN_OK;
}

void *sn_worker_socket(sn_worker_t *self)
{
    return self->sock;
}

sn_rc_t sn_worker_recv(sn_worker_t *self, sn_worker_event_t *ev)
{
    SN_ASSERT(ev);
    memset(ev, 0, sizeof *ev);
    sn_worker_tick(self);
    while (self->connected) {
        zmq_msg_t frames[SN_PROTO_MAX_FRAMES];
        zmq_msg_init(&frames[0]);
        if (zmq_msg_recv(&frames[0], self->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&frames[0]);
            return SN_AGAIN;
        }
        size_t n = 1;
        bool overflow = false;
        while (zmq_msg_more(&frames[n - 1]) && !overflow) {
            if (n == SN_PROTO_MAX_FRAMES) {
                overflow = true;
                break;
            }
            zmq_msg_init(&frames[n]);
            if (zmq_msg_recv(&frames[n], self->sock, 0) < 0) {
                zmq_msg_close(&frames[n]);
                break;
            }
            n++;
        }
        if (overflow) {
            int more = 1;
            size_t ml = sizeof more;
            while (zmq_getsockopt(self->sock, ZMQ_RCVMORE, &more, &ml) == 0 && more) {
                zmq_msg_t junk;
                zmq_msg_init(&junk);
                int rc = zmq_msg_recv(&junk, self->sock, 0);
                zmq_msg_close(&junk);
                if (rc < 0)
                    break;
            }
        }
        sn_proto_bytes_t views[SN_PROTO_MAX_FRAMES];
        for (size_t i = 0; i < n; i++)
            views[i] = (sn_proto_bytes_t){zmq_msg_data(&frames[i]), zmq_msg_size(&frames[i])};
        sn_proto_msg_t m;
        const char *why = NULL;
        sn_rc_t out = SN_AGAIN;
        bool reset = false;
        if (overflow || sn_proto_decode(views, n, SN_PROTO_DOWN, &m, &why) != SN_OK) {
            sn_warn("worker", "malformed message from broker refused why=%s",
                    overflow ? "too-many-frames" : why);
        } else {
            self->broker_deadline = sn_mono_ms() + (int64_t)self->heartbeat_ms * self->liveness;
            self->registered = true;
            sn_backoff_reset(&self->backoff);
            if (m.cmd == SN_PROTO_CANCEL &&
                !s_held_take(self, m.route.data, m.route.len, m.request_id, m.attempt)) {
                /* Already answered (the CANCEL crossed our answer): nothing to stop. */
            } else if (m.cmd == SN_PROTO_REQUEST && !s_admit(self, &m)) {
                /* Refused with a NAK by s_admit. */
            } else if (m.cmd == SN_PROTO_REQUEST || m.cmd == SN_PROTO_CANCEL) {
                ev->type = m.cmd == SN_PROTO_REQUEST ? SN_WORKER_REQUEST : SN_WORKER_CANCEL;
                memcpy(ev->ticket.route, m.route.data, m.route.len);
                ev->ticket.route_len = m.route.len;
                ev->ticket.request_id = m.request_id;
                ev->ticket.attempt = m.attempt;
                ev->ticket.generation = self->generation;
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
                out = SN_OK;
            } else if (m.cmd == SN_PROTO_DISCONNECT) {
                reset = true;
            }
        }
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&frames[i]);
        if (reset) {
            s_reset(self, "DISCONNECT from broker");
            return SN_AGAIN;
        }
        if (out == SN_OK)
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
    int64_t now = sn_mono_ms();
    if (!self->connected) {
        if (now >= self->connect_at)
            s_connect(self);
        return;
    }
    if (now >= self->broker_deadline) {
        s_reset(self, "broker silent");
        return;
    }
    if (now >= self->next_heartbeat)
        s_heartbeat(self);
}

int sn_worker_timeout_ms(sn_worker_t *self)
{
    int64_t now = sn_mono_ms();
    int64_t at = self->connected ? self->next_heartbeat : self->connect_at;
    if (self->connected && self->broker_deadline < at)
        at = self->broker_deadline;
    int64_t d = at - now;
    return d < 0 ? 0 : (int)d;
}

uint32_t sn_worker_connects(sn_worker_t *self)
{
    return self->generation;
}

bool sn_worker_is_registered(sn_worker_t *self)
{
    return self->connected && self->registered;
}

static sn_rc_t s_answer(sn_worker_t *self, const sn_worker_ticket_t *t, sn_proto_msg_t *m)
{
    SN_ASSERT(t && t->route_len > 0 && t->route_len <= SN_PROTO_MAX_ROUTE);
    if (t->generation != self->generation || !self->connected)
        return SN_DECLINED;
    m->request_id = t->request_id;
    m->attempt = t->attempt;
    m->route = (sn_proto_bytes_t){t->route, t->route_len};
    if (sn_proto_send(self->sock, NULL, 0, m, SN_PROTO_UP) != SN_OK)
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
        if (sn_proto_send(self->sock, NULL, 0, &nak, SN_PROTO_UP) != SN_OK)
            sn_warn("worker", "NAK not sent: %s", zmq_strerror(errno));
        return false;
    }
    char key[S_HELD_KEY_MAX];
    s_held_key(key, m->route.data, m->route.len, m->request_id, m->attempt);
    if (zhash_insert(self->held, key, svc) == 0)
        svc->held++;
    return true;
}

static sn_rc_t s_open(sn_worker_t *self)
{
    self->sock = zmq_socket(zsys_init(), ZMQ_DEALER);
    SN_ASSERT(self->sock);
    sn_curve_keys_t keys = {self->server_key, self->public_key, self->secret_key};
    if (sn_proto_socket_setup(self->sock, SN_MAX_FRAME_BYTES, self->has_curve ? &keys : NULL) !=
        SN_OK) {
        zmq_close(self->sock);
        self->sock = NULL;
        return SN_ERROR;
    }
    self->generation++;
    self->connected = false;
    self->registered = false;
    /* What the old socket held is gone with it: its broker answered it worker-lost. */
    zhash_destroy(&self->held);
    self->held = zhash_new();
    for (size_t i = 0; i < self->service_count; i++)
        self->services[i].held = 0;
    return SN_OK;
}

static void s_connect(sn_worker_t *self)
{
    if (zmq_connect(self->sock, self->endpoint) != 0) {
        sn_error("worker", "cannot connect to %s: %s", self->endpoint, zmq_strerror(errno));
        self->connect_at = sn_mono_ms() + sn_backoff_next(&self->backoff);
        return;
    }
    self->connected = true;
    self->broker_deadline = sn_mono_ms() + (int64_t)self->heartbeat_ms * self->liveness;
    s_send_ready(self);
    s_heartbeat(self);
}

static void s_reset(sn_worker_t *self, const char *why)
{
    int64_t delay = sn_backoff_next(&self->backoff);
    sn_warn("worker", "leaving broker (%s), new socket in %lld ms endpoint=%s", why,
            (long long)delay, self->endpoint);
    zmq_close(self->sock);
    self->sock = NULL;
    sn_rc_t rc = s_open(self);
    SN_ASSERT(rc == SN_OK);
    self->connect_at = sn_mono_ms() + delay;
}

static void s_send_ready(sn_worker_t *self)
{
    if (self->service_count == 0)
        return;
    sn_proto_msg_t m = {.cmd = SN_PROTO_READY, .entry_count = self->service_count};
    for (size_t i = 0; i < self->service_count; i++) {
        m.entries[i].service = (sn_proto_bytes_t){(const uint8_t *)self->services[i].name,
                                                  strlen(self->services[i].name)};
        m.entries[i].credit = (uint16_t)self->services[i].credit;
    }
    if (sn_proto_send(self->sock, NULL, 0, &m, SN_PROTO_UP) != SN_OK)
        sn_warn("worker", "READY not sent: %s", zmq_strerror(errno));
}

static void s_heartbeat(sn_worker_t *self)
{
    sn_proto_msg_t m = {.cmd = SN_PROTO_HEARTBEAT,
                        .flags = self->service_count > 0 ? SN_PROTO_HB_WORKER : 0};
    if (sn_proto_send(self->sock, NULL, 0, &m, SN_PROTO_UP) != SN_OK)
        sn_debug("worker", "heartbeat not sent: %s", zmq_strerror(errno));
    self->next_heartbeat = sn_mono_ms() + self->heartbeat_ms;
}
