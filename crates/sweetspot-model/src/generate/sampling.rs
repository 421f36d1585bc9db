//! The sampling rule: one row of logits to one token. Temperature, top-k, top-p and min-p
//! ([`SamplingParams`]), transformers' repetition penalty ([`penalize`]), the draw itself
//! ([`pick`]) and the distribution it draws from ([`token_probabilities`]).
//!
//! Invariants:
//! - The rule is part of the sampling stream's definition: a change to what [`pick`] returns for
//!   a row and a uniform draw bumps the runner's computation version, so older samples are not
//!   resumed as this build's.
//! - Temperature 0 is greedy: the first maximum, whatever the draw.
//! - The filters apply in transformers' order (repetition penalty, temperature, top-k, top-p,
//!   min-p), and every filter keeps the most likely token.
//! - [`token_probabilities`] is exactly the distribution [`pick`] draws from.
//! - A row's weights over the whole vocabulary come from [`exp_scaled`] (libm's `exp` in vector
//!   lanes): the bits of `(l as f64 / t - max).exp()` token by token, summed in id order.

use crate::libm_exp::exp_scaled;

/// How to pick each next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax, first index on ties).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability (1 = off).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Longest response, in tokens.
    pub max_new_tokens: usize,
    /// transformers' `repetition_penalty` (1 = off): before anything else, the logit of every
    /// token the sequence holds (prompt and response) is divided by it where positive and
    /// multiplied by it where negative. Applied in greedy decoding too, as transformers does.
    pub repetition_penalty: f32,
    /// transformers' `min_p` (0 = off): after temperature, top-k and top-p, tokens whose
    /// probability is below `min_p` times the most likely token's are dropped (sampling only).
    pub min_p: f32,
}

impl SamplingParams {
    /// Sampling at `temperature` with top-p and top-k, no repetition penalty, no min-p.
    pub fn new(temperature: f32, top_p: f32, top_k: usize, max_new_tokens: usize) -> Self {
        Self {
            temperature,
            top_p,
            top_k,
            max_new_tokens,
            repetition_penalty: 1.0,
            min_p: 0.0,
        }
    }

    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self::new(0.0, 1.0, 0, max_new_tokens)
    }
}

/// Applies transformers' `RepetitionPenaltyLogitsProcessor` to one row in place: the logit of
/// each distinct token of `history` (the sequence so far, prompt included) is divided by
/// `penalty` where it is positive and multiplied by it otherwise, in f32 as torch computes it.
pub fn penalize(row: &mut [f32], history: impl IntoIterator<Item = u32>, penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; row.len()];
    for t in history {
        let t = t as usize;
        if t < row.len() && !seen[t] {
            seen[t] = true;
            let x = row[t];
            row[t] = if x < 0.0 { x * penalty } else { x / penalty };
        }
    }
}

/// The tokens a draw can pick and their unnormalized weights.
enum Candidates {
    /// Every token, walked in id order with weight `exp(l / t - max)`.
    All,
    /// The kept tokens by logit, descending (ties by id), with their weights.
    Kept(Vec<usize>, Vec<f64>),
}

