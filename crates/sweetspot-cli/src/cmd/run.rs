//! `sweetspot run`: a whole recipe as a graph of stage nodes in its run folder.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use sweetspot_runner::graph::{NodeState, Outcome, RunOptions};

use crate::common::{
    DEVICE_OVERRIDE, base_dir, check_recipe, check_recipe_for_plan, context, load_recipe,
};
use crate::{Failure, ModelFlags};

/// `sweetspot run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The recipe (TOML).
    #[arg(
        required_unless_present = "recipe_flag",
        conflicts_with = "recipe_flag"
    )]
    pub recipe: Option<PathBuf>,
    /// The recipe (TOML), as a flag.
    #[arg(long = "recipe", short = 'r', value_name = "RECIPE")]
    pub recipe_flag: Option<PathBuf>,
    /// Print the expanded graph (every node, its state and size) and run nothing.
    #[arg(long)]
    pub plan: bool,
    /// With `--plan`: print the graph as JSON (ids, stages, labels, input ids, states, sizes)
    /// for tools to read.
    #[arg(long, requires = "plan")]
    pub json: bool,
    /// Compute exactly this node (its id as `--plan` prints it, such as
    /// `train-5c1a514e3bfe94e1`): refused while an input node is not complete, nothing done
    /// when it is complete. For a cluster scheduler running one node per job.
    #[arg(long, value_name = "ID", conflicts_with = "plan")]
    pub node: Option<String>,
    /// Write the plan as a cluster scheduler's job graph instead of running it: `slurm` writes
    /// `<run folder>/slurm/submit.sh` (one `sbatch` job per node that is not complete, each
    /// `--node ID`, with `afterok` dependencies; requests from `[cluster]`); `argo` writes
    /// `<run folder>/argo/workflow.json` (an Argo Workflows DAG of the same, one pod per node).
    #[arg(long, value_name = "SCHEDULER", value_parser = ["slurm", "argo"], conflicts_with_all = ["plan", "node"])]
    pub emit: Option<String>,
    #[command(flatten)]
    pub model: ModelFlags,
}

