#!/usr/bin/env bash
# all-MiniLM-L6-v2 as a GGUF `bert` file: converted by llama.cpp's own convert_hf_to_gguf.py from the
# sentence-transformers folder (f32), embedded by llama.cpp's llama-embedding (mean pooling,
# normalised) and by `ember embed` on the same file, for the sentences of
# Tests/Fixtures/embeddings/minilm.json (those without line breaks and not empty). Prints the lowest
# cosine of Ember against llama.cpp, and of both against sentence-transformers (the fixture) on the
# sentences short enough that sentence-transformers did not cut them (256 tokens; a GGUF records
# only the 512-token context).
# Usage: scripts/check-bert-gguf.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=.cache/llama.cpp/build/bin
folder=.cache/models/all-minilm-l6-v2
work=.cache/embed
mkdir -p "$work"
python=$(scripts/python-env.sh gguf==0.19.0 numpy tokenizers==0.23.3 torch transformers sentencepiece)
[ -f "$folder/model.safetensors" ] || "$python" scripts/fixtures/tokenizers-reference.py --files-only >&2
[ -x "$bin/llama-embedding" ] || bench/build-llama-cpp.sh llama-embedding >&2
[ -x .build/release/ember ] || swift build -c release --product ember >&2
src=$(bench/build-llama-cpp.sh --source-only)
model=$work/all-minilm-l6-v2-f32.gguf
[ -f "$model" ] || PYTHONPATH="$src/gguf-py" "$python" "$src/convert_hf_to_gguf.py" "$folder" --outtype f32 --outfile "$model" >&2
"$python" - "$work" <<'PY'
import json, sys
fixture = json.load(open("Tests/Fixtures/embeddings/minilm.json"))
keep = [i for i, s in enumerate(fixture["sentences"]) if s.strip() and "\n" not in s and "\r" not in s]
open(sys.argv[1] + "/sentences.txt", "w").write("\n".join(fixture["sentences"][i] for i in keep) + "\n")
json.dump(keep, open(sys.argv[1] + "/kept.json", "w"))
PY
"$bin/llama-embedding" -m "$model" -f "$work/sentences.txt" --pooling mean --embd-normalize 2 --embd-output-format json \
    -t "$(nproc)" -c 512 -b 512 -ub 512 2>/dev/null > "$work/llama.json"
.build/release/ember embed --model "$model" --file "$work/sentences.txt" > "$work/ember.jsonl"
"$python" - "$work" <<'PY'
import json, struct, sys
import numpy as np
work = sys.argv[1]
fixture = json.load(open("Tests/Fixtures/embeddings/minilm.json"))
raw = open("Tests/Fixtures/embeddings/minilm.f32", "rb").read()
reference = np.frombuffer(raw, dtype="<f4").reshape(-1, 384).astype(np.float64)
keep = json.load(open(work + "/kept.json"))
llama = np.array([d["embedding"] for d in json.load(open(work + "/llama.json"))["data"]], dtype=np.float64)
ember = np.array([json.loads(line)["embedding"] for line in open(work + "/ember.jsonl")], dtype=np.float64)
assert len(llama) == len(ember) == len(keep), (len(llama), len(ember), len(keep))
def cosine(a, b): return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
short = [j for j, i in enumerate(keep) if len(fixture["ids"][i]) < 256]
st = reference[[keep[j] for j in short]]
print(f"| sentences | Ember vs llama.cpp (all {len(keep)}) | Ember vs sentence-transformers ({len(short)} uncut) | llama.cpp vs sentence-transformers |")
print("| --- | ---: | ---: | ---: |")
print(f"| {len(keep)} | {cosine(ember, llama).min():.9f} | {cosine(ember[short], st).min():.9f} | {cosine(llama[short], st).min():.9f} |")
PY
