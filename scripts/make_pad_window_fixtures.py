#!/usr/bin/env python3
"""Writes the fixtures for two transformers rules sweetspot must follow, and their references.

Needs torch, transformers and safetensors. Run from the repository root:

    python3 scripts/make_pad_window_fixtures.py

- tests/fixtures/models/mistral-window: transformers' `MistralForCausalLM` with
  `sliding_window = 5`, prompts of 13, 9 and 3 tokens (longer than the window) and 8 greedy
  tokens after them: `reference.safetensors` (`logits_<i>` alone, `padded_logits` of the
  left-padded batch) and `reference.json` (prompts, greedy tokens), the layout of
  scripts/make_model_fixtures.py, so the same parity tests read it.
- tests/fixtures/models/seq-cls-pad-eos: `LlamaForSequenceClassification` whose
  `pad_token_id` is `<|eot_id|>`, the token that ends every turn of the Llama-3 template (as in
  reward models trained with TRL with pad = eos). transformers reads the score at the last token
  that is not the pad token, i.e. before the trailing `<|eot_id|>`. `reference.json` holds each
  conversation's ids, that score (`score`), the score read at the very last token as
  transformers reads it with no pad token set (`score_no_pad`), and transformers' scores of the
  right-padded batch.
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForSequenceClassification, MistralConfig, MistralForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reward_fixtures as rf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "models")
PROMPT_LENGTHS = [13, 9, 3]
NEW_TOKENS = 8


def mistral_window():
    torch.manual_seed(3030)
    cfg = MistralConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=256,
                        rope_theta=10000.0, sliding_window=5, tie_word_embeddings=False,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg._attn_implementation = "eager"
    model = MistralForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
            else:
                p.uniform_(0.8, 1.2)
    d = os.path.join(OUT, "mistral-window")
    os.makedirs(d, exist_ok=True)
    model.config.save_pretrained(d)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    g = torch.Generator().manual_seed(31)
    prompts = [torch.randint(3, 256, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]
    ref, greedy = {}, []
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            x = torch.tensor([ids])
            ref[f"logits_{i}"] = model(x).logits[0].contiguous()
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS,
                                 do_sample=False, eos_token_id=None, pad_token_id=0)
            greedy.append(out[0, len(ids):].tolist())
        t = max(PROMPT_LENGTHS)
        ids = torch.zeros((len(prompts), t), dtype=torch.long)
        mask = torch.zeros((len(prompts), t), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, t - len(p):] = torch.tensor(p)
            mask[i, t - len(p):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ref["padded_logits"] = model(ids, attention_mask=mask, position_ids=pos).logits.contiguous()
        # The same model without the window differs (the fixture is sensitive to it).
        full = MistralForCausalLM(MistralConfig(**{**cfg.to_dict(), "sliding_window": None}))
        full.config._attn_implementation = "eager"
        full.load_state_dict(model.state_dict())
        full.eval()
        diff = (full(torch.tensor([prompts[0]])).logits[0] - ref["logits_0"]).abs().max().item()
    save_file(ref, os.path.join(d, "reference.safetensors"))
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump({"prompts": prompts, "greedy": greedy, "new_tokens": NEW_TOKENS,
                   "window_effect_max_abs": diff, **rf.versions()}, f, indent=1)
    print("mistral-window ok", greedy[0], "window changes logits by", round(diff, 4))


def seq_cls_pad_eos(tok):
    torch.manual_seed(2026)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    cfg = LlamaConfig(**rf.COMMON, bos_token_id=tok.bos_token_id, eos_token_id=eot,
                      pad_token_id=eot, num_labels=1)
    cfg.architectures = ["LlamaForSequenceClassification"]
    cfg._attn_implementation = "eager"
    model = LlamaForSequenceClassification(cfg).eval()
    rf.randomize(model)
    d = os.path.join(OUT, "seq-cls-pad-eos")
    rf.save(d, model.state_dict(), model.config, tok)
    rows, all_ids = [], []
    with torch.no_grad():
        for conv in rf.CONVERSATIONS:
            ids = rf.chat_ids(tok, conv)
            assert ids[-1] == eot
            all_ids.append(ids)
            x = torch.tensor([ids])
            score = model(x).logits[0, 0].item()
            model.config.pad_token_id = None
            no_pad = model(x).logits[0, 0].item()
            model.config.pad_token_id = eot
            rows.append({"messages": conv, "ids": ids, "score": score, "score_no_pad": no_pad})
        t = max(len(i) for i in all_ids)
        x = torch.full((len(all_ids), t), eot, dtype=torch.long)
        mask = torch.zeros((len(all_ids), t), dtype=torch.long)
        for r, ids in enumerate(all_ids):
            x[r, :len(ids)] = torch.tensor(ids)
            mask[r, :len(ids)] = 1
        batch = model(x, attention_mask=mask).logits[:, 0].tolist()
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump({"conversations": rows, "right_padded_batch_scores": batch, **rf.versions()}, f,
                  indent=1)
    print("seq-cls-pad-eos ok", [round(r["score"], 4) for r in rows],
          [round(r["score_no_pad"], 4) for r in rows])


def main():
    mistral_window()
    seq_cls_pad_eos(rf.tokenizer())


if __name__ == "__main__":
    main()
