//! The sweetspot command line, as a library: `sweetspot_cli::main()` is the whole program, so a
//! third party can build its own binary that links its plugins and calls it (see
//! `examples/custom-strategy`). It parses arguments and prints summaries; the work is done by
//! `sweetspot-runner`. One module per command under `cmd/`.

mod cmd;
mod common;
mod logging;
mod plugins;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sweetspot_core::recipe::{Recipe, RecipeError};
use sweetspot_runner::RunError;

use crate::common::DEVICE_OVERRIDE;
pub use cmd::batch::{BatchArgs, BatchCommand};
pub use cmd::generate::GenerateArgs;
pub use cmd::pairs::{FormatArg, LayoutArg, PairsArgs, PolicyArg};
pub use cmd::plugins::{KindArg, PluginsArgs};
pub use cmd::report::ReportArgs;
pub use cmd::run::RunArgs;
pub use cmd::score::ScoreArgs;
pub use cmd::serve::{RewardTypeArg, ServeArgs};
pub use cmd::stats::StatsArgs;
pub use cmd::train::TrainArgs;
pub use plugins::link_builtin_plugins;

/// sweetspot: on-policy preference data for LLM alignment, from sampling to DPO.
#[derive(Debug, Parser)]
#[command(name = "sweetspot", version, about, long_about = None)]
pub struct Cli {
    /// Hide progress bars and info logs.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the registered plugins by kind.
    Plugins(PluginsArgs),
    /// Check a recipe without running it: syntax, keys, plugin types, every value's range,
    /// input files, outputs that would overwrite inputs.
    Validate {
        /// The recipe (TOML).
        recipe: std::path::PathBuf,
        #[command(flatten)]
        model: ModelFlags,
    },
    /// Sample n responses per prompt with a sampler plugin.
    Generate(Box<GenerateArgs>),
    /// Score samples with a reward-model plugin.
    Score(Box<ScoreArgs>),
    /// Build chosen/rejected pairs from scored samples.
    Pairs(Box<PairsArgs>),
    /// Train a policy on preference pairs (DPO, IPO, hinge, SimPO).
    Train(Box<TrainArgs>),
    /// Print reward statistics of scored datasets.
    Stats(StatsArgs),
    /// Run a whole recipe as a graph of stages in its run folder: sweeps expanded, finished
    /// stages reused, a killed run resumed (the whole recipe is checked before anything runs).
    Run(RunArgs),
    /// Serve the native models over HTTP: OpenAI-compatible completions and chat (batched on the
    /// device), and /classify for a reward model (ArmoRM included), so this machine can join a
    /// sampling or scoring fleet.
    Serve(Box<ServeArgs>),
    /// Offline batch files: export a generate stage as OpenAI batch JSONL (for `vllm run-batch`
    /// or a batch API) and import the results as a samples file.
    Batch(BatchArgs),
    /// Rebuild a run folder's report.html (figures and the eval table) from what is complete.
    Report(ReportArgs),
}

/// Flags of the commands that load a model.
#[derive(Debug, Clone, Default, Args)]
pub struct ModelFlags {
    /// The device for model plugins: cpu (default), wgpu, wgpu:cpu, cuda, cuda:N. Overrides the
    /// recipe's `[run].device`.
    #[arg(long)]
    pub device: Option<String>,
    /// Discard an earlier run's partial or complete output instead of refusing when the
    /// settings or inputs changed (without it, a changed rerun is refused, naming the change).
    #[arg(long)]
    pub restart: bool,
}

/// An error of the command line: what to print and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) code: u8,
}

impl From<RunError> for Failure {
    fn from(e: RunError) -> Self {
        Self {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

impl From<RecipeError> for Failure {
    fn from(e: RecipeError) -> Self {
        Self {
            code: 2,
            message: e.to_string(),
        }
    }
}

/// The whole program: parses `std::env::args`, runs, prints errors, returns the exit code.
pub fn main() -> ExitCode {
    ExitCode::from(run_from(std::env::args_os()))
}

/// The whole program on the given arguments (the first one is the program's name, as in
/// `std::env::args`): parses them, runs, prints errors and returns the exit code. `main` is this
/// on the process's arguments; the Python wheel's `sweetspot` command is this on `sys.argv`.
pub fn run_from<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    link_builtin_plugins();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // What `Cli::parse` does, less its `exit`: help and version to stdout (code 0),
            // usage errors to stderr (code 2).
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(2);
        }
    };
    init_logging(cli.quiet, cli.verbose);
    match run(cli) {
        Ok(()) => 0,
        Err(f) => {
            let _ = std::io::stdout().flush();
            eprintln!("error: {}", f.message);
            f.code
        }
    }
}

/// The pairs stage of a recipe given as TOML text, checked and run exactly as
/// `sweetspot pairs --recipe` does (relative paths resolve against `base`; `origin` names the
/// recipe in messages). On failure: the message the command prints and its exit code.
pub fn pairs_from_toml(
    text: &str,
    origin: &std::path::Path,
    base: std::path::PathBuf,
    quiet: bool,
) -> Result<sweetspot_runner::PairsSummary, (String, u8)> {
    link_builtin_plugins();
    let recipe = Recipe::from_toml(text, Some(origin)).map_err(|e| (e.to_string(), 2))?;
    cmd::pairs::run_pairs_recipe(recipe, text, origin, base, quiet).map_err(|f| (f.message, f.code))
}

fn init_logging(quiet: bool, verbose: u8) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(|| logging::Stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let file = tracing_subscriber::fmt::layer()
        .with_writer(|| logging::RunLog)
        .with_target(false)
        .with_ansi(false);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init();
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Generate(args) => cmd::generate::generate_cmd(*args, cli.quiet),
        Command::Score(args) => cmd::score::score_cmd(*args, cli.quiet),
        Command::Train(args) => cmd::train::train_cmd(*args, cli.quiet),
        Command::Plugins(args) => cmd::plugins::plugins_cmd(&args),
        Command::Validate { recipe, model } => {
            let _ = DEVICE_OVERRIDE.set(model.device);
            cmd::validate::validate_cmd(&recipe)
        }
        Command::Pairs(args) => cmd::pairs::pairs_cmd(*args, cli.quiet),
        Command::Stats(args) => cmd::stats::stats_cmd(&args),
        Command::Run(args) => cmd::run::run_cmd(args, cli.quiet),
        Command::Report(args) => cmd::report::report_cmd(&args),
        Command::Serve(args) => cmd::serve::serve_cmd(*args),
        Command::Batch(args) => cmd::batch::batch_cmd(args),
    }
}
