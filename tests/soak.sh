#!/usr/bin/env bash
# Whole-host C-ABI soak under sanitizers and valgrind (issue 13). See docs/testing.md.
#
# Usage: tests/soak.sh [CALLS] [RELOADS] [MODE...]
#   CALLS    echo calls per caller thread (default 1000000; 2 caller threads)
#   RELOADS  hot reloads alternating two signed versions (default 1000)
#   MODE     any of: plain asan tsan c-asan valgrind   (default: asan tsan valgrind)
#     plain     tests/soak.rs (the Rust stress test driving the C ABI), debug build
#     asan      the same, built with -Zsanitizer=address (nightly, -Zbuild-std)
#     tsan      the same, built with -Zsanitizer=thread (nightly, -Zbuild-std)
#     c-asan    tests/c/soak_host.c (clang -fsanitize=address) on libkeel.so built with
#               -Zsanitizer=address
#     valgrind  tests/c/soak_host.c on the debug libkeel.so under valgrind memcheck
#               (VALGRIND_CALLS / VALGRIND_RELOADS override CALLS / RELOADS for this run:
#               memcheck is ~50x slower)
#
# Each run: 2 threads x CALLS calls while RELOADS reloads alternate two signed versions and
# another thread loops unload/load of a second plugin; RSS is sampled after warm-up and after
# everything is unloaded. The Rust runs fail when RSS grew by more than
# KEEL_SOAK_RSS_GROWTH_MB (default here: 64 MiB plain, 256 MiB under a sanitizer, whose
# shadow memory and quarantine grow with the allocations); any sanitizer report fails the run
# (halt_on_error / exitcode), and so does any valgrind error (--error-exitcode) or definite
# leak. Exits non-zero if any mode failed; prints one result line per mode at the end.
#
# Builds go to target/soak-<mode> (sanitized std and dependencies: several GB; delete it
# when done). Everything runs under `nice -n 19` (override with NICE="").
set -u -o pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CALLS=${1:-1000000}
RELOADS=${2:-1000}
shift $(( $# >= 2 ? 2 : $# ))
MODES=("$@")
[ ${#MODES[@]} -eq 0 ] && MODES=(asan tsan valgrind)
NICE=${NICE-nice -n 19}
TARGET=$(rustc -vV | sed -n 's/^host: //p')
LOGDIR=${SOAK_LOGDIR:-$ROOT/target/soak-logs}
mkdir -p "$LOGDIR"
declare -a RESULTS=()

# The -Zbuild-std compiler_builtins lacks __negsf2/__negdf2, which wasmer-vm references: see
# tests/c/soak_softfloat.c. Built once and linked into every sanitized (build-std) binary.
SOFTFLOAT="$ROOT/target/soak_softfloat.o"
softfloat() {
    [ -f "$SOFTFLOAT" ] && [ "$SOFTFLOAT" -nt tests/c/soak_softfloat.c ] && return 0
    ${CC:-cc} -O2 -fPIC -c -o "$SOFTFLOAT" tests/c/soak_softfloat.c
}
status=0

record() { # mode rc logfile
    local line
    # cargo test --nocapture prints the result after "test NAME ... " on the same line
    line=$(grep -h -o -E '(^|\.\.\. )soak(_host)?: .*' "$3" | sed 's/^\.\.\. //' | tail -1)
    if [ "$2" -eq 0 ]; then
        RESULTS+=("PASS $1: ${line:-(no result line)}")
    else
        RESULTS+=("FAIL $1 (exit $2, log $3): ${line:-see log}")
        status=1
    fi
}

rust_soak() { # mode sanitizer(or "")
    local mode=$1 san=$2 log="$LOGDIR/$1.log" rc
    local -a cargo=(cargo) flags=()
    local link=""
    local growth=${KEEL_SOAK_RSS_GROWTH_MB:-64}
    if [ -n "$san" ]; then
        softfloat || { record "$mode" 1 /dev/null; return; }
        link="-Clink-arg=$SOFTFLOAT"
        cargo=(cargo +nightly)
        flags=(-Zbuild-std --target "$TARGET")
        growth=${KEEL_SOAK_RSS_GROWTH_MB:-256}
    fi
    echo "== $mode: building tests/soak.rs ${san:+with -Zsanitizer=$san}" >&2
    RUSTFLAGS="${san:+-Zsanitizer=$san} $link ${RUSTFLAGS:-}" RUSTDOCFLAGS="${san:+-Zsanitizer=$san}" \
        $NICE "${cargo[@]}" test "${flags[@]}" --target-dir "target/soak-$mode" --test soak --no-run \
        >"$log" 2>&1 || { record "$mode" 1 "$log"; return; }
    echo "== $mode: running ($CALLS calls x 2 threads, $RELOADS reloads)" >&2
    RUSTFLAGS="${san:+-Zsanitizer=$san} $link ${RUSTFLAGS:-}" RUSTDOCFLAGS="${san:+-Zsanitizer=$san}" \
        KEEL_SOAK_CALLS=$CALLS KEEL_SOAK_RELOADS=$RELOADS KEEL_SOAK_RSS_GROWTH_MB=$growth \
        ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:quarantine_size_mb=64} \
        TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:exitcode=66:second_deadlock_stack=1} \
        $NICE "${cargo[@]}" test "${flags[@]}" --target-dir "target/soak-$mode" --test soak -- \
        --ignored --nocapture --test-threads 1 soak_calls_reloads_and_unload_load_churn >>"$log" 2>&1
    rc=$?
    if grep -q -E '^(==[0-9]+==ERROR: AddressSanitizer|WARNING: ThreadSanitizer|SUMMARY: (Address|Thread|Leak)Sanitizer)' "$log"; then
        [ "$rc" -eq 0 ] && rc=1
    fi
    record "$mode" "$rc" "$log"
}

fixtures() { # dir
    rm -rf "$1"
    KEEL_SOAK_DIR=$1 $NICE cargo test --test soak -- --ignored --exact soak_prepare_fixtures >/dev/null 2>&1 ||
        KEEL_SOAK_DIR=$1 cargo test --test soak -- --ignored --exact soak_prepare_fixtures
}

c_host() { # mode
    local mode=$1 log="$LOGDIR/$1.log" fx="$ROOT/target/soak-fixtures-$1" rc libdir
    local calls=$CALLS reloads=$RELOADS
    if [ "$mode" = valgrind ]; then
        calls=${VALGRIND_CALLS:-$CALLS}
        reloads=${VALGRIND_RELOADS:-$RELOADS}
        echo "== valgrind: building libkeel.so (debug) and tests/c/soak_host.c" >&2
        $NICE cargo build --lib >"$log" 2>&1 || { record "$mode" 1 "$log"; return; }
        libdir=$ROOT/target/debug
        ${CC:-cc} -O1 -g -std=c11 -Wall -Wextra -Werror -I include -o "target/soak_host" tests/c/soak_host.c \
            -L"$libdir" -lkeel -Wl,-rpath,"$libdir" -lpthread >>"$log" 2>&1 || { record "$mode" 1 "$log"; return; }
        fixtures "$fx" >>"$log" 2>&1 || { record "$mode" 1 "$log"; return; }
        echo "== valgrind: running ($calls calls x 2 threads, $reloads reloads)" >&2
        $NICE valgrind --tool=memcheck --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
            --show-leak-kinds=definite --track-origins=no --fair-sched=yes \
            target/soak_host "$fx" "$calls" "$reloads" >>"$log" 2>&1
        rc=$?
    else # c-asan
        echo "== c-asan: building libkeel.so with -Zsanitizer=address and soak_host with clang -fsanitize=address" >&2
        softfloat || { record "$mode" 1 /dev/null; return; }
        RUSTFLAGS="-Zsanitizer=address -Clink-arg=$SOFTFLOAT ${RUSTFLAGS:-}" $NICE cargo +nightly build -Zbuild-std --target "$TARGET" \
            --target-dir target/soak-asan --lib >"$log" 2>&1 || { record "$mode" 1 "$log"; return; }
        libdir=$ROOT/target/soak-asan/$TARGET/debug
        clang -O1 -g -fsanitize=address -std=c11 -Wall -Wextra -Werror -I include -o target/soak_host_asan \
            tests/c/soak_host.c -L"$libdir" -lkeel -Wl,-rpath,"$libdir" -lpthread >>"$log" 2>&1 ||
            { record "$mode" 1 "$log"; return; }
        fixtures "$fx" >>"$log" 2>&1 || { record "$mode" 1 "$log"; return; }
        echo "== c-asan: running ($calls calls x 2 threads, $reloads reloads)" >&2
        ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1} $NICE target/soak_host_asan "$fx" "$calls" \
            "$reloads" >>"$log" 2>&1
        rc=$?
    fi
    record "$mode" "$rc" "$log"
}

for m in "${MODES[@]}"; do
    case $m in
        plain) rust_soak plain "" ;;
        asan) rust_soak asan address ;;
        tsan) rust_soak tsan thread ;;
        c-asan | valgrind) c_host "$m" ;;
        *) echo "unknown mode '$m' (plain asan tsan c-asan valgrind)" >&2; exit 2 ;;
    esac
done

echo "== soak results (calls per thread $CALLS, reloads $RELOADS)"
printf '%s\n' "${RESULTS[@]}"
exit $status
