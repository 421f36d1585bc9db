//! sweetspot's reward models on burn, over the model crate's Llama backbone:
//!
//! - `seq-cls` (and its alias `skywork`): Hugging Face `LlamaForSequenceClassification` with one
//!   label, such as Skywork-Reward-Llama-3.1-8B.
//! - `armorm`: ArmoRM-Llama3-8B-v0.1's `LlamaForRewardModelWithGating`; also returns the 19
//!   objective rewards.
//! - `judge`: any causal LM as a judge, reward `log P(yes) - log P(no)` after a grading prompt.
//!
//! Each renders (prompt, response) with the reward model's own chat template as a conversation
//! whose last turn is the response, encodes it without adding special tokens (the template writes
//! the BOS), and scores a call's samples in length-sorted batches. A score depends on its own
//! tokens only, never on the batch.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sweetspot_core::{
    BuildContext, ConfigIssue, Message, PluginError, PluginInput, Progress, Prompt, PromptContent,
    RewardModel, RewardModelConfig, SampleGroup, ScoredGroup, ScoredSample, check_device_name,
    check_quantize, declared_inputs,
};
use sweetspot_model::reward::{LLAMA3_GATING_PATTERN, find_last};
use sweetspot_model::{
    ModelError, Precision, Quantize, RewardInput, RewardNet, Tokenizer, resolve_device,
};

/// Call from a binary to make sure this crate is linked (and its plugins registered).
#[inline(never)]
pub fn link() {
    std::hint::black_box(());
}

/// The judge's default grading prompt; `{prompt}` and `{response}` are replaced.
pub const DEFAULT_JUDGE_TEMPLATE: &str = "Here is a request and a response to it.\n\n\
[Request]\n{prompt}\n\n[Response]\n{response}\n\n\
Is the response helpful, correct and appropriate? Answer Yes or No.";

/// `batch_size` when not given (the CLI's flags take it from here too).
pub fn default_batch() -> usize {
    16
}
/// `max_batch_tokens` when not given.
pub fn default_batch_tokens() -> usize {
    16 * 512
}
fn default_pattern() -> String {
    LLAMA3_GATING_PATTERN.to_string()
}
fn default_template() -> String {
    DEFAULT_JUDGE_TEMPLATE.to_string()
}
fn default_yes() -> String {
    "Yes".into()
}
fn default_no() -> String {
    "No".into()
}

/// The `[reward]` table with `type = "seq-cls"` (or `"skywork"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeqClsConfig {
    /// A model folder: config.json, safetensors (one file or shards), tokenizer.json and the
    /// chat template.
    pub model: PathBuf,
    /// Most sequences per batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Most padded tokens per batch (long sequences go in smaller batches).
    #[serde(default = "default_batch_tokens")]
    pub max_batch_tokens: usize,
    /// The device; `[run].device` / `--device` when absent.
    pub device: Option<String>,
    /// Float type of the model's weights (`f32`, `bf16`, `f16`); heads compute in f32.
    #[serde(default)]
    pub dtype: Precision,
    /// `"q8_0"`: the backbone's projections computed with 8-bit weights and activations
    /// (llama.cpp's Q8_0 blocks; VNNI dot products where the CPU has them), on the CPU with
    /// `dtype = "f32"`; the head stays in f32. Unset: the weights' float type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<Quantize>,
}

/// `type = "skywork"`: the same as `seq-cls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SkyworkConfig(pub SeqClsConfig);

/// The `[reward]` table with `type = "armorm"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmoRmConfig {
    /// A model folder in ArmoRM's layout (`LlamaForRewardModelWithGating`).
    pub model: PathBuf,
    /// Most sequences per batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Most padded tokens per batch.
    #[serde(default = "default_batch_tokens")]
    pub max_batch_tokens: usize,
    /// The text whose tokens' last occurrence is where the gating network reads (the end of the
    /// prompt); Llama-3's `<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n`.
    #[serde(default = "default_pattern")]
    pub gating_pattern: String,
    /// The device; `[run].device` / `--device` when absent.
    pub device: Option<String>,
    /// Float type of the model's weights (`f32`, `bf16`, `f16`); heads compute in f32.
    #[serde(default)]
    pub dtype: Precision,
    /// `"q8_0"`: the backbone's projections computed with 8-bit weights and activations
    /// (llama.cpp's Q8_0 blocks; VNNI dot products where the CPU has them), on the CPU with
    /// `dtype = "f32"`; the head stays in f32. Unset: the weights' float type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<Quantize>,
}

