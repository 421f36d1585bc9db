//! sweetspot's CPU kernels (attention, SwiGLU's product, the target log-probability) against the
//! same computation composed of burn tensor operations:
//! outputs and gradients, on the shapes users have (grouped-query heads, left and right padding,
//! rows with no real key, a sliding window, a cache before the queries, several query tiles).
#![cfg(feature = "flex")]

use std::sync::Arc;

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use sweetspot_model::kernels::{self, AttnMask};

fn device() -> Device {
    Device::flex().autodiff()
}

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor<const D: usize>(shape: [usize; D], seed: u64, scale: f32) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, seed, scale), shape), &device()).require_grad()
}

fn allowed(mask: &AttnMask, keys: usize, b: usize, q: usize, s: usize) -> bool {
    let p = mask.past + q;
    mask.key_mask[b * keys + s] && s <= p && p - s < mask.window
}

/// The reference: repeated key/value heads, masked softmax, zeros for a query with no key.
fn reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttnMask) -> Tensor<4> {
    let [b, h, t, d] = q.dims();
    let [_, kvh, s, _] = k.dims();
    let rep = h / kvh;
    let k = k
        .unsqueeze_dim::<5>(2)
        .repeat_dim(2, rep)
        .reshape([b, h, s, d]);
    let v = v
        .unsqueeze_dim::<5>(2)
        .repeat_dim(2, rep)
        .reshape([b, h, s, d]);
    let mut allow = Vec::with_capacity(b * t * s);
    let mut any = Vec::with_capacity(b * t);
    for r in 0..b {
        for i in 0..t {
            let row: Vec<bool> = (0..s).map(|j| allowed(mask, s, r, i, j)).collect();
            any.push(if row.iter().any(|&a| a) { 1f32 } else { 0.0 });
            allow.extend(row);
        }
    }
    let masked = Tensor::<3, Bool>::from_data(TensorData::new(allow, [b, t, s]), &device())
        .bool_not()
        .unsqueeze_dim::<4>(1)
        .expand([b, h, t, s]);
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(1.0 / (d as f64).sqrt())
        .mask_fill(masked, -1.0e30);
    let any = Tensor::<3>::from_data(TensorData::new(any, [b, t, 1]), &device()).unsqueeze_dim(1);
    softmax(scores, 3).matmul(v) * any
}

fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

struct Case {
    name: &'static str,
    batch: usize,
    heads: usize,
    kv_heads: usize,
    queries: usize,
    past: usize,
    dim: usize,
    window: usize,
    /// Per row: (first real key, one past the last).
    real: Vec<(usize, usize)>,
}

fn run(case: &Case) {
    let keys = case.past + case.queries;
    let mut key_mask = vec![false; case.batch * keys];
    for (r, &(lo, hi)) in case.real.iter().enumerate() {
        for s in lo..hi {
            key_mask[r * keys + s] = true;
        }
    }
    let mask = AttnMask {
        key_mask: Arc::new(key_mask),
        past: case.past,
        window: case.window,
        picked: false,
    };
    let q = tensor([case.batch, case.heads, case.queries, case.dim], 1, 2.0);
    let k = tensor([case.batch, case.kv_heads, keys, case.dim], 2, 2.0);
    let v = tensor([case.batch, case.kv_heads, keys, case.dim], 3, 1.0);
    let upstream = Tensor::<4>::from_data(
        TensorData::new(
            values(case.batch * case.heads * case.queries * case.dim, 4, 1.0),
            [case.batch, case.heads, case.queries, case.dim],
        ),
        &device(),
    );

    let ours = kernels::attention(q.clone(), k.clone(), v.clone(), mask.clone());
    let theirs = reference(q.clone(), k.clone(), v.clone(), &mask);
    let forward = max_diff(ours.clone(), theirs.clone());
    assert!(forward < 2e-5, "{}: outputs differ by {forward}", case.name);

    let g1 = (ours * upstream.clone()).sum().backward();
    let g2 = (theirs * upstream).sum().backward();
    for (what, x) in [("q", &q), ("k", &k), ("v", &v)] {
        let a = x.grad(&g1).expect("kernel gradient");
        let b = x.grad(&g2).expect("reference gradient");
        let diff = (a - b).abs().max().into_scalar::<f32>();
        assert!(diff < 5e-5, "{}: d{what} differs by {diff}", case.name);
    }
}

#[test]
fn attention_matches_the_composed_operations() {
    let cases = [
        Case {
            name: "grouped heads, right padding, one query tile",
            batch: 3,
            heads: 4,
            kv_heads: 2,
            queries: 9,
            past: 0,
            dim: 8,
            window: usize::MAX,
            real: vec![(0, 9), (0, 5), (0, 1)],
        },
        Case {
            name: "left padding and a row with no real key",
            batch: 3,
            heads: 6,
            kv_heads: 2,
            queries: 11,
            past: 0,
            dim: 16,
            window: usize::MAX,
            real: vec![(4, 11), (0, 11), (0, 0)],
        },
        Case {
            name: "several query tiles, sliding window",
            batch: 2,
            heads: 3,
            kv_heads: 1,
            queries: 150,
            past: 0,
            dim: 8,
            window: 37,
            real: vec![(0, 150), (20, 150)],
        },
        Case {
            name: "a cache before the queries (decoding), padded in front",
            batch: 2,
            heads: 4,
            kv_heads: 4,
            queries: 1,
            past: 70,
            dim: 8,
            window: usize::MAX,
            real: vec![(0, 71), (33, 71)],
        },
        Case {
            name: "a cache, several queries, a window shorter than the cache",
            batch: 2,
            heads: 2,
            kv_heads: 1,
            queries: 70,
            past: 30,
            dim: 4,
            window: 25,
            real: vec![(0, 100), (5, 100)],
        },
    ];
    for case in &cases {
        run(case);
    }
}

