#!/usr/bin/env bash
# Installs what building and testing Ember needs and is missing: OpenBLAS (Debian's libopenblas-dev),
# Open MPI 4 (libopenmpi-dev, openmpi-bin) for parallel training, Python with venv support for the helper scripts, and GNU time for the fuzz campaign's CPU accounting. Safe to run again; does nothing when all is there.
set -euo pipefail
need=()
dpkg -s libopenblas-dev >/dev/null 2>&1 || need+=(libopenblas-dev)
dpkg -s libopenmpi-dev >/dev/null 2>&1 || need+=(libopenmpi-dev)
command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
[ -x /usr/bin/time ] || need+=(time)  # GNU time: scripts/fuzz.sh counts the fuzzers' CPU seconds
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "Installing ${need[*]} from Debian's packages..." >&2
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v swift >/dev/null 2>&1 || { echo "Swift is not on PATH; install Swift 6 first (https://swift.org/install)" >&2; exit 1; }
