//! sweetspot-runner: turns a recipe into stages and runs them, streaming group by group.
//!
//! Invariants:
//! - A stage reads its input once, front to back, and holds one group (score: one call's
//!   groups) at a time.
//! - A stage's outputs appear all together, only when the stage succeeds (see
//!   [`sweetspot_io::OutputSet`]); a failed stage leaves no output file behind.
//! - Every error names the file and, for data, the line or row and field.

pub mod cluster;
mod error;
pub mod eval;
mod generate;
pub mod graph;
pub mod identity;
pub mod memory;
mod pairs;
pub mod paths;
pub mod plan;
pub mod progress;
pub mod resolve;
mod score;
mod stats;
mod train;
pub mod trl;
pub mod validate;
pub mod winrate;

pub use error::{RunError, SmallGroupError};
pub use generate::{GenerateJob, GenerateSummary, PROMPTS_PER_CALL, partial_path, run_generate};
pub use pairs::{DatasetSummary, PairsJob, PairsSummary, run_pairs};
pub use progress::BarProgress;
pub use score::{ScoreJob, ScoreSummary, run_score};
pub use stats::{DatasetStats, dataset_stats};
pub use sweetspot_train::run::TrainSummary;
pub use train::{Reference, run_train, run_train_with};
pub use validate::{Invalid, RecipeSource, Stages, validate_for_plan, validate_recipe};
