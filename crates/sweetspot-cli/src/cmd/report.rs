//! `sweetspot report`: rebuild a run folder's `report.html`.

use std::path::PathBuf;

use clap::Args;

use crate::Failure;

/// `sweetspot report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run folder (where `run.json` is).
    pub run_dir: PathBuf,
}

pub(crate) fn report_cmd(args: &ReportArgs) -> Result<(), Failure> {
    let (path, figures) = sweetspot_report::write_report(&args.run_dir)
        .map_err(|message| Failure { message, code: 1 })?;
    println!("report: {} ({figures} figures)", path.display());
    Ok(())
}
