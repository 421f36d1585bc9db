//! The sweetspot command line, as a library: `sweetspot_cli::main()` is the whole program, so a
//! third party can build its own binary that links its plugins and calls it (see
//! `examples/custom-strategy`).

mod plugins;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sweetspot_core::BuildContext;
use sweetspot_core::recipe::{InputLayout, OutputFormat, Recipe, RecipeError};
use sweetspot_core::registry::{self, PluginKind};
use sweetspot_runner::{PairsJob, PairsSummary, RunError};

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
        recipe: PathBuf,
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
    /// Run every stage of a recipe (the whole recipe is checked before the first starts).
    Run {
        /// The recipe (TOML).
        #[arg(
            required_unless_present = "recipe_flag",
            conflicts_with = "recipe_flag"
        )]
        recipe: Option<PathBuf>,
        /// The recipe (TOML), as a flag.
        #[arg(long = "recipe", short = 'r', value_name = "RECIPE")]
        recipe_flag: Option<PathBuf>,
        #[command(flatten)]
        model: ModelFlags,
    },
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

/// `sweetspot pairs`: from a recipe, or from flags.
#[derive(Debug, Args)]
pub struct PairsArgs {
    /// Take everything from this recipe's [pairs] table (--output still overrides its output).
    #[arg(long, short, conflicts_with_all = ["input", "strategy"])]
    pub recipe: Option<PathBuf>,
    /// Scored samples (.jsonl or .parquet; long or grouped layout).
    #[arg(long, short, required_unless_present = "recipe")]
    pub input: Option<PathBuf>,
    /// The input's layout.
    #[arg(long, value_enum, default_value = "auto")]
    pub input_layout: LayoutArg,
    /// The strategy (see `sweetspot plugins --kind pair-strategy`).
    #[arg(long, short, required_unless_present = "recipe")]
    pub strategy: Option<String>,
    /// sigma: the chosen point (min, max or k such as 2).
    #[arg(long, allow_negative_numbers = true)]
    pub chosen: Option<String>,
    /// sigma: the rejected point (min, max or k such as -2).
    #[arg(long, allow_negative_numbers = true)]
    pub rejected: Option<String>,
    /// grid: the points, comma separated (default min,-2,-1,0,1,2,max).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub points: Option<Vec<String>>,
    /// max-of-n-min-of-k: size of the rejected pool.
    #[arg(long)]
    pub k: Option<u64>,
    /// max-of-n-min-of-k: `first` or `random`.
    #[arg(long)]
    pub subset: Option<String>,
    /// Use only the first n samples of each group.
    #[arg(long)]
    pub n: Option<u64>,
    /// Any other strategy key, as key=value (value in TOML syntax); repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// A folder (one file per dataset), or a .jsonl/.parquet file for one dataset.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Output format (default: from the output's extension, else jsonl).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Groups too small for the strategy: error or skip.
    #[arg(long, value_enum, default_value = "error")]
    pub on_small_group: PolicyArg,
    /// Groups with a NaN/infinite/null reward: error or skip.
    #[arg(long, value_enum, default_value = "error")]
    pub on_invalid_reward: PolicyArg,
    /// Seed for random choices.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sweetspot generate`: from a recipe, or from flags (the `burn` sampler).
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Take the [sampler] and [generate] tables from this recipe.
    #[arg(long, short, conflicts_with_all = ["model", "prompts"])]
    pub recipe: Option<PathBuf>,
    /// A model folder (config.json, safetensors, tokenizer.json) or a .gguf file.
    #[arg(long, short, required_unless_present = "recipe")]
    pub model: Option<PathBuf>,
    /// Prompts (JSONL: `prompt` as text or messages, optional `prompt_id`).
    #[arg(long, short, required_unless_present = "recipe")]
    pub prompts: Option<PathBuf>,
    /// Samples per prompt.
    #[arg(long, short, default_value_t = 4)]
    pub n: usize,
    /// Samples out (JSONL, long layout). With --recipe, overrides [generate].output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Softmax temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Longest response in tokens.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Seed: the sample for (prompt id, sample index) depends on it and those two only.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The weights' float type: f32 (default), bf16 or f16.
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub dtype: Option<String>,
    #[command(flatten)]
    pub model_flags: ModelFlags,
}

