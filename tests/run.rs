//! `sweetspot run`: a recipe as a graph of stage nodes in a run folder. What is reused is
//! proved from the nodes' records (`done.json`, byte for byte), never from timing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/models").join(name)
}

const PROMPTS: &str = "{\"prompt_id\": \"a\", \"prompt\": \"Name a colour.\"}\n\
{\"prompt_id\": \"b\", \"prompt\": \"Say hello.\"}\n\
{\"prompt_id\": \"c\", \"prompt\": \"Count to three.\"}\n\
{\"prompt_id\": \"d\", \"prompt\": \"Name a fruit.\"}\n\
{\"prompt_id\": \"e\", \"prompt\": \"Say goodbye.\"}\n\
{\"prompt_id\": \"f\", \"prompt\": \"Name a city.\"}\n";

/// A recipe over the tiny fixture models: `extra_pairs` goes into `[pairs]` before the
/// strategies, `strategies` are `[[pairs.strategies]]` tables, `train` is the `[train]` body.
struct Recipe<'a> {
    n: usize,
    reward: &'a str,
    pairs: &'a str,
    strategies: &'a str,
    train: &'a str,
    run: &'a str,
    /// Tables after `[train.loss]` (such as `[eval]`).
    tail: &'a str,
}

impl Default for Recipe<'_> {
    fn default() -> Self {
        Self {
            n: 4,
            reward: "seq-cls",
            pairs: "n = [2, 4]",
            strategies: "[[pairs.strategies]]\ntype = \"max-min\"\n",
            train: "datasets = [\"max-min\"]",
            run: "",
            tail: "",
        }
    }
}

impl Recipe<'_> {
    fn write(&self, dir: &Path) -> PathBuf {
        std::fs::write(dir.join("prompts.jsonl"), PROMPTS).unwrap();
        let text = format!(
            "[run]\nseed = 7\ndir = \"run\"\n{run}\n\n\
             [sampler]\ntype = \"burn\"\nmodel = {policy:?}\nmax_new_tokens = 6\n\n\
             [generate]\nprompts = \"prompts.jsonl\"\nn = {n}\n\n\
             [reward]\ntype = \"seq-cls\"\nmodel = {reward:?}\n\n\
             [score]\n\n\
             [pairs]\n{pairs}\n\n{strategies}\n\
             [train]\n{train}\nbatch_size = 2\nmicro_batch_size = 2\nlearning_rate = 1e-4\n\
             warmup_ratio = 0.0\n\n\
             [train.loss]\ntype = \"dpo\"\nbeta = 0.1\n\n{tail}\n",
            run = self.run,
            policy = fixture("policy"),
            n = self.n,
            reward = fixture(self.reward),
            pairs = self.pairs,
            strategies = self.strategies,
            train = self.train,
            tail = self.tail,
        );
        let path = dir.join("recipe.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// Every complete node of a run folder: label -> (node id, the bytes of its done.json).
fn records(run: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    let mut out = BTreeMap::new();
    for node in index["nodes"].as_array().unwrap() {
        if node["state"] != "done" {
            continue;
        }
        let id = node["id"].as_str().unwrap().to_string();
        let bytes = std::fs::read(run.join("nodes").join(&id).join("done.json")).unwrap();
        out.insert(node["label"].as_str().unwrap().to_string(), (id, bytes));
    }
    out
}

/// Runs the recipe; returns the complete nodes afterwards.
fn run(recipe: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    let o = sweetspot(["run".as_ref(), recipe.as_os_str()]);
    assert_ok(&o);
    records(&recipe.parent().unwrap().join("run"))
}

/// The labels whose records are byte-identical in `before` and `after` (reused), and the labels
/// of `after` that are new or were made again.
fn diff(
    before: &BTreeMap<String, (String, Vec<u8>)>,
    after: &BTreeMap<String, (String, Vec<u8>)>,
) -> (Vec<String>, Vec<String>) {
    let mut reused = Vec::new();
    let mut made = Vec::new();
    for (label, rec) in after {
        if before.values().any(|b| b == rec) {
            reused.push(label.clone());
        } else {
            made.push(label.clone());
        }
    }
    (reused, made)
}

#[test]
fn an_edit_reruns_exactly_the_nodes_it_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let first = run(&Recipe::default().write(dir));
    let labels: Vec<&str> = first.keys().map(String::as_str).collect();
    assert_eq!(
        labels,
        [
            "generate",
            "pairs n2",
            "pairs n4",
            "reference",
            "score",
            "train max-min-n2",
            "train max-min-n4"
        ]
    );
    // The readable names point into the nodes.
    let run_dir = dir.join("run");
    assert!(run_dir.join("samples.jsonl").is_file());
    assert!(run_dir.join("scored.jsonl").is_file());
    assert!(run_dir.join("pairs/n4/max-min.jsonl").is_file());
    assert!(
        run_dir
            .join("policies/max-min-n4/model.safetensors")
            .is_file()
    );
    assert!(run_dir.join("metrics/max-min-n2.jsonl").is_file());
    assert!(run_dir.join("run.log").is_file());

    // The same recipe again: nothing runs, no record is rewritten.
    let again = run(&Recipe::default().write(dir));
    assert_eq!(again, first);

    // Only a strategy changes: generate and score are reused.
    let sigma = Recipe {
        strategies: "[[pairs.strategies]]\ntype = \"sigma\"\nchosen = \"max\"\nrejected = -1\n",
        train: "datasets = \"all\"",
        ..Recipe::default()
    };
    let after = run(&sigma.write(dir));
    let (reused, made) = diff(&first, &after);
    assert_eq!(reused, ["generate", "score"], "made: {made:?}");
    assert_eq!(
        made,
        [
            "pairs n2",
            "pairs n4",
            "reference",
            "train sigma_max_vs_-1-n2",
            "train sigma_max_vs_-1-n4"
        ]
    );

    // Another reward model: only generate is reused.
    let other_rm = Recipe {
        reward: "seq-cls-pad-eos",
        ..Recipe::default()
    };
    let after = run(&other_rm.write(dir));
    let (reused, made) = diff(&first, &after);
    assert_eq!(reused, ["generate"], "made: {made:?}");
    assert_eq!(made.len(), 6, "{made:?}");

    // One more n: one more pairs node and one more train node, nothing else.
    let more_n = Recipe {
        pairs: "n = [2, 3, 4]",
        ..Recipe::default()
    };
    let after = run(&more_n.write(dir));
    let (reused, made) = diff(&first, &after);
    // The round's reference node covers every training's pairs: it is made again.
    assert_eq!(
        made,
        ["pairs n3", "reference", "train max-min-n3"],
        "reused: {reused:?}"
    );
    assert_eq!(reused.len(), 6);
}

#[test]
fn a_sweep_of_two_n_and_three_datasets_trains_six_policies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recipe = Recipe {
        strategies: "[[pairs.strategies]]\ntype = \"max-min\"\n\n\
                     [[pairs.strategies]]\ntype = \"grid\"\npoints = [\"min\", 0, \"max\"]\n",
        train: "datasets = [\"max-min\", \"grid_max_vs_*\"]",
        ..Recipe::default()
    }
    .write(dir);
    let o = sweetspot(["run".as_ref(), "--plan".as_ref(), recipe.as_os_str()]);
    assert_ok(&o);
    let plan = stdout(&o);
    let trains: Vec<&str> = plan
        .lines()
        .filter(|l| l.trim_start().starts_with("train "))
        .collect();
    assert_eq!(trains.len(), 6, "{plan}");
    for name in [
        "max-min-n2",
        "grid_max_vs_0-n2",
        "grid_max_vs_min-n2",
        "max-min-n4",
        "grid_max_vs_0-n4",
        "grid_max_vs_min-n4",
    ] {
        assert!(
            trains
                .iter()
                .any(|l| l.contains(&format!("train {name} ")) && l.contains("to run")),
            "{name} missing: {plan}"
        );
    }
    assert!(plan.contains("6 prompts x 4 = 24 samples"), "{plan}");
    // --plan runs nothing.
    assert!(!dir.join("run").exists());

    assert_ok(&sweetspot(["run".as_ref(), recipe.as_os_str()]));
    let mut policies = files(&dir.join("run/policies"));
    policies.sort();
    assert_eq!(policies.len(), 6, "{policies:?}");
    for p in &policies {
        assert!(
            dir.join("run/policies")
                .join(p)
                .join("config.json")
                .is_file()
        );
    }
    // Now the plan says every node is done, with exact sizes.
    let o = sweetspot(["run".as_ref(), "--plan".as_ref(), recipe.as_os_str()]);
    let plan = stdout(&o);
    assert!(plan.contains("11 stages, 11 done, 0 to run"), "{plan}");
}

