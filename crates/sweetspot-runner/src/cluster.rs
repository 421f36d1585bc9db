//! A plan as a cluster scheduler's job graph (`sweetspot run --emit slurm`): one job per node
//! that is not complete, each running `sweetspot run RECIPE --node ID`, ordered by the
//! scheduler's own dependencies. Nothing here schedules: Slurm does.
//!
//! Invariants:
//! - A job's dependencies are exactly its node's input nodes that are not complete (a complete
//!   input needs no job); a job never starts before them (`afterok`).
//! - Each job's memory is `[cluster] mem`, else for a CPU job the plan's estimated peak plus a
//!   quarter (a GPU job's estimate is GPU memory, which `--gres` requests whole).
//! - Sibling nodes (same stage, same inputs, same requests: the trainings of one pairs set) are
//!   one job array; a job that reads one of them depends on that task alone (`<array>_<task>`).
//! - The emitted files are plain shell and hold no absolute path but the binary's (`[cluster]
//!   sweetspot`, else this binary's path): the recipe is named relative to the script's own
//!   folder, so a run folder moved or mounted elsewhere (with its recipe beside it as before)
//!   submits as it did.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sweetspot_core::recipe::ClusterConfig;

use crate::error::RunError;
use crate::graph::{NodeState, states};
use crate::paths::{relative_to, resolved};
use crate::plan::{Plan, StageKind};

/// What `--emit slurm` wrote.
#[derive(Debug, Clone)]
pub struct Emitted {
    /// The submit script (run it on the cluster's login node).
    pub script: PathBuf,
    /// Jobs it submits (an array counts once).
    pub jobs: usize,
    /// Nodes they compute.
    pub nodes: usize,
}

/// A string as one shell word.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn path_word(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// One job of the script: the nodes it runs (one, or an array's tasks) and its requests.
struct Job {
    nodes: Vec<usize>,
    deps: Vec<usize>,
    stage: StageKind,
    /// GPUs per job ([`gpus`]; 0 asks for none).
    gpus: usize,
    mem: Option<String>,
}

/// The GPUs a node's job asks for when the run's devices are GPUs: none for a stage that runs
/// no model (pairs, compose); a TRL training under an accelerate config
/// (`[train] backend = "trl"`, `accelerate_config`) its `num_processes` (a whole node's GPUs
/// under ZeRO-3); a native training with `[train] devices` that many; every other job one.
fn gpus_of(node: &crate::plan::Node, plan: &Plan) -> usize {
    if matches!(
        node.work,
        crate::plan::Work::Pairs { .. } | crate::plan::Work::Compose { .. }
    ) {
        return 0;
    }
    if let crate::plan::Work::Train { config, .. } = &node.work {
        if let Ok(Some(a)) = crate::memory::trl_accelerate(plan, config) {
            return a.processes;
        }
        if let Ok(d) = config.data_parallel_devices()
            && d.len() > 1
        {
            return d.len();
        }
    }
    1
}

/// The GPUs node `i`'s job holds: none when the run's devices are not GPUs, else as
/// [`gpus_of`] says. `run --plan --json` prints it per node.
pub fn gpus(plan: &Plan, i: usize) -> usize {
    if device_of(plan).1 {
        gpus_of(&plan.nodes[i], plan)
    } else {
        0
    }
}

/// The device a job passes to `--node`, and whether it asks for a GPU: the first device of the
/// recipe's pool, by kind (a job sees its own GPU as device 0).
fn device_of(plan: &Plan) -> (String, bool) {
    let first = plan.devices.first().map_or("cpu", String::as_str);
    if first.starts_with("cuda") {
        ("cuda".into(), true)
    } else if first.starts_with("wgpu") {
        ("wgpu".into(), true)
    } else {
        ("cpu".into(), false)
    }
}

