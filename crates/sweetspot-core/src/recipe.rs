//! The recipe schema: a TOML file, typed with serde, with plugin tables deserialized through
//! typetag (`type = "..."`). Unknown keys are errors everywhere.
//!
//! Relative paths in a recipe are resolved against the recipe file's folder, so a recipe runs the
//! same from any working directory.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plugin::{PairStrategyConfig, PreferenceLossConfig, RewardModelConfig, SamplerConfig};
use crate::registry::{self, PluginKind};

/// A whole recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Settings of the whole run.
    #[serde(default)]
    pub run: RunConfig,
    /// The sampler the generate stage uses.
    pub sampler: Option<Box<dyn SamplerConfig>>,
    /// The generate stage: prompts in, n samples per prompt out.
    pub generate: Option<GenerateConfig>,
    /// The reward model the score stage uses (`[reward]`), or several, each named
    /// (`[[reward]]` tables with a `name`).
    pub reward: Option<RewardTables>,
    /// The score stage: samples in, scored samples out.
    pub score: Option<ScoreConfig>,
    /// The pair-building stage.
    pub pairs: Option<PairsConfig>,
    /// The training stage.
    pub train: Option<TrainConfig>,
    /// The evaluation stage (`sweetspot run`).
    pub eval: Option<EvalConfig>,
    /// How `sweetspot run --emit slurm` asks a cluster's scheduler for each node's job. What a
    /// node computes does not depend on it (no node hash covers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// `[reward]`: one reward model, or `[[reward]]`: several, each with a `name`.
#[derive(Debug, Clone)]
pub enum RewardTables {
    /// One `[reward]` table (no name).
    One(Box<dyn RewardModelConfig>),
    /// `[[reward]]` tables, in the recipe's order.
    Named(Vec<NamedReward>),
}

/// One `[[reward]]` table: a name (what `[pairs] rank_by` and `agree` use) and the model.
#[derive(Debug, Clone)]
pub struct NamedReward {
    /// The model's name in the recipe.
    pub name: String,
    /// The reward model's table, less `name`.
    pub model: Box<dyn RewardModelConfig>,
}

