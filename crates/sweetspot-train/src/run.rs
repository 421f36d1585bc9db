//! A whole training run: pairs file in, trained policy out, resumable.
//!
//! Layout of the run folder (`output`):
//! - `metrics.jsonl`: one line per optimizer step, TRL's metric names (`loss`, `grad_norm`,
//!   `learning_rate`, `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`,
//!   `rewards/margins`, `logps/chosen`, `logps/rejected`) plus `step` and `epoch`;
//! - `checkpoint/`: the policy (Hugging Face layout), `optimizer.bin`, `state.json` (steps done,
//!   parameter ids), written every `save_steps` steps and at the end (each file by rename);
//! - `policy/`: the trained policy in Hugging Face's layout, written at the end; with
//!   `[train.adapter]`, a PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`,
//!   the tokenizer) whose `base_model_name_or_path` is the absolute path of the base, or, with
//!   `merge = true`, the merged model in Hugging Face's layout.
//!
//! With LoRA the checkpoint holds the adapters (a PEFT folder) and the optimizer state of the
//! adapters only; resuming puts them back on the same frozen base.
//!
//! A killed run resumes from `checkpoint/`: the policy, the optimizer's moments and the step
//! come back, `metrics.jsonl` is cut to that step, and the batches go on in the same order (the
//! order of epoch e is a shuffle seeded by (seed, e)), so the final weights equal an
//! uninterrupted run's.
//!
//! Reference log-probabilities are computed once, with the initial policy (with LoRA: the base,
//! the adapters off) on the training device (the same kernels, so implicit rewards start at exactly 0), and cached beside the pairs
//! file as `<pairs>.ref-<key>.json`, the key hashing the pairs file, the policy's files (path,
//! size, modification time) and the chat template; a later run with the same three reuses it.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sweetspot_core::recipe::AdapterConfig;
use sweetspot_core::{Completion, Message, PairRow, PreferenceLoss, Progress, PromptContent};
use sweetspot_model::export::write_atomic;
use sweetspot_model::{Llama, Precision, Tokenizer};

use crate::{
    OptimizerSettings, StepMetrics, TokenizedPair, TrainError, Trainer, pair_sequences,
    response_logps,
};

/// The learning-rate schedule after warm-up: the recipe's `[train] schedule`, one type from the
/// recipe to the optimizer.
pub use sweetspot_core::recipe::Schedule as Decay;

/// Everything a run needs, paths resolved.
#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// Pairs (JSONL, TRL's format).
    pub pairs: PathBuf,
    /// The initial policy: a model folder or a `.gguf` file.
    pub policy: PathBuf,
    /// The run folder.
    pub output: PathBuf,
    /// The device (without autodiff; the run adds it).
    pub device: Device,
    /// Data parallelism: the devices of one replica each, the first `device` itself (without
    /// autodiff; see [`crate::parallel`]). Empty: `device` alone.
    pub data_parallel: Vec<Device>,
    /// Passes over the pairs.
    pub epochs: usize,
    /// Pairs per optimizer step.
    pub batch_size: usize,
    /// Pairs per forward/backward pass.
    pub micro_batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Warm-up fraction of the steps.
    pub warmup_ratio: f64,
    /// Decay after warm-up.
    pub decay: Decay,
    /// AdamW and clipping.
    pub optimizer: OptimizerSettings,
    /// Checkpoint every this many steps (0: only at the end).
    pub save_steps: usize,
    /// Seed of the data order.
    pub seed: u64,
    /// Compute precision (mixed precision when not f32; weights stay f32).
    pub dtype: Precision,
    /// Recompute memory-bound activations in the backward pass.
    pub gradient_checkpointing: bool,
    /// Stop after this many optimizer steps of the run (a test's stand-in for a kill).
    pub stop_after: Option<usize>,
    /// Where the reference log-probabilities are cached (a folder); `None`: beside the pairs.
    pub reference_cache: Option<PathBuf>,
    /// Reference log-probabilities computed once for a whole sweep
    /// ([`crate::reference::compute_reference`]): looked up instead of computed or cached.
    pub reference_store: Option<PathBuf>,
    /// LoRA (`[train.adapter]`): train adapters on the frozen base held in its `base_dtype`,
    /// and export them as a PEFT adapter folder (or merged, with `merge`). `None`: every
    /// parameter trains.
    pub adapter: Option<AdapterConfig>,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// The trained policy's folder (absent when the run was stopped early).
    pub policy: Option<PathBuf>,
    /// Optimizer steps in the whole run.
    pub total_steps: usize,
    /// Steps done by earlier, interrupted runs.
    pub resumed_steps: usize,
    /// Steps done in all so far.
    pub steps: usize,
    /// The last step's metrics, if any.
    pub last_loss: Option<f64>,
    /// Whether the reference log-probabilities came from the cache.
    pub reference_cached: bool,
    /// The run was already complete, with the same settings and inputs: nothing ran.
    pub already_complete: bool,
}

