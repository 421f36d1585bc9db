#!/usr/bin/env python3
"""Writes tiny random-weight Llama-family fixtures and transformers' reference outputs.

Needs torch, transformers and safetensors (`pip install torch transformers safetensors`).
Run from the repository root:

    python3 scripts/make_model_fixtures.py

For each model in tests/fixtures/models/<name>/ it writes config.json, model.safetensors (f32),
and reference.safetensors + reference.json:

- `logits_<i>`: transformers' logits [T_i, vocab] for prompt i alone (no padding);
- `padded_logits`: logits [B, T_max, vocab] of the left-padded batch of all prompts, with the
  attention mask and position ids transformers' generate uses (positions count real tokens);
- reference.json: the prompts' token ids, and each prompt's greedy continuation
  (`generate(do_sample=False)`, no end token) of `new_tokens` tokens.

`gqa-sharded` holds the `gqa` weights as transformers' `save_pretrained(max_shard_size=...)`
writes them (model.safetensors.index.json and shards).

The models: `gqa` (4 query heads over 2 key/value heads, untied), `tied` (tied embeddings,
multi-head), `llama31` (Llama-3.1 rope scaling, GQA). Hidden size 64, 2 layers, vocab 256.
"""

import json
import os

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "models")

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    rms_norm_eps=1e-5,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

MODELS = {
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                rope_theta=10000.0),
    "tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                 rope_theta=10000.0),
    "llama31": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
                    rope_theta=500000.0,
                    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                      high_freq_factor=4.0,
                                      original_max_position_embeddings=32)),
}

PROMPT_LENGTHS = [7, 12, 3]
NEW_TOKENS = 8


def main():
    for seed, (name, extra) in enumerate(MODELS.items()):
        torch.manual_seed(1000 + seed)
        cfg = LlamaConfig(**COMMON, **extra)
        cfg._attn_implementation = "eager"
        model = LlamaForCausalLM(cfg).eval()
        # Larger-than-default init so the tiny model's logits are well separated.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.08)
                else:
                    p.uniform_(0.8, 1.2)
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        model.config.save_pretrained(d)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if cfg.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})

        g = torch.Generator().manual_seed(7 + seed)
        prompts = [torch.randint(3, 256, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]
        ref = {}
        greedy = []
        with torch.no_grad():
            for i, ids in enumerate(prompts):
                x = torch.tensor([ids])
                ref[f"logits_{i}"] = model(x).logits[0].contiguous()
                out = model.generate(x, attention_mask=torch.ones_like(x),
                                     max_new_tokens=NEW_TOKENS, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)
                greedy.append(out[0, len(ids):].tolist())
            # the left-padded batch
            t = max(PROMPT_LENGTHS)
            ids = torch.zeros((len(prompts), t), dtype=torch.long)
            mask = torch.zeros((len(prompts), t), dtype=torch.long)
            for i, p in enumerate(prompts):
                ids[i, t - len(p):] = torch.tensor(p)
                mask[i, t - len(p):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            ref["padded_logits"] = model(ids, attention_mask=mask,
                                         position_ids=pos).logits.contiguous()
        save_file(ref, os.path.join(d, "reference.safetensors"))
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump({"prompts": prompts, "greedy": greedy, "new_tokens": NEW_TOKENS,
                       "transformers": __import__("transformers").__version__,
                       "torch": torch.__version__}, f, indent=1)
        print(name, "ok", [len(p) for p in prompts], greedy[0])
        if name == "gqa":
            # The same weights, sharded as transformers shards them (index + several files).
            sharded = os.path.join(OUT, "gqa-sharded")
            model.save_pretrained(sharded, max_shard_size="100KB", safe_serialization=True)
            print("gqa-sharded", sorted(os.listdir(sharded)))


if __name__ == "__main__":
    main()
