"""Run an exported zoo graph with ONNX Runtime + NumPy only (no torch, no zoo import).

::

    from export.runtime import OnnxStepSession
    sess = OnnxStepSession("exported/mamba4rec")          # folder with model.onnx + state_spec.json
    state = sess.init_state(batch_size=2)
    out = sess.step([[12, 7, 99], [5, 5, 3]], state)      # prime with T = 3 items per row
    out = sess.step([[42], [8]], out.state)               # then one event per row
    out.topk_ids, out.topk_scores                         # [2, K] internal item indices (never 0), scores

The wrapper checks what ONNX Runtime would only report vaguely (or not at all: an out-of-range id would silently
read another row of the embedding table in some runtimes): ids are integers in ``1 .. n_items - 1``, the batch is
non-empty, the state has exactly the named tensors with the documented shapes/dtypes, the batch sizes agree; for
time-aware step graphs (TiM4Rec-causal) the timestamps are finite, non-negative, non-decreasing along each row and
not before the state's ``last_ts`` (the graph itself does not check time order: it would silently clamp a negative
gap to 0).
The graph itself rejects a wrong dtype or a wrong state shape with ONNX Runtime's own error (``raw_run``).
Loading checks the folder: a ``state_spec.json`` that is not JSON or lacks a field, an ``item_vocab.json`` that is not
a zoo vocabulary or does not hold ``n_items - 1`` ids, a ``model.onnx`` ONNX Runtime cannot load, a spec that does not
describe the graph (other inputs, outputs, dtypes, fixed dims or top-k; a state entry without its fields) each raise
one ValueError naming the file (only the vocabulary the spec names is read: another ``item_vocab.json`` beside the
graph is not this graph's); :meth:`~OnnxStepSession.decode` refuses indices outside ``1 .. n_items - 1`` and
:meth:`~OnnxStepSession.encode` ids that are not integers (a float is never truncated to an id).

Time-aware step graphs come in two forms (``state_spec.json``'s ``time_input``), with the same API here: the caller
passes float64 Unix-second ``timestamps`` and gets ``last_ts`` back in the state either way.

* ``"timestamps"``: the graph takes float64 ``timestamps`` and carries the float64 ``last_ts`` state itself;
* ``"gaps"`` (``export.onnx --time-input gaps``, the TensorRT-compatible form): the graph takes float32
  ``time_gaps`` and has no ``last_ts``; this wrapper keeps ``last_ts`` (a *client state*, ``spec["client_state"]``,
  returned with the graph state), computes the gaps in float64 (:func:`time_gaps`) and feeds them as float32.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping, Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .deps import require
from .fsutil import JSONReadError, read_json
from .ids import check_sequence, is_canonical_int_text, is_int_text, unknown_id_hint
from .timestamps import seconds, time_gaps
from .vocab_format import VOCAB_FORMAT, read_graph_vocab

ort = require("onnxruntime", "export.runtime (running exported graphs)")

GRAPH_FILE = "model.onnx"
SPEC_FILE = "state_spec.json"
_DTYPES = {"float32": np.float32, "int64": np.int64, "float16": np.float16, "float64": np.float64}
#: graphs exported with ``--exclude-seen`` (``state_spec.json``'s ``exclude_seen``): the score of every item already
#: in the history (step graphs: the ``seen`` state; window graphs: the input window), in ``scores`` and
#: ``topk_scores``. Finite (float32's lowest value), so such items still rank above the padding id 0 (``-inf``) when
#: fewer than ``K`` unseen items are left.
SEEN_SCORE = float(np.finfo(np.float32).min)
#: entry of a stored window state beside ``items``: how many items the vocabulary of the graph that wrote it held
VOCAB_ITEMS = "vocab_items"
#: name of the step graphs' ``seen`` state (``[B, n_items]`` float32, 1 = item in the history, 0 = not)
SEEN_STATE = "seen"
#: name of the ``--user-vector`` output (``[B, vector_size]`` float32, the query vector of retrieval)
USER_VECTOR = "user_vector"
#: default :attr:`OnnxStepSession.max_new_items`: the most new items per row one step-graph call takes; a longer
#: ``step`` / ``prime`` (a user's whole history) goes as consecutive calls of at most this many, each call's state
#: the next one's (exact: a prefix followed by more steps is the whole). A call's activations grow with its items
#: (about 5 KB per item for Mamba4Rec ML-1M) and ONNX Runtime's CPU arena keeps its peak for the session's life, so
#: one unsplit 10^6-event history would hold ~6 GB; in calls of 1024 items a 200,000-event prime adds ~11 MB of RSS,
#: and runs no slower (``export/README.md``, "Running without torch" and "Memory").
MAX_NEW_ITEMS = 1024


@dataclass
class StepOutput:
    """Result of :meth:`OnnxStepSession.step`: top-k ids/scores (+ all scores, + the user vector, when exported) and
    the new state (each tensor in its dtype from ``state_spec.json``: float32, float64 for ``last_ts``)."""

    topk_ids: np.ndarray
    topk_scores: np.ndarray
    state: dict[str, np.ndarray]
    scores: np.ndarray | None = None
    #: ``[B, vector_size]`` float32 query vector (graphs exported with ``--user-vector``), else None
    user_vector: np.ndarray | None = None


def _resolve(path: str | os.PathLike) -> tuple[str, str]:
    path = os.fspath(path)
    if os.path.isdir(path):
        return os.path.join(path, GRAPH_FILE), os.path.join(path, SPEC_FILE)
    return path, os.path.join(os.path.dirname(path) or ".", SPEC_FILE)


#: ``state_spec.json`` fields every graph has (what this runtime, ``zoo.evaluate --onnx`` and ``export.triton`` read),
#: and those of each kind
_SPEC_FIELDS = ("kind", "model_type", "n_items", "max_seq_length", "topk", "inputs", "outputs")
_KIND_FIELDS = {"step": ("state",), "window": ("padding_side",)}


def _int_id(x: Any, where: str) -> int:
    """An integer item id (int, numpy integer or the canonical text of one, ``"42"``) -> int; anything else (a float
    such as ``588.9``, which ``int`` would truncate, a bool) raises TypeError naming it. Another spelling of an int
    (``"007"``, ``" 7 "``) is another id, as in ``zoo.vocab.ItemVocab``: an :class:`UnknownItemIdError`."""
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{where}: item id {x!r} is a bool, not an integer id")
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, str) and is_int_text(x.strip()):                 # ASCII digits, as zoo.vocab reads them
        if is_canonical_int_text(x):
            return int(x)
        raise UnknownItemIdError(f"{where}: unknown item id {x!r}: not the canonical spelling of the int id {int(x)} "
                                 "(ids are read as written: '007' and 7 are two ids)")
    raise TypeError(f"{where}: item id {x!r} ({type(x).__name__}) is not an integer id")


def _str_id(x: Any, where: str) -> str:
    """An item id of a str vocabulary: a str (numpy's str_ too), or an int (numpy's too) looked up as its text;
    anything else -- None, a float (a NaN), a bool, bytes -- raises TypeError naming it, as zoo.vocab.ItemVocab."""
    if isinstance(x, str):
        return str(x)
    if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
        return str(int(x))
    raise TypeError(f"{where}: item id {x!r} ({type(x).__name__}) is not a str id; this vocabulary holds str ids (an "
                    "int is looked up as its text; None, a NaN, a float or a bool is no id)")


def _count(x: Any, name: str) -> int:
    """``x`` as a Python int >= 1 (numpy integers accepted); a bool (an int to Python), a float, a str or None is a
    ValueError in the model API's words (``batch_size must be an int >= 1, got True``)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or x < 1:
        raise ValueError(f"{name} must be an int >= 1, got {x!r}")
    return int(x)


def _bool_at(item_ids: Any) -> tuple[int, int, Any] | None:
    """``(row, column, value)`` of the first bool among nested lists of ids (numpy reads ``[1, True]`` as the ints
    ``[1, 1]``), None when there is none."""
    for r, row in enumerate(item_ids):
        if isinstance(row, np.ndarray):
            if row.dtype == np.bool_ and row.size:
                return r, 0, row.reshape(-1)[0]
        elif hasattr(row, "__iter__") and not isinstance(row, (str, bytes)):
            for c, x in enumerate(row):
                if isinstance(x, (bool, np.bool_)):
                    return r, c, x
    return None


#: what a tensor or state name of ``state_spec.json`` may be (every name ``python -m export.onnx`` writes fits:
#: ``item_ids``, ``timestamps``, ``time_gaps``, ``candidates``, ``gru_state``, ``seen_out``, ``user_vector``, ...).
#: The names become file names (``export.triton``'s ``initial_state/<name>.bin``), words of a shell script
#: (``build_engine.sh``'s trtexec shapes, ``name:dims``) and ``config.pbtxt`` strings, so an export folder from
#: someone else (its graph and spec are theirs alike) must not bring a path, a quote or a command in through them.
TENSOR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")
#: what ``model_type`` may be: it names the model's folder of a Triton repository (``<model_type>_<kind>_...``)
MODEL_TYPE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
#: the ``state_spec.json`` fields that name a file of the export folder (a plain file name beside the graph)
FILE_FIELDS = ("graph", "external_data", "item_vocab")
_NAMES_RULE = ("letters, digits, '_' and '.', starting with a letter or '_', at most 128 characters, as "
               "python -m export.onnx names them")
