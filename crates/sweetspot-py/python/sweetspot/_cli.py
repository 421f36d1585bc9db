"""The ``sweetspot`` command of the wheel: the same program as the Rust binary, run in this
process on ``sys.argv``."""

from __future__ import annotations

import signal
import sys


def main() -> None:
    """Runs the command line and exits with its code.

    Ctrl-C ends the process at once, as it ends the binary (Python's own handler would only
    raise ``KeyboardInterrupt`` once control came back from Rust): sweetspot's stages are made
    to be killed, keeping finished work and resumable partial outputs for the next run.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from . import _native

    sys.exit(_native.main(["sweetspot", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
