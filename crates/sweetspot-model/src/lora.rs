//! LoRA adapters on the decoder's linear layers, in PEFT's layout and numerics.
//!
//! Each adapted projection computes `y = base(x) + (x Aᵀ) Bᵀ · scale` with `lora_A` `[r, in]`
//! (kaiming-uniform with a = √5 at init, as torch's `nn.Linear`: uniform in ±1/√in) and
//! `lora_B` `[out, r]` (zeros at init, so a fresh adapter changes nothing). The adapter path runs
//! in f32 whatever type the base is held in (PEFT's `autocast_adapter_dtype`): its input is cast
//! to f32, the sum `base(x) + update` is taken in f32 and cast back to the base's type, as PEFT's
//! `lora.Linear.forward` does.
//!
//! Invariants:
//! - The adapters are a separate part of [`crate::llama::LlamaParams`] (`adapters`), never folded into the base
//!   weights during training: [`Llama::without_adapters`] is the base model (the reference of
//!   LoRA DPO) sharing the very same weight tensors, no copy.
//! - [`Llama::with_new_adapters`] freezes the base (no gradients, so no optimizer state); only
//!   `lora_A` and `lora_B` train.
//! - [`Llama::merged`] folds `W + scale · B A` into the base for a full export.
//! - A PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`) is written and
//!   read with PEFT's names (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`).

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use sweetspot_core::recipe::{AdapterConfig, LINEAR_MODULES};

use crate::error::ModelError;
use crate::llama::{DecoderLayer, Llama, Q8Weight};
use crate::precision::{to_dtype, to_f32};
use crate::tokenizer::Tokenizer;

/// The file PEFT's adapter folder describes itself in.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The file of PEFT's adapter weights.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// One low-rank adapter of a linear layer.
#[derive(Module, Debug)]
pub struct Lora {
    /// PEFT's `lora_A.weight`, `[r, in]`.
    pub lora_a: Param<Tensor<2>>,
    /// PEFT's `lora_B.weight`, `[out, r]`.
    pub lora_b: Param<Tensor<2>>,
    /// The update's factor (`lora_alpha / r`, or `/ √r` with rsLoRA).
    pub scale: f64,
}

impl Lora {
    /// `base_out + (x Aᵀ) Bᵀ · scale`: the adapter path in f32, the sum cast back to
    /// `base_out`'s type.
    pub fn add_to(&self, base_out: Tensor<3>, x: Tensor<3>) -> Tensor<3> {
        let dtype = base_out.dtype();
        let [b, t, i] = x.dims();
        let x = to_f32(x).reshape([b * t, i]);
        let update = x
            .matmul(self.lora_a.val().transpose())
            .matmul(self.lora_b.val().transpose())
            .mul_scalar(self.scale);
        let out = update.dims()[1];
        to_dtype(to_f32(base_out) + update.reshape([b, t, out]), dtype)
    }

    /// `scale · B A` in burn's `Linear` layout (`[in, out]`), f32.
    fn delta(&self) -> Tensor<2> {
        self.lora_b
            .val()
            .matmul(self.lora_a.val())
            .mul_scalar(self.scale)
            .transpose()
    }
}

/// The adapters of one decoder layer, by projection (`None`: not adapted).
#[derive(Module, Debug)]
pub struct LayerLora {
    /// On `self_attn.q_proj`.
    pub q_proj: Option<Lora>,
    /// On `self_attn.k_proj`.
    pub k_proj: Option<Lora>,
    /// On `self_attn.v_proj`.
    pub v_proj: Option<Lora>,
    /// On `self_attn.o_proj`.
    pub o_proj: Option<Lora>,
    /// On `mlp.gate_proj`.
    pub gate_proj: Option<Lora>,
    /// On `mlp.up_proj`.
    pub up_proj: Option<Lora>,
    /// On `mlp.down_proj`.
    pub down_proj: Option<Lora>,
}

impl LayerLora {
    /// The adapter of the module named `name` (`q_proj`, ...).
    pub fn get(&self, name: &str) -> Option<&Lora> {
        match name {
            "q_proj" => self.q_proj.as_ref(),
            "k_proj" => self.k_proj.as_ref(),
            "v_proj" => self.v_proj.as_ref(),
            "o_proj" => self.o_proj.as_ref(),
            "gate_proj" => self.gate_proj.as_ref(),
            "up_proj" => self.up_proj.as_ref(),
            "down_proj" => self.down_proj.as_ref(),
            _ => None,
        }
    }

