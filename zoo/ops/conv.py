"""Causal depthwise conv1d with a carried state (Mamba's short convolution), pure PyTorch.

Optional CUDA fast path: ``causal_conv1d`` (Dao-AILab) when installed, no state is carried in and the kernel takes
the input (width 2..4, its dtypes and layouts); the reference otherwise.
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F

try:  # optional CUDA fast path
    from causal_conv1d import causal_conv1d_fn as _causal_conv1d_fn
except Exception:
    _causal_conv1d_fn = None


#: per thread: how deep it is inside :func:`exporting_in_this_thread` (export/onnx.py's trace), 0 or unset outside
_export_state = threading.local()
#: threads inside :func:`exporting_in_this_thread` now, process-wide (under :data:`_export_count_lock`)
_marked_exports = 0
_export_count_lock = threading.Lock()


@contextlib.contextmanager
def exporting_in_this_thread():
    """Mark the calling thread as exporting for the block (export/onnx.py around its ``torch.onnx.export``): the zoo's
    ops then take their reference paths in this thread (:func:`onnx_exporting`), and only here. Reentrant."""
    global _marked_exports
    depth = getattr(_export_state, "depth", 0)
    _export_state.depth = depth + 1
    with _export_count_lock:
        _marked_exports += 1
    try:
        yield
    finally:
        _export_state.depth = depth
        with _export_count_lock:
            _marked_exports -= 1


def onnx_exporting() -> bool:
    """Whether the calling thread is inside an ONNX export: marked by :func:`exporting_in_this_thread` (export/onnx.py);
    else ``torch.onnx.is_in_onnx_export()`` -- a process-wide flag, so it is read only while no marked export runs:
    then it is set by an export the zoo did not start (``torch.onnx.export`` called directly on a zoo model), which
    cannot tell its thread either; while a marked export runs, the flag is that export's (torch runs one export at a
    time per process), and other threads (serving) are not exporting."""
    if getattr(_export_state, "depth", 0):
        return True
    return _marked_exports == 0 and torch.onnx.is_in_onnx_export()


def exporting() -> bool:
    """Whether the calling thread must take the ops' reference paths (no fused kernel): it traces
    (``torch.jit.is_tracing()``, per thread), compiles (``torch.compiler.is_compiling()``) or exports to ONNX
    (:func:`onnx_exporting`)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or onnx_exporting()


def with_conv_state(x: torch.Tensor, weight: torch.Tensor, conv_state: torch.Tensor | None) -> torch.Tensor:
    """``x [B, E, L]`` behind its ``conv_state [B, E, K-1]`` (None = zeros) -> ``[B, E, K-1+L]``, the input of a
    causal depthwise conv with ``weight [E, K]``; wrong weight or state shapes are errors naming the expected ones."""
    b, e, _ = x.shape
    k = weight.shape[-1]
    if weight.shape != (e, k):
        raise ValueError(f"causal_conv1d: weight must be [E={e}, K], got {list(weight.shape)}")
    if conv_state is None:
        conv_state = x.new_zeros(b, e, k - 1)
    elif conv_state.shape != (b, e, k - 1):
        raise ValueError(f"causal_conv1d: conv_state must be [{b}, {e}, {k - 1}], got {list(conv_state.shape)}")
    return torch.cat([conv_state.to(x.dtype), x], dim=-1)


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      conv_state: torch.Tensor | None = None, activation: str | None = None):
    """Depthwise causal convolution over the last axis, continuing from ``conv_state``.

    Args:
        x: ``[B, E, L]`` inputs.
        weight: ``[E, K]`` per-channel kernel (``nn.Conv1d(E, E, K, groups=E).weight[:, 0]``).
        bias: ``[E]`` or None.
        conv_state: ``[B, E, K-1]`` the last ``K-1`` inputs before ``x`` (zeros for an empty history), or None.
        activation: None or ``"silu"``.
    Returns:
        ``(out [B, E, L], new_conv_state [B, E, K-1])`` where ``new_conv_state`` holds the last ``K-1`` inputs.
    """
    e, k = x.shape[1], weight.shape[-1]
    xp = with_conv_state(x, weight, conv_state)                               # [B, E, K-1+L]
    out = F.conv1d(xp, weight.unsqueeze(1), bias, groups=e)                   # [B, E, L]
    if activation == "silu":
        out = F.silu(out)
    elif activation is not None:
        raise ValueError(f"causal_conv1d: unsupported activation {activation!r}")
    return out, xp[:, :, xp.shape[-1] - (k - 1):]


def causal_conv1d_update_ref(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                             bias: torch.Tensor | None = None, activation: str | None = None):
    """One step: ``x [B, E]`` with ``conv_state [B, E, K-1]`` -> ``(out [B, E], new_conv_state)``."""
    out, new_state = causal_conv1d_ref(x.unsqueeze(-1), weight, bias, conv_state, activation)
    return out[..., 0], new_state


_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _kernel_input(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None):
    """``x`` as causal-conv1d's kernel accepts it, or None where the kernel refuses the call (the reference runs).

    The kernel's checks (``causal_conv1d_fwd``, csrc/causal_conv1d.cpp): x and weight float32/float16/bfloat16, bias
    in weight's dtype, width K in 2..4, activation None or SiLU, and for a channel-last x (``stride(1) == 1``, as
    Mamba4Rec's x: a slice of the transposed input projection) channels and batch/length strides multiples of 8.
    The zoo takes any K >= 1 and any channel count, so K = 1 or K >= 5 (or float64) goes to the reference. A
    channel-last x that misses the multiples of 8 (or the kernel's 16-byte vector alignment) is handed over
    channel-first (``.contiguous()``: one copy; the channel-first path has no such rule), cheaper than the reference's
    concatenation, convolution and separate SiLU and the same result."""
    k = weight.shape[-1]
    if (x.dim() != 3 or weight.shape != (x.shape[1], k) or not 2 <= k <= 4 or activation not in (None, "silu")
            or x.dtype not in _KERNEL_DTYPES or weight.dtype not in _KERNEL_DTYPES
            or (bias is not None and bias.dtype != weight.dtype)):
        return None
    if x.stride(2) != 1 and x.stride(1) != 1:
        return x.contiguous()                                     # what causal_conv1d_fn itself does
    channel_last = x.stride(1) == 1 and x.stride(2) > 1
    if channel_last and (x.shape[1] % 8 or x.stride(0) % 8 or x.stride(2) % 8 or x.storage_offset() % 8):
        return x.contiguous()
    return x


def causal_conv1d(x, weight, bias=None, conv_state=None, activation=None):
    """Dispatch: causal-conv1d's CUDA kernel when available, no state is carried in and the kernel accepts the call
    (see :func:`_kernel_input`), else the reference; the same ``(out, new_conv_state)`` either way."""
    if x.is_cuda and _causal_conv1d_fn is not None and conv_state is None and not exporting():
        xk = _kernel_input(x, weight, bias, activation)
        if xk is not None:
            out = _causal_conv1d_fn(xk, weight, bias, activation=activation)
            k = weight.shape[-1]
            padded = F.pad(x, (max(0, k - 1 - x.shape[-1]), 0))
            tail = padded[:, :, padded.shape[-1] - (k - 1):]      # [B, E, K-1], as the reference's
            return out, tail
    return causal_conv1d_ref(x, weight, bias, conv_state, activation)


__all__ = ["causal_conv1d", "causal_conv1d_ref", "causal_conv1d_update_ref", "exporting", "exporting_in_this_thread",
           "onnx_exporting"]
