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


def test_a_graph_beyond_protobufs_limit_is_refused_before_tracing(tmp_path, monkeypatch):
    """The limit is lowered to this tiny model's size: the refusal names the sizes and the reason, comes before the
    (minutes-long, at that size) trace, and writes nothing."""
    model = _model("mamba4rec")
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    table = model.get_input_embeddings().weight
    assert E.check_graph_size(model) == weights + table.numel() * 4          # the trace: with the folded copy
    monkeypatch.setattr(E, "ONNX_PROTOBUF_LIMIT", weights - 1)
    traced = []
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: traced.append(1))
    with pytest.raises(E.ExportError, match=r"Mamba4RecModel with a \d+ x 16 item table has .* GiB of weights: an "
                                            r"ONNX file holds at most 2 GiB \(protobuf's limit\)"):
        E.export_model(model, tmp_path / "out", verify=False)
    assert not traced and not (tmp_path / "out" / "model.onnx").exists()


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
