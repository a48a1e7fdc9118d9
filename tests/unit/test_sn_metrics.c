/* Unit tests for sn_metrics. */
#include "sn_test.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "sentinel/sn_metrics.h"

static void s_sum(void *arg, const char *name, int64_t value)
{
    if (strcmp(name, "lat_bucket_le_10") == 0)
        ((int64_t *)arg)[0] = value;
    if (strcmp(name, "lat_count") == 0)
        ((int64_t *)arg)[1] = value;
}

static void *s_adder(void *arg)
{
    for (int i = 0; i < 10000; i++)
        sn_metrics_add(arg, "hits", 1);
    return NULL;
}

static void test_sn_metrics_counters_are_atomic(void **state)
{
    sn_metrics_t *m = sn_metrics_new();
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, s_adder, m);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(sn_metrics_get(m, "hits"), 40000);
    sn_metrics_set(m, "hits", 3);
    assert_int_equal(sn_metrics_get(m, "hits"), 3);
    assert_int_equal(sn_metrics_get(m, "unknown"), 0);
    sn_metrics_destroy(&m);
    assert_null(m);
    sn_metrics_destroy(&m); /* NULL-safe */
}

static void test_sn_metrics_histogram_buckets(void **state)
{
    sn_metrics_t *m = sn_metrics_new();
    sn_metrics_observe_ms(m, "lat", 3);
    sn_metrics_observe_ms(m, "lat", 8);
    sn_metrics_observe_ms(m, "lat", 300);
    sn_metrics_add(m, "lat", 1); /* wrong kind: ignored */
    int64_t got[2] = {0, 0};
    sn_metrics_each(m, s_sum, got);
    assert_int_equal(got[0], 2);
    assert_int_equal(got[1], 3);
    sn_metrics_destroy(&m);
}

static void test_sn_metrics_table_full_is_not_fatal(void **state)
{
    sn_metrics_t *m = sn_metrics_new();
    char name[32];
    for (int i = 0; i < SN_METRICS_MAX + 10; i++) {
        snprintf(name, sizeof name, "c%d", i);
        sn_metrics_add(m, name, 1);
    }
    assert_int_equal(sn_metrics_get(m, "c0"), 1);
    assert_int_equal(sn_metrics_get(m, "c200"), 0);
    sn_metrics_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_metrics_counters_are_atomic),
        cmocka_unit_test(test_sn_metrics_histogram_buckets),
        cmocka_unit_test(test_sn_metrics_table_full_is_not_fatal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
