//! Decoder configuration from a Hugging Face `config.json`: the Llama, Mistral, Qwen2 and Qwen3
//! families, whose differences are data ([`Family`]) read by one decoder.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// RoPE scaling (`rope_scaling` in `config.json`, or flattened into `rope_parameters`), computed
/// as transformers computes it: `default`, `llama3` (Llama-3.1), `linear` (positions divided by
/// `factor`), `dynamic` (NTK: the default frequencies up to `max_position_embeddings`, the only
/// positions sweetspot runs) and `yarn` (interpolated frequencies and an attention factor on cos
/// and sin). Any other type, and any key of the table not listed here, is refused by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// One of [`ROPE_TYPES`].
    #[serde(alias = "type", default = "default_rope_type")]
    pub rope_type: String,
    /// Scale factor.
    #[serde(default)]
    pub factor: Option<f64>,
    /// YaRN: the factor cos and sin are multiplied by (default from `factor`, `mscale` and
    /// `mscale_all_dim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
    /// YaRN: the ramp's fast boundary in rotations (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_fast: Option<f64>,
    /// YaRN: the ramp's slow boundary in rotations (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_slow: Option<f64>,
    /// YaRN: DeepSeek-style attention-factor numerator scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale: Option<f64>,
    /// YaRN: DeepSeek-style attention-factor denominator scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale_all_dim: Option<f64>,
    /// YaRN: whether the correction range is rounded outwards to whole dimensions (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    /// Llama-3.1's low-frequency factor.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// Llama-3.1's high-frequency factor.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// The context length the model was trained with before scaling.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// transformers 5's `rope_parameters`: the base and the scaling in one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    /// RoPE base.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// The scaling, flattened in.
    #[serde(flatten)]
    pub scaling: RopeScaling,
}

/// One or several token ids (`eos_token_id` may be either).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(i) => vec![*i],
            Self::Many(v) => v.clone(),
        }
    }
}

/// What sets one supported family's decoder apart from another's: everything else (RMSNorm,
/// RoPE, grouped-query attention, SwiGLU, tied or untied embeddings) is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// `model_type` in `config.json`.
    pub model_type: &'static str,
    /// The causal LM class transformers loads it with (written into an export's
    /// `architectures`).
    pub causal_lm: &'static str,
    /// Biases on the q, k and v projections (`attention_bias` for Llama, Mistral and Qwen3;
    /// always for Qwen2).
    pub qkv_bias: bool,
    /// Bias on the output projection (`attention_bias`; never for Qwen2).
    pub o_bias: bool,
    /// RMSNorm over each head's queries and keys before RoPE (Qwen3's `q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// Whether `sliding_window` applies by itself (Mistral), rather than only with
    /// `use_sliding_window` (Qwen2 and Qwen3, where it is refused).
    pub window_by_itself: bool,
    /// transformers' `head_dim` when the config has none (`None`: hidden_size / heads).
    pub default_head_dim: Option<usize>,
    /// transformers' `num_key_value_heads` when the config has none (`None`: the query heads).
    pub default_kv_heads: Option<usize>,
}

/// The RoPE types sweetspot computes.
pub const ROPE_TYPES: &[&str] = &["default", "llama3", "linear", "dynamic", "yarn"];

/// The keys a `rope_scaling` / `rope_parameters` table may hold.
const ROPE_KEYS: &[&str] = &[
    "rope_type",
    "type",
    "rope_theta",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "attention_factor",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "truncate",
    "partial_rotary_factor",
];

/// The `model_type`s sweetspot runs.
pub const MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// The fields of `config.json` the supported families need (Llama 2/3/3.1/3.2, Mistral,
/// SmolLM2, Qwen2/Qwen2.5, Qwen3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// One of [`MODEL_TYPES`].
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// RoPE scaling (transformers 4's layout).
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// RoPE base and scaling together (transformers 5's layout); wins over the two above.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Longest sequence the RoPE tables cover.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v/o projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Beginning-of-sequence token.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End token(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Padding token.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Hidden activation; only `silu` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Mistral's sliding attention window: a token attends to itself and the
    /// `sliding_window - 1` tokens before it (`null` or absent: the whole sequence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// GGUF's `rope_freqs.weight` (llama.cpp's form of Llama-3.1 scaling): per frequency, the
    /// factor its inverse frequency is divided by. Never in a `config.json`: a model holding it
    /// cannot be exported (its `config.json` could not say it).
    #[serde(skip)]
    pub rope_freqs: Option<Vec<f32>>,
}

