"""What the zoo's and the exporters' commands share: argparse value types (usage errors name the bad value), the
one-line text of an error, and writing an output file or folder whole."""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import re
import shutil
import stat
import tempfile
import time
import uuid

from export.fsutil import (EXIT_CODES, EXIT_ERROR, EXIT_MISSING, EXIT_USAGE, STDOUT_PATH, UsageError,  # noqa: F401
                           exit_with, run_cli, shell_option, text_stream)  # run_cli: each command's entry
# the commands' number types, torch-free (export.build_plugins and export.triton_server use them without the zoo)
from export.fsutil import int_at_least, int_in, nonnegative_int, positive_int  # noqa: F401

from .data.readers import COLUMN_ROLES, check_columns
from .data.split import parse_kcore


def positive_float(value: str) -> float:
    """A finite float > 0 (seconds, rates); anything else is a usage error."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}") from None
    if not (0 < x < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return x


def kcore(value: str) -> int | None | str:
    """``--kcore``: ``auto``, ``none``/``0`` or ``k >= 1`` (:func:`zoo.data.split.parse_kcore`)."""
    try:
        return parse_kcore(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _FromRun:
    """The default of ``--kcore`` and ``--time-ties`` in the commands that read ``--data`` for a trained model: the
    option as the model's run read its data (:func:`model_data_options`)."""

    def __repr__(self) -> str:
        return "the model's run's"


FROM_RUN = _FromRun()


class _WholeHistory:
    """The default of ``--kcore`` in the serving commands (``zoo.recommend``, ``zoo.embed``, ``export.perf_data``): no
    k-core filter, each user's whole history as the file holds it (:func:`model_data_options`)."""

    def __repr__(self) -> str:
        return "none (serving: each user's whole history)"


WHOLE_HISTORY = _WholeHistory()


def model_data_options(folder, kcore=FROM_RUN, time_ties=FROM_RUN, log: dict | None = None) -> dict:
    """``{"kcore", "time_ties"}`` to read ``--data`` for the model in ``folder`` with: each as given, else
    (:data:`FROM_RUN`) as the run that trained it logged it (its ``train_log.json``, a soup's or a card's log:
    :func:`zoo.hub.checkpoint_log`; ``log``: that log, already read), else as ``zoo.train`` reads data by default
    (``"auto"``: 5-core for interaction files, none for ``.seq``; ``"file"``), so that the items of ``--data`` are
    those the model was trained on (``zoo.evaluate``: the run's split). ``kcore`` :data:`WHOLE_HISTORY` (the serving
    commands' default) is no filter: a user's history is all of its rows, whoever else is in the file; the model's
    vocabulary decides which items are known (``--unknown-items``)."""
    from .hub import checkpoint_log, run_data_options

    if kcore is WHOLE_HISTORY:
        kcore = None
    if log is None and folder is not None:
        log = checkpoint_log(folder)
    logged = run_data_options(log or {})
    return {"kcore": logged["kcore"] if kcore is FROM_RUN else kcore,
            "time_ties": logged["time_ties"] if time_ties is FROM_RUN else time_ties}


def add_model_data_options(parser: argparse.ArgumentParser, users: str, serving: bool = False) -> None:
    """``--kcore`` and ``--time-ties`` of a command that reads ``--data`` for a trained model (``users``: what it does
    with the users, for the help), both defaulting to :data:`FROM_RUN` (:func:`model_data_options`) -- but
    ``--kcore`` of a ``serving`` command (recommendations, vectors, replayed requests), which defaults to
    :data:`WHOLE_HISTORY`: no filter, so that a user's history does not depend on who else is in the file."""
    from .data import TIME_TIES

    if serving:
        parser.add_argument("--kcore", type=kcore, default=WHOLE_HISTORY,
                            help=f"k-core filter of --data before {users}: int, 'none' or 'auto' (default: none, "
                                 "each user's whole history, whoever else is in the file; the items the model does "
                                 "not know are --unknown-items' to refuse or drop)")
    else:
        parser.add_argument("--kcore", type=kcore, default=FROM_RUN,
                            help=f"k-core filter of --data before {users}: int, 'none' or 'auto' (default: the model's "
                                 "run's, from its train_log.json, else auto as zoo.train: 5 for interaction files, "
                                 "none for .seq), so that --data holds the items the model was trained on")
    parser.add_argument("--time-ties", choices=TIME_TIES, default=FROM_RUN,
                        help="order of a user's interactions with equal timestamps in --data: file (their file order, "
                             "a stable sort as RecBole's) or item (by item id, as LRURec and ml-1m.5core.seq.gz); it "
                             "decides which item comes last (the test item) when the last ones tie; default: the "
                             "model's run's (else file), the order it was trained on")


