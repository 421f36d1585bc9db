//! A recipe as a graph of stage nodes (`sweetspot run`): sweeps expanded, rounds unrolled, every
//! node named by a content hash of what it computes.
//!
//! Invariants:
//! - A node's hash covers its resolved settings (the plugin's whole table with defaults filled
//!   in, less execution settings: device, batch sizes), the seed, and a hash of each input: an
//!   upstream node's hash, a data file's SHA-256, a model's fingerprint (see
//!   [`crate::identity`]). Paths are inputs, not settings, so moving a recipe does not change a
//!   hash; changing anything a node computes does, and so changes every node below it.
//! - Planning reads no model and runs nothing: it hashes user files, reads `done.json` records,
//!   and counts prompts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use sweetspot_core::recipe::{OneOrMany, PairsConfig, Recipe, TrainConfig};
use sweetspot_core::{BuildContext, PreferenceLossConfig, RewardModelConfig, SamplerConfig};

use crate::error::RunError;
use crate::identity::{Identity, Table, hash_file, model_fingerprint, table_inputs};
use crate::resolve::{Resolved, StageInput, TrainPairs, resolve};

/// Bumped when what a node's hash covers changes.
const NODE_SCHEMA: &str = "sweetspot-node-1";

use crate::identity::COMPUTATION;

/// The kind of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// Samples from prompts.
    Generate,
    /// Rewards for samples.
    Score,
    /// Pair datasets from scored samples, for one n.
    Pairs,
    /// The reference model's log-probabilities of every distinct response the round's trainings
    /// need, computed once for all of them.
    Reference,
    /// A policy trained on one dataset.
    Train,
    /// Win rates of every policy's eval responses against the starting policy's.
    Eval,
}

impl StageKind {
    /// Its name (`generate`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Score => "score",
            Self::Pairs => "pairs",
            Self::Reference => "reference",
            Self::Train => "train",
            Self::Eval => "eval",
        }
    }

    /// Where a node of this kind leaves its product inside its folder: the file, or the folder
    /// of files.
    pub fn product(self) -> &'static str {
        match self {
            Self::Generate => "samples.jsonl",
            Self::Score => "scored.jsonl",
            Self::Pairs => "pairs",
            Self::Reference => "reference.jsonl",
            Self::Train => "train",
            Self::Eval => "eval.json",
        }
    }
}

/// Where a node's input comes from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A user's file or folder.
    File(PathBuf),
    /// A file (relative path) inside an upstream node's folder.
    Node(usize, String),
}

/// What a node runs: each plugin table as its own type (the JSON form is only what the node's
/// identity hashes).
#[derive(Debug, Clone)]
pub enum Work {
    /// `[generate]`.
    Generate {
        /// The prompts file.
        prompts: PathBuf,
        /// Samples per prompt.
        n: usize,
        /// The sampler (loading `model` instead of its own, when given).
        sampler: Box<dyn SamplerConfig>,
        /// The policy the sampler loads, when it comes from an earlier round or is evaluated.
        model: Option<Source>,
    },
    /// `[score]`.
    Score {
        /// The samples.
        input: Source,
        /// The reward model.
        reward: Box<dyn RewardModelConfig>,
        /// Groups per call.
        groups_per_call: usize,
    },
    /// `[pairs]` for one n.
    Pairs {
        /// The scored samples (with several reward models: the first model's).
        input: Source,
        /// With several `[[reward]]` models: each model's name and scored samples (a score node
        /// each), in the recipe's order; empty with one.
        rewards: Vec<(String, Source)>,
        /// The `[pairs]` table with this node's `n` and no paths.
        config: Box<PairsConfig>,
    },
    /// `[eval]`: the comparison of every policy's scored eval responses with the baseline's.
    Eval {
        /// The baseline's scored responses (a score node).
        baseline: usize,
        /// Each policy: its name and its scored responses (a score node).
        policies: Vec<(String, usize)>,
        /// Each policy judged against the baseline (`[eval.judge]`): its name and the judge's
        /// scores of both orders (a score node).
        judged: Vec<(String, usize)>,
        /// Bootstrap resamples.
        bootstrap: usize,
    },
    /// `[eval.judge]`'s input: per prompt, the policy's and the baseline's responses as one
    /// text in both orders (sample 0: the policy's first).
    Compose {
        /// The policy's scored responses (a score node).
        policy: usize,
        /// The baseline's (a score node).
        baseline: usize,
    },
    /// `[train]` for one dataset, loss and seed.
    Train {
        /// The pairs.
        pairs: Source,
        /// The policy to start from (and the reference).
        policy: Source,
        /// The `[train]` table with one `loss` and no paths or lists.
        config: Box<TrainConfig>,
        /// The reference node whose store holds this training's reference log-probabilities
        /// (`None`: the loss needs none).
        reference: Option<usize>,
    },
    /// The reference log-probabilities of the round's trainings, computed once.
    Reference {
        /// The reference model (the trainings' starting policy).
        policy: Source,
        /// Every pairs file a training of the round reads whose loss needs the reference.
        pairs: Vec<Source>,
        /// The round's `[train]` table (compute type, micro-batch, checkpointing).
        config: Box<TrainConfig>,
        /// Responses per prompt: (distinct, as each training would compute them), where the
        /// strategies say which response each dataset picks.
        per_prompt: Option<(usize, usize)>,
    },
}

