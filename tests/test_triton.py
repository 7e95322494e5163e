"""Triton serving (export.triton / export.triton_client / export.triton_server).

* Schema tests (need tritonclient in the main env): every generated config.pbtxt (onnxruntime implicit/explicit,
  tensorrt implicit/explicit, python, window) parses with Triton's model_config_pb2 and matches the graph's I/O.
* The implicit-state graph (control inputs added) is run by ONNX Runtime the way Triton's sequence batcher drives it
  (state_out of request i fed as state_in of request i+1, zero state + START at the start) against PyTorch.
* A real server: nvidia-pytriton's tritonserver (python backend) from the server venv (`bash export/triton_server_env.sh`)
  serves the step graph on loopback; >= 200 interleaved sequences are compared event by event with PyTorch's
  full-forward top-k; errors are checked; the server is stopped at the end. Skipped, with the reason, when the venv
  is missing or the server cannot start.
"""

from __future__ import annotations

import json
import random
import threading

import numpy as np
import pytest
import torch

tc = pytest.importorskip("tritonclient", reason="tritonclient not installed (pip install 'tritonclient[http]' grpcio)")
pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient's protobuf schema needs grpcio/protobuf")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export import triton as T  # noqa: E402
from export.onnx import export_model  # noqa: E402
from zoo.vocab import ItemVocab, UnknownItemError  # noqa: E402

N_ITEMS = 120
K = 10


def _mamba():
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

    torch.manual_seed(0)
    m = Mamba4RecModel(Mamba4RecConfig(n_items=N_ITEMS, max_seq_length=64, hidden_size=16, num_layers=2, d_state=8,
                                       d_conv=4, dropout_prob=0.0)).eval()
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


