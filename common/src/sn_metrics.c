/* Counters and fixed-bucket histograms. Counters are a small fixed table: a process has
 * a few dozen of them, so a linear scan beats a hash table and never allocates after
 * registration. */
#include "sentinel/sn_metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double s_bounds_ms[SN_METRICS_BUCKETS] = {1,   5,   10,   25,   50,    100,
                                                       250, 500, 1000, 5000, 10000, 60000};

typedef struct {
    char *name;
    bool is_histogram;
    int64_t value; /* counter value, or observation count */
    int64_t sum_us;
    int64_t buckets[SN_METRICS_BUCKETS];
} s_metric_t;

struct sn_metrics {
    pthread_mutex_t lock;
    s_metric_t items[SN_METRICS_MAX];
    size_t count;
};

static s_metric_t *s_find(sn_metrics_t *self, const char *name, bool is_histogram);

sn_metrics_t *sn_metrics_new(void)
{
    sn_metrics_t *self = sn_calloc(1, sizeof *self);
    pthread_mutex_init(&self->lock, NULL);
    return self;
}

void sn_metrics_destroy(sn_metrics_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_metrics_t *self = *self_p;
    for (size_t i = 0; i < self->count; i++)
        free(self->items[i].name);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

void sn_metrics_add(sn_metrics_t *self, const char *name, int64_t delta)
{
    s_metric_t *m = s_find(self, name, false);
    if (m)
        __atomic_add_fetch(&m->value, delta, __ATOMIC_RELAXED);
}

void sn_metrics_set(sn_metrics_t *self, const char *name, int64_t value)
{
    s_metric_t *m = s_find(self, name, false);
    if (m)
        __atomic_store_n(&m->value, value, __ATOMIC_RELAXED);
}

int64_t sn_metrics_get(sn_metrics_t *self, const char *name)
{
    pthread_mutex_lock(&self->lock);
    int64_t v = 0;
    for (size_t i = 0; i < self->count; i++)
        if (strcmp(self->items[i].name, name) == 0)
            v = __atomic_load_n(&self->items[i].value, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&self->lock);
    return v;
}

void sn_metrics_observe_ms(sn_metrics_t *self, const char *name, double value_ms)
{
    s_metric_t *m = s_find(self, name, true);
    if (!m)
        return;
    for (size_t b = 0; b < SN_METRICS_BUCKETS; b++)
        if (value_ms <= s_bounds_ms[b])
            __atomic_add_fetch(&m->buckets[b], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&m->sum_us, (int64_t)(value_ms * 1000.0), __ATOMIC_RELAXED);
    __atomic_add_fetch(&m->value, 1, __ATOMIC_RELAXED);
}

void sn_metrics_each(sn_metrics_t *self, sn_metrics_visit_fn *fn, void *arg)
{
    char name[192];
    pthread_mutex_lock(&self->lock);
    for (size_t i = 0; i < self->count; i++) {
        s_metric_t *m = &self->items[i];
        int64_t v = __atomic_load_n(&m->value, __ATOMIC_RELAXED);
        if (!m->is_histogram) {
            fn(arg, m->name, v);
            continue;
        }
        for (size_t b = 0; b < SN_METRICS_BUCKETS; b++) {
            snprintf(name, sizeof name, "%s_bucket_le_%g", m->name, s_bounds_ms[b]);
            fn(arg, name, __atomic_load_n(&m->buckets[b], __ATOMIC_RELAXED));
        }
        snprintf(name, sizeof name, "%s_sum_ms", m->name);
        fn(arg, name, __atomic_load_n(&m->sum_us, __ATOMIC_RELAXED) / 1000);
        snprintf(name, sizeof name, "%s_count", m->name);
        fn(arg, name, v);
    }
    pthread_mutex_unlock(&self->lock);
}

/* Finds or registers @name; NULL (and the observation is lost) when the table is full
 * or @name is registered with the other kind. */
static s_metric_t *s_find(sn_metrics_t *self, const char *name, bool is_histogram)
{
    SN_ASSERT(self && name);
    pthread_mutex_lock(&self->lock);
    s_metric_t *found = NULL;
    for (size_t i = 0; i < self->count && !found; i++)
        if (strcmp(self->items[i].name, name) == 0)
            found = &self->items[i];
    if (!found && self->count < SN_METRICS_MAX) {
        found = &self->items[self->count++];
        found->name = sn_strdup(name);
        found->is_histogram = is_histogram;
    }
    if (found && found->is_histogram != is_histogram)
        found = NULL;
    pthread_mutex_unlock(&self->lock);
    return found;
}
