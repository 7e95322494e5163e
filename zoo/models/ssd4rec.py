"""SSD4Rec (Zhang et al., arXiv 2409.01192): bidirectional Mamba-2 (SSD) sequential recommender, HF-native.

Follows the official code (ZhangYifeng1995/SSD4Rec @ bdbfe51, ``ssd4rec.py`` / ``custom_utils.py``; mamba-ssm
2.2.2) as described, verified from that code, in ``shared/reference/models.md`` §5 and §14.3::

    x = LN(Dropout(E_item[s]))                       (when norm_embedding; eps 1e-12; E has NO padding_idx: row 0 is the
                                                      learned "mask" token of training-time item masking)
    per layer (one Mamba2 module, shared by both directions):
        f = Mamba2(x)                                 causal, oldest -> newest
        b = Mamba2(reverse_each_sequence(x))          same weights; the output is NOT flipped back
        h = Dropout(LN(f + β·b + x))                  β = 0.1
        x = Dropout(LN(W2 Dropout(GELU(W1 h)) + h))   inner 4D
    logits = x[len - 1] @ E_itemᵀ  (tied), cross-entropy
    training only: each real item id is replaced by 0 (the mask token) with probability mask_ratio (0.1 on ML-1M)

Mamba2 = ``mamba_ssm.modules.mamba2.Mamba2`` defaults (ngroups 1, bias False, conv_bias True, SiLU conv, RMSNormGated
eps 1e-5 with norm_before_gate False, A_log = log U[1, 16], dt_bias = softplus^-1(logU[1e-3, 0.1]), D = 1 per head,
chunk 256 there; any chunk size gives the same result), in pure PyTorch (:mod:`zoo.ops.ssd`).

**Packing vs padding.** The official code packs a batch into one padding-free row with ``seq_idx`` ("sequence
registers") and reverses every segment in place (``flip_index``). Here batches are **right-padded** and the backward
pass reverses each row's real part in place (pads stay at the end). Both directions are causal scans, so real slots
never see pads and every real slot gets exactly the packed computation (per-segment ``seq_idx`` isolation = separate
rows; :func:`zoo.ops.ssd.ssd_chunk_scan_ref` supports ``seq_idx`` for a packed implementation). The official code also
leaves prefixes **untruncated** (``var_len: True``); here the history window is ``max_seq_length`` (default 200, the
config's unused ``MAX_ITEM_LIST_LENGTH``): set it to at least the longest history (ML-1M prefixes reach ~2,276 items,
reference §14.3) to reproduce var_len.

The representation is bidirectional: the hidden state at ``t < len - 1`` has seen later items, so only the readout at
``len - 1`` is a prediction. Consequences (shared with TiM4Rec, :class:`~zoo.models.tim4rec.WindowRecomputeMixin`):

* ``has_exact_step = False``: the step keeps the last ``max_seq_length`` item ids (``window_ids``, ``window_len``) and
  re-runs the whole model on each new item's window (exact w.r.t. :meth:`forward` on that window);
* all-position ``labels [B, L]`` use the prefix objective (each labelled position its own prefix sample, RecBole's data
  augmentation) instead of the leaking all-position loss.

Parameter count, official ML-1M config (``n_items = 3417``, D 256, N 64, headdim 16 → H 32, 2 layers): **2,804,416** =
embedding 874,752 + embedding LN 512 + 2 × 964,576 per layer (Mamba2 437,984 = in_proj 256×1184 303,104 + conv
(640×4 + 640) 3,200 + A_log/dt_bias/D 96 + RMSNorm 512 + out_proj 512×256 131,072; LN 512; FFN 525,568; FFN LN 512).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modeling_utils import (SeqRecConfig, SeqRecPreTrainedModel, StateTensorSpec, config_bool, config_dt_init,
                              config_float, config_int, config_range, config_rate, derived_field)
from .tim4rec import SSDCore, WindowRecomputeMixin, ssd_head_count, ssd_heads


class SSD4RecConfig(SeqRecConfig):
    r"""Configuration of :class:`SSD4RecModel` (defaults = the official ML-1M ``config.yaml``).

    Args:
        n_items (`int`, 3417): item table rows; row 0 is padding here and the mask token in training.
        max_seq_length (`int`, 200): history window used by :meth:`pad_batch`/``recommend``/``step`` (the model has no
            length limit; the official code is untruncated).
        hidden_size (`int`, 256): model width ``D``.
        num_layers (`int`, 2): Bi-SSD layers.
        d_state (`int`, 64): SSD state size ``N``.
        d_conv (`int`, 4): causal conv kernel ``K``.
        expand (`int`, 2): inner width ``E = expand * D``.
        head_dim (`int`, 16): SSD head dim ``P``; heads ``H = E / P`` (ML-1M: 32).
        chunk_size (`int`, 32): SSD chunk length. Speed/rounding only, the math is the same for any value; Mamba2's
            default is 256, but the pure-PyTorch chunked scan is ~5x faster on CPU with 32 (ML-1M config,
            batch 32 x 200: ~7 s vs ~35 s per training step on one loaded CPU thread).
        dropout_prob (`float`, 0.2): embedding, post-LN and FFN dropout.
        norm_embedding (`bool`, True): LN(Dropout(E)) on the embeddings (False: raw embeddings).
        beta (`float`, 0.1): weight of the backward pass.
        mask_ratio (`float`, 0.1): training-time probability of replacing an item by the mask token 0.
        inner_size (`int` or None): FFN width; None = 4 * D, resolved to that int when the config is built and saved
            so: a later ``hidden_size`` override (``from_pretrained(path, hidden_size=32)``) does not re-derive it
            (give ``inner_size`` with it).
        layer_norm_eps (`float`, 1e-12): LayerNorm epsilon.
        rmsnorm_eps (`float`, 1e-5): Mamba2's gated RMSNorm epsilon.
        A_init_range, dt_min, dt_max, dt_init_floor: Mamba2's init of A_log and dt_bias (``0 < lo <= hi``,
            ``0 < dt_min <= dt_max``).
        initializer_range (`float`, 0.02): std of linear/embedding init.
    Derived (recomputed whenever read; a value given for one must agree): d_inner = expand * hidden_size, n_heads =
    d_inner / head_dim (both saved in ``config.json`` for its readers); norm_eps = rmsnorm_eps and activation = "silu"
    (not saved).
    """

    model_type = "ssd4rec"
    derived_fields = ("d_inner", "n_heads", "norm_eps", "activation")

    def __init__(self, n_items=3417, max_seq_length=200, hidden_size=256, num_layers=2, d_state=64, d_conv=4,
                 expand=2, head_dim=16, chunk_size=32, dropout_prob=0.2, norm_embedding=True, beta=0.1,
                 mask_ratio=0.1, inner_size=None, layer_norm_eps=1e-12, rmsnorm_eps=1e-5, A_init_range=(1.0, 16.0),
                 dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4, initializer_range=0.02, **kwargs):
        hidden = config_int(hidden_size, "hidden_size")
        self.expand = config_int(expand, "expand")
        self.head_dim = config_int(head_dim, "head_dim")
        ssd_head_count(self.expand, hidden, self.head_dim)
        self.mask_ratio = config_rate(mask_ratio, "mask_ratio")       # 1 would mask every item
        self.num_layers = config_int(num_layers, "num_layers")
        self.d_state = config_int(d_state, "d_state")
        self.d_conv = config_int(d_conv, "d_conv")
        self.chunk_size = config_int(chunk_size, "chunk_size")
        self.dropout_prob = config_rate(dropout_prob, "dropout_prob")
        self.norm_embedding = config_bool(norm_embedding, "norm_embedding")
        self.beta = config_float(beta, "beta", ge=0)
        self.inner_size = config_int(inner_size, "inner_size") if inner_size is not None else 4 * hidden
        self.layer_norm_eps = config_float(layer_norm_eps, "layer_norm_eps", gt=0)
        self.rmsnorm_eps = config_float(rmsnorm_eps, "rmsnorm_eps", gt=0)
        self.A_init_range = config_range(A_init_range, "A_init_range")
        self.dt_min, self.dt_max, self.dt_init_floor = config_dt_init(dt_min, dt_max, dt_init_floor)
        super().__init__(n_items=n_items, max_seq_length=max_seq_length, hidden_size=hidden_size,
                         initializer_range=initializer_range, **kwargs)

    d_inner = derived_field("d_inner", "expand * hidden_size", lambda c: c.expand * c.hidden_size,
                            "Inner width ``E = expand * hidden_size`` (derived: recomputed, never read back).")
    n_heads = derived_field("n_heads", "expand * hidden_size // head_dim", lambda c: ssd_heads(c),
                            "SSD heads ``H = E / head_dim`` (derived: recomputed, never read back).")
    norm_eps = derived_field("norm_eps", "rmsnorm_eps", lambda c: c.rmsnorm_eps,
                             "The gated RMSNorm eps :class:`~zoo.models.tim4rec.SSDCore` reads (= ``rmsnorm_eps``).")
    activation = derived_field("activation", "'silu'", lambda c: "silu",
                               "Mamba2's conv activation (the ``causal_conv1d`` path): always SiLU.")

    def to_dict(self):
        out = super().to_dict()
        out.pop("norm_eps", None)      # derived, and named otherwise in config.json (rmsnorm_eps): not saved
        out.pop("activation", None)
        return out


class Mamba2(SSDCore):
    """``mamba_ssm`` Mamba2 (no projection biases, SiLU conv, gated RMSNorm eps ``rmsnorm_eps``)."""

    def __init__(self, config: SSD4RecConfig):
        super().__init__(config, proj_bias=False, norm_eps=config.rmsnorm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        z, x, Bm, Cm, dt, _ = self.project(hidden)
        return self.scan_and_out(z, x, Bm, Cm, dt)[0]


class FeedForward(nn.Module):
    """Dropout(LN(W2 Dropout(GELU(W1 h)) + h))."""

    def __init__(self, config: SSD4RecConfig):
        super().__init__()
        self.w_1 = nn.Linear(config.hidden_size, config.inner_size)
        self.w_2 = nn.Linear(config.inner_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout_prob)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.layer_norm(self.w_2(self.dropout(F.gelu(self.w_1(h)))) + h))


class BiSSDLayer(nn.Module):
    """One shared Mamba2 over the sequence and over its per-row reversal; h = Dropout(LN(f + β·b + x)); FFN."""

    def __init__(self, config: SSD4RecConfig):
        super().__init__()
        self.beta = config.beta
        self.mamba = Mamba2(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout_prob)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, rev_index: torch.Tensor) -> torch.Tensor:
        """``x [B, L, D]``; ``rev_index [B, L]`` reverses each row's real part in place (pads stay)."""
        B = x.shape[0]
        x_rev = x.gather(1, rev_index.unsqueeze(-1).expand_as(x))              # [B, L, D]
        fb = self.mamba(torch.cat([x, x_rev], dim=0))                           # both directions in one pass
        f, b = fb[:B], fb[B:]                                                   # b is NOT flipped back
        h = self.dropout(self.layer_norm(f + self.beta * b + x))
        return self.ffn(h)


