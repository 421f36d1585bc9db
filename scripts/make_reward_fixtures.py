#!/usr/bin/env python3
"""Writes tiny random-weight reward-model fixtures and their reference scores.

The reward-model part of the model fixtures (scripts/make_model_fixtures.py writes the causal
LMs). Needs torch, transformers, tokenizers and safetensors. Run from the repository root:

    python3 scripts/make_reward_fixtures.py

Both models share one tiny tokenizer: a byte-level BPE trained here on a few sentences, with
Llama-3's special tokens (`<|begin_of_text|>`, `<|start_header_id|>`, `<|end_header_id|>`,
`<|eot_id|>`), a post-processor that prepends `<|begin_of_text|>` (as Llama-3's does, which is
what makes double-BOS bugs possible) and Llama-3-Instruct's chat template.

- tests/fixtures/models/armorm: `LlamaForRewardModelWithGating` as RLHFlow published it for
  ArmoRM-Llama3-8B-v0.1, re-written below on top of transformers' `LlamaModel` (19 objectives, a
  gating network of 3 hidden ReLU layers, temperature 10, a learned `logit_scale`, and a random,
  not identity, `reward_transform_matrix`). The gating network reads the hidden state at the last
  occurrence of `<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n` (here its ids in
  this tokenizer), the regression layer the last token.
- tests/fixtures/models/seq-cls: transformers' `LlamaForSequenceClassification`, one label
  (Skywork-Reward's architecture).

Each folder gets config.json, model.safetensors, tokenizer.json, tokenizer_config.json and
reference.json: per conversation the token ids transformers' `apply_chat_template` gives, the
gating position (armorm), the 19 objective rewards, the gating weights and the score; for
seq-cls also the scores of one right-padded batch as transformers computes it.
"""

import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (LlamaConfig, LlamaForSequenceClassification, LlamaModel,
                          PreTrainedTokenizerFast)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "models")

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
           "<|eot_id|>", "<|pad|>"]

# Llama-3-8B-Instruct's chat template.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

CORPUS = [
    "The assistant answers the user's question in a few words.",
    "user\n\nWhat is the capital of France?\n\nassistant\n\nParis is the capital of France.",
    "Rewards are read at the last token; the gating network reads the end of the prompt.",
    "A quick brown fox jumps over the lazy dog. 12345 + 678 = 13023.",
    "system\n\nYou are a helpful assistant.\n\n",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "It is Paris, the largest city of France, on the Seine."}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Add 12345 and 678."},
     {"role": "assistant", "content": "13023"}],
    [{"role": "user", "content": "Say hi."},
     {"role": "assistant", "content": "Hi! A quick brown fox says hello to the lazy dog."}],
    [{"role": "user", "content": "Tell me a fact."},
     {"role": "assistant", "content": "Foxes are quick."},
     {"role": "user", "content": "Another one?"},
     {"role": "assistant", "content": "Dogs can be lazy, or not at all."}],
]

GATING_PATTERN = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"

COMMON = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    max_position_embeddings=256,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)


def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=COMMON["vocab_size"], special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
        special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>", pad_token="<|pad|>")
    fast.chat_template = LLAMA3_TEMPLATE
    return fast


def chat_ids(tok, messages):
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    bos = tok.bos_token_id
    assert ids[0] == bos and ids[1] != bos, "expected exactly one BOS"
    return list(ids)


class GatingNetwork(nn.Module):
    """ArmoRM's gating network: n_hidden ReLU layers, a linear to the objectives, then
    softmax(x / temperature) times a learned scale."""

    def __init__(self, in_features, out_features, temperature, hidden_dim, n_hidden):
        super().__init__()
        self.temperature = temperature
        self.logit_scale = nn.Parameter(torch.ones(1))
        layers = []
        for _ in range(n_hidden):
            layers.append(nn.Linear(in_features, hidden_dim))
            in_features = hidden_dim
        layers.append(nn.Linear(in_features, out_features, bias=True))
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        x = F.softmax(x / self.temperature, dim=1)
        return x * self.logit_scale[0]


