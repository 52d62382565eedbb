#!/usr/bin/env bash
# Training throughput against PyTorch (see bench/train-speed.py). Prepares the default corpus
# (the tiny preset's data) when no --data is given, builds Ember when missing.
# Usage: bench/train-speed.sh [train-speed.py options]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=$(scripts/python-env.sh torch transformers numpy)
data=$(scripts/default-corpus.sh)
case " $* " in *" --data "*) exec "$python" bench/train-speed.py "$@" ;; esac
exec "$python" bench/train-speed.py --data "$data" "$@"
