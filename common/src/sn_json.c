/* Protobuf <-> JSON through protobuf-c descriptors (the proto3 canonical JSON mapping).
 * Output walks each field descriptor and renders what is present; input builds the
 * message field by field with the system allocator, the way protobuf-c's unpack lays it
 * out, and keeps it freeable by protobuf_c_message_free_unpacked at every step, so an
 * error half way frees the partial message with the same call. */
#include "sentinel/sn_json.h"

#include <ctype.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_PATH_LEN 512
#define S_NAME_LEN 128

typedef struct {
    char *err;
    size_t err_len;
    char path[S_PATH_LEN];
    size_t path_len;
} s_ctx_t;

typedef enum { S_NUM_OK, S_NUM_TYPE, S_NUM_RANGE } s_num_t;

static json_t *s_message_to_json(const ProtobufCMessage *msg, int depth);
static sn_rc_t s_fill_message(s_ctx_t *ctx, ProtobufCMessage *msg, const json_t *json, int depth);
static sn_rc_t s_fail(s_ctx_t *ctx, const char *fmt, ...) SN_PRINTF(2, 3);

/* ---- public --------------------------------------------------------------------------- */

json_t *sn_json_from_message(const ProtobufCMessage *msg)
{
    SN_ASSERT(msg && msg->descriptor);
    return s_message_to_json(msg, 0);
}

char *sn_json_dumps_message(const ProtobufCMessage *msg, int flags)
{
    json_t *j = sn_json_from_message(msg);
    if (!j)
        return NULL;
    char *s = json_dumps(j, flags);
    json_decref(j);
    SN_ASSERT(s); /* only fails on allocation */
    return s;
}

ProtobufCMessage *sn_json_to_message(const ProtobufCMessageDescriptor *desc, const json_t *json,
                                     char *err, size_t err_len)
{
    SN_ASSERT(desc && desc->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    char dummy[1];
    s_ctx_t ctx = {.err = err && err_len ? err : dummy, .err_len = err && err_len ? err_len : 1};
    ctx.err[0] = '\0';
    ctx.path[0] = '$';
    ctx.path[1] = '\0';
    ctx.path_len = 1;
    if (!json || !json_is_object(json)) {
        s_fail(&ctx, "expected a JSON object");
        return NULL;
    }
    ProtobufCMessage *msg = sn_malloc(desc->sizeof_message);
    protobuf_c_message_init(desc, msg);
    if (s_fill_message(&ctx, msg, json, 0) != SN_OK) {
        protobuf_c_message_free_unpacked(msg, NULL);
        return NULL;
    }
    return msg;
}

ProtobufCMessage *sn_json_parse_message(const ProtobufCMessageDescriptor *desc, const char *text,
                                        size_t len, char *err, size_t err_len)
{
    json_error_t jerr;
    json_t *j = json_loadb(text ? text : "", text ? len : 0, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        if (err && err_len)
            snprintf(err, err_len, "$: invalid JSON at line %d, column %d: %s", jerr.line,
                     jerr.column, jerr.text);
        return NULL;
    }
    ProtobufCMessage *msg = sn_json_to_message(desc, j, err, err_len);
    json_decref(j);
    return msg;
}

static const char s_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *sn_json_base64_encode(const uint8_t *data, size_t len)
{
    char *out = sn_malloc((len + 2) / 3 * 4 + 1);
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)data[i + 1] << 8;
        if (i + 2 < len)
            v |= data[i + 2];
        out[o++] = s_b64[(v >> 18) & 63];
        out[o++] = s_b64[(v >> 12) & 63];
        out[o++] = i + 1 < len ? s_b64[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? s_b64[v & 63] : '=';
    }
    out[o] = '\0';
    return out;
}

static int s_b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

sn_rc_t sn_json_base64_decode(const char *text, size_t text_len, uint8_t **out, size_t *out_len)
{
    size_t len = text_len;
    /* padding: at most two '=', only at the end, and then the length is a multiple of 4 */
    size_t pad = 0;
    while (len > 0 && text[len - 1] == '=' && pad < 2) {
        len--;
        pad++;
    }
    if ((pad && text_len % 4 != 0) || len % 4 == 1)
        return SN_ERROR;
    uint8_t *buf = sn_malloc(len / 4 * 3 + 3);
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = s_b64_value((unsigned char)text[i]);
        if (v < 0) {
            free(buf);
            return SN_ERROR;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    *out = buf;
    *out_len = o;
    return SN_OK;
}

/* ---- helpers -------------------------------------------------------------------------- */

static sn_rc_t s_fail(s_ctx_t *ctx, const char *fmt, ...)
{
    int n = snprintf(ctx->err, ctx->err_len, "%s: ", ctx->path);
    if (n < 0 || (size_t)n >= ctx->err_len)
        return SN_ERROR;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err + n, ctx->err_len - (size_t)n, fmt, ap);
    va_end(ap);
    return SN_ERROR;
}

