//! Running a [`Plan`]: nodes in dependency order, independent ones at once on a pool of
//! devices, complete ones skipped; the run folder's index kept current.
//!
//! Invariants:
//! - A node's outputs live in `nodes/<stage>-<hash>/`; it is complete exactly when its
//!   `done.json` exists and names its hash. `done.json` is written last, atomically, after the
//!   stage's own outputs are whole; a node killed before that is resumed (or redone) by the
//!   stage itself on the next run, from its own partial files.
//! - A node never writes into another node's folder; everything outside `nodes/` (`run.json`,
//!   the readable names, `run.log`) is derived from the nodes and rewritten as they finish.
//! - A failed node is reported; the nodes below it are skipped; every other node still runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sweetspot_core::recipe::TrainConfig;
use sweetspot_core::{BuildContext, SamplerConfig};

use crate::error::RunError;
use crate::identity::Identity;
use crate::plan::{Plan, Source, StageKind, Work};
use crate::progress::BarProgress;

/// The record of a complete node (`done.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    /// The node's folder name.
    pub node: String,
    /// `generate`, `score`, `pairs` or `train`.
    pub stage: String,
    /// Its readable name.
    pub label: String,
    /// 1-based round.
    pub round: usize,
    /// The full hash.
    pub hash: String,
    /// What the hash covers: resolved settings and input hashes.
    pub identity: Identity,
    /// Counts (prompts, samples, pairs per dataset, steps).
    pub counts: BTreeMap<String, u64>,
    /// Wall time of the run that made it, seconds (0 when an earlier run had made it whole).
    pub seconds: f64,
    /// The device it ran on.
    pub device: String,
    /// When it was finished (seconds since the Unix epoch).
    pub finished_at: u64,
    /// The sweetspot version.
    pub version: String,
}

/// The state of a node before a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Complete: its `done.json` is there.
    Done,
    /// Started by an earlier run that stopped: it resumes.
    Partial,
    /// Not started.
    ToRun,
    /// Not complete, and not needed: every node that reads it is complete (a reference node
    /// added to a run folder whose trainings were done before it existed).
    NotNeeded,
}

/// What happened to a node in a run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Outcome {
    /// Complete before this run: reused.
    Reused,
    /// Not run, and not needed: every node that reads it was complete.
    NotNeeded,
    /// Run now.
    Ran {
        /// Seconds.
        seconds: f64,
    },
    /// Failed.
    Failed {
        /// Why.
        error: String,
    },
    /// Not run: an input node failed.
    Skipped {
        /// The failed input.
        because: String,
    },
}

/// Options of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Hide progress bars.
    pub quiet: bool,
    /// Discard complete and partial nodes of this plan and make them again.
    pub restart: bool,
}

/// The result of [`run_plan`].
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The run folder.
    pub dir: PathBuf,
    /// Per node, in plan order: (label, node id, outcome).
    pub nodes: Vec<(String, String, Outcome)>,
    /// Seconds.
    pub seconds: f64,
}

