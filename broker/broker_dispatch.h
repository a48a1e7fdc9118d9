/* Service dispatch for the broker (docs/protocol.md §3-§7): peers, services, requests,
 * credit, LRU, bounded queues, deadlines, cancel, heartbeats and broker.services. Internal
 * to the broker thread; it sends on the ROUTER it is given. */
#ifndef BROKER_DISPATCH_H
#define BROKER_DISPATCH_H

#include <zmq.h>

#include "broker_acl.h"
#include "broker_server.h"

typedef struct broker_dispatch broker_dispatch_t;

typedef struct {
    int heartbeat_ms;
    int liveness;
    uint32_t max_queue;
    uint32_t default_deadline_ms;
    int startup_grace_ms;
} broker_dispatch_opts_t;

/* @router, @acl and @stats are borrowed and must outlive the dispatcher. */
broker_dispatch_t *broker_dispatch_new(void *router, broker_acl_t *acl, broker_stats_t *stats,
                                       const broker_dispatch_opts_t *opts);
/* Frees all state (no messages are sent); NULL-safe; nulls *self_p. */
void broker_dispatch_destroy(broker_dispatch_t **self_p);

/* Handles one message received on the ROUTER: @frames[0] is the routing id, @count >= 1.
 * @principal is the sender's principal. The dispatcher may move frames out (they are left
 * empty); the caller still closes all of them. */
void broker_dispatch_on_message(broker_dispatch_t *self, zmq_msg_t *frames, size_t count,
                                const char *principal);

/* Timers: expires queued requests and silent peers, sends heartbeats. Returns the number
 * of ms until it wants to run again. */
int broker_dispatch_tick(broker_dispatch_t *self, int64_t now_ms);

#endif
