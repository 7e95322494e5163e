"""LRURec (Yue et al., WSDM'24, arXiv 2310.02367), faithful to the official code (yueqirex/LRURec ``model/lru.py``).

Architecture (ML-1M defaults: 322,841 parameters with ``n_items=3417``, complex parameters counted once)::

    x = LN(Dropout(E[s]))                                   # item embedding WITHOUT padding_idx, no positions
    for each of num_layers LRU blocks:
        lam = exp(-nu + i theta), (nu, theta, gamma) = exp(params_log)      # N = 2 D complex channels
        u_t = gamma * (W_in x_t + b_in)                                     # W_in in C^{N x D}, b_in in C^N
        h_t = lam * h_{t-1} + u_t                                           # real positions only (padding masked)
        y_t = LN(Dropout_attn(Re(W_out h_t + b_out)) + x_t)                 # W_out in C^{D x N}, b_out in C^D
        x_t = LN(Dropout(W_2 Dropout(GELU(W_1 y_t + b_1)) + b_2) + y_t)    # position-wise FFN, D -> 4D -> D
    logits_t = x_t E^T + b_item                             # tied item embeddings + learned output item bias

Batches are **left-padded** (``padding_side = "left"``), like the official model. Init as the official
``truncated_normal_init``: N(0, 0.02) truncated to [-0.04, 0.04] on every parameter (real and imaginary parts
separately, biases, embeddings and the item bias included) except layer norms (1, 0) and ``params_log`` (ring init:
``|lam|^2 ~ U[r_min^2, r_max^2]``, phase ``~ U[0, 2 pi)``, ``gamma = sqrt(1 - |lam|^2)``). It is applied in
:meth:`LRURecPreTrainedModel._init_weights` (called per module by ``post_init``), so a fresh model gets it.

Deviations from the official code (none changes the function computed at real positions):

* **No complex dtype.** Every complex parameter is a real/imaginary pair (``weight_re``/``weight_im``,
  ``bias_re``/``bias_im``) and the recurrence runs on real pairs (:mod:`zoo.ops.lru`), so the model exports to ONNX.
  The raw ``numel`` is therefore larger (355,993 for the default config); counting each pair once gives the official
  322,841. :func:`convert_official_state_dict` maps an official (complex) state dict onto these names.
* **No power-of-two padding.** The official model left-pads to ``2^ceil(log2 L)`` and masks the carry out of padding in
  its recursive-doubling scan; here padding inputs are zeroed (mask-based, exact) and a chunked matmul scan handles
  any length. At real positions both give ``h_t = sum_{j <= t, j real} lam^(t-j) u_j`` exactly (up to float rounding);
  at padding positions the state here is 0 (the official one holds meaningless values there; nothing reads them).
* ``gamma`` is folded into the input projection at run time (``(gamma W) x + gamma b``): same math, different rounding.
* The imaginary part of ``out_proj``'s bias only ever enters the discarded imaginary output, so (as in the official
  model) it never receives a gradient; it is kept so parameters and checkpoints map 1:1.
* :meth:`forward` (base class) returns logits at the last position; all-position logits are
  ``model.score(out.hidden_states)`` and ``labels [B, L]`` gives the official all-position CE (label 0 ignored).
  The XLong sampled-softmax variant and the evaluation-time history masking (``recommend(exclude_seen=True)``) are not
  part of the model. The official optimiser groups parameters by name ("bias" / "layer_norm" → no weight decay); the
  names here keep those substrings, so the same grouping works (``params_log`` is decayed, as officially). Two
  training differences of ``zoo.train`` (not of the model): AdamW's ``eps`` is torch's 1e-8 (officially 1e-9), and
  the kept checkpoint is the best by validation NDCG@10 once an epoch (officially Recall@10 every 500 iterations).

Stepwise inference is exact (``has_exact_step``): the state is the complex LRU state of every block, packed as
``lru_state_re`` / ``lru_state_im`` ``[B, num_layers, N]``; ``_step`` accepts ``T >= 1`` new items (the parallel scan
started from the state for ``T > 1``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..modeling_utils import (SeqRecConfig, SeqRecPreTrainedModel, State, StateTensorSpec, config_float, config_int,
                              config_rate)
from ..ops.lru import lru_lambda, lru_scan_ref, lru_step_ref


class LRURecConfig(SeqRecConfig):
    """Configuration of :class:`LRURecModel` (official LRURec defaults for ML-1M, ``config.py::set_template``).

    Args:
        n_items (`int`, defaults to 3417): rows of the item embedding table, padding row 0 included (official
            ``num_items + 1``; ML-1M: 3,417).
        max_seq_length (`int`, defaults to 200): history window ``L`` (official ``bert_max_len``).
        hidden_size (`int`, defaults to 64): model width ``D`` (official ``bert_hidden_units``).
        num_layers (`int`, defaults to 2): number of LRU blocks (official ``bert_num_blocks``).
        hidden_dropout (`float`, defaults to 0.2): dropout on the embeddings and in the FFN (official
            ``bert_dropout``). ``dropout=`` is accepted as an alias: its errors name ``dropout``, and giving it with
            ``hidden_dropout`` is a ``ValueError`` unless the two are equal. ``from_pretrained(path, dropout=0.5)``
            overrides the saved ``hidden_dropout`` as ``hidden_dropout=0.5`` does (:attr:`field_aliases`).
        attn_dropout (`float`, defaults to 0.2): dropout on the LRU layer output (official ``bert_attn_dropout``).
        state_expansion (`int`, defaults to 2): complex LRU channels per model dimension, ``N = state_expansion * D``.
        r_min (`float`, defaults to 0.8): ring init, smallest initial ``|lam|``.
        r_max (`float`, defaults to 0.99): ring init, largest initial ``|lam|``.
        layer_norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon (PyTorch default, as officially).
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal init.
        initializer_cutoff (`float`, defaults to 0.04): the truncated normal is cut to ``[-cutoff, cutoff]``.
        scan_chunk_size (`int`, defaults to 20): chunk length of the parallel scan (speed only, not results).
    """

    model_type = "lrurec"
    field_aliases = {"dropout": "hidden_dropout"}

    class _Default(float):
        """A default value, told apart (``is``) from the same value given (``dropout=0.1, hidden_dropout=0.2``)."""

    _HIDDEN_DROPOUT = _Default(0.2)

    def __init__(self, n_items: int = 3417, max_seq_length: int = 200, hidden_size: int = 64, num_layers: int = 2,
                 hidden_dropout: float = _HIDDEN_DROPOUT, attn_dropout: float = 0.2, state_expansion: int = 2,
                 r_min: float = 0.8, r_max: float = 0.99, layer_norm_eps: float = 1e-5,
                 initializer_range: float = 0.02, initializer_cutoff: float = 0.04, scan_chunk_size: int = 20,
                 **kwargs):
        if "dropout" in kwargs:                 # the alias: its value is checked, and named, as the user spelled it
            given = kwargs.pop("dropout")
            dropout = config_rate(given, "dropout")
            if hidden_dropout is not self._HIDDEN_DROPOUT and config_rate(hidden_dropout, "hidden_dropout") != dropout:
                raise ValueError(f"dropout={given!r} contradicts hidden_dropout={hidden_dropout!r}: dropout is an "
                                 f"alias of hidden_dropout; give one of them")
            hidden_dropout = dropout
        self.r_min = config_float(r_min, "r_min", gt=0, lt=1)
        self.r_max = config_float(r_max, "r_max", gt=0, lt=1)
        if self.r_min > self.r_max:
            raise ValueError(f"ring init needs 0 < r_min <= r_max < 1, got r_min={r_min}, r_max={r_max}")
        config_float(initializer_range, "initializer_range", gt=0)      # the truncated normal needs a spread
        self.initializer_cutoff = config_float(initializer_cutoff, "initializer_cutoff", gt=0)
        self.scan_chunk_size = config_int(scan_chunk_size, "scan_chunk_size")
        self.num_layers = config_int(num_layers, "num_layers")
        self.hidden_dropout = config_rate(hidden_dropout, "hidden_dropout")
        self.attn_dropout = config_rate(attn_dropout, "attn_dropout")
        self.state_expansion = config_int(state_expansion, "state_expansion")
        self.layer_norm_eps = config_float(layer_norm_eps, "layer_norm_eps", gt=0)
        super().__init__(n_items=n_items, max_seq_length=max_seq_length, hidden_size=hidden_size,
                         initializer_range=initializer_range, **kwargs)

    @property
    def lru_state_size(self) -> int:
        """``N``: complex channels of each LRU layer."""
        return self.state_expansion * self.hidden_size


def ring_init_params_log(n: int, r_min: float, r_max: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Official LRU ring init as ``params_log [3, n] = (nu_log, theta_log, gamma_log)``.

    ``|lam|^2 = u1 (r_max^2 - r_min^2) + r_min^2`` and phase ``theta = 2 pi u2`` with ``u1, u2 ~ U(0, 1)``;
    ``gamma = sqrt(1 - |lam|^2)`` normalises the input at init.
    """
    u1 = torch.rand(n, generator=generator, dtype=torch.float64)
    u2 = torch.rand(n, generator=generator, dtype=torch.float64)
    nu_log = torch.log(-0.5 * torch.log(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2))
    theta_log = torch.log(u2 * 2 * math.pi)
    gamma_log = torch.log(torch.sqrt(1 - torch.exp(-2 * torch.exp(nu_log))))     # |lam|^2 = exp(-2 nu)
    return torch.stack([nu_log, theta_log, gamma_log]).float()


