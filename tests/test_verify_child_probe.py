"""ONNX Runtime can abort the whole process (SIGABRT, "terminate called without an active exception") instead of
raising, on a graph fed another length than it was traced at: a GRU4Rec whose ``_run`` calls its ``nn.GRU`` once per
item in a Python loop, traced at 3 new items, aborts at T=1. The verification ran such a graph in-process, so
``export.onnx`` died with ONNX Runtime's C++ message and no report. Now export.verify first runs the graph once per
input shape it will use in a child process (export.verify._probe, export.ort_probe): a crash there is the failed
case ``probe`` naming the signal and the length (exit 3 through the failed-verification path, nothing written); a
child that hangs, exits non-zero or cannot start fails it too; a runner (TensorRT, the emulated plugins) is never
probed."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from export import onnx as E
from export import ort_probe
from export import verify as V
from tiny_models import tiny
from zoo.models.gru4rec import GRU4RecModel

pytestmark = pytest.mark.usefixtures("one_thread")

#: small verification sizes (4 step shapes: (2, 8), (2, 1), (24, 8), (24, 1))
STEP_KW = dict(prime_len=8, n_steps=3, batch=2, topk_cases=24, topk_prime=8)
WINDOW_KW = dict(topk_cases=24)
#: small verification sizes for export.onnx
FAST_ARGS = ["--verify-cases", "24", "--verify-prime", "8", "--verify-steps", "3"]
#: the likely cause every such failure names
CAUSE = "likely cause: the graph was traced at one fixed length (a Python loop over the sequence?)"


def _gru_per_item(self, item_ids: torch.Tensor, h0: torch.Tensor | None):
    """GRU4Rec's ``_run`` with its nn.GRU called once per item in a Python loop: exact, traced to one length, and
    ONNX Runtime aborts the process (not raises) on the graph at fewer items than the trace's 3."""
    x = self.emb_dropout(self.item_embedding(item_ids))
    outs, h = [], h0
    for t in range(x.shape[1]):
        o, h = self.gru_layers(x[:, t:t + 1], h)
        outs.append(o)
    return self.dense(torch.cat(outs, 1)), h


@pytest.fixture
def crashing(monkeypatch):
    """A tiny GRU4Rec whose GRU runs item by item (every GRU4Rec the test makes or loads too)."""
    monkeypatch.setattr(GRU4RecModel, "_run", _gru_per_item)
    return tiny("gru4rec")


