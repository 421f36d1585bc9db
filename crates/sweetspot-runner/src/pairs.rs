//! The pairs stage: scored groups in, one preference dataset per strategy dataset out, in one
//! pass over the input.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use std::io::{BufRead, Seek};

use sweetspot_core::recipe::{
    Aggregate, InputLayout, OnBadGroup, OutputFormat, PairsConfig, PairsLayout, RankBy,
};
use sweetspot_core::{
    BuildContext, PairStrategy, PairStrategyConfig, RewardStats, Selection, SkipReason,
};
use sweetspot_io::{
    ListwiseRow, OutputSet, PairRow, ReadError, ReadOptions, Record, RowWriter, ScoredReader,
    UnpairedRow,
};

/// Groups read ahead of the selecting thread, at most.
pub const PIPELINE_GROUPS: usize = 64;

use crate::error::RunError;
use crate::progress::BarProgress;

/// Everything the pairs stage needs, with paths already resolved.
#[derive(Debug)]
pub struct PairsJob {
    /// Scored samples.
    pub input: PathBuf,
    /// Their layout.
    pub input_layout: InputLayout,
    /// A folder, or one `.jsonl` / `.parquet` file for a single dataset.
    pub output: PathBuf,
    /// Output format; by default from the output's extension, else JSONL.
    pub format: Option<OutputFormat>,
    /// Groups too small for a strategy.
    pub on_small_group: OnBadGroup,
    /// Groups with a non-finite reward.
    pub on_invalid_reward: OnBadGroup,
    /// The strategies.
    pub strategies: Vec<Box<dyn PairStrategyConfig>>,
    /// Only the first n samples of each group (by sample index) are used, by every strategy;
    /// a group with fewer is a small group.
    pub n: Option<usize>,
    /// The context the strategies are built with.
    pub ctx: BuildContext,
    /// Hide the progress bar.
    pub quiet: bool,
    /// Write the paths in `summary.json` relative to this folder (the run folder, so that a
    /// moved run folder stays whole); absolute when `None`.
    pub paths_relative_to: Option<PathBuf>,
    /// Drop pairs whose reward margin is below this.
    pub min_margin: Option<f64>,
    /// Drop pairs whose margin over the prompt's reward sigma is below this.
    pub min_margin_sigma: Option<f64>,
    /// Keep only this top fraction of each dataset's pairs by margin.
    pub top_fraction: Option<f64>,
    /// The rows written.
    pub layout: PairsLayout,
    /// `listwise`: responses per prompt (all when `None`).
    pub listwise_k: Option<usize>,
    /// Several reward models' scores of the same samples: each model's name and scored file
    /// (the single-model layout), in the recipe's order; `input` is the first's. Read in
    /// lockstep: every file must hold the same prompts and sample indices in the same order.
    /// Empty: `input` alone, one model.
    pub rewards: Vec<(String, PathBuf)>,
    /// With `rewards`: what ranks the samples.
    pub rank_by: Option<RankBy>,
    /// With `rewards`: the models whose order a pair must have (see [`FILTER_AGREE`]).
    pub agree: Vec<String>,
    /// How many of `agree` must agree (all when `None`).
    pub agree_min: Option<usize>,
}

/// The filter names, as counted in `summary.json`. `agree`: a pair is kept when at least
/// `agree_min` (default: all) of the `agree` models give its chosen response a strictly higher
/// reward than its rejected one.
pub const FILTER_AGREE: &str = "agree";
/// See [`FILTER_AGREE`].
pub const FILTER_MIN_MARGIN: &str = "min_margin";
/// See [`FILTER_MIN_MARGIN`].
pub const FILTER_MIN_MARGIN_SIGMA: &str = "min_margin_sigma";
/// See [`FILTER_MIN_MARGIN`].
pub const FILTER_TOP_FRACTION: &str = "top_fraction";

/// The one dataset of `layout = "listwise"`: `listwise`, or `listwise_k{k}`.
pub fn listwise_name(k: Option<usize>) -> String {
    match k {
        Some(k) => format!("listwise_k{k}"),
        None => "listwise".into(),
    }
}

/// How many pairs of `pairs` `top_fraction = fraction` keeps: ceil(fraction * pairs), where a
/// product within 1e-9 of a whole number counts as that number (so 0.3 of 10 pairs is 3).
pub fn top_fraction_keeps(fraction: f64, pairs: usize) -> usize {
    let x = fraction * pairs as f64;
    let k = if (x - x.round()).abs() < 1e-9 {
        x.round()
    } else {
        x.ceil()
    };
    (k.max(0.0) as usize).min(pairs)
}

