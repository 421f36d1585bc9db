//! The model's generation config fills what a recipe leaves unset (`generation_config = "auto"`),
//! never what it sets; `"vllm"` ignores it except for its end tokens; bad values are refused by
//! key; a Qwen2.5-style model stops at `<|endoftext|>` from generation_config.json.

use sweetspot_burn_sampler::BurnSamplerConfig;
use sweetspot_core::{
    BuildContext, NoProgress, Prompt, PromptContent, SampleRequest, SamplerConfig,
};
use sweetspot_model::GenerationDefaults;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model() -> std::path::PathBuf {
    root().join("tests/fixtures/models/qwen25-genconfig")
}

fn config(extra: &str) -> BurnSamplerConfig {
    toml::from_str(&format!(
        "model = {:?}\nmax_new_tokens = 12\n{extra}",
        model()
    ))
    .unwrap()
}

#[test]
fn unset_settings_come_from_the_model_set_ones_from_the_recipe() {
    let defaults = GenerationDefaults::from_dir(&model()).unwrap();
    let (p, line) = config("").resolve(&defaults);
    assert_eq!(
        (
            p.temperature,
            p.top_p,
            p.top_k,
            p.repetition_penalty,
            p.min_p
        ),
        (0.7, 0.8, 20, 1.05, 0.0)
    );
    assert!(
        line.contains("temperature 0.7 (generation_config.json)")
            && line.contains("min_p 0 (default)"),
        "{line}"
    );
    let (p, line) = config("temperature = 0.0\ntop_k = 0\nmin_p = 0.1").resolve(&defaults);
    assert_eq!(
        (
            p.temperature,
            p.top_p,
            p.top_k,
            p.repetition_penalty,
            p.min_p
        ),
        (0.0, 0.8, 0, 1.05, 0.1)
    );
    assert!(line.contains("temperature 0 (recipe)"), "{line}");
    let (p, line) = config("generation_config = \"vllm\"").resolve(&defaults);
    assert_eq!(
        (
            p.temperature,
            p.top_p,
            p.top_k,
            p.repetition_penalty,
            p.min_p
        ),
        (0.8, 1.0, 0, 1.0, 0.0)
    );
    assert!(line.contains("temperature 0.8 (default)"), "{line}");
}

#[test]
fn bad_settings_are_refused_by_key() {
    let ctx = BuildContext::new(root());
    for (extra, key) in [
        ("repetition_penalty = 0.0", "repetition_penalty"),
        ("min_p = 1.5", "min_p"),
        ("temperature = -1.0", "temperature"),
    ] {
        let e = config(extra).check(&ctx).unwrap_err();
        assert_eq!(e.key, key, "{extra}");
    }
    let e = toml::from_str::<BurnSamplerConfig>(&format!(
        "model = {:?}\ngeneration_config = \"hf\"",
        model()
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("auto") && e.contains("vllm"), "{e}");
}

/// Greedy through the plugin: the response ends at `<|endoftext|>` (listed only in
/// generation_config.json) with finish reason `stop`, as transformers' greedy tokens do.
#[test]
fn greedy_stops_at_the_generation_config_end_token() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model().join("reference.json")).unwrap())
            .unwrap();
    let want = reference["greedy_generation_config"]
        .as_array()
        .unwrap()
        .len();
    let ctx = BuildContext::new(root());
    let mut sampler = config("temperature = 0.0").build(&ctx).unwrap();
    let prompt = Prompt {
        id: "p".into(),
        content: PromptContent::Chat(
            serde_json::from_value(reference["messages"].clone()).unwrap(),
        ),
    };
    let mut groups = Vec::new();
    sampler
        .sample(
            &[prompt],
            &SampleRequest {
                n: 1,
                seed: 0,
                first_index: 0,
            },
            &NoProgress,
            &mut |g| {
                groups.push(g);
                Ok(())
            },
        )
        .unwrap();
    let s = &groups[0].samples[0];
    assert_eq!(s.token_count, Some(want as u32));
    assert_eq!(s.finish_reason, Some(sweetspot_core::FinishReason::Stop));
}

/// A generation_config.json with a value out of range is refused when the recipe is checked,
/// naming the file and the field.
#[test]
fn a_bad_generation_config_is_refused_before_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        std::fs::copy(model().join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("generation_config.json"), r#"{"top_p": 0}"#).unwrap();
    let cfg: BurnSamplerConfig = toml::from_str(&format!("model = {dir:?}")).unwrap();
    let e = cfg.check(&BuildContext::new(root())).unwrap_err();
    assert_eq!(e.key, "model");
    assert!(
        e.message.contains("generation_config.json") && e.message.contains("field `top_p`"),
        "{}",
        e.message
    );
}
