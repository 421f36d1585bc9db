//! `sweetspot serve`: an OpenAI-compatible server over the native models (see `sweetspot-serve`).

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use sweetspot_serve::{RewardKind, ServeOptions};

use crate::Failure;

/// The reward model's kind.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RewardTypeArg {
    /// LlamaForSequenceClassification with one label (Skywork-Reward).
    SeqCls,
    /// Alias of seq-cls.
    Skywork,
    /// ArmoRM (LlamaForRewardModelWithGating): the 19 objectives come with each score.
    Armorm,
}

/// `sweetspot serve MODEL`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The policy: a model folder (config.json, safetensors, tokenizer.json) or a .gguf file.
    pub model: PathBuf,
    /// Address to bind (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the address is printed as `listening on http://...`).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model name clients send (default: the model path's file name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// The device: cpu (default), wgpu, wgpu:cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The weights' float type: f32 (default), bf16 or f16.
    #[arg(
        long,
        value_parser = ["f32", "bf16", "f16"],
        default_value = sweetspot_core::recipe::Precision::default().name()
    )]
    pub dtype: String,
    /// Compute the projections (the policy's and the reward model's) with 8-bit weights and
    /// activations (llama.cpp's Q8_0 blocks): q8_0. CPU only, with f32 weights.
    #[arg(long, value_parser = ["q8_0"])]
    pub quantize: Option<String>,
    /// Most sequences per device batch (concurrent requests are batched together).
    #[arg(long, default_value_t = sweetspot_burn_sampler::default_batch())]
    pub batch_size: usize,
    /// A reward model folder to serve on /classify.
    #[arg(long)]
    pub reward_model: Option<PathBuf>,
    /// The reward model's kind.
    #[arg(long, value_enum, default_value = "seq-cls", requires = "reward_model")]
    pub reward_type: RewardTypeArg,
    /// Most padded tokens per scoring batch.
    #[arg(long, default_value_t = sweetspot_burn_reward::default_batch_tokens())]
    pub max_batch_tokens: usize,
    /// Require this API key (`Authorization: Bearer KEY`); SWEETSPOT_API_KEY when absent. Prefer
    /// the variable: a flag shows in the process list.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Testing clients: this share of POST requests fails (500s, connections cut after the work,
    /// delays).
    #[arg(long, hide = true)]
    pub inject_faults: Option<f64>,
    /// The fault pattern's seed.
    #[arg(long, hide = true, default_value_t = 0)]
    pub fault_seed: u64,
    /// Most connections served at once; more wait for a free slot.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers; slower connections are closed.
    #[arg(long, default_value_t = 30.0)]
    pub header_read_timeout: f64,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Most sequences (prompts x n) one request may ask for (413 beyond). Default: a quarter of
    /// the free memory at 1 KiB a sequence (printed at start).
    #[arg(long)]
    pub max_sequences_per_request: Option<usize>,
    /// Most tokens (prompts x n x (prompt + max_tokens)) one request may ask for (413 beyond).
    /// Default: a quarter of the free memory at 64 bytes a token (printed at start).
    #[arg(long)]
    pub max_tokens_per_request: Option<usize>,
    /// `auto`: the model's generation_config.json fills the sampling settings a request leaves
    /// out (vLLM's default); `vllm`: OpenAI's defaults do. Its end tokens stop either way.
    #[arg(long, default_value = "auto", value_parser = ["auto", "vllm"])]
    pub generation_config: String,
}

pub(crate) fn serve_cmd(args: ServeArgs) -> Result<(), Failure> {
    let dtype =
        serde_json::from_value(serde_json::Value::String(args.dtype.clone())).map_err(|e| {
            Failure {
                message: format!("--dtype: {e}"),
                code: 2,
            }
        })?;
    let quantize = match &args.quantize {
        None => None,
        Some(q) => Some(q.parse().map_err(|e| Failure {
            message: format!("--quantize: {e}"),
            code: 2,
        })?),
    };
    sweetspot_core::check_quantize(quantize, dtype, &args.device).map_err(|e| Failure {
        message: format!("--{}: {}", e.key, e.message),
        code: 2,
    })?;
    if !(args.header_read_timeout.is_finite() && args.header_read_timeout > 0.0) {
        return Err(Failure {
            message: format!(
                "--header-read-timeout: {} is not a number of seconds above 0",
                args.header_read_timeout
            ),
            code: 2,
        });
    }
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("SWEETSPOT_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let opts = ServeOptions {
        model: args.model,
        served_name: args.served_model_name,
        host: args.host,
        port: args.port,
        device: args.device,
        dtype,
        quantize,
        batch_size: args.batch_size,
        reward: args.reward_model.map(|dir| {
            let kind = match args.reward_type {
                RewardTypeArg::SeqCls | RewardTypeArg::Skywork => RewardKind::SeqCls,
                RewardTypeArg::Armorm => RewardKind::ArmoRm,
            };
            (dir, kind)
        }),
        max_batch_tokens: args.max_batch_tokens,
        api_key,
        inject_faults: args.inject_faults.map(|r| (r, args.fault_seed)),
        max_connections: args.max_connections,
        header_read_timeout: std::time::Duration::from_secs_f64(args.header_read_timeout),
        max_body_bytes: args.max_body_bytes,
        max_sequences_per_request: args.max_sequences_per_request,
        max_tokens_per_request: args.max_tokens_per_request,
        generation_config: match args.generation_config.as_str() {
            "vllm" => sweetspot_serve::GenerationConfigMode::Vllm,
            _ => sweetspot_serve::GenerationConfigMode::Auto,
        },
    };
    let keyed = opts.api_key.is_some();
    sweetspot_serve::serve(opts, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
        tracing::info!(%addr, api_key = keyed, "serving");
    })
    .map_err(|e| Failure {
        message: e.to_string(),
        code: 1,
    })
}
