//! The config-key rule (docs/models.md) on files other tools wrote
//! (tests/fixtures/configs, from scripts/make_config_fixtures.py): every config transformers 4
//! and 5 save (`to_dict()`, `save_pretrained`'s `to_diff_dict()`), transformers' GGUF conversion
//! and unsloth's loads, because each of its keys is implemented, metadata, or at its neutral
//! value; the same keys at a value that would change the computation are refused by name.

use std::path::{Path, PathBuf};

use sweetspot_model::{GenerationDefaults, LlamaConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/configs")
}

fn files(pattern: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| pattern(&p.file_name().unwrap().to_string_lossy()))
        .collect();
    out.sort();
    out
}

fn load(path: &Path) -> Result<LlamaConfig, String> {
    let text = std::fs::read_to_string(path).unwrap();
    LlamaConfig::from_json(&text, path).map_err(|e| e.to_string())
}

#[test]
fn configs_saved_by_other_tools_load() {
    let configs = files(|n| n.ends_with(".json") && !n.contains("generation"));
    // 4 families x 2 ways x 2 transformers majors, the GGUF conversion and unsloth (x 2).
    assert_eq!(configs.len(), 20, "{configs:?}");
    for path in &configs {
        let cfg = load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("gguf-smollm2") {
            assert_eq!(
                (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers),
                (49152, 576, 30)
            );
            assert_eq!(cfg.max_position_embeddings, 8192);
            assert_eq!(cfg.eos_ids(), vec![2]);
        } else {
            assert_eq!(
                (cfg.vocab_size, cfg.hidden_size, cfg.kv_heads()),
                (256, 64, 2)
            );
            assert_eq!(cfg.eos_ids(), vec![2], "{name}");
        }
    }
}

/// transformers 4's to_dict() writes its generation defaults (temperature 1.0, top_k 50, ...)
/// into config.json: they are not the model author's choice and set nothing.
#[test]
fn legacy_generation_keys_set_no_defaults() {
    for path in files(|n| n.ends_with("-t4.json") && !n.contains("generation")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let g = GenerationDefaults::from_json(&text, &path, true).unwrap();
        assert_eq!(
            g,
            GenerationDefaults::default(),
            "{}: legacy defaults read as choices",
            path.display()
        );
    }
    for path in files(|n| n.contains("generation")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let g = GenerationDefaults::from_json(&text, &path, false).unwrap();
        assert_eq!(g.eos_ids, vec![2], "{}", path.display());
        assert_eq!((g.temperature, g.top_k, g.top_p), (None, None, None));
    }
}

/// The neutral keys at another value change what a model computes: refused, naming the key.
#[test]
fn known_keys_at_other_values_are_refused_by_name() {
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("llama-to_dict-t4.json")).unwrap(),
    )
    .unwrap();
    for (key, value) in [
        ("pruned_heads", serde_json::json!({"0": [1]})),
        ("add_cross_attention", serde_json::json!(true)),
        ("tie_encoder_decoder", serde_json::json!(true)),
        ("chunk_size_feed_forward", serde_json::json!(4)),
        ("cross_attention_hidden_size", serde_json::json!(64)),
        ("use_mrope", serde_json::json!(true)),
        ("is_encoder_decoder", serde_json::json!(true)),
        ("attention_dropout", serde_json::json!(0.1)),
        ("quantization_config", serde_json::json!({"bits": 4})),
        ("some_future_key", serde_json::json!(1)),
    ] {
        let mut v = base.clone();
        v[key] = value.clone();
        let e = LlamaConfig::from_json(&v.to_string(), Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("field `{key}`")) && e.contains("config.json"),
            "{key} = {value}: {e}"
        );
    }
    // Metadata at any value loads.
    let mut v = base.clone();
    v["unsloth_fixed"] = serde_json::json!(true);
    v["_model_name_or_path"] = serde_json::json!("x");
    v["unk_token_id"] = serde_json::json!(0);
    v["torchscript"] = serde_json::json!(true);
    v["is_decoder"] = serde_json::json!(true);
    v["use_mrope"] = serde_json::json!(false);
    LlamaConfig::from_json(&v.to_string(), Path::new("config.json")).unwrap();
}

/// docs/models.md names every key the rule accepts, so the list users read cannot drift.
#[test]
fn docs_list_every_accepted_key() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/models.md"))
            .unwrap();
    let keys = sweetspot_model::config::NO_EFFECT_KEYS
        .iter()
        .map(|(k, _)| *k)
        .chain(sweetspot_model::config::GENERATION_KEYS.iter().copied())
        .chain(
            sweetspot_model::config::FIXED_KEYS
                .iter()
                .map(|(k, _, _)| *k),
        );
    for key in keys {
        assert!(
            doc.contains(&format!("`{key}`")),
            "docs/models.md does not name `{key}`"
        );
    }
}
