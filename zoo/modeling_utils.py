"""What every zoo model shares: input validation, the scoring/recommend API, the recurrent-state API and
safe (safetensors-only, strict) save/load with the item vocabulary.

A model file subclasses :class:`SeqRecPreTrainedModel` and implements

* ``encode(input_ids [B, L], attention_mask [B, L], timestamps [B, L] | None) -> hidden [B, L, D]``
  (hidden state at every position; for causal models position ``t`` only sees positions ``<= t``),
* ``item_output() -> (weight [n_items, D], bias [n_items] | None)``, the output layer of
  ``score(hidden [..., D]) -> logits [..., n_items]`` (tied item embeddings, optional item bias),
* for models with an exact recurrent step: ``state_spec(batch_size)`` and
  ``_step(item_ids [B, T], state, timestamps [B, T] | None) -> (hidden [B, T, D], new_state)``.

Conventions
-----------
* Internal item index 0 is padding; real items are ``1 .. n_items - 1``.
* Each model class declares ``padding_side`` ("right" like RecBole, or "left" like LRURec). Batches must be padded
  on that side, contiguously; :meth:`pad_batch` builds such batches from Python lists.
* ``logits`` returned by :meth:`forward` and :meth:`step` are raw (the padding logit is not masked);
  :meth:`predict` and :meth:`recommend` mask it (and, optionally, the items already in the history).
* State tensors are named, with fixed layouts given by :meth:`state_spec` (batch first, layers packed); recurrent
  states are float32 (SASRec's re-encoding window is int64 item ids).
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import itertools
import logging
import math
import numbers
import os
import re
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from export.fsutil import (JSONNestedTooDeep, JSONReadError, json_depth_guard, json_too_deep_reason, nested_deeper_than,
                           read_json)
from export.ids import check_sequence

from .losses import NegativeSample, sampled_softmax_loss, sparse_output_table
from .metrics import top_k
from .vocab import (VOCAB_FILE, ItemVocab, UnknownItemError, int_id, int_id_value, is_canonical_int_text,
                    is_int_text)

State = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)


@dataclass
class SeqRecOutput(ModelOutput):
    """Output of a zoo model's forward pass.

    Args:
        loss: scalar training loss when ``labels`` were given (cross-entropy, or sampled softmax given negatives).
        logits: ``[B, n_items]`` raw next-item scores read at each row's last real position (None when the loss was
            sampled: the full catalogue is then not scored).
        hidden_states: ``[B, L, D]`` final hidden state at every position.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None


class ForwardOptions(NamedTuple):
    """What :meth:`SeqRecPreTrainedModel.forward` returns: ``return_dict`` (False: a tuple) and ``hidden_states``
    (False: left out), read from its keyword arguments by ``_forward_kwargs``."""

    return_dict: bool = True
    hidden_states: bool = True


@dataclass
class Recommendations:
    """Top-k recommendations in the caller's own item ids.

    Args:
        items: ``B`` lists of ``k`` external item ids, best first.
        scores: ``[B, k]`` float scores matching ``items``.
    """

    items: list[list[Any]]
    scores: torch.Tensor


@dataclass
class ItemVectors:
    """Item vectors for retrieval (:meth:`SeqRecPreTrainedModel.item_vectors`).

    Args:
        ids: the ``n_items - 1`` external item ids, in row order.
        vectors: ``[n_items - 1, vector_size]`` float32; a user's :meth:`~SeqRecPreTrainedModel.query_vectors` dotted
            with them gives the model's scores of these items.
    """

    ids: list[Any]
    vectors: torch.Tensor


