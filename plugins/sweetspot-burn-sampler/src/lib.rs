//! `burn`: sweetspot's native sampler. Loads a Llama-family model (a Hugging Face folder with
//! `config.json`, safetensors and tokenizer files, or a GGUF file), renders each prompt with the
//! model's chat template, and draws n responses per prompt in batches on the device, streaming
//! each prompt's group out as soon as its n samples are done.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sweetspot_core::rows::{RowBudget, Rows, auto_rows, available_ram, cache_budget};
use sweetspot_core::{
    BuildContext, ConfigIssue, PluginError, PluginInput, Progress, Prompt, Sample, SampleGroup,
    SampleRequest, Sampler, SamplerConfig, check_device_name, check_penalties, check_quantize,
    check_sampling, declared_inputs,
};
use sweetspot_model::generate::{BatchLimits, SamplingParams, SeqRequest, generate_continuous};
use sweetspot_model::{
    GenerationConfigMode, GenerationDefaults, Llama, ModelError, Precision, Quantize, Tokenizer,
    resolve_device,
};

/// Call from a binary to make sure this crate is linked (and its plugin registered).
#[inline(never)]
pub fn link() {
    std::hint::black_box(());
}

/// The `[sampler]` table with `type = "burn"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurnSamplerConfig {
    /// A model folder (config.json, model.safetensors or shards, tokenizer.json) or a .gguf file.
    pub model: PathBuf,
    /// Softmax temperature (the paper samples at 0.8); 0 is greedy. Unset: the model's
    /// generation config, else 0.8.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass (1 = off). Unset: the model's generation config, else 1.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Top-k (0 = off). Unset: the model's generation config, else 0.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// transformers' repetition penalty (1 = off). Unset: the model's generation config, else 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// transformers' min-p (0 = off). Unset: the model's generation config, else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// `auto` (default): the model's `generation_config.json` (or a GGUF's
    /// `general.sampling.*`) fills the sampling settings left unset, as vLLM does; `vllm`:
    /// sweetspot's defaults fill them (vLLM's `--generation-config vllm`). Its end tokens are
    /// stop tokens either way.
    #[serde(default)]
    pub generation_config: GenerationConfigMode,
    /// Longest response in tokens.
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
    /// Sequences on the device at once (continuous batching: a row that stops takes the next
    /// waiting sequence): a number, or `"auto"` (the default): as many rows as the key/value
    /// cache of each at its longest fits in memory (half the host's available RAM on a CPU; 90%
    /// of `[run] device_memory` less the weights on a GPU), at most 128 on a CPU and 256 on a GPU
    /// (16 on a GPU whose memory is not given), within `max_batch_tokens`. The rows chosen are
    /// logged at the start.
    #[serde(default)]
    pub batch_size: Rows,
    /// Key/value slots on the device at once (rows x slots, padding included): a waiting
    /// sequence joins only if every row could still run to `max_new_tokens` within it. Unset:
    /// `batch_size` alone bounds the batch.
    #[serde(default)]
    pub max_batch_tokens: Option<usize>,
    /// The device; `[run].device` / `--device` when absent.
    pub device: Option<String>,
    /// Float type of the weights (`f32`, `bf16`, `f16`); the logits and sampling stay in f32.
    #[serde(default)]
    pub dtype: Precision,
    /// `"q8_0"`: the projections computed with 8-bit weights and activations (llama.cpp's Q8_0
    /// blocks; VNNI dot products where the CPU has them), on the CPU with `dtype = "f32"`.
    /// Samples differ from f32's by the rounding (docs/benchmarks.md states how much). Unset:
    /// the weights' float type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<Quantize>,
}

/// The temperature when neither the recipe nor the model's generation config sets one (the
/// paper's).
pub const DEFAULT_TEMPERATURE: f32 = 0.8;
/// `max_new_tokens` when not given (the CLI's flags take it from here too).
pub fn default_max_new() -> usize {
    512
}
/// `sweetspot serve`'s batch size when not given.
pub fn default_batch() -> usize {
    16
}

/// A loaded model and tokenizer.
pub struct BurnSampler {
    model: Llama,
    tokenizer: Tokenizer,
    params: SamplingParams,
    rows: Rows,
    max_batch_tokens: Option<usize>,
    max_new_tokens: usize,
    /// `[run] device_memory`, for `batch_size = "auto"` on a GPU.
    device_memory: Option<u64>,
    on_cpu: bool,
}

impl std::fmt::Debug for BurnSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnSampler")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

fn model_err(e: sweetspot_model::ModelError) -> PluginError {
    PluginError::other("burn sampler", e)
}

