/* Protobuf <-> JSON by walking protobuf-c descriptors, following the proto3 canonical JSON
 * mapping: lowerCamelCase names on output (both lowerCamelCase and the proto name are
 * accepted on input), default values omitted on output, 64-bit integers as decimal
 * strings (strings or numbers accepted on input), bytes as standard base64 (URL-safe and
 * unpadded accepted on input), enums by value name, maps as objects, a set oneof member
 * always written. Unknown JSON fields are ignored; wrong types, out-of-range numbers, bad
 * base64 and a second member of one oneof are errors naming the JSON path
 * ("$.labels.foo: expected a string"). One module for the CLI, the API and webhooks.
 * Pure functions: any thread. */
#ifndef SN_JSON_H
#define SN_JSON_H

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#include "sentinel/sn_common.h"

/* Deepest message nesting converted either way; deeper input is an error. */
#define SN_JSON_MAX_DEPTH 32

/* Renders @msg (borrowed) as a JSON object: a new reference, or NULL if messages nest
 * deeper than SN_JSON_MAX_DEPTH. Strings that are not valid UTF-8 are rendered with
 * U+FFFD in place of the bad bytes. */
json_t *sn_json_from_message(const ProtobufCMessage *msg);

/* sn_json_from_message serialised with jansson @flags (JSON_COMPACT, JSON_SORT_KEYS,
 * JSON_INDENT(n)...). The caller frees the result with free(); NULL as above. */
char *sn_json_dumps_message(const ProtobufCMessage *msg, int flags);

/* Builds a message of type @desc from the JSON object @json (borrowed). The result is
 * allocated exactly as protobuf-c's unpack would, so the caller frees it with
 * protobuf_c_message_free_unpacked(msg, NULL). On error returns NULL and writes
 * "$.path: message" into @err (may be NULL). */
ProtobufCMessage *sn_json_to_message(const ProtobufCMessageDescriptor *desc, const json_t *json,
                                     char *err, size_t err_len);

/* sn_json_to_message from @len bytes of JSON text; syntax errors name line and column. */
ProtobufCMessage *sn_json_parse_message(const ProtobufCMessageDescriptor *desc, const char *text,
                                        size_t len, char *err, size_t err_len);

/* Standard base64 with padding of @len bytes; the caller frees the string. */
char *sn_json_base64_encode(const uint8_t *data, size_t len);

/* Decodes standard or URL-safe base64, padded or not, into a fresh buffer (caller frees;
 * *out_len set). SN_ERROR on any other character, misplaced padding or a bad length. */
SN_NODISCARD sn_rc_t sn_json_base64_decode(const char *text, size_t text_len, uint8_t **out,
                                           size_t *out_len);

#endif
