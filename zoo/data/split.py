"""From interactions to per-user sequences and the leave-one-out split.

Pipeline (RecBole v1.2.0 sequential protocol, see ``models.md`` §1.1)::

    read_interactions(path)          # rows in file order
    -> kcore_filter(inter, 5, 5)     # iterative: drop users/items with < k interactions until stable
    -> build_sequences(inter)        # per-user chronological sequences + ItemVocab
    -> leave_one_out(ds)             # train seq[:-2]; valid seq[:-2] -> seq[-2]; test seq[:-1] -> seq[-1]

:func:`load_dataset` runs the first three steps.

Index conventions
-----------------
* Item internal indices are ``1..n_items`` (0 is padding), assigned by **first appearance in the filtered rows in
  file order** -- RecBole's ``_remap_ID_all`` order. For files sorted by (user, time) (all files in
  ``shared/data``) this is also the order of first appearance in the concatenated chronological sequences; e.g.
  ML-1M 5-core: external item 3186 (user 1's first item) gets index 1.
* Users keep their order of first appearance in the filtered rows.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from ..vocab import ItemVocab, UnknownItemError, int_id, unknown_id_hint
from .readers import Interactions, _time_seconds, read_interactions


# --------------------------------------------------------------------------- helpers
def int_setting(value, name: str, lo: int, none: str | None = None) -> int | None:
    """An integer setting ``name`` as a Python int ``>= lo``: a Python int or a numpy / torch integer scalar. A bool, a
    float (``1.5``, but also ``2.0``), a string or anything else is a ``ValueError`` naming the setting (an ``int()``
    would cut 1.5 to 1 and read ``True`` as 1 silently), as is a value below ``lo``. ``none``: ``None`` is allowed
    (returned as is) and the text says what it means, e.g. ``" (or None: no truncation)"``."""
    if value is None and none is not None:
        return None
    v = int_id(value)
    if v is None:
        raise ValueError(f"{name} must be an int >= {lo}{none or ''}, got {value!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}{none or ''}, got {v}")
    return v


def _check_k(name: str, k) -> None:
    """A k-core threshold (``user_k`` / ``item_k``) is an int (Python or numpy) or None: a float or a bool would be
    cut or read as 1 by ``int()``. Checked by :func:`kcore_filter`, and by :func:`load_dataset` before the file is
    read."""
    if k is not None and int_id(k) is None:
        raise ValueError(f"k-core threshold {name} must be an int or None, got {k!r} (0 or None: no filter)")


def _need_interactions(inter, call: str) -> None:
    """``TypeError`` naming ``call`` when ``inter`` is no :class:`~zoo.data.readers.Interactions` (a DataFrame, a
    tuple of arrays): build one with ``Interactions(user, item, timestamp)``, which checks the columns."""
    if not isinstance(inter, Interactions):
        raise TypeError(f"{call} needs a zoo.data.Interactions (read_interactions(path), or Interactions(user, item, "
                        f"timestamp) from arrays), got {type(inter).__name__}")


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values [N]`` -> ``(codes [N] int64 in 0..U-1, uniques [U])`` with codes in order of first appearance."""
    values = np.asarray(values)
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64), values[:0]
    if values.dtype.kind in "iu":
        lo, hi = int(values.min()), int(values.max())
        if hi - lo <= 4 * n + 1024:  # dense integer ids: O(N) lookup table instead of a sort
            off = values - lo
            present = np.zeros(hi - lo + 1, dtype=bool)
            present[off] = True
            inv = (np.cumsum(present) - 1)[off]                # codes in sorted-value order
            uniq = np.flatnonzero(present) + lo
            first = np.full(len(uniq), n, dtype=np.int64)
            np.minimum.at(first, inv, np.arange(n, dtype=np.int64))
            order = np.argsort(first, kind="stable")
            rank = np.empty(len(uniq), dtype=np.int64)
            rank[order] = np.arange(len(uniq), dtype=np.int64)
            return rank[inv], uniq[order].astype(values.dtype)
    uniq, first, inv = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")           # unique values by first appearance
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq), dtype=np.int64)
    return rank[inv.reshape(-1)], uniq[order]


def _py(values: np.ndarray) -> list:
    """numpy ids -> Python ints / strs (for ItemVocab and user lists)."""
    return values.tolist()


def _plain_rows(rows: list, dtypes) -> bool:
    """True when every row is a 1-D ``np.ndarray`` whose dtype is one of ``dtypes`` (C-level passes over the rows:
    the datasets :func:`build_sequences` and the splits build pass at little cost, 35,598 users in a few ms)."""
    return (set(map(type, rows)) <= {np.ndarray} and set(map(_DTYPE, rows)) <= dtypes
            and set(map(_NDIM, rows)) <= {1})


_DTYPE, _NDIM = operator.attrgetter("dtype"), operator.attrgetter("ndim")
_INT_DTYPES = {np.dtype(t) for t in (np.int64, np.int32, np.int16, np.int8, np.uint64, np.uint32, np.uint16, np.uint8)}
_F64 = {np.dtype(np.float64)}


def _lengths(rows) -> np.ndarray:
    return np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))


def _index_rows(rows, what, n_items: int | None = None) -> list:
    """Rows of internal item indices (``SequenceDataset.sequences``), checked: each a 1-D integer array (a list is
    made one; integer arrays are kept as they are), every index in ``1..n_items`` (``n_items`` None: ``>= 1``).
    ``ValueError`` naming ``what(r)`` (the row) and the position otherwise: float ids (an int64 cast would cut 1.7 to
    item 1), bools (items 0 and 1), strings, 0 (padding), negative ids (a table lookup reads -1 as the last item)."""
    out = list(rows)
    if not _plain_rows(out, _INT_DTYPES):
        for r, s in enumerate(out):
            if not (isinstance(s, np.ndarray) and s.dtype.kind in "iu" and s.ndim == 1):
                a = np.asarray(s)
                if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
                    got = f"{a.dtype} values" if a.ndim == 1 else f"a {a.ndim}-D {a.dtype} array"
                    raise ValueError(f"{what(r)} must be a 1-D array of int item indices >= 1, got {got} "
                                     f"{a.ravel()[:3].tolist()}{' ...' if a.size > 3 else ''}; pass int64 indices")
                out[r] = a.astype(np.int64, copy=False)
    if out and _lengths(out).sum():
        flat = np.concatenate(out)
        hi = n_items if n_items is not None else np.iinfo(np.int64).max
        if int(flat.min()) < 1 or int(flat.max()) > hi:
            for r, s in enumerate(out):                  # the first row and position out of range, named
                bad = np.flatnonzero((s < 1) | (s > hi))
                if len(bad):
                    p = int(bad[0])
                    within = (f"1..{n_items} (the vocabulary's {_count(n_items, 'item')})" if n_items is not None
                              else ">= 1")
                    raise ValueError(f"{what(r)} has item index {int(s[p])} at position {p}: internal item indices "
                                     f"are {within}; 0 is padding")
    return out