/// The sweep's reference node computes each distinct (prompt, response) once: `max-min` and
/// `grid_max_vs_min` are the same pairs, `grid_max_vs_0` shares their chosen responses, so per
/// n the trainings need 3 responses per prompt, not 6. Its done.json counts them; every policy
/// trained from it is byte for byte the one `sweetspot train` makes with a cache of its own.
#[test]
fn the_shared_reference_computes_each_response_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recipe = Recipe {
        pairs: "n = 4",
        strategies: "[[pairs.strategies]]\ntype = \"max-min\"\n\n\
                     [[pairs.strategies]]\ntype = \"grid\"\npoints = [\"min\", 0, \"max\"]\n",
        train: "datasets = [\"max-min\", \"grid_max_vs_*\"]",
        ..Recipe::default()
    }
    .write(dir);
    let o = sweetspot(["run".as_ref(), "--plan".as_ref(), recipe.as_os_str()]);
    assert_ok(&o);
    let plan = stdout(&o);
    assert!(
        plan.contains("3 responses per prompt instead of 6, for 3 datasets"),
        "{plan}"
    );
    assert_ok(&sweetspot(["run".as_ref(), recipe.as_os_str()]));
    let run = dir.join("run");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    let node = |stage: &str| -> Vec<serde_json::Value> {
        index["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["stage"] == stage)
            .cloned()
            .collect()
    };
    let reference = &node("reference")[0];
    let counts = &reference["done"]["counts"];
    let pairs: u64 = ["max-min", "grid_max_vs_min", "grid_max_vs_0"]
        .iter()
        .map(|d| {
            node("pairs")[0]["done"]["counts"][format!("pairs.{d}")]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(counts["sequences"].as_u64().unwrap(), 2 * pairs, "{counts}");
    let distinct = counts["distinct"].as_u64().unwrap();
    let store = run
        .join("nodes")
        .join(reference["id"].as_str().unwrap())
        .join("reference.jsonl");
    assert_eq!(read_jsonl(&store).len() as u64, distinct);
    // max-min and grid_max_vs_min are the same pairs: at most 3 responses of each prompt.
    assert!(distinct <= 3 * 6 && distinct < 2 * pairs, "{counts}");
    assert_eq!(counts["computed"], counts["distinct"]);
    // Every training looked its reference up (no cache of its own).
    for t in node("train") {
        let folder = run.join("nodes").join(t["id"].as_str().unwrap());
        assert!(!folder.join("reference-cache").exists());
    }
    // The same policies as `sweetspot train` on each pairs file with its own reference pass.
    for name in ["max-min", "grid_max_vs_min", "grid_max_vs_0"] {
        let out = dir.join(format!("alone-{name}"));
        let o = sweetspot([
            "train".as_ref(),
            "--pairs".as_ref(),
            run.join(format!("pairs/n4/{name}.jsonl")).as_os_str(),
            "--policy".as_ref(),
            fixture("policy").as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
            "--beta".as_ref(),
            "0.1".as_ref(),
            "--seed".as_ref(),
            "7".as_ref(),
            "--param".as_ref(),
            "batch_size=2".as_ref(),
            "--param".as_ref(),
            "micro_batch_size=2".as_ref(),
            "--param".as_ref(),
            "learning_rate=1e-4".as_ref(),
            "--param".as_ref(),
            "warmup_ratio=0.0".as_ref(),
        ]);
        assert_ok(&o);
        let shared =
            std::fs::read(run.join(format!("policies/{name}-n4/model.safetensors"))).unwrap();
        let alone = std::fs::read(out.join("policy/model.safetensors")).unwrap();
        assert!(
            shared == alone,
            "{name}: the policy differs from a separate reference's"
        );
    }
}

#[test]
fn round_two_samples_with_round_ones_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recipe = Recipe {
        run: "rounds = 2\ncontinue_with = \"max-min\"",
        pairs: "n = 4",
        ..Recipe::default()
    }
    .write(dir);
    assert_ok(&sweetspot(["run".as_ref(), recipe.as_os_str()]));
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/run.json")).unwrap()).unwrap();
    let nodes = index["nodes"].as_array().unwrap();
    let find = |label: &str| {
        nodes
            .iter()
            .find(|n| n["label"] == label)
            .unwrap_or_else(|| panic!("no {label}: {nodes:?}"))
    };
    let r1_train = find("train max-min-n4");
    let r2_gen = find("r2 generate");
    let r2_train = find("r2 train max-min-n4");
    let hash = r1_train["done"]["hash"].as_str().unwrap();
    let model = r2_gen["done"]["identity"]["inputs"]["sampler.model"]
        .as_str()
        .unwrap();
    assert_eq!(model, format!("node:{hash}/train/policy"));
    assert_eq!(
        r2_train["done"]["identity"]["inputs"]["policy"],
        format!("node:{hash}/train/policy")
    );
    assert!(
        dir.join("run/round2/policies/max-min-n4/model.safetensors")
            .is_file()
    );
    // Round 2 sampled with another model than round 1: other samples.
    let s1 = std::fs::read(dir.join("run/round1/samples.jsonl")).unwrap();
    let s2 = std::fs::read(dir.join("run/round2/samples.jsonl")).unwrap();
    assert_ne!(s1, s2);
}

#[test]
fn a_failed_node_is_reported_and_the_pool_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The sigma strategy's own n = 8 is more than the 4 samples of each prompt: with
    // on_small_group = "skip" its dataset is empty, and training on it fails; max-min trains on
    // the other of two CPU workers meanwhile, and is complete afterwards.
    let recipe = Recipe {
        run: "device = [\"cpu\", \"cpu\"]",
        pairs: "on_small_group = \"skip\"",
        strategies: "[[pairs.strategies]]\ntype = \"max-min\"\n\n\
                     [[pairs.strategies]]\ntype = \"sigma\"\nchosen = \"max\"\n\
                     rejected = \"min\"\nn = 8\n",
        train: "datasets = \"all\"",
        ..Recipe::default()
    }
    .write(dir);
    let o = sweetspot(["run".as_ref(), recipe.as_os_str()]);
    let err = assert_clean_failure(&o, 1);
    assert!(err.contains("1 of 6 stages failed"), "{err}");
    assert!(err.contains("train sigma_max_vs_min_n8"), "{err}");
    assert!(err.contains("has no pairs"), "{err}");
    assert!(dir.join("run/policies/max-min/model.safetensors").is_file());
    assert!(!dir.join("run/policies/sigma_max_vs_min_n8").exists());
    // The report is written for the half-finished run: the pool and the finished training.
    let html = std::fs::read_to_string(dir.join("run/report.html")).unwrap();
    assert!(html.contains("<figure id=\"sigma\"") && html.contains("<figure id=\"train-loss\""));
    // A rerun reuses what is complete and fails the same node again, and only it.
    let o = sweetspot(["run".as_ref(), recipe.as_os_str()]);
    assert_clean_failure(&o, 1);
    let out = stdout(&o);
    assert_eq!(out.matches("reused (complete)").count(), 5, "{out}");
}

