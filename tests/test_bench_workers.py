"""The multi-process benches (``bench/shared_store.py``, ``bench/sqlite_wal.py``) and their worker helpers of
``bench/benchutil.py``: the workers start at one moment sent once every one of them is set up (a barrier, not a
deadline guessed ahead), each row records how far apart they started and each one's busy time, and SIGTERM (``kill``,
``timeout``) ends a bench as Ctrl-C does -- status 143, one line, its workers and Redis server stopped, its scratch
folders removed, a SIGTERM that lands while a child starts included; a bench killed outright (SIGKILL) takes its
workers and Redis server with it (Linux's parent-death signal). No timing is asserted beyond generous bounds on a
barrier (seconds, not milliseconds) and on how long a child may outlive its killed bench (a minute)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _benchutil(monkeypatch):
    """``bench/benchutil.py``, as the benches import it."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import benchutil

    return benchutil


#: a worker of ``run_workers(..., barrier=True)``: sleeps its job's ``sleep`` seconds (a slow start-up), notes when it
#: said it was ready, waits for the common start, and returns when it started
BARRIER_WORKER = textwrap.dedent("""\
    import json, sys, time
    sys.path.insert(0, sys.argv[2])
    from benchutil import wait_for_start, worker_job
    job = worker_job()
    time.sleep(job["sleep"])
    ready = time.time()
    start_at = wait_for_start()
    print(json.dumps({"n": job["n"], "ready": ready, "start_at": start_at, "start": time.time()}))
""")


def test_workers_start_together_however_long_their_set_up(monkeypatch, tmp_path):
    """``run_workers(barrier=True)``: workers whose set-up takes 0, 1.5 and 3 s start after the last of them is ready
    (the start is sent only then), at the one time sent to all, within a generous second of each other -- not 3 s
    apart, as workers that each start when their own set-up ends would."""
    bu = _benchutil(monkeypatch)
    script = tmp_path / "worker.py"
    script.write_text(BARRIER_WORKER)
    jobs = [{"n": n, "sleep": s} for n, s in enumerate([3.0, 0.0, 1.5])]
    outs = bu.run_workers(str(script), [str(ROOT / "bench")], jobs, barrier=True)
    assert [o["n"] for o in outs] == [0, 1, 2]
    assert len({o["start_at"] for o in outs}) == 1                             # one start time, sent to all
    assert min(o["start"] for o in outs) >= max(o["ready"] for o in outs)       # nobody began before all were ready
    starts = [o["start"] for o in outs]
    assert max(starts) - min(starts) < 1.0, starts                              # not the 3 s of their set-ups


def test_a_worker_that_fails_or_ends_before_the_barrier_stops_the_others(monkeypatch, tmp_path, recorded_popens):
    """A worker that fails during its set-up, or ends without saying it is ready, is an error at once, the others
    (waiting at the barrier) stopped -- the bench does not wait for a start that cannot come."""
    bu = _benchutil(monkeypatch)
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent("""\
        import sys
        sys.path.insert(0, sys.argv[2])
        from benchutil import wait_for_start, worker_job
        job = worker_job()
        if job["fail"] == "status":
            sys.exit(3)
        if job["fail"] == "unready":
            sys.exit(0)
        wait_for_start()
    """))
    for fail, says in [("status", r"worker 2 of 2 of worker.py failed \(status 3\)"),
                       ("unready", r"worker 2 of 2 of worker.py ended before it said it was ready")]:
        with pytest.raises(RuntimeError, match=says):
            bu.run_workers(str(script), [str(ROOT / "bench")], [{"fail": None}, {"fail": fail}], barrier=True)
        assert all(p.poll() is not None for p in recorded_popens)             # the waiting one stopped too


def test_worker_times_separate_the_start_skew_from_the_store(monkeypatch):
    """``worker_times`` on hand-made times: the span counts the skew (events/s in all lower), the sum over workers of
    events / busy time does not; a skew over 5% of the shortest busy time marks the row, and the note says why."""
    bu = _benchutil(monkeypatch)
    outs = [{"start": 100.0, "end": 101.0}, {"start": 100.2, "end": 101.2}]   # 1 s each, 0.2 s apart
    r = bu.worker_times(outs, [1000, 1000])
    assert r["skew_s"] == pytest.approx(0.2) and r["busy_s"] == pytest.approx([1.0, 1.0])
    assert r["span_s"] == pytest.approx(1.2) and r["events_per_s"] == pytest.approx(2000 / 1.2)
    assert r["summed_per_s"] == pytest.approx(2000) and r["skewed"]
    assert bu.timing_cells(r) == f" 200.0 {bu.SKEWED} | 1.000 1.000 | 2,000 |"
    together = bu.worker_times([{"start": 100.0, "end": 101.0}, {"start": 100.01, "end": 100.51}], [1000, 500])
    assert not together["skewed"] and together["summed_per_s"] == pytest.approx(2000)
    assert bu.timing_cells(together) == " 10.0 | 1.000 0.500 | 2,000 |"
    assert bu.timing_cells({"events_per_s": 1.0}) == " - | - | - |"                  # a row without the workers' times
    assert bu.SKEWED in bu.SKEW_NOTE and "5%" in bu.SKEW_NOTE


