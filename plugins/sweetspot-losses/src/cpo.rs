//! The reference-free losses of TRL's experimental trainers besides SimPO: CPO (Xu et al. 2024,
//! `trl.experimental.cpo.CPOTrainer`, with AlphaPO's reward shape, Gupta et al. 2025) and ORPO
//! (Hong et al. 2024, `trl.experimental.orpo.ORPOTrainer`), each as TRL 1.16 computes it.
//!
//! With `p_*` the policy's log-probabilities (summed, or per token for `ipo`, `simpo` and ORPO),
//! `b` = `beta`, `e` = `label_smoothing` and `nll = -sum(pi_c) / sum(n_c)` (the mean NLL per
//! chosen token of the batch, the trainers' `cross_entropy_loss`):
//!
//! - CPO: `r_* = p_*`, or with `alpha != 0` AlphaPO's `r_* = (1 - exp(p_*)^-alpha) / alpha`;
//!   `x = r_c - r_r`; per pair `sigmoid`: `-(1 - e) logsig(b x) - e logsig(-b x)`, `hinge`:
//!   `relu(1 - b x)`, `ipo`: `(x - 1 / (2b))^2`, `simpo`: the sigmoid form of `x - gamma / b`;
//!   plus `cpo_alpha * nll`. Rewards `b r_*`.
//! - ORPO: `p_*` per token; `log_odds = (p_c - p_r) - (log(1 - exp(p_c)) - log(1 - exp(p_r)))`;
//!   per pair `nll - b logsig(log_odds)`. Rewards `b p_*`.

use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, relu};
use serde::{Deserialize, Serialize};
use sweetspot_core::{
    BuildContext, ConfigIssue, LossInput, LossOutput, PluginError, PreferenceLoss,
    PreferenceLossConfig,
};

use crate::trl::{check_of, default_beta, smoothed};

/// CPOTrainer's `loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpoLossType {
    /// CPO's Eq. 3 (the default).
    #[default]
    Sigmoid,
    /// SLiC's hinge.
    Hinge,
    /// IPO on per-token log-probabilities.
    Ipo,
    /// SimPO on per-token log-probabilities.
    Simpo,
    /// TRL's shorthand for `simpo` with `cpo_alpha = 0` (AlphaPO with `alpha`).
    Alphapo,
}

fn default_cpo_alpha() -> f64 {
    1.0
}
fn default_simpo_gamma() -> f64 {
    0.5
}

/// `type = "cpo"`: TRL's experimental `CPOConfig` loss settings under their names and defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpoConfig {
    /// `loss_type`: `sigmoid`, `hinge`, `ipo`, `simpo`, `alphapo`.
    #[serde(default)]
    pub loss_type: CpoLossType,
    /// `beta`.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// `label_smoothing` (sigmoid and simpo), in [0, 0.5).
    #[serde(default)]
    pub label_smoothing: f64,
    /// `cpo_alpha`: the weight of the NLL (behaviour cloning) term.
    #[serde(default = "default_cpo_alpha")]
    pub cpo_alpha: f64,
    /// `simpo_gamma`: SimPO's target margin.
    #[serde(default = "default_simpo_gamma")]
    pub simpo_gamma: f64,
    /// `alpha`: AlphaPO's reward shape (0: log-probabilities).
    #[serde(default)]
    pub alpha: f64,
}

impl Default for CpoConfig {
    fn default() -> Self {
        Self {
            loss_type: CpoLossType::Sigmoid,
            beta: default_beta(),
            label_smoothing: 0.0,
            cpo_alpha: default_cpo_alpha(),
            simpo_gamma: default_simpo_gamma(),
            alpha: 0.0,
        }
    }
}

/// `type = "orpo"`: TRL's experimental `ORPOConfig` loss settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrpoConfig {
    /// `beta`: the weight of the odds-ratio term (the paper's lambda).
    #[serde(default = "default_beta")]
    pub beta: f64,
}

impl Default for OrpoConfig {
    fn default() -> Self {
        Self {
            beta: default_beta(),
        }
    }
}

/// A built CPO or ORPO loss.
#[derive(Debug, Clone, Copy)]
pub struct ReferenceFree {
    kind: Kind,
    beta: f64,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Cpo {
        loss_type: CpoLossType,
        label_smoothing: f64,
        cpo_alpha: f64,
        simpo_gamma: f64,
        alpha: f64,
    },
    Orpo,
}