/// The learning rate of optimizer step `step` (0-based) of `total`, as transformers' schedulers
/// compute it (`get_linear_schedule_with_warmup` and friends: the first warm-up step is at 0).
pub fn learning_rate(peak: f64, step: usize, total: usize, warmup: usize, decay: Decay) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match decay {
        Decay::Constant => peak,
        Decay::Linear => peak * (1.0 - progress).max(0.0),
        Decay::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()).max(0.0),
    }
}

/// Reads a pairs file and tokenizes every pair as TRL does.
pub fn read_pairs(path: &Path, tok: &Tokenizer) -> Result<Vec<TokenizedPair>, TrainError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |field: &str, msg: String| {
            TrainError::Input(format!(
                "{}:{}: field `{field}`: {msg}",
                path.display(),
                i + 1
            ))
        };
        let p: PairRow<'_> = serde_json::from_str(line).map_err(|e| {
            // Name the field at fault, in words (serde's untagged-enum message names none).
            let value: Result<serde_json::Value, _> = serde_json::from_str(line);
            let Ok(serde_json::Value::Object(obj)) = value else {
                return TrainError::Input(format!(
                    "{}:{}: not a JSON object: {e}",
                    path.display(),
                    i + 1
                ));
            };
            for field in ["prompt", "chosen", "rejected"] {
                let Some(v) = obj.get(field) else { continue };
                let ok = if field == "prompt" {
                    serde_json::from_value::<PromptContent>(v.clone()).is_ok()
                } else {
                    serde_json::from_value::<Completion<'_>>(v.clone()).is_ok()
                };
                if !ok {
                    return at(
                        field,
                        "expected a string or a list of {\"role\", \"content\"} messages".into(),
                    );
                }
            }
            TrainError::Input(format!("{}:{}: not a pair row: {e}", path.display(), i + 1))
        })?;
        let prompt = p.prompt.ok_or_else(|| at("prompt", "missing".into()))?;
        if p.chosen.is_none() {
            // Rows of the pairs stage's other layouts: named, with what the trainer reads.
            for (field, layout) in [("completion", "unpaired"), ("completions", "listwise")] {
                if line.contains(&format!("\"{field}\"")) {
                    return Err(at(
                        "chosen",
                        format!(
                            "missing, and the row has `{field}`: a row of `[pairs] layout = \
                             \"{layout}\"`; the trainer reads pairs only (`prompt`, `chosen`, \
                             `rejected`: `layout = \"pairs\"`)"
                        ),
                    ));
                }
            }
        }
        let chosen = p.chosen.ok_or_else(|| at("chosen", "missing".into()))?;
        let rejected = p.rejected.ok_or_else(|| at("rejected", "missing".into()))?;
        for (field, c) in [("chosen", &chosen), ("rejected", &rejected)] {
            if c.is_empty() {
                return Err(at(
                    field,
                    "an empty response: a pair needs text in both chosen and rejected (the \
                     pairs stage leaves out empty responses)"
                        .into(),
                ));
            }
        }
        let pair = tokenize_pair_checked(
            tok,
            &prompt.to_messages(),
            &chosen.into_messages(),
            &rejected.into_messages(),
        )
        .map_err(|e| TrainError::Input(format!("{}:{}: {e}", path.display(), i + 1)))?;
        out.push(pair);
    }
    if out.is_empty() {
        return Err(TrainError::Input(format!(
            "{}: the file has no pairs (it is empty or only blank lines)",
            path.display()
        )));
    }
    Ok(out)
}

