//! Generation on the tiny fixture models: the same seed gives the same samples whether a prompt is
//! generated alone or in a batch, and greedy batched generation equals transformers'.

mod common;

use common::{fixture, id_lists, test_device};
use sweetspot_model::generate::{SamplingParams, SeqRequest, generate};
use sweetspot_model::{Llama, resolve_device};

fn prompts(name: &str) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("reference.json")).unwrap(),
    )
    .unwrap();
    (id_lists(&v["prompts"]), id_lists(&v["greedy"]))
}

fn req(ids: &[u32], prompt: usize, sample: u32) -> SeqRequest {
    SeqRequest::sample(ids.to_vec(), 42, &format!("p{prompt}"), sample)
}

#[test]
fn batched_greedy_equals_transformers() {
    let device = resolve_device(&test_device()).unwrap();
    for name in ["gqa", "tied", "llama31"] {
        let m = Llama::from_pretrained(&fixture(name), &device).unwrap();
        let (ps, greedy) = prompts(name);
        let reqs: Vec<_> = ps.iter().enumerate().map(|(i, p)| req(p, i, 0)).collect();
        let out = generate(
            &m,
            &reqs,
            &[],
            &SamplingParams::greedy(greedy[0].len()),
            |_| {},
        )
        .unwrap();
        for (g, want) in out.iter().zip(&greedy) {
            assert_eq!(&g.tokens, want, "{name}");
            assert_eq!(g.finish_reason, sweetspot_core::FinishReason::Length);
        }
    }
}

#[test]
fn same_seed_same_samples_alone_or_batched() {
    let device = resolve_device(&test_device()).unwrap();
    let m = Llama::from_pretrained(&fixture("gqa"), &device).unwrap();
    let (ps, _) = prompts("gqa");
    let params = SamplingParams::new(0.8, 0.95, 50, 12);
    // 3 prompts x 4 samples in one batch (stop on token 5 to finish rows at different times) ...
    let mut batch = Vec::new();
    for (i, p) in ps.iter().enumerate() {
        for s in 0..4 {
            batch.push(req(p, i, s));
        }
    }
    let stop = [5u32, 17];
    let together = generate(&m, &batch, &stop, &params, |_| {}).unwrap();
    // ... against each sequence alone, and in a batch of a different make-up.
    for (r, g) in batch.iter().zip(&together) {
        let alone = generate(&m, std::slice::from_ref(r), &stop, &params, |_| {}).unwrap();
        assert_eq!(alone[0].tokens, g.tokens, "seed {}", r.seed);
        assert!((alone[0].logprob - g.logprob).abs() < 1e-3);
    }
    let reversed: Vec<_> = batch.iter().rev().cloned().collect();
    let again = generate(&m, &reversed, &stop, &params, |_| {}).unwrap();
    for (g, h) in together.iter().zip(again.iter().rev()) {
        assert_eq!(g.tokens, h.tokens);
    }
    // Samples of one prompt differ from each other (the streams are independent).
    assert!(together[0].tokens != together[1].tokens || together[1].tokens != together[2].tokens);
    // A different seed changes them.
    let other: Vec<_> = batch
        .iter()
        .map(|r| SeqRequest {
            seed: r.seed ^ 7,
            ..r.clone()
        })
        .collect();
    let changed = generate(&m, &other, &stop, &params, |_| {}).unwrap();
    assert!(
        changed
            .iter()
            .zip(&together)
            .any(|(a, b)| a.tokens != b.tokens)
    );
}

/// The n samples of a prompt share one prefill: with sharing on and off, every sample is the
/// same (tokens, finish reason; log-probabilities within float noise), for 3 prompts x 5 samples
/// mixed in one batch, sampled and greedy, on each family's fixture.
#[test]
fn shared_prefill_gives_the_same_samples() {
    use sweetspot_model::generate::generate_with;
    let device = resolve_device(&test_device()).unwrap();
    for name in ["gqa", "qwen3", "mistral-window"] {
        let m = Llama::from_pretrained(&fixture(name), &device).unwrap();
        let (ps, _) = prompts(name);
        let mut batch = Vec::new();
        for s in 0..5 {
            for (i, p) in ps.iter().enumerate() {
                batch.push(req(p, i, s));
            }
        }
        for temperature in [0.8, 0.0] {
            let params = SamplingParams::new(temperature, 0.95, 0, 10);
            let stop = [5u32, 17];
            let shared = generate_with(&m, &batch, &stop, &params, true, |_| {}).unwrap();
            let own = generate_with(&m, &batch, &stop, &params, false, |_| {}).unwrap();
            for (i, (a, b)) in shared.iter().zip(&own).enumerate() {
                assert_eq!(a.tokens, b.tokens, "{name} T={temperature} row {i}");
                assert_eq!(a.finish_reason, b.finish_reason);
                assert!((a.logprob - b.logprob).abs() < 1e-3, "{name} row {i}");
            }
            if temperature > 0.0 {
                // The copies of a prompt really were sampled apart.
                assert!(
                    shared[0].tokens != shared[3].tokens || shared[3].tokens != shared[6].tokens
                );
            }
        }
    }
}

