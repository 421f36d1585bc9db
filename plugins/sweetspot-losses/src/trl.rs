//! The loss types of TRL 1.16's `DPOTrainer` (`trainer/dpo_trainer.py`, `_compute_loss`), their
//! f-divergences, TRL's list form (`type = "trl"`: `loss_type` and `loss_weights` as in
//! `DPOConfig`) and a weighted sum of any losses (`type = "weighted"`).
//!
//! With `l_* = pi_* - ref_*` (log-ratios), `s_*` their f-divergence scores (`l` itself for
//! `reverse_kl`), `D = s_c - s_r`, `b` = `beta`, `e` = `label_smoothing`, `t` = `discopop_tau`,
//! `n_*` the token counts, per pair:
//!
//! | TRL `loss_type` | loss |
//! |---|---|
//! | `sigmoid` | `-logsig(b D)` |
//! | `hinge` | `relu(1 - b D)` |
//! | `ipo` | `(s_c / n_c - s_r / n_r - 1 / (2b))^2` |
//! | `exo_pair` | `sig(b D) (logsig(b D) - log(1 - e)) + sig(-b D) (logsig(-b D) - log e)` |
//! | `nca_pair` | `-logsig(b l_c) - logsig(-b l_c) / 2 - logsig(-b l_r) / 2` |
//! | `robust` | `(-(1 - e) logsig(b D) + e logsig(-b D)) / (1 - 2e)` |
//! | `bco_pair` | `-logsig(b l_c) - logsig(-b l_r)` |
//! | `sppo_hard` | `(l_c - 1 / (2b))^2 + (l_r + 1 / (2b))^2` |
//! | `aot` | `-(1 - e) logsig(b x) - e logsig(-b x)`, `x = sort(pi_c - pi_r) - sort(ref_c - ref_r)` over the batch |
//! | `aot_unpaired` | the same with `x = sort(l_c) - sort(l_r)` |
//! | `apo_zero` | `1 - sig(b l_c) + sig(b l_r)` |
//! | `apo_down` | `sig(b l_c) + 1 - sig(b (l_c - l_r))` |
//! | `discopop` | `(1 - m) (-logsig(b D)) + m exp(-b D)`, `m = sig(b D / t)` |
//! | `sft` | `-sum(pi_c) / sum(n_c)` over the batch (the mean NLL per chosen token), the same for every pair |
//! | `sigmoid_norm` | `-logsig(b (s_c / n_c - s_r / n_r))` |
//!
//! f-divergence scores (`f_divergence_type`): `reverse_kl` `l`; `forward_kl` `1 - exp(-l)`;
//! `js_divergence` `log 2 + logsig(l)`; `alpha_divergence` with `a` = `f_alpha_divergence_coef`
//! `(exp(min((a - 1) l, 80)) - 1) / (a - 1)` (`l` when `|a - 1| < 1e-6`). As in TRL, only
//! `sigmoid`, `sigmoid_norm`, `hinge`, `ipo`, `exo_pair`, `robust`, `discopop` and `sft` take a
//! non-default one. The implicit rewards are always `b l` (TRL logs those whatever the loss).
//! BCO's running mean of rewards (`bco_pair` in older TRL) is gone in TRL 1.16: `bco_pair` is
//! stateless there and here. `aot`, `aot_unpaired` and `sft` are batch-level: under
//! micro-batching each micro-batch sorts / averages its own pairs, as TRL's gradient accumulation
//! does.

use std::fmt;

use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, relu, sigmoid};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sweetspot_core::{
    BuildContext, ConfigIssue, LossInput, LossOutput, PluginError, PreferenceLoss,
    PreferenceLossConfig,
};

pub(crate) fn default_beta() -> f64 {
    0.1
}
pub(crate) fn default_alpha_coef() -> f64 {
    0.5
}
#[allow(clippy::trivially_copy_pass_by_ref)]
pub(crate) fn is_default_alpha_coef(x: &f64) -> bool {
    *x == 0.5
}
fn default_tau() -> f64 {
    0.05
}
fn default_loss_type() -> LossTypes {
    LossTypes(vec![LossType::Sigmoid])
}

/// TRL's `f_divergence_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FDivergence {
    /// DPO's (the default).
    #[default]
    ReverseKl,
    /// `1 - exp(-l)`.
    ForwardKl,
    /// `log 2 + logsig(l)`.
    JsDivergence,
    /// `(exp((a - 1) l) - 1) / (a - 1)` with `a` = `f_alpha_divergence_coef`.
    AlphaDivergence,
}

impl<'de> Deserialize<'de> for FDivergence {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // By hand, so that the error names the key (typetag's buffering loses the path).
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "reverse_kl" => Self::ReverseKl,
            "forward_kl" => Self::ForwardKl,
            "js_divergence" => Self::JsDivergence,
            "alpha_divergence" => Self::AlphaDivergence,
            other => {
                return Err(serde::de::Error::custom(format!(
                    "`f_divergence_type`: unknown value {other:?}, expected one of reverse_kl, \
                     forward_kl, js_divergence, alpha_divergence"
                )));
            }
        })
    }
}

impl FDivergence {
    /// Whether this is `reverse_kl` (for `skip_serializing_if`: the default stays out of a
    /// node's identity, as before the key existed).
    #[allow(clippy::trivially_copy_pass_by_ref)]
    pub fn is_default(&self) -> bool {
        *self == Self::ReverseKl
    }
}

/// A built f-divergence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FDiv {
    ReverseKl,
    ForwardKl,
    Js,
    Alpha(f64),
}

impl FDiv {
    pub(crate) fn new(plugin: &str, kind: FDivergence, coef: f64) -> Result<Self, PluginError> {
        if !coef.is_finite() {
            return Err(PluginError::config(
                plugin,
                "`f_alpha_divergence_coef` must be a finite number",
            ));
        }
        Ok(match kind {
            FDivergence::ReverseKl => Self::ReverseKl,
            FDivergence::ForwardKl => Self::ForwardKl,
            FDivergence::JsDivergence => Self::Js,
            FDivergence::AlphaDivergence if (coef - 1.0).abs() < 1e-6 => Self::ReverseKl,
            FDivergence::AlphaDivergence => Self::Alpha(coef),
        })
    }

