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
use crate::llama::{KvCache, Llama, LlamaModel, LlamaParams};
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
        let rows: Vec<&RewardInput> = inputs.iter().collect();
        self.score_rows(&rows, padding, None)
    }

    /// The keys and values of `ids[..prefix]` for [`RewardNet::score_rows`]: the forward pass
    /// runs on `ids[..end]` (`end` at the end of `prefix`'s query tile, or the sequence's), so
    /// each prefix query sees the span of keys it sees in the whole sequence.
    fn prefix_cache(&self, ids: &[u32], prefix: usize, end: usize) -> Result<KvCache, ModelError> {
        let device = self.backbone.device().clone();
        let ids = &ids[..end];
        let tokens: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
        let positions: Vec<i64> = (0..end as i64).collect();
        let mut cache = KvCache::new();
        self.backbone.fill_cache(
            Tensor::<2, Int>::from_data(TensorData::new(tokens, [1, end]), &device),
            Tensor::<2, Int>::from_data(TensorData::new(positions, [1, end]), &device),
            Tensor::<2, Bool>::from_data(TensorData::new(vec![true; end], [1, end]), &device),
            &mut cache,
        )?;
        cache.truncate(prefix);
        Ok(cache)
    }

    /// Scores `inputs` as one batch, padded on `padding`'s side; with `prefix = (cache, p)`,
    /// every row's first `p` tokens are the cached ones (right padding only) and only the rest
    /// is computed.
    fn score_rows(
        &self,
        inputs: &[&RewardInput],
        padding: Padding,
        prefix: Option<(&KvCache, usize)>,
    ) -> Result<Vec<RewardOutput>, ModelError> {
        if prefix.is_some() && padding == Padding::Left {
            return Err(ModelError::Input(
                "a cached prefix needs right padding".into(),
            ));
        }
        let b = inputs.len();
        let p = prefix.map_or(0, |(_, p)| p);
        let Some(t) = inputs.iter().map(|i| i.ids.len().saturating_sub(p)).max() else {
            return Ok(Vec::new());
        };
        let device = self.backbone.device().clone();
        let mut tokens = vec![0i64; b * t];
        let mut positions = vec![0i64; b * t];
        let mut mask = vec![false; b * (p + t)];
        let mut last = Vec::with_capacity(b);
        let mut gate = Vec::with_capacity(b);
        for (r, input) in inputs.iter().enumerate() {
            let len = input.ids.len();
            if len == 0 {
                return Err(ModelError::Input(format!("batch row {r} has no tokens")));
            }
            let read = self.read_position(&input.ids);
            let gating = if self.needs_gating_position() {
                let Some(g) = input.gating_position.filter(|&g| g < len) else {
                    return Err(ModelError::Input(format!(
                        "batch row {r} has no gating position inside its {len} tokens"
                    )));
                };
                Some(g)
            } else {
                None
            };
            if read < p || gating.is_some_and(|g| g < p) {
                return Err(ModelError::Input(format!(
                    "batch row {r} is read inside its {p} cached tokens"
                )));
            }
            let offset = match padding {
                Padding::Left => t - (len - p),
                Padding::Right => 0,
            };
            for (i, &id) in input.ids.iter().enumerate().skip(p) {
                tokens[r * t + offset + i - p] = i64::from(id);
                positions[r * t + offset + i - p] = i as i64;
            }
            let keys = &mut mask[r * (p + t)..(r + 1) * (p + t)];
            keys[..p].fill(true);
            keys[p + offset..p + offset + len - p].fill(true);
            last.push((r * t + offset + read - p) as i64);
            if let Some(g) = gating {
                gate.push((r * t + offset + g - p) as i64);
            }
        }
        let ints = |v: Vec<i64>, shape: Vec<usize>| {
            Tensor::<2, Int>::from_data(TensorData::new(v, shape), &device)
        };
        let (tokens, positions) = (ints(tokens, vec![b, t]), ints(positions, vec![b, t]));
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [b, p + t]), &device);
        // The read positions' hidden states (then ArmoRM's gating positions'), `[rows, width]`.
        let n_last = last.len();
        let reads: Vec<usize> = last.iter().chain(&gate).map(|&i| i as usize).collect();
        let hidden = match prefix {
            Some((cache, _)) => self
                .backbone
                .forward_hidden_after(tokens, positions, mask, cache, &reads)?,
            None => self
                .backbone
                .forward_hidden_rows(tokens, positions, mask, None, &reads)?,
        };
        // Heads read the hidden states in f32 (the judge's logits are f32 already).
        // A head reads at least two rows (a lone row twice): the gemm crate's one-row products
        // round differently, and a score must not depend on its batch's size.
        let rows = |from: usize, n: usize| {
            let idx: Vec<i64> = if n == 1 {
                vec![from as i64; 2]
            } else {
                (from..from + n).map(|i| i as i64).collect()
            };
            let m = idx.len();
            hidden.clone().select(
                0,
                Tensor::<1, Int>::from_data(TensorData::new(idx, [m]), &device),
            )
        };
        let h_last = rows(0, n_last);
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
                .take(b)
                .map(|row| RewardOutput {
                    score: row[0],
                    rewards: None,
                    gating: None,
                })
                .collect()),
            RewardHead::Judge { yes, no } => {
                let h_rows = h_last.dims()[0];
                let logits = self.backbone.logits(h_last.unsqueeze_dim::<3>(1));
                let v = logits.dims()[2];
                let logits = logits.reshape([h_rows, v]);
                let idx = Tensor::<1, Int>::from_data(
                    TensorData::new(vec![i64::from(*yes), i64::from(*no)], [2]),
                    &device,
                );
                Ok(vec2(logits.select(1, idx))?
                    .into_iter()
                    .take(b)
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
                let mut x = to_f32(rows(n_last, gate.len()));
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
                    .take(b)
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
    /// tokens (counting a shared prefix's slots), the inputs sorted by length so rows of a batch
    /// are of similar length, up to [`RewardNet::concurrent_batches`] batches at once. Where the
    /// model's cached prefix is exact ([`Llama::cached_prefix_is_exact`]: f32, and bf16 or f16
    /// inference, on the CPU), inputs that begin with the same tokens (the samples of one
    /// prompt) are batched together and their shared first tokens computed once
    /// ([`prefix_groups`]). `progress` gets the number of inputs scored after each batch. The
    /// outputs are in the inputs' order; a score does not depend on which batch scored it, on
    /// a shared prefix, or on when (rows are independent, each product's result does not depend
    /// on the threads that ran it, and a query sees the same keys in the same tile from a cache).
    pub fn score_all(
        &self,
        inputs: &[RewardInput],
        batch_size: usize,
        max_batch_tokens: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<RewardOutput>, ModelError> {
        let groups = if self.backbone.cached_prefix_is_exact() {
            let caps: Vec<usize> = inputs.iter().map(|i| self.prefix_cap(i)).collect();
            prefix_groups(inputs, &caps, prefix_tile())
        } else {
            Vec::new()
        };
        let by_length = |rows: &mut Vec<usize>| {
            rows.sort_by_key(|&i| std::cmp::Reverse(inputs[i].ids.len()));
        };
        // Each batch a range of `order`: a group's batches, then the other inputs' (longest
        // first: each batch's first row sets its padded length).
        let mut order: Vec<usize> = Vec::with_capacity(inputs.len());
        let mut batches: Vec<(std::ops::Range<usize>, Option<usize>)> = Vec::new();
        let mut cut = |order: &mut Vec<usize>, rows: Vec<usize>, group: Option<usize>| {
            let skip = group.map_or(0, |g| groups[g].prefix);
            let lens: Vec<usize> = rows.iter().map(|&i| inputs[i].ids.len().max(1)).collect();
            let mut at = order.len();
            order.extend(rows);
            for n in length_batches(&lens, skip, batch_size, max_batch_tokens) {
                batches.push((at..at + n, group));
                at += n;
            }
        };
        let mut grouped = vec![false; inputs.len()];
        for (g, group) in groups.iter().enumerate() {
            let mut rows = group.members.clone();
            rows.iter().for_each(|&i| grouped[i] = true);
            by_length(&mut rows);
            cut(&mut order, rows, Some(g));
        }
        let mut rest: Vec<usize> = (0..inputs.len()).filter(|&i| !grouped[i]).collect();
        by_length(&mut rest);
        cut(&mut order, rest, None);
        // Groups taken as many at a time as batches run at once, their batches in turn: the
        // batches running together mostly belong to different groups, so no thread waits while
        // another computes the prefix they share (and few prefixes are held at once).
        let at_once = self.concurrent_batches();
        if at_once > 1 && groups.len() > 1 {
            let mut lists: Vec<Vec<(std::ops::Range<usize>, Option<usize>)>> =
                vec![Vec::new(); groups.len() + 1];
            for batch in batches.drain(..) {
                lists[batch.1.unwrap_or(groups.len())].push(batch);
            }
            let plain = lists.pop().unwrap_or_default();
            for chunk in lists.chunks_mut(at_once) {
                let mut queues: Vec<_> = chunk.iter_mut().map(|l| l.drain(..)).collect();
                loop {
                    let before = batches.len();
                    batches.extend(queues.iter_mut().filter_map(Iterator::next));
                    if batches.len() == before {
                        break;
                    }
                }
            }
            batches.extend(plain);
        }
        // A group's prefix cache, made by its first batch and dropped after its last.
        let slots: Vec<std::sync::Mutex<(Option<KvCache>, usize)>> = groups
            .iter()
            .enumerate()
            .map(|(g, _)| {
                let n = batches.iter().filter(|(_, b)| *b == Some(g)).count();
                std::sync::Mutex::new((None, n))
            })
            .collect();
        let score = |(range, group): &(std::ops::Range<usize>, Option<usize>)| {
            let rows: Vec<&RewardInput> =
                order[range.clone()].iter().map(|&i| &inputs[i]).collect();
            let Some(g) = *group else {
                return self.score_rows(&rows, Padding::Right, None);
            };
            let plan = &groups[g];
            let lock = || slots[g].lock().unwrap_or_else(|e| e.into_inner());
            let cache = {
                let mut slot = lock();
                match &slot.0 {
                    Some(c) => c.clone(),
                    None => {
                        let c =
                            self.prefix_cache(&inputs[plan.source].ids, plan.prefix, plan.end)?;
                        slot.0 = Some(c.clone());
                        c
                    }
                }
            };
            let scored = self.score_rows(&rows, Padding::Right, Some((&cache, plan.prefix)));
            drop(cache);
            let mut slot = lock();
            slot.1 = slot.1.saturating_sub(1);
            if slot.1 == 0 {
                slot.0 = None;
            }
            scored
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
            for batch in &batches {
                store(&batch.0, score(batch)?);
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
                            let Some(batch) = batches.get(i) else { break };
                            let result = score(batch);
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
                        Ok(scored) => store(&batches[i].0, scored),
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

    /// The most tokens of `input` a shared prefix may hold: the head's read position and
    /// ArmoRM's gating position must be computed with the rest, and the rest is at least two
    /// tokens (a one-row product takes the gemm crate's one-row path, which rounds differently);
    /// 0 for a row the batch would refuse, so it is scored, and refused, as it would be alone.
    fn prefix_cap(&self, input: &RewardInput) -> usize {
        if input.ids.len() < 3 {
            return 0;
        }
        let read = self.read_position(&input.ids).min(input.ids.len() - 2);
        if self.needs_gating_position() {
            match input.gating_position.filter(|&g| g < input.ids.len()) {
                Some(g) => read.min(g),
                None => 0,
            }
        } else {
            read
        }
    }
}

/// What a batch costs beyond its padded tokens, in tokens (for [`length_batches`]): a forward
/// pass's fixed work, and a shared prefix's copy under its rows.
const BATCH_COST_TOKENS: usize = 64;

/// Batch sizes for rows of lengths `lens` (longest first), each batch of at most `batch_size`
/// rows and `max_tokens` padded tokens (a longer row alone), the rows' first `skip` tokens
/// cached (computed once, not per batch): the split with the fewest padded computed tokens,
/// counting [`BATCH_COST_TOKENS`] per batch (a group of one prompt's samples of many lengths is
/// cut where lengths fall, rather than padded to its longest).
fn length_batches(lens: &[usize], skip: usize, batch_size: usize, max_tokens: usize) -> Vec<usize> {
    let n = lens.len();
    // cost[i]: the least cost of the first i rows; from[i]: where its last batch starts.
    let mut cost = vec![usize::MAX; n + 1];
    let mut from = vec![0; n + 1];
    cost[0] = 0;
    for i in 1..=n {
        for j in (0..i).rev() {
            let rows = i - j;
            if rows > batch_size.max(1) || (rows > 1 && rows * lens[j] > max_tokens) {
                break;
            }
            let c = cost[j]
                .saturating_add(rows * lens[j].saturating_sub(skip))
                .saturating_add(BATCH_COST_TOKENS);
            if c < cost[i] {
                cost[i] = c;
                from[i] = j;
            }
        }
    }
    let mut sizes = Vec::new();
    let mut i = n;
    while i > 0 {
        sizes.push(i - from[i]);
        i = from[i];
    }
    sizes.reverse();
    sizes
}

/// The alignment of attention's query tiles in key slots (a shared prefix computed alone ends
/// its last tile where the whole sequence's would).
fn prefix_tile() -> usize {
    #[cfg(feature = "flex")]
    {
        crate::kernels::QUERY_TILE
    }
    #[cfg(not(feature = "flex"))]
    {
        1
    }
}

/// Inputs scored on one computation of their first `prefix` tokens ([`prefix_groups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixGroup {
    /// The inputs (indices), each at least `end` tokens long.
    pub members: Vec<usize>,
    /// Tokens every member begins with, computed once.
    pub prefix: usize,
    /// The prefix's forward pass runs on `source`'s first `end` tokens: `prefix` rounded up to
    /// the attention tile, so each prefix query sees the span of keys it sees in every member.
    pub end: usize,
    /// The member whose tokens up to `end` are computed.
    pub source: usize,
}

/// Groups of `inputs` that begin with the same tokens, to compute those once: the inputs sorted
/// by their ids, each run of them sharing a prefix one candidate group, the runs chosen (a run,
/// or its sub-runs that share longer prefixes) for the most tokens saved. `caps[i]` bounds input
/// `i`'s prefix (its read positions come after it). A group's `end` is its prefix rounded up to
/// a multiple of `tile`; members shorter than `end` are left out (their last prefix tile would
/// see fewer keys), and a group is kept only where it saves tokens. Depends only on the inputs,
/// not on their order.
pub fn prefix_groups(inputs: &[RewardInput], caps: &[usize], tile: usize) -> Vec<PrefixGroup> {
    let mut sorted: Vec<usize> = (0..inputs.len()).collect();
    sorted.sort_by(|&a, &b| inputs[a].ids.cmp(&inputs[b].ids).then(a.cmp(&b)));
    // lcp[k]: the prefix sorted[k] and sorted[k + 1] may share.
    let lcp: Vec<usize> = sorted
        .windows(2)
        .map(|w| {
            let (a, b) = (&inputs[w[0]].ids, &inputs[w[1]].ids);
            let same = a.iter().zip(b).take_while(|(x, y)| x == y).count();
            same.min(caps[w[0]]).min(caps[w[1]])
        })
        .collect();
    let plan = |lo: usize, hi: usize, prefix: usize| -> Option<(usize, PrefixGroup)> {
        if prefix == 0 {
            return None;
        }
        let end = prefix.div_ceil(tile.max(1)) * tile.max(1);
        let members: Vec<usize> = sorted[lo..hi]
            .iter()
            .copied()
            .filter(|&i| inputs[i].ids.len() >= end)
            .collect();
        // Tokens saved: each member's prefix, less the one forward pass over `end` tokens.
        let saved = (members.len() * prefix).checked_sub(end)?;
        if members.len() < 2 || saved == 0 {
            return None;
        }
        let mut members = members;
        members.sort_unstable();
        let source = members[0];
        Some((
            saved,
            PrefixGroup {
                members,
                prefix,
                end,
                source,
            },
        ))
    };
    // The best choice within sorted[lo..hi]: the whole run on its shared prefix, or its sub-runs
    // (split where the shared prefix is shortest) each chosen the same way.
    fn best(
        lo: usize,
        hi: usize,
        lcp: &[usize],
        plan: &dyn Fn(usize, usize, usize) -> Option<(usize, PrefixGroup)>,
        depth: usize,
    ) -> (usize, Vec<PrefixGroup>) {
        if hi - lo < 2 {
            return (0, Vec::new());
        }
        let shared = lcp[lo..hi - 1].iter().copied().min().unwrap_or(0);
        let whole = plan(lo, hi, shared);
        // Sub-runs nest at most as deep as prefixes are long; very deep nests take the run.
        if depth > 4096 {
            return whole.map_or((0, Vec::new()), |(s, g)| (s, vec![g]));
        }
        let mut split = (0, Vec::new());
        let mut start = lo;
        for k in lo..hi {
            if k + 1 == hi || lcp[k] == shared {
                let (s, g) = best(start, k + 1, lcp, plan, depth + 1);
                split.0 += s;
                split.1.extend(g);
                start = k + 1;
            }
        }
        match whole {
            Some((s, g)) if s >= split.0 => (s, vec![g]),
            _ => split,
        }
    }
    let mut groups = best(0, sorted.len(), &lcp, &plan, 0).1;
    groups.sort_by_key(|g| g.source);
    groups
}

/// Batches scored at once on the CPU ([`RewardNet::concurrent_batches`]).
pub const CPU_CONCURRENT_BATCHES: usize = 2;

/// The most shared prefixes [`RewardNet::score_all`] holds at once on the CPU: the groups of
/// the batches running and of those it takes next (groups are taken
/// [`CPU_CONCURRENT_BATCHES`] at a time, a prefix dropped after its group's last batch).
pub const CPU_PREFIXES_HELD: usize = 2 * CPU_CONCURRENT_BATCHES;

/// Key/value slots a shared prefix of a `prompt_tokens`-token prompt takes (computed up to the
/// end of its attention tile, then cut to the prompt; the buffer keeps the computed slots).
pub fn prefix_slots(prompt_tokens: usize) -> usize {
    prompt_tokens.div_ceil(prefix_tile()) * prefix_tile()
}

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
