"""Resolve ``from_pretrained`` names: local folders, Hub ids, and the copies bundled with this package."""

from __future__ import annotations

import os


def resolve_pretrained(name_or_path: str | os.PathLike) -> str:
    """Return a local folder holding ``config.json`` for ``name_or_path``.

    A local folder is used as is. A Hub id (``org/name``) is downloaded with ``huggingface_hub.snapshot_download``.
    """
    p = os.fspath(name_or_path)
    if os.path.isdir(p):
        return p
    if os.path.exists(p):
        raise ValueError(f"{p} is a file; from_pretrained expects a folder with config.json and model.safetensors")
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id=p, allow_patterns=["*.json", "*.safetensors", "*.md"])
