#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) and exits non-zero
# if any target crashes. Bounded: one build, then SECONDS per target, each
# run also capped by `timeout` in case libFuzzer hangs.
#
#   fuzz/run.sh [SECONDS]
#
# Needs only stable Rust and cargo: cargo-fuzz is installed from crates.io if
# missing, and RUSTC_BOOTSTRAP=1 lets the stable compiler take the nightly
# flags cargo-fuzz passes (-Zsanitizer=address and the coverage options).
# libFuzzer itself is C++ built by the libfuzzer-sys crate, so a C++
# compiler must be present (Debian: g++, installed below when missing and
# running as root).
#
# Inputs libFuzzer finds go to fuzz/corpus/<target>/ (ignored by git, next
# to the committed seed-* files); a crash is saved under
# fuzz/artifacts/<target>/ and can be replayed with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/crash-...

set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
CARGO_FUZZ_VERSION="0.13.2"
TARGETS=(stun_parse stun_roundtrip channel_data stream_framing server_inputs proxy_header)

cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
    cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi
if ! command -v c++ >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing g++ for libFuzzer"
        apt-get update -qq && apt-get install -y -qq g++ >/dev/null
    else
        echo "no C++ compiler: libfuzzer-sys needs one (Debian: apt-get install g++)" >&2
        exit 1
    fi
fi

cargo fuzz build

failed=()
for target in "${TARGETS[@]}"; do
    echo "=== $target: ${SECONDS_PER_TARGET}s"
    mkdir -p "corpus/$target"
    # -max_total_time bounds the fuzzing; timeout bounds everything else
    # (corpus loading, a hang that -timeout did not catch).
    if ! timeout --kill-after=30 "$((SECONDS_PER_TARGET + 120))" \
        cargo fuzz run "$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$target")
    fi
done

passed=$((${#TARGETS[@]} - ${#failed[@]}))
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzzing failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
fi
# The plain closing line CI reads: one per target, run for SECONDS each.
echo "fuzz: $passed passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
