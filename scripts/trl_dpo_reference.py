#!/usr/bin/env python3
"""Records TRL's preference losses and two optimizer steps on a tiny random-weight policy.

Needs torch, transformers, tokenizers, safetensors, datasets and trl. Run from the repository
root:

    python3 scripts/trl_dpo_reference.py

Writes tests/fixtures/models/policy/ (a tiny `LlamaForCausalLM` with the Llama-3-style tokenizer
and chat template of scripts/make_reward_fixtures.py) and tests/fixtures/dpo/:

- reference.json: the pairs (TRL's conversational format), the token ids TRL trains on
  (`prompt_ids`, `chosen_ids`, `rejected_ids`: the completion starts where the rendered prompt
  and prompt + completion diverge), the hyper-parameters, and for each loss the metrics TRL
  logs for each of the two steps (loss, grad_norm, rewards/*, logps/*);
- after_<loss>.safetensors: every parameter after the two AdamW steps (the first step's
  losses are at policy = reference; the second's are not).

Losses: `sigmoid` (DPO), `robust` (label_smoothing 0.1), `ipo`, `hinge` with TRL's
`DPOTrainer` (two steps: batch = all pairs, constant learning rate, AdamW eps 1e-8, weight decay,
gradient clipping at 1.0, dropout off, the reference model a frozen copy of the initial policy);
`simpo` with the loss of TRL's `CPOTrainer` (`cpo_loss`, loss_type "simpo", cpo_alpha 0) on
length-averaged log-probabilities of the same tokens, and the same step written out in torch
(`clip_grad_norm_`, `torch.optim.AdamW` with the Trainer's parameter groups: no weight decay
on biases and norms), since the CPO trainer tokenizes differently.

`python3 scripts/trl_dpo_reference.py --bf16` leaves the policy as it is and writes
tests/fixtures/dpo/reference_bf16.json: the sigmoid loss's two steps with `bf16=True` (mixed
precision: f32 weights and optimizer, the forward and backward autocast to bf16).

`python3 scripts/trl_dpo_reference.py --qwen3` writes tests/fixtures/models/policy-qwen3 (a tiny
`Qwen3ForCausalLM`: per-head q/k norms, head_dim 32 over hidden size 64, tied embeddings; the
same tokenizer and template) and tests/fixtures/dpo/reference_qwen3.json with
after_qwen3_sigmoid.safetensors: DPO's (`sigmoid`) two steps on it, as above.

`python3 scripts/trl_dpo_reference.py --losses` leaves the policy as it is and writes
tests/fixtures/dpo/reference_losses.json with after_<case>.safetensors: the two steps of every
other `loss_type` of TRL's `DPOTrainer` (`exo_pair` with label_smoothing 1e-3, `nca_pair`,
`bco_pair`, `sppo_hard`, `aot` with label_smoothing 0.1, `aot_unpaired`, `apo_zero`, `apo_down`,
`discopop`, `sft`, `sigmoid_norm`), the MPO combination of TRL's docs (`mpo`: `["sigmoid",
"bco_pair", "sft"]` weighted `[0.8, 0.2, 1.0]`) and three f-divergences (`sigmoid` with
`forward_kl` and `js_divergence`, `ipo` with `alpha_divergence` 0.5), each case's DPOConfig
settings under `settings`, and `logits/chosen`, `logits/rejected` besides the metrics above.

`python3 scripts/trl_dpo_reference.py --reference-free` writes tests/fixtures/dpo/
reference_free.json with after_<case>.safetensors: two steps of CPO (`cpo`: sigmoid, cpo_alpha
1.0; `cpo_ipo`: ipo, cpo_alpha 0.5), AlphaPO (`alphapo`: CPO's `loss_type="alphapo"`, alpha
0.25, beta 2.0) and ORPO (`orpo`: beta 0.1), with the losses of TRL's experimental
`CPOTrainer` and `ORPOTrainer` on the same tokens, stepped in torch as `simpo` is.
"""

import copy
import json
import os
import shutil
import sys
import tempfile
import types

import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reward_fixtures import COMMON, tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICY = os.path.join(ROOT, "tests", "fixtures", "models", "policy")
OUT = os.path.join(ROOT, "tests", "fixtures", "dpo")

