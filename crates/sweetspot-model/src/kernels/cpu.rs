//! The CPU arithmetic of sweetspot's own kernels, on plain f32 slices (no tensors, no backend):
//! attention forward and backward tiled over queries, and the log-probability of a target token
//! under a vocabulary projection. [`super`] wraps them as burn operations.

use burn::tensor::bf16;
use rayon::prelude::*;

use super::decode;
use crate::libm_exp::expf_in_place;

/// Query rows per tile: a tile's keys end where its last query's causal range ends.
pub(crate) const QUERY_TILE: usize = 64;

/// Rows of hidden states projected to the vocabulary at a time.
pub(crate) const VOCAB_ROWS: usize = 128;

/// Exponentials below this are flushed to zero (e^-87 is near f32's smallest normal number).
const EXP_FLOOR: f32 = -87.0;

/// Shapes and masking of one attention call.
#[derive(Debug, Clone)]
pub(crate) struct AttnDims {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// New (query) tokens per row.
    pub queries: usize,
    /// Key slots per row (earlier slots from the cache, then the new tokens).
    pub keys: usize,
    pub head_dim: usize,
    /// Key slots before the first query (the cache's length).
    pub past: usize,
    /// A query sees keys fewer than this many slots back (`usize::MAX`: all).
    pub window: usize,
    /// Whether the queries are computed as a call of several queries computes them (tiles of
    /// products of at least two rows, a window from the tile's bound): a call of several, or one
    /// query picked from such a call ([`super::AttnMask::picked`]); a decode step's lone query
    /// otherwise.
    pub several: bool,
    pub scale: f32,
}

impl AttnDims {
    /// (heads, kv_heads, queries, keys, head_dim).
    fn sizes(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.heads,
            self.kv_heads,
            self.queries,
            self.keys,
            self.head_dim,
        )
    }

    /// The query tiles `[q0, q1)`: at most [`QUERY_TILE`] queries each, their bounds at
    /// multiples of [`QUERY_TILE`] in key slots (`past + q`), so a query falls in the same tile,
    /// and sees the same span of keys, whether the slots before it come from a cache or are
    /// computed in the same call (scoring with a shared prompt prefix gives the bits of scoring
    /// the whole sequence). Without a cache the tiles start at 0, 64, 128, ...
    fn query_tiles(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (past, t) = (self.past, self.queries);
        let first = (QUERY_TILE - past % QUERY_TILE).min(t);
        std::iter::once((0, first)).filter(|&(_, q1)| q1 > 0).chain(
            (first..t)
                .step_by(QUERY_TILE)
                .map(move |q0| (q0, (q0 + QUERY_TILE).min(t))),
        )
    }

    /// Keys `[lo, hi)` a tile of queries `[q0, q1)` of a row may see, given the row's first and
    /// one-past-last real key. With a window, a tile's first key is its first query slot's
    /// (the slot at the tile's bound in a call of several queries, the same whether the queries
    /// before it are in the call or in the cache; a decode step's own query otherwise).
    fn span(&self, q0: usize, q1: usize, real: (usize, usize)) -> (usize, usize) {
        let hi = (self.past + q1).min(self.keys).min(real.1);
        let first = if self.several {
            (self.past + q0) / QUERY_TILE * QUERY_TILE
        } else {
            self.past + q0
        };
        let lo = (first + 1).saturating_sub(self.window).max(real.0);
        (lo, hi.max(lo))
    }

    /// Keys `[lo, hi)` query `q` may see by position (the key mask still applies inside).
    fn row_range(&self, q: usize) -> (usize, usize) {
        let p = self.past + q;
        ((p + 1).saturating_sub(self.window), (p + 1).min(self.keys))
    }
}

