"""ExplicitStateRecommender splits an event past the model's per-request cap on new items (a TensorRT engine's profile).

A TensorRT engine takes new items ``T`` in ``[1, max_seq_length]`` a request (``export.trt.profile_shapes``). The
explicit-state client (``--state explicit``: the caller's store holds the state, each request carries it in and
gets the ``*_out`` states back) sent a ``prime()`` history -- or any long event of ``recommend_many`` -- as ONE
request, which such an engine refuses. It now reads the cap as :class:`TritonRecommender` does
(:attr:`ExplicitStateRecommender.max_new_items`: a tensorrt config's ``max_seq_length``) and sends such an event as
consecutive pieces of at most the cap, each piece's returned states the next one's state inputs, timestamps / time
gaps split with their items, candidates and ``k`` on the last piece, whose answer comes back; the final state is
stored once, at the end (a failure part-way stores nothing). Checked on a stand-in client (request sizes, the states
passed between pieces, what is stored) and on a real server (python backend, the cap forced on the client) against
the unsplit call and PyTorch ``model.step``.
"""

from __future__ import annotations

import json
import os
import random
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_triton import (K, N_ITEMS, STEP_IO, TC_ITEMS, _check_served, _fake_http_client, _mamba,  # noqa: E402
                         _reference_topk, _same_topk, _step_reference, _tim4rec_causal, _ts)

from export import triton as T  # noqa: E402
from export.onnx import export_model  # noqa: E402

TRT_CAP = {"parameters": {"max_seq_length": "4"}, "backend": "tensorrt"}
H = {"h": ("FP32", (-1, 2))}                                       # the stand-in model's one state: [B, 2]
H_OUT = {"h_out": ("FP32", (-1, 2))}


class _Store(dict):
    """A dict store that records every write (the user ids stored, in order)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.writes = []

    def __setitem__(self, key, value):
        self.writes.append(key)
        super().__setitem__(key, value)


def _client(monkeypatch, inputs=None, outputs=None, parameters=None, on_infer=None, store=None, **config):
    """An ExplicitStateRecommender (HTTP) on ``_fake_http_client``'s stand-in: a step model with the state ``h``
    (and ``inputs`` / ``outputs`` more) whose ``X_out`` is the state ``X`` sent plus 1 (so the stored state counts the
    requests a user went through, and each request shows which state it was given); the answer to request ``i``
    (1-based) ranks the items ``i, i+1, ...`` first and its ``user_vector`` (when the model has one) is all ``i``, so
    which request's answer came back shows. ``parameters`` and ``config`` (backend) are the config's; a request
    carries up to 8 rows."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import ExplicitStateRecommender

    ins = {**STEP_IO[0], **H, **(inputs or {})}
    outs = {"topk_ids": STEP_IO[1]["topk_ids"], "topk_scores": STEP_IO[1]["topk_scores"], **H_OUT, **(outputs or {})}
    init = {n: -1.0 if n == "last_ts" else 0.0 for n in ins if n not in ("item_ids", "timestamps", "time_gaps",
                                                                          "candidates")}
    params = {"state_init": json.dumps(init), **(parameters or {})}
    calls, fail = _fake_http_client(monkeypatch, ins, outs, params, on_infer=on_infer, counting=True, **config)
    rec = ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS,
                                   store=_Store() if store is None else store)
    rec.max_batch = 8                                   # the stand-in's config has no max_batch_size (1 row)
    sent = rec.client.infer

    def infer(model_name, ins, outputs=None, **kw):
        r = sent(model_name, ins, outputs=outputs, **kw)
        i = len([c for c in calls if c != "close"])

        class Answer:
            def as_numpy(self, name):
                rows = calls[-1]["arrays"]["item_ids"].shape[0]
                if name == "topk_ids":
                    return np.tile(np.arange(i, i + K, dtype=np.int64), (rows, 1))
                if name == "topk_scores":
                    return np.tile(-np.arange(K, dtype=np.float32), (rows, 1))
                if name == "user_vector":
                    return np.full((rows, 4), i, np.float32)
                return r.as_numpy(name)
        return Answer()

    rec.client.infer = infer
    return rec, calls, fail


def _sizes(calls):
    """Each request's (rows, new items)."""
    return [c["arrays"]["item_ids"].shape for c in calls]


