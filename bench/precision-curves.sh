#!/usr/bin/env bash
# Trains the same model from the same seed in f32 and in bf16 and draws both loss curves in one
# picture (docs/precision-curves.svg), printing the last validation losses and their difference.
# Runs go to .cache/runs/precision-<f32|bf16>; a finished run is reused, a stopped one resumed.
# Usage: bench/precision-curves.sh [PRESET, default small] [STEPS, default 2000]
#   THREADS=N  threads per run (default: all cores)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
preset=${1:-small} steps=${2:-2000}
data=$(scripts/default-corpus.sh)
threads=${THREADS:-$(nproc)}
for precision in f32 bf16; do
    out=.cache/runs/precision-$preset-$steps-$precision
    if [ -f "$out/model/config.json" ]; then
        echo "$precision: $out is finished" >&2
    elif [ -e "$out/latest" ]; then
        .build/release/ember pretrain --resume "$out" --threads "$threads"
    else
        .build/release/ember pretrain --preset "$preset" --data "$data" --steps "$steps" --precision "$precision" \
            --seed 1 --eval-every 100 --save-every 200 --threads "$threads" --output "$out"
    fi
done
python3 scripts/plot-runs.py docs/precision-curves.svg \
    "f32=.cache/runs/precision-$preset-$steps-f32/log.jsonl" "bf16=.cache/runs/precision-$preset-$steps-bf16/log.jsonl"
