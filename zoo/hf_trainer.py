"""Train and evaluate zoo models with 🤗 transformers' ``Trainer`` (``TrainingArguments``, callbacks, logging
integrations, checkpoints, ``load_best_model_at_end``) instead of ``python -m zoo.train``.

Every zoo model's ``forward(input_ids, attention_mask, labels, timestamps)`` already returns the training loss: with
``labels [B, L]`` the all-position cross-entropy (BERT4Rec: its masked-item Cloze objective), with ``labels [B]`` the
cross-entropy of the next item at each row's last position. This module gives the ``Trainer`` what it needs around
that::

    from transformers import Trainer, TrainingArguments
    from zoo.data import leave_one_out, load_dataset
    from zoo.hf_trainer import trainer_kwargs
    from zoo.models.sasrec import SASRecConfig, SASRecModel

    ds = load_dataset("ml-100k.inter.gz")                     # any file zoo.data reads
    split = leave_one_out(ds)
    model = SASRecModel(SASRecConfig(n_items=ds.vocab.n_items, max_seq_length=50))
    model.set_item_vocab(ds.vocab)                            # checkpoints then map the caller's own item ids
    args = TrainingArguments("runs/sasrec", num_train_epochs=20, per_device_train_batch_size=64, learning_rate=1e-3,
                             eval_strategy="epoch", save_strategy="epoch", metric_for_best_model="NDCG@10",
                             load_best_model_at_end=True, use_cpu=True)
    trainer = Trainer(model=model, args=args, **trainer_kwargs(model, split))
    trainer.train()
    trainer.evaluate(trainer_kwargs(model, split, eval_on="test")["eval_dataset"], metric_key_prefix="test")

- **Training data**: :class:`WindowDataset`, the same all-position windows as ``zoo.train``
  (:func:`zoo.data.training_windows`, ``stride`` as ``--window-stride``); the loss of a batch is its mean over its
  targets (``zoo.train``'s default ``--loss-weighting window``): the full cross-entropy, or with
  ``trainer_kwargs(..., negatives=N)`` sampled softmax against N negatives a batch (``--loss sampled-softmax``).
- **Evaluation**: :class:`HistoryDataset` (each user's history, cut to the model's window, and its held-out next item),
  :func:`logits_to_ranks` as ``preprocess_logits_for_metrics`` (the ``Trainer`` then keeps one rank per user, never
  ``[users, n_items]`` logits) and :func:`ranking_metrics` as ``compute_metrics``: full-ranking HR/NDCG/MRR@K under
  RecBole's protocol, the numbers ``zoo.evaluate`` gives for the same weights (``eval_loss`` is the next-item
  cross-entropy). LRURec's protocol (``zoo.evaluate --exclude-history``: the window's items never ranked) with
  ``trainer_kwargs(..., exclude_history=True)`` and ``TrainingArguments(..., label_names=HISTORY_LABELS)``: the
  window then reaches ``preprocess_logits_for_metrics`` as a second label, ``history``, which the models ignore.
- **Batches**: :class:`SeqRecCollator` pads on the model's side (``model.padding_side``) with 0 = no item / no target.

The ``Trainer`` saves checkpoints with ``save_pretrained`` (``config.json``, ``model.safetensors``,
``item_vocab.json``), so ``AutoModel.from_pretrained(checkpoint)`` loads one with its vocabulary, as a ``zoo.train``
folder; the ``Trainer``'s own files beside them (``training_args.bin``, a pickle the zoo never reads, optimizer
states) are its own. :func:`save_run` turns a finished run into a ``zoo.train`` run folder (model + ``train_log.json``)
that ``python -m zoo.hub card`` cards.
"""

from __future__ import annotations

import math
import os
from functools import partial
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .data.batching import TrainingWindows, pad_sequences, training_windows
from .data.split import EvalExamples, Split
from .metrics import compute_metrics, rank_of_target


