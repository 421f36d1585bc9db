//! sweetspot-model: the burn model code of sweetspot.
//!
//! - [`config`]: a Llama-family configuration read from Hugging Face `config.json`.
//! - [`llama`]: the decoder (RMSNorm, RoPE with Llama-3.1 scaling, grouped-query attention,
//!   SwiGLU, tied or untied embeddings), batched with an attention mask and a KV cache.
//! - [`reward`]: reward heads (sequence classification, ArmoRM, LM judge) and batch scoring.
//! - [`weights`]: safetensors loading (single file or sharded) through burn-store.
//! - [`gguf`]: llama.cpp's GGUF files: the container, dequantization, the metadata as a config,
//!   and loading into [`Llama`] (one file each under `gguf/`).
//! - [`tokenizer`]: tokenizers and chat templates, from `tokenizer.json` or GGUF metadata.
//! - [`generate`]: the sampling rule, per-sequence seeds, and static and continuous batching
//!   (one file each under `generate/`).
//! - [`generation_config`]: the sampling defaults a model folder or GGUF file suggests.
//! - [`lora`]: LoRA adapters on the linear layers (PEFT's layout), switched off, merged, and
//!   PEFT adapter folders written and read.
//! - [`export`]: writing a model and its tokenizer in Hugging Face's layout.
//! - [`device`]: the runtime device from a name (`cpu`, `wgpu`, `cuda:0`).
//! - [`precision`]: f32, bf16 or f16 weights, and what stays in f32 regardless.
//!
//! Invariants:
//! - No backend type parameter anywhere: tensors carry their runtime device.
//! - A padded row of a batch gives the same logits as the row alone (masking, not truncation).
//! - Parameter paths mirror Hugging Face's names (`model.layers.0.self_attn.q_proj`), so loading
//!   needs no renaming for Llama checkpoints; other layouts go through [`weights::KEY_REMAP`].

pub mod config;
pub mod device;
pub mod error;
pub mod export;
pub mod generate;
pub mod generation_config;
pub mod gguf;
#[cfg(feature = "flex")]
pub mod kernels;
// The f32 half serves the CPU kernels (`flex`) only.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
mod libm_exp;
pub mod llama;
pub mod lora;
pub mod precision;
pub mod reward;
pub mod tokenizer;
pub mod weights;

pub use burn::tensor::Device;
pub use config::LlamaConfig;
pub use device::resolve_device;
pub use error::ModelError;
pub use generation_config::{GenerationConfigMode, GenerationDefaults};
pub use llama::{KvCache, Llama, Quantize};
pub use precision::Precision;
pub use reward::{RewardInput, RewardNet, RewardOutput};
pub use tokenizer::Tokenizer;

/// Whether 8-bit products (`quantize = "q8_0"`) run on AVX512-VNNI here (else a portable loop
/// computes the same values, slowly).
pub fn q8_uses_vnni() -> bool {
    #[cfg(feature = "flex")]
    {
        kernels::q8::available()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}

/// Loads only the tokenizer of a model folder or `.gguf` file (no weights): for checks that
/// need to know how text tokenizes before a run loads the model.
pub fn load_tokenizer(path: &std::path::Path) -> Result<Tokenizer, ModelError> {
    if lora::is_adapter_folder(path) {
        // The adapter folder's tokenizer files, the base's end tokens.
        let base = lora::AdapterFolder::read(path)?.base;
        let eos = load_tokenizer(&base)?.stop_ids().to_vec();
        return Tokenizer::from_dir(path, &eos);
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        // The header holds the tokenizer: the weights are not read.
        let gguf = gguf::Gguf::open_header(path)?;
        Tokenizer::from_gguf(&gguf, path)
    } else {
        // A config.json that does not parse is reported when the model loads.
        let config = LlamaConfig::from_file(&path.join("config.json"))
            .map(|c| c.eos_ids())
            .unwrap_or_default();
        Tokenizer::from_dir(path, &stop_ids(path, config)?)
    }
}

/// Loads a causal LM with its tokenizer: a model folder (config.json, safetensors,
/// tokenizer.json), a `.gguf` file, or a PEFT LoRA adapter folder (`adapter_config.json`: the
/// base named by its `base_model_name_or_path`, absolute or relative to the adapter folder, is
/// loaded in `precision` and the adapters, in f32, put on it; the tokenizer is the adapter
/// folder's when it has one, the base's otherwise), its weights in `precision`.
pub fn load_causal_lm(
    path: &std::path::Path,
    device: &burn::tensor::Device,
    precision: Precision,
) -> Result<(Llama, Tokenizer), ModelError> {
    precision::check_supported(device, precision)?;
    if lora::is_adapter_folder(path) {
        let folder = lora::AdapterFolder::read(path)?;
        if lora::is_adapter_folder(&folder.base) {
            return Err(ModelError::Input(format!(
                "{}: `base_model_name_or_path` names another adapter folder ({})",
                path.display(),
                folder.base.display()
            )));
        }
        let (base, tok) = load_causal_lm(&folder.base, device, precision)?;
        let model = base.with_adapter_tensors(&folder.config, &path.join(lora::ADAPTER_WEIGHTS))?;
        let tok = if path.join("tokenizer.json").is_file() {
            Tokenizer::from_dir(path, tok.stop_ids())?
        } else {
            tok
        };
        return Ok((model, tok));
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        let gguf = gguf::Gguf::open(path)?;
        let tok = Tokenizer::from_gguf(&gguf, path)?;
        let model = Llama::from_gguf(&gguf, device)?.to_precision(precision)?;
        Ok((model, tok))
    } else {
        let model = Llama::from_pretrained_as(path, device, precision)?;
        let tok = Tokenizer::from_dir(path, &stop_ids(path, model.config.eos_ids())?)?;
        Ok((model, tok))
    }
}

/// A model folder's end tokens: `config.json`'s `eos_token_id` (`config_eos`) and
/// `generation_config.json`'s (transformers and vLLM stop at both).
fn stop_ids(dir: &std::path::Path, config_eos: Vec<u32>) -> Result<Vec<u32>, ModelError> {
    let mut ids = config_eos;
    ids.extend(GenerationDefaults::from_dir(dir)?.eos_ids);
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The generation settings a model folder or `.gguf` file suggests (see
/// [`generation_config`]); reads no weights.
pub fn load_generation_defaults(path: &std::path::Path) -> Result<GenerationDefaults, ModelError> {
    if lora::is_adapter_folder(path) {
        return load_generation_defaults(&lora::AdapterFolder::read(path)?.base);
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        let gguf = gguf::Gguf::open_header(path)?;
        Ok(GenerationDefaults::from_gguf_meta(path, |k| {
            gguf.get(k).and_then(|v| v.as_f64())
        }))
    } else {
        GenerationDefaults::from_dir(path)
    }
}
