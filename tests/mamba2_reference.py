"""Independent float64 references of the SSD (Mamba-2) models, for tests/test_ssd4rec.py and tests/test_tim4rec.py.

Written from the published architecture (``shared/reference/models.md`` §2.2 Mamba2/SSD, §4 TiM4Rec, §5 SSD4Rec: the
official code's conventions), with explicit loops over time, sharing nothing with the zoo's code but the parameters,
read from the model's ``state_dict``. Each function takes ONE unpadded history and returns its next-item logits
``[n_items]`` (eval mode: every dropout is the identity)."""

import math

import torch
import torch.nn.functional as F


def _params(model):
    return {k: v.detach().double() for k, v in model.state_dict().items()}


def _lin(P, x, p):
    return x @ P[p + ".weight"].T + (P[p + ".bias"] if p + ".bias" in P else 0)


def _ln(P, x, p, eps):
    return F.layer_norm(x, (x.shape[-1],), P[p + ".weight"], P[p + ".bias"], eps)


def _silu(x):
    return x * torch.sigmoid(x)


def _hardswish(x):
    return x * (x + 3).clamp(0, 6) / 6


def _gelu(x):                                                             # exact (erf) GELU, as RecBole / nn.GELU
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _causal_depthwise_conv(x, w, b):
    """``nn.Conv1d(C, C, K, groups=C, padding=K-1)(x)[..., :L]`` written out: ``x [L, C]``, ``w [C, K]``, ``b [C]``
    -> ``[L, C]``, out[t] = b + sum_k w[:, k] x[t - (K-1) + k] (zeros before the start)."""
    K = w.shape[1]
    xp = torch.cat([torch.zeros(K - 1, x.shape[1], dtype=x.dtype), x])
    return torch.stack([(xp[t:t + K] * w.T).sum(0) for t in range(x.shape[0])]) + b


def official_mamba2(P, m, u, n_heads, d_state, act, eps, dt_scale=None):
    """``mamba_ssm.modules.mamba2.Mamba2`` (ngroups 1, rmsnorm, norm_before_gate False, D per head, dt_limit (0, inf))
    on ``u [L, D]`` -> ``[L, D]``; parameters under prefix ``m``. ``act`` is the conv activation; ``dt_scale [L, H]``
    multiplies the raw dt before ``softplus(dt + dt_bias)`` (TiM4Rec's δ ⊙ τ̃)."""
    L, H, N = u.shape[0], n_heads, d_state
    E = P[m + ".out_proj.weight"].shape[1]
    Pd = E // H
    zxbcdt = _lin(P, u, m + ".in_proj")                                   # [L, 2E + 2N + H]
    z, xBC, dt = zxbcdt[:, :E], zxbcdt[:, E:2 * E + 2 * N], zxbcdt[:, 2 * E + 2 * N:]   # mamba_ssm: [z | xBC | dt]
    xBC = act(_causal_depthwise_conv(xBC, P[m + ".conv1d.weight"][:, 0], P[m + ".conv1d.bias"]))
    x, B, C = xBC[:, :E].reshape(L, H, Pd), xBC[:, E:E + N], xBC[:, E + N:]  # [x | B | C]
    if dt_scale is not None:
        dt = dt * dt_scale
    delta = F.softplus(dt + P[m + ".dt_bias"])                            # [L, H]
    A = -torch.exp(P[m + ".A_log"])                                       # [H]: one scalar per head
    S, ys = torch.zeros(H, Pd, N, dtype=u.dtype), []
    for t in range(L):
        S = torch.exp(delta[t] * A)[:, None, None] * S + delta[t][:, None, None] * x[t][:, :, None] * B[t]
        ys.append(S @ C[t] + P[m + ".D"][:, None] * x[t])                 # [H, P]
    y = torch.stack(ys).reshape(L, E) * _silu(z)                          # gate first (norm_before_gate=False) ...
    y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + eps) * P[m + ".norm_weight"]   # ... then RMSNorm * w
    return _lin(P, y, m + ".out_proj")


def official_ssd4rec_logits(model, ids):
    """Official SSD4Rec (``ssd4rec.py``, models.md §5.2): ``x = LN(Dropout(E[s]))`` (when norm_embedding); per layer
    one Mamba2 over the sequence and over its reversal (same weights, the backward output NOT flipped back),
    ``h = Dropout(LN(f + β b + x))``, ``x = Dropout(LN(W2 Dropout(GELU(W1 h)) + h))``; tied logits at the last item."""
    P, c = _params(model), model.config
    x = P["item_embedding.weight"][ids]                                   # [L, D]
    if c.norm_embedding:
        x = _ln(P, x, "layer_norm", c.layer_norm_eps)
    for i in range(c.num_layers):
        lay = f"layers.{i}"
        f, b = (official_mamba2(P, lay + ".mamba", u, c.n_heads, c.d_state, _silu, c.rmsnorm_eps)
                for u in (x, x.flip(0)))                                   # the same Mamba2 both ways; b not re-flipped
        h = _ln(P, f + c.beta * b + x, lay + ".layer_norm", c.layer_norm_eps)
        ff = _lin(P, _gelu(_lin(P, h, lay + ".ffn.w_1")), lay + ".ffn.w_2")
        x = _ln(P, ff + h, lay + ".ffn.layer_norm", c.layer_norm_eps)
    return x[-1] @ P["item_embedding.weight"].T


