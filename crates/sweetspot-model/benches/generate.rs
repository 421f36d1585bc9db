//! Generation speed: SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32) on the CPU (`flex`),
//! batch 1 and 16, 128 new tokens per sequence (no early stop), greedy.
//!
//!     scripts/fetch_smollm2.sh && cargo bench -p sweetspot-model --bench generate
//!
//! `scripts/bench_generate_transformers.py` runs the same with transformers' `generate`.
//! Environment: SWEETSPOT_BENCH_DEVICE (default `cpu`), SWEETSPOT_BENCH_BATCHES (default `1,16`).
//!
//! Then the workload users run: the quickstart's first 4 prompts x n = 16 samples at T = 0.8,
//! up to 128 new tokens, stopping on the model's end token (so lengths mix), 16 rows on the
//! device: static batches of 16 (the sampler before continuous batching) against continuous
//! batching with 16 rows, the same requests in one process; the samples must be identical.
//! SWEETSPOT_BENCH_WORKLOAD=0 skips it.

use std::path::PathBuf;
use std::time::Instant;

use sweetspot_core::Message;
use sweetspot_model::generate::{
    BatchLimits, Generation, SamplingParams, SeqRequest, generate, generate_continuous,
};
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
    if std::env::var("SWEETSPOT_BENCH_WORKLOAD").as_deref() != Ok("0") {
        workload(&model, &tok);
    }
}

fn workload(model: &Llama, tok: &Tokenizer) {
    let lines = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/prompts.jsonl"),
    )
    .expect("quickstart prompts");
    let mut reqs = Vec::new();
    for (p, line) in lines.lines().take(4).enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).expect("prompt line");
        let text = v["prompt"].as_str().expect("prompt field");
        let ids = tok
            .encode_chat(&[Message::new("user", text)])
            .expect("prompt");
        for s in 0..16 {
            reqs.push(SeqRequest::sample(ids.clone(), 3, &format!("p{p}"), s));
        }
    }
    let params = SamplingParams::new(0.8, 1.0, 0, 128);
    let stop = tok.stop_ids().to_vec();
    let rows = 16;
    let t = Instant::now();
    let mut static_: Vec<Generation> = Vec::new();
    for chunk in reqs.chunks(rows) {
        static_.extend(generate(model, chunk, &stop, &params, |_| {}).expect("static"));
    }
    let s_static = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut cont: Vec<Option<Generation>> = vec![None; reqs.len()];
    generate_continuous(
        model,
        &reqs,
        &stop,
        &params,
        BatchLimits { rows, tokens: None },
        |_| {},
        |i, g| {
            cont[i] = Some(g);
            Ok(())
        },
    )
    .expect("continuous");
    let s_cont = t.elapsed().as_secs_f64();
    for (a, b) in static_.iter().zip(&cont) {
        assert_eq!(
            Some(&a.tokens),
            b.as_ref().map(|g| &g.tokens),
            "samples differ"
        );
    }
    let n: usize = static_.iter().map(|g| g.tokens.len()).sum();
    let (lo, hi) = static_.iter().fold((usize::MAX, 0), |(lo, hi), g| {
        (lo.min(g.tokens.len()), hi.max(g.tokens.len()))
    });
    println!();
    println!(
        "4 prompts x 16 samples, T = 0.8, <= 128 new tokens ({n} tokens, {lo} to {hi} per sample), {rows} rows"
    );
    println!("| batching | seconds | tokens/s | ratio (time) |");
    println!("|---|---:|---:|---:|");
    println!("| static | {s_static:.2} | {:.1} | |", n as f64 / s_static);
    println!(
        "| continuous | {s_cont:.2} | {:.1} | {:.2}x |",
        n as f64 / s_cont,
        s_cont / s_static
    );
}
