//! The HTTP surface: OpenAI's `/v1/models`, `/v1/completions` and `/v1/chat/completions`, and a
//! scoring endpoint in vLLM's `/classify` shape (SGLang's shape too, by its request fields).
//!
//! Every request field that would change what is computed and is not implemented is refused by
//! name (400), never ignored; `usage` is in every answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sweetspot_core::{FinishReason, Message};
use sweetspot_model::RewardInput;
use sweetspot_model::generate::{Generation, SamplingParams, SeqRequest};
use sweetspot_model::reward::find_last;
use tokio::sync::oneshot;

use crate::engine::{GenJob, ScoreJob};
use crate::state::AppState;

/// An error answer in OpenAI's shape.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) param: Option<String>,
}

impl ApiError {
    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: None,
        }
    }

    fn field(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!("`{param}`: {}", message.into()),
            param: Some(param.to_string()),
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            param: None,
        }
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            param: None,
        }
    }
}

/// A JSON body, its rejections (axum's: malformed or too deeply nested JSON 400, a body of the
/// wrong type 422, a wrong or missing Content-Type 415, a body too large 413) in OpenAI's shape.
pub(crate) struct ApiJson(pub(crate) Value);

impl<S: Send + Sync> FromRequest<S> for ApiJson {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<Value>::from_request(request, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rejection) => {
                let status = rejection.status();
                let message = match &rejection {
                    JsonRejection::MissingJsonContentType(_) => {
                        "the body must be JSON sent with `Content-Type: application/json`"
                            .to_string()
                    }
                    _ if status == StatusCode::PAYLOAD_TOO_LARGE => {
                        "the request body is larger than this server takes (--max-body-bytes)"
                            .to_string()
                    }
                    _ => rejection.body_text(),
                };
                Err(ApiError {
                    status,
                    message,
                    param: None,
                })
            }
        }
    }
}

/// Any path this server does not serve: 404.
pub(crate) async fn unknown_route(uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "no route {}: this server serves /v1/models, /v1/completions, \
             /v1/chat/completions, /classify, /v1/classify and /health",
            uri.path()
        ),
        param: None,
    }
}

/// A served path asked with another method: 405.
pub(crate) async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("{} does not take {method}", uri.path()),
        param: None,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable_error",
            s if s.is_server_error() => "internal_error",
            _ => "invalid_request_error",
        };
        let body = json!({"error": {
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": self.status.as_u16(),
        }});
        (self.status, Json(body)).into_response()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A seed for a request that gives none: different on every call, as vLLM's are.
fn fresh_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    // SplitMix64 of the two: well spread, below 2^63.
    let mut z = nanos ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) >> 1
}

/// Fields every generation request may carry and that do not change what is computed.
const HARMLESS: &[&str] = &["model", "user", "stream"];

/// The fields of a completion or chat request that sweetspot implements.
const SAMPLING_FIELDS: &[&str] = &[
    "n",
    "seed",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "return_token_ids",
    "repetition_penalty",
    "min_p",
];

/// Refuses any field not in `known`, by name; a few common ones only at their no-op values.
fn refuse_unknown(body: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    for (key, value) in body {
        if known.contains(&key.as_str()) || HARMLESS.contains(&key.as_str()) {
            continue;
        }
        let noop = match key.as_str() {
            "presence_penalty" | "frequency_penalty" => value.as_f64() == Some(0.0),
            "logprobs" | "echo" | "best_of" | "logit_bias" | "suffix" | "stream_options" => {
                value.is_null() || value == &json!(false) || value == &json!(1) && key == "best_of"
            }
            _ => false,
        };
        if !noop {
            return Err(ApiError::field(
                key,
                "sweetspot serve does not implement this field (it would change the answer)",
            ));
        }
    }
    if body.get("stream").is_some_and(|v| v != &json!(false)) {
        return Err(ApiError::field("stream", "streaming is not implemented"));
    }
    Ok(())
}

fn model_matches(state: &AppState, body: &Map<String, Value>) -> Result<(), ApiError> {
    match body.get("model") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(m)) if *m == state.name => Ok(()),
        Some(other) => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "the model `{}` does not exist; this server serves `{}`",
                other.as_str().unwrap_or(&other.to_string()),
                state.name
            ),
            param: Some("model".into()),
        }),
    }
}

