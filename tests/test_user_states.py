"""``export.runtime.UserStateRecommender``: per-user states of an exported graph kept in a store, in this process.

The invariant (fp32 graphs; an int8 graph quantizes its activations with one scale per call, so its rows move with
the call's other rows): however a user's events are split and interleaved with other users' (one by one, or many
users in one call), each event's top-k is PyTorch's forward over that user's whole prefix (a window graph: its last
``max_seq_length`` items). Around it: a state a replaced model wrote is refused (or restarted), a refused event stores
nothing, time-aware graphs keep time order, and a step state's layout is the Triton explicit-state client's.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the step graphs run with ONNX Runtime (pip install -e '.[export]')")

from export.onnx import export_model                                      # noqa: E402
from export.runtime import OnnxStepSession, OnnxWindowSession, UserStateRecommender  # noqa: E402
from export.state_store import FINGERPRINT_KEY, StaleStateError           # noqa: E402
from zoo.vocab import ItemVocab                                           # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

N_ITEMS = 60
K = 10


def _sharp(model):
    with torch.no_grad():
        model.item_embedding.weight.normal_(0, 1.0)
    return model.eval()


def _mamba(seed=0):
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

    torch.manual_seed(seed)
    m = _sharp(Mamba4RecModel(Mamba4RecConfig(n_items=N_ITEMS, hidden_size=16, num_layers=2, d_state=8,
                                              dropout_prob=0.0, initializer_range=0.1)))
    m.set_item_vocab(ItemVocab([f"item-{i}" for i in range(1, N_ITEMS)]))
    return m


def _causal():
    from time_models import perturb_time_path
    from zoo.models.tim4rec_causal import TiM4RecCausalConfig, TiM4RecCausalModel

    torch.manual_seed(0)
    cfg = TiM4RecCausalConfig(n_items=N_ITEMS, hidden_size=16, num_layers=2, d_state=8, head_dim=8, max_seq_length=50)
    return _sharp(perturb_time_path(TiM4RecCausalModel(cfg), 0.3, torch.Generator().manual_seed(0)))


def _exported(model, folder, **kw):
    """``model``'s graph exported (top-K, unverified: the tests compare it with PyTorch themselves) into ``folder``."""
    export_model(model, folder, topk=K, verify=False, **kw)
    return folder


@pytest.fixture(scope="module")
def mamba(tmp_path_factory):
    m = _mamba()
    return m, _exported(m, tmp_path_factory.mktemp("mamba"), user_vector=True)


def _reference(model, prefix_ids, ts=None):
    """PyTorch's top-K (internal indices) and scores after the whole prefix."""
    if ts is None:
        ids, mask = model.pad_batch([prefix_ids])
        sc = model.predict(ids, mask)[0]
    else:
        ids, mask, stamps = model.pad_batch([prefix_ids], timestamps=[ts])
        sc = model.predict(ids, mask, timestamps=stamps)[0]
    return torch.topk(sc, K).indices.numpy(), sc.numpy()


def _same(got_idx, ref_idx, ref_scores, tol=1e-4):
    return np.array_equal(got_idx, ref_idx) or np.allclose(ref_scores[got_idx], ref_scores[ref_idx], atol=tol)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("store", ["dict", "bytes"])
def test_interleaved_users_get_the_full_forward_of_their_whole_prefix(mamba, batched, store):
    """Twenty users, events of 1-4 items interleaved at random (or sent a round at a time, many users per call), the
    states in a dict or as bytes (``export.state_store.BytesStore``): every event's top-k is PyTorch's full forward
    over that user's prefix, its scores too, and the vector after the last event is the model's query vector."""
    from export.state_store import BytesStore

    model, d = mamba
    vocab = model.item_vocab
    rec = UserStateRecommender(d, store={} if store == "dict" else BytesStore())
    rng = random.Random(3)
    plans = {f"u{s}": [[rng.randrange(1, N_ITEMS) for _ in range(rng.randrange(1, 5))]
                       for _ in range(rng.randrange(2, 7))] for s in range(20)}
    served, prefixes = [], []
    if batched:
        for rnd in range(max(map(len, plans.values()))):
            events = [(u, vocab.decode(p[rnd])) for u, p in plans.items() if rnd < len(p)]
            for (u, _), (items, scores) in zip(events, rec.recommend_many(events)):
                prefixes.append([x for ev in plans[u][:rnd + 1] for x in ev])
                served.append((items, scores))
    else:
        pos = {u: 0 for u in plans}
        order = [u for u in plans for _ in plans[u]]
        rng.shuffle(order)
        for u in order:
            ev = plans[u][pos[u]]
            served.append(rec.recommend_with_scores(u, vocab.decode(ev)))
            pos[u] += 1
            prefixes.append([x for e in plans[u][:pos[u]] for x in e])
    bad = []
    for n, ((items, scores), prefix) in enumerate(zip(served, prefixes)):
        ref_idx, ref_sc = _reference(model, prefix)
        got = np.array(vocab.encode(items))
        if not _same(got, ref_idx, ref_sc) or not np.allclose(scores, ref_sc[got], atol=1e-4):
            bad.append(n)
    assert not bad, f"{len(bad)} of {len(served)} events differ from PyTorch, first at prefix {prefixes[bad[0]]}"
    np.testing.assert_allclose(rec.last_user_vector, model.query_vectors(torch.tensor([prefixes[-1]]))[0].numpy(),
                               atol=1e-4)
    assert {u for u in plans if u in rec.store} == set(plans) and len(rec.store) == len(plans)
    st = rec.store.get("u0")
    assert str(st[FINGERPRINT_KEY]) == OnnxStepSession(d).spec["state_fingerprint"]
    assert all(st[n].shape[0] == 1 for n in st if n != FINGERPRINT_KEY)