    /// The score of log-ratios `l`.
    pub(crate) fn score(self, l: Tensor<1>) -> Tensor<1> {
        match self {
            Self::ReverseKl => l,
            Self::ForwardKl => l.neg().exp().neg().add_scalar(1.0),
            Self::Js => log_sigmoid(l).add_scalar(std::f64::consts::LN_2),
            Self::Alpha(a) => l
                .mul_scalar(a - 1.0)
                .clamp_max(80.0)
                .exp()
                .sub_scalar(1.0)
                .div_scalar(a - 1.0),
        }
    }
}

/// One of TRL's `loss_type`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum LossType {
    Sigmoid,
    Hinge,
    Ipo,
    ExoPair,
    NcaPair,
    Robust,
    BcoPair,
    SppoHard,
    Aot,
    AotUnpaired,
    ApoZero,
    ApoDown,
    Discopop,
    Sft,
    SigmoidNorm,
}

impl LossType {
    /// TRL's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sigmoid => "sigmoid",
            Self::Hinge => "hinge",
            Self::Ipo => "ipo",
            Self::ExoPair => "exo_pair",
            Self::NcaPair => "nca_pair",
            Self::Robust => "robust",
            Self::BcoPair => "bco_pair",
            Self::SppoHard => "sppo_hard",
            Self::Aot => "aot",
            Self::AotUnpaired => "aot_unpaired",
            Self::ApoZero => "apo_zero",
            Self::ApoDown => "apo_down",
            Self::Discopop => "discopop",
            Self::Sft => "sft",
            Self::SigmoidNorm => "sigmoid_norm",
        }
    }

    /// Whether TRL accepts a non-default `f_divergence_type` with it.
    fn takes_f_divergence(self) -> bool {
        matches!(
            self,
            Self::Sigmoid
                | Self::SigmoidNorm
                | Self::Hinge
                | Self::Ipo
                | Self::ExoPair
                | Self::Robust
                | Self::Discopop
                | Self::Sft
        )
    }
}

impl fmt::Display for LossType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// TRL's `loss_type`: one name or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossTypes(pub Vec<LossType>);

impl Serialize for LossTypes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for LossTypes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(LossType),
            Many(Vec<LossType>),
        }
        let v = serde_json::Value::deserialize(d)?;
        let parsed = match &v {
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| LossType::deserialize(x).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()
                .map(OneOrMany::Many),
            _ => LossType::deserialize(&v)
                .map(OneOrMany::One)
                .map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(OneOrMany::One(t)) => Ok(Self(vec![t])),
            Ok(OneOrMany::Many(v)) => Ok(Self(v)),
            Err(e) => Err(serde::de::Error::custom(format!("`loss_type`: {e}"))),
        }
    }
}

/// The settings TRL's `DPOConfig` shares between its loss types.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub beta: f64,
    pub label_smoothing: f64,
    pub fdiv: FDiv,
    pub discopop_tau: f64,
}

/// A built TRL loss: a weighted sum of TRL loss types with shared settings.
#[derive(Debug, Clone)]
pub struct TrlLoss {
    terms: Vec<(LossType, f64)>,
    p: Params,
    /// Whether it asks for reference log-probabilities even when no term needs them (TRL's
    /// `DPOTrainer` always has a reference, and logs its rewards).
    reference: bool,
}

fn check_beta(plugin: &str, beta: f64) -> Result<(), PluginError> {
    if beta.is_finite() && beta > 0.0 {
        Ok(())
    } else {
        Err(PluginError::config(plugin, "`beta` must be > 0"))
    }
}

impl TrlLoss {
    /// Checks the settings as TRL does, naming the key at fault.
    pub(crate) fn new(
        plugin: &str,
        terms: Vec<(LossType, f64)>,
        p: Params,
        reference: bool,
    ) -> Result<Self, PluginError> {
        let err = |m: String| Err(PluginError::config(plugin, m));
        check_beta(plugin, p.beta)?;
        if terms.is_empty() {
            return err("`loss_type` names no loss".into());
        }
        let e = p.label_smoothing;
        for &(t, w) in &terms {
            if !w.is_finite() {
                return err(format!("`loss_weights`: the weight of {t} must be finite"));
            }
            match t {
                LossType::Robust | LossType::Aot | LossType::AotUnpaired
                    if !(0.0..0.5).contains(&e) =>
                {
                    return err(format!("`label_smoothing` must be in [0, 0.5) for {t}"));
                }
                LossType::ExoPair if !(e > 0.0 && e < 1.0) => {
                    return err(
                        "`label_smoothing` must be in (0, 1) for exo_pair (TRL refuses 0; the \
                         EXO paper recommends 1e-3)"
                            .into(),
                    );
                }
                LossType::Discopop if !(p.discopop_tau.is_finite() && p.discopop_tau > 0.0) => {
                    return err("`discopop_tau` must be > 0".into());
                }
                _ => {}
            }
            if p.fdiv != FDiv::ReverseKl && !t.takes_f_divergence() {
                return err(format!(
                    "`f_divergence_type` other than reverse_kl is not defined for {t} (TRL takes \
                     it only with sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop, \
                     sft)"
                ));
            }
        }
        Ok(Self {
            terms,
            p,
            reference,
        })
    }

    /// Whether some term uses reference log-probabilities.
    fn terms_need_reference(&self) -> bool {
        self.terms.iter().any(|(t, _)| *t != LossType::Sft)
    }
}

