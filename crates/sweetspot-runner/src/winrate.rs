//! Win rates of a policy against a baseline, from per-prompt rewards and response lengths:
//! plain, length-controlled, and their bootstrap intervals.
//!
//! Per prompt, the policy wins (1) when its reward is higher than the baseline's, ties (0.5)
//! when equal, and loses (0) otherwise. The plain win rate is 100 times the mean outcome.
//!
//! The length-controlled win rate, in the spirit of AlpacaEval 2: a logistic model
//! `P(win) = sigmoid(b + w * tanh(dlen / sd(dlen)))` is fitted by maximum likelihood to the
//! per-prompt outcomes (a tie counts as half a win: the Bernoulli log-likelihood with a
//! fractional outcome, as statsmodels' `GLM(..., family=Binomial())` fits it), where `dlen` is
//! the policy's response length minus the baseline's (tokens) and `sd` its sample standard
//! deviation; the result is `100 * sigmoid(b)`, the predicted win rate at equal length.
//! AlpacaEval's GLM has three terms (the model's identity, the length term and the instruction's
//! difficulty, fitted across many models on a shared annotation set); with one policy against
//! one baseline on the recipe's own prompts there is no difficulty term to fit, so this is the
//! two-term model. When every `dlen` is equal the length term is zero and the result equals the
//! plain win rate.

use serde::Serialize;

/// One policy against the baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WinRate {
    /// Prompts compared.
    pub prompts: usize,
    /// 100 x mean outcome.
    pub win_rate: f64,
    /// Bootstrap 95% interval of `win_rate` (2.5th and 97.5th percentiles).
    pub win_rate_ci: (f64, f64),
    /// 100 x sigmoid(b) of the length model.
    pub lc_win_rate: f64,
    /// Bootstrap 95% interval of `lc_win_rate`.
    pub lc_win_rate_ci: (f64, f64),
    /// The fitted length weight `w`.
    pub length_weight: f64,
}

/// The per-prompt outcome: 1 (higher reward), 0.5 (equal), 0.
pub fn outcome(policy: f64, baseline: f64) -> f64 {
    if policy > baseline {
        1.0
    } else if policy == baseline {
        0.5
    } else {
        0.0
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Sample standard deviation (n - 1 in the denominator, as pandas' `std`).
fn sample_sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Maximum-likelihood `(b, w)` of `P(y) = sigmoid(b + w x)` for outcomes `y` in [0, 1], by
/// Newton's method with step halving. Outcomes all 0 or all 1 have no finite maximum: `b` is
/// then +-infinity (and `w` 0). Where the outcomes are separated by `x` the fit stops after a
/// bounded number of steps at a large `(b, w)`.
pub fn fit_logistic(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = y.len() as f64;
    let mean_y = y.iter().sum::<f64>() / n.max(1.0);
    if y.is_empty() {
        return (0.0, 0.0);
    }
    if mean_y >= 1.0 {
        return (f64::INFINITY, 0.0);
    }
    if mean_y <= 0.0 {
        return (f64::NEG_INFINITY, 0.0);
    }
    // log sigmoid(t), stable for large |t|.
    let log_sigmoid = |t: f64| {
        if t >= 0.0 {
            -(-t).exp().ln_1p()
        } else {
            t - t.exp().ln_1p()
        }
    };
    let loglik = |b: f64, w: f64| -> f64 {
        x.iter()
            .zip(y)
            .map(|(&xi, &yi)| {
                let z = b + w * xi;
                yi * log_sigmoid(z) + (1.0 - yi) * log_sigmoid(-z)
            })
            .sum()
    };
    let has_x = x.iter().any(|v| *v != 0.0);
    // Start at the intercept-only maximum.
    let mut b = (mean_y / (1.0 - mean_y)).ln();
    let mut w = 0.0;
    if !has_x {
        return (b, 0.0);
    }
    let mut ll = loglik(b, w);
    for _ in 0..200 {
        let (mut gb, mut gw, mut hbb, mut hbw, mut hww) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&xi, &yi) in x.iter().zip(y) {
            let p = sigmoid(b + w * xi);
            let r = yi - p;
            gb += r;
            gw += r * xi;
            let v = p * (1.0 - p);
            hbb += v;
            hbw += v * xi;
            hww += v * xi * xi;
        }
        let det = hbb * hww - hbw * hbw;
        if det <= 0.0 || !det.is_finite() {
            break;
        }
        // Newton step: H^-1 g (H is the negative Hessian, positive definite).
        let db = (hww * gb - hbw * gw) / det;
        let dw = (hbb * gw - hbw * gb) / det;
        let mut t = 1.0;
        let mut improved = false;
        for _ in 0..40 {
            let (nb, nw) = (b + t * db, w + t * dw);
            let nll = loglik(nb, nw);
            if nll >= ll - 1e-15 * ll.abs() {
                b = nb;
                w = nw;
                ll = nll;
                improved = true;
                break;
            }
            t *= 0.5;
        }
        if !improved || (t * db).abs().max((t * dw).abs()) < 1e-13 {
            break;
        }
    }
    (b, w)
}

/// The length-controlled win rate and the length weight of `outcomes` with length differences
/// `dlen` (policy minus baseline).
pub fn length_controlled(outcomes: &[f64], dlen: &[f64]) -> (f64, f64) {
    let sd = sample_sd(dlen);
    let x: Vec<f64> = if sd > 0.0 {
        dlen.iter().map(|d| (d / sd).tanh()).collect()
    } else {
        vec![0.0; dlen.len()]
    };
    let (b, w) = fit_logistic(&x, outcomes);
    (100.0 * sigmoid(b), w)
}

/// A small, fixed generator for the bootstrap (SplitMix64), so intervals depend on the seed
/// only.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        // Lemire's multiply-shift; the bias for n far below 2^64 is negligible.
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
}

/// The value at quantile `q` of `sorted` (linear between neighbours, as numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let t = pos - lo as f64;
    sorted[lo] * (1.0 - t) + sorted[hi] * t
}