/// Checks `[pairs]`'s filters and layout: on failure, the dotted key at fault and what is wrong.
pub fn check_options(p: &PairsConfig) -> Result<(), (String, String)> {
    let bad = |key: &str, m: String| Err((format!("pairs.{key}"), m));
    for (key, v) in [
        (FILTER_MIN_MARGIN, p.min_margin),
        (FILTER_MIN_MARGIN_SIGMA, p.min_margin_sigma),
    ] {
        if let Some(v) = v
            && !(v.is_finite() && v >= 0.0)
        {
            return bad(key, format!("{v}: give a finite number, 0 or more"));
        }
    }
    if let Some(f) = p.top_fraction
        && !(f > 0.0 && f <= 1.0)
    {
        return bad(
            FILTER_TOP_FRACTION,
            format!("{f}: give a fraction above 0 and at most 1"),
        );
    }
    if let Some(k) = p.agree_min {
        if p.agree.is_empty() {
            return bad(
                "agree_min",
                "counts the models of `agree`, and `agree` names none".into(),
            );
        }
        if k == 0 || k > p.agree.len() {
            return bad(
                "agree_min",
                format!(
                    "{k}: give 1 to {} (the models `agree` names)",
                    p.agree.len()
                ),
            );
        }
    }
    for (i, name) in p.agree.iter().enumerate() {
        if p.agree[..i].contains(name) {
            return bad("agree", format!("`{name}` is named twice"));
        }
    }
    if let Some(RankBy::Aggregate(Aggregate::Weighted { weights })) = &p.rank_by {
        if weights.is_empty() {
            return bad(
                "rank_by.weights",
                "no weights: give at least one `<model name> = <weight>`".into(),
            );
        }
        for (name, w) in weights {
            if !w.is_finite() {
                return bad(
                    &format!("rank_by.weights.{name}"),
                    format!("{w}: give a finite number"),
                );
            }
        }
    }
    match p.layout {
        PairsLayout::Listwise => {
            if !p.agree.is_empty() {
                return bad(
                    FILTER_AGREE,
                    "filters pairs, and `layout = \"listwise\"` writes none: drop it".into(),
                );
            }
            if !p.strategies.is_empty() {
                return bad(
                    "strategies",
                    "`layout = \"listwise\"` writes every prompt's responses ranked by reward, \
                     with no strategy: drop the [[pairs.strategies]] tables"
                        .into(),
                );
            }
            for (key, set) in [
                (FILTER_MIN_MARGIN, p.min_margin.is_some()),
                (FILTER_MIN_MARGIN_SIGMA, p.min_margin_sigma.is_some()),
                (FILTER_TOP_FRACTION, p.top_fraction.is_some()),
            ] {
                if set {
                    return bad(
                        key,
                        "filters pairs, and `layout = \"listwise\"` writes none: drop it".into(),
                    );
                }
            }
            if let Some(k) = p.listwise_k
                && k < 2
            {
                return bad("listwise_k", format!("{k}: a ranking needs at least 2"));
            }
        }
        PairsLayout::Pairs | PairsLayout::Unpaired => {
            if p.listwise_k.is_some() {
                return bad(
                    "listwise_k",
                    format!(
                        "is for `layout = \"listwise\"`, and the layout is `{}`",
                        p.layout.as_str()
                    ),
                );
            }
            if p.strategies.is_empty() {
                return bad(
                    "strategies",
                    "no strategies: add at least one [[pairs.strategies]] table".into(),
                );
            }
        }
    }
    Ok(())
}

/// Checks `[pairs]`'s `rank_by`, `agree` and `agree_min` against the `[[reward]]` models that
/// score the pairs' input (`names`: none for one `[reward]` model or a user's scored file): on
/// failure, the dotted key at fault and what is wrong.
pub fn check_rewards(
    rank_by: Option<&RankBy>,
    agree: &[String],
    names: &[String],
) -> Result<(), (String, String)> {
    let bad = |key: &str, m: String| Err((format!("pairs.{key}"), m));
    let uses = rank_by.is_some() || !agree.is_empty();
    if names.len() < 2 {
        if uses {
            let key = if rank_by.is_some() {
                "rank_by"
            } else {
                FILTER_AGREE
            };
            return bad(
                key,
                "needs several reward models' scores of the pairs' input: two or more \
                 [[reward]] tables, each with a `name`, whose scores [pairs] reads (it has \
                 no `input` of its own)"
                    .into(),
            );
        }
        return Ok(());
    }
    let known = |name: &str| names.iter().any(|n| n == name);
    let list = names.join(", ");
    match rank_by {
        None => {
            return bad(
                "rank_by",
                format!(
                    "missing: several reward models score the samples ({list}): name the one \
                     that ranks them (`rank_by = \"{}\"`), or an aggregate \
                     (`rank_by = {{ aggregate = \"mean_z\" }}`)",
                    names[0]
                ),
            );
        }
        Some(RankBy::Model(m)) if !known(m) => {
            return bad(
                "rank_by",
                format!("`{m}` is no [[reward]] model's name (they are {list})"),
            );
        }
        Some(RankBy::Aggregate(Aggregate::Weighted { weights })) => {
            for name in weights.keys() {
                if !known(name) {
                    return bad(
                        &format!("rank_by.weights.{name}"),
                        format!("`{name}` is no [[reward]] model's name (they are {list})"),
                    );
                }
            }
        }
        Some(_) => {}
    }
    for (i, name) in agree.iter().enumerate() {
        if !known(name) {
            return bad(
                &format!("agree[{i}]"),
                format!("`{name}` is no [[reward]] model's name (they are {list})"),
            );
        }
    }
    Ok(())
}