impl Work {
    /// The upstream nodes this work reads.
    pub fn deps(&self) -> Vec<usize> {
        let node = |s: &Source| match s {
            Source::Node(i, _) => Some(*i),
            Source::File(_) => None,
        };
        match self {
            Self::Generate { model, .. } => model.iter().filter_map(node).collect(),
            Self::Score { input, .. } => node(input).into_iter().collect(),
            Self::Pairs { input, rewards, .. } => std::iter::once(input)
                .chain(rewards.iter().map(|r| &r.1))
                .filter_map(node)
                .collect(),
            Self::Train {
                pairs,
                policy,
                reference,
                ..
            } => [pairs, policy]
                .into_iter()
                .filter_map(node)
                .chain(*reference)
                .collect(),
            Self::Reference { policy, pairs, .. } => std::iter::once(policy)
                .chain(pairs)
                .filter_map(node)
                .collect(),
            Self::Eval {
                baseline,
                policies,
                judged,
                ..
            } => std::iter::once(*baseline)
                .chain(policies.iter().map(|p| p.1))
                .chain(judged.iter().map(|p| p.1))
                .collect(),
            Self::Compose { policy, baseline } => vec![*policy, *baseline],
        }
    }
}

/// One node of the graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// `<stage>-<first 16 hex digits of the hash>`: its folder under `nodes/`.
    pub id: String,
    /// The stage.
    pub stage: StageKind,
    /// A readable name (`pairs n16`, `train grid_max_vs_-2-n16`), with `r2 ` in later rounds.
    pub label: String,
    /// 1-based round.
    pub round: usize,
    /// For pairs nodes, the n; for train nodes, the n of their dataset.
    pub n: Option<usize>,
    /// For train nodes: the policy's name (`grid_max_vs_-2-n16`).
    pub policy_name: Option<String>,
    /// For train nodes: the dataset.
    pub dataset: Option<String>,
    /// For score nodes of one of several `[[reward]]` models: the model's name.
    pub reward: Option<String>,
    /// The full hash.
    pub hash: String,
    /// What the hash covers.
    pub identity: Identity,
    /// Upstream nodes.
    pub deps: Vec<usize>,
    /// What to run.
    pub work: Work,
    /// The seed of the node's random choices.
    pub seed: u64,
}

impl Node {
    /// The readable names of this node's products in the run folder: (name relative to the
    /// run folder, path inside the node's folder). A run of several `rounds` puts each round's
    /// under `round<k>/`.
    pub fn readable_names(&self, rounds: usize) -> Vec<(String, String)> {
        let prefix = if rounds > 1 {
            format!("round{}/", self.round)
        } else {
            String::new()
        };
        if self.label.starts_with("eval ") {
            // The eval's own responses are read through the eval node's `model_outputs/`.
            return Vec::new();
        }
        let product = self.stage.product().to_string();
        match self.stage {
            StageKind::Eval => vec![
                ("eval.json".into(), product),
                ("eval".into(), "model_outputs".into()),
            ],
            StageKind::Score => match &self.reward {
                // Several reward models: `scored/<name>.jsonl`, one file per model.
                Some(name) => vec![(format!("{prefix}scored/{name}.jsonl"), product)],
                None => vec![(format!("{prefix}{product}"), product)],
            },
            StageKind::Generate => vec![(format!("{prefix}{product}"), product)],
            StageKind::Reference => Vec::new(),
            StageKind::Pairs => {
                let set = self
                    .n
                    .map_or_else(|| "all".to_string(), |n| format!("n{n}"));
                vec![(format!("{prefix}pairs/{set}"), product)]
            }
            StageKind::Train => {
                let name = self.policy_name.clone().unwrap_or_default();
                vec![
                    (format!("{prefix}policies/{name}"), "train/policy".into()),
                    (
                        format!("{prefix}metrics/{name}.jsonl"),
                        "train/metrics.jsonl".into(),
                    ),
                ]
            }
        }
    }
}

/// The expanded recipe.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The run's name.
    pub name: String,
    /// The run folder.
    pub dir: PathBuf,
    /// Nodes in an order where every node comes after its inputs.
    pub nodes: Vec<Node>,
    /// Rounds.
    pub rounds: usize,
    /// The recipe's folder (relative paths resolve against it).
    pub base_dir: PathBuf,
    /// The devices to run on (one worker each).
    pub devices: Vec<String>,
    /// Datasets each pairs node writes, and their file extension.
    pub datasets: Vec<String>,
    /// The pairs files' extension.
    pub pairs_ext: String,
    /// Copies the recipe asks for (`output` keys): (node, stage).
    pub publish: Vec<(usize, PathBuf)>,
    /// `[run] device_memory` in bytes, when given.
    pub device_memory: Option<u64>,
}

