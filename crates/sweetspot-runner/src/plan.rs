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
use sweetspot_core::BuildContext;
use sweetspot_core::recipe::{OutputFormat, Recipe};

use crate::error::RunError;
use crate::identity::{EXECUTION_SETTINGS, Identity, existing_paths, hash_file, model_fingerprint};

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
            Self::Train => "train",
            Self::Eval => "eval",
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

/// What a node runs.
#[derive(Debug, Clone)]
pub enum Work {
    /// `[generate]`.
    Generate {
        /// The prompts file.
        prompts: PathBuf,
        /// Samples per prompt.
        n: usize,
        /// The sampler's table (`model` replaced in rounds after the first).
        sampler: serde_json::Value,
        /// The policy the sampler loads, when it comes from an earlier round.
        model: Option<Source>,
    },
    /// `[score]`.
    Score {
        /// The samples.
        input: Source,
        /// The reward model's table.
        reward: serde_json::Value,
        /// Groups per call.
        groups_per_call: usize,
    },
    /// `[pairs]` for one n.
    Pairs {
        /// The scored samples.
        input: Source,
        /// The `[pairs]` table with `n` applied to every strategy and no paths.
        table: serde_json::Value,
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
        table: serde_json::Value,
    },
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

fn loss_tables(r: &Recipe) -> Vec<serde_json::Value> {
    let t = r.train.as_ref();
    match t.and_then(|t| t.loss.as_ref()) {
        Some(l) => vec![serde_json::to_value(l).unwrap_or_default()],
        None => t
            .map(|t| {
                t.losses
                    .iter()
                    .map(|l| serde_json::to_value(l).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Every policy a round trains, named `<dataset>[-n<N>][-<loss>][-s<seed>]` (a part only when
/// the recipe varies it).
pub fn policy_variants(r: &Recipe, dataset_names: &[String], ns: &[Option<usize>]) -> Vec<Variant> {
    let Some(t) = &r.train else {
        return Vec::new();
    };
    let losses = loss_tables(r);
    let types: Vec<String> = losses
        .iter()
        .map(|l| {
            l.get("type")
                .and_then(|v| v.as_str())
                .unwrap_or("loss")
                .to_string()
        })
        .collect();
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
        .unwrap_or_else(|| vec![r.run.seed]);
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
                if losses.len() > 1 {
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

/// The policy names of [`policy_variants`].
pub fn policy_names(r: &Recipe, dataset_names: &[String], ns: &[Option<usize>]) -> Vec<String> {
    policy_variants(r, dataset_names, ns)
        .into_iter()
        .map(|v| v.name)
        .collect()
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

/// Strips execution settings and paths that are inputs from a plugin table's settings; returns
/// the identity with the paths fingerprinted as model inputs.
fn plugin_identity(
    identity: &mut Identity,
    table: &str,
    value: &serde_json::Value,
    ctx: &BuildContext,
    skip: &[&str],
) -> Result<(), RunError> {
    for key in EXECUTION_SETTINGS {
        identity.settings.remove(&format!("{table}.{key}"));
    }
    for (key, path) in existing_paths(table, value, |p| ctx.resolve(p)) {
        if skip.contains(&key.as_str()) {
            continue;
        }
        identity.settings.remove(&key);
        identity.inputs.insert(key, fingerprint_cached(&path)?);
    }
    Ok(())
}

thread_local! {
    static FINGERPRINTS: std::cell::RefCell<BTreeMap<PathBuf, String>> =
        const { std::cell::RefCell::new(BTreeMap::new()) };
}

/// A file's SHA-256 or a folder's (or model file's) fingerprint, computed once per plan.
fn fingerprint_cached(path: &Path) -> Result<String, RunError> {
    if let Some(f) = FINGERPRINTS.with(|m| m.borrow().get(path).cloned()) {
        return Ok(f);
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

fn source_input(plan_nodes: &[Node], s: &Source) -> Result<String, RunError> {
    Ok(match s {
        Source::File(p) => fingerprint_cached(p)?,
        Source::Node(i, rel) => format!("node:{}/{rel}", plan_nodes[*i].hash),
    })
}

fn finish(
    nodes: &mut Vec<Node>,
    stage: StageKind,
    label: String,
    round: usize,
    mut identity: Identity,
    work: Work,
    seed: u64,
) -> usize {
    identity.stage = stage.name().to_string();
    let mut h = Sha256::new();
    h.update(NODE_SCHEMA.as_bytes());
    h.update(COMPUTATION.to_le_bytes());
    h.update(serde_json::to_vec(&identity).unwrap_or_default());
    let hash: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let deps = match &work {
        Work::Generate { model, .. } => model.iter().collect::<Vec<_>>(),
        Work::Score { input, .. } | Work::Pairs { input, .. } => vec![input],
        Work::Train { pairs, policy, .. } => vec![pairs, policy],
        Work::Eval { .. } | Work::Compose { .. } => vec![],
    }
    .into_iter()
    .filter_map(|s| match s {
        Source::Node(i, _) => Some(*i),
        Source::File(_) => None,
    })
    .chain(match &work {
        Work::Eval {
            baseline,
            policies,
            judged,
            ..
        } => std::iter::once(*baseline)
            .chain(policies.iter().map(|p| p.1))
            .chain(judged.iter().map(|p| p.1))
            .collect::<Vec<_>>(),
        Work::Compose { policy, baseline } => vec![*policy, *baseline],
        _ => vec![],
    })
    .collect();
    nodes.push(Node {
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
        hash,
        identity,
        deps,
        work,
        seed,
    });
    nodes.len() - 1
}

/// Where a new node sits: its label, round and seed.
struct At {
    label: String,
    round: usize,
    seed: u64,
}

/// A generate node: `n` samples per prompt of `prompts` with the sampler table `sampler_v`,
/// loading `model` instead of the table's own when given.
fn generate_node(
    nodes: &mut Vec<Node>,
    ctx: &BuildContext,
    (prompts, n): (PathBuf, usize),
    mut sampler_v: serde_json::Value,
    model: Option<Source>,
    At { label, round, seed }: At,
) -> Result<usize, RunError> {
    if let (Some(_), Some(m)) = (&model, sampler_v.as_object_mut()) {
        m.insert("model".into(), serde_json::Value::String(String::new()));
    }
    let mut id = Identity::new(
        "generate",
        &serde_json::json!({"sampler": sampler_v, "n": n, "seed": seed}),
    );
    plugin_identity(&mut id, "sampler", &sampler_v, ctx, &[])?;
    if let Some(m) = &model {
        id.settings.remove("sampler.model");
        id.inputs
            .insert("sampler.model".into(), source_input(nodes, m)?);
    }
    id.inputs
        .insert("prompts".into(), fingerprint_cached(&prompts)?);
    Ok(finish(
        nodes,
        StageKind::Generate,
        label,
        round,
        id,
        Work::Generate {
            prompts,
            n,
            sampler: sampler_v,
            model,
        },
        seed,
    ))
}

/// A score node: the samples of `input` scored by the reward table `reward_v`.
fn score_node(
    nodes: &mut Vec<Node>,
    ctx: &BuildContext,
    input: Source,
    reward_v: serde_json::Value,
    groups_per_call: usize,
    At { label, round, seed }: At,
) -> Result<usize, RunError> {
    let mut id = Identity::new(
        "score",
        &serde_json::json!({"reward": reward_v, "groups_per_call": groups_per_call}),
    );
    plugin_identity(&mut id, "reward", &reward_v, ctx, &[])?;
    id.inputs
        .insert("samples".into(), source_input(nodes, &input)?);
    Ok(finish(
        nodes,
        StageKind::Score,
        label,
        round,
        id,
        Work::Score {
            input,
            reward: reward_v,
            groups_per_call,
        },
        seed,
    ))
}

/// A stage's input: the upstream node's product when the input is left out or names the
/// upstream stage's own output (the explicit chain), else the user's file.
fn connect(
    ctx: &BuildContext,
    upstream: &Option<Source>,
    given: Option<&PathBuf>,
    upstream_output: Option<&PathBuf>,
    table: &str,
) -> Result<Source, RunError> {
    let same = |a: &PathBuf, b: &PathBuf| {
        crate::paths::resolved(&ctx.resolve(a)) == crate::paths::resolved(&ctx.resolve(b))
    };
    match (upstream, given) {
        (Some(up), None) => Ok(up.clone()),
        (Some(up), Some(g)) if upstream_output.is_some_and(|o| same(o, g)) => Ok(up.clone()),
        (_, Some(g)) => Ok(Source::File(ctx.resolve(g))),
        (None, None) => Err(config_err(format!("{table}: `input` is not given"))),
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

/// Expands a checked recipe (see [`crate::validate_recipe`]) into its graph.
pub fn plan(r: &Recipe, recipe_path: &Path, ctx: &BuildContext) -> Result<Plan, RunError> {
    // Fingerprints are cached for one plan only: a file may change between two plans.
    FINGERPRINTS.with(|m| m.borrow_mut().clear());
    // Every path of the plan absolute, so that no stage resolves one again.
    let ctx = &BuildContext {
        base_dir: std::path::absolute(&ctx.base_dir).unwrap_or_else(|_| ctx.base_dir.clone()),
        ..ctx.clone()
    };
    let dir = run_dir(r, recipe_path, ctx);
    let rounds = r.run.rounds.max(1);
    let mut nodes: Vec<Node> = Vec::new();
    let mut publish = Vec::new();
    let seed = ctx.seed;
    let json = |v: &dyn erased::Ser| v.to_json();

    // The datasets and n values of the pairs stage.
    let mut dataset_names = Vec::new();
    let mut ns: Vec<Option<usize>> = vec![None];
    let mut pairs_ext = "jsonl".to_string();
    if let Some(p) = &r.pairs {
        for s in &p.strategies {
            let built = s
                .build(ctx)
                .map_err(|e| config_err(format!("[pairs]: {e}")))?;
            dataset_names.extend(built.datasets());
        }
        if let Some(n) = &p.n {
            ns = n.to_vec().into_iter().map(Some).collect();
        }
        pairs_ext = p.format.unwrap_or(OutputFormat::Jsonl).extension().into();
    }
    let variants = policy_variants(r, &dataset_names, &ns);
    let continue_name = match &r.run.continue_with {
        Some(c) if rounds > 1 => {
            let names: Vec<String> = variants.iter().map(|v| v.name.clone()).collect();
            Some(continue_with(c, &names).map_err(config_err)?)
        }
        _ => None,
    };

    // The policy training starts from (and the eval's baseline): `[train] policy`, else the
    // sampler's model when it is a local model.
    let start_policy: Option<Source> = match r.train.as_ref().and_then(|t| t.policy.as_ref()) {
        Some(p) => Some(Source::File(ctx.resolve(p))),
        // Only a model the sampler loads from disk: a server's model name is no path.
        None => r
            .sampler
            .as_ref()
            .and_then(|s| s.local_model())
            .map(|m| Source::File(ctx.resolve(m))),
    };
    let mut trained: Vec<usize> = Vec::new();
    let mut last_policy: Option<usize> = None;
    for round in 1..=rounds {
        // generate
        let mut samples: Option<Source> = None;
        if let (Some(g), Some(sampler)) = (&r.generate, &r.sampler) {
            let prompts = g.prompts.to_vec();
            let prompts = ctx.resolve(&prompts[(round - 1).min(prompts.len() - 1)]);
            let model = last_policy.map(|i| Source::Node(i, "train/policy".into()));
            let at = At {
                label: "generate".into(),
                round,
                seed,
            };
            let i = generate_node(&mut nodes, ctx, (prompts, g.n), json(sampler), model, at)?;
            if let Some(o) = &g.output {
                publish.push((i, ctx.resolve(o)));
            }
            samples = Some(Source::Node(i, "samples.jsonl".into()));
        }
        // score
        let mut scored: Option<Source> = None;
        if let (Some(s), Some(reward)) = (&r.score, &r.reward) {
            let upstream_out = r.generate.as_ref().and_then(|g| g.output.as_ref());
            let input = connect(ctx, &samples, s.input.as_ref(), upstream_out, "[score]")?;
            let at = At {
                label: "score".into(),
                round,
                seed,
            };
            let i = score_node(&mut nodes, ctx, input, json(reward), s.groups_per_call, at)?;
            if let Some(o) = &s.output {
                publish.push((i, ctx.resolve(o)));
            }
            scored = Some(Source::Node(i, "scored.jsonl".into()));
        }
        // pairs, one node per n
        let mut pair_nodes: BTreeMap<Option<usize>, usize> = BTreeMap::new();
        if let Some(p) = &r.pairs {
            let upstream_out = r.score.as_ref().and_then(|s| s.output.as_ref());
            let input = connect(ctx, &scored, p.input.as_ref(), upstream_out, "[pairs]")?;
            for &n in &ns {
                let mut table = serde_json::to_value(p).map_err(config_err)?;
                if let Some(m) = table.as_object_mut() {
                    m.remove("input");
                    m.remove("output");
                    match n {
                        Some(n) => m.insert("n".into(), n.into()),
                        None => m.remove("n"),
                    };
                }
                let mut id =
                    Identity::new("pairs", &serde_json::json!({"pairs": table, "seed": seed}));
                id.inputs
                    .insert("scored".into(), source_input(&nodes, &input)?);
                let label = match n {
                    Some(n) => format!("pairs n{n}"),
                    None => "pairs".into(),
                };
                let i = finish(
                    &mut nodes,
                    StageKind::Pairs,
                    label,
                    round,
                    id,
                    Work::Pairs {
                        input: input.clone(),
                        table,
                    },
                    seed,
                );
                nodes[i].n = n;
                if let Some(o) = &p.output {
                    publish.push((i, ctx.resolve(o)));
                }
                pair_nodes.insert(n, i);
            }
        }
        // train, one node per variant
        if let Some(t) = &r.train {
            let losses = loss_tables(r);
            let base_policy = match (&last_policy, &start_policy) {
                (Some(i), _) => Source::Node(*i, "train/policy".into()),
                (None, Some(p)) => p.clone(),
                (None, None) => return Err(config_err("[train]: `policy` is not given")),
            };
            let mut next_policy = None;
            for v in &variants {
                let pairs = match (&v.dataset, &t.pairs) {
                    (Some(d), _) => {
                        let i = *pair_nodes.get(&v.n).ok_or_else(|| {
                            config_err("[train]: `datasets` needs a [pairs] stage")
                        })?;
                        Source::Node(i, format!("pairs/{d}.{pairs_ext}"))
                    }
                    (None, Some(p)) => {
                        let p = ctx.resolve(p);
                        // A file the pairs stage writes (the explicit chain) comes from its node.
                        let from_node = r
                            .pairs
                            .as_ref()
                            .and_then(|pc| pc.output.as_ref())
                            .and_then(|o| {
                                let o = crate::paths::resolved(&ctx.resolve(o));
                                let rp = crate::paths::resolved(&p);
                                let rel = if rp == o {
                                    dataset_names
                                        .first()
                                        .map(|d| format!("pairs/{d}.{pairs_ext}"))
                                } else {
                                    rp.strip_prefix(&o)
                                        .ok()
                                        .map(|r| format!("pairs/{}", r.to_string_lossy()))
                                };
                                rel.zip(pair_nodes.get(&ns[0]).copied())
                            });
                        match from_node {
                            Some((rel, i)) => Source::Node(i, rel),
                            None => Source::File(p),
                        }
                    }
                    (None, None) => return Err(config_err("[train]: no pairs")),
                };
                let mut table = serde_json::to_value(t).map_err(config_err)?;
                if let Some(m) = table.as_object_mut() {
                    for k in ["pairs", "policy", "output", "datasets", "seeds", "losses"] {
                        m.remove(k);
                    }
                    m.insert("loss".into(), losses[v.loss].clone());
                }
                let mut id = Identity::new(
                    "train",
                    &serde_json::json!({"train": table, "seed": v.seed}),
                );
                id.inputs
                    .insert("pairs".into(), source_input(&nodes, &pairs)?);
                id.inputs
                    .insert("policy".into(), source_input(&nodes, &base_policy)?);
                let i = finish(
                    &mut nodes,
                    StageKind::Train,
                    format!("train {}", v.name),
                    round,
                    id,
                    Work::Train {
                        pairs,
                        policy: base_policy.clone(),
                        table,
                    },
                    v.seed,
                );
                nodes[i].n = v.n;
                nodes[i].policy_name = Some(v.name.clone());
                nodes[i].dataset = v.dataset.clone();
                if let Some(o) = &t.output {
                    publish.push((i, ctx.resolve(o)));
                }
                trained.push(i);
                if continue_name.as_deref() == Some(v.name.as_str()) {
                    next_policy = Some(i);
                }
            }
            last_policy = next_policy;
        }
    }
    // eval: the starting policy and every trained one answer the held-out prompts, once each.
    if let (Some(e), Some(sampler), Some(start)) = (&r.eval, &r.sampler, &start_policy) {
        let mut sampler_v = json(sampler);
        if let Some(m) = sampler_v.as_object_mut() {
            m.insert("temperature".into(), e.temperature.into());
            if let Some(t) = e.max_new_tokens {
                m.insert("max_new_tokens".into(), t.into());
            }
        }
        let reward_v = match (&e.reward, &r.reward) {
            (Some(own), _) => json(own),
            (None, Some(rm)) => json(rm),
            (None, None) => return Err(config_err("[eval]: no reward model")),
        };
        let groups = r.score.as_ref().map_or(64, |s| s.groups_per_call);
        let prompts = ctx.resolve(&e.prompts);
        let mut scored = Vec::new();
        let mut who: Vec<(String, Source)> = vec![("base".into(), start.clone())];
        for &i in &trained {
            let node = &nodes[i];
            let name = node.policy_name.clone().unwrap_or_default();
            let name = if rounds > 1 {
                format!("r{}/{name}", node.round)
            } else {
                name
            };
            who.push((name, Source::Node(i, "train/policy".into())));
        }
        for (name, model) in who {
            let at = At {
                label: format!("eval generate {name}"),
                round: 1,
                seed,
            };
            let g = generate_node(
                &mut nodes,
                ctx,
                (prompts.clone(), 1),
                sampler_v.clone(),
                Some(model),
                at,
            )?;
            let at = At {
                label: format!("eval score {name}"),
                round: 1,
                seed,
            };
            let samples = Source::Node(g, "samples.jsonl".into());
            let s = score_node(&mut nodes, ctx, samples, reward_v.clone(), groups, at)?;
            scored.push((name, s));
        }
        let (base, policies) = (scored[0].1, scored[1..].to_vec());
        // The pairwise judge: each policy against the start, both orders in one score node.
        let mut judged = Vec::new();
        if let Some(judge) = &e.judge {
            let judge_v = json(judge);
            for (name, s) in &policies {
                // The text's layout is part of what the judge reads.
                let layout = crate::eval::pair_text("{a}", "{b}");
                let mut id = Identity::new(
                    "compose",
                    &serde_json::json!({"orders": 2, "layout": layout}),
                );
                id.inputs.insert(
                    "policy".into(),
                    source_input(&nodes, &Source::Node(*s, "scored.jsonl".into()))?,
                );
                id.inputs.insert(
                    "base".into(),
                    source_input(&nodes, &Source::Node(base, "scored.jsonl".into()))?,
                );
                let c = finish(
                    &mut nodes,
                    StageKind::Generate,
                    format!("eval pair {name}"),
                    1,
                    id,
                    Work::Compose {
                        policy: *s,
                        baseline: base,
                    },
                    seed,
                );
                let at = At {
                    label: format!("eval judge {name}"),
                    round: 1,
                    seed,
                };
                let samples = Source::Node(c, "samples.jsonl".into());
                let j = score_node(&mut nodes, ctx, samples, judge_v.clone(), groups, at)?;
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
        id.inputs.insert(
            "base".into(),
            source_input(&nodes, &Source::Node(base, "scored.jsonl".into()))?,
        );
        for (name, i) in &policies {
            id.inputs.insert(
                name.clone(),
                source_input(&nodes, &Source::Node(*i, "scored.jsonl".into()))?,
            );
        }
        for (name, i) in &judged {
            id.inputs.insert(
                format!("judge {name}"),
                source_input(&nodes, &Source::Node(*i, "scored.jsonl".into()))?,
            );
        }
        finish(
            &mut nodes,
            StageKind::Eval,
            "eval".into(),
            1,
            id,
            Work::Eval {
                baseline: base,
                policies,
                judged,
                bootstrap: e.bootstrap,
            },
            seed,
        );
    }
    // The pool, else the one device of the context (`--device` replaces the pool: the CLI sets
    // `devices` after planning).
    let mut devices = r.run.devices();
    if devices.len() < 2 {
        devices = vec![ctx.device.clone()];
    }
    Ok(Plan {
        name: run_name(r, recipe_path),
        dir,
        nodes,
        rounds,
        base_dir: ctx.base_dir.clone(),
        devices,
        datasets: dataset_names,
        pairs_ext,
        publish,
    })
}

/// Serializing a plugin config (a trait object) to JSON.
mod erased {
    pub trait Ser {
        fn to_json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize + ?Sized> Ser for T {
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
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
