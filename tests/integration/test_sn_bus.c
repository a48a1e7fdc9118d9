/* Integration tests for sn_bus: a PUB and SUBs through an in-test XSUB/XPUB proxy on
 * tcp://127.0.0.1:*, seq-based gap detection, malformed input, and the flush marker. */
#include "sn_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_bus.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_log.h"

static sn_bus_pub_t *s_pub(sn_test_proxy_t *p)
{
    sn_bus_opts_t o = {.endpoint = p->pub_ep};
    sn_bus_pub_t *pub = sn_bus_pub_new(&o);
    assert_non_null(pub);
    return pub;
}

static sn_bus_sub_t *s_sub(sn_test_proxy_t *p, const char *prefix, bool is_partial)
{
    sn_bus_opts_t o = {.endpoint = p->sub_ep, .is_partial = is_partial};
    sn_bus_sub_t *sub = sn_bus_sub_new(&o);
    assert_non_null(sub);
    sn_bus_sub_subscribe(sub, prefix);
    return sub;
}

/* Packs a Note event stamped from @src (consuming one seq). */
static uint8_t *s_note(sn_source_t *src, const char *type, int64_t n, size_t *len)
{
    char id[SN_ID_LEN + 1];
    sn_envelope_t env;
    sn_envelope_stamp(&env, src, type, id);
    Sentinel__V1__Note note = SENTINEL__V1__NOTE__INIT;
    note.n = n;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_NOTE;
    env.note = &note;
    return sn_envelope_pack(&env, len);
}

static void s_publish_note(sn_bus_pub_t *pub, sn_source_t *src, const char *type, int64_t n)
{
    size_t len = 0;
    uint8_t *b = s_note(src, type, n, &len);
    assert_int_equal(sn_bus_pub_send(pub, type, b, len), SN_OK);
    free(b);
}

/* Waits until the path pub -> proxy -> sub carries messages (the subscription has
 * propagated): the flush marker round trip does exactly that. */
static void s_wait_path(sn_bus_pub_t *pub, sn_bus_sub_t *sub, sn_source_t *src)
{
    assert_int_equal(sn_bus_flush(pub, sub, src, 10000, NULL, NULL), SN_OK);
}

/* Receives the next event that is not a flush marker. */
static sn_rc_t s_next(sn_bus_sub_t *sub, int timeout_ms, sn_bus_event_t *ev)
{
    int64_t deadline = sn_mono_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - sn_mono_ms();
        if (left < 0)
            return SN_AGAIN;
        sn_rc_t rc = sn_bus_sub_recv(sub, (int)left, ev);
        if (rc != SN_OK)
            return rc;
        if (strcmp(ev->topic, SN_BUS_FLUSH_TYPE) != 0)
            return SN_OK;
        sn_bus_event_fini(ev);
    }
}

static void test_sn_bus_roundtrip_in_order(void **state)
{
    sn_test_proxy_t p;
    assert_true(sn_test_proxy_start(&p));
    sn_source_t src;
    sn_source_init(&src, "test", "a");
    sn_bus_pub_t *pub = s_pub(&p);
    sn_bus_sub_t *sub = s_sub(&p, "", false);
    s_wait_path(pub, sub, &src);

    enum { N = 200 };
    size_t len0 = 0;
    uint8_t *first = s_note(&src, "test.note", 0, &len0);
    assert_int_equal(sn_bus_pub_send(pub, "test.note", first, len0), SN_OK);
    for (int i = 1; i < N; i++)
        s_publish_note(pub, &src, "test.note", i);
    for (int i = 0; i < N; i++) {
        sn_bus_event_t ev;
        assert_int_equal(s_next(sub, 5000, &ev), SN_OK);
        assert_string_equal(ev.topic, "test.note");
        assert_int_equal(ev.env->body_case, SENTINEL__V1__ENVELOPE__BODY_NOTE);
        assert_int_equal(ev.env->note->n, i);
        assert_false(ev.is_gap);
        assert_false(ev.is_duplicate);
        assert_int_equal(ev.env->incarnation, src.incarnation);
        if (i == 0) { /* bytes travel unchanged */
            assert_int_equal(ev.raw_len, len0);
            assert_memory_equal(ev.raw, first, len0);
        }
        sn_bus_event_fini(&ev);
    }
    free(first);
    sn_bus_stats_t st;
    sn_bus_sub_stats(sub, &st);
    assert_true(st.received >= N + 1); /* N notes and at least one flush marker */
    assert_int_equal(st.malformed, 0);
    assert_int_equal(st.gaps, 0);
    assert_true(sn_bus_pub_sent(pub) >= N + 1);

    sn_bus_sub_destroy(&sub);
    sn_bus_pub_destroy(&pub);
    assert_null(sub);
    assert_null(pub);
    sn_bus_sub_destroy(&sub); /* NULL-safe */
    sn_bus_pub_destroy(NULL);
    sn_test_proxy_stop(&p);
}

