//! `sweetspot pairs`: chosen/rejected pairs from scored samples.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use sweetspot_core::recipe::{InputLayout, OnBadGroup, OutputFormat, Recipe, RunConfig};
use sweetspot_runner::{PairsJob, PairsSummary};

use crate::Failure;
use crate::common::{check_recipe, context, path_value, recipe_or_flags};

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
    #[arg(long, value_enum, default_value_t = InputLayout::default().into())]
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
    #[arg(long, value_enum, default_value_t = OnBadGroup::default().into())]
    pub on_small_group: PolicyArg,
    /// Groups with a NaN/infinite/null reward: error or skip.
    #[arg(long, value_enum, default_value_t = OnBadGroup::default().into())]
    pub on_invalid_reward: PolicyArg,
    /// Seed for random choices.
    #[arg(long, default_value_t = RunConfig::default().seed)]
    pub seed: u64,
    /// Print the summary as JSON.
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

impl From<InputLayout> for LayoutArg {
    fn from(l: InputLayout) -> Self {
        match l {
            InputLayout::Auto => Self::Auto,
            InputLayout::Long => Self::Long,
            InputLayout::Grouped => Self::Grouped,
        }
    }
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

impl From<OnBadGroup> for PolicyArg {
    fn from(p: OnBadGroup) -> Self {
        match p {
            OnBadGroup::Error => Self::Error,
            OnBadGroup::Skip => Self::Skip,
        }
    }
}

impl From<PolicyArg> for OnBadGroup {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Error => Self::Error,
            PolicyArg::Skip => Self::Skip,
        }
    }
}

pub(crate) fn pairs_cmd(args: PairsArgs, quiet: bool) -> Result<(), Failure> {
    let (recipe, base, origin, text) = recipe_or_flags(args.recipe.as_ref(), || {
        let text = flags_to_recipe(&args)?;
        let origin = PathBuf::from("<command line>");
        let recipe = Recipe::from_toml(&text, Some(&origin))?;
        Ok((recipe, PathBuf::from("."), origin, text))
    })?;
    let mut recipe = recipe;
    if let (Some(_), Some(o), Some(p)) = (&args.recipe, &args.output, recipe.pairs.as_mut()) {
        p.output = Some(std::path::absolute(o).unwrap_or_else(|_| o.clone()));
    }
    let summary = run_pairs_recipe(recipe, &text, &origin, base, quiet)?;
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

/// The pairs stage of a parsed recipe, checked as `sweetspot pairs --recipe` checks it: the
/// command's work after reading its arguments (also the Python module's `pairs`).
pub(crate) fn run_pairs_recipe(
    recipe: Recipe,
    text: &str,
    origin: &std::path::Path,
    base: PathBuf,
    quiet: bool,
) -> Result<PairsSummary, Failure> {
    let ctx = context(&recipe, base);
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
    check_recipe(&recipe, text, origin, &ctx, stages)?;
    let Some(pairs) = recipe.pairs else {
        return Err(Failure {
            message: "the recipe has no [pairs] table".into(),
            code: 2,
        });
    };
    let mut job = PairsJob::from_config(pairs, None, None, ctx)?;
    job.quiet = quiet;
    Ok(sweetspot_runner::run_pairs(job)?)
}

/// The flag form, written as a recipe so that it goes through the same checks.
pub(crate) fn flags_to_recipe(args: &PairsArgs) -> Result<String, Failure> {
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
    // The recipe's own spellings (the types' serde names).
    let value = |v: Result<toml::Value, toml::ser::Error>| {
        v.map_err(|e| usage(format!("cannot form a recipe from the flags: {e}")))
    };
    pairs.insert(
        "input_layout".into(),
        value(toml::Value::try_from(InputLayout::from(args.input_layout)))?,
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
        value(toml::Value::try_from(OnBadGroup::from(args.on_small_group)))?,
    );
    pairs.insert(
        "on_invalid_reward".into(),
        value(toml::Value::try_from(OnBadGroup::from(
            args.on_invalid_reward,
        )))?,
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

pub(crate) fn print_summary(s: &PairsSummary) {
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
        let dropped = if d.dropped.is_empty() {
            String::new()
        } else {
            format!(
                "; dropped by filters: {}",
                d.dropped
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(out, "{:width$}  {:>8}  {skipped}{dropped}", d.name, d.pairs);
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
