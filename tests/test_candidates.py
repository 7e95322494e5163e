"""``export.onnx --candidates``: a ``candidates [B, C]`` input restricting each row's ranking to the items it lists
(a retrieval stage's candidates, the items of a page), in the graph, the verifier and ``export.runtime``."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import zoo  # noqa: F401  (registers the models)
from export import onnx as E
from export import verify as V
from export.runtime import SEEN_SCORE, OnnxStepSession, OnnxWindowSession, UserStateRecommender
from test_export_onnx import N_ITEMS, make_model

SMALL = dict(prime_len=30, n_steps=30, topk_cases=300)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """name -> (model, ExportResult): verified ``--candidates`` exports (with the scores output) of tiny models."""
    torch.set_num_threads(1)
    out = {}
    for key, name, kw in (("step", "mamba4rec-1l", {}), ("seen", "lrurec", dict(exclude_seen=True)),
                          ("window", "sasrec", dict(kind="window")), ("plain", "mamba4rec-1l", dict(candidates=False))):
        model = make_model(name)
        vk = dict(topk_cases=300) if kw.get("kind") == "window" else SMALL
        out[key] = (model, E.export_model(model, tmp_path_factory.mktemp(key), topk=5, with_scores=True,
                                          **{"candidates": True, **kw}, verify_kwargs=vk))
    return out


def _torch_scores(model, hist: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits, _ = model.step(torch.from_numpy(hist), model.init_state(hist.shape[0]))
    s = logits.numpy().astype(np.float64)
    s[:, 0] = -np.inf
    return s


def test_candidates_restrict_each_row_to_its_items(graphs):
    """A restricted row's top-k are its best candidates in PyTorch's order; padding (0) and repeats do not count;
    a row listing fewer than k leaves empty slots (id 0, -inf); a row with no real candidate (all 0), and a batch
    with C = 0, rank the whole catalogue exactly as the graph without the input."""
    model, res = graphs["step"]
    sess = OnnxStepSession(os.path.dirname(res.graph_path))
    plain = OnnxStepSession(os.path.dirname(graphs["plain"][1].graph_path))
    hist = np.array([[3, 9, 14], [7, 7, 2], [11, 5, 40], [1, 2, 3]])
    ref = _torch_scores(model, hist)
    cands = np.array([[0, 21, 4, 33, 8, 50, 17, 0],             # 6 items among padding
                      [12, 0, 12, 30, 0, 0, 0, 0],              # 2 distinct items, one twice: 3 empty slots
                      [0, 0, 0, 0, 0, 0, 0, 0],                 # not restricted
                      [5, 6, 7, 8, 9, 10, 11, 13]])
    out = sess.step(hist, sess.init_state(4), candidates=cands)
    for r in (0, 3):
        items = sorted({int(c) for c in cands[r] if c}, key=lambda i: -ref[r, i])
        assert out.topk_ids[r].tolist() == items[:5]
        np.testing.assert_allclose(out.topk_scores[r], ref[r, items[:5]], atol=1e-4)
    assert out.topk_ids[1, :2].tolist() == sorted([12, 30], key=lambda i: -ref[1, i])
    assert (out.topk_ids[1, 2:] == 0).all() and np.isneginf(out.topk_scores[1, 2:]).all()
    free = plain.step(hist, plain.init_state(4))
    np.testing.assert_array_equal(out.topk_ids[2], free.topk_ids[2])
    allowed = np.isfinite(out.scores[0])
    assert sorted(np.flatnonzero(allowed)) == sorted({int(c) for c in cands[0] if c})
    unrestricted = sess.step(hist, sess.init_state(4))                     # candidates=None -> C = 0
    np.testing.assert_array_equal(unrestricted.topk_ids, free.topk_ids)
    np.testing.assert_allclose(unrestricted.topk_scores, free.topk_scores, atol=1e-6)
    # the candidates only pick among the scores: the new state is the same with and without them
    for n in out.state:
        np.testing.assert_array_equal(out.state[n], unrestricted.state[n])


def test_candidates_with_exclude_seen(graphs):
    """With --exclude-seen a candidate of the history ranks after every unseen candidate (SEEN_SCORE), and an item
    of the history that is not a candidate is not ranked at all (-inf, never SEEN_SCORE)."""
    model, res = graphs["seen"]
    sess = OnnxStepSession(os.path.dirname(res.graph_path))
    hist = np.array([[4, 8, 15, 16, 23]])
    out = sess.step(hist, sess.init_state(1), candidates=np.array([[8, 15, 30, 31, 0]]))
    ids, scores = out.topk_ids[0].tolist(), out.topk_scores[0]
    assert set(ids[:2]) == {30, 31} and set(ids[2:4]) == {8, 15} and ids[4] == 0
    assert (scores[2:4] == SEEN_SCORE).all() and np.isneginf(scores[4])
    assert np.isneginf(out.scores[0, [4, 16, 23]]).all()                   # seen, not candidates


def test_user_state_recommender_drops_the_seen_items_an_exclude_seen_graph_ranks_last(graphs):
    """An --exclude-seen graph fills the top-k slots it has no unseen item for with items of the history at
    SEEN_SCORE; UserStateRecommender returned them as recommendations (the history's 5, 6, 7, 8 after the one unseen
    candidate). It now drops them, as it drops empty slots: fewer than k ids come back, as its docstring says, with
    candidates and without (a history covering nearly the whole catalogue)."""
    _, res = graphs["seen"]
    rec = UserStateRecommender(os.path.dirname(res.graph_path))
    rec.prime("u", [5, 6, 7, 8])
    ids, scores = rec.recommend_with_scores("u", [9], candidates=[5, 6, 7, 8, 9, 10])
    assert ids == [10] and len(scores) == 1 and scores[0] > SEEN_SCORE, (ids, scores)
    got = rec.recommend_many([("u", [11]), ("v", [3])], candidates=[[5, 6, 12, 13], [20, 21, 22, 23, 24, 25]])
    assert sorted(got[0][0]) == [12, 13] and len(got[0][1]) == 2 and (got[0][1] > SEEN_SCORE).all()
    assert len(got[1][0]) == 5 and (got[1][1] > SEEN_SCORE).all()               # enough unseen: all k
    rec.prime("w", list(range(1, N_ITEMS - 2)))
    assert rec.recommend("w", [N_ITEMS - 2]) == [N_ITEMS - 1]                    # one item left unseen


def test_candidates_window_graph(graphs):
    model, res = graphs["window"]
    sess = OnnxWindowSession(os.path.dirname(res.graph_path))
    out = sess.recommend([[3, 4, 5], [6, 7]], candidates=np.array([[10, 11, 12, 13, 14, 15], [0, 0, 0, 0, 0, 0]]))
    assert set(out.topk_ids[0]) <= {10, 11, 12, 13, 14, 15} and len(set(out.topk_ids[0])) == 5
    assert np.isfinite(out.topk_scores[1]).all() and (out.topk_ids[1] > 0).all()


def test_spec_card_and_verification_record_the_candidates(graphs):
    _, res = graphs["step"]
    spec = json.loads(pathlib.Path(res.spec_path).read_text())
    assert spec["candidates"] is True and spec["inputs"][-1]["name"] == "candidates"
    assert spec["inputs"][-1]["shape"] == ["B", "C"] and spec["inputs"][-1]["dtype"] == "int64"
    assert "candidates" in E.card_section(spec, "onnx") and "`candidates` input" in E.card_section(spec, "onnx")
    assert graphs["plain"][1].spec["candidates"] is False
    assert all(c.ok for c in res.report.cases)


def test_verification_catches_a_graph_that_ignores_the_candidates(graphs):
    """Negative control: a runtime that drops the candidates (ranks the whole catalogue) fails verification, on the
    -inf mask of the scores and on the top-k."""
    model, res = graphs["step"]
    sess = V.scores_session(res.graph_path)

    class Ignoring:
        def run(self, names, feeds):
            b = feeds["item_ids"].shape[0]
            return sess.run(names, {**feeds, "candidates": np.zeros((b, 0), np.int64)})

    rep = V.verify_export(model, res.graph_path, res.spec, runner=Ignoring(), **SMALL)
    assert not rep.ok and all("score error inf" in c.reason for c in rep.cases), rep.table()


def test_random_candidates_cover_the_rules():
    rng = np.random.default_rng(0)
    c = V._rand_candidates(rng, 4000, N_ITEMS, 5)
    real = (c > 0).sum(1)
    distinct = np.array([len(set(r[r > 0])) for r in c])
    assert c.shape == (4000, 17) and c.min() >= 0 and c.max() < N_ITEMS
    assert 0.08 < (real == 0).mean() < 0.17 and 0.08 < ((real > 0) & (real < 5)).mean() < 0.17
    assert (distinct < real).any()                                        # some repeats
    ref = np.zeros((2, 6), np.float32)
    masked = V._mask_candidates(ref, np.array([[2, 0], [0, 0]]))
    assert np.isneginf(masked[0, [0, 1, 3, 4, 5]]).all() and masked[0, 2] == 0 and np.isfinite(masked[1]).all()


def test_runtime_refuses_bad_candidates(graphs):
    sess = OnnxStepSession(os.path.dirname(graphs["step"][1].graph_path))
    plain = OnnxStepSession(os.path.dirname(graphs["plain"][1].graph_path))
    hist = np.array([[1, 2]])
    with pytest.raises(ValueError, match="no candidates input: export it with python -m export.onnx --candidates"):
        plain.step(hist, plain.init_state(1), candidates=np.array([[3]]))
    with pytest.raises(ValueError, match=r"candidates\[0, 1\] = 60 is out of range 0..59"):
        sess.step(hist, sess.init_state(1), candidates=np.array([[3, N_ITEMS]]))
    with pytest.raises(ValueError, match=r"candidates\[0, 0\] = -1"):
        sess.step(hist, sess.init_state(1), candidates=np.array([[-1]]))
    with pytest.raises(ValueError, match=r"shape \[batch=1, C\], got shape \[2, 1\]"):
        sess.step(hist, sess.init_state(1), candidates=np.array([[3], [4]]))
    with pytest.raises(TypeError, match="integer item indices"):
        sess.step(hist, sess.init_state(1), candidates=np.array([[3.5]]))
    np.testing.assert_array_equal(sess.encode_candidates([[5, 6, 7], None, []]),
                                  [[5, 6, 7], [0, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match=r"candidates\[0, 1\] = 99 is out of range"):   # internal indices: step's check
        sess.step(hist, sess.init_state(1), candidates=np.array([[5, 99]]))
    # identity ids are checked as they are encoded: 0 would read as padding and leave the row unrestricted
    for bad in (99, 0, -3):
        with pytest.raises(ValueError, match=rf"candidates of row 1: item id {bad} is out of range 1\.\.59 \(0 is "
                                             r"padding, not an item\)"):
            sess.encode_candidates([[5], [6, bad]])
    # rows of different lengths given as lists are padded with 0 (numpy refused them as an inhomogeneous array)
    ragged = sess.step(np.array([[1], [2]]), sess.init_state(2), candidates=[[5, 6, 7], [8]])
    padded = sess.step(np.array([[1], [2]]), sess.init_state(2), candidates=np.array([[5, 6, 7], [8, 0, 0]]))
    np.testing.assert_array_equal(ragged.topk_ids, padded.topk_ids)
    with pytest.raises(TypeError, match="candidates row 1 must hold integer item indices"):
        sess.step(np.array([[1], [2]]), sess.init_state(2), candidates=[[5, 6, 7], [8.5]])
    # a None row is not restricted, as in UserStateRecommender and encode_candidates (numpy's inhomogeneous error)
    free = sess.step(np.array([[1], [2]]), sess.init_state(2), candidates=[None, [8]])
    np.testing.assert_array_equal(free.topk_ids, sess.step(np.array([[1], [2]]), sess.init_state(2),
                                                           candidates=[[], [8]]).topk_ids)
    np.testing.assert_array_equal(free.topk_ids[0], plain.step(np.array([[1]]), plain.init_state(1)).topk_ids[0])
    with pytest.raises(ValueError, match=r"^candidates: rows must be lists of item indices \(or None\)"):
        sess.step(np.array([[1], [2]]), sess.init_state(2), candidates=[[5], 6])


def test_user_state_recommender_with_candidates(graphs):
    """Candidates per event: each user's ids come from their own list (shorter when it lists fewer than k), a user
    without candidates is not restricted, and the stored states are those of the same events without candidates."""
    _, res = graphs["step"]
    folder = os.path.dirname(res.graph_path)
    a, b = UserStateRecommender(folder), UserStateRecommender(folder)
    a.prime("u", [1, 2, 3])
    b.prime("u", [1, 2, 3])
    got = a.recommend_many([("u", [4]), ("v", [5])], candidates=[[10, 11, 12], None])
    free = b.recommend_many([("u", [4]), ("v", [5])])
    assert set(got[0][0]) == {10, 11, 12} and len(got[0][1]) == 3 and np.isfinite(got[0][1]).all()
    assert got[1][0] == free[1][0]
    for user in ("u", "v"):
        for n, arr in a.store[user].items():
            np.testing.assert_array_equal(arr, b.store[user][n])
    assert set(a.recommend("u", [6], candidates=[20, 21, 22, 23, 24, 25, 26])) <= set(range(20, 27))
    with pytest.raises(ValueError, match="one list per event"):
        a.recommend_many([("u", [4])], candidates=[[1], [2]])
    plain = UserStateRecommender(os.path.dirname(graphs["plain"][1].graph_path))
    with pytest.raises(ValueError, match="no candidates input"):
        plain.recommend("u", [4], candidates=[1, 2])


def test_user_state_recommender_names_the_event_of_a_bad_candidate(graphs):
    """Each event's candidates were encoded alone, so a bad id of event 2 was reported as "row 0"."""
    rec = UserStateRecommender(os.path.dirname(graphs["step"][1].graph_path))
    events = [("u", [4]), ("v", [5]), ("w", [6])]
    with pytest.raises(ValueError, match=r"^candidates of event 2 \(user 'w'\): item id 99 is out of range 1\.\.59"):
        rec.recommend_many(events, candidates=[None, [7], [8, 99]])
    with pytest.raises(TypeError, match=r"^candidates of event 1 \(user 'v'\): item id 7\.5 \(float\) is not an"):
        rec.recommend_many(events, candidates=[None, [7.5], None])
    assert not rec.store


