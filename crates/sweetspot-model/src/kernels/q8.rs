//! 8-bit matrix products for inference on the CPU (`quantize = "q8_0"`): weights held as
//! llama.cpp's Q8_0 holds them (blocks of 32 along the input axis, one scale per block: the
//! block's largest magnitude over 127, values rounded to the nearest integer), activations
//! quantized the same way per row as each product starts, integer dot products per block, and
//! the blocks' sums added in f32 (`sum += dot as f32 * (x_scale * w_scale)`, one fused
//! multiply-add per block, in block order).
//!
//! On a CPU with AVX512-VNNI (runtime-detected) `vpdpbusd` multiplies 64 byte pairs into 16
//! 32-bit sums per instruction (four times the f32 FMA's products, on a quarter of the weight
//! bytes). It takes an unsigned operand, so activations are stored plus 128 and each weight
//! block carries `-128 * sum(q)`, which the integer sum starts from: the integer results are
//! exact either way. Elsewhere a scalar loop computes the same integers and the same f32 sums in
//! the same order, so both paths give the same bits (tested).
//!
//! Weights are packed once, per group of 16 output columns: for each block, 8 runs of 64 bytes
//! (4 consecutive inputs of each of the 16 columns), the 16 scales and the 16 corrections. Work
//! is split across the cores in tiles of rows and column groups, as [`super::bf16`] splits.

use rayon::prelude::*;

/// Inputs per quantization block (llama.cpp's `QK8_0`).
pub const BLOCK: usize = 32;
/// Output columns per packed group (one vector of 16 32-bit sums).
const COLS: usize = 16;
/// Column groups per tile.
const GROUPS_PER_TILE: usize = 4;
/// Rows per register block.
const MR: usize = 4;

/// Whether this CPU runs the products with AVX512-VNNI.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Where a float weight's `k` (input) axis runs.
pub use super::bf16::Layout;

/// A `[k, n]` weight in Q8_0 blocks along `k`, packed for [`matmul`].
#[derive(Clone)]
pub struct Q8Matrix {
    k: usize,
    n: usize,
    blocks: usize,
    /// `[group][block][quad][column][4]`.
    q: Vec<i8>,
    /// `[group][block][column]`.
    scale: Vec<f32>,
    /// `[group][block][column]`: `-128 * sum(q)` of the column's block.
    corr: Vec<i32>,
}

impl std::fmt::Debug for Q8Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Q8Matrix")
            .field("k", &self.k)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

