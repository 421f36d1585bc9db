//! Resume checks what it resumes. For every resumable stage: a killed run rerun with other
//! settings or inputs is refused, naming what changed, and leaves the earlier work untouched;
//! `--restart` discards it and starts over; a finished stage rerun as it was says "already
//! complete" and does nothing; a finished run is never silently extended.
//!
//! The kills are the states a killed run leaves (its partial output beside a record that is not
//! complete); the real-process kills are in tests/score.rs and crates/sweetspot-train.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn policy() -> PathBuf {
    root().join("tests/fixtures/models/policy")
}

fn args(v: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<std::ffi::OsString> {
    v.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// Turns a finished stage's record into the one a killed run leaves (not complete).
fn mark_incomplete(record: &Path) {
    let mut r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record).unwrap()).unwrap();
    r["complete"] = serde_json::Value::Null;
    std::fs::write(record, r.to_string()).unwrap();
}

fn generate(dir: &Path, out: &str, temperature: &str, extra: &[&str]) -> std::process::Output {
    let mut a = args(&[
        &"generate",
        &"-m",
        &policy(),
        &"-p",
        &dir.join("prompts.jsonl"),
        &"-o",
        &dir.join(out),
        &"-n",
        &"3",
        &"--max-new-tokens",
        &"6",
        &"--temperature",
        &temperature,
    ]);
    a.extend(extra.iter().map(Into::into));
    sweetspot(a)
}

#[test]
fn generate_refuses_to_resume_other_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("prompts.jsonl"),
        "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n{\"prompt\": \"c\"}\n",
    )
    .unwrap();
    assert_ok(&generate(dir, "s.jsonl", "0.8", &[]));
    let full = std::fs::read_to_string(dir.join("s.jsonl")).unwrap();

    // Rerun as it was: already complete, nothing rewritten.
    let o = generate(dir, "s.jsonl", "0.8", &[]);
    assert_ok(&o);
    assert!(stdout(&o).contains("already complete"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("resumed"), "{}", stdout(&o));

    // Killed after one prompt, rerun at temperature 0: refused, naming the change.
    let first: String = full.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::remove_file(dir.join("s.jsonl")).unwrap();
    std::fs::write(dir.join("s.jsonl.partial"), &first).unwrap();
    mark_incomplete(&dir.join("s.jsonl.record.json"));
    let o = generate(dir, "s.jsonl", "0", &[]);
    let err = assert_clean_failure(&o, 2);
    assert!(
        err.contains("`sampler.temperature` was 0.8") && err.contains("is now 0"),
        "{err}"
    );
    assert!(err.contains("--restart"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("s.jsonl.partial")).unwrap(),
        first,
        "the earlier work is untouched"
    );
    assert!(!dir.join("s.jsonl").exists());

    // The same settings resume it, to the rows of an uninterrupted run.
    let o = generate(dir, "s.jsonl", "0.8", &[]);
    assert_ok(&o);
    assert!(stdout(&o).contains("1 resumed"), "{}", stdout(&o));
    assert_eq!(std::fs::read_to_string(dir.join("s.jsonl")).unwrap(), full);

    // A complete output with other settings is not replaced without --restart either.
    let o = generate(dir, "s.jsonl", "0", &[]);
    assert_clean_failure(&o, 2);
    assert_eq!(std::fs::read_to_string(dir.join("s.jsonl")).unwrap(), full);
    let o = generate(dir, "s.jsonl", "0", &["--restart"]);
    assert_ok(&o);
    assert_ok(&generate(dir, "greedy.jsonl", "0", &[]));
    assert_eq!(
        std::fs::read_to_string(dir.join("s.jsonl")).unwrap(),
        std::fs::read_to_string(dir.join("greedy.jsonl")).unwrap()
    );

    // Changed prompts are named too.
    std::fs::remove_file(dir.join("s.jsonl")).unwrap();
    std::fs::write(dir.join("s.jsonl.partial"), "").unwrap();
    mark_incomplete(&dir.join("s.jsonl.record.json"));
    std::fs::write(dir.join("prompts.jsonl"), "{\"prompt\": \"z\"}\n").unwrap();
    let err = assert_clean_failure(&generate(dir, "s.jsonl", "0", &[]), 2);
    assert!(err.contains("input `prompts` has changed"), "{err}");
}

