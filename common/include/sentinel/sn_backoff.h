/* Exponential backoff with jitter ("full jitter" over the upper half, so a herd of
 * reconnecting peers spreads out but never retries instantly). A plain value struct. */
#ifndef SN_BACKOFF_H
#define SN_BACKOFF_H

#include "sentinel/sn_common.h"

typedef struct {
    int64_t base_ms;
    int64_t cap_ms;
    uint32_t attempt;
} sn_backoff_t;

void sn_backoff_init(sn_backoff_t *self, int64_t base_ms, int64_t cap_ms);
/* The delay before the next attempt, in [d/2, d] with d = min(cap, base * 2^attempt). */
int64_t sn_backoff_next(sn_backoff_t *self);
/* Back to the first attempt (after a success). */
void sn_backoff_reset(sn_backoff_t *self);

#endif
