"""Train a zoo model on an interaction file: ``python -m zoo.train --model mamba4rec --data PATH --out DIR``.

Protocol (RecBole's, see ``../shared/reference/models.md`` §1): leave-one-out by time, validation on each user's
second-to-last item every epoch (full ranking, NDCG@10), early stopping, best checkpoint written with
``save_pretrained`` (config + safetensors + item vocabulary), final full-ranking test metrics written to
``DIR/train_log.json``.

Training objective: cross-entropy over all items at **every position** of each training window (windows of
``max_seq_length`` cut from the end of each user's training sequence). For causal models this gives the same
(prefix -> next item) targets as RecBole's prefix augmentation, where each prefix is a separate sample, at a fraction
of the cost; the targets are identical, the weighting per epoch differs (each window position once). The contexts
differ too: a target sees only the items before it *in its window* (on ML-1M a mean of 80 items vs 119 under prefix
augmentation). ``--window-stride S`` (< ``max_seq_length``) overlaps the windows and supervises only the last ``S``
positions of each, so every target sees ``>= max_seq_length - S + 1`` items (or its whole prefix), as under prefix
augmentation, for ``~max_seq_length / S`` times the compute on long histories (see ``zoo.data.batching``).
BERT4Rec is the exception: it trains with its masked-item (Cloze) objective on the same non-overlapping windows (see
``zoo.models.bert4rec``), as does any model class with ``training_objective = "cloze"`` (the class attribute, not the
``model_type``, decides); ``describe_objective`` gives the sentence the log and the card carry for each model.
``--loss sampled-softmax`` replaces the cross-entropy over all items by sampled softmax against ``--negatives`` items
shared by the batch (:mod:`zoo.losses`), for catalogues too large to score whole at every target; validation and test
rank the full catalogue either way.

Every epoch leaves the run's full state in ``DIR/resume/`` (:mod:`zoo.train_state`); ``--resume`` continues an
interrupted or budget-stopped run from it exactly (same command; ``--max-minutes`` and ``--device`` may change, and
``--threads``, which is not recorded: another device or thread count sums in another order, so the weights then
differ from the uncut run's by float rounding, 2e-6 in a review's run).

Per-model defaults (``TRAIN_PRESETS``) take each model's official optimiser settings (Adam lr 1e-3 for the RecBole
models; AdamW wd 0.01 without decay on bias/LayerNorm, grad clip 5, batch 128 all-position windows for LRURec, as
officially). The RecBole models' batch is the zoo's own: 64 windows of users' train sequences with a target at every
position (a few thousand targets from 64 users, about RecBole's targets per step, where RecBole's 2,048 are one
prefix each, from about as many users), batched by length (``--batch-order random``: plain shuffled batches, each
from windows of any length). Every one can be overridden.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import sys
import time
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from export.fsutil import strict_json

from .cli import EXIT_ERROR, EXIT_MISSING, EXIT_USAGE, cannot, check_outputs, written_whole

TRAIN_PRESETS = {
    "mamba4rec": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=64, clip=0.0),
    "sasrec": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=64, clip=0.0),
    "lrurec": dict(optimizer="adamw", lr=1e-3, weight_decay=0.01, batch_size=128, clip=5.0),
}
DEFAULT_PRESET = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=64, clip=0.0)
#: ``--negatives`` when ``--loss sampled-softmax`` is given without it
DEFAULT_NEGATIVES = 256
#: what ``--sparse-item-grad`` does to the item table (training log, model card)
SPARSE_ITEMS_TEXT = ("sparse gradient (only the rows a batch reads), updated by lazy Adam (torch.optim.SparseAdam: "
                     "a row's moments move only when it is read)")
#: full cross-entropy logits per batch above which ``zoo.train`` points at sampled softmax (bytes)
LARGE_LOGITS_BYTES = 2**30


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


LR_SCHEDULES = ("constant", "linear", "cosine")
DECAY_HORIZONS = ("epochs", "budget")
#: how a run's log names its --max-minutes budget (the start of "stopped" and "decay_over" texts, which cards read)
TIME_BUDGET = "time budget"
LOSS_WEIGHTINGS = ("window", "target")
#: ``--batch-order``: ``by-length`` groups windows of similar length into a batch (``iterate_batches(...,
#: bucket_by_length=True)``: what every bundled card was trained with); ``random``: plain shuffled batches
BATCH_ORDERS = ("by-length", "random")


def lr_factor(schedule: str, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1] of the planned ``--epochs`` (clamped):
    ``constant`` 1; ``linear`` 1 -> 0; ``cosine`` (1 + cos(pi * progress)) / 2. Decaying to the end of a fixed budget
    is what makes budget-limited runs converge (Li et al., "Budgeted Training", ICLR 2020)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - p
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    return 1.0


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Multiplier of the learning rate at optimizer ``step`` (0-based, counted from the run's first batch) of a linear
    warmup over ``warmup_steps`` steps: ``(step + 1) / warmup_steps``, then 1 (0 steps: always 1). It multiplies the
    schedule's factor (Transformers' ``get_linear_schedule_with_warmup`` shape). A restart ``--init-from`` a trained
    checkpoint starts Adam's moment estimates afresh, whose first updates are about ``lr`` per weight whatever the
    gradient's size; a warmup keeps those first updates small. (Measured once: 540 warmup steps did not change the
    validation dip at the start of BERT4Rec's ML-1M restarts -- 0.1730 / 0.1700 after 5 / 10 epochs, against 0.1725 /
    0.1691 without, same seed.)"""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return 1.0 if step + 1 >= warmup_steps else (step + 1) / warmup_steps


def schedule_progress(step: int, total_steps: int, elapsed_s: float = 0.0, budget_s: float | None = None) -> float:
    """Where the learning-rate schedule stands, in [0, 1]: ``step / total_steps`` of the planned epochs, or, with a
    time budget (``--decay-over budget``), the larger of that and ``elapsed_s / budget_s``, so that the decay ends at
    whichever limit comes first. A budget-paced schedule depends on the machine's speed: the same command on another
    machine takes other learning rates (the log records the budget and the epochs reached)."""
    p = step / max(total_steps, 1)
    if budget_s:
        p = max(p, elapsed_s / budget_s)
    return min(max(p, 0.0), 1.0)


def parse_overrides(items: Sequence[str]) -> dict:
    """``["num_layers=2", "dropout_prob=0.3"]`` -> dict with JSON-parsed values (strings stay strings). A key given
    twice with different values is a ``ValueError`` naming it (the later one would otherwise win silently)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        k = k.strip()
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            pass
        if k in out and (out[k] != v or type(out[k]) is not type(v)):
            raise ValueError(f"--set gives {k} twice, {k}={out[k]!r} and {k}={v!r}: give it once")
        out[k] = v
    return out


def read_config_file(path: str | os.PathLike) -> dict:
    """``--config FILE``: a JSON object of model config fields. ``ValueError`` naming the file when it is not valid
    JSON or not an object (a list or a number would otherwise fail later, far from the cause)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(cannot("--config", path, e, "read")) from None
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {path}: not valid JSON ({e})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"--config {path}: expected a JSON object of config fields, got {type(fields).__name__}")
    return fields


def config_fields(cfg_cls) -> set[str]:
    """The documented fields of a zoo config class: the ``__init__`` parameters of it and its zoo bases."""
    import inspect

    from .modeling_utils import SeqRecConfig

    names: set[str] = set()
    for klass in cfg_cls.__mro__:
        if isinstance(klass, type) and issubclass(klass, SeqRecConfig):
            names |= {n for n, p in inspect.signature(klass.__init__).parameters.items()
                      if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names


def check_config_overrides(cfg_cls, overrides: dict, where: str = "--set") -> None:
    """``ValueError`` for an override that is not a field of ``cfg_cls`` (a typo such as ``hiden_size`` would
    otherwise be stored in config.json and change nothing)."""
    fields = config_fields(cfg_cls)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{where}: {unknown} not fields of {cfg_cls.__name__} ({cfg_cls.model_type}); its fields: "
                         f"{sorted(fields)}")


def saved_config_fields(fields: dict, cfg_cls, path: str | os.PathLike) -> dict:
    """``--config``'s ``fields`` without what a checkpoint's ``config.json`` holds beside the config fields, when the
    file is one (it has a ``model_type``): transformers' and the zoo's bookkeeping (``architectures``, ``dtype``,
    ``transformers_version``, ``item_vocab_file``), the derived fields (``d_inner``: recomputed) and the run fields
    ``n_items`` (set by the run from its data; a note says so). A ``model_type`` other than ``cfg_cls``'s is a
    ``ValueError`` (another model's config). A file without ``model_type`` is returned as it is: a hand-written file's
    keys are all meant as fields, and one that is not is refused by name."""
    from .modeling_utils import ZOO_CONFIG_KEYS, transformers_config_keys

    if "model_type" not in fields:
        return fields
    if fields["model_type"] != cfg_cls.model_type:
        raise ValueError(f"--config {path}: a {fields['model_type']!r} config.json, and --model is "
                         f"{cfg_cls.model_type!r}")
    own = config_fields(cfg_cls) - set(RUN_FIELDS)
    drop = (transformers_config_keys() | ZOO_CONFIG_KEYS | set(cfg_cls.derived_fields) | set(RUN_FIELDS)) - own
    if "n_items" in fields:
        print(f"[zoo.train] --config {path}: its n_items {fields['n_items']!r} is not used (the run sets n_items from "
              "its data)", flush=True)
    return {k: v for k, v in fields.items() if k not in drop}


#: config fields a run sets itself, from its data (or its ``--init-from`` checkpoint), never from ``--set``/``--config``
RUN_FIELDS = {"n_items": "the item vocabulary's size", "item_vocab_file": "written with the checkpoint's vocabulary"}


def check_run_fields(overrides: dict, where: str = "--set") -> None:
    """``ValueError`` naming the overrides of :data:`RUN_FIELDS` (``--set n_items=2000`` failed in ``build_model``
    with "got multiple values for keyword argument 'n_items'")."""
    given = [k for k in RUN_FIELDS if k in overrides]
    if given:
        raise ValueError(f"{where}: {' and '.join(given)} {'is' if len(given) == 1 else 'are'} set by the run from its "
                         f"data, not by the model config ({'; '.join(f'{k}: {RUN_FIELDS[k]}' for k in given)}): leave "
                         f"{'it' if len(given) == 1 else 'them'} out")


def build_model(model_type: str, n_items: int, config_overrides: dict):
    from .models import build_model_class, get_model_class

    cfg_cls, model_cls = get_model_class(model_type)
    check_config_overrides(cfg_cls, config_overrides)
    return build_model_class(cfg_cls, model_cls, dict(n_items=n_items, **config_overrides), config_overrides)