/// How `config.json` keys that [`LlamaConfig`] does not hold are treated (docs/models.md states
/// the rule): a key is refused only if it would change what sweetspot computes and sweetspot does
/// not implement it.
///
/// Every key of a config is one of: a field of [`LlamaConfig`] (implemented); a key listed here
/// as having no effect on what sweetspot computes, whatever its value (metadata, output
/// containers, generation settings vLLM does not apply), with the reason; a key of
/// [`GENERATION_KEYS`] (read as the model's sampling defaults when the folder has no
/// `generation_config.json`); a key of [`FIXED_KEYS`] accepted at its neutral value only; or
/// unknown, which is refused by name: a setting sweetspot does not implement is never ignored.
pub const NO_EFFECT_KEYS: &[(&str, &str)] = &[
    ("architectures", "checked by the loader that reads the head"),
    ("_name_or_path", "bookkeeping"),
    (
        "_model_name_or_path",
        "bookkeeping (transformers' GGUF conversion)",
    ),
    ("transformers_version", "bookkeeping"),
    ("transformers.js_config", "bookkeeping"),
    ("is_llama_config", "bookkeeping"),
    ("unsloth_fixed", "bookkeeping (unsloth)"),
    ("unsloth_version", "bookkeeping (unsloth)"),
    ("finetuning_task", "bookkeeping"),
    ("prefix", "bookkeeping"),
    ("task_specific_params", "bookkeeping"),
    ("auto_map", "names the remote code sweetspot re-implements"),
    (
        "torch_dtype",
        "the recipe's `dtype` chooses the type weights are held in",
    ),
    (
        "dtype",
        "the recipe's `dtype` chooses the type weights are held in",
    ),
    (
        "use_bfloat16",
        "the recipe's `dtype` chooses the type weights are held in",
    ),
    ("initializer_range", "random initialization only"),
    (
        "use_cache",
        "sweetspot always caches keys and values when generating",
    ),
    ("return_dict", "output container only"),
    ("output_attentions", "output container only"),
    ("output_hidden_states", "output container only"),
    ("output_scores", "output container only"),
    ("return_dict_in_generate", "output container only"),
    (
        "torchscript",
        "TorchScript export only (weights are tied or cloned alike)",
    ),
    ("tf_legacy_loss", "TensorFlow training loss only"),
    (
        "is_decoder",
        "read only by encoder models; every supported family is a decoder",
    ),
    ("tokenizer_class", "the tokenizer files decide"),
    ("unk_token_id", "the tokenizer files decide"),
    ("sep_token_id", "the tokenizer files decide"),
    ("decoder_start_token_id", "encoder-decoder generation only"),
    ("id2label", "reward heads check their label count"),
    ("label2id", "reward heads check their label count"),
    ("num_labels", "reward heads check their label count"),
    (
        "problem_type",
        "the training loss of a classifier; sweetspot only scores with it",
    ),
    (
        "max_window_layers",
        "Qwen's first windowed layer, only read with use_sliding_window = true (refused)",
    ),
    ("num_objectives", "read by the ArmoRM head"),
    ("gating_temperature", "read by the ArmoRM head"),
    ("gating_hidden_dim", "read by the ArmoRM head"),
    ("gating_n_hidden", "read by the ArmoRM head"),
    // transformers 4 writes these generation settings into every config.json; vLLM does not
    // apply them (it reads only GENERATION_KEYS), and neither does sweetspot.
    (
        "max_length",
        "the recipe's max_new_tokens bounds a response",
    ),
    ("min_length", "a generate() setting vLLM does not apply"),
    (
        "do_sample",
        "the temperature decides (0 is greedy), as in vLLM",
    ),
    ("num_beams", "a generate() setting vLLM does not apply"),
    (
        "num_beam_groups",
        "a generate() setting vLLM does not apply",
    ),
    (
        "diversity_penalty",
        "a generate() setting vLLM does not apply",
    ),
    ("length_penalty", "beam search only"),
    ("early_stopping", "beam search only"),
    ("num_return_sequences", "the recipe's n decides"),
    (
        "no_repeat_ngram_size",
        "a generate() setting vLLM does not apply",
    ),
    (
        "encoder_no_repeat_ngram_size",
        "a generate() setting vLLM does not apply",
    ),
    ("bad_words_ids", "a generate() setting vLLM does not apply"),
    (
        "forced_bos_token_id",
        "a generate() setting vLLM does not apply",
    ),
    (
        "forced_eos_token_id",
        "a generate() setting vLLM does not apply",
    ),
    (
        "remove_invalid_values",
        "a generate() setting vLLM does not apply",
    ),
    (
        "exponential_decay_length_penalty",
        "a generate() setting vLLM does not apply",
    ),
    (
        "suppress_tokens",
        "a generate() setting vLLM does not apply",
    ),
    (
        "begin_suppress_tokens",
        "a generate() setting vLLM does not apply",
    ),
    ("typical_p", "a generate() setting vLLM does not apply"),
];