/// Writes `<run folder>/slurm/submit.sh` (and the job scripts it submits) for every node of
/// `plan` that is not complete. `recipe` is the recipe's path; `binary`, this program's.
pub fn emit_slurm(
    plan: &Plan,
    recipe: &Path,
    cluster: &ClusterConfig,
    binary: &Path,
    peaks: &[Option<u64>],
) -> Result<Emitted, RunError> {
    let recipe = std::path::absolute(recipe).unwrap_or_else(|_| recipe.to_path_buf());
    let binary = cluster
        .sweetspot
        .clone()
        .unwrap_or_else(|| binary.to_path_buf());
    let st = states(plan);
    let todo = |i: usize| matches!(st[i], NodeState::ToRun | NodeState::Partial);
    let (device, gpu) = device_of(plan);
    // Jobs in plan order (every node after its inputs); siblings grouped into arrays.
    let mut jobs: Vec<Job> = Vec::new();
    let mut job_of: Vec<Option<(usize, usize)>> = vec![None; plan.nodes.len()];
    for (i, node) in plan.nodes.iter().enumerate() {
        if !todo(i) {
            continue;
        }
        let deps: Vec<usize> = node.deps.iter().copied().filter(|&d| todo(d)).collect();
        // `[cluster] mem`, else (a CPU job: its memory is the host's) the plan's estimate and a
        // quarter more, in MiB.
        let mem = cluster.mem.clone().or_else(|| {
            let peak = peaks.get(i).copied().flatten()?;
            (!gpu).then(|| format!("{}M", (peak + peak / 4).div_ceil(1 << 20)))
        });
        let gpus = gpus(plan, i);
        let sibling = jobs.iter().position(|j| {
            node.stage == StageKind::Train
                && j.stage == StageKind::Train
                && j.deps == deps
                && j.gpus == gpus
                && j.mem == mem
        });
        match sibling {
            Some(k) => {
                job_of[i] = Some((k, jobs[k].nodes.len()));
                jobs[k].nodes.push(i);
            }
            None => {
                job_of[i] = Some((jobs.len(), 0));
                jobs.push(Job {
                    nodes: vec![i],
                    deps,
                    stage: node.stage,
                    gpus,
                    mem,
                });
            }
        }
    }
    let dir = plan.dir.join("slurm");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)
        .map_err(|e| RunError::Config(format!("{}: {e}", logs.display())))?;

    let mut common = String::new();
    for (flag, v) in [
        ("--partition", &cluster.partition),
        ("--account", &cluster.account),
        ("--time", &cluster.time),
    ] {
        if let Some(v) = v {
            let _ = write!(common, " {flag}={}", quote(v));
        }
    }
    if let Some(c) = cluster.cpus_per_task {
        let _ = write!(common, " --cpus-per-task={c}");
    }
    for extra in &cluster.sbatch {
        let _ = write!(common, " {}", quote(extra));
    }

    // The recipe as the scripts name it: relative to their folder.
    let recipe_rel = relative_to(&resolved(&recipe), &resolved(&dir));
    let mut s = String::new();
    let _ = writeln!(s, "#!/usr/bin/env bash");
    let _ = writeln!(
        s,
        "# Submits the plan of {} to Slurm: one job per node that is not complete ({} jobs),\n\
         # each `sweetspot run RECIPE --node ID`, in the order of the plan's dependencies.\n\
         # Written by `sweetspot run --emit slurm` (sweetspot {}). Run it where sbatch works.",
        recipe_rel.display(),
        jobs.len(),
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(s, "set -euo pipefail");
    // Paths relative to this folder: the run folder moves (or is mounted elsewhere) whole.
    let _ = writeln!(s, "here=$(cd \"$(dirname \"$0\")\" && pwd)");
    let _ = writeln!(s, "cd \"$here\"");
    let _ = writeln!(s, "export SWEETSPOT={}", path_word(&binary));
    let _ = writeln!(
        s,
        "export SWEETSPOT_RECIPE=\"$here\"/{}",
        path_word(&recipe_rel)
    );
    let _ = writeln!(s, "export SWEETSPOT_DEVICE={}", quote(&device));
    for (k, job) in jobs.iter().enumerate() {
        let labels: Vec<&str> = job
            .nodes
            .iter()
            .map(|&i| plan.nodes[i].label.as_str())
            .collect();
        let _ = writeln!(s, "\n# {}", labels.join(", "));
        let mut deps: Vec<String> = Vec::new();
        for &d in &job.deps {
            if let Some((dj, task)) = job_of[d] {
                if jobs[dj].nodes.len() > 1 {
                    deps.push(format!("${{j{dj}}}_{task}"));
                } else {
                    deps.push(format!("${{j{dj}}}"));
                }
            }
        }
        deps.dedup();
        let mut args = format!(
            "--parsable --export=ALL --job-name={}",
            quote(&format!(
                "sweetspot-{}",
                plan.nodes[job.nodes[0]].stage.name()
            ))
        );
        args.push_str(&common);
        if job.gpus > 0 {
            let _ = write!(args, " --gres=gpu:{}", job.gpus);
        }
        if let Some(m) = &job.mem {
            let _ = write!(args, " --mem={}", quote(m));
        }
        if !deps.is_empty() {
            let _ = write!(args, " --dependency=afterok:{}", deps.join(":"));
        }
        if job.nodes.len() == 1 {
            let id = &plan.nodes[job.nodes[0]].id;
            let _ = write!(args, " --output=logs/{id}-%j.out");
            let _ = writeln!(s, "j{k}=$(sbatch {args} node.sh {id})");
        } else {
            let list = format!("array-{k}.txt");
            let ids: String = job
                .nodes
                .iter()
                .map(|&i| format!("{}\n", plan.nodes[i].id))
                .collect();
            sweetspot_io::write_atomic(&dir.join(&list), ids.as_bytes())?;
            let _ = write!(
                args,
                " --array=0-{} --output=logs/array-{k}-%A_%a.out",
                job.nodes.len() - 1
            );
            let _ = writeln!(s, "j{k}=$(sbatch {args} array.sh {list})");
        }
    }
    let _ = writeln!(
        s,
        "\necho \"submitted {} jobs for {} nodes; logs in $here/logs\"",
        jobs.len(),
        job_of.iter().filter(|j| j.is_some()).count(),
    );
    let node_sh = "#!/usr/bin/env bash\n\
        # One node of the plan: sweetspot run RECIPE --node ID (see submit.sh).\n\
        set -euo pipefail\n\
        exec \"$SWEETSPOT\" run \"$SWEETSPOT_RECIPE\" --node \"$1\" --device \"$SWEETSPOT_DEVICE\"\n";
    let array_sh = "#!/usr/bin/env bash\n\
        # Task SLURM_ARRAY_TASK_ID of a job array: the node on that line of the list (see submit.sh).\n\
        set -euo pipefail\n\
        id=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" \"$1\")\n\
        exec \"$SWEETSPOT\" run \"$SWEETSPOT_RECIPE\" --node \"$id\" --device \"$SWEETSPOT_DEVICE\"\n";
    for (name, text) in [
        ("node.sh", node_sh),
        ("array.sh", array_sh),
        ("submit.sh", s.as_str()),
    ] {
        let path = dir.join(name);
        sweetspot_io::write_atomic(&path, text.as_bytes())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| RunError::Config(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(Emitted {
        script: dir.join("submit.sh"),
        jobs: jobs.len(),
        nodes: job_of.iter().filter(|j| j.is_some()).count(),
    })
}

/// Writes `<run folder>/argo/workflow.json`: an Argo Workflows `Workflow` (JSON, which
/// `argo submit` and `kubectl` take as they take YAML) whose DAG has one task per node that is
/// not complete, each a pod running `sweetspot run RECIPE --node ID` with the run's
/// PersistentVolumeClaim mounted; one template per stage kind; `dependencies` the incomplete
/// input nodes. `recipe` is the recipe's path on this machine.
pub fn emit_argo(plan: &Plan, recipe: &Path, cluster: &ClusterConfig) -> Result<Emitted, RunError> {
    let need = |v: &Option<String>, key: &str| {
        v.clone().ok_or_else(|| {
            RunError::Config(format!(
                "--emit argo: give `[cluster] {key}` (the {})",
                if key == "image" {
                    "container image that holds sweetspot"
                } else {
                    "PersistentVolumeClaim that holds the recipe, its inputs and the run folder"
                }
            ))
        })
    };
    let image = need(&cluster.image, "image")?;
    let claim = need(&cluster.volume_claim, "volume_claim")?;
    let recipe = resolved(recipe);
    let folder = recipe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Relative to the recipe's folder, as the recipe's other paths.
    let root = resolved(&match &cluster.volume_root {
        Some(r) => folder.join(r),
        None => folder,
    });
    let mount = cluster
        .mount_path
        .clone()
        .unwrap_or_else(|| PathBuf::from("/data"));
    let inside = |p: &Path| -> Result<String, RunError> {
        let rel = p.strip_prefix(&root).map_err(|_| {
            RunError::Config(format!(
                "--emit argo: {} is not inside the volume's root {} (`[cluster] volume_root`)",
                p.display(),
                root.display()
            ))
        })?;
        Ok(mount.join(rel).to_string_lossy().into_owned())
    };
    let recipe_in_pod = inside(&recipe)?;
    // The run folder must be on the volume too: the nodes write into it.
    inside(&resolved(&plan.dir))?;
    let binary = cluster.sweetspot.as_ref().map_or_else(
        || "sweetspot".to_string(),
        |p| p.to_string_lossy().into_owned(),
    );
    let st = states(plan);
    let todo = |i: usize| matches!(st[i], NodeState::ToRun | NodeState::Partial);
    let (device, _) = device_of(plan);
    // One template per stage kind and GPU count (a TRL training under ZeRO-3 holds several).
    let mut kinds: Vec<(StageKind, usize)> = Vec::new();
    let template = |(kind, gpus): (StageKind, usize)| {
        if gpus > 1 {
            format!("{}-{gpus}gpu", kind.name())
        } else {
            kind.name().to_string()
        }
    };
    let mut tasks = Vec::new();
    for (i, node) in plan.nodes.iter().enumerate() {
        if !todo(i) {
            continue;
        }
        let kind = (node.stage, gpus(plan, i));
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
        let deps: Vec<&str> = node
            .deps
            .iter()
            .filter(|&&d| todo(d))
            .map(|&d| plan.nodes[d].id.as_str())
            .collect();
        let mut task = serde_json::json!({
            "name": node.id,
            "template": template(kind),
            "arguments": {"parameters": [{"name": "node", "value": node.id}]},
        });
        if !deps.is_empty() {
            task["dependencies"] = serde_json::json!(deps);
        }
        tasks.push(task);
    }
    let mut templates = vec![serde_json::json!({
        "name": "plan",
        "dag": {"tasks": tasks},
    })];
    for &kind in &kinds {
        let mut resources = serde_json::json!({});
        if let Some(m) = &cluster.mem {
            resources["requests"] = serde_json::json!({"memory": m});
        }
        if let Some(c) = cluster.cpus_per_task {
            resources["requests"]["cpu"] = serde_json::json!(c.to_string());
        }
        if kind.1 > 0 {
            resources["limits"] = serde_json::json!({"nvidia.com/gpu": kind.1.to_string()});
        }
        templates.push(serde_json::json!({
            "name": template(kind),
            "inputs": {"parameters": [{"name": "node"}]},
            "container": {
                "image": image,
                "command": [binary],
                "args": ["run", recipe_in_pod, "--node", "{{inputs.parameters.node}}",
                         "--device", device],
                "volumeMounts": [{"name": "run", "mountPath": mount.to_string_lossy()}],
                "resources": resources,
            },
        }));
    }
    let name: String = plan
        .name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let workflow = serde_json::json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "generateName": format!("sweetspot-{}-", name.trim_matches('-')),
            "annotations": {
                "sweetspot/recipe": recipe_in_pod,
                "sweetspot/version": env!("CARGO_PKG_VERSION"),
            },
        },
        "spec": {
            "entrypoint": "plan",
            "volumes": [{"name": "run", "persistentVolumeClaim": {"claimName": claim}}],
            "templates": templates,
        },
    });
    let dir = plan.dir.join("argo");
    std::fs::create_dir_all(&dir)
        .map_err(|e| RunError::Config(format!("{}: {e}", dir.display())))?;
    let path = dir.join("workflow.json");
    let text = serde_json::to_vec_pretty(&workflow)
        .map_err(|e| RunError::Config(format!("--emit argo: {e}")))?;
    sweetspot_io::write_atomic(&path, &text)?;
    let n = plan.nodes.len() - (0..plan.nodes.len()).filter(|&i| !todo(i)).count();
    Ok(Emitted {
        script: path,
        jobs: n,
        nodes: n,
    })
}
