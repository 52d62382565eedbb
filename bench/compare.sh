#!/usr/bin/env bash
# Ember against llama.cpp on the same model, side by side in one run: prompt processing (pp) and
# generation (tg) tokens/s at each thread count, and generation after a long context (llama-bench's
# -d), the two tools taking turns so that both see the same machine load. Ember runs its default
# path, the one `ember serve` runs. Prints a Markdown table with the median of the rounds and the ratio.
# Usage: bench/compare.sh [--model PATH] [--threads "1 2"] [--rounds 3] [--prompt 512] [--gen 128] [--depth 4096]
#        (--depth 0 skips the long-context test)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model="" threads="1 2" rounds=3 prompt=512 gen=128 depth=4096
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --prompt) prompt=$2; shift 2 ;;
        --gen) gen=$2; shift 2 ;;
        --depth) depth=$2; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -n "$model" ] || model=$(scripts/fetch-model.sh)
bin=.cache/llama.cpp/build/bin
[ -x "$bin/llama-bench" ] || bench/build-llama-cpp.sh llama llama-bench >&2
[ -x .build/release/ember ] || swift build -c release --product ember >&2

results=$(mktemp)
for t in $threads; do
    for r in $(seq "$rounds"); do
        echo "threads $t, round $r/$rounds" >&2
        llama() {  # ARGS...: llama-bench's rows as "threads test tool tokens/s"
            "$bin/llama-bench" -m "$model" -t "$t" -r 1 -o json "$@" 2>/dev/null | python3 -c 'import json,sys
for row in json.load(sys.stdin):
    test = "pp%d" % row["n_prompt"] if row["n_prompt"] else "tg%d" % row["n_gen"]
    if row.get("n_depth"): test += "@d%d" % row["n_depth"]
    print(sys.argv[1], test, "llama.cpp", row["avg_ts"])' "$t" >> "$results"
        }
        ember() {  # DEPTH ARGS...
            local d=$1; shift
            .build/release/ember bench --model "$model" --threads "$t" --repetitions 1 --depth "$d" --json "$@" | python3 -c 'import json,sys
row, (t, prompt, gen, depth) = json.load(sys.stdin), sys.argv[1:]
suffix = "@d" + depth if depth != "0" else ""
if "pp_tokens_per_s" in row: print(t, "pp" + prompt + suffix, "ember", row["pp_tokens_per_s"])
if "tg_tokens_per_s" in row: print(t, "tg" + gen + suffix, "ember", row["tg_tokens_per_s"])' "$t" "$prompt" "$gen" "$d" >> "$results"
        }
        llama -p "$prompt" -n "$gen"
        ember 0 --prompt-tokens "$prompt" --gen-tokens "$gen"
        if [ "$depth" -gt 0 ]; then
            llama -p 0 -n "$gen" -d "$depth"
            ember "$depth" --prompt-tokens 0 --gen-tokens "$gen"
        fi
    done
done
python3 - "$results" "$(basename "$model")" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    t, test, tool, value = line.split()
    rows.setdefault((int(t), test), {}).setdefault(tool, []).append(float(value))
print(f"Model: {sys.argv[2]}; median of {len(next(iter(rows.values()))['ember'])} alternating rounds.\n")
print("| threads | test | llama.cpp tokens/s | Ember tokens/s | Ember / llama.cpp |")
print("| ---: | --- | ---: | ---: | ---: |")
for (t, test), tools in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1][:2] != "pp", "@" in kv[0][1])):
    ref, ours = statistics.median(tools["llama.cpp"]), statistics.median(tools["ember"])
    print(f"| {t} | {test} | {ref:.1f} | {ours:.1f} | {ours / ref:.2f} |")
PY
rm -f "$results"