/// `-(1 - e) logsig(x) - e logsig(-x)`.
pub(crate) fn smoothed(x: Tensor<1>, e: f64) -> Tensor<1> {
    let pos = log_sigmoid(x.clone()).mul_scalar(-(1.0 - e));
    if e == 0.0 {
        pos
    } else {
        pos - log_sigmoid(x.neg()).mul_scalar(e)
    }
}

/// `x` sorted ascending along the batch, differentiably (a gather by the detached order).
fn sorted(x: Tensor<1>) -> Tensor<1> {
    let order = x.clone().detach().argsort(0);
    x.select(0, order)
}

impl PreferenceLoss for TrlLoss {
    fn needs_reference(&self) -> bool {
        self.reference || self.terms_need_reference()
    }

    fn compute(&self, input: LossInput) -> Result<LossOutput, PluginError> {
        let Params {
            beta: b,
            label_smoothing: e,
            fdiv,
            discopop_tau: tau,
        } = self.p;
        let refs = match (
            input.reference_chosen.clone(),
            input.reference_rejected.clone(),
        ) {
            (Some(c), Some(r)) => Some((c, r)),
            _ if self.needs_reference() => {
                return Err(PluginError::Input(
                    "this loss needs reference log-probabilities".into(),
                ));
            }
            _ => None,
        };
        let pc = input.policy_chosen.clone();
        let pr = input.policy_rejected.clone();
        let nc = input.chosen_tokens.clone().clamp_min(1.0);
        let nr = input.rejected_tokens.clone().clamp_min(1.0);
        let batch = pc.dims()[0];
        let mut total: Option<Tensor<1>> = None;
        for &(t, w) in &self.terms {
            let losses = if t == LossType::Sft {
                let nll = pc.clone().sum().neg() / input.chosen_tokens.clone().sum().clamp_min(1.0);
                nll.expand([batch])
            } else {
                let Some((rc, rr)) = refs.clone() else {
                    return Err(PluginError::Input(format!(
                        "{t} needs reference log-probabilities"
                    )));
                };
                let lc = pc.clone() - rc.clone();
                let lr = pr.clone() - rr.clone();
                let sc = fdiv.score(lc.clone());
                let sr = fdiv.score(lr.clone());
                let d = (sc.clone() - sr.clone()).mul_scalar(b);
                match t {
                    LossType::Sigmoid => log_sigmoid(d).neg(),
                    LossType::Hinge => relu(d.neg().add_scalar(1.0)),
                    LossType::Ipo => (sc / nc.clone() - sr / nr.clone())
                        .sub_scalar(1.0 / (2.0 * b))
                        .powi_scalar(2),
                    LossType::ExoPair => {
                        let qw = sigmoid(d.clone());
                        let ql = sigmoid(d.clone().neg());
                        let lw = log_sigmoid(d.clone()).sub_scalar((-e).ln_1p());
                        let ll = log_sigmoid(d.neg()).sub_scalar(e.ln());
                        qw * lw + ql * ll
                    }
                    LossType::NcaPair => {
                        let c = lc.mul_scalar(b);
                        let r = lr.mul_scalar(b);
                        log_sigmoid(c.clone()).neg()
                            - log_sigmoid(c.neg()).mul_scalar(0.5)
                            - log_sigmoid(r.neg()).mul_scalar(0.5)
                    }
                    LossType::Robust => {
                        let clean = log_sigmoid(d.clone()).mul_scalar(-(1.0 - e));
                        let flipped = log_sigmoid(d.neg()).mul_scalar(-e);
                        (clean - flipped).div_scalar(1.0 - 2.0 * e)
                    }
                    LossType::BcoPair => {
                        log_sigmoid(lc.mul_scalar(b)).neg() - log_sigmoid(lr.mul_scalar(-b))
                    }
                    LossType::SppoHard => {
                        lc.sub_scalar(0.5 / b).powi_scalar(2)
                            + lr.add_scalar(0.5 / b).powi_scalar(2)
                    }
                    LossType::Aot => {
                        let x = sorted(pc.clone() - pr.clone()) - sorted(rc - rr);
                        smoothed(x.mul_scalar(b), e)
                    }
                    LossType::AotUnpaired => {
                        let x = sorted(lc) - sorted(lr);
                        smoothed(x.mul_scalar(b), e)
                    }
                    LossType::ApoZero => {
                        sigmoid(lc.mul_scalar(b)).neg().add_scalar(1.0) + sigmoid(lr.mul_scalar(b))
                    }
                    LossType::ApoDown => {
                        let m = (lc.clone() - lr).mul_scalar(b);
                        sigmoid(lc.mul_scalar(b)) + sigmoid(m).neg().add_scalar(1.0)
                    }
                    LossType::Discopop => {
                        let m = sigmoid(d.clone().div_scalar(tau));
                        let logistic = log_sigmoid(d.clone()).neg();
                        let exp = d.neg().exp();
                        logistic * m.clone().neg().add_scalar(1.0) + exp * m
                    }
                    LossType::SigmoidNorm => {
                        log_sigmoid((sc / nc.clone() - sr / nr.clone()).mul_scalar(b)).neg()
                    }
                    LossType::Sft => unreachable!("handled above"),
                }
            };
            let term = if w == 1.0 {
                losses
            } else {
                losses.mul_scalar(w)
            };
            total = Some(match total {
                None => term,
                Some(acc) => acc + term,
            });
        }
        let losses = total.ok_or_else(|| PluginError::Input("no loss term".into()))?;
        let (chosen_rewards, rejected_rewards) = match refs {
            Some((rc, rr)) => (
                (pc.clone() - rc).detach().mul_scalar(b),
                (pr.clone() - rr).detach().mul_scalar(b),
            ),
            // `sft` alone: no implicit reward; the log-probabilities stand in.
            None => (pc.clone().detach(), pr.clone().detach()),
        };
        Ok(LossOutput {
            losses,
            chosen_rewards,
            rejected_rewards,
            chosen_logps: pc.detach(),
            rejected_logps: pr.detach(),
        })
    }
}