impl RewardTables {
    /// The models with their names (`None` for a `[reward]` table), in the recipe's order.
    pub fn models(&self) -> Vec<(Option<&str>, &(dyn RewardModelConfig + 'static))> {
        match self {
            Self::One(m) => vec![(None, m.as_ref())],
            Self::Named(v) => v
                .iter()
                .map(|n| (Some(n.name.as_str()), n.model.as_ref()))
                .collect(),
        }
    }

    /// The first model: the one model of a `[reward]` table.
    pub fn first(&self) -> Option<&(dyn RewardModelConfig + 'static)> {
        self.models().first().map(|m| m.1)
    }

    /// The first model, owned.
    pub fn into_first(self) -> Option<Box<dyn RewardModelConfig>> {
        match self {
            Self::One(m) => Some(m),
            Self::Named(v) => v.into_iter().next().map(|n| n.model),
        }
    }

    /// The model named `name`.
    pub fn named(&self, name: &str) -> Option<&(dyn RewardModelConfig + 'static)> {
        match self {
            Self::One(_) => None,
            Self::Named(v) => v.iter().find(|n| n.name == name).map(|n| n.model.as_ref()),
        }
    }

    /// The names of `[[reward]]` tables (empty for a `[reward]` table).
    pub fn names(&self) -> Vec<String> {
        match self {
            Self::One(_) => Vec::new(),
            Self::Named(v) => v.iter().map(|n| n.name.clone()).collect(),
        }
    }

    /// Whether several models score the samples.
    pub fn is_several(&self) -> bool {
        matches!(self, Self::Named(v) if v.len() > 1)
    }
}

impl Serialize for RewardTables {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        match self {
            Self::One(m) => m.serialize(s),
            Self::Named(v) => {
                let mut seq = s.serialize_seq(Some(v.len()))?;
                for n in v {
                    let mut table = serde_json::to_value(&n.model).map_err(S::Error::custom)?;
                    if let Some(t) = table.as_object_mut() {
                        t.insert("name".into(), n.name.clone().into());
                    }
                    seq.serialize_element(&table)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for RewardTables {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = toml::Value::deserialize(d)?;
        match value {
            toml::Value::Table(_) => Box::<dyn RewardModelConfig>::deserialize(value)
                .map(Self::One)
                .map_err(D::Error::custom),
            toml::Value::Array(items) => {
                if items.is_empty() {
                    return Err(D::Error::custom(
                        "an empty list: give at least one [[reward]] table",
                    ));
                }
                let mut out: Vec<NamedReward> = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let toml::Value::Table(mut t) = item else {
                        return Err(D::Error::custom(format!(
                            "reward[{i}]: expected a table ([[reward]])"
                        )));
                    };
                    let name = match t.remove("name") {
                        Some(toml::Value::String(n)) => n,
                        Some(_) => {
                            return Err(D::Error::custom(format!(
                                "reward[{i}].name: expected a string"
                            )));
                        }
                        None => {
                            return Err(D::Error::custom(format!(
                                "reward[{i}]: missing `name`: every [[reward]] table needs one \
                                 (what [pairs] `rank_by` and `agree` use)"
                            )));
                        }
                    };
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
                        || name.starts_with('.')
                    {
                        return Err(D::Error::custom(format!(
                            "reward[{i}].name: `{name}`: use letters, digits, `_`, `-` and `.` \
                             (it names files)"
                        )));
                    }
                    if out.iter().any(|n| n.name == name) {
                        return Err(D::Error::custom(format!(
                            "reward[{i}].name: `{name}` names two [[reward]] tables"
                        )));
                    }
                    let model = Box::<dyn RewardModelConfig>::deserialize(toml::Value::Table(t))
                        .map_err(|e| D::Error::custom(format!("reward[{i}]: {e}")))?;
                    out.push(NamedReward { name, model });
                }
                Ok(Self::Named(out))
            }
            _ => Err(D::Error::custom(
                "expected a [reward] table or [[reward]] tables",
            )),
        }
    }
}

/// `[pairs] rank_by`: what ranks the samples when several reward models score them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RankBy {
    /// One `[[reward]]` model, by name.
    Model(String),
    /// An aggregate of several.
    Aggregate(Aggregate),
}

/// `rank_by = { aggregate = "..." }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "aggregate", rename_all = "snake_case", deny_unknown_fields)]
pub enum Aggregate {
    /// The mean over the models of each sample's per-prompt z-score (population sigma over the
    /// prompt's samples; a model whose rewards are all equal on a prompt contributes 0).
    MeanZ,
    /// `sum(weight * reward)` over the models named in `weights` (raw rewards).
    Weighted {
        /// Model name to weight.
        weights: std::collections::BTreeMap<String, f64>,
    },
}

impl RankBy {
    /// How summaries and labels name it: the model's name, `mean_z`, or
    /// `weighted(a=0.7,b=0.3)`.
    pub fn label(&self) -> String {
        match self {
            Self::Model(m) => m.clone(),
            Self::Aggregate(Aggregate::MeanZ) => "mean_z".into(),
            Self::Aggregate(Aggregate::Weighted { weights }) => format!(
                "weighted({})",
                weights
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// `[cluster]`: the scheduler requests of `sweetspot run --emit slurm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The partition (`sbatch --partition`).
    pub partition: Option<String>,
    /// The account (`sbatch --account`).
    pub account: Option<String>,
    /// Each job's time limit, in Slurm's forms (`"4:00:00"`, `"1-00:00:00"`).
    pub time: Option<String>,
    /// Each job's memory when the plan cannot size it (`sbatch --mem`, such as `"64G"`).
    pub mem: Option<String>,
    /// CPUs per job (`sbatch --cpus-per-task`).
    pub cpus_per_task: Option<usize>,
    /// More `sbatch` options, one per item (`["--qos=high", "--constraint=h100"]`), given to
    /// every job.
    #[serde(default)]
    pub sbatch: Vec<String>,
    /// The sweetspot binary as the cluster's nodes see it (default: this binary's path; for
    /// `--emit argo`, `sweetspot` on the image's PATH).
    pub sweetspot: Option<PathBuf>,
    /// `--emit argo`: the container image that holds sweetspot.
    pub image: Option<String>,
    /// `--emit argo`: the PersistentVolumeClaim holding the recipe, its inputs and the run
    /// folder, mounted in every pod at `mount_path`.
    pub volume_claim: Option<String>,
    /// `--emit argo`: where the claim is mounted in the pods (default `/data`).
    pub mount_path: Option<PathBuf>,
    /// `--emit argo`: the folder on this machine that is the claim's root, relative to the
    /// recipe's folder (default: the recipe's folder); the recipe and the run folder must lie
    /// inside it, and their paths are rewritten under `mount_path`.
    pub volume_root: Option<PathBuf>,
}

/// `[eval]`: held-out prompts answered by the starting policy and by every trained policy (one
/// response each, with the `[sampler]`), scored by the recipe's reward model or `[eval.reward]`,
/// and compared with the starting policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Held-out prompts (JSONL, as `[generate].prompts`).
    pub prompts: PathBuf,
    /// Sampling temperature of the eval responses; 0 (the default) is greedy.
    #[serde(default)]
    pub temperature: f64,
    /// Longest eval response; the sampler's `max_new_tokens` when left out.
    pub max_new_tokens: Option<usize>,
    /// Bootstrap resamples of the prompts for the 95% intervals.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
    /// A reward model of its own (`[eval.reward]`); the recipe's `[reward]` when left out.
    pub reward: Option<Box<dyn RewardModelConfig>>,
    /// A pairwise judge (`[eval.judge]`, such as `type = "pairwise-judge"`): it compares each
    /// policy's response with the starting policy's, in both orders.
    pub judge: Option<Box<dyn RewardModelConfig>>,
}

fn default_bootstrap() -> usize {
    1000
}

/// `[train]`: preference optimization of a policy on pairs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Pairs in TRL's preference format (JSONL: `prompt`, `chosen`, `rejected`, as messages or
    /// text), as `[pairs]` writes them. In `sweetspot run`, leave it out and name `datasets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<PathBuf>,
    /// `sweetspot run`: the datasets of the run's `[pairs]` stage to train on (names, globs such
    /// as `grid_max_vs_*`, or `all`), one policy per dataset and `[pairs].n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datasets: Option<OneOrMany<String>>,
    /// The policy to start from: a model folder or a `.gguf` file. It is also the reference.
    /// In `sweetspot run`, the sampler's model when left out (on-policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
    /// The run folder: the trained policy (Hugging Face layout), `metrics.jsonl`, checkpoints.
    /// In `sweetspot run`, a copy of the one trained policy (the run folder holds them all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// `sweetspot run`: seeds of the data order, one policy per seed (default `[run].seed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<OneOrMany<u64>>,
    /// Passes over the pairs.
    #[serde(default = "one")]
    pub epochs: usize,
    /// Pairs per optimizer step (the effective batch).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Pairs per forward/backward pass; gradients accumulate up to `batch_size`.
    #[serde(default = "default_micro_batch")]
    pub micro_batch_size: usize,
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// Fraction of the steps spent warming the learning rate up linearly from 0.
    #[serde(default = "default_warmup")]
    pub warmup_ratio: f64,
    /// The decay after warm-up.
    #[serde(default)]
    pub schedule: Schedule,
    /// Decoupled weight decay (not on norms or biases, as transformers' Trainer does it).
    #[serde(default)]
    pub weight_decay: f64,
    /// Global gradient-norm limit; 0 turns clipping off.
    #[serde(default = "one_f")]
    pub max_grad_norm: f64,
    /// AdamW beta 1.
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    /// AdamW beta 2.
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    /// AdamW epsilon.
    #[serde(default = "default_eps")]
    pub adam_epsilon: f64,
    /// Write a checkpoint every this many optimizer steps (0: only at the end).
    #[serde(default = "default_save_steps")]
    pub save_steps: usize,
    /// Compute type of the forward and backward passes, the activations and the reference
    /// pass: `f32` (the default), or `bf16` / `f16` as mixed precision (TRL's `bf16 = true`),
    /// through casts of the weights; the weights, their gradients and AdamW's moments stay f32,
    /// and so does the export. A device that cannot compute in the type is refused before the
    /// first step.
    #[serde(default)]
    pub dtype: Precision,
    /// Recompute memory-bound activations in the backward pass instead of keeping them
    /// (less memory, more time), like TRL's `gradient_checkpointing`.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Train low-rank adapters on a frozen base instead of every weight (`[train.adapter]`,
    /// PEFT's LoRA); the reference model is then the base with the adapters off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterConfig>,
    /// The loss (`[train.loss]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Box<dyn PreferenceLossConfig>>,
    /// `sweetspot run`: several losses (`[[train.losses]]`), one policy per loss; instead of
    /// `loss`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub losses: Vec<Box<dyn PreferenceLossConfig>>,
    /// The trainer: `native` (burn, the default) or `trl` (TRL's `DPOTrainer` in a Python
    /// subprocess, `accelerate launch` with `accelerate_config`; see docs/recipes.md).
    #[serde(default, skip_serializing_if = "TrainBackend::is_native")]
    pub backend: TrainBackend,
    /// `backend = "trl"`: the Python interpreter (default `$SWEETSPOT_PYTHON`, else `python3`).
    /// Where the run happens, not what it computes: not part of the node's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PathBuf>,
    /// `backend = "trl"`: an accelerate config file (`accelerate launch --config_file`), such as
    /// examples/recipes/accelerate-zero3.yaml (DeepSpeed ZeRO-3); without it, one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerate_config: Option<PathBuf>,
    /// Native trainer: data parallelism over the GPUs of this machine, one replica of the
    /// policy on each: a range (`"cuda:0-7"`) or a list (`["cuda:0", "cuda:1"]`). Each step's
    /// pairs are shared out, the gradients reduced, and each parameter updated (with its AdamW
    /// moments) on one device by burn's sharded optimizer step. The training node runs alone,
    /// on these devices. Where it runs, not what it computes (the one-device result up to float
    /// rounding): not part of the node's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Devices>,
}

impl TrainConfig {
    /// `devices` expanded (`"cuda:0-3"` is `cuda:0` ... `cuda:3`), in order; empty when left
    /// out. A device named twice or a range that runs backwards is an error naming it.
    pub fn data_parallel_devices(&self) -> Result<Vec<String>, String> {
        let Some(devices) = &self.devices else {
            return Ok(Vec::new());
        };
        let mut out: Vec<String> = Vec::new();
        for spec in devices.to_vec() {
            let spec = spec.trim().to_ascii_lowercase();
            let range = spec.split_once(':').and_then(|(kind, idx)| {
                let (a, b) = idx.split_once('-')?;
                Some((
                    kind.to_string(),
                    a.parse::<usize>().ok()?,
                    b.parse::<usize>().ok()?,
                ))
            });
            let expanded: Vec<String> = match range {
                Some((kind, a, b)) if a <= b => (a..=b).map(|i| format!("{kind}:{i}")).collect(),
                Some(_) => return Err(format!("`devices`: the range `{spec}` runs backwards")),
                None => vec![spec],
            };
            for d in expanded {
                if out.contains(&d) {
                    return Err(format!("`devices`: `{d}` is named twice"));
                }
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// `[train] backend`: which trainer runs the train stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainBackend {
    /// The native trainer (burn).
    #[default]
    Native,
    /// TRL's `DPOTrainer` through scripts/trl_backend.py.
    Trl,
}

impl TrainBackend {
    /// Whether this is the default (left out of serialized recipes, so hashes do not change).
    pub fn is_native(&self) -> bool {
        *self == Self::Native
    }
}

impl Default for TrainConfig {
    /// A `[train]` table with every key left out (the serde defaults above).
    fn default() -> Self {
        Self {
            pairs: None,
            datasets: None,
            policy: None,
            output: None,
            seeds: None,
            epochs: one(),
            batch_size: default_batch(),
            micro_batch_size: default_micro_batch(),
            learning_rate: default_lr(),
            warmup_ratio: default_warmup(),
            schedule: Schedule::default(),
            weight_decay: 0.0,
            max_grad_norm: one_f(),
            adam_beta1: default_beta1(),
            adam_beta2: default_beta2(),
            adam_epsilon: default_eps(),
            save_steps: default_save_steps(),
            dtype: Precision::default(),
            gradient_checkpointing: false,
            adapter: None,
            loss: None,
            losses: Vec::new(),
            backend: TrainBackend::Native,
            python: None,
            devices: None,
            accelerate_config: None,
        }
    }
}

/// `[train.adapter]`: LoRA adapters on a frozen base, with PEFT's `LoraConfig` names and
/// defaults. Keys of PEFT's that change the computation and are not implemented here
/// (`use_dora`, `modules_to_save`, `layers_to_transform`, a `bias` other than `"none"`, ...) are
/// refused by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// The adapter kind: `"lora"`.
    #[serde(rename = "type")]
    pub kind: AdapterKind,
    /// The rank of each adapter (PEFT's `r`, default 8).
    #[serde(default = "default_lora_r")]
    pub r: usize,
    /// The scale's numerator: the update is `lora_alpha / r` (or `/ sqrt(r)` with `use_rslora`)
    /// times `B A x` (PEFT's default 8).
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f64,
    /// Dropout on the adapters' input (PEFT's default 0).
    #[serde(default)]
    pub lora_dropout: f64,
    /// The linear layers that get adapters, by module name (`q_proj`, `k_proj`, `v_proj`,
    /// `o_proj`, `gate_proj`, `up_proj`, `down_proj`), or `"all-linear"` (every one of them but
    /// the output head). PEFT's default for Llama-family models: `["q_proj", "v_proj"]`.
    #[serde(default = "default_target_modules")]
    pub target_modules: OneOrMany<String>,
    /// Rank-stabilized LoRA: scale by `lora_alpha / sqrt(r)`.
    #[serde(default)]
    pub use_rslora: bool,
    /// PEFT's `bias`: only `"none"` (no bias is trained).
    #[serde(default = "default_lora_bias")]
    pub bias: String,
    /// How the frozen base is held (QLoRA when not f32): `f32` (the default), `bf16`, `f16`.
    /// The adapters, their gradients and AdamW's moments are f32 whatever the choice.
    #[serde(default)]
    pub base_dtype: Precision,
    /// Export the policy merged into a full Hugging Face model folder instead of a PEFT adapter
    /// folder.
    #[serde(default)]
    pub merge: bool,
}

/// `[train.adapter].type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    /// Low-rank adaptation (Hu et al. 2021), PEFT's `LoraConfig`.
    Lora,
}

fn default_lora_r() -> usize {
    8
}
fn default_lora_alpha() -> f64 {
    8.0
}
fn default_target_modules() -> OneOrMany<String> {
    OneOrMany::Many(vec!["q_proj".into(), "v_proj".into()])
}
fn default_lora_bias() -> String {
    "none".into()
}

impl AdapterConfig {
    /// The linear layers named by the module names PEFT uses, `all-linear` expanded.
    pub fn modules(&self) -> Vec<String> {
        let named = self.target_modules.to_vec();
        if named.iter().any(|m| m == "all-linear") {
            LINEAR_MODULES.iter().map(|m| m.to_string()).collect()
        } else {
            named
        }
    }

