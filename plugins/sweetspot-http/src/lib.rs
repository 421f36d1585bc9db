//! sweetspot plugins that drive serving engines over HTTP, so sampling and scoring scale past one
//! machine:
//!
//! - `openai` (Sampler): OpenAI-compatible `/v1/completions` (or chat) on vLLM, SGLang or
//!   `sweetspot serve`, prompts rendered here and sent as token ids, a seed per sample.
//! - `http` (RewardModel): a `/classify` endpoint in vLLM's or SGLang's shape.
//!
//! Both spread requests over a list of endpoints, each with its own concurrency limit, retry
//! connection errors, timeouts, cut answers, 429s and 5xx with backoff and jitter, and stop with
//! a record of every attempt when one request gives up. A group reaches the stage's resumable
//! output once all its answers are in, so a killed run re-asks only unfinished groups.

pub mod batch;
pub mod openai;
pub mod pool;
pub mod reward;

pub use openai::{Api, OpenAiSampler, OpenAiSamplerConfig, Requests};
pub use reward::{ClassifyApi, HttpReward, HttpRewardConfig};

/// Call from a binary to make sure this crate is linked (and its plugins registered).
#[inline(never)]
pub fn link() {
    std::hint::black_box(());
}
