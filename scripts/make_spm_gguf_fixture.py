#!/usr/bin/env python3
"""Writes tests/fixtures/spm.gguf, a tiny Llama-architecture GGUF with a SentencePiece (`llama`)
tokenizer, as Mistral and Llama-2 GGUFs have, and tests/fixtures/spm_reference.json: what
transformers' GGUF loader makes of it.

Needs torch, transformers, sentencepiece, gguf (gguf-py) and numpy. Run from the repository root:

    python3 scripts/make_spm_gguf_fixture.py

- The tokenizer: a SentencePiece BPE model with byte fallback (Llama-2/Mistral's kind) trained
  here on a small corpus, with `<think>` as a user-defined symbol; its pieces, scores and types go
  into the GGUF metadata the way llama.cpp's converter writes them (no merges: the loader
  derives them from the scores), with `add_bos_token`, `add_space_prefix` and a Mistral-style
  chat template.
- The model: a random-weight `LlamaForCausalLM` (hidden 64, 2 layers, GQA 4/2) written as f32
  tensors under llama.cpp's names, q and k rows permuted as llama.cpp's converter permutes them.
- The reference: for every line of the test corpus (ASCII, accents, CJK, emoji, digits, runs of
  spaces, newlines, the special tokens written inline, text after a special token), the ids of
  `AutoTokenizer.from_pretrained(..., gguf_file=...)` with and without special tokens; the
  rendered chat template of one conversation; and the logits of
  `AutoModelForCausalLM.from_pretrained(..., gguf_file=...)` for one prompt.
"""

import json
import os
import sys
import tempfile

import numpy as np
import sentencepiece as spm
import torch
import transformers
from gguf import GGUFWriter, TokenType
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_family_gguf_fixtures import add_tensors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")

TRAIN = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "What is the capital of France? Answer in one word.",
    "Numbers: 12345 + 678 = 13023, and 3.14159 is close to pi.",
    "A helpful assistant answers questions briefly and politely.",
    "Café, naïve, résumé: accents are common in French words.",
    "def add(a, b):\n    return a + b\n",
    "I think, therefore I am. Let me think about it step by step.",
] * 20

CORPUS = [
    "Hello world",
    " leading space",
    "  two leading spaces and  double  inside",
    "trailing space ",
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé",
    "日本語のテキスト",
    "emoji 🙂 and ✓",
    "12345 + 678 = 13023",
    "line one\nline two\n\nline four",
    "tabs\tand\ttabs",
    "<s>inline bos</s> and text",
    "[INST] a chat turn [/INST]",
    "before<think>reasoning</think>after",
    "an <unk> inline",
    "zzzzqqqxxj unseen letters",
    "",
]

TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def train_sentencepiece(tmp):
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(TRAIN))
    prefix = os.path.join(tmp, "spm")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, user_defined_symbols=["<think>", "</think>",
                                                                           "[INST]", "[/INST]"],
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", minloglevel=2)
    return spm.SentencePieceProcessor(model_file=prefix + ".model")


def token_type(sp, i):
    if sp.IsUnknown(i):
        return TokenType.UNKNOWN
    if sp.IsControl(i):
        return TokenType.CONTROL
    if sp.IsByte(i):
        return TokenType.BYTE
    if sp.IsUnused(i):
        return TokenType.UNUSED
    if sp.id_to_piece(i) in ("<think>", "</think>", "[INST]", "[/INST]"):
        return TokenType.USER_DEFINED
    return TokenType.NORMAL


def main():
    with tempfile.TemporaryDirectory() as tmp:
        sp = train_sentencepiece(tmp)
    n = sp.get_piece_size()
    tokens = [sp.id_to_piece(i) for i in range(n)]
    scores = [sp.get_score(i) for i in range(n)]
    types = [token_type(sp, i) for i in range(n)]

    torch.manual_seed(4000)
    cfg = LlamaConfig(vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                      max_position_embeddings=256, rope_theta=10000.0, bos_token_id=1,
                      eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.empty_like(p).uniform_(0.8, 1.2) if "norm" in name
                    else torch.randn_like(p) * 0.08)

    path = os.path.join(OUT, "spm.gguf")
    w = GGUFWriter(path, "llama")
    w.add_name("sweetspot-spm-fixture")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(n)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.add_chat_template(TEMPLATE)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    add_tensors(w, sd, cfg.num_hidden_layers, cfg.num_attention_heads,
                cfg.num_key_value_heads, permute_qk=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    tok = AutoTokenizer.from_pretrained(OUT, gguf_file="spm.gguf")
    loaded = AutoModelForCausalLM.from_pretrained(OUT, gguf_file="spm.gguf",
                                                  dtype=torch.float32).eval()
    cases = []
    for text in CORPUS:
        cases.append({"text": text,
                      "ids": tok(text, add_special_tokens=False)["input_ids"],
                      "ids_with_special": tok(text, add_special_tokens=True)["input_ids"],
                      "decoded": tok.decode(tok(text, add_special_tokens=False)["input_ids"])})
    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And of Germany?"}]
    chat = tok.apply_chat_template(messages, tokenize=False)
    chat_ids = tok(chat, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = loaded(torch.tensor([chat_ids])).logits[0].tolist()
    # The loader's weights are the model's (it un-permuted q and k).
    with torch.no_grad():
        direct = model(torch.tensor([chat_ids])).logits[0]
    assert torch.allclose(direct, torch.tensor(logits), atol=1e-5)
    with open(os.path.join(OUT, "spm_reference.json"), "w") as f:
        json.dump({"cases": cases, "messages": messages, "chat": chat, "chat_ids": chat_ids,
                   "logits": logits, "vocab_size": n, "transformers": transformers.__version__,
                   "sentencepiece": spm.__version__}, f, indent=1, ensure_ascii=False)
    print("spm.gguf", os.path.getsize(path), "bytes;", n, "tokens")
    for c in cases[:6]:
        print(repr(c["text"]), c["ids"][:12])


if __name__ == "__main__":
    main()
