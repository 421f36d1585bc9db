//! Dequantization: the ggml tensor types this reader supports (F32, F16, BF16, Q8_0, Q4_0,
//! Q4_1, Q4_K, Q6_K), their block layouts, and their decoding to f32.
//!
//! Invariants:
//! - The decoders follow ggml's block layouts; `tests/gguf.rs` holds them to gguf-py's
//!   dequantization of every supported type (to within 1e-6 relative).
//! - [`dequantize`] is handed whole blocks: the container checks a tensor's element count
//!   against its type's block size before reading its bytes.

/// ggml tensor types this reader dequantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    BF16,
    /// 8-bit blocks of 32 with an f16 scale.
    Q8_0,
    /// 4-bit blocks of 32 with an f16 scale.
    Q4_0,
    /// 4-bit blocks of 32 with an f16 scale and minimum.
    Q4_1,
    /// 4-bit k-quant super-blocks of 256.
    Q4K,
    /// 6-bit k-quant super-blocks of 256.
    Q6K,
}

impl GgmlType {
    pub(super) fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    pub fn block(&self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q4K => (256, 144),
            Self::Q6K => (256, 210),
        }
    }
}

fn f16(b: &[u8]) -> f32 {
    half_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

/// IEEE half to f32.
pub fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if mant == 0 {
            sign
        } else {
            // subnormal: normalize
            let mut e = 127 - 15 + 1;
            let mut m = mant;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((m & 0x3ff) << 13)
        }
    } else if exp == 0x1f {
        sign | 0x7f80_0000 | (mant << 13)
    } else {
        sign | ((exp + 127 - 15) << 23) | (mant << 13)
    };
    f32::from_bits(bits)
}

/// Blocks decoded per task when a tensor is dequantized on every core (at least 32K elements a
/// task: large enough that scheduling costs nothing, small enough to spread a layer's matrices).
const TASK_ELEMENTS: usize = 1 << 15;

/// Dequantizes `n` elements of type `ty` from `raw` (whole blocks), on every core: each task
/// decodes its own blocks into its own part of the output, so the result is the same whichever
/// thread decodes what.
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let (per_block, block_bytes) = ty.block();
    let blocks = TASK_ELEMENTS.div_ceil(per_block);
    let mut out = vec![0f32; n];
    out.par_chunks_mut(blocks * per_block)
        .zip(raw.par_chunks(blocks * block_bytes))
        .for_each(|(out, raw)| decode(ty, raw, out));
    out
}

/// Decodes the whole blocks of `raw` into `out` (as many elements as the blocks hold).
fn decode(ty: GgmlType, raw: &[u8], out: &mut [f32]) {
    let (per_block, block_bytes) = ty.block();
    let blocks = out
        .chunks_exact_mut(per_block)
        .zip(raw.chunks_exact(block_bytes));
    match ty {
        GgmlType::F32 => {
            blocks.for_each(|(o, b)| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(o, b)| o[0] = f16(b)),
        GgmlType::BF16 => blocks.for_each(|(o, b)| {
            o[0] = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
        }),
        GgmlType::Q8_0 => blocks.for_each(|(o, blk)| {
            let d = f16(&blk[0..2]);
            for (o, &q) in o.iter_mut().zip(&blk[2..34]) {
                *o = q as i8 as f32 * d;
            }
        }),
        GgmlType::Q4_0 => blocks.for_each(|(o, blk)| {
            let d = f16(&blk[0..2]);
            let (lo, hi) = o.split_at_mut(16);
            for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&blk[2..18]) {
                *l = ((q & 0xf) as i32 - 8) as f32 * d;
                *h = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }),
        GgmlType::Q4_1 => blocks.for_each(|(o, blk)| {
            let d = f16(&blk[0..2]);
            let m = f16(&blk[2..4]);
            let (lo, hi) = o.split_at_mut(16);
            for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&blk[4..20]) {
                *l = (q & 0xf) as f32 * d + m;
                *h = (q >> 4) as f32 * d + m;
            }
        }),
        GgmlType::Q4K => blocks.for_each(|(o, blk)| {
            let d = f16(&blk[0..2]);
            let dmin = f16(&blk[2..4]);
            let scales = &blk[4..16];
            let qs = &blk[16..144];
            let scale_min = |j: usize| -> (u8, u8) {
                if j < 4 {
                    (scales[j] & 63, scales[j + 4] & 63)
                } else {
                    (
                        (scales[j + 4] & 0xf) | ((scales[j - 4] >> 6) << 4),
                        (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
                    )
                }
            };
            for (chunk, (q, o)) in qs.chunks_exact(32).zip(o.chunks_exact_mut(64)).enumerate() {
                let (sc1, m1) = scale_min(2 * chunk);
                let (sc2, m2) = scale_min(2 * chunk + 1);
                let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
                let (lo, hi) = o.split_at_mut(32);
                for ((l, h), &b) in lo.iter_mut().zip(hi).zip(q) {
                    *l = d1 * (b & 0xf) as f32 - min1;
                    *h = d2 * (b >> 4) as f32 - min2;
                }
            }
        }),
        GgmlType::Q6K => blocks.for_each(|(o, blk)| {
            let ql = &blk[0..128];
            let qh = &blk[128..192];
            let sc = &blk[192..208];
            let d = f16(&blk[208..210]);
            for (half, y) in o.chunks_exact_mut(128).enumerate() {
                let ql = &ql[64 * half..];
                let qh = &qh[32 * half..];
                let sc = &sc[8 * half..];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(half_to_f32(0x7bff), 65504.0);
    }
}
