//! Bad input: a clear error naming file, line and field, a non-zero exit, no panic, and no output
//! left behind.

mod common;

use common::*;
use std::path::Path;

const GOOD: &str = r#"{"prompt_id": "p1", "prompt": "hi", "sample_index": 0, "response": "a", "reward": 0.5}
{"prompt_id": "p1", "prompt": "hi", "sample_index": 1, "response": "b", "reward": 0.1}
"#;

/// Runs max-min on `content`; returns the output folder and the process output.
fn run(content: &str, extra: &[&str]) -> (tempfile::TempDir, std::process::Output) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, content).unwrap();
    let out = tmp.path().join("out");
    let mut args = vec![
        "pairs".to_string(),
        "-i".into(),
        input.to_string_lossy().into_owned(),
        "-s".into(),
        "max-min".into(),
        "-o".into(),
        out.to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = sweetspot(&args);
    (tmp, o)
}

fn assert_no_output(tmp: &Path) {
    assert!(!tmp.join("out").exists(), "output left behind");
    let stray: Vec<_> = files(tmp).into_iter().filter(|f| f != "in.jsonl").collect();
    assert!(stray.is_empty(), "stray files: {stray:?}");
}

#[test]
fn malformed_json_line() {
    let (tmp, o) = run(
        &format!("{GOOD}{{\"prompt_id\": \"p2\", \"prompt\": \n"),
        &[],
    );
    let err = assert_clean_failure(&o, 1);
    assert!(err.contains("in.jsonl:3:"), "{err}");
    assert!(err.contains("not valid JSON"), "{err}");
    assert_no_output(tmp.path());
}

#[test]
fn missing_field() {
    let bad = r#"{"prompt_id": "p2", "prompt": "x", "sample_index": 0, "response": "a"}"#;
    let (tmp, o) = run(&format!("{GOOD}{bad}\n"), &[]);
    let err = assert_clean_failure(&o, 1);
    assert!(err.contains("in.jsonl:3: field `reward`: missing"), "{err}");
    assert_no_output(tmp.path());
}

#[test]
fn wrong_type() {
    let bad =
        r#"{"prompt_id": "p2", "prompt": "x", "sample_index": -1, "response": "a", "reward": 1}"#;
    let (tmp, o) = run(&format!("{GOOD}{bad}\n"), &[]);
    let err = assert_clean_failure(&o, 1);
    assert!(err.contains("in.jsonl:3: field `sample_index`"), "{err}");
    assert_no_output(tmp.path());
}

#[test]
fn nan_and_infinite_rewards() {
    for token in ["NaN", "Infinity", "-Infinity"] {
        let bad = format!(
            r#"{{"prompt_id": "p1", "prompt": "hi", "sample_index": 2, "response": "c", "reward": {token}}}"#
        );
        let (tmp, o) = run(&format!("{GOOD}{bad}\n"), &[]);
        let err = assert_clean_failure(&o, 1);
        assert!(err.contains("in.jsonl:3: field `reward`"), "{err}");
        assert!(err.contains(token), "{err}");
        assert_no_output(tmp.path());
    }
    // null in the grouped layout
    let grouped =
        r#"{"prompt": "q", "all_generated_responses": ["a", "b"], "all_rm_scores": [0.1, null]}"#;
    let (tmp, o) = run(&format!("{grouped}\n"), &[]);
    let err = assert_clean_failure(&o, 1);
    assert!(err.contains("in.jsonl:1: field `reward`"), "{err}");
    assert_no_output(tmp.path());
}

#[test]
fn nan_reward_group_is_skipped_and_counted_when_asked() {
    let bad = r#"{"prompt_id": "p2", "prompt": "x", "sample_index": 0, "response": "a", "reward": NaN}
{"prompt_id": "p2", "prompt": "x", "sample_index": 1, "response": "b", "reward": 0.2}"#;
    let (tmp, o) = run(
        &format!("{GOOD}{bad}\n"),
        &["--on-invalid-reward", "skip", "--json"],
    );
    assert_ok(&o);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["datasets"][0]["pairs"], 1);
    assert_eq!(s["datasets"][0]["skipped"]["invalid_reward"], 1);
    assert!(tmp.path().join("out/max-min.jsonl").exists());
}

