//! The sampler reports progress in the unit of the bar it is given: sequences (the generate
//! stage's bar has prompts x n as its total), with the token count as a message, never tokens
//! counted against a total in sequences.

use std::sync::Mutex;

use sweetspot_burn_sampler::BurnSamplerConfig;
use sweetspot_core::{
    BuildContext, Progress, Prompt, PromptContent, SampleGroup, SampleRequest, SamplerConfig,
};

#[derive(Default)]
struct Recorder {
    advanced: Mutex<u64>,
    messages: Mutex<Vec<String>>,
}

impl Progress for Recorder {
    fn set_total(&self, _total: Option<u64>) {}
    fn advance(&self, n: u64) {
        *self.advanced.lock().unwrap() += n;
    }
    fn message(&self, message: &str) {
        self.messages.lock().unwrap().push(message.to_string());
    }
}

#[test]
fn progress_counts_sequences_not_tokens() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cfg: BurnSamplerConfig = toml::from_str(&format!(
        "model = {:?}\ntemperature = 1.0\nmax_new_tokens = 12\nbatch_size = 4",
        root.join("tests/fixtures/models/policy")
    ))
    .unwrap();
    let ctx = BuildContext::new(&root);
    let mut sampler = cfg.build(&ctx).unwrap();
    let prompts: Vec<Prompt> = ["a", "b", "c"]
        .iter()
        .map(|t| Prompt {
            id: t.to_string(),
            content: PromptContent::Text(t.to_string()),
        })
        .collect();
    let request = SampleRequest {
        n: 3,
        seed: 7,
        first_index: 0,
    };
    let progress = Recorder::default();
    let mut tokens = 0u64;
    let mut sink = |g: SampleGroup| {
        tokens += g
            .samples
            .iter()
            .map(|s| u64::from(s.token_count.unwrap_or(0)))
            .sum::<u64>();
        Ok(())
    };
    sampler
        .sample(&prompts, &request, &progress, &mut sink)
        .unwrap();
    assert_eq!(
        *progress.advanced.lock().unwrap(),
        9,
        "3 prompts x 3 samples"
    );
    assert!(
        tokens > 9,
        "the samples have more tokens ({tokens}) than sequences"
    );
    let messages = progress.messages.lock().unwrap();
    assert!(
        messages.iter().all(|m| m.ends_with(" tokens")),
        "{messages:?}"
    );
}
