"""A graph ONNX Runtime cannot run during the verification -- a model whose recurrence is a Python loop over the
sequence, which the trace unrolls at its example length (3 new items for a step graph, a 5-item window), so another
length makes a ``Gather`` index fall outside its input (``InvalidArgument``) -- is a failed verification: exit 3, one
``ERROR`` line naming the call (``T`` new items, or the window's width), ONNX Runtime's message and the likely cause,
no traceback, nothing written over an earlier output. It was ONNX Runtime's traceback and exit 1 (export.onnx,
export.triton --model, export.trt). Also: the "no step exporter" message of each command names what that command can
do (export.triton and export.trt have no --kind) and what a contributor adds (STEP_MODEL_TYPES).

The looped model is the tiny GRU4Rec with ``_run`` replaced (for the test, on the class, so that loading a saved
folder gives it too) by an exact recurrence written as ``for t in range(T)``: ``forward`` and ``step`` agree, the
trace does not generalize."""

from __future__ import annotations

import pathlib

import pytest
import torch

from export import onnx as E
from export import verify as V
from tiny_models import tiny
from zoo.models.gru4rec import GRU4RecModel

pytestmark = pytest.mark.usefixtures("one_thread")

#: small verification sizes for the CLIs
FAST_ARGS = ["--verify-cases", "24", "--verify-prime", "8", "--verify-steps", "3"]
#: the likely cause every such failure names
CAUSE = "the graph was traced at one fixed length (a Python loop over the sequence?)"


def _looped_run(self, item_ids: torch.Tensor, h0: torch.Tensor | None):
    """GRU4Rec's ``_run`` contract (``[B, T]`` ids, state ``[1, B, H]`` or None -> ``([B, T, E], [1, B, H])``) with a
    plain recurrence ``h_t = h_{t-1} / 2 + tanh(W x_t)`` as a Python loop over ``T``: exact, but traced to one
    length."""
    x = self.emb_dropout(self.item_embedding(item_ids))
    H = self.config.hidden_size
    w = self.gru_layers.weight_ih_l0[:H]
    h = x.new_zeros(x.shape[0], H) if h0 is None else h0[0]
    outs = []
    for t in range(x.shape[1]):
        h = 0.5 * h + torch.tanh(x[:, t] @ w.T)
        outs.append(h)
    return self.dense(torch.stack(outs, 1)), h.unsqueeze(0)


@pytest.fixture
def looped(monkeypatch):
    """A tiny GRU4Rec whose recurrence is a Python loop (every GRU4Rec the test loads too)."""
    monkeypatch.setattr(GRU4RecModel, "_run", _looped_run)
    model = tiny("gru4rec")
    ids = torch.tensor([[3, 5, 7, 2, 9], [4, 1, 8, 0, 0]])
    mask = ids > 0
    ref = model.predict(ids, mask)
    for b, n in enumerate((5, 3)):                  # the loop is exact: step == forward, row by row
        one = model.init_state(1)
        logits, _ = model.step(ids[b:b + 1, :n], one)
        torch.testing.assert_close(logits[0, 1:], ref[b, 1:], atol=1e-5, rtol=0)      # 0: the padding
    return model


