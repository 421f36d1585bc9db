//! What a stage is making, so that a rerun resumes only the same thing.
//!
//! A resumable stage writes a record beside its output (`<output>.record.json`; the train stage
//! `<output folder>/record.json`) before it writes anything else: the stage's resolved settings
//! and a fingerprint of each input. A rerun computes the same record and compares:
//!
//! - same identity, partial output present: resume;
//! - same identity, output complete (and unchanged since): "already complete", nothing runs;
//! - different identity while a partial or complete output exists: refused, naming every setting
//!   and input that changed, unless the user asks to start over (`--restart`).
//!
//! Fingerprints: a data file (prompts, samples, pairs) is hashed whole (SHA-256 of its bytes).
//! A model file or folder is hashed by the content of its small files (config, tokenizer, chat
//! template: under [`SMALL_FILE`] bytes) and the name, size and modification time of its large
//! ones (weights): hashing gigabytes of weights on every run would cost more than it protects,
//! and a changed checkpoint changes its size or time.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use sweetspot_core::{BuildContext, RewardModelConfig, SamplerConfig};

use crate::error::RunError;

/// The execution settings a sampler or reward model has unless it lists its own (see
/// [`Table::execution_settings`]).
pub use sweetspot_core::EXECUTION_SETTINGS;

/// Bumped when a stage computes something else from the same settings and inputs (a model,
/// tokenizer or sampler fix): run-graph nodes and single-stage outputs made before are then not
/// reused or resumed. 2: GGUF tokenizers built as transformers 5 builds them (split regex by
/// `tokenizer.ggml.pre`, BOS/EOS flags), Qwen and RoPE families. 3: a sample's random stream is
/// seeded by `prompt_seed(run seed, prompt id) + sample index` (vLLM's rule for `n` choices),
/// and a draw with neither top-k nor top-p walks the vocabulary in id order (no sort per token).
/// 4: f32 attention on the CPU through sweetspot's own kernel and training log-probabilities
/// through `token_logprob` (the same values to float rounding, not the same bits). 5: a model
/// folder's `generation_config.json` end tokens stop a response, and its sampling settings fill
/// the ones a recipe leaves unset; RoPE tables reach the declared context.
pub const COMPUTATION: u32 = 5;

/// Files up to this size are hashed by content inside a model fingerprint.
pub const SMALL_FILE: u64 = 16 << 20;

/// A stage's identity: its settings and the fingerprints of its inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The stage (`generate`, `score`, `train`).
    pub stage: String,
    /// Resolved settings, as dotted keys (`sampler.temperature`) with JSON values.
    pub settings: BTreeMap<String, serde_json::Value>,
    /// Input name (a path, or a setting that names one) -> fingerprint.
    pub inputs: BTreeMap<String, String>,
}

/// The record written beside an output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// What is (being) made.
    pub identity: Identity,
    /// Set when the output is complete: its fingerprint then.
    #[serde(default)]
    pub complete: Option<String>,
    /// The sweetspot version that wrote it (informational).
    #[serde(default)]
    pub version: String,
}

impl Identity {
    /// A new identity of `stage` with `settings` (any serializable value, flattened to dotted
    /// keys).
    pub fn new(stage: &str, settings: &serde_json::Value) -> Self {
        let mut flat = BTreeMap::new();
        flatten("", settings, &mut flat);
        // An output made by a build that computes otherwise is not resumed as this one's.
        flat.insert("computation".into(), serde_json::json!(COMPUTATION));
        Self {
            stage: stage.to_string(),
            settings: flat,
            inputs: BTreeMap::new(),
        }
    }

    /// Drops the execution settings `table` names (under `<name>.`): they change how the work
    /// is done, not what it computes (a sample or a score does not depend on its batch or
    /// device beyond float rounding), so a run killed for lack of memory may resume with a
    /// smaller batch, or on another machine.
    pub fn without_execution_settings<T: Table + ?Sized>(mut self, name: &str, table: &T) -> Self {
        for key in table.execution_settings() {
            self.settings.remove(&format!("{name}.{key}"));
        }
        self
    }