@dataclass(frozen=True)
class StateTensorSpec:
    """One named recurrent-state tensor: shape (batch first), dtype, initial fill value and meaning."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    init: float = 0.0
    doc: str = ""


_SIZE_FIELDS = ("num_layers", "d_state", "d_conv", "expand", "inner_size", "num_heads", "head_dim", "chunk_size",
                "embedding_size", "state_expansion", "dt_rank")


# ------------------------------------------------------------------------------------------- config checks
def config_int(value: Any, name: str, lo: int | None = 1, what: str = "") -> int:
    """Config field ``name`` as a Python int ``>= lo`` (``lo=None``: any int, for a config that words its own range
    check): ints, numpy / torch integer scalars and whole floats (``64.0``) are accepted. What is no number (None, a
    string, a list) or a bool is a ``TypeError``, a fraction (``16.9``), NaN or a value below ``lo`` a ``ValueError``,
    each naming the field (an ``int()`` would cut ``16.9`` to 16 and read ``True`` as 1 silently). ``what`` follows
    the bound in the message."""
    raw = int_id_value(value)
    v = int_id(value)
    if v is None and isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        v = int(raw)
    if v is None:
        error = ValueError if isinstance(raw, float) else TypeError
        raise error(f"{name} must be an int{'' if lo is None else f' >= {lo}'}{what}, got {value!r}")
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}{what}, got {value!r}")
    return v


def config_float(value: Any, name: str, *, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None) -> float:
    """Config field ``name`` as a finite Python float within the bounds given (``gt`` / ``ge`` below, ``lt`` / ``le``
    above): what is no number (or a bool) is a ``TypeError``, NaN, an infinity or a value out of the bounds a
    ``ValueError`` (``x <= 0`` checks let NaN through), each naming the field and the range."""
    lo = f"> {gt}" if gt is not None else f">= {ge}" if ge is not None else ""
    hi = f"< {lt}" if lt is not None else f"<= {le}" if le is not None else ""
    rng = " and ".join(x for x in (lo, hi) if x)
    message = f"{name} must be a finite number{f' {rng}' if rng else ''}, got {value!r}"
    raw = int_id_value(value)
    if not isinstance(raw, (int, float)) or isinstance(raw, bool):
        raise TypeError(message)
    v = float(raw)
    if not (math.isfinite(v) and (gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt)
            and (le is None or v <= le)):
        raise ValueError(message)
    return v


#: the intervals a rate may be given for (:func:`config_rate`), as :func:`config_float` bounds
_RATE_BOUNDS = {"[0, 1)": {"ge": 0.0, "lt": 1.0}, "(0, 1]": {"gt": 0.0, "le": 1.0}, "[0, 1]": {"ge": 0.0, "le": 1.0}}


def config_rate(value: Any, name: str, interval: str = "[0, 1)") -> float:
    """Config field ``name``, a probability (a dropout, a masking ratio), as a Python float in ``interval`` (one of
    ``"[0, 1)"``, the default and every dropout's; ``"(0, 1]"``; ``"[0, 1]"``), checked by :func:`config_float`: what
    is no number (None, a string, a bool, which ``float()`` read as 1.0) is a ``TypeError``, NaN or a value outside
    ``interval`` a ``ValueError``, each naming the field and the interval (a bare ``float()`` named neither)."""
    try:
        return config_float(value, name, **_RATE_BOUNDS[interval])
    except TypeError:
        raise TypeError(f"{name} must be a number in {interval}, got {value!r}") from None
    except ValueError:
        raise ValueError(f"{name} must be in {interval}, got {value!r}") from None


def config_bool(value: Any, name: str) -> bool:
    """Config field ``name`` as a bool: ``True`` / ``False`` (numpy / torch bools, and the ints 0 and 1, accepted);
    anything else -- a string such as ``"no"``, which ``bool()`` reads as True -- is a ``TypeError`` naming it."""
    raw = int_id_value(value)
    if isinstance(raw, bool) or (isinstance(raw, int) and raw in (0, 1)):
        return bool(raw)
    raise TypeError(f"{name} must be a bool (true or false), got {value!r}")


def config_range(value: Any, name: str) -> tuple[float, float]:
    """A ``(lo, hi)`` pair with ``0 < lo <= hi``, finite (Mamba-2's ``A_init_range``: ``A_log = log U[lo, hi]``, so a
    bound ``<= 0`` makes ``A_log`` NaN or -inf); a ``ValueError`` naming ``name`` otherwise."""
    pair = list(value) if isinstance(value, (list, tuple)) else []
    try:
        lo, hi = (config_float(x, name, gt=0) for x in pair) if len(pair) == 2 else (None, None)
    except (TypeError, ValueError):
        lo = hi = None
    if lo is None or lo > hi:
        raise ValueError(f"{name} must be a pair (lo, hi) of finite numbers with 0 < lo <= hi, got {value!r}")
    return lo, hi


def config_dt_init(dt_min: Any, dt_max: Any, dt_init_floor: Any) -> tuple[float, float, float]:
    """Mamba's Δ init fields (``dt = exp(U[log dt_min, log dt_max])``, floored at ``dt_init_floor``) checked:
    ``0 < dt_min <= dt_max`` finite (``log(0)`` is a math domain error), ``dt_init_floor >= 0``; errors name the
    field."""
    lo = config_float(dt_min, "dt_min", gt=0)
    hi = config_float(dt_max, "dt_max", gt=0)
    if lo > hi:
        raise ValueError(f"dt_min must be <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
    return lo, hi, config_float(dt_init_floor, "dt_init_floor", ge=0)


def derived_field(name: str, formula: str, compute: Callable[[Any], Any], doc: str = "") -> property:
    """A config field computed from others (``d_inner = expand * hidden_size``), as a property: always recomputed, so
    that an override of a source (``AutoConfig.from_pretrained(path, expand=4)``, an edited ``config.json``) can never
    leave it stale. Setting it (``config.json`` holds it, for its readers) is accepted only with the value it has; any
    other is a ``ValueError`` naming both the field and the fields of ``formula`` it is computed from. List ``name`` in
    the config's :attr:`SeqRecConfig.derived_fields`."""
    sources = list(dict.fromkeys(re.findall(r"[A-Za-z_]\w*", re.sub(r"'[^']*'", "", formula))))

    def get(self):
        return compute(self)

    def set_(self, value):
        want = compute(self)
        if isinstance(value, bool) or value != want:
            if not sources:
                raise ValueError(f"{name}={value!r} given, but {name} is always {want!r}: leave {name} out")
            vals = ", ".join(f"{s}={getattr(self, s, None)!r}" for s in sources)
            raise ValueError(f"{name}={value!r} contradicts {formula} = {want!r} ({vals}): {name} is derived from "
                             f"{', '.join(sources)}; leave {name} out (or set the fields it is computed from)")

    return property(get, set_, doc=doc or f"``{formula}`` (derived, read-only).")


#: the values of :attr:`SeqRecPreTrainedModel.model_family`
MODEL_FAMILIES = ("ssm", "baseline")
#: the values of :attr:`SeqRecPreTrainedModel.training_objective`
TRAINING_OBJECTIVES = ("next_item", "cloze")
#: ``config.json`` keys that are the zoo's own record, not model fields (:meth:`SeqRecPreTrainedModel.save_pretrained`)
ZOO_CONFIG_KEYS = frozenset({"item_vocab_file"})
#: RecBole's names of fields the zoo names otherwise: the model docstrings cite RecBole, so RecBole users type these
RECBOLE_ALIASES = {"n_layers": "num_layers", "n_heads": "num_heads", "hidden_dropout_prob": "hidden_dropout",
                   "attn_dropout_prob": "attn_dropout", "MAX_ITEM_LIST_LENGTH": "max_seq_length"}
#: what a config does with a key that is no field: "raise" (built directly: a typo would be stored and change
#: nothing), "warn" (read by :meth:`SeqRecConfig.from_dict` from a config.json another version may have written),
#: "ignore" (:meth:`SeqRecConfig.check`, whose keys were warned about when they were read)
_UNKNOWN_KEYS: contextvars.ContextVar[str] = contextvars.ContextVar("zoo_unknown_config_keys", default="raise")
#: what :meth:`SeqRecConfig.from_dict` names as the source of a bad value: the ``config.json`` being read (set by
#: the ``from_pretrained`` of configs and models, :func:`_reading_config`); unset, plainly ``config.json``
#: (``AutoConfig.from_pretrained`` hands the file's contents to ``from_dict`` without its path)
_CONFIG_SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("zoo_config_source", default=None)
_INIT_FIELDS: dict[type, frozenset[str]] = {}
_TRANSFORMERS_KEYS: frozenset[str] = frozenset()


def transformers_config_keys() -> frozenset[str]:
    """The keys transformers' ``PreTrainedConfig`` takes or writes itself: its dataclass fields and ``to_dict`` keys,
    what its ``__post_init__`` consumes (``name_or_path``, ``attn_implementation``, the generation parameters, ...) and
    the keys transformers 4 wrote into ``config.json``. None of them is a typo of a zoo field."""
    global _TRANSFORMERS_KEYS
    if not _TRANSFORMERS_KEYS:
        import dataclasses

        keys = {f.name for f in dataclasses.fields(PreTrainedConfig)} | set(PreTrainedConfig().to_dict())
        keys |= {"model_type", "torch_dtype", "num_labels", "name_or_path", "_name_or_path", "_commit_hash",
                 "output_attentions", "attn_implementation", "experts_implementation", "per_layer_config",
                 "_attn_implementation", "_attn_implementation_internal", "_experts_implementation",
                 "_experts_implementation_internal", "tie_last_hidden_states"}
        keys |= {"torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads", "tie_word_embeddings", "is_decoder",
                 "add_cross_attention", "tie_encoder_decoder", "cross_attention_hidden_size", "finetuning_task",
                 "tokenizer_class", "prefix", "bos_token_id", "pad_token_id", "eos_token_id", "sep_token_id",
                 "decoder_start_token_id", "task_specific_params", "use_cache"}     # transformers 4's config.json
        # what transformers writes into config.json beside its fields and reads back: register_for_auto_class's
        # auto_map (AutoConfig's trust_remote_code route), a custom pipeline's custom_pipelines, a quantizer's
        # quantization_config
        keys |= {"auto_map", "custom_pipelines", "quantization_config"}
        try:
            from transformers import GenerationConfig

            keys |= set(GenerationConfig._get_default_generation_params())
        except Exception:       # a transformers without it: its generation keys are then not known here
            pass
        _TRANSFORMERS_KEYS = frozenset(keys)
    return _TRANSFORMERS_KEYS


def unknown_fields_message(cfg_cls: type, names: Sequence[str]) -> str:
    """``"<name> is not a field of <Config> (did you mean <field>? ...)"`` for each of ``names``, then the fields
    and the config's aliases of fields (:attr:`SeqRecConfig.field_aliases`): RecBole's name of a field
    (:data:`RECBOLE_ALIASES`) is mapped to it, another name to the closest field or alias (``difflib``; an alias
    is suggested as what it is, ``did you mean dropout? an alias of hidden_dropout``)."""
    fields = sorted(cfg_cls.init_fields())
    aliases = {a: f for a, f in sorted((getattr(cfg_cls, "field_aliases", None) or {}).items()) if a not in fields}
    parts = []
    for name in names:
        alias = RECBOLE_ALIASES.get(name)
        if alias in fields:
            hint = f" (did you mean {alias}? RecBole's {name} is {alias} in the zoo)"
        else:
            close = difflib.get_close_matches(name, fields + list(aliases), n=1, cutoff=0.6)
            hint = "" if not close else f" (did you mean {close[0]}?)" if close[0] not in aliases else \
                f" (did you mean {close[0]}? an alias of {aliases[close[0]]})"
        parts.append(f"{name} is not a field of {cfg_cls.__name__}{hint}")
    return (f"{'; '.join(parts)}; the fields of {cfg_cls.__name__} ({cfg_cls.model_type}) are {fields}"
            + "".join(f"; {a} is an alias of {f}" for a, f in aliases.items()))


class SeqRecConfig(PreTrainedConfig):
    """Fields shared by every zoo model config (each model's config documents its own fields too).

    Args:
        n_items (`int`): rows of the item embedding table, padding row 0 included (RecBole's ``n_items``; ML-1M: 3,417).
        max_seq_length (`int`): history window length ``L`` used in training and by :meth:`recommend`.
        hidden_size (`int`): model width ``D``.
        initializer_range (`float`): std of the normal init of linear/embedding weights (finite, >= 0).
        item_vocab_file (`str` or `None`, written by ``save_pretrained``): ``"item_vocab.json"`` when the weights
            were saved with their item vocabulary, ``None`` when without one (loading checks the folder against it;
            checkpoints saved before this field existed do not have it).

    Sizes are ints (a fraction or a bool is refused, not cut), rates and epsilons finite numbers in their range: a
    value of the wrong type is a ``TypeError``, one out of range a ``ValueError``, naming the field (helpers
    :func:`config_int`, :func:`config_float`, ...). The same checks hold for ``from_pretrained(path, field=value)``
    overrides (:meth:`from_dict`) and, when a model is built, for values set on the config by hand (:meth:`check`).
    A keyword that is no field (``n_layers``, RecBole's name of ``num_layers``; a typo) is a ``ValueError`` naming
    it and the closest field; a ``config.json`` key that is none is kept with a warning (another version may have
    written it).
    """

    model_type = "seqrec"
    #: outputs the ``Trainer``'s evaluation leaves out of what it gathers (``[B, L, D]`` per batch; only the logits
    #: are ranked, :mod:`zoo.hf_trainer`)
    keys_to_ignore_at_inference = ["hidden_states"]
    #: fields computed from others (:func:`derived_field` properties): written to ``config.json`` for its readers,
    #: recomputed when read back; a value given for one must be the computed one
    derived_fields: tuple[str, ...] = ()
    #: other names ``__init__`` takes for a field, ``{alias: field}`` (LRURec's ``dropout`` for ``hidden_dropout``):
    #: no fields themselves, but a ``from_pretrained(path, alias=value)`` override sets the field, as ``__init__`` does
    field_aliases: ClassVar[Mapping[str, str]] = {}

    def __init__(self, n_items: int = 3417, max_seq_length: int = 200, hidden_size: int = 64,
                 initializer_range: float = 0.02, **kwargs):
        n_items = config_int(n_items, "n_items", lo=2, what=" (padding + at least one item)")
        max_seq_length = config_int(max_seq_length, "max_seq_length")
        hidden_size = config_int(hidden_size, "hidden_size")
        initializer_range = config_float(initializer_range, "initializer_range", ge=0)
        # the sizes and rates the model configs share by name (each config checks its own relations too)
        bad = [f"{k} must be >= 1, got {v}" for k in _SIZE_FIELDS
               if (v := getattr(self, k, None)) is not None and not isinstance(v, str) and int(v) < 1]
        bad += [f"{k} must be in [0, 1), got {v}" for k, v in vars(self).items()
                if "dropout" in k and isinstance(v, (int, float)) and not 0.0 <= float(v) < 1.0]
        if bad:
            raise ValueError("; ".join(bad))
        self.n_items = n_items
        self.max_seq_length = max_seq_length
        self.hidden_size = hidden_size
        self.initializer_range = initializer_range
        for name in self.derived_fields:        # saved for reference: the setter refuses a value that disagrees
            if name in kwargs:
                setattr(self, name, kwargs.pop(name))
        # what is left is transformers' and the zoo's bookkeeping, or a key no code reads (n_layers for num_layers)
        known = transformers_config_keys() | ZOO_CONFIG_KEYS | type(self).init_fields()
        unknown = [k for k in kwargs if k not in known]
        if unknown and _UNKNOWN_KEYS.get() == "raise":
            raise ValueError(unknown_fields_message(type(self), unknown))
        if unknown and _UNKNOWN_KEYS.get() == "warn":
            logger.warning("%s: kept in the config, but no code reads %s", unknown_fields_message(type(self), unknown),
                           "it" if len(unknown) == 1 else "them")
        super().__init__(**kwargs)

    @classmethod
    def init_fields(cls) -> frozenset[str]:
        """The fields of this config: the ``__init__`` parameters of it and its zoo bases (derived fields are not
        among them)."""
        if cls not in _INIT_FIELDS:
            import inspect

            _INIT_FIELDS[cls] = frozenset(
                n for klass in cls.__mro__ if isinstance(klass, type) and issubclass(klass, SeqRecConfig)
                for n, p in inspect.signature(klass.__init__).parameters.items()
                if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        return _INIT_FIELDS[cls]

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        """The config of ``config_dict`` (a ``config.json``) with the keyword overrides of ``from_pretrained(path,
        time_unit=...)`` that are fields merged in *before* ``__init__``, so that they are checked as every field is
        (transformers sets overrides with ``setattr`` after ``__init__``, past every check: ``time_unit=-1`` made every
        score NaN, a model saved so could not be reloaded). An override by a field's alias (:attr:`field_aliases`:
        LRURec's ``dropout=``) is an override of that field: it replaces the saved value as the field's own name
        would (given both, ``__init__`` refuses two values that differ). A derived field that no override gives is left out, to be
        recomputed from the sources an override may change. Keys of ``config_dict`` that are no field (written by
        another version) are kept with a warning, never refused. Other overrides follow transformers: set when the
        config has such an attribute, else returned with ``return_unused_kwargs=True`` (the model's own keyword
        arguments), else ignored with a warning naming the closest field.

        A value of ``config_dict`` that ``__init__`` refuses (``TypeError`` or ``ValueError``: ``"num_layers": null``
        in a hand-edited file) is a ``ValueError`` naming the ``config.json`` and the field, so that every CLI prints
        it as one line; a bad override keeps its own error. A ``model_type`` of another zoo model is refused when
        ``cls`` is a concrete zoo config (``Mamba4RecConfig.from_pretrained(sasrec_folder)`` built a mixed config):
        ``AutoConfig`` picks the class from it."""
        source = _CONFIG_SOURCE.get() or "config.json"
        if nested_deeper_than(config_dict, MAX_CONFIG_DEPTH):      # copying it would recurse too deep
            raise _too_deep(source)
        _check_config_type(cls, config_dict, source)
        fields = cls.init_fields() | set(cls.derived_fields) | set(cls.field_aliases)
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        saved = config_dict
        if overrides:
            # an overridden field's saved value goes, under its own name or an alias (else two values for it)
            given = {cls.field_aliases.get(k, k) for k in overrides}
            config_dict = {k: v for k, v in config_dict.items()
                           if k not in cls.derived_fields and cls.field_aliases.get(k, k) not in given}
            config_dict.update(overrides)
        return_unused = kwargs.pop("return_unused_kwargs", False)
        token = _UNKNOWN_KEYS.set("warn")
        try:
            config, unused = super().from_dict(config_dict, return_unused_kwargs=True, **kwargs)
        except (TypeError, ValueError) as e:
            if type(e) not in (TypeError, ValueError):
                raise
            # a bad value of the file is bad data: one ValueError naming the file (the field is in e); a bad
            # override (the caller's own keyword) keeps its own error, told by reading the file without them
            if overrides:
                try:
                    super().from_dict(saved, return_unused_kwargs=True, **kwargs)
                except (TypeError, ValueError) as saved_error:
                    if type(saved_error) not in (TypeError, ValueError):
                        raise
                    raise ValueError(f"{source}: {saved_error}") from None
                raise
            raise ValueError(f"{source}: {e}") from None
        finally:
            _UNKNOWN_KEYS.reset(token)
        if return_unused:
            return config, unused
        stray = [k for k in unused if not k.startswith("_") and k != "gguf_file"]
        if stray:
            logger.warning("%s: ignored", unknown_fields_message(cls, stray))
        return config

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Transformers' ``from_pretrained``, with the ``config.json`` named in :meth:`from_dict`'s errors."""
        name = os.fspath(pretrained_model_name_or_path)
        with _reading_config(_config_json(name, name, kwargs.get("subfolder") or "")):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Transformers' ``get_config_dict``, refusing a ``config.json`` of another zoo model before transformers
        warns that it may not fit (:meth:`from_dict` would refuse it next). A file nested too deeply for Python's
        JSON reader is the one-line ``OSError`` transformers gives other invalid JSON (:func:`_too_deep`)."""
        def source() -> str:
            name = os.fspath(pretrained_model_name_or_path)
            return _CONFIG_SOURCE.get() or _config_json(name, name, kwargs.get("subfolder") or "")

        with json_depth_guard(source, MAX_CONFIG_DEPTH, error=_too_deep):
            config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        _check_config_type(cls, config_dict, _CONFIG_SOURCE.get() or "config.json")
        return config_dict, kwargs

    def check(self) -> None:
        """Run ``__init__``'s checks again on the values the config holds now, and keep the values ``__init__``
        makes of them (a whole float size as an int, ``inner_size=None`` as its default): a field set by hand after
        the config was built (``config.time_unit = -1``) is refused as the constructor refuses it, naming the field.
        Called by :class:`SeqRecPreTrainedModel` before it builds a model on the config. Keys that are no field are
        left alone here (read from a config.json, they were warned about then)."""
        token = _UNKNOWN_KEYS.set("ignore")
        try:
            fresh = type(self)(**self.to_dict())
        finally:
            _UNKNOWN_KEYS.reset(token)
        mine, theirs = vars(self), vars(fresh)
        for name in type(self).init_fields():
            if name in mine and name in theirs:             # not a derived field (a property)
                setattr(self, name, theirs[name])

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update({name: getattr(self, name) for name in self.derived_fields})
        return out


#: how deeply a ``config.json`` may nest (a zoo config nests 2 levels; Python's JSON reader fails on ~1000 levels,
#: and copying the config -- ``to_dict``'s ``deepcopy`` -- on a few hundred, with a ``RecursionError``)
MAX_CONFIG_DEPTH = 100


def _too_deep(source: str, reason: str | None = None) -> OSError:
    """The error for a ``config.json`` (named by ``source``) nested too deeply -- more than :data:`MAX_CONFIG_DEPTH`
    levels, or past Python's JSON reader (its ``RecursionError``, a traceback otherwise): transformers' own one line
    for a config file that is not valid JSON, with the shared reason (:func:`export.fsutil.json_too_deep_reason`,
    ``reason`` when given)."""
    return OSError(f"It looks like the config file at '{source}' is not a valid JSON file: "
                   f"{reason or json_too_deep_reason(MAX_CONFIG_DEPTH)}")


@contextlib.contextmanager
def _reading_config(source: str):
    """Name ``source`` (a ``config.json``) in the errors :meth:`SeqRecConfig.from_dict` raises inside the block."""
    token = _CONFIG_SOURCE.set(source)
    try:
        yield
    finally:
        _CONFIG_SOURCE.reset(token)


def _config_json(name: str, folder: str, subfolder: str = "") -> str:
    """How to name the ``config.json`` of the model ``name`` (a folder or a Hub id) found in ``folder``: its path
    for a local folder, the Hub id and the folder it was resolved to otherwise."""
    if os.path.isdir(name):
        return os.path.join(folder, subfolder, "config.json")
    where = f"{name}/{subfolder.strip('/')}" if subfolder else name
    return f"config.json of {where}" if folder == name else f"config.json of {where} ({folder})"


def _check_config_type(cls: type, config_dict: Mapping[str, Any], source: str) -> None:
    """``ValueError`` naming both types when ``config_dict`` (a ``config.json``) is of another zoo ``model_type``
    than ``cls``, a concrete zoo config; the base class and configs of a ``model_type`` the zoo does not register
    (a user's subclass) take any."""
    from .models import MODELS

    theirs, mine = config_dict.get("model_type"), getattr(cls, "model_type", None)
    if isinstance(theirs, str) and theirs in MODELS and mine in MODELS and theirs != mine:
        other = MODELS[theirs][0].__name__
        raise ValueError(f"{source}: model_type {theirs!r} is a {other}, not a {cls.__name__} (model_type {mine!r}); "
                         f"load it with {other} or AutoConfig.from_pretrained, which picks the class")


class ScoreOverflow(ValueError):
    """Scores that cannot be ranked: NaN or infinite at some users' real items (a numeric overflow, e.g. in float32,
    or NaN weights; ``torch.topk`` ranks NaN and ``+inf`` above every number, and ``-inf`` is the mark of a masked
    item). :meth:`SeqRecPreTrainedModel.predict` raises it with ``rows``, the batch rows at fault;
    :func:`zoo.evaluate.overflow_error` names their users instead (``rows`` None). ``zoo.evaluate`` and
    ``zoo.recommend`` end on it in one line (exit 1), ``zoo.train`` as a diverged run."""

    def __init__(self, message: str, rows: list[int] | None = None) -> None:
        super().__init__(message)
        self.rows = rows


class SeqRecPreTrainedModel(PreTrainedModel):
    """Base class of every zoo model (see the module docstring for what subclasses implement)."""

    config_class = SeqRecConfig
    base_model_prefix = "seqrec"
    main_input_name = "input_ids"
    #: the loss is each batch's own mean (``forward`` takes no ``num_items_in_batch``), so the ``Trainer`` must divide
    #: it by the gradient-accumulation steps itself; without this flag the ``**kwargs`` of ``forward`` would make it
    #: believe the model normalises the loss and skip that division
    accepts_loss_kwargs = False
    #: side on which batches are padded: "right" (RecBole) or "left" (LRURec)
    padding_side: str = "right"
    #: True when :meth:`step` is an exact O(1)-in-history recurrent update
    has_exact_step: bool = False
    #: True when the model reads timestamps
    uses_timestamps: bool = False
    #: True when the model cannot read more than ``config.max_seq_length`` items (position embeddings, a time branch
    #: of window-sized weights); False when ``max_seq_length`` is only its training / :meth:`recommend` window
    fixed_window: bool = False
    #: which of :data:`MODEL_FAMILIES` the model belongs to: ``"ssm"`` (a state-space or linear-recurrent model:
    #: Mamba4Rec, LRURec, TiM4Rec, SSD4Rec) or ``"baseline"`` (the models they are compared with: SASRec, BERT4Rec,
    #: GRU4Rec); its model card is tagged ``state-space-model`` or ``baseline`` (:func:`zoo.hub.make_card`). Each
    #: model class sets it; :func:`zoo.models.register_model` refuses a class that leaves it ``None``
    model_family: ClassVar[str | None] = None
    #: what ``forward(input_ids, labels=[B, L])`` optimises, which ``zoo.train`` reads (its checks, log and card):
    #: ``"next_item"``, the labels are per-position targets; ``"cloze"``, a masked-item objective of the model's own
    #: (BERT4Rec), where the labels are no per-position targets (no ``--window-stride``, no target loss weighting)
    training_objective: ClassVar[str] = "next_item"
    #: the item table, ``nn.Embedding [n_items (+ extra rows), D]`` (HF's ``get_input_embeddings`` reads this name);
    #: the output layer's weight is its first ``n_items`` rows (:meth:`item_output`)
    _input_embed_layer = "item_embedding"

    def __init__(self, config: SeqRecConfig):
        if isinstance(config, SeqRecConfig):   # a value set by hand after the config was built: checked as built
            try:
                config.check()
            except (TypeError, ValueError) as e:
                if type(e) not in (TypeError, ValueError):
                    raise
                raise type(e)(f"{type(self).__name__} config: {e}") from None
        super().__init__(config)
        self.item_vocab: ItemVocab | None = None

    # ----------------------------------------------------------------- hooks
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L]`` ids (+ mask, timestamps) -> ``[B, L, D]`` hidden states. Implemented by each model."""
        raise NotImplementedError

    def item_output(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output layer: ``(weight [n_items, D], bias [n_items] or None)``, so that the logits are
        ``hidden @ weight^T + bias``. Implemented by each model (tied item embeddings, optional item bias). Training
        losses that score only some items (:mod:`zoo.losses`) read the rows they need from it."""
        raise NotImplementedError

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` -> ``[..., n_items]`` raw logits, ``hidden @ weight^T + bias`` (:meth:`item_output`).

        A 16-bit model (or hidden state) is scored in float32: ``hidden``, the item table and the bias are cast up
        for this one matmul and the logits are float32 (:func:`score_items`). In bfloat16 the logits of a few
        thousand items took ~1,000 distinct values, so about half the targets tied with another item (ranked
        pessimistically by ``zoo.evaluate``: lower HR/NDCG) and top-K lists held arbitrary ties. float32 and float64
        models are scored in their own dtype, with the same op as ever (bit-identical logits)."""
        weight, bias = self.item_output()
        return score_items(hidden, weight, bias)

    def state_spec(self, batch_size: int) -> list[StateTensorSpec]:
        """Named state tensors of the recurrent step (empty for models without one)."""
        raise NotImplementedError(f"{type(self).__name__} has no recurrent step")

    def _step(self, item_ids: torch.Tensor, state: State,
              timestamps: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent step")

    # ------------------------------------------------------------ validation
    def _check_ids(self, ids: Any, name: str = "input_ids") -> torch.Tensor:
        """Item indices ``[B, L]`` -> int64: any signed integer dtype or uint8 (int8's negatives, as any negative, are
        refused by the range check), non-empty, on a device with data (a meta tensor has no values to check)."""
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of item indices, got {type(ids).__name__}")
        if ids.dtype not in _ID_DTYPES:
            raise TypeError(f"{name} must be an integer tensor (int64, int32, int16, int8 or uint8), "
                            f"got dtype {ids.dtype}")
        if ids.is_meta:
            raise ValueError(f"{name} is on the meta device (a tensor without data)")
        if ids.dim() != 2:
            raise ValueError(f"{name} must have shape [batch, seq_len], got shape {list(ids.shape)}")
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {list(ids.shape)}): every row needs at least one item")
        ids = ids.long()
        if _exporting():                                # values are not known while torch.export traces
            return ids
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.config.n_items:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} holds item index {bad}, out of range [0, {self.config.n_items - 1}] "
                             f"(n_items={self.config.n_items}; 0 is padding)")
        return ids

    def check_inputs(self, input_ids: Any, attention_mask: Any = None,
                     timestamps: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Validate a padded batch; returns ``(input_ids long, attention_mask bool, timestamps float | None)``.

        Raises ``TypeError``/``ValueError`` naming the problem: wrong dtype or rank, ids out of range, empty rows,
        padding on the wrong side or not contiguous, padding id inside the real part, missing/bad timestamps, or
        timestamps given to a model that reads none (they would be ignored silently).
        """
        ids = self._check_ids(input_ids)
        if attention_mask is None:
            mask = ids != 0
        else:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != ids.shape:
                got = list(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
                raise ValueError(f"attention_mask must be a tensor of the same shape as input_ids {list(ids.shape)}, got {got}")
            if attention_mask.dtype != torch.bool and not _exporting() \
                    and not torch.all((attention_mask == 0) | (attention_mask == 1)):
                raise ValueError("attention_mask must hold only 0 and 1")
            mask = attention_mask.bool()
        if not _exporting():     # value checks: data-dependent guards, which torch.export cannot trace
            lengths = mask.sum(1)
            empty = (lengths == 0).nonzero()
            if len(empty):
                raise ValueError(f"batch row {int(empty[0])} has an empty history (no real items); "
                                 "every row needs at least one item")
            m = mask.long()
            if self.padding_side == "right":
                bad_order = (m[:, 1:] > m[:, :-1]).any(1)
                side = "right-padded: real items first, then padding"
            else:
                bad_order = (m[:, 1:] < m[:, :-1]).any(1)
                side = "left-padded: padding first, then real items"
            if bad_order.any():
                r = int(bad_order.nonzero()[0])
                raise ValueError(f"batch row {r} is not {side} ({type(self).__name__} expects "
                                 f"{self.padding_side} padding); use model.pad_batch(...) to build batches")
            if (ids[mask] == 0).any():
                r = int(((ids == 0) & mask).any(1).nonzero()[0])
                raise ValueError(f"batch row {r} has padding index 0 inside its real items")
            if (ids[~mask] != 0).any():
                r = int(((ids != 0) & ~mask).any(1).nonzero()[0])
                raise ValueError(f"batch row {r} has non-zero item ids at masked (padding) positions")
        ts = None
        if self.uses_timestamps:
            ts = self.check_timestamps(timestamps, mask)
        elif timestamps is not None:
            self._refuse_timestamps()
        return ids, mask, ts

    def _refuse_timestamps(self, call: str = "it") -> None:
        """The error for timestamps given to a model that reads none (forward, step, recommend, ...)."""
        raise ValueError(f"{type(self).__name__} does not use timestamps; call {call} without timestamps "
                         "(timestamps=None)")

    def check_timestamps(self, timestamps: Any, mask: torch.Tensor) -> torch.Tensor:
        """Timestamps ``[B, L]`` (seconds): present, real (a bool or complex dtype is a ``TypeError``), finite,
        non-negative, non-decreasing over each row's real items, returned as float64. Floating timestamps narrower
        than float64 are refused where a real one is beyond the whole seconds they hold exactly (float32: 2**24 s,
        ~194 days; float16: 2**11; bfloat16: 2**8): float32 rounds Unix seconds (~1e9) to 64-s steps (128 after 2004) before this
        method could widen them, which moves the scores silently. Anything but a tensor is read by :func:`_as_seconds`
        (numpy dtypes kept, so a float32 array is refused too; Python floats are float64, numpy ``datetime64`` become
        seconds). Timestamps above :data:`MAX_TIMESTAMP_S` (1e11 s, the year ~5000) are refused: they are milliseconds
        or nanoseconds since the epoch, which the time-aware models would read as seconds (TiM4Rec-causal's gap
        features, and so its ranking, change); this also refuses every integer beyond 2**53 that float64 would round."""
        if timestamps is None:
            raise ValueError(f"{type(self).__name__} reads timestamps: pass timestamps [batch, seq_len] (seconds)")
        timestamps = _as_seconds(timestamps, "timestamps")
        if timestamps.shape != mask.shape:
            raise ValueError(f"timestamps must have the shape of input_ids {list(mask.shape)}, got {list(timestamps.shape)}")
        if _exporting():                                # values are not known while torch.export traces
            return timestamps.double()
        _check_exact_seconds(timestamps[mask], "timestamps")
        ts = timestamps.double()
        real = ts[mask]
        if not torch.isfinite(real).all():
            raise ValueError("timestamps contain NaN or infinite values at real positions")
        if (real < 0).any():
            raise ValueError("timestamps contain negative values")
        if (real > MAX_TIMESTAMP_S).any():
            r = int((mask & (ts > MAX_TIMESTAMP_S)).any(1).nonzero()[0])
            raise ValueError(f"timestamps of batch row {r} reach {float(ts[r][mask[r]].max()):.6g} s, beyond "
                             f"{MAX_TIMESTAMP_S:.0e} s (the year ~5000): they look like milliseconds or nanoseconds "
                             "since the epoch; pass Unix seconds")
        big = torch.finfo(torch.float64).max
        filled = torch.where(mask, ts, torch.full_like(ts, -big))
        prev = torch.cummax(filled, dim=1).values
        dec = mask[:, 1:] & (ts[:, 1:] < prev[:, :-1])
        if dec.any():
            r = int(dec.any(1).nonzero()[0])
            raise ValueError(f"timestamps of batch row {r} decrease; histories must be in time order")
        return ts

    # ---------------------------------------------------------------- batches
    def pad_batch(self, histories: Sequence[Sequence[int]], max_length: int | None = None,
                  timestamps: Sequence[Sequence[float]] | None = None):
        """Internal-index histories -> padded ``(input_ids [B, L], attention_mask [B, L][, timestamps [B, L]])``.

        Each history is truncated to its most recent ``max_length`` (an int >= 1, default ``config.max_seq_length``)
        items and padded on the model's ``padding_side``. Item indices must be ints (numpy / torch integer scalars
        and integer arrays accepted): a float or a bool is a ``TypeError`` naming it, as in :meth:`recommend` (a
        tensor would cut ``1.7`` to item 1 silently). ``timestamps``, one sequence of seconds per history and as long
        as it, are read row by row in their own dtype (:func:`_timestamp_row`): a set, a string, a scalar, bools or
        other non-numbers are refused naming ``timestamps of history r``, and so is a float32 row beyond 2**24 s
        (rounded before it could be widened); the returned timestamps are float64.
        """
        max_length = (self.config.max_seq_length if max_length is None
                      else _as_count(max_length, "pad_batch max_length"))  # 0 / -1 would cut silently
        if len(histories) == 0:
            raise ValueError("no histories given")
        rows = []
        for r, h in enumerate(histories):
            h = _int_list(h, f"history {r}")
            if len(h) == 0:
                raise ValueError(f"history {r} is empty; every history needs at least one item")
            rows.append(h[-max_length:])
        L = max(len(h) for h in rows)
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        mask = torch.zeros(len(rows), L, dtype=torch.bool)
        ts = torch.zeros(len(rows), L, dtype=torch.float64) if timestamps is not None else None
        if timestamps is not None:
            check_sequence(timestamps, "timestamps", "a sequence of lists of seconds, one list per history")
        if timestamps is not None and len(timestamps) != len(rows):
            raise ValueError(f"got {len(timestamps)} timestamp lists for {len(rows)} histories")
        for r, h in enumerate(rows):
            n = len(h)
            sl = slice(0, n) if self.padding_side == "right" else slice(L - n, L)
            ids[r, sl] = torch.tensor(h, dtype=torch.long)
            mask[r, sl] = True
            if ts is not None:
                t = _timestamp_row(timestamps[r], f"timestamps of history {r}")
                if len(t) != len(histories[r]):
                    raise ValueError(f"history {r} has {len(histories[r])} items but {len(t)} timestamps")
                ts[r, sl] = t[-max_length:]
        return (ids, mask) if ts is None else (ids, mask, ts)

    def last_positions(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B]`` index of each row's last real position."""
        if self.padding_side == "right":
            return attention_mask.long().sum(1) - 1
        return torch.full((attention_mask.shape[0],), attention_mask.shape[1] - 1, dtype=torch.long,
                          device=attention_mask.device)

    def _at_last(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``hidden [B, L, D]`` -> ``[B, D]`` at each row's last real position (what the next item is scored from)."""
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), self.last_positions(mask)]

    # ---------------------------------------------------------------- forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, timestamps: torch.Tensor | None = None,
                negatives: NegativeSample | None = None, **kwargs) -> SeqRecOutput:
        """Encode a padded batch and score the next item.

        Args:
            input_ids: ``[B, L]`` int64 internal item indices, padded on ``self.padding_side`` with 0.
            attention_mask: ``[B, L]`` 1 at real items (default: ``input_ids != 0``).
            labels: integer ``[B]`` next item per row (loss at the last position, RecBole style; every row needs
                one, a real item ``1 .. n_items - 1``) or ``[B, L]`` next item at every position (0 = no target;
                all-position training; a label under a padded slot is not a target). Cross-entropy over all
                ``n_items`` logits. Checked by :meth:`check_labels`.
            timestamps: ``[B, L]`` seconds, for time-aware models.
            negatives: with ``labels``, train with sampled softmax against these shared negatives instead of the
                full cross-entropy (:mod:`zoo.losses`); the full-catalogue ``logits`` are then not computed (None).
            **kwargs: ``return_dict`` (None, the default: ``config.return_dict``, True unless set, as in Hugging
                Face models; False returns the output as a tuple), ``output_hidden_states`` (see Returns) and the
                arguments of :attr:`IGNORED_FORWARD_KWARGS`, which the ``Trainer`` passes; any other is a
                ``TypeError`` naming it (:meth:`_forward_kwargs`).
        Returns:
            :class:`SeqRecOutput` with ``logits [B, n_items]`` at each row's last real position, or its tuple
            ``(loss, logits, hidden_states)`` without the fields that are None. ``hidden_states`` is the encoder's
            final ``[B, L, D]`` (not transformers' tuple of every layer's) and is returned whatever
            ``config.output_hidden_states`` says (the zoo's own callers read it); ``output_hidden_states=False``
            given to the call leaves it out.

        The inputs' values (id range, padding, mask, timestamps, labels) are checked in eager mode, under
        ``torch.compile`` and under ``torch.jit.trace`` (on the example inputs); while ``torch.export`` traces the
        model (``torch.compiler.is_exporting()``, torch >= 2.6) only their dtypes and shapes are, since a value
        check there is a data-dependent guard it cannot export: an exported program trusts its inputs.
        """
        return_dict = self._forward_kwargs(kwargs)
        if negatives is not None and labels is None:
            raise ValueError("negatives are the sampled loss's: give them with labels (training), not for scoring")
        ids, mask, ts = self.check_inputs(input_ids, attention_mask, timestamps)
        hidden = self.encode(ids, mask, ts)                                   # [B, L, D]
        last = self._at_last(hidden, mask)                                     # [B, D]
        sampled = labels is not None and negatives is not None
        logits = None if sampled else self.score(last)                         # [B, V]
        loss = None
        if labels is not None:
            loss = self.loss_from_hidden(hidden, last, logits, labels, negatives, attention_mask=mask)
        return self._output(SeqRecOutput(loss=loss, logits=logits, hidden_states=hidden), return_dict)

    #: keyword arguments that :meth:`forward` accepts and ignores because transformers' ``Trainer`` passes them:
    #: ``num_items_in_batch`` (to a model with ``accepts_loss_kwargs``, or from a custom ``compute_loss``) and
    #: ``history`` (the window of :mod:`zoo.hf_trainer`'s evaluation batches, a label with
    #: ``label_names=HISTORY_LABELS``, which the ``Trainer`` hands to ``forward`` with the inputs)
    IGNORED_FORWARD_KWARGS = frozenset({"num_items_in_batch", "history"})

    def _forward_kwargs(self, kwargs: Mapping[str, Any]) -> ForwardOptions:
        """:meth:`forward`'s extra keyword arguments -> :class:`ForwardOptions` for :meth:`_output`. ``return_dict``
        None (or not given) is ``config.return_dict``, as in Hugging Face models (``from_pretrained(path,
        return_dict=False)`` gives tuples); ``output_hidden_states`` None or True keeps ``hidden_states``, False leaves
        it out (``config.output_hidden_states`` is not read: see :meth:`forward`). ``TypeError`` naming any other
        argument but :attr:`IGNORED_FORWARD_KWARGS`: a misspelled ``label=`` was swallowed, so the loss was None
        without an error, and ``return_dict=False`` was ignored."""
        unknown = sorted(set(kwargs) - self.IGNORED_FORWARD_KWARGS - {"return_dict", "output_hidden_states"})
        if unknown:
            raise TypeError(f"{type(self).__name__}.forward() got unexpected keyword argument(s) {unknown}; it takes "
                            "input_ids, attention_mask, labels, timestamps, negatives, return_dict and "
                            "output_hidden_states")
        flag = kwargs.get("return_dict")
        if flag is None:
            flag, name = getattr(self.config, "return_dict", True), "config.return_dict"
        else:
            name = "return_dict"
        hidden = kwargs.get("output_hidden_states")
        return ForwardOptions(config_bool(flag, name),
                              True if hidden is None else config_bool(hidden, "output_hidden_states"))

    @staticmethod
    def _output(out: SeqRecOutput, options: ForwardOptions | bool) -> SeqRecOutput | tuple:
        """``out`` as :meth:`_forward_kwargs`' ``options`` ask (a bool: ``return_dict`` alone): without
        ``hidden_states`` for ``output_hidden_states=False``, and for ``return_dict=False`` its tuple (the fields that
        are not None, in order), as Hugging Face models return it."""
        if isinstance(options, bool):
            options = ForwardOptions(options)
        if not options.hidden_states and out.hidden_states is not None:
            out = type(out)(**{k: v for k, v in out.items() if k != "hidden_states"})
        return out if options.return_dict else out.to_tuple()

    def check_labels(self, labels: Any, shape: Sequence[int]) -> torch.Tensor:
        """Training labels for a batch of ``shape = [B, L]`` -> int64: ``[B]`` (one next item per row, each a real item
        ``1 .. n_items - 1``: 0 is padding, never a next item, and every row has one) or ``[B, L]`` (``0 .. n_items -
        1``, 0 = no target). ``TypeError`` for a tensor that is not of an integer dtype (a float label would be cut
        silently), ``ValueError`` for a wrong shape or a label out of range, naming it. One min/max check (cheap: it
        runs every training step)."""
        B, L = int(shape[0]), int(shape[1])
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor of item indices, got {type(labels).__name__}")
        if labels.dtype not in _ID_DTYPES:
            raise TypeError(f"labels must be an integer tensor (int64 item indices), got dtype {labels.dtype}")
        if tuple(labels.shape) not in ((B,), (B, L)):
            raise ValueError(f"labels must be [batch] or [batch, seq_len] = {[B, L]}, got {list(labels.shape)}")
        if _exporting():                                # values are not known while torch.export traces
            return labels.long()
        lo, hi = (int(v) for v in torch.stack(torch.aminmax(labels)).tolist())
        first = 1 if labels.dim() == 1 else 0
        if lo < first or hi >= self.config.n_items:
            bad = lo if lo < first else hi
            what = ("[B] labels: one real next item per row; 0 is padding" if first
                    else "[B, L] labels: 0 = no target")
            raise ValueError(f"labels hold item index {bad}, out of range [{first}, {self.config.n_items - 1}] "
                             f"(n_items={self.config.n_items}; {what})")
        return labels.long()

    def loss_from_hidden(self, hidden: torch.Tensor, last: torch.Tensor, last_logits: torch.Tensor | None,
                         labels: torch.Tensor, negatives: NegativeSample | None = None,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The loss for ``labels [B]`` (at ``last [B, D]``, whose logits may be given) or ``[B, L]`` (every position
        of ``hidden [B, L, D]`` with label > 0 that is a real item of ``attention_mask [B, L]`` (bool; None: every
        position)): :meth:`item_loss`. ``labels`` are checked by :meth:`check_labels`."""
        labels = self.check_labels(labels, hidden.shape[:2]).to(hidden.device)
        if labels.dim() == 1:
            if last_logits is not None and negatives is None:
                return F.cross_entropy(last_logits, labels)
            return self.item_loss(last, labels, negatives)
        sel = labels > 0
        if attention_mask is not None:
            sel = sel & attention_mask.to(sel.device)
        if not sel.any():
            raise ValueError("labels hold no target (all 0) at the real positions")
        return self.item_loss(hidden[sel], labels[sel], negatives)

    def set_sparse_item_grad(self, enabled: bool = True) -> None:
        """Give the item table (:meth:`get_input_embeddings`) a sparse gradient in sampled-softmax training
        (``zoo.train --sparse-item-grad``), or a dense one again; ``ValueError`` when the output layer is not the
        table's leading rows (:func:`zoo.losses.sparse_output_table`)."""
        table = self.get_input_embeddings()
        if enabled:
            sparse_output_table(type(self).__name__, table.weight, self.item_output()[0])
        table.sparse = enabled

    def item_loss(self, hidden: torch.Tensor, targets: torch.Tensor,
                  negatives: NegativeSample | None = None) -> torch.Tensor:
        """Mean loss of ``hidden [M, D]`` for ``targets [M]``: cross-entropy over all ``n_items`` logits, or, given
        ``negatives``, sampled softmax against them (:func:`zoo.losses.sampled_softmax_loss`)."""
        table = self.get_input_embeddings()
        if negatives is None:
            if table.sparse:
                raise ValueError(f"{type(self).__name__}: the item table gives sparse gradients (sparse_item_grad), "
                                 "but the full cross-entropy reads every row; train it with sampled softmax")
            return F.cross_entropy(self.score(hidden), targets)
        weight, bias = self.item_output()
        if table.sparse:        # gather the rows from the table itself, so that its gradient is sparse
            weight = sparse_output_table(type(self).__name__, table.weight, weight)
        return sampled_softmax_loss(hidden, targets, weight, bias, negatives, sparse_grad=table.sparse)

    # -------------------------------------------------------------- inference
    @contextlib.contextmanager
    def eval_mode(self):
        """Run the block in eval mode (no dropout, no training-time item masking), then restore the mode the model
        was in: what :meth:`predict`, :meth:`query_vectors` and :meth:`step` run in, so that inference is
        deterministic on a model fresh from its constructor (which is in training mode) too.

        Re-entrant and shared by threads: a count per model of the blocks inside (kept outside the model, so that
        pickling and ``deepcopy`` are unchanged); the first one in saves the mode and sets eval, the last one out
        restores it. So a thread never runs in training mode because another's block ended, and the model is not
        left in eval mode. (A ``model.train()`` / ``eval()`` called meanwhile is the caller's own.)"""
        with _EVAL_SECTIONS_LOCK:
            section = _EVAL_SECTIONS.get(self)
            if section is None:
                section = _EVAL_SECTIONS[self] = [0, self.training]      # [blocks inside, mode before the first]
                self.eval()
            section[0] += 1
        try:
            yield
        finally:
            with _EVAL_SECTIONS_LOCK:
                section[0] -= 1
                if section[0] == 0:
                    del _EVAL_SECTIONS[self]
                    self.train(section[1])

    @torch.no_grad()
    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                timestamps: torch.Tensor | None = None, exclude_seen: bool = False,
                exclude_items: Sequence[int] | None = None) -> torch.Tensor:
        """``[B, n_items]`` scores for the next item, padding (with ``exclude_seen`` the items of ``input_ids``, the
        window given, and the internal indices ``exclude_items``, never to be recommended) set to ``-inf``;
        :meth:`recommend` excludes whole histories, also items older than the window. ``exclude_items`` are indices
        of real items, ints in ``1 .. n_items - 1`` (:meth:`encode_item_set` gives them from external ids); anything
        else is a ``TypeError`` / ``ValueError`` naming it (a -1 would exclude the last item)."""
        exclude_seen = config_bool(exclude_seen, "exclude_seen")           # "no" is truthy: it would exclude
        excluded = self._check_indices(exclude_items, "exclude_items") if exclude_items is not None else []
        with self.eval_mode():
            out = self.forward(input_ids, attention_mask, timestamps=timestamps, return_dict=True)
        scores = out.logits.float()             # the forward's own tensor (no copy: [B, n_items] is large at scale)
        # torch.topk ranks NaN above every number (first, for every user), and +-inf at a real item is the same
        # overflow (a +inf item ranked first, a -inf one taken for an excluded slot): column 0 is padding
        self._check_scores(scores)
        scores[:, 0] = -float("inf")
        if excluded:
            scores[:, torch.as_tensor(excluded, device=scores.device)] = -float("inf")
        if exclude_seen:
            mask = attention_mask.bool() if attention_mask is not None else input_ids != 0
            seen = torch.where(mask, input_ids.long(), torch.zeros_like(input_ids.long()))
            scores.scatter_(1, seen.to(scores.device), -float("inf"))
        return scores

    def _check_scores(self, scores: torch.Tensor, what: str = "scores") -> None:
        """:class:`ScoreOverflow` naming the batch rows of ``scores [B, n_items]`` (or ``[B, T, n_items]``) with a NaN
        or infinite value at a real item (column 0, padding, is not read): what :meth:`predict` and :meth:`step`
        refuse. Checked on each row's max and min, NaN propagating: ``[B]`` temporaries only (``torch.isfinite``
        over the whole ``[B, n_items]`` scores made float and bool copies of them, 1.7 GB at 256 x 10^6 items;
        bench/RESULTS_EVAL_MEMORY.md)."""
        real = scores[..., 1:]
        dims = tuple(range(1, real.dim()))
        nan = ~(torch.isfinite(real.amax(dim=dims)) & torch.isfinite(real.amin(dim=dims))) if real.numel() \
            else torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
        if bool(nan.any()):
            rows = nan.nonzero().flatten().tolist()
            raise ScoreOverflow(f"the model's {what} are NaN or infinite in batch rows {rows[:8]}"
                                f"{' ...' if len(rows) > 8 else ''} "
                                f"(a numeric overflow or NaN weights, e.g. in {self.dtype}): a NaN would be "
                                "recommended first, so nothing is ranked", rows=rows)

    def _check_indices(self, indices: Any, what: str) -> list[int]:
        """Internal indices of real items (e.g. :meth:`predict`'s ``exclude_items``) -> Python ints; ``TypeError`` for
        what is not a collection of ints (numpy / torch integer scalars accepted), ``ValueError`` for an index out of
        ``1 .. n_items - 1``, naming ``what`` and the index."""
        if isinstance(indices, (str, bytes, Mapping)) or not hasattr(indices, "__iter__"):
            raise TypeError(f"{what} must be a sequence of internal item indices, got {type(indices).__name__}")
        out = _int_list(indices, what)
        for v in out:
            if not 1 <= v < self.config.n_items:
                raise ValueError(f"{what} holds item index {v}, out of range 1..{self.config.n_items - 1} "
                                 f"(n_items={self.config.n_items}; 0 is padding, never recommended anyway)")
        return out

    def encode_histories(self, histories: Sequence[Sequence[Any]]) -> list[list[int]]:
        """External item ids -> internal indices via the model's vocabulary (identity when it has none)."""
        check_sequence(histories, "histories", "a sequence of histories")
        out = []
        for r, h in enumerate(histories):
            check_sequence(h, f"history {r}", "a sequence of item ids, oldest first")
            h = list(h)
            if len(h) == 0:
                raise ValueError(f"history {r} is empty; every history needs at least one item")
            out.append(self._encode_ids(h, f"history {r}"))
        return out

    def encode_item_set(self, items: Sequence[Any], what: str = "exclude_items") -> list[int]:
        """External ids of a set of items (e.g. items never to recommend) -> sorted distinct internal indices; an id the
        model does not know is an :class:`UnknownItemError` naming ``what`` (a mistyped id would otherwise leave the
        item it meant recommendable)."""
        check_sequence(items, what, "a sequence of item ids")
        return sorted(set(self._encode_ids(list(items), what)))

    def _encode_ids(self, ids: list, where: str) -> list[int]:
        """``ids`` (external) -> internal indices; errors start with ``where`` (``history 3``, ``exclude_items``)."""
        if self.item_vocab is not None:
            try:
                return self.item_vocab.encode(ids)
            except UnknownItemError as e:
                raise UnknownItemError(f"{where}: {e}") from None
            except TypeError as e:
                raise TypeError(f"{where}: {e}") from None
        out = []
        for x0 in ids:
            x = int_id(x0)
            if x is None and isinstance(x0, str) and is_int_text(x0.strip()):   # "42": as export.runtime reads it
                if not is_canonical_int_text(x0):
                    raise UnknownItemError(f"{where}: unknown item id {x0!r}: not the canonical spelling of the int "
                                           f"id {int(x0)} (ids are read as written: '007' and 7 are two ids)")
                x = int(x0)
            if x is None:
                raise TypeError(f"{where}: item id {x0!r} ({type(x0).__name__}) is not an int (the model has no item "
                                "vocabulary, so ids are internal indices)")
            if not 1 <= x < self.config.n_items:
                raise UnknownItemError(f"{where}: item index {x} out of range 1..{self.config.n_items - 1} (the model "
                                       "has no item vocabulary, so ids are internal indices)")
            out.append(x)
        return out

    def decode_items(self, indices: Sequence[int]) -> list[Any]:
        """Internal indices ``[N]`` -> external ids (the vocabulary's; without one, the checked indices themselves).
        An index out of ``1..n_items - 1`` is an ``IndexError``, one that is not an int a ``TypeError``, naming it."""
        if self.item_vocab is None:
            from .vocab import check_indices

            return check_indices(indices, int(self.config.n_items) - 1)
        return self.item_vocab.decode(indices)

    @torch.no_grad()
    def recommend(self, histories: Sequence[Sequence[Any]], k: int = 10, exclude_seen: bool = False,
                  timestamps: Sequence[Sequence[float]] | None = None, batch_size: int = 512,
                  exclude_items: Sequence[Any] | None = None,
                  candidates: Sequence[Any] | Sequence[Sequence[Any]] | None = None) -> Recommendations:
        """Top-``k`` next items for each history, in the caller's own item ids.

        Args:
            histories: ``B`` lists of external item ids, oldest first (the model reads the last ``max_seq_length``).
            k: how many items to return per history (an int, numpy ints accepted).
            exclude_seen: never recommend an item of the given history -- the whole history, also the items older
                than the model's window. Every row still gets ``k`` items: a ``k`` larger than the items a history
                leaves to recommend (``n_items - 1`` minus its distinct items) is refused with a ``ValueError``
                naming both numbers (``zoo.recommend --all-users`` instead lists fewer for such a user).
            timestamps: ``B`` lists of seconds, one per item, for time-aware models (refused for the others).
            batch_size: histories per forward pass.
            exclude_items: external ids never to recommend to anyone (retired or unavailable items, business rules);
                each must be known to the model. With ``exclude_seen``, ``k`` must fit what both leave.
            candidates: rank only these external ids instead of the whole catalogue: one list for every history, or
                ``B`` lists, one per history -- the items an approximate-nearest-neighbour index retrieved (re-ranked
                here by the model's exact scores), the items in stock. Each must be known to the model; the
                exclusions above still apply, and ``k`` must fit the candidates they leave.
        Raises:
            TypeError / ValueError / UnknownItemError naming the problem (a history that is not a sequence of ids,
            an unknown id, a bad ``k``/``batch_size``, timestamps missing or given to a model that reads none).
        """
        idx, timestamps = self._check_histories(histories, timestamps, "recommend", "predict")
        exclude_seen = config_bool(exclude_seen, "exclude_seen")           # "no" is truthy: it would exclude
        k = _as_count(k, "k", 1, self.config.n_items - 1)
        batch_size = _as_count(batch_size, "batch_size")
        excluded = self.encode_item_set(exclude_items) if exclude_items is not None else []
        pools = self._candidate_pools(candidates, len(idx))                # None, or B sorted lists of indices
        if excluded or exclude_seen or pools is not None:
            for r, h in enumerate(idx):
                seen, ex = (set(h) if exclude_seen else set()), set(excluded)
                total = self.config.n_items - 1
                if pools is not None:                          # what the exclusions take from the candidates only
                    pool = set(pools[r])
                    seen, ex, total = seen & pool, ex & pool, len(pool)
                left = total - len(seen | ex)
                if k > left:
                    parts = ([f"{len(seen)} of them in the history"] if exclude_seen else []) + (
                        [f"{len(ex)} in exclude_items"] if excluded else [])
                    what = f"{total} {'candidates' if pools is not None else 'items'}"
                    raise ValueError(f"k={k} is more than the {left} items left to recommend for history {r} "
                                     f"({', '.join([what] + parts)})")
        items, scores = [], []
        done = 0
        for chunk, ids, mask, ts in self.padded_batches(idx, timestamps, batch_size):
            sc = self.predict(ids, mask, timestamps=ts, exclude_items=excluded)
            if exclude_seen:                                   # the whole history, not only the window the model read
                for r, h in enumerate(chunk):
                    sc[r, torch.tensor(h, device=sc.device)] = -float("inf")
            if pools is not None:                              # everything but each row's candidates
                keep = torch.zeros_like(sc, dtype=torch.bool)
                for r in range(len(chunk)):
                    keep[r, torch.tensor(pools[done + r], device=sc.device)] = True
                sc.masked_fill_(~keep, -float("inf"))
            done += len(chunk)
            top = top_k(sc, k, dim=1)              # ties: the lower item index first, as the graphs
            scores.append(top.values.cpu())
            items.extend(self.decode_items(row.tolist()) for row in top.indices.cpu())
        return Recommendations(items=items, scores=torch.cat(scores))

    def _candidate_pools(self, candidates: Any, n: int) -> list[list[int]] | None:
        """:meth:`recommend`'s ``candidates`` -> ``n`` sorted lists of distinct internal indices (one list shared, or
        one per history), None without them; an empty list, a count of lists other than ``n`` or an unknown id is an
        error naming it."""
        if candidates is None:
            return None
        check_sequence(candidates, "candidates", "a sequence of item ids, or one such sequence per history")
        per_history = len(candidates) > 0 and all(
            isinstance(c, (list, tuple, range)) or (hasattr(c, "__len__") and hasattr(c, "dtype") and c.ndim == 1)
            for c in candidates)
        if not per_history:
            shared = self.encode_item_set(list(candidates), "candidates")
            if not shared:
                raise ValueError("candidates is empty: give the items to rank (or None for the whole catalogue)")
            return [shared] * n
        if len(candidates) != n:
            raise ValueError(f"got {len(candidates)} candidate lists for {n} histories (one list per history, or one "
                             "list for all)")
        pools = [self.encode_item_set(list(c), f"candidates of history {r}") for r, c in enumerate(candidates)]
        empty = [r for r, p in enumerate(pools) if not p]
        if empty:
            raise ValueError(f"the candidates of history {empty[0]} are empty")
        return pools

    def _check_histories(self, histories: Any, timestamps: Any, caller: str,
                         tensor_twin: str) -> tuple[list[list[int]], list[torch.Tensor] | None]:
        """Check :meth:`recommend`'s / :meth:`user_vectors`' ``histories`` (external ids) and ``timestamps`` (given
        exactly when the model reads them, one sequence of seconds per history, as long as it) -> ``(internal
        indices, float64 timestamp rows or None)``. Each row is read by :func:`_timestamp_row`, whose errors name the
        history (``timestamps of history 3``) among all given, not within a batch of ``batch_size``."""
        if isinstance(histories, torch.Tensor):
            raise TypeError(f"{caller}() takes lists of external item ids; for index tensors use {tensor_twin}()")
        check_sequence(histories, "histories", "a sequence of histories (lists of item ids)")
        if len(histories) == 0:
            raise ValueError("no histories given")
        if timestamps is not None and not self.uses_timestamps:
            self._refuse_timestamps(f"{caller}()")
        if self.uses_timestamps and timestamps is None:
            raise ValueError(f"{type(self).__name__} reads timestamps: pass timestamps=[[...], ...]")
        idx = self.encode_histories(histories)       # first: a flat list of ids is named as such, not as a count
        if timestamps is not None:
            check_sequence(timestamps, "timestamps", "a sequence of lists of seconds, one list per history")
            if len(timestamps) != len(histories):
                raise ValueError(f"got {len(timestamps)} timestamp lists for {len(histories)} histories")
            timestamps = [_timestamp_row(t, f"timestamps of history {r}") for r, t in enumerate(timestamps)]
            for r, (h, t) in enumerate(zip(idx, timestamps)):
                if len(t) != len(h):
                    raise ValueError(f"history {r} has {len(h)} items but {len(t)} timestamps")
        return idx, timestamps

    def padded_batches(self, idx: Sequence[Sequence[int]], timestamps: Sequence[Sequence[float]] | None,
                       batch_size: int):
        """Yield ``(histories, input_ids [b, L], attention_mask [b, L], timestamps [b, L] | None)`` per
        ``batch_size`` histories of internal indices (and their timestamps, for a model that reads them), padded by
        :meth:`pad_batch` (the last ``max_seq_length`` items of each) and on the model's device."""
        device = next(self.parameters()).device
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            if self.uses_timestamps:
                ids, mask, ts = self.pad_batch(chunk, timestamps=timestamps[s:s + batch_size])
                yield chunk, ids.to(device), mask.to(device), ts.to(device)
            else:
                ids, mask = self.pad_batch(chunk)
                yield chunk, ids.to(device), mask.to(device), None

    # ------------------------------------------------- vectors for retrieval
    @property
    def vector_size(self) -> int:
        """Width of :meth:`query_vectors` / :meth:`item_vectors`: ``D``, plus one column for the item bias of the
        models whose output layer has one (LRURec, BERT4Rec)."""
        weight, bias = self.item_output()
        return int(weight.shape[1]) + (bias is not None)

    @torch.no_grad()
    def query_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, vector_size]`` float32 user (query) vectors of a padded batch of internal indices -- the hidden state
        the next item is scored from, with a column of 1s appended when the output layer has an item bias -- so that
        ``query_vectors(...) @ item_vectors().vectors.T`` is the forward's logits of items ``1 .. n_items - 1``
        (maximum-inner-product search over :meth:`item_vectors` ranks exactly as :meth:`predict`)."""
        with self.eval_mode():
            ids, mask, ts = self.check_inputs(input_ids, attention_mask, timestamps)
            return self.vector_of_hidden(self._at_last(self.encode(ids, mask, ts), mask))

    def vector_of_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` hidden states scored from -> ``[B, vector_size]`` float32 query vectors (a column of 1s appended
        when the output layer has an item bias); the exported graphs' ``user_vector`` output is this too."""
        v = hidden.float()
        if self.item_output()[1] is not None:
            v = torch.cat([v, torch.ones_like(v[:, :1])], 1)                         # [B, D + 1]
        return v

    @torch.no_grad()
    def user_vectors(self, histories: Sequence[Sequence[Any]], timestamps: Sequence[Sequence[float]] | None = None,
                     batch_size: int = 512) -> torch.Tensor:
        """``[B, vector_size]`` :meth:`query_vectors` of histories of external item ids (as :meth:`recommend` takes
        them; the model reads the last ``max_seq_length`` items), on the CPU. Bad histories raise as in
        :meth:`recommend`."""
        idx, timestamps = self._check_histories(histories, timestamps, "user_vectors", "query_vectors")
        batch_size = _as_count(batch_size, "batch_size")
        return torch.cat([self.query_vectors(ids, mask, timestamps=ts).cpu()
                          for _, ids, mask, ts in self.padded_batches(idx, timestamps, batch_size)])

    @torch.no_grad()
    def item_vectors(self) -> ItemVectors:
        """Every real item's vector for retrieval, ``[n_items - 1, vector_size]`` float32 on the CPU (row ``r`` is
        internal item ``r + 1``, whose external id is ``ids[r]``): its output-layer row, with its bias appended when
        the output layer has one. See :meth:`query_vectors`."""
        weight, bias = self.item_output()
        vectors = weight[1:].detach().float().cpu()                                 # [V - 1, D]
        if bias is not None:
            vectors = torch.cat([vectors, bias[1:].detach().float().cpu()[:, None]], 1)
        return ItemVectors(ids=self.decode_items(range(1, self.config.n_items)), vectors=vectors)

    @torch.no_grad()
    def similar_items(self, items: Sequence[Any], k: int = 10,
                      exclude_items: Sequence[Any] | None = None) -> Recommendations:
        """The ``k`` items nearest to each of ``items`` (external ids) by cosine similarity of their output-layer
        rows (the item embeddings the model scores with, without the bias), best first; the item itself, and the
        external ids in ``exclude_items``, never appear. Scores are cosines in ``[-1, 1]``.

        This is what the item table learned: "items like this one", not "what comes next" (for that, the model on
        the user's history; ``recommend([[item]])`` reads one item as a new user's first, which on ML-1M ranks the
        next item worse than these neighbours do, ``bench/RESULTS_ITEM_SIMILARITY.md``).
        Raises ``UnknownItemError`` for an id the model does not know, ``ValueError`` for a ``k`` larger than the
        items left."""
        check_sequence(items, "items", "a sequence of item ids")
        if len(items) == 0:
            raise ValueError("no items given")
        query = self._encode_ids(list(items), "items")
        excluded = self.encode_item_set(exclude_items) if exclude_items is not None else []
        gone = set(excluded)                                     # per query: the real items but it and the excluded
        most = min(self.config.n_items - 1 - len(gone | {q}) for q in query)
        k = _as_count(k, "k", 1)
        if k > most:
            raise ValueError(f"k={k} is more than the {most} items left to return ({self.config.n_items - 1} items, "
                             f"the query item{f' and {len(excluded)} in exclude_items' if excluded else ''} left out)")
        weight = F.normalize(self.item_output()[0].detach().float(), dim=1)          # [V, D] unit rows
        q = torch.as_tensor(query, device=weight.device)
        sims = weight[q] @ weight.t()                                                # [Q, V] cosines
        sims[:, 0] = -float("inf")
        sims[torch.arange(len(query), device=weight.device), q] = -float("inf")
        if excluded:
            sims[:, torch.as_tensor(excluded, device=weight.device)] = -float("inf")
        top = top_k(sims, k, dim=1)
        return Recommendations(items=[self.decode_items(row.tolist()) for row in top.indices.cpu()],
                               scores=top.values.cpu())

    # ------------------------------------------------------------- stepwise
    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Fresh recurrent state for ``batch_size`` empty histories (named float32 tensors, see :meth:`state_spec`).

        ``device`` defaults to the model's; one asked for that is not there (CUDA without a GPU) is a ``ValueError``.
        """
        batch_size = _as_count(batch_size, "batch_size")
        device = next(self.parameters()).device if device is None else resolve_device(device)
        return {s.name: torch.full(s.shape, s.init, dtype=s.dtype, device=device) for s in self.state_spec(batch_size)}

    def check_state(self, state: State, batch_size: int) -> None:
        """Refuse a state that is not the named tensors of :meth:`state_spec` for ``batch_size`` rows: wrong names,
        shapes or dtypes, tensors without data (the meta device), and NaN or infinite values."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of named tensors (from init_state), got {type(state).__name__}")
        spec = {s.name: s for s in self.state_spec(batch_size)}
        missing = sorted(set(spec) - set(state))
        extra = sorted(set(state) - set(spec))
        if missing or extra:
            raise ValueError(f"state has wrong tensors: missing {missing}, unexpected {extra}")
        for name, s in spec.items():
            t = state[name]
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"state[{name!r}] must be a tensor, got {type(t).__name__}")
            if tuple(t.shape) != tuple(s.shape):
                raise ValueError(f"state[{name!r}] has shape {list(t.shape)}, expected {list(s.shape)} "
                                 f"for batch size {batch_size}")
            if t.dtype != s.dtype:
                raise TypeError(f"state[{name!r}] has dtype {t.dtype}, expected {s.dtype}")
            if t.is_meta:
                raise ValueError(f"state[{name!r}] is on the meta device (a tensor without data)")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"state[{name!r}] holds NaN or infinite values")

    @torch.no_grad()
    def step(self, item_ids: torch.Tensor, state: State, timestamps: torch.Tensor | None = None,
             all_positions: bool = False) -> tuple[torch.Tensor, State]:
        """Advance the recurrent state by ``T >= 1`` new items per row and score the next item.

        Args:
            item_ids: ``[B, T]`` int64 internal indices (no padding: every row gets ``T`` real items).
            state: named state tensors from :meth:`init_state` or a previous :meth:`step`; not modified in place.
            timestamps: ``[B, T]`` seconds for time-aware models.
            all_positions: return logits after each of the ``T`` items (``[B, T, n_items]``) instead of only the last.
        Returns:
            ``(logits [B, n_items] or [B, T, n_items], new_state)``, the logits in :meth:`forward`'s dtype (the
            model's; float32 for a 16-bit model, :meth:`score`; the state is float32 in every dtype, so a float64
            model steps to float32 accuracy); logits equal :meth:`forward`'s at the same
            history (exactly, up to float error, for models with ``has_exact_step``). Runs in eval mode
            (:meth:`eval_mode`) and under ``torch.no_grad()``, like :meth:`predict`: serving, not training (which goes
            through :meth:`forward`). With gradients, the state of each step would hold the autograd graph of every
            step before it, and a serving loop would grow in memory without bound. Timestamps given to a model that
            reads none are an error, and so are logits NaN or infinite at a real item (a numeric overflow, e.g. of
            16-bit weights or a state): a :class:`ScoreOverflow` naming the batch rows, as :meth:`predict` raises
            (one max and min over the logits, a small cost next to scoring them; :meth:`forward`, which training
            runs, is not checked).
        """
        all_positions = config_bool(all_positions, "all_positions")      # "no" is truthy
        ids = self._check_ids(item_ids, "item_ids")
        if (ids == 0).any():
            raise ValueError("item_ids for step() must be real items (>= 1); padding index 0 is not allowed")
        self.check_state(state, ids.shape[0])
        ts = None
        if self.uses_timestamps:
            ts = self.check_timestamps(timestamps, torch.ones_like(ids, dtype=torch.bool))
        elif timestamps is not None:
            self._refuse_timestamps()
        with self.eval_mode():
            hidden, new_state = self._step(ids, state, ts)                    # [B, T, D]
            logits = self.score(hidden if all_positions else hidden[:, -1])
        self._check_scores(logits, "step logits")        # a NaN / inf served would be recommended first
        return logits, new_state

    # ------------------------------------------------------------- catalogue
    def add_items(self, items: Sequence[Any]) -> list:
        """Give item ids the vocabulary lacks (a catalogue that gained items) their own rows: ``items`` are external
        ids, those already known are skipped; returns the ids added, which get the indices after the old ones
        (:meth:`ItemVocab.extended`). The new rows start as described in :meth:`resize_items` (the mean item), so the
        model scores the old items as before (to float rounding) and the new ones alike, near an average item, until
        training (``zoo.train --init-from MODEL --unknown-items add``) tells them apart."""
        if self.item_vocab is None:
            raise ValueError(f"{type(self).__name__} has no item vocabulary to add ids to; resize_items(n_items) grows "
                             "a model that uses internal indices")
        check_sequence(items, "items", "a sequence of item ids")
        vocab, added = self.item_vocab.extended(items)
        if added:
            self._grow_item_rows(vocab.n_items)
            self.item_vocab = vocab
        return added

    def resize_items(self, n_items: int) -> None:
        """Grow a model without an item vocabulary to ``n_items`` rows (padding included; ``config.n_items``).

        The old rows keep their indices and values, so the old items' logits do not change (but for the rounding of a
        wider matmul). Each new item row (and its output bias, where the model has one) is the **mean of the real item
        rows** (indices ``1..``), as Hugging Face's ``resize_token_embeddings(mean_resizing=True)`` starts new
        tokens: a new item scores like an average item for every history, not by the luck of a random draw, and the
        start is deterministic. Rows after the items (BERT4Rec's [MASK]) move to the end of the table. Shrinking is
        refused: it would re-index items. A model with a vocabulary grows through :meth:`add_items`, which keeps ids
        and rows in step.
        """
        if self.item_vocab is not None:
            raise ValueError(f"{type(self).__name__} has an item vocabulary: add_items(ids) grows it and the model "
                             "together (rows without ids could be recommended but not decoded)")
        self._grow_item_rows(n_items)

    def resize_token_embeddings(self, *args, **kwargs):
        """Not the way to grow a recommender: Hugging Face's version would leave ``config.n_items``, the item bias and
        BERT4Rec's [MASK] row behind. Refused with the methods that do it."""
        raise NotImplementedError(f"{type(self).__name__}: grow the item table with add_items(ids) (a model with an "
                                  "item vocabulary) or resize_items(n_items), which keep config.n_items, the item "
                                  "bias and any rows after the items in step")

    @torch.no_grad()
    def _grow_item_rows(self, n_items: int) -> None:
        old = int(self.config.n_items)
        new = _as_count(n_items, "n_items", lo=old)
        if new == old:
            return
        table = self.get_input_embeddings()
        weight, bias = self.item_output()
        if weight.data_ptr() != table.weight.data_ptr() or weight.shape[0] != old:
            raise ValueError(f"{type(self).__name__}: its output layer is not the leading rows of its item table; "
                             "growing the catalogue is implemented for tied item tables only")
        extra = table.num_embeddings - old                      # rows after the items: BERT4Rec's [MASK]
        params = {id(p): name for name, p in self.named_parameters()}
        def grown(t: torch.Tensor, tail: int) -> torch.Tensor:
            """``t``'s item rows, then ``new - old`` copies of their mean (rows ``1..old-1``), then ``tail`` rows."""
            mean = t[1:old].mean(0, keepdim=True) if old > 1 else torch.zeros_like(t[:1])
            return torch.cat([t[:old], mean.expand(new - old, *t.shape[1:]).to(t.dtype), t[old:old + tail]])

        def replace(param: torch.Tensor, value: torch.Tensor) -> None:
            owner, _, attr = params[id(param)].rpartition(".")
            module = self.get_submodule(owner) if owner else self
            setattr(module, attr, torch.nn.Parameter(value.contiguous(), requires_grad=param.requires_grad))

        if bias is not None:
            if id(bias) not in params:
                raise ValueError(f"{type(self).__name__}: the item bias is not a parameter; cannot grow it")
            replace(bias, grown(bias, 0))
        replace(table.weight, grown(table.weight, extra))
        table.num_embeddings = new + extra
        self.config.n_items = new

    # ------------------------------------------------------------- save/load
    def set_item_vocab(self, vocab: ItemVocab | None) -> None:
        if vocab is not None and vocab.n_items != self.config.n_items:
            raise ValueError(f"item vocabulary has {len(vocab)} items (n_items {vocab.n_items}) but the model has "
                             f"n_items={self.config.n_items}")
        self.item_vocab = vocab

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """Write ``config.json``, ``model.safetensors`` and ``item_vocab.json`` (when the model has a vocabulary).

        The files are written in a staging folder inside ``save_directory`` and moved into place whole, the config
        last: an interruption (Ctrl-C while ``zoo.train`` saves a new best checkpoint) leaves the earlier files as
        they were, never a truncated ``model.safetensors``. Once the new files are all in place, the weight files of
        an earlier save into the folder that this save did not write (``model.safetensors``,
        ``model.safetensors.index.json``, ``model-*-of-*.safetensors``) are removed: a single file left beside a new
        sharded index would be what loads, and stale shards would linger. The staging folder (``.save-<pid>-*``) is
        locked while the save runs; those that killed saves left (SIGKILL, the OOM killer) are removed by the next
        save into the folder (:func:`zoo.cli.staging_folder`). A file replaced keeps its mode; a new one gets the
        umask's.

        Refused before anything is written or removed: ``safe_serialization=False`` (no pickles), ``variant=`` (the
        zoo's loaders read ``model.safetensors`` only: a ``model.fp16.safetensors`` would replace the folder's weights
        with a file nothing loads) and a ``state_dict`` without a tensor. A save that writes no weight file for any
        other reason is refused before the staged files are moved, so the folder's weights stay.
        ``safe_serialization`` (always True here) is taken out before transformers sees it: transformers 5 has no such
        argument and hands what it does not know to ``create_repo``.
        ``is_main_process=False`` writes nothing, as in transformers (the other processes of a distributed run).

        ``push_to_hub=True`` does what transformers' does, in the same order: ``create_repo(repo_id, exist_ok=True,
        token=token, **the other keywords)`` first (``repo_id`` defaults to the folder's name; offline, transformers'
        ``OfflineModeIsEnabled`` before anything is written), then this save (staged, as above), then transformers'
        model card as ``README.md``, then one commit of the files the save wrote or changed (``commit_message``,
        ``create_pr``) -- ``item_vocab.json`` included, which transformers' own push would leave behind."""
        import inspect

        from .cli import _mode_for, staging_folder

        if not kwargs.get("safe_serialization", True):
            raise ValueError("zoo models are saved as safetensors only (no pickles)")
        if "safe_serialization" not in inspect.signature(PreTrainedModel.save_pretrained).parameters:
            kwargs.pop("safe_serialization", None)     # transformers 5 would pass it on to create_repo (a TypeError)
        given = inspect.signature(PreTrainedModel.save_pretrained).bind(self, save_directory, *args, **kwargs).arguments
        variant, state_dict = given.get("variant"), given.get("state_dict")
        if variant is not None:
            raise ValueError(f"variant={variant!r}: zoo models are saved as model.safetensors only (the zoo's loaders "
                             "read no variant files); save those weights to a folder of their own instead")
        if state_dict is not None and len(state_dict) == 0:
            raise ValueError("state_dict is empty: the save would write no weights (and drop the folder's); leave "
                             "state_dict out to save the model's own")
        if not given.get("is_main_process", True):      # transformers writes nothing then; nor is anything removed
            os.makedirs(save_directory, exist_ok=True)
            return
        if given.get("push_to_hub"):
            return self._save_and_push(save_directory, given)
        os.makedirs(save_directory, exist_ok=True)
        # config.json records whether a vocabulary belongs to these weights, so that loading can tell a deleted
        # item_vocab.json (error) from a model that never had one, and a stale one left from earlier weights
        self.config.item_vocab_file = VOCAB_FILE if self.item_vocab is not None else None
        # in .save-<pid>-*, locked while this save lives: the next save removes it if this one is killed
        with staging_folder(save_directory, SAVE_STAGE_PREFIX) as stage:
            with _no_weight_bars():
                super().save_pretrained(stage, *args, **kwargs)
            if self.item_vocab is not None:
                self.item_vocab.save(stage)
            written = set(os.listdir(stage))
            if not any(_WEIGHT_FILE.fullmatch(n) for n in written):     # nothing moved yet: the folder's stay
                raise ValueError(f"save_pretrained wrote no weight file (only {sorted(written)}); "
                                 f"{save_directory} is left as it was")
            for name in sorted(written, key=lambda n: n == "config.json"):
                dst = os.path.join(save_directory, name)
                # the mode of the file it replaces, else the umask's, as zoo.cli writes its files (safetensors
                # creates the weights 0600)
                os.chmod(os.path.join(stage, name), _mode_for(dst, 0o666))
                os.replace(os.path.join(stage, name), dst)
        # only now that the new save is whole: the weight files of an earlier save that this one did not
        # overwrite (a model.safetensors beside a new sharded index would be what loads; stale shards)
        for name in os.listdir(save_directory):
            if name not in written and _WEIGHT_FILE.fullmatch(name) \
                    and os.path.isfile(os.path.join(save_directory, name)):
                os.remove(os.path.join(save_directory, name))
        if self.item_vocab is None and os.path.exists(os.path.join(save_directory, VOCAB_FILE)):
            os.remove(os.path.join(save_directory, VOCAB_FILE))     # it described the weights just replaced

    def _save_and_push(self, save_directory: str | os.PathLike, given: dict[str, Any]) -> None:
        """:meth:`save_pretrained` with ``push_to_hub=True`` (``given``: its bound arguments), as transformers' own
        ``save_pretrained`` pushes: ``create_repo`` with the keywords it does not know, the save, the model card, one
        commit of the files written or changed since (``PushToHubMixin._upload_modified_files``)."""
        import huggingface_hub
        from transformers.utils import hub as hf_hub

        local = {k: v for k, v in given.items() if k not in ("self", "save_directory", "kwargs")}
        hub = dict(given.get("kwargs", {}))
        repo_id = hub.pop("repo_id", os.path.basename(os.path.normpath(os.fspath(save_directory))))
        commit_message, create_pr = hub.pop("commit_message", None), hub.pop("create_pr", False)
        token = local.get("token")
        if token is not None:
            hub["token"] = token
        # transformers' shared HfApi where it has one (not yet in 5.6, which calls huggingface_hub's own)
        api = hf_hub.hf_api() if hasattr(hf_hub, "hf_api") else huggingface_hub.HfApi()
        repo_id = api.create_repo(repo_id, exist_ok=True, **hub).repo_id
        os.makedirs(save_directory, exist_ok=True)
        stamps = self._get_files_timestamps(save_directory)
        self.save_pretrained(save_directory, **{**local, "push_to_hub": False})
        card = hf_hub.create_and_tag_model_card(repo_id, self.model_tags, token=token)
        card.save(os.path.join(save_directory, "README.md"))
        self._upload_modified_files(save_directory, repo_id, stamps, commit_message=commit_message, token=token,
                                    create_pr=create_pr)

    def _upload_modified_files(self, working_dir: str | os.PathLike, repo_id: str, files_timestamps: dict[str, float],
                               commit_message: str | None = None, token: bool | str | None = None,
                               create_pr: bool = False, revision: str | None = None,
                               commit_description: str | None = None):
        """transformers' upload (``PushToHubMixin._upload_modified_files``, the commit of ``save_pretrained(...,
        push_to_hub=True)`` and ``push_to_hub``): one commit adding the files of ``working_dir`` written or changed
        since ``files_timestamps`` (``{name: mtime}``; empty: all), on branch ``revision`` (created when missing) or as
        a pull request. transformers' only adds files; here the same commit also deletes the repo's files that the
        zoo's save owns and ``working_dir`` no longer holds: an earlier push's ``item_vocab.json`` (``from_pretrained``
        refuses weights saved without a vocabulary beside one) and weight files (``model.safetensors``, shards and
        their index, :data:`_WEIGHT_FILE`: a stale index would be what loads), named in a warning. Other files of the
        repo (a user's notes, ``.gitattributes``) are left. The repo's files are listed at ``revision`` (the base of a
        pull request; the default branch where that branch could not be made); offline nothing is listed or deleted
        (the commit fails as transformers' does). Returns ``create_commit``'s ``CommitInfo``."""
        import huggingface_hub
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RevisionNotFoundError
        from transformers.utils import hub as hf_hub

        api = hf_hub.hf_api() if hasattr(hf_hub, "hf_api") else huggingface_hub.HfApi()
        if commit_message is None:      # transformers' default for a model class
            name = type(self).__name__
            commit_message = "Upload model" if "Model" in name else f"Upload {name}"
        held = os.listdir(working_dir)
        modified = [f for f in held if f not in files_timestamps
                    or os.path.getmtime(os.path.join(working_dir, f)) > files_timestamps[f]]
        operations: list = []
        for f in modified:              # as transformers: root files, and the files of root folders
            full = os.path.join(working_dir, f)
            if os.path.isdir(full):
                operations += [CommitOperationAdd(path_or_fileobj=os.path.join(full, g), path_in_repo=f"{f}/{g}")
                               for g in os.listdir(full)]
            elif os.path.isfile(full):
                operations.append(CommitOperationAdd(path_or_fileobj=full, path_in_repo=f))
        if revision is not None and not revision.startswith("refs/pr"):
            try:
                api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
            except HfHubHTTPError as e:     # as transformers: a pull request on a repo one may not branch
                if not (e.response is not None and e.response.status_code == 403 and create_pr):
                    raise
        try:
            try:
                remote = api.list_repo_files(repo_id, revision=revision, token=token)
            except RevisionNotFoundError:
                remote = api.list_repo_files(repo_id, token=token)
        except OfflineModeIsEnabled:
            remote = []
        stale = sorted(f for f in set(remote) - set(held)
                       if "/" not in f and (f == VOCAB_FILE or _WEIGHT_FILE.fullmatch(f)))
        if stale:
            logger.warning("%s: the commit also deletes %s, left by an earlier push (this save has no such file: "
                           "served beside the new weights, they would not belong to them)", repo_id, ", ".join(stale))
        operations += [CommitOperationDelete(path_in_repo=f) for f in stale]
        logger.info("Uploading the following files to %s: %s", repo_id, ",".join(modified))
        return api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message,
                                 commit_description=commit_description, token=token, create_pr=create_pr,
                                 revision=revision)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a zoo model from a folder (or Hub id): strict about class, weights and vocabulary.

        Raises ``ValueError`` when the checkpoint is of another model type or of a ``model_type`` the zoo does not
        have (registered, :func:`zoo.models.register_model`, or the loading class's own), when weights are missing,
        unexpected, of the wrong shape, not floating point or not finite (NaN/inf),
        when the weight files hold another number of layers than ``num_layers`` (told from their tensor names before
        any model is built), when a size is beyond what torch can hold (``n_items=2**62``), when the weight file is
        missing or corrupt, when the vocabulary does not fit ``n_items``, or
        when ``config.item_vocab_file`` (written by :meth:`save_pretrained`) says a vocabulary belongs to the weights
        and it is missing, or that none does and one is there.

        ``revision``, ``subfolder``, ``cache_dir``, ``token``, ``local_files_only`` and ``force_download`` say which
        files to fetch (:func:`zoo.pretrained.resolve_pretrained`: a pinned revision is never served the bundled copy;
        a missing subfolder is an error naming it). Other keywords that are config fields (or a field's alias,
        :attr:`SeqRecConfig.field_aliases`: LRURec's ``dropout``) override the saved config, checked as the config's
        ``__init__`` checks them (:meth:`SeqRecConfig.from_dict`); one that is neither a field
        nor an argument of transformers' ``from_pretrained`` is a ``ValueError`` naming the closest field.
        ``use_safetensors=False`` and ``variant=`` are refused: zoo models are saved and loaded as
        ``model.safetensors`` only. A bad value in ``config.json`` is a ``ValueError`` naming the file and the field
        (:meth:`SeqRecConfig.from_dict`); one nested more than :data:`MAX_CONFIG_DEPTH` levels deep is the ``OSError``
        transformers gives invalid JSON. Errors name a Hub id as given, with the folder it was resolved to.
        ``output_loading_info=True`` returns ``(model, info)`` as transformers does; ``info``'s lists are empty, since
        any problem they would hold is an error here.
        """
        from .pretrained import HUB_KWARGS, resolve_pretrained

        use_safetensors = kwargs.get("use_safetensors")
        if use_safetensors is not None and use_safetensors is not True:
            raise ValueError(f"use_safetensors={use_safetensors!r}: zoo models are saved and loaded as safetensors "
                             "only (no pickled weights); leave use_safetensors out")
        variant = kwargs.pop("variant", None)
        if variant is not None:
            raise ValueError(f"variant={variant!r}: zoo checkpoints hold model.safetensors only (save_pretrained "
                             "writes no variants); leave variant out and load the folder that holds those weights")
        name = os.fspath(pretrained_model_name_or_path)
        path = resolve_pretrained(pretrained_model_name_or_path,
                                  **{k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs})
        # how errors name the checkpoint: a Hub id as given (and where it was found), not only a cache snapshot
        shown = kwargs.pop("_zoo_shown", None) or (path if os.path.isdir(name) else f"{name} ({path})")
        config = kwargs.pop("config", None)
        given_config = config is not None
        if config is None:
            cfg_cls = _check_model_type(path, cls)
            fields = (cfg_cls.init_fields() | set(cfg_cls.derived_fields) | set(cfg_cls.field_aliases)
                      if cfg_cls is not None else set())
            fields |= {"output_hidden_states", "output_attentions", "return_dict"}
            # a registered model_type is read by AutoConfig; the class's own, maybe unregistered, by its config class
            from .models import MODELS

            reader = AutoConfig if cfg_cls is None or cfg_cls.model_type in MODELS else cfg_cls
            # config overrides, checked by the config's __init__ (SeqRecConfig.from_dict), not set past its checks
            with _reading_config(_config_json(name, path)):
                config = reader.from_pretrained(path, **{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
        if cls is SeqRecPreTrainedModel:  # the base class loads whatever concrete model the folder holds
            from .models import get_model_class

            return get_model_class(config.model_type)[1].from_pretrained(path, *model_args, config=config,
                                                                         _zoo_shown=shown, **kwargs)
        expected = getattr(cls.config_class, "model_type", None)
        if cls is not SeqRecPreTrainedModel and expected not in (None, "seqrec") and config.model_type != expected:
            raise ValueError(f"{shown} holds a {config.model_type!r} checkpoint; it cannot be loaded into "
                             f"{cls.__name__} (model_type {expected!r}). Use AutoModel.from_pretrained or the right "
                             "class.")
        loading_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("use_safetensors", True)
        weight_files = _weight_files(path)
        # before transformers' load report on another model's weights, and before any model is built
        _check_weight_names(cls, config, weight_files, shown, os.path.join(path, "config.json"))
        try:
            with _no_weight_bars():
                model, info = super().from_pretrained(path, *model_args, config=config, output_loading_info=True,
                                                      **kwargs)
        except Exception as e:  # safetensors header errors, truncated files, size mismatches, ...
            text = f"{type(e).__module__} {e}".lower()
            if _is_safetensors_error(e):        # by type: a "no file named model.safetensors" is no corruption
                raise ValueError(f"corrupt weight file in {path}: {e}") from e
            if _is_size_overflow(e):            # sizes torch cannot describe, e.g. where the header was unreadable
                raise _overflow_error(e, config, cls, os.path.join(path, "config.json")) from None
            stray = re.search(r"__init__\(\) got an unexpected keyword argument '(\w+)'", str(e))
            if isinstance(e, TypeError) and stray and isinstance(config, SeqRecConfig):   # left over for cls(config)
                name = stray.group(1)
                field = config.field_aliases.get(name, name)
                if given_config and field in config.init_fields():
                    alias = "" if field == name else f" an alias of {field},"
                    raise ValueError(f"{name} is{alias} a field of {type(config).__name__}: with config= given, set "
                                     f"{'it' if field == name else field} on that config instead of passing {name}= "
                                     "to from_pretrained") from None
                raise ValueError(f"{unknown_fields_message(type(config), [name])}; nor is {name} an argument of "
                                 "from_pretrained") from None
            if "mismatch" in text:
                raise ValueError(f"weights in {shown} do not match {cls.__name__}({config.model_type}): "
                                 f"tensor shapes differ from the config ({e})") from e
            raise
        problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if problems:
            detail = "; ".join(f"{k.replace('_', ' ')}: {sorted(map(str, v))[:5]}" for k, v in problems.items())
            raise ValueError(f"weights in {shown} do not match {cls.__name__}({config.model_type}): {detail}")
        _check_weight_values(weight_files)
        _check_loaded_values(model, shown)      # finite in the file, but maybe not in the dtype loaded (torch_dtype)
        vocab_path = os.path.join(path, VOCAB_FILE) if os.path.isdir(path) else None
        recorded = getattr(config, "item_vocab_file", "unrecorded")      # unrecorded: saved before the field existed
        if vocab_path and recorded not in (None, "unrecorded") and not os.path.exists(vocab_path):
            raise ValueError(f"{path} was saved with an item vocabulary ({recorded}) but {VOCAB_FILE} is missing: "
                             "without it the model's item ids are internal indices, not the data's ids")
        if vocab_path and recorded is None and os.path.exists(vocab_path):
            raise ValueError(f"{path}/{VOCAB_FILE} does not belong to these weights (config.json says the model "
                             "was saved without a vocabulary): remove it, or re-save the model with its vocabulary")
        if vocab_path and os.path.exists(vocab_path):
            model.set_item_vocab(ItemVocab.load(vocab_path))
        return (model, info) if loading_info else model

    def _init_weights(self, module: torch.nn.Module) -> None:
        """RecBole's init: linear/embedding weights N(0, initializer_range), biases 0, LayerNorm (1, 0)."""
        std = self.config.initializer_range
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)

    def _initialize_weights(self, module: torch.nn.Module, *args, **kwargs) -> None:
        """Transformers' per-module init pass (``post_init``, and ``from_pretrained`` after loading): a module whose
        own parameters and buffers were all loaded (each flagged ``_is_hf_initialized`` by transformers' loader) is
        left alone, in every zoo model and on every transformers version. Transformers applies this rule itself only
        to code it counts as custom (5.2x; 5.6 did not at all, and re-initialised loaded weights without a word), and
        a model's ``_init_weights`` may write a tensor in place itself (``.copy_``, ``.fill_``), which transformers'
        guarded init helpers (``transformers.initialization``) cannot catch. A module with no parameters or buffers
        of its own, or with one not loaded, is initialised as transformers does."""
        own = [t for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)) if t is not None]
        if own and all(getattr(t, "_is_hf_initialized", False) for t in own):
            module._is_hf_initialized = True
            return
        super()._initialize_weights(module, *args, **kwargs)


