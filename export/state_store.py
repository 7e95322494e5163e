"""Users' recurrent states kept in a key-value store between events, tagged with the model that wrote them.

Shared by the two explicit-state clients: :class:`export.runtime.UserStateRecommender` (the step graph in this
process, ONNX Runtime) and :class:`export.triton_client.ExplicitStateRecommender` (the same graph behind Triton). Both
store a user's state as ``{state name: np.ndarray [1, ...], FINGERPRINT_KEY: np.array(fingerprint)}``, so one store
serves either, and a state a replaced model wrote is refused, never fed to the new one.

NumPy only (no onnxruntime, no tritonclient), so either client imports it without the other's dependencies.
"""

from __future__ import annotations

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


__all__ = ["FINGERPRINT_KEY", "ON_STALE", "StaleStateError", "check_on_stale", "stored_tag", "usable_state", "tagged"]
