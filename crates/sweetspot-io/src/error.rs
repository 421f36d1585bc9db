use std::fmt;
use std::path::PathBuf;

/// Where in an input file: a JSONL line or a Parquet row, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A line of a JSONL file.
    Line(u64),
    /// A row of a Parquet file.
    Row(u64),
}

impl Position {
    /// The 1-based line or row number.
    pub fn number(&self) -> u64 {
        match self {
            Self::Line(n) | Self::Row(n) => *n,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Line(n) => write!(f, "line {n}"),
            Self::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// An input that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A Parquet file that cannot be decoded.
    #[error("{}: not a readable Parquet file: {message}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The Parquet reader's message.
        message: String,
    },
    /// A bad row: not JSON, a missing field, a value of the wrong type, a non-finite reward.
    #[error("{}:{}: {}{message}", path.display(), match at { Position::Line(n) | Position::Row(n) => n }, field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    Row {
        /// The file.
        path: PathBuf,
        /// The line or row.
        at: Position,
        /// The field, when one is to blame.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A file with no rows at all: every command refuses it rather than write empty outputs.
    #[error("{}: the file has no {what} (it is empty or only blank lines)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// What it should hold (`prompts`, `samples`, `scored samples`, `pairs`).
        what: String,
    },
    /// Rows that do not form valid groups (a prompt's long-form rows split apart, a sample index
    /// twice, a prompt id twice).
    #[error("{}:{}: {message}", path.display(), match at { Position::Line(n) | Position::Row(n) => n })]
    Group {
        /// The file.
        path: PathBuf,
        /// The line or row where the problem shows.
        at: Position,
        /// What is wrong.
        message: String,
    },
}

impl ReadError {
    /// The line or row, when the error has one.
    pub fn position(&self) -> Option<Position> {
        match self {
            Self::Row { at, .. } | Self::Group { at, .. } => Some(*at),
            _ => None,
        }
    }

    /// The field to blame, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Row { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}

/// An output that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A file or folder that cannot be created, written or renamed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The Parquet or Arrow writer failed.
    #[error("{}: {message}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// The encoder's message.
        message: String,
    },
}

impl From<sweetspot_core::atomic::FileError> for WriteError {
    fn from(e: sweetspot_core::atomic::FileError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}
