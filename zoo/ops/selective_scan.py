"""Mamba-1 selective scan: pure-PyTorch references and the dispatching entry point.

Shapes follow ``mamba_ssm.ops.selective_scan_interface`` (batch ``B``, channels ``E = d_inner``, length ``L``,
state ``N = d_state``)::

    u, delta, z      [B, E, L]
    A                [E, N]        (real, negative: A = -exp(A_log))
    B, C             [B, N, L]     (input-dependent, shared by all channels)
    D, delta_bias    [E]
    initial_state    [B, E, N]     (optional; zero when absent)

Recurrence per (b, e, n), zero-order hold for A and Euler for B::

    dt_t = softplus(delta_t + delta_bias)            (softplus only when delta_softplus)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t  = sum_n C_t * h_t + D * u_t ;   y_t *= silu(z_t)   (when z is given)

* :func:`selective_scan_ref` — parallel form (log-depth doubling scan, no Python loop over ``L``), differentiable
  with an O(size) memory custom backward; what CPU training and ONNX export fall back to.
* :func:`selective_scan_loop` — the textbook per-step loop; the oracle in tests.
* :func:`selective_state_update_ref` — one step, functional (returns the new state instead of writing in place).
* :func:`selective_scan_fn` — same signature as the reference; dispatches to mamba-ssm's CUDA kernel on GPU, to the
  fused CPU kernel (:mod:`zoo.ops.selective_scan_cpu`) on CPU when it builds, and to the reference otherwise.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

from .conv import exporting, onnx_exporting

logger = logging.getLogger(__name__)

try:  # optional CUDA fast path
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_selective_scan_fn
except Exception:  # ImportError, or a broken binary build (mamba#97, #308)
    _mamba_selective_scan_fn = None

_warned = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg)


# ----------------------------------------------------------------------------------------------- linear scan
def _doubling_scan(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along ``dim`` (h_{-1} = 0) by Hillis-Steele doubling: ceil(log2 L) passes."""
    a = a.clone()
    b = b.clone()
    L = a.shape[dim]
    d = 1
    while d < L:
        a_hi, a_lo = a.narrow(dim, d, L - d), a.narrow(dim, 0, L - d)
        b_hi, b_lo = b.narrow(dim, d, L - d), b.narrow(dim, 0, L - d)
        new_b = torch.addcmul(b_hi, a_hi, b_lo)
        if 2 * d < L:
            new_a = a_hi * a_lo
            a_hi.copy_(new_a)
        b_hi.copy_(new_b)
        d *= 2
    return b


class _LinearScan(torch.autograd.Function):
    """Differentiable first-order linear recurrence with O(size) saved memory.

    Backward is the reverse recurrence g_t = dL/dh_t + a_{t+1} g_{t+1};  dL/db_t = g_t;  dL/da_t = g_t h_{t-1}.
    """

    @staticmethod
    def forward(ctx, a, b, dim):
        h = _doubling_scan(a, b, dim)
        ctx.save_for_backward(a, h)
        ctx.dim = dim
        return h

    @staticmethod
    def backward(ctx, gh):
        a, h = ctx.saved_tensors
        dim = ctx.dim
        L = a.shape[dim]
        a_next = torch.zeros_like(a)
        if L > 1:
            a_next.narrow(dim, 0, L - 1).copy_(a.narrow(dim, 1, L - 1))
        g = _doubling_scan(a_next.flip(dim), gh.flip(dim), dim).flip(dim)
        h_prev = torch.zeros_like(h)
        if L > 1:
            h_prev.narrow(dim, 1, L - 1).copy_(h.narrow(dim, 0, L - 1))
        return g * h_prev, g, None


