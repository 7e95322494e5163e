"""The ``item_vocab.json`` format, checked in one place for its two readers: :meth:`zoo.vocab.ItemVocab.from_dict`
(a model's vocabulary) and :func:`export.runtime.read_vocab` (an exported graph's, served without torch). The standard
library only, as ``import zoo`` loads torch and transformers, which the serving runtime runs without::

    {"format": "zoo-item-vocab/1", "id_type": "int", "pad_index": 0, "items": [3186, 1022, ...]}

``items[i]`` is the external id of internal index ``i + 1`` (0 is padding). ``id_type`` is ``"int"`` (every item a
JSON integer) or ``"str"`` (every item a JSON string, or a JSON integer read as its text: ``7`` is the id ``"7"``;
``null``, ``true``/``false``, a float, an object or an array is no id); a file without it takes its items as they
are, all JSON integers or all strings.
"""

from __future__ import annotations

import json
import os

from .fsutil import read_json

VOCAB_FORMAT = "zoo-item-vocab/1"
#: the largest ``item_vocab.json`` :func:`load_vocab_json` reads (1 GiB: some 100 million ids, whose Python list and
#: index take over 10 GB): a larger file is refused from its size alone, before any of it is read (reading and
#: parsing 1.6 GB took 10-17 s and several times that in memory)
MAX_VOCAB_BYTES = 1 << 30


def check_vocab_size(path: str | os.PathLike, limit: int | None = None) -> int:
    """The size in bytes of the ``item_vocab.json`` at ``path`` (``os.stat``: nothing is read), or a ``ValueError``
    naming the file and its size when it is larger than ``limit`` (default :data:`MAX_VOCAB_BYTES`); a missing or
    unreadable file is ``os.stat``'s ``OSError``."""
    limit = MAX_VOCAB_BYTES if limit is None else limit
    size = os.stat(path).st_size
    if size > limit:
        raise ValueError(f"item vocabulary {os.fspath(path)} is {size:,} bytes, more than the {limit:,} an item "
                         "vocabulary may take (export.vocab_format.MAX_VOCAB_BYTES): it is not read")
    return size


def load_vocab_json(path: str | os.PathLike):
    """The JSON value in the file ``path`` (not yet checked to be a vocabulary: see :func:`vocab_items`). A file that
    is not UTF-8 JSON, or whose JSON is nested deeper than the parser goes (``[[[...]]]``), is a ``ValueError``
    (:class:`export.fsutil.JSONReadError`) naming it: "corrupt item vocabulary PATH: REASON"; a missing or unreadable
    one the ``OSError`` of ``open``; a file larger than :data:`MAX_VOCAB_BYTES` is a ``ValueError`` naming it and its
    size, told by ``os.stat`` before any of it is read (:func:`check_vocab_size`)."""
    check_vocab_size(path)
    return read_json(path, f"corrupt item vocabulary {path}")


def _type_names(items: list) -> list[str]:
    return sorted({"bool" if isinstance(x, bool) else type(x).__name__ for x in items})


def _json_shown(x) -> str:
    """A JSON value that is no id as the file spells it (``null``, ``true``, ``1.5``, ``NaN``), a container by its
    kind only (its text may be long or deep)."""
    if isinstance(x, dict):
        return "a JSON object"
    if isinstance(x, list):
        return "a JSON array"
    return json.dumps(x)


