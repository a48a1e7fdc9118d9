/* Per-process counters and latency histograms. Pushed with the agent's heartbeat into
 * agent:<role>:<instance> and rendered by the gateway on /metrics. Thread-safe: counters
 * are atomics, registration takes a lock. */
#ifndef SN_METRICS_H
#define SN_METRICS_H

#include "sentinel/sn_common.h"

typedef struct sn_metrics sn_metrics_t;

#define SN_METRICS_MAX 128
#define SN_METRICS_BUCKETS 12

sn_metrics_t *sn_metrics_new(void);
void sn_metrics_destroy(sn_metrics_t **self_p);

/* Adds @delta to counter @name (created at 0 on first use; @name copied). */
void sn_metrics_add(sn_metrics_t *self, const char *name, int64_t delta);
/* Sets gauge-like counter @name to @value. */
void sn_metrics_set(sn_metrics_t *self, const char *name, int64_t value);
/* Current value of @name, 0 if unknown. */
int64_t sn_metrics_get(sn_metrics_t *self, const char *name);
/* Records one observation of @name in milliseconds (buckets 1 ms .. 60 s, plus sum/count). */
void sn_metrics_observe_ms(sn_metrics_t *self, const char *name, double value_ms);

/* Visits every counter (histograms appear as name_bucket_le_<ms>, name_sum_ms, name_count). */
typedef void(sn_metrics_visit_fn)(void *arg, const char *name, int64_t value);
void sn_metrics_each(sn_metrics_t *self, sn_metrics_visit_fn *fn, void *arg);

#endif