/// The `[reward]` table with `type = "judge"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// A causal LM: a model folder or a .gguf file.
    pub model: PathBuf,
    /// The grading prompt, sent as one user turn; `{prompt}` and `{response}` are replaced.
    #[serde(default = "default_template")]
    pub template: String,
    /// The answer that counts for the response (one token).
    #[serde(default = "default_yes")]
    pub yes: String,
    /// The answer that counts against it (one token).
    #[serde(default = "default_no")]
    pub no: String,
    /// Most sequences per batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Most padded tokens per batch.
    #[serde(default = "default_batch_tokens")]
    pub max_batch_tokens: usize,
    /// The device; `[run].device` / `--device` when absent.
    pub device: Option<String>,
    /// Float type of the model's weights (`f32`, `bf16`, `f16`); heads compute in f32.
    #[serde(default)]
    pub dtype: Precision,
    /// `"q8_0"`: the model's projections, the vocabulary projection included, computed with
    /// 8-bit weights and activations, on the CPU with `dtype = "f32"`. Unset: the weights' type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<Quantize>,
}

/// The pairwise judge's default prompt: `{response}` receives both responses, labelled.
pub const DEFAULT_PAIRWISE_TEMPLATE: &str = "Here is an instruction and two responses to it.\n\n\
Instruction: {prompt}\n\n{response}\n\nWhich response follows the instruction better? Answer with \
one letter, A or B.";

fn default_pairwise_template() -> String {
    DEFAULT_PAIRWISE_TEMPLATE.to_string()
}
fn default_a() -> String {
    "A".into()
}
fn default_b() -> String {
    "B".into()
}

/// `type = "pairwise-judge"` (for `[eval.judge]`): a causal LM reads one grading prompt holding
/// two responses (`{response}` becomes `Response A: ...` and `Response B: ...`) and its score is
/// log P(`a`) - log P(`b`) for the next token. The eval stage asks it in both orders.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairwiseJudgeConfig {
    /// A causal LM: a model folder or a .gguf file.
    pub model: PathBuf,
    /// The grading prompt, one user turn; `{prompt}` and `{response}` (both responses) replaced.
    #[serde(default = "default_pairwise_template")]
    pub template: String,
    /// The answer naming the first response (one token).
    #[serde(default = "default_a")]
    pub a: String,
    /// The answer naming the second response (one token).
    #[serde(default = "default_b")]
    pub b: String,
    /// Most sequences per batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Most padded tokens per batch.
    #[serde(default = "default_batch_tokens")]
    pub max_batch_tokens: usize,
    /// The device; `[run].device` / `--device` when absent.
    pub device: Option<String>,
    /// Float type of the model's weights.
    #[serde(default)]
    pub dtype: Precision,
    /// `"q8_0"`: 8-bit projections, as the `judge` type's `quantize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<Quantize>,
}

impl PairwiseJudgeConfig {
    /// The same model as a Yes/No judge whose answers are `a` and `b`.
    fn as_judge(&self) -> JudgeConfig {
        JudgeConfig {
            model: self.model.clone(),
            template: self.template.clone(),
            yes: self.a.clone(),
            no: self.b.clone(),
            batch_size: self.batch_size,
            max_batch_tokens: self.max_batch_tokens,
            device: self.device.clone(),
            dtype: self.dtype,
            quantize: self.quantize,
        }
    }
}

#[sweetspot_core::plugin(
    name = "pairwise-judge",
    description = "a causal LM comparing two responses: log P(A) - log P(B) (for [eval.judge])",
    example = "type = \"pairwise-judge\"\nmodel = \"models/SmolLM2-135M-Instruct.Q4_1.gguf\""
)]
impl RewardModelConfig for PairwiseJudgeConfig {
    fn memory_use(&self) -> Option<sweetspot_core::InferenceMemory> {
        Some(sweetspot_core::InferenceMemory {
            model: self.model.clone(),
            dtype: self.dtype,
            batch_size: sweetspot_core::Rows::Fixed(self.batch_size),
            max_batch_tokens: Some(self.max_batch_tokens),
            max_new_tokens: 0,
            quantize: self.quantize,
        })
    }
    fn inputs(&self, _ctx: &BuildContext) -> Vec<PluginInput> {
        declared_inputs([("model", &self.model)])
    }