PAIRS = [
    {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris."}],
     "rejected": [{"role": "assistant", "content": "Lyon, on the Seine, is the capital."}]},
    {"prompt": [{"role": "user", "content": "Add 12345 and 678."}],
     "chosen": [{"role": "assistant", "content": "13023"}],
     "rejected": [{"role": "assistant", "content": "I do not know."}]},
    {"prompt": [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Say hi."}],
     "chosen": [{"role": "assistant", "content": "Hi! A quick brown fox says hello."}],
     "rejected": [{"role": "assistant", "content": "No."}]},
    {"prompt": [{"role": "user", "content": "Tell me a fact."}],
     "chosen": [{"role": "assistant", "content": "Foxes are quick."}],
     "rejected": [{"role": "assistant", "content": "Dogs can be lazy, or not at all."}]},
]

HYPER = dict(beta=0.1, learning_rate=1e-3, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999,
             adam_epsilon=1e-8, max_grad_norm=1.0, label_smoothing=0.1, simpo_gamma=0.5)

STEPS = 2

METRICS = ["loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
           "rewards/margins", "logps/chosen", "logps/rejected"]


# The family --qwen3 switches to: (config class, model class, policy folder, extra config).
FAMILY = {"config": LlamaConfig, "model": LlamaForCausalLM, "extra": {}}


def make_policy(tok):
    torch.manual_seed(2026)
    cfg = FAMILY["config"](**COMMON, **FAMILY["extra"], bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg._attn_implementation = "eager"
    model = FAMILY["model"](cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, 0.08)
    os.makedirs(POLICY, exist_ok=True)
    model.config.architectures = [FAMILY["model"].__name__]
    model.config.save_pretrained(POLICY)
    tok.save_pretrained(POLICY)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(POLICY, "model.safetensors"), metadata={"format": "pt"})
    return model


def load_policy():
    model = FAMILY["model"].from_pretrained(POLICY, dtype=torch.float32)
    model.config._attn_implementation = "eager"
    return model


def save_params(model, name):
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(OUT, f"after_{name}.safetensors"))


def dpo_step(tok, loss_type, label_smoothing, bf16=False, save_as=None, loss_weights=None,
             metrics=METRICS, **extra):
    from trl import DPOConfig, DPOTrainer
    loss_type = loss_type if isinstance(loss_type, list) else [loss_type]
    model = load_policy()
    ref = load_policy()
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp, per_device_train_batch_size=len(PAIRS), gradient_accumulation_steps=1,
            max_steps=STEPS, learning_rate=HYPER["learning_rate"], lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=HYPER["weight_decay"], adam_beta1=HYPER["adam_beta1"],
            adam_beta2=HYPER["adam_beta2"], adam_epsilon=HYPER["adam_epsilon"],
            max_grad_norm=HYPER["max_grad_norm"], beta=HYPER["beta"], loss_type=loss_type,
            loss_weights=loss_weights, label_smoothing=label_smoothing, logging_steps=1, report_to=[], seed=0,
            save_strategy="no", use_cpu=True, bf16=bf16, fp16=False, disable_dropout=True,
            optim="adamw_torch", dataloader_drop_last=False, max_length=None, **extra)
        trainer = DPOTrainer(model=model, ref_model=ref, args=args,
                             train_dataset=Dataset.from_list(PAIRS), processing_class=tok)
        tokenized = [{k: trainer.train_dataset[i][k] for k in ("prompt_ids", "chosen_ids",
                                                                "rejected_ids")}
                     for i in range(len(PAIRS))]
        trainer.train()
        logs = [h for h in trainer.state.log_history if "loss" in h]
    if not bf16:
        save_params(trainer.model, save_as or loss_type[0])
    return tokenized, [{k: h[k] for k in metrics} for h in logs]


