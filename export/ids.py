"""How item ids written as text are read, shared by :mod:`zoo.vocab` (the models' vocabularies) and
:mod:`export.runtime` (the exported graphs' ``item_vocab.json``, served without torch), and what a sequence of them
must be (:func:`check_sequence`, shared with the model API's checks): the standard library only, as ``import zoo``
loads torch and transformers, which the serving runtime runs without."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any


class UnknownItemError(KeyError):
    """An external item id that a model's item vocabulary does not contain (a ``KeyError``). Defined here, in the
    torch-free ``export`` package, so that ``zoo.vocab.ItemVocab`` and the Triton client's ``ItemIds`` (which must not
    import ``zoo``: torch and transformers in a process that only sends requests) raise the same class;
    ``zoo.vocab.UnknownItemError`` is this class."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown item id"


_INT_TEXT = re.compile(r"-?[0-9]+")


def is_int_text(s: str) -> bool:
    """Whether ``s`` writes an integer in ASCII digits (``588``, ``-3``, ``007``); ``str.isdigit`` would also take
    ``'³'`` or ``'٥٨٨'``, which ``int()`` then refuses or reads as another number."""
    return _INT_TEXT.fullmatch(s) is not None


def is_canonical_int_text(s: str) -> bool:
    """Whether ``s`` is the way Python writes an int (``str(int(s)) == s``: ``7``, ``-3``, never ``007``, ``-0``,
    ``+7`` or `` 7 ``): the only text an int vocabulary reads as an int id; other spellings are other ids."""
    return _INT_TEXT.fullmatch(s) is not None and str(int(s)) == s


def other_normalization(x: str, ids) -> str | None:
    """The Unicode normal form (``"NFC"``, ``"NFD"``, ``"NFKC"``, ``"NFKD"``) in which the str id ``x`` -- unknown
    to ``ids`` (a set or dict of ids) -- is one of ``ids``, or ``None``. Ids are compared exactly, code point by code
    point (``'café'`` composed and decomposed are two ids); this only names the look-alike in an error message."""
    if not isinstance(x, str):
        return None
    for form in ("NFC", "NFD", "NFKC", "NFKD"):
        y = unicodedata.normalize(form, x)
        if y != x and y in ids:
            return form
    return None


def unknown_id_hint(x, ids) -> str:
    """What to add to an "unknown item id" error about ``x`` (empty when nothing): the known id ``x`` spells in
    another Unicode normalisation, or (in an int vocabulary) the int ``x`` spells non-canonically."""
    if isinstance(x, str):
        form = other_normalization(x, ids)
        if form is not None:
            known = unicodedata.normalize(form, x)
            return (f"; the vocabulary holds {ascii(known)}, the same text in Unicode normal form {form} (this id is "
                    f"{ascii(x)}): ids are compared exactly, code point by code point, never normalised")
        if is_int_text(x.strip()) and not is_canonical_int_text(x) and int(x) in ids:
            return (f"; {x!r} is not the canonical spelling of the int id {int(x)} (ids are read as written: "
                    f"'007' and 7 are two ids)")
    return ""


def check_sequence(x: Any, what: str, expected: str, *, ordered: bool = True, sized: bool = True) -> None:
    """``TypeError`` ``{what} must be {expected}, got {type}`` for what is not an ordered sequence: None, a number, a
    string, a dict (whose keys iteration would yield), a set when ``ordered`` (no order), and an iterator or generator
    when ``sized`` (no length, and read once: make it a list). One refusal for the model API
    (``zoo.modeling_utils``) and the torch-free serving runtime (:mod:`export.runtime`)."""
    if isinstance(x, (str, bytes, Mapping)) or (ordered and isinstance(x, AbstractSet)) or not hasattr(x, "__iter__"):
        raise TypeError(f"{what} must be {expected}, got {type(x).__name__}")
    if sized and not hasattr(x, "__len__"):
        raise TypeError(f"{what} must be {expected}, got {type(x).__name__} (an iterator: pass list(...) of it)")


__all__ = ["check_sequence", "is_int_text", "is_canonical_int_text", "other_normalization", "unknown_id_hint"]
