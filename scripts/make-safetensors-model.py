#!/usr/bin/env python3
"""Convert a LLaMA GGUF into a float32 Hugging Face LlamaForCausalLM directory.

Usage:  python3 scripts/make-safetensors-model.py GGUF OUTDIR [--force] [--tokenizer-json PATH]

Writes OUTDIR/model.safetensors (every tensor dequantized to float32, HF names,
no lm_head because the embeddings are tied) and OUTDIR/config.json, each through
a temporary name and a rename, then prints OUTDIR. Does nothing if
OUTDIR/model.safetensors exists, unless --force.

With --tokenizer-json, the folder also gets that tokenizer.json and a
tokenizer_config.json made from the GGUF (its chat template, BOS and EOS tokens,
and whether BOS is added), so that it is a whole Hugging Face model folder that
fine-tuning starts from; these two are written whenever they are missing.

llama.cpp's converter permuted the rows of q_proj/k_proj (per head, from the
rotate-half layout into interleaved pairs); this script undoes that permutation
so that the output matches Hugging Face's rotate_half RoPE again.
"""
import argparse
import json
import os
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file

NAMES = {  # GGUF name (within blk.N) -> HF name (within model.layers.N)
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def field(reader, key):
    return reader.fields[key].contents()


def unpermute(w, n_head):
    """Inverse of llama.cpp's reshape(n_head, 2, hd/2, in).swapaxes(1, 2)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_f32(t):
    shape = [int(s) for s in reversed(t.shape)]  # GGUF lists the fastest dimension first
    return np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape), dtype=np.float32)


def convert(reader):
    n_head = int(field(reader, "llama.attention.head_count"))
    n_kv = int(field(reader, "llama.attention.head_count_kv"))
    out = {}
    for t in reader.tensors:
        w = tensor_f32(t)
        if t.name == "token_embd.weight":
            out["model.embed_tokens.weight"] = w
        elif t.name == "output_norm.weight":
            out["model.norm.weight"] = w
        elif t.name == "output.weight":
            out["lm_head.weight"] = w
        elif t.name.startswith("blk."):
            _, layer, kind, _ = t.name.split(".")
            if kind == "attn_q":
                w = unpermute(w, n_head)
            elif kind == "attn_k":
                w = unpermute(w, n_kv)
            out[f"model.layers.{layer}.{NAMES[kind]}.weight"] = w
        else:
            raise SystemExit(f"unexpected tensor {t.name}")
    return out


def config(reader, tied):
    f = lambda k: field(reader, k)
    hidden, heads = int(f("llama.embedding_length")), int(f("llama.attention.head_count"))
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": int(f("llama.feed_forward_length")),
        "num_hidden_layers": int(f("llama.block_count")), "num_attention_heads": heads,
        "num_key_value_heads": int(f("llama.attention.head_count_kv")), "head_dim": hidden // heads,
        "vocab_size": int(f("llama.vocab_size")), "max_position_embeddings": 8192,
        "rms_norm_eps": float(str(np.float32(f("llama.attention.layer_norm_rms_epsilon")))),  # 1e-05, not 9.99e-06
        "rope_theta": float(f("llama.rope.freq_base")), "tie_word_embeddings": tied,
        "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    }


def tokenizer_files(reader, tokenizer_json, outdir):
    tokens = field(reader, "tokenizer.ggml.tokens")
    token = lambda key: tokens[int(field(reader, key))] if key in reader.fields else None
    settings = {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": 8192, "clean_up_tokenization_spaces": False,
        "bos_token": token("tokenizer.ggml.bos_token_id"), "eos_token": token("tokenizer.ggml.eos_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id") or token("tokenizer.ggml.eos_token_id"),
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token")) if "tokenizer.ggml.add_bos_token" in reader.fields else False,
        "chat_template": field(reader, "tokenizer.chat_template"),
    }
    for name, text in [("tokenizer.json", Path(tokenizer_json).read_text()),
                       ("tokenizer_config.json", json.dumps(settings, indent=2, ensure_ascii=False) + "\n")]:
        tmp = outdir / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, outdir / name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf")
    ap.add_argument("outdir")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--tokenizer-json")
    args = ap.parse_args()
    outdir = Path(args.outdir)
    target = outdir / "model.safetensors"
    reader = None
    if args.tokenizer_json and (args.force or not (outdir / "tokenizer_config.json").exists()):
        outdir.mkdir(parents=True, exist_ok=True)
        reader = gguf.GGUFReader(args.gguf)
        tokenizer_files(reader, args.tokenizer_json, outdir)
    if target.exists() and not args.force:
        print(outdir)
        return
    outdir.mkdir(parents=True, exist_ok=True)
    reader = reader or gguf.GGUFReader(args.gguf)
    tensors = convert(reader)
    cfg = config(reader, tied="lm_head.weight" not in tensors)
    tmp = outdir / f".config.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp, outdir / "config.json")
    tmp = outdir / f".model.safetensors.{os.getpid()}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    print(outdir)


if __name__ == "__main__":
    main()
