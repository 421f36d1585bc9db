//! The whole-recipe check: every value that can be checked without loading a model or reading
//! data (ranges, finiteness, names, that input files exist, that no output overwrites an input,
//! dataset names), every error naming the recipe file, line and key. `sweetspot validate` prints
//! its result; `sweetspot run` (and every command given a recipe) calls it before any stage
//! starts, so a bad `[train]` value cannot surface after hours of generation.

use std::path::{Path, PathBuf};

use sweetspot_core::BuildContext;
use sweetspot_core::recipe::{Recipe, RecipeError, error_at};

use crate::identity::existing_paths;
use crate::paths::resolved;

/// Which stages of a recipe are about to run (and so are checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stages {
    /// `[generate]` with `[sampler]`.
    pub generate: bool,
    /// `[score]` with `[reward]`.
    pub score: bool,
    /// `[pairs]`.
    pub pairs: bool,
    /// `[train]`.
    pub train: bool,
    /// The stages run as one graph (`sweetspot run`, `sweetspot validate`): outputs may be left
    /// out (they go to the run folder), inputs may be left out (they come from the stage
    /// before), and lists (sweeps, rounds, device pools) are allowed.
    pub chained: bool,
}

impl Stages {
    /// Every stage the recipe has.
    pub fn all_of(recipe: &Recipe) -> Self {
        Self {
            generate: recipe.generate.is_some(),
            score: recipe.score.is_some(),
            pairs: recipe.pairs.is_some(),
            train: recipe.train.is_some(),
            chained: true,
        }
    }

    /// No stage.
    pub const NONE: Self = Self {
        generate: false,
        score: false,
        pairs: false,
        train: false,
        chained: false,
    };
}

/// A recipe to check: what was parsed, its text and where it came from.
pub struct RecipeSource<'a> {
    /// The parsed recipe.
    pub recipe: &'a Recipe,
    /// Its TOML text (for locating keys).
    pub text: &'a str,
    /// The file (or `<command line>`).
    pub origin: &'a Path,
}

/// One path a stage reads or writes, with the recipe key that names it.
struct Named {
    key: String,
    path: PathBuf,
    stage: usize,
}

/// Why a recipe was refused.
#[derive(Debug)]
pub enum Invalid {
    /// A bad value, name or combination (exit code 2).
    Recipe(RecipeError),
    /// A path that does not fit what is on disk (exit code 1): an input that does not exist or
    /// is a folder where a file is meant, an output that cannot be created or written.
    MissingInput(RecipeError),
}

impl Invalid {
    /// The error, whichever kind.
    pub fn error(&self) -> &RecipeError {
        match self {
            Self::Recipe(e) | Self::MissingInput(e) => e,
        }
    }
}

impl From<RecipeError> for Invalid {
    fn from(e: RecipeError) -> Self {
        Self::Recipe(e)
    }
}

