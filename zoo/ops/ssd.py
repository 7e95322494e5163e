"""Mamba-2 / SSD (state-space duality) scan: pure-PyTorch references (CPU, exportable, differentiable).

Shapes follow ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined`` (batch ``B``, length ``L``, heads ``H``,
head dim ``P``, groups ``G`` with ``H % G == 0``, state ``N``)::

    x              [B, L, H, P]
    dt             [B, L, H]     Δ, ALREADY positive (softplus(dt_raw + dt_bias) applied by the caller or by
                                 :func:`ssd_scan_fn`)
    A              [H]           one real negative scalar per head (A = -exp(A_log))
    B, C           [B, L, G, N]  head h reads group h // (H // G)
    D              [H]           skip (optional)
    initial_state  [B, H, P, N]  state before position 0 (optional, zeros when absent)
    seq_idx        [B, L]        int sequence id per position for packed sequences (optional); must be non-decreasing
                                 along L; no state flows between positions with different ids

Recurrence per (b, h), state S ∈ R^{P×N}::

    S_t = exp(Δ_t[h] · A[h]) · S_{t-1} + Δ_t[h] · x_t[h] ⊗ B_t[g(h)]        (S_{t-1} := 0 when seq_idx changes)
    y_t[h] = S_t · C_t[g(h)] + D[h] · x_t[h]

* :func:`ssd_chunk_scan_ref` — the chunked "SSD" algorithm of ``ssd_minimal.py`` / HF ``Mamba2Mixer.torch_forward``:
  intra-chunk quadratic (masked attention-like) form with a segment-sum decay mask, chunk states, and a fully
  vectorised inter-chunk state recurrence (no Python loop over positions or chunks).
* :func:`ssd_scan_loop` — the textbook per-step loop; the oracle in tests.
* :func:`ssd_step_ref` — one step, functional.
* :func:`ssd_scan_fn` — convenience entry with the ``dt_bias``/``dt_softplus`` convention of
  ``mamba_chunk_scan_combined`` (and of the exported ``SSDScan`` op, ``export/plugin_spec.py``).
* :func:`rmsnorm_gated_ref` — Mamba-2's gated RMSNorm (``mamba_ssm.ops.triton.layernorm_gated.rmsnorm_fn``).
* :func:`causal_conv1d_act` — :func:`zoo.ops.conv.causal_conv1d_ref` plus the activations Mamba-2 variants use
  (``"silu"``, ``"hardswish"`` for TiM4Rec's ``nn.Conv1d`` fallback, ``None``).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

from .conv import exporting, with_conv_state

logger = logging.getLogger(__name__)

try:  # optional CUDA fast path: mamba-ssm's Triton SSD kernels
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _mamba_chunk_scan_combined
except Exception:  # ImportError, no Triton, or a broken build
    _mamba_chunk_scan_combined = None



# ------------------------------------------------------------------------------------------------- checks
def _check(x, dt, A, B, C, D, initial_state, seq_idx):
    if x.dim() != 4:
        raise ValueError(f"ssd: x must be [B, L, H, P], got {list(x.shape)}")
    b, L, h, p = x.shape
    if B.dim() != 4:
        raise ValueError(f"ssd: B must be [B, L, G, N], got {list(B.shape)}")
    g, n = B.shape[2], B.shape[3]
    if g < 1 or h % g != 0:
        raise ValueError(f"ssd: heads H={h} must be a multiple of groups G={g}")
    expect = {"dt": (dt, (b, L, h)), "A": (A, (h,)), "B": (B, (b, L, g, n)), "C": (C, (b, L, g, n)),
              "D": (D, (h,)), "initial_state": (initial_state, (b, h, p, n)), "seq_idx": (seq_idx, (b, L))}
    for name, (t, shape) in expect.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"ssd: {name} must have shape {list(shape)}, got {list(t.shape)}")
    if seq_idx is not None and L > 1 and (seq_idx[:, 1:] < seq_idx[:, :-1]).any():
        raise ValueError("ssd: seq_idx must be non-decreasing along the sequence (packed sequences)")


def _ct(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    """``[B, L, G, N]`` -> ``[B, L, H, N]`` (head h reads group h // (H // G))."""
    g = t.shape[2]
    return t if g == h else t.repeat_interleave(h // g, dim=2)


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """``[..., T]`` -> ``[..., T, T]`` with ``out[i, j] = sum_{k=j+1..i} x_k`` for ``i >= j`` and ``-inf`` above.

    Computed as a difference of cumulative sums taken in float64 (so the cancellation of two large sums costs no
    accuracy in float32; ``ssd_minimal.segsum``'s masked-cumsum form gives the same values at O(T^2) more work).
    """
    T = x.shape[-1]
    cs = torch.cumsum(x.double(), dim=-1)                                       # [..., T]
    seg = (cs.unsqueeze(-1) - cs.unsqueeze(-2)).to(x.dtype)                     # [..., i, j] = cs_i - cs_j
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=0)
    return torch.where(lower, seg, torch.full((), -torch.inf, dtype=x.dtype, device=x.device))


# ---------------------------------------------------------------------------------------------- references
def ssd_chunk_scan_ref(x, dt, A, B, C, chunk_size=256, D=None, initial_state=None, seq_idx=None):
    """Chunked SSD scan (see the module docstring for shapes and math).

    Args:
        x: ``[B, L, H, P]``; dt: ``[B, L, H]`` positive Δ (post-softplus); A: ``[H]``; B, C: ``[B, L, G, N]``;
        chunk_size: ``Q``, positions per chunk (any value >= 1; ``Q > L`` means one chunk);
        D: ``[H]`` or None; initial_state: ``[B, H, P, N]`` or None; seq_idx: ``[B, L]`` int or None.
    Returns:
        ``(y [B, L, H, P], final_state [B, H, P, N])``, computed in float32 (or float64 for float64 inputs): ``y``
        in ``x``'s dtype, ``final_state`` in the compute dtype (float32 for a 16-bit ``x``: a state carried from
        call to call is not re-rounded each call). With ``seq_idx``, ``final_state`` is the state of the last
        sequence of each row and ``initial_state`` feeds the first sequence of each row only.
    """
    _check(x, dt, A, B, C, D, initial_state, seq_idx)
    if int(chunk_size) < 1:
        raise ValueError(f"ssd: chunk_size must be >= 1, got {chunk_size}")
    dtype_in = x.dtype
    ct = _ct(x)
    b, L, h, p = x.shape
    n = B.shape[-1]
    Q = min(int(chunk_size), L)
    nc = -(-L // Q)
    pad = nc * Q - L
    # fmt: off
    g = B.shape[2]
    k = h // g                                                                   # heads per group
    xs = x.to(ct)
    dts = dt.to(ct)
    X = xs * dts.unsqueeze(-1)                                                  # [B, L, H, P]  Δ·x
    Adt = dts * A.to(ct)                                                        # [B, L, H]     Δ·A (<= 0)
    Bs, Cs = B.to(ct), C.to(ct)                                                 # [B, L, G, N]
    if pad:  # zero input and zero decay exponent (factor 1) on padded positions: state passes through unchanged
        X = F.pad(X, (0, 0, 0, 0, 0, pad))
        Adt = F.pad(Adt, (0, 0, 0, pad))
        Bs = F.pad(Bs, (0, 0, 0, 0, 0, pad))
        Cs = F.pad(Cs, (0, 0, 0, 0, 0, pad))
    X = X.reshape(b, nc, Q, g, k, p)                                            # [B, c, Q, G, k, P]
    Bc = Bs.reshape(b, nc, Q, g, n)                                             # [B, c, Q, G, N]
    Cc = Cs.reshape(b, nc, Q, g, n)                                             # [B, c, Q, G, N]
    Ac = Adt.reshape(b, nc, Q, h).permute(0, 3, 1, 2)                           # [B, H, c, Q]
    A_cum = torch.cumsum(Ac, dim=-1)                                            # [B, H, c, Q]

    same_pos = same_state = None
    if seq_idx is not None:
        sid = seq_idx.long()
        if pad:
            sid = torch.cat([sid, sid[:, -1:].expand(b, pad)], dim=1)
        sid = sid.reshape(b, nc, Q)                                             # [B, c, Q]
        # sequence id of the state at each chunk boundary (0: initial state -> first sequence; c+1: end of chunk c)
        bound = torch.cat([sid[:, :1, 0], sid[:, :, -1]], dim=1)                # [B, c+1]
        same_pos = sid.unsqueeze(-1) == sid.unsqueeze(-2)                       # [B, c, Q, Q]
        same_state = bound.unsqueeze(-1) == bound.unsqueeze(-2)                 # [B, c+1, c+1]

    # 1. intra-chunk (diagonal blocks): y_l = sum_{s<=l} (C_l·B_s) exp(sum_{s<k<=l} ΔA) Δ_s x_s
    Lmask = torch.exp(_segsum(Ac))                                              # [B, H, c, Q, Q]
    if same_pos is not None:
        Lmask = Lmask * same_pos.unsqueeze(1).to(ct)
    CB = torch.einsum("bclgn,bcsgn->bgcls", Cc, Bc)                             # [B, G, c, Q, Q] (shared by k heads)
    M = Lmask.reshape(b, g, k, nc, Q, Q) * CB.unsqueeze(2)                      # [B, G, k, c, Q, Q]
    Y_diag = torch.einsum("bgkcls,bcsgkp->bclgkp", M, X)                        # [B, c, Q, G, k, P]

    # 2. state contributed by each chunk alone, at the chunk's end
    decay_states = torch.exp(A_cum[..., -1:] - A_cum)                           # [B, H, c, Q]
    if seq_idx is not None:
        decay_states = decay_states * (sid == sid[..., -1:]).unsqueeze(1).to(ct)
    Xd = X * decay_states.permute(0, 2, 3, 1).reshape(b, nc, Q, g, k, 1)        # [B, c, Q, G, k, P]
    states = torch.einsum("bclgn,bclgkp->bcgkpn", Bc, Xd).reshape(b, nc, h, p, n)   # [B, c, H, P, N]

    # 3. inter-chunk recurrence, vectorised: state at boundary z = sum_{w<=z} exp(chunk decays w..z) * states_w
    if initial_state is None:
        init = states.new_zeros(b, 1, h, p, n)
    else:
        init = initial_state.to(ct).unsqueeze(1)
    states = torch.cat([init, states], dim=1)                                   # [B, c+1, H, P, N]
    decay_chunk = torch.exp(_segsum(F.pad(A_cum[..., -1], (1, 0))))             # [B, H, c+1, c+1]
    if same_state is not None:
        decay_chunk = decay_chunk * same_state.unsqueeze(1).to(ct)
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)         # [B, c+1, H, P, N]
    states, final_state = new_states[:, :-1], new_states[:, -1]                 # [B, c, H, P, N], [B, H, P, N]

    # 4. contribution of the carried-in state to each position of the chunk
    state_decay_out = torch.exp(A_cum)                                          # [B, H, c, Q]
    if seq_idx is not None:
        state_decay_out = state_decay_out * (sid == bound[:, :-1].unsqueeze(-1)).unsqueeze(1).to(ct)
    Y_off = torch.einsum("bclgn,bcgkpn->bclgkp", Cc, states.reshape(b, nc, g, k, p, n))   # [B, c, Q, G, k, P]
    Y_off = Y_off * state_decay_out.permute(0, 2, 3, 1).reshape(b, nc, Q, g, k, 1)

    y = (Y_diag + Y_off).reshape(b, nc * Q, h, p)[:, :L]                        # [B, L, H, P]
    if D is not None:
        y = y + xs * D.to(ct)[:, None]
    # fmt: on
    return y.to(dtype_in), final_state


def ssd_scan_loop(x, dt, A, B, C, D=None, initial_state=None, seq_idx=None):
    """Naive per-step loop over ``L`` (the oracle in tests); same arguments/returns (and their dtypes) as
    :func:`ssd_chunk_scan_ref`."""
    _check(x, dt, A, B, C, D, initial_state, seq_idx)
    dtype_in = x.dtype
    ct = _ct(x)
    b, L, h, p = x.shape
    n = B.shape[-1]
    xs, dts, A = x.to(ct), dt.to(ct), A.to(ct)
    Bh, Ch = _heads(B.to(ct), h), _heads(C.to(ct), h)
    S = initial_state.to(ct) if initial_state is not None else xs.new_zeros(b, h, p, n)
    ys = []
    for t in range(L):
        if seq_idx is not None and t > 0:
            keep = (seq_idx[:, t] == seq_idx[:, t - 1]).to(ct)[:, None, None, None]
            S = S * keep
        dA = torch.exp(dts[:, t] * A)                                           # [B, H]
        S = S * dA[..., None, None] + (dts[:, t, :, None] * xs[:, t]).unsqueeze(-1) * Bh[:, t].unsqueeze(2)
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Ch[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + xs * D.to(ct)[:, None]
    return y.to(dtype_in), S


def ssd_step_ref(state, x, dt, A, B, C, D=None):
    """One SSD step (functional; mamba-ssm's ``selective_state_update`` for Mamba-2 updates in place).

    Args:
        state: ``[B, H, P, N]``; x: ``[B, H, P]``; dt: ``[B, H]`` positive Δ; A: ``[H]``; B, C: ``[B, G, N]``;
        D: ``[H]`` or None.
    Returns:
        ``(y [B, H, P], new_state [B, H, P, N])``: computed as :func:`ssd_chunk_scan_ref` computes (float32, or
        float64 for a float64 ``x``), ``y`` in ``x``'s dtype and ``new_state`` in the compute dtype.
    """
    dtype_in = x.dtype
    ct = _ct(x)
    state, x, dt, A, B, C, D = (None if t is None else t.to(ct) for t in (state, x, dt, A, B, C, D))
    h = x.shape[1]
    Bh = B.repeat_interleave(h // B.shape[1], dim=1) if B.shape[1] != h else B    # [B, H, N]
    Ch = C.repeat_interleave(h // C.shape[1], dim=1) if C.shape[1] != h else C    # [B, H, N]
    dA = torch.exp(dt * A)                                                      # [B, H]
    new_state = state * dA[..., None, None] + (dt[..., None] * x).unsqueeze(-1) * Bh.unsqueeze(2)
    y = torch.einsum("bhpn,bhn->bhp", new_state, Ch)                            # [B, H, P]
    if D is not None:
        y = y + D[:, None] * x
    return y.to(dtype_in), new_state


def ssd_scan_fn(x, dt, A, B, C, chunk_size=256, D=None, dt_bias=None, dt_softplus=False, initial_state=None,
                seq_idx=None):
    """``mamba_chunk_scan_combined``-style entry: ``Δ = softplus(dt + dt_bias)`` (when ``dt_softplus``), then the
    chunked scan. ``dt`` is ``[B, L, H]`` raw, ``dt_bias`` ``[H]``. Returns ``(y, final_state)``: ``y`` in ``x``'s
    dtype, ``final_state`` in the compute dtype (float32; float64 for a float64 ``x``), as the reference returns them.

    Dispatch (same signature and result, see ``tests/test_ssd_ops.py``):

    * CUDA float32/float16/bfloat16 tensors + ``mamba_ssm`` importable: mamba-ssm's Triton kernel
      ``mamba_chunk_scan_combined`` (set ``ZOO_SSD_KERNEL=0`` to force the reference);
    * otherwise (and always while tracing/exporting): :func:`ssd_chunk_scan_ref`.
    """
    if (not exporting() and x.is_cuda and x.dtype != torch.float64 and _mamba_chunk_scan_combined is not None
            and os.environ.get("ZOO_SSD_KERNEL", "1") != "0"):
        return ssd_scan_kernel(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, initial_state, seq_idx)
    dt = dt.to(_ct(x))
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    return ssd_chunk_scan_ref(x, dt, A, B, C, chunk_size, D, initial_state, seq_idx)


def ssd_scan_kernel(x, dt, A, B, C, chunk_size=256, D=None, dt_bias=None, dt_softplus=False, initial_state=None,
                    seq_idx=None):
    """The fast path of :func:`ssd_scan_fn` (same signature and result): mamba-ssm's Triton
    ``mamba_chunk_scan_combined``, called with the zoo's conventions (float32 ``A``/``D``/``dt_bias``, int32
    ``seq_idx``, ``y`` back in ``x``'s dtype, the final state in float32 as the reference's). Checked against the
    reference by ``tests/test_mamba_ssm_interp.py`` with the kernel run in Triton's CPU interpreter, and on a GPU by
    ``tests/test_ssd_ops.py``."""
    if _mamba_chunk_scan_combined is None:
        raise RuntimeError("mamba-ssm's Triton SSD kernel (mamba_ssm.ops.triton.ssd_combined) is not importable")
    _check(x, dt, A, B, C, D, initial_state, seq_idx)
    y, last = _mamba_chunk_scan_combined(
        x.contiguous(), dt.contiguous(), A.float().contiguous(), B.contiguous(), C.contiguous(), int(chunk_size),
        D=None if D is None else D.float().contiguous(),
        dt_bias=None if dt_bias is None else dt_bias.float().contiguous(),
        initial_states=None if initial_state is None else initial_state.contiguous(),
        seq_idx=None if seq_idx is None else seq_idx.to(torch.int32).contiguous(),
        dt_softplus=bool(dt_softplus), return_final_states=True)
    return y.to(x.dtype), last.to(torch.float32)          # mamba-ssm's final state is float32 already


def rmsnorm_gated_ref(y, z, weight, eps=1e-5, group_size=None, norm_before_gate=False):
    """Mamba-2 gated RMSNorm over the last axis, in groups of ``group_size`` channels (None = whole axis).

    ``norm_before_gate=False`` (Mamba-2 default): ``RMSNorm(y * silu(z)) * weight``;
    ``True``: ``RMSNorm(y) * weight * silu(z)``. ``z`` may be None (plain grouped RMSNorm).
    """
    dtype_in = y.dtype
    ct = _ct(y)
    y = y.to(ct)
    E = y.shape[-1]
    gs = E if group_size is None else int(group_size)
    if E % gs != 0:
        raise ValueError(f"rmsnorm_gated: last dim {E} is not a multiple of group_size {gs}")
    if z is not None and not norm_before_gate:
        y = y * F.silu(z.to(ct))
    yg = y.reshape(*y.shape[:-1], E // gs, gs)
    yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + eps)
    out = yg.reshape(y.shape) * weight.to(ct)
    if z is not None and norm_before_gate:
        out = out * F.silu(z.to(ct))
    return out.to(dtype_in)


def causal_conv1d_act(x, weight, bias=None, conv_state=None, activation=None):
    """Depthwise causal conv over the last axis from ``conv_state``, then ``None``/``"silu"``/``"hardswish"``.

    ``x [B, E, L]``, ``weight [E, K]``, ``bias [E]``, ``conv_state [B, E, K-1]`` (None = zeros) ->
    ``(out [B, E, L], new_conv_state [B, E, K-1])`` — the math of :func:`zoo.ops.conv.causal_conv1d_ref`, written as
    ``K`` shifted multiply-adds (much faster than ``F.conv1d``'s oneDNN path for the tiny channel counts and one-step
    calls of the SSD models).
    """
    L, k = x.shape[-1], weight.shape[-1]
    xp = with_conv_state(x, weight, conv_state)                                 # [B, E, K-1+L]
    w = weight.to(x.dtype)
    out = xp[..., 0:L] * w[:, 0, None]
    for j in range(1, k):
        out = out + xp[..., j:j + L] * w[:, j, None]
    if bias is not None:
        out = out + bias.to(x.dtype)[:, None]
    if activation == "silu":
        out = F.silu(out)
    elif activation == "hardswish":
        out = F.hardswish(out)
    elif activation is not None:
        raise ValueError(f"causal_conv1d_act: unsupported activation {activation!r}")
    return out, xp[:, :, xp.shape[-1] - (k - 1):]


__all__ = ["ssd_chunk_scan_ref", "ssd_scan_loop", "ssd_step_ref", "ssd_scan_fn", "rmsnorm_gated_ref",
           "causal_conv1d_act"]
