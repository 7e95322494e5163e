"""File helpers shared by the zoo and its exporters that import the standard library only: ``import zoo`` loads torch
and transformers, which ``export.triton --onnx`` and ``export.build_plugins`` run without, so these cannot live in
the ``zoo`` package (:mod:`zoo.cli` holds the rest, for the commands that have torch loaded anyway)."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shlex
import sys
from typing import Callable, Iterator, NoReturn


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


class FolderBusy(OSError):
    """Another live process holds the output folder (:func:`output_folder_lock`)."""


@contextlib.contextmanager
def output_folder_lock(folder: str | os.PathLike, option: str = "--out") -> Iterator[bool]:
    """Hold an exclusive, non-blocking ``flock`` on the folder ``folder`` itself (its directory descriptor: no lock
    file is left in it or beside it) while a run writes into it, so that a second run into the same folder fails at
    once -- :class:`FolderBusy` naming ``option`` and the folder -- instead of mixing its files with the first's (or
    waiting hours behind a training run). The kernel drops the lock when its holder dies (SIGKILL included), so no
    stale lock ever blocks a later run. ``folder`` must exist. Yields whether a lock is held (not without ``fcntl``,
    nor on a file system that refuses directory locks: nothing is held there). A folder renamed over by the holder (a
    whole-folder swap) is no longer covered: lock a folder that is written into in place."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield False
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(f"{option} {os.fspath(folder)}: another run is writing into it now (it holds the "
                             "folder's lock); wait for it to end, or give another folder") from None
        except OSError:                                  # a file system without directory locks
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def held_output_folder(folder: str | os.PathLike, option: str = "--out") -> Iterator[bool]:
    """Make the output folder ``folder`` where it is missing (and the folders above it) and hold
    :func:`output_folder_lock` on it for the block, for a run that writes into it in place (files moved in one by
    one, never the folder swapped whole): a second run into it meanwhile fails at once with :class:`FolderBusy`
    naming ``option`` and the folder, raised before its block with nothing in or beside the folder touched. The
    folders this call made itself (``os.mkdir`` one at a time: one another run made a moment before is not counted)
    are removed again when the block leaves them empty -- a run that failed or stopped before writing anything --
    while the lock is still held, so a run's cleanup never removes a folder another live run holds. A folder removed
    or replaced between its creation and the lock (by another run that made it and failed) is :class:`FolderBusy`
    too: the lock would be on a folder no longer there. Yields whether a lock is held."""
    out = os.path.abspath(folder)
    missing, path = [], out
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    made = []                                       # outermost first
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by another run a moment ago: not this run's to remove
            os.mkdir(d)
            made.append(d)
    gone = FolderBusy(f"{option} {os.fspath(folder)}: another run removed or replaced the folder as this one "
                      "started; run again")
    try:
        before = os.stat(out)
    except FileNotFoundError:
        raise gone from None
    with contextlib.ExitStack() as stack:
        try:
            held = stack.enter_context(output_folder_lock(out, option))
        except FileNotFoundError:
            raise gone from None
        try:
            after = os.stat(out)                    # the lock's descriptor keeps its folder's inode number taken
        except FileNotFoundError:
            raise gone from None
        if not os.path.samestat(before, after):
            raise gone
        try:
            yield held
        finally:
            for d in reversed(made):                # deepest first, as far as empty: a folder holding files is kept
                try:
                    os.rmdir(d)
                except OSError:
                    break


# ------------------------------------------------------------------ reading JSON: one refusal of a bad document
class JSONReadError(ValueError):
    """A JSON document that cannot be read (:func:`read_json`, :func:`parse_json`, :func:`json_depth_guard`): not
    UTF-8, not valid JSON, or nested too deeply. Its message is ``"WHAT: REASON"``, ``WHAT`` naming the document (a
    file's path, ``corrupt item vocabulary PATH``) and ``REASON`` the problem (the decoder's own text, with the
    position where JSON went wrong); both are kept as ``what`` and ``reason``. A ``ValueError``: bad data."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what, self.reason = what, reason


class JSONNestedTooDeep(JSONReadError):
    """A JSON document nested too deeply (:func:`json_too_deep_reason`): ``[[[...]]]`` past Python's JSON reader,
    whose ``RecursionError`` was a traceback from every command, or past a reader's own ``max_depth``."""


