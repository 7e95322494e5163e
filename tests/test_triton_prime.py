"""TritonRecommender splits an event past the model's per-request cap on new items (a TensorRT engine's profile).

A TensorRT engine takes new items ``T`` in ``[1, max_seq_length]`` a request (``export.trt.profile_shapes``): a longer
``prime()`` history (or a long ``recommend()`` event) went as one request, which such an engine refuses, while the
onnxruntime and python backends took it. The client now reads the cap (:attr:`TritonRecommender.max_new_items`: a
tensorrt config's ``max_seq_length`` parameter) and sends such an event as consecutive requests of at most the cap:
START on the first, END on the last, timestamps / time gaps split with the items, candidates and ``k`` on the last,
whose answer comes back. A step model answers the same either way (a prefix's state stepped through the rest is
the whole history's state), checked on a real server (python backend, the cap forced on the client) against the
unsplit call and PyTorch.
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_triton import (K, N_ITEMS, STEP_IO, _check_served, _fake_http_client, _mamba,  # noqa: E402
                         _reference_topk, _same_topk, _step_reference, _tim4rec_causal, _ts)

from export import triton as T  # noqa: E402
from export.onnx import export_model  # noqa: E402

TRT_CAP = {"parameters": {"max_seq_length": "4"}, "backend": "tensorrt"}


def _client(monkeypatch, io=STEP_IO, on_infer=None, **config):
    """A TritonRecommender (HTTP) on ``_fake_http_client``'s stand-in (``config``: its parameters / backend), whose
    calls also record the outputs each request asked for, and whose answer to request ``i`` (1-based) ranks the items
    ``i, i+1, ...`` first (so which request's answer came back shows)."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from export.triton_client import TritonRecommender

    calls, fail = _fake_http_client(monkeypatch, *io, on_infer=on_infer, **config)
    rec = TritonRecommender("127.0.0.1:1", "m", protocol="http", n_items=N_ITEMS)
    sent = rec.client.infer

    def infer(model_name, ins, outputs=None, **kw):
        r = sent(model_name, ins, outputs=outputs, **kw)
        calls[-1]["outputs"] = [o.name() for o in outputs]
        i = len([c for c in calls if c != "close"])

        class Answer:
            def as_numpy(self, name):
                return np.arange(i, i + K, dtype=np.int64)[None] if name == "topk_ids" else r.as_numpy(name)
        return Answer()

    rec.client.infer = infer
    return rec, calls, fail


def _sizes(calls):
    return [c["arrays"]["item_ids"].shape[1] for c in calls]


def _flags(calls):
    return [(c["sequence_start"], c["sequence_end"]) for c in calls]


def test_an_event_past_a_tensorrt_models_cap_goes_in_requests_of_the_cap(monkeypatch):
    """prime() of 10 items on a tensorrt model whose config says max_seq_length 4: requests of 4, 4, 2 items, in
    order, one sequence, START on the first only; the pieces are the history; the first two ask only for
    live_sequences, the last's top-k (k applied) comes back. An event of exactly the cap goes whole; end=True goes on
    the last piece; recommend_many splits its long events alike."""
    from export.triton_client import sequence_id

    rec, calls, _ = _client(monkeypatch, **TRT_CAP)
    assert rec.backend == "tensorrt" and rec.max_new_items == 4
    history = [(7 * i) % (N_ITEMS - 1) + 1 for i in range(10)]
    top = rec.prime("u", history, k=3)
    assert _sizes(calls) == [4, 4, 2] and _flags(calls) == [(True, False), (False, False), (False, False)]
    assert {c["sequence_id"] for c in calls} == {sequence_id("u")}
    assert np.concatenate([c["arrays"]["item_ids"][0] for c in calls]).tolist() == history
    assert [c["outputs"] for c in calls[:2]] == [["live_sequences"]] * 2
    assert calls[2]["outputs"][:2] == ["topk_ids", "topk_scores"]
    assert top == [3, 4, 5]                                         # the third request's answer, k=3
    calls.clear()
    rec.recommend("u", [1, 2, 3, 4])
    assert _sizes(calls) == [4] and _flags(calls) == [(False, False)]
    calls.clear()
    rec.recommend("u", list(range(1, 10)), end=True)
    assert _sizes(calls) == [4, 4, 1] and _flags(calls) == [(False, False)] * 2 + [(False, True)]
    calls.clear()
    rec.recommend_many([("a", [1, 2, 3, 4, 5]), ("b", [6])])
    got = {(c["sequence_id"], c["arrays"]["item_ids"].shape[1], c["sequence_start"]) for c in calls}
    assert got == {(sequence_id("a"), 4, True), (sequence_id("a"), 1, False), (sequence_id("b"), 1, True)}
    assert len(calls) == 3


@pytest.mark.parametrize("config", [{"parameters": {"max_seq_length": "4"}, "backend": "onnxruntime"},
                                    {"parameters": {"max_seq_length": "4"}, "backend": "python"},
                                    {"backend": "tensorrt"}])
def test_no_cap_no_split(monkeypatch, config):
    """The onnxruntime and python backends take any number of new items (max_seq_length, were it there, is no cap
    of theirs), and a tensorrt config without the parameter declares none: the history goes in ONE request."""
    rec, calls, _ = _client(monkeypatch, **config)
    assert rec.max_new_items is None
    rec.prime("u", list(range(1, 11)))
    assert _sizes(calls) == [10] and _flags(calls) == [(True, False)]


def test_a_cap_that_is_no_positive_int_is_refused(monkeypatch):
    from export.triton_client import TritonRecommendError

    rec, calls, _ = _client(monkeypatch, parameters={"max_seq_length": "0"}, backend="tensorrt")
    with pytest.raises(TritonRecommendError, match="max_seq_length parameter is '0', not a positive int"):
        rec.prime("u", [1, 2])
    assert calls == []


def test_split_event_candidates_go_with_the_last_piece(monkeypatch):
    """A --candidates model (the tensorrt config requires the input): the pieces before the last carry one 0 (no
    restriction; their answers are dropped), the last the caller's candidates."""
    io = ({**STEP_IO[0], "candidates": ("INT64", (-1, -1))}, STEP_IO[1])
    rec, calls, _ = _client(monkeypatch, io, **TRT_CAP)
    rec.prime("u", list(range(1, 7)), candidates=[5, 6, 7])
    assert _sizes(calls) == [4, 2]
    assert [c["arrays"]["candidates"].tolist() for c in calls] == [[[0]], [[5, 6, 7]]]


@pytest.mark.parametrize("time_input", ["timestamps", "time_gaps"])
def test_split_event_timestamps_go_with_their_items(monkeypatch, time_input):
    """float64 timestamps split with the items; a gaps model's pieces carry the gaps of the whole event (each
    piece's first gap from the previous piece's last timestamp, the first 0 after a START), and the next event's first
    gap comes from the last timestamp of the whole event."""
    from export.timestamps import time_gaps

    dtype = "FP64" if time_input == "timestamps" else "FP32"
    io = ({**STEP_IO[0], time_input: (dtype, (-1, -1))}, STEP_IO[1])
    if time_input == "time_gaps":                     # the form TensorRT builds
        rec, calls, _ = _client(monkeypatch, io, **TRT_CAP)
    else:                                               # float64: no TensorRT model; the cap forced on the client
        rec, calls, _ = _client(monkeypatch, io, backend="onnxruntime")
        rec.max_new_items = 4
    ts = [1.6e9 + 0.5 + 37.0 * i * i for i in range(10)]
    rec.prime("u", list(range(1, 11)), timestamps=ts)
    assert _sizes(calls) == [4, 4, 2] and [c["arrays"][time_input].shape for c in calls] == [(1, 4), (1, 4), (1, 2)]
    sent = np.concatenate([c["arrays"][time_input][0] for c in calls])
    if time_input == "timestamps":
        assert sent.tolist() == ts
    else:
        want = time_gaps(np.array([ts]), np.array([[-1.0]]))[0][0].astype(np.float32)
        assert sent.tolist() == want.tolist() and sent[0] == 0 and sent[4] == np.float32(ts[4] - ts[3])
    calls.clear()
    rec.recommend("u", [3], timestamps=[ts[-1] + 5.0])
    assert calls[0]["arrays"][time_input].tolist() == ([[ts[-1] + 5.0]] if time_input == "timestamps" else [[5.0]])


def test_a_piece_refused_part_way_leaves_the_sequence_to_prime(monkeypatch):
    """The server refuses the second piece: the error says how many items were applied and to prime; the sequence's
    next event is refused without being sent (its state holds part of the event); prime() restarts it. A refused
    first piece (nothing applied) is the server's plain error, as for an event sent whole."""
    from export.triton_client import TritonRecommendError

    box = {"n": 0, "refuse": 2}

    def refuse(call):                                   # the box["refuse"]-th request (1-based) is refused
        box["n"] += 1
        box["fail"][0] = "m: item index 500 is out of range 1..119" if box["n"] == box["refuse"] else None

    rec, calls, fail = _client(monkeypatch, on_infer=refuse, **TRT_CAP)
    box["fail"] = fail
    with pytest.raises(TritonRecommendError, match=r"'u': the event's 10 items went in requests of at most 4 .*the "
                                                   r"first 4 were applied, then: .*out of range.*prime\(\)"):
        rec.prime("u", list(range(1, 11)))
    assert _sizes(calls) == [4, 4]
    with pytest.raises(TritonRecommendError, match="refused part way"):
        rec.recommend("u", [1])
    assert len(calls) == 2                                          # nothing sent
    calls.clear()
    rec.prime("u", list(range(1, 11)))
    assert _sizes(calls) == [4, 4, 2] and _flags(calls)[0] == (True, False)
    calls.clear()
    box.update(n=0, refuse=1)
    with pytest.raises(TritonRecommendError, match=r"^m: item index 500 is out of range 1\.\.119$"):
        rec.prime("v", list(range(1, 11)))
    assert _sizes(calls) == [4]


# ================================================================================================ live server
CAP = 5


@pytest.fixture(scope="module")
def prime_server(tmp_path_factory):
    """A real tritonserver (pytriton's, python backend) serving the Mamba4Rec step graph and the TiM4Rec-causal gaps
    form (what export.trt builds) with sequence batchers; skipped, with the reason, without the server venv."""
    from export import triton_server as S

    try:
        S.server_python()
    except RuntimeError as e:
        pytest.skip(str(e))
    mamba, tc = _mamba(), _tim4rec_causal()
    m_dir, tc_dir = tmp_path_factory.mktemp("prime_mamba"), tmp_path_factory.mktemp("prime_tc_gaps")
    export_model(mamba, m_dir, topk=K, verify=False)
    mamba.item_vocab.save(str(m_dir))
    export_model(tc, tc_dir, topk=K, verify=False, time_input="gaps")
    tc.item_vocab.save(str(tc_dir))
    repo = tmp_path_factory.mktemp("prime_repo")
    T.write_repository(m_dir, repo, name="m4r", backend="python", vocab_path=str(m_dir / "item_vocab.json"),
                       idle_timeout_s=60, max_batch_size=8)
    T.write_repository(tc_dir, repo, name="tc_gaps", backend="python", vocab_path=str(tc_dir / "item_vocab.json"),
                       idle_timeout_s=60, max_batch_size=8)
    try:
        h = S.start_server(repo, timeout=240)
    except RuntimeError as e:
        pytest.skip(f"the pytriton tritonserver could not start here: {e}")
    yield h, mamba, tc
    h.stop()
    assert not h.alive()


def _capped(h, name, vocab, protocol="grpc"):
    """A client of ``name`` whose per-request cap is forced to :data:`CAP` (the python backend has none), recording
    each request's (items, START, END)."""
    from export.triton_client import TritonRecommender

    rec = TritonRecommender(h.grpc_url if protocol == "grpc" else h.http_url, name, protocol=protocol, vocab=vocab)
    assert rec.backend == "python" and rec.max_new_items is None
    rec.max_new_items = CAP
    sent, infer = [], rec.client.infer

    def recorded(model_name, ins, *a, **kw):
        items = next(i for i in ins if i.name() == "item_ids")
        sent.append((items.shape()[1], kw["sequence_start"], kw["sequence_end"]))
        return infer(model_name, ins, *a, **kw)

    rec.client.infer = recorded
    return rec, sent


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_live_split_priming_answers_as_one_request_and_pytorch(prime_server, protocol):
    """Mamba4Rec on a real server: a 23-item history primed through a client capped at 5 items a request goes as
    5+5+5+5+3 and answers as the same history primed in one request (same top-k, scores within 1e-4) and as
    PyTorch's full forward; the sequences then go on (single events, a 7-item event split 5+2) answering alike."""
    h, mamba, _ = prime_server
    from export.triton_client import TritonRecommender

    v = mamba.item_vocab
    capped, sent = _capped(h, "m4r", v, protocol)
    whole = TritonRecommender(h.grpc_url, "m4r", protocol="grpc", vocab=v)
    rng = random.Random(5)
    history = [rng.randrange(1, N_ITEMS) for _ in range(23)]
    events = [history, [rng.randrange(1, N_ITEMS)], [rng.randrange(1, N_ITEMS)],
              [rng.randrange(1, N_ITEMS) for _ in range(7)], [rng.randrange(1, N_ITEMS)]]
    users = (f"split-{protocol}", f"whole-{protocol}")
    assert capped.prime(users[0] + "-ids", v.decode(history)) == whole.prime(users[1] + "-ids", v.decode(history))
    assert sent[:5] == [(5, True, False)] + [(5, False, False)] * 3 + [(3, False, False)]
    sent.clear()
    prefix, worst = [], 0.0
    for i, e in enumerate(events):
        prefix = prefix + e
        a_ids, a_sc = capped.recommend_with_scores(users[0], v.decode(e), start=True if i == 0 else None)
        b_ids, b_sc = whole.recommend_with_scores(users[1], v.decode(e), start=True if i == 0 else None)
        ref_ids, ref_sc = _reference_topk(mamba, [prefix])[0]
        a, b = v.encode(a_ids), v.encode(b_ids)
        assert _same_topk(a, b, ref_sc) and _same_topk(a, ref_ids, ref_sc), (i, a, b, ref_ids)
        np.testing.assert_allclose(a_sc, ref_sc[a], atol=1e-4)
        np.testing.assert_allclose(b_sc, ref_sc[b], atol=1e-4)
        if np.array_equal(a, b):
            np.testing.assert_allclose(a_sc, b_sc, atol=1e-4)
        worst = max(worst, float(np.abs(a_sc - ref_sc[a]).max()))
    assert [n for n, _, _ in sent] == [5, 5, 5, 5, 3, 1, 1, 5, 2, 1]
    assert [s for _, s, _ in sent] == [True] + [False] * 9
    print(f"split priming ({protocol}): top-{K} as unsplit and PyTorch, max abs score error {worst:.1e}")
    for u in users:
        capped.end(u)
        capped.end(u + "-ids")
    assert capped.last_live_sequences == 0
    capped.close()
    whole.close()


def test_live_split_priming_of_a_gaps_model_matches_model_step(prime_server):
    """TiM4Rec-causal in the gaps form (the client keeps last_ts and sends float32 gaps): a 13-item history with
    timestamps primed in pieces of 5, then single events, answers as PyTorch model.step over the whole history
    (each piece's first gap from the previous piece's last timestamp) and as the history primed whole."""
    h, _, tc = prime_server
    from export.triton_client import TritonRecommender

    v = tc.item_vocab
    capped, sent = _capped(h, "tc_gaps", v)
    whole = TritonRecommender(h.grpc_url, "tc_gaps", protocol="grpc", vocab=v)
    rng = np.random.default_rng(11)
    n_items = int(tc.config.n_items)
    ts = _ts(rng, 16)
    items = [int(x) for x in rng.integers(1, n_items, size=16)]
    plan = [(items[:13], ts[:13])] + [([items[i]], [ts[i]]) for i in range(13, 16)]
    refs = _step_reference(tc, plan)
    served, unsplit = [], []
    for i, (it, t) in enumerate(plan):
        top, sc = capped.recommend_with_scores("g-split", v.decode(it), timestamps=t, start=True if i == 0 else None)
        served.append((v.encode(top), sc))
        top, sc = whole.recommend_with_scores("g-whole", v.decode(it), timestamps=t, start=True if i == 0 else None)
        unsplit.append((v.encode(top), sc))
    assert sent == [(5, True, False), (5, False, False), (3, False, False)] + [(1, False, False)] * 3
    _check_served(served, refs, "gaps form primed in pieces of 5")
    _check_served(unsplit, refs, "gaps form primed whole")
    capped.end("g-split")
    capped.end("g-whole")
    assert capped.last_live_sequences == 0
