#!/usr/bin/env python3
"""Writes arithmetic word-free problems for GRPO in TRL's prompt-only format, each line
{"prompt": [{"role": "user", "content": ...}], "answer": "..."}: sums and differences of two
numbers below 100 and products of two numbers from 2 to 12 (the level of a 135M model; GSM-style
problems are out of its reach, so their rewards would be all zero). Two files with disjoint
problems: train.jsonl and test.jsonl.

    scripts/make-arithmetic-prompts.py [--out .cache/grpo] [--train 1000] [--test 100] [--seed 0]
"""
import argparse
import json
import os
import random

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--out", default=".cache/grpo")
parser.add_argument("--train", type=int, default=1000)
parser.add_argument("--test", type=int, default=100)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

rng = random.Random(args.seed)
seen = set()


def problem():
    while True:
        kind = rng.choice("+-*")
        if kind == "*":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            answer = a * b
        else:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            if kind == "-" and b > a:
                a, b = b, a
            answer = a + b if kind == "+" else a - b
        key = (a, kind, b)
        if key not in seen:
            seen.add(key)
            sign = {"+": "+", "-": "-", "*": "×"}[kind]
            text = f"What is {a} {sign} {b}? Answer with the number."
            return {"prompt": [{"role": "user", "content": text}], "answer": str(answer)}


os.makedirs(args.out, exist_ok=True)
for name, count in (("train", args.train), ("test", args.test)):
    path = os.path.join(args.out, f"{name}.jsonl")
    with open(path, "w") as f:
        for _ in range(count):
            f.write(json.dumps(problem(), ensure_ascii=False) + "\n")
    print(f"{path}: {count} problems")