/// One block's values rounded to Q8_0: the scale (the largest magnitude over 127) and the
/// integers `v * (1 / scale)` rounded to the nearest, ties to even (as llama.cpp's AVX path
/// rounds); all zeros for a block of zeros. On AVX512 where [`available`], else a scalar loop
/// with the same operations (the same bits).
fn quantize_block(v: &[f32; BLOCK], out: &mut [i8; BLOCK], simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is set only where the CPU has the features.
        return unsafe { avx512::quantize_block(v, out) };
    }
    let _ = simd;
    let amax = v.iter().fold(0f32, |a, x| a.max(x.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (o, x) in out.iter_mut().zip(v) {
        *o = (x * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    d
}

impl Q8Matrix {
    /// `w` (`[k, n]` or `[n, k]` row-major, see [`Layout`]) in Q8_0. `k` must be a multiple
    /// of [`BLOCK`].
    ///
    /// # Panics
    /// When `w` does not hold `k * n` values or `k` is not a multiple of [`BLOCK`].
    pub fn quantize(w: &[f32], k: usize, n: usize, layout: Layout) -> Self {
        assert_eq!(w.len(), k * n, "q8: w does not hold {k} x {n}");
        assert!(
            k.is_multiple_of(BLOCK),
            "q8: k = {k} is not a multiple of {BLOCK}"
        );
        let blocks = k / BLOCK;
        let groups = n.div_ceil(COLS);
        let mut q = vec![0i8; groups * blocks * BLOCK * COLS];
        let mut scale = vec![0f32; groups * blocks * COLS];
        let mut corr = vec![0i32; groups * blocks * COLS];
        let at = |c: usize, i: usize| match layout {
            Layout::KN => w[i * n + c],
            Layout::NK => w[c * k + i],
        };
        let per_group = blocks * BLOCK * COLS;
        let simd = available();
        q.par_chunks_mut(per_group)
            .zip(scale.par_chunks_mut(blocks * COLS))
            .zip(corr.par_chunks_mut(blocks * COLS))
            .enumerate()
            .for_each(|(g, ((q, scale), corr))| {
                let (mut ints, mut vals) = ([0i8; BLOCK], [0f32; BLOCK]);
                for col in 0..COLS {
                    let c = g * COLS + col;
                    if c >= n {
                        break;
                    }
                    for b in 0..blocks {
                        for (j, v) in vals.iter_mut().enumerate() {
                            *v = at(c, b * BLOCK + j);
                        }
                        let d = quantize_block(&vals, &mut ints, simd);
                        scale[b * COLS + col] = d;
                        corr[b * COLS + col] = -128 * ints.iter().map(|&v| v as i32).sum::<i32>();
                        for (j, &v) in ints.iter().enumerate() {
                            // quad j / 4, column col, byte j % 4
                            q[b * BLOCK * COLS + (j / 4) * 4 * COLS + col * 4 + j % 4] = v;
                        }
                    }
                }
            });
        Self {
            k,
            n,
            blocks,
            q,
            scale,
            corr,
        }
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes held (values, scales and corrections).
    pub fn bytes(&self) -> usize {
        self.q.len() + 4 * (self.scale.len() + self.corr.len())
    }

    /// The weight as the products see it (`q * scale`), `[k, n]` row-major: the f32 weight
    /// the quantization stands for.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.k * self.n];
        for c in 0..self.n {
            let (g, col) = (c / COLS, c % COLS);
            for b in 0..self.blocks {
                let s = self.scale[(g * self.blocks + b) * COLS + col];
                for j in 0..BLOCK {
                    let q = self.q[self.q_at(g, b) + (j / 4) * 4 * COLS + col * 4 + j % 4];
                    w[(b * BLOCK + j) * self.n + c] = q as f32 * s;
                }
            }
        }
        w
    }

    fn q_at(&self, group: usize, block: usize) -> usize {
        (group * self.blocks + block) * BLOCK * COLS
    }

    fn s_at(&self, group: usize, block: usize) -> usize {
        (group * self.blocks + block) * COLS
    }
}

/// Rows quantized per block: values plus 128 (`[m, k]`) and the scales (`[m, k / BLOCK]`).
struct Activations {
    q: Vec<u8>,
    scale: Vec<f32>,
    blocks: usize,
}

fn quantize_rows(x: &[f32], m: usize, k: usize, simd: bool) -> Activations {
    let blocks = k / BLOCK;
    let mut q = vec![0u8; m * k];
    let mut scale = vec![0f32; m * blocks];
    let row = |(r, (q, scale)): (usize, (&mut [u8], &mut [f32]))| {
        let mut ints = [0i8; BLOCK];
        for b in 0..blocks {
            let v = x[r * k + b * BLOCK..r * k + (b + 1) * BLOCK]
                .try_into()
                .expect("a block");
            scale[b] = quantize_block(v, &mut ints, simd);
            for (o, &i) in q[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(&ints) {
                *o = (i as i16 + 128) as u8;
            }
        }
    };
    if m * k >= 1 << 16 {
        q.par_chunks_mut(k)
            .zip(scale.par_chunks_mut(blocks))
            .enumerate()
            .for_each(row);
    } else {
        q.chunks_mut(k)
            .zip(scale.chunks_mut(blocks))
            .enumerate()
            .for_each(row);
    }
    Activations { q, scale, blocks }
}

/// `out [m, n] = x [m, k] · w`, both operands in Q8_0 (see the module's comment).
///
/// # Panics
/// When a slice's length does not match the sizes.
pub fn matmul(x: &[f32], w: &Q8Matrix, out: &mut [f32], m: usize) {
    matmul_with(x, w, out, m, available());
}

/// [`matmul`] on the SIMD path or the scalar one (tests compare them).
pub fn matmul_with(x: &[f32], w: &Q8Matrix, out: &mut [f32], m: usize, simd: bool) {
    let (k, n) = (w.k, w.n);
    assert_eq!(x.len(), m * k, "q8 matmul: x is not [{m}, {k}]");
    assert_eq!(out.len(), m * n, "q8 matmul: out is not [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    let simd = simd && available();
    let xq = quantize_rows(x, m, k, simd);
    let groups = n.div_ceil(COLS);
    let group_tiles = groups.div_ceil(GROUPS_PER_TILE);
    let rows = super::tile_rows(m, group_tiles, MR);
    let row_tiles = m.div_ceil(rows);
    let out_ptr = super::SyncPtr(out.as_mut_ptr());
    let tile = |t: usize| {
        let r0 = (t / group_tiles) * rows;
        let g0 = (t % group_tiles) * GROUPS_PER_TILE;
        let tile = Tile {
            rows: r0..(r0 + rows).min(m),
            groups: g0..(g0 + GROUPS_PER_TILE).min(groups),
        };
        // SAFETY: tiles write disjoint parts of `out`, which outlives the loop; the CPU has the
        // features when `simd` is set.
        unsafe {
            let out = out_ptr.get();
            #[cfg(target_arch = "x86_64")]
            if simd {
                return avx512::tile(&xq, w, out, &tile);
            }
            let _ = simd;
            scalar_tile(&xq, w, out, &tile);
        }
    };
    super::run_tiles(row_tiles * group_tiles, m * k * n, tile);
}

struct Tile {
    rows: std::ops::Range<usize>,
    groups: std::ops::Range<usize>,
}

/// The same sums as the SIMD path, one output at a time.
///
/// # Safety
/// `out` holds `[m, n]` and the tile is inside it.
unsafe fn scalar_tile(x: &Activations, w: &Q8Matrix, out: *mut f32, tile: &Tile) {
    let k = w.k;
    for r in tile.rows.clone() {
        for g in tile.groups.clone() {
            for col in 0..COLS {
                let c = g * COLS + col;
                if c >= w.n {
                    break;
                }
                let mut sum = 0f32;
                for b in 0..w.blocks {
                    let wq = &w.q[w.q_at(g, b)..];
                    let xb = &x.q[r * k + b * BLOCK..];
                    let mut dot = w.corr[w.s_at(g, b) + col];
                    for j in 0..BLOCK {
                        dot += xb[j] as i32 * wq[(j / 4) * 4 * COLS + col * 4 + j % 4] as i32;
                    }
                    let s = x.scale[r * x.blocks + b] * w.scale[w.s_at(g, b) + col];
                    sum = (dot as f32).mul_add(s, sum);
                }
                // SAFETY: inside `[m, n]` (the caller's promise).
                unsafe { *out.add(r * w.n + c) = sum };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Activations, BLOCK, COLS, MR, Q8Matrix, Tile};

    /// [`super::quantize_block`] in two vectors of 16.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_block(v: &[f32; BLOCK], out: &mut [i8; BLOCK]) -> f32 {
        // SAFETY: 32 values in, 32 bytes out.
        unsafe {
            let a = _mm512_loadu_ps(v.as_ptr());
            let b = _mm512_loadu_ps(v.as_ptr().add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
            let d = amax / 127.0;
            let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
            let round = |x: __m512| {
                let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm512_mul_ps(x, inv),
                );
                _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi)))
            };
            _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, round(a));
            _mm_storeu_si128(out.as_mut_ptr().add(16) as *mut __m128i, round(b));
            d
        }
    }

    /// # Safety
    /// The CPU has AVX512F, AVX512BW and AVX512-VNNI; `out` holds `[m, n]` and the tile is
    /// inside it.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile(x: &Activations, w: &Q8Matrix, out: *mut f32, tile: &Tile) {
        let mut g = tile.groups.start;
        while g < tile.groups.end {
            let pair = g + 1 < tile.groups.end;
            let mut r = tile.rows.start;
            while r < tile.rows.end {
                let rows = (tile.rows.end - r).min(MR);
                // SAFETY: as the caller's.
                unsafe {
                    match (rows, pair) {
                        (4, true) => block::<4, 2>(x, w, out, r, g),
                        (3, true) => block::<3, 2>(x, w, out, r, g),
                        (2, true) => block::<2, 2>(x, w, out, r, g),
                        (1, true) => block::<1, 2>(x, w, out, r, g),
                        (4, false) => block::<4, 1>(x, w, out, r, g),
                        (3, false) => block::<3, 1>(x, w, out, r, g),
                        (2, false) => block::<2, 1>(x, w, out, r, g),
                        _ => block::<1, 1>(x, w, out, r, g),
                    }
                }
                r += rows;
            }
            g += if pair { 2 } else { 1 };
        }
    }

    /// `R` rows times `G` column groups from row `r0` and group `g0`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn block<const R: usize, const G: usize>(
        x: &Activations,
        w: &Q8Matrix,
        out: *mut f32,
        r0: usize,
        g0: usize,
    ) {
        let k = w.k;
        let mut sums = [[_mm512_setzero_ps(); G]; R];
        for b in 0..w.blocks {
            // SAFETY: every index below is inside the packed arrays (`b < blocks`, the groups
            // and rows exist).
            unsafe {
                // Each integer sum starts from its block's correction (`-128 * sum(q)`).
                let corr: [__m512i; G] = std::array::from_fn(|gi| {
                    _mm512_loadu_si512(w.corr.as_ptr().add(w.s_at(g0 + gi, b)) as *const _)
                });
                let mut dots = [corr; R];
                let wq: [*const i8; G] =
                    std::array::from_fn(|gi| w.q.as_ptr().add(w.q_at(g0 + gi, b)));
                let xq: [*const u8; R] =
                    std::array::from_fn(|r| x.q.as_ptr().add((r0 + r) * k + b * BLOCK));
                for quad in 0..BLOCK / 4 {
                    let wv: [__m512i; G] = std::array::from_fn(|gi| {
                        _mm512_loadu_si512(wq[gi].add(quad * 4 * COLS) as *const _)
                    });
                    for r in 0..R {
                        let xv =
                            _mm512_set1_epi32((xq[r].add(quad * 4) as *const i32).read_unaligned());
                        for gi in 0..G {
                            dots[r][gi] = _mm512_dpbusd_epi32(dots[r][gi], xv, wv[gi]);
                        }
                    }
                }
                for gi in 0..G {
                    let ws = _mm512_loadu_ps(w.scale.as_ptr().add(w.s_at(g0 + gi, b)));
                    for r in 0..R {
                        let s = _mm512_mul_ps(_mm512_set1_ps(x.scale[(r0 + r) * x.blocks + b]), ws);
                        sums[r][gi] =
                            _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots[r][gi]), s, sums[r][gi]);
                    }
                }
            }
        }
        for (r, row) in sums.iter().enumerate() {
            for (gi, v) in row.iter().enumerate() {
                let c0 = (g0 + gi) * COLS;
                let live = (w.n - c0).min(COLS);
                let mask: __mmask16 = if live == COLS { !0 } else { (1u16 << live) - 1 };
                // SAFETY: the masked lanes are inside row `r0 + r` of `[m, n]`.
                unsafe { _mm512_mask_storeu_ps(out.add((r0 + r) * w.n + c0), mask, *v) };
            }
        }
    }
}
