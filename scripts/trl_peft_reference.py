#!/usr/bin/env python3
"""Records two LoRA DPO steps of TRL + PEFT on the tiny policy fixture, and PEFT's logits.

Needs torch, transformers, safetensors, datasets, trl and peft. Run from the repository root
(after scripts/trl_dpo_reference.py wrote tests/fixtures/models/policy):

    python3 scripts/trl_peft_reference.py

TRL's `DPOTrainer` with `peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0,
target_modules=TARGETS)` and no reference model (TRL then uses the policy with its adapters
switched off as the reference), the settings of the sigmoid reference of trl_dpo_reference.py
(batch = all four pairs, constant lr 1e-3, AdamW eps 1e-8, weight decay 0.01, clipping at 1.0,
beta 0.1), two steps; once with the f32 base and once with the base loaded in bf16 (PEFT keeps
the adapters in f32: `autocast_adapter_dtype`). Writes tests/fixtures/dpo/:

- lora_init.safetensors: PEFT's initial adapter (lora_A kaiming-uniform after torch.manual_seed(0),
  lora_B zeros), PEFT's tensor names; both runs start from it;
- reference_lora.json / reference_lora_bf16.json: the LoRA settings and each step's loss,
  grad_norm, rewards/*, logps/*;
- after_lora.safetensors / after_lora_bf16.safetensors: the adapter after the two steps;
- peft_logits.json: the logits `PeftModel.from_pretrained(base, folder)` gives for the f32 run's
  adapter (saved by `save_pretrained`, loaded back) on fixed token ids.
"""

import json
import os
import sys
import tempfile

import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reward_fixtures import tokenizer  # noqa: E402
from trl_dpo_reference import HYPER, METRICS, OUT, PAIRS, POLICY, STEPS  # noqa: E402

R = 4
ALPHA = 8
TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
TOKENS = [[1, 5, 9, 42, 77, 3, 100, 12], [7, 7, 8, 200, 31, 2, 64, 90]]
INIT = os.path.join(OUT, "lora_init.safetensors")


def lora_config():
    from peft import LoraConfig
    return LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                      bias="none", task_type="CAUSAL_LM")


def adapter_state(model):
    from peft import get_peft_model_state_dict
    return {k: v.detach().float().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_base(dtype):
    model = LlamaForCausalLM.from_pretrained(POLICY, dtype=dtype)
    model.config._attn_implementation = "eager"
    return model


def run(tok, dtype, name):
    from peft import set_peft_model_state_dict
    from trl import DPOConfig, DPOTrainer
    torch.manual_seed(0)
    model = load_base(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp, per_device_train_batch_size=len(PAIRS), gradient_accumulation_steps=1,
            max_steps=STEPS, learning_rate=HYPER["learning_rate"], lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=HYPER["weight_decay"], adam_beta1=HYPER["adam_beta1"],
            adam_beta2=HYPER["adam_beta2"], adam_epsilon=HYPER["adam_epsilon"],
            max_grad_norm=HYPER["max_grad_norm"], beta=HYPER["beta"], loss_type=["sigmoid"],
            logging_steps=1, report_to=[], seed=0, save_strategy="no", use_cpu=True, bf16=False,
            fp16=False, disable_dropout=True, optim="adamw_torch", dataloader_drop_last=False,
            max_length=None)
        trainer = DPOTrainer(model=model, ref_model=None, args=args,
                             train_dataset=Dataset.from_list(PAIRS), processing_class=tok,
                             peft_config=lora_config())
        init = adapter_state(trainer.model)
        if os.path.exists(INIT) and name != "lora":
            # The bf16 run starts from the f32 run's initial adapter.
            init = load_file(INIT)
            set_peft_model_state_dict(trainer.model, init)
        else:
            save_file(init, INIT)
        dtypes = {str(p.dtype) for n, p in trainer.model.named_parameters() if "lora_" in n}
        print(name, "adapter dtypes", dtypes, "base", trainer.model.base_model.model.dtype)
        trainer.train()
        logs = [h for h in trainer.state.log_history if "loss" in h]
        after = adapter_state(trainer.model)
    save_file(after, os.path.join(OUT, f"after_{name}.safetensors"))
    metrics = [{k: h[k] for k in METRICS} for h in logs]
    print(name, metrics)
    with open(os.path.join(OUT, f"reference_{name}.json"), "w") as f:
        import peft
        import transformers
        import trl
        json.dump({"lora": {"r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0,
                            "target_modules": TARGETS, "base_dtype": str(dtype)},
                   "steps": {"sigmoid": metrics}, "trl": trl.__version__,
                   "peft": peft.__version__, "transformers": transformers.__version__,
                   "torch": torch.__version__}, f, indent=1)
    return trainer.model


def peft_logits(model):
    from peft import PeftModel
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        loaded = PeftModel.from_pretrained(load_base(torch.float32), tmp)
        loaded.eval()
        with torch.no_grad():
            logits = loaded(torch.tensor(TOKENS)).logits
    with open(os.path.join(OUT, "peft_logits.json"), "w") as f:
        json.dump({"tokens": TOKENS, "logits": logits.tolist()}, f)


def main():
    tok = tokenizer()
    if os.path.exists(INIT):
        os.remove(INIT)
    model = run(tok, torch.float32, "lora")
    peft_logits(model)
    run(tok, torch.bfloat16, "lora_bf16")


if __name__ == "__main__":
    main()