class WindowDataset(torch.utils.data.Dataset):
    """The training windows of :func:`zoo.data.training_windows` as a map-style dataset, one window an example::

        {"input_ids": int64 [l], "labels": int64 [l] (0: no target), "timestamps": float64 [l] (time-aware data)}

    A window's leading context positions of overlapping windows (``stride < max_len``) get label 0, as in
    :func:`zoo.data.iterate_batches`, so every training target is supervised once an epoch.
    """

    def __init__(self, windows: TrainingWindows):
        if not isinstance(windows, TrainingWindows):
            raise TypeError(f"windows must be zoo.data.TrainingWindows, got {type(windows).__name__}")
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        w = self.windows
        s, n, skip = int(w.starts[i]), int(w.lengths[i]), int(w.skip[i])
        labels = w.labels[s:s + n].copy()
        labels[:skip] = 0                                       # overlap context: no target
        item = {"input_ids": w.inputs[s:s + n], "labels": labels}
        if w.timestamps is not None:
            item["timestamps"] = w.timestamps[s:s + n]
        return item


class HistoryDataset(torch.utils.data.Dataset):
    """Evaluation examples (:class:`zoo.data.EvalExamples`: ``split.valid`` / ``split.test``) as a map-style dataset::

        {"input_ids": int64 [<= max_len] (the last max_len items of the history), "labels": int (the next item),
         "timestamps": float64 [<= max_len] (when the examples have them),
         "history": int64 [<= max_len] (with with_history: the window again, the items LRURec's protocol never ranks)}
    """

    def __init__(self, examples: EvalExamples, max_len: int, with_history: bool = False):
        if not isinstance(examples, EvalExamples):
            raise TypeError(f"examples must be zoo.data.EvalExamples (split.valid / split.test), got "
                            f"{type(examples).__name__}")
        if int(max_len) < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        empty = [r for r, h in enumerate(examples.histories) if len(h) == 0]
        if empty:
            raise ValueError(f"example {empty[0]} (user {examples.users[empty[0]]!r}) has an empty history: nothing to "
                             "predict from")
        self.examples, self.max_len, self.with_history = examples, int(max_len), bool(with_history)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex, L = self.examples, self.max_len
        item = {"input_ids": np.asarray(ex.histories[i], dtype=np.int64)[-L:], "labels": int(ex.targets[i])}
        if ex.history_timestamps is not None:
            item["timestamps"] = np.asarray(ex.history_timestamps[i], dtype=np.float64)[-L:]
        if self.with_history:
            item["history"] = item["input_ids"]
        return item


