//! `http`: scores through a `/classify` endpoint (vLLM, SGLang, `sweetspot serve`).
//!
//! Each (prompt, response) is rendered here with the reward model's own chat template (the
//! `tokenizer` folder), exactly as the native reward models render it, and sent as token ids,
//! `batch_size` sequences per request.
//!
//! The two shapes:
//! - `api = "vllm"`: `POST /classify {"model", "input": [[ids]...], "use_activation": false}`;
//!   each `data[i].probs` must hold one number, the raw score. vLLM applies a sigmoid to a
//!   one-label model's score unless `use_activation` is false (vLLM 0.10 or newer). `sweetspot
//!   serve` answers in this shape, with ArmoRM's objective rewards as `data[i].objectives`.
//! - `api = "sglang"`: `POST /classify {"model", "input_ids": [[ids]...]}` (SGLang started with
//!   `--is-embedding`); the answer is a list whose `embedding` holds the raw score.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sweetspot_core::{
    BuildContext, ConfigIssue, PluginError, PluginInput, Progress, RewardModel, RewardModelConfig,
    SampleGroup, ScoredGroup, ScoredSample, declared_inputs,
};
use sweetspot_model::Tokenizer;
use sweetspot_model::reward::ARMORM_OBJECTIVES;

use crate::openai::{check_common, default_retries, default_timeout};
use crate::pool::{EndpointSpec, Pool, RetryPolicy, api_key};

/// The scoring endpoint's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassifyApi {
    /// vLLM's `/classify` (also `sweetspot serve`'s).
    #[default]
    Vllm,
    /// SGLang's `/classify` for reward models.
    Sglang,
}

/// The objective names a reward model returns: `"armorm"` (ArmoRM's 19) or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Objectives {
    /// A known model's names.
    Named(String),
    /// Names in the order the server returns them.
    List(Vec<String>),
}

/// The `[reward]` table with `type = "http"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRewardConfig {
    /// The servers: base URLs or `{ url, concurrency }` tables.
    pub endpoints: Vec<EndpointSpec>,
    /// The reward model's served name.
    pub model: String,
    /// The reward model's folder (tokenizer and chat template): conversations are rendered here.
    pub tokenizer: PathBuf,
    /// `vllm` (default; also `sweetspot serve`) or `sglang`.
    #[serde(default)]
    pub api: ClassifyApi,
    /// Sequences per request.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// The per-objective rewards the server returns beside the score (`"armorm"`, or names);
    /// none by default.
    pub objectives: Option<Objectives>,
    /// Seconds before a request is abandoned and retried.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Retries of a failed request before the stage stops.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// The environment variable that holds the API key.
    pub api_key_env: Option<String>,
}

fn default_batch() -> usize {
    16
}

impl HttpRewardConfig {
    fn objective_names(&self) -> Result<Vec<String>, ConfigIssue> {
        match &self.objectives {
            None => Ok(Vec::new()),
            Some(Objectives::Named(n)) if n == "armorm" => {
                Ok(ARMORM_OBJECTIVES.iter().map(|s| s.to_string()).collect())
            }
            Some(Objectives::Named(n)) => Err(ConfigIssue::new(
                "objectives",
                format!("{n:?} is not a known set (\"armorm\"); list the names instead"),
            )),
            Some(Objectives::List(l)) if l.is_empty() => Err(ConfigIssue::new(
                "objectives",
                "an empty list; leave it out",
            )),
            Some(Objectives::List(l)) => Ok(l.clone()),
        }
    }
}