pub(crate) fn check_of(
    built: Result<Box<dyn PreferenceLoss>, PluginError>,
) -> Result<(), ConfigIssue> {
    built
        .map(drop)
        .map_err(|e| ConfigIssue::from_build_error(&e))
}

// ---------------------------------------------------------------------------------------------
// `type = "trl"`: DPOConfig's loss settings as they are
// ---------------------------------------------------------------------------------------------

/// `type = "trl"`: TRL 1.16 `DPOConfig`'s loss settings under their names and defaults: one
/// loss type or a list combined by `loss_weights` (TRL's MPO example: `loss_type = ["sigmoid",
/// "bco_pair", "sft"]`, `loss_weights = [0.8, 0.2, 1.0]`). Always uses a reference, as
/// `DPOTrainer` does, and logs its rewards `beta (pi - ref)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrlConfig {
    /// TRL's `loss_type`: a name or a list of names.
    #[serde(default = "default_loss_type")]
    pub loss_type: LossTypes,
    /// TRL's `loss_weights`, one per `loss_type` (default: 1.0 each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_weights: Option<Vec<f64>>,
    /// TRL's `beta`.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// TRL's `label_smoothing` (`robust`, `exo_pair`, `aot`, `aot_unpaired`).
    #[serde(default)]
    pub label_smoothing: f64,
    /// TRL's `f_divergence_type`.
    #[serde(default)]
    pub f_divergence_type: FDivergence,
    /// TRL's `f_alpha_divergence_coef`.
    #[serde(default = "default_alpha_coef")]
    pub f_alpha_divergence_coef: f64,
    /// TRL's `discopop_tau`.
    #[serde(default = "default_tau")]
    pub discopop_tau: f64,
    /// TRL's `use_weighting` (WPO): refused when true (it needs per-token probabilities the
    /// loss does not get).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_weighting: bool,
    /// TRL's `ld_alpha` (LD-DPO): refused when set (it needs per-token log-probabilities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ld_alpha: Option<f64>,
}

impl Default for TrlConfig {
    fn default() -> Self {
        Self {
            loss_type: default_loss_type(),
            loss_weights: None,
            beta: default_beta(),
            label_smoothing: 0.0,
            f_divergence_type: FDivergence::ReverseKl,
            f_alpha_divergence_coef: default_alpha_coef(),
            discopop_tau: default_tau(),
            use_weighting: false,
            ld_alpha: None,
        }
    }
}

impl TrlConfig {
    /// The built loss.
    pub fn loss(&self) -> Result<TrlLoss, PluginError> {
        const P: &str = "trl";
        if self.use_weighting {
            return Err(PluginError::config(
                P,
                "`use_weighting` (WPO) is not supported: it weights pairs by per-token \
                 probabilities the loss does not get",
            ));
        }
        if self.ld_alpha.is_some() {
            return Err(PluginError::config(
                P,
                "`ld_alpha` (LD-DPO) is not supported: it splits per-token log-probabilities the \
                 loss does not get",
            ));
        }
        let types = &self.loss_type.0;
        let weights = match &self.loss_weights {
            None => vec![1.0; types.len()],
            Some(w) if w.len() == types.len() => w.clone(),
            Some(w) => {
                return Err(PluginError::config(
                    P,
                    format!(
                        "`loss_weights` has {} weights for {} loss types",
                        w.len(),
                        types.len()
                    ),
                ));
            }
        };
        let p = Params {
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            fdiv: FDiv::new(P, self.f_divergence_type, self.f_alpha_divergence_coef)?,
            discopop_tau: self.discopop_tau,
        };
        TrlLoss::new(P, types.iter().copied().zip(weights).collect(), p, true)
    }
}

#[sweetspot_core::plugin(
    name = "trl",
    description = "TRL DPOTrainer's loss settings as they are: loss_type (one or a list), loss_weights, beta, label_smoothing, f_divergence_type, discopop_tau",
    example = "type = \"trl\"\nloss_type = [\"sigmoid\", \"bco_pair\", \"sft\"]\nloss_weights = [0.8, 0.2, 1.0]\nbeta = 0.1"
)]
impl PreferenceLossConfig for TrlConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        Ok(Box::new(self.loss()?))
    }
}

// ---------------------------------------------------------------------------------------------
// One plugin per TRL loss type that sweetspot had no plugin for
// ---------------------------------------------------------------------------------------------

/// A table with `beta` only (`nca_pair`, `bco_pair`, `sppo_hard`, `apo_zero`, `apo_down`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BetaConfig {
    /// TRL's `beta`.
    #[serde(default = "default_beta")]
    pub beta: f64,
}

impl Default for BetaConfig {
    fn default() -> Self {
        Self {
            beta: default_beta(),
        }
    }
}

/// Declares a config type with `beta` only, as its own type (typetag registers one name per
/// type).
macro_rules! beta_config {
    ($($name:ident: $doc:literal),* $(,)?) => {$(
        #[doc = $doc]
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub BetaConfig);
    )*};
}

beta_config!(
    NcaPairConfig: "`type = \"nca_pair\"`: TRL's `nca_pair` (NCA, Chen et al.).",
    BcoPairConfig: "`type = \"bco_pair\"`: TRL's `bco_pair` (BCO on pairs, Jung et al.).",
    SppoHardConfig: "`type = \"sppo_hard\"`: TRL's `sppo_hard` (SPPO with hard probabilities, Wu et al.).",
    ApoZeroConfig: "`type = \"apo_zero\"`: TRL's `apo_zero` (APO, D'Oosterlinck et al., Eq. 7).",
    ApoDownConfig: "`type = \"apo_down\"`: TRL's `apo_down` (APO, Eq. 8).",
);

fn single(plugin: &str, t: LossType, p: Params) -> Result<Box<dyn PreferenceLoss>, PluginError> {
    Ok(Box::new(TrlLoss::new(plugin, vec![(t, 1.0)], p, false)?))
}

