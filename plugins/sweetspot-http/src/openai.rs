//! `openai`: samples through OpenAI-compatible servers (vLLM, SGLang, `sweetspot serve`).
//!
//! Each prompt is rendered here, by the policy's own chat template (the `tokenizer` folder or
//! GGUF), and sent as token ids to `/v1/completions`, so the server sees exactly what the native
//! sampler would feed the model. A prompt's samples `a..b` go in one request with `n = b - a` and
//! `seed = prompt_seed(run seed, prompt id) + a`: vLLM seeds choice `i` with `seed + i`, so
//! sample `k` always gets seed `prompt_seed + k` however the samples are split over requests, and
//! a rerun asks the same questions.
//!
//! Only the sampling settings the recipe sets are sent (`temperature`, `top_p`, `top_k`,
//! `min_p`, `repetition_penalty`): a setting left out is the server's own default (vLLM applies
//! the model's generation_config.json, `--generation-config auto`; llama.cpp's servers their
//! own defaults). `max_tokens` is always sent (vLLM's default is 16).
//!
//! Prompts (`prompt_format`): `tokens` sends token ids; `text` sends the prompt rendered by the
//! same chat template as text (the server tokenizes it); `auto` (default) sends token ids and,
//! when the first request is refused with a 4xx that names the prompt (llama-cpp-python's server
//! takes only text), switches to text for the run and says so once.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use sweetspot_core::{
    BuildContext, ConfigIssue, FinishReason, PluginError, PluginInput, Progress, Prompt,
    PromptContent, Sample, SampleGroup, SampleRequest, Sampler, SamplerConfig, check_sampling,
    declared_inputs,
};
use sweetspot_model::Tokenizer;
use sweetspot_model::generate::prompt_seed;

use crate::pool::{EndpointSpec, Pool, RetryPolicy, api_key, check_endpoints};

/// Which OpenAI route to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `/v1/completions` with the prompt as token ids rendered here (exactly the native
    /// sampler's input).
    #[default]
    Completions,
    /// `/v1/chat/completions` with the prompt's messages (the server renders the template).
    Chat,
}

/// How prompts are sent to `/v1/completions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptFormat {
    /// Token ids, falling back to text when the server refuses them.
    #[default]
    Auto,
    /// Token ids (exactly the native sampler's input).
    Tokens,
    /// The rendered prompt as text (the server tokenizes it).
    Text,
}

/// The `[sampler]` table with `type = "openai"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiSamplerConfig {
    /// The servers: base URLs (`"http://host:8000"`) or `{ url, concurrency }` tables.
    pub endpoints: Vec<EndpointSpec>,
    /// The model name the servers serve (the request's `model`).
    pub model: String,
    /// The policy's tokenizer and chat template: its model folder or .gguf file. Prompts are
    /// rendered and responses decoded with it.
    pub tokenizer: PathBuf,
    /// `completions` (default) or `chat`.
    #[serde(default)]
    pub api: Api,
    /// How `/v1/completions` prompts are sent: `auto` (default), `tokens` or `text`.
    #[serde(default)]
    pub prompt_format: PromptFormat,
    /// Softmax temperature (0 = greedy); unset: the server's default.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass (1 = off); unset: the server's default.
    pub top_p: Option<f32>,
    /// Top-k, sent as written (vLLM: -1 or 0 = off; llama.cpp: 0 = off); unset: the server's
    /// default.
    pub top_k: Option<i64>,
    /// Min-p (0 = off), in [0, 1]; unset: the server's default.
    pub min_p: Option<f32>,
    /// Repetition penalty (1 = off), above 0, sent as `repetition_penalty` (vLLM's, SGLang's
    /// name; llama.cpp's servers read `repeat_penalty`); unset: the server's default.
    pub repetition_penalty: Option<f32>,
    /// Longest response in tokens (sent as `max_tokens`).
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
    /// Stop strings (the native sampler stops on the model's end tokens only: leave it empty to
    /// sample what it samples).
    #[serde(default)]
    pub stop: Vec<String>,
    /// Samples of one prompt per request (0: all of them in one request).
    #[serde(default)]
    pub samples_per_request: usize,
    /// Seconds before a request is abandoned and retried.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Retries of a failed request (connection errors, timeouts, 429, 5xx) before the stage
    /// stops with a record of every attempt.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// The environment variable that holds the API key (sent as `Authorization: Bearer`;
    /// never logged or written).
    pub api_key_env: Option<String>,
}

