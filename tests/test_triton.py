"""Triton serving (export.triton / export.triton_client / export.triton_server).

* Schema tests (need tritonclient in the main env): every generated config.pbtxt (onnxruntime implicit/explicit,
  tensorrt implicit/explicit, python, window) parses with Triton's model_config_pb2 and matches the graph's I/O.
* The implicit-state graph (control inputs added) is run by ONNX Runtime the way Triton's sequence batcher drives it
  (state_out of request i fed as state_in of request i+1, zero state + START at the start) against PyTorch.
* A real server: nvidia-pytriton's tritonserver (python backend) from the server venv (`bash export/triton_server_env.sh`)
  serves the step graph on loopback; >= 200 interleaved sequences are compared event by event with PyTorch's
  full-forward top-k; errors are checked; the server is stopped at the end. Skipped, with the reason, when the venv
  is missing or the server cannot start.
* TiM4Rec-causal (float64 ``timestamps`` and a float64 ``last_ts`` state that starts at -1, not 0): the generated
  configs (TYPE_FP64, ``initial_state`` data file), the implicit graph driven like the sequence batcher, and a real
  server with implicit and explicit state matched against PyTorch ``model.step``; the Triton-served initial state is
  checked to come from the data file. TiM4Rec (faithful) window graph served with float64 timestamps. TensorRT +
  float64 is refused with a clear error.
* The gaps form (``--time-input gaps``, float32 ``time_gaps``, the client keeps ``last_ts``) on every backend: configs,
  the implicit graph fed the gaps the client computes, a real server (implicit and explicit) against ``model.step``.
* ``TritonRecommender.end()`` sends what each backend runs (one item for onnxruntime/tensorrt); ``--scores`` comes
  back from the python backend; every generated README's code compiles; serving numbers past the config fields are
  refused up front; the TensorRT scripts build with export.trt's settings and profile and register the plugins.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import sys
import threading
import time

import numpy as np
import pytest
import torch

from export.deps import require

# not pytest.importorskip: it skips on an ImportError only (its exc_type needs pytest 8.2; the floor is pytest>=8),
# and a grpcio older than tritonclient's generated gRPC code needs is a RuntimeError from tritonclient.grpc -- an
# error at collection. require() names it (a MissingDependencyError: "... needs grpcio>=Y (tritonclient's gRPC
# code), but grpcio X is installed here ..."), as a missing tritonclient or grpcio.
try:
    require("tritonclient", "tests/test_triton.py")
    require("tritonclient.grpc.model_config_pb2", "tests/test_triton.py (Triton's model_config schema)")
except ImportError as e:                # MissingDependencyError, or protobuf missing / broken under tritonclient
    pytest.skip(f"{type(e).__name__}: {e}", allow_module_level=True)
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export import triton as T  # noqa: E402
from export.onnx import export_model  # noqa: E402
from zoo.vocab import ItemVocab, UnknownItemError  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from time_models import perturb_time_path  # noqa: E402
from triton_fakes import FakeResult, install_client, sent_arrays  # noqa: E402

N_ITEMS = 120
K = 10


def _history_sensitive(model, scale=0.3, seed=0):
    """Random tiny Mamba4Rec models barely read the history at init: their top-10 after a history is the top-10 after
    its last item alone (scores move ~3e-5, under the served tolerance), so a server that lost, mixed up or never
    reset sequence states matched PyTorch all the same. Perturb the mixers' projections and convs, spread Δ
    (``dt_proj.bias``) and the item embeddings, so that the ranking depends on the earlier items
    (:func:`test_mamba_fixture_ranks_by_the_history`). Draws from its own generator; returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(k in n for k in ("in_proj", "x_proj", "conv1d", "out_proj")):
                p.add_(torch.randn(p.shape, generator=g) * scale)
            elif n.endswith("dt_proj.bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        model.item_embedding.weight.normal_(0, 1.0, generator=g)
    return model.eval()


def _mamba():
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

    torch.manual_seed(0)
    m = _history_sensitive(Mamba4RecModel(Mamba4RecConfig(n_items=N_ITEMS, max_seq_length=64, hidden_size=16,
                                                          num_layers=2, d_state=8, d_conv=4, dropout_prob=0.0)))
    m.set_item_vocab(ItemVocab([f"item-{i}" for i in range(1, N_ITEMS)]))
    return m


def _lru():
    from zoo.models.lrurec import LRURecConfig, LRURecModel

    torch.manual_seed(1)
    return LRURecModel(LRURecConfig(n_items=N_ITEMS, max_seq_length=64, hidden_size=16, num_layers=2,
                                    hidden_dropout=0.0, attn_dropout=0.0)).eval()


def _sasrec():
    from zoo.models.sasrec import SASRecConfig, SASRecModel

    torch.manual_seed(2)
    return SASRecModel(SASRecConfig(n_items=N_ITEMS, max_seq_length=16, hidden_size=16, num_layers=1, num_heads=1,
                                    inner_size=32, hidden_dropout=0.0, attn_dropout=0.0)).eval()


@pytest.fixture(scope="module")
def mamba():
    return _mamba()


@pytest.fixture(scope="module")
def mamba_export(mamba, tmp_path_factory):
    d = tmp_path_factory.mktemp("mamba_export")
    export_model(mamba, d, topk=K, verify=False)
    mamba.item_vocab.save(str(d))
    return d


@pytest.fixture(scope="module")
def lru_export(tmp_path_factory):
    m = _lru()
    d = tmp_path_factory.mktemp("lru_export")
    export_model(m, d, topk=K, verify=False)
    return m, d


@pytest.fixture(scope="module")
def lru_seen_export(tmp_path_factory):
    """LRURec step graph exported with --exclude-seen (a ``seen [B, n_items]`` state beside the LRU states) and
    --user-vector (the query vector beside the top-k)."""
    m = _lru()
    d = tmp_path_factory.mktemp("lru_seen_export")
    export_model(m, d, topk=K, exclude_seen=True, user_vector=True, verify=False)
    return m, d


@pytest.fixture(scope="module")
def mamba_cand_export(mamba, tmp_path_factory):
    """The mamba fixture's step graph exported with --candidates (its vocabulary beside it)."""
    d = tmp_path_factory.mktemp("mamba_cand_export")
    export_model(mamba, d, topk=K, candidates=True, verify=False)
    mamba.item_vocab.save(str(d))
    return d


def _reference_topk_among(model, histories, candidates):
    """PyTorch's full-forward top-K of each history among its candidate indices (fewer when it lists fewer)."""
    out = []
    for (_, sc), cands in zip(_reference_topk(model, histories), candidates, strict=True):
        cands = sorted(set(cands), key=lambda i: -float(sc[i]))
        out.append((np.array(cands[:K]), sc))
    return out


def _parse(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(pathlib.Path(path).read_text(), mc.ModelConfig())


def _reference_topk(model, histories):
    """PyTorch full-forward top-K (padding masked) for each internal-index history."""
    out = []
    for s in range(0, len(histories), 256):
        ids, mask = model.pad_batch(histories[s:s + 256])
        sc = model.predict(ids, mask)
        top = torch.topk(sc, K, dim=1)
        out += list(zip(top.indices.numpy(), sc.numpy(), strict=True))
    return out


def _reference_topk_unseen(model, histories):
    """As :func:`_reference_topk`, with every item of the history ranked last (``--exclude-seen``)."""
    out = []
    for s in range(0, len(histories), 256):
        chunk = histories[s:s + 256]
        ids, mask = model.pad_batch(chunk)
        sc = model.predict(ids, mask)
        for r, h in enumerate(chunk):
            sc[r, sorted(set(h))] = -1e30
        top = torch.topk(sc, K, dim=1)
        out += list(zip(top.indices.numpy(), sc.numpy(), strict=True))
    return out


def _same_topk(served, ref_ids, ref_scores, tol=1e-4):
    """Exact id match, or a swap among near-ties (scores within tol)."""
    served = np.asarray(served)
    if np.array_equal(served, ref_ids):
        return True
    return bool(np.allclose(ref_scores[served], ref_scores[ref_ids], atol=tol))


# ================================================================================================ schema tests
VARIANTS = [("onnxruntime", "implicit"), ("onnxruntime", "explicit"), ("tensorrt", "implicit"),
            ("tensorrt", "explicit"), ("python", "implicit")]


@pytest.mark.parametrize("backend,state", VARIANTS)
def test_step_repository_validates(mamba_export, tmp_path, backend, state):
    from tritonclient.grpc import model_config_pb2 as mc

    mdir = T.write_repository(mamba_export, tmp_path / "repo", backend=backend, state=state,
                              vocab_path=str(mamba_export / "item_vocab.json"), idle_timeout_s=42)
    cfg = _parse(mdir / "config.pbtxt")
    assert cfg.backend == backend and cfg.max_batch_size == 64
    assert (mdir / "item_vocab.json").exists() and (mdir / "README.md").read_text().startswith(f"# `{mdir.name}` — ")
    assert f"[`{mdir.name}`]({mdir.name}/README.md)" in (tmp_path / "repo" / "README.md").read_text()
    if state == "explicit" and backend != "python":
        assert cfg.HasField("dynamic_batching") and not cfg.HasField("sequence_batching")
        assert {i.name for i in cfg.input} == {"item_ids", "conv_state", "ssm_state"}
        assert {o.name for o in cfg.output} >= {"topk_ids", "conv_state_out", "ssm_state_out"}
        return
    seq = cfg.sequence_batching
    assert seq.WhichOneof("strategy_choice") == "oldest"
    assert seq.max_sequence_idle_microseconds == 42_000_000
    kinds = {ci.name: mc.ModelSequenceBatching.Control.Kind.Name(ci.control[0].kind) for ci in seq.control_input}
    assert [i.name for i in cfg.input] == ["item_ids"] and list(cfg.input[0].dims) == [-1]
    # control dtypes: CORRID is the implicit graph's int64 input (uint64, Triton's correlation id, for the python
    # model, which reads it itself); START/READY/END are int32 0/1 flags
    corrid = next(ci.control[0] for ci in seq.control_input if ci.name == "CORRID")
    assert mc.DataType.Name(corrid.data_type) == ("TYPE_UINT64" if backend == "python" else "TYPE_INT64")
    assert all(list(ci.control[0].int32_false_true) == [0, 1] and not ci.control[0].fp32_false_true
               for ci in seq.control_input if ci.name != "CORRID")
    if backend == "python":
        assert kinds == {"START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END",
                         "CORRID": "CONTROL_SEQUENCE_CORRID"}
        # the same state block as the onnxruntime model: Triton hands the python model each sequence's initial state
        assert [(s.input_name, s.initial_state[0].zero_data) for s in seq.state] == [("conv_state", True),
                                                                                     ("ssm_state", True)]
        assert not (mdir / "initial_state").exists()
        assert (mdir / "1" / "model.py").exists() and (mdir / "1" / "model.onnx").exists()
        return
    assert kinds == {"START": "CONTROL_SEQUENCE_START", "READY": "CONTROL_SEQUENCE_READY",
                     "CORRID": "CONTROL_SEQUENCE_CORRID"}
    states = {s.input_name: s for s in seq.state}
    assert set(states) == {"conv_state", "ssm_state"}
    assert states["ssm_state"].output_name == "ssm_state_out" and list(states["ssm_state"].dims) == [2, 32, 8]
    assert all(s.initial_state[0].zero_data for s in seq.state)
    if backend == "tensorrt":
        assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.Kind.KIND_GPU
        serve = (tmp_path / "repo" / "serve.sh").read_text()
        assert f'plugin="/models/{cfg.name}/plugins/{T.ps.PLUGIN_LIBRARY}"' in serve
        assert "--backend-config=tensorrt,plugins=$plugin" in serve
        assert f"bash /models/{cfg.name}/build_engine.sh $plugin" in serve
        assert '--dynamicPlugins="$plugin"' in (mdir / "build_engine.sh").read_text()
        assert (mdir / "onnx" / "model_implicit.onnx").exists()
    g = onnx.load(str(mdir / ("onnx/model_implicit.onnx" if backend == "tensorrt" else "1/model.onnx")))
    assert [(i.name, i.type.tensor_type.elem_type) for i in g.graph.input][-3:] == [
        ("START", onnx.TensorProto.INT32), ("READY", onnx.TensorProto.INT32), ("CORRID", onnx.TensorProto.INT64)]


def test_lru_and_window_repositories_validate(lru_export, tmp_path):
    _, d = lru_export
    mdir = T.write_repository(d, tmp_path / "repo", backend="onnxruntime", state="implicit")
    seq = _parse(mdir / "config.pbtxt").sequence_batching
    assert [(s.input_name, s.output_name) for s in seq.state] == [("lru_state_re", "lru_state_re_out"),
                                                                  ("lru_state_im", "lru_state_im_out")]
    sas = _sasrec()
    wd = tmp_path / "win"
    export_model(sas, wd, kind="window", topk=K, verify=False)
    for backend in ("onnxruntime", "tensorrt"):
        cfg = _parse(T.write_repository(wd, tmp_path / f"repo_{backend}", backend=backend, state="implicit")
                     / "config.pbtxt")
        assert cfg.HasField("dynamic_batching") and not cfg.HasField("sequence_batching")
    cfg = _parse(T.write_repository(wd, tmp_path / "repo_py", backend="python") / "config.pbtxt")
    assert cfg.HasField("dynamic_batching") and [i.name for i in cfg.input] == ["item_ids"]


def _mamba_spec_and_config(mamba_export, backend="onnxruntime"):
    """The exported Mamba4Rec's state spec and its generated implicit-state config for ``backend``."""
    spec = json.loads((mamba_export / "state_spec.json").read_text())
    return spec, T.make_config(spec, "m", backend, "implicit")


def test_invalid_configs_are_rejected(mamba_export):
    """Configs Triton's schema or the graph's I/O refuse: each error names the problem (a control input whose dtype
    is not the graph's, e.g. a uint64 CORRID for the implicit graph's int64 input, was passed)."""
    spec, good = _mamba_spec_and_config(mamba_export)
    T.validate_config(good, T.implicit_spec(spec))
    with pytest.raises(T.TritonConfigError, match="schema"):
        T.validate_config(good.replace("input_name", "input_nam"))
    with pytest.raises(T.TritonConfigError, match="sort differently"):
        T.validate_config(good.replace('output_name: "conv_state_out"', 'output_name: "zz_out"'))
    with pytest.raises(T.TritonConfigError, match="not a graph|neither config inputs nor states"):
        T.validate_config(good.replace('input_name: "ssm_state"', 'input_name: "ssm_statex"'), T.implicit_spec(spec))
    with pytest.raises(T.TritonConfigError, match="dims"):
        T.validate_config(good.replace("dims: [ 2, 32, 8 ]", "dims: [ 2, 32, 9 ]"), T.implicit_spec(spec))
    # the control inputs are graph inputs of the implicit graph: a dtype Triton would fill differently is refused
    assert "CONTROL_SEQUENCE_CORRID data_type: TYPE_INT64" in good
    with pytest.raises(T.TritonConfigError, match=r"^control input 'CORRID' has TYPE_UINT64, graph has int64$"):
        T.validate_config(good.replace("CORRID data_type: TYPE_INT64", "CORRID data_type: TYPE_UINT64"),
                          T.implicit_spec(spec))
    with pytest.raises(T.TritonConfigError, match=r"^control input 'START' has TYPE_FP32, graph has int32$"):
        T.validate_config(good.replace("SEQUENCE_START int32_false_true", "SEQUENCE_START fp32_false_true"),
                          T.implicit_spec(spec))
    T.validate_config(good.replace("CORRID data_type: TYPE_INT64", "CORRID data_type: TYPE_UINT64"))  # no graph


def test_cli_exports_a_model_folder(mamba, tmp_path):
    mamba.save_pretrained(tmp_path / "m")
    assert T.main(["--model", str(tmp_path / "m"), "--repo", str(tmp_path / "r"), "--topk", "5", "--no-verify"]) == 0
    mdir = tmp_path / "r" / "mamba4rec_step_onnxruntime_implicit"
    assert _parse(mdir / "config.pbtxt").output[0].dims == [5]
    assert ItemVocab.load(str(mdir / "item_vocab.json")) == mamba.item_vocab


def test_cli_exclude_seen(mamba, mamba_export, lru_seen_export, tmp_path, capsys):
    """--exclude-seen: with --model the graph is exported with the ``seen`` state, which the sequence batcher keeps
    like the other states; with --onnx it is refused for a graph exported without it."""
    mamba.save_pretrained(tmp_path / "m")
    assert T.main(["--model", str(tmp_path / "m"), "--repo", str(tmp_path / "r"), "--no-verify", "--exclude-seen"]) == 0
    seq = _parse(tmp_path / "r" / "mamba4rec_step_onnxruntime_implicit" / "config.pbtxt").sequence_batching
    seen = [s for s in seq.state if s.input_name == "seen"]
    assert len(seen) == 1 and seen[0].output_name == "seen_out" and list(seen[0].dims) == [N_ITEMS]
    assert "History excluded (`--exclude-seen`)" in (tmp_path / "r" / "mamba4rec_step_onnxruntime_implicit" /
                                                     "README.md").read_text()
    assert T.main(["--onnx", str(lru_seen_export[1]), "--repo", str(tmp_path / "r2"), "--exclude-seen"]) == 0
    assert T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "r3"), "--exclude-seen"]) == 1
    assert "exported without it" in capsys.readouterr().err and not (tmp_path / "r3").exists()


def test_cli_user_vector(mamba, mamba_export, lru_seen_export, tmp_path, capsys):
    """--user-vector: with --model the graph gets the ``user_vector`` output, which the config declares (implicit and
    explicit state) and the repository README explains; with --onnx it is refused for a graph exported without it."""
    mamba.save_pretrained(tmp_path / "m")
    for state in ("implicit", "explicit"):
        assert T.main(["--model", str(tmp_path / "m"), "--repo", str(tmp_path / state), "--no-verify", "--user-vector",
                       "--state", state]) == 0
        mdir = tmp_path / state / f"mamba4rec_step_onnxruntime_{state}"
        out = {o.name: o for o in _parse(mdir / "config.pbtxt").output}
        assert list(out["user_vector"].dims) == [mamba.vector_size]
        assert "User vector (`--user-vector`)" in (mdir / "README.md").read_text()
    assert T.main(["--onnx", str(lru_seen_export[1]), "--repo", str(tmp_path / "r2"), "--user-vector"]) == 0
    assert "last column is 1" in (tmp_path / "r2" / "lrurec_step_onnxruntime_implicit" / "README.md").read_text()
    assert T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "r3"), "--user-vector"]) == 1
    assert "--user-vector: the graph" in capsys.readouterr().err and not (tmp_path / "r3").exists()


def test_cli_exclude_items(mamba, mamba_export, tmp_path, capsys):
    """--exclude-items FILE with --model: the graph is exported with those items at -inf (its state_spec.json in the
    repository lists them, and its README says so); with --onnx it is a usage error (the graph fixes it)."""
    mamba.save_pretrained(tmp_path / "m")
    gone = mamba.item_vocab.decode([2, 7])
    (tmp_path / "gone.txt").write_text("".join(f"{x}\n" for x in gone))
    assert T.main(["--model", str(tmp_path / "m"), "--repo", str(tmp_path / "r"), "--no-verify", "--exclude-items",
                   str(tmp_path / "gone.txt")]) == 0
    mdir = tmp_path / "r" / "mamba4rec_step_onnxruntime_implicit"
    spec = json.loads(next(mdir.rglob("state_spec.json")).read_text())
    assert spec["excluded_items"] == [2, 7] and "Excluded items" in (mdir / "README.md").read_text()
    with pytest.raises(SystemExit) as e:
        T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "r2"), "--exclude-items", "x.txt"])
    assert e.value.code == 2 and "fixed by the graph in --onnx" in capsys.readouterr().err
    (tmp_path / "gone.txt").write_text("no-such-item\n")
    assert T.main(["--model", str(tmp_path / "m"), "--repo", str(tmp_path / "r3"), "--no-verify", "--exclude-items",
                   str(tmp_path / "gone.txt")]) == 1
    assert "--exclude-items" in capsys.readouterr().err and not (tmp_path / "r3").exists()


def test_cli_writes_repository(mamba_export, tmp_path):
    assert T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "r"), "--backend", "tensorrt",
                   "--name", "m4r"]) == 0
    assert (tmp_path / "r" / "m4r" / "config.pbtxt").exists()
    assert T.main(["--onnx", str(tmp_path / "nope"), "--repo", str(tmp_path / "r2")]) != 0


def test_repository_of_several_models(mamba_export, lru_export, tmp_path):
    """Each model folder carries its own README; the repository README indexes every folder (it described only the
    last model written), and serve.sh builds every TensorRT model's plan, not only the last one's. Regenerating the
    TensorRT folders as onnxruntime ones removes serve.sh; a folder Triton serves that this tool did not write is
    listed as such."""
    import subprocess

    repo = tmp_path / "repo"
    _, lru_dir = lru_export
    T.write_repository(mamba_export, repo, name="mamba_trt", backend="tensorrt")
    T.write_repository(lru_dir, repo, name="lru_trt", backend="tensorrt", max_batch_size=8)
    (repo / "custom").mkdir()
    (repo / "custom" / "config.pbtxt").write_text('name: "custom"\n')
    T.write_repository(mamba_export, repo, name="mamba_ort", backend="onnxruntime")
    index = (repo / "README.md").read_text()
    assert "[`mamba_trt`](mamba_trt/README.md): mamba4rec, step graph, backend tensorrt, implicit state" in index
    assert "[`lru_trt`](lru_trt/README.md): lrurec, step graph, backend tensorrt" in index
    assert "[`mamba_ort`](mamba_ort/README.md): mamba4rec, step graph, backend onnxruntime" in index
    assert "`custom` (no README" in index
    serve = (repo / "serve.sh").read_text()
    assert "bash /models/lru_trt/build_engine.sh $plugin" in serve and "bash /models/mamba_trt/build_engine.sh" in serve
    assert f'plugin="/models/lru_trt/plugins/{T.ps.PLUGIN_LIBRARY}"' in serve and "mamba_ort" not in serve
    for script in (repo / "serve.sh", repo / "lru_trt" / "build_engine.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)                  # syntax

    # build_engine.sh runs trtexec (here a stand-in that records its arguments) once, then finds the plan
    fake = tmp_path / "trtexec"
    fake.write_text('#!/usr/bin/env bash\necho "$@" > "$(dirname "$0")/args"\n'
                    'for a in "$@"; do case $a in --saveEngine=*) touch "${a#--saveEngine=}";; esac; done\n')
    fake.chmod(0o755)
    env = {**os.environ, "TRTEXEC": str(fake)}
    mdir = repo / "lru_trt"
    run = subprocess.run(["bash", str(mdir / "build_engine.sh")], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    args = (tmp_path / "args").read_text().split()
    assert f"--onnx={mdir}/onnx/model_implicit.onnx" in args and f"--saveEngine={mdir}/1/model.plan.tmp" in args
    assert (mdir / "1" / "model.plan").is_file() and not (mdir / "1" / "model.plan.tmp").exists()
    assert f"--dynamicPlugins={mdir}/plugins/{T.ps.PLUGIN_LIBRARY}" in args
    shapes = dict(a.split("=", 1) for a in args if "Shapes=" in a)
    assert shapes["--maxShapes"].startswith("item_ids:8x") and shapes["--minShapes"].startswith("item_ids:1x1")
    run = subprocess.run(["bash", str(mdir / "build_engine.sh")], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0 and "model.plan exists" in run.stdout

    for name in ("mamba_trt", "lru_trt"):
        T.write_repository(mamba_export, repo, name=name, backend="onnxruntime")
    assert not (repo / "serve.sh").exists() and "backend tensorrt" not in (repo / "README.md").read_text()

@pytest.mark.parametrize("flags,message", [
    (["--max-batch-size", "0"], "max_batch_size must be an int >= 1, got 0"),
    (["--instances", "0"], "instances must be an int >= 1"), (["--queue-delay-us", "-5"], "queue_delay_us must be"),
    (["--idle-timeout-s", "-1"], "idle_timeout_s must be a positive number"),
    (["--idle-timeout-s", "1e-9"], "idle_timeout_s must be at least 1e-06 s"),   # wrote ..._microseconds: 0
    (["--max-candidate-sequences", "0"], "max_candidate_sequences must be"),
    (["--topk", "5"], "--topk is fixed by the graph in --onnx")])
def test_cli_refuses_bad_serving_numbers_before_writing(mamba_export, tmp_path, flags, message, capsys):
    """Serving numbers Triton would reject (or, as --max-batch-size 0 and --instances 0, take to mean something else)
    are usage errors before any export or write; the model folder already in the repository is kept."""
    assert T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "r"), "--name", "m"]) == 0
    before = (tmp_path / "r" / "m" / "config.pbtxt").read_text()
    with pytest.raises(SystemExit) as e:
        T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "r"), "--name", "m", *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert (tmp_path / "r" / "m" / "config.pbtxt").read_text() == before
    spec = json.loads((mamba_export / "state_spec.json").read_text())
    with pytest.raises(ValueError, match="max_batch_size must be an int >= 1"):
        T.make_config(spec, "m", max_batch_size=0)


def test_repository_inputs_are_checked_and_a_failed_write_keeps_the_previous_folder(mamba_export, tmp_path,
                                                                                    monkeypatch):
    """Names that leave the repository, files that are not there and options the backend would ignore are errors
    before anything is written; a write that fails half-way (here: the graph rewrite) leaves the model folder that
    was there byte-identical and no staging folder behind (it used to be deleted first)."""
    repo = tmp_path / "r"
    mdir = T.write_repository(mamba_export, repo, name="m")
    before = {p.relative_to(mdir): p.read_bytes() for p in mdir.rglob("*") if p.is_file()}
    for kw, err, msg in ((dict(name="../evil"), ValueError, "one folder of the repository"),
                         (dict(name="a/b"), ValueError, "no path separators"),
                         (dict(name="m", vocab_path=str(tmp_path / "no.json")), FileNotFoundError, "vocab_path"),
                         (dict(name="m", backend="tensorrt", plan=str(tmp_path / "no.plan")), FileNotFoundError,
                          "plan .* not found"),
                         (dict(name="m", plan=str(mamba_export / "state_spec.json")), ValueError,
                          "plan is for the tensorrt backend")):
        with pytest.raises(err, match=msg):
            T.write_repository(mamba_export, repo, **kw)
    assert not (tmp_path / "evil").exists() and not (repo / "a").exists()

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(T, "add_sequence_controls", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        T.write_repository(mamba_export, repo, name="m")
    assert {p.relative_to(mdir): p.read_bytes() for p in mdir.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "m"]
    assert oct(mdir.stat().st_mode & 0o777) == "0o755"


def _spoilt_export(src, dst, file, spoil):
    import shutil

    shutil.copytree(src, dst)
    path = dst / file
    path.write_bytes(spoil(path.read_bytes()))
    return path


@pytest.mark.parametrize("file,spoil,message", [
    ("item_vocab.json", lambda b: b"{oops", "corrupt item vocabulary {path}: Expecting property name"),
    ("item_vocab.json", lambda b: json.dumps(dict(json.loads(b), items=["a", "b"])).encode(),
     "item vocabulary {path} holds 2 items, but the graph has 119 (n_items 120"),
    ("state_spec.json", lambda b: b"{oops", "corrupt {path}: Expecting property name"),
    ("state_spec.json", lambda b: json.dumps({k: v for k, v in json.loads(b).items() if k != "kind"}).encode(),
     "{path} lacks the field kind"),
    ("model.onnx", lambda b: b[:len(b) // 2], "{path} is not a readable ONNX graph (DecodeError"),
])
def test_cli_refuses_a_spoilt_export_naming_the_file(mamba_export, tmp_path, file, spoil, message, capsys):
    """A corrupt vocabulary (or one of another model) was shipped as item_vocab.json and the config reported
    validated; a corrupt state_spec.json said "error: Expecting property name..." without the file; a truncated
    model.onnx was a protobuf DecodeError traceback (onnxruntime backend) or shipped as is (python backend)."""
    path = _spoilt_export(mamba_export, tmp_path / "export", file, spoil)
    for backend in ("onnxruntime", "python"):
        assert T.main(["--onnx", str(tmp_path / "export"), "--repo", str(tmp_path / "r"), "--backend", backend]) == 1
        assert message.format(path=path) in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("vocab,message", [
    ("{tiny_csv}", "corrupt item vocabulary {tiny_csv}: Expecting value"),
    ("{short}", "item vocabulary {short} holds 3 items, but the graph has 119"),
])
def test_cli_validates_the_vocab_it_ships(mamba_export, tmp_path, vocab, message, capsys):
    """--vocab of an interaction file (or of another model) was copied to item_vocab.json and reported validated."""
    paths = {"tiny_csv": str(tmp_path / "tiny.csv"), "short": str(ItemVocab(["a", "b", "c"]).save(str(tmp_path)))}
    (tmp_path / "tiny.csv").write_text("user_id,item_id,timestamp\n1,28,1000\n")
    assert T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "r"), "--vocab", vocab.format(**paths)]) == 1
    assert message.format(**paths) in capsys.readouterr().err and not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="item vocabulary"):
        T.write_repository(mamba_export, tmp_path / "r", vocab_path=vocab.format(**paths))
    assert not (tmp_path / "r").exists()
    mdir = T.write_repository(mamba_export, tmp_path / "r", vocab_path=str(mamba_export / "item_vocab.json"))
    assert ItemVocab.load(mdir / "item_vocab.json") == ItemVocab.load(mamba_export / "item_vocab.json")


def test_cli_refuses_a_repo_that_is_a_file(mamba_export, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as e:                              # was a FileExistsError traceback
        T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "afile")])
    assert e.value.code == 2 and f"--repo {tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:                              # under a file: was 1, "[Errno 20] Not a ..."
        T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "afile" / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--repo {tmp_path / 'afile' / 'r'}: {tmp_path / 'afile'} is a file, not a folder" \
        in err and "Errno" not in err, err
    assert (tmp_path / "afile").read_text() == "x"


def test_cli_names_the_vocab_flag_of_a_missing_file(mamba_export, tmp_path, capsys):
    """--vocab FILE that does not exist or cannot be read is an input the run cannot read: a failed run (1, as a
    missing --model or --data; it was a usage error, 2), one line naming the flag and the path, no usage line, nothing
    written in --repo (the Python API names its vocab_path)."""
    import os

    (tmp_path / "r").mkdir()
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "locked.json").write_text("{}")
    os.chmod(tmp_path / "locked.json", 0)
    cases = [("nothere.json", "no such file"), ("folder.json", "is a folder, not a file")]
    if not os.access(tmp_path / "locked.json", os.R_OK):                  # root reads it anyway
        cases.append(("locked.json", "cannot read it (Permission denied)"))
    for name, why in cases:
        with pytest.raises(SystemExit) as e:
            T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "r"), "--vocab", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert e.value.code == 1 and f"error: --vocab {tmp_path / name}: {why}" in err and "usage:" not in err, err
        assert list((tmp_path / "r").iterdir()) == []
    with pytest.raises(FileNotFoundError, match="vocab_path .*nothere.json not found"):
        T.write_repository(mamba_export, tmp_path / "r", vocab_path=str(tmp_path / "nothere.json"))


