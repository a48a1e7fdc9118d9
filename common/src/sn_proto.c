/* SNP/1 frame codec. Decoding checks every frame count, size and range before it reads a
 * field, so that hostile input can only ever be refused (docs/protocol.md §9). */
#include "sentinel/sn_proto.h"

#include <errno.h>
#include <string.h>
#include <zmq.h>

#include "sentinel/sn_log.h"

static const uint8_t s_signature[3] = {0x53, 0x4E, 0x50};

static sn_rc_t s_fail(const char **why, const char *reason);
static bool s_route_ok(const sn_proto_bytes_t *b);
static bool s_read_meta(const sn_proto_bytes_t *b, sn_proto_msg_t *out);
static bool s_read_ids(const sn_proto_bytes_t *b, sn_proto_msg_t *out);

const char *sn_proto_cmd_name(int cmd)
{
    switch (cmd) {
    case SN_PROTO_READY:
        return "READY";
    case SN_PROTO_REQUEST:
        return "REQUEST";
    case SN_PROTO_REPLY:
        return "REPLY";
    case SN_PROTO_NAK:
        return "NAK";
    case SN_PROTO_CANCEL:
        return "CANCEL";
    case SN_PROTO_HEARTBEAT:
        return "HEARTBEAT";
    case SN_PROTO_DISCONNECT:
        return "DISCONNECT";
    default:
        return "?";
    }
}

const char *sn_nak_reason_name(int reason)
{
    static const char *names[] = {"none",        "no-such-service", "forbidden", "expired",
                                  "worker-lost", "overloaded",      "invalid"};
    if (reason < 0 || reason > SN_NAK_REASON_MAX)
        return "?";
    return names[reason];
}

bool sn_proto_name_ok(const void *s, size_t len)
{
    if (!s || len == 0 || len > SN_PROTO_MAX_NAME)
        return false;
    const uint8_t *p = s;
    for (size_t i = 0; i < len; i++)
        if (p[i] < 0x21 || p[i] > 0x7E)
            return false;
    return true;
}

