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

/// One row of TRL's unpaired preference format (KTO, BCO): `prompt` (chat messages),
/// `completion` (one assistant message), `label` (true for a pair's chosen response, false for
/// its rejected one), plus provenance (`prompt_id`, `sample_index`, `reward`).
#[derive(Debug, Serialize)]
pub struct UnpairedRow<'a> {
    /// The prompt, as chat messages.
    pub prompt: Vec<sweetspot_core::Message>,
    /// The response, as one assistant message.
    pub completion: sweetspot_core::Completion<'a>,
    /// Desirable (the chosen response) or not (the rejected one).
    pub label: bool,
    /// The prompt's id.
    pub prompt_id: &'a str,
    /// The sample's index.
    pub sample_index: u32,
    /// The sample's reward.
    pub reward: f64,
}

impl<'a> UnpairedRow<'a> {
    /// The row for `sample` of prompt `prompt`, labelled `label`.
    pub fn new(prompt: &'a sweetspot_core::Prompt, sample: &'a ScoredSample, label: bool) -> Self {
        Self {
            prompt: prompt.content.to_messages(),
            completion: sweetspot_core::Completion::Text(std::borrow::Cow::Borrowed(
                &sample.sample.response,
            )),
            label,
            prompt_id: &prompt.id,
            sample_index: sample.sample.sample_index,
            reward: sample.reward,
        }
    }
}

/// One row of the listwise layout: `prompt` (chat messages), `completions` (each response as
/// one assistant message, highest reward first), `rewards` (in the same order), plus
/// `prompt_id` and `sample_indices`.
#[derive(Debug, Serialize)]
pub struct ListwiseRow<'a> {
    /// The prompt, as chat messages.
    pub prompt: Vec<sweetspot_core::Message>,
    /// The responses, best first.
    pub completions: Vec<sweetspot_core::Completion<'a>>,
    /// Their rewards.
    pub rewards: Vec<f64>,
    /// The prompt's id.
    pub prompt_id: &'a str,
    /// Their sample indices.
    pub sample_indices: Vec<u32>,
}

impl<'a> ListwiseRow<'a> {
    /// The row for `samples` (already in the order written) of prompt `prompt`.
    pub fn new(prompt: &'a sweetspot_core::Prompt, samples: &[&'a ScoredSample]) -> Self {
        Self {
            prompt: prompt.content.to_messages(),
            completions: samples
                .iter()
                .map(|s| {
                    sweetspot_core::Completion::Text(std::borrow::Cow::Borrowed(
                        s.sample.response.as_str(),
                    ))
                })
                .collect(),
            rewards: samples.iter().map(|s| s.reward).collect(),
            prompt_id: &prompt.id,
            sample_indices: samples.iter().map(|s| s.sample.sample_index).collect(),
        }
    }
}
