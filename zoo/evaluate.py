"""Full-ranking evaluation of a zoo model on leave-one-out examples, and the ``zoo-evaluate`` command.

Protocols
---------
* **RecBole** (default; Mamba4Rec, TiM4Rec, SSD4Rec papers): score all items, padding masked, history **not**
  masked; rank of the held-out item among all items; HR/NDCG/MRR@K averaged over users.
* **LRURec** (``exclude_history=True``): additionally every item of the model's input window (the last
  ``max_seq_length`` items of the history) is masked before ranking. (LRURec masks with -1e9, we use -inf; a target
  that is itself in the window therefore ranks last: it can never be a hit.)
* **Sampled** (``--sampled uni100`` / ``pop100``, RecBole's ``mode: uni100 | pop100``, the SASRec and BERT4Rec papers'
  protocol): the target is ranked among ``N`` negatives drawn for its user -- uniformly, or in proportion to the items'
  training counts (RecBole counts train, valid and test together) -- never from the user's history or the target. The
  draws depend only on ``--sample-seed``, the example's position and the data, so every model evaluated on the same data
  and seed meets the same negatives (RecBole draws them anew, RecBole#2077). Sampled metrics are kept for comparing with
  papers that report them; they can rank models differently from full ranking (Krichene & Rendle, KDD 2020;
  ``bench/RESULTS_SAMPLED_METRICS.md``).

Command line::

    python -m zoo.evaluate --model runs/mamba4rec-ml1m --data ../shared/data/ml-1m.5core.seq.gz \\
        [--split test|valid] [--exclude-history] [--ks 5 10 20] [--history-share] [--batch-size 256] \\
        [--json out.json] [--max-users N] [--kcore K|none|auto] [--time-ties file|item] [--device cpu] \\
        [--no-progress] [--intervals] [--ranks-out ranks.csv] [--sampled uni100|pop100 [--sample-seed 0]] \\
        [--threads N]
    python -m zoo.evaluate --onnx hub_cards/lrurec-ml1m/onnx --data ../shared/data/ml-1m.5core.seq.gz --ks 5 10

Data item ids are mapped through the model's own ``item_vocab`` (external ids -> the indices it was trained with).
Interactions of one user with equal timestamps keep their file order (a stable sort, as RecBole's) unless
``--time-ties item`` sorts them by item id (LRURec); on ML-1M the choice changes the test item of about a quarter of
the users, and a model loses ~0.04 HR@10 on the order it was not trained on (``bench/TIE_ORDER.md``), so evaluate with
the order of its training (a card's ``eval_results.json`` says which, under ``data_options``). Unless given,
``--kcore`` and ``--time-ties`` are those the ``--model``'s run logged (``train_log.json``, a soup's or a card's
log), else zoo.train's defaults (auto, file), as zoo.recommend and zoo.embed read ``--data``. The line under the text
header says what that load left out or kept beyond the counts: the rows, users and items the k-core filter removed
from the file's, and the rows that repeat an earlier (user, item, time) row (kept, as RecBole keeps them); the JSON's
``dataset`` holds the same counts (``read``, ``kcore``, ``kcore_removed``, ``repeated_rows``).

``--onnx DIR`` evaluates an exported graph (``python -m export.onnx``) instead, with ONNX Runtime only: the artefact a
server runs, on the same examples and windows (:func:`evaluate_onnx`). A step graph is primed with each user's window in
one call, a window graph gets it padded; ranks come from the in-graph top-K (so cut-offs must be <= K unless the graph
outputs all scores), ties pessimistic as for a model (a tie group reaching slot K counts as a miss); a graph exported
with ``--exclude-seen`` is evaluated under the LRURec protocol (it masks the window itself), one without it cannot be.

``--json -`` / ``--ranks-out -`` write the results / ranks on standard output, and the table and other lines on
stderr (``... --json - | jq .metrics``).

``--intervals`` adds 95% percentile-bootstrap intervals over the users to HR, NDCG and MRR at every cut-off (how far
another draw of as many users could move them; ``Recall@K`` is ``HR@K``, ``Hist@K`` has none); ``--ranks-out`` keeps
each user's target rank for paired comparisons of two models (``python -m zoo.compare``): a ``# zoo.evaluate ranks
{json}`` line, then CSV rows, every line ending in ``\\n`` (read it with ``pandas.read_csv(path, skiprows=1)``:
``comment="#"`` would cut every row at a user or item id holding a ``#``).

A model or ``--onnx`` graph whose scores are NaN or infinite for a user (a numeric overflow, or NaN weights) is
refused in one line naming the users (:class:`ScoreOverflow`), as ``zoo.recommend`` refuses it: NaN and ``+inf`` rank
first.

A ``--model``'s results (the ``--json`` file and the table's first line) say the dtype it was measured in (``dtype``:
a checkpoint saved in bfloat16 loads and runs in bfloat16; its item scores are computed in float32, since 16-bit
logits tie) and ``tied_targets``, how many targets tied with another item's score, which the pessimistic ties rank
below them (the first line names them when there are any).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Iterable, Sequence

import numpy as np
import torch

from export.fsutil import json_depth_guard, strict_json

from .cli import (EXIT_CODES, EXIT_MISSING, STDOUT_PATH, add_columns_option, apply_threads, cannot, check_outputs,
                  cli_device, error_text, exit_with, folder_inputs, nonnegative_int, positive_int, written_whole)
from .cli import UsageError, add_model_data_options, command_prog, model_data_options, text_stream
from .data.batching import eval_batches
from .data.split import (EvalExamples, SequenceDataset, item_counts, leave_one_out, load_dataset, temporal_cuts,
                         temporal_split)
from .metrics import (check_cutoffs, compute_metrics, default_ks, history_in_top_k, rank_in_top_k,
                      rank_of_target)
from .modeling_utils import DeviceUnavailableError, ScoreOverflow, _check_model_type
from .pretrained import add_hub_options, hub_options

#: the reference rankings ``--baseline`` evaluates without a model, and how each ranks the items
BASELINES = {"pop": "by training-sequence count (RecBole's Pop)",
             "markov": "by how often each item directly followed the history's last item in the training sequences "
                       "(first-order transitions), ties by training count"}
#: how ``--sampled`` draws the negatives: uniformly over the items, or in proportion to their training counts
SAMPLERS = {"uni": "uniformly", "pop": "in proportion to their training counts"}


def parse_sampled(text: str) -> tuple[str, int]:
    """``"uni100"`` -> ``("uni", 100)``: a sampler of :data:`SAMPLERS` and a number of negatives ``>= 1``."""
    m = re.fullmatch(r"(uni|pop)([0-9]+)", str(text))
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"expected uniN or popN (N >= 1 negatives per user, e.g. uni100), got {text!r}")
    return m.group(1), int(m.group(2))


def sample_negatives(examples: EvalExamples, n_items: int, n: int, how: str = "uni", seed: int = 0,
                     counts: np.ndarray | None = None) -> np.ndarray:
    """``[B, n]`` int64 distinct negatives per example: internal indices ``1 .. n_items - 1`` that are neither in the
    example's history nor its target, drawn uniformly (``how="uni"``) or in proportion to ``counts [n_items]`` (the
    training counts, ``how="pop"``: items never trained on are never drawn). Row ``r`` depends only on ``seed``, ``r``
    and the data (``numpy.random.default_rng([seed, r])``), so evaluations of several models share their negatives.

    Raises ``ValueError`` for a row with fewer than ``n`` items left to draw (naming the user), before the ``[B, n]``
    array is allocated (an absurd ``n``, ``uni1000000000``, is that error, not a ``MemoryError``)."""
    if how not in SAMPLERS:
        raise ValueError(f"how must be one of {', '.join(SAMPLERS)}, got {how!r}")
    n = int(n)
    cdf = None
    if how == "pop":
        if counts is None or len(counts) != n_items:
            raise ValueError(f"pop sampling needs the items' training counts [{n_items}]")
        w = np.asarray(counts, dtype=np.float64).copy()
        w[0] = 0.0
        if w.sum() <= 0:
            raise ValueError("pop sampling: no item has a training count")
        cdf = np.cumsum(w / w.sum())
        drawable = w > 0
    else:
        drawable = np.ones(n_items, dtype=bool)
        drawable[0] = False
    # n >= n_items: no row has that many items to draw, so row 0 fails below -- before an array of that width
    out = np.empty((len(examples), n if n < n_items or not len(examples) else 0), dtype=np.int64)
    for r, (h, t) in enumerate(zip(examples.histories, examples.targets, strict=True)):
        gone = set(np.asarray(h).tolist()) | {int(t)}
        left = int(drawable.sum()) - sum(1 for x in gone if 0 <= x < n_items and drawable[x])
        if left < n:
            raise ValueError(f"user {examples.users[r]!r}: {left} items left to draw as negatives, fewer than {n} "
                             f"({'items with a training count' if how == 'pop' else 'items'} not in the user's "
                             "history or target)")
        rng = np.random.default_rng([int(seed), r])
        chosen: dict[int, None] = {}                        # insertion-ordered: the draw order decides
        while len(chosen) < n:
            size = 2 * (n - len(chosen)) + 8
            draw = (rng.integers(1, n_items, size=size) if cdf is None
                    else np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_items - 1))
            for x in draw.tolist():
                if x not in gone and x not in chosen and drawable[x]:
                    chosen[x] = None
                    if len(chosen) == n:
                        break
        out[r] = list(chosen)
    return out


def sampled_ranks(scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """``[B]`` pessimistic rank of each target among itself and its ``negatives [B, N]`` under ``scores [B, V]``
    (1 .. N + 1; a masked target, ``-inf``, ranks last)."""
    cand = torch.cat([targets.long()[:, None], negatives.long()], 1).to(scores.device)      # [B, 1 + N]
    sub = scores.gather(1, cand)
    return rank_of_target(sub, torch.zeros(len(targets), dtype=torch.long, device=scores.device))


#: the history window a baseline masks under ``--exclude-history``: the zoo models' default ``max_seq_length``
BASELINE_WINDOW = 200

#: ``max_len="all"`` (``--window all``) on a model with an exact recurrent step (``has_exact_step``: Mamba4Rec,
#: LRURec, GRU4Rec, TiM4Rec-causal): a history longer than this many items is not run in one forward, whose
#: activations grow with its length (about 5 GB for 10^6 events of Mamba4Rec's card config), but fed this many items
#: at a time through :meth:`~zoo.modeling_utils.SeqRecPreTrainedModel.step`, each chunk continuing the state the one
#: before returned: peak memory about that of 2^16 items, a little above a default batch's 256 x 200 window items
#: (bench/RESULTS_EVAL_MEMORY.md), whatever the history; the scores equal the one forward's up to float rounding
STEP_CHUNK_TOKENS = 2**16


def _check_examples(examples: EvalExamples, n_items: int, uses_ts: bool, owner: str, name: str) -> None:
    """Non-empty, every target in ``1 .. n_items - 1``, timestamps present when ``owner`` ("model" / "graph") reads
    them; raises ValueError naming the problem."""
    if len(examples) == 0:
        raise ValueError("no evaluation examples")
    tmax = int(examples.targets.max())
    tmin = int(examples.targets.min())
    if tmin < 1 or tmax >= n_items:
        raise ValueError(f"target item index {tmax if tmax >= n_items else tmin} out of range 1..{n_items - 1} "
                         f"({owner} n_items={n_items}); were the data encoded with the {owner}'s item vocabulary?")
    if uses_ts and examples.history_timestamps is None:
        raise ValueError(f"{name} reads timestamps but the evaluation data has none "
                         "(e.g. a .seq file); use a file with timestamps")


def check_window(model, max_len: int | str | None) -> tuple[int | None, int | None]:
    """``(max_len, tokens)`` for :func:`eval_batches` from an :func:`evaluate_model` window: ``None`` -> the model's
    ``max_seq_length``; ``"all"`` -> ``(None, max_seq_length)`` (whole histories, batched by length); an int ``N >= 1``
    -> ``N``. ``ValueError`` for anything else, and for ``"all"`` or ``N > max_seq_length`` on a model with a
    ``fixed_window`` (it cannot read more)."""
    window = int(model.config.max_seq_length)
    if max_len is None:
        return window, None
    name = type(model).__name__
    if isinstance(max_len, str) and max_len == "all":
        if getattr(model, "fixed_window", False):
            raise ValueError(f"{name} reads at most max_seq_length={window} items (fixed_window: position embeddings "
                             "or window-sized weights); the whole history needs a model without a fixed window "
                             "(Mamba4Rec, LRURec, GRU4Rec, TiM4Rec-causal, SSD4Rec)")
        return None, window
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len must be an int >= 1, 'all' or None, got {max_len!r}")
    if getattr(model, "fixed_window", False) and max_len > window:
        raise ValueError(f"{name} reads at most max_seq_length={window} items (fixed_window); got max_len={max_len}")
    return int(max_len), None


def overflow_error(users: Sequence | None, dtype) -> ScoreOverflow:
    """The :class:`ScoreOverflow` for ``users`` (the ids of the rows whose scores are NaN or infinite; the first 8
    are named; ``None``: the one history given), ``dtype`` the model's."""
    if users is None:
        who = "for the history"
    else:
        who = (f"for user{'s' if len(users) != 1 else ''} " + ", ".join(repr(u) for u in users[:8])
               + (" ..." if len(users) > 8 else ""))
    return ScoreOverflow(f"the model's scores are NaN or infinite {who} (a numeric overflow or NaN weights, e.g. in "
                         f"{dtype}): a NaN or +inf would be recommended first, so nothing is ranked")