def _ours(tmpdir: Path) -> list[int]:
    """The processes (other than zombies) of the temporary folder the test gave a bench alone: those whose environment
    holds ``TMPDIR=tmpdir`` (the bench, its workers) or whose working folder is in it (redis-server, which runs in its
    scratch folder and writes its process title over its environment)."""
    mark = f"TMPDIR={tmpdir}".encode() + b"\0"
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                zombie = (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                inside = os.readlink(d / "cwd").startswith(f"{tmpdir}/")
                if not zombie and (inside or mark in (d / "environ").read_bytes()):
                    found.append(int(d.name))
            except OSError:                                  # gone, or not ours to read
                pass
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the bench's processes through /proc")
@pytest.mark.parametrize("script, argv, folder, before", [
    ("shared_store", ["--processes", "2", "--events", "20000", "--users", "4", "--hot-users", "2"], "bench-shared-",
     "| dict per worker (not shared) | 2 |"),
    ("sqlite_wal", ["--processes", "1", "--seconds", "60", "--users", "4"], "bench-wal-", None),
])
def test_sigterm_stops_the_workers_and_removes_the_scratch_folders(tmp_path, script, argv, folder, before):
    """The QA's case: ``kill -TERM`` (a ``timeout``, a scheduler's stop) of a bench while its workers run on a SQLite
    file in a scratch folder killed the bench alone -- status -15, the workers (and shared_store's redis-server) went
    on, the folder (gigabytes at sqlite_wal's default) stayed. Now: status 143, the one line ``python
    bench/<script>.py: terminated`` on stderr, no process of the run left, nothing left in its $TMPDIR but what
    libraries keep there. The signal is sent once the bench has a worker running on a SQLite configuration
    (shared_store: after the marker line of its first row, the dict one)."""
    pytest.importorskip("onnxruntime", reason="the step graphs run with ONNX Runtime")
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, str(ROOT / "bench" / f"{script}.py"), "--card", "gru4rec-ml1m", *argv],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        if before:
            for line in p.stdout:                                    # the marker: the first configuration done
                if line.startswith(before):
                    break
            else:
                pytest.fail(f"{script} ended before its first row: {p.wait()} {p.stderr.read()}")
        deadline = time.monotonic() + 300
        while not (any(n.startswith(folder) for n in os.listdir(tmpdir))
                   and any("--worker" in _cmdline(pid) for pid in _ours(tmpdir))):
            assert p.poll() is None and time.monotonic() < deadline, f"{script} ended before a SQLite worker ran"
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
        left = [_cmdline(pid) for pid in _ours(tmpdir)]                        # workers, redis-server
        files = sorted(n for n in os.listdir(tmpdir) if not n.startswith("torchinductor_") and n != ".ses")
        _kill(_ours(tmpdir))                                   # what a bench left running holds its stderr open
        err = p.communicate(timeout=60)[1]
        assert (p.returncode, err.splitlines(), left, files) == (143, [f"python bench/{script}.py: terminated"], [],
                                                                  []), (p.returncode, err, left, files)
    finally:
        _kill([p.pid] * (p.poll() is None) + _ours(tmpdir))
        p.wait()