fn number(plugin: &str, key: &str, x: f64) -> Result<(), PluginError> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(PluginError::config(
            plugin,
            format!("`{key}` must be a finite number"),
        ))
    }
}

impl CpoConfig {
    fn loss(&self) -> Result<ReferenceFree, PluginError> {
        const P: &str = "cpo";
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(PluginError::config(P, "`beta` must be > 0"));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(PluginError::config(
                P,
                "`label_smoothing` must be in [0, 0.5)",
            ));
        }
        number(P, "cpo_alpha", self.cpo_alpha)?;
        number(P, "simpo_gamma", self.simpo_gamma)?;
        number(P, "alpha", self.alpha)?;
        let (loss_type, cpo_alpha) = match self.loss_type {
            CpoLossType::Alphapo => (CpoLossType::Simpo, 0.0),
            t => (t, self.cpo_alpha),
        };
        Ok(ReferenceFree {
            beta: self.beta,
            kind: Kind::Cpo {
                loss_type,
                label_smoothing: self.label_smoothing,
                cpo_alpha,
                simpo_gamma: self.simpo_gamma,
                alpha: self.alpha,
            },
        })
    }
}

#[sweetspot_core::plugin(
    name = "cpo",
    description = "TRL's experimental CPO: a reference-free preference loss plus cpo_alpha times the NLL; loss_type sigmoid, hinge, ipo, simpo, alphapo",
    example = "type = \"cpo\"\nloss_type = \"sigmoid\"\nbeta = 0.1\ncpo_alpha = 1.0"
)]
impl PreferenceLossConfig for CpoConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        Ok(Box::new(self.loss()?))
    }
}

#[sweetspot_core::plugin(
    name = "orpo",
    description = "TRL's experimental ORPO: the NLL minus beta times the log-sigmoid of the log odds ratio",
    example = "type = \"orpo\"\nbeta = 0.1"
)]
impl PreferenceLossConfig for OrpoConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(PluginError::config("orpo", "`beta` must be > 0"));
        }
        Ok(Box::new(ReferenceFree {
            beta: self.beta,
            kind: Kind::Orpo,
        }))
    }
}

/// `log(1 - exp(x))` for `x < 0`, as TRL's `log1mexp`: `log1p(-exp(x))` below `-ln 2`,
/// `log(-expm1(x))` above (`expm1(x) = 2 tanh(x/2) / (1 - tanh(x/2))`), each branch fed values
/// of its own side so that neither makes a NaN gradient.
fn log1mexp(x: Tensor<1>) -> Tensor<1> {
    let t = -std::f64::consts::LN_2;
    let low = x.clone().lower_elem(t);
    let below = x.clone().clamp_max(t).exp().neg().log1p();
    let h = x.clamp_min(t).div_scalar(2.0).tanh();
    let above = (h.clone().mul_scalar(-2.0) / h.neg().add_scalar(1.0)).log();
    above.mask_where(low, below)
}

impl PreferenceLoss for ReferenceFree {
    fn needs_reference(&self) -> bool {
        false
    }