def _time_rows(rows, prefix: str, label, lengths: np.ndarray | None = None) -> list:
    """Per-row timestamps (``SequenceDataset.timestamps``, ``EvalExamples.history_timestamps``) as float64 seconds
    through :func:`~zoo.data.readers._time_seconds` (the data layer's one timestamp check: bools, complex numbers,
    strings, durations, ``datetime`` objects, float32 / float16 seconds too large for their dtype are a ``ValueError``;
    ``datetime64`` of any unit becomes seconds). Messages read ``f"{prefix}the timestamps {label(r)}"`` (``prefix``:
    ``"name: "``, ``label(r)``: ``"of user 7"``); ``lengths[r]``: the length row ``r`` must have (its item row's).
    Float64 rows are kept as they are. NaN / inf are left to the later checks (they name the user)."""
    out = list(rows)
    if not _plain_rows(out, _F64):
        for r, t in enumerate(out):
            if not (isinstance(t, np.ndarray) and t.dtype == np.float64 and t.ndim == 1):
                a = np.asarray(t)
                if a.ndim != 1:
                    raise ValueError(f"{prefix}the timestamps {label(r)} must be a 1-D array, got shape "
                                     f"{list(a.shape)}")
                out[r] = _time_seconds(a, f"{prefix}the timestamps {label(r)}",
                                       lambda i, r=r, a=a: f"{prefix}the timestamps {label(r)}, position {i}: {a[i]}",
                                       holder=f"{prefix}the timestamp row {label(r)}")
    if lengths is not None:
        bad = np.flatnonzero(_lengths(out) != lengths)
        if len(bad):
            r = int(bad[0])
            raise ValueError(f"{prefix}the timestamp row {label(r)} holds {_count(len(out[r]), 'timestamp')} for "
                             f"{_count(int(lengths[r]), 'item')}; pass one timestamp per item")
    return out


# --------------------------------------------------------------------------- k-core
def kcore_filter(inter: Interactions, user_k: int | None = 5, item_k: int | None = 5,
                 max_iterations: int | None = None) -> Interactions:
    """Iterative k-core filter (RecBole ``_filter_by_inter_num`` with ``[k, inf)`` intervals).

    Each round counts interactions per user and per item on the current rows, then drops -- simultaneously --
    every row whose user has fewer than ``user_k`` or whose item has fewer than ``item_k`` interactions; rounds
    repeat until nothing is dropped. Row order is kept. ``None`` or ``0`` disables a side.

    Args:
        inter: ``N`` rows.
        max_iterations: rounds that drop rows, at most (``RuntimeError`` when rows are still to drop after them; the
            check that finds nothing left to drop is not a round). None: until nothing is dropped, which takes at
            most ``N`` rounds (each drops a row); a chain of users sharing items one by one takes that many.
    Returns:
        the kept rows (a new :class:`Interactions`); may be empty.
    Raises:
        TypeError: ``inter`` is no :class:`Interactions` (its constructor checks the columns).
    """
    _need_interactions(inter, "kcore_filter")
    for name, k in (("user_k", user_k), ("item_k", item_k)):
        _check_k(name, k)
    user_k = int(user_k or 0)
    item_k = int(item_k or 0)
    if user_k < 0 or item_k < 0:
        raise ValueError(f"k-core thresholds must be >= 0 (0 = no filter), got user_k={user_k}, item_k={item_k}")
    if user_k <= 1 and item_k <= 1:
        return inter
    ucode, _ = factorize(inter.user)
    icode, _ = factorize(inter.item)
    nu, ni = (int(ucode.max()) + 1, int(icode.max()) + 1) if len(inter) else (0, 0)
    rounds = len(inter) if max_iterations is None else int_setting(max_iterations, "max_iterations", 0, " or None")
    keep = np.ones(len(inter), dtype=bool)
    for done in range(rounds + 1):                    # the last pass only checks that nothing is left to drop
        u, i = ucode[keep], icode[keep]
        drop = np.zeros(len(u), dtype=bool)
        if user_k > 1:
            drop |= np.bincount(u, minlength=nu)[u] < user_k
        if item_k > 1:
            drop |= np.bincount(i, minlength=ni)[i] < item_k
        if not drop.any():
            break
        if done == rounds:
            raise RuntimeError(f"k-core filter did not converge in {_count(max_iterations, 'round')} "
                               f"({_count(int(drop.sum()), 'row')} still to drop)")
        idx = np.flatnonzero(keep)
        keep[idx[drop]] = False
    return inter if keep.all() else inter.select(keep)


