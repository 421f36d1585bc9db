//! Seeds and random streams: which uniform draws each sequence gets.
//!
//! Invariants:
//! - Every sequence draws from its own ChaCha8 stream ([`sequence_rng`]), one uniform per
//!   generated token, seeded from one integer, the sequence's seed: a sample does not depend on
//!   which other sequences share its batch, nor on whether its prefill was shared.
//! - Sample `i` of a prompt has the seed `prompt_seed(run seed, prompt id) + i`
//!   ([`sample_seed`]), vLLM's rule for a request's `n` choices, and every seed stays below 2^63.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// The first sample's seed of prompt `prompt_id` in a run seeded `run_seed`: 62 bits of SHA-256
/// of the two, so adding any sample index stays below 2^63 (a non-negative signed 64-bit integer,
/// which every OpenAI-compatible server takes as a `seed`).
pub fn prompt_seed(run_seed: u64, prompt_id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"sweetspot/prompt-seed/v1");
    h.update(run_seed.to_le_bytes());
    h.update((prompt_id.len() as u64).to_le_bytes());
    h.update(prompt_id.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_le_bytes(first) >> 2
}

/// The seed of sample `sample_index` of a prompt: [`prompt_seed`] plus the index.
pub fn sample_seed(run_seed: u64, prompt_id: &str, sample_index: u32) -> u64 {
    prompt_seed(run_seed, prompt_id) + u64::from(sample_index)
}

/// The random stream of the sequence seeded `seed`.
pub fn sequence_rng(seed: u64) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"sweetspot/sample/v2");
    h.update(seed.to_le_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;

    #[test]
    fn streams_depend_on_their_key_only() {
        let a: u64 = sequence_rng(sample_seed(1, "p", 3)).random();
        assert_eq!(a, sequence_rng(sample_seed(1, "p", 3)).random::<u64>());
        assert_ne!(a, sequence_rng(sample_seed(1, "p", 4)).random::<u64>());
        assert_ne!(a, sequence_rng(sample_seed(2, "p", 3)).random::<u64>());
        assert_ne!(a, sequence_rng(sample_seed(1, "q", 3)).random::<u64>());
        // vLLM's rule for a request's n choices: sample i is the prompt's seed plus i.
        assert_eq!(sample_seed(7, "p", 5), prompt_seed(7, "p") + 5);
        assert!(sample_seed(7, "p", u32::MAX) < 1 << 63);
    }
}