class SeqRecCollator:
    """Pads a list of :class:`WindowDataset` / :class:`HistoryDataset` examples into a batch for a model::

        input_ids      [B, Lb] int64   (0 at padding; Lb = the longest example)
        attention_mask [B, Lb] bool
        labels         [B, Lb] int64   (0 at padding: no target) for windows, [B] int64 for histories
        timestamps     [B, Lb] float64 (0 at padding; when the examples have them)
        history        [B, Lb] int64   (0 at padding; from HistoryDataset(..., with_history=True))
        negatives      NegativeSample  (with a sampler, training windows only: their sampled-softmax negatives)

    Args:
        padding_side: the model's ``padding_side`` (``"right"``; ``"left"`` for LRURec); :meth:`for_model` reads it.
        sampler: a :class:`zoo.losses.NegativeSampler` (anything with ``sample() -> NegativeSample``): every batch of
            training windows then carries one draw of negatives, and the model's forward trains it with sampled
            softmax against them (``zoo.train --loss sampled-softmax``) instead of the full cross-entropy. Batches
            of histories (evaluation) never get negatives: they are ranked against every item.
    """

    def __init__(self, padding_side: str, sampler=None):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if sampler is not None and not callable(getattr(sampler, "sample", None)):
            raise TypeError(f"sampler must have a sample() method (zoo.losses.NegativeSampler), got "
                            f"{type(sampler).__name__}")
        self.padding_side, self.sampler = padding_side, sampler

    @classmethod
    def for_model(cls, model, sampler=None) -> "SeqRecCollator":
        return cls(model.padding_side, sampler)

    def __call__(self, features: Sequence[dict]) -> dict[str, Any]:
        if len(features) == 0:
            raise ValueError("no examples to collate")
        keys = set(features[0])
        for r, f in enumerate(features):
            if set(f) != keys:
                raise ValueError(f"example {r} has the fields {sorted(f)}, example 0 {sorted(keys)}: one batch mixes "
                                 "kinds of examples")
        if "input_ids" not in keys or "labels" not in keys or not keys <= {"input_ids", "labels", "timestamps",
                                                                            "history"}:
            raise ValueError(f"examples must have input_ids, labels and optionally timestamps and history; got "
                             f"{sorted(keys)}")
        ids = [np.asarray(f["input_ids"]) for f in features]
        for r, a in enumerate(ids):
            if a.ndim != 1 or len(a) == 0 or not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"example {r}: input_ids must be a non-empty 1-D sequence of ints, got shape "
                                 f"{list(a.shape)} of {a.dtype}")
        values, mask = pad_sequences(ids, self.padding_side)
        batch = {"input_ids": torch.from_numpy(values), "attention_mask": torch.from_numpy(mask)}
        labels = [np.asarray(f["labels"]) for f in features]
        if all(a.ndim == 0 for a in labels):                   # one next item per history
            batch["labels"] = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        elif all(a.ndim == 1 for a in labels):                 # a target per position of each window
            for r, (a, b) in enumerate(zip(labels, ids)):
                if len(a) != len(b):
                    raise ValueError(f"example {r} has {len(b)} input_ids but {len(a)} labels")
            batch["labels"] = torch.from_numpy(pad_sequences(labels, self.padding_side)[0])
            if self.sampler is not None:
                batch["negatives"] = self.sampler.sample()
        else:
            raise ValueError("labels must be one int per example (histories) or one per input item (windows), not "
                             "a mix")
        if "timestamps" in keys:
            ts = [np.asarray(f["timestamps"]) for f in features]     # as given: pad_sequences refuses bools/strings
            for r, (a, b) in enumerate(zip(ts, ids)):
                if a.shape != b.shape:
                    raise ValueError(f"example {r} has {len(b)} input_ids but {a.shape[0] if a.ndim else 0} "
                                     "timestamps")
            batch["timestamps"] = torch.from_numpy(pad_sequences(ts, self.padding_side, dtype=np.float64,
                                                                 fill=0.0)[0])
        if "history" in keys:
            batch["history"] = torch.from_numpy(pad_sequences([np.asarray(f["history"], dtype=np.int64)
                                                               for f in features], self.padding_side)[0])
        return batch


#: ``TrainingArguments(label_names=HISTORY_LABELS)`` with ``trainer_kwargs(..., exclude_history=True)``: the ``Trainer``
#: then hands each batch's window to ``preprocess_logits_for_metrics`` beside the next items
HISTORY_LABELS = ["labels", "history"]