def test_cli_model_export_errors_are_reported_not_raised(mamba, tmp_path, monkeypatch, capsys):
    """An export error is a failed run (1) in one line, nothing written; a --topk the model's catalogue cannot give
    is a usage error (2, the usage line) naming the flag, the value and the catalogue, as export.onnx --topk (it was
    an export error, 1), and so is a --topk below 1."""
    from export import onnx as E

    mamba.save_pretrained(tmp_path / "m")
    args = ["--model", str(tmp_path / "m"), "--repo", str(tmp_path / "r"), "--no-verify"]
    for topk, message in (("0", "error: --topk: expected an int >= 1, got 0"),
                          (str(N_ITEMS), f"error: --topk {N_ITEMS}: the model's catalogue has {N_ITEMS - 1} items; "
                                         f"use --topk <= {N_ITEMS - 1}")):
        with pytest.raises(SystemExit) as e:
            T.main(args + ["--topk", topk])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "usage:" in err, err
    assert not (tmp_path / "r").exists()

    def fails(*args, **kwargs):
        raise E.ExportError("no step exporter for this model")

    monkeypatch.setattr(E, "export_model", fails)
    assert T.main(args + ["--topk", str(N_ITEMS - 1)]) == 1
    assert "error: no step exporter for this model" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_cli_exit_statuses_of_a_bad_model_and_a_failed_verification(mamba, tmp_path, monkeypatch, capsys):
    """A --model that cannot be loaded is a failed run (1) whose message names the flag, as in the other commands (it
    gave the loader's text alone); an export that fails its verification exits 3 (the shared table), nothing
    written."""
    from export import onnx as E

    with pytest.raises(SystemExit) as e:
        T.main(["--model", str(tmp_path / "no-such-model"), "--repo", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and f"error: --model {tmp_path / 'no-such-model'}: " in err, err
    assert not (tmp_path / "r").exists()

    def fails(*args, **kwargs):
        raise E.VerificationError("verification (step, mamba4rec): FAILED, worst case top-k agreement 0.5; nothing "
                                  "written")

    monkeypatch.setattr(E, "export_model", fails)
    mamba.save_pretrained(tmp_path / "m")
    assert T.main(["--model", str(tmp_path / "m"), "--repo", str(tmp_path / "r")]) == T.EXIT_VERIFY_FAILED == 3
    assert "error: verification (step, mamba4rec): FAILED" in capsys.readouterr().err
    assert not (tmp_path / "r" / "mamba4rec_step_onnxruntime_implicit").exists()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_client_times_out_on_a_server_that_never_answers(protocol):
    """timeout_s bounds every call on both protocols: over gRPC it is passed as each call's deadline (gRPC has no
    client-wide timeout; without it the constructor's metadata read waited ~20 s for gRPC's own connect deadline,
    and a call on an established connection to a stuck server had no deadline at all)."""
    import socket

    pytest.importorskip("tritonclient.grpc" if protocol == "grpc" else "tritonclient.http",
                        reason=f"tritonclient[{protocol}] is not installed")
    from export.triton_client import TritonRecommendError, TritonRecommender

    silent = socket.socket()                       # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"127.0.0.1:{silent.getsockname()[1]}"
    outcome = []

    def connect():
        try:
            TritonRecommender(url, "m", protocol=protocol, timeout_s=1.0)
            outcome.append("answered")
        except Exception as e:                     # noqa: BLE001 (the type is the assertion)
            outcome.append(e)

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(8)                                      # gRPC's own connect deadline is ~20 s: the 1-s one must win
    alive = t.is_alive()
    t.join(60)
    silent.close()
    assert not alive, f"{protocol}: still waiting after 8 s although timeout_s=1"
    assert len(outcome) == 1 and isinstance(outcome[0], (TritonRecommendError, OSError, TimeoutError)), outcome


# ============================================================= implicit state, driven like Triton's sequence batcher
@pytest.mark.parametrize("which", ["mamba", "lru"])
def test_implicit_graph_follows_triton_state_protocol(which, mamba, mamba_export, lru_export, tmp_path):
    model, d = (mamba, mamba_export) if which == "mamba" else lru_export
    mdir = T.write_repository(d, tmp_path / "repo", backend="onnxruntime", state="implicit")
    spec = json.loads((d / "state_spec.json").read_text())
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(mdir / "1" / "model.onnx"), so, providers=["CPUExecutionProvider"])
    rng = random.Random(0)
    hist = [[rng.randrange(1, N_ITEMS) for _ in range(rng.randrange(3, 9))] for _ in range(6)]
    slots = {}
    served, prefixes = [], []
    for step in range(max(map(len, hist))):
        rows = [i for i, h in enumerate(hist) if step < len(h)]
        feeds = {"item_ids": np.array([[hist[i][step]] for i in rows], np.int64),
                 "START": np.array([[int(step == 0)] for _ in rows], np.int32),
                 "READY": np.ones((len(rows), 1), np.int32), "CORRID": np.array([[i + 1] for i in rows], np.int64)}
        for s in spec["state"]:                 # at START Triton hands a zero buffer; we hand garbage: START must win
            feeds[s["name"]] = np.stack([slots[i][s["name"]] if step else
                                         np.full(s["shape"][1:], 7.0, np.float32) for i in rows])
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
        for r, i in enumerate(rows):
            slots[i] = {s["name"]: outs[s["output"]][r] for s in spec["state"]}
            served.append(outs["topk_ids"][r])
            prefixes.append(hist[i][:step + 1])
    for got, (ref_ids, ref_sc) in zip(served, _reference_topk(model, prefixes), strict=True):
        assert _same_topk(got, ref_ids, ref_sc)


def test_mamba_fixture_ranks_by_the_history(mamba):
    """Negative control for the tests that serve sequences of the Mamba fixture: its top-10 after a history is not
    the top-10 after the history's last item alone (what a server that lost or never reset a sequence's state, or
    used another sequence's, would answer), for nearly every history, and for the restart test's sequences."""
    rng = random.Random(7)
    hists = [[rng.randrange(1, N_ITEMS) for _ in range(rng.randrange(2, 10))] for _ in range(200)]
    full, last = _reference_topk(mamba, hists), _reference_topk(mamba, [h[-1:] for h in hists])
    apart = [not _same_topk(lo[0], fi[0], fi[1]) for fi, lo in zip(full, last, strict=True)]
    print(f"top-10 after the last item alone fails the served check for {sum(apart)} of {len(apart)} histories")
    assert sum(apart) >= 0.95 * len(apart)
    (after_a, sc), (alone, _), (after_b, _) = _reference_topk(mamba, [[3, 9, 27, 40], [40], [50, 51, 40]])
    assert not _same_topk(alone, after_a, sc) and not _same_topk(after_b, after_a, sc)


# ============================================== the python-backend model, driven in-process (no server, no venv)
class _FakeTensor:
    def __init__(self, name, arr):
        self.name, self.arr = name, np.asarray(arr)

    def as_numpy(self):
        return self.arr


class _FakeResponse:
    def __init__(self, output_tensors, error=None):
        self.outputs, self.error = {t.name: t.arr for t in output_tensors}, error


class _FakeError:
    def __init__(self, msg):
        self.msg = msg


def _fake_pb(monkeypatch):
    """``triton_python_backend_utils`` as the python backend's stub provides it; a request is ``{name: array}``."""
    import types

    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor, pb.InferenceResponse, pb.TritonError = _FakeTensor, _FakeResponse, _FakeError
    pb.get_input_tensor_by_name = lambda r, name: _FakeTensor(name, r[name]) if name in r else None
    monkeypatch.setitem(sys.modules, pb.__name__, pb)
    return pb


def _backend_model(export_dir, repo, monkeypatch, clock=None, **kw):
    """``export/triton_server.py``'s TritonPythonModel initialised as Triton does (the model config as JSON). Its
    clock (``time.monotonic``) is ``clock[0]``: frozen at 1000 s unless the test moves it, so a slow machine never
    lets a sequence go idle between two requests."""
    import types

    from google.protobuf.json_format import MessageToDict

    from export import triton_server as S

    clock = clock if clock is not None else [1000.0]
    monkeypatch.setattr(S, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    _fake_pb(monkeypatch)
    mdir = T.write_repository(export_dir, repo, backend="python", **kw)
    cfg = MessageToDict(_parse(mdir / "config.pbtxt"), preserving_proto_field_name=True)
    model = S.TritonPythonModel()
    model.initialize({"model_config": json.dumps(cfg), "model_repository": str(mdir), "model_version": "1"})
    return model


def _seq_request(model, corrid, items, start=False, end=False):
    """A sequence-batcher request: the control inputs, the new items, and each state's initial value (Triton hands
    them to the python model with every request)."""
    r = {"CORRID": np.array([[corrid]], np.uint64), "START": np.array([[int(start)]], np.int32),
         "END": np.array([[int(end)]], np.int32), "item_ids": np.array([items], np.int64).reshape(1, -1)}
    for name, shape, dt, init in model.states:
        r[name] = np.full((1, *shape), init, np.dtype(dt))
    return r


def _answers(model, mamba, responses, prefixes):
    """Each response equals PyTorch's full forward over its prefix (ids, and scores within 1e-4)."""
    for resp, prefix, (ref_ids, ref_sc) in zip(responses, prefixes, _reference_topk(mamba, prefixes), strict=True):
        assert resp.error is None, resp.error.msg
        ids, sc = resp.outputs["topk_ids"][0], resp.outputs["topk_scores"][0]
        assert _same_topk(ids, ref_ids, ref_sc), (prefix, ids, ref_ids)
        np.testing.assert_allclose(sc, ref_sc[ids], atol=1e-4, err_msg=str(prefix))
    return [int(r.outputs["live_sequences"].reshape(-1)[0]) for r in responses]


def test_python_backend_keeps_sequences_apart_within_one_batch(mamba, mamba_export, tmp_path, monkeypatch):
    """Requests that Triton's sequence batcher hands over together: each sequence runs from its own state (two
    continuations of one ORT call, row by row), a START on a live correlation id discards its state, two events of one
    sequence in one batch are applied in order, an END frees the state (with or without items), and a bad item
    (0 = padding, or n_items) is an error for that request only."""
    model = _backend_model(mamba_export, tmp_path / "repo", monkeypatch, idle_timeout_s=30)
    ex = model.execute
    a, b, c = [3, 9, 27], [50, 51], [7, 8, 9, 10]
    live = _answers(model, mamba, ex([_seq_request(model, 11, a, start=True), _seq_request(model, 12, b, start=True),
                                      _seq_request(model, 13, c, start=True)]), [a, b, c])
    assert live[-1] == 3
    # 11 and 12 continue in one ORT call (T = 1); 13 restarts on its live correlation id
    live = _answers(model, mamba, ex([_seq_request(model, 11, [40]), _seq_request(model, 12, [41]),
                                      _seq_request(model, 13, [42], start=True)]), [a + [40], b + [41], [42]])
    # two events of 11 in one batch (the second sees the first), 12 ends with an item, bad items are refused alone
    resp = ex([_seq_request(model, 11, [5]), _seq_request(model, 11, [6]), _seq_request(model, 14, [0], start=True),
               _seq_request(model, 12, [43], end=True), _seq_request(model, 15, [N_ITEMS], start=True)])
    for bad, item in ((resp[2], 0), (resp[4], N_ITEMS)):
        assert bad.error is not None and f"item index {item} is out of range 1..{N_ITEMS - 1}" in bad.error.msg
        assert bad.outputs == {}
    live = _answers(model, mamba, [resp[0], resp[1], resp[3]], [a + [40, 5], a + [40, 5, 6], b + [41, 43]])
    assert live[-1] == 2                                         # 11 and 13
    resp = ex([_seq_request(model, 13, [], end=True)])          # END without items: only frees the state
    assert resp[0].error is None and int(resp[0].outputs["live_sequences"].reshape(-1)[0]) == 1
    resp = ex([_seq_request(model, 12, [44]), _seq_request(model, 13, [44])])
    assert all(r.error is not None and "has no state on the server" in r.error.msg for r in resp)
    _answers(model, mamba, ex([_seq_request(model, 11, [7], end=True)]), [a + [40, 5, 6, 7]])
    assert model.store == {}


def test_python_backend_a_failed_start_or_end_drops_the_sequence(mamba, mamba_export, tmp_path, monkeypatch):
    """Triton counts a sequence (re)started or ended even when the model refuses the request: a refused restart left
    the old state in the model, and the next request (sent without START) silently continued the OLD history; a
    refused END left the state until the idle sweep. Now the state is dropped either way: the continuation is
    refused ("no state"). Two requests of one sequence in one batch: START then a continuation runs both, in order
    (the continuation was refused at parse time), and END then a continuation refuses the continuation alone (a
    KeyError failed the whole batch, other sequences included)."""
    model = _backend_model(mamba_export, tmp_path / "repo", monkeypatch, idle_timeout_s=30)
    ex = model.execute
    a = [3, 9, 27]
    _answers(model, mamba, ex([_seq_request(model, 21, a, start=True), _seq_request(model, 22, a, start=True)]),
             [a, a])
    resp = ex([_seq_request(model, 21, [5, 0], start=True), _seq_request(model, 22, [0], end=True)])
    assert all(r.error is not None and "item index 0 is out of range" in r.error.msg for r in resp)
    assert model.store == {}
    resp = ex([_seq_request(model, 21, [40]), _seq_request(model, 22, [40])])
    assert all(r.error is not None and "has no state on the server" in r.error.msg for r in resp)
    resp = ex([_seq_request(model, 23, a, start=True), _seq_request(model, 23, [40])])
    _answers(model, mamba, resp, [a, a + [40]])
    resp = ex([_seq_request(model, 23, [5], end=True), _seq_request(model, 23, [6]), _seq_request(model, 24, a,
                                                                                            start=True)])
    _answers(model, mamba, [resp[0], resp[2]], [a + [40, 5], a])
    assert resp[1].error is not None and "sequence 23 has no state on the server" in resp[1].error.msg


def test_python_backend_candidates(mamba, mamba_cand_export, tmp_path, monkeypatch):
    """A --candidates graph behind the python backend: each request's top-k among its own candidates (requests of one
    batch with lists of different lengths share one ORT call, padded with 0), fewer than K slots left empty (id 0,
    -inf), a request without the (optional) input not restricted, a candidate out of range refused for that request
    alone; the states advance as without candidates. The explicit-state form takes [B, C] candidate rows."""
    model = _backend_model(mamba_cand_export, tmp_path / "repo", monkeypatch, idle_timeout_s=30)
    assert model.candidates
    cfg = _parse(tmp_path / "repo" / "mamba4rec_step_python" / "config.pbtxt")
    assert next(i for i in cfg.input if i.name == "candidates").optional
    a, b, c = [3, 9, 27], [50, 51, 52], [7, 8, 9]
    ca, cb = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 11, 21], [5, 6]
    reqs = [_seq_request(model, 1, a, start=True), _seq_request(model, 2, b, start=True),
            _seq_request(model, 3, c, start=True)]
    reqs[0]["candidates"] = np.array([ca], np.int64)
    reqs[1]["candidates"] = np.array([cb + [0, 0]], np.int64)
    resp = model.execute(reqs)
    ref = _reference_topk_among(mamba, [a, b], [ca, cb])
    for r, (ids, sc) in zip(resp[:2], ref, strict=True):
        assert r.error is None, r.error.msg
        got = r.outputs["topk_ids"][0]
        assert _same_topk(got[:len(ids)], ids, sc) and set(got[:len(ids)]) <= set(ids.tolist())
    assert (resp[1].outputs["topk_ids"][0, 2:] == 0).all() and np.isneginf(resp[1].outputs["topk_scores"][0, 2:]).all()
    _answers(model, mamba, [resp[2]], [c])                       # no candidates: the whole catalogue
    bad = _seq_request(model, 1, [5])
    bad["candidates"] = np.array([[3, N_ITEMS]], np.int64)
    wrong, ok = model.execute([bad, _seq_request(model, 2, [5])])
    assert wrong.error is not None and f"candidate index {N_ITEMS} is out of range" in wrong.error.msg
    _answers(model, mamba, [ok], [b + [5]])                      # 2's state advanced as without candidates
    _answers(model, mamba, model.execute([_seq_request(model, 1, [5])]), [a + [5]])    # 1 kept its state

    explicit = _backend_model(mamba_cand_export, tmp_path / "repo_x", monkeypatch, state="explicit")
    assert explicit.explicit and explicit.candidates
    r = {"item_ids": np.array([a, c], np.int64), "candidates": np.array([[5, 6, 7], [0, 0, 0]], np.int64)}
    for name, shape, dt, init in explicit.states:
        r[name] = np.full((2, *shape), init, np.dtype(dt))
    (resp,) = explicit.execute([r])
    assert resp.error is None, resp.error.msg
    (ids, sc), = _reference_topk_among(mamba, [a], [[5, 6, 7]])
    assert _same_topk(resp.outputs["topk_ids"][0, :3], ids, sc) and (resp.outputs["topk_ids"][0, 3:] == 0).all()
    (ri, rs), = _reference_topk(mamba, [c])
    assert _same_topk(resp.outputs["topk_ids"][1], ri, rs)
    r["candidates"] = np.array([[5, 6, 7]], np.int64)                     # one row for two users
    (resp,) = explicit.execute([r])
    assert resp.error is not None and "candidates must be [2, C]" in resp.error.msg, resp.error


def test_onnxruntime_configs_require_the_candidates_input(mamba_cand_export, tmp_path):
    """The onnxruntime backend feeds the graph's inputs as they are: candidates is a required input there (a row of
    0s restricts nothing); the README says which."""
    mdir = T.write_repository(mamba_cand_export, tmp_path / "repo", backend="onnxruntime", state="explicit")
    cfg = _parse(mdir / "config.pbtxt")
    cand = next(i for i in cfg.input if i.name == "candidates")
    assert not cand.optional and list(cand.dims) == [-1]
    assert "every request must carry the input" in (mdir / "README.md").read_text()


def test_python_backend_refuses_an_initial_state_that_is_not_the_graphs(mamba, mamba_export, tmp_path, monkeypatch):
    """A starting sequence's initial state as Triton hands it over must be the one state_spec.json gives (the
    repository's initial_state); a different value is an error for that request that names both values."""
    model = _backend_model(mamba_export, tmp_path / "repo", monkeypatch)
    name, _, _, init = model.states[0]
    bad = _seq_request(model, 1, [3, 9], start=True)
    bad[name] = bad[name] + 0.5
    wrong, ok = model.execute([bad, _seq_request(model, 2, [3, 9], start=True)])
    assert wrong.error is not None, "a wrong initial state was accepted"
    assert f"holds {float(init) + 0.5!r}, but state_spec.json says {init!r}" in wrong.error.msg, wrong.error.msg
    _answers(model, mamba, [ok], [[3, 9]])


def test_python_backend_frees_only_the_sequences_left_idle(mamba, mamba_export, tmp_path, monkeypatch):
    """A sequence's idle time runs from its last request (not its start): past max_sequence_idle_microseconds only
    the sequences left idle that long are freed (their continuation is an error naming why); the one still in use
    keeps its state."""
    clock = [1000.0]
    model = _backend_model(mamba_export, tmp_path / "repo", monkeypatch, clock, idle_timeout_s=1.0)
    assert model.idle_s == 1.0
    a, b = [3, 9, 27], [50, 51]
    both = [_seq_request(model, 1, a, start=True), _seq_request(model, 2, b, start=True)]
    _answers(model, mamba, model.execute(both), [a, b])
    clock[0] = 1000.8
    _answers(model, mamba, model.execute([_seq_request(model, 1, [40])]), [a + [40]])
    clock[0] = 1001.6                                        # 1 idle for 0.8 s, 2 for 1.6 s
    kept, gone = model.execute([_seq_request(model, 1, [41]), _seq_request(model, 2, [41])])
    assert gone.error is not None and "stayed idle longer than 1 s" in gone.error.msg
    assert _answers(model, mamba, [kept], [a + [40, 41]]) == [1]


def test_python_backend_explicit_state_refuses_time_going_back(tc_model, tc_export, tmp_path, monkeypatch):
    """Dynamic batching with the state in the request (TiM4Rec-causal): the first new timestamp may not be before the
    state's last_ts (events at the same second are fine), checked by the server itself, not only by the client."""
    model = _backend_model(tc_export, tmp_path / "repo", monkeypatch, state="explicit")
    assert model.explicit and model.i_last_ts is not None

    def request(ts):
        r = {"item_ids": np.array([[3] * len(ts)], np.int64), "timestamps": np.array([ts], np.float64)}
        for name, shape, dt, init in model.states:
            r[name] = np.full((1, *shape), 5000.0 if name == "last_ts" else init, np.dtype(dt))
        return r

    back, same, later, down = model.execute([request([4000.0, 6000.0]), request([5000.0]), request([5001.0, 5002.0]),
                                             request([5003.0, 5002.5])])
    assert back.error is not None and "go back in time" in back.error.msg, back.error
    assert "(4000.0 < last_ts 5000.0)" in back.error.msg, back.error.msg
    assert down.error is not None and "timestamps decrease (5002.5 after 5003.0)" in down.error.msg, down.error
    assert same.error is None and later.error is None
    assert later.outputs["last_ts_out"].reshape(-1).tolist() == [5002.0]


def test_python_backend_window_refuses_padding_on_the_wrong_side(tim4rec_window_export, tmp_path, monkeypatch):
    """Window graphs: the history is 0-padded on the model's padding side only; padding on the other side (or inside)
    is an error for that request, a well padded one is answered."""
    model = _backend_model(tim4rec_window_export[1], tmp_path / "repo", monkeypatch)
    side = model.padding_side
    good, bad = ([5, 6, 0, 0], [0, 0, 5, 6]) if side == "right" else ([0, 0, 5, 6], [5, 6, 0, 0])
    ts = {5: 1.6e9, 6: 1.6e9 + 60, 0: 0.0}

    def request(items):
        return {"item_ids": np.array([items], np.int64), "timestamps": np.array([[ts[i] for i in items]], np.float64)}

    ok, wrong, inside = model.execute([request(good), request(bad), request([5, 0, 6, 0] if side == "right"
                                                                            else [0, 5, 0, 6])])
    assert ok.error is None and ok.outputs["topk_ids"].shape == (1, K)
    for r in (wrong, inside):
        assert r.error is not None and f"the window is not {side}-padded" in r.error.msg


def test_python_backend_window_refuses_decreasing_timestamps(tim4rec_window_export, tmp_path, monkeypatch):
    """A window's timestamps must not decrease along its real items (export.runtime refuses them; the backend served
    them, the graph clamping the negative gaps to 0); the padding slots' zeros are not events."""
    model = _backend_model(tim4rec_window_export[1], tmp_path / "repo", monkeypatch)
    right = model.padding_side == "right"

    def request(stamps):
        items = [5, 6, 7] + [0]
        stamps = stamps + [0.0]
        if not right:
            items, stamps = items[::-1][:1] + items[:3], stamps[-1:] + stamps[:3]
        return {"item_ids": np.array([items], np.int64), "timestamps": np.array([stamps], np.float64)}

    ok, back = model.execute([request([1.6e9, 1.6e9 + 60, 1.6e9 + 60]), request([1.6e9, 1.6e9 + 60, 1.6e9 + 5])])
    assert ok.error is None
    assert back.error is not None and "timestamps decrease (1600000005.0 after 1600000060.0)" in back.error.msg


def test_python_backend_explicit_refuses_a_last_ts_that_is_no_time(tc_export, tmp_path, monkeypatch):
    """An explicit state's last_ts must be an event's time (>= 0) or -1 (no event yet), as export.runtime checks."""
    model = _backend_model(tc_export, tmp_path / "repo", monkeypatch, state="explicit")
    feeds = {"item_ids": np.array([[3]], np.int64), "timestamps": np.array([[1.6e9]], np.float64)}
    for name, shape, dt, init in model.states:
        feeds[name] = np.full((1, *shape), -5.0 if name == "last_ts" else init, dtype=np.dtype(dt))
    (resp,) = model.execute([feeds])
    assert resp.error is not None and "state last_ts is -5.0" in resp.error.msg


def test_python_backend_window_candidates(tmp_path, monkeypatch):
    """A --candidates window graph behind the python backend: two requests with candidate rows of different lengths
    share one ORT call; each row's top-k is PyTorch's among its candidates, a row of 0s is not restricted."""
    sas = _sasrec()
    d = tmp_path / "export"
    export_model(sas, d, kind="window", topk=K, candidates=True, verify=False)
    model = _backend_model(d, tmp_path / "repo", monkeypatch)
    h1, h2 = [5, 6, 7], [8, 9, 10]
    c1 = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]
    r1 = {"item_ids": np.array([h1], np.int64), "candidates": np.array([c1], np.int64)}
    r2 = {"item_ids": np.array([h2], np.int64), "candidates": np.array([[0, 0]], np.int64)}
    one, two = model.execute([r1, r2])
    assert one.error is None and two.error is None
    (ids, sc), = _reference_topk_among(sas, [h1], [c1])
    assert _same_topk(one.outputs["topk_ids"][0], ids, sc)
    (ri, rs), = _reference_topk(sas, [h2])
    assert _same_topk(two.outputs["topk_ids"][0], ri, rs)


def test_launcher_listens_on_loopback_only(tmp_path, monkeypatch, capsys):
    """``serve`` starts tritonserver with every endpoint on 127.0.0.1 (metrics off unless a port is given) and
    returns its exit status; nothing is started for a repository that does not exist."""
    from export import triton_server as S

    started = []

    class FakeProc:
        def __init__(self, cmd, env=None, **kwargs):        # kwargs: the preexec_fn of die_with_parent
            started.append(cmd)

        def wait(self):
            return 7

        def poll(self):
            return 7

    monkeypatch.setattr(S, "_prepare_workspace", lambda ws: (tmp_path / "bin" / "tritonserver", dict(os.environ)))
    monkeypatch.setattr(S.subprocess, "Popen", FakeProc)
    monkeypatch.setattr(S.signal, "signal", lambda *a: None)     # keep pytest's own handlers
    assert S.serve(str(tmp_path), http_port=18000, grpc_port=18001) == 7
    assert S.serve(str(tmp_path), http_port=18000, grpc_port=18001, metrics_port=18002) == 7
    assert S.serve(str(tmp_path / "missing")) == 1 and len(started) == 2
    capsys.readouterr()
    for cmd, metrics in zip(started, (False, True), strict=True):
        flags = dict(a.split("=", 1) for a in cmd[1:])
        addresses = {k: v for k, v in flags.items() if k.endswith("-address")}
        assert addresses == {"--http-address": "127.0.0.1", "--grpc-address": "127.0.0.1",
                             **({"--metrics-address": "127.0.0.1"} if metrics else {})}, addresses
        assert (flags["--http-port"], flags["--grpc-port"]) == ("18000", "18001")
        assert flags["--allow-metrics"] == ("true" if metrics else "false")
        assert flags["--model-repository"] == str(tmp_path)


# ======================================================= the client against a recorded stand-in (no server needed)
def _topk(name):
    """The stand-ins' answer to the top-k outputs, fresh [1, K] arrays (ids 1..K, scores 0, -1, ...); None for any
    other output."""
    if name == "topk_ids":
        return np.arange(1, K + 1, dtype=np.int64)[None]
    if name == "topk_scores":
        return -np.arange(K, dtype=np.float32)[None]
    return None


def _fake_http_client(monkeypatch, inputs, outputs, parameters=None, backend=None, on_infer=None, counting=False,
                      sequence_batching=None):
    """tritonclient.http.InferenceServerClient replaced by a stand-in serving one model's metadata (``inputs``,
    ``outputs``: name -> (datatype, shape)) and config (``parameters``, ``backend``, ``sequence_batching``: the
    config's block, None: none); each infer call is recorded
    (input names, ``arrays``: each input's data, and the keyword arguments); ``fail[0]``, when set, is the message of
    the InferenceServerException the next calls raise (or the exception itself: a timeout, a gRPC status).
    ``on_infer(call)``: called with each recorded call before it answers (it may hold the call: :class:`_Race`);
    ``counting``: a state output ``X_out`` is the state input ``X`` sent plus 1 (else zeros)."""
    from tritonclient.utils import InferenceServerException

    calls, fail = [], [None]

    def answer(sent, name):
        if counting and name.endswith("_out") and name[:-4] in sent["arrays"]:
            return sent["arrays"][name[:-4]] + 1
        if name in ("topk_ids", "topk_scores"):
            return _topk(name)
        if name == "live_sequences":
            return np.array([[len(calls)]], np.int64)
        return np.zeros([1] + [abs(d) for d in outputs[name][1][1:]], np.float32)   # a state output

    def infer(model_name, ins, requested, **kw):
        call = {"inputs": [i.name() for i in ins], **kw, "arrays": sent_arrays("http", ins)}
        calls.append(call)
        if on_infer is not None:
            on_infer(call)
        if isinstance(fail[0], BaseException):
            raise fail[0]
        if fail[0]:
            raise InferenceServerException(fail[0])
        return FakeResult(lambda name: answer(call, name))

    config = {"parameters": {k: {"string_value": v} for k, v in (parameters or {}).items()},
              **({"backend": backend} if backend else {}),
              **({"sequence_batching": sequence_batching} if sequence_batching is not None else {})}
    install_client(monkeypatch, "http", inputs, outputs, config, infer, close=lambda: calls.append("close"))
    return calls, fail


STEP_IO = ({"item_ids": ("INT64", (-1, -1))},
           {"topk_ids": ("INT64", (-1, K)), "topk_scores": ("FP32", (-1, K)), "live_sequences": ("INT64", (-1, 1))})


def test_sequence_ids_are_positive_int64(monkeypatch):
    from export.triton_client import sequence_id

    assert sequence_id(1) == 1 and sequence_id(2 ** 63 - 1) == 2 ** 63 - 1 and sequence_id(np.int64(5)) == 5
    for bad in (0, -3, 2 ** 63):
        with pytest.raises(ValueError, match=r"integer sequence ids must be in 1 \.\. 2\*\*63-1"):
            sequence_id(bad)
    with pytest.raises(TypeError, match="not a bool"):
        sequence_id(True)
    ids = [sequence_id(f"user-{i}") for i in range(2000)]
    assert all(1 <= v < 2 ** 63 for v in ids) and len(set(ids)) == len(ids)
    assert sequence_id("user-1") == ids[1]                               # stable


