//! The four plugin traits and their recipe configurations.
//!
//! Each plugin kind has two traits: a `*Config` trait, deserialized from a recipe table through
//! `#[typetag::serde(tag = "type")]`, whose `build` makes the working plugin, and the plugin trait
//! itself. All are object safe and carry no burn backend type parameter: a plugin that needs
//! tensors picks its runtime device from [`BuildContext::device`].
//!
//! Data moves in streams of groups: a stage hands a plugin a batch and the plugin passes each
//! finished group to a sink as soon as it is done, so a runner can write, checkpoint and resume
//! group by group.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;

use crate::error::{ConfigIssue, PluginError};
use crate::model::{Prompt, SampleGroup, ScoredGroup};

/// A progress hook: a plugin reports units of work (tokens, samples, groups) as it goes. The
/// runner backs it with a progress bar; tests use [`NoProgress`].
pub trait Progress: Send + Sync {
    /// Sets the total number of units, when known.
    fn set_total(&self, total: Option<u64>);
    /// Adds `n` finished units.
    fn advance(&self, n: u64);
    /// Shows a short status message.
    fn message(&self, message: &str);
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _total: Option<u64>) {}
    fn advance(&self, _n: u64) {}
    fn message(&self, _message: &str) {}
}

/// What a plugin's `build` gets from the runner.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The device the recipe or `--device` asked for, as written (`cpu`, `wgpu`, `cuda:0`, ...).
    /// Plugins that use burn resolve it through the model crate.
    pub device: String,
    /// The recipe's folder: relative paths in a plugin's configuration are resolved against it.
    pub base_dir: PathBuf,
    /// The run's seed.
    pub seed: u64,
    /// The device's memory in bytes when the recipe gives it (`[run] device_memory`): what a
    /// sampler with `batch_size = "auto"` sizes its rows from on a GPU.
    pub device_memory: Option<u64>,
}

impl BuildContext {
    /// A context for the CPU with base folder `base_dir`.
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        Self {
            device: "cpu".to_string(),
            base_dir: base_dir.into(),
            seed: 0,
            device_memory: None,
        }
    }

    /// `path` resolved against [`BuildContext::base_dir`] unless it is absolute.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What every plugin table answers the runner
// ---------------------------------------------------------------------------------------------

/// What the memory plan (`sweetspot run --plan`) needs to size a node that runs a local model
/// for inference: the model, the type its weights are held in, and the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferenceMemory {
    /// The model folder or GGUF file, as written in the recipe.
    pub model: PathBuf,
    /// The type the weights are held and computed in.
    pub dtype: crate::recipe::Precision,
    /// Sequences on the device at once, or `Auto` (a sampler's `batch_size = "auto"`: the
    /// rows [`crate::rows::auto_rows`] picks).
    pub batch_size: crate::rows::Rows,
    /// Padded tokens (or key/value slots) on the device at once, when bounded.
    pub max_batch_tokens: Option<usize>,
    /// Tokens generated per sequence (0 for a reward model).
    pub max_new_tokens: usize,
    /// 8-bit copies of the projections held beside the weights (`quantize`), if any.
    pub quantize: Option<crate::recipe::Quantize>,
}

/// A file or folder a plugin table reads, by the setting that names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PluginInput {
    /// The setting, relative to the table (`model`, `tokenizer`, `files[0]`, `a.b`): the runner
    /// names the input `<table>.<key>` in a node's identity and in its errors.
    pub key: String,
    /// The path as written in the recipe (resolve it with [`BuildContext::resolve`]).
    pub path: PathBuf,
}

impl PluginInput {
    /// The input named by setting `key`.
    pub fn new(key: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            key: key.into(),
            path: path.into(),
        }
    }
}

/// The execution settings a sampler or reward model has unless it says otherwise
/// ([`SamplerConfig::execution_settings`]): settings that change how the work is done, not what
/// it computes (a sample or a score does not depend on its batch or device beyond float
/// rounding, nor on which server of a fleet answers), so they stay out of a node's identity and
/// a run killed for lack of memory may resume with a smaller batch, or on another machine.
pub const EXECUTION_SETTINGS: &[&str] = &[
    "device",
    "batch_size",
    "max_batch_tokens",
    // Where and how a remote plugin asks (the `openai` sampler, the `http` reward): the same
    // questions to another fleet get the same answers.
    "endpoints",
    "timeout_s",
    "max_retries",
    "api_key_env",
];

