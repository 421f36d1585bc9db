//! A prompt prefix computed once: the keys and values of a sequence's first tokens, cached and
//! put under the rest, give the bits of the whole sequence computed at once, so scoring the
//! samples of one prompt on one computation of the prompt changes no score. CPU only (the
//! attention kernel whose query tiles are aligned to key slots; elsewhere nothing is shared).

mod common;

use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::{fixture, pseudo_ids as ids, test_device};
use sweetspot_model::reward::prefix_groups;
use sweetspot_model::{
    KvCache, Llama, Precision, Quantize, RewardInput, RewardNet, resolve_device,
};

fn hidden(m: &Llama, ids: &[u32], cache: Option<&mut KvCache>, past: usize) -> Vec<f32> {
    let device = m.device().clone();
    let t = ids.len();
    let tokens: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let positions: Vec<i64> = (past as i64..(past + t) as i64).collect();
    m.forward_hidden(
        Tensor::<2, Int>::from_data(TensorData::new(tokens, [1, t]), &device),
        Tensor::<2, Int>::from_data(TensorData::new(positions, [1, t]), &device),
        Tensor::<2, Bool>::from_data(
            TensorData::new(vec![true; past + t], [1, past + t]),
            &device,
        ),
        cache,
    )
    .unwrap()
    .into_data()
    .try_to_vec::<f32>()
    .unwrap()
}

#[test]
fn a_cached_prefix_gives_the_bits_of_the_whole_sequence() {
    if test_device() != "cpu" {
        return;
    }
    let device = resolve_device("cpu").unwrap();
    // Grouped-query heads, a sliding window, Qwen3's query/key norms.
    for name in ["gqa", "mistral-window", "qwen3"] {
        let m = Llama::from_pretrained(&fixture(name), &device).unwrap();
        assert!(m.cached_prefix_is_exact(), "{name}");
        let width = m.config.hidden_size;
        let seq = ids(7, 200, m.config.vocab_size as u32, &[]);
        let whole = hidden(&m, &seq, None, 0);
        // Prefixes inside the first tile, at its end, across it, at the second's end.
        for prefix in [1usize, 37, 63, 64, 65, 100, 128, 150] {
            let end = prefix.div_ceil(64) * 64;
            let mut cache = KvCache::new();
            hidden(&m, &seq[..end], Some(&mut cache), 0);
            cache.truncate(prefix);
            let rest = hidden(&m, &seq[prefix..], Some(&mut cache), prefix);
            let expected = &whole[prefix * width..];
            assert_eq!(rest.len(), expected.len());
            for (i, (a, b)) in rest.iter().zip(expected).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{name}: prefix {prefix}, token {} element {}",
                    prefix + i / width,
                    i % width
                );
            }
        }
    }
}

/// Three prompts (shorter than a tile, exactly one, longer) with responses of many lengths
/// (some ending inside the prompt's last tile), an input that shares nothing, and copies.
fn inputs(vocab: u32, avoid: &[u32], gating: bool) -> (Vec<RewardInput>, Vec<usize>) {
    let mut out = Vec::new();
    let mut prompts = Vec::new();
    for (p, len) in [37usize, 64, 90].into_iter().enumerate() {
        let prompt = ids(100 + p as u64, len, vocab, avoid);
        prompts.push(len);
        for r in 0..7u64 {
            let mut seq = prompt.clone();
            seq.extend(ids(1000 * p as u64 + r, 5 + 23 * r as usize, vocab, avoid));
            out.push(RewardInput {
                ids: seq,
                gating_position: gating.then_some(len - 2),
            });
        }
    }
    let lone = ids(5, 120, vocab, avoid);
    out.push(RewardInput {
        ids: lone,
        gating_position: gating.then_some(3),
    });
    out.push(out[3].clone());
    (out, prompts)
}

fn check(net: &RewardNet, ins: &[RewardInput], what: &str) {
    let alone: Vec<_> = ins
        .iter()
        .map(|i| {
            net.score_batch(
                std::slice::from_ref(i),
                sweetspot_model::reward::Padding::Right,
            )
        })
        .map(|r| r.unwrap().remove(0))
        .collect();
    for batch_size in [1, 3, 16] {
        let mut seen = 0;
        let outs = net
            .score_all(ins, batch_size, 1 << 20, |n| seen += n)
            .unwrap();
        assert_eq!(seen, ins.len());
        for (i, (o, e)) in outs.iter().zip(&alone).enumerate() {
            assert_eq!(
                o.score.to_bits(),
                e.score.to_bits(),
                "{what}: input {i}, batch size {batch_size}"
            );
            let bits = |v: &Option<Vec<f32>>| {
                v.as_ref()
                    .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
            };
            assert_eq!(bits(&o.rewards), bits(&e.rewards), "{what}: input {i}");
            assert_eq!(bits(&o.gating), bits(&e.gating), "{what}: input {i}");
        }
    }
}

