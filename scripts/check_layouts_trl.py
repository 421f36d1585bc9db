#!/usr/bin/env python3
"""The pairs stage's unpaired and listwise layouts, as TRL 1.16 and `datasets` read them.

Runs `sweetspot pairs` (target/release/sweetspot, or $SWEETSPOT) on
tests/fixtures/filters/scored.jsonl three times, into a temporary folder: `layout = "pairs"`,
`"unpaired"` and `"listwise"` (listwise_k = 4), then checks:

- every file loads with `datasets.load_dataset("json", ...)`;
- unpaired: columns `prompt`, `completion`, `label` (bool), every row conversational by
  `trl.data_utils.is_conversational`, no `chosen`/`rejected` (so `KTOTrainer._prepare_dataset`
  takes it as it is, without unpairing), and, as a multiset of rows (prompt, completion, label,
  prompt_id), equal to `trl.data_utils.unpair_preference_dataset` applied to the pairs output;
  the provenance columns agree too (reward = score_chosen / score_rejected, sample_index =
  chosen_index / rejected_index);
- listwise: columns `prompt` (messages), `completions` (a list of message lists), `rewards`
  (floats, best first, as many as completions), conversational by `is_conversational`.

    /work/venv/bin/python scripts/check_layouts_trl.py

Exits non-zero on the first mismatch. The Rust tests in tests/pairs.rs check the same schemas
without Python.
"""

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import datasets
import trl
from trl.data_utils import is_conversational, unpair_preference_dataset

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("SWEETSPOT", str(ROOT / "target" / "release" / "sweetspot"))
FIXTURE = ROOT / "tests" / "fixtures" / "filters" / "scored.jsonl"
STRATEGIES = """
[[pairs.strategies]]
type = "max-min"

[[pairs.strategies]]
type = "max-of-n-min-of-k"
k = 3
subset = "first"
"""


def run(tmp, name, extra, strategies=STRATEGIES):
    recipe = tmp / f"{name}.toml"
    recipe.write_text(
        f'[run]\nseed = 1\n\n[pairs]\ninput = "{FIXTURE}"\noutput = "{name}"\n{extra}\n{strategies}'
    )
    out = subprocess.run(
        [BIN, "pairs", "--json", "--recipe", str(recipe)], capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"sweetspot pairs failed: {out.stderr}")
    return json.loads(out.stdout)


def load(path):
    return datasets.load_dataset("json", data_files=str(path), split="train")


def key(row):
    return json.dumps(
        [row["prompt"], row["completion"], row["label"], row["prompt_id"]], sort_keys=True
    )


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


def main():
    datasets.disable_progress_bars()
    print(f"trl {trl.__version__}, datasets {datasets.__version__}")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        os.chdir(tmp)
        pairs = run(tmp, "pairs", "min_margin = 1.0")
        unpaired = run(tmp, "unpaired", 'min_margin = 1.0\nlayout = "unpaired"')
        for dp, du in zip(pairs["datasets"], unpaired["datasets"]):
            name = dp["name"]
            p = load(tmp / "pairs" / f"{name}.jsonl")
            u = load(tmp / "unpaired" / f"{name}.jsonl")
            check(set(["prompt", "completion", "label"]) <= set(u.column_names), u.column_names)
            check(not {"chosen", "rejected"} & set(u.column_names), "unpaired has chosen/rejected")
            check(u.features["label"].dtype == "bool", f"label is {u.features['label']}")
            check(len(u) == 2 * len(p) == 2 * dp["pairs"], f"{name}: {len(u)} rows, {len(p)} pairs")
            check(all(is_conversational(r) for r in u), "unpaired rows not conversational")
            ref = unpair_preference_dataset(p)
            check(len(ref) == len(u), "row counts")
            check(Counter(map(key, ref)) == Counter(map(key, u)), f"{name}: rows differ from TRL's")
            # Provenance: TRL duplicates the pair's columns; ours are per row.
            ours = {(key(r)): (r["reward"], r["sample_index"]) for r in u}
            for r in ref:
                want = (
                    (r["score_chosen"], r["chosen_index"])
                    if r["label"]
                    else (r["score_rejected"], r["rejected_index"])
                )
                check(ours[key(r)] == want, f"{name}: provenance {ours[key(r)]} != {want}")
            print(f"unpaired {name}: {len(u)} rows == unpair_preference_dataset(pairs) as a multiset")
        lw = run(tmp, "lw", 'layout = "listwise"\nlistwise_k = 4', strategies="")
        d = lw["datasets"][0]
        ds = load(tmp / "lw" / f"{d['name']}.jsonl")
        check(
            {"prompt", "completions", "rewards"} <= set(ds.column_names), f"listwise {ds.column_names}"
        )
        check(len(ds) == d["pairs"], "listwise rows")
        for r in ds:
            check(is_conversational({"prompt": r["prompt"]}), "listwise prompt")
            check(len(r["completions"]) == len(r["rewards"]) == 4, "listwise k")
            check(all(is_conversational({"completion": c}) for c in r["completions"]), "completion")
            check(r["rewards"] == sorted(r["rewards"], reverse=True), "rewards best first")
        print(f"listwise {d['name']}: {len(ds)} rows, features {dict(ds.features)}")
    print("OK")


if __name__ == "__main__":
    main()
