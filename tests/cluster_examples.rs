//! The paper's full-parameter grid in cluster form (examples/recipes/paper-grid-full.toml,
//! TRL under DeepSpeed ZeRO-3): the Slurm script and Argo workflow committed beside it in
//! examples/recipes/cluster/paper-grid-full/ are what `sweetspot run --emit slurm|argo` writes
//! for a fresh run of it. The test emits them again from a scratch tree (the recipes, the 8B
//! models' `config.json` alone, a fixed three-prompt file) and compares byte for byte, so the
//! committed copies cannot drift. `SWEETSPOT_BLESS=1` rewrites them instead.

mod common;

use std::path::Path;

use common::*;

/// The scratch tree's prompts (node ids cover the prompts file's bytes).
const PROMPTS: &str = "{\"prompt_id\": \"p0\", \"prompt\": \"Write a haiku about the sea.\"}\n\
{\"prompt_id\": \"p1\", \"prompt\": \"Explain photosynthesis to a child.\"}\n\
{\"prompt_id\": \"p2\", \"prompt\": \"Give three tips for a job interview.\"}\n";

/// Every file under `dir`, by path relative to it.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_committed_slurm_script_and_argo_workflow_are_what_emit_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let recipes = config_only_tree(tmp.path(), &MODELS);
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    std::fs::write(tmp.path().join("data/ultrafeedback-prompts.jsonl"), PROMPTS).unwrap();
    let recipe = recipes.join("paper-grid-full.toml");
    for kind in ["slurm", "argo"] {
        let o = sweetspot([
            "run".as_ref(),
            "--emit".as_ref(),
            kind.as_ref(),
            recipe.as_os_str(),
        ]);
        assert_ok(&o);
    }
    let run = recipes.join("runs/paper-grid-full");
    let mut emitted = tree(&run.join("slurm"));
    emitted.retain(|(p, _)| !p.starts_with("logs"));
    let mut emitted: Vec<(String, Vec<u8>)> = emitted
        .into_iter()
        .map(|(p, b)| (format!("slurm/{p}"), b))
        .chain(
            tree(&run.join("argo"))
                .into_iter()
                .map(|(p, b)| (format!("argo/{p}"), b)),
        )
        .collect();
    emitted.sort();
    // No path of this machine in them.
    let scratch = tmp.path().to_string_lossy().into_owned();
    for (p, b) in &emitted {
        assert!(
            !String::from_utf8_lossy(b).contains(&scratch),
            "{p} names the scratch folder"
        );
    }
    let committed = example("recipes/cluster/paper-grid-full");
    if std::env::var_os("SWEETSPOT_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&committed);
        for (p, b) in &emitted {
            let to = committed.join(p);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(to, b).unwrap();
        }
        return;
    }
    let mut have = tree(&committed);
    have.retain(|(p, _)| p != "README.md");
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&have),
        names(&emitted),
        "rerun with SWEETSPOT_BLESS=1 to rewrite examples/recipes/cluster/paper-grid-full"
    );
    for ((p, a), (_, b)) in have.iter().zip(&emitted) {
        assert!(
            a == b,
            "{p} differs from what `--emit` writes now; rerun with SWEETSPOT_BLESS=1 to \
             rewrite it:\n{}",
            String::from_utf8_lossy(b)
        );
    }
    // The grid's trainings hold the 8 GPUs of their accelerate config, in one job array.
    let submit = String::from_utf8_lossy(
        &emitted[emitted
            .iter()
            .position(|(p, _)| p == "slurm/submit.sh")
            .unwrap()]
        .1,
    )
    .into_owned();
    let train: Vec<&str> = submit
        .lines()
        .filter(|l| l.contains("sweetspot-train"))
        .collect();
    assert_eq!(train.len(), 1, "{submit}");
    assert!(
        train[0].contains("--gres=gpu:8") && train[0].contains("--array=0-20"),
        "{submit}"
    );
}