def test_prime_restarts_and_forget_frees(mamba):
    model, d = mamba
    v = model.item_vocab
    rec = UserStateRecommender(d)
    rec.recommend("a", v.decode([3, 4, 5]))
    again = rec.prime("a", v.decode([7, 8]))                 # whatever was stored: from the start
    assert v.encode(again) == _reference(model, [7, 8])[0].tolist() or _same(
        np.array(v.encode(again)), *_reference(model, [7, 8]))
    assert len(rec.recommend("a", v.decode([9]), k=3)) == 3
    rec.forget("a")
    assert "a" not in rec.store
    rec.forget("never-seen")                                 # nothing stored: nothing to do


@pytest.mark.parametrize("kind", ["bytes", "sqlite"])
def test_a_corrupt_stored_value_is_refused_and_prime_or_forget_clears_it(mamba, tmp_path, kind):
    """A stored value that is no state (a corrupted store) is refused naming why; ``prime`` overwrites it (the remedy
    the refusals name), and ``forget`` removes it."""
    import sqlite3

    from export.state_store import BytesStore, SQLiteStateStore

    model, d = mamba
    v = model.item_vocab
    store = BytesStore() if kind == "bytes" else SQLiteStateStore(tmp_path / "s.db")
    rec = UserStateRecommender(d, store=store)
    for user in ("a", "b"):
        rec.prime(user, v.decode([1, 2]))
        if kind == "bytes":
            store.kv[user] = b"junk"
        else:
            with sqlite3.connect(store.path) as raw:
                raw.execute("UPDATE zoo_states SET value = ? WHERE key = ?", (b"junk", f'"{user}"'))
    with pytest.raises(ValueError, match="not a stored zoo state"):
        rec.recommend("a", v.decode([3]))
    got = rec.prime("a", v.decode([3, 4]))
    assert _same(np.array(v.encode(got)), *_reference(model, [3, 4]))
    rec.forget("b")
    assert "b" not in store and "a" in store


def test_a_state_another_model_wrote_is_refused_or_restarted(mamba, tmp_path):
    """A store written under one export is refused by a retrained model's export (its fingerprint differs), with a
    message naming the way out; ``on_stale="restart"`` starts such users afresh and counts them. A state stored
    without any fingerprint is refused too."""
    model, d = mamba
    v = model.item_vocab
    store = {}
    UserStateRecommender(d, store=store).prime("u", v.decode([1, 2, 3]))
    other = _mamba(seed=5)
    d2 = _exported(other, tmp_path / "retrained")
    with pytest.raises(StaleStateError, match="written by another model.*prime\\(user, history\\)"):
        UserStateRecommender(d2, store=store).recommend("u", v.decode([4]))
    assert str(store["u"][FINGERPRINT_KEY]) == OnnxStepSession(d).spec["state_fingerprint"]   # kept as it was
    rec = UserStateRecommender(d2, store=store, on_stale="restart")
    got = rec.recommend("u", v.decode([4]))
    assert rec.restarted == 1 and _same(np.array(v.encode(got)), *_reference(other, [4]))
    untagged = {n: a for n, a in store["u"].items() if n != FINGERPRINT_KEY}
    with pytest.raises(StaleStateError, match="no fingerprint"):
        UserStateRecommender(d2, store={"x": untagged}).recommend("x", v.decode([4]))
    with pytest.raises(ValueError, match="on_stale must be one of"):
        UserStateRecommender(d2, on_stale="ignore")


def test_a_stored_state_of_another_layout_is_stale_and_names_the_user(mamba):
    """A stored step state with a tensor of another shape or dtype under a matching tag (a graph without fingerprint
    accepts every state unchecked; a store changed by hand) failed a many-user call with numpy's concatenate error
    (the users' states were concatenated before any check), or was up-cast into the batch and reported as a dtype
    problem of the whole batch; neither named the user. Now each user's stored state is checked before batching:
    another layout is a StaleStateError naming the user and the tensor (on_stale="restart" starts the user afresh,
    counted), a NaN a ValueError naming the user."""
    model, d = mamba
    v = model.item_vocab
    store = {}
    rec = UserStateRecommender(d, store=store)
    for user in ("good", "shape", "dtype", "nan"):
        rec.prime(user, v.decode([1, 2]))
    first, last = rec.state_names[0], rec.state_names[-1]
    store["shape"] = {**store["shape"], last: store["shape"][last][..., :-1].copy()}
    store["dtype"] = {**store["dtype"], first: store["dtype"][first].astype(np.float64)}
    nan = store["nan"][last].copy()
    nan.flat[0] = np.nan
    store["nan"] = {**store["nan"], last: nan}
    kept = copy.deepcopy(store)
    for user, what in (("shape", rf"has '{last}' of shape \[1, .*\], not \[1, .*\]"),
                       ("dtype", rf"has '{first}' of dtype float64, not float32")):
        with pytest.raises(StaleStateError, match=rf"stored state of user '{user}' {what}: .*prime\(user, history\)"):
            rec.recommend_many([("good", v.decode([3])), (user, v.decode([4]))])
    with pytest.raises(ValueError, match=rf"stored state of user 'nan': state\['{last}'\] holds NaN"):
        rec.recommend_many([("good", v.decode([3])), ("nan", v.decode([4]))])
    assert all(np.array_equal(kept[u][n], store[u][n], equal_nan=True)         # refused: nothing stored
               for u in kept for n in kept[u] if n != FINGERPRINT_KEY)
    restarting = UserStateRecommender(d, store=store, on_stale="restart")
    got = restarting.recommend_many([("good", v.decode([3])), ("shape", v.decode([4])), ("dtype", v.decode([5]))])
    assert restarting.restarted == 2
    assert _same(np.array(v.encode(got[0][0])), *_reference(model, [1, 2, 3]))
    assert _same(np.array(v.encode(got[1][0])), *_reference(model, [4]))



