/* buildpilot's dispatch: the calls and ledger jobs that carry a run's work to the roles
 * that execute it (gate.check, build.local, deploy.local.<host>, verify.check,
 * heal.rollback, heal.retry), their answers turned into BP_EV_RESULT events, and the
 * ledger jobs a run leaves behind when it ends. Loop thread only. */
#ifndef BUILDPILOT_DISPATCH_H
#define BUILDPILOT_DISPATCH_H

#include "buildpilot.h"

/* Every work item @br needs now, from its record alone: a job created, a call sent (again,
 * after BP_RESEND_MS, while its job is queued), or a stored job result applied. */
void bp_dispatch_run_work(bp_t *st, sn_ctx_t *ctx, bp_run_t *br);

/* The transient failure of work (@w, deploy @di) of @br goes to heal.retry: the item's
 * job result is superseded and heal.retry is called (again after a NAK) until it answers. */
void bp_dispatch_retry(bp_t *st, sn_ctx_t *ctx, bp_run_t *br, bp_work_t w, int di);

/* Run @run_id ended: its ledger jobs still queued are claimed and failed ("run ended")
 * so no worker starts them and no leader re-dispatches them; claimed ones are left to
 * their worker (and failed by bp_dispatch_end_job once their lease lapses). */
void bp_dispatch_end_jobs(bp_t *st, sn_ctx_t *ctx, const char *run_id);

/* Fails job @job_id if it is queued and its run is not in flight. True if it did. */
bool bp_dispatch_end_job(bp_t *st, sn_ctx_t *ctx, const char *job_id);

/* Forgets call records of runs that ended (nothing in flight). */
void bp_dispatch_gc(bp_t *st);

/* Frees every call record. */
void bp_dispatch_clear(bp_t *st);

#endif