def _kill(pids: list[int]) -> None:
    """SIGKILL these processes (this test's own: its bench and what the bench started), gone ones skipped."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _children(pid: int) -> list[int]:
    """The processes (other than zombies) whose parent is ``pid``, from ``/proc/*/stat``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                state, ppid = (d / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):                    # gone meanwhile
                continue
            if int(ppid) == pid and state != "Z":
                found.append(int(d.name))
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie -- ended, not yet reaped by whoever adopted it --
    has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


#: a bench's parent process in miniature: ``run_workers`` with one worker (``sys.argv[2]``, its job sleeping for
#: minutes), or ``redis_server`` held for minutes once its URL is printed
DYING_PARENT = textwrap.dedent("""\
    import sys, time
    sys.path.insert(0, sys.argv[1])
    import benchutil
    if sys.argv[2] == "redis-server":
        with benchutil.redis_server(None) as url:
            print(url, flush=True)
            time.sleep(600)
    else:
        benchutil.run_workers(sys.argv[2], [], [{}])
""")
#: its worker: says it runs, then sleeps past any test
SLEEPING_WORKER = "import time\nprint('running', flush=True)\ntime.sleep(600)\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG (die_with_parent) is Linux's")
@pytest.mark.parametrize("child", ["worker", "redis-server"])
def test_a_bench_killed_outright_leaves_no_worker_or_server(tmp_path, child):
    """The last margin of the SIGTERM case: a bench SIGKILLed (the OOM killer, ``kill -9``, a crash) cannot stop what
    it started, and its workers and redis-server, in sessions of their own, ran on until they ended by themselves.
    Now each is started with a parent-death signal (``die_with_parent``): a parent process started here starts one
    the bench's way (``run_workers``, ``redis_server``), is SIGKILLed once it runs, and the child is gone soon after
    (polled for up to a generous minute; no timing asserted)."""
    if child == "redis-server":
        pytest.importorskip("redis", reason="the redis client package is not installed")
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed here")
        what = "redis-server"
    else:
        what = tmp_path / "worker.py"
        what.write_text(SLEEPING_WORKER)
    parent = subprocess.Popen([sys.executable, "-c", DYING_PARENT, str(ROOT / "bench"), str(what)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ,
                              TMPDIR=str(tmp_path)))
    kids: list[int] = []
    try:
        if child == "redis-server":
            assert parent.stdout.readline().startswith("redis://"), parent.stderr.read()   # the server answers

        def runs(pid: int) -> bool:                # the worker's or the server's process image, not a fork's
            argv = _cmdline(pid).split()
            return bool(argv) and ("--worker" in argv if child == "worker" else argv[0].endswith("redis-server"))

        deadline = time.monotonic() + 120
        while not kids:
            assert parent.poll() is None and time.monotonic() < deadline, (parent.poll(), "no child ran")
            kids = [k for k in _children(parent.pid) if runs(k)]
            time.sleep(0.05)
        assert len(kids) == 1 and _running(kids[0])
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 60
        while _running(kids[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(kids[0]), f"{_cmdline(kids[0]).strip()} runs on after its bench was SIGKILLed"
    finally:
        _kill([parent.pid] * (parent.poll() is None) + [k for k in kids if _running(k)])
        parent.wait()
        parent.stdout.close()
        parent.stderr.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG (die_with_parent) is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_child_whose_parent_died_before_its_prctl_ends_there(monkeypatch, sig):
    """The race ``die_with_parent`` closes: a parent that died between the ``fork`` and the child's ``prctl`` sends
    no signal, so the child checks that its parent is still the one that started it, and ends (status 128 + sig)
    before its ``exec`` when not -- here made certain by a parent pid that is not the test's. With its own parent, a
    child runs as usual."""
    bu = _benchutil(monkeypatch)
    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: -1)                                  # "the bench" is not the child's parent
        orphaned = bu.die_with_parent(sig)
    p = subprocess.Popen([sys.executable, "-c", "print('ran')"], stdout=subprocess.PIPE, text=True,
                         preexec_fn=orphaned)
    assert (p.communicate(timeout=60)[0], p.returncode) == ("", 128 + sig)   # never ran its program
    p = subprocess.Popen([sys.executable, "-c", "print('ran')"], stdout=subprocess.PIPE, text=True,
                         preexec_fn=bu.die_with_parent(sig))
    assert (p.communicate(timeout=60)[0], p.returncode) == ("ran\n", 0)


#: a bench in miniature whose SIGTERM lands while ``spawn`` starts a child: its handler raises (as ``run_cli``'s),
#: and a fork hook (``os.register_at_fork``, as ``logging``'s) sends the signal; prints what came of it
SIGTERM_DURING_FORK = textwrap.dedent("""\
    import os, signal, subprocess, sys
    sys.path.insert(0, sys.argv[1])
    import benchutil

    class Stop(Exception):
        pass

    def stop(signum, frame):
        raise Stop()

    signal.signal(signal.SIGTERM, stop)
    sent, started = [], []
    os.register_at_fork(before=lambda: sent or sent.append(os.kill(os.getpid(), signal.SIGTERM)))

    class Recorded(subprocess.Popen):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            started.append(self)

    subprocess.Popen = Recorded
    try:
        benchutil.spawn([sys.executable, "-c", "import time; time.sleep(120)"])
        print("lost", [p.poll() for p in started], flush=True)
    except Stop:
        print("raised", [p.poll() for p in started], flush=True)
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a preexec_fn (die_with_parent) is Linux's")
def test_a_sigterm_while_a_child_starts_raises_once_it_has_started():
    """The lost SIGTERM: a ``preexec_fn`` makes Python run its fork hooks around the fork, where an exception is
    printed and dropped -- a SIGTERM landing there (the QA's ``kill`` while a bench started its second worker) raised
    inside a hook, and the bench measured on. ``spawn`` holds SIGINT/SIGTERM back while it starts the child and
    raises them after, the child (never handed back) stopped and reaped first."""
    out = subprocess.run([sys.executable, "-c", SIGTERM_DURING_FORK, str(ROOT / "bench")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split(None, 1)[0] == "raised", (out.stdout, out.stderr)
    assert out.stdout.strip() == "raised [-15]" and "Exception ignored" not in out.stderr, (out.stdout, out.stderr)
