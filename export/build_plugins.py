"""Build the TensorRT scan plugins (``plugins/`` -> ``libzoo_trt_plugins.so``) and the kernel harness library.

``python -m export.build_plugins [--build-dir build/plugins] [--arch 80;90] [--jobs 2] [--tensorrt-root DIR]``

It runs CMake on ``plugins/CMakeLists.txt``; the result is

* ``<build-dir>/libzoo_trt_plugins.so`` — the IPluginV3 plugins (SelectiveScan, SSDScan, LRUScan, namespace and version
  from :mod:`export.plugin_spec`); load it with ``trtexec --dynamicPlugins=...``,
  ``trt.get_plugin_registry().load_library(...)`` or Triton's ``--backend-config=tensorrt,plugins=...``;
* ``<build-dir>/libzoo_scan_kernels.so`` — the same CUDA kernels behind a C ABI, used by ``plugins/harness.py`` to
  compare every kernel with the PyTorch reference on a GPU (no TensorRT needed).

TensorRT headers are never committed. They come, first found wins, from ``--tensorrt-include`` /
``--tensorrt-root`` (or env ``TensorRT_ROOT``/``TENSORRT_ROOT``), system locations, or an installed Python distribution
that ships ``NvInferRuntime.h`` (:func:`find_tensorrt_include`; e.g. ``pip install --no-deps kernel-lens``, which
vendors NVIDIA's Apache-2.0 TensorRT 10.14 headers). Without headers only the kernels library is built.

This module imports only the standard library at top level: CMake runs it by path (``--print-trt-include``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: the plugin sources: ``plugins/`` of a checkout, else (an installed wheel, which ships them) ``export/plugins/``
PLUGINS_DIR = (REPO_ROOT / "plugins" if (REPO_ROOT / "plugins" / "CMakeLists.txt").is_file()
               else Path(__file__).resolve().parent / "plugins")
#: ``build/plugins`` (git-ignored) in a checkout; an installed package builds into the user's cache, not site-packages
DEFAULT_BUILD_DIR = (REPO_ROOT / "build" / "plugins" if PLUGINS_DIR.parent == REPO_ROOT
                     else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssm-rec-zoo" / "plugins")
PLUGIN_LIBRARY = "libzoo_trt_plugins.so"   # == export.plugin_spec.PLUGIN_LIBRARY (asserted in tests)
KERNELS_LIBRARY = "libzoo_scan_kernels.so"
_SYSTEM_INCLUDES = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/local/tensorrt/include",
                    "/opt/tensorrt/include", "/usr/include", "/usr/local/include")


class BuildError(RuntimeError):
    pass


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


def build(build_dir: str | os.PathLike | None = None, arch: str = "80;90", jobs: int = 2,
          tensorrt_root: str | None = None, tensorrt_include: str | None = None, require_tensorrt: bool = False,
          quiet: bool = False) -> dict:
    """Configure + build with CMake. Returns ``{'plugins': Path|None, 'kernels': Path, 'tensorrt_include': ...,
    'tensorrt_headers': sentence}``; raises :class:`BuildError` with CMake's output on failure."""
    for tool in ("cmake", "nvcc"):
        if shutil.which(tool) is None and not (tool == "nvcc" and Path("/usr/local/cuda/bin/nvcc").exists()):
            raise BuildError(f"{tool} not found on PATH (needed to build the plugins)")
    bdir = Path(build_dir or DEFAULT_BUILD_DIR)
    bdir.mkdir(parents=True, exist_ok=True)
    inc, why = find_tensorrt_include(tensorrt_include, tensorrt_root)
    cfg = ["cmake", "-S", str(PLUGINS_DIR), "-B", str(bdir), f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
           f"-DPython3_EXECUTABLE={sys.executable}", f"-DZOO_REQUIRE_TENSORRT={'ON' if require_tensorrt else 'OFF'}"]
    if shutil.which("nvcc") is None:
        cfg.append("-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc")
    if inc is not None:
        cfg.append(f"-DTensorRT_INCLUDE_DIR={inc}")
    out = []
    for cmd in (cfg, ["cmake", "--build", str(bdir), "-j", str(jobs)]):
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out.append(r.stdout)
        if not quiet:
            sys.stdout.write(r.stdout)
        if r.returncode != 0:
            raise BuildError(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stdout[-6000:]}")
    plug = bdir / PLUGIN_LIBRARY
    return {"plugins": plug if plug.exists() and inc is not None else None, "kernels": bdir / KERNELS_LIBRARY,
            "tensorrt_include": inc, "tensorrt_headers": why,
            "tensorrt_header_version": tensorrt_header_version(inc) if inc else None, "log": "".join(out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.build_plugins", description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default=str(DEFAULT_BUILD_DIR))
    ap.add_argument("--arch", default="80;90", help="CMAKE_CUDA_ARCHITECTURES (default '80;90')")
    ap.add_argument("--jobs", "-j", type=int, default=2)
    ap.add_argument("--tensorrt-root", default=None)
    ap.add_argument("--tensorrt-include", default=None)
    ap.add_argument("--require-tensorrt", action="store_true", help="fail when no TensorRT headers are found")
    ap.add_argument("--print-trt-include", action="store_true",
                    help="print the TensorRT include directory that would be used and exit (1 if none)")
    a = ap.parse_args(argv)
    if a.print_trt_include:
        inc, why = find_tensorrt_include(a.tensorrt_include, a.tensorrt_root)
        if inc is None:
            print(why, file=sys.stderr)
            return 1
        print(inc)
        return 0
    try:
        res = build(a.build_dir, a.arch, a.jobs, a.tensorrt_root, a.tensorrt_include, a.require_tensorrt)
    except BuildError as e:
        print(f"build failed: {e}", file=sys.stderr)
        return 1
    print(f"kernels library : {res['kernels']}")
    if res["plugins"] is not None:
        print(f"plugin library  : {res['plugins']}  (TensorRT headers {res['tensorrt_header_version']} from "
              f"{res['tensorrt_headers']})")
    else:
        print(f"plugin library  : NOT built — {res['tensorrt_headers']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