    fn slot(&mut self, name: &str) -> Option<&mut Option<Lora>> {
        Some(match name {
            "q_proj" => &mut self.q_proj,
            "k_proj" => &mut self.k_proj,
            "v_proj" => &mut self.v_proj,
            "o_proj" => &mut self.o_proj,
            "gate_proj" => &mut self.gate_proj,
            "up_proj" => &mut self.up_proj,
            "down_proj" => &mut self.down_proj,
            _ => return None,
        })
    }

    fn empty() -> Self {
        Self {
            q_proj: None,
            k_proj: None,
            v_proj: None,
            o_proj: None,
            gate_proj: None,
            up_proj: None,
            down_proj: None,
        }
    }
}

/// Every layer's adapters.
#[derive(Module, Debug)]
pub struct Adapters {
    /// One per decoder layer.
    pub layers: Vec<LayerLora>,
}

/// `base(x)`, plus the adapter's update where there is one.
pub(crate) fn project(
    lin: &Linear,
    q8: Option<&Q8Weight>,
    lora: Option<&Lora>,
    x: Tensor<3>,
) -> Tensor<3> {
    match lora {
        None => linear_forward(lin, q8, x),
        Some(l) => {
            let y = linear_forward(lin, q8, x.clone());
            l.add_to(y, x)
        }
    }
}

/// `lin.forward(x)`: with the weight's 8-bit copy `q8` where there is one
/// ([`crate::kernels::matmul_q8`]), through [`crate::kernels::matmul_bf16`] where it applies
/// (bf16 inference on burn-flex with AVX512-BF16), burn's otherwise.
pub(crate) fn linear_forward(lin: &Linear, q8: Option<&Q8Weight>, x: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if let Some(y) = q8.and_then(|w| crate::kernels::matmul_q8(&x, w)) {
        return match &lin.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        };
    }
    #[cfg(not(feature = "flex"))]
    let _ = q8;
    #[cfg(feature = "flex")]
    if let Some(y) =
        crate::kernels::matmul_bf16(&x, &lin.weight.val(), crate::kernels::bf16::Layout::KN)
    {
        return match &lin.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        };
    }
    // burn's linear layer adds the bias to its product element by element, as here.
    #[cfg(feature = "flex")]
    if let Some(y) = crate::kernels::matmul_f32(&x, &lin.weight.val()) {
        return match &lin.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        };
    }
    lin.forward(x)
}

/// The linear layer of a decoder layer by its module name.
fn linear<'a>(layer: &'a DecoderLayer, name: &str) -> Option<&'a Linear> {
    Some(match name {
        "q_proj" => &layer.self_attn.q_proj,
        "k_proj" => &layer.self_attn.k_proj,
        "v_proj" => &layer.self_attn.v_proj,
        "o_proj" => &layer.self_attn.o_proj,
        "gate_proj" => &layer.mlp.gate_proj,
        "up_proj" => &layer.mlp.up_proj,
        "down_proj" => &layer.mlp.down_proj,
        _ => return None,
    })
}

fn linear_mut<'a>(layer: &'a mut DecoderLayer, name: &str) -> Option<&'a mut Linear> {
    Some(match name {
        "q_proj" => &mut layer.self_attn.q_proj,
        "k_proj" => &mut layer.self_attn.k_proj,
        "v_proj" => &mut layer.self_attn.v_proj,
        "o_proj" => &mut layer.self_attn.o_proj,
        "gate_proj" => &mut layer.mlp.gate_proj,
        "up_proj" => &mut layer.mlp.up_proj,
        "down_proj" => &mut layer.mlp.down_proj,
        _ => return None,
    })
}

/// PEFT's name of a module: `self_attn.q_proj` or `mlp.up_proj`.
fn module_path(name: &str) -> String {
    match name {
        "q_proj" | "k_proj" | "v_proj" | "o_proj" => format!("self_attn.{name}"),
        _ => format!("mlp.{name}"),
    }
}

/// PEFT's tensor name of layer `i`'s adapter on `name` (`"A"` or `"B"`).
pub fn peft_name(i: usize, name: &str, ab: &str) -> String {
    format!(
        "base_model.model.model.layers.{i}.{}.lora_{ab}.weight",
        module_path(name)
    )
}