sn_rc_t sn_proto_decode(const sn_proto_bytes_t *frames, size_t count, sn_proto_dir_t dir,
                        sn_proto_msg_t *out, const char **why)
{
    SN_ASSERT(out);
    memset(out, 0, sizeof *out);
    if (!frames || count < 1)
        return s_fail(why, "too-few-frames");
    if (count > SN_PROTO_MAX_FRAMES)
        return s_fail(why, "too-many-frames");
    const sn_proto_bytes_t *h = &frames[0];
    if (h->len != SN_PROTO_HEADER_LEN)
        return s_fail(why, "bad-header");
    if (memcmp(h->data, s_signature, 3) != 0)
        return s_fail(why, "bad-signature");
    if (h->data[3] != SN_PROTO_VERSION)
        return s_fail(why, "bad-version");
    uint8_t cmd = h->data[4];
    const sn_proto_bytes_t *f = frames + 1;
    size_t n = count - 1;
    size_t want = 0;
    switch (cmd) {
    case SN_PROTO_READY:
        if (dir != SN_PROTO_UP)
            return s_fail(why, "wrong-direction");
        if (n < 1)
            return s_fail(why, "too-few-frames");
        if (n > SN_PROTO_MAX_SERVICES)
            return s_fail(why, "too-many-frames");
        for (size_t i = 0; i < n; i++) {
            if (f[i].len < 3)
                return s_fail(why, "bad-name");
            uint16_t credit = sn_proto_get_u16(f[i].data);
            if (credit > SN_PROTO_MAX_CREDIT)
                return s_fail(why, "bad-credit");
            if (!sn_proto_name_ok(f[i].data + 2, f[i].len - 2))
                return s_fail(why, "bad-name");
            out->entries[i].credit = credit;
            out->entries[i].service.data = f[i].data + 2;
            out->entries[i].service.len = f[i].len - 2;
        }
        out->entry_count = n;
        out->cmd = SN_PROTO_READY;
        return SN_OK;
    case SN_PROTO_REQUEST:
        want = dir == SN_PROTO_UP ? 3 : 5;
        /* The meta frame first, whatever the frame count: a REQUEST whose ids can be read
         * is answerable (docs/protocol.md §9), so the caller learns them even when the
         * rest is malformed. */
        if (n >= 2 && s_read_meta(&f[1], out))
            out->cmd = SN_PROTO_REQUEST;
        if (n < want)
            return s_fail(why, "too-few-frames");
        if (n > want)
            return s_fail(why, "too-many-frames");
        if (out->cmd != SN_PROTO_REQUEST)
            return s_fail(why, "bad-meta");
        if (out->request_id == 0)
            return s_fail(why, "bad-request-id");
        if (out->attempt == 0)
            return s_fail(why, "bad-attempt");
        if (out->deadline_ms > SN_PROTO_MAX_DEADLINE_MS)
            return s_fail(why, "bad-deadline");
        if (!sn_proto_name_ok(f[0].data, f[0].len))
            return s_fail(why, "bad-name");
        out->service = f[0];
        out->envelope = f[2];
        if (dir == SN_PROTO_DOWN) {
            if (!sn_proto_name_ok(f[3].data, f[3].len))
                return s_fail(why, "bad-name");
            if (!s_route_ok(&f[4]))
                return s_fail(why, "bad-route");
            out->principal = f[3];
            out->route = f[4];
        }
        return SN_OK;
    case SN_PROTO_REPLY:
    case SN_PROTO_NAK:
    case SN_PROTO_CANCEL:
        if (cmd == SN_PROTO_CANCEL)
            want = dir == SN_PROTO_UP ? 1 : 2;
        else
            want = dir == SN_PROTO_UP ? 3 : 2;
        {
            bool has_route = (cmd == SN_PROTO_CANCEL) ? dir == SN_PROTO_DOWN : dir == SN_PROTO_UP;
            /* As for REQUEST: the ids (and route) first, so that the broker can tell which
             * request a malformed answer was meant for (docs/protocol.md §9). */
            if (n >= 1 && s_read_ids(&f[0], out) && out->request_id != 0) {
                if (!has_route) {
                    out->cmd = cmd;
                } else if (n >= 2 && s_route_ok(&f[1])) {
                    out->route = f[1];
                    out->cmd = cmd;
                }
            }
            if (n < want)
                return s_fail(why, "too-few-frames");
            if (n > want)
                return s_fail(why, "too-many-frames");
            if (!s_read_ids(&f[0], out))
                return s_fail(why, "bad-ids");
            if (out->request_id == 0)
                return s_fail(why, "bad-request-id");
            size_t next = 1;
            if (has_route) {
                if (!s_route_ok(&f[1]))
                    return s_fail(why, "bad-route");
                out->route = f[1];
                next = 2;
            }
            if (cmd == SN_PROTO_REPLY) {
                out->envelope = f[next];
            } else if (cmd == SN_PROTO_NAK) {
                if (f[next].len != 1 || f[next].data[0] < 1 || f[next].data[0] > SN_NAK_REASON_MAX)
                    return s_fail(why, "bad-reason");
                out->reason = f[next].data[0];
            }
            out->cmd = cmd;
            return SN_OK;
        }
    case SN_PROTO_HEARTBEAT:
        if (n < 1)
            return s_fail(why, "too-few-frames");
        if (n > 1)
            return s_fail(why, "too-many-frames");
        if (f[0].len != 1 || (f[0].data[0] & ~SN_PROTO_HB_WORKER) != 0)
            return s_fail(why, "bad-flags");
        out->flags = f[0].data[0];
        out->cmd = SN_PROTO_HEARTBEAT;
        return SN_OK;
    case SN_PROTO_DISCONNECT:
        if (n > 0)
            return s_fail(why, "too-many-frames");
        out->cmd = SN_PROTO_DISCONNECT;
        return SN_OK;
    default:
        return s_fail(why, "unknown-command");
    }
}

