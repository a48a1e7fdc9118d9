/* Exponential backoff with jitter. */
#include "sentinel/sn_backoff.h"
#include "sentinel/sn_id.h"

void sn_backoff_init(sn_backoff_t *self, int64_t base_ms, int64_t cap_ms)
{
    SN_ASSERT(self && base_ms > 0 && cap_ms >= base_ms);
    self->base_ms = base_ms;
    self->cap_ms = cap_ms;
    self->attempt = 0;
}

int64_t sn_backoff_next(sn_backoff_t *self)
{
    int64_t d = self->base_ms;
    for (uint32_t i = 0; i < self->attempt && d < self->cap_ms; i++)
        d *= 2;
    if (d > self->cap_ms)
        d = self->cap_ms;
    if (self->attempt < 64)
        self->attempt++;
    int64_t half = d / 2;
    return half + (int64_t)(sn_random_u64() % (uint64_t)(d - half + 1));
}

void sn_backoff_reset(sn_backoff_t *self)
{
    self->attempt = 0;
}
