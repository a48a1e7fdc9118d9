/* libFuzzer entry point for the leaked-credential scanner (agents/infraguard/secret_scan.c):
 * any bytes, scanned as a file and parsed as a tar archive, must be handled within bounds,
 * never crash, leak or read out of bounds, and every finding must point at a line that
 * exists. Built by CMake with clang and -DSN_FUZZ=ON (tests/CMakeLists.txt), or by hand, e.g.:
 *   clang -g -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I common/include \
 *     -I agents/infraguard tests/fuzz/fuzz_secret_scan.c agents/infraguard/secret_scan.c \
 *     common/src/sn_common.c common/src/sn_log.c $(pkg-config --cflags --libs libcrypto) \
 *     -o fuzz_secret_scan */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "secret_scan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t lines = 1;
    for (size_t i = 0; i < size; i++)
        lines += data[i] == '\n';
    secret_findings_t f;
    secret_findings_init(&f);
    secret_scan_buffer("fuzz.txt", data, size, &f);
    SN_ASSERT(f.count <= SECRET_SCAN_MAX_FINDINGS);
    for (size_t i = 0; i < f.count; i++) {
        SN_ASSERT(strcmp(f.items[i].file, "fuzz.txt") == 0);
        SN_ASSERT(f.items[i].line >= 1 && f.items[i].line <= lines);
        SN_ASSERT(f.items[i].kind && *f.items[i].kind);
    }
    secret_findings_fini(&f);

    secret_scan_opts_t opts = {.max_file_bytes = 4096, .max_total_bytes = 1 << 16};
    secret_findings_init(&f);
    sn_rc_t rc = secret_scan_tar_buffer(data, size, &opts, &f);
    SN_ASSERT(rc == SN_OK || rc == SN_ERROR);
    SN_ASSERT(f.bytes_scanned <= size);
    secret_findings_fini(&f);
    return 0;
}