/// A plugin table's settings as JSON (without its `type`): what a node's identity hashes.
pub fn settings_json<T: ?Sized + erased_serde::Serialize>(table: &T) -> serde_json::Value {
    erased_serde::serialize(table, serde_json::value::Serializer).unwrap_or_default()
}

/// Every string setting of `settings` that names an existing file or folder once resolved with
/// `ctx`, sorted by key: what a plugin that does not declare its inputs is taken to read (every
/// path it is given counts, so a changed file is never missed).
pub fn inputs_in_settings(settings: &serde_json::Value, ctx: &BuildContext) -> Vec<PluginInput> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), settings)];
    while let Some((key, v)) = stack.pop() {
        let join = |k: &str| {
            if key.is_empty() {
                k.to_string()
            } else {
                format!("{key}.{k}")
            }
        };
        match v {
            serde_json::Value::String(s)
                if !s.is_empty() && !key.is_empty() && ctx.resolve(Path::new(s)).exists() =>
            {
                out.push(PluginInput::new(key.clone(), s));
            }
            serde_json::Value::Object(m) => {
                stack.extend(m.iter().map(|(k, v)| (join(k), v)));
            }
            serde_json::Value::Array(a) => {
                stack.extend(
                    a.iter()
                        .enumerate()
                        .map(|(i, v)| (format!("{key}[{i}]"), v)),
                );
            }
            _ => {}
        }
    }
    out.sort();
    out
}

/// The paths of `inputs` that name something (`path` not empty), for a plugin's
/// [`SamplerConfig::inputs`].
pub fn declared_inputs<const N: usize>(inputs: [(&str, &Path); N]) -> Vec<PluginInput> {
    let mut out: Vec<PluginInput> = inputs
        .into_iter()
        .filter(|(_, p)| !p.as_os_str().is_empty())
        .map(|(k, p)| PluginInput::new(k, p))
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Sampler
// ---------------------------------------------------------------------------------------------

/// How many samples to draw, and from which random stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRequest {
    /// Samples per prompt.
    pub n: usize,
    /// The run's seed. The draw for (prompt id, sample index) must depend on this seed and those
    /// two only, never on which other prompts share a batch.
    pub seed: u64,
    /// Sample indices below this are already done for every prompt in the batch (resume).
    pub first_index: u32,
}

/// Draws `n` responses per prompt from a policy.
pub trait Sampler: Send {
    /// Samples `request.n` responses for every prompt in `prompts` and hands each prompt's group
    /// to `sink` as soon as that group is complete, in any order.
    fn sample(
        &mut self,
        prompts: &[Prompt],
        request: &SampleRequest,
        progress: &dyn Progress,
        sink: &mut dyn FnMut(SampleGroup) -> Result<(), PluginError>,
    ) -> Result<(), PluginError>;
}

/// A sampler's recipe table (`[sampler]`, with `type = "..."`).
///
/// Besides building the sampler, the table answers what the runner needs to plan a run: which
/// files it reads, which settings are execution settings, which local model it loads, and
/// copies of itself with another policy or eval's settings. The defaults suit a sampler that
/// loads no local model.
#[typetag::serde(tag = "type")]
pub trait SamplerConfig: dyn_clone::DynClone + fmt::Debug + Send + Sync {
    /// Checks the configuration and loads what the sampler needs.
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Sampler>, PluginError>;

