//! Two optimizer steps against TRL (`scripts/trl_dpo_reference.py` ->
//! `tests/fixtures/dpo/`): a tiny random-weight Llama policy with a Llama-3-style chat template,
//! four conversational pairs in one batch, AdamW (lr 1e-3, weight decay 0.01, eps 1e-8), global
//! gradient clipping at 1.0, beta 0.1, for DPO (`sigmoid`), robust DPO (label smoothing 0.1), IPO
//! and hinge through TRL's `DPOTrainer`, and SimPO (gamma 0.5) through the loss of TRL's
//! `CPOTrainer`.
//!
//! Checked: TRL's token ids; each step's loss, grad_norm, rewards/*, logps/* (tolerance 1e-4
//! relative, 1e-5 absolute: f32 on both sides); and every parameter after the two steps: 99.9%
//! within 1e-6 and all within 2e-4, where one AdamW step moves a weight by about lr = 1e-3. (Adam
//! divides by the gradient's own magnitude, so the few weights whose gradients are near zero, about
//! 10 of 115,008 here, move by amounts that float rounding in the gradient changes visibly.)

use std::path::PathBuf;

use sweetspot_core::{BuildContext, Message, PreferenceLossConfig};
use sweetspot_losses::{
    AotConfig, AotSettings, AotUnpairedConfig, ApoDownConfig, ApoZeroConfig, BcoPairConfig,
    BetaConfig, CpoConfig, CpoLossType, DiscopopConfig, DpoConfig, ExoPairConfig, FDivergence,
    HingeConfig, IpoConfig, LossType, LossTypes, NcaPairConfig, OrpoConfig, SftConfig,
    SigmoidNormConfig, SimpoConfig, SppoHardConfig, TrlConfig,
};
use sweetspot_model::{Llama, Precision, Tokenizer, resolve_device};
use sweetspot_train::{OptimizerSettings, StepMetrics, TokenizedPair, Trainer, tokenize_pair};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("dpo/reference.json")).unwrap())
        .unwrap()
}

fn messages(v: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn pairs(r: &serde_json::Value, policy: &str) -> Vec<TokenizedPair> {
    let tok = Tokenizer::from_dir(&root().join("models").join(policy), &[]).unwrap();
    let pairs: Vec<TokenizedPair> = r["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            tokenize_pair(
                &tok,
                &messages(&p["prompt"]),
                &messages(&p["chosen"]),
                &messages(&p["rejected"]),
            )
            .unwrap()
        })
        .collect();
    for (p, t) in pairs.iter().zip(r["tokenized"].as_array().unwrap()) {
        assert_eq!(p.prompt, ids(&t["prompt_ids"]));
        assert_eq!(p.chosen, ids(&t["chosen_ids"]));
        assert_eq!(p.rejected, ids(&t["rejected_ids"]));
    }
    pairs
}

/// Tolerances: (absolute, relative).
type Tol = (f64, f64);
const F32_TOL: Tol = (1e-5, 1e-4);

/// The metrics of `m` that differ from `want` beyond `tol`: (name, got, want).
fn metric_diffs(m: &StepMetrics, want: &serde_json::Value, tol: Tol) -> Vec<(String, f64, f64)> {
    let f = |k: &str| want[k].as_f64().unwrap();
    [
        ("loss", m.loss),
        ("grad_norm", m.grad_norm),
        ("rewards/chosen", m.rewards_chosen),
        ("rewards/rejected", m.rewards_rejected),
        ("rewards/accuracies", m.rewards_accuracies),
        ("rewards/margins", m.rewards_margins),
        ("logps/chosen", m.logps_chosen),
        ("logps/rejected", m.logps_rejected),
    ]
    .into_iter()
    .filter(|(k, got)| (got - f(k)).abs() > tol.0 + tol.1 * f(k).abs())
    .map(|(k, got)| (k.to_string(), got, f(k)))
    .collect()
}

fn check_metrics(m: &StepMetrics, want: &serde_json::Value, what: &str, tol: Tol) {
    eprintln!("{what}: {m:?}");
    let diffs = metric_diffs(m, want, tol);
    assert!(diffs.is_empty(), "{what}: (metric, got, TRL) {diffs:?}");
}

