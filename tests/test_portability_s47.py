"""Portability mends (session 47, QA h_port): Windows and macOS.

Windows is simulated as QA's ``winrun.py`` does: in a child process the third-party stack is imported first, with
the full OS surface (those libraries branch on ``sys.platform`` themselves), then the POSIX-only modules are blocked
(``sys.modules[name] = None``) and the ``os``/``signal`` names Windows lacks are deleted, and only then is the
project's code imported. macOS's Apple clang is simulated by a compiler wrapper that rejects ``-fopenmp`` as Apple
clang does (``clang: error: unsupported option '-fopenmp'``) and runs the system's g++ otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the child's prelude: the Windows surface for the project's code (QA h_port's winrun.py, trimmed)
WINDOWS = textwrap.dedent("""
    import importlib, os, signal, sys
    for m in ("numpy", "torch", "subprocess", "multiprocessing", "tempfile", "shutil", "logging", "sqlite3", "json"):
        try:
            importlib.import_module(m)
        except Exception:
            pass
    for m in ("fcntl", "resource", "pwd", "grp", "termios", "pty", "tty", "syslog"):
        sys.modules[m] = None
    for a in ("register_at_fork", "O_NOFOLLOW", "O_DIRECTORY", "fork", "forkpty", "killpg", "setsid", "getpgid",
              "setpgrp"):
        if hasattr(os, a):
            delattr(os, a)
    for a in ("SIGKILL", "SIGHUP", "SIGQUIT", "SIGPIPE", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGSTOP",
              "SIGCONT", "SIGTSTP", "alarm", "setitimer", "pthread_sigmask", "pthread_kill", "siginterrupt"):
        if hasattr(signal, a):
            delattr(signal, a)
""")


def run_child(code: str, windows: bool = True, env: dict | None = None, timeout: float = 300, **kwargs):
    """Run ``code`` in a child Python (under the Windows simulation when ``windows``) from the repository root."""
    full = (WINDOWS if windows else "") + textwrap.dedent(code)
    child_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.run([sys.executable, "-c", full], cwd=ROOT, env=child_env, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, **kwargs)


# --- 1. export.triton / export.perf_data import without fcntl ------------------------------------------------------

@pytest.mark.parametrize("script", ["triton_script", "perf_data_script"])
def test_triton_commands_run_without_fcntl(script):
    """``export/triton.py`` imported ``fcntl`` at its top: ``export-triton`` and ``export-perf-data`` (which imports
    it) died at import on Windows with a traceback and status 1. Their ``--help`` works there now."""
    r = run_child(f"""
        sys.argv = ["prog", "--help"]
        from export.fsutil import {script}
        sys.exit({script}())
    """)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and "Traceback" not in r.stderr


def test_triton_stage_without_fcntl_writes_and_keeps_stages(tmp_path):
    """Without ``fcntl`` the staged model folder is still written whole (no lock taken), and a stage that has its
    lock file is never taken for dead (a live writer's cannot be told apart without locks): it is left, as
    ``zoo.cli.lock_folder`` leaves stages there."""
    r = run_child(f"""
        import pathlib
        from export import triton
        assert triton.fcntl is None
        repo = pathlib.Path({str(tmp_path / "repo")!r})
        with triton._staged_model_folder(repo / "m") as new:
            (new / "config.pbtxt").write_text("x")
        assert (repo / "m" / "config.pbtxt").read_text() == "x"
        assert triton.remove_dead_stages(repo) == []
        stage = repo.parent / (".repo" + triton._STAGE_PREFIX + "abc")
        stage.mkdir()
        (stage / triton._STAGE_LOCK).write_text('{{"target": "nowhere"}}')
        assert triton.remove_dead_stages(repo) == []
        assert stage.is_dir()
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# --- 4. bench/benchutil.py imports without signal.SIGKILL -----------------------------------------------------------

def test_benchutil_imports_without_sigkill():
    """``die_with_parent(sig=signal.SIGKILL)`` read SIGKILL at import: every bench importing benchutil died on
    Windows with ``AttributeError``. It is read at the call now, SIGTERM standing in where there is none."""
    r = run_child("""
        sys.path.insert(0, "bench")
        import benchutil
        benchutil._die_with_parent = lambda sig: sig
        assert benchutil.die_with_parent() == signal.SIGTERM, benchutil.die_with_parent()
        assert benchutil.die_with_parent(signal.SIGINT) == signal.SIGINT
        import runpy
        sys.argv = ["bench/bench_selective_scan_cpu.py", "--help"]
        try:
            runpy.run_path("bench/bench_selective_scan_cpu.py", run_name="__main__")
        except SystemExit as e:
            assert e.code in (0, None), e.code
    """)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout


def test_benchutil_kills_with_sigkill_on_posix(monkeypatch):
    """On POSIX the default is still SIGKILL."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import benchutil
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    monkeypatch.setattr(benchutil, "_die_with_parent", lambda sig: sig)
    assert benchutil.die_with_parent() == signal.SIGKILL


# --- 5. run_cli: stdout that cannot encode the output ---------------------------------------------------------------

def test_stdout_encoding_failure_names_the_fix(tmp_path):
    """A redirected stdout on Windows takes the ANSI code page (cp1252), which cannot write a user's non-ASCII item
    ids: the one-line error read like a broken pipe. It names the encoding and the fix now."""
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        r = run_child("""
            from export.fsutil import run_cli
            def main():
                print("u1  \\u2192  \\u043a\\u043d\\u0438\\u0433\\u0430")
            run_cli(main, prog="python -m zoo.recommend")
        """, windows=False, env={"PYTHONIOENCODING": "cp1252", "PYTHONUTF8": "0"}, stdout=f)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    line = lines[0]
    assert line.startswith("python -m zoo.recommend: error: cannot write to standard output (")
    assert "cp1252" in line and "PYTHONUTF8=1" in line and "PYTHONIOENCODING=utf-8" in line and "--out FILE" in line


def test_other_stdout_failures_get_no_encoding_advice():
    """A full disk keeps its own line, without the encoding advice."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system to make stdout's writes fail")
    with open("/dev/full", "w") as full:
        r = run_child("""
            from export.fsutil import run_cli
            run_cli(lambda: print("x" * 100000), prog="p")
        """, windows=False, stdout=full)
    assert r.returncode == 1 and "No space left" in r.stderr and "PYTHONUTF8" not in r.stderr, r.stderr


