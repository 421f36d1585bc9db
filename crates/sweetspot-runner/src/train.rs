//! The train stage: pairs in, a trained policy out (see `sweetspot_train::run`).

use sweetspot_core::BuildContext;
use sweetspot_core::recipe::{TrainBackend, TrainConfig};
use sweetspot_train::OptimizerSettings;
use sweetspot_train::run::{TrainSettings, TrainSummary, run_training};

use crate::error::RunError;
use crate::identity::{Identity, Resume, reconcile, write_record};
use crate::progress::BarProgress;

/// Runs (or resumes) the train stage of a recipe. The run folder's `record.json` says what it
/// holds: a rerun with other settings or inputs is refused unless `restart` (which discards the
/// folder's checkpoint, metrics and policy), and a complete run is not extended.
pub fn run_train(
    cfg: TrainConfig,
    ctx: &BuildContext,
    quiet: bool,
    restart: bool,
) -> Result<TrainSummary, RunError> {
    run_train_with(cfg, ctx, quiet, restart, Reference::BesidePairs)
}

/// Where a training's reference log-probabilities come from.
#[derive(Debug, Clone)]
pub enum Reference {
    /// Computed, and cached beside the pairs file.
    BesidePairs,
    /// Computed, and cached in this folder (a run node's own, so that a node never writes into
    /// another's).
    Cache(std::path::PathBuf),
    /// Looked up in a store a reference node computed for the whole sweep.
    Shared(std::path::PathBuf),
}

/// The pairs, policy and output of a `[train]` table with one of each, resolved.
fn train_paths(
    cfg: &TrainConfig,
    ctx: &BuildContext,
) -> Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf), RunError> {
    let need = |v: &Option<std::path::PathBuf>, key: &str| {
        v.as_ref().map(|p| ctx.resolve(p)).ok_or_else(|| {
            RunError::Config(format!(
                "[train]: `{key}` is not given (it is needed outside `sweetspot run`)"
            ))
        })
    };
    Ok((
        need(&cfg.pairs, "pairs")?,
        need(&cfg.policy, "policy")?,
        need(&cfg.output, "output")?,
    ))
}

/// [`run_train`], with the reference log-probabilities from `reference`.
pub fn run_train_with(
    cfg: TrainConfig,
    ctx: &BuildContext,
    quiet: bool,
    restart: bool,
    reference: Reference,
) -> Result<TrainSummary, RunError> {
    let (pairs, policy, output) = train_paths(&cfg, ctx)?;
    crate::paths::check_outputs(
        &[pairs.clone(), policy.clone()],
        std::slice::from_ref(&output),
    )?;
    if !pairs.is_file() {
        return Err(RunError::Config(format!(
            "[train]: `pairs`: {} does not exist",
            pairs.display()
        )));
    }
    // Where the run reads and writes is not what it computes: the paths are inputs (fingerprinted
    // below) or the output, not settings.
    let settings = TrainConfig {
        output: None,
        pairs: None,
        policy: None,
        // The interpreter and the accelerate config are where the run happens, not what it
        // computes (both absent for the native trainer).
        python: None,
        accelerate_config: None,
        // Data parallelism: the one-device result up to float rounding, as another device is.
        devices: None,
        ..cfg.clone()
    };
    let settings =
        serde_json::to_value(&settings).map_err(|e| RunError::Config(format!("[train]: {e}")))?;
    let mut identity = Identity::new("train", &settings);
    identity
        .settings
        .insert("seed".into(), serde_json::json!(ctx.seed));
    identity.data_input("pairs", &pairs)?;
    identity.model_input("policy", &policy)?;
    let record = output.join("record.json");
    let checkpoint = output.join("checkpoint");
    let policy_out = output.join("policy");
    let partial = checkpoint.join("state.json").exists() || output.join("metrics.jsonl").exists();
    let fingerprint = || {
        if policy_out.is_dir() {
            crate::identity::model_fingerprint(&policy_out).map(Some)
        } else {
            Ok(None)
        }
    };
    let created = !output.exists();
    std::fs::create_dir_all(&output).map_err(|source| {
        RunError::Write(sweetspot_io::WriteError::Io {
            path: output.clone(),
            source,
        })
    })?;
    sweetspot_io::remove_stale_temp_files(&output);
    let _ = std::fs::remove_file(output.join("metrics.jsonl.tmp"));
    match reconcile(&identity, &record, &output, fingerprint, partial, restart)? {
        Resume::Complete => {
            return Ok(TrainSummary {
                policy: Some(policy_out),
                total_steps: 0,
                resumed_steps: 0,
                steps: 0,
                last_loss: None,
                reference_cached: false,
                already_complete: true,
            });
        }
        Resume::Fresh => {
            for dir in [&checkpoint, &policy_out] {
                let _ = std::fs::remove_dir_all(dir);
            }
            let _ = std::fs::remove_file(output.join("metrics.jsonl"));
        }
        Resume::Continue => {}
    }
    // The trainer seam: the TRL backend computes its own reference (TRL's frozen copy).
    let trained = match cfg.backend {
        TrainBackend::Native => run_train_inner(cfg, ctx, quiet, reference),
        TrainBackend::Trl => crate::trl::run(&cfg, ctx, (&pairs, &policy, &output), quiet),
    };
    let summary = match trained {
        Ok(s) => s,
        Err(e) => {
            // A run that failed before its first step leaves nothing behind.
            if !output.join("metrics.jsonl").exists() && !checkpoint.exists() {
                let _ = std::fs::remove_file(&record);
                if created {
                    let _ = std::fs::remove_dir_all(&output);
                }
            }
            return Err(e);
        }
    };
    if summary.policy.is_some() {
        write_record(&record, &identity, fingerprint()?)?;
    }
    Ok(summary)
}

