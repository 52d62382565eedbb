#!/usr/bin/env bash
# Exact resume after SIGKILL: trains the tiny preset for STEPS steps straight, then trains the same
# run again, kills it with SIGKILL once its mid-way checkpoint is complete, resumes it, and checks
# that both final models are byte-identical.
# Usage: scripts/check-resume.sh [STEPS]   (default 40; builds ember when missing)
#   PRECISION=bf16  the same with bf16 products (default f32)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
steps=${1:-40}
half=$((steps / 2))
[ -x .build/release/ember ] || swift build -c release --product ember >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ember=.build/release/ember
common=(--preset tiny --steps "$steps" --save-every "$half" --eval-every 0 --seed 3 --threads 2 --precision "${PRECISION:-f32}")

$ember pretrain "${common[@]}" --output "$work/straight" 2>"$work/straight.log"
$ember pretrain "${common[@]}" --data "$work/straight/data" --output "$work/killed" 2>"$work/killed.log" &
pid=$!
until [ -f "$work/killed/latest" ]; do
    kill -0 "$pid" 2>/dev/null || { echo "the run ended before its first checkpoint" >&2; exit 1; }
    sleep 0.05
done
sleep 1  # a few steps past the checkpoint, which the resumed run redoes
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
done_steps=$(wc -l <"$work/killed/log.jsonl")
echo "killed with SIGKILL after step $half was saved ($done_steps steps logged)"
$ember pretrain --resume "$work/killed" 2>"$work/resumed.log"
if cmp "$work/straight/model/model.safetensors" "$work/killed/model/model.safetensors"; then
    echo "PASS (${PRECISION:-f32}): $steps steps straight and $half + kill + resume give byte-identical model.safetensors ($(sha256sum <"$work/straight/model/model.safetensors" | cut -c1-16))"
else
    echo "FAIL: the resumed model differs" >&2
    exit 1
fi
