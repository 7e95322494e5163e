"""Import official checkpoints into the zoo's format (config.json + model.safetensors + item_vocab.json).

``python -m zoo.convert --model mamba4rec --checkpoint Mamba4Rec-ml-1m.pth --out DIR [--item-tokens FILE]``

``DIR`` is written whole (a failed conversion leaves nothing there); a folder that already holds files is refused
unless ``--overwrite``, which replaces it whole -- only a folder of a checkpoint's files (:data:`REPLACEABLE`), never
one holding anything else, the current or the home folder (:func:`check_out_folder`).

Supported sources:

* **Mamba4Rec** (chengkai-liu/Mamba4Rec, RecBole v1.2.0): keys ``item_embedding.weight``, ``LayerNorm.*``,
  ``mamba_layers.{i}.mamba.{in_proj,conv1d,x_proj,dt_proj,out_proj,A_log,D}``, ``mamba_layers.{i}.LayerNorm.*``,
  ``mamba_layers.{i}.ffn.{w_1,w_2,LayerNorm}.*``. The config (layers, d_state, d_conv, expand, dt_rank, n_items) is
  read off the tensor shapes.
* **SASRec** (RecBole v1.2.0): the zoo uses RecBole's own parameter names, so the state dict loads as is. Checked
  against a real RecBole-trained checkpoint (``tests/data/recbole_sasrec``, made by ``bench/recbole_reference.py``):
  same scores as RecBole's ``full_sort_predict`` on random histories.

Not converted by this command (``--model`` has no choice for them; their state dicts are refused naming this):
**LRURec** (yueqirex/LRURec: complex projections) -- map the state dict with
``zoo.models.lrurec.convert_official_state_dict`` and ``load_state_dict`` it into an ``LRURecModel``; RecBole
**BERT4Rec** and **GRU4Rec** -- their state dicts load as they are into ``BERT4RecModel`` / ``GRU4RecModel``; then
``save_pretrained(DIR)``.

Config fields that the weights do not show (SASRec's ``num_heads``, activation, LayerNorm eps and dropouts;
Mamba4Rec's dropout and ``max_seq_length``) are read from the checkpoint's RecBole ``Config`` when the file holds one
and ``--trust-pickle`` lets it be read; ``--set KEY=VALUE`` (or ``--max-seq-length``) sets or overrides them.
Converting SASRec without either source for ``num_heads``, or Mamba4Rec without one for ``max_seq_length``
(RecBole's ``MAX_ITEM_LIST_LENGTH``), is refused: a wrong head count or window gives a model that loads and silently
scores differently.

A RecBole checkpoint file is a pickle holding ``state_dict`` next to RecBole's ``Config`` object. It is loaded with
``torch.load(weights_only=True)``; a file that needs arbitrary unpickling is refused unless ``--trust-pickle`` is given
(only for files you trust). RecBole need not be installed for that: classes the pickle names but this environment
cannot import are rebuilt as plain attribute holders, so the ``Config``'s settings can still be read. RecBole keeps
the item-id mapping in its dataset, not in the checkpoint: pass ``--item-tokens`` (one RecBole item token per line in
internal order, ``[PAD]`` first; UTF-8 text, a byte-order mark before the first line ignored and a NUL byte refused
naming its line, as the interaction readers read) to save a vocabulary.

Exit statuses (:data:`export.fsutil.EXIT_CODES`): 2 a usage error -- a bad option, an ``--out`` it must not write, a
``--set`` (or ``--max-seq-length``) value the model cannot be built with or that the checkpoint's weights contradict
(:class:`zoo.cli.UsageError`, as ``zoo.train --set``), or no ``--set num_heads`` for a SASRec checkpoint (no
``--max-seq-length`` for a Mamba4Rec one) that does not say it; 1 the run failed -- a checkpoint or token file that
cannot be read (a truncated or corrupt checkpoint is named as such: its zip archive or pickles are checked whole
before it is loaded), a state dict that does not fit the model, an ``--out`` that cannot be written.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Sequence

import torch

from .cli import UsageError, cannot, check_outputs, written_whole_folder
from .vocab import ItemVocab, is_canonical_int_text


#: RecBole config key -> zoo config field, for the fields a state dict does not show
RECBOLE_FIELDS = {
    "sasrec": {"n_heads": "num_heads", "hidden_act": "hidden_act", "layer_norm_eps": "layer_norm_eps",
               "hidden_dropout_prob": "hidden_dropout", "attn_dropout_prob": "attn_dropout",
               "initializer_range": "initializer_range"},
    "mamba4rec": {"dropout_prob": "dropout_prob", "MAX_ITEM_LIST_LENGTH": "max_seq_length"},
}


class _Missing:
    """Stands in for a class a trusted checkpoint pickled but this environment cannot import (RecBole's ``Config``
    and enums, when RecBole is not installed): keeps the pickled attributes, runs none of the original code."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state


