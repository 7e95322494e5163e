"""Exports of checkpoints saved in another dtype than float32 (``model.half().save_pretrained(...)``, bfloat16,
float64), and ONNX Runtime's warnings on fp16 graphs.

The exporters' ``--model`` (``export.onnx``, and ``export.triton``/``export.trt`` through the same loader) loaded the
weights in their saved dtype and traced them as they were: a checker traceback (Mamba4Rec, TiM4Rec-causal, float64
LRURec), ONNX Runtime's NOT_IMPLEMENTED (bfloat16 LRURec/SASRec, float64 SASRec/BERT4Rec), a segfault (float16
GRU4Rec), a float16 graph verified against fp32 tolerances (exit 3), or a graph with float16 weights labelled
``"precision": "fp32"``. Now ``--model`` loads float32 with a note, and ``export_model`` refuses a model that is not
float32 (one-line ``ValueError``; it never converts the caller's model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
import pytest
import torch

from export import onnx as E
from tiny_models import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}
#: the verification of a tiny model, kept short (window graphs have no priming or steps to verify)
QUICK = ["--verify-cases", "64"]
QUICK_STEPS = ["--verify-prime", "20", "--verify-steps", "20"]


def _saved(tmp_path, model_type: str, dtype: torch.dtype):
    """A tiny ``model_type`` checkpoint saved in ``dtype`` -> (its folder, the float32 model it was made from)."""
    model = tiny(model_type)
    folder = tmp_path / f"{model_type}-{DTYPE_NAMES[dtype]}"
    tiny(model_type).to(dtype).save_pretrained(folder)
    return folder, model


def _cli(*args, timeout=300):
    """``python -m export.onnx ARGS`` in a child process (a segfault of the exporter cannot take pytest down)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "export.onnx", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def _initializer_types(folder) -> set[str]:
    """The element types of the graph's floating initializers (the weights)."""
    ints = (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL)
    return {onnx.TensorProto.DataType.Name(t.data_type) for t in onnx.load(str(folder / "model.onnx")).graph.initializer
            if t.data_type not in ints}


@pytest.mark.parametrize("model_type, dtype", [
    ("mamba4rec", torch.float16),           # checker: SelectiveScan's B has inconsistent type
    ("tim4rec_causal", torch.float64),      # checker: SSDScan
    ("lrurec", torch.bfloat16),             # ORT: no Exp(13) for bfloat16
    ("sasrec", torch.float64),              # ORT: no Erf for double
    ("bert4rec", torch.float16),            # a float16 graph checked against fp32 tolerances: exit 3
    ("gru4rec", torch.float16),             # ORT segfault (exit -11) in verification
])
def test_cli_exports_a_checkpoint_of_another_dtype_as_a_verified_fp32_graph(tmp_path, model_type, dtype):
    folder, model = _saved(tmp_path, model_type, dtype)
    out = tmp_path / "out"
    p = _cli("--model", folder, "--out", out, *QUICK, *(QUICK_STEPS if model.has_exact_step else []))
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
    name = DTYPE_NAMES[dtype]
    assert (f"note: --model {folder} holds {name} weights: loaded in float32 to be exported (the graph's precision "
            "is set by the exporter's options, such as --fp16, not by the checkpoint's dtype)") in p.stderr
    assert "Traceback" not in p.stderr
    assert "PASSED [fp32:" in p.stdout
    assert json.loads((out / "state_spec.json").read_text())["precision"] == "fp32"
    assert _initializer_types(out) == {"FLOAT"}


def test_cli_fp16_of_a_float16_checkpoint(tmp_path):
    """``--fp16`` is how a float16 graph is asked for, whatever the checkpoint was saved in."""
    folder, _ = _saved(tmp_path, "mamba4rec", torch.float16)
    out = tmp_path / "out"
    p = _cli("--model", folder, "--out", out, "--fp16", *QUICK, *QUICK_STEPS)
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
    assert "holds float16 weights: loaded in float32 to be exported" in p.stderr
    assert json.loads((out / "state_spec.json").read_text())["precision"] == "fp16"


