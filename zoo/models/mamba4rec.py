"""Mamba4Rec (Liu et al., 2024, arXiv 2403.03900): a selective-SSM sequential recommender, HF-native.

Faithful to the official code (chengkai-liu/Mamba4Rec @ 44a0c84, RecBole v1.2.0, mamba-ssm 1.1.4):

* item embedding (padding index 0) -> Dropout -> LayerNorm (dropout *before* LN); no position embedding;
* ``num_layers`` x [Mamba mixer -> LN(Dropout(h)) for one layer, LN(Dropout(h) + x) with residual for > 1 layer ->
  post-LN GELU feed-forward];
* right padding, readout at each row's last real item, scores = h @ item_embeddingᵀ (tied), cross-entropy;
* **RecBole init quirk (default, ``mamba_init="recbole"``)**: RecBole's ``apply(_init_weights)`` re-initialises every
  ``nn.Linear`` inside Mamba (in_proj, x_proj, dt_proj, out_proj) with N(0, 0.02) and zeroes ``dt_proj.bias``, so the
  initial Δ is softplus(0) ≈ 0.69 instead of Mamba's log-uniform [1e-3, 1e-1]. ``A_log`` (S4D-real), ``D`` and the conv
  keep Mamba's init. ``mamba_init="mamba"`` keeps Mamba's own dt init instead (not what the paper numbers used).

Stepwise inference is exact: the state per layer is the conv tail ``[E, K-1]`` and the SSM state ``[E, N]``; the
mixer runs the same code for a full window (zero state) and for ``T >= 1`` new items (carried state).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import initialization as init

from ..modeling_utils import (SeqRecConfig, SeqRecPreTrainedModel, State, StateTensorSpec, config_bool, config_dt_init,
                              config_float, config_int, config_rate, derived_field)
from ..ops.conv import causal_conv1d
from ..ops.selective_scan import selective_scan_fn


class Mamba4RecConfig(SeqRecConfig):
    r"""Configuration of :class:`Mamba4RecModel` (defaults = the official ML-1M config).

    Args:
        n_items (`int`, 3417): item table rows incl. padding 0.
        max_seq_length (`int`, 200): history window ``L`` (the model itself has no length limit).
        hidden_size (`int`, 64): model width ``D``.
        num_layers (`int`, 1): Mamba layers; with 1 layer there is no residual around the mixer (official code).
        d_state (`int`, 32): SSM state size ``N`` per channel.
        d_conv (`int`, 4): causal conv kernel ``K``.
        expand (`int`, 2): inner width ``E = expand * D``.
        dt_rank (`int` or "auto"): rank of Δ's projection; "auto" = ceil(D / 16), resolved to that int when the config
            is built and saved so: a later ``hidden_size`` override (``from_pretrained(path, hidden_size=32)``) does
            not re-derive it (give ``dt_rank`` with it).
        dropout_prob (`float`, 0.2): dropout on embeddings, mixer output and FFN.
        inner_size (`int` or None): FFN width; None = 4 * D, resolved to that int when the config is built and saved
            so: a later ``hidden_size`` override does not re-derive it (give ``inner_size`` with it).
        layer_norm_eps (`float`, 1e-12): LayerNorm epsilon (RecBole's).
        conv_bias (`bool`, True), proj_bias (`bool`, False): Mamba's bias flags.
        dt_min, dt_max, dt_init_floor (`float`): Mamba's Δ init range, used when ``mamba_init == "mamba"``.
        mamba_init (`str`, "recbole"): "recbole" reproduces the official init quirk; "mamba" keeps Mamba's dt init.
        initializer_range (`float`, 0.02): std of linear/embedding init.
    Derived:
        d_inner = expand * hidden_size, recomputed whenever read (``config.json`` holds it for its readers; a value
        given for it must agree). ``dt_rank`` and ``inner_size`` are not derived fields: "auto" / None are resolved
        once, when the config is built.
    """

    model_type = "mamba4rec"
    derived_fields = ("d_inner",)

    def __init__(self, n_items=3417, max_seq_length=200, hidden_size=64, num_layers=1, d_state=32, d_conv=4,
                 expand=2, dt_rank="auto", dropout_prob=0.2, inner_size=None, layer_norm_eps=1e-12, conv_bias=True,
                 proj_bias=False, dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4, mamba_init="recbole",
                 initializer_range=0.02, **kwargs):
        if mamba_init not in ("recbole", "mamba"):
            raise ValueError(f"mamba_init must be 'recbole' or 'mamba', got {mamba_init!r}")
        hidden = config_int(hidden_size, "hidden_size")
        self.num_layers = config_int(num_layers, "num_layers")
        self.d_state = config_int(d_state, "d_state")
        self.d_conv = config_int(d_conv, "d_conv")
        self.expand = config_int(expand, "expand")
        self.dt_rank = (math.ceil(hidden / 16) if dt_rank == "auto"
                        else config_int(dt_rank, "dt_rank", what=" (or 'auto')"))
        self.dropout_prob = config_rate(dropout_prob, "dropout_prob")
        self.inner_size = config_int(inner_size, "inner_size") if inner_size is not None else 4 * hidden
        self.layer_norm_eps = config_float(layer_norm_eps, "layer_norm_eps", gt=0)
        self.conv_bias = config_bool(conv_bias, "conv_bias")
        self.proj_bias = config_bool(proj_bias, "proj_bias")
        self.dt_min, self.dt_max, self.dt_init_floor = config_dt_init(dt_min, dt_max, dt_init_floor)
        self.mamba_init = mamba_init
        super().__init__(n_items=n_items, max_seq_length=max_seq_length, hidden_size=hidden_size,
                         initializer_range=initializer_range, **kwargs)

    d_inner = derived_field("d_inner", "expand * hidden_size", lambda c: c.expand * c.hidden_size,
                            "Inner width ``E = expand * hidden_size`` (derived: recomputed, never read back).")


def _s4d_real_log(E: int, N: int, dtype: torch.dtype) -> torch.Tensor:
    """Mamba's S4D-real ``A_log [E, N]`` (``A_log[e, n] = log(n + 1)``) in ``dtype``: the log is taken in float32
    (float64 for float64), as mamba_ssm takes it, and rounded to a 16-bit ``dtype`` afterwards."""
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.log(torch.arange(1, N + 1, dtype=ct)).repeat(E, 1).to(dtype)


class MambaMixer(nn.Module):
    """Mamba (v1) block, ``mamba_ssm.modules.mamba_simple.Mamba`` math, with an explicit carried state.

    x, z = in_proj(u); x = silu(causal_conv(x)); (δ, B, C) = x_proj(x); Δ = softplus(dt_proj(δ)) ;
    y = selective_scan(x, Δ, A = -exp(A_log), B, C, D) * silu(z); out = out_proj(y).
    """

    #: parameters AdamW leaves undecayed (``zoo.train.no_decay_parameter``), as mamba_ssm marks them
    no_weight_decay_params = ("A_log", "D")

    def __init__(self, config: Mamba4RecConfig):
        super().__init__()
        D, E, N, K, R = config.hidden_size, config.d_inner, config.d_state, config.d_conv, config.dt_rank
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = E, N, K, R
        self.in_proj = nn.Linear(D, 2 * E, bias=config.proj_bias)
        self.conv1d = nn.Conv1d(E, E, K, groups=E, padding=K - 1, bias=config.conv_bias)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        # S4D-real init: A[e, n] = -(n + 1), in the dtype the other parameters are made in (a float64 checkpoint
        # loads as float64: from_pretrained builds the model in its dtype)
        self.A_log = nn.Parameter(_s4d_real_log(E, N, torch.get_default_dtype()))                         # [E, N]
        self.D = nn.Parameter(torch.ones(E))                                                             # [E]
        self.out_proj = nn.Linear(E, D, bias=config.proj_bias)

    def reset_dt_mamba(self, config: Mamba4RecConfig) -> None:
        """Mamba's own Δ init: dt_proj.weight ~ U(±R^-1/2), bias = softplus^-1(log-uniform[dt_min, dt_max])."""
        std = self.dt_rank ** -0.5
        init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(config.dt_max) - math.log(config.dt_min))
                       + math.log(config.dt_min)).clamp(min=config.dt_init_floor)
        init.copy_(self.dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def forward(self, hidden: torch.Tensor, conv_state: torch.Tensor | None = None,
                ssm_state: torch.Tensor | None = None, return_state: bool = False):
        """Args:
            hidden: ``[B, L, D]``.
            conv_state: ``[B, E, K-1]`` last pre-conv inputs (None = empty history).
            ssm_state: ``[B, E, N]`` (None = zeros).
        Returns ``out [B, L, D]`` or ``(out, conv_state, ssm_state)`` when ``return_state``.
        """
        # fmt: off
        xz = self.in_proj(hidden).transpose(1, 2)                              # [B, 2E, L]
        x, z = xz.split([self.d_inner, self.d_inner], dim=1)                   # [B, E, L] each (static sizes)
        x, new_conv = causal_conv1d(x, self.conv1d.weight[:, 0], self.conv1d.bias, conv_state, "silu")  # [B, E, L]
        x_dbl = self.x_proj(x.transpose(1, 2))                                 # [B, L, R + 2N]
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)                 # [B, E, L] (bias added in the scan)
        # A, D and the Δ bias in the scan's compute dtype: float32 for a float32/16-bit model (mamba_ssm keeps them
        # in float32), float64 for a float64 one
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        A = -torch.exp(self.A_log.to(ct))                                      # [E, N]
        res = selective_scan_fn(x, dt, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
                                self.D.to(ct), z, self.dt_proj.bias.to(ct), delta_softplus=True,
                                return_last_state=return_state, initial_state=ssm_state)
        y, last = (res if return_state else (res, None))                       # y: [B, E, L]
        out = self.out_proj(y.transpose(1, 2))                                 # [B, L, D]
        # fmt: on
        return (out, new_conv, last) if return_state else out


