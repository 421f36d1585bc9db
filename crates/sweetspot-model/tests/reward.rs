//! Reward heads against the references of `scripts/make_reward_fixtures.py`: a tiny ArmoRM
//! (`LlamaForRewardModelWithGating` written from the published modeling code on transformers'
//! `LlamaModel`) and a tiny `LlamaForSequenceClassification`, both with a Llama-3-style tokenizer
//! and chat template.
//!
//! Tolerance: 1e-4 absolute on rewards, gating weights and scores (f32 on both sides; the
//! differences seen on the CPU are below 1e-5).

mod common;

use common::{fixture, test_device};
use sweetspot_core::Message;
use sweetspot_model::reward::{LLAMA3_GATING_PATTERN, Padding, RewardHead, find_last};
use sweetspot_model::{Precision, RewardInput, RewardNet, Tokenizer, resolve_device};

const TOL: f32 = 1e-4;

struct Case {
    messages: Vec<Message>,
    ids: Vec<u32>,
    gating_position: Option<usize>,
    rewards: Option<Vec<f32>>,
    gating: Option<Vec<f32>>,
    score: f32,
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn reference(name: &str) -> (serde_json::Value, Vec<Case>) {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            messages: serde_json::from_value(c["messages"].clone()).unwrap(),
            ids: common::id_lists(&serde_json::json!([c["ids"]])).remove(0),
            gating_position: c["gating_position"].as_u64().map(|p| p as usize),
            rewards: c.get("rewards").map(floats),
            gating: c.get("gating").map(floats),
            score: c["score"].as_f64().unwrap() as f32,
        })
        .collect();
    (v, cases)
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= TOL, "{what}[{i}]: {x} vs {y}");
    }
}

fn tokenizer(name: &str) -> Tokenizer {
    Tokenizer::from_dir(&fixture(name), &[]).unwrap()
}

fn inputs(tok: &Tokenizer, cases: &[Case], gating: bool) -> Vec<RewardInput> {
    let pattern = tok.encode(LLAMA3_GATING_PATTERN, false).unwrap();
    cases
        .iter()
        .map(|c| {
            let ids = tok.encode_messages(&c.messages, false).unwrap();
            RewardInput {
                gating_position: if gating {
                    find_last(&ids, &pattern)
                } else {
                    None
                },
                ids,
            }
        })
        .collect()
}

#[test]
fn conversations_render_and_encode_as_transformers_does() {
    for name in ["armorm", "seq-cls"] {
        let tok = tokenizer(name);
        let (_, cases) = reference(name);
        for (i, c) in cases.iter().enumerate() {
            let ids = tok.encode_messages(&c.messages, false).unwrap();
            assert_eq!(ids, c.ids, "{name} conversation {i}");
            // One BOS, although the tokenizer's post-processor would add another.
            assert_ne!(ids[1], ids[0], "{name} conversation {i}: double BOS");
        }
    }
}

#[test]
fn armorm_matches_the_reference_alone_and_in_padded_batches() {
    let device = resolve_device(&test_device()).unwrap();
    let net =
        RewardNet::armorm_from_pretrained(&fixture("armorm"), &device, Precision::F32).unwrap();
    let tok = tokenizer("armorm");
    let (v, cases) = reference("armorm");
    let pattern = tok.encode(LLAMA3_GATING_PATTERN, false).unwrap();
    assert_eq!(
        serde_json::to_value(&pattern).unwrap(),
        v["gating_pattern_ids"]
    );
    let ins = inputs(&tok, &cases, true);
    for (c, input) in cases.iter().zip(&ins) {
        assert_eq!(input.gating_position, c.gating_position);
    }
    let check = |outs: &[sweetspot_model::RewardOutput], what: &str| {
        for (i, (c, o)) in cases.iter().zip(outs).enumerate() {
            close(
                o.rewards.as_ref().unwrap(),
                c.rewards.as_ref().unwrap(),
                &format!("{what} {i} rewards"),
            );
            close(
                o.gating.as_ref().unwrap(),
                c.gating.as_ref().unwrap(),
                &format!("{what} {i} gating"),
            );
            close(&[o.score], &[c.score], &format!("{what} {i} score"));
        }
    };
    let alone: Vec<_> = ins
        .iter()
        .map(|i| {
            net.score_batch(std::slice::from_ref(i), Padding::Right)
                .unwrap()
                .remove(0)
        })
        .collect();
    check(&alone, "alone");
    // The gating position is found and read at the right slot whichever side is padded.
    check(
        &net.score_batch(&ins, Padding::Left).unwrap(),
        "left-padded",
    );
    check(
        &net.score_batch(&ins, Padding::Right).unwrap(),
        "right-padded",
    );
    check(
        &net.score_all(&ins, 2, 1 << 20, |_| {}).unwrap(),
        "bucketed",
    );
}

