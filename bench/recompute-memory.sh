#!/usr/bin/env bash
# Activation recomputation: peak resident memory of `ember pretrain` with --recompute none and
# --recompute block, for a model whose activations dominate its memory (8 layers of width 256,
# 16 sequences of 512 tokens), and whether the two give the same losses.
# Usage: bench/recompute-memory.sh [STEPS]   (default 3; prepares the default corpus when missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
steps=${1:-3}
data=$(scripts/default-corpus.sh)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
vocab=$(sed -n 's/.*"vocab_size" *: *\([0-9]*\).*/\1/p' "$data/dataset.json")
cat >"$work/config.json" <<JSON
{"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 8,
 "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": $vocab, "max_position_embeddings": 512, "tie_word_embeddings": true}
JSON
echo "| --recompute | peak resident memory (MiB) | median tokens/s | losses |"
echo "| --- | ---: | ---: | --- |"
for mode in none block; do
    out=$(.build/release/ember pretrain --config "$work/config.json" --data "$data" --steps "$steps" --batch-size 16 --seq-len 512 \
          --recompute "$mode" --eval-every 0 --save-every 0 --threads 2 --output "$work/$mode" 2>&1 | tail -1)
    peak=$(echo "$out" | sed -n 's/.*peak memory \([0-9]*\) MiB.*/\1/p')
    read -r speed losses < <(python3 -c '
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(round(statistics.median(r["tokens_per_s"] for r in rows)), " ".join("%.6f" % r["loss"] for r in rows))' "$work/$mode/log.jsonl")
    echo "| $mode | $peak | $speed | $losses |"
done
