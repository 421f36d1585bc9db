//! Generation speed: SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32) on the CPU (`flex`),
//! batch 1 and 16, 128 new tokens per sequence (no early stop), greedy.
//!
//!     scripts/fetch_smollm2.sh && cargo bench -p sweetspot-model --bench generate
//!
//! `scripts/bench_generate_transformers.py` runs the same with transformers' `generate`.
//! Environment: SWEETSPOT_BENCH_DEVICE (default `cpu`), SWEETSPOT_BENCH_BATCHES (default `1,16`).

use std::path::PathBuf;
use std::time::Instant;

use sweetspot_core::Message;
use sweetspot_model::generate::{SamplingParams, SeqRequest, generate};
use sweetspot_model::gguf::Gguf;
use sweetspot_model::{Llama, Tokenizer, resolve_device};

const NEW_TOKENS: usize = 128;

fn main() {
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
    let batches: Vec<usize> = std::env::var("SWEETSPOT_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,16".into())
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    let device = resolve_device(&device_name).expect("device");
    let gguf = Gguf::open(&path).expect("gguf");
    let tok = Tokenizer::from_gguf(&gguf, &path).expect("tokenizer");
    let t = Instant::now();
    let model = Llama::from_gguf(&gguf, &device).expect("model");
    eprintln!(
        "loaded in {:.2}s on {device_name}",
        t.elapsed().as_secs_f64()
    );
    let prompt = tok
        .encode_chat(&[Message::new(
            "user",
            "Write a short story about a lighthouse keeper who finds a message in a bottle.",
        )])
        .expect("prompt");
    // Warm-up (kernels, allocator).
    let warm = [SeqRequest::sample(prompt.clone(), 0, "warm", 0)];
    generate(&model, &warm, &[], &SamplingParams::greedy(8), |_| {}).expect("warm-up");
    println!("| batch | prompt tokens | new tokens | seconds | tokens/s |");
    println!("|---:|---:|---:|---:|---:|");
    for &b in &batches {
        let reqs: Vec<SeqRequest> = (0..b)
            .map(|i| SeqRequest::sample(prompt.clone(), 0, "bench", i as u32))
            .collect();
        let t = Instant::now();
        let out = generate(
            &model,
            &reqs,
            &[],
            &SamplingParams::greedy(NEW_TOKENS),
            |_| {},
        )
        .expect("generate");
        let s = t.elapsed().as_secs_f64();
        let n: usize = out.iter().map(|g| g.tokens.len()).sum();
        assert_eq!(n, b * NEW_TOKENS);
        println!(
            "| {b} | {} | {n} | {s:.2} | {:.1} |",
            prompt.len(),
            n as f64 / s
        );
    }
}