#[test]
fn token_logprob_matches_log_softmax_and_gather() {
    // More rows than one block of the vocabulary projection, so the blocks meet.
    let (rows, width, vocab) = (300, 12, 50);
    let hidden = tensor([rows, width], 5, 1.5);
    let weight = tensor([vocab, width], 6, 1.5);
    let targets: Vec<u32> = (0..rows).map(|r| ((r * 31 + 7) % vocab) as u32).collect();
    let upstream = Tensor::<1>::from_data(TensorData::new(values(rows, 7, 1.0), [rows]), &device());

    let ours = kernels::token_logprob(hidden.clone(), weight.clone(), Arc::new(targets.clone()));
    let idx = Tensor::<2, Int>::from_data(
        TensorData::new(
            targets.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(),
            [rows, 1],
        ),
        &device(),
    );
    let theirs = log_softmax(hidden.clone().matmul(weight.clone().transpose()), 1)
        .gather(1, idx)
        .reshape([rows]);
    let diff = (ours.clone() - theirs.clone())
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(diff < 1e-5, "log-probabilities differ by {diff}");

    let g1 = (ours * upstream.clone()).sum().backward();
    let g2 = (theirs * upstream).sum().backward();
    for (what, x) in [("hidden", &hidden), ("weight", &weight)] {
        let a = x.grad(&g1).expect("kernel gradient");
        let b = x.grad(&g2).expect("reference gradient");
        let diff = (a - b).abs().max().into_scalar::<f32>();
        assert!(diff < 5e-5, "d{what} differs by {diff}");
    }
}

#[test]
fn swiglu_matches_silu_times_up() {
    // More elements than one parallel piece, values well into both tails of the sigmoid.
    let shape = [3, 70, 211];
    let gate = tensor(shape, 8, 12.0);
    let up = tensor(shape, 9, 2.0);
    let n = shape.iter().product();
    let upstream = Tensor::<3>::from_data(TensorData::new(values(n, 10, 1.0), shape), &device());
    let ours = kernels::swiglu(gate.clone(), up.clone());
    let theirs = burn::tensor::activation::silu(gate.clone()) * up.clone();
    let diff = (ours.clone() - theirs.clone())
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(diff < 1e-5, "outputs differ by {diff}");
    let g1 = (ours * upstream.clone()).sum().backward();
    let g2 = (theirs * upstream).sum().backward();
    for (what, x) in [("gate", &gate), ("up", &up)] {
        let a = x.grad(&g1).expect("kernel gradient");
        let b = x.grad(&g2).expect("reference gradient");
        let diff = (a - b).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "d{what} differs by {diff}");
    }
}

