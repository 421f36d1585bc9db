//! A decode step's attention products (one query per row) for the query heads that share a key
//! and value head, in exactly the arithmetic the gemm crate uses for them on an AVX-512 CPU, so
//! samples keep their bits; only faster: the keys and values of a row are read once for the
//! group's heads while they sit in the cache, the scores of 16 keys are reduced together, and
//! the output stays in registers.
//!
//! What gemm computes for one query (gemm-common 0.19, after it swaps the row-major product
//! into its column-major form):
//! - scores `q · k[j]` for at most 256 keys: its horizontal kernels: per key, a vector of 16
//!   lanes from zero, one fused multiply-add of `k[j]` and `q` per 16 elements of the head, in
//!   order; then the lanes summed as a tree (lane `l` plus lane `l + 8`, then `+ 4`, `+ 2`,
//!   `+ 1`);
//! - scores for more keys: its row-major vector-matrix path: per key, eight vectors of 16 lanes
//!   from zero for each 128 elements of the head (one fused multiply-add each), added as a
//!   tree (0+1, 2+3, 4+5, 6+7, then pairs, then the two halves), then one fused multiply-add per
//!   further 16 elements into that sum, then its lanes added one after the other, lane 0 to 15;
//! - the output `Σ_j p[j] v[j]` for at least 3 keys: its column-major vector-matrix path: the
//!   first key's product `v[0] * p[0]`, then one fused multiply-add per key in order, each
//!   output element on its own.
//!
//! [`applies`] says where that holds: AVX-512 (where gemm runs those kernels), at least 3 keys
//! (fewer take other paths for the output), a head of 64 or 128 elements. Elsewhere the caller
//! makes gemm's own calls. The unit tests below hold both products to the gemm crate's bits.

use super::cpu::SMALL_PRODUCT;
use super::f32mm::available;

/// Whether [`scores`] and [`output`] compute a decode step's products over `span` keys of a
/// head of `d` elements in gemm's arithmetic on this CPU.
pub(super) fn applies(span: usize, d: usize) -> bool {
    available() && span >= 3 && (d == 64 || d == 128)
}

/// `out[h][j] = q[h] · k[j]` for the `q.len() / d` query heads of a group and the keys of `k`
/// (`[span, d]`), `out` `[heads, span]`, in the arithmetic of gemm's path for `span` keys.
///
/// # Panics
/// Where [`applies`] does not hold, or a slice does not match the sizes.
pub(super) fn scores(q: &[f32], k: &[f32], d: usize, out: &mut [f32]) {
    let span = k.len() / d;
    assert!(
        applies(span, d),
        "decode: {span} keys of {d} are not for this kernel"
    );
    assert!(k.len() == span * d && q.len().is_multiple_of(d));
    assert_eq!(
        out.len(),
        q.len() / d * span,
        "decode: scores are not [heads, keys]"
    );
    // SAFETY: AVX-512F (`applies`); the sizes are checked above.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match (d, span <= SMALL_PRODUCT) {
            (64, true) => avx512::scores::<4, false>(q, k, out),
            (_, true) => avx512::scores::<8, false>(q, k, out),
            (64, false) => avx512::scores::<4, true>(q, k, out),
            (_, false) => avx512::scores::<8, true>(q, k, out),
        }
    }
}