def test_new_items_and_candidates_that_are_no_sequence_are_type_errors(mamba):
    """recommend(user, None) was a ValueError, recommend(user, {ids}) took a set in no order, and candidates=5 raised
    Python's bare "object of type 'int' has no len()"."""
    model, d = mamba
    v = model.item_vocab
    rec = UserStateRecommender(d)
    for bad in (None, 3, {v.decode([1])[0]}, {v.decode([1])[0]: 1}):
        with pytest.raises(TypeError, match=rf"^event 0 \(user 'a'\): new_items must be a non-empty sequence of item "
                                            rf"ids, oldest first, got {type(bad).__name__}$"):
            rec.recommend("a", bad)
    with pytest.raises(TypeError, match=r"^candidates must be a sequence of candidate lists, one per event"):
        rec.recommend_many([("a", v.decode([1]))], candidates=5)
    assert "a" not in rec.store and len(rec.recommend("a", v.decode([1, 2]))) == 10

def test_refused_events_store_nothing(mamba):
    model, d = mamba
    v = model.item_vocab
    rec = UserStateRecommender(d)
    rec.prime("a", v.decode([1, 2]))
    before = {n: a.copy() for n, a in rec.store["a"].items() if n != FINGERPRINT_KEY}
    with pytest.raises(KeyError, match="unknown item id 'item-999'"):
        rec.recommend_many([("a", v.decode([3])), ("b", ["item-999"])])
    with pytest.raises(ValueError, match="user 'a' has two events in one call"):
        rec.recommend_many([("a", v.decode([3])), ("a", v.decode([4]))])
    with pytest.raises(ValueError, match="new_items must be a non-empty sequence"):
        rec.recommend("a", [])
    with pytest.raises(ValueError, match="k must be an int in 1..10"):
        rec.recommend("a", v.decode([3]), k=11)
    assert set(rec.store) == {"a"}
    for n, a in before.items():
        np.testing.assert_array_equal(rec.store["a"][n], a)


@pytest.mark.parametrize("time_input", ["timestamps", "gaps"])
def test_time_aware_users_keep_time_order(tmp_path, time_input):
    """TiM4Rec-causal (float64 timestamps into the graph, or the gaps form whose ``last_ts`` the runtime keeps):
    each user's events carry Unix seconds; the stored ``last_ts`` refuses an event before the user's last one
    (nothing stored for anyone of that call), and the top-k is PyTorch's over the timed prefix."""
    model = _causal()
    d = _exported(model, tmp_path / "causal", time_input=time_input)
    rec = UserStateRecommender(d)
    t0 = 1.6e9
    rec.prime("a", [3, 4, 5], [t0, t0 + 60, t0 + 3600])
    got, _ = rec.recommend_with_scores("a", [6], [t0 + 7200])
    assert _same(np.array(got), *_reference(model, [3, 4, 5, 6], [t0, t0 + 60, t0 + 3600, t0 + 7200]))
    before = rec.store["a"]["last_ts"].copy()
    with pytest.raises(ValueError, match="go back in time"):
        rec.recommend_many([("b", [1], [t0]), ("a", [7], [t0])])
    assert "b" not in rec.store and rec.store["a"]["last_ts"] == before
    with pytest.raises(ValueError, match="this model reads timestamps"):
        rec.recommend("a", [7])


# ------------------------------------------------------------------------------------------------ window graphs
def _sasrec(seed=2, vocab=None):
    from zoo.models.sasrec import SASRecConfig, SASRecModel

    torch.manual_seed(seed)
    m = _sharp(SASRecModel(SASRecConfig(n_items=N_ITEMS, max_seq_length=8, hidden_size=16, num_layers=1, num_heads=1,
                                        inner_size=32, hidden_dropout=0.0, attn_dropout=0.0)))
    m.set_item_vocab(vocab or ItemVocab([f"item-{i}" for i in range(1, N_ITEMS)]))
    return m


@pytest.fixture(scope="module")
def sasrec(tmp_path_factory):
    m = _sasrec()
    return m, _exported(m, tmp_path_factory.mktemp("sasrec"))