def _stub_pickle_module():
    """A ``pickle`` stand-in for ``torch.load`` whose Unpickler maps unimportable classes to :class:`_Missing`."""
    import pickle
    import types

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                return type(name, (_Missing,), {"__module__": module, "__qualname__": name})

    mod = types.ModuleType("zoo_convert_pickle")
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()
    mod.__dict__.update({k: getattr(pickle, k) for k in ("UnpicklingError", "HIGHEST_PROTOCOL", "dump", "dumps")})
    return mod


def recbole_settings(obj) -> dict:
    """The plain settings of a RecBole ``Config`` object (``final_config_dict``), or ``{}``."""
    d = getattr(obj, "final_config_dict", None)
    if d is None and isinstance(obj, dict):
        d = obj
    return {k: v for k, v in (d or {}).items() if isinstance(v, (bool, int, float, str))}


def recbole_fields(model_type: str, settings: dict) -> dict:
    """The zoo config fields (``RECBOLE_FIELDS``) that RecBole ``settings`` give for ``model_type``."""
    return {ours: settings[theirs] for theirs, ours in RECBOLE_FIELDS[model_type].items() if theirs in settings}


#: torch's warning on a checkpoint pickled with another protocol than 2 -- every RecBole checkpoint (RecBole saves with
#: ``pickle_protocol=4``): two lines of stderr on a conversion that succeeds, so it is silenced around the loads
_PROTOCOL_WARNING = r"Detected pickle protocol \d+ in the checkpoint"


def _quiet_load(path: str, **kwargs):
    """``torch.load(path, map_location="cpu", **kwargs)`` without torch's pickle-protocol warning (other warnings
    are kept)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PROTOCOL_WARNING, category=UserWarning)
        return torch.load(path, map_location="cpu", **kwargs)


class _Inert(_Missing):
    """What :func:`check_checkpoint_file` unpickles every class a legacy checkpoint names into: it takes any
    arguments, items and state and runs no code of the file (a structure check, not a load)."""

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


def _element_size(storage_type: str) -> int | None:
    """Bytes per element of a legacy checkpoint's storage type (``FloatStorage`` -> 4), or None if unknown."""
    import warnings

    if storage_type == "UntypedStorage":
        return 1
    if not storage_type.endswith("Storage"):
        return None
    with warnings.catch_warnings():                     # TypedStorage's deprecation warning
        warnings.simplefilter("ignore")
        dtype = getattr(getattr(torch, storage_type, None), "dtype", None)
    return torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else None


def _zip_problem(path: str) -> str | None:
    """What is wrong with the zip archive of a ``torch.save`` checkpoint (None: whole): its end record or central
    directory cannot be read (the file ends early), or a member's data fails its CRC-32 or ends early. Members whose
    CRC is recorded as 0 (``torch.serialization.set_crc32_options(False)`` saves none) are not checked."""
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if not any(i.filename.rsplit("/", 1)[-1] == "data.pkl" for i in infos):
                raise ValueError(f"{path} is not a PyTorch checkpoint (a zip archive without the data.pkl that "
                                 "torch.save writes)")
            for info in infos:
                if info.CRC == 0 and info.file_size:
                    continue
                with zf.open(info) as member:
                    while member.read(1 << 20):
                        pass
    except zipfile.BadZipFile as e:
        return f"its zip archive cannot be read ({e}; the file ends early or is damaged)"
    except (EOFError, zlib.error, OSError) as e:
        return f"its zip archive's data cannot be read ({type(e).__name__}: {e}; the file ends early?)"
    return None


