/* Unit tests for sn_proto: round trips of every command in both directions, the worked
 * example of docs/protocol.md byte for byte, and every malformed case refused. */
#include "sn_test.h"

#include <string.h>
#include <zmq.h>

#include "sentinel/sn_proto.h"

#define B(s) ((sn_proto_bytes_t){(const uint8_t *)(s), sizeof(s) - 1})

static const uint8_t s_route[5] = {0x00, 0x6B, 0x8B, 0x45, 0x67};

/* Encodes @m, decodes it back, and checks the frame count. */
static void s_roundtrip(const sn_proto_msg_t *m, sn_proto_dir_t dir, size_t want_frames,
                        sn_proto_msg_t *back)
{
    sn_proto_bytes_t frames[SN_PROTO_MAX_FRAMES];
    sn_proto_scratch_t scratch;
    size_t n = sn_proto_encode(m, dir, frames, &scratch);
    assert_int_equal(n, want_frames);
    const char *why = NULL;
    assert_int_equal(sn_proto_decode(frames, n, dir, back, &why), SN_OK);
    assert_int_equal(back->cmd, m->cmd);
}

static void s_bytes_eq(sn_proto_bytes_t a, sn_proto_bytes_t b)
{
    assert_int_equal(a.len, b.len);
    if (a.len)
        assert_memory_equal(a.data, b.data, a.len);
}

static void test_sn_proto_roundtrip_all_commands(void **state)
{
    sn_proto_msg_t m, back;
    memset(&m, 0, sizeof m);
    m.cmd = SN_PROTO_READY;
    m.entry_count = 2;
    m.entries[0] = (sn_proto_entry_t){B("echo"), 4};
    m.entries[1] = (sn_proto_entry_t){B("deploy.cloudflare"), 0};
    s_roundtrip(&m, SN_PROTO_UP, 3, &back);
    assert_int_equal(back.entry_count, 2);
    s_bytes_eq(back.entries[1].service, B("deploy.cloudflare"));
    assert_int_equal(back.entries[0].credit, 4);

    memset(&m, 0, sizeof m);
    m.cmd = SN_PROTO_REQUEST;
    m.request_id = 0x0102030405060708ull;
    m.deadline_ms = 5000;
    m.attempt = 3;
    m.service = B("echo");
    m.envelope = B("\x1a\x01t");
    s_roundtrip(&m, SN_PROTO_UP, 4, &back);
    assert_true(back.request_id == m.request_id);
    assert_int_equal(back.deadline_ms, 5000);
    assert_int_equal(back.attempt, 3);
    s_bytes_eq(back.envelope, m.envelope);
    m.principal = B("anonymous");
    m.route = (sn_proto_bytes_t){s_route, sizeof s_route};
    s_roundtrip(&m, SN_PROTO_DOWN, 6, &back);
    s_bytes_eq(back.principal, B("anonymous"));
    s_bytes_eq(back.route, m.route);

    memset(&m, 0, sizeof m);
    m.cmd = SN_PROTO_REPLY;
    m.request_id = 9;
    m.attempt = 2;
    m.envelope = B("");
    m.route = (sn_proto_bytes_t){s_route, sizeof s_route};
    s_roundtrip(&m, SN_PROTO_UP, 4, &back);
    s_bytes_eq(back.route, m.route);
    assert_int_equal(back.envelope.len, 0);
    s_roundtrip(&m, SN_PROTO_DOWN, 3, &back);
    assert_int_equal(back.route.len, 0);

    m.cmd = SN_PROTO_NAK;
    m.reason = SN_NAK_OVERLOADED;
    s_roundtrip(&m, SN_PROTO_UP, 4, &back);
    assert_int_equal(back.reason, SN_NAK_OVERLOADED);
    s_roundtrip(&m, SN_PROTO_DOWN, 3, &back);
    assert_int_equal(back.reason, SN_NAK_OVERLOADED);

    m.cmd = SN_PROTO_CANCEL;
    s_roundtrip(&m, SN_PROTO_UP, 2, &back);
    s_roundtrip(&m, SN_PROTO_DOWN, 3, &back);
    s_bytes_eq(back.route, m.route);

    memset(&m, 0, sizeof m);
    m.cmd = SN_PROTO_HEARTBEAT;
    m.flags = SN_PROTO_HB_WORKER;
    s_roundtrip(&m, SN_PROTO_UP, 2, &back);
    assert_int_equal(back.flags, SN_PROTO_HB_WORKER);
    m.cmd = SN_PROTO_DISCONNECT;
    s_roundtrip(&m, SN_PROTO_DOWN, 1, &back);
}