def test_the_loader_of_every_exporter_loads_float32_and_notes_the_saved_dtype(tmp_path, capsys):
    """``export.triton --model`` and ``export.trt --model`` load through the same function."""
    from export import trt

    folder, made = _saved(tmp_path, "lrurec", torch.float64)
    for load in (E._load_model, trt._load_model):
        model = load(str(folder))
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        for (k, a), b in zip(made.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), k                     # float32 -> float64 -> float32 is exact
        err = capsys.readouterr().err
        assert err.count("note:") == 1 and f"--model {folder} holds float64 weights" in err
    f32 = tmp_path / "f32"
    made.save_pretrained(f32)
    E._load_model(str(f32))
    assert "note" not in capsys.readouterr().err            # a float32 checkpoint: no note


@pytest.mark.parametrize("model_type", ["mamba4rec", "sasrec", "gru4rec", "lrurec"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_export_model_refuses_a_model_that_is_not_float32(tmp_path, model_type, dtype):
    model = tiny(model_type).to(dtype)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        E.export_model(model, out, verify=False)
    msg = str(e.value)
    assert "\n" not in msg and f"the model's weights are {DTYPE_NAMES[dtype]}, not float32" in msg
    assert "export model.float()" in msg and "precision='fp16' or 'int8'" in msg
    assert not out.exists()                                 # nothing written, no folder made
    assert {p.dtype for p in model.parameters()} == {dtype}  # the caller's model is not converted


def test_export_model_names_every_dtype_of_a_mixed_model(tmp_path):
    model = tiny("mamba4rec")
    model.mamba_layers[0].mamba.D.data = model.mamba_layers[0].mamba.D.data.double()
    with pytest.raises(ValueError, match=r"the model's weights are float64, not float32"):
        E.export_model(model, tmp_path / "out", verify=False)
    model = tiny("mamba4rec").half()
    model.mamba_layers[0].mamba.A_log.data = model.mamba_layers[0].mamba.A_log.data.float()  # mamba_ssm's fp32 A
    with pytest.raises(ValueError, match=r"the model's weights are float16, not float32"):
        E.export_model(model, tmp_path / "out", verify=False)


# ------------------------------------------------------------------------------- ONNX Runtime's fp16 warnings
@pytest.fixture(scope="module")
def lrurec_graphs(tmp_path_factory):
    """A tiny LRURec exported fp32 and fp16 (not verified: only the sessions matter here)."""
    model = tiny("lrurec")
    base = tmp_path_factory.mktemp("lru")
    for precision in ("fp32", "fp16"):
        E.export_model(model, base / precision, precision=precision, verify=False)
    return base


def test_fp16_lrurec_session_prints_no_constant_folding_warnings(lrurec_graphs, capfd):
    """ONNX Runtime warned four times at every session of an fp16 LRURec graph that it cannot constant-fold its fp16
    Exp nodes (harmless: it computes them in fp32); export.verify's sessions were quiet, export.runtime's (and
    zoo.evaluate --onnx's) were not."""
    from export.runtime import OnnxStepSession

    capfd.readouterr()
    sess = OnnxStepSession(lrurec_graphs / "fp16")
    out = sess.step([[1, 2, 3]], sess.init_state(1))
    err = capfd.readouterr().err
    assert "constant fold" not in err, err
    assert out.topk_ids.shape == (1, 10)


def test_only_fp16_sessions_on_default_options_log_errors_only(lrurec_graphs):
    """Other graphs, and a caller's own session options, keep ONNX Runtime's warnings (-1: its default level,
    warnings and above)."""
    import onnxruntime as ort

    from export.runtime import OnnxStepSession

    assert OnnxStepSession(lrurec_graphs / "fp16").session.get_session_options().log_severity_level == 3
    assert OnnxStepSession(lrurec_graphs / "fp32").session.get_session_options().log_severity_level == -1
    mine = ort.SessionOptions()
    sess = OnnxStepSession(lrurec_graphs / "fp16", session_options=mine)
    assert sess.session.get_session_options().log_severity_level == -1 and mine.log_severity_level == -1