/// First and one-past-last real key of every row (`(0, 0)` for a row with none).
pub(crate) fn real_ranges(mask: &[bool], batch: usize, keys: usize) -> Vec<(usize, usize)> {
    (0..batch)
        .map(|b| {
            let row = &mask[b * keys..(b + 1) * keys];
            match row.iter().position(|&m| m) {
                Some(first) => (first, keys - row.iter().rev().position(|&m| m).unwrap_or(0)),
                None => (0, 0),
            }
        })
        .collect()
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` with explicit row and column strides.
#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    // Every index the call reads or writes is inside the slices (checked here, so the unsafe
    // call below cannot go out of bounds).
    assert!(
        (m - 1) * dst_rs + n <= dst.len(),
        "gemm: destination too short"
    );
    assert!(
        (m - 1) * lhs_rs + (k - 1) * lhs_cs < lhs.len(),
        "gemm: left operand too short"
    );
    assert!(
        (k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len(),
        "gemm: right operand too short"
    );
    // SAFETY: the bounds are checked above; the slices do not overlap (distinct borrows).
    unsafe {
        gemm_raw(
            [m, n, k],
            dst.as_mut_ptr(),
            dst_rs,
            accumulate,
            (lhs.as_ptr(), lhs_rs, lhs_cs),
            (rhs.as_ptr(), rhs_rs, rhs_cs),
            parallel,
        );
    }
}

/// The gemm crate's `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` (row stride `dst_rs`, column stride
/// 1; each operand a pointer with its row and column strides), on every core or one.
///
/// # Safety
/// Every element the strides reach lies inside the memory behind its pointer, and `dst` does
/// not overlap the operands; `dst` may be uninitialized unless `accumulate` (gemm then does not
/// read it, and writes each of its `m * n` elements).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_raw(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    parallel: bool,
) {
    // SAFETY: as the caller guarantees.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            if parallel {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

/// e^x for x ≤ 0 (and -inf), branch-free so it vectorizes: Cephes' polynomial on the reduced
/// argument, 2^n by the exponent bits. Relative error about 2e-7; 0 below [`EXP_FLOOR`].
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to integer
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let xc = x.max(EXP_FLOOR);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * C1 - n * C2;
    let z = r * r;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * z + r + 1.0;
    let pow2 = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < EXP_FLOOR { 0.0 } else { y * pow2 }
}

const LANES: usize = 16;

#[inline(always)]
fn max_body(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &x in rest {
        m = m.max(x);
    }
    m
}

/// `row[j] = e^(row[j] - shift)`, returning the sum, in a fixed order whatever the SIMD width.
#[inline(always)]
fn exp_body(row: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let e = exp_neg(c[l] - shift);
            c[l] = e;
            acc[l] += e;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        let e = exp_neg(*x - shift);
        *x = e;
        sum += e;
    }
    acc.iter().sum::<f32>() + sum
}

macro_rules! multiversion {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v4($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { v3($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

// The same arithmetic on every path (Rust does not contract a * b + c into an FMA), so the
// results are the same bits whichever path runs.
multiversion!(row_max, max_body, (row: &[f32]) -> f32);
multiversion!(exp_shift_sum, exp_body, (row: &mut [f32], shift: f32) -> f32);

/// Scaled, masked scores of one query row in place: `scale * s` where the key is visible,
/// `-inf` elsewhere. `lo` is the slot of `row[0]`.
fn mask_row(row: &mut [f32], lo: usize, visible: (usize, usize), mask: &[bool], scale: f32) {
    for (j, s) in row.iter_mut().enumerate() {
        let slot = lo + j;
        *s = if slot >= visible.0 && slot < visible.1 && mask[slot] {
            *s * scale
        } else {
            f32::NEG_INFINITY
        };
    }
}

/// Raw scores of `rows` queries (`q`'s first rows) against keys `[lo, lo + span)` of one head:
/// `scores[i, j] = q[i] · k[lo + j]`, `[rows, span]`.
fn tile_scores(
    scores: &mut Vec<f32>,
    q: &[f32],
    k: &[f32],
    rows: usize,
    lo: usize,
    span: usize,
    d: usize,
) {
    scores.resize(rows * span, 0.0);
    gemm(
        rows,
        span,
        d,
        scores,
        span,
        false,
        q,
        (d, 1),
        &k[lo * d..],
        (1, d),
        false,
    );
}

/// Rows of a tile's score product for `rows` queries against `span` keys, in a call of
/// `several` queries (or one picked from such a call) or of a decode step's one. The gemm
/// crate computes a product of at most 256 elements (and a one-row product) of two operands
/// contiguous along the sum with other kernels than a larger one, whose sums round differently;
/// a query has more company in its tile in another call (a batch padded further, or the whole
/// sequence where this call has a cached prefix), so a call of several queries computes small
/// tiles with copies of their last query up to a larger product, and a query's scores are the
/// same bits in every call. A decode step (one query, not picked) keeps its own small product.
fn score_rows(rows: usize, span: usize, several: bool) -> usize {
    if !several {
        rows
    } else {
        rows.max(2).max(SMALL_PRODUCT / span.max(1) + 1)
    }
}

/// The gemm crate's largest product (`m * n`) for its dot-product kernels (gemm-common 0.19).
pub(super) const SMALL_PRODUCT: usize = 256;

/// Attention forward. `q` is `[batch, heads, queries, dim]`, `k`/`v` `[batch, kv_heads, keys,
/// dim]`, `mask` `[batch, keys]` (true: a real key). Writes `out` `[batch, heads, queries, dim]`
/// and `lse` `[batch, heads, queries]` (the log of each softmax's denominator with its max;
/// `-inf` for a query that sees no key, whose output is zeros).
pub(crate) fn attention_forward(
    q: &[f32],
    (k, k_block): (&[f32], usize),
    (v, v_block): (&[f32], usize),
    mask: &[bool],
    dims: &AttnDims,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (heads, kv_heads, t, s, d) = dims.sizes();
    let rep = heads / kv_heads;
    let real = real_ranges(mask, dims.batch, s);
    let group = |kv: usize| {
        let b = kv / kv_heads;
        (
            &k[kv * k_block..kv * k_block + s * d],
            &v[kv * v_block..kv * v_block + s * d],
            &mask[b * s..(b + 1) * s],
            real[b],
        )
    };
    if t == 1 && !dims.several && decode::applies(3, d) {
        // A decode step: the query heads of a key/value head together, its keys and values read
        // once for them all, in the arithmetic of gemm's calls below (`decode`).
        out.par_chunks_mut(rep * d)
            .zip(lse.par_chunks_mut(rep))
            .enumerate()
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(scores, padded), (kv, (out, lse))| {
                    let (k, v, mask, real) = group(kv);
                    let q = &q[kv * rep * d..(kv + 1) * rep * d];
                    let (lo, hi) = dims.span(0, 1, real);
                    let span = hi - lo;
                    if !decode::applies(span, d) {
                        for (r, (out, lse)) in out
                            .chunks_exact_mut(d)
                            .zip(lse.chunks_exact_mut(1))
                            .enumerate()
                        {
                            let q = &q[r * d..(r + 1) * d];
                            head_forward(q, (k, v, mask, real), dims, out, lse, scores, padded);
                        }
                        return;
                    }
                    scores.resize(rep * span, 0.0);
                    decode::scores(q, &k[lo * d..hi * d], d, scores);
                    for (row, lse) in scores.chunks_exact_mut(span).zip(lse.iter_mut()) {
                        *lse = probabilities(row, lo, dims.row_range(0), mask, dims.scale);
                    }
                    decode::output(scores, &v[lo * d..hi * d], d, out);
                },
            );
        return;
    }
    out.par_chunks_mut(t * d)
        .zip(lse.par_chunks_mut(t))
        .enumerate()
        // One score buffer (and one of padded queries) per rayon job, reused across the heads it
        // runs.
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(scores, padded), (bh, (out, lse))| {
                let (b, h) = (bh / heads, bh % heads);
                let q = &q[bh * t * d..(bh + 1) * t * d];
                let kv = group(b * kv_heads + h / rep);
                head_forward(q, kv, dims, out, lse, scores, padded);
            },
        );
}

