//! `sweetspot pairs` end to end: layouts, formats, one pass, the reference implementation.

mod common;

use common::*;
use std::collections::BTreeMap;

const QUICKSTART: &str = "pairs-only/recipe.toml";

fn run_recipe(input: &std::path::Path, out: &std::path::Path) -> serde_json::Value {
    // The quickstart recipe's strategies, over another input.
    let recipe = std::fs::read_to_string(example(QUICKSTART)).unwrap();
    let recipe = recipe.replace(
        "input = \"../quickstart/scored.jsonl\"",
        &format!("input = {:?}", input.to_str().unwrap()),
    );
    let dir = out.parent().unwrap();
    let path = dir.join(format!(
        "{}.toml",
        out.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&path, recipe).unwrap();
    let o = sweetspot([
        "pairs".as_ref(),
        "--json".as_ref(),
        "--recipe".as_ref(),
        path.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    assert_ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn grouped_long_and_parquet_inputs_give_identical_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = [
        example("quickstart/scored.jsonl"),
        example("data/scored-long.jsonl"),
        example("data/scored-grouped.parquet"),
        example("data/scored-long.parquet"),
    ];
    let mut outputs = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        let summary = run_recipe(input, &out);
        assert_eq!(summary["groups"], 40, "{}", input.display());
        assert_eq!(summary["samples"], 640, "{}", input.display());
        outputs.push(out);
    }
    let names = files(&outputs[0]);
    assert_eq!(names.len(), 24, "{names:?}"); // 21 grid + max-min + min-of-5 + summary
    for name in names.iter().filter(|n| n.ends_with(".jsonl")) {
        let first = std::fs::read(outputs[0].join(name)).unwrap();
        assert!(!first.is_empty());
        for (i, out) in outputs.iter().enumerate().skip(1) {
            let other = std::fs::read(out.join(name)).unwrap();
            assert!(
                first == other,
                "{name} differs between {} and {}",
                inputs[0].display(),
                inputs[i].display()
            );
        }
    }
}

#[test]
fn grid_reads_its_input_once_and_writes_21_files() {
    let tmp = tempfile::tempdir().unwrap();
    let input = example("quickstart/scored.jsonl");
    let out = tmp.path().join("grid");
    let o = sweetspot([
        "pairs".as_ref(),
        "--json".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--strategy".as_ref(),
        "grid".as_ref(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    assert_ok(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let size = std::fs::metadata(&input).unwrap().len();
    let lines = std::fs::read_to_string(&input).unwrap().lines().count() as u64;
    assert_eq!(summary["input_passes"], 1);
    assert_eq!(summary["input_bytes_read"].as_u64(), Some(size));
    assert_eq!(summary["rows_read"].as_u64(), Some(lines));
    let written: Vec<_> = files(&out)
        .into_iter()
        .filter(|f| f.ends_with(".jsonl"))
        .collect();
    assert_eq!(written.len(), 21, "{written:?}");
    assert!(out.join("summary.json").exists());
    assert_eq!(summary["datasets"].as_array().unwrap().len(), 21);
}

#[test]
fn pairs_match_the_python_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ref");
    let summary = run_recipe(&example("quickstart/scored.jsonl"), &out);
    let reference: BTreeMap<String, serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/reference_pairs.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(reference.len(), 23);
    for d in summary["datasets"].as_array().unwrap() {
        let name = d["name"].as_str().unwrap();
        let want = &reference[name];
        assert_eq!(d["skipped"], want["skipped"], "{name}");
        let rows = read_jsonl(&out.join(format!("{name}.jsonl")));
        let got: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::json!([r["prompt_id"], r["chosen_index"], r["rejected_index"]]))
            .collect();
        assert_eq!(&serde_json::Value::Array(got), &want["pairs"], "{name}");
    }
}

#[test]
fn output_rows_are_trl_conversational() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pairs.jsonl");
    let input = example("quickstart/scored.jsonl");
    let o = sweetspot([
        "pairs".as_ref(),
        "-i".as_ref(),
        input.as_os_str(),
        "-s".as_ref(),
        "sigma".as_ref(),
        "--chosen".as_ref(),
        "max".as_ref(),
        "--rejected".as_ref(),
        "-2".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_ok(&o);
    assert!(tmp.path().join("pairs.summary.json").exists());
    let rows = read_jsonl(&out);
    assert_eq!(rows.len(), 39);
    let keys: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    for k in [
        "prompt",
        "chosen",
        "rejected",
        "prompt_id",
        "chosen_index",
        "rejected_index",
        "score_chosen",
        "score_rejected",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
    assert_eq!(rows[0]["prompt"][0]["role"], "user");
    assert_eq!(rows[0]["chosen"][0]["role"], "assistant");
    assert_eq!(rows[0]["rejected"][0]["role"], "assistant");
    // Prompt ex-004 is a chat with a system message: kept as is.
    let chat = rows.iter().find(|r| r["prompt_id"] == "ex-004").unwrap();
    assert_eq!(chat["prompt"][0]["role"], "system");
    assert_eq!(chat["prompt"][1]["role"], "user");
    // Flag form and the same strategy from `grid` agree.
    let grid = tmp.path().join("grid");
    let o = sweetspot([
        "pairs".as_ref(),
        "-i".as_ref(),
        input.as_os_str(),
        "-s".as_ref(),
        "grid".as_ref(),
        "-o".as_ref(),
        grid.as_os_str(),
    ]);
    assert_ok(&o);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(grid.join("grid_max_vs_-2.jsonl")).unwrap()
    );
}

#[test]
fn parquet_output_has_the_same_rows() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let tmp = tempfile::tempdir().unwrap();
    let input = example("quickstart/scored.jsonl");
    let out = tmp.path().join("pairs.parquet");
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
    let reader = SerializedFileReader::new(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows(), 39);
    let schema = reader.metadata().file_metadata().schema_descr();
    let cols: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
    assert!(
        cols.contains(&"prompt.list.item.content".to_string()),
        "{cols:?}"
    );
    assert!(cols.contains(&"score_rejected".to_string()), "{cols:?}");
    // Read back through sweetspot's own Parquet path is covered by the input tests; here the
    // first row's ids must match the JSONL output.
    let jsonl = tmp.path().join("pairs.jsonl");
    let o = sweetspot([
        "pairs".as_ref(),
        "-i".as_ref(),
        input.as_os_str(),
        "-s".as_ref(),
        "max-min".as_ref(),
        "-o".as_ref(),
        jsonl.as_os_str(),
    ]);
    assert_ok(&o);
    let mut rows = reader.get_row_iter(None).unwrap();
    let first = rows.next().unwrap().unwrap().to_json_value();
    let want = &read_jsonl(&jsonl)[0];
    assert_eq!(first["prompt_id"], want["prompt_id"]);
    assert_eq!(first["chosen_index"], want["chosen_index"]);
    assert_eq!(first["score_chosen"], want["score_chosen"]);
    assert_eq!(first["chosen"], want["chosen"]);
}

#[test]
fn quickstart_recipe_validates_and_runs() {
    let recipe = example(QUICKSTART);
    let o = sweetspot(["validate".as_ref(), recipe.as_os_str()]);
    assert_ok(&o);
    assert!(stdout(&o).contains("23 datasets"), "{}", stdout(&o));
    let tmp = tempfile::tempdir().unwrap();
    let o = sweetspot([
        "pairs".as_ref(),
        "--recipe".as_ref(),
        recipe.as_os_str(),
        "--output".as_ref(),
        tmp.path().as_os_str(),
    ]);
    assert_ok(&o);
    assert!(stdout(&o).contains("grid_max_vs_-2"), "{}", stdout(&o));
    assert_eq!(files(tmp.path()).len(), 24);
}

#[test]
fn stats_hand_computed() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("s.jsonl");
    // Group a: 1,2,3,4 (mu 2.5, sd 1.118; max 4 < 4.736). Group b: 5,5,5 (sd 0).
    // Group c: nine 0s and a 10 (mu 1, sd 3; max 10 > 7; min 0 > -5).
    let c: Vec<f64> = (0..10).map(|i| if i == 9 { 10.0 } else { 0.0 }).collect();
    let rows = [
        serde_json::json!({"prompt_id": "a", "prompt": "a", "all_generated_responses": ["1","2","3","4"], "all_rm_scores": [1.0, 2.0, 3.0, 4.0]}),
        serde_json::json!({"prompt_id": "b", "prompt": "b", "all_generated_responses": ["1","2","3"], "all_rm_scores": [5.0, 5.0, 5.0]}),
        serde_json::json!({"prompt_id": "c", "prompt": "c", "all_generated_responses": vec!["x"; 10], "all_rm_scores": c}),
    ];
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let o = sweetspot(["stats".as_ref(), "--json".as_ref(), input.as_os_str()]);
    assert_ok(&o);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = &s[0];
    assert_eq!(s["groups"], 3);
    assert_eq!(s["samples"], 17);
    let close = |v: &serde_json::Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-9;
    assert!(
        close(&s["mean_of_sigma"], (1.25f64.sqrt() + 0.0 + 3.0) / 3.0),
        "{s}"
    );
    assert!(close(&s["frac_sigma_zero"], 1.0 / 3.0), "{s}");
    assert!(close(&s["frac_max_beyond_2sigma"], 0.5), "{s}");
    assert!(close(&s["frac_min_beyond_2sigma"], 0.0), "{s}");
    // The table form names the file.
    let o = sweetspot(["stats".as_ref(), input.as_os_str()]);
    assert_ok(&o);
    assert!(stdout(&o).contains("s.jsonl"));
}

#[test]
fn empty_responses_are_never_chosen_or_rejected_and_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("scored.jsonl");
    // Prompt a: the empty response has the lowest reward, the blank one the highest; prompt b:
    // only one response has text, so max-min has no pair for it.
    let rows = [
        ("a", 0, "first", 0.5),
        ("a", 1, "", -3.0),
        ("a", 2, "second", 0.2),
        ("a", 3, " \n", 9.0),
        ("b", 0, "only", 0.1),
        ("b", 1, "", 0.0),
    ];
    let text: String = rows
        .iter()
        .map(|(id, i, r, w)| {
            format!(
                "{}\n",
                serde_json::json!({"prompt_id": id, "prompt": "hi", "sample_index": i,
                    "response": r, "reward": w})
            )
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    let out = tmp.path().join("pairs");
    let o = sweetspot([
        "pairs".as_ref(),
        "-i".as_ref(),
        input.as_os_str(),
        "-s".as_ref(),
        "max-min".as_ref(),
        "--on-small-group".as_ref(),
        "skip".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_ok(&o);
    let pairs: Vec<serde_json::Value> = std::fs::read_to_string(out.join("max-min.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pairs.len(), 1, "{pairs:?}");
    assert_eq!(pairs[0]["prompt_id"], "a");
    assert_eq!(
        (
            pairs[0]["chosen_index"].as_u64(),
            pairs[0]["rejected_index"].as_u64()
        ),
        (Some(0), Some(2))
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["empty_responses"], 3, "{summary}");
    assert_eq!(summary["samples"], 6, "{summary}");
    assert_eq!(
        summary["datasets"][0]["skipped"]["too_few_samples"], 1,
        "{summary}"
    );
}

/// A recipe over `tests/fixtures/filters/scored.jsonl` with the two strategies of
/// `scripts/filter_reference.py` and `extra` in `[pairs]`; runs it into `out`, returns the
/// `--json` summary.
fn run_filters(dir: &std::path::Path, name: &str, extra: &str) -> serde_json::Value {
    let input = root().join("tests/fixtures/filters/scored.jsonl");
    let recipe = format!(
        "[run]\nseed = 1\n\n[pairs]\ninput = {:?}\noutput = \"{name}\"\n{extra}\n\n\
         [[pairs.strategies]]\ntype = \"max-min\"\n\n\
         [[pairs.strategies]]\ntype = \"max-of-n-min-of-k\"\nk = 3\nsubset = \"first\"\n",
        input.to_str().unwrap()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, recipe).unwrap();
    let o = sweetspot([
        "pairs".as_ref(),
        "--json".as_ref(),
        "--recipe".as_ref(),
        path.as_os_str(),
    ]);
    assert_ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn filters_match_the_python_reference() {
    // tests/fixtures/filters/expected.json is scripts/filter_reference.py's, computed in plain
    // Python from the rules in docs/recipes.md.
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/filters/expected.json")).unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let input = root().join("tests/fixtures/filters/scored.jsonl");
    let size = std::fs::metadata(&input).unwrap().len();
    for (name, case) in expected.as_object().unwrap() {
        let extra: String = case["config"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        let summary = run_filters(tmp.path(), name, &extra);
        // top_fraction buffers rows in a temporary file: the input is still read once.
        assert_eq!(summary["input_passes"], 1, "{name}");
        assert_eq!(summary["input_bytes_read"].as_u64(), Some(size), "{name}");
        let datasets = summary["datasets"].as_array().unwrap();
        assert_eq!(datasets.len(), 2);
        for d in datasets {
            let ds = d["name"].as_str().unwrap();
            let want = &case["datasets"][ds];
            assert_eq!(d["pairs"], want["pairs"], "{name}/{ds}");
            assert_eq!(d["rows"], want["pairs"], "{name}/{ds}");
            assert_eq!(d["dropped"], want["dropped"], "{name}/{ds}");
            let rows = read_jsonl(&tmp.path().join(name).join(format!("{ds}.jsonl")));
            let kept: Vec<&str> = rows
                .iter()
                .map(|r| r["prompt_id"].as_str().unwrap())
                .collect();
            let want_kept: Vec<&str> = want["kept"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(
                kept, want_kept,
                "{name}/{ds}: the pairs kept, in input order"
            );
        }
    }
}

#[test]
fn top_fraction_in_parquet_equals_jsonl() {
    // The buffered rows are copied into Parquet through Arrow's JSON reader: every value, the
    // rewards' bits included, must equal the JSONL output's.
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let tmp = tempfile::tempdir().unwrap();
    let input = example("quickstart/scored.jsonl");
    for (layout, n) in [("pairs", 1), ("unpaired", 2)] {
        let mut outputs = Vec::new();
        for format in ["jsonl", "parquet"] {
            let name = format!("{layout}-{format}");
            let path = tmp.path().join(format!("{name}.toml"));
            std::fs::write(
                &path,
                format!(
                    "[run]\nseed = 1\n\n[pairs]\ninput = {:?}\noutput = \"{name}\"\n\
                     format = \"{format}\"\nlayout = \"{layout}\"\ntop_fraction = 0.3\n\n\
                     [[pairs.strategies]]\ntype = \"max-min\"\n",
                    input.to_str().unwrap()
                ),
            )
            .unwrap();
            let o = sweetspot(["pairs".as_ref(), "--recipe".as_ref(), path.as_os_str()]);
            assert_ok(&o);
            outputs.push(tmp.path().join(name).join(format!("max-min.{format}")));
        }
        let want = read_jsonl(&outputs[0]);
        assert_eq!(want.len(), n * 12, "{layout}"); // ceil(0.3 * 39) = 12 pairs
        let reader = SerializedFileReader::new(std::fs::File::open(&outputs[1]).unwrap()).unwrap();
        let got: Vec<serde_json::Value> = reader
            .get_row_iter(None)
            .unwrap()
            .map(|r| r.unwrap().to_json_value())
            .collect();
        assert_eq!(got, want, "{layout}");
    }
}

#[test]
fn unpaired_layout_is_two_rows_per_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let paired = run_filters(tmp.path(), "pairs", "min_margin = 1.0");
    let unpaired = run_filters(
        tmp.path(),
        "unpaired",
        "min_margin = 1.0\nlayout = \"unpaired\"",
    );
    assert_eq!(unpaired["layout"], "unpaired");
    for (a, b) in paired["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .zip(unpaired["datasets"].as_array().unwrap())
    {
        assert_eq!(a["pairs"], b["pairs"]);
        assert_eq!(a["dropped"], b["dropped"]);
        assert_eq!(
            b["rows"].as_u64().unwrap(),
            2 * b["pairs"].as_u64().unwrap()
        );
        let ds = a["name"].as_str().unwrap();
        let pairs = read_jsonl(&tmp.path().join("pairs").join(format!("{ds}.jsonl")));
        let rows = read_jsonl(&tmp.path().join("unpaired").join(format!("{ds}.jsonl")));
        assert_eq!(rows.len(), 2 * pairs.len());
        for (p, two) in pairs.iter().zip(rows.chunks(2)) {
            // TRL's unpaired format: prompt, completion, label (chosen true, rejected false).
            let keys: Vec<&str> = two[0]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            for k in ["prompt", "completion", "label"] {
                assert!(keys.contains(&k), "{keys:?}");
            }
            assert!(!keys.contains(&"chosen"));
            assert_eq!(two[0]["prompt"], p["prompt"]);
            assert_eq!(two[0]["completion"], p["chosen"]);
            assert_eq!(two[0]["label"], true);
            assert_eq!(two[0]["reward"], p["score_chosen"]);
            assert_eq!(two[1]["prompt"], p["prompt"]);
            assert_eq!(two[1]["completion"], p["rejected"]);
            assert_eq!(two[1]["label"], false);
            assert_eq!(two[1]["sample_index"], p["rejected_index"]);
        }
    }
}

#[test]
fn listwise_layout_ranks_each_prompts_responses() {
    let tmp = tempfile::tempdir().unwrap();
    let input = root().join("tests/fixtures/filters/scored.jsonl");
    let recipe = format!(
        "[run]\nseed = 1\n\n[pairs]\ninput = {:?}\noutput = \"lw\"\nlayout = \"listwise\"\n\
         listwise_k = 4\n",
        input.to_str().unwrap()
    );
    let path = tmp.path().join("lw.toml");
    std::fs::write(&path, recipe).unwrap();
    let o = sweetspot([
        "pairs".as_ref(),
        "--json".as_ref(),
        "--recipe".as_ref(),
        path.as_os_str(),
    ]);
    assert_ok(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["layout"], "listwise");
    assert_eq!(summary["datasets"][0]["name"], "listwise_k4");
    assert_eq!(summary["datasets"][0]["pairs"], 60);
    let rows = read_jsonl(&tmp.path().join("lw/listwise_k4.jsonl"));
    assert_eq!(rows.len(), 60);
    // The fixture's rewards, per prompt.
    let mut rewards: BTreeMap<String, Vec<(f64, u64)>> = BTreeMap::new();
    for r in read_jsonl(&input) {
        rewards
            .entry(r["prompt_id"].as_str().unwrap().into())
            .or_default()
            .push((
                r["reward"].as_f64().unwrap(),
                r["sample_index"].as_u64().unwrap(),
            ));
    }
    for row in &rows {
        let keys: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        for k in [
            "prompt",
            "completions",
            "rewards",
            "prompt_id",
            "sample_indices",
        ] {
            assert!(keys.contains(&k), "{keys:?}");
        }
        let mut want = rewards[row["prompt_id"].as_str().unwrap()].clone();
        // Best first; ties to the lower sample index.
        want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        want.truncate(4);
        let got: Vec<(f64, u64)> = row["rewards"]
            .as_array()
            .unwrap()
            .iter()
            .zip(row["sample_indices"].as_array().unwrap())
            .map(|(r, i)| (r.as_f64().unwrap(), i.as_u64().unwrap()))
            .collect();
        assert_eq!(got, want);
        let completions = row["completions"].as_array().unwrap();
        assert_eq!(completions.len(), 4);
        for (c, (_, i)) in completions.iter().zip(&want) {
            assert_eq!(c[0]["role"], "assistant");
            let text = c[0]["content"].as_str().unwrap();
            assert!(text.ends_with(&format!(".{i}")), "{text}");
        }
        assert_eq!(row["prompt"][0]["role"], "user");
    }
}

#[test]
fn filter_and_layout_values_are_refused_by_key() {
    let tmp = tempfile::tempdir().unwrap();
    let input = root().join("tests/fixtures/filters/scored.jsonl");
    let strategy = "\n[[pairs.strategies]]\ntype = \"max-min\"\n";
    let cases = [
        ("min_margin = -1.0", strategy, "pairs.min_margin"),
        ("min_margin = nan", strategy, "pairs.min_margin"),
        (
            "min_margin_sigma = -0.5",
            strategy,
            "pairs.min_margin_sigma",
        ),
        ("min_margin_sigma = inf", strategy, "pairs.min_margin_sigma"),
        ("top_fraction = 0.0", strategy, "pairs.top_fraction"),
        ("top_fraction = 1.5", strategy, "pairs.top_fraction"),
        ("top_fraction = nan", strategy, "pairs.top_fraction"),
        ("layout = \"listwise\"", strategy, "pairs.strategies"),
        (
            "layout = \"listwise\"\nmin_margin = 1.0",
            "",
            "pairs.min_margin",
        ),
        (
            "layout = \"listwise\"\nlistwise_k = 1",
            "",
            "pairs.listwise_k",
        ),
        ("listwise_k = 3", strategy, "pairs.listwise_k"),
        ("layout = \"unpaired\"", "", "pairs.strategies"),
    ];
    for (i, (extra, strategies, key)) in cases.iter().enumerate() {
        let recipe = format!(
            "[run]\nseed = 1\n\n[pairs]\ninput = {:?}\noutput = \"o{i}\"\n{extra}\n{strategies}",
            input.to_str().unwrap()
        );
        let path = tmp.path().join(format!("r{i}.toml"));
        std::fs::write(&path, recipe).unwrap();
        let o = sweetspot(["pairs".as_ref(), "--recipe".as_ref(), path.as_os_str()]);
        let err = assert_clean_failure(&o, 2);
        assert!(err.contains(&format!("`{key}`")), "{extra}: {err}");
        assert!(
            err.contains(&format!("r{i}.toml:")),
            "{extra}: file and line: {err}"
        );
        assert!(!tmp.path().join(format!("o{i}")).exists());
    }
}

#[test]
fn the_trainer_refuses_unpaired_and_listwise_rows_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    run_filters(tmp.path(), "unpaired", "layout = \"unpaired\"");
    let input = root().join("tests/fixtures/filters/scored.jsonl");
    let path = tmp.path().join("lw.toml");
    std::fs::write(
        &path,
        format!(
            "[run]\nseed = 1\n\n[pairs]\ninput = {:?}\noutput = \"lw\"\nlayout = \"listwise\"\n",
            input.to_str().unwrap()
        ),
    )
    .unwrap();
    assert_ok(&sweetspot([
        "pairs".as_ref(),
        "--recipe".as_ref(),
        path.as_os_str(),
    ]));
    let tok =
        sweetspot_model::Tokenizer::from_dir(&root().join("tests/fixtures/models/policy"), &[])
            .unwrap();
    for (file, field, layout) in [
        ("unpaired/max-min.jsonl", "completion", "unpaired"),
        ("lw/listwise.jsonl", "completions", "listwise"),
    ] {
        let err = sweetspot_train::run::read_pairs(&tmp.path().join(file), &tok)
            .err()
            .unwrap_or_else(|| panic!("{file} read as pairs"))
            .to_string();
        assert!(err.contains(":1: field `chosen`"), "{err}");
        assert!(err.contains(&format!("`{field}`")), "{err}");
        assert!(err.contains(&format!("layout = \"{layout}\"")), "{err}");
        assert!(err.contains("reads pairs only"), "{err}");
    }
}

#[test]
fn run_refuses_unpaired_or_listwise_pairs_before_train() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = std::fs::read_to_string(example("quickstart/recipe.toml")).unwrap();
    assert!(recipe.contains("\n[pairs]\n"));
    for layout in ["unpaired", "listwise"] {
        let path = tmp.path().join(format!("{layout}.toml"));
        let text = recipe.replace(
            "\n[pairs]\n",
            &format!("\n[pairs]\nlayout = \"{layout}\"\n"),
        );
        std::fs::write(&path, text).unwrap();
        let o = sweetspot(["run".as_ref(), "--plan".as_ref(), path.as_os_str()]);
        let err = assert_clean_failure(&o, 2);
        assert!(err.contains(&format!("{layout}.toml:")), "{err}");
        let key = if layout == "listwise" {
            "pairs.strategies"
        } else {
            "pairs.layout"
        };
        assert!(err.contains(&format!("key `{key}`")), "{err}");
    }
}

/// `[pairs] rewards` over the three models of `scripts/filter_reference.py` (a:
/// `tests/fixtures/filters/scored.jsonl`, b and c: `scored-{b,c}.jsonl`), with `extra` in
/// `[pairs]`; runs it into `<dir>/<name>`, returns the `--json` summary.
fn run_models(dir: &std::path::Path, name: &str, extra: &str) -> std::process::Output {
    let f = |m: &str| {
        let file = if m == "a" {
            "scored.jsonl".to_string()
        } else {
            format!("scored-{m}.jsonl")
        };
        root().join("tests/fixtures/filters").join(file)
    };
    let recipe = format!(
        "[run]\nseed = 1\n\n[pairs]\noutput = \"{name}\"\n\
         rewards = {{ a = {:?}, b = {:?}, c = {:?} }}\n{extra}\n\n\
         [[pairs.strategies]]\ntype = \"max-min\"\n\n\
         [[pairs.strategies]]\ntype = \"max-of-n-min-of-k\"\nk = 3\nsubset = \"first\"\n",
        f("a").to_str().unwrap(),
        f("b").to_str().unwrap(),
        f("c").to_str().unwrap(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, recipe).unwrap();
    sweetspot([
        "pairs".as_ref(),
        "--json".as_ref(),
        "--recipe".as_ref(),
        path.as_os_str(),
    ])
}

#[test]
fn agreement_and_margin_filters_match_the_python_reference() {
    // tests/fixtures/filters/expected-models.json is scripts/filter_reference.py's: the ranking
    // (one model, mean of z-scores, weighted sum), the agreement filter and the margin filters
    // computed in plain Python on the same three scored files.
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/filters/expected-models.json"))
            .unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cases = expected.as_object().unwrap();
    assert!(cases.len() >= 5);
    let mut dropped_by_agree = 0;
    for (name, case) in cases {
        let o = run_models(tmp.path(), name, case["toml"].as_str().unwrap());
        assert_ok(&o);
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let models: Vec<&str> = summary["reward_models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(models, ["a", "b", "c"], "{name}");
        let rank_by = &case["config"]["rank_by"];
        let label = match rank_by.as_str() {
            Some(m) => m.to_string(),
            None if rank_by["aggregate"] == "mean_z" => "mean_z".into(),
            None => "weighted(a=0.7,b=0.3)".into(),
        };
        assert_eq!(summary["rank_by"], label.as_str(), "{name}");
        let datasets = summary["datasets"].as_array().unwrap();
        assert_eq!(datasets.len(), 2);
        for d in datasets {
            let ds = d["name"].as_str().unwrap();
            let want = &case["datasets"][ds];
            assert_eq!(d["pairs"], want["pairs"], "{name}/{ds}");
            assert_eq!(d["dropped"], want["dropped"], "{name}/{ds}");
            dropped_by_agree += d["dropped"]["agree"].as_u64().unwrap_or(0);
            let rows = read_jsonl(&tmp.path().join(name).join(format!("{ds}.jsonl")));
            let kept: Vec<&str> = rows
                .iter()
                .map(|r| r["prompt_id"].as_str().unwrap())
                .collect();
            let want_kept: Vec<&str> = want["kept"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(
                kept, want_kept,
                "{name}/{ds}: the pairs kept, in input order"
            );
        }
    }
    // The fixture makes the agreement filter bite.
    assert!(dropped_by_agree > 50, "{dropped_by_agree}");
}

#[test]
fn reward_model_names_are_refused_by_key_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    for (extra, key, words) in [
        (
            "rank_by = \"d\"",
            "pairs.rank_by",
            "`d` is no [[reward]] model's name",
        ),
        (
            "rank_by = \"a\"\nagree = [\"a\", \"x\"]",
            "pairs.agree[1]",
            "`x`",
        ),
        (
            "rank_by = { aggregate = \"weighted\", weights = { a = 1.0, zz = 2.0 } }",
            "pairs.rank_by.weights.zz",
            "`zz`",
        ),
        ("agree = [\"a\"]", "pairs.rank_by", "missing"),
        (
            "rank_by = \"a\"\nagree = [\"a\", \"b\"]\nagree_min = 3",
            "pairs.agree_min",
            "give 1 to 2",
        ),
        (
            "rank_by = { aggregate = \"median\" }",
            "pairs.rank_by",
            "aggregate",
        ),
    ] {
        let o = run_models(tmp.path(), "refused", extra);
        assert_eq!(o.status.code(), Some(2), "{extra}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(key), "{extra}: {err}");
        assert!(err.contains(words), "{extra}: {err}");
        assert!(!tmp.path().join("refused").exists(), "{extra}");
    }
    // One scored file: `rank_by` has nothing to choose from.
    let input = root().join("tests/fixtures/filters/scored.jsonl");
    let path = tmp.path().join("one.toml");
    std::fs::write(
        &path,
        format!(
            "[pairs]\ninput = {:?}\noutput = \"one\"\nrank_by = \"a\"\n\n\
             [[pairs.strategies]]\ntype = \"max-min\"\n",
            input.to_str().unwrap()
        ),
    )
    .unwrap();
    let o = sweetspot(["pairs".as_ref(), "--recipe".as_ref(), path.as_os_str()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("pairs.rank_by"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("several reward models"),
        "{}",
        stderr(&o)
    );
    assert!(!tmp.path().join("one").exists());
}