pub(crate) fn run_cmd(args: RunArgs, quiet: bool) -> Result<(), Failure> {
    let Some(path) = args.recipe.or(args.recipe_flag) else {
        return Err(Failure {
            message: "give the recipe: sweetspot run RECIPE".into(),
            code: 2,
        });
    };
    let _ = DEVICE_OVERRIDE.set(args.model.device.clone());
    let (recipe, text) = load_recipe(&path)?;
    let ctx = context(&recipe, base_dir(&path));
    // The whole recipe is checked before anything runs; `--plan` lists missing inputs instead
    // of refusing them.
    let stages = sweetspot_runner::Stages::all_of(&recipe);
    let missing = if args.plan {
        check_recipe_for_plan(&recipe, &text, &path, &ctx, stages)?
    } else {
        check_recipe(&recipe, &text, &path, &ctx, stages)?;
        Vec::new()
    };
    let mut plan = if missing.is_empty() {
        sweetspot_runner::plan::plan(&recipe, &path, &ctx)?
    } else {
        sweetspot_runner::plan::plan_missing_inputs(&recipe, &path, &ctx)?
    };
    if let Some(d) = &args.model.device {
        plan.devices = vec![d.clone()];
    }
    // The memory plan: a node that cannot fit is refused before the first node runs.
    let memory = sweetspot_runner::memory::plan_memory(&plan, None);
    let first_device = plan
        .devices
        .first()
        .cloned()
        .unwrap_or_else(|| "cpu".into());
    let device_memory = sweetspot_runner::memory::device_memory(&recipe.run, &first_device);
    let fit = sweetspot_runner::memory::check_fit(&plan, &memory, &device_memory, None)
        .map_err(|message| Failure { message, code: 1 });
    if args.plan && args.json {
        let mut json = sweetspot_runner::graph::plan_json(&plan);
        for (node, m) in json["nodes"]
            .as_array_mut()
            .into_iter()
            .flatten()
            .zip(&memory)
        {
            node["memory"] = match m.as_ref().map(|m| &m.estimate) {
                Some(Ok(e)) => serde_json::json!({
                    "peak_bytes": e.total(),
                    "parts": e.parts.iter().map(|p| serde_json::json!({"name": p.name, "bytes": p.bytes})).collect::<Vec<_>>(),
                    "notes": e.notes,
                }),
                Some(Err(why)) => serde_json::json!({"unknown": why}),
                None => serde_json::Value::Null,
            };
        }
        json["device_memory"] = serde_json::json!({
            "bytes": device_memory.bytes,
            "source": device_memory.source,
        });
        json["missing_inputs"] = serde_json::json!(missing);
        let text = serde_json::to_string_pretty(&json).unwrap_or_default();
        println!("{text}");
        return Ok(());
    }
    if args.plan {
        print_plan(&plan, &memory, &device_memory, &missing);
        return fit;
    }
    fit?;
    if let Some(scheduler) = &args.emit {
        let binary = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("sweetspot"));
        let cluster = recipe.cluster.clone().unwrap_or_default();
        if scheduler == "argo" {
            let e = sweetspot_runner::cluster::emit_argo(&plan, &path, &cluster)?;
            println!(
                "{}: {} tasks (submit with: argo submit {})",
                e.script.display(),
                e.jobs,
                e.script.display()
            );
            return Ok(());
        }
        // A CPU job asks for its node's estimated peak (and a quarter more) unless `[cluster]
        // mem` says otherwise.
        let peaks: Vec<Option<u64>> = memory
            .iter()
            .map(|m| {
                m.as_ref()
                    .and_then(|m| m.estimate.as_ref().ok())
                    .map(|e| e.total())
            })
            .collect();
        let e = sweetspot_runner::cluster::emit_slurm(&plan, &path, &cluster, &binary, &peaks)?;
        println!(
            "{}: {} jobs for {} nodes (submit with: bash {})",
            e.script.display(),
            e.jobs,
            e.nodes,
            e.script.display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(&plan.dir).map_err(|e| Failure {
        message: format!("{}: cannot create the run folder: {e}", plan.dir.display()),
        code: 1,
    })?;
    if let Err(e) = crate::logging::log_to(&plan.dir.join("run.log")) {
        tracing::warn!("cannot write {}: {e}", plan.dir.join("run.log").display());
    }
    if let Some(id) = &args.node {
        let Some(i) = plan.nodes.iter().position(|n| &n.id == id) else {
            return Err(Failure {
                message: format!(
                    "no node `{id}` in the plan of {} (`sweetspot run --plan` lists the ids)",
                    path.display()
                ),
                code: 2,
            });
        };
        let device = plan
            .devices
            .first()
            .cloned()
            .unwrap_or_else(|| "cpu".into());
        let what = match sweetspot_runner::graph::run_single(&plan, i, &device, quiet)? {
            sweetspot_runner::graph::Single::AlreadyDone => "complete already: nothing to do",
            sweetspot_runner::graph::Single::Ran => "done",
        };
        println!("{} [{}]: {what}", plan.nodes[i].label, plan.nodes[i].id);
        return Ok(());
    }
    let states = sweetspot_runner::graph::states(&plan);
    let done = states.iter().filter(|s| **s == NodeState::Done).count();
    tracing::info!(
        "run `{}`: {} stages ({done} complete already) in {}, on {}",
        plan.name,
        plan.nodes.len(),
        plan.dir.display(),
        plan.devices.join(", ")
    );
    let report = sweetspot_runner::graph::run_plan(
        &plan,
        &RunOptions {
            quiet,
            restart: args.model.restart,
        },
    )?;
    // The report is derived from the run folder: rebuilt after every run, finished or not.
    let html = match sweetspot_report::write_report(&plan.dir) {
        Ok((path, _)) => Some(path),
        Err(e) => {
            tracing::warn!("report.html not written: {e}");
            None
        }
    };
    print_report(&plan, &report, html.as_deref());
    if report.failed() > 0 {
        return Err(Failure {
            message: failure_summary(&report),
            code: 1,
        });
    }
    Ok(())
}

/// The message of a run with failed stages: the failed stages with their errors, and what became
/// of the others (complete, or not run because a stage they need failed), in words that fit the
/// counts.
pub(crate) fn failure_summary(report: &sweetspot_runner::graph::RunReport) -> String {
    let total = report.nodes.len();
    let mut failed = Vec::new();
    let mut skipped = 0usize;
    for (label, _, o) in &report.nodes {
        match o {
            Outcome::Failed { error } => failed.push((label.as_str(), error.as_str())),
            Outcome::Skipped { .. } => skipped += 1,
            _ => {}
        }
    }
    if let ([(label, error)], 1) = (failed.as_slice(), total) {
        // The run's only stage: its error is the message.
        return format!("stage `{label}` failed: {error}");
    }
    let complete = total - failed.len() - skipped;
    let mut rest = Vec::new();
    match (complete, skipped) {
        (0, _) => {}
        (1, 0) => rest.push("the other is complete".to_string()),
        (_, 0) => rest.push("the others are complete".to_string()),
        (c, _) => rest.push(format!("{c} complete")),
    }
    if skipped > 0 {
        rest.push(format!(
            "{skipped} not run because a stage they need failed"
        ));
    }
    rest.push("a rerun runs only what is missing".to_string());
    let lines: Vec<String> = failed.iter().map(|(l, e)| format!("{l}: {e}")).collect();
    format!(
        "{} of {total} stages failed ({}):\n  {}",
        failed.len(),
        rest.join("; "),
        lines.join("\n  ")
    )
}

fn print_plan(
    plan: &sweetspot_runner::plan::Plan,
    memory: &[Option<sweetspot_runner::memory::NodeMemory>],
    device: &sweetspot_runner::memory::DeviceMemory,
    missing: &[String],
) {
    use sweetspot_runner::memory::human;
    let states = sweetspot_runner::graph::states(plan);
    let sizes = sweetspot_runner::graph::sizes(plan);
    let done = states.iter().filter(|s| **s == NodeState::Done).count();
    let unneeded = states
        .iter()
        .filter(|s| **s == NodeState::NotNeeded)
        .count();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "run `{}` in {}: {} stages, {done} done, {} to run{}; devices: {}",
        plan.name,
        plan.dir.display(),
        plan.nodes.len(),
        plan.nodes.len() - done - unneeded,
        if unneeded > 0 {
            format!(", {unneeded} not needed")
        } else {
            String::new()
        },
        plan.devices.join(", ")
    );
    let width = plan.nodes.iter().map(|n| n.label.len()).max().unwrap_or(5);
    for (i, node) in plan.nodes.iter().enumerate() {
        let state = match states[i] {
            NodeState::Done => "done",
            NodeState::Partial => "resumes",
            NodeState::ToRun => "to run",
            NodeState::NotNeeded => "unneeded",
        };
        let after: Vec<&str> = node
            .deps
            .iter()
            .map(|&d| plan.nodes[d].label.as_str())
            .collect();
        let after = if after.is_empty() {
            String::new()
        } else {
            format!("  <- {}", after.join(", "))
        };
        let peak = match memory.get(i).and_then(Option::as_ref).map(|m| &m.estimate) {
            Some(Ok(e)) => format!("peak {}", human(e.total())),
            Some(Err(_)) => "peak unknown".to_string(),
            None => "peak -".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:width$}  {:8}  {:15}  {}  [{}]{after}",
            node.label, state, peak, sizes[i], node.id
        );
    }
    if !missing.is_empty() {
        let _ = writeln!(
            out,
            "missing inputs (`validate` and `run` refuse the recipe until they exist):"
        );
        for m in missing {
            let _ = writeln!(out, "  {m}");
        }
    }
    let _ = writeln!(
        out,
        "memory: device {}: {}",
        plan.devices.first().map_or("cpu", String::as_str),
        match device.bytes {
            Some(b) => format!("{} ({})", human(b), device.source),
            None => device.source.clone(),
        }
    );
    // Nodes with the same estimate are listed together, each estimate once, parts and all.
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for (i, m) in memory.iter().enumerate() {
        let Some(m) = m else { continue };
        let text = match &m.estimate {
            Ok(e) => {
                let fits = match device.bytes {
                    Some(b) if e.total() > b => "  DOES NOT FIT",
                    Some(_) => "  fits",
                    None => "",
                };
                let mut t = format!("{}{fits}", human(e.total()));
                for p in &e.parts {
                    t.push_str(&format!("\n      {}: {}", p.name, human(p.bytes)));
                }
                for n in &e.notes {
                    t.push_str(&format!("\n      ({n})"));
                }
                t
            }
            Err(why) => format!("unknown: {why}"),
        };
        match groups.iter_mut().find(|g| g.0 == text) {
            Some(g) => g.1.push(plan.nodes[i].label.as_str()),
            None => groups.push((text, vec![plan.nodes[i].label.as_str()])),
        }
    }
    for (text, labels) in groups {
        let who = match labels.as_slice() {
            [one] => format!("`{one}`"),
            many => format!("`{}` and {} more", many[0], many.len() - 1),
        };
        let _ = writeln!(out, "  peak of {who}: {text}");
    }
}