class ComplexLinear(nn.Module):
    """``y = W z + b`` with complex ``W in C^{out x in}``, ``b in C^out``, stored as real/imaginary pairs."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight_re = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_im = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_re = nn.Parameter(torch.empty(out_features))
        self.bias_im = nn.Parameter(torch.empty(out_features))

    def real_part(self, z_re: torch.Tensor, z_im: torch.Tensor) -> torch.Tensor:
        """``Re(W z + b) = W_re z_re - W_im z_im + b_re`` for ``z [..., in]`` -> ``[..., out]``."""
        return F.linear(z_re, self.weight_re, self.bias_re) - F.linear(z_im, self.weight_im)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, complex"


class LRULayer(nn.Module):
    """Linear Recurrent Unit with residual and post-LN: ``y = LN(Dropout(Re(W_out h + b_out)) + x)``."""

    def __init__(self, config: LRURecConfig):
        super().__init__()
        d, n = config.hidden_size, config.lru_state_size
        self.hidden_size = d
        self.state_size = n
        self.chunk_size = config.scan_chunk_size
        self.params_log = nn.Parameter(torch.empty(3, n))                    # nu_log, theta_log, gamma_log
        self.in_proj = ComplexLinear(d, n)
        self.out_proj = ComplexLinear(n, d)
        self.dropout = nn.Dropout(config.attn_dropout)
        self.layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def lam(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lam_re, lam_im)``, each ``[N]``: float32 for 16-bit parameters (:func:`~zoo.ops.lru.lru_lambda`)."""
        return lru_lambda(self.params_log[0], self.params_log[1])

    def inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u = gamma * (W_in x + b_in)`` for real ``x [B, L, D]`` -> ``(u_re, u_im) [B, L, N]``.

        Computed as ``(gamma W_in) x^T + gamma b_in`` so the result is channel-first in memory (what the scan wants).
        For a 16-bit model ``gamma = exp(gamma_log)`` and its products with ``W_in`` / ``b_in`` are computed in
        float32 (like ``lam``, :func:`~zoo.ops.lru.lru_lambda`) and rounded once to ``x``'s dtype for the matmul;
        float32 / float64 models compute all of it in their dtype, as ever.
        """
        B, L, D = x.shape
        ct = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype    # gamma's products' dtype
        gamma = torch.exp(_to(self.params_log[2], ct))
        xt = x.reshape(B * L, D).t()                                         # [D, B L]
        p = self.in_proj
        u_re = torch.addmm(_to((gamma * _to(p.bias_re, ct)).unsqueeze(1), x.dtype),
                           _to(gamma.unsqueeze(1) * _to(p.weight_re, ct), x.dtype), xt)              # [N, B L]
        u_im = torch.addmm(_to((gamma * _to(p.bias_im, ct)).unsqueeze(1), x.dtype),
                           _to(gamma.unsqueeze(1) * _to(p.weight_im, ct), x.dtype), xt)
        n = self.state_size
        return u_re.view(n, B, L).permute(1, 2, 0), u_im.view(n, B, L).permute(1, 2, 0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, h0_re: torch.Tensor | None = None,
                h0_im: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [B, L, D]``, ``mask [B, L]`` bool or None, ``h0 [B, N]`` or None ->
        ``(y [B, L, D], h_re, h_im [B, L, N])``.

        The recurrence runs in float32 (float64 for a float64 ``x``): for a 16-bit model ``u`` and ``lam`` are cast up
        (never ``h0`` down), ``h`` is returned in that dtype and cast to ``x``'s only on its way into ``out_proj``, so
        a state carried from step to step keeps float32 precision (as the Mamba/SSD scans do)."""
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        u_re, u_im = (_to(t, ct) for t in self.inputs(x))
        lam_re, lam_im = (_to(t, ct) for t in self.lam())
        h0_re, h0_im = (None if t is None else _to(t, ct) for t in (h0_re, h0_im))
        if mask is None and h0_re is not None and x.shape[1] == 1:
            h_re, h_im = lru_step_ref(u_re[:, 0], u_im[:, 0], lam_re, lam_im, h0_re, h0_im)
            h_re, h_im = h_re.unsqueeze(1), h_im.unsqueeze(1)
        else:
            h_re, h_im = lru_scan_ref(u_re, u_im, lam_re, lam_im, mask, h0_re, h0_im, chunk_size=self.chunk_size)
        y = self.layer_norm(self.dropout(self.out_proj.real_part(_to(h_re, x.dtype), _to(h_im, x.dtype))) + x)
        return y, h_re, h_im


