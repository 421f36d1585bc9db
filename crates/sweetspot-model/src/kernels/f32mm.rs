//! f32 products of inference's linear layers, `out [m, n] = x [m, k] · w [k, n]` (`w` as burn
//! holds a linear layer's weight), in exactly the arithmetic burn-flex's product (the gemm
//! crate) does on an AVX-512 CPU, so f32 results keep their bits, only faster for a decode
//! step's few rows.
//!
//! What gemm computes there (its AVX-512 f32 microkernel, 64 outputs of `n` by 6 rows, after it
//! swaps the row-major product into its column-major form): each output is a chain of fused
//! multiply-adds over `k` in order, from zero, cut into blocks of `kc` (from the cache sizes,
//! [`gemm_common::cache::kernel_params`]); the first block's sum is stored and each later block's
//! sum is added to it. For fewer than 97 rows gemm reads the weight where it lies, 256 bytes per
//! `k` strided by the row length, which the hardware prefetchers do not follow (measured: 60-70%
//! of this CPU's FMA rate at 64 rows, 45% at 16). Here each tile first copies its 64 columns of
//! the weight into a contiguous panel (software prefetch ahead of the copy) and runs the same
//! FMA chains over it in the same order: the same results, at 80-90% of the FMA rate.
//!
//! With more rows gemm copies the weight into panels itself (its `pack_lhs`, without prefetch:
//! 7.7% of an f32 generation profile at 128 rows) into buffers it allocates per call; here, where
//! a product has enough column tiles for every thread to get several, a tile takes all the rows
//! of its 64 columns, so each panel is copied once. `kc` depends on `k` and the caches only, not
//! on the row count, so the rows a tile takes do not change a bit.
//!
//! [`applies`] says where the arithmetic is known to be gemm's: AVX-512 (gemm's AVX-512 kernel
//! then runs: gemm is built with its `x86-v4` feature, which this crate's `flex` turns on), at
//! least 2 rows (one row takes gemm's vector-matrix path), `n` a multiple of 64 above 64
//! (smaller products take gemm's small-size path), `k >= 3`; and where this is measured no
//! slower: at most 256 rows, a decode step's (with more, a prefill's or a scoring batch's,
//! gemm's blocking keeps the rows in cache, where tiles here would read all of them once per 64
//! columns). Elsewhere [`burn_linear`] makes the gemm calls burn's linear layer makes, into an
//! output that is not first zero-filled and copied. `tests/kernels.rs` holds the products to
//! burn-flex's bits.

use super::{SyncPtr, run_tiles, tile_rows, tiles_wanted};

/// Output columns of a panel (gemm's 4 vectors of 16).
const COLS: usize = 64;
/// Rows of a register block (gemm's 6).
const ROWS: usize = 6;
/// The most rows [`matmul`] takes (see the module).
const MAX_ROWS: usize = 256;

/// Whether [`matmul`] computes an `[m, k] · [k, n]` product in gemm's arithmetic on this CPU.
pub fn applies(m: usize, k: usize, n: usize) -> bool {
    available() && (2..=MAX_ROWS).contains(&m) && k >= 3 && n > COLS && n.is_multiple_of(COLS)
}

/// Whether this CPU has AVX-512F, where the gemm crate runs its AVX-512 kernels (and the
/// kernels here that repeat their arithmetic apply).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The depth of gemm's blocks for this product (gemm's own computation of it, after its swap:
/// `n` outputs by `m` rows, its AVX-512 f32 register block of 64 by 6).
fn block_depth(m: usize, k: usize, n: usize) -> usize {
    gemm_common::cache::kernel_params(n, m, k, COLS, ROWS, size_of::<f32>())
        .kc
        .clamp(1, k)
}