def test_a_prime_past_a_tensorrt_models_cap_goes_in_pieces_chaining_the_states(monkeypatch):
    """prime() of 10 items on a tensorrt explicit-state model whose config says max_seq_length 4: requests of 4, 4, 2
    items, in order; the pieces are the history; each piece carries the state the previous one returned (0, then 1,
    then 2: the stand-in adds 1 a request); the state is stored ONCE, after the last piece (3: all three applied); the
    third request's answer (k=3) and user vector come back. An event of exactly the cap goes whole, from the stored
    state."""
    rec, calls, _ = _client(monkeypatch, outputs={"user_vector": ("FP32", (-1, 4))}, **TRT_CAP)
    assert rec.backend == "tensorrt" and rec.max_new_items == 4
    history = [(7 * i) % (N_ITEMS - 1) + 1 for i in range(10)]
    top = rec.prime("u", history, k=3)
    assert _sizes(calls) == [(1, 4), (1, 4), (1, 2)]
    assert np.concatenate([c["arrays"]["item_ids"][0] for c in calls]).tolist() == history
    assert [c["arrays"]["h"].tolist() for c in calls] == [[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 2.0]]]
    assert top == [3, 4, 5]                                         # the third request's answer, k=3
    assert rec.last_user_vector.tolist() == [3.0] * 4
    assert rec.store.writes == ["u"] and rec.store["u"]["h"].tolist() == [[3.0, 3.0]]
    calls.clear()
    rec.recommend("u", [1, 2, 3, 4])
    assert _sizes(calls) == [(1, 4)] and calls[0]["arrays"]["h"].tolist() == [[3.0, 3.0]]
    assert rec.store.writes == ["u", "u"] and rec.store["u"]["h"].tolist() == [[4.0, 4.0]]


def test_recommend_many_sends_piece_j_of_every_event_before_piece_j_plus_1(monkeypatch):
    """Four users' events of 5, 1, 4 and 6 items, cap 4: the first round sends the first pieces, those of 4 items as
    the rows of one request (a, c, d) and b's single item as another; the second round a's last item and d's last 2
    items, each from the state its first piece returned (its stored state + 1). Every user's stored state counts its
    pieces; the answers are those of each user's last piece."""
    store = _Store(a={"h": np.full((1, 2), 10.0, np.float32)}, c={"h": np.full((1, 2), 20.0, np.float32)},
                   d={"h": np.full((1, 2), 30.0, np.float32)})
    rec, calls, _ = _client(monkeypatch, store=store, **TRT_CAP)
    events = [("a", [1, 2, 3, 4, 5]), ("b", [6]), ("c", [7, 8, 9, 10]), ("d", [11, 12, 13, 14, 15, 16])]
    got = rec.recommend_many(events)
    assert _sizes(calls) == [(3, 4), (1, 1), (1, 1), (1, 2)]
    assert calls[0]["arrays"]["item_ids"].tolist() == [[1, 2, 3, 4], [7, 8, 9, 10], [11, 12, 13, 14]]
    assert [c["arrays"]["item_ids"].tolist() for c in calls[1:]] == [[[6]], [[5]], [[15, 16]]]
    assert calls[0]["arrays"]["h"][:, 0].tolist() == [10.0, 20.0, 30.0]
    assert [c["arrays"]["h"][:, 0].tolist() for c in calls[1:]] == [[0.0], [11.0], [31.0]]
    assert {u: store[u]["h"][0, 0] for u in "abcd"} == {"a": 12.0, "b": 1.0, "c": 21.0, "d": 32.0}
    assert sorted(store.writes) == ["a", "b", "c", "d"]             # once each, after every request answered
    assert [top[0] for top, _ in got] == [3, 2, 1, 4]               # a: request 3, b: 2, c: 1, d: 4


@pytest.mark.parametrize("config", [{"parameters": {"max_seq_length": "4"}, "backend": "onnxruntime"},
                                    {"parameters": {"max_seq_length": "4"}, "backend": "python"},
                                    {"backend": "tensorrt"}])
def test_no_cap_no_split(monkeypatch, config):
    """The onnxruntime and python backends take any number of new items, and a tensorrt config without the
    parameter declares no cap: the history goes in ONE request."""
    rec, calls, _ = _client(monkeypatch, **config)
    assert rec.max_new_items is None
    rec.prime("u", list(range(1, 11)))
    assert _sizes(calls) == [(1, 10)] and rec.store["u"]["h"].tolist() == [[1.0, 1.0]]


