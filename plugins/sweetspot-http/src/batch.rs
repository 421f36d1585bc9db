//! Offline batch files: a generate stage as OpenAI batch JSONL (for `vllm run-batch` or any batch
//! API), and the results read back into the samples the live `openai` sampler would give.
//!
//! Export: one line per sample, `{"custom_id", "method": "POST", "url", "body"}`, the body the
//! live client sends with `n = 1` and `seed = prompt_seed + index` (the same draw as the live
//! client's, however it splits a prompt's samples). `custom_id` is the JSON array
//! `[prompt id, sample index]`, unambiguous whatever the prompt id holds.
//!
//! Import: each result line `{"custom_id", "response": {"status_code", "body"}, "error"}` (the
//! OpenAI batch output shape, which `vllm run-batch` writes), joined by `custom_id`, in any
//! order. Every exported sample must come back exactly once with status 200: a missing,
//! repeated, unknown or failed one is an error naming the file and line.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};
use sweetspot_core::{BuildContext, PluginError, Prompt, SampleGroup};
use sweetspot_model::generate::prompt_seed;

use crate::openai::{Ask, OpenAiSamplerConfig, Requests};

/// The `custom_id` of sample `index` of `prompt_id`.
pub fn custom_id(prompt_id: &str, index: u32) -> String {
    json!([prompt_id, index]).to_string()
}

/// The batch request lines (JSONL, newline-terminated) for `n` samples of every prompt in a run
/// seeded `seed`.
pub fn export(
    config: &OpenAiSamplerConfig,
    ctx: &BuildContext,
    prompts: &[Prompt],
    n: usize,
) -> Result<String, PluginError> {
    let requests = Requests::new(config, ctx)?;
    let mut out = String::new();
    for (p, prompt) in prompts.iter().enumerate() {
        let seed = prompt_seed(ctx.seed, &prompt.id);
        for i in 0..n as u32 {
            let ask = Ask {
                prompt: p,
                first: i,
                n: 1,
            };
            let line = json!({
                "custom_id": custom_id(&prompt.id, i),
                "method": "POST",
                "url": requests.path(),
                "body": requests.body(prompt, &ask, seed)?,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
    Ok(out)
}

/// Reads the results file `results` for the samples [`export`] asked, and returns every
/// prompt's group in the prompts' order, samples by index.
pub fn import(
    config: &OpenAiSamplerConfig,
    ctx: &BuildContext,
    prompts: &[Prompt],
    n: usize,
    results: &Path,
) -> Result<Vec<SampleGroup>, PluginError> {
    let requests = Requests::new(config, ctx)?;
    let text = std::fs::read_to_string(results).map_err(|source| PluginError::Io {
        path: results.to_path_buf(),
        source,
    })?;
    let at = |line: usize, why: String| {
        PluginError::Input(format!("{}:{line}: {why}", results.display()))
    };
    let index: HashMap<&str, usize> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.as_str(), i))
        .collect();
    let mut got: Vec<Vec<Option<(sweetspot_core::Sample, usize)>>> =
        prompts.iter().map(|_| vec![None; n]).collect();
    for (k, raw) in text.lines().enumerate() {
        let line = k + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(raw).map_err(|e| at(line, format!("not JSON: {e}")))?;
        let id = v["custom_id"]
            .as_str()
            .ok_or_else(|| at(line, "no `custom_id`".into()))?;
        let (prompt_id, sample) = serde_json::from_str::<(String, u32)>(id).map_err(|_| {
            at(
                line,
                format!("`custom_id` {id:?} is not one this export wrote"),
            )
        })?;
        let (Some(&p), true) = (index.get(prompt_id.as_str()), (sample as usize) < n) else {
            return Err(at(
                line,
                format!("`custom_id` {id:?}: no such prompt and sample in this stage"),
            ));
        };
        if !v["error"].is_null() {
            return Err(at(line, format!("the request failed: {}", v["error"])));
        }
        let status = v["response"]["status_code"].as_u64();
        if status != Some(200) {
            return Err(at(
                line,
                format!(
                    "status {}: {}",
                    status.map_or("missing".to_string(), |s| s.to_string()),
                    v["response"]["body"]
                ),
            ));
        }
        let ask = Ask {
            prompt: p,
            first: sample,
            n: 1,
        };
        let mut samples = requests
            .samples(&prompts[p], &ask, &v["response"]["body"])
            .map_err(|why| at(line, why))?;
        let Some(s) = samples.pop() else {
            return Err(at(line, "no choice in the answer".into()));
        };
        let slot = &mut got[p][sample as usize];
        if let Some((_, first)) = slot {
            return Err(at(
                line,
                format!("`custom_id` {id:?} was already answered on line {first}"),
            ));
        }
        *slot = Some((s, line));
    }
    let mut groups = Vec::with_capacity(prompts.len());
    let mut missing = Vec::new();
    for (p, prompt) in prompts.iter().enumerate() {
        let mut samples = Vec::with_capacity(n);
        for (i, s) in got[p].iter_mut().enumerate() {
            match s.take() {
                Some((s, _)) => samples.push(s),
                None => missing.push(custom_id(&prompt.id, i as u32)),
            }
        }
        groups.push(SampleGroup {
            prompt: prompt.clone(),
            samples,
        });
    }
    if !missing.is_empty() {
        return Err(PluginError::Input(format!(
            "{}: {} of {} samples have no result (first: {})",
            results.display(),
            missing.len(),
            prompts.len() * n,
            missing[..missing.len().min(3)].join(", ")
        )));
    }
    Ok(groups)
}
