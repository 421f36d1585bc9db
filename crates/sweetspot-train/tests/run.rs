//! Whole training runs on the tiny policy fixture: metrics log, learning-rate schedule, gradient
//! accumulation, the reference cache, export, and kill-and-resume to the same final weights.

use std::path::{Path, PathBuf};

use sweetspot_core::{NoProgress, PreferenceLossConfig};
use sweetspot_losses::DpoConfig;
use sweetspot_model::{Llama, Precision, resolve_device};
use sweetspot_train::run::{Decay, TrainSettings, learning_rate, run_training};
use sweetspot_train::{OptimizerSettings, Trainer, tokenize_pair};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn write_pairs(path: &Path) {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("dpo/reference.json")).unwrap(),
    )
    .unwrap();
    let mut text = String::new();
    let pairs = r["pairs"].as_array().unwrap();
    // Six pairs: the four of the TRL fixture, two of them again with the texts swapped.
    for (i, p) in pairs.iter().chain(pairs.iter().take(2)).enumerate() {
        let mut p = p.clone();
        if i >= pairs.len() {
            let c = p["chosen"].clone();
            p["chosen"] = p["rejected"].clone();
            p["rejected"] = c;
        }
        text.push_str(&p.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn settings(dir: &Path, out: &str) -> TrainSettings {
    TrainSettings {
        pairs: dir.join("pairs.jsonl"),
        policy: fixtures().join("models/policy"),
        output: dir.join(out),
        device: resolve_device("cpu").unwrap(),
        data_parallel: Vec::new(),
        epochs: 2,
        batch_size: 4,
        micro_batch_size: 2,
        learning_rate: 1e-3,
        warmup_ratio: 0.25,
        decay: Decay::Linear,
        optimizer: OptimizerSettings {
            weight_decay: 0.01,
            ..OptimizerSettings::default()
        },
        save_steps: 1,
        seed: 7,
        dtype: Precision::F32,
        gradient_checkpointing: false,
        stop_after: None,
        reference_cache: None,
        reference_store: None,
        adapter: None,
    }
}

fn loss() -> Box<dyn sweetspot_core::PreferenceLoss> {
    DpoConfig {
        beta: 0.1,
        ..DpoConfig::default()
    }
    .build(&sweetspot_core::BuildContext::new("."))
    .unwrap()
}

#[test]
fn schedule_follows_transformers() {
    // 10 steps, 2 warm-up: 0, 0.5, then linear from 1 down to 1/8 at the last step.
    let lr: Vec<f64> = (0..10)
        .map(|s| learning_rate(1.0, s, 10, 2, Decay::Linear))
        .collect();
    assert_eq!(lr[0], 0.0);
    assert_eq!(lr[1], 0.5);
    assert_eq!(lr[2], 1.0);
    assert!((lr[9] - 0.125).abs() < 1e-12);
    assert!((learning_rate(1.0, 6, 10, 2, Decay::Cosine) - 0.5).abs() < 1e-12);
    assert_eq!(learning_rate(1.0, 9, 10, 2, Decay::Constant), 1.0);
}

#[test]
fn accumulated_micro_batches_equal_one_batch() {
    let device = resolve_device("cpu").unwrap().autodiff();
    let policy_dir = fixtures().join("models/policy");
    let (pairs, tok) = fixture_pairs();
    // The four distinct pairs (the swapped copies would cancel gradients to rounding noise,
    // which Adam then blows up to whole steps).
    let refs: Vec<_> = pairs.iter().take(4).collect();
    let mut metrics = Vec::new();
    let mut params = Vec::new();
    for micro in [4, 3, 1] {
        let policy = Llama::from_pretrained(&policy_dir, &device).unwrap();
        let reference = Llama::from_pretrained(&policy_dir, &device).unwrap();
        let mut t = Trainer::new(
            policy,
            Some(reference),
            loss(),
            OptimizerSettings::default(),
        )
        .unwrap();
        // Two steps, so the second runs at policy != reference.
        t.accumulate_step(&refs, None, micro, 1e-3).unwrap();
        metrics.push(t.accumulate_step(&refs, None, micro, 1e-3).unwrap());
        params.push(sweetspot_model::export::hf_tensors(&t.policy_params().unwrap()).unwrap());
    }
    for (m, p) in metrics.iter().zip(&params).skip(1) {
        // The first steps differ in float rounding only; Adam carries that into the second.
        assert!(
            (m.loss - metrics[0].loss).abs() < 1e-4 * metrics[0].loss,
            "{m:?} vs {:?}",
            metrics[0]
        );
        assert!((m.grad_norm - metrics[0].grad_norm).abs() < 1e-3 * metrics[0].grad_norm);
        let mut worst = 0f32;
        let mut loose = 0;
        let mut n = 0;
        for ((_, _, a), (_, _, b)) in p.iter().zip(&params[0]) {
            for (x, y) in a.iter().zip(b) {
                worst = worst.max((x - y).abs());
                loose += usize::from((x - y).abs() > 1e-6);
                n += 1;
            }
        }
        assert!(
            loose * 1000 <= n && worst <= 2e-4,
            "{loose} of {n}, worst {worst}"
        );
    }
    // Sanity: the pairs were tokenized by TRL's rule.
    assert_eq!(
        pairs[0],
        tokenize_pair(
            &tok,
            &[sweetspot_core::Message::new(
                "user",
                "What is the capital of France?"
            )],
            &[sweetspot_core::Message::new("assistant", "Paris.")],
            &[sweetspot_core::Message::new(
                "assistant",
                "Lyon, on the Seine, is the capital."
            )],
        )
        .unwrap()
    );
}

/// The six pairs of [`write_pairs`], tokenized by the fixture policy's tokenizer.
fn fixture_pairs() -> (
    Vec<sweetspot_train::TokenizedPair>,
    sweetspot_model::Tokenizer,
) {
    let dir = tempfile::tempdir().unwrap();
    write_pairs(&dir.path().join("pairs.jsonl"));
    let device = resolve_device("cpu").unwrap();
    let policy_dir = fixtures().join("models/policy");
    let (_, tok) = sweetspot_model::load_causal_lm(&policy_dir, &device, Precision::F32).unwrap();
    let pairs = sweetspot_train::run::read_pairs(&dir.path().join("pairs.jsonl"), &tok).unwrap();
    (pairs, tok)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    write_pairs(&dir.path().join("pairs.jsonl"));

    let whole = settings(dir.path(), "whole");
    let s = run_training(&whole, loss(), &NoProgress).unwrap();
    assert_eq!((s.total_steps, s.steps, s.resumed_steps), (4, 4, 0));
    assert!(!s.reference_cached);
    let metrics = std::fs::read_to_string(whole.output.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["learning_rate"], 0.0); // warm-up starts at 0, as transformers does
    assert_eq!(lines[0]["rewards/chosen"], 0.0); // policy = reference at the first step
    for key in [
        "loss",
        "grad_norm",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
    ] {
        assert!(lines[3][key].is_number(), "{key}");
    }
    let policy = s.policy.unwrap();

    // Killed after step 1, then after step 3, then finished.
    let mut parts = settings(dir.path(), "parts");
    for (stop, resumed) in [(Some(1), 0), (Some(2), 1), (None, 3)] {
        parts.stop_after = stop;
        let s = run_training(&parts, loss(), &NoProgress).unwrap();
        assert_eq!(s.resumed_steps, resumed);
        assert!(
            s.reference_cached,
            "the reference log-probabilities are reused"
        );
    }
    let resumed = parts.output.join("policy");
    assert_eq!(
        read(&resumed.join("model.safetensors")),
        read(&policy.join("model.safetensors")),
        "resumed weights differ"
    );
    assert_eq!(
        std::fs::read_to_string(parts.output.join("metrics.jsonl")).unwrap(),
        metrics
    );

    // The export loads back (as transformers' layout) and the training moved it.
    let device = resolve_device("cpu").unwrap();
    let trained = Llama::from_pretrained(&policy, &device).unwrap();
    let initial = Llama::from_pretrained(&fixtures().join("models/policy"), &device).unwrap();
    let a = sweetspot_model::export::hf_tensors(trained.params()).unwrap();
    let b = sweetspot_model::export::hf_tensors(initial.params()).unwrap();
    let moved = a
        .iter()
        .zip(&b)
        .flat_map(|(x, y)| x.2.iter().zip(&y.2))
        .filter(|(x, y)| (*x - *y).abs() > 1e-4)
        .count();
    assert!(moved > 1000, "only {moved} weights moved");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert!(policy.join(f).exists(), "{f}");
    }
}

/// A mixed-precision run (`dtype = "bf16"`) with gradient checkpointing: it trains (its losses
/// track the f32 run's within bf16 rounding), exports f32 master weights, and caches its
/// reference log-probabilities under a key of its own (bf16's are not f32's).
#[test]
fn bf16_run_with_checkpointing_trains_and_keeps_its_own_cache() {
    let device = resolve_device("cpu").unwrap();
    if !device.supports_dtype(burn::tensor::FloatDType::BF16) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_pairs(&dir.path().join("pairs.jsonl"));
    let full = run_training(&settings(dir.path(), "f32"), loss(), &NoProgress).unwrap();
    let mut half = settings(dir.path(), "bf16");
    half.dtype = Precision::Bf16;
    half.gradient_checkpointing = true;
    let s = run_training(&half, loss(), &NoProgress).unwrap();
    assert!(
        !s.reference_cached,
        "the f32 run's reference log-probabilities must not be reused"
    );
    assert_eq!(s.steps, full.steps);
    let caches = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".ref-")
        })
        .count();
    assert_eq!(caches, 2);
    let losses = |out: &str| -> Vec<f64> {
        std::fs::read_to_string(dir.path().join(out).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    let (a, b) = (losses("f32"), losses("bf16"));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 0.05, "f32 loss {x}, bf16 loss {y}");
    }
    assert!(
        a.iter().zip(&b).any(|(x, y)| x != y),
        "bf16 computed as f32"
    );
    let trained = Llama::from_pretrained(&s.policy.unwrap(), &device).unwrap();
    assert_eq!(trained.precision(), Precision::F32);
}

