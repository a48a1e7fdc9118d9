/* Shared by the broker integration tests (header-only, static functions): a test worker
 * that runs an sn_worker on its own thread (echo, hold or frozen), and small helpers. */
#ifndef TEST_BROKER_HARNESS_H
#define TEST_BROKER_HARNESS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <czmq.h>
#include <zmq.h>

#include "sentinel/sn_envelope.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_rpc.h"
#include "sentinel/sn_worker.h"
#include "sn_test.h"

#define TW_MAX_HELD 64

/* A worker thread. Echo mode replies "<name>:<body>" at once; hold mode keeps tickets until
 * release is set; freeze stops it cold (no heartbeats, no reads), like a hung process. */
typedef struct {
    char name[32];
    char endpoint[256];
    char service[64];
    uint32_t credit;
    int heartbeat_ms;
    const sn_curve_keys_t *curve;
    atomic_int stop;
    atomic_int freeze;
    atomic_int hold;
    atomic_int release;
    atomic_int served;
    atomic_int cancels;
    atomic_int connects;
    atomic_int registered;
    char last_principal[256];
    pthread_t thread;
    sn_worker_ticket_t held[TW_MAX_HELD];
    int held_count;
} tw_t;

static SN_UNUSED void *tw_main(void *arg)
{
    tw_t *tw = arg;
    sn_worker_t *w = sn_worker_new(tw->endpoint, tw->curve);
    SN_ASSERT(w);
    sn_worker_set_heartbeat(w, tw->heartbeat_ms, 3);
    sn_rc_t rc = sn_worker_serve(w, tw->service, tw->credit);
    SN_ASSERT(rc == SN_OK);
    while (!atomic_load(&tw->stop)) {
        if (atomic_load(&tw->freeze)) {
            zmq_poll(NULL, 0, 10);
            continue;
        }
        int timeout = sn_worker_timeout_ms(w);
        zmq_pollitem_t item = {sn_worker_socket(w), 0, ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, timeout < 10 ? timeout : 10);
        sn_worker_event_t ev;
        while (sn_worker_recv(w, &ev) == SN_OK) {
            if (ev.type == SN_WORKER_CANCEL) {
                atomic_fetch_add(&tw->cancels, 1);
                continue;
            }
            sn_strlcpy(tw->last_principal, ev.principal, sizeof tw->last_principal);
            if (atomic_load(&tw->hold) && tw->held_count < TW_MAX_HELD) {
                tw->held[tw->held_count++] = ev.ticket;
            } else {
                size_t len = strlen(tw->name) + 1 + ev.body_len;
                char *out = sn_malloc(len + 1);
                memcpy(out, tw->name, strlen(tw->name));
                out[strlen(tw->name)] = ':';
                if (ev.body_len)
                    memcpy(out + strlen(tw->name) + 1, ev.body, ev.body_len);
                if (sn_worker_reply(w, &ev.ticket, out, len) != SN_OK)
                    sn_warn("test", "reply not sent");
                free(out);
            }
            atomic_fetch_add(&tw->served, 1);
            sn_worker_event_fini(&ev);
        }
        if (atomic_load(&tw->release)) {
            for (int i = 0; i < tw->held_count; i++) {
                char out[64];
                int n = snprintf(out, sizeof out, "%s:held%u", tw->name, tw->held[i].attempt);
                if (sn_worker_reply(w, &tw->held[i], out, (size_t)n) != SN_OK)
                    sn_warn("test", "held reply not sent");
            }
            tw->held_count = 0;
            atomic_store(&tw->release, 0);
        }
        atomic_store(&tw->connects, (int)sn_worker_connects(w));
        atomic_store(&tw->registered, sn_worker_is_registered(w) ? 1 : 0);
    }
    sn_worker_destroy(&w);
    return NULL;
}

static SN_UNUSED void tw_start_curve(tw_t *tw, const char *name, const char *endpoint,
                                     const char *service, uint32_t credit, int heartbeat_ms,
                                     bool hold, const sn_curve_keys_t *curve)
{
    memset(tw, 0, sizeof *tw);
    tw->curve = curve;
    sn_strlcpy(tw->name, name, sizeof tw->name);
    sn_strlcpy(tw->endpoint, endpoint, sizeof tw->endpoint);
    sn_strlcpy(tw->service, service, sizeof tw->service);
    tw->credit = credit;
    tw->heartbeat_ms = heartbeat_ms;
    atomic_store(&tw->hold, hold ? 1 : 0);
    SN_ASSERT(pthread_create(&tw->thread, NULL, tw_main, tw) == 0);
}

