/* Service-call client. Outstanding requests are tracked by id so that a late or duplicate
 * answer is dropped and so that a lost broker connection can be answered locally (NAK
 * worker-lost) instead of leaving callers to wait out their deadlines. */
#include "sentinel/sn_rpc.h"

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_backoff.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_log.h"

typedef struct {
    uint64_t id;
    uint32_t attempt;
} s_pending_t;

struct sn_rpc {
    char *endpoint;
    bool has_curve;
    char server_key[41], public_key[41], secret_key[41];
    void *sock;
    void *monitor; /* PAIR reading the DEALER's ZMQ_EVENT_DISCONNECTED */
    bool connected;
    int heartbeat_ms;
    int liveness;
    int64_t max_frame_bytes;
    int64_t next_heartbeat;
    int64_t broker_deadline; /* silence past this = broker lost */
    int64_t connect_at;      /* when not connected: when to connect */
    sn_backoff_t backoff;
    uint64_t next_id;
    zhash_t *outstanding; /* "%llu" -> s_pending_t* (owned) */
    zlistx_t *results;    /* sn_rpc_result_t* ready for sn_rpc_recv (owned) */
    uint32_t connects;
};

static sn_rc_t s_open(sn_rpc_t *self);
static void s_connect(sn_rpc_t *self);
static void s_reset(sn_rpc_t *self, const char *why);
static void s_heartbeat(sn_rpc_t *self);
static bool s_read(sn_rpc_t *self);
static sn_rpc_result_t *s_take(sn_rpc_t *self, uint64_t id);
static void s_key(char *out, size_t len, uint64_t id);
static void s_monitor_close(sn_rpc_t *self);
static void s_fail_outstanding(sn_rpc_t *self);
static void s_check_monitor(sn_rpc_t *self);

sn_rpc_t *sn_rpc_new(const char *endpoint, const sn_curve_keys_t *curve)
{
    SN_ASSERT(endpoint);
    sn_rpc_t *self = sn_calloc(1, sizeof *self);
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
    self->max_frame_bytes = SN_MAX_FRAME_BYTES;
    sn_backoff_init(&self->backoff, 250, 10000);
    self->next_id = (sn_random_u64() >> 16) | 1;
    self->outstanding = zhash_new();
    self->results = zlistx_new();
    if (s_open(self) != SN_OK) {
        sn_rpc_destroy(&self);
        return NULL;
    }
    s_connect(self);
    return self;
}

void sn_rpc_destroy(sn_rpc_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_rpc_t *self = *self_p;
    s_monitor_close(self);
    if (self->sock)
        zmq_close(self->sock);
    zhash_destroy(&self->outstanding);
    for (sn_rpc_result_t *r = zlistx_first(self->results); r; r = zlistx_next(self->results)) {
        sn_rpc_result_fini(r);
        free(r);
    }
    zlistx_destroy(&self->results);
    free(self->endpoint);
    free(self);
    *self_p = NULL;
}

void sn_rpc_set_heartbeat(sn_rpc_t *self, int heartbeat_ms, int liveness)
{
    SN_ASSERT(heartbeat_ms > 0 && liveness > 0);
    self->heartbeat_ms = heartbeat_ms;
    self->liveness = liveness;
    self->broker_deadline = sn_mono_ms() + (int64_t)heartbeat_ms * liveness;
    self->next_heartbeat = 0;
}

void sn_rpc_set_max_frame(sn_rpc_t *self, int64_t max_frame_bytes)
{
    self->max_frame_bytes = max_frame_bytes;
}

sn_rc_t sn_rpc_send(sn_rpc_t *self, const char *service, const void *env, size_t len,
                    uint32_t deadline_ms, uint32_t attempt, uint64_t *request_id)
{
    uint64_t id = self->next_id++;
    if (id == 0)
        id = self->next_id++;
    sn_rc_t rc = sn_rpc_send_id(self, id, service, env, len, deadline_ms, attempt);
    if (rc == SN_OK && request_id)
        *request_id = id;
    return rc;
}