#: models inside :meth:`SeqRecPreTrainedModel.eval_mode` -> ``[blocks inside, training mode before]``
_EVAL_SECTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_EVAL_SECTIONS_LOCK = threading.RLock()


@contextlib.contextmanager
def _no_weight_bars():
    """Transformers draws "Loading weights" and "Writing model shards" bars; a zoo model has a few dozen small
    tensors in one file, so the bars are noise on every CLI's first line (and in every training log run with
    ``--no-progress``). Off while loading a local folder (nothing is downloaded inside) or saving one, then restored
    exactly as they were: transformers' switch, and huggingface_hub's global and per-group settings (which
    transformers' ``enable_progress_bar`` would reset to "all on"); process-wide, like transformers' own switch."""
    import sys

    from transformers.utils import logging as hf_logging

    if not hf_logging.is_progress_bar_enabled():
        yield
        return
    from huggingface_hub import utils as hub_utils

    # huggingface_hub keeps its settings in one dict ({"_global": bool, group: bool, ...}) in the module defining
    # enable_progress_bars (huggingface_hub.utils.tqdm in 2.4); without it, the global setting (public API)
    states = getattr(sys.modules.get(hub_utils.enable_progress_bars.__module__), "progress_bar_states", None)
    saved = dict(states) if isinstance(states, dict) else None
    hub_off = hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if hasattr(hf_logging, "_tqdm_active"):
            hf_logging._tqdm_active = True          # transformers' flag alone (enable_progress_bar resets the hub's)
        else:
            hf_logging.enable_progress_bar()
        if saved is not None:
            states.clear()
            states.update(saved)
        elif hub_off:
            hub_utils.disable_progress_bars()
        else:
            hub_utils.enable_progress_bars()


