#!/usr/bin/env bash
# Ember against llama.cpp on the same model, side by side in one run: prompt processing (pp) and
# generation (tg) tokens/s at each thread count, the two tools taking turns so that both see the
# same machine load. Prints a Markdown table with the median of the rounds and the ratio.
# Usage: bench/compare.sh [--model PATH] [--threads "1 2"] [--rounds 3] [--prompt 512] [--gen 128]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model="" threads="1 2" rounds=3 prompt=512 gen=128
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --prompt) prompt=$2; shift 2 ;;
        --gen) gen=$2; shift 2 ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
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
        "$bin/llama-bench" -m "$model" -t "$t" -p "$prompt" -n "$gen" -r 1 -o json 2>/dev/null \
            | python3 -c 'import json,sys
for row in json.load(sys.stdin):
    test = "pp%d" % row["n_prompt"] if row["n_prompt"] else "tg%d" % row["n_gen"]
    print(sys.argv[1], test, "llama.cpp", row["avg_ts"])' "$t" >> "$results"
        .build/release/ember bench --model "$model" --threads "$t" --prompt-tokens "$prompt" --gen-tokens "$gen" \
            --repetitions 1 --json \
            | python3 -c 'import json,sys
row = json.load(sys.stdin)
print(sys.argv[1], "pp" + sys.argv[2], "ember", row["pp_tokens_per_s"])
print(sys.argv[1], "tg" + sys.argv[3], "ember", row["tg_tokens_per_s"])' "$t" "$prompt" "$gen" >> "$results"
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
for (t, test), tools in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1][:2] != "pp")):
    ref, ours = statistics.median(tools["llama.cpp"]), statistics.median(tools["ember"])
    print(f"| {t} | {test} | {ref:.1f} | {ours:.1f} | {ours / ref:.2f} |")
PY
rm -f "$results"
