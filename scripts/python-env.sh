#!/usr/bin/env bash
# Prints the path of a Python interpreter from .cache/venv, creating the environment and installing
# the given packages (pip requirement strings) into it when missing.
# Usage: scripts/python-env.sh [PACKAGE...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cache/venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
fi
missing=()
for package in "$@"; do
    name=${package%%[=<>]*}
    "$venv/bin/python" -m pip show --quiet "$name" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing ${missing[*]} into .cache/venv..." >&2
    "$venv/bin/python" -m pip install --quiet "${missing[@]}" >&2
fi
echo "$venv/bin/python"