# --------------------------------------------------------------------------- sequences
@dataclass
class SequenceDataset:
    """Per-user chronological item sequences.

    Args:
        users: ``U`` external user ids, in order of first appearance.
        sequences: ``U`` int64 arrays of internal item indices (``1..n_items``), oldest first.
        timestamps: ``U`` float64 arrays aligned with ``sequences``, or ``None`` (order-only data).
        vocab: the :class:`~zoo.vocab.ItemVocab` mapping external item ids to the indices in ``sequences``.
        name: a label for messages / reports (by default the file name).
        kcore: ``(user_k, item_k)`` of the k-core filter applied by :func:`load_dataset`, ``None`` if unfiltered.
        time_ties: how rows with equal timestamps were ordered (:data:`TIME_TIES`): ``"file"`` or ``"item"``.
        loaded: what :func:`load_dataset` read and what its filter removed (:func:`load_report`), ``None`` for a
            dataset built otherwise; :meth:`stats` and :meth:`load_note` report it, and :meth:`reencode` keeps it
            (it describes the file, not the items a vocabulary dropped since).

    One built by hand is checked on construction (:meth:`__post_init__`, a ``ValueError`` naming the user): int
    indices in ``1..n_items``, timestamps read as :class:`~zoo.data.readers.Interactions` reads them (bools, strings,
    complex numbers, float16 / float32 seconds too large for their dtype refused; ``datetime64`` converted to
    seconds), one per item, oldest first.
    """

    users: list
    sequences: list
    timestamps: list | None
    vocab: ItemVocab
    name: str = ""
    kcore: tuple | None = None
    time_ties: str = "file"
    loaded: dict | None = None

    def __post_init__(self):
        """Checks a dataset built by hand as :func:`build_sequences` builds it (``ValueError`` naming the user): as
        many users as sequences (and timestamp rows), each user once, ``time_ties`` one of :data:`TIME_TIES`; every
        sequence a 1-D array of int indices ``1..n_items`` (a list becomes an int64 array); timestamps read by the
        data layer's one check (``Interactions``' rules: bools, complex numbers, strings, float32 / float16 seconds
        too large for their dtype refused, ``datetime64`` of any unit converted to float64 seconds), one per item
        and non-decreasing per user (oldest first: the splits take a sequence's last items as its latest). NaN / inf
        are left to :meth:`check_timestamps_for`."""
        name = self.name or "the data"
        if len(self.users) != len(self.sequences):
            raise ValueError(f"{name}: {_count(len(self.users), 'user')} for "
                             f"{_count(len(self.sequences), 'sequence')}; pass one user id per sequence")
        if self.time_ties not in TIME_TIES:
            raise ValueError(f"{name}: time_ties must be one of {TIME_TIES}, got {self.time_ties!r}")
        try:
            unique = len(set(self.users)) == len(self.users)
        except TypeError:                                  # unhashable user ids: not looked at
            unique = True
        if not unique:
            seen = {}
            for r, user in enumerate(self.users):
                if user in seen:
                    raise ValueError(f"{name}: user {user!r} has two sequences (rows {seen[user]} and {r}); pass one "
                                     "sequence per user, oldest item first")
                seen[user] = r
        n_items = len(self.vocab) if hasattr(self.vocab, "__len__") else None
        self.sequences = _index_rows(self.sequences, lambda r: f"{name}: the sequence of user {self.users[r]!r}",
                                     n_items)
        if self.timestamps is not None:
            if len(self.timestamps) != len(self.sequences):
                raise ValueError(f"{name}: {_count(len(self.timestamps), 'timestamp row')} for "
                                 f"{_count(len(self.sequences), 'sequence')}; pass one row per user (or "
                                 "timestamps=None)")
            self.timestamps = _time_rows(self.timestamps, f"{name}: ", lambda r: f"of user {self.users[r]!r}",
                                         _lengths(self.sequences))
            _check_time_order(self.timestamps, self.users, name)

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @property
    def n_items(self) -> int:
        """Number of real items in the vocabulary (a model needs ``n_items + 1`` embedding rows)."""
        return len(self.vocab)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def stats(self) -> dict:
        """Users, items, interactions and sequence-length summary (of the sequences as they are, after any filter).

        A dataset from :func:`load_dataset` adds what it read and what its filter removed (JSON values only, so a
        logged copy compares equal): ``read`` (``{"rows", "users", "items"}`` of the file, before any filter),
        ``repeated_rows`` (rows that repeat an earlier row's (user, item, timestamp), all kept; ``None`` for a file
        without timestamps), ``kcore`` (``[user_k, item_k]`` applied, ``None`` when unfiltered) and
        ``kcore_removed`` (``{"rows", "users", "items"}`` the k-core filter removed; ``None`` when unfiltered)."""
        lens = np.fromiter((len(s) for s in self.sequences), dtype=np.int64, count=len(self.sequences))
        out = {"users": self.n_users, "items": self.n_items, "interactions": int(lens.sum()),
               "avg_length": float(lens.mean()) if len(lens) else 0.0,
               "median_length": float(np.median(lens)) if len(lens) else 0.0,
               "min_length": int(lens.min()) if len(lens) else 0, "max_length": int(lens.max()) if len(lens) else 0}
        if self.loaded is not None:
            removed = self.loaded.get("kcore_removed")
            out.update({"read": dict(self.loaded["read"]), "repeated_rows": self.loaded.get("repeated_rows"),
                        "kcore": [int(k) for k in self.kcore] if self.kcore else None,
                        "kcore_removed": dict(removed) if removed is not None else None})
        return out

    def load_note(self) -> str:
        """What :func:`load_dataset` left out or kept that its counts do not show, in words (``""`` when there is
        nothing to say: no filter and no repeated rows, or a dataset not from :func:`load_dataset`), e.g.
        ``"19,747 rows of 200 users and 1,420 items; after the 5-core filter (1,115 rows, 0 users and 540 items
        removed) 18,632 interactions, 200 users, 880 items"``, then ``"; 500 rows repeat an earlier (user, item,
        time) row; kept, as RecBole keeps them"`` when the file has such rows. The counts after the filter are the
        filter's, before any item a model's vocabulary lacks is dropped (:meth:`reencode`)."""
        if self.loaded is None:
            return ""
        parts = []
        read, removed = self.loaded["read"], self.loaded.get("kcore_removed")
        if self.kcore and removed is not None:
            uk, ik = self.kcore
            label = f"{uk}-core" if uk == ik else f"{uk}/{ik}-core (user/item)"
            head = f"{_n(read['rows'], 'row')} of {_n(read['users'], 'user')} and {_n(read['items'], 'item')}"
            if removed["rows"]:
                parts.append(f"{head}; after the {label} filter ({_n(removed['rows'], 'row')}, "
                             f"{_n(removed['users'], 'user')} and {_n(removed['items'], 'item')} removed) "
                             f"{_n(read['rows'] - removed['rows'], 'interaction')}, "
                             f"{_n(read['users'] - removed['users'], 'user')}, "
                             f"{_n(read['items'] - removed['items'], 'item')}")
            else:
                parts.append(f"{head}; the {label} filter removed nothing")
        repeated = self.loaded.get("repeated_rows")
        if repeated:
            parts.append(f"{repeated:,} row{'s' if repeated != 1 else ''} repeat{'s' if repeated == 1 else ''} an "
                         "earlier (user, item, time) row; kept, as RecBole keeps them")
        return "; ".join(parts)

    def check_timestamps_for(self, reader: str) -> None:
        """Before a time-aware model (named ``reader``) trains or is evaluated on this data: ``ValueError`` when the
        data has no timestamps (an order-only file such as ``.seq``), NaN or infinite ones (a dataset built in memory;
        the readers and :class:`~zoo.data.readers.Interactions` refuse them), negative ones (the models read Unix
        seconds >= 0) or ones beyond ``MAX_TIMESTAMP_S`` (1e11 s: milliseconds or nanoseconds since the epoch, which the
        models refuse), naming the file and the first user concerned -- instead of an error at the first batch.
        (Rows are sorted by time per user.) A model that reads no time takes such data as it is."""
        name = self.name or "the data"
        if self.timestamps is None:
            raise ValueError(f"{reader} reads timestamps, but {name} has none (order-only data such as a .seq file): "
                             "use an interaction file with a timestamp column (one under another name than the usual "
                             "ones: --columns time=NAME)")
        for user, ts in zip(self.users, self.timestamps, strict=True):
            bad = ~np.isfinite(ts)
            if bad.any():                                     # NaN sorts last, -inf first: no time order
                n = sum(int((~np.isfinite(t)).sum()) for t in self.timestamps)
                raise ValueError(f"{name}: {_count(n, 'NaN or infinite timestamp')} (user {user!r} has "
                                 f"{float(ts[bad][0])!r} at position {int(np.flatnonzero(bad)[0])}); {reader} reads "
                                 "finite Unix seconds")
        for user, ts in zip(self.users, self.timestamps, strict=True):
            if len(ts) and ts[0] < 0:                         # sorted per user: the first is the smallest
                n = sum(int((t < 0).sum()) for t in self.timestamps)
                raise ValueError(f"{name}: {_count(n, 'negative timestamp')} (user {user!r} starts at "
                                 f"{ts[0]:g}); {reader} reads Unix seconds >= 0")
        from ..modeling_utils import MAX_TIMESTAMP_S        # the models' own bound (check_timestamps)

        for user, ts in zip(self.users, self.timestamps, strict=True):
            if len(ts) and ts[-1] > MAX_TIMESTAMP_S:          # sorted per user: the last is the largest
                n = sum(int((t > MAX_TIMESTAMP_S).sum()) for t in self.timestamps)
                raise ValueError(f"{name}: {_count(n, 'timestamp')} beyond {MAX_TIMESTAMP_S:.0e} s, the year "
                                 f"~5000 (user {user!r} reaches {ts[-1]:.6g}): {'it looks' if n == 1 else 'they look'} "
                                 f"like milliseconds or nanoseconds since the epoch; {reader} reads Unix seconds")

    def reencode(self, vocab: ItemVocab, unknown: str = "error") -> "SequenceDataset":
        """The same sequences indexed with another vocabulary (e.g. a pretrained model's ``item_vocab``).

        Args:
            vocab: target vocabulary (external ids -> new internal indices). Ids match as :class:`~zoo.vocab.ItemVocab`
                reads them: exactly, so the data's ``'007'`` is not an int vocabulary's 7 (an unknown item).
            unknown: what to do with items the target vocabulary lacks: ``"error"`` (raise
                :class:`~zoo.vocab.UnknownItemError` counting them) or ``"drop"`` (remove those interactions;
                users left empty are removed).
        """
        if unknown not in ("error", "drop"):
            raise ValueError(f"unknown must be 'error' or 'drop', got {unknown!r}")
        old = self.vocab.items
        table = np.zeros(len(old) + 1, dtype=np.int64)       # old index -> new index (0 = unknown)
        missing = []
        for i, x in enumerate(old, start=1):
            if x in vocab:
                table[i] = vocab.encode([x])[0]
            else:
                missing.append(x)
        if missing and unknown == "error":
            flat = np.concatenate(self.sequences) if self.sequences else np.zeros(0, np.int64)
            n_rows = int((table[flat] == 0).sum())
            known = set(vocab.items)
            hint = next((h for h in (unknown_id_hint(x, known) for x in missing) if h), "")
            raise UnknownItemError(
                f"{len(missing)} of the {_count(len(old), 'item')} of {self.name or 'the data'} "
                f"({_count(n_rows, 'interaction')}) {'is' if len(missing) == 1 else 'are'} not in the model's item "
                f"vocabulary ({_count(len(vocab), 'item')}), e.g. {missing[:5]}{hint}; the model was trained on other "
                "data (unknown='drop', or --unknown-items drop in zoo.evaluate and zoo.recommend, keeps only the known "
                "items)")
        users, seqs, tss = [], [], [] if self.timestamps is not None else None
        for r, s in enumerate(self.sequences):
            new = table[s]
            keep = new > 0
            if not keep.any():
                continue
            users.append(self.users[r])
            seqs.append(new[keep] if not keep.all() else new)
            if tss is not None:
                tss.append(self.timestamps[r][keep])
        return SequenceDataset(users, seqs, tss, vocab, self.name, self.kcore, self.time_ties, self.loaded)

    def __repr__(self) -> str:
        return (f"SequenceDataset({self.name!r}: {_count(self.n_users, 'user')}, {_count(self.n_items, 'item')}, "
                f"{_count(self.n_interactions, 'interaction')}, "
                f"{'timestamps' if self.timestamps is not None else 'order only'})")