    fn pairwise(&self) -> bool {
        true
    }

    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        self.as_judge().check(ctx).map_err(|mut i| {
            i.key = match i.key.as_str() {
                "yes" => "a".into(),
                "no" => "b".into(),
                _ => i.key,
            };
            i
        })
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn RewardModel>, PluginError> {
        self.check(ctx).map_err(issue("pairwise-judge"))?;
        self.as_judge().build(ctx)
    }
}

fn model_err(context: &str) -> impl Fn(ModelError) -> PluginError + '_ {
    move |e| PluginError::other(context, e)
}

/// `net` with its projections in `quantize` (`RewardNet::quantize`), or as it is when unset.
fn quantized(
    net: RewardNet,
    quantize: Option<Quantize>,
    plugin: &str,
) -> Result<RewardNet, PluginError> {
    match quantize {
        Some(q) => net.quantize(q).map_err(model_err(plugin)),
        None => Ok(net),
    }
}

/// The checks every reward model shares: batch limits, the device's name, the model's path.
fn check_common(
    ctx: &BuildContext,
    model: &std::path::Path,
    batch_size: usize,
    max_batch_tokens: usize,
    device: Option<&String>,
) -> Result<(), ConfigIssue> {
    if batch_size == 0 {
        return Err(ConfigIssue::new("batch_size", "must be at least 1"));
    }
    if max_batch_tokens == 0 {
        return Err(ConfigIssue::new("max_batch_tokens", "must be at least 1"));
    }
    if let Some(d) = device {
        check_device_name(d).map_err(|m| ConfigIssue::new("device", m))?;
    }
    let path = ctx.resolve(model);
    if !path.exists() {
        return Err(ConfigIssue::missing_file("model", &path));
    }
    Ok(())
}

fn issue(plugin: &'static str) -> impl Fn(ConfigIssue) -> PluginError {
    move |i| PluginError::config(plugin, i.to_string())
}

/// The id of `word`, which must be one token for `tokenizer`.
fn one_token(tokenizer: &Tokenizer, key: &str, word: &str) -> Result<u32, ConfigIssue> {
    let ids = tokenizer
        .encode(word, false)
        .map_err(|e| ConfigIssue::new(key, e.to_string()))?;
    match ids[..] {
        [id] => Ok(id),
        _ => Err(ConfigIssue::new(
            key,
            format!(
                "{word:?} is {} tokens for this tokenizer; it must be one",
                ids.len()
            ),
        )),
    }
}

fn device_for(
    cfg: Option<&String>,
    ctx: &BuildContext,
) -> Result<sweetspot_model::Device, PluginError> {
    let name = cfg.cloned().unwrap_or_else(|| ctx.device.clone());
    resolve_device(&name).map_err(model_err("reward model"))
}

#[sweetspot_core::plugin(
    name = "seq-cls",
    description = "LlamaForSequenceClassification with one label (Skywork-Reward), read at the last token",
    example = "type = \"seq-cls\"\nmodel = \"models/Skywork-Reward-Llama-3.1-8B\""
)]
impl RewardModelConfig for SeqClsConfig {
    fn memory_use(&self) -> Option<sweetspot_core::InferenceMemory> {
        Some(sweetspot_core::InferenceMemory {
            model: self.model.clone(),
            dtype: self.dtype,
            batch_size: sweetspot_core::Rows::Fixed(self.batch_size),
            max_batch_tokens: Some(self.max_batch_tokens),
            max_new_tokens: 0,
            quantize: self.quantize,
        })
    }
    fn inputs(&self, _ctx: &BuildContext) -> Vec<PluginInput> {
        declared_inputs([("model", &self.model)])
    }

    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_common(
            ctx,
            &self.model,
            self.batch_size,
            self.max_batch_tokens,
            self.device.as_ref(),
        )?;
        check_quantize(
            self.quantize,
            self.dtype,
            self.device.as_deref().unwrap_or(&ctx.device),
        )
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn RewardModel>, PluginError> {
        self.check(ctx).map_err(issue("seq-cls"))?;
        let dir = ctx.resolve(&self.model);
        let device = device_for(self.device.as_ref(), ctx)?;
        tracing::info!(model = %dir.display(), "loading sequence-classification reward model");
        let net = RewardNet::seq_cls_from_pretrained(&dir, &device, self.dtype)
            .map_err(model_err("seq-cls"))?;
        let net = quantized(net, self.quantize, "seq-cls")?;
        let tokenizer = Tokenizer::from_dir(&dir, &[]).map_err(model_err("seq-cls"))?;
        BurnReward::boxed(
            net,
            tokenizer,
            Input::Conversation,
            self.batch_size,
            self.max_batch_tokens,
        )
    }
}

