"""Each call's own user vector, safe with threads, and the Triton client's vocabulary read without zoo.

* ``last_user_vector`` (export.runtime.UserStateRecommender, export.triton_client's three clients) is one attribute
  for every thread sharing the recommender, which the classes are documented to allow: a thread reading it after its
  own call could get another user's vector (and query its ANN index with it). ``recommend_with_scores(...,
  return_vector=True)`` / ``recommend_many(..., return_vectors=True)`` return each event's vector with its top-k. The
  race is shown through the API, without timing: thread A's call ends, thread B's call ends, then A reads the
  attribute (B's vector) and its returned vector (its own). Eight threads' calls are checked against sequential ones.
* ``export.triton_client`` given ``vocab="…/item_vocab.json"`` imported all of zoo (torch, transformers: seconds, and
  the Hugging Face cache seeded) in a process that only sends requests. It now reads the file with
  ``export.item_vocab`` (subprocess: neither torch nor zoo imported), where ``zoo.vocab.ItemVocab`` now lives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from triton_fakes import FakeResult, install_client, sent_arrays

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 3
HISTORIES = {f"u{i}": [1 + i % 11, 1 + (i * 7) % 11, 1 + (i * 3) % 11, 1 + (i * 5) % 11][: 2 + i % 3]
             for i in range(24)}


def _interleaved(call_a, call_b, read_last):
    """Thread A makes its call, then thread B makes its call, then A reads ``read_last()``: the order is forced with
    events, not timing. Returns (A's result, what A read afterwards, B's result)."""
    out, a_done, b_done = {}, threading.Event(), threading.Event()

    def a():
        out["a"] = call_a()
        a_done.set()
        assert b_done.wait(60)
        out["a_read"] = read_last()

    def b():
        assert a_done.wait(60)
        out["b"] = call_b()
        b_done.set()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(out) == {"a", "a_read", "b"}, "a thread failed (see the captured exception)"
    return out["a"], out["a_read"], out["b"]


def _in_threads(work, n_threads=8):
    """``work(t)`` in ``n_threads`` threads started together; the results, in thread order (an exception re-raised)."""
    results, errors, go = [None] * n_threads, [], threading.Barrier(n_threads)

    def run(t):
        try:
            go.wait(60)
            results[t] = work(t)
        except BaseException as e:                      # noqa: BLE001 -- re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors:
        raise errors[0]
    return results


# ================================================================ export.runtime.UserStateRecommender (ONNX Runtime)
@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """Tiny GRU4Rec (step) and SASRec (window) graphs exported with --user-vector, and a GRU4Rec one without."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from export.onnx import export_model
    from tiny_models import tiny

    out = {}
    for name, family, vector in (("step", "gru4rec", True), ("window", "sasrec", True), ("plain", "gru4rec", False)):
        d = tmp_path_factory.mktemp(name)
        export_model(tiny(family), d, topk=K, user_vector=vector, verify=False)
        out[name] = d
    return out


def _reference(rec):
    """Each user's vector after its history, one user at a time in this thread (also ``last_user_vector``, which a
    single thread may keep reading); checked to differ between users, or a test comparing them could not fail."""
    ref = {}
    for u, h in HISTORIES.items():
        ids, scores, v = rec.recommend_with_scores(u, h, start=True, return_vector=True)
        assert ids == rec.prime(u, h) and v.dtype == np.float32 and v.ndim == 1
        np.testing.assert_array_equal(rec.last_user_vector, v)
        ref[u] = v
    assert len({v.tobytes() for v in ref.values()}) == len(ref), "users share a vector: the test could not fail"
    return ref


