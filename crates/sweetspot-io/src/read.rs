//! Streaming readers of scored samples.

use std::collections::HashSet;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use sweetspot_core::recipe::{InputLayout, OnBadGroup};
use sweetspot_core::{Prompt, PromptContent, Sample, ScoredGroup, ScoredSample};

use crate::error::{Position, ReadError};
use crate::parquet_in::ParquetLines;

/// The file format of an input, from its extension: `.parquet` / `.pq` is Parquet, anything else
/// JSON Lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// JSON Lines.
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

impl InputKind {
    /// The kind of the file at `path`.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("parquet") || e.eq_ignore_ascii_case("pq") => {
                Self::Parquet
            }
            _ => Self::Jsonl,
        }
    }
}

/// How to read.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// The row layout, or auto-detection.
    pub layout: InputLayout,
    /// Groups with a NaN, infinite or null reward: an error, or a [`Record::InvalidReward`].
    pub on_invalid_reward: OnBadGroup,
}

/// One item read.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A complete group, samples sorted by sample index, every reward finite.
    Group {
        /// The group.
        group: ScoredGroup,
        /// Where the group starts.
        at: Position,
    },
    /// A group left out because a reward is not finite (only with `on_invalid_reward = "skip"`).
    InvalidReward {
        /// The prompt's id.
        prompt_id: String,
        /// Where the group starts.
        at: Position,
    },
}

/// Counts the bytes taken from a reader.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

