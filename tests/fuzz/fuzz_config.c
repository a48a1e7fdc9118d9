/* libFuzzer entry point for sn_config: any bytes must load or fail cleanly, never crash,
 * leak or read out of bounds. Built by CMake with clang and -DSN_FUZZ=ON (tests/CMakeLists.txt), or
 * by hand, e.g.:
 *   clang -g -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I common/include \
 *     tests/fuzz/fuzz_config.c common/src/sn_config.c common/src/sn_common.c \
 *     $(pkg-config --cflags --libs yaml-0.1 libcrypto) -o fuzz_config */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "sentinel/sn_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sn_config_t cfg;
    char err[512];
    if (sn_config_load_string("fuzz.yml", (const char *)data, size, &cfg, err, sizeof err) ==
        SN_OK) {
        SN_ASSERT(strlen(cfg.hash) == 64);
        SN_ASSERT(cfg.broker.rpc && cfg.namespace_ && cfg.state_dir);
    } else {
        SN_ASSERT(strncmp(err, "fuzz.yml", 8) == 0);
    }
    sn_config_fini(&cfg);
    return 0;
}
