#!/usr/bin/env bash
# Attention memory in training: peak resident memory of one `ember pretrain` step on one sequence
# of 2,048, 4,096 and 8,192 tokens (a small model: 2 layers of width 256, 8 heads, so the
# attention's share shows), next to what B·H·T·T fp32 probabilities would take per layer.
# Usage: bench/attention-memory.sh [LENGTHS...]   (default 2048 4096 8192; prepares the default corpus when missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
lengths=("$@")
[ ${#lengths[@]} -gt 0 ] || lengths=(2048 4096 8192)
[ -x .build/release/ember ] || swift build -c release --product ember
data=$(scripts/default-corpus.sh)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
vocab=$(sed -n 's/.*"vocab_size" *: *\([0-9]*\).*/\1/p' "$data/dataset.json")
echo "| tokens | peak resident memory (MiB) | T×T probabilities per layer (MiB) |"
echo "| ---: | ---: | ---: |"
for T in "${lengths[@]}"; do
    cat >"$work/config.json" <<JSON
{"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 2,
 "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": $vocab, "max_position_embeddings": $T, "tie_word_embeddings": true}
JSON
    out=$(.build/release/ember pretrain --config "$work/config.json" --data "$data" --steps 1 --batch-size 1 --seq-len "$T" \
          --eval-every 0 --save-every 0 --threads 2 --output "$work/run-$T" 2>&1 | tail -1)
    peak=$(echo "$out" | sed -n 's/.*peak memory \([0-9]*\) MiB.*/\1/p')
    echo "| $T | $peak | $(( 8 * T * T * 4 / 1048576 )) |"
done
