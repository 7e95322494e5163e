"""Download a public benchmark's interactions from its owner's site, check them, and write them where the zoo reads.

    python -m zoo.download ml-1m --dir data/                  # -> data/ml-1m.ratings.dat (MovieLens' own ratings.dat)
    python -m zoo.download ml-100k --dir data/                # -> data/ml-100k.inter (u.data with a header)
    python -m zoo.download ml-1m --dir data/ --from-zip ml-1m.zip   # an archive downloaded by hand (no network)

The file is kept only when it loads as the benchmark (:data:`zoo.data.benchmarks.SOURCES`: its users, items and
interactions), so a truncated or different archive is refused and nothing is left behind; a file already in place is
checked, not downloaded again (``--overwrite`` replaces it). Without ``--dir`` the file goes to ``$ZOO_DATA_DIR``
when it is set (the folder the tests and bench scripts read), else ``./data``. Nothing else in the zoo downloads
data: every command reads the files it is given. The data stays under its owners' terms (MovieLens: GroupLens' usage
license).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from typing import Sequence

from .cli import made_folder
from .data.benchmarks import BENCHMARKS, SOURCES, Source, recognise_benchmark


class DownloadError(RuntimeError):
    """A download that could not be made or kept; the message says why and what to do instead."""


def fetch(url: str, path: str, timeout_s: float = 30.0, progress: bool = True) -> None:
    """Copy ``url`` to the file ``path`` (streamed; with ``progress`` a tqdm bar on stderr, shown only when stderr is
    a terminal: in a log file its redraws would garble the lines after it); :class:`DownloadError` when it cannot be
    reached or read."""
    from tqdm.auto import tqdm

    from . import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"ssm-rec-zoo/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r, open(path, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(url),
                      disable=None if progress else True) as bar:          # None: off when stderr is no terminal
                while chunk := r.read(1 << 16):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:      # no network, refused, timed out, HTTP errors
        raise DownloadError(f"cannot download {url} ({getattr(e, 'reason', None) or e}); download it by hand and "
                            "pass it with --from-zip") from None


def extract(archive: str, source: Source, path: str, label: str | None = None) -> None:
    """Write ``source.member`` of the zip ``archive`` to ``path`` (after ``source.header`` when it has none); errors
    name the archive as ``label`` (default: its path; a download's URL, not the deleted staging file)."""
    archive_name = label or archive
    try:
        with zipfile.ZipFile(archive) as z, z.open(source.member) as member, open(path, "wb") as out:
            if source.header:
                out.write(source.header.encode() + b"\n")
            while chunk := member.read(1 << 20):
                out.write(chunk)
    except KeyError:
        raise DownloadError(f"{archive_name}: no {source.member} in the archive (is it {source.url}?)") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:   # a truncated (EOFError) or damaged member
        raise DownloadError(f"{archive_name}: not a readable zip archive ({str(e).replace(archive, archive_name)})"
                            ) from None


def check(path: str, name: str, label: str | None = None) -> None:
    """:class:`DownloadError` unless the file ``path`` loads as benchmark ``name``'s (:data:`SOURCES`); errors name it
    as ``label`` (default: ``path``; a staged file by the archive member it came from)."""
    from .data import load_dataset

    source = SOURCES[name]
    want, _, title = BENCHMARKS[source.benchmark]
    shown = label or path
    try:
        ds = load_dataset(path, kcore=source.kcore)
    except ValueError as e:
        raise DownloadError(f"{shown} is not {title}: it does not read as an interaction file "
                            f"({str(e).replace(path, shown)})") from None
    except OSError as e:                                        # a folder there, no permission, ...
        raise DownloadError(f"{shown}: cannot read it ({e.strerror or e})") from None
    if recognise_benchmark(ds) != source.benchmark:
        got = (ds.n_users, ds.n_items, ds.n_interactions)
        raise DownloadError(f"{shown} is not {title}: it loads as {got[0]:,} users, {got[1]:,} items, "
                            f"{got[2]:,} interactions (k-core {source.kcore}), expected {want[0]:,} / {want[1]:,} / "
                            f"{want[2]:,}")


def download(name: str, folder: str, from_zip: str | None = None, overwrite: bool = False,
             progress: bool = True) -> tuple[str, bool]:
    """Benchmark ``name`` (a key of :data:`SOURCES`) into ``folder``; returns ``(path, written)``, ``written`` False
    when a checked copy was already there. The archive is fetched (or ``from_zip`` read), its interaction file
    written beside the target and checked (:func:`check`), then moved into place: a failure anywhere leaves
    ``folder`` as it was. Raises :class:`DownloadError` (a file in place that is not the benchmark is named, and kept,
    unless ``overwrite``)."""
    if name not in SOURCES:
        raise DownloadError(f"unknown benchmark {name!r}; downloadable: {sorted(SOURCES)}")
    source = SOURCES[name]
    path = os.path.join(folder, source.filename)
    if os.path.isdir(path):                                     # neither checked nor replaced by a file
        raise DownloadError(f"{path} is a folder, not the interaction file: move it away first")
    if os.path.exists(path) and not overwrite:
        try:
            check(path, name)
        except DownloadError as e:
            raise DownloadError(f"{e}; it was left as it is (--overwrite replaces it)") from None
        return path, False
    with made_folder(folder):                               # a failure removes the folders this call made
        with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=folder) as tmp:
            archive = from_zip
            if archive is None:
                archive = os.path.join(tmp, os.path.basename(source.url))
                fetch(source.url, archive, progress=progress)
            staged = os.path.join(tmp, source.filename)
            shown = from_zip or source.url                      # not the staging path, deleted when this fails
            extract(archive, source, staged, shown)
            check(staged, name, f"{source.member} of {shown}")
            try:
                os.replace(staged, path)
            except OSError as e:
                raise DownloadError(f"{path}: cannot write it ({e.strerror or e})") from None
    return path, True


