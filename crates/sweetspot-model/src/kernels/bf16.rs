//! bf16 matrix products for inference on the CPU: both operands in bf16, products accumulated
//! in f32 and rounded once to bf16 (nearest even), the arithmetic transformers' bf16 linear
//! layers do. On a CPU with AVX512-BF16 (`vdpbf16ps`, runtime-detected) each instruction
//! multiplies 32 bf16 pairs into 16 f32 sums, twice the f32 FMA's rate, on half the weight
//! bytes; elsewhere a scalar loop computes the same sums (tests only: the model does not call
//! in here then, see [`available`]).
//!
//! Two layouts of the weight, both used as they are stored (nothing is packed or copied):
//! - [`Layout::KN`], `w [k, n]`, a linear layer's weight as burn holds it. Rows `2p` and `2p+1`
//!   are interleaved in registers (`vpunpck{l,h}wd`), so each 32-bit lane holds the pair of
//!   weights one output column needs for the pair of inputs `x[2p], x[2p+1]` broadcast beside
//!   it; the lanes come out in a fixed column order that the store puts back.
//! - [`Layout::NK`], `w [n, k]`, tied embeddings as the vocabulary projection: both operands
//!   run along `k`, one dot product per output, summed across lanes at the end.
//!
//! Work is split across the cores in tiles of rows and output columns (a decode step's few
//! rows still give every core columns of its own).

use burn::tensor::bf16;

/// Where the weight's `k` axis runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `w [k, n]`, row-major.
    KN,
    /// `w [n, k]`, row-major.
    NK,
}

/// Whether this CPU runs the products in AVX512-BF16.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Output columns per tile of a `KN` product (four vectors of 16 sums).
const NR: usize = 64;
/// Rows per register block of a `KN` product.
const MR: usize = 6;
/// Rows and weight rows per register block of an `NK` product.
const NK_R: usize = 4;
/// Output columns per tile of an `NK` product.
const NK_COLS: usize = 64;

/// `out [m, n] = x [m, k] · w` (see [`Layout`]), f32 sums rounded to bf16.
///
/// # Panics
/// When a slice's length does not match the sizes.
pub fn matmul(
    x: &[bf16],
    w: &[bf16],
    out: &mut [bf16],
    m: usize,
    k: usize,
    n: usize,
    layout: Layout,
) {
    assert_eq!(x.len(), m * k, "bf16 matmul: x is not [{m}, {k}]");
    assert_eq!(w.len(), k * n, "bf16 matmul: w does not hold {k} x {n}");
    assert_eq!(out.len(), m * n, "bf16 matmul: out is not [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    let cols = match layout {
        Layout::KN => NR,
        Layout::NK => NK_COLS,
    };
    let col_tiles = n.div_ceil(cols);
    // (a decode step's 192-column product has 3 column tiles: its rows are split)
    let block = match layout {
        Layout::KN => MR,
        Layout::NK => NK_R,
    };
    let rows = super::tile_rows(m, col_tiles, block);
    let row_tiles = m.div_ceil(rows);
    let out_ptr = super::SyncPtr(out.as_mut_ptr());
    let simd = available();
    let tile = |t: usize| {
        let (r0, c0) = ((t / col_tiles) * rows, (t % col_tiles) * cols);
        let tile = Tile {
            rows: r0..(r0 + rows).min(m),
            cols: c0..(c0 + cols).min(n),
            k,
            n,
        };
        // SAFETY: tiles cover disjoint parts of `out`, which outlives the loop; the CPU has
        // the features when `simd` is set.
        unsafe {
            let out = out_ptr.get();
            match (layout, simd) {
                #[cfg(target_arch = "x86_64")]
                (Layout::KN, true) => avx512::kn_tile(x, w, out, &tile),
                #[cfg(target_arch = "x86_64")]
                (Layout::NK, true) => avx512::nk_tile(x, w, out, &tile),
                _ => scalar_tile(x, w, out, &tile, layout),
            }
        }
    };
    super::run_tiles(row_tiles * col_tiles, m * n * k, tile);
}

/// A block of the output: its rows and columns, the depth and the output's row length.
struct Tile {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    k: usize,
    n: usize,
}

