"""A model replaced on the server is noticed by the clients that read the old one (session 46, QA h_roll).

``python -m export.triton`` over an existing model folder wrote the new graph into the same version folder ``1/``, and
the clients of :mod:`export.triton_client` read the vocabulary, ``n_items`` and the state fingerprint once: after
Triton reloaded the folder, a long-lived client fed the old model's states to the new weights (storing the results
under the old fingerprint) and translated ids with the old vocabulary. Now a regeneration writes the next version
(``N+1/``, keeping ``N/``; the config serves the latest only) and every client pins the version it read: after a
reload its calls raise :class:`export.triton_client.ModelReplacedError` and store nothing. Also: a ``vocab=`` of
another size than the config's ``n_items`` is refused at construction, and the step-state fingerprint covers the
item vocabulary (the same weights under another vocabulary refuse old states).

The server is a stand-in for Triton in poll mode (:class:`RepoServer`): every call reads the repository folder as it
is on disk at that moment and serves only its highest version folder (the configs' ``version_policy``), running the
graph with ONNX Runtime.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_models import TINY  # noqa: E402
from triton_fakes import FakeResult, sent_arrays  # noqa: E402

from export import triton as T  # noqa: E402

pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
ort = pytest.importorskip("onnxruntime")

ITEMS = [f"i{k}" for k in range(1, 12)]                 # 11 items: n_items 12


def _model(model_type: str, seed: int, items, grow=()):
    from zoo.models import MODELS
    from zoo.vocab import ItemVocab

    cfg_cls, m_cls = MODELS[model_type]
    torch.manual_seed(seed)
    m = m_cls(cfg_cls(n_items=len(items) + 1, max_seq_length=6, **TINY[model_type])).eval()
    m.set_item_vocab(ItemVocab(list(items)))
    if grow:
        m.add_items(list(grow))
    return m


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Export folders (graph, spec, item_vocab.json) of tiny models: ``a`` a GRU4Rec step model, ``b`` it retrained
    (another seed), ``g`` ``a`` with two items added, ``d`` ``a``'s weights under the reversed vocabulary; ``wa`` a
    SASRec window model and ``wg`` it with one item added."""
    from export.onnx import export_model

    root = tmp_path_factory.mktemp("rollover")
    models = {"a": _model("gru4rec", 0, ITEMS), "b": _model("gru4rec", 1, ITEMS),
              "g": _model("gru4rec", 0, ITEMS, grow=["i12", "i13"]), "d": _model("gru4rec", 0, ITEMS[::-1]),
              "wa": _model("sasrec", 0, ITEMS), "wg": _model("sasrec", 0, ITEMS, grow=["i12"])}
    out = {}
    for name, m in models.items():
        d = root / name
        export_model(m, d, topk=5, verify=False)
        m.item_vocab.save(str(d))
        out[name] = d
    out["models"] = models
    return out


def _write(export_dir, repo, name="m", **kw):
    return T.write_repository(export_dir, repo, name=name, vocab_path=str(export_dir / "item_vocab.json"), **kw)