/// The sampling settings of a request.
struct Sampling {
    n: usize,
    seed: u64,
    params: SamplingParams,
    stop: Vec<String>,
    return_token_ids: bool,
}

fn number(body: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::field(key, format!("{v} is not a number"))),
    }
}

fn integer(body: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::field(key, format!("{v} is not an integer"))),
    }
}

fn sampling(
    body: &Map<String, Value>,
    defaults: &sweetspot_model::GenerationDefaults,
) -> Result<Sampling, ApiError> {
    let n = integer(body, "n")?.unwrap_or(1);
    if !(1..=4096).contains(&n) {
        return Err(ApiError::field("n", format!("{n} is not in 1..=4096")));
    }
    let seed = match integer(body, "seed")? {
        Some(s) if s < 0 => return Err(ApiError::field("seed", "must not be negative")),
        Some(s) => s as u64,
        None => fresh_seed(),
    };
    // What a request leaves out: the model's generation config (vLLM's `--generation-config
    // auto`; empty with `vllm`), else OpenAI's defaults.
    let temperature = number(body, "temperature")?
        .or(defaults.temperature.map(f64::from))
        .unwrap_or(1.0);
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(ApiError::field("temperature", "must be a number >= 0"));
    }
    let top_p = number(body, "top_p")?
        .or(defaults.top_p.map(f64::from))
        .unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::field("top_p", "must be in (0, 1]"));
    }
    let top_k = integer(body, "top_k")?
        .or(defaults.top_k.map(|k| k as i64))
        .unwrap_or(-1);
    if top_k < -1 {
        return Err(ApiError::field(
            "top_k",
            "must be -1 or 0 (off) or positive",
        ));
    }
    let repetition_penalty = number(body, "repetition_penalty")?
        .or(defaults.repetition_penalty.map(f64::from))
        .unwrap_or(1.0);
    if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
        return Err(ApiError::field(
            "repetition_penalty",
            "must be a number > 0 (1 = off)",
        ));
    }
    let min_p = number(body, "min_p")?
        .or(defaults.min_p.map(f64::from))
        .unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::field("min_p", "must be in [0, 1] (0 = off)"));
    }
    let max_tokens = match (
        integer(body, "max_tokens")?,
        integer(body, "max_completion_tokens")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "max_completion_tokens",
                "give `max_tokens` or `max_completion_tokens`, not both",
            ));
        }
        (Some(m), None) | (None, Some(m)) => m,
        // OpenAI's and vLLM's default for completions.
        (None, None) => 16,
    };
    if max_tokens < 1 {
        return Err(ApiError::field("max_tokens", "must be at least 1"));
    }
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::field("stop", "must be a string or strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::field("stop", "must be a string or strings")),
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::field("stop", "an empty stop string"));
    }
    let return_token_ids = body
        .get("return_token_ids")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Sampling {
        n: n as usize,
        seed,
        params: SamplingParams {
            repetition_penalty: repetition_penalty as f32,
            min_p: min_p as f32,
            ..SamplingParams::new(
                temperature as f32,
                top_p as f32,
                top_k.max(0) as usize,
                max_tokens as usize,
            )
        },
        stop,
        return_token_ids,
    })
}

/// One finished choice.
struct Choice {
    text: String,
    token_ids: Vec<u32>,
    finish_reason: &'static str,
}

