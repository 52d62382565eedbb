"""Training throughput, Ember against PyTorch on the CPU, side by side in one run.

For each model size (LLaMA with grouped-query attention and tied embeddings, vocabulary of the
data's tokenizer), both train the same configuration with AdamW on the same batch size, sequence
length and thread count: PyTorch with transformers' LlamaForCausalLM (its default SDPA attention)
in f32 and under CPU autocast to bf16, Ember with `ember pretrain --config` with `--precision f32`
and `--precision bf16`. Reported: median tokens/s over the timed steps, the ratios, and achieved
GFLOP/s (6·N + 12·L·C·T per token, N = parameters used in products) against this machine's peaks
measured in the same run on 2048×2048 matrices: for f32 the best of torch.mm, numpy matmul and
Ember's products (`ember bench-gemm --peak`: OpenBLAS SGEMM and Ember's AVX-512F kernel), for bf16
the better of torch.mm on bf16 matrices and Ember's bf16 kernel.

Usage: bench/train-speed.py --data DIR [--threads 2] [--steps 12] [--batch-size 8] [--seq-len 256]
(bench/train-speed.sh prepares the default corpus and runs this.)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {  # the ~10M and ~40M configurations (the small and medium presets)
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4),
    "medium": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=4),
}


def gemm_peak(threads, bf16=False):
    torch.set_num_threads(threads)
    best = 0.0
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    x, y = a.numpy().copy(), b.numpy().copy()
    ab, bb = a.bfloat16(), b.bfloat16()
    for f in ((lambda: torch.mm(ab, bb),) if bf16 else (lambda: torch.mm(a, b), lambda: x @ y)):
        f()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        best = max(best, 2 * n ** 3 / min(times) / 1e9)
    return best


def ember_peaks(threads):
    """GFLOP/s of Ember's products on a square 2048 training step (`ember bench-gemm --peak`):
    {"f32": the faster of SGEMM and Ember's f32 kernel, "bf16": the bf16 kernel}."""
    out = subprocess.run([os.path.join(ROOT, ".build/release/ember"), "bench-gemm", "--peak", "--threads", str(threads), "--repetitions", "3"],
                         check=True, capture_output=True, text=True).stdout.splitlines()
    header = [c.strip() for c in next(line for line in out if line.startswith("| weight")).strip("|").split("|")]
    row = [c.strip() for c in next(line for line in out if line.startswith("| square")).strip("|").split("|")]
    values = dict(zip(header, row))
    f32 = max(float(values[k]) for k in header if k in ("SGEMM GFLOP/s", "AVX-512F f32 GFLOP/s"))
    return {"f32": f32, "bf16": float(values["bf16 GFLOP/s"])}


def flops_per_token(config, seq_len):
    C, L, V, I = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"], config["intermediate_size"]
    D = C // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * D
    per_layer = C * C * 2 + C * kv * 2 + 3 * C * I
    used = L * per_layer + V * C  # the tied embedding is also the output product
    return 6 * used + 12 * L * C * seq_len, L * per_layer + V * C


def torch_speed(config, data, args, autocast=False):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config)).float()
    model.train()
    decay = [p for n, p in model.named_parameters() if n.endswith("proj.weight")]
    other = [p for n, p in model.named_parameters() if not n.endswith("proj.weight")]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    rng = np.random.default_rng(0)
    speeds = []
    for step in range(args.steps):
        offsets = rng.integers(0, len(data) - args.seq_len - 1, args.batch_size)
        window = torch.from_numpy(np.stack([data[o:o + args.seq_len + 1] for o in offsets]).astype(np.int64))
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=window[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), window[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            speeds.append(args.batch_size * args.seq_len / (time.perf_counter() - start))
    return statistics.median(speeds)


def ember_speed(config, args, precision="f32"):
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "config.json")
        with open(path, "w") as f:
            json.dump({"architectures": ["LlamaForCausalLM"], **config}, f)
        subprocess.run([os.path.join(ROOT, ".build/release/ember"), "pretrain", "--config", path, "--data", args.data,
                        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
                        "--threads", str(args.threads), "--precision", precision, "--eval-every", "0", "--save-every", "0", "--output", os.path.join(work, "run")],
                       check=True, stderr=subprocess.DEVNULL)
        with open(os.path.join(work, "run/log.jsonl")) as f:
            speeds = [json.loads(line)["tokens_per_s"] for line in f][2:]
    return statistics.median(speeds)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--sizes", default="small,medium")
    args = parser.parse_args()
    description = json.load(open(os.path.join(args.data, "dataset.json")))
    raw = open(os.path.join(args.data, "train.bin"), "rb").read()
    width = int.from_bytes(raw[12:16], "little")
    data = np.frombuffer(raw[32:], dtype=np.uint16 if width == 2 else np.uint32)
    torch32, torch16, ember = gemm_peak(args.threads), gemm_peak(args.threads, bf16=True), ember_peaks(args.threads)
    peak, peak16 = max(torch32, ember["f32"]), max(torch16, ember["bf16"])
    print(f"GEMM peaks ({args.threads} threads, 2048³): f32 torch/numpy {torch32:.1f}, Ember {ember['f32']:.1f}; "
          f"bf16 torch {torch16:.1f}, Ember {ember['bf16']:.1f} GFLOP/s", file=sys.stderr)
    rows = []
    for name in args.sizes.split(","):
        config = dict(SIZES[name], vocab_size=description["vocab_size"], max_position_embeddings=max(256, args.seq_len),
                      tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0)
        flops, parameters = flops_per_token(config, args.seq_len)
        speeds = {"torch f32": torch_speed(config, data, args), "torch bf16": torch_speed(config, data, args, autocast=True),
                  "ember f32": ember_speed(config, args), "ember bf16": ember_speed(config, args, "bf16")}
        print(f"{name}: " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in speeds.items()), file=sys.stderr)
        rows.append((name, parameters, speeds, flops))
    print("| model | parameters | PyTorch f32 | PyTorch bf16 autocast | Ember f32 | Ember bf16 | Ember f32 / PyTorch f32 | "
          "Ember bf16 / PyTorch f32 | Ember bf16 / PyTorch bf16 | Ember f32 GFLOP/s (of f32 peak) | Ember bf16 GFLOP/s (of bf16 peak) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, parameters, s, flops in rows:
        g32, g16 = s["ember f32"] * flops / 1e9, s["ember bf16"] * flops / 1e9
        print(f"| {name} | {parameters / 1e6:.1f}M | {s['torch f32']:.0f} | {s['torch bf16']:.0f} | {s['ember f32']:.0f} | {s['ember bf16']:.0f} | "
              f"{s['ember f32'] / s['torch f32']:.2f} | {s['ember bf16'] / s['torch f32']:.2f} | {s['ember bf16'] / s['torch bf16']:.2f} | "
              f"{g32:.1f} ({g32 / peak:.0%}) | {g16:.1f} ({g16 / peak16:.0%}) |")
    print(f"Tokens/s, median of the timed steps. Peaks on 2048³ products with {args.threads} threads, the best of torch.mm, numpy and "
          f"Ember's own products: f32 {peak:.0f} GFLOP/s (torch/numpy {torch32:.0f}, Ember {ember['f32']:.0f}), "
          f"bf16 {peak16:.0f} GFLOP/s (torch {torch16:.0f}, Ember {ember['bf16']:.0f}).")

if __name__ == "__main__":
    main()
