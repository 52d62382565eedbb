#!/usr/bin/env bash
# Data-parallel throughput on this machine, in one run: `mpirun -np 2` (one thread per rank, each
# rank one micro-batch of the global batch) against one process with two threads accumulating the
# same two micro-batches, with the gradient buckets all-reduced during the backward and after it.
# Reports median tokens/s of the steps after the first two, the ratio, and rank 0's exposed
# communication (time waiting for all-reduces after its backward). Uses the medium preset's shape
# on the default corpus (.cache/corpus, prepared when missing).
# Usage: bench/parallel-speed.sh [STEPS] [PRESET]   (default 10 medium)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
steps=${1:-10}
preset=${2:-medium}
data=$(scripts/default-corpus.sh)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(pretrain --preset "$preset" --data "$data" --steps "$steps" --batch-size 8 --seq-len 256 --grad-accum 2 --eval-every 0 --save-every 0)
median() { python3 -c "import json,statistics,sys; print(round(statistics.median([json.loads(l)['tokens_per_s'] for l in open(sys.argv[1])][2:])))" "$1"; }
run() {  # name, then the command
    local name=$1; shift
    "$@" --output "$work/$name" >"$work/$name.out" 2>&1 || { cat "$work/$name.out" >&2; exit 1; }
    echo "$(median "$work/$name/log.jsonl") $(grep -o '[0-9.]* s spent finishing' "$work/$name.out" | cut -d' ' -f1)"
}
read -r single _ < <(run single .build/release/ember "${common[@]}" --threads 2)
read -r overlapped exposed < <(run overlapped timeout 1800 mpirun --bind-to none -np 2 .build/release/ember "${common[@]}" --threads 1)
read -r after after_exposed < <(run after timeout 1800 mpirun --bind-to none -np 2 .build/release/ember "${common[@]}" --threads 1 --no-overlap)
cmp -s "$work/single/model/model.safetensors" "$work/overlapped/model/model.safetensors" && same=identical || same=DIFFERENT
echo "| run | tokens/s | vs one process | rank 0 exposed communication over $steps steps |"
echo "| --- | ---: | ---: | ---: |"
echo "| one process, 2 threads, 2 accumulated micro-batches | $single | 1.00 | |"
echo "| mpirun -np 2, 1 thread each, buckets during the backward | $overlapped | $(python3 -c "print(f'{$overlapped/$single:.2f}')") | ${exposed} s |"
echo "| mpirun -np 2, 1 thread each, buckets after the backward | $after | $(python3 -c "print(f'{$after/$single:.2f}')") | ${after_exposed} s |"
echo "final weights of one process and of two ranks: $same"
