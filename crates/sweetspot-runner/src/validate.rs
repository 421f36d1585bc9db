//! The whole-recipe check: every value that can be checked without loading a model or reading
//! data (ranges, finiteness, names, that input files exist, that no output overwrites an input,
//! dataset names), every error naming the recipe file, line and key. `sweetspot validate` prints
//! its result; `sweetspot run` (and every command given a recipe) calls it before any stage
//! starts, so a bad `[train]` value cannot surface after hours of generation.

use std::path::{Path, PathBuf};

use sweetspot_core::BuildContext;
use sweetspot_core::recipe::{
    EvalConfig, OutputFormat, PairsConfig, Recipe, RecipeError, TrainConfig, error_at,
};

use crate::identity::{Table, table_inputs};
use crate::paths::{reads_upstream, resolved};

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
///
/// One pass per concern, in pipeline order (run settings, each stage, eval), each adding what
/// its stage reads and writes; the paths are checked together at the end (no output may
/// overwrite an input of the same run).
pub fn validate_recipe(
    src: &RecipeSource<'_>,
    ctx: &BuildContext,
    stages: Stages,
) -> Result<Vec<String>, Invalid> {
    check(src, ctx, stages, false).map(|(described, _)| described)
}

/// The check of `sweetspot run --plan`: every check of [`validate_recipe`], except that an input
/// that does not exist yet (a model, prompts) is listed instead of refused, and `[train.adapter]`
/// is sized rather than refused. Returns the stages' lines and the missing inputs, one line
/// each (`` `sampler.model`: models/x does not exist ``).
pub fn validate_for_plan(
    src: &RecipeSource<'_>,
    ctx: &BuildContext,
    stages: Stages,
) -> Result<(Vec<String>, Vec<String>), Invalid> {
    check(src, ctx, stages, true)
}

fn check(
    src: &RecipeSource<'_>,
    ctx: &BuildContext,
    stages: Stages,
    planning: bool,
) -> Result<(Vec<String>, Vec<String>), Invalid> {
    let mut c = Check {
        planning,
        missing: Vec::new(),
        r: src.recipe,
        text: src.text,
        origin: src.origin,
        // A recipe made from command-line flags has no lines a user wrote: name only the key.
        from_flags: src.origin.as_os_str() == "<command line>",
        ctx,
        stages,
        rounds: src.recipe.run.rounds,
        described: Vec::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        pair_files: Vec::new(),
        dataset_names: Vec::new(),
        ns: vec![None],
    };
    c.run_settings()?;
    if stages.generate {
        c.generate()?;
    }
    if stages.score {
        c.score()?;
    }
    if stages.pairs {
        c.pairs()?;
    }
    if stages.train {
        c.train()?;
    }
    if let Some(e) = src.recipe.eval.as_ref().filter(|_| stages.chained) {
        c.eval(e)?;
    }
    c.finish()
}

/// The state of one check: the recipe, and what the passes so far found it reads and writes.
struct Check<'a> {
    /// `run --plan`: missing inputs are listed in `missing`, not refused.
    planning: bool,
    missing: Vec<String>,
    r: &'a Recipe,
    text: &'a str,
    origin: &'a Path,
    from_flags: bool,
    ctx: &'a BuildContext,
    stages: Stages,
    rounds: usize,
    described: Vec<String>,
    inputs: Vec<Named>,
    outputs: Vec<Named>,
    /// The files the pairs stage of this run will write, when it runs.
    pair_files: Vec<PathBuf>,
    dataset_names: Vec<String>,
    ns: Vec<Option<usize>>,
}

/// Stage numbers, for "made by an earlier stage of this run".
const GENERATE: usize = 0;
const SCORE: usize = 1;
const PAIRS: usize = 2;
const TRAIN: usize = 3;
const EVAL: usize = 4;