/// `out[h] = Σ_j p[h][j] v[j]` for the group's heads (`p` `[heads, span]`, `v` `[span, d]`,
/// `out` `[heads, d]`), in gemm's column-major vector-matrix arithmetic.
///
/// # Panics
/// Where [`applies`] does not hold, or a slice does not match the sizes.
pub(super) fn output(p: &[f32], v: &[f32], d: usize, out: &mut [f32]) {
    let span = v.len() / d;
    assert!(
        applies(span, d),
        "decode: {span} keys of {d} are not for this kernel"
    );
    assert!(v.len() == span * d && p.len().is_multiple_of(span));
    assert_eq!(
        out.len(),
        p.len() / span * d,
        "decode: outputs are not [heads, d]"
    );
    // SAFETY: as above.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match d {
            64 => avx512::output::<4>(p, v, out),
            _ => avx512::output::<8>(p, v, out),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Keys whose scores are reduced together (one vector of 16 lanes).
    const KEYS: usize = 16;

    /// Lane `4k + m` of the last level holds key `4m + k`; this puts key `j` in lane `j`.
    const ORDER: [i32; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];

    /// Each of the 16 vectors' lanes summed as gemm's `reduce_sum` sums one vector (halves of
    /// 8, then 4, then 2, then 1 lane, each pair added once), the sums in one vector, key `j`'s
    /// in lane `j`. Additions pair the same lanes as gemm's, so each sum has its bits.
    #[target_feature(enable = "avx512f")]
    fn reduce16(acc: &[__m512; KEYS]) -> __m512 {
        // Lanes l + (l + 8): two keys per vector, eight partial sums each.
        let mut l1 = [_mm512_setzero_ps(); 8];
        for (i, out) in l1.iter_mut().enumerate() {
            let (a, b) = (acc[2 * i], acc[2 * i + 1]);
            let lo = _mm512_shuffle_f32x4::<0x44>(a, b);
            let hi = _mm512_shuffle_f32x4::<0xEE>(a, b);
            *out = _mm512_add_ps(lo, hi);
        }
        // Lanes l + (l + 4): four keys per vector, one per 128-bit quarter, four sums each.
        let mut l2 = [_mm512_setzero_ps(); 4];
        for (i, out) in l2.iter_mut().enumerate() {
            let (x, y) = (l1[2 * i], l1[2 * i + 1]);
            let lo = _mm512_shuffle_f32x4::<0x88>(x, y);
            let hi = _mm512_shuffle_f32x4::<0xDD>(x, y);
            *out = _mm512_add_ps(lo, hi);
        }
        // Lanes l + (l + 2) within each quarter: quarter k holds keys 4i + k and 4i + 4 + k.
        let mut l3 = [_mm512_setzero_ps(); 2];
        for (i, out) in l3.iter_mut().enumerate() {
            let (x, y) = (l2[2 * i], l2[2 * i + 1]);
            let lo = _mm512_shuffle_ps::<0x44>(x, y);
            let hi = _mm512_shuffle_ps::<0xEE>(x, y);
            *out = _mm512_add_ps(lo, hi);
        }
        // Lane 0 + lane 1 of each key: quarter k, lane m holds key 4m + k.
        let lo = _mm512_shuffle_ps::<0x88>(l3[0], l3[1]);
        let hi = _mm512_shuffle_ps::<0xDD>(l3[0], l3[1]);
        let sums = _mm512_add_ps(lo, hi);
        // SAFETY: `ORDER` holds 16 i32.
        let order = unsafe { _mm512_loadu_si512(ORDER.as_ptr().cast()) };
        _mm512_permutexvar_ps(order, sums)
    }

    /// Each of the 16 vectors' lanes added one after the other (lane 0, + lane 1, ..., + lane
    /// 15), as gemm's row-major vector-matrix path sums one, the sums in one vector, key `j`'s
    /// in lane `j`: the 16 vectors transposed in registers, then 15 additions of whole vectors.
    #[target_feature(enable = "avx512f")]
    fn sum_lanes16(acc: &[__m512; KEYS]) -> __m512 {
        // Pairs of rows interleaved, then fours: u[4i + m] holds, in its quarter q, lane
        // 4q + m of rows 4i..4i + 4.
        let mut u = [_mm512_setzero_ps(); KEYS];
        for i in 0..4 {
            let r = &acc[4 * i..4 * i + 4];
            let t0 = _mm512_unpacklo_ps(r[0], r[1]);
            let t1 = _mm512_unpackhi_ps(r[0], r[1]);
            let t2 = _mm512_unpacklo_ps(r[2], r[3]);
            let t3 = _mm512_unpackhi_ps(r[2], r[3]);
            u[4 * i] = _mm512_shuffle_ps::<0x44>(t0, t2);
            u[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(t0, t2);
            u[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t1, t3);
            u[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(t1, t3);
        }
        // Lane 4q + m of every row, in row order: quarters q of u[m], u[4 + m], u[8 + m],
        // u[12 + m].
        let mut col = [_mm512_setzero_ps(); KEYS];
        for m in 0..4 {
            let w0 = _mm512_shuffle_f32x4::<0x44>(u[m], u[4 + m]);
            let w1 = _mm512_shuffle_f32x4::<0xEE>(u[m], u[4 + m]);
            let w2 = _mm512_shuffle_f32x4::<0x44>(u[8 + m], u[12 + m]);
            let w3 = _mm512_shuffle_f32x4::<0xEE>(u[8 + m], u[12 + m]);
            col[m] = _mm512_shuffle_f32x4::<0x88>(w0, w2);
            col[4 + m] = _mm512_shuffle_f32x4::<0xDD>(w0, w2);
            col[8 + m] = _mm512_shuffle_f32x4::<0x88>(w1, w3);
            col[12 + m] = _mm512_shuffle_f32x4::<0xDD>(w1, w3);
        }
        let mut sum = col[0];
        for c in &col[1..] {
            sum = _mm512_add_ps(sum, *c);
        }
        sum
    }

    /// See [`super::scores`]; `C` vectors of 16 per head; `LONG`: gemm's row-major path (more
    /// than 256 keys), else its horizontal kernels.
    ///
    /// # Safety
    /// AVX-512F; `k` is `[span, 16 C]`, `q` `[heads, 16 C]`, `out` `[heads, span]`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores<const C: usize, const LONG: bool>(
        q: &[f32],
        k: &[f32],
        out: &mut [f32],
    ) {
        let d = 16 * C;
        let span = k.len() / d;
        let kp = k.as_ptr();
        for j0 in (0..span).step_by(KEYS) {
            let n = KEYS.min(span - j0);
            for (h, qh) in q.chunks_exact(d).enumerate() {
                // SAFETY: head `h` of `q` holds `d` values.
                let qv: [__m512; C] =
                    std::array::from_fn(|c| unsafe { _mm512_loadu_ps(qh.as_ptr().add(16 * c)) });
                let mut acc = [_mm512_setzero_ps(); KEYS];
                for (j, a) in acc.iter_mut().enumerate().take(n) {
                    // SAFETY: key `j0 + j < span` of `k` holds `d` values.
                    let kv = |c: usize| unsafe { _mm512_loadu_ps(kp.add((j0 + j) * d + 16 * c)) };
                    let mut c = 0;
                    if LONG {
                        // Eight vectors per 128 elements, added as a tree.
                        let mut part = [_mm512_setzero_ps(); 8];
                        while c + 8 <= C {
                            for (i, p) in part.iter_mut().enumerate() {
                                *p = _mm512_fmadd_ps(kv(c + i), qv[c + i], *p);
                            }
                            c += 8;
                        }
                        let p01 = _mm512_add_ps(part[0], part[1]);
                        let p23 = _mm512_add_ps(part[2], part[3]);
                        let p45 = _mm512_add_ps(part[4], part[5]);
                        let p67 = _mm512_add_ps(part[6], part[7]);
                        *a = _mm512_add_ps(_mm512_add_ps(p01, p23), _mm512_add_ps(p45, p67));
                    }
                    while c < C {
                        *a = _mm512_fmadd_ps(kv(c), qv[c], *a);
                        c += 1;
                    }
                }
                let sums = if LONG {
                    sum_lanes16(&acc)
                } else {
                    reduce16(&acc)
                };
                let row = &mut out[h * span + j0..h * span + j0 + n];
                // SAFETY: `row` holds `n <= 16` values; lanes past `n` are not written.
                unsafe {
                    _mm512_mask_storeu_ps(row.as_mut_ptr(), ((1u32 << n) - 1) as u16, sums);
                }
            }
        }
    }

    /// See [`super::output`]; `C` vectors of 16 per head.
    ///
    /// # Safety
    /// AVX-512F; `v` is `[span, 16 C]` with `span >= 1`, `p` `[heads, span]`, `out`
    /// `[heads, 16 C]`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output<const C: usize>(p: &[f32], v: &[f32], out: &mut [f32]) {
        let d = 16 * C;
        let span = v.len() / d;
        let vp = v.as_ptr();
        for (ph, oh) in p.chunks_exact(span).zip(out.chunks_exact_mut(d)) {
            let w = _mm512_set1_ps(ph[0]);
            // SAFETY: key 0 of `v` holds `d` values.
            let mut acc: [__m512; C] = std::array::from_fn(|c| {
                _mm512_mul_ps(unsafe { _mm512_loadu_ps(vp.add(16 * c)) }, w)
            });
            for (j, &pj) in ph.iter().enumerate().skip(1) {
                let w = _mm512_set1_ps(pj);
                for (c, a) in acc.iter_mut().enumerate() {
                    // SAFETY: key `j < span` of `v` holds `d` values.
                    let x = unsafe { _mm512_loadu_ps(vp.add(j * d + 16 * c)) };
                    *a = _mm512_fmadd_ps(x, w, *a);
                }
            }
            for (c, a) in acc.iter().enumerate() {
                // SAFETY: `oh` holds `d` values.
                unsafe { _mm512_storeu_ps(oh.as_mut_ptr().add(16 * c), *a) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of every magnitude and both signs, a few exact zeros (pseudo-random, fixed).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                if i % 29 == 0 {
                    return if i % 58 == 0 { 0.0 } else { -0.0 };
                }
                let m = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                let e = ((s >> 8) % 9) as i32 - 4;
                m * 2f32.powi(e)
            })
            .collect()
    }

    /// The gemm crate's call for one query, as the attention kernel makes it.
    fn gemm_scores(q: &[f32], k: &[f32], span: usize, d: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; span];
        // SAFETY: `q` holds `d`, `k` `span * d`, `out` `span` values.
        unsafe {
            super::super::cpu::gemm_raw(
                [1, span, d],
                out.as_mut_ptr(),
                span,
                false,
                (q.as_ptr(), d, 1),
                (k.as_ptr(), 1, d),
                false,
            );
        }
        out
    }

    fn gemm_output(p: &[f32], v: &[f32], span: usize, d: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; d];
        // SAFETY: `p` holds `span`, `v` `span * d`, `out` `d` values.
        unsafe {
            super::super::cpu::gemm_raw(
                [1, d, span],
                out.as_mut_ptr(),
                d,
                false,
                (p.as_ptr(), span, 1),
                (v.as_ptr(), d, 1),
                false,
            );
        }
        out
    }

    /// Every key count from 3 to 256 (every remainder of 16, gemm's horizontal kernels) and
    /// beyond (its row-major path), heads of 64 and 128, one to four query heads per group: the
    /// scores and the outputs are gemm's to the bit.
    #[test]
    fn decode_products_are_gemms_to_the_bit() {
        if !available() {
            eprintln!("no AVX-512 here: gemm's own calls run, nothing to compare");
            return;
        }
        let mut tried = 0;
        for d in [64, 128] {
            for span in (3..=300).chain([511, 512, 700, 1029]) {
                let heads = 1 + span % 4;
                let q = values(heads * d, span as u64);
                let k = values(span * d, 7 * span as u64 + d as u64);
                let v = values(span * d, 11 * span as u64 + d as u64);
                let mut got = vec![f32::NAN; heads * span];
                scores(&q, &k, d, &mut got);
                let p: Vec<f32> = values(heads * span, 13 * span as u64)
                    .into_iter()
                    .map(f32::abs)
                    .collect();
                let mut out = vec![f32::NAN; heads * d];
                output(&p, &v, d, &mut out);
                for h in 0..heads {
                    let want = gemm_scores(&q[h * d..(h + 1) * d], &k, span, d);
                    let row = &got[h * span..(h + 1) * span];
                    for (j, (a, b)) in row.iter().zip(&want).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "score d {d} span {span} head {h} key {j}"
                        );
                    }
                    let want = gemm_output(&p[h * span..(h + 1) * span], &v, span, d);
                    let row = &out[h * d..(h + 1) * d];
                    for (c, (a, b)) in row.iter().zip(&want).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "output d {d} span {span} head {h} at {c}"
                        );
                    }
                }
                tried += 1;
            }
        }
        assert_eq!(tried, 2 * 302);
    }

    #[test]
    fn applies_only_where_gemms_paths_are_these() {
        for (span, d) in [(2, 64), (1, 128), (16, 80), (16, 256), (0, 64)] {
            assert!(!applies(span, d), "{span} keys of {d}");
        }
        assert_eq!(applies(3, 64), available());
        assert_eq!(applies(256, 128), available());
        assert_eq!(applies(4096, 64), available());
    }
}
