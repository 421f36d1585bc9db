//! A recipe resolved for planning: what the user wrote ([`Recipe`]) turned once into what the
//! graph is built from ([`Resolved`]): paths absolute, rounds unrolled into one prompts file per
//! round, defaults filled (the starting policy, eval's reward model and sampler), stage inputs
//! connected, datasets and trained policies named, every plugin table kept as its own type.
//!
//! Invariants:
//! - Resolution reads no data and loads no model; it builds pair strategies (cheap) to learn
//!   their dataset names.
//! - Nothing below [`resolve`] reads a plugin's settings by key: what the runner needs from a
//!   plugin it asks through the plugin traits (`local_model`, `with_policy`, `for_eval`,
//!   `inputs`, `execution_settings`, `own_n`, `pairwise`).
//! - It runs on a recipe that [`crate::validate_recipe`] accepted; what validation refuses by
//!   key, resolution reports as a plain configuration error.

use std::path::{Path, PathBuf};

use sweetspot_core::recipe::{OutputFormat, PairsConfig, Recipe, TrainConfig};
use sweetspot_core::{BuildContext, PreferenceLossConfig, RewardModelConfig, SamplerConfig};

use crate::error::RunError;
use crate::paths::{reads_upstream, resolved};
use crate::plan::{Variant, continue_with, policy_variants, run_dir, run_name, train_losses};

/// Where a stage's input comes from.
#[derive(Debug, Clone)]
pub enum StageInput {
    /// The stage before's product (the input was left out, or names that stage's `output`).
    Upstream,
    /// A user's file.
    File(PathBuf),
}

/// `[generate]` with its sampler.
#[derive(Debug, Clone)]
pub struct GenerateSpec {
    /// The prompts of each round (one file: the same prompts every round).
    pub prompts: Vec<PathBuf>,
    /// Samples per prompt.
    pub n: usize,
    /// The sampler.
    pub sampler: Box<dyn SamplerConfig>,
    /// A copy of the samples the recipe asks for.
    pub output: Option<PathBuf>,
}

/// `[score]` with its reward model.
#[derive(Debug, Clone)]
pub struct ScoreSpec {
    /// The samples.
    pub input: StageInput,
    /// The reward models: one (no name, `[reward]`) or several named (`[[reward]]`; one named
    /// model is laid out as `[reward]` is).
    pub rewards: Vec<(Option<String>, Box<dyn RewardModelConfig>)>,
    /// Groups per call.
    pub groups_per_call: usize,
    /// A copy of the scores the recipe asks for.
    pub output: Option<PathBuf>,
}

/// `[pairs]`.
#[derive(Debug, Clone)]
pub struct PairsSpec {
    /// The table without paths or `n` (each node sets its own).
    pub config: PairsConfig,
    /// The scored samples.
    pub input: StageInput,
    /// One pair set per n (`None`: every sample).
    pub ns: Vec<Option<usize>>,
    /// The datasets each pair set holds, in the order the strategies write them.
    pub datasets: Vec<String>,
    /// The pairs files' extension.
    pub ext: String,
    /// A copy the recipe asks for.
    pub output: Option<PathBuf>,
}

/// `[train] pairs`: a user's file, or one the run's pairs stage writes.
#[derive(Debug, Clone)]
pub enum TrainPairs {
    /// A user's file.
    File(PathBuf),
    /// A file inside `[pairs] output`: `rel` inside the pairs node's folder.
    Made {
        /// The path inside the node's folder (`pairs/<dataset>.jsonl`).
        rel: String,
        /// The path as the recipe names it.
        path: PathBuf,
    },
}

/// `[train]`.
#[derive(Debug, Clone)]
pub struct TrainSpec {
    /// The table without paths, lists or losses (each node sets its one loss).
    pub config: TrainConfig,
    /// The losses (`loss`, else `losses`).
    pub losses: Vec<Box<dyn PreferenceLossConfig>>,
    /// Every policy a round trains.
    pub variants: Vec<Variant>,
    /// `pairs`, when training on a file rather than on `datasets`.
    pub pairs: Option<TrainPairs>,
    /// The policy the next round continues with.
    pub continue_with: Option<String>,
    /// A copy of the policy the recipe asks for.
    pub output: Option<PathBuf>,
}

/// `[eval]`.
#[derive(Debug, Clone)]
pub struct EvalSpec {
    /// The held-out prompts.
    pub prompts: PathBuf,
    /// The sampler at eval's temperature and length.
    pub sampler: Box<dyn SamplerConfig>,
    /// The reward model (`[eval.reward]`, else `[reward]`).
    pub reward: Box<dyn RewardModelConfig>,
    /// The pairwise judge.
    pub judge: Option<Box<dyn RewardModelConfig>>,
    /// Groups per scoring call (`[score]`'s, else 64).
    pub groups_per_call: usize,
    /// Bootstrap resamples.
    pub bootstrap: usize,
}