#[test]
fn group_smaller_than_the_strategy_needs() {
    let one =
        r#"{"prompt_id": "p2", "prompt": "x", "sample_index": 0, "response": "a", "reward": 0.3}"#;
    let (tmp, o) = run(&format!("{GOOD}{one}\n"), &[]);
    let err = assert_clean_failure(&o, 1);
    assert!(err.contains("in.jsonl:3:"), "{err}");
    assert!(err.contains("has 1 samples but"), "{err}");
    assert_no_output(tmp.path());
    // n larger than the group
    let (tmp, o) = run(GOOD, &["--n", "4"]);
    let err = assert_clean_failure(&o, 1);
    assert!(err.contains("needs 4"), "{err}");
    assert_no_output(tmp.path());
    // skipped and counted when asked
    let (_tmp, o) = run(
        &format!("{GOOD}{one}\n"),
        &["--on-small-group", "skip", "--json"],
    );
    assert_ok(&o);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["datasets"][0]["skipped"]["too_few_samples"], 1);
    assert_eq!(s["datasets"][0]["pairs"], 1);
}

#[test]
fn duplicate_sample_index_and_split_groups() {
    let dup =
        r#"{"prompt_id": "p1", "prompt": "hi", "sample_index": 1, "response": "c", "reward": 0.7}"#;
    let (tmp, o) = run(&format!("{GOOD}{dup}\n"), &[]);
    let err = assert_clean_failure(&o, 1);
    assert!(err.contains("field `sample_index`"), "{err}");
    assert!(err.contains("appears twice"), "{err}");
    assert_no_output(tmp.path());
    let other = r#"{"prompt_id": "p2", "prompt": "x", "sample_index": 0, "response": "a", "reward": 0.3}
{"prompt_id": "p2", "prompt": "x", "sample_index": 1, "response": "b", "reward": 0.6}"#;
    let again =
        r#"{"prompt_id": "p1", "prompt": "hi", "sample_index": 2, "response": "c", "reward": 0.7}"#;
    let (tmp, o) = run(&format!("{GOOD}{other}\n{again}\n"), &[]);
    let err = assert_clean_failure(&o, 1);
    assert!(err.contains("in.jsonl:5:"), "{err}");
    assert!(err.contains("contiguous"), "{err}");
    assert_no_output(tmp.path());
}

