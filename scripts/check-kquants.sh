#!/usr/bin/env bash
# SmolLM2-135M-Instruct quantized by llama.cpp's llama-quantize to the K-quant mixes real files use
# and to q5_0, iq4_nl and iq4_xs, scored by llama-perplexity and by `ember perplexity` (its default
# path: integer products with llama.cpp's activation quantization) on the same text and context;
# prints a Markdown table. A third column is llama-perplexity on the same weights dequantized to f32
# by the gguf package (scripts/dequantize-gguf.py): the weights alone, without the quantization of
# the activations.
#   - the source is the f32 folder (make's .cache/models/SmolLM2-135M-f32) written as an f32 GGUF
#     by `ember export`;
#   - SmolLM2's rows of 576 are not whole 256-element super-blocks, so llama-quantize gives those
#     matrices its fallback type (q5_0, q5_1, iq4_nl, q8_0, ...) and the K-quant only to ffn_down
#     (rows of 1536); the table lists the types each file holds.
# Usage: scripts/check-kquants.sh [TYPE...]   (default: Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K Q5_0 IQ4_NL IQ4_XS)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
types=("$@")
[ ${#types[@]} -gt 0 ] || types=(Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K Q5_0 IQ4_NL IQ4_XS)
bin=.cache/llama.cpp/build/bin
text=Tests/Fixtures/text/licenses.txt
context=512
folder=.cache/models/SmolLM2-135M-f32
[ -x .build/release/ember ] || swift build -c release --product ember >&2
[ -f "$folder/model.safetensors" ] || make "$folder/tokenizer_config.json" >&2
[ -x "$bin/llama-quantize" ] && [ -x "$bin/llama-perplexity" ] || bench/build-llama-cpp.sh llama-quantize llama-perplexity >&2
work=.cache/kquants
mkdir -p "$work"
[ -f "$work/f32.gguf" ] || .build/release/ember export --input "$folder" --gguf "$work/f32.gguf" --type f32 >&2

python=$(scripts/python-env.sh gguf==0.19.0 numpy)
echo "| file | tensor types (count) | size | llama-perplexity | llama-perplexity, f32 of the same weights | ember perplexity | vs llama-perplexity | vs the f32 weights |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for type in "${types[@]}"; do
    file="$work/SmolLM2-135M-$type.gguf"
    [ -f "$file" ] || "$bin/llama-quantize" "$work/f32.gguf" "$file" "$type" >"$work/$type.quantize.log" 2>&1
    llama() { "$bin/llama-perplexity" -m "$1" -f "$text" -c "$context" -t "$(nproc)" 2>&1 | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'; }
    reference=$(llama "$file")
    "$python" scripts/dequantize-gguf.py "$file" "$work/dequantized.gguf" >/dev/null
    dequantized=$(llama "$work/dequantized.gguf")
    rm -f "$work/dequantized.gguf"
    ours=$(.build/release/ember perplexity --model "$file" --file "$text" --context "$context" 2>/dev/null \
        | sed -n 's/^perplexity \([0-9.]*\).*/\1/p')
    mix=$(.build/release/ember inspect --model "$file" 2>/dev/null \
        | awk '/^  [^ ]+\.weight / && $2 != "f32" {c[$2]++} END {for (t in c) printf "%s%s %d", (n++ ? ", " : ""), t, c[t]}')
    size=$(du -m "$file" | cut -f1)
    python3 - "$type" "$mix" "$size" "$reference" "$dequantized" "$ours" <<'PY'
import sys
name, mix, size = sys.argv[1:4]
reference, dequantized, ours = map(float, sys.argv[4:])
print(f"| {name} | {mix} | {size} MB | {reference:.4f} | {dequantized:.4f} | {ours:.4f} | "
      f"{(ours - reference) / reference * 100:+.2f}% | {(ours - dequantized) / dequantized * 100:+.2f}% |")
PY
done
