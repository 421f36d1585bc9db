//! `sweetspot score` end to end: samples in, scored samples out, then `sweetspot pairs`; resume
//! after a kill; bad input. The reward models are the tiny fixtures of
//! `scripts/make_reward_fixtures.py`; the native-sampler test uses SmolLM2-135M-Instruct (fetched
//! by scripts/fetch_smollm2.sh; CI fetches it, elsewhere that test skips without it).

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/models").join(name)
}

/// A samples file as `generate` writes it: `prompts` prompts of `n` samples each.
fn write_samples(path: &Path, prompts: usize, n: usize) {
    let words = [
        "Paris.",
        "It is Paris, on the Seine.",
        "Lyon?",
        "The capital is Paris, France.",
        "I do not know.",
        "Quick brown fox.",
        "13023",
        "Hi!",
    ];
    let mut text = String::new();
    for p in 0..prompts {
        for s in 0..n {
            let row = serde_json::json!({
                "prompt_id": format!("p{p}"),
                "prompt": if p % 2 == 0 {
                    serde_json::json!(format!("Question number {p}: what is the capital of France?"))
                } else {
                    serde_json::json!([{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": format!("Say hi {p} times.")}])
                },
                "sample_index": s,
                "response": words[(p * 3 + s * 5) % words.len()].repeat(1 + (s + p) % 3),
                "token_count": 5,
                "finish_reason": "stop",
            });
            text.push_str(&row.to_string());
            text.push('\n');
        }
    }
    std::fs::write(path, text).unwrap();
}

fn score(
    input: &Path,
    output: &Path,
    kind: &str,
    model: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args: Vec<std::ffi::OsString> = vec![
        "score".into(),
        "--input".into(),
        input.into(),
        "--output".into(),
        output.into(),
        "--type".into(),
        kind.into(),
        "--model".into(),
        model.into(),
    ];
    args.extend(extra.iter().map(|s| s.into()));
    sweetspot(args)
}

#[test]
fn scores_every_sample_in_the_long_layout_and_pairs_read_it() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = tmp.path().join("samples.jsonl");
    write_samples(&samples, 6, 4);
    let scored = tmp.path().join("scored.jsonl");
    let o = score(
        &samples,
        &scored,
        "armorm",
        &fixture("armorm"),
        &["--batch-size", "3"],
    );
    assert_ok(&o);
    assert!(
        stdout(&o).contains("helpsteer-helpfulness"),
        "{}",
        stdout(&o)
    );
    let rows = read_jsonl(&scored);
    assert_eq!(rows.len(), 24);
    let input = read_jsonl(&samples);
    for (r, i) in rows.iter().zip(&input) {
        for key in [
            "prompt_id",
            "prompt",
            "sample_index",
            "response",
            "token_count",
            "finish_reason",
        ] {
            assert_eq!(r[key], i[key], "{key}");
        }
        assert!(r["reward"].as_f64().unwrap().is_finite());
        assert_eq!(r["objective_rewards"].as_array().unwrap().len(), 19);
    }
    // Different responses, different rewards.
    let mut rewards: Vec<f64> = rows.iter().map(|r| r["reward"].as_f64().unwrap()).collect();
    rewards.sort_by(f64::total_cmp);
    rewards.dedup();
    assert!(rewards.len() > 6);
    // Nothing left beside the output and its record.
    assert_eq!(
        files(tmp.path()),
        ["samples.jsonl", "scored.jsonl", "scored.jsonl.record.json"]
    );

    // The batch size does not change a reward (beyond 1e-4).
    let other = tmp.path().join("scored-b1.jsonl");
    assert_ok(&score(
        &samples,
        &other,
        "skywork",
        &fixture("seq-cls"),
        &["--batch-size", "1"],
    ));
    let seq16 = tmp.path().join("scored-b16.jsonl");
    assert_ok(&score(
        &samples,
        &seq16,
        "seq-cls",
        &fixture("seq-cls"),
        &["--batch-size", "16"],
    ));
    for (a, b) in read_jsonl(&other).iter().zip(read_jsonl(&seq16)) {
        let (a, b) = (a["reward"].as_f64().unwrap(), b["reward"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
    }

    let pairs = tmp.path().join("pairs.jsonl");
    let o = sweetspot([
        "pairs".as_ref(),
        "--input".as_ref(),
        scored.as_os_str(),
        "--strategy".as_ref(),
        "max-min".as_ref(),
        "--output".as_ref(),
        pairs.as_os_str(),
    ]);
    assert_ok(&o);
    let pairs = read_jsonl(&pairs);
    assert_eq!(pairs.len(), 6);
    for p in &pairs {
        assert!(p["score_chosen"].as_f64() > p["score_rejected"].as_f64());
    }
}

/// The state a run killed after `k` calls leaves: the rows of its first `k` calls (plus `torn`
/// bytes of the next) in the partial file, and the progress record of `k` calls.
fn fake_kill(output: &Path, full: &str, groups_per_call: usize, k: usize, n: usize, torn: usize) {
    let lines: Vec<&str> = full.lines().collect();
    let rows = k * groups_per_call * n;
    let mut done: String = lines[..rows].iter().map(|l| format!("{l}\n")).collect();
    let bytes = done.len();
    done.push_str(&lines[rows][..torn]);
    let partial = output.with_file_name("scored.jsonl.partial");
    std::fs::write(&partial, done).unwrap();
    std::fs::write(
        output.with_file_name("scored.jsonl.partial.progress"),
        serde_json::json!({"groups": k * groups_per_call, "samples": rows, "bytes": bytes})
            .to_string(),
    )
    .unwrap();
    // The record of what the run was making, not yet complete (the finished run left it).
    let record = output.with_file_name("scored.jsonl.record.json");
    let mut r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    r["complete"] = serde_json::Value::Null;
    std::fs::write(&record, r.to_string()).unwrap();
}

#[test]
fn a_killed_run_resumes_to_the_same_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = tmp.path().join("samples.jsonl");
    write_samples(&samples, 9, 3);
    let recipe = tmp.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            "[reward]\ntype = \"armorm\"\nmodel = {:?}\nbatch_size = 4\n\n\
             [score]\ninput = \"samples.jsonl\"\noutput = \"scored.jsonl\"\ngroups_per_call = 2\n",
            fixture("armorm")
        ),
    )
    .unwrap();
    let run = || {
        sweetspot([
            "score".as_ref(),
            "--recipe".as_ref(),
            recipe.as_os_str(),
            "--json".as_ref(),
        ])
    };
    let output = tmp.path().join("scored.jsonl");
    let o = run();
    assert_ok(&o);
    let full = std::fs::read_to_string(&output).unwrap();
    assert_eq!(full.lines().count(), 27);

    // Killed after 2 calls, in the middle of writing the third.
    std::fs::remove_file(&output).unwrap();
    fake_kill(&output, &full, 2, 2, 3, 40);
    let o = run();
    assert_ok(&o);
    let summary: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(summary["resumed_groups"], 4);
    assert_eq!(summary["samples"], 27);
    assert_eq!(std::fs::read_to_string(&output).unwrap(), full);
    assert_eq!(
        files(tmp.path()),
        [
            "recipe.toml",
            "samples.jsonl",
            "scored.jsonl",
            "scored.jsonl.record.json"
        ]
    );

    // Killed between the write of a call and its progress record: that call is done again.
    std::fs::remove_file(&output).unwrap();
    fake_kill(&output, &full, 2, 3, 3, 0);
    let partial = output.with_file_name("scored.jsonl.partial");
    let mut extra = std::fs::read_to_string(&partial).unwrap();
    extra.push_str(
        &full
            .lines()
            .skip(18)
            .take(6)
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    );
    std::fs::write(&partial, extra).unwrap();
    assert_ok(&run());
    assert_eq!(std::fs::read_to_string(&output).unwrap(), full);

    // A real kill, as soon as the first call is recorded.
    std::fs::remove_file(&output).unwrap();
    let progress = output.with_file_name("scored.jsonl.partial.progress");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sweetspot"))
        .args(["-q", "score", "--recipe"])
        .arg(&recipe)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !progress.exists() && t0.elapsed().as_secs() < 60 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_ok(&run());
    assert_eq!(std::fs::read_to_string(&output).unwrap(), full);
}

#[test]
fn bad_input_is_a_clean_error_that_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = tmp.path().join("samples.jsonl");
    write_samples(&samples, 2, 2);
    let mut text = std::fs::read_to_string(&samples).unwrap();
    text.push_str("{\"prompt_id\": \"x\", \"prompt\": \"hi\", \"sample_index\": 0}\n");
    std::fs::write(&samples, text).unwrap();
    let out = tmp.path().join("out/scored.jsonl");
    let o = score(&samples, &out, "seq-cls", &fixture("seq-cls"), &[]);
    let err = assert_clean_failure(&o, 1);
    assert!(
        err.contains("samples.jsonl:5: field `response`: missing"),
        "{err}"
    );
    assert!(
        files(&tmp.path().join("out")).is_empty(),
        "{:?}",
        files(&tmp.path().join("out"))
    );

    // A prompt's rows apart.
    write_samples(&samples, 2, 2);
    let mut lines: Vec<String> = std::fs::read_to_string(&samples)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.swap(1, 2);
    std::fs::write(&samples, lines.join("\n")).unwrap();
    let err = assert_clean_failure(
        &score(&samples, &out, "seq-cls", &fixture("seq-cls"), &[]),
        1,
    );
    assert!(
        err.contains("samples.jsonl:3") && err.contains("not consecutive"),
        "{err}"
    );

    // ArmoRM on a conversation without the gating pattern: the error names the sample.
    write_samples(&samples, 2, 2);
    let err = assert_clean_failure(
        &score(
            &samples,
            &out,
            "armorm",
            &fixture("armorm"),
            &[
                "--param",
                "gating_pattern=\"<|eot_id|><|start_header_id|>robot\"",
            ],
        ),
        1,
    );
    assert!(
        err.contains("prompt `p0` sample 0") && err.contains("gating pattern"),
        "{err}"
    );

    // A sequence-classification model asked for as ArmoRM, a missing model, a bad key.
    let err = assert_clean_failure(
        &score(&samples, &out, "armorm", &fixture("seq-cls"), &[]),
        1,
    );
    assert!(err.contains("missing"), "{err}");
    let err = assert_clean_failure(
        &score(&samples, &out, "seq-cls", &tmp.path().join("nope"), &[]),
        1,
    );
    assert!(err.contains("nope"), "{err}");
    let err = assert_clean_failure(
        &score(
            &samples,
            &out,
            "seq-cls",
            &fixture("seq-cls"),
            &["--param", "batch=3"],
        ),
        2,
    );
    assert!(err.contains("batch"), "{err}");
    let err = assert_clean_failure(&score(&samples, &out, "armorn", &fixture("armorm"), &[]), 2);
    assert!(err.contains("armorm"), "{err}");
    assert!(files(&tmp.path().join("out")).is_empty());
}