pub(crate) fn default_max_new() -> usize {
    512
}
pub(crate) fn default_timeout() -> f64 {
    600.0
}
pub(crate) fn default_retries() -> u32 {
    8
}

/// Checks the settings every HTTP plugin shares.
pub(crate) fn check_common(
    ctx: &BuildContext,
    endpoints: &[EndpointSpec],
    tokenizer: &std::path::Path,
    timeout_s: f64,
    api_key_env: Option<&String>,
) -> Result<(), ConfigIssue> {
    check_endpoints(endpoints)?;
    if !(timeout_s.is_finite() && timeout_s > 0.0) {
        return Err(ConfigIssue::new("timeout_s", "must be a number > 0"));
    }
    if let Some(name) = api_key_env {
        if name.is_empty() {
            return Err(ConfigIssue::new("api_key_env", "must name a variable"));
        }
        // Before any stage runs: a missing key would otherwise fail the stage after others ran.
        if std::env::var(name).map_or(true, |k| k.is_empty()) {
            return Err(ConfigIssue::new(
                "api_key_env",
                format!("the environment variable {name} is not set"),
            ));
        }
    }
    let path = ctx.resolve(tokenizer);
    if !path.exists() {
        return Err(ConfigIssue::missing_file("tokenizer", &path));
    }
    Ok(())
}

impl OpenAiSamplerConfig {
    /// Checks what the request bodies depend on (not the endpoints or the key): enough for
    /// offline batch files.
    pub fn check_offline(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        let path = ctx.resolve(&self.tokenizer);
        if !path.exists() {
            return Err(ConfigIssue::missing_file("tokenizer", &path));
        }
        if self.model.is_empty() {
            return Err(ConfigIssue::new("model", "name the served model"));
        }
        check_sampling(
            self.temperature.unwrap_or(1.0),
            self.top_p.unwrap_or(1.0),
            self.max_new_tokens,
        )?;
        if let Some(k) = self.top_k
            && k < -1
        {
            return Err(ConfigIssue::new(
                "top_k",
                format!("{k} must be -1 or 0 (off) or positive"),
            ));
        }
        if let Some(m) = self.min_p
            && !(0.0..=1.0).contains(&m)
        {
            return Err(ConfigIssue::new(
                "min_p",
                format!("{m} must be in [0, 1] (0 = off)"),
            ));
        }
        if let Some(r) = self.repetition_penalty
            && !(r.is_finite() && r > 0.0)
        {
            return Err(ConfigIssue::new(
                "repetition_penalty",
                format!("{r} must be a number > 0 (1 = off)"),
            ));
        }
        if self.prompt_format == PromptFormat::Text && self.api == Api::Chat {
            return Err(ConfigIssue::new(
                "prompt_format",
                "applies to api = \"completions\" (chat sends messages)",
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(ConfigIssue::new("stop", "an empty stop string"));
        }
        Ok(())
    }
}

#[sweetspot_core::plugin(
    name = "openai",
    description = "samples through OpenAI-compatible servers (vLLM, SGLang, sweetspot serve): token-id prompts, per-sample seeds, retries",
    example = "type = \"openai\"\nendpoints = [\"http://127.0.0.1:8000\"]\nmodel = \"SmolLM2-135M-Instruct.Q4_1.gguf\"\ntokenizer = \"models/SmolLM2-135M-Instruct.Q4_1.gguf\""
)]
impl SamplerConfig for OpenAiSamplerConfig {
    fn inputs(&self, _ctx: &BuildContext) -> Vec<PluginInput> {
        declared_inputs([("tokenizer", &self.tokenizer)])
    }

    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_common(
            ctx,
            &self.endpoints,
            &self.tokenizer,
            self.timeout_s,
            self.api_key_env.as_ref(),
        )?;
        self.check_offline(ctx)
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Sampler>, PluginError> {
        self.check(ctx)
            .map_err(|i| PluginError::config("openai", i.to_string()))?;
        let requests = Requests::new(self, ctx)?;
        let key = api_key("openai", self.api_key_env.as_deref())?;
        let pool = Pool::new(
            "openai",
            &self.endpoints,
            key.clone(),
            RetryPolicy::new(self.max_retries, self.timeout_s),
        )?;
        // prompt_format = "auto" asks once, without retries, whether token ids are taken.
        let probe = match (self.prompt_format, self.api) {
            (PromptFormat::Auto, Api::Completions) => Some(Pool::new(
                "openai",
                &self.endpoints,
                key,
                RetryPolicy::new(0, self.timeout_s),
            )?),
            _ => None,
        };
        Ok(Box::new(OpenAiSampler {
            requests,
            pool,
            probe,
        }))
    }
}