/* Appends to the JSON path; returns the old length for s_path_pop. */
static size_t s_path_push(s_ctx_t *ctx, const char *fmt, ...) SN_PRINTF(2, 3);
static size_t s_path_push(s_ctx_t *ctx, const char *fmt, ...)
{
    size_t old = ctx->path_len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(ctx->path + old, sizeof ctx->path - old, fmt, ap);
    va_end(ap);
    if (n > 0)
        ctx->path_len = old + (size_t)n < sizeof ctx->path ? old + (size_t)n : sizeof ctx->path - 1;
    return old;
}

static void s_path_pop(s_ctx_t *ctx, size_t old)
{
    ctx->path_len = old;
    ctx->path[old] = '\0';
}

/* lowerCamelCase of a proto field name: "time_unix_ms" -> "timeUnixMs". */
static void s_json_name(const char *name, char *out, size_t out_len)
{
    size_t o = 0;
    bool upper = false;
    for (const char *p = name; *p && o + 1 < out_len; p++) {
        if (*p == '_') {
            upper = true;
            continue;
        }
        out[o++] = upper && *p >= 'a' && *p <= 'z' ? (char)(*p - 'a' + 'A') : *p;
        upper = false;
    }
    out[o] = '\0';
}

static const char *s_json_type(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "something else";
}

static size_t s_elem_size(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    SN_ASSERT(!"unknown protobuf-c type");
    return 0;
}

/* protoc-c renders map<K, V> as a repeated <Field>Entry message {key = 1, value = 2}. */
static bool s_is_map(const ProtobufCFieldDescriptor *f)
{
    if (f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_MESSAGE)
        return false;
    const ProtobufCMessageDescriptor *d = f->descriptor;
    size_t sl = strlen(d->short_name);
    return d->n_fields == 2 && d->fields[0].id == 1 && strcmp(d->fields[0].name, "key") == 0 &&
           d->fields[1].id == 2 && strcmp(d->fields[1].name, "value") == 0 && sl > 5 &&
           strcmp(d->short_name + sl - 5, "Entry") == 0;
}

#define S_MEMBER(type, msg, off) (*(type *)(void *)((char *)(msg) + (off)))

/* ---- message -> JSON ------------------------------------------------------------------ */

/* Copies @s replacing each byte that does not start a valid UTF-8 sequence with U+FFFD. */
static json_t *s_string_json(const char *s, size_t len)
{
    json_t *j = json_stringn(s, len);
    if (j)
        return j;
    char *buf = sn_malloc(len * 3 + 1);
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = n > 0 && i + n <= len;
        for (size_t k = 1; ok && k < n; k++)
            ok = ((unsigned char)s[i + k] >> 6) == 2;
        if (ok && n > 1) {
            uint32_t cp = n == 2 ? c & 0x1f : n == 3 ? c & 0x0f : c & 0x07;
            for (size_t k = 1; k < n; k++)
                cp = (cp << 6) | ((unsigned char)s[i + k] & 0x3f);
            static const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
            ok = cp >= min_cp[n] && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff);
        }
        if (ok) {
            memcpy(buf + o, s + i, n);
            o += n;
            i += n;
        } else {
            memcpy(buf + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    j = json_stringn(buf, o);
    free(buf);
    SN_ASSERT(j);
    return j;
}

static json_t *s_real_json(double d)
{
    if (isnan(d))
        return json_string("NaN");
    if (isinf(d))
        return json_string(d > 0 ? "Infinity" : "-Infinity");
    return json_real(d);
}

static json_t *s_value_to_json(const ProtobufCFieldDescriptor *f, const void *p, int depth)
{
    char buf[32];
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        snprintf(buf, sizeof buf, "%" PRId64, *(const int64_t *)p);
        return json_string(buf);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        snprintf(buf, sizeof buf, "%" PRIu64, *(const uint64_t *)p);
        return json_string(buf);
    case PROTOBUF_C_TYPE_FLOAT:
        return s_real_json(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return s_real_json(*(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)p;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        return ev ? json_string(ev->name) : json_integer(v);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return s ? s_string_json(s, strlen(s)) : json_string("");
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *bd = p;
        char *b64 = sn_json_base64_encode(bd->data, bd->data ? bd->len : 0);
        json_t *j = json_string(b64);
        free(b64);
        return j;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
        if (!sub)
            return json_object();
        return s_message_to_json(sub, depth + 1);
    }
    }
    return NULL;
}

/* Whether a singular proto3 field holds its type's default (and is then left out). */
static bool s_is_default(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return *(const uint32_t *)p == 0;
    case PROTOBUF_C_TYPE_ENUM:
        return *(const int *)p == 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return *(const uint64_t *)p == 0;
    case PROTOBUF_C_TYPE_FLOAT:
        return *(const float *)p == 0 && !signbit(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *)p == 0 && !signbit(*(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return !*(const protobuf_c_boolean *)p;
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return !s || !*s;
    }
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len == 0;
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(ProtobufCMessage *const *)p == NULL;
    }
    return true;
}

static bool s_is_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
    const void *p = (const char *)msg + f->offset;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        return S_MEMBER(uint32_t, msg, f->quantifier_offset) == f->id;
    switch (f->label) {
    case PROTOBUF_C_LABEL_REQUIRED:
        return true;
    case PROTOBUF_C_LABEL_REPEATED:
        return S_MEMBER(size_t, msg, f->quantifier_offset) > 0;
    case PROTOBUF_C_LABEL_OPTIONAL:
        if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE)
            return *(void *const *)p != NULL && *(void *const *)p != f->default_value;
        return S_MEMBER(protobuf_c_boolean, msg, f->quantifier_offset);
    case PROTOBUF_C_LABEL_NONE:
        return !s_is_default(f, p);
    }
    return false;
}

