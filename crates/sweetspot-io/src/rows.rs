//! The row types written out.

use serde::Serialize;
use sweetspot_core::{PromptContent, ScoredSample};

/// One preference pair (TRL's conversational format plus provenance): one type for the writer
/// here and the trainer's reader.
pub use sweetspot_core::PairRow;

/// One scored sample in the long layout: `prompt_id`, `prompt`, `sample_index`, `response`,
/// `reward`, and the optional fields when present.
#[derive(Debug, Serialize)]
pub struct ScoredRow<'a> {
    /// The prompt's id.
    pub prompt_id: &'a str,
    /// The prompt, as text or messages.
    pub prompt: &'a PromptContent,
    /// The sample's index.
    pub sample_index: u32,
    /// The response.
    pub response: &'a str,
    /// The reward.
    pub reward: f64,
    /// Per-objective rewards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objective_rewards: Option<&'a [f64]>,
    /// Response tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_count: Option<u32>,
    /// Why generation stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<sweetspot_core::FinishReason>,
    /// Summed log-probability under the sampling policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprob: Option<f64>,
}

impl<'a> ScoredRow<'a> {
    /// The row for `sample` of prompt `prompt`.
    pub fn new(prompt: &'a sweetspot_core::Prompt, sample: &'a ScoredSample) -> Self {
        Self {
            prompt_id: &prompt.id,
            prompt: &prompt.content,
            sample_index: sample.sample.sample_index,
            response: &sample.sample.response,
            reward: sample.reward,
            objective_rewards: sample.objective_rewards.as_deref(),
            token_count: sample.sample.token_count,
            finish_reason: sample.sample.finish_reason,
            logprob: sample.sample.logprob,
        }
    }
}