fn run_train_inner(
    cfg: TrainConfig,
    ctx: &BuildContext,
    quiet: bool,
    reference: Reference,
) -> Result<TrainSummary, RunError> {
    let (pairs, policy, output) = train_paths(&cfg, ctx)?;
    let (reference_cache, reference_store) = match reference {
        Reference::BesidePairs => (None, None),
        Reference::Cache(dir) => (Some(dir), None),
        Reference::Shared(store) => (None, Some(store)),
    };
    let (Some(loss), true) = (&cfg.loss, cfg.losses.is_empty()) else {
        return Err(RunError::Config(
            "[train]: give one `[train.loss]` (a list of losses is for `sweetspot run`)".into(),
        ));
    };
    let loss = loss.build(ctx).map_err(|source| RunError::Plugin {
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
    let resolve = |spec: &str| {
        sweetspot_model::resolve_device(spec)
            .map_err(|e| RunError::Train(sweetspot_train::TrainError::Model(e)))
    };
    // `[train] devices`: the training's own devices (it runs alone), the first its main one.
    let data_parallel = cfg
        .data_parallel_devices()
        .map_err(|e| bad(&e))?
        .iter()
        .map(|d| resolve(d))
        .collect::<Result<Vec<_>, _>>()?;
    let device = match data_parallel.first() {
        Some(d) => d.clone(),
        None => resolve(&ctx.device)?,
    };
    let settings = TrainSettings {
        pairs,
        policy,
        output,
        reference_cache,
        reference_store,
        device,
        data_parallel,
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        micro_batch_size: cfg.micro_batch_size.min(cfg.batch_size),
        learning_rate: cfg.learning_rate,
        warmup_ratio: cfg.warmup_ratio,
        decay: cfg.schedule,
        optimizer: OptimizerSettings::from_config(&cfg),
        save_steps: cfg.save_steps,
        seed: ctx.seed,
        dtype: cfg.dtype,
        gradient_checkpointing: cfg.gradient_checkpointing,
        stop_after: None,
        adapter: cfg.adapter.clone(),
    };
    let bar = BarProgress::new("train", "steps", quiet);
    let summary = run_training(&settings, loss, &bar)?;
    bar.finish();
    Ok(summary)
}
