//! A forward pass that returns only some positions ([`Llama::forward_hidden_rows`],
//! [`Llama::forward_hidden_after`]) or only fills a cache ([`Llama::fill_cache`]) gives the bits
//! of the whole pass: where every row is read at its last real token, the last layer computes
//! those positions alone (scoring reads one position per sequence, a prefill one per prompt), and
//! the cache it leaves is the whole pass's. CPU only: elsewhere a product's bits depend on its
//! shape.

mod common;

use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::{fixture, pseudo_ids, test_device};
use sweetspot_model::{KvCache, Llama, LlamaConfig, Precision, Quantize, resolve_device};

/// Deterministic pseudo-random ids in `1..vocab`.
fn ids(seed: u64, n: usize, vocab: u32) -> Vec<u32> {
    pseudo_ids(seed, n, vocab, &[])
}

/// One batch of `seqs`, padded on the left or the right, after `past` cached slots: tokens,
/// positions, the key mask, the padded length and each row's last real index.
struct Batch {
    tokens: Tensor<2, Int>,
    positions: Tensor<2, Int>,
    mask: Tensor<2, Bool>,
    t: usize,
    last: Vec<usize>,
}

fn batch(m: &Llama, seqs: &[Vec<u32>], left: bool, past: usize) -> Batch {
    let device = m.device().clone();
    let b = seqs.len();
    let t = seqs.iter().map(Vec::len).max().unwrap();
    let (mut tokens, mut positions) = (vec![0i64; b * t], vec![0i64; b * t]);
    let mut mask = vec![false; b * (past + t)];
    let mut last = Vec::new();
    for (r, s) in seqs.iter().enumerate() {
        let off = if left { t - s.len() } else { 0 };
        for (i, &id) in s.iter().enumerate() {
            tokens[r * t + off + i] = i64::from(id);
            positions[r * t + off + i] = (past + i) as i64;
        }
        let keys = &mut mask[r * (past + t)..(r + 1) * (past + t)];
        keys[..past].fill(true);
        keys[past + off..past + off + s.len()].fill(true);
        last.push(r * t + off + s.len() - 1);
    }
    Batch {
        tokens: Tensor::from_data(TensorData::new(tokens, [b, t]), &device),
        positions: Tensor::from_data(TensorData::new(positions, [b, t]), &device),
        mask: Tensor::from_data(TensorData::new(mask, [b, past + t]), &device),
        t,
        last,
    }
}