def apply_config_overrides(model, overrides: dict, where: str = "--init-from"):
    """``(model, changes)``: ``model`` with the config fields in ``overrides`` that differ from its own set (dropout,
    a window length without a position table, ...), its weights carried over. An override that changes a weight's
    shape (width, layers, a position table's length) is a ``ValueError``: the checkpoint cannot be continued with it.
    ``changes`` maps each changed field to ``(old, new)``."""
    cfg = model.config
    check_config_overrides(type(cfg), overrides)
    changes = {k: (getattr(cfg, k, None), v) for k, v in overrides.items() if getattr(cfg, k, None) != v}
    if not changes:
        return model, {}
    new = type(model)(type(cfg)(**{**cfg.to_dict(), **{k: v for k, (_, v) in changes.items()}}))
    old_sd, new_sd = model.state_dict(), new.state_dict()
    reshaped = sorted(k for k in old_sd if k in new_sd and old_sd[k].shape != new_sd[k].shape)
    if reshaped or set(old_sd) != set(new_sd):
        raise ValueError(f"{where}: {', '.join(f'{k}={v!r}' for k, (_, v) in changes.items())} changes the "
                         f"checkpoint's weights ({(reshaped or sorted(set(old_sd) ^ set(new_sd)))[:4]}); a checkpoint "
                         "can be continued only with settings that keep its weights' shapes")
    new.load_state_dict(old_sd, strict=True)
    new.set_item_vocab(model.item_vocab)
    return new, changes


def no_decay_parameter(module: torch.nn.Module, param_name: str) -> bool:
    """True for the parameters AdamW must not decay: biases, normalization gains, and those a module names in its
    ``no_weight_decay_params`` (the SSMs' ``A_log``, ``D`` and ``dt_bias``, which mamba_ssm marks ``_no_weight_decay``:
    decay would pull every state's ``A = -exp(A_log)`` towards -1 and erase the initial spectrum). A class attribute,
    not a mark on the tensor: ``from_pretrained`` replaces the parameters it loads.

    LRURec's rule is by name ("bias" or "layer_norm" in the name, which decays its ``params_log`` and the item table);
    by name alone it would decay SASRec's and BERT4Rec's ``LayerNorm`` gains (RecBole/HF naming) and the SSD's gated
    RMSNorm ``norm_weight``. Deciding by module type gives LRURec exactly its own groups (every ``layer_norm`` there
    is an ``nn.LayerNorm``) and the same intent for every other model.
    """
    if "bias" in param_name or param_name in getattr(module, "no_weight_decay_params", ()):
        return True
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm,
                           torch.nn.modules.batchnorm._BatchNorm)):
        return True
    return param_name.startswith("norm")  # a norm gain held directly by its layer (e.g. TiSSD.norm_weight)


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float, sparse_items: bool = False):
    """Adam, or AdamW without decay on biases and normalization gains (:func:`no_decay_parameter`; for LRURec this is
    its official name-based grouping).

    ``sparse_items``: the item table (``model.get_input_embeddings().weight``, whose gradient is then sparse) goes to
    lazy Adam (``torch.optim.SparseAdam``: only the rows a batch read move, and no weight decay), every other
    parameter to ``name``; the two step as one :class:`SparseItemOptimizer`."""
    if name not in ("adam", "adamw"):
        raise ValueError(f"unknown optimizer {name!r} (adam or adamw)")
    table = model.get_input_embeddings().weight if sparse_items else None
    if name == "adam":
        dense = torch.optim.Adam([p for p in model.parameters() if p is not table], lr=lr, weight_decay=weight_decay)
    else:
        decay, no_decay, seen = [], [], {id(table)}
        for module in model.modules():
            for pn, p in module.named_parameters(recurse=False):
                if id(p) not in seen:  # a tied parameter once
                    seen.add(id(p))
                    (no_decay if no_decay_parameter(module, pn) else decay).append(p)
        dense = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    if table is None:
        return dense
    return SparseItemOptimizer(dense, torch.optim.SparseAdam([table], lr=lr), type(model).__name__)


