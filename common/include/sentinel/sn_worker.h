/* The worker side of the service protocol (docs/protocol.md §3): a DEALER connected to the
 * broker's rpc endpoint that serves services with a credit each. The owner polls
 * sn_worker_socket, takes REQUEST and CANCEL events with sn_worker_recv, answers each request
 * once with sn_worker_reply or sn_worker_nak (possibly later, from a ticket it kept), and
 * calls sn_worker_tick at least every heartbeat interval. The worker heartbeats the broker,
 * and on DISCONNECT or broker silence closes its socket, waits a jittered backoff, connects a
 * NEW socket and sends READY again. Leader roles call sn_worker_serve(name, credit) on
 * election and sn_worker_serve(name, 0) on step-down. One worker belongs to one thread. */
#ifndef SN_WORKER_H
#define SN_WORKER_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_proto.h"

typedef struct sn_worker sn_worker_t;

/* What is needed to answer one request; a plain value, copy it freely. */
typedef struct {
    uint8_t route[SN_PROTO_MAX_ROUTE];
    size_t route_len;
    uint64_t request_id;
    uint32_t attempt;
    uint32_t generation; /* the socket it came on; answers on a later socket are dropped */
} sn_worker_ticket_t;

typedef enum { SN_WORKER_REQUEST = 1, SN_WORKER_CANCEL = 2 } sn_worker_event_type_t;

/* One REQUEST (all fields) or CANCEL (ticket only) from the broker. */
typedef struct {
    sn_worker_event_type_t type;
    sn_worker_ticket_t ticket;
    char service[SN_PROTO_MAX_NAME + 1];
    char principal[SN_PROTO_MAX_NAME + 1]; /* the caller, as the broker authenticated it */
    uint32_t deadline_ms;                  /* remaining when the broker dispatched it */
    int64_t deadline_at_ms;                /* the same on sn_mono_ms()'s clock */
    uint8_t *body;                         /* envelope bytes (heap; NULL when len 0) */
    size_t body_len;
} sn_worker_event_t;

/* The socket lives in czmq's shared context (zsys_init): destroy the object before the
 * process exits, or zsys_shutdown waits for the socket. Call zsys_init() on the main
 * thread before creating one on another thread (czmq's lazy init is not thread-safe).
 * Connects to @endpoint; @curve (borrowed, copied) NULL for no CURVE. NULL (logged) if the
 * socket cannot be set up. Serves nothing until sn_worker_serve. */
sn_worker_t *sn_worker_new(const char *endpoint, const sn_curve_keys_t *curve);
/* Sends DISCONNECT (best effort), closes and frees; NULL-safe; nulls *self_p. */
void sn_worker_destroy(sn_worker_t **self_p);

/* Heartbeat interval and liveness (defaults 1000 ms, 3); MUST be the broker's (the same
 * config's broker.heartbeat_ms and broker.heartbeat_liveness, docs/protocol.md §7). */
void sn_worker_set_heartbeat(sn_worker_t *self, int heartbeat_ms, int liveness);

/* Sets the credit for @service (0 = stop taking new requests for it, 1..1000) and tells
 * the broker at once (READY) if connected, else on the next connection. SN_ERROR for a bad
 * name or credit, or more than 64 services. */
SN_NODISCARD sn_rc_t sn_worker_serve(sn_worker_t *self, const char *service, uint32_t credit);

/* The libzmq socket to poll for ZMQ_POLLIN; changes on reconnect, read it before each poll. */
void *sn_worker_socket(sn_worker_t *self);

/* Next event without blocking: SN_OK with *ev filled (free with sn_worker_event_fini);
 * SN_AGAIN if none. Also runs sn_worker_tick. The worker enforces its credit itself
 * (docs/protocol.md §3.3): a REQUEST for a service it does not serve is answered NAK
 * invalid, one beyond its current credit for the service NAK overloaded, both here, and
 * never returned. A CANCEL is returned only for a request still held (not yet answered):
 * the request is then finished and its credit free; an answer to it would be dropped by
 * the broker as stale. */
SN_NODISCARD sn_rc_t sn_worker_recv(sn_worker_t *self, sn_worker_event_t *ev);
void sn_worker_event_fini(sn_worker_event_t *ev);

/* Answers the request of @ticket with @len envelope bytes (copied) or a NAK (reason 1-6).
 * SN_OK, and the request's unit of credit is free again; SN_DECLINED if the ticket belongs
 * to an earlier connection (the broker that gave it is gone and has answered worker-lost);
 * SN_AGAIN if the socket cannot take it now. Answering a cancelled request is allowed (the
 * broker drops it as stale). */
SN_NODISCARD sn_rc_t sn_worker_reply(sn_worker_t *self, const sn_worker_ticket_t *ticket,
                                     const void *env, size_t len);
SN_NODISCARD sn_rc_t sn_worker_nak(sn_worker_t *self, const sn_worker_ticket_t *ticket,
                                   sn_nak_reason_t reason);

/* Heartbeats, broker-silence detection and reconnect; call at least every interval. */
void sn_worker_tick(sn_worker_t *self);
/* Milliseconds until sn_worker_tick wants to run. */
int sn_worker_timeout_ms(sn_worker_t *self);

/* Sockets created so far (1 after new; +1 per reconnect). */
uint32_t sn_worker_connects(sn_worker_t *self);
/* REQUESTs refused by the worker itself (unknown service or beyond credit), in total. */
uint64_t sn_worker_refused(sn_worker_t *self);
/* True once the broker has answered anything on the current socket since READY. */
bool sn_worker_is_registered(sn_worker_t *self);

#endif