enum Lines {
    Jsonl {
        reader: BufReader<Counting<File>>,
        line: u64,
        buf: String,
    },
    Parquet(Box<ParquetLines>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Long,
    Grouped,
}

/// Reads scored groups one at a time from a JSONL or Parquet file, long or grouped layout.
pub struct ScoredReader {
    path: PathBuf,
    lines: Lines,
    layout: Option<Layout>,
    options: ReadOptions,
    /// The long layout's row that starts the next group.
    pending: Option<(Position, LongRec)>,
    current_id: Option<String>,
    /// The current long-layout group's prompt as written on its first row, and that row.
    group_prompt: Option<(String, Position)>,
    seen: HashSet<u64>,
    total: u64,
    rows: u64,
    groups: u64,
}

impl std::fmt::Debug for ScoredReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoredReader")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl ScoredReader {
    /// Opens `path`.
    pub fn open(path: &Path, options: ReadOptions) -> Result<Self, ReadError> {
        let io = |source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let (lines, total) = match InputKind::of(path) {
            InputKind::Jsonl => {
                let total = file.metadata().map_err(io)?.len();
                let reader = BufReader::with_capacity(
                    1 << 20,
                    Counting {
                        inner: file,
                        count: 0,
                    },
                );
                (
                    Lines::Jsonl {
                        reader,
                        line: 0,
                        buf: String::new(),
                    },
                    total,
                )
            }
            InputKind::Parquet => {
                let p = ParquetLines::open(path, file)?;
                let total = p.total_rows();
                (Lines::Parquet(Box::new(p)), total)
            }
        };
        let layout = match options.layout {
            InputLayout::Auto => None,
            InputLayout::Long => Some(Layout::Long),
            InputLayout::Grouped => Some(Layout::Grouped),
        };
        Ok(Self {
            path: path.to_path_buf(),
            lines,
            layout,
            options,
            pending: None,
            current_id: None,
            group_prompt: None,
            seen: HashSet::new(),
            total,
            rows: 0,
            groups: 0,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Progress as (done, total): bytes for JSONL, rows for Parquet.
    pub fn progress(&self) -> (u64, u64) {
        match &self.lines {
            Lines::Jsonl { reader, .. } => (reader.get_ref().count, self.total),
            Lines::Parquet(p) => (p.rows_read(), self.total),
        }
    }

    /// Bytes taken from the file so far (JSONL; for Parquet, the file's size once read).
    pub fn bytes_read(&self) -> u64 {
        match &self.lines {
            Lines::Jsonl { reader, .. } => reader.get_ref().count,
            Lines::Parquet(p) => p.bytes(),
        }
    }

    /// Rows read so far.
    pub fn rows_read(&self) -> u64 {
        self.rows
    }

    /// Groups read so far.
    pub fn groups_read(&self) -> u64 {
        self.groups
    }

    /// Whether the file turned out to be in the long layout (`None` before the first row).
    pub fn is_long(&self) -> Option<bool> {
        self.layout.map(|l| l == Layout::Long)
    }

    fn row_err(&self, at: Position, field: Option<&str>, message: impl Into<String>) -> ReadError {
        ReadError::Row {
            path: self.path.clone(),
            at,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    /// The next non-blank line or row, as text.
    fn next_line(&mut self) -> Option<Result<(Position, String), ReadError>> {
        match &mut self.lines {
            Lines::Jsonl { reader, line, buf } => loop {
                buf.clear();
                match reader.read_line(buf) {
                    Ok(0) => return None,
                    Ok(_) => {
                        *line += 1;
                        let text = buf.trim_end_matches(['\n', '\r']);
                        if text.trim().is_empty() {
                            continue;
                        }
                        self.rows += 1;
                        return Some(Ok((Position::Line(*line), text.to_string())));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        let at = Position::Line(*line + 1);
                        return Some(Err(ReadError::Row {
                            path: self.path.clone(),
                            at,
                            field: None,
                            message: "not valid UTF-8".into(),
                        }));
                    }
                    Err(source) => {
                        return Some(Err(ReadError::Io {
                            path: self.path.clone(),
                            source,
                        }));
                    }
                }
            },
            Lines::Parquet(p) => {
                let next = p.next_row(&self.path);
                if matches!(next, Some(Ok(_))) {
                    self.rows += 1;
                }
                next
            }
        }
    }

    fn detect(&self, at: Position, line: &str) -> Result<Layout, ReadError> {
        let keys: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(line) {
            Ok(k) => k,
            Err(_) => {
                // Diagnose through the row parser, which names the problem precisely.
                return match parse_long(line) {
                    Err(e) => Err(self.diagnose(at, line, e)),
                    Ok(_) => Err(self.row_err(at, None, "expected a JSON object")),
                };
            }
        };
        if keys.contains_key("all_generated_responses") || keys.contains_key("all_rm_scores") {
            Ok(Layout::Grouped)
        } else if keys.contains_key("sample_index") || keys.contains_key("response") {
            Ok(Layout::Long)
        } else {
            Err(self.row_err(
                at,
                None,
                "cannot tell the layout: expected the long layout's keys (prompt_id, prompt, \
                 sample_index, response, reward) or the grouped layout's (prompt, \
                 all_generated_responses, all_rm_scores)",
            ))
        }
    }

    fn check_new_id(&mut self, at: Position, id: &str) -> Result<(), ReadError> {
        let mut h = std::hash::DefaultHasher::new();
        id.hash(&mut h);
        if self.seen.insert(h.finish()) {
            return Ok(());
        }
        let message = match self.layout {
            Some(Layout::Long) => format!(
                "prompt_id `{id}` appears again after other prompts: the long layout needs the rows \
                 of one prompt to be contiguous (sort the file by prompt_id)"
            ),
            _ => format!("prompt_id `{id}` appears twice: give each prompt its own prompt_id"),
        };
        Err(ReadError::Group {
            path: self.path.clone(),
            at,
            message,
        })
    }

    fn next_record(&mut self) -> Option<Result<Record, ReadError>> {
        if self.layout.is_none() {
            let (at, line) = match self.next_line()? {
                Ok(x) => x,
                Err(e) => return Some(Err(e)),
            };
            match self.detect(at, &line) {
                Ok(layout) => self.layout = Some(layout),
                Err(e) => return Some(Err(e)),
            }
            return Some(match self.layout {
                Some(Layout::Grouped) => self.grouped(at, &line),
                _ => match self.long_row(at, &line) {
                    Ok(rec) => self.long_group(at, rec),
                    Err(e) => Err(e),
                },
            });
        }
        match self.layout {
            Some(Layout::Grouped) => {
                let (at, line) = match self.next_line()? {
                    Ok(x) => x,
                    Err(e) => return Some(Err(e)),
                };
                Some(self.grouped(at, &line))
            }
            _ => {
                let (at, first) = match self.pending.take() {
                    Some(p) => p,
                    None => {
                        let (at, line) = match self.next_line()? {
                            Ok(x) => x,
                            Err(e) => return Some(Err(e)),
                        };
                        match self.long_row(at, &line) {
                            Ok(rec) => (at, rec),
                            Err(e) => return Some(Err(e)),
                        }
                    }
                };
                Some(self.long_group(at, first))
            }
        }
    }

    // ----- long layout -----

    fn long_row(&mut self, at: Position, line: &str) -> Result<LongRec, ReadError> {
        let parsed = match parse_long(line) {
            Ok(p) => p,
            Err(e) => {
                if self.options.on_invalid_reward == OnBadGroup::Skip
                    && let Some(patched) = nonfinite_to_null(line)
                    && let Ok(p) = parse_long(&patched)
                {
                    return self.long_rec(at, p);
                }
                return Err(self.diagnose(at, line, e));
            }
        };
        self.long_rec(at, parsed)
    }

    fn long_rec(&mut self, at: Position, p: LongIn<'_>) -> Result<LongRec, ReadError> {
        let prompt_id = p
            .prompt_id
            .ok_or_else(|| self.row_err(at, Some("prompt_id"), "missing"))?
            .0;
        let sample_index = p
            .sample_index
            .ok_or_else(|| self.row_err(at, Some("sample_index"), "missing"))?;
        let response = p
            .response
            .ok_or_else(|| self.row_err(at, Some("response"), "missing"))?;
        let reward = p
            .reward
            .ok_or_else(|| self.row_err(at, Some("reward"), "missing"))?;
        let raw_prompt = p
            .prompt
            .ok_or_else(|| self.row_err(at, Some("prompt"), "missing"))?;
        let (prompt, raw) = if self.current_id.as_deref() == Some(prompt_id.as_str()) {
            self.same_prompt(at, &prompt_id, raw_prompt.get())?;
            (None, None)
        } else {
            let content =
                parse_prompt(raw_prompt.get()).map_err(|m| self.row_err(at, Some("prompt"), m))?;
            (Some(content), Some(raw_prompt.get().to_string()))
        };
        Ok(LongRec {
            prompt_id,
            prompt,
            raw_prompt: raw,
            sample: ScoredSample {
                sample: Sample {
                    prompt_id: String::new(),
                    sample_index,
                    response,
                    token_count: p.token_count,
                    finish_reason: p.finish_reason,
                    logprob: p.logprob,
                },
                reward: reward.unwrap_or(f64::NAN),
                objective_rewards: p.objective_rewards,
            },
        })
    }

    /// A later row of the current long-layout group: its prompt must be the group's (the same
    /// text, or the same value written differently), never silently replaced by the first.
    fn same_prompt(&self, at: Position, id: &str, raw: &str) -> Result<(), ReadError> {
        let Some((first_raw, first_at)) = &self.group_prompt else {
            return Ok(());
        };
        if raw == first_raw {
            return Ok(());
        }
        let this = parse_prompt(raw).map_err(|m| self.row_err(at, Some("prompt"), m))?;
        if parse_prompt(first_raw).is_ok_and(|first| first == this) {
            return Ok(());
        }
        Err(self.row_err(
            at,
            Some("prompt"),
            format!(
                "differs from the prompt of prompt_id `{id}` on {first_at}: the rows of one \
                 prompt_id must hold the same prompt (give each prompt its own prompt_id)"
            ),
        ))
    }

    fn long_group(&mut self, at: Position, first: LongRec) -> Result<Record, ReadError> {
        let id = first.prompt_id;
        self.current_id = Some(id.clone());
        self.group_prompt = first.raw_prompt.map(|raw| (raw, at));
        self.check_new_id(at, &id)?;
        let content = first.prompt.unwrap_or(PromptContent::Text(String::new()));
        let mut rows = vec![(at, first.sample)];
        loop {
            let (row_at, line) = match self.next_line() {
                None => break,
                Some(Ok(x)) => x,
                Some(Err(e)) => return Err(e),
            };
            let rec = self.long_row(row_at, &line)?;
            if rec.prompt_id == id {
                rows.push((row_at, rec.sample));
            } else {
                self.pending = Some((row_at, rec));
                break;
            }
        }
        self.finish_group(at, Prompt { id, content }, rows)
    }

    fn finish_group(
        &mut self,
        at: Position,
        prompt: Prompt,
        mut rows: Vec<(Position, ScoredSample)>,
    ) -> Result<Record, ReadError> {
        rows.sort_by_key(|(_, s)| s.sample.sample_index);
        for w in rows.windows(2) {
            if w[0].1.sample.sample_index == w[1].1.sample.sample_index {
                return Err(self.row_err(
                    w[1].0,
                    Some("sample_index"),
                    format!(
                        "sample_index {} of prompt `{}` appears twice (also at {})",
                        w[1].1.sample.sample_index, prompt.id, w[0].0
                    ),
                ));
            }
        }
        self.groups += 1;
        if let Some((bad_at, bad)) = rows.iter().find(|(_, s)| !s.reward.is_finite()) {
            if self.options.on_invalid_reward == OnBadGroup::Skip {
                return Ok(Record::InvalidReward {
                    prompt_id: prompt.id,
                    at,
                });
            }
            return Err(self.row_err(
                *bad_at,
                Some("reward"),
                format!(
                    "reward of sample {} is null or not finite (NaN or infinite)",
                    bad.sample.sample_index
                ),
            ));
        }
        let samples = rows
            .into_iter()
            .map(|(_, mut s)| {
                s.sample.prompt_id.clone_from(&prompt.id);
                s
            })
            .collect();
        Ok(Record::Group {
            group: ScoredGroup { prompt, samples },
            at,
        })
    }

    // ----- grouped layout -----

    fn grouped(&mut self, at: Position, line: &str) -> Result<Record, ReadError> {
        let patched: Option<String>;
        let parsed = match parse_grouped(line) {
            Ok(p) => p,
            Err(e) => {
                patched = if self.options.on_invalid_reward == OnBadGroup::Skip {
                    nonfinite_to_null(line)
                } else {
                    None
                };
                match patched.as_deref().map(parse_grouped) {
                    Some(Ok(p)) => p,
                    _ => return Err(self.diagnose(at, line, e)),
                }
            }
        };
        let content = parsed
            .prompt
            .ok_or_else(|| self.row_err(at, Some("prompt"), "missing"))?;
        let content =
            parse_prompt(content.get()).map_err(|m| self.row_err(at, Some("prompt"), m))?;
        let responses = parsed
            .all_generated_responses
            .ok_or_else(|| self.row_err(at, Some("all_generated_responses"), "missing"))?;
        let scores = parsed
            .all_rm_scores
            .ok_or_else(|| self.row_err(at, Some("all_rm_scores"), "missing"))?;
        if scores.len() != responses.len() {
            return Err(self.row_err(
                at,
                Some("all_rm_scores"),
                format!(
                    "{} scores for {} responses in `all_generated_responses`",
                    scores.len(),
                    responses.len()
                ),
            ));
        }
        let id = match parsed.prompt_id {
            Some(id) => id.0,
            None => content.derived_id(),
        };
        self.check_new_id(at, &id)?;
        let rows = responses
            .into_iter()
            .zip(scores)
            .enumerate()
            .map(|(i, (response, reward))| {
                (
                    at,
                    ScoredSample {
                        sample: Sample {
                            prompt_id: String::new(),
                            sample_index: i as u32,
                            response,
                            token_count: None,
                            finish_reason: None,
                            logprob: None,
                        },
                        reward: reward.unwrap_or(f64::NAN),
                        objective_rewards: None,
                    },
                )
            })
            .collect();
        self.finish_group(at, Prompt { id, content }, rows)
    }

    /// Turns a failed fast-path parse into an error naming the field.
    fn diagnose(&self, at: Position, line: &str, err: serde_json::Error) -> ReadError {
        if let Some((field, token)) = find_nonfinite(line) {
            return self.row_err(
                at,
                field.as_deref(),
                format!(
                    "`{token}` is not a finite number (rewards must be finite; set \
                     on_invalid_reward = \"skip\" to skip such groups)"
                ),
            );
        }
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return self.row_err(
                    at,
                    None,
                    format!("not valid JSON: {} (column {})", strip_pos(&e), e.column()),
                );
            }
        };
        let Some(obj) = value.as_object() else {
            return self.row_err(at, None, "expected a JSON object");
        };
        if let Some((key, msg)) = bad_field(obj) {
            return self.row_err(at, Some(&key), msg);
        }
        self.row_err(at, None, strip_pos(&err))
    }
}

impl Iterator for ScoredReader {
    type Item = Result<Record, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record()
    }
}

fn strip_pos(e: &serde_json::Error) -> String {
    let s = e.to_string();
    s.split(" at line ").next().unwrap_or(&s).to_string()
}

/// A prompt id given as a string or an integer.
#[derive(Debug)]
struct Id(String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            U(u64),
        }
        match Raw::deserialize(d) {
            Ok(Raw::S(s)) => Ok(Id(s)),
            Ok(Raw::I(i)) => Ok(Id(i.to_string())),
            Ok(Raw::U(u)) => Ok(Id(u.to_string())),
            Err(_) => Err(serde::de::Error::custom(
                "expected a string or an integer prompt id",
            )),
        }
    }
}

