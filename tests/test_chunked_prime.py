"""A step graph primes a long history in calls of at most ``max_new_items`` items, the state carried between them.

``export.runtime`` ran a user's whole history (``OnnxStepSession.prime`` / ``step``, ``UserStateRecommender.prime``)
as ONE graph call: its activations grow with the history (~5 KB an item for Mamba4Rec ML-1M, 5.8 GB for 10^6 events)
and ONNX Runtime's CPU arena keeps that peak for the life of the process. A step graph takes ``T >= 1`` new items
with the state in and out, and a prefix followed by more steps is the whole, so the runtime now splits a call past
:attr:`OnnxStepSession.max_new_items` (:data:`export.runtime.MAX_NEW_ITEMS` by default) into consecutive calls. Checked
here for each exact-step model (Mamba4Rec, LRURec, GRU4Rec, TiM4Rec-causal with timestamps into the graph or the gaps
form whose ``last_ts`` the runtime keeps): split priming equals the one-call prime (the same top-k ids, scores and
states within 1e-5) on random histories for pieces of 1, 3 and more than the history, counting the graph calls and
their sizes; a window graph runs only its last ``max_seq_length`` items, in one call, whatever the history.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the step graphs run with ONNX Runtime (pip install -e '.[export]')")

from export.onnx import export_model                                                  # noqa: E402
from export.runtime import MAX_NEW_ITEMS, OnnxStepSession, UserStateRecommender       # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

N_ITEMS = 40
K = 5
TOL = 1e-5


def _sharp(model):
    with torch.no_grad():
        model.item_embedding.weight.normal_(0, 1.0)
    return model.eval()


def _model(name):
    torch.manual_seed(7)
    if name == "mamba4rec":
        from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

        return _sharp(Mamba4RecModel(Mamba4RecConfig(n_items=N_ITEMS, max_seq_length=16, hidden_size=16, num_layers=2,
                                                     d_state=8, dropout_prob=0.0)))
    if name == "lrurec":
        from zoo.models.lrurec import LRURecConfig, LRURecModel

        return _sharp(LRURecModel(LRURecConfig(n_items=N_ITEMS, max_seq_length=16, hidden_size=16, num_layers=2,
                                               hidden_dropout=0.0, attn_dropout=0.0)))
    if name == "gru4rec":
        from zoo.models.gru4rec import GRU4RecConfig, GRU4RecModel

        return _sharp(GRU4RecModel(GRU4RecConfig(n_items=N_ITEMS, max_seq_length=16, embedding_size=16,
                                                 hidden_size=16)))
    from time_models import perturb_time_path
    from zoo.models.tim4rec_causal import TiM4RecCausalConfig, TiM4RecCausalModel

    cfg = TiM4RecCausalConfig(n_items=N_ITEMS, hidden_size=16, num_layers=2, d_state=8, head_dim=8, max_seq_length=16)
    return _sharp(perturb_time_path(TiM4RecCausalModel(cfg), 0.3, torch.Generator().manual_seed(0)))


# (model, export keywords): every exact-step model type, TiM4Rec-causal in both time forms
GRAPHS = {"mamba4rec": ("mamba4rec", {}), "lrurec": ("lrurec", {}), "gru4rec": ("gru4rec", {}),
          "tim4rec-causal": ("tim4rec_causal", dict(time_input="timestamps")),
          "tim4rec-causal-gaps": ("tim4rec_causal", dict(time_input="gaps"))}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """name -> the folder of its exported step graph (top-K, with the scores output; unverified: compared here)."""
    out = {}
    for name, (model, kw) in GRAPHS.items():
        folder = tmp_path_factory.mktemp(name)
        export_model(_model(model), folder, topk=K, with_scores=True, verify=False, **kw)
        out[name] = folder
    return out


class _Counting:
    """Stands in for an ONNX Runtime session: records each call's number of new items (``T``), then runs it."""

    def __init__(self, inner):
        self.inner, self.sizes = inner, []

    def run(self, names, feeds):
        self.sizes.append(int(feeds["item_ids"].shape[1]))
        return self.inner.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _counted(folder, **kw) -> OnnxStepSession:
    sess = OnnxStepSession(folder, threads=1, **kw)
    sess.session = _Counting(sess.session)
    return sess