/* docs/protocol.md §10, byte for byte. */
static void test_sn_proto_worked_example(void **state)
{
    sn_proto_msg_t m = {.cmd = SN_PROTO_REQUEST,
                        .request_id = 1,
                        .deadline_ms = 5000,
                        .attempt = 1,
                        .service = B("echo"),
                        .envelope = B("\x1a\x01\x74")};
    sn_proto_bytes_t f[SN_PROTO_MAX_FRAMES];
    sn_proto_scratch_t sc;
    assert_int_equal(sn_proto_encode(&m, SN_PROTO_UP, f, &sc), 4);
    assert_memory_equal(f[0].data, "\x53\x4e\x50\x01\x02", 5);
    assert_memory_equal(f[2].data, "\0\0\0\0\0\0\0\x01\0\0\x13\x88\0\0\0\x01", 16);

    sn_proto_msg_t r = {.cmd = SN_PROTO_REPLY,
                        .request_id = 1,
                        .attempt = 1,
                        .route = {s_route, 5},
                        .envelope = B("\x1a\x01\x74")};
    assert_int_equal(sn_proto_encode(&r, SN_PROTO_UP, f, &sc), 4);
    assert_memory_equal(f[0].data, "\x53\x4e\x50\x01\x03", 5);
    assert_memory_equal(f[1].data, "\0\0\0\0\0\0\0\x01\0\0\0\x01", 12);
    assert_memory_equal(f[2].data, s_route, 5);

    sn_proto_msg_t rd = {.cmd = SN_PROTO_READY, .entry_count = 1};
    rd.entries[0] = (sn_proto_entry_t){B("echo"), 4};
    assert_int_equal(sn_proto_encode(&rd, SN_PROTO_UP, f, &sc), 2);
    assert_int_equal(f[1].len, 6);
    assert_memory_equal(f[1].data, "\x00\x04\x65\x63\x68\x6f", 6);
}

/* Decodes @n frames and expects refusal with reason @want. */
static void s_refused(const sn_proto_bytes_t *f, size_t n, sn_proto_dir_t dir, const char *want)
{
    sn_proto_msg_t m;
    const char *why = NULL;
    assert_int_equal(sn_proto_decode(f, n, dir, &m, &why), SN_ERROR);
    assert_non_null(why);
    assert_string_equal(why, want);
}

static void test_sn_proto_malformed_header(void **state)
{
    sn_proto_bytes_t f[SN_PROTO_MAX_FRAMES + 2] = {{0}};
    s_refused(f, 0, SN_PROTO_UP, "too-few-frames");
    f[0] = B("SNP\x01");
    s_refused(f, 1, SN_PROTO_UP, "bad-header");
    f[0] = B("SNP\x01\x06\x00");
    s_refused(f, 1, SN_PROTO_UP, "bad-header");
    f[0] = B("SNQ\x01\x06");
    s_refused(f, 1, SN_PROTO_UP, "bad-signature");
    f[0] = B("SNP\x02\x06");
    s_refused(f, 1, SN_PROTO_UP, "bad-version");
    f[0] = B("SNP\x01\x09");
    s_refused(f, 1, SN_PROTO_UP, "unknown-command");
    f[0] = B("SNP\x01\x00");
    s_refused(f, 1, SN_PROTO_UP, "unknown-command");
    f[0] = B("SNP\x01\x06");
    for (size_t i = 1; i < SN_PROTO_MAX_FRAMES + 1; i++)
        f[i] = B("\x00");
    s_refused(f, SN_PROTO_MAX_FRAMES + 1, SN_PROTO_UP, "too-many-frames");
    /* An empty frame list pointer. */
    sn_proto_msg_t m;
    const char *why = NULL;
    assert_int_equal(sn_proto_decode(NULL, 3, SN_PROTO_UP, &m, &why), SN_ERROR);
}

