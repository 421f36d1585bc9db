#!/usr/bin/env python3
"""Writes GGUF copies of the family fixtures, as llama.cpp's converter lays them out, under
tests/fixtures/gguf/: their logits must equal the safetensors fixtures' transformers references.

Needs numpy, torch, safetensors and gguf (gguf-py). Run from the repository root, after
scripts/make_model_fixtures.py and scripts/make_family_fixtures.py:

    python3 scripts/make_family_gguf_fixtures.py

- llama31-rope-freqs.gguf: the `llama31` fixture (Llama-3.1 rope scaling) the way llama.cpp
  stores it: no scaling metadata, a `rope_freqs.weight` tensor of per-frequency factors computed
  as llama.cpp's converter computes them, q/k rows permuted.
- qwen2.gguf, qwen3.gguf: the `qwen2` and `qwen3` fixtures (architecture `qwen2` / `qwen3`, q/k/v
  biases, Qwen3's `attn_q_norm` / `attn_k_norm`, q/k rows not permuted, as llama.cpp writes
  them).

transformers' own GGUF loader (5.24) is run on each as a cross-check of the layout: on qwen2.gguf
its logits equal the fixture's reference (asserted); it cannot load qwen3.gguf (it ignores
`qwen3.attention.key_length` and assumes head_dim 128), and it loads llama31-rope-freqs.gguf
without the `rope_freqs` factors (logits off by about 0.4): llama.cpp's semantics, which sweetspot
follows, are the safetensors model's.
"""

import json
import math
import os

import numpy as np
import torch
from gguf import GGUFWriter
from safetensors.numpy import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")


def permute(w, heads):
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def llama3_factors(cfg, head_dim):
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    base = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor = rope.get("factor", 8.0)
    low = rope.get("low_freq_factor", 1.0)
    high = rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def add_tensors(w, sd, layers, heads, kv, permute_qk, rope_freqs=None):
    """A transformers state dict (numpy) under llama.cpp's tensor names: q/k rows permuted for
    `llama` (`permute_qk`), Qwen's q/k/v biases and Qwen3's q/k norms where the model has them."""
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if "lm_head.weight" in sd:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)
    for i in range(layers):
        p = f"model.layers.{i}."
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(q, heads) if permute_qk else q)
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(k, kv) if permute_qk else k)
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        for proj in ("q", "k", "v"):
            bias = sd.get(p + f"self_attn.{proj}_proj.bias")
            if bias is not None:
                w.add_tensor(f"blk.{i}.attn_{proj}.bias", bias)
        for proj in ("q", "k"):
            norm = sd.get(p + f"self_attn.{proj}_norm.weight")
            if norm is not None:
                w.add_tensor(f"blk.{i}.attn_{proj}_norm.weight", norm)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])


def write(name, arch, fixture, rope_freqs=False):
    d = os.path.join(MODELS, fixture)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    sd = load_file(os.path.join(d, "model.safetensors"))
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    rope = cfg.get("rope_parameters") or {}
    w = GGUFWriter(os.path.join(OUT, name), arch)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    w.add_vocab_size(cfg["vocab_size"])
    add_tensors(w, sd, cfg["num_hidden_layers"], heads, kv, permute_qk=arch == "llama",
                rope_freqs=llama3_factors(cfg, head_dim) if rope_freqs else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(name, os.path.getsize(os.path.join(OUT, name)), "bytes")


def main():
    os.makedirs(OUT, exist_ok=True)
    write("llama31-rope-freqs.gguf", "llama", "llama31", rope_freqs=True)
    write("qwen2.gguf", "qwen2", "qwen2")
    write("qwen3.gguf", "qwen3", "qwen3")
    cross_check()


def cross_check():
    from safetensors.torch import load_file as load_torch
    from transformers import AutoModelForCausalLM
    for name, fixture in [("qwen2.gguf", "qwen2"), ("qwen3.gguf", "qwen3"),
                          ("llama31-rope-freqs.gguf", "llama31")]:
        with open(os.path.join(MODELS, fixture, "reference.json")) as f:
            prompt = json.load(f)["prompts"][1]
        want = load_torch(os.path.join(MODELS, fixture, "reference.safetensors"))["logits_1"]
        try:
            m = AutoModelForCausalLM.from_pretrained(OUT, gguf_file=name, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001
            print(name, "transformers cannot load it:", str(e).splitlines()[0][:120])
            continue
        with torch.no_grad():
            diff = (m.eval()(torch.tensor([prompt])).logits[0] - want).abs().max().item()
        print(name, "transformers' GGUF loader: max |diff|", diff)
        if name == "qwen2.gguf":
            assert diff < 1e-4, diff


if __name__ == "__main__":
    main()