def json_too_deep_reason(limit: int | None = None) -> str:
    """The one wording of a JSON document nested too deeply: ``"nested too deeply to read"``, with ``" (more than
    LIMIT levels)"`` when a reader's own ``limit`` refused it (None: Python's JSON reader gave up, its
    ``RecursionError``)."""
    return "nested too deeply to read" + ("" if limit is None else f" (more than {limit} levels)")


def nested_deeper_than(obj, limit: int) -> bool:
    """Whether the JSON value ``obj`` nests lists / dicts more than ``limit`` levels deep (a flat list or dict is 1
    level, a scalar 0), told without recursion (a value Python's reader could read may still be too deep to copy or
    print: ``copy.deepcopy``, ``repr`` recurse)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_json(text: str | bytes, what: str, max_depth: int | None = None):
    """The JSON value of ``text`` (``json.loads``: ``bytes`` are decoded as ``json.loads`` decodes them). Text that is
    not UTF-8, not valid JSON, or nested deeper than Python's reader goes -- or, with ``max_depth``, than that many
    levels (:func:`nested_deeper_than`) -- is a :class:`JSONReadError` (:class:`JSONNestedTooDeep` for the depth)
    ``"WHAT: REASON"``: the decoder's text (``Expecting value: line 1 column 1 (char 0)``, ``'utf-8' codec can't
    decode byte 0xff in position 0: invalid start byte``) or :func:`json_too_deep_reason`'s; never a traceback."""
    import json

    try:
        value = json.loads(text)
    except RecursionError:                          # [[[...]]]: the C scanner's recursion limit
        raise JSONNestedTooDeep(what, json_too_deep_reason()) from None
    except ValueError as e:                         # JSONDecodeError, UnicodeDecodeError
        raise JSONReadError(what, str(e)) from None
    if max_depth is not None and nested_deeper_than(value, max_depth):
        raise JSONNestedTooDeep(what, json_too_deep_reason(max_depth))
    return value


def read_json(path: str | os.PathLike, what: str | None = None, max_depth: int | None = None):
    """The JSON value of the file ``path``, read as UTF-8 text (as transformers reads a ``config.json``: a byte-order
    mark is no JSON). A file that is not UTF-8, not valid JSON or nested too deeply is a :class:`JSONReadError`
    naming ``what`` (default: the path) and the problem (:func:`parse_json`, ``max_depth`` included); a missing or
    unreadable file is ``open``'s ``OSError``."""
    what = os.fspath(path) if what is None else what
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise JSONReadError(what, str(e)) from None
    return parse_json(text, what, max_depth)


@contextlib.contextmanager
def json_depth_guard(what: str | Callable[[], str], limit: int | None = None,
                     error: Callable[[str, str], BaseException] = JSONNestedTooDeep) -> Iterator[None]:
    """Run a block that reads JSON through another library's reader (transformers' ``from_pretrained`` and
    ``get_config_dict`` read a ``config.json`` with ``json.loads``) and turn the ``RecursionError`` of a document
    nested too deeply into ``error(WHAT, REASON)``: by default :class:`JSONNestedTooDeep` ``"WHAT: nested too deeply
    to read"``; a caller that keeps its own exception type gives a factory of it. ``what`` names the document (a
    callable is called only then); ``limit``: the depth the caller refuses documents past elsewhere, said in the
    reason (:func:`json_too_deep_reason`). Any other error goes on as it was."""
    try:
        yield
    except RecursionError:
        raise error(what() if callable(what) else what, json_too_deep_reason(limit)) from None


# ------------------------------------------------------------------ exit statuses: one table for every command
#: the run did its job
EXIT_OK = 0
#: the run failed: a --model or --data that cannot be found or read, bad data in a file, an export error, a write
#: error (``sys.exit("message")``'s status)
EXIT_ERROR = 1
#: usage error: the options themselves are wrong -- a bad value, a conflicting or missing option (argparse's status)
EXIT_USAGE = 2
#: a verification failed (``export.onnx``, ``export.trt``, ``export.triton``): what failed it is not written
#: (``export.trt`` keeps the verified ONNX graph and its report beside the engine it refused)
EXIT_VERIFY_FAILED = 3
#: something the command needs is missing on this machine: an optional package, TensorRT, a GPU (``--device cuda``)
EXIT_MISSING = 4
#: the epilog of every command's ``--help``: the table above, and the three statuses of :func:`run_cli`
EXIT_CODES = ("exit status: 0 ok; 1 the run failed (a --model or --data that cannot be found or read, bad data, an "
              "export or write error); 2 usage error (a bad, missing or conflicting option); 3 verification failed "
              "(what failed it is not written); 4 a package, TensorRT or GPU it needs is missing here; "
              "130 interrupted (Ctrl-C); 141 stdout closed (| head); 143 terminated (SIGTERM: kill, timeout, a "
              "scheduler's stop)")