def _is_safetensors_error(e: BaseException) -> bool:
    """Whether ``e`` (or what it was raised from) is safetensors' own error: a header that does not parse, a file cut
    short. Told by type, not by the text, which names model.safetensors in a plain "no such file" too."""
    from safetensors import SafetensorError

    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, SafetensorError):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _check_model_type(path: str, cls: type | None = None) -> type[SeqRecConfig] | None:
    """A one-line error for a ``config.json`` whose ``model_type`` is no zoo model (before transformers' advice to
    upgrade transformers); a folder without a readable ``config.json`` is left to ``AutoConfig``'s own error (None).
    A zoo model is one registered (:func:`zoo.models.register_model`: the zoo's own and those other packages
    register), or the ``model_type`` of ``cls``'s own config class when ``cls`` (the class loading it) is a concrete
    model class (a model of another package loads its own checkpoints, registered or not).
    A file nested more than :data:`MAX_CONFIG_DEPTH` levels deep (or past Python's JSON reader) is refused here with
    transformers' one line for invalid JSON (:func:`_too_deep`). Returns the config class of the ``model_type``."""
    from .models import MODELS

    file = os.path.join(path, "config.json")
    try:
        saved = read_json(file, max_depth=MAX_CONFIG_DEPTH)
    except FileNotFoundError:
        if os.path.isdir(path):                 # not transformers' "Should have a `model_type` key" for no file at all
            raise ValueError(f"{file} is missing: {path} is not a saved zoo model "
                             "folder (save_pretrained writes config.json next to the weights)") from None
        return
    except JSONNestedTooDeep:
        raise _too_deep(file) from None
    except (OSError, ValueError):               # not JSON, not UTF-8, unreadable: AutoConfig's own error
        return
    if not isinstance(saved, dict):
        return
    model_type = saved.get("model_type")
    own = getattr(cls, "config_class", None) if cls is not None and cls is not SeqRecPreTrainedModel else None
    if model_type not in MODELS and isinstance(own, type) and issubclass(own, SeqRecConfig) \
            and isinstance(model_type, str) and own.model_type == model_type:
        return own
    if model_type not in MODELS:
        from .models import failed_entry_points_note

        raise ValueError(f"{os.path.join(path, 'config.json')}: model_type {model_type!r} is not a zoo model "
                         f"(the zoo has {sorted(MODELS)}){failed_entry_points_note(str(model_type))}")
    return MODELS[model_type][0]