def test_a_cap_that_is_no_positive_int_is_refused_before_sending(monkeypatch):
    from export.triton_client import TritonRecommendError

    rec, calls, _ = _client(monkeypatch, parameters={"max_seq_length": "0"}, backend="tensorrt")
    with pytest.raises(TritonRecommendError, match="max_seq_length parameter is '0', not a positive int"):
        rec.prime("u", [1, 2])
    assert calls == [] and rec.store == {}


def test_split_event_candidates_go_with_the_last_piece(monkeypatch):
    """A --candidates model: the pieces before the last carry an unrestricted row (0s; their answers are dropped),
    the last the caller's candidates; in a batch, each row gets its own (a's first piece unrestricted beside b's
    last piece with b's candidates)."""
    rec, calls, _ = _client(monkeypatch, inputs={"candidates": ("INT64", (-1, -1))}, **TRT_CAP)
    rec.prime("u", list(range(1, 7)), candidates=[5, 6, 7])
    assert _sizes(calls) == [(1, 4), (1, 2)]
    assert [c["arrays"]["candidates"].tolist() for c in calls] == [[[0]], [[5, 6, 7]]]
    calls.clear()
    rec.recommend_many([("a", [1, 2, 3, 4, 5]), ("b", [6, 7, 8, 9])], candidates=[[5], [6, 7]])
    assert _sizes(calls) == [(2, 4), (1, 1)]
    assert [c["arrays"]["candidates"].tolist() for c in calls] == [[[0, 0], [6, 7]], [[5]]]


def test_split_event_time_gaps_go_with_their_items_and_last_ts_is_the_events(monkeypatch):
    """A --time-input gaps model (what TensorRT builds; the client keeps last_ts beside the graph's states): the
    pieces carry the gaps of the whole event (each piece's first gap from the previous piece's last timestamp, the
    first 0 from the initial last_ts -1), the stored last_ts is the event's last timestamp, and the next event's
    first gap comes from it."""
    from export.timestamps import time_gaps

    rec, calls, _ = _client(monkeypatch, inputs={"time_gaps": ("FP32", (-1, -1))}, **TRT_CAP)
    assert rec.client_init == {"last_ts": -1.0}
    ts = [1.6e9 + 0.5 + 37.0 * i * i for i in range(10)]
    rec.prime("u", list(range(1, 11)), timestamps=ts)
    assert _sizes(calls) == [(1, 4), (1, 4), (1, 2)] and [c["arrays"]["time_gaps"].shape for c in calls] == [
        (1, 4), (1, 4), (1, 2)]
    sent = np.concatenate([c["arrays"]["time_gaps"][0] for c in calls])
    want = time_gaps(np.array([ts]), np.array([[-1.0]]))[0][0].astype(np.float32)
    assert sent.tolist() == want.tolist() and sent[0] == 0 and sent[4] == np.float32(ts[4] - ts[3])
    assert rec.store["u"]["last_ts"].tolist() == [[ts[-1]]] and rec.store["u"]["h"].tolist() == [[3.0, 3.0]]
    calls.clear()
    rec.recommend("u", [3], timestamps=[ts[-1] + 5.0])
    assert calls[0]["arrays"]["time_gaps"].tolist() == [[5.0]]


def test_split_event_timestamps_and_a_last_ts_state_chain_through_the_pieces(monkeypatch):
    """The float64 form (TiM4Rec-causal's graph keeps last_ts as a state; no TensorRT model takes float64, so the
    cap is forced on the client): the timestamps split with their items and each piece's last_ts input is the
    last_ts_out the previous one returned (the stand-in adds 1: -1, 0, 1)."""
    rec, calls, _ = _client(monkeypatch, inputs={"timestamps": ("FP64", (-1, -1)), "last_ts": ("FP64", (-1, 1))},
                            outputs={"last_ts_out": ("FP64", (-1, 1))}, backend="onnxruntime")
    assert rec.max_new_items is None
    rec.max_new_items = 4
    ts = [1.6e9 + 0.5 + 37.0 * i for i in range(10)]
    rec.prime("u", list(range(1, 11)), timestamps=ts)
    assert _sizes(calls) == [(1, 4), (1, 4), (1, 2)]
    assert np.concatenate([c["arrays"]["timestamps"][0] for c in calls]).tolist() == ts
    assert [c["arrays"]["last_ts"].tolist() for c in calls] == [[[-1.0]], [[0.0]], [[1.0]]]
    assert rec.store["u"]["last_ts"].tolist() == [[2.0]]


