//! A model's own generation settings, read as vLLM reads them: `generation_config.json` beside
//! `config.json` (or, where a folder has none, the generation keys of an older `config.json`
//! that differ from transformers 4's defaults), or a GGUF's `general.sampling.*` metadata.
//!
//! Two things come from it:
//! - end tokens: `eos_token_id` (one id or a list) joins the model's stop tokens, always (vLLM
//!   adds them whatever its `--generation-config`). Qwen2.5 and Qwen3 instruct models list
//!   `<|endoftext|>` there beside `<|im_end|>`;
//! - sampling defaults: `temperature`, `top_p`, `top_k`, `repetition_penalty` and `min_p` fill
//!   what a recipe leaves unset, with `generation_config = "auto"` (the default, vLLM's
//!   `--generation-config auto`); `"vllm"` ignores them (vLLM's `--generation-config vllm`).
//!
//! Any other key of the file is either metadata or a setting vLLM does not apply; those at a
//! value other than their neutral one are listed in [`GenerationDefaults::not_applied`] so the
//! sampler can say so when it starts.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::TokenIds;
use crate::error::ModelError;

/// The sampling settings a model's files suggest, and its extra end tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    /// The file they came from (`None`: the model has none).
    pub source: Option<PathBuf>,
    /// End tokens beyond `config.json`'s (`generation_config.json`'s `eos_token_id`).
    pub eos_ids: Vec<u32>,
    /// Softmax temperature.
    pub temperature: Option<f32>,
    /// Nucleus mass.
    pub top_p: Option<f32>,
    /// Top-k (0: off).
    pub top_k: Option<usize>,
    /// transformers' repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// transformers' min-p.
    pub min_p: Option<f32>,
    /// `key = value` of settings the file holds at a non-neutral value that neither vLLM nor
    /// sweetspot applies (transformers' `generate` would), for a warning.
    pub not_applied: Vec<String>,
}

/// The sampling keys read as defaults.
pub const SAMPLING_KEYS: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "min_p",
];

/// Generation settings vLLM does not read from the file, with their neutral values: at another
/// value, transformers' `generate` would apply them, so the sampler warns that it does not.
const UNAPPLIED: &[(&str, &str)] = &[
    ("typical_p", "1.0"),
    ("epsilon_cutoff", "0.0"),
    ("eta_cutoff", "0.0"),
    ("no_repeat_ngram_size", "0"),
    ("encoder_no_repeat_ngram_size", "0"),
    ("num_beams", "1"),
    ("num_beam_groups", "1"),
    ("diversity_penalty", "0.0"),
    ("bad_words_ids", "null"),
    ("suppress_tokens", "null"),
    ("begin_suppress_tokens", "null"),
    ("forced_bos_token_id", "null"),
    ("forced_eos_token_id", "null"),
    ("min_length", "0"),
    ("min_new_tokens", "null"),
    ("exponential_decay_length_penalty", "null"),
    ("sequence_bias", "null"),
    ("guidance_scale", "null"),
    ("top_h", "null"),
];

/// transformers 4's `PretrainedConfig` defaults for the sampling keys an old `config.json`
/// carries: a value equal to these was written by `to_dict()`, not chosen by the model's author
/// (vLLM, through `GenerationConfig.from_model_config(...).to_diff_dict()`, drops them too).
const LEGACY_DEFAULTS: &[(&str, f64)] = &[
    ("temperature", 1.0),
    ("top_p", 1.0),
    ("top_k", 50.0),
    ("repetition_penalty", 1.0),
];

