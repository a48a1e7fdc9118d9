/* The broker link shared by sn_rpc and sn_worker. A reset replaces the socket rather than
 * reusing it: a new DEALER gets a new routing id, so the broker cannot mix what it knew of
 * the old connection with the new one. The frames of the last message read are kept here
 * so that a decoded message can be used in place, without a copy. */
#include "sentinel/sn_link.h"

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_backoff.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_log.h"

struct sn_link {
    char *endpoint;
    sn_link_hooks_t hooks;
    bool has_curve;
    char server_key[41], public_key[41], secret_key[41];
    void *sock;
    void *monitor; /* PAIR reading the DEALER's ZMQ_EVENT_DISCONNECTED */
    bool connected;
    bool has_heard;
    int heartbeat_ms;
    int liveness;
    int64_t max_frame_bytes;
    int64_t next_heartbeat;
    int64_t broker_deadline; /* silence past this = broker lost */
    int64_t connect_at;      /* when not connected: when to connect */
    sn_backoff_t backoff;
    uint32_t connects;
    zmq_msg_t frames[SN_PROTO_MAX_FRAMES]; /* the last message read */
    size_t frame_count;
};

static sn_rc_t s_open(sn_link_t *self);
static void s_connect(sn_link_t *self);
static void s_reset(sn_link_t *self, const char *why);
static void s_heartbeat(sn_link_t *self);
static bool s_read_frames(sn_link_t *self, bool *overflow);
static void s_frames_close(sn_link_t *self);
static void s_monitor_close(sn_link_t *self);
static void s_check_monitor(sn_link_t *self);

sn_link_t *sn_link_new(const char *endpoint, const sn_curve_keys_t *curve,
                       const sn_link_hooks_t *hooks)
{
    SN_ASSERT(endpoint && hooks && hooks->module);
    sn_link_t *self = sn_calloc(1, sizeof *self);
    self->endpoint = sn_strdup(endpoint);
    self->hooks = *hooks;
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
    if (s_open(self) != SN_OK) {
        sn_link_destroy(&self);
        return NULL;
    }
    return self;
}

void sn_link_destroy(sn_link_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_link_t *self = *self_p;
    s_frames_close(self);
    s_monitor_close(self);
    if (self->sock)
        zmq_close(self->sock);
    free(self->endpoint);
    free(self);
    *self_p = NULL;
}

void sn_link_set_heartbeat(sn_link_t *self, int heartbeat_ms, int liveness)
{
    SN_ASSERT(heartbeat_ms > 0 && liveness > 0);
    self->heartbeat_ms = heartbeat_ms;
    self->liveness = liveness;
    self->broker_deadline = sn_mono_ms() + (int64_t)heartbeat_ms * liveness;
    self->next_heartbeat = 0;
}

void sn_link_set_max_frame(sn_link_t *self, int64_t max_frame_bytes)
{
    self->max_frame_bytes = max_frame_bytes;
}

void sn_link_start(sn_link_t *self)
{
    s_connect(self);
}

sn_rc_t sn_link_send(sn_link_t *self, const sn_proto_msg_t *m)
{
    return sn_proto_send(self->sock, NULL, 0, m, SN_PROTO_UP);
}

sn_rc_t sn_link_recv(sn_link_t *self, sn_proto_msg_t *m)
{
    SN_ASSERT(m);
    while (self->connected) {
        s_frames_close(self);
        bool overflow = false;
        if (!s_read_frames(self, &overflow))
            return SN_AGAIN;
        sn_proto_bytes_t views[SN_PROTO_MAX_FRAMES];
        for (size_t i = 0; i < self->frame_count; i++)
            views[i] =
                (sn_proto_bytes_t){zmq_msg_data(&self->frames[i]), zmq_msg_size(&self->frames[i])};
        const char *why = NULL;
        if (overflow ||
            sn_proto_decode(views, self->frame_count, SN_PROTO_DOWN, m, &why) != SN_OK) {
            sn_warn(self->hooks.module, "malformed message from broker refused why=%s",
                    overflow ? "too-many-frames" : why);
            continue;
        }
        self->broker_deadline = sn_mono_ms() + (int64_t)self->heartbeat_ms * self->liveness;
        self->has_heard = true;
        sn_backoff_reset(&self->backoff);
        if (m->cmd == SN_PROTO_DISCONNECT) {
            s_reset(self, "DISCONNECT from broker");
            return SN_AGAIN;
        }
        if (m->cmd != SN_PROTO_HEARTBEAT)
            return SN_OK;
    }
    return SN_AGAIN;
}

void sn_link_tick(sn_link_t *self)
{
    int64_t now = sn_mono_ms();
    if (!self->connected) {
        if (now >= self->connect_at)
            s_connect(self);
        return;
    }
    s_check_monitor(self);
    /* Checked before anything queued is read (the owners tick before they read): after
     * this thread was stopped for the silence window, heartbeats the broker sent before it
     * declared us dead must not hide that it did (§7). */
    if (now >= self->broker_deadline) {
        s_reset(self, "broker silent");
        return;
    }
    if (now >= self->next_heartbeat)
        s_heartbeat(self);
}

