//! A plugin written outside the runner gets the same treatment as the built-in ones: the
//! runner learns what it reads, where its model is and which of its settings are execution
//! settings through the plugin traits, never by reading a setting's name. The two samplers here
//! name their model `checkpoint` (a local one, with an execution setting of its own, `workers`)
//! and `served_as` (a remote one, whose model name happens to be a file in the recipe's folder).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sweetspot::core::{
    BuildContext, ConfigIssue, PluginError, PluginInput, Progress, Prompt, SampleGroup,
    SampleRequest, Sampler, SamplerConfig, declared_inputs,
};
use sweetspot::runner::plan::{Plan, StageKind, plan};
use sweetspot::runner::{RecipeSource, Stages, validate_recipe};

/// A local sampler whose model setting is `checkpoint`, with `workers` (how many threads: an
/// execution setting) besides the usual ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSampler {
    checkpoint: PathBuf,
    temperature: f32,
    max_new_tokens: usize,
    #[serde(default)]
    workers: usize,
    #[serde(default)]
    device: Option<String>,
}

#[sweetspot::core::plugin(
    name = "test-checkpoint",
    description = "a third party's local sampler (tests/third_party_plan.rs)",
    example = "type = \"test-checkpoint\"\ncheckpoint = \"model\"\ntemperature = 1.0\nmax_new_tokens = 8"
)]
impl SamplerConfig for CheckpointSampler {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Sampler>, PluginError> {
        Err(PluginError::config(
            "test-checkpoint",
            "planned only: this test runs no stage",
        ))
    }

    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        let path = ctx.resolve(&self.checkpoint);
        if !path.exists() {
            return Err(ConfigIssue::missing_file("checkpoint", &path));
        }
        Ok(())
    }

    fn inputs(&self, _ctx: &BuildContext) -> Vec<PluginInput> {
        declared_inputs([("checkpoint", &self.checkpoint)])
    }

    fn execution_settings(&self) -> &'static [&'static str] {
        &["workers", "device"]
    }

    fn local_model(&self) -> Option<PluginInput> {
        Some(PluginInput::new("checkpoint", &self.checkpoint))
    }

    fn with_policy(&self, model: &Path) -> Option<Box<dyn SamplerConfig>> {
        Some(Box::new(Self {
            checkpoint: model.to_path_buf(),
            ..self.clone()
        }))
    }

    fn for_eval(
        &self,
        temperature: f32,
        max_new_tokens: Option<usize>,
    ) -> Option<Box<dyn SamplerConfig>> {
        Some(Box::new(Self {
            temperature,
            max_new_tokens: max_new_tokens.unwrap_or(self.max_new_tokens),
            ..self.clone()
        }))
    }
}

/// A remote sampler: its model is a name on a server (`served_as`), not a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSampler {
    server: String,
    served_as: String,
    temperature: f32,
}

#[sweetspot::core::plugin(
    name = "test-remote",
    description = "a third party's remote sampler (tests/third_party_plan.rs)",
    example = "type = \"test-remote\"\nserver = \"http://127.0.0.1:9\"\nserved_as = \"m\"\ntemperature = 1.0"
)]
impl SamplerConfig for RemoteSampler {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Sampler>, PluginError> {
        Ok(Box::new(NoSampler))
    }

    fn inputs(&self, _ctx: &BuildContext) -> Vec<PluginInput> {
        Vec::new()
    }

    fn execution_settings(&self) -> &'static [&'static str] {
        &["server"]
    }
}

struct NoSampler;

impl Sampler for NoSampler {
    fn sample(
        &mut self,
        _prompts: &[Prompt],
        _request: &SampleRequest,
        _progress: &dyn Progress,
        _sink: &mut dyn FnMut(SampleGroup) -> Result<(), PluginError>,
    ) -> Result<(), PluginError> {
        Err(PluginError::config("test-remote", "planned only"))
    }
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
        .to_string_lossy()
        .replace('\\', "/")
}

const PROMPTS: &str = "{\"prompt_id\": \"a\", \"prompt\": \"Name a colour.\"}\n\
                       {\"prompt_id\": \"b\", \"prompt\": \"Say hello.\"}\n";

/// Validates and plans `text` (written as `dir/recipe.toml`).
fn planned(dir: &Path, text: &str) -> Result<Plan, String> {
    sweetspot::cli::link_builtin_plugins();
    let path = dir.join("recipe.toml");
    std::fs::write(&path, text).unwrap();
    let recipe =
        sweetspot::core::recipe::Recipe::from_toml(text, Some(&path)).map_err(|e| e.to_string())?;
    let ctx = BuildContext {
        seed: recipe.run.seed,
        ..BuildContext::new(dir)
    };
    let src = RecipeSource {
        recipe: &recipe,
        text,
        origin: &path,
    };
    validate_recipe(&src, &ctx, Stages::all_of(&recipe)).map_err(|e| e.error().to_string())?;
    plan(&recipe, &path, &ctx).map_err(|e| e.to_string())
}

fn local_recipe(sampler_extra: &str, temperature: f32) -> String {
    format!(
        r#"[run]
seed = 3
rounds = 2
continue_with = "max-min"

[sampler]
type = "test-checkpoint"
checkpoint = "{policy}"
temperature = {temperature}
max_new_tokens = 8
{sampler_extra}

[generate]
prompts = "prompts.jsonl"
n = 4

[reward]
type = "seq-cls"
model = "{reward}"

[score]

[pairs]

[[pairs.strategies]]
type = "max-min"

[train]
datasets = ["max-min"]

[train.loss]
type = "dpo"

[eval]
prompts = "prompts.jsonl"
temperature = 0.5
max_new_tokens = 4
"#,
        policy = fixture("policy"),
        reward = fixture("seq-cls"),
    )
}

