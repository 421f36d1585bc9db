#!/usr/bin/env python3
"""Loads a workflow written by `sweetspot run --emit argo` with Argo Workflows' Python models
(the `hera` package) and checks its DAG against the plan (`sweetspot run --plan --json`): one
task per node that is not complete, each task's dependencies exactly its incomplete input nodes,
one template per stage kind and GPU count (`train-8gpu` for a training that holds 8), asking
for the GPUs the plan says, every pod mounting the run's volume claim.

    python3 scripts/check_argo.py RUN_FOLDER/argo/workflow.json PLAN.json

Exits non-zero, naming the first difference, when they disagree.
"""

import json
import sys

from hera.workflows import Workflow
from hera.workflows.models import Workflow as WorkflowModel


def template_of(node: dict) -> str:
    """The template a node's task runs: its stage, with the GPU count when it holds several."""
    gpus = node.get("gpus", 0)
    return f"{node['stage']}-{gpus}gpu" if gpus > 1 else node["stage"]


def main() -> None:
    workflow_path, plan_path = sys.argv[1], sys.argv[2]
    with open(workflow_path) as f:
        raw = json.load(f)
    # Both of hera's views: the high-level Workflow and the generated Argo API model.
    wf = Workflow.from_dict(raw)
    model = WorkflowModel.model_validate(raw)
    with open(plan_path) as f:
        plan = json.load(f)
    todo = {n["id"]: n for n in plan["nodes"] if n["state"] in ("to-run", "partial")}
    built = wf.build()
    spec = built.spec
    assert spec.entrypoint == "plan", spec.entrypoint
    templates = {t.name: t for t in spec.templates}
    dag = templates["plan"].dag
    tasks = {t.name: t for t in dag.tasks}
    assert set(tasks) == set(todo), f"tasks {sorted(set(tasks) ^ set(todo))} differ from the plan"
    for node_id, node in todo.items():
        task = tasks[node_id]
        want = sorted(d for d in node["inputs"] if d in todo)
        got = sorted(task.dependencies or [])
        assert got == want, f"{node_id}: dependencies {got}, the plan's inputs {want}"
        assert task.template == template_of(node), f"{node_id}: template {task.template}"
        params = {p.name: p.value for p in task.arguments.parameters}
        assert params.get("node") == node_id, params
    kinds = {template_of(n): n.get("gpus", 0) for n in todo.values()}
    assert set(templates) - {"plan"} == set(kinds), f"templates {sorted(templates)} for {kinds}"
    claims = [v.persistent_volume_claim.claim_name for v in spec.volumes]
    for kind, gpus in kinds.items():
        c = templates[kind].container
        limits = (c.resources.limits or {}) if c.resources else {}
        got = limits.get("nvidia.com/gpu")
        want = str(gpus) if gpus > 0 else None
        got = getattr(got, "root", got)
        assert (str(got) if got is not None else None) == want, f"{kind}: GPUs {got}, plan {want}"
        assert "--node" in c.args and "{{inputs.parameters.node}}" in c.args, c.args
        mounts = [m.name for m in c.volume_mounts]
        assert mounts == ["run"], mounts
    assert len(claims) == 1, claims
    assert model.spec.templates is not None
    print(f"ok: {len(tasks)} tasks, {len(kinds)} templates, claim {claims[0]}")


if __name__ == "__main__":
    main()
