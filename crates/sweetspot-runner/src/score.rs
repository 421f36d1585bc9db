//! The score stage: samples in (the long layout `generate` writes), scored samples out (the long
//! layout `pairs` reads), through a reward-model plugin.
//!
//! Groups are handed to the reward model `groups_per_call` at a time (its samples are sorted by
//! length into batches together). Resumable: each call's scored rows are appended to
//! `<output>.partial` in one write, then `<output>.partial.progress` records, atomically, how
//! many groups and bytes are done. A killed run leaves both behind; the next run cuts the partial
//! file back to the recorded length, skips the recorded groups and goes on with the same call
//! boundaries, so a resumed run writes the same rows, bit for bit, as an uninterrupted one. The
//! output appears, by rename, only when every group is scored. Each call's groups are written in
//! the order they went in, whatever order the model answers in, and a group the model drops,
//! repeats or shortens stops the stage.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sweetspot_core::{BuildContext, PluginError, Progress, RewardModelConfig, ScoredGroup};
use sweetspot_io::{SampleReader, ScoredRow, WriteError};

use crate::error::RunError;
use crate::generate::partial_path;
use crate::identity::{
    Identity, Resume, Table, begin_file_stage, complete_file_stage, table_inputs,
};
use crate::progress::BarProgress;

/// Everything the score stage needs, paths resolved.
#[derive(Debug)]
pub struct ScoreJob {
    /// Samples (JSONL).
    pub input: PathBuf,
    /// Scored samples out (JSONL).
    pub output: PathBuf,
    /// The reward model.
    pub reward: Box<dyn RewardModelConfig>,
    /// Build context (device, seed, base folder).
    pub ctx: BuildContext,
    /// Groups per call to the reward model.
    pub groups_per_call: usize,
    /// Hide the progress bar.
    pub quiet: bool,
    /// Discard an earlier run's work (partial or complete) instead of refusing when the
    /// settings or inputs changed.
    pub restart: bool,
}

/// What a score run did.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreSummary {
    /// The output file.
    pub output: PathBuf,
    /// Prompt groups scored in all.
    pub groups: usize,
    /// Samples scored in all.
    pub samples: usize,
    /// Groups already done by an earlier, interrupted run.
    pub resumed_groups: usize,
    /// The reward model's objective names (empty for a scalar reward).
    pub objectives: Vec<String>,
    /// Wall time of this run, seconds.
    pub seconds: f64,
    /// The output was already complete, with the same settings and inputs: nothing ran.
    pub already_complete: bool,
}

/// How far an interrupted run got.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct Done {
    groups: usize,
    samples: usize,
    bytes: u64,
}

