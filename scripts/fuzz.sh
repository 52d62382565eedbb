#!/usr/bin/env bash
# Builds the fuzz harnesses (Fuzz/, libFuzzer with AddressSanitizer) and runs each for SECONDS on
# JOBS cores. Each harness's corpus grows in .cache/fuzz/corpus/<harness> from the committed seeds in
# Fuzz/seeds/<harness>, after the inputs in Fuzz/regressions/<harness> (each once a finding) pass; crashes, hangs (an input over 1 s) and out-of-memory inputs (over 2 GiB)
# land in .cache/fuzz/findings/<harness>/ and fail the run. A summary line per harness (executions,
# CPU seconds, coverage in edges and features, corpus size, findings) goes to .cache/fuzz/summary.txt.
# Usage: scripts/fuzz.sh [SECONDS per harness, default 60] [HARNESS...]
#   JOBS=N   processes per harness (default 2)
#   NO_BUILD=1  run the harnesses as last built
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${1:-60}
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(gguf safetensors tokenizer-json sentencepiece jinja requests jsonl adapter checkpoint dequantize)
jobs=${JOBS:-2}
[ -x /usr/bin/time ] || { echo "GNU time (/usr/bin/time), which counts the fuzzers' CPU seconds, is missing: run scripts/setup.sh" >&2; exit 1; }
build=.build-fuzz
for harness in "${harnesses[@]}"; do
    [ -n "${NO_BUILD:-}" ] && continue
    EMBER_FUZZ=1 swift build -c release --build-path "$build" -Xswiftc -sanitize=fuzzer,address \
        -Xcc -fsanitize=fuzzer-no-link,address --product "fuzz-$harness" 2>&1 | grep -E "error|Compiling|complete" >&2 || true
    [ -x "$build/release/fuzz-$harness" ] || { echo "fuzz-$harness did not build" >&2; exit 1; }
done
export EMBER_FUZZ_MODEL="$root/Fuzz/seeds/gguf/tiny-fim.gguf"
export OPENBLAS_NUM_THREADS=1
# Leaks are not findings here: Foundation keeps a buffer for each empty file it reads, and the
# process-wide model and engine are alive at exit. Resident memory is measured by the soak instead.
export ASAN_OPTIONS=detect_leaks=0:${ASAN_OPTIONS:-}
# A crash is reported by ASan and libFuzzer; Swift's own backtracer would crash under ASan.
export SWIFT_BACKTRACE=enable=no
summary=.cache/fuzz/summary.txt
mkdir -p .cache/fuzz
failed=0
for harness in "${harnesses[@]}"; do
    corpus=.cache/fuzz/corpus/$harness findings=.cache/fuzz/findings/$harness logs=.cache/fuzz/logs/$harness
    mkdir -p "$corpus" "$findings" "$logs"
    rm -f "$logs"/*.log
    # Inputs that once failed run first: each must pass again.
    if compgen -G "Fuzz/regressions/$harness/*" >/dev/null; then
        "$build/release/fuzz-$harness" Fuzz/regressions/"$harness"/* >"$logs/regressions.log" 2>&1 \
            || { echo "fuzz-$harness: a regression input fails again" >&2; tail -20 "$logs/regressions.log" >&2; failed=1; continue; }
    fi
    echo "fuzz-$harness: ${seconds}s on $jobs cores" >&2
    status=0
    started=$(date +%s)
    /usr/bin/time -f "%U %S" -o "$logs/time.txt" "$build/release/fuzz-$harness" "$corpus" "Fuzz/seeds/$harness" -max_total_time="$seconds" -timeout=1 -rss_limit_mb=2048 \
        -malloc_limit_mb=2048 -max_len=65536 -fork="$jobs" -artifact_prefix="$findings/" -print_final_stats=1 \
        >"$logs/fuzz.log" 2>&1 || status=$?
    stats=$(grep -E "^#[0-9]+" "$logs/fuzz.log" | tail -1 || true)
    found=$(ls "$findings" | wc -l)
    # CPU seconds the harness's processes used (user and system), which the campaign counts.
    cpu=$(awk 'END { printf "%d", $1 + $2 }' "$logs/time.txt" 2>/dev/null || echo 0)
    line="$(date -u +%FT%TZ) $harness seconds=$(( $(date +%s) - started )) jobs=$jobs cpu=$cpu status=$status findings=$found last: $stats"
    echo "$line" | tee -a "$summary" >&2
    if [ "$status" -ne 0 ] || [ "$found" -gt 0 ]; then
        failed=1
        grep -E "ERROR|invariant broken|Fatal error|panic|SUMMARY|deadly|timeout|out-of-memory" "$logs"/*.log | head -20 >&2 || true
    fi
done
exit $failed