    /// The factor of the low-rank update.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
}

/// The linear layers of a decoder layer, by their Hugging Face module names.
pub const LINEAR_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// One value or a list of values (`n = 16` or `n = [8, 16]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// One value.
    One(T),
    /// A list.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The values, in order.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            Self::One(v) => vec![v.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// `[run].device`: one device, or a pool that independent stages share out.
pub type Devices = OneOrMany<String>;

/// The float type a model's weights are held and computed in (for `[train]`, only computed in:
/// see [`TrainConfig::dtype`]). Norm statistics, softmax and the logits stay in f32 whatever the
/// choice, as in transformers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit float (every backend).
    #[default]
    F32,
    /// bfloat16: f32's range with an 8-bit mantissa.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl Precision {
    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
        }
    }

    /// The type an inference KV cache holds: on the CPU f32 whatever the weights' type
    /// (attention reads f32 keys and values there, as burn-flex's and torch's CPU attention
    /// compute in f32; no per-step conversion of the whole cache), elsewhere the weights' type.
    pub fn kv_cache_type(self, on_cpu: bool) -> Precision {
        if on_cpu { Self::F32 } else { self }
    }

    /// The name recipes use (`f32`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "f16" => Ok(Self::F16),
            other => Err(format!(
                "unknown dtype `{other}` (expected f32, bf16 or f16)"
            )),
        }
    }
}