fn run(name: &str, loss: &dyn PreferenceLossConfig) {
    let (trainer, _) = two_steps(name, loss, &reference(), Precision::F32, F32_TOL);
    check_params(&format!("after_{name}"), &trainer);
}

/// Two steps of `loss` at compute precision `precision`, each step's metrics checked against
/// the reference's `steps.<name>` within `tol`.
fn two_steps(
    name: &str,
    loss: &dyn PreferenceLossConfig,
    steps: &serde_json::Value,
    precision: Precision,
    tol: Tol,
) -> (Trainer, Vec<StepMetrics>) {
    two_steps_of("policy", name, loss, steps, precision, Some(tol))
}

/// [`two_steps`] on the policy fixture `models/<policy>` (metrics unchecked without `tol`).
fn two_steps_of(
    policy: &str,
    name: &str,
    loss: &dyn PreferenceLossConfig,
    steps: &serde_json::Value,
    precision: Precision,
    tol: Option<Tol>,
) -> (Trainer, Vec<StepMetrics>) {
    let r = reference();
    let pairs = pairs(&r, policy);
    let h = &r["hyper"];
    let device = resolve_device("cpu").unwrap();
    let dir = root().join("models").join(policy);
    let policy = Llama::from_pretrained(&dir, &device.clone().autodiff()).unwrap();
    let reference_model = Llama::from_pretrained(&dir, &device.clone().autodiff()).unwrap();
    let settings = OptimizerSettings {
        beta1: h["adam_beta1"].as_f64().unwrap() as f32,
        beta2: h["adam_beta2"].as_f64().unwrap() as f32,
        epsilon: h["adam_epsilon"].as_f64().unwrap() as f32,
        weight_decay: h["weight_decay"].as_f64().unwrap() as f32,
        max_grad_norm: h["max_grad_norm"].as_f64(),
    };
    let loss = loss.build(&BuildContext::new(".")).unwrap();
    let mut trainer = Trainer::new(policy, Some(reference_model), loss, settings)
        .unwrap()
        .with_compute_precision(precision)
        .unwrap();
    let lr = h["learning_rate"].as_f64().unwrap();
    let mut metrics = Vec::new();
    for (i, want) in steps["steps"][name].as_array().unwrap().iter().enumerate() {
        if let (Some(tol), Some(_)) = (tol, want.get("logits/chosen")) {
            // TRL's `logits/*` (the trainer does not log them): the policy before this step.
            let got = mean_logits(trainer.policy().unwrap(), &pairs);
            for (k, got) in ["logits/chosen", "logits/rejected"].into_iter().zip(got) {
                let w = want[k].as_f64().unwrap();
                eprintln!("{name} step {} {k}: {got} vs TRL {w}", i + 1);
                assert!(
                    (got - w).abs() <= tol.0 * 1e-2 + tol.1 * w.abs(),
                    "{name} step {} {k}: {got} vs TRL {w}",
                    i + 1
                );
            }
        }
        let m = trainer.step(&pairs, lr).unwrap();
        if let Some(tol) = tol {
            check_metrics(&m, want, &format!("{name} {precision} step {}", i + 1), tol);
        }
        metrics.push(m);
    }
    (trainer, metrics)
}

/// TRL's `logits/chosen` and `logits/rejected` of `policy` on `pairs`: the mean over the
/// vocabulary of the logits that predict each completion token, averaged over every chosen
/// (rejected) completion token of the batch.
fn mean_logits(policy: &Llama, pairs: &[TokenizedPair]) -> [f64; 2] {
    use burn::tensor::{Bool, Int, Tensor, TensorData};
    let d = policy.device().clone();
    let side = |pick: fn(&TokenizedPair) -> &Vec<u32>| {
        let (mut sum, mut n) = (0f64, 0usize);
        for p in pairs {
            let ids: Vec<i64> = p.prompt.iter().chain(pick(p)).map(|&i| i as i64).collect();
            let t = ids.len();
            let logits = policy
                .forward(
                    Tensor::<2, Int>::from_data(TensorData::new(ids, [1, t]), &d),
                    Tensor::<2, Int>::from_data(
                        TensorData::new((0..t as i64).collect(), [1, t]),
                        &d,
                    ),
                    Tensor::<2, Bool>::from_data(TensorData::new(vec![true; t], [1, t]), &d),
                    None,
                )
                .unwrap();
            let means = logits
                .detach()
                .mean_dim(2)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            // Position i predicts token i + 1: the completion from the prompt's last token.
            for m in &means[p.prompt.len() - 1..t - 1] {
                sum += f64::from(*m);
                n += 1;
            }
        }
        sum / n as f64
    };
    [side(|p| &p.chosen), side(|p| &p.rejected)]
}

