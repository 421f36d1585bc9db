//! sweetspot-train: preference optimization of a Llama-family policy on burn.
//!
//! - [`tokenize_pair`]: a TRL conversational pair to token ids as TRL's `DPOTrainer` makes them:
//!   the prompt rendered with the generation prompt, prompt + completion rendered whole, and the
//!   completion starting where the two diverge.
//! - [`response_logps`]: per-sequence log-probabilities of the completion tokens only (prompt and
//!   padding masked), chosen and rejected in one batch.
//! - [`Trainer::step`]: one optimizer step: policy forward on the autodiff device, the
//!   [`PreferenceLoss`] plugin, backward, global-norm gradient clipping as
//!   `torch.nn.utils.clip_grad_norm_` does it, and AdamW with every hyper-parameter explicit.
//!
//! Invariants:
//! - The loss sees summed response log-probabilities and token counts; nothing else about the
//!   batch (see `sweetspot_core::LossInput`).
//! - Gradients are clipped by their global norm over all parameters (burn's own clipping is per
//!   tensor, which is not what TRL does); the logged `grad_norm` is the norm before clipping.
//! - With LoRA adapters only the adapters train (the base is frozen: no gradients, no optimizer
//!   state, no weight decay); gradients are clipped over the adapters; the reference is the base
//!   with the adapters off, never a second copy of the weights (`tests/lora.rs` against TRL +
//!   PEFT).
//! - Parity with TRL is the proof: `tests/trl.rs` replays two steps of TRL's DPOTrainer (and of
//!   CPOTrainer's SimPO loss) from `scripts/trl_dpo_reference.py`.

pub mod parallel;
pub mod reference;
pub mod run;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use sweetspot_core::recipe::TrainConfig;
use sweetspot_core::{LossInput, Message, PluginError, PreferenceLoss};
use sweetspot_model::llama::LlamaParams;
use sweetspot_model::{Llama, ModelError, Precision, Tokenizer};

/// Errors of the trainer.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The loss plugin failed.
    #[error("loss: {0}")]
    Loss(#[from] PluginError),
    /// Bad input: an empty batch, a pair without completion tokens.
    #[error("{0}")]
    Input(String),
}

/// One preference pair as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    /// The prompt (rendered with the generation prompt, cut where the completions start).
    pub prompt: Vec<u32>,
    /// The chosen completion.
    pub chosen: Vec<u32>,
    /// The rejected completion.
    pub rejected: Vec<u32>,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Tokenizes a conversational pair the way TRL's `DPOTrainer` does.
pub fn tokenize_pair(
    tok: &Tokenizer,
    prompt: &[Message],
    chosen: &[Message],
    rejected: &[Message],
) -> Result<TokenizedPair, TrainError> {
    let prompt_ids = tok.encode_messages(prompt, true)?;
    let full = |completion: &[Message]| {
        let mut m = prompt.to_vec();
        m.extend_from_slice(completion);
        tok.encode_messages(&m, false)
    };
    let with_chosen = full(chosen)?;
    let with_rejected = full(rejected)?;
    let cut =
        common_prefix(&prompt_ids, &with_chosen).min(common_prefix(&prompt_ids, &with_rejected));
    Ok(TokenizedPair {
        prompt: prompt_ids[..cut].to_vec(),
        chosen: with_chosen[cut..].to_vec(),
        rejected: with_rejected[cut..].to_vec(),
    })
}

/// The sequences of a batch of pairs as [`response_logps`] takes them: every (prompt, chosen),
/// then every (prompt, rejected).
pub fn pair_sequences<P: std::borrow::Borrow<TokenizedPair>>(pairs: &[P]) -> Vec<(&[u32], &[u32])> {
    let pairs: Vec<&TokenizedPair> = pairs.iter().map(|p| p.borrow()).collect();
    pairs
        .iter()
        .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
        .chain(
            pairs
                .iter()
                .map(|p| (p.prompt.as_slice(), p.rejected.as_slice())),
        )
        .collect()
}