/// A configured client.
pub struct OpenAiSampler {
    requests: Requests,
    pool: Pool,
    /// The pool without retries that asks whether token ids are taken (`auto`).
    probe: Option<Pool>,
}

/// What makes request bodies and reads answers: the settings and the policy's tokenizer (the
/// live client and the offline batch files share it).
pub struct Requests {
    pub(crate) config: OpenAiSamplerConfig,
    pub(crate) tokenizer: Tokenizer,
    /// Prompts go as text (`prompt_format = "text"`, or `auto` after a refusal of token ids).
    pub(crate) text_prompts: AtomicBool,
    /// `auto` has seen token ids accepted (or switched to text): no more probing.
    pub(crate) settled: AtomicBool,
}

impl Requests {
    /// Loads the tokenizer of `config` (checked first).
    pub fn new(config: &OpenAiSamplerConfig, ctx: &BuildContext) -> Result<Self, PluginError> {
        config
            .check_offline(ctx)
            .map_err(|i| PluginError::config("openai", i.to_string()))?;
        let path = ctx.resolve(&config.tokenizer);
        let tokenizer = sweetspot_model::load_tokenizer(&path)
            .map_err(|e| PluginError::other("openai: loading the tokenizer", e))?;
        let text = config.prompt_format == PromptFormat::Text;
        Ok(Self {
            config: config.clone(),
            tokenizer,
            text_prompts: AtomicBool::new(text),
            settled: AtomicBool::new(config.prompt_format != PromptFormat::Auto),
        })
    }
}

impl std::fmt::Debug for OpenAiSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiSampler")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// One request: samples `first..first + n` of prompt `prompt`.
pub(crate) struct Ask {
    pub(crate) prompt: usize,
    pub(crate) first: u32,
    pub(crate) n: u32,
}

