//! Atomic writers: every output goes to a temporary file beside its target, and all of a run's
//! outputs are renamed into place together in [`OutputSet::commit`]. The temporary files and the
//! single-file [`write_atomic`] are sweetspot-core's ([`sweetspot_core::atomic`]), shared with the
//! model crate.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde::Serialize;
use sweetspot_core::atomic::{TEMP_PREFIX, TEMP_SUFFIX, temp_file_for, write_temp};
use sweetspot_core::recipe::OutputFormat;
use tempfile::NamedTempFile;

use crate::PARQUET_ROW_GROUP_ROWS;
use crate::error::WriteError;

/// Writes rows of one serializable type to one file, as JSONL or Parquet.
pub struct RowWriter {
    target: PathBuf,
    inner: Inner,
    rows: u64,
}

enum Inner {
    Jsonl(BufWriter<NamedTempFile>),
    Parquet {
        decoder: Box<arrow_json::reader::Decoder>,
        writer: Box<ArrowWriter<NamedTempFile>>,
        pending: usize,
    },
}

impl std::fmt::Debug for RowWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowWriter")
            .field("target", &self.target)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

fn message_list() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(Fields::from(vec![
            Field::new("content", DataType::Utf8, false),
            Field::new("role", DataType::Utf8, false),
        ])),
        true,
    )))
}

/// The Arrow schema of [`crate::PairRow`] (TRL's conversational preference format).
pub fn pair_schema() -> Schema {
    Schema::new(vec![
        Field::new("prompt", message_list(), false),
        Field::new("chosen", message_list(), false),
        Field::new("rejected", message_list(), false),
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("chosen_index", DataType::Int64, false),
        Field::new("rejected_index", DataType::Int64, false),
        Field::new("score_chosen", DataType::Float64, false),
        Field::new("score_rejected", DataType::Float64, false),
    ])
}

/// The Arrow schema of [`crate::UnpairedRow`] (TRL's unpaired preference format).
pub fn unpaired_schema() -> Schema {
    Schema::new(vec![
        Field::new("prompt", message_list(), false),
        Field::new("completion", message_list(), false),
        Field::new("label", DataType::Boolean, false),
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("sample_index", DataType::Int64, false),
        Field::new("reward", DataType::Float64, false),
    ])
}

/// The Arrow schema of [`crate::ListwiseRow`].
pub fn listwise_schema() -> Schema {
    Schema::new(vec![
        Field::new("prompt", message_list(), false),
        Field::new(
            "completions",
            DataType::List(Arc::new(Field::new("item", message_list(), true))),
            false,
        ),
        Field::new(
            "rewards",
            DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
            false,
        ),
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new(
            "sample_indices",
            DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
            false,
        ),
    ])
}

impl RowWriter {
    /// A writer of preference pairs to `target` (created in [`OutputSet::commit`]).
    pub fn pairs(target: &Path, format: OutputFormat) -> Result<Self, WriteError> {
        Self::new(target, format, pair_schema())
    }

    /// A writer of unpaired rows ([`crate::UnpairedRow`]) to `target`.
    pub fn unpaired(target: &Path, format: OutputFormat) -> Result<Self, WriteError> {
        Self::new(target, format, unpaired_schema())
    }

    /// A writer of listwise rows ([`crate::ListwiseRow`]) to `target`.
    pub fn listwise(target: &Path, format: OutputFormat) -> Result<Self, WriteError> {
        Self::new(target, format, listwise_schema())
    }

