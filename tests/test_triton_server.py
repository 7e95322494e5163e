"""``export/triton_server.py``'s launcher and ``start_server``: neither the launcher nor ``tritonserver`` outlives the
process that started it (Linux's parent-death signal, ``die_with_parent``), a caller or launcher killed outright
(SIGKILL) included; a signal that lands while the launcher starts is not lost. Stand-ins for the server venv's python
and for ``tritonserver`` (no server needed), and one run of the real server where its venv is there
(``bash export/triton_server_env.sh``). No timing is asserted beyond a generous minute for a child to end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="PR_SET_PDEATHSIG (die_with_parent) is Linux's")

#: a stand-in for the server venv's python (the launcher) or for tritonserver: writes the parent-death signal the
#: kernel holds for it (``prctl(PR_GET_PDEATHSIG)``), the signals it started with blocked and its arguments to the
#: JSON file ``report``, then sleeps ``sleep`` seconds
REPORTER = textwrap.dedent("""\
    #!{python}
    import ctypes, json, os, sys, time
    sig = ctypes.c_int(-1)
    ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)          # PR_GET_PDEATHSIG
    with open("/proc/self/status") as f:
        blocked = int(next(line.split()[1] for line in f if line.startswith("SigBlk:")), 16)
    with open({report!r} + ".part", "w") as f:
        json.dump({{"pdeathsig": sig.value, "blocked": blocked, "argv": sys.argv[1:]}}, f)
    os.replace({report!r} + ".part", {report!r})
    time.sleep({sleep})
""")


def _reporter(path: Path, report: Path, sleep: float) -> Path:
    path.write_text(REPORTER.format(python=sys.executable, report=str(report), sleep=sleep))
    path.chmod(0o755)
    return path


def _mask_bits(signals) -> int:
    """``signals`` as the bit mask of ``/proc/PID/status``'s ``SigBlk``."""
    return sum(1 << (int(s) - 1) for s in signals)


@linux_only
def test_tritonserver_is_started_with_a_parent_death_signal(tmp_path, monkeypatch, recorded_popens):
    """``serve`` starts tritonserver (here a stand-in that reports and exits) with SIGTERM as its parent-death
    signal -- it had none, and a launcher SIGKILLed left it serving -- and with the launcher's signal mask, not the
    one held while it starts it."""
    from export import triton_server as S

    report = tmp_path / "server.json"
    binary = _reporter(tmp_path / "tritonserver", report, 0)
    monkeypatch.setattr(S, "_prepare_workspace", lambda ws: (binary, dict(os.environ)))
    monkeypatch.setattr(S.signal, "signal", lambda *a: None)         # keep pytest's own handlers
    assert S.serve(str(tmp_path), http_port=18000, grpc_port=18001) == 0
    got = json.loads(report.read_text())
    assert got["pdeathsig"] == signal.SIGTERM, got
    assert got["blocked"] == _mask_bits(signal.pthread_sigmask(signal.SIG_BLOCK, [])), got
    assert "--http-port=18000" in got["argv"]
    assert len(recorded_popens) == 1 and recorded_popens[0].poll() == 0


@linux_only
def test_the_launcher_is_started_with_a_parent_death_signal(tmp_path, monkeypatch, recorded_popens):
    """``start_server`` starts the launcher (here a stand-in for the server venv's python that reports and waits)
    with SIGTERM as its parent-death signal -- it had none, and in a session of its own it ran on, with its
    tritonserver, after its caller was SIGKILLed -- and with the caller's signal mask; ``stop()`` still ends it."""
    from export import triton_server as S

    report = tmp_path / "launcher.json"
    monkeypatch.setattr(S, "server_python", lambda venv=None: _reporter(tmp_path / "python", report, 300))
    monkeypatch.setattr(S, "_ready", lambda port, models: report.is_file())
    repo = tmp_path / "repo"
    repo.mkdir()
    h = S.start_server(repo, timeout=120, log_path=str(tmp_path / "server.log"))
    try:
        got = json.loads(report.read_text())
        assert h.alive() and got["pdeathsig"] == signal.SIGTERM, got
        assert got["blocked"] == _mask_bits(signal.pthread_sigmask(signal.SIG_BLOCK, [])), got
        assert got["argv"][:3] == [str(ROOT / "export" / "triton_server.py"), "--repo", str(repo)]
    finally:
        h.stop()
    assert recorded_popens == [h.proc] and h.proc.poll() is not None