/// `Some(None)` for null, `Some(Some(x))` for a value; missing stays `None` through `default`.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct LongIn<'a> {
    #[serde(default)]
    prompt_id: Option<Id>,
    #[serde(default, borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(default)]
    sample_index: Option<u32>,
    #[serde(default)]
    response: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    reward: Option<Option<f64>>,
    #[serde(default)]
    token_count: Option<u32>,
    #[serde(default)]
    finish_reason: Option<sweetspot_core::FinishReason>,
    #[serde(default)]
    logprob: Option<f64>,
    #[serde(default)]
    objective_rewards: Option<Vec<f64>>,
}

#[derive(Debug)]
struct LongRec {
    prompt_id: String,
    prompt: Option<PromptContent>,
    /// The prompt as written, on the row that starts a group.
    raw_prompt: Option<String>,
    sample: ScoredSample,
}

#[derive(Deserialize)]
struct GroupedIn<'a> {
    #[serde(default)]
    prompt_id: Option<Id>,
    #[serde(default, borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(default)]
    all_generated_responses: Option<Vec<String>>,
    #[serde(default)]
    all_rm_scores: Option<Vec<Option<f64>>>,
}

fn parse_long(line: &str) -> Result<LongIn<'_>, serde_json::Error> {
    serde_json::from_str(line)
}

