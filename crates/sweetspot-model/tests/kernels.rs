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
