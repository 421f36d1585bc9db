use std::path::PathBuf;

/// Errors of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is not a usable Llama-family configuration.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// Weights that do not fit the model.
    #[error("{}: {message}", path.display())]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A device that is unknown or not compiled in.
    #[error("{0}")]
    Device(String),
    /// Bad input to the model (an empty batch, too long a sequence).
    #[error("{0}")]
    Input(String),
}

impl From<sweetspot_core::atomic::FileError> for ModelError {
    fn from(e: sweetspot_core::atomic::FileError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}