def test_client_sequence_flags_follow_the_sequence(monkeypatch):
    """start/end flags: the first call of a sequence starts it, the next ones continue it, an ended sequence starts
    again; end() sends the END whether or not the sequence is live here (another client may have started it); a
    continuation the server has no state for marks it gone (the next call says to prime it, sending nothing) while a
    continuation refused for another reason (a bad item) leaves it live; the client refuses an item index n_items
    before sending."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import TritonRecommendError, TritonRecommender, sequence_id

    calls, fail = _fake_http_client(monkeypatch, *STEP_IO)
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS)

    def flags():
        return [(c["sequence_id"], c["sequence_start"], c["sequence_end"]) for c in calls]

    u = sequence_id("u")
    rec.recommend("u", [1])
    rec.recommend("u", [2], end=True)
    rec.recommend("u", [3])
    assert flags() == [(u, True, False), (u, False, True), (u, True, False)]
    calls.clear()
    rec.end("u")
    assert flags() == [(u, False, True)]
    with pytest.raises(ValueError, match=rf"item index {N_ITEMS} out of range 1\.\.{N_ITEMS - 1}"):
        rec.recommend("v", [N_ITEMS])
    calls.clear()
    rec.prime("v", [1, 2])
    fail[0] = "m: item index 500 is out of range 1..119"
    with pytest.raises(TritonRecommendError, match="out of range"):
        rec.recommend("v", [5])
    fail[0] = None
    rec.recommend("v", [6])                                              # still live: continued
    fail[0] = ("m: sequence 42 has no state on the server (it was never started, was ended, or stayed idle longer "
               "than 30 s); restart it with sequence_start=True and its history")
    with pytest.raises(TritonRecommendError, match="no state on the server"):
        rec.recommend("v", [7])
    fail[0] = None
    n = len(calls)
    with pytest.raises(TritonRecommendError, match=r"gone from the server .*call prime\(\)"):
        rec.recommend("v", [8])
    assert len(calls) == n
    rec.prime("v", [1, 2, 8])
    v = sequence_id("v")
    assert flags() == [(v, True, False), (v, False, False), (v, False, False), (v, False, False), (v, True, False)]
    # a sequence the server forgot, then end(): the END goes out (the server may hold it still), and the next event
    # starts it anew (it was refused as "gone" after such an end())
    fail[0] = "m: sequence 42 has no state on the server (it stayed idle)"
    with pytest.raises(TritonRecommendError, match="no state on the server"):
        rec.recommend("v", [9])
    fail[0] = None
    calls.clear()
    rec.end("v")
    rec.recommend("v", [10])
    assert flags() == [(v, False, True), (v, True, False)]
    # recommend_many over HTTP sends every event, the first refusal raised after (it stopped at the first refusal,
    # while gRPC sent them all: the caller could not tell which had been applied)
    calls.clear()
    fail[0] = "m: item index 500 is out of range 1..119"
    with pytest.raises(TritonRecommendError, match="out of range"):
        rec.recommend_many([("A", [1]), ("B", [2])])
    fail[0] = None
    assert [c["sequence_id"] for c in calls] == [sequence_id("A"), sequence_id("B")]


def test_client_checks_timestamps_and_honours_k(monkeypatch):
    """Time-aware models: negative, non-finite or decreasing timestamps are refused before sending; the explicit-state
    client refuses a first new timestamp before the stored state's last_ts (even when later ones are after it), and
    returns k items when asked for k."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import ExplicitStateRecommender, TritonRecommender

    ins, outs = dict(STEP_IO[0], timestamps=("FP64", (-1, -1))), STEP_IO[1]
    calls, _ = _fake_http_client(monkeypatch, ins, outs)
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS)
    for ts, msg in (([-1.0, 5.0], "finite and non-negative"), ([np.nan, 5.0], "finite and non-negative"),
                    ([9.0, 5.0], r"decrease \(5\.0 after 9\.0\)"), ([5.0], "^got 1 timestamp for 2 items$"),
                    ([5.0, 6.0, 7.0], "^got 3 timestamps for 2 items$")):
        with pytest.raises(ValueError, match=msg):
            rec.recommend("u", [1, 2], timestamps=ts)
    with pytest.raises(ValueError, match="^got 2 timestamps for 1 item$"):
        rec.recommend("u", [1], timestamps=[1.0, 2.0])
    assert calls == []
    rec.recommend("u", [1, 2], timestamps=[0.0, 5.0])
    assert calls[-1]["inputs"] == ["item_ids", "timestamps"]

    ins = {**ins, "last_ts": ("FP64", (-1, 1)), "conv_state": ("FP32", (-1, 2, 3))}
    outs = {**STEP_IO[1], "last_ts_out": ("FP64", (-1, 1)), "conv_state_out": ("FP32", (-1, 2, 3))}
    calls, _ = _fake_http_client(monkeypatch, ins, outs, {"state_init": json.dumps({"last_ts": -1.0,
                                                                                    "conv_state": 0.0})})
    store = {"u": {"last_ts": np.array([[5000.0]]), "conv_state": np.zeros((1, 2, 3), np.float32)}}
    rec = ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http", store=store)
    assert rec.initial_state()["last_ts"].tolist() == [[-1.0]]
    calls.clear()
    with pytest.raises(ValueError, match=r"go back in time .*4000\.0 < last_ts 5000\.0"):
        rec.recommend("u", [1, 2], timestamps=[4000.0, 6000.0])
    assert calls == []
    top, scores = rec.recommend_with_scores("u", [1], timestamps=[5000.0], k=3)
    assert top == [1, 2, 3] and len(scores) == 3 and len(rec.recommend("new-user", [1], timestamps=[1.0], k=2)) == 2


def test_clients_of_models_without_time_refuse_timestamps(monkeypatch):
    """A model that reads no time: timestamps given to the clients were dropped without a word (as the PyTorch models
    and ``export.runtime`` did); now they are refused before anything is sent, for one event and in recommend_many."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import TritonRecommender

    calls, _ = _fake_http_client(monkeypatch, *STEP_IO)
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS)
    with pytest.raises(ValueError, match="model 'm' does not use timestamps"):
        rec.recommend("u", [1, 2], timestamps=[0.0, 5.0])
    with pytest.raises(ValueError, match=r"event 1 \(sequence 'v'\): model 'm' does not use timestamps"):
        rec.recommend_many([("u", [1]), ("v", [2], [5.0])])
    assert calls == []
    rec.recommend("u", [1, 2])
    assert calls[-1]["inputs"] == ["item_ids"]


def test_explicit_state_client_refuses_a_state_written_by_another_model(monkeypatch):
    """Stored states carry the fingerprint of the model that wrote them; one with another fingerprint (a retrained
    model) or none (stored before the tags) is refused before anything is sent, or, with on_stale="restart", replaced
    by the initial state. A repository without the fingerprint (written before it existed) checks nothing."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import FINGERPRINT_KEY, ExplicitStateRecommender, StaleStateError

    ins = {**STEP_IO[0], "h": ("FP32", (-1, 2))}
    outs = {**STEP_IO[1], "h_out": ("FP32", (-1, 2))}
    now, before = "sha256:" + "b" * 64, "sha256:" + "a" * 64
    calls, _ = _fake_http_client(monkeypatch, ins, outs, {"state_init": json.dumps({"h": 0.0}),
                                                          "state_fingerprint": now})
    h = np.ones((1, 2), np.float32)
    store = {"old": {"h": h, FINGERPRINT_KEY: np.array(before)}, "untagged": {"h": h},
             "current": {"h": h, FINGERPRINT_KEY: np.array(now)}}
    rec = ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http", store=store)
    for user, shown in (("old", "sha256:aaaaaaaaaaaaaaaa..."), ("untagged", "no fingerprint: stored before")):
        with pytest.raises(StaleStateError, match=re.escape(shown) + r".*prime\(user, history\)"):
            rec.recommend(user, [1])
    assert calls == [] and store["old"][FINGERPRINT_KEY] == before
    rec.prime("untagged", [1, 2, 3])                                  # the remedy: replay the history, one request
    assert len(calls) == 1 and str(store["untagged"][FINGERPRINT_KEY]) == now
    calls.clear()
    rec.recommend("current", [1])
    rec.recommend("new-user", [2])
    assert len(calls) == 2 and str(store["new-user"][FINGERPRINT_KEY]) == now and rec.restarted == 0
    restarting = ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http", store=store, on_stale="restart")
    restarting.recommend("old", [1])
    assert restarting.restarted == 1 and str(store["old"][FINGERPRINT_KEY]) == now
    with pytest.raises(ValueError, match="on_stale must be one of"):
        ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http", on_stale="ignore")
    calls, _ = _fake_http_client(monkeypatch, ins, outs, {"state_init": json.dumps({"h": 0.0})})
    legacy = ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http", store={"untagged": {"h": h}})
    legacy.recommend("untagged", [1])
    assert len(calls) == 1 and FINGERPRINT_KEY not in legacy.store["untagged"]


class _Race:
    """Forces two events of one sequence (or user) sent by two threads of one client to overlap, without timing: once
    :meth:`run` starts, the first request is held inside the fake server (``on_infer``) until the second event has
    either reached the server too (a client that lets them overlap) or asked for its turn (:meth:`watch`: the lock a
    client takes before it decides anything), and only then let go."""

    def __init__(self):
        self.armed, self.held = False, None
        self.first_in, self.second_reached, self.release = threading.Event(), threading.Event(), threading.Event()

    def on_infer(self, call):
        if self.armed and self.held is None:
            self.held = call
            self.first_in.set()
            assert self.release.wait(60), "the test never let the first request go"
        elif self.held is not None:
            self.second_reached.set()

    def watch(self, monkeypatch, obj, name):
        """``obj.name`` (a method returning the turn's context manager) tells when the second thread asks for it
        (a client without it sends the second event at once: it reaches the server)."""
        real = getattr(obj, name, None) if obj is not None else None
        if real is None:
            return

        def watched(*a, **kw):
            if threading.current_thread().name == "second":
                self.second_reached.set()
            return real(*a, **kw)

        monkeypatch.setattr(obj, name, watched)

    def run(self, first, second) -> list:
        """Run ``first()`` and ``second()`` in two threads, overlapping as above; the exceptions they raised."""
        errors = []

        def guarded(fn):
            try:
                fn()
            except Exception as e:                      # noqa: BLE001 -- handed to the test
                errors.append(e)

        self.armed = True
        a = threading.Thread(target=guarded, args=(first,), name="first", daemon=True)
        a.start()
        assert self.first_in.wait(60), "the first event never reached the server"
        b = threading.Thread(target=guarded, args=(second,), name="second", daemon=True)
        b.start()
        assert self.second_reached.wait(60), "the second event neither reached the server nor asked for its turn"
        self.release.set()
        a.join(60)
        b.join(60)
        assert not a.is_alive() and not b.is_alive(), "an event never returned"
        return errors


def test_concurrent_first_events_of_a_sequence_start_it_once(monkeypatch):
    """Threads sharing a TritonRecommender (gRPC is thread-safe; recommend_many itself sends from a pool) sent a new
    sequence's first events at once: each decided START before any answer came back, so each restarted the sequence
    on the server and every event but the last was lost, without an error. Now the events of one sequence take turns
    from deciding START until their answer: the second continues the sequence the first started."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import TritonRecommender, sequence_id

    race = _Race()
    calls, _ = _fake_http_client(monkeypatch, *STEP_IO, on_infer=race.on_infer)
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS)
    race.watch(monkeypatch, rec, "_turn")
    assert race.run(lambda: rec.recommend("u", [1]), lambda: rec.recommend("u", [2])) == []
    u = sequence_id("u")
    assert [(c["sequence_id"], c["sequence_start"], c["arrays"]["item_ids"].tolist()) for c in calls] == [
        (u, True, [[1]]), (u, False, [[2]])]
    assert rec._turns == {}                                      # nothing kept per sequence once its events ended


def test_concurrent_events_of_a_gaps_sequence_take_their_gap_from_the_previous_one(monkeypatch):
    """A --time-input gaps model behind Triton: the client keeps each live sequence's last timestamp and sends the
    first gap from it. Two threads sending events of one sequence at once both read the same last timestamp (it is
    updated when an answer comes), so the later event's gap spanned both (time features wrong, no error). Now the
    second event waits for the first's answer and takes its gap from the first's timestamp."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import TritonRecommender

    race = _Race()
    ins = dict(STEP_IO[0], time_gaps=("FP32", (-1, -1)))
    calls, _ = _fake_http_client(monkeypatch, ins, STEP_IO[1], on_infer=race.on_infer)
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS)
    race.watch(monkeypatch, rec, "_turn")
    t0, day = 1.6e9, 86400.0
    rec.prime("u", [1, 2], timestamps=[t0 - day, t0])
    assert race.run(lambda: rec.recommend("u", [3], timestamps=[t0 + day]),
                    lambda: rec.recommend("u", [4], timestamps=[t0 + 2 * day])) == []
    assert [c["arrays"]["time_gaps"].tolist() for c in calls] == [[[0.0, day]], [[day]], [[day]]]
    assert [c["sequence_start"] for c in calls] == [True, False, False]


def test_threads_sharing_an_explicit_state_client_lose_no_event_of_a_user(monkeypatch):
    """ExplicitStateRecommender read a user's state, sent it and stored the answer with no lock: two threads with
    events of one user both read the same state and the second store overwrote the first (an event lost, no error),
    unlike UserStateRecommender, whose per-user locks it now shares (export.state_store.UserLocks). The fake model
    adds 1 to the state per event, so the stored state counts the events applied."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import ExplicitStateRecommender

    race = _Race()
    ins, outs = {**STEP_IO[0], "h": ("FP32", (-1, 2))}, {**STEP_IO[1], "h_out": ("FP32", (-1, 2))}
    calls, _ = _fake_http_client(monkeypatch, ins, outs, {"state_init": json.dumps({"h": 0.0})},
                                 on_infer=race.on_infer, counting=True)
    store = {}
    rec = ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http", store=store)
    race.watch(monkeypatch, getattr(rec, "_locks", None), "holding")
    assert race.run(lambda: rec.recommend("u", [1]), lambda: rec.recommend("u", [2])) == []
    assert [c["arrays"]["h"].tolist() for c in calls] == [[[0.0, 0.0]], [[1.0, 1.0]]]
    assert store["u"]["h"].tolist() == [[2.0, 2.0]]


def test_first_event_after_the_server_forgot_a_sequence_says_to_prime_it(monkeypatch):
    """After Triton's idle timeout (or a server restart) the first continuation got Triton's raw text ("must specify
    the START flag", a hashed correlation id): only the next try said what had happened and what to do. Now the first
    refusal says it too, naming the caller's id, with the server's words after."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import TritonRecommendError, TritonRecommender, sequence_id

    calls, fail = _fake_http_client(monkeypatch, *STEP_IO)
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS)
    rec.prime("idle", [1, 2])
    fail[0] = (f"inference request for sequence {sequence_id('idle')} to model 'm' must specify the START flag on "
               "the first request of the sequence")
    gone = (r"sequence 'idle' is gone from the server \(idle timeout or server restart\): call prime\(\) with its "
            r"history")
    with pytest.raises(TritonRecommendError, match=gone + r" \(the server: inference request .*START flag"):
        rec.recommend("idle", [3])
    fail[0] = None
    with pytest.raises(TritonRecommendError, match=gone):           # the next try: refused before sending
        rec.recommend("idle", [3])
    assert len(calls) == 2


def test_client_bookkeeping_is_bounded_by_the_servers_idle_timeout(monkeypatch):
    """TritonRecommender kept every sequence it started and did not end in ``_live`` (and ``_last_ts``) forever,
    while the server drops a sequence idle for ``max_sequence_idle_microseconds``: a soak that left half of 51,008
    sequences to the idle timeout ended with 28,385 of them in the client against ~1,000 on the server. Now a
    sequence idle longer than that (the client's own clock, read from the config) leaves the live ones for the
    bounded ``_expired`` (``max_expired``), keeping what it needs: its next event still goes without START (the
    server decides; a refusal marks it gone, and its next events are refused unsent), an uncertain one idles out as
    gone (still needs a prime); only one forgotten past the bound starts anew (the documented trade-off)."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import TritonRecommendError, TritonRecommender, sequence_id

    ins = {**STEP_IO[0], "timestamps": ("FP64", (-1, -1))}
    calls, fail = _fake_http_client(monkeypatch, ins, STEP_IO[1],
                                    sequence_batching={"max_sequence_idle_microseconds": "5000000"})
    with pytest.raises(ValueError, match="max_expired must be an int >= 0 or None"):
        TritonRecommender("127.0.0.1:1", "m", protocol="http", max_expired=-1)
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS, max_expired=3)
    now = [1000.0]
    rec._clock = lambda: now[0]
    assert rec.sequence_idle_s == 5.0
    sid = {f"u{i}": sequence_id(f"u{i}") for i in range(10)}

    def sent():
        got = [(c["sequence_id"], c["sequence_start"]) for c in calls]
        calls.clear()
        return got

    for i in range(10):                                   # u_i's last answer at 1000 + i
        rec.recommend(f"u{i}", [1], timestamps=[50.0 + i])
        now[0] += 1.0
    sent()
    rec.recommend("w", [1], timestamps=[1.0])             # at 1010: u0..u4 idle > 5 s; u2..u4 kept (max_expired=3)
    assert list(rec._live) == [sid[f"u{i}"] for i in range(5, 10)] + [sequence_id("w")]
    assert list(rec._expired) == [sid["u2"], sid["u3"], sid["u4"]] and not any(rec._expired.values())
    assert set(rec._last_ts) == set(rec._live) | set(rec._expired)
    sent()
    rec.recommend("u3", [2], timestamps=[60.0])           # idled out, but the server decides: no START
    assert sent() == [(sid["u3"], False)] and sid["u3"] in rec._live and sid["u3"] not in rec._expired
    with pytest.raises(ValueError, match="go back in time"):
        rec.recommend("u4", [2], timestamps=[1.0])        # its last timestamp is still known
    fail[0] = "m: sequence 42 has no state on the server (it stayed idle longer than 5 s)"
    with pytest.raises(TritonRecommendError, match="'u4' is gone from the server"):
        rec.recommend("u4", [2], timestamps=[60.0])
    fail[0] = None
    assert rec._expired[sid["u4"]] is True and sid["u4"] not in rec._last_ts
    sent()
    with pytest.raises(TritonRecommendError, match=r"'u4' is gone from the server .*prime\(\)"):
        rec.recommend("u4", [2], timestamps=[60.0])       # refused unsent
    assert sent() == []
    rec.recommend("u0", [2], timestamps=[60.0])           # forgotten past max_expired: new to the client again
    assert sent() == [(sid["u0"], True)]
    # a sequence whose request got no answer idles out as gone: still refused until primed
    fail[0] = ConnectionResetError("connection lost")
    with pytest.raises(TritonRecommendError, match="no answer"):
        rec.recommend("u5", [3], timestamps=[60.0])
    fail[0] = None
    now[0] += 6.0
    rec.recommend("u6", [3], timestamps=[60.0])
    assert rec._expired[sid["u5"]] is True and sid["u5"] not in rec._uncertain
    with pytest.raises(TritonRecommendError, match="'u5' is gone"):
        rec.recommend("u5", [3], timestamps=[61.0])
    rec.prime("u5", [1, 3], timestamps=[1.0, 2.0])
    assert sid["u5"] in rec._live and sid["u5"] not in rec._expired
    # a sequence with an event every 2 s stays live however long it lasts; the tables stay bounded: the live ones
    # by what was touched in the last 5 s (3 one-event sequences and "steady"), the idled-out ones by max_expired
    sent()
    for i in range(1000):
        rec.recommend_many([(f"s{i}", [1], [1.0]), ("steady", [1], [2.0 + i])])
        now[0] += 2.0
        assert i < 5 or (len(rec._live) == 4 and len(rec._expired) == 3 and len(rec._last_ts) == 7)
    steady = [start for s_, start in sent() if s_ == sequence_id("steady")]
    assert steady[0] is True and not any(steady[1:])
    rec.close()
    assert rec._live == {} and rec._expired == {} and rec._last_ts == {}


def _fake_grpc_client(monkeypatch, inputs, outputs):
    """tritonclient.grpc.InferenceServerClient replaced by a stand-in serving one model's metadata and answering
    every infer call with a fixed top-k; returns the list of what happened (``"infer"``, ``"close"``)."""
    log = []

    def answer(name):
        top = _topk(name)
        return np.zeros((1, 1), np.int64) if top is None else top

    def infer(model_name, ins, requested, **kw):
        log.append("infer")
        return FakeResult(answer)

    install_client(monkeypatch, "grpc", inputs, outputs,
                   {"sequence_batching": {"max_sequence_idle_microseconds": "600000000"}}, infer,
                   close=lambda: log.append("close"))
    return log


def test_triton_clients_close_their_pool_and_connection(monkeypatch):
    """The clients had no close(): recommend_many's thread pool (16 threads) and tritonclient's channel were freed
    only by the garbage collector (a soak's threads went 17 -> 19 until gc.collect()). close() shuts the pool down
    (its threads joined), closes the connection once, drops the bookkeeping and the explicit client's store;
    idempotent; a later call raises ClosedError; ``with`` closes."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.state_store import ClosedError
    from export.triton_client import ExplicitStateRecommender, TritonRecommender

    log = _fake_grpc_client(monkeypatch, *STEP_IO)
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="grpc", n_items=N_ITEMS, threads=3)
    rec.recommend_many([("a", [1]), ("b", [2]), ("c", [3])])
    workers = [t for t in threading.enumerate() if t.name.startswith("zoo-triton")]
    assert workers and all(t.is_alive() for t in workers) and len(rec._live) == 3
    rec.close()
    assert not any(t.is_alive() for t in workers) and log.count("close") == 1 and rec.closed and not rec._live
    rec.close()                                           # idempotent
    assert log.count("close") == 1
    with pytest.raises(ClosedError, match="TritonRecommender of model 'm' is closed"):
        rec.recommend_many([("a", [1]), ("b", [2])])
    with pytest.raises(ClosedError, match="is closed"):
        rec.recommend("a", [1])
    assert not [t for t in threading.enumerate() if t.name.startswith("zoo-triton") and t.is_alive()]
    with TritonRecommender("127.0.0.1:1", "m", protocol="grpc", n_items=N_ITEMS) as other:
        other.recommend("a", [1])
    assert other.closed and log.count("close") == 2

    ins, outs = {**STEP_IO[0], "h": ("FP32", (-1, 2))}, {**STEP_IO[1], "h_out": ("FP32", (-1, 2))}
    calls, _ = _fake_http_client(monkeypatch, ins, outs, {"state_init": json.dumps({"h": 0.0})})
    with ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http") as ex:
        ex.recommend("u", [1])
        store = ex.store
    assert calls.count("close") == 1 and "u" in store               # the store itself is the caller's
    ex.close()
    assert calls.count("close") == 1
    for call in (lambda: ex.recommend("u", [2]), lambda: ex.forget("u")):
        with pytest.raises(ClosedError, match="is closed"):
            call()


def test_explicit_state_client_refuses_a_stored_state_of_another_layout_naming_the_user(monkeypatch):
    """A stored state lacking a state input, or holding one of another dtype or shape (a repository without
    fingerprint accepts every state unchecked, so the fingerprint does not catch them) failed with a bare KeyError,
    tritonclient's datatype error or numpy's reshape error, none naming the user, and on_stale="restart" did not
    apply. Now each is a StaleStateError naming the user and the tensor, before anything is sent; on_stale="restart"
    starts such users afresh."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import ExplicitStateRecommender, StaleStateError

    ins = {**STEP_IO[0], "h": ("FP32", (-1, 2, 4))}
    outs = {**STEP_IO[1], "h_out": ("FP32", (-1, 2, 4))}
    calls, _ = _fake_http_client(monkeypatch, ins, outs, {"state_init": json.dumps({"h": 0.0})})
    good = np.ones((1, 2, 4), np.float32)

    def corrupt():
        return {"missing": {"other": good}, "dtype": {"h": good.astype(np.float64)},
                "shape": {"h": np.ones((1, 2, 3), np.float32)}, "good": {"h": good}}

    store = corrupt()
    rec = ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http", store=store)
    for user, what in (("missing", r"lacks \['h'\]"), ("dtype", r"has 'h' of dtype float64, not float32 \(FP32\)"),
                       ("shape", r"has 'h' of shape \[1, 2, 3\], not \[1, 2, 4\]")):
        with pytest.raises(StaleStateError, match=rf"stored state of user '{user}' {what}: .*prime\(user, history\)"):
            rec.recommend(user, [1])
        with pytest.raises(StaleStateError, match=rf"user '{user}'"):
            rec.recommend_many([("good", [1]), (user, [2])])
    assert calls == [] and rec.restarted == 0
    restarting = ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http", store=corrupt(), on_stale="restart")
    restarting.recommend_many([("good", [1]), ("missing", [2]), ("dtype", [3]), ("shape", [4])])
    assert restarting.restarted == 3                        # one row a request: the fake's config has no batching
    assert [c["arrays"]["h"].tolist() for c in calls] == [[good[0].tolist()]] + [[np.zeros((2, 4)).tolist()]] * 3


# ================================================================================================ live server
@pytest.fixture(scope="module")
def mamba_scores_export(mamba, tmp_path_factory):
    """The mamba fixture's step graph exported with --scores (all scores beside the top-k)."""
    d = tmp_path_factory.mktemp("mamba_scores_export")
    export_model(mamba, d, topk=K, with_scores=True, verify=False)
    mamba.item_vocab.save(str(d))
    return d


@pytest.fixture(scope="module")
def live_server(mamba_export, lru_seen_export, mamba_cand_export, mamba_scores_export, tmp_path_factory):
    from export import triton_server as S

    try:
        S.server_python()
    except RuntimeError as e:
        pytest.skip(str(e))
    repo = tmp_path_factory.mktemp("triton_repo")
    T.write_repository(mamba_export, repo, name="m4r", backend="python",
                       vocab_path=str(mamba_export / "item_vocab.json"), idle_timeout_s=30, max_batch_size=32,
                       queue_delay_us=1000)
    T.write_repository(mamba_export, repo, name="m4r_short", backend="python", idle_timeout_s=3.0,
                       vocab_path=str(mamba_export / "item_vocab.json"), max_batch_size=8)
    T.write_repository(mamba_export, repo, name="m4r_explicit", backend="python", state="explicit",
                       vocab_path=str(mamba_export / "item_vocab.json"), max_batch_size=32, queue_delay_us=1000)
    T.write_repository(lru_seen_export[1], repo, name="lru_seen", backend="python", idle_timeout_s=30,
                       max_batch_size=16, queue_delay_us=1000)
    T.write_repository(mamba_cand_export, repo, name="m4r_cand", backend="python", idle_timeout_s=30,
                       vocab_path=str(mamba_cand_export / "item_vocab.json"), max_batch_size=16, queue_delay_us=1000)
    T.write_repository(mamba_cand_export, repo, name="m4r_cand_explicit", backend="python", state="explicit",
                       vocab_path=str(mamba_cand_export / "item_vocab.json"), max_batch_size=16)
    T.write_repository(mamba_scores_export, repo, name="m4r_scores", backend="python", idle_timeout_s=30,
                       max_batch_size=8)
    try:
        h = S.start_server(repo, timeout=240)
    except RuntimeError as e:
        pytest.skip(f"the pytriton tritonserver could not start here: {e}")
    yield h, repo
    rc = h.stop()
    assert not h.alive(), "tritonserver still running after stop()"
    print(f"tritonserver stopped (status {rc})")


def _client(h, repo, protocol="grpc"):
    from export.triton_client import TritonRecommender

    url = h.grpc_url if protocol == "grpc" else h.http_url
    return TritonRecommender(url, "m4r", protocol=protocol, vocab=str(repo / "m4r" / "item_vocab.json"))


def test_live_interleaved_sequences_match_pytorch(live_server, mamba):
    h, repo = live_server
    rng = random.Random(1)
    n_seq, workers = 208, 8
    vocab = mamba.item_vocab
    # each sequence: a priming event of 1-4 items, then 2-5 events of 1-2 items; the last event ends it
    plans = {}
    for s in range(1, n_seq + 1):
        ev = [[rng.randrange(1, N_ITEMS) for _ in range(rng.randrange(1, 5))]]
        ev += [[rng.randrange(1, N_ITEMS) for _ in range(rng.choice([1, 1, 1, 2]))] for _ in range(rng.randrange(2, 6))]
        plans[s] = ev
    results = {s: [] for s in plans}
    errors = []

    def work(wid):
        try:
            cl = _client(h, repo, "grpc" if wid % 4 else "http")
            mine = [s for s in plans if s % workers == wid]
            pos = {s: 0 for s in mine}
            order = [s for s in mine for _ in plans[s]]
            random.Random(wid).shuffle(order)                 # interleave this worker's sequences
            for s in order:
                e = plans[s][pos[s]]
                last = pos[s] == len(plans[s]) - 1
                items = vocab.decode(e)
                top = cl.recommend(f"user-{s}", items, end=last) if pos[s] else cl.prime(f"user-{s}", items)
                results[s].append(top)
                pos[s] += 1
            cl.client.close()
        except Exception as ex:  # pragma: no cover - reported below
            errors.append(repr(ex))

    th = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    [t.start() for t in th]
    [t.join(600) for t in th]
    assert not errors, errors[:3]
    prefixes, served = [], []
    for s, ev in plans.items():
        acc = []
        for e, got in zip(ev, results[s], strict=True):
            acc = acc + e
            prefixes.append(list(acc))
            served.append(vocab.encode(got))
    assert len(served) == sum(len(e) for e in plans.values()) >= 600
    bad = [i for i, (got, (ri, rs)) in enumerate(zip(served, _reference_topk(mamba, prefixes), strict=True))
           if not _same_topk(got, ri, rs)]
    assert not bad, f"{len(bad)} of {len(served)} events differ from PyTorch, first at prefix {prefixes[bad[0]]}"
    # Triton really batched requests of different sequences together (inference_count > execution_count)
    cl = _client(h, repo)
    st = cl.client.get_inference_statistics("m4r", as_json=True)["model_stats"][0]
    n_inf, n_exec = int(st["inference_count"]), int(st["execution_count"])
    print(f"server: {n_inf} requests in {n_exec} model executions")
    assert n_inf >= len(served) and n_exec <= n_inf
    # every sequence ended: the server holds no state (a fresh sequence sees only itself)
    cl.prime("probe", vocab.decode([5, 6]))
    assert cl.last_live_sequences == 1
    cl.end("probe")
    assert cl.last_live_sequences == 0