/// `sweetspot score`: from a recipe, or from flags.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Take the [reward] and [score] tables from this recipe.
    #[arg(long, short, conflicts_with_all = ["model", "input"])]
    pub recipe: Option<PathBuf>,
    /// Samples (JSONL, long layout, as `sweetspot generate` writes them).
    #[arg(long, short, required_unless_present = "recipe")]
    pub input: Option<PathBuf>,
    /// Scored samples out (JSONL, long layout). With --recipe, overrides [score].output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// The reward model type (see `sweetspot plugins --kind reward-model`).
    #[arg(long = "type", short = 't', default_value = "seq-cls")]
    pub kind: String,
    /// The reward model: a model folder (or, for `judge`, a .gguf file).
    #[arg(long, short, required_unless_present = "recipe")]
    pub model: Option<PathBuf>,
    /// Most sequences per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Any other reward-model key, as key=value (value in TOML syntax); repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// The weights' float type: f32 (default), bf16 or f16.
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub dtype: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model_flags: ModelFlags,
}

/// `sweetspot train`: from a recipe, or from flags.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Take the [train] table from this recipe.
    #[arg(long, short, conflicts_with_all = ["pairs", "policy"])]
    pub recipe: Option<PathBuf>,
    /// Pairs in TRL's format (JSONL), as `sweetspot pairs` writes them.
    #[arg(long, required_unless_present = "recipe")]
    pub pairs: Option<PathBuf>,
    /// The policy to start from: a model folder or a .gguf file.
    #[arg(long, short = 'm', required_unless_present = "recipe")]
    pub policy: Option<PathBuf>,
    /// The run folder (trained policy, metrics.jsonl, checkpoint). With --recipe, overrides
    /// [train].output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// The loss (see `sweetspot plugins --kind preference-loss`).
    #[arg(long, default_value = "dpo")]
    pub loss: String,
    /// The loss's beta.
    #[arg(long)]
    pub beta: Option<f64>,
    /// Any other loss key, as key=value (value in TOML syntax); repeatable.
    #[arg(long = "loss-param", value_name = "KEY=VALUE")]
    pub loss_params: Vec<String>,
    /// Any other [train] key, as key=value (value in TOML syntax); repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Seed of the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute type: f32 (default), or bf16 / f16 mixed precision (weights stay f32).
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub dtype: Option<String>,
    #[command(flatten)]
    pub model_flags: ModelFlags,
}

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

/// Input layout flag.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LayoutArg {
    /// Detect from the first row.
    Auto,
    /// One row per sample.
    Long,
    /// One row per prompt.
    Grouped,
}

impl From<LayoutArg> for InputLayout {
    fn from(l: LayoutArg) -> Self {
        match l {
            LayoutArg::Auto => Self::Auto,
            LayoutArg::Long => Self::Long,
            LayoutArg::Grouped => Self::Grouped,
        }
    }
}

/// Output format flag.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// JSON Lines.
    Jsonl,
    /// Parquet.
    Parquet,
}

/// Error-or-skip flag.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    /// Stop with an error.
    Error,
    /// Skip and count.
    Skip,
}

impl PolicyArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Skip => "skip",
        }
    }
}

/// An error of the command line: what to print and the exit code.
#[derive(Debug)]
struct Failure {
    message: String,
    code: u8,
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
    link_builtin_plugins();
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let _ = std::io::stdout().flush();
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(quiet: bool, verbose: u8) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Generate(args) => generate_cmd(*args, cli.quiet),
        Command::Score(args) => score_cmd(*args, cli.quiet),
        Command::Train(args) => train_cmd(*args, cli.quiet),
        Command::Plugins(args) => plugins_cmd(&args),
        Command::Validate { recipe, model } => {
            let _ = DEVICE_OVERRIDE.set(model.device);
            validate_cmd(&recipe)
        }
        Command::Pairs(args) => pairs_cmd(*args, cli.quiet),
        Command::Stats(args) => stats_cmd(&args),
        Command::Run {
            recipe,
            recipe_flag,
            model,
        } => {
            let Some(recipe) = recipe.or(recipe_flag) else {
                return Err(Failure {
                    message: "give the recipe: sweetspot run RECIPE".into(),
                    code: 2,
                });
            };
            let _ = DEVICE_OVERRIDE.set(model.device);
            run_cmd(&recipe, model.restart, cli.quiet)
        }
    }
}