class SparseItemOptimizer:
    """The run's optimizer for every parameter but the item table, and lazy Adam (``torch.optim.SparseAdam``) for the
    table, stepped as one optimizer (``zoo.train --sparse-item-grad``).

    PyTorch's embedding gradient is dense by default: at a million items the backward writes every row of the table
    and Adam updates every row, though a sampled-softmax batch reads a few thousand (``bench/bench_sampled_softmax.py``).
    With a sparse gradient only those rows move, and their Adam moments only then (TensorFlow's LazyAdam). Exposes
    what ``zoo.train`` and its resume state use: ``param_groups`` (the learning-rate schedule sets both),
    ``zero_grad``, ``step``, and ``state_dict`` / ``load_state_dict`` in torch's layout (the dense optimizer's
    parameters first, then the table), so that :mod:`zoo.train_state` saves it like any optimizer.
    """

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.SparseAdam, model_name: str = "the model"):
        self.dense, self.sparse, self.model_name = dense, sparse, model_name
        self.table = sparse.param_groups[0]["params"][0]

    @property
    def optimizers(self) -> tuple:
        return (self.dense, self.sparse)

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        grad = self.table.grad
        if grad is not None and not grad.is_sparse:
            raise RuntimeError(f"{self.model_name}: the item table's gradient is dense, so lazy Adam cannot update it: "
                               "something reads the table other than the embedding lookup and the sampled loss")
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for o in self.optimizers:
            sd = o.state_dict()
            state.update({offset + i: st for i, st in sd["state"].items()})
            groups += [dict(g, params=[offset + i for i in g["params"]]) for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups, offset = list(state_dict["param_groups"]), 0
        for o in self.optimizers:
            mine, groups = groups[:len(o.param_groups)], groups[len(o.param_groups):]
            n = sum(len(g["params"]) for g in mine)
            ids = {i for g in mine for i in g["params"]}
            sizes = [len(g["params"]) for g in o.param_groups]
            if [len(g["params"]) for g in mine] != sizes or ids != set(range(offset, offset + n)):
                raise ValueError("the optimizer state is not of a --sparse-item-grad run of this model")
            o.load_state_dict({"state": {i - offset: st for i, st in state_dict["state"].items() if i in ids},
                               "param_groups": [dict(g, params=[i - offset for i in g["params"]]) for g in mine]})
            offset += n
        if groups:
            raise ValueError("the optimizer state is not of a --sparse-item-grad run of this model")


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm over all gradients, scaled by ``max_norm / (norm + 1e-6)`` when
    above ``max_norm``), also for sparse gradients, which torch's cannot take: a sparse gradient is coalesced
    (repeated rows summed) and its values counted. Returns the total norm."""
    params = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    norms = [torch.linalg.vector_norm(p.grad.values() if p.grad.is_sparse else p.grad) for p in params]
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        p.grad.mul_(coef)
    return total


def loss_scale(labels: torch.Tensor, targets_per_batch: float, weighting: str) -> float:
    """Factor applied to a batch's mean loss before ``backward``.

    ``window``: 1 (the batch mean; with length bucketing the windows of a batch have similar lengths, so each window
    weighs about the same and a target of a short window weighs more than one of a long window). ``target``:
    ``n_targets(batch) / targets_per_batch`` turns the mean into the batch's *sum* over targets divided by a constant
    (the average number of targets per batch), so every target weighs the same, as in RecBole's batches of prefixes.

    Args:
        labels: ``[B, L]`` training labels (``> 0`` = target).
        targets_per_batch: average targets per batch over the epoch.
        weighting: ``window`` or ``target``.
    """
    if weighting == "window":
        return 1.0
    if weighting == "target":
        return int((labels > 0).sum()) / targets_per_batch
    raise ValueError(f"loss weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")


def registered_model_class(model_type: str) -> type | None:
    """The model class registered for ``model_type`` (a plugin's found through its entry point), or None."""
    from .models import MODELS

    entry = MODELS.get(model_type) if isinstance(model_type, str) else None
    return entry[1] if entry is not None else None


def training_objective(model_type: str) -> str:
    """The registered model class's ``training_objective`` (:data:`zoo.modeling_utils.TRAINING_OBJECTIVES`):
    ``"cloze"`` for a masked-item model (BERT4Rec, or a contributed one that sets it), whose labels are no
    per-position targets; ``"next_item"`` for every other model and for a type not registered."""
    return getattr(registered_model_class(model_type), "training_objective", "next_item")


def _objective_owner(model: str | type) -> str:
    """How messages name the model whose objective it is (``model``: its ``model_type`` or its class): the class name
    without ``Model`` (``"BERT4Rec"``)."""
    cls = registered_model_class(model) if isinstance(model, str) else model
    name = cls.__name__ if cls is not None else model
    return name[:-len("Model")] if name.endswith("Model") and len(name) > len("Model") else name


def describe_objective(model_type: str, max_len: int, stride: int, config: dict | None = None,
                       loss: str | None = None) -> str:
    """One sentence for the training log and the model card: what ``zoo.train`` optimised for this model, chosen by
    the model class's ``training_objective`` (``"cloze"``: a masked-item objective) and ``WindowRecomputeMixin``
    (RecBole's prefix objective), not by its ``model_type``.

    Args:
        model_type: the model's ``config.model_type``.
        max_len: training window length (``max_seq_length``).
        stride: pairs between consecutive window ends (``max_len`` = non-overlapping windows).
        config: the model's config as a dict (BERT4Rec's masking fields).
        loss: what replaces the full cross-entropy (:meth:`zoo.losses.NegativeSampler.describe`), if anything.
    """
    ce = loss or "cross-entropy over all items"
    if training_objective(model_type) == "cloze":
        c = config or {}
        owner = _objective_owner(model_type)
        fields = registered_model_class(model_type).config_class.init_fields()
        if not {"mask_ratio", "ft_ratio"} <= fields:      # a contributed masked-item model: its forward's own masking
            return (f"{owner}'s masked-item (Cloze) objective (its own forward), on non-overlapping windows of "
                    f"max_seq_length = {max_len}; {ce} at the masked positions it predicts")
        ft = (f"with probability ft_ratio = {c.get('ft_ratio')} a batch instead masks only the last item of each row"
              + (" (of a uniformly drawn prefix, one RecBole prefix sample per window)"
                 if c.get("ft_prefix_sampling", True) else ""))
        return (f"{owner}'s masked-item (Cloze) objective in RecBole's form, on non-overlapping windows of "
                f"max_seq_length = {max_len} (plus the item after each window): every item is masked with probability "
                f"mask_ratio = {c.get('mask_ratio')}, {ft}; {ce} at the predicted masked "
                "positions; masks are drawn anew every epoch")
    from .models import MODELS
    from .models.tim4rec import WindowRecomputeMixin

    if model_type in MODELS and issubclass(MODELS[model_type][1], WindowRecomputeMixin):
        # non-causal hidden states (TiM4Rec's window-level time features, SSD4Rec's backward pass)
        sup = "every position" if stride == max_len else f"each of the last {stride} positions"
        return (f"RecBole's prefix objective: in windows of max_seq_length = {max_len} (ending every {stride} items), "
                f"{sup} is its own sample, the prefix up to it (right-padded) -> the next item, {ce} at the "
                "prefix's last position; one forward per target, as the model's representations are not causal")
    if stride == max_len:
        return f"{ce} at every position of windows of max_seq_length"
    return (f"{ce}; windows of max_seq_length = {max_len} ending every {stride} items, each "
            f"supervising its last {stride} positions (every target once, with >= {max_len - stride + 1} items of "
            "context or its whole prefix)")


def environment() -> dict:
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


class RunSetupError(ValueError):
    """A run refused before its first epoch: a bad setting, an unreadable or malformed data file, or a starting
    checkpoint that does not fit the data (``--out`` is untouched). ``python -m zoo.train`` prints it in one line,
    without a traceback, and exits with its ``exit_code`` (:data:`export.fsutil.EXIT_CODES`): 2 for a bad setting
    (with the usage), 1 for an input that cannot be read or does not fit (:class:`RunInputError`) and for an ``--out``
    another live run is writing into (:class:`export.fsutil.FolderBusy`), 4 for a GPU this machine lacks; the
    original exception is its ``__cause__``."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code


class RunInputError(RunSetupError):
    """A run refused before its first epoch because an input failed, not a setting: a ``--data``, ``--init-from``
    or resume state that cannot be found or read, or data that does not fit the run (:func:`_run_inputs`). Exit
    status 1 (:data:`export.fsutil.EXIT_ERROR`); its message is the original exception's, which is its
    ``__cause__``."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_ERROR)


class TrainingDiverged(RuntimeError):
    """A run whose numbers overflowed mid-training: a NaN or infinite training loss, an optimizer step that
    overflowed (Adam's ``value cannot be converted to type float without overflow`` at an enormous ``lr``), or NaN /
    infinite scores in validation (:class:`zoo.evaluate.ScoreOverflow`), a NaN or infinite number in the run's log
    (:func:`write_log`). What the run had written stays: the best checkpoint so far, ``train_log.json`` of its last
    validation and the resume state of its last whole epoch. ``python -m zoo.train`` prints it in one line and exits
    1."""


def write_log(out: str | os.PathLike, log: dict) -> None:
    """Write the run's ``log`` as ``out/train_log.json``: strict JSON (:func:`export.fsutil.strict_json`, indented
    one space), replacing the file whole (:func:`zoo.cli.written_whole`: an error or an interruption leaves the last
    whole log). A NaN or infinite number in ``log`` -- which Python's ``json`` would write as ``NaN``, a document
    that ``zoo.hub``'s strict readers, jq and ``JSON.parse`` refuse -- is a :class:`TrainingDiverged` naming where it
    is (``epochs[1].loss is nan, ...``), the file left as it was."""
    path = os.path.join(out, "train_log.json")
    try:
        text = strict_json(log, indent=1)
    except ValueError as e:
        raise TrainingDiverged(f"cannot write {path}: {e}; the file is left as it was") from e
    with written_whole(path) as f:
        f.write(text)


def _diverged(epoch: int, why: str, out, lr: float, clip: float, best_epoch: int, best: float,
              clip_helps: bool = True) -> TrainingDiverged:
    """The :class:`TrainingDiverged` of ``epoch`` (``why``: what overflowed), with the remedies (``lr``: the run's;
    ``--clip`` named when it is off, ``clip`` 0, and ``clip_helps``: not for a step size that overflows whatever the
    gradient) and what ``out`` keeps (``best_epoch`` < 1: no checkpoint yet)."""
    kept = (f"{out} keeps the checkpoint of epoch {best_epoch} (valid NDCG@10 {best:.4f}) and the run's "
            "train_log.json" if best_epoch >= 1 else "no checkpoint was written")
    return TrainingDiverged(f"training diverged at epoch {epoch} ({why}): lower --lr (it is {lr:g})"
                            + ("" if clip or not clip_helps else " or set --clip (e.g. 5)") + f"; {kept}")


@contextlib.contextmanager
def _run_inputs():
    """Raise the ``ValueError``/``OSError`` of the block as the run's inputs failing -- a ``--data``, ``--init-from``
    or resume state that cannot be found or read, or data that does not fit the run (a time-aware model on data
    without timestamps, a resumed run's data edited since) -- not its settings: a :class:`RunInputError` (exit 1)
    from it, where a refused setting is a usage error (2). A :class:`RunSetupError` already raised, and a GPU this
    machine lacks (``DeviceUnavailableError``, exit 4), pass as they are."""
    from .modeling_utils import DeviceUnavailableError

    try:
        yield
    except (RunSetupError, DeviceUnavailableError):
        raise
    except (ValueError, OSError) as e:
        raise RunInputError(str(e)) from e


def _set_up(model_type: str, data: str, out: str, *, epochs: int, patience: int, seed: int, max_len: int | None,
            config_overrides: dict | None, optimizer: str | None, lr: float | None, weight_decay: float | None,
            batch_size: int | None, clip: float | None, device: str | None, amp: bool, max_minutes: float | None,
            valid_users: int | None, kcore, init_from: str | None, lr_schedule: str, window_stride: int | None,
            loss_weighting: str, eval_every: int, decay_over: str, overwrite: bool, resume: bool = False,
            settings: dict | None = None, time_ties: str = "file", warmup_steps: int = 0,
            columns: dict | None = None, loss: str = "ce", negatives: int | None = None,
            negative_sampler: str = "uniform", sparse_item_grad: bool = False, unknown_items: str = "error",
            temporal_split: Sequence[float] | None = None, hold_out: Callable[[], object] | None = None,
            batch_order: str = "by-length", init_hub: dict | None = None):
    """Everything :func:`train` does before its first epoch, in this order: check the settings and the ``--out`` path
    (nothing read or written yet), call ``hold_out`` (:func:`train` creates ``out`` there and takes its lock:
    :func:`hold_output_folder`), check what ``out`` holds (:func:`check_output_folder`; with ``resume``: read its
    resume state and check the settings against the interrupted run's), seed, read the data, build (or load
    ``init_from`` and fit the data to its item vocabulary: :func:`fit_data_to_checkpoint`) the model, split the data,
    cut the training windows. Writes nothing in ``out``.

    Returns ``(preset, device, dataset, split, model, config_overrides, init_config_changes, windows, resumed,
    sampler, init_items)``, ``resumed`` being ``(folder, state, tensors)`` of the resume state or ``None``,
    ``sampler`` the :class:`~zoo.losses.NegativeSampler` of a sampled-softmax run or ``None``, ``init_items`` what
    fitting the data to the ``init_from`` checkpoint's vocabulary did (``None`` without ``init_from``). ``init_hub``:
    ``{"revision", "subfolder"}`` of ``init_from`` (``--revision`` / ``--subfolder``), as ``from_pretrained`` takes
    them; every read of the checkpoint honours them."""
    from . import train_state
    from .data import item_counts, load_dataset, training_windows
    from .losses import LOSSES, SAMPLERS, NegativeSampler
    from .modeling_utils import resolve_device
    from .models import get_model_class

    lr_factor(lr_schedule, 0.0)                                    # validate the names before any work
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if negative_sampler not in SAMPLERS:
        raise ValueError(f"negative sampler must be one of {SAMPLERS}, got {negative_sampler!r}")
    if loss == "ce" and (negatives is not None or negative_sampler != "uniform"):
        raise ValueError("--negatives / --negative-sampler are for --loss sampled-softmax; the full cross-entropy "
                         "scores every item")
    if sparse_item_grad and loss != "sampled-softmax":
        raise ValueError("--sparse-item-grad is for --loss sampled-softmax: the full cross-entropy reads every row of "
                         "the item table, so its gradient is dense")
    if negatives is not None and (isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 1):
        raise ValueError(f"--negatives must be an int >= 1, got {negatives!r}")
    if unknown_items not in UNKNOWN_ITEMS:
        raise ValueError(f"unknown_items must be one of {UNKNOWN_ITEMS}, got {unknown_items!r}")
    init_hub = {k: v for k, v in (init_hub or {}).items() if v is not None and v != ""}
    if init_hub and not init_from:
        raise ValueError(f"--{next(iter(init_hub))} says which checkpoint --init-from names: give --init-from")
    if unknown_items != "error" and not init_from:
        raise ValueError(f"--unknown-items {unknown_items} is for --init-from: a fresh model's item vocabulary is the "
                         "data's own, so no item is unknown")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    check_run_fields(dict(config_overrides or {}))
    check_config_overrides(get_model_class(model_type)[0], dict(config_overrides or {}))
    window = (config_overrides or {}).get("max_seq_length")
    if max_len is not None and window is not None and (window != max_len or isinstance(window, bool)):
        raise ValueError(f"--max-len {max_len} and max_seq_length={window!r} (--set or --config) disagree: give the "
                         "window once")
    if decay_over not in DECAY_HORIZONS:
        raise ValueError(f"decay_over must be one of {DECAY_HORIZONS}, got {decay_over!r}")
    if decay_over == "budget" and not max_minutes:
        raise ValueError("--decay-over budget paces the learning-rate decay by the time budget: give --max-minutes")
    if decay_over == "budget" and lr_schedule == "constant":
        raise ValueError("--decay-over budget: the constant schedule has no decay; choose --lr-schedule linear or cosine")
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out; --overwrite would replace it: give one")
    loss_scale(torch.ones(1, 1, dtype=torch.long), 1.0, loss_weighting)
    if batch_order not in BATCH_ORDERS:
        raise ValueError(f"batch_order must be one of {BATCH_ORDERS}, got {batch_order!r}")
    cloze = training_objective(model_type) == "cloze"         # BERT4Rec's masked-item objective (the class says)
    if loss_weighting == "target" and cloze:
        raise ValueError(f"--loss-weighting target: {_objective_owner(model_type)}'s Cloze loss is not a mean over the "
                         "labelled positions")
    if window_stride is not None and cloze:
        raise ValueError(f"--window-stride: {_objective_owner(model_type)}'s Cloze objective does not use per-position "
                         "targets, so overlapping windows would only repeat masked items; use the default "
                         "non-overlapping windows")
    preset = dict(TRAIN_PRESETS.get(model_type, DEFAULT_PRESET))
    for k, v in dict(optimizer=optimizer, lr=lr, weight_decay=weight_decay, batch_size=batch_size, clip=clip).items():
        if v is not None:
            preset[k] = v
    _check_numbers(epochs=epochs, batch_size=preset["batch_size"], lr=preset["lr"], clip=preset["clip"],
                   weight_decay=preset["weight_decay"], max_minutes=max_minutes, valid_users=valid_users,
                   eval_every=eval_every, patience=patience)
    device = resolve_device(device)
    if amp and device.type != "cuda":
        raise ValueError(f"amp (bfloat16 autocast) is for CUDA; the run is on {device}")
    check_outputs({"--out": out}, {"--data": data}, folders=True)      # a file there, or a place that cannot be written
    if hold_out is not None:    # --out made and locked: a live run's folder is refused here, before it is looked into
        hold_out()
    resumed = None
    if resume:
        folder = train_state.resume_dir(out)
        if folder is None:
            raise ValueError(no_resume_state(out))
        with _run_inputs():
            state, tensors = train_state.load(folder)
        train_state.check_settings(state["settings"], settings or {})
        # its checkpoint is the run's own best so far
        check_output_folder(out, init_from, overwrite=True, init_hub=init_hub)
        with _run_inputs():                                       # ... unless another run or a copy replaced it
            note = train_state.check_checkpoint(out, folder, state)
        if note:
            print(f"[zoo.train] note: {note}", flush=True)
        resumed = (folder, state, tensors)
    else:
        check_output_folder(out, init_from, overwrite, init_hub=init_hub)
    set_seed(seed)
    with _run_inputs():
        ds = load_dataset(data, kcore=kcore, time_ties=time_ties, columns=columns)
    model_cls = get_model_class(model_type)[1]
    overrides = dict(config_overrides or {})
    if max_len is not None:
        overrides.setdefault("max_seq_length", max_len)
    init_changes: dict = {}
    init_items = None
    if init_from:  # continue from a checkpoint (e.g. a bundled model trained in an earlier, time-limited run)
        with _run_inputs():                 # a checkpoint that cannot be found or read
            try:
                # float32 whatever the checkpoint was saved in: Adam in float16 turns the weights to NaN within an
                # epoch, bfloat16 trains coarsely and saves bf16 weights (--amp is the way to low precision)
                model = model_cls.from_pretrained(init_from, dtype=torch.float32, **init_hub)
            except (OSError, ValueError) as e:
                from .cli import error_text

                raise ValueError(f"--init-from {init_from}: {error_text(e)}") from e
        # data items the checkpoint lacks: a usage error, settled by --unknown-items
        ds, init_items = fit_data_to_checkpoint(ds, model, unknown_items, f"--init-from {init_from}")
        model, init_changes = apply_config_overrides(model, overrides, f"--init-from {init_from}")
        model = model.to(device)
        saved_dtype = _saved_dtype(init_from, **init_hub)
        if saved_dtype not in (None, "float32"):
            print(f"[zoo.train] --init-from {init_from} holds {saved_dtype} weights: loaded and trained in float32 "
                  "(--amp for mixed precision)", flush=True)
        print(f"[zoo.train] initialised from {init_from}"
              + "".join(f"; {k} {a!r} -> {b!r}" for k, (a, b) in init_changes.items()), flush=True)
        if init_items["note"]:
            print(f"[zoo.train] item vocabulary: {init_items['note']}", flush=True)
    else:
        overrides.setdefault("max_seq_length", 200)
        model = build_model(model_type, ds.vocab.n_items, overrides).to(device)
    model.set_item_vocab(ds.vocab)
    with _run_inputs():
        if model.uses_timestamps:   # the model's own answer: TiM4Rec with is_time=False reads none (its class's is a
            ds.check_timestamps_for(type(model).__name__)   # property, which was taken for True)
        if resumed:     # the same file name is not the same data: an edited file would continue on other data
            was = (resumed[1].get("log") or {}).get("dataset")
            now = ds.stats()
            if isinstance(was, dict):       # a log written before stats() held the load's counts: the keys it has
                now = {k: v for k, v in now.items() if k in was}
            if isinstance(was, dict) and was != now:
                diff = "; ".join(f"{k}: the run's {was.get(k)!r}, now {now.get(k)!r}" for k in now
                                 if was.get(k) != now.get(k))
                raise ValueError(f"--resume: {data} is not the data the run trained on ({diff}): resume with the "
                                 "run's data, or start a new run")
    from .evaluate import split_data

    split = split_data(ds, temporal_split)          # leave-one-out, or the temporal split at those shares
    windows = training_windows(split.train, model.config.max_seq_length,
                               split.train_timestamps if model.uses_timestamps else None, stride=window_stride)
    sampler = None
    if loss == "sampled-softmax":
        n_items = int(model.config.n_items)
        num = DEFAULT_NEGATIVES if negatives is None else negatives
        if negatives is not None and negatives > n_items - 1:     # refused before the sampler draws [K] per batch
            raise ValueError(f"--negatives {negatives}: the catalogue holds {n_items - 1:,} items; use --negatives <= "
                             f"{n_items - 1}, or --loss ce (the full cross-entropy: exact, and cheaper at that size)")
        if num >= n_items - 1:
            print(f"[zoo.train] note: --negatives {num} draws as many items as the catalogue holds ({n_items - 1:,}): "
                  "the full cross-entropy (--loss ce) is exact and cheaper", flush=True)
        counts = item_counts(split.train, n_items) if negative_sampler == "popularity" else None
        sampler = NegativeSampler(n_items, num, negative_sampler, counts, device=device)
    if sparse_item_grad:        # refused here, before any epoch, when the output layer is not the item table
        model.set_sparse_item_grad()
        preset["sparse_item_grad"] = True
    return preset, device, ds, split, model, overrides, init_changes, windows, resumed, sampler, init_items


def no_resume_state(out: str | os.PathLike) -> str:
    """Why ``--resume`` finds no resume state in ``out``, as its run's ``train_log.json`` tells: the run finished, or
    it was cut before its first state was saved (its log has epochs but no ``stopped``), or none ran there."""
    try:
        with open(os.path.join(out, "train_log.json"), encoding="utf-8") as f:
            log = json.load(f)
    except (OSError, ValueError):
        log = None
    if not isinstance(log, dict):
        return (f"--resume: {out} holds no resume state (no run was started there, or it was cut before its first "
                "epoch ended)")
    if "stopped" in log:
        return (f"--resume: {out} holds no resume state: its run finished ({log['stopped']}) and was tested; start a "
                "new run in a new folder, or with --overwrite")
    return (f"--resume: {out} holds no resume state: its run was interrupted before its first resume state was saved "
            f"(its train_log.json has {len(log.get('epochs') or [])} epoch(s) and no \"stopped\"), so it cannot be "
            "continued: start it again with --overwrite")


UNKNOWN_ITEMS = ("error", "add", "drop")
"""``zoo.train --init-from CKPT --unknown-items``: what to do with data items the checkpoint's vocabulary lacks."""


def fit_data_to_checkpoint(ds, model, unknown_items: str = "error", where: str = "--init-from") -> tuple:
    """Index ``ds`` with the item vocabulary of the checkpoint ``model`` that training continues from.

    Items the checkpoint knows keep its indices (the data may hold them in any order, or only some of them: the
    checkpoint's other items stay in the catalogue, ranked at evaluation, never a target here). Items it lacks:
    ``unknown_items="error"`` refuses, counting them; ``"add"`` grows the model's vocabulary and item rows
    (:meth:`~zoo.modeling_utils.SeqRecPreTrainedModel.add_items`: new rows start at the mean item; the catalogue
    gained items); ``"drop"`` leaves their interactions out. Returns ``(dataset, info)``, ``info`` for the training
    log: the checkpoint's and the data's item counts, ``added`` items, ``dropped_interactions`` and a ``note``
    (empty when the vocabularies were equal)."""
    vocab = model.item_vocab
    if vocab is None:
        raise ValueError(f"{where}: the checkpoint has no item vocabulary, so the data's item ids cannot be matched "
                         "to its rows")
    info = {"checkpoint_items": len(vocab), "data_items": len(ds.vocab), "added": 0, "dropped_interactions": 0,
            "unknown_items": unknown_items, "note": ""}
    if vocab == ds.vocab:
        return ds, info
    unknown = [x for x in ds.vocab.items if x not in vocab]
    if unknown and unknown_items == "error":
        flat = np.concatenate(ds.sequences) if ds.sequences else np.zeros(0, np.int64)
        n_rows = int(np.isin(flat, ds.vocab.encode(unknown)).sum())
        from .data.split import _count
        raise ValueError(
            f"{where}: {len(unknown)} of the data's {_count(len(ds.vocab), 'item')} ({_count(n_rows, 'interaction')}) "
            f"{'is' if len(unknown) == 1 else 'are'} not in the checkpoint's item vocabulary "
            f"({_count(len(vocab), 'item')}), e.g. {unknown[:5]}: --unknown-items add gives them new rows (a catalogue "
            "that gained items), --unknown-items drop leaves their interactions out")
    if unknown and unknown_items == "add":
        try:
            info["added"] = len(model.add_items(unknown))
        except TypeError as e:                  # str ids ('abc', '007') that an int vocabulary cannot hold
            raise ValueError(
                f"{where}: the data's item ids are strings (e.g. {unknown[:3]}) that the checkpoint's int item "
                f"vocabulary cannot add ({e}); --unknown-items drop leaves their interactions out") from None
    before = ds.n_interactions
    ds = ds.reencode(model.item_vocab, unknown="drop" if unknown_items == "drop" else "error")
    info["dropped_interactions"] = before - ds.n_interactions
    parts = [f"the data's {info['data_items']:,} items indexed with the checkpoint's {info['checkpoint_items']:,}"]
    if info["added"]:
        parts.append(f"{info['added']:,} new items added (rows {info['checkpoint_items'] + 1:,}.."
                     f"{len(model.item_vocab):,}, starting at the mean item)")
    if unknown and unknown_items == "drop":
        parts.append(f"{len(unknown):,} unknown items dropped with their {info['dropped_interactions']:,} "
                     "interactions")
    known_unused = len(model.item_vocab) - info["added"] - (info["data_items"] - len(unknown))
    if known_unused:
        parts.append(f"{known_unused:,} checkpoint items absent from the data stay in the catalogue")
    info["note"] = "; ".join(parts)
    return ds, info


def train(model_type: str, data: str, out: str, epochs: int = 200, patience: int = 10, seed: int = 2020,
          max_len: int | None = None, config_overrides: dict | None = None, optimizer: str | None = None,
          lr: float | None = None, weight_decay: float | None = None, batch_size: int | None = None,
          clip: float | None = None, device: str | None = None, amp: bool = False, max_minutes: float | None = None,
          valid_users: int | None = None, exclude_history: bool = False, kcore="auto", progress: bool = True,
          command: str | None = None, init_from: str | None = None, lr_schedule: str = "constant",
          window_stride: int | None = None, loss_weighting: str = "window", eval_every: int = 1,
          decay_over: str = "epochs", overwrite: bool = False, resume: bool = False,
          time_ties: str = "file", warmup_steps: int = 0, columns: dict | None = None, loss: str = "ce",
          negatives: int | None = None, negative_sampler: str = "uniform", sparse_item_grad: bool = False,
          unknown_items: str = "error", temporal_split: Sequence[float] | None = None,
          batch_order: str = "by-length", init_revision: str | None = None, init_subfolder: str = "") -> dict:
    """Train, early-stop on validation NDCG@10, save the best checkpoint to ``out``, test it; returns the log.

    After every epoch the run's full state goes to ``out/resume/`` (:mod:`zoo.train_state`); ``resume=True``, with
    the same settings (``max_minutes`` and ``device`` may change), continues an interrupted or budget-stopped run
    from its last completed epoch exactly as if it had not stopped: same weights, optimizer moments, learning-rate
    position, shuffling and dropout draws, early-stopping counters, and time used (the budget counts it).

    ``lr_schedule`` (``constant`` / ``linear`` / ``cosine``) scales the learning rate per batch over the planned
    ``epochs`` (see :func:`lr_factor`); with ``max_minutes`` set, choose ``epochs`` so that they fit the budget (after
    the first epoch a note says where the budget will stop the schedule), or pace the decay by the clock with
    ``decay_over="budget"`` (:func:`schedule_progress`: the decay ends at the budget or the last epoch, whichever
    comes first). ``warmup_steps`` ramps the learning rate linearly from ``lr / warmup_steps`` to the schedule's value
    over the run's first optimizer steps (:func:`warmup_factor`; 0: no warmup).
    ``eval_every`` (RecBole's ``eval_step``) validates every that many epochs, and always after the last epoch and
    when the time budget ends; the run stops at the ``patience``-th validation in a row without a gain (a valid
    NDCG@10 above the best so far), where RecBole's ``stopping_step`` S stops at the (S + 1)-th (``cur_step >
    max_step``): ``patience`` P matches ``stopping_step`` P - 1.
    ``batch_order`` (:data:`BATCH_ORDERS`) is how the shuffled windows form batches: ``by-length`` (default, what every
    card was trained with) groups windows of similar length (:func:`zoo.data.iterate_batches` ``bucket_by_length``:
    little padding, but a batch holds users of similar history length), ``random`` draws each batch's windows at
    random, as RecBole's batches of prefixes are (each batch padded to its longest window: slower epochs); it is
    recorded in the log (``batch_order``, beside ``window_stride`` and ``loss_weighting``) and is a setting a
    ``resume`` must match.
    ``init_revision`` / ``init_subfolder`` (``--revision`` / ``--subfolder``) say which checkpoint ``init_from``
    names, as ``from_pretrained``'s ``revision=`` / ``subfolder=`` (recorded in the log, and settings a ``resume``
    must match, when given).
    A run started ``init_from`` a checkpoint first validates that checkpoint (logged as ``init_valid_NDCG10``) and
    says at the end when no epoch beat it. ``out`` must not already hold a checkpoint or an interrupted run's resume
    state unless ``overwrite`` (which discards that state before the first epoch), and never a model card (see
    :func:`check_output_folder`). ``out`` is created when missing and locked from then until the run's last write
    (:func:`hold_output_folder`): a second run into it while this one lives -- ``resume`` and ``overwrite`` runs
    too -- is refused at once (a :class:`RunSetupError` with exit code 1 whose cause is
    :class:`export.fsutil.FolderBusy`), before it reads the data or anything in ``out``; a failed run removes the
    ``out`` it created where it is still empty. ``kcore``, ``time_ties`` and ``columns``
    (:func:`zoo.data.load_dataset`) are kept in the log's ``data_options``, so that ``zoo.hub card`` evaluates the
    checkpoint on the same sequences.
    ``loss`` is ``ce`` (cross-entropy over all items) or ``sampled-softmax`` (each target against ``negatives``
    items shared by the batch, drawn by ``negative_sampler``; :mod:`zoo.losses`; a ``negatives`` above the catalogue,
    ``n_items - 1``, is refused), for catalogues too large to score whole at every target; validation and test
    always rank the full catalogue. ``sparse_item_grad`` (sampled softmax only) gives the item table a sparse
    gradient and updates it by lazy Adam (:class:`SparseItemOptimizer`): only the rows a batch read move, which is
    what keeps a step cheap on a catalogue of millions.
    A run whose numbers overflow (a NaN or infinite loss, an optimizer step that overflows, NaN or infinite scores in
    validation) ends with a :class:`TrainingDiverged` at once, ``out`` keeping what it held (:func:`_diverged`); a
    starting or best checkpoint whose scores overflow is a :class:`zoo.evaluate.ScoreOverflow`."""
    from tqdm.auto import tqdm

    from export.fsutil import FolderBusy

    from . import train_state
    from .data import iterate_batches, load_options
    from .evaluate import ScoreOverflow, evaluate_model, evaluate_popularity
    from .metrics import default_ks
    from .losses import describe_loss

    t0 = time.time()
    # which checkpoint init_from names (--revision / --subfolder): only when given, so a run without them (and the
    # resume state of one) records the settings it always did
    init_hub = {k: v for k, v in (("init_revision", init_revision), ("init_subfolder", init_subfolder))
                if v is not None and v != ""}
    # what a resumed run must share with the run it continues (JSON form, as the resume state keeps it): strict
    # JSON, so a setting that is NaN or infinite and that no check of _set_up refuses first (--clip inf,
    # --max-minutes inf) is refused with them, before --out is made (hold_out), not as a traceback after training
    unrecordable = None
    try:
        settings = json.loads(strict_json(dict(
            model_type=model_type, data=os.path.abspath(data), epochs=epochs, patience=patience, seed=seed,
            max_len=max_len, config_overrides=dict(config_overrides or {}), optimizer=optimizer, lr=lr,
            weight_decay=weight_decay, batch_size=batch_size, clip=clip, device=device, amp=amp,
            max_minutes=max_minutes, valid_users=valid_users, exclude_history=exclude_history, kcore=kcore,
            progress=progress, command=command,
            init_from=init_from, lr_schedule=lr_schedule, window_stride=window_stride, loss_weighting=loss_weighting,
            eval_every=eval_every, decay_over=decay_over, time_ties=time_ties, warmup_steps=warmup_steps,
            columns=columns, loss=loss, negatives=negatives, negative_sampler=negative_sampler,
            sparse_item_grad=sparse_item_grad, unknown_items=unknown_items,
            temporal_split=list(temporal_split) if temporal_split else None, batch_order=batch_order,
            **init_hub)))
    except ValueError as e:                 # "clip is inf, which is not a JSON number (...)"
        settings, unrecordable = None, ValueError(
            f"{e}; the run records its settings in train_log.json and its resume state: give a finite value")

    def hold_out() -> None:                 # every other setting checked by _set_up; nothing made or read yet
        if unrecordable is not None:
            raise unrecordable
        held.enter_context(hold_output_folder(out))

    with contextlib.ExitStack() as held:    # --out made and locked (in _set_up) to the run's last write
        try:
            (preset, device, ds, split, model, overrides, init_changes, windows, resumed, sampler,
             init_items) = _set_up(
                model_type, data, out, epochs=epochs, patience=patience, seed=seed, max_len=max_len,
                config_overrides=config_overrides, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                batch_size=batch_size, clip=clip, device=device, amp=amp, max_minutes=max_minutes,
                valid_users=valid_users, kcore=kcore, init_from=init_from, lr_schedule=lr_schedule,
                window_stride=window_stride, loss_weighting=loss_weighting, eval_every=eval_every,
                decay_over=decay_over, overwrite=overwrite, resume=resume, settings=settings, time_ties=time_ties,
                warmup_steps=warmup_steps, columns=columns, loss=loss, negatives=negatives,
                negative_sampler=negative_sampler, sparse_item_grad=sparse_item_grad, unknown_items=unknown_items,
                temporal_split=temporal_split, hold_out=hold_out, batch_order=batch_order,
                init_hub={"revision": init_revision, "subfolder": init_subfolder})
        except RunSetupError:                   # an input that failed (RunInputError, exit 1): as it is
            raise
        except FolderBusy as e:                 # another live run writes into --out (exit 1)
            raise RunSetupError(str(e), EXIT_ERROR) from e
        except (ValueError, OSError) as e:      # a refused setting (exit 2), or a GPU this machine lacks (4)
            from .modeling_utils import DeviceUnavailableError

            raise RunSetupError(str(e), EXIT_MISSING if isinstance(e, DeviceUnavailableError) else EXIT_USAGE) from e
        valid = split.valid if valid_users is None else split.valid.head(valid_users)

        def validate(m) -> dict:
            return evaluate_model(m, valid, ks=(10,), exclude_history=exclude_history, progress=False, any_ks=True)

        opt = make_optimizer(model, preset["optimizer"], preset["lr"], preset["weight_decay"],
                             sparse_items=preset.get("sparse_item_grad", False))
        preset["lr_schedule"] = lr_schedule
        if warmup_steps:
            preset["warmup_steps"] = warmup_steps
        if decay_over == "budget":
            preset["decay_over"] = f"{TIME_BUDGET} of {max_minutes} minutes"
        n_params = sum(p.numel() for p in model.parameters())
        # a Cloze objective (BERT4Rec's) predicts a random subset of the window items each epoch, not each of them
        what = ("window items (Cloze: a random subset predicted per epoch)"
                if training_objective(model_type) == "cloze" else "targets")
        print(f"[zoo.train] {model_type}: {n_params:,} parameters | data {ds.name}: {ds.n_users:,} users, "
              f"{ds.n_items:,} items, {ds.n_interactions:,} interactions | {len(windows):,} training windows, "
              f"{windows.n_positions:,} {what} ({windows.n_computed:,} positions computed, stride {windows.stride}) | "
              f"device {device} | {preset}", flush=True)
        if ds.load_note():          # what the k-core removed from the file's rows, users and items; repeated rows
            print(f"[zoo.train] data {ds.name}: {ds.load_note()}", flush=True)
        if sampler is not None:
            print(f"[zoo.train] loss: {sampler.describe()}", flush=True)
        if preset.get("sparse_item_grad"):
            print(f"[zoo.train] item table: {SPARSE_ITEMS_TEXT}" + (
                f"; it is not decayed (weight decay {preset['weight_decay']:g} applies to the other parameters)"
                if preset["weight_decay"] else ""), flush=True)
        if not resumed:     # an earlier run's state (--overwrite discards it) must not resume beside this run's weights
            train_state.remove(out)
        loss_spec = {"type": "ce"} if sampler is None else sampler.spec
        log = {"model_type": model_type, "data": os.path.abspath(data), "dataset": ds.stats(),
               "data_options": load_options(kcore, time_ties, columns), "seed": seed,
               "split": {"kind": split.kind, **({"cuts": split.cuts} if split.cuts else {})},
               "train": preset, "config_overrides": overrides, "epochs": [], "command": command,
               "objective": describe_objective(model_type, windows.max_len, windows.stride, model.config.to_dict(),
                                               describe_loss(loss_spec)),
               "loss": loss_spec,
               "window_stride": windows.stride, "loss_weighting": loss_weighting, "batch_order": batch_order,
               "environment": environment(), "n_parameters": n_params, "init_from": init_from, "eval_every": eval_every,
               "cwd": os.getcwd()}                # where a relative --init-from is found again (zoo.hub's stage table)
        if init_from:       # the weights it starts from: a card folder replaced later no longer holds them
            from .pretrained import resolve_pretrained, weights_sha256

            log["init_weights_sha256"] = weights_sha256(resolve_pretrained(
                init_from, revision=init_revision, subfolder=init_subfolder or ""))
            log.update(init_hub)        # init_revision / init_subfolder, when given
        if init_changes:
            log["init_config_changes"] = {k: list(v) for k, v in init_changes.items()}
        if init_items and init_items["note"]:   # the data's items were re-indexed, grown or dropped for the checkpoint
            log["init_items"] = init_items
        targets_per_batch = windows.n_positions / len(windows) * preset["batch_size"]
        logits_bytes = targets_per_batch * int(model.config.n_items) * 4
        if sampler is None and logits_bytes > LARGE_LOGITS_BYTES:
            print(f"[zoo.train] note: the full cross-entropy scores {int(model.config.n_items) - 1:,} items at every "
                  f"target: about {logits_bytes / 2**30:.1f} GiB of logits per batch of {preset['batch_size']} "
                  "windows, as much again for their gradient; --loss sampled-softmax scores each target against "
                  "--negatives items instead (bench/RESULTS_SAMPLED_SOFTMAX_QUALITY.md)", flush=True)
        best, best_epoch, bad, start_epoch = -1.0, -1, 0, 1
        ended = None                    # a resumed run's stop reason, when it had stopped before it was cut
        gen = np.random.default_rng(seed)
        if resumed:                 # continue the interrupted run: its weights, optimizer, generators, counters, log
            folder, state, tensors = resumed
            try:
                train_state.restore(folder, state, tensors, model, opt, gen)
            except ValueError as e:                     # a truncated or foreign file: refused before any epoch
                raise RunInputError(str(e)) from e
            done = state["progress"]
            best, best_epoch, bad, start_epoch = done["best"], done["best_epoch"], done["bad"], done["epoch"] + 1
            t0 = time.time() - done["elapsed_s"]
            log = state["log"]
            log.setdefault("batch_order", batch_order)  # a state saved before it was logged: by-length (check_settings)
            log.setdefault("resumed", []).append({"after_epoch": done["epoch"], "command": command,
                                                  "max_minutes": max_minutes})
            # a run that had stopped (and was cut in its test evaluation, or budget-stopped) trains no further epoch, as
            # the uncut run trained none; a budget-stopped one given a budget with time left goes on. A state saved
            # before "stopped" was kept had stopped early when its count had reached the patience.
            ended = done.get("stopped") or (stop_text(patience, eval_every) if bad >= patience else None)
            if ended and ended.startswith(TIME_BUDGET):
                ended = f"{TIME_BUDGET} of {max_minutes} minutes reached" if (
                    max_minutes and done["elapsed_s"] >= max_minutes * 60) else None
            print(f"[zoo.train] resuming {out} after epoch {done['epoch']} ({done['elapsed_s'] / 60:.1f} minutes used; "
                  + (f"best valid NDCG@10 {best:.4f} at epoch {best_epoch})" if best_epoch >= 0
                     else "no validation yet)")
                  + (f"; the run had stopped ({ended}): testing its best checkpoint" if ended else ""), flush=True)
        elif init_from:  # where this stage starts, so that a stage that only lost ground says so
            start = validate(model)
            log["init_valid_NDCG10"] = start["NDCG@10"]
            print(f"[zoo.train] starting checkpoint: valid NDCG@10 {start['NDCG@10']:.4f} HR@10 {start['HR@10']:.4f}",
                  flush=True)
        if "popularity_valid_NDCG10" not in log:   # a resumed run's log has it already (unless it predates it)
            # the floor: the most-popular ranking on the same validation examples (below it, no order was learnt)
            log["popularity_valid_NDCG10"] = evaluate_popularity(split.train, valid, int(model.config.n_items),
                                                                 ks=(10,),
                                                                 exclude_history=exclude_history,
                                                                 max_len=int(model.config.max_seq_length),
                                                                 any_ks=True)["NDCG@10"]
        print(f"[zoo.train] most-popular baseline: valid NDCG@10 {log['popularity_valid_NDCG10']:.4f}", flush=True)

        from .pretrained import weights_sha256

        checkpoint_sha = weights_sha256(out)        # the checkpoint the state belongs to (train_state.check_checkpoint)

        def keep_state(epoch: int, stopped: str | None = None) -> None:
            train_state.save(out, model, opt, gen, {"epoch": epoch, "best": best, "best_epoch": best_epoch, "bad": bad,
                                                    "elapsed_s": time.time() - t0, "stopped": stopped,
                                                    "checkpoint_sha256": checkpoint_sha}, settings, log)

        deadline = t0 + max_minutes * 60 if max_minutes else None
        stopped = "max epochs"
        if ended:
            stopped, start_epoch = ended, epochs + 1                    # straight to the test of the best checkpoint
        for epoch in range(start_epoch, epochs + 1):
            model.train()
            te = time.time()
            total, count = 0.0, 0
            batches = iterate_batches(windows, preset["batch_size"], model.padding_side, shuffle=True, generator=gen,
                                      bucket_by_length=batch_order == "by-length")
            n_batches = math.ceil(len(windows) / preset["batch_size"])
            bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch}", leave=False,
                       disable=None if progress else True)                 # None: a bar on a terminal only
            for i_batch, batch in enumerate(bar):
                if lr_schedule != "constant" or warmup_steps:
                    step = (epoch - 1) * n_batches + i_batch
                    f = lr_factor(lr_schedule, schedule_progress(step, epochs * n_batches, time.time() - t0,
                                                                 max_minutes * 60 if decay_over == "budget" else None))
                    f *= warmup_factor(step, warmup_steps)
                    for group in opt.param_groups:
                        group["lr"] = preset["lr"] * f
                batch = {k: v.to(device) for k, v in batch.items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                    loss = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"],
                                 timestamps=batch.get("timestamps"),
                                 negatives=sampler.sample() if sampler is not None else None,
                                 return_dict=True).loss     # a --init-from config may say return_dict: false
                opt.zero_grad(set_to_none=True)
                (loss * loss_scale(batch["labels"], targets_per_batch, loss_weighting)).backward()
                if preset["clip"]:
                    clip_grad_norm(model.parameters(), preset["clip"])
                try:
                    opt.step()
                except RuntimeError as e:               # Adam's step size overflowed float32 (an enormous --lr)
                    if "overflow" not in str(e):
                        raise
                    bar.close()
                    raise _diverged(epoch, f"the optimizer step overflowed: {e}", out, preset["lr"], preset["clip"],
                                    best_epoch, best, clip_helps=False) from e
                value = loss.item()
                if not math.isfinite(value):            # its gradient has made the weights NaN: nothing to go on with
                    bar.close()
                    raise _diverged(epoch, f"the training loss is {value} at batch {i_batch + 1}", out, preset["lr"],
                                    preset["clip"], best_epoch, best)
                total += value
                count += 1
                bar.set_postfix(loss=f"{total / count:.4f}")
            row = {"epoch": epoch, "loss": total / max(count, 1)}
            log["epochs"].append(row)
            if epoch == 1 and deadline and lr_schedule != "constant" and decay_over == "epochs":
                _note_budget_vs_schedule(time.time() - te, deadline - te, epochs, lr_schedule)
            if epoch % eval_every and epoch != epochs and not (deadline and time.time() > deadline):  # no validation
                row["seconds"] = time.time() - te
                print(f"[zoo.train] epoch {epoch:3d} loss {row['loss']:.4f} ({row['seconds']:.0f}s)", flush=True)
                keep_state(epoch)
                continue
            try:
                metrics = validate(model)
            except ScoreOverflow as e:
                raise _diverged(epoch, "NaN or infinite scores in validation", out, preset["lr"], preset["clip"],
                                best_epoch, best) from e
            ndcg = metrics["NDCG@10"]
            row.update({"valid_NDCG@10": ndcg, "valid_HR@10": metrics["HR@10"], "seconds": time.time() - te})
            improved = ndcg > best
            if improved:
                best, best_epoch, bad = ndcg, epoch, 0
                train_state.note_checkpoint(out, epoch)     # a cut before the next state: the checkpoint is the run's
                model.save_pretrained(out)
                checkpoint_sha = weights_sha256(out)
            else:
                bad += 1
            print(f"[zoo.train] epoch {epoch:3d} loss {row['loss']:.4f} valid NDCG@10 {ndcg:.4f} HR@10 "
                  f"{metrics['HR@10']:.4f} ({row['seconds']:.0f}s){' *' if improved else ''}", flush=True)
            write_log(out, log)                 # an interruption keeps the last whole log
            ending = stop_text(patience, eval_every) if bad >= patience else \
                f"{TIME_BUDGET} of {max_minutes} minutes reached" if deadline and time.time() > deadline else \
                "max epochs" if epoch == epochs else None
            keep_state(epoch, ending)          # with the reason: a resume after a cut in the test goes straight to it
            if ending:
                stopped = ending
                break
        from .models import get_model_class

        best_model = get_model_class(model_type)[1].from_pretrained(out).to(device)
        test = evaluate_model(best_model, split.test, ks=default_ks(best_model.config.n_items - 1),
                              exclude_history=exclude_history, progress=progress)
        log.update(best_epoch=best_epoch, best_valid_NDCG10=best, stopped=stopped, test=test,
                   protocol={"split": ("leave-one-out by time (RecBole LS valid_and_test)" if split.kind != "temporal"
                                       else f"temporal: {split.cuts}"), "ranking": "full",
                             "history_masked": exclude_history},
                   train_minutes=(time.time() - t0) / 60)
        write_log(out, log)
        if stopped.startswith(TIME_BUDGET):
            print(f"[zoo.train] the run's state is kept in {os.path.join(out, train_state.RESUME_DIR)}: the same "
                  "command with --resume and a larger --max-minutes continues it", flush=True)
        else:
            train_state.remove(out)
        if best <= log["popularity_valid_NDCG10"]:
            print(f"[zoo.train] WARNING: the best epoch (valid NDCG@10 {best:.4f}) does not beat the most-popular "
                  f"baseline ({log['popularity_valid_NDCG10']:.4f}): the model has not learnt the order of the "
                  "histories (too few epochs, a learning rate too high or low, or data whose order carries nothing)",
                  flush=True)
        if init_from and "init_valid_NDCG10" in log and best <= log["init_valid_NDCG10"]:
            print(f"[zoo.train] note: no epoch beat the starting checkpoint on validation (best NDCG@10 {best:.4f} at "
                  f"epoch {best_epoch}, {log['init_valid_NDCG10']:.4f} at the start): {init_from} remains the better "
                  "model", flush=True)
        print(f"[zoo.train] done ({stopped}); best epoch {best_epoch}; test: "
              + " ".join(f"{k} {v:.4f}" for k, v in test.items() if "Recall" not in k), flush=True)
        return log