_SPEC_HINT = "the two files come from different exports, or the spec was edited; re-export with python -m export.onnx"
_EDITED = "the spec was not written by python -m export.onnx, or was edited since: re-export the model with it"


def _shown(value: Any) -> str:
    """``repr(value)`` on one line, cut to 80 characters (a hostile spec's name may be long)."""
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


def is_tensor_name(name: Any) -> bool:
    """``name`` is a str of :data:`TENSOR_NAME`'s safe set (an ONNX input/output or state name of an export)."""
    return isinstance(name, str) and TENSOR_NAME.fullmatch(name) is not None


def is_plain_file_name(name: Any) -> bool:
    """``name`` is a str naming a file of a folder by itself: no folder part (``/``, ``\\``), not ``.`` or ``..``,
    not absolute, no NUL."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
            and os.path.basename(name) == name and not os.path.isabs(name))


def _check_spec_names(spec: dict, spec_path) -> None:
    """ValueError naming ``spec_path`` and the field when ``spec`` names a tensor, a state, its model type or a file
    outside the safe sets (:data:`TENSOR_NAME`, :data:`MODEL_TYPE`, :func:`is_plain_file_name` for
    :data:`FILE_FIELDS`; ``external_data`` and ``item_vocab`` may be null), or its ``inputs`` / ``outputs`` /
    ``state`` (step graphs) / ``client_state`` are not lists of entries with their fields."""
    mt = spec["model_type"]
    if not isinstance(mt, str) or not MODEL_TYPE.fullmatch(mt):
        raise ValueError(f"{spec_path}: model_type {_shown(mt)} is not a model type (letters, digits, '_', '-' and "
                         f"'.'); {_EDITED}")
    for field in FILE_FIELDS:
        v = spec.get(field)
        if (v is not None or field == "graph" and field in spec) and not is_plain_file_name(v):
            raise ValueError(f"{spec_path}: {field} {_shown(v)} is not the name of a file beside the graph (no folder, "
                             f"no '..'; an export folder names only its own files); {_EDITED}")
    entries = []
    for side, fields in (("inputs", ("name",)), ("outputs", ("name",)),
                         ("state", ("name", "shape", "dtype", "init", "output")),
                         ("client_state", ("name", "shape", "dtype", "init"))):
        listed = spec.get(side)
        if listed is None and (side == "client_state" or side == "state" and spec["kind"] != "step"):
            continue
        if side in ("inputs", "outputs"):
            if not isinstance(listed, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                       for e in listed):
                raise ValueError(f"{spec_path}: {side} must be a list of {{name, shape, dtype}} entries "
                                 f"({_SPEC_HINT})")
        elif not isinstance(listed, list):
            raise ValueError(f"{spec_path}: {side} must be a list of entries ({_SPEC_HINT})")
        for i, e in enumerate(listed):
            lacks = [k for k in fields if not isinstance(e, dict) or k not in e]
            if lacks:
                raise ValueError(f"{spec_path}: {side} entry {i} lacks {', '.join(lacks)} ({_SPEC_HINT})")
            entries += [(f"{side}[{i}].{key}", e[key]) for key in ("name", "output") if key in fields]
    for where, name in entries:
        if not is_tensor_name(name):
            raise ValueError(f"{spec_path}: {where} {_shown(name)} is not a tensor name ({_NAMES_RULE}); {_EDITED}")


def read_spec(spec_path: str | os.PathLike) -> dict:
    """``state_spec.json`` as a dict; a file that is not JSON (or nested too deeply to read), not an object, lacks a
    field every graph has, or names a tensor, a state or a file outside the safe sets (:data:`TENSOR_NAME`;
    ``graph``, ``external_data`` and ``item_vocab`` plain file names beside the graph) raises ValueError naming the
    file and the field. Every reader of an export folder (this runtime, ``export.triton``, ``zoo.evaluate --onnx``)
    reads it here, so all refuse such a spec alike."""
    try:
        spec = read_json(spec_path, f"corrupt {spec_path}")
    except JSONReadError as e:                      # not UTF-8, not JSON, [[[...]]]: the reason, and what to write
        raise type(e)(e.what, f"{e.reason} (a {SPEC_FILE} written by python -m export.onnx)") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{spec_path} is not a JSON object (a {SPEC_FILE} written by python -m export.onnx)")
    kind = spec.get("kind")
    kind_fields = _KIND_FIELDS.get(kind, ()) if isinstance(kind, str) else ()
    lacks = [k for k in _SPEC_FIELDS + kind_fields if k not in spec]
    if lacks:
        raise ValueError(f"{spec_path} lacks the field{'s' * (len(lacks) > 1)} {', '.join(lacks)} (a {SPEC_FILE} "
                         "written by python -m export.onnx)")
    if not isinstance(kind, str) or kind not in _KIND_FIELDS:
        raise ValueError(f"{spec_path}: unknown graph kind {_shown(kind)} (expected 'step' or 'window')")
    for k in ("n_items", "topk"):
        if isinstance(spec[k], bool) or not isinstance(spec[k], int) or spec[k] < (2 if k == "n_items" else 1):
            raise ValueError(f"{spec_path}: {k} must be an int >= {2 if k == 'n_items' else 1}, got {spec[k]!r}")
    _check_spec_names(spec, spec_path)
    return spec


#: ONNX Runtime's type names -> state_spec.json's dtypes
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(uint8)": "uint8"}


def _check_spec_matches_graph(spec: dict, session, spec_path, graph) -> None:
    """ValueError naming both files when ``state_spec.json`` does not describe the loaded graph: other input or
    output names, dtypes or fixed dims, a ``topk`` other than the graph's, a state of an unknown dtype or not among
    the graph's inputs and outputs, or the graph's own record (its ``metadata_props``: kind, n_items, topk) saying
    otherwise (the spec's own form, its entries' fields and names: :func:`read_spec`). Such a pair (files of two
    exports, a hand-edited spec) otherwise failed on the first call with a bare KeyError, or not at all (a larger
    ``topk`` than the graph's silently returned fewer items)."""
    clash, hint = f"{spec_path} does not describe {graph}", _SPEC_HINT
    for side, listed, have in (("inputs", spec["inputs"], session.get_inputs()),
                               ("outputs", spec["outputs"], session.get_outputs())):
        want, got = {e["name"]: e for e in listed}, {a.name: a for a in have}
        if set(want) != set(got):
            raise ValueError(f"{clash}: it lists the {side} {sorted(want)}, the graph has {sorted(got)} ({hint})")
        for name, e in want.items():
            a = got[name]
            dtype = _ORT_DTYPES.get(a.type, a.type)
            if e.get("dtype") != dtype:
                raise ValueError(f"{clash}: {name} is {e.get('dtype')!r} in the spec, {dtype!r} in the graph ({hint})")
            shape = e.get("shape")
            if (not isinstance(shape, list) or len(shape) != len(a.shape)
                    or any(isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(shape, a.shape))):
                raise ValueError(f"{clash}: {name} has shape {shape} in the spec, {list(a.shape)} in the graph "
                                 f"({hint})")
    top = next((a for a in session.get_outputs() if a.name == "topk_ids"), None)
    if top is not None and top.shape and isinstance(top.shape[-1], int) and top.shape[-1] != spec["topk"]:
        raise ValueError(f"{clash}: topk is {spec['topk']} in the spec, the graph's top-k is {top.shape[-1]} ({hint})")
    if spec["kind"] == "step":
        inputs, outputs = {e["name"] for e in spec["inputs"]}, {e["name"] for e in spec["outputs"]}
        for e in spec["state"]:                             # lists of named entries (read_spec)
            if e["dtype"] not in _DTYPES:
                raise ValueError(f"{spec_path}: state {e['name']!r} has dtype {e['dtype']!r} (known: "
                                 f"{', '.join(_DTYPES)}) ({hint})")
            if e["name"] not in inputs or e["output"] not in outputs:
                raise ValueError(f"{clash}: state {e['name']!r} (output {e['output']!r}) is not among its inputs and "
                                 f"outputs ({hint})")
    meta = dict(session.get_modelmeta().custom_metadata_map)
    for key in ("kind", "n_items", "topk"):
        if key in meta and str(meta[key]) != str(spec[key]):
            raise ValueError(f"{clash}: {key} is {spec[key]!r} in the spec, {meta[key]} in the graph's own record "
                             f"({hint})")


def read_vocab(path: str | os.PathLike, n_items: int) -> tuple[list, bool]:
    """``item_vocab.json`` beside a graph -> ``(items, str_ids)``, checked against the graph's ``n_items`` (index
    ``i + 1`` is ``items[i]``, so it must hold ``n_items - 1`` ids). The format itself is checked where
    :meth:`zoo.vocab.ItemVocab.from_dict` checks it (:func:`export.vocab_format.vocab_items`: non-empty, unique, all
    int or all str as ``id_type`` says); ValueError naming the file and the problem otherwise."""
    items, id_type = read_graph_vocab(path, n_items)
    return items, id_type == "str"


class _Base:
    kind = ""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, providers: Sequence[str] | None = None,
                 session_options: ort.SessionOptions | None = None):
        graph, spec_path = _resolve(path)
        if not os.path.exists(graph):
            raise FileNotFoundError(f"no ONNX graph at {graph}")
        if not os.path.exists(spec_path):
            raise FileNotFoundError(f"no {SPEC_FILE} beside {graph} (written by python -m export.onnx)")
        self.spec: dict = read_spec(spec_path)
        if self.spec["kind"] != self.kind:
            raise ValueError(f"{graph} is a {self.spec['kind']!r} graph; use "
                             f"{'OnnxStepSession' if self.spec['kind'] == 'step' else 'OnnxWindowSession'}")
        self.n_items = int(self.spec["n_items"])
        self.topk = int(self.spec["topk"])
        self.items: list | None = None                      # external ids (item_vocab.json), index i + 1 <-> items[i]
        so = session_options or ort.SessionOptions()
        if session_options is None and self.spec.get("precision") == "fp16":
            # the CPU provider has no fp16 kernel for Exp (...) and warns at every session that it cannot constant-
            # fold the graph's fp16 Exp nodes (LRURec's gamma = exp(params_log)); it computes them in fp32, harmless
            # (export/README.md, "--fp16"): such sessions log errors only, as export.verify.ort_session's do.
            # fp32/int8 graphs, and sessions on the caller's own options, keep ONNX Runtime's warnings
            so.log_severity_level = 3
        if threads is not None:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(graph, so, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:                              # ONNX Runtime's own errors: a truncated or foreign file
            if not type(e).__module__.startswith("onnxruntime"):
                raise
            raise ValueError(f"ONNX Runtime cannot load {graph} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); re-export it with python -m export.onnx"
                             ) from None
        _check_spec_matches_graph(self.spec, self.session, spec_path, graph)
        if self.spec.get("item_vocab"):                     # named by the spec: another file beside the graph (an
            vocab = os.path.join(os.path.dirname(graph), self.spec["item_vocab"])   # earlier export's) is not read
            if not os.path.exists(vocab):
                raise FileNotFoundError(f"{spec_path} names the item vocabulary {self.spec['item_vocab']}, which is "
                                        f"not beside {graph}: copy the whole export folder")
            self.items, self._str_ids = read_vocab(vocab, self.n_items)
            self._index = {x: i + 1 for i, x in enumerate(self.items)}
        self.uses_timestamps = bool(self.spec.get("uses_timestamps"))
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.has_scores = "scores" in self.output_names
        #: the graph has the ``candidates [B, C]`` input (``export.onnx --candidates``)
        self.has_candidates = bool(self.spec.get("candidates"))

    # ---------------------------------------------------------------------------------------- vocabulary
    def encode(self, histories: Sequence[Sequence[Any]]) -> list[list[int]]:
        """The caller's item ids -> internal indices (``item_vocab.json`` beside the graph; identity without one).
        Ids of an int vocabulary (and identity ids) must be integers: a float such as ``588.9`` raises TypeError; an
        id the vocabulary lacks raises :class:`UnknownItemIdError` (a ValueError and a KeyError) naming it.
        ``histories`` that is not a sequence of histories (None, an int; a flat list of ids: its first id is no
        history), or a history that is not a sequence of ids (a set has no order), is a TypeError, an empty history a
        ValueError naming its index, as ``model.encode_histories``."""
        check_sequence(histories, "histories", "a sequence of histories", sized=False)
        out = []
        for r, h in enumerate(histories):
            check_sequence(h, f"history {r}", "a sequence of item ids, oldest first", sized=False)
            row = self._encode_row(h, f"history {r}")
            if not row:
                raise ValueError(f"history {r} is empty; every history needs at least one item")
            out.append(row)
        return out

    def _encode_row(self, ids: Sequence[Any], where: str) -> list[int]:
        """One row of the caller's item ids -> internal indices, errors naming ``where`` (``history 3``, ``event 2
        (user 'u7')``)."""
        row = []
        for i, x in enumerate(ids):
            if self.items is None:
                row.append(_int_id(x, where))
                continue
            key = _str_id(x, f"{where}, position {i}") if self._str_ids else _int_id(x, where)
            if key not in self._index:
                raise UnknownItemIdError(f"{where}: unknown item id {x!r} (not in the model's item vocabulary)"
                                         + unknown_id_hint(key, self._index))
            row.append(self._index[key])
        return row

    def decode(self, topk_ids: np.ndarray) -> list[list[Any]]:
        """Internal indices ``[B, K]`` -> the caller's item ids (identity without a vocabulary). Indices must be
        integers in ``1 .. n_items - 1`` (0 is padding): anything else raises naming it."""
        arr = np.asarray(topk_ids)
        if arr.size and (arr.dtype == object or not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"topk_ids must hold integer item indices, got dtype {arr.dtype}")
        if arr.ndim != 2:
            if arr.size == 0:
                return []
            raise ValueError(f"topk_ids must have shape [batch, k], got shape {list(arr.shape)}")
        bad = (arr < 1) | (arr >= self.n_items)
        if bad.any():
            r, c = map(int, np.argwhere(bad)[0])
            raise ValueError(f"topk_ids[{r}, {c}] = {int(arr[r, c])} is not an item index (1..{self.n_items - 1}; "
                             "0 is padding)")
        if self.items is None:
            return [[int(i) for i in row] for row in arr]
        return [[self.items[int(i) - 1] for i in row] for row in arr]

    # -------------------------------------------------------------------------------------------- checks
    def check_ids(self, item_ids: Any, name: str = "item_ids", allow_padding: bool = False,
                  ragged: str = "pad them to one length") -> np.ndarray:
        """``[B, T]`` integer ids in range -> int64 array; raises TypeError/ValueError naming the problem (``ragged``:
        what to do about rows of different lengths, said in that error)."""
        try:
            arr = np.asarray(item_ids)
        except ValueError:                                   # numpy's "inhomogeneous shape": rows of other lengths
            raise ValueError(f"{name}: rows of different lengths ({ragged})") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
            raise TypeError(f"{name} must hold integer item indices, got dtype {arr.dtype}")
        flag = None if isinstance(item_ids, np.ndarray) or arr.ndim != 2 else _bool_at(item_ids)
        if flag is not None:                                 # numpy made it an int: True would be item 1
            raise TypeError(f"{name}[{flag[0]}, {flag[1]}] = {flag[2]!r} is a bool, not an integer item index")
        if arr.ndim != 2:
            raise ValueError(f"{name} must have shape [batch, length], got shape {list(arr.shape)}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {list(arr.shape)})")
        lo = 0 if allow_padding else 1
        bad = (arr < lo) | (arr >= self.n_items)
        if bad.any():
            r, c = map(int, np.argwhere(bad)[0])
            raise ValueError(f"{name}[{r}, {c}] = {int(arr[r, c])} is out of range {lo}..{self.n_items - 1} "
                             f"(n_items={self.n_items}{'' if allow_padding else '; 0 is padding, not an item'})")
        return arr.astype(np.int64, copy=False)

    def check_candidates(self, candidates: Any, batch_size: int) -> dict[str, np.ndarray]:
        """The ``candidates`` feed of a ``--candidates`` graph: ``[B, C]`` internal indices (0 = padding; a row
        without a real candidate, a ``None`` row or ``None`` for the whole batch, is not restricted; list rows of
        different lengths are 0-padded). Empty for other graphs, which
        refuse candidates (ValueError: re-export with ``--candidates``)."""
        if candidates is None:
            return {"candidates": np.zeros((batch_size, 0), np.int64)} if self.has_candidates else {}
        if not self.has_candidates:
            raise ValueError("this graph has no candidates input: export it with python -m export.onnx --candidates "
                             "to restrict its recommendations to given items")
        if isinstance(candidates, (list, tuple)) and any(r is None for r in candidates):
            candidates = [[] if r is None else r for r in candidates]      # a None row: not restricted (as 0s)
        if (isinstance(candidates, (list, tuple)) and candidates
                and all(isinstance(r, (list, tuple, np.ndarray)) for r in candidates)
                and len({len(r) for r in candidates}) > 1):                # rows of different lengths: pad with 0
            rows = [np.asarray(r) for r in candidates]
            for i, r in enumerate(rows):
                if r.size and (r.dtype == object or not np.issubdtype(r.dtype, np.integer)):
                    raise TypeError(f"candidates row {i} must hold integer item indices, got dtype {r.dtype}")
            candidates = _pad_rows(rows)
        try:
            arr = np.asarray(candidates)
        except ValueError:                                   # e.g. a row that is a bare id beside lists
            raise ValueError("candidates: rows must be lists of item indices (or None), of any lengths") from None
        if arr.size == 0 and arr.ndim == 2 and arr.shape[0] == batch_size:
            return {"candidates": np.zeros((batch_size, 0), np.int64)}
        arr = self.check_ids(arr, "candidates", allow_padding=True)
        if arr.shape[0] != batch_size:
            raise ValueError(f"candidates must have shape [batch={batch_size}, C], got shape {list(arr.shape)}")
        return {"candidates": arr}

    def encode_candidates(self, lists: Sequence[Sequence[Any] | None]) -> np.ndarray:
        """Per row the caller's candidate item ids (None or empty: the row is not restricted) -> ``[B, C]`` internal
        indices, 0-padded (:meth:`encode`: an unknown id is an :class:`UnknownItemIdError`, a ValueError and a
        KeyError, naming it; without a vocabulary an id outside ``1 .. n_items - 1`` is a ValueError: 0 would read as
        padding and leave the row unrestricted)."""
        check_sequence(lists, "candidates", "a sequence of candidate lists, one per row (None: not restricted)",
                       sized=False)
        return _pad_rows([self._candidate_row(c, f"candidates of row {r}") for r, c in enumerate(lists)])

    def _candidate_row(self, ids: Sequence[Any] | None, where: str) -> list[int]:
        """One row of the caller's candidate ids (None or empty: not restricted) -> internal indices, errors naming
        ``where``."""
        if ids is None:
            return []
        check_sequence(ids, where, "a sequence of item ids (or None: not restricted)", ordered=False, sized=False)
        row = self._encode_row(ids, where)
        bad = [x for x in row if not 1 <= x < self.n_items]
        if bad:
            raise ValueError(f"{where}: item id {bad[0]} is out of range 1..{self.n_items - 1} (0 is padding, not an "
                             "item)")
        return row

    def check_timestamps(self, timestamps: Any, shape, where: str | None = None) -> np.ndarray:
        """``timestamps`` of ``shape`` -> float64 Unix seconds (:func:`seconds`: numbers, or numpy datetime64 of any
        unit), finite and non-negative; raises naming the problem (and ``where``: ``event 2 (user 'u7')``)."""
        at = f"{where}: " if where else ""
        if timestamps is None:
            raise ValueError(f"{at}this model reads timestamps: pass timestamps [batch, length] (seconds)")
        try:
            ts = seconds(timestamps)
        except (TypeError, ValueError) as e:
            if not where:
                raise
            raise type(e)(f"{at}{e}") from None
        if ts.shape != tuple(shape):
            raise ValueError(f"{at}timestamps must have shape {list(shape)}, got {list(ts.shape)}")
        if not np.all(np.isfinite(ts)) or (ts < 0).any():
            raise ValueError(f"{at}timestamps must be finite and non-negative")
        return ts

    def _refuse_timestamps(self, timestamps: Any, caller: str) -> None:
        """ValueError when ``timestamps`` are given to a graph that reads no time (as ``model.step`` refuses them)."""
        if timestamps is not None:
            raise ValueError(f"this {self.spec['model_type']} graph does not use timestamps; call {caller}() without "
                             "timestamps")

    def raw_run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """The ONNX Runtime session without any check (its own errors for wrong dtypes/shapes)."""
        return self.session.run(list(output_names) if output_names else None, feeds)

    def close(self) -> None:
        """Drop the ONNX Runtime session (its graph, weights and arenas are freed at once, not when the garbage
        collector gets to this object). Idempotent; afterwards a call raises :class:`export.state_store.
        ClosedError`. ``with OnnxStepSession(path) as sess:`` closes it at the end of the block."""
        from .state_store import Closed

        if not isinstance(self.session, Closed):
            self.session = Closed(f"{type(self).__name__} of {self.spec.get('model_type', 'a')} graph")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OnnxStepSession(_Base):
    """Stepwise graph: ``step(item_ids [B, T], state[, timestamps [B, T]]) -> StepOutput`` with the state as named
    arrays (dtypes from ``state_spec.json``: float32, and float64 for TiM4Rec-causal's ``last_ts``).

    The state is the graph's state tensors plus the client states of a gaps-form graph (``spec["client_state"]``:
    ``last_ts``, kept and updated here, never fed to the graph).

    ``max_new_items`` (:data:`MAX_NEW_ITEMS` by default; an int >= 1, or None: no limit): the most new items per row
    one graph call takes. A longer :meth:`step` or :meth:`prime` goes as consecutive calls of at most that many items
    (the last one the rest), each call's ``*_out`` states the next one's state inputs (timestamps / time gaps split
    with their items; the candidates go with the last call, whose outputs come back): the same top-k, scores and
    state as one call, within float rounding, with the memory of one call of ``max_new_items`` items -- as
    :class:`export.triton_client.TritonRecommender` splits an event past a TensorRT model's cap."""

    kind = "step"

    def __init__(self, path, threads: int | None = None, providers=None, session_options=None, *,
                 max_new_items: int | None = MAX_NEW_ITEMS):
        #: the most new items per row of one graph call (None: no limit); see the class docstring
        self.max_new_items = None if max_new_items is None else _count(max_new_items, "max_new_items")
        super().__init__(path, threads, providers, session_options)
        #: "timestamps" / "gaps" for time-aware graphs (older specs without the key: "timestamps"), else None
        self.time_input = self.spec.get("time_input", "timestamps" if self.uses_timestamps else None)
        self.graph_state_names = [s["name"] for s in self.spec["state"]]
        self.client_state_names = [s["name"] for s in self.spec.get("client_state", [])]
        self.state_specs = list(self.spec["state"]) + list(self.spec.get("client_state", []))
        self.state_names = [s["name"] for s in self.state_specs]
        if self.time_input == "gaps" and self.client_state_names != ["last_ts"]:
            raise ValueError(f"gaps-form graph without the client state last_ts (client_state: "
                             f"{self.client_state_names})")

    def state_shape(self, name: str, batch_size: int) -> tuple[int, ...]:
        """Shape of state tensor ``name`` for ``batch_size`` rows (an int >= 1, a bool refused: ValueError); an
        unknown ``name`` is a ValueError naming the state's tensors."""
        batch_size = _count(batch_size, "batch_size")
        s = next((s for s in self.state_specs if s["name"] == name), None)
        if s is None:
            raise ValueError(f"no state tensor {name!r} (the state holds {', '.join(self.state_names)})")
        return (batch_size, *[int(d) for d in s["shape"][1:]])

    def init_state(self, batch_size: int) -> dict[str, np.ndarray]:
        """Fresh state for ``batch_size`` empty histories (the documented initial values); ``batch_size`` is an int
        >= 1 (numpy ints too; a bool, a float or a str is a ValueError, as ``model.init_state``)."""
        batch_size = _count(batch_size, "batch_size")
        return {s["name"]: np.full(self.state_shape(s["name"], batch_size), s["init"], dtype=_DTYPES[s["dtype"]])
                for s in self.state_specs}

    def check_state(self, state: Any, batch_size: int) -> dict[str, np.ndarray]:
        """``state`` checked against :meth:`init_state`'s tensors for ``batch_size`` rows (names, shapes, dtypes,
        finite values, a 0/1 ``seen``) -> the same arrays; TypeError/ValueError naming the tensor otherwise."""
        batch_size = _count(batch_size, "batch_size")
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of named arrays (from init_state), got {type(state).__name__}")
        missing = sorted(set(self.state_names) - set(state))
        extra = sorted(set(state) - set(self.state_names))
        if missing or extra:
            raise ValueError(f"state has wrong tensors: missing {missing}, unexpected {extra}")
        out = {}
        for s in self.state_specs:
            a = state[s["name"]]
            if not isinstance(a, np.ndarray):
                raise TypeError(f"state[{s['name']!r}] must be a numpy array, got {type(a).__name__}")
            want = self.state_shape(s["name"], batch_size)
            if a.shape != want:
                raise ValueError(f"state[{s['name']!r}] has shape {list(a.shape)}, expected {list(want)} "
                                 f"for batch size {batch_size}")
            if a.dtype != _DTYPES[s["dtype"]]:
                raise TypeError(f"state[{s['name']!r}] has dtype {a.dtype}, expected {s['dtype']}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"state[{s['name']!r}] holds NaN or infinite values")
            if s["name"] == SEEN_STATE and not np.all((a == 0) | (a == 1)):
                raise ValueError(f"state[{s['name']!r}] must hold 0 (not seen) or 1 (seen) per item")
            out[s["name"]] = a
        return out

    def step(self, item_ids: Any, state: dict[str, np.ndarray], timestamps: Any = None,
             candidates: Any = None) -> StepOutput:
        """Advance ``state`` by ``T >= 1`` real items per row; returns the top-k after the last one and the new state.

        ``timestamps [B, T]`` (seconds, float64) are required by time-aware graphs (``uses_timestamps``) and refused
        (ValueError) by the others, as by ``model.step``. ``item_ids`` rows are of one length (a step graph has no
        padding: group events by length). ``candidates [B, C]`` (``--candidates`` graphs only;
        :meth:`check_candidates`): each row's top-k among those items, empty slots holding id 0 and score ``-inf``.
        ``state`` is not modified (the new state is returned). More than :attr:`max_new_items` items per row go as
        consecutive graph calls carrying the state (the class docstring).
        """
        return self._step(item_ids, state, timestamps, candidates, "step")

    def _step(self, item_ids, state, timestamps, candidates, caller: str) -> StepOutput:
        if self.time_input is None:
            self._refuse_timestamps(timestamps, caller)
        ids = self.check_ids(item_ids, ragged="a step call takes rows of one length; group events by length")
        st = self.check_state(state, ids.shape[0])
        cands = self.check_candidates(candidates, ids.shape[0])
        per_item = {"item_ids": ids}                        # [B, T] feeds, split with the items
        client = {}
        if self.time_input == "timestamps":
            per_item["timestamps"] = self.check_step_timestamps(timestamps, ids.shape, st)
        elif self.time_input == "gaps":
            ts = self.check_step_timestamps(timestamps, ids.shape, st)
            gaps, client["last_ts"] = time_gaps(ts, st["last_ts"])
            with np.errstate(over="ignore"):                 # an overflow is the error below, not a warning
                gaps32 = gaps.astype(np.float32)
            if not np.all(np.isfinite(gaps32)):              # >= 0 by the checks above; > 3.4e38 s overflows
                raise ValueError("time gaps between the timestamps do not fit float32")
            per_item["time_gaps"] = gaps32
        state = {n: st[n] for n in self.graph_state_names}
        cap = self.max_new_items
        starts = range(0, ids.shape[1], cap) if cap is not None and ids.shape[1] > cap else range(1)
        state_outs = [f"{n}_out" for n in self.graph_state_names]
        for a in starts[:-1]:        # every piece but the last: only its states are read (its top-k is not
            feeds = {**{n: v[:, a:a + cap] for n, v in per_item.items()}, **state,     # returned: unrestricted)
                     **self.check_candidates(None, ids.shape[0])}
            state = dict(zip(self.graph_state_names, self.session.run(state_outs, feeds), strict=True))
        feeds = {**{n: v[:, starts[-1]:] for n, v in per_item.items()}, **state, **cands}
        res = dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))
        return StepOutput(res["topk_ids"], res["topk_scores"],
                          {**{n: res[f"{n}_out"] for n in self.graph_state_names}, **client}, res.get("scores"),
                          res.get(USER_VECTOR))

    def check_step_timestamps(self, timestamps: Any, shape, state: dict[str, np.ndarray],
                              rows: Sequence[str] | None = None) -> np.ndarray:
        """``[B, T]`` float64 seconds: finite, non-negative, non-decreasing along each row and, where the state has
        seen an event (``last_ts >= 0``), not before it; a ``last_ts`` that is neither ``>= 0`` nor ``-1`` is refused.
        Errors name ``rows[r]`` (default ``batch row r``)."""
        name = (lambda r: rows[r]) if rows is not None else (lambda r: f"batch row {r}")  # noqa: E731
        ts = self.check_timestamps(timestamps, shape, rows[0] if rows is not None and len(rows) == 1 else None)
        dec = ts[:, 1:] < ts[:, :-1]
        if dec.any():
            r, c = map(int, np.argwhere(dec)[0])
            raise ValueError(f"timestamps of {name(r)} decrease ({float(ts[r, c + 1])!r} after "
                             f"{float(ts[r, c])!r}); events must be in time order")
        if "last_ts" in state:
            last = state["last_ts"][:, 0]
            odd = (last < 0) & (last != -1)                    # timestamps are >= 0; -1: no event yet (model.step)
            if odd.any():
                r = int(np.argmax(odd))
                raise ValueError(f"state['last_ts'] of {name(r)} is {float(last[r])}: it must be the last event's "
                                 "timestamp (>= 0) or -1 (no event yet)")
            back = (last >= 0) & (ts[:, 0] < last)
            if back.any():
                r = int(np.argmax(back))
                raise ValueError(f"timestamps of {name(r)} go back in time relative to its state's last event "
                                 f"({float(ts[r, 0])!r} < last_ts {float(last[r])!r})")
        return ts

    def prime(self, histories: Sequence[Sequence[int]], timestamps: Any = None, candidates: Any = None) -> StepOutput:
        """Fresh state primed with equal-length histories (:meth:`step` with ``T = L`` from :meth:`init_state`: one
        graph call, or consecutive calls of at most :attr:`max_new_items` items carrying the state; ``timestamps
        [B, L]`` seconds for time-aware graphs; ``candidates`` as for :meth:`step`). Histories of different lengths
        cannot share a call (a step graph has no padding): prime them in separate calls, or group them by length."""
        _check_histories(histories)
        if not isinstance(histories, np.ndarray):
            lengths = sorted({len(h) for h in histories})
            if len(lengths) > 1:
                raise ValueError(f"prime: histories of different lengths {lengths} in one call; a step graph has no "
                                 "padding, so prime them separately or grouped by length")
        ids = self.check_ids(histories, "histories")
        return self._step(ids, self.init_state(ids.shape[0]), timestamps, candidates, "prime")


