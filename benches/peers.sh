#!/usr/bin/env bash
# Keel side by side with raw wasmer and wasmtime (benches/peers/, a separate Cargo project:
# CI and the main build never compile it). Builds it niced, in release, in its own target dir
# (benches/peers/target), then runs it; the figures are `RATIO ...` and `ABS ...` lines.
#   benches/peers.sh                 build and run
#   KEEL_BENCH_ROUNDS=31 benches/peers.sh
# Needs clang with the wasm32 target and wasm-ld (as the WASM tests do). Run it on an
# otherwise idle machine (load < 1.5): the ratios are interleaved, the absolute figures are not
# immune to load.
set -euo pipefail
cd "$(dirname "$0")/peers"
export CARGO_TARGET_DIR="$PWD/target"
nice -n 10 cargo build --release --locked
echo "load: $(cut -d' ' -f1-3 /proc/loadavg), cpus: $(nproc)"
exec "$CARGO_TARGET_DIR/release/keel-peers"