def stop_text(patience: int, eval_every: int) -> str:
    """The log's ``stopped`` text of a run stopped early."""
    return (f"early stopping: no valid NDCG@10 gain for {patience} validations (every {eval_every} epochs)"
            if eval_every > 1 else f"early stopping: no valid NDCG@10 gain for {patience} epochs")


#: the flag of each training parameter whose name starts a refusal's message (``epochs must be >= 1``; the training
#: windows' ``stride``), so that ``python -m zoo.train`` names the flag (:func:`zoo.cli.flag_named`)
NUMBER_FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "clip": "--clip",
                "weight_decay": "--weight-decay", "max_minutes": "--max-minutes", "valid_users": "--valid-users",
                "eval_every": "--eval-every", "patience": "--patience", "stride": "--window-stride"}


def _check_numbers(epochs: int, batch_size: int, lr: float, clip: float, weight_decay: float,
                   max_minutes: float | None, valid_users: int | None, eval_every: int, patience: int) -> None:
    """Refuse numbers that would fail late or train silently wrong (a negative clip norm flips the gradients'
    sign in ``clip_grad_norm_``; a zero budget or ``--valid-users 0`` would otherwise mean "one epoch" / "all")."""
    bad = []
    if int(epochs) < 1:
        bad.append(f"epochs must be >= 1, got {epochs}")
    if int(batch_size) < 1:
        bad.append(f"batch_size must be >= 1, got {batch_size}")
    if not (float(lr) >= 0.0 and math.isfinite(float(lr))):
        bad.append(f"lr must be >= 0 and finite, got {lr}")
    if not (float(clip) >= 0.0 and math.isfinite(float(clip))):
        bad.append(f"clip (gradient clip norm; 0 = off) must be >= 0 and finite, got {clip}")
    if not (float(weight_decay) >= 0.0 and math.isfinite(float(weight_decay))):
        bad.append(f"weight_decay must be >= 0 and finite, got {weight_decay}")
    if max_minutes is not None and not (float(max_minutes) > 0.0 and math.isfinite(float(max_minutes))):
        bad.append(f"max_minutes must be > 0 and finite (omit it for no budget), got {max_minutes}")
    if valid_users is not None and int(valid_users) < 1:
        bad.append(f"valid_users must be >= 1 (omit it to validate on every user), got {valid_users}")
    if int(eval_every) < 1:
        bad.append(f"eval_every must be >= 1 (validate every N epochs), got {eval_every}")
    if int(patience) < 1:
        bad.append(f"patience must be >= 1 (validations without a gain before stopping), got {patience}")
    if bad:
        raise ValueError("; ".join(bad))


