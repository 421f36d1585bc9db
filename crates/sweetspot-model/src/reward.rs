//! Reward heads on the Llama backbone, and batch-invariant scoring.
//!
//! - [`RewardHead::SeqCls`]: transformers' `LlamaForSequenceClassification` (Skywork-Reward): a
//!   bias-free linear `score` read at the last token of the sequence.
//! - [`RewardHead::ArmoRm`]: `LlamaForRewardModelWithGating` as published with
//!   ArmoRM-Llama3-8B-v0.1: a bias-free `regression_layer` (hidden -> objectives) read at the last
//!   token; a gating network (ReLU MLP, softmax at a temperature, times a learned `logit_scale`)
//!   read at the gating position (the last occurrence of the end-of-prompt token pattern); the
//!   score is `sum(gating * (rewards @ reward_transform_matrix))`, the matrix loaded from the
//!   checkpoint.
//! - [`RewardHead::Judge`]: a causal LM as judge: `logit(yes) - logit(no)` at the last token,
//!   which equals `log P(yes) - log P(no)` (the softmax normalizer cancels).
//!
//! Every row of a batch is scored from its own tokens only: rows are padded (left or right) with
//! masked key slots and positions that count real tokens, so a score does not depend on batch
//! composition or padding side.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::Deserialize;

use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::llama::{Llama, LlamaModel, LlamaParams};
use crate::precision::{Precision, cast_module, check_supported, to_f32};
use crate::weights::load_safetensors;

/// The 19 objectives of ArmoRM-Llama3-8B-v0.1, in the order of its regression layer.
pub const ARMORM_OBJECTIVES: [&str; 19] = [
    "helpsteer-helpfulness",
    "helpsteer-correctness",
    "helpsteer-coherence",
    "helpsteer-complexity",
    "helpsteer-verbosity",
    "ultrafeedback-overall_score",
    "ultrafeedback-instruction_following",
    "ultrafeedback-truthfulness",
    "ultrafeedback-honesty",
    "ultrafeedback-helpfulness",
    "beavertails-is_safe",
    "prometheus-score",
    "argilla-overall_quality",
    "argilla-judge_lm",
    "code-complexity",
    "code-style",
    "code-explanation",
    "code-instruction-following",
    "code-readability",
];

/// ArmoRM's gating position: the last occurrence of this text's tokens (the end of the last user
/// turn and the assistant header, in Llama-3's chat format).
pub const LLAMA3_GATING_PATTERN: &str =
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";

/// `LlamaForSequenceClassification`'s parameters, named as transformers names them.
#[derive(Module, Debug)]
pub struct SeqClsParams {
    /// The decoder.
    pub model: LlamaModel,
    /// The classification head `[hidden, labels]`, no bias.
    pub score: Linear,
}

/// ArmoRM's gating network.
#[derive(Module, Debug)]
pub struct GatingNetwork {
    /// Hidden layers (ReLU after each) and the output layer, all with bias.
    pub layers: Vec<Linear>,
    /// The learned scale the softmax output is multiplied by, shape `[1]`.
    pub logit_scale: Param<Tensor<1>>,
}

/// `LlamaForRewardModelWithGating`'s parameters, named as its checkpoint names them.
#[derive(Module, Debug)]
pub struct ArmoRmParams {
    /// The decoder.
    pub model: LlamaModel,
    /// Per-objective rewards `[hidden, objectives]`, no bias.
    pub regression_layer: Linear,
    /// The gating network.
    pub gating: GatingNetwork,
    /// `[objectives, objectives]`; rewards are multiplied by it before gating.
    pub reward_transform_matrix: Param<Tensor<2>>,
}

/// What a reward head reads from the backbone's last hidden states.
#[derive(Debug)]
pub enum RewardHead {
    /// A linear head with one output at the last token.
    SeqCls {
        /// `[hidden, 1]`.
        score: Linear,
    },
    /// ArmoRM's regression layer, gating network and transform matrix.
    ArmoRm(Box<ArmoRmHead>),
    /// A causal LM's next-token logits at the last token.
    Judge {
        /// The token whose logit counts for the response.
        yes: u32,
        /// The token whose logit counts against it.
        no: u32,
    },
}

