//! The plugin registry.
//!
//! Every plugin registers with one attribute, [`#[plugin(...)]`](crate::plugin), on the impl of
//! its config trait: it writes the `#[typetag::serde(name = "...")]` attribute (what a recipe's
//! `type = "..."` deserializes through) and the [`PluginInfo`] entry (`inventory::submit!`)
//! together, so the two names cannot differ and the kind follows from the trait. The registry
//! is what `sweetspot plugins` lists, what an unknown `type` is checked against, and what the
//! linker test compares with the workspace.
//!
//! ```ignore
//! #[sweetspot_core::plugin(
//!     name = "quantile",
//!     description = "chosen and rejected at reward quantiles",
//!     example = "type = \"quantile\"\nchosen = 0.9\nrejected = 0.1"
//! )]
//! impl PairStrategyConfig for Quantile {
//!     fn build(&self, ctx: &BuildContext) -> Result<Box<dyn PairStrategy>, PluginError> {
//!         // ...
//!     }
//! }
//! ```
//!
//! The plugin crate depends on `typetag` (the attribute's expansion names it).

use std::fmt;

use serde::Serialize;

/// The four kinds of plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// Draws responses from a policy.
    Sampler,
    /// Scores responses.
    RewardModel,
    /// Picks chosen/rejected pairs from a scored group.
    PairStrategy,
    /// The training objective.
    PreferenceLoss,
}

impl PluginKind {
    /// Every kind, in pipeline order.
    pub const ALL: [Self; 4] = [
        Self::Sampler,
        Self::RewardModel,
        Self::PairStrategy,
        Self::PreferenceLoss,
    ];

    /// The kind's name as written on the command line (`pair-strategy`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Sampler => "sampler",
            Self::RewardModel => "reward-model",
            Self::PairStrategy => "pair-strategy",
            Self::PreferenceLoss => "preference-loss",
        }
    }

    /// The kind's name in prose (`pair strategy`, ...).
    pub fn noun(&self) -> &'static str {
        match self {
            Self::Sampler => "sampler",
            Self::RewardModel => "reward model",
            Self::PairStrategy => "pair strategy",
            Self::PreferenceLoss => "preference loss",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One registered plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    /// Its kind.
    pub kind: PluginKind,
    /// Its name: the `type = "..."` of its recipe table, the same as its typetag name.
    pub name: &'static str,
    /// One line on what it does.
    pub description: &'static str,
    /// The crate that provides it (`env!("CARGO_PKG_NAME")`).
    pub crate_name: &'static str,
    /// A minimal valid recipe table for it, in TOML (`type = "..."` and any required keys).
    pub example: &'static str,
}

inventory::collect!(PluginInfo);

/// The kind of plugin a config trait object configures (what [`plugin`](crate::plugin) reads the
/// kind from).
pub trait ConfigKind {
    /// The kind.
    const KIND: PluginKind;
}

impl ConfigKind for dyn crate::SamplerConfig {
    const KIND: PluginKind = PluginKind::Sampler;
}
impl ConfigKind for dyn crate::RewardModelConfig {
    const KIND: PluginKind = PluginKind::RewardModel;
}
impl ConfigKind for dyn crate::PairStrategyConfig {
    const KIND: PluginKind = PluginKind::PairStrategy;
}
impl ConfigKind for dyn crate::PreferenceLossConfig {
    const KIND: PluginKind = PluginKind::PreferenceLoss;
}

/// Every registered plugin, sorted by kind, then name.
pub fn plugins() -> Vec<&'static PluginInfo> {
    let mut all: Vec<_> = inventory::iter::<PluginInfo>.into_iter().collect();
    all.sort_by(|a, b| (a.kind, a.name).cmp(&(b.kind, b.name)));
    all
}

/// The registered plugins of one kind, sorted by name.
pub fn plugins_of(kind: PluginKind) -> Vec<&'static PluginInfo> {
    plugins().into_iter().filter(|p| p.kind == kind).collect()
}

/// The plugin of kind `kind` named `name`.
pub fn find(kind: PluginKind, name: &str) -> Option<&'static PluginInfo> {
    plugins_of(kind).into_iter().find(|p| p.name == name)
}

/// The registered name of kind `kind` nearest to `name`, if one is near enough to be a likely
/// typo (normalized Damerau-Levenshtein similarity of at least 0.5, or a shared prefix).
pub fn suggest(kind: PluginKind, name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    plugins_of(kind)
        .into_iter()
        .map(|p| {
            let mut score = strsim::normalized_damerau_levenshtein(&lower, p.name);
            if !lower.is_empty() && (p.name.starts_with(&lower) || lower.starts_with(p.name)) {
                score = score.max(0.75);
            }
            (p.name, score)
        })
        .filter(|(_, score)| *score >= 0.5)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(name, _)| name)
}

/// The message for an unknown plugin name: what is known, and the nearest name.
pub fn unknown_message(kind: PluginKind, name: &str) -> String {
    let names: Vec<_> = plugins_of(kind).iter().map(|p| p.name).collect();
    let mut msg = format!("unknown {} `{name}`", kind.noun());
    if names.is_empty() {
        msg.push_str(&format!(
            "; no {} plugins are compiled into this binary",
            kind.noun()
        ));
    } else {
        msg.push_str(&format!("; known: {}", names.join(", ")));
    }
    if let Some(best) = suggest(kind, name) {
        msg.push_str(&format!("; did you mean `{best}`?"));
    }
    msg
}