#[test]
fn generate_score_pairs_with_the_native_sampler_and_a_judge() {
    let Some(model) = smollm2() else { return };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("prompts.jsonl"),
        "{\"prompt_id\": \"france\", \"prompt\": \"What is the capital of France?\"}\n\
         {\"prompt_id\": \"prime\", \"prompt\": [{\"role\": \"user\", \"content\": \"Name a prime number.\"}]}\n",
    )
    .unwrap();
    let recipe = tmp.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            "[run]\nseed = 3\n\n\
             [sampler]\ntype = \"burn\"\nmodel = {model:?}\nmax_new_tokens = 10\nbatch_size = 8\n\n\
             [generate]\nprompts = \"prompts.jsonl\"\noutput = \"samples.jsonl\"\nn = 4\n\n\
             [reward]\ntype = \"judge\"\nmodel = {model:?}\n\n\
             [score]\ninput = \"samples.jsonl\"\noutput = \"scored.jsonl\"\n\n\
             [pairs]\ninput = \"scored.jsonl\"\noutput = \"pairs\"\n\
             [[pairs.strategies]]\ntype = \"max-min\"\n"
        ),
    )
    .unwrap();
    assert_ok(&sweetspot(["validate".as_ref(), recipe.as_os_str()]));
    let o = sweetspot(["run".as_ref(), "--recipe".as_ref(), recipe.as_os_str()]);
    assert_ok(&o);
    let scored = read_jsonl(&tmp.path().join("scored.jsonl"));
    assert_eq!(scored.len(), 8);
    assert!(
        scored
            .iter()
            .all(|r| r["reward"].as_f64().unwrap().is_finite())
    );
    let pairs = read_jsonl(&tmp.path().join("pairs/max-min.jsonl"));
    assert_eq!(pairs.len(), 2);

    // The same samples through ArmoRM's architecture (the tiny fixture) on the command line.
    let armo = tmp.path().join("armo.jsonl");
    assert_ok(&score(
        &tmp.path().join("samples.jsonl"),
        &armo,
        "armorm",
        &fixture("armorm"),
        &[],
    ));
    assert_eq!(read_jsonl(&armo).len(), 8);
}
