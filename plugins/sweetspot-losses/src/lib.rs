//! sweetspot's preference losses, each defined as TRL defines it. Inputs are response
//! log-probabilities summed over response tokens (`pi_*` the policy's, `ref_*` the reference's)
//! and response token counts `n_*`; every function works on `[batch]` tensors and keeps the
//! autodiff graph of the policy terms.
//!
//! | `type` | loss per pair | implicit rewards |
//! |---|---|---|
//! | `dpo` | `-(1 - e) logsig(b d) - e logsig(-b d)`, `d = (pi_c - ref_c) - (pi_r - ref_r)`; with `robust = true`: `(-(1 - e) logsig(b d) + e logsig(-b d)) / (1 - 2e)` | `b (pi - ref)` |
//! | `ipo` | `(d_c / n_c - d_r / n_r - 1 / (2b))^2`, `d_* = pi_* - ref_*` | `b (pi - ref)` |
//! | `hinge` | `relu(1 - b d)` | `b (pi - ref)` |
//! | `simpo` | `-(1 - e) logsig(b (a_c - a_r - g / b)) - e logsig(-b (...))`, `a_* = pi_* / n_*` | `b a` |
//!
//! (`b` = `beta`, `e` = `label_smoothing`, `g` = `gamma`, logsig the log-sigmoid.) TRL: `dpo` with
//! `e = 0` is DPOTrainer's `sigmoid`, `robust = true` its `robust`; `ipo` and `hinge` its `ipo`
//! and `hinge`; `simpo` CPOTrainer's `simpo` with `cpo_alpha = 0`. `dpo`, `ipo` and `hinge` take
//! TRL's `f_divergence_type` (the scores replace the log-ratios in `d`; see the `trl` module).
//!
//! Every other loss type of TRL 1.16's `DPOTrainer` (`exo_pair`, `nca_pair`, `bco_pair`,
//! `sppo_hard`, `aot`, `aot_unpaired`, `apo_zero`, `apo_down`, `discopop`, `sft`,
//! `sigmoid_norm`), TRL's list form (`type = "trl"`) and weighted sums (`type = "weighted"`) are
//! in the `trl` module, with their formulas; CPO (with AlphaPO) and ORPO in the `cpo` module.

use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, relu};
use serde::{Deserialize, Serialize};
use sweetspot_core::{
    BuildContext, ConfigIssue, LossInput, LossOutput, PluginError, PreferenceLoss,
    PreferenceLossConfig,
};

mod cpo;
mod trl;

pub use cpo::{CpoConfig, CpoLossType, OrpoConfig, ReferenceFree};
pub use trl::{
    AotConfig, AotSettings, AotUnpairedConfig, ApoDownConfig, ApoZeroConfig, BcoPairConfig,
    BetaConfig, DiscopopConfig, ExoPairConfig, FDivergence, LossType, LossTypes, NcaPairConfig,
    SftConfig, SigmoidNormConfig, SppoHardConfig, Term, TrlConfig, TrlLoss, Weighted,
    WeightedConfig,
};
use trl::{FDiv, default_alpha_coef, default_beta, is_default_alpha_coef};

/// Call from a binary to make sure this crate is linked (and its plugins registered).
#[inline(never)]
pub fn link() {
    std::hint::black_box(());
}

fn default_simpo_beta() -> f64 {
    2.0
}
fn default_gamma() -> f64 {
    0.5
}

/// `type = "dpo"`: the sigmoid loss of DPO (Rafailov et al.), optionally conservative (label
/// smoothing) or robust (Chowdhury et al.).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoConfig {
    /// Strength of the KL penalty (the paper's runs use 0.01 for Llama-3-8B-Instruct).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Assumed label-noise rate `e` in [0, 0.5).
    #[serde(default)]
    pub label_smoothing: f64,
    /// The unbiased (robust) form instead of the conservative one.
    #[serde(default)]
    pub robust: bool,
    /// TRL's `f_divergence_type` (f-DPO): `reverse_kl` (DPO), `forward_kl`, `js_divergence`,
    /// `alpha_divergence`.
    #[serde(default, skip_serializing_if = "FDivergence::is_default")]
    pub f_divergence_type: FDivergence,
    /// TRL's `f_alpha_divergence_coef`, for `alpha_divergence`.
    #[serde(
        default = "default_alpha_coef",
        skip_serializing_if = "is_default_alpha_coef"
    )]
    pub f_alpha_divergence_coef: f64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: default_beta(),
            label_smoothing: 0.0,
            robust: false,
            f_divergence_type: FDivergence::ReverseKl,
            f_alpha_divergence_coef: default_alpha_coef(),
        }
    }
}

