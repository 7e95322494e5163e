"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that produced a results file, as typed: ``python <script> <arguments>`` (``argv``: the arguments
    ``main`` was given, or ``sys.argv[1:]``), for the file's header, so that a rerun with other options says so."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", script, *map(shlex.quote, args)])
