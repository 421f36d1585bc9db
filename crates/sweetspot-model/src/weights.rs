//! Weights from Hugging Face safetensors (one file or sharded), loaded through burn-store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::store::{
    FloatCastAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};

use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::llama::Llama;
use crate::precision::{Precision, check_supported};

/// Key renames applied when loading (regex, replacement): checkpoints whose names differ from
/// transformers' Llama layout. Llama, Mistral and SmolLM2 checkpoints need none.
pub const KEY_REMAP: &[(&str, &str)] = &[
    // Checkpoints saved from a bare `LlamaModel` have no `model.` prefix.
    (r"^(embed_tokens|layers|norm)\.", "model.$1."),
];

/// The safetensors files of a model folder: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
        path: index.clone(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Weights {
        path: index.clone(),
        message: format!("not valid JSON: {e}"),
    })?;
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(ModelError::Weights {
            path: index,
            message: "field `weight_map`: missing".into(),
        });
    };
    let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

impl Llama {
    /// Loads a model folder: `config.json` and safetensors weights (f32, f16 or bf16) in f32.
    pub fn from_pretrained(dir: &Path, device: &burn::tensor::Device) -> Result<Self, ModelError> {
        Self::from_pretrained_as(dir, device, Precision::F32)
    }

    /// Loads a model folder with its weights in `precision`, whatever type the files store.
    /// Tensors stream from memory-mapped files one at a time and are converted on the host
    /// before they reach the device (which may not even store the file's type: wgpu has no
    /// bf16); no second copy of the model is made.
    pub fn from_pretrained_as(
        dir: &Path,
        device: &burn::tensor::Device,
        precision: Precision,
    ) -> Result<Self, ModelError> {
        check_supported(device, precision)?;
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let mut model = Llama::init(&config, device);
        load_safetensors(&mut model.params, dir, precision)?;
        Ok(model)
    }
}

/// Loads every parameter of `module` from the safetensors files of the model folder `dir`
/// (through burn-store, PyTorch layouts adapted, names remapped by [`KEY_REMAP`], float tensors
/// converted to `precision` on the host). A parameter the checkpoint lacks, or a checkpoint
/// tensor with no place in the module, is an error.
pub fn load_safetensors<M: ModuleSnapshot>(
    module: &mut M,
    dir: &Path,
    precision: Precision,
) -> Result<(), ModelError> {
    let target = burn::tensor::DType::from(crate::precision::float_dtype(precision));
    let files = safetensors_files(dir)?;
    let mut loaded = BTreeSet::new();
    let mut unused = BTreeSet::new();
    for file in &files {
        let mut store = SafetensorsStore::from_file(file.clone())
            .with_from_adapter(PyTorchToBurnAdapter.chain(FloatCastAdapter::to(target)))
            .allow_partial(true);
        for (from, to) in KEY_REMAP {
            store = store.with_key_remapping(*from, *to);
        }
        let result = module
            .load_from(&mut store)
            .map_err(|e| ModelError::Weights {
                path: file.clone(),
                message: e.to_string(),
            })?;
        if let Some(err) = result.errors.first() {
            return Err(ModelError::Weights {
                path: file.clone(),
                message: format!("{err:?}"),
            });
        }
        loaded.extend(result.applied);
        unused.extend(result.unused);
    }
    // Every parameter must come from some shard.
    let all: Vec<String> = module
        .collect(None, None, false)
        .into_iter()
        .map(|s| s.name)
        .collect();
    let missing: Vec<&String> = all.iter().filter(|p| !loaded.contains(*p)).collect();
    if !missing.is_empty() {
        return Err(ModelError::Weights {
            path: dir.to_path_buf(),
            message: format!(
                "{} parameters missing from the checkpoint, e.g. {}",
                missing.len(),
                missing
                    .iter()
                    .take(3)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let unused: Vec<_> = unused
        .into_iter()
        .filter(|k| !k.ends_with("rotary_emb.inv_freq"))
        .collect();
    if !unused.is_empty() {
        return Err(ModelError::Weights {
            path: dir.to_path_buf(),
            message: format!(
                "{} checkpoint tensors have no place in the model, e.g. {}",
                unused.len(),
                unused
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok(())
}
