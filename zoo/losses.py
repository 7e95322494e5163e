"""Training losses over the item catalogue: full softmax cross-entropy, and sampled softmax for large catalogues.

Full cross-entropy scores every target against all ``V`` items: ``O(V·D)`` time and a ``[targets, V]`` logit matrix
(and its gradient) per batch. That is nothing for ML-1M (3,417 rows) and the bulk of a step, or more memory than
the machine has, for a shop's catalogue of a million items (``bench/bench_sampled_softmax.py``).

Sampled softmax (Bengio & Senécal, 2008; Jean et al., 2015, *On Using Very Large Target Vocabulary*) scores each
target against ``K`` negatives shared by the whole batch, drawn with replacement from a proposal ``Q`` over the real
items (:class:`NegativeSampler`)::

    loss(t) = -o_t + log( exp(o_t) + sum_k exp(o_{s_k} - log(K Q(s_k))) )      o = hidden @ weight^T + bias

* **logQ correction** (``- log(K Q(s))``, the log of each draw's expected count): ``sum_k exp(o_{s_k}) / (K Q(s_k))``
  is an unbiased importance-sampling estimate of ``sum_j exp(o_j)``, so the loss tends to the full cross-entropy as
  ``K`` grows, whatever ``Q`` is (tested: ``tests/test_losses.py``). The positive logit is not corrected. Under the
  uniform proposal the correction is one constant for every negative; under the popularity proposal (``Q`` follows
  the training counts, as the in-batch negatives of two-tower retrieval do) it stops popular items from being pushed
  down more than their share (Yi et al., 2019, *Sampling-Bias-Corrected Neural Modeling*).
* **Accidental hits**: a draw equal to the row's own target is removed from that row's denominator (TensorFlow's
  ``remove_accidental_hits``); otherwise the target would be its own negative.
* Padding index 0 is never drawn.

Drawing every item once with ``log_count = 0`` (:meth:`NegativeSample.every_item`) gives exactly the full
cross-entropy: the check that ties the two losses together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: ``zoo.train --loss`` choices
LOSSES = ("ce", "sampled-softmax")
#: ``zoo.train --negative-sampler`` choices
SAMPLERS = ("uniform", "popularity")


@dataclass(frozen=True)
class NegativeSample:
    """Negatives shared by a batch.

    Args:
        items: ``[K]`` int64 internal item indices (with repeats when drawn with replacement).
        log_count: ``[K]`` float32 ``log(K Q(item))``, the log of each draw's expected count under the proposal ``Q``,
            subtracted from its logit (the logQ correction).
    """

    items: torch.Tensor
    log_count: torch.Tensor

    @classmethod
    def every_item(cls, n_items: int, device: torch.device | str | None = None) -> "NegativeSample":
        """Every index ``0 .. n_items - 1`` once, uncorrected: the sampled loss is then the full cross-entropy."""
        return cls(torch.arange(n_items, device=device), torch.zeros(n_items, device=device))


class NegativeSampler:
    """Draws :class:`NegativeSample` s of ``num`` items with replacement from a proposal over items ``1 .. V - 1``.

    Args:
        n_items: rows of the model's item table ``V`` (padding row 0 included; it is never drawn).
        num: negatives per batch ``K``.
        kind: ``uniform`` (every real item alike) or ``popularity`` (``Q(i)`` proportional to ``counts[i] + 1``: the
            training counts, add-one smoothed so that an item never seen in training can still be drawn).
        counts: ``[V]`` training interaction counts per item index (``popularity`` only).
        device: where the draws are made (the torch generator of that device is used, so that ``zoo.train``'s
            resume state, which keeps the torch generators, replays them exactly).
    """

    def __init__(self, n_items: int, num: int, kind: str = "uniform", counts=None,
                 device: torch.device | str | None = None):
        if kind not in SAMPLERS:
            raise ValueError(f"negative sampler must be one of {SAMPLERS}, got {kind!r}")
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"the number of negatives must be an int >= 1, got {num!r}")
        if n_items < 2:
            raise ValueError(f"n_items must be >= 2 (padding + one item), got {n_items}")
        weights = np.ones(n_items, dtype=np.float64)
        if kind == "popularity":
            if counts is None:
                raise ValueError("the popularity sampler needs the items' training counts")
            counts = np.asarray(counts, dtype=np.float64)
            if counts.shape != (n_items,):
                raise ValueError(f"counts must have one entry per item index ({n_items}), got shape {counts.shape}")
            if not np.isfinite(counts).all() or (counts < 0).any():
                raise ValueError("counts must be finite and >= 0")
            weights = counts + 1.0
        weights[0] = 0.0                                       # padding is never a negative
        q = weights / weights.sum()
        self.n_items, self.num, self.kind = n_items, num, kind
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.probs = torch.tensor(q, dtype=torch.float32, device=self.device)                  # [V]
        with np.errstate(divide="ignore"):
            log_count = np.log(num * q)                                  # -inf at padding, never read
        self.log_count = torch.tensor(log_count, dtype=torch.float32, device=self.device)      # [V]

    def sample(self) -> NegativeSample:
        """``K`` items drawn with replacement from the proposal, with their ``log(K Q)``."""
        items = torch.multinomial(self.probs, self.num, replacement=True)                     # [K]
        return NegativeSample(items, self.log_count[items])

    @property
    def spec(self) -> dict:
        """The loss as a training log keeps it (``"loss"``): ``{"type": "sampled-softmax", "negatives", "sampler"}``."""
        return {"type": "sampled-softmax", "negatives": self.num, "sampler": self.kind}

    def describe(self) -> str:
        """One phrase for the training log and the model card (:func:`describe_loss`)."""
        return describe_loss(self.spec)


def sampled_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None, negatives: NegativeSample,
                         sparse_grad: bool = False) -> torch.Tensor:
    """Mean sampled-softmax loss of ``hidden [M, D]`` for ``targets [M]`` (see the module docstring).

    Args:
        hidden: ``[M, D]`` hidden states read at the supervised positions.
        targets: ``[M]`` int64 target item indices (``1 .. V - 1``).
        weight, bias: the model's output layer (:meth:`~zoo.modeling_utils.SeqRecPreTrainedModel.item_output`),
            ``[V, D]`` and ``[V]`` or None.
        negatives: the batch's shared negatives.
        sparse_grad: gather the rows with ``F.embedding(..., sparse=True)``, so that ``weight`` (then a leaf: the
            item table, :func:`sparse_output_table`) gets a sparse gradient holding only the rows read.
    Returns:
        scalar mean over the ``M`` targets.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [M, D] and targets [M], got {list(hidden.shape)} and {list(targets.shape)}")
    items = negatives.items.to(hidden.device)
    pos = (hidden * F.embedding(targets, weight, sparse=sparse_grad)).sum(-1)                # [M]
    neg = hidden @ F.embedding(items, weight, sparse=sparse_grad).t()                        # [M, K]
    if bias is not None:
        pos = pos + bias[targets]
        neg = neg + bias[items]
    neg = neg - negatives.log_count.to(neg)
    neg = neg.masked_fill(items[None, :] == targets[:, None], -math.inf)                     # accidental hits
    logits = torch.cat([pos[:, None], neg], dim=1)                                           # [M, 1 + K]
    return F.cross_entropy(logits, torch.zeros_like(targets))