/// Runs `prompts` x `n` through the engine; choice `p * n + i` is prompt `p`'s `i`-th, seeded
/// `seed + i` (vLLM's rule for a request's `n` choices).
async fn complete(
    state: &AppState,
    prompts: Vec<Vec<u32>>,
    s: &Sampling,
) -> Result<(Vec<Choice>, usize), ApiError> {
    let max = state.policy.max_positions;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(ApiError::field("prompt", format!("prompt {i} is empty")));
        }
        if p.len() + s.params.max_new_tokens > max {
            return Err(ApiError::field(
                "max_tokens",
                format!(
                    "prompt {i} is {} tokens; with max_tokens = {} that is more than the \
                     model's {max} positions",
                    p.len(),
                    s.params.max_new_tokens
                ),
            ));
        }
    }
    let prompt_tokens = prompts.iter().map(Vec::len).sum();
    let limits = &state.limits;
    let count = prompts.len().saturating_mul(s.n);
    if count > limits.max_sequences {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "{} prompts x n = {} asks for {count} sequences; this server takes at most {} \
                 per request (--max-sequences-per-request): split the request",
                prompts.len(),
                s.n,
                limits.max_sequences
            ),
            param: Some("n".into()),
        });
    }
    let tokens = prompts
        .iter()
        .map(|p| (p.len() + s.params.max_new_tokens).saturating_mul(s.n))
        .fold(0usize, usize::saturating_add);
    if tokens > limits.max_tokens {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "the request asks for up to {tokens} tokens (prompts and max_tokens, times n); \
                 this server takes at most {} per request (--max-tokens-per-request): lower \
                 max_tokens or n, or split the request",
                limits.max_tokens
            ),
            param: Some("max_tokens".into()),
        });
    }
    // Held until this function returns or is dropped (the client went away).
    let _reserved = limits.reserve(tokens).ok_or_else(|| ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        message: "the server has as much work in flight as it takes; retry later".into(),
        param: None,
    })?;
    let sequences: Vec<SeqRequest> = prompts
        .iter()
        .flat_map(|p| {
            (0..s.n as u64).map(move |i| SeqRequest {
                prompt_ids: p.clone(),
                seed: s.seed.wrapping_add(i),
            })
        })
        .collect();
    let (reply, answer) = oneshot::channel();
    state
        .generate
        .send(GenJob {
            sequences,
            params: s.params,
            reply,
        })
        .map_err(|_| ApiError::unavailable("the sampling engine has stopped"))?;
    let generations = answer
        .await
        .map_err(|_| ApiError::unavailable("the sampling engine has stopped"))?
        .map_err(ApiError::internal)?;
    let mut choices = Vec::with_capacity(generations.len());
    for g in generations {
        choices.push(finish(state, g, &s.stop)?);
    }
    Ok((choices, prompt_tokens))
}

/// A generation as a choice: its text without the end token, cut at the first stop string.
fn finish(state: &AppState, g: Generation, stop: &[String]) -> Result<Choice, ApiError> {
    let tok = &state.policy.tokenizer;
    let stops = tok.stop_ids();
    let decode = |ids: &[u32]| -> Result<String, ApiError> {
        let body: Vec<u32> = ids.iter().copied().filter(|t| !stops.contains(t)).collect();
        tok.decode(&body, true)
            .map_err(|e| ApiError::internal(e.to_string()))
    };
    let mut reason = match g.finish_reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    };
    let mut tokens = g.tokens;
    let mut text = decode(&tokens)?;
    let first_stop = |t: &str| stop.iter().filter_map(|s| t.find(s.as_str())).min();
    if let Some(at) = first_stop(&text) {
        // The fewest tokens whose text holds the stop string (a binary search: holding it is
        // monotone in the prefix), as an engine that stops on strings would have stopped there.
        let (mut lo, mut hi) = (1, tokens.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if first_stop(&decode(&tokens[..mid])?).is_some() {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        tokens.truncate(lo);
        text.truncate(at);
        reason = "stop";
    }
    Ok(Choice {
        text,
        token_ids: tokens,
        finish_reason: reason,
    })
}

fn usage(prompt_tokens: usize, choices: &[Choice]) -> Value {
    let completion: usize = choices.iter().map(|c| c.token_ids.len()).sum();
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    })
}

fn body_object(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad("the request body must be a JSON object")),
    }
}

/// `prompt` as token id lists: a string, strings, token ids, or lists of token ids.
fn prompts_of(state: &AppState, prompt: Option<&Value>) -> Result<Vec<Vec<u32>>, ApiError> {
    let encode = |t: &str| {
        state
            .policy
            .tokenizer
            .encode(t, true)
            .map_err(|e| ApiError::field("prompt", e.to_string()))
    };
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&t| t < state.vocab as u64)
                    .map(|t| t as u32)
                    .ok_or_else(|| {
                        ApiError::field("prompt", format!("{v} is not a token id of this model"))
                    })
            })
            .collect()
    };
    match prompt {
        Some(Value::String(s)) => Ok(vec![encode(s)?]),
        Some(Value::Array(a)) if a.is_empty() => Err(ApiError::field("prompt", "is empty")),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => Ok(vec![ids(a)?]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| match p {
                Value::String(s) => encode(s),
                Value::Array(t) => ids(t),
                _ => Err(ApiError::field(
                    "prompt",
                    "must be text, texts, token ids or lists of token ids",
                )),
            })
            .collect(),
        _ => Err(ApiError::field(
            "prompt",
            "must be text, texts, token ids or lists of token ids",
        )),
    }
}

pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson,
) -> Result<Json<Value>, ApiError> {
    let body = body_object(body)?;
    let mut known = SAMPLING_FIELDS.to_vec();
    known.push("prompt");
    refuse_unknown(&body, &known)?;
    model_matches(&state, &body)?;
    let s = sampling(&body, &state.policy.defaults)?;
    let prompts = prompts_of(&state, body.get("prompt"))?;
    let (choices, prompt_tokens) = complete(&state, prompts, &s).await?;
    Ok(respond(&state, choices, prompt_tokens, &s, false))
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson,
) -> Result<Json<Value>, ApiError> {
    let body = body_object(body)?;
    let mut known = SAMPLING_FIELDS.to_vec();
    known.push("messages");
    refuse_unknown(&body, &known)?;
    model_matches(&state, &body)?;
    let s = sampling(&body, &state.policy.defaults)?;
    let messages: Vec<ChatMessage> = serde_json::from_value(
        body.get("messages").cloned().unwrap_or(Value::Null),
    )
    .map_err(|e| ApiError::field("messages", format!("must be [{{role, content}}, ...]: {e}")))?;
    if messages.is_empty() {
        return Err(ApiError::field("messages", "is empty"));
    }
    let messages: Vec<Message> = messages
        .into_iter()
        .map(|m| Message {
            role: m.role,
            content: m.content,
        })
        .collect();
    let ids = state
        .policy
        .tokenizer
        .encode_chat(&messages)
        .map_err(|e| ApiError::field("messages", e.to_string()))?;
    let (choices, prompt_tokens) = complete(&state, vec![ids], &s).await?;
    Ok(respond(&state, choices, prompt_tokens, &s, true))
}

/// A completion's (or, with `chat`, a chat completion's) response in OpenAI's shape.
fn respond(
    state: &AppState,
    choices: Vec<Choice>,
    prompt_tokens: usize,
    s: &Sampling,
    chat: bool,
) -> Json<Value> {
    let usage = usage(prompt_tokens, &choices);
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = json!({
                "index": i,
                "finish_reason": c.finish_reason,
                "logprobs": null,
            });
            if chat {
                v["message"] = json!({"role": "assistant", "content": c.text});
            } else {
                v["text"] = json!(c.text);
            }
            if s.return_token_ids {
                v["token_ids"] = json!(c.token_ids);
            }
            v
        })
        .collect();
    let (id, object) = if chat {
        ("chatcmpl", "chat.completion")
    } else {
        ("cmpl", "text_completion")
    };
    Json(json!({
        "id": format!("{id}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        "object": object,
        "created": now(),
        "model": state.name,
        "choices": choices,
        "usage": usage,
    }))
}

pub(crate) async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut data = vec![json!({
        "id": state.name,
        "object": "model",
        "created": state.started,
        "owned_by": "sweetspot",
        "max_model_len": state.policy.max_positions,
    })];
    if let Some(r) = &state.reward {
        data.push(json!({
            "id": r.name,
            "object": "model",
            "created": state.started,
            "owned_by": "sweetspot",
            "max_model_len": r.info.max_positions,
        }));
    }
    Json(json!({"object": "list", "data": data}))
}

pub(crate) async fn health() -> StatusCode {
    StatusCode::OK
}

