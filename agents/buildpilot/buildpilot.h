/* buildpilot's role state, shared by its files: the runs in flight held by the leader
 * (buildpilot.c), the calls and ledger jobs out for them (buildpilot_dispatch.c). The
 * decisions are buildpilot_fsm.c's; the record and its store buildpilot_run.c's. Loop
 * thread only. */
#ifndef BUILDPILOT_H
#define BUILDPILOT_H

#include "buildpilot_fsm.h"

/* A run in flight (the leader holds every non-terminal run). */
typedef struct bp_run {
    bp_pb_run_t *run; /* heap protobuf-c tree, freed with sentinel__v1__run__free_unpacked */
    struct bp_run *next;
} bp_run_t;

/* One work item's call state, by key ("<run>.<tag>[.<target>]" = the job id). */
typedef struct bp_call {
    char key[BP_KEY_MAX];
    char run_id[64];
    bp_work_t work;
    int deploy; /* index in run->deploys, -1 for run-level work */
    bool is_inflight;
    bool is_created;  /* ledger job exists */
    bool is_retrying; /* its transient failure went to heal.retry: the job's result is old */
    int64_t last_send_ms;
    uint32_t naks;
    uint64_t audit_id;     /* the intent of the side effect out (0: none) */
    bool is_audit_refused; /* the last intent was refused (logged once) */
    struct bp_call *next;
} bp_call_t;

typedef struct {
    bp_run_t *runs;
    bp_call_t *calls;
    bool needs_load; /* the in-memory view is not trusted: reload from Redis first */
} bp_t;

/* The run @run_id held in memory, or NULL. */
bp_run_t *bp_find_run(bp_t *st, const char *run_id);

/* Handles @ev for @br and carries out every effect (commits, the end of the run, the
 * events that follow, heal.retry). *first (may be NULL) receives the effect of @ev itself
 * (refusals: nak, note; is_handled). False when a commit failed (the view is reloaded) or
 * this instance does not lead. @br may be freed when the run ended: look it up again. */
bool bp_drive(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, const bp_event_t *ev, bp_effect_t *first);

/* Moves @br on if it can: a queued run starts when it is the oldest of its free
 * environment; a running one joins its per-target work. */
void bp_advance(bp_t *st, sn_ctx_t *ctx, bp_run_t *br);

/* Sends the work run @run_id needs now, without waiting for the tick (step latency). */
void bp_kick(bp_t *st, sn_ctx_t *ctx, const char *run_id);

#endif