class RepoServer:
    """Triton in poll mode, for one repository folder: each call reads ``<repo>/<model>/config.pbtxt`` and runs the
    highest version folder's ``model.onnx`` (what ``version_policy: { latest: { num_versions: 1 } }`` serves). The
    metadata lists that version; a call pinned to another version is refused as Triton refuses it; an answer says
    which version gave it (``get_response()["model_version"]``)."""

    def __init__(self, repo):
        self.repo = repo
        self.calls = []

    def served(self, name) -> str:
        return str(T.model_versions(os.path.join(self.repo, name))[-1])

    def _check(self, name, version):
        from tritonclient.utils import InferenceServerException

        if version not in ("", None) and str(version) != self.served(name):
            raise InferenceServerException(f"Request for unknown model: '{name}' version {version} is not at ready "
                                           "state")

    def client_class(self):
        server = self
        types = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64"}

        class Client:
            def __init__(self, url, **kw):
                pass

            def _session(self, name):
                return ort.InferenceSession(os.path.join(server.repo, name, server.served(name), "model.onnx"),
                                            providers=["CPUExecutionProvider"])

            def get_model_metadata(self, name, model_version=""):
                server._check(name, model_version)
                s = self._session(name)
                io = lambda xs: [{"name": x.name, "datatype": types[x.type],  # noqa: E731
                                  "shape": [d if isinstance(d, int) else -1 for d in x.shape]} for x in xs]
                return {"name": name, "versions": [server.served(name)], "inputs": io(s.get_inputs()),
                        "outputs": io(s.get_outputs())}

            def get_model_config(self, name, model_version=""):
                from google.protobuf import json_format, text_format

                server._check(name, model_version)
                cfg = text_format.Parse(pathlib.Path(server.repo, name, "config.pbtxt").read_text(),
                                        T._model_config_pb2().ModelConfig())
                return json_format.MessageToDict(cfg, preserving_proto_field_name=True)

            def infer(self, model_name, inputs, outputs=None, model_version="", **kw):
                server.calls.append(model_version)
                server._check(model_name, model_version)
                s = self._session(model_name)
                names = [o.name for o in s.get_outputs()]
                res = FakeResult(dict(zip(names, s.run(names, sent_arrays("http", inputs)))))
                res.get_response = lambda v=server.served(model_name): {"model_version": v}
                return res

            def close(self):
                pass

        return Client


@pytest.fixture
def serve(monkeypatch):
    """``serve(repo)``: put a :class:`RepoServer` of ``repo`` in place of tritonclient.http's client; returns it."""
    import tritonclient.http

    def install(repo):
        server = RepoServer(str(repo))
        monkeypatch.setattr(tritonclient.http, "InferenceServerClient", server.client_class())
        return server

    return install


def test_a_regeneration_writes_the_next_version_and_keeps_the_one_before(tmp_path, exports):
    repo = tmp_path / "repo"
    mdir = _write(exports["a"], repo, state="explicit")
    assert T.model_versions(mdir) == [1]
    assert "version_policy: { latest: { num_versions: 1 } }" in (mdir / "config.pbtxt").read_text()
    first = (mdir / "1" / "model.onnx").read_bytes()
    _write(exports["b"], repo, state="explicit")
    assert T.model_versions(mdir) == [1, 2]
    assert (mdir / "1" / "model.onnx").read_bytes() == first              # kept as it was, for a rollback
    assert (mdir / "2" / "model.onnx").read_bytes() != first
    assert T.foreign_model_files(mdir) == []                              # both versions are the generator's
    _write(exports["a"], repo, state="explicit")                          # a rollback: one more version
    assert T.model_versions(mdir) == [2, 3]
    assert (mdir / "3" / "model.onnx").read_bytes() == first
    assert T.foreign_model_files(mdir) == []
    cfg = T.validate_config((mdir / "config.pbtxt").read_text())
    assert cfg.version_policy.latest.num_versions == 1
    assert "ModelReplacedError" in (mdir / "README.md").read_text()


