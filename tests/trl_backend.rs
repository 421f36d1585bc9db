//! `[train] backend = "trl"`: TRL's `DPOTrainer` through scripts/trl_backend.py on the tiny
//! policy fixture gives the native trainer's metrics within the TRL parity tolerance (the
//! settings of scripts/trl_dpo_reference.py for `sigmoid`: batch = all pairs, constant learning
//! rate, two steps); a key TRL lacks is refused by name before Python runs.
//!
//! Needs Python with trl (`$SWEETSPOT_PYTHON`, else `python3`); skipped with a message without.
//! CI runs it in a venv made from scripts/requirements-trl.txt (.ci/run).

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

/// A `[train]` recipe on the fixture: 4 pairs, batch = all of them, 2 epochs = 2 steps.
fn recipe(dir: &Path, name: &str, extra: &str, loss: &str) -> std::path::PathBuf {
    let policy = root().join("tests/fixtures/models/policy");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[train]\npairs = \"pairs.jsonl\"\npolicy = {policy:?}\noutput = \"{name}\"\n\
             epochs = 2\nbatch_size = 4\nmicro_batch_size = 4\nlearning_rate = 1e-3\n\
             warmup_ratio = 0.0\nschedule = \"constant\"\nweight_decay = 0.01\n\
             max_grad_norm = 1.0\nadam_epsilon = 1e-8\nsave_steps = 1\n{extra}\n\
             [train.loss]\n{loss}\n"
        ),
    )
    .unwrap();
    path
}

fn train(recipe: &Path) -> std::process::Output {
    sweetspot(["train".as_ref(), "--recipe".as_ref(), recipe.as_os_str()])
}

/// `sweetspot train --recipe` with the driver told to stop after `steps` steps.
fn sweetspot_env(recipe: &Path, steps: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sweetspot"))
        .args([
            "-q".as_ref(),
            "train".as_ref(),
            "--recipe".as_ref(),
            recipe.as_os_str(),
        ])
        .env("SWEETSPOT_TRL_STOP_AFTER", steps)
        .output()
        .unwrap()
}

