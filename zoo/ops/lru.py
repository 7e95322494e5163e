"""Diagonal complex linear recurrence of LRURec's LRU layer, in real arithmetic (real/imaginary pairs).

The recurrence, per channel ``n`` (``N`` channels, batch ``B``, length ``L``)::

    h_t = lam * h_{t-1} + u_t        lam = exp(-nu + i*theta) in C^N  (|lam| < 1)

is written with every complex tensor split into a ``*_re`` / ``*_im`` pair of real tensors, so no complex dtype appears
anywhere (the ops trace to plain ONNX: MatMul/Mul/Add/Sub/Pad/Slice/Gather/Transpose/Concat/CumSum).

Padding semantics (shared by all functions here)
------------------------------------------------
* ``mask [B, L]`` (bool, ``True`` = real item): inputs at masked positions contribute nothing (``u_t := 0`` there).
  The state keeps evolving through masked positions (``h_t = lam * h_{t-1}``), so with **left** padding every
  position before the first real item holds ``h = 0`` and nothing from the padding ever reaches a real position; the
  result at real positions equals the official LRURec "recursive" scan (which left-pads to a power of two and masks
  the carry out of padding) exactly, whatever the amount of padding.
* ``h0 [B, N]`` (optional initial state): it enters at the row's **first real position** ``f``:
  ``h_f = lam * h0 + u_f`` (``f = 0`` without a mask). Rows with no real position never see ``h0``.

Functions
---------
* :func:`lru_scan_ref` — parallel form: chunks of ~20 positions, the in-chunk recurrence as a causal Toeplitz matrix
  of powers of ``lam`` (batched matmul over channels), chunk-end states scanned across chunks by Hillis-Steele
  doubling with ``lam^C``, carries added in the same matmul. No Python loop over ``L``; depth ``O(log L)``, work
  ``O(L C N)``; any ``L``. Chunk size and the number of doubling rounds are Python-level functions of ``L``, so an
  ONNX trace is specialised to its length: export at the longest length and left-pad shorter inputs (exact).
  B=128, L=200, N=128 forward + backward: ~0.25 s CPU on one thread.
* :func:`lru_scan_doubling` — plain Hillis-Steele over the whole sequence (elementwise only; ``O(L log L N)`` work).
* :func:`lru_step_ref` — one recurrent step.
* :func:`lru_scan_loop` — naive Python loop over ``L`` (test oracle, same semantics as :func:`lru_scan_ref`).
* :func:`lru_lambda` — ``(lam_re, lam_im)`` from LRURec's ``(nu_log, theta_log)`` parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


#: parameter dtypes :func:`lru_lambda` computes from in float32
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def lru_lambda(nu_log: Tensor, theta_log: Tensor) -> tuple[Tensor, Tensor]:
    """``lam = exp(-exp(nu_log) + i exp(theta_log))`` as ``(lam_re, lam_im)``, each ``[N]``.

    16-bit parameters are cast up and ``lam`` is computed and returned in float32 (the recurrence's dtype for a
    16-bit model): ``exp``, ``cos`` and ``sin`` in float16 put ~4e-3 of error into ``|lam| ~ 0.99``, compounded over
    every step of a long history (LRURec's fp16 logits were 0.28 off fp32 where other models' were ~0.01).
    float32 / float64 parameters are computed in their own dtype, as ever."""
    nu_log, theta_log = (t.float() if t.dtype in _LOW_PRECISION else t for t in (nu_log, theta_log))
    mod = torch.exp(-torch.exp(nu_log))
    theta = torch.exp(theta_log)
    return mod * torch.cos(theta), mod * torch.sin(theta)


def _inject_h0(u_re: Tensor, u_im: Tensor, lam_re: Tensor, lam_im: Tensor, mask: Tensor | None,
               h0_re: Tensor | None, h0_im: Tensor | None) -> tuple[Tensor, Tensor]:
    """Add ``lam * h0`` to the input at each row's first real position (``u`` already masked)."""
    if h0_re is None and h0_im is None:
        return u_re, u_im
    if h0_re is None:
        h0_re = torch.zeros_like(h0_im)
    if h0_im is None:
        h0_im = torch.zeros_like(h0_re)
    c_re = lam_re * h0_re - lam_im * h0_im                                  # [B, N]
    c_im = lam_re * h0_im + lam_im * h0_re
    if mask is None:
        first = torch.zeros(u_re.shape[:2], dtype=u_re.dtype, device=u_re.device)
        first[:, 0] = 1.0
    else:
        mk = mask.to(torch.int32)
        first = (mask & (torch.cumsum(mk, dim=1) == 1)).to(u_re.dtype)      # [B, L], one-hot (or all 0)
    f = first.unsqueeze(-1)                                                  # [B, L, 1]
    return u_re + f * c_re.unsqueeze(1), u_im + f * c_im.unsqueeze(1)