def _n(count: int, word: str) -> str:
    """``"1 row"``, ``"1,115 rows"``: a count and its word, plural but for one."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _count(count: int, word: str, plural: str | None = None) -> str:
    """``"1 row"``, ``"1115 rows"``: a count as the error messages write it (no thousands separator) and its word,
    plural (``plural``, else ``word`` + s) but for one."""
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _check_time_order(timestamps: list, users: list, name: str) -> None:
    """``ValueError`` naming ``name``, the user and the position where a user's float64 timestamps decrease (NaN is
    skipped: it is :meth:`SequenceDataset.check_timestamps_for`'s). One vectorised pass when nothing decreases."""
    rows = [t for t in timestamps if len(t) > 1]
    if not rows:
        return
    step = np.diff(np.concatenate(rows)) < 0
    step[np.cumsum([len(t) for t in rows])[:-1] - 1] = False      # a drop from one user's last to the next's first
    if not step.any():
        return
    for user, t in zip(users, timestamps):
        dec = np.flatnonzero(np.diff(t) < 0)
        if len(dec):
            p = int(dec[0]) + 1
            raise ValueError(f"{name}: the timestamps of user {user!r} decrease at position {p} ({t[p - 1]:.10g} -> "
                             f"{t[p]:.10g}); pass each sequence oldest first (sorted by time, as build_sequences "
                             "does)")