static json_t *s_map_key_json(const ProtobufCFieldDescriptor *kf, const void *p)
{
    char buf[32];
    switch (kf->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return s ? s_string_json(s, strlen(s)) : json_string("");
    }
    case PROTOBUF_C_TYPE_BOOL:
        return json_string(*(const protobuf_c_boolean *)p ? "true" : "false");
    default: {
        json_t *v = s_value_to_json(kf, p, 0);
        if (json_is_integer(v)) {
            snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            json_decref(v);
            return json_string(buf);
        }
        return v; /* 64-bit keys are strings already */
    }
    }
}

static json_t *s_message_to_json(const ProtobufCMessage *msg, int depth)
{
    if (depth > SN_JSON_MAX_DEPTH)
        return NULL;
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    json_t *obj = json_object();
    char name[S_NAME_LEN];
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (!s_is_present(msg, f))
            continue;
        const char *p = (const char *)msg + f->offset;
        json_t *v = NULL;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = S_MEMBER(size_t, msg, f->quantifier_offset);
            const char *arr = *(char *const *)p;
            bool is_map = s_is_map(f);
            v = is_map ? json_object() : json_array();
            for (size_t k = 0; k < n; k++) {
                const void *elem = arr + k * s_elem_size(f->type);
                if (is_map) {
                    const ProtobufCMessage *entry = *(ProtobufCMessage *const *)elem;
                    const ProtobufCMessageDescriptor *ed = f->descriptor;
                    json_t *key =
                        s_map_key_json(&ed->fields[0], (const char *)entry + ed->fields[0].offset);
                    json_t *val = s_value_to_json(
                        &ed->fields[1], (const char *)entry + ed->fields[1].offset, depth);
                    if (!key || !val) {
                        json_decref(key);
                        json_decref(val);
                        goto fail;
                    }
                    json_object_set_new(v, json_string_value(key), val);
                    json_decref(key);
                } else {
                    json_t *e = s_value_to_json(f, elem, depth);
                    if (!e)
                        goto fail;
                    json_array_append_new(v, e);
                }
            }
        } else {
            v = s_value_to_json(f, p, depth);
            if (!v)
                goto fail;
        }
        s_json_name(f->name, name, sizeof name);
        json_object_set_new(obj, name, v);
        continue;
    fail:
        json_decref(v);
        json_decref(obj);
        return NULL;
    }
    return obj;
}

/* ---- JSON -> message ------------------------------------------------------------------ */

