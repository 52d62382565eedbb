#!/usr/bin/env python3
"""A reward model written by `ember train-reward` against transformers and PEFT.

Scores the chosen and rejected answers of preference pairs (by default the first 16 of
.cache/sft/dpo.jsonl that fit --max-length) four ways and prints the largest differences:
  transformers  AutoModelForSequenceClassification on RUN/model (the merged folder)
  PEFT          LlamaForSequenceClassification of the base + PeftModel on RUN/adapter
  Ember         `ember serve --model RUN/model`, POST /pooling with the pair's messages
and each one's pair accuracy on those pairs. All three score the same token ids: the chat template's
text encoded by the `tokenizers` library from tokenizer.json (what Ember's tokenizer and llama.cpp
match). transformers 5's AutoTokenizer differs from it for this tokenizer: tokenizer_config.json
names GPT2Tokenizer, whose plain byte-level pre-tokenizer drops tokenizer.json's Digits step, so
"\n\n1" becomes [198, 198, 33] instead of [1116, 33].

Usage: .cache/venv/bin/python scripts/check-reward-model.py RUN [--data FILE] [--pairs N] [--max-length N]
"""
import argparse
import json
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import torch
from peft import PeftModel
from tokenizers import Tokenizer
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForSequenceClassification

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=pathlib.Path)
    parser.add_argument("--data", type=pathlib.Path, default=ROOT / ".cache/sft/dpo.jsonl")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=768)
    args = parser.parse_args()
    merged, adapter = args.run / "model", args.run / "adapter"
    template = AutoTokenizer.from_pretrained(merged)
    encoder = Tokenizer.from_file(str(merged / "tokenizer.json"))

    def ids(messages):
        return encoder.encode(template.apply_chat_template(messages, tokenize=False), add_special_tokens=False).ids

    pairs = []
    for line in args.data.read_text().splitlines():
        e = json.loads(line)
        chosen, rejected = e.get("prompt", []) + e["chosen"], e.get("prompt", []) + e["rejected"]
        if max(len(ids(chosen)), len(ids(rejected))) <= args.max_length:
            pairs.append((chosen, rejected))
        if len(pairs) == args.pairs:
            break
    conversations = [c for pair in pairs for c in pair]

    def score_all(model):
        model.eval()
        with torch.no_grad():
            return [model(input_ids=torch.tensor([ids(c)])).logits[0, 0].item() for c in conversations]

    scores = {"transformers": score_all(AutoModelForSequenceClassification.from_pretrained(merged, dtype=torch.float32))}
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = LlamaForSequenceClassification.from_pretrained(config["base_model_name_or_path"], num_labels=1, dtype=torch.float32,
                                                          pad_token_id=json.loads((merged / "config.json").read_text())["pad_token_id"])
    scores["PEFT"] = score_all(PeftModel.from_pretrained(base, adapter))

    port = free_port()
    server = subprocess.Popen([str(ROOT / ".build/release/ember"), "serve", "--model", str(merged), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit("ember serve exited: " + server.stderr.read())
                time.sleep(0.5)
        scores["Ember /pooling"] = [post(port, "/pooling", {"input": [ids(c)]})["data"][0]["data"][0] for c in conversations]
    finally:
        server.terminate()
        server.wait()

    reference = scores["transformers"]
    for name, values in scores.items():
        accuracy = sum(values[2 * i] > values[2 * i + 1] for i in range(len(pairs))) / len(pairs)
        differences = [abs(a - b) for a, b in zip(values, reference)]
        worst = max(range(len(differences)), key=differences.__getitem__)
        print(f"{name:15s} pair accuracy {accuracy:.4f} on {len(pairs)} pairs; max |score - transformers| {differences[worst]:.2e}"
              f" (answer {worst}, {len(ids(conversations[worst]))} tokens)")
    print("scores (transformers):", [round(v, 4) for v in reference[:6]], "...")
    print("per answer (tokens, transformers, Ember):", [(len(ids(c)), round(a, 4), round(b, 4)) for c, a, b in zip(conversations, reference, scores["Ember /pooling"])])


if __name__ == "__main__":
    main()
