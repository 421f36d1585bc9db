//! The memory plan of `sweetspot run --plan` on the paper's recipes, before their inputs exist:
//! a scratch tree holds the recipes and only the `config.json` files of Llama-3-8B-Instruct and
//! ArmoRM-Llama3-8B (tests/fixtures/configs), no weights and no prompts. The plan lists every
//! node with its peak memory, names the missing prompts, refuses the full-parameter trainings on
//! the recipes' 80 GB device and accepts the LoRA form; `validate` and `run` still refuse the
//! missing inputs.

mod common;

use std::path::Path;

use common::*;

fn plan(recipe: &Path) -> std::process::Output {
    sweetspot(["run".as_ref(), "--plan".as_ref(), recipe.as_os_str()])
}

/// Every node line of a plan (they carry the node id in brackets).
fn node_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.starts_with("  ") && (l.ends_with(']') || l.contains("]  <- ")))
        .collect()
}

#[test]
fn lora_paper_recipes_fit_one_80gb_gpu_from_config_json_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let recipes = config_only_tree(tmp.path(), &MODELS);
    for name in ["paper-grid", "paper-scaling"] {
        let o = plan(&recipes.join(format!("{name}.toml")));
        assert_ok(&o);
        let out = stdout(&o);
        let nodes = node_lines(&out);
        assert!(nodes.len() >= 24, "{out}");
        // Every model-running node has its estimate; pairs and eval run no model.
        for l in &nodes {
            let t = l.trim_start();
            if ["generate", "score", "train ", "reference"]
                .iter()
                .any(|k| t.starts_with(k))
            {
                assert!(l.contains(" GB "), "no estimate: {l}\n{out}");
            } else {
                assert!(l.contains("peak -"), "{l}");
            }
        }
        assert!(
            out.contains("`generate.prompts`") && out.contains("does not exist"),
            "{out}"
        );
        assert!(out.contains("prompts unknown"), "{out}");
        assert!(
            out.contains("80.0 GB (the recipe's run.device_memory)"),
            "{out}"
        );
        assert!(out.contains("frozen base (bf16): 16.1 GB"), "{out}");
        assert!(!out.contains("DOES NOT FIT"), "{out}");
        assert!(!tmp.path().join("examples/recipes/runs").exists());
    }
}

#[test]
fn the_native_full_parameter_recipe_is_refused_on_one_80gb_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let recipes = config_only_tree(tmp.path(), &MODELS);
    let o = plan(&recipes.join("paper-scaling-full.toml"));
    let err = assert_clean_failure(&o, 1);
    assert!(err.contains("21 of"), "{err}");
    assert!(err.contains("cannot fit in the device's memory"), "{err}");
    assert!(err.contains("AdamW moments (2 x f32): 64.2 GB"), "{err}");
    assert!(err.contains("286.3 GB"), "{err}");
    // What would fit is named.
    assert!(err.contains("LoRA") && err.contains("(fits)"), "{err}");
    // The plan is still printed, each training marked: the stages and the rounds' shared
    // reference node.
    let out = stdout(&o);
    assert_eq!(node_lines(&out).len(), 31);
    assert!(out.contains("DOES NOT FIT"), "{out}");
}

