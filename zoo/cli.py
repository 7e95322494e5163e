"""argparse value types shared by the zoo's and the exporters' commands (usage errors name the bad value)."""

from __future__ import annotations

import argparse

from .data.split import parse_kcore


def positive_int(value: str) -> int:
    """An int >= 1 (counts, sizes, cut-offs); anything else is a usage error."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value!r}")
    return n


def kcore(value: str) -> int | None | str:
    """``--kcore``: ``auto``, ``none``/``0`` or ``k >= 1`` (:func:`zoo.data.split.parse_kcore`)."""
    try:
        return parse_kcore(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def error_text(e: Exception) -> str:
    """The text of an error for a one-line CLI message (a ``KeyError``'s ``str`` would add quotes)."""
    return e.args[0] if isinstance(e, KeyError) and e.args else str(e)
