/* SNP/1, the service protocol between clients, workers and the broker (docs/protocol.md):
 * pure encoding and decoding of the frames of one message, plus thin helpers that move a
 * message to and from a ZeroMQ socket. Decoded fields point into the caller's frames
 * (nothing is copied), so a decoded message lives as long as its frames. */
#ifndef SN_PROTO_H
#define SN_PROTO_H

#include "sentinel/sn_common.h"

#define SN_PROTO_VERSION 0x01
#define SN_PROTO_HEADER_LEN 5
#define SN_PROTO_META_LEN 16
#define SN_PROTO_IDS_LEN 12
#define SN_PROTO_MAX_NAME 255
#define SN_PROTO_MAX_ROUTE 255
#define SN_PROTO_MAX_SERVICES 64
#define SN_PROTO_MAX_CREDIT 1000
#define SN_PROTO_MAX_DEADLINE_MS 86400000u
#define SN_PROTO_DEFAULT_DEADLINE_MS 30000u
#define SN_PROTO_MAX_FRAMES 70
/* Frames after the header, at most: READY with 64 entries. */
#define SN_PROTO_HB_WORKER 0x01

typedef enum {
    SN_PROTO_READY = 0x01,
    SN_PROTO_REQUEST = 0x02,
    SN_PROTO_REPLY = 0x03,
    SN_PROTO_NAK = 0x04,
    SN_PROTO_CANCEL = 0x05,
    SN_PROTO_HEARTBEAT = 0x06,
    SN_PROTO_DISCONNECT = 0x07,
} sn_proto_cmd_t;

typedef enum {
    SN_NAK_NONE = 0,
    SN_NAK_NO_SUCH_SERVICE = 1,
    SN_NAK_FORBIDDEN = 2,
    SN_NAK_EXPIRED = 3,
    SN_NAK_WORKER_LOST = 4,
    SN_NAK_OVERLOADED = 5,
    SN_NAK_INVALID = 6,
} sn_nak_reason_t;
#define SN_NAK_REASON_MAX 6

/* Which way a message travels: toward the broker (from a client or worker) or from it. */
typedef enum { SN_PROTO_UP = 0, SN_PROTO_DOWN = 1 } sn_proto_dir_t;

typedef struct {
    const uint8_t *data;
    size_t len;
} sn_proto_bytes_t;

typedef struct {
    sn_proto_bytes_t service;
    uint16_t credit;
} sn_proto_entry_t;

/* One decoded (or to-be-encoded) message. Which fields are meaningful depends on cmd and
 * direction (docs/protocol.md §2.3); the others are zero. */
typedef struct {
    sn_proto_cmd_t cmd;
    uint64_t request_id;
    uint32_t deadline_ms;
    uint32_t attempt;
    sn_proto_bytes_t service;
    sn_proto_bytes_t envelope;
    sn_proto_bytes_t principal;
    sn_proto_bytes_t route;
    uint8_t reason;
    uint8_t flags;
    size_t entry_count;
    sn_proto_entry_t entries[SN_PROTO_MAX_SERVICES];
} sn_proto_msg_t;

/* Scratch storage for encoding: the header and fixed-size fields live here. */
typedef struct {
    uint8_t header[SN_PROTO_HEADER_LEN];
    uint8_t fixed[SN_PROTO_META_LEN];
    uint8_t small[1];
    uint8_t entries[SN_PROTO_MAX_SERVICES][2 + SN_PROTO_MAX_NAME];
} sn_proto_scratch_t;

/* Names of commands and NAK reasons ("REQUEST", "worker-lost"; "?" if unknown). */
const char *sn_proto_cmd_name(int cmd);
const char *sn_nak_reason_name(int reason);

/* True if @len bytes at @s are a valid service or principal name (1-255, 0x21-0x7E). */
bool sn_proto_name_ok(const void *s, size_t len);