static void test_sn_proto_malformed_ready(void **state)
{
    sn_proto_bytes_t f[SN_PROTO_MAX_SERVICES + 2] = {{0}};
    f[0] = B("SNP\x01\x01");
    s_refused(f, 1, SN_PROTO_UP, "too-few-frames");
    f[1] = B("\x00\x01"
             "echo");
    s_refused(f, 2, SN_PROTO_DOWN, "wrong-direction");
    f[1] = B("\x03\xe9"
             "echo"); /* 1001 */
    s_refused(f, 2, SN_PROTO_UP, "bad-credit");
    f[1] = B("\x00\x01");
    s_refused(f, 2, SN_PROTO_UP, "bad-name");
    f[1] = B("\x00\x01"
             "ec ho");
    s_refused(f, 2, SN_PROTO_UP, "bad-name");
    f[1] = B("\x00");
    s_refused(f, 2, SN_PROTO_UP, "bad-name");
    for (size_t i = 1; i <= SN_PROTO_MAX_SERVICES + 1; i++)
        f[i] = B("\x00\x01"
                 "echo");
    s_refused(f, SN_PROTO_MAX_SERVICES + 2, SN_PROTO_UP, "too-many-frames");
    sn_proto_msg_t m;
    const char *why = NULL;
    assert_int_equal(sn_proto_decode(f, SN_PROTO_MAX_SERVICES + 1, SN_PROTO_UP, &m, &why), SN_OK);
    assert_int_equal(m.entry_count, SN_PROTO_MAX_SERVICES);
    /* A 255-byte name is fine, 256 is not. */
    uint8_t big[2 + 256];
    memset(big, 'a', sizeof big);
    big[0] = 0;
    big[1] = 1;
    f[1] = (sn_proto_bytes_t){big, 2 + 255};
    assert_int_equal(sn_proto_decode(f, 2, SN_PROTO_UP, &m, &why), SN_OK);
    f[1] = (sn_proto_bytes_t){big, 2 + 256};
    s_refused(f, 2, SN_PROTO_UP, "bad-name");
}

static void test_sn_proto_malformed_request(void **state)
{
    sn_proto_bytes_t f[8] = {{0}};
    f[0] = B("SNP\x01\x02");
    f[1] = B("echo");
    f[2] = B("\0\0\0\0\0\0\0\x07\0\0\x13\x88\0\0\0\x01");
    f[3] = B("body");
    f[4] = B("anonymous");
    f[5] = (sn_proto_bytes_t){s_route, 5};
    s_refused(f, 3, SN_PROTO_UP, "too-few-frames");
    s_refused(f, 5, SN_PROTO_UP, "too-many-frames");
    s_refused(f, 4, SN_PROTO_DOWN, "too-few-frames");
    s_refused(f, 7, SN_PROTO_DOWN, "too-many-frames");
    f[2] = B("\0\0\0\0\0\0\0\x07\0\0\x13\x88\0\0\0");
    s_refused(f, 4, SN_PROTO_UP, "bad-meta");
    f[2] = B("\0\0\0\0\0\0\0\0\0\0\x13\x88\0\0\0\x01");
    s_refused(f, 4, SN_PROTO_UP, "bad-request-id");
    f[2] = B("\0\0\0\0\0\0\0\x07\x05\x26\x5c\x01\0\0\0\x01"); /* 86400001 ms */
    s_refused(f, 4, SN_PROTO_UP, "bad-deadline");
    f[2] = B("\0\0\0\0\0\0\0\x07\0\0\x13\x88\0\0\0\x01");
    f[1] = B("");
    sn_proto_msg_t m;
    const char *why = NULL;
    assert_int_equal(sn_proto_decode(f, 4, SN_PROTO_UP, &m, &why), SN_ERROR);
    assert_string_equal(why, "bad-name");
    /* The meta frame was read: the caller can answer NAK invalid for request 7. */
    assert_int_equal(m.cmd, SN_PROTO_REQUEST);
    assert_true(m.request_id == 7);
    f[1] = B("echo\n");
    s_refused(f, 4, SN_PROTO_UP, "bad-name");
    f[1] = B("echo");
    f[4] = B("anon ymous");
    s_refused(f, 6, SN_PROTO_DOWN, "bad-name");
    f[4] = B("anonymous");
    f[5] = B("");
    s_refused(f, 6, SN_PROTO_DOWN, "bad-route");
    f[5] = (sn_proto_bytes_t){s_route, 5};
    assert_int_equal(sn_proto_decode(f, 6, SN_PROTO_DOWN, &m, &why), SN_OK);
}

