"""Build the TensorRT scan plugins (``plugins/`` -> ``libzoo_trt_plugins.so``) and the kernel harness library.

``python -m export.build_plugins [--build-dir build/plugins] [--arch 80;90] [--jobs 2] [--tensorrt-root DIR]``

It runs CMake on ``plugins/CMakeLists.txt``; the result is

* ``<build-dir>/libzoo_trt_plugins.so`` — the IPluginV3 plugins (SelectiveScan, SSDScan, LRUScan, namespace and version
  from :mod:`export.plugin_spec`); load it with ``trtexec --dynamicPlugins=...``,
  ``trt.get_plugin_registry().load_library(...)`` or Triton's ``--backend-config=tensorrt,plugins=...``;
* ``<build-dir>/libzoo_scan_kernels.so`` — the same CUDA kernels behind a C ABI, used by ``plugins/harness.py`` to
  compare every kernel with the PyTorch reference on a GPU (no TensorRT needed).

``python -m export.build_plugins --emulated`` builds ``<build-dir>/emu/libzoo_scan_kernels_emu.so`` instead: the same
kernel sources compiled for the CPU by the host C++ compiler against ``plugins/emu/`` (a SIMT emulator: each CUDA
thread a fiber, warp shuffles resolved per warp and their undefined uses refused), so that CI without a GPU runs the
kernels the plugins launch (:func:`build_emulated`; ``python plugins/harness.py --emulate --check``). No nvcc, CMake
or TensorRT is needed for it.

TensorRT headers are never committed. They come, first found wins, from ``--tensorrt-include`` /
``--tensorrt-root`` (or env ``TensorRT_ROOT``/``TENSORRT_ROOT``), system locations, or an installed Python distribution
that ships ``NvInferRuntime.h`` (:func:`find_tensorrt_include`; e.g. ``pip install --no-deps kernel-lens``, which
vendors NVIDIA's Apache-2.0 TensorRT 10.14 headers). Without headers only the kernels library is built.

Exit statuses (the shared table, :data:`export.fsutil.EXIT_CODES`): 0 built (``--print-trt-include``: the folder
printed); 1 the build failed (CMake's or the compiler's output is shown); 2 a usage error; 4 a tool it needs is
missing here: CMake or nvcc (the C++ compiler for ``--emulated``), or the TensorRT headers for
``--require-tensorrt`` and ``--print-trt-include``.

This module imports only the standard library at top level: CMake runs it by path (``--print-trt-include``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

try:
    from .fsutil import EXIT_CODES, EXIT_ERROR, EXIT_MISSING, EXIT_OK, command_prog, positive_int
except ImportError:              # run by path (CMake: ``build_plugins.py --print-trt-include``): export/ is sys.path[0]
    from fsutil import EXIT_CODES, EXIT_ERROR, EXIT_MISSING, EXIT_OK, command_prog, positive_int

REPO_ROOT = Path(__file__).resolve().parent.parent
#: the plugin sources: ``plugins/`` of a checkout, else (an installed wheel, which ships them) ``export/plugins/``
PLUGINS_DIR = (REPO_ROOT / "plugins" if (REPO_ROOT / "plugins" / "CMakeLists.txt").is_file()
               else Path(__file__).resolve().parent / "plugins")
#: ``build/plugins`` (git-ignored) in a checkout; an installed package builds into the user's cache, not site-packages
DEFAULT_BUILD_DIR = (REPO_ROOT / "build" / "plugins" if PLUGINS_DIR.parent == REPO_ROOT
                     else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssm-rec-zoo" / "plugins")
PLUGIN_LIBRARY = "libzoo_trt_plugins.so"   # == export.plugin_spec.PLUGIN_LIBRARY (asserted in tests)
KERNELS_LIBRARY = "libzoo_scan_kernels.so"
EMULATED_LIBRARY = "libzoo_scan_kernels_emu.so"
EMULATED_ASAN_LIBRARY = "libzoo_scan_kernels_emu_asan.so"
EMULATED_PLUGIN_LIBRARY = "libzoo_trt_plugins_emu.so"
EMULATED_PLUGIN_ASAN_LIBRARY = "libzoo_trt_plugins_emu_asan.so"
#: flags of the AddressSanitizer build of the emulated kernels (run it with :func:`asan_runtime` preloaded)
ASAN_FLAGS = ("-fsanitize=address", "-fno-omit-frame-pointer", "-g")
_SYSTEM_INCLUDES = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/local/tensorrt/include",
                    "/opt/tensorrt/include", "/usr/include", "/usr/local/include")


class BuildError(RuntimeError):
    pass


class ToolMissing(BuildError):
    """A tool the build needs is not installed here (CMake, nvcc, a C++ compiler, its AddressSanitizer runtime,
    TensorRT's headers for the emulated plugin library): the command exits 4
    (:data:`export.fsutil.EXIT_MISSING`), not 1 as for a build that ran and failed."""


def _python_dist_headers() -> list[tuple[str, Path]]:
    """(distribution name, include dir) for every installed distribution whose files contain NvInferRuntime.h."""
    from importlib import metadata

    found = []
    for dist in metadata.distributions():
        try:
            files = dist.files or []
        except Exception:
            continue
        for f in files:
            if f.name == "NvInferRuntime.h":
                p = Path(dist.locate_file(f)).resolve()
                if p.is_file():
                    found.append((dist.metadata.get("Name", "?"), p.parent))
    return found


def find_tensorrt_include(include_dir: str | None = None, root: str | None = None) -> tuple[Path | None, str]:
    """Directory with ``NvInferRuntime.h`` and a sentence saying where it came from (``None`` if nowhere)."""
    cands: list[tuple[Path, str]] = []
    if include_dir:
        cands.append((Path(include_dir), "--tensorrt-include"))
    for r, why in ((root, "--tensorrt-root"), (os.environ.get("TensorRT_ROOT"), "$TensorRT_ROOT"),
                   (os.environ.get("TENSORRT_ROOT"), "$TENSORRT_ROOT")):
        if r:
            cands.append((Path(r) / "include", why))
    cands += [(Path(p), "system") for p in _SYSTEM_INCLUDES]
    for p, why in cands:
        if (p / "NvInferRuntime.h").is_file():
            return p, f"{why}: {p}"
    for name, p in _python_dist_headers():
        return p, f"Python distribution {name!r}: {p}"
    return None, ("no TensorRT headers: none given (--tensorrt-root / --tensorrt-include / $TensorRT_ROOT), none in "
                  f"{', '.join(_SYSTEM_INCLUDES)}, and no installed Python distribution ships NvInferRuntime.h")


def tensorrt_header_version(include: Path) -> str | None:
    f = include / "NvInferVersion.h"
    if not f.is_file():
        return None
    import re

    vals = {}
    for line in f.read_text(errors="replace").splitlines():
        m = re.match(r"#define\s+(?:TRT|NV_TENSORRT)_(MAJOR|MINOR|PATCH)(?:_\w+)?\s+(\d+)", line)
        if m and m.group(1) not in vals:
            vals[m.group(1)] = m.group(2)
    return ".".join(vals.get(k, "?") for k in ("MAJOR", "MINOR", "PATCH")) if vals else None


def library_path(build_dir: str | os.PathLike | None = None, kind: str = "plugins") -> Path:
    """Path of the plugin (``kind='plugins'``) or kernels (``kind='kernels'``) library; env ``ZOO_TRT_PLUGIN_LIB`` /
    ``ZOO_SCAN_KERNELS_LIB`` override."""
    env = os.environ.get("ZOO_TRT_PLUGIN_LIB" if kind == "plugins" else "ZOO_SCAN_KERNELS_LIB")
    if env:
        return Path(env)
    return Path(build_dir or DEFAULT_BUILD_DIR) / (PLUGIN_LIBRARY if kind == "plugins" else KERNELS_LIBRARY)


#: the spec the generated header (and so every plugin's names and fields) comes from
SPEC_PY = Path(__file__).resolve().parent / "plugin_spec.py"
#: beside a plugin library that :func:`build` made: the :func:`plugin_sources_digest` of the sources it was built from
SOURCES_STAMP_SUFFIX = ".sources.sha256"
#: what the CMake build of the plugin library reads, under ``plugins/`` (the emulator, harness and docs are not in it)
_SOURCE_SUFFIXES = (".cu", ".cuh", ".cpp", ".h", ".txt", ".py")


def plugin_sources_digest() -> str:
    """sha256 of the plugin library's sources: every CMake file, kernel, plugin class, common source and test under
    :data:`PLUGINS_DIR` (not ``emu/`` nor ``harness.py``), the header generator and :data:`SPEC_PY`. Reads a few
    hundred kB: a check that finds the library current costs milliseconds."""
    import hashlib

    root = Path(PLUGINS_DIR)
    files = sorted(f for f in root.rglob("*") if f.suffix in _SOURCE_SUFFIXES and f.is_file()
                   and f.relative_to(root).parts[0] != "emu" and f.name != "harness.py")
    h = hashlib.sha256()
    for f, name in [*((f, f.relative_to(root).as_posix()) for f in files), (Path(SPEC_PY), "plugin_spec.py")]:
        h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def sources_stamp(lib: str | os.PathLike) -> Path:
    """Where the digest of the sources ``lib`` was built from is kept (beside it)."""
    lib = Path(lib)
    return lib.with_name(lib.name + SOURCES_STAMP_SUFFIX)


@contextlib.contextmanager
def _build_lock(folder: Path):
    """Hold an exclusive ``flock`` on ``folder/.zoo-build.flock`` for a build into ``folder`` (POSIX; elsewhere
    nothing is held): builds into one folder run one at a time (concurrent ``export.trt`` runs, test workers), and
    none reads a library or a stamp another is still writing; the kernel drops the lock when its holder dies."""
    try:
        from .fsutil import build_lock
    except ImportError:               # run by path (CMake runs it so): export/ is sys.path[0]
        from fsutil import build_lock

    # required=False: a folder this user cannot write (no build of theirs goes there) is read without the lock
    with build_lock(folder, required=False):
        yield


def build(build_dir: str | os.PathLike | None = None, arch: str = "80;90", jobs: int = 2,
          tensorrt_root: str | None = None, tensorrt_include: str | None = None, require_tensorrt: bool = False,
          quiet: bool = False) -> dict:
    """Configure + build with CMake. Returns ``{'plugins': Path|None, 'kernels': Path, 'tensorrt_include': ...,
    'tensorrt_headers': sentence, 'stamp_error': sentence|None}``; raises :class:`BuildError` with CMake's output on
    failure. A plugin library built is stamped with the digest of the sources as they were when the build began
    (:func:`sources_stamp`), so ``export.trt`` reuses it -- whoever built it -- while the sources stay as they were.
    The stamp is removed before CMake runs, and a library found without one is removed too (it may be one a killed
    build was linking, which make would take as current): an interrupted build never leaves a record beside a
    half-built library. Builds into one folder take turns (:func:`_build_lock`)."""
    for tool in ("cmake", "nvcc"):
        if shutil.which(tool) is None and not (tool == "nvcc" and Path("/usr/local/cuda/bin/nvcc").exists()):
            raise ToolMissing(f"{tool} not found on PATH (needed to build the plugins)")
    bdir = Path(build_dir or DEFAULT_BUILD_DIR)
    bdir.mkdir(parents=True, exist_ok=True)
    with _build_lock(bdir):
        return _build(bdir, arch, jobs, tensorrt_root, tensorrt_include, require_tensorrt, quiet)


def stale_cmake_cache(bdir: str | os.PathLike, source: str | os.PathLike | None = None) -> str | None:
    """Why the CMake cache in ``bdir`` belongs to another source or build folder (a checkout copied or moved with its
    ``build/``: CMake refuses such a cache, "The current CMakeCache.txt directory ... is different than the directory
    ... where CMakeCache.txt was created"), or None when it is this one's (or there is none). ``source``: the source
    folder (:data:`PLUGINS_DIR`)."""
    cache = Path(bdir) / "CMakeCache.txt"
    try:
        text = cache.read_text(errors="replace")
    except OSError:
        return None
    recorded = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":INTERNAL=")
        if sep and key in ("CMAKE_HOME_DIRECTORY", "CMAKE_CACHEFILE_DIR"):
            recorded[key] = value.strip()
    want = {"CMAKE_HOME_DIRECTORY": Path(source or PLUGINS_DIR), "CMAKE_CACHEFILE_DIR": Path(bdir)}
    names = {"CMAKE_HOME_DIRECTORY": "source folder", "CMAKE_CACHEFILE_DIR": "build folder"}
    for key, path in want.items():
        if key in recorded and os.path.realpath(recorded[key]) != os.path.realpath(path):
            return f"it was made for the {names[key]} {recorded[key]}, not {path}"
    return None


def _drop_stale_cmake_cache(bdir: Path) -> str | None:
    """Remove a CMake cache of another source or build folder (:func:`stale_cmake_cache`) from ``bdir`` -- its
    ``CMakeCache.txt`` and ``CMakeFiles/`` (objects and dependency records naming the other folder's paths) -- so that
    CMake configures afresh; the note to print, or None when the cache is this folder's."""
    import shutil as fs              # the module itself (tests replace this module's ``shutil`` by a tool lookup)

    why = stale_cmake_cache(bdir)
    if why is None:
        return None
    (bdir / "CMakeCache.txt").unlink(missing_ok=True)
    fs.rmtree(bdir / "CMakeFiles", ignore_errors=True)
    return (f"note: removed the CMake cache in {bdir} ({why}: a checkout copied or moved with its build folder); "
            "configuring again from scratch\n")


#: how plugins/CMakeLists.txt starts its message when it finds no TensorRT headers (a FATAL_ERROR with
#: ``ZOO_REQUIRE_TENSORRT``)
_NO_TRT_HEADERS = "zoo: no TensorRT headers (NvInferRuntime.h) found"


def _build(bdir: Path, arch: str, jobs: int, tensorrt_root: str | None, tensorrt_include: str | None,
           require_tensorrt: bool, quiet: bool) -> dict:
    """:func:`build` in ``bdir``, under its lock. A CMake cache there of another source or build folder (a moved
    checkout) is removed first (:func:`_drop_stale_cmake_cache`), with a note."""
    plug = bdir / PLUGIN_LIBRARY
    stamp = sources_stamp(plug)
    if not stamp.is_file():
        plug.unlink(missing_ok=True)
    try:
        stamp.unlink(missing_ok=True)
    except OSError:
        if not stamp.is_dir():                     # a folder is no stamp (never read as one): reported when written
            raise
    inc, why = find_tensorrt_include(tensorrt_include, tensorrt_root)
    digest = plugin_sources_digest()               # before the build: a source edited during it is not recorded
    cfg = ["cmake", "-S", str(PLUGINS_DIR), "-B", str(bdir), f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
           f"-DPython3_EXECUTABLE={sys.executable}", f"-DZOO_REQUIRE_TENSORRT={'ON' if require_tensorrt else 'OFF'}"]
    if shutil.which("nvcc") is None:
        cfg.append("-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc")
    if inc is not None:
        cfg.append(f"-DTensorRT_INCLUDE_DIR={inc}")
    note = _drop_stale_cmake_cache(bdir)
    out = [note] if note else []
    if note and not quiet:
        sys.stdout.write(note)
    for cmd in (cfg, ["cmake", "--build", str(bdir), "-j", str(jobs)]):
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out.append(r.stdout)
        if not quiet:
            sys.stdout.write(r.stdout)
        if r.returncode != 0:
            # ZOO_REQUIRE_TENSORRT and no headers: CMakeLists.txt's FATAL_ERROR, a missing TensorRT (exit 4)
            error = ToolMissing if require_tensorrt and _NO_TRT_HEADERS in r.stdout else BuildError
            raise error(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stdout[-6000:]}")
    built = plug.exists() and inc is not None
    stamp_error = None
    if built:
        try:
            sources_stamp(plug).write_text(digest + "\n", encoding="utf-8")
        except OSError as e:                       # the library is current; only the next check will rebuild it
            stamp_error = f"could not record the sources' digest beside {plug}: {e}"
    return {"plugins": plug if built else None, "kernels": bdir / KERNELS_LIBRARY, "stamp_error": stamp_error,
            "tensorrt_include": inc, "tensorrt_headers": why,
            "tensorrt_header_version": tensorrt_header_version(inc) if inc else None, "log": "".join(out)}


_LAUNCH = None


def rewrite_launches(source: str, name: str = "<kernel>") -> str:
    """``kernel<<<grid, block, shmem, stream>>>(args)`` -> ``::zoo_emu::Launch(grid, block, shmem, stream)(&kernel,
    args)``, the one piece of CUDA syntax a host compiler cannot read (line count kept, so diagnostics point at the
    original lines). Raises :class:`BuildError` if a ``<<<`` is left that the pattern did not understand."""
    import re

    global _LAUNCH
    if _LAUNCH is None:
        _LAUNCH = re.compile(r"(?P<k>[A-Za-z_][\w:]*(?:<[^<>;(){}]*>)?)\s*<<<(?P<cfg>.*?)>>>\s*\(", re.S)
    out = _LAUNCH.sub(lambda m: f"::zoo_emu::Launch({m['cfg']})(&{m['k']}, ", source)
    if "<<<" in out:
        line = out[:out.index("<<<")].count("\n") + 1
        raise BuildError(f"{name}:{line}: a kernel launch the emulator's rewrite does not understand (write it as "
                         "kernel<<<grid, block, shmem, stream>>>(args))")
    return out


def _cxx() -> str | None:
    for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def asan_runtime() -> Path:
    """The AddressSanitizer runtime of the C++ compiler (``c++ -print-file-name=libasan.so``), to ``LD_PRELOAD`` into
    a Python that loads an ASan build (:data:`ASAN_FLAGS`); :class:`ToolMissing` (a :class:`BuildError`) if there is
    no compiler or it has none."""
    cxx = _cxx()
    if cxx is None:
        raise ToolMissing("no C++ compiler found ($CXX, c++, g++, clang++)")
    r = subprocess.run([cxx, "-print-file-name=libasan.so"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    p = Path(r.stdout.strip())
    if r.returncode != 0 or not p.is_absolute() or not p.is_file():
        raise ToolMissing(f"{cxx} has no AddressSanitizer runtime (libasan.so); install it (Debian: libasan8)")
    return p


def build_emulated(build_dir: str | os.PathLike | None = None, kernels: list[Path] | None = None,
                   out_name: str | None = None, extra_flags: tuple[str, ...] = (), quiet: bool = True,
                   plugins: bool = False, tensorrt_include: str | None = None, tensorrt_root: str | None = None,
                   replace: dict[str, Path] | None = None) -> Path:
    """Compile the CUDA scan kernels for the CPU against ``plugins/emu/`` and return the shared library (same C ABI as
    ``libzoo_scan_kernels.so``, host pointers, plus ``zoo_emu_last_error``). Rebuilt only when a source, the spec or
    the flags change. ``kernels`` defaults to every ``plugins/*Plugin/*Kernel.cu``.

    ``plugins=True`` also compiles the TensorRT plugin classes (``*Plugin.cpp``, ``common/``; TensorRT headers found as
    for :func:`build`, :class:`ToolMissing` without them) and ``emu/zooPluginEnqueue.cpp`` into
    ``libzoo_trt_plugins_emu.so``: ``zoo_emu_plugin_enqueue`` creates a plugin through ``getCreators`` and runs its
    ``enqueue`` on host buffers, so the plugins' runtime path runs here without TensorRT.

    ``replace`` maps a source's file name to another file compiled in its place (the tests' mutants).

    The library is linked under a temporary name and renamed into place, its stamp (the digest of the sources and
    flags) removed before and written after: an interrupted build leaves the library that was there, or none, and
    never a record beside a half-linked one. Builds into one folder take turns (:func:`_build_lock`), so no process
    loads a library another is still writing."""
    cxx = _cxx()
    if cxx is None:
        raise ToolMissing("no C++ compiler found ($CXX, c++, g++, clang++): the emulated kernels need one")
    bdir = Path(build_dir or DEFAULT_BUILD_DIR) / "emu"
    gen = bdir / "generated"
    gen.mkdir(parents=True, exist_ok=True)
    with _build_lock(bdir):
        return _build_emulated(bdir, gen, cxx, kernels, out_name, extra_flags, quiet, plugins, tensorrt_include,
                               tensorrt_root, replace)


def _build_emulated(bdir: Path, gen: Path, cxx: str, kernels, out_name, extra_flags, quiet, plugins,
                    tensorrt_include, tensorrt_root, replace) -> Path:
    """:func:`build_emulated` in ``bdir``, under its lock."""
    import hashlib

    emu, common = PLUGINS_DIR / "emu", PLUGINS_DIR / "common"
    kernels = sorted(kernels if kernels is not None else PLUGINS_DIR.glob("*Plugin/*Kernel.cu"))
    if not kernels:
        raise BuildError(f"no kernel sources (*Plugin/*Kernel.cu) under {PLUGINS_DIR}")
    spec_py = SPEC_PY
    header = gen / "zooPluginSpec.h"
    r = subprocess.run([sys.executable, str(PLUGINS_DIR / "gen_spec_header.py"), str(header), "--spec", str(spec_py)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise BuildError(f"gen_spec_header.py failed:\n{r.stdout}")
    replace = {name: Path(p) for name, p in (replace or {}).items()}
    sources = []
    for k in kernels:
        k = replace.get(Path(k).name, Path(k)).resolve()
        dst = bdir / (k.stem + ".emu.cpp")
        text = f'#line 1 "{k}"\n' + rewrite_launches(k.read_text(encoding="utf-8"), str(k))
        if not dst.is_file() or dst.read_text(encoding="utf-8") != text:
            dst.write_text(text, encoding="utf-8")
        sources.append(dst)
    sources += [emu / "zooCudaEmu.cpp", emu / "zooCudaEmuConvert.cpp", common / "zooSpecJson.cpp"]
    flags = ["-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", *extra_flags,
             f"-I{emu}", f"-I{common}", f"-I{gen}"]
    if plugins:
        inc, why = find_tensorrt_include(tensorrt_include, tensorrt_root)
        if inc is None:
            raise ToolMissing(f"the emulated plugin library needs the TensorRT headers: {why}")
        sources += [common / "zooScanPluginBase.cpp", common / "zooPlugins.cpp",
                    *sorted(PLUGINS_DIR.glob("*Plugin/*Plugin.cpp")), emu / "zooPluginEnqueue.cpp"]
        # the emulator's cuda_runtime_api.h must win over any CUDA beside the TensorRT headers: -isystem comes after -I
        flags += [*(f"-I{d}" for d in sorted(PLUGINS_DIR.glob("*Plugin")) if d.is_dir()),  # as CMake: each plugin dir
                  "-Wno-deprecated-declarations", "-isystem", str(inc), "-ldl"]
    sources = [replace.get(f.name, f) for f in sources]
    lib = bdir / (out_name or (EMULATED_PLUGIN_LIBRARY if plugins else EMULATED_LIBRARY))
    h = hashlib.sha256(" ".join([cxx, *flags]).encode())
    for f in [*sources, header, *sorted(emu.glob("*.h")), *sorted(common.glob("*.h")), *sorted(common.glob("*.cuh")),
              *sorted(PLUGINS_DIR.glob("*Plugin/*.h"))]:
        h.update(str(f).encode() + b"\0" + Path(f).read_bytes())
    stamp = bdir / (lib.name + ".sha256")
    if lib.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8") == h.hexdigest():
        return lib
    stamp.unlink(missing_ok=True)                   # no record of the sources while the library is replaced
    for left in bdir.glob(f".{lib.name}.*.tmp"):    # a killed build's (under the lock, no build is running)
        left.unlink(missing_ok=True)
    tmp = bdir / f".{lib.name}.{os.getpid()}.tmp"
    ldl = ["-ldl"] if "-ldl" in flags else []
    cmd = [cxx, *[f for f in flags if f != "-ldl"], *map(str, sources), *ldl, "-o", str(tmp)]
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise BuildError(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stdout[-6000:]}")
        os.replace(tmp, lib)
    finally:
        tmp.unlink(missing_ok=True)
    if not quiet:
        sys.stdout.write(r.stdout)
    stamp.write_text(h.hexdigest(), encoding="utf-8")
    return lib


def _failed(e: Exception) -> int:
    """Say why the build failed on stderr; its exit status: 4 for a tool missing here (:class:`ToolMissing`), else 1."""
    print(f"build failed: {e}", file=sys.stderr)
    return EXIT_MISSING if isinstance(e, ToolMissing) else EXIT_ERROR


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False,
                                 prog=command_prog("export.build_plugins"), description=__doc__.splitlines()[0],
                                 epilog=EXIT_CODES)
    ap.add_argument("--build-dir", default=str(DEFAULT_BUILD_DIR),
                    help=f"CMake build folder; the libraries are written there (default {DEFAULT_BUILD_DIR}; "
                         "--emulated builds into its emu/)")
    ap.add_argument("--arch", default="80;90", help="CMAKE_CUDA_ARCHITECTURES (default '80;90')")
    ap.add_argument("--jobs", "-j", type=positive_int, default=2,
                    help="parallel compile jobs of cmake --build, >= 1 (default 2)")
    ap.add_argument("--tensorrt-root", default=None,
                    help="TensorRT installation whose include/ holds NvInferRuntime.h (default: $TensorRT_ROOT or "
                         "$TENSORRT_ROOT, else the system folders, else an installed Python distribution shipping "
                         "the headers)")
    ap.add_argument("--tensorrt-include", default=None,
                    help="folder holding NvInferRuntime.h itself; tried before --tensorrt-root")
    ap.add_argument("--require-tensorrt", action="store_true",
                    help="fail (exit 4) when CMake finds no TensorRT headers, instead of building the kernels library "
                         "alone")
    ap.add_argument("--emulated", action="store_true",
                    help="build only the CPU-emulated kernels library (host C++ compiler; no nvcc/CMake/TensorRT)")
    ap.add_argument("--print-trt-include", action="store_true",
                    help="print the TensorRT include directory that would be used and exit (4 if none)")
    a = ap.parse_args(argv)
    if a.print_trt_include:
        inc, why = find_tensorrt_include(a.tensorrt_include, a.tensorrt_root)
        if inc is None:
            print(why, file=sys.stderr)
            return EXIT_MISSING
        print(inc)
        return EXIT_OK
    if a.emulated:
        try:
            lib = build_emulated(a.build_dir, quiet=False)
        except (BuildError, OSError) as e:                  # OSError: a --build-dir that cannot be made
            return _failed(e)
        print(f"emulated kernels library : {lib}  (CPU; python plugins/harness.py --emulate --check)")
        return EXIT_OK
    try:
        res = build(a.build_dir, a.arch, a.jobs, a.tensorrt_root, a.tensorrt_include, a.require_tensorrt)
    except (BuildError, OSError) as e:
        return _failed(e)
    print(f"kernels library : {res['kernels']}")
    if res["plugins"] is not None:
        print(f"plugin library  : {res['plugins']}  (TensorRT headers {res['tensorrt_header_version']} from "
              f"{res['tensorrt_headers']})")
    else:
        print(f"plugin library  : NOT built — {res['tensorrt_headers']}")
    return EXIT_OK


if __name__ == "__main__":
    try:
        from .fsutil import run_cli
    except ImportError:          # run by path (CMake): export/ is sys.path[0]
        from fsutil import run_cli

    sys.exit(run_cli(main))