/// Loads a model folder or GGUF file with its tokenizer, the weights in `dtype`.
pub fn load(
    path: &std::path::Path,
    device: &str,
    dtype: Precision,
) -> Result<(Llama, Tokenizer), PluginError> {
    let device = resolve_device(device).map_err(model_err)?;
    sweetspot_model::load_causal_lm(path, &device, dtype).map_err(model_err)
}

#[sweetspot_core::plugin(
    name = "burn",
    description = "native Llama-family sampler on burn (safetensors or GGUF; cpu, wgpu, cuda)",
    example = "type = \"burn\"\nmodel = \"models/SmolLM2-135M-Instruct.Q4_1.gguf\""
)]
impl SamplerConfig for BurnSamplerConfig {
    fn memory_use(&self) -> Option<sweetspot_core::InferenceMemory> {
        Some(sweetspot_core::InferenceMemory {
            model: self.model.clone(),
            dtype: self.dtype,
            batch_size: self.batch_size,
            max_batch_tokens: self.max_batch_tokens,
            max_new_tokens: self.max_new_tokens,
            quantize: self.quantize,
        })
    }
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_quantize(
            self.quantize,
            self.dtype,
            self.device.as_deref().unwrap_or(&ctx.device),
        )?;
        check_sampling(
            self.temperature.unwrap_or(DEFAULT_TEMPERATURE),
            self.top_p.unwrap_or(1.0),
            self.max_new_tokens,
        )?;
        check_penalties(self.repetition_penalty, self.min_p)?;
        if self.batch_size == Rows::Fixed(0) {
            return Err(ConfigIssue::new(
                "batch_size",
                "must be at least 1 (or \"auto\")",
            ));
        }
        if let Some(t) = self.max_batch_tokens
            && t <= self.max_new_tokens
        {
            return Err(ConfigIssue::new(
                "max_batch_tokens",
                format!(
                    "{t} leaves no room for a prompt beside max_new_tokens = {}",
                    self.max_new_tokens
                ),
            ));
        }
        if let Some(d) = &self.device {
            check_device_name(d).map_err(|m| ConfigIssue::new("device", m))?;
        }
        let path = ctx.resolve(&self.model);
        if !path.exists() {
            return Err(ConfigIssue::missing_file("model", &path));
        }
        // A generation_config.json with a bad value is refused before anything runs (a bad
        // config.json is reported when the model loads, as an error of the model's files).
        let generation = path.join("generation_config.json");
        if let Ok(text) = std::fs::read_to_string(&generation) {
            GenerationDefaults::from_json(&text, &generation, false)
                .map_err(|e| ConfigIssue::new("model", e.to_string()))?;
        }
        Ok(())
    }

    fn inputs(&self, _ctx: &BuildContext) -> Vec<PluginInput> {
        declared_inputs([("model", &self.model)])
    }

    fn local_model(&self) -> Option<PluginInput> {
        Some(PluginInput::new("model", &self.model))
    }

    fn with_policy(&self, model: &std::path::Path) -> Option<Box<dyn SamplerConfig>> {
        Some(Box::new(Self {
            model: model.to_path_buf(),
            ..self.clone()
        }))
    }

    fn for_eval(
        &self,
        temperature: f32,
        max_new_tokens: Option<usize>,
    ) -> Option<Box<dyn SamplerConfig>> {
        Some(Box::new(Self {
            temperature: Some(temperature),
            max_new_tokens: max_new_tokens.unwrap_or(self.max_new_tokens),
            ..self.clone()
        }))
    }

    fn check_prompts(&self, ctx: &BuildContext, prompts: &[Prompt]) -> Result<(), (usize, String)> {
        let path = ctx.resolve(&self.model);
        let context = || -> Result<(Tokenizer, usize), ModelError> {
            let tokenizer = sweetspot_model::load_tokenizer(&path)?;
            // An adapter folder's positions are its base's.
            let base = sweetspot_model::lora::base_model_path(&path);
            let positions = if is_gguf(&base) {
                sweetspot_model::gguf::Gguf::open_header(&base)?
                    .llama_config()?
                    .max_position_embeddings
            } else {
                sweetspot_model::LlamaConfig::from_file(&base.join("config.json"))?
                    .max_position_embeddings
            };
            Ok((tokenizer, positions))
        };
        // A model that cannot be read is reported when it loads, with its own message.
        let Ok((tokenizer, positions)) = context() else {
            return Ok(());
        };
        for (i, p) in prompts.iter().enumerate() {
            let ids = prompt_ids(&tokenizer, p).map_err(|e| (i, e.to_string()))?;
            if ids.len() + self.max_new_tokens > positions {
                return Err((
                    i,
                    format!(
                        "prompt `{}` is {} tokens; with max_new_tokens = {} that is more than \
                         the model's {positions} positions",
                        p.id,
                        ids.len(),
                        self.max_new_tokens
                    ),
                ));
            }
            if let Some(t) = self.max_batch_tokens
                && ids.len() + self.max_new_tokens > t
            {
                return Err((
                    i,
                    format!(
                        "prompt `{}` is {} tokens; with max_new_tokens = {} one sequence needs \
                         more than max_batch_tokens = {t}",
                        p.id,
                        ids.len(),
                        self.max_new_tokens
                    ),
                ));
            }
        }
        Ok(())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Sampler>, PluginError> {
        self.check(ctx)
            .map_err(|i| PluginError::config("burn", i.to_string()))?;
        let path = ctx.resolve(&self.model);
        let device = self.device.clone().unwrap_or_else(|| ctx.device.clone());
        tracing::info!(model = %path.display(), device, "loading model");
        let defaults = sweetspot_model::load_generation_defaults(&path).map_err(model_err)?;
        let (params, sources) = self.resolve(&defaults);
        let (model, tokenizer) = load(&path, &device, self.dtype)?;
        let model = match self.quantize {
            Some(q) => {
                let model = model.quantize(q).map_err(model_err)?;
                tracing::info!(
                    "quantize = \"{q}\": the projections in 8 bits ({} MB beside the weights; \
                     VNNI dot products: {})",
                    model.quantized_bytes() / 1_000_000,
                    if sweetspot_model::q8_uses_vnni() {
                        "yes"
                    } else {
                        "no, a portable loop"
                    }
                );
                model
            }
            None => model,
        };
        let stops: Vec<String> = tokenizer
            .stop_ids()
            .iter()
            .map(|&id| match tokenizer.id_to_token(id) {
                Some(t) => format!("{id} {t}"),
                None => id.to_string(),
            })
            .collect();
        tracing::info!(
            "sampling: {sources}; stop tokens: {}; generation_config = \"{}\"",
            stops.join(", "),
            match self.generation_config {
                GenerationConfigMode::Auto => "auto",
                GenerationConfigMode::Vllm => "vllm",
            }
        );
        for key in &defaults.not_applied {
            tracing::warn!(
                "{}: `{key}` is not applied (vLLM does not apply it either; transformers' \
                 generate would)",
                defaults
                    .source
                    .as_deref()
                    .map_or_else(|| path.display().to_string(), |p| p.display().to_string())
            );
        }
        Ok(Box::new(BurnSampler {
            model,
            tokenizer,
            params,
            rows: self.batch_size,
            max_batch_tokens: self.max_batch_tokens,
            max_new_tokens: self.max_new_tokens,
            device_memory: ctx.device_memory,
            on_cpu: device == "cpu" || device.starts_with("cpu:"),
        }))
    }
}