def _files(folder: pathlib.Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ the verifier
@pytest.mark.parametrize("kind,where", [("step", "on T=1 new items"), ("window", "at width ")])
def test_verify_export_reports_a_graph_ort_cannot_run_as_failed_cases(tmp_path, looped, kind, where):
    """verify_export returns a FAILED report (it raised ONNX Runtime's InvalidArgument): the case's error names the
    call, ONNX Runtime's message (one line, without its ``[ONNXRuntimeError] : 2 : ...`` prefix) and the cause; its
    errors are infinite; the report's summary and table say so; every case still runs."""
    res = E.export_model(looped, tmp_path / "g", kind=kind, topk=3, verify=False)
    kw = dict(prime_len=8, n_steps=3, batch=2, topk_cases=24, topk_prime=8) if kind == "step" else dict(topk_cases=24)
    rep = V.verify_export(looped, res.graph_path, res.spec, **kw)
    assert not rep.ok
    names = ["random/prime+steps", "random/topk"] if kind == "step" else ["random/windows"]
    assert [c.name for c in rep.cases] == names
    for c in rep.cases:
        assert not c.ok and c.max_abs_err == float("inf") and c.topk_cases == 0
        assert c.error.startswith(f"ONNX Runtime cannot run the graph {where}"), c.error
        assert "InvalidArgument: " in c.error and "out of data bounds" in c.error and c.error.endswith(CAUSE)
        assert "\n" not in c.error and "[ONNXRuntimeError]" not in c.error
        assert c.reason == c.error
    msg = rep.worst_message()
    assert msg.startswith(f"case {names[0]!r}: ONNX Runtime cannot run the graph {where}") and "\n" not in msg
    assert "FAILED" in rep.table() and "<-- FAIL: ONNX Runtime cannot run" in rep.table()
    d = rep.to_dict()
    assert d["passed"] is False and d["cases"][0]["error"] == rep.cases[0].error


class _Raises:
    """A runner that raises ``error`` on every call."""

    def __init__(self, error):
        self.error = error

    def run(self, names, feeds):
        raise self.error


def test_only_onnx_runtimes_own_errors_become_failed_cases(tmp_path):
    """A runner's other errors (export.trt's engine, the emulated plugins, a bug) go on up as they were, and so does
    ONNX Runtime running out of memory (run_cli reports it as such); ONNX Runtime's ``Fail`` fails the case."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    model = tiny("gru4rec")
    res = E.export_model(model, tmp_path / "g", topk=3, verify=False)
    kw = dict(prime_len=4, n_steps=2, batch=2, topk_cases=8, topk_prime=4)
    with pytest.raises(RuntimeError, match="not ONNX Runtime's"):
        V.verify_export(model, res.graph_path, res.spec, runner=_Raises(RuntimeError("not ONNX Runtime's")), **kw)
    oom = ort_errors.RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory")
    with pytest.raises(ort_errors.RuntimeException, match="Failed to allocate memory"):
        V.verify_export(model, res.graph_path, res.spec, runner=_Raises(oom), **kw)
    rep = V.verify_export(model, res.graph_path, res.spec,
                          runner=_Raises(ort_errors.Fail("[ONNXRuntimeError] : 1 : FAIL : bad\n  shape")), **kw)
    assert not rep.ok and [c.error for c in rep.cases] == [
        f"ONNX Runtime cannot run the graph on T=4 new items (B=2, priming): Fail: bad shape; likely cause: {CAUSE}",
        f"ONNX Runtime cannot run the graph on T=4 new items (B=8, priming): Fail: bad shape; likely cause: {CAUSE}"]


# ------------------------------------------------------------------------------------------------ the commands
@pytest.mark.parametrize("kind", ["step", "window"])
def test_export_onnx_exits_3_in_one_line_and_keeps_the_earlier_export(tmp_path, monkeypatch, capsys, kind):
    """export.onnx on the looped model: exit 3 (it was a traceback, exit 1), one ERROR line on stderr naming the
    call, ONNX Runtime's message and the likely cause; the earlier export in --out is left as it was."""
    out = tmp_path / "out"
    E.export_model(tiny("gru4rec"), out, kind=kind, topk=3, verify=False)
    before = _files(out)
    monkeypatch.setattr(GRU4RecModel, "_run", _looped_run)
    tiny("gru4rec").save_pretrained(tmp_path / "m")
    capsys.readouterr()
    code = E.main(["--model", str(tmp_path / "m"), "--out", str(out), "--kind", kind, "--topk", "3"]
                  + (FAST_ARGS if kind == "step" else FAST_ARGS[:2]))
    printed = capsys.readouterr()
    lines = _error_lines(printed.err)
    assert code == E.EXIT_VERIFY_FAILED == 3, printed.err
    assert len(lines) == 1 and "Traceback" not in printed.err + printed.out, printed.err
    assert lines[0].startswith(f"ERROR: verification FAILED, nothing written to {out}"), lines[0]
    where = "on T=1 new items (B=4, single step 1)" if kind == "step" else "at width "
    assert f"ONNX Runtime cannot run the graph {where}" in lines[0] and lines[0].endswith(CAUSE), lines[0]
    assert "InvalidArgument: " in lines[0] and "out of data bounds" in lines[0], lines[0]
    assert f"verification ({kind}, gru4rec): FAILED" in printed.out
    assert _files(out) == before


def test_export_triton_model_exits_3_and_leaves_the_repository(tmp_path, monkeypatch, capsys):
    """export.triton --model on the looped model: exit 3 (it was ONNX Runtime's traceback, exit 1), one error line
    naming the repository (not the temporary folder the graph was exported into), the failure and its likely cause;
    the repository as it was."""
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from export import triton as T

    repo = tmp_path / "repo"
    tiny("gru4rec").save_pretrained(tmp_path / "good")
    assert T.main(["--model", str(tmp_path / "good"), "--repo", str(repo), "--topk", "3", "--no-verify"]) == 0
    before = _files(repo)
    monkeypatch.setattr(GRU4RecModel, "_run", _looped_run)
    tiny("gru4rec").save_pretrained(tmp_path / "m")
    capsys.readouterr()
    code = T.main(["--model", str(tmp_path / "m"), "--repo", str(repo), "--topk", "3"])
    printed = capsys.readouterr()
    lines = _error_lines(printed.err)
    assert code == 3 and len(lines) == 1 and "Traceback" not in printed.err + printed.out, printed.err
    assert lines[0].startswith(f"error: verification FAILED, nothing written to {repo}: case "), lines[0]
    assert "ONNX Runtime cannot run the graph on T=" in lines[0] and lines[0].endswith(CAUSE), lines[0]
    assert _files(repo) == before


def test_export_trt_exits_3_and_keeps_the_earlier_graph(tmp_path, monkeypatch):
    """export.trt on the looped model: the ONNX verification fails, exit 3 (it was "ONNX export failed", exit 1),
    the failure named in one line; the earlier graph in --out is kept (its report is rewritten, as for every failed
    verification)."""
    from export import trt as T

    out = tmp_path / "out"
    E.export_model(tiny("gru4rec"), out, topk=3, verify=False)
    graph = {n: (out / n).read_bytes() for n in (E.GRAPH_FILE, E.SPEC_FILE)}
    monkeypatch.setattr(GRU4RecModel, "_run", _looped_run)
    said, errors = [], []
    code, rep = T.run("looped", str(out), model=tiny("gru4rec"), quick=True, topk=3, max_steps=8, max_batch=8,
                      opt_batch=8, say=said.append, say_error=errors.append)
    assert code == T.EXIT_VERIFY_FAILED == 3, errors
    assert rep["status"] == "ONNX graph verification failed"
    failed = [line for line in errors if "ONNX verification FAILED" in line]
    assert len(failed) == 1 and "ONNX Runtime cannot run the graph on T=" in failed[0], errors
    assert failed[0].endswith(CAUSE) and "\n" not in failed[0]
    assert not any("Traceback" in line for line in said + errors)
    assert {n: (out / n).read_bytes() for n in graph} == graph


# ------------------------------------------------------------------------------------------- TracerWarnings
def test_tracer_warnings_are_shown_when_the_graph_is_not_verified_or_fails(tmp_path, monkeypatch, capsys):
    """torch's TracerWarnings were silenced; they are shown in one line (where, how many) for a --no-verify export
    (nothing checks the graph at other lengths) and for one whose verification fails, where they may tell why."""
    model = tiny("gru4rec")             # nn.GRU's own input checks warn in the trace
    said = []
    E.export_model(model, tmp_path / "a", topk=3, verify=False, progress=said.append)
    notes = [line for line in said if "torch's tracer warned" in line]
    assert len(notes) == 1 and "torch/nn/modules/rnn.py:" in notes[0] and "(length 3)" in notes[0], said
    def checked_looped_run(self, item_ids, h0):
        if bool((item_ids < 0).any()):          # a data-dependent branch: the tracer warns
            raise ValueError("negative item ids")
        return _looped_run(self, item_ids, h0)

    monkeypatch.setattr(GRU4RecModel, "_run", checked_looped_run)
    said.clear()
    with pytest.raises(E.VerificationError):
        E.export_model(tiny("gru4rec"), tmp_path / "b", kind="window", topk=3, progress=said.append,
                       verify_kwargs=dict(topk_cases=24))
    notes = [line for line in said if "torch's tracer warned" in line]
    assert len(notes) == 1 and "(length 5)" in notes[0], said
    assert "tests/test_verify_runtime_failure.py:" in notes[0] and "(a Python boolean)" in notes[0], notes


# ---------------------------------------------------------------------------------------- no step exporter
@pytest.fixture
def no_step_exporter(monkeypatch, tmp_path):
    """GRU4Rec as a contributor's new model with an exact step that export.onnx has no step exporter for (its type
    not in STEP_MODEL_TYPES); returns its saved folder."""
    monkeypatch.setattr(E, "STEP_MODEL_TYPES", tuple(t for t in E.STEP_MODEL_TYPES if t != "gru4rec"))
    tiny("gru4rec").save_pretrained(tmp_path / "m")
    return str(tmp_path / "m")


CONTRIBUTOR = "add 'gru4rec' to STEP_MODEL_TYPES in export/onnx.py"


def test_export_onnx_no_step_exporter_message(no_step_exporter, tmp_path, capsys):
    code = E.main(["--model", no_step_exporter, "--out", str(tmp_path / "o"), "--topk", "3"])
    err = capsys.readouterr().err
    assert code == 1 and len(_error_lines(err)) == 1, err
    assert "no step exporter for model type 'gru4rec'" in err and "export its window graph with --kind window" in err
    assert CONTRIBUTOR in err and "standard ops" in err and "zoo/models/README.md" in err, err


def test_export_triton_no_step_exporter_message_names_what_triton_can_do(no_step_exporter, tmp_path, capsys):
    """export.triton has no --kind: it said "use --kind window"; it now says to export the window graph with
    export.onnx and pass it with --onnx."""
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from export import triton as T

    code = T.main(["--model", no_step_exporter, "--repo", str(tmp_path / "r"), "--topk", "3"])
    err = capsys.readouterr().err
    assert code == 1 and len(_error_lines(err)) == 1, err
    assert "use --kind window" not in err, err
    assert f"`python -m export.onnx --model {no_step_exporter} --kind window --out DIR`" in err, err
    assert "`python -m export.triton --onnx DIR" in err and CONTRIBUTOR in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("model_type", ["gru4rec", "sasrec"])
def test_export_trt_no_step_graph_message_names_what_trt_can_do(no_step_exporter, tmp_path, model_type):
    """export.trt has no --kind: it said "use --kind window" (a model without a step exporter) or "export it with
    --kind window" (a model without an exact step). It now says that it builds engines of step graphs only and how
    to export the window graph (exit 1, the report saying the same)."""
    from export import trt as T

    said, errors = [], []
    code, rep = T.run(model_type, str(tmp_path / "out"), model=tiny(model_type), quick=True, say=said.append,
                      say_error=errors.append)
    text = "\n".join(errors)
    assert code == 1 and rep["status"] == "no step graph for this model: nothing exported", text
    assert "export.trt builds engines of step graphs only" in text and rep["error"] in text, text
    assert f"`python -m export.onnx --model {model_type} --kind window --out DIR`" in text, text
    assert "use --kind window" not in text and "export it with --kind window" not in text, text
    assert (CONTRIBUTOR in text) == (model_type == "gru4rec"), text
    assert not (tmp_path / "out" / E.GRAPH_FILE).exists()