#[sweetspot_core::plugin(
    name = "http",
    description = "scores through a /classify endpoint (vLLM, SGLang, sweetspot serve incl. ArmoRM), the conversation rendered here",
    example = "type = \"http\"\nendpoints = [\"http://127.0.0.1:8001\"]\nmodel = \"Skywork-Reward-Llama-3.1-8B\"\ntokenizer = \"models/Skywork-Reward-Llama-3.1-8B\""
)]
impl RewardModelConfig for HttpRewardConfig {
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
        if self.model.is_empty() {
            return Err(ConfigIssue::new("model", "name the served reward model"));
        }
        if self.batch_size == 0 {
            return Err(ConfigIssue::new("batch_size", "must be at least 1"));
        }
        self.objective_names()?;
        Ok(())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn RewardModel>, PluginError> {
        self.check(ctx)
            .map_err(|i| PluginError::config("http", i.to_string()))?;
        let path = ctx.resolve(&self.tokenizer);
        let tokenizer = sweetspot_model::load_tokenizer(&path)
            .map_err(|e| PluginError::other("http: loading the tokenizer", e))?;
        if !tokenizer.has_chat_template() {
            return Err(PluginError::config(
                "http",
                format!(
                    "{}: the reward model's tokenizer has no chat template",
                    path.display()
                ),
            ));
        }
        let key = api_key("http", self.api_key_env.as_deref())?;
        let pool = Pool::new(
            "http",
            &self.endpoints,
            key,
            RetryPolicy::new(self.max_retries, self.timeout_s),
        )?;
        let objectives = self
            .objective_names()
            .map_err(|i| PluginError::config("http", i.to_string()))?;
        Ok(Box::new(HttpReward {
            config: self.clone(),
            objectives,
            tokenizer,
            pool,
        }))
    }
}

/// A configured scoring client.
pub struct HttpReward {
    config: HttpRewardConfig,
    objectives: Vec<String>,
    tokenizer: Tokenizer,
    pool: Pool,
}

impl std::fmt::Debug for HttpReward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpReward")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// One sequence's result.
struct Score {
    reward: f64,
    objectives: Option<Vec<f64>>,
}

fn floats(v: &Value) -> Option<Vec<f64>> {
    v.as_array()?.iter().map(Value::as_f64).collect()
}

impl HttpReward {
    /// The scores of one answer for `count` sequences. vLLM's results each name their row of the
    /// request by `index`, an integer in `0..count`, each row once; any other `index` (a string,
    /// a float, missing, out of range, repeated) is refused with the result and the value, never
    /// put on a row by position. SGLang's list has no index: its order is the request's.
    fn parse(&self, answer: &Value, count: usize) -> Result<Vec<Score>, String> {
        let rows: Vec<&Value> = match self.config.api {
            ClassifyApi::Vllm => {
                let data = answer["data"]
                    .as_array()
                    .ok_or("the answer has no `data` list")?;
                let mut rows: Vec<Option<(usize, &Value)>> = vec![None; count];
                for (pos, d) in data.iter().enumerate() {
                    let index = d.get("index").ok_or_else(|| {
                        format!("result {pos} of `data` has no `index` (the row of the request)")
                    })?;
                    let i = index
                        .as_u64()
                        .filter(|&i| i < count as u64)
                        .ok_or_else(|| {
                            format!(
                                "result {pos} of `data` has `index` {index}, not a row of the \
                                 request (an integer in 0..{count})"
                            )
                        })? as usize;
                    match &rows[i] {
                        Some((first, _)) => {
                            return Err(format!(
                                "results {first} and {pos} of `data` both have `index` {i}"
                            ));
                        }
                        None => rows[i] = Some((pos, d)),
                    }
                }
                if let Some(missing) = rows.iter().position(Option::is_none) {
                    return Err(format!(
                        "sent {count} sequences, got {} results: no result has `index` \
                         {missing}",
                        data.len()
                    ));
                }
                rows.into_iter().flatten().map(|(_, d)| d).collect()
            }
            ClassifyApi::Sglang => answer
                .as_array()
                .ok_or("the answer is not a list")?
                .iter()
                .collect(),
        };
        if rows.len() != count {
            return Err(format!(
                "sent {count} sequences, got {} results",
                rows.len()
            ));
        }
        let mut out = Vec::with_capacity(count);
        for (i, row) in rows.into_iter().enumerate() {
            let values = match self.config.api {
                ClassifyApi::Vllm => floats(&row["probs"]),
                ClassifyApi::Sglang => floats(&row["embedding"]),
            }
            .ok_or_else(|| format!("result {i} has no scores"))?;
            let [reward] = values[..] else {
                return Err(format!(
                    "result {i} has {} values: a reward model has one label (is it a \
                     classifier with several classes?)",
                    values.len()
                ));
            };
            let objectives = match (self.objectives.len(), row.get("objectives")) {
                (0, None) => None,
                (0, Some(_)) => {
                    return Err("the server returns objective rewards; name them with \
                                `objectives` (\"armorm\" or a list) to keep them"
                        .into());
                }
                (_, None) => {
                    return Err(format!(
                        "result {i} has no `objectives`, but the recipe names {}",
                        self.objectives.len()
                    ));
                }
                (k, Some(v)) => {
                    let o = floats(v).ok_or_else(|| format!("result {i}: bad `objectives`"))?;
                    if o.len() != k {
                        return Err(format!(
                            "result {i} has {} objectives; the recipe names {k}",
                            o.len()
                        ));
                    }
                    Some(o)
                }
            };
            out.push(Score { reward, objectives });
        }
        Ok(out)
    }
}