class UsageError(ValueError):
    """An option the model, graph, data or file at hand cannot honour, found once that is loaded (``--ks`` or
    ``--topk`` above the items it ranks, ``--temporal-split`` other than the model's run, ``--window`` beyond a fixed
    window, a ``--set`` value the model cannot be built with): the commands report it as a usage error (exit 2,
    :data:`EXIT_USAGE`), the Python API sees a ``ValueError``. One class for every command (``zoo.cli`` and
    ``zoo.evaluate`` re-export it)."""


def exit_with(code: int, message: str) -> NoReturn:
    """End the command with ``message`` on stderr (one line, as ``sys.exit(message)`` prints it) and exit status
    ``code`` (:data:`EXIT_CODES`)."""
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(code)


#: the output path that means standard output (``--json -``): a command writing its product there prints everything
#: else it would print to stdout on stderr instead
STDOUT_PATH = "-"


def int_in(low: int, high: int | None = None, what: str = "an int"):
    """An argparse ``type=``: an int in ``low .. high`` (no upper bound when ``high`` is None); anything else is a
    usage error (exit 2) naming the bound: "expected an int >= 1, got '0'". The commands' number types
    (:func:`positive_int`, :func:`nonnegative_int`, ``zoo.cli``'s) in one place, torch-free (export.build_plugins and
    export.triton_server run on the standard library alone)."""
    import argparse

    bound = f">= {low}" if high is None else f"in {low}..{high}"

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {value!r}") from None
        if n < low or (high is not None and n > high):
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {value!r}")
        return n

    parse.__name__ = f"{what} {bound}"
    return parse


def int_at_least(low: int):
    """An argparse ``type=``: an int >= ``low`` (``--bootstrap``: >= 100); anything else is a usage error naming
    the bound."""
    return int_in(low)


def positive_int(value: str) -> int:
    """An int >= 1 (counts, sizes, cut-offs); anything else is a usage error."""
    return int_in(1)(value)


def nonnegative_int(value: str) -> int:
    """An int >= 0 (a count that may be none); anything else is a usage error."""
    return int_in(0)(value)


def text_stream(*outputs):
    """Where a command prints its tables and other lines: stderr when one of its ``outputs`` (paths) is
    :data:`STDOUT_PATH` -- stdout then holds that output alone -- else stdout (read at call time)."""
    return sys.stderr if STDOUT_PATH in outputs else sys.stdout


def nonfinite_text(x: float) -> str:
    """``"inf"``, ``"-inf"`` or ``"nan"``: a non-finite float as a JSON string (:func:`strict_json`'s ``nonfinite``)
    that ``float()`` reads back, and that keeps infinity and NaN apart (``null`` would not)."""
    return "nan" if x != x else ("inf" if x > 0 else "-inf")


