"""The wheel's tests (pytest, in a virtualenv with the wheel installed; .ci/run runs them).

The Python API's pairs must equal the command line's on the shipped example (examples/pairs-only)
for every kind of input; errors name the row and field; `run` runs the example and resumes; an HF
datasets round trip; and the Arrow hand-off copies no column (buffer addresses).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sweetspot
from sweetspot import SweetspotError, _native

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "pairs-only" / "recipe.toml"
SCORED = ROOT / "examples" / "quickstart" / "scored.jsonl"
# The same 40 prompts x 16 samples in Parquet (its string prompts as one user message, which
# sweetspot reads alike: the CLI writes the same pairs from either file). The JSONL mixes string
# and message-list prompts, which no Arrow column holds, so tables are made from this one.
SCORED_PARQUET = ROOT / "examples" / "data" / "scored-grouped.parquet"

# examples/pairs-only/recipe.toml's strategies, as Python arguments.
STRATEGIES = [
    {"type": "grid", "points": ["min", -2, -1, 0, 1, 2, "max"]},
    "max-min",
    {"type": "max-of-n-min-of-k", "k": 5, "subset": "first"},
]


def rows() -> list:
    return pq.read_table(SCORED_PARQUET).to_pylist()


def normal(row: dict) -> dict:
    """A row as JSON would give it, absent and null fields alike."""
    return {k: v for k, v in json.loads(json.dumps(row)).items() if v is not None}


@pytest.fixture(scope="module")
def cli_pairs(tmp_path_factory) -> dict:
    """The example's datasets as the `sweetspot` command writes them: {name: [row, ...]}."""
    out = tmp_path_factory.mktemp("cli") / "out"
    p = subprocess.run(
        [sys.executable, "-m", "sweetspot", "--quiet", "pairs", "--recipe", str(EXAMPLE),
         "--output", str(out)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    names = [d["name"] for d in summary["datasets"]]
    assert len(names) == 23, names
    return {
        n: [json.loads(l) for l in (out / f"{n}.jsonl").read_text().splitlines() if l.strip()]
        for n in names
    }


def check_equal(tables: dict, cli: dict) -> None:
    assert list(tables) == list(cli)
    for name, table in tables.items():
        assert isinstance(table, pa.Table)
        got = [normal(r) for r in table.to_pylist()]
        want = [normal(r) for r in cli[name]]
        assert len(got) == len(want) > 0, name
        assert got == want, name


def as_pyarrow():
    return pq.read_table(SCORED_PARQUET)


def as_pandas():
    return pq.read_table(SCORED_PARQUET).to_pandas()


def as_polars():
    import polars as pl

    return pl.read_parquet(SCORED_PARQUET)


def as_datasets():
    import datasets

    r = rows()
    return datasets.Dataset.from_dict({k: [x[k] for x in r] for k in r[0]})


def as_path():
    return SCORED


def as_path_str():
    return str(SCORED)


def as_parquet_path():
    return SCORED_PARQUET


@pytest.mark.parametrize(
    "make", [as_pyarrow, as_pandas, as_polars, as_datasets, as_path, as_path_str, as_parquet_path],
    ids=lambda f: f.__name__,
)
def test_pairs_equal_the_cli(make, cli_pairs):
    tables = sweetspot.pairs(make(), strategies=STRATEGIES, seed=42)
    check_equal(tables, cli_pairs)


def test_pairs_summary_and_n():
    tables, summary = sweetspot.pairs(as_pyarrow(), "max-min", n=4, return_summary=True)
    assert list(tables) == ["max-min"]
    assert summary["groups"] == 40
    assert summary["input"] == "the scored table"
    assert summary["datasets"][0]["pairs"] == tables["max-min"].num_rows > 0
    # n = 4: every pair is drawn from a group's first 4 samples, so the pairs differ from n = 16
    # for some prompt.
    full = sweetspot.pairs(as_pyarrow(), "max-min")["max-min"]
    assert tables["max-min"].to_pylist() != full.to_pylist()


def test_bad_row_names_row_and_field():
    r = rows()
    r[6]["all_rm_scores"] = r[6]["all_rm_scores"][:-1]  # 15 scores for 16 responses
    with pytest.raises(SweetspotError) as e:
        sweetspot.pairs(pa.Table.from_pylist(r), "max-min")
    message = str(e.value)
    assert "the scored table: row 7: field `all_rm_scores`" in message, message
    assert "all_rm_scores" in message, message
    assert "sweetspot-pairs-" not in message, message
    assert e.value.exit_code != 0


def test_bad_setting_names_key():
    with pytest.raises(SweetspotError) as e:
        sweetspot.pairs(as_pyarrow(), {"type": "max-of-n-min-of-k", "k": 0})
    assert str(e.value).startswith("sweetspot.pairs: key `pairs.strategies"), str(e.value)
    assert e.value.exit_code == 2
    with pytest.raises(SweetspotError) as e:
        sweetspot.pairs(as_pyarrow(), "no-such-strategy")
    assert "no-such-strategy" in str(e.value)


def test_not_a_table():
    with pytest.raises(TypeError):
        sweetspot.pairs(42, "max-min")


def test_stats():
    t = sweetspot.stats(as_pyarrow())
    assert t.num_rows == 1
    row = t.to_pylist()[0]
    assert row["groups"] == 40
    assert row["mean_n"] == 16
    from_path = sweetspot.stats(SCORED).to_pylist()[0]
    for k in ("groups", "mean_n", "mean_of_mu", "mean_of_sigma", "frac_sigma_zero"):
        assert from_path[k] == row[k], k


def test_input_is_not_copied():
    """The table's buffers are the ones sweetspot reads (the import copies nothing)."""
    table = as_pyarrow()
    seen = _native.buffer_addresses(table)
    assert set(seen) == set(table.column_names)
    for name in ("prompt_id", "prompt", "all_generated_responses", "all_rm_scores"):
        chunks = table.column(name).chunks
        assert len(seen[name]) == len(chunks)
        for got, chunk in zip(seen[name], chunks):
            want = [b.address if b is not None else 0 for b in chunk.buffers()]
            validity = validity_slots(chunk.type)
            assert len(got) == len(want) == len(validity), name
            # A validity bitmap may be left out by the importer when no value is null; every
            # other buffer must be the producer's own.
            values = [i for i, v in enumerate(validity) if not v]
            assert [got[i] for i in values] == [want[i] for i in values], name
            assert all(got[i] != 0 for i in values), name


def validity_slots(t: pa.DataType) -> list:
    """For each buffer of `Array.buffers()` of type `t`, whether it is a validity bitmap."""
    if pa.types.is_struct(t):
        return [True] + [v for i in range(t.num_fields) for v in validity_slots(t.field(i).type)]
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return [True, False] + validity_slots(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        return [True, False, False]
    assert pa.types.is_primitive(t), t
    return [True, False]


def test_output_is_not_copied():
    """pyarrow wraps the buffers sweetspot allocated for the pairs (the export copies nothing)."""
    streams, _ = _native.pairs(SCORED, json.dumps({"seed": 42}),
                               json.dumps({"strategies": [{"type": "max-min"}]}))
    stream = streams["max-min"]
    before = stream.buffer_addresses()
    table = pa.table(stream)
    assert table.num_rows == len(stream) > 0
    for name in table.column_names:
        chunks = table.column(name).chunks
        assert len(chunks) == len(before[name])
        for got, chunk in zip(before[name], chunks):
            want = [b.address if b is not None else 0 for b in chunk.buffers()]
            assert got == want, name


def test_datasets_round_trip():
    import datasets

    ds = as_datasets()
    tables = sweetspot.pairs(ds, "max-min")
    out = datasets.Dataset(tables["max-min"])
    assert out.num_rows == tables["max-min"].num_rows > 0
    assert set(out.column_names) == set(tables["max-min"].column_names)
    assert out[0]["chosen"] == tables["max-min"].to_pylist()[0]["chosen"]
    assert out[0]["chosen"][-1]["role"] == "assistant"
    # A shuffled selection goes through its indices mapping: the same pairs, reordered.
    sub = ds.select([3, 1, 2])
    picked = sweetspot.pairs(sub, "max-min")["max-min"].to_pylist()
    full = {r["prompt_id"]: r for r in tables["max-min"].to_pylist()}
    assert len(picked) == 3
    for r in picked:
        assert r == full[r["prompt_id"]]


def test_validate_and_plan():
    assert "ok" in sweetspot.validate(EXAMPLE)
    p = sweetspot.plan(EXAMPLE)
    assert [n["stage"] for n in p["nodes"]] == ["pairs"]


def test_validate_error(tmp_path):
    bad = tmp_path / "recipe.toml"
    bad.write_text(EXAMPLE.read_text().replace('type = "max-min"', 'type = "max-mni"'))
    with pytest.raises(SweetspotError) as e:
        sweetspot.validate(bad)
    assert "max-mni" in str(e.value)
    assert str(bad) in str(e.value)
    assert e.value.exit_code == 2


def test_run_pairs_only_example_and_resume(tmp_path, cli_pairs):
    recipe = tmp_path / "recipe.toml"
    text = EXAMPLE.read_text().replace('"../quickstart/scored.jsonl"', json.dumps(str(SCORED)))
    assert str(SCORED) in text
    recipe.write_text(text)
    folder = sweetspot.run(recipe, quiet=True)
    assert folder.path == tmp_path / "runs" / "pairs-only"
    nodes = folder.nodes().to_pylist()
    assert [(n["stage"], n["state"]) for n in nodes] == [("pairs", "done")]
    data = folder.datasets()
    assert sorted(data) == sorted(f"all/{n}" for n in cli_pairs)
    for name, rows_ in cli_pairs.items():
        got = [normal(r) for r in data[f"all/{name}"].to_pylist()]
        assert got == [normal(r) for r in rows_], name
    assert folder.metrics() == {}
    assert folder.eval() is None
    # A second run reuses the node: its record is not rewritten.
    done = folder.path / "nodes" / nodes[0]["id"] / "done.json"
    stamp = done.stat().st_mtime_ns
    again = sweetspot.run(recipe, quiet=True)
    assert again.path == folder.path
    assert done.stat().st_mtime_ns == stamp


def test_run_error(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(EXAMPLE.read_text())  # its input is relative: missing here
    with pytest.raises(SweetspotError) as e:
        sweetspot.run(recipe, quiet=True)
    assert "scored.jsonl" in str(e.value)
    assert not str(e.value).startswith("error: ")
    assert e.value.exit_code == 1


def test_failed_run_lists_its_stages(tmp_path):
    """A run whose stage fails raises with the command's message, naming stage, line and field."""
    recipe = tmp_path / "recipe.toml"
    bad = tmp_path / "scored.jsonl"
    bad.write_text(SCORED.read_text().replace('"all_rm_scores": [', '"all_rm_scores": ["x", ', 1))
    recipe.write_text(EXAMPLE.read_text().replace('"../quickstart/scored.jsonl"', '"scored.jsonl"'))
    with pytest.raises(SweetspotError) as e:
        sweetspot.run(recipe, quiet=True)
    message = str(e.value)
    assert message.startswith("stage `pairs` failed: "), message
    assert "scored.jsonl:1: field `all_rm_scores`" in message, message
    assert e.value.exit_code != 0


def test_run_folder_refuses_other_folders(tmp_path):
    with pytest.raises(SweetspotError):
        sweetspot.RunFolder(tmp_path)


def test_command_line():
    """The `sweetspot` console script is the binary's program."""
    exe = shutil.which("sweetspot", path=os.path.dirname(sys.executable))
    assert exe is not None
    p = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    assert "Build chosen/rejected pairs" in p.stdout
    p = subprocess.run([exe, "plugins"], capture_output=True, text=True)
    assert p.returncode == 0
    assert "max-of-n-min-of-k" in p.stdout
    p = subprocess.run([exe, "pairs", "--nope"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "--nope" in p.stderr


INTERRUPT = """
import glob, os, signal, sys, threading, time
import sweetspot

recipe, need = sys.argv[1], int(sys.argv[2])
pattern = os.path.join(os.path.dirname(recipe), "runs", "*", "nodes", "*", "*.partial")


def watch():
    while True:
        files = glob.glob(pattern)
        if files and sum(1 for _ in open(files[0])) >= need:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in a notebook: the kernel only
            return
        time.sleep(0.05)


threading.Thread(target=watch, daemon=True).start()
try:
    sweetspot.run(recipe, quiet=True)
    print("finished")
except KeyboardInterrupt:
    print("interrupted")
"""


def test_keyboard_interrupt_stops_run_and_rerun_resumes(tmp_path):
    """KeyboardInterrupt stops the run's process; the next run keeps the finished groups."""
    group = 64
    # 40 prompts: the run is far from done when the second interrupt comes.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt_id": f"p{i}", "prompt": f"Count to {i} and explain why."}) + "\n"
            for i in range(40)
        )
    )
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f"""
[run]
name = "slow"
seed = 7

[sampler]
type = "burn"
model = {json.dumps(str(ROOT / "tests/fixtures/models/policy"))}
max_new_tokens = 100

[generate]
prompts = {json.dumps(str(prompts))}
n = {group}
"""
    )

    def interrupted_run(need: int) -> list:
        p = subprocess.run(
            [sys.executable, "-c", INTERRUPT, str(recipe), str(need)],
            capture_output=True, text=True, timeout=600,
        )
        assert p.stdout.strip() == "interrupted", (p.stdout, p.stderr)
        # No process of the run is left.
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            assert str(recipe).encode() not in args, args
        (partial,) = tmp_path.glob("runs/slow/nodes/*/samples.jsonl.partial")
        return partial.read_text().splitlines()

    first = interrupted_run(group)
    kept = first[: len(first) - len(first) % group]  # whole groups (a torn one is redone)
    assert len(kept) >= group
    second = interrupted_run(len(kept) + group)
    assert second[: len(kept)] == kept
    assert len(second) >= len(kept) + group
