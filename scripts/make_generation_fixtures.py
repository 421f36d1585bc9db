#!/usr/bin/env python3
"""Fixtures for a model's generation_config.json and the logit processors it sets.

Needs torch, transformers and tokenizers. Run from the repository root:

    python3 scripts/make_generation_fixtures.py

1. tests/fixtures/models/qwen25-genconfig: a tiny random `Qwen2ForCausalLM` laid out as a
   Qwen2.5 instruct model is: a byte-level BPE tokenizer whose special tokens `<|endoftext|>`,
   `<|im_start|>`, `<|im_end|>` come after the merges, a ChatML chat template, `config.json` with
   `eos_token_id` = `<|im_end|>` only, and `generation_config.json` as Qwen2.5-Instruct ships it:
   `eos_token_id` [`<|im_end|>`, `<|endoftext|>`], temperature 0.7, top_p 0.8, top_k 20,
   repetition_penalty 1.05. The weights are permuted (embedding and output rows of two tokens
   swapped, which relabels the model's choices and nothing else) so that greedy decoding reaches
   `<|endoftext|>` after a few tokens: transformers then stops there, because it reads
   generation_config.json, while a reader of config.json alone runs on.
   reference.json: the prompt's ids, transformers' greedy tokens with the folder's generation
   config (stopping at `<|endoftext|>`, with its repetition penalty), greedy without the
   generation config's penalty (as `generation_config = "vllm"` samples: the end tokens stay),
   and greedy with a strong penalty (1.5) to pin the processor's effect.
2. tests/fixtures/processors.json: rows of random logits with a token history, and for each
   setting (temperature, top_k, top_p, min_p, repetition_penalty) the probabilities transformers'
   processors (RepetitionPenaltyLogitsProcessor, then TemperatureLogitsWarper, TopKLogitsWarper,
   TopPLogitsWarper, MinPLogitsWarper, in GenerationMixin's order) leave after a softmax.
"""

import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    MinPLogitsWarper,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "models", "qwen25-genconfig")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Preference data: sample n responses, score them, pick a pair.",
    "What is the capital of France? Paris is the capital of France.",
    "Write a haiku about the sea. Waves fold into foam.",
    "Explain DPO in one sentence. It trains a policy on pairs directly.",
] * 4

CHATML = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

GREEDY_TOKENS = 12


def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    # As in Qwen2.5: the special tokens follow the merges.
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def prompt_ids(tok, messages):
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def greedy(model, ids, **kw):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=GREEDY_TOKENS, **kw)
    return out[0, len(ids):].tolist()


def random_model(tok, eot, im_end):
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=eot,
                      eos_token_id=im_end, pad_token_id=eot)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.8, 1.2)
            elif p.dim() == 2:
                p.normal_(0.0, 0.08)
            else:
                p.normal_(0.0, 0.1)
    return model


def swap_rows(model, a, b):
    with torch.no_grad():
        for w in (model.model.embed_tokens.weight, model.lm_head.weight):
            w[[a, b]] = w[[b, a]]


def main():
    tok = tokenizer()
    eot, im_start, im_end = (tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    gen = GenerationConfig(bos_token_id=eot, pad_token_id=eot, do_sample=True,
                           eos_token_id=[im_end, eot], repetition_penalty=1.05,
                           temperature=0.7, top_p=0.8, top_k=20)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = prompt_ids(tok, messages)
    specials = {eot, im_start, im_end}
    # The first seed whose free-running greedy continuation (with the file's repetition penalty
    # and no end token) has a new token (not in the prompt, not special, not seen before) at step
    # 3 or later: that token is relabelled as <|endoftext|>.
    for seed in range(100):
        torch.manual_seed(seed)
        model = random_model(tok, eot, im_end)
        free = greedy(model, ids, eos_token_id=None, repetition_penalty=1.05)
        step = next((i for i, t in enumerate(free) if i >= 3 and t not in ids and t not in specials
                     and t not in free[:i]), None)
        if step is not None:
            break
    swap_rows(model, free[step], eot)
    model.generation_config = gen
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT)
    tok.save_pretrained(OUT)
    gen.save_pretrained(OUT)
    # Reload from the folder, as a user would, and record what transformers does.
    model = Qwen2ForCausalLM.from_pretrained(OUT).eval()
    with_file = greedy(model, ids)
    assert with_file[-1] == eot and len(with_file) == step + 1, (with_file, step)
    no_penalty = greedy(model, ids, repetition_penalty=1.0)
    strong = greedy(model, ids, repetition_penalty=1.5, eos_token_id=None)
    plain = greedy(model, ids, repetition_penalty=1.0, eos_token_id=None)
    assert strong != plain, "the strong penalty changes nothing: pick another seed"
    ref = {
        "messages": messages,
        "prompt_ids": ids,
        "endoftext": eot,
        "im_end": im_end,
        "greedy_generation_config": with_file,
        "greedy_no_penalty": no_penalty,
        "greedy_penalty_1_5_no_stop": strong,
        "greedy_no_penalty_no_stop": plain,
        "max_new_tokens": GREEDY_TOKENS,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    for name in os.listdir(OUT):
        print(name)

    # 2. The processors.
    g = torch.Generator().manual_seed(3)
    rows = []
    vocab = 40
    settings = [
        dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.3),
        dict(temperature=0.7, top_k=0, top_p=1.0, min_p=0.1, repetition_penalty=1.0),
        dict(temperature=1.3, top_k=0, top_p=1.0, min_p=0.05, repetition_penalty=1.0),
        dict(temperature=0.7, top_k=20, top_p=0.8, min_p=0.0, repetition_penalty=1.05),
        dict(temperature=0.9, top_k=10, top_p=0.9, min_p=0.2, repetition_penalty=1.2),
        dict(temperature=1.0, top_k=0, top_p=0.6, min_p=0.3, repetition_penalty=0.8),
        dict(temperature=0.5, top_k=5, top_p=1.0, min_p=0.5, repetition_penalty=2.0),
    ]
    for case in range(14):
        logits = (torch.randn(vocab, generator=g) * 3.0).float()
        history = torch.randint(0, vocab, (8,), generator=g).tolist()
        s = settings[case % len(settings)]
        procs = LogitsProcessorList()
        if s["repetition_penalty"] != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(s["repetition_penalty"]))
        if s["temperature"] != 1.0:
            procs.append(TemperatureLogitsWarper(s["temperature"]))
        if s["top_k"] != 0:
            procs.append(TopKLogitsWarper(s["top_k"]))
        if s["top_p"] < 1.0:
            procs.append(TopPLogitsWarper(s["top_p"]))
        if s["min_p"] > 0.0:
            procs.append(MinPLogitsWarper(s["min_p"]))
        scores = procs(torch.tensor([history]), logits.clone()[None, :])
        probs = torch.softmax(scores, dim=-1)[0]
        rows.append({"settings": s, "logits": logits.tolist(), "history": history,
                     "probs": probs.tolist()})
    with open(os.path.join(ROOT, "tests", "fixtures", "processors.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "cases": rows}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
