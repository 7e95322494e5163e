"""Resolution of ``from_pretrained`` names and the bundled model copies (imported by ``import zoo``; the card and
publishing tools built on it are in :mod:`zoo.hub`).

Resolution of a name given to ``from_pretrained``:

1. an existing local folder is used as is; a name whose first part is an existing folder, or one of the folders
   the docs write runs and cards into (:data:`LOCAL_FOLDER_NAMES`: ``runs/x``), is a local path that does not exist
   (a ``ValueError`` saying so, the Hub not asked);
2. a Hub id ``org/name`` goes through the normal Hugging Face machinery (``huggingface_hub.snapshot_download``,
   which honours ``HF_HOME``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the local cache);
3. when the Hub cannot be reached (offline mode, no network, a quick connection probe fails) or does not have the
   repo, and ``name`` is one of the models bundled with this package (``hub_cards/<name>``), the bundled copy is used.
   The probe (1.5 s, ``ZOO_HUB_PROBE_TIMEOUT``) keeps a machine without network from hanging on download timeouts.
   The bundled copy is the main revision's: a ``revision=`` pinned to another one is fetched (or found in the cache)
   or is an error naming it, never served the bundled weights.

Bundled names resolve under the project's organisation (``ZOO_HUB_ORG``, default ``ssm-rec-zoo``) and under the
placeholder organisation ``org`` used in the docs (``from_pretrained("org/mamba4rec-ml1m")``).
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import socket
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

HUB_ORG = os.environ.get("ZOO_HUB_ORG", "ssm-rec-zoo")
PLACEHOLDER_ORGS = ("org",)
#: first parts of a ``from_pretrained`` name that make it a local path even when that folder does not exist: the
#: folders the docs write runs and cards into (``runs/<run>``, ``hub_cards/<name>``), never asked of the Hub
LOCAL_FOLDER_NAMES = ("runs", "hub_cards")


# ------------------------------------------------------------------------------------------- bundled copies
def bundled_dirs() -> list[pathlib.Path]:
    """Folders searched for bundled model folders: $ZOO_BUNDLED_DIR, the checkout's hub_cards/, package data."""
    dirs = []
    if os.environ.get("ZOO_BUNDLED_DIR"):
        dirs.append(pathlib.Path(os.environ["ZOO_BUNDLED_DIR"]))
    here = pathlib.Path(__file__).resolve().parent
    dirs.append(here.parent / "hub_cards")      # source checkout / editable install
    dirs.append(here / "bundled")                # wheel install (hub_cards packaged as zoo/bundled)
    return [d for d in dirs if d.is_dir()]


def bundled_models() -> dict[str, pathlib.Path]:
    """``{name: folder}`` of every bundled model folder (one holding config.json + model.safetensors; not a hidden
    one: ``.NAME.staged-*`` is a card writer's stage, left by one that was killed, never a model)."""
    out = {}
    for d in bundled_dirs():
        for sub in sorted(d.iterdir()):
            if sub.name.startswith("."):
                continue
            if (sub / "config.json").exists() and (sub / "model.safetensors").exists():
                out.setdefault(sub.name, sub)
    return out


def _bundled_for(repo_id: str) -> pathlib.Path | None:
    org, _, name = repo_id.partition("/")
    if not name or org not in (HUB_ORG, *PLACEHOLDER_ORGS):
        return None
    return bundled_models().get(name)


def _content_commit(folder: pathlib.Path) -> str:
    import hashlib

    h = hashlib.sha1()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            h.update(hashlib.sha1(f.read_bytes()).digest())
    return h.hexdigest()


