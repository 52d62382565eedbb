#!/usr/bin/env bash
# Starts `ember serve` with the default model on a free loopback port and runs
# Tests/openai/client_test.py against it with the official openai package (installed into
# .cache/venv), with two random LoRA adapters served beside the base (--lora-modules). Stops the server afterwards, and fails if the server crashed.
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
    --max-model-len 512 --max-tokens-limit 256 --kv-cache-memory 256MiB --lora-modules one="$adapters/1" two="$adapters/2" > "$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$log" "$adapters"' EXIT
for _ in $(seq 100); do
    "$python" -c "import httpx, sys; sys.exit(httpx.get('http://127.0.0.1:$port/health').status_code != 200)" 2>/dev/null && break
    kill -0 $server 2>/dev/null || { cat "$log"; echo "ember serve exited before it was ready" >&2; exit 1; }
    sleep 0.2
done
status=0
EMBER_BASE_URL="http://127.0.0.1:$port" EMBER_API_KEY="$key" EMBER_MODEL=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf EMBER_ADAPTERS="$adapters" "$python" Tests/openai/client_test.py || status=$?
kill -0 $server 2>/dev/null || { cat "$log"; echo "ember serve crashed during the tests" >&2; exit 1; }
kill -INT $server
wait $server || true
exit $status
