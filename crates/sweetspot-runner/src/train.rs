//! The train stage: pairs in, a trained policy out (see `sweetspot_train::run`).

use sweetspot_core::BuildContext;
use sweetspot_core::recipe::{Schedule, TrainConfig};
use sweetspot_train::OptimizerSettings;
use sweetspot_train::run::{Decay, TrainSettings, TrainSummary, run_training};

use crate::error::RunError;
use crate::progress::BarProgress;

/// Runs (or resumes) the train stage of a recipe.
pub fn run_train(
    cfg: TrainConfig,
    ctx: &BuildContext,
    quiet: bool,
) -> Result<TrainSummary, RunError> {
    let loss = cfg.loss.build(ctx).map_err(|source| RunError::Plugin {
        plugin: "train.loss".into(),
        source,
    })?;
    let bad = |m: &str| RunError::Config(format!("[train]: {m}"));
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        return Err(bad("`learning_rate` must be > 0"));
    }
    if !(0.0..=1.0).contains(&cfg.warmup_ratio) {
        return Err(bad("`warmup_ratio` must be in [0, 1]"));
    }
    let device = sweetspot_model::resolve_device(&ctx.device)
        .map_err(|e| RunError::Train(sweetspot_train::TrainError::Model(e)))?;
    let settings = TrainSettings {
        pairs: ctx.resolve(&cfg.pairs),
        policy: ctx.resolve(&cfg.policy),
        output: ctx.resolve(&cfg.output),
        device,
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        micro_batch_size: cfg.micro_batch_size.min(cfg.batch_size),
        learning_rate: cfg.learning_rate,
        warmup_ratio: cfg.warmup_ratio,
        decay: match cfg.schedule {
            Schedule::Linear => Decay::Linear,
            Schedule::Cosine => Decay::Cosine,
            Schedule::Constant => Decay::Constant,
        },
        optimizer: OptimizerSettings {
            beta1: cfg.adam_beta1 as f32,
            beta2: cfg.adam_beta2 as f32,
            epsilon: cfg.adam_epsilon as f32,
            weight_decay: cfg.weight_decay as f32,
            max_grad_norm: (cfg.max_grad_norm > 0.0).then_some(cfg.max_grad_norm),
        },
        save_steps: cfg.save_steps,
        seed: ctx.seed,
        dtype: cfg.dtype,
        gradient_checkpointing: cfg.gradient_checkpointing,
        stop_after: None,
    };
    let bar = BarProgress::new("train", "steps", quiet);
    let summary = run_training(&settings, loss, &bar)?;
    bar.finish();
    Ok(summary)
}
