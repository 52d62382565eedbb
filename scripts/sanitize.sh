#!/usr/bin/env bash
# Builds and runs the whole test suite under a sanitizer: address (ASan, with LeakSanitizer off:
# the process-wide thread pool and caches live until exit) or thread (TSan). Each has its own build
# folder (.build-asan, .build-tsan). The log goes to runs/sanitize/KIND.log; the run fails on any
# sanitizer report or failed test.
# Usage: scripts/sanitize.sh address|thread [swift test arguments, e.g. --filter EngineTests]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
kind=${1:?usage: scripts/sanitize.sh address|thread [ARGS]}
shift
case "$kind" in
    address) build=.build-asan; export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:${ASAN_OPTIONS:-} ;;
    thread) build=.build-tsan; export TSAN_OPTIONS=halt_on_error=0:second_deadlock_stack=1:${TSAN_OPTIONS:-} ;;
    *) echo "kind must be address or thread" >&2; exit 2 ;;
esac
# Swift's own backtracer runs inside the crashed process, where the sanitizer's runtime interferes.
export SWIFT_BACKTRACE=enable=no
mkdir -p runs/sanitize
log=runs/sanitize/$kind.log
swift build -c release --build-path "$build" --sanitize="$kind" --build-tests 2>&1 | grep -E "error|warning: .*sanitiz|Compiling|Build" | tail -5
status=0
swift test -c release --build-path "$build" --sanitize="$kind" --skip-build "$@" >"$log" 2>&1 || status=$?
reports=$(grep -cE "^(==[0-9]+==ERROR|WARNING: ThreadSanitizer|SUMMARY: (Address|Thread)Sanitizer)" "$log" || true)
tail -3 "$log"
echo "$kind sanitizer: $reports reports, test status $status; log in $log"
[ "$status" -eq 0 ] && [ "$reports" -eq 0 ]
