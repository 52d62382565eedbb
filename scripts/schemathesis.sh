#!/usr/bin/env bash
# Tests the HTTP API against its OpenAPI document (Sources/EmberServer/openapi.yaml, served at
# GET /openapi.json) with schemathesis 4.32.5 (installed into .cache/venv): starts `ember serve` on
# the default model on a free loopback port, runs every check on every operation a generative model
# without fill-in-the-middle tokens answers, with at most EXAMPLES generated cases per operation and
# phase, and stops the server. scripts/schemathesis-hooks.py fits the document to this server
# (--max-tokens-limit 16 keeps generation cheap) and adds what OpenAPI 3.0 cannot say.
# Writes runs/schemathesis/summary.txt (schemathesis's output), junit.xml and server.log; fails if a
# check fails or the server crashed.
# Usage: [EXAMPLES=100] [SEED=N] [SCHEMA=Sources/EmberServer/openapi.yaml] scripts/schemathesis.sh
#   SCHEMA tests that file instead of the server's /openapi.json;
#   SEED repeats a run (the output names its seed); `cd runs/schemathesis && ../../.cache/venv/bin/st replay ID`
#   sends a failure's request again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=$(scripts/python-env.sh schemathesis==4.32.5)
st="$(dirname "$python")/st"
model=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
limit=16
out=runs/schemathesis
mkdir -p "$out"
[ -x .build/release/ember ] || swift build -c release --product ember >&2
[ -f "$model" ] || scripts/fetch-model.sh >/dev/null
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
mkdir -p "$out/lora-root"
.build/release/ember serve --model "$model" --port "$port" --max-tokens-limit "$limit" --kv-cache-memory 512MiB --lora-root "$out/lora-root" \
    > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
scripts/wait-ready.sh "$port" "$server" "$out/server.log"
if [ -n "${SCHEMA:-}" ]; then location=(--url "$url" "$(realpath "$SCHEMA")"); else location=("$url/openapi.json"); fi
status=0
# From runs/schemathesis, where schemathesis keeps its cache of failures (.schemathesis/, for `st replay`).
(cd "$out" && SCHEMATHESIS_HOOKS="$root/scripts/schemathesis-hooks.py" EMBER_SERVES=generative,lora-root EMBER_MAX_TOKENS_LIMIT=$limit \
    "$st" run "${location[@]}" --checks all --max-examples "${EXAMPLES:-100}" ${SEED:+--seed "$SEED"} \
    --workers 1 --request-timeout 120 --generation-database none --output-sanitize false --no-color \
    --report junit --report-junit-path junit.xml) 2>&1 | tee "$out/summary.txt" || status=$?
kill -0 "$server" 2>/dev/null || { cat "$out/server.log"; echo "ember serve crashed during the tests" >&2; exit 1; }
kill -INT $server
wait $server || true
exit $status