fn hashes(plan: &Plan) -> Vec<String> {
    plan.nodes.iter().map(|n| n.hash.clone()).collect()
}

#[test]
fn a_local_sampler_with_its_own_model_key_is_planned_through_its_methods() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("prompts.jsonl"), PROMPTS).unwrap();
    let plan = planned(tmp.path(), &local_recipe("", 0.8)).unwrap();

    let gens: Vec<_> = plan
        .nodes
        .iter()
        .filter(|n| n.stage == StageKind::Generate && !n.label.contains("pair"))
        .collect();
    // Round 1: the checkpoint is an input (fingerprinted), not a setting.
    let first = &gens[0].identity;
    assert!(
        first.inputs["sampler.checkpoint"].starts_with("model:"),
        "{first:?}"
    );
    assert!(!first.settings.contains_key("sampler.checkpoint"));
    assert!(!first.settings.contains_key("sampler.workers"));
    assert_eq!(
        first.settings["sampler.temperature"],
        serde_json::json!(0.8f32)
    );
    // Round 2 samples with the policy round 1 trained: the train node's product.
    let second = gens.iter().find(|n| n.round == 2).unwrap();
    let train1 = plan
        .nodes
        .iter()
        .find(|n| n.stage == StageKind::Train && n.round == 1)
        .unwrap();
    assert_eq!(
        second.identity.inputs["sampler.checkpoint"],
        format!("node:{}/train/policy", train1.hash)
    );
    assert!(
        second.deps.contains(
            &plan
                .nodes
                .iter()
                .position(|n| n.hash == train1.hash)
                .unwrap()
        )
    );
    // Training starts from the sampler's checkpoint (`local_model`).
    assert_eq!(
        train1.identity.inputs["policy"],
        first.inputs["sampler.checkpoint"]
    );
    // Eval samples at eval's temperature and length (`for_eval`), once per policy.
    let evals: Vec<_> = gens
        .iter()
        .filter(|n| n.label.starts_with("eval "))
        .collect();
    assert_eq!(evals.len(), 3, "the base and one policy per round");
    for e in &evals {
        assert_eq!(
            e.identity.settings["sampler.temperature"],
            serde_json::json!(0.5)
        );
        assert_eq!(
            e.identity.settings["sampler.max_new_tokens"],
            serde_json::json!(4)
        );
    }

    // Its own execution setting changes no hash; a computed setting changes every node below.
    let tmp2 = tempfile::tempdir().unwrap();
    std::fs::write(tmp2.path().join("prompts.jsonl"), PROMPTS).unwrap();
    let busy = planned(
        tmp2.path(),
        &local_recipe("workers = 16\ndevice = \"cpu\"", 0.8),
    )
    .unwrap();
    assert_eq!(hashes(&plan), hashes(&busy));
    let hotter = planned(tmp2.path(), &local_recipe("", 0.9)).unwrap();
    assert_ne!(hashes(&plan)[0], hashes(&hotter)[0]);
}

#[test]
fn a_remote_sampler_has_no_model_file_and_is_refused_where_one_is_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("prompts.jsonl"), PROMPTS).unwrap();
    // A file that happens to have the served model's name: not something the sampler reads.
    std::fs::write(dir.join("policy-v1"), "not a model").unwrap();
    let recipe = |server: &str, extra: &str| {
        format!(
            r#"[sampler]
type = "test-remote"
server = "{server}"
served_as = "policy-v1"
temperature = 1.0

[generate]
prompts = "prompts.jsonl"
n = 2
{extra}"#
        )
    };
    let a = planned(dir, &recipe("http://127.0.0.1:9", "")).unwrap();
    let id = &a.nodes[0].identity;
    assert_eq!(id.inputs.keys().collect::<Vec<_>>(), ["prompts"], "{id:?}");
    assert_eq!(
        id.settings["sampler.served_as"],
        serde_json::json!("policy-v1")
    );
    assert!(!id.settings.contains_key("sampler.server"));
    // Another server (an execution setting), or a changed file of the same name: same node.
    std::fs::write(dir.join("policy-v1"), "still not a model").unwrap();
    let b = planned(dir, &recipe("http://127.0.0.1:10", "")).unwrap();
    assert_eq!(hashes(&a), hashes(&b));

    // Training needs a local model: named by key, since the sampler has none.
    let train = format!(
        "\n[reward]\ntype = \"seq-cls\"\nmodel = \"{}\"\n\n[score]\n\n[pairs]\n\n\
         [[pairs.strategies]]\ntype = \"max-min\"\n\n[train]\ndatasets = [\"max-min\"]\n\n\
         [train.loss]\ntype = \"dpo\"\n",
        fixture("seq-cls")
    );
    let err = planned(dir, &recipe("http://127.0.0.1:9", &train)).unwrap_err();
    assert!(err.contains("train.policy"), "{err}");
    assert!(err.contains("`test-remote` sampler"), "{err}");
    // With `[train] policy`, the run trains from it.
    let with_policy = train.replace(
        "[train]\n",
        &format!("[train]\npolicy = \"{}\"\n", fixture("policy")),
    );
    let p = planned(dir, &recipe("http://127.0.0.1:9", &with_policy)).unwrap();
    let t = p
        .nodes
        .iter()
        .find(|n| n.stage == StageKind::Train)
        .unwrap();
    assert!(t.identity.inputs["policy"].starts_with("model:"));
}
