//! `sweetspot serve`: an OpenAI-compatible server over sweetspot's native models, so any CPU or
//! GPU box running sweetspot can join a sampling or scoring fleet, and ArmoRM (which vLLM does
//! not run) can be served.
//!
//! - `GET /v1/models`, `GET /health`
//! - `POST /v1/completions` (prompt as text or token ids) and `POST /v1/chat/completions`, with
//!   `n`, `seed`, `temperature`, `top_p`, `top_k`, `max_tokens`, `stop`, `return_token_ids`;
//!   `usage` in every answer. Choice `i` of a request seeded `s` draws from seed `s + i` (vLLM's
//!   rule), the same stream the in-process `burn` sampler uses for that seed, so a sample asked
//!   of the server equals the one drawn in process.
//! - `POST /classify` (and `/v1/classify`), with a reward model: vLLM's and SGLang's shapes.
//!
//! Invariants: binds to loopback unless told otherwise; with an API key, every route but
//! `/health` needs `Authorization: Bearer KEY`, and the key is never logged; a request field that
//! would change the answer and is not implemented is refused by name; concurrent requests are
//! batched on the device by an engine thread that owns the model.

mod api;
mod engine;
mod faults;
mod state;

pub use sweetspot_model::GenerationConfigMode;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sweetspot_model::reward::LLAMA3_GATING_PATTERN;
use sweetspot_model::{ModelError, Precision, Quantize, RewardNet, Tokenizer, resolve_device};

use crate::engine::{PolicyInfo, RewardInfo};
use crate::state::{AppState, RewardState};

/// Which native reward model `--reward-model` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewardKind {
    /// `LlamaForSequenceClassification` with one label (Skywork-Reward).
    SeqCls,
    /// ArmoRM's `LlamaForRewardModelWithGating`.
    ArmoRm,
}

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The policy: a model folder or a .gguf file.
    pub model: PathBuf,
    /// The name clients ask for (`model` in requests); the model path's file name by default.
    pub served_name: Option<String>,
    /// Address to bind.
    pub host: String,
    /// Port (0: any free port; the bound address is printed).
    pub port: u16,
    /// The device (`cpu`, `wgpu`, `cuda:0`, ...).
    pub device: String,
    /// The weights' float type.
    pub dtype: Precision,
    /// 8-bit projections (`--quantize q8_0`) for the policy and the reward model; CPU, f32.
    pub quantize: Option<Quantize>,
    /// Most sequences per device batch.
    pub batch_size: usize,
    /// A reward model folder to serve on `/classify`, and its kind.
    pub reward: Option<(PathBuf, RewardKind)>,
    /// Most padded tokens per scoring batch.
    pub max_batch_tokens: usize,
    /// Require `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Testing: the share of POST requests that fail (see the `faults` module), and its seed.
    pub inject_faults: Option<(f64, u64)>,
    /// Most connections served at once; the next ones wait (in the listen backlog) for a slot.
    pub max_connections: usize,
    /// A connection that has not sent a request's headers this long after it began one is
    /// closed.
    pub header_read_timeout: std::time::Duration,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Most sequences (prompts x n) one request may ask for; `None`: from the free memory.
    pub max_sequences_per_request: Option<usize>,
    /// Most tokens (sequences x (prompt + max_tokens)) one request may ask for; `None`: from the
    /// free memory.
    pub max_tokens_per_request: Option<usize>,
    /// vLLM's `--generation-config`: `Auto` fills the sampling settings a request leaves out
    /// from the model's generation config (`generation_config.json`, a GGUF's
    /// `general.sampling.*`); `Vllm` uses OpenAI's defaults. Its end tokens stop either way.
    pub generation_config: sweetspot_model::GenerationConfigMode,
}

/// Host bytes a requested sequence holds while its request is in flight (the request, its
/// result and its JSON answer), apart from its tokens: a generous estimate.
const HOST_BYTES_PER_SEQUENCE: u64 = 1024;
/// Host bytes a requested token holds (its id in the request and result, its text, its JSON).
const HOST_BYTES_PER_TOKEN: u64 = 64;

/// The memory the system can still give (Linux's `MemAvailable`), if known.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The per-request caps: given, or a quarter of the free memory (4 GiB when unknown) over what a
/// sequence and a token hold on the host.
fn request_caps(opts: &ServeOptions) -> (usize, usize, u64) {
    let free = available_memory().unwrap_or(4 << 30);
    let budget = free / 4;
    let seqs = opts
        .max_sequences_per_request
        .unwrap_or_else(|| (budget / HOST_BYTES_PER_SEQUENCE).max(1) as usize);
    let tokens = opts
        .max_tokens_per_request
        .unwrap_or_else(|| (budget / HOST_BYTES_PER_TOKEN).max(1) as usize);
    (seqs, tokens, free)
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The model would not load.
    #[error("{path}: {source}")]
    Model {
        /// The model's path.
        path: PathBuf,
        /// Why.
        source: ModelError,
    },
    /// The address would not bind, or the server failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Bad options.
    #[error("{0}")]
    Options(String),
}