def _legacy_problem(path: str) -> str | None:
    """What is wrong with a checkpoint in torch's legacy (non-zip) format (None: whole, or nothing found): one of
    its five pickles (magic number, protocol, system info, the object, the storage keys) ends early or is damaged, or
    a storage's data ends before the size its header gives. The pickles are walked with every class they name
    replaced by :class:`_Inert`, so no code of the file runs; a pickle that walk cannot follow is parsed opcode by
    opcode (``pickletools.genops``, nothing built): one that reaches its STOP is whole, and the data sizes are then
    not checked. ``ValueError`` for a pickle that ``torch.save`` did not write (no torch magic number)."""
    import pickle
    import pickletools

    from torch.serialization import MAGIC_NUMBER

    storages: dict[str, str] = {}

    class Walker(pickle.Unpickler):
        def find_class(self, module, name):
            return type(name, (_Inert,), {"__module__": str(module), "__qualname__": str(name)})

        def persistent_load(self, pid):
            if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage":
                storages[str(pid[2])] = getattr(pid[1], "__name__", "")
            if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "module" and isinstance(pid[1], type):
                return pid[1]                              # a whole nn.Module's class, saved with its source
            return _Inert()

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        parts = []
        for what in ("magic number", "protocol version", "system info", "object", "storage keys"):
            start = f.tell()
            try:
                parts.append(Walker(f).load())
            except Exception as e:                    # EOFError, UnpicklingError, ...: whatever the bytes gave
                f.seek(start)
                try:
                    for _ in pickletools.genops(f):
                        pass
                except Exception:                          # no STOP before the end, or no pickle opcode
                    return f"its {what} pickle ends early or is damaged ({type(e).__name__}: {e})"
                return None                                # whole, but more than the walk follows: torch.load says
            if what == "magic number" and parts[0] != MAGIC_NUMBER:
                raise ValueError(f"{path} is not a PyTorch checkpoint (a pickle, but not one torch.save wrote: no "
                                 "torch magic number)")
        keys = parts[-1]
        if not isinstance(keys, list):
            return "its storage keys are not a list"
        pos = f.tell()
        for key in keys:
            elsize = _element_size(storages.get(str(key), ""))
            if elsize is None:                         # a storage type this torch does not know: cannot size it
                return None
            header = f.read(8)
            if len(header) < 8:
                return f"its tensor data ends early (file of {size} bytes, storage {key!r} has no size header)"
            pos += 8 + int.from_bytes(header, "little", signed=True) * elsize
            if pos > size:
                return f"its tensor data ends early (file of {size} bytes, at least {pos} needed)"
            f.seek(pos)
    return None


def check_checkpoint_file(path: str) -> None:
    """``ValueError`` for a file that is not a whole ``torch.save`` checkpoint, before ``torch.load`` reads it:
    missing, a folder, empty, neither a zip archive nor a pickle, or truncated / corrupt -- a zip whose central
    directory cannot be read or whose members fail their CRC check, a legacy pickle that ends early
    (:func:`_zip_problem`, :func:`_legacy_problem`). A file that passes is whole, so a later ``weights_only``
    refusal is about what it holds, never about damage. ``FileNotFoundError`` for a missing file."""
    if os.path.isdir(path):
        raise ValueError(f"--checkpoint {path} is a folder: give the checkpoint file inside it (a RecBole .pth saved "
                         "by torch.save, or a state dict file)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--checkpoint {path} not found")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ValueError(cannot("--checkpoint", path, e, "read")) from None
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):    # torch.save's zip, or a legacy pickle
        raise ValueError(f"{path} is not a PyTorch checkpoint (" + ("empty file)" if not head else
                         f"it starts with {head!r}, neither torch.save's zip archive nor a pickle)"))
    try:
        problem = _zip_problem(path) if head.startswith(b"PK") else _legacy_problem(path)
    except OSError as e:
        raise ValueError(cannot("--checkpoint", path, e, "read")) from None
    if problem:
        raise ValueError(f"{path} is a truncated or corrupt checkpoint: {problem}")


