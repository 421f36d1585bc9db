//! The TRL train backend (`[train] backend = "trl"`): TRL's `DPOTrainer` in a Python subprocess
//! (scripts/trl_backend.py, carried by the binary), on the node's pairs and starting policy,
//! writing `policy/`, `metrics.jsonl` and TRL's checkpoints into the train folder.
//!
//! Every `[train]` key and loss key maps to a `DPOConfig` name ([`dpo_config`]); one TRL lacks is
//! refused by name before anything starts, and so is a Python environment that lacks a package.

use std::path::{Path, PathBuf};
use std::process::Command;

use sweetspot_core::BuildContext;
use sweetspot_core::recipe::{Precision, Schedule, TrainConfig};
use sweetspot_train::run::TrainSummary;

use crate::error::RunError;

/// The driver, as committed in scripts/trl_backend.py.
pub const DRIVER: &str = include_str!("../../../scripts/trl_backend.py");

fn bad(m: impl std::fmt::Display) -> RunError {
    RunError::Config(format!("[train] backend = \"trl\": {m}"))
}

/// TRL's `loss_type` names this backend passes through from a loss plugin of the same name.
const TRL_LOSS_TYPES: &[&str] = &[
    "ipo",
    "hinge",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
];

/// Loss keys with the same name in `DPOConfig`.
const LOSS_KEYS: &[&str] = &[
    "beta",
    "label_smoothing",
    "f_divergence_type",
    "f_alpha_divergence_coef",
    "discopop_tau",
    "loss_weights",
    "use_weighting",
    "ld_alpha",
];