/// Every parameter against `dpo/<file>.safetensors`.
fn check_params(file: &str, trainer: &Trainer) {
    if let Err(e) = params_match(file, trainer) {
        panic!("{e}");
    }
}

/// Whether every parameter is within the tolerance of `dpo/<file>.safetensors`, or how not.
fn params_match(file: &str, trainer: &Trainer) -> Result<(), String> {
    let name = file;
    let after = std::fs::read(root().join(format!("dpo/{file}.safetensors"))).unwrap();
    let after = safetensors::SafeTensors::deserialize(&after).unwrap();
    let params = trainer.policy_params().unwrap();
    let mut worst = 0f32;
    let mut diffs = Vec::new();
    for (key, _, got) in sweetspot_model::export::hf_tensors(&params).unwrap() {
        let t = after.tensor(&key).unwrap();
        let want: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got.len(), want.len(), "{key}");
        for (g, w) in got.iter().zip(&want) {
            worst = worst.max((g - w).abs());
            diffs.push((g - w).abs());
        }
    }
    let loose = diffs.iter().filter(|d| **d > 1e-6).count();
    if loose * 1000 > diffs.len() {
        return Err(format!(
            "{name}: {loose} of {} parameters differ from TRL's by more than 1e-6",
            diffs.len()
        ));
    }
    if worst > 2e-4 {
        return Err(format!(
            "{name}: parameters differ from TRL's by up to {worst}"
        ));
    }
    Ok(())
}

#[test]
fn dpo_sigmoid_two_steps_match_trl() {
    run(
        "sigmoid",
        &DpoConfig {
            beta: 0.1,
            ..DpoConfig::default()
        },
    );
}

#[test]
fn robust_dpo_two_steps_match_trl() {
    run(
        "robust",
        &DpoConfig {
            beta: 0.1,
            label_smoothing: 0.1,
            robust: true,
            ..DpoConfig::default()
        },
    );
}

#[test]
fn ipo_two_steps_match_trl() {
    run(
        "ipo",
        &IpoConfig {
            beta: 0.1,
            ..IpoConfig::default()
        },
    );
}

#[test]
fn hinge_two_steps_match_trl() {
    run(
        "hinge",
        &HingeConfig {
            beta: 0.1,
            ..HingeConfig::default()
        },
    );
}

#[test]
fn simpo_two_steps_match_trl() {
    run(
        "simpo",
        &SimpoConfig {
            beta: 0.1,
            gamma: 0.5,
            label_smoothing: 0.0,
        },
    );
}