def test_live_exclude_seen_sequences_never_get_their_history(live_server, lru_seen_export):
    """An --exclude-seen step graph behind the sequence batcher: the server keeps each sequence's ``seen`` state with
    its LRU state, so no event's top-k holds an item of that sequence's history, and the rest of the ranking is
    PyTorch's (full forward over the prefix, history masked)."""
    from export.triton_client import TritonRecommender

    model, _ = lru_seen_export
    h, repo = live_server
    cfg = _parse(repo / "lru_seen" / "config.pbtxt")
    assert "seen" in [s.input_name for s in cfg.sequence_batching.state]
    cl = TritonRecommender(h.grpc_url, "lru_seen", protocol="grpc")
    rng = random.Random(4)
    plans = {s: [[rng.randrange(1, N_ITEMS) for _ in range(rng.randrange(1, 6))]]
             + [[rng.randrange(1, N_ITEMS)] for _ in range(rng.randrange(3, 8))] for s in range(1, 25)}
    order = [s for s in plans for _ in plans[s]]
    rng.shuffle(order)                                      # interleaved sequences
    pos, served, prefixes, vectors = {s: 0 for s in plans}, [], [], []
    for s in order:
        e = plans[s][pos[s]]
        last = pos[s] == len(plans[s]) - 1
        got = cl.recommend(7000 + s, e, end=last) if pos[s] else cl.prime(7000 + s, e)
        prefixes.append([x for ev in plans[s][:pos[s] + 1] for x in ev])
        served.append(np.asarray(got))
        vectors.append(cl.last_user_vector)
        pos[s] += 1
    # the graph was exported with --user-vector too: each response's vector is the model's query vector of the prefix
    for p, v in zip(prefixes, vectors, strict=True):
        want = model.query_vectors(torch.tensor([p]))[0].numpy()
        np.testing.assert_allclose(v, want, atol=1e-4, rtol=0)
    assert all(not set(p) & set(g.tolist()) for p, g in zip(prefixes, served, strict=True))
    bad = [i for i, (got, (ri, rs)) in enumerate(zip(served, _reference_topk_unseen(model, prefixes), strict=True))
           if not _same_topk(got, ri, rs)]
    assert not bad, f"{len(bad)} of {len(served)} events differ from PyTorch, first at prefix {prefixes[bad[0]]}"
    # each call's own vector (what threads sharing the client read): the one event's, or one per event of a batch
    _, _, own = cl.recommend_with_scores("own", [5, 6], start=True, return_vector=True)
    np.testing.assert_allclose(own, model.query_vectors(torch.tensor([[5, 6]]))[0].numpy(), atol=1e-4, rtol=0)
    many = cl.recommend_many([("own", [7]), ("own2", [8, 9])], return_vectors=True)
    for (_, _, v), p in zip(many, [[5, 6, 7], [8, 9]], strict=True):
        np.testing.assert_allclose(v, model.query_vectors(torch.tensor([p]))[0].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(cl.last_user_vector, many[-1][2])
    cl.end("own")
    cl.end("own2")
    # a bare END answers no event: end() frees the state and keeps the vector of the sequence's last event
    cl.prime("probe", [3, 4])
    vector, live = cl.last_user_vector.copy(), cl.last_live_sequences
    cl.end("probe")
    np.testing.assert_array_equal(cl.last_user_vector, vector)
    assert cl.last_live_sequences == live - 1
    cl.client.close()


def test_live_restart_and_isolation(live_server, mamba):
    h, repo = live_server
    cl = _client(h, repo)
    v = mamba.item_vocab
    a, b = [3, 9, 27], [50, 51]
    ref = _reference_topk(mamba, [a, b, [40]])
    assert v.encode(cl.prime(1001, v.decode(a))) == list(ref[0][0])
    assert v.encode(cl.prime(1002, v.decode(b))) == list(ref[1][0])
    # restarting 1001 with START discards its old state (no state crosses sequences or restarts)
    assert v.encode(cl.recommend(1001, v.decode([40]), start=True)) == list(ref[2][0])
    before = cl.last_live_sequences
    cl.end(1001)
    assert cl.last_live_sequences == before - 1              # ending a sequence frees its state
    cl.end(1002)
    assert cl.last_live_sequences == before - 2


def test_live_errors_keep_server_serving(live_server, mamba):
    from export.triton_client import TritonRecommendError

    h, repo = live_server
    cl = _client(h, repo)
    with pytest.raises(UnknownItemError, match="not-an-item"):
        cl.recommend("u-err", ["not-an-item"])
    raw = _client(h, repo)
    raw.vocab, raw.n_items = None, None                       # bypass client-side checks: the server must check
    with pytest.raises(TritonRecommendError, match=r"out of range 1\.\.119"):
        raw.recommend(2001, [N_ITEMS + 5], start=True, end=True)
    with pytest.raises(TritonRecommendError, match="START"):
        raw.recommend(2002, [3], start=False)                 # continuation of an unknown sequence
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    gc = g.InferenceServerClient(h.grpc_url)
    x = g.InferInput("item_ids", [1, 2], "FP32")
    x.set_data_from_numpy(np.ones((1, 2), np.float32))
    with pytest.raises(InferenceServerException, match="(?i)data.?type|FP32|INT64"):
        gc.infer("m4r", [x], sequence_id=2003, sequence_start=True, sequence_end=True)
    y = g.InferInput("items", [1, 1], "INT64")
    y.set_data_from_numpy(np.ones((1, 1), np.int64))
    with pytest.raises(InferenceServerException):
        gc.infer("m4r", [y], sequence_id=2004, sequence_start=True, sequence_end=True)
    with pytest.raises(InferenceServerException, match="(?i)unknown model|not found"):
        gc.infer("no_such_model", [y])
    # still serving, and correct
    ref = _reference_topk(mamba, [[7, 8]])
    assert mamba.item_vocab.encode(cl.prime("after-errors", mamba.item_vocab.decode([7, 8]))) == list(ref[0][0])
    cl.end("after-errors")
    gc.close()
    assert h.alive()


def _BytesStore():
    """A store of bytes values (what Redis & co. hold), keyed by user id: the codec the generated READMEs recommend
    (``export.state_store.BytesStore``: a JSON header + the raw tensors)."""
    from export.state_store import BytesStore

    return BytesStore()


def test_live_explicit_state_with_client_side_store(live_server, mamba, mamba_export):
    from export.triton_client import ExplicitStateRecommender

    h, repo = live_server
    store = _BytesStore()
    cl = ExplicitStateRecommender(h.http_url, "m4r_explicit", protocol="http",
                                  vocab=str(repo / "m4r_explicit" / "item_vocab.json"), store=store)
    rng = random.Random(5)
    hist = {u: [] for u in range(12)}
    served, prefixes = [], []
    for _ in range(60):                                        # interleaved users, 1-2 items per event
        u = rng.randrange(12)
        new = [rng.randrange(1, N_ITEMS) for _ in range(rng.choice([1, 1, 2]))]
        hist[u] += new
        served.append(mamba.item_vocab.encode(cl.recommend(u, mamba.item_vocab.decode(new))))
        prefixes.append(list(hist[u]))
    for got, (ri, rs) in zip(served, _reference_topk(mamba, prefixes), strict=True):
        assert _same_topk(got, ri, rs)
    assert set(store.kv) == {u for u in hist if hist[u]} and all(len(v) < 20_000 for v in store.kv.values())
    # each stored state carries the fingerprint of the graph that wrote it (exported with the model)
    from export.triton_client import FINGERPRINT_KEY

    spec = json.loads((mamba_export / "state_spec.json").read_text())
    assert cl.fingerprint == spec["state_fingerprint"] and cl.fingerprint.startswith("sha256:")
    assert all(str(store.get(u)[FINGERPRINT_KEY]) == cl.fingerprint for u in store.kv)
    # prime: a whole history in one request, from the initial state whatever is stored (here the user's own state)
    u = max(hist, key=lambda x: len(hist[x]))
    primed = mamba.item_vocab.encode(cl.prime(u, mamba.item_vocab.decode(hist[u])))
    (ri, rs), = _reference_topk(mamba, [hist[u]])
    assert _same_topk(primed, ri, rs)
    cl.forget(0)
    assert store.get(0) is None


def test_live_one_store_serves_the_graph_in_process_and_behind_triton(live_server, mamba, mamba_export):
    """A bytes store shared by ``export.runtime.UserStateRecommender`` (ONNX Runtime in this process) and Triton's
    explicit-state model of the same export: users primed in one continue in the other, in both directions, and
    every event's top-k is PyTorch's full forward over the user's whole prefix."""
    from export.runtime import UserStateRecommender
    from export.triton_client import ExplicitStateRecommender

    h, repo = live_server
    v = mamba.item_vocab
    store = _BytesStore()
    local = UserStateRecommender(mamba_export, store=store)
    served = ExplicitStateRecommender(h.http_url, "m4r_explicit", protocol="http",
                                      vocab=str(repo / "m4r_explicit" / "item_vocab.json"), store=store)
    rng = random.Random(9)
    hist = {u: [] for u in range(8)}
    got, prefixes = [], []
    for n in range(48):                                     # each user alternates between the two
        u = rng.randrange(8)
        new = [rng.randrange(1, N_ITEMS) for _ in range(rng.choice([1, 2]))]
        hist[u] += new
        client = local if (n + u) % 2 else served
        got.append(v.encode(client.recommend(u, v.decode(new))))
        prefixes.append(list(hist[u]))
    for g, (ri, rs) in zip(got, _reference_topk(mamba, prefixes), strict=True):
        assert _same_topk(g, ri, rs)
    assert local.fingerprint == served.fingerprint


def test_live_explicit_state_on_a_shared_sqlite_store_keeps_an_event_committed_meanwhile(live_server, mamba,
                                                                                       mamba_export, tmp_path):
    """Triton's explicit-state client on a versioned store (``SQLiteStateStore``) shared with another process's
    recommender (here ONNX Runtime in this process, on its own handle of the file): when the other stores an event of
    the user between this client's read and its commit, the commit is refused and the request is sent again from the
    newer state -- the top-k is PyTorch's forward over the prefix with both events, each once."""
    from export.runtime import UserStateRecommender
    from export.state_store import SQLiteStateStore
    from store_worker import raced_sqlite
    from export.triton_client import ExplicitStateRecommender

    h, repo = live_server
    v = mamba.item_vocab
    db = tmp_path / "states.db"
    rival = UserStateRecommender(mamba_export, store=SQLiteStateStore(db))
    store = raced_sqlite(db, rival)
    served = ExplicitStateRecommender(h.http_url, "m4r_explicit", protocol="http",
                                      vocab=str(repo / "m4r_explicit" / "item_vocab.json"), store=store)
    served.prime("u", v.decode([3, 4]))
    store.rival_events = [("u", v.decode([5, 6]))]
    got = v.encode(served.recommend("u", v.decode([7])))
    (ri, rs), = _reference_topk(mamba, [[3, 4, 5, 6, 7]])
    assert _same_topk(got, ri, rs) and served.conflicts == 1
    (ri, rs), = _reference_topk(mamba, [[3, 4, 5, 6, 7, 8]])
    assert _same_topk(v.encode(rival.recommend("u", v.decode([8]))), ri, rs)


def test_live_explicit_state_recommend_many_sends_users_as_batch_rows(live_server, mamba):
    """``ExplicitStateRecommender.recommend_many``: the events of a call with as many new items go as the rows of
    one request (at most ``max_batch_size`` = 32 rows: 40 users take two), their states stacked; every event's top-k
    is PyTorch's full forward over that user's prefix, and the stored states continue one at a time."""
    from export.triton_client import ExplicitStateRecommender

    h, repo = live_server
    v = mamba.item_vocab
    cl = ExplicitStateRecommender(h.http_url, "m4r_explicit", protocol="http",
                                  vocab=str(repo / "m4r_explicit" / "item_vocab.json"), store=_BytesStore())
    assert cl.max_batch == 32
    sent = []
    infer = cl.client.infer
    cl.client.infer = lambda *a, **kw: sent.append(a[1][0].shape()) or infer(*a, **kw)
    rng = random.Random(12)
    hist = {u: [] for u in range(40)}
    served, prefixes = [], []
    for rnd in range(3):
        events = []
        for u in hist:
            new = [rng.randrange(1, N_ITEMS) for _ in range(1 if rnd else rng.choice([1, 3]))]
            hist[u] += new
            events.append((u, v.decode(new)))
            prefixes.append(list(hist[u]))
        served += [v.encode(items) for items, _ in cl.recommend_many(events, start=rnd == 0)]
    for got, (ri, rs) in zip(served, _reference_topk(mamba, prefixes), strict=True):
        assert _same_topk(got, ri, rs)
    assert all(b <= 32 for b, _ in sent) and sum(b for b, _ in sent) == 3 * 40, sent   # every event once, as a row
    assert sent[-2:] == [[32, 1], [8, 1]]                           # 40 one-item events: two requests
    (ri, rs), = _reference_topk(mamba, [hist[7] + [9]])
    assert _same_topk(v.encode(cl.recommend(7, v.decode([9]))), ri, rs)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_live_implicit_state_recommend_many_matches_pytorch(live_server, mamba, protocol):
    """``TritonRecommender.recommend_many``: twenty sequences' events a call (gRPC: in flight together, so the
    sequence batcher may run them as one batch; HTTP: one after another), sequences started on their first event;
    every event's top-k is PyTorch's full forward over that sequence's prefix. A call with an unknown id or a
    sequence twice sends nothing."""
    h, repo = live_server
    v = mamba.item_vocab
    cl = _client(h, repo, protocol)
    rng = random.Random(21)
    users = [f"many-{protocol}-{u}" for u in range(20)]
    hist = {u: [] for u in users}
    served, prefixes = [], []
    for rnd in range(4):
        events = []
        for u in users:
            new = [rng.randrange(1, N_ITEMS) for _ in range(rng.choice([1, 3]) if rnd == 0 else 1)]
            hist[u] += new
            events.append((u, v.decode(new)))
            prefixes.append(list(hist[u]))
        served += [v.encode(items) for items, _ in cl.recommend_many(events)]
    for got, (ri, rs) in zip(served, _reference_topk(mamba, prefixes), strict=True):
        assert _same_topk(got, ri, rs)
    live = dict(cl._live)                                        # sequence -> its last answer's time
    with pytest.raises(ValueError, match="two events"):
        cl.recommend_many([(users[0], v.decode([1])), (users[0], v.decode([2]))])
    with pytest.raises(Exception, match="unknown|not in"):
        cl.recommend_many([(users[1], v.decode([1])), (users[2], ["no-such-item"])])
    assert cl._live == live
    (ri, rs), = _reference_topk(mamba, [hist[users[1]] + [5]])      # nothing of the refused calls was sent
    assert _same_topk(v.encode(cl.recommend(users[1], v.decode([5]))), ri, rs)
    for u in users:
        cl.end(u)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_live_candidates_through_a_real_server(live_server, mamba, protocol):
    """A --candidates model on a real tritonserver: TritonRecommender (implicit state) and ExplicitStateRecommender
    send each event's candidates as external ids; the answers are PyTorch's top-k among them (fewer when fewer are
    listed), an event without candidates ranks the whole catalogue, and an unknown candidate sends nothing."""
    from export.triton_client import ExplicitStateRecommender, TritonRecommender

    h, repo = live_server
    v = mamba.item_vocab
    url = h.grpc_url if protocol == "grpc" else h.http_url
    vocab = str(repo / "m4r_cand" / "item_vocab.json")
    cl = TritonRecommender(url, "m4r_cand", protocol=protocol, vocab=vocab)
    ex = ExplicitStateRecommender(url, "m4r_cand_explicit", protocol=protocol, vocab=vocab)
    assert cl.has_candidates and ex.has_candidates and ex.state_names == ["conv_state", "ssm_state"]
    rng = random.Random(5)
    hist, cands = [rng.randrange(1, N_ITEMS) for _ in range(6)], [rng.randrange(1, N_ITEMS) for _ in range(15)]
    user = f"cand-{protocol}"
    for client in (cl, ex):
        got, scores = client.recommend_with_scores(user, v.decode(hist), candidates=v.decode(cands), start=True)
        (ids, sc), = _reference_topk_among(mamba, [hist], [cands])
        assert _same_topk(v.encode(got), ids, sc) and len(got) == K and np.isfinite(scores).all()
        few = client.recommend(user, v.decode([4]), candidates=v.decode([7, 8, 9]))
        assert sorted(v.encode(few)) == [7, 8, 9]
        (ri, rs), = _reference_topk(mamba, [hist + [4, 5]])
        assert _same_topk(v.encode(client.recommend(user, v.decode([5]))), ri, rs)   # the states went on
        with pytest.raises(Exception, match="unknown|not in"):
            client.recommend(user, v.decode([6]), candidates=["no-such-item"])
    (ri, rs), = _reference_topk(mamba, [hist + [4, 5, 6]])      # nothing of the refused calls was sent
    assert _same_topk(v.encode(cl.recommend(user, v.decode([6]))), ri, rs)
    cl.end(user)
    plain = _client(h, repo, protocol)
    with pytest.raises(ValueError, match="has no candidates input"):
        plain.recommend("x", v.decode([1]), candidates=v.decode([2]))


def test_live_idle_sequence_is_dropped_and_must_be_reprimed(live_server, mamba):
    import time

    from export.triton_client import TritonRecommendError, TritonRecommender

    h, repo = live_server
    v = mamba.item_vocab
    cl = TritonRecommender(h.grpc_url, "m4r_short", protocol="grpc", vocab=v)
    cl.prime("idle-user", v.decode([4, 5, 6]))
    assert cl.last_live_sequences == 1
    time.sleep(7.0)                       # > max_sequence_idle_microseconds (3 s: under a loaded machine the calls
    #                                       below, each well under it, must not let the re-primed sequence expire)
    with pytest.raises(TritonRecommendError, match="START"):
        cl.recommend("idle-user", v.decode([7]))
    with pytest.raises(TritonRecommendError, match="prime"):  # never silently continues from an empty state
        cl.recommend("idle-user", v.decode([7]))
    top = cl.prime("idle-user", v.decode([4, 5, 6, 7]))
    assert v.encode(top) == list(_reference_topk(mamba, [[4, 5, 6, 7]])[0][0])
    assert cl.last_live_sequences == 1                         # the expired state was freed server-side too
    cl.end("idle-user")
    assert cl.last_live_sequences == 0


# ================================================================ TiM4Rec-causal / TiM4Rec: float64 time on Triton
TC_ITEMS = 60


def _time_sensitive(model, scale=1.0, seed=0):
    """Random tiny TiM4Rec(-causal) models barely read time: perturb the projections, convs and time path and set
    softplus(dt_bias) ~ 0.5..1 so the time gaps move the scores (as tests/test_export_onnx.py does, more strongly:
    the first event's gap -- 0 after last_ts = -1, ~1e9 s after a wrong 0 -- must move the priming answers far more
    than the score tolerance), then spread the item embeddings so the top-k is meaningful."""
    g = torch.Generator().manual_seed(seed)
    perturb_time_path(model, scale, g)
    with torch.no_grad():
        model.item_embedding.weight.normal_(0, 1.0, generator=g)
    return model.eval()


def _tim4rec_causal():
    from zoo.models.tim4rec_causal import TiM4RecCausalConfig, TiM4RecCausalModel

    torch.manual_seed(3)
    m = _time_sensitive(TiM4RecCausalModel(TiM4RecCausalConfig(
        n_items=TC_ITEMS, hidden_size=16, num_layers=2, d_state=8, head_dim=8, max_seq_length=20)))
    m.set_item_vocab(ItemVocab([f"t{i}" for i in range(1, TC_ITEMS)]))
    return m


def _ts(rng, n, start=None):
    """``n`` non-decreasing float64 Unix seconds (gaps 0 s .. 30 days; never representable in float32)."""
    t = float(start if start is not None else rng.integers(1_300_000_000, 1_700_000_000)) + 0.5
    out = []
    for _ in range(n):
        t += float(rng.choice([0, rng.integers(1, 120), rng.integers(600, 7200), rng.integers(86_400, 2_592_000)]))
        out.append(t)
    return out


def _plans(seed, n_users, max_prime=12, n_events=5):
    """user -> [(items, timestamps)]: a priming history (3..max_prime items), then ``n_events`` single events."""
    rng = np.random.default_rng(seed)
    plans = {}
    for u in range(n_users):
        n0 = int(rng.integers(3, max_prime + 1))
        ts = _ts(rng, n0 + n_events)
        items = [int(x) for x in rng.integers(1, TC_ITEMS, size=n0 + n_events)]
        plans[u] = [(items[:n0], ts[:n0])] + [([items[i]], [ts[i]]) for i in range(n0, n0 + n_events)]
    return plans


def _step_reference(model, plan, last_ts_init=None):
    """PyTorch ``model.step`` along one user's events -> per event ``(scores [n_items] with [0] = -inf, state)``."""
    st = model.init_state(1)
    if last_ts_init is not None:
        st["last_ts"] = torch.full_like(st["last_ts"], last_ts_init)
    out = []
    with torch.no_grad():
        for items, ts in plan:
            logits, st = model.step(torch.tensor([items]), st, torch.tensor([ts], dtype=torch.float64))
            sc = logits[0].float().numpy().copy()
            sc[0] = -np.inf
            out.append((sc, {k: v.numpy() for k, v in st.items()}))
    return out


def _check_stored_time_states(store, plans, refs, client, vocab):
    """After a time-aware explicit-state run: each user's stored float64 last_ts is their last event's timestamp and
    the SSD state PyTorch's; an event before it is refused."""
    for u, plan in plans.items():
        st = store.get(u)
        assert st["last_ts"].dtype == np.float64 and st["last_ts"][0, 0] == plan[-1][1][-1]
        np.testing.assert_allclose(st["ssm_state"][0], refs[u][-1][1]["ssm_state"][0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="go back in time"):
        client.recommend(0, vocab.decode([3]), timestamps=[plans[0][-1][1][-1] - 60])


def _check_served(served, refs, what):
    """Top-K ids equal PyTorch's (or a near-tie swap) and the served scores equal PyTorch's at those ids (1e-4)."""
    worst = 0.0
    for (ids, scores), (ref, _) in zip(served, refs, strict=True):
        ref_ids = np.argsort(-ref, kind="stable")[:K]
        assert _same_topk(ids, ref_ids, ref), (what, ids, ref_ids)
        worst = max(worst, float(np.abs(np.asarray(scores) - ref[np.asarray(ids)]).max()))
    assert worst <= 1e-4, f"{what}: max abs score error {worst:.2e}"
    print(f"{what}: {len(served)} events, top-{K} as PyTorch, max abs score error {worst:.1e}")
    return worst


@pytest.fixture(scope="module")
def tc_model():
    return _tim4rec_causal()


@pytest.fixture(scope="module")
def tc_export(tc_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("tc_export")
    export_model(tc_model, d, topk=K, verify=False)
    tc_model.item_vocab.save(str(d))
    return d


@pytest.fixture(scope="module")
def tc_gaps_export(tc_model, tmp_path_factory):
    """The TiM4Rec-causal fixture exported in the TensorRT-compatible form (``--time-input gaps``: float32
    ``time_gaps``, no ``last_ts`` state; what export.trt builds)."""
    d = tmp_path_factory.mktemp("tc_gaps_export")
    export_model(tc_model, d, topk=K, verify=False, time_input="gaps")
    tc_model.item_vocab.save(str(d))
    return d


@pytest.fixture(scope="module")
def tim4rec_window_export(tmp_path_factory):
    from zoo.models.tim4rec import TiM4RecConfig, TiM4RecModel

    torch.manual_seed(4)
    m = _time_sensitive(TiM4RecModel(TiM4RecConfig(n_items=TC_ITEMS, hidden_size=16, max_seq_length=20,
                                                   chunk_size=4)), seed=1)
    d = tmp_path_factory.mktemp("tim4rec_window")
    export_model(m, d, kind="window", topk=K, verify=False)
    return m, d


def test_tim4rec_causal_configs_declare_float64_and_initial_state(tc_export, tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc

    spec = json.loads((tc_export / "state_spec.json").read_text())
    assert T.float64_tensors(spec) == ["timestamps", "last_ts", "last_ts_out"]
    blocks = {}
    for backend, state in [("onnxruntime", "implicit"), ("onnxruntime", "explicit"), ("python", "implicit"),
                           ("python", "explicit")]:
        mdir = T.write_repository(tc_export, tmp_path / backend, backend=backend, state=state)
        text = (mdir / "config.pbtxt").read_text()
        cfg = _parse(mdir / "config.pbtxt")
        types = {t.name: mc.DataType.Name(t.data_type) for t in list(cfg.input) + list(cfg.output)}
        assert types["timestamps"] == "TYPE_FP64" and types["item_ids"] == "TYPE_INT64"
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert json.loads(params["state_init"]) == {"conv_state": 0.0, "ssm_state": 0.0, "time_conv_state": 0.0,
                                                    "last_ts": -1.0}
        assert params["state_fingerprint"] == spec["state_fingerprint"]        # the explicit-state client's tag
        readme = (mdir / "README.md").read_text()
        assert "float64" in readme and "timestamps=" in readme
        if state == "explicit":
            assert types["last_ts"] == types["last_ts_out"] == "TYPE_FP64" and types["ssm_state"] == "TYPE_FP32"
            assert "-1" in readme                                   # the store recipe names last_ts's initial value
            continue
        states = {st.input_name: st for st in cfg.sequence_batching.state}
        assert list(states) == ["conv_state", "ssm_state", "time_conv_state", "last_ts"]
        lt = states["last_ts"]
        assert (mc.DataType.Name(lt.data_type), list(lt.dims), lt.output_name) == ("TYPE_FP64", [1], "last_ts_out")
        init = lt.initial_state[0]
        assert init.WhichOneof("state_data") == "data_file" and mc.DataType.Name(init.data_type) == "TYPE_FP64"
        raw = (mdir / "initial_state" / init.data_file).read_bytes()
        assert np.frombuffer(raw, "<f8").tolist() == [-1.0]          # Triton reads it row-major, raw bytes
        assert all(states[n].initial_state[0].zero_data for n in ("conv_state", "ssm_state", "time_conv_state"))
        blocks[backend] = text[text.index("  state ["):text.index("\n  ]\n", text.index("  state [")) + 5]
    # the python model's state block (served below by a real Triton) is the onnxruntime model's, byte for byte
    assert blocks["python"] == blocks["onnxruntime"]
    # a data file of the wrong size is caught
    bad = tmp_path / "onnxruntime" / "tim4rec_causal_step_onnxruntime_implicit"
    (bad / "initial_state" / "last_ts.bin").write_bytes(np.float32(-1).tobytes())
    with pytest.raises(T.TritonConfigError, match=r"last_ts.*4 bytes, expected 8"):
        T.check_initial_state_files(bad, _parse(bad / "config.pbtxt"))
    with pytest.raises(T.TritonConfigError, match="last_ts.*TYPE_FP32, graph has float64"):
        T.validate_config((bad / "config.pbtxt").read_text().replace(
            'input_name: "last_ts" output_name: "last_ts_out" data_type: TYPE_FP64',
            'input_name: "last_ts" output_name: "last_ts_out" data_type: TYPE_FP32').replace(
            'data_type: TYPE_FP64 dims: [ 1 ] data_file', 'data_type: TYPE_FP32 dims: [ 1 ] data_file'),
            T.implicit_spec(spec))


def test_tensorrt_refuses_float64_graphs_clearly(tc_export, tim4rec_window_export, tmp_path, capsys):
    msg = r"TensorRT has no float64 tensor type.*\['timestamps', 'last_ts', 'last_ts_out'\].*--backend onnxruntime"
    for state in ("implicit", "explicit"):
        with pytest.raises(T.TritonConfigError, match=msg):
            T.write_repository(tc_export, tmp_path / "r", backend="tensorrt", state=state)
    assert not (tmp_path / "r").exists()                           # nothing written
    _, wd = tim4rec_window_export
    with pytest.raises(T.TritonConfigError, match=r"float64 tensors \['timestamps'\]"):
        T.write_repository(wd, tmp_path / "r", backend="tensorrt")
    assert T.main(["--onnx", str(tc_export), "--repo", str(tmp_path / "r"), "--backend", "tensorrt"]) == 1
    err = capsys.readouterr().err
    assert "TensorRT has no float64 tensor type" in err and "['timestamps', 'last_ts', 'last_ts_out']" in err
    # and a hand-written TensorRT config with a float64 tensor does not validate either
    spec = json.loads((tc_export / "state_spec.json").read_text())
    text = T.make_config(spec, "m", "onnxruntime", "explicit").replace('backend: "onnxruntime"',
                                                                       'backend: "tensorrt"')
    with pytest.raises(T.TritonConfigError, match="TensorRT has no float64"):
        T.validate_config(text)


IMPLICIT_PLANS, EXPLICIT_PLANS = (21, 6), (31, 4)                  # (seed, users) of the live tests


def test_tim4rec_causal_initial_last_ts_matters(tc_model):
    """Negative control for the live tests: for every user they serve, starting last_ts at 0 (what a zero initial
    state would do) instead of -1 moves PyTorch's priming scores by far more than the 1e-4 tolerance, so matching
    PyTorch proves each served sequence started at last_ts = -1."""
    diffs = []
    for seed, n in (IMPLICIT_PLANS, EXPLICIT_PLANS):
        for plan in _plans(seed, n).values():
            good = _step_reference(tc_model, plan[:1])[0][0]
            zero = _step_reference(tc_model, plan[:1], last_ts_init=0.0)[0][0]
            diffs.append(float(np.abs(good[1:] - zero[1:]).max()))
    print("priming score change with last_ts starting at 0: min %.2e, max %.2e" % (min(diffs), max(diffs)))
    assert min(diffs) > 1e-3, diffs


def test_tim4rec_causal_implicit_graph_follows_triton_state_protocol(tc_model, tc_export, tmp_path):
    """The onnxruntime implicit-state graph driven like Triton's sequence batcher (state_out of request i fed back
    as state_in of request i+1; at START a NaN-filled buffer, which START must replace by the initial state:
    last_ts = -1, the rest 0) matches PyTorch model.step; last_ts comes back as the exact float64 timestamp."""
    mdir = T.write_repository(tc_export, tmp_path / "repo", backend="onnxruntime", state="implicit")
    spec = json.loads((tc_export / "state_spec.json").read_text())
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(mdir / "1" / "model.onnx"), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    plans = _plans(11, 4)
    refs = {u: _step_reference(tc_model, p) for u, p in plans.items()}
    served, expect = [], []
    for u, plan in plans.items():
        slot = None
        for i, (items, ts) in enumerate(plan):
            feeds = {"item_ids": np.array([items], np.int64), "timestamps": np.array([ts], np.float64),
                     "START": np.array([[int(i == 0)]], np.int32), "READY": np.ones((1, 1), np.int32),
                     "CORRID": np.array([[u + 1]], np.int64)}
            for s in spec["state"]:
                dt = np.float64 if s["dtype"] == "float64" else np.float32
                feeds[s["name"]] = slot[s["name"]] if i else np.full([1] + s["shape"][1:], np.nan, dt)
            outs = dict(zip(names, sess.run(None, feeds), strict=True))
            slot = {s["name"]: outs[s["output"]] for s in spec["state"]}
            assert slot["last_ts"].dtype == np.float64 and slot["last_ts"][0, 0] == ts[-1]
            served.append((outs["topk_ids"][0], outs["topk_scores"][0]))
            expect.append(refs[u][i])
        np.testing.assert_allclose(slot["ssm_state"], refs[u][-1][1]["ssm_state"], rtol=1e-4, atol=1e-4)
    _check_served(served, expect, "ORT implicit graph")


@pytest.fixture(scope="module")
def tc_server(tc_export, tc_gaps_export, tim4rec_window_export, tmp_path_factory):
    from export import triton_server as S

    try:
        S.server_python()
    except RuntimeError as e:
        pytest.skip(str(e))
    repo = tmp_path_factory.mktemp("tc_repo")
    vocab = str(tc_export / "item_vocab.json")
    T.write_repository(tc_export, repo, name="tc", backend="python", vocab_path=vocab, idle_timeout_s=60,
                       max_batch_size=8, queue_delay_us=1000)
    T.write_repository(tc_export, repo, name="tc_explicit", backend="python", state="explicit", vocab_path=vocab,
                       max_batch_size=8)
    # a repository whose last_ts initial-state file does not hold -1 (zeros): the served model must refuse it
    bad = T.write_repository(tc_export, repo, name="tc_badinit", backend="python", vocab_path=vocab,
                             max_batch_size=4, idle_timeout_s=1.0)   # its failed sequence is dropped within 1 s
    (bad / "initial_state" / "last_ts.bin").write_bytes(np.zeros(1, np.float64).tobytes())
    T.write_repository(tim4rec_window_export[1], repo, name="tim4rec_window", backend="python", max_batch_size=8)
    T.write_repository(tc_gaps_export, repo, name="tc_gaps", backend="python", vocab_path=vocab, idle_timeout_s=60,
                       max_batch_size=8, queue_delay_us=1000)
    T.write_repository(tc_gaps_export, repo, name="tc_gaps_explicit", backend="python", state="explicit",
                       vocab_path=vocab, max_batch_size=8)
    try:
        h = S.start_server(repo, timeout=240)
    except RuntimeError as e:
        pytest.skip(f"the pytriton tritonserver could not start here: {e}")
    yield h, repo
    h.stop()
    assert not h.alive()


def test_live_tim4rec_causal_implicit_state_matches_pytorch(tc_server, tc_model):
    """Real server, sequence batcher: Triton hands each new sequence its initial state from the config's state block
    (last_ts from the data file: -1.0 float64); prime with a history + float64 timestamps, then single events,
    users interleaved; every answer equals PyTorch model.step."""
    from export.triton_client import TritonRecommendError, TritonRecommender

    h, repo = tc_server
    v = tc_model.item_vocab
    cl = TritonRecommender(h.grpc_url, "tc", protocol="grpc", vocab=str(repo / "tc" / "item_vocab.json"))
    assert cl.uses_timestamps and cl.inputs["timestamps"]["datatype"] == "FP64"
    plans = _plans(*IMPLICIT_PLANS)
    refs = {u: _step_reference(tc_model, p) for u, p in plans.items()}
    order = [u for u in plans for _ in plans[u]]
    random.Random(2).shuffle(order)
    pos = {u: 0 for u in plans}
    served = {u: [] for u in plans}
    for u in order:
        items, ts = plans[u][pos[u]]
        end = pos[u] == len(plans[u]) - 1
        if pos[u] == 0:
            top, sc = cl.recommend_with_scores(f"tc-{u}", v.decode(items), timestamps=ts, start=True)
        else:
            top, sc = cl.recommend_with_scores(f"tc-{u}", v.decode(items), timestamps=ts, end=end)
        served[u].append((v.encode(top), sc))
        pos[u] += 1
    _check_served([x for u in plans for x in served[u]], [x for u in plans for x in refs[u]], "Triton implicit")
    assert cl.last_live_sequences == 0                               # every sequence ended
    # time order against the sequence's last_ts (the graph alone would clamp the gap to 0): the client checks it
    # for its own sequences before sending, the server for every request (here one from a client that did not
    # send the sequence's previous event)
    items, ts = plans[0][0]
    cl.prime("tc-back", v.decode(items), timestamps=ts)
    with pytest.raises(ValueError, match=r"go back in time .*< last_ts"):
        cl.recommend("tc-back", v.decode([5]), timestamps=[ts[-1] - 1.0])
    other = TritonRecommender(h.grpc_url, "tc", protocol="grpc", vocab=str(repo / "tc" / "item_vocab.json"))
    with pytest.raises(TritonRecommendError, match="go back in time"):
        other.recommend("tc-back", v.decode([5]), timestamps=[ts[-1] - 1.0], start=False)
    with pytest.raises(ValueError, match="decrease"):                 # client-side, nothing sent
        cl.recommend("tc-back", v.decode([5, 6]), timestamps=[ts[-1] + 9, ts[-1] + 8])
    # the rejected event left the sequence as it was: it continues (not restarted) and ends cleanly
    top, sc = cl.recommend_with_scores("tc-back", v.decode([5]), timestamps=[ts[-1] + 30.0], end=True)
    ref = _step_reference(tc_model, [plans[0][0], ([5], [ts[-1] + 30.0])])[1]
    _check_served([(v.encode(top), sc)], [ref], "continuation after a rejected event")
    assert cl.last_live_sequences == 0


def test_live_tim4rec_causal_initial_state_comes_from_the_data_file(tc_server, tc_model):
    """Same model, but its initial_state/last_ts.bin holds 0.0: Triton hands that to the model, which refuses to
    start a sequence from it -- so the -1.0 the other model starts from is really read from its data file."""
    from export.triton_client import TritonRecommendError, TritonRecommender

    h, repo = tc_server
    cl = TritonRecommender(h.http_url, "tc_badinit", protocol="http", vocab=tc_model.item_vocab)
    with pytest.raises(TritonRecommendError, match=r"initial state 'last_ts'.*holds 0\.0.*says -1\.0"):
        cl.prime("u", tc_model.item_vocab.decode([1, 2]), timestamps=[1.6e9, 1.6e9 + 1])


def test_live_tim4rec_causal_explicit_state_matches_pytorch(tc_server, tc_model):
    """Dynamic batching + client-side store: a new user starts from the spec's initial values in their dtypes
    (last_ts float64 -1.0, the rest float32 zeros); the stored state round-trips through bytes; every answer equals
    PyTorch model.step and the stored last_ts is the exact float64 timestamp of the user's last event."""
    from export.triton_client import ExplicitStateRecommender

    h, repo = tc_server
    v = tc_model.item_vocab
    store = _BytesStore()
    cl = ExplicitStateRecommender(h.http_url, "tc_explicit", protocol="http",
                                  vocab=str(repo / "tc_explicit" / "item_vocab.json"), store=store)
    init = cl.initial_state()
    assert init["last_ts"].dtype == np.float64 and init["last_ts"].tolist() == [[-1.0]]
    assert init["ssm_state"].dtype == np.float32 and not init["ssm_state"].any()
    plans = _plans(*EXPLICIT_PLANS)
    refs = {u: _step_reference(tc_model, p) for u, p in plans.items()}
    served, expect = [], []
    for i in range(max(map(len, plans.values()))):                  # interleaved users
        for u, plan in plans.items():
            items, ts = plan[i]
            top, sc = cl.recommend_with_scores(u, v.decode(items), timestamps=ts)
            served.append((v.encode(top), sc))
            expect.append(refs[u][i])
    _check_served(served, expect, "Triton explicit")
    _check_stored_time_states(store, plans, refs, cl, v)


def test_live_time_aware_recommend_many_equals_one_event_a_request(tc_server, tc_model):
    """TiM4Rec-causal behind the explicit-state model (``max_batch_size`` 8): ten users' events a call, as batch
    rows with float64 timestamps (two requests a call), give what one request per event gives, and the same stored
    states; an event going back in time refuses the whole call before anything is sent."""
    from export.triton_client import ExplicitStateRecommender

    h, repo = tc_server
    v = tc_model.item_vocab
    kw = dict(protocol="http", vocab=str(repo / "tc_explicit" / "item_vocab.json"))
    many = ExplicitStateRecommender(h.http_url, "tc_explicit", store=_BytesStore(), **kw)
    one = ExplicitStateRecommender(h.http_url, "tc_explicit", store=_BytesStore(), **kw)
    rng = np.random.default_rng(8)
    t = {u: float(rng.integers(1_400_000_000, 1_600_000_000)) + 0.5 for u in range(10)}
    for rnd in range(3):
        events = []
        for u in range(10):
            n = int(rng.integers(1, 3))
            ts = _ts(rng, n, start=t[u])
            t[u] = ts[-1]
            events.append((u, v.decode([int(x) for x in rng.integers(1, TC_ITEMS, n)]), ts))
        got = many.recommend_many(events)
        for (u, items, ts), (top, sc) in zip(events, got, strict=True):
            top1, sc1 = one.recommend_with_scores(u, items, timestamps=ts)
            assert top == top1 or np.allclose(sc, sc1, atol=1e-5), (rnd, u)
            np.testing.assert_allclose(sc, sc1, rtol=1e-5, atol=1e-5)
    for u in range(10):
        a, b = many.store.get(u), one.store.get(u)
        assert a["last_ts"][0, 0] == b["last_ts"][0, 0] == t[u]
        np.testing.assert_allclose(a["ssm_state"], b["ssm_state"], rtol=1e-5, atol=1e-5)
    before = many.store.kv.copy()
    with pytest.raises(ValueError, match="go back in time"):
        many.recommend_many([(0, v.decode([3]), [t[0] + 1]), (1, v.decode([4]), [t[1] - 60])])
    assert many.store.kv == before


def test_live_explicit_state_batch_refuses_a_row_naming_it(tc_server):
    """A batched explicit-state request whose second row's timestamps go back before that row's ``last_ts`` is
    refused as a whole, the error naming the row."""
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    from export.triton_client import ExplicitStateRecommender

    h, _ = tc_server
    cl = ExplicitStateRecommender(h.grpc_url, "tc_explicit", protocol="grpc")
    states = {n: np.concatenate([a, a]) for n, a in cl.initial_state().items()}
    states["last_ts"][1, 0] = 2000.0
    arrays = {"item_ids": np.array([[3], [4]], np.int64), "timestamps": np.array([[1000.0], [1000.0]]), **states}
    ins = {name: g.InferInput(name, list(a.shape), cl.inputs[name]["datatype"]) for name, a in arrays.items()}
    for name, a in arrays.items():
        ins[name].set_data_from_numpy(a)
    with pytest.raises(InferenceServerException, match=r"go back in time .*\(row 1\)"):
        cl.client.infer("tc_explicit", list(ins.values()))
    states["last_ts"][1, 0] = 500.0                                 # in time order now: both rows answered
    ins["last_ts"].set_data_from_numpy(states["last_ts"])
    assert cl.client.infer("tc_explicit", list(ins.values())).as_numpy("topk_ids").shape == (2, K)


def test_live_window_requests_carry_several_histories_as_rows(tc_server, tim4rec_window_export):
    """A window model's request of ``B`` rows (each a padded window with its timestamps) answers ``B`` rows, each what
    the window sent alone answers (the python backend once read such a request as one long window)."""
    import tritonclient.grpc as g

    h, _ = tc_server
    model, _ = tim4rec_window_export
    cl = g.InferenceServerClient(h.grpc_url)
    rng = np.random.default_rng(3)
    hists = [[int(x) for x in rng.integers(1, TC_ITEMS, size=n)] for n in (3, 5, 2)]
    ids, mask, ts = model.pad_batch(hists, timestamps=[_ts(rng, len(x)) for x in hists])

    def ask(rows):
        ins = [g.InferInput("item_ids", [len(rows), ids.shape[1]], "INT64"),
               g.InferInput("timestamps", [len(rows), ids.shape[1]], "FP64")]
        ins[0].set_data_from_numpy(ids[rows].numpy())
        ins[1].set_data_from_numpy(ts[rows].numpy().astype(np.float64))
        r = cl.infer("tim4rec_window", ins)
        return r.as_numpy("topk_ids"), r.as_numpy("topk_scores")

    top, sc = ask([0, 1, 2])
    assert top.shape == (3, K)
    for b in range(3):
        t1, s1 = ask([b])
        assert np.array_equal(top[b], t1[0]) or np.allclose(sc[b], s1[0], atol=1e-5)
        np.testing.assert_allclose(sc[b], s1[0], rtol=1e-5, atol=1e-5)
    ref = model.predict(ids, mask, timestamps=ts)
    np.testing.assert_allclose(sc, torch.topk(ref, K, dim=1).values.numpy(), rtol=1e-4, atol=1e-4)


def test_live_tim4rec_window_serves_float64_timestamps(tc_server, tim4rec_window_export):
    """TiM4Rec (faithful) window graph served statelessly with float64 timestamps; histories longer than the window
    are cut to the last max_seq_length items; answers equal PyTorch's forward."""
    from export.triton_client import WindowRecommender

    h, _ = tc_server
    model, _ = tim4rec_window_export
    cl = WindowRecommender(h.grpc_url, "tim4rec_window", protocol="grpc")
    assert cl.inputs["timestamps"]["datatype"] == "FP64" and cl.max_len == 20
    rng = np.random.default_rng(41)
    hists = [[int(x) for x in rng.integers(1, TC_ITEMS, size=n)] for n in (1, 3, 7, 12, 20, 26, 33)]
    tss = [_ts(rng, len(hh)) for hh in hists]
    served = [cl.recommend_with_scores(hh, timestamps=t) for hh, t in zip(hists, tss, strict=True)]
    ids, mask, ts = model.pad_batch(hists, timestamps=tss)
    ref = model.predict(ids, mask, timestamps=ts).numpy()
    _check_served(served, [(r, None) for r in ref], "Triton window (TiM4Rec)")
    sent = []
    infer = cl.client.infer
    cl.client.infer = lambda *a, **kw: sent.append(a[1][0].shape()) or infer(*a, **kw)
    _check_served(cl.recommend_many(hists, tss), [(r, None) for r in ref], "Triton window, many a request")
    assert sent == [[7, 20]]                                       # one request: 7 rows, padded to the window
    with pytest.raises(ValueError, match="one list per history"):
        cl.recommend_many(hists)


# ================================================================== audit round 6 (F): validate_config and states


def test_validate_config_refuses_bad_initial_states(mamba_export):
    """Each initial_state Triton would refuse or misread at load time is refused here, naming the state: a dtype that
    is not the state's, no initial_state at all, neither zero_data nor a data file (an empty data_file name
    included), and negative (variable) dims."""
    import re as _re

    spec, good = _mamba_spec_and_config(mamba_export)
    assert 'initial_state: { data_type: TYPE_FP32 dims: [ 2, 32, 8 ] zero_data: true name: "ssm_state_zero" }' in good
    T.validate_config(good, T.implicit_spec(spec))
    cases = [
        (good.replace("initial_state: { data_type: TYPE_FP32", "initial_state: { data_type: TYPE_FP64", 1),
         r"^initial_state of state 'conv_state' is TYPE_FP64, the state is TYPE_FP32$"),
        (_re.sub(r"\n      initial_state: \{[^}]*\}", "", good, count=1), r"^state 'conv_state' has no initial_state$"),
        (good.replace('zero_data: true name: "conv_state_zero"', 'data_file: "" name: "conv_state_zero"'),
         r"^initial_state of state 'conv_state' sets neither zero_data nor a data_file$"),
        (good.replace('zero_data: true name: "conv_state_zero"', 'name: "conv_state_zero"'),
         r"^initial_state of state 'conv_state' sets neither zero_data nor a data_file$"),
        (good.replace("dims: [ 2, 32, 8 ]", "dims: [ 2, -1, 8 ]"),
         r"^initial_state of state 'ssm_state' has dims \[2, -1, 8\], expected the state's fixed dims"),
    ]
    for text, message in cases:
        assert text != good
        with pytest.raises(T.TritonConfigError, match=message):
            T.validate_config(text)


def test_validate_config_checks_outputs_and_state_outputs_against_the_graph(mamba_export):
    """With the graph's spec: an output whose dtype is not the graph's, and a state output the graph does not have,
    are refused by name (the first was never compared, the second ended in a KeyError)."""
    spec, good = _mamba_spec_and_config(mamba_export)
    ispec = T.implicit_spec(spec)
    assert 'name: "topk_ids" data_type: TYPE_INT64' in good
    with pytest.raises(T.TritonConfigError, match=r"^output 'topk_ids' has TYPE_INT32, graph has int64$"):
        T.validate_config(good.replace('name: "topk_ids" data_type: TYPE_INT64',
                                       'name: "topk_ids" data_type: TYPE_INT32'), ispec)
    with pytest.raises(T.TritonConfigError, match=r"^input 'item_ids' has TYPE_INT32, graph has int64$"):
        T.validate_config(good.replace('name: "item_ids" data_type: TYPE_INT64',
                                       'name: "item_ids" data_type: TYPE_INT32'), ispec)
    with pytest.raises(T.TritonConfigError, match=r"^config state output 'ssm_state_outx' is not a graph output$"):
        T.validate_config(good.replace('output_name: "ssm_state_out"', 'output_name: "ssm_state_outx"'), ispec)


def test_tensorrt_config_refuses_a_float64_state(mamba_export):
    """A TensorRT config whose only float64 tensors are sequence-batcher states is refused, naming the state's input
    and output (only the config's inputs/outputs were looked at)."""
    import re as _re

    _, good = _mamba_spec_and_config(mamba_export, "tensorrt")
    T.validate_config(good)
    f64 = _re.sub(r'(input_name: "conv_state" [^\n]*\n[^\n]*)', lambda m: m.group(1).replace("TYPE_FP32", "TYPE_FP64"),
                  good, count=1)
    assert f64.count("TYPE_FP64") == 2 and "TYPE_FP64" not in good
    with pytest.raises(T.TritonConfigError, match=r"float64 tensors \['conv_state', 'conv_state_out'\]"):
        T.validate_config(f64)
    T.validate_config(f64.replace('backend: "tensorrt"', 'backend: "onnxruntime"'))      # fine for ONNX Runtime


def test_initial_state_values_and_files_are_checked(mamba_export, tmp_path):
    """A non-finite initial value (nan, +-inf) is refused before any config is written; a data file must hold exactly
    prod(dims) values: a missing, shorter or longer file is refused (Triton ignores the excess of a longer one)."""
    spec = json.loads((mamba_export / "state_spec.json").read_text())
    for v in (float("nan"), float("inf"), float("-inf")):
        bad = json.loads(json.dumps(spec))
        bad["state"][0]["init"] = v
        with pytest.raises(T.TritonConfigError, match=r"^state 'conv_state' has a non-finite initial value"):
            T.make_config(bad, "m")
    spec["state"][0]["init"] = -1.0                                     # conv_state from a data file, ssm_state zero
    cfg = T.validate_config(T.make_config(spec, "m"))
    assert T.initial_state_file(spec["state"][0]) == "conv_state.bin" and T.initial_state_file(spec["state"][1]) is None
    data = T.initial_state_bytes(spec["state"][0])
    n = int(np.prod(spec["state"][0]["shape"][1:]))
    assert np.frombuffer(data, "<f4").tolist() == [-1.0] * n
    (tmp_path / T.INIT_DIR).mkdir()
    with pytest.raises(T.TritonConfigError, match=r"initial state of 'conv_state': .*conv_state.bin does not exist"):
        T.check_initial_state_files(tmp_path, cfg)
    f = tmp_path / T.INIT_DIR / "conv_state.bin"
    f.write_bytes(data)
    T.check_initial_state_files(tmp_path, cfg)
    for wrong in (data[:-4], data + data[:4]):
        f.write_bytes(wrong)
        with pytest.raises(T.TritonConfigError, match=rf"has {len(wrong)} bytes, expected {4 * n} \({n} x TYPE_FP32\)"):
            T.check_initial_state_files(tmp_path, cfg)


# ================================================================== perf_analyzer input data (export.perf_data)


def _inter_file(path, rows):
    """A RecBole atomic ``.inter`` file of ``(user, item, timestamp)`` rows (written in the order given)."""
    lines = ["user_id:token\titem_id:token\ttimestamp:float"] + [f"{u}\t{i}\t{t!r}" for u, i, t in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _user_rows(rng, users, items, n_items_of, item_name=str):
    """``{user: (items, timestamps)}`` with ``n_items_of(u)`` events each (time order, float64 seconds that float32
    cannot hold), and the rows shuffled as a file would hold them."""
    hist, rows = {}, []
    for u in users:
        n = n_items_of(u)
        its = [int(x) for x in rng.integers(1, items, size=n)]
        ts = [t + 0.25 * k for k, t in enumerate(_ts(rng, n))]   # strictly increasing: no same-second ties
        hist[u] = (its, ts)
        rows += [(u, item_name(i), t) for i, t in zip(its, ts, strict=True)]
    order = rng.permutation(len(rows))
    return hist, [rows[j] for j in order]


def _perf(capsys, *argv):
    from export import perf_data

    rc = perf_data.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _perf_streams(capsys, export_dir, repo, name, backend, data, out, *args):
    """A ``backend`` repository ``name`` of ``export_dir`` (its vocabulary shipped), then ``python -m export.perf_data``
    on ``data`` into ``out`` (``args`` added): ``(printed, the file's data)``."""
    T.write_repository(export_dir, repo, name=name, backend=backend, vocab_path=str(export_dir / "item_vocab.json"))
    rc, printed, err = _perf(capsys, "--repo", repo, "--name", name, "--data", data, "--out", out, *args,
                             "--kcore", "none")
    assert rc == 0, err
    return printed, json.loads(out.read_text())["data"]


def test_perf_data_streams_prime_then_replay_the_last_events(mamba, mamba_export, tmp_path, capsys):
    """Stateful model (python backend and onnxruntime implicit): one stream per user with two or more items, the first
    request the (at most --prime) items before the last --events, then one request per event; ids mapped through the
    model folder's vocabulary; shapes without the batch dimension; the printed perf_analyzer line names the file."""
    rng = np.random.default_rng(5)
    lengths = {"u1": 1, "u2": 2, "u3": 4, "u4": 30, "u5": 9}
    hist, rows = _user_rows(rng, lengths, N_ITEMS, lengths.get, item_name=lambda i: f"item-{i}")
    data = _inter_file(tmp_path / "d.inter", rows)
    for backend in ("python", "onnxruntime"):
        name = f"m_{backend}"
        out = tmp_path / f"{name}.json"
        printed, streams = _perf_streams(capsys, mamba_export, tmp_path / "repo", name, backend, data, out,
                                         "--events", 3, "--prime", 4)
        assert f"perf_analyzer -m {name} -i grpc" in printed and f"--input-data {out}" in printed
        assert "--sequence-id-range 1:64" in printed
        assert len(streams) == 4                                         # u1 (one item) cannot prime + replay
        got = {}
        for stream in streams:
            assert all(set(r) == {"item_ids"} for r in stream)
            assert all(r["item_ids"]["shape"] == [len(r["item_ids"]["content"])] for r in stream)
            assert all(r["item_ids"]["shape"] == [1] for r in stream[1:])
            got[tuple(x for r in stream for x in r["item_ids"]["content"])] = [len(r["item_ids"]["content"])
                                                                              for r in stream]
        want = {}
        for u in ("u2", "u3", "u4", "u5"):
            its = mamba.item_vocab.encode([f"item-{i}" for i in hist[u][0]])
            n = len(its)
            e = min(3, n - 1)
            prime = its[max(0, n - e - 4):n - e]
            want[tuple(prime + its[n - e:])] = [len(prime)] + [1] * e
        assert got == want


def test_perf_data_reads_the_served_version_of_a_regenerated_python_backend_folder(mamba_export, tmp_path, capsys):
    """A python-backend model folder keeps its state_spec.json in its version folder; each regeneration writes the
    next version and removes all but the one before, so after two regenerations 1/ is gone: export.perf_data reads
    the highest version's spec (it looked in 1/ only and refused the folder)."""
    rng = np.random.default_rng(3)
    lengths = {"u1": 3, "u2": 5}
    _, rows = _user_rows(rng, lengths, N_ITEMS, lengths.get, item_name=lambda i: f"item-{i}")
    data = _inter_file(tmp_path / "d.inter", rows)
    for _ in range(3):
        T.write_repository(mamba_export, tmp_path / "repo", name="m", backend="python",
                           vocab_path=str(mamba_export / "item_vocab.json"))
    assert T.model_versions(tmp_path / "repo" / "m") == [2, 3]
    rc, printed, err = _perf(capsys, "--repo", tmp_path / "repo", "--name", "m", "--data", data, "--out",
                             tmp_path / "p.json", "--kcore", "none")
    assert rc == 0, err
    assert len(json.loads((tmp_path / "p.json").read_text())["data"]) == 2


def test_perf_data_fits_candidates_models_and_the_tensorrt_profile(mamba, mamba_cand_export, tmp_path, capsys):
    """A --candidates model's onnxruntime/tensorrt config requires the candidates input: every request carries one 0
    (unrestricted; perf_analyzer refused the file without it). A TensorRT engine takes at most max_seq_length new
    items a request (its profile): a longer priming goes in pieces (one request of 140 items was written); the other
    backends get it whole."""
    rng = np.random.default_rng(7)
    lengths = {"u1": 150, "u2": 5}
    _, rows = _user_rows(rng, lengths, N_ITEMS, lengths.get, item_name=lambda i: f"item-{i}")
    data = _inter_file(tmp_path / "d.inter", rows)
    L = mamba.config.max_seq_length
    for backend, pieces in (("onnxruntime", [140]), ("tensorrt", [L, L, 140 - 2 * L])):
        _, streams = _perf_streams(capsys, mamba_cand_export, tmp_path / "repo", f"c_{backend}", backend, data,
                                   tmp_path / f"c_{backend}.json", "--events", 3, "--prime", 140)
        assert all(r["candidates"] == {"content": [0], "shape": [1]} for st in streams for r in st)
        long = next(st for st in streams if sum(len(r["item_ids"]["content"]) for r in st) == 143)
        assert [len(r["item_ids"]["content"]) for r in long] == pieces + [1, 1, 1], backend


def test_perf_data_time_inputs_and_windows(tc_model, tc_export, tim4rec_window_export, tmp_path, capsys):
    """Time-aware models: float64 ``timestamps`` exactly as in the file (no float32 rounding of epoch seconds), float32
    ``time_gaps`` for a --time-input gaps graph (0 for the stream's first event); window models get one request per
    replayed event holding the last max_seq_length items (and timestamps) before it."""
    rng = np.random.default_rng(6)
    lengths = {f"u{k}": n for k, n in enumerate((3, 26, 8))}
    hist, rows = _user_rows(rng, lengths, TC_ITEMS, lengths.get, item_name=lambda i: f"t{i}")
    data = _inter_file(tmp_path / "t.inter", rows)
    repo = tmp_path / "repo"
    T.write_repository(tc_export, repo, name="tc", vocab_path=str(tc_export / "item_vocab.json"))
    gaps = tmp_path / "gaps"
    export_model(tc_model, gaps, topk=K, verify=False, time_input="gaps")
    T.write_repository(gaps, repo, name="tc_gaps", vocab_path=str(tc_export / "item_vocab.json"))
    v = tc_model.item_vocab
    enc = {u: (v.encode([f"t{i}" for i in its]), ts) for u, (its, ts) in hist.items()}
    common = ["--data", data, "--events", 2, "--prime", 5, "--kcore", "none"]

    assert _perf(capsys, "--repo", repo, "--name", "tc", "--out", tmp_path / "a.json", *common)[0] == 0
    streams = json.loads((tmp_path / "a.json").read_text())["data"]
    by_first = {tuple(s[0]["item_ids"]["content"]): s for s in streams}
    for u, (its, ts) in enc.items():
        n = len(its)
        s = by_first[tuple(its[max(0, n - 7):n - 2])]
        assert [r["timestamps"]["content"] for r in s] == [ts[max(0, n - 7):n - 2], [ts[n - 2]], [ts[n - 1]]]
        assert all(r["timestamps"]["shape"] == r["item_ids"]["shape"] for r in s)

    assert _perf(capsys, "--repo", repo, "--name", "tc_gaps", "--out", tmp_path / "g.json", *common)[0] == 0
    for s in json.loads((tmp_path / "g.json").read_text())["data"]:
        first = tuple(s[0]["item_ids"]["content"])
        its, ts = next(enc[u] for u in enc if tuple(enc[u][0][max(0, len(enc[u][0]) - 7):-2]) == first)
        n, t = len(its), np.asarray(ts)
        p0 = max(0, n - 7)
        assert "timestamps" not in s[0]
        assert s[0]["time_gaps"]["content"] == np.float32(np.diff(t[p0:n - 2], prepend=t[p0])).tolist()
        assert s[0]["time_gaps"]["content"][0] == 0.0
        assert [r["time_gaps"]["content"] for r in s[1:]] == [[float(np.float32(t[i] - t[i - 1]))]
                                                              for i in (n - 2, n - 1)]

    T.write_repository(tim4rec_window_export[1], repo, name="win", vocab_path=str(tc_export / "item_vocab.json"))
    rc, printed, err = _perf(capsys, "--repo", repo, "--name", "win", "--out", tmp_path / "w.json", *common)
    assert rc == 0 and "--sequence-id-range" not in printed, err
    reqs = json.loads((tmp_path / "w.json").read_text())["data"]
    assert all(isinstance(r, dict) for r in reqs)
    want = sorted((its[max(0, i - 20):i], ts[max(0, i - 20):i]) for its, ts in enc.values()
                  for i in (len(its) - 2, len(its) - 1))
    assert sorted((r["item_ids"]["content"], r["timestamps"]["content"]) for r in reqs) == want
    assert max(len(r["item_ids"]["content"]) for r in reqs) == 20                  # u1's 26 items: the last 20


def test_perf_data_refusals_name_the_problem(mamba_export, tc_export, tmp_path, capsys):
    """Explicit state (perf_analyzer cannot chain states), unknown items, order-only data for a time-aware model, no
    user with two items, a folder that is not a model's, --out that is --data: each refused with its reason, and an
    existing --out is left as it was."""
    repo = tmp_path / "repo"
    T.write_repository(mamba_export, repo, name="m_exp", state="explicit",
                       vocab_path=str(mamba_export / "item_vocab.json"))
    T.write_repository(mamba_export, repo, name="m", vocab_path=str(mamba_export / "item_vocab.json"))
    T.write_repository(tc_export, repo, name="tc", vocab_path=str(tc_export / "item_vocab.json"))
    good = _inter_file(tmp_path / "g.inter", [("a", "item-1", 1.0), ("a", "item-2", 2.0)])
    out = tmp_path / "keep.json"
    out.write_text("previous")
    cases = [
        ("m_exp", good, "keeps its state in the requests \\(--state explicit\\): perf_analyzer cannot feed"),
        ("m", _inter_file(tmp_path / "u.inter", [("a", "item-1", 1.0), ("a", "nope", 2.0)]),
         "1 of the 2 items .* is not in the model's item vocabulary"),
        ("m", _inter_file(tmp_path / "s.inter", [("a", "item-1", 1.0), ("b", "item-2", 2.0)]),
         "no user of s.inter has two items"),
        ("nothing", good, "holds no config.pbtxt"),
    ]
    seq = tmp_path / "o.seq"
    seq.write_text("user_id:token\titem_id_list:token_seq\na\tt1 t2 t3\n")
    cases.append(("tc", seq, "model 'tc' reads timestamps, but o.seq has none"))
    import re as _re

    for name, data, message in cases:                           # each a failed run (1), not a usage error
        rc, _, err = _perf(capsys, "--repo", repo, "--name", name, "--data", data, "--out", out, "--kcore", "none")
        assert rc == 1 and _re.search(message, err), (name, err)
        assert out.read_text() == "previous"
    with pytest.raises(SystemExit):
        _perf(capsys, "--repo", repo, "--name", "m", "--data", good, "--out", good)
    assert "is the input --data" in capsys.readouterr().err
    drop = _inter_file(tmp_path / "x.inter", [("a", "item-1", 1.0), ("a", "nope", 2.0), ("a", "item-3", 3.0)])
    rc, _, err = _perf(capsys, "--repo", repo, "--name", "m", "--data", drop, "--out", out, "--kcore", "none",
                       "--unknown-items", "drop", "--events", 1)
    assert rc == 0 and "WARNING: 1 interaction with items the model 'm' does not know dropped" in err
    assert json.loads(out.read_text()) == {"data": [[{"item_ids": {"content": [1], "shape": [1]}},
                                                     {"item_ids": {"content": [3], "shape": [1]}}]]}


def test_perf_data_out_dash_is_stdout_and_bad_seed_or_data(mamba_export, tmp_path, monkeypatch, capsys):
    """``--out -`` wrote a file named "-" (and told perf_analyzer to read ``--input-data -``): it is stdout now, the
    JSON alone there, the summary and the perf_analyzer line on stderr. ``--seed -5`` is a usage error naming the flag
    (it was numpy's text alone); a --data file that is not there is a failed run (1), named."""
    repo = tmp_path / "repo"
    T.write_repository(mamba_export, repo, name="m", vocab_path=str(mamba_export / "item_vocab.json"))
    data = _inter_file(tmp_path / "d.inter", [("a", "item-1", 1.0), ("a", "item-2", 2.0), ("a", "item-3", 3.0)])
    monkeypatch.chdir(tmp_path)
    args = ["--repo", repo, "--name", "m", "--data", data, "--kcore", "none", "--events", 1]
    rc, printed, err = _perf(capsys, *args, "--out", "-")
    assert rc == 0 and not (tmp_path / "-").exists(), err
    assert json.loads(printed) == {"data": [[{"item_ids": {"content": [1, 2], "shape": [2]}},
                                             {"item_ids": {"content": [3], "shape": [1]}}]]}
    assert "wrote 1 streams, 2 requests for model 'm' to stdout" in err
    assert "perf_analyzer -m m -i grpc" in err and "--input-data FILE" in err
    rc, printed, _ = _perf(capsys, *args, "--out", tmp_path / "p.json")            # the same data in a file
    assert rc == 0 and json.loads((tmp_path / "p.json").read_text()) == {"data": [[
        {"item_ids": {"content": [1, 2], "shape": [2]}}, {"item_ids": {"content": [3], "shape": [1]}}]]}
    assert f"--input-data {tmp_path / 'p.json'}" in printed
    with pytest.raises(SystemExit) as e:
        _perf(capsys, *args, "--out", "-", "--seed", "-5")
    assert e.value.code == 2 and "argument --seed: expected an int >= 0, got '-5'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _perf(capsys, "--repo", repo, "--name", "m", "--data", tmp_path / "nosuch.inter", "--out", "-")
    assert e.value.code == 1 and f"--data {tmp_path / 'nosuch.inter'}: no such file" in capsys.readouterr().err


def test_live_perf_data_drives_the_server_as_perf_analyzer_would(tc_server, tc_model, tim4rec_window_export, tmp_path,
                                                                 capsys):
    """The generated files replayed on a real server the way perf_analyzer plays them: each stream on its own
    correlation id, START with its first request and END with its last, streams interleaved; each request's tensors
    exactly as the JSON gives them (content reshaped to [1, *shape]). Every answer equals PyTorch: ``model.step``
    along the stream (TiM4Rec-causal, float64 timestamps), the forward over the request's window (TiM4Rec)."""
    import tritonclient.grpc as grpcclient

    h, repo = tc_server
    rng = np.random.default_rng(7)
    lengths = {f"u{k}": n for k, n in enumerate((2, 5, 9, 17, 30, 41))}
    _, rows = _user_rows(rng, lengths, TC_ITEMS, lengths.get, item_name=lambda i: f"t{i}")
    data = _inter_file(tmp_path / "live.inter", rows)
    cl = grpcclient.InferenceServerClient(h.grpc_url)

    def infer(model, request, **seq):
        ins = []
        for name, t in request.items():
            arr = np.asarray(t["content"], dtype=np.int64 if name == "item_ids" else np.float64)
            arr = arr.reshape([1, *t["shape"]])
            ins.append(grpcclient.InferInput(name, list(arr.shape), "INT64" if name == "item_ids" else "FP64"))
            ins[-1].set_data_from_numpy(arr)
        r = cl.infer(model, ins, outputs=[grpcclient.InferRequestedOutput(n) for n in ("topk_ids", "topk_scores")],
                     **seq)
        return r.as_numpy("topk_ids")[0], r.as_numpy("topk_scores")[0]

    assert _perf(capsys, "--repo", repo, "--name", "tc", "--data", data, "--out", tmp_path / "tc.json",
                 "--events", 6, "--prime", 12, "--kcore", "none")[0] == 0
    streams = json.loads((tmp_path / "tc.json").read_text())["data"]
    assert len(streams) == 6 and sum(map(len, streams)) == 6 + 1 + 4 + 6 * 4
    order = [s for s in range(len(streams)) for _ in streams[s]]
    random.Random(3).shuffle(order)
    pos, served = [0] * len(streams), [[] for _ in streams]
    for s in order:
        req = streams[s][pos[s]]
        served[s].append(infer("tc", req, sequence_id=9100 + s, sequence_start=pos[s] == 0,
                               sequence_end=pos[s] == len(streams[s]) - 1))
        pos[s] += 1
    refs = [_step_reference(tc_model, [(r["item_ids"]["content"], r["timestamps"]["content"]) for r in stream])
            for stream in streams]
    _check_served([x for srv in served for x in srv], [x for ref in refs for x in ref], "perf_data streams (tc)")

    model, _ = tim4rec_window_export
    assert _perf(capsys, "--repo", repo, "--name", "tim4rec_window", "--data", data, "--out", tmp_path / "w.json",
                 "--events", 3, "--kcore", "none")[0] == 0              # no vocabulary: first-appearance indices
    reqs = json.loads((tmp_path / "w.json").read_text())["data"]
    served = [infer("tim4rec_window", r) for r in reqs]
    hists = [r["item_ids"]["content"] for r in reqs]
    ids, mask, ts = model.pad_batch(hists, timestamps=[r["timestamps"]["content"] for r in reqs])
    ref = model.predict(ids, mask, timestamps=ts).numpy()
    _check_served(served, [(x, None) for x in ref], "perf_data window requests (TiM4Rec)")
    cl.close()


# ============================= the gaps form, end() on every backend, --scores, README code, numbers, TensorRT scripts
GAPS_VARIANTS = [(b, s) for b in ("onnxruntime", "tensorrt", "python") for s in ("implicit", "explicit")]


@pytest.mark.parametrize("backend,state", GAPS_VARIANTS)
def test_gaps_form_repositories_take_float32_time_gaps(tc_gaps_export, tmp_path, backend, state):
    """A --time-input gaps export (what export.trt builds for TiM4Rec-causal) gets repositories that take what its
    graph takes -- time_gaps TYPE_FP32, no float64 tensor, no last_ts state (so the tensorrt backend serves it too,
    its engine profile spanning time_gaps like item_ids) -- and say so: the config names the form and the client's
    state (last_ts, -1), the README the float32 gaps and who keeps last_ts, never float64 timestamps."""
    from tritonclient.grpc import model_config_pb2 as mc

    mdir = T.write_repository(tc_gaps_export, tmp_path / "repo", backend=backend, state=state, max_batch_size=4)
    cfg = _parse(mdir / "config.pbtxt")
    types = {t.name: mc.DataType.Name(t.data_type) for t in list(cfg.input) + list(cfg.output)}
    assert types["time_gaps"] == "TYPE_FP32" and "timestamps" not in types and "last_ts" not in types
    assert "TYPE_FP64" not in (mdir / "config.pbtxt").read_text()
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["time_input"] == "gaps" and json.loads(params["client_state"]) == {"last_ts": -1.0}
    if cfg.HasField("sequence_batching"):
        assert [s.input_name for s in cfg.sequence_batching.state] == ["conv_state", "ssm_state", "time_conv_state"]
    readme = (mdir / "README.md").read_text()
    assert "`time_gaps`" in readme and "**float32** `TYPE_FP32`" in readme and "**float64**" not in readme
    assert ("keeps each live sequence's `last_ts`" if state == "implicit" else "stores `last_ts`") in readme
    if backend == "tensorrt":
        shapes = _trtexec_shapes(_trtexec_args(mdir, tmp_path)[0])
        L = json.loads((tc_gaps_export / "state_spec.json").read_text())["max_seq_length"]
        assert shapes["--maxShapes"]["time_gaps"] == shapes["--maxShapes"]["item_ids"] == f"4x{L}"
        assert shapes["--minShapes"]["time_gaps"] == "1x1"


def test_gaps_implicit_graph_runs_the_gaps_the_client_sends(tc_model, tc_gaps_export, tmp_path, monkeypatch):
    """The onnxruntime / tensorrt implicit-state graph of the gaps form, driven like Triton's sequence batcher with
    exactly the requests TritonRecommender sends (recorded from a stand-in server: float32 time_gaps it computes from
    the float64 timestamps and the last_ts it keeps per sequence; 0 for a sequence's first event), answers as PyTorch
    model.step on those timestamps; its end() request (one item, gap 0) runs too."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import TritonRecommender

    mdir = T.write_repository(tc_gaps_export, tmp_path / "repo", backend="onnxruntime")
    spec = json.loads((tc_gaps_export / "state_spec.json").read_text())
    sess = ort.InferenceSession(str(mdir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    calls, _ = _fake_http_client(monkeypatch, {"item_ids": ("INT64", (-1, -1)), "time_gaps": ("FP32", (-1, -1))},
                                 {"topk_ids": ("INT64", (-1, K)), "topk_scores": ("FP32", (-1, K))},
                                 {"time_input": "gaps"}, backend="onnxruntime")
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=TC_ITEMS)
    plans = _plans(13, 3)
    for u, plan in plans.items():                                  # one sequence after the other, then its end()
        for items, ts in plan:
            rec.recommend(u + 1, items, timestamps=ts)
        rec.end(u + 1)
    served, expect, at = [], [], 0
    for u, plan in plans.items():
        refs, slot = _step_reference(tc_model, plan), None
        for i, c in enumerate(calls[at:at + len(plan) + 1]):
            a = c["arrays"]
            gaps = np.asarray(plan[i][1] if i < len(plan) else [plan[-1][1][-1]], np.float64)
            prev = plan[i - 1][1][-1] if i else gaps[0]
            assert a["time_gaps"].dtype == np.float32
            assert a["time_gaps"][0].tolist() == np.float32(np.diff(gaps, prepend=prev)).tolist()
            assert (c["sequence_start"], c["sequence_end"]) == (i == 0, i == len(plan))
            feeds = {"item_ids": a["item_ids"], "time_gaps": a["time_gaps"], "READY": np.ones((1, 1), np.int32),
                     "START": np.array([[int(c["sequence_start"])]], np.int32), "CORRID": np.array([[u + 1]])}
            for s in spec["state"]:
                feeds[s["name"]] = slot[s["name"]] if i else np.full([1] + s["shape"][1:], np.nan, np.float32)
            outs = dict(zip(names, sess.run(None, feeds), strict=True))
            slot = {s["name"]: outs[s["output"]] for s in spec["state"]}
            if i < len(plan):
                served.append((outs["topk_ids"][0], outs["topk_scores"][0]))
                expect.append(refs[i])
        assert calls[at + len(plan)]["arrays"]["item_ids"].tolist() == [[1]]      # the END: one item, gap 0
        at += len(plan) + 1
    assert at == len(calls)
    _check_served(served, expect, "ORT implicit gaps graph, client-computed gaps")


def test_python_backend_checks_time_gaps(tc_model, tc_gaps_export, tmp_path, monkeypatch):
    """The python backend serves the gaps form (implicit and explicit state): float32 time_gaps, one per item,
    finite and non-negative, else an error for that request alone; the model keeps no last_ts."""
    model = _backend_model(tc_gaps_export, tmp_path / "repo", monkeypatch, idle_timeout_s=30)
    assert model.gaps and model.i_last_ts is None and [n for n, *_ in model.states] == ["conv_state", "ssm_state",
                                                                                        "time_conv_state"]

    def req(corrid, gaps, n=None, dtype=np.float32):
        r = _seq_request(model, corrid, [3] * (len(gaps) if n is None else n), start=True)
        r["time_gaps"] = np.array([gaps], dtype)
        return r

    ok, neg, nan, f64, short, none = model.execute([req(1, [0.0, 60.0]), req(2, [-1.0]), req(3, [np.nan]),
                                                    req(4, [1.0], dtype=np.float64), req(5, [1.0], n=2),
                                                    {k: v for k, v in req(6, [0.0]).items() if k != "time_gaps"}])
    assert ok.error is None
    ref = _step_reference(tc_model, [([3, 3], [1.6e9, 1.6e9 + 60])])[0][0]
    np.testing.assert_allclose(ok.outputs["topk_scores"][0], ref[ok.outputs["topk_ids"][0]], atol=1e-4)
    for r, msg in ((neg, "time_gaps must be finite and non-negative"), (nan, "finite and non-negative"),
                   (f64, "time_gaps must be FP32"), (short, "time_gaps has 1 values for 2 items"),
                   (none, "request has no input 'time_gaps'")):
        assert r.error is not None and msg in r.error.msg, (msg, r.error and r.error.msg)
    explicit = _backend_model(tc_gaps_export, tmp_path / "repo_x", monkeypatch, state="explicit")
    r = {"item_ids": np.array([[3, 3], [4, 4]], np.int64), "time_gaps": np.array([[0, 60], [0, -5]], np.float32)}
    for name, shape, dt, init in explicit.states:
        r[name] = np.full((2, *shape), init, np.dtype(dt))
    (bad,) = explicit.execute([r])
    assert bad.error is not None and re.search(r"time_gaps must be finite and non-negative .*\(row 1\)$",
                                               bad.error.msg), bad.error
    r["time_gaps"][1, 1] = 5.0
    (good,) = explicit.execute([r])
    assert good.error is None and set(good.outputs) >= {"topk_ids", "conv_state_out", "time_conv_state_out"}
    assert "last_ts_out" not in good.outputs


def test_live_gaps_form_matches_pytorch(tc_server, tc_model):
    """The gaps form on a real server: TritonRecommender (sequence batcher; it keeps each live sequence's last_ts and
    sends float32 gaps) and ExplicitStateRecommender (last_ts stored beside the graph's states) take float64
    timestamps as for the other form and answer as PyTorch model.step on them; time going back is refused before
    anything is sent; a sequence this client did not send the previous event of cannot be continued by it (its
    last_ts is unknown); end() frees the state (an END without items on the python backend), and the sequence then
    starts anew."""
    from export.triton_client import ExplicitStateRecommender, TritonRecommendError, TritonRecommender

    h, repo = tc_server
    v = tc_model.item_vocab
    cl = TritonRecommender(h.grpc_url, "tc_gaps", protocol="grpc", vocab=v)
    assert cl.time_gaps and cl.inputs["time_gaps"]["datatype"] == "FP32" and cl.backend == "python"
    plans = _plans(41, 4)
    refs = {u: _step_reference(tc_model, p) for u, p in plans.items()}
    served, expect = [], []
    for i in range(max(map(len, plans.values()))):                  # interleaved sequences
        for u, plan in plans.items():
            items, ts = plan[i]
            top, sc = cl.recommend_with_scores(f"g-{u}", v.decode(items), timestamps=ts)
            served.append((v.encode(top), sc))
            expect.append(refs[u][i])
    _check_served(served, expect, "Triton implicit, gaps form")
    last = plans[0][-1][1][-1]
    with pytest.raises(ValueError, match=r"go back in time .*< last_ts"):
        cl.recommend("g-0", v.decode([3]), timestamps=[last - 1.0])
    other = TritonRecommender(h.grpc_url, "tc_gaps", protocol="grpc", vocab=v)
    with pytest.raises(TritonRecommendError, match="did not send its previous event"):
        other.recommend("g-0", v.decode([3]), timestamps=[last + 1.0], start=False)
    for u in plans:
        cl.end(f"g-{u}")
    assert cl.last_live_sequences == 0
    items, ts = plans[0][0]
    top, sc = cl.recommend_with_scores("g-0", v.decode(items), timestamps=ts)     # started anew: gap 0 first
    _check_served([(v.encode(top), sc)], [refs[0][0]], "gaps form, restarted after end()")
    cl.end("g-0")

    store = _BytesStore()
    ex = ExplicitStateRecommender(h.http_url, "tc_gaps_explicit", protocol="http", vocab=v, store=store)
    init = ex.initial_state()
    assert init["last_ts"].dtype == np.float64 and init["last_ts"].tolist() == [[-1.0]] and "time_gaps" not in init
    plans = _plans(43, 4)
    refs = {u: _step_reference(tc_model, p) for u, p in plans.items()}
    served, expect = [], []
    for i in range(max(map(len, plans.values()))):
        events = [(u, v.decode(plan[i][0]), plan[i][1]) for u, plan in plans.items()]
        for (top, sc), u in zip(ex.recommend_many(events), plans, strict=True):   # users as the rows of a request
            served.append((v.encode(top), sc))
            expect.append(refs[u][i])
    _check_served(served, expect, "Triton explicit, gaps form")
    _check_stored_time_states(store, plans, refs, ex, v)


def test_client_end_sends_what_every_backend_runs(mamba_cand_export, tc_export, tmp_path, monkeypatch):
    """end() on an onnxruntime / tensorrt model sends an END with one item (index 1; at the sequence's last
    timestamp for a time-aware model; a row of 0s for the required candidates), which the implicit-state graph runs
    (it cannot run T = 0 items: ONNX Runtime fails, or crashes, on it, and the TensorRT profile starts at 1); the
    python backend gets an END without items. A failed END closes the sequence for the client all the same: the next
    event starts it (START) instead of going without START, being refused and marking the user gone."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import TritonRecommendError, TritonRecommender, sequence_id

    outs = {"topk_ids": ("INT64", (-1, K)), "topk_scores": ("FP32", (-1, K))}
    ins = {"item_ids": ("INT64", (-1, -1)), "timestamps": ("FP64", (-1, -1))}
    for backend, n in (("onnxruntime", 1), ("tensorrt", 1), ("python", 0)):
        calls, fail = _fake_http_client(monkeypatch, ins, outs, backend=backend)
        rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=TC_ITEMS)
        rec.prime("u", [3, 4], timestamps=[1.6e9, 1.6e9 + 60])
        rec.end("u")
        end = calls[-1]
        assert (end["sequence_start"], end["sequence_end"]) == (False, True)
        assert end["arrays"]["item_ids"].shape == (1, n) and (end["arrays"]["item_ids"] == 1).all()
        assert end["arrays"]["timestamps"].tolist() == [[1.6e9 + 60] * n]
        if backend == "onnxruntime":
            tc_end = end["arrays"]
        # a failed END: the sequence is closed anyway, and its next event starts it
        rec.prime("w", [3], timestamps=[1.6e9])
        fail[0] = "onnxruntime failed: Non-zero status code returned while running Scan node"
        with pytest.raises(TritonRecommendError, match="Scan node"):
            rec.end("w")
        fail[0] = None
        rec.recommend("w", [5], timestamps=[1.6e9 + 1])
        assert calls[-1]["sequence_start"] is True and calls[-1]["sequence_id"] == sequence_id("w")
    # the feeds end() sent run in the onnxruntime implicit graph, after a primed event
    mdir = T.write_repository(tc_export, tmp_path / "tc", backend="onnxruntime")
    spec = json.loads((tc_export / "state_spec.json").read_text())
    sess = ort.InferenceSession(str(mdir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    state = {s["name"]: np.full([1] + s["shape"][1:], s["init"], np.float64 if s["dtype"] == "float64" else np.float32)
             for s in spec["state"]}
    ctl = {"READY": np.ones((1, 1), np.int32), "CORRID": np.ones((1, 1), np.int64)}
    outs_ = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {
        "item_ids": np.array([[3, 4]]), "timestamps": np.array([[1.6e9, 1.6e9 + 60]]), **state, **ctl,
        "START": np.ones((1, 1), np.int32)}), strict=True))
    state = {s["name"]: outs_[s["output"]] for s in spec["state"]}
    sess.run(None, {**tc_end, **state, **ctl, "START": np.zeros((1, 1), np.int32)})
    # candidates: a tensorrt / onnxruntime model requires the input; end() sends a row of 0s, which the graph runs
    calls, _ = _fake_http_client(monkeypatch, {"item_ids": ("INT64", (-1, -1)), "candidates": ("INT64", (-1, -1))},
                                 outs, backend="tensorrt")
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS)
    rec.prime("u", [3, 4])
    rec.end("u")
    sent = calls[-1]["arrays"]
    assert sent["item_ids"].tolist() == [[1]] and sent["candidates"].tolist() == [[0]]
    mdir = T.write_repository(mamba_cand_export, tmp_path / "cand", backend="onnxruntime")
    spec = json.loads((mamba_cand_export / "state_spec.json").read_text())
    sess = ort.InferenceSession(str(mdir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    state = {s["name"]: np.zeros([1] + s["shape"][1:], np.float32) for s in spec["state"]}
    top = sess.run(["topk_ids"], {**sent, **state, **ctl, "START": np.ones((1, 1), np.int32)})[0]
    assert top.shape == (1, K) and (top > 0).all()                  # a row of 0s restricts nothing


def test_python_backend_returns_the_scores_output(mamba, mamba_scores_export, tmp_path, monkeypatch):
    """A --scores graph behind the python backend: the config declares ``scores`` and every answer to an event carries
    it (all raw scores, the padding's -inf), sequence and explicit-state forms alike; an END without items has
    none."""
    model = _backend_model(mamba_scores_export, tmp_path / "repo", monkeypatch, idle_timeout_s=30)
    cfg = _parse(tmp_path / "repo" / "mamba4rec_step_python" / "config.pbtxt")
    assert [list(o.dims) for o in cfg.output if o.name == "scores"] == [[N_ITEMS]]
    a, b = [3, 9, 27], [50, 51]
    resp = model.execute([_seq_request(model, 1, a, start=True), _seq_request(model, 2, b, start=True)])
    for r, (_, ref) in zip(resp, _reference_topk(mamba, [a, b]), strict=True):
        assert r.error is None and r.outputs["scores"].shape == (1, N_ITEMS)
        sc = r.outputs["scores"][0]
        assert np.isneginf(sc[0]) and np.array_equal(r.outputs["topk_scores"][0], sc[r.outputs["topk_ids"][0]])
        np.testing.assert_allclose(sc[1:], ref[1:], atol=1e-4)
    (done,) = model.execute([_seq_request(model, 1, [], end=True)])
    assert done.error is None and "scores" not in done.outputs
    explicit = _backend_model(mamba_scores_export, tmp_path / "repo_x", monkeypatch, state="explicit")
    r = {"item_ids": np.array([a[:2], b], np.int64)}
    for name, shape, dt, init in explicit.states:
        r[name] = np.full((2, *shape), init, np.dtype(dt))
    (resp,) = explicit.execute([r])
    assert resp.error is None and resp.outputs["scores"].shape == (2, N_ITEMS)
    np.testing.assert_allclose(resp.outputs["scores"][1, 1:], _reference_topk(mamba, [b])[0][1][1:], atol=1e-4)


def test_live_scores_output(live_server, mamba):
    """On the real server, a --scores model's response carries ``scores`` (it was declared but never returned)."""
    import tritonclient.grpc as grpcclient

    h, _ = live_server
    cl = grpcclient.InferenceServerClient(h.grpc_url)
    items = np.array([[3, 9, 27]], np.int64)
    inp = grpcclient.InferInput("item_ids", list(items.shape), "INT64")
    inp.set_data_from_numpy(items)
    r = cl.infer("m4r_scores", [inp], outputs=[grpcclient.InferRequestedOutput(n) for n in ("topk_ids", "scores")],
                 sequence_id=77, sequence_start=True, sequence_end=True)
    sc = r.as_numpy("scores")
    assert sc is not None and sc.shape == (1, N_ITEMS) and np.isneginf(sc[0, 0])
    np.testing.assert_allclose(sc[0, 1:], _reference_topk(mamba, [[3, 9, 27]])[0][1][1:], atol=1e-4)
    cl.close()


def test_generated_readmes_hold_valid_code(mamba_export, lru_seen_export, mamba_cand_export, mamba_scores_export,
                                           tc_export, tc_gaps_export, tim4rec_window_export, tmp_path):
    """Every python block of every README the generator writes (each backend and state of each kind of export the
    tests serve: plain, --exclude-seen/--user-vector, --candidates, --scores, float64 time, the gaps form, window
    graphs with and without time) compiles, and every bash block and script passes ``bash -n`` (the time-aware
    example was a tuple with ``timestamps=`` inside)."""
    import subprocess

    sas = tmp_path / "sasrec"
    export_model(_sasrec(), sas, kind="window", topk=K, verify=False)
    jobs = [(d, b, s) for d in (mamba_export, lru_seen_export[1], mamba_cand_export, mamba_scores_export, tc_export,
                                tc_gaps_export) for b in T.BACKENDS for s in T.STATES]
    jobs += [(sas, b, "implicit") for b in T.BACKENDS] + [(tim4rec_window_export[1], b, "implicit")
                                                          for b in ("onnxruntime", "python")]
    n_py = written = 0
    for i, (d, backend, state) in enumerate(jobs):
        if backend == "tensorrt" and T.float64_tensors(T.read_spec(d)):
            continue                                                  # refused (test_tensorrt_refuses_float64...)
        written += 1
        repo = tmp_path / f"repo{i}"
        mdir = T.write_repository(d, repo, backend=backend, state=state)
        text = (mdir / "README.md").read_text()
        blocks = re.findall(r"```python\n(.*?)```", text, re.S)
        assert blocks, mdir
        for block in blocks:
            compile(block, f"{mdir}/README.md", "exec")               # SyntaxError names the README
            n_py += 1
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            subprocess.run(["bash", "-n"], input=block, text=True, check=True)
        for script in (repo / "serve.sh", mdir / "build_engine.sh"):
            if script.exists():
                subprocess.run(["bash", "-n", str(script)], check=True)
    assert written == 39 and n_py >= written


@pytest.mark.parametrize("flags,message", [
    (["--idle-timeout-s", "1e14"], "--idle-timeout-s: idle_timeout_s must be at most 18446744073709 s"),
    (["--max-batch-size", str(2 ** 31)], "--max-batch-size: max_batch_size must be at most 2147483647 (Triton's"),
    (["--max-candidate-sequences", str(2 ** 31)], "--max-candidate-sequences: max_candidate_sequences must be at most"),
    (["--instances", str(2 ** 31)], "--instances: instances must be at most 2147483647"),
    (["--queue-delay-us", str(2 ** 64)], "--queue-delay-us: queue_delay_us must be at most 18446744073709551615")])
def test_cli_refuses_numbers_past_the_config_fields_before_any_export(tmp_path, flags, message, capsys):
    """Serving numbers past what their field of Triton's model_config.proto holds (int32 batch sizes, counts and
    candidate sequences; uint64 microseconds) are usage errors naming the flag before anything is exported (here the
    model does not even exist) -- not a protobuf 'Value out of range' after the export."""
    with pytest.raises(SystemExit) as e:
        T.main(["--model", str(tmp_path / "no-such-model"), "--repo", str(tmp_path / "r"), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_largest_serving_numbers_still_validate(mamba_export):
    """The upper bounds are the config fields' own: at them the config parses and validates, one past is refused."""
    spec = json.loads((mamba_export / "state_spec.json").read_text())
    top = dict(max_batch_size=T.INT32_MAX, idle_timeout_s=T.UINT64_MAX // 10 ** 6, instances=T.INT32_MAX,
               max_candidate_sequences=T.INT32_MAX, queue_delay_us=T.UINT64_MAX)
    for backend, state in (("onnxruntime", "implicit"), ("python", "implicit"), ("onnxruntime", "explicit")):
        cfg = T.validate_config(T.make_config(spec, "m", backend, state, **top),
                                T.implicit_spec(spec) if (backend, state) == ("onnxruntime", "implicit") else spec)
        assert cfg.max_batch_size == T.INT32_MAX
    for key in top:
        with pytest.raises(ValueError, match=f"{key} must be at most"):
            T.make_config(spec, "m", **{**top, key: top[key] + (1 if key != "idle_timeout_s" else 10)})
    with pytest.raises(ValueError, match="max_batch_size must be an int >= 1, got inf"):
        T.check_config_numbers(max_batch_size=float("inf"))


def _trtexec_args(mdir, tmp_path, env=None):
    """Run ``mdir/build_engine.sh`` with a stand-in trtexec (it records its arguments and whether
    ZOO_TRT_PLUGINS_AUTOREGISTER was set, then writes the plan); returns ``(args, autoregister)`` and removes the
    plan again."""
    import subprocess

    fake = tmp_path / "fake-trtexec"
    fake.write_text('#!/usr/bin/env bash\necho "$@" > "$(dirname "$0")/trtexec-args"\n'
                    'echo "${ZOO_TRT_PLUGINS_AUTOREGISTER:-unset}" > "$(dirname "$0")/trtexec-autoregister"\n'
                    'for a in "$@"; do case $a in --saveEngine=*) touch "${a#--saveEngine=}";; esac; done\n')
    fake.chmod(0o755)
    run = subprocess.run(["bash", str(mdir / "build_engine.sh")], capture_output=True, text=True, check=False,
                         env={**os.environ, "TRTEXEC": str(fake), "ZOO_TRT_PLUGINS_AUTOREGISTER": "1", **(env or {})})
    assert run.returncode == 0, run.stderr
    (mdir / "1" / "model.plan").unlink()
    return (tmp_path / "trtexec-args").read_text().split(), (tmp_path / "trtexec-autoregister").read_text().strip()


def _trtexec_shapes(args) -> dict:
    """``{"--minShapes": {input: "1x1", ...}, ...}`` from trtexec's arguments."""
    return {k: dict(x.split(":") for x in v.split(",")) for k, v in (a.split("=", 1) for a in args if "Shapes=" in a)}


def test_tensorrt_scripts_build_what_export_trt_builds(mamba_cand_export, tmp_path):
    """build_engine.sh builds with export.trt's builder settings (strongly typed, TF32 off for fp32 only, the aliased
    plugin I/O preview feature, a 2 GiB workspace; build only) and its optimisation profile
    (export.trt.profile_shapes: a --candidates graph's C up to export.trt's --max-candidates default, 1,024, not
    max_seq_length; T up to max_seq_length; the batch up to max_batch_size), from the graph its folder holds (an
    explicit-state folder has onnx/model.onnx, not the implicit graph it named), with ZOO_TRT_PLUGINS_AUTOREGISTER
    unset for trtexec; the README states the limits."""
    from export.trt import MAX_CANDIDATES, profile_shapes

    spec = json.loads((mamba_cand_export / "state_spec.json").read_text())
    L = spec["max_seq_length"]
    for state, graph in (("implicit", "model_implicit.onnx"), ("explicit", "model.onnx")):
        mdir = T.write_repository(mamba_cand_export, tmp_path / "repo", name=f"cand_{state}", backend="tensorrt",
                                  state=state, max_batch_size=8)
        args, autoregister = _trtexec_args(mdir, tmp_path)
        assert autoregister == "unset"
        assert f"--onnx={mdir}/onnx/{graph}" in args and (mdir / "onnx" / graph).is_file()
        for flag in ("--stronglyTyped", "--noTF32", "--preview=+aliasedPluginIO1003", "--memPoolSize=workspace:2048",
                     "--skipInference", f"--dynamicPlugins={mdir}/plugins/{T.ps.PLUGIN_LIBRARY}"):
            assert flag in args, flag
        shapes = _trtexec_shapes(args)
        assert (shapes["--minShapes"]["candidates"], shapes["--optShapes"]["candidates"],
                shapes["--maxShapes"]["candidates"]) == ("1x1", "8x64", f"8x{MAX_CANDIDATES}")
        assert shapes["--maxShapes"]["item_ids"] == f"8x{L}" and shapes["--minShapes"]["item_ids"] == "1x1"
        m = onnx.load(str(mdir / "onnx" / graph))
        g = m.graph
        assert not m.functions and any(n.op_type == "SelectiveScan" for n in g.node)   # scan nodes, no local bodies
        assert set(shapes["--maxShapes"]) == {i.name for i in g.input}          # every input, nothing else
        for i in g.input:                                                       # export.trt's own profile
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim]
            want = profile_shapes(i.name, dims, max_batch=8, max_steps=L)
            assert [shapes[k][i.name] for k in ("--minShapes", "--optShapes", "--maxShapes")] == [
                "x".join(map(str, s)) for s in want]
        readme = (mdir / "README.md").read_text()
        assert "1..8 rows a request" in readme and f"1..{L} new items a request" in readme
        assert f"1..{MAX_CANDIDATES:,} candidates a request" in readme and "--noTF32" in readme
    # an fp16 graph: strongly typed, TF32 left as export.trt leaves it (it clears TF32 for fp32 only)
    fp16 = tmp_path / "fp16"
    shutil_copy = __import__("shutil").copytree
    shutil_copy(mamba_cand_export, fp16)
    (fp16 / "state_spec.json").write_text(json.dumps({**spec, "precision": "fp16"}))
    mdir = T.write_repository(fp16, tmp_path / "repo16", backend="tensorrt")
    args, _ = _trtexec_args(mdir, tmp_path)
    assert "--stronglyTyped" in args and "--noTF32" not in args and "--noTF32" not in (mdir / "README.md").read_text()


def test_serve_sh_registers_the_plugins_for_tritonserver_only(mamba_export, tmp_path):
    """serve.sh, run with stand-ins for docker (it runs the container's script on the host, /models mapped to the
    repository), trtexec and tritonserver: each missing plan is built with ZOO_TRT_PLUGINS_AUTOREGISTER unset
    (trtexec registers the creators itself), then tritonserver starts with it set to 1 (Triton's tensorrt backend
    only dlopens the library, which then registers its scan plugins) and the first model's library as its plugins."""
    import subprocess

    repo = tmp_path / "repo"
    for name in ("a_trt", "b_trt"):
        T.write_repository(mamba_export, repo, name=name, backend="tensorrt", max_batch_size=4)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        '#!/usr/bin/env bash\n# stand-in: docker run ... -v HOST:/models IMAGE bash -c SCRIPT -> SCRIPT on the host\n'
        'for a in "$@"; do case $a in *:/models) host=${a%:/models};; esac; done\n'
        'script="${@: -1}"\nexec bash -c "${script//\\/models/$host}"\n')
    (bin_dir / "tritonserver").write_text(
        '#!/usr/bin/env bash\necho "$ZOO_TRT_PLUGINS_AUTOREGISTER $*" > "$(dirname "$0")/tritonserver-run"\n')
    fake = bin_dir / "trtexec"
    fake.write_text('#!/usr/bin/env bash\necho "${ZOO_TRT_PLUGINS_AUTOREGISTER:-unset}" >> "$(dirname "$0")/builds"\n'
                    'for a in "$@"; do case $a in --saveEngine=*) touch "${a#--saveEngine=}";; esac; done\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    run = subprocess.run(["bash", str(repo / "serve.sh")], capture_output=True, text=True, check=False,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TRTEXEC": str(fake)})
    assert run.returncode == 0, run.stderr
    assert (bin_dir / "builds").read_text().split() == ["unset", "unset"]          # both plans, registration off
    assert all((repo / n / "1" / "model.plan").is_file() for n in ("a_trt", "b_trt"))
    env, *argv = (bin_dir / "tritonserver-run").read_text().split()
    assert env == "1" and argv == [f"--model-repository={repo}",
                                   f"--backend-config=tensorrt,plugins={repo}/a_trt/plugins/{T.ps.PLUGIN_LIBRARY}"]
    assert "ZOO_TRT_PLUGINS_AUTOREGISTER=1" in (repo / "a_trt" / "README.md").read_text()


def test_serve_sh_quotes_folders_renamed_by_hand(tmp_path):
    """A TensorRT model folder renamed by hand (a blank, a quote, a '$', a line break) was written bare into serve.sh's
    bash -c text: the container's shell split or expanded it. Each build script and the plugin library now reach the
    container's shell as one word, as named, and the name in the comment line cannot start a command."""
    import subprocess

    names = ["a b", "it's $HOME `x`\nrm", "ok"]
    repo = tmp_path / "repo"
    for n in names:
        (repo / n / "plugins").mkdir(parents=True)
        (repo / n / "build_engine.sh").write_text('printf "%s|%s\\n" "$0" "$1" >> "$BUILDS"\n')
    (repo / "serve.sh").write_text(T._serve_sh(names))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        '#!/usr/bin/env bash\nfor a in "$@"; do case $a in *:/models) host=${a%:/models};; esac; done\n'
        'script="${@: -1}"\nexec bash -c "${script//\\/models/$host}"\n')
    (bin_dir / "tritonserver").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$BUILDS.server"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    builds = tmp_path / "builds"
    run = subprocess.run(["bash", str(repo / "serve.sh")], capture_output=True, text=True, check=False,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "BUILDS": str(builds)})
    assert run.returncode == 0, run.stderr
    lib = f"{repo}/a b/plugins/{T.ps.PLUGIN_LIBRARY}"
    assert builds.read_text().split("|" + lib + "\n")[:-1] == [f"{repo}/{n}/build_engine.sh" for n in names]
    assert (tmp_path / "builds.server").read_text().splitlines()[1] == f"--backend-config=tensorrt,plugins={lib}"
    assert "(a b, \"it's $HOME `x`\\nrm\", ok)" in (repo / "serve.sh").read_text().splitlines()[1]


# ====================================================== sequences, refusals and the CLI's flags (QA findings)
def test_python_backend_a_refused_request_restarts_the_idle_timer(mamba, mamba_export, tmp_path, monkeypatch):
    """Triton restarts a sequence's idle timer on every request, refused ones included: the model's idle sweep
    dropped a state 40 s after its last *answered* request although Triton still held the sequence (a refused event
    15 s before). A refused continuation, and a continuation the server refuses for its timestamps, keep it alive."""
    clock = [1000.0]
    model = _backend_model(mamba_export, tmp_path / "repo", monkeypatch, clock, idle_timeout_s=30)
    a = [3, 9, 27]
    _answers(model, mamba, model.execute([_seq_request(model, 8, a, start=True)]), [a])
    clock[0] = 1025.0
    (refused,) = model.execute([_seq_request(model, 8, [0])])
    assert refused.error is not None and "item index 0 is out of range" in refused.error.msg
    assert model.store[8][1] == 1025.0, "a refused request did not refresh the sequence's last-touch time"
    clock[0] = 1040.0                                          # 40 s after the START, 15 s after the refused event
    _answers(model, mamba, model.execute([_seq_request(model, 8, [4])]), [a + [4]])
    clock[0] = 1071.0                                          # 31 s after its last request: dropped, as by Triton
    (gone,) = model.execute([_seq_request(model, 8, [5])])
    assert gone.error is not None and "stayed idle longer than 30 s" in gone.error.msg


def test_python_backend_applies_refusals_in_request_order(mamba, mamba_export, tmp_path, monkeypatch):
    """A request refused while parsing drops its sequence's state in its turn among the batch's requests of that
    sequence: [valid continuation, refused START] answers the continuation (it was refused "has no state", the START's
    drop applied at parse time), and [valid START, refused re-START] drops the state the first START made (it was
    kept, and the next continuation silently continued it although _fail says a refused restart drops the state)."""
    model = _backend_model(mamba_export, tmp_path / "repo", monkeypatch, idle_timeout_s=30)
    ex = model.execute
    a = [3, 9, 27]
    _answers(model, mamba, ex([_seq_request(model, 5, a, start=True)]), [a])
    cont, restart = ex([_seq_request(model, 5, [4]), _seq_request(model, 5, [0], start=True)])
    _answers(model, mamba, [cont], [a + [4]])
    assert restart.error is not None and "item index 0 is out of range" in restart.error.msg
    assert 5 not in model.store, "the refused restart left the sequence's state"
    first, again = ex([_seq_request(model, 7, a, start=True), _seq_request(model, 7, [0], start=True)])
    _answers(model, mamba, [first], [a])
    assert again.error is not None and "item index 0 is out of range" in again.error.msg
    (nxt,) = ex([_seq_request(model, 7, [4])])
    assert nxt.error is not None and "sequence 7 has no state on the server" in nxt.error.msg, \
        "a continuation after a refused restart continued the first START's state"
    # a refused END after a valid continuation: the continuation runs, then the END's refusal drops the state
    _answers(model, mamba, ex([_seq_request(model, 6, a, start=True)]), [a])
    cont, end = ex([_seq_request(model, 6, [4]), _seq_request(model, 6, [0], end=True)])
    _answers(model, mamba, [cont], [a + [4]])
    assert end.error is not None and model.store == {}


def test_explicit_state_item_range_is_checked_per_event_and_row(mamba, mamba_export, tmp_path, monkeypatch):
    """ExplicitStateRecommender checks every event's items against the model's range (its config's n_items when no
    vocabulary is given) before anything is sent, naming the event and user; the server's own refusal of a batched
    request names the row (it named none, so one bad user of a batch could not be found)."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import ExplicitStateRecommender

    ins = {**STEP_IO[0], "h": ("FP32", (-1, 2))}
    outs = {**STEP_IO[1], "h_out": ("FP32", (-1, 2))}
    calls, _ = _fake_http_client(monkeypatch, ins, outs, {"state_init": json.dumps({"h": 0.0}),
                                                          "n_items": str(N_ITEMS)})
    rec = ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http")
    assert rec.n_items == N_ITEMS
    for bad in (500, 0):
        with pytest.raises(ValueError, match=rf"event 2 \(user 'c'\): item index {bad} out of range 1\.\.119"):
            rec.recommend_many([("a", [3]), ("b", [4]), ("c", [5, bad])])
    assert calls == [] and rec.store == {}
    rec.recommend_many([("a", [3]), ("b", [4])])
    assert calls and set(rec.store) == {"a", "b"}

    model = _backend_model(mamba_export, tmp_path / "repo", monkeypatch, state="explicit")
    r = {"item_ids": np.array([[3, 4], [5, 6], [7, N_ITEMS]], np.int64)}
    for name, shape, dt, init in model.states:
        r[name] = np.full((3, *shape), init, np.dtype(dt))
    (resp,) = model.execute([r])
    assert resp.error is not None and re.search(rf"item index {N_ITEMS} is out of range 1\.\.119 .*\(row 2\)$",
                                                resp.error.msg), resp.error.msg
    r = {k: v[:1] for k, v in r.items()}
    r["item_ids"] = np.array([[0, 3]], np.int64)
    (resp,) = model.execute([r])
    assert resp.error is not None and "item index 0 is out of range" in resp.error.msg and "(row" not in resp.error.msg


def test_candidates_errors_name_the_event_and_user(monkeypatch):
    """recommend_many(..., candidates=[[5], [6], [500]]) said "candidates of row 0" for the third event (each event's
    list was encoded alone); now the message names the event and its user, as the items' checks do."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import ExplicitStateRecommender, TritonRecommender

    ins = {**STEP_IO[0], "candidates": ("INT64", (-1, -1))}
    calls, _ = _fake_http_client(monkeypatch, ins, STEP_IO[1])
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS)
    with pytest.raises(ValueError, match=r"candidates of event 2 \(sequence 'c'\): item index 500 out of range"):
        rec.recommend_many([("a", [1]), ("b", [2]), ("c", [3])], candidates=[[5], [6], [500]])
    with pytest.raises(ValueError, match=r"candidates of row 0: item index 500 out of range"):
        rec.recommend("a", [1], candidates=[500])                    # one event: its only row
    assert calls == []
    calls, _ = _fake_http_client(monkeypatch, {**ins, "h": ("FP32", (-1, 2))}, {**STEP_IO[1], "h_out": ("FP32",
                                                                                                  (-1, 2))},
                                 {"state_init": json.dumps({"h": 0.0})})
    rec = ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS)
    with pytest.raises(ValueError, match=r"candidates of event 1 \(user 'b'\): item index 500 out of range"):
        rec.recommend_many([("a", [1]), ("b", [2])], candidates=[None, [500]])
    assert calls == []


def test_clients_drop_the_seen_items_an_exclude_seen_model_ranks_last(monkeypatch):
    """An --exclude-seen model fills the top-k slots it has no unseen item for with items of the history at
    SEEN_SCORE (float32's lowest value); the clients returned them as recommendations. They now drop them, as they
    drop a --candidates model's empty slots (id 0, -inf): fewer than k ids come back. The config does not say
    whether a model excludes the history, so the score alone decides (no real score reaches it)."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.runtime import SEEN_SCORE
    from export.triton_client import SEEN_SCORE as CLIENT_SEEN_SCORE
    from export.triton_client import TritonRecommender

    assert CLIENT_SEEN_SCORE == SEEN_SCORE
    _fake_http_client(monkeypatch, STEP_IO[0], STEP_IO[1])
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS)
    seen = np.float32(SEEN_SCORE)
    top = np.array([10, 4, 5, 6, 0], np.int64)
    scores = np.array([2.5, seen, seen, seen, -np.inf], np.float32)
    ids, sc = rec._pick(top, scores, 5)
    assert ids == [10] and sc.tolist() == [2.5], (ids, sc)
    ids, sc = rec._pick(np.array([3, 4, 5], np.int64), np.array([1.0, -3e38, -1e30], np.float32), 3)
    assert ids == [3, 4, 5]                                        # very low real scores are kept


@pytest.mark.parametrize("error", ["timeout", "deadline"])
def test_client_treats_a_request_without_answer_as_applied_maybe(monkeypatch, error):
    """A request that times out (HTTP: the socket's timeout; gRPC: DEADLINE_EXCEEDED) was usually applied by the
    server: it dropped a timed-out prime from the live sequences (so end() sent nothing, leaving the state and its
    slot on the server) and let a retried continuation go out (applied twice). Now the sequence is uncertain: its next
    event is refused, sending nothing, naming why, until prime() restarts it; end() still sends its END."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from tritonclient.utils import InferenceServerException

    from export.triton_client import TritonRecommendError, TritonRecommender, sequence_id

    calls, fail = _fake_http_client(monkeypatch, *STEP_IO)
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS)
    u = sequence_id("u")
    no_answer = TimeoutError("timed out") if error == "timeout" else InferenceServerException(
        "Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
    fail[0] = no_answer
    with pytest.raises(TritonRecommendError, match="no answer from the server .*applied or not.*prime"):
        rec.prime("u", [1, 2])
    fail[0] = None
    calls.clear()
    for start in (None, False):
        with pytest.raises(TritonRecommendError, match=r"sequence 'u': an earlier request of it got no answer"):
            rec.recommend("u", [3], start=start)
    with pytest.raises(TritonRecommendError, match="got no answer"):
        rec.recommend_many([("other", [1]), ("u", [3])])             # refused before any event is sent
    assert calls == []
    rec.end("u")                                                     # the server may hold it: the END goes out
    assert [(c["sequence_id"], c["sequence_start"], c["sequence_end"]) for c in calls] == [(u, False, True)]
    rec.recommend("u", [4])                                          # closed: its next event starts it
    assert calls[-1]["sequence_start"] is True
    # a continuation without answer: no retry goes out; prime() restarts it
    fail[0] = no_answer
    with pytest.raises(TritonRecommendError, match="no answer"):
        rec.recommend("u", [5])
    fail[0] = None
    n = len(calls)
    with pytest.raises(TritonRecommendError, match=r"prime\(\)"):
        rec.recommend("u", [5])
    assert len(calls) == n
    rec.prime("u", [4, 5])
    rec.recommend("u", [6])
    assert [c["sequence_start"] for c in calls[n:]] == [True, False]
    # an answered refusal is no such case: the sequence stays live
    fail[0] = "m: item index 500 is out of range 1..119"
    with pytest.raises(TritonRecommendError, match="out of range"):
        rec.recommend("u", [7])
    fail[0] = None
    rec.recommend("u", [7])
    assert calls[-1]["sequence_start"] is False


def test_client_end_always_sends_the_end(monkeypatch):
    """end() of a sequence this client did not start (another client, a restarted process) sent nothing, so no one
    could free its state and its slot (the oldest batcher holds max_candidate_sequences live sequences). Now the END
    always goes out; the server's answer that it holds no such sequence (Triton's START-flag message, the python
    model's "no state") is no error, any other is raised."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import TritonRecommendError, TritonRecommender, sequence_id

    calls, fail = _fake_http_client(monkeypatch, *STEP_IO, backend="python")
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS)
    rec.end("started-elsewhere")
    assert [(c["sequence_id"], c["sequence_start"], c["sequence_end"]) for c in calls] == [
        (sequence_id("started-elsewhere"), False, True)]
    assert calls[0]["arrays"]["item_ids"].shape == (1, 0)
    for gone in ("inference request for sequence 7 to model 'm' must specify the START flag on the first request of "
                 "the sequence", "m: sequence 7 has no state on the server"):
        fail[0] = gone
        rec.end("never-started")                                      # already gone: nothing to free
    fail[0] = "onnxruntime failed: something else"
    with pytest.raises(TritonRecommendError, match="something else"):
        rec.end("never-started")


def test_generated_readme_without_a_vocabulary_says_ids_are_internal(mamba_export, tmp_path):
    """A model folder without item_vocab.json: its README named the file and passed vocab= to the clients; it now
    says ids are the graph's internal indices. With a vocabulary, the README names it."""
    for backend, state in (("python", "implicit"), ("onnxruntime", "explicit")):
        mdir = T.write_repository(mamba_export, tmp_path / f"plain_{backend}", backend=backend, state=state)
        text = (mdir / "README.md").read_text()
        assert not (mdir / "item_vocab.json").exists()
        assert "item_vocab.json" not in text and "vocab=" not in text, text
        assert "No item vocabulary was shipped" in text and f"internal item indices (1..{N_ITEMS - 1}" in text
        for block in re.findall(r"```python\n(.*?)```", text, re.S):
            compile(block, str(mdir / "README.md"), "exec")
        mdir = T.write_repository(mamba_export, tmp_path / f"vocab_{backend}", backend=backend, state=state,
                                  vocab_path=str(mamba_export / "item_vocab.json"))
        text = (mdir / "README.md").read_text()
        assert "`item_vocab.json` (beside `config.pbtxt`) maps them" in text and "vocab=" in text


def _readme_shell_lines(text):
    """The lines of the README ``text``'s shell code fences (```bash / ```sh / plain ```), blank lines left out."""
    out, lang = [], None                                    # lang: the open fence's language, None outside one
    for line in text.splitlines():
        if line.startswith("```"):
            lang = line[3:].strip() if lang is None else None
        elif lang in ("bash", "sh", "") and line.strip():
            out.append(line)
    assert lang is None, "a code fence is not closed"
    return out


def _check_readme_commands(repo_word, mark, text, seen, name=None):
    """Each shell line of ``text`` splits (shlex, comments dropped) with the repository path ``repo_word`` whole in
    one word, once per ``mark`` (a part of the path that quoting leaves as it is) in the line: the word itself,
    ``repo_word/...``, or docker's ``repo_word:/models``; the flags of the python commands parse (argparse) to that
    repository and model ``name``. Adds what each line runs to ``seen``."""
    import argparse
    import shlex

    flags = argparse.ArgumentParser(add_help=False)
    for flag in ("--repo", "--name", "--data", "--out", "--http-port", "--grpc-port"):
        flags.add_argument(flag)
    for line in _readme_shell_lines(text):
        args = shlex.split(line, comments=True)
        words = [a for a in args if repo_word in a]
        assert len(words) == line.count(mark), line                  # the path never split over words
        assert all(a in (repo_word, f"{repo_word}:/models") or a.startswith(f"{repo_word}/") for a in words), line
        if args[:2] == ["docker", "run"]:
            assert args[args.index("-v") + 1] == f"{repo_word}:/models", line
            seen.add("docker")
        elif args[:3] == ["python", "-m", "export.perf_data"]:
            ns, _ = flags.parse_known_args(args[3:])
            assert (ns.repo, ns.name) == (repo_word, name), line
            seen.add("perf_data")
        elif args[1:2] == ["export/triton_server.py"]:
            assert flags.parse_known_args(args[2:])[0].repo == repo_word, line
            seen.add("triton_server")
        elif args[0] == "bash" and args[1].endswith("/serve.sh"):
            assert args == ["bash", f"{repo_word}/serve.sh"], line
            seen.add("serve.sh")


def test_the_perf_analyzer_line_keeps_a_path_with_a_blank_one_word():
    """export.perf_data printed ``--input-data {out}`` raw: an --out with a blank (or one beginning with '-') gave a
    perf_analyzer line the shell splits. Each value is one shell word now."""
    import shlex
    import types

    from export.perf_data import perf_analyzer_command

    cfg = types.SimpleNamespace(name="m", HasField=lambda field: False)
    for out in ("/tmp/perf é 中文/data.json", "-data.json", "plain.json"):
        words = shlex.split(perf_analyzer_command(cfg, out, 3))
        given = words[words.index("--input-data") + 1]
        assert given in (out, "./" + out), words


def test_readme_commands_survive_an_unusual_repository_path(mamba_export, tmp_path, monkeypatch):
    """The commands the generated READMEs give were the repository path pasted raw (``-v PATH:/models``, ``--repo
    PATH``): a path with a blank, a quote or '$' split or broke them. Every shell line of every README written (each
    model folder's, the index, plugins/) now keeps the path one word, docker's ``-v`` argument one word, a model name
    beginning with '-' is passed as ``--name=NAME``, and the clients' ``vocab=`` is the path as a Python string. A
    relative path beginning with '-' (``_readme`` of a repository not resolved) gets ``./``."""
    import ast
    import pathlib

    # no plugin library built in this checkout (a build there is copied instead of plugins/README.md, checked below)
    monkeypatch.setattr("export.build_plugins.library_path", lambda: tmp_path / "not-built.so")
    repo = (tmp_path / "triton é 中文 a'b \"c\" $x").resolve()
    vocab = str(mamba_export / "item_vocab.json")
    for name, backend, state in (("m_py", "python", "implicit"), ("m_ort", "onnxruntime", "implicit"),
                                 ("-m_trt", "tensorrt", "implicit"), ("m_ex", "onnxruntime", "explicit")):
        T.write_repository(mamba_export, repo, name=name, backend=backend, state=state, vocab_path=vocab)
    seen, readmes = set(), sorted(repo.rglob("README.md"))
    assert repo / "README.md" in readmes and repo / "-m_trt" / "plugins" / "README.md" in readmes
    for readme in readmes:
        text = readme.read_text(encoding="utf-8")
        name = readme.parent.name if readme.parent.parent == repo else None
        _check_readme_commands(str(repo), "中文", text, seen, name)
        for block in re.findall(r"```python\n(.*?)```", text, re.S):
            vocabs = [k.value.value for node in ast.walk(ast.parse(block)) if isinstance(node, ast.Call)
                      for k in node.keywords if k.arg == "vocab"]
            assert vocabs == [str(repo / name / "item_vocab.json")], block
    assert seen == {"docker", "perf_data", "triton_server", "serve.sh"}
    spec = T.read_spec(mamba_export)
    seen = set()
    for backend in ("python", "tensorrt", "onnxruntime"):
        text = T._readme(pathlib.Path("-r x"), "m", backend, "implicit", spec)
        _check_readme_commands("./-r x", "r x", text, seen, "m")
        assert " -r x" not in text and " '-r x" not in text, text
    assert seen == {"docker", "perf_data", "triton_server", "serve.sh"}


def test_generated_readme_states_the_sequence_slots(mamba_export, tmp_path):
    """The implicit-state README says how many live sequences the batcher holds and when an idle one is freed, and
    that end() frees a slot from any client; the explicit-state one has no sequence slots."""
    mdir = T.write_repository(mamba_export, tmp_path / "r", backend="python", idle_timeout_s=45,
                              max_candidate_sequences=256)
    text = (mdir / "README.md").read_text()
    assert "holds at most 256 live sequences" in text and "idle for 45 s" in text and "from any client" in text
    assert "not idempotent" in text
    mdir = T.write_repository(mamba_export, tmp_path / "r", backend="python", state="explicit")
    assert "Sequence slots" not in (mdir / "README.md").read_text()


def test_cli_refuses_vocab_with_model(tmp_path, capsys):
    """--vocab was ignored with --model (the model's own vocabulary shipped, or none); it is a usage error now, as
    --topk with --onnx is, before anything is loaded or written."""
    with pytest.raises(SystemExit) as e:
        T.main(["--model", str(tmp_path / "no-such-model"), "--repo", str(tmp_path / "r"), "--vocab",
                str(tmp_path / "v.json")])
    assert e.value.code == 2 and "--vocab applies to --onnx: --model ships the model's own" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags,refused", [
    (["--state", "explicit"], "--state"), (["--state", "implicit"], "--state"),
    (["--idle-timeout-s", "5"], "--idle-timeout-s"), (["--max-candidate-sequences", "8"], "--max-candidate-sequences"),
    (["--idle-timeout-s", "5", "--max-candidate-sequences", "8"], "--idle-timeout-s, --max-candidate-sequences")])
def test_cli_refuses_sequence_flags_for_a_window_graph(tmp_path, flags, refused, capsys):
    """A window graph is served stateless with dynamic batching: --state, --idle-timeout-s and
    --max-candidate-sequences were accepted and ignored; given explicitly they are usage errors naming the flag
    (the defaults still work), for --onnx and for --model (before the export)."""
    sas = tmp_path / "sasrec"
    export_model(_sasrec(), sas, kind="window", topk=K, verify=False)
    with pytest.raises(SystemExit) as e:
        T.main(["--onnx", str(sas), "--repo", str(tmp_path / "r"), "--backend", "python", *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{refused}: the graph in {sas} is a window graph" in err, err
    assert not (tmp_path / "r").exists()
    _sasrec().save_pretrained(tmp_path / "m")
    with pytest.raises(SystemExit) as e:
        T.main(["--model", str(tmp_path / "m"), "--repo", str(tmp_path / "r"), "--no-verify", *flags])
    assert e.value.code == 2 and f"{refused}: --model {tmp_path / 'm'} is a window graph" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert T.main(["--onnx", str(sas), "--repo", str(tmp_path / "r"), "--backend", "python"]) == 0


def test_cli_refuses_sequence_batcher_flags_with_explicit_state(mamba_export, tmp_path, capsys):
    """--state explicit has no sequence batcher: --idle-timeout-s / --max-candidate-sequences given with it are usage
    errors; with implicit state they reach the config, and the defaults still apply when they are left out."""
    for flags in (["--idle-timeout-s", "5"], ["--max-candidate-sequences", "8"]):
        with pytest.raises(SystemExit) as e:
            T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "r"), "--state", "explicit", *flags])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"{flags[0]}: --state explicit serves with dynamic batching" in err, err
    assert not (tmp_path / "r").exists()
    assert T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "r"), "--state", "explicit"]) == 0
    assert T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "r"), "--name", "i", "--idle-timeout-s", "5",
                   "--max-candidate-sequences", "8"]) == 0
    seq = _parse(tmp_path / "r" / "i" / "config.pbtxt").sequence_batching
    assert seq.max_sequence_idle_microseconds == 5_000_000 and seq.oldest.max_candidate_sequences == 8
    assert T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "r"), "--name", "d"]) == 0
    seq = _parse(tmp_path / "r" / "d" / "config.pbtxt").sequence_batching
    assert seq.max_sequence_idle_microseconds == 600_000_000 and seq.oldest.max_candidate_sequences == 1024


