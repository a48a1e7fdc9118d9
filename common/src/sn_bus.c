/* The event bus from an agent's side: a PUB that forwards envelope bytes as they are,
 * a SUB that refuses anything malformed and notices lost events from per-source
 * sequence numbers, and the flush-marker round trip used before shutdown. */
#include "sentinel/sn_bus.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_id.h"
#include "sentinel/sn_log.h"

#define S_TOPIC_MAX 255
#define S_DEFAULT_HWM 1000
#define S_DEFAULT_MAX_SOURCES 4096
#define S_FLUSH_RESEND_MS 100

struct sn_bus_pub {
    zsock_t *sock;
    int64_t max_frame_bytes;
    uint64_t sent;
};

/* What a subscriber remembers of one source. */
typedef struct {
    uint64_t incarnation;
    uint64_t last_seq;
} s_source_state_t;

struct sn_bus_sub {
    zsock_t *sock;
    int64_t max_frame_bytes;
    bool is_partial;
    size_t max_sources;
    zhashx_t *sources; /* source name -> s_source_state_t */
    sn_bus_gap_fn *gap_fn;
    void *gap_arg;
    sn_bus_stats_t stats;
    int64_t malformed_logged_ms;
};

static zsock_t *s_socket_new(int type, const sn_bus_opts_t *opts);
static sn_rc_t s_recv_frames(void *sock, zmq_msg_t *frames, size_t max, size_t *count);
static const char *s_check(sn_bus_sub_t *self, zmq_msg_t *frames, size_t count, sn_bus_event_t *ev);
static void s_track(sn_bus_sub_t *self, sn_bus_event_t *ev);
static void s_source_free(void **item);

/* ---- publisher --------------------------------------------------------------------- */

sn_bus_pub_t *sn_bus_pub_new(const sn_bus_opts_t *opts)
{
    SN_ASSERT(opts && opts->endpoint);
    zsock_t *sock = s_socket_new(ZMQ_PUB, opts);
    if (!sock)
        return NULL;
    sn_bus_pub_t *self = sn_calloc(1, sizeof *self);
    self->sock = sock;
    self->max_frame_bytes = opts->max_frame_bytes > 0 ? opts->max_frame_bytes : SN_MAX_FRAME_BYTES;
    return self;
}

void sn_bus_pub_destroy(sn_bus_pub_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_bus_pub_t *self = *self_p;
    zsock_destroy(&self->sock);
    free(self);
    *self_p = NULL;
}

sn_rc_t sn_bus_pub_send(sn_bus_pub_t *self, const char *topic, const void *env, size_t env_len)
{
    SN_ASSERT(self);
    size_t topic_len = topic ? strlen(topic) : 0;
    if (topic_len == 0 || topic_len > S_TOPIC_MAX || !env || env_len == 0 ||
        env_len > (size_t)self->max_frame_bytes) {
        sn_warn("bus", "refusing to publish: topic_len=%zu body_len=%zu", topic_len, env_len);
        return SN_ERROR;
    }
    void *s = zsock_resolve(self->sock);
    /* PUB never blocks; DONTWAIT only guards against surprises. */
    if (zmq_send(s, topic, topic_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) == -1 ||
        zmq_send(s, env, env_len, ZMQ_DONTWAIT) == -1) {
        sn_warn("bus", "publish failed: topic=%s err=%s", topic, zmq_strerror(zmq_errno()));
        return SN_AGAIN;
    }
    self->sent++;
    return SN_OK;
}

sn_rc_t sn_bus_pub_send_env(sn_bus_pub_t *self, const sn_envelope_t *env)
{
    SN_ASSERT(self && env);
    size_t len = 0;
    uint8_t *buf = sn_envelope_pack(env, &len);
    sn_rc_t rc = sn_bus_pub_send(self, env->type, buf, len);
    free(buf);
    return rc;
}

uint64_t sn_bus_pub_sent(const sn_bus_pub_t *self)
{
    return self->sent;
}

/* ---- subscriber -------------------------------------------------------------------- */