/// Weight quantization for inference on the CPU (`quantize = "q8_0"` in a sampler or reward
/// table): the projections computed with 8-bit weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quantize {
    /// llama.cpp's Q8_0: blocks of 32 inputs, one f32 scale per block (the largest magnitude
    /// over 127), for the weights and, per row as each product starts, for the activations.
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl Quantize {
    /// The name recipes use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
        }
    }
}

impl std::fmt::Display for Quantize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Quantize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "q8_0" => Ok(Self::Q8_0),
            other => Err(format!("unknown quantization `{other}` (expected q8_0)")),
        }
    }
}

/// A learning-rate decay after warm-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Linear to 0 at the last step.
    #[default]
    Linear,
    /// Half a cosine to 0 at the last step.
    Cosine,
    /// Constant after warm-up.
    Constant,
}

fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn default_batch() -> usize {
    128
}
fn default_micro_batch() -> usize {
    8
}
fn default_lr() -> f64 {
    3e-7
}
fn default_warmup() -> f64 {
    0.01
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_save_steps() -> usize {
    50
}

/// `[generate]`: sample n responses per prompt with the `[sampler]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// Prompts (JSONL: `prompt`, optional `prompt_id`); with `[run].rounds`, a list gives each
    /// round its own prompts (one file: the same prompts every round).
    pub prompts: OneOrMany<PathBuf>,
    /// Samples out (JSONL, long layout). In `sweetspot run`, a copy (the run folder holds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// Samples per prompt.
    pub n: usize,
}

