//! What the handlers share.

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
    pub(crate) faults: Option<crate::faults::Faults>,
}
