//! What the handlers share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use crate::engine::{GenJob, PolicyInfo, RewardInfo, ScoreJob};

/// The served reward model.
pub(crate) struct RewardState {
    pub(crate) name: String,
    pub(crate) info: RewardInfo,
    pub(crate) vocab: usize,
    pub(crate) jobs: mpsc::Sender<ScoreJob>,
}

/// The server's state.
pub(crate) struct AppState {
    /// The policy's served name (`/v1/models`, the `model` field).
    pub(crate) name: String,
    pub(crate) started: u64,
    pub(crate) policy: PolicyInfo,
    pub(crate) vocab: usize,
    pub(crate) generate: mpsc::Sender<GenJob>,
    pub(crate) reward: Option<RewardState>,
    /// The API key, when one is required. Never logged.
    pub(crate) api_key: Option<String>,
    pub(crate) limits: Limits,
}

/// What one request, and all in flight together, may ask for.
pub(crate) struct Limits {
    /// Sequences (prompts x n) per request.
    pub(crate) max_sequences: usize,
    /// Tokens (sequences x (prompt + max_tokens)) per request.
    pub(crate) max_tokens: usize,
    /// Tokens of all requests in flight together (beyond: 429).
    pub(crate) max_in_flight_tokens: usize,
    pub(crate) in_flight_tokens: AtomicU64,
}

/// Tokens reserved for a request in flight, given back when it ends (or its client goes).
pub(crate) struct Reservation<'a> {
    limits: &'a Limits,
    tokens: u64,
}

impl Limits {
    /// Reserves `tokens`, or None when that would pass the in-flight cap.
    pub(crate) fn reserve(&self, tokens: usize) -> Option<Reservation<'_>> {
        let tokens = tokens as u64;
        let cap = self.max_in_flight_tokens as u64;
        self.in_flight_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                now.checked_add(tokens).filter(|&t| t <= cap)
            })
            .ok()
            .map(|_| Reservation {
                limits: self,
                tokens,
            })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.limits
            .in_flight_tokens
            .fetch_sub(self.tokens, Ordering::AcqRel);
    }
}