impl Plan {
    /// A node's folder.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join("nodes").join(&self.nodes[i].id)
    }

    /// The path of a source.
    pub fn source_path(&self, s: &Source) -> PathBuf {
        match s {
            Source::File(p) => p.clone(),
            Source::Node(i, rel) => self.node_dir(*i).join(rel),
        }
    }
}

/// The datasets named by `patterns` (names, globs with `*` and `?`, or `all`), in the order the
/// pairs stage writes them; each pattern must match.
pub fn select_datasets(patterns: &[String], names: &[String]) -> Result<Vec<String>, String> {
    if patterns.is_empty() {
        return Err("an empty list: name at least one dataset, a glob, or \"all\"".into());
    }
    let mut picked = vec![false; names.len()];
    for p in patterns {
        let mut any = false;
        for (i, name) in names.iter().enumerate() {
            if p == "all" || glob_match(p, name) {
                picked[i] = true;
                any = true;
            }
        }
        if !any {
            return Err(format!(
                "`{p}` matches no dataset of [pairs] (it writes {})",
                names.join(", ")
            ));
        }
    }
    Ok(names
        .iter()
        .zip(picked)
        .filter(|(_, p)| *p)
        .map(|(n, _)| n.clone())
        .collect())
}

/// `*` (any run of characters) and `?` (one character) against the whole name.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// One policy the train stage makes per round.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Its name.
    pub name: String,
    /// The dataset (`None`: a user's pairs file).
    pub dataset: Option<String>,
    /// The n of its pair set.
    pub n: Option<usize>,
    /// Index into the losses.
    pub loss: usize,
    /// The data-order seed.
    pub seed: u64,
}

/// The losses of `[train]`: its one `loss`, else its `losses`.
pub fn train_losses(t: &TrainConfig) -> Vec<Box<dyn PreferenceLossConfig>> {
    match &t.loss {
        Some(l) => vec![l.clone()],
        None => t.losses.clone(),
    }
}

/// Every policy a round trains, named `<dataset>[-n<N>][-<loss>][-s<seed>]` (a part only when
/// the recipe varies it); `run_seed` is the seed when `[train] seeds` is not given.
pub fn policy_variants(
    t: &TrainConfig,
    run_seed: u64,
    dataset_names: &[String],
    ns: &[Option<usize>],
) -> Vec<Variant> {
    let types: Vec<&str> = train_losses(t).iter().map(|l| l.plugin_type()).collect();
    let unique_types = {
        let mut t = types.clone();
        t.sort();
        t.dedup();
        t.len() == types.len()
    };
    let seeds = t
        .seeds
        .as_ref()
        .map(|s| s.to_vec())
        .unwrap_or_else(|| vec![run_seed]);
    let sets: Vec<(String, Option<String>, Option<usize>)> = match (&t.pairs, &t.datasets) {
        (Some(p), _) => vec![(
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pairs".into()),
            None,
            None,
        )],
        (None, Some(patterns)) => {
            let picked = select_datasets(&patterns.to_vec(), dataset_names).unwrap_or_default();
            let mut out = Vec::new();
            for n in ns {
                for d in &picked {
                    let name = match n {
                        Some(n) => format!("{d}-n{n}"),
                        None => d.clone(),
                    };
                    out.push((name, Some(d.clone()), *n));
                }
            }
            out
        }
        (None, None) => Vec::new(),
    };
    let mut out = Vec::new();
    for (base, dataset, n) in &sets {
        for (li, ty) in types.iter().enumerate() {
            for &seed in &seeds {
                let mut name = base.clone();
                if types.len() > 1 {
                    if unique_types {
                        name.push_str(&format!("-{ty}"));
                    } else {
                        name.push_str(&format!("-loss{li}"));
                    }
                }
                if seeds.len() > 1 {
                    name.push_str(&format!("-s{seed}"));
                }
                out.push(Variant {
                    name,
                    dataset: dataset.clone(),
                    n: *n,
                    loss: li,
                    seed,
                });
            }
        }
    }
    out
}