def test_a_window_graph_serves_users_with_the_same_api(sasrec):
    """SASRec's window graph behind the same calls: each user's stored state is their last ``max_seq_length`` items,
    and every event's top-k is PyTorch's forward over that window of the whole prefix (longer than the window here)."""
    model, d = sasrec
    v = model.item_vocab
    rec = UserStateRecommender(d)
    assert rec.window and rec.state_names == ["items"]
    rng = random.Random(4)
    hist = {f"u{s}": [] for s in range(10)}
    got, prefixes = [], []
    for rnd in range(6):
        events = []
        for u in hist:
            if rng.random() < 0.8:
                new = [rng.randrange(1, N_ITEMS) for _ in range(rng.randrange(1, 4))]
                hist[u] += new
                events.append((u, v.decode(new)))
                prefixes.append(list(hist[u]))
        if rnd == 0:
            out = [rec.prime(u, items) for u, items in events]
        else:
            out = [items for items, _ in rec.recommend_many(events)]
        got += [np.array(v.encode(o)) for o in out]
    for g, p in zip(got, prefixes):
        assert _same(g, *_reference(model, p[-8:]))
    longest = max(hist, key=lambda u: len(hist[u]))
    assert len(hist[longest]) > 8 and rec.store[longest]["items"].tolist() == [hist[longest][-8:]]


def test_window_states_follow_the_vocabulary_not_the_weights(sasrec, tmp_path):
    """A stored window is items: another model with the same item vocabulary continues it (its own forward over
    the same window), and so does one whose catalogue gained items (``add_items``); a model of another vocabulary
    refuses it (or restarts the user), and so does the smaller graph a state of the grown one."""
    model, d = sasrec
    v = model.item_vocab
    store = {}
    UserStateRecommender(d, store=store).prime("u", v.decode([1, 2, 3]))
    retrained = _sasrec(seed=7)
    d2 = _exported(retrained, tmp_path / "retrained")
    got = UserStateRecommender(d2, store=store).recommend("u", v.decode([4]))
    assert _same(np.array(v.encode(got)), *_reference(retrained, [1, 2, 3, 4]))
    other = _sasrec(vocab=ItemVocab([f"other-{i}" for i in range(1, N_ITEMS)]))
    d3 = _exported(other, tmp_path / "other-vocab")
    with pytest.raises(StaleStateError, match="written by another model"):
        UserStateRecommender(d3, store=store).recommend("u", ["other-4"])
    rec = UserStateRecommender(d3, store=store, on_stale="restart")
    rec.recommend("u", ["other-4"])
    assert rec.restarted == 1 and store["u"]["items"].tolist() == [[4]]
    grown = copy.deepcopy(model)                                 # the catalogue gains items (appended)
    assert grown.add_items(["new-a", "new-b"]) == ["new-a", "new-b"]
    with torch.no_grad():
        grown.item_embedding.weight[-2:].normal_(0, 1.0)            # as if trained: they may enter the top-k
    d4 = _exported(grown, tmp_path / "grown")
    store = {}
    UserStateRecommender(d, store=store).prime("u", v.decode([1, 2, 3]))
    rec = UserStateRecommender(d4, store=store)
    got = rec.recommend("u", ["new-a", "item-4"])                # continued: no restart, no StaleStateError
    assert rec.restarted == 0 and store["u"]["vocab_items"].tolist() == [[N_ITEMS + 1]]
    gv = grown.item_vocab
    assert _same(np.array(gv.encode(got)), *_reference(grown, [1, 2, 3, N_ITEMS, 4]))
    with pytest.raises(StaleStateError):                       # the old graph does not know new-a
        UserStateRecommender(d, store=store).recommend("u", v.decode([5]))
    step_store = {}
    UserStateRecommender(_exported(_mamba(), tmp_path / "mamba"), store=step_store).prime("s", v.decode([1, 2]))
    with pytest.raises(StaleStateError):                       # a step state is no window (another fingerprint)
        UserStateRecommender(d, store=step_store).recommend("s", v.decode([3]))


def test_a_window_state_without_the_timestamps_a_time_aware_graph_reads_is_stale(sasrec, tmp_path):
    """A SASRec window state (items only) carried the tag of a TiM4Rec window graph of the same vocabulary (the tag
    hashed only the vocabulary): it passed the check, then every event of that user failed with a plain ValueError
    ("lacks ['timestamps']"), on_stale="restart" or not, so the user was wedged. A time-aware window graph's tag now
    names its timestamps: such a state is stale (StaleStateError, or the user restarts), and so is, the other way, a
    TiM4Rec window state to SASRec. A state lacking an entry under the right tag is stale too."""
    from test_tim4rec import faithful

    model, d = sasrec
    v = model.item_vocab
    tim = faithful(n_items=N_ITEMS).eval()
    tim.set_item_vocab(v)
    dt = _exported(tim, tmp_path / "tim4rec")
    store, t0 = {}, 1.6e9
    UserStateRecommender(d, store=store).prime("u", v.decode([1, 2, 3]))
    assert UserStateRecommender(dt).fingerprint != UserStateRecommender(d).fingerprint
    with pytest.raises(StaleStateError, match="written by another model"):
        UserStateRecommender(dt, store=store).recommend("u", v.decode([4]), [t0])
    rec = UserStateRecommender(dt, store=store, on_stale="restart")
    got = rec.recommend("u", v.decode([4]), [t0])
    assert rec.restarted == 1 and store["u"]["items"].tolist() == [[4]] and store["u"]["timestamps"].tolist() == [[t0]]
    assert _same(np.array(v.encode(got)), *_reference(tim, [4], [t0]))
    with pytest.raises(StaleStateError, match="written by another model"):
        UserStateRecommender(d, store=store).recommend("u", v.decode([5]))
    store["w"] = {n: a for n, a in store["u"].items() if n != "timestamps"}     # the right tag, an entry missing
    with pytest.raises(StaleStateError, match=r"lacks \['timestamps'\]: it is not a state of this window graph"):
        UserStateRecommender(dt, store=store).recommend("w", v.decode([5]), [t0 + 1])
    rec = UserStateRecommender(dt, store=store, on_stale="restart")
    rec.recommend("w", v.decode([5]), [t0 + 1])
    assert rec.restarted == 1 and store["w"]["items"].tolist() == [[5]]