def add_device_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--device`` of a command that runs a model (``what``: what runs there, for the help); read it with
    :func:`cli_device`."""
    parser.add_argument("--device", default=None,
                        help=f"where {what} runs: cpu, cuda or cuda:N (default: cuda when available, else cpu)")


def cli_device(value: str | None):
    """The ``torch.device`` of ``--device value`` (:func:`zoo.modeling_utils.resolve_device`); a malformed device is
    a usage error (exit 2), a CUDA device this machine lacks exits 4 (:data:`export.fsutil.EXIT_MISSING`)."""
    from .modeling_utils import DeviceUnavailableError, resolve_device

    try:
        return resolve_device(value)
    except DeviceUnavailableError as e:
        exit_with(EXIT_MISSING, f"error: --device: {e}")
    except ValueError as e:
        exit_with(EXIT_USAGE, f"error: --device: {e}")


def add_threads_option(parser: argparse.ArgumentParser, what: str = "the model") -> None:
    """``--threads N``: torch's CPU threads (``torch.set_num_threads``) for ``what``; apply it with
    :func:`apply_threads`."""
    parser.add_argument("--threads", type=positive_int, default=None,
                        help=f"torch's CPU threads for {what} (default: torch's own, OMP_NUM_THREADS or the cores)")


def apply_threads(n: int | None) -> None:
    """Set torch's CPU threads to ``n`` (``--threads``); None leaves torch's default."""
    if n is not None:
        import torch

        torch.set_num_threads(n)


def refuse_options_without(parser: argparse.ArgumentParser, args: argparse.Namespace, needed: str,
                           dests: list[str]) -> None:
    """A usage error (exit 2) when an option of ``dests`` (argparse dests: ``"kcore"``) was given a value other than
    its default while the option they apply to (dest ``needed``: ``"data"``) was not given -- instead of ignoring
    them (``zoo.recommend --kcore 3`` with no ``--data``)."""
    if getattr(args, needed, None) is not None:
        return
    given = ["--" + d.replace("_", "-") for d in dests if getattr(args, d, None) != parser.get_default(d)]
    if given:
        flag = "--" + needed.replace("_", "-")
        parser.error(f"{'/'.join(given)} {'applies' if len(given) == 1 else 'apply'} to {flag}: give {flag} or "
                     f"leave {'it' if len(given) == 1 else 'them'} out")


def unknown_items_hint(e: Exception, options: dict, serving: bool = False) -> str:
    """:func:`error_text` of ``e``; for data items the model does not know (:class:`zoo.vocab.UnknownItemError`), also
    the k-core ``--data`` was read with (``options``: :func:`model_data_options`), a likely cause: a file filtered
    otherwise than the model's training data holds other items -- or, for a ``serving`` command reading ``--data``
    whole (its default), that the training run's k-core left those items out."""
    from .vocab import UnknownItemError

    if not isinstance(e, UnknownItemError):
        return error_text(e)
    kcore = options.get("kcore")
    if serving and kcore is None:
        return (f"{error_text(e)}; --data is read whole (no k-core) for serving, so items the training run's k-core "
                "left out, or new ones, are not the model's; --kcore K filters --data first")
    return (f"{error_text(e)}; or --data was filtered otherwise than the model's training data: it was read with "
            f"--kcore {'none' if kcore is None else kcore} (the run's own, else zoo.train's default auto): give "
            "--kcore as the model was trained")


def _column(value: str) -> tuple[str, str | None]:
    """One ``--columns`` word: ``ROLE=NAME``; ``time=none`` is ``("time", None)``: no time column."""
    role, sep, name = value.partition("=")
    if not sep or role not in COLUMN_ROLES or not name.strip():
        raise argparse.ArgumentTypeError(f"expected ROLE=NAME with ROLE one of {', '.join(COLUMN_ROLES)}, got "
                                         f"{value!r}")
    if role == "time" and name == "none":           # no time column, even one with a usual name (text dates)
        return role, None
    return role, name


class _Columns(argparse.Action):
    """``--columns user=NAME item=NAME [time=NAME]`` -> ``{"user": NAME, ...}`` (checked by
    :func:`zoo.data.readers.check_columns`); a role given twice is a usage error."""

    def __call__(self, parser, namespace, values, option_string=None):
        roles = [role for role, _ in values]
        twice = sorted({r for r in roles if roles.count(r) > 1})
        if twice:
            parser.error(f"{option_string}: {', '.join(twice)} given twice")
        try:
            setattr(namespace, self.dest, check_columns(dict(values)))
        except ValueError as e:
            parser.error(f"{option_string}: {e}")


