#!/usr/bin/env python3
"""Writes config.json files as other tools save them, for the config-key rule's tests
(crates/sweetspot-model/tests/configs.rs): every file must load, because every key in it is either
implemented, metadata, or at its neutral value.

Run from the repository root, once with transformers 5 and once with transformers 4 on the path
(each writes its own files; nothing is overwritten by the other):

    python3 scripts/make_config_fixtures.py
    PYTHONPATH=/path/to/transformers-4.57 python3 scripts/make_config_fixtures.py

Files, in tests/fixtures/configs/:
- `<family>-to_dict-t<major>.json`: `PretrainedConfig.to_dict()` of a tiny config of each family
  (llama, mistral, qwen2, qwen3); transformers 4 writes about 40 generation and encoder-decoder
  keys at their neutral values beside the model's own.
- `<family>-to_diff_dict-t<major>.json`: `to_diff_dict()` (what `save_pretrained` writes).
- `gguf-smollm2-t<major>.json` (and `gguf-smollm2-generation-t<major>.json`): the config (and
  generation config) transformers builds from SmolLM2-135M-Instruct's Q4_1 GGUF
  (`models/SmolLM2-135M-Instruct.Q4_1.gguf`, from scripts/fetch_smollm2.sh; needs the `gguf`
  package), saved as `save_pretrained` saves them.
- `unsloth-llama-t<major>.json`: unsloth's saved configs carry `unsloth_fixed` and
  `unsloth_version` beside transformers' keys (unsloth itself needs a CUDA GPU and is not
  installed here, so its two keys are added to transformers' own output).
"""

import json
import os
import tempfile

import transformers
from transformers import (
    AutoConfig,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "configs")
MAJOR = transformers.__version__.split(".")[0]
SIZES = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def write(name, obj):
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    families = {
        "llama": LlamaConfig,
        "mistral": MistralConfig,
        "qwen2": Qwen2Config,
        "qwen3": Qwen3Config,
    }
    for name, cls in families.items():
        cfg = cls(**SIZES, eos_token_id=2, bos_token_id=1)
        write(f"{name}-to_dict-t{MAJOR}.json", cfg.to_dict())
        with tempfile.TemporaryDirectory() as d:
            cfg.save_pretrained(d)
            with open(os.path.join(d, "config.json")) as f:
                write(f"{name}-to_diff_dict-t{MAJOR}.json", json.load(f))
    unsloth = LlamaConfig(**SIZES).to_dict()
    unsloth["unsloth_fixed"] = True
    unsloth["unsloth_version"] = "2025.11.1"
    write(f"unsloth-llama-t{MAJOR}.json", unsloth)

    gguf = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.exists(gguf):
        cfg = AutoConfig.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
        with tempfile.TemporaryDirectory() as d:
            cfg.save_pretrained(d)
            with open(os.path.join(d, "config.json")) as f:
                write(f"gguf-smollm2-t{MAJOR}.json", json.load(f))
            gen = GenerationConfig.from_model_config(cfg)
            gen.save_pretrained(d)
            with open(os.path.join(d, "generation_config.json")) as f:
                write(f"gguf-smollm2-generation-t{MAJOR}.json", json.load(f))
    else:
        print(f"{gguf} is missing (scripts/fetch_smollm2.sh): the GGUF conversion is skipped")


if __name__ == "__main__":
    main()
