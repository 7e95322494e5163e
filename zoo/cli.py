"""What the zoo's and the exporters' commands share: argparse value types (usage errors name the bad value), the
one-line text of an error, and writing an output file or folder whole."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
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


@contextlib.contextmanager
def written_whole_folder(path: str | os.PathLike, copy_existing: bool = False):
    """Yield a new folder beside ``path`` (holding a copy of ``path``'s files with ``copy_existing``) that replaces the
    folder ``path`` only when the block completes; an error or an interruption removes it and leaves an existing
    ``path`` as it was. The swap is two renames on one file system (the old folder is removed after)."""
    path = os.path.abspath(path)
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{base}.staged-", dir=parent)
    try:
        if copy_existing and os.path.isdir(path):
            shutil.copytree(path, stage, dirs_exist_ok=True)
        yield stage
        os.chmod(stage, 0o755)                             # mkdtemp's 0700 would hide it from other users
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if os.path.isdir(path):
        old = tempfile.mkdtemp(prefix=f".{base}.replaced-", dir=parent)
        os.replace(path, old)                              # onto the empty folder just made
    os.replace(stage, path)
    if old:
        shutil.rmtree(old)
