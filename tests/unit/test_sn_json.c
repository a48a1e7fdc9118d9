/* Unit tests for sn_json: Envelope round trips with labels and every body type of
 * mesh.proto, the proto3 JSON mapping (lowerCamelCase, 64-bit integers as strings, bytes
 * as base64, defaults omitted), enums, floats and recursion through a hand-written test
 * descriptor, and every error path with its JSON path. Run under ASan: no leaks. */
#include "sn_test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_json.h"
#include "sentinel/v1/envelope.pb-c.h"

static char s_err[512];

/* ---- a hand-written descriptor: an enum, floats, recursion, proto2-style optional ---- */

typedef struct t_node t_node_t;
struct t_node {
    ProtobufCMessage base;
    t_node_t *child;
    int color;
    double ratio;
    float f;
    size_t n_blobs;
    ProtobufCBinaryData *blobs;
    size_t n_nums;
    int64_t *nums;
    protobuf_c_boolean has_opt;
    int32_t opt;
};

static const ProtobufCEnumValue s_color_values[] = {
    {"COLOR_UNSET", "T_COLOR_UNSET", 0}, {"RED", "T_COLOR_RED", 1}, {"GREEN", "T_COLOR_GREEN", 2}};
static const ProtobufCEnumValueIndex s_color_by_name[] = {
    {"COLOR_UNSET", 0}, {"GREEN", 2}, {"RED", 1}};
static const ProtobufCIntRange s_color_ranges[] = {{0, 0}, {0, 3}};
static const ProtobufCEnumDescriptor s_color_desc = {PROTOBUF_C__ENUM_DESCRIPTOR_MAGIC,
                                                     "t.Color",
                                                     "Color",
                                                     "TColor",
                                                     "t",
                                                     3,
                                                     s_color_values,
                                                     3,
                                                     s_color_by_name,
                                                     1,
                                                     s_color_ranges,
                                                     NULL,
                                                     NULL,
                                                     NULL,
                                                     NULL};

static const ProtobufCMessageDescriptor s_node_desc;

static const ProtobufCFieldDescriptor s_node_fields[] = {
    {"child", 1, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_MESSAGE, 0, offsetof(t_node_t, child),
     &s_node_desc, NULL, 0, 0, NULL, NULL},
    {"color", 2, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_ENUM, 0, offsetof(t_node_t, color),
     &s_color_desc, NULL, 0, 0, NULL, NULL},
    {"ratio", 3, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_DOUBLE, 0, offsetof(t_node_t, ratio), NULL,
     NULL, 0, 0, NULL, NULL},
    {"f", 4, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_FLOAT, 0, offsetof(t_node_t, f), NULL, NULL, 0,
     0, NULL, NULL},
    {"blobs", 5, PROTOBUF_C_LABEL_REPEATED, PROTOBUF_C_TYPE_BYTES, offsetof(t_node_t, n_blobs),
     offsetof(t_node_t, blobs), NULL, NULL, 0, 0, NULL, NULL},
    {"nums", 6, PROTOBUF_C_LABEL_REPEATED, PROTOBUF_C_TYPE_SINT64, offsetof(t_node_t, n_nums),
     offsetof(t_node_t, nums), NULL, NULL, 0, 0, NULL, NULL},
    {"opt", 7, PROTOBUF_C_LABEL_OPTIONAL, PROTOBUF_C_TYPE_INT32, offsetof(t_node_t, has_opt),
     offsetof(t_node_t, opt), NULL, NULL, 0, 0, NULL, NULL},
};
static const unsigned s_node_by_name[] = {4, 0, 1, 3, 5, 6, 2};
static const ProtobufCIntRange s_node_ranges[] = {{1, 0}, {0, 7}};

static void s_node_init(ProtobufCMessage *m)
{
    memset(m, 0, sizeof(t_node_t));
    m->descriptor = &s_node_desc;
}

static const ProtobufCMessageDescriptor s_node_desc = {PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
                                                       "t.Node",
                                                       "Node",
                                                       "TNode",
                                                       "t",
                                                       sizeof(t_node_t),
                                                       SN_ARRAY_LEN(s_node_fields),
                                                       s_node_fields,
                                                       s_node_by_name,
                                                       1,
                                                       s_node_ranges,
                                                       s_node_init,
                                                       NULL,
                                                       NULL,
                                                       NULL};