/// Continuous batching: with 3, 5, 7 or 12 rows on the device and the queue refilling them as
/// rows stop (at different steps; with 12, a new request is written into the row of one that
/// stopped, with fewer the rows are dropped and joined), every request gets the same tokens,
/// finish reason and log-probability as in one static batch, on each family's fixture (the window
/// fixture included: rows that join later are padded in front and keep their key distances).
/// Each request is reported exactly once.
#[test]
fn continuous_batching_gives_the_same_samples() {
    use sweetspot_model::generate::{BatchLimits, generate_continuous, generate_with};
    let device = resolve_device(&test_device()).unwrap();
    for name in ["gqa", "qwen3", "mistral-window"] {
        let m = Llama::from_pretrained(&fixture(name), &device).unwrap();
        let (ps, _) = prompts(name);
        let mut batch = Vec::new();
        for (i, p) in ps.iter().enumerate() {
            for s in 0..6 {
                batch.push(req(p, i, s));
            }
        }
        let params = SamplingParams::new(0.9, 0.95, 0, 14);
        // Stop tokens taken from free-running samples at steps 2, 5 and 9, so rows stop apart.
        let free = generate_with(&m, &batch, &[], &params, true, |_| {}).unwrap();
        let stop = [free[0].tokens[2], free[7].tokens[5], free[13].tokens[9]];
        let static_ = generate_with(&m, &batch, &stop, &params, true, |_| {}).unwrap();
        let lengths: std::collections::BTreeSet<usize> =
            static_.iter().map(|g| g.tokens.len()).collect();
        assert!(
            lengths.len() > 2,
            "{name}: rows should stop at different steps"
        );
        for rows in [3, 5, 7, 12] {
            let mut got: Vec<Option<sweetspot_model::generate::Generation>> =
                vec![None; batch.len()];
            let mut order = Vec::new();
            generate_continuous(
                &m,
                &batch,
                &stop,
                &params,
                BatchLimits { rows, tokens: None },
                |n| assert!(n <= rows),
                |i, g| {
                    assert!(got[i].is_none(), "{name}: request {i} reported twice");
                    order.push(i);
                    got[i] = Some(g);
                    Ok(())
                },
            )
            .unwrap();
            for (i, (g, want)) in got.iter().zip(&static_).enumerate() {
                let g = g
                    .as_ref()
                    .unwrap_or_else(|| panic!("{name}: request {i} missing"));
                assert_eq!(g.tokens, want.tokens, "{name} rows={rows} request {i}");
                assert_eq!(g.finish_reason, want.finish_reason);
                assert!(
                    (g.logprob - want.logprob).abs() < 1e-3,
                    "{name} request {i}"
                );
            }
            // Requests finish out of order: rows really were refilled as others stopped.
            assert!(order.windows(2).any(|w| w[0] > w[1]), "{name} rows={rows}");
        }
    }
}