impl Requests {
    /// The route the requests go to.
    pub fn path(&self) -> &'static str {
        match self.config.api {
            Api::Completions => "/v1/completions",
            Api::Chat => "/v1/chat/completions",
        }
    }

    pub(crate) fn body(&self, prompt: &Prompt, ask: &Ask, seed: u64) -> Result<Value, PluginError> {
        let c = &self.config;
        let mut body = json!({
            "model": c.model,
            "n": ask.n,
            "seed": seed + u64::from(ask.first),
            "max_tokens": c.max_new_tokens,
            "return_token_ids": true,
        });
        // Only what the recipe sets: the rest is the server's default.
        if let Some(t) = c.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(p) = c.top_p {
            body["top_p"] = json!(p);
        }
        if let Some(k) = c.top_k {
            body["top_k"] = json!(k);
        }
        if let Some(m) = c.min_p {
            body["min_p"] = json!(m);
        }
        if let Some(r) = c.repetition_penalty {
            body["repetition_penalty"] = json!(r);
        }
        if !c.stop.is_empty() {
            body["stop"] = json!(c.stop);
        }
        match c.api {
            Api::Completions if self.text_prompts.load(Ordering::Relaxed) => {
                body["prompt"] = json!(self.prompt_text(prompt)?);
            }
            Api::Completions => {
                let ids = self
                    .tokenizer
                    .encode_prompt(prompt)
                    .map_err(|e| PluginError::Input(format!("prompt `{}`: {e}", prompt.id)))?;
                body["prompt"] = json!(ids);
            }
            Api::Chat => {
                let messages: Vec<Value> = prompt
                    .content
                    .to_messages()
                    .into_iter()
                    .map(|m| json!({"role": m.role, "content": m.content}))
                    .collect();
                body["messages"] = Value::Array(messages);
            }
        }
        Ok(body)
    }

    /// A prompt as text: rendered by the chat template with the generation prompt (the text
    /// [`Tokenizer::encode_prompt`] encodes), or the plain text when the model has none.
    fn prompt_text(&self, prompt: &Prompt) -> Result<String, PluginError> {
        let err = |e: String| PluginError::Input(format!("prompt `{}`: {e}", prompt.id));
        if self.tokenizer.has_chat_template() {
            self.tokenizer
                .render_chat(&prompt.content.to_messages(), true)
                .map_err(|e| err(e.to_string()))
        } else {
            match &prompt.content {
                PromptContent::Text(t) => Ok(t.clone()),
                PromptContent::Chat(_) => {
                    Err(err("a chat, but the model has no chat template".into()))
                }
            }
        }
    }

    /// The samples of one answer.
    pub(crate) fn samples(
        &self,
        prompt: &Prompt,
        ask: &Ask,
        answer: &Value,
    ) -> Result<Vec<Sample>, String> {
        let choices = answer["choices"]
            .as_array()
            .ok_or("the answer has no `choices` list")?;
        if choices.len() != ask.n as usize {
            let hint = if choices.len() == 1 {
                " (the server may ignore `n`, as llama.cpp's servers do: set \
                 samples_per_request = 1)"
            } else {
                ""
            };
            return Err(format!(
                "asked for {} choices, got {}{hint}",
                ask.n,
                choices.len()
            ));
        }
        let mut out: Vec<Option<Sample>> = vec![None; ask.n as usize];
        for (pos, choice) in choices.iter().enumerate() {
            let index = match choice.get("index") {
                Some(i) => i.as_u64().ok_or("a choice's `index` is not an integer")? as usize,
                None => pos,
            };
            let slot = out
                .get_mut(index)
                .ok_or_else(|| format!("choice index {index} is out of range"))?;
            if slot.is_some() {
                return Err(format!("choice index {index} appears twice"));
            }
            let finish_reason = match choice["finish_reason"].as_str() {
                Some("stop") => FinishReason::Stop,
                Some("length") => FinishReason::Length,
                other => return Err(format!("choice {index}: finish_reason {other:?}")),
            };
            let (response, token_count) = match choice.get("token_ids").and_then(Value::as_array) {
                // With the token ids, decode here, exactly as the native sampler does.
                Some(ids) => {
                    let ids: Vec<u32> = ids
                        .iter()
                        .map(|v| v.as_u64().map(|t| t as u32))
                        .collect::<Option<_>>()
                        .ok_or("a token id is not an integer")?;
                    let stops = self.tokenizer.stop_ids();
                    let body: Vec<u32> =
                        ids.iter().copied().filter(|t| !stops.contains(t)).collect();
                    let text = self
                        .tokenizer
                        .decode(&body, true)
                        .map_err(|e| e.to_string())?;
                    (text, Some(ids.len() as u32))
                }
                None => {
                    let text = match self.config.api {
                        Api::Completions => choice["text"].as_str(),
                        Api::Chat => choice["message"]["content"].as_str(),
                    }
                    .ok_or_else(|| format!("choice {index} has no text"))?;
                    let count = (ask.n == 1)
                        .then(|| answer["usage"]["completion_tokens"].as_u64())
                        .flatten()
                        .map(|c| c as u32);
                    (text.to_string(), count)
                }
            };
            *slot = Some(Sample {
                prompt_id: prompt.id.clone(),
                sample_index: ask.first + index as u32,
                response,
                token_count,
                finish_reason: Some(finish_reason),
                logprob: None,
            });
        }
        Ok(out.into_iter().flatten().collect())
    }
}

