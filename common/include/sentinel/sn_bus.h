/* The event bus seen from an agent: a publisher (PUB connected to the broker's `pub`
 * endpoint) that sends [topic][Envelope bytes] without re-encoding, and a subscriber (SUB
 * connected to the broker's `sub` endpoint) that checks every message, tracks
 * (source, incarnation, seq) per source and reports gaps. The bus is best effort
 * (ARCHITECTURE §3): a gap tells the owner to repair from the journal (sn_journal), which
 * is the record. sn_bus_flush drains a publisher before shutdown (PERFORMANCE lesson 5).
 *
 * Every object here belongs to the thread that created it (it owns a zsock). */
#ifndef SN_BUS_H
#define SN_BUS_H

#include <czmq.h>

#include "sentinel/sn_common.h"
#include "sentinel/sn_envelope.h"

/* The type (= topic) of flush markers. */
#define SN_BUS_FLUSH_TYPE "sentinel.flush"

/* Socket settings shared by publishers and subscribers. Zero fields take the defaults of
 * zeromq-notes §4 (heartbeat 5000/15000/15000 ms, reconnect 250..10000 ms, max frame
 * SN_MAX_FRAME_BYTES, HWM 1000). Strings are borrowed for the duration of _new. */
typedef struct {
    const char *endpoint;         /* broker's pub endpoint (publisher) or sub endpoint */
    const char *curve_server_key; /* broker's public key, Z85; NULL: no CURVE */
    const char *curve_public_key; /* this process's key pair, Z85 (with curve_server_key) */
    const char *curve_secret_key;
    int64_t max_frame_bytes; /* ZMQ_MAXMSGSIZE and the largest envelope accepted */
    int hwm;                 /* SNDHWM (publisher) or RCVHWM (subscriber), messages */
    int heartbeat_ivl_ms;
    int heartbeat_timeout_ms;
    /* Subscriber only: set when the subscription does not cover every topic its sources
     * publish, so seq jumps are expected and are not reported as gaps. */
    bool is_partial;
    /* Subscriber only: how many sources are tracked at most (default 4096); when full the
     * table is cleared (counted in sources_reset) rather than grown. */
    size_t max_sources;
} sn_bus_opts_t;

/* ---- publisher --------------------------------------------------------------------- */

typedef struct sn_bus_pub sn_bus_pub_t;

/* Creates a PUB socket and connects it to @opts->endpoint. Returns NULL (logged) on a bad
 * endpoint or bad CURVE keys. Until the connection is up and the broker's subscription
 * has arrived, a PUB drops what it is given: a process should wait for the path (one
 * sn_bus_flush round trip) before its first event, and subscribers see any loss as a
 * gap anyway. */
sn_bus_pub_t *sn_bus_pub_new(const sn_bus_opts_t *opts);
/* Closes the socket (linger 0: call sn_bus_flush first to be sure the tail went out),
 * frees, sets *self_p = NULL. NULL-safe. */
void sn_bus_pub_destroy(sn_bus_pub_t **self_p);

/* Sends [topic][@env_len bytes of @env] as they are. Never blocks: the bus drops
 * silently at a full queue (ARCHITECTURE §3). SN_ERROR: empty/over-long topic, empty or
 * oversized body; SN_AGAIN: libzmq refused the send (interrupted, terminating). */
SN_NODISCARD sn_rc_t sn_bus_pub_send(sn_bus_pub_t *self, const char *topic, const void *env,
                                     size_t env_len);
/* Packs @env and sends it under topic env->type. */
SN_NODISCARD sn_rc_t sn_bus_pub_send_env(sn_bus_pub_t *self, const sn_envelope_t *env);
/* Messages handed to libzmq so far. */
uint64_t sn_bus_pub_sent(const sn_bus_pub_t *self);

/* ---- subscriber -------------------------------------------------------------------- */

typedef struct sn_bus_sub sn_bus_sub_t;

/* One message taken off the bus. Everything belongs to the event; sn_bus_event_fini
 * frees it. */
