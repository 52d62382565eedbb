#!/usr/bin/env bash
# GGUF export against llama.cpp: exports a trained run's model (f32, f16, q8_0) with `ember export`
# and prints the perplexity llama-perplexity and `ember perplexity` give on the same text (the
# run's validation split, decoded), and Ember's on the safetensors folder itself.
# Usage: scripts/check-export.sh RUN_DIR [CONTEXT]   (RUN_DIR from `ember pretrain`; default context 128)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
run=$(cd "$1" && pwd)
context=${2:-128}
cd "$root"
[ -x .build/release/ember ] || swift build -c release --product ember >&2
[ -x .cache/llama.cpp/build/bin/llama-perplexity ] || bench/build-llama-cpp.sh llama-perplexity >&2
python=$(scripts/python-env.sh tokenizers==0.23.3)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
state="$run/$(head -1 "$run/latest")/trainer_state.json"
"$python" - "$state" "$run/model/tokenizer.json" "$work/text.txt" <<'PY'
import json, struct, sys
from array import array
from tokenizers import Tokenizer
state, tokenizer, out = sys.argv[1:]
data = json.load(open(state))["settings"]["data"]
raw = open(f"{data}/val.bin", "rb").read()
width, count = struct.unpack("<I", raw[12:16])[0], struct.unpack("<Q", raw[16:24])[0]
ids = array("H" if width == 2 else "I")
ids.frombytes(raw[32:32 + width * min(count, 20000)])
open(out, "w").write(Tokenizer.from_file(tokenizer).decode(list(ids)))
PY
echo "| model | llama-perplexity | ember perplexity |"
echo "| --- | ---: | ---: |"
for type in f32 f16 q8_0; do
    .build/release/ember export --input "$run/model" --gguf "$work/model-$type.gguf" --type "$type" 2>/dev/null
    .cache/llama.cpp/build/bin/llama-perplexity -m "$work/model-$type.gguf" -f "$work/text.txt" -c "$context" -t 2 >"$work/llama-$type.log" 2>&1 || true
    theirs=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$work/llama-$type.log")
    [ -n "$theirs" ] || { echo "llama-perplexity gave no estimate for $type:" >&2; tail -5 "$work/llama-$type.log" >&2; }
    ours=$(.build/release/ember perplexity --model "$work/model-$type.gguf" --file "$work/text.txt" --context "$context" 2>&1 |
           tail -1 | sed -n 's/^perplexity \([0-9.]*\).*/\1/p')
    echo "| GGUF $type | $theirs | $ours |"
done
ours=$(.build/release/ember perplexity --model "$run/model" --file "$work/text.txt" --context "$context" 2>&1 | tail -1 | sed -n 's/^perplexity \([0-9.]*\).*/\1/p')
echo "| safetensors folder | | $ours |"
