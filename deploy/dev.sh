#!/usr/bin/env bash
# Sentinel's developer entry point.
#   deploy/dev.sh up [CONFIG]   install what is missing, build, run the mesh in the foreground
#   deploy/dev.sh test [ARGS]   install what is missing, build the dev preset (ASan+UBSan), run ctest
#   deploy/dev.sh build         install what is missing, build the release preset into build/release/bin
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

packages=(build-essential cmake ninja-build pkg-config git
          libzmq3-dev libczmq-dev libprotobuf-c-dev protobuf-c-compiler libhiredis-dev
          libcurl4-openssl-dev libssl-dev libcmocka-dev redis-server libjansson-dev
          libyaml-dev libmicrohttpd-dev libc-ares-dev python3 python3-zmq python3-protobuf
          nginx git zlib1g-dev python3-aiosmtpd python3-cryptography openssl)

log() { printf 'dev.sh: %s\n' "$*" >&2; }

install_missing() {
    local missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    log "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

jobs_count() { nproc 2>/dev/null || echo 2; }

build_preset() {
    local preset=$1
    shift
    cmake --preset "$preset" -G Ninja >/dev/null
    cmake --build --preset "$preset" -j "$(jobs_count)" "$@"
}

release_targets=(--target sentinel-broker sentinel-agent sentinelctl sentinel-bench)

verb=${1:-}
shift || true
case "$verb" in
    up)
        install_missing
        build_preset release "${release_targets[@]}"
        config=${1:-examples/sentinel.yml}
        exec build/release/bin/sentinelctl up "$config"
        ;;
    test)
        install_missing
        build_preset dev
        # Integration tests start their own redis-server, broker and agents on free ports.
        cd build/dev
        exec ctest --output-on-failure -j "$(jobs_count)" -LE 'bench|fuzz' --timeout 300 "$@"
        ;;
    build)
        install_missing
        build_preset release "${release_targets[@]}"
        log "binaries in build/release/bin/"
        ;;
    *)
        echo "usage: deploy/dev.sh up [CONFIG] | test [CTEST ARGS] | build" >&2
        exit 2
        ;;
esac