/// `[score]`: score samples with the `[reward]` model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// Samples (JSONL, long layout, as `[generate]` writes them). In `sweetspot run`, what
    /// `[generate]` made when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<PathBuf>,
    /// Scored samples out (JSONL, long layout with `reward`, the input of `[pairs]`). In
    /// `sweetspot run`, a copy (the run folder holds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// Prompt groups handed to the reward model per call (its samples are length-sorted into
    /// batches together; a killed run resumes at a call boundary).
    #[serde(default = "default_groups_per_call")]
    pub groups_per_call: usize,
}

fn default_groups_per_call() -> usize {
    64
}

/// `[run]`: settings of the whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// A name for the run, shown in logs and summaries.
    pub name: Option<String>,
    /// The device: `cpu` (the default), `wgpu`, `cuda`, `cuda:1`, ... `--device` overrides it.
    /// A list (`["cuda:0", "cuda:1"]`) is a pool: `sweetspot run` runs independent stages on
    /// them at once, one per device.
    pub device: Option<Devices>,
    /// The seed every random choice derives from.
    #[serde(default)]
    pub seed: u64,
    /// `sweetspot run`: the run folder (default `runs/<name>` beside the recipe).
    pub dir: Option<PathBuf>,
    /// `sweetspot run`: rounds of iterative alignment; round r + 1 samples with (and trains
    /// from) round r's policy named by `continue_with`.
    #[serde(default = "one_round")]
    pub rounds: usize,
    /// `sweetspot run`: the policy each round continues with (a dataset name, or a policy name
    /// such as `grid_max_vs_-2-n16`), when `rounds` > 1.
    pub continue_with: Option<String>,
    /// The memory of each device in bytes, where it cannot be read from the device (or to plan
    /// for a device this machine does not have): `run --plan` and `run` size every node against
    /// it. A string with a unit is accepted (`"80GB"`, `"80GiB"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory: Option<ByteSize>,
}

/// A number of bytes, written as an integer or as a string with a unit (`"80GB"`, `"24GiB"`,
/// `"512MiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ByteSizeRepr", into = "u64")]
pub struct ByteSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum ByteSizeRepr {
    Int(u64),
    Text(String),
}

impl From<ByteSize> for u64 {
    fn from(b: ByteSize) -> u64 {
        b.0
    }
}

impl TryFrom<ByteSizeRepr> for ByteSize {
    type Error = String;
    fn try_from(r: ByteSizeRepr) -> Result<Self, String> {
        match r {
            ByteSizeRepr::Int(v) => Ok(Self(v)),
            ByteSizeRepr::Text(t) => t.parse(),
        }
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(t: &str) -> Result<Self, String> {
        let s = t.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("`{t}` is not a size (such as \"80GB\" or \"24GiB\")"))?;
        let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "tb" => 1e12,
            "kib" => 1024.0,
            "mib" => 1024.0 * 1024.0,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            other => {
                return Err(format!(
                    "`{t}`: unknown unit `{other}` (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
                ));
            }
        };
        Ok(Self((value * factor).round() as u64))
    }
}

fn one_round() -> usize {
    1
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: None,
            device: None,
            seed: 0,
            dir: None,
            rounds: one_round(),
            continue_with: None,
            device_memory: None,
        }
    }
}

impl RunConfig {
    /// The devices named (empty when none is).
    pub fn devices(&self) -> Vec<String> {
        self.device
            .as_ref()
            .map(OneOrMany::to_vec)
            .unwrap_or_default()
    }
}

/// How an input's rows are laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputLayout {
    /// Detected from the first row's keys.
    #[default]
    Auto,
    /// One row per sample: `prompt_id`, `prompt`, `sample_index`, `response`, `reward`.
    Long,
    /// One row per prompt (the SimPO on-policy layout): `prompt`, `all_generated_responses`,
    /// `all_rm_scores`, and optionally `prompt_id`.
    Grouped,
}

/// The file format of an output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// JSON Lines.
    #[default]
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

impl OutputFormat {
    /// The file extension, without the dot.
    pub fn extension(&self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Parquet => "parquet",
        }
    }
}

/// What to do with a group that cannot be used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnBadGroup {
    /// Stop with an error naming file, line and field.
    #[default]
    Error,
    /// Skip the group and count it in the summary.
    Skip,
}

