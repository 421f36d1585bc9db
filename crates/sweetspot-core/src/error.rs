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

/// A configuration value that [`check`](crate::plugin::SamplerConfig::check) refuses: the key
/// (relative to the plugin's table, such as `temperature`) and what is wrong with it. The
/// recipe checker turns it into an error naming the recipe file, line and full key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {message}")]
pub struct ConfigIssue {
    /// The key, relative to the plugin's table.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// The key names an input file that does not exist (an I/O error rather than a bad value).
    pub missing_file: bool,
}

impl ConfigIssue {
    /// An issue with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            missing_file: false,
        }
    }

    /// `key` names `path`, which does not exist.
    pub fn missing_file(key: impl Into<String>, path: &std::path::Path) -> Self {
        Self {
            key: key.into(),
            message: format!("{} does not exist", path.display()),
            missing_file: true,
        }
    }

    /// From a plugin's `build` error: the key is the first `backticked` word of a
    /// configuration message (plugins name their keys that way), else the table itself.
    pub fn from_build_error(e: &PluginError) -> Self {
        let message = match e {
            PluginError::Config { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let key = message
            .split('`')
            .nth(1)
            .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || c == '_'))
            .unwrap_or("")
            .to_string();
        Self {
            key,
            message,
            missing_file: false,
        }
    }
}

/// Checks a sampler's temperature (a number >= 0; 0 is greedy), top-p (in (0, 1]; 1 is off) and
/// `max_new_tokens` (at least 1), naming the key at fault.
pub fn check_sampling(
    temperature: f32,
    top_p: f32,
    max_new_tokens: usize,
) -> Result<(), ConfigIssue> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(ConfigIssue::new(
            "temperature",
            format!("{temperature} must be a number >= 0 (0 = greedy)"),
        ));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ConfigIssue::new(
            "top_p",
            format!("{top_p} must be in (0, 1] (1 = off)"),
        ));
    }
    if max_new_tokens == 0 {
        return Err(ConfigIssue::new("max_new_tokens", "must be at least 1"));
    }
    Ok(())
}

/// Checks the optional logit processors a sampler may take: `repetition_penalty` > 0 (1 = off)
/// and `min_p` in [0, 1] (0 = off), as transformers and vLLM accept them.
pub fn check_penalties(
    repetition_penalty: Option<f32>,
    min_p: Option<f32>,
) -> Result<(), ConfigIssue> {
    if let Some(r) = repetition_penalty
        && !(r.is_finite() && r > 0.0)
    {
        return Err(ConfigIssue::new(
            "repetition_penalty",
            format!("{r} must be a number > 0 (1 = off)"),
        ));
    }
    if let Some(m) = min_p
        && !(0.0..=1.0).contains(&m)
    {
        return Err(ConfigIssue::new(
            "min_p",
            format!("{m} must be in [0, 1] (0 = off)"),
        ));
    }
    Ok(())
}

/// Checks a device name's syntax (`cpu`, `wgpu`, `wgpu:cpu`, `wgpu:N`, `cuda`, `cuda:N`)
/// without needing its backend compiled in.
pub fn check_device_name(name: &str) -> Result<(), String> {
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => (k, Some(i)),
        None => (name, None),
    };
    let ok = match (kind, index) {
        ("cpu" | "flex", None) => true,
        ("wgpu" | "gpu", None) => true,
        ("wgpu" | "gpu", Some(i)) => i == "cpu" || i.parse::<usize>().is_ok(),
        ("cuda", None) => true,
        ("cuda", Some(i)) => i.parse::<usize>().is_ok(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "unknown device `{name}`: use cpu, wgpu, wgpu:cpu, wgpu:N, cuda or cuda:N"
        ))
    }
}

/// A `quantize` setting that cannot run, refused by key: 8 bits take f32 weights on the CPU.
pub fn check_quantize(
    quantize: Option<crate::recipe::Quantize>,
    dtype: crate::recipe::Precision,
    device: &str,
) -> Result<(), ConfigIssue> {
    let Some(q) = quantize else { return Ok(()) };
    if dtype != crate::recipe::Precision::F32 {
        return Err(ConfigIssue::new(
            "quantize",
            format!("\"{q}\" takes f32 weights; remove `dtype = \"{dtype}\"` or `quantize`"),
        ));
    }
    if !matches!(device, "cpu" | "flex") {
        return Err(ConfigIssue::new(
            "quantize",
            format!("\"{q}\" runs on the CPU only; the device is `{device}`"),
        ));
    }
    Ok(())
}