fn parse_grouped(line: &str) -> Result<GroupedIn<'_>, serde_json::Error> {
    serde_json::from_str(line)
}

fn parse_prompt(raw: &str) -> Result<PromptContent, String> {
    serde_json::from_str(raw).map_err(|_| {
        "expected a string or a list of {\"role\": ..., \"content\": ...} messages".to_string()
    })
}

/// Tokens that Python's `json` writes for non-finite floats, and their spellings elsewhere.
const NONFINITE: [&str; 6] = ["-Infinity", "Infinity", "NaN", "-inf", "inf", "nan"];

/// Scans `line` for a bare non-finite token outside strings; returns the key it is the value of
/// (the innermost `"key":` before it) and the token.
fn find_nonfinite(line: &str) -> Option<(Option<String>, &'static str)> {
    scan_nonfinite(line)
        .into_iter()
        .next()
        .map(|(_, _, key, tok)| (key, tok))
}

/// Replaces every bare non-finite token outside strings with `null`; `None` when there is none.
fn nonfinite_to_null(line: &str) -> Option<String> {
    let hits = scan_nonfinite(line);
    if hits.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(line.len());
    let mut last = 0;
    for (start, end, _, _) in hits {
        out.push_str(&line[last..start]);
        out.push_str("null");
        last = end;
    }
    out.push_str(&line[last..]);
    Some(out)
}