static SN_UNUSED void tw_start(tw_t *tw, const char *name, const char *endpoint,
                               const char *service, uint32_t credit, int heartbeat_ms, bool hold)
{
    tw_start_curve(tw, name, endpoint, service, credit, heartbeat_ms, hold, NULL);
}

/* A raw socket of @type connected to @endpoint with the common options and @curve keys. */
static SN_UNUSED void *raw_connect(int type, const char *endpoint, const sn_curve_keys_t *curve)
{
    void *s = zmq_socket(zsys_init(), type);
    SN_ASSERT(s);
    sn_rc_t rc = sn_proto_socket_setup(s, 0, curve);
    SN_ASSERT(rc == SN_OK);
    SN_ASSERT(zmq_connect(s, endpoint) == 0);
    return s;
}

/* Receives a [topic][body] event within @timeout_ms into @topic (NUL-terminated); false on
 * timeout. */
static SN_UNUSED bool sub_recv(void *sub, char *topic, size_t topic_len, int timeout_ms)
{
    zmq_pollitem_t item = {sub, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout_ms) <= 0)
        return false;
    int n = zmq_recv(sub, topic, topic_len - 1, 0);
    if (n < 0)
        return false;
    topic[n < (int)topic_len - 1 ? n : (int)topic_len - 1] = '\0';
    int more = 0;
    size_t ml = sizeof more;
    zmq_getsockopt(sub, ZMQ_RCVMORE, &more, &ml);
    char body[256];
    while (more) {
        if (zmq_recv(sub, body, sizeof body, 0) < 0)
            break;
        zmq_getsockopt(sub, ZMQ_RCVMORE, &more, &ml);
    }
    return true;
}

/* Publishes [topic][body] on @pub. */
static SN_UNUSED void pub_send(void *pub, const char *topic, const char *body)
{
    zmq_send(pub, topic, strlen(topic), ZMQ_SNDMORE);
    zmq_send(pub, body, strlen(body), 0);
}

/* Publishes @topic repeatedly until @sub receives an event with that topic (slow joiner);
 * false after 5 s. Other topics received meanwhile are counted into *others. */
static SN_UNUSED bool pub_until_seen(void *pub, void *sub, const char *topic, int *others)
{
    int64_t deadline = sn_mono_ms() + 5000;
    while (sn_mono_ms() < deadline) {
        pub_send(pub, topic, "body");
        char got[256];
        while (sub_recv(sub, got, sizeof got, 20)) {
            if (strcmp(got, topic) == 0)
                return true;
            if (others)
                (*others)++;
        }
    }
    return false;
}

static SN_UNUSED void tw_stop(tw_t *tw)
{
    atomic_store(&tw->stop, 1);
    pthread_join(tw->thread, NULL);
}

typedef struct {
    atomic_int *v;
    int want;
} tw_cond_t;

static SN_UNUSED bool tw_at_least(void *arg)
{
    tw_cond_t *c = arg;
    return atomic_load(c->v) >= c->want;
}

/* Waits until *v >= want (5 s). */
static SN_UNUSED bool tw_wait(atomic_int *v, int want)
{
    tw_cond_t c = {v, want};
    return sn_test_wait_for(tw_at_least, &c, 5000);
}

/* Waits for the next result on @rpc up to @timeout_ms; false on timeout. */
static SN_UNUSED bool rpc_wait_result(sn_rpc_t *rpc, sn_rpc_result_t *out, int timeout_ms)
{
    int64_t deadline = sn_mono_ms() + timeout_ms;
    for (;;) {
        if (sn_rpc_recv(rpc, out) == SN_OK)
            return true;
        int64_t left = deadline - sn_mono_ms();
        if (left <= 0)
            return false;
        int t = sn_rpc_timeout_ms(rpc);
        zmq_pollitem_t item = {sn_rpc_socket(rpc), 0, ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, t < left ? (t < 5 ? 5 : t) : (int)left);
    }
}

/* Calls @service with a string body; returns the reply as a string (caller frees) or NULL,
 * with *nak set on a NAK. */
static SN_UNUSED char *rpc_call_str(sn_rpc_t *rpc, const char *service, const char *body,
                                    int timeout_ms, sn_nak_reason_t *nak)
{
    uint8_t *reply = NULL;
    size_t len = 0;
    sn_nak_reason_t reason = SN_NAK_NONE;
    sn_rc_t rc = sn_rpc_call(rpc, service, body, strlen(body), timeout_ms, &reply, &len, &reason);
    if (nak)
        *nak = reason;
    if (rc != SN_OK)
        return NULL;
    char *s = sn_malloc(len + 1);
    if (len)
        memcpy(s, reply, len);
    s[len] = '\0';
    free(reply);
    return s;
}

#endif