sn_rc_t sn_rpc_send_id(sn_rpc_t *self, uint64_t request_id, const char *service, const void *env,
                       size_t len, uint32_t deadline_ms, uint32_t attempt)
{
    if (request_id == 0 || attempt == 0 || !service ||
        !sn_proto_name_ok(service, strlen(service)) || deadline_ms > SN_PROTO_MAX_DEADLINE_MS ||
        (len > 0 && !env))
        return SN_ERROR;
    char key[24];
    s_key(key, sizeof key, request_id);
    if (zhash_lookup(self->outstanding, key))
        return SN_ERROR;
    sn_rpc_tick(self);
    if (!self->connected)
        return SN_AGAIN;
    sn_proto_msg_t m = {.cmd = SN_PROTO_REQUEST,
                        .request_id = request_id,
                        .deadline_ms = deadline_ms,
                        .attempt = attempt,
                        .service = {(const uint8_t *)service, strlen(service)},
                        .envelope = {env, len}};
    sn_rc_t rc = sn_proto_send(self->sock, NULL, 0, &m, SN_PROTO_UP);
    if (rc != SN_OK)
        return SN_AGAIN;
    s_pending_t *p = sn_malloc(sizeof *p);
    p->id = request_id;
    p->attempt = attempt;
    zhash_insert(self->outstanding, key, p);
    zhash_freefn(self->outstanding, key, free);
    return SN_OK;
}

sn_rc_t sn_rpc_cancel(sn_rpc_t *self, uint64_t request_id, uint32_t attempt)
{
    char key[24];
    s_key(key, sizeof key, request_id);
    s_pending_t *p = zhash_lookup(self->outstanding, key);
    if (!p || p->attempt != attempt)
        return SN_DECLINED;
    zhash_delete(self->outstanding, key);
    sn_rpc_result_t *r = s_take(self, request_id);
    if (r) {
        sn_rpc_result_fini(r);
        free(r);
    }
    if (self->connected) {
        sn_proto_msg_t m = {.cmd = SN_PROTO_CANCEL, .request_id = request_id, .attempt = attempt};
        if (sn_proto_send(self->sock, NULL, 0, &m, SN_PROTO_UP) != SN_OK)
            sn_debug("rpc", "CANCEL not sent: %s", zmq_strerror(errno));
    }
    return SN_OK;
}

void *sn_rpc_socket(sn_rpc_t *self)
{
    return self->sock;
}

sn_rc_t sn_rpc_recv(sn_rpc_t *self, sn_rpc_result_t *out)
{
    SN_ASSERT(out);
    sn_rpc_tick(self);
    while (zlistx_size(self->results) == 0 && s_read(self))
        ;
    sn_rpc_result_t *r = zlistx_first(self->results);
    if (!r)
        return SN_AGAIN;
    zlistx_delete(self->results, zlistx_cursor(self->results));
    *out = *r;
    free(r);
    return SN_OK;
}

void sn_rpc_result_fini(sn_rpc_result_t *result)
{
    if (result) {
        free(result->body);
        result->body = NULL;
        result->body_len = 0;
    }
}

void sn_rpc_tick(sn_rpc_t *self)
{
    int64_t now = sn_mono_ms();
    if (!self->connected) {
        if (now >= self->connect_at)
            s_connect(self);
        return;
    }
    s_check_monitor(self);
    /* Checked before anything queued is read (sn_rpc_recv, sn_rpc_send and sn_rpc_call
     * tick first): after this thread was stopped for the silence window, heartbeats the
     * broker sent before it declared us dead must not hide that it did (§7). */
    if (now >= self->broker_deadline) {
        s_reset(self, "broker silent");
        return;
    }
    if (now >= self->next_heartbeat)
        s_heartbeat(self);
}

int sn_rpc_timeout_ms(sn_rpc_t *self)
{
    int64_t now = sn_mono_ms();
    int64_t at = self->connected ? self->next_heartbeat : self->connect_at;
    if (self->connected && self->broker_deadline < at)
        at = self->broker_deadline;
    int64_t d = at - now;
    return d < 0 ? 0 : (int)d;
}

size_t sn_rpc_outstanding(sn_rpc_t *self)
{
    return zhash_size(self->outstanding);
}

uint32_t sn_rpc_connects(sn_rpc_t *self)
{
    return self->connects;
}

