/* buildpilot's run state machine (ARCHITECTURE §7), malamute style: one table of
 * (run state, event) -> action, one small function per action. An action changes the run
 * record in memory and describes what the caller must do next in a bp_effect_t: which
 * event to commit (with which extra writes), whether the run ends and how, which event
 * to handle after the commit, whether to ask heal.retry. It never touches Redis, the
 * broker or the clock beyond sn_wall_ms(), so tests drive it as a pure function
 * (tests/unit/test_buildpilot_fsm.c); buildpilot.c carries the effects out.
 *
 * Facts about other runs (is the environment free? is this the oldest queued run?) are
 * the caller's: it sends BP_EV_START only when the run may start. */
#ifndef BUILDPILOT_FSM_H
#define BUILDPILOT_FSM_H

#include "buildpilot_run.h"

/* heal.retry calls one run may make for transient failures, whatever autoheal-executor's
 * own budgets (per deploy, per target) still allow. */
#define BP_RUN_RETRY_BUDGET 4

typedef enum {
    BP_EV_NONE = 0,
    BP_EV_START,    /* the queue hands the environment to this run */
    BP_EV_RESULT,   /* an answer to work item (work, deploy): reply, or NULL and why */
    BP_EV_JOIN,     /* per-target work may have all answered: move on if so */
    BP_EV_PROCEED,  /* continue after an approval was recorded */
    BP_EV_DEADLINE, /* the tick: a running step may be past its deadline (now_ms) */
    BP_EV_APPROVE,  /* run.approve by who */
    BP_EV_CANCEL,   /* run.cancel by who (reason) */
    BP_EV_COUNT
} bp_event_kind_t;

typedef struct {
    bp_event_kind_t kind;
    bp_work_t work;             /* RESULT */
    int deploy;                 /* RESULT: index in run->deploys, -1 for run-level work */
    const sn_envelope_t *reply; /* RESULT: borrowed; NULL when the work failed without one */
    const char *why;            /* RESULT without reply: why */
    const char *who;            /* APPROVE, CANCEL: the identity acting */
    const char *reason;         /* CANCEL: the caller's reason (may be NULL) */
    int64_t now_ms;             /* DEADLINE: wall clock */
} bp_event_t;

/* Extra writes of the first commit of an effect (bp_ops_* in buildpilot_run.h). */
enum {
    BP_OPS_TAKE_ENV = 1 << 0,         /* envlock, env.current_run, the queue without the run */
    BP_OPS_APPROVAL_REQUEST = 1 << 1, /* approval:<run> required, approvers, expires */
    BP_OPS_APPROVAL_GRANTED = 1 << 2, /* approval:<run> approved_by, approved_ms */
    BP_OPS_LAST_VERIFIED = 1 << 3,    /* env.last_verified_* = this run */
};

typedef struct {
    bool is_handled;  /* false: no transition for (state, event); nothing changed */
    const char *type; /* commit the record with this event type (NULL: no commit) */
    const char *step; /* label step (static or borrowed from the run) */
    int deploy;       /* event body: deploy index, or -1 for the run */
    const char *label_key, *label_value; /* one more label (borrowed from the run) */
    unsigned ops;                        /* BP_OPS_* of the first commit */
    Sentinel__V1__RunState end;          /* != 0: then end the run in this state (bp_fsm_finish) */
    bp_event_kind_t then;                /* then handle this event (BP_EV_NONE: nothing) */
    bool is_retry;                       /* then ask heal.retry for the event's (work, deploy) */
    const char *nak;   /* refused as a request: this NAK reason; nothing changed */
    const char *note;  /* refused as a request with an answer: this message; nothing changed */
    bool is_committed; /* set by the caller (bp_drive) once the commit of @type succeeded */
} bp_effect_t;

/* Handles @ev for @r (changed in place) under @cfg (borrowed), filling *out. Loop thread
 * or any thread owning @r; no I/O. */
void bp_fsm_handle(const sn_config_t *cfg, bp_pb_run_t *r, const bp_event_t *ev, bp_effect_t *out);

/* Ends @r in terminal @state: open steps closed (cancelled, succeeded or failed as the
 * state says), pending ones skipped, notify done, staging deploys cancelled, @reason
 * (copied; NULL keeps r->reason). The caller commits "run.<state>". */
void bp_fsm_finish(bp_pb_run_t *r, Sentinel__V1__RunState state, const char *reason);

/* True if @r waits for the environment (it does not hold it). */
bool bp_fsm_is_queued(const bp_pb_run_t *r);

/* The name of @kind ("start", "result", ...), for logs and tests. */
const char *bp_fsm_event_name(bp_event_kind_t kind);

#endif