/// One row's scaled, masked scores (keys from slot `lo`) turned into probabilities in place;
/// returns the log of the softmax's denominator with its max (`-inf`, and zeros, where the
/// query sees no key).
fn probabilities(
    row: &mut [f32],
    lo: usize,
    visible: (usize, usize),
    mask: &[bool],
    scale: f32,
) -> f32 {
    mask_row(row, lo, visible, mask, scale);
    let m = row_max(row);
    if m == f32::NEG_INFINITY {
        row.fill(0.0);
        return f32::NEG_INFINITY;
    }
    let sum = exp_shift_sum(row, m);
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|p| *p *= inv);
    m + sum.ln()
}

/// One head of one row: its queries `q` `[queries, dim]` against the row's keys and values of
/// its key/value head (with the row's key mask and real range), into `out` and `lse`.
#[allow(clippy::type_complexity)]
fn head_forward(
    q: &[f32],
    (k, v, mask, real): (&[f32], &[f32], &[bool], (usize, usize)),
    dims: &AttnDims,
    out: &mut [f32],
    lse: &mut [f32],
    scores: &mut Vec<f32>,
    padded: &mut Vec<f32>,
) {
    let d = dims.head_dim;
    for (q0, q1) in dims.query_tiles() {
        let rows = q1 - q0;
        let (lo, hi) = dims.span(q0, q1, real);
        let span = hi - lo;
        let out = &mut out[q0 * d..q1 * d];
        if span == 0 {
            out.fill(0.0);
            lse[q0..q1].fill(f32::NEG_INFINITY);
            continue;
        }
        let m = score_rows(rows, span, dims.several);
        if m > rows {
            // The tile's queries, then copies of its last one.
            padded.clear();
            padded.extend_from_slice(&q[q0 * d..q1 * d]);
            for _ in rows..m {
                padded.extend_from_within((rows - 1) * d..rows * d);
            }
            tile_scores(scores, padded, k, m, lo, span, d);
        } else {
            tile_scores(scores, &q[q0 * d..], k, rows, lo, span, d);
        }
        // Probabilities of every row, the copies' too (the product below takes two).
        for (i, row) in scores.chunks_exact_mut(span).enumerate() {
            let qi = q0 + i.min(rows - 1);
            lse[qi] = probabilities(row, lo, dims.row_range(qi), mask, dims.scale);
        }
        // The gemm crate's one-row product rounds differently too: a lone query of a call of
        // several goes with a copy of itself.
        let pv = if dims.several { rows.max(2) } else { rows };
        if pv > rows {
            padded.clear();
            padded.resize(pv * d, 0.0);
        }
        gemm(
            pv,
            d,
            span,
            if pv > rows {
                &mut padded[..]
            } else {
                &mut *out
            },
            d,
            false,
            scores,
            (span, 1),
            &v[lo * d..],
            (d, 1),
            false,
        );
        if pv > rows {
            out.copy_from_slice(&padded[..rows * d]);
        }
    }
}