/// Gradients of one loss through all three kernels (and composed operations between them) on
/// `device`.
fn chain_grads(device: &Device) -> Vec<Vec<f32>> {
    let t = |shape: [usize; 4], seed: u64| {
        let n = shape.iter().product();
        Tensor::<4>::from_data(TensorData::new(values(n, seed, 1.5), shape), device).require_grad()
    };
    let (q, k, v) = (
        t([2, 4, 70, 8], 11),
        t([2, 2, 70, 8], 12),
        t([2, 2, 70, 8], 13),
    );
    let w = Tensor::<2>::from_data(TensorData::new(values(30 * 8, 14, 1.0), [30, 8]), device)
        .require_grad();
    let mut key_mask = vec![true; 140];
    key_mask[..9].fill(false);
    let mask = AttnMask {
        key_mask: Arc::new(key_mask),
        past: 0,
        window: usize::MAX,
        picked: false,
    };
    let a = kernels::attention(q.clone(), k.clone(), v.clone(), mask);
    let h = kernels::swiglu(a.clone(), a.exp() * 0.5);
    let rows = h.reshape([2 * 4 * 70, 8]).narrow(0, 0, 300);
    let targets: Vec<u32> = (0..300).map(|r| (r * 7 % 30) as u32).collect();
    let loss = kernels::token_logprob(rows, w.clone(), Arc::new(targets)).sum();
    let grads = loss.backward();
    [q, k, v]
        .iter()
        .map(|x| {
            x.grad(&grads)
                .expect("gradient")
                .into_data()
                .try_to_vec::<f32>()
        })
        .chain(std::iter::once(
            w.grad(&grads)
                .expect("gradient")
                .into_data()
                .try_to_vec::<f32>(),
        ))
        .map(|r| r.expect("f32"))
        .collect()
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients() {
    let plain = chain_grads(&Device::flex().autodiff());
    let checkpointed = chain_grads(&Device::flex().autodiff().gradient_checkpointing());
    assert_eq!(plain, checkpointed);
}

#[test]
fn kernels_apply_to_f32_on_flex_only() {
    assert!(kernels::applies(&Device::flex(), burn::tensor::DType::F32));
    assert!(kernels::applies(
        &Device::flex().autodiff(),
        burn::tensor::DType::F32
    ));
    assert!(!kernels::applies(
        &Device::flex(),
        burn::tensor::DType::BF16
    ));
}

/// Decoding reads keys and values as the filled slots of a cache buffer with room after them (a
/// view narrowed on the key axis, read in place): the same output, bit for bit, as from
/// contiguous copies of those slots, with and without autodiff.
#[test]
fn attention_reads_the_filled_slots_of_a_larger_buffer() {
    let (batch, heads, kv_heads, past, dim, room) = (3, 6, 2, 40, 8, 64);
    let keys = past + 1;
    let mut key_mask = vec![true; batch * keys];
    key_mask[keys..keys + 10].fill(false);
    let mask = AttnMask {
        key_mask: Arc::new(key_mask),
        past,
        window: usize::MAX,
        picked: false,
    };
    for device in [Device::flex(), Device::flex().autodiff()] {
        let make = |shape: [usize; 4], seed| {
            let n = shape.iter().product();
            Tensor::<4>::from_data(TensorData::new(values(n, seed, 2.0), shape), &device)
        };
        let q = make([batch, heads, 1, dim], 1);
        let k = make([batch, kv_heads, room, dim], 2).narrow(2, 0, keys);
        let v = make([batch, kv_heads, room, dim], 3).narrow(2, 0, keys);
        let copy = |x: &Tensor<4>| Tensor::<4>::from_data(x.to_data(), &device);
        let (kc, vc) = (copy(&k), copy(&v));
        let viewed = kernels::attention(q.clone(), k, v, mask.clone());
        let copied = kernels::attention(q, kc, vc, mask.clone());
        assert_eq!(
            viewed.into_data().try_to_vec::<f32>().unwrap(),
            copied.into_data().try_to_vec::<f32>().unwrap()
        );
    }
}

/// The bf16 product against sums in f64 of the same bf16 inputs: each output is the f64 sum
/// rounded to bf16, or as near it as f32 sums rounded once allow (the f32 sums differ from the
/// f64 ones by up to (k - 1) 2^-24 of the magnitudes summed, then half a bf16 step). On
/// shapes with every tail: rows not a multiple of the register block, odd depth, depth not a
/// multiple of 32, columns not a multiple of 64, one row, one column; both weight layouts.
#[test]
fn bf16_products_match_f64_sums_rounded_once() {
    use burn::tensor::bf16;
    use sweetspot_model::kernels::bf16::{Layout, matmul};
    let cases = [
        (1, 1, 1),
        (1, 576, 1536),
        (5, 7, 3),
        (7, 33, 65),
        (13, 64, 64),
        (64, 576, 192),
        (40, 1537, 70),
        (100, 96, 130),
    ];
    for (i, &(m, k, n)) in cases.iter().enumerate() {
        let bf = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<_>>();
        let x = bf(values(m * k, 10 + i as u64, 2.0));
        let w = bf(values(k * n, 20 + i as u64, 0.5));
        for layout in [Layout::KN, Layout::NK] {
            let mut out = vec![bf16::ZERO; m * n];
            matmul(&x, &w, &mut out, m, k, n, layout);
            for r in 0..m {
                for c in 0..n {
                    let (mut s, mut mag) = (0f64, 0f64);
                    for j in 0..k {
                        let wv = match layout {
                            Layout::KN => w[j * n + c],
                            Layout::NK => w[c * k + j],
                        };
                        let p = f64::from(x[r * k + j].to_f32()) * f64::from(wv.to_f32());
                        s += p;
                        mag += p.abs();
                    }
                    let want = bf16::from_f64(s);
                    let got = out[r * n + c];
                    // f32 sums in any order: within (k - 1) 2^-24 of the magnitudes summed;
                    // then rounded to bf16 (half a step, 2^-9 relative).
                    let bound = mag * (k - 1) as f64 * 2f64.powi(-24)
                        + f64::from(got.to_f32()).abs() * 2f64.powi(-8);
                    assert!(
                        got == want || (f64::from(got.to_f32()) - s).abs() <= bound,
                        "{layout:?} [{m}, {k}] x [{k}, {n}] at ({r}, {c}): {got} against {s} (rounded {want})"
                    );
                }
            }
        }
    }
}

/// Through the tensor API: the bf16 product of a linear layer's weight and of tied embeddings
/// equals burn's own bf16 product (f32 sums rounded once) to one bf16 step, and refuses what it
/// is not for (f32, autodiff).
#[test]
fn bf16_matmul_agrees_with_burns_product() {
    use burn::tensor::DType;
    use sweetspot_model::kernels::bf16::Layout;
    let d = Device::flex();
    let t = |shape: [usize; 2], seed| {
        Tensor::<2>::from_data(
            TensorData::new(values(shape[0] * shape[1], seed, 1.0), shape),
            &d,
        )
        .cast(DType::BF16)
    };
    let x = t([9, 130], 1).reshape([3, 3, 130]);
    let w = t([130, 70], 2);
    let theirs = x.clone().matmul(w.clone().unsqueeze::<3>());
    let ours = match kernels::matmul_bf16(&x, &w, Layout::KN) {
        Some(y) => y,
        None => {
            assert!(
                !kernels::bf16::available(),
                "refused on a CPU with AVX512-BF16"
            );
            eprintln!("no AVX512-BF16 on this CPU: the tensor path is not taken");
            return;
        }
    };
    assert_eq!(ours.dims(), [3, 3, 70]);
    assert_eq!(ours.dtype(), DType::BF16);
    let steps = |a: Tensor<3>, b: Tensor<3>| {
        let (a, b) = (
            a.into_data()
                .convert::<burn::tensor::bf16>()
                .try_to_vec::<burn::tensor::bf16>()
                .unwrap(),
            b.into_data()
                .convert::<burn::tensor::bf16>()
                .try_to_vec::<burn::tensor::bf16>()
                .unwrap(),
        );
        a.iter()
            .zip(&b)
            .map(|(p, q)| (i32::from(p.to_bits() as i16) - i32::from(q.to_bits() as i16)).abs())
            .max()
            .unwrap()
    };
    assert!(steps(ours, theirs.clone()) <= 1);
    // Tied embeddings: [n, k] used as stored.
    let wt = w.clone().transpose().into_data();
    let wt = Tensor::<2>::from_data(wt, &d).cast(DType::BF16);
    let ours = kernels::matmul_bf16(&x, &wt, Layout::NK).unwrap();
    assert!(steps(ours, theirs) <= 1);
    // Not for f32, nor under autodiff.
    assert!(kernels::matmul_bf16(&x.clone().cast(DType::F32), &w, Layout::KN).is_none());
    let ad = Device::flex().autodiff();
    let on_ad = |t: Tensor<2>| Tensor::<2>::from_data(t.into_data(), &ad).cast(DType::BF16);
    let (xa, wa) = (on_ad(x.reshape([9, 130])), on_ad(w));
    assert!(xa.device().is_autodiff());
    assert!(kernels::matmul_bf16(&xa, &wa, Layout::KN).is_none());
}

/// The bf16 SwiGLU product for inference rounds as torch's bf16 `silu(gate) * up` does (the
/// activation computed in f32 and rounded to bf16, then the product rounded): against that rule
/// computed in f64, equal on 99 values in 100 and within one bf16 step on all (its exponential is
/// a polynomial good to about 2^-23). It refuses what it is not for (f32, autodiff).
#[test]
fn bf16_swiglu_rounds_as_torch_does() {
    use burn::tensor::{DType, bf16};
    let d = Device::flex();
    let t = |seed| {
        Tensor::<2>::from_data(TensorData::new(values(37 * 301, seed, 6.0), [37, 301]), &d)
            .cast(DType::BF16)
    };
    let (gate, up) = (t(5), t(6));
    let ours = kernels::swiglu_bf16(&gate, &up).expect("bf16 on flex");
    assert_eq!(ours.dtype(), DType::BF16);
    let v = |x: Tensor<2>| {
        x.into_data()
            .convert::<bf16>()
            .try_to_vec::<bf16>()
            .unwrap()
    };
    let (a, g, u) = (v(ours), v(gate.clone()), v(up.clone()));
    let want: Vec<bf16> = g
        .iter()
        .zip(&u)
        .map(|(g, u)| {
            let g = f64::from(g.to_f32());
            let act = bf16::from_f64(g / (1.0 + (-g).exp()));
            bf16::from_f64(f64::from(act.to_f32()) * f64::from(u.to_f32()))
        })
        .collect();
    let steps: Vec<i32> = a
        .iter()
        .zip(&want)
        .map(|(p, q)| (i32::from(p.to_bits() as i16) - i32::from(q.to_bits() as i16)).abs())
        .collect();
    assert!(
        steps.iter().all(|&s| s <= 1),
        "{:?} bf16 steps apart",
        steps.iter().max()
    );
    let equal = steps.iter().filter(|&&s| s == 0).count();
    assert!(equal * 100 >= a.len() * 99, "{equal} of {} equal", a.len());
    assert!(
        kernels::swiglu_bf16(&gate.clone().cast(DType::F32), &up.clone().cast(DType::F32))
            .is_none()
    );
    let ad = Device::flex().autodiff();
    let on_ad = |x: Tensor<2>| Tensor::<2>::from_data(x.into_data(), &ad).cast(DType::BF16);
    assert!(kernels::swiglu_bf16(&on_ad(gate), &on_ad(up)).is_none());
}

/// Q8_0 rounding of one block as llama.cpp's AVX path does it (`quantize_row_q8_0`: the scale
/// the largest magnitude / 127, values times its inverse rounded to nearest, ties to even): the
/// scale and the integers.
fn q8_block(v: &[f32]) -> (f32, Vec<i32>) {
    let amax = v.iter().fold(0f32, |a, x| a.max(x.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    (
        d,
        v.iter()
            .map(|x| (x * id).round_ties_even() as i32)
            .collect(),
    )
}

/// The 8-bit product from its definition, written independently of the kernel: both operands
/// rounded to Q8_0 blocks of 32 along `k`, each block's integer dot product times the two
/// scales, added in block order with one fused multiply-add per block.
fn q8_reference(x: &[f32], w_kn: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            let mut sum = 0f32;
            for b in 0..k / 32 {
                let (sx, qx) = q8_block(&x[r * k + b * 32..r * k + b * 32 + 32]);
                let col: Vec<f32> = (0..32).map(|j| w_kn[(b * 32 + j) * n + c]).collect();
                let (sw, qw) = q8_block(&col);
                let dot: i32 = qx.iter().zip(&qw).map(|(a, b)| a * b).sum();
                sum = (dot as f32).mul_add(sx * sw, sum);
            }
            out[r * n + c] = sum;
        }
    }
    out
}

/// The 8-bit product equals its definition bit for bit, on the SIMD path (AVX512-VNNI, where the
/// CPU has it) and on the scalar one, in both weight layouts, for row and column counts that fill
/// no register block (1, 3, 5, 17 rows; 1, 15, 17, 33 columns) and for a block of zeros; and it
/// is within Q8_0's rounding of the f32 product.
#[test]
fn q8_products_equal_their_definition() {
    use kernels::q8::{Layout, Q8Matrix, matmul_with};
    for &(m, k, n) in &[
        (1, 32, 1),
        (3, 64, 15),
        (5, 96, 17),
        (17, 576, 33),
        (4, 128, 64),
        (100, 64, 200),
    ] {
        let x = values(m * k, 31 + m as u64, 2.0);
        let mut w_kn = values(k * n, 57 + n as u64, 0.5);
        // a block of zeros in the first column (scale 0)
        for j in 0..32 {
            w_kn[j * n] = 0.0;
        }
        let w_nk: Vec<f32> = (0..n * k).map(|i| w_kn[(i % k) * n + i / k]).collect();
        let expected = q8_reference(&x, &w_kn, m, k, n);
        for (layout, w) in [(Layout::KN, &w_kn), (Layout::NK, &w_nk)] {
            let q = Q8Matrix::quantize(w, k, n, layout);
            for simd in [false, true] {
                let mut out = vec![f32::NAN; m * n];
                matmul_with(&x, &q, &mut out, m, simd);
                let same = out
                    .iter()
                    .zip(&expected)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "[{m}, {k}] x [{k}, {n}] {layout:?} simd {simd}");
            }
        }
        // Within Q8_0's rounding of the f32 product: each operand's error is at most half a
        // step (its block's largest magnitude / 254), so an output errs by at most
        // sum |x| |w| / 127 (twice half a step, relative to the largest of the block).
        for r in 0..m {
            for c in 0..n {
                let exact: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w_kn[i * n + c] as f64)
                    .sum();
                let bound: f64 = (0..k / 32)
                    .map(|b| {
                        let xs = &x[r * k + b * 32..r * k + b * 32 + 32];
                        let ws: Vec<f32> = (0..32).map(|j| w_kn[(b * 32 + j) * n + c]).collect();
                        let ax = xs.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                        let aw = ws.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                        32.0 * ax * aw / 127.0
                    })
                    .sum();
                let got = expected[r * n + c] as f64;
                assert!(
                    (got - exact).abs() <= bound + 1e-4,
                    "row {r} column {c}: {got} against {exact} (bound {bound})"
                );
            }
        }
    }
}