/// A recipe file read and parsed, with its text (for locating keys in later checks).
fn load_recipe(path: &Path) -> Result<(Recipe, String), Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure {
        message: format!("{}: cannot read the recipe: {e}", path.display()),
        code: 2,
    })?;
    let recipe = Recipe::from_toml(&text, Some(path))?;
    Ok((recipe, text))
}

/// Checks the stages of a recipe that are about to run (see `sweetspot_runner::validate`).
fn check_recipe(
    recipe: &Recipe,
    text: &str,
    origin: &Path,
    ctx: &BuildContext,
    stages: sweetspot_runner::Stages,
) -> Result<Vec<String>, Failure> {
    let src = sweetspot_runner::RecipeSource {
        recipe,
        text,
        origin,
    };
    sweetspot_runner::validate_recipe(&src, ctx, stages).map_err(|e| Failure {
        code: match e {
            sweetspot_runner::Invalid::MissingInput(_) => 1,
            sweetspot_runner::Invalid::Recipe(_) => 2,
        },
        message: e.error().to_string(),
    })
}

/// `--device`, set once at start.
static DEVICE_OVERRIDE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

fn generate_cmd(args: GenerateArgs, quiet: bool) -> Result<(), Failure> {
    let _ = DEVICE_OVERRIDE.set(args.model_flags.device.clone());
    let usage = |message: String| Failure { message, code: 2 };
    let (recipe, base, origin, text) = match &args.recipe {
        Some(path) => {
            let (r, t) = load_recipe(path)?;
            (r, base_dir(path), path.clone(), t)
        }
        None => {
            let (Some(model), Some(prompts)) = (&args.model, &args.prompts) else {
                return Err(usage("give --recipe, or --model and --prompts".into()));
            };
            let Some(output) = &args.output else {
                return Err(usage("give --output (a .jsonl file)".into()));
            };
            let mut sampler = toml::Table::new();
            sampler.insert("type".into(), toml::Value::String("burn".into()));
            sampler.insert("model".into(), path_value(model));
            sampler.insert(
                "temperature".into(),
                toml::Value::Float(args.temperature as f64),
            );
            sampler.insert("top_p".into(), toml::Value::Float(args.top_p as f64));
            sampler.insert("top_k".into(), toml::Value::Integer(args.top_k as i64));
            sampler.insert(
                "max_new_tokens".into(),
                toml::Value::Integer(args.max_new_tokens as i64),
            );
            sampler.insert(
                "batch_size".into(),
                toml::Value::Integer(args.batch_size as i64),
            );
            if let Some(d) = &args.dtype {
                sampler.insert("dtype".into(), toml::Value::String(d.clone()));
            }
            let mut generate = toml::Table::new();
            generate.insert("prompts".into(), path_value(prompts));
            generate.insert("output".into(), path_value(output));
            generate.insert("n".into(), toml::Value::Integer(args.n as i64));
            let mut run = toml::Table::new();
            run.insert("seed".into(), toml::Value::Integer(args.seed as i64));
            flag_recipe([("run", run), ("sampler", sampler), ("generate", generate)])?
        }
    };
    let ctx = context(&recipe, base);
    let mut recipe = recipe;
    if let (Some(_), Some(o), Some(g)) = (&args.recipe, &args.output, recipe.generate.as_mut()) {
        g.output = std::path::absolute(o).unwrap_or_else(|_| o.clone());
    }
    let stages = sweetspot_runner::Stages {
        generate: true,
        ..sweetspot_runner::Stages::NONE
    };
    check_recipe(&recipe, &text, &origin, &ctx, stages)?;
    let (Some(sampler), Some(gen_cfg)) = (recipe.sampler, recipe.generate) else {
        return Err(usage(format!(
            "{}: the recipe needs [sampler] and [generate] tables",
            origin.display()
        )));
    };
    let job = sweetspot_runner::GenerateJob {
        prompts: ctx.resolve(&gen_cfg.prompts),
        output: ctx.resolve(&gen_cfg.output),
        n: gen_cfg.n,
        sampler,
        ctx,
        prompts_per_call: 8,
        quiet,
        restart: args.model_flags.restart,
    };
    let s = sweetspot_runner::run_generate(job)?;
    print_generate_summary(&s);
    Ok(())
}

