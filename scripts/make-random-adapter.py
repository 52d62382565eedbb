"""Writes a random LoRA adapter for SmolLM2-135M in PEFT's files, for serving tests: A uniform in
±1/sqrt(in) (PEFT's initialisation), B drawn from N(0, 0.05²) so that the adapter changes the output.

Usage: scripts/make-random-adapter.py OUT_DIR --seed S [--rank R]   (needs numpy, safetensors)
"""
import argparse
import json
import pathlib

import numpy as np
from safetensors.numpy import save_file

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--seed", type=int, required=True)
parser.add_argument("--rank", type=int, default=4)
args = parser.parse_args()
hidden, layers, kv = 576, 30, 192  # SmolLM2-135M: 9 heads and 3 key/value heads of 64
shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.v_proj": (kv, hidden), "self_attn.o_proj": (hidden, hidden)}
rng = np.random.default_rng(args.seed)
tensors = {}
for layer in range(layers):
    for module, (out, inp) in shapes.items():
        name = f"base_model.model.model.layers.{layer}.{module}"
        tensors[name + ".lora_A.weight"] = (rng.uniform(-1, 1, (args.rank, inp)) / np.sqrt(inp)).astype(np.float32)
        tensors[name + ".lora_B.weight"] = rng.normal(0, 0.05, (out, args.rank)).astype(np.float32)
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": args.rank, "lora_alpha": 2 * args.rank, "lora_dropout": 0.0,
          "target_modules": ["q_proj", "v_proj", "o_proj"], "bias": "none", "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
(out / "adapter_config.json").write_text(json.dumps(config, indent=2))
