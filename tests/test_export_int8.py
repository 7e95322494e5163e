"""``export.onnx --int8``: dynamic int8 graphs, their verification rows (score error relative to the score scale and
top-k overlap) and the places that must refuse them (TensorRT).

The quality evidence on real data (test metrics of the int8 graphs inside the cards' intervals) is
``bench/RESULTS_INT8.md``; here the bundled trained models are quantized and verified, and the criteria are shown to
fail on spoiled graphs."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys

import numpy as np
import onnx
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import zoo  # noqa: F401  (registers the models)
from export import onnx as E
from export import verify as V
from export.runtime import OnnxStepSession, OnnxWindowSession

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(prime_len=30, n_steps=40, topk_cases=400)            # verification sizes of these tests


def card(name: str):
    return E._load_model(os.path.join(ROOT, "hub_cards", name))


@pytest.fixture(scope="module")
def int8_mamba(tmp_path_factory):
    """(model, ExportResult) of the bundled Mamba4Rec (trained weights) exported with precision="int8"."""
    torch.set_num_threads(1)
    model = card("mamba4rec-ml1m")
    out = tmp_path_factory.mktemp("m4r-int8")
    return model, E.export_model(model, out, topk=10, with_scores=True, precision="int8", verify_kwargs=SMALL)


def test_int8_rows_of_the_tolerance_table():
    t = V.tolerances("int8")
    assert t == {"score_atol": None, "score_rtol": V.INT8_SCORE_RTOL, "state_atol": None, "topk_min_agreement": 0.0,
                 "topk_min_overlap": V.INT8_TOPK_MIN_OVERLAP}
    assert V.tolerances("fp32")["topk_min_overlap"] is None and V.tolerances("fp16")["topk_min_overlap"] is None
    assert set(V.TOLERANCES) == set(V.PRECISIONS) == {"fp32", "fp16", "int8"}
    with pytest.raises(ValueError, match="unknown precision 'int4' .known: fp32, fp16, int8"):
        V.tolerances("int4")


def test_rows_overlap_counts_the_reference_top_k_found_order_aside():
    ref = np.array([[-np.inf, 5, 4, 3, 2, 1], [-np.inf, 1, 2, 3, 4, 5]], dtype=np.float32)
    # reference top-3: row 0 -> [1, 2, 3]; row 1 -> [5, 4, 3]
    ids = np.array([[3, 1, 2], [5, 1, 2]])
    np.testing.assert_allclose(V._rows_overlap(ids, ref, 3), [1.0, 1 / 3])
    assert list(V._rows_agree(ids, ref, 3)) == [False, False]       # same set, other order: not "identical"


def test_int8_export_of_a_trained_model_passes_its_row(int8_mamba, tmp_path):
    model, res = int8_mamba
    spec = res.spec
    assert spec["precision"] == "int8" and res.report.ok and res.report.precision == "int8", res.report.table()
    q = spec["quantization"]
    assert q["method"] == "onnxruntime.quantization.quantize_dynamic" and q["per_channel"] is True
    assert q["nodes"]["MatMulInteger"] == q["nodes"]["MatMul+Gemm before"] >= 3
    assert q["fp32_verification"]["passed"] and q["fp32_verification"]["max_abs_err"] <= V.SCORE_ATOL
    for c in res.report.cases:                      # int8 moves the scores; the overlap stays high
        assert c.topk_overlap >= V.INT8_TOPK_MIN_OVERLAP and c.max_rel_err <= V.INT8_SCORE_RTOL, res.report.table()
    assert max(c.max_abs_err for c in res.report.cases) > 10 * V.SCORE_ATOL     # it is not the fp32 graph
    mp = onnx.load(res.graph_path)
    ops = [n.op_type for n in mp.graph.node]
    assert ops.count("MatMulInteger") == q["nodes"]["MatMulInteger"] and "MatMul" not in ops
    assert ops.count("SelectiveScan") == model.config.num_layers              # the scan nodes untouched
    assert [f.name for f in mp.functions] == ["SelectiveScan"]
    fp32 = E.export_model(model, tmp_path / "fp32", topk=10, with_scores=True, verify=False)
    assert os.path.getsize(res.graph_path) < 0.6 * os.path.getsize(fp32.graph_path)
    # an int8 graph's states are its own: an explicit-state store must not mix them with the fp32 graph's
    assert spec[E.STATE_FINGERPRINT] != fp32.spec[E.STATE_FINGERPRINT]
    assert json.loads(pathlib.Path(res.spec_path).read_text())["quantization"]["nodes"] == q["nodes"]


def test_int8_graph_serves_through_the_runtime(int8_mamba):
    """export.runtime takes the int8 graph as is (same I/O); its recommendations overlap PyTorch's."""
    model, res = int8_mamba
    sess = OnnxStepSession(os.path.dirname(res.graph_path))
    rng = np.random.default_rng(3)
    hist = rng.integers(1, model.config.n_items, size=(64, 30))
    out = sess.step(hist, sess.init_state(64))
    with torch.no_grad():
        logits, _ = model.step(torch.from_numpy(hist), model.init_state(64))
    logits[:, 0] = -float("inf")
    ref = torch.topk(logits, 10, dim=1).indices.numpy()
    assert V._rows_overlap(out.topk_ids, np.where(np.isfinite(logits.numpy()), logits.numpy(), -np.inf), 10).mean() \
        >= V.INT8_TOPK_MIN_OVERLAP
    assert out.topk_ids.shape == ref.shape and all(v.dtype == np.float32 for v in out.state.values())


