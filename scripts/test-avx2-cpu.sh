#!/usr/bin/env bash
# Runs Ember's tests on an emulated AVX2-only x86-64 (QEMU's user-mode Haswell: AVX2, FMA and F16C,
# no AVX-512 or AVX-VNNI, so any instruction above AVX2 stops the run with SIGILL). The kernel tiers
# above AVX2 must report themselves skipped and everything else must pass. Emulation is 20–50 times
# slower than the CPU, so by default this runs the suites that choose kernels: the integer products,
# the OpenBLAS core, llama.cpp parity at every tier and the trainer (about 10 minutes).
# Usage: scripts/test-avx2-cpu.sh [SWIFT-TESTING FILTER]   (e.g. '.' for every test: hours)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
filter=${1:-IntegerProductTests|BLASCoreTests|LlamaCppParityTests|TrainerTests|FiniteDifferenceTests}
if ! command -v qemu-x86_64 >/dev/null; then
    echo "Installing qemu-user..." >&2
    (apt-get update -qq && apt-get install -y -qq qemu-user) >&2
fi
[ -x .build/release/EmberPackageTests.xctest ] || swift build -c release --build-tests >&2
qemu-x86_64 -cpu Haswell-v4 .build/release/EmberPackageTests.xctest --testing-library swift-testing --filter "$filter" 2>&1 |
    grep -v "TCG doesn't support requested feature"