impl PairsJob {
    /// The job for a recipe's `[pairs]` table, reading `input` and writing `output` (the
    /// table's own, resolved against `ctx.base_dir`, when `None`). A table without them (made
    /// for `sweetspot run`) is refused by name.
    pub fn from_config(
        cfg: PairsConfig,
        input: Option<PathBuf>,
        output: Option<PathBuf>,
        ctx: BuildContext,
    ) -> Result<Self, RunError> {
        let pick = |given: Option<PathBuf>, own: &Option<PathBuf>, key: &str| {
            given
                .or_else(|| own.as_ref().map(|p| ctx.resolve(p)))
                .ok_or_else(|| {
                    RunError::Config(format!(
                        "[pairs]: `{key}` is not given (it is needed outside `sweetspot run`)"
                    ))
                })
        };
        check_options(&cfg)
            .map_err(|(key, m)| RunError::Config(format!("[pairs]: `{key}`: {m}")))?;
        let rewards: Vec<(String, PathBuf)> = cfg
            .rewards
            .iter()
            .map(|(name, p)| (name.clone(), ctx.resolve(p)))
            .collect();
        let input = match rewards.first() {
            Some(_) if input.is_some() || cfg.input.is_some() => {
                return Err(RunError::Config(
                    "[pairs]: `input` and `rewards` both name scored samples: give one".into(),
                ));
            }
            Some((_, first)) => first.clone(),
            None => pick(input, &cfg.input, "input")?,
        };
        let output = pick(output, &cfg.output, "output")?;
        let n = match cfg.n.as_ref().map(|n| n.to_vec()).as_deref() {
            None => None,
            Some([n]) => Some(*n),
            Some(ns) => {
                return Err(RunError::Config(format!(
                    "[pairs]: `n` lists {} values: one pair set per n is for `sweetspot run`",
                    ns.len()
                )));
            }
        };
        Ok(Self {
            input,
            input_layout: cfg.input_layout,
            output,
            format: cfg.format,
            on_small_group: cfg.on_small_group,
            on_invalid_reward: cfg.on_invalid_reward,
            strategies: cfg.strategies,
            n,
            ctx,
            quiet: false,
            paths_relative_to: None,
            min_margin: cfg.min_margin,
            min_margin_sigma: cfg.min_margin_sigma,
            top_fraction: cfg.top_fraction,
            layout: cfg.layout,
            listwise_k: cfg.listwise_k,
            rewards,
            rank_by: cfg.rank_by,
            agree: cfg.agree,
            agree_min: cfg.agree_min,
        })
    }
}

/// One dataset's result.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetSummary {
    /// Its name.
    pub name: String,
    /// Where it was written.
    pub file: PathBuf,
    /// Pairs written (kept by every filter); with `layout = "listwise"`, prompts written.
    pub pairs: u64,
    /// Rows written: `pairs`, twice that with `layout = "unpaired"`.
    pub rows: u64,
    /// Groups that gave no pair, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Pairs a strategy picked and a filter dropped, by filter (`agree`, `min_margin`,
    /// `min_margin_sigma`, `top_fraction`, applied in that order; each filter set is listed).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped: BTreeMap<String, u64>,
}