fn beta_only(beta: f64) -> Params {
    Params {
        beta,
        label_smoothing: 0.0,
        fdiv: FDiv::ReverseKl,
        discopop_tau: default_tau(),
    }
}

#[sweetspot_core::plugin(
    name = "nca_pair",
    description = "TRL's nca_pair: NCA on the chosen and rejected log-ratios",
    example = "type = \"nca_pair\"\nbeta = 0.1"
)]
impl PreferenceLossConfig for NcaPairConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        single("nca_pair", LossType::NcaPair, beta_only(self.0.beta))
    }
}

#[sweetspot_core::plugin(
    name = "bco_pair",
    description = "TRL's bco_pair: -logsig(beta l_c) - logsig(-beta l_r) (TRL 1.16 keeps no running reward mean)",
    example = "type = \"bco_pair\"\nbeta = 0.1"
)]
impl PreferenceLossConfig for BcoPairConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        single("bco_pair", LossType::BcoPair, beta_only(self.0.beta))
    }
}

#[sweetspot_core::plugin(
    name = "sppo_hard",
    description = "TRL's sppo_hard: SPPO with hard win probabilities",
    example = "type = \"sppo_hard\"\nbeta = 0.1"
)]
impl PreferenceLossConfig for SppoHardConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        single("sppo_hard", LossType::SppoHard, beta_only(self.0.beta))
    }
}

#[sweetspot_core::plugin(
    name = "apo_zero",
    description = "TRL's apo_zero: APO-zero (raise chosen, lower rejected likelihood)",
    example = "type = \"apo_zero\"\nbeta = 0.1"
)]
impl PreferenceLossConfig for ApoZeroConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        single("apo_zero", LossType::ApoZero, beta_only(self.0.beta))
    }
}

#[sweetspot_core::plugin(
    name = "apo_down",
    description = "TRL's apo_down: APO-down (lower both, rejected more)",
    example = "type = \"apo_down\"\nbeta = 0.1"
)]
impl PreferenceLossConfig for ApoDownConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        single("apo_down", LossType::ApoDown, beta_only(self.0.beta))
    }
}

/// `type = "exo_pair"`: TRL's `exo_pair` (EXO, Ji et al., Eq. 16).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExoPairConfig {
    /// TRL's `beta`.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// The `e` of EXO, in (0, 1): required (TRL's default 0 is refused by TRL; the paper
    /// recommends 1e-3).
    pub label_smoothing: f64,
    /// TRL's `f_divergence_type`.
    #[serde(default, skip_serializing_if = "FDivergence::is_default")]
    pub f_divergence_type: FDivergence,
    /// TRL's `f_alpha_divergence_coef`.
    #[serde(
        default = "default_alpha_coef",
        skip_serializing_if = "is_default_alpha_coef"
    )]
    pub f_alpha_divergence_coef: f64,
}

#[sweetspot_core::plugin(
    name = "exo_pair",
    description = "TRL's exo_pair: EXO's reverse KL to the smoothed label distribution",
    example = "type = \"exo_pair\"\nbeta = 0.1\nlabel_smoothing = 1e-3"
)]
impl PreferenceLossConfig for ExoPairConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        const P: &str = "exo_pair";
        let p = Params {
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            fdiv: FDiv::new(P, self.f_divergence_type, self.f_alpha_divergence_coef)?,
            discopop_tau: default_tau(),
        };
        single(P, LossType::ExoPair, p)
    }
}

/// `type = "aot"` / `"aot_unpaired"`: TRL's AOT (Melnyk et al.), `beta` and `label_smoothing`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AotSettings {
    /// TRL's `beta`.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// TRL's `label_smoothing`, in [0, 0.5).
    #[serde(default)]
    pub label_smoothing: f64,
}

/// `type = "aot"`: TRL's `aot`: the sorted policy log-ratio margins against the sorted reference
/// ones, across the batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AotConfig(pub AotSettings);

/// `type = "aot_unpaired"`: TRL's `aot_unpaired`: the sorted chosen log-ratios against the
/// sorted rejected ones, across the batch (TRL 1.16 computes it on paired batches).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AotUnpairedConfig(pub AotSettings);

fn aot_params(s: &AotSettings) -> Params {
    Params {
        label_smoothing: s.label_smoothing,
        ..beta_only(s.beta)
    }
}

#[sweetspot_core::plugin(
    name = "aot",
    description = "TRL's aot: AOT, sorted log-ratio margins of policy against reference over the batch",
    example = "type = \"aot\"\nbeta = 0.1"
)]
impl PreferenceLossConfig for AotConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        single("aot", LossType::Aot, aot_params(&self.0))
    }
}

#[sweetspot_core::plugin(
    name = "aot_unpaired",
    description = "TRL's aot_unpaired: AOT, sorted chosen log-ratios against sorted rejected ones over the batch",
    example = "type = \"aot_unpaired\"\nbeta = 0.1"
)]
impl PreferenceLossConfig for AotUnpairedConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        single("aot_unpaired", LossType::AotUnpaired, aot_params(&self.0))
    }
}

/// `type = "discopop"`: TRL's `discopop` (DiscoPOP, Chris Lu et al., Eq. 5).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscopopConfig {
    /// TRL's `beta`.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// TRL's `discopop_tau`: the temperature of the blend.
    #[serde(default = "default_tau")]
    pub discopop_tau: f64,
    /// TRL's `f_divergence_type`.
    #[serde(default, skip_serializing_if = "FDivergence::is_default")]
    pub f_divergence_type: FDivergence,
    /// TRL's `f_alpha_divergence_coef`.
    #[serde(
        default = "default_alpha_coef",
        skip_serializing_if = "is_default_alpha_coef"
    )]
    pub f_alpha_divergence_coef: f64,
}

