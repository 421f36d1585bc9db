//! Writing a model out in Hugging Face's layout: `config.json`, `model.safetensors` (f32, names
//! and `[out, in]` layouts as transformers has them) and the tokenizer files, so that
//! `AutoModelForCausalLM.from_pretrained` and [`Llama::from_pretrained`] both load it.

use std::path::Path;

use burn::tensor::Tensor;
use safetensors::tensor::{Dtype, TensorView};

use crate::error::ModelError;
use crate::llama::{Llama, LlamaParams};
use crate::tokenizer::Tokenizer;

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file beside it and a rename, so the file appears
/// whole or not at all: sweetspot-core's [`sweetspot_core::atomic::write_atomic`] (the one the
/// readers and writers of sweetspot-io use too), its error as a [`ModelError::Io`] naming `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    Ok(sweetspot_core::atomic::write_atomic(path, bytes)?)
}

/// A tensor's values in f32 on the host.
#[cfg(feature = "flex")]
pub(crate) fn host_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, ModelError> {
    Ok(host(t)?.1)
}

fn host<const D: usize>(t: Tensor<D>) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
    let shape = t.dims().to_vec();
    let v = t
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Input(format!("reading a weight: {e:?}")))?;
    Ok((shape, v))
}

/// A burn weight in transformers' layout (`Linear` weights are stored `[in, out]`).
fn values(t: Tensor<2>, transpose: bool) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
    host(if transpose { t.transpose() } else { t })
}

fn vector(t: Tensor<1>) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
    host(t)
}

/// One parameter in transformers' naming and layout: (name, shape, values).
pub type HfTensor = (String, Vec<usize>, Vec<f32>);

/// Every parameter as (transformers name, shape, values in transformers' layout).
pub fn hf_tensors(params: &LlamaParams) -> Result<Vec<HfTensor>, ModelError> {
    let mut out = Vec::new();
    let mut push = |name: String, (shape, v): (Vec<usize>, Vec<f32>)| out.push((name, shape, v));
    let m = &params.model;
    push(
        "model.embed_tokens.weight".into(),
        values(m.embed_tokens.weight.val(), false)?,
    );
    for (i, l) in m.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let a = &l.self_attn;
        for (name, lin) in [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &l.mlp.gate_proj),
            ("mlp.up_proj", &l.mlp.up_proj),
            ("mlp.down_proj", &l.mlp.down_proj),
        ] {
            push(
                p(&format!("{name}.weight")),
                values(lin.weight.val(), true)?,
            );
            if let Some(b) = &lin.bias {
                push(p(&format!("{name}.bias")), vector(b.val())?);
            }
        }
        for (name, norm) in [
            ("self_attn.q_norm", &a.q_norm),
            ("self_attn.k_norm", &a.k_norm),
        ] {
            if let Some(n) = norm {
                push(p(&format!("{name}.weight")), vector(n.gamma.val())?);
            }
        }
        push(
            p("input_layernorm.weight"),
            vector(l.input_layernorm.gamma.val())?,
        );
        push(
            p("post_attention_layernorm.weight"),
            vector(l.post_attention_layernorm.gamma.val())?,
        );
    }
    push("model.norm.weight".into(), vector(m.norm.gamma.val())?);
    if let Some(head) = &params.lm_head {
        push("lm_head.weight".into(), values(head.weight.val(), true)?);
    }
    Ok(out)
}

/// Writes `tensors` (f32) as one safetensors file at `path` (whole or not at all).
pub fn write_safetensors(path: &Path, tensors: Vec<HfTensor>) -> Result<(), ModelError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::Input(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let data = safetensors::serialize(views, Some(meta))
        .map_err(|e| ModelError::Input(format!("safetensors: {e}")))?;
    write_atomic(path, &data)
}

impl Llama {
    /// Writes the model and `tokenizer` to the folder `dir` in Hugging Face's layout. Each file
    /// appears whole (temporary file, then rename). `generation_config.json` lists the
    /// tokenizer's stop tokens as `eos_token_id`, so transformers and vLLM stop the exported
    /// model where sweetspot does.
    pub fn save_pretrained(&self, dir: &Path, tokenizer: &Tokenizer) -> Result<(), ModelError> {
        self.save_pretrained_from(dir, tokenizer, None)
    }

    /// [`Llama::save_pretrained`], keeping the generation config of the model this one was
    /// trained from (`base`: its folder or `.gguf`): its sampling defaults are carried over, and
    /// its end tokens joined by the tokenizer's stop tokens.
    pub fn save_pretrained_from(
        &self,
        dir: &Path,
        tokenizer: &Tokenizer,
        base: Option<&Path>,
    ) -> Result<(), ModelError> {
        if self.config.rope_freqs.is_some() {
            return Err(ModelError::Input(
                "this model came from a GGUF with `rope_freqs.weight` (llama.cpp's per-frequency \
                 RoPE factors), which a config.json cannot state; export the model trained from \
                 its safetensors checkpoint instead"
                    .into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        if self.has_adapters() {
            return Err(ModelError::Input(
                "the model has adapters: merge them (`merged`) or save them as an adapter folder"
                    .into(),
            ));
        }
        write_safetensors(&dir.join("model.safetensors"), hf_tensors(&self.params)?)?;
        let mut config = serde_json::to_value(&self.config)
            .map_err(|e| ModelError::Input(format!("config: {e}")))?;
        if let Some(obj) = config.as_object_mut() {
            obj.retain(|_, v| !v.is_null());
            obj.insert(
                "architectures".into(),
                serde_json::json!([self.config.family().causal_lm]),
            );
            obj.insert("torch_dtype".into(), serde_json::json!("float32"));
        }
        let text = serde_json::to_string_pretty(&config)
            .map_err(|e| ModelError::Input(format!("config: {e}")))?;
        write_atomic(&dir.join("config.json"), text.as_bytes())?;
        let mut generation = serde_json::Map::new();
        if let Some(base) = base {
            let d = crate::load_generation_defaults(base)?;
            let floats = [
                ("temperature", d.temperature),
                ("top_p", d.top_p),
                ("repetition_penalty", d.repetition_penalty),
                ("min_p", d.min_p),
            ];
            for (key, value) in floats {
                if let Some(v) = value {
                    generation.insert(key.into(), serde_json::json!(v));
                }
            }
            if let Some(k) = d.top_k {
                generation.insert("top_k".into(), serde_json::json!(k));
            }
        }
        let mut eos = tokenizer.stop_ids().to_vec();
        eos.sort_unstable();
        eos.dedup();
        generation.insert("eos_token_id".into(), serde_json::json!(eos));
        let text = serde_json::to_string_pretty(&generation)
            .map_err(|e| ModelError::Input(format!("generation config: {e}")))?;
        write_atomic(&dir.join("generation_config.json"), text.as_bytes())?;
        tokenizer.save(dir)
    }
}