def overflowed_rows(scores: torch.Tensor, n_masked=0) -> list[int]:
    """The rows of ``scores [B, V]`` holding a NaN, a ``+inf``, or more ``-inf`` than the ``n_masked`` slots set to
    ``-inf`` on purpose (an int, or ``[B]`` per row): a numeric overflow. Two passes over ``scores``, ``[B]`` results
    (no ``[B, V]`` temporary but one bool tensor)."""
    top = scores.amax(dim=1)                                            # NaN propagates
    bad = torch.isnan(top) | (top == float("inf"))
    n_masked = torch.as_tensor(n_masked, device=scores.device)
    bad |= (scores == float("-inf")).sum(dim=1) > n_masked
    return bad.nonzero().flatten().tolist()


def predict_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, users: Sequence | None,
                   **kwargs) -> torch.Tensor:
    """``model.predict(input_ids, attention_mask, **kwargs)``: ``[B, n_items]`` float scores (padding, and with the
    ``exclude_items`` / ``exclude_seen`` of ``kwargs`` the excluded items, at ``-inf``). ``predict`` refuses a row
    with a NaN or infinite score at a real item (:class:`ScoreOverflow`, naming batch rows); it is raised again naming
    their users (``users``: the ``B`` rows' ids; ``None`` for one history)."""
    try:
        return model.predict(input_ids, attention_mask, **kwargs)
    except ScoreOverflow as e:
        if e.rows is None:
            raise
        raise overflow_error(None if users is None else [users[r] for r in e.rows], model.dtype) from None


@torch.no_grad()
def stepped_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, users: Sequence,
                   timestamps: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
    """``[B, n_items]`` float32 scores of :func:`predict_scores` (padding at ``-inf``, nothing else masked) for a
    model with an exact step (``has_exact_step``), without a forward over whole histories: each row's real items
    (``attention_mask``; either padding side) are fed ``chunk`` (default :data:`STEP_CHUNK_TOKENS`) at a time through
    :meth:`~zoo.modeling_utils.SeqRecPreTrainedModel.step` from a fresh state, every chunk continuing the state the
    one before returned, and the row is scored on the last one's output. Peak memory is that of ``chunk`` items (and
    the ``[B, n_items]`` scores) whatever the history's length; the scores equal the forward's up to float rounding.
    ``timestamps [B, L]`` for a time-aware model. A row whose state or scores turn NaN or infinite (a numeric
    overflow, where the forward's scores would be NaN) is a :class:`ScoreOverflow` naming its user (``users``)."""
    chunk = STEP_CHUNK_TOKENS if chunk is None else int(chunk)
    rows = []
    for r in range(input_ids.shape[0]):
        keep = attention_mask[r].bool()
        ids = input_ids[r][keep][None]                                                  # [1, L_r], no padding
        ts = None if timestamps is None else timestamps[r][keep][None]
        state = model.init_state(1, device=ids.device)
        for s in range(0, ids.shape[1], chunk):
            try:
                logits, state = model.step(ids[:, s:s + chunk], state,
                                           timestamps=None if ts is None else ts[:, s:s + chunk])
            except ScoreOverflow:                                                       # step's (batch rows)
                raise overflow_error([users[r]], model.dtype) from None
            if s + chunk < ids.shape[1] and not all(bool(torch.isfinite(t).all()) for t in state.values()
                                                    if t.is_floating_point()):
                raise overflow_error([users[r]], model.dtype)                         # step would refuse it
        rows.append(logits.float())
    scores = torch.cat(rows)                                                           # [B, n_items]
    real = scores[:, 1:]                    # NaN / +-inf at a real item, as predict refuses them: [B] passes only
    bad = (~(torch.isfinite(real.amax(dim=1)) & torch.isfinite(real.amin(dim=1)))).nonzero().flatten().tolist()
    if bad:
        raise overflow_error([users[r] for r in bad], model.dtype)
    scores[:, 0] = float("-inf")
    return scores


@torch.no_grad()
def evaluate_model(model, examples: EvalExamples, ks: Iterable[int] = (5, 10, 20), exclude_history: bool = False,
                   batch_size: int = 256, device: str | torch.device | None = None, progress: bool = True,
                   max_len: int | str | None = None, return_ranks: bool = False, history_share: bool = False,
                   negatives: np.ndarray | None = None, any_ks: bool = False, stats: dict | None = None):
    """Full-ranking metrics of ``model`` on ``examples``.

    Args:
        model: a :class:`~zoo.modeling_utils.SeqRecPreTrainedModel`; its ``padding_side`` and
            ``config.max_seq_length`` shape the batches; its ``predict`` scores them (padding logit at ``-inf``).
        examples: histories/targets in the model's internal indices (e.g. ``leave_one_out(ds).test``).
        ks: metric cut-offs.
        exclude_history: LRURec protocol: mask every item of the history read (the window) before ranking.
        batch_size: examples per forward pass.
        device: where to run (default: the model's device).
        progress: show a tqdm bar (when stderr is a terminal).
        max_len: history window (default ``model.config.max_seq_length``, the window the model was trained and its
            card measured on); ``"all"``: each user's whole history, for models without a fixed window (not
            ``fixed_window``: Mamba4Rec, LRURec, GRU4Rec, TiM4Rec-causal, SSD4Rec), what :meth:`step` serves when it
            folds in every event. Its batches go by history length, about ``batch_size * max_seq_length`` items
            each (the memory of a window batch); on a model with an exact step (``has_exact_step``: Mamba4Rec,
            LRURec, GRU4Rec, TiM4Rec-causal) a batch holding a history longer than :data:`STEP_CHUNK_TOKENS` items
            is scored a row at a time, each history fed that many items at a time through :meth:`step` (peak memory
            bounded whatever the history: :func:`stepped_scores`); other models (SSD4Rec) run each batch in one
            forward, whose memory grows with its longest history.
        return_ranks: also return the ``[B]`` int64 ranks (CPU, example order).
        history_share: also report ``Hist@K``, the mean share of the top-K slots taken by items of the input window
            (:func:`zoo.metrics.history_in_top_k`; 0 when ``exclude_history``).
        negatives: ``[len(examples), N]`` (:func:`sample_negatives`): rank each target among its N negatives only
            (sampled metrics) instead of among all items.
        any_ks: take cut-offs above the items ranked (for the fixed ``NDCG@10`` of a run's validation, its
            popularity floor and a soup's choice: on a catalogue of fewer than 10 items it is the NDCG over all of
            them, still an ordering measure); by default they are refused (``HR@K`` would be 1).
        stats: a dict that gets ``"tied_targets"``: how many targets (finite score) tied with another item ranked
            (with ``negatives``, one of their own), which the pessimistic ties rank below all of them
            (:func:`tied_targets`; a 16-bit scoring gave ties to half the targets).
    Returns:
        ``{"HR@5": ..., "NDCG@5": ..., "MRR@5": ..., "Recall@5": ..., ...}`` (floats; plus ``"Hist@K"`` with
        ``history_share``), or ``(metrics, ranks)``.
    Raises:
        ValueError: a cut-off above the items ranked (``n_items - 1``, or ``N + 1`` with ``negatives``: HR@K would be
            1), targets out of range, timestamps missing for a time-aware model, malformed ``negatives``;
            :class:`ScoreOverflow` naming the users whose scores are NaN or infinite (:func:`predict_scores`).
    """
    uses_ts = bool(getattr(model, "uses_timestamps", False))
    _check_examples(examples, int(model.config.n_items), uses_ts, "model", type(model).__name__)
    negs = _check_negatives(negatives, examples, int(model.config.n_items))
    if negs is not None and history_share:
        raise ValueError("history_share is a full-ranking measure (the top-K of all items); not with negatives")
    ks = [int(k) for k in ks] if any_ks else _check_ranked_cutoffs(ks, int(model.config.n_items), negs, "model")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    model = model.to(device)
    was_training = model.training
    model.eval()
    max_len, max_tokens = check_window(model, max_len)
    stepped = max_len is None and bool(getattr(model, "has_exact_step", False))     # "all": long histories chunked
    ranks = torch.empty(len(examples), dtype=torch.long)
    in_top = {k: torch.zeros(len(examples), dtype=torch.long) for k in ks} if history_share else {}
    tied = 0                                                   # targets tied with another item (stats)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(examples), desc="evaluate", unit="user", leave=False, disable=None)   # None: a tty's
    try:
        for batch in eval_batches(examples, max_len, model.padding_side, batch_size,
                                  max_tokens=None if max_tokens is None else batch_size * max_tokens):
            ids = batch["input_ids"].to(device)
            mask = batch["attention_mask"].to(device)
            ts = batch["timestamps"].to(device) if uses_ts else None
            rows = batch["index"]                                                          # a slice or indices
            users = examples.users[rows] if isinstance(rows, slice) else [examples.users[i] for i in rows.tolist()]
            if stepped and ids.shape[1] > STEP_CHUNK_TOKENS:                             # O(chunk) memory
                scores = stepped_scores(model, ids, mask, users, ts)
            else:
                scores = predict_scores(model, ids, mask, users, timestamps=ts, exclude_seen=False).float()  # pad -inf
            window = torch.where(mask, ids, torch.zeros_like(ids))                         # [B, L], pad -> index 0
            if exclude_history:
                scores.scatter_(1, window, float("-inf"))                               # predict's own tensor
            targets = batch["targets"].to(device)
            ranks[batch["index"]] = (rank_of_target(scores, targets) if negs is None
                                     else sampled_ranks(scores, targets, negs[batch["index"]])).cpu()
            if stats is not None:
                tied += int(tied_targets(scores, targets, None if negs is None else negs[batch["index"]]).sum())
            for k, counts in in_top.items():
                counts[batch["index"]] = history_in_top_k(scores, window, k).cpu()
            if bar is not None:
                bar.update(ids.shape[0])
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    metrics = compute_metrics(ranks, ks)
    for k, counts in in_top.items():
        metrics[f"Hist@{k}"] = float(counts.double().mean() / k)
    if stats is not None:
        stats["tied_targets"] = tied
    return (metrics, ranks) if return_ranks else metrics