/// Checks the chosen stages of a recipe; returns a line per stage describing it.
pub fn validate_recipe(
    src: &RecipeSource<'_>,
    ctx: &BuildContext,
    stages: Stages,
) -> Result<Vec<String>, Invalid> {
    let (r, text, origin) = (src.recipe, src.text, src.origin);
    // A recipe made from command-line flags has no lines a user wrote: name only the key.
    let from_flags = origin.as_os_str() == "<command line>";
    let located = |key: &str, message: String| {
        let mut e = error_at(text, origin, key, message);
        if from_flags {
            e.line = None;
            e.column = None;
        }
        e
    };
    let err = |key: &str, message: String| Invalid::Recipe(located(key, message));
    let plugin_issue = |table: &str, i: sweetspot_core::ConfigIssue| {
        let key = if i.key.is_empty() {
            table.to_string()
        } else {
            format!("{table}.{}", i.key)
        };
        if i.missing_file {
            Invalid::MissingInput(located(&key, i.message))
        } else {
            Invalid::Recipe(located(&key, i.message))
        }
    };
    sweetspot_core::check_device_name(&ctx.device).map_err(|m| err("run.device", m))?;
    let chained = stages.chained;
    let devices = r.run.devices();
    if r.run.device.is_some() && devices.is_empty() {
        return Err(err(
            "run.device",
            "an empty list: name at least one device".into(),
        ));
    }
    if devices.len() > 1 && !chained {
        return Err(err(
            "run.device",
            "a pool of devices is for `sweetspot run`: give one device".into(),
        ));
    }
    for d in &devices {
        sweetspot_core::check_device_name(d).map_err(|m| err("run.device", m))?;
    }
    let rounds = r.run.rounds;
    if rounds == 0 {
        return Err(err("run.rounds", "must be at least 1".into()));
    }
    if rounds > 1 {
        if !chained {
            return Err(err("run.rounds", "rounds are for `sweetspot run`".into()));
        }
        if !(stages.generate && stages.score && stages.pairs && stages.train) {
            return Err(err(
                "run.rounds",
                "rounds need every stage: [generate], [score], [pairs] and [train]".into(),
            ));
        }
        if r.run.continue_with.is_none() {
            return Err(err(
                "run.rounds",
                "name the policy each round continues with: `continue_with = \"<dataset>\"`".into(),
            ));
        }
    } else if r.run.continue_with.is_some() {
        return Err(err(
            "run.continue_with",
            "only used with `rounds` > 1 (it names the policy the next round samples with)".into(),
        ));
    }
    // An output a chained run is given is a copy of its one product: refused where a sweep or
    // rounds make several.
    let one_place = |key: &str, given: bool, count: usize, what: &str| {
        if !given && !chained {
            return Err(err(
                key,
                format!("not given: name where the {what} go (or pass --output)"),
            ));
        }
        if given && chained && count > 1 {
            return Err(err(
                key,
                format!(
                    "names one place, but this run makes {count} {what}: leave it out (the run \
                     folder's index names each)"
                ),
            ));
        }
        Ok(())
    };
    let mut described = Vec::new();
    let mut inputs: Vec<Named> = Vec::new();
    let mut outputs: Vec<Named> = Vec::new();
    // The files the pairs stage of this run will write, when it runs.
    let mut pair_files: Vec<PathBuf> = Vec::new();
    let mut dataset_names: Vec<String> = Vec::new();
    let plugin_paths =
        |table: &str, value: serde_json::Value, stage: usize, into: &mut Vec<Named>| {
            for (key, path) in existing_paths(table, &value, |p| ctx.resolve(p)) {
                into.push(Named { key, path, stage });
            }
        };
    // An input left out, or the upstream stage's own output: that stage's product.
    let connected = |given: &Option<PathBuf>, upstream: bool, upstream_out: Option<&PathBuf>| {
        chained
            && upstream
            && match given {
                None => true,
                Some(p) => upstream_out
                    .is_some_and(|o| resolved(&ctx.resolve(p)) == resolved(&ctx.resolve(o))),
            }
    };

    if stages.generate {
        let g = r
            .generate
            .as_ref()
            .ok_or_else(|| err("generate", "missing".into()))?;
        let Some(sampler) = &r.sampler else {
            return Err(err("generate", "[generate] needs a [sampler] table".into()));
        };
        if g.n == 0 {
            return Err(err("generate.n", "must be at least 1".into()));
        }
        sampler.check(ctx).map_err(|i| plugin_issue("sampler", i))?;
        let prompts = g.prompts.to_vec();
        if prompts.is_empty() || (prompts.len() > 1 && prompts.len() != rounds) {
            return Err(err(
                "generate.prompts",
                format!(
                    "{} files for {rounds} round(s): give one (the same prompts every round) \
                     or one per round",
                    prompts.len()
                ),
            ));
        }
        for p in prompts {
            inputs.push(Named {
                key: "generate.prompts".into(),
                path: ctx.resolve(&p),
                stage: 0,
            });
        }
        let sampler_value = serde_json::to_value(sampler).unwrap_or_default();
        if rounds > 1 && sampler.local_model().is_none() {
            return Err(err(
                "sampler.type",
                format!(
                    "rounds need a sampler that loads a local model (each round samples with \
                     the policy the last one trained): the `{}` sampler {}",
                    type_name(&sampler_value),
                    NOT_LOCAL
                ),
            ));
        }
        plugin_paths("sampler", sampler_value, 0, &mut inputs);
        one_place("generate.output", g.output.is_some(), rounds, "sample sets")?;
        if let Some(o) = &g.output {
            outputs.push(Named {
                key: "generate.output".into(),
                path: ctx.resolve(o),
                stage: 0,
            });
        }
        described.push(format!("generate ({} samples per prompt)", g.n));
    }
    if stages.score {
        let s = r
            .score
            .as_ref()
            .ok_or_else(|| err("score", "missing".into()))?;
        let Some(reward) = &r.reward else {
            return Err(err("score", "[score] needs a [reward] table".into()));
        };
        if s.groups_per_call == 0 {
            return Err(err("score.groups_per_call", "must be at least 1".into()));
        }
        reward.check(ctx).map_err(|i| plugin_issue("reward", i))?;
        refuse_pairwise(reward.as_ref(), "reward.type").map_err(|m| err("reward.type", m))?;
        let upstream_out = r.generate.as_ref().and_then(|g| g.output.as_ref());
        if !connected(&s.input, stages.generate, upstream_out) {
            let Some(input) = &s.input else {
                return Err(err(
                    "score.input",
                    if chained {
                        "not given: name the samples to score, or add a [generate] stage".into()
                    } else {
                        "not given: name the samples to score (`sweetspot run` takes them from \
                         [generate])"
                            .into()
                    },
                ));
            };
            inputs.push(Named {
                key: "score.input".into(),
                path: ctx.resolve(input),
                stage: 1,
            });
        } else if let Some(input) = &s.input {
            inputs.push(Named {
                key: "score.input".into(),
                path: ctx.resolve(input),
                stage: 1,
            });
        }
        plugin_paths(
            "reward",
            serde_json::to_value(reward).unwrap_or_default(),
            1,
            &mut inputs,
        );
        one_place("score.output", s.output.is_some(), rounds, "scored sets")?;
        if let Some(o) = &s.output {
            outputs.push(Named {
                key: "score.output".into(),
                path: ctx.resolve(o),
                stage: 1,
            });
        }
        described.push("score".to_string());
    }
    let mut ns: Vec<Option<usize>> = vec![None];
    if stages.pairs {
        let p = r
            .pairs
            .as_ref()
            .ok_or_else(|| err("pairs", "missing".into()))?;
        if p.strategies.is_empty() {
            return Err(err(
                "pairs.strategies",
                "no strategies: add at least one [[pairs.strategies]] table".into(),
            ));
        }
        if let Some(n) = &p.n {
            let list = n.to_vec();
            if list.is_empty() {
                return Err(err("pairs.n", "an empty list: give at least one n".into()));
            }
            if list.contains(&0) {
                return Err(err("pairs.n", "every n must be at least 1".into()));
            }
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != list.len() {
                return Err(err("pairs.n", "lists an n twice".into()));
            }
            if list.len() > 1 && !chained {
                return Err(err(
                    "pairs.n",
                    "a list of n makes one pair set per n, which is for `sweetspot run`".into(),
                ));
            }
            if let Some(g) = r.generate.as_ref().filter(|_| stages.generate)
                && let Some(big) = list.iter().find(|&&n| n > g.n)
            {
                return Err(err(
                    "pairs.n",
                    format!(
                        "{big} is more than the {} samples [generate] makes per prompt",
                        g.n
                    ),
                ));
            }
            for (i, s) in p.strategies.iter().enumerate() {
                let v = serde_json::to_value(s).unwrap_or_default();
                match v.get("n") {
                    Some(serde_json::Value::Null) => {}
                    Some(_) => {
                        return Err(err(
                            &format!("pairs.strategies[{i}].n"),
                            "set both here and in `[pairs].n`: keep one".into(),
                        ));
                    }
                    None => {}
                }
            }
            ns = list.into_iter().map(Some).collect();
        }
        let mut names: Vec<(String, usize)> = Vec::new();
        for (i, s) in p.strategies.iter().enumerate() {
            let at = |k: &str| {
                if k.is_empty() {
                    format!("pairs.strategies[{i}]")
                } else {
                    format!("pairs.strategies[{i}].{k}")
                }
            };
            s.check(ctx)
                .map_err(|issue| plugin_issue(&format!("pairs.strategies[{i}]"), issue))?;
            let built = s.build(ctx).map_err(|e| err(&at(""), e.to_string()))?;
            for name in built.datasets() {
                if let Some((_, j)) = names.iter().find(|(n, _)| *n == name) {
                    return Err(err(
                        &at(""),
                        format!("dataset `{name}` is also written by pairs.strategies[{j}]"),
                    ));
                }
                names.push((name, i));
            }
        }
        dataset_names = names.iter().map(|(n, _)| n.clone()).collect();
        one_place(
            "pairs.output",
            p.output.is_some(),
            rounds * ns.len(),
            "pair sets",
        )?;
        if let Some(output) = &p.output {
            let single = output
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| {
                    e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("parquet")
                });
            if single && names.len() != 1 {
                return Err(err(
                    "pairs.output",
                    format!(
                        "`{}` is one file, but the strategies write {} datasets: give a folder",
                        output.display(),
                        names.len()
                    ),
                ));
            }
            let out = ctx.resolve(output);
            pair_files = if single {
                vec![resolved(&out)]
            } else {
                let ext = p.format.unwrap_or_default().extension();
                names
                    .iter()
                    .map(|(n, _)| resolved(&out.join(format!("{n}.{ext}"))))
                    .collect()
            };
            outputs.push(Named {
                key: "pairs.output".into(),
                path: out,
                stage: 2,
            });
        }
        let upstream_out = r.score.as_ref().and_then(|s| s.output.as_ref());
        if !connected(&p.input, stages.score, upstream_out) {
            let Some(input) = &p.input else {
                return Err(err(
                    "pairs.input",
                    if chained {
                        "not given: name the scored samples, or add a [score] stage".into()
                    } else {
                        "not given: name the scored samples (`sweetspot run` takes them from \
                         [score])"
                            .into()
                    },
                ));
            };
            inputs.push(Named {
                key: "pairs.input".into(),
                path: ctx.resolve(input),
                stage: 2,
            });
        } else if let Some(input) = &p.input {
            inputs.push(Named {
                key: "pairs.input".into(),
                path: ctx.resolve(input),
                stage: 2,
            });
        }
        let sets = if ns.len() > 1 {
            format!(", {} values of n", ns.len())
        } else {
            String::new()
        };
        described.push(format!(
            "pairs ({} strategies, {} datasets{sets})",
            p.strategies.len(),
            names.len()
        ));
    }
    if stages.train {
        let t = r
            .train
            .as_ref()
            .ok_or_else(|| err("train", "missing".into()))?;
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(err(key, format!("{v} must be a number > 0")))
            }
        };
        let at_least_one = |key: &str, v: usize| {
            if v >= 1 {
                Ok(())
            } else {
                Err(err(key, "must be at least 1".into()))
            }
        };
        let in_range = |key: &str, v: f64, lo: f64, hi: f64, hi_open: bool| {
            let ok = v.is_finite() && v >= lo && if hi_open { v < hi } else { v <= hi };
            if ok {
                Ok(())
            } else {
                let close = if hi_open { ")" } else { "]" };
                Err(err(key, format!("{v} must be in [{lo}, {hi}{close}")))
            }
        };
        positive("train.learning_rate", t.learning_rate)?;
        positive("train.adam_epsilon", t.adam_epsilon)?;
        at_least_one("train.epochs", t.epochs)?;
        at_least_one("train.batch_size", t.batch_size)?;
        at_least_one("train.micro_batch_size", t.micro_batch_size)?;
        in_range("train.warmup_ratio", t.warmup_ratio, 0.0, 1.0, false)?;
        in_range("train.adam_beta1", t.adam_beta1, 0.0, 1.0, true)?;
        in_range("train.adam_beta2", t.adam_beta2, 0.0, 1.0, true)?;
        in_range("train.weight_decay", t.weight_decay, 0.0, f64::MAX, false)?;
        in_range("train.max_grad_norm", t.max_grad_norm, 0.0, f64::MAX, false)?;
        match (&t.loss, t.losses.is_empty()) {
            (Some(_), false) => {
                return Err(err(
                    "train.losses",
                    "give `[train.loss]` or `[[train.losses]]`, not both".into(),
                ));
            }
            (None, true) => {
                return Err(err(
                    "train",
                    "missing the loss: add a `[train.loss]` table (or `[[train.losses]]`)".into(),
                ));
            }
            _ => {}
        }
        if !t.losses.is_empty() && !chained {
            return Err(err(
                "train.losses",
                "a list of losses makes one policy per loss, which is for `sweetspot run`".into(),
            ));
        }
        if let Some(loss) = &t.loss {
            loss.check(ctx).map_err(|i| plugin_issue("train.loss", i))?;
        }
        for (i, loss) in t.losses.iter().enumerate() {
            loss.check(ctx)
                .map_err(|issue| plugin_issue(&format!("train.losses[{i}]"), issue))?;
        }
        let seeds = t.seeds.as_ref().map(|s| s.to_vec()).unwrap_or_default();
        if t.seeds.is_some() {
            if seeds.is_empty() {
                return Err(err(
                    "train.seeds",
                    "an empty list: give at least one".into(),
                ));
            }
            if !chained {
                return Err(err("train.seeds", "seeds are for `sweetspot run`".into()));
            }
        }
        let mut trained: usize = 1;
        match (&t.pairs, &t.datasets) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "train.datasets",
                    "give `pairs` (one file) or `datasets` (of the run's [pairs]), not both".into(),
                ));
            }
            (None, None) => {
                let hint = if chained && stages.pairs {
                    "name the datasets to train on: `datasets = [\"grid_max_vs_-2\"]`, a glob, \
                     or `\"all\"`"
                } else {
                    "not given: name the pairs file to train on"
                };
                return Err(err(
                    if chained && stages.pairs {
                        "train.datasets"
                    } else {
                        "train.pairs"
                    },
                    hint.into(),
                ));
            }
            (None, Some(patterns)) => {
                if !(chained && stages.pairs) {
                    return Err(err(
                        "train.datasets",
                        "names datasets of the run's [pairs] stage: use `sweetspot run` with a \
                         [pairs] table, or give `pairs` (a file)"
                            .into(),
                    ));
                }
                if r.pairs
                    .as_ref()
                    .and_then(|p| p.format)
                    .is_some_and(|f| f != sweetspot_core::recipe::OutputFormat::Jsonl)
                {
                    return Err(err(
                        "pairs.format",
                        "the trainer reads pairs as JSONL: write them with format = \"jsonl\""
                            .into(),
                    ));
                }
                let picked = crate::plan::select_datasets(&patterns.to_vec(), &dataset_names)
                    .map_err(|m| err("train.datasets", m))?;
                trained = picked.len() * ns.len();
            }
            (Some(pairs), None) => {
                let train_pairs = ctx.resolve(pairs);
                if train_pairs
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
                {
                    return Err(err(
                        "train.pairs",
                        "the trainer reads pairs as JSONL: write them with format = \"jsonl\""
                            .into(),
                    ));
                }
                // Made by this run's pairs stage: it must be one of the files that stage writes.
                if stages.pairs {
                    let p = resolved(&train_pairs);
                    let pairs_out = r
                        .pairs
                        .as_ref()
                        .and_then(|c| c.output.as_ref())
                        .map(|o| resolved(&ctx.resolve(o)));
                    if pairs_out.is_some_and(|o| p.starts_with(&o)) && !pair_files.contains(&p) {
                        let names: Vec<String> = pair_files
                            .iter()
                            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                            .collect();
                        return Err(err(
                            "train.pairs",
                            format!(
                                "{} is not a dataset the pairs stage writes (it writes {})",
                                train_pairs.display(),
                                names.join(", ")
                            ),
                        ));
                    }
                }
                inputs.push(Named {
                    key: "train.pairs".into(),
                    path: train_pairs,
                    stage: 3,
                });
            }
        }
        trained *= t.losses.len().max(1) * seeds.len().max(1);
        match &t.policy {
            Some(policy) => inputs.push(Named {
                key: "train.policy".into(),
                path: ctx.resolve(policy),
                stage: 3,
            }),
            None => match r.sampler.as_ref().filter(|_| chained) {
                Some(s) if s.local_model().is_some() => {}
                Some(s) => {
                    return Err(err(
                        "train.policy",
                        format!(
                            "not given, and the `{}` sampler {}: set `[train] policy` to the \
                             local model (folder or GGUF file) training starts from",
                            type_name(&serde_json::to_value(s).unwrap_or_default()),
                            NOT_LOCAL
                        ),
                    ));
                }
                None => {
                    return Err(err(
                        "train.policy",
                        "not given: name the policy to train (in `sweetspot run` it defaults \
                         to the sampler's model)"
                            .into(),
                    ));
                }
            },
        }
        if rounds > 1
            && let Some(name) = &r.run.continue_with
        {
            let variants = crate::plan::policy_names(r, &dataset_names, &ns);
            crate::plan::continue_with(name, &variants).map_err(|m| err("run.continue_with", m))?;
        }
        one_place(
            "train.output",
            t.output.is_some(),
            trained * rounds,
            "policies",
        )?;
        if let Some(o) = &t.output {
            outputs.push(Named {
                key: "train.output".into(),
                path: ctx.resolve(o),
                stage: 3,
            });
        }
        described.push(if trained > 1 {
            format!("train ({trained} policies)")
        } else {
            "train".to_string()
        });
    }
    if let Some(e) = r.eval.as_ref().filter(|_| chained) {
        let Some(sampler) = r.sampler.as_ref().filter(|_| stages.train) else {
            return Err(err(
                "eval",
                "[eval] compares the trained policies with the starting one: it needs [sampler] \
                 (which answers the eval prompts) and [train]"
                    .into(),
            ));
        };
        let v = serde_json::to_value(sampler).unwrap_or_default();
        if sampler.local_model().is_none() {
            return Err(err(
                "sampler.type",
                format!(
                    "[eval] answers with the starting policy and each trained one through the \
                     sampler, which must load a local model: the `{}` sampler {}",
                    type_name(&v),
                    NOT_LOCAL
                ),
            ));
        }
        for key in ["model", "temperature", "max_new_tokens"] {
            if v.get(key).is_none() {
                return Err(err(
                    "sampler",
                    format!(
                        "[eval] answers with the sampler and each policy: the sampler needs a \
                         `{key}` setting"
                    ),
                ));
            }
        }
        if !(e.temperature.is_finite() && e.temperature >= 0.0) {
            return Err(err(
                "eval.temperature",
                format!("{} must be a number >= 0 (0 is greedy)", e.temperature),
            ));
        }
        if e.max_new_tokens == Some(0) {
            return Err(err("eval.max_new_tokens", "must be at least 1".into()));
        }
        if e.bootstrap > 100_000 {
            return Err(err(
                "eval.bootstrap",
                format!("{} resamples: at most 100000", e.bootstrap),
            ));
        }
        match (&e.reward, &r.reward) {
            (Some(own), _) => {
                own.check(ctx).map_err(|i| plugin_issue("eval.reward", i))?;
                refuse_pairwise(own.as_ref(), "eval.reward.type")
                    .map_err(|m| err("eval.reward.type", m))?;
                plugin_paths(
                    "eval.reward",
                    serde_json::to_value(own).unwrap_or_default(),
                    4,
                    &mut inputs,
                );
            }
            (None, Some(_)) => {}
            (None, None) => {
                return Err(err(
                    "eval",
                    "no reward model: add [eval.reward] (or a [reward] table)".into(),
                ));
            }
        }
        if let Some(judge) = &e.judge {
            if plugin_type(judge.as_ref()) != PAIRWISE {
                return Err(err(
                    "eval.judge.type",
                    format!(
                        "`{}` scores one response; [eval.judge] compares two: use \
                         type = \"{PAIRWISE}\" (a reward model goes in [eval.reward])",
                        plugin_type(judge.as_ref())
                    ),
                ));
            }
            judge
                .check(ctx)
                .map_err(|i| plugin_issue("eval.judge", i))?;
            plugin_paths(
                "eval.judge",
                serde_json::to_value(judge).unwrap_or_default(),
                4,
                &mut inputs,
            );
        }
        inputs.push(Named {
            key: "eval.prompts".into(),
            path: ctx.resolve(&e.prompts),
            stage: 4,
        });
        described.push("eval (every policy against the starting one)".to_string());
    }
    if described.is_empty() {
        return Err(Invalid::Recipe(RecipeError {
            path: Some(origin.to_path_buf()),
            line: None,
            column: None,
            key: None,
            message: "the recipe has no stage (add [generate], [score], [pairs] or [train])".into(),
        }));
    }
    check_paths(&inputs, &outputs).map_err(|(key, m, missing)| {
        if missing {
            Invalid::MissingInput(located(&key, m))
        } else {
            Invalid::Recipe(located(&key, m))
        }
    })?;
    Ok(described)
}