def reference_free_step(tokenized, kind, save_as, **settings):
    """Two steps of CPOTrainer's (`kind = "cpo"`: `cpo_loss` plus `cpo_alpha` times the NLL) or
    ORPOTrainer's (`kind = "orpo"`: the NLL minus `odds_ratio_loss`) loss, each trainer's own
    loss functions on the tokens DPOTrainer trains on, and the step written out in torch as in
    `simpo_step` below. The NLL is each trainer's `cross_entropy_loss` on the chosen half: the mean
    over chosen completion tokens (the prompt's labels are -100)."""
    from transformers import Trainer
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer
    model = load_policy()
    model.train()
    ids, masks = [], []
    for which in ("chosen_ids", "rejected_ids"):
        for t in tokenized:
            ids.append(t["prompt_ids"] + t[which])
            masks.append([0] * len(t["prompt_ids"]) + [1] * len(t[which]))
    width = max(len(i) for i in ids)
    x = torch.zeros(len(ids), width, dtype=torch.long)
    attn = torch.zeros(len(ids), width, dtype=torch.long)
    comp = torch.zeros(len(ids), width, dtype=torch.long)
    for r, (i, m) in enumerate(zip(ids, masks)):
        x[r, :len(i)] = torch.tensor(i)
        attn[r, :len(i)] = 1
        comp[r, :len(m)] = torch.tensor(m)
    target = x[:, 1:]
    mask = comp[:, 1:].float()
    n = len(tokenized)
    cfg = dict(beta=HYPER["beta"], label_smoothing=0.0, loss_type="sigmoid", cpo_alpha=1.0,
               simpo_gamma=0.5, alpha=0.0)
    cfg.update(settings)
    if cfg["loss_type"] == "alphapo":
        cfg.update(loss_type="simpo", cpo_alpha=0.0)
    ns = types.SimpleNamespace(accelerator=types.SimpleNamespace(device="cpu"), **cfg)
    decay = set(Trainer.get_decay_parameter_names(None, model))
    groups = [
        {"params": [p for n_, p in model.named_parameters() if n_ in decay],
         "weight_decay": HYPER["weight_decay"]},
        {"params": [p for n_, p in model.named_parameters() if n_ not in decay],
         "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=HYPER["learning_rate"],
                            betas=(HYPER["adam_beta1"], HYPER["adam_beta2"]),
                            eps=HYPER["adam_epsilon"], weight_decay=HYPER["weight_decay"])
    average = kind == "orpo" or cfg["loss_type"] in ("ipo", "simpo")
    steps = []
    for _ in range(STEPS):
        logits = model(x, attention_mask=attn).logits[:, :-1]
        per_token = torch.gather(logits.log_softmax(-1), 2, target.unsqueeze(-1)).squeeze(-1)
        summed = (per_token * mask).sum(-1)
        logps = summed / mask.sum(-1) if average else summed
        chosen, rejected = logps[:n], logps[n:]
        nll = -(per_token[:n] * mask[:n]).sum() / mask[:n].sum()
        if kind == "cpo":
            losses, cr, rr = CPOTrainer.cpo_loss(ns, chosen, rejected)
            loss = losses.mean() + cfg["cpo_alpha"] * nll
        else:
            losses, cr, rr, _, _ = ORPOTrainer.odds_ratio_loss(ns, chosen, rejected)
            loss = nll - losses.mean()
        opt.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), HYPER["max_grad_norm"])
        opt.step()
        steps.append({"loss": loss.item(), "grad_norm": grad_norm.item(),
                      "rewards/chosen": cr.mean().item(), "rewards/rejected": rr.mean().item(),
                      "rewards/accuracies": (cr > rr).float().mean().item(),
                      "rewards/margins": (cr - rr).mean().item(),
                      "logps/chosen": chosen.mean().item(),
                      "logps/rejected": rejected.mean().item(),
                      "nll_loss": nll.item()})
    save_params(model, save_as)
    return steps


# `--reference-free`: CPO's and ORPO's losses (trl.experimental), as (name, kind, settings).
REFERENCE_FREE = [
    ("cpo", "cpo", {}),
    ("cpo_ipo", "cpo", {"loss_type": "ipo", "cpo_alpha": 0.5}),
    ("alphapo", "cpo", {"loss_type": "alphapo", "alpha": 0.25, "beta": 2.0, "simpo_gamma": 0.5}),
    ("orpo", "orpo", {}),
]


