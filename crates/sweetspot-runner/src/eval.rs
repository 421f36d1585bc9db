//! The eval stage's comparison: every policy's scored responses to the held-out prompts against
//! the starting policy's (see [`crate::winrate`]), and the AlpacaEval export.

use std::path::Path;

use serde::Serialize;

use crate::error::RunError;
use crate::winrate::{WinRate, from_outcomes, pairwise_preference, win_rates};

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
    /// Against the starting policy, as the pairwise judge (`[eval.judge]`) sees it: per
    /// prompt the judge's preference for the policy, averaged over both orders.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge: Option<WinRate>,
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
            judge: None,
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

/// The two responses of one prompt as one text for a pairwise judge.
pub fn pair_text(first: &str, second: &str) -> String {
    format!("Response A:\n{first}\n\nResponse B:\n{second}")
}

fn raw_rows(path: &Path) -> Result<Vec<serde_json::Value>, RunError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        RunError::Read(sweetspot_io::ReadError::Io {
            path: path.to_path_buf(),
            source,
        })
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| bad(path, i + 1, format!("not JSON: {e}")))
        })
        .collect()
}

/// Writes the pairwise judge's input: per prompt of `base` (in its order), sample 0 holds the
/// policy's response as A and the start's as B, sample 1 the other order. Returns the prompts.
pub fn compose_pairs(policy: &Path, base: &Path, out: &Path) -> Result<usize, RunError> {
    let policy_rows = raw_rows(policy)?;
    let by_id: std::collections::HashMap<String, &serde_json::Value> = policy_rows
        .iter()
        .map(|r| (r["prompt_id"].to_string(), r))
        .collect();
    let mut text = String::new();
    let base_rows = raw_rows(base)?;
    for b in &base_rows {
        let p = by_id.get(&b["prompt_id"].to_string()).ok_or_else(|| {
            RunError::Config(format!(
                "{}: no response to prompt {}",
                policy.display(),
                b["prompt_id"]
            ))
        })?;
        let (pr, br) = (
            p["response"].as_str().unwrap_or_default(),
            b["response"].as_str().unwrap_or_default(),
        );
        for (index, response) in [(0, pair_text(pr, br)), (1, pair_text(br, pr))] {
            let row = serde_json::json!({
                "prompt_id": b["prompt_id"],
                "prompt": b["prompt"],
                "sample_index": index,
                "response": response,
            });
            text.push_str(&row.to_string());
            text.push('\n');
        }
    }
    sweetspot_io::write_atomic(out, text.as_bytes())?;
    Ok(base_rows.len())
}

/// The judge's scores of [`compose_pairs`]' rows: prompt id -> (policy first, start first).
pub fn read_judged(path: &Path) -> Result<std::collections::HashMap<String, (f64, f64)>, RunError> {
    let mut out: std::collections::HashMap<String, (f64, f64)> = Default::default();
    for (i, r) in raw_rows(path)?.iter().enumerate() {
        let reward = r["reward"]
            .as_f64()
            .ok_or_else(|| bad(path, i + 1, "field `reward`: missing"))?;
        let e = out.entry(r["prompt_id"].to_string()).or_default();
        match r["sample_index"].as_u64() {
            Some(0) => e.0 = reward,
            Some(1) => e.1 = reward,
            _ => return Err(bad(path, i + 1, "field `sample_index`: not 0 or 1")),
        }
    }
    Ok(out)
}

/// The judge's win rate of a policy against the start: per prompt the preference of
/// [`pairwise_preference`], with the same length control and bootstrap as the reward's.
pub fn judged_win_rate(
    verdicts: &std::collections::HashMap<String, (f64, f64)>,
    policy: &[Response],
    base: &[Response],
    bootstrap: usize,
    seed: u64,
) -> Result<WinRate, RunError> {
    let base_len: std::collections::HashMap<&str, f64> = base
        .iter()
        .map(|r| (r.prompt_id.as_str(), r.length))
        .collect();
    let (mut outcomes, mut dlen) = (Vec::new(), Vec::new());
    for r in policy {
        let key = serde_json::Value::String(r.prompt_id.clone()).to_string();
        let key_num = r.prompt_id.clone();
        let (a, b) = verdicts
            .get(&key)
            .or_else(|| verdicts.get(&key_num))
            .copied()
            .ok_or_else(|| {
                RunError::Config(format!(
                    "eval: the judge has no verdict on `{}`",
                    r.prompt_id
                ))
            })?;
        outcomes.push(pairwise_preference(a, b));
        dlen.push(
            r.length
                - base_len
                    .get(r.prompt_id.as_str())
                    .copied()
                    .unwrap_or(r.length),
        );
    }
    Ok(from_outcomes(&outcomes, &dlen, bootstrap, seed))
}