static void test_sn_bus_prefix_subscription(void **state)
{
    sn_test_proxy_t p;
    assert_true(sn_test_proxy_start(&p));
    sn_source_t src;
    sn_source_init(&src, "test", "b");
    sn_bus_pub_t *pub = s_pub(&p);
    sn_bus_sub_t *sub = s_sub(&p, "deploy.", true);
    s_wait_path(pub, sub, &src);
    s_publish_note(pub, &src, "run.started", 1);
    s_publish_note(pub, &src, "deploy.promoted", 2);
    s_publish_note(pub, &src, "run.finished", 3);
    s_publish_note(pub, &src, "deploy.rolled_back", 4);
    sn_bus_event_t ev;
    assert_int_equal(s_next(sub, 5000, &ev), SN_OK);
    assert_string_equal(ev.topic, "deploy.promoted");
    sn_bus_event_fini(&ev);
    assert_int_equal(s_next(sub, 5000, &ev), SN_OK);
    assert_string_equal(ev.topic, "deploy.rolled_back");
    assert_false(ev.is_gap); /* partial subscription: seq jumps are expected */
    sn_bus_event_fini(&ev);
    sn_bus_sub_destroy(&sub);
    sn_bus_pub_destroy(&pub);
    sn_test_proxy_stop(&p);
}

typedef struct {
    int calls;
    uint64_t missed;
} s_gap_seen_t;

static void s_on_gap(void *arg, const sn_bus_event_t *ev)
{
    s_gap_seen_t *g = arg;
    g->calls++;
    g->missed += ev->missed;
}

