#!/usr/bin/env bash
# Starts `ember serve` on the default model (a queue of 32 beyond 8 running sequences, a LoRA adapter
# beside the base) and, for the soak, an embedding server, then runs scripts/server-stress.py.
# Usage: [SERVER_ARGS="--request-timeout 2"] scripts/server-stress.sh overload|slow|timeout|soak [ARGS for server-stress.py]
#   e.g. scripts/server-stress.sh soak --seconds 1800; SERVER_ARGS="--request-timeout 2" scripts/server-stress.sh timeout
# The JSON summary is also written to runs/server-stress/MODE.json.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=${1:?usage: scripts/server-stress.sh overload|slow|soak [ARGS]}
shift
[ -x .build/release/ember ] || swift build -c release --product ember
scripts/fetch-model.sh >/dev/null
python=$(scripts/python-env.sh openai==3.57.0 httpx numpy safetensors==0.8.0)
free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
port=$(free_port)
"$python" scripts/make-random-adapter.py "$work/adapter" --seed 1 >/dev/null
.build/release/ember serve --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --served-model-name SmolLM2-135M-Instruct --port "$port" \
    --max-num-seqs 8 --max-queued-requests 32 --max-model-len 512 --max-tokens-limit 256 --kv-cache-memory 256MiB \
    --lora-modules one="$work/adapter" ${SERVER_ARGS:-} > "$work/server.log" 2>&1 &
server=$!
pids=("--pid" "$server")
extra=("--adapter" "one")
embedding_server=
if [ "$mode" = soak ]; then
    scripts/fetch-model.sh >/dev/null
    [ -f .cache/models/all-minilm-l6-v2/model.safetensors ] || make .cache/models/all-minilm-l6-v2/model.safetensors >/dev/null
    embedding_port=$(free_port)
    .build/release/ember serve --model .cache/models/all-minilm-l6-v2 --port "$embedding_port" > "$work/embedding.log" 2>&1 &
    embedding_server=$!
    pids+=("--pid" "$embedding_server")
    extra+=("--embeddings" "http://127.0.0.1:$embedding_port")
fi
trap 'kill $server $embedding_server 2>/dev/null || true; rm -rf "$work"' EXIT
scripts/wait-ready.sh "$port" "$server" "$work/server.log"
[ -z "$embedding_server" ] || scripts/wait-ready.sh "$embedding_port" "$embedding_server" "$work/embedding.log"
mkdir -p runs/server-stress
status=0
"$python" scripts/server-stress.py "$mode" --url "http://127.0.0.1:$port" "${pids[@]}" "${extra[@]}" "$@" | tee "runs/server-stress/$mode.json" || status=$?
for pid in $server $embedding_server; do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$work"/*.log; echo "a server crashed under the load" >&2; exit 1; }
done
exit $status