/// `[pairs]`: build preference pairs from scored samples.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairsConfig {
    /// Scored samples: `.jsonl` or `.parquet`, long or grouped layout. In `sweetspot run`, what
    /// `[score]` made when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<PathBuf>,
    /// The input's layout.
    #[serde(default)]
    pub input_layout: InputLayout,
    /// The output: a folder (one file per dataset plus `summary.json`), or, for a run that writes
    /// one dataset, a `.jsonl` / `.parquet` file. In `sweetspot run`, a copy (the run folder
    /// holds every pair set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// Use the first n samples of each group; a list (`[5, 10, 20]`) makes one pair set per n
    /// from the one pool (`sweetspot run`). Sets every strategy's `n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<OneOrMany<usize>>,
    /// The output format; by default the output file's extension, else JSONL.
    pub format: Option<OutputFormat>,
    /// Groups with fewer samples than a strategy needs.
    #[serde(default)]
    pub on_small_group: OnBadGroup,
    /// Groups with a NaN or infinite reward.
    #[serde(default)]
    pub on_invalid_reward: OnBadGroup,
    /// The strategies, all applied in one pass over the input. None with `layout = "listwise"`.
    #[serde(default)]
    pub strategies: Vec<Box<dyn PairStrategyConfig>>,
    /// Drop a pair whose reward margin (chosen - rejected) is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_margin: Option<f64>,
    /// Drop a pair whose margin, in units of its prompt's reward standard deviation (population
    /// sigma over the samples the strategy looks at), is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_margin_sigma: Option<f64>,
    /// Keep only this fraction of each dataset's pairs (those left by the margin filters), the
    /// ones with the largest margins: k = ceil(fraction * pairs), every pair with a margin above
    /// the k-th largest plus, in input order, as many at it as make k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_fraction: Option<f64>,
    /// `sweetspot pairs` (not `run`): several reward models' scores of the same samples, one
    /// scored file per model (the single-model layout), by model name; instead of `input`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rewards: std::collections::BTreeMap<String, PathBuf>,
    /// With several `[[reward]]` models: what ranks the samples (a model's name, or
    /// `{ aggregate = "mean_z" }`, or `{ aggregate = "weighted", weights = { a = 0.7 } }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_by: Option<RankBy>,
    /// Keep only pairs whose order (chosen above rejected, strictly) these `[[reward]]` models
    /// agree with; applied before the margin filters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agree: Vec<String>,
    /// With `agree`: how many of its models must agree (default: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agree_min: Option<usize>,
    /// The rows written: pairs (TRL's preference format), TRL's unpaired format, or listwise.
    #[serde(default, skip_serializing_if = "PairsLayout::is_pairs")]
    pub layout: PairsLayout,
    /// `layout = "listwise"`: responses per prompt (the k best by reward); all when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listwise_k: Option<usize>,
}

/// The rows a pairs stage writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairsLayout {
    /// One row per pair: `prompt`, `chosen`, `rejected` (TRL's preference format).
    #[default]
    Pairs,
    /// Two rows per pair: `prompt`, `completion`, `label` (true for the chosen response, false
    /// for the rejected one; TRL's unpaired preference format, for KTO/BCO).
    Unpaired,
    /// One row per prompt: `prompt`, `completions` (the responses, best reward first),
    /// `rewards`. No strategies.
    Listwise,
}

impl PairsLayout {
    /// The default layout.
    pub fn is_pairs(&self) -> bool {
        *self == Self::Pairs
    }

    /// Its name in a recipe.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pairs => "pairs",
            Self::Unpaired => "unpaired",
            Self::Listwise => "listwise",
        }
    }
}

/// Where the plugin tables of a recipe live, and their kind. `*` stands for every element of an
/// array of tables.
const PLUGIN_TABLES: &[(&[&str], PluginKind)] = &[
    (&["pairs", "strategies", "*"], PluginKind::PairStrategy),
    (&["sampler"], PluginKind::Sampler),
    (&["reward"], PluginKind::RewardModel),
    (&["reward", "*"], PluginKind::RewardModel),
    (&["train", "loss"], PluginKind::PreferenceLoss),
    (&["train", "losses", "*"], PluginKind::PreferenceLoss),
    (&["eval", "reward"], PluginKind::RewardModel),
    (&["eval", "judge"], PluginKind::RewardModel),
];

/// A recipe that cannot be read: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeError {
    /// The recipe file, when it came from one.
    pub path: Option<PathBuf>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The dotted key, when known (`pairs.strategies[0].chosen`).
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}", p.display())?,
            None => f.write_str("<recipe>")?,
        }
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for RecipeError {}

/// The 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

impl Recipe {
    /// Reads and checks the recipe at `path`.
    pub fn from_file(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|e| RecipeError {
            path: Some(path.to_path_buf()),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read the recipe: {e}"),
        })?;
        Self::from_toml(&text, Some(path))
    }

    /// Parses and checks a recipe's text; `path` is only used in errors.
    pub fn from_toml(text: &str, path: Option<&Path>) -> Result<Self, RecipeError> {
        parse_checked(text, path)
    }
}