/// A recipe as the graph is built from it.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The run's name.
    pub name: String,
    /// The run folder (absolute).
    pub dir: PathBuf,
    /// The recipe's folder (absolute).
    pub base_dir: PathBuf,
    /// The run's seed.
    pub seed: u64,
    /// Rounds.
    pub rounds: usize,
    /// The devices to run on.
    pub devices: Vec<String>,
    /// The policy training starts from and eval's baseline: `[train] policy`, else the
    /// sampler's local model.
    pub start_policy: Option<PathBuf>,
    /// `[generate]`.
    pub generate: Option<GenerateSpec>,
    /// `[score]`.
    pub score: Option<ScoreSpec>,
    /// `[pairs]`.
    pub pairs: Option<PairsSpec>,
    /// `[train]`.
    pub train: Option<TrainSpec>,
    /// `[eval]`.
    pub eval: Option<EvalSpec>,
}

impl Resolved {
    /// The pairs files' extension.
    pub fn pairs_ext(&self) -> &str {
        self.pairs.as_ref().map_or("jsonl", |p| p.ext.as_str())
    }
}

fn config_err(m: impl std::fmt::Display) -> RunError {
    RunError::Config(m.to_string())
}

/// Resolves a checked recipe (see [`crate::validate_recipe`]).
pub fn resolve(r: &Recipe, recipe_path: &Path, ctx: &BuildContext) -> Result<Resolved, RunError> {
    // Every path absolute, so that no stage resolves one again.
    let ctx = &BuildContext {
        base_dir: std::path::absolute(&ctx.base_dir).unwrap_or_else(|_| ctx.base_dir.clone()),
        ..ctx.clone()
    };
    let rounds = r.run.rounds.max(1);
    let generate = resolve_generate(r, ctx);
    let score = resolve_score(r, ctx);
    let pairs = resolve_pairs(r, ctx)?;
    let start_policy = match r.train.as_ref().and_then(|t| t.policy.as_ref()) {
        Some(p) => Some(ctx.resolve(p)),
        // Only a model the sampler loads from disk: a server's model name is no path.
        None => r
            .sampler
            .as_ref()
            .and_then(|s| s.local_model())
            .map(|m| ctx.resolve(&m.path)),
    };
    let train = resolve_train(r, ctx, pairs.as_ref(), rounds)?;
    let eval = resolve_eval(r, ctx)?;
    // The pool, else the one device of the context (`--device` replaces the pool: the CLI sets
    // `devices` after planning).
    let mut devices = r.run.devices();
    if devices.len() < 2 {
        devices = vec![ctx.device.clone()];
    }
    Ok(Resolved {
        name: run_name(r, recipe_path),
        dir: run_dir(r, recipe_path, ctx),
        base_dir: ctx.base_dir.clone(),
        seed: ctx.seed,
        rounds,
        devices,
        start_policy,
        generate,
        score,
        pairs,
        train,
        eval,
    })
}

/// An input left out, or naming the upstream stage's own output: that stage's product (when
/// there is an upstream stage); else the user's file.
fn stage_input(
    ctx: &BuildContext,
    upstream: bool,
    given: Option<&PathBuf>,
    upstream_output: Option<&PathBuf>,
) -> Option<StageInput> {
    if upstream && reads_upstream(ctx, given, upstream_output) {
        return Some(StageInput::Upstream);
    }
    given.map(|g| StageInput::File(ctx.resolve(g)))
}

fn resolve_generate(r: &Recipe, ctx: &BuildContext) -> Option<GenerateSpec> {
    let (g, sampler) = (r.generate.as_ref()?, r.sampler.as_ref()?);
    Some(GenerateSpec {
        prompts: g.prompts.to_vec().iter().map(|p| ctx.resolve(p)).collect(),
        n: g.n,
        sampler: sampler.clone(),
        output: g.output.as_ref().map(|o| ctx.resolve(o)),
    })
}

fn resolve_score(r: &Recipe, ctx: &BuildContext) -> Option<ScoreSpec> {
    let (s, reward) = (r.score.as_ref()?, r.reward.as_ref()?);
    let upstream = r.generate.is_some() && r.sampler.is_some();
    let upstream_out = r.generate.as_ref().and_then(|g| g.output.as_ref());
    Some(ScoreSpec {
        // Left out with no [generate]: `plan` reports it (validation refuses it first).
        input: stage_input(ctx, upstream, s.input.as_ref(), upstream_out)
            .unwrap_or(StageInput::Upstream),
        rewards: if reward.is_several() {
            reward
                .models()
                .into_iter()
                .map(|(n, m)| (n.map(str::to_string), dyn_clone::clone_box(m)))
                .collect()
        } else {
            reward
                .first()
                .map(|m| (None, dyn_clone::clone_box(m)))
                .into_iter()
                .collect()
        },
        groups_per_call: s.groups_per_call,
        output: s.output.as_ref().map(|o| ctx.resolve(o)),
    })
}