def tied_targets(scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]`` bool: the target's score (``scores [B, V]``, ``targets [B]``) is finite and equal to another item's
    (with ``negatives [B, N]``: to one of its own negatives'), so that the pessimistic ties rank the target below
    them. One ``[B, V]`` comparison, the cost of a :func:`rank_of_target`."""
    if negatives is not None:
        scores = scores.gather(1, torch.cat([targets.long()[:, None], negatives.long()], 1).to(scores.device))
        targets = torch.zeros(len(targets), dtype=torch.long, device=scores.device)
    t = scores.gather(1, targets.long()[:, None].to(scores.device))                          # [B, 1]
    return torch.isfinite(t[:, 0]) & ((scores == t).sum(dim=1) > 1)


def popularity_scores(train: Sequence, n_items: int) -> torch.Tensor:
    """``[n_items]`` float64 scores of the most-popular baseline: how often each item occurs in the training
    sequences (``Split.train``: the interactions before every user's validation and test items), padding 0 at -inf."""
    scores = torch.from_numpy(item_counts(train, n_items).astype(np.float64))
    scores[0] = float("-inf")
    return scores


class TransitionCounts:
    """First-order item transitions of training sequences: how often item ``j`` directly followed item ``i``, kept
    sparse (CSR over ``i``: a catalogue of 10^5 items would not fit as a dense ``[V, V]`` table).

    Args:
        train: the training sequences (``Split.train``, internal indices).
        n_items: rows of the item table (padding 0 included).
    """

    def __init__(self, train: Sequence, n_items: int):
        self.n_items = int(n_items)
        seqs = [np.asarray(q, dtype=np.int64) for q in train]
        src = np.concatenate([q[:-1] for q in seqs] or [np.zeros(0, np.int64)])
        dst = np.concatenate([q[1:] for q in seqs] or [np.zeros(0, np.int64)])
        if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= self.n_items):
            raise ValueError(f"sequences hold item indices outside [0, {self.n_items - 1}]")
        pairs, counts = np.unique(src * self.n_items + dst, return_counts=True)    # sorted by (i, j)
        self.indptr = np.searchsorted(pairs // self.n_items, np.arange(self.n_items + 1))
        self.next_items, self.counts = pairs % self.n_items, counts.astype(np.float64)

    def rows(self, items: np.ndarray) -> torch.Tensor:
        """``[B, n_items]`` float64: row ``r`` counts how often each item followed ``items[r]``."""
        out = np.zeros((len(items), self.n_items))
        for r, i in enumerate(np.asarray(items, dtype=np.int64).tolist()):
            lo, hi = self.indptr[i], self.indptr[i + 1]
            out[r, self.next_items[lo:hi]] = self.counts[lo:hi]
        return torch.from_numpy(out)


def evaluate_popularity(train: Sequence, examples: EvalExamples, n_items: int, ks: Iterable[int] = (5, 10, 20),
                        exclude_history: bool = False, max_len: int | None = BASELINE_WINDOW, return_ranks: bool = False,
                        negatives: np.ndarray | None = None, any_ks: bool = False):
    """Full-ranking metrics of the most-popular baseline (RecBole's ``Pop``): every user gets the same ranking, by
    :func:`popularity_scores` of ``train``; with ``exclude_history`` the last ``max_len`` items of each history
    (``None``: all of them) are masked, as :func:`evaluate_model` masks a model's window (LRURec's protocol); ``negatives`` as for
    :func:`evaluate_model` (and ``any_ks``). Ties are pessimistic, as for the models. The floor a trained model must
    clear far: one that does not has learnt nothing about order."""
    return evaluate_baseline("pop", train, examples, n_items, ks, exclude_history, max_len, return_ranks, negatives,
                             any_ks=any_ks)


def evaluate_baseline(kind: str, train: Sequence, examples: EvalExamples, n_items: int,
                      ks: Iterable[int] = (5, 10, 20), exclude_history: bool = False, max_len: int | None = BASELINE_WINDOW,
                      return_ranks: bool = False, negatives: np.ndarray | None = None, any_ks: bool = False):
    """:func:`evaluate_popularity` for any of :data:`BASELINES`: ``"pop"``, or ``"markov"``, which ranks the items
    by how often they directly followed the history's last item in ``train`` (:class:`TransitionCounts`; ties, and
    items that never followed it, by training count) -- the order signal a sequential model must beat, where the
    most-popular ranking has none."""
    if kind not in BASELINES:
        raise ValueError(f"kind must be one of {', '.join(BASELINES)}, got {kind!r}")
    _check_examples(examples, n_items, False, "baseline", {"pop": "most-popular", "markov": "transitions"}[kind])
    negs = _check_negatives(negatives, examples, n_items)
    ks = [int(k) for k in ks] if any_ks else _check_ranked_cutoffs(ks, n_items, negs, "baseline")
    scores = popularity_scores(train, n_items)
    if kind == "markov":            # counts of the transitions first; the popularity (< 1 in total) breaks their ties
        transitions = TransitionCounts(train, n_items)
        scores = scores / (scores[1:].max() + 1) if n_items > 1 else scores
    ranks = torch.empty(len(examples), dtype=torch.long)
    for batch in eval_batches(examples, max_len, "right", 1024):
        s = scores.expand(batch["input_ids"].shape[0], -1)                    # [B, V]
        if kind == "markov":
            last = [examples.histories[i][-1] for i in range(*batch["index"].indices(len(examples)))]
            s = s + transitions.rows(np.asarray(last))
        if exclude_history:
            window = torch.where(batch["attention_mask"], batch["input_ids"], torch.zeros_like(batch["input_ids"]))
            s = s.scatter(1, window, float("-inf"))
        ranks[batch["index"]] = (rank_of_target(s, batch["targets"]) if negs is None
                                 else sampled_ranks(s, batch["targets"], negs[batch["index"]]))
    metrics = compute_metrics(ranks, ks)
    return (metrics, ranks) if return_ranks else metrics


def _check_ranked_cutoffs(ks: Iterable[int], n_items: int, negs: torch.Tensor | None, owner: str) -> list[int]:
    """``ks`` as ints, checked against the items each target is ranked among (:func:`zoo.metrics.check_cutoffs`):
    the ``owner``'s ``n_items - 1`` real items, or itself and its ``N`` sampled negatives (``negs [B, N]``)."""
    if negs is not None:
        return check_cutoffs(ks, negs.shape[1] + 1, f"sampled protocol (the target and {negs.shape[1]} negatives)")
    return check_cutoffs(ks, n_items - 1, owner)


def _check_negatives(negatives, examples: EvalExamples, n_items: int) -> torch.Tensor | None:
    """``negatives`` as a ``[len(examples), N]`` int64 tensor of item indices ``1 .. n_items - 1`` (None: full
    ranking); anything else is a ``ValueError`` naming the problem."""
    if negatives is None:
        return None
    negs = torch.as_tensor(np.asarray(negatives))
    if negs.dim() != 2 or negs.shape[0] != len(examples) or negs.shape[1] < 1 or negs.dtype != torch.int64:
        raise ValueError(f"negatives must be int64 [{len(examples)} examples, N >= 1], got {negs.dtype} "
                         f"{list(negs.shape)}")
    if int(negs.min()) < 1 or int(negs.max()) >= n_items:
        raise ValueError(f"negatives hold item indices outside 1..{n_items - 1}")
    return negs


def evaluate_onnx(path: str | os.PathLike, examples: EvalExamples, ks: Iterable[int] = (5, 10), batch_size: int = 256,
                  threads: int | None = None, progress: bool = True, return_ranks: bool = False,
                  providers: Sequence | None = None):
    """Full-ranking metrics of an exported graph (an ``export.onnx`` folder: ``model.onnx`` + ``state_spec.json``),
    run with ONNX Runtime, on ``examples`` (internal indices of the graph's ``item_vocab.json``).

    Each history is cut to the graph's ``max_seq_length`` window, as :func:`evaluate_model` does. Step graphs are
    primed with the window in one call (``T = window length``; rows are grouped by that length because a step graph
    takes no padding), window graphs get it padded on the model's side. A graph exported with ``--exclude-seen`` masks
    the window itself (the LRURec protocol); otherwise nothing is masked (the RecBole protocol).

    Ranks: with a ``scores`` output (``--scores``), full ranking with pessimistic ties as in :func:`evaluate_model`;
    otherwise from the in-graph top-K (:func:`zoo.metrics.rank_in_top_k`), so every cut-off must be ``<= K``: the
    target ranks after every slot of ``topk_scores`` tied with it (pessimistic, as :func:`evaluate_model`, not at its
    slot: ONNX Runtime's TopK orders exact ties by item index), and ``K + 1`` (a miss) when it is not there or its tie
    group reaches slot K (tied items may lie beyond the list). Either way a history item of an ``--exclude-seen``
    graph (scored ``SEEN_SCORE``) ranks last, as the ``-inf`` of :func:`evaluate_model`'s mask: never a hit.

    Scores that cannot be ranked are refused as :func:`evaluate_model` refuses them (:class:`ScoreOverflow` naming the
    users, at the first batch holding them): a NaN or ``+inf`` score, or a ``-inf`` one beyond the graph's own masks
    (the padding id 0 and its ``excluded_items``), in ``scores`` [B, n_items] when the graph has it; otherwise a
    non-finite ``topk_scores`` [B, K] (``K`` never exceeds the items left unmasked, and ONNX Runtime's TopK ranks NaN
    and ``+inf`` first, so a row with any NaN or ``+inf`` score shows one there).

    ``threads``: ONNX Runtime's intra-op threads; ``providers``: its execution providers (default the CPU one;
    :func:`onnx_providers` gives those of a ``--device``).

    Returns:
        the metrics dict of :func:`zoo.metrics.compute_metrics`, or ``(metrics, ranks)``.
    Raises:
        ValueError: a cut-off above K (top-K graphs) or the graph's ``n_items - 1`` items, target/history ids out of
            the graph's range, an empty history, a time-aware graph without timestamps; :class:`ScoreOverflow` (a
            ValueError) naming the users whose scores are NaN or infinite.
        DeviceUnavailableError: ``providers`` ask for CUDA and ONNX Runtime could not start it (no GPU visible).
    """
    import numpy as np

    from export.runtime import SEEN_SCORE, OnnxStepSession, OnnxWindowSession, _resolve, read_spec

    from .data.batching import pad_sequences

    kind = read_spec(_resolve(path)[1])["kind"]
    sess = (OnnxStepSession if kind == "step" else OnnxWindowSession)(path, threads=threads, providers=providers)
    asked = [p if isinstance(p, str) else p[0] for p in providers or ()]
    if "CUDAExecutionProvider" in asked and "CUDAExecutionProvider" not in sess.session.get_providers():
        raise DeviceUnavailableError("ONNX Runtime could not start its CUDAExecutionProvider here (no GPU visible, or "
                                     f"CUDA libraries missing); it runs on {', '.join(sess.session.get_providers())}")
    ks = check_cutoffs(ks, sess.n_items - 1, "graph")
    _check_examples(examples, sess.n_items, sess.uses_timestamps, "graph", f"the {kind} graph")
    if not sess.has_scores and max(ks) > sess.topk:
        raise ValueError(f"cut-off @{max(ks)} is above the graph's in-graph top-{sess.topk} (no 'scores' output): "
                         f"evaluate @K <= {sess.topk}, or export with --topk {max(ks)} or --scores")
    targets = np.asarray(examples.targets, dtype=np.int64)
    M = int(sess.spec["max_seq_length"])
    windows = [np.asarray(h[-M:], dtype=np.int64) for h in examples.histories]
    tss = ([np.asarray(t[-M:], dtype=np.float64) for t in examples.history_timestamps]
           if sess.uses_timestamps else None)
    for r, w in enumerate(windows):
        if len(w) == 0:
            raise ValueError(f"example {r} (user {examples.users[r]!r}) has an empty history")
    if kind == "step":                                  # equal-length groups, each in batches, longest first
        by_len: dict[int, list[int]] = {}
        for r, w in enumerate(windows):
            by_len.setdefault(len(w), []).append(r)
        chunks = [rows[s:s + batch_size] for n in sorted(by_len, reverse=True)
                  for rows in [by_len[n]] for s in range(0, len(rows), batch_size)]
    else:
        chunks = [list(range(s, min(len(windows), s + batch_size))) for s in range(0, len(windows), batch_size)]
    ranks = np.empty(len(windows), dtype=np.int64)
    excluded = sess.spec.get("excluded_items")
    # the columns at -inf on purpose in `scores`: the padding id 0 and the graph's --exclude-items (its constant mask)
    masked = np.array(sorted({0} | ({i for i in excluded if type(i) is int and 0 < i < sess.n_items}
                                    if isinstance(excluded, list) else set())), dtype=np.int64)
    precision = sess.spec.get("precision") or "fp32"
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(windows), desc=f"evaluate ONNX ({kind})", unit="user", leave=False, disable=None)
    try:
        for rows in chunks:
            if kind == "step":
                out = sess.prime(np.stack([windows[r] for r in rows]),
                                 np.stack([tss[r] for r in rows]) if tss is not None else None)
            else:
                side = sess.spec["padding_side"]
                ids, _ = pad_sequences([windows[r] for r in rows], side, M)
                ts = pad_sequences([tss[r] for r in rows], side, M, dtype=np.float64, fill=0.0)[0] if tss else None
                out = sess.run_window(ids, ts)
            t = targets[rows]
            if out.scores is not None:          # one pass over [B, n_items]: the masked columns' -inf is no overflow
                fin = np.isfinite(out.scores)
                fin[:, masked] |= out.scores[:, masked] == -np.inf
            else:
                fin = np.isfinite(out.topk_scores)
            bad = np.flatnonzero(~fin.all(axis=1))
            if len(bad):                        # NaN / +inf: ranked first; -inf: taken for a masked item
                raise overflow_error([examples.users[rows[b]] for b in bad.tolist()], precision)
            if out.scores is not None:          # history items (SEEN_SCORE) masked as evaluate_model masks them
                scores = torch.from_numpy(out.scores).float()
                ranks[rows] = rank_of_target(scores.masked_fill(scores <= SEEN_SCORE, float("-inf")),
                                             torch.from_numpy(t)).numpy()
            else:
                ranks[rows] = rank_in_top_k(out.topk_ids, out.topk_scores, t, masked_at=SEEN_SCORE).numpy()
            if bar is not None:
                bar.update(len(rows))
    finally:
        if bar is not None:
            bar.close()
    metrics = compute_metrics(torch.from_numpy(ranks), ks)
    return (metrics, torch.from_numpy(ranks)) if return_ranks else metrics


# --------------------------------------------------------------------------- CLI helpers
def align_with_model(ds: SequenceDataset, model, unknown: str = "error") -> tuple[SequenceDataset, str]:
    """Re-index ``ds`` with the model's ``item_vocab``; returns ``(dataset, note)``.

    Raises :class:`~zoo.vocab.UnknownItemError` counting the data items the model does not know (``unknown="drop"``
    removes their interactions instead, and the note says how many). A model without a vocabulary is assumed to use
    the data's own first-appearance indexing (checked against ``n_items``).
    """
    return align_with_vocab(ds, getattr(model, "item_vocab", None), int(model.config.n_items), "model", unknown)


def align_with_vocab(ds: SequenceDataset, vocab, n_items: int, owner: str = "model",
                     unknown: str = "error") -> tuple[SequenceDataset, str]:
    """:func:`align_with_model` for any ``owner`` of a vocabulary (a model, an exported graph's ``item_vocab.json``);
    ``vocab`` None: the data's first-appearance indexing, checked against ``n_items``. A note that starts with
    ``WARNING`` (dropped interactions, no vocabulary) is one the commands print to stderr."""
    if vocab is not None:
        out = ds.reencode(vocab, unknown=unknown)
        note = f"item ids mapped through the {owner}'s vocabulary ({len(vocab)} item{'s' * (len(vocab) != 1)})"
        dropped, emptied = ds.n_interactions - out.n_interactions, ds.n_users - out.n_users
        if dropped:
            note = (f"WARNING: {dropped} interaction{'s' * (dropped != 1)} with items the {owner} does not know "
                    f"dropped ({emptied} user{'s' * (emptied != 1)} left with none): not the full data's protocol; "
                    f"{note}")
        return out, note
    if ds.n_items + 1 > n_items:
        raise ValueError(f"the data has {ds.n_items} items but the {owner} (no item vocabulary) has only "
                         f"n_items={n_items} rows; cannot map item ids")
    return ds, (f"WARNING: the {owner} has no item vocabulary; using the data's first-appearance item indexing, "
                "which is only right if the model was trained on this file with the zoo loader")


def format_table(metrics: dict, ks: Sequence[int], names: Sequence[str] = ("HR", "NDCG", "MRR", "Hist"),
                 intervals: dict | None = None) -> str:
    """Metric rows x ``@K`` columns, 4 decimals; with ``intervals`` (``{"HR@10": (low, high)}``) each metric's row
    is followed by the half-width of its interval (``±``; the JSON keeps the exact, possibly asymmetric, bounds)."""
    head = "metric".ljust(8) + "".join(f"@{k}".rjust(10) for k in ks)
    rows = [head, "-" * len(head)]
    for m in names:
        if any(f"{m}@{k}" in metrics for k in ks):
            rows.append(m.ljust(8) + "".join(f"{metrics.get(f'{m}@{k}', float('nan')):10.4f}" for k in ks))
            if intervals and any(f"{m}@{k}" in intervals for k in ks):
                rows.append("  95% ±".ljust(8) + "".join(
                    (f"{(intervals[f'{m}@{k}'][1] - intervals[f'{m}@{k}'][0]) / 2:10.4f}"
                     if f"{m}@{k}" in intervals else " " * 10) for k in ks))
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog=command_prog("zoo.evaluate"),
                                description="Full-ranking leave-one-out evaluation of a zoo model.", epilog=EXIT_CODES)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model folder or Hub id (loaded with transformers.AutoModel)")
    src.add_argument("--onnx", help="an export.onnx folder (model.onnx + state_spec.json + item_vocab.json): evaluate "
                                    "the exported graph with ONNX Runtime")
    src.add_argument("--baseline", choices=list(BASELINES),
                     help="a reference without a model: pop, every user gets the items ranked by their count in the "
                          "training sequences (RecBole's Pop); markov, the items that most often directly followed "
                          "the user's last item in the training sequences (ties by count): the order signal a "
                          "sequential model must beat, where pop has none")
    add_hub_options(p)
    p.add_argument("--data", required=True, help="interaction file (.inter/.tsv/.csv/ratings.dat/.seq, optionally .gz)")
    p.add_argument("--split", choices=("test", "valid"), default="test",
                   help="the held-out items evaluated: test (each user's last item, or the test period's first with "
                        "--temporal-split; default) or valid (the one before it: the validation the run chose its "
                        "checkpoint on)")
    p.add_argument("--temporal-split", type=float, nargs=2, default=None, metavar=("TEST_SHARE", "VALID_SHARE"),
                   help="a global temporal split instead of leave-one-out: the last TEST_SHARE of all interactions "
                        "(by time) is the test period, the VALID_SHARE before it validation; each user's first item "
                        "of a period is the target, everything before the period the history (zoo.data."
                        "temporal_split); a model must have been trained on the same split (zoo.train "
                        "--temporal-split); default: leave-one-out")
    p.add_argument("--exclude-history", action="store_true",
                   help="LRURec protocol: mask the items of the input window before ranking")
    p.add_argument("--window", type=_window_arg, default=None, metavar="N|all",
                   help="history read per user: its last N items, or all of them (default: the model's "
                        "max_seq_length, the window it was trained and its card measured on). 'all' is what stepwise "
                        "serving reads when it folds in every event; only for models without a fixed window "
                        "(Mamba4Rec, LRURec, GRU4Rec, TiM4Rec-causal, SSD4Rec); with an exact recurrent step "
                        "(Mamba4Rec, LRURec, GRU4Rec, TiM4Rec-causal) a history longer than 65,536 items is fed "
                        "that many at a time through the step, so memory stays bounded (SSD4Rec reads it in one "
                        "forward). The protocol name says it (e.g. recbole-history-all). With --baseline: the window "
                        "--exclude-history masks")
    p.add_argument("--ks", type=positive_int, nargs="+", default=None,
                   help="cut-offs, at most the number of items (default 5 10 20, those a tiny model has items for; for "
                        "an --onnx graph without a scores output, those <= its top-K)")
    p.add_argument("--history-share", action="store_true",
                   help="also report Hist@K: the mean share of the top-K slots taken by items of the input window "
                        "(never the target on data without repeats, e.g. ML-1M; 0 with --exclude-history)")
    p.add_argument("--sampled", type=_sampled_arg, default=None, metavar="uniN|popN",
                   help="sampled metrics (RecBole's uni100/pop100; the SASRec and BERT4Rec papers): rank the target "
                        "among N negatives drawn per user, uniformly (uniN) or by training count (popN; RecBole "
                        "counts all three phases), never from "
                        "the user's history; the same draws for every model (--sample-seed). Not comparable with full "
                        "ranking: for papers that report them (default: full ranking)")
    p.add_argument("--sample-seed", type=nonnegative_int, default=0, help="seed of the --sampled negatives (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="users scored per forward pass (default 256); with --window all, batches of about as many "
                        "times max_seq_length history items")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads: torch's for --model and --baseline, ONNX Runtime's intra-op threads for --onnx "
                        "(default: the library's own, from OMP_NUM_THREADS or the cores)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help=f"write the results to this JSON file; {STDOUT_PATH}: on standard output (the table and other "
                        "lines then go to stderr)")
    p.add_argument("--by-length", type=positive_int, nargs="+", default=None, metavar="EDGE",
                   help="also the metrics of the users in each history-length bucket cut at these increasing edges, "
                        "e.g. --by-length 20 50 100 200 (1-20, 21-50, 51-100, 101-200, > 200 items)")
    p.add_argument("--by-popularity", type=nonnegative_int, nargs="+", default=None, metavar="EDGE",
                   help="also the metrics of the users whose target item has a training count in each bucket cut at "
                        "these increasing edges (counts in the leave-one-out training sequences), e.g. "
                        "--by-popularity 0 20 100 500 (0: items never trained on, 1-20, 21-100, 101-500, > 500)")
    p.add_argument("--intervals", action="store_true",
                   help="95%% percentile-bootstrap intervals over users of HR, NDCG and MRR at each cut-off "
                        "(10,000 resamples; Recall@K is HR@K, Hist@K gets none); the table prints each interval's "
                        "half-width (95%% ±), the --json output keeps the exact, possibly asymmetric, bounds "
                        "[low, high] under intervals_95")
    p.add_argument("--ranks-out", default=None, metavar="CSV",
                   help="also write each user's target and its rank (for paired comparisons: python -m zoo.compare; "
                        "a masked target -- --exclude-history, a repeat of the window -- ranks n_items + 1, one past "
                        f"every item); {STDOUT_PATH}: on standard output (the table then goes to stderr; not with --json "
                        f"{STDOUT_PATH})")
    p.add_argument("--max-users", type=positive_int, default=None,
                   help="evaluate only the first N users (quick check; default: all)")
    p.add_argument("--unknown-items", choices=("error", "drop"), default="error",
                   help="data items the model does not know: error (default), or drop their interactions (the "
                        "evaluation then covers only known items; the note and JSON say how many were dropped)")
    add_model_data_options(p, "splitting")
    add_columns_option(p)
    p.add_argument("--device", default=None,
                   help="where the evaluation runs: cpu, cuda or cuda:N. --model: torch's device (default: cuda when "
                        "available, else cpu); --onnx: ONNX Runtime's CPUExecutionProvider (the default) or its "
                        "CUDAExecutionProvider (onnxruntime-gpu); not with --baseline, which counts on the CPU")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: a bar on stderr while it is a terminal)")
    return p