def add_columns_option(parser: argparse.ArgumentParser) -> None:
    """``--columns``: the header names of the user, item and time columns of ``--data`` (a delimited or atomic
    file whose columns are not called by the usual names), as :func:`zoo.data.load_dataset`'s ``columns``."""
    parser.add_argument("--columns", nargs="+", type=_column, action=_Columns, default=None, metavar="ROLE=NAME",
                        help="header columns of --data by role when not called user_id/item_id/timestamp (or the "
                             "other usual names): user=NAME item=NAME [time=NAME], e.g. --columns user=customer "
                             "item=product time=when; time=none reads no time column (the row order is the time "
                             "order), e.g. one of text dates, for a model that does not read time")


def columns_argv(columns: dict | None) -> list[str]:
    """The ``--columns`` words that give ``columns`` (role -> header name) back to a command: ``[]`` for none."""
    return ["--columns", *(f"{role}={'none' if name is None else name}" for role, name in columns.items())] \
        if columns else []


def error_text(e: Exception) -> str:
    """The text of an error for a one-line CLI message (a ``KeyError``'s ``str`` would add quotes)."""
    return e.args[0] if isinstance(e, KeyError) and e.args else str(e)


def flag_named(text: str, flags: dict) -> str:
    """A message of a function's checks as a command says it: each ``"; "``-separated part that starts with one of
    ``flags``' parameter names (``"epochs must be >= 1, got 0"``) is preceded by that parameter's flag
    (``"--epochs: epochs must be >= 1, got 0"``), as ``export.triton`` names its serving numbers."""
    def named(part: str) -> str:
        name = part.split(" ", 1)[0]
        return f"{flags[name]}: {part}" if name in flags else part

    return "; ".join(named(part) for part in text.split("; "))


def cannot(flag: str, path, e: Exception, verb: str = "write") -> str:
    """``"--json out.json: cannot write it (Is a directory)"``: the one-line text for a path a command cannot
    ``verb`` (``e``: the ``OSError``, or a decoding error, that said so)."""
    return f"{flag} {path}: cannot {verb} it ({getattr(e, 'strerror', None) or e})"


def _umask() -> int:
    """The process's umask, read without changing it where ``/proc`` says it (Linux >= 4.7), else by setting and
    restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: str, default: int) -> int:
    """The permission bits a replaced output gets: those of the existing ``path`` (a private 0600 file stays private),
    else ``default`` less the umask (what ``open``/``mkdir`` would have made; mkstemp's and mkdtemp's own 0600/0700
    would hide it from other users)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return default & ~_umask()


#: the infix of :func:`written_whole_path`'s temporary files: ``.NAME.writing-<pid>-XXXXXXXX`` beside ``NAME``
_TEMP_INFIX = "writing"


def _temp_file_name(base: str) -> re.Pattern:
    """The names of :func:`written_whole_path`'s temporary files for the file named ``base`` (group 1: the pid of
    their writer): ``.BASE.writing-<pid>-`` and ``tempfile.mkstemp``'s eight random characters, nothing else."""
    return re.compile(rf"\.{re.escape(base)}\.{_TEMP_INFIX}-([0-9]+)-[a-z0-9_]{{8}}")