fn print_generate_summary(s: &sweetspot_runner::GenerateSummary) {
    if s.already_complete {
        println!(
            "generate: {} is already complete ({} samples for {} prompts, same settings and \
             inputs); nothing to do",
            s.output.display(),
            s.samples,
            s.prompts
        );
    } else if s.resumed_prompts > 0 {
        println!(
            "generate: wrote {} samples for {} prompts ({} resumed from an interrupted run) to \
             {} in {:.1}s",
            s.samples,
            s.prompts,
            s.resumed_prompts,
            s.output.display(),
            s.seconds
        );
    } else {
        println!(
            "generate: wrote {} samples for {} prompts to {} in {:.1}s",
            s.samples,
            s.prompts,
            s.output.display(),
            s.seconds
        );
    }
}

/// A recipe made from command-line flags, as tables, so that flags go through the same parser
/// and checks as a recipe file. Returns the recipe, its base folder and its origin for messages.
fn flag_recipe<const N: usize>(
    tables: [(&str, toml::Table); N],
) -> Result<(Recipe, PathBuf, PathBuf, String), Failure> {
    let root: toml::Table = tables
        .into_iter()
        .map(|(k, t)| (k.to_string(), toml::Value::Table(t)))
        .collect();
    let text = toml::to_string(&root).map_err(|e| Failure {
        message: e.to_string(),
        code: 2,
    })?;
    let origin = PathBuf::from("<command line>");
    Ok((
        Recipe::from_toml(&text, Some(&origin))?,
        PathBuf::from("."),
        origin,
        text,
    ))
}

/// A path from the command line as an absolute path in a flag-made recipe (whose base folder is
/// `.`, so relative paths would otherwise depend on where the recipe is resolved).
fn path_value(p: &Path) -> toml::Value {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    toml::Value::String(abs.to_string_lossy().into_owned())
}

/// A `key=value` flag as a TOML value (`value` in TOML syntax, else a string).
fn param_value(kv: &str) -> Result<(String, toml::Value), Failure> {
    let Some((k, v)) = kv.split_once('=') else {
        return Err(Failure {
            message: format!("--param {kv}: expected KEY=VALUE"),
            code: 2,
        });
    };
    let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(v.to_string()));
    Ok((k.trim().to_string(), value))
}

fn score_cmd(args: ScoreArgs, quiet: bool) -> Result<(), Failure> {
    let _ = DEVICE_OVERRIDE.set(args.model_flags.device.clone());
    let usage = |message: String| Failure { message, code: 2 };
    let (recipe, base, origin, text) = match &args.recipe {
        Some(path) => {
            let (r, t) = load_recipe(path)?;
            (r, base_dir(path), path.clone(), t)
        }
        None => {
            let (Some(model), Some(input)) = (&args.model, &args.input) else {
                return Err(usage("give --recipe, or --model and --input".into()));
            };
            let Some(output) = &args.output else {
                return Err(usage("give --output (a .jsonl file)".into()));
            };
            let mut reward = toml::Table::new();
            reward.insert("type".into(), toml::Value::String(args.kind.clone()));
            reward.insert("model".into(), path_value(model));
            reward.insert(
                "batch_size".into(),
                toml::Value::Integer(args.batch_size as i64),
            );
            for kv in &args.params {
                let (k, v) = param_value(kv)?;
                reward.insert(k, v);
            }
            if let Some(d) = &args.dtype {
                reward.insert("dtype".into(), toml::Value::String(d.clone()));
            }
            let mut score = toml::Table::new();
            score.insert("input".into(), path_value(input));
            score.insert("output".into(), path_value(output));
            flag_recipe([("reward", reward), ("score", score)])?
        }
    };
    let ctx = context(&recipe, base);
    let mut recipe = recipe;
    if let (Some(_), Some(o), Some(c)) = (&args.recipe, &args.output, recipe.score.as_mut()) {
        c.output = std::path::absolute(o).unwrap_or_else(|_| o.clone());
    }
    let stages = sweetspot_runner::Stages {
        score: true,
        ..sweetspot_runner::Stages::NONE
    };
    check_recipe(&recipe, &text, &origin, &ctx, stages)?;
    let (Some(reward), Some(cfg)) = (recipe.reward, recipe.score) else {
        return Err(usage(format!(
            "{}: the recipe needs [reward] and [score] tables",
            origin.display()
        )));
    };
    let job = score_job(reward, cfg, ctx, quiet, args.model_flags.restart);
    let s = sweetspot_runner::run_score(job)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    } else {
        print_score_summary(&s);
    }
    Ok(())
}