#: the environment variable that names the data folder (the tests, the bench scripts and the data README read it)
DATA_DIR_ENV = "ZOO_DATA_DIR"


def default_dir() -> str:
    """``--dir``'s default: ``$ZOO_DATA_DIR`` when it is set (the folder the tests and bench scripts read), else
    ``data`` under the current directory."""
    return os.environ.get(DATA_DIR_ENV) or "data"


def main(argv: Sequence[str] | None = None) -> str:
    """Entry point of ``python -m zoo.download``; returns the path of the benchmark's file. Exit statuses
    (:data:`EXIT_CODES`): 2 for a bad option (a ``--dir`` that is ``-``, a file or a path through one, or a place
    that cannot be written; checked before any work); 1 for an archive that cannot be found, fetched or read, or a
    file that is not the benchmark."""
    from .cli import EXIT_CODES, EXIT_ERROR, STDOUT_PATH, check_outputs, command_prog, exit_with

    p = argparse.ArgumentParser(allow_abbrev=False,
                                prog=command_prog("zoo.download"), description=__doc__.split("\n\n")[0],
                                epilog=EXIT_CODES)
    p.add_argument("name", choices=sorted(SOURCES), help="the benchmark")
    p.add_argument("--dir", default=None,
                   help=f"folder to write the interaction file into (default: ${DATA_DIR_ENV} when it is set, else "
                        "./data)")
    p.add_argument("--from-zip", help="the benchmark's archive, downloaded by hand (no network needed; default: "
                                      "download it from its owner's site)")
    p.add_argument("--overwrite", action="store_true", help="replace a file already there")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar while downloading (default: a bar on stderr when stderr is a terminal)")
    a = p.parse_args(argv)
    folder = a.dir if a.dir is not None else default_dir()
    # before any work, as every folder output is checked: '-' (no folder), a file, a path through a file, a place
    # that cannot be written -- unless the file is there already and stays (nothing is written: a read-only data
    # folder answers "already there")
    there = os.path.isfile(os.path.join(folder, SOURCES[a.name].filename)) and not a.overwrite
    if folder == STDOUT_PATH or not there:
        try:
            check_outputs({"--dir": folder}, folders=True)        # --from-zip is a file: "is a file" names it
        except ValueError as e:
            p.error(str(e) + ("" if a.dir is not None else f" (${DATA_DIR_ENV}, the default of --dir)"))
    if a.from_zip and not os.path.isfile(a.from_zip):
        exit_with(EXIT_ERROR, f"error: --from-zip {a.from_zip}: "
                              + ("a folder, not the archive" if os.path.isdir(a.from_zip) else "no such file"))
    try:
        path, written = download(a.name, folder, a.from_zip, a.overwrite, progress=not a.no_progress)
    except DownloadError as e:
        sys.exit(f"error: {e}")
    source = SOURCES[a.name]
    print(f"{'wrote' if written else 'already there'}: {path} ({BENCHMARKS[source.benchmark][2]}, checked); "
          f"{source.hint}")
    return path


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