fn tokenize_pair_checked(
    tok: &Tokenizer,
    prompt: &[Message],
    chosen: &[Message],
    rejected: &[Message],
) -> Result<TokenizedPair, TrainError> {
    let p = crate::tokenize_pair(tok, prompt, chosen, rejected)?;
    if p.chosen.is_empty() || p.rejected.is_empty() || p.prompt.is_empty() {
        return Err(TrainError::Input(
            "the pair has an empty prompt or completion after tokenization".into(),
        ));
    }
    Ok(p)
}

fn cache_key(
    pairs: &Path,
    policy: &Path,
    tok: &Tokenizer,
    dtype: Precision,
) -> Result<String, TrainError> {
    let mut h = Sha256::new();
    // f32 keys stay as they were before the dtype existed.
    if dtype != Precision::F32 {
        h.update(dtype.name().as_bytes());
    }
    let bytes =
        std::fs::read(pairs).map_err(|e| TrainError::Input(format!("{}: {e}", pairs.display())))?;
    h.update(&bytes);
    let files: Vec<PathBuf> = if policy.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(policy)
            .map_err(|e| TrainError::Input(format!("{}: {e}", policy.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        v
    } else {
        vec![policy.to_path_buf()]
    };
    for f in files {
        let meta = std::fs::metadata(&f)
            .map_err(|e| TrainError::Input(format!("{}: {e}", f.display())))?;
        let abs = std::path::absolute(&f).unwrap_or(f);
        h.update(abs.to_string_lossy().as_bytes());
        h.update(meta.len().to_le_bytes());
        if let Ok(m) = meta.modified()
            && let Ok(d) = m.duration_since(std::time::UNIX_EPOCH)
        {
            h.update(d.as_nanos().to_le_bytes());
        }
    }
    h.update(tok.chat_template().unwrap_or_default().as_bytes());
    let d = h.finalize();
    Ok(d.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

#[derive(Serialize, Deserialize)]
struct RefCache {
    chosen: Vec<f32>,
    rejected: Vec<f32>,
}

fn reference_logps(
    policy: &Llama,
    pairs: &[TokenizedPair],
    micro: usize,
    dtype: Precision,
    progress: &dyn Progress,
) -> Result<RefCache, TrainError> {
    let frozen = crate::reference::frozen_reference(policy, dtype)?;
    let mut chosen = Vec::with_capacity(pairs.len());
    let mut rejected = Vec::with_capacity(pairs.len());
    progress.message("reference log-probabilities");
    for batch in pairs.chunks(micro.max(1)) {
        let seqs = pair_sequences(batch);
        let (l, _) = response_logps(&frozen, &seqs)?;
        let v = l
            .detach()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Input(format!("{e:?}")))?;
        chosen.extend_from_slice(&v[..batch.len()]);
        rejected.extend_from_slice(&v[batch.len()..]);
    }
    Ok(RefCache { chosen, rejected })
}

#[derive(Serialize, Deserialize)]
struct State {
    steps: usize,
    param_ids: Vec<u64>,
}

struct Ids(Vec<u64>);

impl ModuleVisitor for Ids {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.id.val());
    }
}

struct SetIds(std::vec::IntoIter<u64>);

impl ModuleMapper for SetIds {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.0.next() {
            Some(id) => Param::initialized(ParamId::from(id), param.val()),
            None => param,
        }
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Input(format!("{}: {e}", path.display()))
}

/// The LoRA settings and the base's path of a run with adapters.
type AdapterRun<'a> = Option<(&'a AdapterConfig, &'a Path)>;

fn save_checkpoint(
    dir: &Path,
    trainer: &Trainer,
    tok: &Tokenizer,
    steps: usize,
    adapter: AdapterRun<'_>,
) -> Result<(), TrainError> {
    // Written into a fresh folder, then swapped in, so a kill never leaves half a checkpoint.
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let Some(policy) = trainer.policy() else {
        return Err(TrainError::Input("the trainer lost its policy".into()));
    };
    let plain = Llama::from_params(
        &policy.config,
        trainer
            .policy_params()
            .ok_or_else(|| TrainError::Input("no policy".into()))?,
        policy.device(),
    );
    match adapter {
        // LoRA: only the adapters (the base is the run's input, unchanged).
        Some((cfg, base)) => plain.save_adapter(&tmp, tok, cfg, base)?,
        None => plain.save_pretrained(&tmp, tok)?,
    }
    trainer
        .optimizer()
        .save(tmp.join("optimizer.bin"))
        .map_err(|e| TrainError::Input(format!("saving the optimizer: {e:?}")))?;
    let mut ids = Ids(Vec::new());
    match &policy.params().adapters {
        Some(a) => a.visit(&mut ids),
        None => policy.params().visit(&mut ids),
    }
    let state = serde_json::to_vec(&State {
        steps,
        param_ids: ids.0,
    })
    .map_err(|e| TrainError::Input(e.to_string()))?;
    write_atomic(&tmp.join("state.json"), &state)?;
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(io_err(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The batches of the whole run, in order: epoch e's pairs shuffled by (seed, e), cut into
/// `batch_size` steps.
fn schedule(n: usize, epochs: usize, batch: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut steps = Vec::new();
    for e in 0..epochs {
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            seed ^ (e as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        order.shuffle(&mut rng);
        for c in order.chunks(batch) {
            steps.push(c.to_vec());
        }
    }
    steps
}

fn metrics_line(m: &StepMetrics, step: usize, epoch: f64) -> String {
    serde_json::json!({
        "step": step,
        "epoch": epoch,
        "loss": m.loss,
        "grad_norm": m.grad_norm,
        "learning_rate": m.lr,
        "rewards/chosen": m.rewards_chosen,
        "rewards/rejected": m.rewards_rejected,
        "rewards/accuracies": m.rewards_accuracies,
        "rewards/margins": m.rewards_margins,
        "logps/chosen": m.logps_chosen,
        "logps/rejected": m.logps_rejected,
    })
    .to_string()
}

/// The initial policy on `device`: every parameter trainable, or, with `[train.adapter]`, the
/// base in its `base_dtype`, frozen, with fresh adapters (seeded by the run's seed). A policy
/// given as a PEFT adapter folder is merged into its base first (a LoRA run from one must
/// export merged: its adapters would not apply to the folder's base).
fn load_policy(s: &TrainSettings, device: &Device) -> Result<(Llama, Tokenizer), TrainError> {
    let Some(a) = &s.adapter else {
        let (policy, tok) = sweetspot_model::load_causal_lm(&s.policy, device, Precision::F32)?;
        if policy.has_adapters() {
            return Ok((policy.merged().map_params(|p| p.map(&mut Trainable)), tok));
        }
        return Ok((policy, tok));
    };
    if a.lora_dropout != 0.0 {
        return Err(TrainError::Input(
            "[train.adapter] `lora_dropout`: only 0 is supported".into(),
        ));
    }
    if s.dtype != Precision::F32 {
        return Err(TrainError::Input(format!(
            "[train] `dtype` = \"{}\" with [train.adapter]: set `[train.adapter] base_dtype` \
             instead (the adapters always compute in f32)",
            s.dtype
        )));
    }
    let (base, tok) = sweetspot_model::load_causal_lm(&s.policy, device, a.base_dtype)?;
    let base = if base.has_adapters() {
        if !a.merge {
            return Err(TrainError::Input(format!(
                "[train] `policy`: {} is a LoRA adapter folder; a LoRA run from it needs \
                 `[train.adapter] merge = true` (new adapters would not apply to its base)",
                s.policy.display()
            )));
        }
        base.merged()
    } else {
        base
    };
    Ok((base.with_new_adapters(a, s.seed)?, tok))
}

/// Makes every parameter trainable (a merged adapter policy trained in full).
struct Trainable;

impl ModuleMapper for Trainable {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.require_grad())
    }
}

/// Runs (or resumes) a training run.
pub fn run_training(
    s: &TrainSettings,
    loss: Box<dyn PreferenceLoss>,
    progress: &dyn Progress,
) -> Result<TrainSummary, TrainError> {
    if s.batch_size == 0 || s.micro_batch_size == 0 || s.epochs == 0 {
        return Err(TrainError::Input(
            "`epochs`, `batch_size` and `micro_batch_size` must be at least 1".into(),
        ));
    }
    sweetspot_model::precision::check_supported(&s.device, s.dtype)?;
    let train_device = |d: &Device| {
        if s.gradient_checkpointing {
            d.clone().autodiff().gradient_checkpointing()
        } else {
            d.clone().autodiff()
        }
    };
    let device = train_device(&s.device);
    if let Some(first) = s.data_parallel.first()
        && *first != s.device
    {
        return Err(TrainError::Input(
            "data parallelism: the first device must be the run's device".into(),
        ));
    }
    for d in s.data_parallel.iter().skip(1) {
        sweetspot_model::precision::check_supported(d, s.dtype)?;
    }
    let replicas: Vec<Device> = s.data_parallel.iter().map(train_device).collect();
    let (policy, tok) = load_policy(s, &device)?;
    // The base of a LoRA run, as its adapter folder names it (absolute).
    let base_path = std::fs::canonicalize(&s.policy)
        .or_else(|_| std::path::absolute(&s.policy))
        .unwrap_or_else(|_| s.policy.clone());
    let adapter: AdapterRun<'_> = s.adapter.as_ref().map(|a| (a, base_path.as_path()));
    // The type the reference runs in: the compute type, or a LoRA base's own type.
    let ref_dtype = s.adapter.as_ref().map_or(s.dtype, |a| a.base_dtype);
    if policy.config.rope_freqs.is_some() {
        // Refused before any step: the trained policy could not be exported.
        return Err(TrainError::Input(format!(
            "{}: a GGUF with `rope_freqs.weight` (llama.cpp's per-frequency RoPE factors) cannot \
             be exported after training, since a config.json could not state them; train from \
             the model's safetensors checkpoint",
            s.policy.display()
        )));
    }
    let pairs = read_pairs(&s.pairs, &tok)?;
    let max = policy.max_positions();
    if let Some((i, p)) = pairs
        .iter()
        .enumerate()
        .find(|(_, p)| p.prompt.len() + p.chosen.len().max(p.rejected.len()) > max)
    {
        return Err(TrainError::Input(format!(
            "{}: pair {} has {} tokens, more than the policy's {max} positions",
            s.pairs.display(),
            i + 1,
            p.prompt.len() + p.chosen.len().max(p.rejected.len())
        )));
    }
    std::fs::create_dir_all(&s.output).map_err(io_err(&s.output))?;

    // Reference log-probabilities: cached beside the pairs file.
    let mut reference_cached = false;
    let refs = if let (true, Some(store)) = (loss.needs_reference(), &s.reference_store) {
        let (chosen, rejected) =
            crate::reference::ReferenceStore::open(store)?.lookup(&pairs, &s.pairs)?;
        reference_cached = true;
        Some(RefCache { chosen, rejected })
    } else if loss.needs_reference() {
        let key = cache_key(&s.pairs, &s.policy, &tok, ref_dtype)?;
        let mut name = s.pairs.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".ref-{key}.json"));
        let cache = match &s.reference_cache {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                dir.join(name)
            }
            None => s.pairs.with_file_name(name),
        };
        match std::fs::read(&cache)
            .ok()
            .and_then(|b| serde_json::from_slice::<RefCache>(&b).ok())
            .filter(|c| c.chosen.len() == pairs.len() && c.rejected.len() == pairs.len())
        {
            Some(c) => {
                reference_cached = true;
                Some(c)
            }
            None => {
                let c = reference_logps(&policy, &pairs, s.micro_batch_size, ref_dtype, progress)?;
                let bytes = serde_json::to_vec(&c).map_err(|e| TrainError::Input(e.to_string()))?;
                write_atomic(&cache, &bytes)?;
                Some(c)
            }
        }
    } else {
        None
    };

    let plan = schedule(pairs.len(), s.epochs, s.batch_size, s.seed);
    let total = plan.len();
    let warmup = (s.warmup_ratio * total as f64).ceil() as usize;
    let checkpoint = s.output.join("checkpoint");
    let metrics_path = s.output.join("metrics.jsonl");
    // A killed run's temporary folders are never resumed from: remove them.
    for leftover in ["policy.tmp", "checkpoint.tmp", "checkpoint.old"] {
        let _ = std::fs::remove_dir_all(s.output.join(leftover));
    }

    // Resume.
    let mut start = 0;
    // No reference model: the cached log-probabilities come with each step.
    let mut trainer = match std::fs::read(checkpoint.join("state.json")) {
        Ok(bytes) => {
            let state: State = serde_json::from_slice(&bytes)
                .map_err(|e| TrainError::Input(format!("{}: {e}", checkpoint.display())))?;
            let ids = || SetIds(state.param_ids.clone().into_iter());
            let model = match adapter {
                // LoRA: the same frozen base, the checkpoint's adapters on it.
                Some((cfg, _)) => policy
                    .without_adapters()
                    .with_adapter_tensors(
                        cfg,
                        &checkpoint.join(sweetspot_model::lora::ADAPTER_WEIGHTS),
                    )?
                    .map_params(|mut p| {
                        p.adapters = p.adapters.map(|a| a.map(&mut ids()));
                        p
                    }),
                None => {
                    // The checkpoint's weights replace the initial ones: free those first.
                    drop(policy);
                    Llama::from_pretrained(&checkpoint, &device)?.map_params(|p| p.map(&mut ids()))
                }
            };
            let mut t =
                Trainer::new(model, None, loss, s.optimizer)?.with_compute_precision(s.dtype)?;
            t.load_optimizer(&checkpoint.join("optimizer.bin"))?;
            let t = t.with_data_parallel(&replicas)?;
            start = state.steps;
            // Keep exactly the metrics of the steps the checkpoint holds.
            let kept: String = std::fs::read_to_string(&metrics_path)
                .unwrap_or_default()
                .lines()
                .take(start)
                .map(|l| format!("{l}\n"))
                .collect();
            write_atomic(&metrics_path, kept.as_bytes())?;
            tracing::info!(steps = start, "resuming from {}", checkpoint.display());
            t
        }
        Err(_) => {
            let _ = std::fs::remove_file(&metrics_path);
            Trainer::new(policy, None, loss, s.optimizer)?
                .with_compute_precision(s.dtype)?
                .with_data_parallel(&replicas)?
        }
    };
    let mut metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(io_err(&metrics_path))?;
    progress.set_total(Some(total as u64));
    progress.advance(start as u64);
    let per_epoch = total.div_ceil(s.epochs);
    let mut last_loss = None;
    let end = s.stop_after.map_or(total, |k| (start + k).min(total));
    for (step, batch) in plan.iter().enumerate().take(end).skip(start) {
        let lr = learning_rate(s.learning_rate, step, total, warmup, s.decay);
        let chunk: Vec<&TokenizedPair> = batch.iter().map(|&i| &pairs[i]).collect();
        let reference = refs.as_ref().map(|r| {
            (
                batch.iter().map(|&i| r.chosen[i]).collect::<Vec<_>>(),
                batch.iter().map(|&i| r.rejected[i]).collect::<Vec<_>>(),
            )
        });
        let m = trainer.accumulate_step(&chunk, reference.as_ref(), s.micro_batch_size, lr)?;
        last_loss = Some(m.loss);
        let epoch = (step + 1) as f64 / per_epoch as f64;
        writeln!(metrics_file, "{}", metrics_line(&m, step + 1, epoch))
            .and_then(|_| metrics_file.flush())
            .map_err(io_err(&metrics_path))?;
        progress.advance(1);
        progress.message(&format!("loss {:.4}", m.loss));
        let done = step + 1;
        // The last step is followed by the export, not a checkpoint (a kill during the export
        // resumes from the last checkpoint and reaches the same weights).
        if done < total && ((s.save_steps > 0 && done % s.save_steps == 0) || done == end) {
            save_checkpoint(&checkpoint, &trainer, &tok, done, adapter)?;
        }
    }
    let steps = end;
    let policy_dir = if steps == total {
        let dir = s.output.join("policy");
        let Some(p) = trainer.policy() else {
            return Err(TrainError::Input("the trainer lost its policy".into()));
        };
        let params = trainer
            .policy_params()
            .ok_or_else(|| TrainError::Input("no policy".into()))?;
        // Written into a temporary folder and renamed: `policy/` exists only complete.
        let tmp = s.output.join("policy.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let trained = Llama::from_params(&p.config, params, p.device());
        match adapter {
            Some((cfg, base)) if !cfg.merge => trained.save_adapter(&tmp, &tok, cfg, base)?,
            _ => trained
                .merged()
                .save_pretrained_from(&tmp, &tok, Some(&s.policy))?,
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
        // A finished run is never extended: its checkpoint has no further use.
        let _ = std::fs::remove_dir_all(&checkpoint);
        Some(dir)
    } else {
        None
    };
    Ok(TrainSummary {
        policy: policy_dir,
        total_steps: total,
        resumed_steps: start,
        steps,
        last_loss,
        reference_cached,
        already_complete: false,
    })
}
