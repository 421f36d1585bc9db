//! A model's generation_config.json read as transformers and vLLM read it
//! (tests/fixtures/models/qwen25-genconfig and tests/fixtures/processors.json, from
//! scripts/make_generation_fixtures.py): `<|endoftext|>`, listed only there, ends a response
//! where transformers ends it; the repetition penalty and min-p keep what transformers' logit
//! processors keep.

mod common;

use common::{fixture, test_device};
use sweetspot_model::generate::{
    SamplingParams, SeqRequest, generate, penalize, token_probabilities,
};
use sweetspot_model::{GenerationDefaults, Llama, load_causal_lm, resolve_device};

fn reference() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixture("qwen25-genconfig").join("reference.json")).unwrap(),
    )
    .unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

fn greedy(model: &Llama, prompt: &[u32], stop: &[u32], penalty: f32, max_new: usize) -> Vec<u32> {
    let params = SamplingParams {
        repetition_penalty: penalty,
        ..SamplingParams::greedy(max_new)
    };
    let req = SeqRequest::sample(prompt.to_vec(), 0, "p", 0);
    generate(model, &[req], stop, &params, |_| {}).unwrap()[0]
        .tokens
        .clone()
}

#[test]
fn endoftext_from_generation_config_stops_greedy_as_transformers() {
    let r = reference();
    let device = resolve_device(&test_device()).unwrap();
    let dir = fixture("qwen25-genconfig");
    let (model, tok) = load_causal_lm(&dir, &device, Default::default()).unwrap();
    let (eot, im_end) = (
        r["endoftext"].as_u64().unwrap() as u32,
        r["im_end"].as_u64().unwrap() as u32,
    );
    // config.json names <|im_end|> only; generation_config.json adds <|endoftext|>.
    assert_eq!(model.config.eos_ids(), vec![im_end]);
    assert!(tok.stop_ids().contains(&eot) && tok.stop_ids().contains(&im_end));
    let defaults = GenerationDefaults::from_dir(&dir).unwrap();
    assert_eq!(defaults.eos_ids, vec![im_end, eot]);
    assert_eq!(defaults.repetition_penalty, Some(1.05));

    let prompt = tok
        .encode_prompt(&sweetspot_core::Prompt::from_content(
            sweetspot_core::PromptContent::Chat(
                serde_json::from_value(r["messages"].clone()).unwrap(),
            ),
        ))
        .unwrap();
    assert_eq!(prompt, ids(&r["prompt_ids"]), "chat rendering");
    let max_new = r["max_new_tokens"].as_u64().unwrap() as usize;
    let stop = tok.stop_ids().to_vec();
    // Greedy with the file's repetition penalty, as transformers' generate() reads it.
    assert_eq!(
        greedy(&model, &prompt, &stop, 1.05, max_new),
        ids(&r["greedy_generation_config"])
    );
    // generation_config = "vllm": no penalty, the end tokens stay.
    assert_eq!(
        greedy(&model, &prompt, &stop, 1.0, max_new),
        ids(&r["greedy_no_penalty"])
    );
    // Reading config.json alone runs past <|endoftext|>.
    assert_eq!(
        greedy(&model, &prompt, &[im_end], 1.0, max_new),
        ids(&r["greedy_no_penalty_no_stop"])
    );
    // A strong penalty changes the path exactly as transformers' processor does.
    assert_eq!(
        greedy(&model, &prompt, &[], 1.5, max_new),
        ids(&r["greedy_penalty_1_5_no_stop"])
    );
}

/// Seeded sampling: with the file's end tokens each sample is the one drawn without them, cut
/// at its first end token, so it stops exactly where transformers and vLLM stop.
#[test]
fn seeded_samples_stop_at_the_first_end_token() {
    let device = resolve_device(&test_device()).unwrap();
    let dir = fixture("qwen25-genconfig");
    let (model, tok) = load_causal_lm(&dir, &device, Default::default()).unwrap();
    let r = reference();
    let prompt = ids(&r["prompt_ids"]);
    let eot = r["endoftext"].as_u64().unwrap() as u32;
    let params = SamplingParams {
        repetition_penalty: 1.05,
        ..SamplingParams::new(0.7, 0.8, 20, 24)
    };
    let reqs: Vec<SeqRequest> = (0..12)
        .map(|s| SeqRequest::sample(prompt.clone(), 5, "p", s))
        .collect();
    let stops = tok.stop_ids().to_vec();
    let short = generate(&model, &reqs, &stops, &params, |_| {}).unwrap();
    let long = generate(&model, &reqs, &[], &params, |_| {}).unwrap();
    let mut ended_on_eot = 0;
    for (s, l) in short.iter().zip(&long) {
        let cut = l
            .tokens
            .iter()
            .position(|t| stops.contains(t))
            .map_or(l.tokens.len(), |i| i + 1);
        assert_eq!(s.tokens, l.tokens[..cut]);
        ended_on_eot += usize::from(s.tokens.last() == Some(&eot));
    }
    assert!(ended_on_eot > 0, "no sample reached <|endoftext|>");
}

/// The probabilities the sampler draws from equal those transformers' processors leave
/// (repetition penalty, temperature, top-k, top-p, min-p in GenerationMixin's order), within
/// 1e-5 absolute.
#[test]
fn processors_match_transformers() {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/processors.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 14);
    let mut penalty_mattered = 0;
    for (i, c) in cases.iter().enumerate() {
        let s = &c["settings"];
        let f = |k: &str| s[k].as_f64().unwrap() as f32;
        let params = SamplingParams {
            repetition_penalty: f("repetition_penalty"),
            min_p: f("min_p"),
            ..SamplingParams::new(
                f("temperature"),
                f("top_p"),
                s["top_k"].as_u64().unwrap() as usize,
                1,
            )
        };
        let mut row: Vec<f32> = c["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        penalize(&mut row, ids(&c["history"]), params.repetition_penalty);
        let got = token_probabilities(&row, &params);
        let want: Vec<f64> = c["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (t, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() < 1e-5,
                "case {i} ({s}): token {t}: {g} vs transformers' {w}"
            );
        }
        // Sensitivity: without min-p (where no other filter already cut as deep), or without
        // the penalty, the distribution differs.
        if params.repetition_penalty != 1.0 {
            let mut raw: Vec<f32> = c["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            penalize(&mut raw, [], params.repetition_penalty);
            let off = token_probabilities(&raw, &params);
            penalty_mattered +=
                usize::from(off.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-4));
        }
        if params.min_p > 0.0 && params.top_p >= 1.0 && params.top_k == 0 {
            let off = token_probabilities(
                &row,
                &SamplingParams {
                    min_p: 0.0,
                    ..params
                },
            );
            assert!(
                off.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-4),
                "case {i}: min_p changes nothing"
            );
        }
    }
    assert!(
        penalty_mattered >= 4,
        "the penalty changed {penalty_mattered} cases"
    );
}
