//! `max_batch_tokens` bounds the batch without changing a sample, and a prompt that needs more
//! than it alone is refused before the model loads, by prompt.

use sweetspot_burn_sampler::BurnSamplerConfig;
use sweetspot_core::{
    BuildContext, NoProgress, Prompt, PromptContent, SampleGroup, SampleRequest, SamplerConfig,
};

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn config(extra: &str) -> BurnSamplerConfig {
    toml::from_str(&format!(
        "model = {:?}\ntemperature = 1.0\nmax_new_tokens = 10\nbatch_size = 6\n{extra}",
        root().join("tests/fixtures/models/policy")
    ))
    .unwrap()
}

fn prompts(texts: &[&str]) -> Vec<Prompt> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| Prompt {
            id: format!("p{i}"),
            content: PromptContent::Text(t.to_string()),
        })
        .collect()
}

fn sample(cfg: &BurnSamplerConfig, prompts: &[Prompt]) -> Vec<SampleGroup> {
    let ctx = BuildContext::new(root());
    let mut sampler = cfg.build(&ctx).unwrap();
    let request = SampleRequest {
        n: 4,
        seed: 5,
        first_index: 0,
    };
    let mut groups = Vec::new();
    sampler
        .sample(prompts, &request, &NoProgress, &mut |g| {
            groups.push(g);
            Ok(())
        })
        .unwrap();
    groups.sort_by(|a, b| a.prompt.id.cmp(&b.prompt.id));
    groups
}

#[test]
fn a_token_budget_changes_no_sample() {
    let ps = prompts(&["a short one", "and a somewhat longer prompt than that", "x"]);
    let free = sample(&config(""), &ps);
    // Room for about two sequences at a time.
    let bounded = sample(&config("max_batch_tokens = 90"), &ps);
    assert_eq!(free.len(), 3);
    for (a, b) in free.iter().zip(&bounded) {
        let ra: Vec<_> = a.samples.iter().map(|s| &s.response).collect();
        let rb: Vec<_> = b.samples.iter().map(|s| &s.response).collect();
        assert_eq!(ra, rb, "prompt {}", a.prompt.id);
    }
}

#[test]
fn a_prompt_beyond_the_budget_is_refused_by_prompt() {
    let ps = prompts(&["hi", &"many words here ".repeat(20)]);
    let cfg = config("max_batch_tokens = 60");
    let ctx = BuildContext::new(root());
    let (i, message) = cfg.check_prompts(&ctx, &ps).unwrap_err();
    assert_eq!(i, 1);
    assert!(message.contains("max_batch_tokens = 60"), "{message}");
}

/// `quantize = "q8_0"` samples through the 8-bit model (the samples are the sampler's own:
/// drawn again, they are the same), and what it cannot run is refused by key before anything
/// loads: other float types, other devices.
#[test]
fn quantize_runs_on_the_cpu_in_f32_and_is_refused_elsewhere() {
    let ps = prompts(&["a short one", "x"]);
    let q8 = config("quantize = \"q8_0\"");
    let first = sample(&q8, &ps);
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|g| g.samples.len() == 4));
    let again = sample(&q8, &ps);
    for (a, b) in first.iter().zip(&again) {
        let ra: Vec<_> = a.samples.iter().map(|s| (&s.response, s.logprob)).collect();
        let rb: Vec<_> = b.samples.iter().map(|s| (&s.response, s.logprob)).collect();
        assert_eq!(ra, rb);
    }
    let ctx = BuildContext::new(root());
    for (extra, words) in [
        ("quantize = \"q8_0\"\ndtype = \"bf16\"", "takes f32 weights"),
        ("quantize = \"q8_0\"\ndevice = \"wgpu\"", "CPU only"),
    ] {
        let issue = config(extra).check(&ctx).unwrap_err();
        assert_eq!(issue.key, "quantize", "{extra}");
        assert!(issue.to_string().contains(words), "{extra}: {issue}");
    }
    assert!(toml::from_str::<BurnSamplerConfig>("model = \"m\"\nquantize = \"q4\"").is_err());
}