/// An error from the consumer stops continuous generation and comes back to the caller.
#[test]
fn continuous_batching_stops_on_a_consumer_error() {
    use sweetspot_model::ModelError;
    use sweetspot_model::generate::{BatchLimits, generate_continuous};
    let device = resolve_device(&test_device()).unwrap();
    let m = Llama::from_pretrained(&fixture("gqa"), &device).unwrap();
    let (ps, _) = prompts("gqa");
    let batch: Vec<_> = (0..8).map(|s| req(&ps[0], 0, s)).collect();
    let mut calls = 0;
    let err = generate_continuous(
        &m,
        &batch,
        &[],
        &SamplingParams::greedy(4),
        BatchLimits {
            rows: 2,
            tokens: None,
        },
        |_| {},
        |_, _| {
            calls += 1;
            Err(ModelError::Input("disk full".into()))
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(calls, 1);
}

/// A token budget bounds the key/value slots: with room for 3 sequences of the longest prompt
/// plus max_new_tokens, no more than 3 rows run at once (8 allowed by rows), the samples are
/// those of a static batch; a budget below one sequence's need is refused by name.
#[test]
fn continuous_batching_keeps_to_a_token_budget() {
    use sweetspot_model::generate::{BatchLimits, generate_continuous, generate_with};
    let device = resolve_device(&test_device()).unwrap();
    let m = Llama::from_pretrained(&fixture("gqa"), &device).unwrap();
    let (ps, _) = prompts("gqa");
    let batch: Vec<_> = ps
        .iter()
        .enumerate()
        .flat_map(|(i, p)| (0..4).map(move |s| req(p, i, s)))
        .collect();
    let params = SamplingParams::new(0.9, 1.0, 0, 10);
    let longest = ps.iter().map(Vec::len).max().unwrap();
    let shortest = ps.iter().map(Vec::len).min().unwrap();
    let budget = 3 * (longest + 10);
    let want = generate_with(&m, &batch, &[], &params, true, |_| {}).unwrap();
    let mut got = vec![None; batch.len()];
    let mut widest = 0;
    let limits = BatchLimits {
        rows: 8,
        tokens: Some(budget),
    };
    generate_continuous(
        &m,
        &batch,
        &[],
        &params,
        limits,
        |n| widest = widest.max(n),
        |i, g| {
            got[i] = Some(g.tokens);
            Ok(())
        },
    )
    .unwrap();
    assert!(widest <= budget / (shortest + 10), "{widest} rows");
    assert!(widest >= 2, "the budget still lets rows share the device");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.as_ref(), Some(&w.tokens));
    }
    let tight = BatchLimits {
        rows: 8,
        tokens: Some(longest + 9),
    };
    let err = generate_continuous(&m, &batch, &[], &params, tight, |_| {}, |_, _| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_batch_tokens"), "{err}");
}

/// bf16 weights: each sample is the same token for token alone or in a batch with others, on the
/// three families' fixtures; with sweetspot's bf16 products (a CPU with AVX512-BF16) the
/// log-probabilities are equal too, bit for bit (a product's sums do not depend on the rows
/// beside it); through burn's product (gemm's blocking moves with the rows) within 1e-3.
#[test]
fn bf16_samples_alone_or_batched() {
    let device = resolve_device(&test_device()).unwrap();
    for name in ["gqa", "tied", "llama31"] {
        let m = Llama::from_pretrained(&fixture(name), &device)
            .unwrap()
            .to_precision(sweetspot_model::Precision::Bf16);
        let Ok(m) = m else {
            eprintln!("bf16 not computable on {device:?}: skipped");
            return;
        };
        // The kernel runs on burn-flex only (a build with both backends may test on wgpu).
        #[cfg(feature = "flex")]
        let exact =
            sweetspot_model::kernels::bf16::available() && device == burn::tensor::Device::flex();
        #[cfg(not(feature = "flex"))]
        let exact = false;
        alone_equals_batched(&m, name, if exact { 0.0 } else { 1e-3 });
    }
}

/// Three samples of each of the fixture's prompts, drawn in one batch and each alone: the same
/// tokens, and log-probabilities within `tolerance` (0: the same bits).
fn alone_equals_batched(m: &Llama, name: &str, tolerance: f64) {
    let (ps, _) = prompts(name);
    let params = SamplingParams::new(0.8, 0.95, 50, 12);
    let batch: Vec<_> = ps
        .iter()
        .enumerate()
        .flat_map(|(i, p)| (0..3).map(move |s| req(p, i, s)))
        .collect();
    let stop = [5u32, 17];
    let together = generate(m, &batch, &stop, &params, |_| {}).unwrap();
    for (r, g) in batch.iter().zip(&together) {
        let alone = generate(m, std::slice::from_ref(r), &stop, &params, |_| {}).unwrap();
        assert_eq!(alone[0].tokens, g.tokens, "{name}: seed {}", r.seed);
        if tolerance == 0.0 {
            assert_eq!(alone[0].logprob, g.logprob, "{name}: seed {}", r.seed);
        }
        assert!((alone[0].logprob - g.logprob).abs() <= tolerance, "{name}");
    }
}

/// `quantize = "q8_0"`: each sample is the same, token for token and log-probability bit for
/// bit, alone or in a batch with others (an 8-bit product's sums do not depend on the rows
/// beside it, on either the VNNI or the portable path), on the three families' fixtures; and
/// the 8-bit model refuses what it cannot run.
#[cfg(feature = "flex")]
#[test]
fn q8_samples_alone_or_batched() {
    use sweetspot_model::Quantize;
    let device = burn::tensor::Device::flex();
    for name in ["gqa", "tied", "llama31"] {
        let m = Llama::from_pretrained(&fixture(name), &device)
            .unwrap()
            .quantize(Quantize::Q8_0)
            .unwrap();
        assert_eq!(m.quantization(), Some(Quantize::Q8_0));
        assert!(m.quantized_bytes() > 0);
        alone_equals_batched(&m, name, 0.0);
    }
    let bf16 = Llama::from_pretrained(&fixture("gqa"), &device)
        .unwrap()
        .to_precision(sweetspot_model::Precision::Bf16)
        .unwrap();
    let e = bf16.quantize(Quantize::Q8_0).unwrap_err().to_string();
    assert!(e.contains("f32") && e.contains("q8_0"), "{e}");
    let trains = Llama::from_pretrained(&fixture("gqa"), &device.clone().autodiff()).unwrap();
    let e = trains.quantize(Quantize::Q8_0).unwrap_err().to_string();
    assert!(e.contains("inference only"), "{e}");
}
