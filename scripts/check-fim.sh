#!/usr/bin/env bash
# Single-line infill exact match of a model with fill-in-the-middle tokens (a Hugging Face folder,
# such as `ember sft --fim-rate`'s model/ or base/) on the held-out functions of
# scripts/fetch-fim-data.py, through POST /infill of `ember serve`; then the same folder exported
# to GGUF and served by llama.cpp's llama-server, through its /infill, with how many predictions
# the two servers share. Also the left-to-right baseline: the prefix alone on /v1/completions.
# Writes the per-item predictions to OUT (default runs/fim-check/NAME).
# --data picks another item file, such as .cache/fim/humaneval.jsonl (HumanEval single-line
# infilling, 1,033 lines); --spm-infill serves SPM prompts on both servers, for a model trained
# with --fim-spm-style llama-server.
# Usage: scripts/check-fim.sh MODEL_DIR [--data FILE] [--limit N] [--spm-infill] [--out DIR] [--no-prefix] [--no-llama]
#   needs .cache/fim (scripts/fetch-fim-data.py) and, without --no-llama, llama-server
#   (bench/build-llama-cpp.sh llama-server)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model=${1:?usage: scripts/check-fim.sh MODEL_DIR [--data FILE] [--limit N] [--spm-infill] [--out DIR] [--no-prefix] [--no-llama]}
shift
data=.cache/fim/heldout.jsonl limit=() out="runs/fim-check/$(basename "$model")" llama=1 spm=() prefix=1
while [ $# -gt 0 ]; do
    case $1 in
        --data) data=$2; shift 2 ;;
        --limit) limit=(--limit "$2"); shift 2 ;;
        --out) out=$2; shift 2 ;;
        --no-llama) llama=0; shift ;;
        --no-prefix) prefix=0; shift ;;
        --spm-infill) spm=(--spm-infill); shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -f "$data" ] || python3 scripts/fetch-fim-data.py --out .cache/fim
server_bin=.cache/llama.cpp/build/bin/llama-server
[ $llama = 0 ] || [ -x "$server_bin" ] || { echo "no $server_bin: run bench/build-llama-cpp.sh llama-server (or give --no-llama)" >&2; exit 1; }
mkdir -p "$out"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pid=
trap '[ -z "$pid" ] || kill $pid 2>/dev/null || true' EXIT

wait_ready() { scripts/wait-ready.sh "$1" "$pid" "$2"; }
stop() { kill -INT $pid; wait $pid || true; pid=; }

port=$(free_port)
.build/release/ember serve --model "$model" --port "$port" "${spm[@]}" > "$out/ember.log" 2>&1 &
pid=$!
wait_ready "$port" "$out/ember.log"
echo "== ember serve, /infill"
python3 scripts/fim-eval.py --url "http://127.0.0.1:$port" --data "$data" "${limit[@]}" --mode infill --out "$out/ember-infill.jsonl"
if [ $prefix = 1 ]; then
    echo "== ember serve, the prefix alone on /v1/completions"
    python3 scripts/fim-eval.py --url "http://127.0.0.1:$port" --data "$data" "${limit[@]}" --mode prefix --out "$out/ember-prefix.jsonl"
fi
stop

if [ $llama = 1 ]; then
    gguf="$out/model-f32.gguf"
    .build/release/ember export --input "$model" --gguf "$gguf" --type f32
    port=$(free_port)
    "$server_bin" -m "$gguf" --port "$port" -t "$(nproc)" -np 1 "${spm[@]}" > "$out/llama-server.log" 2>&1 &
    pid=$!
    wait_ready "$port" "$out/llama-server.log"
    echo "== llama-server, /infill"
    python3 scripts/fim-eval.py --url "http://127.0.0.1:$port" --data "$data" "${limit[@]}" --mode infill --out "$out/llama-infill.jsonl" \
        --agree "$out/ember-infill.jsonl"
    stop
    rm -f "$gguf"
fi
