#!/usr/bin/env python3
"""Writes tiny random-weight Qwen2 and Qwen3 fixtures, and fixtures of the RoPE scaling types
beyond Llama-3.1's, with transformers' reference outputs.

The families beyond Llama/Mistral, made with transformers' own classes. Needs torch,
transformers, tokenizers and safetensors. Run from the repository root:

    python3 scripts/make_family_fixtures.py

Causal LMs, in the layout of scripts/make_model_fixtures.py (config.json, model.safetensors,
reference.safetensors with `logits_<i>` and `padded_logits`, reference.json with the prompts and
greedy continuations):

- tests/fixtures/models/qwen2: `Qwen2ForCausalLM` (biases on q/k/v, none on o_proj; 4 query
  heads over 2 key/value heads, untied). Its config.json carries what released Qwen2.5 configs
  carry: a `sliding_window` (here 4, small enough to change every logit were it applied) with
  `use_sliding_window: false` and `max_window_layers`, which transformers reads as "no window".
  The references are computed by a model transformers loads back from that very folder.
- tests/fixtures/models/qwen3: `Qwen3ForCausalLM` (per-head RMSNorm of queries and keys before
  RoPE; head_dim 32 while hidden_size / heads is 16; tied embeddings, as the small Qwen3 models).

RoPE scaling types, same layout:

- tests/fixtures/models/rope-linear: Llama, `rope_parameters` `linear`, factor 4.
- tests/fixtures/models/rope-dynamic: Llama, `dynamic` (NTK), factor 4, max_position_embeddings
  32 (prompt and greedy tokens stay below it: transformers then uses the default frequencies).
- tests/fixtures/models/rope-yarn: Qwen3 with YaRN written the way Qwen's model cards say to
  enable it, the legacy `rope_scaling` table with `type` (factor 4,
  original_max_position_embeddings 64, rope_theta 10000 beside it), so the correction range
  covers a few dimensions and the attention factor (0.1 ln 4 + 1) scales every logit.

Sequence-classification reward models, in the layout of scripts/make_reward_fixtures.py (whose
tokenizer and conversations they share; reference.json holds each conversation's ids and score
and the scores of one right-padded batch):

- tests/fixtures/models/qwen2-seq-cls: `Qwen2ForSequenceClassification`, one label.
- tests/fixtures/models/qwen3-seq-cls: `Qwen3ForSequenceClassification`, one label (the
  architecture of Skywork-Reward-V2's Qwen3 models).
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification,
                          Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reward_fixtures as rf  # noqa: E402
from half_reference import padded  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "models")

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

PROMPT_LENGTHS = [7, 12, 3]
NEW_TOKENS = 8


def causal(name, cls, cfg, seed, edit_config=None):
    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"
    model = cls(cfg).eval()
    rf.randomize(model)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    model.config.save_pretrained(d)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    if edit_config:
        path = os.path.join(d, "config.json")
        with open(path) as f:
            c = json.load(f)
        edit_config(c)
        with open(path, "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
    # The references come from what transformers makes of the folder as written.
    model = cls.from_pretrained(d, attn_implementation="eager").eval()

    g = torch.Generator().manual_seed(seed + 7)
    prompts = [torch.randint(3, 256, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]
    ref, greedy = {}, []
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            x = torch.tensor([ids])
            ref[f"logits_{i}"] = model(x).logits[0].contiguous()
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS,
                                 do_sample=False, eos_token_id=None, pad_token_id=0)
            greedy.append(out[0, len(ids):].tolist())
        ids, mask, pos = padded(prompts)
        ref["padded_logits"] = model(ids, attention_mask=mask, position_ids=pos).logits.contiguous()
    save_file(ref, os.path.join(d, "reference.safetensors"))
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump({"prompts": prompts, "greedy": greedy, "new_tokens": NEW_TOKENS, **rf.versions()},
                  f, indent=1)
    print(name, "ok", greedy[0])


def seq_cls(name, cls, config_cls, extra, tok, seed):
    torch.manual_seed(seed)
    common = {k: v for k, v in rf.COMMON.items() if k != "rope_theta"}
    cfg = config_cls(**common, **extra, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, num_labels=1)
    cfg.architectures = [cls.__name__]
    cfg._attn_implementation = "eager"
    model = cls(cfg).eval()
    rf.randomize(model)
    d = os.path.join(OUT, name)
    rf.save(d, model.state_dict(), model.config, tok)
    rows, all_ids = [], []
    with torch.no_grad():
        for conv in rf.CONVERSATIONS:
            ids = rf.chat_ids(tok, conv)
            all_ids.append(ids)
            rows.append({"messages": conv, "ids": ids,
                         "score": model(torch.tensor([ids])).logits[0, 0].item()})
        t = max(len(i) for i in all_ids)
        x = torch.full((len(all_ids), t), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(all_ids), t), dtype=torch.long)
        for r, ids in enumerate(all_ids):
            x[r, :len(ids)] = torch.tensor(ids)
            mask[r, :len(ids)] = 1
        batch = model(x, attention_mask=mask).logits[:, 0].tolist()
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump({"conversations": rows, "right_padded_batch_scores": batch, **rf.versions()}, f,
                  indent=1)
    print(name, "ok", [round(r["score"], 4) for r in rows])


def hub_style_window(c):
    c["sliding_window"] = 4
    c["use_sliding_window"] = False
    c["max_window_layers"] = 1


def legacy_yarn(c):
    theta = c.pop("rope_parameters")["rope_theta"]
    c["rope_theta"] = theta
    c["rope_scaling"] = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}


def main():
    causal("rope-linear", LlamaForCausalLM,
           LlamaConfig(**COMMON, rope_parameters=dict(rope_type="linear", factor=4.0,
                                                      rope_theta=10000.0)), 3010)
    dynamic = dict(COMMON, max_position_embeddings=32)
    causal("rope-dynamic", LlamaForCausalLM,
           LlamaConfig(**dynamic, rope_parameters=dict(rope_type="dynamic", factor=4.0,
                                                       rope_theta=10000.0)), 3011)
    causal("rope-yarn", Qwen3ForCausalLM,
           Qwen3Config(**COMMON, head_dim=16, rope_theta=10000.0), 3012, edit_config=legacy_yarn)
    causal("qwen2", Qwen2ForCausalLM,
           Qwen2Config(**COMMON, tie_word_embeddings=False, rope_theta=1000000.0), 3000,
           edit_config=hub_style_window)
    causal("qwen3", Qwen3ForCausalLM,
           Qwen3Config(**COMMON, head_dim=32, tie_word_embeddings=True, rope_theta=1000000.0),
           3001)
    tok = rf.tokenizer()
    seq_cls("qwen2-seq-cls", Qwen2ForSequenceClassification, Qwen2Config,
            dict(rope_theta=1000000.0), tok, 3002)
    seq_cls("qwen3-seq-cls", Qwen3ForSequenceClassification, Qwen3Config,
            dict(rope_theta=1000000.0, head_dim=32), tok, 3003)


if __name__ == "__main__":
    main()