/// A Qwen3 policy (`models/policy-qwen3`: per-head q/k norms, head_dim 32 over hidden size 64,
/// tied embeddings; `scripts/trl_dpo_reference.py --qwen3`): DPO's two steps against TRL's, the
/// same pairs and settings, the same tolerances; then its export loads back to the same logits.
#[test]
fn qwen3_dpo_two_steps_match_trl() {
    let steps: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("dpo/reference_qwen3.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(steps["tokenized"], reference()["tokenized"]);
    let loss = DpoConfig {
        beta: 0.1,
        ..DpoConfig::default()
    };
    let (trainer, _) = two_steps_of(
        "policy-qwen3",
        "sigmoid",
        &loss,
        &steps,
        Precision::F32,
        Some(F32_TOL),
    );
    check_params("after_qwen3_sigmoid", &trainer);
    let policy = trainer.policy().unwrap();
    assert!(
        policy.params().lm_head.is_none(),
        "tied embeddings stay tied"
    );
    assert!(policy.params().model.layers[0].self_attn.q_norm.is_some());
    // Exported in transformers' layout (Qwen3ForCausalLM, q_norm/k_norm included) and loaded
    // back: the same logits.
    let tmp = tempfile::tempdir().unwrap();
    let tok = Tokenizer::from_dir(&root().join("models/policy-qwen3"), &[]).unwrap();
    policy.save_pretrained(tmp.path(), &tok).unwrap();
    let config = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    assert!(config.contains("Qwen3ForCausalLM"), "{config}");
    let device = resolve_device("cpu").unwrap();
    let back = Llama::from_pretrained(tmp.path(), &device).unwrap();
    let ids = &pairs(&steps, "policy-qwen3")[0].prompt;
    let logits = |m: &Llama| -> Vec<f32> {
        use burn::tensor::{Bool, Int, Tensor, TensorData};
        let d = m.device().clone();
        let t = ids.len();
        let tokens: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        m.forward(
            Tensor::<2, Int>::from_data(TensorData::new(tokens, [1, t]), &d),
            Tensor::<2, Int>::from_data(TensorData::new((0..t as i64).collect(), [1, t]), &d),
            Tensor::<2, Bool>::from_data(TensorData::new(vec![true; t], [1, t]), &d),
            None,
        )
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
    };
    let (a, b) = (logits(&back), logits(policy));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "export round trip: logits differ by {worst}");
}

/// Mixed precision (`bf16 = true` in TRL: f32 weights and optimizer, bf16 arithmetic) against
/// TRL's `bf16=True` (`tests/fixtures/dpo/reference_bf16.json`). TRL autocasts: matrix products
/// in bf16, the residual stream and norms in f32; sweetspot casts every weight, so activations
/// are bf16 throughout (as a model loaded with `torch_dtype=bfloat16` under DeepSpeed's bf16
/// mode computes). Tolerance 2e-2 relative + 2e-3 absolute; seen: rewards/chosen at step 2
/// 1.5% (0.2586 vs 0.2549; TRL's own f32 run gives 0.2550), grad_norm 0.4%, logps 3e-4.
#[test]
fn dpo_sigmoid_bf16_two_steps_match_trl_bf16() {
    let steps: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("dpo/reference_bf16.json")).unwrap(),
    )
    .unwrap();
    let device = resolve_device("cpu").unwrap();
    if !device.supports_dtype(burn::tensor::FloatDType::BF16) {
        return;
    }
    let loss = DpoConfig {
        beta: 0.1,
        ..DpoConfig::default()
    };
    let (trainer, metrics) = two_steps("sigmoid", &loss, &steps, Precision::Bf16, (2e-3, 2e-2));
    // And it really computed in bf16: the log-probabilities are not f32's.
    let f32_logps = reference()["steps"]["sigmoid"][0]["logps/chosen"]
        .as_f64()
        .unwrap();
    assert!(
        (metrics[0].logps_chosen - f32_logps).abs() > 1e-3,
        "{} is f32's {f32_logps}",
        metrics[0].logps_chosen
    );
    // The weights stay f32 (master weights).
    let params = trainer.policy_params().unwrap();
    assert_eq!(
        params.model.embed_tokens.weight.val().dtype(),
        burn::tensor::DType::F32
    );
}

// ---------------------------------------------------------------------------------------------
// Every other loss type of TRL's DPOTrainer, TRL's MPO combination and the f-divergences
// (`scripts/trl_dpo_reference.py --losses` -> `dpo/reference_losses.json`, the same policy,
// pairs and settings as above)
// ---------------------------------------------------------------------------------------------