/// Win rates of a policy (rewards and lengths per prompt) against the baseline's, with
/// `resamples` bootstrap resamples of the prompts (seeded by `seed`) for the 95% intervals.
pub fn win_rates(
    policy: &[(f64, f64)],
    baseline: &[(f64, f64)],
    resamples: usize,
    seed: u64,
) -> WinRate {
    let outcomes: Vec<f64> = policy
        .iter()
        .zip(baseline)
        .map(|(p, b)| outcome(p.0, b.0))
        .collect();
    let dlen: Vec<f64> = policy
        .iter()
        .zip(baseline)
        .map(|(p, b)| p.1 - b.1)
        .collect();
    from_outcomes(&outcomes, &dlen, resamples, seed)
}

/// The pairwise judge's preference for the policy on one prompt, from its scores in both
/// orders (`log P(A) - log P(B)` with the policy's response as A, then with the start's as A):
/// the mean of P(policy) over the two orders, so that a preference for the first (or second)
/// position cancels. Swapping the two responses gives 1 minus the preference.
pub fn pairwise_preference(policy_first: f64, start_first: f64) -> f64 {
    0.5 * (sigmoid(policy_first) + sigmoid(-start_first))
}

/// Win rates from per-prompt outcomes in [0, 1] (a fractional outcome counts as that much of a
/// win) and length differences, with `resamples` bootstrap resamples of the prompts drawn by
/// SplitMix64 seeded with `seed`.
pub fn from_outcomes(outcomes: &[f64], dlen: &[f64], resamples: usize, seed: u64) -> WinRate {
    let n = outcomes.len();
    let mut rng = SplitMix(seed);
    let draws: Vec<Vec<usize>> = (0..resamples)
        .map(|_| (0..n).map(|_| rng.below(n)).collect())
        .collect();
    from_resamples(outcomes, dlen, &draws)
}