impl BurnSamplerConfig {
    /// The sampling settings that apply: the recipe's, then (with `generation_config = "auto"`)
    /// the model's generation config, then sweetspot's defaults; with a line saying where each
    /// came from.
    pub fn resolve(&self, defaults: &GenerationDefaults) -> (SamplingParams, String) {
        let d = defaults.for_mode(self.generation_config);
        let file = d
            .source
            .as_deref()
            .and_then(|p| p.file_name())
            .map_or_else(|| "model".to_string(), |f| f.to_string_lossy().into_owned());
        let mut notes = Vec::new();
        let mut pick = |name: &str, recipe: Option<f64>, model: Option<f64>, fallback: f64| {
            let (v, from) = match (recipe, model) {
                (Some(v), _) => (v, "recipe".to_string()),
                (None, Some(v)) => (v, file.clone()),
                (None, None) => (fallback, "default".to_string()),
            };
            notes.push(format!("{name} {} ({from})", v as f32));
            v
        };
        let temperature = pick(
            "temperature",
            self.temperature.map(f64::from),
            d.temperature.map(f64::from),
            f64::from(DEFAULT_TEMPERATURE),
        ) as f32;
        let top_p = pick(
            "top_p",
            self.top_p.map(f64::from),
            d.top_p.map(f64::from),
            1.0,
        ) as f32;
        let top_k = pick(
            "top_k",
            self.top_k.map(|k| k as f64),
            d.top_k.map(|k| k as f64),
            0.0,
        ) as usize;
        let repetition_penalty = pick(
            "repetition_penalty",
            self.repetition_penalty.map(f64::from),
            d.repetition_penalty.map(f64::from),
            1.0,
        ) as f32;
        let min_p = pick(
            "min_p",
            self.min_p.map(f64::from),
            d.min_p.map(f64::from),
            0.0,
        ) as f32;
        let params = SamplingParams {
            repetition_penalty,
            min_p,
            ..SamplingParams::new(temperature, top_p, top_k, self.max_new_tokens)
        };
        (params, notes.join(", "))
    }
}