fn scan_nonfinite(line: &str) -> Vec<(usize, usize, Option<String>, &'static str)> {
    let bytes = line.as_bytes();
    let mut hits = Vec::new();
    let mut i = 0;
    let mut last_string: Option<(usize, usize)> = None;
    let mut key: Option<String> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                last_string = Some((start, i.min(bytes.len())));
                i += 1;
            }
            b':' => {
                if let Some((s, e)) = last_string {
                    key = Some(line[s..e].to_string());
                }
                i += 1;
            }
            b'-' | b'I' | b'N' | b'i' | b'n' => {
                let rest = &line[i..];
                let found = NONFINITE.iter().find(|t| {
                    rest.starts_with(**t)
                        && !rest[t.len()..]
                            .chars()
                            .next()
                            .is_some_and(|c| c.is_ascii_alphanumeric())
                });
                match found {
                    Some(t) if !rest.starts_with("null") => {
                        hits.push((i, i + t.len(), key.clone(), *t));
                        i += t.len();
                    }
                    _ => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    hits
}

/// The first field of a row whose value has the wrong type, with the reason (the message of
/// a row that failed to parse, naming the field instead of a byte column).
pub(crate) fn bad_field(
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Option<(String, String)> {
    for (key, v) in obj {
        let text = v.to_string();
        let bad = match key.as_str() {
            "prompt_id" => serde_json::from_str::<Id>(&text)
                .err()
                .map(|e| e.to_string()),
            "sample_index" => serde_json::from_str::<u32>(&text)
                .err()
                .map(|e| e.to_string()),
            "prompt" => serde_json::from_str::<PromptContent>(&text).err().map(|_| {
                "expected a string or a list of {\"role\", \"content\"} messages".to_string()
            }),
            "response" => serde_json::from_str::<String>(&text)
                .err()
                .map(|e| e.to_string()),
            "reward" => serde_json::from_str::<Option<f64>>(&text)
                .err()
                .map(|e| e.to_string()),
            "token_count" => serde_json::from_str::<Option<u32>>(&text)
                .err()
                .map(|e| e.to_string()),
            "finish_reason" => serde_json::from_str::<Option<sweetspot_core::FinishReason>>(&text)
                .err()
                .map(|e| e.to_string()),
            "logprob" => serde_json::from_str::<Option<f64>>(&text)
                .err()
                .map(|e| e.to_string()),
            "objective_rewards" => serde_json::from_str::<Option<Vec<f64>>>(&text)
                .err()
                .map(|e| e.to_string()),
            "all_generated_responses" => serde_json::from_str::<Vec<String>>(&text)
                .err()
                .map(|e| e.to_string()),
            "all_rm_scores" => serde_json::from_str::<Vec<Option<f64>>>(&text)
                .err()
                .map(|e| e.to_string()),
            _ => None,
        };
        if let Some(msg) = bad {
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            return Some((key.clone(), msg));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of one prompt_id in the long layout, each (prompt, response), written to `path`.
    fn write_long(path: &Path, prompts: &[serde_json::Value]) {
        use arrow_schema::{DataType, Field, Schema};
        let rows: Vec<serde_json::Value> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                serde_json::json!({"prompt_id": "p1", "prompt": p, "sample_index": i,
                    "response": format!("r{i}"), "reward": i as f64})
            })
            .collect();
        if InputKind::of(path) == InputKind::Jsonl {
            let text: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
            std::fs::write(path, text.join("\n")).unwrap();
            return;
        }
        let schema = Schema::new(vec![
            Field::new("prompt_id", DataType::Utf8, false),
            Field::new("prompt", DataType::Utf8, false),
            Field::new("sample_index", DataType::Int64, false),
            Field::new("response", DataType::Utf8, false),
            Field::new("reward", DataType::Float64, false),
        ]);
        let mut out = crate::OutputSet::new();
        let w = out.add(
            crate::RowWriter::new(path, sweetspot_core::recipe::OutputFormat::Parquet, schema)
                .unwrap(),
        );
        for r in &rows {
            out.writer(w).write(r).unwrap();
        }
        out.commit().unwrap();
    }

    fn read_all(path: &Path) -> Result<Vec<Record>, ReadError> {
        ScoredReader::open(path, ReadOptions::default())
            .unwrap()
            .collect()
    }

    #[test]
    fn a_group_whose_rows_disagree_on_the_prompt_is_refused_in_jsonl_and_parquet() {
        let dir = tempfile::tempdir().unwrap();
        for (name, at) in [("s.jsonl", "line"), ("s.parquet", "row")] {
            let path = dir.path().join(name);
            // The same prompt written twice is one group.
            write_long(&path, &[serde_json::json!("hi"), serde_json::json!("hi")]);
            let recs = read_all(&path).unwrap();
            assert_eq!(recs.len(), 1, "{name}");
            // A different prompt on the third row is refused there, naming the first row.
            let p = serde_json::json!("hi");
            write_long(&path, &[p.clone(), p, serde_json::json!("hello")]);
            let e = read_all(&path).unwrap_err();
            assert_eq!(e.field(), Some("prompt"), "{name}: {e}");
            assert_eq!(e.position().map(|p| p.number()), Some(3), "{name}: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains(&format!(
                    "differs from the prompt of prompt_id `p1` on {at} 1"
                )),
                "{name}: {msg}"
            );
        }
        // JSONL: the same messages written with other spacing are the same prompt; a number
        // on a later row is refused.
        let path = dir.path().join("m.jsonl");
        std::fs::write(
            &path,
            "{\"prompt_id\": \"p1\", \"prompt\": [{\"role\": \"user\", \"content\": \"hi\"}], \
             \"sample_index\": 0, \"response\": \"a\", \"reward\": 1}\n\
             {\"prompt_id\": \"p1\", \"prompt\": [{\"role\":\"user\",\"content\":\"hi\"}], \
             \"sample_index\": 1, \"response\": \"b\", \"reward\": 0}\n",
        )
        .unwrap();
        assert_eq!(read_all(&path).unwrap().len(), 1);
        write_long(&path, &[serde_json::json!("hi"), serde_json::json!(7)]);
        let e = read_all(&path).unwrap_err();
        assert_eq!(
            (e.field(), e.position()),
            (Some("prompt"), Some(Position::Line(2)))
        );
    }

    #[test]
    fn scans_nonfinite_tokens_outside_strings() {
        let line = r#"{"response": "NaN inside a string", "reward": NaN, "x": -Infinity}"#;
        let hits = scan_nonfinite(line);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].2.as_deref(), Some("reward"));
        assert_eq!(hits[1].3, "-Infinity");
        let patched = nonfinite_to_null(line).unwrap();
        assert!(patched.contains(r#""reward": null"#));
        assert!(patched.contains("NaN inside a string"));
        assert!(scan_nonfinite(r#"{"a": null, "b": -1.5}"#).is_empty());
    }
}