impl RewardModel for HttpReward {
    fn objectives(&self) -> Vec<String> {
        self.objectives.clone()
    }

    fn score(
        &mut self,
        groups: Vec<SampleGroup>,
        progress: &dyn Progress,
        sink: &mut dyn FnMut(ScoredGroup) -> Result<(), PluginError>,
    ) -> Result<(), PluginError> {
        // Every sample as (group, position), rendered here.
        let mut where_: Vec<(usize, usize)> = Vec::new();
        let mut ids: Vec<Vec<u32>> = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            for (s, sample) in group.samples.iter().enumerate() {
                let t = self
                    .tokenizer
                    .encode_scored(&group.prompt, &sample.response)
                    .map_err(|e| {
                        PluginError::Input(format!(
                            "prompt `{}` sample {}: {e}",
                            group.prompt.id, sample.sample_index
                        ))
                    })?;
                ids.push(t);
                where_.push((g, s));
            }
        }
        let batch = self.config.batch_size;
        let bodies: Vec<Value> = ids
            .chunks(batch)
            .map(|chunk| match self.config.api {
                ClassifyApi::Vllm => json!({
                    "model": self.config.model,
                    "input": chunk,
                    "use_activation": false,
                }),
                ClassifyApi::Sglang => json!({
                    "model": self.config.model,
                    "input_ids": chunk,
                }),
            })
            .collect();
        let mut scores: Vec<Vec<Option<Score>>> = groups
            .iter()
            .map(|g| (0..g.samples.len()).map(|_| None).collect())
            .collect();
        let mut left: Vec<usize> = groups.iter().map(|g| g.samples.len()).collect();
        let mut groups: Vec<Option<SampleGroup>> = groups.into_iter().map(Some).collect();
        // Groups with no samples have nothing to wait for.
        for g in 0..groups.len() {
            if left[g] == 0
                && let Some(group) = groups[g].take()
            {
                sink(ScoredGroup {
                    prompt: group.prompt,
                    samples: Vec::new(),
                })?;
            }
        }
        let this = &*self;
        this.pool.post_all("/classify", bodies, |r, answer| {
            let start = r * batch;
            let count = batch.min(where_.len() - start);
            let parsed = this.parse(&answer, count).map_err(|why| {
                PluginError::Input(format!(
                    "http: sequences {start}..{} of this call: {why}",
                    start + count
                ))
            })?;
            progress.advance(count as u64);
            for (k, score) in parsed.into_iter().enumerate() {
                let (g, s) = where_[start + k];
                scores[g][s] = Some(score);
                left[g] -= 1;
                if left[g] == 0 {
                    let Some(group) = groups[g].take() else {
                        continue;
                    };
                    let mut samples = Vec::with_capacity(group.samples.len());
                    for (sample, score) in group.samples.into_iter().zip(scores[g].iter_mut()) {
                        let Some(score) = score.take() else {
                            return Err(PluginError::Input("http: a score went missing".into()));
                        };
                        if !score.reward.is_finite() {
                            return Err(PluginError::Input(format!(
                                "prompt `{}` sample {}: the reward is {}",
                                group.prompt.id, sample.sample_index, score.reward
                            )));
                        }
                        samples.push(ScoredSample {
                            sample,
                            reward: score.reward,
                            objective_rewards: score.objectives,
                        });
                    }
                    sink(ScoredGroup {
                        prompt: group.prompt,
                        samples,
                    })?;
                }
            }
            Ok(())
        })
    }
}
