//! Llama-family configuration from a Hugging Face `config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// RoPE scaling (`rope_scaling` in `config.json`). Only Llama-3.1's `llama3` type changes the
/// frequencies; `default` (or absent) leaves them as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// `llama3` or `default`.
    #[serde(alias = "type", default = "default_rope_type")]
    pub rope_type: String,
    /// Scale factor.
    #[serde(default)]
    pub factor: Option<f64>,
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

/// The fields of `config.json` the Llama family needs (Llama 2/3/3.1, Mistral, SmolLM2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama` or `mistral`.
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

    /// Parses and checks the text of `config.json` (`path` names it in errors).
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ModelError> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", e.line()),
        })?;
        cfg.check().map_err(|message| ModelError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(cfg)
    }

    /// Checks that the shapes fit together and the architecture is supported.
    pub fn check(&self) -> Result<(), String> {
        if !matches!(self.model_type.as_str(), "llama" | "mistral") {
            return Err(format!(
                "field `model_type`: `{}` is not a Llama-family model (llama, mistral)",
                self.model_type
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
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err("field `hidden_size`: not a multiple of num_attention_heads".into());
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err("field `head_dim`: RoPE needs an even head size".into());
        }
        if let Some(s) = self.scaling() {
            match s.rope_type.as_str() {
                "default" => {}
                "llama3" => {
                    if s.factor.is_none()
                        || s.low_freq_factor.is_none()
                        || s.high_freq_factor.is_none()
                        || s.original_max_position_embeddings.is_none()
                    {
                        return Err("field `rope_scaling`: llama3 needs factor, low_freq_factor, high_freq_factor and original_max_position_embeddings".into());
                    }
                }
                other => {
                    return Err(format!(
                        "field `rope_scaling.rope_type`: `{other}` is not supported (default, llama3)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
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

    /// RoPE inverse frequencies, in f32 as transformers computes them, with Llama-3.1 scaling.
    pub fn inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim();
        let base = self.theta() as f32;
        let inv: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
            .collect();
        let Some(s) = self.scaling().filter(|s| s.rope_type == "llama3") else {
            return inv;
        };
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