#[sweetspot_core::plugin(
    name = "discopop",
    description = "TRL's discopop: the log-ratio modulated blend of logistic and exponential losses",
    example = "type = \"discopop\"\nbeta = 0.1\ndiscopop_tau = 0.05"
)]
impl PreferenceLossConfig for DiscopopConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        const P: &str = "discopop";
        let p = Params {
            beta: self.beta,
            label_smoothing: 0.0,
            fdiv: FDiv::new(P, self.f_divergence_type, self.f_alpha_divergence_coef)?,
            discopop_tau: self.discopop_tau,
        };
        single(P, LossType::Discopop, p)
    }
}

/// `type = "sigmoid_norm"`: TRL's `sigmoid_norm`: DPO on length-averaged log-ratios.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigmoidNormConfig {
    /// TRL's `beta`.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// TRL's `f_divergence_type`.
    #[serde(default, skip_serializing_if = "FDivergence::is_default")]
    pub f_divergence_type: FDivergence,
    /// TRL's `f_alpha_divergence_coef`.
    #[serde(
        default = "default_alpha_coef",
        skip_serializing_if = "is_default_alpha_coef"
    )]
    pub f_alpha_divergence_coef: f64,
}

#[sweetspot_core::plugin(
    name = "sigmoid_norm",
    description = "TRL's sigmoid_norm: DPO's sigmoid loss on length-averaged log-ratios",
    example = "type = \"sigmoid_norm\"\nbeta = 0.1"
)]
impl PreferenceLossConfig for SigmoidNormConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        const P: &str = "sigmoid_norm";
        let p = Params {
            fdiv: FDiv::new(P, self.f_divergence_type, self.f_alpha_divergence_coef)?,
            ..beta_only(self.beta)
        };
        single(P, LossType::SigmoidNorm, p)
    }
}

/// `type = "sft"`: TRL's `sft`: the mean negative log-likelihood per chosen token of the batch.
/// Reference-free; alone, its `rewards/*` log the summed log-probabilities (it has no implicit
/// reward).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {}

#[sweetspot_core::plugin(
    name = "sft",
    description = "TRL's sft: the mean NLL per chosen token (reference-free; MPO's third term)",
    example = "type = \"sft\""
)]
impl PreferenceLossConfig for SftConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        check_of(self.build(ctx))
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        single("sft", LossType::Sft, beta_only(default_beta()))
    }
}

// ---------------------------------------------------------------------------------------------
// `type = "weighted"`: a weighted sum of any losses
// ---------------------------------------------------------------------------------------------

/// One term of a `weighted` loss: a loss table (`type` and its own keys) and its `weight`.
#[derive(Debug, Clone)]
pub struct Term {
    /// The term's weight (default 1.0).
    pub weight: f64,
    /// The term's loss table.
    pub loss: Box<dyn PreferenceLossConfig>,
}

impl Serialize for Term {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut v = serde_json::to_value(&self.loss).map_err(S::Error::custom)?;
        if let Some(m) = v.as_object_mut() {
            m.insert("weight".into(), serde_json::json!(self.weight));
        }
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Term {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut m = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let weight = match m.remove("weight") {
            None => 1.0,
            Some(w) => w
                .as_f64()
                .ok_or_else(|| D::Error::custom("`weight` must be a number"))?,
        };
        let ty = m
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string();
        let loss = serde_json::from_value::<Box<dyn PreferenceLossConfig>>(m.into())
            .map_err(|e| D::Error::custom(format!("`terms` ({ty:?}): {e}")))?;
        Ok(Self { weight, loss })
    }
}

/// `type = "weighted"`: `sum_k weight_k * loss_k`, each term a loss table of its own
/// (`[[train.loss.terms]]` with `type`, `weight` and that type's keys). Rewards and logps are
/// logged from the first term that uses a reference (else the first term).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedConfig {
    /// The terms.
    pub terms: Vec<Term>,
}

/// A built weighted sum.
pub struct Weighted {
    terms: Vec<(f64, Box<dyn PreferenceLoss>)>,
    /// The term whose rewards are logged.
    logged: usize,
}

impl WeightedConfig {
    fn loss(&self, ctx: &BuildContext) -> Result<Weighted, PluginError> {
        const P: &str = "weighted";
        if self.terms.is_empty() {
            return Err(PluginError::config(P, "`terms` is empty"));
        }
        let mut terms = Vec::new();
        for (i, t) in self.terms.iter().enumerate() {
            if !t.weight.is_finite() {
                return Err(PluginError::config(
                    P,
                    format!("`terms`[{i}]: `weight` must be finite"),
                ));
            }
            let built = t.loss.build(ctx).map_err(|e| {
                PluginError::config(P, format!("`terms`[{i}] ({}): {e}", t.loss.plugin_type()))
            })?;
            terms.push((t.weight, built));
        }
        let logged = terms
            .iter()
            .position(|(_, l)| l.needs_reference())
            .unwrap_or(0);
        Ok(Weighted { terms, logged })
    }
}

#[sweetspot_core::plugin(
    name = "weighted",
    description = "a weighted sum of losses: [[train.loss.terms]] each with type, weight and its own keys",
    example = "type = \"weighted\"\nterms = [{ type = \"dpo\", weight = 0.8 }, { type = \"bco_pair\", weight = 0.2 }, { type = \"sft\", weight = 1.0 }]"
)]
impl PreferenceLossConfig for WeightedConfig {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigIssue> {
        self.loss(ctx)
            .map(drop)
            .map_err(|e| ConfigIssue::from_build_error(&e))
    }
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn PreferenceLoss>, PluginError> {
        Ok(Box::new(self.loss(ctx)?))
    }
}

impl PreferenceLoss for Weighted {
    fn needs_reference(&self) -> bool {
        self.terms.iter().any(|(_, l)| l.needs_reference())
    }

