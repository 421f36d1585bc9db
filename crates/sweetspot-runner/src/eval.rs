//! The eval stage's comparison: every policy's scored responses to the held-out prompts against
//! the starting policy's (see [`crate::winrate`]), and the AlpacaEval export.

use std::path::Path;

use serde::Serialize;

use crate::error::RunError;
use crate::winrate::{WinRate, win_rates};

/// One eval response, scored.
#[derive(Debug, Clone)]
pub struct Response {
    /// The prompt's id.
    pub prompt_id: String,
    /// The instruction as AlpacaEval names it: the prompt's text, or its last user turn.
    pub instruction: String,
    /// The response.
    pub output: String,
    /// Its reward.
    pub reward: f64,
    /// Its length in tokens (the sampler's count; characters where the file has none).
    pub length: f64,
}

/// One row of the eval table (`eval.json`).
#[derive(Debug, Clone, Serialize)]
pub struct EvalRow {
    /// `base` (the starting policy) or the policy's name.
    pub policy: String,
    /// Mean reward of its responses.
    pub mean_reward: f64,
    /// Mean response length, tokens.
    pub mean_length: f64,
    /// Against the starting policy.
    #[serde(flatten)]
    pub against_base: WinRate,
}

fn bad(path: &Path, line: usize, m: impl std::fmt::Display) -> RunError {
    RunError::Config(format!("{}:{line}: {m}", path.display()))
}

/// The scored responses of a score node's output (long layout, one sample per prompt).
pub fn read_responses(path: &Path) -> Result<Vec<Response>, RunError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        RunError::Read(sweetspot_io::ReadError::Io {
            path: path.to_path_buf(),
            source,
        })
    })?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(path, i + 1, format!("not JSON: {e}")))?;
        let prompt_id = match &v["prompt_id"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let instruction = match &v["prompt"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(turns) => turns
                .iter()
                .rev()
                .find(|t| t["role"] == "user")
                .and_then(|t| t["content"].as_str())
                .unwrap_or_default()
                .to_string(),
            _ => return Err(bad(path, i + 1, "field `prompt`: not text or messages")),
        };
        let output = v["response"]
            .as_str()
            .ok_or_else(|| bad(path, i + 1, "field `response`: missing"))?
            .to_string();
        let reward = v["reward"]
            .as_f64()
            .filter(|r| r.is_finite())
            .ok_or_else(|| bad(path, i + 1, "field `reward`: missing or not finite"))?;
        let length = v["token_count"]
            .as_f64()
            .unwrap_or_else(|| output.chars().count() as f64);
        out.push(Response {
            prompt_id,
            instruction,
            output,
            reward,
            length,
        });
    }
    Ok(out)
}

/// The eval table: each of `all` (the first is the starting policy) against the first, on the
/// prompts they share, which must be all of them.
pub fn compare(
    all: &[(String, Vec<Response>)],
    bootstrap: usize,
    seed: u64,
) -> Result<Vec<EvalRow>, RunError> {
    let Some((_, base)) = all.first() else {
        return Ok(Vec::new());
    };
    let index: std::collections::HashMap<&str, &Response> =
        base.iter().map(|r| (r.prompt_id.as_str(), r)).collect();
    let mut rows = Vec::new();
    for (name, responses) in all {
        if responses.len() != base.len() {
            return Err(RunError::Config(format!(
                "eval: `{name}` answered {} prompts, the base {}",
                responses.len(),
                base.len()
            )));
        }
        let mut pol = Vec::with_capacity(responses.len());
        let mut bas = Vec::with_capacity(responses.len());
        for r in responses {
            let b = index.get(r.prompt_id.as_str()).ok_or_else(|| {
                RunError::Config(format!(
                    "eval: `{name}` answered prompt `{}`, which the base did not",
                    r.prompt_id
                ))
            })?;
            pol.push((r.reward, r.length));
            bas.push((b.reward, b.length));
        }
        let n = pol.len().max(1) as f64;
        rows.push(EvalRow {
            policy: name.clone(),
            mean_reward: pol.iter().map(|p| p.0).sum::<f64>() / n,
            mean_length: pol.iter().map(|p| p.1).sum::<f64>() / n,
            against_base: win_rates(&pol, &bas, bootstrap, seed),
        });
    }
    Ok(rows)
}

/// Writes `responses` as AlpacaEval's `model_outputs.json` (`instruction`, `output`,
/// `generator`), atomically.
pub fn write_model_outputs(
    file: &Path,
    run: &str,
    policy: &str,
    responses: &[Response],
) -> Result<(), RunError> {
    let generator = format!("{run}/{policy}");
    let rows: Vec<serde_json::Value> = responses
        .iter()
        .map(|r| {
            serde_json::json!({
                "instruction": r.instruction,
                "output": r.output,
                "generator": generator,
            })
        })
        .collect();
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|source| {
            RunError::Write(sweetspot_io::WriteError::Io {
                path: dir.to_path_buf(),
                source,
            })
        })?;
    }
    let text = serde_json::to_vec_pretty(&rows).unwrap_or_default();
    sweetspot_io::write_atomic(file, &text)?;
    Ok(())
}
