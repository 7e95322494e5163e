"""ONNX export (export.onnx / export.verify / export.runtime): stepwise graphs with one custom scan node per layer
(+ a standard-op function so ONNX Runtime runs them), verified against PyTorch; window graph for SASRec.

Tiny configs (hidden 16, n_items 60) keep the whole file well under a minute on one CPU thread.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zoo  # noqa: E402,F401  (registers the models)
from export import onnx as E
from export import plugin_spec as ps
from export import verify as V
from export.runtime import OnnxStepSession, OnnxWindowSession  # noqa: E402
from equivalence import history_effect  # noqa: E402
from full_disk import full_disk  # noqa: E402
from time_models import perturb_time_path  # noqa: E402
from zoo.models.gru4rec import GRU4RecConfig, GRU4RecModel
from zoo.models.lrurec import LRURecConfig, LRURecModel
from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel
from zoo.models.sasrec import SASRecConfig, SASRecModel
from zoo.models.tim4rec_causal import TiM4RecCausalConfig, TiM4RecCausalModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_ITEMS = 60


def _sharpen(model):
    """Random tiny models score every item almost alike; spread the item embeddings so top-k is meaningful."""
    with torch.no_grad():
        model.item_embedding.weight.normal_(0, 1.0)
    return model.eval()


def _time_sensitive(model, scale=0.3, seed=0):
    """TiM4Rec-causal with a time path that matters (rounding the timestamps to float32 moves the scores by ~1e-2,
    100x the score tolerance); see ``tests/time_models.py``."""
    return perturb_time_path(model, scale, torch.Generator().manual_seed(seed))


def make_model(name: str):
    torch.manual_seed(0)
    if name == "mamba4rec-1l":
        return _sharpen(Mamba4RecModel(Mamba4RecConfig(n_items=N_ITEMS, hidden_size=16, num_layers=1, d_state=8)))
    if name == "mamba4rec-2l":
        # initializer_range 0.1: at RecBole's 0.02 the history moved this model's last scores by ~1e-3, only ~10x the
        # verifier's tolerance (test_step_models_read_their_history)
        return _sharpen(Mamba4RecModel(Mamba4RecConfig(n_items=N_ITEMS, hidden_size=16, num_layers=2, d_state=8,
                                                       initializer_range=0.1)))
    if name == "lrurec":
        return _sharpen(LRURecModel(LRURecConfig(n_items=N_ITEMS, hidden_size=16, num_layers=2)))
    if name == "sasrec":
        return _sharpen(SASRecModel(SASRecConfig(n_items=N_ITEMS, hidden_size=16, max_seq_length=30)))
    if name == "gru4rec":
        return _sharpen(GRU4RecModel(GRU4RecConfig(n_items=N_ITEMS, embedding_size=16, hidden_size=24, num_layers=2)))
    if name in ("tim4rec_causal", "tim4rec_causal-notime"):            # H = 2 * 16 / 8 = 4 heads, N = 8
        cfg = TiM4RecCausalConfig(n_items=N_ITEMS, hidden_size=16, num_layers=2, d_state=8, head_dim=8,
                                  max_seq_length=50, is_time=name == "tim4rec_causal")
        return _sharpen(_time_sensitive(TiM4RecCausalModel(cfg)))
    raise KeyError(name)


STEP_MODELS = ["mamba4rec-1l", "mamba4rec-2l", "lrurec"]      # step graphs with custom scan nodes
ALL_STEP_MODELS = STEP_MODELS + ["gru4rec"]                  # + GRU4Rec (standard ONNX GRU op, no custom node)
TIME_STEP_MODELS = ["tim4rec_causal", "tim4rec_causal-gaps"]  # SSDScan nodes; float64 timestamps + last_ts state, or
GAPS = "-gaps"                                                 # (suffix) --time-input gaps: float32 gaps, no last_ts
FAST = ["--verify-prime", "20", "--verify-steps", "30", "--verify-cases", "200"]   # CLI plumbing tests only


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ALL_STEP_MODELS + ["tim4rec_causal"])
def test_step_models_read_their_history(name):
    """Negative control for every step-graph test below: each test model's last scores move with the items before
    the newest one by far more than the verifier's score tolerance, so a graph that lost, reset or mixed up its
    recurrent state cannot pass by matching the newest item alone."""
    model = make_model(name)
    g = torch.Generator().manual_seed(1)
    for n in (3, 20, 50):
        hist = torch.randint(1, N_ITEMS, (n,), generator=g).tolist()
        ts = [1.0e8 + 600.0 * i for i in range(n)] if model.uses_timestamps else None
        moved = history_effect(model, hist, ts)
        assert moved > 100 * V.SCORE_ATOL, f"{name}, {n} items: the history moves the last scores by {moved:.3g}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (model, ExportResult), each exported once (with the full-scores output) and verified."""
    torch.set_num_threads(1)
    cache = {}

    def get(name):
        if name not in cache:
            gaps = name.endswith(GAPS)
            model = make_model(name.removesuffix(GAPS))
            out = tmp_path_factory.mktemp(name)
            res = E.export_model(model, out, topk=10, with_scores=True, time_input="gaps" if gaps else None)
            cache[name] = (model, res)
        return cache[name]

    return get