def linear_scan(a: torch.Tensor, b: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` along ``dim`` with ``h_{-1} = 0`` (fold an initial state into ``b_0``).

    Parallel (log-depth) and differentiable; ``a`` and ``b`` have the same shape.
    """
    if a.shape != b.shape:
        raise ValueError(f"linear_scan: a {list(a.shape)} and b {list(b.shape)} must have the same shape")
    dim = dim % a.dim()
    if torch.jit.is_tracing() or onnx_exporting():
        return _doubling_scan(a, b, dim)
    return _LinearScan.apply(a, b, dim)


# ------------------------------------------------------------------------------------------------ checks
def _check(u, delta, A, B, C, D, z, delta_bias, initial_state):
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be [B, E, L], got {list(u.shape)}")
    b, e, L = u.shape
    n = A.shape[-1]
    expect = {"delta": (delta, (b, e, L)), "A": (A, (e, n)), "B": (B, (b, n, L)), "C": (C, (b, n, L)),
              "D": (D, (e,)), "z": (z, (b, e, L)), "delta_bias": (delta_bias, (e,)),
              "initial_state": (initial_state, (b, e, n))}
    for name, (t, shape) in expect.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {list(shape)}, got {list(t.shape)}")


# -------------------------------------------------------------------------------------------- references
def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None):
    """Parallel pure-PyTorch selective scan (see the module docstring for shapes and math).

    Returns ``out [B, E, L]`` or ``(out, last_state [B, E, N])`` with ``return_last_state``.
    Computes in float32 (or float64 when given float64) and returns ``out`` in ``u``'s dtype and ``last_state`` in
    the compute dtype (float32 for a 16-bit ``u``: a state carried from call to call is not re-rounded each call).
    """
    _check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype_in = u.dtype
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    # fmt: off
    u, delta, A, B, C = u.to(ct), delta.to(ct), A.to(ct), B.to(ct), C.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[None, :, None]                        # [B, E, L]
    if delta_softplus:
        delta = F.softplus(delta)                                               # [B, E, L]
    dt = delta.transpose(1, 2)                                                  # [B, L, E]
    dA = torch.exp(dt.unsqueeze(-1) * A)                                        # [B, L, E, N]
    dBu = (dt * u.transpose(1, 2)).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)  # [B, L, E, N]
    if initial_state is not None:
        dBu = torch.cat([dBu[:, :1] + dA[:, :1] * initial_state.to(ct).unsqueeze(1), dBu[:, 1:]], dim=1)
    h = linear_scan(dA, dBu, dim=1)                                             # [B, L, E, N]
    y = torch.einsum("blen,bnl->bel", h, C)                                     # [B, E, L]
    if D is not None:
        y = y + D.to(ct)[None, :, None] * u                                     # [B, E, L]
    if z is not None:
        y = y * F.silu(z.to(ct))                                                # [B, E, L]
    # fmt: on
    out = y.to(dtype_in)
    return (out, h[:, -1]) if return_last_state else out


def selective_scan_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        return_last_state=False, initial_state=None):
    """Naive per-step loop over ``L`` (mamba-ssm's ``selective_scan_ref`` style): the oracle for tests. Same
    returns and dtypes as :func:`selective_scan_ref`."""
    _check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype_in = u.dtype
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = u.to(ct), delta.to(ct), A.to(ct), B.to(ct), C.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, e, L = u.shape
    h = initial_state.to(ct) if initial_state is not None else u.new_zeros(b, e, A.shape[1])
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, :, t, None] * A)                                # [B, E, N]
        h = dA * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append(torch.einsum("ben,bn->be", h, C[:, :, t]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + D.to(ct)[None, :, None] * u
    if z is not None:
        y = y * F.silu(z.to(ct))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One step of the selective scan (functional; mamba-ssm's ``selective_state_update`` updates in place).

    Args:
        state: ``[B, E, N]``; x, dt, z: ``[B, E]``; A: ``[E, N]``; B, C: ``[B, N]``; D, dt_bias: ``[E]``.
    Returns:
        ``(y [B, E], new_state [B, E, N])``: computed as :func:`selective_scan_ref` computes (float32, or float64 for
        a float64 ``x``), ``y`` in ``x``'s dtype and ``new_state`` in the compute dtype.
    """
    dtype_in = x.dtype
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    state, x, dt, A, B, C, D, z, dt_bias = (None if t is None else t.to(ct)
                                            for t in (state, x, dt, A, B, C, D, z, dt_bias))
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    dA = torch.exp(dt.unsqueeze(-1) * A)                                        # [B, E, N]
    new_state = state * dA + (dt * x).unsqueeze(-1) * B.unsqueeze(1)            # [B, E, N]
    y = torch.einsum("ben,bn->be", new_state, C)                                # [B, E]
    if D is not None:
        y = y + D * x
    if z is not None:
        y = y * F.silu(z)
    return y.to(dtype_in), new_state


# ---------------------------------------------------------------------------------------------- dispatch
def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, initial_state=None):
    """Selective scan with the best available implementation; same signature and result as the reference.

    * CUDA tensors + ``mamba_ssm`` importable + no ``initial_state``: mamba-ssm's fused kernel, where it takes the
      inputs and gives the reference's result (:func:`_mamba_args`: dtypes it takes, or casts the reference makes
      anyway; no gradient through a returned last state); the last state comes back in float32, as the reference's.
    * CPU float32 ``u``: the fused C++ kernel (:mod:`zoo.ops.selective_scan_cpu`) when it builds (set the
      environment variable ``ZOO_CPU_KERNEL=0`` to force the reference). It takes every tensor in float32, so the
      others (float64 ``A``, bfloat16 ``B``/``C`` under autocast, ...) are cast to float32 first, as the reference
      casts them for a float32 ``u``.
    * otherwise (and always while tracing/exporting): :func:`selective_scan_ref`.
    """
    if not exporting():
        if u.is_cuda:
            if _mamba_selective_scan_fn is not None and initial_state is None:
                args = _mamba_args(u, delta, A, B, C, D, z, delta_bias, return_last_state)
                if args is not None:
                    res = _mamba_selective_scan_fn(*args, delta_softplus=delta_softplus,
                                                   return_last_state=return_last_state)
                    # mamba-ssm returns the last state in float32, as the reference does (its compute dtype)
                    return (res[0], res[1].to(torch.float32)) if return_last_state else res
            if _mamba_selective_scan_fn is None:
                _warn_once("cuda", "mamba-ssm is not installed: the selective scan runs the pure-PyTorch reference "
                                   "on CUDA (slow). Install the fast path with `pip install ssm-rec-zoo[gpu]`.")
        elif u.dtype == torch.float32 and u.device.type == "cpu" and os.environ.get("ZOO_CPU_KERNEL", "1") != "0":
            from . import selective_scan_cpu

            if selective_scan_cpu.is_available() and _all_on_cpu(delta, A, B, C, D, z, delta_bias, initial_state):
                # the kernel takes every tensor in u's dtype; the reference computes in float32 for a float32 u,
                # casting the others to it: cast them the same way (differentiable, so gradients keep their dtypes)
                _check(u, delta, A, B, C, D, z, delta_bias, initial_state)
                f32 = [None if t is None else t.to(torch.float32) for t in (delta, A, B, C, D, z, delta_bias,
                                                                             initial_state)]
                delta, A, B, C, D, z, delta_bias, initial_state = f32
                return selective_scan_cpu.selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                             return_last_state, initial_state)
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state)


_MAMBA_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _mamba_args(u, delta, A, B, C, D, z, delta_bias, return_last_state):
    """``(u, delta, A, B, C, D, z, delta_bias)`` as mamba-ssm's ``selective_scan_fn`` takes them with the reference's
    result, or None where it cannot (the reference runs).

    Its kernel (``selective_scan_cuda.fwd``) takes u in float32/float16/bfloat16, delta, B, C and z in u's dtype,
    A, D and delta_bias in float32 (delta_bias unit-stride), and a state of at most 256. The reference computes in
    float32 (a float64 u: float64) after casting every input, so: a float64 u goes to the reference; with a float32 u
    the others are cast to float32 as the reference casts them (bfloat16 ``B``/``C`` under autocast: exact); with a
    16-bit u, another of delta/B/C/z in another dtype goes to the reference (casting it to u's dtype would round it
    where the reference does not); A, D, delta_bias are cast to float32 (what the reference does with them for a
    non-float64 u). mamba-ssm ignores the gradient flowing into the last state ("not considered in the backward
    pass"), so ``return_last_state`` while a gradient is being recorded goes to the reference too."""
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if u.dtype not in _MAMBA_INPUT_DTYPES or not all(t is None or (t.is_cuda and t.is_floating_point())
                                                     for t in tensors):
        return None
    if return_last_state and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return None
    _check(u, delta, A, B, C, D, z, delta_bias, None)                 # shape errors: the reference's messages
    if A.shape[-1] > 256:
        return None
    if u.dtype == torch.float32:
        delta, B, C, z = (None if t is None else t.to(torch.float32) for t in (delta, B, C, z))
    elif any(t is not None and t.dtype != u.dtype for t in (delta, B, C, z)):
        return None
    A, D = A.to(torch.float32), None if D is None else D.to(torch.float32)
    delta_bias = None if delta_bias is None else delta_bias.to(torch.float32).contiguous()
    return u, delta, A, B, C, D, z, delta_bias


def _all_on_cpu(*tensors) -> bool:
    """Every given (not None) argument is a real floating CPU tensor: what the fused CPU kernel can take after a cast
    to float32 (anything else goes to the reference, which handles or refuses it)."""
    return all(t is None or (isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.is_floating_point())
               for t in tensors)


__all__ = ["selective_scan_fn", "selective_scan_ref", "selective_scan_loop", "selective_state_update_ref",
           "linear_scan"]
