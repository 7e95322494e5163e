"""Shared checks of the central invariant: full forward == prefix forward followed by step calls (recurrent models), or
step == a forward over each new item's window (models that re-encode a window)."""

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
        ts_lists = [_timestamps(rng, n) for n in lengths]
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


def _timestamps(rng, n, start=None):
    """``n`` non-decreasing Unix-second timestamps (float) with gaps from 0 (same second) to ~12 days."""
    t, row = rng.randrange(10**8, 2 * 10**8) if start is None else start, []
    for _ in range(n):
        t += rng.choice([0, 1, 30, 600, 86400, 10**6])
        row.append(float(t))
    return row


def window_logits(model, history, timestamps=None):
    """``[V]`` logits of a forward over the last ``max_seq_length`` items of ``history`` (with their timestamps for a
    time-aware model): what a window model's step must give after the newest of them."""
    args = {} if timestamps is None else {"timestamps": [timestamps]}
    batch = model.pad_batch([history], **args)                              # truncated to the last max_seq_length
    ids, mask = batch[:2]
    with torch.no_grad():
        return model(ids, mask, **({} if timestamps is None else {"timestamps": batch[2]})).logits[0]


def check_window_step_equivalence(model, lengths, chunk_plan="mixed", new=5, atol=1e-4, seed=0, timestamps=False):
    """The central invariant for models whose step re-encodes a window (SASRec, BERT4Rec, TiM4Rec, SSD4Rec): after
    every new item the step's logits equal a forward over that item's own window, the last ``max_seq_length`` items of
    the history up to it.

    Each history (give lengths below, at and beyond ``max_seq_length``) is stepped alone from ``init_state(1)`` in
    chunks (``chunk_plan``: "ones", "mixed", or a list of chunk sizes, the last one cut to what is left), checking every
    position (``all_positions``), that the input state is not modified, and the window the state keeps (``window_ids``
    oldest first and zero-padded, ``window_len``, ``window_ts`` where present). Then the final states, at different
    fill levels, are stacked into one batch and stepped ``new`` items at once, every position checked again; that
    batched step is repeated with ``step_chunk_elems = 1`` (one window per encoder call), so that the chunked path is
    the same. A negative control asserts that the longest history moves the last logits by more than ``10 * atol``.
    Returns the max abs difference seen.
    """
    rng = random.Random(seed)
    model.eval()
    V, M = model.config.n_items, model.config.max_seq_length
    hist = [[rng.randrange(1, V) for _ in range(n)] for n in lengths]
    ts_lists = [_timestamps(rng, n) for n in lengths] if timestamps else None
    r_long = max(range(len(lengths)), key=lambda r: lengths[r])
    if lengths[r_long] >= 2:
        h, t = hist[r_long], ts_lists[r_long] if timestamps else None
        moved = (window_logits(model, h, t) - window_logits(model, h[-1:], t[-1:] if t else None)).abs().max().item()
        _assert_reads_history(model, len(h), moved, atol)

    def ref(r, upto, h=None, t=None):
        h = hist[r] if h is None else h
        t = (ts_lists[r] if t is None else t) if timestamps else None
        return window_logits(model, h[:upto], t[:upto] if timestamps else None)

    def sizes(n):
        if chunk_plan == "ones":
            return [1] * n
        if chunk_plan == "mixed":
            out = []
            while sum(out) < n:
                out.append(min(rng.choice([1, 1, 2, 3, 7, 16]), n - sum(out)))
            return out
        out = []
        for c in chunk_plan:
            if sum(out) < n:
                out.append(min(c, n - sum(out)))
        return out + ([n - sum(out)] if sum(out) < n else [])

    def step(state, items, ts):
        before = {k: v.clone() for k, v in state.items()}
        with torch.no_grad():
            logits, out = model.step(torch.tensor(items), state, all_positions=True,
                                     timestamps=None if ts is None else torch.tensor(ts, dtype=torch.float64))
        for k in state:
            assert torch.equal(state[k], before[k]), f"step modified its input state {k!r}"
        return logits, out

    worst, finals = 0.0, []
    for r, n in enumerate(lengths):
        state, pos = model.init_state(1), 0
        for c in sizes(n):
            logits, state = step(state, [hist[r][pos:pos + c]], [ts_lists[r][pos:pos + c]] if timestamps else None)
            for j in range(c):
                diff = (logits[0, j] - ref(r, pos + j + 1)).abs().max().item()
                worst = max(worst, diff)
                assert diff <= atol, (f"history {r} (len {n}, M {M}) position {pos + j} after a chunk of {c}: step vs "
                                      f"window forward max abs diff {diff:.3g} > {atol}")
            pos += c
            k = min(pos, M)
            assert int(state["window_len"][0, 0]) == k, (r, pos, state["window_len"])
            assert state["window_ids"][0, :k].tolist() == hist[r][pos - k:pos], f"history {r}: window_ids after {pos}"
            assert (state["window_ids"][0, k:] == 0).all(), f"history {r}: window_ids not zero-padded after {k}"
            if "window_ts" in state:
                assert state["window_ts"][0, :k].tolist() == ts_lists[r][pos - k:pos], f"history {r}: window_ts"
                assert (state["window_ts"][0, k:] == 0).all(), f"history {r}: window_ts not zero-padded"
        finals.append(state)
    assert len({min(n, M) for n in lengths}) >= 2, "give histories that fill the window to different levels"
    batch = {k: torch.cat([s[k] for s in finals]) for k in finals[0]}
    items = [[rng.randrange(1, V) for _ in range(new)] for _ in lengths]
    ts = [_timestamps(rng, new, start=int(ts_lists[r][-1])) for r in range(len(lengths))] if timestamps else None
    default = getattr(model, "step_chunk_elems", None)
    results = []
    for elems in ([default] if default is None else [default, 1]):
        if elems is not None:
            model.step_chunk_elems = elems
        try:
            logits, state = step(batch, items, ts)
        finally:
            if default is not None:
                model.step_chunk_elems = default
        results.append((elems, logits, state))
        for r, n in enumerate(lengths):
            for j in range(new):
                want = ref(r, n + j + 1, hist[r] + items[r], ts_lists[r] + ts[r] if timestamps else None)
                diff = (logits[r, j] - want).abs().max().item()
                worst = max(worst, diff)
                assert diff <= atol, (f"batched step (step_chunk_elems {elems}), history {r} (len {n}) new item {j}: "
                                      f"step vs window forward max abs diff {diff:.3g} > {atol}")
    for elems, _, state in results:
        for r, n in enumerate(lengths):
            k = min(n + new, M)
            assert int(state["window_len"][r, 0]) == k
            assert state["window_ids"][r, :k].tolist() == (hist[r] + items[r])[-k:], f"batched window_ids, row {r}"
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
    _assert_reads_history(model, n, moved, atol, factor)