#: a caller of ``start_server`` (``launcher``: a stand-in launcher that records its pid and sleeps) or a launcher
#: running ``serve`` (``tritonserver``: a stand-in server that does the same), which prints ``up`` once its child
#: runs and then sleeps, to be SIGKILLed
DYING_PARENT = textwrap.dedent("""\
    import os, pathlib, sys, time
    import export.triton_server as S
    child, tmp = sys.argv[1], pathlib.Path(sys.argv[2])
    fake = tmp / "child.sh"
    fake.write_text(f'#!/bin/sh\\necho $$ > "{tmp}/child.pid"\\nexec sleep 300\\n')
    fake.chmod(0o755)
    if child == "launcher":
        S.server_python = lambda venv=None: fake
        S._ready = lambda port, models: (tmp / "child.pid").is_file()
        (tmp / "repo").mkdir()
        S.start_server(tmp / "repo", timeout=120, log_path=str(tmp / "server.log"))
        print("up", flush=True)
        time.sleep(300)
    else:
        S._prepare_workspace = lambda ws: (fake, dict(os.environ))
        S.serve(str(tmp), http_port=18000, grpc_port=18001)
""")


def _running(pid: int) -> bool:
    """Whether ``pid`` has not ended (a zombie no one reaped yet has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill(pids) -> None:
    """SIGKILL these processes (this test's own), gone ones skipped."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_gone(pids, seconds: float = 60.0) -> list[int]:
    """Those of ``pids`` still running after up to ``seconds`` (polled)."""
    deadline = time.monotonic() + seconds
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _running(p)]