def _nonfinite_replaced(obj, nonfinite: Callable, where: str = ""):
    """``obj`` with every non-finite float in it (in dicts, lists and tuples, at any depth) replaced by
    ``nonfinite(x)``; with ``nonfinite`` None, a ``ValueError`` naming where the first one is (``metrics.HR@10``,
    ``cases[2].max_abs_err``) instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        if nonfinite is None:
            raise ValueError(f"{where or 'the value'} is {obj!r}, which is not a JSON number (strict JSON has no NaN "
                             "or Infinity)")
        return nonfinite(obj)
    if isinstance(obj, dict):
        return {k: _nonfinite_replaced(v, nonfinite, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nonfinite_replaced(v, nonfinite, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def strict_json(obj, nonfinite: Callable[[float], object] | None = None, **kwargs) -> str:
    """``obj`` as strict JSON text (RFC 8259; ``json.dumps(obj, allow_nan=False, **kwargs)``): never the ``NaN``,
    ``Infinity`` or ``-Infinity`` that Python's ``json`` writes by default and that jq, JavaScript's ``JSON.parse``
    and most other readers refuse. A non-finite float in ``obj`` is written as ``nonfinite(x)`` -- the caller says
    what it means there: :func:`nonfinite_text` (the strings ``"inf"``, ``"-inf"``, ``"nan"``), ``lambda x: None``
    (``null``) -- or, with ``nonfinite`` None, is a ``ValueError`` naming where it is (``metrics.HR@10``). Text is
    returned, nothing written: a writer that writes it whole never leaves part of a document (``json.dump`` streams
    its chunks, and stops at the bad number with the document's first part written). Floats are looked for in
    dicts, lists and tuples; what ``kwargs``' ``default`` makes of other objects is checked by ``allow_nan`` alone."""
    import json

    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError as e:
        if "Out of range float" not in str(e):         # a circular reference: json's own error
            raise
    # a non-finite float: looked for (and replaced) only now, the common finite document costs one pass
    return json.dumps(_nonfinite_replaced(obj, nonfinite), allow_nan=False, **kwargs)


def shell_option(flag: str, value: str | os.PathLike) -> str:
    """``flag`` and its ``value`` as shell text that runs as shown (a command a card or a message writes for people
    to copy): ``--flag VALUE`` (``VALUE`` shell-quoted) as usual, ``--flag=VALUE`` (quoted whole) for a value that
    begins with ``-`` -- argparse would read ``--flag -x`` as two options (``expected one argument``), and
    ``shlex.quote`` leaves a leading dash as it is. ``shlex.split`` of the text gives back the one word
    ``flag=value``, or the two words ``flag`` and ``value``."""
    value = os.fspath(value)
    return shlex.quote(f"{flag}={value}") if value.startswith("-") else f"{flag} {shlex.quote(value)}"


#: the exit status of a command whose stdout reader went away (``| head -1``): 128 + SIGPIPE, as a shell reports
#: a process killed by SIGPIPE
EXIT_BROKEN_PIPE = 141
#: the exit status of an interrupted command (Ctrl-C): 128 + SIGINT
EXIT_INTERRUPTED = 130
#: the exit status of a command stopped by SIGTERM (``kill``, ``timeout``, a scheduler's or a container's stop):
#: 128 + SIGTERM, as a shell reports a process killed by it
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """What SIGTERM raises in the main thread while :func:`run_cli` runs a command: a ``KeyboardInterrupt``, so that
    everything an interruption runs (``except KeyboardInterrupt``/``BaseException`` cleanups, ``finally``, the
    ``zoo_hint`` of ``zoo.train``) runs for a stop too -- Python's own SIGTERM action kills the process on the spot,
    leaving every temporary file and stage behind. :func:`run_cli` reports it as ``terminated``, status 143."""


def _raise_terminated(signum, frame) -> NoReturn:
    raise Terminated()


def _catch_sigterm():
    """Make SIGTERM raise :class:`Terminated` (:func:`run_cli`) and return the handler to put back after
    (:func:`_restore_sigterm`), or None when nothing was changed: outside the main thread (signals cannot be set
    there), and when SIGTERM does not have its default action -- ignored (a launcher's ``SIG_IGN`` is kept, as Python
    keeps an ignored SIGINT), or handled by the program that calls :func:`run_cli` (its handler stays)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return None
    try:
        previous = signal.getsignal(signal.SIGTERM)
        if previous != signal.SIG_DFL:
            return None
        signal.signal(signal.SIGTERM, _raise_terminated)
    except (OSError, ValueError):                          # pragma: no cover - a platform that refuses it
        return None
    return previous


def _restore_sigterm(previous) -> None:
    """Put back the SIGTERM handler :func:`_catch_sigterm` replaced (nothing when it returned None)."""
    if previous is not None:
        import signal

        signal.signal(signal.SIGTERM, previous)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end is closed: ``poll`` reports an error on it (Linux,
    macOS). Where that cannot be told, a ``BrokenPipeError`` that reached the top is taken for stdout's."""
    try:
        import select

        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except Exception:                                      # no poll, no stdout (None), no descriptor
        return True


class _WatchedStdout:
    """``sys.stdout`` while :func:`run_cli` runs a command: the stream it wraps, everything delegated to it, except that
    an ``OSError`` or ``ValueError`` its ``write``/``writelines``/``flush`` raise (a full disk, EIO, a closed stream,
    text its encoding cannot hold) is marked as stdout's (``zoo_stdout_error``, :func:`_stdout_failure`) before it
    goes on up unchanged -- so that :func:`run_cli` can tell a failed write of the command's product to stdout from
    an ``OSError`` of anything else (a data file that cannot be read keeps its own message and handling). The first
    such error is kept as ``failure``: one the command caught and went on after (argparse's ``--help`` drops a
    failed write) still fails the run."""

    __slots__ = ("_stream", "failure")

    def __init__(self, stream) -> None:
        object.__setattr__(self, "_stream", stream)
        object.__setattr__(self, "failure", None)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._stream, name, value)

    def _call(self, method: str, *args):
        try:
            return getattr(self._stream, method)(*args)
        except (OSError, ValueError) as e:
            e.zoo_stdout_error = True
            if self.failure is None:
                object.__setattr__(self, "failure", e)
            raise

    def write(self, text):
        return self._call("write", text)

    def writelines(self, lines):
        return self._call("writelines", lines)

    def flush(self):
        return self._call("flush")