fn train_cmd(args: TrainArgs, quiet: bool) -> Result<(), Failure> {
    let _ = DEVICE_OVERRIDE.set(args.model_flags.device.clone());
    let usage = |message: String| Failure { message, code: 2 };
    let (recipe, base, origin, text) = match &args.recipe {
        Some(path) => {
            let (r, t) = load_recipe(path)?;
            (r, base_dir(path), path.clone(), t)
        }
        None => {
            let (Some(pairs), Some(policy)) = (&args.pairs, &args.policy) else {
                return Err(usage("give --recipe, or --pairs and --policy".into()));
            };
            let Some(output) = &args.output else {
                return Err(usage("give --output (the run folder)".into()));
            };
            let mut loss = toml::Table::new();
            loss.insert("type".into(), toml::Value::String(args.loss.clone()));
            if let Some(b) = args.beta {
                loss.insert("beta".into(), toml::Value::Float(b));
            }
            for kv in &args.loss_params {
                let (k, v) = param_value(kv)?;
                loss.insert(k, v);
            }
            let mut train = toml::Table::new();
            train.insert("pairs".into(), path_value(pairs));
            train.insert("policy".into(), path_value(policy));
            train.insert("output".into(), path_value(output));
            for kv in &args.params {
                let (k, v) = param_value(kv)?;
                train.insert(k, v);
            }
            if let Some(d) = &args.dtype {
                train.insert("dtype".into(), toml::Value::String(d.clone()));
            }
            train.insert("loss".into(), toml::Value::Table(loss));
            let mut run = toml::Table::new();
            run.insert("seed".into(), toml::Value::Integer(args.seed as i64));
            flag_recipe([("run", run), ("train", train)])?
        }
    };
    let ctx = context(&recipe, base);
    let mut recipe = recipe;
    if let (Some(_), Some(o), Some(t)) = (&args.recipe, &args.output, recipe.train.as_mut()) {
        t.output = std::path::absolute(o).unwrap_or_else(|_| o.clone());
    }
    if recipe.train.is_none() {
        return Err(usage(format!(
            "{}: the recipe needs a [train] table",
            origin.display()
        )));
    }
    let stages = sweetspot_runner::Stages {
        train: true,
        ..sweetspot_runner::Stages::NONE
    };
    check_recipe(&recipe, &text, &origin, &ctx, stages)?;
    let Some(cfg) = recipe.train else {
        return Err(usage("the recipe needs a [train] table".into()));
    };
    let s = sweetspot_runner::run_train(cfg, &ctx, quiet, args.model_flags.restart)?;
    print_train_summary(&s);
    Ok(())
}

fn print_train_summary(s: &sweetspot_runner::TrainSummary) {
    let loss = s
        .last_loss
        .map(|l| format!(", last loss {l:.4}"))
        .unwrap_or_default();
    let resumed = if s.resumed_steps > 0 {
        format!(" ({} resumed from an interrupted run)", s.resumed_steps)
    } else {
        String::new()
    };
    match &s.policy {
        Some(p) if s.already_complete => println!(
            "train: already complete (same settings and inputs); policy in {}",
            p.display()
        ),
        Some(p) => println!(
            "train: trained {} steps{resumed}{loss}; policy in {}",
            s.total_steps,
            p.display()
        ),
        None => println!("stopped after {} of {} steps{loss}", s.steps, s.total_steps),
    }
}

fn score_job(
    reward: Box<dyn sweetspot_core::RewardModelConfig>,
    cfg: sweetspot_core::recipe::ScoreConfig,
    ctx: BuildContext,
    quiet: bool,
    restart: bool,
) -> sweetspot_runner::ScoreJob {
    sweetspot_runner::ScoreJob {
        input: ctx.resolve(&cfg.input),
        output: ctx.resolve(&cfg.output),
        reward,
        ctx,
        groups_per_call: cfg.groups_per_call,
        quiet,
        restart,
    }
}

fn print_score_summary(s: &sweetspot_runner::ScoreSummary) {
    if s.already_complete {
        println!(
            "score: {} is already complete ({} samples, same settings and inputs); nothing to do",
            s.output.display(),
            s.samples
        );
        return;
    }
    let resumed = if s.resumed_groups > 0 {
        format!(" ({} resumed from an interrupted run)", s.resumed_groups)
    } else {
        String::new()
    };
    println!(
        "score: scored {} samples of {} prompts{resumed} into {} in {:.1}s",
        s.samples,
        s.groups,
        s.output.display(),
        s.seconds
    );
    if !s.objectives.is_empty() {
        println!("objective_rewards per sample: {}", s.objectives.join(", "));
    }
}

