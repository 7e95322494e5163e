"""Batches for training (all-position windows) and evaluation (last ``max_len`` items of each history).

Training windows
----------------
For each user training sequence ``s`` (length ``n >= 2``) the aligned pairs are ``inputs = s[:-1]`` and
``labels = s[1:]`` (label ``t`` is the item after input ``t``). These ``n - 1`` pairs are cut **from the end** into
windows of at most ``max_len`` pairs: ``[n-1-max_len, n-1)``, ``[n-1-2*max_len, n-1-max_len)``, ... down to the
start; the leftmost window holds the remainder and may be short. Every pair is used exactly once.

This is LRURec's sliding window with ``step = max_len`` (``sliding_window_size = 1.0``), with two documented
differences: (1) LRURec keeps only the last ``max_len`` items of a sequence shorter than ``2 * max_len`` and drops
the remainder left of the last full window, while here the remainder becomes its own short window; (2) LRURec's
label vector has one more item than its inputs (at the leftmost label the input is padding, target ``s[0]``); here
inputs and labels are aligned pairs, so no position predicts from an empty history.

Overlapping windows (``stride < max_len``)
------------------------------------------
With windows cut every ``max_len`` pairs, a target's context is its offset inside its window: on ML-1M (L = 200) the
mean training context is 80 items and only 15% of targets see >= 150, while RecBole's prefix augmentation gives every
target its last ``min(i + 1, L)`` items (mean 119, 43% >= 150) and the evaluation histories are cut to the full L.
``stride = s < max_len`` closes that gap at ``~L / s`` times the compute for long users: windows end at
``n-1, n-1-s, n-1-2s, ...`` (each ``max_len`` long) until one starts at the sequence start; each window
**supervises only its last ``s`` positions** (the leftmost window supervises all of its positions), so every pair is
still a target exactly once, now with context ``>= max_len - s + 1`` (or its whole prefix when shorter) -- the
same targets and contexts as prefix augmentation when ``s = 1``. The unsupervised leading positions of a window get
label 0 (no target) in :func:`iterate_batches`; ``stride = max_len`` is the non-overlapping scheme above.

All windows live in flat arrays (``inputs``, ``labels``, ``timestamps``) addressed by ``starts``/``lengths``, so a
batch is built with one vectorised gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ..vocab import int_id
from .readers import _time_seconds
from .split import _F64, _plain_rows, int_setting


@dataclass
class TrainingWindows:
    """``W`` training windows stored flat.

    Args:
        inputs: ``[T]`` int64 input items of all windows, concatenated.
        labels: ``[T]`` int64 next items aligned with ``inputs``.
        timestamps: ``[T]`` float64 timestamps of the input items, or ``None``.
        starts: ``[W]`` int64 offset of each window in the flat arrays.
        lengths: ``[W]`` int64 number of positions (1..max_len) of each window.
        users: ``[W]`` int64 index (into the ``sequences`` given) of the user each window comes from.
        max_len: the window length limit.
        skip: ``[W]`` int64 leading positions of each window that are context only (label 0 in batches); all zeros
            unless windows overlap (``stride < max_len``).
        stride: pairs between the ends of consecutive windows of a user.
    """

    inputs: np.ndarray
    labels: np.ndarray
    timestamps: np.ndarray | None
    starts: np.ndarray
    lengths: np.ndarray
    users: np.ndarray
    max_len: int
    skip: np.ndarray | None = None
    stride: int | None = None

    def __post_init__(self):
        if self.skip is None:
            self.skip = np.zeros(len(self.starts), dtype=np.int64)
        if self.stride is None:
            self.stride = self.max_len

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def n_positions(self) -> int:
        """Total supervised positions (targets): each training pair once."""
        return int((self.lengths - self.skip).sum())

    @property
    def n_computed(self) -> int:
        """Total positions run through the model per epoch (supervised + overlap context)."""
        return int(self.lengths.sum())

    def window(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs [l], labels [l])`` of window ``w`` (views)."""
        s, l = int(self.starts[w]), int(self.lengths[w])
        return self.inputs[s:s + l], self.labels[s:s + l]


