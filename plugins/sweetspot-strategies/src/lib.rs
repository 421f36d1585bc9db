//! The pair strategies of "Finding the Sweet Spot" (Xiao et al. 2025).
//!
//! Selection rule, per prompt: mu = mean of the rewards, sigma = their population standard
//! deviation. Point `min` = lowest reward, `max` = highest, a number k = the sample whose reward
//! is nearest to mu + k * sigma; every tie goes to the lowest sample index. A pair is skipped when
//! sigma = 0, when chosen and rejected are the same sample, or when the chosen reward is not
//! strictly higher.
//!
//! Every strategy takes an optional `n`: only the first n samples of each group (by sample index)
//! are used, which is how the paper scales n from one pool of samples.

mod grid;
mod max_min;
mod min_of_k;
mod sigma;

pub use grid::Grid;
pub use max_min::MaxMin;
pub use min_of_k::{MaxOfNMinOfK, Subset};
pub use sigma::Sigma;

use sweetspot_core::{Point, RewardStats, ScoredGroup, ScoredSample, Selection};

/// Call from a binary to make sure this crate is linked (and its plugins registered).
#[inline(never)]
pub fn link() {
    std::hint::black_box(());
}

/// Suffix `_n{n}` for datasets built from the first n samples.
fn with_n(name: String, n: Option<usize>) -> String {
    match n {
        Some(n) => format!("{name}_n{n}"),
        None => name,
    }
}

/// The fewest samples a group needs: two for a pair, or `n` when only the first n are used.
fn min_samples(n: Option<usize>) -> usize {
    n.unwrap_or(2).max(2)
}

/// The samples, rewards and statistics a strategy works on.
struct View<'a> {
    samples: &'a [ScoredSample],
    rewards: Vec<f64>,
    stats: RewardStats,
}

impl<'a> View<'a> {
    fn new(group: &'a ScoredGroup, n: Option<usize>) -> Option<Self> {
        let samples = group.first_n(n);
        let rewards: Vec<f64> = samples.iter().map(|s| s.reward).collect();
        let stats = RewardStats::from_rewards(rewards.iter().copied())?;
        Some(Self {
            samples,
            rewards,
            stats,
        })
    }

    fn point(&self, p: Point) -> usize {
        p.select(&self.rewards, &self.stats).unwrap_or(0)
    }

    fn checked(&self, chosen: usize, rejected: usize) -> Selection {
        Selection::checked(&self.rewards, self.stats.std, chosen, rejected)
    }
}

fn check_n(plugin: &str, n: Option<usize>) -> Result<(), sweetspot_core::PluginError> {
    match n {
        Some(n) if n < 2 => Err(sweetspot_core::PluginError::config(
            plugin,
            format!("`n` = {n}: a pair needs at least 2 samples"),
        )),
        _ => Ok(()),
    }
}

/// The name of the response at `point` of a group cut to its first `n` samples, for
/// [`PairStrategy::responses`](sweetspot_core::PairStrategy::responses).
pub(crate) fn response_name(point: &str, n: Option<usize>) -> String {
    match n {
        Some(n) => format!("{point}@{n}"),
        None => point.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use sweetspot_core::{Prompt, PromptContent, Sample, ScoredGroup, ScoredSample};

    pub fn group(rewards: &[f64]) -> ScoredGroup {
        ScoredGroup {
            prompt: Prompt::from_content(PromptContent::Text("q".into())),
            samples: rewards
                .iter()
                .enumerate()
                .map(|(i, &r)| ScoredSample {
                    sample: Sample {
                        prompt_id: "p".into(),
                        sample_index: i as u32,
                        response: format!("r{i}"),
                        token_count: None,
                        finish_reason: None,
                        logprob: None,
                    },
                    reward: r,
                    objective_rewards: None,
                })
                .collect(),
        }
    }
}
