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

/// How far two reward models agree on one pool (the same samples scored by each).
#[derive(Debug, Clone, Default)]
pub struct Agreement {
    /// The two models' names.
    pub models: (String, String),
    /// Prompts read.
    pub groups: usize,
    /// Per prompt whose rewards vary under both models: Spearman's rank correlation of the two
    /// models' rewards of its samples (average ranks for ties).
    pub spearman: Vec<f64>,
    /// Per grid cell `[chosen][rejected]` of [`POINTS`] (chosen above rejected): the share of
    /// prompts whose grid pair, picked and ordered by the first model, the second model
    /// reverses (gives the chosen response a strictly lower reward), in percent; `None` where
    /// no prompt gives the cell a pair.
    pub reversed: Vec<Vec<Option<f64>>>,
    /// Per grid cell: the pairs counted.
    pub pairs: Vec<Vec<usize>>,
}

/// Average ranks (1-based) of `v`: tied values share the mean of their positions.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// Spearman's rank correlation of `a` and `b` (Pearson's of their average ranks); `None` when
/// either is constant or they have fewer than 2 values.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// Reads the scores of the same pool by two models (`first`, `second`: name and scored file)
/// and measures their agreement. The files must hold the same prompts and sample indices in the
/// same order (what the score nodes of one run write).
pub fn analyse_agreement(first: (&str, &Path), second: (&str, &Path)) -> Result<Agreement, String> {
    let open = |p: &Path| {
        ScoredReader::open(
            p,
            ReadOptions {
                layout: InputLayout::Auto,
                on_invalid_reward: OnBadGroup::Skip,
            },
        )
        .map_err(|e| e.to_string())
    };
    let (mut ra, mut rb) = (open(first.1)?, open(second.1)?);
    let k = POINTS.len();
    let mut a = Agreement {
        models: (first.0.to_string(), second.0.to_string()),
        reversed: vec![vec![None; k]; k],
        pairs: vec![vec![0; k]; k],
        ..Agreement::default()
    };
    let mut reversed = vec![vec![0usize; k]; k];
    loop {
        let (x, y) = match (ra.next(), rb.next()) {
            (None, None) => break,
            (Some(x), Some(y)) => (x.map_err(|e| e.to_string())?, y.map_err(|e| e.to_string())?),
            _ => {
                return Err(format!(
                    "{} and {}: not the same prompts (one ends first)",
                    first.1.display(),
                    second.1.display()
                ));
            }
        };
        let (Record::Group { group: ga, .. }, Record::Group { group: gb, .. }) = (x, y) else {
            continue;
        };
        let same = ga.prompt.id == gb.prompt.id
            && ga.samples.len() == gb.samples.len()
            && ga
                .samples
                .iter()
                .zip(&gb.samples)
                .all(|(s, t)| s.sample.sample_index == t.sample.sample_index);
        if !same {
            return Err(format!(
                "{} and {}: prompt `{}` / `{}`: not the same prompts and samples in the same order",
                first.1.display(),
                second.1.display(),
                ga.prompt.id,
                gb.prompt.id
            ));
        }
        a.groups += 1;
        let r1: Vec<f64> = ga.samples.iter().map(|s| s.reward).collect();
        let r2: Vec<f64> = gb.samples.iter().map(|s| s.reward).collect();
        if let Some(rho) = spearman(&r1, &r2) {
            a.spearman.push(rho);
        }
        let Some(st) = RewardStats::from_rewards(r1.iter().copied()) else {
            continue;
        };
        if st.std <= 0.0 {
            continue;
        }
        // The grid's pairs as the first model picks them: chosen point above rejected point.
        for c in 0..k {
            for r in 0..c {
                let (Some(i), Some(j)) = (POINTS[c].select(&r1, &st), POINTS[r].select(&r1, &st))
                else {
                    continue;
                };
                if i == j || r1[i] <= r1[j] {
                    continue;
                }
                a.pairs[c][r] += 1;
                reversed[c][r] += usize::from(r2[i] < r2[j]);
            }
        }
    }
    for ((shares, counts), flips) in a.reversed.iter_mut().zip(&a.pairs).zip(&reversed) {
        for ((share, &count), &flipped) in shares.iter_mut().zip(counts).zip(flips) {
            if count > 0 {
                *share = Some(100.0 * flipped as f64 / count as f64);
            }
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_known_cases() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        // Ties: ranks (1.5, 1.5, 3) against (1, 2, 3): 1.5 / sqrt(1.5 * 2).
        let rho = spearman(&[0.0, 0.0, 5.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((rho - 1.5 / (1.5f64 * 2.0).sqrt()).abs() < 1e-12, "{rho}");
        // Not only the ends: (1 3 2) against (1 2 3): 1 - 6 * 2 / (3 * 8) = 0.5.
        assert!((spearman(&[1.0, 3.0, 2.0], &[1.0, 2.0, 3.0]).unwrap() - 0.5).abs() < 1e-12);
    }

    fn write(dir: &Path, name: &str, groups: &[&[f64]]) -> std::path::PathBuf {
        let mut text = String::new();
        for (p, rewards) in groups.iter().enumerate() {
            for (i, r) in rewards.iter().enumerate() {
                text.push_str(&format!(
                    "{{\"prompt_id\": \"p{p}\", \"prompt\": \"q{p}\", \"sample_index\": {i}, \
                     \"response\": \"r{i}\", \"reward\": {r}}}\n"
                ));
            }
        }
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_second_model_reversing_the_max_min_pair_is_counted_in_its_cell() {
        let dir = std::env::temp_dir().join(format!("sweetspot-agree-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Prompt 0: b reverses every order of a; prompt 1: b agrees; prompt 2: a is flat.
        let a = write(
            &dir,
            "a.jsonl",
            &[&[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 3.0, 4.0], &[1.0; 4]],
        );
        let b = write(
            &dir,
            "b.jsonl",
            &[
                &[4.0, 3.0, 2.0, 1.0],
                &[0.0, 1.0, 2.0, 9.0],
                &[1.0, 2.0, 3.0, 4.0],
            ],
        );
        let got = analyse_agreement(("a", &a), ("b", &b)).unwrap();
        assert_eq!(got.groups, 3);
        assert_eq!(got.spearman, [-1.0, 1.0]);
        // max (6) vs min (0): one pair per varying prompt, one of the two reversed.
        assert_eq!(got.pairs[6][0], 2);
        assert_eq!(got.reversed[6][0], Some(50.0));
        // Rejected above chosen is no grid cell.
        assert_eq!(got.reversed[0][6], None);
        // A second file with another prompt is refused, naming both.
        let c = write(&dir, "c.jsonl", &[&[1.0, 2.0]]);
        let e = analyse_agreement(("a", &a), ("c", &c)).unwrap_err();
        assert!(e.contains("a.jsonl") && e.contains("c.jsonl"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