def test_repository_files_the_generator_did_not_write_are_kept(mamba_export, tmp_path, capsys):
    """The repository's README.md (and, with a TensorRT model, serve.sh) were overwritten without a check; one that
    lacks the generator's mark is now refused (usage error before anything is written; FileExistsError from
    write_repository) unless --force / force=True. The generator's own files are rewritten as before."""
    repo = tmp_path / "r"
    repo.mkdir()
    (repo / "README.md").write_text("# my notes\n")
    with pytest.raises(SystemExit) as e:
        T.main(["--onnx", str(mamba_export), "--repo", str(repo), "--name", "m"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{repo / 'README.md'}: not written by python -m export.triton" in err, err
    assert "--force" in err and (repo / "README.md").read_text() == "# my notes\n" and not (repo / "m").exists()
    with pytest.raises(FileExistsError, match="README.md: not written by python -m export.triton"):
        T.write_repository(mamba_export, repo, name="m")
    assert not (repo / "m").exists()
    assert T.main(["--onnx", str(mamba_export), "--repo", str(repo), "--name", "m", "--force"]) == 0
    assert "[`m`](m/README.md)" in (repo / "README.md").read_text()
    assert T.main(["--onnx", str(mamba_export), "--repo", str(repo), "--name", "m2"]) == 0     # ours: rewritten
    assert "[`m2`](m2/README.md)" in (repo / "README.md").read_text()
    (repo / "serve.sh").write_text("#!/bin/sh\necho mine\n")
    T.write_repository(mamba_export, repo, name="m3", backend="onnxruntime")        # no TensorRT: serve.sh unused
    assert (repo / "serve.sh").read_text() == "#!/bin/sh\necho mine\n"
    with pytest.raises(SystemExit) as e:
        T.main(["--onnx", str(mamba_export), "--repo", str(repo), "--name", "t", "--backend", "tensorrt"])
    assert e.value.code == 2 and f"{repo / 'serve.sh'}: not written" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match="serve.sh: not written"):
        T.write_repository(mamba_export, repo, name="t", backend="tensorrt")
    assert (repo / "serve.sh").read_text() == "#!/bin/sh\necho mine\n" and not (repo / "t").exists()
    T.write_repository(mamba_export, repo, name="t", backend="tensorrt", force=True)
    assert T.SERVE_SH_MARK in (repo / "serve.sh").read_text()


def test_repository_readme_keeps_the_text_written_below_its_keep_line(mamba_export, tmp_path):
    """A user's edits to the generated index README.md were silently dropped at the next run. Text below its last
    line (README_KEEP, as bench/benchutil.py's KEEP line) is kept now, at every rewrite, and the README says so; what
    stands above that line is the generator's and is replaced."""
    repo = tmp_path / "r"
    assert T.main(["--onnx", str(mamba_export), "--repo", str(repo), "--name", "m"]) == 0
    readme = (repo / "README.md").read_text(encoding="utf-8")
    assert readme.endswith(T.README_KEEP + "\n") and "put notes of your own below the comment line" in readme
    notes = "\n## Our notes\n\nServed from rack 7 — ask ops (ünïcode kept).\n"
    (repo / "README.md").write_text(readme.replace("# Triton model repository", "# edited above the line") + notes,
                                    encoding="utf-8")
    for name in ("m2", "m3"):                                   # kept once, at each rewrite
        assert T.main(["--onnx", str(mamba_export), "--repo", str(repo), "--name", name]) == 0
        again = (repo / "README.md").read_text(encoding="utf-8")
        assert again.endswith(T.README_KEEP + "\n" + notes) and again.count("## Our notes") == 1, again
        assert "# edited above the line" not in again and f"[`{name}`]({name}/README.md)" in again
    assert T.foreign_repository_files(repo) == []                 # still the generator's


def test_live_end_from_another_client_frees_the_sequence(live_server, mamba):
    """A second client (another worker, a restarted process) ends a sequence the first one started: the server frees
    its state (live_sequences drops); ending a sequence the server does not hold answers Triton's START-flag error,
    which end() takes as already gone."""
    from export.triton_client import TritonRecommender

    h, repo = live_server
    v = mamba.item_vocab
    a, b = _client(h, repo), TritonRecommender(h.grpc_url, "m4r", protocol="grpc", vocab=v)
    a.prime("shared-user", v.decode([3, 4, 5]))
    live = a.last_live_sequences
    b.end("shared-user")
    assert b.last_live_sequences == live - 1, "an END from another client did not free the sequence"
    b.end("never-started-anywhere")                        # the server answers "must specify the START flag": gone
    http = TritonRecommender(h.http_url, "m4r", protocol="http", vocab=v)
    http.end("never-started-anywhere")
    a.client.close(), b.client.close(), http.client.close()


@pytest.mark.parametrize("error", ["timeout", "deadline"])
def test_stateless_clients_say_a_call_without_answer_can_be_sent_again(monkeypatch, error):
    """The explicit-state and window clients keep nothing on the server, so a call without an answer is safe to send
    again, unlike a TritonRecommender event; they said nothing of it (a raw socket timeout escaped as OSError, a
    deadline as Triton's bare message). Now a TritonRecommendError says so, and the explicit client stored nothing."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from tritonclient.utils import InferenceServerException

    from export.triton_client import ExplicitStateRecommender, TritonRecommendError, WindowRecommender

    no_answer = TimeoutError("timed out") if error == "timeout" else InferenceServerException(
        "Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
    _, fail = _fake_http_client(monkeypatch, {**STEP_IO[0], "h": ("FP32", (-1, 2))},
                                {**STEP_IO[1], "h_out": ("FP32", (-1, 2))}, {"state_init": json.dumps({"h": 0.0})})
    store = {}
    rec = ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS, store=store)
    fail[0] = no_answer
    with pytest.raises(TritonRecommendError, match=r"no answer from the server .*none was stored .*sent again"):
        rec.recommend_many([("a", [1]), ("b", [2])])
    assert store == {}
    fail[0] = None
    rec.recommend_many([("a", [1]), ("b", [2])])                  # sent again: applied once
    assert sorted(store) == ["a", "b"]
    _, fail = _fake_http_client(monkeypatch, *STEP_IO, {"kind": "window", "max_seq_length": "8"})
    win = WindowRecommender("127.0.0.1:1", "w", protocol="http", n_items=N_ITEMS)
    fail[0] = no_answer
    with pytest.raises(TritonRecommendError, match=r"no answer from the server .*keeps nothing.*sent again"):
        win.recommend([1, 2, 3])
    fail[0] = "w: item index 500 is out of range 0..119"             # an answered refusal: Triton's message
    with pytest.raises(TritonRecommendError, match="^w: item index 500"):
        win.recommend([1, 2, 3])


# ============================================================ what export.triton and its tools write (QA write review)
def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_model_folder_the_generator_did_not_write_is_kept(mamba, mamba_export, tmp_path, capsys, monkeypatch):
    """REPO/<name> was replaced whole without --force, a folder the generator never wrote (the user's config, plans
    of two versions) included: it is now refused, before any export (CLI usage error; FileExistsError from
    write_repository), unless --force. A folder it wrote is refused once its files changed or another was added (an
    edited config, a version 2/), but not for the engine build_engine.sh builds; one written before the mark (its
    README carries the generator's line) is still replaced."""
    repo = tmp_path / "r"
    mine = repo / "gru"
    for v in ("1", "2"):
        (mine / v).mkdir(parents=True)
        (mine / v / "model.plan").write_text("precious")
    (mine / "config.pbtxt").write_text('name: "mine"\n')
    before = _files(mine)
    with pytest.raises(SystemExit) as e:
        T.main(["--onnx", str(mamba_export), "--repo", str(repo), "--name", "gru"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{mine.resolve()} was not written by python -m export.triton" in err, err
    assert "--force" in err and _files(mine) == before
    with pytest.raises(FileExistsError, match="was not written by python -m export.triton"):
        T.write_repository(mamba_export, repo, name="gru")
    assert _files(mine) == before
    # --model: refused after the model is loaded (its default name is known), before the export
    from export import onnx as export_onnx

    mamba.save_pretrained(tmp_path / "m")
    default = repo / "mamba4rec_step_onnxruntime_implicit"
    default.mkdir()
    (default / "config.pbtxt").write_text('name: "x"\n')

    def no_export(*a, **k):
        raise AssertionError("exported before the model folder was checked")

    monkeypatch.setattr(export_onnx, "export_model", no_export)
    with pytest.raises(SystemExit) as e:
        T.main(["--model", str(tmp_path / "m"), "--repo", str(repo), "--no-verify"])
    assert e.value.code == 2 and "mamba4rec_step_onnxruntime_implicit was not written" in capsys.readouterr().err
    assert (default / "config.pbtxt").read_text() == 'name: "x"\n'
    monkeypatch.undo()
    assert T.main(["--onnx", str(mamba_export), "--repo", str(repo), "--name", "gru", "--force"]) == 0
    assert not (mine / "2").exists() and _parse(mine / "config.pbtxt").name == "gru"
    assert (mine / T.MODEL_MARK).is_file()

    # the generator's own folder: rewritten; changed or added to since, refused naming the files
    mdir = T.write_repository(mamba_export, repo, name="ours")
    T.write_repository(mamba_export, repo, name="ours", queue_delay_us=700)
    (mdir / "1" / "__pycache__").mkdir()                      # the python backend's import of model.py
    (mdir / "1" / "__pycache__" / "model.cpython-312.pyc").write_bytes(b"x")
    T.write_repository(mamba_export, repo, name="ours", queue_delay_us=800)
    (mdir / "config.pbtxt").write_text((mdir / "config.pbtxt").read_text().replace("count: 1", "count: 4"))
    assert T.model_versions(mdir) == [2, 3]          # each write the next version, the one before kept (session 46)
    (mdir / "9").mkdir()                              # a version folder added by hand
    (mdir / "9" / "model.onnx").write_bytes(b"v9")
    edited = _files(mdir)
    with pytest.raises(FileExistsError, match=r"holds files changed or added since .*\(9/model.onnx, config.pbtxt\)"):
        T.write_repository(mamba_export, repo, name="ours")
    with pytest.raises(SystemExit) as e:
        T.main(["--onnx", str(mamba_export), "--repo", str(repo), "--name", "ours"])
    assert e.value.code == 2 and "9/model.onnx, config.pbtxt" in capsys.readouterr().err
    assert _files(mdir) == edited
    T.write_repository(mamba_export, repo, name="ours", force=True)
    assert T.model_versions(mdir) == [10]             # after the highest; the folder forced over is not kept
    # a folder from before the mark: the generator's README line vouches for it
    (mdir / T.MODEL_MARK).unlink()
    T.write_repository(mamba_export, repo, name="ours")
    (mdir / T.MODEL_MARK).write_text("{cut sh")                 # a mark cut short vouches for nothing
    with pytest.raises(FileExistsError, match="was not written"):
        T.write_repository(mamba_export, repo, name="ours")


def test_regenerating_a_tensorrt_folder_keeps_a_plan_built_from_the_same_inputs(mamba_export, tmp_path, capsys):
    """The 1/model.plan that build_engine.sh built (minutes of TensorRT build) was deleted whenever its folder was
    regenerated: it is kept when the graph, plugin library and build settings are byte-identical (a new queue delay
    changes the config only), and the output says it was dropped otherwise (a new max_batch_size is another profile;
    an onnxruntime model has no engine). Each regeneration writes the next version folder (session 46): the plan
    kept moves into it."""
    repo = tmp_path / "r"
    mdir = T.write_repository(mamba_export, repo, name="t", backend="tensorrt", max_batch_size=8)
    plan = lambda v: mdir / str(v) / "model.plan"  # noqa: E731
    plan(1).write_bytes(b"engine built in the container")
    capsys.readouterr()
    T.write_repository(mamba_export, repo, name="t", backend="tensorrt", max_batch_size=8, queue_delay_us=900)
    assert plan(2).read_bytes() == b"engine built in the container" and "queue_delay_microseconds: 900" in (
        mdir / "config.pbtxt").read_text()
    assert f"note: kept {plan(1)}" in capsys.readouterr().err
    T.write_repository(mamba_export, repo, name="t", backend="tensorrt", max_batch_size=16)
    assert not plan(3).exists()
    err = capsys.readouterr().err
    assert f"note: dropped {plan(2)}: the graph, plugin library or build settings" in err and "serve.sh builds" in err
    plan(3).write_bytes(b"engine")
    given = tmp_path / "given.plan"
    given.write_bytes(b"the one passed")
    T.write_repository(mamba_export, repo, name="t", backend="tensorrt", max_batch_size=16, plan=str(given))
    assert plan(4).read_bytes() == b"the one passed"
    T.write_repository(mamba_export, repo, name="t", backend="onnxruntime")
    assert not plan(5).exists() and "no longer served by TensorRT" in capsys.readouterr().err
    assert T.model_versions(mdir) == [4, 5]


def test_regenerating_keeps_the_plugin_library_put_in_by_hand(mamba_export, tmp_path, capsys, monkeypatch):
    """Where the generator had no plugin library to copy, plugins/README.md asks for one to be put there: that file is
    no reason to refuse the folder, and it is carried into the regenerated folder (with the plan built with it)."""
    from export import build_plugins

    monkeypatch.setattr(build_plugins, "library_path", lambda *a, **k: tmp_path / "none.so")
    repo = tmp_path / "r"
    mdir = T.write_repository(mamba_export, repo, name="t", backend="tensorrt")
    lib = mdir / "plugins" / T.ps.PLUGIN_LIBRARY
    assert (mdir / "plugins" / "README.md").is_file() and not lib.exists()
    lib.write_bytes(b"built for the container")
    (mdir / "1" / "model.plan").write_bytes(b"engine")
    T.write_repository(mamba_export, repo, name="t", backend="tensorrt", queue_delay_us=900)     # version 2
    assert lib.read_bytes() == b"built for the container" and (mdir / "2" / "model.plan").read_bytes() == b"engine"
    assert f"note: kept {lib}, put there by hand" in capsys.readouterr().err
    lib.write_bytes(b"rebuilt")                                   # still the user's: carried again
    T.write_repository(mamba_export, repo, name="t", backend="tensorrt")
    assert lib.read_bytes() == b"rebuilt"


def _without_model_record(mdir):
    """Make ``mdir`` a folder of the generator before its mark recorded the model (the checksums alone)."""
    mark = json.loads((mdir / T.MODEL_MARK).read_text())
    del mark["model"]
    (mdir / T.MODEL_MARK).write_text(json.dumps(mark))


def test_replacing_a_folder_that_served_another_model_says_so(mamba_export, lru_export, tmp_path, capsys):
    """A model folder written over one that served another model said nothing beyond its `wrote` line. Its mark
    records the model now (type, source, config hash; for --onnx the export folder and the spec's model fields), and
    replacing a folder that served another one prints one note naming the folder, what it served and what it serves
    now; a folder of an earlier version (no such record) is judged by its config.pbtxt's model_type and n_items. The
    same model again (other serving settings, another backend) is quiet."""
    repo = tmp_path / "r"
    _, lru_dir = lru_export
    mamba_src, lru_src = mamba_export.resolve(), lru_dir.resolve()
    mdir = T.write_repository(mamba_export, repo, name="m", backend="python")
    T.write_repository(mamba_export, repo, name="m", backend="python", queue_delay_us=700)
    T.write_repository(mamba_export, repo, name="m")
    assert "served" not in capsys.readouterr().err
    rec = json.loads((mdir / T.MODEL_MARK).read_text())["model"]
    assert (rec["model_type"], rec["n_items"], rec["via"], rec["source"]) == ("mamba4rec", N_ITEMS, "onnx",
                                                                              str(mamba_src))
    T.write_repository(lru_dir, repo, name="m", backend="python")
    err = capsys.readouterr().err
    assert err == (f"note: {mdir} served mamba4rec from the export.onnx folder {mamba_src}; it now serves lrurec from "
                   f"the export.onnx folder {lru_src}\n"), err
    _without_model_record(mdir)                                 # an earlier version's folder: its config.pbtxt says
    T.write_repository(mamba_export, repo, name="m", backend="python")
    assert capsys.readouterr().err == (f"note: {mdir} served lrurec (n_items {N_ITEMS}; its source was not recorded); "
                                       f"it now serves mamba4rec from the export.onnx folder {mamba_src}\n")
    _without_model_record(mdir)
    T.write_repository(mamba_export, repo, name="m", backend="python")
    assert capsys.readouterr().err == ""


def test_cli_model_says_when_the_folder_served_another_model(tmp_path, capsys, monkeypatch):
    """--model: the folder records the folder (resolved) or name the model was loaded from and the hash of its config.
    The same folder again is quiet -- by another path, retrained weights included --; another config in it, or
    another folder, is named in one note on stderr."""
    from tiny_models import tiny, tiny_config
    from zoo.models.sasrec import SASRecConfig, SASRecModel

    a, b, repo = tmp_path / "a", tmp_path / "b", tmp_path / "r"
    tiny("sasrec").save_pretrained(a)
    tiny("gru4rec").save_pretrained(b)

    def run(src):
        assert T.main(["--model", str(src), "--repo", str(repo), "--name", "m", "--backend", "python",
                       "--no-verify"]) == 0
        return capsys.readouterr().err

    run(a)
    torch.manual_seed(5)                                        # retrained: other weights, the same config
    SASRecModel(tiny_config("sasrec")).save_pretrained(a)
    monkeypatch.chdir(tmp_path)
    assert "served" not in run("a")
    mdir, src_a, src_b = (repo / "m").resolve(), os.path.realpath(a), os.path.realpath(b)
    SASRecModel(SASRecConfig(**{**tiny_config("sasrec").to_dict(), "hidden_dropout": 0.1})).save_pretrained(a)
    err = run(a)
    assert re.search(rf"^note: {re.escape(str(mdir))} served sasrec from {re.escape(src_a)} \(config "
                     rf"sha256:[0-9a-f]{{12}}\); it now serves sasrec from {re.escape(src_a)} \(config "
                     rf"sha256:[0-9a-f]{{12}}\)$", err, re.M), err
    assert run(b) == f"note: {mdir} served sasrec from {src_a}; it now serves gru4rec from {src_b}\n"


_KILLED_EXPORT = """
import os, shutil, signal, sys
import export.triton as T
copy = shutil.copy
def dying_copy(src, dst, *a, **k):
    if str(src).endswith("triton_server.py"):       # the model folder half assembled
        os.kill(os.getpid(), signal.SIGKILL)
    return copy(src, dst, *a, **k)
shutil.copy = dying_copy
sys.exit(T.main(sys.argv[1:]))
"""


def _killed_export(repo, export_dir, name):
    """``python -m export.triton --backend python`` SIGKILLed while it assembles the model folder."""
    import subprocess

    run = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, "--onnx", str(export_dir), "--repo", str(repo),
                          "--name", name, "--backend", "python"], capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == -9, run.stderr


def test_a_killed_export_leaves_nothing_in_the_repository_and_the_next_run_cleans_up(mamba_export, tmp_path,
                                                                                       monkeypatch, capsys):
    """A SIGKILLed export.triton left .NAME.staged-* inside the repository, on which Triton refuses to start
    ("unexpected directory name"), and the next run made another: the model folder is now staged beside the
    repository, the repository keeps the complete folder that was there, and the next run removes the stage of the
    dead writer, but never a live writer's."""
    repo = tmp_path / "r"
    mdir = T.write_repository(mamba_export, repo, name="m", backend="python")
    before = _files(mdir)
    _killed_export(repo, mamba_export, "m")
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "m"]      # nothing Triton would take for a model
    assert _files(mdir) == before
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".r.export-triton-")]
    assert len(left) == 1 and (left[0] / "writer.lock").is_file()
    capsys.readouterr()
    T.write_repository(mamba_export, repo, name="m", backend="python", queue_delay_us=700)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert f"note: removed {left[0].resolve()}, left by an export.triton that was killed" in capsys.readouterr().err
    # a live writer's stage stays; a dead writer's that had moved the old folder aside puts it back
    with pytest.raises(KeyboardInterrupt):                    # (interrupted: nothing written, no stage left)
        with T._staged_model_folder(repo / "other") as live:
            (live / "x").write_text("being written")
            assert T.remove_dead_stages(repo) == [] and (live / "x").is_file()
            raise KeyboardInterrupt
    assert not (repo / "other").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    stage = tmp_path / ".r.export-triton-dead"
    stage.mkdir()
    (stage / "writer.lock").write_text(json.dumps({"target": str(mdir.resolve()), "pid": 1}))
    os.rename(mdir, stage / "replaced")                        # killed between the swap's two renames
    assert T.remove_dead_stages(repo) == [stage.resolve()]
    assert _files(mdir) != {} and not stage.exists()
    assert (mdir / "config.pbtxt").read_text().count("max_queue_delay_microseconds: 700") == 1
    # a parent the stage cannot go in (not writable, another file system): a hidden stage inside, cleaned up alike
    mkdtemp = T.tempfile.mkdtemp

    def no_parent(prefix=None, dir=None, **k):
        if os.path.samefile(dir, tmp_path):
            raise PermissionError(13, "Permission denied", dir)
        return mkdtemp(prefix=prefix, dir=dir, **k)

    monkeypatch.setattr(T.tempfile, "mkdtemp", no_parent)
    with pytest.raises(KeyboardInterrupt):
        with T._staged_model_folder(repo.resolve() / "m") as inside:
            assert inside.parent.parent == repo.resolve() and inside.parent.name.startswith(".export-triton-")
            raise KeyboardInterrupt
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "m"] and _files(mdir) != {}
    dead = repo / ".export-triton-dead"
    dead.mkdir()
    (dead / "writer.lock").write_text("{}")
    # and the leftovers of the generator before this one, whose writer cannot be told dead: named, not removed
    (repo / ".m.staged-abc123").mkdir()
    T.write_repository(mamba_export, repo, name="m", backend="python")
    err = capsys.readouterr().err
    assert sorted(p.name for p in repo.iterdir()) == [".m.staged-abc123", "README.md", "m"]   # its own stage gone
    assert f"{repo.resolve() / '.m.staged-abc123'}: left by an interrupted export.triton of an earlier version" in err