def logits_to_ranks(logits: torch.Tensor, labels: Any, exclude_history: bool = False) -> torch.Tensor:
    """``preprocess_logits_for_metrics`` for the ``Trainer``: ``logits [B, n_items]`` of a batch of histories and
    their next items ``labels [B]`` -> ``[B]`` int64 1-based full-ranking ranks, padding index 0 never ranked (as
    ``model.predict``), ties counted against the target (``zoo.evaluate``'s default). With ``exclude_history``
    (LRURec's protocol), ``labels`` is ``(next items [B], history [B, L])`` (``label_names=HISTORY_LABELS``) and the
    window's items are never ranked either. The logits are the forward's own tensor, discarded after this call: they
    are masked in place rather than copying ``[B, n_items]``. ``(logits, hidden_states)`` (what the Trainer hands on
    from a tuple output, or from a dict whose ``keys_to_ignore_at_inference`` lacks ``hidden_states``) is read as its
    logits; other tuples are refused."""
    if labels is None:             # the Trainer passes labels only when the batch has every one of its label_names
        raise ValueError("no next items reached the metrics: the evaluation batches lack one of the Trainer's "
                         "label_names (label_names=HISTORY_LABELS goes with trainer_kwargs(..., exclude_history=True))")
    if isinstance(logits, (tuple, list)) and len(logits) == 2 and getattr(logits[0], "dim", int)() == 2 \
            and getattr(logits[1], "dim", int)() == 3:
        logits = logits[0]          # (logits, hidden_states): a model whose config says return_dict=False gives tuples,
        #                             which the Trainer does not filter by keys_to_ignore_at_inference
    if isinstance(logits, (tuple, list)):
        raise ValueError(f"expected the model's logits alone, got {len(logits)} outputs: the model config's "
                         "keys_to_ignore_at_inference must hold hidden_states")
    history = None
    if exclude_history:
        if not (isinstance(labels, (tuple, list)) and len(labels) == 2):
            raise ValueError("exclude_history needs each batch's window beside its next items: give the Trainer "
                             "TrainingArguments(..., label_names=zoo.hf_trainer.HISTORY_LABELS)")
        labels, history = labels
    elif isinstance(labels, (tuple, list)):
        raise ValueError(f"got {len(labels)} label tensors: label_names=HISTORY_LABELS goes with "
                         "trainer_kwargs(..., exclude_history=True)")
    if labels.dim() != 1:
        raise ValueError("ranks need one next item per history (labels [B]): evaluate on zoo.hf_trainer."
                         "HistoryDataset, not on training windows")
    scores = logits.float()
    if history is not None:
        if history.dim() != 2 or history.shape[0] != scores.shape[0]:
            raise ValueError(f"history must be [B, L] with B = {scores.shape[0]}, got {list(history.shape)}")
        scores.scatter_(1, history.to(scores.device).long().clamp(min=0), -float("inf"))   # padding 0 (or -100)
    scores[:, 0] = -float("inf")
    return rank_of_target(scores, labels)


def ranking_metrics(ks: Iterable[int] = (5, 10, 20)):
    """``compute_metrics`` for the ``Trainer`` (with :func:`logits_to_ranks` as ``preprocess_logits_for_metrics``):
    ``EvalPrediction(predictions=ranks [N])`` -> ``{"HR@K", "NDCG@K", "MRR@K"}`` means over the N users, reported
    by the ``Trainer`` as ``eval_NDCG@10`` etc. (``metric_for_best_model="NDCG@10"``)."""
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"cut-offs must be ints >= 1, got {ks}")

    def compute(pred) -> dict[str, float]:
        ranks = pred.predictions
        if isinstance(ranks, tuple):
            raise ValueError("predictions are not ranks: pass preprocess_logits_for_metrics=zoo.hf_trainer."
                             "logits_to_ranks to the Trainer")
        ranks = np.asarray(ranks)
        if ranks.ndim != 1:
            raise ValueError(f"predictions must be [N] ranks (preprocess_logits_for_metrics=logits_to_ranks), got "
                             f"shape {list(ranks.shape)}")
        return compute_metrics(torch.from_numpy(ranks.astype(np.int64)), ks, recall_alias=False)

    return compute


EVAL_ON = ("valid", "test")


