#!/usr/bin/env python3
"""transformers' side of the reward-model benchmark (crates/sweetspot-model/benches/reward.rs):
`LlamaForSequenceClassification` (one label) with SmolLM2-135M-Instruct's configuration and
backbone weights from the same Q4_1 GGUF (dequantized to f32), a forward pass over batches of
16 sequences of 512 tokens under `torch.no_grad()`, on the CPU with as many threads as the machine
has cores, in transformers' default attention implementation (sdpa).

    python3 scripts/bench_reward_transformers.py
    python3 scripts/bench_reward_transformers.py SAMPLES.jsonl

With a samples file (lines with "prompt" and "response"): the realistic mix instead, each
(prompt, response) through the tokenizer's chat template as a user and an assistant turn, scored
as a transformers user batches them: 16 at a time in file order, padded to the longest of each
batch (right padding with an attention mask).

ROUNDS in the environment sets the rounds (default 3), as the Rust bench's
SWEETSPOT_BENCH_ROUNDS. DTYPE=bf16 runs the model in bfloat16 (as the Rust bench's
SWEETSPOT_BENCH_DTYPE=bf16; transformers' head then computes in bf16 too).
"""

import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForSequenceClassification

DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BATCH, TOKENS = 16, 512
ROUNDS = int(os.environ.get("ROUNDS", "3"))


def main():
    torch.set_num_threads(os.cpu_count())
    lm = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=GGUF, dtype=torch.float32)
    cfg = lm.config
    cfg.num_labels = 1
    model = LlamaForSequenceClassification(cfg).eval()
    model.model.load_state_dict(lm.model.state_dict())
    del lm
    if os.environ.get("DTYPE", "f32") == "bf16":
        model = model.to(torch.bfloat16)
    if len(sys.argv) > 1:
        return mix(model, sys.argv[1])
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (BATCH, TOKENS), generator=g)
    mask = torch.ones_like(x)
    with torch.no_grad():
        model(x[:2], attention_mask=mask[:2])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"attention {model.config._attn_implementation}, {model.dtype}")
    print("| batch x tokens | round | seconds | samples/s | tokens/s |")
    print("|---|---:|---:|---:|---:|")
    for r in range(1, ROUNDS + 1):
        t = time.perf_counter()
        with torch.no_grad():
            out = model(x, attention_mask=mask).logits
        s = time.perf_counter() - t
        assert out.shape == (BATCH, 1)
        print(f"| {BATCH} x {TOKENS} | {r} | {s:.2f} | {BATCH / s:.2f} | {BATCH * TOKENS / s:.0f} |")


def mix(model, path):
    tok = AutoTokenizer.from_pretrained(DIR, gguf_file=GGUF)
    seqs = []
    with open(path) as f:
        for line in f:
            if line.strip():
                v = json.loads(line)
                msgs = [{"role": "user", "content": v["prompt"]},
                        {"role": "assistant", "content": v["response"]}]
                text = tok.apply_chat_template(msgs, tokenize=False)
                seqs.append(tok(text, add_special_tokens=False)["input_ids"])
    tokens = sum(len(s) for s in seqs)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"attention {model.config._attn_implementation}, {model.dtype}")
    print(f"{len(seqs)} sequences, {tokens} tokens, longest {max(len(s) for s in seqs)}")
    print("| workload | round | seconds | samples/s | tokens/s |")
    print("|---|---:|---:|---:|---:|")
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    model.config.pad_token_id = pad
    for r in range(1, ROUNDS + 1):
        t = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(seqs), BATCH):
                batch = seqs[i:i + BATCH]
                n = max(len(s) for s in batch)
                x = torch.tensor([s + [pad] * (n - len(s)) for s in batch])
                mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in batch])
                out = model(x, attention_mask=mask).logits
                assert out.shape == (len(batch), 1)
        s = time.perf_counter() - t
        print(f"| mix | {r} | {s:.2f} | {len(seqs) / s:.2f} | {tokens / s:.0f} |")


if __name__ == "__main__":
    main()
