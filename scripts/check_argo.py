#!/usr/bin/env python3
"""Loads a workflow written by `sweetspot run --emit argo` with Argo Workflows' Python models
(the `hera` package) and checks its DAG against the plan (`sweetspot run --plan --json`): one
task per node that is not complete, each task's dependencies exactly its incomplete input nodes,
one template per stage kind, every pod mounting the run's volume claim.

    python3 scripts/check_argo.py RUN_FOLDER/argo/workflow.json PLAN.json

Exits non-zero, naming the first difference, when they disagree.
"""

import json
import sys

from hera.workflows import Workflow
from hera.workflows.models import Workflow as WorkflowModel


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
        assert task.template == node["stage"], f"{node_id}: template {task.template}"
        params = {p.name: p.value for p in task.arguments.parameters}
        assert params.get("node") == node_id, params
    kinds = {n["stage"] for n in todo.values()}
    assert set(templates) - {"plan"} == kinds, f"templates {sorted(templates)} for kinds {kinds}"
    claims = [v.persistent_volume_claim.claim_name for v in spec.volumes]
    for kind in kinds:
        c = templates[kind].container
        assert "--node" in c.args and "{{inputs.parameters.node}}" in c.args, c.args
        mounts = [m.name for m in c.volume_mounts]
        assert mounts == ["run"], mounts
    assert len(claims) == 1, claims
    assert model.spec.templates is not None
    print(f"ok: {len(tasks)} tasks, {len(kinds)} templates, claim {claims[0]}")


if __name__ == "__main__":
    main()