fn print_report(
    plan: &sweetspot_runner::plan::Plan,
    report: &sweetspot_runner::graph::RunReport,
    html: Option<&std::path::Path>,
) {
    let mut out = std::io::stdout().lock();
    let width = report.nodes.iter().map(|n| n.0.len()).max().unwrap_or(5);
    let (mut ran, mut reused, mut unneeded) = (0, 0, 0);
    for (label, _, outcome) in &report.nodes {
        let what = match outcome {
            Outcome::Reused => {
                reused += 1;
                "reused (complete)".to_string()
            }
            Outcome::NotNeeded => {
                unneeded += 1;
                "not needed (every node reading it is complete)".to_string()
            }
            Outcome::Ran { seconds } => {
                ran += 1;
                format!("ran in {seconds:.1}s")
            }
            Outcome::Failed { error } => format!("FAILED: {error}"),
            Outcome::Skipped { because } => format!("skipped: `{because}` failed"),
        };
        let _ = writeln!(out, "  {label:width$}  {what}");
    }
    let unneeded = if unneeded > 0 {
        format!(", {unneeded} not needed")
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "run `{}`: {ran} stages ran, {reused} reused{unneeded}, in {:.1}s",
        plan.name, report.seconds
    );
    let dir = plan.dir.display();
    let has = |p: &str| plan.dir.join(p).exists();
    let _ = writeln!(
        out,
        "run folder: {dir} (index: {dir}/run.json, log: {dir}/run.log)"
    );
    let prefix = if plan.rounds > 1 {
        format!("round{}/", plan.rounds)
    } else {
        String::new()
    };
    print_eval(plan, &mut out);
    if let Some(h) = html {
        let _ = writeln!(out, "  {:16} {}", "report", h.display());
    }
    for (what, sub) in [
        ("eval table", "eval.json"),
        ("eval outputs", "eval"),
        ("samples", "samples.jsonl"),
        ("scored samples", "scored.jsonl"),
        ("pairs", "pairs"),
        ("policies", "policies"),
        ("training metrics", "metrics"),
    ] {
        let rel = format!("{prefix}{sub}");
        if has(&rel) {
            let _ = writeln!(out, "  {what:16} {dir}/{rel}");
        }
    }
}

