"""Type stubs of the native module (Rust, PyO3). Use the functions of ``sweetspot`` instead."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

__version__: str

class SweetspotError(Exception):
    """An error of sweetspot: the command line's message, and its exit code."""

    exit_code: int

class ArrowStream:
    """A table owned by Rust, exported through the Arrow PyCapsule interface."""

    def __arrow_c_stream__(self, requested_schema: Optional[object] = None) -> object: ...
    def buffer_addresses(self) -> Dict[str, List[List[int]]]: ...
    def __len__(self) -> int: ...

def main(argv: Sequence[str]) -> int:
    """The ``sweetspot`` command on ``argv`` (``argv[0]`` is the program's name); the exit code."""

def pairs(
    scored: Any, run: str, pairs: str, quiet: bool = True
) -> Tuple[Dict[str, ArrowStream], str]:
    """The pairs stage on a table or path; ``run`` and ``pairs`` are the recipe's tables as JSON."""

def stats(scored: Any, input_layout: str = "auto", n: Optional[int] = None) -> str:
    """The pool statistics of one input, as JSON."""

def buffer_addresses(scored: Any) -> Dict[str, List[List[int]]]:
    """Each column's buffer addresses per record batch, as imported (a zero-copy test hook)."""
