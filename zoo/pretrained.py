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
   The probe (1.5 s, ``ZOO_HUB_PROBE_TIMEOUT``) keeps a machine without network from hanging on download timeouts; it
   connects where huggingface_hub's own requests would go: to the proxy that ``HTTPS_PROXY`` / ``HTTP_PROXY`` /
   ``ALL_PROXY`` name for the endpoint (``HF_ENDPOINT``) unless ``NO_PROXY`` exempts it, else to the endpoint.
   The bundled copy is the main revision's: a ``revision=`` pinned to another one is fetched (or found in the cache)
   or is an error naming it, never served the bundled weights. ``force_download=True`` needs the Hub: with it
   unreachable (or ``local_files_only=True``) it is an error, never the cached or bundled files.

A cached snapshot that lacks the model's files -- ``config.json`` alone, as ``AutoConfig.from_pretrained(id)`` or
``huggingface_hub.ModelCard.load(id)`` leave it; weights cut short -- is no model: it never shadows the bundled copy.
When the Hub cannot complete it, the bundled copy stands in (with a warning) if the snapshot's ``config.json`` (if it
has one) is the bundled one's; a snapshot of another config (the Hub's main has moved on since this package was built)
is an ``OSError`` saying what to do, since its weights are not the bundled ones. For any other repo it is an
``OSError`` naming what is missing. The snapshot itself is never written to. (A snapshot without ``config.json``,
README.md alone, still stops ``AutoModel``, which reads ``config.json`` before any zoo code runs; see below.)

Bundled names resolve under the project's organisation (``ZOO_HUB_ORG``, default ``ssm-rec-zoo``) and under the
placeholder organisation ``org`` used in the docs (``from_pretrained("org/mamba4rec-ml1m")``).

