"""``export.state_store``: the stored-state rules both explicit-state clients share, and the bytes codec of a state
(header + raw tensors) for key-value stores. NumPy only."""

from __future__ import annotations

import numpy as np
import pytest

from export.state_store import (FINGERPRINT_KEY, STATE_FORMAT, BytesStore, StaleStateError, from_bytes, tagged,
                                to_bytes, usable_state)


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {"conv_state": rng.normal(size=(1, 2, 8, 3)).astype(np.float32),
            "ssm_state": rng.normal(size=(1, 2, 8, 4)).astype(np.float32),
            "last_ts": np.array([[1.6e9 + 0.25]], dtype=np.float64),
            "seen": np.zeros((1, 7), dtype=np.float32), "count": np.array([[3]], dtype=np.int64)}


def test_bytes_round_trip_keeps_every_tensor_dtype_shape_and_the_fingerprint():
    st = tagged(_state(), "sha256:abc")
    back = from_bytes(to_bytes(st))
    assert set(back) == set(st)
    for name, a in st.items():
        if name == FINGERPRINT_KEY:
            assert str(back[name]) == "sha256:abc"
            continue
        assert back[name].dtype == a.dtype and back[name].shape == a.shape
        np.testing.assert_array_equal(back[name], a)
    assert FINGERPRINT_KEY not in from_bytes(to_bytes(_state()))     # untagged stays untagged


def test_bytes_that_are_not_a_state_are_refused_naming_why():
    raw = to_bytes(tagged(_state(), "sha256:abc"))
    with pytest.raises(ValueError, match="truncated: tensor"):
        from_bytes(raw[:-5])
    with pytest.raises(ValueError, match="bytes after its tensors"):
        from_bytes(raw + b"xx")
    with pytest.raises(ValueError, match="header is not JSON"):
        from_bytes(b"\x05\x00\x00\x00hello")
    with pytest.raises(ValueError, match=f"not a stored zoo state of format {STATE_FORMAT!r}"):
        from_bytes(b"\x0d\x00\x00\x00" + b'{"format": 1}')
    with pytest.raises(ValueError, match="tensor list is malformed"):
        from_bytes(b"\x2a\x00\x00\x00" + b'{"format": "zoo-state/1", "tensors": [1]} ')
    with pytest.raises(ValueError, match="2 bytes"):
        from_bytes(b"ab")
    with pytest.raises(TypeError, match="holds numbers"):
        to_bytes({"x": np.array(["a"])})


def test_bytes_store_is_a_store():
    store = BytesStore()
    assert store.get("u") is None and "u" not in store and len(store) == 0
    store["u"] = tagged(_state(), "fp")
    assert "u" in store and isinstance(store.kv["u"], bytes) and str(store.get("u")[FINGERPRINT_KEY]) == "fp"
    assert store.pop("u") is not None and store.pop("u") is None and len(store) == 0


def test_usable_state_rules():
    st = tagged(_state(), "A")
    assert usable_state(None, "A", "error", "u", "m") is None                 # nothing stored: initial state
    assert usable_state(st, "A", "error", "u", "m") is st
    assert usable_state(st, None, "error", "u", "m") is st                    # a graph without a fingerprint
    assert usable_state(st, "B", "restart", "u", "m") is None
    with pytest.raises(StaleStateError, match="user 'u' was written by another model than m"):
        usable_state(st, "B", "error", "u", "m")
    with pytest.raises(StaleStateError, match="no fingerprint"):
        usable_state(_state(), "B", "error", "u", "m")
