#!/usr/bin/env python3
"""Perplexity of a Hugging Face causal language model folder on a text file with transformers,
scored as llama.cpp's llama-perplexity scores it, so that the two (and `ember perplexity`) compare
number for number:

  - the whole file is tokenized once with the folder's tokenizer.json (no special tokens added:
    the exported GGUFs do not add a BOS either);
  - it is cut into floor(tokens / context) chunks of `context` tokens, each run from position 0;
  - in each chunk the logits at positions context/2 … context−2 predict the next token, and the
    perplexity is exp of the mean negative log-likelihood over every chunk's scored tokens.

Usage: hf-perplexity.py MODEL_DIR TEXT_FILE CONTEXT   (prints: perplexity P tokens N chunks C)
"""
import math
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

folder, path, context = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(2)
tokens = Tokenizer.from_file(f"{folder}/tokenizer.json").encode(open(path, encoding="utf-8").read(), add_special_tokens=False).ids
chunks = len(tokens) // context
if chunks < 2:
    sys.exit(f"{path}: {len(tokens)} tokens, fewer than two chunks of {context}")
model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
first = context // 2
total, count = 0.0, 0
with torch.no_grad():
    for c in range(chunks):
        ids = torch.tensor([tokens[c * context:(c + 1) * context]])
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
        targets = ids[0, first + 1:]
        total -= logprobs[first:context - 1].gather(1, targets[:, None]).sum().item()
        count += len(targets)
print(f"perplexity {math.exp(total / count):.4f} tokens {len(tokens)} chunks {chunks}")