def _window_arg(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or 'all', got {text!r}") from None


def _sampled_arg(text: str) -> tuple[str, int]:
    try:
        return parse_sampled(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> dict:
    """Entry point of ``python -m zoo.evaluate`` / ``zoo-evaluate``; returns the result dict (also printed). Options
    that conflict with each other, or that the model, graph or data cannot honour (:class:`UsageError`), are usage
    errors (exit 2); a model, graph or data that cannot be read exits 1, a GPU or package missing here 4."""
    p = build_parser()
    args = p.parse_args(argv)
    _check_options(p, args)
    try:
        return _evaluate(args)
    except UsageError as e:
        p.error(str(e))


def _check_options(p: argparse.ArgumentParser, args) -> None:
    """The usage errors the options show by themselves, before any file is read (``p.error`` naming the flags:
    conflicting options, outputs that cannot be written or would replace an input); ``--ks`` sorted, each once."""
    if args.sampled and (args.onnx or args.history_share):
        p.error("--sampled ranks the target among sampled negatives: for --model and --baseline, without "
                "--history-share (a full-ranking measure)" + ("; an --onnx graph's top-K ranks all items"
                                                               if args.onnx else ""))
    if not args.model and (args.revision is not None or args.subfolder):
        p.error(f"{'--revision' if args.revision is not None else '--subfolder'} says which checkpoint --model "
                f"names: not for {'--onnx' if args.onnx else '--baseline'}")
    try:                                        # an empty --revision, or one for a local folder
        args.hub = hub_options(args)
    except ValueError as e:
        p.error(str(e))
    if args.sample_seed and not args.sampled:
        p.error(f"--sample-seed {args.sample_seed} seeds the --sampled negatives; give --sampled uniN or popN")
    if args.ks is not None:
        args.ks = sorted(set(args.ks))          # "--ks 10 10" is one cut-off, reported once
    for flag, edges in (("--by-length", args.by_length), ("--by-popularity", args.by_popularity)):
        if edges and any(b <= a for a, b in zip(edges, edges[1:])):
            p.error(f"{flag}: the edges must increase, got {' '.join(map(str, edges))}")
    if args.window is not None and args.onnx:
        p.error(f"--window {args.window} is for --model and --baseline: an --onnx graph reads its export's window "
                "(max_seq_length in its state_spec.json)")
    if args.history_share and args.baseline:
        p.error("--history-share is for a --model evaluation")
    if args.history_share and args.onnx:
        p.error("--history-share is measured on a --model (PyTorch) evaluation; an exported graph's top-K does not "
                "say which of its items were in the window")
    if args.unknown_items != "error" and args.baseline:
        p.error(f"--unknown-items {args.unknown_items} is for a --model or --onnx evaluation: a --baseline ranks the "
                "data's own items, with no vocabulary to leave items out by")
    if args.device is not None and args.baseline:
        p.error(f"--device {args.device} is for --model and --onnx: a --baseline counts items on the CPU")
    if args.json == STDOUT_PATH and args.ranks_out == STDOUT_PATH:
        p.error(f"--json and --ranks-out are both {STDOUT_PATH} (standard output): give one of them a file")
    try:                                        # before any work: outputs that cannot be written, or replace --data
        check_outputs({flag: path for flag, path in (("--json", args.json), ("--ranks-out", args.ranks_out))
                       if path != STDOUT_PATH},
                      {"--data": args.data, **folder_inputs("--model", args.model),
                       **folder_inputs("--onnx", args.onnx)})
    except ValueError as e:
        p.error(str(e))


def onnx_providers(device: str | None) -> list:
    """ONNX Runtime's execution providers for ``--device`` of an ``--onnx`` evaluation: the CPU provider for
    ``None`` and ``cpu``; for ``cuda`` / ``cuda:N`` the CUDA provider (on GPU ``N``) ahead of the CPU one (which runs
    what CUDA does not). Raises :class:`~zoo.modeling_utils.DeviceUnavailableError` when this onnxruntime has no
    CUDA provider (the CPU package), ``ValueError`` for any other device."""
    import onnxruntime as ort

    if device is None:
        return ["CPUExecutionProvider"]
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r}: {e}") from None
    if dev.type == "cpu":
        return ["CPUExecutionProvider"]
    if dev.type != "cuda":
        raise ValueError(f"device {device!r}: an --onnx graph runs on cpu, cuda or cuda:N (ONNX Runtime's CPU or "
                         "CUDA provider)")
    have = ort.get_available_providers()
    if "CUDAExecutionProvider" not in have:
        raise DeviceUnavailableError(f"device {device!r}: this onnxruntime ({ort.__version__}) has no "
                                     f"CUDAExecutionProvider (it has {', '.join(have)}); install onnxruntime-gpu")
    return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]