/// Summed log-probabilities of each sequence's completion tokens, `[sequences]`, and the number
/// of completion tokens of each. `seqs` are (prompt, completion) pairs; they are right-padded
/// into one batch.
pub fn response_logps(
    model: &Llama,
    seqs: &[(&[u32], &[u32])],
) -> Result<(Tensor<1>, Vec<usize>), TrainError> {
    let n = seqs.len();
    let t = seqs
        .iter()
        .map(|(p, c)| p.len() + c.len())
        .max()
        .ok_or_else(|| TrainError::Input("an empty batch".into()))?;
    let device = model.device().clone();
    let mut tokens = vec![0i64; n * t];
    let mut positions = vec![0i64; n * t];
    let mut key_mask = vec![false; n * t];
    // target[r, i] is the token at i + 1; weight 1 where that token is part of the completion.
    let mut targets = vec![0i64; n * (t - 1).max(1)];
    let mut weights = vec![0f32; n * (t - 1).max(1)];
    let mut counts = Vec::with_capacity(n);
    for (r, (p, c)) in seqs.iter().enumerate() {
        if c.is_empty() || p.is_empty() {
            return Err(TrainError::Input(format!(
                "sequence {r} has an empty prompt or completion"
            )));
        }
        let all: Vec<u32> = p.iter().chain(c.iter()).copied().collect();
        for (i, &id) in all.iter().enumerate() {
            tokens[r * t + i] = i64::from(id);
            positions[r * t + i] = i as i64;
            key_mask[r * t + i] = true;
            if i > 0 {
                targets[r * (t - 1) + i - 1] = i64::from(id);
                if i >= p.len() {
                    weights[r * (t - 1) + i - 1] = 1.0;
                }
            }
        }
        counts.push(c.len());
    }
    let ints = |v: Vec<i64>, shape: [usize; 2]| {
        Tensor::<2, Int>::from_data(TensorData::new(v, shape), &device)
    };
    let hidden = model.forward_hidden(
        ints(tokens, [n, t]),
        ints(positions, [n, t]),
        Tensor::<2, Bool>::from_data(TensorData::new(key_mask, [n, t]), &device),
        None,
    )?;
    // Only completion positions need logits: gather their hidden states (prompt positions are
    // about half of a typical pair), project, take log-softmax, pick the targets, and sum per
    // sequence with a [sequences, positions] 0/1 matrix.
    let width = hidden.dims()[2];
    let flat = hidden.narrow(1, 0, t - 1).reshape([n * (t - 1), width]);
    let mut rows = Vec::new();
    let mut picked_targets = Vec::new();
    let mut owner = Vec::new();
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            rows.push(i as i64);
            picked_targets.push(targets[i]);
            owner.push(i / (t - 1));
        }
    }
    let k = rows.len();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(rows, [k]), &device);
    let h = flat.select(0, idx);
    let picked = match model.vocab_weight() {
        // f32 on the CPU: the kernel projects a block of rows at a time in both passes, so
        // neither the [k, vocab] logits nor their softmax is kept for the backward pass.
        #[cfg(feature = "flex")]
        Some(w) if sweetspot_model::kernels::applies(&device, h.dtype()) => {
            let tgt = picked_targets.iter().map(|&t| t as u32).collect();
            sweetspot_model::kernels::token_logprob(h, w, std::sync::Arc::new(tgt)).reshape([k, 1])
        }
        _ => {
            let logps = log_softmax(model.logits(h.unsqueeze_dim::<3>(0)), 2);
            let tgt = Tensor::<1, Int>::from_data(TensorData::new(picked_targets, [k]), &device);
            logps.gather(2, tgt.reshape([1, k, 1])).reshape([k, 1])
        }
    };
    let mut onehot = vec![0f32; n * k];
    for (j, &o) in owner.iter().enumerate() {
        onehot[o * k + j] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, k]), &device);
    Ok((onehot.matmul(picked).reshape([n]), counts))
}

/// AdamW and clipping settings, each explicit (burn's defaults differ from PyTorch's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSettings {
    /// Adam's beta 1.
    pub beta1: f32,
    /// Adam's beta 2.
    pub beta2: f32,
    /// Adam's epsilon (PyTorch and TRL: 1e-8).
    pub epsilon: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm limit (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
}

impl OptimizerSettings {
    /// The settings of a `[train]` table (`max_grad_norm = 0` turns clipping off).
    pub fn from_config(cfg: &TrainConfig) -> Self {
        Self {
            beta1: cfg.adam_beta1 as f32,
            beta2: cfg.adam_beta2 as f32,
            epsilon: cfg.adam_epsilon as f32,
            weight_decay: cfg.weight_decay as f32,
            max_grad_norm: (cfg.max_grad_norm > 0.0).then_some(cfg.max_grad_norm),
        }
    }
}