#[sweetspot_core::plugin(
    name = "skywork",
    description = "alias of seq-cls",
    example = "type = \"skywork\"\nmodel = \"models/Skywork-Reward-Llama-3.1-8B\""
)]
impl RewardModelConfig for SkyworkConfig {
    fn memory_use(&self) -> Option<sweetspot_core::InferenceMemory> {
        self.0.memory_use()
    }
    fn inputs(&self, ctx: &BuildContext) -> Vec<PluginInput> {
        self.0.inputs(ctx)
    }

    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        self.0.check(ctx)
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn RewardModel>, PluginError> {
        self.0.build(ctx)
    }
}

#[sweetspot_core::plugin(
    name = "armorm",
    description = "ArmoRM (LlamaForRewardModelWithGating): 19 objectives mixed by a gating network",
    example = "type = \"armorm\"\nmodel = \"models/ArmoRM-Llama3-8B-v0.1\""
)]
impl RewardModelConfig for ArmoRmConfig {
    fn memory_use(&self) -> Option<sweetspot_core::InferenceMemory> {
        Some(sweetspot_core::InferenceMemory {
            model: self.model.clone(),
            dtype: self.dtype,
            batch_size: sweetspot_core::Rows::Fixed(self.batch_size),
            max_batch_tokens: Some(self.max_batch_tokens),
            max_new_tokens: 0,
            quantize: self.quantize,
        })
    }
    fn inputs(&self, _ctx: &BuildContext) -> Vec<PluginInput> {
        declared_inputs([("model", &self.model)])
    }

    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_common(
            ctx,
            &self.model,
            self.batch_size,
            self.max_batch_tokens,
            self.device.as_ref(),
        )?;
        check_quantize(
            self.quantize,
            self.dtype,
            self.device.as_deref().unwrap_or(&ctx.device),
        )?;
        if self.gating_pattern.is_empty() {
            return Err(ConfigIssue::new("gating_pattern", "must not be empty"));
        }
        Ok(())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn RewardModel>, PluginError> {
        self.check(ctx).map_err(issue("armorm"))?;
        let dir = ctx.resolve(&self.model);
        let device = device_for(self.device.as_ref(), ctx)?;
        tracing::info!(model = %dir.display(), "loading ArmoRM reward model");
        let net = RewardNet::armorm_from_pretrained(&dir, &device, self.dtype)
            .map_err(model_err("armorm"))?;
        let net = quantized(net, self.quantize, "armorm")?;
        let tokenizer = Tokenizer::from_dir(&dir, &[]).map_err(model_err("armorm"))?;
        let pattern = tokenizer
            .encode(&self.gating_pattern, false)
            .map_err(model_err("armorm"))?;
        if pattern.is_empty() {
            return Err(PluginError::config("armorm", "`gating_pattern` is empty"));
        }
        BurnReward::boxed(
            net,
            tokenizer,
            Input::Gated {
                pattern,
                text: self.gating_pattern.clone(),
            },
            self.batch_size,
            self.max_batch_tokens,
        )
    }
}