/// ArmoRM's head.
#[derive(Debug)]
pub struct ArmoRmHead {
    /// `[hidden, objectives]`.
    pub regression: Linear,
    /// The gating network.
    pub gating: GatingNetwork,
    /// The gating softmax temperature.
    pub temperature: f64,
    /// `[objectives, objectives]`.
    pub transform: Tensor<2>,
}

/// One sequence to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardInput {
    /// Its token ids (the rendered conversation).
    pub ids: Vec<u32>,
    /// Where the gating network reads (ArmoRM only), an index into `ids`.
    pub gating_position: Option<usize>,
}

/// One sequence's score.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardOutput {
    /// The scalar reward.
    pub score: f32,
    /// Per-objective rewards (ArmoRM), before the transform matrix.
    pub rewards: Option<Vec<f32>>,
    /// Gating weights (ArmoRM), after the softmax and scale.
    pub gating: Option<Vec<f32>>,
}

/// Which side of a row the padding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Pads before the tokens.
    Left,
    /// Pads after the tokens.
    Right,
}

/// A backbone with a reward head.
#[derive(Debug)]
pub struct RewardNet {
    /// The decoder (its `lm_head` is used only by [`RewardHead::Judge`]).
    pub backbone: Llama,
    /// The head.
    pub head: RewardHead,
}

/// The reward-model fields of `config.json` beside the Llama ones.
#[derive(Debug, Deserialize)]
struct HeadConfig {
    #[serde(default)]
    architectures: Vec<String>,
    num_labels: Option<usize>,
    #[serde(default)]
    id2label: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default = "default_objectives")]
    num_objectives: usize,
    #[serde(default = "default_gating_temperature")]
    gating_temperature: f64,
    #[serde(default = "default_gating_hidden")]
    gating_hidden_dim: usize,
    #[serde(default = "default_gating_layers")]
    gating_n_hidden: usize,
}

fn default_objectives() -> usize {
    19
}
fn default_gating_temperature() -> f64 {
    10.0
}
fn default_gating_hidden() -> usize {
    1024
}
fn default_gating_layers() -> usize {
    3
}

fn read_configs(dir: &Path) -> Result<(LlamaConfig, HeadConfig), ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let config = LlamaConfig::from_json(&text, &path)?;
    crate::weights::check_config_against_weights(&config, dir)?;
    let head = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok((config, head))
}

impl RewardNet {
    /// The names of the head's objectives: ArmoRM's 19 where its regression has 19 outputs,
    /// `objective-i` for another count; none for a head without objectives.
    pub fn objective_names(&self) -> Vec<String> {
        match &self.head {
            RewardHead::ArmoRm(head) => {
                let n = head.regression.weight.dims()[1];
                if n == ARMORM_OBJECTIVES.len() {
                    ARMORM_OBJECTIVES.iter().map(|s| s.to_string()).collect()
                } else {
                    (0..n).map(|i| format!("objective-{i}")).collect()
                }
            }
            _ => Vec::new(),
        }
    }

    /// Loads a `LlamaForSequenceClassification` folder with one label (Skywork-Reward's layout).
    /// The backbone's weights are held in `precision`, the head's in f32.
    pub fn seq_cls_from_pretrained(
        dir: &Path,
        device: &Device,
        precision: Precision,
    ) -> Result<Self, ModelError> {
        check_supported(device, precision)?;
        let (config, head) = read_configs(dir)?;
        let labels = head
            .num_labels
            .or(head.id2label.as_ref().map(|m| m.len()))
            .unwrap_or(1);
        if labels != 1 {
            return Err(ModelError::Config {
                path: dir.join("config.json"),
                message: format!(
                    "field `id2label`: the model has {labels} labels; a reward model has one"
                ),
            });
        }
        if let Some(arch) = head.architectures.first()
            && !arch.ends_with("ForSequenceClassification")
        {
            return Err(ModelError::Config {
                path: dir.join("config.json"),
                message: format!(
                    "field `architectures`: `{arch}` is not a sequence-classification model \
                     (for ArmoRM use the `armorm` reward model)"
                ),
            });
        }
        let mut params = SeqClsParams {
            model: LlamaModel::init(&config, device),
            score: LinearConfig::new(config.hidden_size, 1)
                .with_bias(false)
                .init(device),
        };
        load_safetensors(&mut params, dir, precision)?;
        Ok(Self {
            backbone: backbone(&config, params.model, device),
            head: RewardHead::SeqCls {
                score: cast_module(params.score, Precision::F32),
            },
        })
    }