/// Every file under `dir` (following no links), relative, with its bytes; what holds wall times
/// or absolute paths by design (`done.json`, `run.json`, `run.log`, the pairs' `summary.json`)
/// and the stage records (which hold no results) left out.
fn outputs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                continue;
            }
            if ft.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let name = e.file_name().to_string_lossy().into_owned();
            if ["done.json", "run.json", "run.log", "summary.json"].contains(&name.as_str())
                || name.ends_with(".record.json")
                || name == "record.json"
            {
                continue;
            }
            out.insert(rel, std::fs::read(&p).unwrap());
        }
    }
    out
}

#[test]
fn killed_at_any_moment_the_run_ends_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let make = |dir: &Path| {
        Recipe {
            n: 6,
            pairs: "n = [3, 6]",
            strategies: "[[pairs.strategies]]\ntype = \"max-min\"\n\n\
                         [[pairs.strategies]]\ntype = \"grid\"\npoints = [\"min\", 0, \"max\"]\n",
            train: "datasets = \"all\"\nepochs = 3\nsave_steps = 1",
            ..Recipe::default()
        }
        .write(dir)
    };
    let (ra, rb) = (make(&a), make(&b));
    // The uninterrupted run.
    assert_ok(&sweetspot(["run".as_ref(), ra.as_os_str()]));

    let bin =
        std::env::var_os("SWEETSPOT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_sweetspot").into());
    let mut kills = Vec::new();
    // Each attempt is killed a little later than the last; each rerun starts where the last
    // stopped, so the kills land all through the stages.
    for delay_ms in [30u64, 60, 90, 120, 160, 200, 250, 300, 400, 500, 700, 1000] {
        let mut child = std::process::Command::new(&bin)
            .args(["-q", "run"])
            .arg(&rb)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            // A real SIGKILL.
            child.kill().unwrap();
            child.wait().unwrap();
            let done = records_or_empty(&b.join("run"));
            kills.push((delay_ms, done.len()));
        } else {
            assert!(child.wait().unwrap().success());
            break;
        }
    }
    eprintln!("kills (delay ms, complete nodes then): {kills:?}");
    assert!(
        kills.len() >= 5,
        "the run finished before 5 kills: {kills:?}"
    );
    // The kills fell in different places of the graph (different numbers of complete nodes).
    let mut at: Vec<usize> = kills.iter().map(|k| k.1).collect();
    at.dedup();
    assert!(at.len() >= 3, "kills all at the same point: {kills:?}");
    // The same command continues to the end.
    assert_ok(&sweetspot(["run".as_ref(), rb.as_os_str()]));
    let (oa, ob) = (outputs(&a.join("run")), outputs(&b.join("run")));
    let only_a: Vec<&String> = oa.keys().filter(|k| !ob.contains_key(*k)).collect();
    let only_b: Vec<&String> = ob.keys().filter(|k| !oa.contains_key(*k)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "after the kills {kills:?}: only in the uninterrupted run {only_a:?}, \
         only in the killed one {only_b:?}"
    );
    for (k, v) in &oa {
        assert!(ob[k] == *v, "{k} differs after the kills {kills:?}");
    }
    let stray: Vec<&String> = ob
        .keys()
        .filter(|k| k.contains(".tmp") || k.contains(".partial") || k.contains("checkpoint"))
        .collect();
    assert!(stray.is_empty(), "left behind: {stray:?}");
    assert_eq!(records(&b.join("run")).len(), records(&a.join("run")).len());
}

fn records_or_empty(run: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    if run.join("run.json").exists() {
        records(run)
    } else {
        BTreeMap::new()
    }
}

/// The paper's recipes, with the tiny fixtures in place of the 8B models: they pass the check,
/// and `--plan` lays out the paper's graph (one generate, one score, 21 trainings).
#[test]
fn the_paper_recipes_check_and_plan() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("prompts.jsonl"), PROMPTS).unwrap();
    std::fs::copy(
        example("recipes/accelerate-zero3.yaml"),
        tmp.path().join("accelerate-zero3.yaml"),
    )
    .unwrap();
    for (name, pairs_nodes, datasets) in [
        ("paper-grid", 1, 21),
        ("paper-grid-full", 1, 21),
        ("paper-scaling", 7, 3),
        ("paper-scaling-full", 7, 3),
    ] {
        let text = std::fs::read_to_string(example(&format!("recipes/{name}.toml")))
            .unwrap()
            .replace(
                "\"../../models/Meta-Llama-3-8B-Instruct\"",
                &format!("{:?}", fixture("policy")),
            )
            .replace(
                "\"../../models/ArmoRM-Llama3-8B-v0.1\"",
                &format!("{:?}", fixture("armorm")),
            )
            .replace("../../data/ultrafeedback-prompts.jsonl", "prompts.jsonl");
        let recipe = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&recipe, text).unwrap();
        let o = sweetspot([
            "validate".as_ref(),
            recipe.as_os_str(),
            "--device".as_ref(),
            "cpu".as_ref(),
        ]);
        // The LoRA forms pass once LoRA training lands; until then validate refuses the adapter
        // by name (`run --plan` sizes it all the same).
        let lora_pending =
            !name.ends_with("-full") && stderr(&o).contains("LoRA training is not implemented yet");
        if !lora_pending {
            assert_ok(&o);
        }
        let o = sweetspot([
            "run".as_ref(),
            "--plan".as_ref(),
            recipe.as_os_str(),
            "--device".as_ref(),
            "cpu".as_ref(),
        ]);
        assert_ok(&o);
        let plan = stdout(&o);
        let count = |prefix: &str| {
            plan.lines()
                .filter(|l| l.trim_start().starts_with(prefix))
                .count()
        };
        assert_eq!(count("generate "), 1, "{plan}");
        assert!(plan.contains("6 prompts x 400 = 2400 samples"), "{plan}");
        assert_eq!(count("score "), 1, "{plan}");
        assert_eq!(count("pairs"), pairs_nodes, "{plan}");
        assert_eq!(count("train "), 21, "{plan}");
        assert!(
            plan.contains(&format!("in each of {datasets} datasets")),
            "{plan}"
        );
        assert!(!tmp.path().join("runs").exists());
    }
}

/// Lists of losses and seeds multiply the policies, named by what varies; `--plan` shows them.
#[test]
fn losses_and_seeds_name_their_policies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recipe = Recipe {
        pairs: "n = 4",
        train: "datasets = \"max-min\"\nseeds = [1, 2]",
        ..Recipe::default()
    }
    .write(dir);
    // Two losses instead of the one `[train.loss]`.
    let text = std::fs::read_to_string(&recipe).unwrap().replace(
        "[train.loss]\ntype = \"dpo\"\nbeta = 0.1\n",
        "[[train.losses]]\ntype = \"dpo\"\nbeta = 0.1\n\n[[train.losses]]\ntype = \"ipo\"\n",
    );
    std::fs::write(&recipe, text).unwrap();
    let o = sweetspot(["run".as_ref(), "--plan".as_ref(), recipe.as_os_str()]);
    assert_ok(&o);
    let plan = stdout(&o);
    for name in [
        "max-min-n4-dpo-s1",
        "max-min-n4-dpo-s2",
        "max-min-n4-ipo-s1",
        "max-min-n4-ipo-s2",
    ] {
        assert!(plan.contains(&format!("train {name} ")), "{name}: {plan}");
    }
    // Different seeds and losses are different nodes.
    let ids: std::collections::BTreeSet<&str> = plan
        .lines()
        .filter(|l| l.trim_start().starts_with("train "))
        .filter_map(|l| l.split('[').nth(1))
        .collect();
    assert_eq!(ids.len(), 4, "{plan}");
}