def test_repository_readme_and_serve_sh_are_written_whole(mamba_export, tmp_path, monkeypatch):
    """The repository's README.md and serve.sh were rewritten in place: a write cut short (here an encoding error
    part-way) left them truncated, and a README.md without the generator's mark is refused as foreign next time.
    They are now written beside and renamed over the old ones."""
    repo = tmp_path / "r"
    T.write_repository(mamba_export, repo, name="t", backend="tensorrt")
    serve = (repo / "serve.sh").read_text()
    monkeypatch.setattr(T, "_serve_sh", lambda names: "#!/usr/bin/env bash\n# cut here \ud800\n")
    with pytest.raises(UnicodeEncodeError):
        T.write_repository(mamba_export, repo, name="t2", backend="tensorrt")
    assert (repo / "serve.sh").read_text() == serve and os.access(repo / "serve.sh", os.X_OK)
    readme = (repo / "README.md").read_text()                  # (written before serve.sh: indexes t2 now)
    monkeypatch.setattr(T, "README_MARK", T.README_MARK + " \ud800")
    with pytest.raises(UnicodeEncodeError):
        T.write_repository(mamba_export, repo, name="t3", force=True)
    assert (repo / "README.md").read_text() == readme
    assert sorted(p.name for p in repo.iterdir() if p.name.startswith(".")) == []
    monkeypatch.undo()
    assert T.foreign_repository_files(repo, tensorrt=True) == []