def _to(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``; ``t`` itself when it already is (so a float32 model traces no Cast node)."""
    return t if t.dtype == dtype else t.to(dtype)


class PositionwiseFeedForward(nn.Module):
    """``LN(Dropout(W_2 Dropout(GELU(W_1 y + b_1)) + b_2) + y)``, ``D -> 4D -> D`` (exact erf GELU)."""

    def __init__(self, config: LRURecConfig):
        super().__init__()
        d = config.hidden_size
        self.w_1 = nn.Linear(d, 4 * d)
        self.w_2 = nn.Linear(4 * d, d)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.activation(self.w_1(x)))
        return self.layer_norm(self.dropout(self.w_2(h)) + x)


class LRUBlock(nn.Module):
    """LRU layer followed by the position-wise FFN."""

    def __init__(self, config: LRURecConfig):
        super().__init__()
        self.lru_layer = LRULayer(config)
        self.feed_forward = PositionwiseFeedForward(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, h0_re: torch.Tensor | None = None,
                h0_im: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, h_re, h_im = self.lru_layer(x, mask, h0_re, h0_im)
        return self.feed_forward(y), h_re, h_im


class LRURecPreTrainedModel(SeqRecPreTrainedModel):
    """Shared LRURec class attributes and the official initialisation."""

    config_class = LRURecConfig
    base_model_prefix = "lrurec"
    padding_side = "left"
    has_exact_step = True
    uses_timestamps = False

    def _init_weights(self, module: nn.Module) -> None:
        """Official init: truncated normal N(0, std) cut to +-cutoff everywhere except LayerNorms and ``params_log``."""
        cfg = self.config
        std, cut = cfg.initializer_range, cfg.initializer_cutoff

        def tn(p: torch.Tensor) -> None:
            init.trunc_normal_(p, mean=0.0, std=std, a=-cut, b=cut)

        if isinstance(module, (nn.Linear, nn.Embedding)):
            tn(module.weight)
            if getattr(module, "bias", None) is not None:
                tn(module.bias)
        elif isinstance(module, ComplexLinear):
            for p in (module.weight_re, module.weight_im, module.bias_re, module.bias_im):
                tn(p)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, LRULayer):
            init.copy_(module.params_log, ring_init_params_log(module.state_size, cfg.r_min, cfg.r_max))
        elif isinstance(module, LRURecModel):
            tn(module.item_bias)


class LRURecModel(LRURecPreTrainedModel):
    """LRURec: item embedding, ``num_layers`` LRU blocks, tied output with a learned item bias (left padding)."""

    model_family = "ssm"
    #: loaded in float32 whatever ``dtype`` the rest of the model gets (transformers' ``from_pretrained``): ``lam``'s
    #: ``(nu_log, theta_log)`` and ``gamma_log``. In bfloat16 ``theta_log`` keeps ~3 digits, a phase error of up to
    #: ~0.02 rad per step that a long history compounds (the card's bf16 logits on 64 random length-200 histories:
    #: up to 1.3 off fp32, 0.07 with these in float32; fp16: 0.6, 0.01). ``model.to(dtype)`` still rounds them
    _keep_in_fp32_modules_strict = ["params_log"]

    def __init__(self, config: LRURecConfig):
        super().__init__(config)
        d = config.hidden_size
        self.item_embedding = nn.Embedding(config.n_items, d)               # no padding_idx (official)
        self.emb_dropout = nn.Dropout(config.hidden_dropout)
        self.emb_layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.lru_blocks = nn.ModuleList([LRUBlock(config) for _ in range(config.num_layers)])
        self.item_bias = nn.Parameter(torch.zeros(config.n_items))
        self.post_init()

    def embed(self, item_ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` -> ``LN(Dropout(E[ids])) [B, L, D]``."""
        return self.emb_layer_norm(self.emb_dropout(self.item_embedding(item_ids)))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """Left-padded ``input_ids [B, L]`` + ``attention_mask [B, L]`` -> hidden ``[B, L, D]`` (causal)."""
        mask = attention_mask.bool()
        x = self.embed(input_ids)
        for block in self.lru_blocks:
            x, _, _ = block(x, mask)
        return x

    def item_output(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits = ``hidden E^T + b_item``."""
        return self.item_embedding.weight, self.item_bias

    def state_spec(self, batch_size: int) -> list[StateTensorSpec]:
        shape = (batch_size, self.config.num_layers, self.config.lru_state_size)
        return [
            StateTensorSpec("lru_state_re", shape, doc="real part of each block's complex LRU state h "
                            "[batch, num_layers, N = state_expansion * hidden_size]; 0 for an empty history"),
            StateTensorSpec("lru_state_im", shape, doc="imaginary part of each block's complex LRU state h "
                            "[batch, num_layers, N]; 0 for an empty history"),
        ]

    def _step(self, item_ids: torch.Tensor, state: State,
              timestamps: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """``T >= 1`` new items per row: ``h <- lam h + u`` per block (parallel scan from the state for ``T > 1``)."""
        x = self.embed(item_ids)                                             # [B, T, D]
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32  # the recurrence's dtype (LRULayer)
        s_re = state["lru_state_re"].to(ct)                                  # never rounded to a 16-bit x's dtype
        s_im = state["lru_state_im"].to(ct)
        new_re, new_im = [], []
        for layer, block in enumerate(self.lru_blocks):
            x, h_re, h_im = block(x, None, s_re[:, layer], s_im[:, layer])
            new_re.append(h_re[:, -1])
            new_im.append(h_im[:, -1])
        # float32 state; no cast when it already is (a traced no-op Cast would stay in front of the graph output)
        new_state = {k: v if v.dtype == torch.float32 else v.float()
                     for k, v in (("lru_state_re", torch.stack(new_re, 1)), ("lru_state_im", torch.stack(new_im, 1)))}
        return x, new_state


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official LRURec state dict (``LRU.state_dict()``, complex ``in_proj`` / ``out_proj``) -> this model's names.

    ``embedding.token`` -> ``item_embedding``, ``embedding.layer_norm`` -> ``emb_layer_norm``,
    ``model.lru_blocks.*`` -> ``lru_blocks.*`` (complex ``weight``/``bias`` split into ``*_re``/``*_im``),
    ``model.bias`` -> ``item_bias``. A leading ``module.`` / ``model.`` wrapper prefix on every key is tolerated.
    """
    out: dict[str, torch.Tensor] = {}
    for prefix in ("module.", "model."):           # a wrapper's prefix on every key (official keys: embedding.* has none)
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    for k, v in state_dict.items():
        if k == "embedding.token.weight":
            out["item_embedding.weight"] = v
        elif k.startswith("embedding.layer_norm."):
            out["emb_layer_norm." + k[len("embedding.layer_norm."):]] = v
        elif k == "model.bias":
            out["item_bias"] = v
        elif k.startswith("model.lru_blocks."):
            name = k[len("model."):]
            if torch.is_complex(v):
                base, leaf = name.rsplit(".", 1)
                out[f"{base}.{leaf}_re"] = v.real.contiguous()
                out[f"{base}.{leaf}_im"] = v.imag.contiguous()
            else:
                out[name] = v
        else:
            raise KeyError(f"unexpected key in the official LRURec state dict: {k!r}")
    return out


CONFIG_CLASS = LRURecConfig
MODEL_CLASS = LRURecModel

__all__ = ["LRURecConfig", "LRURecPreTrainedModel", "LRURecModel", "LRULayer", "LRUBlock", "PositionwiseFeedForward",
           "ComplexLinear", "ring_init_params_log", "convert_official_state_dict", "CONFIG_CLASS", "MODEL_CLASS"]