TIME_TIES = ("file", "item")
"""How rows of one user with equal timestamps are ordered: ``"file"`` keeps their file order (a stable sort, as
RecBole's), ``"item"`` sorts them by item id (LRURec sorts by (timestamp, item id); ``ml-1m.5core.seq.gz`` is ordered
so). It matters on ML-1M: 53% of a user's consecutive ratings share their second, and for users 1-2999 of the 5-core
the two orders give a different test item to 807 of the 2,999 users. (RecBole 1.2.0 also compares timestamps as
float32, 64-s steps at ML-1M's times, so its order is the file's within every such step: ``"file"`` is RecBole's order
only for ties of the exact timestamp; ``bench/TIE_ORDER.md``.)"""


def build_sequences(inter: Interactions, name: str | None = None, time_ties: str = "file") -> SequenceDataset:
    """Group rows into per-user chronological sequences.

    Rows are sorted by (user, timestamp); rows with equal timestamps keep their file order (``time_ties="file"``, a
    stable sort as RecBole's) or are sorted by item id (``time_ties="item"``, LRURec; numeric order for integer ids).
    Without timestamps the file order is the time order (and ``time_ties="item"`` is refused: there is no time to tie
    on). Users come in order of first appearance, item indices by first appearance in file order (see the module
    docstring), so ``time_ties`` changes the order of the sequences, never the vocabulary. ``inter`` must be an
    :class:`~zoo.data.readers.Interactions` (``TypeError`` otherwise: its constructor checks the columns).
    """
    _need_interactions(inter, "build_sequences")
    if time_ties not in TIME_TIES:
        raise ValueError(f"time_ties must be one of {TIME_TIES}, got {time_ties!r}")
    if len(inter) == 0:
        raise ValueError(f"{inter.source}: no interactions left to build sequences from")
    ucode, users = factorize(inter.user)
    icode, items = factorize(inter.item)
    if inter.timestamp is None and time_ties == "item":
        raise ValueError(f"{inter.source}: time_ties='item' orders rows with equal timestamps by item id, but the file "
                         "has no timestamps (its row order is the time order); use time_ties='file'")
    if inter.timestamp is not None and time_ties == "item":
        order = np.lexsort((inter.item, inter.timestamp, ucode))        # last key first: user, time, item id
    elif inter.timestamp is not None:
        order = np.argsort(inter.timestamp, kind="stable")
        order = order[np.argsort(ucode[order], kind="stable")]
    else:
        order = np.argsort(ucode, kind="stable")
    seq_flat = icode[order] + 1                                          # internal indices 1..n
    counts = np.bincount(ucode, minlength=len(users))
    bounds = np.cumsum(counts)[:-1]
    sequences = np.split(seq_flat, bounds)
    timestamps = np.split(inter.timestamp[order], bounds) if inter.timestamp is not None else None
    vocab = ItemVocab(_py(items))
    if name is None:
        name = os.path.basename(inter.source)
    return SequenceDataset(_py(users), sequences, timestamps, vocab, name, time_ties=time_ties)


def parse_kcore(value: str) -> int | None | str:
    """A command line's ``--kcore``: ``"auto"``, ``"none"``/``"0"`` (no filter, ``None``) or an int ``k >= 1``.

    Raises:
        ValueError: anything else (a negative ``k`` included), naming the value.
    """
    v = str(value).strip().lower()
    if v == "auto":
        return "auto"
    if v in ("none", "0"):
        return None
    try:
        k = int(v)
    except ValueError:
        raise ValueError(f"--kcore must be an int >= 1, 'none' (or 0) or 'auto', got {value!r}") from None
    if k < 1:
        raise ValueError(f"--kcore must be an int >= 1, 'none' (or 0) or 'auto', got {value!r}")
    return k


def load_options(kcore="auto", time_ties: str = "file", columns: dict | None = None) -> dict:
    """:func:`load_dataset`'s options as a run (or a soup) logs them (``data_options``), to load the same sequences
    again; ``columns`` only when given, so that the logs of files with the usual column names keep their form."""
    return {"kcore": kcore, "time_ties": time_ties, **({"columns": dict(columns)} if columns else {})}


def repeated_rows(inter: Interactions) -> int | None:
    """Rows of ``inter`` that repeat an earlier row's (user, item, timestamp) exactly (an event logged twice); the
    first of each such group is not counted. ``None`` when ``inter`` has no timestamps (a repeated (user, item) is
    then another event, not the same one). Nothing is removed: RecBole keeps such rows too, and they count in the
    k-core (an item may pass it by its repeats)."""
    _need_interactions(inter, "repeated_rows")
    if inter.timestamp is None:
        return None
    ucode, _ = factorize(inter.user)
    icode, items = factorize(inter.item)
    return _repeats(ucode, icode, len(items), inter.timestamp)


def _repeats(ucode: np.ndarray, icode: np.ndarray, n_items: int, ts: np.ndarray) -> int:
    """:func:`repeated_rows` of the rows' user and item codes (:func:`factorize`; ``n_items`` item codes) and
    timestamps, all ``[N]``."""
    if len(ts) < 2:
        return 0
    pair = ucode * np.int64(n_items) + icode                        # one key per (user, item)
    order = np.lexsort((ts, pair))
    p, t = pair[order], ts[order]
    return int(((p[1:] == p[:-1]) & (t[1:] == t[:-1])).sum())


def load_report(before: Interactions, after: Interactions | None) -> dict:
    """:attr:`SequenceDataset.loaded`: the counts of the rows read (``before``, ``N`` rows) and what the k-core
    filter removed to leave ``after`` (``None``: no filter ran), as plain ints::

        {"read": {"rows", "users", "items"}, "repeated_rows": int | None,
         "kcore_removed": {"rows", "users", "items"} | None}
    """
    def counts(inter: Interactions) -> dict:
        return {"rows": len(inter), "users": len(factorize(inter.user)[1]), "items": len(factorize(inter.item)[1])}

    ucode, users = factorize(before.user)           # once: the counts and the repeated rows read the same codes
    icode, items = factorize(before.item)
    read = {"rows": len(before), "users": len(users), "items": len(items)}
    repeated = None if before.timestamp is None else _repeats(ucode, icode, len(items), before.timestamp)
    removed = None
    if after is not None:
        kept = counts(after) if after is not before else read
        removed = {k: read[k] - kept[k] for k in ("rows", "users", "items")}
    return {"read": read, "repeated_rows": repeated, "kcore_removed": removed}


