#!/usr/bin/env python3
"""The TRL train backend of sweetspot (`[train] backend = "trl"`): TRL's `DPOTrainer` on a node's
pairs, writing what the native trainer writes into the node's train folder.

sweetspot runs it (the binary carries this file and writes it to `<output>/trl/driver.py`):

    python driver.py --check                      # every package it needs, or exit 3 naming the missing
    python driver.py JOB.json                     # on the CPU (accelerate's CPU mode)
    python -m accelerate.commands.launch --config_file CFG driver.py JOB.json   # e.g. DeepSpeed ZeRO-3

JOB.json (written by sweetspot from `[train]` and the loss table; see docs/recipes.md):

    {"pairs": "...jsonl", "policy": "HF model folder", "output": "train folder",
     "batch_size": 128, "micro_batch_size": 8, "use_cpu": true,
     "dpo_config": {DPOConfig keyword arguments}}

Writes into `output`:
- `metrics.jsonl`: one line per optimizer step with the native trainer's names (`step`, `epoch`,
  `loss`, `grad_norm`, `learning_rate`, `rewards/chosen`, `rewards/rejected`,
  `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected`);
- `checkpoint/checkpoint-N/`: TRL's checkpoints (every `save_steps`); a run that finds one resumes
  from the latest (`resume_from_checkpoint`), its metrics cut to that step; removed once the
  policy is exported. `SWEETSPOT_TRL_STOP_AFTER=N` (tests) stops after step N, saved, as a
  killed job would leave it;
- `policy/`: the trained policy as a Hugging Face folder (written to `policy.tmp`, then renamed).

The effective batch is `batch_size` = per-device micro-batch x gradient accumulation x processes;
`batch_size` must be a multiple of `micro_batch_size` x processes.
"""

import importlib.util
import json
import os
import shutil
import sys

# The packages the backend imports (pip names in scripts/requirements-trl.txt).
REQUIRED = ["torch", "transformers", "trl", "accelerate", "datasets", "safetensors"]

METRICS = ["loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected",
           "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"]


def check(extra):
    missing = [m for m in REQUIRED + extra if importlib.util.find_spec(m) is None]
    if missing:
        print("missing Python packages: " + ", ".join(missing), file=sys.stderr)
        sys.exit(3)
    import trl
    major, minor = (int(x) for x in trl.__version__.split(".")[:2])
    if (major, minor) < (1, 16):
        print(f"trl {trl.__version__} is too old: the backend needs trl>=1.16", file=sys.stderr)
        sys.exit(3)


def fail(msg):
    print(f"trl backend: {msg}", file=sys.stderr)
    sys.exit(2)


def read_pairs(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{path}:{i}: {e}")
            for k in ("prompt", "chosen", "rejected"):
                if k not in r:
                    fail(f"{path}:{i}: field `{k}`: missing")
            rows.append({k: r[k] for k in ("prompt", "chosen", "rejected")})
    if not rows:
        fail(f"{path}: no pairs")
    return rows


def latest_checkpoint(folder):
    if not os.path.isdir(folder):
        return None
    steps = []
    for name in os.listdir(folder):
        if name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit():
            if os.path.isfile(os.path.join(folder, name, "trainer_state.json")):
                steps.append(int(name[len("checkpoint-"):]))
    return os.path.join(folder, f"checkpoint-{max(steps)}") if steps else None


def cut_metrics(path, upto):
    """Keeps the metrics of steps 1..upto (those a checkpoint holds)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= upto:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                break
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


def main(job_path):
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    out = job["output"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    batch, micro = job["batch_size"], job["micro_batch_size"]
    if batch % (micro * world) != 0:
        fail(f"[train]: `batch_size` ({batch}) must be a multiple of `micro_batch_size` ({micro}) "
             f"x processes ({world})")
    checkpoints = os.path.join(out, "checkpoint")
    metrics_path = os.path.join(out, "metrics.jsonl")
    resume = latest_checkpoint(checkpoints)
    if rank == 0:
        if resume is None:
            if os.path.exists(metrics_path):
                os.remove(metrics_path)
        else:
            with open(os.path.join(resume, "trainer_state.json"), encoding="utf-8") as f:
                cut_metrics(metrics_path, json.load(f)["global_step"])

    cfg = dict(job["dpo_config"])
    cpu = job.get("use_cpu", not torch.cuda.is_available())
    cfg.update(
        output_dir=checkpoints,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=batch // (micro * world),
        logging_steps=1,
        report_to=[],
        use_cpu=cpu,
        disable_dropout=True,
        optim="adamw_torch",
        dataloader_drop_last=False,
        max_length=None,
        model_init_kwargs={"dtype": torch.float32,
                           "attn_implementation": "eager" if cpu else "sdpa"},
    )
    args = DPOConfig(**cfg)
    tokenizer = AutoTokenizer.from_pretrained(job["policy"])
    dataset = Dataset.from_list(read_pairs(job["pairs"]))

    class Metrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            line = {"step": state.global_step, "epoch": logs.get("epoch", state.epoch)}
            line.update({k: logs[k] for k in METRICS if k in logs})
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")

    stop_after = int(os.environ.get("SWEETSPOT_TRL_STOP_AFTER", "0"))

    class StopAfter(TrainerCallback):
        """Tests of resuming: stop (as a killed job would) after this many steps, saved."""

        def on_step_end(self, args, state, control, **kwargs):
            if stop_after and state.global_step >= stop_after:
                control.should_save = True
                control.should_training_stop = True

    trainer = DPOTrainer(model=job["policy"], args=args, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[Metrics(), StopAfter()])
    trainer.train(resume_from_checkpoint=resume)
    if stop_after and trainer.state.global_step < trainer.state.max_steps:
        return
    tmp = os.path.join(out, "policy.tmp")
    if trainer.is_world_process_zero() and os.path.exists(tmp):
        shutil.rmtree(tmp)
    trainer.save_model(tmp)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(tmp)
        final = os.path.join(out, "policy")
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        # As the native trainer: a finished run drops its checkpoints.
        shutil.rmtree(checkpoints, ignore_errors=True)
        with open(os.path.join(out, "trl", "summary.json"), "w", encoding="utf-8") as f:
            json.dump({"total_steps": trainer.state.max_steps,
                       "global_step": trainer.state.global_step,
                       "resumed_from": resume}, f)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--check":
        check(sys.argv[2:])
    elif len(sys.argv) == 2:
        main(sys.argv[1])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