impl Default for OptimizerSettings {
    /// The recipe's defaults (those of a `[train]` table with every key left out).
    fn default() -> Self {
        Self::from_config(&TrainConfig::default())
    }
}

/// Metrics of one optimizer step, named as TRL logs them.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// Mean loss over the pairs.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// `rewards/chosen`.
    pub rewards_chosen: f64,
    /// `rewards/rejected`.
    pub rewards_rejected: f64,
    /// `rewards/accuracies`.
    pub rewards_accuracies: f64,
    /// `rewards/margins`.
    pub rewards_margins: f64,
    /// `logps/chosen`.
    pub logps_chosen: f64,
    /// `logps/rejected`.
    pub logps_rejected: f64,
}

/// A step's metrics from the weighted sums of its micro-batches' means (loss, rewards/chosen,
/// rewards/rejected, accuracies, margins, logps/chosen, logps/rejected).
fn metrics_of(sums: [f64; 7], grad_norm: f64, lr: f64) -> StepMetrics {
    StepMetrics {
        loss: sums[0],
        grad_norm,
        lr,
        rewards_chosen: sums[1],
        rewards_rejected: sums[2],
        rewards_accuracies: sums[3],
        rewards_margins: sums[4],
        logps_chosen: sums[5],
        logps_rejected: sums[6],
    }
}

fn mean(t: Tensor<1>) -> f64 {
    t.mean().into_scalar::<f64>()
}

/// Sums the squares of every gradient.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: f64,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let g = sweetspot_model::precision::to_f32(g);
            self.total += g.square().sum().into_scalar::<f64>();
        }
    }
}

/// Multiplies every gradient by a factor.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Detaches a module's parameters from the autodiff device (for saving and comparing).
struct NoGrad;

impl ModuleMapper for NoGrad {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.without_autodiff())
    }
}

fn scaled<const D: usize>(p: Param<Tensor<D>>, keep: f64) -> Param<Tensor<D>> {
    p.map(|t| {
        // Lifted back with the parameter's gradient-checkpointing strategy: a parameter under
        // another strategy than its inputs is refused by autodiff.
        let strategy = t.gradient_checkpointing_strategy();
        let mut u = Tensor::from_inner(t.inner().mul_scalar(keep));
        if let Some(s) = strategy {
            u = u.with_gradient_checkpointing_strategy(s);
        }
        u.require_grad()
    })
}

/// Decoupled weight decay, `p <- p (1 - lr wd)`, before the Adam update (as
/// `torch.optim.AdamW` orders it), on the parameter group transformers' `Trainer` decays:
/// embeddings and linear weights; not norms, not biases.
/// With LoRA adapters, only they train: `lora_A` and `lora_B` are decayed (they are linear
/// weights to transformers' `Trainer`), the frozen base is not touched.
fn decay(mut p: LlamaParams, keep: f64) -> LlamaParams {
    if keep == 1.0 {
        return p;
    }
    if let Some(adapters) = p.adapters.as_mut() {
        for l in &mut adapters.layers {
            for lora in [
                &mut l.q_proj,
                &mut l.k_proj,
                &mut l.v_proj,
                &mut l.o_proj,
                &mut l.gate_proj,
                &mut l.up_proj,
                &mut l.down_proj,
            ]
            .into_iter()
            .flatten()
            {
                lora.lora_a = scaled(lora.lora_a.clone(), keep);
                lora.lora_b = scaled(lora.lora_b.clone(), keep);
            }
        }
        return p;
    }
    p.model.embed_tokens.weight = scaled(p.model.embed_tokens.weight, keep);
    if let Some(head) = p.lm_head.as_mut() {
        head.weight = scaled(head.weight.clone(), keep);
    }
    for layer in &mut p.model.layers {
        let a = &mut layer.self_attn;
        let m = &mut layer.mlp;
        for lin in [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ] {
            lin.weight = scaled(lin.weight.clone(), keep);
        }
    }
    p
}

