#!/usr/bin/env python3
"""Checks a policy exported by `sweetspot train` against transformers: loads it with
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`, generates greedily for
every prompt of a samples file written by `sweetspot generate --temperature 0`, and compares the
token ids with sweetspot's (re-encoded from its `response`) and the texts.

    python3 scripts/check_export.py RUN/policy samples.jsonl

Exits 1 on any difference.
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    policy, samples = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    bad = 0
    rows = [json.loads(line) for line in open(samples)]
    for r in rows:
        prompt = r["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        n = r["token_count"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=n, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        new = out[0, len(ids):].tolist()
        got = tok.decode(new, skip_special_tokens=True)
        same = got == r["response"]
        bad += not same
        print(f"{r['prompt_id']}: {'same' if same else 'DIFFERENT'} ({len(new)} tokens) {got!r}")
    print(f"{len(rows) - bad} of {len(rows)} greedy continuations equal")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