def test_int8_window_graph_keeps_attention_matmuls_fp32(tmp_path):
    """SASRec's window graph: the MatMuls of stored weights become int8, attention's two products per layer (both
    inputs computed) stay fp32."""
    torch.set_num_threads(1)
    model = card("sasrec-ml1m")
    res = E.export_model(model, tmp_path, kind="window", topk=10, precision="int8", verify_kwargs={"topk_cases": 300})
    assert res.report.ok, res.report.table()
    n = res.spec["quantization"]["nodes"]
    assert n["MatMulInteger"] > 0 and n["MatMul left in fp32"] == 2 * model.config.num_layers
    sess = OnnxWindowSession(str(tmp_path))
    out = sess.recommend([[5, 6, 7]])                                        # internal ids
    assert out.topk_ids.shape == (1, 10) and (out.topk_ids > 0).all()


def test_int8_verification_fails_on_a_spoiled_graph(int8_mamba, tmp_path):
    """Negative control: the int8 row rejects a quantized graph whose weight scales are off by 60% (score error and
    overlap), and a runner whose top-k lists hold other items (overlap alone)."""
    model, res = int8_mamba
    mp = onnx.load(res.graph_path)
    scales = [i for i in mp.graph.initializer if i.name.endswith("_scale") and "MatMul" in i.name]
    assert scales
    for init in scales:
        arr = onnx.numpy_helper.to_array(init) * np.float32(1.6)
        init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
    bad = tmp_path / "model.onnx"
    onnx.save(mp, str(bad))
    rep = V.verify_export(model, str(bad), res.spec, **SMALL)
    assert not rep.ok and "score error" in rep.worst_message(), rep.table()

    sess = V.scores_session(res.graph_path)

    class Shifted:                                  # scores untouched, top-k lists moved to other items
        def run(self, names, feeds):
            out = sess.run(names, feeds)
            i = names.index("topk_ids")
            out[i] = np.where(out[i] + 37 < model.config.n_items, out[i] + 37, out[i] - 37)
            return out

    rep = V.verify_export(model, res.graph_path, res.spec, runner=Shifted(), **SMALL)
    assert not rep.ok and all(c.reason.startswith("top-k overlap") for c in rep.cases), rep.table()


def test_int8_export_stops_when_the_fp32_graph_fails(tmp_path, monkeypatch):
    """The fp32 graph is verified before it is quantized: a failure there names it, and earlier files stay."""
    model = card("gru4rec-ml1m")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"earlier export")
    monkeypatch.setattr(V, "SCORE_ATOL", 0.0)       # no fp32 graph can pass now
    with pytest.raises(E.VerificationError, match="fp32 graph the int8 graph is quantized from"):
        E.export_model(model, out, precision="int8", verify_kwargs=SMALL)
    assert (out / "model.onnx").read_bytes() == b"earlier export"
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]       # no staging folder left


def test_trace_graph_refuses_int8():
    with pytest.raises(E.ExportError, match="applied to the written, verified fp32 graph"):
        E.trace_graph(card("gru4rec-ml1m"), "step", 10, precision="int8")


