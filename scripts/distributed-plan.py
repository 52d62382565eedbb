#!/usr/bin/env python3
"""Memory, pipeline-bubble and communication tables for training LLaMA-2 7B and 70B with Ember.

Usage:  python3 scripts/distributed-plan.py [--model 7b|70b|all] [--ranks N] [--seq S]
                                            [--micro-batch B] [--micro-batches M] [--only PART] [--json]

Prints the Markdown tables of docs/distributed.md (or, with --json, the same numbers as JSON).
Every number follows from the model's shape and the formulas stated beside each table in
docs/distributed.md; nothing is measured. Bytes are printed in MiB and GiB (1024-based).

  --ranks N          ranks in the job (default: 64 for 7B, 8 nodes × 8; 512 for 70B, 64 nodes × 8)
  --seq S            tokens per sequence (default 4096)
  --micro-batch B    sequences per micro-batch (default 1)
  --micro-batches M  micro-batches per data-parallel replica per step (default 8)
  --only PART        print one part: params, states, activations, bubble or comm
"""
import argparse
import json
import sys

RANKS_PER_NODE = 8

# Hugging Face config.json fields of the two models (untied output head, RMSNorm, SwiGLU MLP).
MODELS = {
    "7b": dict(name="LLaMA-2 7B", hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32,
               vocab=32000, tied=False, ranks=64, pp=4, tp_pp=(8, 2)),
    "70b": dict(name="LLaMA-2 70B", hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8,
                vocab=32000, tied=False, ranks=512, pp=8, tp_pp=(8, 8)),
}

MiB = 1024 ** 2
GiB = 1024 ** 3


def gib(x):
    return f"{x / GiB:,.2f}"


def mib(x):
    return f"{x / MiB:,.2f}"


def size(x):
    """Bytes as MiB below 1 GiB, GiB from there on."""
    if x == 0:
        return "0"
    return f"{x / GiB:,.2f} GiB" if x >= GiB else f"{x / MiB:,.2f} MiB"


def billions(n):
    return f"{n / 1e9:,.3f}B"


def ceil_to(n, k):
    return (n + k - 1) // k * k


# Parameter counts -----------------------------------------------------------------------------

def block_parameters(m, t=1):
    """One transformer block's parameters on one rank of a tensor group of t: the matrices divide
    by t (q, k, v, gate, up by output rows; o, down by input columns), the two norms are whole."""
    h, f = m["hidden"], m["intermediate"]
    d = h // m["heads"]
    kv = m["kv_heads"] * d
    attention = h * h + 2 * kv * h + h * h        # q, k, v, o
    mlp = 3 * h * f                               # gate, up, down
    assert attention % t == 0 and mlp % t == 0
    return attention // t + mlp // t + 2 * h      # + input and post-attention RMSNorm


def vocab_rows(m, t=1):
    """Embedding (and head) rows per rank: the vocabulary padded up to a multiple of t, split in t."""
    return ceil_to(m["vocab"], t) // t


def parameters(m):
    """Ψ: the exact parameter count of the unsharded model."""
    h = m["hidden"]
    embedding = m["vocab"] * h
    head = 0 if m["tied"] else m["vocab"] * h
    return embedding + m["layers"] * block_parameters(m) + h + head


def breakdown(m):
    h, f = m["hidden"], m["intermediate"]
    d = h // m["heads"]
    kv = m["kv_heads"] * d
    L = m["layers"]
    rows = [("embedding (V × h)", m["vocab"] * h, 1),
            ("q_proj + o_proj (2 · h × h)", 2 * h * h, L), ("k_proj + v_proj (2 · h_kv × h)", 2 * kv * h, L),
            ("gate_proj + up_proj + down_proj (3 · F × h)", 3 * f * h, L), ("2 RMSNorm weights (2 · h)", 2 * h, L),
            ("final RMSNorm (h)", h, 1)]
    if not m["tied"]:
        rows.append(("lm_head (V × h)", m["vocab"] * h, 1))
    return rows


def stage_layers(m, p):
    """Layers of each of p stages: as even as possible, the earlier stages taking the remainder."""
    base, extra = divmod(m["layers"], p)
    return [base + (1 if r < extra else 0) for r in range(p)]


