//! The paper's analysis of a scored pool, per n (the first n samples of each prompt).

use std::path::Path;

use sweetspot_core::RewardStats;
use sweetspot_core::recipe::{InputLayout, OnBadGroup};
use sweetspot_io::{ReadOptions, Record, ScoredReader};

/// The seven points of the paper's grid.
pub use sweetspot_core::points::PAPER_POINTS as POINTS;

/// The analysis, one entry per n.
#[derive(Debug, Clone, Default)]
pub struct PoolAnalysis {
    /// Prompts read.
    pub groups: usize,
    /// The n values, ascending.
    pub ns: Vec<usize>,
    /// Per-prompt sigma at the largest n.
    pub sigmas: Vec<f64>,
    /// Per n: the fraction of prompts (with sigma > 0) whose max lies above mu + 2 sigma.
    pub max_beyond: Vec<f64>,
    /// Per n: the fraction whose min lies below mu - 2 sigma.
    pub min_beyond: Vec<f64>,
    /// Per n: the mean z-score of the max, (max - mu) / sigma.
    pub z_max: Vec<f64>,
    /// Per n: the mean z-score of the min.
    pub z_min: Vec<f64>,
    /// Per n, per point of [`POINTS`]: the mean reward of the sample at that point.
    pub point_rewards: Vec<[f64; 7]>,
}

/// Reads the scored pool at `path` and analyses it at each of `ns` (all samples when empty).
pub fn analyse_pool(path: &Path, ns: &[usize]) -> Result<PoolAnalysis, String> {
    let reader = ScoredReader::open(
        path,
        ReadOptions {
            layout: InputLayout::Auto,
            on_invalid_reward: OnBadGroup::Skip,
        },
    )
    .map_err(|e| e.to_string())?;
    let mut groups: Vec<Vec<f64>> = Vec::new();
    for r in reader {
        if let Record::Group { group, .. } = r.map_err(|e| e.to_string())? {
            groups.push(group.samples.iter().map(|s| s.reward).collect());
        }
    }
    let largest = groups.iter().map(Vec::len).max().unwrap_or(0);
    let mut ns: Vec<usize> = if ns.is_empty() {
        vec![largest]
    } else {
        ns.to_vec()
    };
    ns.retain(|&n| n >= 2 && n <= largest);
    let mut a = PoolAnalysis {
        groups: groups.len(),
        ns: ns.clone(),
        ..PoolAnalysis::default()
    };
    for (k, &n) in ns.iter().enumerate() {
        let (mut counted, mut above, mut below, mut zmax, mut zmin) = (0usize, 0, 0, 0.0, 0.0);
        let mut at = [0.0f64; 7];
        let mut with_points = 0usize;
        for g in &groups {
            let r = &g[..n.min(g.len())];
            let Some(st) = RewardStats::from_rewards(r.iter().copied()) else {
                continue;
            };
            if k + 1 == ns.len() {
                a.sigmas.push(st.std);
            }
            with_points += 1;
            for (j, p) in POINTS.iter().enumerate() {
                if let Some(i) = p.select(r, &st) {
                    at[j] += r[i];
                }
            }
            if st.std > 0.0 {
                counted += 1;
                above += usize::from(st.max > st.mean + 2.0 * st.std);
                below += usize::from(st.min < st.mean - 2.0 * st.std);
                zmax += (st.max - st.mean) / st.std;
                zmin += (st.min - st.mean) / st.std;
            }
        }
        let c = counted.max(1) as f64;
        a.max_beyond.push(above as f64 / c);
        a.min_beyond.push(below as f64 / c);
        a.z_max.push(zmax / c);
        a.z_min.push(zmin / c);
        let w = with_points.max(1) as f64;
        a.point_rewards.push(at.map(|v| v / w));
    }
    Ok(a)
}
