"""Fused CPU selective scan (Mamba-1) as a lazily built PyTorch C++ extension.

``selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None,
delta_softplus=False, return_last_state=False, initial_state=None)`` computes exactly
what ``mamba_ssm.ops.selective_scan_interface.selective_scan_ref`` computes, for the
input-dependent case (``B``, ``C`` of shape ``[batch, N, L]``), without ever building the
``[batch, E, L, N]`` tensors of the reference:

* forward: one sequential scan per (batch, channel) row with the ``[N]`` state held in
  cache, rows in parallel (``at::parallel_for``), inner loop over ``N`` vectorised;
* backward (C++ as well): the forward stores a checkpoint of the state every
  ``CHECKPOINT_CHUNK`` (=32) steps (``[batch, E, ceil(L/32), N]`` -- for N=32 the size of
  one ``[batch, E, L]`` tensor); the backward recomputes each chunk's states from its
  checkpoint into a small per-thread scratch and runs the reverse-time adjoint recursion
  (cost: one extra forward pass).  Gradients for ``u, delta, A, B, C, D, z, delta_bias,
  initial_state`` (and a gradient flowing into ``last_state``) are supported.

Dtypes: float32 (training) and float64 (used by ``gradcheck``).  CPU tensors only.

The extension is compiled on first use with ``torch.utils.cpp_extension.load`` (needs a
C++ compiler and the ``ninja`` PyPI package) into ``$TORCH_EXTENSIONS_DIR`` or
``~/.cache/zoo_extensions`` (a folder per torch version and per checkout); later imports reuse the cached build.
Flags: ``-O3 -fopenmp -fno-trapping-math`` (no ``-march=native``, no fast-math; ``-fno-trapping-math``
only lets GCC if-convert/vectorise the exp loop, IEEE results are unchanged): the kernels
are compiled for the x86-64 baseline and for AVX2+FMA and the AVX2 copy is picked at run
time when the CPU supports it, so the cached binary is portable.  ``-fopenmp`` lets ``at::parallel_for`` run the rows
on ATen's OpenMP threads (its loop is inlined from the headers).  A compiler without OpenMP (Apple clang rejects the
flag) gets the same kernel built without it (:data:`_VARIANTS`: the rows then run on one thread), in a build folder of
its own, with a one-time notice; a file in the OpenMP build folder (:data:`_NO_OPENMP_FILE`, naming the compiler)
records that, so later processes do not retry the OpenMP build with that compiler (remove the file to retry).
``is_available()`` tries the build once, caches the answer and warns once, in one line, if it failed (what failed,
that the pure-PyTorch reference runs instead, and where the full compiler log is: :data:`_BUILD_LOG` in the build
folder); importing this module never raises.

Builds are serialised across processes by an ``flock`` on the build folder (:func:`_build_lock`), which the kernel
releases when its holder dies: torch's own ``lock`` file, which a build killed half-way leaves behind and torch then
waits on forever, is removed (with a warning) when found under it.

A finished build is recorded in its folder (:data:`_COMPLETE_FILE`, written whole once the library has loaded: the
torch, Python, source and flags it was built from, and the library's SHA-256). A later process whose torch, Python,
source and flags are the same loads that library as it is (:func:`_load_complete`), writing nothing and taking no
lock -- so a kernel built once into a container image, or a cache of another user, serves a read-only filesystem; a
library a killed build left half-written does not match its record (nor has one) and is rebuilt, under the lock. A
cache folder that cannot be written and holds no such build is :class:`KernelCacheError`, whose one line names
``TORCH_EXTENSIONS_DIR``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import json
import os
import pathlib
import platform
import sys
import tempfile
import threading
import warnings
from typing import Optional

import torch

__all__ = ["is_available", "selective_scan_cpu", "load_extension", "CHECKPOINT_CHUNK", "KernelBuildError",
           "KernelCacheError"]

CHECKPOINT_CHUNK = 32
_EXT_NAME = "zoo_selective_scan_cpu"  # bump the build dir when flags change
#: the builds tried in turn, each ``(name, extra_cflags, extra_ldflags)`` and built into a folder of its own
#: (:func:`_build_dir`): with OpenMP, then without it for compilers that have none (Apple clang). Tuples: torch's
#: ``load`` appends its own link flags to the lists it is given, so each call gets fresh lists (:func:`_build`)
_VARIANTS = (
    (_EXT_NAME, ("-O3", "-fopenmp", "-fno-trapping-math"), ("-fopenmp",)),
    (_EXT_NAME + "_noomp", ("-O3", "-fno-trapping-math"), ()),
)
#: in the OpenMP variant's build folder: the compiler (``$CXX``) that failed to build it while the build without
#: OpenMP succeeded -- later loads with that compiler go straight to the build without OpenMP
_NO_OPENMP_FILE = "no-openmp-compiler.txt"
#: in the first variant's build folder: the full compiler output of the last failed build
_BUILD_LOG = "build-failed.log"
#: in each variant's build folder, written whole once its library has loaded (:func:`_record_complete`): what it
#: was built from (:func:`_build_key`), the library's file name and its SHA-256 -- the library is complete when its
#: record says so and is loaded without a build (:func:`_load_complete`)
_COMPLETE_FILE = "zoo-build-complete.json"
_SRC = pathlib.Path(__file__).resolve().parent / "csrc" / "selective_scan_cpu.cpp"

_lock = threading.Lock()
_ext = None
_tried = False
_error: Optional[str] = None


def _cache_root() -> str:
    """The folder the build folders are in: ``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/zoo_extensions``."""
    return os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "zoo_extensions")


def _build_dir(name: str = _EXT_NAME, create: bool = True) -> str:
    """The build folder of the variant ``name`` (created unless ``create`` is false: a load that only reads)."""
    # one folder per torch version, so that an upgrade never loads a stale binary, and per source file: ninja's build
    # file names the source's path, so two checkouts sharing one folder rebuilt it in turn at every load
    src = hashlib.sha256(str(_SRC).encode()).hexdigest()[:10]
    d = os.path.join(_cache_root(), f"{name}_torch{torch.__version__.replace('+', '_')}_{src}")
    if create:
        os.makedirs(d, exist_ok=True)
    return d


class KernelCacheError(RuntimeError):
    """The kernel's cache folder cannot be written (a read-only filesystem, a folder of another user) and holds no
    complete build for this torch, Python, source and flags: ``str()`` is one line naming the folder and the fix."""

    def __init__(self, folder: str, exc: OSError):
        why = exc.strerror or str(exc)
        super().__init__(
            f"the kernel cache {folder} cannot be written ({why}) and holds no complete build of the kernel for this "
            "torch, Python and source: set TORCH_EXTENSIONS_DIR to a writable folder, or build the kernel into this "
            "cache while it is writable (python -c 'from zoo.ops import selective_scan_cpu as s; s.load_extension()')")
        self.folder = folder


class KernelBuildError(RuntimeError):
    """The fused kernel could not be built: ``str()`` is one line (the compiler's last error line and where the full
    log is); ``log_path`` is that log (``None`` where it could not be written)."""

    def __init__(self, summary: str, log_path: Optional[str]):
        where = f"full compiler log: {log_path}" if log_path else "the compiler log could not be saved"
        super().__init__(f"{summary}; {where}")
        self.log_path = log_path


def _compiler() -> str:
    """The C++ compiler torch's builder runs (``$CXX``, else ``c++``)."""
    return os.environ.get("CXX") or "c++"


