"""``python -m sweetspot``: the ``sweetspot`` command."""

from ._cli import main

main()