class OnnxWindowSession(_Base):
    """History-window graph (models without an exact step): ``recommend(histories) -> (topk_ids, topk_scores)``."""

    kind = "window"

    def pad(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """Lists of internal ids -> ``[B, L]`` int64, the most recent ``max_seq_length`` items, 0-padded on the
        model's side."""
        M = int(self.spec["max_seq_length"])
        _check_histories(histories)
        rows = []
        for r, h in enumerate(histories):
            h = list(h)[-M:]
            if not h:
                raise ValueError(f"history {r} is empty")
            rows.append(h)
        return self.place([self.check_ids([h], name=f"history {r}")[0] for r, h in enumerate(rows)], np.int64)

    def place(self, rows: Sequence[np.ndarray], dtype) -> np.ndarray:
        """Rows of different lengths -> ``[B, L]`` (``L`` the longest), each on the model's padding side, 0 elsewhere:
        the layout of :meth:`pad`, for the ids and for their timestamps alike."""
        L = max(map(len, rows))
        out = np.zeros((len(rows), L), dtype=dtype)
        for r, h in enumerate(rows):
            if self.spec["padding_side"] == "right":
                out[r, :len(h)] = h
            else:
                out[r, L - len(h):] = h
        return out

    def run_window(self, item_ids: Any, timestamps: Any = None, candidates: Any = None) -> StepOutput:
        """Run a padded ``[B, L]`` window batch (checked: ids in range, ``L <= max_seq_length``, padding contiguous);
        ``candidates [B, C]`` as for :meth:`OnnxStepSession.step`."""
        ids = self.check_ids(item_ids, allow_padding=True)
        if ids.shape[1] > int(self.spec["max_seq_length"]):
            raise ValueError(f"window length {ids.shape[1]} exceeds max_seq_length {self.spec['max_seq_length']}")
        real = ids != 0
        if not real.any(1).all():
            raise ValueError(f"batch row {int(np.argmin(real.any(1)))} has no real item")
        m = real.astype(np.int8)
        bad = (m[:, 1:] > m[:, :-1]) if self.spec["padding_side"] == "right" else (m[:, 1:] < m[:, :-1])
        if bad.any():
            raise ValueError(f"batch row {int(np.argwhere(bad.any(1))[0, 0])} is not {self.spec['padding_side']}-padded")
        feeds = {"item_ids": ids}
        if self.uses_timestamps:
            ts = self.check_timestamps(timestamps, ids.shape)
            both = real[:, 1:] & real[:, :-1]
            dec = both & (ts[:, 1:] < ts[:, :-1])            # along each row's real items (padding slots aside)
            if dec.any():
                r, c = map(int, np.argwhere(dec)[0])
                raise ValueError(f"timestamps of batch row {r} decrease ({float(ts[r, c + 1])!r} after "
                                 f"{float(ts[r, c])!r}); a window's events must be in time order")
            feeds["timestamps"] = ts
        else:
            self._refuse_timestamps(timestamps, "run_window")
        feeds.update(self.check_candidates(candidates, ids.shape[0]))
        res = dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))
        return StepOutput(res["topk_ids"], res["topk_scores"], {}, res.get("scores"), res.get(USER_VECTOR))

    def recommend(self, histories: Sequence[Sequence[int]], timestamps: Sequence[Sequence[float]] | None = None,
                  candidates: Any = None) -> StepOutput:
        """Internal-index histories of any lengths (their last ``max_seq_length`` items; ``timestamps``: one list of
        Unix seconds per history, item by item, for time-aware graphs such as TiM4Rec's) -> top-k."""
        ids = self.pad(histories)
        ts = None
        if self.uses_timestamps:
            if timestamps is not None:
                check_sequence(timestamps, "timestamps", "a sequence of lists of seconds, one list per history")
            if timestamps is None or len(timestamps) != len(histories):
                raise ValueError("this model reads timestamps: pass one list of timestamps (seconds) per history")
            M = int(self.spec["max_seq_length"])
            rows = []
            for r, (h, t) in enumerate(zip(histories, timestamps)):
                t = seconds(t).reshape(-1)
                if len(t) != len(h):
                    raise ValueError(f"history {r} has {len(h)} items but {len(t)} timestamps")
                rows.append(t[-M:])
            ts = self.place(rows, np.float64)
        else:
            self._refuse_timestamps(timestamps, "recommend")
        return self.run_window(ids, ts, candidates=candidates)