# --- 6. pid_alive on Windows ----------------------------------------------------------------------------------------

class FakeKernel32:
    """``OpenProcess``/``GetExitCodeProcess``/``CloseHandle`` as Windows answers them for one pid."""

    def __init__(self, handle=42, exit_code=259, get_ok=True):
        self.handle, self.exit_code, self.get_ok = handle, exit_code, get_ok
        self.opened, self.closed = [], []

    def OpenProcess(self, access, inherit, pid):
        self.opened.append((access, pid))
        return self.handle

    def GetExitCodeProcess(self, handle, ref):
        ref._obj.value = self.exit_code
        return self.get_ok

    def CloseHandle(self, handle):
        self.closed.append(handle)
        return True


@pytest.mark.parametrize("fake, error, alive", [
    (FakeKernel32(exit_code=259), 0, True),             # STILL_ACTIVE
    (FakeKernel32(exit_code=0), 0, False),               # ended
    (FakeKernel32(get_ok=False), 0, True),               # cannot tell: alive
    (FakeKernel32(handle=0), 87, False),                 # ERROR_INVALID_PARAMETER: no such process
    (FakeKernel32(handle=0), 5, True),                   # ERROR_ACCESS_DENIED: it runs, as another user
])
def test_pid_alive_on_windows_asks_the_process_table(monkeypatch, fake, error, alive):
    """On Windows ``os.kill(pid, 0)`` sends CTRL_C_EVENT (signal 0) to a process group instead of probing: pid_alive
    asks ``OpenProcess``/``GetExitCodeProcess`` there, taking what it cannot tell for alive, and never calls
    ``os.kill``."""
    from zoo import cli

    def no_kill(*a):
        raise AssertionError(f"os.kill{a} on Windows")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", no_kill)
    monkeypatch.setattr(cli, "_kernel32", lambda: (fake, lambda: error))
    assert cli.pid_alive(4321) is alive
    assert fake.opened == [(0x1000, 4321)]
    assert fake.closed == ([] if not fake.handle else [fake.handle])
    with pytest.raises(OverflowError):
        cli.pid_alive(2 ** 40)


def test_pid_alive_on_posix_unchanged():
    from zoo import cli

    assert cli.pid_alive(os.getpid())
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not cli.pid_alive(p.pid)


# --- 3. the fused CPU kernel with a compiler that has no OpenMP ---------------------------------------------------

