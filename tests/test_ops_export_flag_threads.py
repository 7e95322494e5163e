"""The zoo's ops (zoo/ops: conv, ssd, selective_scan) choose their reference path while the calling thread exports,
not while any thread does: ``torch.onnx.is_in_onnx_export()`` is process-wide, so a model served in one thread while
export/onnx.py traces in another went to the slow reference path. export/onnx.py marks its tracing thread
(``zoo.ops.conv.exporting_in_this_thread``); the process-wide flag is read only while no marked export runs (a
``torch.onnx.export`` the user calls directly on a zoo model), and then still sends that export to the references."""
import threading

import pytest
import torch

pytest.importorskip("onnx")

import export.onnx as E  # noqa: E402
import zoo.ops.conv as conv  # noqa: E402
import zoo.ops.selective_scan as S  # noqa: E402
import zoo.ops.selective_scan_cpu as scpu  # noqa: E402
from tests.tiny_models import tiny  # noqa: E402


def _scan_inputs(b=2, e=4, n=3, L=5):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, e, L, generator=g), torch.rand(b, e, L, generator=g), -torch.rand(e, n, generator=g),
            torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g))


def _decisions() -> dict:
    """What the ops decide in the calling thread (``{"missing": ...}`` where the decision functions do not exist)."""
    try:
        return {"exporting": conv.exporting(), "onnx_exporting": conv.onnx_exporting()}
    except AttributeError as e:
        return {"missing": str(e)}


@pytest.fixture
def cpu_kernel_calls(monkeypatch):
    """The fused CPU selective-scan kernel as "available", replaced by a recorder (the reference's result): the
    kernel path's choice is visible on any machine, built kernel or not."""
    calls = []

    def kernel(*args, **kwargs):
        calls.append(threading.get_ident())
        return S.selective_scan_ref(*args, **kwargs)

    monkeypatch.setattr(scpu, "is_available", lambda: True)
    monkeypatch.setattr(scpu, "selective_scan_cpu", kernel)
    monkeypatch.delenv("ZOO_CPU_KERNEL", raising=False)
    return calls


class _HeldExport:
    """``export_model`` of a tiny LRURec in a thread, held inside its ``torch.onnx.export`` (at the stand-in
    ``_lru_lam_export``'s first call) until :meth:`release`; what the ops decide there is recorded."""

    def __init__(self, monkeypatch, out):
        self.inside, self.go, self.errors, self.seen = threading.Event(), threading.Event(), [], {}
        stand_in = E._lru_lam_export

        def held(*args, **kwargs):
            if threading.current_thread() is self.thread and not self.inside.is_set():
                self.seen = _decisions()
                self.inside.set()
                self.go.wait(60)
            return stand_in(*args, **kwargs)

        monkeypatch.setattr(E, "_lru_lam_export", held)

        def run():
            try:
                E.export_model(tiny("lrurec"), out, verify=False)
            except BaseException as e:      # noqa: BLE001 -- reported by the test
                self.errors.append(e)
            finally:
                self.inside.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.inside.wait(120), "the export never reached its trace"

    def release(self):
        self.go.set()
        self.thread.join(120)
        assert not self.thread.is_alive() and not self.errors, self.errors


def test_another_thread_takes_the_kernel_path_while_export_onnx_traces(monkeypatch, tmp_path, cpu_kernel_calls):
    u, delta, A, B, C = _scan_inputs()
    held = _HeldExport(monkeypatch, tmp_path / "graph")
    try:
        assert torch.onnx.is_in_onnx_export(), "the export is not inside torch.onnx.export: the test proves nothing"
        out = S.selective_scan_fn(u, delta, A, B, C)                  # this (main) thread serves meanwhile
        here = _decisions()
    finally:
        held.release()
    assert cpu_kernel_calls == [threading.get_ident()], "the serving thread was sent to the reference path"
    torch.testing.assert_close(out, S.selective_scan_ref(u, delta, A, B, C), rtol=0, atol=0)
    assert here == {"exporting": False, "onnx_exporting": False}
    assert held.seen == {"exporting": True, "onnx_exporting": True}   # the tracing thread: the references
    assert (tmp_path / "graph" / "model.onnx").exists()
    assert not conv.onnx_exporting() and conv._marked_exports == 0     # the mark is undone


class _ScanModule(torch.nn.Module):
    def __init__(self, decisions):
        super().__init__()
        self.decisions = decisions

    def forward(self, u, delta, A, B, C):
        self.decisions.append((conv.exporting(), conv.onnx_exporting()))
        return S.selective_scan_fn(u, delta, A, B, C)


def test_a_direct_torch_onnx_export_still_traces_the_reference_path(tmp_path, cpu_kernel_calls):
    """torch.onnx.export called by the user (not export/onnx.py, so nothing is marked): the ops still see it."""
    import onnx

    decisions = []
    torch.onnx.export(_ScanModule(decisions), _scan_inputs(), str(tmp_path / "m.onnx"), dynamo=False,
                      opset_version=17)
    assert decisions and all(d == (True, True) for d in decisions), decisions
    assert cpu_kernel_calls == []
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    _ScanModule(decisions).forward(*_scan_inputs())                    # outside the export: the kernel path
    assert decisions[-1] == (False, False) and len(cpu_kernel_calls) == 1


def test_the_process_wide_flag_is_read_only_while_no_marked_export_runs(monkeypatch):
    """With torch's flag set (an export the zoo did not start, e.g. torch's dynamo exporter, which is no jit trace):
    every thread counts as exporting; while a thread is marked, only that thread does (torch runs one export at a
    time, so the flag is that thread's); nested marks; the fallback is back once the mark ends."""
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert conv.onnx_exporting() and conv.exporting()
    inside, go, seen = threading.Event(), threading.Event(), []

    def marked():
        with conv.exporting_in_this_thread():
            with conv.exporting_in_this_thread():
                seen.append(conv.exporting())
            seen.append(conv.exporting())
            inside.set()
            go.wait(60)

    t = threading.Thread(target=marked, daemon=True)
    t.start()
    try:
        assert inside.wait(60)
        assert (conv.onnx_exporting(), conv.exporting()) == (False, False)
    finally:
        go.set()
        t.join(60)
    assert seen == [True, True]
    assert conv.onnx_exporting() and conv._marked_exports == 0
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: False)
    assert not conv.exporting()
    with conv.exporting_in_this_thread():
        assert conv.exporting()
    assert not conv.exporting()


def test_a_failed_export_leaves_no_mark(monkeypatch, tmp_path):
    """An export that fails inside its trace unmarks its thread (no later call of this thread is sent to the
    references), and export/onnx.py's tracing thread is cleared."""
    def boom(*args, **kwargs):
        raise RuntimeError("trace failed")

    monkeypatch.setattr(E, "_lru_lam_export", boom)
    with pytest.raises(Exception):
        E.export_model(tiny("lrurec"), tmp_path / "graph", verify=False)
    assert not conv.exporting() and conv._marked_exports == 0 and E._tracing_thread is None