def test_a_time_aware_window_graph_keeps_time_order(tmp_path):
    """The faithful TiM4Rec (a window graph reading timestamps): the stored window keeps each item's timestamp, the
    top-k is PyTorch's over the timed window, and an event before the user's last one is refused (nothing stored)."""
    from test_tim4rec import faithful

    model = faithful().eval()
    d = _exported(model, tmp_path / "tim4rec")
    rec = UserStateRecommender(d)
    assert rec.state_names == ["items", "timestamps"]
    t0 = 1.6e9
    rec.prime("a", [3, 4, 5], [t0, t0 + 60, t0 + 3600])
    got, _ = rec.recommend_with_scores("a", [6, 7], [t0 + 7200, t0 + 7200])
    ref_idx, ref_sc = _reference(model, [3, 4, 5, 6, 7], [t0, t0 + 60, t0 + 3600, t0 + 7200, t0 + 7200])
    assert _same(np.array(got), ref_idx, ref_sc)
    before = {n: a.copy() for n, a in rec.store["a"].items()}
    with pytest.raises(ValueError, match="go back in time"):
        rec.recommend_many([("b", [1], [t0]), ("a", [8], [t0])])
    assert "b" not in rec.store and all(np.array_equal(rec.store["a"][n], a) for n, a in before.items())
    # a stored timestamp that is no time: refused naming the user and the way out, as a step state's NaN
    rec.store["a"] = {**rec.store["a"], "timestamps": np.where(before["timestamps"] > t0, np.nan,
                                                                before["timestamps"])}
    with pytest.raises(ValueError, match=r"^the stored state of user 'a': timestamps must be finite and non-negative"
                                         r"\. prime\(user, history\) replaces it, forget\(user\) drops it$"):
        rec.recommend_many([("b", [1], [t0]), ("a", [8], [t0 + 9000])])
    assert "b" not in rec.store


def test_a_stored_window_item_out_of_range_names_the_user(sasrec):
    """A window state whose stored items are out of the graph's range (a store changed by hand, or written for a
    larger catalogue under a matching tag) was refused as "history 0[0, 1] = 99999 is out of range", naming neither
    the user nor the stored state; now each user's stored items are checked before the call, with the way out the
    step states' errors give (prime replaces the state, forget drops it)."""
    model, d = sasrec
    v = model.item_vocab
    rec = UserStateRecommender(d)
    for user in ("good", "u"):
        rec.prime(user, v.decode([1, 2]))
    kept = rec.store["good"]["items"].copy()
    for bad in (99999, N_ITEMS, 0, -3):
        rec.store["u"] = {**rec.store["u"], "items": np.array([[5, bad]], np.int64)}
        with pytest.raises(ValueError, match=rf"^the stored state of user 'u': items\[0, 1\] = {bad} is out of range "
                                             rf"1\.\.{N_ITEMS - 1} .*\. prime\(user, history\) replaces it, "
                                             r"forget\(user\) drops it$"):
            rec.recommend_many([("good", v.decode([3])), ("u", v.decode([4]))])
        assert np.array_equal(rec.store["good"]["items"], kept)           # refused: nothing stored
    assert rec.prime("u", v.decode([3, 4])) and rec.store["u"]["items"].tolist() == [[3, 4]]
    rec.store["u"] = {**rec.store["u"], "items": np.array([[99999]], np.int64)}
    rec.forget("u")
    assert "u" not in rec.store and rec.recommend("u", v.decode([4]))


@pytest.mark.parametrize("kind", ["dict", "sqlite"])
def test_threads_serving_one_user_take_turns(sasrec, tmp_path, kind):
    """Eight threads send one event each for the same user at once, five times over: every event lands in the
    stored window (a read-run-store race would lose some), and other users' events are not held up by them -- in a
    dict, and in a SQLite store (each thread on its own connection)."""
    import threading

    from export.state_store import SQLiteStateStore

    model, d = sasrec
    v = model.item_vocab
    rec = UserStateRecommender(d, store={} if kind == "dict" else SQLiteStateStore(tmp_path / "s.db"))
    for rnd in range(5):
        barrier = threading.Barrier(9)
        user = f"shared-{rnd}"

        def send(item):
            barrier.wait()
            rec.recommend(user, v.decode([item]))

        threads = [threading.Thread(target=send, args=(1 + i,)) for i in range(8)]
        for t in threads:
            t.start()
        barrier.wait()
        rec.recommend(f"other-{rnd}", v.decode([40]))          # another user meanwhile
        for t in threads:
            t.join()
        assert sorted(rec.store[user]["items"][0].tolist()) == list(range(1, 9)), rnd