def _fake_compilers(folder):
    """``appleclang``: rejects ``-fopenmp`` (as Apple clang does) and runs the system's C++ compiler otherwise,
    logging each command line; ``broken``: fails every compile with one error line."""
    real = shutil.which("g++") or shutil.which("c++")
    if real is None:
        pytest.skip("no system C++ compiler (g++/c++) to stand behind the fake Apple clang")
    log = folder / "calls.log"
    apple = folder / "appleclang"
    apple.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$*" >> '{log}'
        for a in "$@"; do case "$a" in -fopenmp) echo "clang: error: unsupported option '-fopenmp'" >&2; exit 1;;
        esac; done
        exec '{real}' "$@"
    """))
    broken = folder / "broken"
    broken.write_text(textwrap.dedent("""\
        #!/bin/sh
        case "$1" in --version) echo "broken 1.0"; exit 0;; esac
        echo "fatal error: torch/extension.h: No such file or directory" >&2
        exit 1
    """))
    for f in (apple, broken):
        f.chmod(0o755)
    return apple, broken, log


CHECK_KERNEL = """
    import warnings, torch
    warnings.simplefilter("always")
    from zoo.ops import selective_scan_cpu as ssc
    from zoo.ops.selective_scan import selective_scan_ref
    with warnings.catch_warnings(record=True) as caught:
        ok = ssc.is_available()
    for w in caught:
        print("WARNING:", str(w.message).replace("\\n", "<NL>"))
    print("available:", ok, ssc._ext.__name__ if ok else None)
    seed = int.from_bytes(__import__("os").urandom(4), "little")
    print("seed:", seed)
    g = torch.Generator().manual_seed(seed)
    b, e, L, n = 2, 6, 45, 4
    u, delta = torch.randn(b, e, L, generator=g), torch.rand(b, e, L, generator=g)
    A, D = -torch.rand(e, n, generator=g), torch.randn(e, generator=g)
    B, C, z = torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g), torch.randn(b, e, L, generator=g)
    args = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, z)]
    ref_args = [t.detach().double().requires_grad_() for t in args]
    out, last = selective_scan_ref(*ref_args, delta_softplus=True, return_last_state=True)
    (out.sum() + last.sum()).backward()
    if ok:
        kout, klast = ssc.selective_scan_cpu(*args, delta_softplus=True, return_last_state=True)
        (kout.sum() + klast.sum()).backward()
        tol = lambda r: 1e-4 * (1 + r.abs().max().item())
        assert (kout.double() - out).abs().max().item() <= 1e-5 * (1 + out.abs().max().item())
        assert (klast.double() - last).abs().max().item() <= 1e-5 * (1 + last.abs().max().item())
        for a, r in zip(args, ref_args):
            assert (a.grad.double() - r.grad).abs().max().item() <= tol(r.grad)
        print("kernel == reference")
"""


def test_kernel_builds_without_openmp_and_says_so_once(tmp_path):
    """Apple clang has no OpenMP: the build always passed ``-fopenmp``, so the fused kernel never built on macOS and
    Mamba trained on the reference scan, ~25x slower, with only a compiler dump. The build without OpenMP is tried
    next now: the kernel builds and equals the reference (fresh random inputs, forward, last state, gradients). The
    one-line notice says so once; later processes with that compiler go straight to the build without OpenMP."""
    apple, _, log = _fake_compilers(tmp_path)
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "CXX": str(apple), "ZOO_CPU_KERNEL": "1"}
    r = run_child(CHECK_KERNEL, windows=False, env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "available: True zoo_selective_scan_cpu_noomp" in r.stdout and "kernel == reference" in r.stdout
    notes = [ln for ln in r.stdout.splitlines() if ln.startswith("WARNING:")]
    assert len(notes) == 1 and "<NL>" not in notes[0], notes
    assert "unsupported option '-fopenmp'" in notes[0] and "without OpenMP" in notes[0]
    saved = notes[0].split("full compiler log: ")[1].rstrip(")")
    assert "unsupported option '-fopenmp'" in open(saved).read()
    open(log, "w").close()
    r = run_child(CHECK_KERNEL, windows=False, env=env, timeout=900)         # the cached build, no retry, no notice
    assert r.returncode == 0, r.stdout + r.stderr
    assert "available: True zoo_selective_scan_cpu_noomp" in r.stdout and "kernel == reference" in r.stdout
    assert "WARNING:" not in r.stdout
    assert "-fopenmp" not in open(log).read()


def test_failed_build_says_one_line_and_the_reference_runs(tmp_path):
    """A compiler that cannot build the kernel at all: one line -- what failed, that the pure-PyTorch reference
    runs instead, where the full log is -- in place of the compiler dump that ended "falling back is up to the
    caller"; the selective scan then equals the reference."""
    _, broken, _ = _fake_compilers(tmp_path)
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "CXX": str(broken), "ZOO_CPU_KERNEL": "1"}
    r = run_child(CHECK_KERNEL + """
    from zoo.ops.selective_scan import selective_scan_fn
    assert torch.equal(selective_scan_fn(u, delta, A, B, C, D, z, delta_softplus=True),
                       selective_scan_ref(u, delta, A, B, C, D, z, delta_softplus=True))
    print("reason:", ssc.unavailable_reason())
    """, windows=False, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "available: False None" in r.stdout
    notes = [ln for ln in r.stdout.splitlines() if ln.startswith("WARNING:")]
    assert len(notes) == 1 and "<NL>" not in notes[0] and len(notes[0]) < 600, notes
    note = notes[0]
    assert "fatal error: torch/extension.h: No such file or directory" in note
    assert "runs the pure-PyTorch reference instead" in note and "falling back is up to the caller" not in note
    saved = note.split("full compiler log: ")[1].split(")")[0]
    assert "fatal error" in open(saved).read() and "-fopenmp" in open(saved).read()
    assert "\n" not in r.stdout.split("reason: ")[1].strip()