/// A policy being trained, with its frozen reference and the optimizer state.
pub struct Trainer {
    policy: Option<Llama>,
    reference: Option<Llama>,
    loss: Box<dyn PreferenceLoss>,
    optim: ModuleOptimizer,
    settings: OptimizerSettings,
    compute: Precision,
    steps: usize,
    /// Data parallelism ([`Trainer::with_data_parallel`]): one replica of the policy per device,
    /// the first on the policy's device; empty on one device.
    replicas: Vec<Llama>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("settings", &self.settings)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// A trainer for `policy` (on an autodiff device: `Device::autodiff()`), with `reference`
    /// (`None` for reference-free losses) on the same device, so that both run the same kernels
    /// and the implicit rewards start at exactly 0, as in TRL. The reference is frozen.
    ///
    /// A policy with LoRA adapters ([`Llama::with_new_adapters`]) trains only its adapters (its
    /// base is frozen: no gradients, no optimizer state), and with `reference` `None` its
    /// reference is the policy with the adapters off ([`Llama::without_adapters`]: the same base
    /// tensors), as TRL does with a `peft_config`.
    pub fn new(
        policy: Llama,
        reference: Option<Llama>,
        loss: Box<dyn PreferenceLoss>,
        settings: OptimizerSettings,
    ) -> Result<Self, TrainError> {
        if !policy.device().is_autodiff() {
            return Err(TrainError::Input(
                "the policy must live on an autodiff device".into(),
            ));
        }
        if let Some(r) = &reference
            && r.device() != policy.device()
        {
            return Err(TrainError::Input(
                "the reference model must be on the policy's device".into(),
            ));
        }
        let reference = reference.map(|r| r.map_params(|p| p.no_grad()));
        // Weight decay is applied here, per parameter group (see `decay`), not by burn's AdamW.
        let optim = AdamWConfig::new()
            .with_beta_1(settings.beta1)
            .with_beta_2(settings.beta2)
            .with_epsilon(settings.epsilon)
            .with_weight_decay(0.0)
            .init();
        Ok(Self {
            policy: Some(policy),
            reference,
            loss,
            optim,
            settings,
            compute: Precision::F32,
            steps: 0,
            replicas: Vec::new(),
        })
    }

    /// Mixed precision: forward and backward passes (activations, the reference model's pass)
    /// in `precision` through casts of the weights, while the weights, their gradients and
    /// Adam's moments stay in the policy's own type (f32). This is TRL's `bf16 = true`; weights
    /// held in bf16 themselves would round away every update smaller than 2^-8 of a weight,
    /// which at DPO's learning rates (3e-7) is nearly all of them.
    pub fn with_compute_precision(mut self, precision: Precision) -> Result<Self, TrainError> {
        if let Some(p) = &self.policy {
            sweetspot_model::precision::check_supported(p.device(), precision)?;
            if p.has_adapters() && precision != Precision::F32 {
                return Err(TrainError::Input(format!(
                    "mixed precision ({precision}) with LoRA adapters: hold the base in \
                     {precision} instead (`[train.adapter] base_dtype`); the adapters compute in \
                     f32"
                )));
            }
        }
        self.compute = precision;
        Ok(self)
    }

    /// Data parallelism over `devices` (autodiff devices, the first the policy's own): one
    /// replica of the policy per device, each step's pairs shared out among them, the gradients
    /// reduced and the parameters updated by burn's sharded optimizer step (see [`parallel`]).
    /// The result equals the one-device step's up to float rounding. One device: unchanged.
    pub fn with_data_parallel(mut self, devices: &[Device]) -> Result<Self, TrainError> {
        let Some(policy) = &self.policy else {
            return Err(TrainError::Input("the trainer lost its policy".into()));
        };
        if devices.first().is_some_and(|d| d != policy.device()) {
            return Err(TrainError::Input(
                "data parallelism: the first device must be the policy's".into(),
            ));
        }
        if devices.len() < 2 {
            return Ok(self);
        }
        if let Some(d) = devices.iter().find(|d| !d.is_autodiff()) {
            return Err(TrainError::Input(format!(
                "data parallelism: device {d:?} is not an autodiff device"
            )));
        }
        if self.reference.is_some() {
            return Err(TrainError::Input(
                "data parallelism takes precomputed reference log-probabilities (or LoRA's \
                 base), not a reference model"
                    .into(),
            ));
        }
        self.replicas = parallel::replicas(policy, devices);
        Ok(self)
    }

    /// The policy (with data parallelism, the first replica: every parameter on one device).
    pub fn policy(&self) -> Option<&Llama> {
        self.replicas.first().or(self.policy.as_ref())
    }

    /// Every data-parallel replica's parameters off the autodiff graph (empty on one device):
    /// they hold the same values after every step.
    pub fn replica_params(&self) -> Vec<LlamaParams> {
        self.replicas
            .iter()
            .map(|r| r.params().clone().map(&mut NoGrad))
            .collect()
    }

