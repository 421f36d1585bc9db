//! Chat templates rendered by minijinja exactly as transformers renders them
//! (`scripts/make_template_fixtures.py` -> `tests/fixtures/templates/reference.json`): ChatML
//! templates in the style of the Qwen2.5 and Qwen3 families, with the Jinja features those use
//! and the Llama ones do not (a default system prompt, an untaken `tools` branch, `namespace()`,
//! `messages[::-1]`, Python string methods, `is string` / `is defined`, `in` on strings,
//! `loop.last`, an undefined `enable_thinking`), with and without the generation prompt.

use std::path::PathBuf;

use sweetspot_core::Message;
use sweetspot_model::tokenizer::render_template;

#[test]
fn chatml_templates_render_as_transformers_does() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/templates/reference.json");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = r["cases"].as_array().unwrap();
    assert!(cases.len() >= 24);
    let mut differing_renders = std::collections::BTreeSet::new();
    for (i, c) in cases.iter().enumerate() {
        let name = c["template"].as_str().unwrap();
        let template = r["templates"][name].as_str().unwrap();
        let messages: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
        let generation = c["add_generation_prompt"].as_bool().unwrap();
        let got = render_template(template, &messages, generation, None, None).unwrap();
        let want = c["text"].as_str().unwrap();
        assert_eq!(
            got, want,
            "case {i} ({name}, generation prompt {generation})"
        );
        differing_renders.insert(want.to_string());
    }
    // The cases are not alike (the two templates agree only where a conversation has a system
    // turn and no reasoning): 22 distinct texts of 24.
    assert!(differing_renders.len() >= 22, "{}", differing_renders.len());
}