/// `out [m, n] = x [m, k] · w [k, n]`, all row-major, in gemm's arithmetic (see the module).
///
/// # Panics
/// When a slice's length does not match the sizes, or where [`applies`] does not hold.
pub fn matmul(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(
        applies(m, k, n),
        "f32mm: [{m}, {k}] x [{k}, {n}] is not for this kernel"
    );
    assert_eq!(x.len(), m * k, "f32mm: x is not [{m}, {k}]");
    assert_eq!(w.len(), k * n, "f32mm: w is not [{k}, {n}]");
    assert_eq!(out.len(), m * n, "f32mm: out is not [{m}, {n}]");
    let kc = block_depth(m, k, n);
    let col_tiles = n / COLS;
    // All rows in one tile where the column tiles are enough for the threads (one copy of each
    // panel), else rows split as the other kernels split them.
    let rows = if col_tiles >= tiles_wanted() {
        m
    } else {
        tile_rows(m, col_tiles, ROWS)
    };
    let row_tiles = m.div_ceil(rows);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let tile = |t: usize| {
        let (r0, c0) = ((t / col_tiles) * rows, (t % col_tiles) * COLS);
        let r1 = (r0 + rows).min(m);
        PANEL.with_borrow_mut(|panel| {
            panel.resize(k * COLS, 0.0);
            // SAFETY: the CPU has AVX-512 (`applies`); the tile's rows and columns lie inside
            // `x`, `w` and `out` (checked sizes); tiles write disjoint parts of `out`, which
            // outlives the loop.
            unsafe {
                avx512::pack(w, n, k, c0, panel);
                avx512::tile(x, k, panel, out_ptr.get(), n, r0..r1, c0, kc);
            }
        });
    };
    run_tiles(row_tiles * col_tiles, m * n * k, tile);
}

/// Vocabulary columns of a tile of [`matmul_nt`].
const NT_TILE: usize = 64;
/// Columns of a register block of [`matmul_nt`].
const NT_COLS: usize = 8;
/// Rows of a register block of [`matmul_nt`]: three vectors of 16.
const NT_ROW_VECTORS: usize = 3;

/// Whether [`matmul_nt`] computes `e [n, k] · x [m, k]^T` in gemm's arithmetic on this CPU:
/// AVX-512, at least 2 rows of `x` (gemm takes one row's product down its vector-matrix path),
/// `k >= 3`, more than 64 columns and 256 outputs (gemm's small products, both operands
/// contiguous along the sum as here, take its dot-product kernels and other block depths).
pub fn applies_nt(m: usize, k: usize, n: usize) -> bool {
    available()
        && m >= 2
        && k >= 3
        && n > NT_TILE
        && m.checked_mul(n).is_some_and(|mn| mn > SMALL_OUTPUTS)
}

/// gemm's largest product (outputs) for its dot-product kernels (gemm-common 0.19).
const SMALL_OUTPUTS: usize = 256;

/// `out [m, n] = (e [n, k] · x [m, k]^T)^T`, all row-major (`e` an embedding matrix as held,
/// `x` a step's hidden rows: the tied vocabulary projection as `Llama::logits` computes it, and
/// in the logits' own layout, a row per hidden row), in exactly burn-flex's (gemm's) arithmetic
/// for `e.matmul(x.transpose())`: each output a chain of fused multiply-adds over `k` in order,
/// from zero, cut at gemm's block depth (the first block's sum stored, each later one's added).
/// Here `x` is transposed once (`[k][rows]`, rows in the vector lanes), each output column's row
/// of `e` is read where it lies, one element broadcast per step, and each register block is
/// stored transposed, straight into its rows: the output is neither first zero-filled (as
/// burn-flex's is) nor copied into the logits' layout afterwards (burn-flex's strided copy of a
/// transposed view, one element at a time).
///
/// # Panics
/// When a slice's length does not match the sizes, or where [`applies_nt`] does not hold.
pub fn matmul_nt(e: &[f32], x: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(
        applies_nt(m, k, n),
        "f32mm: [{n}, {k}] x [{m}, {k}]^T is not for this kernel"
    );
    assert_eq!(e.len(), n * k, "f32mm: e is not [{n}, {k}]");
    assert_eq!(x.len(), m * k, "f32mm: x is not [{m}, {k}]");
    // gemm's block depth depends on `k` and its register block only (not on `m` or `n`).
    let kc = block_depth(m, k, n);
    let lanes = m.div_ceil(16) * 16;
    let mut xt = vec![0f32; k * lanes];
    for (r, row) in x.chunks_exact(k).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            xt[i * lanes + r] = v;
        }
    }
    let mut out = Vec::<f32>::with_capacity(m * n);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let tiles = n.div_ceil(NT_TILE);
    let tile = |t: usize| {
        let (c0, c1) = (t * NT_TILE, ((t + 1) * NT_TILE).min(n));
        // SAFETY: the CPU has AVX-512 (`applies_nt`); the tile's columns are rows `c0..c1` of
        // `e` and columns `c0..c1` of `out` (`m * n` reserved), inside the checked sizes; tiles
        // write disjoint columns of `out`, every element of them.
        unsafe { avx512::tile_nt(e, k, &xt, lanes, m, out_ptr.get(), n, c0..c1, kc) };
    };
    run_tiles(tiles, m * n * k, tile);
    // SAFETY: the tiles wrote all `m * n` elements.
    unsafe { out.set_len(m * n) };
    out
}