    fn compute(&self, input: LossInput) -> Result<LossOutput, PluginError> {
        let b = self.beta;
        let pc = input.policy_chosen.clone();
        let pr = input.policy_rejected.clone();
        let nll = pc.clone().sum().neg() / input.chosen_tokens.clone().sum().clamp_min(1.0);
        let batch = pc.dims()[0];
        let average = match self.kind {
            Kind::Orpo => true,
            Kind::Cpo { loss_type, .. } => {
                matches!(loss_type, CpoLossType::Ipo | CpoLossType::Simpo)
            }
        };
        let (lc, lr) = if average {
            (
                pc / input.chosen_tokens.clamp_min(1.0),
                pr / input.rejected_tokens.clamp_min(1.0),
            )
        } else {
            (pc, pr)
        };
        let (losses, rc, rr) = match self.kind {
            Kind::Orpo => {
                let log_odds =
                    (lc.clone() - lr.clone()) - (log1mexp(lc.clone()) - log1mexp(lr.clone()));
                let losses = log_sigmoid(log_odds).mul_scalar(-b) + nll.expand([batch]);
                (losses, lc.clone(), lr.clone())
            }
            Kind::Cpo {
                loss_type,
                label_smoothing: e,
                cpo_alpha,
                simpo_gamma,
                alpha,
            } => {
                let (rc, rr) = if alpha == 0.0 {
                    (lc.clone(), lr.clone())
                } else {
                    let shape = |l: Tensor<1>| {
                        l.mul_scalar(-alpha)
                            .exp()
                            .neg()
                            .add_scalar(1.0)
                            .div_scalar(alpha)
                    };
                    (shape(lc.clone()), shape(lr.clone()))
                };
                let x = rc.clone() - rr.clone();
                let mut losses = match loss_type {
                    CpoLossType::Sigmoid => smoothed(x.mul_scalar(b), e),
                    CpoLossType::Simpo | CpoLossType::Alphapo => {
                        smoothed(x.sub_scalar(simpo_gamma / b).mul_scalar(b), e)
                    }
                    CpoLossType::Hinge => relu(x.mul_scalar(-b).add_scalar(1.0)),
                    CpoLossType::Ipo => x.sub_scalar(1.0 / (2.0 * b)).powi_scalar(2),
                };
                if cpo_alpha != 0.0 {
                    losses = losses + nll.mul_scalar(cpo_alpha).expand([batch]);
                }
                (losses, rc, rr)
            }
        };
        Ok(LossOutput {
            losses,
            chosen_rewards: rc.detach().mul_scalar(b),
            rejected_rewards: rr.detach().mul_scalar(b),
            chosen_logps: lc.detach(),
            rejected_logps: lr.detach(),
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

    fn vals(x: Tensor<1>) -> Vec<f64> {
        x.into_data()
            .try_to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    #[test]
    fn log1mexp_is_accurate_on_both_sides() {
        let xs = [-20.0f32, -3.0, -0.7, -0.69, -0.1, -1e-4];
        for (got, x) in vals(log1mexp(t(&xs))).iter().zip(xs) {
            let x = f64::from(x);
            let want = (-x.exp_m1()).ln();
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{x}: {got} vs {want}"
            );
        }
    }

    fn input() -> LossInput {
        LossInput {
            policy_chosen: t(&[-4.0, -9.0]),
            policy_rejected: t(&[-6.0, -6.0]),
            reference_chosen: None,
            reference_rejected: None,
            chosen_tokens: t(&[2.0, 3.0]),
            rejected_tokens: t(&[3.0, 2.0]),
        }
    }

    fn ls(x: f64) -> f64 {
        -(1.0 + (-x).exp()).ln()
    }

    #[test]
    fn cpo_and_orpo_are_trls_formulas() {
        let ctx = BuildContext::new(".");
        let nll = 13.0 / 5.0;
        let cpo = CpoConfig::default().build(&ctx).unwrap();
        assert!(!cpo.needs_reference());
        let got = vals(cpo.compute(input()).unwrap().losses);
        // Summed log-probabilities: margins (2, -3).
        let want = [-ls(0.1 * 2.0) + nll, -ls(0.1 * -3.0) + nll];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        let orpo = OrpoConfig::default().build(&ctx).unwrap();
        let out = orpo.compute(input()).unwrap();
        // Per-token: chosen (-2, -3), rejected (-2, -3).
        let odds = |c: f64, r: f64| (c - r) - ((-c.exp_m1()).ln() - (-r.exp_m1()).ln());
        let want = [
            nll - 0.1 * ls(odds(-2.0, -2.0)),
            nll - 0.1 * ls(odds(-3.0, -3.0)),
        ];
        for (g, w) in vals(out.losses).iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        assert_eq!(vals(out.chosen_logps), vec![-2.0, -3.0]);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let ctx = BuildContext::new(".");
        for (cfg, key) in [
            ("type = \"cpo\"\nbeta = 0", "beta"),
            ("type = \"cpo\"\nlabel_smoothing = 0.5", "label_smoothing"),
            ("type = \"cpo\"\ncpo_alpha = nan", "cpo_alpha"),
            ("type = \"cpo\"\nalpha = inf", "alpha"),
            ("type = \"orpo\"\nbeta = -1", "beta"),
        ] {
            let c: Box<dyn PreferenceLossConfig> = toml::from_str(cfg).unwrap();
            let e = c.build(&ctx).err().expect(cfg).to_string();
            assert!(e.contains(key), "{cfg}: {e}");
            assert_eq!(c.check(&ctx).unwrap_err().key, key, "{cfg}");
        }
    }
}
