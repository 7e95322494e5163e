"""What the zoo's and the exporters' commands share: argparse value types (usage errors name the bad value), the
one-line text of an error, and writing an output file whole."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile

from .data.split import parse_kcore


def positive_int(value: str) -> int:
    """An int >= 1 (counts, sizes, cut-offs); anything else is a usage error."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value!r}")
    return n


def kcore(value: str) -> int | None | str:
    """``--kcore``: ``auto``, ``none``/``0`` or ``k >= 1`` (:func:`zoo.data.split.parse_kcore`)."""
    try:
        return parse_kcore(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def error_text(e: Exception) -> str:
    """The text of an error for a one-line CLI message (a ``KeyError``'s ``str`` would add quotes)."""
    return e.args[0] if isinstance(e, KeyError) and e.args else str(e)


@contextlib.contextmanager
def written_whole(path: str | os.PathLike, newline: str | None = None):
    """Yield a text file opened beside ``path`` (its folder created) that replaces ``path`` only when the block
    completes; an error or an interruption removes it and leaves an existing ``path`` as it was."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", newline=newline) as f:
            yield f
        os.chmod(tmp, 0o644)                               # mkstemp's 0600 would hide it from other users
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