/// `[eval]`: the starting policy and each trained one answer held-out prompts greedily, scored
/// by the recipe's reward model; the table compares each with the start, and every policy's
/// answers are exported in AlpacaEval's layout.
#[test]
fn eval_compares_every_policy_with_the_starting_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("eval.jsonl"),
        "{\"prompt_id\": \"x\", \"prompt\": \"Name an animal.\"}\n\
         {\"prompt_id\": \"y\", \"prompt\": [{\"role\": \"user\", \"content\": \"Say yes.\"}]}\n\
         {\"prompt_id\": \"z\", \"prompt\": \"Name a number.\"}\n",
    )
    .unwrap();
    let recipe = Recipe {
        pairs: "n = [2, 4]",
        tail: &format!(
            "[eval]\nprompts = \"eval.jsonl\"\nmax_new_tokens = 5\nbootstrap = 200\n\n\
             [eval.judge]\ntype = \"pairwise-judge\"\nmodel = {:?}\n",
            fixture("policy")
        ),
        ..Recipe::default()
    }
    .write(dir);
    let o = sweetspot(["run".as_ref(), "--plan".as_ref(), recipe.as_os_str()]);
    let plan = stdout(&o);
    assert!(plan.contains("eval generate base"), "{plan}");
    assert!(plan.contains("eval score max-min-n4"), "{plan}");
    assert!(plan.contains("2 policies against the base"), "{plan}");
    assert!(plan.contains("eval judge max-min-n2"), "{plan}");
    let o = sweetspot(["run".as_ref(), recipe.as_os_str()]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains("eval against the starting policy (3 prompts"),
        "{out}"
    );
    let table: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/eval.json")).unwrap()).unwrap();
    let names: Vec<&str> = table
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "max-min-n2", "max-min-n4"]);
    // The start against itself: every prompt a tie.
    assert_eq!(table[0]["win_rate"], 50.0);
    assert_eq!(table[0]["lc_win_rate"], 50.0);
    // The pairwise judge saw both orders of every prompt, and its verdict is a preference.
    assert!(table[0].get("judge").is_none());
    for row in &table[1..] {
        let j = row["judge"]["win_rate"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&j), "{row}");
    }
    let judge_node = std::fs::read_dir(dir.join("run/nodes"))
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("done.json"))
                .is_ok_and(|d| d.contains("\"eval pair max-min-n4\""))
        })
        .unwrap();
    let pairs = read_jsonl(&judge_node.path().join("samples.jsonl"));
    assert_eq!(pairs.len(), 6);
    // Sample 0 holds the policy's response first, sample 1 the start's: the same two texts.
    let (a, b) = (
        pairs[0]["response"].as_str().unwrap(),
        pairs[1]["response"].as_str().unwrap(),
    );
    let parts = |t: &str| {
        let (x, y) = t.split_once("\n\nResponse B:\n").unwrap();
        (
            x.trim_start_matches("Response A:\n").to_string(),
            y.to_string(),
        )
    };
    let ((a1, a2), (b1, b2)) = (parts(a), parts(b));
    assert_eq!((a1, a2), (b2, b1));
    for row in &table {
        let w = row["win_rate"].as_f64().unwrap();
        let (lo, hi) = (
            row["win_rate_ci"][0].as_f64().unwrap(),
            row["win_rate_ci"][1].as_f64().unwrap(),
        );
        assert!((0.0..=100.0).contains(&w) && lo <= w && w <= hi, "{row}");
        assert_eq!(row["prompts"], 3);
    }
    for name in names {
        let file = dir.join("run/eval").join(name).join("model_outputs.json");
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(rows.len(), 3, "{name}");
        assert_eq!(rows[1]["instruction"], "Say yes.");
        assert!(
            rows.iter()
                .all(|r| r["output"].is_string() && r["generator"] == format!("recipe/{name}"))
        );
    }
    // Nothing reruns.
    let o = sweetspot(["run".as_ref(), recipe.as_os_str()]);
    assert!(stdout(&o).contains("0 stages ran"), "{}", stdout(&o));
}

/// `report.html` opened in a real headless Chromium: it loads without a script error and every
/// figure renders with a non-zero size; `sweetspot report` rebuilds the same page.
#[test]
fn the_report_renders_in_a_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("eval.jsonl"),
        "{\"prompt\": \"Name an animal.\"}\n{\"prompt\": \"Name a number.\"}\n",
    )
    .unwrap();
    let recipe = Recipe {
        strategies: "[[pairs.strategies]]\ntype = \"max-min\"\n\n\
                     [[pairs.strategies]]\ntype = \"grid\"\npoints = [\"min\", 0, \"max\"]\n",
        train: "datasets = \"all\"",
        tail: "[eval]\nprompts = \"eval.jsonl\"\nmax_new_tokens = 4\nbootstrap = 50\n",
        ..Recipe::default()
    }
    .write(dir);
    let o = sweetspot(["run".as_ref(), recipe.as_os_str()]);
    assert_ok(&o);
    let report = dir.join("run/report.html");
    assert!(
        stdout(&o).contains(&report.display().to_string()),
        "{}",
        stdout(&o)
    );
    let html = std::fs::read_to_string(&report).unwrap();
    let ids = [
        "sigma",
        "beyond",
        "zscores",
        "points",
        "grid",
        "scaling",
        "train-loss",
        "train-margins",
        "train-accuracies",
    ];
    for id in ids {
        assert!(
            html.contains(&format!("<figure id=\"{id}\"")),
            "no figure {id}"
        );
    }
    // Self-contained: nothing is fetched.
    let fetched = html
        .replace("xmlns=\"http://www.w3.org/2000/svg\"", "")
        .contains("http");
    assert!(
        !fetched && !html.contains(" src=") && !html.contains("<link") && !html.contains("@import")
    );
    // The heatmap names the seven points on both axes.
    let grid = &html[html.find("<figure id=\"grid\"").unwrap()..];
    let grid = &grid[..grid.find("</figure>").unwrap()];
    for label in ["min", "-2", "0", "+2", "max"] {
        assert!(
            grid.contains(&format!(">\n{label}\n</text>")),
            "no axis label {label}"
        );
    }
    // A PNG copy of every figure beside the page, linked from it, drawn (not blank), and
    // nothing else in the folder.
    let pngs = |d: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(d.join("run/figures"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let first = pngs(dir);
    assert_eq!(
        first.len(),
        ids.len(),
        "{:?}",
        first.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    for id in ids {
        assert!(
            html.contains(&format!("href=\"figures/{id}.png\"")),
            "{id} not linked"
        );
        let bytes = &first.iter().find(|p| p.0 == format!("{id}.png")).unwrap().1;
        let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
            .unwrap_or_else(|e| panic!("{id}.png: {e}"))
            .to_rgb8();
        let want = if id == "grid" { (560, 520) } else { (640, 400) };
        assert_eq!(img.dimensions(), want, "{id}.png");
        let drawn = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        let total = (img.width() * img.height()) as usize;
        assert!(
            drawn * 100 > total,
            "{id}.png is blank: {drawn} of {total} pixels drawn"
        );
    }
    // Rebuilt from the run folder, the same page and the same figures.
    assert_ok(&sweetspot(["report".as_ref(), dir.join("run").as_os_str()]));
    assert_eq!(std::fs::read_to_string(&report).unwrap(), html);
    assert!(pngs(dir) == first, "the PNG copies changed on a rebuild");

    let Some(chromium) = browser() else {
        return;
    };
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", report.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-loaded=\"yes\""),
        "not loaded: {dom:.2000}"
    );
    assert!(!dom.contains("data-error=\""), "script error: {dom:.2000}");
    for id in ids {
        let at = dom
            .find(&format!("<figure id=\"{id}\""))
            .unwrap_or_else(|| panic!("{id} missing in the DOM"));
        let tag = &dom[at..at + dom[at..].find('>').unwrap()];
        let size = tag
            .split("data-rendered=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("{id} has no rendered size: {tag}"));
        let (w, h) = size.split_once('x').unwrap();
        assert!(
            w.parse::<u32>().unwrap() > 0 && h.parse::<u32>().unwrap() > 0,
            "{id}: {size}"
        );
    }
}

/// A run of one stage that fails says so plainly, with the stage's error (a data error found
/// while reading: a group whose rows disagree on the prompt).
#[test]
fn one_failed_stage_reads_naturally() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("scored.jsonl"),
        "{\"prompt_id\": \"p1\", \"prompt\": \"hi\", \"sample_index\": 0, \"response\": \"a\", \"reward\": 1}\n\
         {\"prompt_id\": \"p1\", \"prompt\": \"ho\", \"sample_index\": 1, \"response\": \"b\", \"reward\": 0}\n",
    )
    .unwrap();
    let recipe = dir.join("recipe.toml");
    std::fs::write(
        &recipe,
        "[run]\ndir = \"run\"\n\n[pairs]\ninput = \"scored.jsonl\"\n\n\
         [[pairs.strategies]]\ntype = \"max-min\"\n",
    )
    .unwrap();
    let o = sweetspot(["run".as_ref(), recipe.as_os_str()]);
    let err = assert_clean_failure(&o, 1);
    assert!(err.starts_with("error: stage `pairs"), "{err}");
    assert!(
        err.contains("failed: ")
            && err.contains(
                "scored.jsonl:2: field `prompt`: differs from the prompt of \
                             prompt_id `p1` on line 1"
            ),
        "{err}"
    );
    assert!(
        !err.contains("stages failed") && !err.contains("the others"),
        "{err}"
    );
}