/* §9: the ids of a malformed REQUEST are read whatever else is wrong, so that the broker
 * can answer NAK invalid; request_id 0 is never answerable; attempt 0 is out of range. */
static void test_sn_proto_malformed_request_ids(void **state)
{
    sn_proto_bytes_t f[8] = {{0}};
    f[0] = B("SNP\x01\x02");
    f[1] = B("echo");
    f[2] = B("\0\0\0\0\0\0\0\x07\0\0\x13\x88\0\0\0\x02");
    f[3] = B("body");
    f[4] = B("extra");
    sn_proto_msg_t m;
    const char *why = NULL;
    /* An extra (5th) frame. */
    assert_int_equal(sn_proto_decode(f, 5, SN_PROTO_UP, &m, &why), SN_ERROR);
    assert_string_equal(why, "too-many-frames");
    assert_int_equal(m.cmd, SN_PROTO_REQUEST);
    assert_true(m.request_id == 7);
    assert_int_equal(m.attempt, 2);
    /* The envelope frame missing. */
    assert_int_equal(sn_proto_decode(f, 3, SN_PROTO_UP, &m, &why), SN_ERROR);
    assert_string_equal(why, "too-few-frames");
    assert_int_equal(m.cmd, SN_PROTO_REQUEST);
    assert_true(m.request_id == 7);
    /* No meta frame at all, or a short one: nothing to answer. */
    assert_int_equal(sn_proto_decode(f, 2, SN_PROTO_UP, &m, &why), SN_ERROR);
    assert_int_equal(m.cmd, 0);
    f[2] = B("\0\0\0\0\0\0\0\x07\0\0\x13\x88\0\0\0");
    assert_int_equal(sn_proto_decode(f, 5, SN_PROTO_UP, &m, &why), SN_ERROR);
    assert_int_equal(m.cmd, 0);
    /* attempt 0 is out of range in a REQUEST, both ways. */
    f[2] = B("\0\0\0\0\0\0\0\x07\0\0\x13\x88\0\0\0\0");
    s_refused(f, 4, SN_PROTO_UP, "bad-attempt");
    assert_int_equal(sn_proto_decode(f, 4, SN_PROTO_UP, &m, &why), SN_ERROR);
    assert_int_equal(m.cmd, SN_PROTO_REQUEST);
    assert_true(m.request_id == 7);
    assert_int_equal(m.attempt, 0);
    f[4] = B("anonymous");
    f[5] = (sn_proto_bytes_t){s_route, 5};
    s_refused(f, 6, SN_PROTO_DOWN, "bad-attempt");
    /* request_id 0 with an extra frame: still bad, and the caller sees id 0 (unanswerable). */
    f[2] = B("\0\0\0\0\0\0\0\0\0\0\x13\x88\0\0\0\x01");
    assert_int_equal(sn_proto_decode(f, 5, SN_PROTO_UP, &m, &why), SN_ERROR);
    assert_true(m.request_id == 0);
}

/* §9: a malformed REPLY/NAK from a worker still names its request when ids and route can be
 * read; attempt is not range-checked in ids. */
