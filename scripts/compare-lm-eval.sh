#!/usr/bin/env bash
# `ember eval` against lm-evaluation-harness 0.4.13 on the same items, side by side in one run:
#   - lm_eval's Hugging Face backend (transformers, float32, batch size 1) on the f32 SmolLM2-135M
#     folder, with local task definitions (written to .cache/lm-eval/tasks) pointing at the JSONL
#     files of tasks/ (scripts/fetch-eval-data.py): LogiQA and ReClor as multiple choice, the
#     gsm_symbolic questions as 4-shot generation;
#   - `ember eval --model` on the same folder, with tasks/*.json|yaml; and, for the multiple-choice
#     tasks, again with --no-shared-context, to show what sharing each question's context gives;
#   - with SERVER=1, lm_eval's local-completions backend against `ember serve` on the same tasks
#     (the generation task's requests carry its stop strings and max_tokens).
# Then scripts/compare-lm-eval.py prints each metric from both, the per-item log-likelihood
# differences, how many items' chosen answers differ, and items per second.
# Usage: [SERVER=1 [SERVED_TASKS="logiqa ..."]] [SKIP_LOCAL=1] [KEEP_OPENBLAS_CORE=1] scripts/compare-lm-eval.sh [LIMIT]   (items per task, default
# 200; GSM takes LIMIT/4; SKIP_LOCAL=1 reruns only the server part and compares with the last runs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
limit=${1:-200}
gsm_limit=$(( (limit + 3) / 4 ))
model=.cache/models/SmolLM2-135M-f32
work=.cache/lm-eval
python=$(scripts/python-env.sh lm_eval==0.4.13 torch transformers reasoning-gym==0.1.25)
[ -x .build/release/ember ] || swift build -c release --product ember >&2
[ -f "$model/model.safetensors" ] || make "$model/tokenizer_config.json" >&2
[ -f .cache/eval/gsm-symbolic.jsonl ] || python3 scripts/fetch-eval-data.py >/dev/null
mkdir -p "$work/tasks" "$work/runs"
eval_data=$root/.cache/eval

for name in logiqa reclor; do
    cat > "$work/tasks/ember_$name.yaml" <<YAML
task: ember_$name
dataset_path: json
dataset_kwargs:
  data_files:
    test: $eval_data/$name.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Passage: {{context}}\nQuestion: {{question}}\nChoices:\nA. {{a}}\nB. {{b}}\nC. {{c}}\nD. {{d}}\nAnswer:"
doc_to_choice: options
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
YAML
done
cat > "$work/tasks/ember_gsm_symbolic.yaml" <<YAML
task: ember_gsm_symbolic
dataset_path: json
dataset_kwargs:
  data_files:
    test: $eval_data/gsm-symbolic.jsonl
    train: $eval_data/gsm-symbolic-fewshot.jsonl
test_split: test
fewshot_split: train
num_fewshot: 4
output_type: generate_until
doc_to_text: "Question: {{question}}\nAnswer:"
doc_to_target: "{{answer}}"
fewshot_config:
  sampler: first_n
  doc_to_target: "{{cot}}"
generation_kwargs:
  until: ["Question:", "\n\n"]
  do_sample: false
  max_gen_toks: 256
filter_list:
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: "(-?[\$0-9.,]{2,})|(-?[0-9]+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\\$", "(?s).*#### ", "\\\\.\$"]
YAML

seconds() { python3 -c "import time; print(time.time())"; }
log=$work/runs/timings.txt
[ "${SKIP_LOCAL:-0}" = 1 ] || : > "$log"
run_lm_eval() {  # task limit
    local start end
    start=$(seconds)
    OMP_NUM_THREADS=$(nproc) HF_DATASETS_OFFLINE=1 "$python" -m lm_eval --model hf \
        --model_args "pretrained=$model,dtype=float32" --device cpu --batch_size 1 \
        --include_path "$work/tasks" --tasks "ember_$1" --limit "$2" --log_samples \
        --output_path "$work/runs/lm_eval-$1" >"$work/runs/lm_eval-$1.log" 2>&1
    end=$(seconds)
    echo "lm_eval $1 $2 $(python3 -c "print($end - $start)")" >>"$log"
}
run_ember() {  # task-file name limit [flags]
    local start end
    start=$(seconds)
    # This machine's environment pins OpenBLAS to its Haswell core (OPENBLAS_CORETYPE, for older
    # builds elsewhere); Ember, left alone, picks the core for the CPU (SkylakeX on AVX-512). With
    # KEEP_OPENBLAS_CORE=1 the pinned core runs. The core used is in ember-NAME.log.
    ${KEEP_OPENBLAS_CORE:+true} unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
    .build/release/ember eval --model "$model" --task "tasks/$1" --limit "$2" --output "$work/runs/ember-$3" "${@:4}" >"$work/runs/ember-$3.log" 2>&1
    end=$(seconds)
    echo "ember $3 $2 $(python3 -c "print($end - $start)")" >>"$log"
}

[ "${SKIP_LOCAL:-0}" = 1 ] || for name in logiqa reclor; do
    echo "== $name: lm_eval (hf) on $limit items" >&2
    run_lm_eval "$name" "$limit"
    echo "== $name: ember eval" >&2
    ext=json; [ "$name" = reclor ] && ext=yaml
    run_ember "$name.$ext" "$limit" "$name"
    run_ember "$name.$ext" "$limit" "$name-separate" --no-shared-context
done
if [ "${SKIP_LOCAL:-0}" != 1 ]; then
    echo "== gsm_symbolic: lm_eval (hf) on $gsm_limit items" >&2
    run_lm_eval gsm_symbolic "$gsm_limit"
    echo "== gsm_symbolic: ember eval" >&2
    run_ember gsm-symbolic.yaml "$gsm_limit" gsm_symbolic
fi

if [ "${SERVER:-0}" = 1 ]; then
    port=8471
    .build/release/ember serve --model "$model" --port "$port" >"$work/runs/serve.log" 2>&1 &
    server=$!
    trap 'kill $server 2>/dev/null || true' EXIT
    scripts/wait-ready.sh "$port" "$server" "$work/runs/serve.log"
    for name in ${SERVED_TASKS:-logiqa reclor gsm_symbolic}; do
        count=$limit; [ "$name" = gsm_symbolic ] && count=$gsm_limit
        echo "== $name: lm_eval local-completions against ember serve" >&2
        rm -rf "$work/runs/served-$name"
        start=$(seconds)
        HF_DATASETS_OFFLINE=1 "$python" -m lm_eval --model local-completions \
            --model_args "base_url=http://127.0.0.1:$port/v1/completions,model=$(basename "$model"),tokenizer=$root/$model,tokenized_requests=True,num_concurrent=1,max_retries=1" \
            --include_path "$work/tasks" --tasks "ember_$name" --limit "$count" --log_samples \
            --output_path "$work/runs/served-$name" >"$work/runs/served-$name.log" 2>&1
        echo "served $name $count $(python3 -c "print($(seconds) - $start)")" >>"$log"
    done
fi
"$python" scripts/compare-lm-eval.py "$work/runs"