#: the staging folder of :meth:`SeqRecPreTrainedModel.save_pretrained` inside the folder saved to, followed by the
#: saver's pid (:func:`zoo.cli.staging_folder`); hidden, so that uploads and copies of the folder skip it
SAVE_STAGE_PREFIX = ".save-"
#: the weight files a save writes: one ``model.safetensors``, or shards and their index
_WEIGHT_FILE = re.compile(r"model\.safetensors|model\.safetensors\.index\.json|model-\d+-of-\d+\.safetensors")


def _check_weight_names(cls, config, files: list[str], path: str, source: str | None = None) -> None:
    """``ValueError`` when the weight files hold tensors ``cls(config)`` has no parameter for (e.g. a gru4rec config
    over SASRec weights), naming a few keys as the load's own check does, or tensors whose shape (from the
    safetensors header) is not the model's (``max_seq_length=10`` over a window of 6), naming the tensors and both
    shapes: one line, before transformers prints its multi-line load report. ``path``: the checkpoint as errors name it;
    ``source``: its ``config.json`` (the fields named in errors are said to come from it when they hold its values).

    Nothing is built at the config's ``num_layers`` before the file is known to hold that many layers: the keys of a
    layer are found by building the model on the meta device with 1 and 2 layers (:func:`_layer_templates`), the
    layers the file holds from its tensor names (the safetensors headers only), and a ``num_layers`` of 10000 over
    a 1-layer file is refused naming the field and the missing keys (it built 10000 layers twice, for minutes, then
    ran out of memory). Sizes whose tensors torch cannot even describe (``n_items=2**62``: more than 2**63 bytes)
    are a ``ValueError`` naming the fields (:func:`_overflow_error`). Files whose header cannot be read, or a model
    that cannot be built without memory, are left to the load's own checks."""
    from safetensors import safe_open

    layers = getattr(config, "num_layers", None)
    layered = isinstance(layers, int) and not isinstance(layers, bool) and layers >= 1
    try:                    # the sizes first: cheap whatever num_layers is
        few = [_meta_shapes(cls, _with_layers(config, n)) for n in (1, 2)] if layered else []
    except Exception as e:  # a model that needs real tensors: the load reports it
        if _is_size_overflow(e):
            raise _overflow_error(e, config, cls, source) from None
        return
    try:
        shapes: dict[str, list[int]] = {}
        for f in files:
            with safe_open(f, "pt") as h:
                shapes.update({k: list(h.get_slice(k).get_shape()) for k in h.keys()})  # noqa: SIM118
    except Exception:          # a corrupt file: the load reports it
        return
    templates = _layer_templates(*few) if few else None
    if templates:
        _check_layer_count(cls, config, templates, few[1], shapes, files, path, source)
    try:
        expected = few[layers - 1] if layered and layers <= 2 else _meta_shapes(cls, config)
    except Exception as e:
        if _is_size_overflow(e):
            raise _overflow_error(e, config, cls, source) from None
        return
    unexpected = sorted(set(shapes) - set(expected))
    if unexpected:                  # the message of the load's own key check below, before transformers' report
        missing = sorted(set(expected) - set(shapes))
        detail = "; ".join(f"{what}: {keys[:5]}" for what, keys in (("missing keys", missing),
                                                                     ("unexpected keys", unexpected)) if keys)
        raise ValueError(f"weights in {path} do not match {cls.__name__}({config.model_type}): {detail}")
    _check_shapes(cls, config, shapes, expected, path)


