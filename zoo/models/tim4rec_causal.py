"""TiM4Rec-causal: our recurrent redesign of TiM4Rec's time branch (not in the paper; needs its own training).

Same time-aware SSD (Mamba-2) block as :mod:`zoo.models.tim4rec` — in_proj/out_proj with bias, causal depthwise conv on
xBC (Hardswish when ``H % 8 != 0``), ``Δ = softplus(δ ⊙ τ̃ + dt_bias)``, gated RMSNorm, post-LN Hardswish FFN, tied
logits — but every time operation is a *per-event, causal* function, following ``shared/reference/models.md`` §4.6::

    gap_i = τ_i - τ_{i-1}   (0 for the first event of a history; clamped at >= 0)
    f_i   = log1p(gap_i / time_unit) / time_scale            # fixed normalisation, no statistics of the window
    T_i   = Dropout(f_i) * w_in + b_in                       # per-head affine ∈ R^H (replaces LN over the window axis)
    per layer:
        τ̃_i = T_i ⊙ MLP_H(Dropout_t(T_i))                    # Linear(H, H) -> SiLU -> Linear(H, H), per position
        τ̃   = act(conv_t2(act(conv_t1(τ̃))))                  # the two causal depthwise time convs, carried state
        δ'_i = δ_i ⊙ τ̃_i
        g_i = σ(Linear(H, H)(Dropout_t(T_i)))                # per-position, per-head gate (replaces σ(Linear(L -> 1)))
        T_i ← γ ⊙ (g_i ⊙ T_i + (1 - g_i) ⊙ τ̃_i) + β          # per-head affine (replaces LN over the window axis)

Constants: ``time_unit = 60`` s and ``time_scale = 10`` by default, so a 1-minute gap maps to log(2)/10 ≈ 0.07, a day to
0.73, a year to 1.32; same-second events give 0.

Because nothing mixes positions except causal convs and the SSD, the model has an exact O(1) recurrent step
(``has_exact_step = True``) with a fixed-size state (layers packed on axis 1, ``E = expand·D``, ``K = d_conv``):

* ``conv_state [B, n_layers, E + 2N, K - 1]`` — last ``K - 1`` pre-conv xBC inputs per layer;
* ``ssm_state [B, n_layers, H, P, N]`` — SSD state per head;
* ``time_conv_state [B, n_layers, 2, H, K - 1]`` — last ``K - 1`` inputs of time conv 1 (index 0) and time conv 2 (1);
* ``last_ts [B, 1]`` float64 — timestamp of the last event in seconds (``-1`` = no event yet, so the next gap is 0).

Timestamps are differenced in float64, so Unix seconds keep 1-second resolution. Unlike TiM4Rec, histories are not tied
to a window: :meth:`encode` accepts any length (right-padded; pads get gap 0 and never reach real positions).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import initialization as init

from ..modeling_utils import State, StateTensorSpec, config_float
from ..ops.ssd import causal_conv1d_act
from .tim4rec import SSDCore, TiM4RecConfig, TiM4RecPreTrainedModel, TiSSDLayer


class TiM4RecCausalConfig(TiM4RecConfig):
    r"""Configuration of :class:`TiM4RecCausalModel`: :class:`~zoo.models.tim4rec.TiM4RecConfig` plus

    Args (keyword-only; positional arguments are :class:`~zoo.models.tim4rec.TiM4RecConfig`'s, in its order, so
    ``TiM4RecCausalConfig(100, 50)`` is ``n_items=100, max_seq_length=50`` as for every zoo config):
        time_unit (`float`, 60.0): seconds per unit in ``f = log1p(gap / time_unit) / time_scale`` (finite, > 0).
        time_scale (`float`, 10.0): divisor of that log feature (finite, > 0).
    A field given both positionally and by keyword is a ``TypeError`` naming it, as is more positional arguments than
    TiM4RecConfig has. ``max_seq_length`` is only the training/recommend window here (the model has no length
    limit); ``p2p_residual`` is ignored (the gate is always per position).
    """

    model_type = "tim4rec_causal"

    def __init__(self, *args, time_unit=60.0, time_scale=10.0, **kwargs):
        # bound here, not by Python: its errors named TiM4RecConfig.__init__, and not the config built
        code = TiM4RecConfig.__init__.__code__
        names = code.co_varnames[1:code.co_argcount]                # TiM4RecConfig's fields, in order
        if len(args) > len(names):
            raise TypeError(f"TiM4RecCausalConfig takes at most {len(names)} positional arguments (TiM4RecConfig's "
                            f"fields {names[0]}, {names[1]}, ... in order; time_unit and time_scale are keyword-only),"
                            f" got {len(args)}")
        twice = [f"{n} given twice, as positional argument {i + 1} ({a!r}) and as {n}={kwargs[n]!r}"
                 for i, (n, a) in enumerate(zip(names, args)) if n in kwargs]
        if twice:
            raise TypeError(f"{'; '.join(twice)}: give {'it' if len(twice) == 1 else 'each'} once")
        kwargs.update(zip(names, args))
        self.time_unit = config_float(time_unit, "time_unit", gt=0)
        self.time_scale = config_float(time_scale, "time_scale", gt=0)
        super().__init__(**kwargs)


class CausalTiSSD(SSDCore):
    """TiSSD with per-position time maps and carried conv/SSD/time-conv states."""

    def __init__(self, config: TiM4RecCausalConfig):
        super().__init__(config)
        self.is_time = config.is_time
        K, H = config.d_conv, config.n_heads
        if self.is_time:
            self.time_mlp = nn.Sequential(nn.Dropout(config.time_dropout_prob), nn.Linear(H, H), nn.SiLU(),
                                          nn.Linear(H, H))
            self.time_conv1 = nn.Conv1d(H, H, K, groups=H, padding=K - 1, bias=True)
            self.time_conv2 = nn.Conv1d(H, H, K, groups=H, padding=K - 1, bias=True)
            self.gate_dropout = nn.Dropout(config.time_dropout_prob)
            self.time_gate = nn.Linear(H, H)
            self.time_weight = nn.Parameter(torch.ones(H))
            self.time_bias = nn.Parameter(torch.zeros(H))

    def forward(self, hidden, T, conv_state=None, ssm_state=None, time_conv_state=None):
        """``hidden [B, L, D]``, ``T [B, L, H]`` (None without time), states (None = empty history) ->
        ``(out [B, L, D], T_next [B, L, H], conv_state, ssm_state, time_conv_state [B, 2, H, K-1])``."""
        z, x, Bm, Cm, dt, new_conv = self.project(hidden, conv_state)
        T_next, new_tconv = None, None
        if self.is_time:
            tau = T * self.time_mlp(T)                                           # [B, L, H]
            s1 = s2 = None
            if time_conv_state is not None:
                s1, s2 = time_conv_state[:, 0], time_conv_state[:, 1]
            tau, n1 = causal_conv1d_act(tau.transpose(1, 2), self.time_conv1.weight[:, 0], self.time_conv1.bias,
                                        s1, self.act)                            # [B, H, L]
            tau, n2 = causal_conv1d_act(tau, self.time_conv2.weight[:, 0], self.time_conv2.bias, s2, self.act)
            tau = tau.transpose(1, 2)                                            # [B, L, H]
            new_tconv = torch.stack([n1, n2], dim=1)                             # [B, 2, H, K-1]
            dt = dt * tau                                                        # δ' = δ ⊙ τ̃
            g = torch.sigmoid(self.time_gate(self.gate_dropout(T)))              # [B, L, H]
            T_next = self.time_weight * (g * T + (1 - g) * tau) + self.time_bias
        out, last = self.scan_and_out(z, x, Bm, Cm, dt, ssm_state)
        return out, T_next, new_conv, last, new_tconv


class CausalTiSSDLayer(TiSSDLayer):
    mixer_class = CausalTiSSD

    def forward(self, x, T, conv_state=None, ssm_state=None, time_conv_state=None):
        h, T, conv, ssm, tconv = self.mixer(x, T, conv_state, ssm_state, time_conv_state)
        return self.post(h, x), T, conv, ssm, tconv


class TiM4RecCausalModel(TiM4RecPreTrainedModel):
    """TiM4Rec-causal: ``input_ids [B, L]`` + ``timestamps [B, L]`` (right-padded) -> ``[B, L, D]``; exact step."""

    model_family = "ssm"
    config_class = TiM4RecCausalConfig
    base_model_prefix = "tim4rec_causal"
    has_exact_step = True

    def __init__(self, config: TiM4RecCausalConfig):
        super().__init__(config)
        H = config.n_heads
        self.item_embedding = nn.Embedding(config.n_items, config.hidden_size, padding_idx=0)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout_prob)
        if config.is_time:
            self.time_dropout = nn.Dropout(config.dropout_prob)
            self.time_in_weight = nn.Parameter(torch.ones(H))
            self.time_in_bias = nn.Parameter(torch.zeros(H))
        self.layers = nn.ModuleList(CausalTiSSDLayer(config) for _ in range(config.num_layers))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CausalTiSSD) and module.is_time:
            init.ones_(module.time_weight)
            init.zeros_(module.time_bias)
        if isinstance(module, TiM4RecCausalModel) and module.config.is_time:
            init.ones_(module.time_in_weight)
            init.zeros_(module.time_in_bias)

    def gap_features(self, gaps: torch.Tensor) -> torch.Tensor:
        """Gaps in seconds ``[B, L]`` (float64 from :meth:`encode` / :meth:`_step`; float32 in the ONNX step graph with
        ``--time-input gaps``) -> ``T [B, L, H]``; the log feature is computed in the gaps' dtype (it is ~0..2, so
        any float dtype holds it), then cast to the model's dtype (float32 normally)."""
        c = self.config
        f = (torch.log1p(gaps.clamp(min=0) / c.time_unit) / c.time_scale).to(self.time_in_weight.dtype)   # [B, L]
        f = self.time_dropout(f)
        return f.unsqueeze(-1) * self.time_in_weight + self.time_in_bias             # [B, L, H]

    def _run(self, ids, T, state: State | None):
        x = self.layer_norm(self.dropout(self.item_embedding(ids)))               # [B, L, D]
        convs, ssms, tconvs = [], [], []
        for i, layer in enumerate(self.layers):
            if state is None:
                x, T, conv, ssm, tconv = layer(x, T)
            else:
                x, T, conv, ssm, tconv = layer(x, T, state["conv_state"][:, i], state["ssm_state"][:, i],
                                               state["time_conv_state"][:, i] if self.config.is_time else None)
            convs.append(conv)
            ssms.append(ssm)
            tconvs.append(tconv)
        return x, convs, ssms, tconvs

    def encode(self, input_ids, attention_mask, timestamps=None):
        """Right-padded ``[B, L]`` -> ``[B, L, D]``; causal (pads after a row's end never reach it)."""
        T = None
        if self.config.is_time:
            if timestamps is None:
                raise ValueError("TiM4Rec-causal with is_time=True needs timestamps [batch, seq_len] (seconds)")
            ts = timestamps.double()
            gaps = torch.cat([torch.zeros_like(ts[:, :1]), ts[:, 1:] - ts[:, :-1]], dim=1)
            gaps = torch.where(attention_mask, gaps, torch.zeros_like(gaps))      # pads: gap 0 (no NaN/inf)
            T = self.gap_features(gaps)
        return self._run(input_ids, T, None)[0]

    def item_output(self) -> tuple[torch.Tensor, None]:
        return self.item_embedding.weight, None                                # tied item embeddings, no bias

    def state_spec(self, batch_size: int) -> list[StateTensorSpec]:
        c = self.config
        nl, E, N, K, H, P = c.num_layers, c.d_inner, c.d_state, c.d_conv, c.n_heads, c.head_dim
        spec = [
            StateTensorSpec("conv_state", (batch_size, nl, E + 2 * N, K - 1),
                            doc="per layer: the last d_conv-1 pre-convolution xBC inputs (zeros = empty history)"),
            StateTensorSpec("ssm_state", (batch_size, nl, H, P, N),
                            doc="per layer: SSD state S[h, p, n] after the last item"),
        ]
        if c.is_time:
            spec += [
                StateTensorSpec("time_conv_state", (batch_size, nl, 2, H, K - 1),
                                doc="per layer: last d_conv-1 inputs of time conv 1 (index 0) and time conv 2 (1)"),
                StateTensorSpec("last_ts", (batch_size, 1), torch.float64, -1.0,
                                doc="timestamp (seconds) of the last event; -1 = no event yet (next gap is 0)"),
            ]
        return spec

    def _step(self, item_ids, state: State, timestamps=None):
        """``item_ids [B, T]`` (+ ``timestamps [B, T]``) + state -> ``(hidden [B, T, D], new_state)``; exact."""
        gaps = None
        new_state: State = {}
        if self.config.is_time:
            if timestamps is None:
                raise ValueError("TiM4Rec-causal.step needs timestamps [batch, T] (seconds)")
            ts = timestamps.double()
            last = state["last_ts"].to(ts.device)                                 # [B, 1]
            odd = (last[:, 0] < 0) & (last[:, 0] != -1)                            # timestamps are >= 0; -1: none yet
            if odd.any():
                r = int(odd.nonzero()[0])
                raise ValueError(f"state['last_ts'] of batch row {r} is {float(last[r, 0])}: it must be the last "
                                 "event's timestamp (>= 0) or -1 (no event yet)")
            bad = (last[:, 0] >= 0) & (ts[:, 0] < last[:, 0])
            if bad.any():
                r = int(bad.nonzero()[0])
                raise ValueError(f"timestamps of batch row {r} go back in time relative to its state's last event "
                                 f"({float(ts[r, 0])} < {float(last[r, 0])})")
            prev = torch.cat([torch.where(last >= 0, last, ts[:, :1]), ts[:, :-1]], dim=1)
            gaps = ts - prev                                                      # float64 seconds
            new_state["last_ts"] = ts[:, -1:].clone()
        x, rest = self._step_from_gaps(item_ids, state, gaps)
        return x, {**rest, **new_state}

    def _step_from_gaps(self, item_ids, state: State, gaps=None):
        """The step from per-event time gaps: ``item_ids [B, T]`` + ``gaps [B, T]`` (seconds since the row's previous
        event, 0 for its first event ever; any float dtype, ``gap_features`` clamps at 0) + the state without
        ``last_ts`` -> ``(hidden [B, T, D], new_state without last_ts)``. :meth:`_step` differences the float64
        timestamps and calls this; the ONNX step graph with ``--time-input gaps`` calls it with float32 gaps."""
        T = None
        if self.config.is_time:
            if gaps is None:
                raise ValueError("TiM4Rec-causal needs time gaps [batch, T] (seconds)")
            T = self.gap_features(gaps)
        x, convs, ssms, tconvs = self._run(item_ids, T, state)
        new_state: State = {"conv_state": torch.stack(convs, 1).float(), "ssm_state": torch.stack(ssms, 1).float()}
        if self.config.is_time:
            new_state["time_conv_state"] = torch.stack(tconvs, 1).float()
        return x, new_state


CONFIG_CLASS = TiM4RecCausalConfig
MODEL_CLASS = TiM4RecCausalModel

__all__ = ["TiM4RecCausalConfig", "TiM4RecCausalModel", "CausalTiSSD"]