/// The 8-bit path through burn tensors: a `[2, 3, k]` activation times a quantized weight equals
/// the kernel on the flat rows, with and without autodiff on the device (no gradient is asked).
#[test]
fn q8_matmul_on_tensors() {
    use kernels::q8::{Layout, Q8Matrix, matmul};
    let (k, n) = (64, 40);
    let x = values(6 * k, 5, 1.0);
    let w = values(k * n, 6, 0.3);
    let q = kernels::Q8Weight(Arc::new(Q8Matrix::quantize(&w, k, n, Layout::KN)));
    let mut flat = vec![0f32; 6 * n];
    matmul(&x, &q.0, &mut flat, 6);
    for device in [Device::flex(), Device::flex().autodiff()] {
        let t: Tensor<3> = Tensor::from_data(TensorData::new(x.clone(), [2, 3, k]), &device);
        let y = kernels::matmul_q8(&t, &q).expect("f32 on flex");
        assert_eq!(y.dims(), [2, 3, n]);
        assert_eq!(y.into_data().try_to_vec::<f32>().unwrap(), flat);
    }
    let bf: Tensor<3> = Tensor::from_data(TensorData::new(x, [2, 3, k]), &Device::flex());
    let bf = bf.cast(burn::tensor::FloatDType::BF16);
    assert!(kernels::matmul_q8(&bf, &q).is_none(), "bf16 is not taken");
}