    /// The policy's parameters off the autodiff graph.
    pub fn policy_params(&self) -> Option<LlamaParams> {
        self.policy().map(|p| p.params().clone().map(&mut NoGrad))
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The optimizer (for checkpoints).
    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optim
    }

    /// Restores the optimizer state saved by [`ModuleOptimizer::save`] (the policy's parameter
    /// ids must be those it was saved with).
    pub fn load_optimizer(&mut self, path: &std::path::Path) -> Result<(), TrainError> {
        let optim = std::mem::replace(&mut self.optim, AdamWConfig::new().init());
        self.optim = optim
            .load(path)
            .map_err(|e| TrainError::Input(format!("{}: {e:?}", path.display())))?;
        Ok(())
    }

    /// One optimizer step on `pairs` at learning rate `lr`, all in one forward/backward pass,
    /// reference log-probabilities from the reference model.
    pub fn step(&mut self, pairs: &[TokenizedPair], lr: f64) -> Result<StepMetrics, TrainError> {
        let refs: Vec<&TokenizedPair> = pairs.iter().collect();
        self.accumulate_step(&refs, None, pairs.len().max(1), lr)
    }

    /// One optimizer step on `pairs` at learning rate `lr`, in forward/backward passes of at most
    /// `micro` pairs whose gradients add up to those of the mean loss over all `pairs`.
    /// `reference` holds the pairs' (chosen, rejected) reference log-probabilities when they are
    /// precomputed.
    pub fn accumulate_step(
        &mut self,
        pairs: &[&TokenizedPair],
        reference: Option<&(Vec<f32>, Vec<f32>)>,
        micro: usize,
        lr: f64,
    ) -> Result<StepMetrics, TrainError> {
        let total = pairs.len();
        if total == 0 {
            return Err(TrainError::Input("an empty batch".into()));
        }
        let Some(policy) = self.policy.take() else {
            return Err(TrainError::Input("the trainer lost its policy".into()));
        };
        let reference = reference.map(|(c, r)| (c.as_slice(), r.as_slice()));
        let keep = 1.0 - lr * f64::from(self.settings.weight_decay);
        if !self.replicas.is_empty() {
            let result = parallel::step(self, &policy, pairs, reference, micro.max(1), lr);
            return match result {
                Ok((metrics, grads, trained)) => {
                    let optim = &mut self.optim;
                    let policy = policy
                        .map_params(|params| optim.step_multi(lr, decay(params, keep), grads));
                    parallel::refresh(&mut self.replicas, &policy, &trained);
                    self.policy = Some(policy);
                    self.steps += 1;
                    Ok(metrics)
                }
                Err(e) => {
                    self.policy = Some(policy);
                    Err(e)
                }
            };
        }
        let result = self
            .gradients(&policy, pairs, reference, micro.max(1), total)
            .map(|(sums, mut grads)| {
                let grad_norm = self.clip(&policy, &mut grads);
                (metrics_of(sums, grad_norm, lr), grads)
            });
        let (metrics, grads) = match result {
            Ok(v) => v,
            Err(e) => {
                self.policy = Some(policy);
                return Err(e);
            }
        };
        let optim = &mut self.optim;
        self.policy = Some(policy.map_params(|params| optim.step(lr, decay(params, keep), grads)));
        self.steps += 1;
        Ok(metrics)
    }

    /// The summed gradients of `pairs` (their losses weighted by their share of `total`, the
    /// step's pairs on every replica) in passes of at most `micro` pairs, and the weighted sums
    /// of the micro-batches' means (see [`metrics_of`]).
    fn gradients(
        &self,
        policy: &Llama,
        pairs: &[&TokenizedPair],
        reference: Option<(&[f32], &[f32])>,
        micro: usize,
        total: usize,
    ) -> Result<([f64; 7], GradientsParams), TrainError> {
        let mut acc = burn::optim::GradientsAccumulator::new();
        let mut sums = [0f64; 7];
        for (k, chunk) in pairs.chunks(micro).enumerate() {
            let refs = reference.map(|(c, r)| {
                let at = k * micro;
                (
                    c[at..at + chunk.len()].to_vec(),
                    r[at..at + chunk.len()].to_vec(),
                )
            });
            let weight = chunk.len() as f64 / total as f64;
            let (m, grads) = self.micro_step(policy, chunk, refs, weight)?;
            acc.accumulate(policy.params(), grads);
            for (s, v) in sums.iter_mut().zip(m) {
                *s += v * weight;
            }
        }
        Ok((sums, acc.grads()))
    }