class FeedForward(nn.Module):
    """Post-LN position-wise FFN of the official code: LN(Dropout(W2 Dropout(GELU(W1 h))) + h)."""

    def __init__(self, config: Mamba4RecConfig):
        super().__init__()
        self.w_1 = nn.Linear(config.hidden_size, config.inner_size)
        self.w_2 = nn.Linear(config.inner_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout_prob)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        f = self.dropout(self.w_2(self.dropout(F.gelu(self.w_1(h)))))
        return self.layer_norm(f + h)


class MambaLayer(nn.Module):
    """Mixer -> (residual only when num_layers > 1) -> LN -> FFN."""

    def __init__(self, config: Mamba4RecConfig):
        super().__init__()
        self.residual = config.num_layers > 1
        self.mamba = MambaMixer(config)
        self.dropout = nn.Dropout(config.dropout_prob)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)

    def forward(self, x, conv_state=None, ssm_state=None, return_state=False):
        res = self.mamba(x, conv_state, ssm_state, return_state)
        h, conv_state, ssm_state = res if return_state else (res, None, None)
        h = self.dropout(h)
        h = self.layer_norm(h + x if self.residual else h)
        out = self.ffn(h)
        return (out, conv_state, ssm_state) if return_state else out


class Mamba4RecPreTrainedModel(SeqRecPreTrainedModel):
    config_class = Mamba4RecConfig
    base_model_prefix = "mamba4rec"
    padding_side = "right"
    has_exact_step = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # RecBole init: hits the Linears inside the mixer, zeroes dt_proj.bias
        if isinstance(module, MambaMixer):
            init.copy_(module.A_log, _s4d_real_log(module.d_inner, module.d_state, module.A_log.dtype))
            init.ones_(module.D)
            if self.config.mamba_init == "mamba":
                module.reset_dt_mamba(self.config)