/// Sampling settings an older `config.json` may carry: where the folder has no
/// `generation_config.json`, the ones that differ from transformers 4's defaults are the model's
/// sampling defaults ([`crate::GenerationDefaults`]), as vLLM reads them.
pub const GENERATION_KEYS: &[&str] = &[
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "min_p",
];

/// Keys accepted with one value only (as JSON text; `null` is accepted too); any other value is
/// refused by name, with what it would change.
pub const FIXED_KEYS: &[(&str, &str, &str)] = &[
    (
        "attention_dropout",
        "0.0",
        "dropout in attention changes training",
    ),
    (
        "pretraining_tp",
        "1",
        "tensor-parallel slicing of the projections",
    ),
    ("rope_interleaved", "false", "interleaved RoPE pairs"),
    ("is_encoder_decoder", "false", "an encoder-decoder model"),
    (
        "use_sliding_window",
        "false",
        "Qwen2-style per-layer windows",
    ),
    ("use_mrope", "false", "multimodal RoPE sections"),
    (
        "add_cross_attention",
        "false",
        "cross-attention layers over an encoder",
    ),
    (
        "cross_attention_hidden_size",
        "null",
        "cross-attention layers over an encoder",
    ),
    (
        "tie_encoder_decoder",
        "false",
        "an encoder-decoder model's shared weights",
    ),
    ("pruned_heads", "{}", "attention heads removed from layers"),
    (
        "chunk_size_feed_forward",
        "0",
        "the feed-forward layer applied in chunks",
    ),
];

/// Limits on sizes in a config, far above any released model, so that a corrupted or hostile
/// header is refused before anything is allocated from it.
pub const SIZE_LIMITS: &[(&str, usize)] = &[
    ("vocab_size", 1 << 22),
    ("hidden_size", 1 << 17),
    ("intermediate_size", 1 << 19),
    ("num_hidden_layers", 1 << 10),
    ("num_attention_heads", 1 << 10),
    ("num_key_value_heads", 1 << 10),
    ("head_dim", 1 << 12),
    ("max_position_embeddings", 1 << 21),
];

/// Refuses every key that is neither implemented nor known to have no effect, and every fixed
/// key with another value.
fn audit_keys(map: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
    const FIELDS: &[&str] = &[
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "max_position_embeddings",
        "tie_word_embeddings",
        "attention_bias",
        "mlp_bias",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "hidden_act",
        "sliding_window",
    ];
    for table in ["rope_scaling", "rope_parameters"] {
        let Some(inner) = map.get(table).and_then(|v| v.as_object()) else {
            continue;
        };
        for (key, value) in inner {
            if !ROPE_KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "field `{table}.{key}`: not supported by sweetspot (it reads {}); the model \
                     is refused rather than run without it",
                    ROPE_KEYS.join(", ")
                ));
            }
            if key == "partial_rotary_factor" && !(value.is_null() || value.as_f64() == Some(1.0)) {
                return Err(format!(
                    "field `{table}.partial_rotary_factor`: {value} (RoPE on part of each head) \
                     is not supported; only 1.0 is"
                ));
            }
        }
    }
    for (key, value) in map {
        if FIELDS.contains(&key.as_str())
            || NO_EFFECT_KEYS.iter().any(|(k, _)| k == key)
            || GENERATION_KEYS.contains(&key.as_str())
        {
            continue;
        }
        if let Some((_, accepted, what)) = FIXED_KEYS.iter().find(|(k, _, _)| k == key) {
            let same = serde_json::from_str::<serde_json::Value>(accepted)
                .is_ok_and(|a| a == *value || (a.is_number() && a.as_f64() == value.as_f64()));
            if value.is_null() || same {
                continue;
            }
            return Err(format!(
                "field `{key}`: {value} ({what}) is not supported; only {accepted} is"
            ));
        }
        if key == "layer_types" {
            let all_full = value.as_array().is_some_and(|a| {
                a.iter()
                    .all(|t| t.as_str() == Some("full_attention") || t.is_null())
            });
            if all_full || value.is_null() {
                continue;
            }
            return Err(
                "field `layer_types`: per-layer attention types are not supported (only \
                 full_attention on every layer; Mistral's window is `sliding_window`)"
                    .into(),
            );
        }
        return Err(format!(
            "field `{key}`: not supported by sweetspot; it may change what the model computes, \
             so the model is refused rather than run without it (docs/recipes.md lists the \
             fields each family reads; docs/models.md the rule for the others)"
        ));
    }
    Ok(())
}