void sn_bus_event_fini(sn_bus_event_t *ev)
{
    if (!ev)
        return;
    free(ev->topic);
    free(ev->raw);
    sn_envelope_free(&ev->env);
    memset(ev, 0, sizeof *ev);
}

sn_bus_sub_t *sn_bus_sub_new(const sn_bus_opts_t *opts)
{
    SN_ASSERT(opts && opts->endpoint);
    zsock_t *sock = s_socket_new(ZMQ_SUB, opts);
    if (!sock)
        return NULL;
    sn_bus_sub_t *self = sn_calloc(1, sizeof *self);
    self->sock = sock;
    self->max_frame_bytes = opts->max_frame_bytes > 0 ? opts->max_frame_bytes : SN_MAX_FRAME_BYTES;
    self->is_partial = opts->is_partial;
    self->max_sources = opts->max_sources > 0 ? opts->max_sources : S_DEFAULT_MAX_SOURCES;
    self->sources = zhashx_new();
    zhashx_set_destructor(self->sources, s_source_free);
    return self;
}

void sn_bus_sub_destroy(sn_bus_sub_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_bus_sub_t *self = *self_p;
    zsock_destroy(&self->sock);
    zhashx_destroy(&self->sources);
    free(self);
    *self_p = NULL;
}

void sn_bus_sub_subscribe(sn_bus_sub_t *self, const char *prefix)
{
    SN_ASSERT(self && prefix);
    zsock_set_subscribe(self->sock, prefix);
}

void sn_bus_sub_unsubscribe(sn_bus_sub_t *self, const char *prefix)
{
    SN_ASSERT(self && prefix);
    zsock_set_unsubscribe(self->sock, prefix);
}

void sn_bus_sub_set_gap_handler(sn_bus_sub_t *self, sn_bus_gap_fn *fn, void *arg)
{
    self->gap_fn = fn;
    self->gap_arg = arg;
}

zsock_t *sn_bus_sub_sock(sn_bus_sub_t *self)
{
    return self->sock;
}

sn_rc_t sn_bus_sub_recv(sn_bus_sub_t *self, int timeout_ms, sn_bus_event_t *ev)
{
    SN_ASSERT(self && ev);
    memset(ev, 0, sizeof *ev);
    void *s = zsock_resolve(self->sock);
    int64_t deadline = sn_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        zmq_msg_t frames[3];
        size_t count = 0;
        sn_rc_t rc = s_recv_frames(s, frames, SN_ARRAY_LEN(frames), &count);
        if (rc == SN_OK) {
            const char *why = s_check(self, frames, count, ev);
            for (size_t i = 0; i < count && i < SN_ARRAY_LEN(frames); i++)
                zmq_msg_close(&frames[i]);
            if (!why) {
                self->stats.received++;
                s_track(self, ev);
                return SN_OK;
            }
            sn_bus_event_fini(ev);
            self->stats.malformed++;
            int64_t now = sn_mono_ms();
            if (now - self->malformed_logged_ms >= 1000) {
                self->malformed_logged_ms = now;
                sn_warn("bus", "malformed message dropped: reason=%s malformed_total=%llu", why,
                        (unsigned long long)self->stats.malformed);
            }
            continue;
        }
        int64_t left = deadline - sn_mono_ms();
        if (left <= 0)
            return SN_AGAIN;
        zmq_pollitem_t item = {.socket = s, .events = ZMQ_POLLIN};
        if (zmq_poll(&item, 1, (long)left) == -1)
            return SN_AGAIN; /* EINTR or context terminated */
    }
}

void sn_bus_sub_stats(const sn_bus_sub_t *self, sn_bus_stats_t *out)
{
    *out = self->stats;
}

/* ---- shutdown ---------------------------------------------------------------------- */