def _last_error_line(text: str) -> str:
    """The line of a build's output that says what failed: the last compiler/linker ``error:`` line, else the last
    line naming an error, else the last line (at most 200 characters)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for pick in (lambda ln: "error:" in ln.lower(), lambda ln: "error" in ln.lower() or "cannot find" in ln.lower()):
        hits = [ln for ln in lines[1:] if pick(ln)]          # lines[0]: torch's "Error building extension ..."
        if hits:
            return hits[-1][:200]
    return lines[-1][:200] if lines else "no output"


def _save_log(text: str) -> Optional[str]:
    """Write a failed build's full output to :data:`_BUILD_LOG` in the first variant's build folder (else the
    temporary folder); returns its path, or ``None`` where neither can be written."""
    try:
        path = os.path.join(_build_dir(_VARIANTS[0][0]), _BUILD_LOG)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path
    except OSError:
        pass
    try:
        fd, path = tempfile.mkstemp(prefix="zoo_selective_scan_cpu-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return path
    except OSError:
        return None


def _openmp_refused() -> bool:
    """Whether this compiler already failed the OpenMP build where the build without OpenMP succeeded (reads only:
    a read-only cache answers it too)."""
    try:
        path = os.path.join(_build_dir(_VARIANTS[0][0], create=False), _NO_OPENMP_FILE)
        with open(path, encoding="utf-8") as f:
            return f.read().strip() == _compiler()
    except OSError:
        return False


def _write_whole(folder: str, name: str, text: str) -> None:
    """Write ``folder/name`` whole with the umask's mode (:func:`zoo.cli.written_whole`), as the build's own files: a
    cache built by one user (a container image's build) is read by others; raises ``OSError``."""
    from ..cli import written_whole

    with written_whole(os.path.join(folder, name)) as f:
        f.write(text)


def _record_openmp_refused() -> None:
    """Record :func:`_openmp_refused` for later processes (written whole; a folder this user cannot write in is
    left as it is: the OpenMP build is then tried again next time, nothing else)."""
    try:
        _write_whole(_build_dir(_VARIANTS[0][0]), _NO_OPENMP_FILE, _compiler() + "\n")
    except OSError:
        pass


def _build_key(name: str, cflags, ldflags) -> dict:
    """What a build of the variant ``name`` depends on: torch (version and commit), the Python ABI, the platform, the
    source's SHA-256 and the flags. A recorded build (:data:`_COMPLETE_FILE`) is loaded only when all of it is the
    same; the compiler is not part of it (a built library does not need one)."""
    return {"name": name, "torch": torch.__version__, "torch_git": getattr(torch.version, "git_version", None),
            "python": sys.implementation.cache_tag, "platform": f"{sys.platform}-{platform.machine()}",
            "source_sha256": hashlib.sha256(_SRC.read_bytes()).hexdigest(),
            "extra_cflags": list(cflags), "extra_ldflags": list(ldflags)}


def _import_library(path: str):
    """Import the extension module ``path`` (``NAME.so``) as ``torch.utils.cpp_extension.load`` imports what it built
    (``importlib`` from the file: ``PyInit_NAME``)."""
    module_name = os.path.basename(path).split(".")[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recorded_library(build_dir: str, key: dict):
    """``(path, sha256)`` of the library the record in ``build_dir`` (:data:`_COMPLETE_FILE`) names, when the record
    is of a build with this ``key`` (:func:`_build_key`); else None (no record, another build's, unreadable)."""
    try:
        with open(os.path.join(build_dir, _COMPLETE_FILE), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    library, sha = record.get("library"), record.get("sha256")
    if (not isinstance(library, str) or not isinstance(sha, str) or os.path.basename(library) != library
            or not library.startswith(key["name"] + ".")):
        return None
    return os.path.join(build_dir, library), sha


def _load_complete(build_dir: str, key: dict):
    """The library a finished build recorded in ``build_dir`` (:data:`_COMPLETE_FILE`), imported without writing
    anything -- when the record's :func:`_build_key` is ``key`` and the library's SHA-256 is the recorded one (a
    library a killed build left half-written, or one rebuilt since, is not) -- else None."""
    from export.fsutil import file_sha256

    recorded = _recorded_library(build_dir, key)
    if recorded is None:
        return None
    try:
        if file_sha256(recorded[0]) != recorded[1]:
            return None
        return _import_library(recorded[0])
    except (OSError, ImportError):
        return None


def _forget_complete(build_dir: str, key: dict) -> None:
    """Remove the record of a finished build before a (re)build rewrites the library (no process loads it
    meanwhile). A library whose record has this ``key`` but not its SHA-256 was changed after its build (cut short,
    overwritten): it is removed too, so that torch relinks it (ninja's log still calls it up to date)."""
    from export.fsutil import file_sha256

    recorded = _recorded_library(build_dir, key)
    with contextlib.suppress(OSError):
        if recorded is not None and file_sha256(recorded[0]) != recorded[1]:
            os.remove(recorded[0])
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(build_dir, _COMPLETE_FILE))


def _record_complete(build_dir: str, ext, key: dict) -> None:
    """Record that the library of ``ext`` (just built or checked by torch, and loaded) is complete
    (:data:`_COMPLETE_FILE`, written whole); a folder where it cannot be written is left as it is (the next process
    takes the lock and lets torch check the build again, nothing else)."""
    from export.fsutil import file_sha256

    path = getattr(ext, "__file__", None)
    if not path or os.path.dirname(os.path.abspath(path)) != os.path.abspath(build_dir):
        return
    try:
        record = {"key": key, "library": os.path.basename(path), "sha256": file_sha256(path), "compiler": _compiler()}
        _write_whole(build_dir, _COMPLETE_FILE, json.dumps(record, indent=1) + "\n")
    except OSError:
        pass


#: what an ``OSError`` of creating the build folder or its lock means when the cache cannot be written
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _build(name: str, cflags, ldflags, key: dict, verbose: bool):
    """Build (or let torch check and load) the variant ``name`` under the build lock, and record it complete; raises
    :class:`KernelCacheError` when the folder or its lock cannot be created for want of write access."""
    from torch.utils.cpp_extension import load

    with contextlib.ExitStack() as stack:
        try:
            build_dir = _build_dir(name)
            stack.enter_context(_build_lock(build_dir))
        except OSError as exc:
            if exc.errno in _UNWRITABLE:
                raise KernelCacheError(_build_dir(name, create=False), exc) from exc
            raise
        ext = _load_complete(build_dir, key)            # built by another process while this one waited on the lock
        if ext is not None:
            return ext
        _forget_complete(build_dir, key)
        with _some_stdout():
            ext = load(name=name, sources=[str(_SRC)], extra_cflags=list(cflags), extra_ldflags=list(ldflags),
                       build_directory=build_dir, verbose=verbose)
        _record_complete(build_dir, ext, key)
        return ext


def load_extension(verbose: bool = False):
    """Load the extension, building it the first time; raises on failure (:class:`KernelBuildError` when the
    compiler fails, with one line and the path of the full log; :class:`KernelCacheError` when the cache folder
    cannot be written and holds no complete build). The build with OpenMP is tried first, then the one without
    (:data:`_VARIANTS`), unless this compiler is known to fail the first (:func:`_openmp_refused`). A variant whose
    complete build is recorded in its folder (:func:`_load_complete`) is loaded without writing anything and without
    the lock; only a build takes the lock (:func:`_build`)."""
    global _ext
    if _ext is not None:
        return _ext
    try:
        import ninja  # noqa: F401  (torch.utils.cpp_extension.load needs it)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("the 'ninja' package is missing (pip install ninja)") from exc
    if not _SRC.exists():
        raise RuntimeError(f"extension source not found: {_SRC}")

    variants = _VARIANTS[1:] if _openmp_refused() else _VARIANTS
    failures = []
    for name, cflags, ldflags in variants:
        key = _build_key(name, cflags, ldflags)
        ext = _load_complete(_build_dir(name, create=False), key)
        if ext is None:
            try:
                ext = _build(name, cflags, ldflags, key, verbose)
            except Exception as exc:  # noqa: BLE001 - a compiler's failure of any kind: the next variant, or the report
                failures.append((name, cflags, exc))
                continue
        built = [f for f in failures if not isinstance(f[2], KernelCacheError)]     # the compiler's failures
        if built and name != _VARIANTS[0][0]:
            _record_openmp_refused()
            log = _save_log(_failure_text(built))
            warnings.warn(f"the C++ compiler {_compiler()!r} could not build the fused CPU kernel with OpenMP "
                          f"({_last_error_line(str(built[0][2]))}); it was built without OpenMP, so each scan runs "
                          f"on one thread" + (f" (full compiler log: {log})" if log else ""), RuntimeWarning,
                          stacklevel=2)
        _ext = ext
        return _ext
    compiler_failures = [f for f in failures if not isinstance(f[2], KernelCacheError)]
    if not compiler_failures:
        raise failures[0][2]
    log = _save_log(_failure_text(compiler_failures))
    raise KernelBuildError(_last_error_line(str(compiler_failures[-1][2])), log) from compiler_failures[-1][2]


def _failure_text(failures) -> str:
    return "\n\n".join(f"=== build {name} (extra_cflags {' '.join(cflags)}, compiler {_compiler()}) ===\n"
                        f"{type(exc).__name__}: {exc}" for name, cflags, exc in failures)


@contextlib.contextmanager
def _some_stdout():
    """``sys.stdout`` as ``load`` needs it (it flushes it): a process started without stdout (``>&-``, a daemon)
    has ``sys.stdout = None``, which made every load fail and the scan fall back; it gets ``os.devnull`` meanwhile."""
    if sys.stdout is not None:
        yield
        return
    with open(os.devnull, "w") as devnull:
        sys.stdout = devnull
        try:
            yield
        finally:
            sys.stdout = None


def _torch_uses_file_baton() -> bool:
    """True when torch's extension builder locks with ``torch.utils.file_baton.FileBaton`` (torch <= 2.13): a build
    killed half-way leaves its ``lock`` file, on which the next build waits forever. torch >= 2.14 locks with an
    ``flock`` (``torch.utils._filelock.FileLock``) that dies with its holder, and leaves the file after a normal
    build: nothing stale to remove then."""
    import torch.utils.cpp_extension as cpp_extension

    return "FileBaton" in vars(cpp_extension)


@contextlib.contextmanager
def _build_lock(build_dir: str):
    """Hold an exclusive ``flock`` on ``build_dir/.zoo-build.flock`` (POSIX; elsewhere nothing is held). Every zoo
    process builds or loads under it, and the kernel drops it when its holder dies, so a torch ``lock`` file found
    while holding it belongs to a build that was killed: torch would wait on it forever, so it is removed, with a
    warning naming it. Only torch's file baton (torch <= 2.13: the ``lock`` file's existence is the lock) leaves
    such a file behind; from torch 2.14 on, torch holds an ``flock`` on ``lock`` and keeps the file after every build,
    so it is left alone (:func:`_torch_uses_file_baton`)."""
    from export.fsutil import build_lock

    with build_lock(build_dir) as held:       # an OSError (a folder this user cannot write in) propagates
        stale = os.path.join(build_dir, "lock")
        if held and _torch_uses_file_baton() and os.path.exists(stale):
            warnings.warn(f"removing {stale}: a build of the fused CPU kernel was interrupted and left torch's build "
                          "lock behind (a later build would wait on it forever)", stacklevel=3)
            os.remove(stale)
        yield


def is_available() -> bool:
    """True when the extension builds/loads; tried once, warns once with the reason."""
    global _tried, _error
    if _ext is not None:
        return True
    with _lock:
        if not _tried:
            _tried = True
            try:
                load_extension()
            except Exception as exc:  # noqa: BLE001 - any build problem means "unavailable"
                one_line = isinstance(exc, (KernelBuildError, KernelCacheError))
                _error = str(exc) if one_line else f"{type(exc).__name__}: {exc}"
                warnings.warn(
                    f"zoo: the fused CPU selective-scan kernel is unavailable ({_error}); Mamba's selective scan "
                    "runs the pure-PyTorch reference instead (about 25x slower to train on CPU)",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _ext is not None


def unavailable_reason() -> Optional[str]:
    """Why the build failed (None if it succeeded or was not tried)."""
    return _error


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, chunk):
        ext = load_extension()
        out, last, ckpt = ext.fwd(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                  initial_state, int(chunk))
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.chunk = int(chunk)
        ctx.has_h0 = initial_state is not None
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(u)
        dout = dout.contiguous()
        if dlast is not None:
            dlast = dlast.contiguous()
        ext = load_extension()
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = ext.bwd(
            u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ckpt, dout, dlast, ctx.chunk
        )
        return (du, ddelta, dA, dB, dC, dD if D is not None else None,
                dz if z is not None else None, dbias if delta_bias is not None else None,
                None, dh0 if ctx.has_h0 else None, None)


def _prep(t: Optional[torch.Tensor], name: str, dtype: torch.dtype, shape) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"selective_scan_cpu: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"selective_scan_cpu: {name} is on {t.device}, expected a CPU tensor")
    if t.dtype != dtype:
        raise TypeError(f"selective_scan_cpu: {name} has dtype {t.dtype}, expected {dtype} (same as u)")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"selective_scan_cpu: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t.contiguous()


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None, *, chunk: int = CHECKPOINT_CHUNK):
    """Fused CPU selective scan; same arguments/semantics as mamba-ssm's ``selective_scan_ref``.

    u, delta, z: [batch, E, L]; A: [E, N]; B, C: [batch, N, L]; D, delta_bias: [E];
    initial_state: [batch, E, N].  Returns ``out`` [batch, E, L], or ``(out, last_state)``
    with ``last_state`` [batch, E, N] when ``return_last_state``.  Differentiable w.r.t. all
    tensor inputs.  ``chunk`` is the backward checkpoint interval (memory/scratch trade-off).
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"selective_scan_cpu: u must be a [batch, E, L] tensor, got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
    if u.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"selective_scan_cpu: u has dtype {u.dtype}; only float32/float64 are supported")
    if not isinstance(A, torch.Tensor) or A.dim() != 2:
        raise ValueError("selective_scan_cpu: A must be an [E, N] tensor")
    if isinstance(B, torch.Tensor) and B.dim() != 3:
        raise ValueError(f"selective_scan_cpu: B must be [batch, N, L] (input-dependent), got shape {tuple(B.shape)}")
    if isinstance(C, torch.Tensor) and C.dim() != 3:
        raise ValueError(f"selective_scan_cpu: C must be [batch, N, L] (input-dependent), got shape {tuple(C.shape)}")
    if int(chunk) < 1:
        raise ValueError("selective_scan_cpu: chunk must be >= 1")
    bsz, E, L = u.shape
    N = A.shape[1]
    dt = u.dtype
    u = _prep(u, "u", dt, (bsz, E, L))
    delta = _prep(delta, "delta", dt, (bsz, E, L))
    A = _prep(A, "A", dt, (E, N))
    B = _prep(B, "B", dt, (bsz, N, L))
    C = _prep(C, "C", dt, (bsz, N, L))
    D = _prep(D, "D", dt, (E,))
    z = _prep(z, "z", dt, (bsz, E, L))
    delta_bias = _prep(delta_bias, "delta_bias", dt, (E,))
    initial_state = _prep(initial_state, "initial_state", dt, (bsz, E, N))
    if not is_available():
        raise RuntimeError(f"selective_scan_cpu extension unavailable: {_error}")
    out, last = _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                        initial_state, int(chunk))
    return (out, last) if return_last_state else out