/// Win rates with the bootstrap's resamples given: each is the list of prompt indices drawn
/// (with replacement). The 95% intervals are the 2.5% and 97.5% quantiles of the resampled
/// rates (linear between neighbours).
fn from_resamples(outcomes: &[f64], dlen: &[f64], draws: &[Vec<usize>]) -> WinRate {
    let plain = |o: &[f64]| 100.0 * o.iter().sum::<f64>() / o.len().max(1) as f64;
    let (lc, w) = length_controlled(outcomes, dlen);
    let (mut plains, mut lcs) = (
        Vec::with_capacity(draws.len()),
        Vec::with_capacity(draws.len()),
    );
    for draw in draws {
        let o: Vec<f64> = draw.iter().map(|&j| outcomes[j]).collect();
        let d: Vec<f64> = draw.iter().map(|&j| dlen[j]).collect();
        plains.push(plain(&o));
        lcs.push(length_controlled(&o, &d).0);
    }
    plains.sort_by(f64::total_cmp);
    lcs.sort_by(f64::total_cmp);
    let ci = |v: &[f64]| (quantile(v, 0.025), quantile(v, 0.975));
    WinRate {
        prompts: outcomes.len(),
        win_rate: plain(outcomes),
        win_rate_ci: ci(&plains),
        lc_win_rate: lc,
        lc_win_rate_ci: ci(&lcs),
        length_weight: w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_win_rate_by_hand() {
        // Wins, a tie, a loss: (1 + 0.5 + 0 + 1) / 4 = 62.5%.
        let p = [(2.0, 10.0), (1.0, 10.0), (0.0, 10.0), (5.0, 10.0)];
        let b = [(1.0, 10.0), (1.0, 10.0), (1.0, 10.0), (4.0, 10.0)];
        let w = win_rates(&p, &b, 0, 1);
        assert_eq!(w.win_rate, 62.5);
        // Equal lengths: no length term, the length-controlled rate is the plain one.
        assert!((w.lc_win_rate - 62.5).abs() < 1e-9, "{w:?}");
        assert_eq!(w.length_weight, 0.0);
    }

    #[test]
    fn bootstrap_of_a_constant_outcome_is_a_point() {
        let p = [(2.0, 1.0); 5];
        let b = [(1.0, 1.0); 5];
        let w = win_rates(&p, &b, 200, 3);
        assert_eq!(w.win_rate, 100.0);
        assert_eq!(w.win_rate_ci, (100.0, 100.0));
        assert_eq!(w.lc_win_rate, 100.0);
        // Half wins, half losses: the intervals hold 50 and are seeded.
        let p: Vec<(f64, f64)> = (0..40).map(|i| ((i % 2) as f64, 1.0)).collect();
        let b = vec![(0.5, 1.0); 40];
        let a = win_rates(&p, &b, 500, 9);
        assert_eq!(a.win_rate, 50.0);
        assert!(a.win_rate_ci.0 < 50.0 && a.win_rate_ci.1 > 50.0, "{a:?}");
        assert_eq!(a, win_rates(&p, &b, 500, 9));
    }

    /// The interval by hand: five given resamples of four prompts.
    #[test]
    fn bootstrap_interval_by_hand() {
        let outcomes = [1.0, 0.0, 0.5, 1.0];
        let dlen = [0.0; 4];
        let draws = [
            vec![0, 0, 1, 1], // (1 + 1 + 0 + 0) / 4 = 50
            vec![0, 2, 2, 3], // (1 + .5 + .5 + 1) / 4 = 75
            vec![1, 1, 1, 2], // .5 / 4 = 12.5
            vec![0, 0, 0, 0], // 100
            vec![1, 2, 3, 0], // 2.5 / 4 = 62.5
        ];
        // Sorted: 12.5, 50, 62.5, 75, 100. The 2.5% quantile sits at 0.025 * 4 = 0.1 of the
        // way: 12.5 + 0.1 * 37.5 = 16.25; the 97.5% one at 3.9: 75 + 0.9 * 25 = 97.5.
        let w = from_resamples(&outcomes, &dlen, &draws);
        assert_eq!(w.win_rate, 62.5);
        assert!((w.win_rate_ci.0 - 16.25).abs() < 1e-12, "{w:?}");
        assert!((w.win_rate_ci.1 - 97.5).abs() < 1e-12, "{w:?}");
        // No length differences: the length-controlled rates are the plain ones.
        assert!((w.lc_win_rate - 62.5).abs() < 1e-6, "{w:?}");
        assert!((w.lc_win_rate_ci.0 - 16.25).abs() < 1e-6, "{w:?}");
        assert!((w.lc_win_rate_ci.1 - 97.5).abs() < 1e-6, "{w:?}");
    }

    /// The generator is SplitMix64 as published (Vigna's reference output for seed 0), and a
    /// resample draws indices below n.
    #[test]
    fn splitmix_reference_values() {
        let mut r = SplitMix(0);
        assert_eq!(r.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next(), 0x06c4_5d18_8009_454f);
        let mut r = SplitMix(7);
        assert!((0..1000).all(|_| r.below(3) < 3));
    }

    /// statsmodels' unregularized Binomial GLM on the same outcomes (written by
    /// `scripts/lc_winrate_reference.py`): equal within 1e-6.
    #[test]
    fn length_controlled_matches_statsmodels() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/winrate_reference.json"
        );
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = r["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 4);
        for c in cases {
            let v = |k: &str| -> Vec<f64> {
                c[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            };
            let (outcomes, dlen) = (v("outcomes"), v("dlen"));
            let (lc, w) = length_controlled(&outcomes, &dlen);
            let name = c["name"].as_str().unwrap();
            let want_lc = c["lc_win_rate"].as_f64().unwrap();
            let want_w = c["w"].as_f64().unwrap();
            assert!((lc - want_lc).abs() < 1e-6, "{name}: {lc} vs {want_lc}");
            assert!((w - want_w).abs() < 1e-6, "{name}: {w} vs {want_w}");
            let plain = 100.0 * outcomes.iter().sum::<f64>() / outcomes.len() as f64;
            assert!((plain - c["win_rate"].as_f64().unwrap()).abs() < 1e-9);
        }
    }

    #[test]
    fn pairwise_orders_cancel() {
        // A judge that always prefers the first position: in one order it picks the policy, in
        // the other the start; averaged, no preference.
        assert!((pairwise_preference(2.0, 2.0) - 0.5).abs() < 1e-12);
        // Swapping which response is the policy's flips the per-order results and gives 1 - p.
        for (a, b) in [(1.5, -0.5), (-3.0, 0.25), (0.0, 4.0)] {
            let p = pairwise_preference(a, b);
            let swapped = pairwise_preference(b, a);
            assert!((p + swapped - 1.0).abs() < 1e-12, "{p} {swapped}");
        }
        // A judge that prefers the policy in both orders.
        assert!(pairwise_preference(3.0, -3.0) > 0.9);
    }

    #[test]
    fn longer_wins_are_discounted() {
        // The policy wins exactly where it is longer, mostly: the length model explains the
        // wins, and the rate at equal length is below the plain rate.
        let dl = [30.0, 25.0, 20.0, 15.0, 10.0, -5.0, -10.0, 12.0, -20.0, 8.0];
        let wins = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let (lc, w) = length_controlled(&wins, &dl);
        assert!(w > 0.0, "{w}");
        assert!(lc < 70.0, "{lc}");
    }
}
