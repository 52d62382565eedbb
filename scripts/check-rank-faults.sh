#!/usr/bin/env bash
# A rank lost mid-run, three ways, on `mpirun -np 2 ember pretrain` (small preset, a checkpoint every
# 5 steps), once a checkpoint exists:
#   kill: SIGKILL to rank 1. The job must end non-zero within 10 s with mpirun naming the rank.
#   stop: SIGSTOP to rank 1 (it stalls without exiting, which MPI does not notice). With
#         --collective-timeout 5, rank 0's watchdog must end the job, naming the collective.
#   save: SIGKILL to rank 1 while a ZeRO-2 checkpoint (each rank writing its shard of the moments)
#         is being saved. The job must end as for kill, and `latest` must still name the previous,
#         complete checkpoint.
# After each, the run must resume from its last checkpoint.
# Usage: scripts/check-rank-faults.sh [kill|stop|save ...]   (default: all three)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
data=$(scripts/default-corpus.sh)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

check() {  # kill | stop | save
    local fault=$1 run="$work/$1" zero=0
    [ "$fault" = save ] && zero=2
    timeout 300 mpirun --bind-to none -np 2 .build/release/ember pretrain --preset small --data "$data" --steps 500 --batch-size 4 \
        --seq-len 128 --grad-accum 2 --eval-every 0 --save-every 5 --threads 1 --collective-timeout 5 --zero-stage $zero \
        --output "$run" >"$run.log" 2>&1 &
    local job=$!
    until [ -f "$run/latest" ]; do
        kill -0 "$job" 2>/dev/null || { cat "$run.log" >&2; echo "FAIL ($fault): the job ended before its first checkpoint" >&2; exit 1; }
        sleep 0.2
    done
    local victim="" pid previous
    for pid in $(pgrep -f "ember pretrain --preset small --data $data .*--output $run"); do
        if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1; then victim=$pid; fi
    done
    [ -n "$victim" ] || { echo "FAIL ($fault): rank 1 not found" >&2; exit 1; }
    previous=$(cat "$run/latest")
    if [ "$fault" = save ]; then
        # The next checkpoint is being written while its hidden partial folder exists.
        until compgen -G "$run/checkpoints/.step-*.partial" >/dev/null; do sleep 0.005; done
    else
        sleep 2  # into a later step
    fi
    local start status=0 limit expected
    start=$(date +%s.%N)
    if [ "$fault" = kill ] || [ "$fault" = save ]; then
        kill -KILL "$victim"; limit=10; expected='process rank 1 with PID [0-9]* on node [^ ]* exited on signal 9'
    else
        kill -STOP "$victim"; limit=20; expected='rank 0 of 2: [^(]* (call [0-9]*) has not finished after 5 s'
    fi
    wait "$job" || status=$?
    kill -KILL "$victim" 2>/dev/null || true
    local seconds named
    seconds=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)")
    named=$(grep -o "$expected" "$run.log" | head -1 || true)
    echo "$fault: rank 1 (pid $victim) at $(cat "$run/latest"): the job ended after $seconds s with exit status $status: \"$named\""
    [ "$status" -ne 0 ] || { echo "FAIL ($fault): exit status 0" >&2; exit 1; }
    python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$seconds" "$limit" ||
        { echo "FAIL ($fault): took over $limit s" >&2; exit 1; }
    [ -n "$named" ] || { cat "$run.log" >&2; echo "FAIL ($fault): the message does not name the rank or the collective" >&2; exit 1; }
    local checkpoint step
    checkpoint=$(cat "$run/latest")
    if [ "$fault" = save ]; then
        local partial
        partial=$(compgen -G "$run/checkpoints/.step-*.partial" | head -1 || true)
        echo "save: killed while $(basename "${partial:-a checkpoint that was then complete}") was being written; latest: $previous before, $checkpoint after"
        [ -n "$partial" ] || echo "note (save): the save finished before the kill landed; latest moved to a complete checkpoint"
        [ -n "$partial" ] && [ "$checkpoint" != "$previous" ] && { echo "FAIL (save): latest moved to an incomplete checkpoint" >&2; exit 1; }
        [ -f "$run/$checkpoint/trainer_state.json" ] || { echo "FAIL (save): $checkpoint is not complete" >&2; exit 1; }
    fi
    step=$((10#${checkpoint##*-}))
    timeout 300 .build/release/ember pretrain --resume "$run" --steps $((step + 2)) --threads 2 >"$run.resume.log" 2>&1 ||
        { cat "$run.resume.log" >&2; echo "FAIL ($fault): resuming $checkpoint failed" >&2; exit 1; }
    echo "PASS ($fault): resumed from $checkpoint: $(tail -1 "$run.resume.log" | cut -c1-60)"
}

for fault in "${@:-kill stop save}"; do for f in $fault; do check "$f"; done; done