/// `/classify` (and `/v1/classify`): vLLM's shape (`input`: texts or token id lists;
/// `use_activation`, default true, applies the sigmoid as vLLM does for one label) or SGLang's
/// (`text` or `input_ids`; the raw score as `embedding`). ArmoRM's objective rewards come as
/// `objectives` beside each result.
pub(crate) async fn classify(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson,
) -> Result<Json<Value>, ApiError> {
    let Some(reward) = &state.reward else {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: "this server has no reward model (start it with --reward-model)".into(),
            param: None,
        });
    };
    let body = body_object(body)?;
    let sglang = body.contains_key("text") || body.contains_key("input_ids");
    let known: &[&str] = if sglang {
        &["text", "input_ids"]
    } else {
        &["input", "use_activation", "activation"]
    };
    refuse_unknown(&body, known)?;
    match body.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if *m == reward.name || *m == state.name => {}
        Some(other) => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "the model {other} does not exist; the reward model is `{}`",
                    reward.name
                ),
                param: Some("model".into()),
            });
        }
    }
    let tok = &reward.info.tokenizer;
    let field = if sglang {
        if body.contains_key("input_ids") {
            "input_ids"
        } else {
            "text"
        }
    } else {
        "input"
    };
    let encode = |t: &str| {
        tok.encode(t, true)
            .map_err(|e| ApiError::field(field, e.to_string()))
    };
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&t| t < reward.vocab as u64)
                    .map(|t| t as u32)
                    .ok_or_else(|| ApiError::field(field, format!("{v} is not a token id")))
            })
            .collect()
    };
    let seqs: Vec<Vec<u32>> = match body.get(field) {
        Some(Value::String(s)) => vec![encode(s)?],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_number) => vec![ids(a)?],
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|x| match x {
                Value::String(s) => encode(s),
                Value::Array(t) => ids(t),
                _ => Err(ApiError::field(field, "must be texts or token id lists")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(ApiError::field(field, "must be texts or token id lists")),
    };
    let max = reward.info.max_positions;
    let mut inputs = Vec::with_capacity(seqs.len());
    for (i, s) in seqs.into_iter().enumerate() {
        if s.is_empty() || s.len() > max {
            return Err(ApiError::field(
                field,
                format!("input {i} is {} tokens; it must be 1..={max}", s.len()),
            ));
        }
        let gating_position = match &reward.info.gating_pattern {
            Some(p) => Some(find_last(&s, p).ok_or_else(|| {
                ApiError::field(
                    field,
                    format!(
                        "input {i}: the gating pattern does not occur (render the \
                         conversation with the reward model's chat template)"
                    ),
                )
            })?),
            None => None,
        };
        inputs.push(RewardInput {
            ids: s,
            gating_position,
        });
    }
    let tokens: usize = inputs.iter().map(|i| i.ids.len()).sum();
    let limits = &state.limits;
    if inputs.len() > limits.max_sequences || tokens > limits.max_tokens {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "{} inputs of {tokens} tokens in all; this server takes at most {} inputs and \
                 {} tokens per request (--max-sequences-per-request, --max-tokens-per-request)",
                inputs.len(),
                limits.max_sequences,
                limits.max_tokens
            ),
            param: Some(field.into()),
        });
    }
    let _reserved = limits.reserve(tokens).ok_or_else(|| ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        message: "the server has as much work in flight as it takes; retry later".into(),
        param: None,
    })?;
    let (reply, answer) = oneshot::channel();
    reward
        .jobs
        .send(ScoreJob {
            inputs: inputs.clone(),
            reply,
        })
        .map_err(|_| ApiError::unavailable("the scoring engine has stopped"))?;
    let scores = answer
        .await
        .map_err(|_| ApiError::unavailable("the scoring engine has stopped"))?
        .map_err(ApiError::internal)?;
    let usage = json!({"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0});
    if sglang {
        let out: Vec<Value> = scores
            .iter()
            .zip(&inputs)
            .map(|(s, i)| {
                let mut v = json!({
                    "embedding": [s.score],
                    "meta_info": {"prompt_tokens": i.ids.len()},
                });
                if let Some(r) = &s.rewards {
                    v["objectives"] = json!(r);
                }
                v
            })
            .collect();
        return Ok(Json(Value::Array(out)));
    }
    let activate = body
        .get("use_activation")
        .or_else(|| body.get("activation"))
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| ApiError::field("use_activation", "must be true or false"))
        })
        .transpose()?
        .unwrap_or(true);
    let data: Vec<Value> = scores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let p = if activate {
                1.0 / (1.0 + (-f64::from(s.score)).exp())
            } else {
                f64::from(s.score)
            };
            let mut v = json!({
                "index": i,
                "label": "LABEL_0",
                "probs": [p],
                "num_classes": 1,
            });
            if let Some(r) = &s.rewards {
                v["objectives"] = json!(r);
                v["objective_names"] = json!(reward.info.objectives);
            }
            v
        })
        .collect();
    Ok(Json(json!({
        "id": format!("classify-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        "object": "list",
        "created": now(),
        "model": reward.name,
        "data": data,
        "usage": usage,
    })))
}
