"""Users' recurrent states kept in a key-value store between events, tagged with the model that wrote them.

Shared by the two explicit-state clients: :class:`export.runtime.UserStateRecommender` (the step graph in this
process, ONNX Runtime) and :class:`export.triton_client.ExplicitStateRecommender` (the same graph behind Triton). Both
store a user's state as ``{state name: np.ndarray [1, ...], FINGERPRINT_KEY: np.array(fingerprint)}``, so one store
serves either, and a state a replaced model wrote is refused, never fed to the new one.

NumPy only (no onnxruntime, no tritonclient), so either client imports it without the other's dependencies.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

FINGERPRINT_KEY = "state_fingerprint"
"""Key of the fingerprint stored beside a user's state tensors (:func:`export.onnx.state_fingerprint`)."""

ON_STALE = ("error", "restart")
"""What a client does with a stored state another model wrote: refuse it (:class:`StaleStateError`), or start the
user from the initial state (their earlier history is then ignored)."""


class StaleStateError(ValueError):
    """A stored state was written by another model than the one serving now (its fingerprint differs)."""


def check_on_stale(on_stale: str) -> str:
    if on_stale not in ON_STALE:
        raise ValueError(f"on_stale must be one of {ON_STALE}, got {on_stale!r}")
    return on_stale


def stored_tag(stored: dict) -> str | None:
    """The fingerprint a stored state carries, or None."""
    tag = stored.get(FINGERPRINT_KEY)
    return None if tag is None else str(np.asarray(tag).reshape(-1)[0])


def usable_state(stored: dict | None, fingerprint: str | None, on_stale: str, user_id: Any, serving: str,
                 error: Callable[[str], Exception] = StaleStateError) -> dict | None:
    """``stored`` when this model may continue from it; None when the user starts from the initial state (nothing
    stored, or a stale state with ``on_stale="restart"``); ``error(message)`` raised for a stale state otherwise.

    A model without a fingerprint (exported before they existed) accepts every stored state unchecked."""
    if not stored:
        return None
    if fingerprint is None:
        return stored
    tag = stored_tag(stored)
    if tag == fingerprint:
        return stored
    if on_stale == "restart":
        return None
    raise error(
        f"the stored state of user {user_id!r} was written by another model than {serving} serves now "
        f"({'no fingerprint: stored before states were tagged' if tag is None else tag[:23] + '...'}; this "
        f"model: {fingerprint[:23]}...): fed to it, it would give wrong recommendations. Replay the user's "
        "history (prime(user, history)), or pass on_stale='restart' to start such users afresh")


def tagged(state: dict[str, np.ndarray], fingerprint: str | None) -> dict[str, np.ndarray]:
    """``state`` with the fingerprint entry added (as it goes into the store)."""
    return state if fingerprint is None else {**state, FINGERPRINT_KEY: np.array(fingerprint)}


STATE_FORMAT = "zoo-state/1"
_LEN = 4                                                   # bytes of the header length, little-endian


def to_bytes(state: dict[str, np.ndarray]) -> bytes:
    """A stored state (its tensors and fingerprint) as one bytes value for a key-value store: a JSON header (format,
    fingerprint, each tensor's name, dtype and shape) and the tensors' raw bytes -- no zip, no pickle (``np.savez``
    costs ~0.2 ms a user; ``bench/RESULTS_USER_STATES.md``)."""
    tensors, tag = [], None
    for name, a in state.items():
        if name == FINGERPRINT_KEY:
            tag = str(np.asarray(a).reshape(-1)[0])
            continue
        a = np.ascontiguousarray(a)
        if a.dtype.kind not in "fiub":
            raise TypeError(f"state tensor {name!r} has dtype {a.dtype}; a state holds numbers")
        tensors.append((name, a))
    header = json.dumps({"format": STATE_FORMAT, "fingerprint": tag,
                         "tensors": [[n, a.dtype.str, list(a.shape)] for n, a in tensors]}).encode()
    return b"".join([len(header).to_bytes(_LEN, "little"), header, *(a.tobytes() for _, a in tensors)])


def from_bytes(raw: bytes) -> dict[str, np.ndarray]:
    """:func:`to_bytes`'s value back as ``{name: np.ndarray, FINGERPRINT_KEY: ...}`` (read-only arrays); a value
    that is not one (another format, truncated, trailing bytes) is a ``ValueError`` naming what is wrong."""
    raw = bytes(raw)
    if len(raw) < _LEN:
        raise ValueError(f"not a stored zoo state: {len(raw)} bytes")
    n = int.from_bytes(raw[:_LEN], "little")
    try:
        head = json.loads(raw[_LEN:_LEN + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not a stored zoo state: its header is not JSON") from None
    if not isinstance(head, dict) or head.get("format") != STATE_FORMAT:
        raise ValueError(f"not a stored zoo state of format {STATE_FORMAT!r} (header format "
                         f"{head.get('format') if isinstance(head, dict) else None!r})")
    out, at = {}, _LEN + n
    try:
        tensors = [(str(name), np.dtype(dtype), [int(d) for d in shape]) for name, dtype, shape in head["tensors"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError("not a stored zoo state: its header's tensor list is malformed") from None
    for name, dt, shape in tensors:
        size = dt.itemsize * int(np.prod(shape, dtype=np.int64))
        if at + size > len(raw):
            raise ValueError(f"stored zoo state truncated: tensor {name!r} needs {size} bytes, {len(raw) - at} left")
        out[name] = np.frombuffer(raw, dt, count=size // dt.itemsize, offset=at).reshape(shape)
        at += size
    if at != len(raw):
        raise ValueError(f"stored zoo state has {len(raw) - at} bytes after its tensors")
    if head.get("fingerprint") is not None:
        out[FINGERPRINT_KEY] = np.array(head["fingerprint"])
    return out


class BytesStore:
    """States kept as :func:`to_bytes` values in ``kv``, any mapping of bytes (a dict; a Redis client behind a small
    adapter with ``get`` / ``__setitem__`` / ``pop``): the ``store`` argument of both explicit-state clients."""

    def __init__(self, kv=None):
        self.kv = {} if kv is None else kv

    def get(self, key, default=None):
        raw = self.kv.get(key)
        return default if raw is None else from_bytes(raw)

    def __setitem__(self, key, state: dict[str, np.ndarray]) -> None:
        self.kv[key] = to_bytes(state)

    def pop(self, key, default=None):
        raw = self.kv.pop(key, None)
        return default if raw is None else from_bytes(raw)

    def __contains__(self, key) -> bool:
        return key in self.kv

    def __len__(self) -> int:
        return len(self.kv)


__all__ = ["FINGERPRINT_KEY", "ON_STALE", "STATE_FORMAT", "StaleStateError", "BytesStore", "check_on_stale",
           "stored_tag", "usable_state", "tagged", "to_bytes", "from_bytes"]