class SSD4RecPreTrainedModel(SeqRecPreTrainedModel):
    config_class = SSD4RecConfig
    base_model_prefix = "ssd4rec"
    padding_side = "right"
    has_exact_step = False
    uses_timestamps = False

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # Linear/Embedding N(0, 0.02) (incl. Mamba2 in/out proj), biases 0, LN (1, 0)
        if isinstance(module, SSDCore):
            module.reset_ssm_parameters(self.config)


class SSD4RecModel(WindowRecomputeMixin, SSD4RecPreTrainedModel):
    """SSD4Rec: ``input_ids [B, L]`` (right-padded) -> hidden ``[B, L, D]`` (bidirectional) -> logits at ``len - 1``."""

    model_family = "ssm"
    window_timestamps = False

    def __init__(self, config: SSD4RecConfig):
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.n_items, config.hidden_size)   # no padding_idx: 0 = mask token
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm_embedding else None
        self.dropout = nn.Dropout(config.dropout_prob)
        self.layers = nn.ModuleList(BiSSDLayer(config) for _ in range(config.num_layers))
        self.post_init()

    @staticmethod
    def reverse_index(attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` gather index reversing each row's real (right-padded) part: ``t -> len-1-t`` for ``t < len``."""
        L = attention_mask.shape[1]
        n = attention_mask.long().sum(1, keepdim=True)
        ar = torch.arange(L, device=attention_mask.device)[None]
        return torch.where(ar < n, n - 1 - ar, ar)

    def encode(self, input_ids, attention_mask, timestamps=None):
        ids = input_ids
        if self.training and self.config.mask_ratio > 0:
            drop = (torch.rand(ids.shape, device=ids.device) < self.config.mask_ratio) & attention_mask
            ids = ids.masked_fill(drop, 0)
        x = self.item_embedding(ids)                                            # [B, L, D]
        if self.layer_norm is not None:
            x = self.layer_norm(self.dropout(x))
        rev = self.reverse_index(attention_mask)
        for layer in self.layers:
            x = layer(x, rev)
        return x

    def item_output(self) -> tuple[torch.Tensor, None]:
        return self.item_embedding.weight, None                                # tied item embeddings, no bias

    def state_spec(self, batch_size: int) -> list[StateTensorSpec]:
        return self.window_state_spec(batch_size)


CONFIG_CLASS = SSD4RecConfig
MODEL_CLASS = SSD4RecModel

__all__ = ["SSD4RecConfig", "SSD4RecModel", "SSD4RecPreTrainedModel", "BiSSDLayer", "Mamba2"]