def trainer_kwargs(model, split: Split, ks: Iterable[int] | None = None, stride: int | None = None,
                   eval_on: str = "valid", exclude_history: bool = False, negatives: int | None = None,
                   negative_sampler: str = "uniform") -> dict[str, Any]:
    """What ``Trainer(model=model, args=args, **trainer_kwargs(model, split))`` needs to train ``model`` on ``split``
    and evaluate it by full ranking: ``train_dataset``, ``eval_dataset`` (``split.valid``, or ``split.test`` with
    ``eval_on="test"``), ``data_collator``, ``preprocess_logits_for_metrics`` and ``compute_metrics``.

    Args:
        model: a zoo model (its ``padding_side``, ``config.max_seq_length`` and ``config.n_items`` shape the data).
        split: :func:`zoo.data.leave_one_out` (or :func:`zoo.data.temporal_split`) of a dataset indexed like the
            model: with its own vocabulary set on the model (``model.set_item_vocab(ds.vocab)``), or one re-indexed
            to the model's (:func:`zoo.evaluate.align_with_model`).
        ks: metric cut-offs (default 5, 10, 20, those of them the catalogue has: :func:`zoo.metrics.default_ks`);
            one above the model's real items is a ValueError before any training (its HR@K would be 1).
        stride: window stride (``zoo.train --window-stride``; default ``max_seq_length``: no overlap). BERT4Rec
            takes no other (its Cloze objective has no per-position targets: overlaps only repeat masked items).
        eval_on: ``"valid"`` or ``"test"``.
        exclude_history: rank under LRURec's protocol (``zoo.evaluate --exclude-history``: the window's items are
            never ranked); give the ``Trainer`` ``TrainingArguments(..., label_names=HISTORY_LABELS)`` with it (an
            evaluation without them is an error naming them).
        negatives: train with sampled softmax against this many negatives per batch (``zoo.train --loss
            sampled-softmax --negatives N``: large catalogues, where the full cross-entropy's ``[targets, n_items]``
            logits do not fit); None: the full cross-entropy.
        negative_sampler: ``"uniform"`` or ``"popularity"`` (by training count, logQ-corrected;
            :class:`zoo.losses.NegativeSampler`).
    Raises:
        ValueError naming the problem: items beyond the model's ``n_items``, a vocabulary other than the model's, a
        time-aware model without timestamps, no training window, a BERT4Rec stride other than ``max_seq_length``.
    """
    from .modeling_utils import SeqRecPreTrainedModel

    if not isinstance(model, SeqRecPreTrainedModel):
        raise TypeError(f"model must be a zoo model, got {type(model).__name__}")
    if not isinstance(split, Split):
        raise TypeError(f"split must be zoo.data.Split (leave_one_out(dataset)), got {type(split).__name__}")
    if eval_on not in EVAL_ON:
        raise ValueError(f"eval_on must be one of {EVAL_ON}, got {eval_on!r}")
    from .metrics import check_cutoffs, default_ks

    n_real = int(model.config.n_items) - 1
    ks = default_ks(n_real) if ks is None else check_cutoffs(ks, n_real, "model")
    _check_split_fits(model, split)
    L = int(model.config.max_seq_length)
    if stride is not None and stride != L and getattr(model, "training_objective", None) == "cloze":   # as zoo.train
        from .train import _objective_owner

        raise ValueError(f"stride={stride}: {_objective_owner(type(model))}'s Cloze objective does not use per-position targets, so "
                         "overlapping windows would only repeat masked items; leave stride at None (non-overlapping "
                         "windows)")
    windows = training_windows(split.train, int(model.config.max_seq_length),
                               split.train_timestamps if model.uses_timestamps else None, stride=stride)
    sampler = None
    if negatives is not None:
        from .data.split import item_counts
        from .losses import NegativeSampler

        n_items = int(model.config.n_items)
        sampler = NegativeSampler(n_items, negatives, negative_sampler,
                                  item_counts(split.train, n_items) if negative_sampler == "popularity" else None)
    examples = split.valid if eval_on == "valid" else split.test
    if not model.uses_timestamps and examples.history_timestamps is not None:   # the model reads none: send none
        examples = EvalExamples(examples.histories, examples.targets, examples.users)
    train_set = WindowDataset(windows)
    train_set.split_kind = split.kind                   # save_run cards leave-one-out runs only
    return {"train_dataset": train_set,
            "eval_dataset": HistoryDataset(examples, int(model.config.max_seq_length), with_history=exclude_history),
            "data_collator": SeqRecCollator.for_model(model, sampler),
            "preprocess_logits_for_metrics": (partial(logits_to_ranks, exclude_history=True) if exclude_history
                                              else logits_to_ranks),
            "compute_metrics": ranking_metrics(ks)}