/// An output in a folder that takes no new files is refused by `validate` and `run` before the
/// run folder exists. Root ignores a folder's write bits, so as root the commands run as user
/// `nobody` (through `setpriv`); without `setpriv` the test says so and returns.
#[test]
fn an_output_in_a_read_only_folder_is_refused_before_anything_is_written() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root_user = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
        == 0;
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    if root_user && !setpriv.exists() {
        eprintln!("skipped: running as root (which may write anywhere) without setpriv");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // As nobody, the folder itself must be open to all.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let locked = dir.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let recipe = dir.join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            "[run]\ndir = \"run\"\n\n[pairs]\ninput = {:?}\noutput = \"locked/pairs\"\n\n\
             [[pairs.strategies]]\ntype = \"max-min\"\n",
            example("quickstart/scored.jsonl")
        ),
    )
    .unwrap();
    for cmd in ["validate", "run"] {
        let o = if root_user {
            std::process::Command::new(setpriv)
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_sweetspot"))
                .args(["-q", cmd])
                .arg(&recipe)
                .output()
                .unwrap()
        } else {
            sweetspot([cmd.as_ref(), recipe.as_os_str()])
        };
        let err = assert_clean_failure(&o, 1);
        assert!(
            err.contains("key `pairs.output`: ")
                && err.contains("locked/pairs cannot be written: no new file can be made in")
                && err.contains("ermission denied"),
            "{err}"
        );
    }
    let _ = std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755));
    assert!(!dir.join("run").exists());
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0);
}

/// The plan's node ids and labels, in its order.
fn plan_nodes(recipe: &Path) -> Vec<(String, String)> {
    let o = sweetspot(["run".as_ref(), "--plan".as_ref(), recipe.as_os_str()]);
    assert_ok(&o);
    stdout(&o)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let label = l.trim_start().split("  ").next()?.trim().to_string();
            let id = l.split('[').nth(1)?.split(']').next()?.to_string();
            Some((label, id))
        })
        .collect()
}

/// `run --node ID` computes one node, as a cluster scheduler's job would: refused before its
/// inputs are complete, nothing done when it is complete; node by node in the plan's order, the
/// outputs equal a one-process run's. Then the run folder moves (and every node of it is still
/// complete), and an eval node whose stage record names a policy inside the old folder resumes
/// from its record instead of being refused.
#[test]
fn one_node_at_a_time_and_a_moved_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let eval = "[eval]\nprompts = \"prompts.jsonl\"\nmax_new_tokens = 4\nbootstrap = 20\n";
    let whole = tmp.path().join("whole");
    let parts = tmp.path().join("parts");
    for d in [&whole, &parts] {
        std::fs::create_dir_all(d).unwrap();
    }
    let recipe = |dir: &Path| {
        Recipe {
            pairs: "n = 4",
            tail: eval,
            ..Recipe::default()
        }
        .write(dir)
    };
    let (r_whole, r_parts) = (recipe(&whole), recipe(&parts));
    assert_ok(&sweetspot(["run".as_ref(), r_whole.as_os_str()]));

    let nodes = plan_nodes(&r_parts);
    let train = nodes.iter().find(|(l, _)| l.starts_with("train ")).unwrap();
    let o = sweetspot([
        "run".as_ref(),
        r_parts.as_os_str(),
        "--node".as_ref(),
        train.1.as_ref(),
    ]);
    let err = assert_clean_failure(&o, 2);
    assert!(err.contains("input nodes are not complete"), "{err}");
    let o = sweetspot([
        "run".as_ref(),
        r_parts.as_os_str(),
        "--node".as_ref(),
        "train-0000".as_ref(),
    ]);
    assert!(assert_clean_failure(&o, 2).contains("no node `train-0000`"));
    for (label, id) in &nodes {
        let o = sweetspot([
            "run".as_ref(),
            r_parts.as_os_str(),
            "--node".as_ref(),
            id.as_ref(),
        ]);
        assert_ok(&o);
        assert!(
            stdout(&o).contains(&format!("{label} [{id}]: done")),
            "{}",
            stdout(&o)
        );
    }
    // A scheduler's retry does nothing.
    let o = sweetspot([
        "run".as_ref(),
        r_parts.as_os_str(),
        "--node".as_ref(),
        train.1.as_ref(),
    ]);
    assert_ok(&o);
    assert!(stdout(&o).contains("complete already"), "{}", stdout(&o));
    same_nodes(&whole.join("run"), &parts.join("run"));

    // Moved: every node is still complete; the pairs' summary names no absolute path.
    let moved = tmp.path().join("elsewhere");
    std::fs::rename(&parts, &moved).unwrap();
    let r_moved = moved.join("recipe.toml");
    for (_, id) in &nodes {
        let summary = moved.join("run/nodes").join(id).join("pairs/summary.json");
        if summary.exists() {
            let text = std::fs::read_to_string(&summary).unwrap();
            assert!(!text.contains(tmp.path().to_str().unwrap()), "{text}");
        }
    }
    // An eval generate node, its done.json gone: its stage record (with the old folder's policy
    // path in its settings) is the same work, complete, so it is taken as it is.
    let (_, eval_gen) = nodes
        .iter()
        .find(|(l, _)| l.starts_with("eval generate max-min"))
        .unwrap();
    let node_dir = moved.join("run/nodes").join(eval_gen);
    let record = std::fs::read_to_string(node_dir.join("samples.jsonl.record.json")).unwrap();
    assert!(record.contains(parts.to_str().unwrap()), "{record}");
    std::fs::remove_file(node_dir.join("done.json")).unwrap();
    let o = sweetspot(["run".as_ref(), r_moved.as_os_str()]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains(&format!("1 stages ran, {} reused", nodes.len() - 1)),
        "{out}"
    );
    same_nodes(&whole.join("run"), &moved.join("run"));
}

/// The nodes' files of two run folders are the same (names and bytes; the report and figures,
/// which only a whole run draws, left out).
fn same_nodes(a: &Path, b: &Path) {
    let nodes = |d: &Path| -> BTreeMap<String, Vec<u8>> {
        outputs(d)
            .into_iter()
            .filter(|(k, _)| k.starts_with("nodes/"))
            .collect()
    };
    let (x, y) = (nodes(a), nodes(b));
    let differ: Vec<&String> = x
        .keys()
        .chain(y.keys())
        .filter(|k| x.get(*k) != y.get(*k))
        .collect();
    assert!(differ.is_empty(), "the nodes differ in {differ:?}");
}