def sparse_output_table(model_name: str, table: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The item table ``table [R, D]`` (``R >= V``), checked to hold the output weight ``weight [V, D]`` as its first
    ``V`` rows, so that sampled softmax can gather output rows from the table itself with a sparse gradient. A model
    whose output layer is not its (tied) item table cannot train with sparse item gradients: ``ValueError``."""
    tied = (weight.data_ptr() == table.data_ptr() and weight.stride() == table.stride()
            and weight.shape[1:] == table.shape[1:] and weight.shape[0] <= table.shape[0])
    if not tied:
        raise ValueError(f"{model_name}: its output weight is not the leading rows of its item table, so the table's "
                         "gradient cannot be made sparse (sparse_item_grad needs tied item embeddings)")
    return table


def describe_loss(loss: dict | None) -> str | None:
    """The phrase that replaces "cross-entropy over all items" in a run's objective, from the training log's
    ``loss`` entry (``{"type": "sampled-softmax", "negatives": K, "sampler": kind}``); None for the full
    cross-entropy (also for logs written before the entry existed)."""
    if not loss or loss.get("type", "ce") == "ce":
        return None
    if loss["type"] != "sampled-softmax":
        raise ValueError(f"unknown loss {loss['type']!r} (known: {LOSSES})")
    q = "uniformly over the items" if loss["sampler"] == "uniform" else "in proportion to the items' training counts + 1"
    return (f"sampled softmax (each target against {loss['negatives']} negatives shared by the batch, drawn with "
            f"replacement {q}; logQ-corrected; accidental hits removed)")