def _files(folder: pathlib.Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _kw(kind: str) -> dict:
    return STEP_KW if kind == "step" else WINDOW_KW


# ------------------------------------------------------------------------------------------------ the crash
@pytest.mark.parametrize("kind,where,unit", [("step", "on T=1 new items (B=2)", "length"),
                                             ("window", "at width 3 (B=12)", "width")])
def test_a_graph_that_aborts_onnx_runtime_fails_the_probe_case(tmp_path, crashing, kind, where, unit):
    """The in-process ONNX Runtime aborts on this graph (checked in a child: exit by SIGABRT); verify_export returns
    a FAILED report whose only case, ``probe``, names the crash, the call (length / width, batch) and the cause,
    in one line -- this test process lives on."""
    res = E.export_model(crashing, tmp_path / "g", kind=kind, topk=3, verify=False)
    rep = V.verify_export(crashing, res.graph_path, res.spec, **_kw(kind))
    assert not rep.ok and [c.name for c in rep.cases] == ["probe"]
    c = rep.cases[0]
    assert c.error.startswith(f"ONNX Runtime crashed (SIGABRT) running the graph {where} in a child process"), c.error
    assert "terminate called without an active exception" in c.error, c.error
    assert c.error.endswith(f"; the graph cannot be served at this {unit}; {CAUSE}"), c.error
    assert "\n" not in c.error and c.reason == c.error and c.max_abs_err == float("inf") and c.topk_cases == 0
    assert rep.worst_message() == f"case 'probe': {c.error}"
    assert rep.to_dict()["cases"][0]["error"] == c.error


def test_the_graph_really_aborts_onnx_runtime(tmp_path, crashing):
    """What the probe guards against: the graph at T=1 run in a process of its own ends it by SIGABRT."""
    res = E.export_model(crashing, tmp_path / "g", topk=3, verify=False)
    code = ("import sys, numpy as np; from export.ort_probe import scores_session; s = scores_session(sys.argv[1]); "
            "s.run(None, {'item_ids': np.ones((2, 3), np.int64), 'gru_state': np.zeros((2, 1, 8), np.float32)}); "
            "print('T=3 ran', flush=True); "
            "s.run(None, {'item_ids': np.ones((2, 1), np.int64), 'gru_state': np.zeros((2, 1, 8), np.float32)}); "
            "print('T=1 ran', flush=True)")
    p = subprocess.run([sys.executable, "-c", code, res.graph_path], capture_output=True, text=True, timeout=300,
                       cwd=pathlib.Path(E.__file__).parents[1])
    assert p.returncode == -6 and p.stdout == "T=3 ran\n", (p.returncode, p.stdout, p.stderr)


@pytest.mark.parametrize("kind", ["step", "window"])
def test_export_onnx_exits_3_in_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, kind):
    """export.onnx on the crashing model: exit 3 (the process was aborted), one ERROR line naming the crash and the
    length; the earlier export in --out is as it was (no stage left behind), and a fresh --out gets no graph."""
    out = tmp_path / "out"
    E.export_model(tiny("gru4rec"), out, kind=kind, topk=3, verify=False)
    before = _files(out)
    monkeypatch.setattr(GRU4RecModel, "_run", _gru_per_item)
    tiny("gru4rec").save_pretrained(tmp_path / "m")
    args = ["--model", str(tmp_path / "m"), "--kind", kind, "--topk", "3"] + (FAST_ARGS if kind == "step"
                                                                               else FAST_ARGS[:2])
    for folder, earlier in ((out, before), (tmp_path / "fresh", None)):
        capsys.readouterr()
        code = E.main(args + ["--out", str(folder)])
        printed = capsys.readouterr()
        lines = [line for line in printed.err.splitlines() if line.strip()]
        assert code == E.EXIT_VERIFY_FAILED == 3, printed.err
        assert len(lines) == 1 and "Traceback" not in printed.err + printed.out, printed.err
        assert lines[0].startswith(f"ERROR: verification FAILED, nothing written to {folder}"), lines[0]
        where = "on T=1 new items (B=4)" if kind == "step" else "at width 3 (B=12)"
        assert f"case 'probe': ONNX Runtime crashed (SIGABRT) running the graph {where} in a child process" \
            in lines[0] and CAUSE in lines[0], lines[0]
        assert f"verification ({kind}, gru4rec): FAILED" in printed.out
        if earlier is not None:
            assert _files(folder) == earlier
        else:
            assert not folder.exists() or _files(folder) == {}, _files(folder)


# ------------------------------------------------------------------------------------------------ passing graphs
@pytest.mark.parametrize("kind", ["step", "window"])
def test_the_probe_passes_on_a_normal_graph_and_runs_the_verifications_shapes(tmp_path, kind):
    """tiny mamba4rec (step) / sasrec (window): the probe passes (a progress line says so) and the verification runs
    as before; the probe ran exactly the (B, T) / (B, width) shapes the verification then fed, real histories'
    included."""
    model = tiny("mamba4rec" if kind == "step" else "sasrec")
    res = E.export_model(model, tmp_path / "g", kind=kind, topk=3, verify=False)
    real = [[1, 2, 3, 4, 5, 6, 7], [3, 4, 5, 6, 7], [2, 9], [8, 8, 8, 8, 8, 8, 8, 8, 8]]
    said, calls = [], []
    orig = V._probe

    def spy(graph, probe_calls, unit, say):
        calls.extend(probe_calls)
        return orig(graph, probe_calls, unit, say)

    class Recording:
        def __init__(self):
            self.sess, self.shapes = V.scores_session(res.graph_path), []

        def run(self, names, feeds):
            self.shapes.append(feeds["item_ids"].shape)
            return self.sess.run(names, feeds)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(V, "_probe", spy)
        rep = V.verify_export(model, res.graph_path, res.spec, real_histories=real, progress=said.append,
                              **_kw(kind))
    assert rep.ok, rep.table()
    assert [c.name for c in rep.cases] == (["random/prime+steps", "random/topk", "real/prime+steps"]
                                           if kind == "step" else ["random/windows", "real/windows"])
    probed = [a["item_ids"].shape for _, a, _ in calls]
    assert len(probed) == len(set(probed)) >= 3
    assert any(line.startswith(f"  probe: the graph ran at {len(probed)} input shape(s) in a child process")
               for line in said), said
    rec = Recording()
    assert V.verify_export(model, res.graph_path, res.spec, real_histories=real, runner=rec, **_kw(kind)).ok
    assert set(probed) == set(rec.shapes), (probed, sorted(set(rec.shapes)))
    for where, arrays, fill in calls:
        B, T = arrays["item_ids"].shape
        assert where == (f"on T={T} new items (B={B})" if kind == "step" else f"at width {T} (B={B})")
        assert set(arrays) | set(fill) == {i["name"] for i in res.spec["inputs"]}


