//! `sweetspot batch`: a generate stage as OpenAI batch JSONL and back (see
//! `sweetspot_http::batch`).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use sweetspot_http::OpenAiSamplerConfig;

use crate::Failure;
use crate::common::{base_dir, context, load_recipe};

/// `sweetspot batch`.
#[derive(Debug, Args)]
pub struct BatchArgs {
    #[command(subcommand)]
    pub command: BatchCommand,
}

/// Export or import.
#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Write the recipe's generate stage as batch request lines (`custom_id` = [prompt id,
    /// sample index]), from its `[sampler]` (type "openai"), `[generate]` and `[run].seed`.
    Export {
        /// The recipe.
        #[arg(long, short)]
        recipe: PathBuf,
        /// The request lines (JSONL).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Read the batch results back into a samples file (the native sampler's layout).
    Import {
        /// The recipe the requests were exported from.
        #[arg(long, short)]
        recipe: PathBuf,
        /// The results (JSONL, the OpenAI batch output shape `vllm run-batch` writes).
        #[arg(long)]
        results: PathBuf,
        /// The samples file to write.
        #[arg(long, short)]
        output: PathBuf,
    },
}

fn fail(message: String) -> Failure {
    Failure { message, code: 1 }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

pub(crate) fn batch_cmd(args: BatchArgs) -> Result<(), Failure> {
    let (recipe_path, output) = match &args.command {
        BatchCommand::Export { recipe, output } | BatchCommand::Import { recipe, output, .. } => {
            (recipe, output)
        }
    };
    let (recipe, _) = load_recipe(recipe_path)?;
    let ctx = context(&recipe, base_dir(recipe_path));
    let usage = |m: String| Failure {
        message: m,
        code: 2,
    };
    let (Some(sampler), Some(generate)) = (&recipe.sampler, &recipe.generate) else {
        return Err(usage(format!(
            "{}: the recipe needs [sampler] and [generate] tables",
            recipe_path.display()
        )));
    };
    let mut table = serde_json::to_value(sampler).map_err(|e| usage(e.to_string()))?;
    if table["type"] != "openai" {
        return Err(usage(format!(
            "{}: [sampler] must have type = \"openai\" for batch files (it is {})",
            recipe_path.display(),
            table["type"]
        )));
    }
    table.as_object_mut().map(|m| m.remove("type"));
    let config: OpenAiSamplerConfig =
        serde_json::from_value(table).map_err(|e| usage(format!("[sampler]: {e}")))?;
    let prompts_path = ctx.resolve(&generate.prompts.to_vec()[0]);
    for input in [Some(&prompts_path), Some(recipe_path)]
        .into_iter()
        .flatten()
        .chain(match &args.command {
            BatchCommand::Import { results, .. } => Some(results),
            BatchCommand::Export { .. } => None,
        })
    {
        if same_file(input, output) {
            return Err(usage(format!(
                "{}: the output would overwrite an input",
                output.display()
            )));
        }
    }
    let prompts: Vec<_> = sweetspot_io::read_prompts_at(&prompts_path)
        .map_err(|e| fail(e.to_string()))?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let n = generate.n;
    let bytes = match &args.command {
        BatchCommand::Export { .. } => sweetspot_http::batch::export(&config, &ctx, &prompts, n)
            .map_err(|e| fail(e.to_string()))?
            .into_bytes(),
        BatchCommand::Import { results, .. } => {
            let groups = sweetspot_http::batch::import(&config, &ctx, &prompts, n, results)
                .map_err(|e| fail(e.to_string()))?;
            let mut buf = Vec::new();
            for g in &groups {
                for s in &g.samples {
                    serde_json::to_writer(&mut buf, &sweetspot_io::SampleRow::new(&g.prompt, s))
                        .map_err(|e| fail(e.to_string()))?;
                    buf.push(b'\n');
                }
            }
            buf
        }
    };
    sweetspot_io::write_atomic(output, &bytes).map_err(|e| fail(e.to_string()))?;
    let what = match args.command {
        BatchCommand::Export { .. } => "requests",
        BatchCommand::Import { .. } => "samples",
    };
    println!(
        "batch: wrote {} {what} for {} prompts to {}",
        prompts.len() * n,
        prompts.len(),
        output.display()
    );
    Ok(())
}
