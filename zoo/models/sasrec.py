"""SASRec (Kang & McAuley, ICDM'18) as implemented in RecBole v1.2.0 (``model/sequential_recommender/sasrec.py``).

Architecture (RecBole defaults, ML-1M: 331,584 parameters with ``n_items=3417``, ``max_seq_length=200``)::

    x = Dropout(LN(E_item[s] + E_pos[0 .. L-1]))         # learned absolute positions, oldest item at position 0
    for each of num_layers post-LN Transformer layers:
        x = LN(x + Dropout(Dense(Attn(x))))                # multi-head self-attention, causal + key-padding mask
        x = LN(x + Dropout(W2 act(W1 x)))                  # position-wise FFN (D -> inner -> D)
    logits = x[len - 1] @ E_item^T                         # tied item embeddings, no bias

Batches are **right-padded** (RecBole); position embeddings are counted from the first slot, so the real items of a row
always occupy positions ``0 .. len-1`` whatever the padded length. Sequences longer than ``max_seq_length`` cannot be
encoded (there are no position embeddings for them): :meth:`SeqRecPreTrainedModel.pad_batch` keeps the most recent
``max_seq_length`` items, exactly like RecBole's data pipeline, and the model is then run on that truncated window.

Attention mask: RecBole adds ``0 / -10000`` to the scores. Here disallowed scores are set to ``finfo(dtype).min`` with
``masked_fill``; in float32 ``exp(-10000 + s)`` already underflows to exactly 0, so both give identical probabilities
(every query sees at least position 0, so no row is fully masked), and ``finfo.min`` stays exact in half precision too.

Parameter names follow RecBole (``item_embedding``, ``position_embedding``, ``LayerNorm``,
``trm_encoder.layer.{i}.multi_head_attention.{query,key,value,dense,LayerNorm}``,
``trm_encoder.layer.{i}.feed_forward.{dense_1,dense_2,LayerNorm}``), so a RecBole state dict maps 1:1.

Stepwise inference: SASRec has no O(1) recurrent state. :meth:`SASRecModel._step` is an explicit **re-encoding** step
(``has_exact_step = False``): the state is the window of the last ``max_seq_length`` item ids and its length, and each
step appends the new items and re-runs the encoder on the window every new position would see in a full forward
(O(window) work per call, O(window) per new item once the window is full). Its logits equal :meth:`forward` on the
same (truncated) history up to float error.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling_utils import (SeqRecConfig, SeqRecPreTrainedModel, State, StateTensorSpec, config_float, config_int,
                              config_rate, window_append, window_state, window_state_spec)

_ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU, as RecBole's ``x * 0.5 * (1 + erf(x / sqrt(2)))``
    "relu": F.relu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


class SASRecConfig(SeqRecConfig):
    """Configuration of :class:`SASRecModel` (RecBole v1.2.0 SASRec defaults).

    Args:
        n_items (`int`, defaults to 3417): rows of the item embedding table, padding row 0 included (ML-1M: 3,417).
        max_seq_length (`int`, defaults to 200): history window ``L`` = number of learned position embeddings.
        hidden_size (`int`, defaults to 64): model width ``D``.
        num_layers (`int`, defaults to 2): number of Transformer layers (RecBole ``n_layers``).
        num_heads (`int`, defaults to 2): attention heads (RecBole ``n_heads``); must divide ``hidden_size``.
        inner_size (`int`, defaults to 256): FFN width.
        hidden_dropout (`float`, defaults to 0.5): dropout on the input embedding, attention output and FFN output
            (RecBole ``hidden_dropout_prob``).
        attn_dropout (`float`, defaults to 0.5): dropout on the attention probabilities (RecBole ``attn_dropout_prob``).
        hidden_act (`str`, defaults to "gelu"): FFN activation, one of gelu, relu, swish, tanh, sigmoid.
        layer_norm_eps (`float`, defaults to 1e-12): LayerNorm epsilon.
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear/embedding weights.
    """

    model_type = "sasrec"

    def __init__(self, n_items: int = 3417, max_seq_length: int = 200, hidden_size: int = 64, num_layers: int = 2,
                 num_heads: int = 2, inner_size: int = 256, hidden_dropout: float = 0.5, attn_dropout: float = 0.5,
                 hidden_act: str = "gelu", layer_norm_eps: float = 1e-12, initializer_range: float = 0.02, **kwargs):
        self.num_heads = config_int(num_heads, "num_heads", lo=None)
        if self.num_heads < 1 or config_int(hidden_size, "hidden_size") % self.num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be a positive multiple of num_heads ({num_heads})")
        if hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(_ACTIVATIONS)}, got {hidden_act!r}")
        self.num_layers = config_int(num_layers, "num_layers")
        self.inner_size = config_int(inner_size, "inner_size")
        self.hidden_dropout = config_rate(hidden_dropout, "hidden_dropout")
        self.attn_dropout = config_rate(attn_dropout, "attn_dropout")
        self.hidden_act = hidden_act
        self.layer_norm_eps = config_float(layer_norm_eps, "layer_norm_eps", gt=0)
        super().__init__(n_items=n_items, max_seq_length=max_seq_length, hidden_size=hidden_size,
                         initializer_range=initializer_range, **kwargs)


class SASRecMultiHeadAttention(nn.Module):
    """RecBole ``MultiHeadAttention``: q/k/v/dense Linear(D, D) with bias, post-LN residual."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = d // config.num_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.attn_dropout = nn.Dropout(config.attn_dropout)
        self.dense = nn.Linear(d, d)
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.out_dropout = nn.Dropout(config.hidden_dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)      # [B, H, L, hd]

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``x [B, L, D]``, ``allowed [B, 1, L, L]`` bool (query i may attend key j) -> ``[B, L, D]``."""
        B, L, D = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # [B, H, L, L]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = self.attn_dropout(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(B, L, D)
        h = self.out_dropout(self.dense(ctx))
        return self.LayerNorm(h + x)


class SASRecFeedForward(nn.Module):
    """RecBole ``FeedForward``: LN(x + Dropout(dense_2(act(dense_1(x)))))."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.dense_1 = nn.Linear(config.hidden_size, config.inner_size)
        self.act = _ACTIVATIONS[config.hidden_act]
        self.dense_2 = nn.Linear(config.inner_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.dense_2(self.act(self.dense_1(x))))
        return self.LayerNorm(h + x)