fn write_samples(path: &Path) {
    let mut text = String::new();
    for p in 0..4 {
        for s in 0..2 {
            text.push_str(&format!(
                "{{\"prompt_id\": \"p{p}\", \"prompt\": \"question {p}\", \"sample_index\": {s}, \"response\": \"answer {p}.{s}\"}}\n"
            ));
        }
    }
    std::fs::write(path, text).unwrap();
}

fn score(dir: &Path, groups_per_call: &str, extra: &[&str]) -> std::process::Output {
    let recipe = dir.join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            "[reward]\ntype = \"seq-cls\"\nmodel = {:?}\n\n[score]\ninput = \"samples.jsonl\"\n\
             output = \"scored.jsonl\"\ngroups_per_call = {groups_per_call}\n",
            root().join("tests/fixtures/models/seq-cls")
        ),
    )
    .unwrap();
    let mut a = args(&[&"score", &"--recipe", &recipe]);
    a.extend(extra.iter().map(Into::into));
    sweetspot(a)
}

#[test]
fn score_refuses_to_resume_changed_samples_or_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_samples(&dir.join("samples.jsonl"));
    assert_ok(&score(dir, "2", &[]));
    let full = std::fs::read_to_string(dir.join("scored.jsonl")).unwrap();
    let o = score(dir, "2", &[]);
    assert_ok(&o);
    assert!(stdout(&o).contains("already complete"), "{}", stdout(&o));

    // Killed after one call; then the samples file changes.
    let kill = || {
        let first: String = full.lines().take(4).map(|l| format!("{l}\n")).collect();
        let _ = std::fs::remove_file(dir.join("scored.jsonl"));
        std::fs::write(dir.join("scored.jsonl.partial"), &first).unwrap();
        std::fs::write(
            dir.join("scored.jsonl.partial.progress"),
            serde_json::json!({"groups": 2, "samples": 4, "bytes": first.len()}).to_string(),
        )
        .unwrap();
        mark_incomplete(&dir.join("scored.jsonl.record.json"));
    };
    kill();
    let mut changed = std::fs::read_to_string(dir.join("samples.jsonl")).unwrap();
    changed = changed.replace("answer 3.1", "another answer");
    std::fs::write(dir.join("samples.jsonl"), &changed).unwrap();
    let err = assert_clean_failure(&score(dir, "2", &[]), 2);
    assert!(err.contains("input `samples` has changed"), "{err}");
    assert!(dir.join("scored.jsonl.partial").exists());

    // Other call boundaries are a change too.
    write_samples(&dir.join("samples.jsonl"));
    let err = assert_clean_failure(&score(dir, "3", &[]), 2);
    assert!(
        err.contains("`groups_per_call` was 2 and is now 3"),
        "{err}"
    );

    // The same again resumes to the same rows; --restart starts over.
    let o = score(dir, "2", &[]);
    assert_ok(&o);
    assert!(stdout(&o).contains("2 resumed"), "{}", stdout(&o));
    assert_eq!(
        std::fs::read_to_string(dir.join("scored.jsonl")).unwrap(),
        full
    );
    kill();
    let o = score(dir, "3", &["--restart"]);
    assert_ok(&o);
    assert!(!stdout(&o).contains("resumed"), "{}", stdout(&o));
    assert_eq!(
        std::fs::read_to_string(dir.join("scored.jsonl")).unwrap(),
        full
    );
    assert!(!dir.join("scored.jsonl.partial").exists());
    assert!(!dir.join("scored.jsonl.partial.progress").exists());
}

