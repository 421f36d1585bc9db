//! `sweetspot train`: preference optimization of a policy on pairs.

use std::path::PathBuf;

use clap::Args;

use crate::common::{
    DEVICE_OVERRIDE, check_recipe, context, flag_recipe, param_value, path_value, recipe_or_flags,
};
use crate::{Failure, ModelFlags};

/// `sweetspot train`: from a recipe, or from flags.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Take the [train] table from this recipe.
    #[arg(long, short, conflicts_with_all = ["pairs", "policy"])]
    pub recipe: Option<PathBuf>,
    /// Pairs in TRL's format (JSONL), as `sweetspot pairs` writes them.
    #[arg(long, required_unless_present = "recipe")]
    pub pairs: Option<PathBuf>,
    /// The policy to start from: a model folder or a .gguf file.
    #[arg(long, short = 'm', required_unless_present = "recipe")]
    pub policy: Option<PathBuf>,
    /// The run folder (trained policy, metrics.jsonl, checkpoint). With --recipe, overrides
    /// [train].output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// The loss (see `sweetspot plugins --kind preference-loss`).
    #[arg(long, default_value = "dpo")]
    pub loss: String,
    /// The loss's beta.
    #[arg(long)]
    pub beta: Option<f64>,
    /// Any other loss key, as key=value (value in TOML syntax); repeatable.
    #[arg(long = "loss-param", value_name = "KEY=VALUE")]
    pub loss_params: Vec<String>,
    /// Any other [train] key, as key=value (value in TOML syntax); repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Seed of the data order.
    #[arg(long, default_value_t = sweetspot_core::recipe::RunConfig::default().seed)]
    pub seed: u64,
    /// Compute type: f32 (default), or bf16 / f16 mixed precision (weights stay f32).
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub dtype: Option<String>,
    #[command(flatten)]
    pub model_flags: ModelFlags,
}

pub(crate) fn train_cmd(args: TrainArgs, quiet: bool) -> Result<(), Failure> {
    let _ = DEVICE_OVERRIDE.set(args.model_flags.device.clone());
    let usage = |message: String| Failure { message, code: 2 };
    let (recipe, base, origin, text) = recipe_or_flags(args.recipe.as_ref(), || {
        let (Some(pairs), Some(policy)) = (&args.pairs, &args.policy) else {
            return Err(usage("give --recipe, or --pairs and --policy".into()));
        };
        let Some(output) = &args.output else {
            return Err(usage("give --output (the run folder)".into()));
        };
        let mut loss = toml::Table::new();
        loss.insert("type".into(), toml::Value::String(args.loss.clone()));
        if let Some(b) = args.beta {
            loss.insert("beta".into(), toml::Value::Float(b));
        }
        for kv in &args.loss_params {
            let (k, v) = param_value(kv)?;
            loss.insert(k, v);
        }
        let mut train = toml::Table::new();
        train.insert("pairs".into(), path_value(pairs));
        train.insert("policy".into(), path_value(policy));
        train.insert("output".into(), path_value(output));
        for kv in &args.params {
            let (k, v) = param_value(kv)?;
            train.insert(k, v);
        }
        if let Some(d) = &args.dtype {
            train.insert("dtype".into(), toml::Value::String(d.clone()));
        }
        train.insert("loss".into(), toml::Value::Table(loss));
        let mut run = toml::Table::new();
        run.insert("seed".into(), toml::Value::Integer(args.seed as i64));
        flag_recipe([("run", run), ("train", train)])
    })?;
    let ctx = context(&recipe, base);
    let mut recipe = recipe;
    if let (Some(_), Some(o), Some(t)) = (&args.recipe, &args.output, recipe.train.as_mut()) {
        t.output = Some(std::path::absolute(o).unwrap_or_else(|_| o.clone()));
    }
    if recipe.train.is_none() {
        return Err(usage(format!(
            "{}: the recipe needs a [train] table",
            origin.display()
        )));
    }
    let stages = sweetspot_runner::Stages {
        train: true,
        ..sweetspot_runner::Stages::NONE
    };
    check_recipe(&recipe, &text, &origin, &ctx, stages)?;
    let Some(cfg) = recipe.train else {
        return Err(usage("the recipe needs a [train] table".into()));
    };
    let s = sweetspot_runner::run_train(cfg, &ctx, quiet, args.model_flags.restart)?;
    print_train_summary(&s);
    Ok(())
}

pub(crate) fn print_train_summary(s: &sweetspot_runner::TrainSummary) {
    let loss = s
        .last_loss
        .map(|l| format!(", last loss {l:.4}"))
        .unwrap_or_default();
    let resumed = if s.resumed_steps > 0 {
        format!(" ({} resumed from an interrupted run)", s.resumed_steps)
    } else {
        String::new()
    };
    match &s.policy {
        Some(p) if s.already_complete => println!(
            "train: already complete (same settings and inputs); policy in {}",
            p.display()
        ),
        Some(p) => println!(
            "train: trained {} steps{resumed}{loss}; policy in {}",
            s.total_steps,
            p.display()
        ),
        None => println!("stopped after {} of {} steps{loss}", s.steps, s.total_steps),
    }
}
