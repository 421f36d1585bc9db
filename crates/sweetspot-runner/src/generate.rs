//! The generate stage: prompts in, n samples per prompt out (long layout, no reward yet).
//!
//! Resumable: groups are appended whole to `<output>.partial` as the sampler finishes them. A
//! killed run leaves that file behind; the next run keeps its complete groups (dropping a torn
//! last line or a group cut short), skips those prompts, and appends the rest. Sampling depends
//! only on (seed, prompt id, sample index), so a resumed run writes the same rows as an
//! uninterrupted one. The output appears, by rename, only when every prompt is done, its groups
//! in the prompts' order (a fleet answers in any order; the file does not depend on it).

/// Prompts handed to the sampler in one call (checkpointed after each call).
pub const PROMPTS_PER_CALL: usize = 8;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sweetspot_core::{BuildContext, PluginError, Progress, SampleRequest, SamplerConfig};
use sweetspot_io::{SampleRow, WriteError, read_prompts_at};

use crate::error::RunError;
use crate::identity::{
    Identity, Resume, Table, begin_file_stage, complete_file_stage, table_inputs,
};
use crate::progress::BarProgress;

/// Everything the generate stage needs, paths resolved.
#[derive(Debug)]
pub struct GenerateJob {
    /// Prompts (JSONL).
    pub prompts: PathBuf,
    /// Samples out (JSONL).
    pub output: PathBuf,
    /// Samples per prompt.
    pub n: usize,
    /// The sampler.
    pub sampler: Box<dyn SamplerConfig>,
    /// Build context (device, seed, base folder).
    pub ctx: BuildContext,
    /// Prompts handed to the sampler per call.
    pub prompts_per_call: usize,
    /// Hide the progress bar.
    pub quiet: bool,
    /// Discard an earlier run's work (partial or complete) instead of refusing when the
    /// settings or inputs changed.
    pub restart: bool,
}

/// What a generate run did.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateSummary {
    /// The output file.
    pub output: PathBuf,
    /// Prompts in the input.
    pub prompts: usize,
    /// Prompts already done by an earlier, interrupted run.
    pub resumed_prompts: usize,
    /// Samples written in all.
    pub samples: usize,
    /// Wall time of this run, seconds.
    pub seconds: f64,
    /// The output was already complete, with the same settings and inputs: nothing ran.
    pub already_complete: bool,
}

/// `<output>.partial`.
pub fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> RunError + '_ {
    move |source| {
        RunError::Write(WriteError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Keeps the complete groups of an interrupted run's partial file; returns their prompt ids.
fn recover(partial: &Path, n: usize) -> Result<(HashSet<String>, usize), RunError> {
    let file = match std::fs::File::open(partial) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((HashSet::new(), 0)),
        Err(e) => return Err(io_err(partial)(e)),
    };
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut order = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        // A torn last line (the run was killed mid-write) does not parse: stop there.
        let Ok(row) = serde_json::from_str::<SampleRow>(&line) else {
            break;
        };
        let id = row.sample.prompt_id;
        if !groups.contains_key(&id) {
            order.push(id.clone());
        }
        groups.entry(id).or_default().push(line);
    }
    let mut kept = String::new();
    let mut done = HashSet::new();
    let mut rows = 0;
    for id in order {
        let lines = &groups[&id];
        if lines.len() == n {
            for l in lines {
                kept.push_str(l);
                kept.push('\n');
            }
            rows += n;
            done.insert(id);
        }
    }
    sweetspot_io::write_atomic(partial, kept.as_bytes())?;
    Ok((done, rows))
}

/// Writes the partial file's rows to `output` with the groups in `order` (prompt ids), through a
/// temporary file and a rename, then removes the partial file. Streams: only each group's byte
/// ranges are held. A kill in between leaves the partial file whole, and a rerun finishes here.
fn finish_in_prompt_order(partial: &Path, output: &Path, order: &[&str]) -> Result<(), RunError> {
    use std::io::{Read, Seek, SeekFrom};
    #[derive(serde::Deserialize)]
    struct Id {
        prompt_id: String,
    }
    let file = std::fs::File::open(partial).map_err(io_err(partial))?;
    let mut reader = std::io::BufReader::new(&file);
    let mut spans: std::collections::HashMap<String, Vec<(u64, u64)>> = Default::default();
    let mut line = Vec::new();
    let mut at = 0u64;
    let mut last: Option<String> = None;
    loop {
        line.clear();
        let len = reader
            .read_until(b'\n', &mut line)
            .map_err(io_err(partial))? as u64;
        if len == 0 {
            break;
        }
        let id = serde_json::from_slice::<Id>(&line)
            .map_err(|e| {
                RunError::Config(format!(
                    "{}: a row that does not parse: {e}",
                    partial.display()
                ))
            })?
            .prompt_id;
        let ranges = spans.entry(id.clone()).or_default();
        match ranges.last_mut() {
            // The next row of the same group: extend its range.
            Some(r) if last.as_deref() == Some(id.as_str()) && r.1 == at => r.1 += len,
            _ => ranges.push((at, at + len)),
        }
        last = Some(id);
        at += len;
    }
    let mut tmp_name = output.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".ordering");
    let tmp = output.with_file_name(tmp_name);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io_err(&tmp))?);
    let mut src = &file;
    for id in order {
        for &(start, end) in spans.get(*id).map(Vec::as_slice).unwrap_or(&[]) {
            src.seek(SeekFrom::Start(start)).map_err(io_err(partial))?;
            std::io::copy(&mut src.take(end - start), &mut out).map_err(io_err(&tmp))?;
        }
    }
    let out = out.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
    out.sync_all().map_err(io_err(&tmp))?;
    drop(out);
    std::fs::rename(&tmp, output).map_err(io_err(output))?;
    std::fs::remove_file(partial).map_err(io_err(partial))?;
    Ok(())
}

