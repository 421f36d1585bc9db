#!/usr/bin/env python3
"""TRL's side of the DPO benchmark (crates/sweetspot-train/benches/dpo.rs), and the pairs both
sides train on.

SmolLM2-135M-Instruct from the Q4_1 GGUF (dequantized to f32) as policy and reference; 8 pairs
per optimizer step (one forward/backward of 16 sequences), each sequence about 256 tokens (a
128-token prompt and a 128-token completion); DPO (sigmoid, beta 0.1), AdamW; reference
log-probabilities precomputed (not timed, as on sweetspot's side, which caches them); CPU, as many
threads as cores. Times 4 optimizer steps after one warm-up step and reports pairs/s and the
process's peak RSS.

    python3 scripts/bench_dpo_trl.py            # writes /tmp/dpo_bench_pairs.jsonl, runs TRL
    cargo bench -p sweetspot-train --bench dpo  # reads the same pairs
"""

import json
import os
import random
import resource
import tempfile
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, TrainerCallback
from trl import DPOConfig, DPOTrainer

DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAIRS = "/tmp/dpo_bench_pairs.jsonl"
N_PAIRS, BATCH, STEPS = 40, 8, 5

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge every "
         "box of liquor and many pilots enjoy fresh bread near old harbors in spring").split()


def text_of(tok, rng, n):
    words = []
    while len(tok(" ".join(words), add_special_tokens=False)["input_ids"]) < n:
        words.append(rng.choice(WORDS))
    return " ".join(words)


class Timer(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self.t)


def main():
    torch.set_num_threads(os.cpu_count())
    tok = AutoTokenizer.from_pretrained(DIR, gguf_file=GGUF)
    rng = random.Random(0)
    rows = []
    for _ in range(N_PAIRS):
        rows.append({"prompt": [{"role": "user", "content": text_of(tok, rng, 110)}],
                     "chosen": [{"role": "assistant", "content": text_of(tok, rng, 126)}],
                     "rejected": [{"role": "assistant", "content": text_of(tok, rng, 126)}]})
    with open(PAIRS, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    # transformers marks a GGUF-loaded model as quantized and refuses to train it: move the same
    # (dequantized f32) weights into a plain model.
    lm = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=GGUF, dtype=torch.float32)
    cfg = lm.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = LlamaForCausalLM(cfg)
    model.load_state_dict(lm.state_dict())
    del lm
    timer = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, per_device_train_batch_size=BATCH, max_steps=STEPS,
                         learning_rate=1e-6, beta=0.1, precompute_ref_log_probs=True,
                         logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                         bf16=False, fp16=False, disable_dropout=True, max_length=None,
                         dataloader_drop_last=True)
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tok, callbacks=[timer])
        lens = [len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in trainer.train_dataset]
        trainer.train()
    steps = timer.times[1:]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"mean sequence {sum(lens) / len(lens):.0f} tokens")
    print("| step | seconds | pairs/s |")
    print("|---:|---:|---:|")
    for i, s in enumerate(steps, 2):
        print(f"| {i} | {s:.2f} | {BATCH / s:.2f} |")
    print(f"mean pairs/s {BATCH * len(steps) / sum(steps):.2f}, peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