/// The eval table, when the run has a complete eval stage.
fn print_eval(plan: &sweetspot_runner::plan::Plan, out: &mut impl Write) {
    let Some(i) = plan
        .nodes
        .iter()
        .position(|n| n.stage == sweetspot_runner::plan::StageKind::Eval)
    else {
        return;
    };
    let Ok(text) = std::fs::read_to_string(plan.node_dir(i).join("eval.json")) else {
        return;
    };
    let Ok(rows) = serde_json::from_str::<Vec<serde_json::Value>>(&text) else {
        return;
    };
    let width = rows
        .iter()
        .filter_map(|r| r["policy"].as_str().map(str::len))
        .max()
        .unwrap_or(6)
        .max(6);
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let ci = |v: &serde_json::Value| format!("[{:5.1}, {:5.1}]", f(&v[0]), f(&v[1]));
    let _ = writeln!(
        out,
        "eval against the starting policy ({} prompts; 95% bootstrap intervals):",
        rows.first()
            .map_or(0, |r| r["prompts"].as_u64().unwrap_or(0))
    );
    let judged = rows.iter().any(|r| r.get("judge").is_some());
    let _ = writeln!(
        out,
        "  {:width$}  {:>8}  {:>7}  {:>6}  {:14}  {:>6}  {:14}{}",
        "policy",
        "reward",
        "length",
        "win %",
        "",
        "LC %",
        "",
        if judged { "  judge %  judge LC %" } else { "" }
    );
    for r in &rows {
        let judge = match r.get("judge") {
            Some(j) => format!("  {:7.1}  {:10.1}", f(&j["win_rate"]), f(&j["lc_win_rate"])),
            None if judged => format!("  {:>7}  {:>10}", "-", "-"),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "  {:width$}  {:8.4}  {:7.1}  {:6.1}  {:14}  {:6.1}  {:14}{judge}",
            r["policy"].as_str().unwrap_or(""),
            f(&r["mean_reward"]),
            f(&r["mean_length"]),
            f(&r["win_rate"]),
            ci(&r["win_rate_ci"]),
            f(&r["lc_win_rate"]),
            ci(&r["lc_win_rate_ci"]),
        );
    }
}