def test_forget_waits_for_an_event_of_that_user_in_flight(mamba):
    """``forget`` did not take the user's lock: an event of that user running meanwhile stored its state after the
    deletion, silently undoing it. Now ``forget`` waits for the event (here held inside the graph call until the test
    lets it go), so the user is gone once both have returned. The order is observed through events, not timing."""
    import threading

    model, d = mamba
    v = model.item_vocab
    rec = UserStateRecommender(d)
    rec.prime("u", v.decode([1, 2, 3]))
    in_step, release, waiting, order = threading.Event(), threading.Event(), threading.Event(), []
    step = rec.session.step

    def held_step(*a, **kw):
        in_step.set()
        assert release.wait(60), "the test never released the event"
        return step(*a, **kw)

    class Watched:                                   # a stripe lock telling when forget's thread asks for it
        def __init__(self, lock):
            self.lock = lock

        def acquire(self, *a):
            if threading.current_thread().name == "forget":
                waiting.set()
            return self.lock.acquire(*a)

        def release(self):
            self.lock.release()

        __enter__ = acquire

        def __exit__(self, *exc):
            self.release()

    rec._locks.stripes = [Watched(lock) for lock in rec._locks.stripes]
    rec.session.step = held_step

    def event():
        rec.recommend("u", v.decode([4]))
        order.append("event stored")

    def forget():
        rec.forget("u")
        order.append("forgotten")
        waiting.set()                                # without the lock: done, never waiting

    first = threading.Thread(target=event, daemon=True)
    first.start()
    try:
        assert in_step.wait(60), "the event never reached the graph call"
        second = threading.Thread(target=forget, name="forget", daemon=True)
        second.start()
        assert waiting.wait(60)
        assert second.is_alive() and order == [], f"forget did not wait for the event in flight: {order}"
    finally:
        release.set()
    first.join(60)
    second.join(60)
    assert order == ["event stored", "forgotten"] and "u" not in rec.store, (order, list(rec.store))


# ------------------------------------------------------------------------------------- a store shared by processes
def test_an_event_committed_meanwhile_by_another_process_is_kept(mamba, tmp_path):
    """A versioned store (``SQLiteStateStore``): another process (a second recommender on the same file) stores an
    event of the user between this call's read and its commit; the commit is refused, the call runs again on the
    newer state, and its top-k and scores are PyTorch's forward over the prefix with both events, each once. With two
    users in the call and one of them written meanwhile, the other's event is not applied twice either."""
    from export.state_store import SQLiteStateStore
    from store_worker import raced_sqlite

    model, d = mamba
    v = model.item_vocab
    path = tmp_path / "states.db"
    rival = UserStateRecommender(d, store=SQLiteStateStore(path))

    store = raced_sqlite(path, rival)
    rec = UserStateRecommender(d, store=store)
    store.rival_events = [("u", v.decode([9, 10]))]
    got = rec.prime("u", v.decode([1, 2, 3]))                     # a prime overwrites what the rival stored
    assert _same(np.array(v.encode(got)), *_reference(model, [1, 2, 3])) and rec.conflicts == 1
    store.rival_events = [("u", v.decode([9, 10]))]
    items, scores = rec.recommend_with_scores("u", v.decode([4]))
    ref_idx, ref_sc = _reference(model, [1, 2, 3, 9, 10, 4])
    assert _same(np.array(v.encode(items)), ref_idx, ref_sc) and rec.conflicts == 2
    np.testing.assert_allclose(scores, ref_sc[v.encode(items)], atol=1e-4)
    rec.prime("w", v.decode([20]))
    store.rival_events = [("u", v.decode([11]))]
    (w_items, _), (u_items, _) = rec.recommend_many([("w", v.decode([21])), ("u", v.decode([5]))])
    assert rec.conflicts == 3
    assert _same(np.array(v.encode(w_items)), *_reference(model, [20, 21]))
    assert _same(np.array(v.encode(u_items)), *_reference(model, [1, 2, 3, 9, 10, 4, 11, 5]))
    fresh = UserStateRecommender(d, store=SQLiteStateStore(path))   # what is stored: each event once
    for user, prefix in (("w", [20, 21, 22]), ("u", [1, 2, 3, 9, 10, 4, 11, 5, 22])):
        assert _same(np.array(v.encode(fresh.recommend(user, v.decode([22])))), *_reference(model, prefix)), user


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_serving_processes_sharing_a_store_lose_no_event(tmp_path, request, kind):
    """Three worker processes, each with its own recommender on one shared store (a SQLite file; a real Redis
    server), send 12 events each to the same three users at once: every user's stored window (SASRec, 64 items)
    holds all 36 items, each worker's in the order it sent them. The workers go in rounds behind a barrier (not a
    clock, which a slow start-up would miss), and in half of them all read a user's state before any commits
    (``tests/store_worker.py``): the store refused at least two commits in each of those 18 rounds, so the race was
    run, not passed by workers that happened to take turns. (A store that ignores the versions loses events.)"""
    import multiprocessing

    from export.state_store import RedisStateStore, SQLiteStateStore
    from store_worker import send_events

    torch.manual_seed(5)
    from zoo.models.sasrec import SASRecConfig, SASRecModel

    model = SASRecModel(SASRecConfig(n_items=N_ITEMS, max_seq_length=64, hidden_size=16, num_layers=1, num_heads=1,
                                     inner_size=32)).eval()
    model.set_item_vocab(ItemVocab([f"item-{i}" for i in range(1, N_ITEMS)]))
    d = _exported(model, tmp_path / "sasrec")
    store = (SQLiteStateStore(tmp_path / "states.db") if kind == "sqlite"
             else RedisStateStore(request.getfixturevalue("redis_url"), prefix=f"zoo:{tmp_path.name}:"))
    users = ["a", "b", "c"]
    sent = {w: [f"item-{1 + 12 * w + j}" for j in range(12)] for w in range(3)}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(3) as pool:
        barrier = manager.Barrier(3, timeout=300)                 # a worker that died breaks it: no hang
        conflicts = pool.starmap(send_events, [(str(d), store, barrier, users, sent[w]) for w in range(3)])
    print(f"commits refused and run again: {conflicts}")
    assert sum(conflicts) >= 2 * 6 * len(users), conflicts       # 6 held items x 3 users, two refused in each
    for user in users:
        window = model.item_vocab.decode(store[user]["items"][0].tolist())
        assert sorted(window) == sorted(x for items in sent.values() for x in items), user
        for w, items in sent.items():
            assert [x for x in window if x in set(items)] == items, (user, w)
        # SQLite: a version counts the user's 36 commits; Redis: a new state starts at the server's clock (us)
        assert store.get_versioned(user)[1] == 36 if kind == "sqlite" else store.get_versioned(user)[1] > 1e15


