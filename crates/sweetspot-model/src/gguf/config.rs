//! GGUF metadata to a model configuration: the `<arch>.*` keys read into a [`LlamaConfig`],
//! checked against the tensors the file holds.
//!
//! Invariants:
//! - Only the architectures of [`Gguf::ARCHITECTURES`] are accepted.
//! - Every `<arch>.*` metadata key is either read or refused by name: a setting that changes what
//!   the model computes is never ignored.
//! - A bad value is reported under the GGUF key it came from, not the config field it fills.
//! - The sizes the metadata states are checked against the tensors' dims before any model is
//!   allocated from them.

use super::container::{Gguf, Value};
use crate::config::{LlamaConfig, TokenIds};
use crate::error::ModelError;

impl Gguf {
    /// An optional integer metadata value.
    fn meta_opt(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    fn meta_u(&self, key: &str) -> Result<usize, ModelError> {
        self.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| self.err(format!("metadata `{key}` is missing or not an integer")))
    }

    /// The architectures sweetspot loads from GGUF (`general.architecture`): Llama (and Mistral,
    /// which llama.cpp writes as `llama`), Qwen2 and Qwen3.
    pub const ARCHITECTURES: &'static [&'static str] = &["llama", "qwen2", "qwen3"];

    fn arch(&self) -> Result<&str, ModelError> {
        let arch = self
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !Self::ARCHITECTURES.contains(&arch) {
            return Err(self.err(format!(
                "metadata `general.architecture`: `{arch}` is not supported ({})",
                Self::ARCHITECTURES.join(", ")
            )));
        }
        Ok(arch)
    }

    /// The model configuration the metadata describes (`<arch>.*` keys).
    pub fn llama_config(&self) -> Result<LlamaConfig, ModelError> {
        let arch = self.arch()?;
        let k = |key: &str| format!("{arch}.{key}");
        let heads = self.meta_u(&k("attention.head_count"))?;
        let hidden = self.meta_u(&k("embedding_length"))?;
        let vocab = match self.meta_opt(&k("vocab_size")) {
            Some(v) => v as usize,
            None => self
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(<[Value]>::len)
                .ok_or_else(|| self.err(format!("metadata `{}` is missing", k("vocab_size"))))?,
        };
        // llama.cpp names Qwen's q/k/v biases and Qwen3's q/k norms by tensor, not metadata.
        let has = |t: &str| self.tensors.contains_key(t);
        let mut cfg = LlamaConfig {
            model_type: arch.into(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.meta_u(&k("feed_forward_length"))?,
            num_hidden_layers: self.meta_u(&k("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: self
                .meta_opt(&k("attention.head_count_kv"))
                .map(|v| v as usize),
            head_dim: self
                .meta_opt(&k("attention.key_length"))
                .map(|v| v as usize),
            rms_norm_eps: self
                .get(&k("attention.layer_norm_rms_epsilon"))
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
            rope_theta: self
                .get(&k("rope.freq_base"))
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
            rope_scaling: None,
            rope_parameters: None,
            max_position_embeddings: self.meta_u(&k("context_length")).unwrap_or(2048),
            tie_word_embeddings: !has("output.weight"),
            attention_bias: arch != "qwen2" && has("blk.0.attn_q.bias"),
            mlp_bias: false,
            bos_token_id: self
                .meta_opt("tokenizer.ggml.bos_token_id")
                .map(|v| v as u32),
            eos_token_id: self
                .meta_opt("tokenizer.ggml.eos_token_id")
                .map(|v| TokenIds::One(v as u32)),
            pad_token_id: self
                .meta_opt("tokenizer.ggml.padding_token_id")
                .map(|v| v as u32),
            hidden_act: "silu".into(),
            sliding_window: self
                .meta_opt(&k("attention.sliding_window"))
                .map(|v| v as usize),
            rope_freqs: None,
        };
        if cfg.head_dim.is_none() && cfg.family().default_head_dim.is_some() {
            // llama.cpp always writes Qwen3's key length; without it the head size is the
            // hidden size over the heads, as llama.cpp computes it (not transformers' default).
            cfg.head_dim = Some(hidden / heads.max(1));
        }
        cfg.check().map_err(|m| {
            // Name the GGUF key the value came from, not the config field it fills.
            let mut m = m;
            for (field, key) in [
                ("vocab_size", "vocab_size"),
                ("hidden_size", "embedding_length"),
                ("intermediate_size", "feed_forward_length"),
                ("num_hidden_layers", "block_count"),
                ("num_attention_heads", "attention.head_count"),
                ("num_key_value_heads", "attention.head_count_kv"),
                ("head_dim", "attention.key_length"),
                ("max_position_embeddings", "context_length"),
                ("rms_norm_eps", "attention.layer_norm_rms_epsilon"),
                ("rope_theta", "rope.freq_base"),
                ("sliding_window", "attention.sliding_window"),
            ] {
                m = m.replace(
                    &format!("field `{field}`"),
                    &format!("metadata `{}`", k(key)),
                );
            }
            self.err(m)
        })?;
        self.audit_metadata(&cfg)?;
        self.check_shapes(&cfg)?;
        if self.tensors.contains_key("rope_freqs.weight") {
            let f = self.dequantize("rope_freqs.weight")?;
            let half = cfg.head_dim() / 2;
            if f.len() != half || !f.iter().all(|x| x.is_finite() && *x > 0.0) {
                return Err(self.err(format!(
                    "tensor `rope_freqs.weight`: {} factors, expected {half} positive ones (one \
                     per RoPE frequency)",
                    f.len()
                )));
            }
            cfg.rope_freqs = Some(f);
        }
        Ok(cfg)
    }

    /// Every `<arch>.*` metadata key is implemented or refused by name: a GGUF setting that
    /// changes the computation is never ignored.
    fn audit_metadata(&self, cfg: &LlamaConfig) -> Result<(), ModelError> {
        const READ: &[&str] = &[
            "block_count",
            "context_length",
            "embedding_length",
            "feed_forward_length",
            "attention.head_count",
            "attention.head_count_kv",
            "attention.key_length",
            "attention.layer_norm_rms_epsilon",
            "attention.sliding_window",
            "rope.freq_base",
            "vocab_size",
        ];
        let prefix = format!("{}.", cfg.model_type);
        for (key, value) in &self.metadata {
            let Some(name) = key.strip_prefix(&prefix) else {
                continue;
            };
            if READ.contains(&name) {
                continue;
            }
            let ok = match name {
                // Checked against the head size: a partial rotary dimension is not supported.
                "rope.dimension_count" | "attention.value_length" => {
                    value.as_u64() == Some(cfg.head_dim() as u64)
                }
                "rope.scaling.type" => value.as_str() == Some("none"),
                _ => false,
            };
            if !ok {
                return Err(self.err(format!(
                    "metadata `{key}` ({}) is not supported by sweetspot; it changes what the \
                     model computes, so the file is refused rather than run without it",
                    value.short()
                )));
            }
        }
        Ok(())
    }

    /// The header's sizes against the tensors the file really holds (whose extents were checked
    /// against the file's length), before a model is allocated from them.
    fn check_shapes(&self, cfg: &LlamaConfig) -> Result<(), ModelError> {
        let (h, hd) = (cfg.hidden_size as u64, cfg.head_dim() as u64);
        let last = cfg.num_hidden_layers - 1;
        let expect = [
            (
                "token_embd.weight".to_string(),
                [h, cfg.vocab_size as u64],
                "embedding_length / vocab_size",
            ),
            (
                "blk.0.attn_q.weight".into(),
                [h, cfg.num_attention_heads as u64 * hd],
                "attention.head_count / attention.key_length",
            ),
            (
                "blk.0.attn_k.weight".into(),
                [h, cfg.kv_heads() as u64 * hd],
                "attention.head_count_kv",
            ),
            (
                "blk.0.ffn_gate.weight".into(),
                [h, cfg.intermediate_size as u64],
                "feed_forward_length",
            ),
            (
                format!("blk.{last}.ffn_gate.weight"),
                [h, cfg.intermediate_size as u64],
                "block_count",
            ),
        ];
        let fields_of = |f: &str| {
            f.split(" / ")
                .map(|k| format!("{}.{k}", cfg.model_type))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        for (name, dims, fields) in expect {
            let Some(info) = self.tensors.get(&name) else {
                return Err(self.err(format!(
                    "tensor `{name}` is missing (metadata {} may be wrong)",
                    fields_of(fields)
                )));
            };
            if info.dims != dims {
                return Err(self.err(format!(
                    "metadata {} describe tensor `{name}` as {dims:?}, but the file holds {:?}",
                    fields_of(fields),
                    info.dims
                )));
            }
        }
        Ok(())
    }
}