sn_rc_t sn_rpc_call(sn_rpc_t *self, const char *service, const void *env, size_t len,
                    int timeout_ms, uint8_t **reply, size_t *reply_len, sn_nak_reason_t *nak_reason)
{
    if (!reply || !reply_len || timeout_ms <= 0)
        return SN_ERROR;
    *reply = NULL;
    *reply_len = 0;
    if (nak_reason)
        *nak_reason = SN_NAK_NONE;
    int64_t deadline = sn_mono_ms() + timeout_ms;
    uint64_t id = 0;
    sn_rc_t rc;
    /* The socket may be between connections: retry sending until the deadline. */
    while ((rc = sn_rpc_send(self, service, env, len, (uint32_t)timeout_ms, 1, &id)) == SN_AGAIN) {
        int64_t left = deadline - sn_mono_ms();
        if (left <= 0)
            return SN_AGAIN;
        int wait = sn_rpc_timeout_ms(self);
        zmq_pollitem_t item = {self->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, wait < left ? (wait < 10 ? 10 : wait) : left) > 0)
            while (s_read(self))
                ;
    }
    if (rc != SN_OK)
        return rc;
    for (;;) {
        sn_rpc_result_t *r = s_take(self, id);
        if (r) {
            sn_rc_t out;
            if (r->is_nak) {
                if (nak_reason)
                    *nak_reason = r->reason;
                out = SN_DECLINED;
                sn_rpc_result_fini(r);
            } else {
                *reply = r->body;
                *reply_len = r->body_len;
                out = SN_OK;
            }
            free(r);
            return out;
        }
        int64_t left = deadline - sn_mono_ms();
        if (left <= 0) {
            if (sn_rpc_cancel(self, id, 1) != SN_OK)
                sn_debug("rpc", "request %llu already gone", (unsigned long long)id);
            return SN_AGAIN;
        }
        int wait = sn_rpc_timeout_ms(self);
        if (wait > left)
            wait = (int)left;
        zmq_pollitem_t item = {self->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, wait) > 0)
            while (s_read(self))
                ;
        sn_rpc_tick(self);
    }
}

static sn_rc_t s_open(sn_rpc_t *self)
{
    self->sock = zmq_socket(zsys_init(), ZMQ_DEALER);
    SN_ASSERT(self->sock);
    sn_curve_keys_t keys = {self->server_key, self->public_key, self->secret_key};
    if (sn_proto_socket_setup(self->sock, self->max_frame_bytes, self->has_curve ? &keys : NULL) !=
        SN_OK) {
        zmq_close(self->sock);
        self->sock = NULL;
        return SN_ERROR;
    }
    /* A broker that dies and restarts within the silence window forgets our requests:
     * the TCP disconnect tells us at once (the DEALER itself reconnects). */
    char mon[64];
    snprintf(mon, sizeof mon, "inproc://sn-rpc-mon-%p-%u", (void *)self, self->connects);
    if (zmq_socket_monitor(self->sock, mon, ZMQ_EVENT_DISCONNECTED) == 0) {
        self->monitor = zmq_socket(zsys_init(), ZMQ_PAIR);
        if (self->monitor && zmq_connect(self->monitor, mon) != 0) {
            zmq_close(self->monitor);
            self->monitor = NULL;
        }
    }
    self->connects++;
    self->connected = false;
    return SN_OK;
}

static void s_monitor_close(sn_rpc_t *self)
{
    if (self->sock)
        zmq_socket_monitor(self->sock, NULL, 0);
    if (self->monitor)
        zmq_close(self->monitor);
    self->monitor = NULL;
}

/* Answers every outstanding request locally with NAK worker-lost. */
static void s_fail_outstanding(sn_rpc_t *self)
{
    for (s_pending_t *p = zhash_first(self->outstanding); p; p = zhash_next(self->outstanding)) {
        sn_rpc_result_t *r = sn_calloc(1, sizeof *r);
        r->request_id = p->id;
        r->attempt = p->attempt;
        r->is_nak = true;
        r->reason = SN_NAK_WORKER_LOST;
        zlistx_add_end(self->results, r);
    }
    zhash_destroy(&self->outstanding);
    self->outstanding = zhash_new();
}

/* A disconnect from the broker loses whatever it held for us. */
static void s_check_monitor(sn_rpc_t *self)
{
    if (!self->monitor)
        return;
    bool is_lost = false;
    for (;;) {
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, self->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&frame);
            break;
        }
        if (zmq_msg_size(&frame) == 6) {
            uint16_t event;
            memcpy(&event, zmq_msg_data(&frame), sizeof event);
            is_lost = is_lost || event == ZMQ_EVENT_DISCONNECTED;
        }
        zmq_msg_close(&frame);
    }
    if (is_lost && zhash_size(self->outstanding) > 0) {
        sn_warn("rpc", "broker connection closed endpoint=%s: %zu outstanding answered worker-lost",
                self->endpoint, zhash_size(self->outstanding));
        s_fail_outstanding(self);
    }
}

static void s_connect(sn_rpc_t *self)
{
    if (zmq_connect(self->sock, self->endpoint) != 0) {
        sn_error("rpc", "cannot connect to %s: %s", self->endpoint, zmq_strerror(errno));
        self->connect_at = sn_mono_ms() + sn_backoff_next(&self->backoff);
        return;
    }
    self->connected = true;
    self->broker_deadline = sn_mono_ms() + (int64_t)self->heartbeat_ms * self->liveness;
    s_heartbeat(self); /* so that the broker knows us and heartbeats back */
}

/* Replaces the socket: close, answer outstanding requests locally, new socket, connect
 * after a jittered backoff. */