def official_tim4rec_logits(model, ids, ts):
    """Official TiM4Rec (``tim4rec.py`` / ``ssd.py``, models.md §4.1-4.2) on ``ids [L]``, ``ts [L]`` (seconds), computed
    as the official model sees it: right-padded to ``M = max_seq_length`` slots (ids 0, timestamps 0).

    ``x = LN(Dropout(E[s]))``; ``d = [0, τ1 - τ0, ...]`` over the M slots; ``T = LN_M(Dropout(d))`` repeated over H
    heads; per TiSSD layer: ``τ̃ = T ⊙ MLP(T)`` (Linear(M, M), SiLU, Linear(M, M) over positions), two causal
    depthwise convs over the H channels each followed by act, ``δ' = δ ⊙ τ̃ᵀ`` into Mamba2 (projection biases, act =
    Hardswish when H % 8 != 0 else SiLU, RMSNormGated eps norm_eps), ``g = σ(Linear(M -> 1 or M)(T))``,
    ``T ← LN_M(g T + (1 - g) τ̃)``; ``h = LN(out + x)`` (``LN(out)`` with one layer); FFN ``LN(W2 Hardswish(W1 h) + h)``
    (eps 1e-12); tied logits at the last real item. Hidden slots after it are computed too (the official model does)."""
    P, c = _params(model), model.config
    M, H, L, eps = c.max_seq_length, c.n_heads, len(ids), c.norm_eps
    act = _hardswish if H % 8 != 0 else _silu
    ids_w = torch.cat([ids, torch.zeros(M - L, dtype=ids.dtype)])
    ts_w = torch.cat([ts.double(), torch.zeros(M - L, dtype=torch.float64)])
    x = _ln(P, P["item_embedding.weight"][ids_w], "layer_norm", eps)      # [M, D]
    T = None
    if c.is_time:
        d = torch.cat([torch.zeros(1, dtype=torch.float64), ts_w[1:] - ts_w[:-1]])     # first pad slot: -τ_last
        T = _ln(P, d, "time_norm", eps).expand(H, M)                      # LN over the window axis -> [H, M]
    for i in range(c.num_layers):
        lay, m = f"layers.{i}", f"layers.{i}.mixer"
        tau_t = None
        if c.is_time:
            tau = T * _lin(P, _silu(_lin(P, T, m + ".time_mlp.1")), m + ".time_mlp.3")   # MLP over positions
            for cv in ("time_conv1", "time_conv2"):                       # causal over positions, per head
                tau = act(_causal_depthwise_conv(tau.T, P[f"{m}.{cv}.weight"][:, 0], P[f"{m}.{cv}.bias"]).T)
            tau_t = tau.T                                                 # [M, H]
            g = torch.sigmoid(_lin(P, T, m + ".time_gate"))               # [H, 1] (or [H, M])
            T_next = _ln(P, g * T + (1 - g) * tau, m + ".time_norm", eps)
        out = official_mamba2(P, m, x, H, c.d_state, act, eps, dt_scale=tau_t)
        h = _ln(P, out + x if c.num_layers > 1 else out, lay + ".layer_norm", eps)
        if c.is_ffn:
            ff = _lin(P, _hardswish(_lin(P, h, lay + ".ffn.w_1")), lay + ".ffn.w_2")
            h = _ln(P, ff + h, lay + ".ffn.layer_norm", 1e-12)                # FFN LN eps fixed at 1e-12
        x = h
        if c.is_time:
            T = T_next
    return x[L - 1] @ P["item_embedding.weight"].T


def randomise(model, seed, big=()):
    """Every parameter random (norm weights/biases, D, dt_bias, A_log, conv biases included), so that no term hides at
    its init value: N(0, 0.3²), or N(0, 1) for names containing one of ``big`` (TiM4Rec's time path: at 0.3 its τ̃ is
    nearly constant and the gaps move the logits by ~1e-4); A = -exp(A_log) in (-1, -0.14): slow and fast decays,
    state reaching across several chunks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(-2 * torch.rand(p.shape, generator=g, dtype=torch.float64))
            else:
                std = 1.0 if any(k in name for k in big) else 0.3
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * std)
    return model.eval()
