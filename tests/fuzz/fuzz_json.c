/* libFuzzer entry point for sn_json: JSON text to an Envelope and back. Anything that
 * parses must render, re-parse to the same wire bytes, and free without leaks. Built by
 * hand (not part of CMake), e.g.:
 *   clang -g -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I common/include \
 *     -I build/<dir>/proto tests/fuzz/fuzz_json.c common/src/sn_json.c common/src/sn_common.c \
 *     build/<dir>/proto/sentinel/v1/envelope.pb-c.c (and mesh.pb-c.c) $(pkg-config --cflags --libs
 * jansson \ libprotobuf-c) -lm -o fuzz_json */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_json.h"
#include "sentinel/v1/envelope.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *s_pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = sn_malloc(*len);
    SN_ASSERT(protobuf_c_message_pack(m, buf) == *len);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    const ProtobufCMessageDescriptor *d = &sentinel__v1__envelope__descriptor;
    ProtobufCMessage *m = sn_json_parse_message(d, (const char *)data, size, err, sizeof err);
    if (!m) {
        SN_ASSERT(err[0] == '$');
        return 0;
    }
    char *text = sn_json_dumps_message(m, JSON_COMPACT);
    SN_ASSERT(text);
    ProtobufCMessage *again = sn_json_parse_message(d, text, strlen(text), err, sizeof err);
    SN_ASSERT(again);
    size_t l1 = 0, l2 = 0;
    uint8_t *b1 = s_pack(m, &l1), *b2 = s_pack(again, &l2);
    SN_ASSERT(l1 == l2 && memcmp(b1, b2, l1) == 0);
    free(b1);
    free(b2);
    free(text);
    protobuf_c_message_free_unpacked(again, NULL);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}