# ------------------------------------------------------------------------------------------- acceptance numbers
@pytest.mark.parametrize("name", ALL_STEP_MODELS + TIME_STEP_MODELS)
def test_step_graph_matches_torch(exported, name):
    model, res = exported(name)
    rep = res.report
    assert rep.ok, rep.table()
    cases = {c.name: c for c in rep.cases}
    long = cases["random/prime+steps"]
    assert "prime 200 + 500 single steps" in long.detail
    assert long.max_abs_err <= 1e-4 and long.state_err <= 1e-4, rep.table()
    topk = cases["random/topk"]
    assert topk.topk_cases >= 2000 and topk.topk_agreement >= 0.999, rep.table()
    assert res.spec["verification"]["passed"] is True
    mp = onnx.load(res.graph_path)
    onnx.checker.check_model(mp, full_check=True)
    assert max(o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")) >= 18


@pytest.mark.parametrize("name", STEP_MODELS)
def test_scan_nodes_follow_plugin_spec(exported, name):
    """Drift test: every scan node and its function are exactly what export/plugin_spec.py says."""
    model, res = exported(name)
    mp = onnx.load(res.graph_path)
    op = ps.SELECTIVE_SCAN if name.startswith("mamba") else ps.LRU_SCAN
    scan = [n for n in mp.graph.node if n.domain == ps.ONNX_DOMAIN]
    assert len(scan) == model.config.num_layers
    for n in scan:
        assert n.op_type == op.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        assert attrs == ps.node_attributes(op)
        assert attrs["plugin_namespace"] == ps.PLUGIN_NAMESPACE and attrs["plugin_version"] == ps.PLUGIN_VERSION
        assert len(n.input) == len(op.inputs) and len(n.output) == len(op.outputs)
    fns = {(f.domain, f.name): f for f in mp.functions}
    f = fns[(ps.ONNX_DOMAIN, op.op_type)]
    assert list(f.input) == op.input_names and list(f.output) == op.output_names
    assert all(nd.domain in ("", "ai.onnx") for nd in _nested_nodes(f.node)), \
        "the function (with its If branches and Scan body) must be made of standard ops"
    assert {(o.domain, o.version) for o in mp.opset_import} >= {(ps.ONNX_DOMAIN, ps.ONNX_DOMAIN_VERSION)}
    # graph-level I/O contract
    names = [s.name for s in model.state_spec(1)]
    assert [i.name for i in mp.graph.input] == ["item_ids", *names]
    assert [o.name for o in mp.graph.output] == ["topk_ids", "topk_scores", "scores", *[f"{s}_out" for s in names]]
    types = {o.name: o.type.tensor_type.elem_type for o in list(mp.graph.input) + list(mp.graph.output)}
    assert types["item_ids"] == types["topk_ids"] == onnx.TensorProto.INT64
    assert all(types[s] == onnx.TensorProto.FLOAT for s in names)


@pytest.mark.parametrize("name", ALL_STEP_MODELS)
def test_state_spec_json(exported, name):
    model, res = exported(name)
    spec = json.loads(pathlib.Path(res.spec_path).read_text())
    want = model.state_spec(3)
    assert [s["name"] for s in spec["state"]] == [s.name for s in want]
    for s, w in zip(spec["state"], want, strict=True):
        assert s["shape"][0] == "B" and s["shape"][1:] == list(w.shape[1:]) and len(s["shape"]) >= 2
        assert s["dtype"] == "float32" and s["init"] == 0.0 and s["output"] == f"{w.name}_out"
    assert spec["topk"] == 10 and spec["n_items"] == N_ITEMS and spec["kind"] == "step"
    if name == "gru4rec":
        assert spec["custom_ops"] == []
        assert [n.op_type for n in onnx.load(res.graph_path).graph.node].count("GRU") == model.config.num_layers
    else:
        assert spec["custom_ops"][0]["attributes"] == ps.node_attributes(
            ps.SCAN_OPS[spec["custom_ops"][0]["op_type"]])


def test_one_graph_serves_t1_and_tL_and_default_outputs(tmp_path):
    """Without --scores the graph has no all-scores output; priming with T = L equals L single steps."""
    model = make_model("lrurec")
    res = E.export_model(model, tmp_path, topk=5, verify=False)
    sess = OnnxStepSession(tmp_path)
    assert not sess.has_scores
    hist = np.random.default_rng(1).integers(1, N_ITEMS, size=(3, 40))
    a = sess.prime(hist)
    st = sess.init_state(3)
    for t in range(hist.shape[1]):
        b = sess.step(hist[:, t:t + 1], st)
        st = b.state
    np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
    np.testing.assert_allclose(a.topk_scores, b.topk_scores, atol=1e-5)
    for n in a.state:
        np.testing.assert_allclose(a.state[n], b.state[n], atol=1e-5)
    with torch.no_grad():
        logits, _ = model.step(torch.from_numpy(hist), model.init_state(3))
    logits[:, 0] = -float("inf")
    np.testing.assert_array_equal(a.topk_ids, torch.topk(logits, 5).indices.numpy())
    assert res.report is None


# -------------------------------------------------------------------------------------------- torch-free runtime
def _run_python_ok(code: str, cwd) -> None:
    """Run ``code`` in a fresh interpreter (no torch imported unless the code does) and require it to print OK."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(cwd),
                       timeout=120)
    assert p.returncode == 0 and "OK" in p.stdout, p.stdout + p.stderr


def test_graph_runs_without_torch(exported, tmp_path):
    model, res = exported("mamba4rec-2l")
    hist = np.random.default_rng(2).integers(1, N_ITEMS, size=(2, 12))
    with torch.no_grad():
        logits, st = model.step(torch.from_numpy(hist[:, :11]), model.init_state(2))
        logits, st = model.step(torch.from_numpy(hist[:, 11:]), st)
    logits[:, 0] = -float("inf")
    np.savez(tmp_path / "ref.npz", hist=hist, top=torch.topk(logits, 10).indices.numpy(),
             **{k: v.numpy() for k, v in st.items()})
    code = textwrap.dedent(f"""
        import sys
        import numpy as np, onnxruntime as ort
        sys.path.insert(0, {ROOT!r})
        from export.runtime import OnnxStepSession
        ref = np.load({str(tmp_path / 'ref.npz')!r})
        s = OnnxStepSession({os.path.dirname(res.graph_path)!r}, threads=1)
        out = s.prime(ref["hist"][:, :11])
        out = s.step(ref["hist"][:, 11:], out.state)
        assert (out.topk_ids == ref["top"]).all(), (out.topk_ids, ref["top"])
        for n, a in out.state.items():
            assert np.abs(a - ref[n]).max() < 1e-5, n
        raw = ort.InferenceSession({res.graph_path!r}, providers=["CPUExecutionProvider"])
        feeds = {{"item_ids": ref["hist"][:, :1]}}
        feeds.update(s.init_state(2))
        raw.run(None, feeds)
        bad = [m for m in ("torch", "zoo", "transformers") if m in sys.modules]
        assert not bad, bad
        print("OK")
    """)
    _run_python_ok(code, tmp_path)


def test_bad_inputs_fail_in_ort(exported):
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

    _, res = exported("mamba4rec-1l")
    sess = OnnxStepSession(os.path.dirname(res.graph_path))
    st = sess.init_state(2)
    ids = np.array([[3], [4]], dtype=np.int64)
    with pytest.raises((InvalidArgument, Fail)) as e:                       # wrong dtype
        sess.raw_run({"item_ids": ids.astype(np.int32), **st})
    assert "INVALID_ARGUMENT" in str(e.value) and "expected: (tensor(int64))" in str(e.value)
    bad = dict(st, conv_state=st["conv_state"][:, :, :-1])                     # wrong state shape
    with pytest.raises((InvalidArgument, Fail)) as e:
        sess.raw_run({"item_ids": ids, **bad})
    assert "conv_state" in str(e.value)
    with pytest.raises((InvalidArgument, Fail)):                              # wrong state dtype
        sess.raw_run({"item_ids": ids, **dict(st, ssm_state=st["ssm_state"].astype(np.float64))})


def test_runtime_wrapper_checks_inputs(exported):
    _, res = exported("lrurec")
    sess = OnnxStepSession(os.path.dirname(res.graph_path))
    st = sess.init_state(2)
    for bad in ([[0], [3]], [[N_ITEMS], [3]], [[-1], [3]]):
        with pytest.raises(ValueError, match="out of range"):
            sess.step(bad, st)
    with pytest.raises(TypeError, match="integer"):
        sess.step([[1.5], [2.0]], st)
    with pytest.raises(ValueError, match="shape"):
        sess.step([1, 2], st)
    with pytest.raises(ValueError, match="empty"):
        sess.step(np.zeros((2, 0), dtype=np.int64), st)
    with pytest.raises(ValueError, match=r"lru_state_re.*shape"):
        sess.step([[1], [2], [3]], st)                                         # batch 3 vs state of 2
    with pytest.raises(TypeError, match="dtype"):
        sess.step([[1], [2]], dict(st, lru_state_im=st["lru_state_im"].astype(np.float64)))
    with pytest.raises(ValueError, match="missing"):
        sess.step([[1], [2]], {"lru_state_re": st["lru_state_re"]})
    with pytest.raises(ValueError, match="'step' graph; use OnnxStepSession"):
        OnnxWindowSession(os.path.dirname(res.graph_path))
    with pytest.raises(ValueError, match=r"different lengths \[1, 3\] in one call"):   # was numpy's ragged error
        sess.prime([[1, 2, 3], [4]])
    with pytest.raises(ValueError, match="no histories given"):
        sess.prime([])
    out = sess.step([[1], [2]], st)
    assert out.topk_ids.shape == (2, 10) and out.topk_ids.dtype == np.int64 and (out.topk_ids != 0).all()


# ------------------------------------------------------------------------------------------------- failures
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("saved") / "m4r"
    make_model("mamba4rec-1l").save_pretrained(d)
    return str(d)


def test_failed_verification_exits_3_and_removes_artefact(saved_model, tmp_path, monkeypatch, capsys):
    """A failed verification exits 3 (export.fsutil.EXIT_VERIFY_FAILED) with its ERROR line on stderr (a run whose
    stdout goes to a log still shows it); the report's table stays with the stages on stdout."""
    out = tmp_path / "out"
    assert E.main(["--model", saved_model, "--out", str(out), *FAST]) == 0      # a verified export already there
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert {"model.onnx", "state_spec.json"} <= set(before)
    capsys.readouterr()
    monkeypatch.setattr(V, "SCORE_ATOL", 0.0)
    rc = E.main(["--model", saved_model, "--out", str(out), *FAST])
    printed = capsys.readouterr()
    assert rc == E.EXIT_VERIFY_FAILED == 3
    assert "FAILED" in printed.out and "ERROR" not in printed.out
    assert printed.err.startswith("ERROR: ") and "worst case" in printed.err and "nothing written to" in printed.err
    # the failed export is gone, staging folder included, and the earlier verified files are untouched
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    fresh = tmp_path / "fresh" / "sub"                 # a failed export leaves no folder it made, nor its parents
    assert E.main(["--model", saved_model, "--out", str(fresh), *FAST]) == 3
    assert not (tmp_path / "fresh").exists()


def test_corrupted_graph_fails_verification(saved_model, tmp_path, monkeypatch, capsys):
    real = E._postprocess

    def corrupt(mp, spec, model):
        mp = real(mp, spec, model)
        init = max(mp.graph.initializer, key=lambda t: int(np.prod(t.dims)))   # the item embedding table
        arr = onnx.numpy_helper.to_array(init).copy()
        arr[1:5] += 0.05
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        return mp

    monkeypatch.setattr(E, "_postprocess", corrupt)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        sys.exit(E.main(["--model", saved_model, "--out", str(out), *FAST]))
    assert e.value.code == 3
    assert "worst case" in capsys.readouterr().err
    assert not (out / "model.onnx").exists()
    with pytest.raises(E.VerificationError, match="worst case"):
        E.export_model(make_model("mamba4rec-1l"), tmp_path / "api",
                       verify_kwargs=dict(prime_len=10, n_steps=10, topk_cases=100))
    assert not (tmp_path / "api" / "model.onnx").exists()


@pytest.mark.parametrize("flags,message", [
    (["--verify-steps", "0"], "--verify-steps: expected an int >= 1"),
    (["--verify-cases", "-1"], "--verify-cases: expected an int >= 1"),
    (["--kind", "window", "--verify-prime", "5"], "a window graph has neither"),
    (["--no-verify", "--verify-prime", "5"], "--verify-prime with --no-verify: there is no verification"),
    (["--no-verify", "--verify-steps", "5", "--verify-cases", "9"], "--verify-steps/--verify-cases with --no-verify"),
    (["--card-dir", "c"], "give it or --out, not both"),
    (["--columns", "user=u", "item=i"], "--columns applies to --data: give --data or leave it out"),
])
def test_cli_refuses_contradictory_or_empty_verification(tmp_path, flags, message, capsys):
    """Zero single steps would verify only the priming call, a negative case count crashed in numpy, a step-only
    setting on a window graph, --verify-* beside --no-verify and --out beside --card-dir were silently ignored: all
    are usage errors now (before any folder is made)."""
    with pytest.raises(SystemExit) as e:
        E.main(["--model", str(tmp_path / "not-read"), "--out", str(tmp_path / "o"), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_a_model_folder_that_does_not_exist_is_a_failed_run(tmp_path, capsys):
    """A --model that cannot be found is a failed run (exit 1, the shared table), not a usage error: named, no
    traceback, no usage line, nothing made."""
    with pytest.raises(SystemExit) as e:
        E.main(["--model", str(tmp_path / "not-read"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and f"error: --model {tmp_path / 'not-read'}: " in err, err
    assert "not-read' is neither a local folder" in err and "usage:" not in err
    assert not (tmp_path / "o").exists()


def test_cli_takes_a_missing_run_folder_for_a_local_path(tmp_path, monkeypatch, capsys):
    """``--model runs/sasrec-ml1m`` (export/README.md's examples, a training run a new user does not have) was
    reported as a Hub id the Hub and its cache did not have; it is a local folder that does not exist, and the
    bundled models are named."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        E.main(["--model", "runs/sasrec-ml1m", "--out", str(tmp_path / "o"), "--no-verify"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "'runs/sasrec-ml1m' is not an existing local folder" in err, err
    assert "Hub" not in err and "cache" not in err and "sasrec-ml1m" in err.split("bundled models are")[1]
    assert not (tmp_path / "o").exists()


def _card(saved_model, tmp_path):
    """A card folder: the model's config and weights (as zoo.hub card writes them) and a README."""
    card = tmp_path / "card"
    shutil.copytree(saved_model, card)
    (card / "README.md").write_text("# m4r\n\nSome card.\n")
    return card


def test_cli_and_card_section(saved_model, tmp_path, capsys):
    card = _card(saved_model, tmp_path)
    for extra in (["--no-verify"], FAST):                 # idempotent: section replaced (--verify-*: no --no-verify)
        assert E.main(["--model", saved_model, "--card-dir", str(card), "--topk", "5", *extra]) == 0
    text = capsys.readouterr().out
    assert "PASSED" in text and "wrote" in text
    readme = (card / "README.md").read_text()
    assert readme.startswith("# m4r") and readme.count("## ONNX export") == 1
    assert "`conv_state_out`" in readme and "SelectiveScan" in readme
    assert (card / "onnx" / "model.onnx").exists() and (card / "onnx" / "state_spec.json").exists()


def test_card_dir_keeps_the_options_of_the_cards_graph(tmp_path, capsys):
    """--card-dir re-exports keep the options of the graph already in the card (its state_spec.json, read back as
    zoo.hub card does): a command without --exclude-seen/--topk gives the card's graph, not a plain top-10 one that
    no longer reproduces the card's numbers; an option given that differs is refused, naming it, before any export.
    The summary names item_vocab.json when the model has a vocabulary; a --topk out of range names the flag."""
    from zoo.vocab import ItemVocab

    model = make_model("lrurec")
    model.set_item_vocab(ItemVocab([100 + i for i in range(N_ITEMS - 1)]))
    card = tmp_path / "card"
    model.save_pretrained(card)
    (card / "README.md").write_text("# lru\n")
    assert E.main(["--model", str(card), "--card-dir", str(card), "--exclude-seen", "--topk", "5", "--no-verify"]) == 0
    first = capsys.readouterr().out
    assert f", {card / 'onnx' / 'state_spec.json'} and {card / 'onnx' / 'item_vocab.json'} in " in first
    assert E.main(["--model", str(card), "--card-dir", str(card), "--no-verify"]) == 0
    assert "keeping the options of the graph in" in capsys.readouterr().out
    spec = json.loads((card / "onnx" / "state_spec.json").read_text())
    assert spec["exclude_seen"] and spec["topk"] == 5
    before = (card / "onnx" / "state_spec.json").read_bytes()
    for flags, named in ((["--topk", "7"], "--topk 7 (the graph's: 5)"),
                         (["--scores"], "--scores (the graph was exported without it)")):
        with pytest.raises(SystemExit) as e:
            E.main(["--model", str(card), "--card-dir", str(card), "--no-verify", *flags])
        err = capsys.readouterr().err
        assert e.value.code == 2 and named in err and "write the graph elsewhere with --out" in err, err
    assert (card / "onnx" / "state_spec.json").read_bytes() == before
    # a --topk beyond the catalogue is an option value the model refuses: a usage error (2, with the usage line) once
    # the model is loaded, as zoo.evaluate --ks above the items ranked (it was an export error, 1), naming the flag,
    # the value and the catalogue; a --topk that no catalogue takes is a usage error before the model is loaded
    (tmp_path / "o").mkdir()
    with pytest.raises(SystemExit) as e:
        E.main(["--model", str(card), "--out", str(tmp_path / "o"), "--topk", str(N_ITEMS), "--no-verify"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage:" in err, err
    assert (f"error: --topk {N_ITEMS}: the model's catalogue has {N_ITEMS - 1} items; use --topk <= {N_ITEMS - 1}"
            in err), err
    assert list((tmp_path / "o").iterdir()) == []
    with pytest.raises(SystemExit) as e:
        E.main(["--model", str(card), "--out", str(tmp_path / "o"), "--topk", "0", "--no-verify"])
    assert e.value.code == 2 and "--topk: expected an int >= 1, got '0'" in capsys.readouterr().err


@pytest.mark.parametrize("flags,code,message", [
    (["--out", "{f}"], 2, "{f} is a file, not a folder"),
    (["--out", "{f}/sub"], 2, "{f} is a file, not a folder"),
    (["--out", "{t}/o", "--data", "{t}/missing.csv"], 1, "error: --data {t}/missing.csv: no such file"),
    (["--card-dir", "{t}/nocard"], 2, "--card-dir {t}/nocard is not a card folder (no such folder"),
    (["--card-dir", "{t}"], 2, "it lacks config.json and model.safetensors"),
])
def test_cli_refuses_bad_paths_before_loading(tmp_path, flags, code, message, capsys):
    """--out naming a file (FileExistsError), a missing --data file (FileNotFoundError after the model was loaded)
    were tracebacks; --card-dir of a folder that is not a card made a "card" of a README and onnx/ alone. Bad output
    paths are usage errors (2), a --data file that is not there a failed run (1)."""
    (tmp_path / "afile").write_text("x")
    sub = {"f": str(tmp_path / "afile"), "t": str(tmp_path)}
    with pytest.raises(SystemExit) as e:                         # the model is never loaded: these come first
        E.main(["--model", str(tmp_path / "not-read"), *[a.format(**sub) for a in flags]])
    assert e.value.code == code and message.format(**sub) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_cli_reports_an_unreadable_data_file(saved_model, tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SystemExit) as e:
        E.main(["--model", saved_model, "--out", str(tmp_path / "o"), "--data", str(tmp_path / "empty.csv"), *FAST])
    assert e.value.code == 1 and f"error: --data {tmp_path / 'empty.csv'}:" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------- runtime inputs
@pytest.fixture
def bundled_graph(tmp_path):
    """A copy of a bundled step graph folder (model.onnx + state_spec.json + item_vocab.json) to spoil."""
    d = tmp_path / "onnx"
    shutil.copytree(os.path.join(ROOT, "hub_cards", "lrurec-ml1m", "onnx"), d)
    return d


def test_runtime_decode_and_encode_refuse_what_is_not_an_item(bundled_graph):
    """decode([[0]]) returned the vocabulary's last item and decode([[-1]]) another (Python's negative indexing);
    encode([[588.9]]) truncated the float to item 588."""
    sess = OnnxStepSession(bundled_graph)
    n = sess.n_items
    assert len(sess.items) == n - 1 and sess.decode([[1, n - 1]]) == [[sess.items[0], sess.items[-1]]]
    for bad in (0, -1, n):
        with pytest.raises(ValueError, match=rf"topk_ids\[0, 1\] = {bad} is not an item index \(1..{n - 1}; 0 is pad"):
            sess.decode([[1, bad]])
    with pytest.raises(TypeError, match="integer item indices"):
        sess.decode(np.array([[1.7]]))
    with pytest.raises(TypeError, match=r"history 0: item id 588.9 \(float\) is not an integer id"):
        sess.encode([[sess.items[0], 588.9]])
    assert sess.encode([[sess.items[0], str(sess.items[1]), np.int64(sess.items[2])]]) == [[1, 2, 3]]
    os.remove(bundled_graph / "item_vocab.json")        # the vocabulary the spec names is gone: refused, not identity
    with pytest.raises(FileNotFoundError, match="names the item vocabulary item_vocab.json, which is not beside"):
        OnnxStepSession(bundled_graph)
    spec = json.loads((bundled_graph / "state_spec.json").read_text())
    del spec["item_vocab"]                              # a graph exported without one: identity ids, the same checks
    (bundled_graph / "state_spec.json").write_text(json.dumps(spec))
    plain = OnnxStepSession(bundled_graph)
    with pytest.raises(ValueError, match="= 0 is not an item index"):
        plain.decode([[0]])
    with pytest.raises(TypeError, match="588.9"):
        plain.encode([[588.9]])
    assert plain.encode([[5, np.int32(7)]]) == [[5, 7]] and plain.decode(np.array([[5, 7]])) == [[5, 7]]



def test_runtime_session_refuses_what_the_model_api_refuses(bundled_graph):
    """OnnxStepSession was looser than the model API: init_state(True) gave a batch-1 state (a bool is an int),
    encode([[]]) gave [[]], encode(None) / encode([1, 2]) raised Python's bare "'int' object is not iterable", and
    prime([[1, True]]) read True as item 1. Each is now refused in the model's words, naming the argument."""
    sess = OnnxStepSession(bundled_graph)
    a, b = sess.items[:2]
    for bad in (True, np.bool_(True), 2.0, "2", None, 0):
        with pytest.raises(ValueError, match=rf"^batch_size must be an int >= 1, got {re.escape(repr(bad))}$"):
            sess.init_state(bad)
    st = sess.init_state(1)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got True"):
        sess.check_state(st, True)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got True"):
        sess.state_shape("seen", True)
    with pytest.raises(ValueError, match=r"no state tensor 'nope' \(the state holds lru_state_re, lru_state_im"):
        sess.state_shape("nope", 1)                                   # was StopIteration
    for bad, message in (([[]], "history 0 is empty; every history needs at least one item"),
                         ([[a], []], "history 1 is empty; every history needs at least one item")):
        with pytest.raises(ValueError, match=rf"^{message}$"):
            sess.encode(bad)
    for bad, message in ((None, "histories must be a sequence of histories, got NoneType"),
                         (5, "histories must be a sequence of histories, got int"),
                         ({0: [a]}, "histories must be a sequence of histories, got dict"),
                         ([a, b], "history 0 must be a sequence of item ids, oldest first, got int"),  # flat list
                         (np.array([a, b]), "history 0 must be a sequence of item ids, oldest first, got int64"),
                         ([[a], None], "history 1 must be a sequence of item ids, oldest first, got NoneType"),
                         ([{a, b}], "history 0 must be a sequence of item ids, oldest first, got set")):  # no order
        with pytest.raises(TypeError, match=rf"^{message}$"):
            sess.encode(bad)
    assert sess.encode([]) == [] and sess.encode([(a,), np.array([b]), [a, b]]) == [[1], [2], [1, 2]]
    for bad, message in ((None, r"candidates must be a sequence of candidate lists, one per row \(None: not "
                                r"restricted\), got NoneType"),
                         ([a, b], r"candidates of row 0 must be a sequence of item ids \(or None: not restricted\), "
                                  "got int")):
        with pytest.raises(TypeError, match=rf"^{message}$"):
            sess.encode_candidates(bad)
    assert sess.encode_candidates([[a, b], None, []]).tolist() == [[1, 2], [0, 0], [0, 0]]
    for call in (lambda: sess.prime([[1, True]]), lambda: sess.step([[2], [np.bool_(True)]], sess.init_state(2))):
        with pytest.raises(TypeError, match=r"\[\d, \d\] = (np\.)?True_? is a bool, not an integer item index"):
            call()
    with pytest.raises(TypeError, match=r"^histories: history 0 is \{1, 2\} \(set\), not a list of item ids$"):
        sess.prime([{1, 2}])
    assert (sess.prime([[1, 2]]).topk_ids == sess.prime(np.array([[1, 2]])).topk_ids).all()
    window = OnnxWindowSession(os.path.join(ROOT, "hub_cards", "sasrec-ml1m", "onnx-window"))
    with pytest.raises(TypeError, match=r"^histories: history 1 is \{1: 2\} \(dict\), not a list of item ids$"):
        window.recommend([[1], {1: 2}])
    with pytest.raises(ValueError, match="^history 0 is empty; every history needs at least one item$"):
        window.encode([[]])

def _spoil(d, name, text):
    if isinstance(text, bytes):
        (d / name).write_bytes(text)
    else:
        (d / name).write_text(text)
    return str(d / name)


@pytest.mark.parametrize("file,spoil,message", [
    ("item_vocab.json", lambda v: json.dumps(dict(v, items=v["items"][:100])),
     "holds 100 items, but the graph has 3416 (n_items 3417"),
    ("item_vocab.json", lambda v: "{oops", "corrupt item vocabulary {path}: Expecting property name"),
    ("item_vocab.json", lambda v: json.dumps(v["items"]), "{path} is not a zoo item vocabulary"),
    ("item_vocab.json", lambda v: json.dumps(dict(v, id_type="int", items=[str(x) for x in v["items"]])),
     "item vocabulary {path}: id_type is 'int' but items[0] is '"),
    ("item_vocab.json", lambda v: json.dumps(dict(v, id_type="float")), "id_type must be 'int' or 'str', got 'float'"),
    ("item_vocab.json", lambda v: json.dumps(dict(v, items=v["items"][:-1] + v["items"][:1])),
     "item vocabulary {path} holds an item id more than once"),
    ("state_spec.json", lambda s: "{oops", "corrupt {path}: Expecting property name"),
    ("state_spec.json", lambda s: json.dumps({k: v for k, v in s.items() if k != "kind"}),
     "{path} lacks the field kind"),
    ("state_spec.json", lambda s: json.dumps(dict(s, kind="stream")), "{path}: unknown graph kind 'stream'"),
    ("state_spec.json", lambda s: json.dumps({k: v for k, v in s.items() if k != "state"}),
     "{path} lacks the field state"),
    ("model.onnx", lambda g: g[:len(g) // 2], "ONNX Runtime cannot load {path} (InvalidProtobuf"),
    # a spec that does not describe the graph (failed on the first call with a bare KeyError, or not at all)
    ("state_spec.json", lambda s: json.dumps(dict(s, state=[{k: v for k, v in e.items() if k != "init"}
                                                            for e in s["state"]])), "{path}: state entry 0 lacks init"),
    ("state_spec.json", lambda s: json.dumps(dict(s, state=[dict(e, dtype="bfloat16") for e in s["state"]])),
     "{path}: state 'lru_state_re' has dtype 'bfloat16'"),
    ("state_spec.json", lambda s: json.dumps(dict(s, state="conv_state")), "{path}: state must be a list"),
    ("state_spec.json", lambda s: json.dumps(dict(s, topk=50)),
     "{path} does not describe {graph}: topk is 50 in the spec, the graph's top-k is 10"),
    ("state_spec.json", lambda s: json.dumps(dict(s, inputs=s["inputs"] + [
        {"name": "candidates", "shape": ["B", "C"], "dtype": "int64"}])),
     "{path} does not describe {graph}: it lists the inputs ['candidates', 'item_ids', 'lru_state_im', 'lru_state_re', "
     "'seen'], the graph has ['item_ids', 'lru_state_im', 'lru_state_re', 'seen']"),
    ("state_spec.json", lambda s: json.dumps(dict(s, inputs=[dict(e, shape=["B", 2, 64]) if e["name"] == "lru_state_re"
                                                             else e for e in s["inputs"]])),
     "{path} does not describe {graph}: lru_state_re has shape ['B', 2, 64] in the spec, ['B', 2, 128] in the graph"),
    ("state_spec.json", lambda s: json.dumps(dict(s, inputs=[dict(e, dtype="int32") if e["name"] == "item_ids"
                                                             else e for e in s["inputs"]])),
     "{path} does not describe {graph}: item_ids is 'int32' in the spec, 'int64' in the graph"),
    ("state_spec.json", lambda s: json.dumps(dict(s, n_items=100)),
     "{path} does not describe {graph}: n_items is 100 in the spec, 3417 in the graph's own record"),
])
def test_runtime_refuses_a_spoilt_folder_naming_the_file(bundled_graph, file, spoil, message):
    """A vocabulary of another size loaded and decoded silently (zoo.evaluate --onnx printed metrics); a corrupt
    state_spec.json / item_vocab.json raised a bare JSONDecodeError, a truncated model.onnx ONNX Runtime's
    InvalidProtobuf, a spec without kind said "is a None graph"; each is one ValueError naming the file now."""
    path = bundled_graph / file
    old = path.read_bytes() if file == "model.onnx" else json.loads(path.read_text())
    _spoil(bundled_graph, file, spoil(old))
    with pytest.raises(ValueError) as e:
        OnnxStepSession(bundled_graph)
    assert message.format(path=path, graph=bundled_graph / "model.onnx") in str(e.value)


def test_reexport_removes_an_earlier_models_vocabulary_and_moves_the_spec_last(tmp_path, monkeypatch):
    """A model without a vocabulary exported over an earlier export's folder: the earlier item_vocab.json went on
    being read by the runtime (the caller's ids silently mapped to other items); it is removed now. And the spec
    moves in last, an earlier one out first: an export interrupted while moving its files leaves a folder without a
    spec, which the runtime refuses, never a new graph beside the earlier spec and state fingerprint."""
    from zoo.vocab import ItemVocab

    out = tmp_path / "g"
    with_vocab = make_model("lrurec")
    with_vocab.item_vocab = ItemVocab(list(range(101, 101 + N_ITEMS - 1)))
    E.export_model(with_vocab, out, verify=False)
    assert (out / "item_vocab.json").exists() and OnnxStepSession(out).encode([[101]]) == [[1]]
    E.export_model(make_model("mamba4rec-1l"), out, verify=False)                # no vocabulary: identity ids
    assert not (out / "item_vocab.json").exists()
    assert "item_vocab" not in json.loads((out / "state_spec.json").read_text())
    assert OnnxStepSession(out).items is None

    moved, real = [], os.replace

    def interrupted(src, dst):
        if os.path.dirname(os.fspath(dst)) == str(out):                      # a move into the folder
            if moved:                                                       # after the first one: killed
                raise KeyboardInterrupt
            moved.append(os.path.basename(dst))
        real(src, dst)

    monkeypatch.setattr(E.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        E.export_model(with_vocab, out, verify=False)
    monkeypatch.undo()
    assert moved == ["model.onnx"] and not (out / "state_spec.json").exists()
    with pytest.raises(FileNotFoundError, match="no state_spec.json beside"):
        OnnxStepSession(out)
    assert [p.name for p in out.iterdir() if p.name.startswith(".export-staging-")] == []


def test_export_refuses_a_model_checkpoint_folder(saved_model, tmp_path, capsys):
    """``export.onnx --out <a model folder>`` replaced that model's item_vocab.json with the exported model's (its ids
    then mapped to other items, with no error), or removed it for a model without one (the model no longer loaded). A
    folder holding config.json or model.safetensors is refused now -- by the CLI before the model is loaded, pointing
    to --card-dir, and by export_model -- and nothing in it changes."""
    from zoo.modeling_utils import SeqRecPreTrainedModel
    from zoo.vocab import ItemVocab

    target = tmp_path / "target"
    model = make_model("lrurec")
    model.set_item_vocab(ItemVocab([100 + i for i in range(N_ITEMS - 1)]))
    model.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    assert {"config.json", "model.safetensors", "item_vocab.json"} <= set(before)
    with pytest.raises(SystemExit) as e:                    # saved_model has no vocabulary: it would remove target's
        E.main(["--model", saved_model, "--out", str(target), "--no-verify"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--out {target} holds a model checkpoint (config.json and model.safetensors)" in err
    assert f"give --card-dir {target} to put the graph in its onnx/ subfolder, or another --out" in err
    with pytest.raises(E.ExportError, match=f"{re.escape(str(target))} holds a model checkpoint"):
        E.export_model(make_model("mamba4rec-1l"), target, verify=False)
    (target / "model.safetensors").rename(tmp_path / "weights")      # config.json alone is a checkpoint too
    with pytest.raises(E.ExportError, match=r"holds a model checkpoint \(config\.json\)"):
        E.export_model(make_model("mamba4rec-1l"), target, verify=False)
    (tmp_path / "weights").rename(target / "model.safetensors")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert SeqRecPreTrainedModel.from_pretrained(str(target)).item_vocab is not None


def test_reexport_removes_only_a_vocabulary_its_earlier_export_named(tmp_path):
    """A vocabulary-less export removed any item_vocab.json in the folder; only the one the earlier export's
    state_spec.json named (its own) is removed now: a file the folder held otherwise is not the export's."""
    out = tmp_path / "g"
    out.mkdir()
    (out / "item_vocab.json").write_text("not the export's")
    E.export_model(make_model("mamba4rec-1l"), out, verify=False)
    assert (out / "item_vocab.json").read_text() == "not the export's"
    assert "item_vocab" not in json.loads((out / "state_spec.json").read_text())


def test_export_removes_the_stages_of_killed_exports_only(tmp_path):
    """A SIGKILLed export (the OOM killer, a power loss) left its .export-staging-* folder in the output folder
    forever, where zoo.hub push uploads it and zoo.hub card copies it into new cards. A stage carries its writer's pid
    and is held under an flock while the writer runs, and an export removes the stages in its folder whose writer is
    gone -- never a live one: one whose pid runs here, one whose lock is held (a writer on another machine sharing the
    folder), one named without a pid (an older export's) until it is a day old."""
    import fcntl
    import time

    out = tmp_path / "g"
    out.mkdir()
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)

    def stage(name):
        d = out / name
        d.mkdir()
        (d / "model.onnx").write_bytes(b"half a graph")
        return d

    killed = stage(f"{E.STAGE_PREFIX}{gone}-abc")
    live = stage(f"{E.STAGE_PREFIX}{os.getpid()}-def")                 # this process: running
    elsewhere = stage(f"{E.STAGE_PREFIX}{gone}-ghi")                   # no such pid here, but its lock is held
    old, young = stage(f"{E.STAGE_PREFIX}old1abcd"), stage(f"{E.STAGE_PREFIX}new1abcd")
    os.utime(old, (time.time() - 2 * E.STAGE_UNNAMED_MAX_AGE_S,) * 2)
    fd = os.open(elsewhere, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    said = []
    try:
        E.export_model(make_model("mamba4rec-1l"), out, verify=False, progress=said.append)
    finally:
        os.close(fd)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(E.STAGE_PREFIX)) == sorted(
        [live.name, elsewhere.name, young.name])
    assert f"removed {killed}: the stage of an export that was killed" in "\n".join(said)
    assert f"removed {old}: " in "\n".join(said)
    with E.staging_folder(out) as s:                   # an export's own stage: its pid in the name, its lock held
        assert s.name.startswith(f"{E.STAGE_PREFIX}{os.getpid()}-")
        from zoo.cli import lock_folder

        assert lock_folder(s) is None                  # held: no other process (nor open file) can take it
    assert not s.exists()


# ------------------------------------------------------------------------------------------------- one run per folder
class _FolderHolder:
    """Another live run holding ``folder``'s lock (export.fsutil.output_folder_lock), in a child process: the lock
    is an flock on the folder's own descriptor, so this process could not hold it for another of its runs."""

    CHILD = ("import sys, time\nfrom export.fsutil import output_folder_lock\n"
             "with output_folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)\n")

    def __init__(self, folder):
        env = {**os.environ, "PYTHONPATH": ROOT}
        self.p = subprocess.Popen([sys.executable, "-c", self.CHILD, str(folder)], stdout=subprocess.PIPE, text=True,
                                  env=env)
        assert self.p.stdout.readline().strip() == "held"

    def die(self):
        """The holder is killed (SIGKILL: no cleanup of its own); the kernel drops its lock."""
        self.p.kill()
        self.p.wait()
        self.p.stdout.close()


def _bytes(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_a_second_export_into_a_held_out_fails_at_once_and_leaves_it_whole(saved_model, tmp_path, capsys):
    """Two exports into one --out both succeeded and the folder could end up mixing them (one model's graph and spec
    beside the other's item_vocab.json). The folder is locked for the whole run now: a second export while another
    holds it fails at once -- exit 1, one line naming --out and the folder, before the model is even loaded -- and
    every file there keeps its bytes; once the holder is gone, an export goes ahead. The Python API refuses it too
    (export.fsutil.FolderBusy, an OSError)."""
    from export.fsutil import FolderBusy

    out = tmp_path / "out"
    E.export_model(make_model("lrurec"), out, verify=False)                    # the first run's files
    before = _bytes(out)
    holder = _FolderHolder(out)
    try:
        with pytest.raises(SystemExit) as e:
            E.main(["--model", saved_model, "--out", str(out), *FAST])
        printed = capsys.readouterr()
        assert e.value.code == E.EXIT_ERROR == 1, printed.out + printed.err
        assert printed.err.splitlines() == [f"error: --out {out}: another run is writing into it now (it holds the "
                                            "folder's lock); wait for it to end, or give another folder"]
        assert "loading" not in printed.out                 # refused before any work, not after the verification
        with pytest.raises(FolderBusy, match=f"--out {re.escape(str(out))}: another run is writing into it"):
            E.export_model(make_model("mamba4rec-1l"), out, verify=False)
        assert _bytes(out) == before
    finally:
        holder.die()
    assert E.main(["--model", saved_model, "--out", str(out), "--no-verify"]) == 0
    assert json.loads((out / "state_spec.json").read_text())["model_type"] == "mamba4rec"


def test_a_refused_export_never_removes_the_folder_it_found_made(saved_model, tmp_path, monkeypatch, capsys):
    """A run removes the output folder it made when it fails, so that a failed run leaves nothing behind; a second
    export that found --out missing, and then another run making and holding it, must not take that folder for its
    own: it is refused, and the first run's (empty, still being written) folder stays. --card-dir holds the card's
    onnx/ (the card folder itself may be a stage zoo.hub card holds): a second run is refused, the card as it was."""
    out = tmp_path / "new" / "out"
    real, holders = os.mkdir, []

    def mkdir(path, *a, **k):                        # the first run makes and locks --out just before this one
        if os.fspath(path) == str(out) and not holders:
            real(path, *a, **k)
            holders.append(_FolderHolder(out))
        return real(path, *a, **k)                   # FileExistsError: this run did not make it

    monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        with pytest.raises(SystemExit) as e:
            E.main(["--model", saved_model, "--out", str(out), *FAST])
        assert e.value.code == 1 and f"error: --out {out}: another run" in capsys.readouterr().err
        assert holders and out.is_dir() and list(out.iterdir()) == []
    finally:
        for h in holders:
            h.die()
    monkeypatch.undo()
    card = _card(saved_model, tmp_path)
    assert E.main(["--model", saved_model, "--card-dir", str(card), "--no-verify"]) == 0
    capsys.readouterr()
    before = _bytes(card)
    holder = _FolderHolder(card / "onnx")
    try:
        with pytest.raises(SystemExit) as e:
            E.main(["--model", saved_model, "--card-dir", str(card), *FAST])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith(f"error: --card-dir {card / 'onnx'}: another run"), err
        assert _bytes(card) == before
    finally:
        holder.die()


# ------------------------------------------------------------------------------------------------- window
def test_sasrec_window_graph(tmp_path):
    model = make_model("sasrec")
    with pytest.raises(E.ExportError, match="window"):
        E.export_model(model, tmp_path / "step", kind="step", verify=False)
    with pytest.raises(E.ExportError, match="step graph"):
        E.export_model(make_model("lrurec"), tmp_path / "lw", kind="window", verify=False)
    res = E.export_model(model, tmp_path / "win", topk=10)
    assert res.kind == "window" and res.report.ok, res.report.table()
    c = res.report.cases[0]
    assert c.topk_cases >= 2000 and c.topk_agreement >= 0.999 and c.max_abs_err <= 1e-4
    mp = onnx.load(res.graph_path)
    onnx.checker.check_model(mp, full_check=True)
    assert [i.name for i in mp.graph.input] == ["item_ids"]
    sess = OnnxWindowSession(tmp_path / "win")
    hists = [[1, 2, 3], list(range(1, 50))]                                     # second one is cut to 30 items
    out = sess.recommend(hists)
    ids, mask = model.pad_batch(hists)
    with torch.no_grad():
        ref = model.predict(ids, mask)
    np.testing.assert_array_equal(out.topk_ids, torch.topk(ref, 10).indices.numpy())
    with pytest.raises(ValueError, match="out of range"):
        sess.recommend([[N_ITEMS]])


def test_step_graphs_carry_the_fingerprint_of_what_their_state_means(tmp_path):
    """``state_fingerprint``: a re-export of the same weights (another top-k) keeps it; other weights (one more item,
    one changed value), fp16 or another state layout change it; window graphs (no state) have none."""
    model = make_model("gru4rec")
    a = E.export_model(model, tmp_path / "a", topk=10, verify=False).spec
    b = E.export_model(model, tmp_path / "b", topk=5, with_scores=True, verify=False).spec
    assert a["state_fingerprint"] == b["state_fingerprint"] == E.state_fingerprint(model, a)
    assert a["state_fingerprint"].startswith("sha256:") and len(a["state_fingerprint"]) == 7 + 64
    assert E.state_fingerprint(model, {**a, "precision": "fp16"}) != a["state_fingerprint"]
    assert E.state_fingerprint(model, {**a, "exclude_seen": True}) != a["state_fingerprint"]
    with torch.no_grad():
        model.gru_layers.weight_hh_l0[0, 0] += 1e-3
    assert E.state_fingerprint(model, a) != a["state_fingerprint"]
    grown = make_model("gru4rec")
    grown.resize_items(N_ITEMS + 1)
    assert E.state_fingerprint(grown, a) not in (a["state_fingerprint"], E.state_fingerprint(model, a))
    window = E.export_model(make_model("sasrec"), tmp_path / "w", verify=False).spec
    assert "state_fingerprint" not in window


@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_excluded_items_are_never_recommended_by_the_graph(name, tmp_path):
    """``exclude_items`` (``--exclude-items``): the graph scores those items -inf like the padding, every other score
    is the unmasked graph's, no top-k ever holds one, and the states (and their fingerprint) are unchanged. The
    verifier holds the graph to the spec's list: a graph masking other items than its spec lists fails it."""
    model = make_model(name)
    excluded = [1, 5, 7, N_ITEMS - 1]
    vk = dict(topk_cases=300) if name == "sasrec" else dict(prime_len=20, n_steps=20, topk_cases=300)
    masked = E.export_model(model, tmp_path / "masked", topk=10, with_scores=True, exclude_items=excluded,
                            verify_kwargs=vk)
    plain = E.export_model(model, tmp_path / "plain", topk=10, with_scores=True, verify=False)
    assert masked.report.ok and masked.spec["excluded_items"] == excluded and "excluded_items" not in plain.spec
    assert masked.spec.get("state_fingerprint") == plain.spec.get("state_fingerprint")
    rng = np.random.default_rng(0)
    hists = rng.integers(1, N_ITEMS, size=(64, 12)).tolist()
    if masked.kind == "step":
        a, b = (OnnxStepSession(tmp_path / d).prime(hists) for d in ("masked", "plain"))
    else:
        a, b = (OnnxWindowSession(tmp_path / d).recommend(hists) for d in ("masked", "plain"))
    assert not np.isin(a.topk_ids, excluded).any() and np.isin(b.topk_ids, excluded).any()
    assert np.isneginf(a.scores[:, excluded]).all()
    live = np.setdiff1d(np.arange(1, N_ITEMS), excluded)
    np.testing.assert_array_equal(a.scores[:, live], b.scores[:, live])
    forgot = {k: v for k, v in masked.spec.items() if k != "excluded_items"}      # negative controls
    assert not V.verify_export(model, masked.graph_path, forgot, **vk).ok
    assert not V.verify_export(model, plain.graph_path, {**plain.spec, "excluded_items": excluded}, **vk).ok
    with pytest.raises(E.ExportError, match=r"topk must be in 1..55 \(the items left to recommend after 4 excluded"):
        E.export_model(model, tmp_path / "k", topk=56, exclude_items=excluded, verify=False)
    with pytest.raises(E.ExportError, match="outside 1..59"):
        E.export_model(model, tmp_path / "k", exclude_items=[0, 3], verify=False)


@pytest.mark.parametrize("name,precision", [("lrurec", "fp32"), ("gru4rec", "fp32"), ("mamba4rec-1l", "fp16"),
                                            ("tim4rec_causal-gaps", "fp32"), ("sasrec", "fp32")])
def test_user_vector_output_is_the_models_query_vector(name, precision, tmp_path):
    """``--user-vector``: the graph also outputs ``user_vector [B, vector_size]``, the model's ``query_vectors`` of the
    history fed so far, whose inner products with ``model.item_vectors()`` are the graph's own scores (LRURec: with
    the bias column); the verifier checks them (and fails a graph whose vector is off). Without the flag the graph
    has no such output."""
    gaps = name.endswith(GAPS)
    model = make_model(name.removesuffix(GAPS))
    ti = "gaps" if gaps else None
    step = model.has_exact_step
    vk = dict(prime_len=20, n_steps=20, topk_cases=300) if step else dict(topk_cases=300)
    res = E.export_model(model, tmp_path / "v", topk=10, with_scores=True, precision=precision, time_input=ti,
                         user_vector=True, verify_kwargs=vk)
    plain = E.export_model(model, tmp_path / "p", topk=10, with_scores=True, precision=precision, time_input=ti,
                           verify=False)
    assert res.report.ok and all("user_vector . item vectors compared too" in c.detail for c in res.report.cases)
    out = {o["name"]: o for o in res.spec["outputs"]}
    assert out["user_vector"]["shape"] == ["B", model.vector_size] and "user_vector" not in plain.spec
    assert res.spec["user_vector"] == {"size": model.vector_size, "bias_column": model.item_output()[1] is not None}
    assert res.spec.get("state_fingerprint") == plain.spec.get("state_fingerprint")        # the states mean the same
    outputs = [o.name for o in onnx.load(plain.graph_path).graph.output]
    assert outputs == [o.name for o in onnx.load(res.graph_path).graph.output if o.name != "user_vector"]
    rng = np.random.default_rng(1)
    hists = rng.integers(1, N_ITEMS, size=(16, 9)).tolist()
    ts = (1.6e9 + np.cumsum(rng.integers(0, 3600, size=(16, 9)), axis=1)).tolist() if model.uses_timestamps else None
    if step:
        got = OnnxStepSession(tmp_path / "v").prime(hists, timestamps=ts)
    else:
        got = OnnxWindowSession(tmp_path / "v").recommend(hists)
    padded = model.pad_batch(hists, timestamps=ts)
    want = model.query_vectors(padded[0], padded[1], timestamps=padded[2] if ts else None).numpy()
    atol = 1e-4 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(got.user_vector, want, atol=atol, rtol=0)
    items = model.item_vectors().vectors.numpy()
    np.testing.assert_allclose(got.user_vector @ items.T, got.scores[:, 1:], atol=10 * atol, rtol=0)
    # negative control: a graph whose vector is off by a little (its scores untouched) fails verification
    real = model.vector_of_hidden
    bad = lambda h: real(h) * 1.01  # noqa: E731
    object.__setattr__(model, "vector_of_hidden", bad)
    try:
        mp, spec = E.trace_graph(model, "step" if step else "window", 10, precision=precision, time_input=ti,
                                 user_vector=True)
    finally:
        object.__delattr__(model, "vector_of_hidden")
    onnx.save(mp, str(tmp_path / "bad.onnx"))
    assert not V.verify_export(model, str(tmp_path / "bad.onnx"), spec, **vk).ok


def test_exclude_items_on_the_command_line(saved_model, tmp_path, capsys):
    """``python -m export.onnx --exclude-items FILE``: ids one per line (# comments), read through the model's
    vocabulary; an unknown id is bad data in the file (exit 1) named, before any export. ``--topk`` may take every
    item left, not one more: that is a usage error (2) naming the items left."""
    from zoo.vocab import ItemVocab

    model = make_model("gru4rec")
    model.set_item_vocab(ItemVocab([1000 + i for i in range(1, N_ITEMS)]))
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "retired.txt").write_text("# retired\n1003\n\n1010\n")
    assert E.main(["--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--exclude-items",
                   str(tmp_path / "retired.txt"), "--topk", str(N_ITEMS - 3), *FAST]) == 0
    spec = json.loads((tmp_path / "o" / "state_spec.json").read_text())
    assert spec["excluded_items"] == [3, 10] and spec["topk"] == N_ITEMS - 3
    with pytest.raises(SystemExit) as e:
        E.main(["--model", str(tmp_path / "m"), "--out", str(tmp_path / "o2"), "--exclude-items",
                str(tmp_path / "retired.txt"), "--topk", str(N_ITEMS - 2), *FAST])
    assert e.value.code == 2 and (f"--topk {N_ITEMS - 2}: the model's catalogue has {N_ITEMS - 1} items, "
                                  f"{N_ITEMS - 3} left after the 2 of --exclude-items; use --topk <= {N_ITEMS - 3}"
                                  in capsys.readouterr().err)
    assert not (tmp_path / "o2").exists()
    (tmp_path / "bad.txt").write_text("1003\n77\n")
    with pytest.raises(SystemExit) as e:
        E.main(["--model", str(tmp_path / "m"), "--out", str(tmp_path / "o2"), "--exclude-items",
                str(tmp_path / "bad.txt"), *FAST])
    assert e.value.code == 1 and "--exclude-items: unknown item id 77" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_item_vocab_travels_with_the_graph(tmp_path):
    from zoo.vocab import ItemVocab

    model = make_model("lrurec")
    model.set_item_vocab(ItemVocab([f"song{i}" for i in range(1, N_ITEMS)]))
    E.export_model(model, tmp_path, topk=3, verify=False)
    sess = OnnxStepSession(tmp_path)
    hist = [["song5", "song7"], ["song1", "song59"]]
    out = sess.prime(sess.encode(hist))
    rec = model.recommend(hist, k=3)
    assert sess.decode(out.topk_ids) == rec.items
    with pytest.raises(KeyError, match="unknown item"):
        sess.encode([["nope"]])


def test_string_vocabulary_takes_int_ids_as_their_text(tmp_path):
    """A string vocabulary whose ids are digits ('7', '007'): an int id is its text (7 -> '7', never '007'), in the
    graph's runtime as in zoo.vocab; '007' stays its own item."""
    from zoo.vocab import ItemVocab

    model = make_model("lrurec")
    names = [str(i) for i in range(1, N_ITEMS - 1)] + ["007"]
    model.set_item_vocab(ItemVocab(names))
    E.export_model(model, tmp_path, topk=3, verify=False)
    sess = OnnxStepSession(tmp_path)
    assert sess.encode([[7, "8"]]) == sess.encode([["7", "8"]]) == [[7, 8]]
    assert sess.encode([[7, "007", np.int64(8)]]) == [[7, N_ITEMS - 1, 8]] == [model.item_vocab.encode([7, "007", 8])]
    with pytest.raises(KeyError, match="unknown item id 59"):
        sess.encode([[59]])


@pytest.mark.parametrize("model_type", ["ssd4rec", "tim4rec", "bert4rec", "tim4rec_causal"])
def test_window_graph_other_models(tmp_path, model_type):
    """Window graphs for the other models without an exact step (timestamps input for time-aware ones). BERT4Rec
    guards a fixed bug: its [MASK]-append width came from the data and was traced into the graph as a constant."""
    from zoo.models import MODELS

    assert model_type in MODELS, f"{model_type} is missing from zoo.models.MODELS"
    cfg_cls, cls = MODELS[model_type]
    torch.manual_seed(0)
    # SSD models: chunk_size 4 < the window (the default 32 < ML-1M's 200) guards a fixed bug: the chunk count was
    # traced as a constant, so the graph only served windows of the traced length
    kw = {"chunk_size": 4} if model_type in ("ssd4rec", "tim4rec", "tim4rec_causal") else {}
    model = _sharpen(cls(cfg_cls(n_items=N_ITEMS, hidden_size=16, max_seq_length=20, **kw)))
    res = E.export_model(model, tmp_path, kind="window", topk=10)          # acceptance size: >= 2,000 windows
    assert res.report.ok, res.report.table()
    c = res.report.cases[0]
    assert c.topk_cases >= 2000 and c.topk_agreement >= 0.999 and c.max_abs_err <= 1e-4, res.report.table()
    names = [i.name for i in onnx.load(res.graph_path).graph.input]
    assert names == (["item_ids", "timestamps"] if model.uses_timestamps else ["item_ids"])


# ------------------------------------------------------------------------------------------------- fp16
def _producer_map(mp):
    return {o: n for n in mp.graph.node for o in n.output}


@pytest.fixture(scope="module")
def exported_fp16(tmp_path_factory):
    """name -> (model, ExportResult) of the fp16 step graph (full-size verification, fp16 tolerance row)."""
    torch.set_num_threads(1)
    cache = {}

    def get(name):
        if name not in cache:
            model = make_model(name)
            out = tmp_path_factory.mktemp(name + "-fp16")
            cache[name] = (model, E.export_model(model, out, topk=10, with_scores=True, precision="fp16"))
        return cache[name]

    return get


@pytest.mark.parametrize("name", ["mamba4rec-1l", "lrurec"])
def test_fp16_step_graph(exported, exported_fp16, name):
    """fp16 weights/activations; graph I/O, states and the scan nodes fp32; ORT runs it; verified under the fp16 row."""
    model, res = exported_fp16(name)
    _, res32 = exported(name)
    rep = res.report
    assert rep.ok and rep.precision == "fp16", rep.table()
    assert rep.score_rtol == V.FP16_SCORE_RTOL and rep.topk_min_agreement == V.FP16_TOPK_MIN_AGREEMENT
    cases = {c.name: c for c in rep.cases}
    assert "prime 200 + 500 single steps" in cases["random/prime+steps"].detail
    assert cases["random/topk"].topk_cases >= 2000
    for c in rep.cases:                                   # really fp16 (not fp32 in disguise), but close
        assert 1e-5 < c.max_abs_err and c.max_rel_err <= V.FP16_SCORE_RTOL and c.state_err <= V.FP16_STATE_ATOL
    mp = onnx.load(res.graph_path)
    onnx.checker.check_model(mp, full_check=True)
    mp32 = onnx.load(res32.graph_path)
    F, H = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    io = lambda m: [(v.name, v.type.tensor_type.elem_type, str(v.type.tensor_type.shape))  # noqa: E731
                    for v in list(m.graph.input) + list(m.graph.output)]
    assert io(mp) == io(mp32)                                               # same names, shapes and dtypes
    types = {n: t for n, t, _ in io(mp)}
    names = [s.name for s in model.state_spec(1)]
    assert all(types[s] == types[f"{s}_out"] == F for s in names)
    assert types["topk_scores"] == types["scores"] == F
    # weights stored as float16 (the scan parameters stay fp32: initializers, or Constant nodes such as LRURec's lam)
    inits = {i.name: i for i in mp.graph.initializer}
    consts = {n.output[0]: a.t for n in mp.graph.node if n.op_type == "Constant" for a in n.attribute
              if a.name == "value"}
    n16 = sum(int(np.prod(t.dims)) for t in inits.values() if t.data_type == H)
    n32 = sum(int(np.prod(t.dims)) for t in [*inits.values(), *consts.values()] if t.data_type == F)
    assert n16 > 10 * n32 > 0
    for n in (x for x in mp.graph.node if x.domain == ps.ONNX_DOMAIN):          # the parameters the scan reads
        for t, inp in zip(ps.SCAN_OPS[n.op_type].inputs, n.input, strict=True):
            if "B" not in t.shape.split(",") and inp in {**inits, **consts}:
                assert {**inits, **consts}[inp].data_type == F, (t.name, inp)
    emb = max(inits.values(), key=lambda t: int(np.prod(t.dims)))
    assert emb.data_type == H and int(np.prod(emb.dims)) >= N_ITEMS * 16
    # the scan nodes and their functions stay fp32: activations are cast to fp32 before, the state comes in as fp32
    prod = _producer_map(mp)
    op = ps.SELECTIVE_SCAN if name.startswith("mamba") else ps.LRU_SCAN
    for n in (x for x in mp.graph.node if x.domain == ps.ONNX_DOMAIN):
        for t, inp in zip(op.inputs, n.input, strict=True):
            if "B" in t.shape.split(",") and not t.name.startswith("h0"):
                p = prod[inp]
                assert p.op_type == "Cast" and p.attribute[0].i == F, (t.name, p)
    fn = next(f for f in mp.functions if f.name == op.op_type)
    assert fn == next(f for f in mp32.functions if f.name == op.op_type)
    spec = json.loads(pathlib.Path(res.spec_path).read_text())
    spec32 = json.loads(pathlib.Path(res32.spec_path).read_text())
    assert spec["precision"] == "fp16" and spec32["precision"] == "fp32"
    assert spec["state"] == spec32["state"] and spec["inputs"] == spec32["inputs"]
    assert spec["outputs"] == spec32["outputs"]
    assert spec["verification"]["precision"] == "fp16" and spec["verification"]["passed"] is True
    # the torch-free runtime runs it unchanged; float32 state and scores come back, padding never recommended
    sess = OnnxStepSession(os.path.dirname(res.graph_path))
    hist = np.random.default_rng(3).integers(1, N_ITEMS, size=(3, 9))
    out = sess.prime(hist[:, :8])
    out = sess.step(hist[:, 8:], out.state)
    assert out.topk_scores.dtype == np.float32 and (out.topk_ids != 0).all()
    assert all(a.dtype == np.float32 for a in out.state.values())
    assert out.scores.dtype == np.float32 and np.isneginf(out.scores[:, 0]).all()


def test_lrurec_graph_holds_the_models_own_lambda(exported):
    """LRURec's decay lam = exp(-nu + i theta) is a constant of the graph, bit for bit PyTorch's: traced, the runtime
    computed it with its own exp/cos/sin (ONNX's reference evaluator ~8 ulps off), which |lam| ~ 1 carried through
    hundreds of steps past the fp32 tolerance (export.trt's plugin check, 200 + 500 steps: 1.5e-4 on the bundled
    LRURec; 6.7e-6 with the constants)."""
    model, res = exported("lrurec")
    mp = onnx.load(res.graph_path)
    consts = {n.output[0]: onnx.numpy_helper.to_array(a.t) for n in mp.graph.node if n.op_type == "Constant"
              for a in n.attribute if a.name == "value"}
    consts.update({i.name: onnx.numpy_helper.to_array(i) for i in mp.graph.initializer})
    prod = _producer_map(mp)
    scans = [n for n in mp.graph.node if n.op_type == "LRUScan"]
    assert len(scans) == model.config.num_layers
    for layer, n in zip(model.lru_blocks, scans, strict=True):
        lam_re, lam_im = (t.detach().numpy() for t in layer.lru_layer.lam())
        for name, want in ((n.input[2], lam_re), (n.input[3], lam_im)):
            assert name in consts and name not in prod or prod[name].op_type == "Constant", name
            np.testing.assert_array_equal(consts[name], want)


def test_fp16_gru4rec_graph_runs(tmp_path):
    """The fp16 GRU4Rec graph crashed ONNX Runtime 1.32's CPU session setup (SIGSEGV, the whole process: `export.onnx
    --fp16` on the bundled GRU4Rec died without a word). The trigger is an fp16 Transpose of batch axes feeding an
    fp16 MatMul (GRU4Rec's time-major GRU output going into `dense`); such Transposes now compute in fp32. The session
    is created in a child process first, so a regression fails this test instead of killing the test run."""
    model = make_model("gru4rec")
    mp32 = E.trace_graph(model, "step", 10, with_scores=True)[0]
    assert E._batch_transposes_into_matmul(list(mp32.graph.node))           # the pattern is there in fp32
    mp, spec = E.trace_graph(model, "step", 10, with_scores=True, precision="fp16")
    assert not E._batch_transposes_into_matmul(list(mp.graph.node))         # a Cast separates it in fp16
    path = tmp_path / "model.onnx"
    onnx.save(mp, str(path))
    child = subprocess.run([sys.executable, "-c", "import onnxruntime as ort; ort.InferenceSession("
                            f"{str(path)!r}, providers=['CPUExecutionProvider'])"], capture_output=True, text=True)
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    rep = V.verify_export(model, str(path), spec, prime_len=20, n_steps=30, topk_cases=300)
    assert all(c.max_rel_err <= V.FP16_SCORE_RTOL for c in rep.cases), rep.table()


def test_fp16_tolerance_table(exported_fp16):
    """fp32 graphs are judged by the fp32 row, fp16 graphs by the fp16 row; an fp16 graph fails the fp32 row."""
    assert V.tolerances("fp32") == {"score_atol": V.SCORE_ATOL, "score_rtol": None, "state_atol": V.STATE_ATOL,
                                    "topk_min_agreement": V.TOPK_MIN_AGREEMENT, "topk_min_overlap": None}
    assert V.tolerances("fp16")["score_rtol"] == V.FP16_SCORE_RTOL and V.TOLERANCES["fp16"]["score_atol"] is None
    model, res = exported_fp16("mamba4rec-1l")
    small = dict(prime_len=10, n_steps=10, topk_cases=100)
    rep32 = V.verify_export(model, res.graph_path, res.spec, precision="fp32", **small)
    assert not rep32.ok and "score error" in rep32.worst_message()
    assert "fp32" in rep32.table() and "fp16" in res.report.table()
    rep16 = V.verify_export(model, res.graph_path, res.spec, **small)   # precision from the spec
    assert rep16.ok and rep16.precision == "fp16"
    assert rep16.to_dict()["score_rtol"] == V.FP16_SCORE_RTOL


def test_fp16_cli_and_window_graph(saved_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert E.main(["--model", saved_model, "--out", str(out), "--fp16", *FAST]) == 0
    text = capsys.readouterr().out
    assert "PASSED" in text and "fp16" in text
    spec = json.loads((out / "state_spec.json").read_text())
    assert spec["precision"] == "fp16" and all(s["dtype"] == "float32" for s in spec["state"])
    model = make_model("sasrec")
    res = E.export_model(model, tmp_path / "win", topk=10, precision="fp16", verify_kwargs={"topk_cases": 300})
    assert res.report.ok and res.report.precision == "fp16", res.report.table()
    mp = onnx.load(res.graph_path)
    onnx.checker.check_model(mp, full_check=True)
    assert [o.type.tensor_type.elem_type for o in mp.graph.output] == [onnx.TensorProto.INT64, onnx.TensorProto.FLOAT]
    sess = OnnxWindowSession(tmp_path / "win")
    assert sess.recommend([[1, 2, 3]]).topk_scores.dtype == np.float32
    with pytest.raises(E.ExportError, match="precision"):
        E.trace_graph(model, "window", 10, precision="bf16")


def test_fp16_refused_for_time_aware_models():
    from zoo.models import MODELS

    assert "tim4rec" in MODELS, "tim4rec is missing from zoo.models.MODELS"
    cfg_cls, cls = MODELS["tim4rec"]
    model = cls(cfg_cls(n_items=N_ITEMS, hidden_size=16, max_seq_length=20))
    assert model.uses_timestamps
    with pytest.raises(E.ExportError, match="time-aware"):
        E.trace_graph(model, "window", 10, precision="fp16")


# ------------------------------------------------------------------------------------ TiM4Rec-causal (SSDScan)
def _nested_nodes(nodes) -> list:
    """``nodes`` and every node of their subgraphs (If branches, Scan bodies), recursively."""
    out = []
    for nd in nodes:
        out.append(nd)
        for a in nd.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += _nested_nodes(a.g.node)
    return out


def _function_model(op, function: onnx.FunctionProto, **attrs) -> onnx.ModelProto:
    """A one-node graph calling the model-local function of the scan op ``op`` (I/O as in plugin_spec)."""
    F32 = onnx.TensorProto.FLOAT
    node = onnx.helper.make_node(op.op_type, op.input_names, op.output_names, domain=ps.ONNX_DOMAIN,
                                 **{**ps.node_attributes(op), **attrs})
    vi = lambda t: onnx.helper.make_tensor_value_info(t.name, F32, t.shape.split(","))  # noqa: E731  (spec shapes)
    graph = onnx.helper.make_graph([node], op.op_type, [vi(t) for t in op.inputs], [vi(t) for t in op.outputs])
    mp = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", E.OPSET),
                                                      onnx.helper.make_opsetid(ps.ONNX_DOMAIN, 1)],
                                functions=[function], ir_version=E.IR_VERSION)
    onnx.checker.check_model(mp, full_check=True)
    return mp


def _ssd_function_model(dt_softplus: int) -> onnx.ModelProto:
    """A one-node graph calling the ``SSDScan`` model-local function (x [B,T,H,P] ... h0 [B,H,P,N])."""
    return _function_model(ps.SSD_SCAN, E.ssd_scan_function(), dt_softplus=dt_softplus)


def _ort(mp: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(mp.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("T,softplus", [(1, 1), (1, 0), (6, 1), (6, 0)])
def test_selective_scan_function_both_branches(T, softplus):
    """``SelectiveScan``'s function has two branches: a closed-form step when T == 1 (the serving case) and an ONNX
    ``Scan`` otherwise. Both against the naive loop oracle on fresh random inputs (tolerance 1e-5 abs + 1e-5 rel),
    and T steps of one event chained through the state == one call with T events."""
    from zoo.ops.selective_scan import selective_scan_loop

    g = torch.Generator().manual_seed(100 + T * 2 + softplus)
    Bsz, Ed, N = 3, 8, 5
    d = {"u": torch.randn(Bsz, Ed, T, generator=g), "delta": torch.randn(Bsz, Ed, T, generator=g),
         "A": -torch.rand(Ed, N, generator=g) * 2 - 0.1, "B": torch.randn(Bsz, N, T, generator=g),
         "C": torch.randn(Bsz, N, T, generator=g), "D": torch.randn(Ed, generator=g),
         "z": torch.randn(Bsz, Ed, T, generator=g), "delta_bias": torch.randn(Ed, generator=g) * 0.5,
         "h0": torch.randn(Bsz, Ed, N, generator=g)}
    if not softplus:
        d["delta"] = d["delta"].abs()
    y_ref, h_ref = selective_scan_loop(*[d[k].double() for k in ("u", "delta", "A", "B", "C", "D", "z",
                                                                  "delta_bias")],
                                       delta_softplus=bool(softplus), return_last_state=True,
                                       initial_state=d["h0"].double())
    sess = _ort(_function_model(ps.SELECTIVE_SCAN, E.selective_scan_function(), delta_softplus=softplus))
    feeds = {k: v.numpy() for k, v in d.items()}
    y, h = sess.run(None, feeds)
    assert y.shape == (Bsz, Ed, T) and h.shape == (Bsz, Ed, N)
    np.testing.assert_allclose(y, y_ref.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(h, h_ref.numpy(), atol=1e-5, rtol=1e-5)
    hs, ys = feeds["h0"], []
    for t in range(T):                                             # one event at a time: the T == 1 branch
        step = {**feeds, "h0": hs, **{k: feeds[k][..., t:t + 1] for k in ("u", "delta", "B", "C", "z")}}
        yt, hs = sess.run(None, step)
        ys.append(yt)
    np.testing.assert_allclose(np.concatenate(ys, -1), y, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(hs, h, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", [1, 6])
def test_lru_scan_function_both_branches(T):
    """``LRUScan``'s function: closed form when T == 1, ONNX ``Scan`` otherwise; both against the naive loop oracle
    (1e-5), and T chained one-event calls == one call with T events."""
    from zoo.ops.lru import lru_scan_loop

    g = torch.Generator().manual_seed(200 + T)
    Bsz, N = 3, 7
    r, th = torch.rand(N, generator=g) * 0.5 + 0.45, torch.rand(N, generator=g) * 6.28
    d = {"u_re": torch.randn(Bsz, T, N, generator=g), "u_im": torch.randn(Bsz, T, N, generator=g),
         "lam_re": r * torch.cos(th), "lam_im": r * torch.sin(th),
         "h0_re": torch.randn(Bsz, N, generator=g), "h0_im": torch.randn(Bsz, N, generator=g)}
    hr_ref, hi_ref = lru_scan_loop(*[d[k].double() for k in ("u_re", "u_im", "lam_re", "lam_im")], None,
                                   d["h0_re"].double(), d["h0_im"].double())
    sess = _ort(_function_model(ps.LRU_SCAN, E.lru_scan_function()))
    feeds = {k: v.numpy() for k, v in d.items()}
    hr, hi = sess.run(None, feeds)
    assert hr.shape == hi.shape == (Bsz, T, N)
    np.testing.assert_allclose(hr, hr_ref.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(hi, hi_ref.numpy(), atol=1e-5, rtol=1e-5)
    state, outs = (feeds["h0_re"], feeds["h0_im"]), []
    for t in range(T):
        o = sess.run(None, {**feeds, "h0_re": state[0], "h0_im": state[1],
                            "u_re": feeds["u_re"][:, t:t + 1], "u_im": feeds["u_im"][:, t:t + 1]})
        outs.append(o)
        state = (o[0][:, 0], o[1][:, 0])
    np.testing.assert_allclose(np.concatenate([o[0] for o in outs], 1), hr, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate([o[1] for o in outs], 1), hi, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T,G,dt_softplus", [(1, 1, 1), (1, 2, 0), (7, 2, 1), (5, 4, 0), (9, 1, 0)])
def test_ssd_scan_function_matches_plugin_math(T, G, dt_softplus):
    """The ONNX function and the torch op compute exactly the SSDScan contract of plugin_spec / plugins/ssdScanPlugin
    (y includes D x; head h reads group h // (H / G); softplus(dt + dt_bias) only when dt_softplus = 1), checked
    against zoo.ops.ssd.ssd_scan_loop, the oracle the plugin's harness also uses."""
    from zoo.ops.ssd import ssd_scan_loop

    g = torch.Generator().manual_seed(T * 10 + G)
    Bsz, H, P, N = 3, 4, 5, 6
    d = {"x": torch.randn(Bsz, T, H, P, generator=g), "dt": torch.randn(Bsz, T, H, generator=g),
         "A": -torch.rand(H, generator=g) * 2 - 0.1, "B": torch.randn(Bsz, T, G, N, generator=g),
         "C": torch.randn(Bsz, T, G, N, generator=g), "D": torch.randn(H, generator=g),
         "dt_bias": torch.randn(H, generator=g) * 0.5, "h0": torch.randn(Bsz, H, P, N, generator=g)}
    if not dt_softplus:
        d["dt"] = d["dt"].abs()
    delta = d["dt"] + d["dt_bias"]
    delta = torch.nn.functional.softplus(delta) if dt_softplus else delta
    y_ref, h_ref = ssd_scan_loop(d["x"].double(), delta.double(), d["A"].double(), d["B"].double(), d["C"].double(),
                                 d["D"].double(), d["h0"].double())
    sess = _ort(_ssd_function_model(dt_softplus))
    y, h = sess.run(None, {k: v.numpy() for k, v in d.items()})
    assert y.shape == (Bsz, T, H, P) and h.shape == (Bsz, H, P, N)
    np.testing.assert_allclose(y, y_ref.numpy(), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(h, h_ref.numpy(), atol=2e-5, rtol=1e-5)
    yt, ht = E._SSDScanOp.apply(*[d[n] for n in ps.SSD_SCAN.input_names], dt_softplus)
    np.testing.assert_allclose(yt.numpy(), y_ref.numpy(), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(ht.numpy(), h_ref.numpy(), atol=2e-5, rtol=1e-5)
    # the function's T == 1 branch (closed form), chained event by event, == its Scan branch over all T
    feeds = {k: v.numpy() for k, v in d.items()}
    hs, ys = feeds["h0"], []
    for t in range(T):
        yt1, hs = sess.run(None, {**feeds, "h0": hs, **{k: feeds[k][:, t:t + 1] for k in ("x", "dt", "B", "C")}})
        ys.append(yt1)
    np.testing.assert_allclose(np.concatenate(ys, 1), y, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(hs, h, atol=2e-5, rtol=1e-5)


def _check_ssd_scan_nodes(mp, model) -> None:
    """One SSDScan node per layer and its standard-op function, exactly as export/plugin_spec.py says."""
    op = ps.SSD_SCAN
    scan = [n for n in mp.graph.node if n.domain == ps.ONNX_DOMAIN]
    assert len(scan) == model.config.num_layers == 2
    for n in scan:
        assert n.op_type == op.op_type == "SSDScan"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        assert attrs == ps.node_attributes(op) == {"plugin_namespace": ps.PLUGIN_NAMESPACE,
                                                   "plugin_version": ps.PLUGIN_VERSION, "dt_softplus": 1}
        assert len(n.input) == len(op.inputs) == 8 and len(n.output) == len(op.outputs) == 2
    fns = {(f.domain, f.name): f for f in mp.functions}
    assert set(fns) == {(ps.ONNX_DOMAIN, "SSDScan")}
    f = fns[(ps.ONNX_DOMAIN, "SSDScan")]
    assert list(f.input) == op.input_names and list(f.output) == op.output_names
    assert [a.name for a in f.attribute_proto] == ["dt_softplus"]
    nested = _nested_nodes(f.node)
    assert len(nested) > len(f.node) and all(nd.domain in ("", "ai.onnx") for nd in nested), \
        "the function must be made of standard ops"
    # two Ifs: softplus(dt) iff dt_softplus; a closed-form step when T == 1, else the one Scan over T
    assert [nd.op_type for nd in f.node].count("If") == 2 and [nd.op_type for nd in nested].count("Scan") == 1
    assert {(o.domain, o.version) for o in mp.opset_import} >= {(ps.ONNX_DOMAIN, ps.ONNX_DOMAIN_VERSION)}


def test_tim4rec_causal_ssd_nodes_follow_plugin_spec(exported):
    """One SSDScan node per layer, exactly as export/plugin_spec.py says; float64 timestamps and last_ts in the I/O."""
    model, res = exported("tim4rec_causal")
    mp = onnx.load(res.graph_path)
    _check_ssd_scan_nodes(mp, model)
    names = [s.name for s in model.state_spec(1)]
    assert names == ["conv_state", "ssm_state", "time_conv_state", "last_ts"]
    assert [i.name for i in mp.graph.input] == ["item_ids", "timestamps", *names]
    assert [o.name for o in mp.graph.output] == ["topk_ids", "topk_scores", "scores", *[f"{s}_out" for s in names]]
    types = {o.name: o.type.tensor_type.elem_type for o in list(mp.graph.input) + list(mp.graph.output)}
    D, F = onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT
    assert types["timestamps"] == types["last_ts"] == types["last_ts_out"] == D
    assert all(types[s] == types[f"{s}_out"] == F for s in names[:3])
    assert types["topk_scores"] == types["scores"] == F and types["topk_ids"] == onnx.TensorProto.INT64
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in mp.graph.input}
    assert shapes["timestamps"] == ["B", "T"] and shapes["last_ts"] == ["B", 1]


def test_tim4rec_causal_state_spec_json(exported):
    model, res = exported("tim4rec_causal")
    spec = json.loads(pathlib.Path(res.spec_path).read_text())
    c = model.config
    want = {"conv_state": (["B", 2, c.d_inner + 2 * c.d_state, c.d_conv - 1], "float32", 0.0),
            "ssm_state": (["B", 2, c.n_heads, c.head_dim, c.d_state], "float32", 0.0),
            "time_conv_state": (["B", 2, 2, c.n_heads, c.d_conv - 1], "float32", 0.0),
            "last_ts": (["B", 1], "float64", -1.0)}
    assert [s["name"] for s in spec["state"]] == list(want)
    for s in spec["state"]:
        assert (s["shape"], s["dtype"], s["init"]) == want[s["name"]], s
        assert s["output"] == f"{s['name']}_out"
    ins = {e["name"]: e for e in spec["inputs"]}
    outs = {e["name"]: e for e in spec["outputs"]}
    assert list(ins) == ["item_ids", "timestamps", *want]
    assert ins["timestamps"]["dtype"] == "float64" and ins["timestamps"]["shape"] == ["B", "T"]
    assert ins["last_ts"]["dtype"] == outs["last_ts_out"]["dtype"] == "float64"
    assert spec["uses_timestamps"] is True and spec["kind"] == "step" and spec["precision"] == "fp32"
    assert spec["time_input"] == "timestamps" and spec["client_state"] == [] and "time_input_doc" not in spec
    (op,) = spec["custom_ops"]
    assert op["op_type"] == "SSDScan" and op["count"] == 2 and op["attributes"] == ps.node_attributes(ps.SSD_SCAN)
    assert op["inputs"] == ps.SSD_SCAN.input_names and op["outputs"] == ps.SSD_SCAN.output_names
    meta = {p.key: p.value for p in onnx.load(res.graph_path).metadata_props}
    assert json.loads(meta["state_spec"]) == spec["state"]


@pytest.mark.parametrize("name", TIME_STEP_MODELS)
def test_tim4rec_causal_graph_runs_without_torch(exported, tmp_path, name):
    """export.runtime alone (no torch) primes with float64 epoch seconds and steps; last_ts comes back exactly. Same API
    for both time forms: with --time-input gaps the wrapper keeps last_ts and feeds float32 gaps to the graph."""
    model, res = exported(name)
    graph_time = {"tim4rec_causal": ("timestamps", "tensor(double)"), "tim4rec_causal-gaps": ("time_gaps",
                                                                                            "tensor(float)")}[name]
    rng = np.random.default_rng(4)
    hist = rng.integers(1, N_ITEMS, size=(2, 12))
    ts = V._rand_ts(rng, 2, 12)
    with torch.no_grad():
        logits, st = model.step(torch.from_numpy(hist[:, :11]), model.init_state(2), torch.from_numpy(ts[:, :11]))
        logits, st = model.step(torch.from_numpy(hist[:, 11:]), st, torch.from_numpy(ts[:, 11:]))
    logits[:, 0] = -float("inf")
    np.savez(tmp_path / "ref.npz", hist=hist, ts=ts, top=torch.topk(logits, 10).indices.numpy(),
             **{k: v.numpy() for k, v in st.items()})
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        sys.path.insert(0, {ROOT!r})
        from export.runtime import OnnxStepSession
        ref = np.load({str(tmp_path / 'ref.npz')!r})
        s = OnnxStepSession({os.path.dirname(res.graph_path)!r}, threads=1)
        graph_in = {{i.name: i.type for i in s.session.get_inputs()}}
        assert graph_in[{graph_time[0]!r}] == {graph_time[1]!r}, graph_in
        assert ("last_ts" in graph_in) == ({graph_time[0]!r} == "timestamps"), graph_in
        init = s.init_state(2)
        assert sorted(init) == ["conv_state", "last_ts", "ssm_state", "time_conv_state"]
        assert init["last_ts"].dtype == np.float64 and (init["last_ts"] == -1.0).all()
        assert init["ssm_state"].dtype == np.float32
        out = s.prime(ref["hist"][:, :11], timestamps=ref["ts"][:, :11])
        out = s.step(ref["hist"][:, 11:], out.state, timestamps=ref["ts"][:, 11:])
        assert (out.topk_ids == ref["top"]).all(), (out.topk_ids, ref["top"])
        assert out.state["last_ts"].dtype == np.float64
        assert (out.state["last_ts"] == ref["last_ts"]).all() and (out.state["last_ts"][:, 0] == ref["ts"][:, -1]).all()
        for n, a in out.state.items():
            assert a.dtype == ref[n].dtype and np.abs(a - ref[n]).max() < 1e-5, n
        bad = [m for m in ("torch", "zoo", "transformers") if m in sys.modules]
        assert not bad, bad
        print("OK")
    """)
    _run_python_ok(code, tmp_path)


@pytest.mark.parametrize("name", TIME_STEP_MODELS)
def test_tim4rec_causal_runtime_checks_timestamps(exported, name):
    _, res = exported(name)
    sess = OnnxStepSession(os.path.dirname(res.graph_path))
    st = sess.init_state(2)
    ts = np.array([[1.6e9, 1.6e9 + 5], [1.7e9, 1.7e9 + 86400]])
    out = sess.step([[1, 2], [3, 4]], st, timestamps=ts)
    np.testing.assert_array_equal(out.state["last_ts"][:, 0], ts[:, 1])
    with pytest.raises(ValueError, match="timestamps"):
        sess.step([[1], [2]], out.state)                                        # missing
    with pytest.raises(ValueError, match=r"row 1 decrease \(1699999999\.0 after 1700000000\.0\)"):
        sess.step([[1, 2], [3, 4]], st, timestamps=[[1.6e9, 1.6e9], [1.7e9, 1.7e9 - 1]])
    with pytest.raises(ValueError, match=r"row 0 go back in time.*\(1600000004\.0 < last_ts 1600000005\.0\)"):
        sess.step([[5], [6]], out.state, timestamps=[[1.6e9 + 4], [1.7e9 + 86400]])
    with pytest.raises(ValueError, match="finite and non-negative"):
        sess.step([[5], [6]], out.state, timestamps=[[np.nan], [1.8e9]])
    with pytest.raises(TypeError, match=r"last_ts.*dtype float32, expected float64"):
        sess.step([[5], [6]], dict(out.state, last_ts=out.state["last_ts"].astype(np.float32)),
                  timestamps=[[1.6e9 + 9], [1.8e9]])
    with pytest.raises(ValueError, match=r"last_ts'\] of batch row 1 is -7.0.*or -1 \(no event yet\)"):
        sess.step([[5], [6]], dict(out.state, last_ts=np.array([[1.6e9 + 5], [-7.0]])),   # as model.step refuses
                  timestamps=[[1.6e9 + 9], [1.8e9]])
    same = sess.step([[5], [6]], out.state, timestamps=ts[:, 1:])                # equal to last_ts: a gap of 0
    assert same.topk_ids.shape == (2, 10)


def test_tim4rec_causal_float64_state_is_checked(monkeypatch, tmp_path):
    """Negative control: a graph that rounds the float64 state through float32 (what casting every new state with
    .float() did) fails verification, so the float64 path is really tested."""
    model = make_model("tim4rec_causal")
    real = E.StepGraph.forward

    def rounding(self, *args):
        out = real(self, *args)
        return tuple(o.float().double() if o.dtype == torch.float64 else o for o in out)

    monkeypatch.setattr(E.StepGraph, "forward", rounding)
    with pytest.raises(E.VerificationError, match="state error") as e:
        E.export_model(model, tmp_path, verify_kwargs=dict(prime_len=10, n_steps=10, topk_cases=100))
    assert e.value.report.to_dict()["state_err"] > 1.0                         # seconds lost to float32
    assert not (tmp_path / "model.onnx").exists()


def test_runtime_timestamps_units_and_precision(tmp_path):
    """Timestamps as numpy datetime64 of any unit are read as seconds (datetime64[ms] was read as numbers, 1,000x
    too large, with no error); float32 seconds too large for whole seconds, booleans, strings and NaT are refused, and
    so are epoch milliseconds / nanoseconds (beyond 1e11 s: they were read as seconds, as model.step read them).
    The window graph's recommend takes timestamps (it had no way to pass them) and refuses ones that decrease."""
    from export.timestamps import seconds

    model = make_model("tim4rec_causal")
    step = OnnxStepSession(os.path.dirname(E.export_model(model, tmp_path / "s", verify=False).spec_path))
    t = np.array([["2020-01-01T00:00:00", "2020-01-01T00:01:30"]], dtype="datetime64[s]")
    want = step.prime([[1, 2]], timestamps=[[1577836800.0, 1577836890.0]])
    for unit in ("s", "ms", "us", "ns"):
        got = step.prime([[1, 2]], timestamps=t.astype(f"datetime64[{unit}]"))
        assert got.state["last_ts"][0, 0] == 1577836890.0, unit
        np.testing.assert_array_equal(got.topk_ids, want.topk_ids)
    assert seconds(np.array([1.5e6], np.float32)).dtype == np.float64                  # small float32: exact enough
    assert seconds(np.array([2048.0], np.float16))[0] == 2048.0                          # float16: whole seconds
    with pytest.raises(ValueError, match="float16 cannot hold whole seconds"):          # to 2**11 only
        seconds(np.array([4096.0], np.float16))
    for bad, err, match in ((np.array([[1.6e9, 1.6e9 + 30]], np.float32), ValueError, "float32 cannot hold whole"),
                            (np.array([[True, True]]), TypeError, "must be numbers .* got dtype bool"),
                            (np.array([["1", "2"]]), TypeError, "must be numbers"),
                            (np.array([["NaT", "2020-01-01"]], dtype="datetime64[s]"), ValueError, "NaT")):
        with pytest.raises(err, match=match):
            step.prime([[1, 2]], timestamps=bad)
    from export.timestamps import MAX_SECONDS
    from zoo.modeling_utils import MAX_TIMESTAMP_S

    assert MAX_SECONDS == MAX_TIMESTAMP_S                    # the graphs refuse what model.step refuses
    for unix_ms_or_ns in (np.array([[1.6e12, 1.6e12 + 30]]), np.array([[16 * 10**17, 16 * 10**17 + 1]], np.int64)):
        with pytest.raises(ValueError, match=r"^timestamps reach 1\.6e\+\d+ s, beyond 1e\+11 s \(the year ~5000\): "
                                             "they look like milliseconds or nanoseconds since the epoch"):
            step.prime([[1, 2]], timestamps=unix_ms_or_ns)
    assert seconds([MAX_SECONDS])[0] == MAX_SECONDS

    win = OnnxWindowSession(os.path.dirname(E.export_model(model, tmp_path / "w", kind="window",
                                                           verify=False).spec_path))
    hists, stamps = [[1, 2, 3], [4, 5]], [[1.6e9, 1.6e9 + 60, 1.6e9 + 600], [1.7e9, 1.7e9 + 5]]
    got = win.recommend(hists, stamps)
    ref = win.run_window(win.pad(hists), win.place([np.array(x) for x in stamps], np.float64))
    np.testing.assert_array_equal(got.topk_ids, ref.topk_ids)
    with torch.no_grad():
        ids, mask = model.pad_batch(hists)
        ts = torch.zeros(ids.shape, dtype=torch.float64)
        for r, x in enumerate(stamps):
            ts[r, :len(x)] = torch.tensor(x, dtype=torch.float64)
        torch_top = torch.topk(model.predict(ids, mask, timestamps=ts), 10).indices.numpy()
    np.testing.assert_array_equal(got.topk_ids, torch_top)
    with pytest.raises(ValueError, match="pass one list of timestamps"):
        win.recommend(hists)
    with pytest.raises(ValueError, match="history 1 has 2 items but 1 timestamps"):
        win.recommend(hists, [stamps[0], [1.7e9]])
    with pytest.raises(ValueError, match=r"timestamps of batch row 0 decrease \(1600000000.0 after 1600000060.0\)"):
        win.recommend(hists, [[1.6e9, 1.6e9 + 60, 1.6e9], stamps[1]])


def test_tim4rec_causal_without_time_and_fp16_refused(tmp_path):
    model = make_model("tim4rec_causal")
    with pytest.raises(E.ExportError, match="time-aware.*float64 timestamps.*--time-input gaps"):
        E.trace_graph(model, "step", 10, precision="fp16")                     # the float64 timestamps form
    notime = make_model("tim4rec_causal-notime")                               # is_time=False: no time inputs
    res = E.export_model(notime, tmp_path, verify_kwargs=dict(prime_len=30, n_steps=30, topk_cases=300))
    assert res.report.ok, res.report.table()
    assert [i.name for i in onnx.load(res.graph_path).graph.input] == ["item_ids", "conv_state", "ssm_state"]
    assert all(s["dtype"] == "float32" for s in res.spec["state"])


@pytest.fixture(scope="module")
def saved_tim4rec_causal(tmp_path_factory):
    d = tmp_path_factory.mktemp("saved") / "tc"
    make_model("tim4rec_causal").save_pretrained(d)
    return str(d)


def test_tim4rec_causal_cli_default_step(saved_tim4rec_causal, tmp_path, capsys):
    out = tmp_path / "out"
    assert E.main(["--model", saved_tim4rec_causal, "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "verification (step, tim4rec_causal): PASSED" in text and "2 scan nodes" in text
    spec = json.loads((out / "state_spec.json").read_text())
    assert spec["kind"] == "step" and spec["custom_ops"][0]["op_type"] == "SSDScan"
    assert "| in | `last_ts` | [B, 1] | float64 |" in text


def test_trt_refuses_float64_graph_clearly(saved_tim4rec_causal, tmp_path):
    """TensorRT has no float64: export.trt with the float64 timestamps form (time_input="timestamps"; the CLI's default
    "auto" picks the gaps form) exports + verifies the ONNX graph, then stops with a message naming the float64 tensors
    (before any TensorRT/GPU probing, so the same on every machine); no engine."""
    from export import trt as T

    lines = []
    code, rep = T.run(saved_tim4rec_causal, str(tmp_path), quick=True, time_input="timestamps", say=lines.append)
    text = "\n".join(lines)
    assert code == T.EXIT_ERROR == 1, text
    assert "verification (step, tim4rec_causal): PASSED" in text
    assert "TensorRT has no float64 tensor type" in text and "['timestamps', 'last_ts', 'last_ts_out']" in text
    assert "time-gaps form instead" in text
    assert "[2/4]" not in text and "Traceback" not in text
    rep = json.loads((tmp_path / T.REPORT_FILE).read_text())
    assert rep["exit_code"] == 1 and "float64" in rep["status"] and rep["float64_io"] == ["timestamps", "last_ts",
                                                                                          "last_ts_out"]
    assert rep["onnx"]["verification"]["passed"] is True and rep["time_input"] == "timestamps"
    assert not (tmp_path / T.ENGINE_FILE).exists() and (tmp_path / "model.onnx").exists()


# ----------------------------------------------------------------- TiM4Rec-causal, --time-input gaps (TensorRT-able)
def test_tim4rec_causal_gaps_graph_io(exported):
    """float32 time_gaps in, no last_ts state, no float64 tensor anywhere in the graph (TensorRT has none); the SSDScan
    nodes as plugin_spec says; state_spec.json records the time form, the client-side last_ts and how to compute the
    gaps; the verification fed float32 gaps that float32 rounds (years, milliseconds) from float64 timestamps."""
    model, res = exported("tim4rec_causal" + GAPS)
    mp = onnx.load(res.graph_path)
    _check_ssd_scan_nodes(mp, model)
    names = ["conv_state", "ssm_state", "time_conv_state"]
    assert [i.name for i in mp.graph.input] == ["item_ids", "time_gaps", *names]
    assert [o.name for o in mp.graph.output] == ["topk_ids", "topk_scores", "scores", *[f"{s}_out" for s in names]]
    F, D, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT64
    io = {o.name: o.type.tensor_type.elem_type for o in list(mp.graph.input) + list(mp.graph.output)}
    assert io == {**{n: F for n in io}, "item_ids": I64, "topk_ids": I64}
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in mp.graph.input}
    assert shapes["time_gaps"] == ["B", "T"]
    inferred = onnx.shape_inference.infer_shapes(mp).graph
    assert D not in [v.type.tensor_type.elem_type for v in inferred.value_info]
    assert all(t.data_type != D for t in mp.graph.initializer)
    assert not [n.name for n in mp.graph.node if any(
        (a.name == "to" and a.i == D) or (a.type == onnx.AttributeProto.TENSOR and a.t.data_type == D)
        for a in n.attribute)]
    spec = json.loads(pathlib.Path(res.spec_path).read_text())
    assert spec["time_input"] == "gaps" and spec["uses_timestamps"] is True
    assert [s["name"] for s in spec["state"]] == names and all(s["dtype"] == "float32" for s in spec["state"])
    (client,) = spec["client_state"]
    assert {k: client[k] for k in ("name", "shape", "dtype", "init")} == {"name": "last_ts", "shape": ["B", 1],
                                                                           "dtype": "float64", "init": -1.0}
    assert all(w in spec["time_input_doc"] for w in ("float64", "last_ts", "float32", "gap_0 = ts_0 - last_ts"))
    assert all(e["dtype"] != "float64" for e in spec["inputs"] + spec["outputs"])
    assert {e["name"]: e["dtype"] for e in spec["inputs"]}["time_gaps"] == "float32"
    meta = {p.key: p.value for p in mp.metadata_props}
    assert meta["time_input"] == "gaps" and json.loads(meta["state_spec"]) == spec["state"]
    for c in res.report.cases:
        m = re.search(r"max gap (\d+) days, (\d+) gaps rounded by float32", c.detail)
        assert m and int(m.group(1)) > 365 and int(m.group(2)) > 0, c.detail


def test_tim4rec_causal_gaps_verification_needs_float64_differencing(monkeypatch, tmp_path):
    """Negative control: a client that differences float32-rounded timestamps (64-128 s resolution) fails the
    verification, so it really compares the gaps-form graph with model.step on float64 timestamps."""
    import export.runtime as R

    real = R.time_gaps

    def float32_timestamps(ts, last_ts):
        gaps, new_last = real(ts, last_ts)
        return real(ts.astype(np.float32).astype(np.float64), last_ts)[0], new_last

    monkeypatch.setattr(R, "time_gaps", float32_timestamps)
    with pytest.raises(E.VerificationError, match="score error"):
        E.export_model(make_model("tim4rec_causal"), tmp_path, time_input="gaps",
                       verify_kwargs=dict(prime_len=10, n_steps=10, topk_cases=100))
    assert not (tmp_path / "model.onnx").exists()


def test_tim4rec_causal_gaps_fp16(exported, tmp_path, monkeypatch):
    """fp16 is allowed for the gaps form: time_gaps and log1p(gap / time_unit) stay fp32 (a gap over 65504 s = 18 h is
    inf in float16), the rest fp16; verified under the fp16 row at the acceptance size. Without the fp32 time
    features the verification fails."""
    model, res32 = exported("tim4rec_causal" + GAPS)
    res = E.export_model(model, tmp_path / "fp16", topk=10, with_scores=True, time_input="gaps", precision="fp16")
    rep = res.report
    assert rep.ok and rep.precision == "fp16", rep.table()
    assert rep.cases[1].topk_cases >= 2000 and "prime 200 + 500 single steps" in rep.cases[0].detail
    for c in rep.cases:                                          # really fp16, within the fp16 row
        assert 1e-5 < c.max_abs_err and c.max_rel_err <= V.FP16_SCORE_RTOL and c.state_err <= V.FP16_STATE_ATOL
    mp, mp32 = onnx.load(res.graph_path), onnx.load(res32.graph_path)
    onnx.checker.check_model(mp, full_check=True)
    io = lambda m: [(v.name, v.type.tensor_type.elem_type, str(v.type.tensor_type.shape))  # noqa: E731
                    for v in list(m.graph.input) + list(m.graph.output)]
    assert io(mp) == io(mp32)
    inits = [t for t in mp.graph.initializer]
    assert sum(int(np.prod(t.dims)) for t in inits if t.data_type == onnx.TensorProto.FLOAT16) > \
        sum(int(np.prod(t.dims)) for t in inits if t.data_type == onnx.TensorProto.FLOAT)
    # the raw gaps never meet float16: every node from time_gaps up to the Log is fp32, the Log's output is cast after
    consumers = {}
    for n in mp.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    frontier, island, logs = ["time_gaps"], [], []
    while frontier:
        for n in consumers.get(frontier.pop(), []):
            island.append(n)
            if n.op_type == "Log":
                logs.append(n)
            else:
                frontier.extend(n.output)
    assert [n.op_type for n in island] == ["Clip", "Div", "Add", "Log"], [n.op_type for n in island]
    assert not [n for n in island if n.op_type == "Cast"]
    const = {n.output[0]: n.attribute[0].t.data_type for n in mp.graph.node if n.op_type == "Constant"}
    const.update({t.name: t.data_type for t in inits})
    assert all(const[t] == onnx.TensorProto.FLOAT for n in island for t in n.input if t in const)
    (log,) = logs
    (after,) = consumers[log.output[0]]
    assert after.op_type == "Cast" and after.attribute[0].i == onnx.TensorProto.FLOAT16
    # the timestamps form stays refused; without the fp32 time features the fp16 graph fails verification
    with pytest.raises(E.ExportError, match="--time-input gaps"):
        E.export_model(model, tmp_path / "ts16", precision="fp16")
    monkeypatch.setattr(E, "_time_feature_nodes", lambda nodes: set())
    with pytest.raises(E.VerificationError):
        E.export_model(model, tmp_path / "bad16", time_input="gaps", precision="fp16",
                       verify_kwargs=dict(prime_len=20, n_steps=20, topk_cases=100))


def test_tim4rec_causal_cli_time_input_gaps(saved_tim4rec_causal, saved_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert E.main(["--model", saved_tim4rec_causal, "--out", str(out), "--time-input", "gaps", *FAST]) == 0
    text = capsys.readouterr().out
    assert "verification (step, tim4rec_causal): PASSED" in text and "time input: gaps" in text
    assert "| in | `time_gaps` | [B, T] | float32 |" in text and "`last_ts`" not in text and "float64 |" not in text
    spec = json.loads((out / "state_spec.json").read_text())
    assert spec["time_input"] == "gaps" and spec["client_state"][0]["name"] == "last_ts"
    assert spec["verification"]["passed"] is True
    sess = OnnxStepSession(out)                                      # the default CLI artefact serves timestamps
    o = sess.prime([[1, 2, 3]], timestamps=[[1.6e9, 1.6e9 + 1.5, 1.7e9]])
    assert o.state["last_ts"][0, 0] == 1.7e9 and set(o.state) == {"conv_state", "ssm_state", "time_conv_state",
                                                                   "last_ts"}
    with pytest.raises(SystemExit) as e:             # an option value the model refuses: a usage error (2)
        E.main(["--model", saved_model, "--out", str(tmp_path / "m"), "--time-input", "gaps", *FAST])
    assert e.value.code == 2 and "--time-input gaps: mamba4rec does not read time" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        E.main(["--model", saved_tim4rec_causal, "--out", str(tmp_path / "w"), "--kind", "window",
                "--time-input", "gaps", "--verify-cases", "200"])
    assert e.value.code == 2 and "for step graphs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        E.main(["--model", saved_tim4rec_causal, "--out", str(tmp_path / "x"), "--time-input", "seconds"])


def _trt_without_builder(monkeypatch) -> list[str]:
    """For export.trt runs that must end in the exit-4 report: skip where the builder and a GPU are present; reuse a
    compiled plugin library when there is one (``--plugin-lib``), else make compiling one fail instead of running nvcc
    here (tests/test_trt_plugins.py compiles it)."""
    from export import build_plugins as BP
    from export import trt as T

    if T.probe_environment().can_build:
        pytest.skip("the TensorRT builder and a GPU are present: tests/test_trt_plugins.py builds the engines")
    lib = BP.library_path()
    if lib.is_file():
        return ["--plugin-lib", str(lib)]

    def no_build(*a, **k):
        raise BP.BuildError("not compiled by this test")

    monkeypatch.setattr(BP, "build", no_build)
    return []


def test_trt_takes_gaps_form_of_time_aware_model(saved_tim4rec_causal, tmp_path, capsys, monkeypatch):
    """export.trt picks --time-input gaps for TiM4Rec-causal and goes the normal way: ONNX export + verification, then
    the plugin-library / TensorRT-builder / GPU report and exit 4 (here), as for Mamba4Rec; no float64 refusal."""
    from export import trt as T

    extra = _trt_without_builder(monkeypatch)
    code = T.main(["--model", saved_tim4rec_causal, "--out", str(tmp_path), "--quick", *extra])
    printed = capsys.readouterr()
    text = printed.out + printed.err            # what is missing goes to stderr (where no plugin library was built)
    assert code == T.EXIT_MISSING == 4, text
    assert "--time-input gaps" in text and "float64 tensor type" not in text and "Traceback" not in text
    assert "verification (step, tim4rec_causal): PASSED" in text and "scan nodes: SSDScan x2" in text
    assert "plugin library   :" in text and "[3/4] engine build: NOT POSSIBLE here; missing:" in text
    rep = json.loads((tmp_path / T.REPORT_FILE).read_text())
    assert rep["exit_code"] == 4 and rep["missing"] and "float64_io" not in rep
    assert rep["time_input"] == "gaps" and rep["onnx"]["verification"]["passed"] is True
    assert [n["op_type"] for n in rep["onnx"]["scan_nodes"]] == ["SSDScan", "SSDScan"]
    assert ("plugin_library" in rep) != ("plugin_error" in rep)
    spec = json.loads((tmp_path / "state_spec.json").read_text())
    assert spec["time_input"] == "gaps" and all(e["dtype"] != "float64" for e in spec["inputs"] + spec["outputs"])
    assert not (tmp_path / T.ENGINE_FILE).exists() and (tmp_path / "model.onnx").exists()


def test_topk_agreement_tolerates_only_near_tie_swaps():
    """A swap of two items whose PyTorch scores differ by less than SCORE_ATOL is not a disagreement; a wider swap,
    a wrong item or padding in the list is."""
    import export.verify as V

    ref = np.array([[-np.inf, 0.5, 0.9, 0.9 + V.SCORE_ATOL / 2, 0.1, 0.3]], dtype=np.float32)
    exact = np.array([[3, 2, 1]])
    assert V._rows_agree(exact, ref, 3).tolist() == [True]
    assert V._rows_agree(np.array([[2, 3, 1]]), ref, 3).tolist() == [True]                  # near-tie swap
    assert V._rows_agree(np.array([[3, 1, 2]]), ref, 3).tolist() == [False]                 # 0.9 vs 0.5 swapped
    assert V._rows_agree(np.array([[3, 2, 5]]), ref, 3).tolist() == [False]                 # wrong third item
    assert V._rows_agree(np.array([[3, 2, 0]]), ref, 3).tolist() == [False]                 # padding never agrees
    assert V._rows_agree(np.array([[2, 3, 1], [3, 1, 2]]), np.repeat(ref, 2, 0), 3).mean() == 0.5


@pytest.fixture(scope="module")
def unverified(tmp_path_factory):
    """(model, ExportResult) of a mamba4rec-1l step graph with the scores output, exported without verification."""
    model = make_model("mamba4rec-1l")
    return model, E.export_model(model, tmp_path_factory.mktemp("unverified"), topk=10, with_scores=True, verify=False)


class _Tampered:
    """ONNX Runtime on the exported graph whose outputs ``change(outputs)`` alters (a dict name -> array, changed in
    place) before verification sees them; ``fed`` records the rows of every call."""

    def __init__(self, graph, change=None):
        self.sess, self.change, self.fed = V.scores_session(graph), change, []

    def run(self, names, feeds):
        self.fed.append(len(feeds["item_ids"]))
        out = dict(zip(names, self.sess.run(names, feeds), strict=True))
        if self.change is not None:
            self.change(out)
        return [out[n] for n in names]


VERIFY_FAST = dict(prime_len=8, n_steps=6, topk_cases=40)


def test_verification_fails_on_a_wrong_topk_order_alone(unverified):
    """A graph whose top-k lists put the 2nd item first (scores untouched) fails on the top-k agreement criterion,
    named in the reason; the untampered graph passes the same verification."""
    model, res = unverified
    assert V.verify_export(model, res.graph_path, res.spec, runner=_Tampered(res.graph_path), **VERIFY_FAST).ok

    def swap(out):
        out["topk_ids"][:, [0, 1]] = out["topk_ids"][:, [1, 0]]

    rep = V.verify_export(model, res.graph_path, res.spec, runner=_Tampered(res.graph_path, swap), **VERIFY_FAST)
    assert not rep.ok and "top-k agreement" in rep.worst_message(), rep.table()
    for c in rep.cases:
        assert not c.ok and c.reason.startswith("top-k agreement") and "score error" not in c.reason, rep.table()


def test_verification_measures_the_score_error_of_every_row(unverified):
    """Scores off by 1e-3 (10x SCORE_ATOL) in the last batch row only fail verification with the score error (an
    error measured on row 0 alone passed it); the top-k lists are right, so the reason is the score error alone."""
    model, res = unverified

    def shift_last_row(out):
        out["scores"][-1, 1:] += np.float32(1e-3)

    rep = V.verify_export(model, res.graph_path, res.spec, runner=_Tampered(res.graph_path, shift_last_row),
                          **VERIFY_FAST)
    assert not rep.ok, rep.table()
    for c in rep.cases:
        assert not c.ok and re.fullmatch(r"score error \S+ > 0\.0001", c.reason), rep.table()
        assert c.max_abs_err == pytest.approx(1e-3, rel=1e-2)


def test_topk_case_reports_the_rows_it_compared(unverified):
    """random/topk reports the number of rows whose top-k was compared (the rows fed through the runner in its one
    batch), as a Python int (a numpy count requested through the API was reported as given and broke the report's
    JSON), and not the number of agreeing rows: one disagreeing row of 40 is 97.5% of 40 cases."""
    model, res = unverified
    n = VERIFY_FAST["topk_cases"]

    def swap_row0(out):
        if len(out["topk_ids"]) == n:
            out["topk_ids"][0, [0, 1]] = out["topk_ids"][0, [1, 0]]

    runner = _Tampered(res.graph_path, swap_row0)
    rep = V.verify_export(model, res.graph_path, res.spec, runner=runner, **dict(VERIFY_FAST, topk_cases=np.int64(n)))
    topk = {c.name: c for c in rep.cases}["random/topk"]
    assert runner.fed[-2:] == [n, n]                                      # priming call + the compared step
    assert topk.topk_cases == runner.fed[-1] and type(topk.topk_cases) is int, rep.table()
    assert topk.topk_agreement == pytest.approx(1 - 1 / n) and not topk.ok
    assert f"B={n} " in topk.detail
    assert json.loads(json.dumps(rep.to_dict()))["topk_cases"] == 4 * (1 + VERIFY_FAST["n_steps"]) + n   # B=4 rows


# ------------------------------------------------------------------------------------------- --exclude-seen
SEEN_FAST = dict(prime_len=12, n_steps=20, topk_cases=300)


def _torch_step(model, hist, ts=None):
    with torch.no_grad():
        logits, _ = model.step(torch.from_numpy(hist), model.init_state(len(hist)),
                               None if ts is None else torch.from_numpy(ts))
    return logits.float().numpy()


@pytest.mark.parametrize("name", ALL_STEP_MODELS + ["tim4rec_causal-gaps"])
def test_exclude_seen_step_graph(tmp_path, name):
    """--exclude-seen: the graph's ``seen`` state records every item fed to the row; those items score SEEN_SCORE
    (after every unseen item, before the padding), the other scores are the model's; the export is verified against
    PyTorch's own record of the history."""
    from export.runtime import SEEN_SCORE

    gaps = name.endswith(GAPS)
    model = make_model(name.removesuffix(GAPS))
    res = E.export_model(model, tmp_path, topk=10, with_scores=True, exclude_seen=True,
                         time_input="gaps" if gaps else None, verify_kwargs=SEEN_FAST)
    assert res.report.ok, res.report.table()
    spec = json.loads(pathlib.Path(res.spec_path).read_text())
    assert spec["exclude_seen"] is True and spec["seen_score"] == SEEN_SCORE
    assert spec["state"][-1] == {"name": "seen", "shape": ["B", N_ITEMS], "dtype": "float32", "init": 0.0,
                                 "output": "seen_out", "doc": E.SEEN_DOC}
    model_states = E.split_time_states(model, spec["time_input"])[0]
    assert [s["name"] for s in spec["state"][:-1]] == [s.name for s in model_states]
    mp = onnx.load(res.graph_path)
    assert sum(n.op_type == "ScatterElements" for n in mp.graph.node) == 1
    assert {p.key: p.value for p in mp.metadata_props}["exclude_seen"] == "1"

    sess = OnnxStepSession(tmp_path)
    rng = np.random.default_rng(5)
    hist = rng.integers(1, N_ITEMS, size=(3, 15))
    ts = V._rand_ts(rng, 3, 15) if model.uses_timestamps else None
    out = sess.step(hist[:, :11], sess.init_state(3), None if ts is None else ts[:, :11])
    out = sess.step(hist[:, 11:], out.state, None if ts is None else ts[:, 11:])     # the record spans calls
    ref = _torch_step(model, hist, ts)
    for r in range(3):
        h = sorted(set(hist[r].tolist()))
        want = np.zeros(N_ITEMS, np.float32)
        want[h] = 1.0
        np.testing.assert_array_equal(out.state["seen"][r], want)
        assert not set(h) & set(out.topk_ids[r].tolist())
        assert (out.scores[r, h] == SEEN_SCORE).all() and np.isneginf(out.scores[r, 0])
        other = [i for i in range(1, N_ITEMS) if i not in h]
        np.testing.assert_allclose(out.scores[r, other], ref[r, other], atol=1e-4)
    # fewer unseen items than K: the unseen ones first, then seen items (finite SEEN_SCORE), never the padding
    rest = np.array([[i for i in range(1, N_ITEMS) if i not in (7, 8, 9)]], dtype=np.int64)
    ts1 = V._rand_ts(rng, 1, rest.shape[1]) if model.uses_timestamps else None
    out = sess.step(rest, sess.init_state(1), ts1)
    top = out.topk_ids[0].tolist()
    assert sorted(top[:3]) == [7, 8, 9] and 0 not in top
    assert (out.topk_scores[0, 3:] == SEEN_SCORE).all() and (out.topk_scores[0, :3] > SEEN_SCORE).all()


def test_exclude_seen_verification_catches_a_wrong_record(tmp_path, monkeypatch):
    """A graph whose ``seen`` state records a neighbour of each item instead fails verification (infinite score
    error where the masks differ) and leaves no artefact behind."""
    real = E._mark_seen
    monkeypatch.setattr(E, "_mark_seen", lambda seen, ids: real(seen, torch.clamp(ids - 1, min=1)))
    with pytest.raises(E.VerificationError, match="score error inf"):
        E.export_model(make_model("lrurec"), tmp_path, topk=10, exclude_seen=True, verify_kwargs=SEEN_FAST)
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "state_spec.json").exists()


def test_exclude_seen_window_graph(tmp_path):
    """Window graph: the items of the input window (after truncation to max_seq_length) score SEEN_SCORE."""
    from export.runtime import SEEN_SCORE

    model = make_model("sasrec")
    res = E.export_model(model, tmp_path, topk=10, with_scores=True, exclude_seen=True,
                         verify_kwargs={"topk_cases": 300})
    assert res.report.ok, res.report.table()
    assert res.spec["exclude_seen"] is True and res.spec["state"] == []
    sess = OnnxWindowSession(tmp_path)
    hists = [[1, 2, 3], list(range(1, 50))]                     # the second is cut to its last 30 items (20..49)
    out = sess.recommend(hists)
    ids, mask = model.pad_batch(hists)
    with torch.no_grad():
        ref = model.predict(ids, mask).numpy()
    for r, h in enumerate(hists):
        window = sorted(set(h[-30:]))
        assert not set(window) & set(out.topk_ids[r].tolist())
        assert (out.scores[r, window] == SEEN_SCORE).all() and np.isneginf(out.scores[r, 0])
        other = [i for i in range(1, N_ITEMS) if i not in window]
        np.testing.assert_allclose(out.scores[r, other], ref[r, other], atol=1e-4)
    assert out.scores[1, 5] > SEEN_SCORE                        # item 5 left the window: not excluded


def test_exclude_seen_fp16_and_cli_card(saved_model, tmp_path, capsys):
    """fp16: the mask sits in the fp32 score tail (SEEN_SCORE does not fit float16) and ``seen`` stays exact; the CLI
    flag reaches the spec and the card section; the runtime refuses a ``seen`` state that is not 0/1."""
    from export.runtime import SEEN_SCORE

    res = E.export_model(make_model("lrurec"), tmp_path / "fp16", topk=10, with_scores=True, exclude_seen=True,
                         precision="fp16", verify_kwargs=SEEN_FAST)
    assert res.report.ok and res.report.precision == "fp16", res.report.table()
    sess = OnnxStepSession(tmp_path / "fp16")
    hist = np.array([[3, 9, 27, 41]], dtype=np.int64)
    out = sess.step(hist, sess.init_state(1))
    assert (out.scores[0, hist[0]] == SEEN_SCORE).all() and out.state["seen"][0, hist[0]].tolist() == [1.0] * 4
    assert out.state["seen"].sum() == 4 and not set(hist[0].tolist()) & set(out.topk_ids[0].tolist())
    bad = dict(out.state, seen=out.state["seen"] * 0.5)
    with pytest.raises(ValueError, match="seen.*0 .not seen. or 1"):
        sess.step([[5]], bad)
    card = _card(saved_model, tmp_path)
    assert E.main(["--model", saved_model, "--card-dir", str(card), "--exclude-seen", *FAST]) == 0
    assert "history excluded" in capsys.readouterr().out
    spec = json.loads((card / "onnx" / "state_spec.json").read_text())
    assert spec["exclude_seen"] and spec["state"][-1]["name"] == "seen" and spec["verification"]["passed"]
    readme = (card / "README.md").read_text()
    assert "never ranked above an unseen item" in readme and "`seen_out`" in readme


@pytest.mark.parametrize("flag", ["--exclude-seen", "--user-vector", "--exclude-items"])
def test_trt_exports_flagged_graph(flag, tmp_path, capsys, monkeypatch):
    """export.trt --exclude-seen / --user-vector / --exclude-items FILE: the ONNX step (verified, with the ``seen``
    state / the user vector compared with the item vectors / the excluded items at -inf) is what the engine would be
    built from; here (no builder/GPU) the run ends with the exit-4 report (the engine build itself is a GPU test)."""
    from export import trt as T

    extra = _trt_without_builder(monkeypatch)
    mdir = tmp_path / "lru"
    make_model("lrurec").save_pretrained(mdir)
    (tmp_path / "gone.txt").write_text("# retired\n3\n17\n")
    args = [flag] + ([str(tmp_path / "gone.txt")] if flag == "--exclude-items" else [])
    code = T.main(["--model", str(mdir), "--out", str(tmp_path / "out"), "--quick", *args, *extra])
    text = capsys.readouterr().out
    assert code == T.EXIT_MISSING == 4, text
    assert "verification (step, lrurec): PASSED" in text
    spec = json.loads((tmp_path / "out" / "state_spec.json").read_text())
    if flag == "--exclude-seen":
        assert "history excluded" in text and spec["exclude_seen"] and spec["state"][-1]["name"] == "seen"
    elif flag == "--user-vector":
        assert "user_vector . item vectors compared too" in text and spec["user_vector"]["bias_column"]
        assert "user_vector" in [o["name"] for o in spec["outputs"]]
    else:
        assert spec["excluded_items"] == [3, 17]
        (tmp_path / "gone.txt").write_text("3\n999\n")            # an id the model does not know: a clear error
        code = T.main(["--model", str(mdir), "--out", str(tmp_path / "out2"), "--quick", *args, *extra])
        assert code == T.EXIT_ERROR and "--exclude-items: item index 999 out of range" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- real verification cases
def _toy_inter(path, rows):
    path.write_text("user_id\titem_id\ttimestamp\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
    return str(path)


def test_real_histories_keep_their_timestamps(tmp_path):
    """``load_real_histories(..., with_timestamps=True)``: per user, items mapped through the model's vocabulary
    (unknown ones dropped with their timestamps), in time order, timestamps aligned; a file without timestamps gives
    None."""
    from zoo.vocab import ItemVocab

    model = make_model("lrurec")
    model.set_item_vocab(ItemVocab([100 + i for i in range(1, N_ITEMS)]))      # external 101.. -> internal 1..
    rows = [(1, 103, 50.0), (1, 999, 60.0), (1, 101, 70.0), (1, 102, 70.0),     # 999 is unknown
            (2, 105, 10.0), (2, 104, 5.0),                                      # out of time order in the file
            (3, 106, 1.0)]                                                      # one item: not a history
    hist, ts = E.load_real_histories(_toy_inter(tmp_path / "t.inter", rows), model, with_timestamps=True)
    assert hist == [[3, 1, 2], [4, 5]] and ts == [[50.0, 70.0, 70.0], [5.0, 10.0]]
    assert E.load_real_histories(str(tmp_path / "t.inter"), model) == hist       # the old return value
    (tmp_path / "s.seq").write_text("user_id\titem_ids_chronological\n1\t101 102 103\n2\t104 105\n")
    assert E.load_real_histories(str(tmp_path / "s.seq"), model, with_timestamps=True) == ([[1, 2, 3], [4, 5]], None)


def test_time_aware_graph_verified_on_real_timestamps(saved_tim4rec_causal, tmp_path, capsys):
    """``export.onnx --data FILE`` with timestamps: the time-aware graph's real cases run on the file's own
    timestamps (same-second events, long gaps), not synthetic ones; misaligned timestamps are refused."""
    rng = np.random.default_rng(7)
    rows = []
    for u in range(1, 9):
        t = 9.7e8 + u * 1e5
        for _j in range(40):
            t += float(rng.choice([0, 0, 1, 30, 3600, 86400 * 40]))           # ties and gaps of weeks
            rows.append((u, int(rng.integers(1, N_ITEMS)), t))
    data = _toy_inter(tmp_path / "tc.inter", rows)
    assert E.main(["--model", saved_tim4rec_causal, "--out", str(tmp_path / "g"), "--data", data, *FAST]) == 0
    text = capsys.readouterr().out
    assert "8 real histories from" in text and "with their timestamps" in text
    spec = json.loads((tmp_path / "g" / "state_spec.json").read_text())
    real = next(c for c in spec["verification"]["cases"] if c["name"] == "real/prime+steps")
    assert "real timestamps" in real["detail"] and real["ok"]
    rand = next(c for c in spec["verification"]["cases"] if c["name"] == "random/prime+steps")
    assert "real timestamps" not in rand["detail"]
    model = make_model("tim4rec_causal")
    hist, ts = E.load_real_histories(data, model, with_timestamps=True)
    with pytest.raises(ValueError, match="real history 0: 40 items but 39 timestamps"):
        E.export_model(model, tmp_path / "bad", real_histories=hist, real_timestamps=[t[:-1] for t in ts],
                       verify_kwargs=dict(prime_len=10, n_steps=10, topk_cases=50))
    assert not (tmp_path / "bad" / "model.onnx").exists()
    with pytest.raises(ValueError, match="non-decreasing"):
        E.export_model(model, tmp_path / "bad2", real_histories=hist, real_timestamps=[t[::-1] for t in ts],
                       verify_kwargs=dict(prime_len=10, n_steps=10, topk_cases=50))


# ----------------------------------------------------------------------- mutation-audit additions (export/onnx.py)
def _random_scan_feeds(op, T: int, seed: int) -> dict:
    """Random inputs of the scan op ``op`` with ``T`` events, shaped as plugin_spec declares (A, lam stable)."""
    dims = {"B": 2, "E": 3, "N": 4, "T": T, "H": 4, "P": 3, "G": 2}
    rng = np.random.default_rng(seed)
    feeds = {t.name: rng.standard_normal([dims[d] for d in t.shape.split(",")]).astype(np.float32) for t in op.inputs}
    for name in ("A", "lam_re", "lam_im"):
        if name in feeds:
            feeds[name] = (-np.abs(feeds[name]) if name == "A" else feeds[name] * 0.5).astype(np.float32)
    return feeds


SCAN_FUNCTION_CASES = [(ps.SELECTIVE_SCAN, E.selective_scan_function), (ps.LRU_SCAN, E.lru_scan_function),
                       (ps.SSD_SCAN, E.ssd_scan_function)]


@pytest.mark.parametrize("op,make_function", SCAN_FUNCTION_CASES, ids=["SelectiveScan", "LRUScan", "SSDScan"])
def test_scan_functions_serve_one_event_without_the_scan(op, make_function):
    """A one-event call (T == 1, the serving case) takes the closed-form branch, not the ONNX ``Scan`` (whose per-call
    set-up the branch exists to avoid): with the Scan branch's outputs negated, T == 1 is unchanged and T == 3 is not.
    Both branches compute the same numbers, so the oracle tests above cannot tell whether the T == 1 branch is ever
    taken."""
    fn = make_function()
    sabotaged = onnx.FunctionProto.FromString(fn.SerializeToString())
    (branch_if,) = [n for n in sabotaged.node if n.op_type == "If" and any(
        m.op_type == "Scan" for a in n.attribute if a.name == "else_branch" for m in a.g.node)]
    else_branch = next(a.g for a in branch_if.attribute if a.name == "else_branch")
    (scan,) = else_branch.node
    for o in else_branch.output:                                   # the Scan branch now returns -(its result)
        scan.output[list(scan.output).index(o.name)] = o.name + "_raw"
        else_branch.node.append(onnx.helper.make_node("Neg", [o.name + "_raw"], [o.name]))
    real, bad = _ort(_function_model(op, fn)), _ort(_function_model(op, sabotaged))
    one = _random_scan_feeds(op, 1, seed=11)
    for a, b, name in zip(real.run(None, one), bad.run(None, one), op.output_names, strict=True):
        np.testing.assert_array_equal(b, a, err_msg=f"{op.op_type} output {name}: T == 1 ran the Scan branch")
    three = _random_scan_feeds(op, 3, seed=12)
    assert not np.allclose(real.run(None, three)[0], bad.run(None, three)[0]), "the sabotage must reach T > 1 calls"


@pytest.mark.parametrize("op,make_function,attr", [(ps.SELECTIVE_SCAN, E.selective_scan_function, "delta_softplus"),
                                                   (ps.SSD_SCAN, E.ssd_scan_function, "dt_softplus")],
                         ids=["SelectiveScan", "SSDScan"])
def test_scan_function_softplus_default_is_plugin_spec_default(op, make_function, attr):
    """A node without the softplus attribute gets the function's default, which must be plugin_spec's (1, what the
    plugin does): the same outputs as with ``attr=1`` and not those of ``attr=0``."""
    want = op.attributes[attr][1]
    fn = make_function()
    (default,) = fn.attribute_proto
    assert (default.name, default.i) == (attr, want), \
        f"{op.op_type} function default {default.name}={default.i}, plugin_spec says {want}"
    without = _function_model(op, fn)
    node = without.graph.node[0]
    kept = [a for a in node.attribute if a.name != attr]
    del node.attribute[:]
    node.attribute.extend(kept)
    feeds = _random_scan_feeds(op, 2, seed=13)
    got = _ort(without).run(None, feeds)[0]
    np.testing.assert_allclose(got, _ort(_function_model(op, fn, **{attr: want})).run(None, feeds)[0], rtol=1e-6,
                               err_msg=f"{op.op_type} without {attr}: not the default {want}")
    assert not np.allclose(got, _ort(_function_model(op, fn, **{attr: 1 - want})).run(None, feeds)[0])


def test_time_input_has_the_item_ids_length():
    """``timestamps`` is declared with the length axis of ``item_ids``: ``[B, T]`` in a step graph, ``[B, L]`` in a
    window graph (one timestamp per window slot), so the I/O table and the graph tie the two lengths together."""
    model = make_model("tim4rec_causal")
    for kind, axis in (("step", "T"), ("window", "L")):
        ins = {e["name"]: e for e in E.build_spec(model, kind, 5, False)["inputs"]}
        assert ins["item_ids"]["shape"] == ins["timestamps"]["shape"] == ["B", axis], (kind, ins["timestamps"])


def test_resolve_time_input_refuses_an_unknown_form():
    """An unknown ``time_input`` is named as such (for models with and without time), not taken for a third form."""
    for name in ("tim4rec_causal", "lrurec"):
        with pytest.raises(E.ExportError, match=r"time_input must be one of timestamps, gaps, got 'seconds'"):
            E.resolve_time_input(make_model(name), "step", "seconds")


def test_graph_declares_the_scores_width_and_its_kind(exported):
    """``scores`` is ``[B, n_items]`` with the number, in state_spec.json and in the graph; the graph's doc string and
    metadata name its kind (a window graph is not called a step graph)."""
    _, res = exported("lrurec")
    spec = json.loads(pathlib.Path(res.spec_path).read_text())
    assert {e["name"]: e["shape"] for e in spec["outputs"]}["scores"] == ["B", N_ITEMS]
    mp = onnx.load(res.graph_path)
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in mp.graph.output}
    assert dims["scores"] == ["B", N_ITEMS] and dims["topk_ids"] == dims["topk_scores"] == ["B", 10], dims
    assert mp.doc_string == "lrurec step graph; I/O table in state_spec.json", mp.doc_string
    win, _ = E.trace_graph(make_model("sasrec"), "window", 4)
    assert win.doc_string == "sasrec window graph; I/O table in state_spec.json", win.doc_string
    assert {p.key: p.value for p in win.metadata_props}["kind"] == "window"


def test_fp16_state_paths_stay_fp32(exported_fp16):
    """fp16 graphs carry the recurrent state in fp32 from end to end: no state output and no scan state input comes
    out of a converter Cast (it would mean the tensor was fp16 before), and every Cast on the data-movement path up
    from them casts to float32, so the state never round-trips through float16 (which the fp16 score tolerance alone
    does not notice)."""
    F = onnx.TensorProto.FLOAT
    for name in ("mamba4rec-1l", "lrurec"):
        _, res = exported_fp16(name)
        mp = onnx.load(res.graph_path)
        prod = _producer_map(mp)
        ends = [s["output"] for s in res.spec["state"]]
        for n in (x for x in mp.graph.node if x.domain == ps.ONNX_DOMAIN):
            ends += [t for spec_t, t in zip(ps.SCAN_OPS[n.op_type].inputs, n.input, strict=True)
                     if spec_t.name.startswith("h0")]
        assert len(ends) > len(res.spec["state"]), ends
        for end in ends:
            assert not prod[end].name.startswith("fp16/"), f"{name}: {end} comes out of {prod[end].name}"
            todo = [end]
            while todo:                          # up the state path (data-movement nodes only)
                n = prod.get(todo.pop())
                if n is None or n.op_type not in E._MOVE_OPS:
                    continue
                if n.op_type == "Cast":
                    assert n.attribute[0].i == F, f"{name}: {n.name} on the path of {end} casts to float16"
                    if n.name.startswith("fp16/"):   # an fp16 activation entering the state path in fp32
                        continue
                todo += [t for t in n.input if t]


def test_fp16_check_refuses_a_graph_whose_weights_stayed_fp32(exported):
    """``_check_fp16_graph`` (the last step of ``convert_to_fp16``) refuses a graph whose weights are mostly fp32."""
    _, res = exported("lrurec")
    with pytest.raises(E.ExportError, match=r"fp16: only 0 of \d+ float weights were converted to float16"):
        E._check_fp16_graph(onnx.load(res.graph_path), res.spec)


def test_io_table_and_card_section_text():
    """The I/O table marks outputs "out"; the card section prints the verification's top-k agreement in percent."""
    spec = E.build_spec(make_model("lrurec"), "step", 5, True)
    table = E.io_table_markdown(spec)
    assert "| in | `item_ids` | [B, T] | int64 |" in table and "| in | `lru_state_re` |" in table
    for o in ("topk_ids", "topk_scores", "scores", "lru_state_re_out", "lru_state_im_out"):
        assert f"| out | `{o}` |" in table, (o, table)
    spec["verification"] = {"max_abs_err": 3e-6, "topk_agreement": 0.9995, "topk_cases": 2000, "cases": []}
    sec = E.card_section(spec, "onnx")
    assert "top-5 agreement 99.95% (2000 cases)" in sec and "max abs score error 3.00e-06" in sec, sec


def test_card_section_is_replaced_in_place(tmp_path):
    """Writing the section again replaces it between its markers: one begin and one end marker, the text around it
    kept, however often it is written."""
    spec = E.build_spec(make_model("lrurec"), "step", 5, False)
    (tmp_path / "README.md").write_text("# card\n\nintro\n")
    E.write_card_section(tmp_path, spec, "onnx")
    text = (tmp_path / "README.md").read_text() + "\n## After\n\nkept\n"
    (tmp_path / "README.md").write_text(text)
    for _ in range(3):
        E.write_card_section(tmp_path, spec, "onnx")
        assert (tmp_path / "README.md").read_text() == text
    assert text.count(E.CARD_BEGIN) == text.count(E.CARD_END) == 1


def test_card_section_is_written_whole(tmp_path, monkeypatch):
    """The card's README was written in place by export.onnx --card-dir: a full disk or a kill left it cut short.
    It is written beside and renamed into place now: the README stays as it was, and nothing is left beside it."""
    spec = E.build_spec(make_model("lrurec"), "step", 5, False)
    (tmp_path / "README.md").write_text("# card\n\nintro\n")
    full_disk(monkeypatch, "README.md")
    with pytest.raises(OSError, match="No space left on device"):
        E.write_card_section(tmp_path, spec, "onnx")
    monkeypatch.undo()
    assert (tmp_path / "README.md").read_text() == "# card\n\nintro\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


def test_real_histories_of_a_file_sorted_by_time(tmp_path):
    """A file sorted by time interleaves its users: each user's rows are gathered wherever they stand (users in the
    order of their first row), not sliced between first rows (which gave user 1 nothing and user 2 everyone's items)."""
    rows = [(1, 11, 1.0), (2, 21, 2.0), (1, 12, 3.0), (2, 22, 4.0), (1, 13, 5.0), (2, 23, 6.0)]
    model = make_model("lrurec")
    hist, ts = E.load_real_histories(_toy_inter(tmp_path / "t.inter", rows), model, with_timestamps=True)
    assert (hist, ts) == ([[11, 12, 13], [21, 22, 23]], [[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]])


def test_real_histories_refuse_ids_of_another_kind(tmp_path):
    """A model whose vocabulary holds int ids, given a file of string ids: an error naming the mismatch (it used to
    drop every item as "unknown" and verify on no real history; the CLI turns it into a usage error)."""
    from zoo.vocab import ItemVocab

    model = make_model("lrurec")
    model.set_item_vocab(ItemVocab([100 + i for i in range(1, N_ITEMS)]))
    path = tmp_path / "s.seq"
    path.write_text("user_id\titem_ids_chronological\n1\tB01 B02 B03\n")
    with pytest.raises(TypeError, match="not an int id; this vocabulary holds int ids"):
        E.load_real_histories(str(path), model)


def test_real_histories_stop_at_max_users(tmp_path):
    """``max_users`` caps the number of histories (the first users of the file)."""
    rows = [(u, i, float(10 * u + i)) for u in range(1, 6) for i in (1, 2, 3)]
    path = _toy_inter(tmp_path / "t.inter", rows)
    model = make_model("lrurec")
    assert E.load_real_histories(path, model, max_users=2) == [[1, 2, 3], [1, 2, 3]]
    assert len(E.load_real_histories(path, model)) == 5


def test_cli_topk_scores_and_no_verify_reach_the_export(saved_model, tmp_path, capsys):
    """--topk K, --scores and --no-verify each change the artefact: K-wide top-k outputs, a scores output, no
    verification record (and no verification run)."""
    out = tmp_path / "out"
    assert E.main(["--model", saved_model, "--out", str(out), "--topk", "3", "--scores", "--no-verify"]) == 0
    text = capsys.readouterr().out
    assert "verifying" not in text and "PASSED" not in text, text
    spec = json.loads((out / "state_spec.json").read_text())
    assert spec["topk"] == 3 and "verification" not in spec
    assert [e["name"] for e in spec["outputs"]][:3] == ["topk_ids", "topk_scores", "scores"]
    sess = OnnxStepSession(out)
    got = sess.step([[1], [2]], sess.init_state(2))
    assert got.topk_ids.shape == (2, 3) and got.scores.shape == (2, N_ITEMS)


def test_cli_card_dir_of_a_window_model(tmp_path, capsys):
    """--card-dir with a model without an exact step writes the window graph into CARD/onnx-window/, and the card
    section names that folder and OnnxWindowSession."""
    card = tmp_path / "card"
    make_model("sasrec").save_pretrained(card)
    (card / "README.md").write_text("# sasrec\n")
    assert E.main(["--model", str(card), "--card-dir", str(card), "--topk", "4", "--no-verify"]) == 0
    capsys.readouterr()
    assert (card / "onnx-window" / "model.onnx").is_file() and not (card / "onnx").exists()
    readme = (card / "README.md").read_text()
    assert "`onnx-window/model.onnx` is a **history-window** graph" in readme
    assert 'OnnxWindowSession("onnx-window")' in readme



@pytest.mark.parametrize("planted", ["README.md", "onnx", "onnx/model.onnx"])
def test_card_dir_refuses_a_link_in_the_card_leading_outside_it(saved_model, tmp_path, capsys, planted):
    """QA (untrusted artifacts, 8): --card-dir wrote through symbolic links planted in a card folder from someone else
    -- README.md -> a file outside got the card section, onnx/ -> a folder outside got the graph, spec and vocabulary
    (an earlier model.onnx there replaced). Such a link (on README.md, the subfolder or a file the export writes there)
    is refused now before anything is written: exit 1, one line naming the link and its target, the card and what
    the link leads to as they were."""
    card = _card(saved_model, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "README.md").write_text("someone's file\n")
    (outside / "model.onnx").write_text("someone's graph\n")
    if planted == "onnx/model.onnx":
        (card / "onnx").mkdir()
    link = card / planted
    link.unlink(missing_ok=True)
    link.symlink_to({"README.md": outside / "README.md", "onnx": outside, "onnx/model.onnx": outside / "model.onnx"}[
        planted])
    before, theirs = _bytes(card), _bytes(outside)
    with pytest.raises(SystemExit) as e:
        E.main(["--model", saved_model, "--card-dir", str(card), "--no-verify"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: --card-dir {card}: {link} is a symbolic link to {os.path.realpath(link)}, "
                          f"outside {card}; "), err
    assert _bytes(card) == before and _bytes(outside) == theirs and link.is_symlink()


def test_card_dir_writes_through_a_link_that_stays_inside_the_card(saved_model, tmp_path, capsys):
    """The rule is about links leading outside the card: a README.md (or an onnx/) that is a link to a file (folder)
    inside the card is written through, as before; write_card_section itself refuses a README.md leading outside,
    reading nothing through it (its text would end up in the card)."""
    card = _card(saved_model, tmp_path)
    (card / "docs").mkdir()
    (card / "graphs").mkdir()
    os.replace(card / "README.md", card / "docs" / "README.md")
    (card / "README.md").symlink_to("docs/README.md")
    (card / "onnx").symlink_to(card / "graphs")
    assert E.main(["--model", saved_model, "--card-dir", str(card), "--no-verify"]) == 0
    capsys.readouterr()
    assert (card / "README.md").is_symlink() and "## ONNX export" in (card / "docs" / "README.md").read_text()
    assert (card / "onnx").is_symlink() and (card / "graphs" / "model.onnx").is_file()
    secret = tmp_path / "secret.md"
    secret.write_text("private\n")
    (card / "README.md").unlink()
    (card / "README.md").symlink_to(secret)
    spec = json.loads((card / "graphs" / "state_spec.json").read_text())
    with pytest.raises(ValueError, match=f"README.md is a symbolic link to {secret}, outside {card}"):  # zoo.cli's
        E.write_card_section(card, spec, "onnx")
    assert secret.read_text() == "private\n"


# ------------------------------------------------------------------------ audit round 6 (F): verify / runtime
def test_score_error_is_infinite_for_a_mask_differing_either_way():
    """_errs: a graph that masks an item the reference does not (an extra SEEN_SCORE) gets an infinite error, as does
    one that leaves a reference-masked item unmasked (a one-sided mask comparison passed the first as a finite error);
    equal masks leave those items out of the error and of the score scale; column 0 (padding) is never compared."""
    S = V.SEEN_SCORE
    ref = np.array([[-np.inf, 0.5, S, 0.25]], dtype=np.float32)
    a, r = V._errs(np.array([[7.0, 0.5, S, 0.25 + 1e-3]], dtype=np.float32), ref)
    assert a == pytest.approx(1e-3, rel=1e-4) and r == pytest.approx(2e-3, rel=1e-4)      # scale 0.5, not |S|
    assert V._errs(np.array([[-np.inf, 0.5, S, S]], dtype=np.float32), ref) == (float("inf"), float("inf"))
    assert V._errs(np.array([[-np.inf, 0.5, 0.3, 0.25]], dtype=np.float32), ref) == (float("inf"), float("inf"))
    assert V._errs(np.array([[-np.inf, np.nan, S, 0.25]], dtype=np.float32), ref) == (float("inf"), float("inf"))


def test_report_fails_on_one_failed_case_and_names_it_as_worst():
    """A report with one passing and one failing case is FAILED (not passed as soon as any case passes); its worst case
    is the failing one even when a passing case has the larger score error; to_dict gives the lowest agreement, the
    largest errors and the total count."""
    good = V._judge(V.CaseResult("a", 5e-5, 1e-4, 1.0, 10, 2e-4), V.SCORE_ATOL, V.TOPK_MIN_AGREEMENT, V.STATE_ATOL)
    bad = V._judge(V.CaseResult("b", 1e-5, 2e-5, 0.5, 10, None), V.SCORE_ATOL, V.TOPK_MIN_AGREEMENT, V.STATE_ATOL)
    assert good.ok and not bad.ok and bad.reason == "top-k agreement 50.000% < 99.9%"
    rep = V.VerifyReport("step", "m", [good, bad])
    assert not rep.ok and rep.worst is bad
    assert rep.worst_message().startswith("worst case 'b': top-k agreement 50.000% < 99.9% (max abs err 1.000e-05")
    d = rep.to_dict()
    assert (d["passed"], d["topk_agreement"], d["max_abs_err"], d["max_rel_err"], d["topk_cases"], d["state_err"]) == (
        False, 0.5, 5e-5, 1e-4, 20, 2e-4)
    assert "FAILED" in rep.table() and "<-- FAIL: top-k agreement" in rep.table()
    assert V.VerifyReport("step", "m", [good, good]).ok and V.VerifyReport("step", "m", [good]).worst is good


def test_explicit_tolerances_override_the_precision_defaults(unverified):
    """verify_export(score_atol=...) replaces the fp32 default (an explicit tolerance that was ignored failed a graph
    the caller had allowed 1e-2): scores off by 1e-3 pass at 1e-2 and fail at 5e-4."""
    model, res = unverified

    def shift(out):
        out["scores"][:, 1:] += np.float32(1e-3)

    rep = V.verify_export(model, res.graph_path, res.spec, runner=_Tampered(res.graph_path, shift), score_atol=1e-2,
                          **VERIFY_FAST)
    assert rep.ok and rep.score_atol == 1e-2 and "tolerance 0.01 abs" in rep.table(), rep.table()
    rep = V.verify_export(model, res.graph_path, res.spec, runner=_Tampered(res.graph_path, shift), score_atol=5e-4,
                          **VERIFY_FAST)
    assert not rep.ok and all(re.fullmatch(r"score error \S+ > 0\.0005", c.reason) for c in rep.cases), rep.table()


class _TamperPriming(_Tampered):
    """Shifts the scores of every call with more than one item per row (the priming calls) only."""

    def run(self, names, feeds):
        self.change = self.shift if feeds["item_ids"].shape[1] > 1 else None
        return super().run(names, feeds)

    @staticmethod
    def shift(out):
        out["scores"][:, 1:] += np.float32(1e-3)


def test_verification_keeps_the_worst_error_of_every_call(unverified):
    """Scores off by 1e-3 only in the answer to the priming call fail random/prime+steps with the error found after
    priming (an accumulator that kept the last call's error, or a priming answer never compared, passed it);
    random/topk compares its single step only, so its priming call does not count."""
    model, res = unverified
    rep = V.verify_export(model, res.graph_path, res.spec, runner=_TamperPriming(res.graph_path), **VERIFY_FAST)
    cases = {c.name: c for c in rep.cases}
    ps_ = cases["random/prime+steps"]
    assert not ps_.ok and ps_.max_abs_err == pytest.approx(1e-3, rel=1e-2), rep.table()
    assert "worst at after priming with 8 items" in ps_.detail
    assert cases["random/topk"].ok and cases["random/topk"].max_abs_err < V.SCORE_ATOL, rep.table()


def test_real_timestamps_are_checked_against_their_histories():
    """_check_real_timestamps: equal timestamps (several events in one second) are fine; a row with more or fewer
    timestamps than items, a count of rows that differs, decreasing or non-finite timestamps are refused, naming the
    row."""
    h = [[1, 2, 3], [4, 5]]
    ts = [[5.0, 5.0, 6.0], [1.0, 1.0]]
    assert V._check_real_timestamps(h, ts) is ts and V._check_real_timestamps(h, None) is None
    with pytest.raises(ValueError, match=r"^real history 1: 2 items but 3 timestamps$"):
        V._check_real_timestamps(h, [ts[0], [1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match=r"^real history 1: 2 items but 1 timestamps$"):
        V._check_real_timestamps(h, [ts[0], [1.0]])
    with pytest.raises(ValueError, match=r"^real_timestamps has 1 rows, real_histories 2$"):
        V._check_real_timestamps(h, ts[:1])
    for bad in ([5.0, 4.0, 6.0], [5.0, np.nan, 6.0], [5.0, 6.0, np.inf]):
        with pytest.raises(ValueError, match=r"^real history 0: timestamps must be finite and non-decreasing$"):
            V._check_real_timestamps(h, [bad, ts[1]])


@pytest.fixture(scope="module")
def audit_graphs(tmp_path_factory):
    """Unverified exports: lrurec --exclude-seen (a ``seen`` state), tim4rec_causal --time-input gaps, sasrec window."""
    out = {}
    for key, name, kw in (("seen", "lrurec", dict(exclude_seen=True)),
                          ("gaps", "tim4rec_causal", dict(time_input="gaps")),
                          ("window", "sasrec", dict(with_scores=True))):
        d = tmp_path_factory.mktemp(f"audit_{key}")
        model = make_model(name)
        out[key] = (model, d, E.export_model(model, d, topk=10, verify=False, **kw))
    return out


def test_verify_window_feeds_every_default_width(audit_graphs):
    """verify_window's default widths are max_seq_length, half of it and 7 (a window graph never verified at its full
    width passed with the full width untested)."""
    model, _, res = audit_graphs["window"]
    runner = V.scores_session(res.graph_path)
    widths = []

    class Rec:
        def run(self, names, feeds):
            widths.append(feeds["item_ids"].shape[1])
            return runner.run(names, feeds)

    cases = V.verify_window(model, res.graph_path, res.spec, topk_cases=30, runner=Rec())
    assert sorted(set(widths)) == [7, 15, 30] and cases[0].topk_cases == 30


def test_runtime_refuses_a_state_that_is_not_finite_or_not_a_seen_mask(audit_graphs):
    """check_state: a NaN/inf state tensor and a ``seen`` state holding anything but 0/1 are refused, naming the
    tensor (ONNX Runtime ran them into NaN scores / a fractional mask without a word)."""
    _, d, _ = audit_graphs["seen"]
    sess = OnnxStepSession(d)
    st = sess.init_state(2)
    assert set(st) == {"lru_state_re", "lru_state_im", "seen"} and st["seen"].shape == (2, N_ITEMS)
    for bad in (np.nan, np.inf):
        spoilt = st["lru_state_im"].copy()
        spoilt[1, ...] = bad
        with pytest.raises(ValueError, match=r"^state\['lru_state_im'\] holds NaN or infinite values$"):
            sess.step([[1], [2]], dict(st, lru_state_im=spoilt))
    half = st["seen"].copy()
    half[0, 5] = 0.5
    with pytest.raises(ValueError, match=r"^state\['seen'\] must hold 0 \(not seen\) or 1 \(seen\) per item$"):
        sess.step([[1], [2]], dict(st, seen=half))
    out = sess.step([[1], [2]], dict(st, seen=np.where(np.arange(N_ITEMS) == 5, 1, 0).astype(np.float32)[None]
                                     .repeat(2, 0)))
    assert 5 not in out.topk_ids and out.state["seen"][0, [1, 5]].tolist() == [1.0, 1.0]


def test_runtime_gaps_graph_refuses_negative_timestamps_and_float32_overflow(audit_graphs):
    """Gaps-form graph: negative timestamps are refused (with last_ts = -1 they ran, gap 0), and so are gaps that do
    not fit float32 (a 1e39 s gap reached the graph as inf; such a timestamp is now refused as milliseconds-like
    before the gaps are taken, as model.step refuses it); last_ts = 0 is an event at the epoch, not 'none yet'."""
    _, d, _ = audit_graphs["gaps"]
    sess = OnnxStepSession(d)
    assert sess.time_input == "gaps"
    st = sess.init_state(2)
    assert st["last_ts"].tolist() == [[-1.0], [-1.0]]
    with pytest.raises(ValueError, match=r"^timestamps must be finite and non-negative$"):
        sess.step([[1], [2]], st, timestamps=[[-5.0], [1.0]])
    with pytest.raises(ValueError, match=r"^timestamps reach 1e\+39 s, beyond 1e\+11 s \(the year ~5000\): they look "
                                         r"like milliseconds or nanoseconds since the epoch; pass Unix seconds$"):
        sess.step([[1, 2], [3, 4]], st, timestamps=[[0.0, 1e39], [1.0, 2.0]])
    from export.runtime import time_gaps

    gaps, last = time_gaps(np.array([[10.0, 15.0], [10.0, 15.0]]), np.array([[0.0], [-1.0]]))
    assert gaps.tolist() == [[10.0, 5.0], [0.0, 5.0]] and last.tolist() == [[15.0], [15.0]]


def test_runtime_window_checks_length_and_empty_rows(audit_graphs):
    """run_window: a window longer than max_seq_length and a batch row of padding only are refused (each reached the
    graph); a row padded on the wrong side is refused naming it."""
    _, d, res = audit_graphs["window"]
    sess = OnnxWindowSession(d)
    side = res.spec["padding_side"]
    with pytest.raises(ValueError, match=r"^window length 31 exceeds max_seq_length 30$"):
        sess.run_window(np.ones((1, 31), dtype=np.int64))
    with pytest.raises(ValueError, match=r"^batch row 1 has no real item$"):
        sess.run_window(np.array([[1, 2], [0, 0]]))
    wrong = [[0, 3], [4, 5]] if side == "right" else [[3, 0], [4, 5]]
    with pytest.raises(ValueError, match=rf"^batch row 0 is not {side}-padded$"):
        sess.run_window(np.array(wrong))
    assert sess.run_window(np.ones((2, 30), dtype=np.int64)).topk_ids.shape == (2, 10)


def test_runtime_spec_refuses_a_bool_topk(tmp_path):
    """read_spec: ``topk: true`` (a bool, which isinstance(..., int) accepts) is refused like any non-int."""
    from export.runtime import read_spec

    base = {"kind": "step", "model_type": "m", "n_items": 5, "max_seq_length": 3, "topk": 2, "inputs": [],
            "outputs": [], "state": []}
    p = tmp_path / "state_spec.json"
    p.write_text(json.dumps(base))
    assert read_spec(p)["topk"] == 2
    for k, v in (("topk", True), ("n_items", True), ("topk", 0), ("topk", 2.0)):
        p.write_text(json.dumps(dict(base, **{k: v})))
        lo = 2 if k == "n_items" else 1
        with pytest.raises(ValueError, match=rf"{k} must be an int >= {lo}, got {v!r}"):
            read_spec(p)