/// Attention backward from the forward's inputs, its output and `lse`, and the output's
/// gradient `dout`; returns the gradients of `q`, `k` and `v` (shaped as they are). Nothing of
/// size queries x keys is kept beyond one tile of one head.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    mask: &[bool],
    dims: &AttnDims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (heads, kv_heads, t, s, d) = dims.sizes();
    let rep = heads / kv_heads;
    let real = real_ranges(mask, dims.batch, s);
    let mut dq = vec![0f32; q.len()];
    let mut dk = vec![0f32; k.len()];
    let mut dv = vec![0f32; v.len()];
    dq.par_chunks_mut(rep * t * d)
        .zip(dk.par_chunks_mut(s * d).zip(dv.par_chunks_mut(s * d)))
        .enumerate()
        // Probability and gradient buffers per rayon job, reused across the heads it runs.
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(p, dp), (bg, (dq, (dk, dv)))| {
                let b = bg / kv_heads;
                let k = &k[bg * s * d..(bg + 1) * s * d];
                let v = &v[bg * s * d..(bg + 1) * s * d];
                let mask = &mask[b * s..(b + 1) * s];
                for r in 0..rep {
                    let bh = bg * rep + r;
                    let head = bh * t * d..(bh + 1) * t * d;
                    let (q, out, dout) = (&q[head.clone()], &out[head.clone()], &dout[head]);
                    let lse = &lse[bh * t..(bh + 1) * t];
                    let dq = &mut dq[r * t * d..(r + 1) * t * d];
                    // D_i = dout_i · out_i: the softmax backward's row term.
                    let delta: Vec<f32> = out
                        .chunks_exact(d)
                        .zip(dout.chunks_exact(d))
                        .map(|(o, g)| o.iter().zip(g).map(|(a, b)| a * b).sum())
                        .collect();
                    for (q0, q1) in dims.query_tiles() {
                        let rows = q1 - q0;
                        let (lo, hi) = dims.span(q0, q1, real[b]);
                        let span = hi - lo;
                        if span == 0 {
                            continue;
                        }
                        dp.resize(rows * span, 0.0);
                        // P = softmax probabilities, recomputed from the scores and lse.
                        tile_scores(p, &q[q0 * d..], k, rows, lo, span, d);
                        for (i, row) in p.chunks_exact_mut(span).enumerate() {
                            let l = lse[q0 + i];
                            if l == f32::NEG_INFINITY {
                                row.fill(0.0);
                                continue;
                            }
                            mask_row(row, lo, dims.row_range(q0 + i), mask, dims.scale);
                            exp_shift_sum(row, l);
                        }
                        // dV[lo..hi] += P^T dout
                        gemm(
                            span,
                            d,
                            rows,
                            &mut dv[lo * d..],
                            d,
                            true,
                            p,
                            (1, span),
                            &dout[q0 * d..],
                            (d, 1),
                            false,
                        );
                        // dP = dout V^T
                        gemm(
                            rows,
                            span,
                            d,
                            dp,
                            span,
                            false,
                            &dout[q0 * d..],
                            (d, 1),
                            &v[lo * d..],
                            (1, d),
                            false,
                        );
                        // dS = P (dP - D) · scale (the scale of the scores folded in here)
                        for (i, (pr, dr)) in p
                            .chunks_exact(span)
                            .zip(dp.chunks_exact_mut(span))
                            .enumerate()
                        {
                            let di = delta[q0 + i];
                            for (g, &pv) in dr.iter_mut().zip(pr) {
                                *g = pv * (*g - di) * dims.scale;
                            }
                        }
                        // dQ[q0..q1] = dS K[lo..hi]
                        gemm(
                            rows,
                            d,
                            span,
                            &mut dq[q0 * d..q1 * d],
                            d,
                            false,
                            dp,
                            (span, 1),
                            &k[lo * d..],
                            (d, 1),
                            false,
                        );
                        // dK[lo..hi] += dS^T Q[q0..q1]
                        gemm(
                            span,
                            d,
                            rows,
                            &mut dk[lo * d..],
                            d,
                            true,
                            dp,
                            (1, span),
                            &q[q0 * d..],
                            (d, 1),
                            false,
                        );
                    }
                }
            },
        );
    (dq, dk, dv)
}

