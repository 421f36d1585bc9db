//! The data model: prompts, samples, scored samples, groups and preference pairs.

use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user` or `assistant` (any string is kept as it is).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message with role `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A prompt's content: plain text (one user turn) or a list of chat messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PromptContent {
    /// Plain text, taken as one user message.
    Text(String),
    /// A conversation, ending before the response to be sampled.
    Chat(Vec<Message>),
}

impl PromptContent {
    /// The prompt as chat messages (plain text becomes one user message).
    pub fn to_messages(&self) -> Vec<Message> {
        match self {
            Self::Text(text) => vec![Message::new("user", text.clone())],
            Self::Chat(messages) => messages.clone(),
        }
    }

    /// A stable identifier derived from the content: `p-` and the first 16 hex digits of the
    /// SHA-256 of the content's canonical JSON. The same prompt always gets the same id, on every
    /// platform and in every version of sweetspot.
    pub fn derived_id(&self) -> String {
        use sha2::{Digest, Sha256};
        let canonical = match self {
            Self::Text(text) => serde_json::to_string(text),
            Self::Chat(messages) => serde_json::to_string(messages),
        }
        .unwrap_or_default();
        let digest = Sha256::digest(canonical.as_bytes());
        let mut id = String::with_capacity(18);
        id.push_str("p-");
        for byte in &digest[..8] {
            id.push_str(&format!("{byte:02x}"));
        }
        id
    }
}

/// A prompt with its stable id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    /// Stable id: given in the data, or [`PromptContent::derived_id`].
    pub id: String,
    /// The prompt itself.
    pub content: PromptContent,
}

impl Prompt {
    /// A prompt whose id is derived from its content.
    pub fn from_content(content: PromptContent) -> Self {
        Self {
            id: content.derived_id(),
            content,
        }
    }
}

/// Why generation of a sample stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end token was produced.
    Stop,
    /// The token budget ran out.
    Length,
}

/// One sampled response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The prompt's id.
    pub prompt_id: String,
    /// The sample's index within its prompt's group, 0-based; the order of drawing.
    pub sample_index: u32,
    /// The response text.
    pub response: String,
    /// Number of response tokens, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_count: Option<u32>,
    /// Why generation stopped, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// Summed log-probability of the response under the sampling policy, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprob: Option<f64>,
}

/// A sample with its reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredSample {
    /// The sample.
    #[serde(flatten)]
    pub sample: Sample,
    /// The scalar reward. Always finite inside a [`ScoredGroup`].
    pub reward: f64,
    /// Per-objective rewards (ArmoRM's 19, say), when the reward model gives them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective_rewards: Option<Vec<f64>>,
}

/// All samples of one prompt, sorted by sample index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleGroup {
    /// The prompt.
    pub prompt: Prompt,
    /// Its samples, by increasing sample index.
    pub samples: Vec<Sample>,
}

/// All scored samples of one prompt, sorted by strictly increasing sample index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredGroup {
    /// The prompt.
    pub prompt: Prompt,
    /// Its scored samples, by strictly increasing sample index.
    pub samples: Vec<ScoredSample>,
}

impl ScoredGroup {
    /// The rewards, in sample order.
    pub fn rewards(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.reward).collect()
    }

    /// The first `n` samples by sample index (all of them when `n` is `None` or larger).
    pub fn first_n(&self, n: Option<usize>) -> &[ScoredSample] {
        match n {
            Some(n) if n < self.samples.len() => &self.samples[..n],
            _ => &self.samples,
        }
    }
}

/// A chosen/rejected pair for one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    /// The prompt.
    pub prompt: Prompt,
    /// The chosen sample.
    pub chosen: ScoredSample,
    /// The rejected sample.
    pub rejected: ScoredSample,
}
