//! One line of a pairs file: the record the pairs stage writes and the trainer reads.
//!
//! TRL's conversational preference format (`prompt` as chat messages, `chosen` and `rejected`
//! each one assistant message), plus sweetspot's provenance (`prompt_id`, the two samples'
//! indices and rewards). Reading also takes TRL's standard format (responses as text, a prompt
//! as text) and files from other tools: the trainer reads only the pair, so provenance is
//! ignored on reading and a row without it loads.

use std::borrow::Cow;

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

use crate::model::{Message, PromptContent, ScoredSample};

/// A response: text, or a list of messages. Written as one assistant message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Completion<'a> {
    /// The response's text.
    Text(Cow<'a, str>),
    /// The response as messages.
    Messages(Vec<Message>),
}

impl Completion<'_> {
    /// No text at all (or only whitespace) in the response.
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Text(t) => t.trim().is_empty(),
            Self::Messages(m) => m.iter().all(|m| m.content.trim().is_empty()),
        }
    }

    /// The response as messages (text becomes one assistant message).
    pub fn into_messages(self) -> Vec<Message> {
        match self {
            Self::Text(t) => vec![Message {
                role: "assistant".into(),
                content: t.into_owned(),
            }],
            Self::Messages(m) => m,
        }
    }
}

impl Serialize for Completion<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Text(text) => messages(s, [("assistant", text.as_ref())]),
            Self::Messages(m) => {
                messages(s, m.iter().map(|m| (m.role.as_str(), m.content.as_str())))
            }
        }
    }
}

#[derive(Serialize)]
struct Msg<'a> {
    role: &'a str,
    content: &'a str,
}

fn messages<'m, S: Serializer>(
    s: S,
    items: impl IntoIterator<Item = (&'m str, &'m str), IntoIter: ExactSizeIterator>,
) -> Result<S::Ok, S::Error> {
    let items = items.into_iter();
    let mut seq = s.serialize_seq(Some(items.len()))?;
    for (role, content) in items {
        seq.serialize_element(&Msg { role, content })?;
    }
    seq.end()
}

/// A prompt written as chat messages (text becomes one user message).
fn prompt_messages<S: Serializer>(
    prompt: &Option<Cow<'_, PromptContent>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match prompt.as_deref() {
        Some(PromptContent::Text(text)) => messages(s, [("user", text.as_str())]),
        Some(PromptContent::Chat(m)) => {
            messages(s, m.iter().map(|m| (m.role.as_str(), m.content.as_str())))
        }
        None => s.serialize_none(),
    }
}

/// One preference pair of a pairs file. Written by [`PairRow::new`] with every field; read with
/// the pair's three fields optional (a missing one is the reader's to name) and provenance
/// ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairRow<'a> {
    /// The prompt (written as chat messages).
    #[serde(default, serialize_with = "prompt_messages")]
    pub prompt: Option<Cow<'a, PromptContent>>,
    /// The chosen response (written as one assistant message).
    #[serde(default)]
    pub chosen: Option<Completion<'a>>,
    /// The rejected response.
    #[serde(default)]
    pub rejected: Option<Completion<'a>>,
    /// The prompt's id.
    #[serde(skip_deserializing)]
    pub prompt_id: Cow<'a, str>,
    /// The chosen sample's index.
    #[serde(skip_deserializing)]
    pub chosen_index: u32,
    /// The rejected sample's index.
    #[serde(skip_deserializing)]
    pub rejected_index: u32,
    /// The chosen sample's reward.
    #[serde(skip_deserializing)]
    pub score_chosen: f64,
    /// The rejected sample's reward.
    #[serde(skip_deserializing)]
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
            prompt: Some(Cow::Borrowed(prompt)),
            chosen: Some(Completion::Text(Cow::Borrowed(&chosen.sample.response))),
            rejected: Some(Completion::Text(Cow::Borrowed(&rejected.sample.response))),
            prompt_id: Cow::Borrowed(prompt_id),
            chosen_index: chosen.sample.sample_index,
            rejected_index: rejected.sample.sample_index,
            score_chosen: chosen.reward,
            score_rejected: rejected.reward,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sample;

    #[test]
    fn written_in_trl_conversational_form_and_read_back() {
        let sample = |i: u32, text: &str, reward: f64| ScoredSample {
            sample: Sample {
                prompt_id: "p1".into(),
                sample_index: i,
                response: text.into(),
                token_count: None,
                finish_reason: None,
                logprob: None,
            },
            reward,
            objective_rewards: None,
        };
        let (c, r) = (sample(3, "Blue.", 0.5), sample(1, "", -1.0));
        let prompt = PromptContent::Text("Name a colour.".into());
        let line = serde_json::to_string(&PairRow::new("p1", &prompt, &c, &r)).unwrap();
        assert_eq!(
            line,
            "{\"prompt\":[{\"role\":\"user\",\"content\":\"Name a colour.\"}],\
             \"chosen\":[{\"role\":\"assistant\",\"content\":\"Blue.\"}],\
             \"rejected\":[{\"role\":\"assistant\",\"content\":\"\"}],\"prompt_id\":\"p1\",\
             \"chosen_index\":3,\"rejected_index\":1,\"score_chosen\":0.5,\"score_rejected\":-1.0}"
        );
        let back: PairRow<'_> = serde_json::from_str(&line).unwrap();
        assert_eq!(
            back.prompt.unwrap().to_messages()[0].content,
            "Name a colour."
        );
        assert!(back.rejected.unwrap().is_empty());
        // TRL's standard form, with provenance of any shape, loads.
        let trl =
            "{\"prompt\": \"Hi\", \"chosen\": \"a\", \"rejected\": \"b\", \"score_chosen\": null}";
        let row: PairRow<'_> = serde_json::from_str(trl).unwrap();
        assert_eq!(row.chosen, Some(Completion::Text("a".into())));
    }
}