fn check_modules(cfg: &AdapterConfig) -> Result<Vec<String>, ModelError> {
    let modules = cfg.modules();
    if let Some(bad) = modules
        .iter()
        .find(|m| !LINEAR_MODULES.contains(&m.as_str()))
    {
        return Err(ModelError::Input(format!(
            "`target_modules`: `{bad}` is not a linear layer of the decoder (one of {})",
            LINEAR_MODULES.join(", ")
        )));
    }
    if cfg.r == 0 {
        return Err(ModelError::Input("`r`: must be at least 1".into()));
    }
    Ok(modules)
}

fn f32_tensor(values: Vec<f32>, shape: [usize; 2], device: &burn::tensor::Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

impl Llama {
    /// Whether the model carries adapters.
    pub fn has_adapters(&self) -> bool {
        self.params.adapters.is_some()
    }

    /// The base model: the same weight tensors (handles, not copies) with the adapters off.
    pub fn without_adapters(&self) -> Llama {
        let mut params = self.params.clone();
        params.adapters = None;
        Llama::from_params(&self.config, params, self.device())
    }

    /// The model with its base frozen (no gradients) and fresh adapters per `cfg`: `lora_A`
    /// kaiming-uniform (a = √5, PEFT's default) from a generator seeded with `seed`, `lora_B`
    /// zeros. The adapters are f32, whatever type the base is held in.
    pub fn with_new_adapters(self, cfg: &AdapterConfig, seed: u64) -> Result<Self, ModelError> {
        let modules = check_modules(cfg)?;
        let device = self.device().clone();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let r = cfg.r;
        let mut layers = Vec::new();
        for layer in &self.params.model.layers {
            let mut l = LayerLora::empty();
            for name in LINEAR_MODULES {
                if !modules.iter().any(|m| m == name) {
                    continue;
                }
                let Some(lin) = linear(layer, name) else {
                    continue;
                };
                let [fan_in, out] = lin.weight.val().dims();
                let bound = 1.0 / (fan_in as f64).sqrt();
                let a: Vec<f32> = (0..r * fan_in)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                if let Some(slot) = l.slot(name) {
                    *slot = Some(Lora {
                        lora_a: Param::from_tensor(f32_tensor(a, [r, fan_in], &device)),
                        lora_b: Param::from_tensor(f32_tensor(
                            vec![0.0; out * r],
                            [out, r],
                            &device,
                        )),
                        scale: cfg.scale(),
                    });
                }
            }
            layers.push(l);
        }
        Ok(self.map_params(|p| {
            let mut p = p.no_grad();
            p.adapters = Some(Adapters { layers });
            p
        }))
    }

    /// The adapters merged into the base weights (`W + scale · B A`, computed in f32 and stored
    /// in each weight's type, as new leaves off the autodiff graph); the result has no adapters.
    pub fn merged(&self) -> Llama {
        let mut params = self.params.clone();
        if let Some(adapters) = params.adapters.take() {
            for (layer, ad) in params.model.layers.iter_mut().zip(&adapters.layers) {
                for name in LINEAR_MODULES {
                    let (Some(lora), Some(lin)) = (ad.get(name), linear_mut(layer, name)) else {
                        continue;
                    };
                    let delta = lora.delta();
                    // A new leaf (off the adapters' graph), trainable where the weight was.
                    lin.weight = lin.weight.clone().map(|w| {
                        let (dtype, grad) = (w.dtype(), w.is_require_grad());
                        let m = to_dtype(to_f32(w) + delta, dtype).detach();
                        if grad { m.require_grad() } else { m }
                    });
                }
            }
        }
        Llama::from_params(&self.config, params, self.device())
    }

    /// The adapter tensors as (PEFT name, shape, f32 values), layer by layer.
    pub fn adapter_tensors(&self) -> Result<Vec<crate::export::HfTensor>, ModelError> {
        let mut out = Vec::new();
        let Some(adapters) = &self.params.adapters else {
            return Ok(out);
        };
        for (i, l) in adapters.layers.iter().enumerate() {
            for name in LINEAR_MODULES {
                let Some(lora) = l.get(name) else { continue };
                for (ab, t) in [("A", lora.lora_a.val()), ("B", lora.lora_b.val())] {
                    let shape = t.dims().to_vec();
                    let v = t
                        .into_data()
                        .convert::<f32>()
                        .try_to_vec::<f32>()
                        .map_err(|e| ModelError::Input(format!("reading an adapter: {e:?}")))?;
                    out.push((peft_name(i, name, ab), shape, v));
                }
            }
        }
        Ok(out)
    }

    /// Writes the adapters as a PEFT folder: `adapter_config.json` (its
    /// `base_model_name_or_path` is `base`, as given), `adapter_model.safetensors` (f32, PEFT's
    /// names) and the tokenizer's files. An error when the model has no adapters.
    pub fn save_adapter(
        &self,
        dir: &Path,
        tokenizer: &Tokenizer,
        cfg: &AdapterConfig,
        base: &Path,
    ) -> Result<(), ModelError> {
        if !self.has_adapters() {
            return Err(ModelError::Input(
                "the model has no adapters to save".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let tensors = self.adapter_tensors()?;
        crate::export::write_safetensors(&dir.join(ADAPTER_WEIGHTS), tensors)?;
        let mut modules = cfg.modules();
        modules.sort();
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base.to_string_lossy(),
            "r": cfg.r,
            "lora_alpha": cfg.lora_alpha,
            "lora_dropout": cfg.lora_dropout,
            "target_modules": modules,
            "use_rslora": cfg.use_rslora,
            "bias": cfg.bias,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": null,
            "auto_mapping": null,
        });
        let text = serde_json::to_string_pretty(&config)
            .map_err(|e| ModelError::Input(format!("adapter config: {e}")))?;
        crate::export::write_atomic(&dir.join(ADAPTER_CONFIG), text.as_bytes())?;
        tokenizer.save(dir)
    }

    /// The model with the adapters of the PEFT folder `dir` on it (f32, whatever the base's
    /// type), the base frozen. Refused: adapters whose config this crate does not compute
    /// (DoRA, `fan_in_fan_out`, per-module ranks or alphas, trained biases or extra modules).
    pub fn with_adapter_folder(self, dir: &Path) -> Result<Self, ModelError> {
        let spec = AdapterFolder::read(dir)?;
        self.with_adapter_tensors(&spec.config, &dir.join(ADAPTER_WEIGHTS))
    }

    /// The model with the adapters of the safetensors file `file` (PEFT's names), `cfg` giving
    /// the scale and which modules they are on.
    pub fn with_adapter_tensors(
        self,
        cfg: &AdapterConfig,
        file: &Path,
    ) -> Result<Self, ModelError> {
        let modules = check_modules(cfg)?;
        let weights_err = |message: String| ModelError::Weights {
            path: file.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(file).map_err(|source| ModelError::Io {
            path: file.to_path_buf(),
            source,
        })?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| weights_err(format!("not a safetensors file: {e}")))?;
        let device = self.device().clone();
        let mut used = 0;
        let mut layers = Vec::new();
        for (i, layer) in self.params.model.layers.iter().enumerate() {
            let mut l = LayerLora::empty();
            for name in LINEAR_MODULES {
                if !modules.iter().any(|m| m == name) {
                    continue;
                }
                let Some(lin) = linear(layer, name) else {
                    continue;
                };
                let [fan_in, out] = lin.weight.val().dims();
                let mut read = |ab: &str, shape: [usize; 2]| -> Result<Tensor<2>, ModelError> {
                    let key = peft_name(i, name, ab);
                    let t = st
                        .tensor(&key)
                        .map_err(|_| weights_err(format!("tensor `{key}`: missing")))?;
                    if t.shape() != shape {
                        return Err(weights_err(format!(
                            "tensor `{key}`: shape {:?}, expected {shape:?}",
                            t.shape()
                        )));
                    }
                    used += 1;
                    let dtype = match t.dtype() {
                        safetensors::Dtype::F32 => DType::F32,
                        safetensors::Dtype::BF16 => DType::BF16,
                        safetensors::Dtype::F16 => DType::F16,
                        other => {
                            return Err(weights_err(format!(
                                "tensor `{key}`: type {other:?} (expected F32, BF16 or F16)"
                            )));
                        }
                    };
                    let data = TensorData::from_bytes_vec(t.data().to_vec(), shape, dtype)
                        .convert::<f32>();
                    Ok(Tensor::from_data(data, &device))
                };
                let a = read("A", [cfg.r, fan_in])?;
                let b = read("B", [out, cfg.r])?;
                if let Some(slot) = l.slot(name) {
                    *slot = Some(Lora {
                        lora_a: Param::from_tensor(a),
                        lora_b: Param::from_tensor(b),
                        scale: cfg.scale(),
                    });
                }
            }
            layers.push(l);
        }
        if let Some(extra) = st
            .names()
            .into_iter()
            .find(|n| !n.contains(".lora_A.") && !n.contains(".lora_B."))
        {
            return Err(weights_err(format!(
                "tensor `{extra}` is not a LoRA weight (trained biases or `modules_to_save` are \
                 not supported)"
            )));
        }
        if used != st.len() {
            return Err(weights_err(format!(
                "{} tensors, of which {used} are adapters of `target_modules` in this model's \
                 layers",
                st.len()
            )));
        }
        Ok(self.map_params(|p| {
            let mut p = p.no_grad();
            p.adapters = Some(Adapters { layers });
            p
        }))
    }
}

/// A PEFT adapter folder's `adapter_config.json`, read.
#[derive(Debug, Clone)]
pub struct AdapterFolder {
    /// The LoRA settings (PEFT's names).
    pub config: AdapterConfig,
    /// `base_model_name_or_path` resolved: as written when absolute; a relative path is taken
    /// relative to the adapter folder when that exists there, else as given.
    pub base: PathBuf,
}

/// The model whose weights and `config.json` `path` uses: the base of a PEFT adapter folder
/// (when its config reads), `path` itself otherwise.
pub fn base_model_path(path: &Path) -> PathBuf {
    if is_adapter_folder(path)
        && let Ok(folder) = AdapterFolder::read(path)
    {
        return folder.base;
    }
    path.to_path_buf()
}

/// Whether `path` is a PEFT adapter folder (holds `adapter_config.json`).
pub fn is_adapter_folder(path: &Path) -> bool {
    path.join(ADAPTER_CONFIG).is_file()
}

impl AdapterFolder {
    /// Reads `dir/adapter_config.json`; every key sweetspot cannot honour is refused by name.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let bad = |key: &str, msg: String| ModelError::Weights {
            path: path.clone(),
            message: format!("field `{key}`: {msg}"),
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Weights {
                path: path.clone(),
                message: format!("not valid JSON: {e}"),
            })?;
        let peft_type = v.get("peft_type").and_then(|x| x.as_str()).unwrap_or("");
        if peft_type != "LORA" {
            return Err(bad("peft_type", format!("`{peft_type}`: only \"LORA\"")));
        }
        let truthy = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
        for key in ["use_dora", "fan_in_fan_out"] {
            if truthy(key) {
                return Err(bad(key, "true is not supported".into()));
            }
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if v.get(key)
                .and_then(|x| x.as_object())
                .is_some_and(|o| !o.is_empty())
            {
                return Err(bad(key, "per-module values are not supported".into()));
            }
        }
        for key in ["modules_to_save", "layers_to_transform"] {
            if v.get(key).is_some_and(|x| !x.is_null()) {
                return Err(bad(key, "not supported (must be null)".into()));
            }
        }
        let bias = v.get("bias").and_then(|x| x.as_str()).unwrap_or("none");
        if bias != "none" {
            return Err(bad("bias", format!("`{bias}`: only \"none\"")));
        }
        let r = v
            .get("r")
            .and_then(|x| x.as_u64())
            .filter(|r| *r >= 1)
            .ok_or_else(|| bad("r", "missing or not a positive integer".into()))?;
        let lora_alpha = v
            .get("lora_alpha")
            .and_then(|x| x.as_f64())
            .ok_or_else(|| bad("lora_alpha", "missing or not a number".into()))?;
        let target_modules: Vec<String> = match v.get("target_modules") {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("target_modules", "not a list of names".into()))?,
            _ => return Err(bad("target_modules", "missing".into())),
        };
        if let Some(m) = target_modules
            .iter()
            .find(|m| *m != "all-linear" && !LINEAR_MODULES.contains(&m.as_str()))
        {
            return Err(bad(
                "target_modules",
                format!(
                    "`{m}` is not a linear layer of the decoder (one of {})",
                    LINEAR_MODULES.join(", ")
                ),
            ));
        }
        let config: AdapterConfig = serde_json::from_value(serde_json::json!({
            "type": "lora",
            "r": r,
            "lora_alpha": lora_alpha,
            "lora_dropout": v.get("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0),
            "target_modules": target_modules,
            "use_rslora": truthy("use_rslora"),
        }))
        .map_err(|e| bad("", e.to_string()))?;
        let base = v
            .get("base_model_name_or_path")
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("base_model_name_or_path", "missing".into()))?;
        let base = PathBuf::from(base);
        let base = if base.is_absolute() {
            base
        } else if dir.join(&base).exists() {
            dir.join(&base)
        } else {
            base
        };
        if !base.exists() {
            return Err(bad(
                "base_model_name_or_path",
                format!(
                    "the base model {} does not exist (an absolute path, or one relative to \
                     the adapter folder)",
                    base.display()
                ),
            ));
        }
        Ok(Self { config, base })
    }
}