fn is_gguf(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// A prompt's token ids as the sampler feeds them ([`Tokenizer::encode_prompt`]).
fn prompt_ids(tokenizer: &Tokenizer, prompt: &Prompt) -> Result<Vec<u32>, PluginError> {
    tokenizer.encode_prompt(prompt).map_err(|e| match e {
        ModelError::Input(m) => PluginError::Input(m),
        e => model_err(e),
    })
}

impl BurnSampler {
    /// The batch limits for `sequences` requests over the prompts `encoded`: `batch_size` as
    /// given, or for `"auto"` the rows [`auto_rows`] picks from the memory there is now (the
    /// weights are loaded), logged.
    fn limits(&self, encoded: &[Vec<u32>], sequences: usize) -> BatchLimits {
        let rows = match self.rows {
            Rows::Fixed(n) => n,
            Rows::Auto => {
                let longest = encoded.iter().map(Vec::len).max().unwrap_or(0);
                let tokens_per_row = (longest + self.max_new_tokens) as u64;
                // The weights are loaded: the available RAM is what is left beside them.
                let (cache_bytes, cap) = cache_budget(
                    self.on_cpu,
                    self.device_memory,
                    available_ram(),
                    self.model.weight_bytes(),
                );
                let choice = auto_rows(&RowBudget {
                    kv_bytes_per_token: self.model.kv_bytes_per_token(),
                    tokens_per_row,
                    cache_bytes,
                    max_batch_tokens: self.max_batch_tokens,
                    cap,
                    sequences,
                });
                tracing::info!(
                    "generate: {} rows at once (batch_size = \"auto\": {}{})",
                    choice.rows,
                    choice.why,
                    if !self.on_cpu && self.device_memory.is_none() {
                        "; give [run] device_memory to size it from the GPU's memory"
                    } else {
                        ""
                    }
                );
                choice.rows
            }
        };
        BatchLimits {
            rows,
            tokens: self.max_batch_tokens,
        }
    }

    fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, PluginError> {
        prompt_ids(&self.tokenizer, prompt)
    }
}

impl Sampler for BurnSampler {
    fn sample(
        &mut self,
        prompts: &[Prompt],
        request: &SampleRequest,
        progress: &dyn Progress,
        sink: &mut dyn FnMut(SampleGroup) -> Result<(), PluginError>,
    ) -> Result<(), PluginError> {
        let n = request.n;
        let first = request.first_index as usize;
        let mut encoded = Vec::with_capacity(prompts.len());
        for p in prompts {
            encoded.push(self.prompt_ids(p)?);
        }
        // Every (prompt, sample) in prompt order, so groups complete one after another.
        let jobs: Vec<(usize, u32)> = (0..prompts.len())
            .flat_map(|p| (first..n).map(move |s| (p, s as u32)))
            .collect();
        let mut pending: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
        let stop = self.tokenizer.stop_ids().to_vec();
        let reqs: Vec<SeqRequest> = jobs
            .iter()
            .map(|&(p, s)| SeqRequest::sample(encoded[p].clone(), request.seed, &prompts[p].id, s))
            .collect();
        let limits = self.limits(&encoded, reqs.len());
        let mut tokens = 0u64;
        // A failure of the sink (the stage's output) is kept as it is; the engine only stops.
        let mut sink_error: Option<PluginError> = None;
        // Continuous batching: `batch_size` rows (and `max_batch_tokens` slots) on the device, refilled as sequences stop. The
        // bar counts sequences (its total is prompts x n); tokens go in its message.
        let result = generate_continuous(
            &self.model,
            &reqs,
            &stop,
            &self.params,
            limits,
            |n| {
                tokens += n as u64;
                if tokens % 256 < n as u64 {
                    progress.message(&format!("{tokens} tokens"));
                }
            },
            |i, g| {
                progress.advance(1);
                let (p, s) = jobs[i];
                let body: Vec<u32> = g
                    .tokens
                    .iter()
                    .copied()
                    .filter(|t| !stop.contains(t))
                    .collect();
                let text = self.tokenizer.decode(&body, true)?;
                let group = pending.entry(p).or_default();
                group.push(Sample {
                    prompt_id: prompts[p].id.clone(),
                    sample_index: s,
                    response: text,
                    token_count: Some(g.tokens.len() as u32),
                    finish_reason: Some(g.finish_reason),
                    logprob: Some(g.logprob),
                });
                if group.len() == n - first {
                    let mut samples = pending.remove(&p).unwrap_or_default();
                    samples.sort_by_key(|s| s.sample_index);
                    if let Err(e) = sink(SampleGroup {
                        prompt: prompts[p].clone(),
                        samples,
                    }) {
                        sink_error = Some(e);
                        return Err(ModelError::Input("the sample sink failed".into()));
                    }
                }
                Ok(())
            },
        );
        if let Some(e) = sink_error {
            return Err(e);
        }
        result.map_err(model_err)?;
        Ok(())
    }
}