@pytest.mark.parametrize("kind", ["step", "window"])
def test_runtime_each_call_returns_its_own_user_vector(graphs, kind):
    """recommend_with_scores(return_vector=True) -> (ids, scores, vector); recommend_many(return_vectors=True) one
    triple per event, in order, whose ids and scores are the plain call's; last_user_vector is the last event's."""
    from export.runtime import UserStateRecommender

    rec = UserStateRecommender(graphs[kind])
    ref = _reference(rec)
    events = [(u, h) for u, h in HISTORIES.items()]
    plain = rec.recommend_many(events, start=True)
    triples = rec.recommend_many(events, start=True, return_vectors=True)
    assert all(len(r) == 2 for r in plain) and all(len(r) == 3 for r in triples)
    for (u, _), (ids, scores), (ids3, scores3, v) in zip(events, plain, triples, strict=True):
        assert ids3 == ids
        np.testing.assert_allclose(scores3, scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(v, ref[u], rtol=0, atol=1e-5)       # batched rows: ONNX Runtime may round apart
    np.testing.assert_array_equal(rec.last_user_vector, triples[-1][2])
    # continuing a user: the vector after the event, as a sequential replay of history + event gives it
    ids, scores, v = rec.recommend_with_scores("u0", [5], return_vector=True)
    again = UserStateRecommender(graphs[kind])
    np.testing.assert_allclose(v, again.recommend_with_scores("x", HISTORIES["u0"] + [5], start=True,
                                                              return_vector=True)[2], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["step", "window"])
def test_runtime_threads_get_their_own_vector_where_last_user_vector_is_anothers(graphs, kind):
    """Thread A primes u1, thread B then primes u2, then A reads: last_user_vector is u2's (the attribute is shared;
    the class is documented as shareable by threads), while the vector A's call returned is u1's. Then 8 threads, 3
    users each, every call's returned vector equal to the sequential one."""
    from export.runtime import UserStateRecommender

    rec = UserStateRecommender(graphs[kind])
    ref = _reference(rec)
    a, a_read, b = _interleaved(
        lambda: rec.recommend_with_scores("u1", HISTORIES["u1"], start=True, return_vector=True),
        lambda: rec.recommend_with_scores("u2", HISTORIES["u2"], start=True, return_vector=True),
        lambda: rec.last_user_vector.copy())
    np.testing.assert_array_equal(a_read, ref["u2"])       # what a thread reading the attribute would have used
    np.testing.assert_array_equal(a[2], ref["u1"])
    np.testing.assert_array_equal(b[2], ref["u2"])

    users = list(HISTORIES)

    def work(t):
        got = []
        for rnd in range(20):
            u = users[(t * 3 + rnd) % len(users)]
            if rnd % 2:
                got.append((u, rec.recommend_with_scores(u, HISTORIES[u], start=True, return_vector=True)[2]))
            else:
                got.append((u, rec.recommend_many([(u, HISTORIES[u])], start=True, return_vectors=True)[0][2]))
        return got

    got = [g for per_thread in _in_threads(work) for g in per_thread]
    bad = [u for u, v in got if not np.array_equal(v, ref[u])]
    assert not bad, f"{len(bad)} of {len(got)} calls returned another vector than their user's, first {bad[0]}"


def test_runtime_graph_without_user_vector_refuses_the_keywords(graphs):
    """A graph exported without --user-vector: return_vector(s)=True is a ValueError naming --user-vector, raised
    before the graph runs (nothing stored); the plain calls work and last_user_vector stays None."""
    from export.runtime import UserStateRecommender

    rec = UserStateRecommender(graphs["plain"])
    with pytest.raises(ValueError, match="return_vector=True: .* has no user_vector output; .*--user-vector"):
        rec.recommend_with_scores("u", [1, 2], start=True, return_vector=True)
    with pytest.raises(ValueError, match="return_vectors=True: .*--user-vector"):
        rec.recommend_many([("u", [1, 2])], return_vectors=True)
    assert "u" not in rec.store
    assert len(rec.recommend_with_scores("u", [1, 2])) == 2 and rec.last_user_vector is None


# ======================================================= export.triton_client, against a stand-in gRPC server
N_ITEMS = 12
V = 4


def _vector(prev: float, ids) -> list[float]:
    """The stand-in's user vector of a row: distinct for each (state, event)."""
    ids = [int(x) for x in ids if x]
    return [prev, float(sum(ids)), float(ids[-1]), float(sum((j + 1) * x for j, x in enumerate(ids)))]


def _fake_grpc(monkeypatch, kind: str, user_vector: bool = True):
    """tritonclient.grpc.InferenceServerClient replaced by a stand-in model: ``kind`` "sequence" (the server keeps
    each sequence's items; vector from them), "explicit" (state ``h`` [1] float32: ``h_out = h + sum(ids)``; vector
    from ``h`` and the event) or "window" (vector from the row). Thread-safe, as a server is."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")

    ins = {"item_ids": ("INT64", (-1, -1)), **({"h": ("FP32", (-1, 1))} if kind == "explicit" else {})}
    outs = {"topk_ids": ("INT64", (-1, K)), "topk_scores": ("FP32", (-1, K)),
            **({"h_out": ("FP32", (-1, 1))} if kind == "explicit" else {}),
            **({"user_vector": ("FP32", (-1, V))} if user_vector else {})}
    config = {"sequence": {"sequence_batching": {"max_sequence_idle_microseconds": "600000000"}},
              "explicit": {"max_batch_size": 8, "parameters": {"state_init": {"string_value": '{"h": 0.0}'}}},
              "window": {"max_batch_size": 8, "parameters": {"kind": {"string_value": "window"},
                                                             "max_seq_length": {"string_value": "6"}}}}[kind]
    sequences, lock = {}, threading.Lock()

    def infer(model_name, inputs, requested, sequence_id=0, sequence_start=False, sequence_end=False, **kw):
        sent = sent_arrays("grpc", inputs)
        ids = sent["item_ids"]
        rows = ids.shape[0]
        if kind == "sequence":
            with lock:
                h = ([] if sequence_start else sequences.get(sequence_id, [])) + ids[0].tolist()
                sequences[sequence_id] = h
            vec = [_vector(float(len(h)), h)]
        elif kind == "explicit":
            h_in = sent["h"].reshape(rows)
            vec = [_vector(float(h_in[r]), ids[r]) for r in range(rows)]
        else:
            vec = [_vector(0.0, ids[r]) for r in range(rows)]
        arrays = {"topk_ids": np.tile(np.arange(1, K + 1, dtype=np.int64), (rows, 1)),
                  "topk_scores": np.tile(-np.arange(K, dtype=np.float32), (rows, 1)),
                  "user_vector": np.array(vec, np.float32)}
        if kind == "explicit":
            arrays["h_out"] = (sent["h"] + ids.sum(axis=1, keepdims=True)).astype(np.float32)
        return FakeResult(arrays)

    install_client(monkeypatch, "grpc", ins, outs, config, infer)


def _client(kind, **kw):
    from export.triton_client import ExplicitStateRecommender, TritonRecommender, WindowRecommender

    cls = {"sequence": TritonRecommender, "explicit": ExplicitStateRecommender, "window": WindowRecommender}[kind]
    return cls("127.0.0.1:1", "m", protocol="grpc", n_items=N_ITEMS, **kw)


def _expected(kind, history):
    """The stand-in's vector after ``history`` given as one event from the start."""
    return np.array(_vector(float(len(history)) if kind == "sequence" else 0.0, history), np.float32)


@pytest.mark.parametrize("kind", ["sequence", "explicit", "window"])
def test_triton_clients_return_each_calls_own_vector(monkeypatch, kind):
    """The three clients: recommend_with_scores(return_vector=True) -> (ids, scores, vector), recommend_many(
    return_vectors=True) a triple per event (ids and scores those of the plain call), and last_user_vector the last
    event's, as before."""
    _fake_grpc(monkeypatch, kind)
    rec = _client(kind)
    users = list(HISTORIES)[2:8]                    # not u1: a live sequence would be continued, not started
    if kind == "window":
        one = rec.recommend_with_scores(HISTORIES["u1"], return_vector=True)
        many = rec.recommend_many([HISTORIES[u] for u in users], return_vectors=True)
        plain = rec.recommend_many([HISTORIES[u] for u in users])
    else:
        one = rec.recommend_with_scores("u1", HISTORIES["u1"], start=True, return_vector=True)
        many = rec.recommend_many([(u, HISTORIES[u]) for u in users], return_vectors=True,
                                  **({"start": True} if kind == "explicit" else {}))
        rec2 = _client(kind)
        plain = rec2.recommend_many([(u, HISTORIES[u]) for u in users])
    assert len(one) == 3 and one[0] == [1, 2, 3]
    np.testing.assert_array_equal(one[2], _expected(kind, HISTORIES["u1"]))
    assert [len(r) for r in many] == [3] * len(users) and [len(r) for r in plain] == [2] * len(users)
    for u, (ids, scores, v), (ids2, scores2) in zip(users, many, plain, strict=True):
        assert ids == ids2 and np.array_equal(scores, scores2)
        np.testing.assert_array_equal(v, _expected(kind, HISTORIES[u]))
    np.testing.assert_array_equal(rec.last_user_vector, many[-1][2])


@pytest.mark.parametrize("kind", ["sequence", "explicit", "window"])
def test_triton_clients_threads_get_their_own_vector_where_last_user_vector_is_anothers(monkeypatch, kind):
    """As for the runtime: thread A's call, then thread B's, then A reads last_user_vector (B's user's) while A's
    call returned its own; 8 threads sharing one gRPC client (documented as shareable) get their own vectors."""
    _fake_grpc(monkeypatch, kind)
    rec = _client(kind)

    def call(u):
        if kind == "window":
            return rec.recommend_with_scores(HISTORIES[u], return_vector=True)
        return rec.recommend_with_scores(u, HISTORIES[u], start=True, return_vector=True)

    a, a_read, b = _interleaved(lambda: call("u1"), lambda: call("u2"), lambda: rec.last_user_vector.copy())
    assert not np.array_equal(_expected(kind, HISTORIES["u1"]), _expected(kind, HISTORIES["u2"]))
    np.testing.assert_array_equal(a_read, _expected(kind, HISTORIES["u2"]))
    np.testing.assert_array_equal(a[2], _expected(kind, HISTORIES["u1"]))
    np.testing.assert_array_equal(b[2], _expected(kind, HISTORIES["u2"]))

    def work(t):
        got = []
        for rnd in range(15):
            u = f"t{t}-{rnd}"                       # a new user each call: its history is h
            h = HISTORIES[f"u{(t + rnd) % len(HISTORIES)}"]
            if kind == "window":
                v = (rec.recommend_many([h], return_vectors=True)[0] if rnd % 2 else
                     rec.recommend_with_scores(h, return_vector=True))[2]
            elif rnd % 2:
                v = rec.recommend_many([(u, h)], return_vectors=True)[0][2]
            else:
                v = rec.recommend_with_scores(u, h, start=True, return_vector=True)[2]
            got.append((h, v))
        return got

    got = [g for per_thread in _in_threads(work) for g in per_thread]
    bad = [h for h, v in got if not np.array_equal(v, _expected(kind, h))]
    assert not bad, f"{len(bad)} of {len(got)} calls returned another call's vector"


@pytest.mark.parametrize("kind", ["sequence", "explicit", "window"])
def test_triton_clients_without_user_vector_refuse_the_keywords(monkeypatch, kind):
    """A model without the user_vector output: return_vector(s)=True is a ValueError naming --user-vector, before
    anything is sent."""
    _fake_grpc(monkeypatch, kind, user_vector=False)
    rec = _client(kind)
    sent = []
    rec.client.infer = lambda *a, **kw: sent.append(a)
    args = (HISTORIES["u1"],) if kind == "window" else ("u1", HISTORIES["u1"])
    with pytest.raises(ValueError, match="return_vector=True: model 'm' has no user_vector output; .*--user-vector"):
        rec.recommend_with_scores(*args, return_vector=True)
    with pytest.raises(ValueError, match="return_vectors=True: .*--user-vector"):
        rec.recommend_many([args[0] if kind == "window" else args], return_vectors=True)
    assert sent == [] and rec.last_user_vector is None


# ====================================================================== the client's vocab= without zoo
def _write_vocab(path, items, id_type=None):
    d = {"format": "zoo-item-vocab/1", "pad_index": 0, "items": items, **({"id_type": id_type} if id_type else {})}
    path.write_text(json.dumps(d))
    return path


def _outcome(f):
    try:
        return ("ok", f())
    except Exception as e:                              # noqa: BLE001 -- compared as (type, message)
        return (type(e), str(e))


def test_client_vocab_is_zoos_item_vocabulary(tmp_path):
    """The client's vocabulary from a path is ``zoo.vocab.ItemVocab`` itself (one implementation, in the torch-free
    ``export.item_vocab``; the client once had a copy of its lookup): the same items, id type and lookups as
    ``ItemVocab.load`` of the same file, and its errors for unreadable files."""
    import export.item_vocab
    import zoo.vocab
    from export.triton_client import _load_vocab

    assert zoo.vocab.ItemVocab is export.item_vocab.ItemVocab
    assert zoo.vocab.UnknownItemError is export.item_vocab.UnknownItemError
    int_file = _write_vocab(tmp_path / "int.json", [3186, 1022, 7, -3, 588])
    str_dir = tmp_path / "strdir"
    str_dir.mkdir()
    _write_vocab(str_dir / "item_vocab.json", ["a", "café", "7", 42, "x y"], "str")
    for path in (int_file, str_dir):
        mine = _load_vocab(str(path))
        assert isinstance(mine, zoo.vocab.ItemVocab) and mine == zoo.vocab.ItemVocab.load(str(path))
        assert mine.encode([mine.items[1]]) == [2] and mine.decode([1]) == [mine.items[0]]
        with pytest.raises(zoo.vocab.UnknownItemError, match="not in the model's item vocabulary"):
            mine.encode([99 if mine.id_type == "int" else "nope"])
    assert _load_vocab(None) is None and _load_vocab(mine) is mine          # an ItemVocab is used as it is
    bad = {"missing.json": None, "notjson.json": "{oops", "other.json": json.dumps({"items": [1, 2]})}
    for name, text in bad.items():
        p = tmp_path / name
        if text is not None:
            p.write_text(text)
        got, want = _outcome(lambda: _load_vocab(str(p))), _outcome(lambda: zoo.vocab.ItemVocab.load(str(p)))
        assert got[0] != "ok" and got == want, (name, got, want)

def test_client_with_a_vocab_path_imports_neither_torch_nor_zoo(tmp_path):
    """In a fresh process: a TritonRecommender given vocab=<item_vocab.json> (a stand-in HTTP client) encodes the
    caller's ids, decodes the answer, and refuses an unknown id with a KeyError (export.ids.
    UnknownItemError, which zoo.vocab re-exports) naming it, before sending -- and torch, zoo and transformers are never
    imported (importing zoo took seconds and seeded the Hugging Face cache)."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    vocab = _write_vocab(tmp_path / "item_vocab.json", [f"item-{i}" for i in range(1, N_ITEMS)])
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import tritonclient.http as th

        sys.path.append({os.path.join(ROOT, "tests")!r})
        from triton_fakes import FakeResult, fake_client, sent_arrays

        sent = []

        def infer(model_name, ins, requested, **kw):
            sent.append(sent_arrays("http", ins)["item_ids"].ravel().tolist())
            return FakeResult({{"topk_ids": np.array([[3, 1, 2]], np.int64),
                               "topk_scores": np.array([[0.5, 0.25, 0.0]], np.float32)}})

        th.InferenceServerClient = fake_client(
            "http", {{"item_ids": ("INT64", (-1, -1))}},
            {{"topk_ids": ("INT64", (-1, 3)), "topk_scores": ("FP32", (-1, 3))}},
            {{"sequence_batching": {{"max_sequence_idle_microseconds": "600000000"}}}}, infer)
        from export.triton_client import TritonRecommender

        rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", vocab={str(vocab)!r})
        top = rec.prime("u", ["item-4", "item-2"])
        try:
            rec.recommend("u", ["item-99"])
            unknown = None
        except KeyError as e:
            unknown = [type(e).__module__, type(e).__name__, str(e)]
        print(json.dumps({{"top": top, "sent": sent, "n_items": rec.n_items, "unknown": unknown,
                          "imported": sorted(m for m in ("torch", "zoo", "transformers") if m in sys.modules)}}))
    """)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["imported"] == [], out
    assert out["top"] == ["item-3", "item-1", "item-2"] and out["sent"] == [[4, 2]] and out["n_items"] == N_ITEMS
    assert out["unknown"] == ["export.ids", "UnknownItemError", "unknown item id 'item-99': not in the "
                              "model's item vocabulary (11 items)"]
    assert not (tmp_path / "hf").exists()                   # nothing written to the Hugging Face cache