/// The same sums one product at a time (in `k` order, f32).
///
/// # Safety
/// `out` holds `[m, n]` and the tile lies inside it.
unsafe fn scalar_tile(x: &[bf16], w: &[bf16], out: *mut bf16, t: &Tile, layout: Layout) {
    for r in t.rows.clone() {
        let xr = &x[r * t.k..(r + 1) * t.k];
        for c in t.cols.clone() {
            let mut s = 0f32;
            for (i, xv) in xr.iter().enumerate() {
                let wv = match layout {
                    Layout::KN => w[i * t.n + c],
                    Layout::NK => w[c * t.k + i],
                };
                s += xv.to_f32() * wv.to_f32();
            }
            // SAFETY: (r, c) is inside `out` (the caller's promise).
            unsafe { *out.add(r * t.n + c) = bf16::from_f32(s) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NK_R, NR, Tile, bf16};

    /// f32 sums to bf16, rounded to nearest even as `bf16::from_f32` rounds.
    fn store(sums: &[f32], out: *mut bf16) {
        for (i, s) in sums.iter().enumerate() {
            // SAFETY: the caller passes room for `sums.len()` values.
            unsafe { *out.add(i) = bf16::from_f32(*s) };
        }
    }

    /// Two rows of `w` (`cols` of them from `p`, `p + ld`) interleaved: (lanes of cols
    /// 8j..8j+3, lanes of cols 8j+4..8j+7) for each 32 columns, as `[lo0, hi0, lo1, hi1]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[inline]
    unsafe fn pairs(
        a: *const bf16,
        b: Option<*const bf16>,
        m0: __mmask32,
        m1: __mmask32,
    ) -> [__m512bh; 4] {
        unsafe {
            let a0 = _mm512_maskz_loadu_epi16(m0, a.cast());
            let a1 = _mm512_maskz_loadu_epi16(m1, a.add(32).cast());
            let (b0, b1) = match b {
                Some(b) => (
                    _mm512_maskz_loadu_epi16(m0, b.cast()),
                    _mm512_maskz_loadu_epi16(m1, b.add(32).cast()),
                ),
                None => (_mm512_setzero_si512(), _mm512_setzero_si512()),
            };
            [
                std::mem::transmute::<__m512i, __m512bh>(_mm512_unpacklo_epi16(a0, b0)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_unpackhi_epi16(a0, b0)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_unpacklo_epi16(a1, b1)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_unpackhi_epi16(a1, b1)),
            ]
        }
    }

    fn mask(cols: usize) -> __mmask32 {
        if cols >= 32 {
            u32::MAX
        } else {
            (1u32 << cols) - 1
        }
    }

    /// A `KN` tile: blocks of [`MR`] rows by up to [`NR`] columns.
    ///
    /// # Safety
    /// The CPU has avx512f, avx512bw and avx512bf16; `out` holds `[m, n]` and the tile lies
    /// inside it.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn kn_tile(x: &[bf16], w: &[bf16], out: *mut bf16, t: &Tile) {
        let (k, n) = (t.k, t.n);
        let cols = t.cols.len();
        let (m0, m1) = (mask(cols), mask(cols.saturating_sub(32)));
        // Lane j of the lo (hi) sums is column 8(j/4) + j%4 (+ 4): back into column order.
        let idx_a = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
        let idx_b = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
        let wp = unsafe { w.as_ptr().add(t.cols.start) };
        let mut r = t.rows.start;
        while r < t.rows.end {
            let live = (t.rows.end - r).min(MR);
            // Rows past the tile's end repeat its last row (computed, never stored).
            let xrow: [*const bf16; MR] =
                std::array::from_fn(|i| unsafe { x.as_ptr().add((r + i.min(live - 1)) * k) });
            let mut acc = [[_mm512_setzero_ps(); 4]; MR];
            for p in 0..k / 2 {
                let v = unsafe { pairs(wp.add(2 * p * n), Some(wp.add((2 * p + 1) * n)), m0, m1) };
                for i in 0..MR {
                    let xv = unsafe { xrow[i].add(2 * p).cast::<i32>().read_unaligned() };
                    let xb =
                        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(xv)) };
                    for j in 0..4 {
                        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xb, v[j]);
                    }
                }
            }
            if k % 2 == 1 {
                // The last input alone: its pair's other half is zero on both sides.
                let v = unsafe { pairs(wp.add((k - 1) * n), None, m0, m1) };
                for i in 0..MR {
                    let xv = i32::from(unsafe { *xrow[i].add(k - 1) }.to_bits());
                    let xb =
                        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(xv)) };
                    for j in 0..4 {
                        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xb, v[j]);
                    }
                }
            }
            let mut sums = [0f32; NR];
            for (i, a) in acc.iter().enumerate().take(live) {
                unsafe {
                    _mm512_storeu_ps(sums.as_mut_ptr(), _mm512_permutex2var_ps(a[0], idx_a, a[1]));
                    _mm512_storeu_ps(
                        sums.as_mut_ptr().add(16),
                        _mm512_permutex2var_ps(a[0], idx_b, a[1]),
                    );
                    _mm512_storeu_ps(
                        sums.as_mut_ptr().add(32),
                        _mm512_permutex2var_ps(a[2], idx_a, a[3]),
                    );
                    _mm512_storeu_ps(
                        sums.as_mut_ptr().add(48),
                        _mm512_permutex2var_ps(a[2], idx_b, a[3]),
                    );
                }
                store(&sums[..cols], unsafe {
                    out.add((r + i) * n + t.cols.start)
                });
            }
            r += MR;
        }
    }

    /// An `NK` tile: blocks of [`NK_R`] rows by [`NK_R`] weight rows, 32 of `k` at a time.
    ///
    /// # Safety
    /// As [`kn_tile`].
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn nk_tile(x: &[bf16], w: &[bf16], out: *mut bf16, t: &Tile) {
        let (k, n) = (t.k, t.n);
        let tail = mask(k % 32);
        let mut c = t.cols.start;
        while c < t.cols.end {
            let live_c = (t.cols.end - c).min(NK_R);
            let wrow: [*const bf16; NK_R] =
                std::array::from_fn(|j| unsafe { w.as_ptr().add((c + j.min(live_c - 1)) * k) });
            let mut r = t.rows.start;
            while r < t.rows.end {
                let live_r = (t.rows.end - r).min(NK_R);
                let xrow: [*const bf16; NK_R] =
                    std::array::from_fn(|i| unsafe { x.as_ptr().add((r + i.min(live_r - 1)) * k) });
                let mut acc = [[_mm512_setzero_ps(); NK_R]; NK_R];
                for s in 0..k / 32 {
                    unsafe { nk_step(&mut acc, &xrow, &wrow, 32 * s, u32::MAX) };
                }
                if k % 32 != 0 {
                    unsafe { nk_step(&mut acc, &xrow, &wrow, k - k % 32, tail) };
                }
                for (i, a) in acc.iter().enumerate().take(live_r) {
                    let sums = unsafe { reduce4(a) };
                    store(&sums[..live_c], unsafe { out.add((r + i) * n + c) });
                }
                r += NK_R;
            }
            c += NK_R;
        }
    }

    /// The lane sums of four vectors at once (interleaving them as the sums go, instead of
    /// reducing each on its own).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[inline]
    unsafe fn reduce4(a: &[__m512; NK_R]) -> [f32; NK_R] {
        // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], and the same of c, d.
        let ab = _mm512_add_ps(
            _mm512_unpacklo_ps(a[0], a[1]),
            _mm512_unpackhi_ps(a[0], a[1]),
        );
        let cd = _mm512_add_ps(
            _mm512_unpacklo_ps(a[2], a[3]),
            _mm512_unpackhi_ps(a[2], a[3]),
        );
        // Per 128-bit lane: [sum of a's four, b's, c's, d's].
        let (ab, cd) = (_mm512_castps_pd(ab), _mm512_castps_pd(cd));
        let v = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(ab, cd)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(ab, cd)),
        );
        // Across the four 128-bit lanes.
        let v = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b0100_1110>(v, v));
        let v = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b1011_0001>(v, v));
        let mut out = [0f32; NK_R];
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), _mm512_castps512_ps128(v)) };
        out
    }

    /// 32 of `k` (those `m` marks) of a block of [`NK_R`] rows by [`NK_R`] weight rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[inline]
    unsafe fn nk_step(
        acc: &mut [[__m512; NK_R]; NK_R],
        xrow: &[*const bf16; NK_R],
        wrow: &[*const bf16; NK_R],
        off: usize,
        m: __mmask32,
    ) {
        let load = |p: *const bf16| unsafe {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(m, p.add(off).cast()))
        };
        let xs = [load(xrow[0]), load(xrow[1]), load(xrow[2]), load(xrow[3])];
        let ws = [load(wrow[0]), load(wrow[1]), load(wrow[2]), load(wrow[3])];
        for i in 0..NK_R {
            for j in 0..NK_R {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xs[i], ws[j]);
            }
        }
    }
}
