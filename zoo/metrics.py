"""Full-ranking metrics for next-item prediction with one held-out target per user.

Everything derives from the 1-based rank of the target among all items:

* ``HR@K = 1[rank <= K]`` (with a single target ``Recall@K == HR@K``; LRURec reports it as Recall@K),
* ``NDCG@K = 1 / log2(rank + 1)`` if ``rank <= K`` else 0 (the ideal DCG of one relevant item is 1),
* ``MRR@K = 1 / rank`` if ``rank <= K`` else 0,

averaged over users (RecBole: mean over all evaluated users; LRURec averages per-batch means, which differs only
through an unequal last batch).

Ties: by default the rank is **pessimistic**: every other item whose score equals the target's is placed before
the target, ``rank = 1 + #(score > s_t) + #(other items with score == s_t)``. ``ties="optimistic"`` gives
``rank = 1 + #(score > s_t)`` (ties after the target). RecBole ranks with ``torch.topk``, whose order among exactly
tied scores is implementation-defined; with real-valued model scores exact ties are rare and both rules agree, but
the pessimistic rule can never overstate a degenerate model (a constant-score model gets the worst rank, not the
best). Items masked to ``-inf`` (padding, excluded history) never outrank a finite target; a target that is itself
``-inf`` ranks last among the ``-inf`` items, the padding column counted with them: its rank is ``V`` (``n_items + 1``
in :mod:`zoo.evaluate`'s terms, one past every item), a miss at every cut-off -- as a top-K graph, which cannot see past
its list, reports it (:func:`rank_in_top_k`: ``K + 1``), and as ``zoo.evaluate --ranks-out`` writes it.
The same rule holds where only a top-K list is known (an exported graph's ``topk_ids`` / ``topk_scores``,
:func:`rank_in_top_k`): the target ranks after every slot tied with it, and a tie group of two or more slots that
reaches slot K may go on outside the list, so the target then counts as a miss (rank ``K + 1``).

A cut-off above the number of items ranked would count every target a hit (``HR@K = 1``), so :func:`compute_metrics`
(given ``n_items``) and the evaluations of :mod:`zoo.evaluate` refuse it (:func:`check_cutoffs`).

A diagnostic besides the ranking metrics: ``Hist@K`` (:func:`history_in_top_k`), the mean share of the top-K slots
taken by items of the model's input window. On data without repeat interactions (ML-1M: no user rates an item twice)
those slots can never hold the target, so ``Hist@K`` is what the LRURec protocol's history mask gives back; it is 0
under that protocol by construction.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

METRICS = ("HR", "NDCG", "MRR")


#: memory the rank count of :func:`rank_of_target` may take at once on its torch path (CUDA tensors, integer scores):
#: its bool comparison and that comparison cast to int32 for the count, 5 bytes an element
RANK_CHUNK_BYTES = 2**28

#: elements of the scores that :func:`rank_of_target` compares at once on the CPU (a block of whole rows, or of one
#: row's columns where a row is longer): its bool comparison (and a float16 / bfloat16 block cast to float32) stays
#: in the L2 cache and its memory is bounded whatever the catalogue (bench/bench_rank.py, bench/RESULTS_RANK.md)
RANK_BLOCK = 2**16

#: the score dtypes :func:`rank_of_target` counts with numpy on the CPU (float16 / bfloat16 blocks cast to float32,
#: exactly); others (integer scores) and every non-CPU tensor go by torch
_NUMPY_RANK_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: row blocks at least this long are counted a row at a time by ``np.count_nonzero``; shorter ones as uint8 sums
_COUNT_BY_ROW_FROM = 2048


def rank_of_target(scores: torch.Tensor, targets: torch.Tensor, ties: str = "pessimistic") -> torch.Tensor:
    """1-based rank of each row's target among all ``V`` scores.

    Args:
        scores: ``[B, V]`` float scores over all items (masked items at ``-inf``).
        targets: ``[B]`` integer target index per row (a float tensor is refused).
        ties: ``"pessimistic"`` (default): ``1 + #(other items with score >= target score)``;
            ``"optimistic"``: ``1 + #(items with score > target score)``.
    Returns:
        ``[B]`` int64 ranks in ``1..V``.
    Raises:
        ValueError: shape mismatch, float targets, target out of range, or NaN scores.
    """
    scores = torch.as_tensor(scores)
    targets = torch.as_tensor(targets, device=scores.device)
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer item indices, got {targets.dtype} (a float index such as 1.9 would "
                         "be cut to 1)")
    targets = targets.long()
    if scores.dim() != 2 or targets.dim() != 1 or targets.shape[0] != scores.shape[0]:
        raise ValueError(f"expected scores [B, V] and targets [B], got {list(scores.shape)} and {list(targets.shape)}")
    if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= scores.shape[1]):
        raise ValueError(f"target index out of range 0..{scores.shape[1] - 1}")
    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic', got {ties!r}")
    t = scores.gather(1, targets[:, None])                                   # [B, 1]
    if scores.device.type == "cpu" and scores.dtype in _NUMPY_RANK_DTYPES:
        counts = _count_at_or_above_cpu(scores, t, strict=ties == "optimistic")
    else:
        if torch.isnan(scores).any():
            raise ValueError("scores contain NaN; cannot rank")
        # a few rows at a time, counted in int32: counting a whole [B, V] comparison makes an int64 copy of it (2 GB
        # at 256 x 1 M items; bench/bench_eval_memory.py), and int32 counts (V < 2**31) are twice as fast
        rows = max(1, RANK_CHUNK_BYTES // (5 * max(1, scores.shape[1])))
        counts = [(scores[i:i + rows] >= t[i:i + rows] if ties == "pessimistic" else scores[i:i + rows] > t[i:i + rows])
                  .sum(1, dtype=torch.int32) for i in range(0, scores.shape[0], rows)]
        counts = torch.cat(counts).long() if counts else torch.zeros(0, dtype=torch.long, device=scores.device)
    return counts if ties == "pessimistic" else counts + 1                   # pessimistic: the target counts itself


def _count_at_or_above_cpu(scores: torch.Tensor, t: torch.Tensor, strict: bool) -> torch.Tensor:
    """``[B]`` int64 ``#(scores >= t)`` per row (``>`` when ``strict``) of CPU ``scores [B, V]`` (float32 / float64,
    or float16 / bfloat16 cast to float32 a block at a time: exact) against ``t [B, 1]`` (the targets' scores), by
    numpy in blocks of :data:`RANK_BLOCK` elements, each checked for NaN (``ValueError``) before it is compared.

    ``np.count_nonzero`` of one row's bool block (no ``axis``) is numpy's vectorised count: the same count by
    ``torch.sum(dtype=int32)`` (or ``np.count_nonzero(axis=1)``, or ``.sum(1)``) casts every element, 5 to 25 times
    slower (bench/RESULTS_RANK.md); rows shorter than 2048 items (sampled candidates) are summed as uint8 a block at
    a time instead, which saves a call a row. The bool block is reused, so no ``[B, V]`` copy is ever made, and any
    strides (transposed, expanded) are read as they are. Single-threaded (numpy's)."""
    b, v = scores.shape
    cast = scores.dtype in (torch.float16, torch.bfloat16)
    scores = scores.detach().resolve_neg()
    t = (t.float() if cast else t).detach().resolve_neg().numpy()            # [B, 1]
    rows, cols = max(1, RANK_BLOCK // max(1, v)), max(1, min(v, RANK_BLOCK))
    compare = np.greater if strict else np.greater_equal
    out = np.zeros(b, dtype=np.int64)
    buf = np.empty((min(rows, b), cols), dtype=bool)
    for i in range(0, b, rows):
        stop = min(i + rows, b)
        for j in range(0, v, cols):
            block = scores[i:stop, j:j + cols]
            block = (block.float() if cast else block).numpy()
            if np.isnan(block.max()):                                       # max propagates NaN: one cheap pass
                raise ValueError("scores contain NaN; cannot rank")
            out[i:stop] += _row_counts(compare(block, t[i:stop], out=buf[:block.shape[0], :block.shape[1]]))
    return torch.from_numpy(out)


def _row_counts(hit: np.ndarray) -> np.ndarray:
    """``[R]`` int64: the number of ``True`` in each row of a bool ``hit [R, V]`` (any strides): rows of at least
    ``_COUNT_BY_ROW_FROM`` items by ``np.count_nonzero`` a row at a time (numpy's vectorised count), shorter ones as
    one uint8 sum of the block (fewer calls)."""
    if hit.shape[1] < _COUNT_BY_ROW_FROM:
        return hit.view(np.uint8).sum(1, dtype=np.int64)
    return np.fromiter((np.count_nonzero(row) for row in hit), dtype=np.int64, count=hit.shape[0])


def rank_in_top_k(topk_ids, topk_scores, targets, masked_at: float = float("-inf")) -> torch.Tensor:
    """Pessimistic 1-based rank of each row's target from a top-K list alone (an exported graph's ``topk_ids`` and
    ``topk_scores``, which hold no other scores): ``K + 1`` ("not in the top-K", as a miss is written for every
    cut-off ``<= K``) unless the rank is known to be ``<= K``.

    The rank is :func:`rank_of_target`'s: ``#(slots with score >= the target's)``, so the target ranks after every
    item tied with it rather than at its slot (a TopK puts exactly tied items in an order of its own, ONNX Runtime's
    by item index, which would rank a constant-score model's low-index targets first). When the target is tied with
    another slot and that tie group reaches slot K (the lowest slot's score equals the target's), more items tied with
    it may lie outside the list, so its rank is unknown beyond ``K - 1`` and it counts as ``K + 1``: a miss at K, never
    an overstated hit. A target alone at slot K keeps rank K: that an item outside the list ties it exactly cannot be
    seen from the list, and counting every target at slot K a miss would understate every model's ``HR@K`` (a graph
    with a ``scores`` output, or a larger K, ranks such a target exactly). A target scored ``<= masked_at`` (``-inf``;
    an exported graph's ``SEEN_SCORE`` for history items) is a masked item, which ranks last
    (:func:`rank_of_target`), so ``K + 1`` too. Slots left empty (id 0, score ``-inf``) never count.

    Args:
        topk_ids: ``[B, K]`` item indices, ``topk_scores``: ``[B, K]`` their scores (any order; a TopK's is
            descending).
        targets: ``[B]`` target index per row.
        masked_at: the highest score that marks a masked item.
    Returns:
        ``[B]`` int64 ranks in ``1..K + 1``.
    Raises:
        ValueError: shape mismatch or NaN scores.
    """
    ids = torch.as_tensor(np.asarray(topk_ids)).long()
    scores = torch.as_tensor(np.asarray(topk_scores)).double()
    targets = torch.as_tensor(np.asarray(targets)).long()
    if ids.dim() != 2 or scores.shape != ids.shape or targets.shape != ids.shape[:1]:
        raise ValueError(f"expected topk_ids and topk_scores [B, K] and targets [B], got {list(ids.shape)}, "
                         f"{list(scores.shape)} and {list(targets.shape)}")
    if torch.isnan(scores).any():
        raise ValueError("topk_scores contain NaN; cannot rank")
    k = ids.shape[1]
    hit = ids == targets[:, None]                                             # [B, K]
    found = hit.any(1)
    s = scores.gather(1, hit.long().argmax(1, keepdim=True))                  # [B, 1] the target's score (if found)
    at_or_above = (scores >= s).sum(1)                                        # the target and every slot tied/above
    open_ended = (at_or_above == k) & ((scores == s).sum(1) > 1)              # a tie group that reaches slot K
    known = found & ~open_ended & (s[:, 0] > masked_at)
    return torch.where(known, at_or_above, torch.full_like(at_or_above, k + 1))


def default_ks(n_items: int) -> list[int]:
    """The default cut-offs 5, 10, 20 that a ranking of ``n_items`` items has (else ``[n_items]``): what every
    command reports when not told otherwise (a catalogue of fewer than 20 items gets no HR@20, which would be 1)."""
    return [k for k in (5, 10, 20) if k <= n_items] or [int(n_items)]


def _cutoff(k) -> int:
    """A cut-off as an int: ``ValueError`` for one that is not a whole number (``int(2.7)`` would give 2 silently);
    strings (``"10"`` from a command line) are read by ``int``."""
    try:
        v = int(k)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"cut-offs must be whole numbers, got {k!r}") from None
    if isinstance(k, bool) or (not isinstance(k, str) and v != k):
        raise ValueError(f"cut-offs must be whole numbers, got {k!r}")
    return v


def check_cutoffs(ks: Iterable[int], n_items: int, owner: str = "evaluation") -> list[int]:
    """``ks`` as ints, each checked to be ``1 <= k <= n_items``, the number of items a target is ranked among (the
    ``owner``'s: a model's real items, a graph's, the target and its sampled negatives): a cut-off above it would count
    every target a hit (``HR@K = 1``) and is a ValueError naming the cut-off and ``n_items``, as ``zoo.evaluate
    --ks`` says it. A cut-off that is not a whole number (``2.7``) is refused, not cut to one."""
    ks = [_cutoff(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"cut-offs must be >= 1, got {ks}")
    if ks and max(ks) > int(n_items):
        raise ValueError(f"cut-off @{max(ks)}: the {owner} ranks {int(n_items)} items; use cut-offs <= {int(n_items)}")
    return ks


def history_in_top_k(scores: torch.Tensor, history: torch.Tensor, k: int) -> torch.Tensor:
    """How many of each row's top-``k`` items are in its history.

    Args:
        scores: ``[B, V]`` float scores over all items (masked items at ``-inf``).
        history: ``[B, L]`` int64 item indices of each row's input window; ``0`` (padding) is ignored.
        k: cut-off, ``1 <= k <= V``.
    Returns:
        ``[B]`` int64 counts in ``0..k`` (the top-``k`` by :func:`top_k`: among exactly tied scores the lower item
        indices enter, as in every recommendation of the zoo). Items scored ``-inf`` (masked) are never
        counted, so a history mask gives 0 even when fewer than ``k`` items remain unmasked.
    Raises:
        ValueError: shape mismatch, ``k`` out of range, or history indices outside ``0..V-1``.
    """
    scores = torch.as_tensor(scores)
    history = torch.as_tensor(history, device=scores.device).long()
    if scores.dim() != 2 or history.dim() != 2 or history.shape[0] != scores.shape[0]:
        raise ValueError(f"expected scores [B, V] and history [B, L], got {list(scores.shape)} and "
                         f"{list(history.shape)}")
    k = _cutoff(k)
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in 1..{scores.shape[1]}, got {k}")
    if history.numel() and (int(history.min()) < 0 or int(history.max()) >= scores.shape[1]):
        raise ValueError(f"history index out of range 0..{scores.shape[1] - 1}")
    seen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    seen.scatter_(1, history, True)
    seen[:, 0] = False                                                        # padding is not history
    top_scores, top = top_k(scores, k, dim=1)                                 # [B, k]
    return (seen.gather(1, top) & (top_scores > float("-inf"))).sum(1).long()


def _count_true(mask: torch.Tensor) -> torch.Tensor:
    """``[R]`` int64: the number of ``True`` in each row of a bool ``mask [R, V]``. On the CPU numpy's count (as in
    :func:`rank_of_target`: torch's bool sum casts every element to int64, some 50 times slower there), else
    torch's."""
    if mask.device.type != "cpu":
        return mask.sum(1)
    return torch.from_numpy(_row_counts(mask.numpy()))


def top_k(scores: torch.Tensor, k: int, dim: int = -1):
    """``torch.topk(scores, k, dim)`` with a fixed rule for exactly tied scores: the **lower item index first**, in
    the order of the slots and in which items enter at slot ``k`` -- the rule of ONNX's ``TopK`` (and so of every
    exported graph, Triton and :mod:`export.runtime`), so that every surface of the zoo recommends the same items in
    the same order. ``torch.topk`` leaves tied items' order unspecified (it even changes with ``k``, so a larger
    ``k`` need not extend a smaller one); ties are not rare: items added by ``add_items`` start from one row, and
    masked items all sit at ``-inf``. NaN ranks above every number, as in ``torch.topk`` (NaNs tie with each other).

    A row whose ``k``-th score is strictly above its ``(k + 1)``-th (``torch.topk(k + 1)``: no tie and no NaN at slot
    ``k``, the common case) has its set of ``k`` items fixed already, and only that set is ordered; only the other
    rows (a tie or NaN at slot ``k``) are resolved by :func:`_tied_top_k_set` over their whole ``[V]`` row
    (``bench/bench_rank.py --top-k``). ``k == V`` sorts the whole row.

    Args:
        scores: ``[..., V]`` float scores (``dim`` picks the item axis).
        k: ``1 <= k <= V``.
    Returns:
        ``torch.return_types.topk``-like ``(values, indices)``, each ``[..., k]``: values descending, ties by
        ascending index.
    """
    moved = scores.movedim(dim, -1)
    flat = moved.reshape(-1, moved.shape[-1])                                 # [R, V]
    if k == flat.shape[1]:                                                    # every item: the set is the row
        idx = torch.arange(k, device=flat.device).expand(flat.shape[0], k)    # [R, k]: ascending item index
    else:
        cand = flat.topk(k + 1, dim=1)                                        # [R, k + 1]; k > V raises here
        idx = cand.indices[:, :k]                                             # [R, k]: the set where it is fixed
        open_rows = ~(cand.values[:, k - 1] > cand.values[:, k])              # [R]: tie or NaN at slot k
        if bool(open_rows.any()):
            rows = open_rows.nonzero().squeeze(1)
            idx = idx.clone()
            idx[rows] = _tied_top_k_set(flat[rows], k)
        idx = idx.sort(dim=1).values                                          # [R, k]: ascending item index
    sel = flat.gather(1, idx)
    order = torch.sort(sel, dim=1, descending=True, stable=True).indices     # stable: ties keep the lower index first
    values, indices = sel.gather(1, order), idx.gather(1, order)
    shape = moved.shape[:-1] + (k,)
    return torch.return_types.topk((values.view(shape).movedim(-1, dim), indices.view(shape).movedim(-1, dim)))


def _tied_top_k_set(flat: torch.Tensor, k: int) -> torch.Tensor:
    """``[R, k]`` int64, ascending: the item indices of each row's top ``k`` of ``flat [R, V]`` under
    :func:`top_k`'s rule (NaN above every number; of the group tied at slot ``k``, the lowest indices enter), by
    ``[R, V]`` masks of the items above the ``k``-th score and tied with it (for the rows :func:`top_k`'s fast path
    leaves open)."""
    thr = flat.topk(k, dim=1).values[:, -1:]                                  # [R, 1]: the k-th score of each row
    nan, thr_nan = flat.isnan(), thr.isnan()
    above = (flat > thr) | (nan & ~thr_nan)                                   # [R, V]: enter in any case
    tied = torch.where(thr_nan, nan, flat == thr)                             # [R, V]: the k-th score's group
    need = k - _count_true(above)[:, None]                                    # [R, 1]: slots left for the group
    take = above | tied
    over = _count_true(tied) > need[:, 0]                                     # [R]: the group straddles slot k
    if bool(over.any()):                                                      # only those rows: the lowest indices
        rows = over.nonzero().squeeze(1)
        take[rows] = above[rows] | (tied[rows] & (tied[rows].cumsum(1) <= need[rows]))
    return take.nonzero()[:, 1].view(-1, k)


def _ranks(ranks) -> torch.Tensor:
    r = torch.as_tensor(np.asarray(ranks) if not isinstance(ranks, torch.Tensor) else ranks).double()
    if r.dim() != 1:
        raise ValueError(f"ranks must be 1-D, got shape {list(r.shape)}")
    if len(r):
        whole = torch.isfinite(r) & (r == r.round())          # NaN / inf / 1.5 would count as misses or partial hits
        if not bool(whole.all()):
            i = int((~whole).nonzero()[0, 0])
            raise ValueError(f"ranks must be whole numbers >= 1; ranks[{i}] is {float(r[i])!r}")
        if float(r.min()) < 1:
            raise ValueError("ranks are 1-based; got a rank < 1")
    return r


def hit_at_k(ranks, k: int) -> torch.Tensor:
    """``[B]`` float64: 1 if ``rank <= k`` else 0."""
    r = _ranks(ranks)
    return (r <= k).double()


def ndcg_at_k(ranks, k: int) -> torch.Tensor:
    """``[B]`` float64: ``1 / log2(rank + 1)`` if ``rank <= k`` else 0."""
    r = _ranks(ranks)
    return torch.where(r <= k, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r))


def mrr_at_k(ranks, k: int) -> torch.Tensor:
    """``[B]`` float64: ``1 / rank`` if ``rank <= k`` else 0."""
    r = _ranks(ranks)
    return torch.where(r <= k, 1.0 / r, torch.zeros_like(r))


_FUNCS = {"HR": hit_at_k, "NDCG": ndcg_at_k, "MRR": mrr_at_k}


def _check_metric_names(metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in _FUNCS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(_FUNCS)}")


def compute_metrics(ranks, ks: Iterable[int] = (5, 10, 20), metrics: Sequence[str] = METRICS,
                    recall_alias: bool = True, n_items: int | None = None) -> dict[str, float]:
    """Mean metrics over users from their target ranks.

    Args:
        ranks: ``[B]`` 1-based ranks (tensor, array or list): whole numbers, NaN / inf / fractions refused.
        ks: cut-offs (whole numbers).
        metrics: any of ``"HR"``, ``"NDCG"``, ``"MRR"``.
        recall_alias: also emit ``"Recall@K"`` (identical to ``HR@K`` with a single target).
        n_items: the number of items each target was ranked among (the ranks alone do not tell it); given, a cut-off
            above it is refused (:func:`check_cutoffs`: ``HR@K`` would be 1 whatever the model).
    Returns:
        ``{"HR@5": ..., "HR@10": ..., "NDCG@5": ..., ..., "MRR@20": ..., "Recall@5": ...}`` as Python floats
        (metric-major, ``ks`` in the given order).
    """
    r = _ranks(ranks)
    if len(r) == 0:
        raise ValueError("no ranks given")
    ks = [_cutoff(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"cut-offs must be >= 1, got {ks}")
    if n_items is not None:
        check_cutoffs(ks, n_items)
    _check_metric_names(metrics)
    out = {}
    for m in metrics:
        for k in ks:
            out[f"{m}@{k}"] = float(_FUNCS[m](r, k).mean())
    if recall_alias and "HR" in metrics:
        for k in ks:
            out[f"Recall@{k}"] = out[f"HR@{k}"]
    return out


def _resampled_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``[M, n_boot]`` means of ``values [M, U]`` over users drawn with replacement (the same draw for every row)."""
    n_users = values.shape[1]
    gen = np.random.default_rng(seed)
    out = np.empty((values.shape[0], n_boot))
    for s in range(0, n_boot, 100):                                                   # 100 resamples at a time
        idx = gen.integers(0, n_users, size=(min(100, n_boot - s), n_users))          # [R, U] users drawn
        out[:, s:s + len(idx)] = values[:, idx].mean(axis=2)
    return out


def _check_bootstrap(n_boot: int, confidence: float, metrics: Sequence[str]) -> None:
    if int(n_boot) < 100:
        raise ValueError(f"n_boot must be >= 100, got {n_boot}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    _check_metric_names(metrics)


def bootstrap_interval(ranks, ks: Iterable[int] = (10,), metrics: Sequence[str] = METRICS, n_boot: int = 10_000,
                       seed: int = 0, confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval over users of each mean metric: ``{"NDCG@10": (low, high), ...}``.

    What a model card states beside its numbers: how far another draw of the same number of test users could move
    them (not how far retraining with another seed could)."""
    r = _ranks(ranks)
    if len(r) == 0:
        raise ValueError("no ranks given")
    _check_bootstrap(n_boot, confidence, metrics)
    names = [f"{m}@{_cutoff(k)}" for m in metrics for k in ks]
    values = np.stack([_FUNCS[n.split("@")[0]](r, int(n.split("@")[1])).numpy() for n in names])   # [M, U]
    lo, hi = np.quantile(_resampled_means(values, int(n_boot), seed), [(1 - confidence) / 2, (1 + confidence) / 2],
                         axis=1)
    return {n: (float(lo[i]), float(hi[i])) for i, n in enumerate(names)}


def paired_bootstrap(ranks_a, ranks_b, ks: Iterable[int] = (10,), metrics: Sequence[str] = METRICS,
                     n_boot: int = 10_000, seed: int = 0, confidence: float = 0.95) -> dict[str, dict]:
    """Paired bootstrap over users of the difference ``B - A`` of two models' mean metrics on the same examples.

    Each resample draws the ``U`` users with replacement (the same users for both models, so the spread is that of
    the per-user differences), as in the significance tests of the IR literature (Sakai 2006; Smucker et al. 2007).

    Args:
        ranks_a, ranks_b: ``[U]`` 1-based target ranks of models A and B, example ``u`` the same user and target in
            both.
        ks, metrics: the cut-offs and metrics (``HR``, ``NDCG``, ``MRR``) compared.
        n_boot: bootstrap resamples; seed: their generator's seed; confidence: of the percentile interval.
    Returns:
        ``{"NDCG@10": {"a", "b", "diff", "ci_low", "ci_high", "p"}, ...}``: the two means, ``diff = b - a``, the
        percentile interval of the resampled differences, and the two-sided bootstrap p-value
        ``min(1, 2 * min(P*(diff* <= 0), P*(diff* >= 0)))`` (a shift of 0 from the observed difference's side).
    """
    a, b = _ranks(ranks_a), _ranks(ranks_b)
    if a.shape != b.shape or len(a) == 0:
        raise ValueError(f"paired ranks need the same, non-zero number of examples; got {len(a)} and {len(b)}")
    _check_bootstrap(n_boot, confidence, metrics)
    names = [(m, _cutoff(k)) for m in metrics for k in ks]
    per_user = {f"{m}@{k}": (_FUNCS[m](a, k).numpy(), _FUNCS[m](b, k).numpy()) for m, k in names}
    diffs = np.stack([pb - pa for pa, pb in per_user.values()])                       # [M, U]
    boot = _resampled_means(diffs, int(n_boot), seed)                                 # [M, n_boot]
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2], axis=1)
    out = {}
    for i, (name, (pa, pb)) in enumerate(per_user.items()):
        p = min(1.0, 2.0 * min(float((boot[i] <= 0).mean()), float((boot[i] >= 0).mean())))
        out[name] = {"a": float(pa.mean()), "b": float(pb.mean()), "diff": float(pb.mean() - pa.mean()),
                     "ci_low": float(lo[i]), "ci_high": float(hi[i]), "p": p}
    return out


__all__ = ["rank_of_target", "rank_in_top_k", "check_cutoffs", "history_in_top_k", "hit_at_k", "ndcg_at_k", "mrr_at_k",
           "compute_metrics", "METRICS", "paired_bootstrap", "bootstrap_interval"]