/// The draw's candidates under temperature `t` > 0, top-k, top-p and min-p (in transformers'
/// order: the kept mass of top-p is that of the top-k, and min-p's bar is relative to the most
/// likely token, which every filter keeps).
fn candidates(logits: &[f32], p: &SamplingParams) -> Candidates {
    let t = p.temperature as f64;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / t;
    let weight = |l: f32| (l as f64 / t - max).exp();
    let top_k = (p.top_k > 0 && p.top_k < logits.len()).then_some(p.top_k);
    let min_p = p.min_p as f64;
    if top_k.is_none() && p.top_p >= 1.0 && min_p <= 0.0 {
        return Candidates::All;
    }
    // The kept tokens in descending order: the top-k (with ties at the k-th), or, for top-p
    // alone, a growing prefix until it holds `top_p` of the mass, or for min-p alone, the tokens
    // whose weight (relative to the most likely token) reaches it.
    let (idx, total) = match top_k {
        Some(k) => {
            let idx = top_k_order(logits, k);
            let total: f64 = idx.iter().map(|&i| weight(logits[i])).sum();
            (idx, total)
        }
        None if p.top_p >= 1.0 => {
            let m = with_weights(logits, t, max, |w| {
                w.iter().filter(|&&w| w >= min_p).count()
            });
            (top_k_order(logits, m.max(1)), 0.0)
        }
        None => {
            let total: f64 = with_weights(logits, t, max, |w| w.iter().sum());
            let mut m = 64;
            loop {
                let idx = top_k_order(logits, m.min(logits.len()));
                // Summed as the walk below sums it, so the prefix holds what the walk needs.
                let mass: f64 = idx.iter().map(|&i| weight(logits[i]) / total).sum();
                if mass >= p.top_p as f64 || idx.len() >= logits.len() {
                    break (idx, total);
                }
                m *= 8;
            }
        }
    };
    let mut weights: Vec<f64> = idx.iter().map(|&i| weight(logits[i])).collect();
    let mut keep = weights.len();
    if p.top_p < 1.0 {
        let mut mass = 0.0;
        let mut n = 0;
        for w in &weights {
            n += 1;
            mass += w / total;
            if mass >= p.top_p as f64 {
                break;
            }
        }
        keep = n.max(1);
    }
    if min_p > 0.0 {
        // Weights are relative to the most likely token (weight 1), kept first.
        keep = weights[..keep]
            .iter()
            .take_while(|&&w| w >= min_p)
            .count()
            .max(1);
    }
    weights.truncate(keep);
    let mut idx = idx;
    idx.truncate(keep);
    Candidates::Kept(idx, weights)
}

