//! Parquet input: record batches are turned into JSON rows (arrow-json), so Parquet and JSONL go
//! through one row parser with one set of checks and messages.

use std::fs::File;
use std::path::Path;

use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::PARQUET_BATCH_ROWS;
use crate::error::{Position, ReadError};

pub(crate) struct ParquetLines {
    reader: ParquetRecordBatchReader,
    /// The current batch as JSON lines.
    buf: Vec<u8>,
    offset: usize,
    row: u64,
    total: u64,
    bytes: u64,
    done: bool,
}

/// Runs `f`, turning a panic inside the parquet and arrow crates into an error: on some corrupt
/// pages (lengths that disagree with the buffers) they assert instead of returning one, and a
/// bad file must give a clean error naming it, never bring the process down.
fn guarded<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, ReadError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        ReadError::Parquet {
            path: path.to_path_buf(),
            message: format!("corrupt data: the Parquet decoder failed ({why})"),
        }
    })
}

impl ParquetLines {
    pub(crate) fn open(path: &Path, file: File) -> Result<Self, ReadError> {
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let err = |e: parquet::errors::ParquetError| ReadError::Parquet {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let (reader, total) = guarded(path, || {
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(err)?;
            let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
            let reader = builder
                .with_batch_size(PARQUET_BATCH_ROWS)
                .build()
                .map_err(err)?;
            Ok::<_, ReadError>((reader, total))
        })??;
        Ok(Self {
            reader,
            buf: Vec::new(),
            offset: 0,
            row: 0,
            total,
            bytes,
            done: false,
        })
    }

    pub(crate) fn total_rows(&self) -> u64 {
        self.total
    }

    pub(crate) fn rows_read(&self) -> u64 {
        self.row
    }

    pub(crate) fn bytes(&self) -> u64 {
        if self.done { self.bytes } else { 0 }
    }

    pub(crate) fn next_row(
        &mut self,
        path: &Path,
    ) -> Option<Result<(Position, String), ReadError>> {
        while self.offset >= self.buf.len() {
            if self.done {
                return None;
            }
            let batch = match guarded(path, || self.reader.next()) {
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Ok(Some(Ok(b))) => b,
                Ok(Some(Err(e))) => {
                    self.done = true;
                    return Some(Err(ReadError::Parquet {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    }));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            self.buf.clear();
            self.offset = 0;
            let buf = &mut self.buf;
            let written = guarded(path, || {
                let mut writer = arrow_json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow_json::writer::LineDelimited>(buf);
                writer.write(&batch).and_then(|_| writer.finish())
            });
            let failed = match written {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(ReadError::Parquet {
                    path: path.to_path_buf(),
                    message: format!("cannot convert rows: {e}"),
                }),
                Err(e) => Some(e),
            };
            if let Some(e) = failed {
                self.done = true;
                return Some(Err(e));
            }
        }
        let rest = &self.buf[self.offset..];
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.offset += end + 1;
        self.row += 1;
        Some(Ok((Position::Row(self.row), line)))
    }
}