int sn_link_timeout_ms(sn_link_t *self)
{
    int64_t now = sn_mono_ms();
    int64_t at = self->connected ? self->next_heartbeat : self->connect_at;
    if (self->connected && self->broker_deadline < at)
        at = self->broker_deadline;
    int64_t d = at - now;
    return d < 0 ? 0 : (int)d;
}

void *sn_link_socket(sn_link_t *self)
{
    return self->sock;
}

bool sn_link_is_connected(sn_link_t *self)
{
    return self->connected;
}

bool sn_link_has_heard(sn_link_t *self)
{
    return self->has_heard;
}

uint32_t sn_link_connects(sn_link_t *self)
{
    return self->connects;
}

static sn_rc_t s_open(sn_link_t *self)
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
    if (self->hooks.is_monitored) {
        char mon[64];
        snprintf(mon, sizeof mon, "inproc://sn-link-mon-%p-%u", (void *)self, self->connects);
        if (zmq_socket_monitor(self->sock, mon, ZMQ_EVENT_DISCONNECTED) == 0) {
            self->monitor = zmq_socket(zsys_init(), ZMQ_PAIR);
            if (self->monitor && zmq_connect(self->monitor, mon) != 0) {
                zmq_close(self->monitor);
                self->monitor = NULL;
            }
        }
    }
    self->connects++;
    self->connected = false;
    self->has_heard = false;
    return SN_OK;
}

static void s_connect(sn_link_t *self)
{
    if (zmq_connect(self->sock, self->endpoint) != 0) {
        sn_error(self->hooks.module, "cannot connect to %s: %s", self->endpoint,
                 zmq_strerror(errno));
        self->connect_at = sn_mono_ms() + sn_backoff_next(&self->backoff);
        return;
    }
    self->connected = true;
    self->broker_deadline = sn_mono_ms() + (int64_t)self->heartbeat_ms * self->liveness;
    if (self->hooks.on_connect)
        self->hooks.on_connect(self->hooks.arg);
    s_heartbeat(self); /* so that the broker knows us and heartbeats back */
}

/* Replaces the socket: close, tell the owner, new socket, connect after a jittered
 * backoff. */
static void s_reset(sn_link_t *self, const char *why)
{
    int64_t delay = sn_backoff_next(&self->backoff);
    sn_warn(self->hooks.module, "leaving broker (%s), new socket in %lld ms endpoint=%s", why,
            (long long)delay, self->endpoint);
    s_frames_close(self);
    s_monitor_close(self);
    zmq_close(self->sock);
    self->sock = NULL;
    if (self->hooks.on_lost)
        self->hooks.on_lost(self->hooks.arg, why);
    /* s_open cannot fail here: the same options worked for the first socket. */
    sn_rc_t rc = s_open(self);
    SN_ASSERT(rc == SN_OK);
    self->connect_at = sn_mono_ms() + delay;
}

static void s_heartbeat(sn_link_t *self)
{
    uint8_t flags = self->hooks.heartbeat_flags ? self->hooks.heartbeat_flags(self->hooks.arg) : 0;
    sn_proto_msg_t m = {.cmd = SN_PROTO_HEARTBEAT, .flags = flags};
    if (sn_proto_send(self->sock, NULL, 0, &m, SN_PROTO_UP) != SN_OK)
        sn_debug(self->hooks.module, "heartbeat not sent: %s", zmq_strerror(errno));
    self->next_heartbeat = sn_mono_ms() + self->heartbeat_ms;
}

/* Reads one whole message into self->frames if one is queued; true if it read one. More
 * frames than SN_PROTO_MAX_FRAMES are read and dropped, and *overflow set. */
static bool s_read_frames(sn_link_t *self, bool *overflow)
{
    zmq_msg_t *frames = self->frames;
    zmq_msg_init(&frames[0]);
    if (zmq_msg_recv(&frames[0], self->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&frames[0]);
        return false;
    }
    size_t n = 1;
    while (zmq_msg_more(&frames[n - 1])) {
        if (n == SN_PROTO_MAX_FRAMES) {
            zmq_msg_t junk;
            zmq_msg_init(&junk);
            int rc = zmq_msg_recv(&junk, self->sock, 0);
            bool more = rc >= 0 && zmq_msg_more(&junk);
            zmq_msg_close(&junk);
            *overflow = true;
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
    self->frame_count = n;
    return true;
}

static void s_frames_close(sn_link_t *self)
{
    for (size_t i = 0; i < self->frame_count; i++)
        zmq_msg_close(&self->frames[i]);
    self->frame_count = 0;
}

static void s_monitor_close(sn_link_t *self)
{
    if (self->sock && self->monitor)
        zmq_socket_monitor(self->sock, NULL, 0);
    if (self->monitor)
        zmq_close(self->monitor);
    self->monitor = NULL;
}

/* A disconnect from the broker loses whatever it held for us. */
static void s_check_monitor(sn_link_t *self)
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
    if (is_lost && self->hooks.on_lost)
        self->hooks.on_lost(self->hooks.arg, "TCP connection closed");
}