/// Parses `text` as `T`, with plugin `type`s checked against the registry first, and errors that
/// carry line, column and key.
pub fn parse_checked<T: serde::de::DeserializeOwned>(
    text: &str,
    path: Option<&Path>,
) -> Result<T, RecipeError> {
    let err_at = |span: Option<Range<usize>>, key: Option<String>, message: String| {
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = line_col(text, s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        RecipeError {
            path: path.map(Path::to_path_buf),
            line,
            column,
            key,
            message,
        }
    };
    let doc = toml::de::DeTable::parse(text)
        .map_err(|e| err_at(e.span(), None, e.message().to_string()))?;
    check_plugin_types(doc.get_ref(), &err_at)?;
    check_reward_names(doc.get_ref(), &err_at)?;
    toml::from_str::<T>(text).map_err(|e| {
        let mut message = e.message().trim().to_string();
        // typetag names the trait object in its messages; name the plugin kind instead.
        for (trait_name, kind) in [
            ("PairStrategyConfig", PluginKind::PairStrategy),
            ("SamplerConfig", PluginKind::Sampler),
            ("RewardModelConfig", PluginKind::RewardModel),
            ("PreferenceLossConfig", PluginKind::PreferenceLoss),
        ] {
            message = message.replace(trait_name, kind.noun());
        }
        message = message.replace(
            "data did not match any variant of untagged enum RankBy",
            "expected a [[reward]] model's name, { aggregate = \"mean_z\" }, or \
             { aggregate = \"weighted\", weights = { <name> = <weight>, ... } }",
        );
        message = message.replace(
            "data did not match any variant of untagged enum OneOrMany",
            "expected one value or a list of values",
        );
        // Errors inside a plugin table come back through typetag without the key's span: find
        // the failing table and the key that makes it fail.
        if let Some((span, key)) = e
            .span()
            .and_then(|at| pinpoint_plugin_error(text, doc.get_ref(), at.start))
        {
            return err_at(Some(span), Some(key), message);
        }
        let key = e
            .span()
            .and_then(|span| key_at(doc.get_ref(), span.start, &mut Vec::new()));
        err_at(e.span(), key, message)
    })
}

/// The 1-based line and column of the dotted `key` (`pairs.strategies[0].chosen`) in a recipe's
/// text. A key the text does not hold (left at its default) is located at the nearest enclosing
/// table that it does hold; `None` when not even the first segment is there.
pub fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found: Option<Range<usize>> = None;
    for seg in key.split('.') {
        let (name, index) = match seg.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref() == name) else {
            break;
        };
        found = Some(k.span());
        let mut value = v;
        if let (Some(i), toml::de::DeValue::Array(items)) = (index, v.get_ref()) {
            match items.get(i) {
                Some(item) => {
                    found = Some(item.span());
                    value = item;
                }
                None => break,
            }
        }
        match value.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found.map(|span| line_col(text, span.start))
}

/// An error about `key` of the recipe `text` (from `path`), located by [`locate`].
pub fn error_at(text: &str, path: &Path, key: &str, message: impl Into<String>) -> RecipeError {
    let at = locate(text, key);
    RecipeError {
        path: Some(path.to_path_buf()),
        line: at.map(|a| a.0),
        column: at.map(|a| a.1),
        key: Some(key.to_string()),
        message: message.into(),
    }
}

/// Deserializes one plugin table of kind `kind` on its own.
fn probe(kind: PluginKind, table: &toml::Table) -> Result<(), String> {
    let text = toml::to_string(table).map_err(|e| e.to_string())?;
    let r = match kind {
        PluginKind::PairStrategy => toml::from_str::<Box<dyn PairStrategyConfig>>(&text).map(drop),
        PluginKind::Sampler => {
            toml::from_str::<Box<dyn crate::plugin::SamplerConfig>>(&text).map(drop)
        }
        PluginKind::RewardModel => {
            toml::from_str::<Box<dyn crate::plugin::RewardModelConfig>>(&text).map(drop)
        }
        PluginKind::PreferenceLoss => {
            toml::from_str::<Box<dyn crate::plugin::PreferenceLossConfig>>(&text).map(drop)
        }
    };
    r.map_err(|e| e.message().to_string())
}

/// The span and dotted key of the key that makes a plugin table fail, if a plugin table fails.
fn pinpoint_plugin_error(
    text: &str,
    doc: &toml::de::DeTable<'_>,
    error_at: usize,
) -> Option<(Range<usize>, String)> {
    let values: toml::Table = toml::from_str(text).ok()?;
    for (pattern, kind) in PLUGIN_TABLES {
        let mut found = Vec::new();
        collect_tables(doc, pattern, &mut Vec::new(), None, &mut found);
        for (path, span, spanned) in found {
            if !(span.contains(&error_at) || span.start == error_at) {
                continue;
            }
            let mut table = table_at(&values, &path)?.clone();
            if pattern.len() == 2 && pattern[0] == "reward" {
                // A [[reward]] table's `name` is the recipe's, not the plugin's.
                table.remove("name");
            }
            let table = &table;
            let Err(original) = probe(*kind, table) else {
                continue;
            };
            // The first key whose removal changes the error is the one to blame.
            for (k, v) in spanned.iter() {
                let name = k.get_ref();
                if name == "type"
                    || (pattern.len() == 2 && pattern[0] == "reward" && name == "name")
                {
                    continue;
                }
                let mut without = table.clone();
                without.remove(name.as_ref());
                if probe(*kind, &without).err().as_deref() != Some(original.as_str()) {
                    let at = if original.contains(&format!("`{name}`")) {
                        k.span()
                    } else {
                        v.span()
                    };
                    return Some((at, format!("{}.{name}", dotted(&path))));
                }
            }
            return Some((span, dotted(&path)));
        }
    }
    None
}

/// The table at `path` (segments as [`collect_tables`] writes them) in `root`.
fn table_at<'a>(root: &'a toml::Table, path: &[String]) -> Option<&'a toml::Table> {
    let mut value: Option<&toml::Value> = None;
    let mut table = root;
    for seg in path {
        if let Some(i) = seg.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            let idx: usize = i.parse().ok()?;
            value = value?.as_array()?.get(idx);
        } else {
            value = table.get(seg.as_str());
        }
        if let Some(t) = value.and_then(|v| v.as_table()) {
            table = t;
        }
    }
    value?.as_table()
}

