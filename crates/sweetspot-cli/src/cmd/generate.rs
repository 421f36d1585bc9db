//! `sweetspot generate`: sample n responses per prompt.

use std::path::PathBuf;

use clap::Args;

use crate::common::{
    DEVICE_OVERRIDE, check_recipe, context, flag_recipe, path_value, recipe_or_flags,
};
use crate::{Failure, ModelFlags};

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
    /// Softmax temperature (0 = greedy). Unset: the model's generation config, else 0.8.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass (1 = off). Unset: the model's generation config, else 1.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Top-k (0 = off). Unset: the model's generation config, else 0.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Repetition penalty as transformers applies it (1 = off). Unset: the model's generation
    /// config, else 1.
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Min-p as transformers applies it (0 = off). Unset: the model's generation config, else 0.
    #[arg(long)]
    pub min_p: Option<f32>,
    /// `auto`: the model's generation_config.json fills the sampling settings not given (as
    /// vLLM does); `vllm`: sweetspot's defaults do.
    #[arg(long, value_parser = ["auto", "vllm"])]
    pub generation_config: Option<String>,
    /// Longest response in tokens.
    #[arg(long, default_value_t = sweetspot_burn_sampler::default_max_new())]
    pub max_new_tokens: usize,
    /// Sequences on the device at once (continuous batching); by default as many as the
    /// memory holds, at most 128 on a CPU (`batch_size = "auto"`).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Key/value slots on the device at once (rows x slots); unbounded when absent.
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// Seed: the sample for (prompt id, sample index) depends on it and those two only.
    #[arg(long, default_value_t = sweetspot_core::recipe::RunConfig::default().seed)]
    pub seed: u64,
    /// The weights' float type: f32 (default), bf16 or f16.
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub dtype: Option<String>,
    /// Compute the projections with 8-bit weights and activations (llama.cpp's Q8_0 blocks):
    /// q8_0. CPU only, with f32 weights.
    #[arg(long, value_parser = ["q8_0"])]
    pub quantize: Option<String>,
    #[command(flatten)]
    pub model_flags: ModelFlags,
}

pub(crate) fn generate_cmd(args: GenerateArgs, quiet: bool) -> Result<(), Failure> {
    let _ = DEVICE_OVERRIDE.set(args.model_flags.device.clone());
    let usage = |message: String| Failure { message, code: 2 };
    let (recipe, base, origin, text) = recipe_or_flags(args.recipe.as_ref(), || {
        let (Some(model), Some(prompts)) = (&args.model, &args.prompts) else {
            return Err(usage("give --recipe, or --model and --prompts".into()));
        };
        let Some(output) = &args.output else {
            return Err(usage("give --output (a .jsonl file)".into()));
        };
        let mut sampler = toml::Table::new();
        sampler.insert("type".into(), toml::Value::String("burn".into()));
        sampler.insert("model".into(), path_value(model));
        for (key, value) in [
            ("temperature", args.temperature),
            ("top_p", args.top_p),
            ("repetition_penalty", args.repetition_penalty),
            ("min_p", args.min_p),
        ] {
            if let Some(v) = value {
                sampler.insert(key.into(), toml::Value::Float(v as f64));
            }
        }
        if let Some(k) = args.top_k {
            sampler.insert(
                "top_k".into(),
                toml::Value::Integer(i64::try_from(k).unwrap_or(i64::MAX)),
            );
        }
        if let Some(g) = &args.generation_config {
            sampler.insert("generation_config".into(), toml::Value::String(g.clone()));
        }
        sampler.insert(
            "max_new_tokens".into(),
            toml::Value::Integer(args.max_new_tokens as i64),
        );
        if let Some(b) = args.batch_size {
            sampler.insert(
                "batch_size".into(),
                toml::Value::Integer(i64::try_from(b).unwrap_or(i64::MAX)),
            );
        }
        if let Some(t) = args.max_batch_tokens {
            sampler.insert(
                "max_batch_tokens".into(),
                toml::Value::Integer(i64::try_from(t).unwrap_or(i64::MAX)),
            );
        }
        if let Some(d) = &args.dtype {
            sampler.insert("dtype".into(), toml::Value::String(d.clone()));
        }
        if let Some(q) = &args.quantize {
            sampler.insert("quantize".into(), toml::Value::String(q.clone()));
        }
        let mut generate = toml::Table::new();
        generate.insert("prompts".into(), path_value(prompts));
        generate.insert("output".into(), path_value(output));
        generate.insert("n".into(), toml::Value::Integer(args.n as i64));
        let mut run = toml::Table::new();
        run.insert("seed".into(), toml::Value::Integer(args.seed as i64));
        flag_recipe([("run", run), ("sampler", sampler), ("generate", generate)])
    })?;
    let ctx = context(&recipe, base);
    let mut recipe = recipe;
    if let (Some(_), Some(o), Some(g)) = (&args.recipe, &args.output, recipe.generate.as_mut()) {
        g.output = Some(std::path::absolute(o).unwrap_or_else(|_| o.clone()));
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
        prompts: ctx.resolve(&gen_cfg.prompts.to_vec()[0]),
        output: ctx.resolve(
            gen_cfg
                .output
                .as_deref()
                .unwrap_or(std::path::Path::new("")),
        ),
        n: gen_cfg.n,
        sampler,
        ctx,
        prompts_per_call: sweetspot_runner::PROMPTS_PER_CALL,
        quiet,
        restart: args.model_flags.restart,
    };
    let s = sweetspot_runner::run_generate(job)?;
    print_generate_summary(&s);
    Ok(())
}

pub(crate) fn print_generate_summary(s: &sweetspot_runner::GenerateSummary) {
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