/* ---- helpers -------------------------------------------------------------------------- */

static ProtobufCMessage *s_parse(const ProtobufCMessageDescriptor *d, const char *text)
{
    return sn_json_parse_message(d, text, strlen(text), s_err, sizeof s_err);
}

static void s_expect_error(const ProtobufCMessageDescriptor *d, const char *text,
                           const char *expected)
{
    s_err[0] = '\0';
    ProtobufCMessage *m = s_parse(d, text);
    if (m || strcmp(s_err, expected) != 0)
        print_error("json: %s\nexpected: %s\n     got: %s\n", text, expected, s_err);
    assert_null(m);
    assert_string_equal(s_err, expected);
}

static uint8_t *s_pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = sn_malloc(*len);
    assert_int_equal(protobuf_c_message_pack(m, buf), *len);
    return buf;
}

/* JSON text -> message -> JSON -> message: same bytes on the wire, same JSON. Returns the
 * first message (caller frees) and its JSON (*json_out, caller frees) if asked. */
static ProtobufCMessage *s_round_trip(const ProtobufCMessageDescriptor *d, const char *text,
                                      char **json_out)
{
    ProtobufCMessage *m1 = s_parse(d, text);
    if (!m1)
        print_error("%s: %s\n", text, s_err);
    assert_non_null(m1);
    char *j1 = sn_json_dumps_message(m1, JSON_COMPACT);
    assert_non_null(j1);
    ProtobufCMessage *m2 = s_parse(d, j1);
    if (!m2)
        print_error("%s: %s\n", j1, s_err);
    assert_non_null(m2);
    char *j2 = sn_json_dumps_message(m2, JSON_COMPACT);
    assert_string_equal(j1, j2);
    size_t l1 = 0, l2 = 0;
    uint8_t *b1 = s_pack(m1, &l1), *b2 = s_pack(m2, &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(b1, b2, l1);
    /* and through the wire: unpack gives the same JSON */
    ProtobufCMessage *m3 = protobuf_c_message_unpack(d, NULL, l1, b1);
    assert_non_null(m3);
    char *j3 = sn_json_dumps_message(m3, JSON_COMPACT);
    assert_string_equal(j1, j3);
    free(b1);
    free(b2);
    free(j2);
    free(j3);
    protobuf_c_message_free_unpacked(m2, NULL);
    protobuf_c_message_free_unpacked(m3, NULL);
    if (json_out)
        *json_out = j1;
    else
        free(j1);
    return m1;
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_sn_json_envelope_from_c(void **state)
{
    Sentinel__V1__Envelope env = SENTINEL__V1__ENVELOPE__INIT;
    Sentinel__V1__JobSpec job = SENTINEL__V1__JOB_SPEC__INIT;
    Sentinel__V1__Envelope__LabelsEntry l1 = SENTINEL__V1__ENVELOPE__LABELS_ENTRY__INIT;
    Sentinel__V1__Envelope__LabelsEntry l2 = SENTINEL__V1__ENVELOPE__LABELS_ENTRY__INIT;
    Sentinel__V1__Envelope__LabelsEntry *labels[] = {&l1, &l2};
    env.id = "01HZX3J5E7W9K2M4N6P8Q0R2S4";
    env.type = "job.submitted";
    env.time_unix_ms = 1700000000123;
    env.fence = UINT64_MAX;
    env.seq = 7;
    env.correlation_id = "run-1";
    l1.key = "project";
    l1.value = "site";
    l2.key = "env";
    l2.value = "prod";
    env.n_labels = 2;
    env.labels = labels;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_JOB;
    env.job = &job;
    job.job_id = "j1";
    job.lease_ms = -5;
    job.attempt = 3;
    static uint8_t payload[] = {0, 1, 2, 0xfb, 0xff};
    job.payload.data = payload;
    job.payload.len = sizeof payload;

    char *text = sn_json_dumps_message(&env.base, JSON_COMPACT);
    assert_string_equal(text, "{\"id\":\"01HZX3J5E7W9K2M4N6P8Q0R2S4\",\"type\":\"job.submitted\","
                              "\"timeUnixMs\":\"1700000000123\",\"correlationId\":\"run-1\","
                              "\"fence\":\"18446744073709551615\",\"seq\":\"7\","
                              "\"labels\":{\"project\":\"site\",\"env\":\"prod\"},"
                              "\"job\":{\"jobId\":\"j1\",\"attempt\":3,\"leaseMs\":\"-5\","
                              "\"payload\":\"AAEC+/8=\"}}");

    Sentinel__V1__Envelope *back =
        (Sentinel__V1__Envelope *)s_parse(&sentinel__v1__envelope__descriptor, text);
    assert_non_null(back);
    assert_string_equal(back->id, env.id);
    assert_string_equal(back->source, "");
    assert_true(back->time_unix_ms == env.time_unix_ms);
    assert_true(back->fence == UINT64_MAX);
    assert_int_equal(back->n_labels, 2);
    assert_string_equal(back->labels[0]->key, "project");
    assert_string_equal(back->labels[1]->value, "prod");
    assert_int_equal(back->body_case, SENTINEL__V1__ENVELOPE__BODY_JOB);
    assert_string_equal(back->job->job_id, "j1");
    assert_true(back->job->lease_ms == -5);
    assert_int_equal(back->job->payload.len, sizeof payload);
    assert_memory_equal(back->job->payload.data, payload, sizeof payload);
    size_t la = 0, lb = 0;
    uint8_t *a = s_pack(&env.base, &la), *b = s_pack(&back->base, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    free(a);
    free(b);
    free(text);
    protobuf_c_message_free_unpacked(&back->base, NULL);

    /* a set oneof member is written even when it holds only defaults */
    Sentinel__V1__Envelope e2 = SENTINEL__V1__ENVELOPE__INIT;
    Sentinel__V1__Ack ack = SENTINEL__V1__ACK__INIT;
    e2.body_case = SENTINEL__V1__ENVELOPE__BODY_ACK;
    e2.ack = &ack;
    text = sn_json_dumps_message(&e2.base, JSON_COMPACT);
    assert_string_equal(text, "{\"ack\":{}}");
    free(text);
    Sentinel__V1__Envelope empty = SENTINEL__V1__ENVELOPE__INIT;
    text = sn_json_dumps_message(&empty.base, JSON_COMPACT);
    assert_string_equal(text, "{}");
    free(text);
    json_t *j = sn_json_from_message(&empty.base);
    assert_true(json_is_object(j));
    json_decref(j);
}

static void test_sn_json_every_body_round_trips(void **state)
{
    static const char *const bodies[] = {
        "\"agent\":{\"role\":\"ci\",\"instance\":\"0\",\"host\":\"h\",\"pid\":4242,\"version\":"
        "\"0.1.0\",\"configHash\":\"ab\",\"isLeader\":true,\"fence\":\"9\",\"startedUnixMs\":"
        "\"1700000000000\",\"counters\":{\"served\":\"12\",\"failed\":\"-3\",\"big\":"
        "\"9223372036854775807\"}}",
        "\"flush\":{\"token\":\"t-1\"}",
        "\"gap\":{\"requestedId\":\"1-0\",\"firstId\":\"5-0\",\"missedAtLeast\":\"4\"}",
        "\"leader\":{\"role\":\"supervisor\",\"instance\":\"1\",\"fence\":\"77\",\"isLeader\":"
        "false,\"reason\":\"lease lost\"}",
        "\"job\":{\"jobId\":\"j\",\"kind\":\"test.slow\",\"service\":\"s\",\"ownerRole\":\"o\","
        "\"attempt\":1,\"maxAttempts\":5,\"leaseMs\":\"30000\",\"payload\":\"eyJhIjoxfQ==\","
        "\"correlationId\":\"c\"}",
        "\"jobResult\":{\"jobId\":\"j\",\"ok\":true,\"error\":\"\",\"result\":\"AP8=\",\"epoch\":"
        "\"2\"}",
        "\"jobDead\":{\"jobId\":\"j\",\"kind\":\"k\",\"attempts\":5,\"reason\":\"poison\"}",
        "\"services\":{\"services\":[{\"name\":\"a\",\"workers\":2,\"idleCredit\":1,\"queued\":0,"
        "\"served\":\"18446744073709551615\"},{\"name\":\"b\"}]}",
        "\"error\":{\"code\":\"E_BUSY\",\"message\":\"try later\"}",
        "\"ack\":{\"id\":\"01HZX3J5E7W9K2M4N6P8Q0R2S4\"}",
        "\"note\":{\"text\":\"h\\u00e9llo \\u2603\",\"n\":\"-9223372036854775808\",\"attrs\":{"
        "\"a\":\"1\",\"\":\"empty key\"}}",
    };
    for (size_t i = 0; i < SN_ARRAY_LEN(bodies); i++) {
        char *text = sn_strdupf("{\"id\":\"x\",\"source\":\"sentinel/ci/0\",\"type\":\"t\","
                                "\"subject\":\"p/e/t\",\"time_unix_ms\":1700000000000,"
                                "\"causationId\":\"c\",\"incarnation\":\"12345678901234567890\","
                                "\"labels\":{\"k\":\"v\",\"k2\":\"\"},%s}",
                                bodies[i]);
        ProtobufCMessage *m = s_round_trip(&sentinel__v1__envelope__descriptor, text, NULL);
        Sentinel__V1__Envelope *env = (Sentinel__V1__Envelope *)m;
        assert_int_equal(env->body_case, SENTINEL__V1__ENVELOPE__BODY_AGENT + (int)i);
        assert_true(env->incarnation == UINT64_C(12345678901234567890));
        assert_true(env->time_unix_ms == INT64_C(1700000000000)); /* a number is accepted */
        assert_int_equal(env->n_labels, 2);
        switch (env->body_case) {
        case SENTINEL__V1__ENVELOPE__BODY_AGENT:
            assert_int_equal(env->agent->pid, 4242);
            assert_true(env->agent->is_leader);
            assert_int_equal(env->agent->n_counters, 3);
            assert_true(env->agent->counters[1]->value == -3);
            assert_true(env->agent->counters[2]->value == INT64_MAX);
            break;
        case SENTINEL__V1__ENVELOPE__BODY_JOB:
            assert_int_equal(env->job->payload.len, 7);
            assert_memory_equal(env->job->payload.data, "{\"a\":1}", 7);
            break;
        case SENTINEL__V1__ENVELOPE__BODY_SERVICES:
            assert_int_equal(env->services->n_services, 2);
            assert_true(env->services->services[0]->served == UINT64_MAX);
            assert_string_equal(env->services->services[1]->name, "b");
            break;
        case SENTINEL__V1__ENVELOPE__BODY_NOTE:
            assert_string_equal(env->note->text, "h\xc3\xa9llo \xe2\x98\x83");
            assert_true(env->note->n == INT64_MIN);
            break;
        default:
            break;
        }
        protobuf_c_message_free_unpacked(m, NULL);
        free(text);
    }
}

static void test_sn_json_input_forms(void **state)
{
    /* proto names and lowerCamelCase both accepted; numbers for 64-bit; null = default;
     * unknown fields ignored; URL-safe and unpadded base64 */
    Sentinel__V1__Envelope *env = (Sentinel__V1__Envelope *)s_parse(
        &sentinel__v1__envelope__descriptor,
        "{\"correlation_id\":\"c\",\"fence\":42,\"seq\":\"0\",\"source\":null,\"bogus\":[1,{}],"
        "\"labels\":null,\"job_result\":{\"job_id\":\"j\",\"result\":\"-_8\",\"epoch\":3.0,"
        "\"extra\":{\"deep\":[[[]]]}}}");
    assert_non_null(env);
    assert_string_equal(env->correlation_id, "c");
    assert_true(env->fence == 42);
    assert_string_equal(env->source, "");
    assert_int_equal(env->n_labels, 0);
    assert_int_equal(env->body_case, SENTINEL__V1__ENVELOPE__BODY_JOB_RESULT);
    assert_int_equal(env->job_result->result.len, 2);
    assert_int_equal(env->job_result->result.data[0], 0xfb);
    assert_int_equal(env->job_result->result.data[1], 0xff);
    assert_true(env->job_result->epoch == 3);
    protobuf_c_message_free_unpacked(&env->base, NULL);

    /* a null oneof member does not count as set */
    env = (Sentinel__V1__Envelope *)s_parse(&sentinel__v1__envelope__descriptor,
                                            "{\"flush\":null,\"ack\":{\"id\":\"a\"}}");
    assert_non_null(env);
    assert_int_equal(env->body_case, SENTINEL__V1__ENVELOPE__BODY_ACK);
    protobuf_c_message_free_unpacked(&env->base, NULL);

    /* a json_t directly */
    json_t *j = json_pack("{s:s, s:{s:s}}", "type", "x", "error", "code", "E");
    ProtobufCMessage *m =
        sn_json_to_message(&sentinel__v1__envelope__descriptor, j, s_err, sizeof s_err);
    assert_non_null(m);
    assert_string_equal(((Sentinel__V1__Envelope *)m)->error->code, "E");
    protobuf_c_message_free_unpacked(m, NULL);
    json_decref(j);
}

static void test_sn_json_errors(void **state)
{
    const ProtobufCMessageDescriptor *d = &sentinel__v1__envelope__descriptor;
    s_expect_error(d, "{\"labels\":{\"foo\":1}}", "$.labels.foo: expected a string, got a number");
    s_expect_error(d, "{\"labels\":[\"a\"]}", "$.labels: expected an object (a map), got an array");
    s_expect_error(d, "{\"labels\":{\"a\":null}}", "$.labels.a: expected a value, got null");
    s_expect_error(d, "{\"id\":5}", "$.id: expected a string, got a number");
    s_expect_error(d, "{\"id\":\"a\\u0000b\"}",
                   "$: invalid JSON at line 1, column 16: \\u0000 is not allowed without "
                   "JSON_ALLOW_NUL near '\"a\\u0000b\"'");
    json_t *nul = json_pack("{s:s%}", "id", "a\0b", (size_t)3);
    assert_null(sn_json_to_message(d, nul, s_err, sizeof s_err));
    assert_string_equal(s_err, "$.id: string contains a NUL character");
    json_decref(nul);
    s_expect_error(d, "{\"job\":{\"payload\":\"!!!!\"}}", "$.job.payload: invalid base64");
    s_expect_error(d, "{\"job\":{\"payload\":\"Zg=\"}}", "$.job.payload: invalid base64");
    s_expect_error(d, "{\"job\":{\"payload\":7}}",
                   "$.job.payload: expected a base64 string, got a number");
    s_expect_error(d, "{\"flush\":{\"token\":\"a\"},\"ack\":{\"id\":\"b\"}}",
                   "$.ack: only one member of a oneof may be set, \"flush\" is set already");
    s_expect_error(d, "{\"note\":{\"n\":\"9223372036854775808\"}}",
                   "$.note.n: out of range for int64");
    s_expect_error(d, "{\"note\":{\"n\":\"12x\"}}",
                   "$.note.n: expected int64 (a number or a decimal string), got a string");
    s_expect_error(d, "{\"agent\":{\"pid\":3000000000}}", "$.agent.pid: out of range for int32");
    s_expect_error(d, "{\"fence\":-1}", "$.fence: out of range for uint64");
    s_expect_error(d, "{\"fence\":\"-1\"}", "$.fence: out of range for uint64");
    s_expect_error(d, "{\"seq\":\"18446744073709551616\"}", "$.seq: out of range for uint64");
    s_expect_error(d, "{\"job\":{\"attempt\":\"4294967296\"}}",
                   "$.job.attempt: out of range for uint32");
    s_expect_error(d, "{\"timeUnixMs\":1.5}",
                   "$.timeUnixMs: expected int64 (a number or a decimal string), got a number");
    s_expect_error(d, "{\"timeUnixMs\":true}",
                   "$.timeUnixMs: expected int64 (a number or a decimal string), got a boolean");
    s_expect_error(d, "{\"agent\":{\"isLeader\":\"yes\"}}",
                   "$.agent.isLeader: expected true or false, got a string");
    s_expect_error(d, "{\"agent\":[]}", "$.agent: expected an object, got an array");
    s_expect_error(d, "{\"services\":{\"services\":{}}}",
                   "$.services.services: expected an array, got an object");
    s_expect_error(d, "{\"services\":{\"services\":[{\"name\":\"a\"},null]}}",
                   "$.services.services[1]: expected a value, got null");
    s_expect_error(d, "{\"services\":{\"services\":[{\"name\":\"a\"},{\"workers\":-1}]}}",
                   "$.services.services[1].workers: out of range for uint32");
    s_expect_error(d, "{\"agent\":{\"counters\":{\"x\":\"1\",\"y\":{}}}}",
                   "$.agent.counters.y: expected int64 (a number or a decimal string), got an "
                   "object");
    s_expect_error(d, "{\"job\":{\"job_id\":\"a\",\"jobId\":\"b\"}}",
                   "$.job.jobId: the same field as \"job_id\"");
    s_expect_error(d, "[]", "$: expected a JSON object");
    s_expect_error(d, "{\"id\":\"a\",\"id\":\"b\"}",
                   "$: invalid JSON at line 1, column 14: duplicate object key near '\"id\"'");
    s_expect_error(d, "{",
                   "$: invalid JSON at line 1, column 1: string or '}' expected near end of "
                   "file");
    s_expect_error(d, "",
                   "$: invalid JSON at line 1, column 0: '[' or '{' expected near end of file");

    assert_null(sn_json_to_message(d, NULL, s_err, sizeof s_err));
    assert_string_equal(s_err, "$: expected a JSON object");
    json_t *str = json_string("x");
    assert_null(sn_json_to_message(d, str, NULL, 0)); /* NULL err is fine */
    json_decref(str);

    /* binary junk and very deep JSON: refused cleanly */
    char junk[256];
    uint32_t seed = 99;
    for (int round = 0; round < 200; round++) {
        size_t len = (size_t)(round % 50) * 5 + 1;
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            junk[i] = (char)(seed >> 16);
        }
        junk[0] = '{';
        ProtobufCMessage *m = sn_json_parse_message(d, junk, len, s_err, sizeof s_err);
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
    }
    size_t depth = 100000;
    char *deep = sn_malloc(depth * 2 + 16);
    size_t o = 0;
    memcpy(deep, "{\"x\":", 5);
    o = 5;
    for (size_t i = 0; i < depth; i++)
        deep[o++] = '[';
    for (size_t i = 0; i < depth; i++)
        deep[o++] = ']';
    deep[o++] = '}';
    assert_null(sn_json_parse_message(d, deep, o, s_err, sizeof s_err));
    assert_non_null(strstr(s_err, "$: invalid JSON"));
    free(deep);
}

static void test_sn_json_enums_floats_recursion(void **state)
{
    char *json = NULL;
    t_node_t *n = (t_node_t *)s_round_trip(
        &s_node_desc,
        "{\"color\":\"GREEN\",\"ratio\":0.25,\"f\":1.5,\"blobs\":[\"\",\"AA==\",\"/w\"],"
        "\"nums\":[\"-1\",2,\"9007199254740993\"],\"opt\":0,\"child\":{\"color\":1,\"ratio\":"
        "\"NaN\",\"f\":\"-Infinity\",\"child\":{}}}",
        &json);
    assert_int_equal(n->color, 2);
    assert_true(n->ratio == 0.25);
    assert_true(n->f == 1.5f);
    assert_int_equal(n->n_blobs, 3);
    assert_int_equal(n->blobs[0].len, 0);
    assert_int_equal(n->blobs[2].len, 1);
    assert_int_equal(n->blobs[2].data[0], 0xff);
    assert_int_equal(n->n_nums, 3);
    assert_true(n->nums[2] == INT64_C(9007199254740993));
    assert_true(n->has_opt); /* proto2-style optional: present even at 0 */
    assert_int_equal(n->opt, 0);
    assert_int_equal(n->child->color, 1);
    assert_true(isnan(n->child->ratio));
    assert_true(isinf(n->child->f) && n->child->f < 0);
    assert_non_null(n->child->child);
    assert_string_equal(json, "{\"child\":{\"child\":{},\"color\":\"RED\",\"ratio\":\"NaN\",\"f\":"
                              "\"-Infinity\"},\"color\":\"GREEN\",\"ratio\":0.25,\"f\":1.5,"
                              "\"blobs\":[\"\",\"AA==\",\"/w==\"],\"nums\":[\"-1\",\"2\","
                              "\"9007199254740993\"],\"opt\":0}");
    free(json);
    protobuf_c_message_free_unpacked(&n->base, NULL);

    /* an enum value without a name is written as its number */
    t_node_t raw;
    s_node_init(&raw.base);
    raw.color = 9;
    char *text = sn_json_dumps_message(&raw.base, JSON_COMPACT);
    assert_string_equal(text, "{\"color\":9}");
    free(text);

    s_expect_error(&s_node_desc, "{\"color\":\"BLUE\"}", "$.color: unknown Color value \"BLUE\"");
    s_expect_error(&s_node_desc, "{\"color\":[]}",
                   "$.color: expected a Color name or number, got an array");
    s_expect_error(&s_node_desc, "{\"f\":1e39}", "$.f: out of range for float");
    s_expect_error(&s_node_desc, "{\"ratio\":\"fast\"}",
                   "$.ratio: expected a number, got the string \"fast\"");
    s_expect_error(&s_node_desc, "{\"ratio\":{}}", "$.ratio: expected a number, got an object");
    s_expect_error(&s_node_desc, "{\"nums\":[1,\"x\"]}",
                   "$.nums[1]: expected int64 (a number or a decimal string), got a string");
    s_expect_error(&s_node_desc, "{\"child\":{\"child\":{\"blobs\":[\"A\"]}}}",
                   "$.child.child.blobs[0]: invalid base64");

    /* nesting: SN_JSON_MAX_DEPTH levels are fine, one more is refused, both ways */
    for (int levels = SN_JSON_MAX_DEPTH; levels <= SN_JSON_MAX_DEPTH + 1; levels++) {
        size_t cap = (size_t)levels * 12 + 8;
        char *deep = sn_malloc(cap);
        size_t o = 0;
        deep[o++] = '{';
        for (int i = 0; i < levels; i++) {
            memcpy(deep + o, "\"child\":{", 9);
            o += 9;
        }
        for (int i = 0; i <= levels; i++)
            deep[o++] = '}';
        deep[o] = '\0';
        ProtobufCMessage *m = s_parse(&s_node_desc, deep);
        if (levels == SN_JSON_MAX_DEPTH) {
            assert_non_null(m);
            protobuf_c_message_free_unpacked(m, NULL);
        } else {
            assert_null(m);
            assert_non_null(strstr(s_err, ": messages nested deeper than 32"));
            assert_int_equal(strncmp(s_err, "$.child.child.", 14), 0);
        }
        free(deep);
    }
    t_node_t chain[SN_JSON_MAX_DEPTH + 2];
    for (int i = 0; i < SN_JSON_MAX_DEPTH + 2; i++) {
        s_node_init(&chain[i].base);
        chain[i].child = i + 1 < SN_JSON_MAX_DEPTH + 2 ? &chain[i + 1] : NULL;
    }
    assert_null(sn_json_from_message(&chain[0].base));
    assert_null(sn_json_dumps_message(&chain[0].base, 0));
    json_t *ok = sn_json_from_message(&chain[1].base);
    assert_non_null(ok);
    json_decref(ok);
}

static void test_sn_json_invalid_utf8_output(void **state)
{
    Sentinel__V1__Note note = SENTINEL__V1__NOTE__INIT;
    note.text = "a\xff"
                "b\xc3";
    char *text = sn_json_dumps_message(&note.base, JSON_COMPACT);
    assert_string_equal(text, "{\"text\":\"a\xef\xbf\xbd"
                              "b\xef\xbf\xbd\"}");
    free(text);
}

static void test_sn_json_base64(void **state)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const enc[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < SN_ARRAY_LEN(plain); i++) {
        char *e = sn_json_base64_encode((const uint8_t *)plain[i], strlen(plain[i]));
        assert_string_equal(e, enc[i]);
        free(e);
        uint8_t *d = NULL;
        size_t len = 0;
        assert_int_equal(sn_json_base64_decode(enc[i], strlen(enc[i]), &d, &len), SN_OK);
        assert_int_equal(len, strlen(plain[i]));
        assert_memory_equal(d, plain[i], len);
        free(d);
    }
    static const char *const bad[] = {"Zg=",  "Z",     "Zm9v!", "Zg==Zg==", "=",
                                      "====", "Zm 9v", "Zg===", "Z==="};
    for (size_t i = 0; i < SN_ARRAY_LEN(bad); i++) {
        uint8_t *d = NULL;
        size_t len = 0;
        if (sn_json_base64_decode(bad[i], strlen(bad[i]), &d, &len) != SN_ERROR)
            print_error("accepted %s\n", bad[i]);
        assert_null(d);
    }
    uint8_t *d = NULL;
    size_t len = 0;
    assert_int_equal(sn_json_base64_decode("Zm9vYg", 6, &d, &len), SN_OK); /* unpadded */
    assert_int_equal(len, 4);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_json_envelope_from_c),
        cmocka_unit_test(test_sn_json_every_body_round_trips),
        cmocka_unit_test(test_sn_json_input_forms),
        cmocka_unit_test(test_sn_json_errors),
        cmocka_unit_test(test_sn_json_enums_floats_recursion),
        cmocka_unit_test(test_sn_json_invalid_utf8_output),
        cmocka_unit_test(test_sn_json_base64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
