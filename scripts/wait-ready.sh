#!/usr/bin/env bash
# Waits until the server on 127.0.0.1:PORT answers GET /health with 200. Fails, with the end of LOG,
# when process PID exits first or after SECONDS (default 300: a large model takes a while to load).
# Usage: scripts/wait-ready.sh PORT PID LOG [SECONDS]
set -euo pipefail
port=${1:?usage: scripts/wait-ready.sh PORT PID LOG [SECONDS]} pid=${2:?PID} log=${3:?LOG} seconds=${4:-300}
deadline=$(( $(date +%s) + seconds ))
until python3 -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2).status != 200)" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { tail -50 "$log" >&2; echo "the server (pid $pid) exited before it was ready" >&2; exit 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { tail -50 "$log" >&2; echo "the server on port $port was not ready after ${seconds}s" >&2; exit 1; }
    sleep 0.2
done