fn bits<const D: usize>(x: Tensor<D>) -> Vec<u32> {
    x.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// The rows `rows` of a `[batch, tokens, width]` pass, flattened.
fn rows_of(whole: &[u32], rows: &[usize], width: usize) -> Vec<u32> {
    rows.iter()
        .flat_map(|&r| whole[r * width..(r + 1) * width].iter().copied())
        .collect()
}

/// Each row's next token through `cache` (one decode step): its hidden states.
fn step(m: &Llama, seqs: &[Vec<u32>], t: usize, cache: &mut KvCache) -> Vec<u32> {
    let next: Vec<Vec<u32>> = (0..seqs.len()).map(|r| vec![7 + r as u32]).collect();
    let b = batch(m, &next, true, t);
    // Every cached slot real except each row's left padding.
    let mut mask = b.mask.into_data().try_to_vec::<bool>().unwrap();
    for (r, s) in seqs.iter().enumerate() {
        mask[r * (t + 1)..r * (t + 1) + t - s.len()].fill(false);
    }
    let n = seqs.len();
    let positions: Vec<i64> = seqs.iter().map(|s| s.len() as i64).collect();
    bits(
        m.forward_hidden(
            b.tokens,
            Tensor::from_data(TensorData::new(positions, [n, 1]), m.device()),
            Tensor::from_data(TensorData::new(mask, [n, t + 1]), m.device()),
            Some(cache),
        )
        .unwrap(),
    )
}

fn models(name: &str) -> Vec<(String, Llama)> {
    let device = resolve_device("cpu").unwrap();
    let load = || {
        if name != "wide" {
            return Llama::from_pretrained(&fixture(name), &device).unwrap();
        }
        // Random weights, a feed-forward wide enough that the gemm crate cuts its down
        // projection's sums into blocks, where a one-row product (its vector-matrix path) rounds
        // unlike a row of a larger product.
        let config = LlamaConfig::from_json(
            r#"{"vocab_size": 64, "hidden_size": 64, "intermediate_size": 2048,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 512}"#,
            std::path::Path::new("config.json"),
        )
        .unwrap();
        Llama::init(&config, &device)
    };
    vec![
        (format!("{name} f32"), load()),
        (
            format!("{name} bf16"),
            load().to_precision(Precision::Bf16).unwrap(),
        ),
        (
            format!("{name} q8_0"),
            load().quantize(Quantize::Q8_0).unwrap(),
        ),
    ]
}

#[test]
fn a_pass_read_at_some_positions_gives_the_whole_pass_bits() {
    if test_device() != "cpu" {
        return;
    }
    // Grouped-query heads, a sliding window (5 wide in this fixture), Qwen3's query/key norms,
    // a wide feed-forward.
    for name in ["gqa", "mistral-window", "qwen3", "wide"] {
        for (what, m) in models(name) {
            let vocab = m.config.vocab_size as u32;
            let width = m.config.hidden_size;
            // Rows of many lengths (across the attention kernel's 64-query tiles), one row alone.
            for lens in [vec![70usize, 130, 5, 2], vec![2, 9], vec![100]] {
                let seqs: Vec<Vec<u32>> = lens
                    .iter()
                    .enumerate()
                    .map(|(r, &n)| ids(r as u64 + 3, n, vocab))
                    .collect();
                for left in [false, true] {
                    let b = batch(&m, &seqs, left, 0);
                    let whole = bits(
                        m.forward_hidden(
                            b.tokens.clone(),
                            b.positions.clone(),
                            b.mask.clone(),
                            None,
                        )
                        .unwrap(),
                    );
                    // Each row at its last token (computed alone where it can be), then
                    // positions that are not (the whole pass's rows).
                    let first: Vec<usize> = (0..lens.len()).map(|r| r * b.t).collect();
                    let mixed: Vec<usize> = b.last.iter().rev().copied().chain([0]).collect();
                    for rows in [&b.last, &first, &mixed] {
                        let got = bits(
                            m.forward_hidden_rows(
                                b.tokens.clone(),
                                b.positions.clone(),
                                b.mask.clone(),
                                None,
                                rows,
                            )
                            .unwrap(),
                        );
                        assert_eq!(
                            got,
                            rows_of(&whole, rows, width),
                            "{what}: lengths {lens:?}, left {left}, rows {rows:?}"
                        );
                    }
                }
            }
            // A position outside the pass is an error, not a panic.
            let b = batch(&m, &[ids(1, 4, vocab)], false, 0);
            let err = m
                .forward_hidden_rows(b.tokens, b.positions, b.mask, None, &[4])
                .unwrap_err();
            assert!(err.to_string().contains("position 4"), "{err}");
        }
    }
}

#[test]
fn a_prefill_read_at_its_last_tokens_leaves_the_whole_pass_cache() {
    if test_device() != "cpu" {
        return;
    }
    for name in ["gqa", "mistral-window", "qwen3"] {
        for (what, m) in models(name) {
            let vocab = m.config.vocab_size as u32;
            let width = m.config.hidden_size;
            let seqs: Vec<Vec<u32>> = [67usize, 12, 130]
                .iter()
                .enumerate()
                .map(|(r, &n)| ids(r as u64 + 11, n, vocab))
                .collect();
            // Left padding, as generation prefills.
            let b = batch(&m, &seqs, true, 0);
            let mut whole_cache = KvCache::new();
            let whole = bits(
                m.forward_hidden(
                    b.tokens.clone(),
                    b.positions.clone(),
                    b.mask.clone(),
                    Some(&mut whole_cache),
                )
                .unwrap(),
            );
            let mut read_cache = KvCache::new();
            let read = bits(
                m.forward_hidden_rows(
                    b.tokens.clone(),
                    b.positions.clone(),
                    b.mask.clone(),
                    Some(&mut read_cache),
                    &b.last,
                )
                .unwrap(),
            );
            assert_eq!(read, rows_of(&whole, &b.last, width), "{what}");
            let mut filled = KvCache::new();
            m.fill_cache(b.tokens, b.positions, b.mask, &mut filled)
                .unwrap();
            assert_eq!(filled.len(), whole_cache.len(), "{what}");
            // The next step attends to every layer's cached keys and values.
            let expected = step(&m, &seqs, b.t, &mut whole_cache);
            assert_eq!(step(&m, &seqs, b.t, &mut read_cache), expected, "{what}");
            assert_eq!(step(&m, &seqs, b.t, &mut filled), expected, "{what}");
        }
    }
}

#[test]
fn rows_after_a_filled_prefix_are_each_whole_sequence_bits() {
    if test_device() != "cpu" {
        return;
    }
    for name in ["gqa", "mistral-window", "qwen3"] {
        for (what, m) in models(name) {
            let vocab = m.config.vocab_size as u32;
            let width = m.config.hidden_size;
            let prompt = ids(21, 64, vocab);
            let seqs: Vec<Vec<u32>> = [40usize, 3, 90]
                .iter()
                .enumerate()
                .map(|(r, &n)| {
                    let mut s = prompt.clone();
                    s.extend(ids(r as u64 + 30, n, vocab));
                    s
                })
                .collect();
            let p = prompt.len();
            let mut prefix = KvCache::new();
            let pb = batch(&m, std::slice::from_ref(&prompt), false, 0);
            m.fill_cache(pb.tokens, pb.positions, pb.mask, &mut prefix)
                .unwrap();
            let rest: Vec<Vec<u32>> = seqs.iter().map(|s| s[p..].to_vec()).collect();
            let b = batch(&m, &rest, false, p);
            let got = bits(
                m.forward_hidden_after(b.tokens, b.positions, b.mask, &prefix, &b.last)
                    .unwrap(),
            );
            for (r, s) in seqs.iter().enumerate() {
                let alone = batch(&m, std::slice::from_ref(s), false, 0);
                let whole = bits(
                    m.forward_hidden(alone.tokens, alone.positions, alone.mask, None)
                        .unwrap(),
                );
                assert_eq!(
                    got[r * width..(r + 1) * width],
                    whole[(s.len() - 1) * width..s.len() * width],
                    "{what}: row {r}"
                );
            }
        }
    }
}