fn progress_path(output: &Path) -> PathBuf {
    let mut p = partial_path(output).into_os_string();
    p.push(".progress");
    PathBuf::from(p)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> RunError + '_ {
    move |source| {
        RunError::Write(WriteError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn recover(partial: &Path, progress: &Path) -> Result<Done, RunError> {
    let done = match std::fs::read_to_string(progress) {
        Ok(text) => serde_json::from_str::<Done>(&text).map_err(|e| {
            RunError::Config(format!(
                "{}: not a progress record ({e}); delete it and {} to start over",
                progress.display(),
                partial.display()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Done::default(),
        Err(e) => return Err(io_err(progress)(e)),
    };
    match std::fs::OpenOptions::new().write(true).open(partial) {
        Ok(f) => {
            let len = f.metadata().map_err(io_err(partial))?.len();
            if len < done.bytes {
                return Err(RunError::Config(format!(
                    "{}: shorter than its progress record says; delete it and {} to start over",
                    partial.display(),
                    progress.display()
                )));
            }
            // Drops whatever a killed run wrote after its last recorded call.
            f.set_len(done.bytes).map_err(io_err(partial))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if done.bytes > 0 {
                return Err(RunError::Config(format!(
                    "{} is missing but {} says {} groups are done; delete the latter to start over",
                    partial.display(),
                    progress.display(),
                    done.groups
                )));
            }
        }
        Err(e) => return Err(io_err(partial)(e)),
    }
    Ok(done)
}

/// Reads the whole input once before any scoring: checks every row and group, so bad input
/// stops the run before a model is loaded or a file is written, and counts the samples for the
/// progress bar.
fn check_input(path: &Path) -> Result<u64, RunError> {
    let mut samples = 0u64;
    for g in SampleReader::open(path)? {
        samples += g?.samples.len() as u64;
    }
    if samples == 0 {
        return Err(RunError::Read(sweetspot_io::ReadError::Empty {
            path: path.to_path_buf(),
            what: "samples".into(),
        }));
    }
    Ok(samples)
}

/// Runs the score stage.
pub fn run_score(job: ScoreJob) -> Result<ScoreSummary, RunError> {
    let start = Instant::now();
    if job.groups_per_call == 0 {
        return Err(RunError::Config(
            "[score]: `groups_per_call` must be at least 1".into(),
        ));
    }
    let reward_settings = Table::settings(job.reward.as_ref());
    let plugin_inputs = table_inputs("reward", job.reward.as_ref(), &job.ctx);
    let mut inputs = vec![job.input.clone()];
    inputs.extend(plugin_inputs.iter().map(|(_, p)| p.clone()));
    crate::paths::check_outputs(&inputs, std::slice::from_ref(&job.output))?;
    let total = check_input(&job.input)?;
    let mut identity = Identity::new(
        "score",
        &serde_json::json!({
            "reward": reward_settings,
            "groups_per_call": job.groups_per_call,
            "seed": job.ctx.seed,
        }),
    )
    .without_execution_settings("reward", job.reward.as_ref());
    identity.data_input("samples", &job.input)?;
    identity.model_inputs(&plugin_inputs)?;
    let mut reader = SampleReader::open(&job.input)?;
    let partial = partial_path(&job.output);
    let progress_file = progress_path(&job.output);
    let (resume, record) = begin_file_stage(
        &identity,
        &job.output,
        &[partial.clone(), progress_file.clone()],
        job.restart,
    )?;
    if resume == Resume::Complete {
        return Ok(ScoreSummary {
            output: job.output,
            groups: 0,
            samples: total as usize,
            resumed_groups: 0,
            objectives: Vec::new(),
            seconds: start.elapsed().as_secs_f64(),
            already_complete: true,
        });
    }
    let mut done = recover(&partial, &progress_file)?;
    let resumed = done.groups;
    // Skip the groups an earlier run finished (reading them still checks the input).
    for _ in 0..done.groups {
        if reader.next().transpose()?.is_none() {
            return Err(RunError::Config(format!(
                "{} records {} scored groups but {} has fewer; delete it and {} to start over",
                progress_file.display(),
                done.groups,
                job.input.display(),
                partial.display()
            )));
        }
    }
    if resumed > 0 {
        tracing::info!(groups = resumed, "resuming from {}", partial.display());
    }
    // Load the model before creating any file, so a bad model leaves nothing behind.
    let mut model = match job.reward.build(&job.ctx) {
        Ok(m) => m,
        Err(source) => {
            if done.groups == 0 {
                let _ = std::fs::remove_file(&record);
            }
            return Err(RunError::Plugin {
                plugin: "reward".into(),
                source,
            });
        }
    };
    let objectives = model.objectives();
    let fresh = done.groups == 0;
    let files = (partial.as_path(), progress_file.as_path());
    let result = score_into(&job, &mut reader, model.as_mut(), files, total, &mut done);
    if let Err(e) = result {
        if fresh {
            // Nothing from an earlier run is at stake: leave nothing behind.
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(&progress_file);
            let _ = std::fs::remove_file(&record);
        } else {
            tracing::warn!(
                "{} keeps the groups scored before the error; the next run resumes from it",
                partial.display()
            );
        }
        return Err(e);
    }
    complete_file_stage(&record, &identity, &job.output)?;
    Ok(ScoreSummary {
        output: job.output,
        groups: done.groups,
        samples: done.samples,
        resumed_groups: resumed,
        objectives,
        seconds: start.elapsed().as_secs_f64(),
        already_complete: false,
    })
}

fn score_into(
    job: &ScoreJob,
    reader: &mut SampleReader,
    model: &mut dyn sweetspot_core::RewardModel,
    (partial, progress_file): (&Path, &Path),
    total: u64,
    done: &mut Done,
) -> Result<(), RunError> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(partial)
        .map_err(io_err(partial))?;
    let bar = BarProgress::new("score", "samples", job.quiet);
    bar.set_total(Some(total));
    bar.advance(done.samples as u64);
    loop {
        let mut chunk = Vec::with_capacity(job.groups_per_call);
        for g in reader.by_ref().take(job.groups_per_call) {
            chunk.push(g?);
        }
        if chunk.is_empty() {
            break;
        }
        let groups = chunk.len();
        // The call's groups in the order they went in (a remote model answers in any order),
        // each exactly once, with as many samples as it had.
        let order: Vec<(String, usize)> = chunk
            .iter()
            .map(|g| (g.prompt.id.clone(), g.samples.len()))
            .collect();
        let mut rows: std::collections::HashMap<String, (usize, Vec<u8>)> = Default::default();
        let mut samples = 0;
        let mut sink = |group: ScoredGroup| -> Result<(), PluginError> {
            let mut out = Vec::new();
            for s in &group.samples {
                serde_json::to_writer(&mut out, &ScoredRow::new(&group.prompt, s))
                    .map_err(|e| PluginError::other("encoding a scored sample", e))?;
                out.push(b'\n');
            }
            samples += group.samples.len();
            let id = group.prompt.id.clone();
            if rows.insert(id, (group.samples.len(), out)).is_some() {
                return Err(PluginError::Input(format!(
                    "the reward model returned prompt `{}` twice",
                    group.prompt.id
                )));
            }
            Ok(())
        };
        model
            .score(chunk, &bar, &mut sink)
            .map_err(|source| RunError::Plugin {
                plugin: "reward".into(),
                source,
            })?;
        let mut buf = Vec::new();
        for (id, n) in &order {
            match rows.remove(id) {
                Some((k, out)) if k == *n => buf.extend_from_slice(&out),
                Some((k, _)) => {
                    return Err(RunError::Plugin {
                        plugin: "reward".into(),
                        source: PluginError::Input(format!(
                            "prompt `{id}`: {n} samples went in, the reward model returned {k}"
                        )),
                    });
                }
                None => {
                    return Err(RunError::Plugin {
                        plugin: "reward".into(),
                        source: PluginError::Input(format!(
                            "the reward model returned no scores for prompt `{id}`"
                        )),
                    });
                }
            }
        }
        if let Some(id) = rows.keys().next() {
            return Err(RunError::Plugin {
                plugin: "reward".into(),
                source: PluginError::Input(format!(
                    "the reward model returned prompt `{id}`, which was not asked"
                )),
            });
        }
        // The rows first, then the record that counts them: a kill between the two re-scores
        // this call on resume.
        file.write_all(&buf)
            .and_then(|_| file.sync_data())
            .map_err(io_err(partial))?;
        done.groups += groups;
        done.samples += samples;
        done.bytes += buf.len() as u64;
        let record = serde_json::to_vec(&*done).unwrap_or_default();
        sweetspot_io::write_atomic(progress_file, &record)?;
    }
    bar.finish();
    file.sync_all().map_err(io_err(partial))?;
    drop(file);
    std::fs::rename(partial, &job.output).map_err(io_err(&job.output))?;
    match std::fs::remove_file(progress_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_err(progress_file)(e));
        }
        _ => {}
    }
    Ok(())
}
