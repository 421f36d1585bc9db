#!/usr/bin/env python3
"""Reduced-precision references for the tiny fixture models of make_model_fixtures.py.

Needs torch, transformers and safetensors. Run from the repository root after
make_model_fixtures.py:

    python3 scripts/half_reference.py

For each of `gqa`, `tied`, `llama31` (and the `qwen2`, `qwen3` fixtures of
make_family_fixtures.py, which ship in bf16 as released) it loads the committed model in transformers with
`torch_dtype=torch.bfloat16` and `torch.float16` (eager attention) and writes
tests/fixtures/models/<name>/reference_half.safetensors with, for dtype in (bf16, f16):

- `<dtype>_logits_<i>`: the logits of prompt i alone, as f32;
- `<dtype>_padded_logits`: the left-padded batch of all prompts (as in reference.safetensors).

It also writes tests/fixtures/models/gqa-bf16/: the `gqa` weights stored in bf16 (config.json
says `torch_dtype: bfloat16`, as most published checkpoints do), with `f32_logits_<i>`: the
logits transformers gives when it loads that file with `torch_dtype=torch.float32`.
"""

import json
import os

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "models")
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}


def prompts_of(name):
    with open(os.path.join(OUT, name, "reference.json")) as f:
        return json.load(f)["prompts"]


def padded(prompts):
    t = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), t), dtype=torch.long)
    mask = torch.zeros((len(prompts), t), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, t - len(p):] = torch.tensor(p)
        mask[i, t - len(p):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def main():
    for name in ["gqa", "tied", "llama31", "qwen2", "qwen3"]:
        d = os.path.join(OUT, name)
        prompts = prompts_of(name)
        ref = {}
        for tag, dtype in DTYPES.items():
            model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=dtype,
                                                         attn_implementation="eager").eval()
            with torch.no_grad():
                for i, ids in enumerate(prompts):
                    x = torch.tensor([ids])
                    ref[f"{tag}_logits_{i}"] = model(x).logits[0].float().contiguous()
                ids, mask, pos = padded(prompts)
                ref[f"{tag}_padded_logits"] = model(
                    ids, attention_mask=mask, position_ids=pos).logits.float().contiguous()
        save_file(ref, os.path.join(d, "reference_half.safetensors"))
        print(name, "ok")

    # A bf16 checkpoint.
    src = LlamaForCausalLM.from_pretrained(os.path.join(OUT, "gqa"), torch_dtype=torch.bfloat16)
    dst = os.path.join(OUT, "gqa-bf16")
    src.save_pretrained(dst, safe_serialization=True)
    model = LlamaForCausalLM.from_pretrained(dst, torch_dtype=torch.float32,
                                             attn_implementation="eager").eval()
    ref = {}
    with torch.no_grad():
        for i, ids in enumerate(prompts_of("gqa")):
            ref[f"f32_logits_{i}"] = model(torch.tensor([ids])).logits[0].contiguous()
    save_file(ref, os.path.join(dst, "reference.safetensors"))
    print("gqa-bf16", sorted(os.listdir(dst)))


if __name__ == "__main__":
    main()
