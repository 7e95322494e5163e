"""Item vocabulary: the caller's own item ids <-> the model's internal indices.

Internal index 0 is always padding; external item ``items[i]`` has internal index ``i + 1``, so a vocabulary of
``len(items)`` items serves a model with ``n_items = len(items) + 1`` rows in its embedding table.

The vocabulary is saved next to the weights as ``item_vocab.json`` (plain JSON, no pickles)::

    {"format": "zoo-item-vocab/1", "id_type": "int", "pad_index": 0, "items": [3186, 1022, ...]}

``id_type`` is ``"int"`` or ``"str"``: ids come back from :meth:`ItemVocab.decode` with the type they went in with.

Here, in the torch-free ``export`` package, so that a serving client (``export.triton_client``) reads a vocabulary
without importing ``zoo`` (torch, transformers); ``zoo.vocab`` is the same module's names.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

# the reading of ids written as text and the item_vocab.json format, shared with the torch-free serving runtime
# (export.runtime): checked in one place for both
from .ids import UnknownItemError  # noqa: F401  (zoo.vocab.UnknownItemError: the one class both raise)
from .ids import is_canonical_int_text, is_int_text, other_normalization, unknown_id_hint  # noqa: F401
from .vocab_format import MAX_VOCAB_BYTES, VOCAB_FORMAT as _FORMAT, check_vocab_size, load_vocab_json, vocab_items

VOCAB_FILE = "item_vocab.json"


def int_id_value(x):
    """``x`` itself, or its Python value for a numpy / torch scalar (``.item()``); anything else as is."""
    if isinstance(x, (str, bytes)) or not hasattr(x, "item"):
        return x
    try:
        return x.item()
    except (TypeError, ValueError, RuntimeError):                     # arrays of more than one element
        return x


def int_id(x) -> int | None:
    """``x`` as an int id when it is one: a Python int or a numpy / torch integer scalar (never a bool, a float --
    numpy's included, whose fraction would be cut off silently -- or a string); else ``None``."""
    v = int_id_value(x)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def check_indices(indices: Iterable[int], n: int) -> list[int]:
    """Internal item indices ``[N]`` (an iterable of ints) -> a list of Python ints, each checked to be in ``1..n``
    (``IndexError`` naming it otherwise: 0 is padding); a float index must be a whole number (``2.0``; ``1.9``, which
    ``int`` would cut to 1, is a ``ValueError``); a bool, a string, None (or ``indices`` not an iterable) is a
    ``TypeError`` naming it. What :meth:`ItemVocab.decode` and a model's ``decode_items`` without a vocabulary read."""
    if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
        raise TypeError(f"internal item indices must be a sequence of ints, got {type(indices).__name__}")
    out = []
    for k, x in enumerate(indices):
        i, v = int_id(x), int_id_value(x)
        if i is None and isinstance(v, float):
            if not v.is_integer():
                raise ValueError(f"internal item index {x!r} is not a whole number")
            i = int(v)
        if i is None:
            raise TypeError(f"internal item index {x!r} ({type(x).__name__}) at position {k} is not an int")
        if not 1 <= i <= n:
            raise IndexError(f"internal item index {i} at position {k} out of range 1..{n} (0 is padding)")
        out.append(i)
    return out


class ItemVocab:
    """Bidirectional map between external item ids and internal indices ``1..n``.

    Args:
        items: external ids in internal-index order (``items[0]`` gets index 1). All ints (numpy / torch integer
            scalars too, e.g. a pandas column's values) or all strings, unique.
    """

    def __init__(self, items: Sequence[int | str]):
        items = list(items)
        if not items:
            raise ValueError("ItemVocab needs at least one item")
        if all(isinstance(x, str) for x in items):      # str, and numpy's str_ (a string array's elements)
            items = [str(x) for x in items]
        kinds = {type(x) for x in items}
        ints = None if kinds <= {str} else [int_id(x) for x in items]   # ints, numpy / torch integer scalars; no bools
        if ints is None:
            self.id_type = "str"
        elif all(v is not None for v in ints):
            self.id_type = "int"
            items = ints
        else:
            raise ValueError(f"ItemVocab items must be all int or all str, got types "
                             f"{sorted(k.__name__ for k in kinds)}")
        self.items = items
        self._index = {x: i + 1 for i, x in enumerate(items)}
        if len(self._index) != len(items):
            seen, dup = set(), None
            for x in items:
                if x in seen:
                    dup = x
                    break
                seen.add(x)
            raise ValueError(f"ItemVocab items must be unique; {dup!r} appears more than once")

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        """Number of real items (excluding padding)."""
        return len(self.items)

    @property
    def n_items(self) -> int:
        """Embedding rows needed: real items + the padding row 0."""
        return len(self.items) + 1

    def __contains__(self, item) -> bool:
        try:
            return self._key(item) in self._index
        except (TypeError, ValueError):
            return False

    def _type_error(self, item, where: str = "") -> TypeError:
        v = int_id_value(item)
        kind = "a bool" if isinstance(v, bool) else type(item).__name__
        if self.id_type == "int":
            return TypeError(f"item id {item!r} ({kind}){where} is not an int id; this vocabulary holds int ids")
        return TypeError(f"item id {item!r} ({kind}){where} is not a str id; this vocabulary holds str ids (an int "
                         "is looked up as its text; None, a NaN, a float or a bool is no id)")

    def __eq__(self, other) -> bool:
        return isinstance(other, ItemVocab) and self.items == other.items

    def __repr__(self) -> str:
        head = ", ".join(repr(x) for x in self.items[:3])
        return f"ItemVocab({len(self)} {self.id_type} ids: [{head}, ...])"

    # ----------------------------------------------------------- conversion
    def _key(self, item):
        """``item`` as the key it has in this vocabulary: in an int vocabulary an int (a numpy / torch integer too),
        or the canonical text of one (``"42"``; ``"007"`` or ``" 7 "`` stay strings, never a key of it: unknown ids);
        in a str vocabulary a str (numpy's str_ too), or an int looked up as its text. Anything else -- None, a float
        (a NaN), a bool, bytes, a text of non-ASCII digits in an int vocabulary -- is a ``TypeError``."""
        if self.id_type == "int":
            if isinstance(item, str):
                if is_canonical_int_text(item):
                    return int(item)
                if is_int_text(item.strip()):                        # '007', ' 7 ', '-0': another id than the int
                    return str(item)
            else:
                x = int_id(item)
                if x is not None:
                    return x
            raise self._type_error(item)
        if isinstance(item, str):
            return str(item)                                         # numpy's str_ too: a plain str
        x = int_id(item)
        if x is not None:
            return str(x)
        raise self._type_error(item)

    def encode(self, items: Iterable) -> list[int]:
        """External ids -> internal indices (>= 1). Raises :class:`UnknownItemError` naming the first unknown id (and,
        for a str id, the known id it equals after Unicode normalisation: ids are compared exactly), ``TypeError``
        naming an id of the wrong type and its position."""
        out = []
        for i, x in enumerate(items):
            try:
                k = self._key(x)
            except TypeError:
                raise self._type_error(x, f" at position {i}") from None
            idx = self._index.get(k)
            if idx is None:
                raise UnknownItemError(f"unknown item id {x!r}: not in the model's item vocabulary ({len(self)} items)"
                                       + unknown_id_hint(k, self._index))
            out.append(idx)
        return out

    def decode(self, indices: Iterable[int]) -> list:
        """Internal indices (1..n) -> external ids. Index 0 (padding) or out-of-range indices raise ``IndexError``; an
        index that is a bool, a string or None a ``TypeError``, a float that is not a whole number (``1.9``, which
        ``int`` would cut to 1) a ``ValueError``, each naming it (:func:`check_indices`)."""
        return [self.items[i - 1] for i in check_indices(indices, len(self.items))]

    def extended(self, items: Iterable) -> tuple["ItemVocab", list]:
        """A vocabulary that grows this one: the same ids at the same indices, then those of ``items`` it lacks, in
        their order of first appearance (a catalogue that gained items). Returns ``(vocabulary, added ids)``; ids are
        read as :meth:`encode` reads them (``"42"`` is the int id 42 in an int vocabulary; a string id in an int
        vocabulary is a ``TypeError``)."""
        added, seen = [], set()
        for i, x in enumerate(items):
            try:
                k = self._key(x)
            except TypeError:
                raise self._type_error(x, f" at position {i}") from None
            if self.id_type == "int" and isinstance(k, str):        # '007': an unknown id no int can stand for
                raise TypeError(f"item id {x!r} (str) at position {i} is not an int id: an int vocabulary takes int "
                                f"ids written canonically ({int(k)} is {str(int(k))!r}; '007' and 7 are two ids)")
            if k not in self._index and k not in seen:
                seen.add(k)
                added.append(k)
        return (ItemVocab(self.items + added) if added else self), added

    # ------------------------------------------------------------------- io
    def to_dict(self) -> dict:
        return {"format": _FORMAT, "id_type": self.id_type, "pad_index": 0, "items": self.items}

    def save(self, directory: str | os.PathLike) -> str:
        from zoo.cli import written_whole              # saving is the zoo's (a model's folder); reading needs no zoo

        path = os.path.join(directory, VOCAB_FILE)
        with written_whole(path) as f:                      # never leave a half-written vocabulary behind
            json.dump(self.to_dict(), f, separators=(",", ":"))
        return path

    @classmethod
    def from_dict(cls, d: dict, source: str | os.PathLike | None = None) -> "ItemVocab":
        """The vocabulary an ``item_vocab.json``'s content ``d`` holds (``source``: the file it was read from, named in
        errors). The format is checked by :func:`export.vocab_format.vocab_items`, as :func:`export.runtime.read_vocab`
        checks it: a ``ValueError`` naming ``source`` and the problem for anything but a non-empty list of unique ids,
        all JSON integers or all strings as the file's ``id_type`` says (``"str"``: each item read as its text)."""
        items, _ = vocab_items(d, source)
        return cls(items)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ItemVocab":
        """Load from ``item_vocab.json`` or from a directory containing it (a file that is not UTF-8 JSON, or not a
        vocabulary, is a ``ValueError`` naming it; a missing one ``FileNotFoundError``). A file larger than
        :data:`MAX_VOCAB_BYTES` is a ``ValueError`` naming it and its size, told by ``os.stat`` before it is read
        (:func:`export.vocab_format.check_vocab_size`)."""
        if os.path.isdir(path):
            path = os.path.join(path, VOCAB_FILE)
        return cls.from_dict(load_vocab_json(path), source=str(path))


__all__ = ["ItemVocab", "MAX_VOCAB_BYTES", "UnknownItemError", "VOCAB_FILE", "check_indices", "check_vocab_size",
           "int_id", "is_canonical_int_text", "is_int_text", "other_normalization", "unknown_id_hint"]