/// burn-flex's threshold (multiply-adds) above which one product runs on every core.
const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;
/// burn-flex's threshold (multiply-adds of all batches) above which batches run side by side.
const BATCH_PARALLEL_THRESHOLD: usize = 128 * 128 * 128;
/// burn's row tile: batches of a multiple of it rows are kept as batches
/// (`MatmulTransformPolicy::BetterTiling`).
const ROW_TILE: usize = 32;

/// `x [dims] · w [k, n]` (`dims = [.., rows, k]`, all row-major, `w` as burn holds a linear
/// layer's weight) through exactly the gemm calls burn's linear layer makes on burn-flex
/// (`burn_backend`'s `linear`, then burn-flex's `matmul`): the same split into products (burn's
/// policy: the leading axes merged into the rows where that tiles better, else one product per
/// batch), each with the same arguments and the same threading. So the results are burn's to the
/// bit by construction; what differs is the output: burn-flex's `FlexTensor::empty` fills a byte
/// vector with zeros and copies it into an aligned buffer (cubecl's `Bytes::from_bytes_vec`)
/// before gemm overwrites it, work on the calling thread while the cores wait; here gemm writes
/// into fresh memory.
///
/// # Panics
/// When `dims` has fewer than two axes or a slice's length does not match the sizes.
pub fn burn_linear(x: &[f32], dims: &[usize], w: &[f32], n: usize) -> Vec<f32> {
    let rank = dims.len();
    assert!(rank >= 2, "burn_linear: x has {rank} axes, not at least 2");
    let (k, rows) = (dims[rank - 1], dims[rank - 2]);
    let batches: usize = dims[..rank - 2].iter().product();
    let m = batches * rows;
    assert_eq!(x.len(), m * k, "burn_linear: x is not {dims:?}");
    assert_eq!(w.len(), k * n, "burn_linear: w is not [{k}, {n}]");
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    let mut out = Vec::<f32>::with_capacity(m * n);
    let dst = SyncPtr(out.as_mut_ptr());
    // burn's policy (`MatmulTransformPolicy::BetterTiling` on a weight shared by every batch).
    let squarer = |merged: usize| merged.min(n) * rows.max(n) > rows.min(n) * merged.max(n);
    let merge = batches > 1 && !rows.is_multiple_of(ROW_TILE) && squarer(m);
    let product = |b: usize, rows: usize, parallel: bool| {
        // SAFETY: product `b` reads rows `b * rows..` of `x` and writes the same rows of `out`
        // (`m * n` reserved), inside the checked sizes; products write disjoint rows; gemm
        // does not read the destination (`read_dst` false) and writes every element of it.
        unsafe {
            super::cpu::gemm_raw(
                [rows, n, k],
                dst.get().add(b * rows * n),
                n,
                false,
                (x.as_ptr().add(b * rows * k), k, 1),
                (w.as_ptr(), n, 1),
                parallel,
            );
        }
    };
    if batches == 1 || merge {
        product(0, m, m * n * k >= PARALLEL_THRESHOLD);
    } else {
        // burn-flex's batched product: large products one after the other on every core,
        // batches side by side when there are enough of them, else one core.
        use rayon::prelude::*;
        let each = rows * n * k;
        let total = batches * each;
        let side_by_side = batches >= 4 && total >= BATCH_PARALLEL_THRESHOLD;
        if each >= PARALLEL_THRESHOLD && !side_by_side {
            (0..batches).for_each(|b| product(b, rows, true));
        } else if total >= BATCH_PARALLEL_THRESHOLD {
            (0..batches)
                .into_par_iter()
                .for_each(|b| product(b, rows, false));
        } else {
            (0..batches).for_each(|b| product(b, rows, false));
        }
    }
    // SAFETY: the products above wrote all `m * n` elements.
    unsafe { out.set_len(m * n) };
    out
}

