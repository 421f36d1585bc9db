//! DPO training speed: SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32) as the policy, 8
//! pairs per optimizer step in one forward/backward of 16 sequences of about 256 tokens, DPO
//! (beta 0.1), AdamW, reference log-probabilities precomputed (not timed), on the CPU.
//!
//!     python3 scripts/bench_dpo_trl.py            # writes the pairs, runs TRL's side
//!     cargo bench -p sweetspot-train --bench dpo
//!
//! Environment: SWEETSPOT_BENCH_PAIRS (default /tmp/dpo_bench_pairs.jsonl),
//! SWEETSPOT_BENCH_DEVICE (default `cpu`), SWEETSPOT_BENCH_DTYPE (compute precision, default
//! `f32`), SWEETSPOT_BENCH_CHECKPOINTING (set: gradient checkpointing).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use sweetspot_core::{BuildContext, PreferenceLossConfig};
use sweetspot_losses::DpoConfig;
use sweetspot_model::{Llama, Precision, resolve_device};
use sweetspot_train::{OptimizerSettings, Trainer, pair_sequences, response_logps};

// The allocator the `sweetspot` binary uses, with its settings.
#[path = "../../../src/alloc.rs"]
mod alloc;

const BATCH: usize = 8;
const STEPS: usize = 5;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    alloc::configure();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let gguf = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let pairs_path = std::env::var_os("SWEETSPOT_BENCH_PAIRS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/dpo_bench_pairs.jsonl"));
    if !gguf.exists() || !pairs_path.exists() {
        eprintln!(
            "needs {} (scripts/fetch_smollm2.sh) and {} (scripts/bench_dpo_trl.py)",
            gguf.display(),
            pairs_path.display()
        );
        return;
    }
    let device_name = std::env::var("SWEETSPOT_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let mut device = resolve_device(&device_name).expect("device").autodiff();
    if std::env::var_os("SWEETSPOT_BENCH_CHECKPOINTING").is_some() {
        device = device.gradient_checkpointing();
    }
    let dtype: Precision = std::env::var("SWEETSPOT_BENCH_DTYPE")
        .unwrap_or_else(|_| "f32".into())
        .parse()
        .expect("dtype");
    let (policy, tok) =
        sweetspot_model::load_causal_lm(&gguf, &device, Precision::F32).expect("model");
    let pairs = sweetspot_train::run::read_pairs(&pairs_path, &tok).expect("pairs");
    let mean_len = pairs
        .iter()
        .map(|p| p.prompt.len() + p.chosen.len())
        .sum::<usize>() as f64
        / pairs.len() as f64;
    // Reference log-probabilities, computed once (sweetspot caches them on disk).
    let frozen = Llama::from_params(&policy.config, policy.params().clone().no_grad(), &device)
        .compute_copy(dtype)
        .expect("dtype");
    let mut refs = Vec::new();
    for step in 0..STEPS {
        let batch = &pairs[step * BATCH..(step + 1) * BATCH];
        let seqs = pair_sequences(batch);
        let (l, _) = response_logps(&frozen, &seqs).expect("reference");
        let v = l.detach().into_data().try_to_vec::<f32>().expect("values");
        refs.push((v[..BATCH].to_vec(), v[BATCH..].to_vec()));
    }
    drop(frozen);
    let loss = DpoConfig {
        beta: 0.1,
        ..DpoConfig::default()
    }
    .build(&BuildContext::new("."))
    .expect("loss");
    let mut trainer = Trainer::new(policy, None, loss, OptimizerSettings::default())
        .and_then(|t| t.with_compute_precision(dtype))
        .expect("trainer");
    println!(
        "device {device_name}, compute {dtype}, gradient checkpointing {}, mean sequence \
         {mean_len:.0} tokens",
        device
            .gradient_checkpointing_strategy()
            .map_or("?".into(), |s| format!("{s:?}"))
    );
    println!("| step | seconds | pairs/s |");
    println!("|---:|---:|---:|");
    let mut timed = Vec::new();
    for (step, r) in refs.iter().enumerate() {
        let batch: Vec<_> = pairs[step * BATCH..(step + 1) * BATCH].iter().collect();
        let t = Instant::now();
        let m = trainer
            .accumulate_step(&batch, Some(r), BATCH, 1e-6)
            .expect("step");
        let s = t.elapsed().as_secs_f64();
        assert!(m.loss.is_finite());
        if step > 0 {
            println!("| {} | {s:.2} | {:.2} |", step + 1, BATCH as f64 / s);
            timed.push(s);
        }
    }
    println!(
        "mean pairs/s {:.2}, peak RSS {:.0} MiB",
        (BATCH * timed.len()) as f64 / timed.iter().sum::<f64>(),
        peak_rss_mib()
    );
}