fn plugins_cmd(args: &PluginsArgs) -> Result<(), Failure> {
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

fn base_dir(recipe: &Path) -> PathBuf {
    match recipe.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn context(recipe: &Recipe, base: PathBuf) -> BuildContext {
    BuildContext {
        device: DEVICE_OVERRIDE
            .get()
            .cloned()
            .flatten()
            .or_else(|| recipe.run.device.clone())
            .unwrap_or_else(|| "cpu".into()),
        base_dir: base,
        seed: recipe.run.seed,
    }
}

fn validate_cmd(path: &Path) -> Result<(), Failure> {
    let (recipe, text) = load_recipe(path)?;
    let ctx = context(&recipe, base_dir(path));
    let stages = sweetspot_runner::Stages::all_of(&recipe);
    let described = check_recipe(&recipe, &text, path, &ctx, stages)?;
    println!("{}: ok: {}", path.display(), described.join(", "));
    Ok(())
}

fn run_cmd(path: &Path, restart: bool, quiet: bool) -> Result<(), Failure> {
    let (recipe, text) = load_recipe(path)?;
    let ctx = context(&recipe, base_dir(path));
    // The whole recipe is checked before the first stage starts.
    check_recipe(
        &recipe,
        &text,
        path,
        &ctx,
        sweetspot_runner::Stages::all_of(&recipe),
    )?;
    let usage = |message: String| Failure { message, code: 2 };
    // Stages run in pipeline order: generate, score, pairs, train.
    if let Some(gen_cfg) = recipe.generate {
        let Some(sampler) = recipe.sampler else {
            return Err(usage(format!(
                "{}: [generate] needs a [sampler] table",
                path.display()
            )));
        };
        let s = sweetspot_runner::run_generate(sweetspot_runner::GenerateJob {
            prompts: ctx.resolve(&gen_cfg.prompts),
            output: ctx.resolve(&gen_cfg.output),
            n: gen_cfg.n,
            sampler,
            ctx: ctx.clone(),
            prompts_per_call: 8,
            quiet,
            restart,
        })?;
        print_generate_summary(&s);
    }
    if let Some(cfg) = recipe.score {
        let Some(reward) = recipe.reward else {
            return Err(usage(format!(
                "{}: [score] needs a [reward] table",
                path.display()
            )));
        };
        let s = sweetspot_runner::run_score(score_job(reward, cfg, ctx.clone(), quiet, restart))?;
        print_score_summary(&s);
    }
    if let Some(pairs) = recipe.pairs {
        let mut job = PairsJob::from_config(pairs, ctx.clone());
        job.quiet = quiet;
        let summary = sweetspot_runner::run_pairs(job)?;
        print_summary(&summary);
    }
    if let Some(train) = recipe.train {
        let s = sweetspot_runner::run_train(train, &ctx, quiet, restart)?;
        print_train_summary(&s);
    }
    Ok(())
}

fn pairs_cmd(args: PairsArgs, quiet: bool) -> Result<(), Failure> {
    let (recipe, base, origin, text) = match &args.recipe {
        Some(path) => {
            let (r, t) = load_recipe(path)?;
            (r, base_dir(path), path.clone(), t)
        }
        None => {
            let text = flags_to_recipe(&args)?;
            let origin = PathBuf::from("<command line>");
            let recipe = Recipe::from_toml(&text, Some(&origin))?;
            (recipe, PathBuf::from("."), origin, text)
        }
    };
    let ctx = context(&recipe, base);
    let mut recipe = recipe;
    if let (Some(_), Some(o), Some(p)) = (&args.recipe, &args.output, recipe.pairs.as_mut()) {
        p.output = std::path::absolute(o).unwrap_or_else(|_| o.clone());
    }
    if recipe.pairs.is_none() {
        return Err(Failure {
            message: format!("{}: the recipe has no [pairs] table", origin.display()),
            code: 2,
        });
    }
    let stages = sweetspot_runner::Stages {
        pairs: true,
        ..sweetspot_runner::Stages::NONE
    };
    check_recipe(&recipe, &text, &origin, &ctx, stages)?;
    let Some(pairs) = recipe.pairs else {
        return Err(Failure {
            message: "the recipe has no [pairs] table".into(),
            code: 2,
        });
    };
    let mut job = PairsJob::from_config(pairs, ctx);
    job.quiet = quiet;
    let summary = sweetspot_runner::run_pairs(job)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// The flag form, written as a recipe so that it goes through the same checks.
fn flags_to_recipe(args: &PairsArgs) -> Result<String, Failure> {
    let usage = |message: String| Failure { message, code: 2 };
    let (Some(input), Some(strategy)) = (&args.input, &args.strategy) else {
        return Err(usage("give --recipe, or --input and --strategy".into()));
    };
    let Some(output) = &args.output else {
        return Err(usage(
            "give --output (a folder, or a .jsonl/.parquet file)".into(),
        ));
    };
    let mut s = toml::Table::new();
    s.insert("type".into(), toml::Value::String(strategy.clone()));
    let point = |p: &str| match p.parse::<f64>() {
        Ok(k) => toml::Value::Float(k),
        Err(_) => toml::Value::String(p.to_string()),
    };
    if let Some(c) = &args.chosen {
        s.insert("chosen".into(), point(c));
    }
    if let Some(r) = &args.rejected {
        s.insert("rejected".into(), point(r));
    }
    if let Some(points) = &args.points {
        s.insert(
            "points".into(),
            toml::Value::Array(points.iter().map(|p| point(p)).collect()),
        );
    }
    if let Some(k) = args.k {
        s.insert("k".into(), toml::Value::Integer(k as i64));
    }
    if let Some(subset) = &args.subset {
        s.insert("subset".into(), toml::Value::String(subset.clone()));
    }
    if let Some(n) = args.n {
        s.insert("n".into(), toml::Value::Integer(n as i64));
    }
    for param in &args.params {
        let Some((key, value)) = param.split_once('=') else {
            return Err(usage(format!("--param `{param}`: expected KEY=VALUE")));
        };
        let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        s.insert(key.trim().to_string(), value);
    }
    let mut pairs = toml::Table::new();
    pairs.insert("input".into(), path_value(input));
    pairs.insert("output".into(), path_value(output));
    let layout: InputLayout = args.input_layout.into();
    pairs.insert(
        "input_layout".into(),
        toml::Value::String(
            match layout {
                InputLayout::Auto => "auto",
                InputLayout::Long => "long",
                InputLayout::Grouped => "grouped",
            }
            .into(),
        ),
    );
    if let Some(f) = args.format {
        let f = match f {
            FormatArg::Jsonl => OutputFormat::Jsonl,
            FormatArg::Parquet => OutputFormat::Parquet,
        };
        pairs.insert("format".into(), toml::Value::String(f.extension().into()));
    }
    pairs.insert(
        "on_small_group".into(),
        toml::Value::String(args.on_small_group.as_str().into()),
    );
    pairs.insert(
        "on_invalid_reward".into(),
        toml::Value::String(args.on_invalid_reward.as_str().into()),
    );
    pairs.insert(
        "strategies".into(),
        toml::Value::Array(vec![toml::Value::Table(s)]),
    );
    let mut run = toml::Table::new();
    run.insert("seed".into(), toml::Value::Integer(args.seed as i64));
    let mut root = toml::Table::new();
    root.insert("run".into(), toml::Value::Table(run));
    root.insert("pairs".into(), toml::Value::Table(pairs));
    toml::to_string(&root).map_err(|e| usage(format!("cannot form a recipe from the flags: {e}")))
}

fn print_summary(s: &PairsSummary) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "read {} groups ({} samples, {} layout, {} rows, {} bytes, {} pass) from {} in {:.2}s",
        s.groups,
        s.samples,
        s.input_layout,
        s.rows_read,
        s.input_bytes_read,
        s.input_passes,
        s.input.display(),
        s.seconds
    );
    let width = s
        .datasets
        .iter()
        .map(|d| d.name.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let _ = writeln!(out, "{:width$}  {:>8}  skipped groups", "dataset", "pairs");
    for d in &s.datasets {
        let skipped = if d.skipped.is_empty() {
            "-".to_string()
        } else {
            d.skipped
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "{:width$}  {:>8}  {skipped}", d.name, d.pairs);
    }
    let folder = s
        .datasets
        .first()
        .and_then(|d| d.file.parent())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "wrote {} dataset file(s) to {folder}; summary: {}",
        s.datasets.len(),
        s.summary_file.display()
    );
}

fn stats_cmd(args: &StatsArgs) -> Result<(), Failure> {
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
