"""Shared check of the central invariant: full forward == prefix forward followed by step calls."""

from __future__ import annotations

import random

import torch


def full_logits_per_position(model, ids, mask, timestamps=None):
    """``[B, L, V]`` logits at every position of a padded batch (position t predicts item t+1)."""
    with torch.no_grad():
        out = model(ids, mask, timestamps=timestamps)
        return model.score(out.hidden_states)


def check_step_equivalence(model, lengths, chunk_plan="mixed", atol=1e-4, seed=0, timestamps=False):
    """Assert that stepping each history through ``model.step`` reproduces the full forward at every position:
    each row alone (``B = 1``), then the rows at least as long as the median length together in one batched state
    (``B >= 2`` with different histories, over the first ``min`` of their lengths), so that a state whose rows mix
    or whose layers are packed in the wrong order cannot pass.

    Args:
        lengths: history lengths, one row each (batched forward with padding on the model's side).
        chunk_plan: "ones" (T = 1 per event), "mixed" (random chunk sizes incl. large), or "all" (one chunk).
    Returns the max abs difference seen.
    """
    rng = random.Random(seed)
    model.eval()
    V = model.config.n_items
    hist = [[rng.randrange(1, V) for _ in range(n)] for n in lengths]
    L = max(lengths)
    if timestamps:
        ts_lists = []
        for n in lengths:
            t, row = rng.randrange(10**8, 2 * 10**8), []
            for _ in range(n):
                t += rng.choice([0, 1, 30, 600, 86400, 10**6])
                row.append(float(t))
            ts_lists.append(row)
        ids, mask, ts = model.pad_batch(hist, max_length=L, timestamps=ts_lists)
    else:
        ids, mask = model.pad_batch(hist, max_length=L)
        ts = None
    full = full_logits_per_position(model, ids, mask, ts)                 # [B, L, V]
    offsets = [0 if model.padding_side == "right" else L - n for n in lengths]
    _check_reads_its_history(model, hist, ts_lists if timestamps else None,
                             lambda r: full[r, offsets[r] + lengths[r] - 1], atol)

    def chunks(n):
        pos = 0
        while pos < n:
            c = {"ones": 1, "all": n}.get(chunk_plan) or rng.choice([1, 1, 2, 3, 7, 16, 64])
            yield pos, min(c, n - pos)
            pos += c

    worst = 0.0
    med = sorted(lengths)[len(lengths) // 2]
    batched = [r for r, n in enumerate(lengths) if n >= med]
    plans = [([r], n) for r, n in enumerate(lengths)]
    if len(batched) >= 2:
        plans.append((batched, min(lengths[r] for r in batched)))
    for rows, n in plans:
        state = model.init_state(len(rows))
        for pos, c in chunks(n):
            x = torch.tensor([hist[r][pos:pos + c] for r in rows])
            t = (torch.tensor([ts_lists[r][pos:pos + c] for r in rows], dtype=torch.float64) if timestamps
                 else None)
            with torch.no_grad():
                logits, state = model.step(x, state, timestamps=t, all_positions=True)   # [len(rows), c, V]
            for i, r in enumerate(rows):
                ref = full[r, offsets[r] + pos: offsets[r] + pos + c]
                diff = (logits[i] - ref).abs().max().item()
                worst = max(worst, diff)
                assert diff <= atol, (f"row {r} (len {lengths[r]}, stepped in a batch of {len(rows)}) positions "
                                      f"{pos}..{pos + c - 1}: step vs full forward max abs diff {diff:.3g} > {atol}")
    return worst


def history_effect(model, history, timestamps=None, after=None) -> float:
    """Max abs difference of the logits after ``history`` (``after``, ``[V]``, when the caller has them) from those
    after its last item alone (with its timestamp for a time-aware model): how much the model reads what came before
    the newest item."""
    if after is None:
        after = _last_logits(model, history, timestamps)
    alone = _last_logits(model, history[-1:], None if timestamps is None else timestamps[-1:])
    return (after - alone).abs().max().item()


def _last_logits(model, history, timestamps=None):
    """``[V]`` logits after one history (its timestamps for a time-aware model)."""
    if timestamps is not None:
        ids, mask, ts = model.pad_batch([history], max_length=len(history), timestamps=[timestamps])
    else:
        (ids, mask), ts = model.pad_batch([history], max_length=len(history)), None
    return full_logits_per_position(model, ids, mask, ts)[0, -1]


def _check_reads_its_history(model, hist, ts_lists, after, atol, factor=10.0):
    """Negative control: the longest history's last logits (``after(r)``: row ``r``'s, already computed) must differ
    from those after its last item alone by more than ``factor * atol``. A model that barely reads its history (tiny
    random inits can move scores by ~1e-5) would let a step that lost, reset or mixed up its state pass the ``atol``
    comparison."""
    r = max(range(len(hist)), key=lambda i: len(hist[i]))
    n = len(hist[r])
    if n < 2:
        return
    moved = history_effect(model, hist[r], ts_lists[r] if ts_lists is not None else None, after=after(r))
    print(f"[equivalence] {type(model).__name__}: history moves the last logits by {moved:.3g} (atol {atol})")
    assert moved > factor * atol, (
        f"{type(model).__name__} barely reads its history: the logits after {n} items differ from those after the "
        f"last item alone by {moved:.3g} <= {factor} x atol ({atol}), so a lost or mixed-up state could pass; "
        "test with a history-sensitive model (larger init or trained weights)")
