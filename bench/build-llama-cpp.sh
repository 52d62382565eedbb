#!/usr/bin/env bash
# Builds the llama.cpp tools Ember is compared against (llama-bench, llama-perplexity,
# llama-tokenize, llama-server and the shared libllama; llama-embedding when named) from the source vendored in the
# llama-cpp-python sdist on PyPI, plus bench/llama-ref.c, a small program that dumps
# llama.cpp's logits and greedy completions for the parity fixtures.
# Output: .cache/llama.cpp/build/bin. Nothing built here is committed.
# Usage: bench/build-llama-cpp.sh [TARGET...]   (default: all of the above)
#        bench/build-llama-cpp.sh --source-only   (only unpack the source; prints its path)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache"
version=0.3.36
src="$cache/src/llama_cpp_python-$version/vendor/llama.cpp"
build="$cache/llama.cpp/build"

if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
    apt-get update -qq && apt-get install -y -qq cmake g++ >/dev/null
fi
if [ ! -d "$src" ]; then
    mkdir -p "$cache/pypi" "$cache/src"
    sdist="$cache/pypi/llama_cpp_python-$version.tar.gz"
    [ -f "$sdist" ] || pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==$version" -d "$cache/pypi"
    tar xzf "$sdist" -C "$cache/src"
fi
if [ "${1:-}" = "--source-only" ]; then
    echo "$src"
    exit 0
fi

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(llama llama-bench llama-perplexity llama-tokenize llama-server)
examples=OFF  # llama-embedding is one of llama.cpp's examples
for t in "${targets[@]}"; do [ "$t" = llama-embedding ] && examples=ON; done
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=$examples -DGGML_NATIVE=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"

cc -O2 -o "$build/bin/llama-ref" "$root/bench/llama-ref.c" -I "$src/include" -I "$src/ggml/include" \
    -L "$build/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$build/bin"
echo "llama.cpp tools are in $build/bin"