#[test]
fn scores_on_a_shared_prefix_are_the_scores_of_each_input_alone() {
    if test_device() != "cpu" {
        return;
    }
    let device = resolve_device("cpu").unwrap();
    // Sequence classification in f32, bf16 and 8-bit, Qwen3's, and ArmoRM (gating read inside
    // the prompt: the prefix stops before it).
    let cases: Vec<(&str, RewardNet, bool)> = vec![
        (
            "seq-cls f32",
            RewardNet::seq_cls_from_pretrained(&fixture("seq-cls"), &device, Precision::F32)
                .unwrap(),
            false,
        ),
        (
            "seq-cls bf16",
            RewardNet::seq_cls_from_pretrained(&fixture("seq-cls"), &device, Precision::Bf16)
                .unwrap(),
            false,
        ),
        (
            "seq-cls q8_0",
            RewardNet::seq_cls_from_pretrained(&fixture("seq-cls"), &device, Precision::F32)
                .unwrap()
                .quantize(Quantize::Q8_0)
                .unwrap(),
            false,
        ),
        (
            "qwen3-seq-cls",
            RewardNet::seq_cls_from_pretrained(&fixture("qwen3-seq-cls"), &device, Precision::F32)
                .unwrap(),
            false,
        ),
        (
            "armorm",
            RewardNet::armorm_from_pretrained(&fixture("armorm"), &device, Precision::F32).unwrap(),
            true,
        ),
    ];
    for (what, net, gating) in cases {
        assert!(net.backbone.cached_prefix_is_exact(), "{what}");
        let vocab = net.backbone.config.vocab_size as u32;
        let avoid: Vec<u32> = net.backbone.config.pad_token_id.into_iter().collect();
        let (ins, prompts) = inputs(vocab, &avoid, gating);
        // The plan shares each prompt (up to ArmoRM's gating position), not more or less.
        let caps: Vec<usize> = ins
            .iter()
            .map(|i| {
                let read = i.ids.len() - 2;
                i.gating_position.map_or(read, |g| g.min(read))
            })
            .collect();
        let groups = prefix_groups(&ins, &caps, 64);
        assert_eq!(groups.len(), 3, "{what}: {groups:?}");
        for (g, &len) in groups.iter().zip(&prompts) {
            let expected = if gating { len - 2 } else { len };
            assert_eq!(g.prefix, expected, "{what}");
            assert_eq!(g.end, expected.div_ceil(64) * 64, "{what}");
            assert!(g.members.len() >= 2, "{what}");
            assert!(g.members.iter().all(|&i| ins[i].ids.len() >= g.end));
        }
        check(&net, &ins, what);
    }
}

#[test]
fn prefix_groups_choose_the_prompts_not_the_system_prompt() {
    // Every input shares a 20-token system prompt; each prompt's samples share 50 more. Sharing
    // only the system prompt saves less than sharing each prompt.
    let system = ids(1, 20, 300, &[]);
    let mut ins = Vec::new();
    for p in 0..4u64 {
        let mut prompt = system.clone();
        prompt.extend(ids(10 + p, 50, 300, &[]));
        for r in 0..5u64 {
            let mut seq = prompt.clone();
            seq.extend(ids(100 * p + r, 80, 300, &[]));
            ins.push(RewardInput {
                ids: seq,
                gating_position: None,
            });
        }
    }
    let caps: Vec<usize> = ins.iter().map(|i| i.ids.len() - 1).collect();
    let groups = prefix_groups(&ins, &caps, 64);
    assert_eq!(groups.len(), 4);
    for (p, g) in groups.iter().enumerate() {
        assert_eq!(g.prefix, 70);
        assert_eq!(g.end, 128);
        assert_eq!(g.members, (5 * p..5 * p + 5).collect::<Vec<_>>());
        assert_eq!(g.source, 5 * p);
    }
    // The same groups whatever the inputs' order.
    let mut reversed = ins.clone();
    reversed.reverse();
    let n = ins.len();
    let again = prefix_groups(&reversed, &caps, 64);
    let mut members: Vec<Vec<usize>> = again
        .iter()
        .map(|g| {
            let mut m: Vec<usize> = g.members.iter().map(|&i| n - 1 - i).collect();
            m.sort();
            m
        })
        .collect();
    members.sort();
    assert_eq!(
        members,
        groups.iter().map(|g| g.members.clone()).collect::<Vec<_>>()
    );
    // A read position inside the prompt bounds the prefix; nothing shared, no group.
    let capped: Vec<usize> = caps.iter().map(|_| 10).collect();
    let groups = prefix_groups(&ins, &capped, 64);
    assert!(groups.iter().all(|g| g.prefix == 10), "{groups:?}");
    assert!(prefix_groups(&ins, &vec![0; n], 64).is_empty());
    assert!(prefix_groups(&ins[..1], &caps[..1], 64).is_empty());
}