typedef struct {
    char *topic;
    sn_envelope_t *env; /* decoded and checked; env->type equals topic */
    uint8_t *raw;       /* the envelope bytes as received (what the journal holds) */
    size_t raw_len;
    /* Set when messages of env->source were lost before this one: a seq jump within an
     * incarnation, or a new incarnation (or a source not seen before) that does not start
     * at 1. A late joiner thus gets one gap per source already running; one replay from
     * the journal repairs them all. */
    bool is_gap;
    uint64_t missed;   /* how many seq numbers were skipped (0 without a gap) */
    bool is_duplicate; /* seq not above the last one seen for this incarnation */
} sn_bus_event_t;

void sn_bus_event_fini(sn_bus_event_t *ev);

/* Called for each gap as it is found, on the owner's thread, before the event is
 * returned (optional; the event's is_gap flag says the same). */
typedef void(sn_bus_gap_fn)(void *arg, const sn_bus_event_t *ev);

typedef struct {
    uint64_t received;      /* well-formed events returned */
    uint64_t malformed;     /* refused: frame count, topic, size, unparsable, topic != type */
    uint64_t gaps;          /* gap reports */
    uint64_t missed;        /* sum of missed seq numbers over all gaps */
    uint64_t duplicates;    /* events whose seq was not above the last one */
    uint64_t sources_reset; /* times the source table was full and cleared */
} sn_bus_stats_t;

/* Creates a SUB socket connected to @opts->endpoint, subscribed to nothing yet. */
sn_bus_sub_t *sn_bus_sub_new(const sn_bus_opts_t *opts);
void sn_bus_sub_destroy(sn_bus_sub_t **self_p);
/* Subscribes to every topic starting with @prefix ("" = all). Takes effect at once
 * locally; the broker learns it after a round trip (slow joiner: earlier events are
 * missed, which is why completeness comes from the journal). */
void sn_bus_sub_subscribe(sn_bus_sub_t *self, const char *prefix);
void sn_bus_sub_unsubscribe(sn_bus_sub_t *self, const char *prefix);
/* Optional gap callback (@fn borrowed, NULL to remove). */
void sn_bus_sub_set_gap_handler(sn_bus_sub_t *self, sn_bus_gap_fn *fn, void *arg);
/* The socket, to register with a zpoller/zloop (borrowed; read it only through
 * sn_bus_sub_recv). */
zsock_t *sn_bus_sub_sock(sn_bus_sub_t *self);

/* Waits up to @timeout_ms (0: do not wait) for the next well-formed event and fills @ev
 * (caller's storage, to be released with sn_bus_event_fini). Malformed messages are
 * counted, logged at most once per second and skipped. SN_OK: @ev filled; SN_AGAIN:
 * nothing before the deadline (or interrupted). */
SN_NODISCARD sn_rc_t sn_bus_sub_recv(sn_bus_sub_t *self, int timeout_ms, sn_bus_event_t *ev);
void sn_bus_sub_stats(const sn_bus_sub_t *self, sn_bus_stats_t *out);

/* ---- shutdown ---------------------------------------------------------------------- */

/* Events read by sn_bus_flush while it waits for its marker; the callee may keep nothing
 * of @ev after returning (it is finalised by the caller). */
typedef void(sn_bus_event_fn)(void *arg, const sn_bus_event_t *ev);

/* Drains @pub before shutdown: publishes a FlushMarker (type SN_BUS_FLUSH_TYPE, a random
 * token, stamped from @src with seq 0 so that it never counts as a gap) and reads @sub,
 * which this call subscribes to SN_BUS_FLUSH_TYPE, until that marker comes back. Since
 * one connection delivers in order, everything @pub sent before has then reached the
 * broker. The marker is re-sent every 100 ms (the subscription may still be
 * propagating). Other events read meanwhile go to @on_event (NULL: dropped). SN_OK: the
 * marker came back; SN_AGAIN: @timeout_ms passed first. */
SN_NODISCARD sn_rc_t sn_bus_flush(sn_bus_pub_t *pub, sn_bus_sub_t *sub, sn_source_t *src,
                                  int timeout_ms, sn_bus_event_fn *on_event, void *arg);

#endif