@pytest.mark.parametrize("error", ["refused", "no answer"])
def test_a_piece_failing_part_way_stores_nothing_and_loses_nothing(monkeypatch, error):
    """The second piece is refused (or gets no answer): the error says the pieces already answered were dropped and
    nothing stored; the user's stored state is the one from before the call (not written at all), a new user's
    prime stores nothing, and in a batch no user's state is stored; sent again, the call goes from the old state."""
    from export.triton_client import TritonRecommendError

    box = {"n": 0, "refuse": 2}

    def refuse(call):                                   # the box["refuse"]-th request (1-based) fails
        box["n"] += 1
        hit = box["n"] == box["refuse"]
        box["fail"][0] = (None if not hit else "m: item index 500 is out of range 1..119" if error == "refused"
                          else OSError("connection reset"))

    old = {"h": np.full((1, 2), 7.0, np.float32)}
    store = _Store(u=old)
    rec, calls, fail = _client(monkeypatch, on_infer=refuse, store=store, **TRT_CAP)
    box["fail"] = fail
    why = r"pieces of at most 4 items .*piece 2 failed.*none was stored"
    match = (r"^m: item index 500 is out of range 1\.\.119 \(the events went in " + why if error == "refused"
             else r"no answer from the server \(OSError: connection reset\).*" + why + ".*can be sent again")
    with pytest.raises(TritonRecommendError, match=match):
        rec.recommend("u", list(range(1, 11)))
    assert _sizes(calls) == [(1, 4), (1, 4)]
    assert store.writes == [] and store["u"] is old and old["h"].tolist() == [[7.0, 7.0]]
    box.update(n=0)
    with pytest.raises(TritonRecommendError, match=why):
        rec.prime("v", list(range(1, 11)))
    assert "v" not in store and store.writes == []
    box.update(n=0, refuse=3)       # requests: a's and u's first pieces, b's only one, then a's last piece fails
    with pytest.raises(TritonRecommendError, match=why):
        rec.recommend_many([("a", [1, 2, 3, 4, 5]), ("b", [6]), ("u", [1, 2, 3, 4, 5, 6])])
    assert store.writes == [] and set(store) == {"u"} and store["u"] is old
    calls.clear()
    box.update(n=0, refuse=0)                                        # fixed: the same call goes through
    rec.recommend("u", list(range(1, 11)))
    assert [c["arrays"]["h"][0, 0] for c in calls] == [7.0, 8.0, 9.0] and store["u"]["h"][0, 0] == 10.0
    assert store.writes == ["u"]


def test_a_versioned_store_conflict_resends_every_piece_from_the_newer_state(monkeypatch):
    """A versioned store whose first commit is refused (another process stored the user meanwhile): the whole split
    event is sent again from the newer state -- no state of the first try's pieces leaks into the second."""

    class Versioned:
        def __init__(self):
            self.state, self.version, self.refuse = {"h": np.full((1, 2), 5.0, np.float32)}, 1, True

        def get_versioned(self, key):
            return self.state, self.version

        def commit(self, items):
            if self.refuse:                            # another process wrote the user: h 50, a new version
                self.refuse = False
                self.state, self.version = {"h": np.full((1, 2), 50.0, np.float32)}, 2
                return False
            (_, version, state), = items
            assert version == self.version
            self.state, self.version = state, self.version + 1
            return True

    store = Versioned()
    rec, calls, _ = _client(monkeypatch, store=store, **TRT_CAP)
    rec.recommend("u", list(range(1, 10)))
    assert [c["arrays"]["h"][0, 0] for c in calls] == [5.0, 6.0, 7.0, 50.0, 51.0, 52.0]
    assert store.state["h"][0, 0] == 53.0 and rec.conflicts == 1


# ================================================================================================ live server
CAP = 5


