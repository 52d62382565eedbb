#!/usr/bin/env bash
# Runs `ember tokenize` on llama.cpp's own tokenizer test vectors: the vocabulary-only GGUF files in
# the vendored llama.cpp source (models/ggml-vocab-*.gguf) with their inputs (.inp) and expected
# ids (.out). Prints, per vocabulary, how many inputs give exactly llama.cpp's ids.
# Usage: scripts/check-llama-vocabs.sh [NAME...]   (default: the vocabularies Ember reads)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
src=$(bench/build-llama-cpp.sh --source-only)
[ -x .build/release/ember ] || swift build -c release --product ember >&2
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(llama-spm phi-3 bert-bge gpt-2 llama-bpe qwen2 starcoder refact command-r)
for name in "${names[@]}"; do
    python3 - "$src/models/ggml-vocab-$name.gguf" <<'PY'
import json, subprocess, sys
path = sys.argv[1]
inputs = open(path + ".inp", encoding="utf-8", newline="").read().split("\n__ggml_vocab_test__\n")
expected = open(path + ".out", encoding="utf-8").read().split("\n")
equal, failures = 0, []
for text, line in zip(inputs, expected):
    run = subprocess.run([".build/release/ember", "tokenize", "--tokenizer", path, "--json", "--text", text],
                         capture_output=True, text=True)
    ids = json.loads(run.stdout)["ids"] if run.returncode == 0 else run.stderr.strip()
    if ids == [int(x) for x in line.split()]:
        equal += 1
    else:
        failures.append(f"  {text[:40]!r}: {str(ids)[:80]}")
print(f"{path.rsplit('/', 1)[-1]}: {equal}/{len(inputs)} inputs give llama.cpp's ids")
print("\n".join(failures[:5]))
PY
done