impl GenerationDefaults {
    /// Reads a model folder's `generation_config.json`, or, without one, the sampling keys of
    /// its `config.json` that differ from transformers 4's defaults (and no end tokens: those
    /// of `config.json` are the model's own already).
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("generation_config.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_json(&text, &path, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let config = dir.join("config.json");
                match std::fs::read_to_string(&config) {
                    Ok(text) => Self::from_json(&text, &config, true),
                    Err(_) => Ok(Self::default()),
                }
            }
            Err(source) => Err(ModelError::Io { path, source }),
        }
    }

    /// Parses a generation config's text (`path` names it in errors). With `legacy`, the text is
    /// a `config.json`: only its sampling keys are read, and only where they differ from
    /// transformers 4's defaults.
    pub fn from_json(text: &str, path: &Path, legacy: bool) -> Result<Self, ModelError> {
        let err = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        let value: Value = serde_json::from_str(text)
            .map_err(|e| err(format!("line {}: not valid JSON: {e}", e.line())))?;
        let Some(map) = value.as_object() else {
            return Err(err("not a JSON object".into()));
        };
        let mut out = Self::default();
        let legacy_default = |key: &str, v: f64| {
            legacy
                && LEGACY_DEFAULTS
                    .iter()
                    .any(|(k, d)| *k == key && (*d - v).abs() < 1e-12)
        };
        let number = |key: &str| -> Result<Option<f64>, ModelError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() => Ok((!legacy_default(key, x)).then_some(x)),
                    _ => Err(err(format!("field `{key}`: {v} is not a number"))),
                },
            }
        };
        if let Some(t) = number("temperature")? {
            if t < 0.0 {
                return Err(err(format!("field `temperature`: {t} must be >= 0")));
            }
            out.temperature = Some(t as f32);
        }
        if let Some(p) = number("top_p")? {
            if !(p > 0.0 && p <= 1.0) {
                return Err(err(format!("field `top_p`: {p} must be in (0, 1]")));
            }
            out.top_p = Some(p as f32);
        }
        if let Some(k) = number("top_k")? {
            // vLLM's -1 and transformers' 0 both mean no top-k.
            if k == -1.0 || k == 0.0 {
                out.top_k = Some(0);
            } else if k >= 1.0 && k.fract() == 0.0 {
                out.top_k = Some(k as usize);
            } else {
                return Err(err(format!(
                    "field `top_k`: {k} must be a whole number >= 0 (or -1 for none)"
                )));
            }
        }
        if let Some(r) = number("repetition_penalty")? {
            if r <= 0.0 {
                return Err(err(format!(
                    "field `repetition_penalty`: {r} must be > 0 (1 = none)"
                )));
            }
            out.repetition_penalty = Some(r as f32);
        }
        if let Some(m) = number("min_p")? {
            if !(0.0..=1.0).contains(&m) {
                return Err(err(format!("field `min_p`: {m} must be in [0, 1]")));
            }
            out.min_p = Some(m as f32);
        }
        if !legacy {
            if let Some(v) = map.get("eos_token_id").filter(|v| !v.is_null()) {
                let ids: TokenIds = serde_json::from_value(v.clone()).map_err(|_| {
                    err(format!(
                        "field `eos_token_id`: {v} is not a token id or a list of them"
                    ))
                })?;
                out.eos_ids = ids.to_vec();
            }
            out.not_applied = unapplied(map);
        }
        let any = out.temperature.is_some()
            || out.top_p.is_some()
            || out.top_k.is_some()
            || out.repetition_penalty.is_some()
            || out.min_p.is_some()
            || !out.eos_ids.is_empty()
            || !out.not_applied.is_empty();
        if !legacy || any {
            out.source = Some(path.to_path_buf());
        }
        Ok(out)
    }

    /// A GGUF's `general.sampling.*` keys (llama.cpp's defaults for the model), read from the
    /// metadata by `get` (a key to its numeric value).
    pub fn from_gguf_meta(path: &Path, get: impl Fn(&str) -> Option<f64>) -> Self {
        let mut out = Self {
            temperature: get("general.sampling.temp").map(|v| v as f32),
            top_p: get("general.sampling.top_p").map(|v| v as f32),
            top_k: get("general.sampling.top_k").map(|v| v.max(0.0) as usize),
            min_p: get("general.sampling.min_p").map(|v| v as f32),
            repetition_penalty: get("general.sampling.penalty_repeat").map(|v| v as f32),
            ..Self::default()
        };
        if out.temperature.is_some()
            || out.top_p.is_some()
            || out.top_k.is_some()
            || out.min_p.is_some()
            || out.repetition_penalty.is_some()
        {
            out.source = Some(path.to_path_buf());
        }
        out
    }

    /// The defaults that apply under the recipe's `generation_config` mode: all of them with
    /// `auto`, none with `vllm` (the end tokens stay either way).
    pub fn for_mode(&self, mode: GenerationConfigMode) -> Self {
        match mode {
            GenerationConfigMode::Auto => self.clone(),
            GenerationConfigMode::Vllm => Self {
                source: self.source.clone(),
                eos_ids: self.eos_ids.clone(),
                ..Self::default()
            },
        }
    }
}