class ArmoRM(nn.Module):
    """LlamaForRewardModelWithGating's forward for one unpadded sequence at a time."""

    def __init__(self, config, pattern):
        super().__init__()
        self.model = LlamaModel(config)
        n = config.num_objectives
        self.regression_layer = nn.Linear(config.hidden_size, n, bias=False)
        self.reward_transform_matrix = nn.Parameter(torch.eye(n), requires_grad=False)
        self.gating = GatingNetwork(config.hidden_size, n, config.gating_temperature,
                                    config.gating_hidden_dim, config.gating_n_hidden)
        self.pattern = pattern

    def gating_position(self, ids):
        k = len(self.pattern)
        for j in range(len(ids) - k, -1, -1):
            if ids[j:j + k] == self.pattern:
                return j
        raise ValueError("Token pattern not found in the list.")

    def forward(self, ids):
        x = torch.tensor([ids])
        hidden = self.model(x).last_hidden_state[0]
        rewards = self.regression_layer(hidden[-1:])
        pos = self.gating_position(ids)
        gating = self.gating(hidden[pos:pos + 1])
        score = torch.sum(gating * (rewards @ self.reward_transform_matrix), dim=1)
        return pos, rewards[0], gating[0], score[0]


def randomize(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or name.endswith("norm.weight"):
                p.uniform_(0.8, 1.2)
            elif p.dim() == 2:
                p.normal_(0.0, 0.08)
            else:
                p.normal_(0.0, 0.1)


def save(d, model_state, config, tok):
    os.makedirs(d, exist_ok=True)
    config.save_pretrained(d)
    tok.save_pretrained(d)
    state = {k: v.contiguous() for k, v in model_state.items()}
    save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})


def versions():
    import transformers
    return {"transformers": transformers.__version__, "torch": torch.__version__}


def armorm(tok):
    torch.manual_seed(2024)
    pad = tok.pad_token_id
    cfg = LlamaConfig(**COMMON, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=pad)
    cfg.architectures = ["LlamaForRewardModelWithGating"]
    cfg.num_objectives = 19
    cfg.gating_temperature = 10
    cfg.gating_hidden_dim = 32
    cfg.gating_n_hidden = 3
    cfg._attn_implementation = "eager"
    pattern = tok.encode(GATING_PATTERN, add_special_tokens=False)
    model = ArmoRM(cfg, pattern).eval()
    randomize(model)
    with torch.no_grad():
        model.gating.logit_scale.fill_(1.7)
        # Large enough that the softmax at temperature 10 is far from uniform.
        for layer in model.gating.layers:
            layer.weight.normal_(0.0, 0.35)
        model.reward_transform_matrix.copy_(torch.eye(19) + 0.3 * torch.randn(19, 19))
    d = os.path.join(OUT, "armorm")
    save(d, model.state_dict(), cfg, tok)
    rows = []
    with torch.no_grad():
        for conv in CONVERSATIONS:
            ids = chat_ids(tok, conv)
            pos, rewards, gating, score = model(ids)
            rows.append({"messages": conv, "ids": ids, "gating_position": pos,
                         "rewards": rewards.tolist(), "gating": gating.tolist(),
                         "score": score.item()})
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump({"gating_pattern_ids": pattern, "conversations": rows, **versions()}, f,
                  indent=1)
    print("armorm ok", [r["gating_position"] for r in rows], [round(r["score"], 4) for r in rows])


def seq_cls(tok):
    torch.manual_seed(2025)
    pad = tok.pad_token_id
    cfg = LlamaConfig(**COMMON, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=pad, num_labels=1)
    cfg.architectures = ["LlamaForSequenceClassification"]
    cfg._attn_implementation = "eager"
    model = LlamaForSequenceClassification(cfg).eval()
    randomize(model)
    d = os.path.join(OUT, "seq-cls")
    save(d, model.state_dict(), model.config, tok)
    rows = []
    all_ids = []
    with torch.no_grad():
        for conv in CONVERSATIONS:
            ids = chat_ids(tok, conv)
            all_ids.append(ids)
            score = model(torch.tensor([ids])).logits[0, 0].item()
            rows.append({"messages": conv, "ids": ids, "score": score})
        # transformers' own right-padded batch (last non-pad token per row).
        t = max(len(i) for i in all_ids)
        x = torch.full((len(all_ids), t), pad, dtype=torch.long)
        mask = torch.zeros((len(all_ids), t), dtype=torch.long)
        for r, ids in enumerate(all_ids):
            x[r, :len(ids)] = torch.tensor(ids)
            mask[r, :len(ids)] = 1
        batch = model(x, attention_mask=mask).logits[:, 0].tolist()
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump({"conversations": rows, "right_padded_batch_scores": batch, **versions()}, f,
                  indent=1)
    print("seq-cls ok", [round(r["score"], 4) for r in rows], [round(s, 4) for s in batch])


def main():
    tok = tokenizer()
    armorm(tok)
    seq_cls(tok)


if __name__ == "__main__":
    main()