/// The logistic function through [`exp_neg`] of `-|x|` (no overflow on either side).
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_neg(-x.abs());
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 { r } else { e * r }
}

#[inline(always)]
fn swiglu_body(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g * sigmoid(g) * u;
    }
}

#[inline(always)]
fn swiglu_grad_body(dg: &mut [f32], du: &mut [f32], gate: &[f32], up: &[f32], grad: &[f32]) {
    let n = gate.len();
    let (dg, du, up, grad) = (&mut dg[..n], &mut du[..n], &up[..n], &grad[..n]);
    for i in 0..n {
        let g = gate[i];
        let s = sigmoid(g);
        du[i] = grad[i] * g * s;
        dg[i] = grad[i] * up[i] * s * (1.0 + g * (1.0 - s));
    }
}

multiversion!(swiglu_piece, swiglu_body, (out: &mut [f32], gate: &[f32], up: &[f32]) -> ());
multiversion!(
    swiglu_grad_piece,
    swiglu_grad_body,
    (dg: &mut [f32], du: &mut [f32], gate: &[f32], up: &[f32], grad: &[f32]) -> ()
);

/// Elements per parallel piece of an elementwise kernel.
pub(crate) const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// `piece(out, gate, up)` over matching pieces of [`ELEMENTWISE_CHUNK`] elements on every core,
/// into a fresh output of `gate`'s length (a SwiGLU product's pass).
fn gate_up_pass<T: Copy + Send + Sync>(
    gate: &[T],
    up: &[T],
    zero: T,
    piece: impl Fn(&mut [T], &[T], &[T]) + Sync + Send,
) -> Vec<T> {
    // Each piece zero-fills its own part of the output just before writing it (on the thread
    // that writes it, not all of it first on the calling thread).
    let mut out: Vec<T> = Vec::with_capacity(gate.len());
    out.spare_capacity_mut()[..gate.len()]
        .par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(gate.par_chunks(ELEMENTWISE_CHUNK))
        .zip(up.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|((o, g), u)| piece(filled(o, zero), g, u));
    // SAFETY: the pieces cover the first `gate.len()` elements, each written by `filled`.
    unsafe { out.set_len(gate.len()) };
    out
}

/// `piece` with every element set to `zero`, as initialized values.
pub(crate) fn filled<T: Copy>(piece: &mut [std::mem::MaybeUninit<T>], zero: T) -> &mut [T] {
    for x in piece.iter_mut() {
        x.write(zero);
    }
    // SAFETY: every element was written just above; `MaybeUninit<T>` has `T`'s layout.
    unsafe { &mut *(piece as *mut [std::mem::MaybeUninit<T>] as *mut [T]) }
}

/// `silu(g) * u`, elementwise.
pub(crate) fn swiglu_forward(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate_up_pass(gate, up, 0.0, swiglu_piece)
}

#[inline(always)]
fn swiglu_bf16_body(out: &mut [bf16], gate: &[bf16], up: &[bf16]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let g = g.to_f32();
        // Rounded where transformers' bf16 module rounds: the activation, then the product.
        let act = bf16::from_f32(g * sigmoid(g));
        *o = bf16::from_f32(act.to_f32() * u.to_f32());
    }
}

multiversion!(swiglu_bf16_piece, swiglu_bf16_body, (out: &mut [bf16], gate: &[bf16], up: &[bf16]) -> ());

/// `silu(g) * u` of bf16 values for inference: the activation rounded to bf16, then the product,
/// as a bf16 `act_fn(gate) * up` rounds.
pub(crate) fn swiglu_bf16_forward(gate: &[bf16], up: &[bf16]) -> Vec<bf16> {
    gate_up_pass(gate, up, bf16::ZERO, swiglu_bf16_piece)
}