static void test_sn_proto_malformed_answer_ids(void **state)
{
    sn_proto_bytes_t f[6] = {{0}};
    f[0] = B("SNP\x01\x04");
    f[1] = B("\0\0\0\0\0\0\0\x07\0\0\0\x03");
    f[2] = (sn_proto_bytes_t){s_route, 5};
    f[3] = B("\x09");
    f[4] = B("extra");
    sn_proto_msg_t m;
    const char *why = NULL;
    /* An unknown reason. */
    assert_int_equal(sn_proto_decode(f, 4, SN_PROTO_UP, &m, &why), SN_ERROR);
    assert_string_equal(why, "bad-reason");
    assert_int_equal(m.cmd, SN_PROTO_NAK);
    assert_true(m.request_id == 7);
    assert_int_equal(m.attempt, 3);
    assert_int_equal(m.route.len, 5);
    assert_memory_equal(m.route.data, s_route, 5);
    /* An extra frame; the reason frame missing. */
    f[3] = B("\x03");
    assert_int_equal(sn_proto_decode(f, 5, SN_PROTO_UP, &m, &why), SN_ERROR);
    assert_int_equal(m.cmd, SN_PROTO_NAK);
    assert_int_equal(sn_proto_decode(f, 3, SN_PROTO_UP, &m, &why), SN_ERROR);
    assert_int_equal(m.cmd, SN_PROTO_NAK);
    /* A REPLY with an extra frame. */
    f[0] = B("SNP\x01\x03");
    assert_int_equal(sn_proto_decode(f, 5, SN_PROTO_UP, &m, &why), SN_ERROR);
    assert_int_equal(m.cmd, SN_PROTO_REPLY);
    /* No usable route, or request_id 0: nothing named. */
    f[2] = B("");
    assert_int_equal(sn_proto_decode(f, 4, SN_PROTO_UP, &m, &why), SN_ERROR);
    assert_int_equal(m.cmd, 0);
    f[2] = (sn_proto_bytes_t){s_route, 5};
    f[1] = B("\0\0\0\0\0\0\0\0\0\0\0\x03");
    assert_int_equal(sn_proto_decode(f, 5, SN_PROTO_UP, &m, &why), SN_ERROR);
    assert_int_equal(m.cmd, 0);
    /* attempt 0 in ids is matched, not range-checked: a valid NAK (e.g. the broker's NAK
     * invalid answering a REQUEST with attempt 0). */
    f[0] = B("SNP\x01\x04");
    f[1] = B("\0\0\0\0\0\0\0\x07\0\0\0\0");
    f[2] = B("\x06");
    assert_int_equal(sn_proto_decode(f, 3, SN_PROTO_DOWN, &m, &why), SN_OK);
    assert_int_equal(m.attempt, 0);
    assert_int_equal(m.reason, SN_NAK_INVALID);
}

static void test_sn_proto_malformed_answers(void **state)
{
    sn_proto_bytes_t f[6] = {{0}};
    const sn_proto_bytes_t ids = B("\0\0\0\0\0\0\0\x07\0\0\0\x01");
    /* REPLY */
    f[0] = B("SNP\x01\x03");
    f[1] = ids;
    f[2] = (sn_proto_bytes_t){s_route, 5};
    f[3] = B("env");
    s_refused(f, 3, SN_PROTO_UP, "too-few-frames");
    s_refused(f, 5, SN_PROTO_UP, "too-many-frames");
    s_refused(f, 4, SN_PROTO_DOWN, "too-many-frames");
    f[1] = B("\0\0\0\0\0\0\0\x07\0\0\0");
    s_refused(f, 4, SN_PROTO_UP, "bad-ids");
    f[1] = B("\0\0\0\0\0\0\0\0\0\0\0\x01");
    s_refused(f, 4, SN_PROTO_UP, "bad-request-id");
    f[1] = ids;
    f[2] = B("");
    s_refused(f, 4, SN_PROTO_UP, "bad-route");
    /* NAK */
    f[0] = B("SNP\x01\x04");
    f[2] = B("\x00");
    s_refused(f, 3, SN_PROTO_DOWN, "bad-reason");
    f[2] = B("\x07");
    s_refused(f, 3, SN_PROTO_DOWN, "bad-reason");
    f[2] = B("\x03\x03");
    s_refused(f, 3, SN_PROTO_DOWN, "bad-reason");
    f[2] = B("\x03");
    sn_proto_msg_t m;
    const char *why = NULL;
    assert_int_equal(sn_proto_decode(f, 3, SN_PROTO_DOWN, &m, &why), SN_OK);
    assert_int_equal(m.reason, SN_NAK_EXPIRED);
    /* CANCEL */
    f[0] = B("SNP\x01\x05");
    s_refused(f, 1, SN_PROTO_UP, "too-few-frames");
    s_refused(f, 3, SN_PROTO_UP, "too-many-frames");
    s_refused(f, 2, SN_PROTO_DOWN, "too-few-frames");
    /* HEARTBEAT, DISCONNECT */
    f[0] = B("SNP\x01\x06");
    s_refused(f, 1, SN_PROTO_UP, "too-few-frames");
    f[1] = B("\x02");
    s_refused(f, 2, SN_PROTO_UP, "bad-flags");
    f[1] = B("");
    s_refused(f, 2, SN_PROTO_UP, "bad-flags");
    f[1] = B("\x00");
    s_refused(f, 3, SN_PROTO_UP, "too-many-frames");
    f[0] = B("SNP\x01\x07");
    s_refused(f, 2, SN_PROTO_UP, "too-many-frames");
}