    /// Checks the prompts before the model loads (their length against the model's context,
    /// say): `Err((i, why))` for the first prompt at fault, by index. The default accepts all.
    fn check_prompts(&self, ctx: &BuildContext, prompts: &[Prompt]) -> Result<(), (usize, String)> {
        let _ = (ctx, prompts);
        Ok(())
    }
    /// Checks every value that can be checked without loading a model (ranges, names, that
    /// named files exist), naming the key at fault. `sweetspot validate` and `sweetspot run`
    /// call it for every table before any stage starts. The default accepts everything.
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        let _ = ctx;
        Ok(())
    }

    /// The `type` this table was registered under (`burn`, `openai`).
    fn plugin_type(&self) -> &'static str {
        self.typetag_name()
    }

    /// The files and folders this sampler reads (its model, a tokenizer), by setting: each is
    /// fingerprinted into the identity of the nodes that use it (a changed file reruns them),
    /// and no output of the run may overwrite one. The default takes every string setting
    /// that names an existing file or folder ([`inputs_in_settings`]).
    fn inputs(&self, ctx: &BuildContext) -> Vec<PluginInput> {
        inputs_in_settings(&settings_json(self), ctx)
    }

    /// The settings that change how sampling runs, not what it draws (a device, a batch size,
    /// servers): they stay out of a node's identity. The default is [`EXECUTION_SETTINGS`]; a
    /// plugin with an execution setting of its own lists it with those it keeps.
    fn execution_settings(&self) -> &'static [&'static str] {
        EXECUTION_SETTINGS
    }

    /// The local model this sampler loads (a folder or a GGUF file, as written in the recipe),
    /// with the setting that names it; `None` when it samples from something that is not a
    /// local model (a server, whose model is a name). `sweetspot run` starts training and eval
    /// from this model when `[train] policy` is not given. The default is `None`.
    fn local_model(&self) -> Option<PluginInput> {
        None
    }

    /// This table loading `model` instead of its own (the policy an earlier round trained, or
    /// one being evaluated); `None` for a sampler without a local model (the default).
    fn with_policy(&self, model: &Path) -> Option<Box<dyn SamplerConfig>> {
        let _ = model;
        None
    }

    /// This table as `[eval]` samples with it: at `temperature` (0 is greedy) and, when given,
    /// at most `max_new_tokens` per response; `None` when the sampler cannot (the default).
    fn for_eval(
        &self,
        temperature: f32,
        max_new_tokens: Option<usize>,
    ) -> Option<Box<dyn SamplerConfig>> {
        let _ = (temperature, max_new_tokens);
        None
    }

    /// The local model this sampler runs and its batch, for the memory plan; `None` (the
    /// default) when it runs no local model, and the plan says its memory is not known.
    fn memory_use(&self) -> Option<InferenceMemory> {
        None
    }
}

dyn_clone::clone_trait_object!(SamplerConfig);

// ---------------------------------------------------------------------------------------------
// Reward model
// ---------------------------------------------------------------------------------------------

/// Scores samples.
pub trait RewardModel: Send {
    /// Names of the per-objective rewards this model returns, in order (empty when it returns
    /// only the scalar reward).
    fn objectives(&self) -> Vec<String> {
        Vec::new()
    }

    /// Scores every sample of every group in `groups` and hands each scored group to `sink`, in
    /// any order. A reward must not depend on which other samples share a batch.
    fn score(
        &mut self,
        groups: Vec<SampleGroup>,
        progress: &dyn Progress,
        sink: &mut dyn FnMut(ScoredGroup) -> Result<(), PluginError>,
    ) -> Result<(), PluginError>;
}

/// A reward model's recipe table (`[reward]`, with `type = "..."`).
#[typetag::serde(tag = "type")]
pub trait RewardModelConfig: dyn_clone::DynClone + fmt::Debug + Send + Sync {
    /// Checks the configuration and loads the reward model.
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn RewardModel>, PluginError>;
    /// Checks every value that can be checked without loading a model (ranges, names, that
    /// named files exist), naming the key at fault. `sweetspot validate` and `sweetspot run`
    /// call it for every table before any stage starts. The default accepts everything.
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        let _ = ctx;
        Ok(())
    }

    /// The `type` this table was registered under (`armorm`, `http`).
    fn plugin_type(&self) -> &'static str {
        self.typetag_name()
    }

    /// The files and folders this reward model reads, by setting (as
    /// [`SamplerConfig::inputs`]).
    fn inputs(&self, ctx: &BuildContext) -> Vec<PluginInput> {
        inputs_in_settings(&settings_json(self), ctx)
    }

    /// The settings that change how scoring runs, not the scores (as
    /// [`SamplerConfig::execution_settings`]).
    fn execution_settings(&self) -> &'static [&'static str] {
        EXECUTION_SETTINGS
    }

    /// Whether this model compares two responses (a pairwise judge, for `[eval.judge]`) rather
    /// than scoring one. The default is `false`.
    fn pairwise(&self) -> bool {
        false
    }

    /// The local model this reward model runs and its batch, for the memory plan (as
    /// [`SamplerConfig::memory_use`]); `None` by default.
    fn memory_use(&self) -> Option<InferenceMemory> {
        None
    }
}

