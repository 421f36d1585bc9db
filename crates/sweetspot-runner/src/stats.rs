//! `sweetspot stats`: reward statistics of a scored dataset.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sweetspot_core::RewardStats;
use sweetspot_core::recipe::{InputLayout, OnBadGroup};
use sweetspot_io::{ReadOptions, Record, ScoredReader};

use crate::error::RunError;

/// Reward statistics over the groups of one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetStats {
    /// The file.
    pub input: PathBuf,
    /// Groups (prompts) counted.
    pub groups: u64,
    /// Samples counted.
    pub samples: u64,
    /// Groups left out for a non-finite reward.
    pub invalid_groups: u64,
    /// Mean group size.
    pub mean_n: f64,
    /// Mean over groups of the per-group mean reward.
    pub mean_of_mu: f64,
    /// Mean over groups of the per-group population standard deviation.
    pub mean_of_sigma: f64,
    /// Fraction of groups whose rewards are all equal (sigma = 0).
    pub frac_sigma_zero: f64,
    /// Fraction of groups (with sigma > 0) whose max lies above mu + 2 sigma.
    pub frac_max_beyond_2sigma: f64,
    /// Fraction of groups (with sigma > 0) whose min lies below mu - 2 sigma.
    pub frac_min_beyond_2sigma: f64,
    /// The lowest reward seen.
    pub min_reward: f64,
    /// The highest reward seen.
    pub max_reward: f64,
}

/// Statistics of the scored dataset at `input`, using only the first `n` samples of each group
/// when `n` is given.
pub fn dataset_stats(
    input: &Path,
    layout: InputLayout,
    n: Option<usize>,
) -> Result<DatasetStats, RunError> {
    let reader = ScoredReader::open(
        input,
        ReadOptions {
            layout,
            on_invalid_reward: OnBadGroup::Skip,
        },
    )?;
    let mut out = DatasetStats {
        input: input.to_path_buf(),
        groups: 0,
        samples: 0,
        invalid_groups: 0,
        mean_n: 0.0,
        mean_of_mu: 0.0,
        mean_of_sigma: 0.0,
        frac_sigma_zero: 0.0,
        frac_max_beyond_2sigma: 0.0,
        frac_min_beyond_2sigma: 0.0,
        min_reward: f64::NAN,
        max_reward: f64::NAN,
    };
    let (mut sum_mu, mut sum_sigma) = (0.0, 0.0);
    let (mut zero, mut max_out, mut min_out, mut spread) = (0u64, 0u64, 0u64, 0u64);
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for record in reader {
        let group = match record? {
            Record::Group { group, .. } => group,
            Record::InvalidReward { .. } => {
                out.invalid_groups += 1;
                continue;
            }
        };
        let samples = group.first_n(n);
        let Some(s) = RewardStats::of_samples(samples) else {
            continue;
        };
        out.groups += 1;
        out.samples += s.count as u64;
        sum_mu += s.mean;
        sum_sigma += s.std;
        lo = lo.min(s.min);
        hi = hi.max(s.max);
        if s.std == 0.0 {
            zero += 1;
        } else {
            spread += 1;
            if s.max > s.mean + 2.0 * s.std {
                max_out += 1;
            }
            if s.min < s.mean - 2.0 * s.std {
                min_out += 1;
            }
        }
    }
    if out.groups == 0 && out.invalid_groups == 0 {
        return Err(RunError::Read(sweetspot_io::ReadError::Empty {
            path: input.to_path_buf(),
            what: "scored samples".into(),
        }));
    }
    let frac = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    if out.groups > 0 {
        let g = out.groups as f64;
        out.mean_n = out.samples as f64 / g;
        out.mean_of_mu = sum_mu / g;
        out.mean_of_sigma = sum_sigma / g;
        out.min_reward = lo;
        out.max_reward = hi;
    }
    out.frac_sigma_zero = frac(zero, out.groups);
    out.frac_max_beyond_2sigma = frac(max_out, spread);
    out.frac_min_beyond_2sigma = frac(min_out, spread);
    Ok(out)
}