    /// Writes one row given as one line of JSON text (no newline), as this writer's own
    /// [`RowWriter::write`] wrote it: copied as it is to JSONL, decoded by Arrow's JSON reader
    /// (exact for numbers) for Parquet.
    pub fn write_json_line(&mut self, line: &[u8]) -> Result<(), WriteError> {
        let target = &self.target;
        let enc = |e: &dyn std::fmt::Display| WriteError::Encode {
            path: target.clone(),
            message: e.to_string(),
        };
        match &mut self.inner {
            Inner::Jsonl(w) => {
                w.write_all(line)
                    .and_then(|()| w.write_all(b"\n"))
                    .map_err(|source| WriteError::Io {
                        path: target.clone(),
                        source,
                    })?;
            }
            Inner::Parquet {
                decoder,
                writer,
                pending,
            } => {
                let mut rest = line;
                loop {
                    let used = decoder.decode(rest).map_err(|e| enc(&e))?;
                    rest = &rest[used..];
                    if rest.is_empty() {
                        break;
                    }
                    // The decoder's batch is full: write it out and go on.
                    if let Some(batch) = decoder.flush().map_err(|e| enc(&e))? {
                        writer.write(&batch).map_err(|e| enc(&e))?;
                    }
                    *pending = 0;
                }
                // A row ends at the line's end.
                decoder.decode(b"\n").map_err(|e| enc(&e))?;
                *pending += 1;
                if *pending >= PARQUET_ROW_GROUP_ROWS {
                    if let Some(batch) = decoder.flush().map_err(|e| enc(&e))? {
                        writer.write(&batch).map_err(|e| enc(&e))?;
                    }
                    *pending = 0;
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// A writer of rows with Arrow schema `schema` (used for Parquet only).
    pub fn new(target: &Path, format: OutputFormat, schema: Schema) -> Result<Self, WriteError> {
        let tmp = temp_file_for(target)?;
        let enc = |e: &dyn std::fmt::Display| WriteError::Encode {
            path: target.to_path_buf(),
            message: e.to_string(),
        };
        let inner = match format {
            OutputFormat::Jsonl => Inner::Jsonl(BufWriter::with_capacity(1 << 16, tmp)),
            OutputFormat::Parquet => {
                let schema = Arc::new(schema);
                let decoder = arrow_json::ReaderBuilder::new(schema.clone())
                    .with_batch_size(PARQUET_ROW_GROUP_ROWS)
                    .build_decoder()
                    .map_err(|e| enc(&e))?;
                let props = WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP_ROWS))
                    .build();
                let writer = ArrowWriter::try_new(tmp, schema, Some(props)).map_err(|e| enc(&e))?;
                Inner::Parquet {
                    decoder: Box::new(decoder),
                    writer: Box::new(writer),
                    pending: 0,
                }
            }
        };
        Ok(Self {
            target: target.to_path_buf(),
            inner,
            rows: 0,
        })
    }

    /// The file this writer will become.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes one row.
    pub fn write<T: Serialize>(&mut self, row: &T) -> Result<(), WriteError> {
        let target = &self.target;
        let enc = |e: &dyn std::fmt::Display| WriteError::Encode {
            path: target.clone(),
            message: e.to_string(),
        };
        match &mut self.inner {
            Inner::Jsonl(w) => {
                serde_json::to_writer(&mut *w, row).map_err(|e| enc(&e))?;
                w.write_all(b"\n").map_err(|source| WriteError::Io {
                    path: target.clone(),
                    source,
                })?;
            }
            Inner::Parquet {
                decoder,
                writer,
                pending,
            } => {
                decoder
                    .serialize(std::slice::from_ref(row))
                    .map_err(|e| enc(&e))?;
                *pending += 1;
                if *pending >= PARQUET_ROW_GROUP_ROWS {
                    if let Some(batch) = decoder.flush().map_err(|e| enc(&e))? {
                        writer.write(&batch).map_err(|e| enc(&e))?;
                    }
                    *pending = 0;
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Flushes everything into the temporary file and returns it.
    fn finish(self) -> Result<(PathBuf, NamedTempFile), WriteError> {
        let target = self.target;
        let enc = |e: &dyn std::fmt::Display| WriteError::Encode {
            path: target.clone(),
            message: e.to_string(),
        };
        let io = |source| WriteError::Io {
            path: target.clone(),
            source,
        };
        let tmp = match self.inner {
            Inner::Jsonl(w) => {
                let tmp = w.into_inner().map_err(|e| io(e.into_error()))?;
                tmp.as_file().sync_all().map_err(io)?;
                tmp
            }
            Inner::Parquet {
                mut decoder,
                mut writer,
                ..
            } => {
                if let Some(batch) = decoder.flush().map_err(|e| enc(&e))? {
                    writer.write(&batch).map_err(|e| enc(&e))?;
                }
                let tmp = writer.into_inner().map_err(|e| enc(&e))?;
                tmp.as_file().sync_all().map_err(io)?;
                tmp
            }
        };
        Ok((target, tmp))
    }
}

/// A run's outputs: nothing appears at the targets until [`OutputSet::commit`]; dropping the set
/// uncommitted removes every temporary file.
#[derive(Debug, Default)]
pub struct OutputSet {
    writers: Vec<RowWriter>,
    extra: Vec<(PathBuf, Vec<u8>)>,
}

impl OutputSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a writer; returns its index for [`OutputSet::writer`].
    pub fn add(&mut self, writer: RowWriter) -> usize {
        self.writers.push(writer);
        self.writers.len() - 1
    }

    /// The writer at `index`.
    pub fn writer(&mut self, index: usize) -> &mut RowWriter {
        &mut self.writers[index]
    }

    /// The writers, in the order added.
    pub fn writers(&self) -> &[RowWriter] {
        &self.writers
    }

    /// A small file written whole at commit (a summary, say).
    pub fn add_file(&mut self, target: PathBuf, contents: Vec<u8>) {
        self.extra.push((target, contents));
    }

    /// Finishes every file and renames each into place.
    pub fn commit(self) -> Result<Vec<PathBuf>, WriteError> {
        let mut ready = Vec::with_capacity(self.writers.len() + self.extra.len());
        for w in self.writers {
            ready.push(w.finish()?);
        }
        for (target, contents) in self.extra {
            ready.push((target.clone(), write_temp(&target, &contents)?));
        }
        let mut done = Vec::with_capacity(ready.len());
        for (target, tmp) in ready {
            tmp.persist(&target).map_err(|e| WriteError::Io {
                path: target.clone(),
                source: e.error,
            })?;
            done.push(target);
        }
        Ok(done)
    }
}

/// Writes `contents` to `target` atomically (temporary file, then rename): sweetspot-core's
/// [`sweetspot_core::atomic::write_atomic`], its error as a [`WriteError::Io`] naming `target`.
pub fn write_atomic(target: &Path, contents: &[u8]) -> Result<(), WriteError> {
    Ok(sweetspot_core::atomic::write_atomic(target, contents)?)
}

/// Removes the temporary files a killed sweetspot process left in `dir`: those named as
/// [`sweetspot_core::atomic`] names them (`.sweetspot-<pid>-<random>.tmp`; a folder so named is
/// removed whole) whose process is gone (on Linux, no `/proc/<pid>`; elsewhere, untouched for a
/// day). Returns how many were removed.
pub fn remove_stale_temp_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
            continue;
        };
        if !name.ends_with(TEMP_SUFFIX) {
            continue;
        }
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let stale = match pid {
            Some(p) if p == me => false,
            Some(p) if cfg!(target_os = "linux") => {
                !Path::new("/proc").join(p.to_string()).exists()
            }
            _ => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 86_400),
        };
        if !stale {
            continue;
        }
        let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
        if gone.is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "removed temporary files of a killed run in {}",
            dir.display()
        );
    }
    removed
}

#[allow(dead_code)]
fn _assert_send(_: &File) {}
