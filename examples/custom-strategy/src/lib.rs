//! `quantile`: chosen = the sample nearest to the `chosen` quantile of the group's rewards,
//! rejected = the sample nearest to the `rejected` quantile (defaults 1.0 and 0.1). Quantiles use
//! linear interpolation between order statistics (NumPy's default); ties go to the lowest sample
//! index, as in sweetspot's built-in strategies.
//!
//! Everything here uses sweetspot-core's public API: one attribute,
//! `#[sweetspot_core::plugin(...)]`, registers the config (its `type = "quantile"`, through
//! typetag) and lists the plugin (`sweetspot plugins`).

use serde::{Deserialize, Serialize};
use sweetspot_core::{
    BuildContext, PairStrategy, PairStrategyConfig, PluginError, RewardStats, ScoredGroup,
    Selection,
};

/// The recipe table: `type = "quantile"`, `chosen`, `rejected`, optional `n`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantile {
    /// The chosen sample's quantile, in [0, 1].
    #[serde(default = "one")]
    pub chosen: f64,
    /// The rejected sample's quantile, in [0, 1].
    #[serde(default = "tenth")]
    pub rejected: f64,
    /// Use only the first n samples of each group.
    pub n: Option<usize>,
}

fn one() -> f64 {
    1.0
}

fn tenth() -> f64 {
    0.1
}

#[sweetspot_core::plugin(
    name = "quantile",
    description = "chosen/rejected nearest to reward quantiles (example third-party plugin)",
    example = "type = \"quantile\"\nchosen = 1.0\nrejected = 0.1"
)]
impl PairStrategyConfig for Quantile {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PairStrategy>, PluginError> {
        for (key, q) in [("chosen", self.chosen), ("rejected", self.rejected)] {
            if !(0.0..=1.0).contains(&q) {
                return Err(PluginError::config(
                    "quantile",
                    format!("`{key}` = {q} is not a quantile in [0, 1]"),
                ));
            }
        }
        if self.chosen <= self.rejected {
            return Err(PluginError::config(
                "quantile",
                "`chosen` must be a higher quantile than `rejected`",
            ));
        }
        Ok(Box::new(self.clone()))
    }

    fn own_n(&self) -> Option<usize> {
        self.n
    }
}

/// The q-quantile of `sorted` (ascending), interpolated linearly.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn nearest(rewards: &[f64], target: f64) -> usize {
    let mut best = 0;
    for (i, r) in rewards.iter().enumerate() {
        if (r - target).abs() < (rewards[best] - target).abs() {
            best = i;
        }
    }
    best
}

impl PairStrategy for Quantile {
    fn datasets(&self) -> Vec<String> {
        let name = format!("quantile_{}_vs_{}", self.chosen, self.rejected);
        match self.n {
            Some(n) => vec![format!("{name}_n{n}")],
            None => vec![name],
        }
    }

    fn min_samples(&self) -> usize {
        self.n.unwrap_or(2).max(2)
    }

    fn select(&self, group: &ScoredGroup, out: &mut Vec<Selection>) -> Result<(), PluginError> {
        let samples = group.first_n(self.n);
        let rewards: Vec<f64> = samples.iter().map(|s| s.reward).collect();
        let Some(stats) = RewardStats::from_rewards(rewards.iter().copied()) else {
            return Err(PluginError::Input("empty group".into()));
        };
        let mut sorted = rewards.clone();
        sorted.sort_by(f64::total_cmp);
        let chosen = nearest(&rewards, quantile(&sorted, self.chosen));
        let rejected = nearest(&rewards, quantile(&sorted, self.rejected));
        out.push(Selection::checked(&rewards, stats.std, chosen, rejected));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&s, 0.0), 1.0);
        assert_eq!(quantile(&s, 1.0), 5.0);
        assert_eq!(quantile(&s, 0.5), 3.0);
        assert!((quantile(&s, 0.1) - 1.4).abs() < 1e-12);
    }
}