impl RunReport {
    /// Nodes that failed.
    pub fn failed(&self) -> usize {
        self.nodes
            .iter()
            .filter(|(_, _, o)| matches!(o, Outcome::Failed { .. }))
            .count()
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> RunError + '_ {
    move |source| {
        RunError::Write(sweetspot_io::WriteError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The `done.json` of node `i`, when it is complete.
pub fn done_record(plan: &Plan, i: usize) -> Option<Done> {
    let bytes = std::fs::read(plan.node_dir(i).join("done.json")).ok()?;
    let done: Done = serde_json::from_slice(&bytes).ok()?;
    (done.hash == plan.nodes[i].hash).then_some(done)
}

/// Each node's state, from the run folder.
pub fn states(plan: &Plan) -> Vec<NodeState> {
    let mut st: Vec<NodeState> = (0..plan.nodes.len())
        .map(|i| {
            if done_record(plan, i).is_some() {
                NodeState::Done
            } else if plan.node_dir(i).exists() {
                NodeState::Partial
            } else {
                NodeState::ToRun
            }
        })
        .collect();
    for i in 0..st.len() {
        if st[i] != NodeState::Done && not_needed(plan, i, &st) {
            st[i] = NodeState::NotNeeded;
        }
    }
    st
}

/// Whether node `i` need not run: it is a reference node (only trainings read it, and they
/// compute without it when they are complete) and every node reading it is done.
fn not_needed(plan: &Plan, i: usize, st: &[NodeState]) -> bool {
    let mut readers = plan
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.deps.contains(&i))
        .peekable();
    plan.nodes[i].stage == StageKind::Reference
        && readers.peek().is_some()
        && readers.all(|(j, _)| st[j] == NodeState::Done)
}

/// The size of each node, in words, for `--plan`: prompts, samples, pairs, optimizer steps
/// (exact once upstream nodes are done, else an upper bound marked `<=`).
pub fn sizes(plan: &Plan) -> Vec<String> {
    let mut groups: Vec<Option<(u64, bool)>> = vec![None; plan.nodes.len()];
    let mut out = Vec::new();
    let count_lines = |p: &Path| -> Option<u64> {
        let text = std::fs::read_to_string(p).ok()?;
        Some(text.lines().filter(|l| !l.trim().is_empty()).count() as u64)
    };
    for (i, node) in plan.nodes.iter().enumerate() {
        let done = done_record(plan, i);
        let text = match &node.work {
            Work::Generate { prompts, n, .. } => match count_lines(prompts) {
                Some(p) => {
                    groups[i] = Some((p, true));
                    format!("{p} prompts x {n} = {} samples", p * *n as u64)
                }
                None => format!("prompts unknown (not readable yet) x {n} samples"),
            },
            Work::Score { input, .. } => match input {
                Source::Node(u, _) => {
                    groups[i] = groups[*u];
                    let n = match &plan.nodes[*u].work {
                        Work::Generate { n, .. } => *n as u64,
                        _ => 0,
                    };
                    match groups[*u] {
                        Some(g) => format!("{} samples", g.0 * n),
                        None => "samples unknown (prompts unknown)".to_string(),
                    }
                }
                Source::File(f) => {
                    let rows = count_lines(f).unwrap_or(0);
                    format!("{rows} samples ({})", f.display())
                }
            },
            Work::Pairs { input, .. } => {
                if let Source::Node(u, _) = input {
                    groups[i] = groups[*u];
                }
                let datasets = plan.datasets.len();
                match done.as_ref().and_then(|d| d.counts.get("groups")) {
                    Some(g) => format!("{g} prompts, {datasets} datasets"),
                    None => match groups[i] {
                        Some((g, _)) => format!("<= {g} pairs in each of {datasets} datasets"),
                        None => format!("{datasets} datasets"),
                    },
                }
            }
            Work::Eval { policies, .. } => {
                format!("{} policies against the base", policies.len())
            }
            Work::Compose { .. } => "both orders of each prompt's two responses".to_string(),
            Work::Train { pairs, config, .. } => {
                let batch = config.batch_size.max(1) as u64;
                let epochs = config.epochs as u64;
                let known = match pairs {
                    Source::Node(u, rel) => done_record(plan, *u).and_then(|d| {
                        let file = rel.rsplit('/').next().unwrap_or(rel);
                        let name = file.rsplit_once('.').map_or(file, |(s, _)| s);
                        d.counts.get(&format!("pairs.{name}")).copied()
                    }),
                    Source::File(f) => count_lines(f),
                };
                let bound = match pairs {
                    Source::Node(u, _) => groups[*u].map(|g| g.0),
                    Source::File(_) => None,
                };
                match (known, bound) {
                    (Some(p), _) => {
                        format!("{p} pairs, {} steps", p.div_ceil(batch) * epochs)
                    }
                    (None, Some(b)) => {
                        format!("<= {b} pairs, <= {} steps", b.div_ceil(batch) * epochs)
                    }
                    (None, None) => String::new(),
                }
            }
            Work::Reference {
                pairs, per_prompt, ..
            } => {
                let d = done.as_ref().map(|d| &d.counts);
                match (
                    d.and_then(|c| c.get("distinct")),
                    d.and_then(|c| c.get("sequences")),
                ) {
                    (Some(distinct), Some(all)) => format!(
                        "{distinct} distinct sequences, computed once for {all} of {} datasets",
                        pairs.len()
                    ),
                    _ => match per_prompt {
                        Some((distinct, all)) => format!(
                            "{distinct} responses per prompt instead of {all}, for {} datasets",
                            pairs.len()
                        ),
                        None => format!("distinct responses of {} datasets", pairs.len()),
                    },
                }
            }
        };
        out.push(text);
    }
    out
}

/// Runs the plan: every node that is not complete, in dependency order, up to one at a time per
/// device. Writes `run.json` and the readable names as nodes finish.
pub fn run_plan(plan: &Plan, opts: &RunOptions) -> Result<RunReport, RunError> {
    let start = Instant::now();
    std::fs::create_dir_all(plan.dir.join("nodes")).map_err(io_err(&plan.dir))?;
    if opts.restart {
        for i in 0..plan.nodes.len() {
            let dir = plan.node_dir(i);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
            }
        }
    }
    let total = plan.nodes.len();
    let overall = BarProgress::new("run", "nodes", opts.quiet);
    sweetspot_core::Progress::set_total(&overall, Some(total as u64));
    let outcomes: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; total]);
    let running: Mutex<Vec<bool>> = Mutex::new(vec![false; total]);
    let wake = Condvar::new();
    // Complete nodes first: they need no device.
    {
        let mut o = outcomes.lock().unwrap_or_else(|e| e.into_inner());
        for (slot, state) in o.iter_mut().zip(states(plan)) {
            let outcome = match state {
                NodeState::Done => Outcome::Reused,
                NodeState::NotNeeded => Outcome::NotNeeded,
                NodeState::Partial | NodeState::ToRun => continue,
            };
            *slot = Some(outcome);
            sweetspot_core::Progress::advance(&overall, 1);
        }
    }
    write_index(plan)?;
    // A node that spans several GPUs (a TRL training under an accelerate config with
    // `num_processes` > 1, each process a GPU of the machine; a native training with
    // `[train] devices`) runs alone.
    let exclusive: Vec<bool> = plan
        .nodes
        .iter()
        .map(|n| match &n.work {
            crate::plan::Work::Train { config, .. } => {
                config.devices.is_some()
                    || matches!(crate::memory::trl_accelerate(plan, config), Ok(Some(a)) if a.processes > 1)
            }
            _ => false,
        })
        .collect();
    let exclusive = &exclusive;
    let index_lock = Mutex::new(());
    std::thread::scope(|scope| {
        for device in &plan.devices {
            let (outcomes, running, wake, overall, index_lock) =
                (&outcomes, &running, &wake, &overall, &index_lock);
            scope.spawn(move || {
                loop {
                    // Take the first node whose inputs are complete.
                    let next = {
                        let mut o = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            let mut r = running.lock().unwrap_or_else(|e| e.into_inner());
                            // Skip the nodes below a failure.
                            for i in 0..total {
                                if o[i].is_some() || r[i] {
                                    continue;
                                }
                                if let Some(&d) = plan.nodes[i].deps.iter().find(|&&d| {
                                    matches!(
                                        o[d],
                                        Some(Outcome::Failed { .. } | Outcome::Skipped { .. })
                                    )
                                }) {
                                    o[i] = Some(Outcome::Skipped {
                                        because: plan.nodes[d].label.clone(),
                                    });
                                    sweetspot_core::Progress::advance(overall, 1);
                                }
                            }
                            let busy = r.iter().any(|&x| x);
                            let alone = (0..total).any(|i| r[i] && exclusive[i]);
                            let ready = (0..total).filter(|_| !alone).find(|&i| {
                                o[i].is_none()
                                    && !r[i]
                                    && (!exclusive[i] || !busy)
                                    && plan.nodes[i].deps.iter().all(|&d| {
                                        matches!(o[d], Some(Outcome::Reused | Outcome::Ran { .. }))
                                    })
                            });
                            if let Some(i) = ready {
                                r[i] = true;
                                break Some(i);
                            }
                            if o.iter().all(Option::is_some) {
                                break None;
                            }
                            drop(r);
                            o = wake.wait(o).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    let Some(i) = next else {
                        wake.notify_all();
                        return;
                    };
                    let node = &plan.nodes[i];
                    tracing::info!("{}: starting on {device} ({})", node.label, node.id);
                    sweetspot_core::Progress::message(overall, &node.label);
                    let t = Instant::now();
                    let result = run_node(plan, i, device, opts.quiet);
                    let outcome = match result {
                        Ok(()) => {
                            let seconds = t.elapsed().as_secs_f64();
                            tracing::info!("{}: done in {seconds:.1}s", node.label);
                            Outcome::Ran { seconds }
                        }
                        Err(e) => {
                            // Reported in the run's summary and its error; logged for run.log.
                            tracing::info!("{}: failed: {e}", node.label);
                            Outcome::Failed {
                                error: e.to_string(),
                            }
                        }
                    };
                    {
                        let _g = index_lock.lock().unwrap_or_else(|e| e.into_inner());
                        if let Err(e) = write_index(plan) {
                            tracing::warn!("could not update the run folder's index: {e}");
                        }
                    }
                    let mut o = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                    o[i] = Some(outcome);
                    running.lock().unwrap_or_else(|e| e.into_inner())[i] = false;
                    sweetspot_core::Progress::advance(overall, 1);
                    drop(o);
                    wake.notify_all();
                }
            });
        }
    });
    overall.finish();
    write_index(plan)?;
    let outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(RunReport {
        dir: plan.dir.clone(),
        nodes: plan
            .nodes
            .iter()
            .zip(outcomes)
            .map(|(n, o)| {
                (
                    n.label.clone(),
                    n.id.clone(),
                    o.unwrap_or(Outcome::Skipped {
                        because: "not reached".into(),
                    }),
                )
            })
            .collect(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The plan as JSON for tools (`run --plan --json`): the run's name, folder and devices, and per
/// node its id, stage, label, round, input ids, state, size in words and the GPUs a cluster job
/// of it holds.
pub fn plan_json(plan: &Plan) -> serde_json::Value {
    let st = states(plan);
    let sizes = sizes(plan);
    let nodes: Vec<serde_json::Value> = plan
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            serde_json::json!({
                "id": n.id,
                "stage": n.stage.name(),
                "label": n.label,
                "round": n.round,
                "inputs": n.deps.iter().map(|&d| plan.nodes[d].id.as_str()).collect::<Vec<_>>(),
                "state": st[i],
                "size": sizes[i],
                "policy": n.policy_name,
                "dataset": n.dataset,
                "n": n.n,
                "gpus": crate::cluster::gpus(plan, i),
            })
        })
        .collect();
    serde_json::json!({
        "name": plan.name,
        "dir": plan.dir,
        "devices": plan.devices,
        "nodes": nodes,
    })
}

/// What [`run_single`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Single {
    /// The node was complete already: nothing ran.
    AlreadyDone,
    /// It ran (or resumed) to completion.
    Ran,
}

/// Runs exactly node `i` of the plan (`sweetspot run --node`), as a cluster scheduler's job
/// does: refused while an upstream node is not complete; nothing runs when the node is complete
/// (a scheduler's retry is safe). Updates `run.json` and the readable names afterwards.
pub fn run_single(plan: &Plan, i: usize, device: &str, quiet: bool) -> Result<Single, RunError> {
    std::fs::create_dir_all(plan.dir.join("nodes")).map_err(io_err(&plan.dir))?;
    if done_record(plan, i).is_some() {
        write_index(plan)?;
        return Ok(Single::AlreadyDone);
    }
    let missing: Vec<&str> = plan.nodes[i]
        .deps
        .iter()
        .filter(|&&d| done_record(plan, d).is_none())
        .map(|&d| plan.nodes[d].id.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(RunError::Config(format!(
            "{} ({}): its input nodes are not complete yet: {} (run them first: `--node ID` \
             each, or the whole recipe)",
            plan.nodes[i].label,
            plan.nodes[i].id,
            missing.join(", ")
        )));
    }
    run_node(plan, i, device, quiet)?;
    write_index(plan)?;
    Ok(Single::Ran)
}

/// Runs node `i` on `device` (resuming its own partial work) and writes its `done.json`.
fn run_node(plan: &Plan, i: usize, device: &str, quiet: bool) -> Result<(), RunError> {
    let node = &plan.nodes[i];
    let dir = plan.node_dir(i);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    // One process per node at a time (two scheduler jobs given the same node by mistake, or a
    // whole run beside a `--node` job): the lock goes with the process, so a killed holder
    // frees it.
    let lock_path = dir.join(".lock");
    let lock = std::fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(RunError::Config(format!(
                "{}: another process is computing this node ({} is locked)",
                node.label,
                lock_path.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
    }
    if done_record(plan, i).is_some() {
        // Completed by the process that held the lock.
        return Ok(());
    }
    for d in [dir.clone(), dir.join("pairs")] {
        sweetspot_io::remove_stale_temp_files(&d);
    }
    let ctx = BuildContext {
        device: device.to_string(),
        base_dir: plan.base_dir.clone(),
        seed: node.seed,
        device_memory: plan.device_memory,
    };
    let start = Instant::now();
    let counts = match &node.work {
        Work::Generate {
            prompts,
            n,
            sampler,
            model,
        } => run_generate_node(
            plan,
            i,
            (prompts, *n),
            sampler.as_ref(),
            model.as_ref(),
            ctx,
            quiet,
        )?,
        Work::Score {
            input,
            reward,
            groups_per_call,
        } => {
            let s = crate::run_score(crate::ScoreJob {
                input: plan.source_path(input),
                output: dir.join(StageKind::Score.product()),
                reward: reward.clone(),
                ctx,
                groups_per_call: *groups_per_call,
                quiet,
                restart: false,
            })?;
            counts([("groups", s.groups as u64), ("samples", s.samples as u64)])
        }
        Work::Pairs {
            input,
            rewards,
            config,
        } => {
            let out = dir.join(StageKind::Pairs.product());
            let input = Some(plan.source_path(input));
            let mut job = crate::PairsJob::from_config((**config).clone(), input, Some(out), ctx)?;
            job.rewards = rewards
                .iter()
                .map(|(name, s)| (name.clone(), plan.source_path(s)))
                .collect();
            if !job.rewards.is_empty() {
                job.input = job.rewards[0].1.clone();
            }
            job.quiet = quiet;
            job.paths_relative_to = Some(plan.dir.clone());
            let s = crate::run_pairs(job)?;
            let mut c = counts([("groups", s.groups), ("samples", s.samples)]);
            for d in &s.datasets {
                c.insert(format!("pairs.{}", d.name), d.pairs);
            }
            c
        }
        Work::Compose { policy, baseline } => {
            let scored = |i: usize| plan.node_dir(i).join(StageKind::Score.product());
            let n = crate::eval::compose_pairs(
                &scored(*policy),
                &scored(*baseline),
                &dir.join(StageKind::Generate.product()),
            )?;
            counts([("prompts", n as u64), ("samples", 2 * n as u64)])
        }
        Work::Eval { .. } => run_eval_node(plan, i)?,
        Work::Reference {
            policy,
            pairs,
            config,
            ..
        } => {
            let device = sweetspot_model::resolve_device(&ctx.device)
                .map_err(|e| RunError::Train(sweetspot_train::TrainError::Model(e)))?;
            let settings = sweetspot_train::reference::ReferenceSettings {
                policy: plan.source_path(policy),
                pairs: pairs.iter().map(|p| plan.source_path(p)).collect(),
                output: dir.join(StageKind::Reference.product()),
                device,
                dtype: config.dtype,
                micro_batch_size: config.micro_batch_size.min(config.batch_size),
                gradient_checkpointing: config.gradient_checkpointing,
                adapter: config.adapter.clone(),
            };
            let bar = crate::progress::BarProgress::new("reference", "sequences", quiet);
            let c = sweetspot_train::reference::compute_reference(&settings, &bar)?;
            bar.finish();
            counts([
                ("sequences", c.requested as u64),
                ("distinct", c.distinct as u64),
                ("computed", c.computed as u64),
            ])
        }
        Work::Train {
            pairs,
            policy,
            config,
            reference,
        } => {
            let cfg = TrainConfig {
                pairs: Some(plan.source_path(pairs)),
                policy: Some(plan.source_path(policy)),
                output: Some(dir.join(StageKind::Train.product())),
                ..(**config).clone()
            };
            let reference = match reference {
                Some(r) => crate::train::Reference::Shared(
                    plan.node_dir(*r).join(StageKind::Reference.product()),
                ),
                None => crate::train::Reference::Cache(dir.join("reference-cache")),
            };
            let s = crate::train::run_train_with(cfg, &ctx, quiet, false, reference)?;
            if s.policy.is_none() {
                return Err(RunError::Config(format!(
                    "{}: training stopped before its last step",
                    node.label
                )));
            }
            counts([("steps", s.total_steps as u64)])
        }
    };
    let done = Done {
        node: node.id.clone(),
        stage: node.stage.name().into(),
        label: node.label.clone(),
        round: node.round,
        hash: node.hash.clone(),
        identity: node.identity.clone(),
        counts,
        seconds: start.elapsed().as_secs_f64(),
        device: device.to_string(),
        finished_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    // Copies the recipe asked for, before the node counts as complete (a copy killed halfway is
    // made again).
    for (_, target) in plan.publish.iter().filter(|(n, _)| *n == i) {
        publish(plan, i, target)?;
    }
    let text = serde_json::to_vec_pretty(&done).unwrap_or_default();
    sweetspot_io::write_atomic(&dir.join("done.json"), &text)?;
    Ok(())
}

/// A node's counts, from (name, count) pairs.
fn counts<const N: usize>(items: [(&str, u64); N]) -> BTreeMap<String, u64> {
    items.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Runs generate node `i`: the sampler loading `model` (a policy of this run) when given.
fn run_generate_node(
    plan: &Plan,
    i: usize,
    (prompts, n): (&PathBuf, usize),
    sampler: &(dyn SamplerConfig + 'static),
    model: Option<&Source>,
    ctx: BuildContext,
    quiet: bool,
) -> Result<BTreeMap<String, u64>, RunError> {
    let sampler = match model {
        Some(m) => sampler.with_policy(&plan.source_path(m)).ok_or_else(|| {
            RunError::Config(format!(
                "{}: the `{}` sampler loads no local model",
                plan.nodes[i].label,
                sampler.plugin_type()
            ))
        })?,
        None => dyn_clone::clone_box(sampler),
    };
    let s = crate::run_generate(crate::GenerateJob {
        prompts: prompts.clone(),
        output: plan.node_dir(i).join(StageKind::Generate.product()),
        n,
        sampler,
        ctx,
        prompts_per_call: crate::generate::PROMPTS_PER_CALL,
        quiet,
        restart: false,
    })?;
    Ok(counts([
        ("prompts", s.prompts as u64),
        ("samples", s.samples as u64),
    ]))
}

/// Runs the eval node `i`: every policy's scored responses against the baseline's, with the
/// judge's verdicts where there is a judge; writes `eval.json` and AlpacaEval's layout.
fn run_eval_node(plan: &Plan, i: usize) -> Result<BTreeMap<String, u64>, RunError> {
    let (node, dir) = (&plan.nodes[i], plan.node_dir(i));
    let Work::Eval {
        baseline,
        policies,
        judged,
        bootstrap,
    } = &node.work
    else {
        return Err(RunError::Config(format!(
            "{}: not an eval node",
            node.label
        )));
    };
    let (baseline, bootstrap) = (*baseline, *bootstrap);
    let scored = |i: usize| plan.node_dir(i).join(StageKind::Score.product());
    let base = crate::eval::read_responses(&scored(baseline))?;
    let mut all = vec![("base".to_string(), base.clone())];
    for (name, i) in policies {
        all.push((name.clone(), crate::eval::read_responses(&scored(*i))?));
    }
    let mut table = crate::eval::compare(&all, bootstrap, node.seed)?;
    for (name, i) in judged {
        let verdicts = crate::eval::read_judged(&scored(*i))?;
        if let Some(row) = table.iter_mut().find(|r| &r.policy == name) {
            let policy = &all.iter().find(|a| &a.0 == name).map(|a| &a.1);
            row.judge = Some(crate::eval::judged_win_rate(
                &verdicts,
                policy.map_or(&[][..], |p| p.as_slice()),
                &base,
                bootstrap,
                node.seed,
            )?);
        }
    }
    for (name, responses) in &all {
        let file = dir
            .join("model_outputs")
            .join(name)
            .join("model_outputs.json");
        crate::eval::write_model_outputs(&file, &plan.name, name, responses)?;
    }
    let text = serde_json::to_vec_pretty(&table).unwrap_or_default();
    sweetspot_io::write_atomic(&dir.join(StageKind::Eval.product()), &text)?;
    Ok(counts([
        ("policies", policies.len() as u64),
        ("prompts", all[0].1.len() as u64),
    ]))
}

/// Where a node's product is inside its folder: the file, or the folder of files.
fn product(plan: &Plan, i: usize) -> PathBuf {
    plan.node_dir(i).join(plan.nodes[i].stage.product())
}

/// Copies node `i`'s product to a path the recipe named (`output`), file by file through
/// temporary files and renames.
fn publish(plan: &Plan, i: usize, target: &Path) -> Result<(), RunError> {
    let from = product(plan, i);
    let copy = |src: &Path, dst: &Path| -> Result<(), RunError> {
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let bytes = std::fs::read(src).map_err(io_err(src))?;
        sweetspot_io::write_atomic(dst, &bytes)?;
        Ok(())
    };
    match plan.nodes[i].stage {
        StageKind::Generate | StageKind::Score | StageKind::Eval | StageKind::Reference => {
            copy(&from, target)
        }
        StageKind::Pairs => {
            let single = target
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "jsonl" || e == "parquet");
            if single {
                let name = plan.datasets.first().cloned().unwrap_or_default();
                return copy(&from.join(format!("{name}.{}", plan.pairs_ext)), target);
            }
            for entry in std::fs::read_dir(&from).map_err(io_err(&from))?.flatten() {
                copy(&entry.path(), &target.join(entry.file_name()))?;
            }
            Ok(())
        }
        StageKind::Train => {
            let metrics = from.join("metrics.jsonl");
            if metrics.exists() {
                copy(&metrics, &target.join("metrics.jsonl"))?;
            }
            let tmp = target.join("policy.tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            let src = from.join("policy");
            for entry in std::fs::read_dir(&src).map_err(io_err(&src))?.flatten() {
                copy(&entry.path(), &tmp.join(entry.file_name()))?;
            }
            let dst = target.join("policy");
            let _ = std::fs::remove_dir_all(&dst);
            std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
            Ok(())
        }
    }
}

/// The readable names of the run folder: (name relative to the run folder, node, path inside
/// the node's folder).
fn readable_names(plan: &Plan) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    for (i, node) in plan.nodes.iter().enumerate() {
        for (name, inner) in node.readable_names(plan.rounds) {
            out.push((name, i, inner));
        }
    }
    out
}

/// One node in `run.json`.
#[derive(Debug, Serialize)]
struct IndexNode<'a> {
    id: &'a str,
    stage: &'a str,
    label: &'a str,
    round: usize,
    state: NodeState,
    inputs: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dataset: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    done: Option<Done>,
}

/// Rewrites `run.json` and the readable names (symbolic links into `nodes/`, for complete
/// nodes only).
pub fn write_index(plan: &Plan) -> Result<(), RunError> {
    let st = states(plan);
    let nodes: Vec<IndexNode<'_>> = plan
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| IndexNode {
            id: &n.id,
            stage: n.stage.name(),
            label: &n.label,
            round: n.round,
            state: st[i],
            inputs: n.deps.iter().map(|&d| plan.nodes[d].id.as_str()).collect(),
            n: n.n,
            dataset: n.dataset.as_deref(),
            policy: n.policy_name.as_deref(),
            done: done_record(plan, i),
        })
        .collect();
    let mut names = BTreeMap::new();
    for (name, i, inner) in readable_names(plan) {
        if st[i] != NodeState::Done {
            continue;
        }
        let target = Path::new("nodes").join(&plan.nodes[i].id).join(&inner);
        names.insert(name.clone(), target.to_string_lossy().into_owned());
        link(&plan.dir, &name, &target)?;
        if let Some(parent) = plan.dir.join(&name).parent() {
            sweetspot_io::remove_stale_temp_files(parent);
        }
    }
    let index = serde_json::json!({
        "name": plan.name,
        "rounds": plan.rounds,
        "devices": plan.devices,
        "datasets": plan.datasets,
        "names": names,
        "nodes": nodes,
        "version": env!("CARGO_PKG_VERSION"),
    });
    let text = serde_json::to_vec_pretty(&index).unwrap_or_default();
    sweetspot_io::write_atomic(&plan.dir.join("run.json"), &text)?;
    Ok(())
}

/// `dir/name` -> `dir/target` as a relative symbolic link, replaced atomically.
fn link(dir: &Path, name: &str, target: &Path) -> Result<(), RunError> {
    let at = dir.join(name);
    let parent = at.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let depth = Path::new(name).components().count() - 1;
    let mut rel = PathBuf::new();
    for _ in 0..depth {
        rel.push("..");
    }
    rel.push(target);
    if std::fs::read_link(&at).is_ok_and(|t| t == rel) {
        return Ok(());
    }
    #[cfg(unix)]
    {
        let tmp = parent.join(format!(".sweetspot-{}-link.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&rel, &tmp).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &at).map_err(io_err(&at))?;
    }
    #[cfg(not(unix))]
    {
        let _ = rel;
    }
    Ok(())
}
