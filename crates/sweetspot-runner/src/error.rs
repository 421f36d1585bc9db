use std::path::PathBuf;

use sweetspot_core::PluginError;
use sweetspot_core::recipe::RecipeError;
use sweetspot_io::{ReadError, WriteError};

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The recipe cannot be read.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// An input cannot be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// An output cannot be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A plugin failed.
    #[error("{plugin}: {source}")]
    Plugin {
        /// Which plugin (`pair strategy #1`, say).
        plugin: String,
        /// Its error.
        #[source]
        source: PluginError,
    },
    /// The stage's settings do not fit together.
    #[error("{0}")]
    Config(String),
    /// Training failed.
    #[error("train: {0}")]
    Train(#[from] sweetspot_train::TrainError),
    /// A group with fewer samples than a strategy needs.
    #[error(transparent)]
    SmallGroup(Box<SmallGroupError>),
}

impl RunError {
    /// The process exit code for this error: 2 for recipes and settings, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Recipe(_) | Self::Config(_) => 2,
            _ => 1,
        }
    }
}

/// A group with fewer samples than a strategy needs.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}:{}: {}prompt `{prompt_id}` has {has} samples{} but {strategy} needs {needs} \
     (set on_small_group = \"skip\" to skip such groups)",
    path.display(),
    at.number(),
    field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default(),
    match empty {
        0 => String::new(),
        1 => " with a response (1 more has an empty one, which is never chosen or rejected)".into(),
        e => format!(" with a response ({e} more have an empty one, which is never chosen or rejected)"),
    }
)]
pub struct SmallGroupError {
    /// The input.
    pub path: PathBuf,
    /// The line or row where the group starts.
    pub at: sweetspot_io::Position,
    /// The field that holds the samples, in the grouped layout.
    pub field: Option<String>,
    /// The prompt.
    pub prompt_id: String,
    /// Samples in the group.
    pub has: usize,
    /// Samples the strategy needs.
    pub needs: usize,
    /// The strategy's datasets.
    pub strategy: String,
    /// Samples of the group left out for an empty response.
    pub empty: usize,
}