#[test]
fn f32_inference_swiglu_is_burns_silu_times_up_to_the_bit() {
    // f32 samples must not move: the one-pass kernel gives burn-flex's composed `silu(gate) *
    // up` bit for bit, over the whole range (large and tiny, both signs, zeros, infinities and
    // NaN), on a shape of several parallel pieces.
    let device = Device::flex();
    let n = 3 * (1 << 14) + 77;
    let mut gate = values(n, 41, 12.0);
    let up = values(n, 42, 3.0);
    let special = [
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        88.8,
        -88.8,
        104.0,
        -104.0,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE * 0.5,
    ];
    for (i, s) in special.iter().enumerate() {
        gate[i * 997] = *s;
    }
    let shape = [3, n / 3 + 1, 1];
    let pad = |mut v: Vec<f32>| {
        v.resize(3 * (n / 3 + 1), 0.5);
        Tensor::<3>::from_data(TensorData::new(v, shape), &device)
    };
    let (g, u) = (pad(gate), pad(up));
    let ours = kernels::swiglu_exact(&g, &u).expect("applies to f32 on flex");
    let burns = burn::tensor::activation::silu(g.clone()) * u.clone();
    let a = ours.into_data().try_to_vec::<f32>().unwrap();
    let b = burns.into_data().try_to_vec::<f32>().unwrap();
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        // NaN is NaN (its payload is the hardware's business).
        assert!(
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
            "element {i}: {x} vs {y}"
        );
    }
    // Not for training: the composed operations there.
    let ad = Device::flex().autodiff();
    let ga = Tensor::<3>::from_data(g.into_data(), &ad);
    let ua = Tensor::<3>::from_data(u.into_data(), &ad);
    assert!(kernels::swiglu_exact(&ga, &ua).is_none());
}