    /// Adds a data file's fingerprint (SHA-256 of its content).
    pub fn data_input(&mut self, name: &str, path: &Path) -> Result<(), RunError> {
        self.inputs.insert(name.to_string(), hash_file(path)?);
        Ok(())
    }

    /// Adds a model file or folder's fingerprint (see the module docs).
    pub fn model_input(&mut self, name: &str, path: &Path) -> Result<(), RunError> {
        self.inputs
            .insert(name.to_string(), model_fingerprint(path)?);
        Ok(())
    }

    /// Adds each (setting, path) of [`table_inputs`] as a model input.
    pub fn model_inputs(&mut self, paths: &[(String, PathBuf)]) -> Result<(), RunError> {
        for (key, path) in paths {
            self.model_input(key, path)?;
        }
        Ok(())
    }

    /// What differs from `old`, in words, one item per changed setting or input.
    pub fn changes_from(&self, old: &Identity) -> Vec<String> {
        let mut out = Vec::new();
        let keys: std::collections::BTreeSet<&String> =
            self.settings.keys().chain(old.settings.keys()).collect();
        for k in keys {
            // A setting that names an input (`sampler.model`) is a path: what it names is
            // compared through the input's fingerprint, so a moved run folder or model resumes.
            if self.inputs.contains_key(k) || old.inputs.contains_key(k) {
                continue;
            }
            let (a, b) = (old.settings.get(k), self.settings.get(k));
            if a != b {
                let show = |v: Option<&serde_json::Value>| {
                    v.map_or_else(|| "(unset)".to_string(), |v| v.to_string())
                };
                out.push(format!("`{k}` was {} and is now {}", show(a), show(b)));
            }
        }
        let keys: std::collections::BTreeSet<&String> =
            self.inputs.keys().chain(old.inputs.keys()).collect();
        for k in keys {
            match (old.inputs.get(k), self.inputs.get(k)) {
                (Some(a), Some(b)) if a != b => out.push(format!(
                    "input `{k}` has changed (its content or files differ)"
                )),
                (None, Some(_)) => out.push(format!("input `{k}` is new")),
                (Some(_), None) => out.push(format!("input `{k}` is no longer used")),
                _ => {}
            }
        }
        if self.stage != old.stage {
            out.push(format!("stage was {} and is now {}", old.stage, self.stage));
        }
        out
    }
}

/// What the runner asks a sampler or reward table, whichever kind: the settings a node's
/// identity hashes, the files it reads and its execution settings. Implemented for both trait
/// objects, so that every stage treats the two alike and never reads a setting by name.
pub trait Table {
    /// The table's settings with its `type`, as the identity hashes them.
    fn settings(&self) -> serde_json::Value;
    /// The files and folders it reads (see [`sweetspot_core::SamplerConfig::inputs`]).
    fn inputs(&self, ctx: &BuildContext) -> Vec<sweetspot_core::PluginInput>;
    /// Its execution settings.
    fn execution_settings(&self) -> &'static [&'static str];
}

impl Table for dyn SamplerConfig {
    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn inputs(&self, ctx: &BuildContext) -> Vec<sweetspot_core::PluginInput> {
        SamplerConfig::inputs(self, ctx)
    }
    fn execution_settings(&self) -> &'static [&'static str] {
        SamplerConfig::execution_settings(self)
    }
}

impl Table for dyn RewardModelConfig {
    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn inputs(&self, ctx: &BuildContext) -> Vec<sweetspot_core::PluginInput> {
        RewardModelConfig::inputs(self, ctx)
    }
    fn execution_settings(&self) -> &'static [&'static str] {
        RewardModelConfig::execution_settings(self)
    }
}

