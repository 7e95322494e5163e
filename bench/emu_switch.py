"""The CUDA emulator's fiber switch (``plugins/emu/zooFiber.h``): the user-space switch against the ucontext fallback
(``-DZOO_EMU_UCONTEXT``, glibc's swapcontext: an rt_sigprocmask system call at every switch), side by side in one run,
on the harness's own checks (a measurement, not a test).

Both variants are built from the same sources into a temporary folder (``export.build_plugins.build_emulated``, the
fallback with ``extra_flags=("-DZOO_EMU_UCONTEXT",)``). Each row times one check with one variant, then the other,
``--repeat`` times alternating, and keeps the best of each:

* ``harness check``: ``harness.check_all`` over ``harness.cases(T)`` -- inputs, float64 references, the kernels (out of
  place and in place), comparisons -- what ``python plugins/harness.py --emulate --check --long-T T`` does;
* ``kernels alone``: the kernel calls of the same matrix on the same inputs, without references or comparisons;
* ``plugin check``: the same through the plugins' enqueue (``--plugin``; the emulated plugin library, TensorRT headers
  needed, else the row says so);
* ``ASan check`` (``--asan``): ``python plugins/harness.py --emulate --asan --check --long-T T --lib <ASan build>``, a
  process of its own (it preloads the ASan runtime), interpreter start included; that start alone (the same command
  with no case to run) is the row above it.

    python bench/emu_switch.py [--long-T 16 64 200] [--plugin-T 200] [--asan-T 16] [--repeat 3] [--cases TEXT] [--threads 1] [--markdown bench/RESULTS_EMU_SWITCH.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "plugins"))

from bench.benchutil import HelpFormatter, command_line, markdown_path, write_table  # noqa: E402
from zoo.cli import EXIT_CODES, positive_int, run_cli  # noqa: E402

#: the variants, in the order each row runs them: (column name, build_emulated extra flags)
VARIANTS = (("user-space switch", ()), ("ucontext", ("-DZOO_EMU_UCONTEXT",)))


def build(tmp: Path, plugins: bool = False, asan: bool = False) -> dict[str, Path]:
    """Both variants' library (kernels, plugins or the ASan kernels build), each in its own build folder."""
    from export import build_plugins as BP

    out = {}
    for name, flags in VARIANTS:
        out[name] = BP.build_emulated(tmp / name.split()[0], plugins=plugins,
                                      out_name=BP.EMULATED_ASAN_LIBRARY if asan else None,
                                      extra_flags=(*BP.ASAN_FLAGS, *flags) if asan else flags)
    return out


def best_of(fn, libs: dict[str, Path], repeat: int) -> tuple[dict[str, float], int]:
    """Seconds of ``fn(lib)`` for each variant's library, best of ``repeat``, the variants alternating (which one goes
    first too); and what the last call returned (the number of runs it checked)."""
    best = {name: float("inf") for name in libs}
    for i in range(repeat):
        for name, lib in list(libs.items())[::1 if i % 2 == 0 else -1]:
            t = time.perf_counter()
            runs = fn(lib)
            best[name] = min(best[name], time.perf_counter() - t)
    return best, runs


def check(lib: Path, long_t: int, cases: str | None, plugin: bool = False) -> int:
    """harness.check_all on ``lib``; returns the runs (raises if one fails: timings of a wrong kernel are no use)."""
    import harness

    res = harness.check_all(harness.ScanKernels(lib), long_t, verbose=False, only=cases, plugin=plugin)
    bad = [r["case"] for r in res if not r["ok"]]
    if bad or not res:
        raise RuntimeError(f"{lib}: {'failed: ' + ', '.join(bad) if bad else 'no case matches'}")
    return len(res)


def kernels_alone(long_t: int, cases: str | None):
    """A function that runs the kernel calls of check_all's matrix on a library (inputs made once, beforehand)."""
    import harness

    work = []
    for i, case in enumerate(harness.cases(long_t)):
        if cases and cases not in case.id:
            continue
        d = harness.make_inputs(case, device="cpu", seed=i)
        for in_place in harness.in_place_runs(case):
            work.append((case, d, in_place))

    def run(lib: Path) -> int:
        k = harness.ScanKernels(lib)
        for case, d, in_place in work:
            harness.run_kernel(k, case, d, in_place=in_place)
        return len(work)
    return run


def asan_check(lib: Path, long_t: int, cases: str | None, start_only: bool = False) -> int:
    """The ASan run as ``harness.py --emulate --asan`` makes it (the runtime preloaded here, so the harness does not
    start itself a second time); returns the runs it passed (``start_only``: none, the command's start alone)."""
    import re

    from export import build_plugins as BP

    args = [sys.executable, os.path.join(ROOT, "plugins", "harness.py"), "--emulate", "--asan", "--check",
            "--long-T", str(long_t), "--lib", str(lib), *(["--cases", cases] if cases else []),
            *(["--start-only"] if start_only else [])]
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", LD_PRELOAD=str(BP.asan_runtime()),
                                ASAN_OPTIONS="detect_leaks=0"))
    m = re.search(r"^(\d+) passed, 0 failed$", r.stdout, re.M)
    bad = m is None or (m[1] == "0") != start_only              # some runs; none for the start alone
    if r.returncode != 0 or bad or "ERROR: AddressSanitizer" in r.stdout:
        raise RuntimeError(f"{' '.join(args)} failed (exit {r.returncode}):\n{r.stdout[-3000:]}")
    return int(m.group(1))