impl Check<'_> {
    fn located(&self, key: &str, message: String) -> RecipeError {
        let mut e = error_at(self.text, self.origin, key, message);
        if self.from_flags {
            e.line = None;
            e.column = None;
        }
        e
    }

    fn err(&self, key: &str, message: String) -> Invalid {
        Invalid::Recipe(self.located(key, message))
    }

    /// A plugin table's check: its missing file listed when planning, else refused.
    fn plugin_check(
        &mut self,
        table: &str,
        r: Result<(), sweetspot_core::ConfigIssue>,
    ) -> Result<(), Invalid> {
        match r {
            Err(i) if self.planning && i.missing_file => {
                let key = if i.key.is_empty() {
                    table.to_string()
                } else {
                    format!("{table}.{}", i.key)
                };
                self.missing.push(format!("`{key}`: {}", i.message));
                Ok(())
            }
            Err(i) => Err(self.plugin_issue(table, i)),
            Ok(()) => Ok(()),
        }
    }

    fn plugin_issue(&self, table: &str, i: sweetspot_core::ConfigIssue) -> Invalid {
        let key = if i.key.is_empty() {
            table.to_string()
        } else {
            format!("{table}.{}", i.key)
        };
        if i.missing_file {
            Invalid::MissingInput(self.located(&key, i.message))
        } else {
            Invalid::Recipe(self.located(&key, i.message))
        }
    }

    fn input(&mut self, key: &str, path: PathBuf, stage: usize) {
        self.inputs.push(Named {
            key: key.into(),
            path,
            stage,
        });
    }

    /// The files a plugin table reads, as inputs of `stage`.
    fn plugin_inputs<T: Table + ?Sized>(&mut self, name: &str, table: &T, stage: usize) {
        for (key, path) in table_inputs(name, table, self.ctx) {
            self.inputs.push(Named { key, path, stage });
        }
    }

    /// An output the recipe names, of `stage`.
    fn output(&mut self, key: &str, path: &Option<PathBuf>, stage: usize) {
        if let Some(o) = path {
            self.outputs.push(Named {
                key: key.into(),
                path: self.ctx.resolve(o),
                stage,
            });
        }
    }

    /// An output a chained run is given is a copy of its one product: refused where a sweep
    /// or rounds make several.
    fn one_place(&self, key: &str, given: bool, count: usize, what: &str) -> Result<(), Invalid> {
        let chained = self.stages.chained;
        if !given && !chained {
            return Err(self.err(
                key,
                format!("not given: name where the {what} go (or pass --output)"),
            ));
        }
        if given && chained && count > 1 {
            return Err(self.err(
                key,
                format!(
                    "names one place, but this run makes {count} {what}: leave it out (the run \
                     folder's index names each)"
                ),
            ));
        }
        Ok(())
    }

    /// A stage's input: left out, or the upstream stage's own output, it is that stage's
    /// product; else a file it reads (which must be given). `what` names it in the message.
    fn stage_input(
        &mut self,
        key: &str,
        (given, upstream, upstream_out): (&Option<PathBuf>, bool, Option<&PathBuf>),
        (stage, what, before): (usize, &str, &str),
    ) -> Result<(), Invalid> {
        let ctx = self.ctx;
        let connected =
            self.stages.chained && upstream && reads_upstream(ctx, given.as_ref(), upstream_out);
        match given {
            Some(input) => self.input(key, ctx.resolve(input), stage),
            None if connected => {}
            None => {
                return Err(self.err(
                    key,
                    if self.stages.chained {
                        format!("not given: name {what}, or add a {before} stage")
                    } else {
                        format!("not given: name {what} (`sweetspot run` takes them from {before})")
                    },
                ));
            }
        }
        Ok(())
    }

    /// `[run]`: devices and rounds.
    fn run_settings(&mut self) -> Result<(), Invalid> {
        let (r, chained, stages) = (self.r, self.stages.chained, self.stages);
        sweetspot_core::check_device_name(&self.ctx.device)
            .map_err(|m| self.err("run.device", m))?;
        let devices = r.run.devices();
        if r.run.device.is_some() && devices.is_empty() {
            return Err(self.err(
                "run.device",
                "an empty list: name at least one device".into(),
            ));
        }
        if devices.len() > 1 && !chained {
            return Err(self.err(
                "run.device",
                "a pool of devices is for `sweetspot run`: give one device".into(),
            ));
        }
        for d in &devices {
            sweetspot_core::check_device_name(d).map_err(|m| self.err("run.device", m))?;
        }
        let rounds = self.rounds;
        if rounds == 0 {
            return Err(self.err("run.rounds", "must be at least 1".into()));
        }
        if rounds > 1 {
            if !chained {
                return Err(self.err("run.rounds", "rounds are for `sweetspot run`".into()));
            }
            if !(stages.generate && stages.score && stages.pairs && stages.train) {
                return Err(self.err(
                    "run.rounds",
                    "rounds need every stage: [generate], [score], [pairs] and [train]".into(),
                ));
            }
            if r.run.continue_with.is_none() {
                return Err(self.err(
                    "run.rounds",
                    "name the policy each round continues with: `continue_with = \"<dataset>\"`"
                        .into(),
                ));
            }
        } else if r.run.continue_with.is_some() {
            return Err(self.err(
                "run.continue_with",
                "only used with `rounds` > 1 (it names the policy the next round samples with)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// `[generate]` with `[sampler]`.
    fn generate(&mut self) -> Result<(), Invalid> {
        let (r, ctx, rounds) = (self.r, self.ctx, self.rounds);
        let g = r
            .generate
            .as_ref()
            .ok_or_else(|| self.err("generate", "missing".into()))?;
        let Some(sampler) = &r.sampler else {
            return Err(self.err("generate", "[generate] needs a [sampler] table".into()));
        };
        if g.n == 0 {
            return Err(self.err("generate.n", "must be at least 1".into()));
        }
        self.plugin_check("sampler", sampler.check(ctx))?;
        let prompts = g.prompts.to_vec();
        if prompts.is_empty() || (prompts.len() > 1 && prompts.len() != rounds) {
            return Err(self.err(
                "generate.prompts",
                format!(
                    "{} files for {rounds} round(s): give one (the same prompts every round) \
                     or one per round",
                    prompts.len()
                ),
            ));
        }
        for p in prompts {
            self.input("generate.prompts", ctx.resolve(&p), GENERATE);
        }
        if rounds > 1 && sampler.local_model().is_none() {
            return Err(self.err(
                "sampler.type",
                format!(
                    "rounds need a sampler that loads a local model (each round samples with \
                     the policy the last one trained): the `{}` sampler {}",
                    sampler.plugin_type(),
                    NOT_LOCAL
                ),
            ));
        }
        self.plugin_inputs("sampler", sampler.as_ref(), GENERATE);
        self.one_place("generate.output", g.output.is_some(), rounds, "sample sets")?;
        self.output("generate.output", &g.output, GENERATE);
        self.described
            .push(format!("generate ({} samples per prompt)", g.n));
        Ok(())
    }

    /// `[score]` with `[reward]`.
    fn score(&mut self) -> Result<(), Invalid> {
        let r = self.r;
        let s = r
            .score
            .as_ref()
            .ok_or_else(|| self.err("score", "missing".into()))?;
        let Some(reward) = &r.reward else {
            return Err(self.err("score", "[score] needs a [reward] table".into()));
        };
        if s.groups_per_call == 0 {
            return Err(self.err("score.groups_per_call", "must be at least 1".into()));
        }
        let models = reward.models();
        if reward.is_several() {
            if !self.stages.chained {
                return Err(self.err(
                    "reward",
                    format!(
                        "{} [[reward]] models: scoring with several is for `sweetspot run` \
                         (one score node per model); `sweetspot score` takes one",
                        models.len()
                    ),
                ));
            }
            if s.output.is_some() {
                return Err(self.err(
                    "score.output",
                    "several [[reward]] models write one scored file each: leave `output` out \
                     (the run folder names each `scored/<name>.jsonl`)"
                        .into(),
                ));
            }
        }
        for (i, (name, model)) in models.iter().enumerate() {
            let table = if name.is_some() {
                format!("reward[{i}]")
            } else {
                "reward".to_string()
            };
            self.plugin_check(&table, model.check(self.ctx))?;
            refuse_pairwise(*model, &format!("{table}.type"))
                .map_err(|m| self.err(&format!("{table}.type"), m))?;
            let settings = crate::identity::Table::settings(*model);
            for (j, (other, earlier)) in models[..i].iter().enumerate() {
                if crate::identity::Table::settings(*earlier) == settings {
                    return Err(self.err(
                        &format!("{table}.type"),
                        format!(
                            "the same reward model as reward[{j}] (`{}`): it would score the \
                             samples twice alike",
                            other.unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        let upstream_out = r.generate.as_ref().and_then(|g| g.output.as_ref());
        self.stage_input(
            "score.input",
            (&s.input, self.stages.generate, upstream_out),
            (SCORE, "the samples to score", "[generate]"),
        )?;
        for (i, (name, model)) in models.iter().enumerate() {
            let table = if name.is_some() {
                format!("reward[{i}]")
            } else {
                "reward".to_string()
            };
            self.plugin_inputs(&table, *model, SCORE);
        }
        self.one_place(
            "score.output",
            s.output.is_some(),
            self.rounds,
            "scored sets",
        )?;
        self.output("score.output", &s.output, SCORE);
        self.described.push("score".to_string());
        Ok(())
    }

    /// `[pairs]`: its n, its strategies and their datasets, its output and input.
    fn pairs(&mut self) -> Result<(), Invalid> {
        let r = self.r;
        let p = r
            .pairs
            .as_ref()
            .ok_or_else(|| self.err("pairs", "missing".into()))?;
        crate::pairs::check_options(p).map_err(|(key, m)| self.err(&key, m))?;
        // `rank_by` and `agree` read the [[reward]] models' scores: [pairs] must read what
        // [score] makes, not a file of its own.
        let reads_score = self.stages.chained
            && self.stages.score
            && r.score.is_some()
            && reads_upstream(
                self.ctx,
                p.input.as_ref(),
                r.score.as_ref().and_then(|s| s.output.as_ref()),
            );
        let mut names = match &r.reward {
            Some(rw) if reads_score && rw.is_several() => rw.names(),
            _ => Vec::new(),
        };
        if !p.rewards.is_empty() {
            if self.stages.chained {
                return Err(self.err(
                    "pairs.rewards",
                    "is for `sweetspot pairs`: in `sweetspot run`, [pairs] reads the scores of \
                     the [[reward]] models"
                        .into(),
                ));
            }
            if p.input.is_some() {
                return Err(self.err(
                    "pairs.input",
                    "`input` and `rewards` both name scored samples: give one".into(),
                ));
            }
            for (name, path) in &p.rewards {
                if name.is_empty() {
                    return Err(self.err("pairs.rewards", "a model needs a name".into()));
                }
                let path = self.ctx.resolve(path);
                self.input(&format!("pairs.rewards.{name}"), path, PAIRS);
            }
            names = p.rewards.keys().cloned().collect();
        }
        crate::pairs::check_rewards(p.rank_by.as_ref(), &p.agree, &names)
            .map_err(|(key, m)| self.err(&key, m))?;
        if p.layout != sweetspot_core::recipe::PairsLayout::Pairs
            && self.stages.train
            && r.train.is_some()
        {
            return Err(self.err(
                "pairs.layout",
                format!(
                    "`{}` rows feed TRL's unpaired or listwise trainers; [train] reads pairs \
                     only (`layout = \"pairs\"`)",
                    p.layout.as_str()
                ),
            ));
        }
        if let Some(n) = &p.n {
            self.pairs_n(p, n.to_vec())?;
        }
        let names = self.pairs_datasets(p)?;
        self.dataset_names = names.iter().map(|(n, _)| n.clone()).collect();
        self.one_place(
            "pairs.output",
            p.output.is_some(),
            self.rounds * self.ns.len(),
            "pair sets",
        )?;
        if let Some(output) = &p.output {
            let single = is_single_file(output);
            if single && names.len() != 1 {
                return Err(self.err(
                    "pairs.output",
                    format!(
                        "`{}` is one file, but the strategies write {} datasets: give a folder",
                        output.display(),
                        names.len()
                    ),
                ));
            }
            let out = self.ctx.resolve(output);
            self.pair_files = if single {
                vec![resolved(&out)]
            } else {
                let ext = p.format.unwrap_or_default().extension();
                names
                    .iter()
                    .map(|(n, _)| resolved(&out.join(format!("{n}.{ext}"))))
                    .collect()
            };
            self.output("pairs.output", &p.output, PAIRS);
        }
        let upstream_out = r.score.as_ref().and_then(|s| s.output.as_ref());
        if p.rewards.is_empty() {
            self.stage_input(
                "pairs.input",
                (&p.input, self.stages.score, upstream_out),
                (PAIRS, "the scored samples", "[score]"),
            )?;
        }
        let sets = if self.ns.len() > 1 {
            format!(", {} values of n", self.ns.len())
        } else {
            String::new()
        };
        self.described.push(format!(
            "pairs ({} strategies, {} datasets{sets})",
            p.strategies.len(),
            names.len()
        ));
        Ok(())
    }

    /// `[pairs] n`: one value or a list, each within what `[generate]` makes, not also set by a
    /// strategy.
    fn pairs_n(&mut self, p: &PairsConfig, list: Vec<usize>) -> Result<(), Invalid> {
        if list.is_empty() {
            return Err(self.err("pairs.n", "an empty list: give at least one n".into()));
        }
        if list.contains(&0) {
            return Err(self.err("pairs.n", "every n must be at least 1".into()));
        }
        let mut sorted = list.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != list.len() {
            return Err(self.err("pairs.n", "lists an n twice".into()));
        }
        if list.len() > 1 && !self.stages.chained {
            return Err(self.err(
                "pairs.n",
                "a list of n makes one pair set per n, which is for `sweetspot run`".into(),
            ));
        }
        if let Some(g) = self.r.generate.as_ref().filter(|_| self.stages.generate)
            && let Some(big) = list.iter().find(|&&n| n > g.n)
        {
            return Err(self.err(
                "pairs.n",
                format!(
                    "{big} is more than the {} samples [generate] makes per prompt",
                    g.n
                ),
            ));
        }
        if let Some(i) = p.strategies.iter().position(|s| s.own_n().is_some()) {
            return Err(self.err(
                &format!("pairs.strategies[{i}].n"),
                "set both here and in `[pairs].n`: keep one".into(),
            ));
        }
        self.ns = list.into_iter().map(Some).collect();
        Ok(())
    }

    /// Each strategy checked and built: the datasets they write, with the strategy that
    /// writes each (no name twice).
    fn pairs_datasets(&self, p: &PairsConfig) -> Result<Vec<(String, usize)>, Invalid> {
        let mut names: Vec<(String, usize)> = Vec::new();
        if p.layout == sweetspot_core::recipe::PairsLayout::Listwise {
            names.push((crate::pairs::listwise_name(p.listwise_k), 0));
        }
        for (i, s) in p.strategies.iter().enumerate() {
            let table = format!("pairs.strategies[{i}]");
            s.check(self.ctx)
                .map_err(|issue| self.plugin_issue(&table, issue))?;
            let built = s
                .build(self.ctx)
                .map_err(|e| self.err(&table, e.to_string()))?;
            for name in built.datasets() {
                if let Some((_, j)) = names.iter().find(|(n, _)| *n == name) {
                    return Err(self.err(
                        &table,
                        format!("dataset `{name}` is also written by pairs.strategies[{j}]"),
                    ));
                }
                names.push((name, i));
            }
        }
        Ok(names)
    }

    /// `[train]`: its values, its losses, its data, its starting policy, its output.
    fn train(&mut self) -> Result<(), Invalid> {
        let r = self.r;
        let t = r
            .train
            .as_ref()
            .ok_or_else(|| self.err("train", "missing".into()))?;
        self.train_values(t)?;
        self.train_losses(t)?;
        self.train_devices(t)?;
        if t.backend == sweetspot_core::recipe::TrainBackend::Trl {
            // Every key and loss TRL lacks, refused by name before any stage runs.
            for loss in crate::plan::train_losses(t) {
                let one = TrainConfig {
                    loss: Some(loss),
                    losses: Vec::new(),
                    ..t.clone()
                };
                crate::trl::dpo_config(&one, r.run.seed)
                    .map_err(|e| self.err("train.backend", e.to_string()))?;
            }
            // The effective batch is micro-batch x accumulation x processes.
            if let Some(a) = &t.accelerate_config {
                let path = self.ctx.resolve(a);
                self.input("train.accelerate_config", path.clone(), TRAIN);
                if path.is_file() {
                    let acc = crate::trl::Accelerate::read(&path)
                        .map_err(|e| self.err("train.accelerate_config", e))?;
                    let micro = t.micro_batch_size.min(t.batch_size);
                    if !t.batch_size.is_multiple_of(micro * acc.processes) {
                        return Err(self.err(
                            "train.batch_size",
                            format!(
                                "{} is not a multiple of micro_batch_size ({micro}) x the \
                                 accelerate config's num_processes ({}): TRL's effective batch \
                                 is micro-batch x gradient accumulation x processes",
                                t.batch_size, acc.processes
                            ),
                        ));
                    }
                }
            }
        }
        let seeds = t.seeds.as_ref().map(|s| s.to_vec()).unwrap_or_default();
        if t.seeds.is_some() {
            if seeds.is_empty() {
                return Err(self.err("train.seeds", "an empty list: give at least one".into()));
            }
            if !self.stages.chained {
                return Err(self.err("train.seeds", "seeds are for `sweetspot run`".into()));
            }
        }
        let trained = self.train_data(t)? * t.losses.len().max(1) * seeds.len().max(1);
        self.train_policy(t)?;
        if self.rounds > 1
            && let Some(name) = &r.run.continue_with
        {
            let variants: Vec<String> =
                crate::plan::policy_variants(t, r.run.seed, &self.dataset_names, &self.ns)
                    .into_iter()
                    .map(|v| v.name)
                    .collect();
            crate::plan::continue_with(name, &variants)
                .map_err(|m| self.err("run.continue_with", m))?;
        }
        self.one_place(
            "train.output",
            t.output.is_some(),
            trained * self.rounds,
            "policies",
        )?;
        self.output("train.output", &t.output, TRAIN);
        self.described.push(if trained > 1 {
            format!("train ({trained} policies)")
        } else {
            "train".to_string()
        });
        Ok(())
    }

    /// `[train] devices` (data parallelism): GPUs of a compiled backend, each named once, the
    /// native trainer, at least one pair per device and step.
    fn train_devices(&self, t: &TrainConfig) -> Result<(), Invalid> {
        let devices = t
            .data_parallel_devices()
            .map_err(|e| self.err("train.devices", e))?;
        if devices.is_empty() {
            if t.devices.is_some() {
                return Err(self.err("train.devices", "an empty list: give at least one".into()));
            }
            return Ok(());
        }
        if t.backend == sweetspot_core::recipe::TrainBackend::Trl {
            return Err(self.err(
                "train.devices",
                "the TRL backend spans GPUs through `accelerate_config` (its `num_processes`), \
                 not `devices`"
                    .into(),
            ));
        }
        for d in &devices {
            sweetspot_core::check_device_name(d).map_err(|m| self.err("train.devices", m))?;
            let gpu = match d.split_once(':') {
                Some(("cuda" | "wgpu" | "gpu", i)) => i.parse::<usize>().is_ok(),
                _ => false,
            };
            if !gpu {
                return Err(self.err(
                    "train.devices",
                    format!(
                        "`{d}`: data parallelism is over GPUs named by index (`cuda:N`, \
                         `wgpu:N`, or a range `cuda:0-7`); the CPU is one device, whose cores \
                         already share each step"
                    ),
                ));
            }
        }
        if devices.len() > t.batch_size {
            return Err(self.err(
                "train.batch_size",
                format!(
                    "{} pairs per step for {} devices (`devices`): each device needs at least \
                     one pair per step",
                    t.batch_size,
                    devices.len()
                ),
            ));
        }
        Ok(())
    }

    /// `[train]`'s numbers: each in its range.
    fn train_values(&self, t: &TrainConfig) -> Result<(), Invalid> {
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(self.err(key, format!("{v} must be a number > 0")))
            }
        };
        let at_least_one = |key: &str, v: usize| {
            if v >= 1 {
                Ok(())
            } else {
                Err(self.err(key, "must be at least 1".into()))
            }
        };
        let in_range = |key: &str, v: f64, lo: f64, hi: f64, hi_open: bool| {
            let ok = v.is_finite() && v >= lo && if hi_open { v < hi } else { v <= hi };
            if ok {
                Ok(())
            } else {
                let close = if hi_open { ")" } else { "]" };
                Err(self.err(key, format!("{v} must be in [{lo}, {hi}{close}")))
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
        if let Some(a) = &t.adapter {
            self.train_adapter(t, a)?;
        }
        Ok(())
    }

    /// `[train.adapter]`: every key either works or is refused by name.
    fn train_adapter(
        &self,
        t: &TrainConfig,
        a: &sweetspot_core::recipe::AdapterConfig,
    ) -> Result<(), Invalid> {
        if a.r == 0 {
            return Err(self.err("train.adapter.r", "must be at least 1".into()));
        }
        if !(a.lora_alpha.is_finite() && a.lora_alpha > 0.0) {
            return Err(self.err(
                "train.adapter.lora_alpha",
                format!("{} must be > 0", a.lora_alpha),
            ));
        }
        if !(a.lora_dropout.is_finite() && (0.0..1.0).contains(&a.lora_dropout)) {
            return Err(self.err(
                "train.adapter.lora_dropout",
                format!("{} must be in [0, 1)", a.lora_dropout),
            ));
        }
        if a.lora_dropout != 0.0 {
            return Err(self.err(
                "train.adapter.lora_dropout",
                format!(
                    "{}: only 0 is supported (dropout on the adapters' input is not \
                     implemented)",
                    a.lora_dropout
                ),
            ));
        }
        let named = a.target_modules.to_vec();
        if named.is_empty() {
            return Err(self.err(
                "train.adapter.target_modules",
                "name at least one module".into(),
            ));
        }
        let known = sweetspot_core::recipe::LINEAR_MODULES;
        if let Some(bad) = named
            .iter()
            .find(|m| *m != "all-linear" && !known.contains(&m.as_str()))
        {
            return Err(self.err(
                "train.adapter.target_modules",
                format!(
                    "`{bad}` is not a linear layer of the decoder: one of {}, or \"all-linear\"",
                    known.join(", ")
                ),
            ));
        }
        if a.bias != "none" {
            return Err(self.err(
                "train.adapter.bias",
                format!(
                    "\"{}\": only \"none\" is supported (no bias trains)",
                    a.bias
                ),
            ));
        }
        if t.dtype != sweetspot_core::Precision::F32 {
            return Err(self.err(
                "train.dtype",
                format!(
                    "\"{}\" with [train.adapter]: set `[train.adapter] base_dtype` instead (the \
                     base is held and computed in it, the adapters in f32)",
                    t.dtype
                ),
            ));
        }
        Ok(())
    }

    /// `[train.loss]` or `[[train.losses]]`, each checked.
    fn train_losses(&self, t: &TrainConfig) -> Result<(), Invalid> {
        match (&t.loss, t.losses.is_empty()) {
            (Some(_), false) => {
                return Err(self.err(
                    "train.losses",
                    "give `[train.loss]` or `[[train.losses]]`, not both".into(),
                ));
            }
            (None, true) => {
                return Err(self.err(
                    "train",
                    "missing the loss: add a `[train.loss]` table (or `[[train.losses]]`)".into(),
                ));
            }
            _ => {}
        }
        if !t.losses.is_empty() && !self.stages.chained {
            return Err(self.err(
                "train.losses",
                "a list of losses makes one policy per loss, which is for `sweetspot run`".into(),
            ));
        }
        if let Some(loss) = &t.loss {
            loss.check(self.ctx)
                .map_err(|i| self.plugin_issue("train.loss", i))?;
        }
        for (i, loss) in t.losses.iter().enumerate() {
            loss.check(self.ctx)
                .map_err(|issue| self.plugin_issue(&format!("train.losses[{i}]"), issue))?;
        }
        Ok(())
    }

    /// What `[train]` trains on (`pairs`, or `datasets` of the run's pairs stage): the number
    /// of pair sets per loss and seed.
    fn train_data(&mut self, t: &TrainConfig) -> Result<usize, Invalid> {
        let (r, chained, ctx) = (self.r, self.stages.chained, self.ctx);
        let with_pairs = chained && self.stages.pairs;
        match (&t.pairs, &t.datasets) {
            (Some(_), Some(_)) => Err(self.err(
                "train.datasets",
                "give `pairs` (one file) or `datasets` (of the run's [pairs]), not both".into(),
            )),
            (None, None) if with_pairs => Err(self.err(
                "train.datasets",
                "name the datasets to train on: `datasets = [\"grid_max_vs_-2\"]`, a glob, or \
                 `\"all\"`"
                    .into(),
            )),
            (None, None) => Err(self.err(
                "train.pairs",
                "not given: name the pairs file to train on".into(),
            )),
            (None, Some(patterns)) => {
                if !with_pairs {
                    return Err(self.err(
                        "train.datasets",
                        "names datasets of the run's [pairs] stage: use `sweetspot run` with a \
                         [pairs] table, or give `pairs` (a file)"
                            .into(),
                    ));
                }
                if r.pairs
                    .as_ref()
                    .and_then(|p| p.format)
                    .is_some_and(|f| f != OutputFormat::Jsonl)
                {
                    return Err(self.err("pairs.format", JSONL_ONLY.into()));
                }
                let picked = crate::plan::select_datasets(&patterns.to_vec(), &self.dataset_names)
                    .map_err(|m| self.err("train.datasets", m))?;
                Ok(picked.len() * self.ns.len())
            }
            (Some(pairs), None) => {
                let train_pairs = ctx.resolve(pairs);
                if train_pairs
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
                {
                    return Err(self.err("train.pairs", JSONL_ONLY.into()));
                }
                // Made by this run's pairs stage: it must be one of the files that stage writes.
                if self.stages.pairs {
                    let p = resolved(&train_pairs);
                    let pairs_out = r
                        .pairs
                        .as_ref()
                        .and_then(|c| c.output.as_ref())
                        .map(|o| resolved(&ctx.resolve(o)));
                    if pairs_out.is_some_and(|o| p.starts_with(&o)) && !self.pair_files.contains(&p)
                    {
                        let names: Vec<String> = self
                            .pair_files
                            .iter()
                            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                            .collect();
                        return Err(self.err(
                            "train.pairs",
                            format!(
                                "{} is not a dataset the pairs stage writes (it writes {})",
                                train_pairs.display(),
                                names.join(", ")
                            ),
                        ));
                    }
                }
                self.input("train.pairs", train_pairs, TRAIN);
                Ok(1)
            }
        }
    }

    /// The policy training starts from: `[train] policy`, else (in a run) the sampler's local
    /// model.
    fn train_policy(&mut self, t: &TrainConfig) -> Result<(), Invalid> {
        if let Some(policy) = &t.policy {
            self.input("train.policy", self.ctx.resolve(policy), TRAIN);
            return Ok(());
        }
        match self.r.sampler.as_ref().filter(|_| self.stages.chained) {
            Some(s) if s.local_model().is_some() => Ok(()),
            Some(s) => Err(self.err(
                "train.policy",
                format!(
                    "not given, and the `{}` sampler {}: set `[train] policy` to the local \
                     model (folder or GGUF file) training starts from",
                    s.plugin_type(),
                    NOT_LOCAL
                ),
            )),
            None => Err(self.err(
                "train.policy",
                "not given: name the policy to train (in `sweetspot run` it defaults to the \
                 sampler's model)"
                    .into(),
            )),
        }
    }

    /// `[eval]`: the sampler answers with every policy, the reward model and the judge score.
    fn eval(&mut self, e: &EvalConfig) -> Result<(), Invalid> {
        let r = self.r;
        let Some(sampler) = r.sampler.as_ref().filter(|_| self.stages.train) else {
            return Err(self.err(
                "eval",
                "[eval] compares the trained policies with the starting one: it needs [sampler] \
                 (which answers the eval prompts) and [train]"
                    .into(),
            ));
        };
        if sampler.local_model().is_none() {
            return Err(self.err(
                "sampler.type",
                format!(
                    "[eval] answers with the starting policy and each trained one through the \
                     sampler, which must load a local model: the `{}` sampler {}",
                    sampler.plugin_type(),
                    NOT_LOCAL
                ),
            ));
        }
        if sampler.for_eval(0.0, None).is_none() {
            return Err(self.err(
                "sampler",
                format!(
                    "[eval] answers with the sampler and each policy at eval's temperature: the \
                     `{}` sampler cannot set its temperature",
                    sampler.plugin_type()
                ),
            ));
        }
        if !(e.temperature.is_finite() && e.temperature >= 0.0) {
            return Err(self.err(
                "eval.temperature",
                format!("{} must be a number >= 0 (0 is greedy)", e.temperature),
            ));
        }
        if e.max_new_tokens == Some(0) {
            return Err(self.err("eval.max_new_tokens", "must be at least 1".into()));
        }
        if e.bootstrap > 100_000 {
            return Err(self.err(
                "eval.bootstrap",
                format!("{} resamples: at most 100000", e.bootstrap),
            ));
        }
        self.eval_scorers(e)?;
        self.input("eval.prompts", self.ctx.resolve(&e.prompts), EVAL);
        self.described
            .push("eval (every policy against the starting one)".to_string());
        Ok(())
    }

    /// `[eval.reward]` (else the recipe's `[reward]`) and `[eval.judge]`.
    fn eval_scorers(&mut self, e: &EvalConfig) -> Result<(), Invalid> {
        match (&e.reward, &self.r.reward) {
            (Some(own), _) => {
                self.plugin_check("eval.reward", own.check(self.ctx))?;
                refuse_pairwise(own.as_ref(), "eval.reward.type")
                    .map_err(|m| self.err("eval.reward.type", m))?;
                self.plugin_inputs("eval.reward", own.as_ref(), EVAL);
            }
            (None, Some(rw)) => {
                crate::resolve::eval_reward(rw, self.r.pairs.as_ref())
                    .map_err(|m| self.err("eval", m))?;
            }
            (None, None) => {
                return Err(self.err(
                    "eval",
                    "no reward model: add [eval.reward] (or a [reward] table)".into(),
                ));
            }
        }
        if let Some(judge) = &e.judge {
            if !judge.pairwise() {
                return Err(self.err(
                    "eval.judge.type",
                    format!(
                        "`{}` scores one response; [eval.judge] compares two: use \
                         type = \"{PAIRWISE}\" (a reward model goes in [eval.reward])",
                        judge.plugin_type()
                    ),
                ));
            }
            self.plugin_check("eval.judge", judge.check(self.ctx))?;
            self.plugin_inputs("eval.judge", judge.as_ref(), EVAL);
        }
        Ok(())
    }

    /// The result: the stages' descriptions, once the paths fit.
    fn finish(mut self) -> Result<(Vec<String>, Vec<String>), Invalid> {
        if self.described.is_empty() {
            return Err(Invalid::Recipe(RecipeError {
                path: Some(self.origin.to_path_buf()),
                line: None,
                column: None,
                key: None,
                message: "the recipe has no stage (add [generate], [score], [pairs] or [train])"
                    .into(),
            }));
        }
        loop {
            match check_paths(&self.inputs, &self.outputs) {
                Ok(()) => break,
                Err((key, m, true)) if self.planning => {
                    // Listed, and left out of the checks of the inputs still to check.
                    let before = self.inputs.len();
                    self.inputs.retain(|n| n.key != key || n.path.exists());
                    if self.inputs.len() == before {
                        return Err(Invalid::MissingInput(self.located(&key, m)));
                    }
                    self.missing.push(format!("`{key}`: {m}"));
                }
                Err((key, m, missing)) => {
                    return Err(if missing {
                        Invalid::MissingInput(self.located(&key, m))
                    } else {
                        Invalid::Recipe(self.located(&key, m))
                    });
                }
            }
        }
        Ok((self.described, self.missing))
    }
}

/// What a sampler without a local model is, in messages.
const NOT_LOCAL: &str = "samples from a server (its `model` is the server's model name, not a \
                         local model)";

/// The trainer's one pairs format.
const JSONL_ONLY: &str = "the trainer reads pairs as JSONL: write them with format = \"jsonl\"";

/// The reward-model type that compares two responses (only for `[eval.judge]`).
const PAIRWISE: &str = "pairwise-judge";

/// Whether a pairs output names one file (else a folder).
fn is_single_file(output: &Path) -> bool {
    output
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("parquet"))
}

/// A pairwise judge scores a text holding two responses: as a reward model of one response its
/// numbers would mean nothing.
fn refuse_pairwise(
    config: &dyn sweetspot_core::RewardModelConfig,
    key: &str,
) -> Result<(), String> {
    if config.pairwise() {
        return Err(format!(
            "`{}` compares two responses and is only for [eval.judge]; `{key}` needs a reward \
             model of one response (seq-cls, armorm, judge)",
            config.plugin_type()
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