fn python() -> String {
    std::env::var("SWEETSPOT_PYTHON")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// Whether the interpreter imports trl (else the test is skipped, with a message).
fn has_trl() -> bool {
    let ok = std::process::Command::new(python())
        .args([
            "-c",
            "import trl, accelerate, transformers, datasets, torch",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("SWEETSPOT_REQUIRE_TRL").is_some() {
        panic!(
            "SWEETSPOT_REQUIRE_TRL is set and `{}` cannot import trl",
            python()
        );
    }
    if !ok {
        eprintln!(
            "skipped: `{}` cannot import trl (set SWEETSPOT_PYTHON to a venv made from \
             scripts/requirements-trl.txt)",
            python()
        );
    }
    ok
}

const METRICS: &[&str] = &[
    "loss",
    "grad_norm",
    "learning_rate",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
];

#[test]
fn trl_backend_matches_the_native_trainer() {
    if !has_trl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    write_pairs(&tmp.path().join("pairs.jsonl"));
    let loss = "type = \"dpo\"\nbeta = 0.1";
    let o = train(&recipe(tmp.path(), "native", "", loss));
    assert_ok(&o);
    // Stopped after step 1 (as a killed job), then resumed from TRL's checkpoint-1.
    let trl_recipe = recipe(tmp.path(), "trl", "backend = \"trl\"", loss);
    let o = sweetspot_env(&trl_recipe, "1");
    assert_ok(&o);
    assert!(tmp.path().join("trl/checkpoint/checkpoint-1").is_dir());
    assert!(!tmp.path().join("trl/policy").exists());
    assert_eq!(read_jsonl(&tmp.path().join("trl/metrics.jsonl")).len(), 1);
    let o = train(&trl_recipe);
    assert_ok(&o);
    let native = read_jsonl(&tmp.path().join("native/metrics.jsonl"));
    let trl = read_jsonl(&tmp.path().join("trl/metrics.jsonl"));
    assert_eq!(native.len(), 2, "{native:?}");
    assert_eq!(trl.len(), 2, "{trl:?}");
    for (i, (n, t)) in native.iter().zip(&trl).enumerate() {
        assert_eq!(t["step"], serde_json::json!(i + 1), "{t}");
        for k in METRICS {
            let (a, b) = (n[k].as_f64().unwrap(), t[k].as_f64().unwrap_or(f64::NAN));
            assert!(
                (a - b).abs() <= 1e-5 + 1e-4 * a.abs(),
                "step {}: `{k}`: native {a}, TRL {b}",
                i + 1
            );
        }
    }
    let policy = tmp.path().join("trl/policy");
    assert!(policy.join("config.json").is_file());
    assert!(policy.join("model.safetensors").is_file());
    assert!(tmp.path().join("trl/record.json").is_file());
    // A finished run drops its checkpoints, as the native trainer does.
    assert!(!tmp.path().join("trl/checkpoint").exists());
    // A complete run is not run again.
    let o = train(&recipe(tmp.path(), "trl", "backend = \"trl\"", loss));
    assert_ok(&o);
    assert_eq!(read_jsonl(&tmp.path().join("trl/metrics.jsonl")), trl);
}

#[test]
fn keys_trl_lacks_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    write_pairs(&tmp.path().join("pairs.jsonl"));
    let lora = "backend = \"trl\"\n\n[train.adapter]\ntype = \"lora\"\nr = 4\n";
    let err = assert_clean_failure(&train(&recipe(tmp.path(), "a", lora, "type = \"dpo\"")), 2);
    assert!(err.contains("[train.adapter]"), "{err}");
    let err = assert_clean_failure(
        &train(&recipe(
            tmp.path(),
            "b",
            "backend = \"trl\"",
            "type = \"simpo\"",
        )),
        2,
    );
    assert!(err.contains("simpo"), "{err}");
    // A GGUF policy is refused by name.
    let gguf = tmp.path().join("policy.gguf");
    std::fs::write(&gguf, b"GGUF").unwrap();
    let text = std::fs::read_to_string(recipe(
        tmp.path(),
        "c",
        "backend = \"trl\"",
        "type = \"dpo\"",
    ))
    .unwrap()
    .replace(
        &format!("{:?}", root().join("tests/fixtures/models/policy")),
        &format!("{gguf:?}"),
    );
    std::fs::write(tmp.path().join("c.toml"), text).unwrap();
    let err = assert_clean_failure(&train(&tmp.path().join("c.toml")), 2);
    assert!(err.contains("GGUF"), "{err}");
    // A missing interpreter is a clear error naming it.
    let err = assert_clean_failure(
        &train(&recipe(
            tmp.path(),
            "d",
            "backend = \"trl\"\npython = \"/nonexistent/python3\"",
            "type = \"dpo\"",
        )),
        2,
    );
    assert!(err.contains("/nonexistent/python3"), "{err}");
    // A Python without the packages (python3 -S: no site-packages) is refused, naming them.
    if std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let fake = tmp.path().join("bare-python");
        std::fs::write(&fake, "#!/bin/sh\nexec python3 -S \"$@\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = assert_clean_failure(
            &train(&recipe(
                tmp.path(),
                "e",
                &format!("backend = \"trl\"\npython = {fake:?}"),
                "type = \"dpo\"",
            )),
            2,
        );
        assert!(err.contains("missing Python packages:"), "{err}");
        assert!(err.contains("trl"), "{err}");
        assert!(err.contains("requirements-trl.txt"), "{err}");
    }
    // `sweetspot validate` refuses a key TRL lacks by name, before anything runs.
    let o = sweetspot([
        "validate".as_ref(),
        recipe(tmp.path(), "f", "backend = \"trl\"", "type = \"simpo\"").as_os_str(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("simpo"), "{}", stderr(&o));
    for d in ["a", "b", "c", "d", "e", "f"] {
        assert!(!tmp.path().join(d).exists(), "{d} left behind");
    }
}
