//! Batched generation on the device: greedy or sampled (temperature, top-k, top-p, min-p,
//! repetition penalty), per-sequence stop, KV cache, finished rows dropped from the batch. Rows
//! with the same prompt (the n samples of a prompt) share one prefill: the prompt is run once and
//! its keys and values are copied to each of its rows. [`generate`] runs one static batch;
//! [`generate_continuous`] keeps a fixed number of rows busy, a waiting request taking the row of
//! one that stopped.
//!
//! Reproducibility: every sequence draws from its own ChaCha8 stream, one uniform per generated
//! token, seeded from one integer, the sequence's seed, so a sample does not depend on which other
//! sequences share its batch, nor on whether its prefill was shared. The sampler gives sample `i`
//! of a prompt the seed `prompt_seed(run seed, prompt id) + i` ([`sample_seed`]): the rule vLLM
//! uses for a request's `n` choices (child `i` of a request with `seed = s` gets `s + i`), so one
//! request per prompt with `seed = prompt_seed` and one request per sample ask for the same
//! samples, and `sweetspot serve` draws what the in-process sampler draws.
//!
//! One file per concern, everything re-exported here (`sweetspot_model::generate::X` is the path
//! to use):
//! - `sampling`: the rule, one row of logits to one token ([`SamplingParams`], [`penalize`],
//!   [`pick`], [`token_probabilities`]).
//! - `seed`: the seeds and random streams ([`prompt_seed`], [`sample_seed`],
//!   [`sequence_rng`]).
//! - `scheduler`: static and continuous batching ([`SeqRequest`], [`Generation`],
//!   [`BatchLimits`], [`generate`], [`generate_continuous`]).

mod sampling;
mod scheduler;
mod seed;

pub use sampling::{SamplingParams, penalize, pick, token_probabilities};
pub use scheduler::{
    BatchLimits, Generation, SeqRequest, generate, generate_continuous,
    generate_continuous_cancellable, generate_with,
};
pub use seed::{prompt_seed, sample_seed, sequence_rng};
