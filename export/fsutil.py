"""File helpers shared by the zoo and its exporters that import the standard library only: ``import zoo`` loads torch
and transformers, which ``export.triton --onnx`` and ``export.build_plugins`` run without, so these cannot live in
the ``zoo`` package (:mod:`zoo.cli` holds the rest, for the commands that have torch loaded anyway)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Iterator


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """The SHA-256 hex digest of the file ``path``, read ``block`` bytes at a time (a model's weights or a TensorRT
    engine is never held in memory whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


#: the lock file of a build folder (:func:`build_lock`)
BUILD_LOCK_FILE = ".zoo-build.flock"


@contextlib.contextmanager
def build_lock(folder: str | os.PathLike, required: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``folder/.zoo-build.flock`` for a build into (or a load from) ``folder``:
    builds into one folder run one at a time (concurrent processes, test workers), and none reads what another is
    still writing; the kernel drops the lock when its holder dies. Yields whether the lock is held: not on a system
    without ``fcntl`` (nothing is held there), nor, unless ``required``, when the lock file cannot be opened (a folder
    this user cannot write in; with ``required`` that ``OSError`` is raised)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield False
        return
    try:
        f = open(os.path.join(folder, BUILD_LOCK_FILE), "a")
    except OSError:
        if required:
            raise
        yield False
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield True
