/* Service-call client. Outstanding requests are tracked by id so that a late or duplicate
 * answer is dropped and so that a lost broker connection can be answered locally (NAK
 * worker-lost) instead of leaving callers to wait out their deadlines. */
#include "sentinel/sn_rpc.h"

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_envelope.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_link.h"
#include "sentinel/sn_log.h"

typedef struct {
    uint64_t id;
    uint32_t attempt;
} s_pending_t;

struct sn_rpc {
    char *endpoint;
    sn_link_t *link; /* monitored: a TCP disconnect answers outstanding requests */
    uint64_t next_id;
    zhash_t *outstanding; /* "%llu" -> s_pending_t* (owned) */
    zlistx_t *results;    /* sn_rpc_result_t* ready for sn_rpc_recv (owned) */
};

static bool s_read(sn_rpc_t *self);
static sn_rpc_result_t *s_take(sn_rpc_t *self, uint64_t id);
static void s_key(char *out, size_t len, uint64_t id);
static void s_on_lost(void *arg, const char *why);

sn_rpc_t *sn_rpc_new(const char *endpoint, const sn_curve_keys_t *curve)
{
    SN_ASSERT(endpoint);
    sn_rpc_t *self = sn_calloc(1, sizeof *self);
    self->endpoint = sn_strdup(endpoint);
    self->next_id = (sn_random_u64() >> 16) | 1;
    self->outstanding = zhash_new();
    self->results = zlistx_new();
    sn_link_hooks_t hooks = {
        .module = "rpc", .is_monitored = true, .arg = self, .on_lost = s_on_lost};
    self->link = sn_link_new(endpoint, curve, &hooks);
    if (!self->link) {
        sn_rpc_destroy(&self);
        return NULL;
    }
    sn_link_start(self->link);
    return self;
}

void sn_rpc_destroy(sn_rpc_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_rpc_t *self = *self_p;
    sn_link_destroy(&self->link);
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
    sn_link_set_heartbeat(self->link, heartbeat_ms, liveness);
}

void sn_rpc_set_max_frame(sn_rpc_t *self, int64_t max_frame_bytes)
{
    sn_link_set_max_frame(self->link, max_frame_bytes);
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
    if (!sn_link_is_connected(self->link))
        return SN_AGAIN;
    sn_proto_msg_t m = {.cmd = SN_PROTO_REQUEST,
                        .request_id = request_id,
                        .deadline_ms = deadline_ms,
                        .attempt = attempt,
                        .service = {(const uint8_t *)service, strlen(service)},
                        .envelope = {env, len}};
    if (sn_link_send(self->link, &m) != SN_OK)
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
    if (sn_link_is_connected(self->link)) {
        sn_proto_msg_t m = {.cmd = SN_PROTO_CANCEL, .request_id = request_id, .attempt = attempt};
        if (sn_link_send(self->link, &m) != SN_OK)
            sn_debug("rpc", "CANCEL not sent: %s", zmq_strerror(errno));
    }
    return SN_OK;
}

void *sn_rpc_socket(sn_rpc_t *self)
{
    return sn_link_socket(self->link);
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

/* sn_rpc_recv, sn_rpc_send and sn_rpc_call tick before they read, so that broker silence
 * is judged before anything queued hides it (sn_link_tick). */
void sn_rpc_tick(sn_rpc_t *self)
{
    sn_link_tick(self->link);
}

int sn_rpc_timeout_ms(sn_rpc_t *self)
{
    return sn_link_timeout_ms(self->link);
}

size_t sn_rpc_outstanding(sn_rpc_t *self)
{
    return zhash_size(self->outstanding);
}

uint32_t sn_rpc_connects(sn_rpc_t *self)
{
    return sn_link_connects(self->link);
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
        zmq_pollitem_t item = {sn_link_socket(self->link), 0, ZMQ_POLLIN, 0};
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
        zmq_pollitem_t item = {sn_link_socket(self->link), 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, wait) > 0)
            while (s_read(self))
                ;
        sn_rpc_tick(self);
    }
}

/* The broker lost what it held for us (link reset or TCP disconnect): every outstanding
 * request is answered here with NAK worker-lost. */
static void s_on_lost(void *arg, const char *why)
{
    sn_rpc_t *self = arg;
    if (zhash_size(self->outstanding) == 0)
        return;
    sn_warn("rpc", "broker connection lost (%s) endpoint=%s: %zu outstanding answered worker-lost",
            why, self->endpoint, zhash_size(self->outstanding));
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

/* Reads one message from the socket if there is one; true if it read something. */
static bool s_read(sn_rpc_t *self)
{
    sn_proto_msg_t m;
    if (sn_link_recv(self->link, &m) != SN_OK)
        return false;
    if (m.cmd != SN_PROTO_REPLY && m.cmd != SN_PROTO_NAK)
        return true;
    char key[24];
    s_key(key, sizeof key, m.request_id);
    s_pending_t *p = zhash_lookup(self->outstanding, key);
    if (!p || p->attempt != m.attempt) {
        sn_debug("rpc", "answer for unknown request %llu dropped",
                 (unsigned long long)m.request_id);
        return true;
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