# ------------------------------------------------------------------------------------------------ refused input
def test_graphs_without_time_refuse_timestamps(mamba, sasrec):
    """A graph that reads no time refuses timestamps (as model.step and OnnxWindowSession.recommend do) in step,
    prime, run_window and every event of UserStateRecommender; they were silently ignored (even a string)."""
    model, d = mamba
    v = model.item_vocab
    sess = OnnxStepSession(d)
    for ts in ([[123.0]], "garbage"):
        with pytest.raises(ValueError, match=r"^this mamba4rec graph does not use timestamps; call step\(\) without"):
            sess.step([[1]], sess.init_state(1), ts)
    with pytest.raises(ValueError, match=r"does not use timestamps; call prime\(\) without timestamps"):
        sess.prime([[1, 2]], [[1.0, 2.0]])
    window = OnnxWindowSession(sasrec[1])
    with pytest.raises(ValueError, match=r"^this sasrec graph does not use timestamps; call run_window\(\) without"):
        window.run_window([[1, 2]], [[1.0, 2.0]])
    for d_, items in ((d, v.decode([3])), (sasrec[1], ["item-3"])):
        rec = UserStateRecommender(d_)
        with pytest.raises(ValueError, match=r"^event 0 \(user 'u'\): this \w+ graph does not use timestamps; give"):
            rec.recommend("u", items, [5.0])
        with pytest.raises(ValueError, match=r"^event 1 \(user 'w'\): this \w+ graph does not use timestamps"):
            rec.recommend_many([("v", items), ("w", items, [5.0])])
        assert not rec.store


def test_recommend_many_names_the_event_of_an_unknown_id(mamba):
    """Each event was encoded alone, so an unknown id of event 2 was reported as "history 0"."""
    model, d = mamba
    rec = UserStateRecommender(d)
    events = [("a", ["item-1"]), ("b", ["item-2"]), ("c", ["item-3", "item-999"])]
    with pytest.raises(KeyError, match=r"event 2 \(user 'c'\): unknown item id 'item-999'"):
        rec.recommend_many(events)
    assert not rec.store


def test_malformed_histories_and_ids_are_named(mamba, sasrec):
    """Ragged item rows, a flat list or None where histories go: a message naming the argument, not numpy's
    "inhomogeneous shape" or Python's "object of type 'int' has no len()"."""
    sess = OnnxStepSession(mamba[1])
    with pytest.raises(ValueError, match=r"^item_ids: rows of different lengths \(a step call takes rows of one "
                                         r"length; group events by length\)$"):
        sess.step([[1, 2], [3]], sess.init_state(2))
    window = OnnxWindowSession(sasrec[1])
    for call in (sess.prime, window.recommend):
        with pytest.raises(TypeError, match=r"^histories must be a list of histories \(lists of item ids\), got a "
                                            r"flat list of ints"):
            call([1, 2, 3])
        with pytest.raises(TypeError, match=r"^histories must be a list of histories .*, got NoneType$"):
            call(None)
        with pytest.raises(TypeError, match=r"^histories: history 1 is 4 \(int\), not a list of item ids$"):
            call([[1, 2], 4])


def test_each_events_timestamps_are_checked_and_named(tmp_path):
    """Timestamp errors of a step graph's events name the event and user (they named "batch row 0" of the group of
    events of one length); a count other than the items' is refused per event (numpy's inhomogeneous error when
    another event of that length shared its group); ragged timestamps to prime are named."""
    d = _exported(_causal(), tmp_path / "causal")
    rec = UserStateRecommender(d)
    t0 = 1.6e9
    rec.prime("a", [1], [t0 + 100])
    with pytest.raises(ValueError, match=r"^event 0 \(user 'b'\): 2 new items but 1 timestamps \(one per item\)$"):
        rec.recommend_many([("b", [1, 2], [t0]), ("c", [3, 4], [t0, t0 + 1])])
    with pytest.raises(ValueError, match=r"^timestamps of event 1 \(user 'c'\) decrease \(1600000000\.0 after "):
        rec.recommend_many([("b", [1, 2], [t0, t0]), ("c", [3, 4], [t0 + 1, t0])])
    with pytest.raises(ValueError, match=r"^timestamps of event 1 \(user 'a'\) go back in time relative to its "):
        rec.recommend_many([("b", [1], [t0]), ("a", [2], [t0 + 99])])
    with pytest.raises(TypeError, match=r"^event 1 \(user 'c'\): timestamps must be numbers"):
        rec.recommend_many([("b", [1], [t0]), ("c", [2], ["x"])])
    with pytest.raises(ValueError, match=r"^event 0 \(user 'b'\): timestamps must be finite and non-negative$"):
        rec.recommend_many([("b", [1], [-1.0]), ("c", [2], [t0])])
    assert set(rec.store) == {"a"}
    sess = OnnxStepSession(d)
    with pytest.raises(ValueError, match=r"^timestamps: rows of different lengths \(one timestamp per item"):
        sess.prime([[1, 2], [3, 4]], [[1.0], [1.0, 2.0]])


