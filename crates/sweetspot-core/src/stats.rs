//! Per-group reward statistics.

use serde::{Deserialize, Serialize};

/// Reward statistics of one group: count, mean, population standard deviation (ddof = 0),
/// minimum and maximum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardStats {
    /// Number of rewards.
    pub count: usize,
    /// Mean, mu.
    pub mean: f64,
    /// Population standard deviation, sigma (divides by `count`, not `count - 1`).
    pub std: f64,
    /// Lowest reward.
    pub min: f64,
    /// Highest reward.
    pub max: f64,
}

impl RewardStats {
    /// Statistics of `rewards`; `None` when it is empty. Two passes (mean, then squared
    /// deviations); equal rewards give a standard deviation of exactly 0.
    pub fn from_rewards<I>(rewards: I) -> Option<Self>
    where
        I: IntoIterator<Item = f64>,
        I::IntoIter: Clone,
    {
        let iter = rewards.into_iter();
        let mut count = 0usize;
        let mut sum = 0.0f64;
        let mut min = f64::INFINITY;
        let mut max = f64::NEG_INFINITY;
        for r in iter.clone() {
            count += 1;
            sum += r;
            min = min.min(r);
            max = max.max(r);
        }
        if count == 0 {
            return None;
        }
        let mean = sum / count as f64;
        // Equal rewards have sigma = 0 exactly, whatever the rounding of their mean.
        let std = if min == max {
            0.0
        } else {
            (iter.map(|r| (r - mean) * (r - mean)).sum::<f64>() / count as f64).sqrt()
        };
        Some(Self {
            count,
            mean: if min == max { min } else { mean },
            std,
            min,
            max,
        })
    }

    /// Statistics of the rewards of `samples`.
    pub fn of_samples(samples: &[crate::ScoredSample]) -> Option<Self> {
        Self::from_rewards(samples.iter().map(|s| s.reward))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn population_std() {
        let s = RewardStats::from_rewards([1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.mean, 2.5);
        assert!((s.std - 1.25f64.sqrt()).abs() < 1e-15);
        assert_eq!((s.min, s.max), (1.0, 4.0));
    }

    #[test]
    fn equal_rewards_have_zero_std() {
        let s = RewardStats::from_rewards([0.1, 0.1, 0.1]).unwrap();
        assert_eq!(s.std, 0.0);
    }

    #[test]
    fn empty_is_none() {
        assert!(RewardStats::from_rewards(Vec::<f64>::new()).is_none());
    }
}