/// The files the table `name` reads that exist, as (dotted key, path resolved with `ctx`),
/// sorted: each is an input to fingerprint, and one no output may overwrite. (One that does not
/// exist is the plugin's `check` to report, by its key.)
pub fn table_inputs<T: Table + ?Sized>(
    name: &str,
    table: &T,
    ctx: &BuildContext,
) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = table
        .inputs(ctx)
        .into_iter()
        .map(|i| (format!("{name}.{}", i.key), ctx.resolve(&i.path)))
        .filter(|(_, p)| p.exists())
        .collect();
    out.sort();
    out
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> RunError + '_ {
    move |source| {
        RunError::Read(sweetspot_io::ReadError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// SHA-256 of a file's bytes, as `sha256:<hex>`.
pub fn hash_file(path: &Path) -> Result<String, RunError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A model file or folder's fingerprint (see the module docs).
pub fn model_fingerprint(path: &Path) -> Result<String, RunError> {
    let mut hasher = Sha256::new();
    let mut files = Vec::new();
    if path.is_dir() {
        collect_files(path, path, &mut files)?;
    } else {
        files.push((PathBuf::new(), path.to_path_buf()));
    }
    files.sort();
    for (rel, file) in files {
        let meta = std::fs::metadata(&file).map_err(io_err(&file))?;
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0]);
        if meta.len() <= SMALL_FILE {
            hasher.update(hash_file(&file)?.as_bytes());
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            hasher.update(format!("size {} mtime {mtime}", meta.len()).as_bytes());
        }
        hasher.update([0]);
    }
    // A PEFT adapter folder: its base is part of the model.
    if path.is_dir()
        && sweetspot_model::lora::is_adapter_folder(path)
        && let Ok(folder) = sweetspot_model::lora::AdapterFolder::read(path)
        && folder.base != path
    {
        hasher.update(b"base ");
        hasher.update(model_fingerprint(&folder.base)?.as_bytes());
    }
    Ok(format!("model:{}", hex(&hasher.finalize())))
}

fn collect_files(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), RunError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name();
        // Hidden files and sweetspot's own leftovers are not part of a model.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            out.push((rel, path));
        }
    }
    Ok(())
}

/// What a stage should do with an earlier run's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Nothing to resume: start.
    Fresh,
    /// Same identity, partial work present: go on from it.
    Continue,
    /// Same identity, output complete and unchanged: nothing to do.
    Complete,
}

/// Compares `identity` with the record at `record_path`, for an output at `output` (a file or
/// folder) with partial work `partial_exists`. Refuses a different identity while partial or
/// complete work exists, unless `restart`; writes the record when the stage is to run.
pub fn reconcile(
    identity: &Identity,
    record_path: &Path,
    output: &Path,
    output_fingerprint: impl Fn() -> Result<Option<String>, RunError>,
    partial_exists: bool,
    restart: bool,
) -> Result<Resume, RunError> {
    let old: Option<Record> = match std::fs::read(record_path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
            RunError::Config(format!(
                "{}: not a sweetspot record ({e}); delete it, or pass --restart to start over",
                record_path.display()
            ))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(record_path)(e)),
    };
    let fresh = |restart_note: bool| -> Result<Resume, RunError> {
        if restart_note {
            tracing::warn!(
                "--restart: discarding the earlier run's work at {}",
                output.display()
            );
        }
        write_record(record_path, identity, None)?;
        Ok(Resume::Fresh)
    };
    let Some(old) = old else {
        if partial_exists && !restart {
            return Err(RunError::Config(format!(
                "{} holds partial work with no record of what made it ({} is missing), so it \
                 cannot be resumed safely; pass --restart to discard it and start over",
                output.display(),
                record_path.display()
            )));
        }
        // The complete output (a file; train: its policy) with nothing saying what made it.
        if !partial_exists && output_fingerprint()?.is_some() {
            tracing::warn!(
                "{} exists with no record of what made it ({} is missing): it will be replaced",
                output.display(),
                record_path.display()
            );
        }
        return fresh(partial_exists);
    };
    let changes = identity.changes_from(&old.identity);
    if changes.is_empty() {
        if let Some(done) = &old.complete {
            if output_fingerprint()?.as_deref() == Some(done.as_str()) && !restart {
                return Ok(Resume::Complete);
            }
            if !restart {
                tracing::warn!(
                    "{} changed or disappeared since it was completed: making it again",
                    output.display()
                );
            }
            return fresh(false);
        }
        if restart {
            return fresh(partial_exists);
        }
        return Ok(if partial_exists {
            Resume::Continue
        } else {
            Resume::Fresh
        });
    }
    let has_work = partial_exists || old.complete.is_some() && output.exists();
    if has_work && !restart {
        let what = if old.complete.is_some() {
            "a complete output made"
        } else {
            "partial work of a run"
        };
        return Err(RunError::Config(format!(
            "{} holds {what} with other settings or inputs; refusing to {} it:\n  - {}\n\
             (pass --restart to discard it and start over, or choose another output)",
            output.display(),
            if old.complete.is_some() {
                "replace"
            } else {
                "resume"
            },
            changes.join("\n  - ")
        )));
    }
    fresh(has_work)
}