def test_candidates_in_fp16_and_int8_graphs(tmp_path):
    """The candidates' mask is part of the fp32 score tail of an fp16 graph and passes through int8 quantization."""
    model = make_model("mamba4rec-1l")
    for precision in ("fp16", "int8"):
        res = E.export_model(model, tmp_path / precision, topk=5, precision=precision, candidates=True,
                             verify_kwargs=SMALL)
        assert res.report.ok, res.report.table()
    sess = OnnxStepSession(str(tmp_path / "fp16"))
    out = sess.step(np.array([[1, 2]]), sess.init_state(1), candidates=np.array([[7, 9]]))
    assert set(out.topk_ids[0, :2]) == {7, 9} and (out.topk_ids[0, 2:] == 0).all()
    assert np.isneginf(out.topk_scores[0, 2:]).all()


def test_cli_candidates(tmp_path, capsys):
    d = tmp_path / "m"
    make_model("gru4rec").save_pretrained(d)
    out = tmp_path / "out"
    assert E.main(["--model", str(d), "--out", str(out), "--candidates", "--verify-prime", "20", "--verify-steps", "20",
                   "--verify-cases", "200"]) == 0
    text = capsys.readouterr().out
    assert "candidates input" in text and "| in | `candidates` | [B, C] | int64 |" in text
