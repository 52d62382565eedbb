#!/usr/bin/env bash
# A rank killed mid-run: starts `mpirun -np 2 ember pretrain` (small preset, a checkpoint every 5
# steps), sends SIGKILL to rank 1 once a checkpoint exists, and checks that the job ends non-zero
# within 10 s with mpirun naming the rank, and that the run resumes from its last checkpoint.
# Usage: scripts/check-rank-kill.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -x .build/release/ember ] || swift build -c release --product ember >&2
data=.cache/corpus/data
[ -f "$data/dataset.json" ] || .build/release/ember pretrain --preset tiny --steps 1 --eval-every 0 --output .cache/corpus >&2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
timeout 300 mpirun --bind-to none -np 2 .build/release/ember pretrain --preset small --data "$data" --steps 500 --batch-size 4 \
    --seq-len 128 --grad-accum 2 --eval-every 0 --save-every 5 --threads 1 --output "$work/run" >"$work/log" 2>&1 &
job=$!
until [ -f "$work/run/latest" ]; do
    kill -0 "$job" 2>/dev/null || { cat "$work/log" >&2; echo "FAIL: the job ended before its first checkpoint" >&2; exit 1; }
    sleep 0.2
done
sleep 2  # into a later step
victim=""
for pid in $(pgrep -f "ember pretrain --preset small --data $data"); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1; then victim=$pid; fi
done
[ -n "$victim" ] || { echo "FAIL: rank 1 not found" >&2; exit 1; }
start=$(date +%s.%N)
kill -9 "$victim"
status=0
wait "$job" || status=$?
seconds=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)")
named=$(grep -o 'process rank 1 with PID [0-9]* on node [^ ]* exited on signal 9' "$work/log" || true)
echo "rank 1 (pid $victim) killed at $(cat "$work/run/latest"): the job ended after $seconds s with exit status $status; mpirun: \"$named\""
[ "$status" -ne 0 ] || { echo "FAIL: exit status 0" >&2; exit 1; }
python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 10 else 1)" "$seconds" || { echo "FAIL: took over 10 s" >&2; exit 1; }
[ -n "$named" ] || { cat "$work/log" >&2; echo "FAIL: mpirun did not name rank 1" >&2; exit 1; }
checkpoint=$(cat "$work/run/latest")
step=$((10#${checkpoint##*-}))
timeout 300 .build/release/ember pretrain --resume "$work/run" --steps $((step + 2)) --threads 2 >"$work/resume.log" 2>&1 ||
    { cat "$work/resume.log" >&2; echo "FAIL: resuming $checkpoint failed" >&2; exit 1; }
echo "PASS: resumed from $checkpoint: $(tail -1 "$work/resume.log" | cut -c1-80)"
