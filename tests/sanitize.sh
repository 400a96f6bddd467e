#!/usr/bin/env bash
# Run Keel's concurrency-critical tests under ThreadSanitizer and Miri (nightly toolchain).
#
# What runs:
#   1. ThreadSanitizer (`-Zsanitizer=thread`, std rebuilt with `-Zbuild-std` so that it is
#      instrumented too): the generation-cell, hazard, barrier and slot unit tests — among
#      them the call/reload stress tests with Rust-side instances (2 threads calling, 1
#      reloading) — and the native integration tests that call and reload/unload a real
#      shared-library fixture from several threads.
#   2. Miri (`cargo miri test`): the pure-Rust parts — the hazard-pointer and
#      generation-cell unit tests, including the 2-readers/1-swapper stress test with small
#      counts. Under Miri the asymmetric barrier is two SeqCst fences (no membarrier
#      syscall), and the slot tests that parse a manifest (JSON schema compilation: far too
#      slow interpreted) are skipped with `cfg_attr(miri, ignore)`.
#
# Needs: `rustup toolchain install nightly` with the components `rust-src` (for
# -Zbuild-std) and `miri` (`rustup component add --toolchain nightly rust-src miri`).
# A part whose component is missing is reported as SKIPPED and the script fails.
#
# Usage: tests/sanitize.sh [tsan|miri]...   (default: both). Each part uses its own target
# directory under target/ (a full instrumented rebuild the first time: expect tens of
# minutes on a small machine; later runs are incremental). Not part of .ci/run: it does not
# fit CI's time budget. Exit status: 0 only if every selected part ran and passed.
#
# Suppressions: none. Wasmer's signal handling is not exercised by the selected tests.
set -u -o pipefail

cd "$(dirname "$0")/.."
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tsan miri)

host_target=$(rustc +nightly -vV | sed -n 's/^host: //p')
status=0
has_component() {
    rustup component list --toolchain nightly --installed 2>/dev/null | grep -q "^$1"
}

run_tsan() {
    if ! has_component rust-src; then
        echo "SKIPPED tsan: nightly rust-src missing (rustup component add --toolchain nightly rust-src)"
        return 1
    fi
    export RUSTFLAGS="-Zsanitizer=thread -Cforce-frame-pointers=yes -Clink-arg=-lgcc"
    # wasmer-vm's libcall table refers to __negsf2/__negdf2, which neither a -Zbuild-std
    # compiler_builtins nor x86-64's libgcc provides: link a two-line definition of them.
    mkdir -p target/tsan
    printf 'float __negsf2(float a) { return -a; }\ndouble __negdf2(double a) { return -a; }\n' > target/tsan/neg.c
    cc -O2 -c target/tsan/neg.c -o target/tsan/neg.o || return 1
    # (The wrapper's name ends in "gcc" so that rustc passes it gcc-style arguments.)
    printf '#!/bin/sh\nexec cc "$@" %s\n' "$PWD/target/tsan/neg.o" > target/tsan/tsan-gcc
    chmod +x target/tsan/tsan-gcc
    export CARGO_TARGET_$(echo "$host_target" | tr a-z- A-Z_)_LINKER="$PWD/target/tsan/tsan-gcc"
    # Line tables are enough for TSan's reports and keep the instrumented build small.
    export CARGO_PROFILE_DEV_DEBUG=line-tables-only CARGO_PROFILE_TEST_DEBUG=line-tables-only
    export RUSTDOCFLAGS="-Zsanitizer=thread"
    export CARGO_TARGET_DIR=target/tsan
    # Pure-Rust call/reload protocol (no dlopen).
    cargo +nightly test -Zbuild-std --target "$host_target" --lib -- \
        registry:: barrier:: --test-threads 2 || return 1
    # Real native fixture: calls from several threads during unload/reload.
    cargo +nightly test -Zbuild-std --target "$host_target" --test native -- \
        concurrent_calls_from_many_threads unload_waits_for_in_flight_calls reload_swaps_generation \
        --test-threads 1 || return 1
}

run_miri() {
    if ! has_component miri; then
        echo "SKIPPED miri: nightly miri missing (rustup component add --toolchain nightly miri)"
        return 1
    fi
    export CARGO_TARGET_DIR=target/miri
    # Hazard records are leaked on purpose (reused by later threads), and the reclaimer
    # thread is still parked when the test binary ends.
    export MIRIFLAGS="-Zmiri-ignore-leaks"
    cargo +nightly miri test --lib -- registry::hazard:: registry::tests:: barrier:: || return 1
}

for part in "${parts[@]}"; do
    start=$(date +%s)
    case "$part" in
        tsan) (run_tsan) ;;
        miri) (run_miri) ;;
        *) echo "unknown part '$part' (tsan, miri)"; exit 2 ;;
    esac
    rc=$?
    echo "== $part: $([ $rc -eq 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - start )) s"
    [ $rc -eq 0 ] || status=1
done
exit $status
