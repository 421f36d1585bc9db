//! GGUF parsing and dequantization against gguf-py (fixtures from
//! `scripts/make_gguf_fixtures.py`): every supported type, random blocks, exact f32 equality.

mod common;

use std::path::PathBuf;

use common::logits_alone;
use sweetspot_model::gguf::Gguf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn dequantization_matches_gguf_py() {
    let gguf = Gguf::open(&fixtures().join("quants.gguf")).unwrap();
    let expected = std::fs::read(fixtures().join("quants_expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&expected).unwrap();
    let mut checked = 0;
    for (name, view) in st.tensors() {
        let want: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let info = &gguf.tensors[&name];
        assert_eq!(info.dims, vec![512, 4], "{name}");
        let got = gguf.dequantize(&name).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let bad = got.iter().zip(&want).position(|(a, b)| {
            a.to_bits() != b.to_bits() && (a - b).abs() > 1e-6 * b.abs().max(1.0)
        });
        assert!(
            bad.is_none(),
            "{name}: element {:?} differs",
            bad.map(|i| (i, got[i], want[i]))
        );
        checked += 1;
    }
    assert_eq!(checked, 8);
}

#[test]
fn truncated_or_foreign_files_are_clean_errors() {
    let bytes = std::fs::read(fixtures().join("quants.gguf")).unwrap();
    let p = std::path::Path::new("cut.gguf");
    let err = Gguf::parse(p, bytes[..100].to_vec())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );
    let err = Gguf::parse(p, b"not a gguf file at all".to_vec())
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad magic"), "{err}");
    // Tensor data cut off: refused when the header is read, naming the tensor whose extent
    // the file cannot back (nothing is allocated from its dimensions).
    let err = Gguf::parse(p, bytes[..bytes.len() - 100].to_vec())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor `t.bf16`") && err.contains("past the end of the file"),
        "{err}"
    );
}

/// A SentencePiece (`llama` type) GGUF, as Mistral and Llama-2 files have
/// (`scripts/make_spm_gguf_fixture.py`): its tokenizer encodes a test corpus (accents, CJK,
/// emoji, digits, runs of spaces, newlines, special and user-defined tokens inline) exactly as
/// transformers' GGUF loader does, with and without the BOS the file asks for, and decodes back
/// as it does; the chat template renders the same ids; the model's logits match (1e-4).
#[test]
fn sentencepiece_gguf_matches_transformers() {
    use sweetspot_core::Message;
    use sweetspot_model::{Llama, Tokenizer, resolve_device};
    let path = fixtures().join("spm.gguf");
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("spm_reference.json")).unwrap(),
    )
    .unwrap();
    let gguf = Gguf::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&gguf, &path).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let cases = r["cases"].as_array().unwrap();
    assert!(cases.len() >= 17);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), ids(&c["ids"]), "{text:?}");
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&c["ids_with_special"]),
            "{text:?} with BOS"
        );
        assert_eq!(
            tok.decode(&ids(&c["ids"]), false).unwrap(),
            c["decoded"].as_str().unwrap(),
            "{text:?} decoded"
        );
    }
    let messages: Vec<Message> = serde_json::from_value(r["messages"].clone()).unwrap();
    assert_eq!(
        tok.render_chat(&messages, false).unwrap(),
        r["chat"].as_str().unwrap()
    );
    let chat_ids = ids(&r["chat_ids"]);
    assert_eq!(tok.encode_messages(&messages, false).unwrap(), chat_ids);

    let device = resolve_device("cpu").unwrap();
    let model = Llama::from_gguf(&gguf, &device).unwrap();
    let got = logits_alone(&model, &chat_ids);
    let want: Vec<f32> = r["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "logits differ by {worst}");
}

/// GGUF copies of the family fixtures (`scripts/make_family_gguf_fixtures.py`, llama.cpp's
/// layout) give the safetensors fixtures' transformers logits within 1e-4: Qwen2 (q/k/v biases,
/// rows as stored), Qwen3 (q/k norms, key_length), and Llama-3.1 with llama.cpp's `rope_freqs`
/// factors in place of `rope_scaling`. Such a model cannot be exported (a config.json could not
/// say it), and a tensor the model has no place for is refused by name.
#[test]
fn family_ggufs_match_the_safetensors_references() {
    use sweetspot_model::{Llama, resolve_device};
    let device = resolve_device("cpu").unwrap();
    for (file, fixture) in [
        ("qwen2.gguf", "qwen2"),
        ("qwen3.gguf", "qwen3"),
        ("llama31-rope-freqs.gguf", "llama31"),
    ] {
        let dir = fixtures().join("models").join(fixture);
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let prompt: Vec<u32> = r["prompts"][1]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let refs = std::fs::read(dir.join("reference.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&refs).unwrap();
        let want: Vec<f32> = st
            .tensor("logits_1")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let gguf = Gguf::open(&fixtures().join("gguf").join(file)).unwrap();
        let model = Llama::from_gguf(&gguf, &device).unwrap();
        assert_eq!(model.config.model_type, fixture.trim_end_matches("31"));
        let got = logits_alone(&model, &prompt);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{file}: logits differ by {worst}");
        if fixture == "llama31" {
            assert!(model.config.rope_freqs.is_some());
            let tmp = tempfile::tempdir().unwrap();
            let tok_dir = fixtures().join("models/policy");
            let tok = sweetspot_model::Tokenizer::from_dir(&tok_dir, &[]).unwrap();
            let err = model
                .save_pretrained(tmp.path(), &tok)
                .unwrap_err()
                .to_string();
            assert!(err.contains("rope_freqs"), "{err}");
        }
    }
    // A tensor with no place in the model (here: a bias on a Qwen3 output projection that the
    // metadata does not announce) is refused by name, not skipped.
    let path = fixtures().join("gguf/qwen3.gguf");
    let mut gguf = Gguf::open(&path).unwrap();
    let mut extra = gguf.tensors["output_norm.weight"].clone();
    extra.name = "blk.0.attn_output.bias".into();
    gguf.tensors.insert(extra.name.clone(), extra);
    let err = Llama::from_gguf(&gguf, &device).unwrap_err().to_string();
    assert!(err.contains("blk.0.attn_output.bias"), "{err}");
}