def _locked_now(fd: int) -> bool:
    """Whether an exclusive ``flock`` on the open descriptor ``fd`` was taken now (without waiting): False when another
    open file holds it, or where there are no locks (no ``fcntl``, a file system without them)."""
    try:
        import fcntl
    except ImportError:                                    # pragma: no cover - not POSIX
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def remove_dead_temps(path: str | os.PathLike) -> list[str]:
    """Remove the temporary files that writers of the file ``path`` (:func:`written_whole_path`) left beside it when
    they were killed mid-write (SIGKILL, the OOM killer, a power loss: nothing cleans up after those; SIGTERM and
    Ctrl-C do, :func:`export.fsutil.run_cli`) and return their paths. Only that writer's own temporary files of that
    same ``path`` are taken -- ``.NAME.writing-<pid>-XXXXXXXX`` regular files (:func:`_temp_file_name`) whose pid runs
    no process here and whose lock no one holds (a writer in another container or on another machine sharing the
    folder holds it while it lives) -- never another file, nor a live writer's; one that cannot be told (no locks
    on the file system, another user's file) is left. :func:`written_whole_path` calls it before each write."""
    parent, base = os.path.split(os.path.abspath(path))
    pattern = _temp_file_name(base)
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    removed = []
    for e in entries:
        found = pattern.fullmatch(e.name)
        try:
            if found is None or not e.is_file(follow_symlinks=False) or pid_alive(int(found.group(1))):
                continue
            fd = os.open(e.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except (OSError, OverflowError):                   # OverflowError: a pid beyond a C int (not a writer's)
            continue
        try:
            if _locked_now(fd):                            # not held: its writer is gone everywhere
                os.unlink(e.path)
                removed.append(e.path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def written_whole_path(path: str | os.PathLike):
    """Yield the path of a new empty file beside ``path`` (its folder created), for a writer that takes a path
    (safetensors, ONNX); it replaces ``path`` only when the block completes, and an error or an interruption (Ctrl-C,
    SIGTERM under :func:`export.fsutil.run_cli`) removes it and leaves an existing ``path`` as it was. A symbolic link
    is written through (its target is replaced, the link stays), and the new file keeps the mode of the file it
    replaces (else the umask's). The file is named ``.NAME.writing-<pid>-XXXXXXXX`` and locked (``flock``) while the
    block runs, so that the next writer of ``path`` removes those of writers that were killed
    (:func:`remove_dead_temps`), never a live one's."""
    path = os.path.realpath(path)
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    remove_dead_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.{_TEMP_INFIX}-{os.getpid()}-", dir=parent)
    lock = fd
    try:
        if not _locked_now(fd):                            # no locks here: the pid alone tells a live writer's
            lock = None
            os.close(fd)
        yield tmp
        os.chmod(tmp, _mode_for(path, 0o666))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        if lock is not None:
            os.close(lock)


@contextlib.contextmanager
def written_whole(path: str | os.PathLike, newline: str | None = None):
    """Yield a text file (UTF-8, whatever the locale) opened beside ``path`` (its folder created) that replaces
    ``path`` only when the block completes; an error or an interruption removes it and leaves an existing ``path`` as
    it was (:func:`written_whole_path`)."""
    with written_whole_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline=newline) as f:
        yield f


@contextlib.contextmanager
def made_folder(path: str | os.PathLike):
    """Make the folder ``path`` (its missing parents too) for the block; when the block fails or is interrupted, the
    folders this made are removed again, deepest first, as far as they are empty (nothing else was put there)."""
    made = [d for d in (path, *map(str, pathlib.Path(path).parents)) if not os.path.exists(d)]
    os.makedirs(path, exist_ok=True)
    try:
        yield
    except BaseException:
        for d in made:
            try:
                os.rmdir(d)
            except OSError:                                # not empty (or gone): the folders above it stay too
                break
        raise


#: what a folder written whole leaves beside it while it is written: ``.NAME.staged-*`` (the new folder) and
#: ``.NAME.replaced-*`` (the old one, between the swap and its removal)
_STAGE_KINDS = ("staged", "replaced")


def lock_folder(path: str) -> int | None:
    """An open descriptor of the folder ``path`` holding an exclusive ``flock`` on it (released when it is closed, or
    when the process dies), or ``None`` when the folder is locked by another process or cannot be locked here (no
    ``fcntl``, a file system without locks)."""
    try:
        import fcntl
    except ImportError:                                    # not POSIX: no locks, so no stage is taken for dead
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:                                        # held by a live writer (or locks unsupported)
        os.close(fd)
        return None
    return fd


def _kernel32():
    """Windows' ``kernel32`` through ``ctypes`` (:func:`pid_alive`), its three calls typed, and the function that
    reads the last error of a call."""
    import ctypes
    from ctypes import wintypes

    k = ctypes.WinDLL("kernel32", use_last_error=True)
    k.OpenProcess.argtypes, k.OpenProcess.restype = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD], wintypes.HANDLE
    k.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    k.GetExitCodeProcess.restype = wintypes.BOOL
    k.CloseHandle.argtypes, k.CloseHandle.restype = [wintypes.HANDLE], wintypes.BOOL
    return k, ctypes.get_last_error