@pytest.fixture(scope="module")
def explicit_server(tmp_path_factory):
    """A real tritonserver (pytriton's, python backend) serving the explicit-state (dynamic batching) Mamba4Rec step
    graph, TiM4Rec-causal with its float64 last_ts state, and TiM4Rec-causal's gaps form (what export.trt builds);
    skipped, with the reason, without the server venv."""
    from export import triton_server as S

    try:
        S.server_python()
    except RuntimeError as e:
        pytest.skip(str(e))
    mamba, tc = _mamba(), _tim4rec_causal()
    m_dir, tc_dir, gaps_dir = (tmp_path_factory.mktemp(n) for n in ("xp_mamba", "xp_tc", "xp_tc_gaps"))
    export_model(mamba, m_dir, topk=K, verify=False)
    mamba.item_vocab.save(str(m_dir))
    export_model(tc, tc_dir, topk=K, verify=False)
    tc.item_vocab.save(str(tc_dir))
    export_model(tc, gaps_dir, topk=K, verify=False, time_input="gaps")
    tc.item_vocab.save(str(gaps_dir))
    repo = tmp_path_factory.mktemp("xp_repo")
    for d, name in ((m_dir, "m4r_explicit"), (tc_dir, "tc_explicit"), (gaps_dir, "tc_gaps_explicit")):
        T.write_repository(d, repo, name=name, backend="python", state="explicit",
                           vocab_path=str(d / "item_vocab.json"), max_batch_size=8)
    try:
        h = S.start_server(repo, timeout=240)
    except RuntimeError as e:
        pytest.skip(f"the pytriton tritonserver could not start here: {e}")
    yield h, mamba, tc
    h.stop()
    assert not h.alive()


def _capped(h, name, vocab, protocol="http"):
    """An explicit-state client of ``name`` whose per-request cap is forced to :data:`CAP` (the python backend has
    none), recording each request's (rows, new items)."""
    from export.triton_client import ExplicitStateRecommender

    rec = ExplicitStateRecommender(h.grpc_url if protocol == "grpc" else h.http_url, name, protocol=protocol,
                                   vocab=vocab, store=_Store())
    assert rec.backend == "python" and rec.max_new_items is None
    rec.max_new_items = CAP
    sent, infer = [], rec.client.infer

    def recorded(model_name, ins, *a, **kw):
        sent.append(tuple(next(i for i in ins if i.name() == "item_ids").shape()))
        return infer(model_name, ins, *a, **kw)

    rec.client.infer = recorded
    return rec, sent