def _check_shapes(cls, config, shapes: dict[str, list[int]], expected: Mapping[str, list[int]], path: str) -> None:
    """``ValueError`` naming the tensors (of ``shapes``, from the file) whose shape is not the model's (``expected``,
    by key; keys it lacks are not compared), both shapes and the config's sizes, in one line: transformers would
    print its multi-line load report first."""
    differ = [f"{k} {shapes[k]} in the file vs {expected[k]} in the model" for k in sorted(shapes)
              if k in expected and shapes[k] != expected[k]]
    if differ:
        sizes = ", ".join(f"{k}={getattr(config, k, None)}" for k in ("n_items", "max_seq_length", "hidden_size"))
        more = f" (and {len(differ) - 5} more)" if len(differ) > 5 else ""
        raise ValueError(f"weights in {path} do not match {cls.__name__}({config.model_type}): tensor shapes differ "
                         f"from the config ({sizes}): {'; '.join(differ[:5])}{more}")


def _meta_shapes(cls, config) -> dict[str, list[int]]:
    """The ``state_dict`` shapes of ``cls(config)``, built on the meta device (no memory for the weights)."""
    with torch.device("meta"):
        return {k: list(v.shape) for k, v in cls(config).state_dict().items()}


def _with_layers(config, n: int):
    """A copy of ``config`` with ``num_layers=n``."""
    import copy

    config = copy.deepcopy(config)
    config.num_layers = n
    return config