impl Sampler for OpenAiSampler {
    fn sample(
        &mut self,
        prompts: &[Prompt],
        request: &SampleRequest,
        progress: &dyn Progress,
        sink: &mut dyn FnMut(SampleGroup) -> Result<(), PluginError>,
    ) -> Result<(), PluginError> {
        let n = request.n as u32;
        let first = request.first_index;
        if first >= n {
            return Ok(());
        }
        let requests = &self.requests;
        let per = match requests.config.samples_per_request {
            0 => n - first,
            k => k as u32,
        };
        let mut asks = Vec::new();
        for (p, _) in prompts.iter().enumerate() {
            let mut a = first;
            while a < n {
                let ask = Ask {
                    prompt: p,
                    first: a,
                    n: per.min(n - a),
                };
                a += ask.n;
                asks.push(ask);
            }
        }
        let body = |ask: &Ask| {
            let prompt = &prompts[ask.prompt];
            requests.body(prompt, ask, prompt_seed(request.seed, &prompt.id))
        };
        let path = requests.path();
        let mut pending: Vec<Vec<Sample>> = vec![Vec::new(); prompts.len()];
        let want = (n - first) as usize;
        let mut handle = |i: usize, answer: Value| -> Result<(), PluginError> {
            let ask = &asks[i];
            let prompt = &prompts[ask.prompt];
            let samples = requests.samples(prompt, ask, &answer).map_err(|why| {
                PluginError::Input(format!(
                    "openai: prompt `{}` samples {}..{}: {why}",
                    prompt.id,
                    ask.first,
                    ask.first + ask.n
                ))
            })?;
            progress.advance(samples.len() as u64);
            let group = &mut pending[ask.prompt];
            group.extend(samples);
            if group.len() == want {
                let mut samples = std::mem::take(group);
                samples.sort_by_key(|s| s.sample_index);
                sink(SampleGroup {
                    prompt: prompt.clone(),
                    samples,
                })?;
            }
            Ok(())
        };
        let mut start = 0;
        if let (false, Some(pool)) = (requests.settled.load(Ordering::Relaxed), &self.probe) {
            // prompt_format = "auto": the first request alone, with token ids, once.
            let Some(ask) = asks.first() else {
                return Ok(());
            };
            let mut probe = None;
            let first_try = pool.post_all(path, vec![body(ask)?], |_, answer| {
                probe = Some(answer);
                Ok(())
            });
            match first_try {
                Ok(()) => {
                    requests.settled.store(true, Ordering::Relaxed);
                    if let Some(answer) = probe {
                        handle(0, answer)?;
                        start = 1;
                    }
                }
                Err(e) if refuses_token_ids(&e.to_string()) => {
                    tracing::warn!(
                        error = %e,
                        "openai: the server refuses token-id prompts; sending prompts as text \
                         rendered by the same chat template (prompt_format = \"auto\"; set \
                         \"text\" to skip this first try, or \"tokens\" to fail instead)"
                    );
                    requests.text_prompts.store(true, Ordering::Relaxed);
                    requests.settled.store(true, Ordering::Relaxed);
                }
                // Anything else (a busy or failing server): the pool below retries as usual,
                // with token ids, and the next call asks again.
                Err(e) => tracing::debug!(error = %e, "openai: the first try failed"),
            }
        }
        let bodies = asks[start..]
            .iter()
            .map(body)
            .collect::<Result<Vec<_>, _>>()?;
        let text = requests.text_prompts.load(Ordering::Relaxed);
        self.pool
            .post_all(path, bodies, |i, answer| handle(start + i, answer))
            .map_err(|e| match e {
                PluginError::Input(m) if !text && refuses_token_ids(&m) => {
                    PluginError::Input(format!(
                        "{m}\n(the server seems to refuse token-id prompts: set \
                         prompt_format = \"text\" or \"auto\" in [sampler])"
                    ))
                }
                e => e,
            })
    }
}

/// Whether a failed request's message says the prompt must be a string: what a server that
/// takes only text prompts answers to token ids (llama-cpp-python's: a 500 listing pydantic's
/// "Input should be a valid string" at `body.prompt`; others a 400 or 422).
fn refuses_token_ids(message: &str) -> bool {
    ["HTTP 400", "HTTP 422", "HTTP 500"]
        .iter()
        .any(|s| message.contains(s))
        && message.contains("prompt")
        && message.contains("string")
}