def test_int8_cli(tmp_path, capsys):
    src = os.path.join(ROOT, "hub_cards", "gru4rec-ml1m")
    with pytest.raises(SystemExit) as e:
        E.main(["--model", src, "--out", str(tmp_path / "a"), "--int8", "--fp16"])
    assert e.value.code == 2 and "argument --fp16: not allowed with argument --int8" in capsys.readouterr().err
    cardcopy = tmp_path / "card"
    shutil.copytree(src, cardcopy)
    before = (cardcopy / "onnx" / "model.onnx").read_bytes()
    for flag in ("--int8", "--fp16"):                # the card's section describes its fp32 graph: not replaced
        with pytest.raises(SystemExit) as e:
            E.main(["--model", str(cardcopy), "--card-dir", str(cardcopy), flag])
        assert e.value.code == 2 and f"--out CARD_DIR/onnx-{flag[2:]}" in capsys.readouterr().err
    assert (cardcopy / "onnx" / "model.onnx").read_bytes() == before
    out = tmp_path / "out"
    assert E.main(["--model", src, "--out", str(out), "--int8", "--verify-prime", "20", "--verify-steps", "20",
                   "--verify-cases", "300"]) == 0
    text = capsys.readouterr().out
    assert "verification (step, gru4rec): PASSED [fp32:" in text
    assert "verification (step, gru4rec): PASSED [int8: tolerance 0.25 of the score scale, top-k overlap >= 0.85" in text
    assert "step graph, int8, top-10" in text
    assert json.loads((out / "state_spec.json").read_text())["precision"] == "int8"


def test_triton_repository_of_an_int8_graph(int8_mamba, tmp_path):
    """Triton: the onnxruntime backend (CPU) serves an int8 graph, implicit state included (the rewritten implicit
    graph runs and gives the same top-k as the exported one); the tensorrt backend refuses it, naming why."""
    from export import triton as T

    model, res = int8_mamba
    export_dir = os.path.dirname(res.graph_path)
    with pytest.raises(T.TritonConfigError, match="dynamic int8 .* TensorRT does not take"):
        T.write_repository(export_dir, tmp_path / "repo", backend="tensorrt")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())      # nothing written
    mdir = T.write_repository(export_dir, tmp_path / "repo")                             # onnxruntime, implicit
    graphs = [p for p in mdir.rglob("*.onnx")]
    assert len(graphs) == 1
    ops = [n.op_type for n in onnx.load(str(graphs[0])).graph.node]
    assert "MatMulInteger" in ops
    sess = V.ort_session(str(graphs[0]))
    plain = V.ort_session(res.graph_path)
    rng = np.random.default_rng(5)
    ids = rng.integers(1, model.config.n_items, size=(3, 4))
    feeds = {"item_ids": ids}
    for st in res.spec["state"]:
        feeds[st["name"]] = np.zeros([3] + st["shape"][1:], dtype=np.float32)
    names = [o.name for o in sess.get_inputs()]
    want = plain.run(["topk_ids"], feeds)[0]
    controls = {"START": np.ones((3, 1), np.int32), "READY": np.ones((3, 1), np.int32),
                "CORRID": np.arange(3, dtype=np.int64)[:, None]}
    assert set(names) == set(feeds) | set(controls)
    got = sess.run(["topk_ids"], {**feeds, **controls})[0]
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ a MatMul/Gemm weight that another node reads too
def _graphs(g):
    """``g`` and its nodes' subgraphs, nested ones included."""
    out = [g]
    for n in g.node:
        for a in n.attribute:
            out += [s for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs) for s in _graphs(sub)]
    return out


def shared_matmul_weights(mp) -> list[str]:
    """The initializers that a MatMul/Gemm reads as its weight (input 1) and another reader (any node input of any
    (sub)graph, a graph output) reads too: what ONNX Runtime <= 1.31's quantize_dynamic spoils (it transposes a
    ``transB`` Gemm's weight in place, under the same name)."""
    graphs = _graphs(mp.graph)
    inits = {t.name for s in graphs for t in s.initializer}
    reads = [x for s in graphs for n in s.node for x in n.input if x in inits] + \
        [o.name for s in graphs for o in s.output if o.name in inits]
    return sorted({n.input[1] for s in graphs for n in s.node
                   if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and reads.count(n.input[1]) > 1})


def _in_place_transposing_quantizer(monkeypatch, scratch):
    """Replace ``quantize_dynamic`` with ONNX Runtime <= 1.31's behaviour on a ``Gemm(x, B, transB=1)``: after shape
    inference, ``B`` is replaced by ``B^T`` under the same name (whoever else reads ``B``), then quantized."""
    import onnxruntime.quantization as Q
    from onnx import numpy_helper

    real = Q.quantize_dynamic

    def old(model_input, model_output, **kw):
        mp = onnx.shape_inference.infer_shapes(onnx.load(str(model_input)))
        inits = {t.name: t for t in mp.graph.initializer}
        for n in mp.graph.node:
            trans_b = [a for a in n.attribute if a.name == "transB" and a.i == 1]
            if n.op_type == "Gemm" and n.input[1] in inits and trans_b:
                t = inits[n.input[1]]
                t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(t).T), t.name))
                trans_b[0].i = 0
        path = str(scratch / "transposed.onnx")
        onnx.save(mp, path)
        return real(path, model_output, **kw)

    monkeypatch.setattr(Q, "quantize_dynamic", old)