/// What a sampler without a local model is, in messages.
const NOT_LOCAL: &str = "samples from a server (its `model` is the server's model name, not a \
                         local model)";

/// A plugin table's `type`, as written.
fn type_name(v: &serde_json::Value) -> &str {
    v.get("type").and_then(|t| t.as_str()).unwrap_or("?")
}

/// The reward-model type that compares two responses (only for `[eval.judge]`).
const PAIRWISE: &str = "pairwise-judge";

/// A plugin config's `type`.
fn plugin_type(config: &dyn sweetspot_core::RewardModelConfig) -> String {
    serde_json::to_value(config)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(String::from))
        .unwrap_or_default()
}

/// A pairwise judge scores a text holding two responses: as a reward model of one response its
/// numbers would mean nothing.
fn refuse_pairwise(
    config: &dyn sweetspot_core::RewardModelConfig,
    key: &str,
) -> Result<(), String> {
    if plugin_type(config) == PAIRWISE {
        return Err(format!(
            "`{PAIRWISE}` compares two responses and is only for [eval.judge]; `{key}` needs a \
             reward model of one response (seq-cls, armorm, judge)"
        ));
    }
    Ok(())
}

/// Inputs exist (or are made by an earlier stage of the same run); no output equals or contains
/// an input other than its own products read downstream; no two outputs are the same.
fn check_paths(inputs: &[Named], outputs: &[Named]) -> Result<(), (String, String, bool)> {
    let outs: Vec<(PathBuf, &Named)> = outputs.iter().map(|o| (resolved(&o.path), o)).collect();
    for (a, (pa, oa)) in outs.iter().enumerate() {
        for (pb, ob) in outs.iter().skip(a + 1) {
            if pa == pb {
                return Err((
                    ob.key.clone(),
                    format!(
                        "{} is also `{}`: two stages would write the same output",
                        ob.path.display(),
                        oa.key
                    ),
                    false,
                ));
            }
        }
    }
    for input in inputs {
        let pi = resolved(&input.path);
        // Made by an earlier stage of this run?
        let producer = outs
            .iter()
            .find(|(po, o)| o.stage < input.stage && (pi == *po || pi.starts_with(po)));
        for (po, o) in &outs {
            // Writing into a model folder changes the model as surely as replacing it.
            if input.path.is_dir() && po.starts_with(&pi) && *po != pi {
                return Err((
                    o.key.clone(),
                    format!(
                        "{} is inside `{}` ({}), an input folder of the same run: choose an \
                         output outside it",
                        o.path.display(),
                        input.key,
                        input.path.display()
                    ),
                    false,
                ));
            }
            let overlaps = pi == *po || pi.starts_with(po);
            if !overlaps {
                continue;
            }
            let is_producer = producer.is_some_and(|(_, p)| std::ptr::eq(*p, *o));
            if !is_producer {
                let how = if pi == *po { "is" } else { "contains" };
                return Err((
                    o.key.clone(),
                    format!(
                        "{} {how} `{}` ({}), an input of the same run, which it would \
                         overwrite: choose another output",
                        o.path.display(),
                        input.key,
                        input.path.display()
                    ),
                    false,
                ));
            }
        }
        if producer.is_none() && !input.path.exists() {
            return Err((
                input.key.clone(),
                format!("{} does not exist", input.path.display()),
                true,
            ));
        }
        if producer.is_none() && FILE_INPUTS.contains(&input.key.as_str()) && input.path.is_dir() {
            return Err((
                input.key.clone(),
                format!(
                    "{} is a folder, but `{}` names a file",
                    input.path.display(),
                    input.key
                ),
                true,
            ));
        }
    }
    for o in outputs {
        check_output(o).map_err(|m| (o.key.clone(), m, true))?;
    }
    Ok(())
}

