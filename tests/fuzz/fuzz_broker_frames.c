/* libFuzzer target over the SNP/1 frame decoder (both directions) and its encoder: any
 * input must be refused or decoded without a crash, and whatever decodes must re-encode to
 * the same frames. Build: clang -fsanitize=fuzzer,address,undefined -Icommon/include
 *   tests/fuzz/fuzz_broker_frames.c common/src/sn_proto.c common/src/sn_common.c
 *   common/src/sn_log.c -lzmq
 * Input format: a sequence of frames, each a 1-byte length L (0..254; 255 = the next two
 * bytes give a big-endian length) followed by L bytes; the first byte selects the direction. */
#include <stdint.h>
#include <string.h>

#include "sentinel/sn_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    sn_proto_dir_t dir = (data[0] & 1) ? SN_PROTO_DOWN : SN_PROTO_UP;
    size_t pos = 1;
    sn_proto_bytes_t frames[SN_PROTO_MAX_FRAMES + 4];
    size_t n = 0;
    while (pos < size && n < SN_ARRAY_LEN(frames)) {
        size_t len = data[pos++];
        if (len == 255) {
            if (pos + 2 > size)
                break;
            len = ((size_t)data[pos] << 8) | data[pos + 1];
            pos += 2;
        }
        if (len > size - pos)
            len = size - pos;
        frames[n++] = (sn_proto_bytes_t){data + pos, len};
        pos += len;
    }
    sn_proto_msg_t m;
    const char *why = NULL;
    if (sn_proto_decode(frames, n, dir, &m, &why) != SN_OK) {
        SN_ASSERT(why != NULL);
        return 0;
    }
    /* Round trip: what decodes re-encodes to identical frames. */
    sn_proto_bytes_t out[SN_PROTO_MAX_FRAMES];
    sn_proto_scratch_t scratch;
    size_t k = sn_proto_encode(&m, dir, out, &scratch);
    SN_ASSERT(k == n);
    for (size_t i = 0; i < k; i++) {
        SN_ASSERT(out[i].len == frames[i].len);
        SN_ASSERT(out[i].len == 0 || memcmp(out[i].data, frames[i].data, out[i].len) == 0);
    }
    return 0;
}