def load_dataset(path: "str | os.PathLike | Interactions", kcore: int | None | str = "auto", format: str = "auto",
                 user_k: int | None = None, item_k: int | None = None, name: str | None = None,
                 time_ties: str = "file", columns: dict | None = None) -> SequenceDataset:
    """Read a file, optionally k-core filter it, and build the per-user sequences.

    Args:
        path: interaction file (see :func:`~zoo.data.readers.read_interactions` for the formats), or an
            :class:`~zoo.data.readers.Interactions` table already in memory (e.g. a DataFrame's columns:
            ``Interactions(df.user_id.to_numpy(), df.item_id.to_numpy(), df.timestamp.to_numpy())``; ``format``
            and ``columns`` are then not used).
        kcore: ``k`` for both users and items (iterative, RecBole), ``None``/``0`` for no filter, or ``"auto"``:
            5 for interaction files, none for ``.seq`` files (already filtered: ML-1M 5-core).
        format: reader format (``"auto"`` by default).
        user_k, item_k: override ``kcore`` for one side.
        time_ties: order of one user's rows with equal timestamps, ``"file"`` (their file order) or ``"item"`` (by
            item id, LRURec), see :data:`TIME_TIES`.
        columns: header column names by role (``{"user": ..., "item": ..., "time": ...}``) for a file whose columns
            are not called by the usual names, see :func:`~zoo.data.readers.read_interactions`.
    Example:
        ``load_dataset("ml-1m.5core.seq.gz")`` -> 6,040 users, 3,416 items, 999,611 interactions.
    """
    if time_ties not in TIME_TIES:                     # before reading the file
        raise ValueError(f"time_ties must be one of {TIME_TIES}, got {time_ties!r}")
    if not (kcore is None or int_id(kcore) is not None or (isinstance(kcore, str) and kcore == "auto")):
        raise ValueError(f"kcore must be an int, None or 'auto', got {kcore!r}")   # '5', 2.5 or True (read as 1)
    for side, k in (("user_k", user_k), ("item_k", item_k)):
        _check_k(side, k)
    if isinstance(path, Interactions):
        inter, path = path, path.source
    else:
        inter = read_interactions(path, format=format, columns=columns)
    if isinstance(kcore, str):                         # "auto"
        kcore = None if inter.format == "seq" else 5
    uk = kcore if user_k is None else user_k
    ik = kcore if item_k is None else item_k
    read = inter
    if uk or ik:
        inter = kcore_filter(inter, uk, ik)
        if len(inter) == 0:
            raise ValueError(f"{path}: no interactions left after the {uk}/{ik}-core filter")
    ds = build_sequences(inter, name=name, time_ties=time_ties)
    ds.kcore = (int(uk or 0), int(ik or 0)) if (uk or ik) else None
    ds.loaded = load_report(read, inter if (uk or ik) else None)
    return ds


# --------------------------------------------------------------------------- leave-one-out
@dataclass
class EvalExamples:
    """Evaluation examples: one history and one target item per user.

    Args:
        histories: ``B`` int64 arrays of internal indices, oldest first (full history; models window it).
        targets: ``[B]`` int64 internal index of the held-out next item.
        users: ``B`` external user ids.
        history_timestamps: ``B`` float64 arrays aligned with ``histories``, or ``None``.
        target_timestamps: ``[B]`` float64, or ``None``.
    """

    histories: list
    targets: np.ndarray
    users: list
    history_timestamps: list | None = None
    target_timestamps: np.ndarray | None = None

    def __post_init__(self):
        """Checks examples built by hand (``ValueError``): as many histories and users as targets; timestamps read
        by the data layer's one check (``Interactions``' rules: bools, complex numbers, strings, float32 / float16
        seconds too large for their dtype refused, ``datetime64`` of any unit converted to float64 seconds), one
        history timestamp per history item and one target timestamp per target. Item indices are checked where
        they are used (:func:`~zoo.data.batching.eval_batches`, ``zoo.evaluate``), naming the example."""
        n = len(self.targets)
        if len(self.histories) != n or len(self.users) != n:
            raise ValueError(f"EvalExamples: {_count(len(self.histories), 'history', 'histories')}, "
                             f"{_count(n, 'target')} and {_count(len(self.users), 'user')}; pass one target and one "
                             "user per history")
        if self.history_timestamps is not None:
            if len(self.history_timestamps) != n:
                raise ValueError(f"EvalExamples: {_count(len(self.history_timestamps), 'history timestamp row')} for "
                                 f"{_count(n, 'history', 'histories')}; pass one row per history (or "
                                 "history_timestamps=None)")
            self.history_timestamps = _time_rows(self.history_timestamps, "EvalExamples: ",
                                                 lambda r: f"of history {r} (user {self.users[r]!r})",
                                                 _lengths(self.histories))
        if self.target_timestamps is not None:
            t = np.asarray(self.target_timestamps)
            if t.shape != (n,):
                raise ValueError(f"EvalExamples: target_timestamps must be [{n}] (one per target), got shape "
                                 f"{list(t.shape)}")
            if t.dtype != np.float64:
                t = _time_seconds(t, "EvalExamples: the target timestamps",
                                  lambda i: f"EvalExamples: target timestamp {i} (user {self.users[i]!r})",
                                  holder="EvalExamples: target_timestamps")
            self.target_timestamps = t

    def __len__(self) -> int:
        return len(self.targets)

    def head(self, n: int) -> "EvalExamples":
        """The first ``n`` examples (deterministic subset, e.g. for quick evaluations)."""
        return EvalExamples(self.histories[:n], self.targets[:n], self.users[:n],
                            None if self.history_timestamps is None else self.history_timestamps[:n],
                            None if self.target_timestamps is None else self.target_timestamps[:n])


@dataclass
class Split:
    """Leave-one-out split of a :class:`SequenceDataset`.

    Args:
        train: ``U`` int64 training sequences (``seq[:-2]``; whole sequence for users too short to evaluate).
        train_timestamps: ``U`` float64 arrays aligned with ``train``, or ``None``.
        train_users: ``U`` external user ids aligned with ``train``.
        valid: history ``seq[:-2]`` -> target ``seq[-2]`` (users with >= 3 items).
        test: history ``seq[:-1]`` -> target ``seq[-1]`` (users with >= 3 items).
        dataset: the source dataset (vocabulary, name).
    """

    train: list
    train_timestamps: list | None
    train_users: list
    valid: EvalExamples
    test: EvalExamples
    dataset: SequenceDataset | None = field(default=None, repr=False)
    #: :data:`SPLITS`: ``"leave-one-out"`` (:func:`leave_one_out`) or ``"temporal"`` (:func:`temporal_split`)
    kind: str = "leave-one-out"
    #: a temporal split's cut times and shares (``valid_from``, ``test_from``, seconds; ``valid_share``,
    #: ``test_share`` when the cuts came from shares), else None
    cuts: dict | None = None