fn lora_settings(dir: &Path, out: &str, merge: bool) -> TrainSettings {
    let adapter: sweetspot_core::recipe::AdapterConfig =
        serde_json::from_value(serde_json::json!({
            "type": "lora", "r": 4, "lora_alpha": 8, "target_modules": "all-linear", "merge": merge,
        }))
        .unwrap();
    TrainSettings {
        adapter: Some(adapter),
        ..settings(dir, out)
    }
}

/// LoRA: a killed and resumed run gives the same adapter byte for byte (the checkpoint holds
/// the adapters and their optimizer state; the base comes back from the run's input); the
/// export is a PEFT folder naming the base by its absolute path, which `load_causal_lm` loads;
/// `merge = true` exports the merged model, with the same logits.
#[test]
fn a_killed_lora_run_resumes_to_the_same_adapter() {
    let dir = tempfile::tempdir().unwrap();
    write_pairs(&dir.path().join("pairs.jsonl"));
    let whole = lora_settings(dir.path(), "whole", false);
    let s = run_training(&whole, loss(), &NoProgress).unwrap();
    assert_eq!((s.total_steps, s.steps), (4, 4));
    let policy = s.policy.unwrap();
    let metrics = std::fs::read_to_string(whole.output.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().nth(1).unwrap()).unwrap();
    assert!(first["grad_norm"].as_f64().unwrap() > 0.0);

    let mut parts = lora_settings(dir.path(), "parts", false);
    for (stop, resumed) in [(Some(1), 0), (Some(2), 1), (None, 3)] {
        parts.stop_after = stop;
        let s = run_training(&parts, loss(), &NoProgress).unwrap();
        assert_eq!(s.resumed_steps, resumed);
        if stop.is_some() {
            let ckpt = parts.output.join("checkpoint");
            assert!(ckpt.join("adapter_model.safetensors").is_file());
            assert!(
                !ckpt.join("model.safetensors").exists(),
                "no copy of the base"
            );
        }
    }
    let resumed = parts.output.join("policy");
    assert_eq!(
        read(&resumed.join("adapter_model.safetensors")),
        read(&policy.join("adapter_model.safetensors")),
        "resumed adapter differs"
    );
    assert_eq!(
        std::fs::read_to_string(parts.output.join("metrics.jsonl")).unwrap(),
        metrics
    );
    let config: serde_json::Value =
        serde_json::from_slice(&read(&policy.join("adapter_config.json"))).unwrap();
    let base = PathBuf::from(config["base_model_name_or_path"].as_str().unwrap());
    assert!(base.is_absolute());
    assert_eq!(
        std::fs::canonicalize(&base).unwrap(),
        std::fs::canonicalize(fixtures().join("models/policy")).unwrap()
    );
    assert!(!policy.join("model.safetensors").exists());

    // Loads as a model; merged export gives the same logits.
    let device = resolve_device("cpu").unwrap();
    let (adapted, _) = sweetspot_model::load_causal_lm(&policy, &device, Precision::F32).unwrap();
    assert!(adapted.has_adapters());
    let merged_run = lora_settings(dir.path(), "merged", true);
    let m = run_training(&merged_run, loss(), &NoProgress).unwrap();
    let merged_dir = m.policy.unwrap();
    assert!(merged_dir.join("model.safetensors").is_file());
    assert!(!merged_dir.join("adapter_config.json").exists());
    let merged = Llama::from_pretrained(&merged_dir, &device).unwrap();
    let logits = |model: &Llama| {
        use burn::tensor::{Bool, Int, Tensor, TensorData};
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 42, 77], [1, 5]), &device);
        let pos =
            Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 4], [1, 5]), &device);
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; 5], [1, 5]), &device);
        model
            .forward(ids, pos, mask, None)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let (a, b) = (logits(&adapted), logits(&merged));
    let base_model = Llama::from_pretrained(&fixtures().join("models/policy"), &device).unwrap();
    let c = logits(&base_model);
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "merged vs adapter logits: {worst}");
    let moved = a
        .iter()
        .zip(&c)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-3, "training did not move the adapter ({moved})");
}

