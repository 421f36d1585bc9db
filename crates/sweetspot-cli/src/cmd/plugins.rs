//! `sweetspot plugins`: what is compiled in, by kind.

use std::io::Write;

use clap::{Args, ValueEnum};
use sweetspot_core::registry::{self, PluginKind};

use crate::Failure;

/// `sweetspot plugins`.
#[derive(Debug, Args)]
pub struct PluginsArgs {
    /// Only this kind.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A plugin kind on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// Samplers.
    Sampler,
    /// Reward models.
    RewardModel,
    /// Pair strategies.
    PairStrategy,
    /// Preference losses.
    PreferenceLoss,
}

impl From<KindArg> for PluginKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Sampler => Self::Sampler,
            KindArg::RewardModel => Self::RewardModel,
            KindArg::PairStrategy => Self::PairStrategy,
            KindArg::PreferenceLoss => Self::PreferenceLoss,
        }
    }
}

pub(crate) fn plugins_cmd(args: &PluginsArgs) -> Result<(), Failure> {
    let kinds: Vec<PluginKind> = match args.kind {
        Some(k) => vec![k.into()],
        None => PluginKind::ALL.to_vec(),
    };
    let all: Vec<_> = registry::plugins()
        .into_iter()
        .filter(|p| kinds.contains(&p.kind))
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        let text = serde_json::to_string_pretty(&all).map_err(|e| Failure {
            message: e.to_string(),
            code: 1,
        })?;
        let _ = writeln!(out, "{text}");
        return Ok(());
    }
    for kind in kinds {
        let of_kind: Vec<_> = all.iter().filter(|p| p.kind == kind).collect();
        let _ = writeln!(out, "{} ({}):", kind, of_kind.len());
        if of_kind.is_empty() {
            let _ = writeln!(out, "  (none compiled in)");
        }
        let width = of_kind.iter().map(|p| p.name.len()).max().unwrap_or(0);
        for p in of_kind {
            let _ = writeln!(
                out,
                "  {:width$}  {}  [{}]",
                p.name, p.description, p.crate_name
            );
        }
    }
    Ok(())
}