    fn compute(&self, input: LossInput) -> Result<LossOutput, PluginError> {
        let mut total: Option<Tensor<1>> = None;
        let mut logged = None;
        for (i, (w, loss)) in self.terms.iter().enumerate() {
            let out = loss.compute(input.clone())?;
            let term = out.losses.clone().mul_scalar(*w);
            total = Some(match total {
                None => term,
                Some(acc) => acc + term,
            });
            if i == self.logged {
                logged = Some(out);
            }
        }
        let (Some(losses), Some(out)) = (total, logged) else {
            return Err(PluginError::Input("no loss term".into()));
        };
        Ok(LossOutput { losses, ..out })
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

    /// Log-ratios l_c = (1, 0, -1), l_r = (-1, 1, 0.5).
    fn input() -> LossInput {
        LossInput {
            policy_chosen: t(&[-10.0, -20.0, -6.0]),
            policy_rejected: t(&[-12.0, -18.0, -7.5]),
            reference_chosen: Some(t(&[-11.0, -20.0, -5.0])),
            reference_rejected: Some(t(&[-11.0, -19.0, -8.0])),
            chosen_tokens: t(&[4.0, 5.0, 1.0]),
            rejected_tokens: t(&[2.0, 3.0, 3.0]),
        }
    }

    const LC: [f64; 3] = [1.0, 0.0, -1.0];
    const LR: [f64; 3] = [-1.0, 1.0, 0.5];

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5 * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    fn ls(x: f64) -> f64 {
        -(1.0 + (-x).exp()).ln()
    }
    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    fn trl(table: &str) -> Box<dyn PreferenceLoss> {
        let cfg: Box<dyn PreferenceLossConfig> =
            toml::from_str(&format!("type = \"trl\"\n{table}")).unwrap();
        cfg.build(&BuildContext::new(".")).unwrap()
    }

    fn losses(table: &str) -> Vec<f64> {
        vals(trl(table).compute(input()).unwrap().losses)
    }

    fn per_pair(f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
        LC.iter().zip(LR).map(|(&c, r)| f(c, r)).collect()
    }

    #[test]
    fn each_loss_type_is_trls_formula() {
        let b = 0.5;
        let n = |t: &str| losses(&format!("loss_type = \"{t}\"\nbeta = {b}"));
        close(&n("sigmoid"), &per_pair(|c, r| -ls(b * (c - r))));
        close(&n("hinge"), &per_pair(|c, r| (1.0 - b * (c - r)).max(0.0)));
        close(
            &n("nca_pair"),
            &per_pair(|c, r| -ls(b * c) - 0.5 * ls(-b * c) - 0.5 * ls(-b * r)),
        );
        close(&n("bco_pair"), &per_pair(|c, r| -ls(b * c) - ls(-b * r)));
        close(
            &n("sppo_hard"),
            &per_pair(|c, r| (c - 0.5 / b).powi(2) + (r + 0.5 / b).powi(2)),
        );
        close(
            &n("apo_zero"),
            &per_pair(|c, r| 1.0 - sig(b * c) + sig(b * r)),
        );
        close(
            &n("apo_down"),
            &per_pair(|c, r| sig(b * c) + 1.0 - sig(b * (c - r))),
        );
        let (nc, nr) = ([4.0, 5.0, 1.0], [2.0, 3.0, 3.0]);
        let norm: Vec<f64> = (0..3).map(|i| LC[i] / nc[i] - LR[i] / nr[i]).collect();
        close(
            &n("sigmoid_norm"),
            &norm.iter().map(|d| -ls(b * d)).collect::<Vec<_>>(),
        );
        close(
            &n("ipo"),
            &norm
                .iter()
                .map(|d| (d - 1.0 / (2.0 * b)).powi(2))
                .collect::<Vec<_>>(),
        );
        // sft: -(sum of chosen logps) / (chosen tokens) = 36 / 10, for every pair.
        close(&n("sft"), &[3.6; 3]);
        // discopop at tau 0.05.
        close(
            &n("discopop"),
            &per_pair(|c, r| {
                let x = b * (c - r);
                let m = sig(x / 0.05);
                -ls(x) * (1.0 - m) + (-x).exp() * m
            }),
        );
        // exo_pair with e = 0.01.
        let exo = losses(&format!(
            "loss_type = \"exo_pair\"\nbeta = {b}\nlabel_smoothing = 0.01"
        ));
        close(
            &exo,
            &per_pair(|c, r| {
                let x = b * (c - r);
                sig(x) * (ls(x) - (0.99f64).ln()) + sig(-x) * (ls(-x) - (0.01f64).ln())
            }),
        );
        // aot sorts across the batch: policy margins (2, -2, 1.5) -> (-2, 1.5, 2), reference
        // margins (0, -1, 3) -> (-1, 0, 3); aot_unpaired sorts l_c (-1, 0, 1) and l_r (-1, 0.5, 1).
        let aot = losses(&format!(
            "loss_type = \"aot\"\nbeta = {b}\nlabel_smoothing = 0.1"
        ));
        let sm = |x: f64| -0.9 * ls(b * x) - 0.1 * ls(-b * x);
        close(&aot, &[sm(-1.0), sm(1.5), sm(-1.0)]);
        let un = losses(&format!("loss_type = \"aot_unpaired\"\nbeta = {b}"));
        close(&un, &[-ls(b * 0.0), -ls(b * -0.5), -ls(b * 0.0)]);
        // Rewards are beta (pi - ref) whatever the loss.
        let out = trl(&format!("loss_type = \"sft\"\nbeta = {b}"))
            .compute(input())
            .unwrap();
        close(&vals(out.chosen_rewards), &LC.map(|c| b * c));
        close(&vals(out.rejected_rewards), &LR.map(|r| b * r));
    }

    #[test]
    fn f_divergences_transform_the_log_ratios() {
        let b = 0.5;
        let with = |f: &str, extra: &str| {
            losses(&format!("beta = {b}\nf_divergence_type = \"{f}\"\n{extra}"))
        };
        let score = |f: &dyn Fn(f64) -> f64| per_pair(|c, r| -ls(b * (f(c) - f(r))));
        close(&with("forward_kl", ""), &score(&|l| 1.0 - (-l).exp()));
        close(&with("js_divergence", ""), &score(&|l| 2f64.ln() + ls(l)));
        close(
            &with("alpha_divergence", "f_alpha_divergence_coef = 0.3"),
            &score(&|l| ((-0.7 * l).exp() - 1.0) / -0.7),
        );
        close(
            &with("alpha_divergence", "f_alpha_divergence_coef = 1.0"),
            &score(&|l| l),
        );
    }

    #[test]
    fn weighted_terms_add_up_and_log_the_first_reference_term() {
        let cfg: Box<dyn PreferenceLossConfig> = toml::from_str(
            "type = \"weighted\"\n\
             [[terms]]\ntype = \"sft\"\nweight = 1.0\n\
             [[terms]]\ntype = \"dpo\"\nbeta = 0.5\nweight = 0.8\n\
             [[terms]]\ntype = \"bco_pair\"\nbeta = 0.5\nweight = 0.2\n",
        )
        .unwrap();
        let loss = cfg.build(&BuildContext::new(".")).unwrap();
        assert!(loss.needs_reference());
        let out = loss.compute(input()).unwrap();
        let b = 0.5;
        close(
            &vals(out.losses),
            &per_pair(|c, r| 3.6 + 0.8 * -ls(b * (c - r)) + 0.2 * (-ls(b * c) - ls(-b * r))),
        );
        close(&vals(out.chosen_rewards), &LC.map(|c| b * c));
        // The same as the trl form, and serialized back with the weights.
        close(
            &losses(
                "loss_type = [\"sft\", \"sigmoid\", \"bco_pair\"]\nloss_weights = [1.0, 0.8, 0.2]\nbeta = 0.5",
            ),
            &vals(loss.compute(input()).unwrap().losses),
        );
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["terms"][1]["weight"], 0.8);
        assert_eq!(json["terms"][1]["type"], "dpo");
        // sft alone needs no reference.
        let sft: Box<dyn PreferenceLossConfig> = toml::from_str("type = \"sft\"").unwrap();
        let sft = sft.build(&BuildContext::new(".")).unwrap();
        assert!(!sft.needs_reference());
        let mut i = input();
        i.reference_chosen = None;
        i.reference_rejected = None;
        close(&vals(sft.compute(i).unwrap().losses), &[3.6; 3]);
    }