#[test]
fn missing_input_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = sweetspot([
        "pairs".as_ref(),
        "-i".as_ref(),
        tmp.path().join("nope.jsonl").as_os_str(),
        "-s".as_ref(),
        "max-min".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    let err = assert_clean_failure(&o, 1);
    assert!(err.contains("nope.jsonl"), "{err}");
    assert!(!out.exists());
}

#[test]
fn failed_run_keeps_earlier_outputs_untouched() {
    // A first good run, then a failing one into the same folder: the good files stay whole.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, GOOD).unwrap();
    let out = tmp.path().join("out");
    let args = |i: &Path| {
        vec![
            "pairs".to_string(),
            "-i".into(),
            i.to_string_lossy().into_owned(),
            "-s".into(),
            "max-min".into(),
            "-o".into(),
            out.to_string_lossy().into_owned(),
        ]
    };
    assert_ok(&sweetspot(args(&input)));
    let before = std::fs::read(out.join("max-min.jsonl")).unwrap();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{GOOD}not json\n")).unwrap();
    assert_clean_failure(&sweetspot(args(&bad)), 1);
    assert_eq!(std::fs::read(out.join("max-min.jsonl")).unwrap(), before);
    assert_eq!(files(&out), vec!["max-min.jsonl", "summary.json"]);
}

fn validate(text: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("r.toml");
    std::fs::write(&recipe, text).unwrap();
    let o = sweetspot(["validate".as_ref(), recipe.as_os_str()]);
    assert_clean_failure(&o, 2)
}

#[test]
fn recipe_errors_name_line_column_and_key() {
    let head = "[pairs]\ninput = \"x.jsonl\"\noutput = \"out\"\n\n[[pairs.strategies]]\n";
    let err = validate(&format!("{head}type = \"gird\"\n"));
    assert!(
        err.contains("r.toml:6:8: key `pairs.strategies[0].type`"),
        "{err}"
    );
    assert!(err.contains("unknown pair strategy `gird`"), "{err}");
    assert!(
        err.contains("known: grid, max-min, max-of-n-min-of-k, sigma"),
        "{err}"
    );
    assert!(err.contains("did you mean `grid`?"), "{err}");

    let err = validate(&format!("{head}type = \"grid\"\npointz = [1]\n"));
    assert!(
        err.contains("r.toml:7:1: key `pairs.strategies[0].pointz`"),
        "{err}"
    );
    assert!(err.contains("unknown field `pointz`"), "{err}");

    let err = validate(&format!(
        "{head}type = \"max-of-n-min-of-k\"\nk = \"five\"\n"
    ));
    assert!(
        err.contains("r.toml:7:5: key `pairs.strategies[0].k`"),
        "{err}"
    );

    let err = validate(&format!(
        "{head}type = \"sigma\"\nchosen = \"top\"\nrejected = -2\n"
    ));
    assert!(
        err.contains("r.toml:7:10: key `pairs.strategies[0].chosen`"),
        "{err}"
    );
    assert!(err.contains("`top` is not a reward point"), "{err}");

    let err = validate("[pairs]\ninput = \"x\"\noutptu = \"o\"\n");
    assert!(err.contains("r.toml:3:1: key `pairs.outptu`"), "{err}");

    let err = validate("[pairs\n");
    assert!(err.contains("r.toml:1:"), "{err}");

    let err = validate(&format!("{head}chosen = 2\n"));
    assert!(err.contains("missing `type`"), "{err}");

    // A semantic check from the plugin itself.
    let err = validate(&format!(
        "{head}type = \"sigma\"\nchosen = -2\nrejected = 2\n"
    ));
    assert!(err.contains("must be a higher point"), "{err}");
}

#[test]
fn unknown_strategy_on_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, GOOD).unwrap();
    let o = sweetspot([
        "pairs".as_ref(),
        "-i".as_ref(),
        input.as_os_str(),
        "-s".as_ref(),
        "maxmin".as_ref(),
        "-o".as_ref(),
        tmp.path().join("o").as_os_str(),
    ]);
    let err = assert_clean_failure(&o, 2);
    assert!(err.contains("did you mean `max-min`?"), "{err}");
}

/// Outputs get the permissions any other file gets (0644 before the umask), not the 0600 of a
/// temporary file; a killed run's hidden temporary files are removed by the next run.
#[test]
fn outputs_are_readable_and_stale_temporary_files_go() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, GOOD).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // A killed process (no such pid) left this; a live one's would stay.
    let stale = out.join(".sweetspot-4194304999-AbCdEf.tmp");
    std::fs::write(&stale, "half a file").unwrap();
    let o = sweetspot([
        "pairs".as_ref(),
        "-i".as_ref(),
        input.as_os_str(),
        "-s".as_ref(),
        "max-min".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_ok(&o);
    assert!(!stale.exists(), "{:?}", files(&out));
    assert_eq!(files(&out), ["max-min.jsonl", "summary.json"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["max-min.jsonl", "summary.json"] {
            let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o044, 0o044, "{f}: mode {mode:o}");
        }
    }
}

/// `--device` belongs to the commands that load a model; `run` takes the recipe as an argument.
#[test]
fn device_only_where_a_model_loads_and_run_takes_the_recipe() {
    let o = sweetspot([
        "pairs", "--device", "cpu", "-i", "x", "-s", "max-min", "-o", "y",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--device"), "{}", stderr(&o));
    let o = sweetspot(["stats", "--device", "cpu", "x.jsonl"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let help = stdout(&sweetspot(["pairs", "--help"]));
    assert!(!help.contains("--device"), "{help}");
    let help = stdout(&sweetspot(["generate", "--help"]));
    assert!(
        help.contains("--device") && help.contains("--restart"),
        "{help}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            "[pairs]\ninput = {:?}\noutput = \"out\"\n[[pairs.strategies]]\ntype = \"max-min\"\n",
            example("quickstart/scored.jsonl")
        ),
    )
    .unwrap();
    assert_ok(&sweetspot(["run".as_ref(), recipe.as_os_str()]));
    assert!(tmp.path().join("out/max-min.jsonl").exists());
    assert_ok(&sweetspot([
        "run".as_ref(),
        "-r".as_ref(),
        recipe.as_os_str(),
    ]));
}