def _evaluate(args) -> dict:
    """:func:`main` once its options are checked: the evaluation of ``--model``, ``--onnx`` or ``--baseline``."""
    device = cli_device(args.device) if args.model else None   # malformed: exit 2; a GPU missing here: exit 4
    if not args.onnx:
        apply_threads(args.threads)             # torch's; an --onnx graph gets them as ONNX Runtime's
    t0 = time.time()
    # --data read as the --model's run read its data (its log), else as zoo.train reads it by default
    from .hub import checkpoint_log
    from .pretrained import resolve_pretrained, weights_sha256

    hub = getattr(args, "hub", None) or {}      # --revision / --subfolder: which checkpoint --model names
    folder, unresolved = None, None
    try:                                        # once: a Hub id is not looked up (or downloaded) twice
        folder = resolve_pretrained(args.model, **hub) if args.model else None
    except (OSError, ValueError) as e:          # named by the model's load below
        unresolved = e
    run_log = checkpoint_log(folder) if folder is not None else None       # read once: data options and split
    options = model_data_options(folder, args.kcore, args.time_ties, log=run_log)
    args.kcore, args.time_ties = options["kcore"], options["time_ties"]
    if args.baseline:
        return _main_baseline(args, t0)
    if args.onnx:
        return _main_onnx(args, t0)
    from transformers import AutoModel            # the zoo's models are registered with it: zoo/__init__ ran first

    top = os.path.join(args.model, hub.get("subfolder") or "")
    no_config = os.path.isdir(top) and not os.path.isfile(os.path.join(top, "config.json"))
    try:
        if unresolved is not None:              # resolved above: its error, named as the load's
            raise unresolved
        path = folder
        if no_config:                   # zoo.recommend's one line (not transformers' "Unrecognized model")
            _check_model_type(path)
        sha = weights_sha256(path)      # before the load: the file the weights are read from (None: no such file)
        with json_depth_guard(lambda: os.path.join(path, "config.json")):   # transformers' reader on [[[...]]]
            model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --model {args.model}: {e}"
                         + ("; for an export.onnx folder use --onnx" if no_config else "")) from None
    check_run_split(run_log, args.model, args.temporal_split)
    _set_ks(args, int(model.config.n_items) - 1, "model")
    ds = _load_data(args)
    try:
        ds, note = align_with_model(ds, model, args.unknown_items)
        if model.uses_timestamps:
            ds.check_timestamps_for(type(model).__name__)
    except (KeyError, ValueError) as e:
        raise SystemExit(f"error: {error_text(e)}") from None
    examples, split = _examples(ds, args, note=note)
    negatives = _negatives(args, examples, split, int(model.config.n_items))
    try:
        check_window(model, args.window)
    except ValueError as e:
        raise UsageError(f"--window {args.window}: {e}") from None
    stats: dict = {}
    try:
        metrics, ranks = evaluate_model(model, examples, ks=args.ks, exclude_history=args.exclude_history,
                                        batch_size=args.batch_size, device=device, progress=not args.no_progress,
                                        history_share=args.history_share, return_ranks=True, negatives=negatives,
                                        max_len=args.window, stats=stats)
    except ScoreOverflow as e:                  # NaN / infinite scores: zoo.recommend's one line
        raise SystemExit(f"error: {e}") from None
    protocol = _protocol(args, ds, split, bool(args.exclude_history),
                         _ranking(args, "full (all items), padding masked")
                         + (("; history window masked" if args.window != "all" else "; whole history masked")
                            if args.exclude_history else ""),
                         max_seq_length=int(model.config.max_seq_length), unknown_items=args.unknown_items)
    result = {
        "metrics": metrics,
        "protocol": protocol,
        "data": _data_path(args),
        "dataset": ds.stats(),
        "model": args.model,
        **{k: v for k, v in hub.items() if v},      # --revision / --subfolder, when given
        **({"weights_sha256": sha} if sha else {}),  # the weights measured: a card's numbers tied to its weights
        "model_type": getattr(model.config, "model_type", None),
        # the precision measured (a 16-bit model is scored in float32, but its encoder runs in 16 bits), and the
        # targets tied with another item's score, which the pessimistic ties rank below them
        "dtype": dtype_name(model.dtype),
        "tied_targets": stats["tied_targets"],
        "n_users": len(examples),
        "n_items": int(model.config.n_items) - 1,
        "vocab": note,
        "seconds": round(time.time() - t0, 2),
    }
    print(f"{type(model).__name__} ({args.model}, {result['dtype']}) on {ds.name}: {args.split}, "
          f"{len(examples)} users, protocol {protocol['name']}{' (history excluded)' if args.exclude_history else ''}"
          + (f"; {stats['tied_targets']} target{'s' if stats['tied_targets'] != 1 else ''} tied with another "
             "item's score (ranked below it)" if stats["tied_targets"] else ""),
          file=text_stream(args.json, args.ranks_out))
    _print_load_note(ds, args)
    if note.startswith("WARNING"):
        print(note, file=sys.stderr)
    return _report(result, examples, ranks, ds.vocab, args, args.model, split.train)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: a model's dtype as the JSON results name it."""
    return str(dtype).replace("torch.", "")