fn name_of(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// Loads the models, binds, calls `on_ready` with the bound address, and serves until Ctrl-C.
pub fn serve(opts: ServeOptions, on_ready: impl FnOnce(SocketAddr)) -> Result<(), ServeError> {
    if opts.batch_size == 0 || opts.max_batch_tokens == 0 {
        return Err(ServeError::Options(
            "--batch-size and --max-batch-tokens must be at least 1".into(),
        ));
    }
    if opts.max_connections == 0
        || opts.max_body_bytes == 0
        || opts.max_sequences_per_request == Some(0)
        || opts.max_tokens_per_request == Some(0)
    {
        return Err(ServeError::Options(
            "--max-connections, --max-body-bytes, --max-sequences-per-request and \
             --max-tokens-per-request must be at least 1"
                .into(),
        ));
    }
    if opts.header_read_timeout.is_zero() {
        return Err(ServeError::Options(
            "--header-read-timeout must be more than 0 seconds".into(),
        ));
    }
    if let Some((rate, _)) = opts.inject_faults
        && !(0.0..=1.0).contains(&rate)
    {
        return Err(ServeError::Options(
            "--inject-faults must be in [0, 1]".into(),
        ));
    }
    let device = resolve_device(&opts.device).map_err(|source| ServeError::Model {
        path: opts.model.clone(),
        source,
    })?;
    tracing::info!(model = %opts.model.display(), device = opts.device, "loading the policy");
    let (model, tokenizer) = sweetspot_model::load_causal_lm(&opts.model, &device, opts.dtype)
        .map_err(|source| ServeError::Model {
            path: opts.model.clone(),
            source,
        })?;
    let model = match opts.quantize {
        None => model,
        Some(q) => {
            let model = model.quantize(q).map_err(|source| ServeError::Model {
                path: opts.model.clone(),
                source,
            })?;
            eprintln!(
                "quantize = \"{q}\": the policy's projections in 8 bits ({} MB beside the weights)",
                model.quantized_bytes() / 1_000_000
            );
            model
        }
    };
    let stop = tokenizer.stop_ids().to_vec();
    let (max_sequences, max_tokens, free) = request_caps(&opts);
    let c = &model.config;
    let kv_bytes_per_token = model.kv_bytes_per_token();
    let batch_kv = (opts.batch_size * c.max_position_embeddings) as u64 * kv_bytes_per_token;
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    tracing::info!(
        max_sequences_per_request = max_sequences,
        max_tokens_per_request = max_tokens,
        kv_bytes_per_token,
        free_memory_gib = format!("{:.1}", gib(free)),
        full_batch_kv_gib = format!("{:.2}", gib(batch_kv)),
        "request caps"
    );
    eprintln!(
        "request caps: {max_sequences} sequences and {max_tokens} tokens per request \
         (--max-sequences-per-request, --max-tokens-per-request; free memory {:.1} GiB); \
         key/value cache {kv_bytes_per_token} bytes per token, {:.2} GiB for a full batch of \
         {} at {} positions",
        gib(free),
        gib(batch_kv),
        opts.batch_size,
        c.max_position_embeddings
    );
    if opts.device == "cpu" && batch_kv > free {
        tracing::warn!(
            "a full batch at the model's longest context needs more memory than is free: lower \
             --batch-size or ask for fewer tokens"
        );
    }
    let defaults = sweetspot_model::load_generation_defaults(&opts.model)
        .map_err(|source| ServeError::Model {
            path: opts.model.clone(),
            source,
        })?
        .for_mode(opts.generation_config);
    eprintln!(
        "defaults for settings a request leaves out: temperature {}, top_p {}, top_k {}, \
         repetition_penalty {}, min_p {} ({})",
        defaults.temperature.unwrap_or(1.0),
        defaults.top_p.unwrap_or(1.0),
        defaults.top_k.unwrap_or(0),
        defaults.repetition_penalty.unwrap_or(1.0),
        defaults.min_p.unwrap_or(0.0),
        match (&defaults.source, opts.generation_config) {
            (_, sweetspot_model::GenerationConfigMode::Vllm) =>
                "--generation-config vllm: OpenAI's".to_string(),
            (Some(p), _) => format!("from {}, else OpenAI's", p.display()),
            (None, _) => "OpenAI's: the model has no generation config".to_string(),
        }
    );
    let policy = PolicyInfo {
        max_positions: model.config.max_position_embeddings,
        tokenizer,
        defaults,
    };
    let vocab = model.config.vocab_size;
    let (gen_tx, gen_rx) = std::sync::mpsc::channel();
    let batch = opts.batch_size;
    std::thread::Builder::new()
        .name("sampling".into())
        .spawn(move || engine::run_policy(model, stop, batch, gen_rx))?;
    let reward = match &opts.reward {
        None => None,
        Some((dir, kind)) => {
            let err = |source| ServeError::Model {
                path: dir.clone(),
                source,
            };
            tracing::info!(model = %dir.display(), "loading the reward model");
            let net = match kind {
                RewardKind::SeqCls => RewardNet::seq_cls_from_pretrained(dir, &device, opts.dtype),
                RewardKind::ArmoRm => RewardNet::armorm_from_pretrained(dir, &device, opts.dtype),
            }
            .map_err(err)?;
            let net = match opts.quantize {
                None => net,
                Some(q) => net.quantize(q).map_err(err)?,
            };
            let tokenizer = Tokenizer::from_dir(dir, &[]).map_err(err)?;
            let gating_pattern = match kind {
                RewardKind::ArmoRm => Some(
                    tokenizer
                        .encode(LLAMA3_GATING_PATTERN, false)
                        .map_err(err)?,
                ),
                RewardKind::SeqCls => None,
            };
            let objectives = net.objective_names();
            let info = RewardInfo {
                max_positions: net.max_tokens(),
                tokenizer,
                gating_pattern,
                objectives,
            };
            let vocab = net.backbone.config.vocab_size;
            let (tx, rx) = std::sync::mpsc::channel();
            let (b, t) = (opts.batch_size, opts.max_batch_tokens);
            std::thread::Builder::new()
                .name("scoring".into())
                .spawn(move || engine::run_reward(net, b, t, rx))?;
            Some(RewardState {
                name: name_of(dir),
                info,
                vocab,
                jobs: tx,
            })
        }
    };
    let state = Arc::new(AppState {
        name: opts
            .served_name
            .clone()
            .unwrap_or_else(|| name_of(&opts.model)),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        policy,
        vocab,
        generate: gen_tx,
        reward,
        api_key: opts.api_key.clone(),
        limits: state::Limits {
            max_sequences,
            max_tokens,
            // Several requests at their cap may be in flight at once; beyond that, 429.
            max_in_flight_tokens: max_tokens.saturating_mul(2),
            in_flight_tokens: AtomicU64::new(0),
        },
    });
    let faults = opts.inject_faults.map(|(rate, seed)| {
        Arc::new(faults::Faults {
            rate,
            seed,
            count: AtomicU64::new(0),
        })
    });
    let app = router(state, faults).layer(DefaultBodyLimit::max(opts.max_body_bytes));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port)).await?;
        let addr = listener.local_addr()?;
        on_ready(addr);
        accept(listener, app, &opts).await
    })
}