    /// The error of building `table`, or of deserializing it.
    fn error(table: &str) -> String {
        match toml::from_str::<Box<dyn PreferenceLossConfig>>(table) {
            Err(e) => e.to_string(),
            Ok(cfg) => {
                let ctx = BuildContext::new(".");
                let e = cfg.build(&ctx).err().expect(table).to_string();
                assert!(!cfg.check(&ctx).unwrap_err().key.is_empty(), "{table}");
                e
            }
        }
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases = [
            ("type = \"trl\"\nloss_type = \"kto\"", "loss_type"),
            (
                "type = \"trl\"\nloss_type = [\"sigmoid\", \"sft\"]\nloss_weights = [1.0]",
                "loss_weights",
            ),
            ("type = \"trl\"\nloss_type = []", "loss_type"),
            (
                "type = \"trl\"\nloss_type = \"exo_pair\"",
                "label_smoothing",
            ),
            (
                "type = \"trl\"\nloss_type = \"robust\"\nlabel_smoothing = 0.5",
                "label_smoothing",
            ),
            (
                "type = \"trl\"\nloss_type = \"bco_pair\"\nf_divergence_type = \"js_divergence\"",
                "f_divergence_type",
            ),
            (
                "type = \"trl\"\nf_divergence_type = \"chi2\"",
                "f_divergence_type",
            ),
            ("type = \"trl\"\nuse_weighting = true", "use_weighting"),
            ("type = \"trl\"\nld_alpha = 0.5", "ld_alpha"),
            ("type = \"trl\"\nbeta = 0", "beta"),
            (
                "type = \"trl\"\nloss_type = \"discopop\"\ndiscopop_tau = 0",
                "discopop_tau",
            ),
            ("type = \"exo_pair\"", "label_smoothing"),
            (
                "type = \"exo_pair\"\nlabel_smoothing = 0.0",
                "label_smoothing",
            ),
            ("type = \"aot\"\nlabel_smoothing = 0.7", "label_smoothing"),
            ("type = \"nca_pair\"\nbeta = -1", "beta"),
            ("type = \"nca_pair\"\ngamma = 1", "gamma"),
            ("type = \"sft\"\nbeta = 0.1", "beta"),
            (
                "type = \"dpo\"\nlabel_smoothing = 0.1\nf_divergence_type = \"forward_kl\"",
                "f_divergence_type",
            ),
            ("type = \"weighted\"\nterms = []", "terms"),
            ("type = \"weighted\"\n[[terms]]\ntype = \"nope\"", "nope"),
            (
                "type = \"weighted\"\n[[terms]]\ntype = \"dpo\"\nbeta = 0",
                "beta",
            ),
            (
                "type = \"weighted\"\n[[terms]]\ntype = \"dpo\"\nweight = \"x\"",
                "weight",
            ),
        ];
        for (table, key) in cases {
            let e = error(table);
            assert!(e.contains(key), "{table}: {e}");
        }
    }

    #[test]
    fn default_f_divergence_stays_out_of_the_settings() {
        // A node's identity hashes the settings: tables written before the key existed keep
        // theirs.
        let cfg: Box<dyn PreferenceLossConfig> =
            toml::from_str("type = \"dpo\"\nbeta = 0.01").unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(
            json,
            r#"{"type":"dpo","beta":0.01,"label_smoothing":0.0,"robust":false}"#
        );
    }
}