static s_num_t s_json_i64(const json_t *j, int64_t min, int64_t max, int64_t *out)
{
    int64_t v = 0;
    if (json_is_integer(j)) {
        v = json_integer_value(j);
    } else if (json_is_real(j)) {
        double d = json_real_value(j);
        if (d != floor(d))
            return S_NUM_TYPE;
        if (d < -9223372036854775808.0 || d >= 9223372036854775808.0)
            return S_NUM_RANGE;
        v = (int64_t)d;
    } else if (json_is_string(j)) {
        const char *s = json_string_value(j);
        size_t len = json_string_length(j);
        bool neg = len > 0 && s[0] == '-';
        size_t i = neg ? 1 : 0;
        if (i == len || len > 24)
            return len > 24 ? S_NUM_RANGE : S_NUM_TYPE;
        uint64_t u = 0;
        for (; i < len; i++) {
            if (s[i] < '0' || s[i] > '9')
                return S_NUM_TYPE;
            unsigned d = (unsigned)(s[i] - '0');
            if (u > (UINT64_MAX - d) / 10)
                return S_NUM_RANGE;
            u = u * 10 + d;
        }
        if ((!neg && u > (uint64_t)INT64_MAX) || (neg && u > (uint64_t)INT64_MAX + 1))
            return S_NUM_RANGE;
        v = neg ? (int64_t)(0 - u) : (int64_t)u;
    } else {
        return S_NUM_TYPE;
    }
    if (v < min || v > max)
        return S_NUM_RANGE;
    *out = v;
    return S_NUM_OK;
}

static s_num_t s_json_u64(const json_t *j, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (json_is_integer(j)) {
        if (json_integer_value(j) < 0)
            return S_NUM_RANGE;
        v = (uint64_t)json_integer_value(j);
    } else if (json_is_real(j)) {
        double d = json_real_value(j);
        if (d != floor(d))
            return S_NUM_TYPE;
        if (d < 0 || d >= 18446744073709551616.0)
            return S_NUM_RANGE;
        v = (uint64_t)d;
    } else if (json_is_string(j)) {
        const char *s = json_string_value(j);
        size_t len = json_string_length(j);
        if (len == 0)
            return S_NUM_TYPE;
        if (s[0] == '-' && len > 1 && strspn(s + 1, "0123456789") == len - 1)
            return S_NUM_RANGE;
        for (size_t i = 0; i < len; i++) {
            if (s[i] < '0' || s[i] > '9')
                return S_NUM_TYPE;
            unsigned d = (unsigned)(s[i] - '0');
            if (v > (UINT64_MAX - d) / 10)
                return S_NUM_RANGE;
            v = v * 10 + d;
        }
    } else {
        return S_NUM_TYPE;
    }
    if (v > max)
        return S_NUM_RANGE;
    *out = v;
    return S_NUM_OK;
}

static sn_rc_t s_num_fail(s_ctx_t *ctx, s_num_t r, const char *what, const json_t *j)
{
    if (r == S_NUM_RANGE)
        return s_fail(ctx, "out of range for %s", what);
    return s_fail(ctx, "expected %s (a number or a decimal string), got %s", what, s_json_type(j));
}

static sn_rc_t s_json_double(s_ctx_t *ctx, const json_t *j, bool is_float, double *out)
{
    double d;
    if (json_is_number(j)) {
        d = json_number_value(j);
    } else if (json_is_string(j)) {
        const char *s = json_string_value(j);
        if (strcmp(s, "NaN") == 0) {
            d = NAN;
        } else if (strcmp(s, "Infinity") == 0) {
            d = INFINITY;
        } else if (strcmp(s, "-Infinity") == 0) {
            d = -INFINITY;
        } else {
            char *end = NULL;
            d = strtod(s, &end);
            if (!*s || *end || isspace((unsigned char)*s) || isnan(d) || isinf(d))
                return s_fail(ctx, "expected a number, got the string \"%.32s\"", s);
        }
    } else {
        return s_fail(ctx, "expected a number, got %s", s_json_type(j));
    }
    if (is_float && isfinite(d) && fabs(d) > FLT_MAX)
        return s_fail(ctx, "out of range for float");
    *out = d;
    return SN_OK;
}