size_t sn_proto_encode(const sn_proto_msg_t *msg, sn_proto_dir_t dir, sn_proto_bytes_t *frames,
                       sn_proto_scratch_t *scratch)
{
    SN_ASSERT(msg && frames && scratch);
    memcpy(scratch->header, s_signature, 3);
    scratch->header[3] = SN_PROTO_VERSION;
    scratch->header[4] = (uint8_t)msg->cmd;
    size_t n = 0;
    frames[n++] = (sn_proto_bytes_t){scratch->header, SN_PROTO_HEADER_LEN};
    switch (msg->cmd) {
    case SN_PROTO_READY:
        SN_ASSERT(dir == SN_PROTO_UP);
        SN_ASSERT(msg->entry_count >= 1 && msg->entry_count <= SN_PROTO_MAX_SERVICES);
        for (size_t i = 0; i < msg->entry_count; i++) {
            const sn_proto_entry_t *e = &msg->entries[i];
            SN_ASSERT(e->service.len >= 1 && e->service.len <= SN_PROTO_MAX_NAME);
            sn_proto_put_u16(scratch->entries[i], e->credit);
            memcpy(scratch->entries[i] + 2, e->service.data, e->service.len);
            frames[n++] = (sn_proto_bytes_t){scratch->entries[i], 2 + e->service.len};
        }
        break;
    case SN_PROTO_REQUEST:
        sn_proto_put_u64(scratch->fixed, msg->request_id);
        sn_proto_put_u32(scratch->fixed + 8, msg->deadline_ms);
        sn_proto_put_u32(scratch->fixed + 12, msg->attempt);
        frames[n++] = msg->service;
        frames[n++] = (sn_proto_bytes_t){scratch->fixed, SN_PROTO_META_LEN};
        frames[n++] = msg->envelope;
        if (dir == SN_PROTO_DOWN) {
            frames[n++] = msg->principal;
            frames[n++] = msg->route;
        }
        break;
    case SN_PROTO_REPLY:
    case SN_PROTO_NAK:
    case SN_PROTO_CANCEL:
        sn_proto_put_u64(scratch->fixed, msg->request_id);
        sn_proto_put_u32(scratch->fixed + 8, msg->attempt);
        frames[n++] = (sn_proto_bytes_t){scratch->fixed, SN_PROTO_IDS_LEN};
        if ((msg->cmd == SN_PROTO_CANCEL) ? dir == SN_PROTO_DOWN : dir == SN_PROTO_UP)
            frames[n++] = msg->route;
        if (msg->cmd == SN_PROTO_REPLY) {
            frames[n++] = msg->envelope;
        } else if (msg->cmd == SN_PROTO_NAK) {
            scratch->small[0] = msg->reason;
            frames[n++] = (sn_proto_bytes_t){scratch->small, 1};
        }
        break;
    case SN_PROTO_HEARTBEAT:
        scratch->small[0] = msg->flags;
        frames[n++] = (sn_proto_bytes_t){scratch->small, 1};
        break;
    case SN_PROTO_DISCONNECT:
        break;
    default:
        SN_ASSERT(!"unknown command");
    }
    return n;
}

sn_rc_t sn_proto_send(void *zsock, const uint8_t *route, size_t route_len,
                      const sn_proto_msg_t *msg, sn_proto_dir_t dir)
{
    return sn_proto_send_zmsg(zsock, route, route_len, msg, dir, NULL);
}