    /// Loads a `LlamaForRewardModelWithGating` folder (ArmoRM): every head tensor, the transform
    /// matrix included, comes from the checkpoint. The backbone's weights are held in
    /// `precision`, the head's in f32.
    pub fn armorm_from_pretrained(
        dir: &Path,
        device: &Device,
        precision: Precision,
    ) -> Result<Self, ModelError> {
        check_supported(device, precision)?;
        let (config, head) = read_configs(dir)?;
        let n = head.num_objectives;
        let h = config.hidden_size;
        let mut layers = Vec::with_capacity(head.gating_n_hidden + 1);
        let mut width = h;
        for _ in 0..head.gating_n_hidden {
            layers.push(LinearConfig::new(width, head.gating_hidden_dim).init(device));
            width = head.gating_hidden_dim;
        }
        layers.push(LinearConfig::new(width, n).init(device));
        let mut params = ArmoRmParams {
            model: LlamaModel::init(&config, device),
            regression_layer: LinearConfig::new(h, n).with_bias(false).init(device),
            gating: GatingNetwork {
                layers,
                logit_scale: Param::from_tensor(Tensor::ones([1], device)),
            },
            reward_transform_matrix: Param::from_tensor(Tensor::zeros([n, n], device)),
        };
        load_safetensors(&mut params, dir, precision)?;
        Ok(Self {
            backbone: backbone(&config, params.model, device),
            head: RewardHead::ArmoRm(Box::new(ArmoRmHead {
                regression: cast_module(params.regression_layer, Precision::F32),
                gating: cast_module(params.gating, Precision::F32),
                temperature: head.gating_temperature,
                transform: to_f32(params.reward_transform_matrix.val()),
            })),
        })
    }

    /// A causal LM used as a judge: the reward is `log P(yes) - log P(no)` for the next token.
    pub fn judge(model: Llama, yes: u32, no: u32) -> Result<Self, ModelError> {
        let vocab = model.config.vocab_size as u32;
        if yes >= vocab || no >= vocab {
            return Err(ModelError::Input(format!(
                "judge tokens {yes} and {no} must be below the vocabulary size {vocab}"
            )));
        }
        Ok(Self {
            backbone: model,
            head: RewardHead::Judge { yes, no },
        })
    }

    /// The backbone's projections in `quantize` ([`Llama::quantize`]; the vocabulary projection
    /// too only for a judge, the one head that reads logits).
    pub fn quantize(self, quantize: crate::Quantize) -> Result<Self, ModelError> {
        let head = matches!(self.head, RewardHead::Judge { .. });
        Ok(Self {
            backbone: self.backbone.quantize_parts(quantize, head)?,
            head: self.head,
        })
    }

    /// Whether inputs need a gating position.
    pub fn needs_gating_position(&self) -> bool {
        matches!(self.head, RewardHead::ArmoRm(_))
    }

    /// The longest sequence the model takes.
    pub fn max_tokens(&self) -> usize {
        self.backbone.max_positions()
    }

    /// Where the head reads a row's hidden states, as an index into its own ids.
    ///
    /// Sequence classification follows transformers' `*ForSequenceClassification`: the last
    /// token that is not `pad_token_id` (so with pad = a token that also ends the text, such as
    /// `<|eot_id|>`, it reads before the trailing run of that token; with no such token, or no
    /// pad token at all, the last token; with nothing but pad tokens, the first). The judge and
    /// ArmoRM's regression read the last token.
    pub fn read_position(&self, ids: &[u32]) -> usize {
        let last = ids.len().saturating_sub(1);
        match (&self.head, self.backbone.config.pad_token_id) {
            (RewardHead::SeqCls { .. }, Some(pad)) => {
                ids.iter().rposition(|&id| id != pad).unwrap_or(0)
            }
            _ => last,
        }
    }