/// The `DPOConfig` keyword arguments of a `[train]` table with one loss (the driver adds the
/// batch split, the output folder and the fixed settings: no dropout, AdamW, logging every step).
/// A key or loss TRL lacks is an error naming it.
pub fn dpo_config(cfg: &TrainConfig, seed: u64) -> Result<serde_json::Value, RunError> {
    use serde_json::{Value, json};
    if cfg.adapter.is_some() {
        return Err(bad(
            "`[train.adapter]` is not supported by the TRL backend (full-parameter training \
             only); use the native trainer for LoRA",
        ));
    }
    let (Some(loss), true) = (&cfg.loss, cfg.losses.is_empty()) else {
        return Err(bad(
            "give one `[train.loss]` (a list of losses is for `sweetspot run`)",
        ));
    };
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        return Err(bad("`learning_rate` must be > 0"));
    }
    if !(0.0..1.0).contains(&cfg.warmup_ratio) {
        return Err(bad(
            "`warmup_ratio` must be in [0, 1) (TRL's `warmup_steps` reads 1 as one step)",
        ));
    }
    if cfg.batch_size == 0 || cfg.micro_batch_size == 0 || cfg.epochs == 0 {
        return Err(bad(
            "`epochs`, `batch_size` and `micro_batch_size` must be at least 1",
        ));
    }
    let micro = cfg.micro_batch_size.min(cfg.batch_size);
    if !cfg.batch_size.is_multiple_of(micro) {
        return Err(bad(format!(
            "`batch_size` ({}) must be a multiple of `micro_batch_size` ({micro}): TRL's \
             effective batch is micro-batch x gradient_accumulation_steps",
            cfg.batch_size
        )));
    }
    let mut out = serde_json::Map::new();
    let schedule = match cfg.schedule {
        Schedule::Linear => "linear",
        Schedule::Cosine => "cosine",
        // Constant after a linear warm-up: TRL's constant_with_warmup (plain constant without).
        Schedule::Constant if cfg.warmup_ratio > 0.0 => "constant_with_warmup",
        Schedule::Constant => "constant",
    };
    for (k, v) in [
        ("num_train_epochs", json!(cfg.epochs)),
        ("learning_rate", json!(cfg.learning_rate)),
        // transformers 5: a `warmup_steps` below 1 is a ratio (ceil(total x ratio), as native).
        ("warmup_steps", json!(cfg.warmup_ratio)),
        ("lr_scheduler_type", json!(schedule)),
        ("weight_decay", json!(cfg.weight_decay)),
        ("max_grad_norm", json!(cfg.max_grad_norm)),
        ("adam_beta1", json!(cfg.adam_beta1)),
        ("adam_beta2", json!(cfg.adam_beta2)),
        ("adam_epsilon", json!(cfg.adam_epsilon)),
        ("seed", json!(seed)),
        ("data_seed", json!(seed)),
        ("bf16", json!(cfg.dtype == Precision::Bf16)),
        ("fp16", json!(cfg.dtype == Precision::F16)),
        ("gradient_checkpointing", json!(cfg.gradient_checkpointing)),
    ] {
        out.insert(k.into(), v);
    }
    if cfg.save_steps == 0 {
        out.insert("save_strategy".into(), json!("no"));
    } else {
        out.insert("save_strategy".into(), json!("steps"));
        out.insert("save_steps".into(), json!(cfg.save_steps));
    }
    // The loss table, by its serialized keys.
    let table = serde_json::to_value(loss).map_err(|e| bad(format!("[train.loss]: {e}")))?;
    let Value::Object(mut table) = table else {
        return Err(bad("[train.loss]: not a table"));
    };
    let name = loss.plugin_type();
    table.remove("type");
    let loss_type = match name {
        "dpo" => {
            let robust = table.remove("robust").and_then(|v| v.as_bool()) == Some(true);
            json!(if robust { "robust" } else { "sigmoid" })
        }
        "trl" => table
            .remove("loss_type")
            .ok_or_else(|| bad("[train.loss]: `loss_type` missing"))?,
        n if TRL_LOSS_TYPES.contains(&n) => json!(n),
        "simpo" | "cpo" | "orpo" => {
            return Err(bad(format!(
                "[train.loss] type = \"{name}\" is not a loss of TRL's DPOTrainer (it is \
                 CPOTrainer's/ORPOTrainer's); use the native trainer"
            )));
        }
        "weighted" => {
            return Err(bad(
                "[train.loss] type = \"weighted\" is not supported; write the combination as \
                 type = \"trl\" with `loss_type` and `loss_weights` lists",
            ));
        }
        other => {
            return Err(bad(format!(
                "[train.loss] type = \"{other}\" is not a loss type of TRL's DPOTrainer"
            )));
        }
    };
    out.insert("loss_type".into(), loss_type);
    for (k, v) in table {
        if v.is_null() {
            continue;
        }
        if !LOSS_KEYS.contains(&k.as_str()) {
            return Err(bad(format!(
                "[train.loss] `{k}` (type = \"{name}\") has no DPOConfig counterpart"
            )));
        }
        out.insert(k, v);
    }
    Ok(Value::Object(out))
}

/// The interpreter: `[train] python`, else `$SWEETSPOT_PYTHON`, else `python3`.
fn interpreter(cfg: &TrainConfig, ctx: &BuildContext) -> PathBuf {
    match &cfg.python {
        Some(p) if p.components().count() > 1 => ctx.resolve(p),
        Some(p) => p.clone(),
        None => std::env::var_os("SWEETSPOT_PYTHON")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| "python3".into()),
    }
}

fn write(path: &Path, text: &str) -> Result<(), RunError> {
    sweetspot_io::write_atomic(path, text.as_bytes()).map_err(RunError::Write)
}