class Mamba4RecModel(Mamba4RecPreTrainedModel):
    """Mamba4Rec: ``input_ids [B, L]`` (right-padded) -> hidden ``[B, L, D]`` -> next-item logits ``[B, n_items]``."""

    model_family = "ssm"

    def __init__(self, config: Mamba4RecConfig):
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.n_items, config.hidden_size, padding_idx=0)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout_prob)
        self.mamba_layers = nn.ModuleList(MambaLayer(config) for _ in range(config.num_layers))
        self.post_init()

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.dropout(self.item_embedding(ids)))     # [B, L, D]

    def encode(self, input_ids, attention_mask, timestamps=None):
        """``[B, L]`` right-padded ids -> ``[B, L, D]``; causal, so pads after a row's end never reach it."""
        x = self._embed(input_ids)
        for layer in self.mamba_layers:
            x = layer(x)
        return x

    def item_output(self) -> tuple[torch.Tensor, None]:
        return self.item_embedding.weight, None                                # tied item embeddings, no bias

    def state_spec(self, batch_size: int) -> list[StateTensorSpec]:
        c = self.config
        return [
            StateTensorSpec("conv_state", (batch_size, c.num_layers, c.d_inner, c.d_conv - 1),
                            doc="per layer: the last d_conv-1 pre-convolution inputs x (zeros = empty history)"),
            StateTensorSpec("ssm_state", (batch_size, c.num_layers, c.d_inner, c.d_state),
                            doc="per layer: selective-scan state h[e, n] after the last item"),
        ]

    def _step(self, item_ids, state: State, timestamps=None):
        """``item_ids [B, T]`` + state -> ``(hidden [B, T, D], new_state)``; exact continuation of the history."""
        x = self._embed(item_ids)                                            # [B, T, D]
        convs, ssms = [], []
        for i, layer in enumerate(self.mamba_layers):
            x, conv, ssm = layer(x, state["conv_state"][:, i], state["ssm_state"][:, i], return_state=True)
            convs.append(conv.float())
            ssms.append(ssm.float())
        return x, {"conv_state": _pack_layers(convs), "ssm_state": _pack_layers(ssms)}


def _pack_layers(per_layer: list[torch.Tensor]) -> torch.Tensor:
    """``num_layers`` tensors ``[B, ...]`` -> ``[B, num_layers, ...]`` (one layer: a plain unsqueeze, which exports as
    one node instead of ``Unsqueeze`` + a one-input ``Concat``)."""
    return per_layer[0].unsqueeze(1) if len(per_layer) == 1 else torch.stack(per_layer, 1)


CONFIG_CLASS = Mamba4RecConfig
MODEL_CLASS = Mamba4RecModel

__all__ = ["Mamba4RecConfig", "Mamba4RecModel", "Mamba4RecPreTrainedModel", "MambaMixer"]