/// The full-parameter grid through TRL under DeepSpeed ZeRO-3 over 8 processes
/// (paper-grid-full.toml): each process holds an eighth of the states and fits its 80 GB GPU;
/// TRL computes its own reference, so the plan has no shared reference node. The same recipe
/// without the accelerate config (one process) is refused.
#[test]
fn the_trl_zero3_grid_fits_each_gpu_and_one_process_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let recipes = config_only_tree(tmp.path(), &MODELS);
    let o = plan(&recipes.join("paper-grid-full.toml"));
    assert_ok(&o);
    let out = stdout(&o);
    // generate, score, pairs and 21 trainings.
    assert_eq!(node_lines(&out).len(), 24, "{out}");
    assert!(
        !node_lines(&out)
            .iter()
            .any(|l| l.trim_start().starts_with("reference")),
        "{out}"
    );
    for part in [
        "weights (bf16 / 8 by ZeRO-3): 2.0 GB",
        "f32 master weights / 8 by ZeRO-3: 4.0 GB",
        "AdamW moments (2 x f32 / 8 by ZeRO-3): 8.0 GB",
        "TRL's reference model (bf16 / 8 by ZeRO-3): 2.0 GB",
        "logits: 13.1 GB",
        "DeepSpeed ZeRO-3 over 8 process(es)",
    ] {
        assert!(out.contains(part), "{part}: {out}");
    }
    let peak = out
        .lines()
        .find(|l| l.contains("peak of `train grid_max_vs_min`"))
        .unwrap();
    assert!(peak.ends_with("fits"), "{peak}");
    let text = std::fs::read_to_string(recipes.join("paper-grid-full.toml")).unwrap();
    let one = recipes.join("one-process.toml");
    std::fs::write(
        &one,
        text.replace("accelerate_config = \"accelerate-zero3.yaml\"", ""),
    )
    .unwrap();
    let err = assert_clean_failure(&plan(&one), 1);
    assert!(err.contains("cannot fit in the device's memory"), "{err}");
    assert!(err.contains("num_processes"), "{err}");
}

#[test]
fn validate_and_run_still_refuse_missing_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let recipes = config_only_tree(tmp.path(), &MODELS);
    let recipe = recipes.join("paper-grid-full.toml");
    for cmd in ["validate", "run"] {
        let o = sweetspot([cmd.as_ref(), recipe.as_os_str()]);
        let err = assert_clean_failure(&o, 1);
        assert!(err.contains("does not exist"), "{cmd}: {err}");
    }
    assert!(!recipes.join("runs").exists());
}

#[test]
fn a_model_without_config_json_has_unknown_memory() {
    let tmp = tempfile::tempdir().unwrap();
    // Only the policy's config: the reward model's folder is absent.
    let recipes = config_only_tree(tmp.path(), &MODELS[..1]);
    let o = plan(&recipes.join("paper-grid.toml"));
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("`reward.model`"), "{out}");
    let score = out
        .lines()
        .find(|l| l.trim_start().starts_with("score "))
        .unwrap();
    assert!(score.contains("peak unknown"), "{score}");
    assert!(out.contains("peak of `score`: unknown"), "{out}");
    assert!(
        out.contains("ArmoRM-Llama3-8B-v0.1 does not exist"),
        "{out}"
    );
}

/// `run` refuses a stage that cannot fit before the first node runs: the tiny fixtures on a
/// device said to hold 1 MB.
#[test]
fn run_refuses_a_stage_that_cannot_fit_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = |m: &str| format!("{:?}", root().join("tests/fixtures/models").join(m));
    let text = std::fs::read_to_string(example("recipes/paper-scaling-full.toml"))
        .unwrap()
        .replace(
            "\"../../models/Meta-Llama-3-8B-Instruct\"",
            &fixture("policy"),
        )
        .replace("\"../../models/ArmoRM-Llama3-8B-v0.1\"", &fixture("armorm"))
        .replace("../../data/ultrafeedback-prompts.jsonl", "prompts.jsonl")
        .replace("device_memory = \"80GB\"", "device_memory = \"1MB\"");
    std::fs::copy(
        example("quickstart/prompts.jsonl"),
        tmp.path().join("prompts.jsonl"),
    )
    .unwrap();
    let recipe = tmp.path().join("recipe.toml");
    std::fs::write(&recipe, text).unwrap();
    let o = sweetspot([
        "run".as_ref(),
        recipe.as_os_str(),
        "--device".as_ref(),
        "cpu".as_ref(),
    ]);
    let err = assert_clean_failure(&o, 1);
    assert!(err.contains("cannot fit in the device's memory"), "{err}");
    assert!(err.contains("1 MB of `cpu`"), "{err}");
    assert!(!tmp.path().join("runs").exists(), "a node ran");
}
