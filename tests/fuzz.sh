#!/usr/bin/env bash
# Run Keel's cargo-fuzz targets (tests/fuzz) for a time or a number of runs each. See
# docs/testing.md.
#
# Usage: tests/fuzz.sh [-t SECONDS | -n RUNS] [-j JOBS] [TARGET...]
#   -t SECONDS  fuzz each target for this long (default 60)
#   -n RUNS     fuzz each target for this many executions instead (libFuzzer -runs)
#   -j JOBS     parallel libFuzzer workers per target (default 1)
#   TARGET      any of: manifest themis_manifest signature trust_store wasm_load capi_ops
#               (default: all of them)
# Examples:
#   tests/fuzz.sh -t 120                 # two minutes per target
#   tests/fuzz.sh -n 10000000 manifest   # ten million executions of one target
#   tests/fuzz.sh -t 1800 -j 2           # the release budget: 30 minutes per target
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Builds with
# AddressSanitizer (cargo-fuzz's default) into tests/fuzz/target. The checked-in seeds in
# tests/fuzz/corpus/<target> are read, never written: new inputs go to
# tests/fuzz/target/corpus/<target>, crashes to tests/fuzz/artifacts/<target> (not checked
# in; a crash becomes a regression test in tests/, see docs/testing.md). Everything runs
# under `nice -n 19` (override with NICE="").
#
# Prints, per target, the executions libFuzzer reports, the coverage, and the findings
# (crash/leak/timeout/OOM artifacts written by this run); exits 1 if any target found one,
# 2 on a build or usage error.
set -u -o pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ_DIR=tests/fuzz
ALL=(manifest themis_manifest signature trust_store wasm_load capi_ops)
SECONDS_PER=60
RUNS=""
JOBS=1
NICE=${NICE-nice -n 19}

while getopts "t:n:j:h" opt; do
    case $opt in
        t) SECONDS_PER=$OPTARG ;;
        n) RUNS=$OPTARG ;;
        j) JOBS=$OPTARG ;;
        *) sed -n '2,26p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz (and rustup toolchain install nightly)" >&2
    exit 2
fi

# wasm_load runs without AddressSanitizer: wasmer runs guest code on its own stack and leaves
# a trap by unwinding across it, which ASan's __asan_handle_no_return misreads as a
# stack-buffer-overflow in wasmer_vm::raise_lib_trap (a false report on every trapping module).
# Override per target with SAN_<target>=address|none.
sanitizer() { local v="SAN_$1"; if [ -n "${!v:-}" ]; then echo "${!v}"; elif [ "$1" = wasm_load ]; then echo none; else echo address; fi; }

echo "== building fuzz targets: ${TARGETS[*]}" >&2
for t in "${TARGETS[@]}"; do
    $NICE cargo +nightly fuzz build -s "$(sanitizer "$t")" --fuzz-dir "$FUZZ_DIR" "$t" >&2 ||
        { echo "build of $t failed" >&2; exit 2; }
done

LOGDIR=$ROOT/$FUZZ_DIR/target/logs
mkdir -p "$LOGDIR"
declare -a SUMMARY=()
found=0
for t in "${TARGETS[@]}"; do
    work=$ROOT/$FUZZ_DIR/target/corpus/$t
    arts=$ROOT/$FUZZ_DIR/artifacts/$t
    mkdir -p "$work" "$arts"
    before=$(ls "$arts" | wc -l)
    log=$LOGDIR/$t.log
    limit=(-max_total_time="$SECONDS_PER")
    [ -n "$RUNS" ] && limit=(-runs="$RUNS")
    jobs=()
    [ "$JOBS" -gt 1 ] && jobs=(-fork="$JOBS" -ignore_crashes=0)
    echo "== $t: ${RUNS:+$RUNS runs}${RUNS:-$SECONDS_PER s}, $JOBS job(s); log $log" >&2
    start=$(date +%s)
    # The first corpus dir receives new inputs; the seed dir is only read.
    $NICE cargo +nightly fuzz run -s "$(sanitizer "$t")" --fuzz-dir "$FUZZ_DIR" "$t" "$work" "$ROOT/$FUZZ_DIR/corpus/$t" -- \
        "${limit[@]}" "${jobs[@]}" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$arts/" >"$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    execs=$(grep -h '^stat::number_of_executed_units' "$log" | awk '{s+=$2} END {print s+0}')
    if [ "$execs" = 0 ]; then # -fork mode: the last status line carries the total
        execs=$(grep -h -o -E '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    fi
    cov=$(grep -h -o -E 'cov: [0-9]+' "$log" | tail -1)
    after=$(ls "$arts" | wc -l)
    new=$((after - before))
    if [ "$rc" -ne 0 ] || [ "$new" -gt 0 ]; then
        found=1
        SUMMARY+=("$t: FINDING (exit $rc, $new new artifact(s) in $arts) after ${execs:-?} executions, ${secs}s, ${cov:-cov ?}; log $log")
        grep -h -E '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY:|Test unit written)' "$log" | head -5 | sed 's/^/    /' >&2
    else
        SUMMARY+=("$t: ok, ${execs:-?} executions, ${secs}s, ${cov:-cov ?}, 0 findings")
    fi
done

echo "== fuzz results"
printf '%s\n' "${SUMMARY[@]}"
exit $found