dyn_clone::clone_trait_object!(RewardModelConfig);

// ---------------------------------------------------------------------------------------------
// Pair strategy
// ---------------------------------------------------------------------------------------------

/// Why a group gave no pair for a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SkipReason(pub Cow<'static, str>);

impl SkipReason {
    /// All rewards of the group are equal (sigma = 0).
    pub const SIGMA_ZERO: Self = Self(Cow::Borrowed("sigma_zero"));
    /// Chosen and rejected are the same sample.
    pub const SAME_SAMPLE: Self = Self(Cow::Borrowed("same_sample"));
    /// The chosen reward is not strictly higher than the rejected one.
    pub const CHOSEN_NOT_HIGHER: Self = Self(Cow::Borrowed("chosen_not_higher"));
    /// The group has fewer samples than the strategy needs (when the recipe skips such groups).
    pub const TOO_FEW_SAMPLES: Self = Self(Cow::Borrowed("too_few_samples"));
    /// The group has a NaN or infinite reward (when the recipe skips such groups).
    pub const INVALID_REWARD: Self = Self(Cow::Borrowed("invalid_reward"));

    /// A strategy's own reason.
    pub fn custom(reason: impl Into<String>) -> Self {
        Self(Cow::Owned(reason.into()))
    }

    /// The reason's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The outcome of one group for one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// A pair: positions in the group's `samples` (not sample indices).
    Pair {
        /// Position of the chosen sample.
        chosen: usize,
        /// Position of the rejected sample.
        rejected: usize,
    },
    /// No pair, and why.
    Skip(SkipReason),
}

impl Selection {
    /// The checks every strategy applies to a candidate pair: sigma = 0, the same sample twice,
    /// a chosen reward that is not strictly higher. `rewards` are the rewards of the samples the
    /// strategy used, `sigma` their population standard deviation.
    pub fn checked(rewards: &[f64], sigma: f64, chosen: usize, rejected: usize) -> Self {
        if sigma == 0.0 {
            Self::Skip(SkipReason::SIGMA_ZERO)
        } else if chosen == rejected {
            Self::Skip(SkipReason::SAME_SAMPLE)
        } else if rewards[chosen] <= rewards[rejected] {
            Self::Skip(SkipReason::CHOSEN_NOT_HIGHER)
        } else {
            Self::Pair { chosen, rejected }
        }
    }
}

/// Turns one prompt's scored group into chosen/rejected pairs, for one or more datasets at once.
pub trait PairStrategy: Send + Sync {
    /// The names of the datasets this strategy writes, in a fixed order; each becomes one output
    /// file. Names are unique within a run and safe in file names.
    fn datasets(&self) -> Vec<String>;

    /// The fewest samples a group must have. Smaller groups are an error, or a counted
    /// `too_few_samples` skip where the recipe says so, before [`PairStrategy::select`] is called.
    fn min_samples(&self) -> usize;

    /// Chooses one [`Selection`] per dataset, in the order of [`PairStrategy::datasets`], and
    /// pushes them to `out` (which is empty on entry). `group` has at least
    /// [`PairStrategy::min_samples`] samples, sorted by strictly increasing sample index, all with
    /// finite rewards.
    fn select(&self, group: &ScoredGroup, out: &mut Vec<Selection>) -> Result<(), PluginError>;

    /// For each dataset, in the order of [`PairStrategy::datasets`], a name of the response it
    /// picks as chosen and as rejected (`max`, `-2`, `min-of-first-5`), the same name meaning
    /// the same response of a group wherever two strategies of a pairs stage use it (this
    /// includes the n the strategy cuts the group to, if its own). Used to plan, not to select:
    /// the run's reference node counts how many distinct responses the trainings need. `None`
    /// (the default): not known.
    fn responses(&self) -> Option<Vec<[String; 2]>> {
        None
    }
}

