#!/usr/bin/env python3
"""Records transformers' behaviour on SmolLM2-135M-Instruct (Q4_1 GGUF) for sweetspot's tests.

Needs torch, transformers and gguf (`pip install torch transformers gguf`), and the GGUF from
`scripts/fetch_smollm2.sh`. Run from the repository root:

    python3 scripts/smollm2_reference.py > tests/fixtures/smollm2_reference.json

transformers loads the GGUF with `gguf_file=` (dequantizing the weights to f32 and building the
tokenizer from the GGUF metadata). For each chat prompt it records the chat template rendered
with `add_generation_prompt=True`, the prompt's token ids, and the greedy continuation
(`do_sample=False`, 32 new tokens, stopping at the end token). It also records plain encodings of
tricky strings.
"""

import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "List three prime numbers."}],
    [{"role": "user", "content": "Explain gravity to a child in two sentences."}],
]

TEXTS = [
    "Hello, world!",
    "  leading spaces and\ttabs\nnewlines\n\n",
    "Ünïcödé: naïve café — 東京 🚀",
    "numbers 1234567 and 3.14159",
    "<|im_start|>user\nhi<|im_end|>",
    "def f(x):\n    return x ** 2",
]

NEW_TOKENS = 32


def main():
    tok = AutoTokenizer.from_pretrained(DIR, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=GGUF, torch_dtype=torch.float32)
    model.eval()
    chats = []
    for messages in CHATS:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=NEW_TOKENS, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        new = out[0, len(ids):].tolist()
        chats.append({"messages": messages, "rendered": text, "input_ids": ids,
                      "greedy_ids": new, "greedy_text": tok.decode(new, skip_special_tokens=True)})
    encodings = [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in TEXTS]
    json.dump({"gguf": GGUF, "transformers": transformers.__version__, "torch": torch.__version__,
               "new_tokens": NEW_TOKENS, "eos_token_id": tok.eos_token_id,
               "bos_token_id": tok.bos_token_id, "chats": chats, "encodings": encodings},
              sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