def save_run(trainer, out: str | os.PathLike, data: str | os.PathLike, data_options: dict | None = None,
             command: str | None = None, overwrite: bool = False) -> dict:
    """Save a ``Trainer`` run as a ``zoo.train`` run folder, so that ``python -m zoo.hub card --run OUT`` cards it
    (full-ranking metrics, protocol, baselines, training record) like the project's own models.

    Writes the ``Trainer``'s model (the best checkpoint with ``load_best_model_at_end``) with ``save_pretrained`` and
    a ``train_log.json`` in ``zoo.train``'s format: the data and its loading options, the optimiser and schedule read
    from the ``TrainingArguments`` (all of them are kept too, under ``trainer``), the objective, the per-epoch
    validation and training loss (the mean of the losses logged within the epoch: :func:`epoch_losses`; an epoch
    without a log has none), the validation NDCG@10 of the saved weights and their test metrics (measured here, under
    the protocol the run validated with: LRURec's when its evaluation set was built with ``exclude_history``).

    Args:
        trainer: the ``Trainer``, after ``train()``, built with :func:`trainer_kwargs`.
        out: the run folder (a new one, or one holding a checkpoint with ``overwrite``).
        data: the interaction file the split came from, as ``zoo.hub card --data`` will be given it.
        data_options: the :func:`zoo.data.load_dataset` options it was loaded with (``kcore``, ``time_ties``,
            ``columns``; default: ``load_dataset``'s defaults).
        command: how the run was started, for the card (default: this process's command line).
    Raises:
        export.fsutil.FolderBusy: another run is writing into ``out`` now (its lock, as ``zoo.train`` holds it).
        ValueError: the data, loaded with ``data_options``, is not what the ``Trainer`` trained on (another file,
        k-core or order of ties), ``out`` already holds a checkpoint, the trainer was not built by
        :func:`trainer_kwargs`, or it has not trained, or it stopped before its planned steps without early stopping
        (interrupted: :func:`stop_reason`).
    """
    import json
    import shlex
    import sys

    from export.fsutil import held_output_folder

    from .cli import written_whole
    from .data.split import leave_one_out, load_dataset, load_options
    from .evaluate import align_with_model, evaluate_model
    from .metrics import default_ks
    from .losses import describe_loss
    from .train import check_output_folder, describe_objective, environment

    train_set, eval_set = trainer.train_dataset, trainer.eval_dataset
    if not isinstance(train_set, WindowDataset) or not isinstance(eval_set, HistoryDataset):
        raise ValueError("save_run takes a Trainer built with zoo.hf_trainer.trainer_kwargs (its train_dataset a "
                         "WindowDataset, its eval_dataset a HistoryDataset)")
    if not trainer.state.global_step:
        raise ValueError("save_run takes a Trainer after train(): this one has taken no training step")
    reason = stop_reason(trainer)                       # an interrupted run is refused before any work
    if getattr(train_set, "split_kind", "leave-one-out") != "leave-one-out":
        raise ValueError(f"the Trainer trained on a {train_set.split_kind} split: save_run makes a run for zoo.hub "
                         "card, whose cards report leave-one-out")
    check_output_folder(str(out), overwrite=overwrite)
    model = trainer.model
    options = load_options(**(data_options or {}))
    ds, _ = align_with_model(load_dataset(data, **options), model)
    split = leave_one_out(ds)
    w = train_set.windows
    again = training_windows(split.train, w.max_len, split.train_timestamps if w.timestamps is not None else None,
                             stride=w.stride)
    if not (np.array_equal(again.inputs, w.inputs) and np.array_equal(again.labels, w.labels)):
        raise ValueError(f"{data} loaded with {options} is not the data the Trainer trained on (another file, k-core "
                         "or order of ties): give save_run the file and data_options of the run")
    masked = eval_set.with_history                             # validated under LRURec's protocol
    valid = evaluate_model(model, split.valid, ks=(10,), exclude_history=masked, progress=False, any_ks=True)
    test = evaluate_model(model, split.test, ks=default_ks(model.config.n_items - 1), exclude_history=masked,
                          progress=False)
    args = trainer.args
    state = trainer.state
    all_evals = [e for e in state.log_history if "eval_NDCG@10" in e]
    # one record per epoch (named by state.epoch, fractional): its last evaluation (eval_strategy="steps" makes several)
    last_of = {epoch_of(e["epoch"]): e for e in all_evals}
    losses = epoch_losses(state.log_history)
    epochs = [{"epoch": k, **({"loss": losses[k]} if k in losses else {}),
               "valid_NDCG@10": e["eval_NDCG@10"], **({"valid_HR@10": e["eval_HR@10"]} if "eval_HR@10" in e else {})}
              for k, e in sorted(last_of.items())]
    best_kept = bool(args.load_best_model_at_end) and str(args.metric_for_best_model).removeprefix("eval_") == "NDCG@10"
    best_epoch = next((epoch_of(e["epoch"]) for e in all_evals if e["eval_NDCG@10"] == state.best_metric),
                      None) if best_kept else None
    stopped = reason + (
        "" if best_kept else "; the Trainer's final weights (no load_best_model_at_end on NDCG@10)")
    optim = str(getattr(args.optim, "value", args.optim))
    name = ("adam" if not args.weight_decay else "adamw") if optim.startswith("adamw") else optim
    schedule = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    sampler = getattr(trainer.data_collator, "sampler", None)
    loss = sampler.spec if sampler is not None and hasattr(sampler, "spec") else {"type": "ce"}
    cfg = model.config.to_dict()
    log = {"model_type": model.config.model_type, "data": os.path.abspath(data), "dataset": ds.stats(),
           "data_options": options, "seed": args.seed,
           "train": {"optimizer": name, "lr": args.learning_rate, "weight_decay": args.weight_decay,
                     "batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps
                     * max(1, args.world_size), "clip": args.max_grad_norm or 0.0, "lr_schedule": schedule,
                     **({"warmup_steps": args.get_warmup_steps(state.max_steps)}
                        if args.get_warmup_steps(state.max_steps) else {})},
           "config_overrides": {}, "epochs": epochs, "epoch_loss": EPOCH_LOSS,
           "command": command or "python " + " ".join(map(shlex.quote, sys.argv)),
           "objective": describe_objective(cfg["model_type"], w.max_len, w.stride, cfg, describe_loss(loss)),
           "loss": loss, "window_stride": w.stride, "loss_weighting": "window", "environment": environment(),
           "n_parameters": sum(p.numel() for p in model.parameters()), "init_from": None,
           "trainer": {"class": f"{type(trainer).__module__}.{type(trainer).__name__}",
                       "training_arguments": json.loads(args.to_json_string())},
           "best_epoch": best_epoch if best_epoch is not None else (epochs[-1]["epoch"] if epochs else None),
           "best_valid_NDCG10": valid["NDCG@10"], "stopped": stopped, "test": test,
           "protocol": {"split": "leave-one-out by time (RecBole LS valid_and_test)", "ranking": "full",
                        "history_masked": masked},
           "train_minutes": sum(e.get("train_runtime", 0.0) for e in state.log_history) / 60}
    with held_output_folder(out, "out"):            # another run writing into out now: FolderBusy, nothing written
        check_output_folder(str(out), overwrite=overwrite)     # again, under the lock: nothing saved meanwhile
        model.save_pretrained(out)
        with written_whole(os.path.join(out, "train_log.json")) as f:
            json.dump(log, f, indent=1)
    return log