def _parse(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(open(path).read(), mc.ModelConfig())


def _reference_topk(model, histories):
    """PyTorch full-forward top-K (padding masked) for each internal-index history."""
    out = []
    for s in range(0, len(histories), 256):
        ids, mask = model.pad_batch(histories[s:s + 256])
        sc = model.predict(ids, mask)
        top = torch.topk(sc, K, dim=1)
        out += list(zip(top.indices.numpy(), sc.numpy()))
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
    assert (mdir / "item_vocab.json").exists() and (tmp_path / "repo" / "README.md").exists()
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
    if backend == "python":
        assert kinds == {"START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END",
                         "CORRID": "CONTROL_SEQUENCE_CORRID"}
        assert not seq.state
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
        assert "--backend-config=tensorrt,plugins=$plugin" in serve and "--dynamicPlugins=$plugin" in serve
        assert (mdir / "onnx" / "model_implicit.onnx").exists()
    else:
        g = onnx.load(str(mdir / "1" / "model.onnx"))
        assert [i.name for i in g.graph.input][-3:] == ["START", "READY", "CORRID"]


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
    with pytest.raises(T.TritonConfigError, match="step graphs only"):
        T.write_repository(wd, tmp_path / "repo_py", backend="python")


def test_invalid_configs_are_rejected(mamba_export):
    spec = json.loads((mamba_export / "state_spec.json").read_text())
    good = T.make_config(spec, "m", "onnxruntime", "implicit")
    T.validate_config(good, T.implicit_spec(spec))
    with pytest.raises(T.TritonConfigError, match="schema"):
        T.validate_config(good.replace("input_name", "input_nam"))
    with pytest.raises(T.TritonConfigError, match="sort differently"):
        T.validate_config(good.replace('output_name: "conv_state_out"', 'output_name: "zz_out"'))
    with pytest.raises(T.TritonConfigError, match="not a graph|neither config inputs nor states"):
        T.validate_config(good.replace('input_name: "ssm_state"', 'input_name: "ssm_statex"'), T.implicit_spec(spec))
    with pytest.raises(T.TritonConfigError, match="dims"):
        T.validate_config(good.replace("dims: [ 2, 32, 8 ]", "dims: [ 2, 32, 9 ]"), T.implicit_spec(spec))


def test_cli_exports_a_model_folder(mamba, tmp_path):
    mamba.save_pretrained(tmp_path / "m")
    assert T.main(["--model", str(tmp_path / "m"), "--repo", str(tmp_path / "r"), "--topk", "5", "--no-verify"]) == 0
    mdir = tmp_path / "r" / "mamba4rec_step_onnxruntime_implicit"
    assert _parse(mdir / "config.pbtxt").output[0].dims == [5]
    assert ItemVocab.load(str(mdir / "item_vocab.json")) == mamba.item_vocab


def test_cli_writes_repository(mamba_export, tmp_path):
    assert T.main(["--onnx", str(mamba_export), "--repo", str(tmp_path / "r"), "--backend", "tensorrt",
                   "--name", "m4r"]) == 0
    assert (tmp_path / "r" / "m4r" / "config.pbtxt").exists()
    assert T.main(["--onnx", str(tmp_path / "nope"), "--repo", str(tmp_path / "r2")]) != 0


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
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        for r, i in enumerate(rows):
            slots[i] = {s["name"]: outs[s["output"]][r] for s in spec["state"]}
            served.append(outs["topk_ids"][r])
            prefixes.append(hist[i][:step + 1])
    for got, (ref_ids, ref_sc) in zip(served, _reference_topk(model, prefixes)):
        assert _same_topk(got, ref_ids, ref_sc)


# ================================================================================================ live server
@pytest.fixture(scope="module")
def live_server(mamba_export, tmp_path_factory):
    from export import triton_server as S

    try:
        S.server_python()
    except RuntimeError as e:
        pytest.skip(str(e))
    repo = tmp_path_factory.mktemp("triton_repo")
    T.write_repository(mamba_export, repo, name="m4r", backend="python",
                       vocab_path=str(mamba_export / "item_vocab.json"), idle_timeout_s=30, max_batch_size=32,
                       queue_delay_us=1000)
    T.write_repository(mamba_export, repo, name="m4r_short", backend="python", idle_timeout_s=1.0,
                       vocab_path=str(mamba_export / "item_vocab.json"), max_batch_size=8)
    T.write_repository(mamba_export, repo, name="m4r_explicit", backend="python", state="explicit",
                       vocab_path=str(mamba_export / "item_vocab.json"), max_batch_size=32, queue_delay_us=1000)
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
        for e, got in zip(ev, results[s]):
            acc = acc + e
            prefixes.append(list(acc))
            served.append(vocab.encode(got))
    assert len(served) == sum(len(e) for e in plans.values()) >= 600
    bad = [i for i, (got, (ri, rs)) in enumerate(zip(served, _reference_topk(mamba, prefixes)))
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


class _BytesStore:
    """The README's state-store recipe: values kept as bytes (what Redis & co. hold), keyed by user id."""

    def __init__(self):
        self.kv = {}

    def get(self, key):
        import io

        raw = self.kv.get(key)
        if raw is None:
            return None
        with np.load(io.BytesIO(raw)) as z:
            return {k: z[k] for k in z.files}

    def __setitem__(self, key, arrays):
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self.kv[key] = buf.getvalue()

    def pop(self, key, default=None):
        return self.kv.pop(key, default)


def test_live_explicit_state_with_client_side_store(live_server, mamba):
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
    for got, (ri, rs) in zip(served, _reference_topk(mamba, prefixes)):
        assert _same_topk(got, ri, rs)
    assert set(store.kv) == {u for u in hist if hist[u]} and all(len(v) < 20_000 for v in store.kv.values())
    cl.forget(0)
    assert store.get(0) is None


def test_live_idle_sequence_is_dropped_and_must_be_reprimed(live_server, mamba):
    import time

    from export.triton_client import TritonRecommendError, TritonRecommender

    h, repo = live_server
    v = mamba.item_vocab
    cl = TritonRecommender(h.grpc_url, "m4r_short", protocol="grpc", vocab=v)
    cl.prime("idle-user", v.decode([4, 5, 6]))
    assert cl.last_live_sequences == 1
    time.sleep(3.0)                                            # > max_sequence_idle_microseconds (1 s)
    with pytest.raises(TritonRecommendError, match="START"):
        cl.recommend("idle-user", v.decode([7]))
    with pytest.raises(TritonRecommendError, match="prime"):  # never silently continues from an empty state
        cl.recommend("idle-user", v.decode([7]))
    top = cl.prime("idle-user", v.decode([4, 5, 6, 7]))
    assert v.encode(top) == list(_reference_topk(mamba, [[4, 5, 6, 7]])[0][0])
    assert cl.last_live_sequences == 1                         # the expired state was freed server-side too
    cl.end("idle-user")
    assert cl.last_live_sequences == 0