/// The argument of libm's `expf` in burn-flex's logistic function of `x`: `-x` for `x >= 0`,
/// else `x` (so `-|x|`, and NaN as it came).
#[inline(always)]
fn burn_sigmoid_exp_arg(x: f32) -> f32 {
    if x >= 0.0 { -x } else { x }
}

/// burn-flex's logistic function of `x`, as its `sigmoid` computes each f32, given `e`, the
/// `expf` of [`burn_sigmoid_exp_arg`]`(x)`.
#[inline(always)]
fn burn_sigmoid(x: f32, e: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// `silu(g) * u`, elementwise, bit for bit burn-flex's composed `silu(gate) * up`: `g *
/// sigmoid(g)`, then times `u` (f32 inference, whose samples must not move). A piece's
/// exponentials come first, into the output, from [`expf_in_place`] (libm's `expf` in vector
/// lanes: the same bits at a fraction of a call per element).
pub(crate) fn swiglu_exact_forward(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate_up_pass(gate, up, 0.0, |o, g, u| {
        for (o, &g) in o.iter_mut().zip(g) {
            *o = burn_sigmoid_exp_arg(g);
        }
        expf_in_place(o);
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            let act = g * burn_sigmoid(g, *o);
            *o = act * u;
        }
    })
}

/// Rotary position embedding, `x` `[b, t, h, d]`, `cos`/`sin` `[b, t, d]` (one row per token),
/// out `[b, h, t, d]`: `x * cos + rotate_half(x) * sin` with `rotate_half(x) = [-x[d/2..],
/// x[..d/2]]`, each product rounded, then the sum (as the composed operations compute it).
pub(crate) fn rope_exact_forward(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    [b, t, h, d]: [usize; 4],
) -> Vec<f32> {
    let half = d / 2;
    let len = b * h * t * d;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    // One piece per (row, head): `t * d` outputs, zero-filled by the thread that then writes
    // them; a decoding step's pieces are small, so several go to a thread at once.
    let min_pieces = (ELEMENTWISE_CHUNK / (t * d).max(1)).max(1);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut((t * d).max(1))
        .with_min_len(min_pieces)
        .enumerate()
        .for_each(|(bh, o)| {
            let o = filled(o, 0.0);
            let (row, head) = (bh / h, bh % h);
            for ti in 0..t {
                let xi = &x[((row * t + ti) * h + head) * d..][..d];
                let c = &cos[(row * t + ti) * d..][..d];
                let s = &sin[(row * t + ti) * d..][..d];
                let o = &mut o[ti * d..][..d];
                for j in 0..d {
                    let rotated = if j < half {
                        -xi[j + half]
                    } else {
                        xi[j - half]
                    };
                    let a = xi[j] * c[j];
                    let r = rotated * s[j];
                    o[j] = a + r;
                }
            }
        });
    // SAFETY: the pieces cover the first `len` elements, each written by `filled`.
    unsafe { out.set_len(len) };
    out
}

/// RMSNorm of rows of `gamma.len()` values (`x` a whole number of them): each row's squares
/// summed by burn-flex's own row sum (`simd::kernels::sum_rows_f32`, the same vector dispatch,
/// so the same order of additions), the sum divided by the width, `eps` added, the square root
/// taken; each value divided by it, then times `gamma`: burn's `RmsNorm::forward` in f32 on
/// burn-flex, each operation rounded as there (the same bits), in one pass on every core.
pub(crate) fn rms_norm_exact_forward(x: &[f32], gamma: &[f32], eps: f32) -> Vec<f32> {
    let width = gamma.len();
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "rms_norm: {} values are not rows of {width}",
        x.len()
    );
    let len = x.len();
    let piece = (ELEMENTWISE_CHUNK / width).max(1) * width;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(piece)
        .zip(x.par_chunks(piece))
        .for_each_init(
            || vec![0f32; width],
            |squares, (o, x)| {
                let o = filled(o, 0.0);
                for (o, x) in o.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
                    for (s, &v) in squares.iter_mut().zip(x) {
                        *s = v * v;
                    }
                    let mut sum = [0f32];
                    burn::backend::flex::simd::kernels::sum_rows_f32(squares, &mut sum, 1, width);
                    let rms = (sum[0] / width as f32 + eps).sqrt();
                    for ((o, &v), &g) in o.iter_mut().zip(x).zip(gamma) {
                        *o = (v / rms) * g;
                    }
                }
            },
        );
    // SAFETY: the pieces cover the first `len` elements, each written by `filled`.
    unsafe { out.set_len(len) };
    out
}