def check_run_split(log: dict | None, model: str, temporal: Sequence[float] | None) -> None:
    """:class:`UsageError` when the checkpoint ``--model model`` was trained on another split than the one asked for
    (``temporal``: ``--temporal-split``'s shares, None for leave-one-out), as its run logged it (``log``: its
    ``train_log.json``, a soup's or a card's log, :func:`zoo.hub.checkpoint_log`; a log without a split, and no log,
    are leave-one-out): a leave-one-out run has trained on a temporal split's test period, a temporal run on some
    users' leave-one-out test items, and other shares move the test period into what it trained on."""
    split = (log or {}).get("split") or {}
    cuts = (split.get("cuts") or {}) if split.get("kind") == "temporal" else None
    trained = None if cuts is None else [cuts.get("test_share"), cuts.get("valid_share")]
    asked = None if not temporal else [float(x) for x in temporal]
    if trained == asked:
        return
    if trained is None:
        raise UsageError(f"--temporal-split: --model {model} was trained on leave-one-out (its run's log), whose "
                         "training sequences hold the test period of a temporal split; evaluate it without "
                         "--temporal-split, or train it with python -m zoo.train --temporal-split")
    ran = f"--temporal-split {trained[0]:g} {trained[1]:g}"
    if asked is None:
        raise UsageError(f"--model {model} was trained on a temporal split ({ran}, its run's log), not leave-one-out, "
                         f"whose test items it may have trained on: evaluate it with {ran}")
    raise UsageError(f"--temporal-split {asked[0]:g} {asked[1]:g}: --model {model} was trained on {ran} (its run's "
                     "log), so other shares test it on periods it trained on or validated with: evaluate it with "
                     f"{ran}")


def _main_baseline(args, t0: float) -> dict:
    """``--baseline pop|markov``: :func:`evaluate_baseline` on the data's own items (their first-appearance indexing),
    with the window of the zoo's default ``max_seq_length`` (:data:`BASELINE_WINDOW`) masked under
    ``--exclude-history``."""
    ds = _load_data(args)
    _set_ks(args, ds.n_items, "data")
    split = _split(ds, args)
    examples, _ = _examples(ds, args, split)
    negatives = _negatives(args, examples, split, ds.n_items + 1)
    window = BASELINE_WINDOW if args.window is None else None if args.window == "all" else args.window
    metrics, ranks = evaluate_baseline(args.baseline, split.train, examples, ds.n_items + 1, args.ks,
                                       args.exclude_history, window, return_ranks=True, negatives=negatives)
    protocol = _protocol(args, ds, split, bool(args.exclude_history),
                         _ranking(args, f"full (all items) {BASELINES[args.baseline]}, padding masked")
                         + ((f"; the last {window} history items masked" if window else "; the whole history masked")
                            if args.exclude_history else ""))
    result = {"metrics": metrics, "protocol": protocol, "data": _data_path(args),
              "dataset": ds.stats(), "baseline": args.baseline, "n_users": len(examples), "n_items": ds.n_items,
              "seconds": round(time.time() - t0, 2)}
    what = {"pop": "most-popular", "markov": "first-order transitions (markov)"}[args.baseline]
    print(f"{what} baseline on {ds.name}: {args.split}, {len(examples)} users, protocol {protocol['name']}"
          f"{' (history excluded)' if args.exclude_history else ''}", file=text_stream(args.json, args.ranks_out))
    _print_load_note(ds, args)
    return _report(result, examples, ranks, ds.vocab, args, f"baseline:{args.baseline}", split.train)


#: the suffix a non-default ``--window`` adds to a protocol's name
WINDOW_SUFFIX = re.compile(r"-(history-all|window\d+)$")


def protocol_without_window(name):
    """``"recbole-history-all"`` -> ``"recbole"``: the protocol of an evaluation whatever history window it read (the
    window is the input, like the model: ``zoo.compare`` pairs two windows of one model)."""
    return WINDOW_SUFFIX.sub("", name) if isinstance(name, str) else name