/// LoRA on a bf16 base with gradient checkpointing: it trains (losses within bf16 rounding of
/// the f32 base's), caches its reference log-probabilities under its own key, keeps the adapters
/// f32 and exports them. Then the exported adapter folder as the next run's policy: a full run
/// merges it into its base and trains every weight; a LoRA run from it is refused unless
/// `merge = true`.
#[test]
fn lora_on_a_bf16_base_and_runs_from_an_adapter_folder() {
    let device = resolve_device("cpu").unwrap();
    if !device.supports_dtype(burn::tensor::FloatDType::BF16) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_pairs(&dir.path().join("pairs.jsonl"));
    let f32_run = run_training(
        &lora_settings(dir.path(), "f32", false),
        loss(),
        &NoProgress,
    )
    .unwrap();
    let mut half = lora_settings(dir.path(), "bf16", false);
    if let Some(a) = half.adapter.as_mut() {
        a.base_dtype = Precision::Bf16;
    }
    half.gradient_checkpointing = true;
    let s = run_training(&half, loss(), &NoProgress).unwrap();
    assert!(
        !s.reference_cached,
        "the f32 base's reference must not be reused"
    );
    let losses = |out: &str| -> Vec<f64> {
        std::fs::read_to_string(dir.path().join(out).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    let (a, b) = (losses("f32"), losses("bf16"));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 0.05, "f32 base {x}, bf16 base {y}");
    }
    assert!(
        a.iter().zip(&b).any(|(x, y)| x != y),
        "bf16 computed as f32"
    );
    let folder = s.policy.unwrap();
    let (model, _) = sweetspot_model::load_causal_lm(&folder, &device, Precision::Bf16).unwrap();
    assert_eq!(model.precision(), Precision::Bf16);
    let lora = model.params().adapters.as_ref().unwrap().layers[0]
        .q_proj
        .as_ref()
        .unwrap();
    assert_eq!(lora.lora_a.val().dtype(), burn::tensor::DType::F32);

    // The adapter folder as a policy.
    let adapter_policy = f32_run.policy.unwrap();
    let mut full = settings(dir.path(), "from-adapter");
    full.policy = adapter_policy.clone();
    let s = run_training(&full, loss(), &NoProgress).unwrap();
    let out = s.policy.unwrap();
    assert!(
        out.join("model.safetensors").is_file(),
        "a full model comes out"
    );
    let mut again = lora_settings(dir.path(), "lora-from-adapter", false);
    again.policy = adapter_policy.clone();
    let e = run_training(&again, loss(), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(e.contains("merge = true"), "{e}");
    let mut merged = lora_settings(dir.path(), "lora-from-adapter-merged", true);
    merged.policy = adapter_policy;
    let s = run_training(&merged, loss(), &NoProgress).unwrap();
    assert!(s.policy.unwrap().join("model.safetensors").is_file());
}

/// The reference log-probabilities (chosen, rejected) of `pairs` under the fixture policy.
fn reference_logps(pairs: &[&sweetspot_train::TokenizedPair]) -> (Vec<f32>, Vec<f32>) {
    let device = resolve_device("cpu").unwrap();
    let model = Llama::from_pretrained(&fixtures().join("models/policy"), &device).unwrap();
    let (l, _) =
        sweetspot_train::response_logps(&model, &sweetspot_train::pair_sequences(pairs)).unwrap();
    let v = l.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let n = pairs.len();
    (v[..n].to_vec(), v[n..].to_vec())
}

fn max_diff(a: &[(String, Vec<usize>, Vec<f32>)], b: &[(String, Vec<usize>, Vec<f32>)]) -> f32 {
    let mut worst = 0f32;
    for ((na, _, x), (nb, _, y)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs());
        }
    }
    worst
}