@linux_only
@pytest.mark.parametrize("child", ["launcher", "tritonserver"])
def test_a_parent_killed_outright_takes_its_child_along(tmp_path, child):
    """The caller of ``start_server`` SIGKILLed (the OOM killer, ``kill -9``, a crash) can stop nothing: its
    launcher, in a session of its own, ran on; a launcher SIGKILLed left its tritonserver serving. Now each child is
    gone soon after its parent (polled for up to a generous minute; no timing asserted)."""
    (tmp_path / "tmp").mkdir()                  # the launcher killed outright leaves its workspace folder: here
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    parent = subprocess.Popen([sys.executable, "-c", DYING_PARENT, child, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    pid_file, kid = tmp_path / "child.pid", None
    try:
        if child == "launcher":
            assert parent.stdout.readline() == "up\n", parent.stderr.read()
        deadline = time.monotonic() + 120
        while not (pid_file.is_file() and pid_file.read_text().strip()):
            assert parent.poll() is None and time.monotonic() < deadline, (parent.poll(), "no child ran")
            time.sleep(0.05)
        kid = int(pid_file.read_text())
        assert _running(kid)
        parent.kill()
        parent.wait()
        assert _wait_gone([kid]) == [], f"the {child} runs on after its parent was SIGKILLed"
    finally:
        _kill([parent.pid] * (parent.poll() is None) + [kid] * bool(kid and _running(kid)))
        parent.wait()
        parent.stdout.close()
        parent.stderr.close()


#: a caller whose Ctrl-C (SIGINT, raising KeyboardInterrupt) lands while ``start_server`` starts the launcher: a fork
#: hook (``os.register_at_fork``, as ``logging``'s) sends it; prints what came of it and the launchers started
SIGINT_DURING_FORK = textwrap.dedent("""\
    import os, pathlib, signal, subprocess, sys, threading, time
    import export.triton_server as S
    signal.signal(signal.SIGINT, signal.default_int_handler)   # a run started in the background inherits it ignored
    tmp = pathlib.Path(sys.argv[1])
    if sys.argv[2:] == ["thread"]:          # another thread, to which a signal blocked in the main thread would go
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    fake = tmp / "python"
    fake.write_text("#!/bin/sh\\nexec sleep 120\\n")
    fake.chmod(0o755)
    S.server_python = lambda venv=None: fake
    (tmp / "repo").mkdir()
    sent, started = [], []
    os.register_at_fork(before=lambda: sent or sent.append(os.kill(os.getpid(), signal.SIGINT)))

    class Recorded(subprocess.Popen):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            started.append(self)

    subprocess.Popen = Recorded
    try:
        S.start_server(tmp / "repo", timeout=60, log_path=str(tmp / "server.log"))
        print("lost", [p.poll() for p in started], flush=True)
    except KeyboardInterrupt:
        print("raised", [p.poll() for p in started], flush=True)
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
""")


@linux_only
@pytest.mark.parametrize("threads", ["one thread", "thread"])
def test_a_ctrl_c_while_the_launcher_starts_is_raised_once_it_has_started(tmp_path, threads):
    """The launcher is started with a ``preexec_fn`` (its parent-death signal), which makes Python run its fork
    hooks around the fork, where an exception is printed and dropped: a Ctrl-C landing there would be lost and the
    caller would wait on. ``start_server`` holds SIGINT/SIGTERM back while it starts the launcher and raises them
    after, the launcher (never handed back) stopped and reaped first. With another thread in the process (CI once
    failed so: a signal blocked in the main thread went to that thread, and Python raised it inside the fork hook)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", SIGINT_DURING_FORK, str(tmp_path), threads], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "raised [-15]", (out.stdout, out.stderr)
    assert "Exception ignored" not in out.stderr, out.stderr


def _real_server_or_skip():
    from export import triton_server as S

    try:
        S.server_python()
    except RuntimeError as e:
        pytest.skip(str(e))
    return S


#: a caller of the real ``start_server`` on an empty repository: prints the launcher's pid once ready, then sleeps
REAL_CALLER = textwrap.dedent("""\
    import sys, time
    import export.triton_server as S
    h = S.start_server(sys.argv[1], timeout=240, log_path=sys.argv[2])
    print(h.proc.pid, flush=True)
    time.sleep(600)
""")


@linux_only
@pytest.mark.parametrize("killed", ["caller", "launcher"])
def test_the_real_server_ends_with_a_caller_or_launcher_killed_outright(tmp_path, killed):
    """The real tritonserver (the server venv's): its caller SIGKILLed, the launcher is sent SIGTERM and stops
    tritonserver and removes its workspace as on ``stop()``; the launcher SIGKILLed, tritonserver is sent SIGTERM
    and stops. Neither is left serving."""
    _real_server_or_skip()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    (tmp_path / "repo").mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    caller = subprocess.Popen([sys.executable, "-c", REAL_CALLER, str(tmp_path / "repo"), str(tmp_path / "server.log")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    pids: list[int] = []
    try:
        line = caller.stdout.readline()
        assert line.strip().isdigit(), (line, caller.stderr.read())
        launcher = int(line)
        servers = [int(p) for p in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()]
        pids = [launcher, *servers]
        assert len(servers) == 1 and all(map(_running, pids)), pids
        os.kill(caller.pid if killed == "caller" else launcher, signal.SIGKILL)
        assert _wait_gone(pids) == [], f"{pids} (launcher, tritonserver) run on after the {killed} was SIGKILLed"
        if killed == "caller":                      # the launcher, stopped by its signal, removed its workspace
            assert os.listdir(tmpdir) == []
    finally:
        _kill([caller.pid] * (caller.poll() is None) + [p for p in pids if _running(p)])
        caller.wait()
        caller.stdout.close()
        caller.stderr.close()
