"""sweetspot: on-policy preference data for LLM alignment, from Python.

The same program as the ``sweetspot`` command (which this package installs too), over Arrow:

- :func:`pairs` builds chosen/rejected pairs from scored samples (a pyarrow Table, a polars or
  pandas DataFrame, an HF ``datasets.Dataset``, or a path), one ``pyarrow.Table`` per dataset;
- :func:`stats` gives the reward statistics of a scored pool as a table;
- :func:`validate`, :func:`plan` and :func:`run` check, plan and run a recipe;
- :class:`RunFolder` reads a run folder's nodes, datasets, metrics and eval as tables.

Errors are :class:`SweetspotError`, with the command line's message (file, row, field or recipe
key) and its exit code as ``exit_code``. docs/python.md is the guide.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

from . import _native
from ._native import SweetspotError

__all__ = [
    "SweetspotError",
    "RunFolder",
    "pairs",
    "stats",
    "validate",
    "plan",
    "run",
]

__version__: str = _native.__version__

PathLike = Union[str, "os.PathLike[str]"]


def _arrow_source(scored: Any) -> Any:
    """A path as given, else an object with ``__arrow_c_stream__`` for the table ``scored``."""
    if isinstance(scored, (str, os.PathLike)):
        return os.fspath(scored)
    if hasattr(scored, "__arrow_c_stream__"):
        return scored
    # An HF datasets.Dataset holds a pyarrow Table (`.data.table`); a selection or shuffle
    # keeps an indices mapping over it, which `flatten_indices` applies (a copy; none otherwise).
    data = getattr(scored, "data", None)
    if data is not None and hasattr(scored, "flatten_indices"):
        if getattr(scored, "_indices", None) is not None:
            scored = scored.flatten_indices()
        table = getattr(scored.data, "table", None)
        if table is not None and hasattr(table, "__arrow_c_stream__"):
            return table
    # A pandas DataFrame before pandas 2.2 has no `__arrow_c_stream__`: pyarrow converts it.
    if type(scored).__module__.startswith("pandas"):
        import pyarrow as pa

        return pa.Table.from_pandas(scored, preserve_index=False)
    raise TypeError(
        f"scored: a {type(scored).__name__} is not a table: give a path, a pyarrow Table, a "
        "polars or pandas DataFrame, or a datasets.Dataset"
    )


def _strategy(s: Union[str, Mapping[str, Any]]) -> dict:
    if isinstance(s, str):
        return {"type": s}
    if isinstance(s, Mapping):
        if "type" not in s:
            raise SweetspotError(f"strategies: {dict(s)!r} has no `type`")
        return {k: v for k, v in s.items() if v is not None}
    raise TypeError(
        f"strategies: a {type(s).__name__}: give a strategy's type (\"max-min\") or its table "
        "({\"type\": \"grid\", \"points\": [...]})"
    )


def pairs(
    scored: Any,
    strategies: Union[str, Mapping[str, Any], Sequence[Union[str, Mapping[str, Any]]]] = "max-min",
    n: int | None = None,
    *,
    input_layout: str = "auto",
    layout: str = "pairs",
    on_small_group: str = "error",
    on_invalid_reward: str = "error",
    seed: int = 42,
    min_margin: float | None = None,
    min_margin_sigma: float | None = None,
    top_fraction: float | None = None,
    listwise_k: int | None = None,
    quiet: bool = True,
    return_summary: bool = False,
) -> Any:
    """Chosen/rejected pairs from scored samples, one ``pyarrow.Table`` per dataset.

    The pairs stage of ``sweetspot pairs``, with the same selection, checks and errors: the
    arguments are the keys of a recipe's ``[pairs]`` table (docs/recipes.md) and are checked as a
    recipe's are.

    Args:
        scored: scored samples in the long layout (one row per sample) or the grouped one (one
            row per prompt): a pyarrow Table or RecordBatchReader, a polars or pandas DataFrame,
            an HF ``datasets.Dataset``, anything with ``__arrow_c_stream__``, or the path of a
            ``.jsonl`` or ``.parquet`` file.
        strategies: one strategy or a list: a type (``"max-min"``) or a table with its keys
            (``{"type": "grid", "points": ["min", -2, 0, 2, "max"]}``); see ``sweetspot plugins``.
        n: use only the first ``n`` samples of each group.
        input_layout: ``"auto"``, ``"long"`` or ``"grouped"``.
        layout: ``"pairs"``, ``"unpaired"`` or ``"listwise"`` (no strategies then).
        on_small_group, on_invalid_reward: ``"error"`` or ``"skip"``.
        seed: the seed of random choices.
        min_margin, min_margin_sigma, top_fraction: the pair filters.
        listwise_k: responses per prompt for ``layout="listwise"``.
        quiet: hide the progress bar (on stderr).
        return_summary: also return the stage's summary (groups read, pairs and skipped groups
            per dataset) as a dict: ``(tables, summary)``.

    Returns:
        ``{dataset name: pyarrow.Table}`` in the order of the stage's summary (TRL's
        conversational preference columns ``prompt``, ``chosen``, ``rejected`` and the scores).

    Raises:
        SweetspotError: bad input (naming the row and field) or a bad setting (naming its key).

    The table is handed to sweetspot without a copy; the stage reads it as it reads a Parquet
    file, through the CLI's one row parser, so it is written once to a temporary Parquet file.
    The returned tables are Arrow memory that sweetspot allocated, handed over without a copy.
    """
    source = _arrow_source(scored)
    if layout == "listwise" and strategies == "max-min":
        strategies = []
    if isinstance(strategies, (str, Mapping)):
        strategies = [strategies]
    table: dict = {
        "strategies": [_strategy(s) for s in strategies],
        "input_layout": input_layout,
        "layout": layout,
        "on_small_group": on_small_group,
        "on_invalid_reward": on_invalid_reward,
        "n": n,
        "min_margin": min_margin,
        "min_margin_sigma": min_margin_sigma,
        "top_fraction": top_fraction,
        "listwise_k": listwise_k,
    }
    table = {k: v for k, v in table.items() if v is not None}
    if not table["strategies"]:
        del table["strategies"]
    streams, summary = _native.pairs(
        source, json.dumps({"seed": seed}), json.dumps(table), quiet=quiet
    )
    import pyarrow as pa

    tables = {name: pa.table(s) for name, s in streams.items()}
    if return_summary:
        summary = json.loads(summary)
        for d in summary.get("datasets", []):
            d.pop("file", None)
        summary.pop("summary_file", None)
        return tables, summary
    return tables


def stats(
    scored: Any, *, n: int | None = None, input_layout: str = "auto"
) -> "pyarrow.Table":  # noqa: F821
    """The reward statistics of ``sweetspot stats`` for one scored pool, as a one-row table.

    Columns: groups, mean n, the mean of each prompt's reward mean and standard deviation, the
    fraction of prompts whose rewards are all equal, whose max lies above mu + 2 sigma and whose
    min lies below mu - 2 sigma, and the groups left out for a non-finite reward.

    Args:
        scored: as for :func:`pairs`.
        n: use only the first ``n`` samples of each group.
        input_layout: ``"auto"``, ``"long"`` or ``"grouped"``.
    """
    import pyarrow as pa

    row = json.loads(_native.stats(_arrow_source(scored), input_layout, n))
    return pa.Table.from_pylist([row])


def _command(args: Sequence[str], capture: bool) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sweetspot", *args]
    if capture:
        return subprocess.run(cmd, capture_output=True, text=True)
    return subprocess.run(cmd, stdout=subprocess.PIPE, text=True)


def _failed(p: subprocess.CompletedProcess) -> SweetspotError:
    """The command's error: its `error: ...` line and the lines after it (a failed run lists
    its failed stages below it), else its whole stderr."""
    lines = (p.stderr or "").strip().splitlines()
    first = next((i for i, l in enumerate(lines) if l.startswith("error: ")), None)
    if first is not None:
        message = "\n".join([lines[first][len("error: ") :], *lines[first + 1 :]])
    else:
        message = "\n".join(lines) or f"exit code {p.returncode}"
    err = SweetspotError(message)
    err.exit_code = p.returncode
    return err


def validate(recipe: PathLike, *, device: str | None = None) -> str:
    """Checks a recipe without running it, as ``sweetspot validate`` does.

    Returns the command's one-line description of what the recipe does. Raises
    :class:`SweetspotError` naming the recipe's file, line and key.
    """
    args = ["validate", os.fspath(recipe)]
    if device:
        args += ["--device", device]
    p = _command(args, capture=True)
    if p.returncode != 0:
        raise _failed(p)
    return p.stdout.strip()


def plan(recipe: PathLike) -> dict:
    """The plan of ``sweetspot run --plan --json``: the run's nodes (stage, hash, inputs, state,
    memory estimate) as a dict. Reads no model weights and writes nothing."""
    p = _command(["run", "--plan", "--json", os.fspath(recipe)], capture=True)
    if p.returncode != 0:
        raise _failed(p)
    return json.loads(p.stdout)


def run(
    recipe: PathLike,
    *,
    device: str | None = None,
    restart: bool = False,
    quiet: bool = False,
    args: Iterable[str] = (),
) -> "RunFolder":
    """Runs a whole recipe, as ``sweetspot run`` does, and returns its run folder.

    Blocks until the run ends, with progress on stderr. The run is its own process (the
    ``sweetspot`` command of this package): Ctrl-C (``KeyboardInterrupt``) stops it there as it
    stops the command, and the run folder keeps every finished node and each stage's resumable
    partial output, so calling ``run`` again resumes. Raises :class:`SweetspotError` when the
    run fails (the message names the failed nodes).

    Args:
        recipe: the recipe file (TOML).
        device: overrides the recipe's ``[run].device``.
        restart: discard an earlier run's changed outputs instead of refusing.
        quiet: hide progress bars and info logs.
        args: further flags of ``sweetspot run``.
    """
    cmd = [sys.executable, "-m", "sweetspot"]
    if quiet:
        cmd.append("--quiet")
    cmd += ["run", os.fspath(recipe)]
    if device:
        cmd += ["--device", device]
    if restart:
        cmd.append("--restart")
    cmd += list(args)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = _communicate(proc)
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the child too; a signal from code did not: send it.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    if proc.returncode != 0:
        raise _failed(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    folder = _run_folder_from_output(out)
    if folder is None:
        raise SweetspotError(f"the run ended but named no run folder:\n{out}")
    return RunFolder(folder)


def _communicate(proc: subprocess.Popen) -> tuple:
    """Streams the child's stderr (progress) to ours while keeping a copy; collects stdout."""
    import threading

    err_lines: list = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append(line)
            sys.stderr.write(line)
            sys.stderr.flush()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.wait()
    t.join()
    return out, "".join(err_lines)