#[test]
fn the_transform_matrix_and_gating_position_matter() {
    // Sensitivity: reading the gating network at the last token instead of the end of the prompt
    // changes the score, so the parity test above would catch a wrong position.
    let device = resolve_device(&test_device()).unwrap();
    let net =
        RewardNet::armorm_from_pretrained(&fixture("armorm"), &device, Precision::F32).unwrap();
    let tok = tokenizer("armorm");
    let (_, cases) = reference("armorm");
    let mut ins = inputs(&tok, &cases, true);
    for i in &mut ins {
        i.gating_position = Some(i.ids.len() - 1);
    }
    let outs = net.score_batch(&ins, Padding::Right).unwrap();
    let differs = cases
        .iter()
        .zip(&outs)
        .any(|(c, o)| (c.score - o.score).abs() > 100.0 * TOL);
    assert!(differs, "the gating position had no effect");
    // And an identity transform (what a generic loader would assume) changes scores too.
    let mut net = net;
    if let RewardHead::ArmoRm(head) = &mut net.head {
        head.transform = burn::tensor::Tensor::eye(19, &device);
    }
    let ins = inputs(&tok, &cases, true);
    let outs = net.score_batch(&ins, Padding::Right).unwrap();
    let differs = cases
        .iter()
        .zip(&outs)
        .any(|(c, o)| (c.score - o.score).abs() > 100.0 * TOL);
    assert!(differs, "the transform matrix had no effect");
}

/// pad = `<|eot_id|>`, the token that ends every turn: transformers reads the last token that
/// is not the pad token (before the trailing `<|eot_id|>`), alone and in a padded batch; with no
/// pad token it reads the last token.
#[test]
fn seq_cls_pad_token_rule_matches_transformers() {
    let device = resolve_device(&test_device()).unwrap();
    let dir = fixture("seq-cls-pad-eos");
    let net = RewardNet::seq_cls_from_pretrained(&dir, &device, Precision::F32).unwrap();
    let tok = tokenizer("seq-cls-pad-eos");
    let (v, cases) = reference("seq-cls-pad-eos");
    let ins = inputs(&tok, &cases, false);
    let batch = floats(&v["right_padded_batch_scores"]);
    for padding in [Padding::Left, Padding::Right] {
        let outs = net.score_batch(&ins, padding).unwrap();
        for (i, (c, o)) in cases.iter().zip(&outs).enumerate() {
            assert_eq!(ins[i].ids, c.ids, "ids {i}");
            close(&[o.score], &[c.score], &format!("pad=eos {padding:?} {i}"));
            close(
                &[o.score],
                &[batch[i]],
                &format!("pad=eos {padding:?} {i} vs batch"),
            );
        }
    }
    // The same weights with no pad token: the very last token, as transformers reads it.
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&dir).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("pad_token_id");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let net = RewardNet::seq_cls_from_pretrained(tmp.path(), &device, Precision::F32).unwrap();
    let outs = net.score_batch(&ins, Padding::Left).unwrap();
    let mut differs = false;
    for (i, o) in outs.iter().enumerate() {
        let want = v["conversations"][i]["score_no_pad"].as_f64().unwrap() as f32;
        close(&[o.score], &[want], &format!("no pad {i}"));
        differs |= (want - cases[i].score).abs() > 100.0 * TOL;
    }
    assert!(differs, "the fixture does not tell the two rules apart");
}

/// `LlamaForSequenceClassification`, and the Qwen2 and Qwen3 heads of
/// `scripts/make_family_fixtures.py` (Skywork-Reward-V2's architectures).
#[test]
fn seq_cls_matches_transformers_alone_and_padded() {
    let device = resolve_device(&test_device()).unwrap();
    for name in ["seq-cls", "qwen2-seq-cls", "qwen3-seq-cls"] {
        let net =
            RewardNet::seq_cls_from_pretrained(&fixture(name), &device, Precision::F32).unwrap();
        let tok = tokenizer(name);
        let (v, cases) = reference(name);
        let ins = inputs(&tok, &cases, false);
        let batch = floats(&v["right_padded_batch_scores"]);
        for padding in [Padding::Left, Padding::Right] {
            let outs = net.score_batch(&ins, padding).unwrap();
            for (i, (c, o)) in cases.iter().zip(&outs).enumerate() {
                close(&[o.score], &[c.score], &format!("{name} {padding:?} {i}"));
                close(
                    &[o.score],
                    &[batch[i]],
                    &format!("{name} {padding:?} {i} vs batch"),
                );
                assert!(o.rewards.is_none());
            }
        }
    }
}