def load_checkpoint(path: str, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state dict, RecBole settings)`` from a raw state-dict file or a RecBole checkpoint; the settings are ``{}``
    unless the file holds RecBole's ``Config`` (readable only with ``trust_pickle``). A dict holding the state dict
    under ``state_dict`` (RecBole) or ``model_state_dict`` (LRURec's trainer and other loops) is unwrapped.

    The file is checked whole first (:func:`check_checkpoint_file`: a truncated or corrupt one is refused as such);
    only a whole file that ``torch.load(weights_only=True)`` refuses gets the advice to pass ``--trust-pickle``.
    torch's warning about RecBole's pickle protocol 4 is not printed."""
    settings: dict = {}
    check_checkpoint_file(path)
    try:
        obj = _quiet_load(path, weights_only=True)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not trust_pickle:
            raise ValueError(f"{path} cannot be loaded safely (weights_only): {first}. It probably "
                             "holds RecBole's Config object; re-run with --trust-pickle if you trust the file, or "
                             "save ckpt['state_dict'] alone in a RecBole environment") from None
        try:
            obj = _quiet_load(path, weights_only=False, pickle_module=_stub_pickle_module())
        except Exception as e2:                      # a foreign file: name it, not the unpickler's trace
            raise ValueError(f"{path} could not be unpickled ({type(e2).__name__}: {e2})") from None
    for key in ("state_dict", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            settings = recbole_settings(obj.get("config"))
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj, settings


#: the keys the converters read the config off (official layout): a state dict without one is refused, naming it
MAMBA4REC_REQUIRED = ("item_embedding.weight", "mamba_layers.0.mamba.A_log", "mamba_layers.0.mamba.conv1d.weight",
                      "mamba_layers.0.mamba.dt_proj.weight", "mamba_layers.0.ffn.w_1.weight")
SASREC_REQUIRED = ("item_embedding.weight", "position_embedding.weight",
                   "trm_encoder.layer.0.feed_forward.dense_1.weight")


def check_required_keys(sd: dict, name: str, keys: Sequence[str]) -> None:
    """``ValueError`` naming the first of ``keys`` that the state dict ``sd`` lacks."""
    for k in keys:
        if k not in sd:
            raise ValueError(f"not a {name} state dict in the official key layout: {k} missing")


def check_shapes(model, sd: dict, checkpoint: str) -> None:
    """``ValueError`` listing the tensors of ``sd`` whose shape differs from ``model``'s (key, got, expected), before
    ``load_state_dict`` would raise a RuntimeError about them."""
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})" for k, v in sd.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{checkpoint}: {len(bad)} tensor(s) do not fit {type(model).__name__} built from its other "
                         f"shapes: {'; '.join(bad[:5])}{'; ...' if len(bad) > 5 else ''}")


#: state dicts of models ``zoo.convert`` does not convert: (model, a key or test that marks one, how to import it)
OTHER_MODELS = (
    ("an official LRURec state dict (yueqirex/LRURec)",
     lambda sd: next((k for k in sd if "lru_blocks." in k or torch.is_complex(sd[k])), None),
     "map it with zoo.models.lrurec.convert_official_state_dict(state_dict) and load that into "
     "zoo.models.lrurec.LRURecModel(LRURecConfig(...)) with load_state_dict, then save_pretrained(DIR) (Python API)"),
    ("a RecBole BERT4Rec state dict",
     lambda sd: next((k for k in ("output_ffn.weight", "output_bias") if k in sd), None),
     "its keys are the zoo's own: load it into zoo.models.bert4rec.BERT4RecModel(BERT4RecConfig(...)) with "
     "load_state_dict, then save_pretrained(DIR) (Python API)"),
    ("a RecBole GRU4Rec state dict", lambda sd: next((k for k in sd if k.startswith("gru_layers.")), None),
     "its keys are the zoo's own: load it into zoo.models.gru4rec.GRU4RecModel(GRU4RecConfig(...)) with "
     "load_state_dict, then save_pretrained(DIR) (Python API)"),
)


def other_model_hint(sd: dict, model_type: str) -> str | None:
    """For a state dict of a model this command does not convert (:data:`OTHER_MODELS`): what it is, the key that
    shows it and how to import it, one line; else None."""
    for what, marker, how in OTHER_MODELS:
        key = marker(sd)
        if key is not None:
            return (f"{what} ({key!r}), not a {model_type} one: zoo.convert converts mamba4rec and sasrec "
                    f"checkpoints only; {how}")
    return None


def mamba4rec_from_official(sd: dict[str, torch.Tensor]):
    """Official Mamba4Rec state dict -> ``(Mamba4RecConfig kwargs, renamed state dict)``."""
    check_required_keys(sd, "Mamba4Rec", MAMBA4REC_REQUIRED)
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"mamba_layers\.(\d+)\.", k))})
    n_items, hidden = sd["item_embedding.weight"].shape
    E, N = sd["mamba_layers.0.mamba.A_log"].shape
    if E % hidden:                   # expand = d_inner / hidden: a rounded one builds another (mis-shaped) model
        raise ValueError(f"mamba_layers.0.mamba.A_log has d_inner {E}, not a multiple of hidden size {hidden} "
                         "(item_embedding.weight): the zoo's Mamba4Rec has d_inner = expand * hidden_size")
    K = sd["mamba_layers.0.mamba.conv1d.weight"].shape[-1]
    R = sd["mamba_layers.0.mamba.dt_proj.weight"].shape[1]
    inner = sd["mamba_layers.0.ffn.w_1.weight"].shape[0]
    cfg = dict(n_items=int(n_items), hidden_size=int(hidden), num_layers=len(layers), d_state=int(N), d_conv=int(K),
               expand=int(E // hidden), dt_rank=int(R), inner_size=int(inner),
               conv_bias="mamba_layers.0.mamba.conv1d.bias" in sd,
               proj_bias="mamba_layers.0.mamba.in_proj.bias" in sd)
    out = {}
    for k, v in sd.items():
        k2 = re.sub(r"(^|\.)LayerNorm\.", r"\1layer_norm.", k)
        out[k2] = v
    return cfg, out


def convert(model_type: str, checkpoint: str, out_dir: str, item_tokens: str | None = None,
            trust_pickle: bool = False, max_seq_length: int | None = None, overrides: dict | None = None,
            overwrite: bool = False):
    """Convert ``checkpoint`` and write a zoo model folder; returns the loaded model in eval mode (dropout off), as
    ``from_pretrained`` returns the folder's (strictly checked: a tensor that is not floating point or holds NaN / inf
    is refused, naming it, as ``from_pretrained`` would refuse the folder). ``model_type`` is ``mamba4rec`` or
    ``sasrec``; a state dict of another model (LRURec, BERT4Rec, GRU4Rec) is refused naming how to import it.

    Config fields come from the weights' shapes, then the checkpoint's RecBole settings (see ``RECBOLE_FIELDS``),
    then ``max_seq_length`` (an int >= 1: Mamba4Rec's window; SASRec's is its position table, which it must equal)
    and ``overrides``. Mamba4Rec's window is not in its weights: converting one without it (no RecBole
    ``MAX_ITEM_LIST_LENGTH``, no ``max_seq_length``, no ``overrides["max_seq_length"]``) is refused, as SASRec
    without ``num_heads`` -- a wrong window gives a model that loads and silently scores long histories differently.
    ``out_dir`` is written whole (:func:`zoo.cli.written_whole_folder`); a folder that already holds files is
    refused before any work unless ``overwrite``, which replaces it whole (no file of the old folder is kept), and only
    a folder of a checkpoint's files (:func:`check_out_folder`).

    Raises :class:`zoo.cli.UsageError` (a ``ValueError``; the command's usage error) for an ``overrides`` or
    ``max_seq_length`` value the model cannot be built with or that the weights contradict (an override that is not a
    config field included), ``ValueError`` for a checkpoint that cannot be read or converted, ``FileNotFoundError``
    for a missing one."""
    from .modeling_utils import check_weight_tensor
    from .models import get_model_class

    if max_seq_length is not None and (isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int)
                                       or max_seq_length < 1):
        raise UsageError(f"--max-seq-length {max_seq_length!r}: expected an int >= 1")
    check_out_folder(out_dir, overwrite, {"--checkpoint": checkpoint, "--item-tokens": item_tokens})
    sd, settings = load_checkpoint(checkpoint, trust_pickle)
    other = other_model_hint(sd, model_type)
    if other:
        raise ValueError(f"{checkpoint} holds {other}")
    # what from_pretrained refuses, before any work: an integer tensor (load_state_dict would cast it), NaN / inf
    for name, t in sd.items():
        check_weight_tensor(name, t, checkpoint)
    cfg_cls, model_cls = get_model_class(model_type)
    if model_type == "mamba4rec":
        cfg, sd = mamba4rec_from_official(sd)
    elif model_type == "sasrec":
        check_required_keys(sd, "SASRec", SASREC_REQUIRED)
        n_items, hidden = sd["item_embedding.weight"].shape
        layers = {int(m.group(1)) for k in sd if (m := re.match(r"trm_encoder\.layer\.(\d+)\.", k))}
        cfg = dict(n_items=int(n_items), hidden_size=int(hidden), num_layers=len(layers),
                   inner_size=int(sd["trm_encoder.layer.0.feed_forward.dense_1.weight"].shape[0]))
        positions = int(sd["position_embedding.weight"].shape[0])
        if max_seq_length is not None and max_seq_length != positions:
            raise UsageError(f"--max-seq-length {max_seq_length}: this SASRec checkpoint has {positions} positions")
        max_seq_length = positions
    else:
        raise ValueError(f"no converter for {model_type!r} (supported: mamba4rec, sasrec)")
    cfg.update(recbole_fields(model_type, settings))
    if max_seq_length is not None:
        cfg["max_seq_length"] = int(max_seq_length)
    shape_fields = set(cfg) - set(RECBOLE_FIELDS[model_type].values())
    if model_type == "mamba4rec":
        shape_fields.discard("max_seq_length")                         # no position table: any window works
    from .train import check_config_overrides

    try:
        check_config_overrides(cfg_cls, overrides or {})
    except ValueError as e:
        raise UsageError(str(e)) from None
    own = dict(cfg)                                     # the checkpoint's config, before --set
    for k, v in (overrides or {}).items():
        if k in shape_fields and v != cfg[k]:
            raise UsageError(f"--set {k}={v}: the checkpoint's weights say {k} = {cfg[k]}")
        cfg[k] = v
    if model_type == "sasrec" and "num_heads" not in cfg:
        raise UsageError("SASRec's number of attention heads is not in the weights and this checkpoint carries no "
                         "RecBole config (or --trust-pickle was not given): pass it, e.g. --set num_heads=2 "
                         "(RecBole's default n_heads)")
    if model_type == "mamba4rec" and "max_seq_length" not in cfg:
        raise UsageError("Mamba4Rec's history window (max_seq_length) is not in the weights and this checkpoint "
                         "carries no RecBole config (or --trust-pickle was not given): pass the MAX_ITEM_LIST_LENGTH "
                         "it was trained with, e.g. --max-seq-length 50 (or --set max_seq_length=50)")
    model = _build(cfg_cls, model_cls, cfg, overrides or {}, own)   # e.g. --set num_heads=null: UsageError
    check_shapes(model, sd, checkpoint)                 # load_state_dict's RuntimeError would be a raw traceback
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match {model_cls.__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if item_tokens:
        try:                      # a byte-order mark (Windows editors) is not part of the first token, as in zoo.data
            with open(item_tokens, encoding="utf-8-sig") as f:
                lines = [(n, t.rstrip("\r\n")) for n, t in enumerate(f, start=1) if t.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(cannot("--item-tokens", item_tokens, e, "read")) from None
        nul = next((n for n, t in lines if "\x00" in t), None)
        if nul is not None:                         # refused as the interaction readers refuse one, naming the line
            raise ValueError(f"--item-tokens {item_tokens}, line {nul}: a NUL byte (\\x00); token files are UTF-8 text "
                             "(is it UTF-16, or binary?)")
        if lines and lines[0][1].strip() == "[PAD]":
            lines = lines[1:]
        tokens = [t.strip() for _, t in lines]
        first: dict[str, int] = {}
        for (n, raw), t in zip(lines, tokens):       # ' pad' and 'pad' are one token: name both lines as written
            if t in first:
                m = first[t]
                raise ValueError(f"--item-tokens {item_tokens}: lines {m} and {n} ({lines[tokens.index(t)][1]!r} and "
                                 f"{raw!r}) are both the item token {t!r} (blanks around a token are not part of it)")
            first[t] = n
        ints = all(is_canonical_int_text(t) for t in tokens)   # as the readers: '007' is no int, int() refuses '³'
        try:
            model.set_item_vocab(ItemVocab([int(t) for t in tokens] if ints else tokens))
        except ValueError as e:
            raise ValueError(f"--item-tokens {item_tokens}: {e}") from None
    with written_whole_folder(out_dir) as stage:   # no mixed folder: the new one replaces out_dir whole, or nothing
        model.save_pretrained(stage)
    return model.eval()


def _build(cfg_cls, model_cls, cfg: dict, overrides: dict, own: dict):
    """``model_cls(cfg_cls(**cfg))``. A config it cannot be built with is a :class:`zoo.cli.UsageError` naming
    ``--set`` when the ``overrides`` (``--set``) are what it fails on -- the checkpoint's ``own`` config, without
    them, builds -- else the ``ValueError`` of the checkpoint's own settings (bad data)."""
    from .models import build_model_class

    try:
        return build_model_class(cfg_cls, model_cls, cfg, overrides)
    except ValueError as e:
        if not overrides:
            raise
        try:
            model_cls(cfg_cls(**own))
        except Exception:                                   # the checkpoint's own settings fail as well
            raise e from None
        given = [f"{k}={v!r}" for k, v in overrides.items()]
        named = all(g in str(e) for g in given)            # build_model_class's message lists them already
        raise UsageError(f"--set{'' if named else ' ' + ' '.join(given)}: {e}") from None


#: what a model folder that zoo.soup or zoo.convert writes whole may already hold for ``--overwrite`` to replace it: a
#: checkpoint's files (sharded weights too) and the logs of the run, soup or conversion that made it (``*_log.json``)
REPLACEABLE = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "model-*-of-*.safetensors", "item_vocab.json", "*_log.json")