/// `type = "ipo"`: IPO (Azar et al.) on length-averaged log-ratios, as TRL computes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpoConfig {
    /// The regularization `tau` of the paper.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// TRL's `f_divergence_type` (as `dpo`'s).
    #[serde(default, skip_serializing_if = "FDivergence::is_default")]
    pub f_divergence_type: FDivergence,
    /// TRL's `f_alpha_divergence_coef`, for `alpha_divergence`.
    #[serde(
        default = "default_alpha_coef",
        skip_serializing_if = "is_default_alpha_coef"
    )]
    pub f_alpha_divergence_coef: f64,
}

impl Default for IpoConfig {
    fn default() -> Self {
        Self {
            beta: default_beta(),
            f_divergence_type: FDivergence::ReverseKl,
            f_alpha_divergence_coef: default_alpha_coef(),
        }
    }
}

/// `type = "hinge"`: the hinge loss of SLiC (Zhao et al.).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HingeConfig {
    /// Inverse margin.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// TRL's `f_divergence_type` (as `dpo`'s).
    #[serde(default, skip_serializing_if = "FDivergence::is_default")]
    pub f_divergence_type: FDivergence,
    /// TRL's `f_alpha_divergence_coef`, for `alpha_divergence`.
    #[serde(
        default = "default_alpha_coef",
        skip_serializing_if = "is_default_alpha_coef"
    )]
    pub f_alpha_divergence_coef: f64,
}

impl Default for HingeConfig {
    fn default() -> Self {
        Self {
            beta: default_beta(),
            f_divergence_type: FDivergence::ReverseKl,
            f_alpha_divergence_coef: default_alpha_coef(),
        }
    }
}

/// `type = "simpo"`: SimPO (Meng et al.), reference-free on length-averaged log-probabilities.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimpoConfig {
    /// Reward scale.
    #[serde(default = "default_simpo_beta")]
    pub beta: f64,
    /// Target reward margin.
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// Label smoothing `e` in [0, 0.5).
    #[serde(default)]
    pub label_smoothing: f64,
}

fn check(name: &str, beta: f64, smoothing: f64) -> Result<(), PluginError> {
    if !(beta.is_finite() && beta > 0.0) {
        return Err(PluginError::config(name, "`beta` must be > 0"));
    }
    if !(0.0..0.5).contains(&smoothing) {
        return Err(PluginError::config(
            name,
            "`label_smoothing` must be in [0, 0.5)",
        ));
    }
    Ok(())
}

/// The built losses.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Dpo { smoothing: f64, robust: bool },
    Ipo,
    Hinge,
    Simpo { gamma: f64, smoothing: f64 },
}

/// A built loss.
#[derive(Debug, Clone, Copy)]
pub struct Loss {
    beta: f64,
    kind: Kind,
    fdiv: FDiv,
}

#[sweetspot_core::plugin(
    name = "dpo",
    description = "DPO's sigmoid loss; label_smoothing for conservative DPO, robust = true for robust DPO",
    example = "type = \"dpo\"\nbeta = 0.01"
)]
impl PreferenceLossConfig for DpoConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        self.build(ctx)
            .map(drop)
            .map_err(|e| ConfigIssue::from_build_error(&e))
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        check("dpo", self.beta, self.label_smoothing)?;
        let fdiv = FDiv::new("dpo", self.f_divergence_type, self.f_alpha_divergence_coef)?;
        if fdiv != FDiv::ReverseKl && self.label_smoothing > 0.0 && !self.robust {
            return Err(PluginError::config(
                "dpo",
                "`f_divergence_type` other than reverse_kl with conservative DPO \
                 (`label_smoothing` without `robust`) is not a TRL loss",
            ));
        }
        Ok(Box::new(Loss {
            fdiv,
            beta: self.beta,
            kind: Kind::Dpo {
                smoothing: self.label_smoothing,
                robust: self.robust,
            },
        }))
    }
}

#[sweetspot_core::plugin(
    name = "ipo",
    description = "IPO: squared distance of the length-averaged log-ratio margin to 1 / (2 beta)",
    example = "type = \"ipo\"\nbeta = 0.1"
)]
impl PreferenceLossConfig for IpoConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        self.build(ctx)
            .map(drop)
            .map_err(|e| ConfigIssue::from_build_error(&e))
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        check("ipo", self.beta, 0.0)?;
        Ok(Box::new(Loss {
            fdiv: FDiv::new("ipo", self.f_divergence_type, self.f_alpha_divergence_coef)?,
            beta: self.beta,
            kind: Kind::Ipo,
        }))
    }
}

