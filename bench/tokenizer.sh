#!/usr/bin/env bash
# Single-threaded encode throughput of Ember against Hugging Face tokenizers on the same ~10 MB
# text (the Python standard library's sources), side by side in one
# run, checking that both produce the same ids: SmolLM2's byte-level BPE and a SentencePiece-style BPE
# (the LLaMA-2 layout tokenizer.json of Tests/Fixtures). Prints a Markdown table with the ratios.
# Usage: bench/tokenizer.sh [--rounds 3]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=3
[ "${1:-}" = "--rounds" ] && rounds=$2
python=$(scripts/python-env.sh gguf==0.19.0 numpy tokenizers==0.23.3)
tokenizer=.cache/models/SmolLM2-135M-tokenizer/tokenizer.json
[ -f "$tokenizer" ] || "$python" scripts/fixtures/tokenizers-reference.py --files-only >&2
[ -x .build/release/ember ] || swift build -c release --product ember >&2
corpus=.cache/bench/corpus.txt
if [ ! -f "$corpus" ]; then
    mkdir -p .cache/bench
    "$python" - "$corpus" <<'PY'
import glob, os, sys
out, size = open(sys.argv[1], "w", encoding="utf-8"), 0
for path in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "**", "*.py"), recursive=True)):
    try:
        text = open(path, encoding="utf-8").read()
    except (UnicodeDecodeError, OSError):
        continue
    out.write(text)
    size += len(text.encode())
    if size > 10_000_000:
        break
PY
fi
# Each tokenizer: Ember and tokenizers alternating, median of the rounds, ids checked equal.
bench() {
    local label=$1 tokenizer=$2 ember_ids
    ember_ids=$(mktemp)
    .build/release/ember tokenize --tokenizer "$tokenizer" --file "$corpus" > "$ember_ids"
    for r in $(seq "$rounds"); do
        .build/release/ember tokenize --tokenizer "$tokenizer" --file "$corpus" --stats 2>&1 | sed -n 's/.*: \([0-9.]*\) MB\/s/ember \1/p'
        RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false "$python" - "$tokenizer" "$corpus" "$ember_ids" <<'PY'
import sys, time
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8", newline="").read()
start = time.perf_counter()
ids = tokenizer.encode(text, add_special_tokens=False).ids
seconds = time.perf_counter() - start
print("tokenizers", len(text.encode()) / 1e6 / seconds)
ours = list(map(int, open(sys.argv[3]).read().split()))
if ours != ids:
    print(f"ids differ: Ember {len(ours)}, tokenizers {len(ids)}", file=sys.stderr)
    sys.exit(1)
PY
    done | LABEL="$label" python3 -c '
import os, statistics, sys
rows = {}
for line in sys.stdin:
    tool, value = line.split()
    rows.setdefault(tool, []).append(float(value))
ours, ref = statistics.median(rows["ember"]), statistics.median(rows["tokenizers"])
label = os.environ["LABEL"]
print(f"| {label} | 10 MB of Python sources | {ref:.2f} | {ours:.2f} | {ours / ref:.1f} |")'
    rm -f "$ember_ids"
}

echo "| tokenizer | corpus | tokenizers MB/s | Ember MB/s | Ember / tokenizers |"
echo "| --- | --- | ---: | ---: | ---: |"
bench "SmolLM2 byte-level BPE" "$tokenizer"
bench "SentencePiece BPE with byte fallback (LLaMA-2 layout, 2k pieces)" Tests/Fixtures/tokenizers/sentencepiece/llama-legacy.tokenizer.json