def stop_reason(trainer) -> str:
    """The log's ``stopped`` text of a ``Trainer`` after ``train()``, in ``zoo.train``'s words: ``"max epochs"`` (or
    ``"max steps"``, with ``args.max_steps``) for a run that took its planned steps, ``"early stopping: ..."`` when an
    ``EarlyStoppingCallback`` stopped it. ``ValueError`` for a run that stopped before its planned steps otherwise
    (interrupted, or stopped by another callback): not a finished run."""
    from transformers import EarlyStoppingCallback

    state, args = trainer.state, trainer.args
    if state.max_steps and state.global_step >= state.max_steps:
        return "max steps" if args.max_steps and args.max_steps > 0 else "max epochs"
    early = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EarlyStoppingCallback)), None)
    if early is not None and trainer.control.should_training_stop \
            and early.early_stopping_patience_counter >= early.early_stopping_patience:
        metric = str(args.metric_for_best_model).removeprefix("eval_")
        every = "epochs" if str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "epoch" else \
            f"validations (every {args.eval_steps} steps)"
        return f"early stopping: no valid {metric} gain for {early.early_stopping_patience} {every}"
    raise ValueError(f"the Trainer stopped at step {state.global_step} of its planned {state.max_steps} without early "
                     "stopping (interrupted, or stopped by a callback): save_run saves a finished run; resume it "
                     "(trainer.train(resume_from_checkpoint=...)) or train again first")