#[test]
fn data_parallel_steps_equal_one_device() {
    // Replicas on the CPU, several times the same device: the sharing out, the reduction onto
    // each parameter's owner, the sharded step and the copy back run as on several GPUs.
    let device = resolve_device("cpu").unwrap().autodiff();
    let policy_dir = fixtures().join("models/policy");
    let (pairs, _) = fixture_pairs();
    let batch: Vec<_> = pairs.iter().take(4).collect();
    let refs = reference_logps(&batch);
    let settings = OptimizerSettings {
        weight_decay: 0.01,
        max_grad_norm: Some(0.5),
        ..OptimizerSettings::default()
    };
    // SWEETSPOT_TEST_DP_DEVICE (e.g. `wgpu:cpu`, lavapipe, in a build with `--features wgpu`):
    // the replicas after the first go there, so gradients and weights cross devices.
    let other = std::env::var("SWEETSPOT_TEST_DP_DEVICE")
        .ok()
        .map(|d| resolve_device(&d).unwrap().autodiff());
    let run = |replicas: usize, micro: usize| {
        let policy = Llama::from_pretrained(&policy_dir, &device).unwrap();
        let mut devices = vec![device.clone(); replicas];
        if let Some(o) = &other {
            devices[1..].fill(o.clone());
        }
        let mut t = Trainer::new(policy, None, loss(), settings)
            .unwrap()
            .with_data_parallel(&devices)
            .unwrap();
        let mut metrics = Vec::new();
        for lr in [1e-3, 5e-4, 1e-3] {
            metrics.push(t.accumulate_step(&batch, Some(&refs), micro, lr).unwrap());
        }
        let params = sweetspot_model::export::hf_tensors(&t.policy_params().unwrap()).unwrap();
        for r in t.replica_params() {
            let p = sweetspot_model::export::hf_tensors(&r).unwrap();
            assert_eq!(max_diff(&p, &params), 0.0, "replicas differ");
        }
        assert_eq!(
            t.replica_params().len(),
            if replicas > 1 { replicas } else { 0 }
        );
        (metrics, params)
    };
    let (one, one_params) = run(1, 1);
    // Clipping applies (the norm is above 0.5), so the global norm is over all replicas.
    assert!(one[0].grad_norm > 0.5, "{:?}", one[0]);
    // 2 replicas of 2 pairs; 3 replicas of 2, 2 and none; 2 replicas of one micro-batch each.
    for (replicas, micro) in [(2, 1), (3, 1), (2, 2), (4, 1)] {
        let (m, p) = run(replicas, micro);
        for (a, b) in m.iter().zip(&one) {
            for (x, y, what) in [
                (a.loss, b.loss, "loss"),
                (a.grad_norm, b.grad_norm, "grad_norm"),
                (a.rewards_margins, b.rewards_margins, "margins"),
                (a.logps_chosen, b.logps_chosen, "logps/chosen"),
            ] {
                assert!(
                    (x - y).abs() <= 1e-4 * y.abs().max(1e-2),
                    "{replicas} replicas, micro {micro}: {what} {x} vs {y}"
                );
            }
        }
        let worst = max_diff(&p, &one_params);
        assert!(worst <= 2e-4, "{replicas} replicas: worst {worst}");
    }
}