static void test_sn_bus_gap_detection(void **state)
{
    sn_test_proxy_t p;
    assert_true(sn_test_proxy_start(&p));
    sn_source_t src;
    sn_source_init(&src, "test", "c");
    sn_bus_pub_t *pub = s_pub(&p);
    sn_bus_sub_t *sub = s_sub(&p, "test.", false);
    s_gap_seen_t seen = {0};
    sn_bus_sub_set_gap_handler(sub, s_on_gap, &seen);
    s_wait_path(pub, sub, &src);

    sn_bus_event_t ev;
    s_publish_note(pub, &src, "test.a", 1); /* seq 1: first seen, never a gap */
    s_publish_note(pub, &src, "test.a", 2); /* seq 2 */
    (void)sn_source_next_seq(&src);         /* seq 3 and 4 are lost */
    (void)sn_source_next_seq(&src);
    size_t dup_len = 0;
    uint8_t *dup = s_note(&src, "test.a", 5, &dup_len); /* seq 5 */
    assert_int_equal(sn_bus_pub_send(pub, "test.a", dup, dup_len), SN_OK);
    assert_int_equal(sn_bus_pub_send(pub, "test.a", dup, dup_len), SN_OK); /* again */
    free(dup);

    for (int i = 0; i < 2; i++) {
        assert_int_equal(s_next(sub, 5000, &ev), SN_OK);
        assert_false(ev.is_gap);
        sn_bus_event_fini(&ev);
    }
    assert_int_equal(s_next(sub, 5000, &ev), SN_OK);
    assert_int_equal(ev.env->seq, 5);
    assert_true(ev.is_gap);
    assert_int_equal(ev.missed, 2);
    sn_bus_event_fini(&ev);
    assert_int_equal(seen.calls, 1);
    assert_int_equal(seen.missed, 2);
    assert_int_equal(s_next(sub, 5000, &ev), SN_OK);
    assert_true(ev.is_duplicate);
    assert_false(ev.is_gap);
    sn_bus_event_fini(&ev);

    /* The process restarts: a new incarnation starting at seq 1 is not a gap... */
    sn_source_t again = src;
    again.incarnation = src.incarnation + 1;
    again.seq = 0;
    s_publish_note(pub, &again, "test.a", 6);
    assert_int_equal(s_next(sub, 5000, &ev), SN_OK);
    assert_int_equal(ev.env->seq, 1);
    assert_false(ev.is_gap);
    sn_bus_event_fini(&ev);
    /* ...but one whose first event we see is seq 4 is: 1..3 were lost. */
    sn_source_t third = src;
    third.incarnation = src.incarnation + 2;
    third.seq = 3;
    s_publish_note(pub, &third, "test.a", 7);
    assert_int_equal(s_next(sub, 5000, &ev), SN_OK);
    assert_int_equal(ev.env->seq, 4);
    assert_true(ev.is_gap);
    assert_int_equal(ev.missed, 3);
    sn_bus_event_fini(&ev);

    sn_bus_stats_t st;
    sn_bus_sub_stats(sub, &st);
    assert_int_equal(st.gaps, 2);
    assert_int_equal(st.missed, 5);
    assert_int_equal(st.duplicates, 1);
    assert_int_equal(seen.calls, 2);
    sn_bus_sub_destroy(&sub);
    sn_bus_pub_destroy(&pub);
    sn_test_proxy_stop(&p);
}

static void test_sn_bus_source_table_bounded(void **state)
{
    sn_test_proxy_t p;
    assert_true(sn_test_proxy_start(&p));
    sn_bus_pub_t *pub = s_pub(&p);
    sn_bus_opts_t o = {.endpoint = p.sub_ep, .max_sources = 2};
    sn_bus_sub_t *sub = sn_bus_sub_new(&o);
    assert_non_null(sub);
    sn_bus_sub_subscribe(sub, "");
    sn_source_t srcs[3];
    for (int i = 0; i < 3; i++) {
        char inst[8];
        snprintf(inst, sizeof inst, "%d", i);
        sn_source_init(&srcs[i], "many", inst);
    }
    s_wait_path(pub, sub, &srcs[0]);
    for (int i = 0; i < 3; i++)
        s_publish_note(pub, &srcs[i], "test.x", i);
    for (int i = 0; i < 3; i++) {
        sn_bus_event_t ev;
        assert_int_equal(s_next(sub, 5000, &ev), SN_OK);
        sn_bus_event_fini(&ev);
    }
    sn_bus_stats_t st;
    sn_bus_sub_stats(sub, &st);
    assert_int_equal(st.sources_reset, 1);
    assert_int_equal(st.gaps, 0);

    /* A source first seen at seq 3 lost its first two events (a publisher that started
     * after us and published before its connection was up). */
    sn_source_t late;
    sn_source_init(&late, "late", "0");
    late.seq = 2;
    s_publish_note(pub, &late, "test.x", 9);
    sn_bus_event_t ev;
    assert_int_equal(s_next(sub, 5000, &ev), SN_OK);
    assert_true(ev.is_gap);
    assert_int_equal(ev.missed, 2);
    sn_bus_event_fini(&ev);
    sn_bus_sub_destroy(&sub);
    sn_bus_pub_destroy(&pub);
    sn_test_proxy_stop(&p);
}