static void test_sn_proto_names_and_integers(void **state)
{
    assert_true(sn_proto_name_ok("broker.services", 15));
    assert_false(sn_proto_name_ok("", 0));
    assert_false(sn_proto_name_ok(NULL, 3));
    assert_false(sn_proto_name_ok("a\x7f", 2));
    uint8_t b[8];
    sn_proto_put_u64(b, 0x8877665544332211ull);
    assert_true(sn_proto_get_u64(b) == 0x8877665544332211ull);
    assert_int_equal(b[0], 0x88);
    sn_proto_put_u32(b, 0xdeadbeef);
    assert_true(sn_proto_get_u32(b) == 0xdeadbeef);
    sn_proto_put_u16(b, 0xbeef);
    assert_int_equal(sn_proto_get_u16(b), 0xbeef);
    assert_string_equal(sn_nak_reason_name(SN_NAK_WORKER_LOST), "worker-lost");
    assert_string_equal(sn_nak_reason_name(42), "?");
    assert_string_equal(sn_proto_cmd_name(SN_PROTO_CANCEL), "CANCEL");
}

/* sn_proto_send over inproc: a DEALER's REQUEST arrives at a ROUTER with its routing id. */
static void test_sn_proto_send_over_inproc(void **state)
{
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    assert_int_equal(zmq_bind(router, "inproc://proto-test"), 0);
    assert_int_equal(zmq_connect(dealer, "inproc://proto-test"), 0);
    sn_proto_msg_t m = {.cmd = SN_PROTO_REQUEST,
                        .request_id = 42,
                        .deadline_ms = 100,
                        .attempt = 1,
                        .service = B("echo"),
                        .envelope = B("payload")};
    assert_int_equal(sn_proto_send(dealer, NULL, 0, &m, SN_PROTO_UP), SN_OK);
    zmq_msg_t frames[8];
    size_t n = 0;
    do {
        zmq_msg_init(&frames[n]);
        assert_true(zmq_msg_recv(&frames[n], router, 0) >= 0);
        n++;
    } while (zmq_msg_more(&frames[n - 1]) && n < 8);
    assert_int_equal(n, 5);
    sn_proto_bytes_t v[8];
    for (size_t i = 1; i < n; i++)
        v[i - 1] = (sn_proto_bytes_t){zmq_msg_data(&frames[i]), zmq_msg_size(&frames[i])};
    sn_proto_msg_t back;
    const char *why = NULL;
    assert_int_equal(sn_proto_decode(v, n - 1, SN_PROTO_UP, &back, &why), SN_OK);
    assert_true(back.request_id == 42);
    s_bytes_eq(back.envelope, B("payload"));
    /* And back down with a zmq_msg_t body moved, not copied. */
    zmq_msg_t body;
    zmq_msg_init_size(&body, 3);
    memcpy(zmq_msg_data(&body), "abc", 3);
    sn_proto_msg_t r = {.cmd = SN_PROTO_REPLY, .request_id = 42, .attempt = 1};
    r.envelope = (sn_proto_bytes_t){zmq_msg_data(&body), 3};
    assert_int_equal(sn_proto_send_zmsg(router, zmq_msg_data(&frames[0]), zmq_msg_size(&frames[0]),
                                        &r, SN_PROTO_DOWN, &body),
                     SN_OK);
    zmq_msg_close(&body);
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&frames[i]);
    uint8_t buf[64];
    assert_int_equal(zmq_recv(dealer, buf, sizeof buf, 0), 5);
    assert_int_equal(zmq_recv(dealer, buf, sizeof buf, 0), 12);
    assert_int_equal(zmq_recv(dealer, buf, sizeof buf, 0), 3);
    assert_memory_equal(buf, "abc", 3);
    zmq_close(dealer);
    zmq_close(router);
    zmq_ctx_term(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_proto_roundtrip_all_commands),
        cmocka_unit_test(test_sn_proto_worked_example),
        cmocka_unit_test(test_sn_proto_malformed_header),
        cmocka_unit_test(test_sn_proto_malformed_ready),
        cmocka_unit_test(test_sn_proto_malformed_request),
        cmocka_unit_test(test_sn_proto_malformed_request_ids),
        cmocka_unit_test(test_sn_proto_malformed_answer_ids),
        cmocka_unit_test(test_sn_proto_malformed_answers),
        cmocka_unit_test(test_sn_proto_names_and_integers),
        cmocka_unit_test(test_sn_proto_send_over_inproc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