The zoo's own loaders (``zoo.SeqRecPreTrainedModel.from_pretrained``, ``zoo.models.*Model.from_pretrained``, the
command-line tools) fall back to the bundled copies themselves, for any ``cache_dir=``. transformers'
``AutoModel.from_pretrained`` / ``AutoConfig.from_pretrained`` read ``config.json`` through huggingface_hub before
any zoo code runs, so they find a bundled model offline only in a Hugging Face cache that holds it: ``import zoo``
seeds the default cache (``HF_HUB_CACHE``: ``$HF_HOME/hub``, by default ``~/.cache/huggingface/hub``) with a
snapshot of each bundled model under both organisations (``ssm-rec-zoo/<name>`` and ``org/<name>``, each marked
``.zoo-bundled``; about 2 MB per model and organisation, about 32 MB for the 8 models of this release). The seeded
folders get the umask's mode, as ``mkdir`` gives (a shared ``HF_HOME`` stays readable to its other users). A copy of
an earlier release's bundled model is removed by a later ``import zoo`` once ``refs/main`` has left it for an hour
(the seed's own copies only; the hour lets a process that was loading it finish). A repo whose ``refs/main`` points
at a real download is left alone; one deleted (``hf cache rm``) is seeded again on the next
``import zoo``; a cache that cannot be written (read-only) is left unseeded without a word (logged at debug level).
``ZOO_NO_CACHE_SEED=1`` turns the seeding off. With it off, or with ``AutoModel.from_pretrained(id,
cache_dir=DIR)``, seed that cache once with :func:`seed_hf_cache` (``python -c "from zoo.pretrained import
seed_hf_cache; seed_hf_cache('DIR')"``, no argument for the default cache), or load with the zoo's classes.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import socket
import stat
import time
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


#: the mark in each snapshot :func:`seed_hf_cache` writes: a file of that name holding :data:`SEED_MARK_TEXT`
SEED_MARK = ".zoo-bundled"
SEED_MARK_TEXT = "copied from the ssm-rec-zoo package\n"
#: the seed's folders beside a repo's ``snapshots/``: a copy being written, an earlier copy being removed
SEED_STAGE_PREFIX = ".zoo-seed-"
#: an earlier copy the seed wrote is removed once ``refs/main`` has pointed elsewhere, and the copy has existed, for
#: this long (seconds): a process that read the ref before it moved may still be opening that copy's files
SEED_PRUNE_AFTER_S = 3600.0


def _content_commit(folder: pathlib.Path, skip: tuple[str, ...] = ()) -> str:
    import hashlib

    h = hashlib.sha1()
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name not in skip:
            h.update(f.name.encode())
            h.update(hashlib.sha1(f.read_bytes()).digest())
    return h.hexdigest()


def _own_seed(snap: pathlib.Path) -> bool:
    """Whether the snapshot folder ``snap`` is a copy :func:`seed_hf_cache` wrote, whole and unchanged: regular files
    only (a Hub download's are links into ``blobs/``), the mark among them with the seed's text, and named by the
    content hash of the others (:func:`_content_commit`; a Hub download is named by its git commit)."""
    try:
        if snap.is_symlink() or not snap.is_dir():
            return False
        entries = list(os.scandir(snap))
        if not all(e.is_file(follow_symlinks=False) for e in entries) or SEED_MARK not in {e.name for e in entries}:
            return False
        if (snap / SEED_MARK).read_text(encoding="utf-8") != SEED_MARK_TEXT:
            return False
        return _content_commit(snap, skip=(SEED_MARK,)) == snap.name
    except (OSError, UnicodeDecodeError):
        return False


def _prune_old_seeds(repo: pathlib.Path, keep: set[str], ref_mtime: float) -> list[str]:
    """Remove the copies that earlier seeds wrote in ``repo/snapshots/``, other than those named in ``keep`` (the
    commit ``refs/main`` points at, the one being written), and return their names. Only copies :func:`_own_seed`
    tells as the seed's (never a Hub download), and only when ``refs/main`` was last written (``ref_mtime``) and the
    copy made at least :data:`SEED_PRUNE_AFTER_S` ago: transformers reads ``config.json`` by the ref's commit, builds
    the model, then opens the weights by that same commit, so the copy the ref has just left is kept for a later
    seed. Each copy is renamed out of ``snapshots/`` first (a reader then finds it whole or not at all), then
    deleted; one that cannot be (another user's, a file open on Windows) is kept."""
    now = time.time()
    if now - ref_mtime < SEED_PRUNE_AFTER_S:
        return []
    removed = []
    try:
        entries = list(os.scandir(repo / "snapshots"))
    except OSError:
        return removed
    for e in entries:
        if e.name in keep or e.name.startswith("."):
            continue
        snap = pathlib.Path(e.path)
        gone = repo / f"{SEED_STAGE_PREFIX}{os.getpid()}-old-{e.name}"   # zoo.cli.remove_stale_stages' names
        try:
            if now - e.stat(follow_symlinks=False).st_mtime < SEED_PRUNE_AFTER_S \
                    or not os.access(snap, os.W_OK | os.X_OK) or not _own_seed(snap):
                continue
            os.rename(snap, gone)
        except OSError as err:
            logger.debug("kept the earlier seeded copy %s: %s", snap, err)
            continue
        shutil.rmtree(gone, ignore_errors=True)
        removed.append(e.name)
    return removed


def _open_up(snap: pathlib.Path) -> None:
    """Give a copy that an earlier release seeded private (``tempfile.mkdtemp``'s 0700, which left a shared cache
    unreadable to everyone else) the umask's mode, when it is this user's."""
    try:
        st = snap.stat()
        if stat.S_IMODE(st.st_mode) != 0o700 or not hasattr(os, "geteuid") or st.st_uid != os.geteuid():
            return
        from .cli import _umask

        if 0o777 & ~_umask() != 0o700:
            os.chmod(snap, 0o777 & ~_umask())
    except OSError as e:
        logger.debug("could not open up the seeded copy %s: %s", snap, e)


def _place_snapshot(folder: pathlib.Path, repo: pathlib.Path, snap: pathlib.Path) -> None:
    """Copy the bundled ``folder`` to the snapshot folder ``snap`` with the seed's mark, unless it is there: staged
    beside it (:func:`zoo.cli.staging_folder`, which also removes the stages of seeds that were killed) and renamed
    into place, with the umask's mode (``mkdtemp`` makes the stage 0700)."""
    from .cli import _umask, staging_folder

    if (snap / SEED_MARK).exists():
        return
    snap.parent.mkdir(parents=True, exist_ok=True)
    with staging_folder(repo, SEED_STAGE_PREFIX) as stage:
        for f in folder.iterdir():
            if f.is_file():
                shutil.copyfile(f, stage / f.name)
        (stage / SEED_MARK).write_text(SEED_MARK_TEXT, encoding="utf-8")
        os.chmod(stage, 0o777 & ~_umask())
        if snap.is_dir():                 # a copy an older version left cut short (no mark)
            shutil.rmtree(snap)
        os.replace(stage, snap)


def seed_hf_cache(cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Place the bundled models in the Hugging Face cache as ``<org>/<name>`` snapshots.

    This is what lets the *normal* machinery (``AutoConfig``/``AutoModel.from_pretrained("org/name")``,
    ``HF_HUB_OFFLINE=1``, ``hf_hub_download(..., local_files_only=True)``) find them without network: a request that
    cannot reach the Hub falls back to the cache. A repo whose ``refs/main`` already points at a real download is
    left alone. Called on ``import zoo``; failures (read-only cache) are logged and ignored.

    Each snapshot is copied into a folder beside it and renamed into place with its ``.zoo-bundled`` mark, and the
    ref is written beside and renamed over: a process killed mid-way leaves no snapshot cut short that looks
    current, and no empty ``refs/main`` (one pointing at no snapshot, as such a kill used to leave, looked like a real
    download and was never seeded again). The folders it makes get the umask's mode, as ``mkdir`` gives (a shared
    ``HF_HOME`` stays readable to the others); a seeded copy that an earlier release made private (0700) is given it
    too. A copy of an earlier version of the bundled model is removed by a later seed, once the ref has left it and it
    has existed for :data:`SEED_PRUNE_AFTER_S` (:func:`_prune_old_seeds`: only the seed's own copies).
    """
    from huggingface_hub import constants

    cache = pathlib.Path(cache_dir or constants.HF_HUB_CACHE)
    written = []
    for name, folder in bundled_models().items():
        commit = None
        for org in (HUB_ORG, *PLACEHOLDER_ORGS):
            repo = cache / f"models--{org}--{name}"
            ref = repo / "refs" / "main"
            try:
                current, ref_mtime = "", None
                if ref.exists():
                    current = ref.read_text(encoding="utf-8").strip()
                    ref_mtime = ref.stat().st_mtime
                    snap = repo / "snapshots" / current
                    ours = (snap / SEED_MARK).exists()
                    if current and snap.is_dir() and not ours:
                        continue  # a real Hub download
                    if ours and (commit := commit or _content_commit(folder)) == current:
                        _open_up(snap)
                        _prune_old_seeds(repo, {current}, ref_mtime)
                        continue  # our copy is current
                commit = commit or _content_commit(folder)
                snap = repo / "snapshots" / commit
                _place_snapshot(folder, repo, snap)
                ref.parent.mkdir(parents=True, exist_ok=True)
                tmp_ref = ref.with_name(f".main.{os.getpid()}")
                tmp_ref.write_text(commit, encoding="utf-8")
                os.replace(tmp_ref, ref)
                # a seed of another version may have pruned the copy between its check and the ref's switch
                _place_snapshot(folder, repo, snap)
                _open_up(snap)
                if ref_mtime is not None:      # the copies the ref had left before it moved here
                    _prune_old_seeds(repo, {current, commit}, ref_mtime)
                written.append(f"{org}/{name}")
            except OSError as e:
                logger.debug("could not seed the HF cache with %s: %s", name, e)
    return written


# ------------------------------------------------------------------------------------------------ resolve
def _offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def probe_target() -> tuple[str | None, int, str]:
    """``(host, port, what)``: where :func:`hub_reachable` connects, as huggingface_hub's requests would go -- the proxy
    the environment names for the endpoint (``HTTPS_PROXY`` for an https endpoint, ``HTTP_PROXY`` for http, else
    ``ALL_PROXY``; upper or lower case, as ``urllib.request.getproxies`` and httpx read them), unless ``NO_PROXY``
    exempts the endpoint's host, else the endpoint (``HF_ENDPOINT``) itself. ``what`` names it for messages."""
    from urllib.request import getproxies, proxy_bypass_environment

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    proxies = getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and url.hostname and not proxy_bypass_environment(url.hostname, proxies):
        purl = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        try:
            pport = purl.port
        except ValueError:                      # a malformed port: the connection fails, as httpx's would
            pport = 0
        name = next((f"{k.upper()}_PROXY" for k in (url.scheme, "all") if proxies.get(k) == proxy), "proxy")
        return purl.hostname, pport or (443 if purl.scheme == "https" else 80), f"the proxy {proxy} ({name})"
    try:
        port = url.port
    except ValueError:
        port = 0
    port = port or (443 if url.scheme == "https" else 80)
    return url.hostname, port, f"{url.hostname}:{port}"


def hub_reachable(timeout: float | None = None) -> bool:
    """Quick TCP probe toward the Hub (so an offline machine never waits on HTTP timeouts): ``False`` at once in
    offline mode (``HF_HUB_OFFLINE``), else whether a connection to :func:`probe_target` (the proxy, when the
    environment names one for the endpoint) opens within ``timeout`` seconds: the argument when given, else
    ``ZOO_HUB_PROBE_TIMEOUT``, else 1.5 (the zoo's own callers pass none, so the setting decides). Either must be
    a finite number of seconds > 0: else a ``ValueError`` naming the argument or the setting and its value (checked
    when a probe is made: offline mode makes none, and reads neither)."""
    import math

    if _offline_mode():
        return False
    if timeout is not None:
        what, value = "hub_reachable(timeout=...)", timeout
    else:
        what, value = "ZOO_HUB_PROBE_TIMEOUT", os.environ.get("ZOO_HUB_PROBE_TIMEOUT", "1.5")
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        timeout = math.nan
    if not (isinstance(value, (int, float, str)) and not isinstance(value, bool) and 0 < timeout < math.inf):
        raise ValueError(f"{what}={value!r}: not a number of seconds > 0 (how long the probe of the Hub waits)")
    host, port, _ = probe_target()
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _unreachable_why() -> str:
    """Why :func:`hub_reachable` said no, for messages (without probing again)."""
    if _offline_mode():
        return ("the Hugging Face Hub is not reachable (offline mode: "
                f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')})")
    timeout = os.environ.get("ZOO_HUB_PROBE_TIMEOUT", "1.5")
    return (f"the Hugging Face Hub is not reachable (no connection to {probe_target()[2]} within {timeout} s; "
            "ZOO_HUB_PROBE_TIMEOUT sets how long to wait)")


def model_files_missing(folder: str | os.PathLike) -> str | None:
    """What a model folder lacks to be loaded (``"config.json"``; ``"model.safetensors"`` or ``"weight shards a, b"``,
    and the ``item_vocab_file`` its config names, joined by "and"), ``None`` when it holds ``config.json``, its
    weights (``model.safetensors``, or every shard of ``model.safetensors.index.json``) and that vocabulary (an
    unreadable config or index is the loader's to name). A link into a blob that is gone counts as missing."""
    folder = os.fspath(folder)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return "config.json"
    missing = []
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        pass
    elif not os.path.isfile(index):
        missing.append("model.safetensors")
    else:
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted({str(v) for v in json.load(f)["weight_map"].values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            shards = []                         # an unreadable index is the loader's to name
        lost = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if lost:
            missing.append(f"weight shards {', '.join(lost)}")
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            vocab = json.load(f).get("item_vocab_file")
    except (OSError, ValueError, AttributeError, RecursionError):
        vocab = None                            # an unreadable config.json is the loader's to name
    if isinstance(vocab, str) and vocab and not os.path.isfile(os.path.join(folder, vocab)):
        missing.append(vocab)
    return " and ".join(missing) or None


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
    repo (or local folder) that holds the model; a ``ValueError`` names it when there is none. ``force_download=True``
    with the Hub unreachable is an ``OSError`` (a ``ValueError`` in offline mode or with ``local_files_only=True``),
    and a forced download that fails is never answered by the bundled copy. A snapshot without the model's files
    (:func:`model_files_missing`) is never returned: the bundled copy of the same config, or an ``OSError`` naming
    them. Download errors (a proxy's too, which huggingface_hub raises as httpx errors) become ``OSError``.
    """
    p = os.fspath(name_or_path)
    if os.path.isdir(p):
        if not subfolder:
            hint = subfolder_hint(p)
            if hint:                                # not transformers' "no file named config.json" alone
                raise OSError(f"cannot load {p!r}: the folder lacks config.json; {hint}")
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
    if force_download and local_files_only:
        raise ValueError(f"cannot load {p!r}: force_download=True downloads from the Hub, local_files_only=True "
                         "forbids it; give one of them")
    if local_files_only or not hub_reachable():
        why = "local_files_only=True was given" if local_files_only else _unreachable_why()
        if force_download:      # a re-download asked for: never the cached (or bundled) files instead, unsaid
            raise (ValueError if _offline_mode() else OSError)(
                f"cannot load {p!r}{at}: force_download=True needs the Hub, and {why}; leave "
                "force_download out to load the cached (or bundled) copy")
        try:  # the normal machinery, cache only
            folder = snapshot_download(**download, local_files_only=True)
        except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as e:
            partial = getattr(e, "snapshot_path", None) if _is_incomplete(e) else None
            if not (partial and os.path.isdir(partial)):
                if bundled is not None:
                    logger.info("%s: using the bundled copy of %s at %s", why, p, bundled)
                    return _subfolder(str(bundled), subfolder, f"the bundled copy of {p!r}")
                if at:
                    raise OSError(f"cannot load {p!r}{at}: {why} and that revision is not in the local cache (the "
                                  f"bundled copy, if {p!r} has one, is the main revision's, not {asked!r})") from None
                raise OSError(f"cannot load {p!r}: no such local folder, {why}, it is not in the local cache, and it "
                              f"is not a bundled model (bundled: {sorted(bundled_models())})") from None
            folder = partial    # huggingface_hub's listing says files are missing: judged by those a model needs
        return _whole_snapshot(folder, subfolder, p, at, bundled, f"which cannot be downloaded now ({why})")
    try:
        folder = snapshot_download(**download, force_download=force_download)
    except (RepositoryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, *_network_errors()) as e:
        if bundled is not None and not force_download:
            logger.warning("could not download %s from the Hub (%s): using the bundled copy at %s", p, e, bundled)
            return _subfolder(str(bundled), subfolder, f"the bundled copy of {p!r}")
        if force_download:
            raise OSError(f"cannot load {p!r}{at}: force_download=True, and the download failed: "
                          f"{' '.join(str(e).split())}") from e
        if at or not isinstance(e, OSError):    # a proxy / transport error is no OSError: one line naming it
            text = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            raise OSError(f"cannot load {p!r}{at}: {' '.join(text.split())}") from e
        raise
    # huggingface_hub answers from the cache when the Hub fails mid-way: with force_download, no bundled stand-in
    return _whole_snapshot(folder, subfolder, p, at, None if force_download else bundled,
                           "which the download did not bring (the Hub's repo lacks them, or huggingface_hub could not "
                           "reach the Hub and answered from the cache)")


def _network_errors() -> tuple[type[BaseException], ...]:
    """The transport errors (connection, proxy, timeout) of the HTTP clients huggingface_hub uses that are no
    ``OSError`` (httpx, httpx2; requests' errors are): huggingface_hub re-raises a proxy error as is."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _is_incomplete(e: BaseException) -> bool:
    """huggingface_hub's ``IncompleteSnapshotError`` (2.x: a cached snapshot its tree listing shows is partial)."""
    from huggingface_hub import errors

    kind = getattr(errors, "IncompleteSnapshotError", None)
    return kind is not None and isinstance(e, kind)


def _whole_snapshot(folder: str, subfolder: str | None, p: str, at: str, bundled: pathlib.Path | None,
                    gap: str) -> str:
    """``folder`` (a snapshot, ``subfolder`` inside it) when it holds the model's files; else the bundled copy when
    there is one of the same config (see the module docstring), else an ``OSError`` naming what is missing and
    (``gap``, a clause) why it was not fetched."""
    target = _subfolder(folder, subfolder, f"{p!r}{at}")
    missing = model_files_missing(target)
    if missing is None:
        return target
    hint = "" if subfolder else subfolder_hint(target)
    if hint:                        # the repo holds its model in a subfolder: no partial download, no bundled stand-in
        raise OSError(f"cannot load {p!r}{at}: its snapshot {target} lacks config.json at the top; {hint}")
    if bundled is not None:
        stand_in = _subfolder(str(bundled), subfolder, f"the bundled copy of {p!r}")
        if _same_config(target, stand_in):
            logger.warning("the cached snapshot of %s at %s lacks %s, %s: using the bundled copy at %s", p, target,
                           missing, gap, stand_in)
            return stand_in
        raise OSError(f"cannot load {p!r}: its cached snapshot {target} lacks {missing}, {gap}; its config.json "
                      "is not the bundled copy's (the Hub's main has changed since this package was built), so the "
                      "bundled weights cannot stand in. Load it once with the Hub reachable, or delete that snapshot "
                      f"(hf cache rm model/{p}) to use the bundled copy")
    raise OSError(f"cannot load {p!r}{at}: its cached snapshot {target} lacks {missing}, {gap}; a partial download "
                  "(AutoConfig.from_pretrained and ModelCard.load fetch config.json or README.md alone)")


def _same_config(snapshot: str, bundled: str) -> bool:
    """Whether ``snapshot`` has no ``config.json`` or the same one (as JSON) as the bundled folder."""
    mine = os.path.join(snapshot, "config.json")
    if not os.path.isfile(mine):
        return True
    try:
        with open(mine, encoding="utf-8") as a, open(os.path.join(bundled, "config.json"), encoding="utf-8") as b:
            return json.load(a) == json.load(b)
    except (OSError, ValueError, RecursionError):
        return False


def model_subfolders(folder: str | os.PathLike, depth: int = 3) -> list[str]:
    """The folders below ``folder`` (``/``-separated relative paths, sorted; at most ``depth`` levels down, hidden
    ones left out) that hold a ``config.json``: where a repo or folder without one at its top keeps its model."""
    folder = os.fspath(folder)
    found = []
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        level = 0 if rel == "." else rel.count(os.sep) + 1
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if level < depth else []
        if level and "config.json" in files:
            found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def subfolder_hint(folder: str | os.PathLike) -> str:
    """For a ``folder`` without ``config.json`` at its top whose subfolders hold one (:func:`model_subfolders`): the
    clause saying where the model files are and what to pass (``--subfolder X``, ``subfolder="X"``); else ``""``."""
    if os.path.isfile(os.path.join(os.fspath(folder), "config.json")):
        return ""
    subs = model_subfolders(folder)
    if not subs:
        return ""
    where = (f"subfolder {subs[0]!r}" if len(subs) == 1
             else "subfolders " + ", ".join(repr(x) for x in subs[:6]) + (", ..." if len(subs) > 6 else ""))
    return (f"the model files are in {where}: pass --subfolder {subs[0] if len(subs) == 1 else 'DIR'} "
            f"(from_pretrained(..., subfolder={subs[0] if len(subs) == 1 else 'DIR'!r}))")


class SubfolderNotFound(ValueError):
    """The model folder (or Hub snapshot) has no such ``subfolder``."""


def _subfolder(folder: str, subfolder: str | None, what: str) -> str:
    """``folder/subfolder``, or ``folder`` when no ``subfolder`` is given; a ``ValueError`` naming ``subfolder`` and
    ``what`` was searched when there is no such folder (not transformers' "no file named model.safetensors")."""
    if not subfolder:
        return folder
    path = os.path.join(folder, subfolder)
    if not os.path.isdir(path):
        raise SubfolderNotFound(f"{what} has no subfolder {subfolder!r} (subfolder=, a command's --subfolder, names "
                                "the folder inside it that holds config.json and model.safetensors)")
    return path


# ------------------------------------------------------------------------------- command-line model options
def add_hub_options(parser, option: str = "--model") -> None:
    """Add ``--revision`` and ``--subfolder`` to a command's ``parser``: for ``option`` (a Hub id or a folder) what
    ``from_pretrained``'s ``revision=`` / ``subfolder=`` say; :func:`hub_options` reads them back."""
    parser.add_argument("--revision", default=None, metavar="REV",
                        help=f"the revision (branch, tag or commit) of {option} when it is a Hub id (default: main; "
                             "the bundled copy stands in for main only)")
    parser.add_argument("--subfolder", default="", metavar="DIR",
                        help=f"the folder inside {option} (a Hub repo or a local folder) that holds config.json and "
                             "model.safetensors (default: its top level)")


def hub_options(args, option: str = "--model") -> dict:
    """``{"revision": ..., "subfolder": ...}`` from the options :func:`add_hub_options` added, the keyword arguments of
    :func:`resolve_pretrained` (``resolve_pretrained(args.model, **hub_options(args))``). A ``ValueError`` (the
    command's usage error) for an empty ``--revision``, or one given for a local folder (which has no revisions)."""
    revision = getattr(args, "revision", None)
    name = getattr(args, option.lstrip("-").replace("-", "_"), None)
    if revision is not None:
        if not revision.strip():
            raise ValueError("--revision needs a branch, tag or commit of the Hub repo")
        if name is not None and os.path.isdir(os.fspath(name)):
            raise ValueError(f"--revision {revision}: {option} {name} is a local folder, which has no revisions "
                             "(--revision applies to a Hub id)")
    return {"revision": revision, "subfolder": getattr(args, "subfolder", "") or ""}