#[sweetspot_core::plugin(
    name = "judge",
    description = "a causal LM as judge: log P(Yes) - log P(No) after a grading prompt",
    example = "type = \"judge\"\nmodel = \"models/SmolLM2-135M-Instruct.Q4_1.gguf\""
)]
impl RewardModelConfig for JudgeConfig {
    fn memory_use(&self) -> Option<sweetspot_core::InferenceMemory> {
        Some(sweetspot_core::InferenceMemory {
            model: self.model.clone(),
            dtype: self.dtype,
            batch_size: sweetspot_core::Rows::Fixed(self.batch_size),
            max_batch_tokens: Some(self.max_batch_tokens),
            max_new_tokens: 0,
            quantize: self.quantize,
        })
    }
    fn inputs(&self, _ctx: &BuildContext) -> Vec<PluginInput> {
        declared_inputs([("model", &self.model)])
    }

    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_common(
            ctx,
            &self.model,
            self.batch_size,
            self.max_batch_tokens,
            self.device.as_ref(),
        )?;
        for key in ["{prompt}", "{response}"] {
            if !self.template.contains(key) {
                return Err(ConfigIssue::new("template", format!("must contain {key}")));
            }
        }
        check_quantize(
            self.quantize,
            self.dtype,
            self.device.as_deref().unwrap_or(&ctx.device),
        )?;
        // The answers must be one token each: the tokenizer alone tells (no weights loaded).
        let tokenizer = sweetspot_model::load_tokenizer(&ctx.resolve(&self.model))
            .map_err(|e| ConfigIssue::new("model", e.to_string()))?;
        one_token(&tokenizer, "yes", &self.yes)?;
        one_token(&tokenizer, "no", &self.no)?;
        Ok(())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn RewardModel>, PluginError> {
        // The check reads only the tokenizer (a GGUF's header), so it costs little here.
        self.check(ctx).map_err(issue("judge"))?;
        let path = ctx.resolve(&self.model);
        let device = device_for(self.device.as_ref(), ctx)?;
        tracing::info!(model = %path.display(), "loading judge model");
        let (model, tokenizer) = sweetspot_model::load_causal_lm(&path, &device, self.dtype)
            .map_err(model_err("judge"))?;
        if !tokenizer.has_chat_template() {
            return Err(PluginError::config(
                "judge",
                format!("{}: the model has no chat template", path.display()),
            ));
        }
        let yes = one_token(&tokenizer, "yes", &self.yes).map_err(issue("judge"))?;
        let no = one_token(&tokenizer, "no", &self.no).map_err(issue("judge"))?;
        let net = RewardNet::judge(model, yes, no).map_err(model_err("judge"))?;
        let net = quantized(net, self.quantize, "judge")?;
        BurnReward::boxed(
            net,
            tokenizer,
            Input::Judge {
                template: self.template.clone(),
            },
            self.batch_size,
            self.max_batch_tokens,
        )
    }
}

/// How a (prompt, response) becomes the model's input.
#[derive(Debug)]
enum Input {
    /// The prompt's turns, then the response as the assistant's turn.
    Conversation,
    /// The same, plus the gating position at the last occurrence of `pattern`.
    Gated { pattern: Vec<u32>, text: String },
    /// One user turn, the grading prompt, then the generation prompt.
    Judge { template: String },
}

/// A loaded reward model.
pub struct BurnReward {
    net: RewardNet,
    tokenizer: Tokenizer,
    input: Input,
    batch_size: usize,
    max_batch_tokens: usize,
}

impl std::fmt::Debug for BurnReward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnReward")
            .field("input", &self.input)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

