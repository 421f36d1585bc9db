//! sweetspot-io: scored samples in, preference pairs out, as JSONL or Parquet.
//!
//! Invariants:
//! - Reading streams: memory holds one group (plus Parquet's current record batch of at most
//!   [`PARQUET_BATCH_ROWS`] rows) and an 8-byte fingerprint per prompt id seen, never the file.
//! - Every input problem is a [`ReadError`] naming the file, the line (JSONL) or row (Parquet),
//!   and the field.
//! - Writers write to temporary files beside their targets and rename them into place only in
//!   [`OutputSet::commit`]; dropped uncommitted, they leave nothing behind.

mod error;
mod parquet_in;
mod prompts;
mod read;
mod rows;
mod write;

pub use error::{Position, ReadError, WriteError};
pub use prompts::{SampleReader, SampleRow, read_prompts, read_prompts_at};
pub use read::{InputKind, ReadOptions, Record, ScoredReader};
pub use rows::{ListwiseRow, PairRow, ScoredRow, UnpairedRow};
pub use write::{
    OutputSet, RowWriter, listwise_schema, pair_schema, remove_stale_temp_files, unpaired_schema,
    write_atomic,
};

/// Rows per Parquet record batch read at a time.
pub const PARQUET_BATCH_ROWS: usize = 1024;
/// Rows per Parquet row group written (and so buffered in memory per output file).
pub const PARQUET_ROW_GROUP_ROWS: usize = 4096;