def vocab_items(d, source: str | os.PathLike | None = None) -> tuple[list, str]:
    """The checked content of an ``item_vocab.json`` (``d``: its JSON value) -> ``(items, id_type)``: ``items`` a
    non-empty list of unique ids, all ``int`` (never a bool) when ``id_type == "int"``, all ``str`` when ``"str"``
    (a file saying ``"str"`` has each JSON integer read as its text: ``7`` -> ``"7"``).

    Anything else is a ``ValueError`` naming ``source`` (the file ``d`` was read from; ``None``: "item vocabulary")
    and the problem: not a JSON object with the format tag and an items list; an items field that is no list; an
    ``id_type`` other than ``"int"`` / ``"str"``; a ``pad_index`` other than 0 (every
    index would shift by one); ``id_type "int"`` with an item that is no JSON integer (a string,
    float or bool would otherwise make ids that never match the data's ints); ``id_type "str"`` with an item that is
    neither a JSON string nor a JSON integer (``null``, a bool, a float, an object or an array, whose Python text
    ``'None'``, ``'True'``, ``'1.5'``, ``"{'x': 1}"`` would otherwise become an id); no ``id_type`` and items that are
    not all JSON integers or all strings; no items; an id more than once (after the reading as text of ``"str"``)."""
    where = "item vocabulary" if source is None else f"item vocabulary {source}"
    if not isinstance(d, dict) or d.get("format") != VOCAB_FORMAT or "items" not in d:
        raise ValueError(f"{'the data' if source is None else source} is not a zoo item vocabulary (expected a JSON "
                         f"object with format {VOCAB_FORMAT!r} and an items list)")
    items, id_type = d["items"], d.get("id_type")
    if not isinstance(items, list):
        raise ValueError(f"{where}: items must be a list of item ids, got {type(items).__name__}")
    if id_type not in (None, "int", "str"):                     # None: a file without it; the items decide
        raise ValueError(f"{where}: id_type must be 'int' or 'str', got {id_type!r}")
    pad = d.get("pad_index", 0)                                 # items[i] is index i + 1: padding must be 0
    if type(pad) is not int or pad != 0:
        raise ValueError(f"{where}: pad_index must be 0 (items[i] is index i + 1), got {pad!r}")
    if not items:
        raise ValueError(f"{where} holds no items: a vocabulary needs at least one")
    if id_type == "str":                  # ints as their text; anything else's Python text would be no id's
        bad = next((i for i, x in enumerate(items) if type(x) not in (str, int)), None)
        if bad is not None:
            raise ValueError(f"{where}: id_type is 'str' but items[{bad}] is {_json_shown(items[bad])}: write the ids "
                             "as JSON strings (an integer is read as its text)")
        items = [x if type(x) is str else str(x) for x in items]
    elif id_type == "int":                # else string items would make a str vocabulary, against the file's word
        bad = next((i for i, x in enumerate(items) if type(x) is not int), None)
        if bad is not None:
            raise ValueError(f"{where}: id_type is 'int' but items[{bad}] is {items[bad]!r} "
                             f"({type(items[bad]).__name__}): write the ids as JSON integers, or id_type 'str'")
    elif all(isinstance(x, str) for x in items):
        id_type = "str"
    else:
        kind = str if isinstance(items[0], str) else int        # name the first item unlike the first one
        bad = next((i for i, x in enumerate(items) if type(x) is not kind), None)
        if bad is not None:
            raise ValueError(f"{where}: items must be all int or all str, got types {_type_names(items)} "
                             f"(items[{bad}] is {items[bad]!r})")
        id_type = "int"
    first: dict = {}
    for i, x in enumerate(items):
        j = first.setdefault(x, i)
        if j != i:
            raise ValueError(f"{where} holds an item id more than once: {x!r} is items[{j}] and items[{i}]")
    return items, id_type


def read_graph_vocab(path: str | os.PathLike, n_items: int) -> tuple[list, str]:
    """The ``item_vocab.json`` at ``path`` that goes with a graph of ``n_items`` (index ``i + 1`` is ``items[i]``, so
    it must hold ``n_items - 1`` ids) -> ``(items, id_type)`` (:func:`vocab_items`); a ``ValueError`` naming the file
    and the problem otherwise, a count that does not fit included. Read by the serving runtime
    (:func:`export.runtime.read_vocab`) and the Triton generator (:func:`export.triton.check_vocab`)."""
    items, id_type = vocab_items(load_vocab_json(path), path)
    if len(items) != n_items - 1:
        raise ValueError(f"item vocabulary {path} holds {len(items)} items, but the graph has {n_items - 1} "
                         f"(n_items {n_items} in its state_spec.json, index 0 being padding): they do not belong "
                         "together")
    return items, id_type


__all__ = ["MAX_VOCAB_BYTES", "VOCAB_FORMAT", "check_vocab_size", "load_vocab_json", "read_graph_vocab", "vocab_items"]
