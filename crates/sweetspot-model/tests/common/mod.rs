//! Helpers shared by the model crate's tests.

#![allow(dead_code)]

use std::path::PathBuf;

/// A fixture model folder under `tests/fixtures/models`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

/// The device the tests run on: `SWEETSPOT_TEST_DEVICE` (e.g. `wgpu` or `wgpu:cpu`), else `cpu`.
pub fn test_device() -> String {
    std::env::var("SWEETSPOT_TEST_DEVICE").unwrap_or_else(|_| "cpu".into())
}

/// A JSON array of token-id arrays.
pub fn id_lists(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// The largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The logits `[tokens, vocab]` (flattened) of one unpadded sequence, from position 0.
pub fn logits_alone(m: &sweetspot_model::Llama, ids: &[u32]) -> Vec<f32> {
    use burn::tensor::{Bool, Int, Tensor, TensorData};
    let d = m.device().clone();
    let t = ids.len();
    let tokens = ids.iter().map(|&i| i as i64).collect();
    m.forward(
        Tensor::<2, Int>::from_data(TensorData::new(tokens, [1, t]), &d),
        Tensor::<2, Int>::from_data(TensorData::new((0..t as i64).collect(), [1, t]), &d),
        Tensor::<2, Bool>::from_data(TensorData::new(vec![true; t], [1, t]), &d),
        None,
    )
    .unwrap()
    .into_data()
    .try_to_vec::<f32>()
    .unwrap()
}

/// Deterministic pseudo-random ids in `1..vocab`, none equal to `avoid`.
pub fn pseudo_ids(seed: u64, n: usize, vocab: u32, avoid: &[u32]) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = 1 + (x % u64::from(vocab - 1)) as u32;
        if !avoid.contains(&id) {
            out.push(id);
        }
    }
    out
}