def _protocol(args, ds, split, excluded: bool, ranking: str, ties: str = "pessimistic",
              max_seq_length: int | None = None, unknown_items: str | None = None) -> dict:
    """An evaluation's ``protocol`` entry: its name (by whether the history was masked and by the ``split`` the
    examples came from: leave-one-out, or a temporal split and its cuts), split, ranking and ties, then
    the data options that gave its sequences (k-core as applied, order of ties, ``--columns``), the cut-offs, and, for
    a model or a graph, its window and how unknown items were treated."""
    sampled = getattr(args, "sampled", None)
    window = getattr(args, "window", None)
    name = ("lrurec" if excluded else "recbole") + protocol_suffix(split) + (
        f"-{sampled[0]}{sampled[1]}-seed{args.sample_seed}" if sampled else "") + (
        "" if window is None else "-history-all" if window == "all" else f"-window{window}")
    return {"name": name, "split": args.split,
            **({"sampled": {"sampler": sampled[0], "negatives": sampled[1], "seed": args.sample_seed,
                            "drawn": SAMPLERS[sampled[0]], "never": "the user's history items and the target"}}
               if sampled else {}),
            **split_protocol(split), "ranking": ranking,
            "exclude_history": excluded, "ties": ties,
            **({"max_seq_length": max_seq_length} if max_seq_length is not None else {}),
            **({"history_window": window} if window is not None else {}),
            "kcore": ds.kcore,  # effective (user_k, item_k), None when unfiltered
            "time_ties": ds.time_ties, "columns": args.columns, "ks": list(args.ks),
            **({"unknown_items": unknown_items} if unknown_items is not None else {})}


def _ranking(args, full: str) -> str:
    """The ``ranking`` text of the protocol: ``full``, or that of ``--sampled``."""
    if not args.sampled:
        return full
    how, n = args.sampled
    return (f"sampled: the target among {n} negatives drawn {SAMPLERS[how]} (never from the user's history), seed "
            f"{args.sample_seed}")


def _negatives(args, examples, split, n_items: int) -> np.ndarray | None:
    """``--sampled``: :func:`sample_negatives` of the examples (popularity from the split's training sequences); more
    negatives than a user has items left to draw is a :class:`UsageError`."""
    if not args.sampled:
        return None
    how, n = args.sampled
    counts = item_counts(split.train, n_items) if how == "pop" else None
    try:
        return sample_negatives(examples, n_items, n, how, args.sample_seed, counts)
    except ValueError as e:
        raise UsageError(f"--sampled {how}{n}: {e}") from None


def _data_path(args) -> str:
    """``--data`` as a result records it: absolute when it is a file here."""
    return os.path.abspath(args.data) if os.path.exists(args.data) else args.data


def _load_data(args):
    """``--data`` read and k-core filtered; a missing or malformed file is a one-line error naming it."""
    try:
        return load_dataset(args.data, kcore=args.kcore, time_ties=args.time_ties, columns=args.columns)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def _print_load_note(ds, args) -> None:
    """The text header's second line: what ``--data``'s load left out or kept that the counts do not show (the
    k-core filter's rows, users and items; rows that repeat an earlier (user, item, time) row), as
    :meth:`~zoo.data.SequenceDataset.load_note` says it; nothing when there is nothing to say. The JSON has the
    same counts in ``dataset`` (:meth:`~zoo.data.SequenceDataset.stats`)."""
    note = ds.load_note()
    if note:
        print(f"data {ds.name}: {note}", file=text_stream(args.json, args.ranks_out))


def _split(ds, args, note: str = ""):
    """``leave_one_out(ds)``, or with ``--temporal-split`` the temporal split at the cuts of those shares; data that
    leaves no user with an example (or has no timestamps for a temporal split) is a one-line error, which repeats
    a ``WARNING`` ``note`` of the vocabulary's (``--unknown-items drop`` may have emptied the users)."""
    try:
        return split_data(ds, getattr(args, "temporal_split", None))
    except ValueError as e:
        raise SystemExit(f"error: --data {args.data}: {e}" + (f" ({note})" if note.startswith("WARNING") else "")) \
            from None


def split_data(ds, temporal: Sequence[float] | None = None):
    """``leave_one_out(ds)``, or, given ``temporal = (test_share, valid_share)``, :func:`zoo.data.temporal_split` at
    the cut times of those shares (:func:`zoo.data.temporal_cuts`)."""
    if not temporal:
        return leave_one_out(ds)
    test_share, valid_share = (float(x) for x in temporal)
    valid_from, test_from = temporal_cuts(ds, test_share, valid_share)
    return temporal_split(ds, test_from, valid_from, {"test_share": test_share, "valid_share": valid_share})


def split_protocol(split=None) -> dict:
    """The split's entries of a protocol record: its description, and a temporal split's cuts (None: leave-one-out)."""
    if split is not None and split.kind == "temporal":
        return {"split_kind": "temporal", "cuts": dict(split.cuts),
                "temporal": "train: items before valid_from; valid: history before valid_from -> first item at or "
                            "after it (before test_from); test: history before test_from -> first item at or after it"}
    return {"leave_one_out": "valid: seq[:-2] -> seq[-2]; test: seq[:-1] -> seq[-1]"}


def protocol_suffix(split) -> str:
    """``""`` for leave-one-out; ``-temporal-t<test share>-v<valid share>`` for a temporal split (so that ranks of the
    two splits are never paired by ``zoo.compare``)."""
    if split.kind != "temporal":
        return ""
    return f"-temporal-t{split.cuts['test_share']:g}-v{split.cuts['valid_share']:g}"


def _examples(ds, args, split=None, note: str = ""):
    """``(examples, split)``: the ``--split`` examples of ``ds`` (``--max-users`` of them) and the leave-one-out split
    they come from (``split``: when the caller has it); data that leaves no user with an example is a one-line
    error (with the vocabulary's ``note`` when it is a warning: see :func:`_split`)."""
    split = split or _split(ds, args, note)
    examples = split.test if args.split == "test" else split.valid
    return (examples.head(args.max_users) if args.max_users else examples), split


def _set_ks(args, n_items: int, owner: str) -> None:
    """``args.ks`` (the default ones when not given) checked against the items each target is ranked among: the
    ``owner``'s ``n_items``, or itself and its ``--sampled`` negatives."""
    if args.sampled:
        n_items, owner = args.sampled[1] + 1, f"--sampled {args.sampled[0]}{args.sampled[1]} protocol"
    args.ks = args.ks or default_ks(n_items)
    _check_ks(args.ks, n_items, owner)


def _check_ks(ks, n_items: int, owner: str) -> None:
    """A cut-off above the number of items ranked would count every target a hit (HR@K = 1): a
    :class:`UsageError`."""
    if max(ks) > n_items:
        raise UsageError(f"--ks {max(ks)}: the {owner} ranks {n_items} items; use cut-offs <= {n_items}")


def _report(result: dict, examples, ranks, vocab, args, source: str, train, max_rank: int | None = None) -> dict:
    """What every evaluation (a model, a graph, a baseline) ends with: ``--intervals``, the table, ``--by-length``,
    ``--by-popularity`` (``train``: the split's training sequences, which give the targets' counts), ``--json`` and
    ``--ranks-out`` (``source``: what was evaluated, for the ranks file; ``max_rank``: K of a top-K-only graph).
    Returns ``result``."""
    _add_intervals(result, ranks, args)
    # the targets' training counts, for the by-popularity table and the ranks file's target_count column
    counts = item_counts(train, len(vocab) + 1) if args.by_popularity or args.ranks_out else None
    _add_by_length(result, examples, ranks, args)
    _add_by_popularity(result, examples, ranks, args, counts)
    # the files (or the one on stdout) first, then the tables: a reader that closes stdout early (`| head -1`) loses
    # no result
    wrote = [_write_json(result, args.json), _write_ranks(args.ranks_out, examples, ranks, vocab, {
        "model": source, "data": result["data"], "split": args.split, "protocol": result["protocol"]["name"],
        "max_rank": max_rank,
        # the items each target was ranked among: all of them, or itself and its --sampled negatives
        "n_items": result["n_items"] if not getattr(args, "sampled", None) else args.sampled[1] + 1}, counts)]
    out = text_stream(args.json, args.ranks_out)
    print(format_table(result["metrics"], args.ks, intervals=result.get("intervals_95")), file=out)
    if args.by_length:
        _print_buckets("history length", result["by_length"], "lengths", args.ks, out)
    if args.by_popularity:
        _print_buckets("target count", result["by_popularity"], "counts", args.ks, out)
    for path in wrote:
        if path:
            print(f"wrote {path}", file=out)
    return result


def _add_intervals(result: dict, ranks, args) -> None:
    """``--intervals``: ``result["intervals_95"] = {"HR@10": [low, high], ...}`` for HR, NDCG and MRR at the
    evaluated cut-offs (``Recall@K`` is ``HR@K``; ``Hist@K`` is not a function of the ranks: no interval)."""
    if args.intervals:
        from .metrics import bootstrap_interval

        result["intervals_95"] = {k: list(v) for k, v in bootstrap_interval(ranks, ks=args.ks).items()}


def length_buckets(lengths, edges: Sequence[int], start: int = 1,
                   what: str = "history-length") -> list[tuple[int, int | None, np.ndarray]]:
    """``(low, high or None, [U] bool)`` per bucket: ``edges`` ``e1 < e2 < ...`` cut ``lengths`` (each user's whole
    history, not a model's window; or, ``start=0``, counts such as a target's training count) into ``start..e1``,
    ``e1+1..e2``, ..., ``> e_last``."""
    edges = [int(e) for e in edges]
    if not edges or any(e < start for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"{what} edges must be increasing ints >= {start}, got {list(edges)}")
    lengths = np.asarray(lengths, dtype=np.int64)
    return [(low, high, (lengths >= low) & (lengths <= high if high is not None else True))
            for low, high in zip([start] + [e + 1 for e in edges], edges + [None])]


def bucket_label(low: int, high: int | None) -> str:
    """``"51-100"``, ``"0"`` for a bucket of one value, or ``"> 400"`` for the last, open bucket of
    :func:`length_buckets`."""
    return f"> {low - 1}" if high is None else str(low) if low == high else f"{low}-{high}"


def metrics_by_length(examples: EvalExamples, ranks, edges: Sequence[int], ks: Iterable[int]) -> list[dict]:
    """The metrics of the users in each history-length bucket (:func:`length_buckets`). Returns one
    ``{"lengths": [low, high or None], "users": n, "metrics": {...} or None}`` per bucket (``None``: no user)."""
    ranks = torch.as_tensor(ranks)
    out = []
    for low, high, inside in length_buckets([len(h) for h in examples.histories], edges):
        n = int(inside.sum())
        out.append({"lengths": [low, high], "users": n,
                    "metrics": compute_metrics(ranks[torch.from_numpy(inside)], ks) if n else None})
    return out


