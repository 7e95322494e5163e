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
    """Assert that stepping each history through ``model.step`` reproduces the full forward at every position.

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
    worst = 0.0
    for r, n in enumerate(lengths):
        offset = 0 if model.padding_side == "right" else L - n
        state = model.init_state(1)
        pos = 0
        while pos < n:
            if chunk_plan == "ones":
                c = 1
            elif chunk_plan == "all":
                c = n
            else:
                c = rng.choice([1, 1, 2, 3, 7, 16, 64])
            c = min(c, n - pos)
            x = torch.tensor([hist[r][pos:pos + c]])
            t = torch.tensor([ts_lists[r][pos:pos + c]], dtype=torch.float64) if timestamps else None
            with torch.no_grad():
                logits, state = model.step(x, state, timestamps=t, all_positions=True)   # [1, c, V]
            ref = full[r, offset + pos: offset + pos + c]
            diff = (logits[0] - ref).abs().max().item()
            worst = max(worst, diff)
            assert diff <= atol, (f"row {r} (len {n}) positions {pos}..{pos + c - 1}: step vs full forward "
                                  f"max abs diff {diff:.3g} > {atol}")
            pos += c
    return worst
