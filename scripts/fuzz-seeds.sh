#!/usr/bin/env bash
# Builds the fuzz harnesses' seed inputs in Fuzz/seeds/<harness>/ from the committed test fixtures
# (files written by transformers, PEFT, SentencePiece, gguf-py and llama.cpp) and from Ember's own
# output (a GGUF export, a training checkpoint). Multi-file inputs (a model folder, an adapter, a
# checkpoint) are the files joined by the harnesses' part separator. Needs .build/release/ember.
# Usage: scripts/fuzz-seeds.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ember=.build/release/ember
[ -x "$ember" ] || swift build -c release --product ember
python=$(scripts/python-env.sh gguf==0.19.0 numpy)
seeds=Fuzz/seeds
rm -rf "$seeds" Fuzz/checkpoint-data && mkdir -p "$seeds"/{gguf,safetensors,tokenizer-json,sentencepiece,jinja,requests,jsonl,adapter,checkpoint,dequantize}
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
fixtures=Tests/Fixtures

# A tiny LLaMA with fill-in-the-middle tokens, as a GGUF: a GGUF seed, and the requests harness's model.
"$ember" export --input "$fixtures/fim/base" --add-fim-tokens "$work/fim" --gguf "$seeds/gguf/tiny-fim.gguf" >/dev/null
cp "$fixtures/tokenizers/sentencepiece/llama.vocab.gguf" "$seeds/gguf/"

"$python" - "$seeds" "$work" <<'PY'
import glob, json, os, sys
import numpy as np
seeds, work = sys.argv[1], sys.argv[2]
fixtures = "Tests/Fixtures"
separator = b"\n\x01--ember-fuzz-part--\x01\n"
def write(harness, name, data):
    with open(os.path.join(seeds, harness, name), "wb") as f:
        f.write(data)
def read(path):
    with open(path, "rb") as f:
        return f.read()
def joined(*paths):
    return separator.join(read(p) for p in paths)

for folder in [f"{fixtures}/fim/base", f"{fixtures}/lora/base", f"{fixtures}/architectures/qwen3/hf", f"{fixtures}/architectures/gpt2/hf"]:
    name = folder.replace(fixtures + "/", "").replace("/", "-")
    write("safetensors", name, joined(f"{folder}/config.json", f"{folder}/model.safetensors"))
    if os.path.exists(f"{folder}/tokenizer.json"):
        write("tokenizer-json", name + ".json", read(f"{folder}/tokenizer.json"))
for path in [f"{fixtures}/tokenizers/sentencepiece/gemma.tokenizer.json", f"{fixtures}/tokenizers/sentencepiece/llama-nfkc-split.tokenizer.json"]:
    write("tokenizer-json", os.path.basename(path), read(path))
for path in sorted(glob.glob(f"{fixtures}/tokenizers/sentencepiece/*.model")):
    if os.path.getsize(path) < 100_000:
        write("sentencepiece", os.path.basename(path), read(path))

messages = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}],
    [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
     {"role": "tool", "content": "{\"temp\": 12}"}],
]
for path in sorted(glob.glob(f"{fixtures}/chat-templates/*.jinja")):
    for i, m in enumerate(messages):
        write("jinja", f"{os.path.basename(path)}-{i}", read(path) + separator + json.dumps(m).encode())

# Requests: the first byte picks the endpoint, in the harness's order.
endpoints = ["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize", "/infill", "/pooling", "/v1/embeddings", "/v1/models", "/health",
             "/v1/load_lora_adapter", "/v1/unload_lora_adapter"]
