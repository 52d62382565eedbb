#!/usr/bin/env bash
# Training throughput against PyTorch (see bench/train-speed.py). Prepares the default corpus
# (the tiny preset's data) when no --data is given, builds Ember when missing.
# Usage: bench/train-speed.sh [train-speed.py options]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -x .build/release/ember ] || swift build -c release --product ember >&2
python=$(scripts/python-env.sh torch transformers numpy)
data=.cache/corpus/data
if [ ! -f "$data/dataset.json" ]; then
    .build/release/ember pretrain --preset tiny --steps 1 --eval-every 0 --output .cache/corpus >&2
fi
case " $* " in *" --data "*) exec "$python" bench/train-speed.py "$@" ;; esac
exec "$python" bench/train-speed.py --data "$data" "$@"
