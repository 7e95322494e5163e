"""GRU4Rec (Hidasi et al., ICLR'16; Tan et al. 2016's improved version) as implemented in RecBole v1.2.0
(``model/sequential_recommender/gru4rec.py``).

Architecture (RecBole defaults, ML-1M: 300,672 parameters with ``n_items=3417``)::

    x = Dropout(E_item[s])                                # [B, L, embedding_size]
    h = GRU(x)                                            # embedding_size -> hidden_size, num_layers, bias=False
    z = dense(h)                                          # Linear(hidden_size -> embedding_size), with bias
    logits = z[len - 1] @ E_item^T                        # tied item embeddings, no bias

Widths: ``config.hidden_size`` is the **GRU** hidden size (128 by default, RecBole's ``hidden_size``);
``config.embedding_size`` (64) is the width of the item table and of what :meth:`GRU4RecModel.encode` returns (the
``dense`` output), i.e. the ``D`` of ``hidden_states`` and of :meth:`score`'s input is ``embedding_size``.

Init (RecBole's ``_init_weights``): item embeddings ``xavier_normal_`` (the padding row too, as RecBole),
``weight_ih_l0`` / ``weight_hh_l0`` ``xavier_uniform_``; everything else keeps PyTorch's default init (RecBole does not
touch the ``dense`` Linear nor GRU layers > 0).

Parameter names follow RecBole (``item_embedding``, ``gru_layers.weight_{ih,hh}_l{k}``, ``dense``), so a RecBole state
dict loads as is.

Batches are **right-padded** (RecBole). The GRU is causal, so the outputs at a row's real positions do not depend on
the padding after them; there is no length limit (``max_seq_length`` is only the training / :meth:`recommend`
window).

Stepwise inference is exact (``has_exact_step = True``): the state is the GRU hidden state of every layer,
``gru_state [B, num_layers, hidden_size]`` float32 (zeros = empty history); :meth:`GRU4RecModel._step` runs the same
GRU from that state over ``T >= 1`` new items. Step logits equal :meth:`forward` on the whole (untruncated) history.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling_utils import SeqRecConfig, SeqRecPreTrainedModel, State, StateTensorSpec, config_int, config_rate


class GRU4RecConfig(SeqRecConfig):
    """Configuration of :class:`GRU4RecModel` (RecBole v1.2.0 GRU4Rec defaults).

    Args:
        n_items (`int`, defaults to 3417): rows of the item embedding table, padding row 0 included (ML-1M: 3,417).
        max_seq_length (`int`, defaults to 200): history window used in training and by :meth:`recommend` (the GRU
            itself has no length limit).
        embedding_size (`int`, defaults to 64): item embedding width = width of the encoder output / scoring space.
        hidden_size (`int`, defaults to 128): GRU hidden size (RecBole ``hidden_size``).
        num_layers (`int`, defaults to 1): stacked GRU layers.
        dropout_prob (`float`, defaults to 0.3): dropout on the item embeddings (RecBole ``emb_dropout``).
        initializer_range (`float`, defaults to 0.02): unused by GRU4Rec's init (kept for the shared config API).
    """

    model_type = "gru4rec"

    def __init__(self, n_items: int = 3417, max_seq_length: int = 200, embedding_size: int = 64,
                 hidden_size: int = 128, num_layers: int = 1, dropout_prob: float = 0.3,
                 initializer_range: float = 0.02, **kwargs):
        self.embedding_size = config_int(embedding_size, "embedding_size")
        self.num_layers = config_int(num_layers, "num_layers")
        self.dropout_prob = config_rate(dropout_prob, "dropout_prob")
        super().__init__(n_items=n_items, max_seq_length=max_seq_length, hidden_size=hidden_size,
                         initializer_range=initializer_range, **kwargs)


class GRU4RecModel(SeqRecPreTrainedModel):
    """GRU4Rec, RecBole v1.2.0 (see the module docstring). Right padding; exact recurrent :meth:`step`."""

    model_family = "baseline"
    config_class = GRU4RecConfig
    base_model_prefix = "gru4rec"
    padding_side = "right"
    has_exact_step = True
    uses_timestamps = False

    def __init__(self, config: GRU4RecConfig):
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.n_items, config.embedding_size, padding_idx=0)
        self.emb_dropout = nn.Dropout(config.dropout_prob)
        self.gru_layers = nn.GRU(input_size=config.embedding_size, hidden_size=config.hidden_size,
                                 num_layers=config.num_layers, bias=False, batch_first=True)
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """RecBole's GRU4Rec init: xavier_normal_ embeddings, xavier_uniform_ layer-0 GRU weights; nothing else."""
        if isinstance(module, nn.Embedding):
            torch.nn.init.xavier_normal_(module.weight)
        elif isinstance(module, nn.GRU):
            torch.nn.init.xavier_uniform_(module.weight_hh_l0)
            torch.nn.init.xavier_uniform_(module.weight_ih_l0)

    # ----------------------------------------------------------------- model
    def _run(self, item_ids: torch.Tensor, h0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T]`` ids from GRU state ``h0 [num_layers, B, H]`` (None = zeros) -> (``[B, T, E]``, ``h_T``)."""
        x = self.emb_dropout(self.item_embedding(item_ids))
        out, h = self.gru_layers(x, h0)
        return self.dense(out), h

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids [B, L]`` (right-padded) -> ``[B, L, embedding_size]`` (causal: position t sees items <= t).

        Like RecBole, the GRU runs over the padded batch without packing; outputs at padding positions are not used.
        """
        return self._run(input_ids, None)[0]

    def item_output(self) -> tuple[torch.Tensor, None]:
        """Logits = dot products of ``[..., embedding_size]`` with the (tied) item embeddings, no bias."""
        return self.item_embedding.weight, None

    # ------------------------------------------------------------------ step
    def state_spec(self, batch_size: int) -> list[StateTensorSpec]:
        """One tensor: the GRU hidden state of every layer (batch first, layers packed)."""
        return [StateTensorSpec("gru_state", (batch_size, self.config.num_layers, self.config.hidden_size),
                                torch.float32, 0.0,
                                "GRU hidden state h_t of each layer after the last item (zeros = empty history)")]

    def _step(self, item_ids: torch.Tensor, state: State,
              timestamps: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """Run the GRU from ``state`` over ``item_ids [B, T]``; returns ``(hidden [B, T, E], new_state)``."""
        w = self.gru_layers.weight_ih_l0
        h0 = state["gru_state"].to(device=w.device, dtype=w.dtype).transpose(0, 1).contiguous()  # [layers, B, H]
        hidden, h = self._run(item_ids.to(w.device), h0)
        return hidden, {"gru_state": h.transpose(0, 1).to(torch.float32).contiguous()}


CONFIG_CLASS = GRU4RecConfig
MODEL_CLASS = GRU4RecModel

__all__ = ["GRU4RecConfig", "GRU4RecModel", "CONFIG_CLASS", "MODEL_CLASS"]