fn default_rope_type() -> String {
    "default".into()
}
fn default_model_type() -> String {
    "llama".into()
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses and checks the text of `config.json` (`path` names it in errors): every key is
    /// implemented, known to have no effect, or refused by name ([`NO_EFFECT_KEYS`],
    /// [`FIXED_KEYS`]); sizes are within [`SIZE_LIMITS`].
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ModelError> {
        let err = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| err(format!("line {}: not valid JSON: {e}", e.line())))?;
        let Some(map) = value.as_object() else {
            return Err(err("not a JSON object".into()));
        };
        audit_keys(map).map_err(&err)?;
        let cfg: Self = serde_path_to_error::deserialize(&value).map_err(|e| {
            let inner = e.inner().to_string();
            let inner = inner.split(" at line").next().unwrap_or(&inner).to_string();
            err(format!("field `{}`: {inner}", e.path()))
        })?;
        cfg.check().map_err(err)?;
        Ok(cfg)
    }

    /// Checks that the shapes fit together and the architecture is supported.
    pub fn check(&self) -> Result<(), String> {
        for (field, value) in self.sizes() {
            let limit = SIZE_LIMITS
                .iter()
                .find(|(f, _)| *f == field)
                .map_or(usize::MAX, |(_, l)| *l);
            if value > limit {
                return Err(format!(
                    "field `{field}`: {value} is beyond any real model (at most {limit}); \
                     the file is corrupt or not a model configuration"
                ));
            }
        }
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(format!("field `{field}`: must be at least 1"));
            }
        }
        if self.sliding_window == Some(0) {
            return Err("field `sliding_window`: must be at least 1 (or null for none)".into());
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(format!(
                "field `rms_norm_eps`: {} is not a positive number",
                self.rms_norm_eps
            ));
        }
        if !(self.theta().is_finite() && self.theta() > 0.0) {
            return Err(format!(
                "field `rope_theta`: {} is not a positive number",
                self.theta()
            ));
        }
        if !MODEL_TYPES.contains(&self.model_type.as_str()) {
            return Err(format!(
                "field `model_type`: `{}` is not a supported family ({})",
                self.model_type,
                MODEL_TYPES.join(", ")
            ));
        }
        if self.model_type == "qwen2" && self.attention_bias {
            return Err(
                "field `attention_bias`: Qwen2 has biases on q, k and v and none on \
                        o_proj whatever this says; `true` is not a Qwen2 model"
                    .into(),
            );
        }
        if self.model_type.starts_with("qwen") && self.mlp_bias {
            return Err(format!(
                "field `mlp_bias`: {} has no MLP biases",
                self.family().causal_lm
            ));
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "field `hidden_act`: `{}` is not supported (silu)",
                self.hidden_act
            ));
        }
        if self.num_attention_heads == 0
            || self.kv_heads() == 0
            || !self.num_attention_heads.is_multiple_of(self.kv_heads())
        {
            return Err(format!(
                "field `num_key_value_heads`: {} does not divide num_attention_heads = {}",
                self.kv_heads(),
                self.num_attention_heads
            ));
        }
        if self.head_dim.is_none()
            && self.family().default_head_dim.is_none()
            && !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err("field `hidden_size`: not a multiple of num_attention_heads".into());
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err("field `head_dim`: RoPE needs an even head size".into());
        }
        if let (Some(scaling), Some(params)) = (&self.rope_scaling, &self.rope_parameters)
            && *scaling != params.scaling
        {
            return Err(
                "fields `rope_scaling` and `rope_parameters`: both are set and differ; which one \
                 applies differs between transformers versions, so the model is refused (keep one)"
                    .into(),
            );
        }
        if let Some(s) = self.scaling() {
            let table = self.scaling_field();
            let need = |what: &str, v: Option<f64>| -> Result<(), String> {
                match v {
                    Some(x) if x.is_finite() && x > 0.0 => Ok(()),
                    Some(x) => Err(format!(
                        "field `{table}.{what}`: {x} is not a positive number"
                    )),
                    None => Err(format!(
                        "field `{table}`: rope type `{}` needs `{what}`",
                        s.rope_type
                    )),
                }
            };
            match s.rope_type.as_str() {
                "default" => {}
                "llama3" => {
                    need("factor", s.factor)?;
                    need("low_freq_factor", s.low_freq_factor)?;
                    need("high_freq_factor", s.high_freq_factor)?;
                    need(
                        "original_max_position_embeddings",
                        s.original_max_position_embeddings.map(|v| v as f64),
                    )?;
                }
                "linear" | "dynamic" => need("factor", s.factor)?,
                "yarn" => {
                    if s.factor.is_some() {
                        need("factor", s.factor)?;
                    }
                    if let Some(o) = s.original_max_position_embeddings {
                        need("original_max_position_embeddings", Some(o as f64))?;
                    }
                    if let Some(a) = s.attention_factor {
                        need("attention_factor", Some(a))?;
                    }
                }
                other => {
                    return Err(format!(
                        "field `{table}.rope_type`: `{other}` is not supported ({})",
                        ROPE_TYPES.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }

    /// The size fields, with their `config.json` names.
    pub fn sizes(&self) -> [(&'static str, usize); 8] {
        [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
            ("max_position_embeddings", self.max_position_embeddings),
        ]
    }

    /// The number of parameters of the decoder this config describes (embedding, layers, final
    /// norm, and `lm_head` when untied), saturating instead of overflowing.
    pub fn parameter_count(&self) -> u128 {
        let (v, h, i) = (
            self.vocab_size as u128,
            self.hidden_size as u128,
            self.intermediate_size as u128,
        );
        let hd = self.head_dim() as u128;
        let (nh, nkv) = (self.num_attention_heads as u128, self.kv_heads() as u128);
        let attn = h * nh * hd * 2 + h * nkv * hd * 2;
        let layer = attn + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers as u128 * layer + h + head
    }

    /// The family's decoder differences (Llama's for an unknown `model_type`, which
    /// [`LlamaConfig::check`] refuses).
    pub fn family(&self) -> Family {
        let bias = self.attention_bias;
        let llama = Family {
            model_type: "llama",
            causal_lm: "LlamaForCausalLM",
            qkv_bias: bias,
            o_bias: bias,
            qk_norm: false,
            window_by_itself: true,
            default_head_dim: None,
            default_kv_heads: None,
        };
        match self.model_type.as_str() {
            "mistral" => Family {
                model_type: "mistral",
                causal_lm: "MistralForCausalLM",
                ..llama
            },
            "qwen2" => Family {
                model_type: "qwen2",
                causal_lm: "Qwen2ForCausalLM",
                qkv_bias: true,
                o_bias: false,
                window_by_itself: false,
                ..llama
            },
            "qwen3" => Family {
                model_type: "qwen3",
                causal_lm: "Qwen3ForCausalLM",
                qk_norm: true,
                window_by_itself: false,
                default_head_dim: Some(128),
                default_kv_heads: Some(32),
                ..llama
            },
            _ => llama,
        }
    }

    /// The attention window every layer uses: Mistral's `sliding_window`; none for Qwen, whose
    /// `sliding_window` only applies with `use_sliding_window = true` (refused), as
    /// transformers reads it.
    pub fn window(&self) -> Option<usize> {
        self.sliding_window
            .filter(|_| self.family().window_by_itself)
    }

    /// Key/value heads (absent: the family's default, else the query heads).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads
            .or(self.family().default_kv_heads)
            .unwrap_or(self.num_attention_heads)
    }

    /// Per-head width (absent: the family's default, else hidden_size / heads).
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .or(self.family().default_head_dim)
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The end tokens from the config.
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// The RoPE base, from `rope_parameters` or `rope_theta`.
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .unwrap_or(self.rope_theta)
    }

    /// The RoPE scaling, from `rope_parameters` or `rope_scaling`.
    pub fn scaling(&self) -> Option<&RopeScaling> {
        match &self.rope_parameters {
            Some(p) => Some(&p.scaling),
            None => self.rope_scaling.as_ref(),
        }
    }

    /// The table the RoPE scaling was read from (`rope_parameters` wins over `rope_scaling`), for
    /// errors.
    pub fn scaling_field(&self) -> &'static str {
        if self.rope_parameters.is_some() {
            "rope_parameters"
        } else {
            "rope_scaling"
        }
    }

    /// The factor cos and sin are multiplied by: YaRN's attention factor, 1 otherwise.
    pub fn attention_scaling(&self) -> f64 {
        let Some(s) = self.scaling().filter(|s| s.rope_type == "yarn") else {
            return 1.0;
        };
        if let Some(a) = s.attention_factor {
            return a;
        }
        let factor = self.yarn_factor(s);
        let mscale = |scale: f64, m: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * m * scale.ln() + 1.0
            }
        };
        match (s.mscale, s.mscale_all_dim) {
            (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                mscale(factor, m) / mscale(factor, all)
            }
            _ => mscale(factor, 1.0),
        }
    }

    /// YaRN's context length before scaling (transformers' default: `max_position_embeddings`).
    fn yarn_original(&self, s: &RopeScaling) -> f64 {
        s.original_max_position_embeddings
            .unwrap_or(self.max_position_embeddings) as f64
    }

    /// YaRN's factor (transformers' default: `max_position_embeddings` / the original length).
    fn yarn_factor(&self, s: &RopeScaling) -> f64 {
        s.factor
            .unwrap_or_else(|| self.max_position_embeddings as f64 / self.yarn_original(s))
    }

    /// RoPE inverse frequencies, in f32 as transformers computes them, with the config's scaling.
    pub fn inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim();
        let base = self.theta() as f32;
        let pos_freqs: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| base.powf(i as f32 / dim as f32))
            .collect();
        let inv: Vec<f32> = pos_freqs.iter().map(|p| 1.0 / p).collect();
        if let Some(factors) = &self.rope_freqs {
            // llama.cpp: theta_i = pos * base^(-2i/d) / rope_freqs[i].
            return inv.iter().zip(factors).map(|(f, k)| f / k).collect();
        }
        let Some(s) = self.scaling() else {
            return inv;
        };
        match s.rope_type.as_str() {
            // Dynamic NTK changes the base only past `max_position_embeddings`, where the RoPE
            // table ends and positions are refused.
            "default" | "dynamic" => return inv,
            "linear" => {
                let factor = s.factor.unwrap_or(1.0) as f32;
                return inv.into_iter().map(|f| f / factor).collect();
            }
            "yarn" => {
                let factor = self.yarn_factor(s);
                let original = self.yarn_original(s);
                let theta = self.theta();
                let d = dim as f64;
                // The dimension at which a frequency makes `rotations` turns over the original
                // context.
                let correction = |rotations: f64| {
                    d * (original / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * theta.ln())
                };
                let (mut low, mut high) = (
                    correction(s.beta_fast.filter(|b| *b != 0.0).unwrap_or(32.0)),
                    correction(s.beta_slow.filter(|b| *b != 0.0).unwrap_or(1.0)),
                );
                if s.truncate.unwrap_or(true) {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += 0.001;
                }
                let (low, high) = (low as f32, high as f32);
                let factor = factor as f32;
                return pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        let inter = 1.0 / (factor * p);
                        let extra = 1.0 / p;
                        inter * (1.0 - extrapolation) + extra * extrapolation
                    })
                    .collect();
            }
            _ => {}
        }
        let factor = s.factor.unwrap_or(1.0) as f32;
        let low = s.low_freq_factor.unwrap_or(1.0) as f32;
        let high = s.high_freq_factor.unwrap_or(4.0) as f32;
        let old = s.original_max_position_embeddings.unwrap_or(8192) as f32;
        let low_wavelen = old / low;
        let high_wavelen = old / high;
        inv.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f32::consts::PI / f;
                let scaled = if wavelen > low_wavelen { f / factor } else { f };
                // transformers: neither high- nor low-frequency (NaN never occurs here).
                let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                if medium {
                    let smooth = (old / wavelen - low) / (high - low);
                    (1.0 - smooth) * scaled / factor + smooth * scaled
                } else {
                    scaled
                }
            })
            .collect()
    }
}
