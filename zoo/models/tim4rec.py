"""TiM4Rec (Fan et al., arXiv 2409.16182, Neurocomputing 2025): time-aware SSD (Mamba-2) recommender, HF-native.

Faithful to the official code (AlwaysFHao/TiM4Rec @ 8d4a6ce, ``tim4rec.py`` / ``ssd.py``; RecBole v1.2.0,
mamba-ssm 2.2.2) as described, verified from that code, in ``shared/reference/models.md`` §4 and §14.2::

    x  = LN(Dropout(E_item[s]))                                   # no position embedding, eps = norm_eps
    d  = [0, τ_1 - τ_0, ..., τ_{L-1} - τ_{L-2}]                    # raw-second diffs over the right-padded window
    T  = LN_L(Dropout(d))  repeated over H heads -> [B, H, L]      # LayerNorm over the *window axis* (γ, β ∈ R^L)
    per layer (TiSSD):
        z, xBC, δ = in_proj(x)  (with bias)                        # [B, L, E], [B, L, E+2N], [B, L, H]
        x, B, C   = act(causal depthwise conv_K(xBC))              # act = Hardswish when H % 8 != 0 (ML-1M: H = 4)
        τ̃ = T ⊙ MLP_L(T)     (Dropout_t -> Linear(L, L) -> SiLU -> Linear(L, L) over positions)
        τ̃ = act(conv_t2(act(conv_t1(τ̃))))                          # two causal depthwise convs over the H channels
        y  = SSD(x, Δ = softplus(δ ⊙ τ̃ᵀ + dt_bias), A = -exp(A_log), B, C, D)   # chunked, chunk_size Q
        out = out_proj(RMSNormGated(y, z))   (with bias, eps = norm_eps, norm before gate False)
        g  = σ(Linear(L -> 1)(Dropout_t(T)))   [B, H, 1]   (Linear(L -> L) when p2p_residual)
        T  = LN_L(g ⊙ T + (1 - g) ⊙ τ̃)                             # time carry for the next layer
        h  = LN(Dropout(out) + x)  (no residual when num_layers == 1);  x = LN(Dropout(W2 Dropout(Hardswish(W1 h))) + h)
    logits = x[len - 1] @ E_itemᵀ  (tied), cross-entropy

**The window is part of the model.** LayerNorm over the window axis, the ``Linear(L, L)`` MLPs and the ``L -> 1`` gate
mix every slot of the ``L = max_seq_length`` window, *including the right padding* (pad timestamps are 0, so the first
pad slot carries the diff ``-τ_last``). :meth:`encode` therefore computes the time features over the timestamps
right-padded to exactly ``max_seq_length`` slots, whatever the batch's padded width, and returns the same first ``L_in``
positions a fully padded input would give (the hidden path is causal, so the pad slots after them are not computed);
inputs wider than ``max_seq_length`` are rejected (use :meth:`pad_batch`, which keeps the most recent
``max_seq_length`` items as RecBole does). Because of the non-causal time features, the hidden state at position
``t < len - 1`` is *not* what a forward on the prefix ``[0..t]`` would give; only the readout at ``len - 1`` is a
prediction.

Stepwise inference (``has_exact_step = False``): an exact O(1) recurrent update does not exist for this model. The state
is the window of the last ``max_seq_length`` item ids and timestamps (``window_ids``, ``window_ts``, ``window_len``);
each new item gets its own window (history up to and including it, truncated to the last ``max_seq_length``) and the
whole model is re-run on it. The logits after each new item equal :meth:`forward` on that same window up to float error
(O(L) per layer per new item; batched).

Training: ``labels [B]`` trains the readout at ``len - 1`` (RecBole). All-position ``labels [B, L]`` (what
``zoo.train`` feeds) would leak the targets' timestamps through the window-level time features, so they switch to the
**prefix objective** of :class:`WindowRecomputeMixin`: every labelled position becomes its own right-padded prefix
sample (RecBole's data augmentation; one forward per labelled position, each as wide as the batch's longest prefix).

Deviations (documented): timestamps are differenced in float64 (RecBole loads them as float32, i.e. 64-second
resolution for Unix times around 1e9; ``float32_timestamps=True`` reproduces that), the diffs are then normalised
(``LN_L``) in float32 (float64 for a float64 model) and cast to the model's dtype; the depthwise convs are ``K`` shifted
multiply-adds over an explicitly zero-padded input (same math as ``nn.Conv1d(padding=K-1)[..., :L]``); the conv
activation is fixed by ``conv_activation`` ("auto" = Hardswish when ``H % 8 != 0`` else SiLU), whereas the official
code also falls back to Hardswish when the ``causal_conv1d`` package is missing. Not pinned down by the reference
notes and checked against the official code since (AlwaysFHao/TiM4Rec ``tim4rec.py`` and ``ssd.py``, read line by
line in a review; the same as here): the time gate's input dropout uses ``time_dropout_prob``; the per-layer ``LN_L``,
the layer LN and the input LN use ``norm_eps`` (the FFN's LayerNorm keeps 1e-12). There is no converter of official
checkpoints yet (none was at hand to test one on).

Parameter count, official ML-1M 64d config (``n_items = 3417``): 508,818 with ``is_time`` (346,336 without):
embedding 218,688 + input LN 128 + time LN_L 400 + 2 × 144,801 per layer (in_proj 21,060; conv 960; A_log/dt_bias/D 12;
time MLP 2 × 40,200; time convs 40; RMSNorm 128; out_proj 8,256; gate 201; LN_L 400; layer LN 128; FFN 33,216).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import initialization as init

from ..modeling_utils import (SeqRecConfig, SeqRecPreTrainedModel, State, StateTensorSpec, check_window_ids,
                              config_bool, config_dt_init, config_float, config_int, config_range, config_rate,
                              derived_field)
from ..ops.ssd import causal_conv1d_act, rmsnorm_gated_ref, ssd_scan_fn, ssd_step_ref


def ssd_head_count(expand: int, hidden_size: int, head_dim: int) -> int:
    """``H = expand * hidden_size / head_dim``; ``ValueError`` when ``head_dim`` does not divide ``expand *
    hidden_size``."""
    d_inner = expand * hidden_size
    if d_inner % head_dim != 0:
        raise ValueError(f"expand * hidden_size ({d_inner}) must be a multiple of head_dim ({head_dim})")
    return d_inner // head_dim


def ssd_heads(config) -> int:
    """:func:`ssd_head_count` of an SSD config (its sources may change after construction, e.g.
    ``AutoConfig.from_pretrained(path, expand=3)``)."""
    return ssd_head_count(config.expand, config.hidden_size, config.head_dim)


class TiM4RecConfig(SeqRecConfig):
    r"""Configuration of :class:`TiM4RecModel` (defaults = the official ML-1M 64d config ``config4movie_64d.yaml``).

    Args:
        n_items (`int`, 3417): item table rows incl. padding 0.
        max_seq_length (`int`, 200): the window ``L``; the time branch has ``L``-sized weights (LN_L, Linear(L, L)).
        hidden_size (`int`, 64): model width ``D``.
        num_layers (`int`, 2): TiSSD layers; with 1 layer there is no residual around the mixer.
        d_state (`int`, 32): SSD state size ``N``.
        d_conv (`int`, 4): causal conv kernel ``K`` (xBC conv and both time convs).
        expand (`int`, 2): inner width ``E = expand * D``.
        head_dim (`int`, 32): SSD head dim ``P``; heads ``H = E / P`` (ML-1M: 4).
        chunk_size (`int`, 32): SSD chunk length ``Q`` (only affects speed/rounding, not the math).
        dropout_prob (`float`, 0.2): dropout on embeddings, diffs before LN_L, mixer output and FFN.
        time_dropout_prob (`float`, 0.2): dropout in the time MLP and time gate inputs (``time_drop_out``).
        norm_eps (`float`, 1e-12): eps of the input LN, layer LN, time LNs and RMSNormGated.
        is_time (`bool`, True): use the time branch (False = TiM4Rec's "SSD4Rec*" baseline).
        is_ffn (`bool`, True): post-LN Hardswish feed-forward after each mixer.
        p2p_residual (`bool`, False): time gate ``Linear(L, L)`` instead of ``Linear(L, 1)``.
        kaiming_init (`bool`, True): Kaiming-normal (fan_out, relu) init of every conv weight, zero conv bias
            (official ``is_kai_ming_init``); False keeps PyTorch's default conv init.
        inner_size (`int` or None): FFN width; None = 4 * D, resolved to that int when the config is built and saved
            so: a later ``hidden_size`` override (``from_pretrained(path, hidden_size=32)``) does not re-derive it
            (give ``inner_size`` with it).
        conv_activation (`str`, "auto"): "auto" (Hardswish if H % 8 != 0 else SiLU), "hardswish" or "silu".
        A_init_range (`tuple`, (1, 16)), dt_min (1e-3), dt_max (0.1), dt_init_floor (1e-4): Mamba-2 init of
            ``A_log = log U[A_init_range]`` and ``dt_bias = softplus^{-1}(logU[dt_min, dt_max])``; ``0 < lo <= hi``,
            ``0 < dt_min <= dt_max``, ``dt_init_floor >= 0``.
        float32_timestamps (`bool`, False): round timestamps to float32 before differencing, as RecBole's float
            timestamp field does (64-second resolution around 1e9 s); False differences exact float64 seconds.
        initializer_range (`float`, 0.02): std of linear/embedding init.
    Derived (recomputed whenever read; ``config.json`` holds them for its readers, and a value given for one must
    agree):
        d_inner = expand * hidden_size; n_heads = d_inner / head_dim.
    """

    model_type = "tim4rec"
    derived_fields = ("d_inner", "n_heads")

    def __init__(self, n_items=3417, max_seq_length=200, hidden_size=64, num_layers=2, d_state=32, d_conv=4,
                 expand=2, head_dim=32, chunk_size=32, dropout_prob=0.2, time_dropout_prob=0.2, norm_eps=1e-12,
                 is_time=True, is_ffn=True, p2p_residual=False, kaiming_init=True, inner_size=None,
                 conv_activation="auto", A_init_range=(1.0, 16.0), dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4,
                 float32_timestamps=False, initializer_range=0.02, **kwargs):
        hidden = config_int(hidden_size, "hidden_size")
        self.expand = config_int(expand, "expand")
        self.head_dim = config_int(head_dim, "head_dim")
        ssd_head_count(self.expand, hidden, self.head_dim)
        if conv_activation not in ("auto", "hardswish", "silu"):
            raise ValueError(f"conv_activation must be 'auto', 'hardswish' or 'silu', got {conv_activation!r}")
        self.num_layers = config_int(num_layers, "num_layers")
        self.d_state = config_int(d_state, "d_state")
        self.d_conv = config_int(d_conv, "d_conv")
        self.chunk_size = config_int(chunk_size, "chunk_size")
        self.dropout_prob = config_rate(dropout_prob, "dropout_prob")
        self.time_dropout_prob = config_rate(time_dropout_prob, "time_dropout_prob")
        self.norm_eps = config_float(norm_eps, "norm_eps", gt=0)
        self.is_time = config_bool(is_time, "is_time")
        self.is_ffn = config_bool(is_ffn, "is_ffn")
        self.p2p_residual = config_bool(p2p_residual, "p2p_residual")
        self.kaiming_init = config_bool(kaiming_init, "kaiming_init")
        self.inner_size = config_int(inner_size, "inner_size") if inner_size is not None else 4 * hidden
        self.conv_activation = conv_activation
        self.float32_timestamps = config_bool(float32_timestamps, "float32_timestamps")
        self.A_init_range = config_range(A_init_range, "A_init_range")
        self.dt_min, self.dt_max, self.dt_init_floor = config_dt_init(dt_min, dt_max, dt_init_floor)
        super().__init__(n_items=n_items, max_seq_length=max_seq_length, hidden_size=hidden_size,
                         initializer_range=initializer_range, **kwargs)

    d_inner = derived_field("d_inner", "expand * hidden_size", lambda c: c.expand * c.hidden_size,
                            "Inner width ``E = expand * hidden_size`` (derived: recomputed, never read back).")
    n_heads = derived_field("n_heads", "expand * hidden_size // head_dim", lambda c: ssd_heads(c),
                            "SSD heads ``H = E / head_dim`` (derived: recomputed, never read back).")

    @property
    def activation(self) -> str:
        """Resolved conv activation: Hardswish when ``H % 8 != 0`` (the official ``nn.Conv1d`` fallback), else SiLU."""
        if self.conv_activation != "auto":
            return self.conv_activation
        return "hardswish" if self.n_heads % 8 != 0 else "silu"


# ---------------------------------------------------------------------------------------------- blocks
class SSDCore(nn.Module):
    """The Mamba-2 part shared by TiM4Rec, TiM4Rec-causal and SSD4Rec: in_proj -> conv(xBC) + act -> SSD -> gated
    RMSNorm -> out_proj (projection biases: TiM4Rec yes, plain Mamba-2 no). TiM4Rec's time path (which scales the raw
    dt ``δ``) lives in the subclasses. Reads ``hidden_size, d_inner, d_state, d_conv, n_heads, head_dim, chunk_size,
    activation, norm_eps, A_init_range, dt_min, dt_max, dt_init_floor`` from the config."""

    #: parameters AdamW leaves undecayed (``zoo.train.no_decay_parameter``), as mamba_ssm's Mamba-2 marks them
    no_weight_decay_params = ("A_log", "dt_bias", "D")

    def __init__(self, config: TiM4RecConfig, proj_bias: bool = True, norm_eps: float | None = None):
        super().__init__()
        D, E, N, K, H = config.hidden_size, config.d_inner, config.d_state, config.d_conv, config.n_heads
        self.d_inner, self.d_state, self.d_conv, self.n_heads, self.head_dim = E, N, K, H, config.head_dim
        self.chunk_size = config.chunk_size
        self.act = config.activation
        self.in_proj = nn.Linear(D, 2 * E + 2 * N + H, bias=proj_bias)
        self.conv1d = nn.Conv1d(E + 2 * N, E + 2 * N, K, groups=E + 2 * N, padding=K - 1, bias=True)
        self.A_log = nn.Parameter(torch.zeros(H))
        self.dt_bias = nn.Parameter(torch.zeros(H))
        self.D = nn.Parameter(torch.ones(H))
        self.norm_weight = nn.Parameter(torch.ones(E))
        self.norm_eps = config.norm_eps if norm_eps is None else float(norm_eps)
        self.out_proj = nn.Linear(E, D, bias=proj_bias)
        self.reset_ssm_parameters(config)

    def reset_ssm_parameters(self, config: TiM4RecConfig) -> None:
        """Mamba-2 init: A_log = log U[A_init_range], dt_bias = softplus^-1(logU[dt_min, dt_max]) (floored), D = 1,
        gated-norm weight 1. Writes through transformers' guarded ``initialization`` helpers: a parameter that
        ``from_pretrained`` loaded (``_is_hf_initialized``) keeps its loaded value."""
        H = self.n_heads
        lo, hi = config.A_init_range
        dt = torch.exp(torch.rand(H) * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min))
        dt = dt.clamp(min=config.dt_init_floor)
        init.copy_(self.A_log, torch.log(torch.empty(H).uniform_(lo, hi)))
        init.copy_(self.dt_bias, dt + torch.log(-torch.expm1(-dt)))
        init.ones_(self.D)
        init.ones_(self.norm_weight)

    def project(self, hidden, conv_state=None):
        """``hidden [B, L, D]`` -> ``z [B, L, E]``, ``x [B, L, H, P]``, ``B, C [B, L, 1, N]``, ``δ [B, L, H]``,
        ``new_conv_state [B, E+2N, K-1]``."""
        E, N, H = self.d_inner, self.d_state, self.n_heads
        zxbcdt = self.in_proj(hidden)                                          # [B, L, 2E+2N+H]
        z, xBC, dt = torch.split(zxbcdt, [E, E + 2 * N, H], dim=-1)
        xBC, new_conv = causal_conv1d_act(xBC.transpose(1, 2), self.conv1d.weight[:, 0], self.conv1d.bias,
                                          conv_state, self.act)               # [B, E+2N, L]
        x, Bm, Cm = torch.split(xBC.transpose(1, 2), [E, N, N], dim=-1)
        b, L = x.shape[:2]
        return z, x.reshape(b, L, H, self.head_dim), Bm.unsqueeze(2), Cm.unsqueeze(2), dt, new_conv

    def scan_and_out(self, z, x, Bm, Cm, dt, ssm_state=None):
        """SSD with ``Δ = softplus(dt + dt_bias)``, gated RMSNorm, out_proj -> ``(out [B, L, D], final_state)``.

        The scan computes in float32, or in float64 for float64 activations (as :func:`ssd_scan_fn` does)."""
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        A = -torch.exp(self.A_log.to(ct))                                      # [H]
        if x.shape[1] == 1 and ssm_state is not None:                          # one recurrent step (serving)
            delta = F.softplus(dt[:, 0].to(ct) + self.dt_bias.to(ct))          # [B, H]
            y, last = ssd_step_ref(ssm_state.to(ct), x[:, 0].to(ct), delta, A, Bm[:, 0].to(ct), Cm[:, 0].to(ct),
                                   self.D.to(ct))
            y = y.unsqueeze(1).to(x.dtype)                                     # [B, 1, H, P]
        else:
            y, last = ssd_scan_fn(x, dt, A, Bm, Cm, self.chunk_size, self.D.to(ct), self.dt_bias.to(ct),
                                  dt_softplus=True, initial_state=ssm_state)   # [B, L, H, P], [B, H, P, N]
        y = y.reshape(*y.shape[:2], self.d_inner)
        y = rmsnorm_gated_ref(y, z, self.norm_weight, self.norm_eps, group_size=self.d_inner, norm_before_gate=False)
        return self.out_proj(y), last


class TiSSD(SSDCore):
    """TiSSD mixer of the official ``ssd.py``: SSD whose dt is scaled by a window-level time feature ``T [B, H, L]``."""

    def __init__(self, config: TiM4RecConfig):
        super().__init__(config)
        self.is_time = config.is_time
        K, H, L = config.d_conv, config.n_heads, config.max_seq_length
        if self.is_time:
            self.time_mlp = nn.Sequential(nn.Dropout(config.time_dropout_prob), nn.Linear(L, L), nn.SiLU(),
                                          nn.Linear(L, L))
            self.time_conv1 = nn.Conv1d(H, H, K, groups=H, padding=K - 1, bias=True)
            self.time_conv2 = nn.Conv1d(H, H, K, groups=H, padding=K - 1, bias=True)
            self.gate_dropout = nn.Dropout(config.time_dropout_prob)
            self.time_gate = nn.Linear(L, L if config.p2p_residual else 1)
            self.time_norm = nn.LayerNorm(L, eps=config.norm_eps)

    def forward(self, hidden: torch.Tensor, T: torch.Tensor | None):
        """``hidden [B, L, D]`` (the first ``L <= M`` slots of the window), ``T [B, H, M]`` over the whole window
        (None without time) -> ``(out [B, L, D], T_next [B, H, M])``. The time path always spans all ``M`` slots; the
        hidden path is causal, so its first ``L`` slots do not depend on the slots after them."""
        z, x, Bm, Cm, dt, _ = self.project(hidden)
        T_next = None
        if self.is_time:
            tau = T * self.time_mlp(T)                                          # [B, H, M]
            tau, _ = causal_conv1d_act(tau, self.time_conv1.weight[:, 0], self.time_conv1.bias, None, self.act)
            tau, _ = causal_conv1d_act(tau, self.time_conv2.weight[:, 0], self.time_conv2.bias, None, self.act)
            dt = dt * tau[..., :hidden.shape[1]].transpose(1, 2)                # [B, L, H]  δ' = δ ⊙ τ̃
            g = torch.sigmoid(self.time_gate(self.gate_dropout(T)))             # [B, H, 1] (or [B, H, M])
            T_next = self.time_norm(g * T + (1 - g) * tau)                      # [B, H, M]
        out, _ = self.scan_and_out(z, x, Bm, Cm, dt)
        return out, T_next


class FeedForward(nn.Module):
    """Post-LN FFN of the official code: LN(Dropout(W2 Dropout(Hardswish(W1 h))) + h), LN eps fixed at 1e-12."""

    def __init__(self, config: TiM4RecConfig):
        super().__init__()
        self.w_1 = nn.Linear(config.hidden_size, config.inner_size)
        self.w_2 = nn.Linear(config.inner_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout_prob)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=1e-12)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.dropout(self.w_2(self.dropout(F.hardswish(self.w_1(h))))) + h)


class TiSSDLayer(nn.Module):
    """Mixer -> LN(Dropout(h) + x) (no residual with one layer) -> FFN."""

    mixer_class = TiSSD

    def __init__(self, config: TiM4RecConfig):
        super().__init__()
        self.residual = config.num_layers > 1
        self.mixer = self.mixer_class(config)
        self.dropout = nn.Dropout(config.dropout_prob)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.ffn = FeedForward(config) if config.is_ffn else None

    def post(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(h)
        h = self.layer_norm(h + x if self.residual else h)
        return self.ffn(h) if self.ffn is not None else h

    def forward(self, x, T):
        h, T = self.mixer(x, T)
        return self.post(h, x), T


class TiM4RecPreTrainedModel(SeqRecPreTrainedModel):
    config_class = TiM4RecConfig
    base_model_prefix = "tim4rec"
    padding_side = "right"
    has_exact_step = False

    @property
    def uses_timestamps(self) -> bool:
        """True unless ``is_time=False`` (the time-less "SSD4Rec*" ablation reads no timestamps)."""
        return bool(getattr(self.config, "is_time", True))

    def _init_weights(self, module: nn.Module) -> None:
        """RecBole init, Kaiming-normal convs (``kaiming_init``) and the Mamba-2 SSD init; every write goes through
        transformers' guarded helpers, so loaded parameters keep their values."""
        super()._init_weights(module)  # RecBole init: Linear/Embedding N(0, 0.02), bias 0, LN (1, 0)
        if isinstance(module, nn.Conv1d) and self.config.kaiming_init:
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        if isinstance(module, SSDCore):
            module.reset_ssm_parameters(self.config)