/// Gradients of [`swiglu_forward`] for upstream `grad`: of `gate` and of `up`.
pub(crate) fn swiglu_backward(gate: &[f32], up: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dg = vec![0f32; gate.len()];
    let mut du = vec![0f32; gate.len()];
    dg.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(du.par_chunks_mut(ELEMENTWISE_CHUNK))
        .zip(gate.par_chunks(ELEMENTWISE_CHUNK))
        .zip(
            up.par_chunks(ELEMENTWISE_CHUNK)
                .zip(grad.par_chunks(ELEMENTWISE_CHUNK)),
        )
        .for_each(|(((dg, du), g), (u, d))| swiglu_grad_piece(dg, du, g, u, d));
    (dg, du)
}

/// Log-probability of each row's target under `softmax(hidden · weight^T)`: `hidden` is
/// `[rows, width]`, `weight` `[vocab, width]`. Returns the log-probabilities and each row's
/// log-sum-exp; the `[rows, vocab]` logits exist [`VOCAB_ROWS`] rows at a time.
pub(crate) fn token_logprob_forward(
    hidden: &[f32],
    weight: &[f32],
    targets: &[u32],
    width: usize,
    vocab: usize,
) -> (Vec<f32>, Vec<f32>) {
    let n = targets.len();
    let mut logp = vec![0f32; n];
    let mut lse = vec![0f32; n];
    let mut logits = Vec::new();
    for r0 in (0..n).step_by(VOCAB_ROWS) {
        let r1 = (r0 + VOCAB_ROWS).min(n);
        logits.resize((r1 - r0) * vocab, 0.0);
        gemm(
            r1 - r0,
            vocab,
            width,
            &mut logits,
            vocab,
            false,
            &hidden[r0 * width..],
            (width, 1),
            weight,
            (1, width),
            true,
        );
        logits
            .par_chunks_mut(vocab)
            .zip(logp[r0..r1].par_iter_mut().zip(lse[r0..r1].par_iter_mut()))
            .zip(targets[r0..r1].par_iter())
            .for_each(|((row, (lp, ls)), &tgt)| {
                let picked = row[tgt as usize];
                let m = row_max(row);
                let l = m + exp_shift_sum(row, m).ln();
                *ls = l;
                *lp = picked - l;
            });
    }
    (logp, lse)
}

/// Gradients of [`token_logprob_forward`] for the rows' upstream gradients `grad`: of `hidden`
/// (`[rows, width]`) and of `weight` (`[vocab, width]`), the logits recomputed a block of rows
/// at a time.
pub(crate) fn token_logprob_backward(
    hidden: &[f32],
    weight: &[f32],
    targets: &[u32],
    lse: &[f32],
    grad: &[f32],
    width: usize,
    vocab: usize,
) -> (Vec<f32>, Vec<f32>) {
    let n = targets.len();
    let mut dh = vec![0f32; n * width];
    let mut dw = vec![0f32; vocab * width];
    let mut dlogits = Vec::new();
    for r0 in (0..n).step_by(VOCAB_ROWS) {
        let r1 = (r0 + VOCAB_ROWS).min(n);
        let rows = r1 - r0;
        dlogits.resize(rows * vocab, 0.0);
        gemm(
            rows,
            vocab,
            width,
            &mut dlogits,
            vocab,
            false,
            &hidden[r0 * width..],
            (width, 1),
            weight,
            (1, width),
            true,
        );
        // d logp / d logit_j = [j = target] - softmax_j
        dlogits
            .par_chunks_mut(vocab)
            .zip(lse[r0..r1].par_iter())
            .zip(grad[r0..r1].par_iter().zip(targets[r0..r1].par_iter()))
            .for_each(|((row, &l), (&g, &tgt))| {
                exp_shift_sum(row, l);
                row.iter_mut().for_each(|p| *p *= -g);
                row[tgt as usize] += g;
            });
        // dH[r0..r1] = dlogits · W
        gemm(
            rows,
            width,
            vocab,
            &mut dh[r0 * width..],
            width,
            false,
            &dlogits,
            (vocab, 1),
            weight,
            (width, 1),
            true,
        );
        // dW += dlogits^T · H[r0..r1]
        gemm(
            vocab,
            width,
            rows,
            &mut dw,
            width,
            true,
            &dlogits,
            (1, vocab),
            &hidden[r0 * width..],
            (width, 1),
            true,
        );
    }
    (dh, dw)
}

