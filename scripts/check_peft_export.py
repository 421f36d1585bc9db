#!/usr/bin/env python3
"""Checks that PEFT loads an adapter folder sweetspot exported (`[train.adapter]`, merge = false).

    python3 scripts/check_peft_export.py FOLDER [--tokens 1,5,9,42]

Needs torch, transformers, safetensors and peft. Loads the base named by the folder's
`base_model_name_or_path` (f32) with `peft.PeftModel.from_pretrained(base, FOLDER)` and checks:

- every tensor of `adapter_model.safetensors` is loaded into the PEFT model, unchanged;
- PEFT's logits on the token ids equal those of the base with the adapters merged by hand
  (W + lora_alpha / r * B A, read from the files, not through PEFT) within 1e-4 relative;
- the adapter changes the logits (a zero adapter would pass the check above trivially).

Prints the differences; exits 1 when a check fails.
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--tokens", default="1,5,9,42,77,3,100,12")
    args = ap.parse_args()
    from peft import PeftModel

    folder = os.path.abspath(args.folder)
    with open(os.path.join(folder, "adapter_config.json")) as f:
        cfg = json.load(f)
    base_path = cfg["base_model_name_or_path"]
    if not os.path.isabs(base_path) and os.path.exists(os.path.join(folder, base_path)):
        base_path = os.path.join(folder, base_path)
    tokens = torch.tensor([[int(t) for t in args.tokens.split(",")]])
    failed = False

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    base.eval()
    with torch.no_grad():
        base_logits = base(tokens).logits

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), folder)
    model.eval()
    weights = load_file(os.path.join(folder, "adapter_model.safetensors"))
    state = model.state_dict()
    for name, t in weights.items():
        key = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight")
        if key not in state:
            print(f"FAIL: {name} is not a parameter of the PEFT model")
            failed = True
        elif not torch.equal(state[key].float(), t.float()):
            print(f"FAIL: {name} loaded with other values")
            failed = True
    with torch.no_grad():
        peft_logits = model(tokens).logits

    scale = cfg["lora_alpha"] / (cfg["r"] ** 0.5 if cfg.get("use_rslora") else cfg["r"])
    merged = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged.eval()
    params = dict(merged.named_parameters())
    with torch.no_grad():
        for name, a in weights.items():
            if ".lora_A." not in name:
                continue
            b = weights[name.replace(".lora_A.", ".lora_B.")]
            target = name.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight")
            params[target] += scale * (b.float() @ a.float())
        merged_logits = merged(tokens).logits
    top = merged_logits.abs().max().item()
    diff = (peft_logits - merged_logits).abs().max().item()
    moved = (peft_logits - base_logits).abs().max().item()
    print(f"{len(weights)} adapter tensors; PEFT vs merged by hand: {diff:.3g} "
          f"(largest logit {top:.3g}); adapter vs base: {moved:.3g}")
    if diff > 1e-4 * top + 1e-5:
        print("FAIL: PEFT's logits differ from the merged model's")
        failed = True
    if moved == 0.0:
        print("FAIL: the adapter does not change the logits")
        failed = True
    print("FAIL" if failed else "OK")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