def test_untie_gives_each_shared_matmul_weight_its_own_copy():
    """E: a tied table (Gather + Gemm transB); W: the weight of two MatMuls; V: a MatMul weight an If branch reads
    too; U: one reader (left alone). Each copy is a new name (``E/untied`` is taken), the graph computes the same."""
    from onnx import TensorProto
    from onnx import helper as oh

    rng = np.random.default_rng(0)
    arrays = {"E": rng.normal(size=(5, 3)), "W": rng.normal(size=(3, 4)), "V": rng.normal(size=(4, 4)),
              "U": rng.normal(size=(4, 2))}
    inits = [onnx.numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()]
    branch = [oh.make_graph([oh.make_node("Identity", ["V"], [f"v{b}"])], f"b{b}", [],
                            [oh.make_tensor_value_info(f"v{b}", TensorProto.FLOAT, [4, 4])]) for b in (0, 1)]
    nodes = [oh.make_node("Gather", ["E", "ids"], ["x"]), oh.make_node("Gemm", ["x", "E"], ["s"], transB=1),
             oh.make_node("MatMul", ["x", "W"], ["y"]), oh.make_node("MatMul", ["x", "W"], ["y2"]),
             oh.make_node("MatMul", ["y", "V"], ["z"]), oh.make_node("MatMul", ["z", "U"], ["u"]),
             oh.make_node("If", ["cond"], ["vv"], then_branch=branch[0], else_branch=branch[1]),
             oh.make_node("Identity", ["s"], ["E/untied"])]
    outs = {"s": [2, 5], "y2": [2, 4], "u": [2, 2], "vv": [4, 4], "E/untied": [2, 5]}
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("ids", TensorProto.INT64, [2]),
                                       oh.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [oh.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outs.items()], inits)
    mp = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(mp, full_check=True)
    assert shared_matmul_weights(mp) == ["E", "V", "W"]
    feeds = {"ids": np.array([4, 1]), "cond": np.array(True)}
    want = V.ort_session(mp.SerializeToString()).run(None, feeds)

    assert E._untie_matmul_weights(mp) == [("E", "E/untied2"), ("W", "W/untied"), ("V", "V/untied")]
    onnx.checker.check_model(mp, full_check=True)
    assert shared_matmul_weights(mp) == []
    assert [n.input[1] for n in mp.graph.node if n.op_type in ("Gemm", "MatMul")] == \
        ["E/untied2", "W/untied", "W", "V/untied", "U"]
    assert [n.input[0] for n in mp.graph.node if n.op_type == "Gather"] == ["E"]
    values = {t.name: onnx.numpy_helper.to_array(t) for t in mp.graph.initializer}
    for a, b in [("E", "E/untied2"), ("W", "W/untied"), ("V", "V/untied")]:
        np.testing.assert_array_equal(values[a], values[b])
    for got, ref in zip(V.ort_session(mp.SerializeToString()).run(None, feeds), want):
        np.testing.assert_array_equal(got, ref)
    assert E._untie_matmul_weights(mp) == []                 # nothing left to untie