/// The one policy `name` picks among `names`: a policy name, or a dataset name when the round
/// trains one policy on it.
pub fn continue_with(name: &str, names: &[String]) -> Result<String, String> {
    if names.iter().any(|n| n == name) {
        return Ok(name.to_string());
    }
    let matching: Vec<&String> = names
        .iter()
        .filter(|n| {
            n.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('-'))
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "`{name}` is none of the policies a round trains ({})",
            names.join(", ")
        )),
        many => Err(format!(
            "`{name}` names {} policies ({}): name one",
            many.len(),
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Moves a plugin table's execution settings out of `identity` and its input files into
/// `identity.inputs` (fingerprinted), under the table's `name`.
fn plugin_identity<T: Table + ?Sized>(
    identity: &mut Identity,
    name: &str,
    table: &T,
    ctx: &BuildContext,
) -> Result<(), RunError> {
    for key in table.execution_settings() {
        identity.settings.remove(&format!("{name}.{key}"));
    }
    for (key, path) in table_inputs(name, table, ctx) {
        identity.settings.remove(&key);
        identity.inputs.insert(key, fingerprint_cached(&path)?);
    }
    Ok(())
}

thread_local! {
    static FINGERPRINTS: std::cell::RefCell<BTreeMap<PathBuf, String>> =
        const { std::cell::RefCell::new(BTreeMap::new()) };
}

thread_local! {
    /// Set by [`plan_missing_inputs`]: an input that does not exist is fingerprinted as missing.
    static MISSING_OK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A file's SHA-256 or a folder's (or model file's) fingerprint, computed once per plan.
fn fingerprint_cached(path: &Path) -> Result<String, RunError> {
    if let Some(f) = FINGERPRINTS.with(|m| m.borrow().get(path).cloned()) {
        return Ok(f);
    }
    if MISSING_OK.with(|m| m.get()) && !path.exists() {
        return Ok(format!("missing:{}", path.display()));
    }
    let f = if path.is_dir() || is_model_file(path) {
        model_fingerprint(path)?
    } else {
        hash_file(path)?
    };
    FINGERPRINTS.with(|m| m.borrow_mut().insert(path.to_path_buf(), f.clone()));
    Ok(f)
}

fn is_model_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf") || e.eq_ignore_ascii_case("safetensors"))
}

/// The graph being built: its nodes, and the copies the recipe asks for.
struct Graph<'a> {
    nodes: Vec<Node>,
    publish: Vec<(usize, PathBuf)>,
    ctx: &'a BuildContext,
}

/// Where a new node sits: its label, round and seed.
struct At {
    label: String,
    round: usize,
    seed: u64,
}

impl Graph<'_> {
    /// The fingerprint of a source: a file's, or `node:<hash>/<path>` for a node's product.
    fn source_input(&self, s: &Source) -> Result<String, RunError> {
        Ok(match s {
            Source::File(p) => fingerprint_cached(p)?,
            Source::Node(i, rel) => format!("node:{}/{rel}", self.nodes[*i].hash),
        })
    }

    /// Adds a node: its hash from `identity`, its dependencies from `work`.
    fn add(&mut self, stage: StageKind, mut identity: Identity, work: Work, at: At) -> usize {
        identity.stage = stage.name().to_string();
        let mut h = Sha256::new();
        h.update(NODE_SCHEMA.as_bytes());
        h.update(COMPUTATION.to_le_bytes());
        h.update(serde_json::to_vec(&identity).unwrap_or_default());
        let hash: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let At { label, round, seed } = at;
        self.nodes.push(Node {
            id: format!("{}-{}", stage.name(), &hash[..16]),
            stage,
            label: if round > 1 {
                format!("r{round} {label}")
            } else {
                label
            },
            round,
            n: None,
            policy_name: None,
            dataset: None,
            reward: None,
            hash,
            identity,
            deps: {
                let mut d = work.deps();
                let mut seen = std::collections::BTreeSet::new();
                d.retain(|i| seen.insert(*i));
                d
            },
            work,
            seed,
        });
        self.nodes.len() - 1
    }

    /// A generate node: `n` samples per prompt of `prompts` with `sampler`, loading `model`
    /// instead of the sampler's own when given.
    fn generate(
        &mut self,
        (prompts, n): (PathBuf, usize),
        sampler: &(dyn SamplerConfig + 'static),
        model: Option<Source>,
        at: At,
    ) -> Result<usize, RunError> {
        // With a model from a node, what the table names is not what is loaded: hash the table
        // without it, and the node's product as the input under the model's setting.
        let (hashed, model_key) = match &model {
            Some(_) => {
                let key = sampler.local_model().map(|m| m.key);
                let table = sampler.with_policy(Path::new(""));
                match (table, key) {
                    (Some(t), Some(k)) => (t, Some(format!("sampler.{k}"))),
                    _ => {
                        return Err(config_err(format!(
                            "{}: the `{}` sampler loads no local model",
                            at.label,
                            sampler.plugin_type()
                        )));
                    }
                }
            }
            None => (dyn_clone::clone_box(sampler), None),
        };
        let mut id = Identity::new(
            "generate",
            &serde_json::json!({"sampler": Table::settings(hashed.as_ref()), "n": n, "seed": at.seed}),
        );
        plugin_identity(&mut id, "sampler", hashed.as_ref(), self.ctx)?;
        if let (Some(m), Some(key)) = (&model, model_key) {
            id.settings.remove(&key);
            id.inputs.insert(key, self.source_input(m)?);
        }
        id.inputs
            .insert("prompts".into(), fingerprint_cached(&prompts)?);
        let work = Work::Generate {
            prompts,
            n,
            sampler: dyn_clone::clone_box(sampler),
            model,
        };
        Ok(self.add(StageKind::Generate, id, work, at))
    }

    /// A score node: the samples of `input` scored by `reward`.
    fn score(
        &mut self,
        input: Source,
        reward: &(dyn RewardModelConfig + 'static),
        groups_per_call: usize,
        at: At,
    ) -> Result<usize, RunError> {
        let mut id = Identity::new(
            "score",
            &serde_json::json!({"reward": Table::settings(reward), "groups_per_call": groups_per_call}),
        );
        plugin_identity(&mut id, "reward", reward, self.ctx)?;
        id.inputs
            .insert("samples".into(), self.source_input(&input)?);
        let work = Work::Score {
            input,
            reward: dyn_clone::clone_box(reward),
            groups_per_call,
        };
        Ok(self.add(StageKind::Score, id, work, at))
    }

    /// A pairs node: `config` (with its n, no paths) over the scored samples of `input`, or
    /// of each of several reward models (`rewards`, named; then `input` is the first's).
    fn pairs(
        &mut self,
        (input, rewards): (Source, Vec<(String, Source)>),
        config: PairsConfig,
        n: Option<usize>,
        at: At,
    ) -> Result<usize, RunError> {
        let table = serde_json::to_value(&config).map_err(config_err)?;
        let mut id = Identity::new(
            "pairs",
            &serde_json::json!({"pairs": table, "seed": at.seed}),
        );
        if rewards.is_empty() {
            id.inputs
                .insert("scored".into(), self.source_input(&input)?);
        }
        for (name, source) in &rewards {
            id.inputs
                .insert(format!("scored.{name}"), self.source_input(source)?);
        }
        let work = Work::Pairs {
            input,
            rewards,
            config: Box::new(config),
        };
        let i = self.add(StageKind::Pairs, id, work, at);
        self.nodes[i].n = n;
        Ok(i)
    }

    /// A train node: policy `v` trained from `policy` on `pairs` with `config` (one loss).
    fn train(
        &mut self,
        (pairs, policy): (Source, Source),
        config: TrainConfig,
        (v, reference): (&Variant, Option<usize>),
        round: usize,
    ) -> Result<usize, RunError> {
        let mut table = serde_json::to_value(&config).map_err(config_err)?;
        // Data parallelism is where the node runs, not what it computes.
        if let Some(t) = table.as_object_mut() {
            t.remove("devices");
        }
        let mut id = Identity::new(
            "train",
            &serde_json::json!({"train": table, "seed": v.seed}),
        );
        id.inputs.insert("pairs".into(), self.source_input(&pairs)?);
        id.inputs
            .insert("policy".into(), self.source_input(&policy)?);
        let at = At {
            label: format!("train {}", v.name),
            round,
            seed: v.seed,
        };
        // The reference node is not an input of the hash: what it computes is fixed by the
        // policy, the pairs and the settings, which the hash covers already.
        let work = Work::Train {
            pairs,
            policy,
            config: Box::new(config),
            reference,
        };
        let i = self.add(StageKind::Train, id, work, at);
        let node = &mut self.nodes[i];
        node.n = v.n;
        node.policy_name = Some(v.name.clone());
        node.dataset = v.dataset.clone();
        Ok(i)
    }
}

fn config_err(m: impl std::fmt::Display) -> RunError {
    RunError::Config(m.to_string())
}

/// The run folder of a recipe: `[run] dir`, else `runs/<name>` beside the recipe (`name`: the
/// run's name, else the recipe file's stem).
pub fn run_dir(r: &Recipe, recipe_path: &Path, ctx: &BuildContext) -> PathBuf {
    let dir = match &r.run.dir {
        Some(d) => ctx.resolve(d),
        None => ctx.base_dir.join("runs").join(run_name(r, recipe_path)),
    };
    // Absolute, so that no stage resolves it again against the recipe's folder.
    std::path::absolute(&dir).unwrap_or(dir)
}

/// The run's name: `[run] name`, else the recipe file's stem.
pub fn run_name(r: &Recipe, recipe_path: &Path) -> String {
    r.run.name.clone().unwrap_or_else(|| {
        recipe_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into())
    })
}

/// [`plan`] for `sweetspot run --plan` before the inputs exist (see
/// [`crate::validate_for_plan`]): an input that does not exist gets a `missing:<path>`
/// fingerprint, so the nodes that read it have placeholder hashes until it does.
pub fn plan_missing_inputs(
    r: &Recipe,
    recipe_path: &Path,
    ctx: &BuildContext,
) -> Result<Plan, RunError> {
    MISSING_OK.with(|m| m.set(true));
    let out = plan(r, recipe_path, ctx);
    MISSING_OK.with(|m| m.set(false));
    out
}

/// Expands a checked recipe (see [`crate::validate_recipe`]) into its graph: resolves it once
/// ([`crate::resolve::resolve`]), then adds each round's stages and the eval.
pub fn plan(r: &Recipe, recipe_path: &Path, ctx: &BuildContext) -> Result<Plan, RunError> {
    // Fingerprints are cached for one plan only: a file may change between two plans.
    FINGERPRINTS.with(|m| m.borrow_mut().clear());
    let rr = resolve(r, recipe_path, ctx)?;
    let ctx = &BuildContext {
        base_dir: rr.base_dir.clone(),
        ..ctx.clone()
    };
    let mut g = Graph {
        nodes: Vec::new(),
        publish: Vec::new(),
        ctx,
    };
    let mut trained: Vec<usize> = Vec::new();
    let mut last_policy: Option<usize> = None;
    for round in 1..=rr.rounds {
        let samples = add_generate(&mut g, &rr, round, last_policy)?;
        let scored = add_score(&mut g, &rr, round, samples)?;
        let pair_nodes = add_pairs(&mut g, &rr, round, scored)?;
        let (new, next) = add_train(&mut g, &rr, round, &pair_nodes, last_policy)?;
        trained.extend(new);
        last_policy = next;
    }
    add_eval(&mut g, &rr, &trained)?;
    let pairs = rr.pairs.as_ref();
    Ok(Plan {
        name: rr.name,
        dir: rr.dir,
        nodes: g.nodes,
        rounds: rr.rounds,
        base_dir: rr.base_dir,
        devices: rr.devices,
        datasets: pairs.map(|p| p.datasets.clone()).unwrap_or_default(),
        pairs_ext: pairs.map_or_else(|| "jsonl".into(), |p| p.ext.clone()),
        publish: g.publish,
        device_memory: r.run.device_memory.map(|b| b.0),
    })
}

/// A stage's input: the upstream node's product when it reads the stage before, else the
/// user's file.
fn input_of(input: &StageInput, upstream: Option<Source>, table: &str) -> Result<Source, RunError> {
    match (input, upstream) {
        (StageInput::Upstream, Some(up)) => Ok(up),
        (StageInput::File(p), _) => Ok(Source::File(p.clone())),
        (StageInput::Upstream, None) => Err(config_err(format!("{table}: `input` is not given"))),
    }
}

/// Round `round`'s generate node: the samples.
fn add_generate(
    g: &mut Graph<'_>,
    rr: &Resolved,
    round: usize,
    last_policy: Option<usize>,
) -> Result<Option<Source>, RunError> {
    let Some(gen_) = &rr.generate else {
        return Ok(None);
    };
    let prompts = gen_.prompts[(round - 1).min(gen_.prompts.len() - 1)].clone();
    let model = last_policy.map(|i| Source::Node(i, "train/policy".into()));
    let at = At {
        label: "generate".into(),
        round,
        seed: rr.seed,
    };
    let i = g.generate((prompts, gen_.n), gen_.sampler.as_ref(), model, at)?;
    if let Some(o) = &gen_.output {
        g.publish.push((i, o.clone()));
    }
    Ok(Some(Source::Node(i, StageKind::Generate.product().into())))
}

/// The scored samples of a round: the one model's, or each of several named models'.
type Scored = Option<(Source, Vec<(String, Source)>)>;

/// Round `round`'s score nodes (one per reward model): the scored samples. A model's node
/// does not depend on its name or on the other models, so adding a model leaves the others'
/// nodes (and their hashes) as they are.
fn add_score(
    g: &mut Graph<'_>,
    rr: &Resolved,
    round: usize,
    samples: Option<Source>,
) -> Result<Scored, RunError> {
    let Some(s) = &rr.score else {
        return Ok(None);
    };
    let input = input_of(&s.input, samples, "[score]")?;
    let mut first = None;
    let mut named = Vec::new();
    for (name, reward) in &s.rewards {
        let at = At {
            label: match name {
                Some(n) => format!("score {n}"),
                None => "score".into(),
            },
            round,
            seed: rr.seed,
        };
        let i = g.score(input.clone(), reward.as_ref(), s.groups_per_call, at)?;
        g.nodes[i].reward = name.clone();
        if let Some(o) = &s.output {
            // Several models: `output` is a folder of `<name>.jsonl`.
            let o = match name {
                Some(n) => o.join(format!("{n}.jsonl")),
                None => o.clone(),
            };
            g.publish.push((i, o));
        }
        let source = Source::Node(i, StageKind::Score.product().into());
        first.get_or_insert(source.clone());
        if let Some(n) = name {
            named.push((n.clone(), source));
        }
    }
    Ok(first.map(|f| (f, named)))
}

/// Round `round`'s pairs nodes, one per n.
fn add_pairs(
    g: &mut Graph<'_>,
    rr: &Resolved,
    round: usize,
    scored: Scored,
) -> Result<BTreeMap<Option<usize>, usize>, RunError> {
    let mut pair_nodes = BTreeMap::new();
    let Some(p) = &rr.pairs else {
        return Ok(pair_nodes);
    };
    let (first, named) = match scored {
        Some((f, named)) => (Some(f), named),
        None => (None, Vec::new()),
    };
    let input = input_of(&p.input, first, "[pairs]")?;
    // A user's file is one model's scores: the named models' files are not read.
    let rewards = match &p.input {
        StageInput::Upstream => named,
        StageInput::File(_) => Vec::new(),
    };
    for &n in &p.ns {
        let config = PairsConfig {
            n: n.map(OneOrMany::One),
            ..p.config.clone()
        };
        let label = match n {
            Some(n) => format!("pairs n{n}"),
            None => "pairs".into(),
        };
        let at = At {
            label,
            round,
            seed: rr.seed,
        };
        let i = g.pairs((input.clone(), rewards.clone()), config, n, at)?;
        if let Some(o) = &p.output {
            g.publish.push((i, o.clone()));
        }
        pair_nodes.insert(n, i);
    }
    Ok(pair_nodes)
}

/// Round `round`'s train nodes, one per variant; returns them and the one the next round
/// continues with.
fn add_train(
    g: &mut Graph<'_>,
    rr: &Resolved,
    round: usize,
    pair_nodes: &BTreeMap<Option<usize>, usize>,
    last_policy: Option<usize>,
) -> Result<(Vec<usize>, Option<usize>), RunError> {
    let Some(t) = &rr.train else {
        return Ok((Vec::new(), None));
    };
    let base_policy = match (&last_policy, &rr.start_policy) {
        (Some(i), _) => Source::Node(*i, "train/policy".into()),
        (None, Some(p)) => Source::File(p.clone()),
        (None, None) => return Err(config_err("[train]: `policy` is not given")),
    };
    let (mut trained, mut next) = (Vec::new(), None);
    let mut inputs = Vec::new();
    for v in &t.variants {
        let pairs = match (&v.dataset, &t.pairs) {
            (Some(d), _) => {
                let i = *pair_nodes
                    .get(&v.n)
                    .ok_or_else(|| config_err("[train]: `datasets` needs a [pairs] stage"))?;
                Source::Node(i, format!("pairs/{d}.{}", rr.pairs_ext()))
            }
            (None, Some(TrainPairs::Made { rel, path })) => {
                // A file the pairs stage writes (the explicit chain) comes from its first node.
                let first = rr.pairs.as_ref().and_then(|p| p.ns.first().copied());
                match first.and_then(|n| pair_nodes.get(&n)) {
                    Some(&i) => Source::Node(i, rel.clone()),
                    None => Source::File(path.clone()),
                }
            }
            (None, Some(TrainPairs::File(p))) => Source::File(p.clone()),
            (None, None) => return Err(config_err("[train]: no pairs")),
        };
        let needs = t.losses[v.loss]
            .build(g.ctx)
            .map_err(|e| config_err(format!("[train.loss]: {e}")))?
            .needs_reference()
            // TRL's DPOTrainer computes its own reference (a `[train] backend = "trl"` node
            // reads no shared store).
            && t.config.backend != sweetspot_core::recipe::TrainBackend::Trl;
        inputs.push((pairs, needs));
    }
    let reference = add_reference(g, rr, round, &base_policy, &inputs)?;
    for (v, (pairs, needs)) in t.variants.iter().zip(inputs) {
        let config = TrainConfig {
            loss: Some(t.losses[v.loss].clone()),
            ..t.config.clone()
        };
        let reference = reference.filter(|_| needs);
        let i = g.train((pairs, base_policy.clone()), config, (v, reference), round)?;
        if let Some(o) = &t.output {
            g.publish.push((i, o.clone()));
        }
        trained.push(i);
        if t.continue_with.as_deref() == Some(v.name.as_str()) {
            next = Some(i);
        }
    }
    Ok((trained, next))
}

/// Round `round`'s reference node, over the pairs files whose training needs the reference
/// (`inputs`: each training's pairs, and whether its loss needs the reference); `None` when
/// none does.
fn add_reference(
    g: &mut Graph<'_>,
    rr: &Resolved,
    round: usize,
    policy: &Source,
    inputs: &[(Source, bool)],
) -> Result<Option<usize>, RunError> {
    let Some(t) = &rr.train else {
        return Ok(None);
    };
    let mut pairs: Vec<Source> = Vec::new();
    for (p, needs) in inputs {
        let key = |s: &Source| format!("{s:?}");
        if *needs && !pairs.iter().any(|q| key(q) == key(p)) {
            pairs.push(p.clone());
        }
    }
    if pairs.is_empty() {
        return Ok(None);
    }
    // What the values depend on: the model and its compute type (how it is held, for an
    // adapter's base), the chat template (in the model), the pairs.
    let adapter_base = t.config.adapter.as_ref().map(|a| a.base_dtype);
    let mut id = Identity::new(
        "reference",
        &serde_json::json!({"dtype": t.config.dtype, "base_dtype": adapter_base}),
    );
    id.inputs.insert("policy".into(), g.source_input(policy)?);
    for (k, p) in pairs.iter().enumerate() {
        id.inputs.insert(format!("pairs {k}"), g.source_input(p)?);
    }
    let per_prompt = responses_per_prompt(g, rr, &pairs);
    let work = Work::Reference {
        policy: policy.clone(),
        pairs,
        config: Box::new(t.config.clone()),
        per_prompt,
    };
    let at = At {
        label: "reference".into(),
        round,
        seed: rr.seed,
    };
    Ok(Some(g.add(StageKind::Reference, id, work, at)))
}

/// Responses per prompt the trainings over `pairs` need: (distinct, counted per training), from
/// what each dataset's strategy says it picks; `None` when a strategy does not say, or a file
/// is not a pairs node's dataset.
fn responses_per_prompt(g: &Graph<'_>, rr: &Resolved, pairs: &[Source]) -> Option<(usize, usize)> {
    let p = rr.pairs.as_ref()?;
    // Dataset name -> its (chosen, rejected) response names, over every strategy.
    let mut picks = BTreeMap::new();
    for s in &p.config.strategies {
        let built = s.build(g.ctx).ok()?;
        for (d, r) in built.datasets().into_iter().zip(built.responses()?) {
            picks.insert(d, r);
        }
    }
    let mut distinct = std::collections::BTreeSet::new();
    let mut total = 0;
    for src in pairs {
        let Source::Node(i, rel) = src else {
            return None;
        };
        let file = rel.rsplit('/').next()?;
        let name = file.rsplit_once('.').map_or(file, |(s, _)| s);
        let [c, r] = picks.get(name)?;
        let n = g.nodes[*i].n;
        distinct.insert((n, c.clone()));
        distinct.insert((n, r.clone()));
        total += 2;
    }
    Some((distinct.len(), total))
}

/// The eval: the starting policy and every trained one answer the held-out prompts, once each;
/// each answer set is scored (and judged against the start's), then compared.
fn add_eval(g: &mut Graph<'_>, rr: &Resolved, trained: &[usize]) -> Result<(), RunError> {
    let (Some(e), Some(start)) = (&rr.eval, &rr.start_policy) else {
        return Ok(());
    };
    let seed = rr.seed;
    let at = |label: String| At {
        label,
        round: 1,
        seed,
    };
    let mut who: Vec<(String, Source)> = vec![("base".into(), Source::File(start.clone()))];
    for &i in trained {
        let node = &g.nodes[i];
        let name = node.policy_name.clone().unwrap_or_default();
        let name = if rr.rounds > 1 {
            format!("r{}/{name}", node.round)
        } else {
            name
        };
        who.push((name, Source::Node(i, "train/policy".into())));
    }
    let mut scored = Vec::new();
    for (name, model) in who {
        let prompts = (e.prompts.clone(), 1);
        let gi = g.generate(
            prompts,
            e.sampler.as_ref(),
            Some(model),
            at(format!("eval generate {name}")),
        )?;
        let samples = Source::Node(gi, StageKind::Generate.product().into());
        let s = g.score(
            samples,
            e.reward.as_ref(),
            e.groups_per_call,
            at(format!("eval score {name}")),
        )?;
        scored.push((name, s));
    }
    let scored_of = |i: usize| Source::Node(i, StageKind::Score.product().into());
    let (base, policies) = (scored[0].1, scored[1..].to_vec());
    // The pairwise judge: each policy against the start, both orders in one score node.
    let mut judged = Vec::new();
    if let Some(judge) = &e.judge {
        for (name, s) in &policies {
            // The text's layout is part of what the judge reads.
            let layout = crate::eval::pair_text("{a}", "{b}");
            let mut id = Identity::new(
                "compose",
                &serde_json::json!({"orders": 2, "layout": layout}),
            );
            id.inputs
                .insert("policy".into(), g.source_input(&scored_of(*s))?);
            id.inputs
                .insert("base".into(), g.source_input(&scored_of(base))?);
            let work = Work::Compose {
                policy: *s,
                baseline: base,
            };
            let c = g.add(
                StageKind::Generate,
                id,
                work,
                at(format!("eval pair {name}")),
            );
            let samples = Source::Node(c, StageKind::Generate.product().into());
            let j = g.score(
                samples,
                judge.as_ref(),
                e.groups_per_call,
                at(format!("eval judge {name}")),
            )?;
            judged.push((name.clone(), j));
        }
    }
    let mut id = Identity::new(
        "eval",
        &serde_json::json!({
            "bootstrap": e.bootstrap,
            "seed": seed,
            "policies": policies.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
        }),
    );
    id.inputs
        .insert("base".into(), g.source_input(&scored_of(base))?);
    for (name, i) in &policies {
        id.inputs
            .insert(name.clone(), g.source_input(&scored_of(*i))?);
    }
    for (name, i) in &judged {
        id.inputs
            .insert(format!("judge {name}"), g.source_input(&scored_of(*i))?);
    }
    let work = Work::Eval {
        baseline: base,
        policies,
        judged,
        bootstrap: e.bootstrap,
    };
    g.add(StageKind::Eval, id, work, at("eval".into()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_continue_with() {
        let names: Vec<String> = ["grid_max_vs_-2", "grid_max_vs_min", "max-min"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            select_datasets(&["grid_max_vs_*".into()], &names).unwrap(),
            names[..2].to_vec()
        );
        assert_eq!(select_datasets(&["all".into()], &names).unwrap(), names);
        assert!(select_datasets(&["gird*".into()], &names).is_err());
        assert!(glob_match("g?id*", "grid_max"));
        let policies = vec!["max-min-n8".to_string(), "max-min-n16".to_string()];
        assert!(continue_with("max-min", &policies).is_err());
        assert_eq!(
            continue_with("max-min-n16", &policies).unwrap(),
            "max-min-n16"
        );
        assert_eq!(
            continue_with("max-min", &policies[..1]).unwrap(),
            "max-min-n8"
        );
    }
}
