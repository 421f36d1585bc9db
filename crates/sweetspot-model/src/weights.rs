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
        check_config_against_weights(&config, dir)?;
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
            let mut message = err.to_string();
            if message.len() > 300 {
                message.truncate(message.floor_char_boundary(300));
                message.push_str("...");
            }
            return Err(ModelError::Weights {
                path: file.clone(),
                message,
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

/// The largest safetensors header read (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// The element type (`F32`, `BF16`, ...).
    pub dtype: String,
    /// The shape.
    pub shape: Vec<u64>,
}

/// Reads the header of a safetensors file, checking every size it states against the file's
/// real length before trusting it: the header length, and each tensor's byte range (which must
/// match its shape and type and lie inside the data section).
pub fn read_safetensors_header(
    path: &Path,
) -> Result<std::collections::BTreeMap<String, TensorEntry>, ModelError> {
    use std::io::Read;
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(|_| ModelError::Weights {
        path: path.to_path_buf(),
        message: format!("not a safetensors file: {len} bytes, shorter than its header size"),
    })?;
    let header_len = u64::from_le_bytes(n);
    let mut header = Vec::new();
    if header_len > MAX_HEADER || header_len > len - 8 {
        return Err(ModelError::Weights {
            path: path.to_path_buf(),
            message: format!(
                "header size {header_len} is larger than the file ({len} bytes) or the format's \
                 100 MB limit: not a safetensors file, or a corrupt one"
            ),
        });
    }
    file.take(header_len).read_to_end(&mut header).map_err(io)?;
    parse_safetensors_header(&header, len - 8 - header_len).map_err(|message| ModelError::Weights {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses a safetensors JSON header whose data section holds `data_len` bytes.
pub fn parse_safetensors_header(
    header: &[u8],
    data_len: u64,
) -> Result<std::collections::BTreeMap<String, TensorEntry>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let map = v
        .as_object()
        .ok_or_else(|| "header is not a JSON object".to_string())?;
    let mut out = std::collections::BTreeMap::new();
    for (name, entry) in map {
        if name == "__metadata__" {
            continue;
        }
        let bad = |m: &str| format!("tensor `{name}`: {m}");
        let dtype = entry
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("field `dtype` is missing"))?;
        let size: u64 = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            other => return Err(bad(&format!("field `dtype`: `{other}` is not supported"))),
        };
        let shape: Vec<u64> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("field `shape` is missing"))?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<_>>()
            .ok_or_else(|| bad("field `shape`: not a list of sizes"))?;
        let offsets: Vec<u64> = entry
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("field `data_offsets` is missing"))?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<_>>()
            .ok_or_else(|| bad("field `data_offsets`: not two offsets"))?;
        let [start, end] = offsets[..] else {
            return Err(bad("field `data_offsets`: not two offsets"));
        };
        let bytes = shape
            .iter()
            .try_fold(size, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad("field `shape`: the size overflows"))?;
        if start > end || end > data_len || end - start != bytes {
            return Err(bad(&format!(
                "field `data_offsets`: [{start}, {end}] does not hold {bytes} bytes of shape \
                 {shape:?} inside the {data_len}-byte data section"
            )));
        }
        out.insert(
            name.clone(),
            TensorEntry {
                dtype: dtype.to_string(),
                shape,
            },
        );
    }
    Ok(out)
}

/// Checks `config.json`'s sizes against the shapes in the checkpoint's headers, before a model
/// is allocated from them: a config that does not describe these weights is an error naming the
/// fields, not an allocation the size of its numbers.
pub fn check_config_against_weights(config: &LlamaConfig, dir: &Path) -> Result<(), ModelError> {
    let mut shapes = std::collections::BTreeMap::new();
    for file in safetensors_files(dir)? {
        shapes.extend(read_safetensors_header(&file)?);
    }
    let (h, hd) = (config.hidden_size as u64, config.head_dim() as u64);
    let last = config.num_hidden_layers - 1;
    let expect = [
        (
            "embed_tokens.weight".to_string(),
            [config.vocab_size as u64, h],
            "vocab_size / hidden_size",
        ),
        (
            "layers.0.self_attn.q_proj.weight".into(),
            [config.num_attention_heads as u64 * hd, h],
            "num_attention_heads / head_dim",
        ),
        (
            "layers.0.self_attn.k_proj.weight".into(),
            [config.kv_heads() as u64 * hd, h],
            "num_key_value_heads / head_dim",
        ),
        (
            "layers.0.mlp.gate_proj.weight".into(),
            [config.intermediate_size as u64, h],
            "intermediate_size",
        ),
        (
            format!("layers.{last}.mlp.gate_proj.weight"),
            [config.intermediate_size as u64, h],
            "num_hidden_layers",
        ),
    ];
    let config_path = dir.join("config.json");
    for (name, dims, fields) in expect {
        let found = shapes
            .get(&format!("model.{name}"))
            .or_else(|| shapes.get(&name));
        let Some(entry) = found else {
            return Err(ModelError::Config {
                path: config_path,
                message: format!(
                    "fields {fields}: the checkpoint has no tensor `model.{name}` that they \
                     describe"
                ),
            });
        };
        if entry.shape != dims {
            return Err(ModelError::Config {
                path: config_path,
                message: format!(
                    "fields {fields} describe `model.{name}` as {dims:?}, but the checkpoint \
                     holds {:?}",
                    entry.shape
                ),
            });
        }
    }
    Ok(())
}