@pytest.mark.parametrize("external", [False, True], ids=["one-file", "external-data"])
def test_the_quantizer_is_handed_no_matmul_weight_another_node_reads(tmp_path, monkeypatch, external):
    """The tied item table (read by the input Gather and the output Gemm) reaches quantize_dynamic as two tensors;
    the staging graph is written beside dst (src's folder -- a card's, a download's -- is only read) and removed,
    and the int8 graph holds no fp32 table."""
    import onnxruntime.quantization as Q

    model = card("gru4rec-ml1m")
    table = model.get_input_embeddings().weight.detach().numpy()
    src = tmp_path / "fp32"
    with monkeypatch.context() as m:
        if external:
            m.setattr(E, "EXTERNAL_DATA_BYTES", 1000)
        E.export_model(model, src, verify=False)
    fp32 = onnx.load(str(src / "model.onnx"), load_external_data=False)
    (tied,) = shared_matmul_weights(fp32)                   # the case at hand: the table shared
    files = sorted(p.name for p in src.iterdir())
    real, seen = Q.quantize_dynamic, []

    def capture(model_input, model_output, **kw):
        header = onnx.load(str(model_input), load_external_data=False)
        seen.append((header, onnx.load(str(model_input)), os.path.dirname(os.path.abspath(model_input))))
        return real(model_input, model_output, **kw)

    monkeypatch.setattr(Q, "quantize_dynamic", capture)
    (tmp_path / "int8").mkdir()
    info = E.quantize_int8(src / "model.onnx", tmp_path / "int8" / "model.onnx", external=external)
    (header, whole, folder), = seen
    assert shared_matmul_weights(header) == []
    gemm = next(n for n in header.graph.node if n.op_type == "Gemm")
    gather = next(n for n in header.graph.node if n.op_type == "Gather" and n.input[0] == tied)
    assert gemm.input[1] != tied
    values = {t.name: onnx.numpy_helper.to_array(t) for t in whole.graph.initializer}
    np.testing.assert_array_equal(values[gemm.input[1]], table)
    np.testing.assert_array_equal(values[gather.input[0]], table)
    assert folder == str(tmp_path / "int8")                       # staged beside dst: src's folder is only read
    assert sorted(p.name for p in src.iterdir()) == files        # nothing written beside src
    assert sorted(p.name for p in (tmp_path / "int8").iterdir()) == sorted(
        ["model.onnx"] + (["model.onnx.data"] if external else []))  # the staging graph and tensors removed
    q = onnx.load(str(tmp_path / "int8" / "model.onnx"))
    onnx.checker.check_model(str(tmp_path / "int8" / "model.onnx"), full_check=True)
    assert info["nodes"]["MatMulInteger"] == info["nodes"]["MatMul+Gemm before"] == 2
    assert not [t.name for t in q.graph.initializer
                if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= table.size]     # no fp32 table


@pytest.mark.parametrize("external", [False, True], ids=["one-file", "external-data"])
@pytest.mark.parametrize("quantizer", ["installed", "transposing-in-place"])
def test_int8_export_of_a_tied_item_table(tmp_path, monkeypatch, quantizer, external):
    """End to end, with the installed ONNX Runtime and with one that transposes a Gemm's weight in place (as 1.20-1.31
    did, which spoiled the table the input Gather shares: "DequantizeLinear ... (3417) vs (64)"): the int8 graph
    passes the checker and its verification, and holds the item table int8 twice (lookup [V, D], output layer
    [D, V]), not in fp32."""
    model = card("gru4rec-ml1m")
    n, d = model.get_input_embeddings().weight.shape
    if quantizer != "installed":
        _in_place_transposing_quantizer(monkeypatch, tmp_path)
    if external:
        monkeypatch.setattr(E, "EXTERNAL_DATA_BYTES", 1000)
    out = tmp_path / "out"
    res = E.export_model(model, out, precision="int8", verify_kwargs=SMALL)
    assert res.report.ok and all(c.topk_overlap >= V.INT8_TOPK_MIN_OVERLAP for c in res.report.cases), \
        res.report.table()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.onnx", "state_spec.json", "item_vocab.json"] + (["model.onnx.data"] if external else []))
    onnx.checker.check_model(res.graph_path, full_check=True)
    mp = onnx.load(res.graph_path)
    types = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8"}
    tables = sorted((list(t.dims), types[t.data_type]) for t in mp.graph.initializer if n in t.dims)
    # the output layer's [D, V] weight int8 with its per-channel scales and zero points, the lookup's [V, D] 8-bit
    assert tables[:3] == [([d, n], "int8"), ([n], "fp32"), ([n], "int8")] and len(tables) == 4, tables
    assert tables[3][0] == [n, d] and tables[3][1] in ("int8", "uint8"), tables


def test_a_quantized_graph_that_fails_the_checker_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """Without the copies, the in-place transposition spoils the tied table; the checker refuses the int8 graph, and
    the CLI says so on one line (exit 1), naming the ONNX Runtime, with nothing written."""
    import onnxruntime

    _in_place_transposing_quantizer(monkeypatch, tmp_path)
    monkeypatch.setattr(E, "_untie_matmul_weights", lambda mp: [], raising=False)
    out = tmp_path / "out"
    assert E.main(["--model", os.path.join(ROOT, "hub_cards", "gru4rec-ml1m"), "--out", str(out), "--int8",
                   "--no-verify"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"onnxruntime {onnxruntime.__version__}'s quantize_dynamic wrote fails onnx's " \
        "checker, nothing written" in err[0], err
    assert "DequantizeLinear" in err[0] and "(3417) vs (64)" in err[0]
    assert not out.exists() or not any(out.iterdir())
