//! `sweetspot stats`: reward statistics of scored datasets.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::Failure;
use crate::cmd::pairs::LayoutArg;

/// `sweetspot stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Scored datasets (.jsonl or .parquet).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Use only the first n samples of each group.
    #[arg(long)]
    pub n: Option<usize>,
    /// The inputs' layout.
    #[arg(long, value_enum, default_value = "auto")]
    pub input_layout: LayoutArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn stats_cmd(args: &StatsArgs) -> Result<(), Failure> {
    let mut all = Vec::new();
    for input in &args.inputs {
        all.push(sweetspot_runner::dataset_stats(
            input,
            args.input_layout.into(),
            args.n,
        )?);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&all).unwrap_or_default()
        );
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<32} {:>8} {:>7} {:>9} {:>9} {:>8} {:>10} {:>10}",
        "dataset", "groups", "mean n", "mean mu", "mean sd", "sd = 0", "max>mu+2sd", "min<mu-2sd"
    );
    for s in &all {
        let name = s
            .input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<32} {:>8} {:>7.1} {:>9.4} {:>9.4} {:>7.1}% {:>9.1}% {:>9.1}%",
            name,
            s.groups,
            s.mean_n,
            s.mean_of_mu,
            s.mean_of_sigma,
            100.0 * s.frac_sigma_zero,
            100.0 * s.frac_max_beyond_2sigma,
            100.0 * s.frac_min_beyond_2sigma
        );
        if s.invalid_groups > 0 {
            let _ = writeln!(
                out,
                "  ({} groups left out for a non-finite reward)",
                s.invalid_groups
            );
        }
    }
    Ok(())
}