sn_rc_t sn_bus_flush(sn_bus_pub_t *pub, sn_bus_sub_t *sub, sn_source_t *src, int timeout_ms,
                     sn_bus_event_fn *on_event, void *arg)
{
    SN_ASSERT(pub && sub && src);
    sn_bus_sub_subscribe(sub, SN_BUS_FLUSH_TYPE);

    char token[33];
    sn_random_hex(token, 16);
    char id[SN_ID_LEN + 1];
    Sentinel__V1__FlushMarker marker = SENTINEL__V1__FLUSH_MARKER__INIT;
    marker.token = token;
    sn_envelope_t env;
    sentinel__v1__envelope__init(&env);
    sn_id_new(id);
    env.id = id;
    env.source = src->name;
    env.type = SN_BUS_FLUSH_TYPE;
    env.time_unix_ms = sn_wall_ms();
    env.incarnation = src->incarnation;
    env.seq = 0; /* a control message, outside the event sequence */
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_FLUSH;
    env.flush = &marker;
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&env, &len);

    sn_rc_t result = SN_AGAIN;
    int64_t deadline = sn_mono_ms() + timeout_ms;
    int64_t next_send = 0;
    for (;;) {
        int64_t now = sn_mono_ms();
        if (now >= deadline)
            break;
        if (now >= next_send) {
            if (sn_bus_pub_send(pub, SN_BUS_FLUSH_TYPE, bytes, len) == SN_ERROR)
                break;
            next_send = now + S_FLUSH_RESEND_MS;
        }
        int64_t wait = (next_send < deadline ? next_send : deadline) - now;
        sn_bus_event_t ev;
        if (sn_bus_sub_recv(sub, (int)wait, &ev) != SN_OK)
            continue;
        bool is_mine = ev.env->body_case == SENTINEL__V1__ENVELOPE__BODY_FLUSH && ev.env->flush &&
                       ev.env->flush->token && strcmp(ev.env->flush->token, token) == 0;
        if (!is_mine && on_event)
            on_event(arg, &ev);
        sn_bus_event_fini(&ev);
        if (is_mine) {
            result = SN_OK;
            break;
        }
    }
    free(bytes);
    if (result != SN_OK)
        sn_warn("bus", "flush marker did not come back within %d ms", timeout_ms);
    return result;
}

/* ---- helpers ----------------------------------------------------------------------- */

/* A socket with the liveness recipe of zeromq-notes §4; options before connect. */
static zsock_t *s_socket_new(int type, const sn_bus_opts_t *opts)
{
    zsock_t *sock = zsock_new(type);
    if (!sock) {
        sn_error("bus", "cannot create socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    int64_t max_frame = opts->max_frame_bytes > 0 ? opts->max_frame_bytes : SN_MAX_FRAME_BYTES;
    int hwm = opts->hwm > 0 ? opts->hwm : S_DEFAULT_HWM;
    int hb_ivl = opts->heartbeat_ivl_ms > 0 ? opts->heartbeat_ivl_ms : 5000;
    int hb_timeout = opts->heartbeat_timeout_ms > 0 ? opts->heartbeat_timeout_ms : 15000;
    zsock_set_maxmsgsize(sock, (int)max_frame);
    if (type == ZMQ_PUB)
        zsock_set_sndhwm(sock, hwm);
    else
        zsock_set_rcvhwm(sock, hwm);
    zsock_set_heartbeat_ivl(sock, hb_ivl);
    zsock_set_heartbeat_timeout(sock, hb_timeout);
    zsock_set_heartbeat_ttl(sock, hb_timeout);
    zsock_set_reconnect_ivl(sock, 250);
    zsock_set_reconnect_ivl_max(sock, 10000);
    zsock_set_linger(sock, 0);
    if (opts->curve_server_key) {
        if (!opts->curve_public_key || !opts->curve_secret_key ||
            strlen(opts->curve_server_key) != 40 || strlen(opts->curve_public_key) != 40 ||
            strlen(opts->curve_secret_key) != 40) {
            sn_error("bus", "CURVE needs three Z85 keys of 40 characters");
            zsock_destroy(&sock);
            return NULL;
        }
        zsock_set_curve_serverkey(sock, opts->curve_server_key);
        zsock_set_curve_publickey(sock, opts->curve_public_key);
        zsock_set_curve_secretkey(sock, opts->curve_secret_key);
    }
    if (zsock_connect(sock, "%s", opts->endpoint) == -1) {
        sn_error("bus", "cannot connect to %s: %s", opts->endpoint, zmq_strerror(zmq_errno()));
        zsock_destroy(&sock);
        return NULL;
    }
    return sock;
}

/* Reads one whole multipart message without waiting. Keeps at most @max frames open in
 * @frames; *count is the real frame count (more frames are read and discarded). */
static sn_rc_t s_recv_frames(void *sock, zmq_msg_t *frames, size_t max, size_t *count)
{
    size_t n = 0;
    for (;;) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, sock, ZMQ_DONTWAIT) == -1) {
            zmq_msg_close(&part);
            /* Frames of one message arrive together, so this is the first one; be safe. */
            for (size_t i = 0; i < n && i < max; i++)
                zmq_msg_close(&frames[i]);
            return SN_AGAIN;
        }
        bool more = zmq_msg_more(&part);
        if (n < max) {
            frames[n] = part;
        } else {
            zmq_msg_close(&part);
        }
        n++;
        if (!more)
            break;
    }
    *count = n;
    return SN_OK;
}