sn_rc_t sn_proto_send_zmsg(void *zsock, const uint8_t *route, size_t route_len,
                           const sn_proto_msg_t *msg, sn_proto_dir_t dir, void *env_msg)
{
    sn_proto_bytes_t frames[SN_PROTO_MAX_FRAMES];
    sn_proto_scratch_t scratch;
    size_t n = sn_proto_encode(msg, dir, frames, &scratch);
    /* Index of the envelope frame, if the body is to be sent as a zmq_msg_t. */
    size_t env_index = SIZE_MAX;
    if (env_msg) {
        SN_ASSERT(msg->cmd == SN_PROTO_REQUEST || msg->cmd == SN_PROTO_REPLY);
        env_index = msg->cmd == SN_PROTO_REQUEST ? 3 : n - 1;
    }
    if (route_len > 0 && zmq_send(zsock, route, route_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return errno == EAGAIN ? SN_AGAIN : SN_ERROR;
    for (size_t i = 0; i < n; i++) {
        int flags = ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0);
        int rc;
        if (i == env_index)
            rc = zmq_msg_send((zmq_msg_t *)env_msg, zsock, flags);
        else
            rc = zmq_send(zsock, frames[i].data, frames[i].len, flags);
        if (rc < 0)
            return errno == EAGAIN ? SN_AGAIN : SN_ERROR;
    }
    return SN_OK;
}

void sn_proto_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

void sn_proto_put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

void sn_proto_put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

uint16_t sn_proto_get_u16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

uint32_t sn_proto_get_u32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

uint64_t sn_proto_get_u64(const uint8_t *p)
{
    return ((uint64_t)sn_proto_get_u32(p) << 32) | sn_proto_get_u32(p + 4);
}

sn_rc_t sn_proto_socket_setup(void *zsock, int64_t max_frame_bytes, const sn_curve_keys_t *curve)
{
    int64_t maxmsg = max_frame_bytes > 0 ? max_frame_bytes : 1024 * 1024;
    int handshake = 5000, hb_ivl = 5000, hb_timeout = 15000, hb_ttl = 15000;
    int rec_ivl = 250, rec_max = 10000, linger = 0;
    if (zmq_setsockopt(zsock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0 ||
        zmq_setsockopt(zsock, ZMQ_HANDSHAKE_IVL, &handshake, sizeof handshake) != 0 ||
        zmq_setsockopt(zsock, ZMQ_HEARTBEAT_IVL, &hb_ivl, sizeof hb_ivl) != 0 ||
        zmq_setsockopt(zsock, ZMQ_HEARTBEAT_TIMEOUT, &hb_timeout, sizeof hb_timeout) != 0 ||
        zmq_setsockopt(zsock, ZMQ_HEARTBEAT_TTL, &hb_ttl, sizeof hb_ttl) != 0 ||
        zmq_setsockopt(zsock, ZMQ_RECONNECT_IVL, &rec_ivl, sizeof rec_ivl) != 0 ||
        zmq_setsockopt(zsock, ZMQ_RECONNECT_IVL_MAX, &rec_max, sizeof rec_max) != 0 ||
        zmq_setsockopt(zsock, ZMQ_LINGER, &linger, sizeof linger) != 0) {
        sn_error("proto", "socket option refused: %s", zmq_strerror(errno));
        return SN_ERROR;
    }
    if (curve) {
        if (!curve->server_public || !curve->public_key || !curve->secret_key ||
            strlen(curve->server_public) != 40 || strlen(curve->public_key) != 40 ||
            strlen(curve->secret_key) != 40) {
            sn_error("proto", "CURVE keys must be 40-character Z85 strings");
            return SN_ERROR;
        }
        if (zmq_setsockopt(zsock, ZMQ_CURVE_SERVERKEY, curve->server_public, 41) != 0 ||
            zmq_setsockopt(zsock, ZMQ_CURVE_PUBLICKEY, curve->public_key, 41) != 0 ||
            zmq_setsockopt(zsock, ZMQ_CURVE_SECRETKEY, curve->secret_key, 41) != 0) {
            sn_error("proto", "CURVE key refused: %s", zmq_strerror(errno));
            return SN_ERROR;
        }
    }
    return SN_OK;
}

static sn_rc_t s_fail(const char **why, const char *reason)
{
    if (why)
        *why = reason;
    return SN_ERROR;
}

static bool s_route_ok(const sn_proto_bytes_t *b)
{
    return b->len >= 1 && b->len <= SN_PROTO_MAX_ROUTE;
}

static bool s_read_meta(const sn_proto_bytes_t *b, sn_proto_msg_t *out)
{
    if (b->len != SN_PROTO_META_LEN)
        return false;
    out->request_id = sn_proto_get_u64(b->data);
    out->deadline_ms = sn_proto_get_u32(b->data + 8);
    out->attempt = sn_proto_get_u32(b->data + 12);
    return true;
}

static bool s_read_ids(const sn_proto_bytes_t *b, sn_proto_msg_t *out)
{
    if (b->len != SN_PROTO_IDS_LEN)
        return false;
    out->request_id = sn_proto_get_u64(b->data);
    out->attempt = sn_proto_get_u32(b->data + 8);
    return true;
}