type ErrAt<'a> = dyn Fn(Option<Range<usize>>, Option<String>, String) -> RecipeError + 'a;

fn dotted(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if seg.starts_with('[') {
            out.push_str(seg);
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// Checks every plugin table's `type` against the registry.
fn check_plugin_types(root: &toml::de::DeTable<'_>, err_at: &ErrAt<'_>) -> Result<(), RecipeError> {
    for (pattern, kind) in PLUGIN_TABLES {
        let mut found = Vec::new();
        collect_tables(root, pattern, &mut Vec::new(), None, &mut found);
        for (path, span, table) in found {
            let key = dotted(&path);
            let Some(ty) = table.iter().find(|(k, _)| k.get_ref() == "type") else {
                let names: Vec<_> = registry::plugins_of(*kind).iter().map(|p| p.name).collect();
                return Err(err_at(
                    Some(span),
                    Some(key),
                    format!(
                        "missing `type`: name a {} ({})",
                        kind.noun(),
                        names.join(", ")
                    ),
                ));
            };
            let key = format!("{key}.type");
            let toml::de::DeValue::String(name) = ty.1.get_ref() else {
                return Err(err_at(
                    Some(ty.1.span()),
                    Some(key),
                    "`type` must be a string".to_string(),
                ));
            };
            if registry::find(*kind, name).is_none() {
                return Err(err_at(
                    Some(ty.1.span()),
                    Some(key),
                    registry::unknown_message(*kind, name),
                ));
            }
        }
    }
    Ok(())
}

/// Checks each `[[reward]]` table's `name` where the text has it (the deserializer checks the
/// same, without the spans): present, a string, unique.
fn check_reward_names(root: &toml::de::DeTable<'_>, err_at: &ErrAt<'_>) -> Result<(), RecipeError> {
    let mut found = Vec::new();
    collect_tables(root, &["reward", "*"], &mut Vec::new(), None, &mut found);
    let mut seen: Vec<String> = Vec::new();
    for (path, span, table) in found {
        let key = dotted(&path);
        let Some((_, v)) = table.iter().find(|(k, _)| k.get_ref() == "name") else {
            return Err(err_at(
                Some(span),
                Some(key),
                "missing `name`: every [[reward]] table needs one (what [pairs] `rank_by` and \
                 `agree` use)"
                    .into(),
            ));
        };
        let toml::de::DeValue::String(name) = v.get_ref() else {
            return Err(err_at(
                Some(v.span()),
                Some(format!("{key}.name")),
                "`name` must be a string".into(),
            ));
        };
        if seen.iter().any(|s| s == name.as_ref()) {
            return Err(err_at(
                Some(v.span()),
                Some(format!("{key}.name")),
                format!("`{name}` names two [[reward]] tables"),
            ));
        }
        seen.push(name.to_string());
    }
    Ok(())
}

type Found<'a, 'i> = Vec<(Vec<String>, Range<usize>, &'a toml::de::DeTable<'i>)>;

fn collect_tables<'a, 'i>(
    table: &'a toml::de::DeTable<'i>,
    pattern: &[&str],
    path: &mut Vec<String>,
    span: Option<Range<usize>>,
    found: &mut Found<'a, 'i>,
) {
    let Some((first, rest)) = pattern.split_first() else {
        found.push((path.clone(), span.unwrap_or(0..0), table));
        return;
    };
    let Some((_, value)) = table.iter().find(|(k, _)| k.get_ref() == first) else {
        return;
    };
    path.push((*first).to_string());
    match value.get_ref() {
        toml::de::DeValue::Table(t) => {
            collect_tables(t, rest, path, Some(value.span()), found);
        }
        toml::de::DeValue::Array(items) if rest.first() == Some(&"*") => {
            for (i, item) in items.iter().enumerate() {
                if let toml::de::DeValue::Table(t) = item.get_ref() {
                    path.push(format!("[{i}]"));
                    collect_tables(t, &rest[1..], path, Some(item.span()), found);
                    path.pop();
                }
            }
        }
        _ => {}
    }
    path.pop();
}

/// The dotted key at byte `offset`: a key whose name covers it, else the deepest value that does.
fn key_at(table: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) -> Option<String> {
    for (k, v) in table.iter() {
        path.push(k.get_ref().to_string());
        if k.span().contains(&offset) {
            let key = dotted(path);
            path.pop();
            return Some(key);
        }
        let found = match v.get_ref() {
            toml::de::DeValue::Table(t) => key_at(t, offset, path),
            toml::de::DeValue::Array(items) => {
                let mut found = None;
                for (i, item) in items.iter().enumerate() {
                    path.push(format!("[{i}]"));
                    found = match item.get_ref() {
                        toml::de::DeValue::Table(t) => key_at(t, offset, path),
                        _ => None,
                    }
                    .or_else(|| item.span().contains(&offset).then(|| dotted(path)));
                    path.pop();
                    if found.is_some() {
                        break;
                    }
                }
                found
            }
            _ => None,
        }
        .or_else(|| v.span().contains(&offset).then(|| dotted(path)));
        path.pop();
        if found.is_some() {
            return found;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_config_default_is_an_empty_train_table() {
        let parsed: TrainConfig = toml::from_str("").unwrap();
        assert_eq!(
            serde_json::to_value(TrainConfig::default()).unwrap(),
            serde_json::to_value(parsed).unwrap()
        );
    }
}