fn train(dir: &Path, loss: &str, lr: &str, extra: &[&str]) -> std::process::Output {
    let mut a = args(&[
        &"train",
        &"--pairs",
        &dir.join("pairs.jsonl"),
        &"--policy",
        &policy(),
        &"--output",
        &dir.join("run"),
        &"--loss",
        &loss,
        &"--param",
        &"batch_size=1",
        &"--param",
        &format!("learning_rate={lr}"),
    ]);
    a.extend(extra.iter().map(Into::into));
    sweetspot(a)
}

#[test]
fn train_refuses_to_extend_or_resume_another_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pairs = "{\"prompt\": \"hi\", \"chosen\": \"hello there\", \"rejected\": \"go away\"}\n\
                 {\"prompt\": \"2+2?\", \"chosen\": \"4\", \"rejected\": \"5\"}\n";
    std::fs::write(dir.join("pairs.jsonl"), pairs).unwrap();
    let o = train(dir, "dpo", "1e-3", &[]);
    assert_ok(&o);
    assert!(stdout(&o).contains("trained 2 steps"), "{}", stdout(&o));
    let metrics = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();

    // The same run again: already complete, not "resumed", not extended.
    let o = train(dir, "dpo", "1e-3", &[]);
    assert_ok(&o);
    assert!(stdout(&o).contains("already complete"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("resumed"), "{}", stdout(&o));
    assert_eq!(
        std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap(),
        metrics
    );

    // Other loss and learning rate into the finished folder: refused, naming both.
    let err = assert_clean_failure(&train(dir, "ipo", "1e-4", &[]), 2);
    assert!(err.contains("`loss.type` was \"dpo\""), "{err}");
    assert!(err.contains("`learning_rate` was 0.001"), "{err}");
    assert!(dir.join("run/policy/config.json").exists());

    // A killed run (metrics of its steps, no policy yet) with other pairs: refused.
    std::fs::remove_dir_all(dir.join("run/policy")).unwrap();
    mark_incomplete(&dir.join("run/record.json"));
    std::fs::write(dir.join("pairs.jsonl"), pairs.replace("go away", "no")).unwrap();
    let err = assert_clean_failure(&train(dir, "dpo", "1e-3", &[]), 2);
    assert!(err.contains("input `pairs` has changed"), "{err}");
    assert!(dir.join("run/metrics.jsonl").exists());

    // --restart trains the new run from the start; an export a kill interrupted (a half
    // written `policy.tmp/`) never becomes the policy and is cleared.
    std::fs::create_dir_all(dir.join("run/policy.tmp")).unwrap();
    std::fs::write(dir.join("run/policy.tmp/config.json"), "{").unwrap();
    let o = train(dir, "ipo", "1e-4", &["--restart"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("trained 2 steps"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("resumed"), "{}", stdout(&o));
    assert_eq!(
        std::fs::read_to_string(dir.join("run/metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    // No temporary folder is left beside the results.
    let mut left = files(&dir.join("run"));
    left.retain(|f| f.contains("tmp") || f.contains("old"));
    assert!(left.is_empty(), "{left:?}");
}

/// Execution settings are not identity: a killed run resumes with a smaller batch.
#[test]
fn generate_resumes_with_another_batch_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("prompts.jsonl"),
        "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n",
    )
    .unwrap();
    assert_ok(&generate(dir, "s.jsonl", "0.8", &["--batch-size", "6"]));
    let full = std::fs::read_to_string(dir.join("s.jsonl")).unwrap();
    let first: String = full.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::remove_file(dir.join("s.jsonl")).unwrap();
    std::fs::write(dir.join("s.jsonl.partial"), &first).unwrap();
    mark_incomplete(&dir.join("s.jsonl.record.json"));
    let o = generate(dir, "s.jsonl", "0.8", &["--batch-size", "1"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("1 resumed"), "{}", stdout(&o));
    assert_eq!(std::fs::read_to_string(dir.join("s.jsonl")).unwrap(), full);
}