#[test]
fn f32_inference_rope_is_the_composed_rotation_to_the_bit() {
    // `x' * cos + rotate_half(x') * sin` of `x' = x.swap_dims(1, 2)` as burn-flex composes it,
    // against the one-pass kernel: the same bits, on a prefill's shape (several tokens, pieces
    // bigger than one thread's share) and a decoding step's (one token, many small pieces), with
    // zeros of both signs and infinities among the values.
    let device = Device::flex();
    for (case, [b, t, h, d]) in [[2, 37, 3, 64], [64, 1, 9, 64], [3, 5, 2, 8]]
        .into_iter()
        .enumerate()
    {
        let mut xs = values(b * t * h * d, 50 + case as u64, 4.0);
        for (i, s) in [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1e-38, -1e-38]
            .iter()
            .enumerate()
        {
            xs[i * 7 + 1] = *s;
        }
        let table = |seed| {
            let mut v = values(b * t * d, seed, 1.0);
            v[3] = 0.0;
            v[4] = -0.0;
            Tensor::<4>::from_data(TensorData::new(v, [b, 1, t, d]), &device)
        };
        let (cos, sin) = (table(60 + case as u64), table(70 + case as u64));
        let x = Tensor::<4>::from_data(TensorData::new(xs, [b, t, h, d]), &device);
        let ours = kernels::rope_exact(&x, &cos, &sin).expect("applies to f32 on flex");
        assert_eq!(ours.dims(), [b, h, t, d]);
        let xt = x.clone().swap_dims(1, 2);
        let x1 = xt.clone().narrow(3, 0, d / 2);
        let x2 = xt.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let composed = xt * cos.clone() + rotated * sin.clone();
        let a = ours.into_data().try_to_vec::<f32>().unwrap();
        let c = composed.into_data().try_to_vec::<f32>().unwrap();
        for (i, (p, q)) in a.iter().zip(&c).enumerate() {
            assert!(
                p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()),
                "case {case} element {i}: {p} vs {q}"
            );
        }
        // Not under autodiff: the composed operations there.
        let ad = Device::flex().autodiff();
        let on = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &ad);
        assert!(kernels::rope_exact(&on(&x), &on(&cos), &on(&sin)).is_none());
    }
}

/// How many elements of two tensors of one shape differ in their bits.
fn bits_differ<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> usize {
    let a = a.into_data().try_to_vec::<f32>().unwrap();
    let b = b.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count()
}

#[test]
fn f32_inference_vocabulary_products_are_burns_to_the_bit() {
    // f32 samples must not move: the tied vocabulary projection `e · x^T` through
    // `kernels::matmul_nt_f32` (`e` read where it lies, rows in vector lanes, the output in the
    // logits' layout `[m, n]`) gives burn-flex's product bit for bit: every remainder of the
    // 16-row vectors and of the 3-vector and 8-column blocks, one depth block and several
    // (gemm's blocks of 512), zeros, tiny and huge values.
    let device = Device::flex();
    let mut tried = 0;
    for (k, n) in [(576, 1000), (1536, 129), (3, 65), (100, 4099)] {
        let mut e = values(n * k, 3 + k as u64, 0.2);
        for (i, s) in [0.0, -0.0, 1e-38, -3e30, 5e-8].iter().enumerate() {
            e[(i * 131) % (n * k)] = *s;
        }
        let e = Tensor::<2>::from_data(TensorData::new(e, [n, k]), &device);
        for m in [2, 3, 15, 16, 17, 33, 48, 49, 64, 100, 128, 200] {
            let x = Tensor::<2>::from_data(
                TensorData::new(values(m * k, 19 + m as u64, 1.5), [m, k]),
                &device,
            );
            let burns = e.clone().matmul(x.clone().transpose()).transpose();
            let Some(ours) = kernels::matmul_nt_f32(&e, &x) else {
                assert!(
                    !kernels::f32mm::applies_nt(m, k, n),
                    "[{n}, {k}] x [{m}, {k}]^T"
                );
                continue;
            };
            tried += 1;
            assert_eq!(ours.dims(), [m, n], "the logits' layout");
            let differ = bits_differ(ours, burns);
            assert_eq!(
                differ, 0,
                "[{n}, {k}] x [{m}, {k}]^T: {differ} outputs differ"
            );
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // All but [65, 3] x [2 or 3, 3]^T (gemm's small products).
        assert_eq!(tried, 46, "the kernel runs on an AVX-512 CPU");
    }
    // One row, and autodiff, are burn's (the kernel does not apply).
    let e = Tensor::<2>::from_data(TensorData::new(values(64 * 8, 1, 0.2), [64, 8]), &device);
    let x = Tensor::<2>::from_data(TensorData::new(values(8, 2, 1.0), [1, 8]), &device);
    assert!(kernels::matmul_nt_f32(&e, &x).is_none());
    let x2 = Tensor::<2>::from_data(TensorData::new(values(16, 2, 1.0), [2, 8]), &device);
    let on_autodiff =
        |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &Device::flex().autodiff());
    assert!(kernels::matmul_nt_f32(&on_autodiff(&e), &on_autodiff(&x2)).is_none());
}