def _torch_steps(model, events):
    """PyTorch ``model.step`` along one user's events (internal indices) -> per event ``(scores [n_items] with
    [0] = -inf, state as numpy)``."""
    st, out = model.init_state(1), []
    with torch.no_grad():
        for items in events:
            logits, st = model.step(torch.tensor([items]), st)
            sc = logits[0].float().numpy().copy()
            sc[0] = -np.inf
            out.append((sc, {k: v.numpy() for k, v in st.items()}))
    return out


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_live_split_explicit_priming_answers_as_one_request_and_pytorch(explicit_server, protocol):
    """Mamba4Rec's explicit-state model on a real server: a 23-item history primed through a client capped at 5
    items a request goes as 5+5+5+5+3 and answers as the same history primed in one request and as PyTorch
    (model.step and the full forward: same top-k, scores within 1e-4), storing the same state as both (each piece's
    returned states were the next one's inputs); the users then go on (single events, a 7-item event split 5+2,
    two users' long events as batch rows) answering alike. A stored state is written once per user and call."""
    h, mamba, _ = explicit_server
    from export.triton_client import ExplicitStateRecommender

    v = mamba.item_vocab
    capped, sent = _capped(h, "m4r_explicit", v, protocol)
    whole = ExplicitStateRecommender(h.grpc_url, "m4r_explicit", protocol="grpc", vocab=v, store=_Store())
    rng = random.Random(5)
    history = [rng.randrange(1, N_ITEMS) for _ in range(23)]
    events = [history, [rng.randrange(1, N_ITEMS)], [rng.randrange(1, N_ITEMS) for _ in range(7)],
              [rng.randrange(1, N_ITEMS)]]
    refs = _torch_steps(mamba, events)
    prefix, worst = [], 0.0
    for i, e in enumerate(events):                         # start=True: what prime() sends
        prefix = prefix + e
        a_ids, a_sc = capped.recommend_with_scores("u", v.decode(e), start=i == 0)
        b_ids, b_sc = whole.recommend_with_scores("u", v.decode(e), start=i == 0)
        ref_ids, ref_sc = _reference_topk(mamba, [prefix])[0]
        step_sc, step_state = refs[i]
        np.testing.assert_allclose(step_sc[1:], ref_sc[1:], atol=1e-4)       # model.step is the full forward
        a, b = v.encode(a_ids), v.encode(b_ids)
        assert _same_topk(a, b, ref_sc) and _same_topk(a, ref_ids, ref_sc), (i, a, b, ref_ids)
        np.testing.assert_allclose(a_sc, step_sc[a], atol=1e-4)
        np.testing.assert_allclose(b_sc, step_sc[b], atol=1e-4)
        for n in capped.state_names:                                  # the stored states: split = whole = PyTorch
            np.testing.assert_allclose(capped.store["u"][n], whole.store["u"][n], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(capped.store["u"][n][0], step_state[n][0], rtol=1e-4, atol=1e-4)
        worst = max(worst, float(np.abs(a_sc - step_sc[a]).max()))
    assert sent == [(1, 5)] * 4 + [(1, 3), (1, 1), (1, 5), (1, 2), (1, 1)]
    assert capped.store.writes == ["u"] * 4
    sent.clear()
    ref_ids, ref_sc = _reference_topk(mamba, [history])[0]
    assert _same_topk(v.encode(capped.prime("p", v.decode(history))), ref_ids, ref_sc)
    assert sent == [(1, 5)] * 4 + [(1, 3)] and capped.store.writes[-1] == "p"
    for n in capped.state_names:
        np.testing.assert_allclose(capped.store["p"][n][0], refs[0][1][n][0], rtol=1e-4, atol=1e-4)
    print(f"split explicit priming ({protocol}): top-{K} as unsplit and PyTorch, max abs score error {worst:.1e}")
    # two users' long events in one call: their pieces as the rows of each round's request
    sent.clear()
    more = {u: [rng.randrange(1, N_ITEMS) for _ in range(n)] for u, n in (("x", 12), ("y", 11))}
    got = capped.recommend_many([(u, v.decode(e)) for u, e in more.items()], start=True)
    assert sent == [(2, 5), (2, 5), (1, 2), (1, 1)]
    for (top, sc), (u, e) in zip(got, more.items(), strict=True):
        ref_ids, ref_sc = _reference_topk(mamba, [e])[0]
        assert _same_topk(v.encode(top), ref_ids, ref_sc)
        np.testing.assert_allclose(sc, ref_sc[v.encode(top)], atol=1e-4)
    capped.close()
    whole.close()


@pytest.mark.parametrize("name", ["tc_gaps_explicit", "tc_explicit"])
def test_live_split_explicit_priming_of_time_aware_models_matches_model_step(explicit_server, name):
    """TiM4Rec-causal, the gaps form (the client stores last_ts and sends float32 gaps: each piece's first gap from
    the previous piece's last timestamp) and the float64 form (last_ts a graph state, passed from piece to piece): a
    13-item history with timestamps primed in pieces of 5, then single events, answers as PyTorch model.step over
    the whole history and as the history primed whole; the stored last_ts is the exact last timestamp and the SSD
    state PyTorch's."""
    h, _, tc = explicit_server
    from export.triton_client import ExplicitStateRecommender

    v = tc.item_vocab
    capped, sent = _capped(h, name, v)
    whole = ExplicitStateRecommender(h.http_url, name, protocol="http", vocab=v, store=_Store())
    assert capped.time_gaps == (name == "tc_gaps_explicit")
    rng = np.random.default_rng(11)
    ts = _ts(rng, 16)
    items = [int(x) for x in rng.integers(1, TC_ITEMS, size=16)]
    plan = [(items[:13], ts[:13])] + [([items[i]], [ts[i]]) for i in range(13, 16)]
    refs = _step_reference(tc, plan)
    served, unsplit = [], []
    for i, (it, t) in enumerate(plan):
        top, sc = capped.recommend_with_scores("g", v.decode(it), timestamps=t, start=i == 0)
        served.append((v.encode(top), sc))
        top, sc = whole.recommend_with_scores("g", v.decode(it), timestamps=t, start=i == 0)
        unsplit.append((v.encode(top), sc))
        if i == 0:
            assert capped.store["g"]["last_ts"].tolist() == [[ts[12]]]
            np.testing.assert_allclose(capped.store["g"]["ssm_state"], whole.store["g"]["ssm_state"],
                                       rtol=1e-4, atol=1e-4)
    assert sent == [(1, 5), (1, 5), (1, 3)] + [(1, 1)] * 3
    _check_served(served, refs, f"{name} primed in pieces of 5")
    _check_served(unsplit, refs, f"{name} primed whole")
    st = capped.store["g"]
    assert st["last_ts"].dtype == np.float64 and st["last_ts"][0, 0] == ts[15]
    np.testing.assert_allclose(st["ssm_state"][0], refs[-1][1]["ssm_state"][0], rtol=1e-4, atol=1e-4)
    capped.close()
    whole.close()
