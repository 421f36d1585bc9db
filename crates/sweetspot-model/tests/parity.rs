//! Numerical parity with transformers on tiny random-weight models written by
//! `scripts/make_model_fixtures.py` (Llama family) and `scripts/make_family_fixtures.py` (Qwen2,
//! Qwen3). Tolerance: 1e-4 absolute on logits in f32 (the models'
//! logits are of order 1), exact greedy tokens.

mod common;

use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::{fixture, id_lists, logits_alone, max_abs_diff, test_device};
use sweetspot_model::{KvCache, Llama, resolve_device};

const TOL: f32 = 1e-4;

struct Reference {
    prompts: Vec<Vec<u32>>,
    greedy: Vec<Vec<u32>>,
    tensors: Vec<u8>,
}

impl Reference {
    fn load(name: &str) -> Self {
        let dir = fixture(name);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        Self {
            prompts: id_lists(&json["prompts"]),
            greedy: id_lists(&json["greedy"]),
            tensors: std::fs::read(dir.join("reference.safetensors")).unwrap(),
        }
    }

    fn tensor(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = safetensors::SafeTensors::deserialize(&self.tensors).unwrap();
        let t = st.tensor(name).unwrap();
        let data = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.shape().to_vec(), data)
    }
}

fn model(name: &str) -> Llama {
    let device = resolve_device(&test_device()).unwrap();
    Llama::from_pretrained(&fixture(name), &device).unwrap()
}

fn ints(rows: &[Vec<i64>], device: &burn::tensor::Device) -> Tensor<2, Int> {
    let b = rows.len();
    let t = rows[0].len();
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}

fn bools(rows: &[Vec<bool>], device: &burn::tensor::Device) -> Tensor<2, Bool> {
    let b = rows.len();
    let t = rows[0].len();
    let flat: Vec<bool> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}

fn check_unpadded(name: &str) {
    let m = model(name);
    let r = Reference::load(name);
    for (i, ids) in r.prompts.iter().enumerate() {
        let (shape, want) = r.tensor(&format!("logits_{i}"));
        assert_eq!(shape, vec![ids.len(), 256]);
        let got = logits_alone(&m, ids);
        let diff = max_abs_diff(&got, &want);
        assert!(diff < TOL, "{name} prompt {i}: max |diff| {diff}");
    }
}

fn check_padded(name: &str) {
    let m = model(name);
    let r = Reference::load(name);
    let d = m.device().clone();
    let t = r.prompts.iter().map(Vec::len).max().unwrap();
    let mut tokens = Vec::new();
    let mut pos = Vec::new();
    let mut mask = Vec::new();
    for p in &r.prompts {
        let pad = t - p.len();
        tokens.push(
            (0..pad)
                .map(|_| 0)
                .chain(p.iter().map(|&x| x as i64))
                .collect(),
        );
        pos.push((0..pad).map(|_| 0).chain(0..p.len() as i64).collect());
        mask.push((0..t).map(|j| j >= pad).collect());
    }
    let got = m
        .forward(ints(&tokens, &d), ints(&pos, &d), bools(&mask, &d), None)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let (shape, want) = r.tensor("padded_logits");
    assert_eq!(shape, vec![r.prompts.len(), t, 256]);
    // Compare real positions only (transformers' values at pad positions are arbitrary).
    let v = 256;
    for (b, p) in r.prompts.iter().enumerate() {
        let pad = t - p.len();
        for j in pad..t {
            let o = (b * t + j) * v;
            let diff = max_abs_diff(&got[o..o + v], &want[o..o + v]);
            assert!(
                diff < TOL,
                "{name} padded row {b} pos {j}: max |diff| {diff}"
            );
        }
        // And the padded row equals the row alone.
        let alone = logits_alone(&m, p);
        let o = (b * t + pad) * v;
        let diff = max_abs_diff(&got[o..o + p.len() * v], &alone);
        assert!(
            diff < TOL,
            "{name} row {b}: padded vs alone max |diff| {diff}"
        );
    }
}