/// A data-parallel run (two replicas) killed and resumed ends with the uninterrupted
/// data-parallel run's weights byte for byte, and with the one-device run's within float
/// rounding; with LoRA only the adapters train on each replica.
#[test]
fn a_data_parallel_run_resumes_and_matches_one_device() {
    let dir = tempfile::tempdir().unwrap();
    write_pairs(&dir.path().join("pairs.jsonl"));
    let cpu = resolve_device("cpu").unwrap();
    let one = run_training(&settings(dir.path(), "one"), loss(), &NoProgress).unwrap();
    let parallel = |out: &str| TrainSettings {
        data_parallel: vec![cpu.clone(), cpu.clone()],
        ..settings(dir.path(), out)
    };
    let whole = run_training(&parallel("whole"), loss(), &NoProgress).unwrap();
    let mut parts = parallel("parts");
    for (stop, resumed) in [(Some(1), 0), (Some(2), 1), (None, 3)] {
        parts.stop_after = stop;
        assert_eq!(
            run_training(&parts, loss(), &NoProgress)
                .unwrap()
                .resumed_steps,
            resumed
        );
    }
    let weights = |p: &Path| read(&p.join("model.safetensors"));
    assert_eq!(
        weights(&parts.output.join("policy")),
        weights(whole.policy.as_ref().unwrap()),
        "resumed data-parallel weights differ"
    );
    let load = |p: &Path| {
        let m = Llama::from_pretrained(p, &cpu).unwrap();
        sweetspot_model::export::hf_tensors(m.params()).unwrap()
    };
    let worst = max_diff(
        &load(whole.policy.as_ref().unwrap()),
        &load(one.policy.as_ref().unwrap()),
    );
    assert!(worst <= 2e-4, "worst {worst}");
    let lines = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    for (a, b) in lines(&parallel("whole").output)
        .iter()
        .zip(lines(&settings(dir.path(), "one").output).iter())
    {
        let (x, y) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-4 * y.abs(), "loss {x} vs {y}");
    }

    // With gradient checkpointing on every replica.
    let ckpt = run_training(
        &TrainSettings {
            gradient_checkpointing: true,
            ..parallel("ckpt")
        },
        loss(),
        &NoProgress,
    )
    .unwrap();
    let worst = max_diff(
        &load(ckpt.policy.as_ref().unwrap()),
        &load(one.policy.as_ref().unwrap()),
    );
    assert!(worst <= 2e-4, "checkpointing: worst {worst}");

    // LoRA: two replicas against one device.
    let lora_one = run_training(
        &lora_settings(dir.path(), "lora-one", false),
        loss(),
        &NoProgress,
    )
    .unwrap();
    let lora_two = run_training(
        &TrainSettings {
            data_parallel: vec![cpu.clone(), cpu.clone()],
            ..lora_settings(dir.path(), "lora-two", false)
        },
        loss(),
        &NoProgress,
    )
    .unwrap();
    let adapter = |p: &Path| {
        let bytes = read(&p.join(sweetspot_model::lora::ADAPTER_WEIGHTS));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let t = st.tensor(&n).unwrap();
                let v: Vec<f32> = t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                (n, t.shape().to_vec(), v)
            })
            .collect::<Vec<_>>()
    };
    let a = adapter(lora_one.policy.as_ref().unwrap());
    let b = adapter(lora_two.policy.as_ref().unwrap());
    assert!(!a.is_empty());
    let worst = max_diff(&a, &b);
    assert!(worst <= 2e-4, "LoRA: worst {worst}");
    // The adapters trained (lora_B starts at zero).
    assert!(
        a.iter()
            .filter(|(n, _, _)| n.contains("lora_B"))
            .any(|(_, _, v)| v.iter().any(|x| *x != 0.0))
    );
}