/// Moves row `rows[i]` of a `[batch, heads, cap, dim]` buffer to row `i`, in place: its first
/// `slots` key slots of every head (`shape` is `[heads, cap, dim, slots]`). `rows` ascend, so
/// a row only moves down, onto rows already moved or dropped.
pub(crate) fn keep_rows<E: Copy>(buf: &mut [E], rows: &[usize], shape: [usize; 4]) {
    let [heads, cap, dim, slots] = shape;
    let (head, row) = (cap * dim, heads * cap * dim);
    for (i, &r) in rows.iter().enumerate() {
        debug_assert!(r >= i, "keep_rows: rows must ascend");
        if r == i {
            continue;
        }
        for hd in 0..heads {
            let src = r * row + hd * head;
            buf.copy_within(src..src + slots * dim, i * row + hd * head);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp_neg(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_neg(-100.0), 0.0);
        assert_eq!(exp_neg(0.0), 1.0);
    }

    #[test]
    fn reductions_are_the_same_on_every_path() {
        let row: Vec<f32> = (0..37).map(|i| -((i * 7919 % 101) as f32) / 9.0).collect();
        let mut a = row.clone();
        let mut b = row.clone();
        let sa = exp_shift_sum(&mut a, -0.5);
        let sb = exp_body(&mut b, -0.5);
        assert_eq!(sa.to_bits(), sb.to_bits());
        assert_eq!(a, b);
        assert_eq!(row_max(&row), max_body(&row));
    }

    /// A query's attention is the same bits in every call that computes it: the whole sequence
    /// at once, the rest after a cached prefix of any length, one row padded in a longer batch.
    #[test]
    fn a_query_does_not_depend_on_its_call() {
        let mut x = 12345u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1000) as f32 / 500.0 - 1.0
        };
        let d = 16;
        for (s, window) in [(400usize, usize::MAX), (200, 5), (150, 70)] {
            let q: Vec<f32> = (0..s * d).map(|_| rnd()).collect();
            let k: Vec<f32> = (0..s * d).map(|_| rnd()).collect();
            let v: Vec<f32> = (0..s * d).map(|_| rnd()).collect();
            let dims = |batch: usize, past: usize, t: usize, keys: usize| AttnDims {
                batch,
                heads: 1,
                kv_heads: 1,
                queries: t,
                keys,
                head_dim: d,
                past,
                window,
                several: t > 1,
                scale: 0.25,
            };
            let run = |q: &[f32], k: &[f32], v: &[f32], mask: &[bool], dims: AttnDims| {
                let mut out = vec![0f32; dims.batch * dims.queries * d];
                let mut lse = vec![0f32; dims.batch * dims.queries];
                let block = dims.keys * d;
                attention_forward(q, (k, block), (v, block), mask, &dims, &mut out, &mut lse);
                out
            };
            let whole = run(&q, &k, &v, &vec![true; s], dims(1, 0, s, s));
            let row = |out: &[f32], i: usize| out[i * d..(i + 1) * d].to_vec();
            // The rest after a cached prefix: first tiles of 1, 2, 3, 63 queries, spans past 256.
            for past in [1, 2, 5, 37, 61, 62, 63, 64, 65, 127, 191, 317, 319] {
                if past >= s {
                    continue;
                }
                let t = s - past;
                let out = run(&q[past * d..], &k, &v, &vec![true; s], dims(1, past, t, s));
                for i in 0..t {
                    assert_eq!(
                        row(&out, i),
                        row(&whole, past + i),
                        "s {s} past {past} query {i}"
                    );
                }
            }
            // A shorter sequence alone and as the first row of a batch padded further (its last
            // tile of 1 to 3 queries has 64 there).
            for len in [3, 5, 16, 17, 65, 66, 67, 129, 193] {
                if len + 40 > s {
                    continue;
                }
                let alone = run(
                    &q[..len * d],
                    &k[..len * d],
                    &v[..len * d],
                    &vec![true; len],
                    dims(1, 0, len, len),
                );
                let t = len + 40;
                let mut mask = vec![false; 2 * t];
                mask[..len].fill(true);
                mask[t..].fill(true);
                let cat = |x: &[f32]| [&x[..t * d], &x[..t * d]].concat();
                let batch = run(&cat(&q), &cat(&k), &cat(&v), &mask, dims(2, 0, t, t));
                for i in 0..len {
                    assert_eq!(row(&batch, i), row(&alone, i), "s {s} len {len} query {i}");
                }
            }
        }
    }
}
