//! Prompts in (JSONL: `prompt` as text or messages, optional `prompt_id`), samples out.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sweetspot_core::{Prompt, PromptContent, Sample};

use crate::error::{Position, ReadError};

#[derive(Deserialize)]
struct PromptIn {
    #[serde(default)]
    prompt_id: Option<serde_json::Value>,
    prompt: Option<PromptContent>,
}

/// Reads a prompts file: one JSON object per line with `prompt` (a string or a list of
/// `{"role", "content"}` messages) and an optional `prompt_id` (else derived from the prompt).
/// Other keys are ignored. Prompt ids must be unique.
pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>, ReadError> {
    let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let at = Position::Line(i as u64 + 1);
        let row_err = |field: Option<&str>, message: String| ReadError::Row {
            path: path.to_path_buf(),
            at,
            field: field.map(str::to_string),
            message,
        };
        let line = line.map_err(|e| row_err(None, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let p: PromptIn = serde_json::from_str(&line).map_err(|e| {
            let msg = e.to_string();
            let field = msg.contains("PromptContent").then_some("prompt");
            row_err(
                field,
                if field.is_some() {
                    "expected a string or a list of {\"role\", \"content\"} messages".into()
                } else {
                    format!("not a valid prompt row: {msg}")
                },
            )
        })?;
        let content = p
            .prompt
            .ok_or_else(|| row_err(Some("prompt"), "missing".into()))?;
        let id = match p.prompt_id {
            None | Some(serde_json::Value::Null) => content.derived_id(),
            Some(serde_json::Value::String(s)) => s,
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(row_err(
                    Some("prompt_id"),
                    "expected a string or an integer".into(),
                ));
            }
        };
        if !seen.insert(id.clone()) {
            return Err(row_err(
                Some("prompt_id"),
                format!("prompt_id `{id}` appears twice"),
            ));
        }
        out.push(Prompt { id, content });
    }
    Ok(out)
}

/// One sample in the long layout, before scoring: the prompt beside the sample's own fields
/// (`prompt_id`, `sample_index`, `response`, and `token_count`, `finish_reason`, `logprob` when
/// known).
#[derive(Debug, Serialize, Deserialize)]
pub struct SampleRow {
    /// The prompt.
    pub prompt: PromptContent,
    /// The sample.
    #[serde(flatten)]
    pub sample: Sample,
}

impl SampleRow {
    /// The row for `sample` of `prompt`.
    pub fn new(prompt: &Prompt, sample: &Sample) -> Self {
        Self {
            prompt: prompt.content.clone(),
            sample: sample.clone(),
        }
    }
}
