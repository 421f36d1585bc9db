#!/usr/bin/env python3
"""llama.cpp's side of the n-sample generation benchmark (docs/benchmarks.md, throughput issue),
through llama-cpp-python: the same Q4_1 GGUF used as it is (its quantized weights, llama.cpp's
own kernels), the quickstart's first 8 prompts, n samples each, one sequence at a time (what
`Llama.create_chat_completion` does), T = 0.8 with every other sampler off (top-p 1, top-k off,
min-p 0, no repetition penalty: llama-cpp-python's defaults differ), up to 256 new tokens,
stopping on the model's end token, on as many threads as cores. A sample's tokens are counted
up to and with its end token, as sweetspot counts them.

    pip install llama-cpp-python   # builds llama.cpp from source where no wheel fits
    python3 scripts/bench_nsample_llamacpp.py [PROMPTS] [N] [MAX_NEW]
"""

import json
import os
import sys
import time

from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def main():
    prompts_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        ROOT, "examples/quickstart/prompts.jsonl")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    max_new = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    with open(prompts_path) as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()][:8]
    threads = os.cpu_count()
    llm = Llama(model_path=GGUF, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                seed=3, verbose=False)
    t = time.perf_counter()
    tokens = 0
    lengths = []
    for p in prompts:
        for i in range(n):
            out = llm.create_chat_completion(
                messages=[{"role": "user", "content": p}], temperature=0.8, top_p=1.0,
                top_k=0, min_p=0.0, repeat_penalty=1.0, max_tokens=max_new, seed=3 + i)
            # completion_tokens excludes the end token; count it as sweetspot does.
            k = out["usage"]["completion_tokens"]
            k += 1 if out["choices"][0]["finish_reason"] == "stop" else 0
            lengths.append(k)
            tokens += k
    s = time.perf_counter() - t
    print(f"llama-cpp-python, threads {threads}")
    print(f"{len(prompts)} prompts x {n} samples: {tokens} tokens ({min(lengths)} to "
          f"{max(lengths)} per sample) in {s:.1f} s: {tokens / s:.1f} tokens/s")


if __name__ == "__main__":
    main()