#: what the ``loss`` of an epoch of :func:`save_run`'s log is (its ``epoch_loss`` entry says so)
EPOCH_LOSS = ("the mean of the training losses the Trainer logged within the epoch (every logging_steps optimizer "
              "steps), each weighted by the steps it covers; a log belongs to the epoch its fractional epoch falls in "
              "(a log at epoch 1.15 to epoch 2, one at exactly 1.0 to epoch 1), and an epoch without a log has no "
              "loss")


def epoch_of(epoch: float) -> int:
    """The epoch (1, 2, ...) of a ``Trainer`` log at the fractional ``epoch`` it gives (``state.epoch``: epochs
    completed, fractions of the current one included): a log at 1.15 is within epoch 2, the log at the end of the
    first epoch (exactly 1.0) within epoch 1."""
    return max(1, math.ceil(float(epoch) - 1e-9))


def epoch_losses(log_history: Sequence[dict]) -> dict[int, float]:
    """``{epoch: loss}`` from a ``Trainer``'s ``state.log_history``: :data:`EPOCH_LOSS`. Each ``loss`` log is the mean
    loss of the optimizer steps since the previous one (``step - previous step`` of them), so an epoch's loss is the
    mean over the steps of its logs; a log that spans the end of an epoch counts in the epoch it was made in."""
    sums: dict[int, float] = {}
    steps: dict[int, float] = {}
    last = 0
    for e in log_history:
        if "loss" not in e or "epoch" not in e:
            continue
        step = e.get("step")
        n = step - last if isinstance(step, int) and step > last else 1
        last = step if isinstance(step, int) else last
        k = epoch_of(e["epoch"])
        sums[k] = sums.get(k, 0.0) + n * float(e["loss"])
        steps[k] = steps.get(k, 0) + n
    return {k: sums[k] / steps[k] for k in sums}


def _check_split_fits(model, split: Split) -> None:
    n_items = int(model.config.n_items)
    name = type(model).__name__
    vocab = getattr(model, "item_vocab", None)
    data_vocab = getattr(split.dataset, "vocab", None) if split.dataset is not None else None
    if data_vocab is not None:
        if vocab is None:
            raise ValueError(f"{name} has no item vocabulary: call model.set_item_vocab(dataset.vocab) first, so that "
                             "the checkpoints the Trainer saves map the data's own item ids")
        if list(vocab.items) != list(data_vocab.items):
            raise ValueError(f"the data is indexed by another vocabulary than {name}'s ({len(data_vocab)} items "
                             f"against {len(vocab)}): re-index it with zoo.evaluate.align_with_model(dataset, model) "
                             "before leave_one_out")
    top = max([int(np.max(s)) for s in split.train if len(s)] + [int(split.valid.targets.max(initial=0)),
                                                                  int(split.test.targets.max(initial=0))])
    if top >= n_items:
        raise ValueError(f"the data holds item index {top} but {name} has n_items={n_items} (indices 1.."
                         f"{n_items - 1}): build the model with n_items=dataset.vocab.n_items")
    if model.uses_timestamps and split.train_timestamps is None:
        raise ValueError(f"{name} reads timestamps, but the data has none")


__all__ = ["WindowDataset", "HistoryDataset", "SeqRecCollator", "logits_to_ranks", "ranking_metrics",
           "trainer_kwargs", "save_run", "stop_reason", "epoch_of", "epoch_losses", "EVAL_ON", "HISTORY_LABELS",
           "EPOCH_LOSS"]


if __name__ == "__main__":     # a library module: ``python -m zoo.hf_trainer`` has nothing to run
    import sys

    print("zoo.hf_trainer is a library module, not a command: it gives transformers' Trainer what it needs to train "
          "zoo models (`python -c 'import zoo.hf_trainer; help(zoo.hf_trainer)'`); to train from the command line, "
          "run `python -m zoo.train --help`", file=sys.stderr)
    sys.exit(2)