def simpo_step(tokenized):
    from trl.experimental.cpo import CPOTrainer
    model = load_policy()
    model.train()
    ids, masks = [], []
    for which in ("chosen_ids", "rejected_ids"):
        for t in tokenized:
            ids.append(t["prompt_ids"] + t[which])
            masks.append([0] * len(t["prompt_ids"]) + [1] * len(t[which]))
    width = max(len(i) for i in ids)
    x = torch.zeros(len(ids), width, dtype=torch.long)
    attn = torch.zeros(len(ids), width, dtype=torch.long)
    comp = torch.zeros(len(ids), width, dtype=torch.long)
    for r, (i, m) in enumerate(zip(ids, masks)):
        x[r, :len(i)] = torch.tensor(i)
        attn[r, :len(i)] = 1
        comp[r, :len(m)] = torch.tensor(m)
    target = x[:, 1:]
    mask = comp[:, 1:].float()
    n = len(tokenized)
    ns = types.SimpleNamespace(alpha=0.0, accelerator=types.SimpleNamespace(device="cpu"),
                               loss_type="simpo", simpo_gamma=HYPER["simpo_gamma"],
                               beta=HYPER["beta"], label_smoothing=0.0)
    # As transformers' Trainer groups parameters: no weight decay on biases and norms.
    from transformers import Trainer
    decay = set(Trainer.get_decay_parameter_names(None, model))
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decay],
         "weight_decay": HYPER["weight_decay"]},
        {"params": [p for n, p in model.named_parameters() if n not in decay],
         "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=HYPER["learning_rate"],
                            betas=(HYPER["adam_beta1"], HYPER["adam_beta2"]),
                            eps=HYPER["adam_epsilon"], weight_decay=HYPER["weight_decay"])
    steps = []
    for _ in range(STEPS):
        logits = model(x, attention_mask=attn).logits[:, :-1]
        per_token = torch.gather(logits.log_softmax(-1), 2, target.unsqueeze(-1)).squeeze(-1)
        avg = (per_token * mask).sum(-1) / mask.sum(-1)
        chosen, rejected = avg[:n], avg[n:]
        losses, cr, rr = CPOTrainer.cpo_loss(ns, chosen, rejected)
        loss = losses.mean()
        opt.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), HYPER["max_grad_norm"])
        opt.step()
        steps.append({"loss": loss.item(), "grad_norm": grad_norm.item(),
                      "rewards/chosen": cr.mean().item(), "rewards/rejected": rr.mean().item(),
                      "rewards/accuracies": (cr > rr).float().mean().item(),
                      "rewards/margins": (cr - rr).mean().item(),
                      "logps/chosen": chosen.mean().item(),
                      "logps/rejected": rejected.mean().item()})
    save_params(model, "simpo")
    return steps


# `--losses`: the other loss types of TRL's DPOTrainer, one combination (the MPO example of TRL's
# docs) and the non-default f-divergences, each as (name, loss_type, label_smoothing, extra
# DPOConfig settings).
LOSSES = [
    ("exo_pair", "exo_pair", 1e-3, {}),
    ("nca_pair", "nca_pair", 0.0, {}),
    ("bco_pair", "bco_pair", 0.0, {}),
    ("sppo_hard", "sppo_hard", 0.0, {}),
    ("aot", "aot", 0.1, {}),
    ("aot_unpaired", "aot_unpaired", 0.0, {}),
    ("apo_zero", "apo_zero", 0.0, {}),
    ("apo_down", "apo_down", 0.0, {}),
    ("discopop", "discopop", 0.0, {}),
    ("sft", "sft", 0.0, {}),
    ("sigmoid_norm", "sigmoid_norm", 0.0, {}),
    ("mpo", ["sigmoid", "bco_pair", "sft"], 0.0, {"loss_weights": [0.8, 0.2, 1.0]}),
    ("sigmoid_forward_kl", "sigmoid", 0.0, {"f_divergence_type": "forward_kl"}),
    ("sigmoid_js_divergence", "sigmoid", 0.0, {"f_divergence_type": "js_divergence"}),
    ("ipo_alpha_divergence", "ipo", 0.0, {"f_divergence_type": "alpha_divergence",
                                          "f_alpha_divergence_coef": 0.5}),
]