def training_windows(sequences: Sequence[np.ndarray], max_len: int,
                     timestamps: Sequence[np.ndarray] | None = None, stride: int | None = None) -> TrainingWindows:
    """All-position training windows of ``sequences`` (see the module docstring).

    Args:
        sequences: ``U`` integer arrays of internal item indices ``>= 1`` (e.g. ``Split.train``); sequences shorter
            than 2 give no window. Float, bool or string ids, 0 (padding) and negative ids are a ``ValueError`` naming
            the sequence and position (an int64 cast would cut 1.7 to item 1 silently).
        max_len: maximum window length ``L`` (e.g. the model's ``max_seq_length``): an int ``>= 1`` (Python or
            numpy; a bool, a float or a string is a ``ValueError``).
        timestamps: ``U`` float64 arrays aligned with ``sequences``, or ``None``; NaN/inf or decreasing timestamps
            in a used sequence are a ``ValueError`` naming the sequence and position. Other dtypes are read as
            :class:`~zoo.data.readers.Interactions` reads them: ``datetime64`` becomes seconds; bools, strings,
            complex numbers and float16 / float32 seconds too large for their dtype are a ``ValueError``.
        stride: int ``1 <= s <= max_len``, pairs between consecutive window ends (default ``max_len``: no overlap); each
            window supervises only its last ``s`` positions except a user's leftmost window, which supervises all.
    Returns:
        :class:`TrainingWindows`; windows are ordered by user, then from the left of each sequence to the right.
    """
    max_len = int_setting(max_len, "max_len", 1)
    if stride is None:
        stride = max_len
    else:
        s = int_id(stride)
        if s is None or not 1 <= s <= max_len:
            raise ValueError(f"stride must be in [1, max_len = {max_len}]{' (an int)' if s is None else ''}, got "
                             f"{repr(stride) if s is None else s}")
        stride = s
    if timestamps is not None and len(timestamps) != len(sequences):
        raise ValueError(f"got {len(timestamps)} timestamp arrays for {len(sequences)} sequences")
    lens = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    use = np.flatnonzero(lens >= 2)
    if len(use) == 0:
        raise ValueError("no training sequence has >= 2 items; nothing to train on")
    seqs = [np.asarray(sequences[u]) for u in use]
    for u, s in zip(use, seqs):
        if s.dtype.kind not in "iu" or s.ndim != 1:  # float ids would be cut (1.7 -> item 1), bools read as 0 and 1
            got = f"{s.dtype} values" if s.ndim == 1 else f"a {s.ndim}-D {s.dtype} array"
            raise ValueError(f"sequence {u} must be a 1-D array of int item indices >= 1, got {got} "
                             f"{s[:3].tolist()}{' ...' if len(s) > 3 else ''}")
    inputs = np.concatenate([s[:-1] for s in seqs]).astype(np.int64, copy=False)
    labels = np.concatenate([s[1:] for s in seqs]).astype(np.int64, copy=False)
    # inputs cover every item but each sequence's last, labels every item but its first: one min each
    if min(int(inputs.min()), int(labels.min())) < 1:
        for u, s in zip(use, seqs):                      # integer arrays (checked above): compared as they are
            bad = np.flatnonzero(s < 1)
            if len(bad):
                raise ValueError(f"sequence {u} has item index {int(s[bad[0]])} at position {int(bad[0])}: internal "
                                 "item indices are >= 1 (0 is padding)")
    ts = None
    if timestamps is not None:
        for u in use:
            if len(timestamps[u]) != lens[u]:
                raise ValueError(f"sequence {u} has {lens[u]} items but {len(timestamps[u])} timestamps")
        full = [timestamps[u] for u in use]
        if not _plain_rows(full, _F64):                         # float64 rows (the splits') as they are
            full = [_row_seconds(t, u) for u, t in zip(use, full)]
        _check_window_timestamps(full, use)
        ts = np.concatenate([t[:-1] for t in full])
    m = lens[use] - 1                                           # pairs per user
    base = np.concatenate([[0], np.cumsum(m)[:-1]])             # flat offset of each user's pairs
    # windows end at m, m - s, m - 2s, ... down to the first end <= max_len (that window starts at the sequence start)
    nw = 1 + np.maximum(0, -(-(m - max_len) // stride))        # windows per user
    user_of = np.repeat(np.arange(len(use)), nw)
    # k = 0 for the leftmost window of a user, nw-1 for the rightmost one
    k = np.arange(int(nw.sum())) - np.repeat(np.cumsum(nw) - nw, nw)
    from_end = np.repeat(nw, nw) - 1 - k                        # 0 for the rightmost window
    end = base[user_of] + m[user_of] - from_end * stride
    start = np.maximum(base[user_of], end - max_len)
    length = end - start
    skip = np.where(k == 0, 0, length - stride)                 # leftmost window: all positions are targets
    return TrainingWindows(inputs, labels, ts, start.astype(np.int64), length.astype(np.int64),
                           use[user_of].astype(np.int64), max_len, skip.astype(np.int64), stride)


def _row_seconds(row, u: int) -> np.ndarray:
    """Sequence ``u``'s timestamps as float64 seconds, read as :class:`~zoo.data.readers.Interactions` reads them
    (:func:`~zoo.data.readers._time_seconds`: bools, strings, complex numbers, float16 / float32 seconds too large for
    their dtype are a ``ValueError``, ``datetime64`` of any unit becomes seconds); a float64 row as it is."""
    t = np.asarray(row)
    if t.dtype == np.float64 and t.ndim == 1:
        return t
    if t.ndim != 1:
        raise ValueError(f"the timestamps of sequence {u} must be a 1-D array, got shape {list(t.shape)}")
    return _time_seconds(t, f"the timestamps of sequence {u}", lambda i: f"sequence {u}, position {i}: timestamp "
                         f"{t[i]}", holder=f"the timestamp row of sequence {u}")


def _check_window_timestamps(full: list[np.ndarray], use: np.ndarray) -> None:
    """``ValueError`` naming the sequence and position when the timestamps of the sequences ``use`` (``full``, float64,
    aligned) hold NaN/inf or decrease: a time-aware model would read garbage gaps (its own check names only the batch
    row, at the first batch). One vectorised pass over all of them."""
    flat = np.concatenate(full)
    bad = ~np.isfinite(flat)
    if not bad.any():
        step = np.diff(flat) < 0                                # a drop between a user's last and the next's first
        ends = np.cumsum([len(t) for t in full])[:-1] - 1      # item is no decrease
        step[ends] = False
        if not step.any():
            return
    for u, t in zip(use, full):
        nan = np.flatnonzero(~np.isfinite(t))
        if len(nan):
            raise ValueError(f"sequence {u} has timestamp {float(t[nan[0]])!r} at position {int(nan[0])}: timestamps "
                             "are finite seconds")
        dec = np.flatnonzero(np.diff(t) < 0)
        if len(dec):
            p = int(dec[0]) + 1
            raise ValueError(f"sequence {u}'s timestamps decrease at position {p} ({t[p - 1]:.10g} -> {t[p]:.10g}): "
                             "each sequence must be in time order")


def _gather_padded(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, padding_side: str,
                   fill=0) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``flat[starts[b] : starts[b] + lengths[b]]`` padded to ``[B, max(lengths)]`` -> ``(values, mask)``."""
    L = int(lengths.max())
    col = np.arange(L)[None, :]
    if padding_side == "right":
        mask = col < lengths[:, None]
        src = starts[:, None] + col
    else:
        shift = (L - lengths)[:, None]
        mask = col >= shift
        src = starts[:, None] + col - shift
    src = np.where(mask, src, 0)
    out = np.where(mask, flat[src], fill) if len(flat) else np.full(mask.shape, fill, dtype=flat.dtype)
    return out.astype(flat.dtype, copy=False), mask


def _check_side(padding_side: str) -> None:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")


def iterate_batches(windows: TrainingWindows, batch_size: int, padding_side: str, shuffle: bool = True,
                    seed: int | None = None, generator: np.random.Generator | None = None,
                    bucket_by_length: bool = False, drop_last: bool = False) -> Iterator[dict]:
    """Padded training batches over ``windows`` (one epoch).

    Args:
        windows: from :func:`training_windows`.
        batch_size: windows per batch ``B``, an int ``>= 1``.
        padding_side: ``"right"`` (RecBole models) or ``"left"`` (LRURec); use the model's ``padding_side``.
        shuffle: random window order (from ``generator``, else ``np.random.default_rng(seed)``).
        bucket_by_length: group windows of similar length into the same batch to cut padding compute: the shuffled
            windows are taken 50 batches at a time, sorted by length inside that pool, cut into batches, and the
            batches are shuffled again. Deterministic given the seed; batches are then not i.i.d. in length.
        drop_last: skip a final batch smaller than ``batch_size``.
    Yields:
        dicts of torch tensors, padded to the longest window of the batch (``Lb <= max_len``)::

            input_ids      [B, Lb] int64   (0 at padding)
            attention_mask [B, Lb] bool
            labels         [B, Lb] int64   (0 at padding = no target)
            timestamps     [B, Lb] float64 (only when the windows have timestamps; 0 at padding)
    """
    _check_side(padding_side)
    batch_size = int_setting(batch_size, "batch_size", 1)
    n = len(windows)
    rng = generator if generator is not None else np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle else np.arange(n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if bucket_by_length:
        pool = 50 * batch_size
        batches = []
        for p in range(0, n, pool):
            chunk = order[p:p + pool]
            chunk = chunk[np.argsort(windows.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        if shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
    for idx in batches:
        if drop_last and len(idx) < batch_size:
            continue
        starts, lengths = windows.starts[idx], windows.lengths[idx]
        ids, mask = _gather_padded(windows.inputs, starts, lengths, padding_side)
        labels, _ = _gather_padded(windows.labels, starts, lengths, padding_side)
        skip = windows.skip[idx]
        if skip.any():                                          # overlap context of strided windows: no target
            labels[np.cumsum(mask, axis=1) <= skip[:, None]] = 0  # cumsum - 1 = position in the window (real slots)
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                 "labels": torch.from_numpy(labels)}
        if windows.timestamps is not None:
            ts, _ = _gather_padded(windows.timestamps, starts, lengths, padding_side, fill=0.0)
            batch["timestamps"] = torch.from_numpy(ts)
        yield batch


def pad_sequences(seqs: Sequence[np.ndarray], padding_side: str, max_len: int | None = None,
                  dtype=np.int64, fill=0) -> tuple[np.ndarray, np.ndarray]:
    """``B`` 1-D arrays -> ``(values [B, L], mask [B, L])`` keeping the last ``max_len`` of each, padded on a side.

    ``L`` is the longest (truncated) row. Empty rows are allowed here (all padding); models reject them. With an
    integer ``dtype`` (ids) every non-empty row must hold integers (a float, bool or string row is a ``ValueError``
    naming it: the cast would cut 1.7 to 1). With a float ``dtype`` (timestamps) every non-empty row must hold
    numbers, ints or floats (a bool, string, complex, datetime or object row is a ``TypeError`` naming the row and
    its dtype: the cast read True as 1.0 and '5' as 5.0). A row that is not 1-D is a ``ValueError``. ``max_len``
    is an int >= 1 or ``None`` (no truncation): 0 or a negative one kept the whole row or cut the oldest items.
    """
    _check_side(padding_side)
    max_len = int_setting(max_len, "max_len", 1, " (or None: no truncation)")
    rows = [np.asarray(s) for s in seqs]
    kind = np.dtype(dtype).kind
    if kind in "iuf":                # an int cast would cut 1.7 to 1 and read True as item 1, a float one True as 1.0
        allowed, what = ("iu", "int ids") if kind in "iu" else ("iuf", "numbers")
        for r, row in enumerate(rows):
            if row.ndim != 1 or (row.size and row.dtype.kind not in allowed):
                got = f"{row.dtype} values" if row.ndim == 1 else f"a {row.ndim}-D {row.dtype} array"
                # a float row's wrong type is a TypeError; a wrong shape, or an int row's type, a ValueError (as ever)
                error = TypeError if kind == "f" and row.ndim == 1 else ValueError
                raise error(f"row {r} must be a 1-D array of {what}, got {got} "
                            f"{row.ravel()[:3].tolist()}{' ...' if row.size > 3 else ''}")
    rows = [r.astype(dtype, copy=False) for r in rows]
    if max_len is not None:
        rows = [r[-max_len:] if len(r) > max_len else r for r in rows]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    if len(rows) == 0:
        raise ValueError("no sequences given")
    flat = np.concatenate(rows) if lengths.sum() else np.zeros(0, dtype=dtype)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    if lengths.max() == 0:
        return np.full((len(rows), 0), fill, dtype=dtype), np.zeros((len(rows), 0), dtype=bool)
    return _gather_padded(flat, starts, lengths, padding_side, fill=fill)


def _name_bad_index(examples, rows, ids: np.ndarray, mask: np.ndarray, targets: np.ndarray) -> None:
    """``ValueError`` naming the first example of a batch whose (kept) history or target holds an index ``< 1``."""
    for b, i in enumerate(rows):
        h = ids[b][mask[b]]
        if (h < 1).any():
            raise ValueError(f"example {i} (user {examples.users[i]!r}) has item index {int(h[h < 1][0])} in its "
                             "history: internal item indices are >= 1 (0 is padding)")
        if targets[b] < 1:
            raise ValueError(f"example {i} (user {examples.users[i]!r}) has target item index {int(targets[b])}: "
                             "internal item indices are >= 1 (0 is padding)")


def eval_batches(examples, max_len: int | None, padding_side: str, batch_size: int = 256,
                 max_tokens: int | None = None) -> Iterator[dict]:
    """Evaluation batches from :class:`~zoo.data.split.EvalExamples`.

    Each history is cut to its last ``max_len`` items (the model's window; ``None``: the whole history) and padded
    on ``padding_side``. By default the batches hold ``batch_size`` examples each, in example order. With
    ``max_tokens`` they go by history length instead (shortest first, ties in example order), each as many examples
    as fit ``rows * longest <= max_tokens`` (at least one): whole histories run from 3 to thousands of items, and a
    batch padded to its longest would cost memory for every row at that length. ``max_len``, ``batch_size`` and
    ``max_tokens`` are ints ``>= 1`` (Python or numpy; a bool, a float or a string is a ``ValueError``). History ids
    and targets are int indices ``>= 1``: others are a ``ValueError`` naming the example (checked per batch, on the
    part of each history the window keeps).

    Yields:
        dicts of torch tensors::

            input_ids      [B, Lb] int64
            attention_mask [B, Lb] bool
            targets        [B]     int64  (held-out next item)
            timestamps     [B, Lb] float64 (only when the examples have history timestamps)
            index          slice, or [B] int64 tensor with max_tokens (positions of this batch in ``examples``)
    """
    _check_side(padding_side)
    max_len = int_setting(max_len, "max_len", 1, " (or None: whole histories)")
    batch_size = int_setting(batch_size, "batch_size", 1)
    max_tokens = int_setting(max_tokens, "max_tokens", 1, " (or None)")
    n = len(examples)
    for r, h in enumerate(examples.histories):
        if len(h) == 0:
            raise ValueError(f"example {r} (user {examples.users[r]!r}) has an empty history")
    if max_tokens is None:
        groups = [slice(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    else:
        lengths = np.fromiter((len(h) for h in examples.histories), dtype=np.int64, count=n)
        if max_len is not None:
            lengths = np.minimum(lengths, max_len)
        order = np.argsort(lengths, kind="stable")
        groups, s = [], 0
        while s < n:                       # lengths ascend: a batch's longest row is its last
            e = s + 1
            while e < n and (e + 1 - s) * lengths[order[e]] <= max_tokens:
                e += 1
            groups.append(torch.from_numpy(order[s:e].copy()))
            s = e
    for sl in groups:
        rows = range(*sl.indices(n)) if isinstance(sl, slice) else sl.tolist()
        hist = [examples.histories[i] for i in rows]
        ids, mask = pad_sequences(hist, padding_side, max_len)
        targets = np.asarray(examples.targets)[sl.numpy() if isinstance(sl, torch.Tensor) else sl]
        if targets.dtype.kind not in "iu":
            raise ValueError(f"targets must be int item indices >= 1, got {targets.dtype} values "
                             f"{targets[:3].tolist()}")
        targets = targets.astype(np.int64, copy=False)
        if (ids[mask] < 1).any() or (targets < 1).any():
            _name_bad_index(examples, rows, ids, mask, targets)
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                 "targets": torch.from_numpy(np.ascontiguousarray(targets)), "index": sl}
        if examples.history_timestamps is not None:
            ts, _ = pad_sequences([examples.history_timestamps[i] for i in rows], padding_side, max_len,
                                  dtype=np.float64, fill=0.0)
            batch["timestamps"] = torch.from_numpy(ts)
        yield batch


__all__ = ["TrainingWindows", "training_windows", "iterate_batches", "eval_batches", "pad_sequences"]
