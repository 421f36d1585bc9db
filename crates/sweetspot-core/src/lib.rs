//! sweetspot-core: the data model, the four plugin traits, the plugin registry and the recipe
//! schema of sweetspot, and [`atomic`], the one atomic file writer the other crates share.
//!
//! Everything else in the workspace (readers and writers, the model code, the trainer, the runner,
//! the CLI and every plugin) builds on the types here. This crate compiles no burn backend: the one
//! trait that touches tensors, [`PreferenceLoss`], uses burn's backend-free tensor API, whose
//! tensors carry a runtime [`burn::tensor::Device`].
//!
//! Invariants:
//! - Groups handed to a plugin hold their samples sorted by strictly increasing sample index.
//! - Rewards inside a [`ScoredGroup`] are finite.
//! - No plugin trait has a backend type parameter; every trait is object safe.

pub mod atomic;
pub mod error;
pub mod model;
pub mod pair_row;
pub mod plugin;
pub mod points;
pub mod recipe;
pub mod registry;
pub mod rows;
pub mod stats;

pub use error::{
    ConfigIssue, PluginError, check_device_name, check_penalties, check_quantize, check_sampling,
};
pub use model::{
    FinishReason, Message, PreferencePair, Prompt, PromptContent, Sample, SampleGroup, ScoredGroup,
    ScoredSample,
};
pub use pair_row::{Completion, PairRow};
pub use plugin::{
    BuildContext, EXECUTION_SETTINGS, InferenceMemory, LossInput, LossOutput, NoProgress,
    PairStrategy, PairStrategyConfig, PluginInput, PreferenceLoss, PreferenceLossConfig, Progress,
    RewardModel, RewardModelConfig, SampleRequest, Sampler, SamplerConfig, Selection, SkipReason,
    declared_inputs, inputs_in_settings, settings_json,
};
pub use points::Point;
pub use recipe::{Precision, Quantize};
pub use registry::{PluginInfo, PluginKind};
pub use rows::Rows;
pub use stats::RewardStats;
/// Registers a plugin (see [`registry`]).
pub use sweetspot_macros::plugin;

/// Re-exported so that plugin crates can name the exact burn version the traits use.
pub use burn;
/// Re-exported for `inventory::submit!` in plugin crates.
pub use inventory;