class UnknownItemIdError(KeyError, ValueError):
    """An item id that the graph's item vocabulary (``item_vocab.json``) lacks. A ``ValueError``, as the wrappers'
    other refusals of bad input are (export/README.md), and a ``KeyError``, as it was before (a caller catching that
    still does). Its text is the message as written (a plain ``KeyError`` shows its message quoted, as a repr)."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UserStateRecommender:
    """Per-user recommendations from an exported graph in this process (ONNX Runtime), each user's state kept in
    ``store`` between their events, with one API for every model of the zoo:

    * a **step graph** (Mamba4Rec, LRURec, GRU4Rec, TiM4Rec-causal): the user's recurrent state; an event costs one
      O(1) graph call whatever the user's history;
    * a **window graph** (SASRec, BERT4Rec, TiM4Rec, SSD4Rec): the user's last ``max_seq_length`` items (and their
      timestamps for TiM4Rec); an event re-encodes that window.

    A user may pause for months (a Triton sequence slot is freed after ``max_sequence_idle_microseconds``; ONNX Runtime
    itself keeps no state). A step graph's state holds every event it was given, while the model's own ``recommend``
    and its card's evaluation read a history's last ``max_seq_length`` items: to serve what the card measured, prime
    with that window (``history[-max_seq_length:]``); a user's state then reaches beyond it as events arrive. An
    ``--exclude-seen`` graph masks what it was fed: a window graph the user's last ``max_seq_length`` items (an older
    item can come back), a step graph every event since it was primed; ``recommend(exclude_seen=True)`` of the model
    masks the whole history given to it. ::

        rec = UserStateRecommender("exported/mamba4rec", store=my_store)
        rec.prime("user-42", [1, 588, 364])             # a new (or returning) user: the history (in calls of at
                                                        # most max_new_items items, the state carried between them)
        rec.recommend("user-42", [2571])                # then one call per event: the caller's own item ids out
        rec.recommend_many([("user-7", [50]), ("user-42", [260, 1196])])   # many users in few graph calls

    Return shapes: :meth:`prime` and :meth:`recommend` return the top-k as a list of the caller's item ids;
    :meth:`recommend_with_scores` returns ``(ids, scores)``, the graph's scores of those ids as an ``np.ndarray``;
    :meth:`recommend_many` returns one such ``(ids, scores)`` tuple per event, in the order of ``events``. A list may
    hold fewer than ``k`` ids (a ``--candidates`` or ``--exclude-seen`` graph with fewer items left). A graph exported
    with ``--user-vector`` also gives each event's query vector: ``recommend_with_scores(..., return_vector=True)``
    returns ``(ids, scores, vector)`` and ``recommend_many(..., return_vectors=True)`` one such triple per event
    (``vector``: ``[vector_size]`` float32, the user's after the event); ``prime(user, history)`` is
    ``recommend_with_scores(user, history, start=True)``. These are the call's own, safe with threads;
    :attr:`last_user_vector` is not (below).

    Args:
        graph: an :class:`OnnxStepSession` / :class:`OnnxWindowSession`, or the folder (or ``model.onnx``) of a graph.
        store: dict-like, user id -> state (``get`` / ``__setitem__`` / ``pop``; a dict by default). Any key-value
            store of bytes works through :class:`export.state_store.BytesStore` (a JSON header + the raw tensors,
            each in its dtype; 2-5x faster than ``np.savez``, ``bench/RESULTS_USER_STATES.md``). A state is
            ``{name: np.ndarray [1, ...]}`` plus a fingerprint under ``state_fingerprint``: for a step graph its
            state tensors and the graph's fingerprint -- the layout :class:`export.triton_client.
            ExplicitStateRecommender` keeps, so one store serves the graph in this process or behind Triton; for a
            window graph ``items`` (int64 internal indices) and ``timestamps`` (float64, time-aware graphs), tagged
            with the graph's item vocabulary (a model with the same vocabulary continues them, and so does one whose
            catalogue gained items: ``add_items`` appends them, so every stored index keeps its item). Processes share
            a versioned store (see below).
        on_stale: what to do with a stored state another model wrote (a step graph: retrained, its catalogue grown,
            fp16; a window graph: another item vocabulary, or timestamps where the graph reads none or none where it
            reads them), or one lacking a state the graph reads: ``"error"`` (:class:`export.state_store.
            StaleStateError`: replay the user's history with :meth:`prime`) or ``"restart"`` (start the user afresh;
            counted in ``restarted``). Step graphs exported before the fingerprint existed accept every state unchecked.
        threads: ONNX Runtime intra-op threads (when ``graph`` is a path).
        max_new_items: when ``graph`` is a path to a step graph, its :attr:`OnnxStepSession.max_new_items` (None: the
            default, :data:`MAX_NEW_ITEMS`): a longer history (:meth:`prime`) or event goes as consecutive graph
            calls of at most that many items, the state carried between them (same results, bounded memory). A
            session passed in keeps its own (an int here is then a ValueError: set it on the session). A window
            graph reads at most ``max_seq_length`` items a call whatever the history, and ignores it.

    Item ids are the caller's own (``item_vocab.json`` beside the graph); an unknown id is an
    :class:`UnknownItemIdError` naming it (a ``ValueError``, and a ``KeyError`` as before). User ids are a str or an
    int whatever the store (:func:`export.state_store.check_user_id`, the SQLite store's rule): a float, a bool or
    None is a TypeError.
    Time-aware graphs take float64 Unix seconds, refused when they go back before the user's last event. A refused
    event leaves the stored state as it was.

    Threads may share one recommender: events of the same user take turns (their state is read, advanced and stored
    under a lock), others run side by side (ONNX Runtime sessions are thread-safe). Threads get their user vectors
    with ``return_vector(s)=True``: :attr:`last_user_vector` is one attribute for all of them, which another
    thread's call may replace before this thread reads it. Processes (serving workers) may
    share a *versioned* store (:class:`export.state_store.SQLiteStateStore` on one machine, :class:`export.
    state_store.RedisStateStore` across machines, or any store with ``get_versioned`` and ``commit``:
    :func:`export.state_store.is_versioned`): a call's new states are committed only if no other process
    stored those users since they were read, else it reads and runs again (counted in ``conflicts``), so no event is
    lost. A plain store shared by processes needs one writer per user."""

    def __init__(self, graph, store=None, on_stale: str = "error", threads: int | None = None,
                 max_new_items: int | None = None):
        from . import state_store

        self._ss = state_store
        #: the session was built here from a path: close() closes it (one passed in is the caller's)
        self._owns_session = not isinstance(graph, (OnnxStepSession, OnnxWindowSession))
        if isinstance(graph, (OnnxStepSession, OnnxWindowSession)):
            if max_new_items is not None:
                raise ValueError("max_new_items applies to a graph given as a path; a session passed in keeps its "
                                 "own: OnnxStepSession(path, max_new_items=...)")
            self.session = graph
        else:
            kind = read_spec(_resolve(graph)[1])["kind"]
            if kind == "step":
                self.session = OnnxStepSession(graph, threads=threads, max_new_items=(
                    MAX_NEW_ITEMS if max_new_items is None else max_new_items))
            else:
                self.session = OnnxWindowSession(graph, threads=threads)
        self.window = isinstance(self.session, OnnxWindowSession)
        self.store = {} if store is None else store
        self.on_stale = state_store.check_on_stale(on_stale)
        if self.window:
            self.max_len = int(self.session.spec["max_seq_length"])
            self.state_names = ["items"] + (["timestamps"] if self.session.uses_timestamps else [])
            self._vocab = self.session.items if self.session.items is not None else list(range(1, self.session.n_items))
            self._prefix_tags: dict[int, str] = {}
            self.fingerprint: str | None = self._vocab_tag(len(self._vocab))
        else:
            self.state_names = list(self.session.state_names)
            self.fingerprint = self.session.spec.get("state_fingerprint")
        self.restarted = 0                                      # users started afresh by on_stale="restart"
        self.conflicts = 0              # commits a versioned store refused (another process wrote a user first)
        # one lock per stripe of users: threads serving the same user take turns (read, run, store), others do not
        self._locks = state_store.UserLocks()
        self._count_lock = threading.Lock()
        #: ``[vector_size]`` float32 query vector after the last event of the last call to finish (graphs exported
        #: with ``--user-vector``; None otherwise): its inner products with ``python -m zoo.embed``'s item vectors are
        #: the raw scores. For one thread only: a call of another thread may replace it before this one reads it;
        #: with threads (or to get every event's vector) pass ``return_vector(s)=True``, which returns the call's own
        self.last_user_vector: np.ndarray | None = None

    def _check_k(self, k) -> int:
        top = self.session.topk
        if k is None:
            return top
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= top:
            raise ValueError(f"k must be an int in 1..{top} (the graph's top-k), got {k!r}")
        return int(k)

    def _initial(self) -> dict[str, np.ndarray]:
        if self.window:
            return {"items": np.zeros((1, 0), np.int64), **({"timestamps": np.zeros((1, 0), np.float64)}
                                                            if self.session.uses_timestamps else {})}
        return self.session.init_state(1)

    def _vocab_tag(self, n: int) -> str:
        """``sha256:<hex>`` of what a window state means when written by a graph whose item vocabulary is this one's
        first ``n`` ids (``item_vocab.json``; the identity of ``1 .. n_items - 1`` without one), and of its layout:
        a time-aware graph's state also holds ``timestamps``, so a state without them (a SASRec's) is stale to it
        instead of failing every event of that user. Graphs without time keep the tag they always had (their stored
        states stay valid); the states stored by a time-aware window graph before its tag named the timestamps are
        stale once (``on_stale``: StaleStateError, or the user restarts)."""
        if n not in self._prefix_tags:
            import hashlib

            what = {"window-items": [str(x) for x in self._vocab[:n]]}
            if self.session.uses_timestamps:
                what["window-timestamps"] = True
            ids = json.dumps(what).encode()
            self._prefix_tags[n] = "sha256:" + hashlib.sha256(ids).hexdigest()
        return self._prefix_tags[n]

    def _expected_tag(self, stored: dict | None) -> str | None:
        """The fingerprint ``stored`` must carry to be continued: a window state written by a graph of fewer items
        (``vocab_items``) must carry that of this vocabulary's first ``vocab_items`` ids -- a catalogue that gained
        items (``add_items`` appends them) keeps every stored index's meaning."""
        if self.window and stored and VOCAB_ITEMS in stored:
            n = int(np.asarray(stored[VOCAB_ITEMS]).reshape(-1)[0])
            if 0 < n < len(self._vocab):
                return self._vocab_tag(n)
        return self.fingerprint

    def _state_of(self, user_id, stored: dict | None) -> tuple[dict[str, np.ndarray], bool]:
        """The graph's state to continue from ``stored`` (None: nothing stored), and whether a stale one was
        restarted."""
        state = self._ss.usable_state(stored, self._expected_tag(stored), self.on_stale, user_id, "this graph")
        if state is None:
            return self._initial(), bool(stored)
        missing = [n for n in self.state_names if n not in state]
        wrong = [f"lacks {missing}"] if missing else self._layout_problems(state)
        if wrong:                       # another layout under this tag (an untagged graph's states): stale as well
            if self.on_stale == "restart":
                return self._initial(), True
            raise self._ss.StaleStateError(
                f"the stored state of user {user_id!r} {'; '.join(wrong)}: it is not a state of this "
                f"{'window' if self.window else 'step'} graph. Replay the user's history (prime(user, history)), or "
                "pass on_stale='restart' to start such users afresh")
        state = {n: state[n] for n in self.state_names}         # the fingerprint entry is not a graph input
        try:                            # its values, checked per user before batching: a step state's (NaN, a seen
            if not self.window:         # state of 0/1), a window's items (in range) and timestamps (finite, >= 0)
                self.session.check_state(state, 1)
            elif state["items"].size:
                self.session.check_ids(state["items"], name="items")
                if self.session.uses_timestamps:
                    self.session.check_timestamps(state["timestamps"], state["items"].shape)
        except (TypeError, ValueError) as e:
            raise type(e)(f"the stored state of user {user_id!r}: {e}. prime(user, history) replaces it, "
                          "forget(user) drops it") from None
        return state, False

    def _layout_problems(self, state: dict) -> list[str]:
        """What of ``state`` (holding every state name) is not this graph's layout: a step graph's tensors of
        another dtype or shape than the graph's ``[1, ...]``; a window graph's ``items`` not int64 ``[1, n]``, its
        ``timestamps`` not float64 of the items' shape. Empty when it fits."""
        wrong = []
        if self.window:
            items = np.asarray(state["items"])
            want = {"items": (np.dtype(np.int64), (1, items.shape[-1] if items.ndim else 0)),
                    "timestamps": (np.dtype(np.float64), (1, items.shape[-1] if items.ndim else 0))}
        else:
            want = {s["name"]: (np.dtype(_DTYPES[s["dtype"]]), self.session.state_shape(s["name"], 1))
                    for s in self.session.state_specs}
        for name in self.state_names:
            a, (dtype, shape) = np.asarray(state[name]), want[name]
            if a.dtype != dtype:
                wrong.append(f"has {name!r} of dtype {a.dtype}, not {dtype}")
            if a.shape != shape:
                wrong.append(f"has {name!r} of shape {list(a.shape)}, not {list(shape)}")
        return wrong

    def _check_vectors_wanted(self, wanted: bool, name: str) -> None:
        """A ValueError, before anything runs, when ``wanted`` and the graph has no ``user_vector`` output."""
        if wanted and USER_VECTOR not in self.session.output_names:
            raise ValueError(f"{name}=True: this {self.session.spec.get('model_type')} graph has no {USER_VECTOR} "
                             "output; export it with python -m export.onnx --user-vector")

    def recommend_many(self, events: Sequence[tuple], k: int | None = None, start: bool = False,
                       candidates: Sequence[Sequence[Any] | None] | None = None, *,
                       return_vectors: bool = False) -> list[tuple]:
        """``(top-k ids, their scores)`` of each event, in order: ``events`` are ``(user_id, new_items)`` or
        ``(user_id, new_items, timestamps)``, one per user (a user twice in one call would need the first event's
        state for the second). Step graphs: events with as many new items share one graph call; window graphs: one
        call for all. The users' new states replace the stored ones once every call has run (a refused event -- an
        unknown id, timestamps going back -- stores nothing for any user of the call). ``start``: every user from the
        initial state, whatever is stored (:meth:`prime`). ``candidates`` (``--candidates`` graphs): one list of the
        caller's item ids per event (None or empty: not restricted); an event's top-k is then taken among its
        candidates and holds fewer than ``k`` ids when it lists fewer unseen items. ``return_vectors`` (graphs
        exported with ``--user-vector``; another graph refuses it, ValueError): ``(ids, scores, vector)`` per event
        instead, ``vector`` the ``[vector_size]`` float32 query vector after that event -- this call's own, unlike
        :attr:`last_user_vector`, which the calls of other threads also set."""
        k = self._check_k(k)
        self._check_vectors_wanted(return_vectors, "return_vectors")
        users = self._ss.checked_users(events)         # str or int, whatever the store
        if candidates is not None:
            check_sequence(candidates, "candidates", "a sequence of candidate lists, one per event (None: not "
                            "restricted)")
            if len(candidates) != len(events):
                raise ValueError(f"candidates: one list per event ({len(events)} events), got {len(candidates)}")
            if not self.session.has_candidates:
                self.session.check_candidates([[1]], 1)                # raises: the graph has no candidates input
            for i, c in enumerate(candidates):
                if c is not None and (isinstance(c, (str, bytes)) or not hasattr(c, "__len__")):
                    raise TypeError(f"candidates of event {i} (user {users[i]!r}): a sequence of item ids (or None), "
                                    f"got {c!r}")
            rows = [self.session._candidate_row(c, f"candidates of event {i} (user {users[i]!r})")
                    for i, c in enumerate(candidates)]
            cand_rows = list(_pad_rows(rows))
        else:
            cand_rows = [None] * len(events)
        encoded = []
        for i, e in enumerate(events):
            items, where = e[1], f"event {i} (user {e[0]!r})"
            if isinstance(items, (str, bytes, Mapping, AbstractSet)) or not hasattr(items, "__len__"):
                raise TypeError(f"{where}: new_items must be a non-empty sequence of item ids, oldest first, got "
                                f"{type(items).__name__}")
            if len(items) == 0:
                raise ValueError(f"{where}: new_items must be a non-empty sequence of item ids")
            ids = self.session._encode_row(items, where)
            ts = e[2] if len(e) == 3 else None
            if self.session.uses_timestamps:
                if ts is None:
                    raise ValueError(f"{where}: this model reads timestamps; give (user_id, new_items, timestamps)")
                ts = _flat_seconds(ts, where)
                if len(ts) != len(ids):         # per event: in a group of its length, numpy's inhomogeneous error
                    raise ValueError(f"{where}: {len(ids)} new items but {len(ts)} timestamps (one per item)")
                ts = self.session.check_timestamps(ts, (len(ids),), where)
            elif ts is not None:
                raise ValueError(f"{where}: this {self.session.spec['model_type']} graph does not use timestamps; "
                                 "give (user_id, new_items)")
            encoded.append((ids, ts, cand_rows[i], where))
        run = self._run_windows if self.window else self._run_steps

        def compute(stored):
            states = [self._state_of(u, s) for u, s in zip(users, stored)]
            results, pending, vectors = run(encoded, [s for s, _ in states], k)
            return ((results, vectors, sum(r for _, r in states)),
                    [self._ss.tagged(state, self.fingerprint) for state in pending])

        with self._locks.holding(users):    # read, run, store: no other thread's event of these users in between
            # stored only once every graph call has run (all or nothing); with a versioned store, committed only if
            # no other process stored these users meanwhile (else read and run again)
            (results, vectors, restarted), conflicts = self._ss.transact(self.store, users, compute, read=not start)
        with self._count_lock:
            self.restarted += restarted
            self.conflicts += conflicts
        self.last_user_vector = vectors[-1]
        if return_vectors:
            return [(ids, scores, vector) for (ids, scores), vector in zip(results, vectors)]
        return results

    def _run_steps(self, encoded, states, k):
        """Step graphs: one call per number of new items; each row's new state."""
        n = len(encoded)
        results, pending, vectors = [None] * n, [None] * n, [None] * n
        groups: dict[int, list[int]] = {}
        for i, (ids, ts, _, where) in enumerate(encoded):
            if ts is not None:                  # each event against its own last_ts, named, before grouping
                self.session.check_step_timestamps(ts[None], (1, len(ids)), states[i], rows=[where])
            groups.setdefault(len(ids), []).append(i)
        for rows in groups.values():
            state = {name: np.concatenate([states[i][name] for i in rows]) for name in self.state_names}
            ids = np.array([encoded[i][0] for i in rows], dtype=np.int64)
            ts = np.stack([encoded[i][1] for i in rows]) if self.session.uses_timestamps else None
            out = self.session.step(ids, state, ts, _stack_candidates([encoded[i][2] for i in rows]))
            for r, i in enumerate(rows):
                pending[i] = {name: out.state[name][r:r + 1].copy() for name in self.state_names}
                results[i] = self._result(out, r, k)
                if out.user_vector is not None:
                    vectors[i] = out.user_vector[r].copy()
        return results, pending, vectors

    def _run_windows(self, encoded, states, k):
        """Window graphs: each user's last ``max_seq_length`` items after the event, all in one padded call."""
        L, uses_ts = self.max_len, self.session.uses_timestamps
        windows, stamps = [], []
        for (ids, ts, _, where), st in zip(encoded, states):
            windows.append(np.concatenate([st["items"].reshape(-1), np.asarray(ids, np.int64)])[-L:])
            if uses_ts:                                          # checked (count, finite) by recommend_many
                old = st["timestamps"].reshape(-1)
                seq = np.concatenate([old, ts])
                if (np.diff(seq) < 0).any():
                    raise ValueError(f"{where}: timestamps go back in time relative to the user's last event or "
                                     "decrease within the event; events must be in time order")
                stamps.append(seq[-L:])
        padded = self.session.pad(windows)
        ts = self.session.place(stamps, np.float64) if uses_ts else None
        out = self.session.run_window(padded, ts, _stack_candidates([e[2] for e in encoded]))
        n = len(encoded)
        results, pending, vectors = [None] * n, [None] * n, [None] * n
        size = np.array([[len(self._vocab)]], np.int64)
        for r in range(n):
            pending[r] = {"items": windows[r][None].copy(), **({"timestamps": stamps[r][None].copy()} if uses_ts
                                                                else {}), VOCAB_ITEMS: size}
            results[r] = self._result(out, r, k)
            if out.user_vector is not None:
                vectors[r] = out.user_vector[r].copy()
        return results, pending, vectors

    def _result(self, out: StepOutput, r: int, k: int) -> tuple[list, np.ndarray]:
        """Row ``r``'s top-``k`` (the caller's ids, their scores), without the empty slots (id 0, score ``-inf``) a
        ``--candidates`` graph leaves when a row lists fewer items, nor, with an ``--exclude-seen`` graph, the items
        of the history it ranks last (score :data:`SEEN_SCORE`) when fewer than ``k`` unseen items are left."""
        ids, scores = out.topk_ids[r, :k], out.topk_scores[r, :k]
        keep = ids > 0
        if self.session.spec.get("exclude_seen"):
            # SEEN_SCORE is float32's lowest finite value: no real score reaches it (-inf, an empty slot, is below)
            keep &= ~(scores <= np.float32(SEEN_SCORE))
        return self.session.decode(ids[keep][None])[0] if keep.any() else [], scores[keep].copy()

    def recommend_with_scores(self, user_id, new_items: Sequence[Any], timestamps=None, k: int | None = None,
                              start: bool = False, candidates: Sequence[Any] | None = None, *,
                              return_vector: bool = False) -> tuple:
        """``(top-k ids, their scores)`` after ``new_items`` (oldest first; their ``timestamps`` for time-aware
        graphs), continuing the user's stored state (``start``: from the initial state); ``candidates``: the
        caller's item ids to choose from (``--candidates`` graphs). ``return_vector`` (``--user-vector`` graphs):
        ``(ids, scores, vector)``, the user's ``[vector_size]`` float32 query vector after the event (safe with
        threads, unlike :attr:`last_user_vector`)."""
        self._check_vectors_wanted(return_vector, "return_vector")
        event = (user_id, new_items) if timestamps is None else (user_id, new_items, timestamps)
        return self.recommend_many([event], k, start, None if candidates is None else [candidates],
                                   return_vectors=return_vector)[0]

    def recommend(self, user_id, new_items: Sequence[Any], timestamps=None, k: int | None = None,
                  candidates: Sequence[Any] | None = None) -> list:
        """Top-k ids after ``new_items`` (one event, or several), among ``candidates`` when given."""
        return self.recommend_with_scores(user_id, new_items, timestamps, k, candidates=candidates)[0]

    def prime(self, user_id, history: Sequence[Any], timestamps=None, k: int | None = None,
              candidates: Sequence[Any] | None = None) -> list:
        """(Re)start the user from a whole history, whatever is stored (a new user, or one whose state a replaced
        model wrote); returns the top-k after it. A step graph runs it in calls of at most
        :attr:`OnnxStepSession.max_new_items` items carrying the state (bounded memory, the same result as one call);
        a window graph runs its last ``max_seq_length`` items, in one call."""
        return self.recommend_with_scores(user_id, history, timestamps, k, start=True, candidates=candidates)[0]

    def forget(self, user_id) -> None:
        """Drop the user's stored state (also one that is no state: a corrupt value). Under the user's lock, as an
        event: one of this recommender's events of that user in flight ends (and stores its state) first, so it
        cannot store that state again after the deletion."""
        user_id = self._ss.check_user_id(user_id)
        with self._locks.holding([user_id]):
            self._ss.forget(self.store, user_id)

    def close(self) -> None:
        """Release what the recommender holds, at once: the ONNX Runtime session it built from a path (one passed in
        is the caller's), and its references to the session and the store -- the default dict's states are then
        freed; a store you passed in is yours to close (``with SQLiteStateStore(p) as store,
        UserStateRecommender(g, store=store) as rec:``). Idempotent; afterwards a call raises
        :class:`export.state_store.ClosedError`."""
        if isinstance(self.session, self._ss.Closed):
            return
        if self._owns_session:
            self.session.close()
        self.session = self.store = self._ss.Closed(f"UserStateRecommender of {self.session.spec.get('model_type')} "
                                                    "graph")

    def __enter__(self) -> "UserStateRecommender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_histories(histories: Any, name: str = "histories") -> None:
    """``histories`` is a non-empty list of histories (each a sequence of item ids), else TypeError/ValueError naming
    the problem (numpy's or Python's own error otherwise: ``len()`` of an int, an inhomogeneous array)."""
    if isinstance(histories, np.ndarray):
        if histories.ndim != 2:
            raise ValueError(f"{name} must have shape [batch, length], got shape {list(histories.shape)}")
    elif histories is None or isinstance(histories, (str, bytes, dict)) or not hasattr(histories, "__len__"):
        raise TypeError(f"{name} must be a list of histories (lists of item ids), got {type(histories).__name__}")
    if len(histories) == 0:
        raise ValueError(f"no {name} given")
    if isinstance(histories, np.ndarray):
        return
    flat = [r for r, h in enumerate(histories)
            if isinstance(h, (str, bytes, Mapping, AbstractSet)) or not hasattr(h, "__len__")
            or getattr(h, "ndim", 1) != 1]
    if len(flat) == len(histories) and all(isinstance(h, (int, np.integer)) for h in histories):
        raise TypeError(f"{name} must be a list of histories (lists of item ids), got a flat list of ints (one "
                        "history: wrap it in a list)")
    if flat:
        h = histories[flat[0]]
        raise TypeError(f"{name}: history {flat[0]} is {h!r} ({type(h).__name__}), not a list of item ids")


def _pad_rows(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Rows of internal indices, of different lengths -> ``[B, C]`` int64, 0-padded (``C`` the longest; 0 is
    padding, which restricts nothing)."""
    out = np.zeros((len(rows), max([len(r) for r in rows] + [0])), np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _flat_seconds(ts: Any, where: str) -> np.ndarray:
    """One event's timestamps (a list, or a number for one item) -> 1-D float64 seconds, errors naming ``where``."""
    try:
        return seconds(ts).reshape(-1)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: {e}") from None


def _stack_candidates(rows: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """Encoded candidate rows (None: not restricted) -> ``[B, C]`` 0-padded, or None when no row has any."""
    if all(r is None for r in rows):
        return None
    return _pad_rows([[] if r is None else r for r in rows])


__all__ = ["MAX_NEW_ITEMS", "OnnxStepSession", "OnnxWindowSession", "StepOutput", "UnknownItemIdError",
           "UserStateRecommender", "VOCAB_FORMAT", "read_spec", "read_vocab", "seconds", "time_gaps"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.runtime``: this module is a library (ONNX Runtime sessions of an exported graph), not a
    command. It ran nothing and exited 0 whatever it was given (``--help`` too): say so in one line on stderr and exit
    2 (a usage error, whatever ``argv`` holds), as ``python -m export.verify`` does."""
    from .fsutil import EXIT_USAGE, exit_with

    exit_with(EXIT_USAGE, "python -m export.runtime: a library (ONNX Runtime sessions of an exported graph: from "
                          "export.runtime import OnnxStepSession), not a command; run python -m export.onnx to export "
                          "a graph, or python -m zoo.evaluate --onnx DIR to evaluate one")


if __name__ == "__main__":
    import sys

    from .fsutil import run_cli

    sys.exit(run_cli(main))