/// The inputs that are one file (the others, models, may be a folder or a file).
const FILE_INPUTS: [&str; 5] = [
    "generate.prompts",
    "score.input",
    "pairs.input",
    "train.pairs",
    "eval.prompts",
];

/// Whether an output is one file (else a folder the stage writes into).
fn output_is_file(o: &Named) -> bool {
    match o.key.as_str() {
        "train.output" => false,
        "pairs.output" => o
            .path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("parquet")),
        _ => true,
    }
}

/// An output can be made: it is not a folder where a file goes (or a file where a folder goes),
/// and the folder it goes in exists or can be created, and takes new files. Writability is
/// tested by creating (and removing) a file in the nearest existing folder, which is right for
/// every user, root included, and for read-only file systems.
fn check_output(o: &Named) -> Result<(), String> {
    let path = &o.path;
    let is_file = output_is_file(o);
    if path.exists() {
        if is_file && path.is_dir() {
            return Err(format!(
                "{} is a folder, but `{}` names a file to write",
                path.display(),
                o.key
            ));
        }
        if !is_file && !path.is_dir() {
            return Err(format!(
                "{} is a file, but `{}` names a folder to write into: choose a folder",
                path.display(),
                o.key
            ));
        }
    }
    // The folder the stage creates files in, and its nearest existing ancestor.
    let target = if is_file {
        std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
    } else {
        std::path::absolute(path).ok()
    };
    let Some(target) = target else {
        return Ok(());
    };
    let mut existing = target.as_path();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p,
            None => return Ok(()),
        }
    }
    if !existing.is_dir() {
        return Err(format!(
            "{} cannot be created: {} is a file, not a folder",
            path.display(),
            existing.display()
        ));
    }
    tempfile::Builder::new()
        .prefix(".sweetspot-write-check")
        .tempfile_in(existing)
        .map(drop)
        .map_err(|e| {
            format!(
                "{} cannot be written: no new file can be made in {} ({})",
                path.display(),
                existing.display(),
                os_message(&e)
            )
        })
}

/// An I/O error's operating-system message, without the path tempfile adds.
fn os_message(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => e.kind().to_string(),
    }
}