static void s_reset(sn_rpc_t *self, const char *why)
{
    sn_warn("rpc", "connection to broker lost (%s), reconnecting endpoint=%s outstanding=%zu", why,
            self->endpoint, zhash_size(self->outstanding));
    s_monitor_close(self);
    zmq_close(self->sock);
    self->sock = NULL;
    s_fail_outstanding(self);
    /* s_open cannot fail here: the same options worked for the first socket. */
    sn_rc_t rc = s_open(self);
    SN_ASSERT(rc == SN_OK);
    self->connect_at = sn_mono_ms() + sn_backoff_next(&self->backoff);
}

static void s_heartbeat(sn_rpc_t *self)
{
    sn_proto_msg_t m = {.cmd = SN_PROTO_HEARTBEAT, .flags = 0};
    if (sn_proto_send(self->sock, NULL, 0, &m, SN_PROTO_UP) != SN_OK)
        sn_debug("rpc", "heartbeat not sent: %s", zmq_strerror(errno));
    self->next_heartbeat = sn_mono_ms() + self->heartbeat_ms;
}

/* Reads one message from the socket if there is one; true if it read something. */
static bool s_read(sn_rpc_t *self)
{
    if (!self->connected)
        return false;
    zmq_msg_t frames[SN_PROTO_MAX_FRAMES];
    size_t n = 0;
    zmq_msg_init(&frames[0]);
    if (zmq_msg_recv(&frames[0], self->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&frames[0]);
        return false;
    }
    n = 1;
    bool overflow = false;
    while (zmq_msg_more(&frames[n - 1])) {
        if (n == SN_PROTO_MAX_FRAMES) {
            zmq_msg_t junk;
            zmq_msg_init(&junk);
            int rc = zmq_msg_recv(&junk, self->sock, 0);
            bool more = rc >= 0 && zmq_msg_more(&junk);
            zmq_msg_close(&junk);
            overflow = true;
            if (!more)
                break;
            continue;
        }
        zmq_msg_init(&frames[n]);
        if (zmq_msg_recv(&frames[n], self->sock, 0) < 0) {
            zmq_msg_close(&frames[n]);
            break;
        }
        n++;
    }
    sn_proto_bytes_t views[SN_PROTO_MAX_FRAMES];
    for (size_t i = 0; i < n; i++)
        views[i] = (sn_proto_bytes_t){zmq_msg_data(&frames[i]), zmq_msg_size(&frames[i])};
    sn_proto_msg_t m;
    const char *why = NULL;
    if (overflow || sn_proto_decode(views, n, SN_PROTO_DOWN, &m, &why) != SN_OK) {
        sn_warn("rpc", "malformed message from broker refused why=%s",
                overflow ? "too-many-frames" : why);
        goto out;
    }
    self->broker_deadline = sn_mono_ms() + (int64_t)self->heartbeat_ms * self->liveness;
    sn_backoff_reset(&self->backoff);
    if (m.cmd == SN_PROTO_REPLY || m.cmd == SN_PROTO_NAK) {
        char key[24];
        s_key(key, sizeof key, m.request_id);
        s_pending_t *p = zhash_lookup(self->outstanding, key);
        if (!p || p->attempt != m.attempt) {
            sn_debug("rpc", "answer for unknown request %llu dropped",
                     (unsigned long long)m.request_id);
            goto out;
        }
        zhash_delete(self->outstanding, key);
        sn_rpc_result_t *r = sn_calloc(1, sizeof *r);
        r->request_id = m.request_id;
        r->attempt = m.attempt;
        if (m.cmd == SN_PROTO_NAK) {
            r->is_nak = true;
            r->reason = m.reason;
        } else if (m.envelope.len > 0) {
            r->body = sn_malloc(m.envelope.len);
            memcpy(r->body, m.envelope.data, m.envelope.len);
            r->body_len = m.envelope.len;
        }
        zlistx_add_end(self->results, r);
    } else if (m.cmd == SN_PROTO_DISCONNECT) {
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&frames[i]);
        s_reset(self, "DISCONNECT from broker");
        return false;
    }
out:
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&frames[i]);
    return true;
}

static sn_rpc_result_t *s_take(sn_rpc_t *self, uint64_t id)
{
    for (sn_rpc_result_t *r = zlistx_first(self->results); r; r = zlistx_next(self->results))
        if (r->request_id == id) {
            zlistx_delete(self->results, zlistx_cursor(self->results));
            return r;
        }
    return NULL;
}

static void s_key(char *out, size_t len, uint64_t id)
{
    snprintf(out, len, "%llu", (unsigned long long)id);
}
