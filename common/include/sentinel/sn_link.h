/* A DEALER link to the broker with SNP/1 liveness (docs/protocol.md §7): the connection
 * state machine that sn_rpc (clients) and sn_worker (workers) share. Internal to the
 * runtime library; applications use sn_rpc.h and sn_worker.h. The link connects to the
 * broker's rpc endpoint, sends a HEARTBEAT as soon as it connects (after the owner's
 * on_connect hook, e.g. READY) and then every interval, and judges the broker lost when it
 * is silent for heartbeat_ms * liveness or sends DISCONNECT. It then closes its socket,
 * tells its owner (on_lost) and connects a NEW socket after a jittered backoff. With
 * is_monitored it also watches the TCP connection and calls on_lost when it closes (the
 * DEALER reconnects by itself, but a broker restarted meanwhile forgot what it held for
 * us). One link belongs to one thread. */
#ifndef SN_LINK_H
#define SN_LINK_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_proto.h"

typedef struct sn_link sn_link_t;

/* What the owner is told; every hook is optional and runs on the link's thread. */
typedef struct {
    const char *module; /* log module name, e.g. "rpc" (static string) */
    bool is_monitored;  /* watch the TCP connection (ZMQ_EVENT_DISCONNECTED) */
    void *arg;          /* passed to every hook */
    /* The new socket is connected; runs before the first HEARTBEAT (register here). */
    void (*on_connect)(void *arg);
    /* What the broker held for us is gone: the link is replacing its socket (@why: broker
     * silent, DISCONNECT from broker) or the monitored TCP connection closed. */
    void (*on_lost)(void *arg, const char *why);
    /* Flags for each HEARTBEAT (e.g. SN_PROTO_HB_WORKER); 0 without the hook. */
    uint8_t (*heartbeat_flags)(void *arg);
} sn_link_hooks_t;

/* The socket lives in czmq's shared context (zsys_init). Opens a socket for @endpoint
 * (copied); @curve (borrowed, copied) NULL for no CURVE; @hooks copied. Does not connect
 * yet: the owner calls sn_link_start once it can take hooks. NULL (logged) if the socket
 * cannot be set up. */
sn_link_t *sn_link_new(const char *endpoint, const sn_curve_keys_t *curve,
                       const sn_link_hooks_t *hooks);
/* Closes the socket and frees; NULL-safe; nulls *self_p. No hook runs. */
void sn_link_destroy(sn_link_t **self_p);

/* Heartbeat interval and liveness (defaults 1000 ms, 3); restarts the silence window. */
void sn_link_set_heartbeat(sn_link_t *self, int heartbeat_ms, int liveness);
/* ZMQ_MAXMSGSIZE for the next socket (default SN_MAX_FRAME_BYTES). */
void sn_link_set_max_frame(sn_link_t *self, int64_t max_frame_bytes);

/* First connect (on_connect and a HEARTBEAT if it succeeds; else retried by the tick). */
void sn_link_start(sn_link_t *self);

/* Sends @m upward to the broker; sn_proto_send's result (errno set on failure). */
SN_NODISCARD sn_rc_t sn_link_send(sn_link_t *self, const sn_proto_msg_t *m);

/* Reads without blocking until a message other than HEARTBEAT: SN_OK with *m decoded (its
 * byte views point into frames the link keeps until the next sn_link_recv, reset or
 * destroy); SN_AGAIN if nothing is queued, the link is not connected, or the broker sent
 * DISCONNECT (the link has reset). Malformed messages are logged and skipped; any good one
 * restarts the silence window. */
SN_NODISCARD sn_rc_t sn_link_recv(sn_link_t *self, sn_proto_msg_t *m);

/* Connects when due, reads the monitor, judges silence (before anything queued is read),
 * heartbeats. Call at least every heartbeat interval. */
void sn_link_tick(sn_link_t *self);
/* Milliseconds until sn_link_tick wants to run. */
int sn_link_timeout_ms(sn_link_t *self);

/* The libzmq socket; it changes on reset, so read it again before each poll. */
void *sn_link_socket(sn_link_t *self);
/* True while the current socket is connected (between sn_link_start / a due reconnect
 * and the next reset). */
bool sn_link_is_connected(sn_link_t *self);
/* True once the broker has sent anything on the current socket. */
bool sn_link_has_heard(sn_link_t *self);
/* Sockets created so far (1 after new; +1 per reset). */
uint32_t sn_link_connects(sn_link_t *self);

#endif