class SASRecLayer(nn.Module):
    """One post-LN Transformer layer (RecBole ``TransformerLayer``)."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.multi_head_attention = SASRecMultiHeadAttention(config)
        self.feed_forward = SASRecFeedForward(config)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.multi_head_attention(x, allowed))


class SASRecEncoder(nn.Module):
    """Stack of :class:`SASRecLayer` (RecBole ``TransformerEncoder``)."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.layer = nn.ModuleList([SASRecLayer(config) for _ in range(config.num_layers)])

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, allowed)
        return x


class SASRecModel(SeqRecPreTrainedModel):
    """SASRec, RecBole v1.2.0 (see the module docstring). Right padding; re-encoding (not O(1)) :meth:`step`."""

    model_family = "baseline"
    config_class = SASRecConfig
    base_model_prefix = "sasrec"
    padding_side = "right"
    has_exact_step = False
    uses_timestamps = False
    fixed_window = True        # max_seq_length position embeddings
    #: bound on ``windows * window_len**2`` encoded at once by :meth:`_step` once the window is full (memory cap)
    step_chunk_elems = 1 << 22

    def __init__(self, config: SASRecConfig):
        super().__init__(config)
        d = config.hidden_size
        self.item_embedding = nn.Embedding(config.n_items, d, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_seq_length, d)
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.trm_encoder = SASRecEncoder(config)
        self.post_init()

    # ----------------------------------------------------------------- model
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids [B, L]`` (right-padded, ``L <= max_seq_length``) + ``attention_mask`` -> ``[B, L, D]``.

        Position ``t`` attends to real positions ``<= t`` only (causal ``tril`` mask AND key-padding mask).
        """
        B, L = input_ids.shape
        if L > self.config.max_seq_length:
            raise ValueError(f"sequence length {L} exceeds max_seq_length={self.config.max_seq_length} (SASRec has "
                             f"{self.config.max_seq_length} position embeddings); keep the most recent items, e.g. "
                             "with model.pad_batch(histories)")
        positions = torch.arange(L, device=input_ids.device)
        x = self.item_embedding(input_ids) + self.position_embedding(positions)[None]
        x = self.dropout(self.LayerNorm(x))
        causal = torch.ones(L, L, dtype=torch.bool, device=input_ids.device).tril()
        allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]   # [B, 1, L, L]
        return self.trm_encoder(x, allowed)

    def item_output(self) -> tuple[torch.Tensor, None]:
        """Logits = dot products with the (tied) item embeddings, no bias."""
        return self.item_embedding.weight, None

    # ------------------------------------------------------------------ step
    def state_spec(self, batch_size: int) -> list[StateTensorSpec]:
        """Re-encoding state: the most recent ``max_seq_length`` item ids (left-aligned) and their count."""
        return window_state_spec(batch_size, self.config.max_seq_length)

    def _step(self, item_ids: torch.Tensor, state: State,
              timestamps: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """Append ``item_ids [B, T]`` to the window and re-encode; returns ``(hidden [B, T, D], new_state)``.

        New position ``p`` (counted in the whole history) gets the hidden state a full forward computes at the end of
        the window ``history[max(0, p - M + 1) .. p]`` (``M = max_seq_length``), positions counted within that window.
        While the window is not full, one causal encode of (old window + new items) serves every new position; each
        position beyond that gets its own full window (batched, in chunks of at most ``step_chunk_elems``).
        The input state is not modified.
        """
        M = self.config.max_seq_length
        device = item_ids.device
        B, T = item_ids.shape
        ar = torch.arange(M + T, device=device)
        # combined history per row: window[:n] then the T new items, right-padded with 0 to width M + T
        combined, p, total = window_append(state, item_ids, M, self.config.n_items)

        hidden = torch.zeros(B, T, self.config.hidden_size, device=device, dtype=self.item_embedding.weight.dtype)
        short = p < M                                                             # window starts at history start
        if short.any():
            LA = min(int(total.max()), M)
            ids_a = combined[:, :LA]
            mask_a = ar[None, :LA] < total[:, None]
            h_a = self.encode(ids_a, mask_a)                                      # [B, LA, D]
            h_a = h_a.gather(1, p.clamp(max=LA - 1)[..., None].expand(-1, -1, h_a.shape[-1]))
            hidden = torch.where(short[..., None], h_a.to(hidden.dtype), hidden)
        if (~short).any():
            rows, cols = (~short).nonzero(as_tuple=True)                          # each needs a full window
            starts = p[rows, cols] - M + 1
            idx = starts[:, None] + torch.arange(M, device=device)[None]          # [K, M]
            windows = combined[rows[:, None], idx]
            full_mask = torch.ones(M, dtype=torch.bool, device=device)
            chunk = max(1, self.step_chunk_elems // (M * M))
            outs = []
            for s in range(0, windows.shape[0], chunk):
                w = windows[s:s + chunk]
                outs.append(self.encode(w, full_mask[None].expand(w.shape[0], -1))[:, -1])
            hidden = hidden.index_put((rows, cols), torch.cat(outs).to(hidden.dtype))

        # new state: the last M items of each row's combined history, left-aligned
        return hidden, window_state(combined, total, M)


CONFIG_CLASS = SASRecConfig
MODEL_CLASS = SASRecModel

__all__ = ["SASRecConfig", "SASRecModel", "CONFIG_CLASS", "MODEL_CLASS"]