def seed_hf_cache(cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Place the bundled models in the Hugging Face cache as ``<org>/<name>`` snapshots.

    This is what lets the *normal* machinery (``AutoConfig``/``AutoModel.from_pretrained("org/name")``,
    ``HF_HUB_OFFLINE=1``, ``hf_hub_download(..., local_files_only=True)``) find them without network: a request that
    cannot reach the Hub falls back to the cache. A repo whose ``refs/main`` already points at a real download is
    left alone. Called on ``import zoo``; failures (read-only cache) are logged and ignored.

    Each snapshot is copied into a folder beside it and renamed into place with its ``.zoo-bundled`` mark, and the
    ref is written beside and renamed over: a process killed mid-way leaves no snapshot cut short that looks
    current, and no empty ``refs/main`` (one pointing at no snapshot, as such a kill used to leave, looked like a real
    download and was never seeded again).
    """
    import tempfile

    from huggingface_hub import constants

    cache = pathlib.Path(cache_dir or constants.HF_HUB_CACHE)
    written = []
    for name, folder in bundled_models().items():
        commit = None
        for org in (HUB_ORG, *PLACEHOLDER_ORGS):
            repo = cache / f"models--{org}--{name}"
            ref = repo / "refs" / "main"
            try:
                if ref.exists():
                    current = ref.read_text(encoding="utf-8").strip()
                    snap = repo / "snapshots" / current
                    ours = (snap / ".zoo-bundled").exists()
                    if current and snap.is_dir() and not ours:
                        continue  # a real Hub download
                    if ours and (commit or _content_commit(folder)) == current:
                        continue  # our copy is current
                commit = commit or _content_commit(folder)
                snap = repo / "snapshots" / commit
                if not (snap / ".zoo-bundled").exists():
                    snap.parent.mkdir(parents=True, exist_ok=True)
                    stage = pathlib.Path(tempfile.mkdtemp(prefix=".zoo-seed-", dir=repo))
                    try:
                        for f in folder.iterdir():
                            if f.is_file():
                                shutil.copyfile(f, stage / f.name)
                        (stage / ".zoo-bundled").write_text("copied from the ssm-rec-zoo package\n", encoding="utf-8")
                        if snap.is_dir():                 # a copy an older version left cut short (no mark)
                            shutil.rmtree(snap)
                        os.replace(stage, snap)
                    finally:
                        shutil.rmtree(stage, ignore_errors=True)
                ref.parent.mkdir(parents=True, exist_ok=True)
                tmp_ref = ref.with_name(f".main.{os.getpid()}")
                tmp_ref.write_text(commit, encoding="utf-8")
                os.replace(tmp_ref, ref)
                written.append(f"{org}/{name}")
            except OSError as e:
                logger.debug("could not seed the HF cache with %s: %s", name, e)
    return written


# ------------------------------------------------------------------------------------------------ resolve
def hub_reachable(timeout: float | None = None) -> bool:
    """Quick TCP probe of the Hub endpoint (so an offline machine never waits on HTTP timeouts)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    timeout = float(os.environ.get("ZOO_HUB_PROBE_TIMEOUT", timeout or 1.5))
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def weights_sha256(folder: str | os.PathLike) -> str | None:
    """The SHA-256 of ``folder/model.safetensors`` (``None`` when there is none): which weights a folder held, so that
    a run started from it can later tell whether the folder still holds them (:func:`zoo.hub.training_stages`)."""
    from export.fsutil import file_sha256        # streamed: the weights are never held in memory whole

    path = os.path.join(os.fspath(folder), "model.safetensors")
    if not os.path.isfile(path):
        return None
    return file_sha256(path)


#: ``from_pretrained`` keyword arguments that say which files to fetch: passed on to the Hub download
HUB_KWARGS = ("revision", "subfolder", "cache_dir", "token", "local_files_only", "force_download")


def resolve_pretrained(name_or_path: str | os.PathLike, *, revision: str | None = None, subfolder: str | None = "",
                       cache_dir: str | os.PathLike | None = None, token: bool | str | None = None,
                       local_files_only: bool = False, force_download: bool = False) -> str:
    """A local folder holding ``config.json`` for ``name_or_path`` (see the module docstring for the order).

    ``revision``, ``cache_dir``, ``token``, ``local_files_only`` and ``force_download`` go to the Hub download
    (``snapshot_download``), as ``from_pretrained`` takes them (a local folder has no revisions: they do not apply to
    it). The bundled copy is main's, so it stands in only when ``revision`` is None or ``"main"``: a pinned revision
    that cannot be fetched is an ``OSError`` naming it, never other weights. ``subfolder`` is the folder inside the
    repo (or local folder) that holds the model; a ``ValueError`` names it when there is none.
    """
    p = os.fspath(name_or_path)
    if os.path.isdir(p):
        return _subfolder(p, subfolder, p)
    if os.path.exists(p):
        raise ValueError(f"{p} is a file; from_pretrained expects a folder with config.json and model.safetensors")
    org, _, repo = p.partition("/")
    if p.count("/") != 1 or not org or not repo or org in (".", "..", "~"):
        hint = (f"; did you mean {HUB_ORG}/{p}, the bundled model?" if "/" not in p and p in bundled_models()
                else "")
        raise ValueError(f"{p!r} is neither a local folder (none exists there) nor a Hub id of the form "
                         f"'org/name'{hint}")
    if org in LOCAL_FOLDER_NAMES or (os.path.isdir(org) and org not in (HUB_ORG, *PLACEHOLDER_ORGS)):
        # a path of the user's (runs/<run>: zoo.train's --out), not a Hub id: the Hub is not asked
        where = (f"{org}/ holds no folder {repo!r}" if os.path.isdir(org) else f"there is no folder {org}/ here")
        raise ValueError(f"{p!r} is not an existing local folder ({where}, under {os.getcwd()}): a path of your own, "
                         "e.g. a zoo.train --out run, that does not exist (yet); the bundled models are "
                         f"{HUB_ORG}/<name>, <name> one of {sorted(bundled_models())}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    asked = getattr(revision, "initial", revision)  # transformers hands on a ResolvedRevision: what the caller asked
    at = "" if asked in (None, "main") else f" at revision {asked!r}"
    bundled = _bundled_for(p) if asked in (None, "main") else None   # the bundled copy is main's
    patterns = ["*.json", "*.safetensors", "*.md"]
    if subfolder:
        patterns = [f"{subfolder.strip('/')}/{x}" for x in patterns]
    download = dict(repo_id=p, allow_patterns=patterns, revision=revision, cache_dir=cache_dir, token=token)
    if local_files_only or not hub_reachable():
        try:  # the normal machinery, cache only
            return _subfolder(snapshot_download(**download, local_files_only=True), subfolder, f"{p!r}{at}")
        except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as e:
            if isinstance(e, SubfolderNotFound):
                raise
            why = "local_files_only=True was given" if local_files_only else "the Hugging Face Hub is not reachable"
            if bundled is not None:
                logger.info("%s: using the bundled copy of %s at %s", why, p, bundled)
                return _subfolder(str(bundled), subfolder, f"the bundled copy of {p!r}")
            if at:
                raise OSError(f"cannot load {p!r}{at}: {why} and that revision is not in the local cache (the "
                              f"bundled copy, if {p!r} has one, is the main revision's, not {asked!r})") from None
            raise OSError(f"cannot load {p!r}: no such local folder, {why}, it is not in the local cache, and it is "
                          f"not a bundled model (bundled: {sorted(bundled_models())})") from None
    try:
        folder = snapshot_download(**download, force_download=force_download)
    except (RepositoryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        if bundled is not None:
            logger.warning("could not download %s from the Hub (%s): using the bundled copy at %s", p, e, bundled)
            return _subfolder(str(bundled), subfolder, f"the bundled copy of {p!r}")
        if at:
            raise OSError(f"cannot load {p!r}{at}: {e}") from e
        raise
    return _subfolder(folder, subfolder, f"{p!r}{at}")


class SubfolderNotFound(ValueError):
    """The model folder (or Hub snapshot) has no such ``subfolder``."""


def _subfolder(folder: str, subfolder: str | None, what: str) -> str:
    """``folder/subfolder``, or ``folder`` when no ``subfolder`` is given; a ``ValueError`` naming ``subfolder`` and
    ``what`` was searched when there is no such folder (not transformers' "no file named model.safetensors")."""
    if not subfolder:
        return folder
    path = os.path.join(folder, subfolder)
    if not os.path.isdir(path):
        raise SubfolderNotFound(f"{what} has no subfolder {subfolder!r} (subfolder= names the folder inside it that "
                                "holds config.json and model.safetensors)")
    return path