/// `--emit slurm` on a real Slurm: a one-node cluster on loopback (`scripts/slurm_loopback.sh`:
/// munged, slurmctld, slurmd), a sweep of six trainings (sample, score, two pairs sets, the
/// reference, six DPO nodes) submitted by the emitted script; the first job seen running is
/// cancelled with `scancel` (and the jobs below it), the plan emitted and submitted again, and the
/// graph finishes: every node completed by exactly one job (the jobs' logs), the nodes equal to a
/// one-process run's made in another folder. The three trainings of each pairs set are one job
/// array.
/// Skipped with a message where Slurm is not installed (Debian: `slurm-wlm`, `munge`), except in
/// CI, which installs it.
#[test]
fn a_slurm_job_graph_on_a_loopback_cluster() {
    let installed = [
        "/usr/sbin/slurmctld",
        "/usr/sbin/slurmd",
        "/usr/sbin/munged",
    ]
    .iter()
    .all(|p| Path::new(p).exists());
    let root_user = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !(installed && root_user) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test: install slurm-wlm and munge, and run as root"
        );
        eprintln!("skipped: Slurm (slurm-wlm, munge) is not installed, or this is not root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cluster = tmp.path().join("cluster");
    let script = root().join("scripts/slurm_loopback.sh");
    struct Stop(PathBuf, PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("bash")
                .arg(&self.0)
                .arg("stop")
                .arg(&self.1)
                .status();
        }
    }
    let up = std::process::Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&cluster)
        .output()
        .unwrap();
    let _stop = Stop(script.clone(), cluster.clone());
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let conf = cluster.join("slurm.conf");

    // Six trainings: three datasets (the same max-vs-min pairs by three strategies) at n = 2
    // and n = 4, never empty.
    let recipe = |dir: &Path, tail: &str| {
        std::fs::create_dir_all(dir).unwrap();
        Recipe {
            strategies: "[[pairs.strategies]]\ntype = \"max-min\"\n\n\
                         [[pairs.strategies]]\ntype = \"grid\"\npoints = [\"min\", \"max\"]\n\n\
                         [[pairs.strategies]]\ntype = \"sigma\"\nchosen = \"max\"\n\
                         rejected = \"min\"\n",
            train: "datasets = \"all\"",
            tail,
            ..Recipe::default()
        }
        .write(dir)
    };
    let tail = "[cluster]\ntime = \"0:30:00\"\nsbatch = [\"--nice=0\"]\n";
    let whole = recipe(&tmp.path().join("whole"), tail);
    let slurm = recipe(&tmp.path().join("slurm"), tail);
    assert_ok(&sweetspot(["run".as_ref(), whole.as_os_str()]));

    let run = tmp.path().join("slurm/run");
    let slurm_cmd = |program: &str| {
        let mut c = std::process::Command::new(program);
        c.env("SLURM_CONF", &conf).env(
            "PATH",
            format!("{}:/usr/sbin", std::env::var("PATH").unwrap_or_default()),
        );
        c
    };
    let submit = || {
        let o = sweetspot([
            "run".as_ref(),
            "--emit".as_ref(),
            "slurm".as_ref(),
            slurm.as_os_str(),
        ]);
        assert_ok(&o);
        let script = std::fs::read_to_string(run.join("slurm/submit.sh")).unwrap();
        let out = slurm_cmd("bash")
            .arg(run.join("slurm/submit.sh"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        script
    };
    let squeue = |state: &str| -> Vec<String> {
        let mut c = slurm_cmd("squeue");
        c.args(["-h", "-o", "%i"]);
        if !state.is_empty() {
            c.args(["-t", state]);
        }
        c.output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let script = submit();
    let trainings = script.matches("\n# train ").count();
    assert!(script.contains("--array=0-2"), "{script}");
    assert!(script.contains("--dependency=afterok:"), "{script}");
    assert!(script.contains("--time=0:30:00"), "{script}");
    assert_eq!(trainings, 2, "two arrays of three trainings: {script}");
    // Cancel the first job seen running, and with it the graph below it (its dependants can
    // never start): a scheduler's cancellation mid-run.
    let start = std::time::Instant::now();
    let cancelled = loop {
        if let Some(job) = squeue("R").first() {
            break job.clone();
        }
        assert!(start.elapsed().as_secs() < 120, "no job ever ran");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        slurm_cmd("scancel")
            .arg(&cancelled)
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    for job in squeue("") {
        let _ = slurm_cmd("scancel").arg(&job).status();
    }
    while !squeue("").is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Emitted again, only what is missing is submitted, and the graph finishes.
    submit();
    let start = std::time::Instant::now();
    while !squeue("").is_empty() && start.elapsed().as_secs() < 600 {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let o = sweetspot(["run".as_ref(), "--plan".as_ref(), slurm.as_os_str()]);
    let plan = stdout(&o);
    let logs: String = files(&run.join("slurm/logs"))
        .iter()
        .map(|f| std::fs::read_to_string(run.join("slurm/logs").join(f)).unwrap_or_default())
        .collect();
    let nodes: Vec<&str> = plan.lines().skip(1).filter(|l| l.contains("  [")).collect();
    assert!(nodes.iter().all(|l| l.contains(" done ")), "{plan}\n{logs}");
    // Every node was completed by exactly one job.
    for l in &nodes {
        let id = l.split('[').nth(1).unwrap().split(']').next().unwrap();
        assert_eq!(
            logs.matches(&format!("[{id}]: done")).count(),
            1,
            "{id}:\n{logs}"
        );
    }
    assert_eq!(
        nodes
            .iter()
            .filter(|l| l.trim_start().starts_with("train "))
            .count(),
        6
    );
    same_nodes(&tmp.path().join("whole/run"), &run);
}

/// `--emit argo`: an Argo Workflows DAG with one task per node to run, its dependencies the
/// plan's input nodes (from `--plan --json`), one template per stage kind, the run's volume
/// claim mounted, recipe paths rewritten under the mount; refused without an image. The same
/// file loads with Argo's Python models in CI (`scripts/check_argo.py`, the `hera` package).
#[test]
fn an_argo_workflow_is_the_plans_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recipe = Recipe {
        tail: "[cluster]\nimage = \"example/sweetspot:1\"\nvolume_claim = \"runs\"\n\
               mount_path = \"/mnt/runs\"\n",
        ..Recipe::default()
    }
    .write(dir);
    let o = sweetspot([
        "run".as_ref(),
        "--emit".as_ref(),
        "argo".as_ref(),
        recipe.as_os_str(),
    ]);
    assert_ok(&o);
    let wf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/argo/workflow.json")).unwrap())
            .unwrap();
    let o = sweetspot([
        "run".as_ref(),
        "--plan".as_ref(),
        "--json".as_ref(),
        recipe.as_os_str(),
    ]);
    assert_ok(&o);
    let plan: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let nodes = plan["nodes"].as_array().unwrap();
    let templates = wf["spec"]["templates"].as_array().unwrap();
    let tasks = templates[0]["dag"]["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), nodes.len());
    for (task, node) in tasks.iter().zip(nodes) {
        assert_eq!(task["name"], node["id"]);
        assert_eq!(task["template"], node["stage"]);
        let deps = task["dependencies"].as_array().cloned().unwrap_or_default();
        assert_eq!(&serde_json::Value::Array(deps), &node["inputs"], "{task}");
    }
    let kinds: std::collections::BTreeSet<&str> =
        nodes.iter().map(|n| n["stage"].as_str().unwrap()).collect();
    assert_eq!(templates.len(), kinds.len() + 1);
    let c = &templates[1]["container"];
    assert_eq!(c["args"][1], "/mnt/runs/recipe.toml", "{c}");
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/mnt/runs");
    assert_eq!(
        wf["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "runs"
    );
    // No image: refused by name.
    let bare = Recipe::default().write(dir);
    let o = sweetspot([
        "run".as_ref(),
        "--emit".as_ref(),
        "argo".as_ref(),
        bare.as_os_str(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("`[cluster] image`"), "{}", stderr(&o));
}

/// `[train.adapter]` through `sweetspot run`: the trained policy is a PEFT adapter folder on the
/// starting policy, and the eval stage loads it (base + adapter) like any model; bad adapter
/// keys are refused by name.
#[test]
fn a_lora_recipe_trains_an_adapter_that_eval_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("eval.jsonl"),
        "{\"prompt_id\": \"x\", \"prompt\": \"Name an animal.\"}\n",
    )
    .unwrap();
    let tail = "[train.adapter]\ntype = \"lora\"\nr = 4\nlora_alpha = 8\n\
                target_modules = \"all-linear\"\n\n\
                [eval]\nprompts = \"eval.jsonl\"\nmax_new_tokens = 4\nbootstrap = 50\n";
    let recipe = Recipe {
        pairs: "n = [4]",
        tail,
        ..Recipe::default()
    }
    .write(dir);
    let o = sweetspot(["run".as_ref(), recipe.as_os_str()]);
    assert_ok(&o);
    let table: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/eval.json")).unwrap()).unwrap();
    let names: Vec<&str> = table
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "max-min-n4"]);
    fn find(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                find(&p, out);
            } else if p.file_name().is_some_and(|n| n == "adapter_config.json") {
                out.push(dir.to_path_buf());
            }
        }
    }
    let mut adapters = Vec::new();
    find(&dir.join("run/nodes"), &mut adapters);
    assert_eq!(adapters.len(), 1, "one adapter policy");
    assert!(adapters[0].join("adapter_model.safetensors").is_file());
    assert!(!adapters[0].join("model.safetensors").exists());

    // Refused by name.
    for (bad, key) in [
        ("lora_dropout = 0.1", "train.adapter.lora_dropout"),
        (
            "target_modules = [\"q_proj\", \"lm_head\"]",
            "train.adapter.target_modules",
        ),
        ("r = 0", "train.adapter.r"),
        ("bias = \"all\"", "train.adapter.bias"),
    ] {
        let tail = format!("[train.adapter]\ntype = \"lora\"\n{bad}\n");
        let recipe = Recipe {
            pairs: "n = [4]",
            tail: &tail,
            ..Recipe::default()
        }
        .write(dir);
        let o = sweetspot(["validate".as_ref(), recipe.as_os_str()]);
        assert!(!o.status.success(), "{bad} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(key), "{bad}: {err}");
    }
}

/// `--emit slurm` with a TRL training under an accelerate config (`[train] backend = "trl"`):
/// its job holds the config's `num_processes` GPUs (a whole node under ZeRO-3); the pairs job
/// none; the other jobs one. The plan has no shared reference node for it.
#[test]
fn a_trl_training_job_asks_for_the_accelerate_configs_gpus() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("zero3.yaml"),
        "distributed_type: DEEPSPEED\nnum_processes: 8\n",
    )
    .unwrap();
    let recipe = Recipe {
        run: "device = \"cuda\"",
        pairs: "n = 4",
        train: "datasets = [\"max-min\"]\nbackend = \"trl\"\naccelerate_config = \"zero3.yaml\"",
        ..Recipe::default()
    }
    .write(dir);
    // TRL's effective batch is micro-batch x accumulation x the 8 processes: a batch of 2 is
    // refused by name before anything runs.
    let o = sweetspot(["validate".as_ref(), recipe.as_os_str()]);
    let err = assert_clean_failure(&o, 2);
    assert!(
        err.contains("train.batch_size") && err.contains("num_processes (8)"),
        "{err}"
    );
    let text = std::fs::read_to_string(&recipe).unwrap().replace(
        "batch_size = 2\nmicro_batch_size = 2",
        "batch_size = 16\nmicro_batch_size = 2",
    );
    std::fs::write(&recipe, text).unwrap();
    let (submit, train) = slurm_train_job(&recipe);
    assert!(train.contains("--gres=gpu:8"), "{submit}");
    for l in submit
        .lines()
        .filter(|l| l.contains("$(sbatch") && !l.contains("sweetspot-train"))
    {
        // The pairs stage runs no model: no GPU.
        if l.contains("sweetspot-pairs") {
            assert!(!l.contains("--gres"), "{l}");
        } else {
            assert!(l.contains("--gres=gpu:1"), "{l}");
        }
    }
    assert!(submit.contains("sweetspot-pairs"), "{submit}");
    // No reference node: TRL computes its own.
    let o = sweetspot(["run".as_ref(), "--plan".as_ref(), recipe.as_os_str()]);
    assert_ok(&o);
    assert!(
        !stdout(&o)
            .lines()
            .any(|l| l.trim_start().starts_with("reference ")),
        "{}",
        stdout(&o)
    );
}