# ------------------------------------------------------------------------------------ non-causal helpers
class WindowRecomputeMixin:
    """Step and training objective for models whose hidden states are **not causal** (TiM4Rec's window-level time
    features, SSD4Rec's backward pass): the hidden state at position ``t < len - 1`` sees later items (or their
    timestamps), so only the readout at each row's last real position is a prediction.

    * :meth:`_step` keeps the last ``max_seq_length`` items (and timestamps when ``window_timestamps``) and re-runs the
      model on each new item's own window (history up to and including it, truncated to ``max_seq_length``).
    * :meth:`forward` with all-position labels ``[B, L]`` uses the **prefix objective** (RecBole's data augmentation):
      every labelled position ``t`` becomes its own sample ``input[:t+1] -> label[t]`` (one forward per labelled
      position), so no position is trained on a representation that has seen its own target. ``labels [B]`` (loss at the
      last position) is unchanged.
    """

    #: whether the window state stores timestamps
    window_timestamps: bool = False
    #: bound on ``windows * max_seq_length`` encoded at once by :meth:`_step` (memory cap)
    step_chunk_elems = 1 << 16

    def window_state_spec(self, batch_size: int) -> list[StateTensorSpec]:
        M = self.config.max_seq_length
        spec = [StateTensorSpec("window_ids", (batch_size, M), torch.int64, 0,
                                "last max_seq_length internal item ids, oldest first at index 0, zero-padded right")]
        if self.window_timestamps:
            spec.append(StateTensorSpec("window_ts", (batch_size, M), torch.float64, 0.0,
                                        "their timestamps in seconds (float64), zero on padding slots"))
        spec.append(StateTensorSpec("window_len", (batch_size, 1), torch.int64, 0,
                                    "number of real items in the window (0 .. max_seq_length)"))
        return spec

    def _step(self, item_ids, state: State, timestamps=None):
        """Append ``item_ids [B, T]`` (+ ``timestamps [B, T]``) and re-run the model on each new item's window.

        New item ``j`` gets the readout a full forward computes on the history up to and including it, truncated to
        the last ``max_seq_length`` items (its own window: the representation is not causal, so no window is shared
        between positions). Returns ``(hidden [B, T, D], new_state)``; the input state is not modified. A state whose
        window holds padding 0 among its ``window_len`` items, or whose ``window_ts`` there are not valid timestamps
        (negative, decreasing, NaN, milliseconds), is refused naming the row, as :meth:`forward` refuses such a history.
        """
        M = self.config.max_seq_length
        win, n = state["window_ids"], state["window_len"][:, 0]
        device = item_ids.device
        win, n = win.to(device), n.to(device)
        if (n < 0).any() or (n > M).any():
            raise ValueError(f"state['window_len'] must be in 0..{M}, got {n.tolist()}")
        if int(win.min()) < 0 or int(win.max()) >= self.config.n_items:
            raise ValueError("state['window_ids'] holds item indices out of range")
        valid_old = check_window_ids(win, n, M)                                # [B, M]: padding 0 inside refused
        B, Tn = item_ids.shape
        ar = torch.arange(M, device=device)
        W = M + Tn
        p = n[:, None] + torch.arange(Tn, device=device)[None]                 # [B, T] position of each new item
        comb_ids = torch.zeros(B, W, dtype=torch.long, device=device)
        comb_ids[:, :M] = torch.where(valid_old, win, torch.zeros_like(win))
        comb_ids.scatter_(1, p, item_ids)
        use_ts = self.window_timestamps
        if use_ts:
            wts = state["window_ts"].to(device).double()
            try:                                  # as forward checks a history: non-negative, in time order, seconds
                self.check_timestamps(wts, valid_old)
            except ValueError as e:
                raise ValueError(f"state['window_ts']: {e}") from None
            if timestamps is None:
                if self.uses_timestamps:
                    raise ValueError(f"{type(self).__name__}.step needs timestamps [batch, T] (seconds)")
                timestamps = torch.zeros(B, Tn, dtype=torch.float64, device=device)
            ts_new = timestamps.to(device).double()
            last_ts = wts.gather(1, (n - 1).clamp(min=0)[:, None])[:, 0]       # [B]
            bad = (n > 0) & (ts_new[:, 0] < last_ts)
            if bad.any():
                r = int(bad.nonzero()[0])
                raise ValueError(f"timestamps of batch row {r} go back in time relative to its state's last item "
                                 f"({float(ts_new[r, 0])} < {float(last_ts[r])})")
            comb_ts = torch.zeros(B, W, dtype=torch.float64, device=device)
            comb_ts[:, :M] = torch.where(valid_old, wts, torch.zeros_like(wts))
            comb_ts.scatter_(1, p, ts_new)
        count = (p + 1).clamp(max=M)                                            # [B, T] window length per new item
        start = p + 1 - count                                                   # [B, T]
        idx = (start.unsqueeze(-1) + ar).clamp(max=W - 1)                       # [B, T, M]
        wmask = ar[None, None] < count.unsqueeze(-1)                            # [B, T, M]
        rows = torch.arange(B, device=device)[:, None, None]
        w_ids = torch.where(wmask, comb_ids[rows, idx], torch.zeros_like(idx))  # [B, T, M]
        w_ts = torch.where(wmask, comb_ts[rows, idx], torch.zeros_like(idx, dtype=torch.float64)) if use_ts else None
        L = int(count.max())                                                    # encode only as wide as needed
        flat_ids, flat_mask = w_ids[..., :L].reshape(-1, L), wmask[..., :L].reshape(-1, L)
        flat_ts = w_ts[..., :L].reshape(-1, L) if use_ts else None
        last = count.reshape(-1) - 1
        chunk = max(1, self.step_chunk_elems // M)
        outs = []
        for s in range(0, flat_ids.shape[0], chunk):
            h = self.encode(flat_ids[s:s + chunk], flat_mask[s:s + chunk],
                            flat_ts[s:s + chunk] if use_ts else None)          # [k, L, D]
            outs.append(h[torch.arange(h.shape[0], device=device), last[s:s + chunk]])
        hidden = torch.cat(outs).reshape(B, Tn, -1)
        new_state = {"window_ids": w_ids[:, -1].clone(), "window_len": count[:, -1:].clone()}
        if use_ts:
            new_state["window_ts"] = w_ts[:, -1].clone()
        return hidden, new_state

    def forward(self, input_ids, attention_mask=None, labels=None, timestamps=None, negatives=None, **kwargs):
        """As :meth:`SeqRecPreTrainedModel.forward`; all-position ``labels [B, L]`` use the prefix objective."""
        if labels is None or not isinstance(labels, torch.Tensor) or labels.dim() != 2:
            return super().forward(input_ids, attention_mask, labels=labels, timestamps=timestamps,
                                   negatives=negatives, **kwargs)
        return_dict = self._forward_kwargs(kwargs)
        ids, mask, ts = self.check_inputs(input_ids, attention_mask, timestamps)
        labels = self.check_labels(labels, ids.shape).to(ids.device)
        sel = (labels > 0) & mask                                               # as the base class selects them
        if not sel.any():
            raise ValueError("labels hold no target (all 0) at the real positions")
        b_idx, t_idx = sel.nonzero(as_tuple=True)                               # one sample per labelled position
        keep = torch.arange(ids.shape[1], device=ids.device)[None] <= t_idx[:, None]
        p_mask = mask[b_idx] & keep
        p_ids = torch.where(p_mask, ids[b_idx], torch.zeros_like(p_mask, dtype=torch.long))
        p_ts = torch.where(p_mask, ts[b_idx], torch.zeros_like(ts[b_idx])) if ts is not None else None
        width = int(t_idx.max()) + 1
        out = super().forward(p_ids[:, :width], p_mask[:, :width], labels=labels[b_idx, t_idx],
                              timestamps=p_ts[:, :width] if p_ts is not None else None, negatives=negatives,
                              return_dict=True)
        if negatives is not None:       # sampled training: the full catalogue is not scored
            return self._output(type(out)(loss=out.loss), return_dict)
        with torch.no_grad():  # logits/hidden of the batch itself, for inspection only (no graph kept)
            main = super().forward(input_ids, attention_mask, timestamps=timestamps, return_dict=True)
        return self._output(type(out)(loss=out.loss, logits=main.logits, hidden_states=main.hidden_states), return_dict)


class TiM4RecModel(WindowRecomputeMixin, TiM4RecPreTrainedModel):
    """TiM4Rec: ``input_ids [B, L<=max_seq_length]`` + ``timestamps`` (right-padded) -> hidden ``[B, L, D]``."""

    model_family = "ssm"
    layer_class = TiSSDLayer
    window_timestamps = True
    fixed_window = True        # the time branch has max_seq_length-sized weights

    def __init__(self, config: TiM4RecConfig):
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.n_items, config.hidden_size, padding_idx=0)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout_prob)
        if config.is_time:
            self.time_dropout = nn.Dropout(config.dropout_prob)
            self.time_norm = nn.LayerNorm(config.max_seq_length, eps=config.norm_eps)
        self.layers = nn.ModuleList(self.layer_class(config) for _ in range(config.num_layers))
        self.post_init()

    def time_features(self, timestamps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` seconds (float64, right-padded window) -> ``T [B, H, M]`` = LN_M(Dropout(diffs)) per head, in the
        model's dtype."""
        ts = timestamps.float().double() if self.config.float32_timestamps else timestamps.double()
        ts = torch.where(mask, ts, torch.zeros_like(ts))
        d = torch.cat([torch.zeros_like(ts[:, :1]), ts[:, 1:] - ts[:, :-1]], dim=1)           # [B, M] float64 s
        norm = self.time_norm
        if norm.weight.dtype in (torch.float32, torch.float64):                              # the model's dtype
            T = norm(self.time_dropout(d.to(norm.weight.dtype)))                               # [B, M]
        else:   # float16 / bfloat16 model: raw second diffs reach 1e6+, beyond float16's range and bfloat16's three
            # digits, so LN_M runs in float32 and its output (~N(0, 1)) is cast to the model's dtype
            T = F.layer_norm(self.time_dropout(d.float()), norm.normalized_shape, norm.weight.float(),
                             norm.bias.float(), norm.eps).to(norm.weight.dtype)                # [B, M]
        return T.unsqueeze(1).expand(-1, self.config.n_heads, -1)                              # [B, H, M]

    def encode(self, input_ids, attention_mask, timestamps=None):
        """``[B, L_in <= max_seq_length]`` right-padded -> hidden ``[B, L_in, D]``, as if the input were right-padded
        to exactly ``M = max_seq_length`` slots (ids 0, timestamps 0), which is what the official model sees.

        Only the time features need the whole window (LN and ``Linear(M, M)`` over its slots, pad slots included):
        they are computed over the ``M``-slot padding of the timestamps. The hidden path (embedding, in_proj, causal
        conv, SSD, gated norm, FFN) is causal and position-wise, so slots ``>= L_in`` cannot change the first ``L_in``
        and are not computed: a batch ``L_in`` wide costs ``L_in / M`` of a full window (the prefix objective's short
        prefixes). ``tests/test_tim4rec.py`` checks this against the explicitly padded input."""
        M = self.config.max_seq_length
        B, L_in = input_ids.shape
        if L_in > M:
            raise ValueError(f"TiM4Rec's time branch has a fixed window of max_seq_length={M} slots; got a batch "
                             f"{L_in} wide. Keep the most recent {M} items (model.pad_batch does this).")
        x = self.layer_norm(self.dropout(self.item_embedding(input_ids)))     # [B, L_in, D]
        T = None
        if self.config.is_time:
            if timestamps is None:
                raise ValueError("TiM4Rec with is_time=True needs timestamps [batch, seq_len] (seconds)")
            T = self.time_features(F.pad(timestamps, (0, M - L_in)), F.pad(attention_mask, (0, M - L_in)))  # [B, H, M]
        for layer in self.layers:
            x, T = layer(x, T)
        return x

    def item_output(self) -> tuple[torch.Tensor, None]:
        return self.item_embedding.weight, None                                # tied item embeddings, no bias

    def state_spec(self, batch_size: int) -> list[StateTensorSpec]:
        return self.window_state_spec(batch_size)


CONFIG_CLASS = TiM4RecConfig
MODEL_CLASS = TiM4RecModel

__all__ = ["TiM4RecConfig", "TiM4RecModel", "TiM4RecPreTrainedModel", "TiSSD", "TiSSDLayer", "SSDCore", "FeedForward",
           "WindowRecomputeMixin"]