    /// Scores one batch, padded on `padding`'s side. The order of the outputs is the inputs'.
    pub fn score_batch(
        &self,
        inputs: &[RewardInput],
        padding: Padding,
    ) -> Result<Vec<RewardOutput>, ModelError> {
        let b = inputs.len();
        let Some(t) = inputs.iter().map(|i| i.ids.len()).max() else {
            return Ok(Vec::new());
        };
        let device = self.backbone.device().clone();
        let mut tokens = vec![0i64; b * t];
        let mut positions = vec![0i64; b * t];
        let mut mask = vec![false; b * t];
        let mut last = Vec::with_capacity(b);
        let mut gate = Vec::with_capacity(b);
        for (r, input) in inputs.iter().enumerate() {
            let len = input.ids.len();
            if len == 0 {
                return Err(ModelError::Input(format!("batch row {r} has no tokens")));
            }
            let offset = match padding {
                Padding::Left => t - len,
                Padding::Right => 0,
            };
            for (i, &id) in input.ids.iter().enumerate() {
                tokens[r * t + offset + i] = i64::from(id);
                positions[r * t + offset + i] = i as i64;
                mask[r * t + offset + i] = true;
            }
            last.push((r * t + offset + self.read_position(&input.ids)) as i64);
            if self.needs_gating_position() {
                let Some(g) = input.gating_position.filter(|&g| g < len) else {
                    return Err(ModelError::Input(format!(
                        "batch row {r} has no gating position inside its {len} tokens"
                    )));
                };
                gate.push((r * t + offset + g) as i64);
            }
        }
        let ints = |v: Vec<i64>, shape: Vec<usize>| {
            Tensor::<2, Int>::from_data(TensorData::new(v, shape), &device)
        };
        let hidden = self.backbone.forward_hidden(
            ints(tokens, vec![b, t]),
            ints(positions, vec![b, t]),
            Tensor::<2, Bool>::from_data(TensorData::new(mask, [b, t]), &device),
            None,
        )?;
        let width = hidden.dims()[2];
        // Heads read the hidden states in f32 (the judge's logits are f32 already).
        let flat = hidden.reshape([b * t, width]);
        let rows = |idx: Vec<i64>| {
            let n = idx.len();
            flat.clone().select(
                0,
                Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &device),
            )
        };
        let h_last = rows(last);
        let vec2 = |x: Tensor<2>| -> Result<Vec<Vec<f32>>, ModelError> {
            let [_, c] = x.dims();
            let v = x
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| ModelError::Input(format!("reading scores: {e:?}")))?;
            Ok(v.chunks(c.max(1)).map(<[f32]>::to_vec).collect())
        };
        match &self.head {
            RewardHead::SeqCls { score } => Ok(vec2(score.forward(to_f32(h_last)))?
                .into_iter()
                .map(|row| RewardOutput {
                    score: row[0],
                    rewards: None,
                    gating: None,
                })
                .collect()),
            RewardHead::Judge { yes, no } => {
                let logits = self.backbone.logits(h_last.unsqueeze_dim::<3>(1));
                let v = logits.dims()[2];
                let logits = logits.reshape([b, v]);
                let idx = Tensor::<1, Int>::from_data(
                    TensorData::new(vec![i64::from(*yes), i64::from(*no)], [2]),
                    &device,
                );
                Ok(vec2(logits.select(1, idx))?
                    .into_iter()
                    .map(|row| RewardOutput {
                        score: row[0] - row[1],
                        rewards: None,
                        gating: None,
                    })
                    .collect())
            }
            RewardHead::ArmoRm(armo) => {
                let ArmoRmHead {
                    regression,
                    gating,
                    temperature,
                    transform,
                } = armo.as_ref();
                let rewards = regression.forward(to_f32(h_last));
                let mut x = to_f32(rows(gate));
                let n_layers = gating.layers.len();
                for (i, layer) in gating.layers.iter().enumerate() {
                    x = layer.forward(x);
                    if i + 1 < n_layers {
                        x = relu(x);
                    }
                }
                let weights = softmax(x.div_scalar(*temperature), 1)
                    * gating.logit_scale.val().unsqueeze::<2>();
                let score =
                    (weights.clone() * rewards.clone().matmul(transform.clone())).sum_dim(1);
                let scores = vec2(score)?;
                let rewards = vec2(rewards)?;
                let weights = vec2(weights)?;
                Ok(scores
                    .into_iter()
                    .zip(rewards)
                    .zip(weights)
                    .map(|((s, r), g)| RewardOutput {
                        score: s[0],
                        rewards: Some(r),
                        gating: Some(g),
                    })
                    .collect())
            }
        }
    }

    /// How many batches [`RewardNet::score_all`] scores at once on this model's device: two on
    /// the CPU (burn-flex), where one batch's element-wise operations run on the calling thread
    /// while the other's products keep the cores busy; one elsewhere (a GPU queues one stream).
    /// The memory plan counts this many batches' activations.
    pub fn concurrent_batches(&self) -> usize {
        if crate::llama::is_flex(self.backbone.device()) {
            CPU_CONCURRENT_BATCHES
        } else {
            1
        }
    }

    /// Scores every input, in batches of at most `batch_size` rows and `max_batch_tokens` padded
    /// tokens, the inputs sorted by length so rows of a batch are of similar length, up to
    /// [`RewardNet::concurrent_batches`] batches at once. `progress` gets the number of inputs
    /// scored after each batch. The outputs are in the inputs' order; a score does not depend on
    /// which batch scored it or when (rows are independent, each product's result does not
    /// depend on the threads that ran it).
    pub fn score_all(
        &self,
        inputs: &[RewardInput],
        batch_size: usize,
        max_batch_tokens: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<RewardOutput>, ModelError> {
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].ids.len()));
        // Longest first: each batch's first row sets its padded length.
        let mut batches = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let longest = inputs[order[start]].ids.len().max(1);
            let fit = (max_batch_tokens / longest).clamp(1, batch_size.max(1));
            let end = (start + fit).min(order.len());
            batches.push(start..end);
            start = end;
        }
        let score = |range: &std::ops::Range<usize>| {
            let batch: Vec<RewardInput> = order[range.clone()]
                .iter()
                .map(|&i| inputs[i].clone())
                .collect();
            self.score_batch(&batch, Padding::Right)
        };
        let mut out: Vec<Option<RewardOutput>> = vec![None; inputs.len()];
        let mut store = |range: &std::ops::Range<usize>, scored: Vec<RewardOutput>| {
            for (k, o) in scored.into_iter().enumerate() {
                out[order[range.start + k]] = Some(o);
            }
            progress(range.len());
        };
        let workers = self.concurrent_batches().min(batches.len());
        if workers <= 1 {
            for range in &batches {
                store(range, score(range)?);
            }
        } else {
            use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
            let next = AtomicUsize::new(0);
            let failed = AtomicBool::new(false);
            let mut first_error: Option<(usize, ModelError)> = None;
            std::thread::scope(|s| {
                let (tx, rx) = std::sync::mpsc::channel();
                for _ in 0..workers {
                    let tx = tx.clone();
                    let (next, failed, batches, score) = (&next, &failed, &batches, &score);
                    s.spawn(move || {
                        while !failed.load(Ordering::Relaxed) {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(range) = batches.get(i) else { break };
                            let result = score(range);
                            if result.is_err() {
                                failed.store(true, Ordering::Relaxed);
                            }
                            if tx.send((i, result)).is_err() {
                                break;
                            }
                        }
                    });
                }
                drop(tx);
                for (i, result) in rx {
                    match result {
                        Ok(scored) => store(&batches[i], scored),
                        // The earliest batch's error, whichever thread met one first.
                        Err(e) => {
                            if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                                first_error = Some((i, e));
                            }
                        }
                    }
                }
            });
            if let Some((_, e)) = first_error {
                return Err(e);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}

/// Batches scored at once on the CPU ([`RewardNet::concurrent_batches`]).
pub const CPU_CONCURRENT_BATCHES: usize = 2;

fn backbone(config: &LlamaConfig, model: LlamaModel, device: &Device) -> Llama {
    Llama::from_params(
        config,
        LlamaParams {
            model,
            lm_head: None,
            adapters: None,
        },
        device,
    )
}

/// The start of the last occurrence of `pattern` in `ids`.
pub fn find_last(ids: &[u32], pattern: &[u32]) -> Option<usize> {
    if pattern.is_empty() || pattern.len() > ids.len() {
        return None;
    }
    (0..=ids.len() - pattern.len())
        .rev()
        .find(|&j| ids[j..j + pattern.len()] == *pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_last_takes_the_last_occurrence() {
        assert_eq!(find_last(&[1, 2, 3, 1, 2, 4], &[1, 2]), Some(3));
        assert_eq!(find_last(&[1, 2, 3], &[1, 2, 3]), Some(0));
        assert_eq!(find_last(&[1, 2, 3], &[2, 4]), None);
        assert_eq!(find_last(&[1], &[1, 2]), None);
        assert_eq!(find_last(&[1], &[]), None);
    }
}