static void test_sn_bus_malformed_counted(void **state)
{
    sn_test_proxy_t p;
    assert_true(sn_test_proxy_start(&p));
    sn_source_t src;
    sn_source_init(&src, "test", "d");
    sn_bus_pub_t *pub = s_pub(&p);
    sn_bus_sub_t *sub = s_sub(&p, "", false);
    s_wait_path(pub, sub, &src);

    /* A raw PUB that sends what a broken or hostile publisher might. */
    zsock_t *raw = zsock_new(ZMQ_PUB);
    assert_int_equal(zsock_connect(raw, "%s", p.pub_ep), 0);
    /* Wait for the raw path too: a valid event from it must come through. */
    size_t vlen = 0;
    uint8_t *valid = s_note(&src, "test.valid", 1, &vlen);
    bool through = false;
    for (int64_t end = sn_mono_ms() + 10000; !through && sn_mono_ms() < end;) {
        zsock_send(raw, "sb", "test.valid", valid, vlen);
        sn_bus_event_t ev;
        if (sn_bus_sub_recv(sub, 100, &ev) == SN_OK) {
            through = strcmp(ev.topic, "test.valid") == 0;
            sn_bus_event_fini(&ev);
        }
    }
    assert_true(through);
    while (true) { /* drain the extra copies */
        sn_bus_event_t ev;
        if (sn_bus_sub_recv(sub, 200, &ev) != SN_OK)
            break;
        sn_bus_event_fini(&ev);
    }
    sn_bus_stats_t before;
    sn_bus_sub_stats(sub, &before);

    size_t other_len = 0;
    uint8_t *other = s_note(&src, "test.other", 2, &other_len);
    uint8_t garbage[] = {0xff, 0x01, 0x02, 0x80, 0x80, 0x80};
    int bad = 0;
    zsock_send(raw, "s", "test.one-frame");
    bad++;
    zsock_send(raw, "sbs", "test.three", valid, vlen, "extra");
    bad++;
    zsock_send(raw, "sb", "test.garbage", garbage, sizeof garbage);
    bad++;
    zsock_send(raw, "sb", "test.valid", other, other_len); /* topic != type */
    bad++;
    zsock_send(raw, "sb", "test.empty", "", (size_t)0);
    bad++;
    zsock_send(raw, "bb", "test\0nul", (size_t)8, valid, vlen); /* NUL inside the topic */
    bad++;
    zsock_send(raw, "sb", "test.valid", valid, vlen); /* and a good one after */
    free(other);
    free(valid);

    sn_bus_event_t ev;
    assert_int_equal(sn_bus_sub_recv(sub, 5000, &ev), SN_OK);
    assert_string_equal(ev.topic, "test.valid");
    sn_bus_event_fini(&ev);
    sn_bus_stats_t st;
    sn_bus_sub_stats(sub, &st);
    assert_int_equal(st.malformed - before.malformed, bad);
    assert_int_equal(st.received - before.received, 1);
    zsock_destroy(&raw);
    sn_bus_sub_destroy(&sub);
    sn_bus_pub_destroy(&pub);
    sn_test_proxy_stop(&p);
}

