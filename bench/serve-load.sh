#!/usr/bin/env bash
# Serving load, Ember against llama-server, side by side (see bench/serve-load.py).
# Builds llama-server and Ember when missing. Usage: bench/serve-load.sh [serve-load.py options]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -x .cache/llama.cpp/build/bin/llama-server ] || bench/build-llama-cpp.sh llama-server >&2
[ -x .build/release/ember ] || swift build -c release --product ember >&2
scripts/fetch-model.sh >/dev/null
exec "$(scripts/python-env.sh httpx)" bench/serve-load.py "$@"
