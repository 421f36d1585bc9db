#!/usr/bin/env python3
"""Records the `judge` reward of SmolLM2-135M-Instruct as transformers computes it.

Needs torch, transformers and gguf, and the GGUF from `scripts/fetch_smollm2.sh`. Run from the
repository root:

    python3 scripts/judge_reference.py > tests/fixtures/judge_reference.json

For each (prompt, response) the grading prompt is the judge's default template (copied below;
the Rust test checks it equals the plugin's) with `{prompt}` and `{response}` filled in, sent as
one user turn through the model's chat template with `add_generation_prompt=True`. The reward is
log P("Yes") - log P("No") for the next token, from log_softmax of transformers' f32 logits.
"""

import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")

TEMPLATE = ("Here is a request and a response to it.\n\n"
            "[Request]\n{prompt}\n\n[Response]\n{response}\n\n"
            "Is the response helpful, correct and appropriate? Answer Yes or No.")

CASES = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of France?", "Bananas are yellow and grow on trees."),
    ("Name a prime number.", "7"),
    ("Name a prime number.", "8 is a prime number."),
]


def main():
    tok = AutoTokenizer.from_pretrained(DIR, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=GGUF, torch_dtype=torch.float32)
    model.eval()
    yes = tok("Yes", add_special_tokens=False)["input_ids"]
    no = tok("No", add_special_tokens=False)["input_ids"]
    assert len(yes) == 1 and len(no) == 1
    rows = []
    for prompt, response in CASES:
        text = TEMPLATE.replace("{prompt}", prompt).replace("{response}", response)
        rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        logp = torch.log_softmax(logits, dim=-1)
        rows.append({"prompt": prompt, "response": response, "input_ids": ids,
                     "reward": (logp[yes[0]] - logp[no[0]]).item()})
    json.dump({"gguf": GGUF, "transformers": transformers.__version__, "torch": torch.__version__,
               "template": TEMPLATE, "yes": yes[0], "no": no[0], "cases": rows},
              sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