/* Decodes the @count frames of one message travelling in @dir into @out (fields point into
 * @frames). SN_OK, or SN_ERROR with *why set to a static reason ("too-few-frames",
 * "too-many-frames", "bad-header", "bad-signature", "bad-version", "unknown-command",
 * "wrong-direction", "bad-meta", "bad-ids", "bad-name", "bad-route", "bad-credit",
 * "bad-reason", "bad-flags", "bad-request-id", "bad-attempt", "bad-deadline").
 * On SN_ERROR, out->cmd is still set when the message names a request (docs/protocol.md
 * §9): for a REQUEST whose second frame is a 16-byte meta (whatever the frame count),
 * with out->request_id/attempt read from it (request_id may be 0: unanswerable); for a
 * REPLY, NAK or CANCEL whose first frame is 12-byte ids with a non-zero request_id and,
 * where the command carries one, whose second frame is a valid route (out->route set).
 * Otherwise out->cmd is 0. attempt is range-checked (>= 1) in REQUESTs only; in `ids` it
 * is matched, not interpreted. Pure; any thread. */
SN_NODISCARD sn_rc_t sn_proto_decode(const sn_proto_bytes_t *frames, size_t count,
                                     sn_proto_dir_t dir, sn_proto_msg_t *out, const char **why);

/* Builds the frame list of @msg travelling in @dir into @frames (room for
 * SN_PROTO_MAX_FRAMES); fixed fields are written into @scratch, variable ones point into
 * @msg. Returns the frame count. Asserts that @msg is well-formed. Pure; any thread. */
size_t sn_proto_encode(const sn_proto_msg_t *msg, sn_proto_dir_t dir, sn_proto_bytes_t *frames,
                       sn_proto_scratch_t *scratch);

/* Sends @msg on ZeroMQ socket @zsock (a raw libzmq handle), prefixed by a routing frame
 * @route (route_len 0: none, for DEALERs), without blocking. SN_OK; SN_AGAIN if the socket
 * would block (nothing or a prefix was sent: libzmq sends multipart atomically, so nothing
 * reaches the peer); SN_ERROR with errno set (e.g. EHOSTUNREACH) otherwise. */
SN_NODISCARD sn_rc_t sn_proto_send(void *zsock, const uint8_t *route, size_t route_len,
                                   const sn_proto_msg_t *msg, sn_proto_dir_t dir);

/* Same, but the envelope frame is the ZeroMQ message @env_msg (a zmq_msg_t *, moved, so
 * the body is forwarded without copying); msg->envelope is ignored. */
SN_NODISCARD sn_rc_t sn_proto_send_zmsg(void *zsock, const uint8_t *route, size_t route_len,
                                        const sn_proto_msg_t *msg, sn_proto_dir_t dir,
                                        void *env_msg);

/* Big-endian helpers. */
void sn_proto_put_u16(uint8_t *p, uint16_t v);
void sn_proto_put_u32(uint8_t *p, uint32_t v);
void sn_proto_put_u64(uint8_t *p, uint64_t v);
uint16_t sn_proto_get_u16(const uint8_t *p);
uint32_t sn_proto_get_u32(const uint8_t *p);
uint64_t sn_proto_get_u64(const uint8_t *p);

/* CURVE keys of a client or worker connection: Z85 text (40 chars), borrowed. */
typedef struct {
    const char *server_public; /* the broker's public key */
    const char *public_key;    /* this process's key pair */
    const char *secret_key;
} sn_curve_keys_t;

/* Applies the common socket options of docs/protocol.md §2.5 (MAXMSGSIZE, handshake, ZMTP
 * heartbeats, reconnect) and, if @curve is not NULL, the CURVE client keys. @zsock is a raw
 * libzmq handle that is not yet connected. SN_ERROR (logged) if an option is refused. */
SN_NODISCARD sn_rc_t sn_proto_socket_setup(void *zsock, int64_t max_frame_bytes,
                                           const sn_curve_keys_t *curve);

#endif