@pytest.mark.parametrize("model_type,options", [("tim4rec_causal", {"time_input": "timestamps"}),
                                                ("tim4rec_causal", {"time_input": "gaps"}),
                                                ("mamba4rec", {"exclude_seen": True}),
                                                ("gru4rec", {"candidates": True})])
def test_the_probe_feeds_every_input_kind(tmp_path, model_type, options):
    """Time-aware (timestamps or float32 time_gaps), --exclude-seen (the seen state) and --candidates graphs: the
    probe feeds what the graph takes, the child runs every call (``done i``) and the verification passes."""
    model = tiny(model_type)
    res = E.export_model(model, tmp_path / "g", topk=3, verify=False, **options)
    names = {i["name"] for i in res.spec["inputs"]}
    assert names & {"timestamps", "time_gaps", "seen", "candidates"}, names
    calls = V._step_probe_calls(res.spec, 0, 8, 3, 2, 24, 8, None, None)
    folder = tmp_path / "probe"
    folder.mkdir()
    ort_probe.write_calls(str(folder), calls)
    p = subprocess.run(V._probe_child_command(res.graph_path, str(folder)), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.split("\n")[:2] == ["load", "loaded"], (p.stdout, p.stderr)
    assert [f"done {i}" for i in range(len(calls))] == [x for x in p.stdout.split("\n") if x.startswith("done")]
    assert V.verify_export(model, res.graph_path, res.spec, **STEP_KW).ok


def test_the_child_imports_no_torch(tmp_path):
    """The child starts cheaply: running the calls imports onnxruntime and numpy, never torch."""
    model = tiny("mamba4rec")
    res = E.export_model(model, tmp_path / "g", topk=3, verify=False)
    ort_probe.write_calls(str(tmp_path), V._step_probe_calls(res.spec, 0, 8, 3, 2, 24, 8, None, None))
    cmd = V._probe_child_command(res.graph_path, str(tmp_path))
    cmd[2] = cmd[2].replace("sys.exit(main(sys.argv[2:]))", "main(sys.argv[2:]); print('torch' in sys.modules)")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.split("\n")[-2:] == ["False", ""], (p.stdout, p.stderr)


# ------------------------------------------------------------------------------------------------ child failures
def _child(code: str):
    return lambda graph, folder: [sys.executable, "-c", code]


@pytest.mark.parametrize("code,timeout,message", [
    ("import time; print('load', flush=True); time.sleep(60)", 0.5,
     "the child process that probes the graph did not finish in 0.5 s (loading the graph) and was stopped"),
    ("import sys; print('load\\nloaded\\nstart 0\\ndone 0', flush=True); sys.stderr.write('boom\\n'); sys.exit(5)",
     None, "exited with status 5 (after running the graph on T=8 new items (B=2)) (its last stderr line: boom)"),
    ("import os, signal; print('load', flush=True); os.kill(os.getpid(), signal.SIGSEGV)", None,
     "ONNX Runtime crashed (SIGSEGV) loading the graph in a child process"),
])
def test_a_child_that_hangs_exits_non_zero_or_dies_fails_the_probe(tmp_path, monkeypatch, code, timeout, message):
    """A child still running after PROBE_TIMEOUT_S is killed and fails the case, and so does one that exits
    non-zero (its last stderr line quoted) or dies by a signal outside a call (no "cannot be served")."""
    model = tiny("mamba4rec")
    res = E.export_model(model, tmp_path / "g", topk=3, verify=False)
    monkeypatch.setattr(V, "_probe_child_command", _child(code))
    if timeout is not None:
        monkeypatch.setattr(V, "PROBE_TIMEOUT_S", timeout)
    rep = V.verify_export(model, res.graph_path, res.spec, **STEP_KW)
    assert not rep.ok and [c.name for c in rep.cases] == ["probe"]
    assert message in rep.cases[0].error and "cannot be served" not in rep.cases[0].error, rep.cases[0].error


def test_a_child_that_cannot_start_fails_the_probe(tmp_path, monkeypatch):
    model = tiny("mamba4rec")
    res = E.export_model(model, tmp_path / "g", topk=3, verify=False)
    missing = str(tmp_path / "no-python")
    monkeypatch.setattr(V, "_probe_child_command", lambda graph, folder: [missing, "-c", "pass"])
    rep = V.verify_export(model, res.graph_path, res.spec, **STEP_KW)
    assert not rep.ok and [c.name for c in rep.cases] == ["probe"]
    assert rep.cases[0].error.startswith(f"cannot start the child process that probes the graph ({missing}): "
                                         "[Errno 2]"), rep.cases[0].error


def test_the_probe_cleans_up_its_folder(tmp_path, monkeypatch):
    """The feeds go to a private temporary folder, removed after the child ran (passed or failed)."""
    model = tiny("mamba4rec")
    res = E.export_model(model, tmp_path / "g", topk=3, verify=False)
    folders = []
    orig = V._probe_child_command

    def record(graph, folder):
        folders.append(pathlib.Path(folder))
        assert sorted(p.name for p in folders[-1].iterdir()) == [ort_probe.CALLS_FILE, ort_probe.FEEDS_FILE]
        return orig(graph, folder)

    monkeypatch.setattr(V, "_probe_child_command", record)
    assert V.verify_export(model, res.graph_path, res.spec, **STEP_KW).ok
    assert len(folders) == 1 and not folders[0].exists()
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == sorted([E.GRAPH_FILE, E.SPEC_FILE])


# ------------------------------------------------------------------------------------------------ skipping it
def test_a_runner_or_isolate_false_skips_the_probe(tmp_path, monkeypatch):
    """A caller's runner (TensorRT, the emulated plugins: not ONNX Runtime in this process) is never probed, nor is a
    verification with isolate=False; the default probes once."""
    model = tiny("mamba4rec")
    res = E.export_model(model, tmp_path / "g", topk=3, verify=False)
    started = []
    orig = V._probe_child_command
    monkeypatch.setattr(V, "_probe_child_command", lambda g, f: started.append(g) or orig(g, f))
    assert V.verify_export(model, res.graph_path, res.spec, runner=V.scores_session(res.graph_path), **STEP_KW).ok
    assert V.verify_export(model, res.graph_path, res.spec, isolate=False, **STEP_KW).ok
    V.verify_step(model, res.graph_path, res.spec, isolate=False, **STEP_KW)
    assert started == []
    assert V.verify_export(model, res.graph_path, res.spec, **STEP_KW).ok
    assert started == [res.graph_path]          # the default probes (so the checks above could fail)
    wmodel = tiny("sasrec")
    wres = E.export_model(wmodel, tmp_path / "w", kind="window", topk=3, verify=False)
    assert V.verify_export(wmodel, wres.graph_path, wres.spec, runner=V.scores_session(wres.graph_path),
                           **WINDOW_KW).ok
    assert len(started) == 1
    assert np.isfinite(V.verify_export(wmodel, wres.graph_path, wres.spec, **WINDOW_KW).cases[0].max_abs_err)
    assert started == [res.graph_path, wres.graph_path]