/* Validates [topic][envelope] and fills @ev; returns NULL or a static reason. */
static const char *s_check(sn_bus_sub_t *self, zmq_msg_t *frames, size_t count, sn_bus_event_t *ev)
{
    if (count != 2)
        return "frame-count";
    size_t topic_len = zmq_msg_size(&frames[0]);
    const char *topic = zmq_msg_data(&frames[0]);
    if (topic_len == 0 || topic_len > S_TOPIC_MAX || memchr(topic, '\0', topic_len))
        return "bad-topic";
    size_t len = zmq_msg_size(&frames[1]);
    const char *why = NULL;
    ev->env =
        sn_envelope_unpack(zmq_msg_data(&frames[1]), len, (size_t)self->max_frame_bytes, &why);
    if (!ev->env)
        return why;
    if (strlen(ev->env->type) != topic_len || memcmp(ev->env->type, topic, topic_len) != 0)
        return "topic-mismatch";
    if (!ev->env->source || !*ev->env->source || strlen(ev->env->source) > SN_SOURCE_MAX)
        return "bad-source";
    ev->topic = sn_strndup(topic, topic_len);
    ev->raw = sn_malloc(len);
    memcpy(ev->raw, zmq_msg_data(&frames[1]), len);
    ev->raw_len = len;
    return NULL;
}

/* Sequence bookkeeping. A source seen for the first time is treated like a new
 * incarnation: it should start at 1, so a first event with seq N > 1 reports N - 1
 * missed. That is conservative for a late joiner (one gap per running source, which a
 * single journal replay repairs) but it is what catches the lost first events of a
 * publisher that started after the subscriber. Seq 0 marks a control message outside
 * the sequence. */
static void s_track(sn_bus_sub_t *self, sn_bus_event_t *ev)
{
    const sn_envelope_t *env = ev->env;
    if (env->seq == 0)
        return;
    s_source_state_t *st = zhashx_lookup(self->sources, env->source);
    if (!st) {
        if (zhashx_size(self->sources) >= self->max_sources) {
            zhashx_purge(self->sources);
            self->stats.sources_reset++;
        }
        st = sn_calloc(1, sizeof *st);
        st->incarnation = env->incarnation;
        st->last_seq = 0;
        zhashx_insert(self->sources, env->source, st);
    }
    uint64_t missed = 0;
    if (st->incarnation != env->incarnation) {
        /* A restarted source: a new incarnation begins at seq 1. */
        missed = env->seq - 1;
        st->incarnation = env->incarnation;
        st->last_seq = env->seq;
    } else if (env->seq <= st->last_seq) {
        ev->is_duplicate = true;
        self->stats.duplicates++;
        return;
    } else {
        missed = env->seq - st->last_seq - 1;
        st->last_seq = env->seq;
    }
    if (missed == 0 || self->is_partial)
        return;
    ev->is_gap = true;
    ev->missed = missed;
    self->stats.gaps++;
    self->stats.missed += missed;
    if (self->gap_fn)
        self->gap_fn(self->gap_arg, ev);
}

static void s_source_free(void **item)
{
    if (item && *item) {
        free(*item);
        *item = NULL;
    }
}