/// Greedy decoding with the KV cache, one prompt at a time.
fn check_greedy(name: &str) {
    let m = model(name);
    let r = Reference::load(name);
    let d = m.device().clone();
    for (i, ids) in r.prompts.iter().enumerate() {
        let mut cache = KvCache::new();
        let mut seq: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
        let mut input = seq.clone();
        let mut out = Vec::new();
        for _ in 0..r.greedy[i].len() {
            let past = cache.len();
            let t = input.len();
            let tokens = ints(&[input.clone()], &d);
            let pos = ints(&[(past as i64..(past + t) as i64).collect()], &d);
            let mask = bools(&[vec![true; past + t]], &d);
            let logits = m.forward(tokens, pos, mask, Some(&mut cache)).unwrap();
            let last: Vec<f32> = logits
                .narrow(1, t - 1, 1)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let next = last
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |acc, (j, &x)| {
                    if x > acc.1 { (j, x) } else { acc }
                })
                .0 as u32;
            out.push(next);
            seq.push(next as i64);
            input = vec![next as i64];
        }
        assert_eq!(out, r.greedy[i], "{name} prompt {i}");
    }
}

#[test]
fn gqa_logits() {
    check_unpadded("gqa");
}

#[test]
fn tied_logits() {
    check_unpadded("tied");
}

#[test]
fn llama31_rope_scaling_logits() {
    check_unpadded("llama31");
}

/// Mistral's sliding window (5 tokens; prompts of 13, 9 and 3, then 8 greedy tokens): prefill,
/// padded batches and decoding with the KV cache past the window, against transformers.
#[test]
fn mistral_sliding_window_logits() {
    check_unpadded("mistral-window");
}

/// Qwen2: biases on q/k/v, none on o_proj; its config's `sliding_window` (with
/// `use_sliding_window: false`, as released Qwen2.5 configs have it) is not applied.
#[test]
fn qwen2_logits() {
    check_unpadded("qwen2");
}

/// Qwen3: per-head q/k RMSNorm before RoPE, head_dim wider than hidden_size / heads, tied.
#[test]
fn qwen3_logits() {
    check_unpadded("qwen3");
}

/// RoPE `linear` (factor 4), `dynamic` (NTK, within max_position_embeddings) and `yarn` (on a
/// Qwen3 config, written as the legacy `rope_scaling` table with `type`).
#[test]
fn rope_scaling_types_logits() {
    for name in ["rope-linear", "rope-dynamic", "rope-yarn"] {
        check_unpadded(name);
    }
}

const ALL: [&str; 9] = [
    "gqa",
    "tied",
    "llama31",
    "mistral-window",
    "qwen2",
    "qwen3",
    "rope-linear",
    "rope-dynamic",
    "rope-yarn",
];

/// Each scaling type changes the logits far beyond the tolerance (so the fixtures test it), and
/// dynamic NTK's positions end at max_position_embeddings, past which its frequencies would
/// change: a longer sequence is refused, not computed with the wrong ones.
#[test]
fn parity_is_sensitive_to_each_rope_type() {
    let device = resolve_device(&test_device()).unwrap();
    for name in ["rope-linear", "rope-yarn"] {
        let r = Reference::load(name);
        let (_, want) = r.tensor("logits_1");
        let dir = fixture(name);
        let mut cfg = sweetspot_model::LlamaConfig::from_file(&dir.join("config.json")).unwrap();
        let theta = cfg.theta();
        cfg.rope_parameters = None;
        cfg.rope_scaling = None;
        cfg.rope_theta = theta;
        let loaded = Llama::from_pretrained(&dir, &device).unwrap();
        let plain = Llama::init(&cfg, &device).with_params(loaded.into_params());
        let diff = max_abs_diff(&logits_alone(&plain, &r.prompts[1]), &want);
        assert!(
            diff > 100.0 * TOL,
            "{name}: the scaling changed logits by only {diff}"
        );
    }
    let m = model("rope-dynamic");
    assert_eq!(m.max_positions(), 32);
    let ids: Vec<u32> = (3..36).collect();
    let d = m.device().clone();
    let t = ids.len();
    let err = m
        .forward(
            ints(&[ids.iter().map(|&i| i as i64).collect()], &d),
            ints(&[(0..t as i64).collect()], &d),
            bools(&[vec![true; t]], &d),
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("position 32"), "{err}");
}

#[test]
fn padded_batches() {
    for name in ALL {
        check_padded(name);
    }
}

#[test]
fn greedy_with_kv_cache() {
    for name in ALL {
        check_greedy(name);
    }
}