def _assert_reads_history(model, n, moved, atol, factor=10.0):
    """``moved``: how far ``n`` items of history moved the last logits from those after the last item alone."""
    print(f"[equivalence] {type(model).__name__}: history moves the last logits by {moved:.3g} (atol {atol})")
    assert moved > factor * atol, (
        f"{type(model).__name__} barely reads its history: the logits after {n} items differ from those after the "
        f"last item alone by {moved:.3g} <= {factor} x atol ({atol}), so a lost or mixed-up state could pass; "
        "test with a history-sensitive model (larger init or trained weights)")


def check_low_precision_state(model, scan_states, n=50, rtol=1e-5, seed=0, timestamps=False):
    """A 16-bit model's step keeps its scan states in float32 between calls, as its forward and a many-item step
    carry them through the scan: ``n`` one-item steps end in the state one ``n``-item step ends in, with the last
    logits of both and of the forward within two ulps of the model's dtype (relative to their scale), and the
    ``scan_states`` carry float32 precision after both (they are not values of the model's dtype stored in float32:
    such a state, re-rounded every call, drifted from the forward by ~1e-2 of the logit scale over a few hundred
    one-item steps).

    States are ``[B, num_layers, ...]``. The first layer's (same inputs either way) must agree within ``rtol`` of its
    scale: float32 rounding only, where a state re-rounded to bfloat16/float16 is off by ~1e-4..1e-2. A later layer
    reads the layer before it in the model's dtype, which the parallel scan and the one-item steps (float32 results
    a few ulps apart) may round one ulp apart, so its states are held to one ulp of the model's dtype.
    Returns ``{name: [relative difference per layer]}`` (the logits' under ``"logits"``, vs the forward ``"forward"``).
    """
    rng = random.Random(seed)
    dtype = next(model.parameters()).dtype
    ulp = torch.finfo(dtype).eps
    model.eval()
    ids = torch.tensor([[rng.randrange(1, model.config.n_items) for _ in range(n)]])
    ts = torch.tensor([_timestamps(rng, n)], dtype=torch.float64) if timestamps else None
    with torch.no_grad():
        forward = model(ids, timestamps=ts).logits
        once_logits, once = model.step(ids, model.init_state(1), timestamps=ts)
        state = model.init_state(1)
        for p in range(n):
            logits, state = model.step(ids[:, p:p + 1], state, timestamps=None if ts is None else ts[:, p:p + 1])
    # a 16-bit model scores its items in float32 (SeqRecPreTrainedModel.score: 16-bit logits tie)
    assert logits.dtype == once_logits.dtype == forward.dtype == torch.float32

    def rel(got, want):
        return (got.double() - want.double()).abs().max().item() / max(want.abs().max().item(), 1e-30)

    out = {}
    for name, want in once.items():
        got = state[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        out[name] = [rel(got[:, i], want[:, i]) for i in range(want.shape[1])]
        for i, r in enumerate(out[name]):
            tol = rtol if i == 0 else ulp
            assert r <= tol, (f"state {name!r} layer {i}: {n} one-item steps vs one {n}-item step differ by {r:.3g} "
                              f"of its scale > {tol:.3g}")
    for name in scan_states:
        for how, s in (("one-item steps", state[name]), ("one step", once[name])):
            assert s.dtype == torch.float32, f"state {name!r} is {s.dtype}"
            assert not torch.equal(s, s.to(dtype).float()), (f"state {name!r} after {how} holds only {dtype} values: "
                                                             "the scan state was rounded to the model's dtype")
    out["logits"], out["forward"] = rel(logits, once_logits), rel(logits, forward)
    for what, r in (("one step", out["logits"]), ("the forward", out["forward"])):
        assert r <= 2 * ulp, (f"last logits after {n} one-item steps vs {what} differ by {r:.3g} of their scale "
                              f"> two {dtype} ulps ({2 * ulp:.3g})")
    return out