/* Converts one JSON value for field @f into storage @p (a singular member or an array slot). */
static sn_rc_t s_set_value(s_ctx_t *ctx, const ProtobufCFieldDescriptor *f, const json_t *j,
                           void *p, int depth)
{
    int64_t i = 0;
    uint64_t u = 0;
    s_num_t r;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        if ((r = s_json_i64(j, INT32_MIN, INT32_MAX, &i)) != S_NUM_OK)
            return s_num_fail(ctx, r, "int32", j);
        *(int32_t *)p = (int32_t)i;
        return SN_OK;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        if ((r = s_json_u64(j, UINT32_MAX, &u)) != S_NUM_OK)
            return s_num_fail(ctx, r, "uint32", j);
        *(uint32_t *)p = (uint32_t)u;
        return SN_OK;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        if ((r = s_json_i64(j, INT64_MIN, INT64_MAX, &i)) != S_NUM_OK)
            return s_num_fail(ctx, r, "int64", j);
        *(int64_t *)p = i;
        return SN_OK;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        if ((r = s_json_u64(j, UINT64_MAX, &u)) != S_NUM_OK)
            return s_num_fail(ctx, r, "uint64", j);
        *(uint64_t *)p = u;
        return SN_OK;
    case PROTOBUF_C_TYPE_FLOAT: {
        double d = 0;
        if (s_json_double(ctx, j, true, &d) != SN_OK)
            return SN_ERROR;
        *(float *)p = (float)d;
        return SN_OK;
    }
    case PROTOBUF_C_TYPE_DOUBLE:
        return s_json_double(ctx, j, false, (double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(j))
            return s_fail(ctx, "expected true or false, got %s", s_json_type(j));
        *(protobuf_c_boolean *)p = json_is_true(j);
        return SN_OK;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        if (json_is_string(j)) {
            const ProtobufCEnumValue *ev =
                protobuf_c_enum_descriptor_get_value_by_name(ed, json_string_value(j));
            if (!ev)
                return s_fail(ctx, "unknown %s value \"%.64s\"", ed->short_name,
                              json_string_value(j));
            *(int *)p = ev->value;
            return SN_OK;
        }
        if ((r = s_json_i64(j, INT32_MIN, INT32_MAX, &i)) != S_NUM_OK || !json_is_number(j))
            return s_fail(ctx, "expected a %s name or number, got %s", ed->short_name,
                          s_json_type(j));
        *(int *)p = (int)i;
        return SN_OK;
    }
    case PROTOBUF_C_TYPE_STRING: {
        if (!json_is_string(j))
            return s_fail(ctx, "expected a string, got %s", s_json_type(j));
        size_t len = json_string_length(j);
        if (memchr(json_string_value(j), '\0', len))
            return s_fail(ctx, "string contains a NUL character");
        char **dst = p;
        if (*dst && *dst != f->default_value)
            free(*dst);
        *dst = sn_strndup(json_string_value(j), len);
        return SN_OK;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        if (!json_is_string(j))
            return s_fail(ctx, "expected a base64 string, got %s", s_json_type(j));
        ProtobufCBinaryData *bd = p;
        uint8_t *data = NULL;
        size_t len = 0;
        if (sn_json_base64_decode(json_string_value(j), json_string_length(j), &data, &len) !=
            SN_OK)
            return s_fail(ctx, "invalid base64");
        if (len == 0) {
            free(data);
            data = NULL;
        }
        bd->data = data;
        bd->len = len;
        return SN_OK;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        if (!json_is_object(j))
            return s_fail(ctx, "expected an object, got %s", s_json_type(j));
        if (depth + 1 > SN_JSON_MAX_DEPTH)
            return s_fail(ctx, "messages nested deeper than %d", SN_JSON_MAX_DEPTH);
        const ProtobufCMessageDescriptor *sd = f->descriptor;
        ProtobufCMessage *sub = sn_malloc(sd->sizeof_message);
        protobuf_c_message_init(sd, sub);
        *(ProtobufCMessage **)p = sub; /* attached first: the parent's free covers it */
        return s_fill_message(ctx, sub, j, depth + 1);
    }
    }
    return s_fail(ctx, "unsupported field type");
}

/* A map key arrives as a JSON object key (a string); convert it to the key field's type. */
static sn_rc_t s_set_map_key(s_ctx_t *ctx, const ProtobufCFieldDescriptor *kf, const char *key,
                             void *p)
{
    if (kf->type == PROTOBUF_C_TYPE_BOOL) {
        if (strcmp(key, "true") != 0 && strcmp(key, "false") != 0)
            return s_fail(ctx, "expected a map key of true or false");
        *(protobuf_c_boolean *)p = strcmp(key, "true") == 0;
        return SN_OK;
    }
    json_t *k = json_string(key);
    SN_ASSERT(k);
    sn_rc_t rc = s_set_value(ctx, kf, k, p, 0);
    json_decref(k);
    return rc;
}