CHECKPOINT_FILES = ("config.json", "model.safetensors", "train_log.json")
#: what makes a folder a model card (``zoo.hub card``, ``export.onnx --card-dir``): a run never trains into one
CARD_MARKERS = ("eval_results.json", "training_log.json", "onnx*/state_spec.json")


def card_files(out: str | os.PathLike) -> list[str]:
    """The :data:`CARD_MARKERS` in the folder ``out`` (relative paths), ``[]`` for a folder that is no card."""
    import glob

    return sorted(os.path.relpath(f, out) for pattern in CARD_MARKERS
                  for f in glob.glob(os.path.join(glob.escape(os.fspath(out)), pattern)))


def _saved_dtype(name_or_path: str, *, revision: str | None = None, subfolder: str = "") -> str | None:
    """The weights' dtype a checkpoint's ``config.json`` records (``"float16"``), or None where it records none or
    cannot be read (the load has read it already: this only words a note); ``revision`` / ``subfolder`` as
    ``from_pretrained`` takes them."""
    from .pretrained import resolve_pretrained

    try:
        with open(os.path.join(resolve_pretrained(name_or_path, revision=revision, subfolder=subfolder),
                               "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    dtype = cfg.get("dtype", cfg.get("torch_dtype")) if isinstance(cfg, dict) else None
    return dtype if isinstance(dtype, str) else None


@contextlib.contextmanager
def hold_output_folder(out: str | os.PathLike, option: str = "--out") -> Iterator[bool]:
    """:func:`export.fsutil.held_output_folder` for a run's ``out`` (a symbolic link to nothing is a ``ValueError``
    first): created where missing and locked until the block ends, so a second run into it fails at once with
    :class:`export.fsutil.FolderBusy`, before it reads or writes anything there; the folders this made are removed
    again where the block leaves them empty. ``zoo.train`` writes into ``out`` in place and never replaces the folder
    itself -- the checkpoint's files are moved in one by one from a stage inside it (``save_pretrained``),
    ``resume/`` is swapped inside it (:mod:`zoo.train_state`), ``train_log.json`` is replaced inside it -- so the
    lock on the folder's inode covers the whole run."""
    from export.fsutil import held_output_folder

    if os.path.islink(out) and not os.path.exists(out):
        raise ValueError(f"{option} {os.fspath(out)}: a symbolic link to nothing ({os.readlink(out)}); give a folder")
    with held_output_folder(out, option) as held:
        yield held


def check_output_folder(out: str | os.PathLike, init_from: str | None = None, overwrite: bool = False,
                        init_hub: dict | None = None) -> None:
    """Refuse, before any work, to write a run into a folder that already holds a run -- a checkpoint (one of
    :data:`CHECKPOINT_FILES`) or an interrupted run's resume state (``resume/``, whose run ``--resume`` continues) --
    unless ``overwrite``; and always into a model card folder (:data:`CARD_MARKERS`: its README, metrics and ONNX
    graphs would stay beside the new weights, describing another model) and into the folder the run starts from
    (``init_from``, in its ``init_hub["subfolder"]`` when given): the first validated epoch would replace the
    starting checkpoint, whether or not it is better."""
    from .pretrained import _bundled_for
    from .train_state import resume_dir

    sub = (init_hub or {}).get("subfolder") or ""
    start = None if not init_from else init_from if os.path.isdir(init_from) else (
        None if (init_hub or {}).get("revision") not in (None, "main") else _bundled_for(init_from))
    start = os.path.join(start, sub) if start is not None and sub else start
    if start is not None and os.path.isdir(out) and os.path.isdir(start) and os.path.samefile(out, start):
        # a folder, or a bundled Hub id (a --subfolder that is not there: the load names it)
        raise ValueError(f"--out {out} is the --init-from checkpoint: the run would overwrite the checkpoint it "
                         "starts from; choose a new folder")
    card = card_files(out)
    if card:
        raise ValueError(f"--out {out} is a model card folder ({', '.join(card)}): a run written there would leave the "
                         "card's README, metrics and ONNX graphs beside its new weights, even with --overwrite; train "
                         f"into a new folder, then card it with `python -m zoo.hub card --run NEW --out {out}`")
    found = [f for f in CHECKPOINT_FILES if os.path.exists(os.path.join(out, f))]
    state = resume_dir(out)
    if state is not None and not overwrite:
        held = f"a checkpoint ({', '.join(found)}) and " if found else ""
        raise ValueError(f"--out {out} already holds {held}an interrupted run's resume state "
                         f"({os.path.basename(state)}/): pass --resume with that run's command to continue it, or "
                         "--overwrite to discard it")
    if found and not overwrite:
        raise ValueError(f"--out {out} already holds a checkpoint ({', '.join(found)}): choose a new folder, or pass "
                         "--overwrite to replace it")


def _note_budget_vs_schedule(epoch_s: float, left_s: float, epochs: int, schedule: str) -> None:
    """After the first epoch: if the time budget will end a decaying schedule well before its last epoch, say where
    (and what the learning rate will still be), so the run can be restarted with fitting ``--epochs``."""
    fit = 1 + int(max(left_s - epoch_s, 0.0) / max(epoch_s, 1e-9))
    if fit >= 0.9 * epochs:
        return
    print(f"[zoo.train] note: at ~{epoch_s:.0f} s per training epoch (validations not counted) the time budget ends "
          f"by epoch {fit} of the planned {epochs}, where the {schedule} schedule is still at "
          f"{lr_factor(schedule, fit / epochs):.2f} x the base learning rate; --epochs {fit} (or fewer) finishes the "
          "decay, --decay-over budget paces it by the clock", flush=True)


def _preset_text(preset: dict) -> str:
    """``adam, lr 0.001, weight decay 0, batch 64, no clipping`` for ``--help``."""
    clip = f"clip {preset['clip']:g}" if preset["clip"] else "no clipping"
    return (f"{preset['optimizer']}, lr {preset['lr']:g}, weight decay {preset['weight_decay']:g}, "
            f"batch {preset['batch_size']}, {clip}")


def _preset_default(key: str) -> str:
    """``default: the model's preset (0.01 for lrurec, 0 for the others)``: the help's default of an optimisation
    option, from :data:`TRAIN_PRESETS` (a clip of 0 reads ``off``)."""
    def shown(v) -> str:
        return "off" if key == "clip" and not v else f"{v:g}" if isinstance(v, float) else str(v)

    others = shown(DEFAULT_PRESET[key])
    own = [f"{shown(v[key])} for {m}" for m, v in TRAIN_PRESETS.items() if shown(v[key]) != others]
    return f"default: the model's preset ({', '.join(own + [f'{others} for the others'])})" if own else \
        f"default: the model's preset, {others}"


#: the largest ``--seed`` (:func:`set_seed`: NumPy's legacy seed is a 32-bit unsigned int)
SEED_MAX = 2**32 - 1


def seed_int(value: str) -> int:
    """``--seed``: an int in ``0 .. SEED_MAX`` (:func:`zoo.cli.nonnegative_int`, then NumPy's bound), refused at parse
    naming the option -- not by ``np.random.seed`` once the run started, in words that name no option."""
    from .cli import nonnegative_int

    n = nonnegative_int(value)
    if n > SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an int in 0..{SEED_MAX} (2**32 - 1), got {value!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    from .cli import kcore as kcore_arg
    from .cli import (EXIT_CODES, add_columns_option, add_device_option, add_threads_option, command_prog,
                      nonnegative_int, positive_int)
    from .data import TIME_TIES
    from .losses import LOSSES, SAMPLERS
    from .models import MODELS
    from .pretrained import add_hub_options

    p = argparse.ArgumentParser(allow_abbrev=False,
                                prog=command_prog("zoo.train"), description=__doc__.split("\n\n")[0],
                                epilog=EXIT_CODES)
    run = p.add_argument_group("run")
    run.add_argument("--model", required=True,
                     help=f"the type of the new model: one of {', '.join(sorted(MODELS))} (to continue a trained "
                          "checkpoint, give its type here and the checkpoint as --init-from)")
    run.add_argument("--data", required=True, help="interaction file (.seq, .inter, ratings.dat, csv/tsv; .gz ok)")
    run.add_argument("--out", required=True, help="folder for the best checkpoint and train_log.json")
    run.add_argument("--config", help="JSON file of model config fields, or a checkpoint's config.json (its "
                                      "bookkeeping and n_items left out) (default: none, the model's defaults; --set "
                                      "overrides it)")
    run.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                     help="model config overrides (over --config's; --set may be repeated)")
    run.add_argument("--seed", type=seed_int, default=2020,
                     help="seeds the initial weights, the batch order, dropout, masks and negatives: an int in "
                          f"0..{SEED_MAX} (default 2020)")
    run.add_argument("--max-len", type=positive_int, default=None,
                     help="history window (max_seq_length; default 200, or the --init-from checkpoint's)")
    run.add_argument("--init-from", help="start from this checkpoint (folder or Hub id) instead of a fresh init; it "
                                         "is validated first, so the log shows where the run started")
    add_hub_options(run, "--init-from")
    run.add_argument("--unknown-items", choices=UNKNOWN_ITEMS, default="error",
                     help="with --init-from, data items the checkpoint's vocabulary lacks: refuse (default), add "
                          "them (new rows, starting at the mean item: a catalogue that gained items) or drop their "
                          "interactions; the items it knows keep their indices whatever the data's order")
    run.add_argument("--overwrite", action="store_true",
                     help="replace a checkpoint already in --out and discard an interrupted run's resume state there "
                          "(a model card folder is never trained into)")
    run.add_argument("--resume", action="store_true",
                     help="continue the interrupted (or budget-stopped) run in --out from its last epoch, exactly; "
                          "give the run's own command (only --max-minutes, --device and --threads may change, the "
                          "last two at the cost of float rounding; a larger "
                          "--max-minutes with --decay-over budget re-paces the rest of the decay to the new budget)")
    data = p.add_argument_group("data")
    data.add_argument("--kcore", type=kcore_arg, default="auto",
                      help="k-core filter: auto (5 for .inter, none for .seq), none (or 0), or k >= 1 (default: auto)")
    data.add_argument("--temporal-split", type=float, nargs=2, default=None, metavar=("TEST_SHARE", "VALID_SHARE"),
                      help="train on a global temporal split instead of leave-one-out: the last TEST_SHARE of all "
                           "interactions (by time) is the test period, the VALID_SHARE before it validation, and only "
                           "the interactions before validation are trained on (zoo.data.temporal_split); the run "
                           "cannot be carded (cards report leave-one-out)")
    data.add_argument("--time-ties", choices=TIME_TIES, default="file",
                      help="order of one user's interactions with equal timestamps: file (their file order, a stable "
                           "sort as RecBole's) or item (by item id, as LRURec and ml-1m.5core.seq.gz); default: file")
    add_columns_option(data)
    objective = p.add_argument_group("objective")
    objective.add_argument("--loss-weighting", choices=LOSS_WEIGHTINGS, default="window",
                           help="window: each batch's loss is the mean over its targets (with length bucketing a "
                                "short window's targets weigh more than a long one's); target: every target weighs "
                                "the same, as in RecBole's prefix batches (default: window)")
    objective.add_argument("--window-stride", type=int,
                           help="overlapping training windows: a window ends every S items and supervises its last S "
                                "positions, so each target sees >= max_len - S + 1 items of context (default: max_len)")
    objective.add_argument("--loss", choices=LOSSES, default="ce",
                           help="ce: cross-entropy over all items (default); sampled-softmax: each target against "
                                "--negatives items shared by the batch, logQ-corrected, for catalogues too large to "
                                "score whole at every target (validation and test still rank all items)")
    objective.add_argument("--negatives", type=positive_int,
                           help=f"negatives per batch for --loss sampled-softmax (default {DEFAULT_NEGATIVES}; at most "
                                "the catalogue's items)")
    objective.add_argument("--negative-sampler", choices=SAMPLERS, default="uniform",
                           help="proposal of the negatives: uniform over the items, or popularity (training "
                                "counts + 1); default: uniform")
    optim = p.add_argument_group("optimisation", "unset values come from the model's preset: "
                                 + "; ".join(f"{m}: {_preset_text(v)}" for m, v in TRAIN_PRESETS.items())
                                 + f"; other models: {_preset_text(DEFAULT_PRESET)}")
    optim.add_argument("--optimizer", choices=["adam", "adamw"],
                       help="adam, or adamw (decoupled weight decay, none on biases, normalization gains and the SSMs' "
                            "A_log, D); "
                            + _preset_default("optimizer"))
    optim.add_argument("--lr", type=float, help="learning rate; " + _preset_default("lr"))
    optim.add_argument("--weight-decay", type=float,
                       help="weight decay (L2 for adam, decoupled for adamw); " + _preset_default("weight_decay"))
    optim.add_argument("--batch-size", type=int,
                       help="training windows per batch; " + _preset_default("batch_size"))
    optim.add_argument("--batch-order", choices=BATCH_ORDERS, default="by-length",
                       help="how the shuffled training windows form batches: by-length groups windows of similar "
                            "length (pools of 50 batches sorted by length, the batches shuffled), so a batch holds "
                            "users of similar history length and little padding (what every bundled card was trained "
                            "with); random: plain shuffled batches of windows of any length, as RecBole's batches of "
                            "prefixes from random users, each padded to its longest window, so an epoch computes more "
                            "padding and is slower (default: by-length)")
    optim.add_argument("--sparse-item-grad", action="store_true",
                       help="with --loss sampled-softmax: the item table gets a sparse gradient and is updated by "
                            "lazy Adam (torch.optim.SparseAdam), so that a step touches only the rows the batch read "
                            "instead of the whole table; the table is not weight-decayed")
    optim.add_argument("--clip", type=float,
                       help="gradient clip norm, 0 = off; " + _preset_default("clip"))
    optim.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                       help="learning-rate decay over the planned --epochs (linear/cosine to 0; default: constant)")
    optim.add_argument("--decay-over", choices=DECAY_HORIZONS, default="epochs",
                       help="epochs: the decay spans the planned --epochs (default); budget: it ends at --max-minutes "
                            "or the last epoch, whichever comes first (paced by the clock, so the learning rates "
                            "depend on the machine's speed)")
    optim.add_argument("--warmup-steps", type=nonnegative_int, default=0,
                       help="linear learning-rate warmup over the run's first N optimizer steps (0: none), e.g. for a "
                            "restart --init-from a trained checkpoint, whose optimizer moments start afresh")
    stop = p.add_argument_group("epochs, validation and stopping")
    stop.add_argument("--epochs", type=int, default=200, help="most epochs (default 200)")
    stop.add_argument("--patience", type=int, default=10,
                      help="early stopping: stop at the Nth validation in a row without a valid NDCG@10 gain "
                           "(default 10; RecBole's stopping_step S stops at the (S+1)th: N = S + 1)")
    stop.add_argument("--eval-every", type=int, default=1,
                      help="validate every N epochs (RecBole's eval_step), and after the last epoch and at the time "
                           "budget (default 1)")
    stop.add_argument("--max-minutes", type=float,
                      help="stop after this much wall time, best checkpoint kept (default: no time limit)")
    stop.add_argument("--valid-users", type=int,
                      help="validate on the first N users only, for faster epochs (default: every user)")
    stop.add_argument("--exclude-history", action="store_true", help="LRURec protocol: mask history items in eval")
    hw = p.add_argument_group("hardware")
    add_device_option(hw, "the training")
    hw.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    add_threads_option(hw, "the training")
    hw.add_argument("--no-progress", action="store_true",
                    help="no progress bars (the epoch lines are printed; default: bars on stderr while it is a "
                         "terminal)")
    return p


def checkpoint_hint(value: str) -> str:
    """For a ``--model`` value that names a checkpoint rather than a model type -- an existing folder, a Hub-style id
    (``org/name``) or a bundled model's name --: the hint to start from it with ``--init-from`` (and, where the
    checkpoint's config says it, ``--model`` its type); ``""`` for any other value."""
    import re

    from .cli import shell_option   # ``--init-from=-x`` for a folder that begins with '-': it runs as shown
    from .pretrained import HUB_ORG, _bundled_for, bundled_models

    if os.path.isdir(value):
        start, folder = value, value
    elif value in bundled_models():
        start, folder = f"{HUB_ORG}/{value}", bundled_models()[value]
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", value):
        start, folder = value, _bundled_for(value)
    else:
        return ""
    model_type = None
    if folder is not None:
        try:
            with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
                model_type = json.load(f).get("model_type")
        except (OSError, ValueError, AttributeError):
            pass
    return (f"; {value} names a checkpoint, and --model is the type of a new model: to start from a checkpoint use "
            f"{shell_option('--init-from', start)} --model {model_type if isinstance(model_type, str) else 'TYPE'}")


def main(argv: Sequence[str] | None = None) -> dict:
    """Entry point of ``python -m zoo.train``; returns the training log. A run refused before its first epoch
    (:class:`RunSetupError`: settings, data file, starting checkpoint) exits with one line naming the problem and the
    status of :data:`export.fsutil.EXIT_CODES`: 2 for a bad option (with the usage), 1 for a ``--data``,
    ``--config``, ``--init-from`` or resume state that cannot be read or does not fit and for an ``--out`` another
    live run is writing into (:func:`hold_output_folder`), 4 for a ``--device`` this machine lacks. A run that
    diverges (:class:`TrainingDiverged`) or a checkpoint whose scores overflow exits 1 in one line too."""
    from .cli import apply_threads, cli_device, exit_with
    from .models import get_model_class

    p = build_parser()
    args = p.parse_args(argv)
    try:
        get_model_class(args.model)
    except ValueError as e:
        p.error(f"--model: {e}{checkpoint_hint(args.model)}")
    from .pretrained import hub_options

    if not args.init_from and (args.revision is not None or args.subfolder):
        p.error(f"{'--revision' if args.revision is not None else '--subfolder'} says which checkpoint --init-from "
                "names: give --init-from (a fresh model starts from no checkpoint)")
    try:                                    # an empty --revision, or one for a local folder
        hub = hub_options(args, "--init-from")
    except ValueError as e:
        p.error(str(e))
    cli_device(args.device)                 # a malformed device is a usage error, a GPU this machine lacks exits 4
    apply_threads(args.threads)
    overrides = {}
    if args.config:
        try:
            fields = read_config_file(args.config)
        except ValueError as e:             # a file that cannot be read, or is no JSON object: the run's input
            exit_with(EXIT_ERROR, f"{p.prog}: error: {e}")
    try:
        if args.config:
            fields = saved_config_fields(fields, get_model_class(args.model)[0], args.config)
            # a typo in the file is named as the file's (it was reported as a --set field)
            check_run_fields(fields, where=f"--config {args.config}")
            check_config_overrides(get_model_class(args.model)[0], fields, where=f"--config {args.config}")
            overrides.update(fields)
        given = parse_overrides(args.set)
        check_run_fields(given)
        overrides.update(given)
    except ValueError as e:
        p.error(str(e))
    import shlex                                            # the recorded command re-runs as given (quoted)

    command = "python -m zoo.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        return train(args.model, args.data, args.out, epochs=args.epochs, patience=args.patience, seed=args.seed,
                     max_len=args.max_len, config_overrides=overrides, optimizer=args.optimizer, lr=args.lr,
                     weight_decay=args.weight_decay, batch_size=args.batch_size, clip=args.clip, device=args.device,
                     amp=args.amp, max_minutes=args.max_minutes, valid_users=args.valid_users,
                     exclude_history=args.exclude_history, kcore=args.kcore, progress=not args.no_progress,
                     command=command, init_from=args.init_from, lr_schedule=args.lr_schedule,
                     window_stride=args.window_stride, loss_weighting=args.loss_weighting,
                     eval_every=args.eval_every, decay_over=args.decay_over, overwrite=args.overwrite,
                     resume=args.resume, time_ties=args.time_ties, warmup_steps=args.warmup_steps,
                     columns=args.columns, loss=args.loss, negatives=args.negatives,
                     negative_sampler=args.negative_sampler, sparse_item_grad=args.sparse_item_grad,
                     unknown_items=args.unknown_items, temporal_split=args.temporal_split,
                     batch_order=args.batch_order, init_revision=hub["revision"],
                     init_subfolder=hub["subfolder"])
    except RunSetupError as e:
        from .cli import flag_named

        if e.exit_code == EXIT_USAGE:
            p.error(flag_named(str(e), NUMBER_FLAGS))
        exit_with(e.exit_code, f"{p.prog}: error: {flag_named(str(e), NUMBER_FLAGS)}")
    except TrainingDiverged as e:           # one line: what overflowed, the remedy, what --out keeps
        exit_with(EXIT_ERROR, f"{p.prog}: error: {e}")
    except ValueError as e:                 # NaN / infinite scores of a starting (--init-from) or the best checkpoint
        from .evaluate import ScoreOverflow

        if not isinstance(e, ScoreOverflow):
            raise
        exit_with(EXIT_ERROR, f"{p.prog}: error: {e}")
    except KeyboardInterrupt as e:          # (an empty --out of this run's own is removed by train(), under its lock)
        from .train_state import resume_dir

        if resume_dir(args.out) is not None:
            e.zoo_hint = "continue the run with the same command and --resume (without --overwrite)"  # run_cli
        raise


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
