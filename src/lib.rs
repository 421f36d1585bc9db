//! sweetspot: on-policy preference data for LLM alignment.
//!
//! Alignment researchers sample n responses per prompt from a policy, score them with a reward
//! model, turn each prompt's scored group into a chosen/rejected pair and train the policy with
//! DPO. "Finding the Sweet Spot" (Xiao et al. 2025) shows that max-vs-min pairs get worse as n
//! grows, that a rejected response at mu - 2 sigma works best, and that a cheap proxy (rejected =
//! min of 5 samples, chosen = max of all n) keeps improving with n.
//!
//! This crate is the facade over the workspace's crates:
//!
//! - [`core`]: the data model, the four plugin traits, the registry and the recipe schema.
//! - [`io`]: JSONL and Parquet readers and writers.
//! - [`runner`]: recipe stages, streaming, progress, summaries.
//! - [`cli`]: the command line as a library.
//! - [`strategies`]: the built-in pair strategies.

pub use sweetspot_cli as cli;
pub use sweetspot_core as core;
pub use sweetspot_io as io;
pub use sweetspot_runner as runner;
pub use sweetspot_strategies as strategies;