def test_build_engine_sh_never_leaves_a_plan_cut_short(mamba_export, tmp_path):
    """trtexec wrote 1/model.plan itself and build_engine.sh skips the build when the plan exists: a build cut short
    (a killed container, a full disk) left a plan that was never rebuilt. It now saves model.plan.tmp, renamed once
    trtexec succeeded."""
    import subprocess

    mdir = T.write_repository(mamba_export, tmp_path / "r", name="t", backend="tensorrt")
    fake = tmp_path / "trtexec"

    def build(script):
        fake.write_text("#!/usr/bin/env bash\n" + script)
        fake.chmod(0o755)
        return subprocess.run(["bash", str(mdir / "build_engine.sh")], capture_output=True, text=True, check=False,
                              env={**os.environ, "TRTEXEC": str(fake)})

    failing = 'for a in "$@"; do case $a in --saveEngine=*) echo partial > "${a#--saveEngine=}";; esac; done\nexit 1\n'
    assert build(failing).returncode != 0
    assert not (mdir / "1" / "model.plan").exists()
    good = 'for a in "$@"; do case $a in --saveEngine=*) echo engine > "${a#--saveEngine=}";; esac; done\n'
    run = build(good)
    assert run.returncode == 0, run.stderr
    assert (mdir / "1" / "model.plan").read_text() == "engine\n" and not (mdir / "1" / "model.plan.tmp").exists()
    assert "model.plan exists" in build(failing).stdout