#[sweetspot_core::plugin(
    name = "hinge",
    description = "SLiC's hinge loss on the log-ratio margin",
    example = "type = \"hinge\"\nbeta = 0.1"
)]
impl PreferenceLossConfig for HingeConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        self.build(ctx)
            .map(drop)
            .map_err(|e| ConfigIssue::from_build_error(&e))
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        check("hinge", self.beta, 0.0)?;
        Ok(Box::new(Loss {
            fdiv: FDiv::new(
                "hinge",
                self.f_divergence_type,
                self.f_alpha_divergence_coef,
            )?,
            beta: self.beta,
            kind: Kind::Hinge,
        }))
    }
}

#[sweetspot_core::plugin(
    name = "simpo",
    description = "SimPO: reference-free, length-normalised, with a target margin gamma",
    example = "type = \"simpo\"\nbeta = 2.0\ngamma = 0.5"
)]
impl PreferenceLossConfig for SimpoConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        self.build(ctx)
            .map(drop)
            .map_err(|e| ConfigIssue::from_build_error(&e))
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        check("simpo", self.beta, self.label_smoothing)?;
        Ok(Box::new(Loss {
            fdiv: FDiv::ReverseKl,
            beta: self.beta,
            kind: Kind::Simpo {
                gamma: self.gamma,
                smoothing: self.label_smoothing,
            },
        }))
    }
}

/// `-(1 - e) logsig(x) - e logsig(-x)`.
fn smoothed_sigmoid(x: Tensor<1>, e: f64) -> Tensor<1> {
    let pos = log_sigmoid(x.clone()).mul_scalar(-(1.0 - e));
    if e == 0.0 {
        pos
    } else {
        pos - log_sigmoid(x.neg()).mul_scalar(e)
    }
}

impl PreferenceLoss for Loss {
    fn needs_reference(&self) -> bool {
        !matches!(self.kind, Kind::Simpo { .. })
    }

