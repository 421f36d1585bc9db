//! Benchmark: build all 23 datasets (the 21 grid datasets, max-min and max-of-n/min-of-5) from
//! 10,000 prompts x 200 samples of synthetic scored data, in one pass.
//!
//!     cargo bench --bench pairs
//!
//! Environment: SWEETSPOT_BENCH_PROMPTS (default 10000), SWEETSPOT_BENCH_SAMPLES (default 200),
//! SWEETSPOT_BENCH_DIR (default: a temporary folder), SWEETSPOT_BENCH_LAYOUT (`grouped`, the
//! default, or `long`).
//!
//! It reports, for the same file: the time to read it (`read`: bytes into a buffer, the floor),
//! to read and JSON-parse every line (`parse`), and to build and write all 23 datasets
//! (`sweetspot`), with samples/s and the peak RSS of the pairs stage alone.

use std::io::{BufRead, BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;

use sweetspot::core::BuildContext;
use sweetspot::core::recipe::{InputLayout, OnBadGroup};
use sweetspot::runner::{PairsJob, run_pairs};
use sweetspot::strategies::{Grid, MaxMin, MaxOfNMinOfK};

// The allocator the `sweetspot` binary uses, with its settings.
#[path = "../src/alloc.rs"]
mod alloc;

/// SplitMix64: a small deterministic generator for the synthetic data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

const WORDS: [&str; 16] = [
    "the", "answer", "depends", "on", "context", "first", "consider", "an", "example", "which",
    "shows", "how", "each", "step", "follows", "clearly",
];

fn generate(path: &Path, prompts: usize, samples: usize, long: bool) -> std::io::Result<()> {
    let mut rng = Rng(2025);
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for p in 0..prompts {
        let prompt = format!("Question {p}: explain topic {} in simple terms.", p % 997);
        let mu = 0.05 + 0.1 * rng.uniform();
        let sd = 0.005 + 0.03 * rng.uniform();
        let mut responses = Vec::with_capacity(samples);
        let mut scores = Vec::with_capacity(samples);
        for _ in 0..samples {
            let n = 8 + (rng.next() % 12) as usize;
            let text: Vec<&str> = (0..n).map(|_| WORDS[(rng.next() % 16) as usize]).collect();
            responses.push(text.join(" "));
            scores.push(mu + sd * rng.normal());
        }
        if long {
            for (i, (r, s)) in responses.iter().zip(&scores).enumerate() {
                serde_json::to_writer(
                    &mut w,
                    &serde_json::json!({"prompt_id": format!("b-{p}"), "prompt": prompt,
                        "sample_index": i, "response": r, "reward": s}),
                )?;
                w.write_all(b"\n")?;
            }
        } else {
            serde_json::to_writer(
                &mut w,
                &serde_json::json!({"prompt_id": format!("b-{p}"), "prompt": prompt,
                    "all_generated_responses": responses, "all_rm_scores": scores}),
            )?;
            w.write_all(b"\n")?;
        }
    }
    w.flush()
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn reset_peak_rss() {
    // Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    alloc::configure();
    // `cargo bench` passes `--bench`; nothing else to parse.
    let prompts = env("SWEETSPOT_BENCH_PROMPTS", 10_000);
    let samples = env("SWEETSPOT_BENCH_SAMPLES", 200);
    let long = std::env::var("SWEETSPOT_BENCH_LAYOUT").is_ok_and(|v| v == "long");
    let tmp = tempfile::tempdir()?;
    let dir = std::env::var("SWEETSPOT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let input = dir.join(if long {
        "bench-long.jsonl"
    } else {
        "bench.jsonl"
    });
    let t = Instant::now();
    generate(&input, prompts, samples, long)?;
    let size = std::fs::metadata(&input)?.len();
    let total = (prompts * samples) as f64;
    eprintln!(
        "generated {prompts} prompts x {samples} samples ({} layout): {:.1} MiB in {:.1}s",
        if long { "long" } else { "grouped" },
        size as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );

    // Floor 1: read the bytes.
    let t = Instant::now();
    let mut f = std::fs::File::open(&input)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    let read_s = t.elapsed().as_secs_f64();

    // Floor 2: read and parse every line as untyped JSON.
    let t = Instant::now();
    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&input)?);
    let mut n = 0usize;
    for line in reader.lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        n += v.as_object().map_or(0, |o| o.len());
    }
    std::hint::black_box(n);
    let parse_s = t.elapsed().as_secs_f64();

    // sweetspot: all 23 datasets in one pass.
    let out = dir.join("pairs-out");
    reset_peak_rss();
    let rss_before = peak_rss_kib();
    let t = Instant::now();
    let summary = run_pairs(PairsJob {
        input: input.clone(),
        input_layout: InputLayout::Auto,
        output: out.clone(),
        format: None,
        on_small_group: OnBadGroup::Error,
        on_invalid_reward: OnBadGroup::Error,
        strategies: vec![
            Box::new(Grid::default()),
            Box::new(MaxMin::default()),
            Box::new(MaxOfNMinOfK::default()),
        ],
        n: None,
        ctx: BuildContext::new(&dir),
        quiet: true,
        paths_relative_to: None,
        min_margin: None,
        min_margin_sigma: None,
        top_fraction: None,
        layout: Default::default(),
        listwise_k: None,
        rewards: Vec::new(),
        rank_by: None,
        agree: Vec::new(),
        agree_min: None,
    })?;
    let run_s = t.elapsed().as_secs_f64();
    let peak = peak_rss_kib();
    let pairs: u64 = summary.datasets.iter().map(|d| d.pairs).sum();
    let out_bytes: u64 = summary
        .datasets
        .iter()
        .filter_map(|d| std::fs::metadata(&d.file).ok())
        .map(|m| m.len())
        .sum();
    assert_eq!(summary.datasets.len(), 23);

    let mib = size as f64 / 1048576.0;
    println!("| step | seconds | MiB/s of input | samples/s | vs read |");
    println!("|---|---:|---:|---:|---:|");
    for (name, s) in [
        ("read the file", read_s),
        ("read + parse JSON (serde_json::Value)", parse_s),
        ("sweetspot: 23 datasets, one pass", run_s),
    ] {
        println!(
            "| {name} | {s:.2} | {:.0} | {:.2e} | {:.1}x |",
            mib / s,
            total / s,
            s / read_s
        );
    }
    println!();
    println!(
        "input {mib:.1} MiB ({prompts} x {samples}), {} datasets, {pairs} pairs, output {:.1} MiB; \
         peak RSS of the pairs stage {:.1} MiB (process RSS before it {:.1} MiB)",
        summary.datasets.len(),
        out_bytes as f64 / 1048576.0,
        peak as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
    if std::env::var("SWEETSPOT_BENCH_DIR").is_err() {
        std::fs::remove_dir_all(&out).ok();
    }
    Ok(())
}
