//! The row types written out.

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};
use sweetspot_core::{PromptContent, ScoredSample};

/// One preference pair in TRL's conversational format, plus provenance: `prompt` is a message
/// list, `chosen` and `rejected` are one-message assistant lists.
#[derive(Debug, Serialize)]
pub struct PairRow<'a> {
    /// The prompt as chat messages.
    #[serde(serialize_with = "prompt_messages")]
    pub prompt: &'a PromptContent,
    /// The chosen response as one assistant message.
    #[serde(serialize_with = "assistant")]
    pub chosen: &'a str,
    /// The rejected response as one assistant message.
    #[serde(serialize_with = "assistant")]
    pub rejected: &'a str,
    /// The prompt's id.
    pub prompt_id: &'a str,
    /// The chosen sample's index.
    pub chosen_index: u32,
    /// The rejected sample's index.
    pub rejected_index: u32,
    /// The chosen sample's reward.
    pub score_chosen: f64,
    /// The rejected sample's reward.
    pub score_rejected: f64,
}

impl<'a> PairRow<'a> {
    /// The row for `chosen` over `rejected` on prompt `prompt`.
    pub fn new(
        prompt_id: &'a str,
        prompt: &'a PromptContent,
        chosen: &'a ScoredSample,
        rejected: &'a ScoredSample,
    ) -> Self {
        Self {
            prompt,
            chosen: &chosen.sample.response,
            rejected: &rejected.sample.response,
            prompt_id,
            chosen_index: chosen.sample.sample_index,
            rejected_index: rejected.sample.sample_index,
            score_chosen: chosen.reward,
            score_rejected: rejected.reward,
        }
    }
}

#[derive(Serialize)]
struct Msg<'a> {
    role: &'a str,
    content: &'a str,
}

fn prompt_messages<S: Serializer>(prompt: &&PromptContent, s: S) -> Result<S::Ok, S::Error> {
    match prompt {
        PromptContent::Text(text) => {
            let mut seq = s.serialize_seq(Some(1))?;
            seq.serialize_element(&Msg {
                role: "user",
                content: text,
            })?;
            seq.end()
        }
        PromptContent::Chat(messages) => {
            let mut seq = s.serialize_seq(Some(messages.len()))?;
            for m in messages {
                seq.serialize_element(&Msg {
                    role: &m.role,
                    content: &m.content,
                })?;
            }
            seq.end()
        }
    }
}

fn assistant<S: Serializer>(text: &&str, s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(1))?;
    seq.serialize_element(&Msg {
        role: "assistant",
        content: text,
    })?;
    seq.end()
}

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