def seconds(x: float) -> str:
    return f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def row(what: str, t: dict[str, float], runs: int) -> str:
    fast, slow = (t[name] for name, _ in VARIANTS)
    return f"| {what} | {runs} | {seconds(fast)} | {seconds(slow)} | {slow / fast:.1f}x |"


def describe() -> str:
    """CPU, compiler and C library of this machine, for the table's header."""
    from export import build_plugins as BP

    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    cxx = subprocess.run([BP._cxx(), "--version"], stdout=subprocess.PIPE, text=True).stdout.splitlines()[0]
    return f"{os.cpu_count()} CPUs ({cpu}), {cxx}, glibc {platform.libc_ver()[1]}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--long-T", type=positive_int, nargs="+", default=[16, 64, 200],
                   help="the matrix's long T (also T = 1)")
    p.add_argument("--plugin-T", type=positive_int, nargs="*", default=[200],
                   help="long T of the plugin-path rows (none: skip)")
    p.add_argument("--asan-T", type=positive_int, nargs="*", default=[16], help="long T of the ASan rows (none: skip)")
    p.add_argument("--repeat", type=positive_int, default=3, help="runs of each variant a row (best kept)")
    p.add_argument("--cases", default=None, help="only the cases whose id contains this text (default: all)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch's intra-op threads (the references')")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    args = p.parse_args(argv)
    import torch

    from export import build_plugins as BP

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-emu-switch-"))
    try:
        libs = build(tmp)
        for lib in libs.values():                   # imports and first calls out of the timings
            check(lib, 2, "LRUScan-float32-T2-h0-B2xN64")
        names = [name for name, _ in VARIANTS]
        lines = [f"Produced by `{command_line('bench/emu_switch.py', argv)}` ({time.strftime('%Y-%m-%d')}, "
                 f"{describe()}, torch {torch.__version__} with {args.threads} intra-op thread(s)). Seconds, best of "
                 f"{args.repeat} runs of each variant, alternating; both variants built with `-O2` from the same "
                 f"sources (`export.build_plugins.build_emulated`, the fallback with `-DZOO_EMU_UCONTEXT`). A matrix "
                 f"at T is `harness.cases(T)`: every shape x fp32/fp16/bf16 x T = 1 and T x zero/given initial state"
                 + (f", only the cases matching `{args.cases}`" if args.cases else "") + ".", "",
                 f"| check | runs | {names[0]} s | {names[1]} s | speed-up |", "|---|---:|---:|---:|---:|"]

        def add(line: str) -> None:
            lines.append(line)
            print(line, flush=True)

        for long_t in args.long_T:
            add(row(f"harness check, matrix at T = {long_t}",
                    *best_of(lambda lib: check(lib, long_t, args.cases), libs, args.repeat)))
            add(row(f"kernels alone, matrix at T = {long_t}",
                    *best_of(kernels_alone(long_t, args.cases), libs, args.repeat)))
        if args.plugin_T:
            try:
                plibs = build(tmp, plugins=True)
            except BP.BuildError as e:
                plibs = None
                lines.append(f"| plugin check: not run ({str(e).splitlines()[0][:120]}) | | | | |")
            for long_t in args.plugin_T if plibs else []:
                add(row(f"plugin check (`--plugin`), matrix at T = {long_t}",
                        *best_of(lambda lib: check(lib, long_t, args.cases, plugin=True), plibs, args.repeat)))
        if args.asan_T:
            try:
                BP.asan_runtime()
                alibs = build(tmp, asan=True)
            except BP.BuildError as e:
                alibs = None
                lines.append(f"| ASan check: not run ({str(e).splitlines()[0][:120]}) | | | | |")
            if alibs:
                add(row("ASan: the command's start alone (interpreter, torch, the library; no case)",
                        *best_of(lambda lib: asan_check(lib, args.asan_T[0], None, start_only=True), alibs,
                                 args.repeat)))
            for long_t in args.asan_T if alibs else []:
                add(row(f"ASan check (`--asan`, own process), matrix at T = {long_t}",
                        *best_of(lambda lib: asan_check(lib, long_t, args.cases), alibs, args.repeat)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines += ["", f"Load average (1 min) {load[0]:.2f} before the run, {os.getloadavg()[0]:.2f} after it."]
    write_table(lines, "The CUDA emulator's fiber switch: user space against ucontext", args.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/emu_switch.py")