/// How a sampler treats the model's generation config (vLLM's `--generation-config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenerationConfigMode {
    /// The model's sampling defaults fill what the recipe leaves unset (vLLM's default).
    #[default]
    Auto,
    /// The model's sampling defaults are ignored; sweetspot's own apply (its end tokens still
    /// join the stop tokens).
    Vllm,
}

fn unapplied(map: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (key, neutral) in UNAPPLIED {
        let Some(v) = map.get(*key) else { continue };
        let neutral: Value = serde_json::from_str(neutral).unwrap_or(Value::Null);
        let same = *v == neutral
            || (v.is_number() && neutral.is_number() && v.as_f64() == neutral.as_f64())
            || (v.is_null() && neutral.is_null());
        if !same {
            out.push(format!("{key} = {v}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, legacy: bool) -> Result<GenerationDefaults, String> {
        GenerationDefaults::from_json(text, Path::new("generation_config.json"), legacy)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn qwen25_instruct_defaults() {
        let g = parse(
            r#"{"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
                "eos_token_id": [151645, 151643], "repetition_penalty": 1.05,
                "temperature": 0.7, "top_p": 0.8, "top_k": 20, "transformers_version": "4.37.0"}"#,
            false,
        )
        .unwrap();
        assert_eq!(g.eos_ids, vec![151645, 151643]);
        assert_eq!(g.temperature, Some(0.7));
        assert_eq!(g.top_p, Some(0.8));
        assert_eq!(g.top_k, Some(20));
        assert_eq!(g.repetition_penalty, Some(1.05));
        assert_eq!(g.min_p, None);
        assert!(g.not_applied.is_empty());
        let v = g.for_mode(GenerationConfigMode::Vllm);
        assert_eq!(v.eos_ids, vec![151645, 151643]);
        assert_eq!((v.temperature, v.top_k), (None, None));
    }

    #[test]
    fn legacy_config_keys_only_where_chosen() {
        // transformers 4's to_dict() writes these defaults into every config.json.
        let g = parse(
            r#"{"temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0,
                "eos_token_id": 2, "num_beams": 4}"#,
            true,
        )
        .unwrap();
        assert_eq!(g, GenerationDefaults::default());
        let g = parse(r#"{"temperature": 0.6, "top_k": 50}"#, true).unwrap();
        assert_eq!(g.temperature, Some(0.6));
        assert_eq!(g.top_k, None);
    }

    #[test]
    fn bad_values_are_refused_by_field() {
        for (text, field) in [
            (r#"{"temperature": -1}"#, "temperature"),
            (r#"{"top_p": 0}"#, "top_p"),
            (r#"{"top_k": 2.5}"#, "top_k"),
            (r#"{"repetition_penalty": 0}"#, "repetition_penalty"),
            (r#"{"min_p": 2}"#, "min_p"),
            (r#"{"eos_token_id": "x"}"#, "eos_token_id"),
            (r#"{"temperature": "hot"}"#, "temperature"),
        ] {
            let e = parse(text, false).unwrap_err();
            assert!(
                e.contains(&format!("field `{field}`")) && e.contains("generation_config.json"),
                "{e}"
            );
        }
    }

    #[test]
    fn settings_vllm_does_not_apply_are_listed() {
        let g = parse(
            r#"{"no_repeat_ngram_size": 3, "num_beams": 1, "typical_p": 1.0, "do_sample": false}"#,
            false,
        )
        .unwrap();
        assert_eq!(g.not_applied, vec!["no_repeat_ngram_size = 3".to_string()]);
    }

    #[test]
    fn top_k_minus_one_is_off() {
        assert_eq!(parse(r#"{"top_k": -1}"#, false).unwrap().top_k, Some(0));
    }
}