/// Runs the TRL backend for a `[train]` table with its paths resolved to `pairs`, `policy` and
/// `output`; `output` exists. Resumes from the latest `checkpoint/checkpoint-N`.
pub fn run(
    cfg: &TrainConfig,
    ctx: &BuildContext,
    (pairs, policy, output): (&Path, &Path, &Path),
    quiet: bool,
) -> Result<TrainSummary, RunError> {
    let dpo = dpo_config(cfg, ctx.seed)?;
    if policy
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        || !policy.is_dir()
    {
        return Err(bad(format!(
            "`policy` {} is not a Hugging Face model folder (TRL cannot train a GGUF file)",
            policy.display()
        )));
    }
    let accelerate = cfg.accelerate_config.as_ref().map(|p| ctx.resolve(p));
    if let Some(a) = &accelerate
        && !a.is_file()
    {
        return Err(bad(format!(
            "`accelerate_config` {} does not exist",
            a.display()
        )));
    }
    let python = interpreter(cfg, ctx);
    let dir = output.join("trl");
    std::fs::create_dir_all(&dir).map_err(|source| {
        RunError::Write(sweetspot_io::WriteError::Io {
            path: dir.clone(),
            source,
        })
    })?;
    let driver = dir.join("driver.py");
    write(&driver, DRIVER)?;
    // The environment first: a missing package is named before anything runs.
    let mut extra: Vec<&str> = Vec::new();
    if let Some(a) = &accelerate {
        extra.push("accelerate");
        if std::fs::read_to_string(a)
            .map(|t| t.to_ascii_lowercase().contains("deepspeed"))
            .unwrap_or(false)
        {
            extra.push("deepspeed");
        }
    }
    let checked = Command::new(&python)
        .arg(&driver)
        .arg("--check")
        .args(&extra)
        .output()
        .map_err(|e| {
            bad(format!(
                "cannot run the Python interpreter `{}` ([train] python, $SWEETSPOT_PYTHON or \
                 python3): {e}",
                python.display()
            ))
        })?;
    if !checked.status.success() {
        return Err(bad(format!(
            "the Python environment of `{}` is not ready (pip install -r \
             scripts/requirements-trl.txt): {}",
            python.display(),
            String::from_utf8_lossy(&checked.stderr).trim()
        )));
    }
    let job = serde_json::json!({
        "pairs": pairs,
        "policy": policy,
        "output": output,
        "batch_size": cfg.batch_size,
        "micro_batch_size": cfg.micro_batch_size.min(cfg.batch_size),
        "use_cpu": ctx.device.trim().eq_ignore_ascii_case("cpu"),
        "dpo_config": dpo,
    });
    let job_path = dir.join("job.json");
    write(&job_path, &format!("{job:#}\n"))?;
    let metrics = output.join("metrics.jsonl");
    let before = count_lines(&metrics);
    let mut cmd = Command::new(&python);
    if let Some(a) = &accelerate {
        cmd.args(["-m", "accelerate.commands.launch", "--config_file"])
            .arg(a);
    }
    cmd.arg(&driver).arg(&job_path);
    if quiet {
        cmd.stdout(std::process::Stdio::null());
    }
    let status = cmd
        .status()
        .map_err(|e| bad(format!("cannot run `{}`: {e}", python.display())))?;
    if !status.success() {
        return Err(bad(format!(
            "TRL's DPOTrainer failed ({status}); its job is {}",
            job_path.display()
        )));
    }
    let summary: serde_json::Value = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let lines = read_metrics(&metrics);
    let steps = lines.len();
    let policy_out = output.join("policy");
    Ok(TrainSummary {
        // Absent when the run stopped early (SWEETSPOT_TRL_STOP_AFTER).
        policy: policy_out.is_dir().then_some(policy_out),
        total_steps: summary["total_steps"]
            .as_u64()
            .map_or(steps, |v| v as usize),
        resumed_steps: before.min(steps),
        steps: steps.saturating_sub(before.min(steps)),
        last_loss: lines.last().and_then(|m| m["loss"].as_f64()),
        reference_cached: false,
        already_complete: false,
    })
}

fn read_metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn count_lines(path: &Path) -> usize {
    read_metrics(path).len()
}

/// What the plan needs from an accelerate config file (`accelerate launch --config_file`): how
/// many processes a training spans and how DeepSpeed shares its states among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accelerate {
    /// `num_processes` (GPUs on one machine; 1 when absent).
    pub processes: usize,
    /// `deepspeed_config.zero_stage` under `distributed_type: DEEPSPEED`; `None` without
    /// DeepSpeed.
    pub zero_stage: Option<u8>,
    /// `deepspeed_config.offload_optimizer_device` is not `none`: the optimizer's states (and
    /// the f32 master weights) live in host memory.
    pub offload_optimizer: bool,
    /// `deepspeed_config.offload_param_device` is not `none` (ZeRO-3): parameters in host memory.
    pub offload_param: bool,
}

