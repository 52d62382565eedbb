#!/usr/bin/env bash
# Sentence-embedding throughput of Ember against sentence-transformers (PyTorch) on the same cores,
# side by side in one run: all-MiniLM-L6-v2 embedding the same texts (the 100 sentences of
# Tests/Fixtures/embeddings/minilm.json, repeated to --texts), both in batches, taking turns for
# --rounds rounds; the embeddings are checked to agree (lowest cosine printed). Prints a Markdown
# table with the median texts/s and the ratio.
# Usage: bench/embeddings.sh [--threads 2] [--texts 2000] [--rounds 3]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
threads=$(nproc) texts=2000 rounds=3
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads=$2; shift 2 ;;
        --texts) texts=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
model=.cache/models/all-minilm-l6-v2
python=$(scripts/python-env.sh gguf==0.19.0 numpy tokenizers==0.23.3 torch sentence-transformers)
[ -f "$model/model.safetensors" ] || "$python" scripts/fixtures/tokenizers-reference.py --files-only >&2
[ -x .build/release/ember ] || swift build -c release --product ember >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" - "$texts" "$work/texts.txt" <<'PY'
import json, sys
sentences = [s for s in json.load(open("Tests/Fixtures/embeddings/minilm.json"))["sentences"] if s and "\n" not in s and "\r" not in s]
count, out = int(sys.argv[1]), open(sys.argv[2], "w", encoding="utf-8")
for i in range(count):
    out.write(sentences[i % len(sentences)] + "\n")
PY
for r in $(seq "$rounds"); do
    echo "round $r/$rounds" >&2
    .build/release/ember embed --model "$model" --threads "$threads" --file "$work/texts.txt" --stats 2>"$work/ember.err" >"$work/ember.jsonl"
    sed -n 's/.*: \([0-9.]*\) texts\/s.*/ember \1/p' "$work/ember.err" >> "$work/results"
    OMP_NUM_THREADS=$threads "$python" - "$model" "$work/texts.txt" "$work/ember.jsonl" "$threads" >> "$work/results" <<'PY'
import json, sys, time
import numpy as np
import torch
from sentence_transformers import SentenceTransformer
model_dir, texts_path, ember_path, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
texts = open(texts_path, encoding="utf-8").read().split("\n")[:-1]
model = SentenceTransformer(model_dir, device="cpu")
model.encode(texts[:64], batch_size=32)  # warm-up
start = time.perf_counter()
reference = model.encode(texts, batch_size=32, convert_to_numpy=True)
seconds = time.perf_counter() - start
ours = np.array([json.loads(line)["embedding"] for line in open(ember_path)], dtype=np.float64)
cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
print("sentence-transformers", len(texts) / seconds)
print("cosine", cosine.min())
PY
done
python3 - "$work/results" "$texts" "$threads" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    tool, value = line.rsplit(" ", 1)
    rows.setdefault(tool, []).append(float(value))
ours, theirs = statistics.median(rows["ember"]), statistics.median(rows["sentence-transformers"])
print(f"| threads | texts | sentence-transformers texts/s | Ember texts/s | Ember / sentence-transformers | lowest cosine |")
print(f"| ---: | ---: | ---: | ---: | ---: | ---: |")
print(f"| {sys.argv[3]} | {sys.argv[2]} | {theirs:.1f} | {ours:.1f} | {ours / theirs:.2f} | {min(rows['cosine']):.9f} |")
PY