def _windows_pid_alive(pid: int) -> bool:
    """:func:`pid_alive` on Windows, where ``os.kill(pid, 0)`` is no probe (signal 0 is ``CTRL_C_EVENT`` there: it
    would send Ctrl-C to a process group): ``OpenProcess`` and ``GetExitCodeProcess`` == ``STILL_ACTIVE``. Only an
    unknown pid (``ERROR_INVALID_PARAMETER``) or an ended process is dead; whatever cannot be told (access denied,
    another error) is taken for alive, so nothing of a live writer's is removed."""
    import ctypes

    if not 0 <= pid <= 0xFFFFFFFF:
        raise OverflowError(f"pid {pid} is beyond Windows' range")
    k, last_error = _kernel32()
    handle = k.OpenProcess(0x1000, False, pid)               # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return last_error() != 87                            # ERROR_INVALID_PARAMETER: no such process
    try:
        code = ctypes.c_ulong()
        if not k.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259                             # STILL_ACTIVE
    finally:
        k.CloseHandle(handle)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (another user's too). ``OverflowError`` for a pid beyond the
    system's range: no writer of this project wrote such a name, the callers leave what carries it. On Windows:
    :func:`_windows_pid_alive`."""
    import sys

    if sys.platform == "win32":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                          # PermissionError: it runs, as another user
        return True
    return True


def remove_stale_stages(out: str | os.PathLike, prefix: str, unnamed_max_age_s: float = 86400.0) -> list[str]:
    """Remove the stages (:func:`staging_folder` with ``prefix``) in the folder ``out`` whose writer is gone -- killed
    by SIGKILL, the OOM killer or a power loss, which nothing cleans up after, and which ``zoo.hub push`` would
    upload -- and return their names. A stage is the writer's while its pid runs a process here or its lock is held (a
    writer on another machine that shares the folder holds it); one named without a pid (``prefix`` + a
    ``tempfile.mkdtemp`` suffix, written before stages carried one) once it is ``unnamed_max_age_s`` old. A stage that
    cannot be told (no locks on the file system) is left."""
    removed = []
    try:
        entries = list(os.scandir(out))
    except OSError:
        return removed
    for e in entries:
        if not e.name.startswith(prefix) or not e.is_dir(follow_symlinks=False):
            continue
        pid, sep, _ = e.name[len(prefix):].partition("-")     # mkdtemp's suffixes hold no "-"
        try:
            if sep and pid.isdigit():
                if pid_alive(int(pid)):
                    continue
            elif time.time() - e.stat(follow_symlinks=False).st_mtime < unnamed_max_age_s:
                continue
        except (OSError, OverflowError):     # OverflowError: a pid beyond the system's range, no writer's: left
            continue
        fd = lock_folder(e.path)             # None: its lock is held (a live writer elsewhere), or no locks here
        if fd is None:
            continue
        try:
            shutil.rmtree(e.path, ignore_errors=True)
            removed.append(e.name)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def staging_folder(out: str | os.PathLike, prefix: str, unnamed_max_age_s: float = 86400.0, removed=None):
    """A new folder inside the folder ``out`` for files to be written or verified there before they are moved into
    place one by one (``os.replace`` on one file system), removed after the block. Named ``prefix`` + this process's
    pid and held under an ``flock`` while the block runs, so that a later writer tells it from a stage whose writer
    was killed: those in ``out`` are removed first (:func:`remove_stale_stages`; ``removed``: called with the path of
    each)."""
    for name in remove_stale_stages(out, prefix, unnamed_max_age_s):
        if removed is not None:
            removed(os.path.join(out, name))
    stage = pathlib.Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=out))
    fd = None
    try:
        fd = lock_folder(stage)         # None without locks: the pid alone then says that the stage is live
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def remove_dead_stages(path: str | os.PathLike) -> list[str]:
    """Remove what writers of the folder ``path`` (:func:`written_whole_folder`) that died mid-write (SIGKILL, the
    OOM killer, a power loss) left beside it: ``.NAME.staged-*`` and ``.NAME.replaced-*`` folders that no live
    writer holds locked. Tools scan those folders as content (Triton's model repository, bundled cards), and nothing
    else removes them. A live writer's stage is locked for as long as it lives, so it is never taken. A dead writer's
    ``.NAME.replaced-*`` while ``path`` itself is missing (it died between its two renames) is the only copy of the old
    folder: it is put back as ``path``, not removed. Returns the paths removed."""
    parent, base = os.path.split(os.path.abspath(path))
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        if not any(name.startswith(f".{base}.{kind}-") for kind in _STAGE_KINDS):
            continue
        stage = os.path.join(parent, name)
        if os.path.islink(stage) or not os.path.isdir(stage):
            continue
        fd = lock_folder(stage)
        if fd is None:
            continue
        try:
            target = os.path.join(parent, base)
            if name.startswith(f".{base}.replaced-") and not os.path.lexists(target):
                os.replace(stage, target)          # the old folder, whose writer died before the new one came in
                continue
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage)
        finally:
            os.close(fd)
    return removed


def _hidden_leftovers(folder: str, names: list[str]) -> set[str]:
    """``shutil.copytree``'s ``ignore`` for :func:`written_whole_folder`'s ``copy_existing``: hidden entries (the
    stages and temporary files of interrupted writers: ``.save-*``, ``.export-staging-*``, ``.NAME.staged-*``, ...),
    which would otherwise be copied into every new folder (and published with it); a clone's ``.git*`` stay."""
    return {n for n in names if n.startswith(".") and not n.startswith(".git")}


class LinkOutsideError(ValueError):
    """A symbolic link inside a folder that a tool writes (an artifact folder: a model card) whose target lies
    outside that folder: written through, or copied, it would let a planted link redirect the write (or the copy, and
    ``zoo.hub push`` with it) to a file or folder elsewhere. Its message is one line naming the link and its
    target."""


def _outside(folder: str, target: str) -> bool:
    """Whether the resolved path ``target`` lies outside the resolved folder ``folder`` (the folder itself is
    inside)."""
    return os.path.commonpath([folder, target]) != folder


def links_leading_outside(folder: str | os.PathLike,
                          names: list[str] | tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """The symbolic links inside the folder ``folder`` whose targets, resolved through any chain of links
    (``os.path.realpath``: a dangling or looping link too), lie outside it, as ``(link, target)`` pairs: the link's path
    (``folder`` joined as given) and its resolved target. ``folder`` itself may be a link (a path the user named is
    written through); it is compared resolved. ``names``: relative paths (``"README.md"``, ``"onnx/model.onnx"``):
    each component of each that is a link is checked, the first one leading outside named (what lies under it is
    outside too); ``None``: every entry of the folder, nested ones too (links not followed), less the hidden entries
    that :func:`written_whole_folder` leaves out of its copy (:func:`_hidden_leftovers`)."""
    folder = os.fspath(folder)
    real = os.path.realpath(folder)
    found = []
    if names is not None:
        for name in names:
            parts = pathlib.PurePath(name).parts
            for i in range(1, len(parts) + 1):
                p = os.path.join(folder, *parts[:i])
                if os.path.islink(p) and _outside(real, os.path.realpath(p)):
                    if (p, os.path.realpath(p)) not in found:     # once: "onnx" under "onnx/model.onnx" too
                        found.append((p, os.path.realpath(p)))
                    break
        return found
    for root, dirs, files in os.walk(real):                # links to folders are listed, not followed
        hidden = _hidden_leftovers(root, dirs + files)
        dirs[:] = sorted(d for d in dirs if d not in hidden)
        for name in sorted({*dirs, *files} - hidden):
            p = os.path.join(root, name)
            if os.path.islink(p) and _outside(real, os.path.realpath(p)):
                found.append((os.path.join(folder, os.path.relpath(p, real)), os.path.realpath(p)))
    return found


def refuse_links_leading_outside(folder: str | os.PathLike, names: list[str] | tuple[str, ...] | None = None,
                                 hint: str = "remove the link, or put the file or folder itself there") -> None:
    """:class:`LinkOutsideError` naming the first symbolic link inside ``folder`` that leads outside it
    (:func:`links_leading_outside` over ``names``) and its target, and how many more there are, followed by
    ``hint``; nothing when there is none. The rule of every tool writing an artifact folder: nothing outside the folder
    is written (or copied in) through a link inside it; links whose targets stay inside the folder are used."""
    found = links_leading_outside(folder, names)
    if found:
        link, target = found[0]
        more = f" (and {len(found) - 1} more such link{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
        raise LinkOutsideError(f"{link} is a symbolic link to {target}, outside {os.fspath(folder)}{more}; {hint}")


def _relinked_inside(old: str, stage: str) -> None:
    """After ``shutil.copytree(old, stage, symlinks=True)``: point each link of ``stage`` (the copy of the resolved
    folder ``old``, whose links all lead inside it) at the same place inside ``stage`` that it led to inside ``old``
    -- an absolute link, or a relative one through the folder's own name, would lead into ``old`` (removed at the
    swap) -- as a relative link; one that already does is left as it was."""
    for root, dirs, files in os.walk(stage):
        for name in dirs + files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                continue
            rel = os.path.relpath(p, stage)
            target = os.path.relpath(os.path.realpath(os.path.join(old, rel)), old)
            wanted = os.path.normpath(os.path.join(stage, target))
            if os.path.realpath(p) != wanted:
                os.unlink(p)
                os.symlink(os.path.relpath(wanted, os.path.dirname(p)), p)


def _copied_whole(path: str, stage: str) -> None:
    """:func:`written_whole_folder`'s copy of the resolved folder ``path`` (whose links all lead inside it: checked
    before the stage was made) into ``stage``, less its hidden entries: its links are copied as links (a loop too,
    never followed), pointed at the same place inside the new folder (:func:`_relinked_inside`). A file or folder that
    cannot be copied is an ``OSError`` naming the first (``shutil.Error`` lists every one, in one huge message)."""
    try:
        shutil.copytree(path, stage, symlinks=True, dirs_exist_ok=True, ignore=_hidden_leftovers)
    except shutil.Error as e:
        problems = e.args[0] if e.args and isinstance(e.args[0], list) and e.args[0] else [(path, stage, str(e))]
        src, _, why = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise OSError(f"cannot copy {src} into the new {path}: {why}{more}") from None
    _relinked_inside(path, stage)


def _remove_to_the_end(folder: str, interrupted: BaseException | None = None) -> None:
    """Remove ``folder`` (the old copy of a folder :func:`written_whole_folder` has replaced) completely, even when a
    Ctrl-C or SIGTERM (``KeyboardInterrupt``) arrives meanwhile -- the removal goes on where it was cut, so no
    half-deleted ``.NAME.replaced-*`` is left -- and then raise that interruption (or ``interrupted``, one that came
    between the swap and the removal): the write itself is complete and stays, and the interruption stops what the
    command would do after it (its ``wrote ...`` line, further outputs), as it would a moment later."""
    while os.path.lexists(folder):
        try:
            shutil.rmtree(folder)
        except KeyboardInterrupt as e:
            interrupted = interrupted or e
    if interrupted is not None:
        raise interrupted


@contextlib.contextmanager
def written_whole_folder(path: str | os.PathLike, copy_existing: bool = False):
    """Yield a new folder beside ``path`` (holding a copy of ``path``'s files with ``copy_existing``, less its hidden
    entries: :func:`_hidden_leftovers`; the links inside ``path`` are copied as links when they lead inside it, and a
    link leading outside it is refused before anything is made, :class:`LinkOutsideError` naming it and its target:
    :func:`_copied_whole`) that replaces the folder ``path`` only when the block completes; an error or an
    interruption removes it and leaves an existing ``path`` as it was. The swap is two renames on one file system (the
    old folder is removed after: to the end, even when a Ctrl-C or SIGTERM arrives meanwhile -- the write is
    complete by then; that interruption is raised once the old folder is gone: :func:`_remove_to_the_end`). A
    symbolic link to a folder is written through: its target is replaced, the link stays. The stages of earlier
    writers of ``path`` that died are removed first (:func:`remove_dead_stages`); this one's stage is locked while it
    lives. The new folder keeps the replaced folder's mode (else the umask's)."""
    path = os.path.realpath(path)
    parent, base = os.path.split(path)
    if copy_existing and os.path.isdir(path):              # the copy would hold (zoo.hub push publish) what it leads to
        refuse_links_leading_outside(path, hint="a folder written whole copies no link leading out of it: remove "
                                                "the link, or put the files themselves there")
    os.makedirs(parent, exist_ok=True)
    remove_dead_stages(path)
    stage = tempfile.mkdtemp(prefix=f".{base}.staged-", dir=parent)
    lock = lock_folder(stage)                             # held until the end: a live writer's stage is not removed
    old_lock = None
    try:
        try:
            if copy_existing and os.path.isdir(path):
                _copied_whole(path, stage)
            yield stage
            os.chmod(stage, _mode_for(path, 0o777))
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        old = None
        interrupted = None
        try:
            if os.path.isdir(path):
                old_lock = lock_folder(path)              # moves with it: not taken for a dead writer's leftover
                old = os.path.join(parent, f".{base}.replaced-{uuid.uuid4().hex[:12]}")
                os.replace(path, old)                      # a new name: nothing is there
            os.replace(stage, path)
        except BaseException as e:                         # e.g. ``path`` is a file: put back what was there
            if os.path.lexists(stage) or not isinstance(e, KeyboardInterrupt):
                if old is not None and os.path.isdir(old) and not os.path.lexists(path):
                    os.replace(old, path)
                shutil.rmtree(stage, ignore_errors=True)
                raise
            interrupted = e                                # the stage is ``path`` now: the interrupt came after
        if old:
            _remove_to_the_end(old, interrupted)
        elif interrupted is not None:
            raise interrupted
    finally:
        for fd in (lock, old_lock):
            if fd is not None:
                os.close(fd)


def check_outputs(outputs: dict, inputs: dict | None = None, folders: bool = False) -> None:
    """Before any work: ``ValueError`` naming the first output path (``outputs``: ``{flag: path}``, ``None`` paths
    skipped) that could not be written at the end -- a folder where a file goes (with ``folders``: a file where a
    folder goes), a path under a file, a place that cannot be written -- or that is one of the ``inputs``
    (``{label: path}``) or another output, which writing it would replace."""
    inputs = {k: v for k, v in (inputs or {}).items() if v}
    seen: dict = {}
    for flag, path in outputs.items():
        if not path:
            continue
        if os.fspath(path) == STDOUT_PATH:      # the commands that write an output to stdout take it out first
            raise ValueError(f"{flag} {STDOUT_PATH}: '{STDOUT_PATH}' means standard output, where "
                             f"{'a folder' if folders else 'this output'} cannot go; name a path (./{STDOUT_PATH} for "
                             f"one named '{STDOUT_PATH}')")
        for label, other in [*inputs.items(), *seen.items()]:
            if _same_path(path, other):
                what = f"also {label}" if label in seen else f"the input {label}"
                raise ValueError(f"{flag} {path} is {what}: writing it would replace that file; choose another path")
        seen[flag] = path
        if folders and os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{flag} {path} is a file, not a folder")
        if not folders and os.path.isdir(path):
            raise ValueError(f"{flag} {path} is a folder; give a file path")
        where = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(where):                   # the nearest existing folder (the rest is made)
            where = os.path.dirname(where)
        if not os.path.isdir(where):
            raise ValueError(f"{flag} {path}: {where} is a file, not a folder")
        for folder in [where] + ([path] if folders and os.path.isdir(path) else []):
            try:
                with tempfile.TemporaryFile(dir=folder):   # what can be written there (root is refused by /proc)
                    pass
            except OSError as e:
                raise ValueError(f"{flag} {path}: cannot write in {folder} ({e.strerror or e})") from None


def folder_inputs(flag: str, folder: str | os.PathLike | None) -> dict:
    """``{label: path}`` of every file in the local folder ``folder`` (a ``--model`` or ``--onnx`` folder; nested
    files too), for :func:`check_outputs`' ``inputs``: an output path must not replace a model's weights, config or
    vocabulary. A Hub id of a bundled model names its bundled folder; ``{}`` for any other Hub id."""
    if not folder:
        return {}
    if not os.path.isdir(folder):
        from .pretrained import _bundled_for

        folder = _bundled_for(os.fspath(folder))
        if folder is None:
            return {}
    found = {}
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            path = os.path.join(root, name)
            found[f"{flag}'s {os.path.relpath(path, folder)}"] = path
    return found


def _same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file (one that exists under both names, or the same resolved path)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


# ------------------------------------------------------------------ console scripts (pyproject [project.scripts])
# Each command's ``main`` returns its result for Python callers (the log of a run, the metrics, the recommendations);
# :func:`export.fsutil.run_script` runs it as a console script: status 0 after success, the statuses of
# :data:`EXIT_CODES` on errors, 141 on a closed stdout and 130 on Ctrl-C (:func:`run_cli`). The exporters' scripts
# live in ``export.fsutil`` (``import zoo.cli`` loads torch; ``export.triton --onnx`` runs without it).
from export.fsutil import SCRIPTS, command_prog, run_script  # noqa: E402,F401


def recommend_script() -> None:
    """``zoo-recommend``: ``python -m zoo.recommend``."""
    run_script("zoo.recommend")


def train_script() -> None:
    """``zoo-train``: ``python -m zoo.train``."""
    run_script("zoo.train")


def evaluate_script() -> None:
    """``zoo-evaluate``: ``python -m zoo.evaluate``."""
    run_script("zoo.evaluate")


def embed_script() -> None:
    """``zoo-embed``: ``python -m zoo.embed``."""
    run_script("zoo.embed")


def compare_script() -> None:
    """``zoo-compare``: ``python -m zoo.compare``."""
    run_script("zoo.compare")


def soup_script() -> None:
    """``zoo-soup``: ``python -m zoo.soup``."""
    run_script("zoo.soup")


def hub_script() -> None:
    """``zoo-hub``: ``python -m zoo.hub``."""
    run_script("zoo.hub")


def convert_script() -> None:
    """``zoo-convert``: ``python -m zoo.convert``."""
    run_script("zoo.convert")


def download_script() -> None:
    """``zoo-download``: ``python -m zoo.download``."""
    run_script("zoo.download")