/// The result of a pairs run (also written as JSON beside the outputs).
#[derive(Debug, Clone, Serialize)]
pub struct PairsSummary {
    /// The input.
    pub input: PathBuf,
    /// `long` or `grouped`.
    pub input_layout: String,
    /// Passes over the input: always 1 (`top_fraction` buffers the candidate rows in a temporary
    /// file beside the output instead of reading the input again).
    pub input_passes: u32,
    /// `pairs`, `unpaired` or `listwise`.
    pub layout: String,
    /// Several reward models: each one's name and scored file (`input` is the first's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reward_models: Vec<RewardInput>,
    /// Several reward models: what ranked the samples (a model's name, `mean_z`, or
    /// `weighted(<name>=<weight>,...)`); margins and filters use that ranking reward.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank_by: Option<String>,
    /// Bytes taken from the input file.
    pub input_bytes_read: u64,
    /// Rows read.
    pub rows_read: u64,
    /// Groups read.
    pub groups: u64,
    /// Samples in the groups read (the first `n` of each, with `[pairs].n`).
    pub samples: u64,
    /// Of those, samples left out because their response is empty (or only whitespace): such a
    /// response is never chosen or rejected.
    pub empty_responses: u64,
    /// Per dataset.
    pub datasets: Vec<DatasetSummary>,
    /// Where the summary was written.
    pub summary_file: PathBuf,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// One reward model's scores in a summary.
#[derive(Debug, Clone, Serialize)]
pub struct RewardInput {
    /// The `[[reward]]` name.
    pub name: String,
    /// Its scored file.
    pub file: PathBuf,
}

/// Each model's rewards of a group's samples, `[model][sample]`, in the group's order.
type ModelRewards = Vec<Vec<f64>>;

/// What the reader thread hands over: a record, whether the input is long, and with several
/// models their rewards of the group's samples.
type Message = Result<(Record, Option<bool>, ModelRewards), RunError>;

/// The next record of each other model's reader, checked against the first model's `record`:
/// the same prompt and the same sample indices.
fn join_models(
    record: &Record,
    others: &mut [ScoredReader],
) -> Result<(Option<Record>, ModelRewards), RunError> {
    let mismatch = |path: &Path, m: String| {
        RunError::Config(format!(
            "{}: {m}: every [[reward]] model's scores must hold the same prompts and samples in \
             the same order",
            path.display()
        ))
    };
    let (id, indices, mut rewards): (&str, Option<Vec<u32>>, ModelRewards) = match record {
        Record::Group { group, .. } => (
            &group.prompt.id,
            Some(
                group
                    .samples
                    .iter()
                    .map(|s| s.sample.sample_index)
                    .collect(),
            ),
            vec![group.samples.iter().map(|s| s.reward).collect()],
        ),
        Record::InvalidReward { prompt_id, .. } => (prompt_id, None, Vec::new()),
    };
    let mut invalid = indices.is_none();
    for other in others.iter_mut() {
        let path = other.path().to_path_buf();
        let next = match other.next() {
            Some(r) => r?,
            None => {
                return Err(mismatch(
                    &path,
                    format!("ends before prompt `{id}` (the first model's file goes on)"),
                ));
            }
        };
        match next {
            Record::Group { group, .. } => {
                if group.prompt.id != id {
                    return Err(mismatch(
                        &path,
                        format!(
                            "prompt `{}` where the first model's file has `{id}`",
                            group.prompt.id
                        ),
                    ));
                }
                let own: Vec<u32> = group
                    .samples
                    .iter()
                    .map(|s| s.sample.sample_index)
                    .collect();
                if let Some(ix) = &indices
                    && *ix != own
                {
                    return Err(mismatch(
                        &path,
                        format!("prompt `{id}` has other sample indices than the first model's"),
                    ));
                }
                rewards.push(group.samples.iter().map(|s| s.reward).collect());
            }
            Record::InvalidReward { prompt_id, .. } => {
                if prompt_id != id {
                    return Err(mismatch(
                        &path,
                        format!("prompt `{prompt_id}` where the first model's file has `{id}`"),
                    ));
                }
                invalid = true;
            }
        }
    }
    if invalid && indices.is_some() {
        // Another model's rewards of this group are not finite: the group is an invalid one.
        if let Record::Group { group, at } = record {
            return Ok((
                Some(Record::InvalidReward {
                    prompt_id: group.prompt.id.clone(),
                    at: *at,
                }),
                Vec::new(),
            ));
        }
    }
    Ok((None, rewards))
}

/// Population mean and sigma of `v`.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The ranking reward of each sample from the models' rewards (`[model][sample]`).
fn rank_rewards(rank_by: &RankBy, names: &[String], models: &ModelRewards) -> Vec<f64> {
    let samples = models.first().map_or(0, Vec::len);
    let index = |name: &str| names.iter().position(|n| n == name);
    match rank_by {
        RankBy::Model(m) => index(m)
            .and_then(|i| models.get(i).cloned())
            .unwrap_or_default(),
        RankBy::Aggregate(Aggregate::MeanZ) => {
            let mut out = vec![0.0; samples];
            for rewards in models {
                let (mean, std) = mean_std(rewards);
                if std > 0.0 {
                    for (o, r) in out.iter_mut().zip(rewards) {
                        *o += (r - mean) / std;
                    }
                }
            }
            let k = models.len().max(1) as f64;
            out.iter().map(|x| x / k).collect()
        }
        RankBy::Aggregate(Aggregate::Weighted { weights }) => {
            let mut out = vec![0.0; samples];
            for (name, w) in weights {
                if let Some(rewards) = index(name).and_then(|i| models.get(i)) {
                    for (o, r) in out.iter_mut().zip(rewards) {
                        *o += w * r;
                    }
                }
            }
            out
        }
    }
}

struct Built {
    strategy: Box<dyn PairStrategy>,
    label: String,
    /// Index of the strategy's first dataset.
    first: usize,
    count: usize,
    /// The n the strategy cuts groups to itself.
    own_n: Option<usize>,
}

/// One dataset's candidate rows under `top_fraction`: each pair's rows as JSON lines in a
/// temporary file, and its margin in memory (8 bytes a pair).
struct Buffer {
    file: std::io::BufWriter<tempfile::NamedTempFile>,
    margins: Vec<f64>,
}

/// Runs the pairs stage. On failure no output file is left behind, and a folder the run created
/// is removed again.
pub fn run_pairs(job: PairsJob) -> Result<PairsSummary, RunError> {
    let mut created = Vec::new();
    let result = run_pairs_inner(job, &mut created);
    if result.is_err() {
        for dir in created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

fn run_pairs_inner(job: PairsJob, created: &mut Vec<PathBuf>) -> Result<PairsSummary, RunError> {
    let start = Instant::now();
    if job.layout == PairsLayout::Listwise {
        if !job.strategies.is_empty() {
            return Err(RunError::Config(
                "[pairs]: `layout = \"listwise\"` takes no strategies: drop the \
                 [[pairs.strategies]] tables"
                    .into(),
            ));
        }
    } else if job.strategies.is_empty() {
        return Err(RunError::Config(
            "no strategies: add at least one [[pairs.strategies]] table".into(),
        ));
    }
    let model_names: Vec<String> = job.rewards.iter().map(|r| r.0.clone()).collect();
    check_rewards(job.rank_by.as_ref(), &job.agree, &model_names)
        .map_err(|(key, m)| RunError::Config(format!("[pairs]: `{key}`: {m}")))?;
    if let Some((_, first)) = job.rewards.first()
        && *first != job.input
    {
        return Err(RunError::Config(format!(
            "[pairs]: the input `{}` is not the first reward model's scores `{}`",
            job.input.display(),
            first.display()
        )));
    }
    let inputs: Vec<PathBuf> = if job.rewards.is_empty() {
        vec![job.input.clone()]
    } else {
        job.rewards.iter().map(|r| r.1.clone()).collect()
    };
    crate::paths::check_outputs(&inputs, std::slice::from_ref(&job.output))?;
    // The `agree` models, as indices into the models.
    let agree: Vec<usize> = job
        .agree
        .iter()
        .filter_map(|a| model_names.iter().position(|n| n == a))
        .collect();
    let agree_min = job.agree_min.unwrap_or(agree.len());
    // Build the strategies and lay out their datasets.
    let mut built = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, cfg) in job.strategies.iter().enumerate() {
        let strategy = cfg.build(&job.ctx).map_err(|source| RunError::Plugin {
            plugin: format!("pairs.strategies[{i}]"),
            source,
        })?;
        let datasets = strategy.datasets();
        let label = datasets.join(", ");
        built.push(Built {
            first: names.len(),
            count: datasets.len(),
            strategy,
            label,
            own_n: cfg.own_n(),
        });
        names.extend(datasets);
    }
    if job.layout == PairsLayout::Listwise {
        names.push(listwise_name(job.listwise_k));
    }
    let mut unique = HashSet::new();
    for name in &names {
        if !unique.insert(name.as_str()) {
            return Err(RunError::Config(format!(
                "two strategies write dataset `{name}`: drop one of them"
            )));
        }
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(RunError::Config(format!(
                "dataset name `{name}` is not a safe file name"
            )));
        }
    }

    // Where the outputs go.
    let single_ext = job
        .output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .filter(|e| e == "jsonl" || e == "parquet");
    let format = job.format.unwrap_or(match single_ext.as_deref() {
        Some("parquet") => OutputFormat::Parquet,
        _ => OutputFormat::Jsonl,
    });
    let (targets, summary_file): (Vec<PathBuf>, PathBuf) = if single_ext.is_some() {
        if names.len() != 1 {
            return Err(RunError::Config(format!(
                "output `{}` is one file, but the strategies write {} datasets ({}): give a folder",
                job.output.display(),
                names.len(),
                names.join(", ")
            )));
        }
        let stem = job
            .output
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("pairs");
        let summary = job.output.with_file_name(format!("{stem}.summary.json"));
        if let Some(parent) = job.output.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_dir(parent, created)?;
        }
        (vec![job.output.clone()], summary)
    } else {
        create_dir(&job.output, created)?;
        let targets = names
            .iter()
            .map(|n| job.output.join(format!("{n}.{}", format.extension())))
            .collect();
        (targets, job.output.join("summary.json"))
    };

