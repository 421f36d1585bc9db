#!/usr/bin/env python3
"""transformers' side of the generation benchmark (crates/sweetspot-model/benches/generate.rs):
SmolLM2-135M-Instruct from the same Q4_1 GGUF (dequantized to f32), the same chat prompt,
batch 1 and 16, 128 new tokens (min_new_tokens=128), greedy, on the CPU with as many threads as
the machine has cores.

    python3 scripts/bench_generate_transformers.py
"""

import os
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW = 128


def main():
    torch.set_num_threads(os.cpu_count())
    tok = AutoTokenizer.from_pretrained(DIR, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=GGUF, dtype=torch.float32).eval()
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a bottle."}],
        tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                       pad_token_id=tok.pad_token_id)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| batch | prompt tokens | new tokens | seconds | tokens/s |")
    print("|---:|---:|---:|---:|---:|")
    for b in (1, 16):
        x = ids.repeat(b, 1)
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW,
                                 min_new_tokens=NEW, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        s = time.perf_counter() - t
        n = (out.shape[1] - x.shape[1]) * b
        print(f"| {b} | {x.shape[1]} | {n} | {s:.2f} | {n / s:.1f} |")


if __name__ == "__main__":
    main()