@pytest.mark.parametrize("flags,message", [
    (["--plan", "PLAN"], "--plan is for the tensorrt backend"),
    (["--plugin-lib", "PLAN"], "--plugin-lib is for the tensorrt backend"),
    (["--backend", "tensorrt", "--plan", "NOPE"], "--plan NOPE not found"),
    (["--backend", "tensorrt", "--plugin-lib", "NOPE"], "--plugin-lib NOPE not found"),
    (["--name", "a/b"], "--name 'a/b': Triton serves each model from one folder"),
    (["--name", ".."], "--name '..': Triton serves each model from one folder")])
def test_cli_refuses_write_flags_before_loading_the_model(tmp_path, flags, message, capsys, monkeypatch):
    """--plan/--plugin-lib with a backend that does not use them, files that are not there and a --name that is not one
    folder were reported only after the model's ONNX export and verification (minutes for a real model): they are
    usage errors, naming the flag, before the model is loaded."""
    from export import onnx as export_onnx

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(export_onnx, "_load_model", no_load)
    (tmp_path / "fake.plan").write_text("x")
    flags = [f.replace("PLAN", str(tmp_path / "fake.plan")).replace("NOPE", str(tmp_path / "nope")) for f in flags]
    message = message.replace("NOPE", str(tmp_path / "nope"))
    with pytest.raises(SystemExit) as e:
        T.main(["--model", "some-model", "--repo", str(tmp_path / "r"), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_perf_data_out_never_lands_in_the_model_folders(mamba_export, tmp_path, capsys):
    """--out REPO/NAME/config.pbtxt was accepted, overwriting the model's config: a path inside a folder of the
    repository, or its README.md / serve.sh, is refused before anything is read; a file beside them is fine."""
    repo = tmp_path / "repo"
    mdir = T.write_repository(mamba_export, repo, name="m", vocab_path=str(mamba_export / "item_vocab.json"))
    config = (mdir / "config.pbtxt").read_text()
    data = _inter_file(tmp_path / "d.inter", [("a", "item-1", 1.0), ("a", "item-2", 2.0)])
    for out, message in ((mdir / "config.pbtxt", "is inside the folder 'm' of --repo"),
                         (mdir / "perf.json", "is inside the folder 'm' of --repo"),
                         (mdir / "1" / "model.onnx", "is inside the folder 'm'"),
                         (repo / "README.md", "is the repository's README.md")):
        with pytest.raises(SystemExit) as e:
            _perf(capsys, "--repo", repo, "--name", "m", "--data", data, "--out", out)
        assert e.value.code == 2 and message in capsys.readouterr().err, out
    assert (mdir / "config.pbtxt").read_text() == config and not (mdir / "perf.json").exists()
    rc, _, err = _perf(capsys, "--repo", repo, "--name", "m", "--data", data, "--out", repo / "perf.json",
                       "--kcore", "none")
    assert rc == 0, err


def _fake_launcher(tmp_path, monkeypatch, script):
    """start_server with a stand-in for the server venv's python: a shell script that gets the launcher's arguments
    (it records its pid, then runs ``script``); temporary files go to ``tmp_path/tmp``."""
    from export import triton_server as S

    py = tmp_path / "python"
    py.write_text(f'#!/usr/bin/env bash\necho $$ > "{tmp_path}/launcher.pid"\n{script}\n')
    py.chmod(0o755)
    monkeypatch.setattr(S, "server_python", lambda venv=None: py)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(S.tempfile, "tempdir", str(tmp_path / "tmp"))
    return S


def _gone(pid: int, wait_s: float = 5.0) -> bool:
    """Whether process ``pid`` has ended within ``wait_s`` (a zombie no one reaped yet counts as ended: a SIGKILL
    takes a moment to show)."""
    end = time.monotonic() + wait_s
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.05)


def test_start_server_interrupted_stops_the_server_and_removes_its_log(tmp_path, monkeypatch):
    """Ctrl-C while start_server waited left tritonserver running in its own session (the terminal's SIGINT never
    reaches it), and every start left a /tmp/zoo-tritonserver-*.log (mktemp) that nothing removed: the server is now
    stopped before the interruption propagates, stop() removes the log start_server made, and a server that fails to
    start keeps its log, named in the error; what outlives the launcher in its group (a python backend stub of a
    tritonserver stopped while it loaded its model; here a process that ignores SIGTERM) is killed too. Hidden folders
    (a killed export's stage) are no models to wait for."""
    S = _fake_launcher(tmp_path, monkeypatch, f"(trap '' TERM; exec sleep 300) &\necho $! > {tmp_path}/child.pid\n"
                                              "exec sleep 300")
    repo = tmp_path / "repo"
    for d in ("m", ".m.staged-abc"):
        (repo / d).mkdir(parents=True)
        (repo / d / "config.pbtxt").write_text("")
    waited_for = []

    def interrupted(port, models):
        waited_for.append(models)
        for _ in range(200):                                    # the launcher is up (its pids recorded)
            if (tmp_path / "child.pid").is_file() and (tmp_path / "child.pid").read_text().strip():
                break
            time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        S.start_server(repo, timeout=30)
    pid, child = (int((tmp_path / f).read_text()) for f in ("launcher.pid", "child.pid"))
    assert _gone(pid) and _gone(child) and waited_for == [["m"]] and os.listdir(tmp_path / "tmp") == []

    monkeypatch.setattr(S, "_ready", lambda port, models: True)
    h = S.start_server(repo, timeout=30)
    assert os.path.isfile(h.log_path) and h.alive()
    h.stop()
    assert not h.alive() and os.listdir(tmp_path / "tmp") == []
    kept = tmp_path / "mine.log"
    with S.start_server(repo, timeout=30, log_path=str(kept)):
        pass
    assert kept.is_file()                                       # the caller's log is the caller's


def test_start_server_failure_keeps_the_log_and_names_it(tmp_path, monkeypatch):
    S = _fake_launcher(tmp_path, monkeypatch, 'echo "E0101 failed to load all models"; exit 1')
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(RuntimeError, match="exited with status 1 while starting") as e:
        S.start_server(repo, timeout=30)
    (log,) = os.listdir(tmp_path / "tmp")
    path = tmp_path / "tmp" / log
    assert f"full log: {path}" in str(e.value) and "failed to load all models" in path.read_text()


def test_launcher_stopped_while_starting_starts_no_server(tmp_path):
    """A SIGTERM that reaches the launcher while it lays out its workspace (before tritonserver runs) killed it with
    the default action, or came before the handler that forwards it: the launcher now takes it from the start and
    starts no server."""
    import subprocess

    code = ("import os, pathlib, signal, sys\nimport export.triton_server as S\n"
            "def prepare(ws):\n    os.kill(os.getpid(), signal.SIGTERM)\n"
            f"    return pathlib.Path('/bin/sh'), {{'PATH': os.environ['PATH']}}\n"
            f"S._prepare_workspace = prepare\nsys.exit(S.serve({str(tmp_path)!r}))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 128 + 15, (run.returncode, run.stderr)
    assert "+ /bin/sh" not in run.stdout


def test_live_server_starts_after_a_killed_export(mamba_export, tmp_path):
    """End to end: export.triton SIGKILLed while it rewrote a model folder, then the real tritonserver on the
    repository: it used to exit "unexpected directory name" on the leftover staging folder (and start_server waited
    its whole timeout for it); it now serves the folder that was there."""
    from export import triton_server as S

    try:
        S.server_python()
    except RuntimeError as e:
        pytest.skip(str(e))
    repo = tmp_path / "repo"
    T.write_repository(mamba_export, repo, name="m4r", backend="python", max_batch_size=4)
    _killed_export(repo, mamba_export, "m4r")
    with S.start_server(repo, timeout=240) as h:
        from export.triton_client import TritonRecommender

        rec = TritonRecommender(h.grpc_url, "m4r", protocol="grpc")
        assert len(rec.prime("u", [1, 2, 3])) == K