def leave_one_out(ds: SequenceDataset, min_length: int = 3) -> Split:
    """RecBole leave-one-out by time (``LS: valid_and_test``, order ``TO``), also LRURec's split.

    For each user sequence ``s`` of length ``n >= 3``: train ``s[:-2]``; valid history ``s[:-2]`` -> target
    ``s[-2]``; test history ``s[:-1]`` (includes the valid item) -> target ``s[-1]``.

    Users with fewer than ``min_length`` (3) items cannot give both a valid and a test example with a non-empty
    history: they are dropped from valid/test and their whole sequence goes to train (it is never evaluated, so
    nothing leaks). After a 5-core filter no user is that short. A user with exactly 3 items gets a valid example
    (``s[0] -> s[1]``, as LRURec's split; its train sequence ``s[:1]`` has no target); RecBole gives such a user none
    (its ``legal_leave_one_num``: train ``s[0] -> s[1]`` and the test example only), so below a 4-core the two differ
    in the valid examples and training targets, never in the test examples. Raises ``ValueError`` if no user is long
    enough or ``min_length`` is no int >= 3, ``TypeError`` if ``ds`` is no :class:`SequenceDataset`.
    """
    _need_dataset(ds, "leave_one_out")
    min_length = int_setting(min_length, "min_length", 3, " (valid and test need a non-empty history)")
    lens = np.fromiter((len(s) for s in ds.sequences), dtype=np.int64, count=len(ds.sequences))
    ev = np.flatnonzero(lens >= min_length)
    if len(ev) == 0:
        raise ValueError(f"{ds.name}: no user has >= {min_length} items; nothing to evaluate")
    has_ts = ds.timestamps is not None
    train, train_ts = [], [] if has_ts else None
    for r, s in enumerate(ds.sequences):
        short = lens[r] < min_length
        train.append(s if short else s[:-2])
        if has_ts:
            train_ts.append(ds.timestamps[r] if short else ds.timestamps[r][:-2])
    users = [ds.users[r] for r in ev]
    seqs = [ds.sequences[r] for r in ev]
    tss = [ds.timestamps[r] for r in ev] if has_ts else None
    valid = EvalExamples([s[:-2] for s in seqs], np.array([s[-2] for s in seqs], dtype=np.int64), users,
                         [t[:-2] for t in tss] if has_ts else None,
                         np.array([t[-2] for t in tss], dtype=np.float64) if has_ts else None)
    test = EvalExamples([s[:-1] for s in seqs], np.array([s[-1] for s in seqs], dtype=np.int64), list(users),
                        [t[:-1] for t in tss] if has_ts else None,
                        np.array([t[-1] for t in tss], dtype=np.float64) if has_ts else None)
    return Split(train, train_ts, list(ds.users), valid, test, ds)


SPLITS = ("leave-one-out", "temporal")


def _need_dataset(ds, call: str) -> None:
    """``TypeError`` naming ``call`` when ``ds`` is no :class:`SequenceDataset` (a list of sequences, None)."""
    if not isinstance(ds, SequenceDataset):
        raise TypeError(f"{call} needs a zoo.data.SequenceDataset (e.g. load_dataset(path)), got {type(ds).__name__}")


def _need_timestamps(ds: SequenceDataset) -> None:
    """ValueError naming ``ds`` when it has no timestamps, which a temporal split needs, or NaN / infinite ones (a
    dataset built by hand: a NaN has no place on the timeline, and hides a user's items out of time order), naming
    the first user concerned."""
    if ds.timestamps is None:
        raise ValueError(f"{ds.name}: a temporal split needs timestamps, and this data has none (a .seq file keeps "
                         "only the order)")
    flat = np.concatenate(ds.timestamps) if len(ds.timestamps) else np.zeros(0)
    if not np.isfinite(flat).all():
        for user, t in zip(ds.users, ds.timestamps):
            bad = np.flatnonzero(~np.isfinite(t))
            if len(bad):
                raise ValueError(f"{ds.name or 'the data'}: user {user!r} has timestamp {float(t[bad[0]])!r} at "
                                 f"position {int(bad[0])}; a temporal split needs finite Unix seconds")


def temporal_cuts(ds: SequenceDataset, test_share: float, valid_share: float) -> tuple[float, float]:
    """``(valid_from, test_from)``: the times after which about ``valid_share + test_share`` and ``test_share`` of all
    interactions happened (the interaction timestamps' quantiles; ties at a cut fall after it).

    Each share is a real number in (0, 1) of any type (Python ``float``/``Fraction``, numpy ``float32``/``float64``
    ...: ``numbers.Real``), counted as written (``np.float32(0.1)`` is 1/10, not float32's 0.100000001). Anything else
    is a ``ValueError`` saying why: not a real number (a bool, a string, a complex number), not a number (NaN), or
    outside (0, 1) -- as is ``test_share + valid_share >= 1``."""
    test_share, valid_share = _share(test_share, "test_share"), _share(valid_share, "valid_share")
    _need_dataset(ds, "temporal_cuts")
    if test_share + valid_share >= 1:
        raise ValueError(f"test_share + valid_share must be < 1 (something must be left to train on), got "
                         f"{test_share} + {valid_share}")
    _need_timestamps(ds)
    ts = np.sort(np.concatenate(ds.timestamps))
    n = len(ts)
    # the share's last interactions start at index ceil((1 - share) * n) = n - floor(share * n), counted exactly with
    # the shares as written ('0.7': 7/10; in floats (1 - 0.7) * 10 is 3.0000000000000004, a cut one interaction late)
    exact = [_exact_share(v) for v in (test_share, valid_share)]
    at = lambda share: float(ts[min(n - 1, n - math.floor(share * n))])   # noqa: E731
    return at(exact[1] + exact[0]), at(exact[0])