/// Serves connections until Ctrl-C: at most `max_connections` at once (a semaphore permit per
/// accepted connection; the next ones wait in the listen backlog), each by hyper's HTTP/1 server
/// with its header-read timeout. On Ctrl-C, stops accepting, lets each connection finish its
/// request, and returns when every one has closed.
async fn accept(
    listener: tokio::net::TcpListener,
    app: Router,
    opts: &ServeOptions,
) -> Result<(), ServeError> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tokio::sync::{Semaphore, watch};

    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::pin!(conn);
            let stopping = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stopping => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection closed");
            }
        });
    }
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it closes.
    let _ = slots
        .acquire_many(u32::try_from(opts.max_connections).unwrap_or(u32::MAX))
        .await;
    Ok(())
}

fn router(state: Arc<AppState>, faults: Option<Arc<faults::Faults>>) -> Router {
    let api = Router::new()
        .route("/v1/models", get(api::models))
        .route("/v1/completions", post(api::completions))
        .route("/v1/chat/completions", post(api::chat_completions))
        .route("/classify", post(api::classify))
        .route("/v1/classify", post(api::classify))
        .layer(middleware::from_fn_with_state(faults, faults::inject))
        .layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health", get(api::health))
        .merge(api)
        .fallback(api::unknown_route)
        .method_not_allowed_fallback(api::wrong_method)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Checks `Authorization: Bearer KEY` when the server has a key.
async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return api::ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "a valid API key is required (Authorization: Bearer ...)".into(),
                param: None,
            }
            .into_response();
        }
    }
    next.run(request).await
}

/// Logs method, path, status and time of every request (never its headers: the API key).
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}
