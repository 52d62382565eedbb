#!/usr/bin/env bash
# Starts `ember serve` with the default model on a free loopback port and runs
# Tests/openai/client_test.py against it with the official openai package (installed into
# .cache/venv), with two random LoRA adapters served beside the base (--lora-modules), and a second
# server on the f32 model with fill-in-the-middle tokens added (ember export --add-fim-tokens) for
# /infill, a third on a reward model that one step of `ember train-reward` makes, for /pooling, and a
# fourth on the all-MiniLM-L6-v2 sentence encoder, for /v1/embeddings.
# Stops the servers afterwards, and fails if one crashed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=$(scripts/python-env.sh openai==3.57.0 httpx)
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key=test-key-$RANDOM
log=$(mktemp)
adapters=$(mktemp -d)
tools=$(scripts/python-env.sh numpy safetensors==0.8.0)
for n in 1 2; do "$tools" scripts/make-random-adapter.py "$adapters/$n" --seed "$n"; done
.build/release/ember serve --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --port "$port" --api-key "$key" \
    --max-model-len 512 --max-tokens-limit 256 --kv-cache-memory 256MiB --lora-modules one="$adapters/1" two="$adapters/2" --lora-root "$adapters" > "$log" 2>&1 &
server=$!
fim_port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fim_log=$(mktemp)
reward_port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
reward_log=$(mktemp)
embedding_port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
embedding_log=$(mktemp)
trap 'kill $server ${fim_server:-} ${reward_server:-} ${embedding_server:-} 2>/dev/null || true; rm -rf "$log" "$fim_log" "$reward_log" "$embedding_log" "$adapters" "$adapters-outside"' EXIT
.build/release/ember export --input .cache/models/SmolLM2-135M-f32 --add-fim-tokens "$adapters/fim"
.build/release/ember serve --model "$adapters/fim" --served-model-name fim --port "$fim_port" --api-key "$key" \
    --max-model-len 512 --max-tokens-limit 256 --kv-cache-memory 128MiB > "$fim_log" 2>&1 &
fim_server=$!
for answer in Blue Red Green Seven; do
    printf '{"prompt": [{"role": "user", "content": "Name a colour."}], "chosen": [{"role": "assistant", "content": "%s."}], "rejected": [{"role": "assistant", "content": "No."}]}\n' "$answer"
done > "$adapters/pairs.jsonl"
.build/release/ember train-reward --model .cache/models/SmolLM2-135M-f32 --data "$adapters/pairs.jsonl" --lora-rank 2 --steps 1 \
    --batch-size 1 --grad-accum 1 --eval-fraction 0.25 --output "$adapters/reward" > "$reward_log" 2>&1 || { cat "$reward_log"; exit 1; }
.build/release/ember serve --model "$adapters/reward/model" --served-model-name reward --port "$reward_port" --api-key "$key" \
    --max-model-len 512 --kv-cache-memory 64MiB > "$reward_log" 2>&1 &
reward_server=$!
.build/release/ember serve --model .cache/models/all-minilm-l6-v2 --port "$embedding_port" --api-key "$key" > "$embedding_log" 2>&1 &
embedding_server=$!
for p in "$port:$server:$log" "$fim_port:$fim_server:$fim_log" "$reward_port:$reward_server:$reward_log" "$embedding_port:$embedding_server:$embedding_log"; do
    IFS=: read -r at pid out <<< "$p"
    scripts/wait-ready.sh "$at" "$pid" "$out"
done
status=0
EMBER_BASE_URL="http://127.0.0.1:$port" EMBER_FIM_URL="http://127.0.0.1:$fim_port" EMBER_REWARD_URL="http://127.0.0.1:$reward_port" \
    EMBER_EMBEDDING_URL="http://127.0.0.1:$embedding_port" EMBER_API_KEY="$key" \
    EMBER_MODEL=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf EMBER_ADAPTERS="$adapters" "$python" Tests/openai/client_test.py || status=$?
for p in "$server:$log" "$fim_server:$fim_log" "$reward_server:$reward_log" "$embedding_server:$embedding_log"; do
    kill -0 "${p%%:*}" 2>/dev/null || { cat "${p#*:}"; echo "ember serve crashed during the tests" >&2; exit 1; }
done
kill -INT $server $fim_server $reward_server $embedding_server
wait $server $fim_server $reward_server $embedding_server || true
exit $status