def _share(value, name: str):
    """``value`` as :func:`temporal_cuts` takes a share: a real number (``numbers.Real``: Python's, numpy's, a
    ``Fraction``) in (0, 1), returned as given; else a ``ValueError`` naming ``name`` and the reason."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number in (0, 1) (a share of the interactions), got "
                         f"{type(value).__name__} {value!r}")
    if math.isnan(value):
        raise ValueError(f"{name} must be a share of the interactions in (0, 1), got {value!r} (not a number)")
    if not 0 < value < 1:
        raise ValueError(f"{name} must be a share of the interactions in (0, 1), got {value!r} (out of range: "
                         f"{'<= 0' if value <= 0 else '>= 1'})")
    return value


def _exact_share(value) -> Fraction:
    """A share as its writer meant it: a ``Fraction`` as is, a float by its shortest repr in its own precision
    ('0.7': 7/10, where (1 - 0.7) * 10 is 3.0000000000000004 in floats; np.float32(0.1): 1/10)."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, np.floating):
        return Fraction(np.format_float_positional(value, unique=True, trim="0"))
    return Fraction(repr(float(value)))


def _cut_time(value, name: str) -> float:
    """A temporal split's cut time ``name`` as float seconds, read as the timestamps are
    (:func:`~zoo.data.readers._time_seconds`): a number (Python or numpy) or a numpy ``datetime64`` of any unit
    (converted to seconds since the epoch); a bool, a complex number, a string, a ``datetime`` object, a float16 /
    float32 too large for whole seconds, NaT, NaN or an infinity is a ``ValueError`` naming ``name``."""
    a = np.asarray(value)
    if a.ndim != 0:
        raise ValueError(f"the cut time {name} must be one time (Unix seconds), got shape {list(a.shape)}")
    t = float(_time_seconds(a.reshape(1), f"the seconds of the cut time {name}",
                            lambda i: f"the cut time {name} ({value!r})", holder=f"the cut time {name}")[0])
    if not np.isfinite(t):
        raise ValueError(f"the cut time {name} must be a finite time (Unix seconds), got {t}")
    return t


def temporal_split(ds: SequenceDataset, test_from: float, valid_from: float, cuts_info: dict | None = None) -> Split:
    """A global temporal split (one timeline for every user, as a deployed model meets the future): nothing after a
    cut is trained on or seen before it is predicted, which leave-one-out does not give (a user's last items there may
    predate other users' training items; Ji et al., 2023, *A Critical Study on Data Leakage in Recommender System
    Offline Evaluation*).

    For each user (items in time order): train on the items before ``valid_from``; validation: the history before
    ``valid_from`` -> the first item at or after it, when that item is before ``test_from``; test: the history before
    ``test_from`` (validation-period items included, as inputs only) -> the first item at or after ``test_from``. A
    user needs at least one item before a cut to be evaluated at it.

    Args:
        ds: a dataset with timestamps.
        test_from, valid_from: cut times in the timestamps' unit (seconds), ``valid_from <= test_from``;
            :func:`temporal_cuts` picks them by shares of the interactions. Numbers (Python or numpy) or numpy
            ``datetime64`` of any unit (converted to seconds since the epoch, as the timestamps are); a bool, a
            complex number, a string, a ``datetime`` object, float16 / float32 values too large for whole seconds,
            NaT, NaN or an infinity is a ``ValueError`` naming the cut.
        cuts_info: extra entries for ``Split.cuts`` (the shares the cuts came from).
    Raises:
        ValueError: no timestamps, a cut that is no time (above), cuts out of order, or no user to validate or test
            at the cuts.
    """
    _need_dataset(ds, "temporal_split")
    _need_timestamps(ds)
    test_from, valid_from = _cut_time(test_from, "test_from"), _cut_time(valid_from, "valid_from")
    if valid_from > test_from:
        raise ValueError(f"the cuts must be finite with valid_from <= test_from, got valid_from {valid_from}, "
                         f"test_from {test_from}")
    train, train_ts = [], []
    ex = {"valid": ([], [], [], [], []), "test": ([], [], [], [], [])}   # histories, targets, users, hist ts, target ts
    for u, seq, t in zip(ds.users, ds.sequences, ds.timestamps):
        v = int(np.searchsorted(t, valid_from, side="left"))            # items before valid_from
        c = int(np.searchsorted(t, test_from, side="left"))             # items before test_from
        train.append(seq[:v])
        train_ts.append(t[:v])
        for name, n, ok in (("valid", v, v < len(seq) and t[v] < test_from), ("test", c, c < len(seq))):
            if n >= 1 and ok:
                h, y, users, hts, yts = ex[name]
                h.append(seq[:n]), y.append(seq[n]), users.append(u), hts.append(t[:n]), yts.append(t[n])
    examples = {}
    for name, (h, y, users, hts, yts) in ex.items():
        if not h:
            raise ValueError(f"{ds.name}: no user has an item before and one after the {name} cut "
                             f"({valid_from if name == 'valid' else test_from}); choose other cuts")
        examples[name] = EvalExamples(h, np.array(y, dtype=np.int64), users, hts, np.array(yts, dtype=np.float64))
    cuts = {"valid_from": valid_from, "test_from": test_from, **(cuts_info or {})}
    return Split(train, train_ts, list(ds.users), examples["valid"], examples["test"], ds, kind="temporal", cuts=cuts)


def item_counts(sequences, n_items: int) -> np.ndarray:
    """``[n_items]`` int64: how often each internal item index occurs in ``sequences`` (e.g. ``Split.train``); the
    most-popular baseline's scores and the popularity proposal of sampled softmax. Each sequence holds int indices
    (float, bool or string ones are a ``ValueError`` naming it: an int64 cast cut 1.7 to item 1); ``n_items`` is an
    int >= 1."""
    n_items = int_setting(n_items, "n_items", 1)
    rows = [np.asarray(s) for s in sequences]
    for r, a in enumerate(rows):
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            got = f"{a.dtype} values" if a.ndim == 1 else f"a {a.ndim}-D {a.dtype} array"
            raise ValueError(f"sequence {r} must be a 1-D array of int item indices, got {got} "
                             f"{a.ravel()[:3].tolist()}{' ...' if a.size > 3 else ''}; pass int64 indices")
    flat = np.concatenate([a.astype(np.int64, copy=False) for a in rows] or [np.zeros(0, np.int64)])
    if len(flat) and (flat.min() < 0 or flat.max() >= n_items):
        raise ValueError(f"sequences hold item indices outside [0, {n_items - 1}]")
    return np.bincount(flat, minlength=n_items)


__all__ = ["TIME_TIES", "SPLITS", "kcore_filter", "build_sequences", "load_dataset", "load_report", "repeated_rows",
           "leave_one_out", "temporal_split", "temporal_cuts", "factorize", "item_counts", "SequenceDataset",
           "EvalExamples", "Split"]
