#!/usr/bin/env python3
"""transformers' side of the n-sample generation benchmark (docs/benchmarks.md, throughput issue):
what a transformers user writes to sample n responses per prompt. SmolLM2-135M-Instruct from the
same Q4_1 GGUF as sweetspot (dequantized to f32), the quickstart's first 8 prompts, one prompt at
a time, `generate(num_return_sequences=16, do_sample=True)` at T = 0.8, top-p 1, top-k off, up to
256 new tokens, stopping on the model's end token, on the CPU with as many threads as cores.
A sample's tokens are counted up to and with its end token, as sweetspot counts them.

    python3 scripts/bench_nsample_transformers.py [PROMPTS] [N] [MAX_NEW]

DTYPE=bf16 in the environment runs the model in bfloat16 (`dtype=torch.bfloat16`, what a
transformers user passes for bf16 inference), as `sweetspot generate --dtype bf16` does.

The sweetspot side, the same work in one command:

    sweetspot generate -m models/SmolLM2-135M-Instruct.Q4_1.gguf -p PROMPTS -o out.jsonl \
        -n 16 --temperature 0.8 --max-new-tokens 256 --batch-size 16 --seed 3
"""

import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIR = os.path.join(ROOT, "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main():
    prompts_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        ROOT, "examples/quickstart/prompts.jsonl")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    max_new = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    with open(prompts_path) as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()][:8]
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(3)
    tok = AutoTokenizer.from_pretrained(DIR, gguf_file=GGUF)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[os.environ.get("DTYPE", "f32")]
    model = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=GGUF, dtype=dtype).eval()
    eos = tok.eos_token_id
    t = time.perf_counter()
    tokens = 0
    lengths = []
    for p in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=0.8, top_p=1.0, top_k=0, max_new_tokens=max_new,
                                 num_return_sequences=n, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                                 else eos)
        for row in out[:, ids.shape[1]:].tolist():
            k = row.index(eos) + 1 if eos in row else len(row)
            lengths.append(k)
            tokens += k
    s = time.perf_counter() - t
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {dtype}")
    print(f"{len(prompts)} prompts x {n} samples: {tokens} tokens ({min(lengths)} to "
          f"{max(lengths)} per sample) in {s:.1f} s: {tokens / s:.1f} tokens/s")


if __name__ == "__main__":
    main()