def _history(rng, sess, rows, n):
    """``rows`` random histories of ``n`` items, and their timestamps (time-aware graphs: Unix seconds, gaps from 0
    to a month so that the time path matters; None otherwise)."""
    ids = rng.integers(1, sess.n_items, size=(rows, n))
    if not sess.uses_timestamps:
        return ids, None
    gaps = rng.choice([0.0, 30.0, 3600.0, 86400.0, 30 * 86400.0], size=(rows, n))
    return ids, 1.6e9 + np.cumsum(gaps, axis=1)


def _assert_same(got, want):
    np.testing.assert_array_equal(got.topk_ids, want.topk_ids)
    np.testing.assert_allclose(got.topk_scores, want.topk_scores, rtol=0, atol=TOL)
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=TOL)
    assert set(got.state) == set(want.state)
    for name, a in want.state.items():
        assert got.state[name].dtype == a.dtype, name
        np.testing.assert_allclose(got.state[name], a, rtol=0, atol=TOL, err_msg=name)


@pytest.mark.parametrize("cap", [1, 3, 100])
@pytest.mark.parametrize("name", list(GRAPHS))
def test_a_prime_in_pieces_equals_the_one_call_prime(graphs, name, cap):
    """Two random histories of 23 items: primed in pieces of ``cap`` items (100: more than the history, one call)
    the top-k ids are the one-call prime's, the scores and every state (TiM4Rec-causal's ``last_ts`` too) within
    1e-5; the calls are ``ceil(23 / cap)``, each of at most ``cap`` items, the last one the rest. Continuing both
    states with one more event gives the same again (the carried ``last_ts`` refuses nothing it should not)."""
    whole, split = _counted(graphs[name], max_new_items=None), _counted(graphs[name], max_new_items=cap)
    rng = np.random.default_rng([cap, len(name)])
    ids, ts = _history(rng, whole, 2, 23)
    want, got = whole.prime(ids, ts), split.prime(ids, ts)
    _assert_same(got, want)
    assert whole.session.sizes == [23]
    n = -(-23 // cap)
    assert split.session.sizes == [cap] * (n - 1) + [23 - cap * (n - 1)]
    if ts is not None:
        np.testing.assert_array_equal(got.state["last_ts"][:, 0], ts[:, -1])
    more, more_ts = _history(rng, whole, 2, 4)
    if more_ts is not None:
        more_ts += ts[:, -1:] - 1.6e9
    _assert_same(split.step(more, got.state, more_ts), whole.step(more, want.state, more_ts))


@pytest.mark.parametrize("name", ["mamba4rec", "tim4rec-causal-gaps"])
def test_a_long_history_runs_in_calls_of_at_most_the_default(graphs, name):
    """The default cap is :data:`MAX_NEW_ITEMS`: a history of 2.5x that many items goes in three calls (the memory
    of one call of at most that many items, however long the history), with the one-call result."""
    assert OnnxStepSession(graphs[name]).max_new_items == MAX_NEW_ITEMS
    split, whole = _counted(graphs[name]), _counted(graphs[name], max_new_items=None)
    ids, ts = _history(np.random.default_rng(3), split, 1, MAX_NEW_ITEMS * 5 // 2)
    got = split.prime(ids, ts)
    assert split.session.sizes == [MAX_NEW_ITEMS, MAX_NEW_ITEMS, MAX_NEW_ITEMS // 2]
    _assert_same(got, whole.prime(ids, ts))


def test_user_states_prime_in_pieces(graphs):
    """``UserStateRecommender(path, max_new_items=...)`` builds its step session with that cap: a primed user's
    stored state, top-k and scores, and the next event's, are those of the unsplit recommender. A session passed in
    keeps its own cap (an explicit one is refused; None there: the default); the cap is an int >= 1 or None."""
    folder = graphs["tim4rec-causal"]
    rng = np.random.default_rng(11)
    split = UserStateRecommender(folder, max_new_items=4)
    whole = UserStateRecommender(OnnxStepSession(folder, max_new_items=None))
    assert (split.session.max_new_items, whole.session.max_new_items) == (4, None)
    assert UserStateRecommender(folder).session.max_new_items == MAX_NEW_ITEMS
    assert UserStateRecommender(folder, max_new_items=None).session.max_new_items == MAX_NEW_ITEMS
    split.session.session = _Counting(split.session.session)
    ids, ts = _history(rng, split.session, 1, 18)
    hist, stamps = split.session.decode(ids)[0], list(ts[0])
    a, b = split.recommend_with_scores("u", hist, stamps, start=True), whole.recommend_with_scores("u", hist, stamps,
                                                                                                  start=True)
    assert a[0] == b[0] and np.allclose(a[1], b[1], rtol=0, atol=TOL)
    assert split.session.session.sizes == [4, 4, 4, 4, 2]
    for n in split.state_names:
        np.testing.assert_allclose(split.store["u"][n], whole.store["u"][n], rtol=0, atol=TOL, err_msg=n)
    nxt = split.session.decode([[5]])[0]
    assert split.recommend("u", nxt, [ts[0, -1] + 60]) == whole.recommend("u", nxt, [ts[0, -1] + 60])
    with pytest.raises(ValueError, match="max_new_items applies to a graph given as a path"):
        UserStateRecommender(OnnxStepSession(folder), max_new_items=8)
    for bad in (0, -1, True, 2.5, "8"):
        with pytest.raises((TypeError, ValueError), match="max_new_items"):
            OnnxStepSession(folder, max_new_items=bad)


def test_candidates_exclude_seen_and_user_vector_go_with_the_last_piece(tmp_path):
    """A ``--candidates --exclude-seen --user-vector`` graph primed in pieces of 3: the candidates restrict the
    answer (the last call's) as in one call, the ``seen`` state covers every piece's items, and the user vector is
    the one after the whole history."""
    folder = tmp_path / "g"
    export_model(_model("mamba4rec"), folder, topk=K, with_scores=True, verify=False, candidates=True,
                 exclude_seen=True, user_vector=True)
    whole, split = _counted(folder, max_new_items=None), _counted(folder, max_new_items=3)
    ids, _ = _history(np.random.default_rng(5), whole, 2, 10)
    cands = [[1, 2, 3, ids[0, 0], 7, 9, 11], None]
    want, got = whole.prime(ids, candidates=cands), split.prime(ids, candidates=cands)
    _assert_same(got, want)
    np.testing.assert_allclose(got.user_vector, want.user_vector, rtol=0, atol=TOL)
    assert set(got.topk_ids[0]) <= {1, 2, 3, 7, 9, 11, int(ids[0, 0])}
    assert np.array_equal(np.flatnonzero(got.state["seen"][1]), np.unique(ids[1]))
    assert split.session.sizes == [3, 3, 3, 1]


def test_a_window_graph_runs_only_its_last_window(tmp_path):
    """A window graph (SASRec) primed with a history of 500 items runs one call of its ``max_seq_length`` items and
    stores only those: its memory does not grow with the history."""
    from zoo.models.sasrec import SASRecConfig, SASRecModel

    torch.manual_seed(0)
    model = _sharp(SASRecModel(SASRecConfig(n_items=N_ITEMS, max_seq_length=12, hidden_size=16, num_layers=1,
                                            num_heads=1, hidden_dropout=0.0, attn_dropout=0.0)))
    export_model(model, tmp_path / "w", kind="window", topk=K, verify=False)
    rec = UserStateRecommender(tmp_path / "w")
    sizes = []
    inner = rec.session.session

    class _Run:
        def run(self, names, feeds):
            sizes.append(int(feeds["item_ids"].shape[1]))
            return inner.run(names, feeds)

        def __getattr__(self, name):
            return getattr(inner, name)

    rec.session.session = _Run()
    hist = list(np.random.default_rng(1).integers(1, N_ITEMS, 500))
    assert rec.prime("u", hist) == rec.prime("v", hist[-12:])
    assert sizes == [12, 12]
    assert rec.store["u"]["items"].shape == (1, 12)