thread_local! {
    /// A tile's copy of its 64 columns of the weight, `[k][64]`.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{COLS, NT_COLS, NT_ROW_VECTORS, ROWS};

    /// Weight rows ahead of the copy that are prefetched.
    const AHEAD: usize = 8;

    /// Columns `c0..c0 + 64` of `w [k, n]` into `panel [k][64]`.
    ///
    /// # Safety
    /// AVX-512F; `c0 + 64 <= n`, `w` holds `k * n`, `panel` `k * 64`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack(w: &[f32], n: usize, k: usize, c0: usize, panel: &mut [f32]) {
        let src = w.as_ptr().wrapping_add(c0);
        let dst = panel.as_mut_ptr();
        for i in 0..k {
            // SAFETY: row `i` (and the prefetched row, when inside `w`) of the 64 columns
            // lies in `w`; row `i` of the panel in `panel` (the caller's sizes).
            unsafe {
                if i + AHEAD < k {
                    let p = src.add((i + AHEAD) * n) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(p);
                    _mm_prefetch::<_MM_HINT_T0>(p.add(64));
                    _mm_prefetch::<_MM_HINT_T0>(p.add(128));
                    _mm_prefetch::<_MM_HINT_T0>(p.add(192));
                }
                let s = src.add(i * n);
                let d = dst.add(i * COLS);
                for v in 0..4 {
                    _mm512_storeu_ps(d.add(16 * v), _mm512_loadu_ps(s.add(16 * v)));
                }
            }
        }
    }

    /// Rows in one vector.
    const NT_LANES: usize = 16;

    /// Columns `cols` of `out [m, n]` (`x` times `e`'s rows `cols`), in blocks of `kc`, from
    /// `xt` (`x` transposed, `[k][lanes]`, its rows past `m` zeros).
    ///
    /// # Safety
    /// AVX-512F; `e` holds `n * k` with `cols` inside `n`, `xt` `k * lanes` (`lanes` the
    /// multiple of 16 from `m`), `out` `m * n`; nothing else writes columns `cols` of `out`
    /// meanwhile.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_nt(
        e: &[f32],
        k: usize,
        xt: &[f32],
        lanes: usize,
        m: usize,
        out: *mut f32,
        n: usize,
        cols: std::ops::Range<usize>,
        kc: usize,
    ) {
        let mut d0 = 0;
        while d0 < k {
            let d1 = (d0 + kc).min(k);
            let mut c = cols.start;
            while c < cols.end {
                let take = (cols.end - c).min(NT_COLS);
                // Rows of `e` for the block's columns; past the tile's last column, its last
                // row again (computed, not stored).
                let rows: [*const f32; NT_COLS] =
                    std::array::from_fn(|j| e.as_ptr().wrapping_add((c + j.min(take - 1)) * k));
                let mut r = 0;
                while r < m {
                    let vectors = (m - r).div_ceil(NT_LANES).min(NT_ROW_VECTORS);
                    // SAFETY: rows `r..r + 16 * vectors` lie in `xt` (`lanes` per depth),
                    // columns `c..c + take` in `out`, depths `d0..d1` in `e`'s rows (the
                    // caller's promise).
                    unsafe {
                        match vectors {
                            3 => block_nt::<3>(&rows, xt, lanes, m, out, n, c, take, r, d0..d1),
                            2 => block_nt::<2>(&rows, xt, lanes, m, out, n, c, take, r, d0..d1),
                            _ => block_nt::<1>(&rows, xt, lanes, m, out, n, c, take, r, d0..d1),
                        }
                    }
                    r += vectors * NT_LANES;
                }
                c += take;
            }
            d0 = d1;
        }
    }

    /// `V` vectors of 16 rows from row `r`, by the block's `take` columns from `c`, over depths
    /// `depth`: each output's fused multiply-adds in `k` order from zero, then stored (the first
    /// block) or added to what the earlier blocks stored; rows past `m` are not stored. The
    /// block's sums (a vector of rows per column) are stored transposed: through a copy on the
    /// stack, each row's `take` columns side by side in `out [m, n]`.
    ///
    /// # Safety
    /// As [`tile_nt`]'s.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_nt<const V: usize>(
        rows: &[*const f32; NT_COLS],
        xt: &[f32],
        lanes: usize,
        m: usize,
        out: *mut f32,
        n: usize,
        c: usize,
        take: usize,
        r: usize,
        depth: std::ops::Range<usize>,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NT_COLS]; V];
        let xp = xt.as_ptr();
        for i in depth.clone() {
            // SAFETY: depth `i` lies in `xt` and in each row of `e` (the caller's promise).
            unsafe {
                let xv: [__m512; V] =
                    std::array::from_fn(|v| _mm512_loadu_ps(xp.add(i * lanes + r + 16 * v)));
                for (j, row) in rows.iter().enumerate() {
                    let w = _mm512_set1_ps(*row.add(i));
                    for v in 0..V {
                        acc[v][j] = _mm512_fmadd_ps(xv[v], w, acc[v][j]);
                    }
                }
            }
        }
        let first = depth.start == 0;
        let mut sums = [[0f32; NT_LANES]; NT_COLS];
        for (v, acc) in acc.iter().enumerate() {
            for (s, &a) in sums.iter_mut().zip(acc) {
                // SAFETY: `s` holds 16 floats.
                unsafe { _mm512_storeu_ps(s.as_mut_ptr(), a) };
            }
            let r0 = r + 16 * v;
            for lane in 0..(m - r0).min(NT_LANES) {
                // SAFETY: row `r0 + lane` (below `m`), columns `c..c + take` lie in `out`.
                let o = unsafe { out.add((r0 + lane) * n + c) };
                for (j, s) in sums.iter().enumerate().take(take) {
                    // SAFETY: as above.
                    unsafe {
                        let a = s[lane];
                        *o.add(j) = if first { a } else { a + *o.add(j) };
                    }
                }
            }
        }
    }

    /// Rows `rows` of `out [.., n]`, columns `c0..c0 + 64`, from the panel, in blocks of `kc`.
    ///
    /// # Safety
    /// AVX-512F; `x` holds the rows' `k` inputs, `panel` `k * 64`, `out` the rows' `n` outputs;
    /// nothing else writes these outputs meanwhile.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile(
        x: &[f32],
        k: usize,
        panel: &[f32],
        out: *mut f32,
        n: usize,
        rows: std::ops::Range<usize>,
        c0: usize,
        kc: usize,
    ) {
        let mut d0 = 0;
        while d0 < k {
            let d1 = (d0 + kc).min(k);
            let mut r = rows.start;
            while r < rows.end {
                let take = (rows.end - r).min(ROWS);
                // SAFETY: rows `r..r + take` lie in `x` and `out` (the caller's promise).
                unsafe {
                    let xr = x.as_ptr().add(r * k);
                    let o = out.add(r * n + c0);
                    match take {
                        6 => block::<6>(xr, k, panel, o, n, d0..d1),
                        5 => block::<5>(xr, k, panel, o, n, d0..d1),
                        4 => block::<4>(xr, k, panel, o, n, d0..d1),
                        3 => block::<3>(xr, k, panel, o, n, d0..d1),
                        2 => block::<2>(xr, k, panel, o, n, d0..d1),
                        _ => block::<1>(xr, k, panel, o, n, d0..d1),
                    }
                }
                r += take;
            }
            d0 = d1;
        }
    }

    /// `R` rows by 64 outputs over depths `depth`: each output's fused multiply-adds in `k`
    /// order from zero, then stored (the first block) or added to what the earlier blocks
    /// stored.
    ///
    /// # Safety
    /// AVX-512F; `x` holds `R` rows of `k`, `out` `R` rows of `n` from its start (64 of them
    /// written), `panel` covers `depth`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const R: usize>(
        x: *const f32,
        k: usize,
        panel: &[f32],
        out: *mut f32,
        n: usize,
        depth: std::ops::Range<usize>,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        let p = panel.as_ptr();
        for i in depth.clone() {
            // SAFETY: depth `i` lies in the panel and in each row of `x` (the caller's promise).
            unsafe {
                let wp = p.add(i * COLS);
                let w = [
                    _mm512_loadu_ps(wp),
                    _mm512_loadu_ps(wp.add(16)),
                    _mm512_loadu_ps(wp.add(32)),
                    _mm512_loadu_ps(wp.add(48)),
                ];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xb = _mm512_set1_ps(*x.add(r * k + i));
                    for v in 0..4 {
                        acc[v] = _mm512_fmadd_ps(w[v], xb, acc[v]);
                    }
                }
            }
        }
        let first = depth.start == 0;
        for (r, acc) in acc.iter().enumerate() {
            for (v, &a) in acc.iter().enumerate() {
                // SAFETY: output row `r`, columns `16 v .. 16 v + 16` lie in `out`.
                unsafe {
                    let o = out.add(r * n + 16 * v);
                    let s = if first {
                        a
                    } else {
                        _mm512_add_ps(a, _mm512_loadu_ps(o))
                    };
                    _mm512_storeu_ps(o, s);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_nt(
        _: &[f32],
        _: usize,
        _: &[f32],
        _: usize,
        _: usize,
        _: *mut f32,
        _: usize,
        _: std::ops::Range<usize>,
        _: usize,
    ) {
        unreachable!("f32mm runs on x86-64 only (`applies_nt`)")
    }
    pub(super) unsafe fn pack(_: &[f32], _: usize, _: usize, _: usize, _: &mut [f32]) {
        unreachable!("f32mm runs on x86-64 only (`applies`)")
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile(
        _: &[f32],
        _: usize,
        _: &[f32],
        _: *mut f32,
        _: usize,
        _: std::ops::Range<usize>,
        _: usize,
        _: usize,
    ) {
        unreachable!("f32mm runs on x86-64 only (`applies`)")
    }
}
