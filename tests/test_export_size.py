"""The size of an exported graph: the item table is stored once, and a graph too large for one ONNX file is refused
before tracing.

The exporter's constant folding turned a tied output layer (``hidden @ E^T``) into a second, transposed copy of the
item table (BERT4Rec's: a copy of its leading rows), so every graph held its largest tensor twice.
``export.onnx._share_tied_weights`` rewrites the scoring node to read the table itself; ONNX Runtime must give the
same outputs before and after (hand-made graphs here; every model's verification against PyTorch in
``test_export_onnx.py``).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

import zoo  # noqa: F401  (registers the models)
from export import onnx as E

from test_losses import MODEL_NAMES, _model

pytestmark = pytest.mark.usefixtures("one_thread")


def _initializer_bytes(mp: onnx.ModelProto) -> int:
    stored = sum(numpy_helper.to_array(t).nbytes for t in mp.graph.initializer)
    constants = sum(numpy_helper.to_array(a.t).nbytes for n in mp.graph.node for a in n.attribute
                    if a.type == onnx.AttributeProto.TENSOR)
    return stored + constants


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_graph_stores_the_item_table_once(name):
    model = _model(name)
    kind = "step" if model.config.model_type in E.STEP_MODEL_TYPES else "window"
    mp, _ = E.trace_graph(model, kind, 5)
    table = model.get_input_embeddings().weight.detach().numpy()
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    # the weights once, plus the graph's own small constants (position tables, masks, scan constants)
    assert _initializer_bytes(mp) < weights + 40_000, (_initializer_bytes(mp), weights)
    V, D = int(model.config.n_items), table.shape[1]
    for t in mp.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.shape in ((D, V), (V, D)) and a.size > 1 and (a.shape != table.shape or not np.array_equal(a, table)):
            assert not np.array_equal(a.T if a.shape == (D, V) else a, table[:V]), f"{t.name} copies the item table"
    assert any(np.array_equal(numpy_helper.to_array(t), table) for t in mp.graph.initializer)


def _graph(nodes, inputs, inits, outputs):
    g = oh.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 18)], ir_version=9)


def _run(mp, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # the graph as written
    return ort.InferenceSession(mp.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _f32(name, shape):
    return oh.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _rewrite_one_copy(mp, feeds) -> None:
    """Rewrite ``mp`` in place: one copy removed, a valid graph, ONNX Runtime's outputs as before."""
    before = _run(mp, feeds)
    assert E._share_tied_weights(mp) == 1
    onnx.checker.check_model(mp, full_check=True)
    for a, b in zip(before, _run(mp, feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rank", [2, 3])
def test_a_folded_transposed_copy_becomes_a_gemm_on_the_table(rank):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((7, 4)).astype(np.float32)
    shape = [3, 4] if rank == 2 else [2, 3, 4]
    inits = [numpy_helper.from_array(table, "E"), numpy_helper.from_array(table.T.copy(), "E_t")]
    nodes = [oh.make_node("Gather", ["E", "ids"], ["emb"]), oh.make_node("MatMul", ["h", "E_t"], ["scores"])]
    mp = _graph(nodes, [_f32("h", shape), oh.make_tensor_value_info("ids", TensorProto.INT64, [2])], inits,
                [_f32("scores", shape[:-1] + [7]), _f32("emb", [2, 4])])
    _rewrite_one_copy(mp, {"h": rng.standard_normal(shape).astype(np.float32), "ids": np.array([1, 6])})
    assert [t.name for t in mp.graph.initializer] == ["E"]
    ops = [n.op_type for n in mp.graph.node]
    assert ops == (["Gather", "Gemm"] if rank == 2 else ["Gather", "Transpose", "MatMul"])


def test_a_folded_copy_of_the_leading_rows_becomes_a_slice_of_the_table():
    """BERT4Rec: ``Gemm(h, E[:V], b, transB=1)`` with the slice folded into a copy; the table has a [MASK] row more."""
    rng = np.random.default_rng(1)
    table = rng.standard_normal((8, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(table, "E"), numpy_helper.from_array(table[:7].copy(), "E_rows"),
             numpy_helper.from_array(rng.standard_normal(7).astype(np.float32), "b")]
    nodes = [oh.make_node("Gather", ["E", "ids"], ["emb"]),
             oh.make_node("Gemm", ["h", "E_rows", "b"], ["scores"], transB=1)]
    mp = _graph(nodes, [_f32("h", [3, 4]), oh.make_tensor_value_info("ids", TensorProto.INT64, [2])], inits,
                [_f32("scores", [3, 7]), _f32("emb", [2, 4])])
    _rewrite_one_copy(mp, {"h": rng.standard_normal((3, 4)).astype(np.float32), "ids": np.array([0, 7])})
    assert "E_rows" not in {t.name for t in mp.graph.initializer}
    assert [n.op_type for n in mp.graph.node] == ["Gather", "Slice", "Gemm"]


def test_weights_that_copy_nothing_are_left_alone():
    rng = np.random.default_rng(2)
    table = rng.standard_normal((7, 4)).astype(np.float32)
    other = table.T.copy()
    other[0, 0] += 1.0                                       # one entry differs: not a copy
    inits = [numpy_helper.from_array(table, "E"), numpy_helper.from_array(other, "W"),
             numpy_helper.from_array(table.copy(), "E2")]    # the table itself, untransposed, read by a full Gemm
    nodes = [oh.make_node("Gather", ["E", "ids"], ["emb"]), oh.make_node("MatMul", ["h", "W"], ["s1"]),
             oh.make_node("Gemm", ["h", "E2"], ["s2"], transB=1)]
    mp = _graph(nodes, [_f32("h", [3, 4]), oh.make_tensor_value_info("ids", TensorProto.INT64, [2])], inits,
                [_f32("s1", [3, 7]), _f32("s2", [3, 7]), _f32("emb", [2, 4])])
    assert E._share_tied_weights(mp) == 0
    assert [t.name for t in mp.graph.initializer] == ["E", "W", "E2"]
    assert [n.op_type for n in mp.graph.node] == ["Gather", "MatMul", "Gemm"]


QUICK = dict(prime_len=8, n_steps=4, batch=2, topk_cases=20)


def _external_export(model, out, monkeypatch, kind=None, **kw):
    """Export ``model`` as if its weights passed protobuf's 2 GiB (the threshold lowered to this tiny model's size)."""
    with monkeypatch.context() as m:            # only for this export: the test's own patches stay
        m.setattr(E, "EXTERNAL_DATA_BYTES", 1000)
        return E.export_model(model, out, kind=kind, verify_kwargs=kw.pop("verify_kwargs", QUICK), **kw)


def test_a_graph_past_the_limit_is_written_with_external_data_verified_and_run(tmp_path, monkeypatch):
    from export.runtime import OnnxStepSession

    model = _model("mamba4rec")
    weights, traced = E.graph_sizes(model)
    assert traced == weights + model.get_input_embeddings().weight.numel() * 4      # the trace: with the folded copy
    out = tmp_path / "out"
    res = _external_export(model, out, monkeypatch)
    assert res.report.ok and res.spec["external_data"] == E.EXTERNAL_DATA_FILE
    assert sorted(p.name for p in out.iterdir()) == sorted([E.GRAPH_FILE, E.EXTERNAL_DATA_FILE, E.SPEC_FILE])
    graph, data = out / E.GRAPH_FILE, out / E.EXTERNAL_DATA_FILE
    header = onnx.load(str(graph), load_external_data=False)              # every tensor past 1 KB left the graph
    assert all(not t.raw_data for t in header.graph.initializer if np.prod(t.dims) * 4 > 1024)
    assert data.stat().st_size > weights / 2
    assert data.stat().st_mode == graph.stat().st_mode                       # readable as the graph is (a server's)
    onnx.checker.check_model(str(graph), full_check=True)
    assert not any(p.name.startswith(".") for p in out.iterdir())               # no staging or sibling files left
    # the runtime reads it from its folder, and ranks as the model does
    sess = OnnxStepSession(str(out))
    hist = torch.randint(1, int(model.config.n_items), (1, 9), generator=torch.Generator().manual_seed(0))
    got = sess.step(hist.numpy(), sess.init_state(1))
    ref = model.predict(hist).topk(got.topk_ids.shape[1]).indices.numpy()
    np.testing.assert_array_equal(got.topk_ids, ref)
    # a later export that fits one file replaces it, tensor file included
    E.export_model(model, out, verify=False)
    assert not data.exists() and graph.stat().st_size > weights


def test_a_window_graph_with_external_data_is_verified(tmp_path, monkeypatch):
    res = _external_export(_model("sasrec"), tmp_path / "w", monkeypatch, kind="window",
                           verify_kwargs=dict(topk_cases=20))
    assert res.report.ok and (tmp_path / "w" / E.EXTERNAL_DATA_FILE).exists()


@pytest.mark.parametrize("backend, state", [("onnxruntime", "implicit"), ("onnxruntime", "explicit"),
                                            ("python", "explicit")])
def test_a_triton_repository_carries_the_tensor_file(tmp_path, monkeypatch, backend, state):
    import onnxruntime as ort

    from export.triton import write_repository

    _external_export(_model("mamba4rec"), tmp_path / "x", monkeypatch)
    folder = write_repository(tmp_path / "x", tmp_path / "repo", backend=backend, state=state)
    version = folder / "1"
    assert (version / E.EXTERNAL_DATA_FILE).exists() and (version / E.GRAPH_FILE).exists()
    ort.InferenceSession(str(version / E.GRAPH_FILE), providers=["CPUExecutionProvider"])   # resolves its tensors


def test_export_trt_refuses_a_graph_with_external_data(tmp_path, monkeypatch):
    from export import trt as T

    model = _model("mamba4rec")
    model.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(E, "EXTERNAL_DATA_BYTES", 1000)
    lines = []
    code, report = T.run(str(tmp_path / "m"), str(tmp_path / "o"), quick=True, say=lines.append)
    assert code == T.EXIT_ERROR and "external data" in report["error"] and "engine NOT built" in "\n".join(lines)
    assert not (tmp_path / "o" / T.ENGINE_FILE).exists()


def test_a_trace_past_the_limit_goes_through_a_file_and_gives_the_same_graph(tmp_path, monkeypatch):
    """Weights under the limit, the trace (with its folded copy of the table) over it: torch exports to a file (with
    external data at real size) that is read back, and the graph, whose copy is dropped, is the in-memory route's."""
    model = _model("sasrec")
    in_memory, _ = E.trace_graph(model, "window", 5)
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    monkeypatch.setattr(E, "ONNX_PROTOBUF_LIMIT", weights + 1)
    targets, real_export = [], torch.onnx.export

    def recording(module, args, f, **kw):
        targets.append(f)
        return real_export(module, args, f, **kw)
    monkeypatch.setattr(torch.onnx, "export", recording)
    through_file, _ = E.trace_graph(model, "window", 5)
    assert len(targets) == 1 and isinstance(targets[0], str) and targets[0].endswith("traced.onnx")
    assert not os.path.exists(targets[0])                                       # its folder is removed
    assert through_file.SerializeToString() == in_memory.SerializeToString()
    assert _initializer_bytes(through_file) < weights + 40_000