/// A pair strategy's recipe table (`[[pairs.strategies]]`, with `type = "..."`).
#[typetag::serde(tag = "type")]
pub trait PairStrategyConfig: dyn_clone::DynClone + fmt::Debug + Send + Sync {
    /// Checks the configuration and makes the strategy.
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn PairStrategy>, PluginError>;
    /// Checks every value without reading data, naming the key at fault. The default builds
    /// the strategy (cheap: no data, no model) and takes the key from its error.
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        self.build(ctx)
            .map(drop)
            .map_err(|e| ConfigIssue::from_build_error(&e))
    }

    /// The `type` this table was registered under (`grid`, `sigma`).
    fn plugin_type(&self) -> &'static str {
        self.typetag_name()
    }

    /// The n this table sets itself (its own `n`: the first n samples of each group), which
    /// `[pairs] n` would contradict. The default is `None`.
    fn own_n(&self) -> Option<usize> {
        None
    }
}

dyn_clone::clone_trait_object!(PairStrategyConfig);

// ---------------------------------------------------------------------------------------------
// Preference loss
// ---------------------------------------------------------------------------------------------

/// One batch of pairs as the trainer hands it to a loss. Every tensor has shape `[batch]` and
/// lives on the trainer's device; log-probabilities are summed over response tokens (a loss that
/// wants averages divides by the token counts).
#[derive(Debug, Clone)]
pub struct LossInput {
    /// Policy log-probabilities of the chosen responses (tracked for gradients).
    pub policy_chosen: Tensor<1>,
    /// Policy log-probabilities of the rejected responses.
    pub policy_rejected: Tensor<1>,
    /// Reference log-probabilities of the chosen responses (`None` for reference-free losses).
    pub reference_chosen: Option<Tensor<1>>,
    /// Reference log-probabilities of the rejected responses.
    pub reference_rejected: Option<Tensor<1>>,
    /// Response tokens of each chosen response, as floats.
    pub chosen_tokens: Tensor<1>,
    /// Response tokens of each rejected response, as floats.
    pub rejected_tokens: Tensor<1>,
}

/// What a loss returns.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// Per-pair losses, shape `[batch]`; the trainer averages them.
    pub losses: Tensor<1>,
    /// Implicit rewards of the chosen responses, shape `[batch]` (the trainer only logs them).
    pub chosen_rewards: Tensor<1>,
    /// Implicit rewards of the rejected responses, shape `[batch]`.
    pub rejected_rewards: Tensor<1>,
    /// The chosen log-probabilities as this loss uses them (summed, or averaged for SimPO),
    /// logged as `logps/chosen`.
    pub chosen_logps: Tensor<1>,
    /// The rejected log-probabilities as this loss uses them, logged as `logps/rejected`.
    pub rejected_logps: Tensor<1>,
}

/// A preference-optimization loss over response log-probabilities.
pub trait PreferenceLoss: Send + Sync {
    /// Whether the loss needs reference-model log-probabilities.
    fn needs_reference(&self) -> bool;
    /// The per-pair losses and implicit rewards for `input`.
    fn compute(&self, input: LossInput) -> Result<LossOutput, PluginError>;
}

/// A loss's recipe table (`[train.loss]`, with `type = "..."`).
#[typetag::serde(tag = "type")]
pub trait PreferenceLossConfig: dyn_clone::DynClone + fmt::Debug + Send + Sync {
    /// Checks the configuration and makes the loss.
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError>;
    /// Checks every value that can be checked without loading a model (ranges, names, that
    /// named files exist), naming the key at fault. `sweetspot validate` and `sweetspot run`
    /// call it for every table before any stage starts. The default accepts everything.
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        let _ = ctx;
        Ok(())
    }

    /// The `type` this table was registered under (`dpo`, `simpo`).
    fn plugin_type(&self) -> &'static str {
        self.typetag_name()
    }
}

dyn_clone::clone_trait_object!(PreferenceLossConfig);
