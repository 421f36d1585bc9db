//! `sweetspot train` end to end on the tiny policy fixture: TRL-format pairs in, a trained
//! policy out that the native sampler loads; bad input is a clean error.

mod common;

use common::*;
use std::path::Path;

fn write_pairs(path: &Path) {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/dpo/reference.json")).unwrap(),
    )
    .unwrap();
    let text: String = r["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{p}\n"))
        .collect();
    std::fs::write(path, text).unwrap();
}

fn train(dir: &Path, extra: &[&str]) -> std::process::Output {
    let policy = root().join("tests/fixtures/models/policy");
    let mut args: Vec<std::ffi::OsString> = vec![
        "train".into(),
        "--pairs".into(),
        dir.join("pairs.jsonl").into(),
        "--policy".into(),
        policy.into(),
        "--output".into(),
        dir.join("run").into(),
        "--beta".into(),
        "0.1".into(),
        "--param".into(),
        "batch_size=2".into(),
        "--param".into(),
        "micro_batch_size=1".into(),
        "--param".into(),
        "learning_rate=1e-3".into(),
        "--param".into(),
        "epochs=2".into(),
    ];
    args.extend(extra.iter().map(|s| s.into()));
    sweetspot(args)
}

#[test]
fn trains_exports_and_the_sampler_loads_the_result() {
    let tmp = tempfile::tempdir().unwrap();
    write_pairs(&tmp.path().join("pairs.jsonl"));
    let o = train(tmp.path(), &[]);
    assert_ok(&o);
    assert!(stdout(&o).contains("trained 4 steps"), "{}", stdout(&o));
    let run = tmp.path().join("run");
    let metrics = read_jsonl(&run.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 4);
    assert!(
        metrics[3]["rewards/margins"].as_f64().unwrap() > 0.0,
        "{:?}",
        metrics[3]
    );
    // The reference log-probabilities were cached beside the pairs.
    assert!(
        files(tmp.path())
            .iter()
            .any(|f| f.starts_with("pairs.jsonl.ref-")),
        "{:?}",
        files(tmp.path())
    );
    std::fs::write(
        tmp.path().join("prompts.jsonl"),
        "{\"prompt_id\": \"a\", \"prompt\": \"What is the capital of France?\"}\n",
    )
    .unwrap();
    let o = sweetspot([
        "generate".as_ref(),
        "-m".as_ref(),
        run.join("policy").as_os_str(),
        "-p".as_ref(),
        tmp.path().join("prompts.jsonl").as_os_str(),
        "-n".as_ref(),
        "1".as_ref(),
        "--temperature".as_ref(),
        "0".as_ref(),
        "--max-new-tokens".as_ref(),
        "6".as_ref(),
        "-o".as_ref(),
        tmp.path().join("samples.jsonl").as_os_str(),
    ]);
    assert_ok(&o);
    assert_eq!(read_jsonl(&tmp.path().join("samples.jsonl")).len(), 1);
}

#[test]
fn bad_pairs_and_settings_are_clean_errors() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("pairs.jsonl"),
        "{\"prompt\": \"hi\", \"chosen\": \"hello\", \"rejected\": \"go\"}\n{\"prompt\": \"hi\", \"chosen\": \"x\"}\n",
    )
    .unwrap();
    let err = assert_clean_failure(&train(tmp.path(), &[]), 1);
    assert!(
        err.contains("pairs.jsonl:2: field `rejected`: missing"),
        "{err}"
    );
    assert!(!tmp.path().join("run").exists());
    let err = assert_clean_failure(&train(tmp.path(), &["--param", "warmup_ratio=2.0"]), 2);
    assert!(err.contains("warmup_ratio"), "{err}");
    let err = assert_clean_failure(&train(tmp.path(), &["--loss", "dpoo"]), 2);
    assert!(err.contains("dpo"), "{err}");
}

/// `sweetspot train --recipe` with `[train.adapter]`: a PEFT adapter folder naming the base by
/// its absolute path, which `sweetspot generate` loads as a model (base + adapter).
#[test]
fn a_lora_recipe_exports_an_adapter_that_generate_loads() {
    let tmp = tempfile::tempdir().unwrap();
    write_pairs(&tmp.path().join("pairs.jsonl"));
    let policy = root().join("tests/fixtures/models/policy");
    std::fs::write(
        tmp.path().join("recipe.toml"),
        format!(
            "[train]\npairs = \"pairs.jsonl\"\npolicy = {policy:?}\noutput = \"run\"\n\
             batch_size = 2\nmicro_batch_size = 1\nlearning_rate = 1e-3\n\n\
             [train.loss]\ntype = \"dpo\"\nbeta = 0.1\n\n\
             [train.adapter]\ntype = \"lora\"\nr = 4\ntarget_modules = [\"q_proj\", \"v_proj\"]\n"
        ),
    )
    .unwrap();
    let o = sweetspot([
        "train".as_ref(),
        "--recipe".as_ref(),
        tmp.path().join("recipe.toml").as_os_str(),
    ]);
    assert_ok(&o);
    let out = tmp.path().join("run/policy");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    assert!(
        std::path::Path::new(config["base_model_name_or_path"].as_str().unwrap()).is_absolute()
    );
    std::fs::write(
        tmp.path().join("prompts.jsonl"),
        "{\"prompt_id\": \"a\", \"prompt\": \"What is the capital of France?\"}\n",
    )
    .unwrap();
    let o = sweetspot([
        "generate".as_ref(),
        "-m".as_ref(),
        out.as_os_str(),
        "-p".as_ref(),
        tmp.path().join("prompts.jsonl").as_os_str(),
        "-n".as_ref(),
        "1".as_ref(),
        "--temperature".as_ref(),
        "0".as_ref(),
        "--max-new-tokens".as_ref(),
        "6".as_ref(),
        "-o".as_ref(),
        tmp.path().join("samples.jsonl").as_os_str(),
    ]);
    assert_ok(&o);
    assert_eq!(read_jsonl(&tmp.path().join("samples.jsonl")).len(), 1);
}