def test_the_explicit_client_refuses_a_replaced_model_and_stores_nothing(tmp_path, exports, serve):
    from export.triton_client import ExplicitStateRecommender, ModelReplacedError, StaleStateError

    repo = tmp_path / "repo"
    _write(exports["a"], repo, state="explicit")
    server = serve(repo)
    store = {}
    rec = ExplicitStateRecommender("x", "m", protocol="http", vocab=str(repo / "m" / "item_vocab.json"), store=store)
    assert rec.model_version == "1"
    rec.prime("u1", ["i1", "i2", "i3"])
    before = {k: np.array(v, copy=True) for k, v in store["u1"].items()}
    assert server.calls == ["1"]                                          # pinned
    _write(exports["b"], repo, state="explicit")                          # the refresh; Triton reloads it
    with pytest.raises(ModelReplacedError, match=r"model 'm' was replaced on the server \(version 1 -> 2\): "
                                                 r"create a new client") as e:
        rec.recommend("u1", ["i4"])
    assert (e.value.old, e.value.new) == ("1", "2") and "stale" in str(e.value)
    assert store["u1"].keys() == before.keys()                            # nothing stored from the new model
    assert all(np.array_equal(store["u1"][k], before[k]) for k in before)
    with pytest.raises(ModelReplacedError):
        rec.prime("u2", ["i1"])
    assert "u2" not in store
    new = ExplicitStateRecommender("x", "m", protocol="http", vocab=str(repo / "m" / "item_vocab.json"),
                                   store=store)
    assert new.model_version == "2" and new.fingerprint != rec.fingerprint
    with pytest.raises(StaleStateError):
        new.recommend("u1", ["i4"])
    assert len(new.prime("u1", ["i1", "i2", "i3", "i4"])) == 5


def test_the_window_client_refuses_a_grown_catalogue(tmp_path, exports, serve):
    from export.triton_client import ModelReplacedError, WindowRecommender

    repo = tmp_path / "repo"
    _write(exports["wa"], repo)
    serve(repo)
    rec = WindowRecommender("x", "m", protocol="http", vocab=str(repo / "m" / "item_vocab.json"))
    assert len(rec.recommend(["i1", "i2"])) == 5
    _write(exports["wg"], repo)
    with pytest.raises(ModelReplacedError, match=r"version 1 -> 2\): create a new client with the model folder's "
                                                 "new item_vocab.json"):
        rec.recommend(["i1", "i2"])
    fresh = WindowRecommender("x", "m", protocol="http", vocab=str(repo / "m" / "item_vocab.json"))
    assert fresh.n_items == 13 and len(fresh.recommend(["i1", "i12"])) == 5


def test_an_answer_from_another_version_is_refused(monkeypatch):
    """A server answering from another version than the pinned one (the response's ``model_version``)."""
    import tritonclient.http

    from export.triton_client import ModelReplacedError, WindowRecommender

    meta = {"name": "w", "versions": ["3"], "inputs": [{"name": "item_ids", "datatype": "INT64", "shape": [-1, -1]}],
            "outputs": [{"name": "topk_ids", "datatype": "INT64", "shape": [-1, 2]},
                        {"name": "topk_scores", "datatype": "FP32", "shape": [-1, 2]}]}
    config = {"parameters": {"kind": {"string_value": "window"}, "max_seq_length": {"string_value": "4"}}}
    seen = []

    class Client:
        def __init__(self, url, **kw):
            pass

        def get_model_metadata(self, name, model_version=""):
            return meta

        def get_model_config(self, name, model_version=""):
            seen.append(("config", model_version))
            return config

        def infer(self, model_name, inputs, outputs=None, model_version="", **kw):
            seen.append(("infer", model_version))
            res = FakeResult({"topk_ids": np.array([[1, 2]]), "topk_scores": np.array([[1.0, 0.5]], np.float32)})
            res.get_response = lambda: {"model_version": "4"}
            return res

    monkeypatch.setattr(tritonclient.http, "InferenceServerClient", Client)
    rec = WindowRecommender("x", "w", protocol="http")
    with pytest.raises(ModelReplacedError, match=r"version 3 -> 4"):
        rec.recommend([1, 2])
    assert ("infer", "3") in seen and all(v == "3" for _, v in seen)