/// The Qwen fixtures tell the family differences apart: applying the Qwen2 config's window as
/// Mistral would, or dropping Qwen3's q/k norms, is far outside the tolerance.
#[test]
fn parity_is_sensitive_to_the_qwen_differences() {
    let device = resolve_device(&test_device()).unwrap();
    let r = Reference::load("qwen2");
    let (_, want) = r.tensor("logits_1");
    let dir = fixture("qwen2");
    let mut cfg = sweetspot_model::LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    assert_eq!((cfg.sliding_window, cfg.window()), (Some(4), None));
    cfg.model_type = "mistral".into();
    let loaded = Llama::from_pretrained(&dir, &device).unwrap();
    let windowed = Llama::init(&cfg, &device).with_params(loaded.into_params());
    let diff = max_abs_diff(&logits_alone(&windowed, &r.prompts[1]), &want);
    assert!(
        diff > 100.0 * TOL,
        "the window changed logits by only {diff}"
    );

    let r = Reference::load("qwen3");
    let (_, want) = r.tensor("logits_1");
    let mut m = model("qwen3");
    for layer in &mut m.params_mut().model.layers {
        layer.self_attn.q_norm = None;
        layer.self_attn.k_norm = None;
    }
    let diff = max_abs_diff(&logits_alone(&m, &r.prompts[1]), &want);
    assert!(
        diff > 100.0 * TOL,
        "the q/k norms changed logits by only {diff}"
    );
}

/// The window is really applied: the same weights attending over the whole sequence are far
/// outside the tolerance.
#[test]
fn parity_is_sensitive_to_the_sliding_window() {
    let r = Reference::load("mistral-window");
    let (_, want) = r.tensor("logits_0");
    let device = resolve_device(&test_device()).unwrap();
    let dir = fixture("mistral-window");
    let mut cfg = sweetspot_model::LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    assert_eq!(cfg.sliding_window, Some(5));
    cfg.sliding_window = None;
    let loaded = Llama::from_pretrained(&dir, &device).unwrap();
    let full = Llama::init(&cfg, &device).with_params(loaded.into_params());
    let diff = max_abs_diff(&logits_alone(&full, &r.prompts[0]), &want);
    assert!(
        diff > 100.0 * TOL,
        "dropping the window changed logits by only {diff}"
    );
}

/// The tolerance bites: the Llama-3.1 model with its rope scaling dropped is far outside it.
#[test]
fn parity_is_sensitive_to_rope_scaling() {
    let r = Reference::load("llama31");
    let (_, want) = r.tensor("logits_1");
    let device = resolve_device(&test_device()).unwrap();
    let dir = fixture("llama31");
    let mut cfg = sweetspot_model::LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    cfg.rope_parameters = None;
    cfg.rope_scaling = None;
    cfg.rope_theta = 500000.0;
    let loaded = Llama::from_pretrained(&dir, &device).unwrap();
    let unscaled = Llama::init(&cfg, &device).with_params(loaded.into_params());
    let diff = max_abs_diff(&logits_alone(&unscaled, &r.prompts[1]), &want);
    assert!(
        diff > 100.0 * TOL,
        "dropping rope scaling changed logits by only {diff}"
    );
}

/// Sharded checkpoints (`model.safetensors.index.json`) load to the same model.
#[test]
fn sharded_checkpoint_loads_the_same_weights() {
    let files = sweetspot_model::weights::safetensors_files(&fixture("gqa-sharded")).unwrap();
    assert!(files.len() > 1, "{files:?}");
    let r = Reference::load("gqa");
    let (_, want) = r.tensor("logits_1");
    let sharded = model("gqa-sharded");
    let diff = max_abs_diff(&logits_alone(&sharded, &r.prompts[1]), &want);
    assert!(diff < TOL, "sharded: max |diff| {diff}");
}

/// A checkpoint missing a tensor is an error naming it, not a half-random model.
#[test]
fn missing_tensor_is_an_error() {
    let tmp = std::env::temp_dir().join(format!("sweetspot-missing-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let src = fixture("gqa-sharded");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.join(f.file_name().unwrap())).unwrap();
    }
    // Drop the last shard.
    let mut shards = sweetspot_model::weights::safetensors_files(&tmp).unwrap();
    std::fs::remove_file(shards.pop().unwrap()).unwrap();
    let device = resolve_device(&test_device()).unwrap();
    let err = Llama::from_pretrained(&tmp, &device)
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&tmp).ok();
    assert!(err.contains("model-0000"), "{err}");
}