    /// Clips `grads` by their global norm (`max_grad_norm`) and returns the norm before.
    fn clip(&self, policy: &Llama, grads: &mut GradientsParams) -> f64 {
        let mut norm = SquaredNorm { grads, total: 0.0 };
        policy.params().visit(&mut norm);
        let grad_norm = norm.total.sqrt();
        if let Some(max) = self.settings.max_grad_norm {
            // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6) when that is below 1.
            let factor = max / (grad_norm + 1e-6);
            if factor < 1.0 {
                policy.params().visit(&mut Scale { grads, factor });
            }
        }
        grad_norm
    }

    /// Forward and backward of one micro-batch; its loss is weighted by `weight` (its share of
    /// the step's pairs). Returns the micro-batch's unweighted means (loss, rewards/chosen,
    /// rewards/rejected, accuracies, margins, logps/chosen, logps/rejected) and its gradients.
    fn micro_step(
        &self,
        policy: &Llama,
        pairs: &[&TokenizedPair],
        reference: Option<(Vec<f32>, Vec<f32>)>,
        weight: f64,
    ) -> Result<([f64; 7], GradientsParams), TrainError> {
        let b = pairs.len();
        let seqs = pair_sequences(pairs);
        let device: Device = policy.device().clone();
        // The forward runs through `model`; gradients are collected for `policy`'s parameters
        // (the same tensors, or the f32 originals of `model`'s casts).
        let copy;
        let model = if self.compute == Precision::F32 {
            policy
        } else {
            copy = policy.compute_copy(self.compute)?;
            &copy
        };
        let (logps, counts) = response_logps(model, &seqs)?;
        let counts: Vec<f32> = counts.iter().map(|&c| c as f32).collect();
        let counts = Tensor::<1>::from_data(TensorData::new(counts, [2 * b]), &device);
        let floats = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [b]), &device);
        let (ref_c, ref_r) = if !self.loss.needs_reference() {
            (None, None)
        } else if let Some((c, r)) = reference {
            (Some(floats(c)), Some(floats(r)))
        } else if let Some(model) = &self.reference {
            let (r, _) = response_logps(&model.compute_copy(self.compute)?, &seqs)?;
            let r = r.detach();
            (Some(r.clone().narrow(0, 0, b)), Some(r.narrow(0, b, b)))
        } else if policy.has_adapters() {
            // LoRA: the reference is the frozen base, the adapters off.
            let (r, _) = response_logps(&policy.without_adapters(), &seqs)?;
            let r = r.detach();
            (Some(r.clone().narrow(0, 0, b)), Some(r.narrow(0, b, b)))
        } else {
            return Err(TrainError::Input(
                "the loss needs reference log-probabilities".into(),
            ));
        };
        let out = self.loss.compute(LossInput {
            policy_chosen: logps.clone().narrow(0, 0, b),
            policy_rejected: logps.narrow(0, b, b),
            reference_chosen: ref_c,
            reference_rejected: ref_r,
            chosen_tokens: counts.clone().narrow(0, 0, b),
            rejected_tokens: counts.narrow(0, b, b),
        })?;
        let loss = out.losses.mean();
        let loss_value = loss.clone().into_scalar::<f64>();
        let grads =
            GradientsParams::from_grads(loss.mul_scalar(weight).backward(), policy.params());
        let cr = out.chosen_rewards.without_autodiff();
        let rr = out.rejected_rewards.without_autodiff();
        let accuracies = cr.clone().greater(rr.clone()).float();
        Ok((
            [
                loss_value,
                mean(cr.clone()),
                mean(rr.clone()),
                mean(accuracies),
                mean(cr - rr),
                mean(out.chosen_logps.without_autodiff()),
                mean(out.rejected_logps.without_autodiff()),
            ],
            grads,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimizer_defaults_are_the_recipe_defaults_as_before() {
        // The values the optimizer had before they came from the recipe's defaults.
        assert_eq!(
            OptimizerSettings::default(),
            OptimizerSettings {
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
                weight_decay: 0.0,
                max_grad_norm: Some(1.0),
            }
        );
    }
}