def main():
    import transformers
    import trl
    global POLICY
    tok = tokenizer()
    if "--reference-free" in sys.argv:
        with open(os.path.join(OUT, "reference.json")) as f:
            tokenized = json.load(f)["tokenized"]
        results, settings = {}, {}
        for name, kind, cfg in REFERENCE_FREE:
            torch.manual_seed(0)
            results[name] = reference_free_step(tokenized, kind, name, **cfg)
            settings[name] = {"trainer": kind, **cfg}
            print(name, results[name])
        with open(os.path.join(OUT, "reference_free.json"), "w") as f:
            json.dump({"tokenized": tokenized, "hyper": HYPER, "settings": settings,
                       "steps": results, "trl": trl.__version__,
                       "transformers": transformers.__version__, "torch": torch.__version__},
                      f, indent=1)
        return
    if "--losses" in sys.argv:
        # The committed policy as it is; the same pairs and settings as reference.json.
        results, settings, tokenized = {}, {}, None
        for name, loss_type, ls, extra in LOSSES:
            torch.manual_seed(0)
            tokenized, metrics = dpo_step(
                tok, loss_type, ls, save_as=name,
                metrics=METRICS + ["logits/chosen", "logits/rejected"], **extra)
            results[name] = metrics
            settings[name] = {"loss_type": loss_type if isinstance(loss_type, list) else [loss_type],
                              "label_smoothing": ls, **extra}
            print(name, metrics)
        with open(os.path.join(OUT, "reference_losses.json"), "w") as f:
            json.dump({"tokenized": tokenized, "hyper": HYPER, "settings": settings,
                       "steps": results, "trl": trl.__version__,
                       "transformers": transformers.__version__, "torch": torch.__version__},
                      f, indent=1)
        return
    if "--qwen3" in sys.argv:
        POLICY = os.path.join(ROOT, "tests", "fixtures", "models", "policy-qwen3")
        # The reward fixtures' sizes, with Qwen3's own head width, base and tied embeddings.
        COMMON.update(head_dim=32, rope_theta=1000000.0, tie_word_embeddings=True)
        FAMILY.update(config=Qwen3Config, model=Qwen3ForCausalLM)
        make_policy(tok)
        os.makedirs(OUT, exist_ok=True)
        torch.manual_seed(0)
        tokenized, metrics = dpo_step(tok, "sigmoid", 0.0, save_as="qwen3_sigmoid")
        print("qwen3 sigmoid", metrics)
        with open(os.path.join(OUT, "reference_qwen3.json"), "w") as f:
            json.dump({"pairs": PAIRS, "tokenized": tokenized, "hyper": HYPER,
                       "steps": {"sigmoid": metrics}, "trl": trl.__version__,
                       "transformers": transformers.__version__, "torch": torch.__version__},
                      f, indent=1)
        return
    if "--bf16" in sys.argv:
        # Mixed precision (`bf16=True`: autocast to bf16 on the CPU) on the committed policy.
        torch.manual_seed(0)
        _, metrics = dpo_step(tok, "sigmoid", 0.0, bf16=True)
        print("sigmoid bf16", metrics)
        with open(os.path.join(OUT, "reference_bf16.json"), "w") as f:
            json.dump({"steps": {"sigmoid": metrics}, "trl": trl.__version__,
                       "transformers": transformers.__version__, "torch": torch.__version__},
                      f, indent=1)
        return
    make_policy(tok)
    os.makedirs(OUT, exist_ok=True)
    results = {}
    tokenized = None
    for name, loss_type, ls in [("sigmoid", "sigmoid", 0.0), ("robust", "robust", 0.1),
                                ("ipo", "ipo", 0.0), ("hinge", "hinge", 0.0)]:
        torch.manual_seed(0)
        tokenized, metrics = dpo_step(tok, loss_type, ls)
        results[name] = metrics
        print(name, metrics)
    torch.manual_seed(0)
    results["simpo"] = simpo_step(tokenized)
    print("simpo", results["simpo"])
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"pairs": PAIRS, "tokenized": tokenized, "hyper": HYPER, "steps": results,
                   "trl": trl.__version__, "transformers": transformers.__version__,
                   "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