class _NoStdout:
    """What :func:`_watch_stdout` watches in place of a stdout the process has not got (``>&-``, a daemon: Python sets
    ``sys.stdout`` to None, and ``print`` then drops everything without an error): writing anything to it raises
    ``OSError(EBADF, "it is closed")``, so a command that prints its product (``zoo.hub list``, ``zoo.recommend``,
    ``zoo.evaluate``'s table) fails as one whose stdout is a full disk does; a command that prints nothing there
    (only ``--out FILE``) is not affected. Writing nothing (``""``) and flushing succeed."""

    encoding = "utf-8"
    errors = "strict"
    closed = False

    def write(self, text):
        if text:
            import errno

            raise OSError(errno.EBADF, "it is closed")
        return 0

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        import io

        raise io.UnsupportedOperation("standard output is closed")


def _stdout_closed() -> bool:
    """Whether this process has no stdout: ``sys.stdout`` is None (Python's answer to a descriptor 1 closed at
    start: ``>&-``) or its descriptor is not open (closed since)."""
    if sys.stdout is None:
        return True
    try:
        os.fstat(sys.stdout.fileno())
    except OSError as e:
        import errno

        return e.errno == errno.EBADF
    except (AttributeError, ValueError):                   # no descriptor (a StringIO, a capture): a stream still
        pass
    return False


def _hold_descriptor_1() -> None:
    """With descriptor 1 closed, the next file the command opens (its ``--out``) would get it -- and whatever writes
    to descriptor 1 below Python (C code's ``printf``, ``os.write(1, ...)``) would write into that file: descriptor
    1 is pointed at ``os.devnull`` first (and left there)."""
    try:
        os.fstat(1)
        return
    except OSError:
        pass
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        if fd != 1:
            os.dup2(fd, 1)
            os.close(fd)
    except OSError:                                        # pragma: no cover - no os.devnull
        pass


def _watch_stdout():
    """Make ``sys.stdout`` a :class:`_WatchedStdout` of itself and return what to put back after
    (:func:`_unwatch_stdout`), or None when nothing was changed (one already watched: a nested call). A process
    without a stdout (``>&-``: ``sys.stdout`` is None, or its descriptor is not open, :func:`_stdout_closed`) gets a
    watched :class:`_NoStdout`: what the command prints fails the run (``cannot write to standard output (it is
    closed)``, status 1) rather than being dropped with status 0, while a command that prints nothing still ends
    with 0."""
    if isinstance(sys.stdout, _WatchedStdout):
        return None
    if _stdout_closed():
        _hold_descriptor_1()
        watched = _WatchedStdout(_NoStdout())
    else:
        watched = _WatchedStdout(sys.stdout)
    original, sys.stdout = sys.stdout, watched
    return watched, original


def _unwatch_stdout(watching) -> None:
    """Put back the stdout :func:`_watch_stdout` wrapped, unless the command replaced ``sys.stdout`` itself since."""
    if watching is not None and sys.stdout is watching[0]:
        sys.stdout = watching[1]