static void test_sn_bus_publish_refuses_bad_input(void **state)
{
    sn_test_proxy_t p;
    assert_true(sn_test_proxy_start(&p));
    sn_bus_pub_t *pub = s_pub(&p);
    uint8_t b[4] = {1, 2, 3, 4};
    assert_int_equal(sn_bus_pub_send(pub, "", b, sizeof b), SN_ERROR);
    assert_int_equal(sn_bus_pub_send(pub, NULL, b, sizeof b), SN_ERROR);
    assert_int_equal(sn_bus_pub_send(pub, "t", b, 0), SN_ERROR);
    assert_int_equal(sn_bus_pub_send(pub, "t", NULL, 4), SN_ERROR);
    char long_topic[300];
    memset(long_topic, 'a', sizeof long_topic - 1);
    long_topic[sizeof long_topic - 1] = '\0';
    assert_int_equal(sn_bus_pub_send(pub, long_topic, b, sizeof b), SN_ERROR);
    size_t big_len = SN_MAX_FRAME_BYTES + 1;
    uint8_t *big = sn_calloc(1, big_len);
    assert_int_equal(sn_bus_pub_send(pub, "t", big, big_len), SN_ERROR);
    free(big);
    assert_int_equal(sn_bus_pub_sent(pub), 0);
    sn_bus_pub_destroy(&pub);

    sn_bus_opts_t o = {.endpoint = "nonsense://x"};
    assert_null(sn_bus_pub_new(&o));
    assert_null(sn_bus_sub_new(&o));
    sn_bus_opts_t c = {.endpoint = p.pub_ep, .curve_server_key = "short"};
    assert_null(sn_bus_pub_new(&c));
    sn_test_proxy_stop(&p);
}

/* A burst, then flush: the marker comes back only after everything before it, so a
 * second subscriber sees the whole burst in order before the marker. */
static void test_sn_bus_flush_drains_tail(void **state)
{
    sn_test_proxy_t p;
    assert_true(sn_test_proxy_start(&p));
    sn_source_t src;
    sn_source_init(&src, "test", "e");
    sn_bus_pub_t *pub = s_pub(&p);
    sn_bus_sub_t *own = s_sub(&p, SN_BUS_FLUSH_TYPE, false);
    sn_bus_sub_t *watcher = s_sub(&p, "", false);
    s_wait_path(pub, own, &src);
    s_wait_path(pub, watcher, &src);

    enum { N = 500 };
    for (int i = 0; i < N; i++)
        s_publish_note(pub, &src, "test.burst", i);
    assert_int_equal(sn_bus_flush(pub, own, &src, 5000, NULL, NULL), SN_OK);
    sn_bus_pub_destroy(&pub); /* closes at once, linger 0 */

    int got = 0;
    for (;;) {
        sn_bus_event_t ev;
        if (s_next(watcher, 2000, &ev) != SN_OK)
            break;
        assert_int_equal(ev.env->note->n, got);
        assert_false(ev.is_gap);
        got++;
        sn_bus_event_fini(&ev);
        if (got == N)
            break;
    }
    assert_int_equal(got, N);
    sn_bus_sub_destroy(&own);
    sn_bus_sub_destroy(&watcher);
    sn_test_proxy_stop(&p);
}

static void test_sn_bus_flush_times_out_without_broker(void **state)
{
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", sn_test_free_port());
    sn_bus_opts_t o = {.endpoint = ep};
    sn_bus_pub_t *pub = sn_bus_pub_new(&o);
    sn_bus_sub_t *sub = sn_bus_sub_new(&o);
    assert_non_null(pub);
    assert_non_null(sub);
    sn_source_t src;
    sn_source_init(&src, "test", "f");
    int64_t t0 = sn_mono_ms();
    assert_int_equal(sn_bus_flush(pub, sub, &src, 300, NULL, NULL), SN_AGAIN);
    int64_t took = sn_mono_ms() - t0;
    assert_true(took >= 300 && took < 2000);
    sn_bus_sub_destroy(&sub);
    sn_bus_pub_destroy(&pub);
}

int main(void)
{
    sn_log_init("test", "bus");
    zsys_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_bus_roundtrip_in_order),
        cmocka_unit_test(test_sn_bus_prefix_subscription),
        cmocka_unit_test(test_sn_bus_gap_detection),
        cmocka_unit_test(test_sn_bus_source_table_bounded),
        cmocka_unit_test(test_sn_bus_malformed_counted),
        cmocka_unit_test(test_sn_bus_publish_refuses_bad_input),
        cmocka_unit_test(test_sn_bus_flush_drains_tail),
        cmocka_unit_test(test_sn_bus_flush_times_out_without_broker),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
