"""zoo.evaluate ``max_len="all"`` (``--window all``) on models with an exact recurrent step: a history longer than
``STEP_CHUNK_TOKENS`` items is fed in chunks through ``step`` (bounded memory) instead of one forward, with the same
scores and ranks; other models keep the one forward; and the CLI resolves ``--model`` once."""
import numpy as np
import pytest
import torch

import zoo.evaluate as ev
import zoo.pretrained
from test_evaluate import exits
from tiny_models import tiny
from zoo.data import EvalExamples
from zoo.evaluate import evaluate_model

EXACT = ["mamba4rec", "lrurec", "gru4rec", "tim4rec_causal"]
CHUNK = 7                                   # the tests' chunk: histories of up to 40 items, several chunks each


def long_examples(n_users=9, seed=3, timestamps=False):
    """Histories of 1..40 items over items 1..11 (many longer than ``CHUNK``, one exactly ``CHUNK``, one a multiple
    of it); targets 1..11."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 41, n_users)
    lengths[:4] = [40, CHUNK, 3 * CHUNK, 1]
    hist = [rng.integers(1, 12, n).astype(np.int64) for n in lengths]
    ts = [np.cumsum(rng.integers(0, 5000, n)).astype(np.float64) + 1e9 for n in lengths] if timestamps else None
    return EvalExamples(hist, rng.integers(1, 12, n_users).astype(np.int64), [f"u{i}" for i in range(n_users)], ts)


def run(model, ex, chunk, monkeypatch, **kw):
    """``evaluate_model(..., max_len="all")`` with ``STEP_CHUNK_TOKENS = chunk``: ``(metrics, ranks, scores, widths,
    steps)``, ``scores`` the ``[B, n_items]`` tensors ranked (in batch order), ``widths`` those ``predict`` read,
    ``steps`` the item counts ``step`` was fed."""
    monkeypatch.setattr(ev, "STEP_CHUNK_TOKENS", chunk)
    scores, widths, steps = [], [], []
    rank = ev.rank_of_target
    monkeypatch.setattr(ev, "rank_of_target", lambda s, t, *a: scores.append(s.clone()) or rank(s, t, *a))
    predict, step = model.predict, model.step
    monkeypatch.setattr(model, "predict", lambda ids, *a, **k: widths.append(ids.shape[1]) or predict(ids, *a, **k),
                        raising=False)
    monkeypatch.setattr(model, "step", lambda ids, *a, **k: steps.append(ids.shape[1]) or step(ids, *a, **k),
                        raising=False)
    metrics, ranks = evaluate_model(model, ex, max_len="all", progress=False, return_ranks=True, any_ks=True, **kw)
    monkeypatch.undo()
    return metrics, ranks, scores, widths, steps


def near_tied(scores, targets, rel=1e-4):
    """``[B]`` bool: the target's score is within ``rel`` (relative) of another item's (its rank could flip)."""
    t = scores.gather(1, targets[:, None])
    gap = (scores - t).abs()
    gap.scatter_(1, targets[:, None], float("inf"))
    return (gap <= rel * t.abs().clamp_min(1.0)).any(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("model_type", EXACT)
def test_chunked_whole_history_equals_one_forward(model_type, dtype, monkeypatch):
    """Every history longer than the chunk is scored through ``step`` in chunks of at most ``CHUNK`` items (never a
    forward wider than ``CHUNK``), its scores equal the one-forward path's to 1e-5 (relative) and its ranks exactly
    (float32: where the target is not near-tied), with batches mixing short and long histories."""
    model = tiny(model_type).to(dtype)
    ex = long_examples(timestamps=model.uses_timestamps)
    targets = torch.as_tensor(ex.targets)
    m0, r0, s0, w0, st0 = run(model, ex, 10**9, monkeypatch, ks=(1, 3, 5), batch_size=3)
    m1, r1, s1, w1, st1 = run(model, ex, CHUNK, monkeypatch, ks=(1, 3, 5), batch_size=3)
    assert not st0 and max(w0) == 40                         # the old path: one forward over the longest history
    assert max(w1) <= CHUNK and max(st1) == CHUNK            # the chunked path: nothing wider than a chunk
    n_long = sum(len(h) > CHUNK for h in ex.histories)
    assert n_long >= 3 and len(st1) >= n_long + 2            # several chunks for the long histories
    assert len(s0) == len(s1)
    for a, b in zip(s0, s1, strict=True):
        assert a.shape == b.shape and torch.isneginf(b[:, 0]).all()
        fin = torch.isfinite(a)
        assert torch.equal(fin, torch.isfinite(b))
        assert torch.allclose(b[fin], a[fin], rtol=1e-5, atol=1e-5 * float(a[fin].abs().max()))
    scores0 = torch.empty(len(ex), s0[0].shape[1], dtype=s0[0].dtype)
    done = 0
    # batches go by length (shortest first, ties in example order): the rows of each recorded tensor, in that order
    order = np.argsort([len(h) for h in ex.histories], kind="stable")
    for a in s0:
        scores0[torch.as_tensor(order[done:done + len(a)])] = a
        done += len(a)
    sure = ~near_tied(scores0.double(), targets) if dtype == torch.float32 else torch.ones(len(ex), dtype=torch.bool)
    assert sure.sum() >= len(ex) - 1
    assert torch.equal(r0[sure], r1[sure])
    if dtype == torch.float64:
        assert m0 == m1


def test_chunked_path_keeps_the_protocol_options(monkeypatch):
    """``exclude_history`` (the whole history masked), ``history_share`` and sampled ``negatives`` give the same
    metrics and ranks on the chunked path as on the one forward (float64)."""
    model = tiny("mamba4rec").double()
    ex = long_examples(n_users=12, seed=5)
    full = dict(ks=(1, 2, 4), batch_size=2, exclude_history=True, history_share=True)
    m0, r0, *_ = run(model, ex, 10**9, monkeypatch, **full)
    m1, r1, _, w1, _ = run(model, ex, CHUNK, monkeypatch, **full)
    assert max(w1, default=0) <= CHUNK and torch.equal(r0, r1) and m0 == m1
    negs = np.random.default_rng(1).integers(1, 12, (len(ex), 3))     # long histories leave none to sample
    m0, r0, *_ = run(model, ex, 10**9, monkeypatch, ks=(1, 2), negatives=negs)
    m1, r1, _, w1, _ = run(model, ex, CHUNK, monkeypatch, ks=(1, 2), negatives=negs)
    assert max(w1, default=0) <= CHUNK and torch.equal(r0, r1) and m0 == m1


def test_models_without_an_exact_step_keep_the_one_forward(monkeypatch):
    """SSD4Rec (``has_exact_step = False``, no fixed window) reads each whole history in one forward whatever
    ``STEP_CHUNK_TOKENS``; a window (the default ``max_len``) is never chunked either."""
    model = tiny("ssd4rec")
    ex = long_examples()
    _, r, _, widths, steps = run(model, ex, CHUNK, monkeypatch, ks=(1, 5), batch_size=3)
    assert not steps and max(widths) == 40 and len(r) == len(ex)
    exact = tiny("mamba4rec")
    monkeypatch.setattr(ev, "STEP_CHUNK_TOKENS", 2)
    widths = []
    predict = exact.predict
    monkeypatch.setattr(exact, "predict", lambda ids, *a, **k: widths.append(ids.shape[1]) or predict(ids, *a, **k),
                        raising=False)
    evaluate_model(exact, ex, ks=(1, 5), progress=False)
    assert max(widths) == exact.config.max_seq_length


def test_stepped_scores_refuse_an_overflow_naming_the_user(monkeypatch):
    """A state or score gone NaN on the chunked path is the one-line :class:`ScoreOverflow` naming the user (as the
    forward's NaN scores are), not ``step``'s refusal of a NaN state; clean rows score as ``predict`` does."""
    model = tiny("gru4rec")
    real = model.step
    poison = {}                                  # item 5 turns this output of the step NaN: "state" or "logits"

    def step(ids, state, **kw):
        logits, state = real(ids, state, **kw)
        if bool((ids == 5).any()):
            if poison["what"] == "state":
                state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
            else:
                logits = torch.full_like(logits, float("nan"))
        return logits, state

    monkeypatch.setattr(model, "step", step, raising=False)
    ids = torch.tensor([[1, 2, 3, 4, 6, 7, 8, 9, 1, 2], [1, 2, 3, 1, 2, 3, 1, 2, 3, 5]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    poison["what"] = "logits"                                                 # bob's 5 in the last chunk
    with pytest.raises(ev.ScoreOverflow, match="for user 'bob'"):
        ev.stepped_scores(model, ids, mask, ["alice", "bob"], chunk=3)
    clean = ev.stepped_scores(model, ids[:1], mask[:1], ["alice"], chunk=3)
    ref = ev.predict_scores(model, ids[:1], mask[:1], ["alice"])
    assert torch.isneginf(clean[:, 0]).all() and torch.allclose(clean, ref, rtol=1e-5, atol=1e-6)
    poison["what"] = "state"
    ids[1, 1] = 5                                                             # in the first chunk: the state
    with pytest.raises(ev.ScoreOverflow, match="for user 'bob'"):
        ev.stepped_scores(model, ids, mask, ["alice", "bob"], chunk=3)


@pytest.mark.parametrize("name", ["runs/no-such-run", "no-such-org/no-such-model"])
def test_cli_resolves_the_model_once(name, monkeypatch, capsys):
    """``--model`` is resolved (looked up, for a Hub id downloaded) once: a name that cannot be resolved exits 1 with
    the resolver's error after one look-up, not a second one to raise it again."""
    calls = []
    resolve = zoo.pretrained.resolve_pretrained

    def counting(model, **kw):
        calls.append(model)
        return resolve(model, **kw)

    monkeypatch.setattr(zoo.pretrained, "resolve_pretrained", counting)
    exits(capsys, ["--model", name, "--data", "x.inter", "--no-progress"], 1, f"error: --model {name}:")
    assert calls == [name]