#[test]
fn f32_inference_products_are_burns_to_the_bit() {
    // f32 samples must not move: a linear layer's product through `kernels::matmul_f32` (the
    // weight copied into panels per call) gives burn-flex's product bit for bit, for a decode
    // step's row counts up to 256 (every remainder of the 6-row register block; all rows in one
    // tile or split, as the column tiles are many or few for the threads), one depth block and
    // several (k = 1536: gemm's blocks of 512), with zeros, tiny and huge values among the inputs.
    let device = Device::flex();
    let mut tried = 0;
    for (k, n) in [
        (576, 192),
        (576, 1536),
        (1536, 576),
        (100, 128),
        (1000, 320),
    ] {
        let mut w = values(k * n, 7 + k as u64, 0.2);
        for (i, s) in [0.0, -0.0, 1e-38, -3e30, 5e-8].iter().enumerate() {
            w[i * 131] = *s;
        }
        let w = Tensor::<2>::from_data(TensorData::new(w, [k, n]), &device);
        for m in [2, 3, 5, 6, 7, 13, 16, 33, 64, 65, 96, 97, 128, 131, 256] {
            let x = values(m * k, 11 + m as u64, 1.5);
            let x = Tensor::<3>::from_data(TensorData::new(x, [1, m, k]), &device);
            let burns = x.clone().matmul(w.clone().unsqueeze());
            let ours = kernels::matmul_f32(&x, &w).expect("applies to f32 on flex");
            tried += usize::from(kernels::f32mm::applies(m, k, n));
            let differ = bits_differ(ours, burns);
            assert_eq!(
                differ, 0,
                "[{m}, {k}] x [{k}, {n}]: {differ} outputs differ"
            );
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        assert_eq!(
            tried, 75,
            "every product above runs the kernel on an AVX-512 CPU"
        );
    }
    // A weight that is a view (not contiguous) goes through burn's linear layer: the same values.
    let (k, n, m) = (576, 192, 8);
    let wt = Tensor::<2>::from_data(TensorData::new(values(n * k, 5, 0.2), [n, k]), &device);
    let w = wt.transpose();
    let x = Tensor::<3>::from_data(TensorData::new(values(m * k, 6, 1.0), [1, m, k]), &device);
    let ours = kernels::matmul_f32(&x, &w).expect("applies to f32 on flex");
    let burns = x.matmul(w.unsqueeze());
    assert_eq!(bits_differ(ours, burns), 0, "a weight that is a view");
    // Where it does not apply, burn's product runs: one row, narrow outputs, many rows.
    assert!(!kernels::f32mm::applies(1, 576, 1536));
    assert!(!kernels::f32mm::applies(8, 576, 64));
    assert!(!kernels::f32mm::applies(8, 576, 200));
    assert!(!kernels::f32mm::applies(257, 576, 1536));
}

#[test]
fn f32_inference_products_through_burns_gemm_calls_are_burns_to_the_bit() {
    // Products f32mm does not take run the gemm calls burn's linear layer makes
    // (`f32mm::burn_linear`), into an output of their own: every path of burn's split (one
    // product; the batches merged into the rows; kept batches one after the other on every core,
    // side by side, or on one core), a row-major and a transposed input, 2 and 3 axes, and a
    // bias added after, give burn's linear layer bit for bit.
    use burn::tensor::module::linear;
    let device = Device::flex();
    let weight = |k: usize, n: usize| {
        let mut w = values(k * n, 3 + (k * n) as u64, 0.2);
        for (i, s) in [0.0, -0.0, 1e-38, -3e30, 5e-8].iter().enumerate() {
            w[i * 97 % (k * n)] = *s;
        }
        Tensor::<2>::from_data(TensorData::new(w, [k, n]), &device)
    };
    let same = |ours: Tensor<3>, burns: Tensor<3>, what: &str| {
        assert_eq!(ours.dims(), burns.dims(), "{what}");
        let differ = bits_differ(ours, burns);
        assert_eq!(differ, 0, "{what}: {differ} outputs differ");
    };
    for [b, t, k, n] in [
        [1, 300, 576, 1536],  // one product on every core
        [1, 1, 576, 1536],    // one row: gemm's vector path
        [16, 100, 576, 1536], // merged into 1,600 rows
        [2, 7, 576, 200],     // merged, outputs not a multiple of 64
        [5, 1, 576, 64],      // a decode step's rows, 64 outputs
        [2, 160, 576, 1536],  // kept batches, one after the other on every core
        [5, 64, 576, 192],    // kept, side by side
        [9, 32, 128, 128],    // kept, side by side, each product small
        [3, 32, 100, 64],     // kept, one core
        [3, 96, 1536, 576],   // kept, several depth blocks
    ] {
        let w = weight(k, n);
        let x = values(b * t * k, (b * t + k) as u64, 1.5);
        let x = Tensor::<3>::from_data(TensorData::new(x, [b, t, k]), &device);
        let ours = kernels::matmul_f32(&x, &w).expect("applies to f32 on flex");
        same(
            ours,
            linear(x.clone(), w.clone(), None),
            &format!("[{b}, {t}, {k}] x [{k}, {n}]"),
        );
        // The same input as a view: `[b, k, t]` transposed.
        let xt = x.clone().swap_dims(1, 2).into_data();
        let xt = Tensor::<3>::from_data(xt, &device).swap_dims(1, 2);
        let ours = kernels::matmul_f32(&xt, &w).expect("applies to f32 on flex");
        same(
            ours,
            linear(xt, w.clone(), None),
            &format!("[{b}, {t}, {k}] as a view"),
        );
        // A bias, as `lora::linear_forward` adds it.
        let bias = Tensor::<1>::from_data(TensorData::new(values(n, 17, 3.0), [n]), &device);
        let ours = kernels::matmul_f32(&x, &w).expect("applies") + bias.clone().unsqueeze();
        same(
            ours,
            linear(x, w, Some(bias)),
            &format!("[{b}, {t}, {k}] with a bias"),
        );
    }
    // Two axes.
    let (w, x) = (weight(576, 192), values(300 * 576, 9, 1.0));
    let x = Tensor::<2>::from_data(TensorData::new(x, [300, 576]), &device);
    let ours = kernels::matmul_f32(&x, &w).expect("applies to f32 on flex");
    let burns = linear(x, w, None);
    same(
        ours.unsqueeze(),
        burns.unsqueeze(),
        "[300, 576] x [576, 192]",
    );
}

#[test]
fn f32_inference_rms_norm_is_burns_to_the_bit() {
    // burn's `RmsNorm::forward` as burn-flex composes it, against the one-pass kernel: the same
    // bits on a decoding step's shape (many one-token rows), a prefill's (pieces of several
    // rows, a last piece shorter), Qwen3's per-head norm (four axes, width 64) and widths that
    // are not a whole number of vector lanes; with zeros, tiny, huge and infinite values, an
    // all-zero row and a NaN.
    use burn::nn::RmsNormConfig;
    let device = Device::flex();
    for (case, shape) in [
        vec![128, 1, 576],
        vec![3, 37, 576],
        vec![2, 5, 4, 64],
        vec![7, 13],
        vec![5, 3, 1],
    ]
    .into_iter()
    .enumerate()
    {
        let width = *shape.last().unwrap();
        let n: usize = shape.iter().product();
        let mut xs = values(n, 80 + case as u64, 3.0);
        for (i, s) in [0.0, -0.0, 1e-30, -1e-38, 3e18, f32::INFINITY]
            .iter()
            .enumerate()
        {
            xs[(i * 37 + 5) % n] = *s;
        }
        if n > 2 * width {
            xs[width..2 * width].fill(0.0);
            xs[n - 1] = f32::NAN;
        }
        let eps = [1e-5, 1e-6, 1e-5, 1e-6, 1e-5][case];
        let mut norm = RmsNormConfig::new(width).with_epsilon(eps).init(&device);
        let g = values(width, 90 + case as u64, 2.0);
        norm.gamma = burn::module::Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(g, [width]),
            &device,
        ));
        let check = |ours: Vec<f32>, burns: Vec<f32>| {
            for (i, (p, q)) in ours.iter().zip(&burns).enumerate() {
                assert!(
                    p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()),
                    "case {case} element {i}: {p} vs {q}"
                );
            }
        };
        let data = TensorData::new(xs, shape.clone());
        match shape.len() {
            2 => {
                let x = Tensor::<2>::from_data(data, &device);
                let ours = kernels::rms_norm_exact(&x, &norm).expect("applies to f32 on flex");
                check(
                    ours.into_data().try_to_vec().unwrap(),
                    norm.forward(x).into_data().try_to_vec().unwrap(),
                );
            }
            3 => {
                let x = Tensor::<3>::from_data(data, &device);
                let ours = kernels::rms_norm_exact(&x, &norm).expect("applies to f32 on flex");
                check(
                    ours.into_data().try_to_vec().unwrap(),
                    norm.forward(x.clone()).into_data().try_to_vec().unwrap(),
                );
                // Not under autodiff: burn's module there.
                let ad = Device::flex().autodiff();
                let xa = Tensor::<3>::from_data(x.into_data(), &ad);
                let na = RmsNormConfig::new(width).init(&ad);
                assert!(kernels::rms_norm_exact(&xa, &na).is_none());
            }
            _ => {
                let x = Tensor::<4>::from_data(data, &device);
                let ours = kernels::rms_norm_exact(&x, &norm).expect("applies to f32 on flex");
                check(
                    ours.into_data().try_to_vec().unwrap(),
                    norm.forward(x).into_data().try_to_vec().unwrap(),
                );
            }
        }
    }
}
