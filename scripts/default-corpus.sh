#!/usr/bin/env bash
# Prints the path of the default corpus's data folder (.cache/corpus/data: the Python standard
# library tokenized by `ember pretrain`'s own tokenizer), building ember and preparing it when missing.
# Usage: data=$(scripts/default-corpus.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -x .build/release/ember ] || swift build -c release --product ember >&2
[ -f .cache/corpus/data/dataset.json ] || .build/release/ember pretrain --preset tiny --steps 1 --eval-every 0 --output .cache/corpus >&2
echo .cache/corpus/data