def _layer_templates(one: dict[str, Any], two: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The keys of one layer as ``(prefix, suffix)`` pairs around the layer's index, from the ``state_dict`` keys of a
    1-layer (``one``) and a 2-layer (``two``) build: each key the second layer adds (``mamba_layers.1.ffn.w_1.bias``,
    ``gru_layers.weight_ih_l1``) has a ``1`` that is a ``0`` in a key of the first layer
    (``("mamba_layers.", ".ffn.w_1.bias")``). None when the builds do not differ so (no layers, another structure)."""
    added = sorted(set(two) - set(one))
    if not added or set(one) - set(two):
        return None
    templates = []
    for key in added:
        for m in re.finditer(r"(?<!\d)1(?!\d)", key):
            pre, post = key[:m.start()], key[m.end():]
            if f"{pre}0{post}" in one:
                templates.append((pre, post))
                break
        else:
            return None
    return templates


def _layer_split(key: str, templates: set[tuple[str, str]]) -> tuple[str, int, str] | None:
    """``(prefix, layer, suffix)`` when ``key`` is a layer key of ``templates`` (:func:`_layer_templates`), its layer
    index written as :meth:`torch.nn.Module.state_dict` writes it, else None."""
    for m in re.finditer(r"\d+", key):
        digits, pre, post = m.group(), key[:m.start()], key[m.end():]
        if (pre, post) in templates and len(digits) < 19 and (digits == "0" or digits[0] != "0"):
            return pre, int(digits), post
    return None


def _field_source(config, field: str, source: str | None) -> str:
    """``field=value`` and where it comes from: ``in <config.json>`` when the file ``source`` holds that value, else
    ``(given)`` (a keyword override of ``from_pretrained``, a ``config=`` set otherwise)."""
    value = getattr(config, field, None)
    if source and os.path.isfile(source):
        try:
            saved = read_json(source)
            if isinstance(saved, dict) and saved.get(field) == value:
                return f"{field}={value} in {source}"
        except (OSError, ValueError):           # JSONReadError included: not JSON, nested too deeply
            pass
    return f"{field}={value} (given)"


def _check_layer_count(cls, config, templates: list[tuple[str, str]], two: dict[str, list[int]],
                       shapes: dict[str, list[int]], files: list[str], path: str, source: str | None) -> None:
    """``ValueError`` when the weight files (tensor names and shapes ``shapes``) do not hold layers ``0 ..
    num_layers - 1`` of the config, naming the field, the file, and the first missing and unexpected layer keys with
    their counts; told from the names alone, without building the layers. When they do, the shapes of their layer
    keys are compared with those of the 2-layer build ``two`` (layer 0 with its layer 0, the others with its layer 1),
    so that what is built next is what the file holds. A file that holds no layer at all under a config of 1 or 2
    layers is left to the key check (another model's weights: it names their keys)."""
    layers = config.num_layers
    per_layer = set(templates)
    held: dict[int, list[tuple[str, str]]] = {}          # layer -> (key, the key of the 2-layer build it is like)
    for key in shapes:
        split = _layer_split(key, per_layer)
        if split is not None:
            pre, i, post = split
            held.setdefault(i, []).append((key, f"{pre}{min(i, 1)}{post}"))
    absent = layers - sum(i < layers for i in held)
    extra = sorted(k for i, ks in held.items() if i >= layers for k, _ in ks)
    if not absent and not extra:
        if layers > 2:
            _check_shapes(cls, config, shapes, {k: two[like] for ks in held.values() for k, like in ks}, path)
        return
    if not held and layers <= 2:
        return
    parts = []
    if absent:
        keys = list(itertools.islice((f"{pre}{i}{post}" for i in range(layers) if i not in held
                                      for pre, post in templates), 5))
        parts.append((keys, absent * len(templates), "missing keys"))
    if extra:
        parts.append((extra[:5], len(extra), "unexpected keys"))
    detail = "; ".join(f"{what}: {keys}" + (f" (and {total - len(keys)} more)" if total > len(keys) else "")
                       for keys, total, what in parts)
    weights = f"{os.path.basename(files[0])} holds" if len(files) == 1 else f"the {len(files)} shards of its index hold"
    raise ValueError(f"weights in {path} do not match {cls.__name__}({config.model_type}): "
                     f"{_field_source(config, 'num_layers', source)} but {weights} {len(held)} "
                     f"layer{'s' if len(held) != 1 else ''}; {detail}")


def _is_size_overflow(e: BaseException) -> bool:
    """Whether ``e`` is torch refusing a tensor size beyond int64 (a storage of more than 2**63 bytes, a dimension that
    is no C ``long long``), as building a model on absurd config sizes raises it."""
    text = str(e)
    return isinstance(e, OverflowError) or (isinstance(e, RuntimeError) and "Storage size calculation overflowed"
                                            in text) or (isinstance(e, (TypeError, RuntimeError, ValueError))
                                                         and "Overflow when unpacking long" in text)


def _overflow_error(e: BaseException, config, cls, source: str | None) -> ValueError:
    """The one-line error for a config whose sizes overflow torch's (:func:`_is_size_overflow`), naming the fields:
    those of 2**31 or more (else the largest), and the fields whose values are the other sizes of the tensor torch
    named (``n_items x hidden_size ([4611686018427387904, 64])``)."""
    own = getattr(config, "init_fields", frozenset)() | set(getattr(config, "derived_fields", ()))
    fields = list(dict.fromkeys(("n_items", "hidden_size", "embedding_size", "max_seq_length", "d_inner",
                                 "inner_size", *sorted(own))))
    values = {k: v for k in fields if isinstance(v := getattr(config, k, None), int) and not isinstance(v, bool)}
    big = [k for k, v in values.items() if v >= 2**31] or ([max(values, key=values.get)] if values else [])
    sizes = re.search(r"sizes=\[([\d, ]+)\]", str(e))
    dims = [int(d) for d in sizes.group(1).split(",")] if sizes else []
    named = list(big)
    for d in dims:
        hit = next((k for k in values if values[k] == d), None) if d > 1 else None
        if hit is not None and hit not in named:
            named.append(hit)
    what = (f"{' x '.join(named)} ({dims}) overflows torch's tensor size limit (2**63 bytes)" if dims else
            f"a tensor size computed from {'it' if len(big) == 1 else 'them'} overflows torch's int64 sizes")
    fields = ", ".join(_field_source(config, k, source) for k in big) or f"the sizes of the config ({source})"
    return ValueError(f"{fields} {'is' if len(big) == 1 else 'are'} too large: {what}, so "
                      f"{cls.__name__}({config.model_type}) cannot be built")


def _weight_files(path: str) -> list[str]:
    """The safetensors files of a checkpoint folder (``model.safetensors``, or the shards of its index); a corrupt
    index (not JSON, nested too deeply, without a ``weight_map`` of file names) is a ``ValueError`` naming it."""
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):
        what = f"corrupt weight index {index}"
        try:
            return [os.path.join(path, n) for n in sorted(set(read_json(index, what)["weight_map"].values()))]
        except JSONReadError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{what}: {e}") from None
    raise ValueError(f"{path} has no weights: model.safetensors is missing")


#: the dtypes whose final item scoring runs in float32 (:func:`score_items`)
LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)