def _powers(lam_re: Tensor, lam_im: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``lam^k`` for ``k = 0 .. n - 1`` as ``([n, N], [n, N])``, by log-depth doubling (no loop over ``n``)."""
    p_re, p_im = torch.ones_like(lam_re).unsqueeze(0), torch.zeros_like(lam_im).unsqueeze(0)
    a_re, a_im = lam_re, lam_im                                              # lam^(len(p))
    while p_re.shape[0] < n:
        q_re = p_re * a_re - p_im * a_im
        q_im = p_re * a_im + p_im * a_re
        p_re, p_im = torch.cat([p_re, q_re], 0), torch.cat([p_im, q_im], 0)
        a_re, a_im = a_re * a_re - a_im * a_im, 2.0 * a_re * a_im
    return p_re[:n], p_im[:n]


def _chunk_len(L: int, target: int) -> int:
    """Chunk length near ``target`` wasting the fewest padded positions (a divisor of ``L`` when there is one)."""
    target = max(1, target)
    if L <= target:
        return L
    best = None
    for c in range(max(1, target // 2), 2 * target + 1):
        key = (-(-L // c) * c - L, abs(c - target))
        if best is None or key < best[0]:
            best = (key, c)
    return best[1]


def lru_scan_ref(u_re: Tensor, u_im: Tensor, lam_re: Tensor, lam_im: Tensor, mask: Tensor | None = None,
                 h0_re: Tensor | None = None, h0_im: Tensor | None = None,
                 chunk_size: int = 20) -> tuple[Tensor, Tensor]:
    """Parallel diagonal complex linear scan ``h_t = lam * h_{t-1} + u_t`` (chunked, matmul-based).

    The sequence is cut into chunks of ``C`` positions (``C`` near ``chunk_size``, a divisor of ``L`` when there is one;
    otherwise zero inputs are prepended, which is exact, see the module docstring). Per channel ``n`` the in-chunk
    recurrence is the causal Toeplitz matrix ``T[t, j] = lam^(t - j)``, applied to all chunks at once by batched
    matmuls over the channels; the chunk-end states are scanned across chunks with ``lam^C`` (Hillis-Steele,
    ``ceil(log2(L / C))`` rounds) and every chunk receives its carry ``lam^(t + 1) H_prev`` in the same matmul.
    Depth ``O(log L)``, work ``O(L C N)``; no Python loop over ``L``.

    Layout: the computation runs channel-first (``[N, B, L]``). Inputs whose memory already is channel-first (e.g.
    ``u = (W @ x^T).view(N, B, L).permute(1, 2, 0)``) are used without a copy, and the outputs are ``[B, L, N]`` views of
    channel-first memory (``F.linear`` consumes them without a copy). Any layout is accepted.

    Args:
        u_re, u_im: ``[B, L, N]`` real / imaginary parts of the inputs ``u_t``.
        lam_re, lam_im: ``[N]`` real / imaginary parts of the diagonal transition ``lam`` (``|lam| < 1`` expected).
        mask: ``[B, L]`` bool, ``True`` at real positions, or ``None`` (all real). Masked inputs contribute nothing.
        h0_re, h0_im: ``[B, N]`` initial state entering at each row's first real position, or ``None`` (zero).
        chunk_size: target in-chunk length (performance knob only; results agree to float rounding for any value).
    Returns:
        ``(h_re, h_im)``, each ``[B, L, N]``: the state after every position.
    """
    if u_re.shape != u_im.shape or u_re.dim() != 3:
        raise ValueError(f"u_re/u_im must both be [B, L, N], got {list(u_re.shape)} and {list(u_im.shape)}")
    B, L, N = u_re.shape
    if lam_re.shape != (N,) or lam_im.shape != (N,):
        raise ValueError(f"lam_re/lam_im must be [N] = [{N}], got {list(lam_re.shape)} and {list(lam_im.shape)}")
    if mask is not None:
        if mask.shape != (B, L):
            raise ValueError(f"mask must be [B, L] = {[B, L]}, got {list(mask.shape)}")
        mask = mask.bool()
    has_h0 = h0_re is not None or h0_im is not None
    C = _chunk_len(L, int(chunk_size))
    nC = -(-L // C)
    Lp = nC * C
    pad = Lp - L
    x_re, x_im = u_re.permute(2, 0, 1), u_im.permute(2, 0, 1)                # [N, B, L] (views)
    if pad:
        # prepend zero inputs (left padding, masked): exact, see the module docstring
        x_re, x_im = F.pad(x_re, (pad, 0)), F.pad(x_im, (pad, 0))
        if mask is None and has_h0:
            mask = torch.ones(B, L, dtype=torch.bool, device=u_re.device)
        if mask is not None:
            mask = F.pad(mask, (pad, 0), value=False)
    if mask is not None:
        m = mask.to(x_re.dtype)
        x_re, x_im = x_re * m, x_im * m
    if has_h0:
        h0_re = torch.zeros_like(h0_im) if h0_re is None else h0_re
        h0_im = torch.zeros_like(h0_re) if h0_im is None else h0_im
        c_re = (lam_re * h0_re - lam_im * h0_im).t().unsqueeze(-1)           # [N, B, 1]: lam * h0
        c_im = (lam_re * h0_im + lam_im * h0_re).t().unsqueeze(-1)
        if mask is None:
            x_re = torch.cat([x_re[:, :, :1] + c_re, x_re[:, :, 1:]], 2)
            x_im = torch.cat([x_im[:, :, :1] + c_im, x_im[:, :, 1:]], 2)
        else:
            first = (mask & (torch.cumsum(mask.to(torch.int32), 1) == 1)).to(x_re.dtype)   # [B, Lp] one-hot
            x_re, x_im = x_re + first * c_re, x_im + first * c_im
    M = B * nC
    x_re, x_im = x_re.reshape(N, M, C), x_im.reshape(N, M, C)

    p_re, p_im = _powers(lam_re, lam_im, C + 1)                              # [C + 1, N]: lam^0 .. lam^C
    t = torch.arange(C, device=u_re.device)
    d = t.view(1, C) - t.view(C, 1)                                          # d[j, t] = t - j
    causal = (d >= 0).to(x_re.dtype).unsqueeze(-1)                           # [C, C, 1]
    d = d.clamp(min=0)
    T_re = (p_re[d] * causal).permute(2, 0, 1)                               # [N, C_in, C_out]
    T_im = (p_im[d] * causal).permute(2, 0, 1)
    # out_re = x_re T_re - x_im T_im (+ carry), out_im = x_re T_im + x_im T_re (+ carry)
    W_re, W_im = torch.cat([T_re, -T_im], 1), torch.cat([T_im, T_re], 1)    # [N, 2C, C]
    parts = [x_re, x_im]
    if nC > 1:
        # in-chunk end states (own small matmul), scanned across chunks with lam^C (Hillis-Steele)
        E = torch.stack([W_re[:, :, C - 1], W_im[:, :, C - 1]], 2)           # [N, 2C, 2]
        S = torch.bmm(x_re, E[:, :C]) + torch.bmm(x_im, E[:, C:])            # [N, M, 2]
        S_re, S_im = S.view(N, B, nC, 2).unbind(3)
        a_re, a_im = p_re[C].view(N, 1, 1), p_im[C].view(N, 1, 1)
        s = 1
        while s < nC:
            y_re, y_im = S_re[:, :, : nC - s], S_im[:, :, : nC - s]
            S_re = S_re + F.pad(a_re * y_re - a_im * y_im, (s, 0))
            S_im = S_im + F.pad(a_re * y_im + a_im * y_re, (s, 0))
            a_re, a_im = a_re * a_re - a_im * a_im, 2.0 * a_re * a_im
            s *= 2
        # carry into chunk c = full state at the end of chunk c - 1; enters as lam^(t+1) * carry
        H = torch.stack([F.pad(S_re[:, :, :-1], (1, 0)), F.pad(S_im[:, :, :-1], (1, 0))], 3).view(N, M, 2)
        parts.append(H)
        q_re, q_im = p_re[1:].t().unsqueeze(1), p_im[1:].t().unsqueeze(1)  # [N, 1, C]
        W_re = torch.cat([W_re, q_re, -q_im], 1)                             # [N, 2C + 2, C]
        W_im = torch.cat([W_im, q_im, q_re], 1)
    X = torch.cat(parts, 2)                                                  # [N, M, 2C (+ 2)]
    h_re = torch.bmm(X, W_re).view(N, B, Lp)
    h_im = torch.bmm(X, W_im).view(N, B, Lp)
    if pad:
        h_re, h_im = h_re[:, :, pad:], h_im[:, :, pad:]
    return h_re.permute(1, 2, 0), h_im.permute(1, 2, 0)


def lru_scan_doubling(u_re: Tensor, u_im: Tensor, lam_re: Tensor, lam_im: Tensor, mask: Tensor | None = None,
                      h0_re: Tensor | None = None, h0_im: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Same as :func:`lru_scan_ref` by plain Hillis-Steele doubling over the whole sequence (``ceil(log2 L)`` rounds of
    ``h_t += lam^(2^k) h_{t - 2^k}``): elementwise only, simpler, but ``O(L log L N)`` work (slower on CPU)."""
    if u_re.shape != u_im.shape or u_re.dim() != 3:
        raise ValueError(f"u_re/u_im must both be [B, L, N], got {list(u_re.shape)} and {list(u_im.shape)}")
    if mask is not None:
        mask = mask.bool()
        m = mask.to(u_re.dtype).unsqueeze(-1)
        u_re, u_im = u_re * m, u_im * m
    h_re, h_im = _inject_h0(u_re, u_im, lam_re, lam_im, mask, h0_re, h0_im)
    L = h_re.shape[1]
    a_re, a_im = lam_re, lam_im                                              # lam^(2^k)
    s = 1
    while s < L:
        # after this round h_t = sum_{j = t - 2s + 1}^{t} lam^(t-j) u_j
        x_re, x_im = h_re[:, : L - s], h_im[:, : L - s]
        h_re = h_re + F.pad(a_re * x_re - a_im * x_im, (0, 0, s, 0))
        h_im = h_im + F.pad(a_re * x_im + a_im * x_re, (0, 0, s, 0))
        a_re, a_im = a_re * a_re - a_im * a_im, 2.0 * a_re * a_im
        s *= 2
    return h_re, h_im


def lru_step_ref(u_re: Tensor, u_im: Tensor, lam_re: Tensor, lam_im: Tensor, h_re: Tensor,
                 h_im: Tensor) -> tuple[Tensor, Tensor]:
    """One step ``h' = lam * h + u``.

    Args:
        u_re, u_im: ``[B, N]`` input.
        lam_re, lam_im: ``[N]`` transition.
        h_re, h_im: ``[B, N]`` previous state (not modified).
    Returns:
        ``(h_re', h_im')``, each ``[B, N]``.
    """
    return lam_re * h_re - lam_im * h_im + u_re, lam_re * h_im + lam_im * h_re + u_im


def lru_scan_loop(u_re: Tensor, u_im: Tensor, lam_re: Tensor, lam_im: Tensor, mask: Tensor | None = None,
                  h0_re: Tensor | None = None, h0_im: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Naive sequential version of :func:`lru_scan_ref` (same arguments, same semantics); the test oracle."""
    B, L, N = u_re.shape
    if mask is None:
        mask = torch.ones(B, L, dtype=torch.bool, device=u_re.device)
    mask = mask.bool()
    z = torch.zeros(B, N, dtype=u_re.dtype, device=u_re.device)
    h0_re = z if h0_re is None else h0_re
    h0_im = z if h0_im is None else h0_im
    h_re, h_im = z, z
    seen = torch.zeros(B, dtype=torch.bool, device=u_re.device)
    out_re, out_im = [], []
    for t in range(L):
        m = mask[:, t]
        first = (m & ~seen).unsqueeze(-1)
        c_re = torch.where(first, h0_re, h_re)
        c_im = torch.where(first, h0_im, h_im)
        mf = m.to(u_re.dtype).unsqueeze(-1)
        h_re, h_im = lru_step_ref(u_re[:, t] * mf, u_im[:, t] * mf, lam_re, lam_im, c_re, c_im)
        seen = seen | m
        out_re.append(h_re)
        out_im.append(h_im)
    return torch.stack(out_re, 1), torch.stack(out_im, 1)


__all__ = ["lru_lambda", "lru_scan_ref", "lru_scan_doubling", "lru_step_ref", "lru_scan_loop"]
