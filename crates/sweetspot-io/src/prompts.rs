//! Prompts in (JSONL: `prompt` as text or messages, optional `prompt_id`), samples out.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sweetspot_core::{Prompt, PromptContent, Sample, SampleGroup};

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
    Ok(read_prompts_at(path)?.into_iter().map(|(p, _)| p).collect())
}

/// [`read_prompts`], with each prompt's line number.
pub fn read_prompts_at(path: &Path) -> Result<Vec<(Prompt, u64)>, ReadError> {
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
        let empty = match &content {
            PromptContent::Text(t) => t.trim().is_empty(),
            PromptContent::Chat(m) => m.is_empty() || m.iter().all(|m| m.content.trim().is_empty()),
        };
        if empty {
            return Err(row_err(
                Some("prompt"),
                "empty: a prompt needs some text to respond to".into(),
            ));
        }
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
        out.push((Prompt { id, content }, i as u64 + 1));
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

/// Streams a samples file (JSONL, [`SampleRow`] per line, as `sweetspot generate` writes it) as
/// groups: the consecutive rows of one prompt. A prompt's rows must be consecutive and its sample
/// indices distinct; memory holds one group and an 8-byte fingerprint per prompt seen.
pub struct SampleReader {
    path: std::path::PathBuf,
    lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
    line_no: u64,
    pending: Option<(SampleRow, u64)>,
    seen: HashSet<u64>,
    done: bool,
}

impl std::fmt::Debug for SampleReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleReader")
            .field("path", &self.path)
            .field("line", &self.line_no)
            .finish_non_exhaustive()
    }
}

fn fingerprint(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl SampleReader {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            lines: std::io::BufReader::new(file).lines(),
            line_no: 0,
            pending: None,
            seen: HashSet::new(),
            done: false,
        })
    }

    fn next_row(&mut self) -> Result<Option<(SampleRow, u64)>, ReadError> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        loop {
            let Some(line) = self.lines.next() else {
                return Ok(None);
            };
            self.line_no += 1;
            let at = Position::Line(self.line_no);
            let line = line.map_err(|e| ReadError::Row {
                path: self.path.clone(),
                at,
                field: None,
                message: e.to_string(),
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let row: SampleRow = serde_json::from_str(&line).map_err(|e| {
                let msg = e.to_string();
                let row_err = |field: Option<String>, message: String| ReadError::Row {
                    path: self.path.clone(),
                    at,
                    field,
                    message,
                };
                if let Some(field) = msg
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                {
                    return row_err(Some(field.to_string()), "missing".into());
                }
                // Name the field whose value is wrong (not a byte column).
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(serde_json::Value::Object(obj)) => match crate::read::bad_field(&obj) {
                        Some((field, why)) => row_err(Some(field), why),
                        None => row_err(None, format!("not a valid sample row: {msg}")),
                    },
                    Ok(_) => row_err(None, "expected a JSON object".into()),
                    Err(e) => row_err(None, format!("not valid JSON: {e}")),
                }
            })?;
            return Ok(Some((row, self.line_no)));
        }
    }

    fn next_group(&mut self) -> Result<Option<SampleGroup>, ReadError> {
        let Some((first, start)) = self.next_row()? else {
            return Ok(None);
        };
        let path = self.path.clone();
        let group_err = |line: u64, message: String| ReadError::Group {
            path: path.clone(),
            at: Position::Line(line),
            message,
        };
        let id = first.sample.prompt_id.clone();
        if !self.seen.insert(fingerprint(&id)) {
            return Err(group_err(
                start,
                format!("the rows of prompt `{id}` are not consecutive (it appeared before)"),
            ));
        }
        let prompt = Prompt {
            id: id.clone(),
            content: first.prompt,
        };
        let mut samples = vec![first.sample];
        let mut indices: HashSet<u32> = samples.iter().map(|s| s.sample_index).collect();
        while let Some((row, line)) = self.next_row()? {
            if row.sample.prompt_id != id {
                self.pending = Some((row, line));
                break;
            }
            if row.prompt != prompt.content {
                return Err(ReadError::Row {
                    path: self.path.clone(),
                    at: Position::Line(line),
                    field: Some("prompt".into()),
                    message: format!(
                        "differs from the prompt of prompt_id `{id}` on line {start}: the rows \
                         of one prompt_id must hold the same prompt (give each prompt its own \
                         prompt_id)"
                    ),
                });
            }
            if !indices.insert(row.sample.sample_index) {
                return Err(group_err(
                    line,
                    format!(
                        "prompt `{id}` has sample_index {} twice",
                        row.sample.sample_index
                    ),
                ));
            }
            samples.push(row.sample);
        }
        Ok(Some(SampleGroup { prompt, samples }))
    }
}

impl Iterator for SampleReader {
    type Item = Result<SampleGroup, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_group().transpose();
        if matches!(r, Some(Err(_)) | None) {
            self.done = true;
        }
        r
    }
}
