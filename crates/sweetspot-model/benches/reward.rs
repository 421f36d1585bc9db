//! Reward-model scoring speed: a sequence-classification model of SmolLM2-135M's size (the
//! SmolLM2-135M-Instruct backbone from the Q4_1 GGUF, dequantized to f32, plus a one-label
//! `score` head) on the CPU (`flex`), batches of 16 sequences of 512 tokens; and a realistic
//! mix: every (prompt, response) of a samples file through the chat template, scored as the
//! score stage scores them (`RewardNet::score_all`: length-sorted batches of at most 16 rows and
//! 16 x 512 padded tokens).
//!
//!     scripts/fetch_smollm2.sh && cargo bench -p sweetspot-model --bench reward
//!     SWEETSPOT_BENCH_SAMPLES=samples.jsonl cargo bench -p sweetspot-model --bench reward
//!
//! `scripts/bench_reward_transformers.py` runs the same forward with transformers'
//! `LlamaForSequenceClassification`. Environment: SWEETSPOT_BENCH_DEVICE (default `cpu`),
//! SWEETSPOT_BENCH_ROUNDS (default 3), SWEETSPOT_BENCH_SAMPLES (a samples file: the mix instead
//! of the fixed shape), SWEETSPOT_BENCH_DTYPE (`f32`, the default, or `bf16`: the backbone in
//! that type, the head in f32, as the score stage runs `dtype = "bf16"`; the script's DTYPE),
//! SWEETSPOT_BENCH_QUANTIZE (`q8_0`: the backbone's projections in 8 bits, `quantize = "q8_0"`).

use std::path::PathBuf;
use std::time::Instant;

use burn::nn::LinearConfig;
use sweetspot_model::gguf::Gguf;
use sweetspot_model::reward::{Padding, RewardHead};
use sweetspot_model::{Llama, RewardInput, RewardNet, Tokenizer, resolve_device};

// The allocator the `sweetspot` binary uses, with its settings.
#[path = "../../../src/alloc.rs"]
mod alloc;

const BATCH: usize = 16;
const TOKENS: usize = 512;

fn main() {
    alloc::configure();
    let path = std::env::var_os("SWEETSPOT_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if !path.exists() {
        eprintln!("{} not found: run scripts/fetch_smollm2.sh", path.display());
        return;
    }
    let device_name = std::env::var("SWEETSPOT_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let rounds: usize = std::env::var("SWEETSPOT_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let device = resolve_device(&device_name).expect("device");
    let gguf = Gguf::open(&path).expect("gguf");
    let precision: sweetspot_model::Precision = std::env::var("SWEETSPOT_BENCH_DTYPE")
        .unwrap_or_else(|_| "f32".into())
        .parse()
        .expect("SWEETSPOT_BENCH_DTYPE: f32, bf16 or f16");
    let backbone = Llama::from_gguf(&gguf, &device)
        .expect("model")
        .to_precision(precision)
        .expect("dtype");
    println!("backbone in {precision}");
    let hidden = backbone.config.hidden_size;
    let vocab = backbone.config.vocab_size as u64;
    let net = RewardNet {
        backbone,
        head: RewardHead::SeqCls {
            score: LinearConfig::new(hidden, 1).with_bias(false).init(&device),
        },
    };
    let net = match std::env::var("SWEETSPOT_BENCH_QUANTIZE") {
        Ok(q) if !q.is_empty() => {
            let q: sweetspot_model::Quantize = q.parse().expect("SWEETSPOT_BENCH_QUANTIZE: q8_0");
            println!("projections in {q}");
            net.quantize(q).expect("quantize")
        }
        _ => net,
    };
    if let Some(samples) = std::env::var_os("SWEETSPOT_BENCH_SAMPLES") {
        let tokenizer = Tokenizer::from_gguf(&gguf, &path).expect("tokenizer");
        let text = std::fs::read_to_string(&samples).expect("samples file");
        let inputs: Vec<RewardInput> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                let prompt =
                    sweetspot_core::Prompt::from_content(sweetspot_core::PromptContent::Text(
                        v["prompt"].as_str().expect("prompt").to_string(),
                    ));
                let ids = tokenizer
                    .encode_scored(&prompt, v["response"].as_str().expect("response"))
                    .expect("tokens");
                RewardInput {
                    ids,
                    gating_position: None,
                }
            })
            .collect();
        let tokens: usize = inputs.iter().map(|i| i.ids.len()).sum();
        let longest = inputs.iter().map(|i| i.ids.len()).max().unwrap_or(0);
        net.score_batch(&inputs[..2], Padding::Right)
            .expect("warm-up");
        println!(
            "{} sequences, {tokens} tokens, longest {longest}",
            inputs.len()
        );
        println!("| workload | round | seconds | samples/s | tokens/s |");
        println!("|---|---:|---:|---:|---:|");
        for round in 1..=rounds {
            let t = Instant::now();
            let out = net
                .score_all(&inputs, BATCH, BATCH * TOKENS, |_| {})
                .expect("score");
            let s = t.elapsed().as_secs_f64();
            assert_eq!(out.len(), inputs.len());
            println!(
                "| mix | {round} | {s:.2} | {:.2} | {:.0} |",
                inputs.len() as f64 / s,
                tokens as f64 / s
            );
        }
        return;
    }
    // Deterministic pseudo-random tokens (the speed does not depend on them).
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let inputs: Vec<RewardInput> = (0..BATCH)
        .map(|_| RewardInput {
            ids: (0..TOKENS)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % vocab) as u32
                })
                .collect(),
            gating_position: None,
        })
        .collect();
    net.score_batch(&inputs[..2], Padding::Right)
        .expect("warm-up");
    println!("| batch x tokens | round | seconds | samples/s | tokens/s |");
    println!("|---|---:|---:|---:|---:|");
    for round in 1..=rounds {
        let t = Instant::now();
        let out = net.score_batch(&inputs, Padding::Right).expect("score");
        let s = t.elapsed().as_secs_f64();
        assert_eq!(out.len(), BATCH);
        println!(
            "| {BATCH} x {TOKENS} | {round} | {s:.2} | {:.2} | {:.0} |",
            BATCH as f64 / s,
            (BATCH * TOKENS) as f64 / s
        );
    }
}
