//! `sweetspot score`: score samples with a reward model.

use std::path::PathBuf;

use clap::Args;
use sweetspot_core::BuildContext;

use crate::common::{
    DEVICE_OVERRIDE, check_recipe, context, flag_recipe, param_value, path_value, recipe_or_flags,
};
use crate::{Failure, ModelFlags};

/// `sweetspot score`: from a recipe, or from flags.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Take the [reward] and [score] tables from this recipe.
    #[arg(long, short, conflicts_with_all = ["model"])]
    pub recipe: Option<PathBuf>,
    /// Samples (JSONL, long layout, as `sweetspot generate` writes them). With --recipe,
    /// overrides [score].input.
    #[arg(long, short, required_unless_present = "recipe")]
    pub input: Option<PathBuf>,
    /// Scored samples out (JSONL, long layout). With --recipe, overrides [score].output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// The reward model type (see `sweetspot plugins --kind reward-model`).
    #[arg(long = "type", short = 't', default_value = "seq-cls")]
    pub kind: String,
    /// The reward model: a model folder (or, for `judge`, a .gguf file).
    #[arg(long, short, required_unless_present = "recipe")]
    pub model: Option<PathBuf>,
    /// Most sequences per batch.
    #[arg(long, default_value_t = sweetspot_burn_reward::default_batch())]
    pub batch_size: usize,
    /// Any other reward-model key, as key=value (value in TOML syntax); repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// The weights' float type: f32 (default), bf16 or f16.
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub dtype: Option<String>,
    /// Compute the backbone's projections with 8-bit weights and activations (llama.cpp's Q8_0
    /// blocks): q8_0. CPU only, with f32 weights; `seq-cls`, `skywork` and `armorm` models.
    #[arg(long, value_parser = ["q8_0"])]
    pub quantize: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model_flags: ModelFlags,
}

pub(crate) fn score_cmd(args: ScoreArgs, quiet: bool) -> Result<(), Failure> {
    let _ = DEVICE_OVERRIDE.set(args.model_flags.device.clone());
    let usage = |message: String| Failure { message, code: 2 };
    let (recipe, base, origin, text) = recipe_or_flags(args.recipe.as_ref(), || {
        let (Some(model), Some(input)) = (&args.model, &args.input) else {
            return Err(usage("give --recipe, or --model and --input".into()));
        };
        let Some(output) = &args.output else {
            return Err(usage("give --output (a .jsonl file)".into()));
        };
        let mut reward = toml::Table::new();
        reward.insert("type".into(), toml::Value::String(args.kind.clone()));
        reward.insert("model".into(), path_value(model));
        reward.insert(
            "batch_size".into(),
            toml::Value::Integer(args.batch_size as i64),
        );
        for kv in &args.params {
            let (k, v) = param_value(kv)?;
            reward.insert(k, v);
        }
        if let Some(d) = &args.dtype {
            reward.insert("dtype".into(), toml::Value::String(d.clone()));
        }
        if let Some(q) = &args.quantize {
            reward.insert("quantize".into(), toml::Value::String(q.clone()));
        }
        let mut score = toml::Table::new();
        score.insert("input".into(), path_value(input));
        score.insert("output".into(), path_value(output));
        flag_recipe([("reward", reward), ("score", score)])
    })?;
    let ctx = context(&recipe, base);
    let mut recipe = recipe;
    if let (Some(_), Some(c)) = (&args.recipe, recipe.score.as_mut()) {
        // Paths given on the command line are relative to where it runs.
        if let Some(o) = &args.output {
            c.output = Some(std::path::absolute(o).unwrap_or_else(|_| o.clone()));
        }
        if let Some(i) = &args.input {
            c.input = Some(std::path::absolute(i).unwrap_or_else(|_| i.clone()));
        }
    }
    let stages = sweetspot_runner::Stages {
        score: true,
        ..sweetspot_runner::Stages::NONE
    };
    check_recipe(&recipe, &text, &origin, &ctx, stages)?;
    // Validation refuses several [[reward]] models outside `sweetspot run`.
    let reward = recipe
        .reward
        .filter(|r| !r.is_several())
        .and_then(|r| r.into_first());
    let (Some(reward), Some(cfg)) = (reward, recipe.score) else {
        return Err(usage(format!(
            "{}: the recipe needs [reward] and [score] tables",
            origin.display()
        )));
    };
    let job = score_job(reward, cfg, ctx, quiet, args.model_flags.restart);
    let s = sweetspot_runner::run_score(job)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    } else {
        print_score_summary(&s);
    }
    Ok(())
}

pub(crate) fn score_job(
    reward: Box<dyn sweetspot_core::RewardModelConfig>,
    cfg: sweetspot_core::recipe::ScoreConfig,
    ctx: BuildContext,
    quiet: bool,
    restart: bool,
) -> sweetspot_runner::ScoreJob {
    sweetspot_runner::ScoreJob {
        input: ctx.resolve(cfg.input.as_deref().unwrap_or(std::path::Path::new(""))),
        output: ctx.resolve(cfg.output.as_deref().unwrap_or(std::path::Path::new(""))),
        reward,
        ctx,
        groups_per_call: cfg.groups_per_call,
        quiet,
        restart,
    }
}

pub(crate) fn print_score_summary(s: &sweetspot_runner::ScoreSummary) {
    if s.already_complete {
        println!(
            "score: {} is already complete ({} samples, same settings and inputs); nothing to do",
            s.output.display(),
            s.samples
        );
        return;
    }
    let resumed = if s.resumed_groups > 0 {
        format!(" ({} resumed from an interrupted run)", s.resumed_groups)
    } else {
        String::new()
    };
    println!(
        "score: scored {} samples of {} prompts{resumed} into {} in {:.1}s",
        s.samples,
        s.groups,
        s.output.display(),
        s.seconds
    );
    if !s.objectives.is_empty() {
        println!("objective_rewards per sample: {}", s.objectives.join(", "));
    }
}