#[test]
fn a_score_does_not_depend_on_its_batch() {
    // Each conversation alone vs inside mixed batches of every size, padded on either side.
    let device = resolve_device(&test_device()).unwrap();
    let net =
        RewardNet::seq_cls_from_pretrained(&fixture("seq-cls"), &device, Precision::F32).unwrap();
    let tok = tokenizer("seq-cls");
    let (_, cases) = reference("seq-cls");
    let ins = inputs(&tok, &cases, false);
    let alone: Vec<f32> = ins
        .iter()
        .map(|i| {
            net.score_batch(std::slice::from_ref(i), Padding::Left)
                .unwrap()[0]
                .score
        })
        .collect();
    for size in 2..=ins.len() {
        for padding in [Padding::Left, Padding::Right] {
            // Rotate so each conversation meets different neighbours.
            for start in 0..ins.len() {
                let idx: Vec<usize> = (0..size).map(|k| (start + k) % ins.len()).collect();
                let batch: Vec<RewardInput> = idx.iter().map(|&i| ins[i].clone()).collect();
                let outs = net.score_batch(&batch, padding).unwrap();
                for (&i, o) in idx.iter().zip(&outs) {
                    close(
                        &[o.score],
                        &[alone[i]],
                        &format!("conversation {i} in batch {idx:?} {padding:?}"),
                    );
                }
            }
        }
    }
}

#[test]
fn wrong_architectures_and_missing_positions_are_errors() {
    let device = resolve_device(&test_device()).unwrap();
    // An ArmoRM folder is not a sequence classifier.
    let e = RewardNet::seq_cls_from_pretrained(&fixture("armorm"), &device, Precision::F32)
        .unwrap_err();
    assert!(e.to_string().contains("armorm"), "{e}");
    // A seq-cls checkpoint lacks ArmoRM's gating tensors.
    let e = RewardNet::armorm_from_pretrained(&fixture("seq-cls"), &device, Precision::F32)
        .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    let net =
        RewardNet::armorm_from_pretrained(&fixture("armorm"), &device, Precision::F32).unwrap();
    let e = net
        .score_batch(
            &[RewardInput {
                ids: vec![1, 2, 3],
                gating_position: None,
            }],
            Padding::Right,
        )
        .unwrap_err();
    assert!(e.to_string().contains("gating position"), "{e}");
}

#[test]
fn batches_scored_at_once_give_the_scores_of_one_batch_at_a_time() {
    // `score_all` scores two batches at once on the CPU: every score is bit for bit the one its
    // batch gives scored alone (the same length-sorted batches, one after the other), the
    // outputs come back in the inputs' order, progress counts every input once, and a bad batch
    // is an error.
    let device = resolve_device(&test_device()).unwrap();
    let net =
        RewardNet::armorm_from_pretrained(&fixture("armorm"), &device, Precision::F32).unwrap();
    let tok = tokenizer("armorm");
    let (_, cases) = reference("armorm");
    let base = inputs(&tok, &cases, true);
    // Several copies with their tails cut differently, so there are many batches of mixed
    // lengths.
    let mut ins = Vec::new();
    for cut in 0..6 {
        for i in &base {
            let keep = i.ids.len() - cut.min(i.ids.len() - i.gating_position.unwrap() - 1);
            ins.push(RewardInput {
                ids: i.ids[..keep].to_vec(),
                gating_position: i.gating_position,
            });
        }
    }
    let batch_size = 3;
    let mut order: Vec<usize> = (0..ins.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ins[i].ids.len()));
    let mut expected = vec![None; ins.len()];
    for chunk in order.chunks(batch_size) {
        let batch: Vec<RewardInput> = chunk.iter().map(|&i| ins[i].clone()).collect();
        for (&i, o) in chunk
            .iter()
            .zip(net.score_batch(&batch, Padding::Right).unwrap())
        {
            expected[i] = Some(o);
        }
    }
    assert!(ins.len() / batch_size >= 4, "too few batches");
    if test_device() == "cpu" {
        assert_eq!(net.concurrent_batches(), 2);
    }
    for round in 0..3 {
        let mut seen = 0;
        let outs = net
            .score_all(&ins, batch_size, 1 << 20, |n| seen += n)
            .unwrap();
        assert_eq!(seen, ins.len(), "round {round}: progress");
        assert_eq!(outs.len(), ins.len());
        for (i, (o, e)) in outs.iter().zip(&expected).enumerate() {
            let e = e.as_ref().unwrap();
            assert_eq!(
                o.score.to_bits(),
                e.score.to_bits(),
                "round {round} input {i}"
            );
            assert_eq!(o.rewards, e.rewards, "round {round} input {i} rewards");
            assert_eq!(o.gating, e.gating, "round {round} input {i} gating");
        }
    }
    // A row without a gating position fails its batch, and the whole call.
    let mut bad = ins.clone();
    bad[5].gating_position = None;
    let e = net
        .score_all(&bad, batch_size, 1 << 20, |_| {})
        .unwrap_err();
    assert!(e.to_string().contains("gating position"), "{e}");
}
