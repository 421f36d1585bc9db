//! The third-party strategy is listed by its binary and produces pairs from a recipe.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sweetspot-quantile"))
}

#[test]
fn quantile_is_registered_beside_the_builtins() {
    let out = bin().args(["plugins", "--json"]).output().unwrap();
    assert!(out.status.success());
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list.iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(names.contains(&"quantile"), "{names:?}");
    assert!(names.contains(&"grid"), "{names:?}");
    let q = list.iter().find(|p| p["name"] == "quantile").unwrap();
    assert_eq!(q["kind"], "pair-strategy");
    assert_eq!(q["crate_name"], "sweetspot-quantile");
}

#[test]
fn recipe_runs_and_writes_pairs() {
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipe.toml");
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["-q", "pairs", "--json", "--recipe"])
        .arg(&recipe)
        .arg("--output")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let q = &summary["datasets"][0];
    assert_eq!(q["name"], "quantile_1_vs_0.1");
    // 40 prompts, one of them with equal rewards.
    assert_eq!(q["pairs"], 39);
    let text = std::fs::read_to_string(dir.path().join("quantile_1_vs_0.1.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 39);
    for row in &rows {
        assert!(row["score_chosen"].as_f64().unwrap() > row["score_rejected"].as_f64().unwrap());
        assert_eq!(row["chosen"][0]["role"], "assistant");
    }
}

#[test]
fn bad_quantile_is_a_recipe_error() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("bad.toml");
    std::fs::write(
        &recipe,
        "[pairs]\ninput = \"x.jsonl\"\noutput = \"out\"\n\n[[pairs.strategies]]\ntype = \"quantile\"\nchosen = 1.5\n",
    )
    .unwrap();
    let out = bin().arg("validate").arg(&recipe).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a quantile"), "{err}");
}
