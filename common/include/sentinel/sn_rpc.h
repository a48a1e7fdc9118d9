/* Service-call client (docs/protocol.md §4): a DEALER connected to the broker's rpc
 * endpoint. Asynchronous: sn_rpc_send returns a request id at once; results (REPLY or NAK)
 * come back through sn_rpc_recv, which the owner calls when sn_rpc_socket is readable or
 * on its timer. sn_rpc_call is a blocking helper for sentinelctl and tests. The client
 * sends a HEARTBEAT as soon as it connects (so the broker knows it and heartbeats back),
 * then every interval. It replaces its socket with a new one (after a jittered backoff)
 * and answers its outstanding requests locally with NAK worker-lost (§7.2) when: the
 * broker is silent for heartbeat_ms * liveness (judged before reading what queued while
 * this thread was not running); the broker sends DISCONNECT; or the TCP connection
 * closes. One client belongs to one thread. */
#ifndef SN_RPC_H
#define SN_RPC_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_proto.h"

typedef struct sn_rpc sn_rpc_t;

/* A REPLY or NAK for one request. */
typedef struct {
    uint64_t request_id;
    uint32_t attempt;
    bool is_nak;
    sn_nak_reason_t reason; /* when is_nak */
    uint8_t *body;          /* REPLY envelope bytes (heap, may be NULL when len 0) */
    size_t body_len;
} sn_rpc_result_t;

/* The socket lives in czmq's shared context (zsys_init): destroy the object before the
 * process exits, or zsys_shutdown waits for the socket. Call zsys_init() on the main
 * thread before creating one on another thread (czmq's lazy init is not thread-safe).
 * Connects to @endpoint; @curve (borrowed, copied) NULL for no CURVE. Returns NULL (logged)
 * if the socket cannot be set up. */
sn_rpc_t *sn_rpc_new(const char *endpoint, const sn_curve_keys_t *curve);
/* Closes the socket and frees; NULL-safe; nulls *self_p. Outstanding requests are
 * abandoned (the broker forgets them when our heartbeats stop). */
void sn_rpc_destroy(sn_rpc_t **self_p);

/* Heartbeat interval and liveness (defaults 1000 ms, 3); MUST be the broker's (the same
 * config's broker.heartbeat_ms and broker.heartbeat_liveness, docs/protocol.md §7). */
void sn_rpc_set_heartbeat(sn_rpc_t *self, int heartbeat_ms, int liveness);
/* ZMQ_MAXMSGSIZE for the next socket (default 1 MiB). */
void sn_rpc_set_max_frame(sn_rpc_t *self, int64_t max_frame_bytes);

/* Sends a REQUEST for @service with @len envelope bytes at @env (copied), a relative
 * deadline (0 = broker default) and @attempt (>= 1; 1 for a first try). Writes the new
 * request id into *request_id. SN_OK; SN_ERROR for a bad service name, deadline or attempt
 * 0; SN_AGAIN if the socket cannot take it now. */
SN_NODISCARD sn_rc_t sn_rpc_send(sn_rpc_t *self, const char *service, const void *env, size_t len,
                                 uint32_t deadline_ms, uint32_t attempt, uint64_t *request_id);
/* The same with a request id of the caller's choosing (not 0), e.g. to re-send a request
 * with attempt + 1 after it was answered or cancelled. */
SN_NODISCARD sn_rc_t sn_rpc_send_id(sn_rpc_t *self, uint64_t request_id, const char *service,
                                    const void *env, size_t len, uint32_t deadline_ms,
                                    uint32_t attempt);

/* Cancels an outstanding request: nothing more will be delivered for it. SN_OK, or
 * SN_DECLINED if it is not outstanding. */
sn_rc_t sn_rpc_cancel(sn_rpc_t *self, uint64_t request_id, uint32_t attempt);

/* The libzmq socket to poll for ZMQ_POLLIN. It changes when the client reconnects, so read
 * it again before each poll. */
void *sn_rpc_socket(sn_rpc_t *self);

/* Takes the next result without blocking: SN_OK with *out filled (free with
 * sn_rpc_result_fini), SN_AGAIN if none. Also runs sn_rpc_tick. Results for requests that
 * are not outstanding (cancelled, or answered locally) are dropped. */
SN_NODISCARD sn_rc_t sn_rpc_recv(sn_rpc_t *self, sn_rpc_result_t *out);
void sn_rpc_result_fini(sn_rpc_result_t *result);

/* Heartbeats and broker-silence detection; call at least every heartbeat interval. */
void sn_rpc_tick(sn_rpc_t *self);

/* Milliseconds until sn_rpc_tick wants to run (for the owner's poll timeout). */
int sn_rpc_timeout_ms(sn_rpc_t *self);

/* Number of outstanding requests. */
size_t sn_rpc_outstanding(sn_rpc_t *self);

/* Sockets created so far (1 after new; +1 per reconnect). */
uint32_t sn_rpc_connects(sn_rpc_t *self);

/* Blocking call: sends one request (attempt 1, deadline @timeout_ms) and waits up to
 * @timeout_ms. SN_OK with *reply (heap, caller frees; NULL if empty) and *reply_len;
 * SN_DECLINED with *nak_reason on a NAK; SN_AGAIN on timeout (the request is cancelled);
 * SN_ERROR on bad arguments. Results of other requests that arrive meanwhile are kept for
 * sn_rpc_recv. */
SN_NODISCARD sn_rc_t sn_rpc_call(sn_rpc_t *self, const char *service, const void *env, size_t len,
                                 int timeout_ms, uint8_t **reply, size_t *reply_len,
                                 sn_nak_reason_t *nak_reason);

#endif