static sn_rc_t s_set_repeated(s_ctx_t *ctx, ProtobufCMessage *msg,
                              const ProtobufCFieldDescriptor *f, const json_t *j, int depth)
{
    size_t *count = &S_MEMBER(size_t, msg, f->quantifier_offset);
    void **arr = &S_MEMBER(void *, msg, f->offset);
    SN_ASSERT(*count == 0 && *arr == NULL);
    size_t esize = s_elem_size(f->type);
    if (s_is_map(f)) {
        if (!json_is_object(j))
            return s_fail(ctx, "expected an object (a map), got %s", s_json_type(j));
        size_t n = json_object_size(j);
        if (n == 0)
            return SN_OK;
        /* zeroed pointers with the count set: freeable whatever happens next */
        *arr = sn_calloc(n, esize);
        *count = n;
        const ProtobufCMessageDescriptor *ed = f->descriptor;
        size_t k = 0;
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)j, key, val)
        {
            ProtobufCMessage *entry = sn_malloc(ed->sizeof_message);
            protobuf_c_message_init(ed, entry);
            ((ProtobufCMessage **)*arr)[k++] = entry;
            size_t old = s_path_push(ctx, ".%.100s", key);
            if (s_set_map_key(ctx, &ed->fields[0], key, (char *)entry + ed->fields[0].offset) !=
                SN_OK)
                return SN_ERROR;
            if (json_is_null(val))
                return s_fail(ctx, "expected a value, got null");
            if (s_set_value(ctx, &ed->fields[1], val, (char *)entry + ed->fields[1].offset,
                            depth) != SN_OK)
                return SN_ERROR;
            s_path_pop(ctx, old);
        }
        return SN_OK;
    }
    if (!json_is_array(j))
        return s_fail(ctx, "expected an array, got %s", s_json_type(j));
    size_t n = json_array_size(j);
    if (n == 0)
        return SN_OK;
    *arr = sn_calloc(n, esize);
    *count = n;
    for (size_t k = 0; k < n; k++) {
        size_t old = s_path_push(ctx, "[%zu]", k);
        const json_t *e = json_array_get(j, k);
        if (json_is_null(e))
            return s_fail(ctx, "expected a value, got null");
        if (s_set_value(ctx, f, e, (char *)*arr + k * esize, depth) != SN_OK)
            return SN_ERROR;
        s_path_pop(ctx, old);
    }
    return SN_OK;
}

static const ProtobufCFieldDescriptor *s_find_field(const ProtobufCMessageDescriptor *desc,
                                                    const char *key, unsigned *index)
{
    char name[S_NAME_LEN];
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (strcmp(f->name, key) == 0) {
            *index = i;
            return f;
        }
        s_json_name(f->name, name, sizeof name);
        if (strcmp(name, key) == 0) {
            *index = i;
            return f;
        }
    }
    return NULL;
}

static sn_rc_t s_fill_message(s_ctx_t *ctx, ProtobufCMessage *msg, const json_t *json, int depth)
{
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    const char **seen = sn_calloc(desc->n_fields ? desc->n_fields : 1, sizeof(char *));
    sn_rc_t rc = SN_OK;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)json, key, val)
    {
        unsigned fi = 0;
        const ProtobufCFieldDescriptor *f = s_find_field(desc, key, &fi);
        if (!f || json_is_null(val))
            continue; /* unknown fields are ignored; null is the default value */
        size_t old = s_path_push(ctx, ".%.100s", key);
        if (seen[fi]) {
            rc = s_fail(ctx, "the same field as \"%s\"", seen[fi]);
            break;
        }
        seen[fi] = key;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t *which = &S_MEMBER(uint32_t, msg, f->quantifier_offset);
            if (*which != 0) {
                const ProtobufCFieldDescriptor *other =
                    protobuf_c_message_descriptor_get_field(desc, *which);
                rc = s_fail(ctx, "only one member of a oneof may be set, \"%s\" is set already",
                            other ? other->name : "?");
                break;
            }
            /* the case is set before the value so a failure half way is still freed */
            *which = f->id;
            rc = s_set_value(ctx, f, val, (char *)msg + f->offset, depth);
        } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            rc = s_set_repeated(ctx, msg, f, val, depth);
        } else {
            rc = s_set_value(ctx, f, val, (char *)msg + f->offset, depth);
            if (rc == SN_OK && f->label == PROTOBUF_C_LABEL_OPTIONAL &&
                f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
                S_MEMBER(protobuf_c_boolean, msg, f->quantifier_offset) = 1;
        }
        if (rc != SN_OK)
            break;
        s_path_pop(ctx, old);
    }
    free(seen);
    return rc;
}