/// Runs the generate stage.
pub fn run_generate(job: GenerateJob) -> Result<GenerateSummary, RunError> {
    let start = Instant::now();
    if job.n == 0 {
        return Err(RunError::Config(
            "[generate]: `n` must be at least 1".into(),
        ));
    }
    let sampler_settings = Table::settings(job.sampler.as_ref());
    let plugin_inputs = table_inputs("sampler", job.sampler.as_ref(), &job.ctx);
    let mut inputs = vec![job.prompts.clone()];
    inputs.extend(plugin_inputs.iter().map(|(_, p)| p.clone()));
    crate::paths::check_outputs(&inputs, std::slice::from_ref(&job.output))?;
    let at_lines = read_prompts_at(&job.prompts)?;
    // Before any model loads: a prompt the model cannot take is named by file and line.
    let prompts: Vec<_> = at_lines.iter().map(|(p, _)| p.clone()).collect();
    if let Err((i, message)) = job.sampler.check_prompts(&job.ctx, &prompts) {
        return Err(RunError::Read(sweetspot_io::ReadError::Row {
            path: job.prompts.clone(),
            at: sweetspot_io::Position::Line(at_lines.get(i).map_or(0, |a| a.1)),
            field: Some("prompt".into()),
            message,
        }));
    }
    if prompts.is_empty() {
        return Err(RunError::Read(sweetspot_io::ReadError::Empty {
            path: job.prompts.clone(),
            what: "prompts".into(),
        }));
    }
    let mut identity = Identity::new(
        "generate",
        &serde_json::json!({
            "sampler": sampler_settings,
            "n": job.n,
            "seed": job.ctx.seed,
        }),
    )
    .without_execution_settings("sampler", job.sampler.as_ref());
    identity.data_input("prompts", &job.prompts)?;
    identity.model_inputs(&plugin_inputs)?;
    let partial = partial_path(&job.output);
    let (resume, record) = begin_file_stage(
        &identity,
        &job.output,
        std::slice::from_ref(&partial),
        job.restart,
    )?;
    if resume == Resume::Complete {
        return Ok(GenerateSummary {
            output: job.output,
            prompts: prompts.len(),
            resumed_prompts: prompts.len(),
            samples: prompts.len() * job.n,
            seconds: start.elapsed().as_secs_f64(),
            already_complete: true,
        });
    }
    let (done, mut written) = recover(&partial, job.n)?;
    let todo: Vec<_> = prompts
        .iter()
        .filter(|p| !done.contains(&p.id))
        .cloned()
        .collect();
    if !done.is_empty() {
        tracing::info!(
            done = done.len(),
            left = todo.len(),
            "resuming from {}",
            partial.display()
        );
    }
    // Load the model before creating the partial file, so a bad model leaves no output behind
    // (the record of a fresh run goes too).
    let mut sampler = if todo.is_empty() {
        None
    } else {
        match job.sampler.build(&job.ctx) {
            Ok(s) => Some(s),
            Err(source) => {
                if !partial.exists() {
                    let _ = std::fs::remove_file(&record);
                }
                return Err(RunError::Plugin {
                    plugin: "sampler".into(),
                    source,
                });
            }
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .map_err(io_err(&partial))?;
    if let Some(sampler) = sampler.as_mut() {
        let progress = BarProgress::new("generate", "sequences", job.quiet);
        progress.set_total(Some((todo.len() * job.n) as u64));
        let request = SampleRequest {
            n: job.n,
            seed: job.ctx.seed,
            first_index: 0,
        };
        for chunk in todo.chunks(job.prompts_per_call.max(1)) {
            let mut sink = |group: sweetspot_core::SampleGroup| -> Result<(), PluginError> {
                let mut buf = Vec::new();
                for s in &group.samples {
                    serde_json::to_writer(&mut buf, &SampleRow::new(&group.prompt, s))
                        .map_err(|e| PluginError::other("encoding a sample", e))?;
                    buf.push(b'\n');
                }
                // One write per group, so a kill leaves whole groups and at most one torn one.
                file.write_all(&buf)
                    .and_then(|_| file.flush())
                    .map_err(|source| PluginError::Io {
                        path: partial.clone(),
                        source,
                    })?;
                written += group.samples.len();
                Ok(())
            };
            sampler
                .sample(chunk, &request, &progress, &mut sink)
                .map_err(|source| RunError::Plugin {
                    plugin: "sampler".into(),
                    source,
                })?;
        }
        progress.finish();
    }
    file.sync_all().map_err(io_err(&partial))?;
    drop(file);
    let order: Vec<&str> = prompts.iter().map(|p| p.id.as_str()).collect();
    finish_in_prompt_order(&partial, &job.output, &order)?;
    complete_file_stage(&record, &identity, &job.output)?;
    Ok(GenerateSummary {
        output: job.output,
        prompts: prompts.len(),
        resumed_prompts: done.len(),
        samples: written,
        seconds: start.elapsed().as_secs_f64(),
        already_complete: false,
    })
}