    for dir in targets.iter().filter_map(|t| t.parent()) {
        sweetspot_io::remove_stale_temp_files(dir);
    }
    let mut outputs = OutputSet::new();
    for target in &targets {
        outputs.add(match job.layout {
            PairsLayout::Pairs => RowWriter::pairs(target, format)?,
            PairsLayout::Unpaired => RowWriter::unpaired(target, format)?,
            PairsLayout::Listwise => RowWriter::listwise(target, format)?,
        });
    }
    let temp_err = |target: &Path, e: &dyn std::fmt::Display| {
        RunError::Write(sweetspot_io::WriteError::Encode {
            path: target.to_path_buf(),
            message: format!("the temporary file of `top_fraction`: {e}"),
        })
    };
    let mut buffers: Vec<Option<Buffer>> = Vec::with_capacity(targets.len());
    for target in &targets {
        buffers.push(match job.top_fraction {
            Some(_) => {
                let tmp = sweetspot_core::atomic::temp_file_for(target)
                    .map_err(|e| temp_err(target, &e))?;
                Some(Buffer {
                    file: std::io::BufWriter::with_capacity(1 << 16, tmp),
                    margins: Vec::new(),
                })
            }
            None => None,
        });
    }
    let mut dropped: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); names.len()];
    for d in dropped.iter_mut() {
        for (name, set) in [
            (FILTER_AGREE, !agree.is_empty()),
            (FILTER_MIN_MARGIN, job.min_margin.is_some()),
            (FILTER_MIN_MARGIN_SIGMA, job.min_margin_sigma.is_some()),
            (FILTER_TOP_FRACTION, job.top_fraction.is_some()),
        ] {
            if set {
                d.insert(name.to_string(), 0);
            }
        }
    }
    let mut rows = vec![0u64; names.len()];

    let options = ReadOptions {
        layout: job.input_layout,
        on_invalid_reward: job.on_invalid_reward,
    };
    let mut reader = ScoredReader::open(&job.input, options)?;
    let mut others = Vec::new();
    for path in inputs.iter().skip(1) {
        others.push(ScoredReader::open(path, options)?);
    }
    tracing::info!(
        input = %job.input.display(),
        datasets = names.len(),
        "building pairs in one pass"
    );
    let progress = BarProgress::new("pairs", "bytes", job.quiet);
    sweetspot_core::Progress::set_total(&progress, Some(reader.progress().1));

    // Two-stage pipeline: one thread reads and parses, this one selects and writes. The channel
    // holds at most PIPELINE_GROUPS groups, so memory stays bounded.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Message>(PIPELINE_GROUPS);
    let bar = progress.clone();
    let reader_thread = std::thread::Builder::new()
        .name("sweetspot-read".into())
        .spawn(move || {
            let mut n = 0u32;
            while let Some(record) = reader.next() {
                let is_long = reader.is_long();
                let message = match record {
                    Err(e) => Err(RunError::from(e)),
                    Ok(r) if others.is_empty() => Ok((r, is_long, Vec::new())),
                    Ok(r) => join_models(&r, &mut others)
                        .map(|(replaced, models)| (replaced.unwrap_or(r), is_long, models)),
                };
                let failed = message.is_err();
                if tx.send(message).is_err() || failed {
                    break;
                }
                n += 1;
                if n.is_multiple_of(64) {
                    bar.set_position(reader.progress().0);
                }
            }
            // Every other model's file must end where the first model's does.
            let mut tail = Ok(());
            for other in others.iter_mut() {
                if let Some(extra) = other.next() {
                    let what = match extra {
                        Ok(Record::Group { group, .. }) => format!("prompt `{}`", group.prompt.id),
                        Ok(Record::InvalidReward { prompt_id, .. }) => {
                            format!("prompt `{prompt_id}`")
                        }
                        Err(e) => e.to_string(),
                    };
                    tail = Err(RunError::Config(format!(
                        "{}: goes on after the first model's scores end ({what}): every \
                         [[reward]] model's scores must hold the same prompts and samples",
                        other.path().display()
                    )));
                    break;
                }
            }
            (reader, tail)
        })
        .map_err(|e| RunError::Config(format!("cannot start the reader thread: {e}")))?;

    let mut pairs = vec![0u64; names.len()];
    let mut skipped: Vec<BTreeMap<SkipReason, u64>> = vec![BTreeMap::new(); names.len()];
    let mut samples = 0u64;
    let mut empty_responses = 0u64;
    let mut selections = Vec::new();
    for message in rx.iter() {
        let (record, is_long, mut models) = message?;
        let (mut group, at) = match record {
            Record::Group { group, at } => (group, at),
            Record::InvalidReward { .. } => {
                for s in skipped.iter_mut() {
                    *s.entry(SkipReason::INVALID_REWARD).or_default() += 1;
                }
                continue;
            }
        };
        // A group too small for `needs` samples: the error, or `None` when it is skipped.
        let too_small =
            |group: &sweetspot_core::ScoredGroup, needs: usize, who: String, empty: usize| {
                (job.on_small_group == OnBadGroup::Error).then(|| {
                    RunError::SmallGroup(Box::new(crate::error::SmallGroupError {
                        path: job.input.clone(),
                        at,
                        field: (is_long == Some(false))
                            .then(|| "all_generated_responses".to_string()),
                        prompt_id: group.prompt.id.clone(),
                        has: group.samples.len(),
                        needs,
                        strategy: who,
                        empty,
                    }))
                })
            };
        if let Some(n) = job.n {
            if group.samples.len() < n {
                if let Some(e) = too_small(&group, n, "`[pairs].n`".into(), 0) {
                    return Err(e);
                }
                for s in skipped.iter_mut() {
                    *s.entry(SkipReason::TOO_FEW_SAMPLES).or_default() += 1;
                }
                continue;
            }
            group.samples.truncate(n);
            for m in models.iter_mut() {
                m.truncate(n);
            }
        }
        samples += group.samples.len() as u64;
        // An empty response is never a pair's chosen or rejected: left out before selection,
        // and counted.
        let before = group.samples.len();
        let kept: Vec<bool> = group
            .samples
            .iter()
            .map(|s| !s.sample.response.trim().is_empty())
            .collect();
        group
            .samples
            .retain(|s| !s.sample.response.trim().is_empty());
        for m in models.iter_mut() {
            let mut keep = kept.iter();
            m.retain(|_| keep.next().copied().unwrap_or(false));
        }
        let empty = before - group.samples.len();
        empty_responses += empty as u64;
        // Several models: the ranking reward of each sample (over the samples left).
        if let Some(rank_by) = &job.rank_by
            && !models.is_empty()
        {
            let ranked = rank_rewards(rank_by, &model_names, &models);
            for (s, r) in group.samples.iter_mut().zip(ranked) {
                s.reward = r;
            }
        }
        if job.layout == PairsLayout::Listwise {
            let needs = job.listwise_k.unwrap_or(2).max(2);
            if group.samples.len() < needs {
                let who = format!("`[pairs].listwise_k` = {needs}");
                if let Some(e) = too_small(&group, needs, who, empty) {
                    return Err(e);
                }
                *skipped[0].entry(SkipReason::TOO_FEW_SAMPLES).or_default() += 1;
                continue;
            }
            // Best reward first; a tie goes to the lower sample index (the group's order).
            let mut order: Vec<&sweetspot_core::ScoredSample> = group.samples.iter().collect();
            order.sort_by(|a, b| b.reward.total_cmp(&a.reward));
            order.truncate(job.listwise_k.unwrap_or(order.len()));
            outputs
                .writer(0)
                .write(&ListwiseRow::new(&group.prompt, &order))?;
            pairs[0] += 1;
            rows[0] += 1;
            continue;
        }
        for b in &built {
            let needs = b.strategy.min_samples();
            if group.samples.len() < needs {
                let who = format!("strategy `{}`", b.label);
                if let Some(e) = too_small(&group, needs, who, empty) {
                    return Err(e);
                }
                for s in &mut skipped[b.first..b.first + b.count] {
                    *s.entry(SkipReason::TOO_FEW_SAMPLES).or_default() += 1;
                }
                continue;
            }
            selections.clear();
            b.strategy
                .select(&group, &mut selections)
                .map_err(|source| RunError::Plugin {
                    plugin: format!("strategy `{}` on prompt `{}`", b.label, group.prompt.id),
                    source,
                })?;
            if selections.len() != b.count {
                return Err(RunError::Plugin {
                    plugin: format!("strategy `{}`", b.label),
                    source: sweetspot_core::PluginError::Input(format!(
                        "returned {} selections for {} datasets",
                        selections.len(),
                        b.count
                    )),
                });
            }
            for (j, sel) in selections.iter().enumerate() {
                let d = b.first + j;
                match sel {
                    Selection::Pair { chosen, rejected } => {
                        let (Some(c), Some(r)) =
                            (group.samples.get(*chosen), group.samples.get(*rejected))
                        else {
                            return Err(RunError::Plugin {
                                plugin: format!("strategy `{}`", b.label),
                                source: sweetspot_core::PluginError::Input(format!(
                                    "selected positions {chosen}/{rejected} outside a group of {}",
                                    group.samples.len()
                                )),
                            });
                        };
                        if !agree.is_empty() {
                            let agreeing = agree
                                .iter()
                                .filter(|&&m| {
                                    let v = &models[m];
                                    v[*chosen] > v[*rejected]
                                })
                                .count();
                            if agreeing < agree_min {
                                *dropped[d].entry(FILTER_AGREE.into()).or_default() += 1;
                                continue;
                            }
                        }
                        let margin = c.reward - r.reward;
                        if let Some(m) = job.min_margin
                            && margin < m
                        {
                            *dropped[d].entry(FILTER_MIN_MARGIN.into()).or_default() += 1;
                            continue;
                        }
                        if let Some(m) = job.min_margin_sigma {
                            let sigma = RewardStats::from_rewards(
                                group.first_n(b.own_n).iter().map(|s| s.reward),
                            )
                            .map_or(0.0, |s| s.std);
                            // A pair needs sigma > 0 (the strategies skip sigma = 0 groups).
                            let z = if sigma > 0.0 {
                                margin / sigma
                            } else {
                                f64::INFINITY
                            };
                            if z < m {
                                *dropped[d]
                                    .entry(FILTER_MIN_MARGIN_SIGMA.into())
                                    .or_default() += 1;
                                continue;
                            }
                        }
                        let unpaired = job.layout == PairsLayout::Unpaired;
                        if let Some(buf) = buffers[d].as_mut() {
                            let target = &targets[d];
                            let mut line = |v: &dyn erased::Line| -> Result<(), RunError> {
                                v.write_to(&mut buf.file).map_err(|e| temp_err(target, &e))
                            };
                            if unpaired {
                                line(&UnpairedRow::new(&group.prompt, c, true))?;
                                line(&UnpairedRow::new(&group.prompt, r, false))?;
                            } else {
                                line(&PairRow::new(&group.prompt.id, &group.prompt.content, c, r))?;
                            }
                            buf.margins.push(margin);
                        } else if unpaired {
                            let w = outputs.writer(d);
                            w.write(&UnpairedRow::new(&group.prompt, c, true))?;
                            w.write(&UnpairedRow::new(&group.prompt, r, false))?;
                            pairs[d] += 1;
                            rows[d] += 2;
                        } else {
                            let row = PairRow::new(&group.prompt.id, &group.prompt.content, c, r);
                            outputs.writer(d).write(&row)?;
                            pairs[d] += 1;
                            rows[d] += 1;
                        }
                    }
                    Selection::Skip(reason) => {
                        *skipped[d].entry(reason.clone()).or_default() += 1;
                    }
                }
            }
        }
    }
    let (reader, tail) = reader_thread
        .join()
        .map_err(|_| RunError::Config("the reader thread panicked".into()))?;
    tail?;
    progress.finish();
    if reader.rows_read() == 0 {
        return Err(RunError::Read(ReadError::Empty {
            path: job.input.clone(),
            what: "scored samples".into(),
        }));
    }

    // `top_fraction`: per dataset, the threshold from the margins, then the buffered rows copied.
    if let Some(fraction) = job.top_fraction {
        let per_pair = if job.layout == PairsLayout::Unpaired {
            2
        } else {
            1
        };
        for (d, buf) in buffers.iter_mut().enumerate() {
            let Some(buf) = buf.take() else { continue };
            let target = &targets[d];
            let m = buf.margins.len();
            let k = top_fraction_keeps(fraction, m);
            let mut sorted = buf.margins.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let threshold = if k == 0 { f64::INFINITY } else { sorted[k - 1] };
            drop(sorted);
            let above = buf.margins.iter().filter(|&&x| x > threshold).count();
            let mut ties = k - above;
            let mut tmp = buf.file.into_inner().map_err(|e| temp_err(target, &e))?;
            tmp.as_file_mut()
                .rewind()
                .map_err(|e| temp_err(target, &e))?;
            let mut lines = std::io::BufReader::new(tmp.as_file()).split(b'\n');
            for &margin in &buf.margins {
                // Above the k-th largest margin: kept; at it: kept in input order while k lasts.
                let keep = if margin > threshold {
                    true
                } else if margin == threshold && ties > 0 {
                    ties -= 1;
                    true
                } else {
                    false
                };
                for _ in 0..per_pair {
                    let line = lines
                        .next()
                        .ok_or_else(|| temp_err(target, &"ends early"))?
                        .map_err(|e| temp_err(target, &e))?;
                    if keep {
                        outputs.writer(d).write_json_line(&line)?;
                    }
                }
                if keep {
                    pairs[d] += 1;
                    rows[d] += per_pair;
                }
            }
            *dropped[d].entry(FILTER_TOP_FRACTION.into()).or_default() += (m - k) as u64;
        }
    }

    let datasets: Vec<DatasetSummary> = names
        .iter()
        .zip(&targets)
        .enumerate()
        .map(|(d, (name, file))| DatasetSummary {
            name: name.clone(),
            file: file.clone(),
            pairs: pairs[d],
            rows: rows[d],
            dropped: dropped[d].clone(),
            skipped: skipped[d]
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), *v))
                .collect(),
        })
        .collect();
    let mut summary = PairsSummary {
        input: job.input.clone(),
        input_layout: match reader.is_long() {
            Some(true) => "long".into(),
            Some(false) => "grouped".into(),
            None => "empty".into(),
        },
        input_passes: 1,
        layout: job.layout.as_str().into(),
        reward_models: job
            .rewards
            .iter()
            .map(|(name, file)| RewardInput {
                name: name.clone(),
                file: file.clone(),
            })
            .collect(),
        rank_by: job
            .rank_by
            .as_ref()
            .filter(|_| !job.rewards.is_empty())
            .map(RankBy::label),
        input_bytes_read: reader.bytes_read(),
        rows_read: reader.rows_read(),
        groups: reader.groups_read(),
        samples,
        empty_responses,
        datasets,
        summary_file: summary_file.clone(),
        seconds: 0.0,
    };
    summary.seconds = start.elapsed().as_secs_f64();
    let written = match &job.paths_relative_to {
        Some(base) => {
            let rel = |p: &Path| crate::paths::relative_to(p, base);
            let mut s = summary.clone();
            s.input = rel(&s.input);
            s.summary_file = rel(&s.summary_file);
            for d in &mut s.datasets {
                d.file = rel(&d.file);
            }
            for r in &mut s.reward_models {
                r.file = rel(&r.file);
            }
            s
        }
        None => summary.clone(),
    };
    let json = serde_json::to_vec_pretty(&written)
        .map_err(|e| RunError::Config(format!("cannot encode the summary: {e}")))?;
    outputs.add_file(summary_file, json);
    outputs.commit()?;
    if empty_responses > 0 {
        tracing::warn!(
            "{empty_responses} of {samples} samples have an empty response: left out (never \
             chosen or rejected); counted as `empty_responses` in {}",
            summary.summary_file.display()
        );
    }
    tracing::info!(
        groups = summary.groups,
        seconds = summary.seconds,
        "pairs written"
    );
    Ok(summary)
}

/// Creates `dir` and its missing parents, recording each folder created (outermost first).
fn create_dir(dir: &Path, created: &mut Vec<PathBuf>) -> Result<(), RunError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    created.extend(missing.into_iter().rev());
    std::fs::create_dir_all(dir).map_err(|source| {
        RunError::Write(sweetspot_io::WriteError::Io {
            path: dir.to_path_buf(),
            source,
        })
    })
}

mod erased {
    //! One row as a JSON line, behind a trait object (the buffer takes rows of either type).

    /// A row that writes itself as one JSON line.
    pub(super) trait Line {
        fn write_to(&self, w: &mut dyn std::io::Write) -> Result<(), String>;
    }

    impl<T: serde::Serialize> Line for T {
        fn write_to(&self, w: &mut dyn std::io::Write) -> Result<(), String> {
            serde_json::to_writer(&mut *w, self).map_err(|e| e.to_string())?;
            w.write_all(b"\n").map_err(|e| e.to_string())
        }
    }
}