impl Accelerate {
    /// Reads the keys of an accelerate config as `accelerate config` writes it (YAML: top-level
    /// keys, and a `deepspeed_config:` block of its own keys). Other keys are accelerate's own and
    /// do not change what the plan sizes.
    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let mut top = std::collections::BTreeMap::new();
        let mut ds = std::collections::BTreeMap::new();
        let mut in_ds = false;
        for (no, raw) in text.lines().enumerate() {
            let line = raw.split(" #").next().unwrap_or("").trim_end();
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let indented = line.starts_with(' ') || line.starts_with('\t');
            let Some((k, v)) = line.trim().split_once(':') else {
                if line.trim().starts_with('-') {
                    continue; // a list item of a list-valued key
                }
                return Err(format!(
                    "{}:{}: not `key: value`: {}",
                    path.display(),
                    no + 1,
                    line.trim()
                ));
            };
            let v = v.trim().trim_matches(['\'', '"']).to_string();
            if !indented {
                in_ds = k == "deepspeed_config";
                top.insert(k.to_string(), v);
            } else if in_ds {
                ds.insert(k.trim().to_string(), v);
            }
        }
        let number = |key: &str, v: &str| -> Result<usize, String> {
            v.parse::<usize>()
                .map_err(|_| format!("{}: `{key}` is {v:?}, not a number", path.display()))
        };
        let processes = match top.get("num_processes") {
            Some(v) => number("num_processes", v)?.max(1),
            None => 1,
        };
        // `num_processes` counts every machine's processes; a training here runs on one.
        if let Some(v) = top.get("num_machines")
            && number("num_machines", v)? > 1
        {
            return Err(format!(
                "{}: `num_machines` is {v}: a training runs `accelerate launch` on one machine \
                 (its processes are that machine's GPUs); give num_machines: 1",
                path.display()
            ));
        }
        let deepspeed = top
            .get("distributed_type")
            .is_some_and(|v| v.eq_ignore_ascii_case("deepspeed"));
        let zero_stage = match (deepspeed, ds.get("zero_stage")) {
            (true, Some(v)) => {
                let s = number("deepspeed_config.zero_stage", v)?;
                if s > 3 {
                    return Err(format!(
                        "{}: `deepspeed_config.zero_stage` is {s}; DeepSpeed has stages 0 to 3",
                        path.display()
                    ));
                }
                Some(s as u8)
            }
            (true, None) => Some(0),
            (false, _) => None,
        };
        let offloaded = |key: &str| {
            deepspeed
                && ds
                    .get(key)
                    .is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("none"))
        };
        Ok(Self {
            processes,
            zero_stage,
            offload_optimizer: offloaded("offload_optimizer_device"),
            offload_param: offloaded("offload_param_device"),
        })
    }

    /// Reads and parses the file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text, path)
    }
}

#[cfg(test)]
mod accelerate_tests {
    use super::Accelerate;
    use std::path::Path;

    #[test]
    fn the_shipped_zero3_config_is_eight_processes_at_stage_3() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/recipes/accelerate-zero3.yaml");
        let a = Accelerate::read(&p).unwrap();
        assert_eq!(
            a,
            Accelerate {
                processes: 8,
                zero_stage: Some(3),
                offload_optimizer: false,
                offload_param: false
            }
        );
    }

    #[test]
    fn offload_and_plain_configs() {
        let p = Path::new("a.yaml");
        let a = Accelerate::parse(
            "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 2\n  \
             offload_optimizer_device: cpu\nnum_processes: 4\n",
            p,
        )
        .unwrap();
        assert_eq!(
            (a.processes, a.zero_stage, a.offload_optimizer),
            (4, Some(2), true)
        );
        let a = Accelerate::parse("distributed_type: MULTI_GPU\nnum_processes: 2\n", p).unwrap();
        assert_eq!((a.processes, a.zero_stage), (2, None));
        let e = Accelerate::parse("num_processes: eight\n", p).unwrap_err();
        assert!(e.contains("num_processes"), "{e}");
        let e = Accelerate::parse("num_machines: 2\nnum_processes: 16\n", p).unwrap_err();
        assert!(e.contains("num_machines"), "{e}");
    }
}