/// Prepares a stage that writes one output file with its partial files beside it: creates the
/// output's folder, removes a killed process's stale temporary files there, reconciles the
/// identity with `<output>.record.json` (see [`reconcile`]) and, when the stage starts afresh,
/// removes the `partials` of earlier work. Returns what to do and the record's path.
pub fn begin_file_stage(
    identity: &Identity,
    output: &Path,
    partials: &[PathBuf],
    restart: bool,
) -> Result<(Resume, PathBuf), RunError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| {
            RunError::Write(sweetspot_io::WriteError::Io {
                path: path.clone(),
                source,
            })
        }
    };
    if let Some(dir) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        sweetspot_io::remove_stale_temp_files(dir);
    }
    let record = record_path(output);
    let fingerprint = || {
        if output.is_file() {
            hash_file(output).map(Some)
        } else {
            Ok(None)
        }
    };
    let partial_exists = partials.iter().any(|p| p.exists());
    let resume = reconcile(
        identity,
        &record,
        output,
        fingerprint,
        partial_exists,
        restart,
    )?;
    if resume == Resume::Fresh {
        for p in partials {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(p)(e)),
                _ => {}
            }
        }
    }
    Ok((resume, record))
}

/// Writes the record of a finished output file (its content hash as the fingerprint).
pub fn complete_file_stage(
    record: &Path,
    identity: &Identity,
    output: &Path,
) -> Result<(), RunError> {
    write_record(record, identity, Some(hash_file(output)?))
}

/// Writes the record (`complete`: the output's fingerprint once it is done), atomically.
pub fn write_record(
    path: &Path,
    identity: &Identity,
    complete: Option<String>,
) -> Result<(), RunError> {
    let record = Record {
        identity: identity.clone(),
        complete,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let text = serde_json::to_vec_pretty(&record).unwrap_or_default();
    sweetspot_io::write_atomic(path, &text)?;
    Ok(())
}

/// `<output>.record.json`.
pub fn record_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".record.json");
    output.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEFT adapter folder's fingerprint covers the base it names: another base, another
    /// model.
    #[test]
    fn an_adapter_folders_fingerprint_covers_its_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("config.json"), "{\"a\": 1}").unwrap();
        let adapter = dir.path().join("adapter");
        std::fs::create_dir_all(&adapter).unwrap();
        std::fs::write(
            adapter.join("adapter_config.json"),
            serde_json::json!({
                "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
                "base_model_name_or_path": "../base",
            })
            .to_string(),
        )
        .unwrap();
        let before = model_fingerprint(&adapter).unwrap();
        assert_eq!(before, model_fingerprint(&adapter).unwrap());
        std::fs::write(base.join("config.json"), "{\"a\": 2}").unwrap();
        assert_ne!(before, model_fingerprint(&adapter).unwrap());
    }

    #[test]
    fn changes_name_the_settings_and_inputs() {
        let mut a = Identity::new(
            "generate",
            &serde_json::json!({"sampler": {"temperature": 0.8, "top_p": 1.0}, "n": 4}),
        );
        let mut b = Identity::new(
            "generate",
            &serde_json::json!({"sampler": {"temperature": 0.0, "top_p": 1.0}, "n": 4}),
        );
        a.inputs.insert("prompts".into(), "sha256:aa".into());
        b.inputs.insert("prompts".into(), "sha256:bb".into());
        let c = b.changes_from(&a);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].contains("sampler.temperature") && c[0].contains("0.8"));
        assert!(c[1].contains("input `prompts` has changed"));
        assert!(a.changes_from(&a).is_empty());
    }
}