thread_local! {
    /// A row's weights over the vocabulary ([`with_weights`]), reused from call to call.
    static WEIGHTS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` of the row's weights `exp(l / t - max)` in id order, computed into this thread's
/// [`WEIGHTS`] (so `f` must not call it again).
fn with_weights<R>(logits: &[f32], t: f64, max: f64, f: impl FnOnce(&[f64]) -> R) -> R {
    WEIGHTS.with_borrow_mut(|w| {
        w.resize(logits.len(), 0.0);
        exp_scaled(logits, t, max, w);
        f(w)
    })
}

/// Picks a token from `logits` (one row) with uniform draw `u` in [0, 1).
///
/// The rule is part of the sampling stream's definition (a change to it bumps the runner's
/// computation version, so older samples are not resumed as this build's): with neither top-k,
/// top-p nor min-p, the draw walks the whole vocabulary in id order (inverse CDF of the softmax at
/// `temperature`, no sort); otherwise it walks the kept tokens by logit, descending (ties by id):
/// top-k keeps every token whose logit reaches the k-th largest (as transformers does), top-p
/// then the most likely tokens until their share of the kept mass reaches `top_p` (at least one),
/// min-p then those whose probability reaches `min_p` times the most likely one's. Only the kept
/// tokens are sorted. The repetition penalty is applied to the row before ([`penalize`]).
pub fn pick(logits: &[f32], p: &SamplingParams, u: f64) -> u32 {
    if p.temperature <= 0.0 {
        return argmax(logits);
    }
    match candidates(logits, p) {
        Candidates::All => {
            let t = p.temperature as f64;
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / t;
            // Each weight is computed once and kept for the search (a buffer per thread).
            with_weights(logits, t, max, |weights| {
                let total: f64 = weights.iter().sum();
                let target = u * total;
                let mut acc = 0.0;
                let mut last = 0;
                for (i, &w) in weights.iter().enumerate() {
                    if w > 0.0 {
                        acc += w;
                        last = i;
                        if target < acc {
                            return i as u32;
                        }
                    }
                }
                last as u32
            })
        }
        Candidates::Kept(idx, weights) => {
            let kept: f64 = weights.iter().sum();
            let target = u * kept;
            let mut acc = 0.0;
            for (j, w) in weights.iter().enumerate() {
                acc += w;
                if target < acc {
                    return idx[j] as u32;
                }
            }
            idx[idx.len() - 1] as u32
        }
    }
}

/// The probability [`pick`] gives each token of `logits` (one row) under `p`: one-hot at the
/// first maximum for greedy decoding. For checking the rule against a reference.
pub fn token_probabilities(logits: &[f32], p: &SamplingParams) -> Vec<f64> {
    let mut out = vec![0.0; logits.len()];
    if p.temperature <= 0.0 {
        out[argmax(logits) as usize] = 1.0;
        return out;
    }
    match candidates(logits, p) {
        Candidates::All => {
            let t = p.temperature as f64;
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / t;
            with_weights(logits, t, max, |w| {
                let total: f64 = w.iter().sum();
                for (o, w) in out.iter_mut().zip(w) {
                    *o = w / total;
                }
            });
        }
        Candidates::Kept(idx, weights) => {
            let total: f64 = weights.iter().sum();
            for (i, w) in idx.into_iter().zip(weights) {
                out[i] = w / total;
            }
        }
    }
    out
}

/// The tokens whose logit reaches the `k`-th largest (ties at the k-th all kept), descending
/// (ties by id): a selection, then a sort of only those.
fn top_k_order(logits: &[f32], k: usize) -> Vec<usize> {
    let mut keys = descending_keys(logits);
    if k < keys.len() {
        keys.select_nth_unstable(k - 1);
        let kth = logits[(keys[k - 1] & 0xffff_ffff) as usize];
        let mut kept: Vec<u64> = keys[..k].to_vec();
        // Tokens past the k-th with the same logit (larger ids) stay too.
        kept.extend(
            keys[k..]
                .iter()
                .filter(|&&key| logits[(key & 0xffff_ffff) as usize] >= kth),
        );
        keys = kept;
    }
    keys.sort_unstable();
    keys.into_iter()
        .map(|k| (k & 0xffff_ffff) as usize)
        .collect()
}

/// One `u64` per token whose ascending order is logit descending (`f32::total_cmp`), ties by
/// ascending id (the id is in the key, so keys are distinct).
fn descending_keys(logits: &[f32]) -> Vec<u64> {
    logits
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            // total_cmp's order as an unsigned integer (ascending), then inverted.
            let bits = l.to_bits();
            let ascending = if bits >> 31 == 1 {
                !bits
            } else {
                bits | (1 << 31)
            };
            (u64::from(!ascending) << 32) | i as u64
        })
        .collect()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The log-probability of `token` under the row's unmodified softmax (temperature 1, no
/// filters): what a [`super::Generation`]'s `logprob` sums.
pub(super) fn log_softmax_at(row: &[f32], token: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    // Temperature 1: `x as f64 / 1.0` is `x as f64`, so these are the bits of `(x - max).exp()`.
    let sum: f64 = with_weights(row, 1.0, max, |w| w.iter().sum());
    row[token as usize] as f64 - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let p = SamplingParams::greedy(1);
        assert_eq!(pick(&[0.1, 0.7, 0.7, 0.2], &p, 0.5), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = SamplingParams::new(1.0, 1.0, 1, 1);
        for u in [0.0, 0.3, 0.999] {
            assert_eq!(pick(&[0.1, 3.0, 0.7], &p, u), 1);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // logits ln(1), ln(3): probabilities 0.25 and 0.75 at temperature 1.
        let p = SamplingParams::new(1.0, 1.0, 0, 1);
        let l = [0.0f32, 3f32.ln()];
        // No filter: the draw walks the ids in order, token 0 (0.25) first, then token 1.
        assert_eq!(pick(&l, &p, 0.20), 0);
        assert_eq!(pick(&l, &p, 0.30), 1);
        assert_eq!(pick(&l, &p, 0.99), 1);
        // With a filter (here one that keeps both) it walks the kept tokens by logit.
        let k = SamplingParams { top_p: 0.999, ..p };
        assert_eq!(pick(&l, &k, 0.70), 1);
        assert_eq!(pick(&l, &k, 0.80), 0);
        // top_p 0.5 keeps only token 1.
        let p = SamplingParams { top_p: 0.5, ..p };
        assert_eq!(pick(&l, &p, 0.99), 1);
    }

    fn descending_order(logits: &[f32]) -> Vec<usize> {
        top_k_order(logits, logits.len())
    }

    /// The integer-key sort gives exactly the order of the comparison sort it replaced
    /// (logit descending by `total_cmp`, ties by id), negative zeros, ties and infinities
    /// included, so every draw picks the same token as before.
    #[test]
    fn integer_key_order_is_the_comparison_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for case in 0..200 {
            let n = 1 + case * 7;
            let mut row: Vec<f32> = (0..n).map(|_| (rng.random::<f32>() - 0.5) * 40.0).collect();
            // Ties, signed zeros and infinities.
            for (j, v) in [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1.5, 1.5]
                .into_iter()
                .enumerate()
            {
                if j * 3 < n {
                    row[j * 3] = v;
                }
            }
            let mut want: Vec<usize> = (0..n).collect();
            want.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            assert_eq!(descending_order(&row), want, "case {case}");
        }
    }

    /// With top-k or top-p the draw picks what a full sort of the vocabulary would pick (the
    /// selection keeps exactly the top-k set with its ties; top-p grows its prefix until the
    /// mass is there), on rows with ties, for many draws.
    #[test]
    fn filtered_draws_equal_the_full_sort() {
        fn reference(logits: &[f32], p: &SamplingParams, u: f64) -> u32 {
            let t = p.temperature as f64;
            let idx = descending_order(logits);
            let mut keep = idx.len();
            if p.top_k > 0 && p.top_k < keep {
                let kth = logits[idx[p.top_k - 1]];
                keep = idx.iter().take_while(|&&i| logits[i] >= kth).count();
            }
            let max = logits[idx[0]] as f64 / t;
            let w: Vec<f64> = idx[..keep]
                .iter()
                .map(|&i| (logits[i] as f64 / t - max).exp())
                .collect();
            let total: f64 = w.iter().sum();
            if p.top_p < 1.0 {
                let (mut mass, mut n) = (0.0, 0);
                for x in &w {
                    n += 1;
                    mass += x / total;
                    if mass >= p.top_p as f64 {
                        break;
                    }
                }
                keep = n.max(1);
            }
            let target = u * w[..keep].iter().sum::<f64>();
            let mut acc = 0.0;
            for (j, x) in w[..keep].iter().enumerate() {
                acc += x;
                if target < acc {
                    return idx[j] as u32;
                }
            }
            idx[keep - 1] as u32
        }
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for case in 0..300 {
            let n = 2 + case * 37;
            let mut row: Vec<f32> = (0..n).map(|_| (rng.random::<f32>() - 0.5) * 16.0).collect();
            for j in (0..n).step_by(5) {
                row[j] = 1.25; // ties
            }
            let p = SamplingParams::new(
                [0.7, 1.0, 1.3][case % 3],
                [1.0, 0.9, 0.5, 0.99, 0.3][case % 5],
                [0, 1, 5, 50][case % 4],
                1,
            );
            if p.top_k == 0 && p.top_p >= 1.0 {
                continue;
            }
            for _ in 0..20 {
                let u: f64 = rng.random();
                assert_eq!(
                    pick(&row, &p, u),
                    reference(&row, &p, u),
                    "case {case} u {u}"
                );
            }
        }
    }
}