def metrics_by_popularity(examples: EvalExamples, ranks, counts, edges: Sequence[int],
                          ks: Iterable[int]) -> list[dict]:
    """The metrics of the users whose target's training count (``counts [n_items]``: :func:`~zoo.data.item_counts`
    of the split's training sequences, what the model learnt each item from) falls in each bucket (``edges`` as
    :func:`length_buckets` with ``start=0``: ``0..e1``, ...). One ``{"counts": [low, high or None], "users", "items",
    "metrics" or None}`` per bucket, ``items`` the distinct targets in it."""
    counts = np.asarray(counts)[np.asarray(examples.targets, dtype=np.int64)]
    targets = np.asarray(examples.targets)
    ranks = torch.as_tensor(ranks)
    out = []
    for low, high, inside in length_buckets(counts, edges, start=0, what="--by-popularity"):
        n = int(inside.sum())
        out.append({"counts": [low, high], "users": n, "items": int(len(np.unique(targets[inside]))),
                    "metrics": compute_metrics(ranks[torch.from_numpy(inside)], ks) if n else None})
    return out


def _print_buckets(title: str, rows: list[dict], key: str, ks, out=None) -> None:
    """The table of ``--by-length`` / ``--by-popularity`` on ``out`` (default stdout)."""
    names = [f"{m}@{k}" for m in ("HR", "NDCG") for k in ks]
    print(f"{title:<16}{'users':>7}" + "".join(f"{n:>10}" for n in names), file=out)
    for row in rows:
        cells = "".join(f"{row['metrics'][n]:>10.4f}" if row["metrics"] else f"{'–':>10}" for n in names)
        print(f"{bucket_label(*row[key]):<16}{row['users']:>7}{cells}", file=out)


def _add_by_length(result: dict, examples, ranks, args) -> None:
    """``--by-length E1 E2 ...``: ``result["by_length"]`` (:func:`metrics_by_length`; :func:`_report` prints it)."""
    if not args.by_length:
        return
    result["by_length"] = metrics_by_length(examples, ranks, args.by_length, args.ks)


def _add_by_popularity(result: dict, examples, ranks, args, counts) -> None:
    """``--by-popularity E1 E2 ...``: ``result["by_popularity"]`` (:func:`metrics_by_popularity`; printed by
    :func:`_report`)."""
    if not args.by_popularity:
        return
    result["by_popularity"] = metrics_by_popularity(examples, ranks, counts, args.by_popularity, args.ks)


RANKS_HEADER = "# zoo.evaluate ranks "
#: the columns of a ranks file (earlier files lack ``target_count``, those written before 2026-12-05 ``history`` too)
RANKS_COLUMNS = ["user", "target", "rank", "history", "target_count"]


def _write_ranks(path: str | None, examples, ranks, vocab, meta: dict, counts) -> str | None:
    """``--ranks-out``: a ``# zoo.evaluate ranks {json}`` line (what was evaluated; ``max_rank`` K when ranks above
    K are censored, i.e. a top-K-only graph's misses written as K + 1), then ``user,target,rank,history,target_count``
    per example, target in the data's own item ids, ``history`` the length of the user's whole history (``zoo.compare
    --by-length``), ``target_count`` the target's count in the training sequences (``counts``, by internal index;
    ``zoo.compare --by-popularity``). Every line ends in ``\\n`` (a reader skips the first line, e.g.
    ``pandas.read_csv(path, skiprows=1)``: ``comment="#"`` would cut a row at an id holding ``#``). Written beside
    ``path`` and moved there once complete; returns its absolute path (``None`` without ``path``, and for ``-``:
    the file is written on stdout, :data:`zoo.cli.STDOUT_PATH`)."""
    if not path:
        return None
    import csv

    def write(f):
        f.write(RANKS_HEADER + strict_json(meta) + "\n")
        w = csv.writer(f, lineterminator="\n")                 # one line ending, the header line's
        w.writerow(RANKS_COLUMNS)
        w.writerows(zip(examples.users, vocab.decode(examples.targets.tolist()), np.asarray(ranks).tolist(),
                        [len(h) for h in examples.histories],
                        counts[np.asarray(examples.targets, dtype=np.int64)].tolist(), strict=True))

    if path == STDOUT_PATH:
        write(sys.stdout)
        sys.stdout.flush()
        return None
    try:
        with written_whole(path, newline="") as f:
            write(f)
    except OSError as e:
        raise SystemExit(f"error: {cannot('--ranks-out', path, e)}") from None
    return os.path.abspath(path)


def _write_json(result: dict, path: str | None) -> str | None:
    """``--json``: ``result`` written whole to ``path``, or on stdout for ``-`` (:data:`zoo.cli.STDOUT_PATH`);
    returns the file's absolute path, as :func:`_write_ranks` does (``None`` without one, and for stdout)."""
    if path == STDOUT_PATH:
        sys.stdout.write(strict_json(result, indent=2))       # strict JSON (jq / JSON.parse), written whole
        print(flush=True)
        return None
    if path:
        try:
            with written_whole(path) as f:
                f.write(strict_json(result, indent=2))
        except OSError as e:
            raise SystemExit(f"error: {cannot('--json', path, e)}") from None
    return os.path.abspath(path) if path else None


#: the subfolders of a card folder that hold its exported graphs (export.onnx --card-dir: step, window)
ONNX_CARD_FOLDERS = ("onnx", "onnx-window")


def _main_onnx(args, t0: float) -> dict:
    """``--onnx DIR``: the exported graph on the same examples (:func:`evaluate_onnx`)."""
    from export.deps import require

    require("onnxruntime", "zoo.evaluate --onnx", cli=True)
    from export.runtime import _resolve, read_spec

    from .vocab import ItemVocab

    try:
        providers = onnx_providers(args.device)
    except DeviceUnavailableError as e:
        exit_with(EXIT_MISSING, f"error: --device: {e}")
    except ValueError as e:
        raise UsageError(f"--device: {e}") from None

    graph, spec_path = _resolve(args.onnx)
    if not os.path.exists(spec_path):
        # a card folder holds its graphs in subfolders: name them
        inside = [os.path.join(args.onnx, sub) for sub in ONNX_CARD_FOLDERS
                  if os.path.isfile(os.path.join(args.onnx, sub, "state_spec.json"))]
        raise SystemExit(f"error: --onnx {args.onnx}: no state_spec.json there (a folder written by python -m "
                         "export.onnx)" + (f"; it holds exported graphs in {' and '.join(inside)}: did you mean "
                                           f"--onnx {inside[0]}?" if inside else ""))
    try:
        spec = read_spec(spec_path)                 # every field read below, or ValueError naming the file
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --onnx {args.onnx}: unreadable {spec_path} ({e})") from None
    excluded = bool(spec.get("exclude_seen"))
    if args.exclude_history and not excluded:
        raise UsageError(f"--exclude-history: the graph in {args.onnx} was exported without --exclude-seen, so it "
                         "cannot mask the history; re-export it with `python -m export.onnx --exclude-seen`")
    has_scores = any(o["name"] == "scores" for o in spec["outputs"])
    if args.ks is None:                     # without a scores output the graph answers only its top-K
        args.ks = default_ks(min(int(spec["n_items"]) - 1, 10**9 if has_scores else int(spec["topk"])))
    _check_ks(args.ks, int(spec["n_items"]) - 1, "graph")
    if not has_scores and max(args.ks) > int(spec["topk"]):
        raise UsageError(f"--ks {max(args.ks)}: cut-off @{max(args.ks)} is above the graph's in-graph "
                         f"top-{spec['topk']} (no 'scores' output): use cut-offs <= {spec['topk']}, or export with "
                         f"--topk {max(args.ks)} or --scores")
    # a plain file name beside the graph (read_spec refuses a path), null or absent: item_vocab.json
    vocab_path = os.path.join(os.path.dirname(graph), spec.get("item_vocab") or "item_vocab.json")
    try:
        vocab = ItemVocab.load(vocab_path) if os.path.exists(vocab_path) else None
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --onnx {args.onnx}: {e}") from None
    ds = _load_data(args)
    try:
        ds, note = align_with_vocab(ds, vocab, int(spec["n_items"]), "graph", args.unknown_items)
        if spec.get("uses_timestamps"):                # the graph itself does not check them
            ds.check_timestamps_for(f"the {spec.get('model_type')} graph")
    except (KeyError, ValueError) as e:
        raise SystemExit(f"error: {error_text(e)}") from None
    examples, split = _examples(ds, args, note=note)
    try:
        metrics, ranks = evaluate_onnx(args.onnx, examples, ks=args.ks, batch_size=args.batch_size,
                                       threads=args.threads, progress=not args.no_progress, return_ranks=True,
                                       providers=providers)
    except DeviceUnavailableError as e:
        exit_with(EXIT_MISSING, f"error: --device {args.device}: {e}")
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    except Exception as e:                  # ONNX Runtime's own errors (a truncated or foreign model.onnx)
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        raise SystemExit(f"error: --onnx {args.onnx}: ONNX Runtime cannot load or run {graph} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    protocol = _protocol(args, ds, split, excluded,
                         ("full (all items, the graph's scores output)" if has_scores else
                          f"the graph's in-graph top-{spec['topk']} (a target outside it counts as a miss)")
                         + ", padding masked" + ("; history window masked by the graph (--exclude-seen)" if excluded
                                                 else ""),
                         ties="pessimistic" if has_scores else
                         "pessimistic within the graph's top-K (a tie group reaching slot K counts as a miss)",
                         max_seq_length=int(spec["max_seq_length"]), unknown_items=args.unknown_items)
    result = {"metrics": metrics, "protocol": protocol, "data": _data_path(args),
              "dataset": ds.stats(), "onnx": os.path.abspath(args.onnx),
              "graph": {k: spec.get(k) for k in ("kind", "model_type", "topk", "precision", "time_input",
                                                  "exclude_seen")},
              "model_type": spec.get("model_type"), "n_users": len(examples), "n_items": int(spec["n_items"]) - 1,
              "vocab": note, "seconds": round(time.time() - t0, 2)}
    print(f"ONNX {spec['kind']} graph of {spec.get('model_type')} ({args.onnx}, {spec.get('precision', 'fp32')}) on "
          f"{ds.name}: {args.split}, {len(examples)} users, protocol {protocol['name']}"
          + (" (history excluded by the graph)" if excluded else ""), file=text_stream(args.json, args.ranks_out))
    _print_load_note(ds, args)
    if note.startswith("WARNING"):
        print(note, file=sys.stderr)
    return _report(result, examples, ranks, ds.vocab, args, os.path.abspath(args.onnx), split.train,
                   max_rank=None if has_scores else int(spec["topk"]))


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
