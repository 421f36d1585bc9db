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