    fn compute(&self, input: LossInput) -> Result<LossOutput, PluginError> {
        let b = self.beta;
        if let Kind::Simpo { gamma, smoothing } = self.kind {
            let avg_c = input.policy_chosen / input.chosen_tokens.clamp_min(1.0);
            let avg_r = input.policy_rejected / input.rejected_tokens.clamp_min(1.0);
            let logits = (avg_c.clone() - avg_r.clone()).sub_scalar(gamma / b);
            return Ok(LossOutput {
                losses: smoothed_sigmoid(logits.mul_scalar(b), smoothing),
                chosen_rewards: avg_c.clone().detach().mul_scalar(b),
                rejected_rewards: avg_r.clone().detach().mul_scalar(b),
                chosen_logps: avg_c.detach(),
                rejected_logps: avg_r.detach(),
            });
        }
        let (Some(ref_c), Some(ref_r)) = (input.reference_chosen, input.reference_rejected) else {
            return Err(PluginError::Input(
                "this loss needs reference log-probabilities".into(),
            ));
        };
        let ratio_c = input.policy_chosen.clone() - ref_c;
        let ratio_r = input.policy_rejected.clone() - ref_r;
        let score_c = self.fdiv.score(ratio_c.clone());
        let score_r = self.fdiv.score(ratio_r.clone());
        let delta = score_c.clone() - score_r.clone();
        let losses = match self.kind {
            Kind::Dpo {
                smoothing,
                robust: false,
            } => smoothed_sigmoid(delta.mul_scalar(b), smoothing),
            Kind::Dpo {
                smoothing,
                robust: true,
            } => {
                let x = delta.mul_scalar(b);
                let clean = log_sigmoid(x.clone()).mul_scalar(-(1.0 - smoothing));
                let flipped = log_sigmoid(x.neg()).mul_scalar(-smoothing);
                (clean - flipped).div_scalar(1.0 - 2.0 * smoothing)
            }
            Kind::Ipo => {
                let avg = score_c / input.chosen_tokens.clamp_min(1.0)
                    - score_r / input.rejected_tokens.clamp_min(1.0);
                avg.sub_scalar(1.0 / (2.0 * b)).powi_scalar(2)
            }
            Kind::Hinge => relu(delta.mul_scalar(-b).add_scalar(1.0)),
            Kind::Simpo { .. } => unreachable!("handled above"),
        };
        Ok(LossOutput {
            losses,
            chosen_rewards: ratio_c.detach().mul_scalar(b),
            rejected_rewards: ratio_r.detach().mul_scalar(b),
            chosen_logps: input.policy_chosen.detach(),
            rejected_logps: input.policy_rejected.detach(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t(v: &[f32]) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Device::flex())
    }

    fn vals(x: Tensor<1>) -> Vec<f32> {
        x.into_data().try_to_vec::<f32>().unwrap()
    }

    fn input() -> LossInput {
        LossInput {
            policy_chosen: t(&[-10.0, -20.0]),
            policy_rejected: t(&[-12.0, -18.0]),
            reference_chosen: Some(t(&[-11.0, -20.0])),
            reference_rejected: Some(t(&[-11.0, -19.0])),
            chosen_tokens: t(&[4.0, 5.0]),
            rejected_tokens: t(&[2.0, 3.0]),
        }
    }

    fn close(a: &[f32], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((f64::from(*x) - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    fn logsig(x: f64) -> f64 {
        -(1.0 + (-x).exp()).ln()
    }

    #[test]
    fn losses_match_hand_computed_values() {
        // d = (1 - -1, 0 - 1) = (2, -1)
        let d = [2.0, -1.0];
        let dpo = Loss {
            beta: 0.1,
            fdiv: FDiv::ReverseKl,
            kind: Kind::Dpo {
                smoothing: 0.0,
                robust: false,
            },
        };
        let out = dpo.compute(input()).unwrap();
        close(&vals(out.losses), &d.map(|d| -logsig(0.1 * d)));
        close(&vals(out.chosen_rewards), &[0.1, 0.0]);
        close(&vals(out.rejected_rewards), &[-0.1, 0.1]);
        let robust = Loss {
            beta: 0.1,
            fdiv: FDiv::ReverseKl,
            kind: Kind::Dpo {
                smoothing: 0.2,
                robust: true,
            },
        };
        let want = d.map(|d| (-(0.8) * logsig(0.1 * d) + 0.2 * logsig(-0.1 * d)) / 0.6);
        close(&vals(robust.compute(input()).unwrap().losses), &want);
        let hinge = Loss {
            beta: 0.5,
            fdiv: FDiv::ReverseKl,
            kind: Kind::Hinge,
        };
        close(&vals(hinge.compute(input()).unwrap().losses), &[0.0, 1.5]);
        // ipo: (1/4 - -1/2, 0/5 - 1/3) = (0.75, -1/3); minus 1/(2*0.5) = 1
        let ipo = Loss {
            beta: 0.5,
            fdiv: FDiv::ReverseKl,
            kind: Kind::Ipo,
        };
        close(
            &vals(ipo.compute(input()).unwrap().losses),
            &[0.0625, (1.0_f64 + 1.0 / 3.0).powi(2)],
        );
        // simpo: averages (-2.5, -4) and (-6, -6); margin (3.5, 2) - gamma/beta 0.25
        let simpo = Loss {
            beta: 2.0,
            fdiv: FDiv::ReverseKl,
            kind: Kind::Simpo {
                gamma: 0.5,
                smoothing: 0.0,
            },
        };
        assert!(!simpo.needs_reference());
        let out = simpo.compute(input()).unwrap();
        close(
            &vals(out.losses),
            &[-logsig(2.0 * 3.25), -logsig(2.0 * 1.75)],
        );
        close(&vals(out.chosen_rewards), &[-5.0, -8.0]);
        close(&vals(out.chosen_logps), &[-2.5, -4.0]);
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let ctx = BuildContext::new(".");
        let cfg = DpoConfig {
            beta: 0.0,
            label_smoothing: 0.0,
            ..DpoConfig::default()
        };
        assert!(cfg.build(&ctx).err().unwrap().to_string().contains("beta"));
        let cfg = SimpoConfig {
            beta: 2.0,
            gamma: 0.5,
            label_smoothing: 0.5,
        };
        assert!(
            cfg.build(&ctx)
                .err()
                .unwrap()
                .to_string()
                .contains("label_smoothing")
        );
        let dpo = DpoConfig {
            beta: 0.1,
            ..DpoConfig::default()
        }
        .build(&ctx)
        .unwrap();
        let mut i = input();
        i.reference_chosen = None;
        assert!(dpo.compute(i).is_err());
    }
}
