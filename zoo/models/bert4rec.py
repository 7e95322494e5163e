"""BERT4Rec (Sun et al., CIKM'19) as implemented in RecBole v1.2.0 (``model/sequential_recommender/bert4rec.py`` and
the ``mask_itemseq`` transform, ``data/transform.py::MaskItemSequence``).

Architecture (RecBole defaults, ML-1M: 339,353 parameters with ``n_items=3417``, ``max_seq_length=200``)::

    item table E: n_items + 1 rows; row 0 = padding, rows 1..n_items-1 = items, row n_items = [MASK]
    x = Dropout(LN(E[s] + E_pos[0 .. L-1]))              # learned absolute positions, oldest item at position 0
    for each of num_layers post-LN Transformer layers:    # RecBole TransformerLayer (shared with SASRec's code)
        x = LN(x + Dropout(Dense(Attn(x))))                # BIDIRECTIONAL self-attention, key-padding mask only
        x = LN(x + Dropout(W2 act(W1 x)))
    h = output_ln(GELU(output_ffn(x)))                     # output head
    logits = h @ E[:n_items]^T + output_bias               # tied item embeddings (the [MASK] row excluded) + bias

Parameter names follow RecBole (``item_embedding``, ``position_embedding``, ``LayerNorm``, ``trm_encoder.layer.{i}...``,
``output_ffn``, ``output_ln``, ``output_bias``), so a RecBole state dict loads as is. Init = RecBole's: Linear and
Embedding weights N(0, initializer_range) (padding and [MASK] rows included), biases 0, LayerNorm (1, 0),
``output_bias`` 0.

The [MASK] id
-------------
``config.n_items`` counts padding + real items (as for every zoo model) and the base class rejects input ids
``>= n_items``; the [MASK] id ``n_items`` is therefore **never passed by users**: the model inserts it itself.

Inference (``encode``, used by ``forward`` / ``predict`` / ``recommend`` / ``step``)
------------------------------------------------------------------------------------
To score the next item after a history ``s_0 .. s_{n-1}`` the model encodes the history with a [MASK] appended and
reads the hidden state at the [MASK]. Two layouts (``config.inference_mask``):

* ``"recbole"`` (default) -- exactly RecBole v1.2.0 ``full_sort_predict`` / ``reconstruct_test_data``: the mask is put
  at index ``n`` of the padded row and the **first column is dropped** for every row, so the encoder sees
  ``s_1 .. s_{n-1}, [MASK]`` at positions ``0 .. n-1`` (the oldest item of the window is always dropped, not only
  when the window is full; a one-item history is encoded as ``[MASK]`` alone, so its scores do not depend on the
  item). This mirrors RecBole's fine-tune training pattern (mask at position ``n-1`` after ``n-1`` items).
* ``"append"`` -- ``s_0 .. s_{n-1}, [MASK]`` at positions ``0 .. n``; only when the window is full (``n ==
  max_seq_length``, no position left) is the oldest item dropped.

Either way :meth:`BERT4RecModel.encode` returns ``[B, L, D]`` in which **position ``n-1`` (each row's last real index)
holds the hidden state of the [MASK]**, so the base class' last-position readout gives the next-item logits unchanged.
The other positions ``t < n-1`` hold the bidirectional hidden state of history item ``s_{t+1}`` (in both layouts;
``s_0``'s state is not returned): they are **not** next-item predictions for prefixes (the model is bidirectional; a
prefix needs its own encode, see ``step``), so ``score(hidden_states)`` at every position is meaningless for BERT4Rec.

Training (``forward`` with ``labels``)
--------------------------------------
* ``labels [B, L]`` (all-position form, what ``zoo.train`` passes): RecBole's **masked-item (Cloze) objective**
  replaces next-item CE. The labels are *not* used as per-position targets: the training sequence is the input window
  plus the row's last label (``labels[r, n-1]``, the item after the window, appended -- ``config.append_last_label``;
  the oldest item is dropped if that overflows ``max_seq_length``), so every training item is reconstructed at some
  point -- but a user's first one when the number of training pairs is a multiple of ``max_seq_length`` (the leftmost
  window is then full and its appended label drops it: on ML-1M the users with 201, 401, ... training items). Then,
  per batch, with probability ``ft_ratio`` only the last item of every row is masked (RecBole ``_append_mask_last``),
  otherwise every real item is masked independently with probability ``mask_ratio``; as in
  RecBole only the last ``max(1, int(mask_ratio * max_seq_length))`` masked items of a row are predicted (the others
  stay masked in the input). Loss = mean CE over ``n_items`` logits (+ ``output_bias``) at the predicted slots.
  Masks come from torch's global RNG (seed with ``torch.manual_seed``).
  ``ft_prefix_sampling`` (default True): RecBole trains on every *prefix* of a user's sequence as its own sample, so
  its last-item ("ft") batches mask the last item of prefixes of every length; the zoo trainer has one window per
  user per epoch, whose last item is the same every epoch (a fixed set of targets that a small model simply
  memorises). With this flag an ft batch therefore cuts each row to a uniformly drawn prefix (length 1 .. n) and masks
  that prefix's last item, i.e. draws one RecBole sample per window. Random-mask batches use the whole window.
  Deviation from RecBole: RecBole's ``targets = masked_index > 0`` silently drops a masked item at position 0 from the
  loss; it is kept here.
  In this path ``logits`` is ``None`` in training mode (not computed, saves an encode) and the inference logits in
  eval mode; ``hidden_states`` are those of the masked sequence.
* ``labels [B]`` (last-position form): CE of the inference logits (mask appended as above) against the next item --
  RecBole's "fine-tune" objective on the real next item.

Stepwise inference: a bidirectional encoder has no recurrent state (``has_exact_step = False``). :meth:`_step` is a
**window re-encode**: the state is the window of the last ``max_seq_length`` item ids and its length (as SASRec's), and
every new item triggers a full encode of its own window (O(window) work per item). Step logits equal :meth:`forward`
on the same (truncated) history up to float error.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling_utils import (SeqRecConfig, SeqRecOutput, SeqRecPreTrainedModel, State, StateTensorSpec, config_bool,
                              config_float, config_int, config_rate, window_append, window_state, window_state_spec)
from .sasrec import _ACTIVATIONS, SASRecEncoder

INFERENCE_MASK_MODES = ("recbole", "append")


class BERT4RecConfig(SeqRecConfig):
    """Configuration of :class:`BERT4RecModel` (RecBole v1.2.0 BERT4Rec defaults).

    Args:
        n_items (`int`, defaults to 3417): padding + real items (ML-1M: 3,417); the embedding table has one more row,
            the [MASK] token (id ``n_items``), which users never pass.
        max_seq_length (`int`, defaults to 200): window ``L`` = number of learned position embeddings; at least 2 (the
            window holds the [MASK] and, with 1, no item of the history: every history would get the same scores).
        hidden_size (`int`, defaults to 64): model width ``D``.
        num_layers (`int`, defaults to 2): Transformer layers (RecBole ``n_layers``).
        num_heads (`int`, defaults to 2): attention heads (RecBole ``n_heads``); must divide ``hidden_size``.
        inner_size (`int`, defaults to 256): FFN width.
        hidden_dropout (`float`, defaults to 0.2): RecBole ``hidden_dropout_prob``.
        attn_dropout (`float`, defaults to 0.2): RecBole ``attn_dropout_prob``.
        hidden_act (`str`, defaults to "gelu"): FFN activation (the output head always uses exact GELU, as RecBole).
        layer_norm_eps (`float`, defaults to 1e-12): LayerNorm epsilon.
        mask_ratio (`float`, defaults to 0.2): per-item masking probability in training.
        ft_ratio (`float`, defaults to 0.5): per-batch probability of masking only the last item instead.
        inference_mask (`str`, defaults to "recbole"): where the [MASK] goes at inference, "recbole" (RecBole's
            ``reconstruct_test_data``: always drop the oldest item, mask at index ``n-1``) or "append" (mask at index
            ``n``, drop the oldest item only when the window is full); see the module docstring.
        append_last_label (`bool`, defaults to True): in all-position training, append each row's last label to the
            sequence that is masked (so the final training item is reconstructed too).
        ft_prefix_sampling (`bool`, defaults to True): in a last-item ("ft") batch, cut each row to a uniformly drawn
            prefix and mask that prefix's last item (RecBole draws its samples from all prefixes; see the module doc).
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear/embedding weights.
    """

    model_type = "bert4rec"

    def __init__(self, n_items: int = 3417, max_seq_length: int = 200, hidden_size: int = 64, num_layers: int = 2,
                 num_heads: int = 2, inner_size: int = 256, hidden_dropout: float = 0.2, attn_dropout: float = 0.2,
                 hidden_act: str = "gelu", layer_norm_eps: float = 1e-12, mask_ratio: float = 0.2,
                 ft_ratio: float = 0.5, inference_mask: str = "recbole", append_last_label: bool = True,
                 ft_prefix_sampling: bool = True, initializer_range: float = 0.02, **kwargs):
        self.num_heads = config_int(num_heads, "num_heads", lo=None)
        if self.num_heads < 1 or config_int(hidden_size, "hidden_size") % self.num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be a positive multiple of num_heads ({num_heads})")
        if hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(_ACTIVATIONS)}, got {hidden_act!r}")
        config_int(max_seq_length, "max_seq_length", lo=2, what=" (the window holds the [MASK] and at least one item)")
        if inference_mask not in INFERENCE_MASK_MODES:
            raise ValueError(f"inference_mask must be one of {INFERENCE_MASK_MODES}, got {inference_mask!r}")
        self.num_layers = config_int(num_layers, "num_layers")
        self.inner_size = config_int(inner_size, "inner_size")
        self.hidden_dropout = config_rate(hidden_dropout, "hidden_dropout")
        self.attn_dropout = config_rate(attn_dropout, "attn_dropout")
        self.hidden_act = hidden_act
        self.layer_norm_eps = config_float(layer_norm_eps, "layer_norm_eps", gt=0)
        self.mask_ratio = config_rate(mask_ratio, "mask_ratio", "(0, 1]")    # 0: nothing to predict
        self.ft_ratio = config_rate(ft_ratio, "ft_ratio", "[0, 1]")
        self.inference_mask = inference_mask
        self.append_last_label = config_bool(append_last_label, "append_last_label")
        self.ft_prefix_sampling = config_bool(ft_prefix_sampling, "ft_prefix_sampling")
        super().__init__(n_items=n_items, max_seq_length=max_seq_length, hidden_size=hidden_size,
                         initializer_range=initializer_range, **kwargs)


class BERT4RecModel(SeqRecPreTrainedModel):
    """BERT4Rec, RecBole v1.2.0 (see the module docstring). Right padding; window re-encoding :meth:`step`."""

    model_family = "baseline"
    config_class = BERT4RecConfig
    base_model_prefix = "bert4rec"
    padding_side = "right"
    has_exact_step = False
    uses_timestamps = False
    fixed_window = True        # max_seq_length position embeddings
    training_objective = "cloze"   # forward's masked-item objective: zoo.train gives it its checks and description
    #: bound on ``windows * window_len**2`` encoded at once by :meth:`_step` (memory cap)
    step_chunk_elems = 1 << 22

    def __init__(self, config: BERT4RecConfig):
        super().__init__(config)
        d = config.hidden_size
        self.item_embedding = nn.Embedding(config.n_items + 1, d, padding_idx=0)   # last row: [MASK]
        self.position_embedding = nn.Embedding(config.max_seq_length, d)
        self.trm_encoder = SASRecEncoder(config)
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.output_ffn = nn.Linear(d, d)
        self.output_gelu = nn.GELU()
        self.output_ln = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.output_bias = nn.Parameter(torch.zeros(config.n_items))
        self.post_init()

    @property
    def mask_token(self) -> int:
        """The [MASK] id: the table's last row, ``n_items`` (moves with it when the catalogue grows)."""
        return int(self.config.n_items)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, BERT4RecModel):
            torch.nn.init.zeros_(module.output_bias)

    # ----------------------------------------------------------------- model
    def _check_length(self, L: int) -> None:
        if L > self.config.max_seq_length:
            raise ValueError(f"sequence length {L} exceeds max_seq_length={self.config.max_seq_length} (BERT4Rec has "
                             f"{self.config.max_seq_length} position embeddings); keep the most recent items, e.g. "
                             "with model.pad_batch(histories)")

    def encode_raw(self, item_seq: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """RecBole ``BERT4Rec.forward``: ``item_seq [B, L]`` (may hold the [MASK] id) -> ``[B, L, D]`` after the head.

        Bidirectional attention over the positions where ``attention_mask`` is true (the [MASK] slots included).
        """
        B, L = item_seq.shape
        self._check_length(L)
        positions = torch.arange(L, device=item_seq.device)
        x = self.item_embedding(item_seq) + self.position_embedding(positions)[None]
        x = self.dropout(self.LayerNorm(x))
        allowed = attention_mask.bool()[:, None, None, :]                                 # [B, 1, 1, L]
        x = self.trm_encoder(x, allowed)
        return self.output_ln(self.output_gelu(self.output_ffn(x)))

    def append_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded history ``[B, L]`` -> ``(ids', mask', shift [B])`` with the [MASK] appended (see module doc).

        ``ids'[r, n_r - 1 + shift_r]`` is the [MASK] of row ``r`` (``n_r`` = its length): ``shift`` is 0 in "recbole"
        layout (oldest item dropped) and in "append" layout for full windows, 1 otherwise.
        """
        B, L = input_ids.shape
        M = self.config.max_seq_length
        self._check_length(L)
        n = attention_mask.long().sum(1)                                                   # [B]
        ar = torch.arange(L + 1, device=input_ids.device)
        ext = torch.cat([input_ids, torch.zeros_like(input_ids[:, :1])], 1)                # [B, L + 1]
        ext = ext.scatter(1, n[:, None], torch.full_like(n[:, None], self.mask_token))     # [MASK] at index n
        ext_len = n + 1
        if self.config.inference_mask == "recbole":
            drop = torch.ones_like(n, dtype=torch.bool)
        else:
            drop = ext_len > M
        shift = (~drop).long()
        # static width (a function of L only, so traced/exported graphs serve every batch): the longest possible row;
        # slots past a row's length are padding that attention ignores, so the real positions are unchanged
        width = L if self.config.inference_mask == "recbole" else min(L + 1, M)
        idx = (ar[None, :width] + drop.long()[:, None]).clamp(max=L)
        ids = ext.gather(1, idx)
        mask = ar[None, :width] < (ext_len - drop.long())[:, None]
        ids = torch.where(mask, ids, torch.zeros_like(ids))
        return ids, mask, shift

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """History ``[B, L]`` -> ``[B, L, D]`` whose position ``n_r - 1`` holds the hidden state of the [MASK] appended
        after row ``r``'s last item (the next-item representation); other positions are the history items' states."""
        B, L = input_ids.shape
        ids, mask, shift = self.append_mask(input_ids, attention_mask)
        h = self.encode_raw(ids, mask)                                                     # [B, W, D]
        idx = (torch.arange(L, device=h.device)[None] + shift[:, None]).clamp(max=h.shape[1] - 1)
        return h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))

    def item_output(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits = dot products with the item embeddings (no [MASK] row) + output bias: ``(E[:n_items], b)``."""
        return self.item_embedding.weight[: self.config.n_items], self.output_bias

    # -------------------------------------------------------------- training
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, timestamps: torch.Tensor | None = None,
                negatives=None, **kwargs) -> SeqRecOutput:
        """As :meth:`SeqRecPreTrainedModel.forward`; ``labels [B, L]`` switch to the masked-item objective.

        See the module docstring: with ``labels [B, L]`` the loss is RecBole's Cloze loss on (window + last label),
        ``logits`` is None in training mode, and ``hidden_states`` are those of the masked sequence.
        """
        if not (isinstance(labels, torch.Tensor) and labels.dim() == 2):
            return super().forward(input_ids, attention_mask, labels=labels, timestamps=timestamps,
                                   negatives=negatives, **kwargs)
        return_dict = self._forward_kwargs(kwargs)
        ids, mask, _ = self.check_inputs(input_ids, attention_mask, timestamps)
        labels = self.check_labels(labels, ids.shape).to(ids.device)
        seq, seq_mask = self.training_sequence(ids, mask, labels)
        masked, target, seq_mask = self.mask_items(seq, seq_mask)
        hidden = self.encode_raw(masked, seq_mask)
        sel = target > 0
        if sel.any():
            loss = self.item_loss(hidden[sel], target[sel], negatives)
        else:  # no slot masked anywhere in the batch (tiny batches only): a zero loss that keeps the graph
            loss = hidden.sum() * 0.0
        logits = None
        if not self.training and negatives is None:
            logits = self.score(self._at_last(self.encode(ids, mask), mask))
        return self._output(SeqRecOutput(loss=loss, logits=logits, hidden_states=hidden), return_dict)

    def training_sequence(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Window ``ids [B, L]`` + each row's last label (if > 0 and ``append_last_label``) -> right-padded sequence
        of at most ``max_seq_length`` items (the oldest item is dropped when appending overflows)."""
        B, L = ids.shape
        M = self.config.max_seq_length
        n = mask.long().sum(1)
        if not self.config.append_last_label:
            return ids, mask
        rows = torch.arange(B, device=ids.device)
        last = labels[rows, n - 1]                                                         # [B]
        if int(last.max()) >= self.config.n_items:
            raise ValueError(f"labels hold item index {int(last.max())}, out of range [0, {self.config.n_items - 1}]")
        last = last.clamp(min=0)                                                           # <= 0: no target
        ext = torch.cat([ids, torch.zeros_like(ids[:, :1])], 1).scatter(1, n[:, None], last[:, None])
        ext_len = n + (last > 0).long()
        drop = (ext_len > M).long()
        new_len = ext_len - drop
        width = int(new_len.max())
        ar = torch.arange(width, device=ids.device)
        seq = ext.gather(1, (ar[None] + drop[:, None]).clamp(max=L))
        seq_mask = ar[None] < new_len[:, None]
        return torch.where(seq_mask, seq, torch.zeros_like(seq)), seq_mask

    def mask_items(self, seq: torch.Tensor, seq_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RecBole ``MaskItemSequence`` on right-padded ``seq [B, L]``: returns ``(masked input, target, mask)``;
        ``target`` = the original item at the slots that are predicted, 0 elsewhere; ``mask`` = the attention mask of
        the returned input (shorter than ``seq_mask`` for rows cut to a prefix by ``ft_prefix_sampling``)."""
        B, L = seq.shape
        n = seq_mask.long().sum(1)
        rows = torch.arange(B, device=seq.device)
        if float(torch.rand(())) < self.config.ft_ratio:      # one draw per batch: mask only the last item
            if self.config.ft_prefix_sampling:                 # ... of a uniformly drawn prefix of each row
                n = (torch.rand(B, device=seq.device) * n).long().clamp(max=n - 1) + 1
                seq_mask = torch.arange(L, device=seq.device)[None] < n[:, None]
                seq = torch.where(seq_mask, seq, torch.zeros_like(seq))
            masked = torch.zeros_like(seq_mask)
            masked[rows, n - 1] = True
            predicted = masked
        else:
            masked = (torch.rand(seq.shape, device=seq.device) < self.config.mask_ratio) & seq_mask
            cap = max(1, int(self.config.mask_ratio * self.config.max_seq_length))
            from_right = masked.flip(1).long().cumsum(1).flip(1)                           # masked slots at >= t
            predicted = masked & (from_right <= cap)
        inp = torch.where(masked, torch.full_like(seq, self.mask_token), seq)
        target = torch.where(predicted, seq, torch.zeros_like(seq))
        return inp, target, seq_mask

    # ------------------------------------------------------------------ step
    def state_spec(self, batch_size: int) -> list[StateTensorSpec]:
        """Re-encoding state: the most recent ``max_seq_length`` item ids (left-aligned) and their count."""
        return window_state_spec(batch_size, self.config.max_seq_length)

    def _step(self, item_ids: torch.Tensor, state: State,
              timestamps: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """Append ``item_ids [B, T]`` to the window; each new position is scored by re-encoding its own window.

        New position ``p`` (counted in the whole history) gets the hidden state :meth:`forward` computes for the
        history ``history[max(0, p - M + 1) .. p]`` (``M = max_seq_length``). All ``B * T`` windows are encoded in
        batches of at most ``step_chunk_elems / M**2`` windows. The input state is not modified.
        """
        M = self.config.max_seq_length
        device = item_ids.device
        B, T = item_ids.shape
        W = M + T
        combined, p, total = window_append(state, item_ids, M, self.config.n_items)

        # one window per new position: history[start .. p], left-aligned, right-padded to width Lw
        wlen = (p + 1).clamp(max=M).reshape(-1)                                             # [K]
        start = (p + 1).reshape(-1) - wlen
        rows = torch.arange(B, device=device).repeat_interleave(T)
        Lw = int(wlen.max())
        cols = (start[:, None] + torch.arange(Lw, device=device)[None]).clamp(max=W - 1)
        wmask = torch.arange(Lw, device=device)[None] < wlen[:, None]
        windows = torch.where(wmask, combined[rows[:, None], cols], torch.zeros_like(cols))
        chunk = max(1, self.step_chunk_elems // (Lw * Lw))
        outs = []
        for s in range(0, windows.shape[0], chunk):
            w, m, ln = windows[s:s + chunk], wmask[s:s + chunk], wlen[s:s + chunk]
            h = self.encode(w, m)
            outs.append(h[torch.arange(w.shape[0], device=device), ln - 1])
        hidden = torch.cat(outs).view(B, T, -1)

        return hidden, window_state(combined, total, M)


CONFIG_CLASS = BERT4RecConfig
MODEL_CLASS = BERT4RecModel

__all__ = ["BERT4RecConfig", "BERT4RecModel", "CONFIG_CLASS", "MODEL_CLASS"]
