"""Timestamps as the exported graphs take them: float64 Unix seconds, and the float64 time gaps of a
``--time-input gaps`` graph. Shared by :mod:`export.runtime` and :mod:`export.triton_client` (numpy only: a Triton
client needs no ONNX Runtime)."""

from __future__ import annotations

from typing import Any

import numpy as np

#: the largest timestamp read as Unix seconds (1e11 s: the year ~5000); beyond it they are milliseconds (~1.7e12 today)
#: or nanoseconds (~1.7e18) since the epoch, which a time-aware graph would read as seconds. The bound of
#: ``zoo.modeling_utils.MAX_TIMESTAMP_S`` (not imported: this module needs numpy only)
MAX_SECONDS = 1e11


def seconds(timestamps: Any) -> np.ndarray:
    """Timestamps as float64 Unix seconds: numbers (int, or float of float64 precision) as they are, numpy
    ``datetime64`` of any unit converted (``datetime64[ms]`` read as numbers would be 1,000 times too large). Refused
    with a message: booleans, strings and other non-numbers (TypeError), ``NaT``, and float32/float16 values too large
    to hold whole seconds (float32 above 2**24 s: it keeps Unix seconds to 64 s steps before 2004, 128 s after; float16
    above 2**11 s; pass float64 or int64), and values beyond :data:`MAX_SECONDS` (milliseconds or nanoseconds since the
    epoch, as ``model.step`` refuses them; this also refuses every integer beyond 2**53, which float64 would round). NaN
    and infinities are left to the caller's check. Rows of different lengths (a ragged nested list) raise ValueError
    saying so."""
    try:
        arr = np.asarray(timestamps)
    except ValueError:                                       # numpy's "inhomogeneous shape": a ragged nested list
        raise ValueError("timestamps: rows of different lengths (one timestamp per item: each row as long as its "
                         "row of item ids)") from None
    if arr.dtype.kind == "M":
        if np.isnat(arr).any():
            raise ValueError("timestamps hold NaT (a missing time)")
        return arr.astype("datetime64[us]").astype(np.int64) / 1e6
    if arr.size and arr.dtype.kind not in "iuf":
        raise TypeError(f"timestamps must be numbers (Unix seconds) or numpy datetime64, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 8 and arr.size:
        exact = 2.0 / np.finfo(arr.dtype).eps                # every whole second up to it: 2**24 in float32, 2**11 in
        big = np.abs(arr[np.isfinite(arr)]).max(initial=0)   # float16 (zoo.modeling_utils.check_timestamps' rule)
        if big > exact:
            raise ValueError(f"timestamps are {arr.dtype} and reach {float(big):.6g} s: {arr.dtype} cannot hold whole "
                             "seconds that large (float32 keeps Unix seconds to 128 s steps since 2004); pass float64 "
                             "or int64")
    out = arr.astype(np.float64)
    late = out[np.isfinite(out) & (out > MAX_SECONDS)]
    if len(late):
        raise ValueError(f"timestamps reach {float(late.max()):.6g} s, beyond {MAX_SECONDS:.0e} s (the year ~5000): "
                         "they look like milliseconds or nanoseconds since the epoch; pass Unix seconds")
    return out


def time_gaps(timestamps: np.ndarray, last_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 ``timestamps [B, T]`` (Unix seconds) + ``last_ts [B, 1]`` (-1 = no event yet) -> ``(gaps [B, T],
    new last_ts [B, 1])``, both float64, exactly as ``TiM4RecCausalModel._step`` differences them: ``gap_0 = ts_0 -
    last_ts`` (0 when ``last_ts < 0``), ``gap_i = ts_i - ts_{i-1}``; the new ``last_ts`` is ``ts_{T-1}``. The input of a
    gaps-form graph (``time_gaps``) is these gaps cast to float32. No checks here
    (:meth:`export.runtime.OnnxStepSession.step` checks the timestamps first)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    last = np.asarray(last_ts, dtype=np.float64).reshape(ts.shape[0], 1)
    prev = np.concatenate([np.where(last >= 0, last, ts[:, :1]), ts[:, :-1]], axis=1)
    return ts - prev, ts[:, -1:].copy()


__all__ = ["seconds", "time_gaps"]