def test_a_vocab_of_another_size_than_the_model_is_refused(tmp_path, exports, serve):
    from export.triton_client import ExplicitStateRecommender, WindowRecommender

    repo = tmp_path / "repo"
    _write(exports["a"], repo, state="explicit")
    _write(exports["wa"], repo, name="w")
    serve(repo)
    grown = str(exports["g"] / "item_vocab.json")                          # 13 ids; the model serves 11
    with pytest.raises(ValueError, match=r"vocab= holds 13 item ids \(n_items 14\), but model 'm' serves 11 items "
                                         r"\(its config's n_items parameter: 12\)"):
        ExplicitStateRecommender("x", "m", protocol="http", vocab=grown)
    with pytest.raises(ValueError, match="model 'w' serves 11 items"):
        WindowRecommender("x", "w", protocol="http", vocab=grown)
    ok = ExplicitStateRecommender("x", "m", protocol="http", vocab=str(exports["d"] / "item_vocab.json"))
    assert ok.n_items == 12                                               # the same size: nothing to tell


def test_the_state_fingerprint_covers_the_item_vocabulary(exports):
    from export.onnx import state_fingerprint
    from export.runtime import UserStateRecommender
    from export.state_store import StaleStateError

    spec = json.loads((exports["a"] / "state_spec.json").read_text())
    specd = json.loads((exports["d"] / "state_spec.json").read_text())
    a, d = exports["models"]["a"], exports["models"]["d"]
    assert spec["state_fingerprint"] == state_fingerprint(a, spec)
    assert specd["state_fingerprint"] != spec["state_fingerprint"]          # same weights, reordered vocabulary
    assert state_fingerprint(a, spec) == state_fingerprint(_model("gru4rec", 0, ITEMS), spec)
    store = {}
    UserStateRecommender(str(exports["a"]), store=store).prime("u", ["i1", "i2", "i3"])
    with pytest.raises(StaleStateError):
        UserStateRecommender(str(exports["d"]), store=store).recommend("u", ["i4"])
    assert d.item_vocab.items == ITEMS[::-1]


def test_a_graph_served_under_another_vocabulary_gets_another_fingerprint(tmp_path, exports):
    """``export.triton --onnx A --vocab OTHER.json`` (same size, other order): the config's ``state_fingerprint`` is
    not the export's, so the explicit client refuses the states stored under A's own vocabulary."""
    spec = json.loads((exports["a"] / "state_spec.json").read_text())

    def fingerprint(mdir):
        cfg = T.validate_config((mdir / "config.pbtxt").read_text())
        return cfg.parameters["state_fingerprint"].string_value

    own = _write(exports["a"], tmp_path / "r1")
    other = T.write_repository(exports["a"], tmp_path / "r2", name="m", state="explicit",
                               vocab_path=str(exports["d"] / "item_vocab.json"))
    assert fingerprint(own) == spec["state_fingerprint"]
    assert fingerprint(other).startswith("sha256:") and fingerprint(other) != spec["state_fingerprint"]


def test_build_engine_sh_builds_into_the_latest_version(tmp_path, exports):
    """A regenerated TensorRT folder's build_engine.sh builds the plan into the highest version folder (the one the
    config serves), not into ``1/``."""
    import subprocess

    repo = tmp_path / "r"
    T.write_repository(exports["a"], repo, name="t", backend="tensorrt")
    mdir = T.write_repository(exports["b"], repo, name="t", backend="tensorrt")
    assert T.model_versions(mdir) == [1, 2]
    fake = tmp_path / "trtexec"
    fake.write_text('#!/usr/bin/env bash\nfor a in "$@"; do case $a in --saveEngine=*) echo engine > '
                    '"${a#--saveEngine=}";; esac; done\n')
    fake.chmod(0o755)
    run = subprocess.run(["bash", str(mdir / "build_engine.sh")], capture_output=True, text=True, check=False,
                         env={**os.environ, "TRTEXEC": str(fake)})
    assert run.returncode == 0, run.stderr
    assert (mdir / "2" / "model.plan").read_text() == "engine\n" and not (mdir / "1" / "model.plan").exists()
    assert T.foreign_model_files(mdir) == []                          # the built engine is the generator's to replace
