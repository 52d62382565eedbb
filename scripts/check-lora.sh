#!/usr/bin/env bash
# A LoRA adapter trained by Ember against PEFT and llama.cpp, by perplexity on the same text
# (held-out Alpaca responses, scored as llama-perplexity scores: chunks of CONTEXT tokens, the
# second half of each):
#   - PEFT: transformers + PeftModel.from_pretrained(ADAPTER) over the f32 folder, against
#     `ember perplexity --model FOLDER --lora ADAPTER` (and both without the adapter);
#   - llama.cpp: `ember export --lora` writes the GGUF adapter; llama-perplexity --lora over the
#     GGUF base against `ember perplexity --model BASE.gguf --lora ADAPTER`;
#   - the merged model: `ember export --merge-lora` through llama-perplexity.
# Usage: scripts/check-lora.sh ADAPTER_DIR [CONTEXT]   (an `ember sft --lora-rank` run's adapter/)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
adapter=$(cd "$1" && pwd)
context=${2:-256}
cd "$root"
folder=.cache/models/SmolLM2-135M-f32
gguf=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -x .build/release/ember ] || swift build -c release --product ember >&2
[ -x .cache/llama.cpp/build/bin/llama-perplexity ] || bench/build-llama-cpp.sh llama-perplexity >&2
[ -f .cache/sft/alpaca.jsonl ] || .cache/venv/bin/python scripts/fetch-sft-data.py >&2
python=$(scripts/python-env.sh torch transformers peft tokenizers)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" - "$work/text.txt" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(".cache/sft/alpaca.jsonl")]
# The last examples: the held-out end of the file, not the seeded split, but unseen by a short run.
text = "\n\n".join(r["completion"][0]["content"] for r in rows[-120:])
open(sys.argv[1], "w").write(text)
PY
ember() { .build/release/ember perplexity "$@" --file "$work/text.txt" --context "$context" 2>/dev/null | sed -n 's/^perplexity \([0-9.]*\).*/\1/p'; }
# --no-repack: this llama.cpp build crashes repacking q4_1 rows for AVX-512 on some CPUs (seen on a Xeon with AVX-512 VNNI).
llama() { .cache/llama.cpp/build/bin/llama-perplexity "$@" -f "$work/text.txt" -c "$context" -t 2 --no-repack 2>&1 | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'; }
peft() {
    "$python" - "$folder" "$work/text.txt" "$context" "$@" <<'PY'
import math, sys, torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM
folder, text, context = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
if len(sys.argv) > 4:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, sys.argv[4])
ids = Tokenizer.from_file(folder + "/tokenizer.json").encode(open(text).read(), add_special_tokens=False).ids
nll, count = 0.0, 0
with torch.no_grad():
    for c in range(len(ids) // context):
        window = torch.tensor(ids[c * context:(c + 1) * context])[None]
        logp = torch.log_softmax(model(window).logits[0].double(), -1)
        for j in range(context // 2, context - 1):
            nll -= logp[j, window[0, j + 1]].item()
            count += 1
print(f"{math.exp(nll / count):.4f}")
PY
}
.build/release/ember export --input "$gguf" --lora "$adapter" --gguf "$work/adapter.gguf" 2>/dev/null
.build/release/ember export --input "$folder" --merge-lora "$adapter" --gguf "$work/merged.gguf" --type f32 2>/dev/null
echo "perplexity on $(wc -c <"$work/text.txt") bytes of held-out Alpaca responses, context $context"
echo
echo "| model | reference | ember perplexity |"
echo "| --- | ---: | ---: |"
echo "| f32 folder, base (PyTorch) | $(peft) | $(ember --model "$folder") |"
echo "| f32 folder + adapter (PEFT) | $(peft "$adapter") | $(ember --model "$folder" --lora "$adapter") |"
echo "| Q4_1 GGUF, base (llama-perplexity) | $(llama -m "$gguf") | $(ember --model "$gguf") |"
echo "| Q4_1 GGUF + adapter (llama-perplexity --lora adapter.gguf) | $(llama -m "$gguf" --lora "$work/adapter.gguf") | $(ember --model "$gguf" --lora "$adapter") |"
echo "| f32 merged (ember export --merge-lora; llama-perplexity) | $(llama -m "$work/merged.gguf") | $(ember --model "$work/merged.gguf") |"
