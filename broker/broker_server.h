/* The broker as a czmq-style actor (ARCHITECTURE §3, docs/protocol.md): one thread that owns
 * the rpc ROUTER, the event XSUB/XPUB pair and, with CURVE, the ZAP handler, all driven by
 * its own zmq_poll loop. Fully up (endpoints bound) when broker_server_new returns, fully
 * gone when broker_server_destroy returns, so tests run the real broker in-process. */
#ifndef BROKER_SERVER_H
#define BROKER_SERVER_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_proto.h"

typedef struct broker_server broker_server_t;

/* Knobs not in sentinel.yml; zero fields take the defaults. */
typedef struct {
    uint32_t max_queue;           /* queued requests per service, default 1000 */
    uint32_t default_deadline_ms; /* for REQUESTs with deadline 0, default 30000 */
    int startup_grace_ms;         /* unknown services queue this long after start;
                                     0 = heartbeat_ms * liveness, < 0 = none */
} broker_tuning_t;

/* Counters, kept by the broker thread. */
typedef struct {
    uint64_t relayed;                    /* events forwarded XSUB -> XPUB */
    uint64_t publish_refused;            /* events dropped: topic not permitted */
    uint64_t subscribe_refused;          /* subscriptions refused */
    uint64_t subscribed;                 /* subscriptions applied */
    uint64_t malformed;                  /* protocol or event messages refused as malformed */
    uint64_t stale_replies;              /* REPLY/NAK not matching an outstanding request */
    uint64_t revoked_dropped;            /* messages from a revoked key */
    uint64_t serve_refused;              /* READY entries not permitted */
    uint64_t requests;                   /* REQUESTs accepted */
    uint64_t dispatched;                 /* REQUESTs handed to a worker */
    uint64_t replies;                    /* REPLYs delivered to clients */
    uint64_t cancels;                    /* CANCELs applied */
    uint64_t send_failed;                /* sends refused by libzmq (peer gone or at HWM) */
    uint64_t nak[SN_NAK_REASON_MAX + 1]; /* NAKs sent to clients, by reason */
    uint64_t workers;                    /* gauge: registered workers */
    uint64_t peers;                      /* gauge: known peers */
} broker_stats_t;

/* Starts the broker with @cfg (read during the call; NULL endpoints take the defaults,
 * zero heartbeat/liveness/max_frame_bytes too) and @tuning (NULL = defaults). Returns NULL,
 * with the reason logged, if an endpoint is not loopback while CURVE is off, if CURVE is on
 * without a usable server key or ZAP handler, or if a bind fails. */
broker_server_t *broker_server_new(const sn_broker_config_t *cfg, const broker_tuning_t *tuning);

/* Stops the broker thread and closes its sockets; NULL-safe; nulls *self_p. */
void broker_server_destroy(broker_server_t **self_p);

/* The bound endpoint ("rpc", "pub" or "sub"), with any wildcard port resolved
 * (e.g. "tcp://127.0.0.1:49153"). Borrowed; valid until destroy. NULL for another name. */
const char *broker_server_endpoint(broker_server_t *self, const char *which);

/* Copies the current counters into @out (a round trip to the broker thread). */
void broker_server_stats(broker_server_t *self, broker_stats_t *out);

/* Adds a Z85 public key to the deny list: its messages are dropped from now on, even on
 * existing connections, and new connections with it are refused. */
void broker_server_revoke(broker_server_t *self, const char *public_key);

#endif