def test_unknown_id_is_a_value_error_and_the_return_shapes_are_as_documented(mamba):
    """export/README.md promises the wrapper's refusals as ``ValueError`` naming the problem; an unknown item id was a
    ``KeyError`` (shown quoted, as its repr). It is :class:`export.runtime.UnknownItemIdError`: a ``ValueError``, still
    a ``KeyError``, its text the message itself. And the return shapes the README states: ``prime``/``recommend`` a
    list of ids, ``recommend_with_scores`` ``(ids, scores)``, ``recommend_many`` one such tuple per event."""
    from export.runtime import UnknownItemIdError

    model, d = mamba
    v = model.item_vocab
    rec = UserStateRecommender(d)
    with pytest.raises(ValueError) as e:
        rec.recommend_many([("a", v.decode([3])), ("b", ["item-999"])])
    assert isinstance(e.value, KeyError) and type(e.value) is UnknownItemIdError
    assert str(e.value) == "event 1 (user 'b'): unknown item id 'item-999' (not in the model's item vocabulary)"
    with pytest.raises(ValueError, match="^history 0: unknown item id 'item-999'"):
        rec.session.encode([["item-999"]])
    first = rec.prime("a", v.decode([1, 2]), k=5)
    assert isinstance(first, list) and len(first) == 5 and all(isinstance(x, str) for x in first)
    ids, scores = rec.recommend_with_scores("a", v.decode([3]), k=5)
    assert isinstance(ids, list) and isinstance(scores, np.ndarray) and scores.shape == (5,)
    assert rec.recommend("b", v.decode([4]), k=3) == rec.recommend_many([("c", v.decode([4]))], k=3)[0][0]
    many = rec.recommend_many([("a", v.decode([5])), ("d", v.decode([6, 7]))], k=4)
    assert [type(m) for m in many] == [tuple, tuple] and all(len(i) == 4 == len(s) for i, s in many)


def test_close_releases_the_session_and_the_states_it_holds(mamba):
    """UserStateRecommender and OnnxStepSession had no close(): the ONNX Runtime session and the default dict of every
    user's state lived as long as the object was referenced. close() frees them at once (the garbage collector off
    here), idempotent, a later call raising ClosedError; ``with`` closes; a session or store passed in is the
    caller's (not closed, still holding its states)."""
    import gc
    import weakref

    from export.state_store import ClosedError

    model, d = mamba
    v = model.item_vocab
    gc.disable()
    try:
        rec = UserStateRecommender(d)
        rec.recommend("a", v.decode([3, 4]))
        state = weakref.ref(next(a for n, a in rec.store["a"].items() if n != FINGERPRINT_KEY))
        ort_session = weakref.ref(rec.session.session)
        assert state() is not None and ort_session() is not None
        rec.close()
        assert state() is None and ort_session() is None
    finally:
        gc.enable()
    rec.close()                                                  # idempotent
    for call in (lambda: rec.recommend("a", v.decode([5])), lambda: rec.forget("a")):
        with pytest.raises(ClosedError, match="UserStateRecommender of .* is closed"):
            call()
    sess, mine = OnnxStepSession(d), {}
    with UserStateRecommender(sess, store=mine) as theirs:
        theirs.recommend("b", v.decode([3]))
    assert "b" in mine and len(sess.prime(sess.encode([v.decode([3])])).topk_ids[0]) == sess.topk
    with sess:
        pass
    with pytest.raises(ClosedError, match="OnnxStepSession of .* is closed"):
        sess.prime(sess.encode([v.decode([3])]))


def test_an_lru_store_bounds_the_users_kept_and_an_evicted_user_starts_afresh(mamba):
    """export/README.md recommends export.state_store.LRUStore to bound the default dict's memory: it works as a
    recommender's store, a kept user continuing their history, an evicted one starting from the initial state."""
    from export.state_store import LRUStore

    model, d = mamba
    v = model.item_vocab
    rec = UserStateRecommender(d, store=LRUStore(2))
    for u, h in (("a", [3, 4]), ("b", [5]), ("c", [6, 7])):
        rec.prime(u, v.decode(h))
    assert sorted(rec.store) == ["b", "c"] and rec.store.evicted == 1
    assert _same(np.array(v.encode(rec.recommend("c", v.decode([8])))), *_reference(model, [6, 7, 8]))
    assert _same(np.array(v.encode(rec.recommend("a", v.decode([8])))), *_reference(model, [8]))   # evicted