bodies = {
    "/v1/chat/completions": [{"model": "tiny", "messages": messages[0], "max_tokens": 4, "temperature": 0.7, "top_p": 0.9, "seed": 1, "logprobs": True, "top_logprobs": 2},
                             {"messages": messages[0], "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 3, "stop": ["\n", "."], "n": 2}],
    "/v1/completions": [{"prompt": "Once upon", "max_tokens": 4, "logprobs": 2, "echo": True}, {"prompt": ["a", "b c"], "max_tokens": 0, "echo": True, "logprobs": 1},
                        {"prompt": [[1, 2, 3]], "max_tokens": 2, "stream": True}, {"prompt": "def f(", "suffix": "\n    return x", "max_tokens": 3}],
    "/tokenize": [{"prompt": "Hello world", "add_special_tokens": False}, {"messages": messages[0]}],
    "/detokenize": [{"tokens": [1, 2, 3, 4]}],
    "/infill": [{"input_prefix": "def add(a, b):\n", "input_suffix": "\n", "input_extra": [{"filename": "x.py", "text": "x = 1"}], "prompt": "    return", "n_predict": 3}],
    "/pooling": [{"input": "text"}],
    "/v1/embeddings": [{"input": ["a", "b"], "encoding_format": "base64"}],
    "/v1/models": [{}], "/health": [{}],
    "/v1/load_lora_adapter": [{"lora_name": "a", "lora_path": "seeds"}, {"lora_name": "b", "lora_path": "../Sources"}],
    "/v1/unload_lora_adapter": [{"lora_name": "a"}],
}
for index, endpoint in enumerate(endpoints):
    for i, body in enumerate(bodies[endpoint]):
        write("requests", f"{endpoint.strip('/').replace('/', '-')}-{i}", bytes([index]) + json.dumps(body).encode())

lines = {
    "text.jsonl": [{"text": "The quick brown fox."}, {"text": "Jumps over the lazy dog."}],
    "prompt-completion.jsonl": [{"prompt": "2+2=", "completion": "4"}, {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}]}],
    "messages.jsonl": [{"messages": messages[0] + [{"role": "assistant", "content": "4"}]}],
    "preference.jsonl": [{"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green."}, {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}]}],
    "prompt-only.jsonl": [{"prompt": "Tell a story."}, {"prompt": "Count to 3.", "answer": 3}],
    "choices.jsonl": [{"question": "Which?", "choices": ["a", "b"], "label": 1}],
}
for name, rows in lines.items():
    write("jsonl", name, b"".join(json.dumps(r).encode() + b"\n" for r in rows))

adapter = f"{fixtures}/lora/peft-adapter"
write("adapter", "peft", joined(f"{adapter}/adapter_config.json", f"{adapter}/adapter_model.safetensors"))

# Dequantize: the first byte picks the type, in DType's order of the quantized types; two blocks of real data each.
types = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "q2_K": 84, "q3_K": 110, "q4_K": 144, "q5_K": 176, "q6_K": 210, "iq4_nl": 18, "iq4_xs": 136}
for index, (name, size) in enumerate(types.items()):
    write("dequantize", name, bytes([index]) + read(f"{fixtures}/dequant/{name}.bin")[:2 * size])
PY

# A checkpoint: one step of training the tiny FIM model on a few lines of text, kept in
# Fuzz/checkpoint-data (the harness runs from the repository's root).
for i in 1 2 3 4; do printf 'def add%d(a, b):\n    return a + b * %d\n\nprint(add%d(2, 3))\n' $i $i $i > "$work/$i.txt"; done
"$ember" prepare-data --tokenizer "$fixtures/fim/base/tokenizer.json" --input "$work/1.txt" --input "$work/2.txt" --input "$work/3.txt" --input "$work/4.txt" --output Fuzz/checkpoint-data --val-fraction 0.25 >/dev/null
"$ember" pretrain --init "$fixtures/fim/base" --data Fuzz/checkpoint-data --steps 1 --batch-size 1 --seq-len 8 --output "$work/run" >/dev/null
checkpoint=$(ls -d "$work"/run/checkpoints/step-* | tail -1)
"$python" - "$checkpoint" "$seeds/checkpoint/step-1" <<'PY'
import json, sys
folder, out = sys.argv[1], sys.argv[2]
separator = b"\n\x01--ember-fuzz-part--\x01\n"
with open(out, "wb") as f:
    state = json.load(open(f"{folder}/trainer_state.json"))
    state["settings"]["data"] = "Fuzz/checkpoint-data"
    f.write(separator.join([json.dumps(state).encode()] + [open(f"{folder}/{n}", "rb").read() for n in ["config.json", "model.safetensors", "optimizer.safetensors"]]))
PY
du -sh "$seeds"/* | sed 's/^/seeds: /'