fn resolve_pairs(r: &Recipe, ctx: &BuildContext) -> Result<Option<PairsSpec>, RunError> {
    let Some(p) = &r.pairs else {
        return Ok(None);
    };
    let mut datasets = Vec::new();
    for s in &p.strategies {
        let built = s
            .build(ctx)
            .map_err(|e| config_err(format!("[pairs]: {e}")))?;
        datasets.extend(built.datasets());
    }
    if p.layout == sweetspot_core::recipe::PairsLayout::Listwise {
        datasets.push(crate::pairs::listwise_name(p.listwise_k));
    }
    let ns = match &p.n {
        Some(n) => n.to_vec().into_iter().map(Some).collect(),
        None => vec![None],
    };
    let upstream = r.score.is_some() && r.reward.is_some();
    let upstream_out = r.score.as_ref().and_then(|s| s.output.as_ref());
    Ok(Some(PairsSpec {
        config: PairsConfig {
            input: None,
            output: None,
            n: None,
            rewards: Default::default(),
            ..p.clone()
        },
        input: stage_input(ctx, upstream, p.input.as_ref(), upstream_out)
            .unwrap_or(StageInput::Upstream),
        ns,
        datasets,
        ext: p.format.unwrap_or(OutputFormat::Jsonl).extension().into(),
        output: p.output.as_ref().map(|o| ctx.resolve(o)),
    }))
}

fn resolve_train(
    r: &Recipe,
    ctx: &BuildContext,
    pairs: Option<&PairsSpec>,
    rounds: usize,
) -> Result<Option<TrainSpec>, RunError> {
    let Some(t) = &r.train else {
        return Ok(None);
    };
    let (datasets, ns) = match pairs {
        Some(p) => (p.datasets.clone(), p.ns.clone()),
        None => (Vec::new(), vec![None]),
    };
    let variants = policy_variants(t, r.run.seed, &datasets, &ns);
    let continue_with = match &r.run.continue_with {
        Some(c) if rounds > 1 => {
            let names: Vec<String> = variants.iter().map(|v| v.name.clone()).collect();
            Some(continue_with(c, &names).map_err(config_err)?)
        }
        _ => None,
    };
    let train_pairs = t.pairs.as_ref().map(|p| {
        let path = ctx.resolve(p);
        // A file the pairs stage writes (the explicit chain): its place in the pairs node.
        let made = pairs
            .zip(r.pairs.as_ref().and_then(|pc| pc.output.as_ref()))
            .and_then(|(spec, o)| {
                let o = resolved(&ctx.resolve(o));
                let rp = resolved(&path);
                if rp == o {
                    let ext = &spec.ext;
                    spec.datasets.first().map(|d| format!("pairs/{d}.{ext}"))
                } else {
                    rp.strip_prefix(&o)
                        .ok()
                        .map(|rest| format!("pairs/{}", rest.to_string_lossy()))
                }
            });
        match made {
            Some(rel) => TrainPairs::Made { rel, path },
            None => TrainPairs::File(path),
        }
    });
    Ok(Some(TrainSpec {
        config: TrainConfig {
            pairs: None,
            policy: None,
            output: None,
            datasets: None,
            seeds: None,
            loss: None,
            losses: Vec::new(),
            ..t.clone()
        },
        losses: train_losses(t),
        variants,
        pairs: train_pairs,
        continue_with,
        output: t.output.as_ref().map(|o| ctx.resolve(o)),
    }))
}

/// The reward model `[eval]` uses when it names none: the one model, or with several the one
/// `[pairs] rank_by` names; an aggregate ranks no eval response, so it is refused.
pub fn eval_reward<'a>(
    rewards: &'a sweetspot_core::recipe::RewardTables,
    pairs: Option<&PairsConfig>,
) -> Result<&'a (dyn RewardModelConfig + 'static), String> {
    if !rewards.is_several() {
        return rewards
            .first()
            .ok_or_else(|| "[eval]: no reward model".to_string());
    }
    match pairs.and_then(|p| p.rank_by.as_ref()) {
        Some(sweetspot_core::recipe::RankBy::Model(name)) => rewards
            .named(name)
            .ok_or_else(|| format!("[pairs] `rank_by` names no [[reward]] model `{name}`")),
        _ => Err(
            "several [[reward]] models and `[pairs] rank_by` names none of them: name \
                  the eval's reward model in [eval.reward]"
                .to_string(),
        ),
    }
}

fn resolve_eval(r: &Recipe, ctx: &BuildContext) -> Result<Option<EvalSpec>, RunError> {
    let (Some(e), Some(sampler)) = (&r.eval, &r.sampler) else {
        return Ok(None);
    };
    let sampler = sampler
        .for_eval(e.temperature as f32, e.max_new_tokens)
        .ok_or_else(|| {
            config_err(format!(
                "[eval]: the `{}` sampler cannot answer the eval prompts",
                sampler.plugin_type()
            ))
        })?;
    let reward = match (&e.reward, &r.reward) {
        (Some(own), _) => own.clone(),
        (None, Some(rm)) => {
            dyn_clone::clone_box(eval_reward(rm, r.pairs.as_ref()).map_err(config_err)?)
        }
        (None, None) => return Err(config_err("[eval]: no reward model")),
    };
    Ok(Some(EvalSpec {
        prompts: ctx.resolve(&e.prompts),
        sampler,
        reward,
        judge: e.judge.clone(),
        groups_per_call: r.score.as_ref().map_or(64, |s| s.groups_per_call),
        bootstrap: e.bootstrap,
    }))
}