def foreign_files(out_dir: str) -> list[str]:
    """The entries of the folder ``out_dir`` that are no checkpoint's (:data:`REPLACEABLE`): what replacing it whole
    would delete besides a model."""
    import fnmatch

    return sorted(n for n in os.listdir(out_dir) if not any(fnmatch.fnmatchcase(n, pat) for pat in REPLACEABLE)
                  or not os.path.isfile(os.path.join(out_dir, n)))


def _listed(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def check_out_folder(out_dir: str, overwrite: bool, inputs: dict) -> None:
    """Refuse, before any work, an ``out_dir`` that a tool writing its folder whole must not replace: one that cannot
    be a folder; the current folder, the home folder or a folder above either; one holding (at any depth) an input
    (``{flag: path}``); and one that already holds files, unless ``overwrite`` and those files are a checkpoint's
    (:data:`REPLACEABLE`) -- ``--overwrite`` replaces a model, never a folder of other files, which it names."""
    check_outputs({"--out": out_dir}, folders=True)
    out = os.path.realpath(out_dir)
    for what, place in (("the current folder", os.getcwd()), ("the home folder", os.path.expanduser("~"))):
        place = os.path.realpath(place)
        if os.path.commonpath([place, out]) == out:
            where = what if place == out else f"a folder above {what} ({place})"
            raise ValueError(f"--out {out_dir} is {where}: it is written whole (replaced by the new model folder); "
                             "give a folder of its own, e.g. --out ./NAME")
    for flag, path in inputs.items():
        if path and os.path.exists(path) and os.path.commonpath([os.path.realpath(path), out]) == out:
            raise ValueError(f"{flag} {path} is inside --out {out_dir}, which is written whole (replaced by the new "
                             "model folder); move it out first, or choose another --out")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        names = sorted(os.listdir(out_dir))
        if not overwrite:
            raise ValueError(f"--out {out_dir} already holds files ({_listed(names)}): choose a new folder, or pass "
                             "--overwrite to replace the model in it whole")
        foreign = foreign_files(out_dir)
        if foreign:
            raise ValueError(f"--out {out_dir} holds files that are no model checkpoint's ({_listed(foreign)}), which "
                             "--overwrite would delete with the folder: it replaces only a folder of a checkpoint's "
                             "files (config.json, model*.safetensors, item_vocab.json, *_log.json); move them out, "
                             "or choose a new folder")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m zoo.convert``. Exit statuses (:data:`EXIT_CODES`): 2 for a bad option, an ``--out``
    it must not write (a file, a folder holding files without ``--overwrite``, the current folder) or a ``--set`` /
    ``--max-seq-length`` value the checkpoint's model cannot be built with (``UsageError``, with the usage line,
    as ``zoo.train --set``); 1 for a checkpoint or token file that cannot be read or converted (a state dict that does
    not fit), or an ``--out`` that cannot be written."""
    from .cli import EXIT_CODES, command_prog, positive_int
    from .models import get_model_class

    p = argparse.ArgumentParser(allow_abbrev=False,
                                prog=command_prog("zoo.convert"), description=__doc__.split("\n\n")[0],
                                epilog=EXIT_CODES)
    p.add_argument("--model", required=True, choices=["mamba4rec", "sasrec"],
                   help="the model type of the checkpoint: mamba4rec (chengkai-liu/Mamba4Rec) or sasrec (RecBole "
                        "v1.2.0), the two this command converts; LRURec, BERT4Rec and GRU4Rec checkpoints are "
                        "imported with the Python API (LRURec: zoo.models.lrurec.convert_official_state_dict, then "
                        "load_state_dict; RecBole BERT4Rec / GRU4Rec state dicts load into the zoo's models as "
                        "they are)")
    p.add_argument("--checkpoint", required=True,
                   help="the checkpoint file: a RecBole .pth (torch.save of a dict holding state_dict and RecBole's "
                        "Config) or a file holding a state dict alone")
    p.add_argument("--out", required=True, help="the model folder to write (refused if it holds files, unless "
                                                "--overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --out folder that holds a model checkpoint, whole (a folder holding other files is "
                        "refused even so)")
    p.add_argument("--item-tokens",
                   help="RecBole's item tokens, one per line in its internal order ([PAD] first), saved as the "
                        "model's item_vocab.json so that it maps your item ids (default: none, the model then takes "
                        "and returns internal indices)")
    p.add_argument("--max-seq-length", type=positive_int,
                   help="Mamba4Rec's history window, RecBole's MAX_ITEM_LIST_LENGTH (default: the checkpoint's; "
                        "required when it carries none -- not in the weights); for SASRec it must equal the "
                        "checkpoint's position table")
    p.add_argument("--trust-pickle", action="store_true",
                   help="SECURITY: unpickle the checkpoint fully, which runs any code the file holds, to read the "
                        "RecBole Config in it; use it only on files you trust (default: off, only tensors and plain "
                        "data are loaded: weights_only)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="config fields the weights do not show, e.g. num_heads=2 (JSON values; --set may be repeated)")
    a = p.parse_args(argv)
    from .train import check_config_overrides, parse_overrides

    try:
        overrides = parse_overrides(a.set)
        check_config_overrides(get_model_class(a.model)[0], overrides)     # a --set typo, before any work
        check_out_folder(a.out, a.overwrite, {"--checkpoint": a.checkpoint, "--item-tokens": a.item_tokens})
    except ValueError as e:                                 # the options themselves: a usage error
        p.error(str(e))
    try:
        m = convert(a.model, a.checkpoint, a.out, a.item_tokens, a.trust_pickle, a.max_seq_length, overrides,
                    overwrite=a.overwrite)
    except UsageError as e:                                # a --set the checkpoint's model refuses: usage (2)
        p.error(str(e))
    except (ValueError, KeyError, FileNotFoundError) as e:  # the messages name the problem and the fix (status 1)
        raise SystemExit(f"{p.prog}: error: {e}") from None
    except OSError as e:                                    # writing --out (its place was checked before any work)
        raise SystemExit(f"{p.prog}: error: {cannot('--out', a.out, e)}") from None
    print(f"wrote {a.out}: {type(m).__name__} with {sum(t.numel() for t in m.parameters()):,} parameters")


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
