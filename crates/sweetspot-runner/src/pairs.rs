//! The pairs stage: scored groups in, one preference dataset per strategy dataset out, in one
//! pass over the input.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sweetspot_core::recipe::{InputLayout, OnBadGroup, OutputFormat, PairsConfig};
use sweetspot_core::{BuildContext, PairStrategy, PairStrategyConfig, Selection, SkipReason};
use sweetspot_io::{OutputSet, PairRow, ReadError, ReadOptions, Record, RowWriter, ScoredReader};

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
        let input = pick(input, &cfg.input, "input")?;
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
    /// Pairs written.
    pub pairs: u64,
    /// Groups that gave no pair, by reason.
    pub skipped: BTreeMap<String, u64>,
}

/// The result of a pairs run (also written as JSON beside the outputs).
#[derive(Debug, Clone, Serialize)]
pub struct PairsSummary {
    /// The input.
    pub input: PathBuf,
    /// `long` or `grouped`.
    pub input_layout: String,
    /// Passes over the input: always 1.
    pub input_passes: u32,
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

struct Built {
    strategy: Box<dyn PairStrategy>,
    label: String,
    /// Index of the strategy's first dataset.
    first: usize,
    count: usize,
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
    if job.strategies.is_empty() {
        return Err(RunError::Config(
            "no strategies: add at least one [[pairs.strategies]] table".into(),
        ));
    }
    crate::paths::check_outputs(
        std::slice::from_ref(&job.input),
        std::slice::from_ref(&job.output),
    )?;
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
        });
        names.extend(datasets);
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
        outputs.add(RowWriter::pairs(target, format)?);
    }

    let mut reader = ScoredReader::open(
        &job.input,
        ReadOptions {
            layout: job.input_layout,
            on_invalid_reward: job.on_invalid_reward,
        },
    )?;
    tracing::info!(
        input = %job.input.display(),
        datasets = names.len(),
        "building pairs in one pass"
    );
    let progress = BarProgress::new("pairs", "bytes", job.quiet);
    sweetspot_core::Progress::set_total(&progress, Some(reader.progress().1));

    // Two-stage pipeline: one thread reads and parses, this one selects and writes. The channel
    // holds at most PIPELINE_GROUPS groups, so memory stays bounded.
    let (tx, rx) =
        std::sync::mpsc::sync_channel::<Result<(Record, Option<bool>), ReadError>>(PIPELINE_GROUPS);
    let bar = progress.clone();
    let reader_thread = std::thread::Builder::new()
        .name("sweetspot-read".into())
        .spawn(move || {
            let mut n = 0u32;
            while let Some(record) = reader.next() {
                let failed = record.is_err();
                let is_long = reader.is_long();
                if tx.send(record.map(|r| (r, is_long))).is_err() || failed {
                    break;
                }
                n += 1;
                if n.is_multiple_of(64) {
                    bar.set_position(reader.progress().0);
                }
            }
            reader
        })
        .map_err(|e| RunError::Config(format!("cannot start the reader thread: {e}")))?;

    let mut pairs = vec![0u64; names.len()];
    let mut skipped: Vec<BTreeMap<SkipReason, u64>> = vec![BTreeMap::new(); names.len()];
    let mut samples = 0u64;
    let mut empty_responses = 0u64;
    let mut selections = Vec::new();
    for message in rx.iter() {
        let (record, is_long) = message?;
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
        }
        samples += group.samples.len() as u64;
        // An empty response is never a pair's chosen or rejected: left out before selection,
        // and counted.
        let before = group.samples.len();
        group
            .samples
            .retain(|s| !s.sample.response.trim().is_empty());
        let empty = before - group.samples.len();
        empty_responses += empty as u64;
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
                        let row = PairRow::new(&group.prompt.id, &group.prompt.content, c, r);
                        outputs.writer(d).write(&row)?;
                        pairs[d] += 1;
                    }
                    Selection::Skip(reason) => {
                        *skipped[d].entry(reason.clone()).or_default() += 1;
                    }
                }
            }
        }
    }
    let reader = reader_thread
        .join()
        .map_err(|_| RunError::Config("the reader thread panicked".into()))?;
    progress.finish();
    if reader.rows_read() == 0 {
        return Err(RunError::Read(ReadError::Empty {
            path: job.input.clone(),
            what: "scored samples".into(),
        }));
    }

    let datasets: Vec<DatasetSummary> = names
        .iter()
        .zip(&targets)
        .enumerate()
        .map(|(d, (name, file))| DatasetSummary {
            name: name.clone(),
            file: file.clone(),
            pairs: pairs[d],
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