/// `[[reward]]` tables: each model is a score node of its own, so adding a second reward model
/// runs only its scoring and what lies below (pairs, reference, training); the first model's
/// node is the one-model recipe's, reused byte for byte.
#[test]
fn a_second_reward_model_reruns_only_its_scoring_and_below() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let write = |rewards: &str, pairs: &str| {
        std::fs::write(dir.join("prompts.jsonl"), PROMPTS).unwrap();
        let text = format!(
            "[run]\nseed = 7\ndir = \"run\"\n\n\
             [sampler]\ntype = \"burn\"\nmodel = {policy:?}\nmax_new_tokens = 6\n\n\
             [generate]\nprompts = \"prompts.jsonl\"\nn = 4\n\n{rewards}\n\
             [score]\n\n[pairs]\n{pairs}\n\n[[pairs.strategies]]\ntype = \"max-min\"\n\n\
             [train]\ndatasets = [\"max-min\"]\nbatch_size = 2\nmicro_batch_size = 2\n\
             learning_rate = 1e-4\nwarmup_ratio = 0.0\n\n\
             [train.loss]\ntype = \"dpo\"\nbeta = 0.1\n",
            policy = fixture("policy"),
        );
        let path = dir.join("recipe.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let seq = format!("type = \"seq-cls\"\nmodel = {:?}\n", fixture("seq-cls"));
    let armo = format!("type = \"armorm\"\nmodel = {:?}\n", fixture("armorm"));
    let first = run(&write(&format!("[reward]\n{seq}"), ""));
    assert_eq!(
        first.keys().map(String::as_str).collect::<Vec<_>>(),
        ["generate", "pairs", "reference", "score", "train max-min"]
    );

    let two = format!("[[reward]]\nname = \"seq\"\n{seq}\n[[reward]]\nname = \"armo\"\n{armo}\n");
    let pairs = "rank_by = { aggregate = \"mean_z\" }\nagree = [\"seq\", \"armo\"]\nagree_min = 1";
    let after = run(&write(&two, pairs));
    let (reused, made) = diff(&first, &after);
    assert_eq!(reused, ["generate", "score seq"], "made: {made:?}");
    assert_eq!(made, ["pairs", "reference", "score armo", "train max-min"]);
    let run_dir = dir.join("run");
    assert!(run_dir.join("scored/seq.jsonl").is_file());
    assert!(run_dir.join("scored/armo.jsonl").is_file());
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("pairs/all/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["rank_by"], "mean_z", "{summary}");
    assert_eq!(summary["reward_models"][0]["name"], "seq", "{summary}");
    assert_eq!(summary["reward_models"][1]["name"], "armo", "{summary}");
    // mean_z ranks a chosen response above its rejected one for at least one model: an
    // agreement of one model keeps every pair.
    assert_eq!(summary["datasets"][0]["dropped"]["agree"], 0, "{summary}");
    // The report: the models' agreement figures and the filters' counts.
    assert_ok(&sweetspot(["report".as_ref(), run_dir.as_os_str()]));
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(
        run_dir
            .join("figures/agreement-spearman-seq-armo.png")
            .is_file(),
        "{html}"
    );
    assert!(
        html.contains("id=\"agreement-reversed-seq-armo\""),
        "{html}"
    );
    assert!(html.contains("<table id=\"filters\">"), "{html}");
    assert!(html.contains("dropped: agree"), "{html}");
    assert!(html.contains("<td>mean_z</td>"), "{html}");

    // Another ranking: both scorings are reused, pairs and training run again.
    let before = after;
    let after = run(&write(&two, "rank_by = \"armo\""));
    let (reused, made) = diff(&before, &after);
    assert_eq!(
        reused,
        ["generate", "score armo", "score seq"],
        "made: {made:?}"
    );
    assert_eq!(made, ["pairs", "reference", "train max-min"]);

    // A name no model has is refused by key before anything runs.
    let o = sweetspot(["run".as_ref(), write(&two, "rank_by = \"sky\"").as_os_str()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("pairs.rank_by"), "{}", stderr(&o));
    assert!(stderr(&o).contains("`sky`"), "{}", stderr(&o));
    // Several models and no ranking: refused, naming the key.
    let o = sweetspot(["run".as_ref(), write(&two, "").as_os_str()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("pairs.rank_by"), "{}", stderr(&o));
    // A name used twice: refused at its line, naming the table.
    let twice = two.replace("name = \"armo\"", "name = \"seq\"");
    let o = sweetspot([
        "validate".as_ref(),
        write(&twice, "rank_by = \"seq\"").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let line = std::fs::read_to_string(dir.join("recipe.toml"))
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == "name = \"seq\"")
        .nth(1)
        .map(|(i, _)| i + 1)
        .unwrap();
    assert!(
        stderr(&o).contains(&format!("recipe.toml:{line}:"))
            && stderr(&o).contains("key `reward[1].name`: `seq` names two [[reward]] tables"),
        "{}",
        stderr(&o)
    );
    // Several models under `sweetspot score`: refused (one score node per model is `run`'s).
    let o = sweetspot([
        "score".as_ref(),
        "--recipe".as_ref(),
        write(&two, "rank_by = \"seq\"").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("sweetspot run"), "{}", stderr(&o));
}

/// examples/recipes/two-reward-models.toml with the tiny fixtures in place of the 8B models
/// (ArmoRM's and a seq-cls one for Skywork's): it passes the check, and `--plan` lays out one
/// score node per model and the grid's 21 trainings.
#[test]
fn the_two_reward_model_example_checks_and_plans() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("prompts.jsonl"), PROMPTS).unwrap();
    let text = std::fs::read_to_string(example("recipes/two-reward-models.toml"))
        .unwrap()
        .replace(
            "\"../../models/Meta-Llama-3-8B-Instruct\"",
            &format!("{:?}", fixture("policy")),
        )
        .replace(
            "\"../../models/ArmoRM-Llama3-8B-v0.1\"",
            &format!("{:?}", fixture("armorm")),
        )
        .replace(
            "\"../../models/Skywork-Reward-Llama-3.1-8B-v0.2\"",
            &format!("{:?}", fixture("seq-cls")),
        )
        .replace("../../data/ultrafeedback-prompts.jsonl", "prompts.jsonl");
    assert!(!text.contains("../../models"), "{text}");
    let recipe = tmp.path().join("two.toml");
    std::fs::write(&recipe, text).unwrap();
    let cpu = ["--device".as_ref(), "cpu".as_ref()];
    let o = sweetspot(
        ["validate".as_ref(), recipe.as_os_str()]
            .into_iter()
            .chain(cpu),
    );
    assert_ok(&o);
    let o = sweetspot(
        ["run".as_ref(), "--plan".as_ref(), recipe.as_os_str()]
            .into_iter()
            .chain(cpu),
    );
    assert_ok(&o);
    let plan = stdout(&o);
    let count = |prefix: &str| {
        plan.lines()
            .filter(|l| l.trim_start().starts_with(prefix))
            .count()
    };
    assert_eq!(count("score armo"), 1, "{plan}");
    assert_eq!(count("score sky"), 1, "{plan}");
    assert_eq!(count("pairs"), 1, "{plan}");
    assert_eq!(count("train "), 21, "{plan}");
    assert!(!tmp.path().join("runs").exists());
}

/// `[train] devices` (native data parallelism): bad lists refused by name before anything runs;
/// the training's Slurm job asks for its GPUs, `--plan --json` says so, the memory plan is per
/// device with the sharded step's share, and the node's id is the one-device training's (where
/// it runs is not what it computes).
#[test]
fn a_data_parallel_training_is_checked_planned_and_asks_for_its_gpus() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let write = |devices: &str, batch: usize| {
        let recipe = Recipe {
            run: "device = \"cuda\"\ndevice_memory = \"80GB\"",
            pairs: "n = 4",
            train: "datasets = [\"max-min\"]",
            ..Recipe::default()
        }
        .write(dir);
        let text = std::fs::read_to_string(&recipe).unwrap().replace(
            "batch_size = 2\nmicro_batch_size = 2",
            &format!("batch_size = {batch}\nmicro_batch_size = 1\n{devices}"),
        );
        assert!(text.contains(&format!("batch_size = {batch}")), "{text}");
        std::fs::write(&recipe, text).unwrap();
        recipe
    };
    for (devices, batch, key, words) in [
        ("devices = \"cuda:0-3\"", 2, "train.batch_size", "4 devices"),
        ("devices = [\"cpu\"]", 2, "train.devices", "over GPUs"),
        ("devices = [\"cuda\"]", 2, "train.devices", "by index"),
        (
            "devices = [\"cuda:1\", \"cuda:0-1\"]",
            4,
            "train.devices",
            "`cuda:1` is named twice",
        ),
        (
            "devices = \"cuda:3-1\"",
            4,
            "train.devices",
            "runs backwards",
        ),
        ("devices = []", 4, "train.devices", "empty"),
        ("devices = \"tpu:0\"", 4, "train.devices", "unknown device"),
    ] {
        let recipe = write(devices, batch);
        let o = sweetspot(["validate".as_ref(), recipe.as_os_str()]);
        let err = assert_clean_failure(&o, 2);
        assert!(err.contains(key) && err.contains(words), "{devices}: {err}");
    }
    let plan_json = |recipe: &Path| -> serde_json::Value {
        let o = sweetspot([
            "run".as_ref(),
            "--plan".as_ref(),
            "--json".as_ref(),
            recipe.as_os_str(),
        ]);
        assert_ok(&o);
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    let train_node = |plan: &serde_json::Value| {
        plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["stage"] == "train")
            .cloned()
            .unwrap()
    };
    let one = train_node(&plan_json(&write("", 8)));
    assert_eq!(one["gpus"], 1, "{one}");
    let recipe = write("devices = \"cuda:0-3\"", 8);
    let four = train_node(&plan_json(&recipe));
    assert_eq!(four["gpus"], 4, "{four}");
    assert_eq!(four["id"], one["id"], "the devices moved the node's id");
    let o = sweetspot(["run".as_ref(), "--plan".as_ref(), recipe.as_os_str()]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("AdamW moments (2 x f32, / 4 by the sharded step)"),
        "{}",
        stdout(&o)
    );
    let (submit, train) = slurm_train_job(&recipe);
    assert!(train.contains("--gres=gpu:4"), "{submit}");
}

/// `--emit slurm` of a recipe with one training: the submit script and the training's job line.
fn slurm_train_job(recipe: &Path) -> (String, String) {
    let o = sweetspot([
        "run".as_ref(),
        "--emit".as_ref(),
        "slurm".as_ref(),
        recipe.as_os_str(),
    ]);
    assert_ok(&o);
    let dir = recipe.parent().unwrap();
    let submit = std::fs::read_to_string(dir.join("run/slurm/submit.sh")).unwrap();
    let train: Vec<&str> = submit
        .lines()
        .filter(|l| l.contains("sweetspot-train"))
        .collect();
    assert_eq!(train.len(), 1, "{submit}");
    let line = train[0].to_string();
    (submit, line)
}