fn losses_reference() -> serde_json::Value {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("dpo/reference_losses.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["tokenized"], reference()["tokenized"]);
    assert_eq!(r["hyper"], reference()["hyper"]);
    r
}

/// Two steps of `loss` against `reference_losses.json`'s `steps.<name>`: metrics and every
/// parameter.
fn run_loss(name: &str, loss: &dyn PreferenceLossConfig) {
    let r = losses_reference();
    let (trainer, _) = two_steps_of("policy", name, loss, &r, Precision::F32, Some(F32_TOL));
    check_params(&format!("after_{name}"), &trainer);
}

/// The sensitivity check: `loss` (the TRL settings of `name` with one parameter changed) does
/// not match TRL's run: some metric of some step, or some parameter, is out of tolerance (a
/// weight on a lone term changes the loss and gradient norm but not Adam's clipped steps).
fn differs(name: &str, loss: &dyn PreferenceLossConfig) {
    differs_from(&losses_reference(), name, loss);
}

/// [`differs`] against the reference `r`.
fn differs_from(r: &serde_json::Value, name: &str, loss: &dyn PreferenceLossConfig) {
    let (trainer, metrics) = two_steps_of("policy", name, loss, r, Precision::F32, None);
    let off: Vec<_> = metrics
        .iter()
        .zip(r["steps"][name].as_array().unwrap())
        .flat_map(|(m, want)| metric_diffs(m, want, F32_TOL))
        .collect();
    let params = params_match(&format!("after_{name}"), &trainer);
    eprintln!("{name} perturbed: {off:?}, {params:?}");
    assert!(
        !off.is_empty() || params.is_err(),
        "{name}: a perturbed {loss:?} still matches TRL"
    );
}

/// [`run_loss`], then [`differs`] with `perturbed`.
fn parity(name: &str, loss: &dyn PreferenceLossConfig, perturbed: &dyn PreferenceLossConfig) {
    run_loss(name, loss);
    differs(name, perturbed);
}

fn beta(b: f64) -> BetaConfig {
    BetaConfig { beta: b }
}

#[test]
fn exo_pair_two_steps_match_trl() {
    let loss = |e| ExoPairConfig {
        beta: 0.1,
        label_smoothing: e,
        f_divergence_type: FDivergence::ReverseKl,
        f_alpha_divergence_coef: 0.5,
    };
    parity("exo_pair", &loss(1e-3), &loss(2e-3));
}

#[test]
fn nca_pair_two_steps_match_trl() {
    parity(
        "nca_pair",
        &NcaPairConfig(beta(0.1)),
        &NcaPairConfig(beta(0.12)),
    );
}

#[test]
fn bco_pair_two_steps_match_trl() {
    parity(
        "bco_pair",
        &BcoPairConfig(beta(0.1)),
        &BcoPairConfig(beta(0.12)),
    );
}

#[test]
fn sppo_hard_two_steps_match_trl() {
    parity(
        "sppo_hard",
        &SppoHardConfig(beta(0.1)),
        &SppoHardConfig(beta(0.12)),
    );
}

#[test]
fn aot_two_steps_match_trl() {
    let loss = |e| {
        AotConfig(AotSettings {
            beta: 0.1,
            label_smoothing: e,
        })
    };
    parity("aot", &loss(0.1), &loss(0.0));
}

#[test]
fn aot_unpaired_two_steps_match_trl() {
    let loss = |b| {
        AotUnpairedConfig(AotSettings {
            beta: b,
            label_smoothing: 0.0,
        })
    };
    parity("aot_unpaired", &loss(0.1), &loss(0.12));
}

#[test]
fn apo_zero_two_steps_match_trl() {
    parity(
        "apo_zero",
        &ApoZeroConfig(beta(0.1)),
        &ApoZeroConfig(beta(0.12)),
    );
}

#[test]
fn apo_down_two_steps_match_trl() {
    parity(
        "apo_down",
        &ApoDownConfig(beta(0.1)),
        &ApoDownConfig(beta(0.12)),
    );
}

#[test]
fn discopop_two_steps_match_trl() {
    let loss = |tau| DiscopopConfig {
        beta: 0.1,
        discopop_tau: tau,
        f_divergence_type: FDivergence::ReverseKl,
        f_alpha_divergence_coef: 0.5,
    };
    parity("discopop", &loss(0.05), &loss(0.1));
}

#[test]
fn sigmoid_norm_two_steps_match_trl() {
    let loss = |b| SigmoidNormConfig {
        beta: b,
        f_divergence_type: FDivergence::ReverseKl,
        f_alpha_divergence_coef: 0.5,
    };
    parity("sigmoid_norm", &loss(0.1), &loss(0.12));
}

/// `sft` alone through `type = "sft"` (reference-free: its rewards/* are the log-probabilities,
/// not TRL's `beta (pi - ref)`, so only loss, grad_norm, logps and the parameters are compared),
/// and through `type = "trl"` with TRL's rewards too; the sensitivity check weights it 0.9.
#[test]
fn sft_two_steps_match_trl() {
    let r = losses_reference();
    let (trainer, metrics) = two_steps_of("policy", "sft", &SftConfig {}, &r, Precision::F32, None);
    for (i, (m, want)) in metrics
        .iter()
        .zip(r["steps"]["sft"].as_array().unwrap())
        .enumerate()
    {
        let off: Vec<_> = metric_diffs(m, want, F32_TOL)
            .into_iter()
            .filter(|(k, ..)| !k.starts_with("rewards/"))
            .collect();
        assert!(off.is_empty(), "sft step {}: {off:?}", i + 1);
    }
    check_params("after_sft", &trainer);
    let trl = |w: f64| TrlConfig {
        loss_type: LossTypes(vec![LossType::Sft]),
        loss_weights: Some(vec![w]),
        ..TrlConfig::default()
    };
    parity("sft", &trl(1.0), &trl(0.9));
}

/// TRL's MPO example, `loss_type = ["sigmoid", "bco_pair", "sft"]` with `loss_weights = [0.8,
/// 0.2, 1.0]`, in both recipe forms: `type = "trl"` as TRL writes it, and `type = "weighted"`
/// with `[[terms]]` (deserialized through typetag, as a recipe is). Sensitivity: bco_pair
/// weighted 0.3.
#[test]
fn mpo_combination_two_steps_match_trl() {
    let trl = |w: f64| TrlConfig {
        loss_type: LossTypes(vec![LossType::Sigmoid, LossType::BcoPair, LossType::Sft]),
        loss_weights: Some(vec![0.8, w, 1.0]),
        ..TrlConfig::default()
    };
    parity("mpo", &trl(0.2), &trl(0.3));
    let weighted = |w: f64| -> Box<dyn PreferenceLossConfig> {
        serde_json::from_value(serde_json::json!({
            "type": "weighted",
            "terms": [
                {"type": "dpo", "beta": 0.1, "weight": 0.8},
                {"type": "bco_pair", "weight": w},
                {"type": "sft", "weight": 1.0},
            ],
        }))
        .unwrap()
    };
    parity("mpo", weighted(0.2).as_ref(), weighted(0.3).as_ref());
}

#[test]
fn sigmoid_forward_kl_two_steps_match_trl() {
    let loss = |f| DpoConfig {
        f_divergence_type: f,
        ..DpoConfig::default()
    };
    parity(
        "sigmoid_forward_kl",
        &loss(FDivergence::ForwardKl),
        &loss(FDivergence::JsDivergence),
    );
}

#[test]
fn sigmoid_js_divergence_two_steps_match_trl() {
    let loss = |f| DpoConfig {
        f_divergence_type: f,
        ..DpoConfig::default()
    };
    parity(
        "sigmoid_js_divergence",
        &loss(FDivergence::JsDivergence),
        &loss(FDivergence::ReverseKl),
    );
}

#[test]
fn ipo_alpha_divergence_two_steps_match_trl() {
    let loss = |a| IpoConfig {
        beta: 0.1,
        f_divergence_type: FDivergence::AlphaDivergence,
        f_alpha_divergence_coef: a,
    };
    parity("ipo_alpha_divergence", &loss(0.5), &loss(0.3));
}

/// `type = "trl"` with each fixture's settings exactly as the script handed them to TRL's
/// `DPOConfig` (`settings.<name>`: `loss_type`, `loss_weights`, `label_smoothing`,
/// `f_divergence_type`, `f_alpha_divergence_coef` under TRL's names): every case matches.
#[test]
fn trl_form_with_trls_own_settings_matches_every_case() {
    let r = losses_reference();
    for (name, settings) in r["settings"].as_object().unwrap() {
        let mut table = settings.clone();
        table["type"] = "trl".into();
        let loss: Box<dyn PreferenceLossConfig> = serde_json::from_value(table).unwrap();
        let (trainer, _) = two_steps_of(
            "policy",
            name,
            loss.as_ref(),
            &r,
            Precision::F32,
            Some(F32_TOL),
        );
        check_params(&format!("after_{name}"), &trainer);
    }
}

// ---------------------------------------------------------------------------------------------
// CPO, AlphaPO and ORPO (`scripts/trl_dpo_reference.py --reference-free` ->
// `dpo/reference_free.json`: the losses of TRL's experimental CPOTrainer and ORPOTrainer on the
// same tokens, stepped in torch as SimPO is)
// ---------------------------------------------------------------------------------------------

fn reference_free(name: &str, loss: &CpoOrOrpo, perturbed: &CpoOrOrpo) {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("dpo/reference_free.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["tokenized"], reference()["tokenized"]);
    let (trainer, _) = two_steps_of(
        "policy",
        name,
        loss.as_ref(),
        &r,
        Precision::F32,
        Some(F32_TOL),
    );
    check_params(&format!("after_{name}"), &trainer);
    let (trainer, metrics) =
        two_steps_of("policy", name, perturbed.as_ref(), &r, Precision::F32, None);
    let off: Vec<_> = metrics
        .iter()
        .zip(r["steps"][name].as_array().unwrap())
        .flat_map(|(m, want)| metric_diffs(m, want, F32_TOL))
        .collect();
    let params = params_match(&format!("after_{name}"), &trainer);
    assert!(
        !off.is_empty() || params.is_err(),
        "{name}: a perturbed {perturbed:?} still matches TRL"
    );
}

type CpoOrOrpo = Box<dyn PreferenceLossConfig>;

#[test]
fn cpo_two_steps_match_trl() {
    let cpo = |a: f64| -> CpoOrOrpo {
        Box::new(CpoConfig {
            cpo_alpha: a,
            ..CpoConfig::default()
        })
    };
    reference_free("cpo", &cpo(1.0), &cpo(0.9));
    let ipo = |b: f64| -> CpoOrOrpo {
        Box::new(CpoConfig {
            loss_type: CpoLossType::Ipo,
            cpo_alpha: 0.5,
            beta: b,
            ..CpoConfig::default()
        })
    };
    reference_free("cpo_ipo", &ipo(0.1), &ipo(0.12));
}

#[test]
fn alphapo_two_steps_match_trl() {
    let alphapo = |a: f64| -> CpoOrOrpo {
        Box::new(CpoConfig {
            loss_type: CpoLossType::Alphapo,
            alpha: a,
            beta: 2.0,
            ..CpoConfig::default()
        })
    };
    reference_free("alphapo", &alphapo(0.25), &alphapo(0.3));
}

#[test]
fn orpo_two_steps_match_trl() {
    let orpo = |b: f64| -> CpoOrOrpo { Box::new(OrpoConfig { beta: b }) };
    reference_free("orpo", &orpo(0.1), &orpo(0.12));
}

/// The sensitivity checks of the first five losses (`reference.json`): one changed parameter
/// each breaks the match.
#[test]
fn first_losses_with_a_changed_parameter_do_not_match_trl() {
    let r = reference();
    let dpo = |b, e, robust| DpoConfig {
        beta: b,
        label_smoothing: e,
        robust,
        ..DpoConfig::default()
    };
    differs_from(&r, "sigmoid", &dpo(0.12, 0.0, false));
    differs_from(&r, "robust", &dpo(0.1, 0.2, true));
    differs_from(&r, "robust", &dpo(0.1, 0.1, false));
    differs_from(
        &r,
        "ipo",
        &IpoConfig {
            beta: 0.12,
            ..IpoConfig::default()
        },
    );
    differs_from(
        &r,
        "hinge",
        &HingeConfig {
            beta: 0.12,
            ..HingeConfig::default()
        },
    );
    differs_from(
        &r,
        "simpo",
        &SimpoConfig {
            beta: 0.1,
            gamma: 0.6,
            label_smoothing: 0.0,
        },
    );
}