def score_items(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``hidden [..., D] @ weight[V, D]^T (+ bias [V])`` -> ``[..., V]`` logits: ``F.linear`` in float32 when any of
    them is 16-bit (:data:`LOW_PRECISION_DTYPES`; the copies are cast up for this matmul only, and the logits are
    float32), else ``F.linear`` as given (float32 / float64 models: unchanged, bit for bit)."""
    if (hidden.dtype in LOW_PRECISION_DTYPES or weight.dtype in LOW_PRECISION_DTYPES
            or (bias is not None and bias.dtype in LOW_PRECISION_DTYPES)):
        return F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
    return F.linear(hidden, weight, bias)


def _check_weight_values(files: list[str]) -> None:
    """Every weight tensor floating point and finite: an integer tensor would be cast silently, a NaN would make every
    score NaN."""
    from safetensors import safe_open

    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():                    # noqa: SIM118  (a safetensors file, not a dict)
                check_weight_tensor(name, f.get_tensor(name), file)


def _check_loaded_values(model: torch.nn.Module, shown: str) -> None:
    """``ValueError`` naming the first weight of ``model`` (loaded from ``shown``) that is NaN or infinite once
    loaded: the file's values are finite (:func:`_check_weight_values`), so such a weight overflowed the dtype it was
    converted to (``torch_dtype=torch.float16``: beyond +-65504), and the model would serve NaN / inf scores."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not t.is_meta and not bool(torch.isfinite(t).all()):
            raise ValueError(f"weight {name!r} of {shown} overflows {str(t.dtype).replace('torch.', '')}: finite "
                             f"in the file, but beyond the range of {t.dtype} (max {torch.finfo(t.dtype).max:g}) "
                             "once converted; load the model in float32 or bfloat16 (dtype=torch.float32)")


def check_weight_tensor(name: str, t: torch.Tensor, where: str) -> None:
    """``ValueError`` naming weight ``name`` (of ``where``, a file) when ``t`` is not floating point or holds NaN /
    inf: what :meth:`SeqRecPreTrainedModel.from_pretrained` refuses, also checked by ``zoo.convert`` before it
    writes a folder."""
    if not t.is_floating_point():
        raise ValueError(f"weight {name!r} in {where} has dtype {t.dtype}; zoo weights are floating point")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"weight {name!r} in {where} holds NaN or infinite values")


def _exporting() -> bool:
    """True while ``torch.export`` traces a model (``torch.compiler.is_exporting``, torch >= 2.6; older torch: False).
    The input checks that read values (a data-dependent guard, which export cannot trace) are skipped then; eager
    mode, ``torch.compile`` and ``torch.jit.trace`` keep them."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


#: dtypes of item-index tensors (``input_ids``, ``item_ids``, ``labels``): the integer dtypes torch computes with
#: (negative ids are refused by the range checks)
_ID_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)

#: the largest timestamp read as Unix seconds: 1e11 s is the year ~5000, while milliseconds since the epoch are ~1.7e12
#: today and nanoseconds ~1.7e18 (which also lie beyond 2**53, where float64 stops holding every integer). Mirrored by
#: ``export.timestamps.MAX_SECONDS`` (numpy only: the Triton client imports no torch).
MAX_TIMESTAMP_S = 1e11


def _as_seconds(x: Any, what: str) -> torch.Tensor:
    """Timestamps as a tensor of their own dtype, for :meth:`SeqRecPreTrainedModel.check_timestamps` and
    :func:`_check_exact_seconds` (widening float32 first would hide its rounding): a tensor as it is; anything else
    through ``np.asarray``, so numpy dtypes are kept (a float32 array is still refused) and Python floats are float64
    (``torch.as_tensor`` would make them float32, and the float32 check would blame the caller). Numpy ``datetime64``
    of any unit becomes float64 seconds, as :func:`export.timestamps.seconds` reads it. ``TypeError`` naming ``what``
    for bools, complex numbers, strings, None, ``datetime`` objects (timezone-ambiguous: pass ``dt.timestamp()``
    seconds) and other non-numbers; ``ValueError`` for ragged rows and NaT."""
    if not isinstance(x, torch.Tensor):
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError):                  # numpy's "inhomogeneous shape": a ragged nested list
            raise ValueError(f"{what}: rows of different lengths (one timestamp per item)") from None
        if arr.dtype.kind == "M":
            if np.isnat(arr).any():
                raise ValueError(f"{what} hold NaT (a missing time)")
            arr = arr.astype("datetime64[us]").astype(np.int64) / 1e6
        elif arr.dtype.kind == "O":                      # None, datetimes, ... (or ints beyond int64: numbers)
            bad = next((v for v in arr.flat if isinstance(v, bool) or not isinstance(v, numbers.Real)), arr)
            if bad is not arr:                           # arr: the sentinel for "every element is a real number"
                hint = " (pass Unix seconds, e.g. dt.timestamp(), or numpy datetime64)" if hasattr(bad, "year") else ""
                raise TypeError(f"{what} must be numbers (Unix seconds), got {bad!r} ({type(bad).__name__}){hint}")
            arr = arr.astype(np.float64)
        elif arr.dtype.kind not in "iuf":
            such = f" such as {arr.flat[0].item()!r}" if arr.size else ""
            raise TypeError(f"{what} must be real seconds (float64 or int64), got dtype {arr.dtype}{such}")
        elif arr.dtype.kind == "u" and arr.dtype.itemsize > 1:  # torch computes with uint8 only among unsigned
            arr = arr.astype(np.int64 if arr.dtype.itemsize < 8 else np.float64)
        if not arr.dtype.isnative or not arr.flags.c_contiguous:
            arr = arr.astype(arr.dtype.newbyteorder("="), order="C")
        x = torch.from_numpy(arr)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{what} must be real seconds (float64 or int64), got dtype {x.dtype}")
    return x


def _check_exact_seconds(t: torch.Tensor, what: str) -> None:
    """``ValueError`` when floating timestamps ``t`` narrower than float64 reach beyond the whole seconds their dtype
    holds exactly (float32: 2**24 s, ~194 days; float16: 2**11; bfloat16: 2**8): float32 has rounded Unix seconds
    (~1e9-2e9) to 64- or 128-s steps before they could be widened, which moves the scores silently. NaN / inf are left to the
    caller's finiteness check."""
    if t.is_floating_point() and t.dtype != torch.float64:
        exact = 2.0 / torch.finfo(t.dtype).eps                           # 2**(mantissa bits + 1): 2**24 in float32
        real = t.double()
        big = real[torch.isfinite(real) & (real.abs() > exact)]
        if len(big):
            top = float(big.abs().max())
            step = float(np.spacing(np.float32(top))) if t.dtype == torch.float32 else None
            rounded = f" to {step:.0f}-s steps there" if step is not None else ""
            raise ValueError(f"{what} are {t.dtype} and reach {top:.0f} s, beyond the {exact:.0f} s up to which "
                             f"{t.dtype} holds every whole second exactly (it has rounded them{rounded}): pass float64 "
                             "(or int64) seconds")


def _timestamp_row(row: Any, what: str) -> torch.Tensor:
    """One history's timestamps (:meth:`SeqRecPreTrainedModel.recommend`, ``user_vectors``, ``pad_batch``) -> 1-D
    float64 seconds: an ordered sequence, as histories must be (a set, a string, a dict or a scalar is a ``TypeError``
    naming ``what``), read by :func:`_as_seconds` in its own dtype so that :func:`_check_exact_seconds` refuses a
    rounded float32 row before it is widened, and milliseconds (beyond :data:`MAX_TIMESTAMP_S`) are refused naming the
    history among all given; so are NaN / infinite / negative values and a row that goes back in time, over the whole
    row -- the part older than the model's window too, whose item ids are checked as well (the batch's
    :meth:`SeqRecPreTrainedModel.check_timestamps` sees only the window)."""
    check_sequence(row, what, "a sequence of seconds, one per item, oldest first")
    t = _as_seconds(row, what)
    if t.dim() != 1:
        raise ValueError(f"{what} must be one number per item (1-D), got shape {list(t.shape)}")
    _check_exact_seconds(t, what)
    t = t.double()
    late = t[torch.isfinite(t) & (t > MAX_TIMESTAMP_S)]
    if len(late):
        raise ValueError(f"{what} reach {float(late.max()):.6g} s, beyond {MAX_TIMESTAMP_S:.0e} s (the year ~5000): "
                         "they look like milliseconds or nanoseconds since the epoch; pass Unix seconds")
    bad = (~torch.isfinite(t)).nonzero()
    if len(bad):
        raise ValueError(f"{what} hold {float(t[bad[0, 0]])} at position {int(bad[0, 0])}: timestamps must be finite")
    bad = (t < 0).nonzero()
    if len(bad):
        raise ValueError(f"{what} hold a negative value ({float(t[bad[0, 0]]):.6g}) at position {int(bad[0, 0])}")
    bad = (t[1:] < t[:-1]).nonzero()
    if len(bad):
        i = int(bad[0, 0]) + 1
        raise ValueError(f"{what} decrease at position {i} ({float(t[i - 1]):.6g} -> {float(t[i]):.6g}): histories "
                         "must be in time order, oldest first")
    return t


def _int_list(h: Any, where: str) -> list[int]:
    """Internal indices (a history, :meth:`SeqRecPreTrainedModel.predict`'s ``exclude_items``) as a list of Python
    ints (integer tensors / numpy arrays, and numpy / torch integer scalars, accepted); a float, a bool or a string
    is a ``TypeError`` naming ``where`` and the id (the check of :meth:`SeqRecPreTrainedModel._encode_ids`)."""
    if isinstance(h, torch.Tensor) and not (h.is_floating_point() or h.is_complex() or h.dtype == torch.bool):
        return h.tolist()
    if getattr(getattr(h, "dtype", None), "kind", None) in ("i", "u"):               # numpy integer array
        return h.tolist()
    h = list(h)
    if all(type(x) is int for x in h):                                                 # the common case, fast
        return h
    out = []
    for x in h:
        v = int_id(x)
        if v is None:
            v = int_id_value(x)
            raise TypeError(f"{where}: item index {v!r} ({type(v).__name__}) is not an int")
        out.append(v)
    return out


def _as_count(x: Any, name: str, lo: int = 1, hi: int | None = None) -> int:
    """``x`` as a Python int in ``lo..hi`` (numpy / torch integer scalars accepted; bools, floats, strings refused)."""
    v = int_id(x)
    if v is None or v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an int {rng}, got {x!r}")
    return v


# ------------------------------------------------------------------------------------- window re-encode state
class DeviceUnavailableError(ValueError):
    """A CUDA device asked for where torch sees none, or an index beyond the visible GPUs (:func:`resolve_device`):
    what this machine lacks, not a wrong value -- the commands exit with status 4 on it, 2 on a malformed device."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device a command runs on: ``device`` when given (checked), else CUDA when available, else the CPU.

    Raises:
        DeviceUnavailableError: a CUDA device asked for where torch sees none (a CPU build of torch, or no GPU
            visible), or an index beyond the visible GPUs -- instead of torch's assertion deep inside the first
            ``.to()`` (a ``ValueError``).
        ValueError: ``device`` is not a device torch knows (``"gpu"``).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device torch knows: use cpu, cuda or cuda:N (or another "
                         "torch device type, e.g. mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no visible GPU"
            raise DeviceUnavailableError(f"device {device!r}: CUDA is not available here "
                                         f"(torch {torch.__version__}: {build})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
    return dev


def window_state_spec(batch_size: int, max_len: int) -> list[StateTensorSpec]:
    """State of the re-encoding steps: the most recent ``max_len`` item ids (left-aligned) and their count."""
    return [
        StateTensorSpec("window_ids", (batch_size, max_len), torch.int64, 0,
                        "last max_seq_length internal item ids, oldest first at index 0, zero-padded on the right"),
        StateTensorSpec("window_len", (batch_size, 1), torch.int64, 0,
                        "number of real items in window_ids (0 .. max_seq_length)"),
    ]


def check_window_ids(win: torch.Tensor, n: torch.Tensor, max_len: int) -> torch.Tensor:
    """The window state's ``window_ids [B, M]`` and ``window_len`` counts ``n [B]`` -> ``valid [B, M]``, the slots of
    each row's real items (its first ``window_len``). ``ValueError`` naming the row when one of them is padding 0: the
    re-encode would read it as an item (for SSD4Rec, its mask token), scoring a history ``forward`` refuses."""
    valid = torch.arange(max_len, device=win.device)[None] < n[:, None]
    zero = (win == 0) & valid
    if zero.any():
        r = int(zero.any(1).nonzero()[0])
        raise ValueError(f"state['window_ids'] row {r} holds padding 0 among its window_len={int(n[r])} real items")
    return valid


def window_append(state: State, item_ids: torch.Tensor, max_len: int, n_items: int):
    """Shared by the re-encoding steps (SASRec, BERT4Rec): append ``item_ids [B, T]`` to the window state.

    ``state`` holds ``window_ids [B, M]`` (oldest first, zero-padded on the right) and ``window_len [B, 1]``.
    Returns ``(combined [B, M + T], p [B, T], total [B])``: each row's window followed by its new items (right-padded
    with 0), the position of each new item in ``combined``, and each row's new history length.
    """
    M = max_len
    win, n = state["window_ids"], state["window_len"][:, 0]
    if (n < 0).any() or (n > M).any():
        raise ValueError(f"state['window_len'] must be in 0..{M}, got {n.tolist()}")
    device = item_ids.device
    win, n = win.to(device), n.to(device)
    if int(win.min()) < 0 or int(win.max()) >= n_items:
        raise ValueError("state['window_ids'] holds item indices out of range")
    check_window_ids(win, n, M)
    B, T = item_ids.shape
    ar = torch.arange(M + T, device=device)
    combined = torch.zeros(B, M + T, dtype=torch.long, device=device)
    combined[:, :M] = torch.where(ar[None, :M] < n[:, None], win, torch.zeros_like(win))
    p = n[:, None] + torch.arange(T, device=device)[None]                     # [B, T] position of each new item
    combined = combined.scatter(1, p, item_ids)
    return combined, p, n + T


def window_state(combined: torch.Tensor, total: torch.Tensor, max_len: int) -> State:
    """New window state: the last ``max_len`` items of each row of ``combined [B, W]`` (``total [B]`` real)."""
    M, W, device = max_len, combined.shape[1], combined.device
    new_len = total.clamp(max=M)
    start = total - new_len                                                   # [B]
    idx = (start[:, None] + torch.arange(M, device=device)[None]).clamp(max=W - 1)
    new_win = combined.gather(1, idx)
    new_win = torch.where(torch.arange(M, device=device)[None] < new_len[:, None], new_win, torch.zeros_like(new_win))
    return {"window_ids": new_win, "window_len": new_len[:, None].clone()}


__all__ = ["SeqRecConfig", "SeqRecPreTrainedModel", "SeqRecOutput", "Recommendations", "ItemVectors",
           "StateTensorSpec", "State", "window_state_spec", "window_append", "window_state", "check_window_ids",
           "resolve_device", "DeviceUnavailableError", "MAX_TIMESTAMP_S"]