def _run_folder_from_output(out: str) -> str | None:
    for line in out.splitlines():
        if line.startswith("run folder: "):
            rest = line[len("run folder: ") :]
            return rest.split(" (index: ")[0].strip()
    return None


class RunFolder:
    """A run folder of ``sweetspot run``, read as tables (complete nodes only, as ``run.json``
    lists them). Reading never writes into the folder."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        index = self.path / "run.json"
        if not index.is_file():
            raise SweetspotError(f"{self.path}: not a run folder (no run.json)")
        try:
            self.index: dict = json.loads(index.read_text())
        except json.JSONDecodeError as e:
            raise SweetspotError(f"{index}: not JSON: {e}") from None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        """The run's name (``[run].name``)."""
        return self.index.get("name", "")

    def nodes(self) -> "pyarrow.Table":  # noqa: F821
        """One row per node: id, stage, label, round, state, inputs, n, dataset, policy."""
        import pyarrow as pa

        rows = []
        for n in self.index.get("nodes", []):
            rows.append(
                {
                    "id": n.get("id"),
                    "stage": n.get("stage"),
                    "label": n.get("label"),
                    "round": n.get("round"),
                    "state": n.get("state"),
                    "inputs": list(n.get("inputs", [])),
                    "n": n.get("n"),
                    "dataset": n.get("dataset"),
                    "policy": n.get("policy"),
                }
            )
        schema = pa.schema(
            [
                ("id", pa.string()),
                ("stage", pa.string()),
                ("label", pa.string()),
                ("round", pa.int64()),
                ("state", pa.string()),
                ("inputs", pa.list_(pa.string())),
                ("n", pa.int64()),
                ("dataset", pa.string()),
                ("policy", pa.string()),
            ]
        )
        return pa.Table.from_pylist(rows, schema=schema)

    def _names(self) -> dict:
        return dict(self.index.get("names", {}))

    def datasets(self) -> dict:
        """Every pairs dataset of the run: ``{"<set>/<dataset>": pyarrow.Table}``, where set is
        ``n16`` (a sweep over ``[pairs].n``) or ``all``, with ``round<k>/`` first in a run of
        several rounds."""
        out = {}
        for name, target in sorted(self._names().items()):
            if "pairs/" not in name and not name.startswith("pairs"):
                continue
            folder = self.path / target
            if not folder.is_dir():
                continue
            prefix = name.split("pairs/", 1)[1] if "pairs/" in name else name
            head = name.split("pairs/", 1)[0]
            for f in sorted(folder.iterdir()):
                if f.suffix in (".jsonl", ".parquet") and not f.name.startswith("."):
                    out[f"{head}{prefix}/{f.stem}"] = _read_table(f)
        return out

    def metrics(self) -> dict:
        """Each policy's training metrics (one row per logged step): ``{policy: pyarrow.Table}``."""
        out = {}
        for name, target in sorted(self._names().items()):
            if "metrics/" in name and name.endswith(".jsonl"):
                f = self.path / target
                if f.is_file():
                    key = name.split("metrics/", 1)[1][: -len(".jsonl")]
                    head = name.split("metrics/", 1)[0]
                    out[f"{head}{key}"] = _read_table(f)
        return out

    def eval(self) -> "pyarrow.Table | None":  # noqa: F821
        """The eval table (``eval.json``: one row per policy), or None before the eval ran."""
        import pyarrow as pa

        f = self.path / "eval.json"
        if not f.is_file():
            return None
        rows = json.loads(f.read_text())
        return pa.Table.from_pylist(rows)


def _read_table(f: Path) -> "pyarrow.Table":  # noqa: F821
    import pyarrow as pa

    if f.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(f)
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return pa.Table.from_pylist(rows)