def stage_parameters(m, t, p, r):
    """Ψ of one rank of stage r: its blocks' slices, plus the embedding slice on the first stage and
    the final norm and head slice on the last (the first and last are one stage when p = 1)."""
    h = m["hidden"]
    n = stage_layers(m, p)[r] * block_parameters(m, t)
    if r == 0:
        n += vocab_rows(m, t) * h
    if r == p - 1:
        n += h + (0 if m["tied"] else vocab_rows(m, t) * h)
    return n


# Layouts --------------------------------------------------------------------------------------

def layouts(m, ranks):
    """(label, T, P, ZeRO stage, sequence parallel) rows of the tables."""
    t, p = m["tp_pp"]
    rows = [("DDP", 1, 1, 0, False), ("ZeRO-1", 1, 1, 1, False), ("ZeRO-2", 1, 1, 2, False),
            ("ZeRO-3", 1, 1, 3, False), ("TP=8", 8, 1, 0, True), ("TP=8 + ZeRO-1", 8, 1, 1, True),
            (f"PP={m['pp']}", 1, m["pp"], 0, False), (f"TP={t} × PP={p}", t, p, 0, True),
            (f"DP × TP={t} × PP={p}, ZeRO-1", t, p, 1, True)]
    out = []
    for label, tt, pp, zero, sp in rows:
        if ranks % (tt * pp):
            continue
        out.append(dict(label=label, t=tt, p=pp, d=ranks // (tt * pp), zero=zero, sp=sp))
    return out


def largest_stage(m, t, p):
    """The stage whose rank holds the most parameters, and that count."""
    counts = [stage_parameters(m, t, p, r) for r in range(p)]
    r = max(range(p), key=lambda i: counts[i])
    return r, counts[r]


# 1. Model states -------------------------------------------------------------------------------

FP32_FORMULAS = {0: "16Ψ", 1: "8Ψ + 8Ψ/D", 2: "4Ψ + 12Ψ/D", 3: "16Ψ/D + 8Ψ_block"}
BF16_FORMULAS = {0: "16Ψ", 1: "4Ψ + 12Ψ/D", 2: "2Ψ + 14Ψ/D", 3: "16Ψ/D + 4Ψ_block"}


def model_states(m, layout, mixed):
    """Bytes of parameters, gradients and optimizer state per rank, for Ψ = this rank's slice."""
    t, p, d, z = layout["t"], layout["p"], layout["d"], layout["zero"]
    stage, psi = largest_stage(m, t, p)
    # fp32 AdamW: 4 B values, 4 B gradients, 8 B moments; mixed precision: 2 B bf16 values,
    # 2 B bf16 gradients, 12 B fp32 master copy and moments.
    pv, pg, po = (2, 2, 12) if mixed else (4, 4, 8)
    values = pv * psi / (d if z >= 3 else 1)
    grads = pg * psi / (d if z >= 2 else 1)
    optimizer = po * psi / (d if z >= 1 else 1)
    # ZeRO-3: two consecutive half-block units gathered (one block of values) and one block of
    # gradients waiting for its bucket: 8 bytes per parameter of a block (of this rank's tensor slice).
    gathered = 2 * pv * block_parameters(m, t) if z == 3 and d > 1 else 0
    return dict(layout=layout["label"], t=t, p=p, d=d, zero=z, stage=stage, psi_rank=psi,
                formula=(BF16_FORMULAS if mixed else FP32_FORMULAS)[z],
                values_bytes=values, gradient_bytes=grads, optimizer_bytes=optimizer, gathered_bytes=gathered,
                total_bytes=values + grads + optimizer + gathered)


# 2. Activations --------------------------------------------------------------------------------

def activations(m, s, b, t):
    """Bytes kept for the backward per layer per micro-batch: Korthikanti et al. (16-bit) and
    Ember's fp32 tape for its own layer where it has no tensor parallelism."""
    h, a, f = m["hidden"], m["heads"], m["intermediate"]
    kv = m["kv_heads"] * (h // a)
    sbh = s * b * h
    # Ember: every op's output stays on the tape until the backward: per token x, h, q, rope(q),
    # attention output, o·, x1, h2, down· (9 × hidden), k, rope(k), v (3 × kv width), gate, up,
    # SwiGLU (3 × intermediate), two RMSNorm reciprocals; and each query's log-sum-exp per head
    # (the attention recomputes its probabilities in the backward).
    ember = 4 * s * b * (9 * h + 3 * kv + 3 * f + 2) + 4 * a * s * b
    rows = [
        ("no parallelism", "s·b·h·(34 + 5·a·s/h)", sbh * (34 + 5 * a * s / h), ember,
         "4·s·b·(9h + 3h_kv + 3F + 2) + 4·a·s·b"),
        (f"tensor parallel, t={t}", "s·b·h·(10 + 24/t + 5·a·s/(h·t))", sbh * (10 + 24 / t + 5 * a * s / (h * t)), None, ""),
        (f"tensor + sequence parallel, t={t}", "s·b·h·(34/t + 5·a·s/(h·t))", sbh * (34 / t + 5 * a * s / (h * t)), None, ""),
        ("full recomputation", "2·s·b·h", 2 * sbh, 4 * sbh, "4·s·b·h"),
        (f"full recomputation + sequence parallel, t={t}", "2·s·b·h/t", 2 * sbh / t, None, ""),
    ]
    return [dict(case=c, formula=fm, bytes_per_layer=x, bytes_all_layers=x * m["layers"],
                 ember_formula=ef, ember_bytes_per_layer=e,
                 ember_bytes_all_layers=None if e is None else e * m["layers"])
            for c, fm, x, e, ef in rows]


# 3. Pipeline -----------------------------------------------------------------------------------

def bubble(p, mb):
    return (p - 1) / (mb + p - 1)


def schedule(p, mb):
    """1F1B on each stage r: warm-up forwards, steady forward-backward pairs, cool-down backwards,
    and the most micro-batches whose activations it holds at once."""
    rows = []
    for r in range(p):
        warm = min(p - r - 1, mb)
        rows.append(dict(stage=r, warmup_forwards=warm, steady_pairs=mb - warm, cooldown_backwards=warm,
                         in_flight=min(p - r, mb)))
    return rows


# 4. Communication ------------------------------------------------------------------------------

def tp_layer_bytes(m, s, b, t, nbytes):
    """One layer, one micro-batch, one rank of a tensor group of t: 4 all-reduces of s·b·h (2 in the
    forward, 2 in the backward), or with sequence parallelism 4 all-gathers + 4 reduce-scatters:
    8(t−1)/t·s·b·h·bytes either way."""
    return 8 * (t - 1) / t * s * b * m["hidden"] * nbytes if t > 1 else 0


def tp_ends_bytes(m, s, b, t, nbytes, first, last):
    """The vocabulary-parallel ends, per micro-batch: the embedding's all-reduce of s·b·h (forward),
    the head input's all-reduce of s·b·h (backward of the column-parallel head) and the
    cross-entropy's three all-reduces of s·b fp32 values (max, sum of exponentials, target logit)."""
    if t == 1:
        return 0
    ring = 2 * (t - 1) / t
    sbh = s * b * m["hidden"]
    n = 0
    if first:
        n += ring * sbh * nbytes
    if last:
        n += ring * sbh * nbytes + 3 * ring * s * b * 4
    return n


def communication(m, layout, s, b, mb, nbytes):
    """Bytes one rank puts on the wire per step (ring algorithms), for the busiest stage."""
    t, p, d, z, sp = layout["t"], layout["p"], layout["d"], layout["zero"], layout["sp"]
    best = None
    for r in range(p):
        psi = stage_parameters(m, t, p, r)
        layers = stage_layers(m, p)[r]
        data = (3 if z == 3 else 2) * (d - 1) / d * psi * nbytes
        tensor = mb * (layers * tp_layer_bytes(m, s, b, t, nbytes) + tp_ends_bytes(m, s, b, t, nbytes, r == 0, r == p - 1))
        if sp and t > 1:  # the norm-weight gradients, summed over the tensor group once per step
            norms = 2 * layers * m["hidden"] + (m["hidden"] if r == p - 1 else 0)
            tensor += 2 * (t - 1) / t * norms * nbytes
        # one activation forward and its gradient backward per boundary and micro-batch; with
        # sequence parallelism each rank of the group sends its sequence shard
        boundaries = (r > 0) + (r < p - 1)
        pipe = mb * boundaries * s * b * m["hidden"] * nbytes / (t if sp else 1)
        row = dict(layout=layout["label"], t=t, p=p, d=d, zero=z, stage=r, psi_rank=psi,
                   data_bytes=data, tensor_bytes=tensor, pipeline_bytes=pipe, total_bytes=data + tensor + pipe)
        if best is None or row["total_bytes"] > best["total_bytes"]:
            best = row
    return best


# Output ----------------------------------------------------------------------------------------

def table(header, rows, align=None):
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def compute(key, m, args):
    ranks = args.ranks or m["ranks"]
    t, p = m["tp_pp"]
    lay = layouts(m, ranks)
    return dict(
        model=m["name"], ranks=ranks, nodes=ranks / RANKS_PER_NODE, seq=args.seq, micro_batch=args.micro_batch,
        micro_batches=args.micro_batches,
        shape={k: m[k] for k in ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab", "tied")},
        parameters=parameters(m), block_parameters=block_parameters(m),
        breakdown=[dict(tensor=n, each=c, count=k, total=c * k) for n, c, k in breakdown(m)],
        model_states_fp32=[model_states(m, x, False) for x in lay],
        model_states_bf16=[model_states(m, x, True) for x in lay],
        activations=activations(m, args.seq, args.micro_batch, t),
        communication_fp32=[communication(m, x, args.seq, args.micro_batch, args.micro_batches, 4) for x in lay],
        communication_bf16=[communication(m, x, args.seq, args.micro_batch, args.micro_batches, 2) for x in lay],
        tensor_parallel_layer=[dict(t=tt, fp32_bytes=tp_layer_bytes(m, args.seq, args.micro_batch, tt, 4),
                                    bf16_bytes=tp_layer_bytes(m, args.seq, args.micro_batch, tt, 2)) for tt in (2, 4, 8)],
        pipeline_boundary=dict(fp32_bytes_per_micro_batch=2 * args.seq * args.micro_batch * m["hidden"] * 4,
                               bf16_bytes_per_micro_batch=2 * args.seq * args.micro_batch * m["hidden"] * 2),
        schedule=dict(p=m["pp"], micro_batches=args.micro_batches, stages=schedule(m["pp"], args.micro_batches)),
    )


def markdown(r, only):
    out = []
    name, n, s, b, mb = r["model"], r["ranks"], r["seq"], r["micro_batch"], r["micro_batches"]
    setting = f"{n} rank{'s' if n != 1 else ''} ({n / RANKS_PER_NODE:g} nodes × {RANKS_PER_NODE})"

    def want(part):
        return only in (None, part)

    if want("params"):
        out.append(f"**{name}: parameters** (Ψ = {r['parameters']:,} = {billions(r['parameters'])}; "
                   f"one block {r['block_parameters']:,})")
        out.append(table(["tensors", "per layer or once", "count", "total"],
                         [(x["tensor"], f"{x['each']:,}", x["count"], f"{x['total']:,}") for x in r["breakdown"]]
                         + [("**Ψ**", "", "", f"**{r['parameters']:,}**")]))
    if want("states"):
        for key, title, g in (("model_states_fp32", "model states per rank, fp32 AdamW (16 bytes per parameter)", "8Ψ_block"),
                              ("model_states_bf16", "model states per rank, bf16 mixed-precision accounting (16 bytes per parameter)", "4Ψ_block")):
            out.append(f"**{name}, {setting}: {title}**")
            out.append(table(["layout", "T", "P", "D", "Ψ per rank", "formula", "values GiB", "gradients GiB",
                              "optimizer GiB", f"gathered ({g}) GiB", "total GiB"],
                             [(x["layout"], x["t"], x["p"], x["d"], billions(x["psi_rank"]), x["formula"], gib(x["values_bytes"]),
                               gib(x["gradient_bytes"]), gib(x["optimizer_bytes"]), gib(x["gathered_bytes"]) if x["zero"] == 3 else "",
                               f"**{gib(x['total_bytes'])}**") for x in r[key]],
                             ["---"] + ["---:"] * 4 + ["---"] + ["---:"] * 5))
    if want("activations"):
        out.append(f"**{name}: activations per layer per micro-batch** (s = {s}, b = {b}; "
                   f"{r['shape']['layers']} layers = stage 0's share under 1F1B when M ≥ P)")
        out.append(table(["case", "Korthikanti et al. (16-bit)", "per layer", f"{r['shape']['layers']} layers",
                          "Ember fp32 per layer", f"Ember fp32, {r['shape']['layers']} layers"],
                         [(x["case"], x["formula"], size(x["bytes_per_layer"]), size(x["bytes_all_layers"]),
                           size(x["ember_bytes_per_layer"]) if x["ember_bytes_per_layer"] is not None else "—",
                           size(x["ember_bytes_all_layers"]) if x["ember_bytes_all_layers"] is not None else "—")
                          for x in r["activations"]],
                         ["---", "---", "---:", "---:", "---:", "---:"]))
    if want("bubble") and r is not None and "schedule" in r:
        sc = r["schedule"]
        out.append(f"**{name}: 1F1B on P = {sc['p']} stages, M = {sc['micro_batches']} micro-batches**")
        out.append(table(["stage r", "warm-up forwards", "steady 1F1B pairs", "cool-down backwards",
                          "micro-batches in flight"],
                         [(x["stage"], x["warmup_forwards"], x["steady_pairs"], x["cooldown_backwards"], x["in_flight"])
                          for x in sc["stages"]]))
    if want("comm"):
        out.append(f"**{name}, {setting}: bytes on the wire per step, one rank of the busiest stage** "
                   f"(M = {mb} micro-batches of b = {b} × s = {s} per data-parallel replica)")
        rows = []
        for x, y in zip(r["communication_fp32"], r["communication_bf16"]):
            rows.append((x["layout"], x["t"], x["p"], x["d"], x["stage"], gib(x["data_bytes"]), gib(x["tensor_bytes"]),
                         gib(x["pipeline_bytes"]), f"**{gib(x['total_bytes'])}**", gib(y["total_bytes"])))
        out.append(table(["layout", "T", "P", "D", "stage", "data group GiB", "tensor group GiB", "pipeline GiB",
                          "total fp32 GiB", "total bf16 GiB"], rows))
        out.append(f"**{name}: tensor-parallel traffic per layer per micro-batch, one rank** (8(t−1)/t·s·b·h·bytes)")
        out.append(table(["t", "fp32", "bf16"],
                         [(x["t"], size(x["fp32_bytes"]), size(x["bf16_bytes"])) for x in r["tensor_parallel_layer"]]
                         + [("pipeline boundary (2·s·b·h·bytes)", size(r["pipeline_boundary"]["fp32_bytes_per_micro_batch"]),
                             size(r["pipeline_boundary"]["bf16_bytes_per_micro_batch"]))]))
    return "\n\n".join(out)


def bubble_table(ps=(2, 4, 8), ms=(4, 8, 16, 32)):
    rows = [(f"P = {p}",) + tuple(f"{bubble(p, m):.1%}" for m in ms) for p in ps]
    return ("**1F1B pipeline bubble (P−1)/(M+P−1)**\n\n"
            + table(["stages", *(f"M = {m}" for m in ms)], rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["7b", "70b", "all"], default="all")
    ap.add_argument("--ranks", type=int, help="ranks in the job (default: 64 for 7B, 512 for 70B)")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--micro-batches", type=int, default=8)
    ap.add_argument("--only", choices=["params", "states", "activations", "bubble", "comm"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if min(args.seq, args.micro_batch, args.micro_batches) < 1 or (args.ranks is not None and args.ranks < 1):
        ap.error("--ranks, --seq, --micro-batch and --micro-batches must be positive")
    keys = ["7b", "70b"] if args.model == "all" else [args.model]
    results = {k: compute(k, MODELS[k], args) for k in keys}
    bubbles = [dict(p=p, micro_batches=mb, bubble=bubble(p, mb)) for p in (2, 4, 8) for mb in (4, 8, 16, 32)]
    if args.json:
        json.dump(dict(units="bytes", models=results, pipeline_bubble=bubbles), sys.stdout, indent=1)
        print()
        return
    parts = []
    if args.only in (None, "bubble"):
        parts.append(bubble_table())
    for k in keys:
        text = markdown(results[k], args.only)
        if text:
            parts.append(text)
    print("\n\n".join(parts))


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # piped into head
        sys.exit(0)
