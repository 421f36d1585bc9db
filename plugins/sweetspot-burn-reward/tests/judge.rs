//! The `judge` reward of SmolLM2-135M-Instruct (Q4_1 GGUF) against transformers loading the same
//! file (`scripts/judge_reference.py` -> `tests/fixtures/judge_reference.json`): the default
//! grading prompt, its tokens, and log P(Yes) - log P(No), alone and in one padded batch.
//!
//! Tolerance: 5e-4 absolute on the reward (a 30-layer model in f32 on both sides, different
//! summation orders; the differences seen are about 2e-5).
//!
//! The GGUF is fetched by `scripts/fetch_smollm2.sh` (CI does); without it this test says so and
//! passes, except under CI, where a missing file is a failure.

use std::path::PathBuf;

use sweetspot_burn_reward::{DEFAULT_JUDGE_TEMPLATE, JudgeConfig};
use sweetspot_core::{
    BuildContext, NoProgress, Prompt, PromptContent, RewardModelConfig, Sample, SampleGroup,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn judge_reward_matches_transformers() {
    let gguf = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing under CI",
            gguf.display()
        );
        eprintln!("skipping: {} not found", gguf.display());
        return;
    }
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/judge_reference.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["template"].as_str().unwrap(), DEFAULT_JUDGE_TEMPLATE);
    let cfg: JudgeConfig = serde_json::from_value(serde_json::json!({
        "model": gguf,
        "batch_size": 4,
        "device": std::env::var("SWEETSPOT_TEST_DEVICE").unwrap_or_else(|_| "cpu".into()),
    }))
    .unwrap();
    let mut model = cfg.build(&BuildContext::new(root())).unwrap();
    let cases = r["cases"].as_array().unwrap();
    // One group per prompt text, so samples of different lengths share padded batches.
    let mut groups: Vec<SampleGroup> = Vec::new();
    for c in cases {
        let prompt = c["prompt"].as_str().unwrap();
        let id = format!("p-{}", prompt.len());
        if groups.last().is_none_or(|g| g.prompt.id != id) {
            groups.push(SampleGroup {
                prompt: Prompt {
                    id: id.clone(),
                    content: PromptContent::Text(prompt.into()),
                },
                samples: Vec::new(),
            });
        }
        let g = groups.last_mut().unwrap();
        g.samples.push(Sample {
            prompt_id: id,
            sample_index: g.samples.len() as u32,
            response: c["response"].as_str().unwrap().into(),
            token_count: None,
            finish_reason: None,
            logprob: None,
        });
    }
    let mut rewards = Vec::new();
    model
        .score(groups, &NoProgress, &mut |g| {
            rewards.extend(g.samples.iter().map(|s| s.reward));
            Ok(())
        })
        .unwrap();
    assert_eq!(rewards.len(), cases.len());
    for (c, got) in cases.iter().zip(&rewards) {
        let want = c["reward"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 5e-4,
            "{}: {got} vs {want}",
            c["response"]
        );
    }
}
