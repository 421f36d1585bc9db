//! The error every plugin returns.

use std::error::Error as StdError;

/// What went wrong inside a plugin. Opaque sources stay boxed so plugin crates keep their own
/// error enums.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin's recipe configuration is invalid (a bad value, not a parse error).
    #[error("invalid `{plugin}` configuration: {message}")]
    Config {
        /// The plugin's registered name.
        plugin: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The data handed to the plugin cannot be processed.
    #[error("{0}")]
    Input(String),
    /// A file the plugin reads or writes.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The user asked the run to stop.
    #[error("interrupted")]
    Interrupted,
    /// Anything else, from the plugin's own error type.
    #[error("{context}: {source}")]
    Other {
        /// What the plugin was doing.
        context: String,
        /// The plugin's own error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl PluginError {
    /// A configuration error for plugin `plugin`.
    pub fn config(plugin: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            plugin: plugin.into(),
            message: message.into(),
        }
    }

    /// Wrap a plugin crate's own error.
    pub fn other(
        context: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self::Other {
            context: context.into(),
            source: source.into(),
        }
    }
}