/// The prompt as plain text for a judge's grading prompt: a text prompt as it is, a single user
/// message as its content, a longer chat as `role: content` lines.
fn prompt_text(content: &PromptContent) -> String {
    match content {
        PromptContent::Text(t) => t.clone(),
        PromptContent::Chat(m) if m.len() == 1 && m[0].role == "user" => m[0].content.clone(),
        PromptContent::Chat(m) => m
            .iter()
            .map(|m| format!("{}: {}", m.role, m.content))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// `template` with `{prompt}` and `{response}` replaced in one pass (a response that contains
/// `{prompt}` stays as written).
fn fill(template: &str, prompt: &str, response: &str) -> String {
    let mut out = String::with_capacity(template.len() + prompt.len() + response.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{prompt}") {
            out.push_str(prompt);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{response}") {
            out.push_str(response);
            rest = t;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

impl BurnReward {
    fn boxed(
        net: RewardNet,
        tokenizer: Tokenizer,
        input: Input,
        batch_size: usize,
        max_batch_tokens: usize,
    ) -> Result<Box<dyn RewardModel>, PluginError> {
        if !tokenizer.has_chat_template() {
            return Err(PluginError::Input(
                "the reward model's tokenizer has no chat template".into(),
            ));
        }
        Ok(Box::new(Self {
            net,
            tokenizer,
            input,
            batch_size,
            max_batch_tokens,
        }))
    }

    fn encode(
        &self,
        prompt: &Prompt,
        response: &str,
        index: u32,
    ) -> Result<RewardInput, PluginError> {
        let which = || format!("prompt `{}` sample {index}", prompt.id);
        let err = |e: ModelError| PluginError::Input(format!("{}: {e}", which()));
        let ids = match &self.input {
            Input::Conversation | Input::Gated { .. } => self
                .tokenizer
                .encode_scored(prompt, response)
                .map_err(err)?,
            Input::Judge { template } => {
                let text = fill(template, &prompt_text(&prompt.content), response);
                let messages = [Message {
                    role: "user".into(),
                    content: text,
                }];
                self.tokenizer
                    .encode_messages(&messages, true)
                    .map_err(err)?
            }
        };
        let max = self.net.max_tokens();
        if ids.len() > max {
            return Err(PluginError::Input(format!(
                "{}: {} tokens, more than the reward model's {max} positions",
                which(),
                ids.len()
            )));
        }
        let gating_position = match &self.input {
            Input::Gated { pattern, text } => Some(find_last(&ids, pattern).ok_or_else(|| {
                PluginError::Input(format!(
                    "{}: the gating pattern {text:?} does not occur in the rendered \
                     conversation (is the model's chat template Llama-3's?)",
                    which()
                ))
            })?),
            _ => None,
        };
        Ok(RewardInput {
            ids,
            gating_position,
        })
    }
}

impl RewardModel for BurnReward {
    fn objectives(&self) -> Vec<String> {
        self.net.objective_names()
    }

    fn score(
        &mut self,
        groups: Vec<SampleGroup>,
        progress: &dyn Progress,
        sink: &mut dyn FnMut(ScoredGroup) -> Result<(), PluginError>,
    ) -> Result<(), PluginError> {
        let mut inputs = Vec::new();
        for g in &groups {
            for s in &g.samples {
                inputs.push(self.encode(&g.prompt, &s.response, s.sample_index)?);
            }
        }
        let outputs = self
            .net
            .score_all(&inputs, self.batch_size, self.max_batch_tokens, |n| {
                progress.advance(n as u64)
            })
            .map_err(model_err("scoring"))?;
        let mut outputs = outputs.into_iter();
        for g in groups {
            let mut samples = Vec::with_capacity(g.samples.len());
            for s in g.samples {
                let Some(o) = outputs.next() else {
                    return Err(PluginError::Input(
                        "the model returned too few scores".into(),
                    ));
                };
                if !o.score.is_finite() {
                    return Err(PluginError::Input(format!(
                        "prompt `{}` sample {}: the reward is {}",
                        g.prompt.id, s.sample_index, o.score
                    )));
                }
                samples.push(ScoredSample {
                    sample: s,
                    reward: f64::from(o.score),
                    objective_rewards: o.rewards.map(|r| r.into_iter().map(f64::from).collect()),
                });
            }
            sink(ScoredGroup {
                prompt: g.prompt,
                samples,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_in_one_pass() {
        assert_eq!(fill("Q: {prompt} A: {response}.", "p", "r"), "Q: p A: r.");
        assert_eq!(fill("{response}", "p", "{prompt}"), "{prompt}");
        assert_eq!(fill("{x} {prompt}", "p", "r"), "{x} p");
    }

    #[test]
    fn chat_prompts_become_text_for_the_judge() {
        let single = PromptContent::Chat(vec![Message {
            role: "user".into(),
            content: "hi".into(),
        }]);
        assert_eq!(prompt_text(&single), "hi");
        let two = PromptContent::Chat(vec![
            Message {
                role: "system".into(),
                content: "be brief".into(),
            },
            Message {
                role: "user".into(),
                content: "hi".into(),
            },
        ]);
        assert_eq!(prompt_text(&two), "system: be brief\nuser: hi");
    }
}