def _stdout_failure(e: BaseException) -> str | None:
    """Why writing stdout failed, when ``e`` says it did -- an error :class:`_WatchedStdout` marked (the OS error's
    text: ``No space left on device``; ``it is closed``), or, with no stdout at all (``>&-``: ``sys.stdout`` is None),
    the ``AttributeError`` of writing to it (``json.dump(x, sys.stdout)``: ``'NoneType' object has no attribute
    'write'``; with no stdout, a ``write`` on None is taken for stdout's) -- else None: an error of something
    else."""
    if getattr(e, "zoo_stdout_error", False):
        if isinstance(e, OSError):
            return e.strerror or str(e) or type(e).__name__
        return "it is closed" if "closed file" in str(e) else (str(e) or type(e).__name__)
    if (isinstance(e, AttributeError) and sys.stdout is None and getattr(e, "obj", 0) is None
            and getattr(e, "name", None) in ("write", "writelines", "flush")):
        return "it is closed"
    return None


def _stdout_to_devnull() -> None:
    """Point stdout's descriptor at ``os.devnull``, so that flushing what is still buffered (at exit) cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, AttributeError, ValueError):
        pass


#: what marks an out-of-memory error that is not a ``MemoryError``: torch's CPU allocator (a ``RuntimeError``) and
#: onnxruntime's arena (its own exception classes)
_OOM_MARKS = ("DefaultCPUAllocator: can't allocate memory", "Failed to allocate memory")


def _bytes_text(n: int) -> str:
    """``274877906944`` -> ``"256.0 GiB"``."""
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024 or unit == "EiB":
            break
        size /= 1024
    return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"


def _out_of_memory(e: BaseException) -> str | None:
    """For :func:`run_cli`: ``None`` unless ``e`` says the process ran out of memory -- a ``MemoryError`` (numpy's
    ``_ArrayMemoryError`` is one), torch's CPU allocator ``RuntimeError`` ("DefaultCPUAllocator: can't allocate
    memory: you tried to allocate N bytes"), a ``torch.OutOfMemoryError`` (CUDA's), onnxruntime's "Failed to allocate
    memory" -- else the size it tried to allocate, ``"256.0 GiB"``, or ``""`` when the error does not say. Any other
    ``RuntimeError`` is None."""
    import re

    text = str(e)
    torch = sys.modules.get("torch")
    oom = (isinstance(e, MemoryError)
           or (torch is not None and isinstance(e, getattr(torch, "OutOfMemoryError", ())))
           or (isinstance(e, RuntimeError) and _OOM_MARKS[0] in text)
           or (type(e).__module__.startswith("onnxruntime") and _OOM_MARKS[1] in text))
    if not oom:
        return None
    m = re.search(r"[Tt]ried to allocate (\d+) bytes|buffer of size (\d+)", text)
    if m:
        return _bytes_text(int(m.group(1) or m.group(2)))
    m = re.search(r"(?:Unable|[Tt]ried) to allocate (\d+(?:\.\d*)? ?[KMGTPE]?i?B)\b", text)
    return m.group(1) if m else ""


def _size_options(argv) -> list[str]:
    """The options of the command line ``argv`` given a whole number (``--max-len 1000000000``, ``--set
    hidden_size=1000000``, ``--sampled uni100000000``), largest number first, at most three: what an out-of-memory
    line of :func:`run_cli` names to check (a seed is no size and is left out)."""
    import re

    found: list[tuple[int, str]] = []
    option = None
    for token in (str(t) for t in argv):
        if token.startswith("--"):
            option, _, token = token.partition("=")
            if not token:
                continue
        if option is None or "seed" in option:
            continue
        m = re.fullmatch(r"(?:[\w.]+=|uni|pop)?([0-9]+)", token)
        if m and int(m.group(1)) > 1:
            found.append((int(m.group(1)), f"{option} {token}"))
    return [text for _, text in sorted(found, key=lambda f: -f[0])[:3]]


def run_cli(main: Callable, *args, prog: str | None = None):
    """Run a command's ``main(*args)`` as every ``python -m`` entry and console script of the zoo and its exporters
    does, and return its result. A closed stdout (``| head -1``: ``BrokenPipeError`` on stdout) ends the command
    quietly with status 141 (what was written whole stays whole; nothing half-written is left, the writers replace
    their outputs only once complete). Any other failure to write stdout -- a full disk (``> /dev/full``), an I/O
    error, no stdout at all (``>&-``) -- ends it with one line on stderr, ``PROG: error: cannot write to standard
    output (No space left on device)``, and status 1 (:data:`EXIT_ERROR`), without a traceback -- with no stdout, as
    soon as the command writes anything there (``print`` would drop it: :class:`_NoStdout`), while a command that
    writes nothing there still ends with 0. ``sys.stdout`` is watched for the call (:class:`_WatchedStdout`), so
    only an error of writing it is taken for stdout's; any other
    ``OSError`` (a data file that cannot be read) goes on up as it was. A file output is never left cut short by it:
    the writers replace their files only once complete. A command ending with ``sys.exit`` whose stdout cannot take
    what it printed gets that line too (status 1 in place of 0). Ctrl-C (``KeyboardInterrupt``) ends it with one
    line on stderr -- ``PROG: interrupted``, and the hint the command attached to the exception as ``zoo_hint``
    (``zoo.train``: continue with ``--resume``) -- and status 130, without a traceback. SIGTERM (``kill``,
    ``timeout``, a scheduler's or a container's stop) ends it the same way -- it raises :class:`Terminated`, a
    ``KeyboardInterrupt``, so the same cleanups run -- with ``PROG: terminated`` (and the hint) and status 143; the
    handler is set for the call only (:func:`_catch_sigterm`: in the main thread, where SIGTERM has its default
    action) and put back after. ``prog``: the command's name in those lines (default: ``python -m MODULE`` of
    ``main``'s module, or its console script's name: :func:`command_prog`). Running out of memory -- a
    ``MemoryError``, torch's CPU allocator (or CUDA's) failing, onnxruntime's arena failing; any other
    ``RuntimeError`` goes on up as it was -- ends it with one line on stderr, ``PROG: error: out of memory (tried to
    allocate 256.0 GiB); check the size options: --max-len 1000000000`` (the whole-number options given:
    :func:`_size_options` of ``args[0]`` when it is the command line, else ``sys.argv``), and status 1."""
    if prog is None:
        spec = getattr(main, "__globals__", {}).get("__spec__")          # ``python -m zoo.train``: __main__'s spec
        prog = command_prog(spec.name) if spec is not None else getattr(main, "__module__", "command")

    def stdout_failed(e: BaseException, code=EXIT_OK) -> None:
        """End the command when ``e`` is a failed write of stdout -- with status 141, quietly, for a reader gone
        (``| head``) when ``code`` is 0, else with the stdout line and status 1 (``code`` when that is a failure
        already) -- and return otherwise."""
        reason = _stdout_failure(e)
        if reason is None:
            return
        _stdout_to_devnull()                    # what is still buffered must not fail again at exit
        if isinstance(e, BrokenPipeError) and _stdout_reader_gone():
            sys.exit(EXIT_BROKEN_PIPE if code in (None, EXIT_OK) else code)
        if isinstance(e, UnicodeEncodeError):   # Windows: a redirected stdout takes the ANSI code page (cp1252)
            encoding = getattr(sys.stdout, "encoding", None) or e.encoding
            reason += (f"; its encoding, {encoding}, cannot write these characters: set PYTHONUTF8=1 (or "
                       "PYTHONIOENCODING=utf-8) and run it again, or write to a file with --out FILE where the "
                       "command has that option")
        print(f"{prog}: error: cannot write to standard output ({reason})", file=sys.stderr, flush=True)
        sys.exit(EXIT_ERROR if code in (None, EXIT_OK) else code)

    def flushed() -> BaseException | None:
        """Flush what is still buffered for stdout (now, not at the interpreter's exit, where a failure is a
        traceback-like note and status 120); the error that stops it, else the write error the command caught and
        went on after, else None."""
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except (OSError, ValueError) as e:
            e.zoo_stdout_error = True
            return e
        return watching[0].failure if watching is not None else None

    previous = _catch_sigterm()
    watching = _watch_stdout()
    try:
        try:
            result = main(*args)
            if sys.stdout is not None:
                sys.stdout.flush()              # what print left buffered: a reader gone by now is a broken pipe too
        finally:
            _restore_sigterm(previous)          # a second SIGTERM while the line below is printed stops it at once
            _unwatch_stdout(watching)
    except BrokenPipeError as e:
        if not _stdout_reader_gone():
            stdout_failed(e)
            raise
        _stdout_to_devnull()
        sys.exit(EXIT_BROKEN_PIPE)
    except KeyboardInterrupt as e:
        hint = getattr(e, "zoo_hint", None)
        terminated = isinstance(e, Terminated)
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except (OSError, ValueError):
            _stdout_to_devnull()
        print(f"{prog}: {'terminated' if terminated else 'interrupted'}" + (f"; {hint}" if hint else ""),
              file=sys.stderr, flush=True)
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
    except (OSError, ValueError, AttributeError) as e:
        stdout_failed(e)
        raise
    except SystemExit as e:                     # its message (sys.exit("error: ...")) is printed as it ends
        failure = flushed()
        caught = watching[0].failure if watching is not None else None
        if failure is not None and (e.code in (None, EXIT_OK) or failure is not caught):
            stdout_failed(failure, e.code)      # a failed command said why itself, unless its stdout failed after
        raise
    except Exception as e:                      # out of memory: a size option too large for this machine, likely
        tried = _out_of_memory(e)
        if tried is None:
            raise
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except (OSError, ValueError):
            _stdout_to_devnull()
        argv = args[0] if args and isinstance(args[0], (list, tuple)) else sys.argv[1:]
        options = _size_options(argv)
        print(f"{prog}: error: out of memory" + (f" (tried to allocate {tried})" if tried else "")
              + ("; check the size options: " + ", ".join(options) if options
                 else "; check the size options (batch sizes, lengths, counts, model sizes)"),
              file=sys.stderr, flush=True)
        sys.exit(EXIT_ERROR)
    if watching is not None and watching[0].failure is not None:
        stdout_failed(watching[0].failure)      # a write error the command caught and went on after
    return result


# ------------------------------------------------------------------ console scripts (pyproject [project.scripts])
#: each command's console script, by module: ``pip install`` puts these on the PATH
SCRIPTS = {"zoo.train": "zoo-train", "zoo.evaluate": "zoo-evaluate", "zoo.recommend": "zoo-recommend",
           "zoo.embed": "zoo-embed", "zoo.compare": "zoo-compare", "zoo.soup": "zoo-soup", "zoo.hub": "zoo-hub",
           "zoo.convert": "zoo-convert", "zoo.download": "zoo-download", "export.onnx": "export-onnx",
           "export.trt": "export-trt", "export.triton": "export-triton", "export.perf_data": "export-perf-data",
           "export.build_plugins": "export-build-plugins", "export.triton_server": "export-triton-server"}
#: the module whose console script runs in this process (set by :func:`run_script`), None under ``python -m``
_running_script: str | None = None


def command_prog(module: str) -> str:
    """The name a command's ``--help`` usage line and its errors give it (its parser's ``prog``): its console script's
    (``zoo-train``) when this process runs that script, else ``python -m zoo.train`` -- what the user typed."""
    return SCRIPTS[module] if module == _running_script and module in SCRIPTS else f"python -m {module}"


def run_script(module: str) -> None:
    """Run the command ``module`` (``"export.onnx"``) as its console script: through :func:`run_cli`, exiting with the
    status its ``main`` returns when that is an int (the exporters'), else 0 -- the zoo commands' ``main`` return
    their result (a run's log, the metrics) for Python callers, which ``sys.exit(entry())`` would print to stderr
    with status 1. ``module`` is imported inside :func:`run_cli` (torch, transformers, onnx: seconds), so a Ctrl-C
    or SIGTERM then is its one line too (a ``zoo-*`` script has loaded ``zoo`` before this runs). An optional package
    the module imports at load time and that is missing here is one line and status 4, as under ``python -m``."""
    import importlib

    global _running_script
    _running_script = module
    from .deps import MissingDependencyError

    def command():
        try:
            loaded = importlib.import_module(module)
        except MissingDependencyError as e:
            exit_with(EXIT_MISSING, f"error: {e}")
        return loaded.main()

    result = run_cli(command, prog=command_prog(module))
    if isinstance(result, int) and not isinstance(result, bool):
        sys.exit(result)


def onnx_script() -> None:
    """``export-onnx``: ``python -m export.onnx``."""
    run_script("export.onnx")


def trt_script() -> None:
    """``export-trt``: ``python -m export.trt``."""
    run_script("export.trt")


def triton_script() -> None:
    """``export-triton``: ``python -m export.triton``."""
    run_script("export.triton")


def perf_data_script() -> None:
    """``export-perf-data``: ``python -m export.perf_data``."""
    run_script("export.perf_data")


def build_plugins_script() -> None:
    """``export-build-plugins``: ``python -m export.build_plugins``."""
    run_script("export.build_plugins")


def triton_server_script() -> None:
    """``export-triton-server``: ``python -m export.triton_server``."""
    run_script("export.triton_server")
