"""Tests of zoo.models.bert4rec (RecBole v1.2.0 BERT4Rec)."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zoo  # noqa: E402,F401  (registers the models with AutoConfig / AutoModel)
from equivalence import check_step_equivalence, check_window_step_equivalence  # noqa: E402
from zoo.modeling_utils import SeqRecOutput  # noqa: E402
from zoo.models import MODELS  # noqa: E402
from zoo.models.bert4rec import BERT4RecConfig, BERT4RecModel  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def small(**kw) -> BERT4RecModel:
    cfg = dict(n_items=50, max_seq_length=48, hidden_size=16, num_heads=2, inner_size=32, num_layers=2)
    cfg.update(kw)
    torch.manual_seed(0)
    model = BERT4RecModel(BERT4RecConfig(**cfg)).eval()
    with torch.no_grad():  # a non-zero output bias, so that scoring paths that forget it fail
        model.output_bias.normal_(0, 0.1)
    return model


def test_registered():
    assert MODELS["bert4rec"] == (BERT4RecConfig, BERT4RecModel)


# ------------------------------------------------------------------ (a) step == forward on the window
class _PrefixForward:
    """Adapter for tests/equivalence.py: a bidirectional model's ``hidden_states[:, t]`` are not next-item states,
    so this wrapper's forward puts at position t the [MASK] state of a forward over the prefix ``[0 .. t]``."""

    def __init__(self, model):
        self.model = model
        self.config, self.padding_side = model.config, model.padding_side

    def eval(self):
        self.model.eval()
        return self

    def __getattr__(self, name):  # pad_batch, init_state, step, score
        return getattr(self.model, name)

    def __call__(self, ids, mask, timestamps=None):
        B, L = ids.shape
        cols = []
        for t in range(L):
            sub_ids, sub_mask = ids[:, :t + 1], mask[:, :t + 1]
            h = self.model(sub_ids, sub_mask).hidden_states
            cols.append(h[torch.arange(B), sub_mask.long().sum(1) - 1])
        return SeqRecOutput(hidden_states=torch.stack(cols, 1))


@pytest.mark.parametrize("plan", ["ones", "mixed"])
@pytest.mark.parametrize("mode", ["recbole", "append"])
def test_step_equivalence(plan, mode):
    model = small(inference_mask=mode)
    worst = check_step_equivalence(_PrefixForward(model), [1, 2, 5, 48], chunk_plan=plan, atol=1e-4)
    print(f"BERT4Rec ({mode}) step vs prefix forward, plan {plan}: max abs diff {worst:.3g}")
    assert worst <= 1e-4


@pytest.mark.parametrize("plan", ["ones", [5, 12, 1, 22], [15, 1, 1, 23]])
@pytest.mark.parametrize("mode", ["recbole", "append"])
def test_step_window_reencode_beyond_max_seq_length(plan, mode):
    """Histories below, at and beyond max_seq_length = 16, stepped in chunks that end before, at and past it, then
    together in one batch: each new position equals a forward over its own last-16 window."""
    worst = check_window_step_equivalence(small(max_seq_length=16, inference_mask=mode), [3, 16, 40], chunk_plan=plan,
                                          atol=1e-4)
    print(f"BERT4Rec ({mode}) window re-encode, plan {plan if isinstance(plan, str) else plan[:4]}: "
          f"max abs diff {worst:.3g}")


def test_state_spec_and_bad_state():
    model = small(max_seq_length=16)
    st = model.init_state(3)
    assert st["window_ids"].dtype == torch.int64 and st["window_ids"].shape == (3, 16)
    assert st["window_len"].dtype == torch.int64 and st["window_len"].shape == (3, 1)
    assert model.has_exact_step is False
    bad = {k: v.clone() for k, v in st.items()}
    bad["window_len"][0, 0] = 17
    with pytest.raises(ValueError, match=r"state\['window_len'\] must be in 0..16, got \[17, 0, 0\]"):
        model.step(torch.tensor([[1], [2], [3]]), bad)
    with pytest.raises(TypeError, match=r"state\['window_\w+'\] has dtype torch.float32, expected torch.int64"):
        model.step(torch.tensor([[1], [2], [3]]), {k: v.float() for k, v in st.items()})
    with pytest.raises(ValueError, match="out of range"):  # the [MASK] id is not an item
        model.step(torch.tensor([[50], [2], [3]]), st)


# ------------------------------------------------------------------ RecBole reference (literal full_sort_predict)
def _recbole_full_sort_predict(model, hists):
    """RecBole v1.2.0 BERT4Rec.full_sort_predict, written out literally: rows padded to max_seq_length,
    reconstruct_test_data (mask at index len, drop column 0), additive 0/-10000 bidirectional mask, gather len-1."""
    cfg = model.config
    L, B = cfg.max_seq_length, len(hists)
    item_seq = torch.zeros(B, L, dtype=torch.long)
    for r, h in enumerate(hists):
        item_seq[r, :len(h)] = torch.tensor(h)
    item_seq_len = torch.tensor([len(h) for h in hists])
    item_seq = torch.cat((item_seq, torch.zeros(B, 1, dtype=torch.long)), dim=-1)
    for b, last in enumerate(item_seq_len):
        item_seq[b][last] = cfg.n_items
    item_seq = item_seq[:, 1:]
    x = model.item_embedding(item_seq) + model.position_embedding(torch.arange(L))[None]
    x = model.LayerNorm(x)
    add = torch.where((item_seq != 0)[:, None, None, :], 0.0, -10000.0)
    H, hd = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    for layer in model.trm_encoder.layer:
        a = layer.multi_head_attention
        q, k, v = (t.view(B, L, H, hd).permute(0, 2, 1, 3) for t in (a.query(x), a.key(x), a.value(x)))
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd) + add
        ctx = torch.matmul(torch.softmax(s, -1), v).permute(0, 2, 1, 3).reshape(B, L, -1)
        x = a.LayerNorm(a.dense(ctx) + x)
        f = layer.feed_forward
        x = f.LayerNorm(f.dense_2(torch.nn.functional.gelu(f.dense_1(x))) + x)
    out = model.output_ln(torch.nn.functional.gelu(model.output_ffn(x)))
    seq_output = out[torch.arange(B), item_seq_len - 1]
    return seq_output @ model.item_embedding.weight[:cfg.n_items].t() + model.output_bias


def test_matches_recbole_reference():
    model = small(max_seq_length=20)
    hists = [[3, 4, 5], list(range(1, 21)), [7], [9, 10]]
    ids, mask = model.pad_batch(hists)
    with torch.no_grad():
        ours = model(ids, mask).logits
        ref = _recbole_full_sort_predict(model, hists)
    diff = (ours - ref).abs().max().item()
    print(f"BERT4Rec vs literal RecBole full_sort_predict: max abs diff {diff:.3g}")
    assert diff < 1e-5


def test_inference_mask_layouts():
    m = small(max_seq_length=5)
    ids, mask = m.pad_batch([[1, 2, 3], [4, 5, 6, 7, 8], [9]])
    M = 50  # the [MASK] id = n_items
    a_ids, a_mask, shift = m.append_mask(ids, mask)
    assert a_ids.tolist() == [[2, 3, M, 0, 0], [5, 6, 7, 8, M], [M, 0, 0, 0, 0]] and shift.tolist() == [0, 0, 0]
    m2 = small(max_seq_length=5, inference_mask="append")
    a_ids, a_mask, shift = m2.append_mask(ids, mask)
    assert a_ids.tolist() == [[1, 2, 3, M, 0], [5, 6, 7, 8, M], [9, M, 0, 0, 0]] and shift.tolist() == [1, 0, 1]
    assert a_mask.sum(1).tolist() == [4, 5, 2]
    # in "append" layout a one-item history matters; in RecBole's layout it does not (documented quirk)
    with torch.no_grad():
        assert not torch.allclose(m2(torch.tensor([[3]])).logits, m2(torch.tensor([[4]])).logits)
        assert torch.allclose(m(torch.tensor([[3]])).logits, m(torch.tensor([[4]])).logits)


# ------------------------------------------------------------------ bidirectionality / padding / determinism
def test_bidirectional_and_padding_invariance():
    model = small(max_seq_length=30, inference_mask="append")
    ids = torch.randint(1, 50, (1, 12))
    ids2 = ids.clone()
    ids2[0, 7] = ids[0, 7] % 49 + 1
    with torch.no_grad():
        h1, h2 = model(ids).hidden_states, model(ids2).hidden_states
    assert not torch.allclose(h1[:, :7], h2[:, :7], atol=1e-6)  # earlier positions see the later item
    hists = [[5, 6, 7, 8], [9, 10]]
    for mode in ("recbole", "append"):
        model = small(max_seq_length=30, inference_mask=mode)
        ids, mask = model.pad_batch(hists)
        with torch.no_grad():
            a = model(ids, mask)
            b = model(torch.nn.functional.pad(ids, (0, 10)), torch.nn.functional.pad(mask, (0, 10)))
            single = model(torch.tensor([[9, 10]])).logits
        assert torch.allclose(a.logits, b.logits, atol=1e-5)
        assert torch.allclose(a.logits[1], single[0], atol=1e-5)


def test_eval_inference_is_deterministic():
    model = small(max_seq_length=20, hidden_dropout=0.5, attn_dropout=0.5)
    ids, mask = model.pad_batch([[1, 2, 3], [4, 5, 6, 7, 8]])
    with torch.no_grad():
        a = model(ids, mask).logits
        torch.manual_seed(123)
        b = model(ids, mask).logits
    assert torch.equal(a, b)
    p1 = model.predict(ids, mask)
    model.train()
    p2 = model.predict(ids, mask)  # predict switches to eval itself
    assert torch.equal(p1, p2) and model.training
    r1 = model.recommend([[1, 2, 3]], k=5)
    r2 = model.recommend([[1, 2, 3]], k=5)
    assert r1.items == r2.items


# ------------------------------------------------------------------ masked-item training objective
def test_training_sequence_and_masking():
    model = small(max_seq_length=6, mask_ratio=1.0, ft_ratio=0.0)
    ids, mask = model.pad_batch([[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]])
    labels = torch.tensor([[2, 3, 11, 0, 0, 0], [5, 6, 7, 8, 9, 12], [0, 0, 0, 0, 0, 0]])
    seq, seq_mask = model.training_sequence(ids, mask, labels)
    # last label appended; the full window drops its oldest item; a row without a target gets nothing appended
    assert seq.tolist() == [[1, 2, 3, 11, 0, 0], [5, 6, 7, 8, 9, 12], [10, 0, 0, 0, 0, 0]]
    assert seq_mask.sum(1).tolist() == [4, 6, 1]
    inp, target, m = model.mask_items(seq, seq_mask)
    assert torch.equal(m, seq_mask)
    assert (inp[seq_mask] == 50).all() and (inp[~seq_mask] == 0).all()
    # predicted: only the last int(1.0 * 6) = 6 masked slots of each row (all of them here)
    assert torch.equal(target, seq)
    cap_model = small(max_seq_length=10, mask_ratio=0.2, ft_ratio=0.0)   # cap = int(0.2 * 10) = 2 slots per row
    long_seq = torch.arange(1, 11)[None].repeat(200, 1)
    inp, target, _ = cap_model.mask_items(long_seq, torch.ones_like(long_seq, dtype=torch.bool))
    assert ((target > 0).sum(1) <= 2).all() and ((inp == 50).sum(1) > 2).any()
    masked_pos = (inp == 50)
    assert ((target > 0) <= masked_pos).all()        # predicted slots are masked ones
    # ft mode: only the last real item of each row (RecBole _append_mask_last) ...
    ft = small(max_seq_length=6, ft_ratio=1.0, ft_prefix_sampling=False)
    inp, target, m = ft.mask_items(seq, seq_mask)
    assert torch.equal(m, seq_mask) and (inp == 50).sum().item() == 3
    assert target.tolist() == [[0, 0, 0, 11, 0, 0], [0, 0, 0, 0, 0, 12], [10, 0, 0, 0, 0, 0]]
    # ... of a uniformly drawn prefix with ft_prefix_sampling (default)
    ft = small(max_seq_length=6, ft_ratio=1.0)
    cut_lengths = set()
    for _ in range(50):
        inp, target, m = ft.mask_items(seq, seq_mask)
        k = m.long().sum(1)
        assert ((k >= 1) & (k <= seq_mask.long().sum(1))).all() and (m <= seq_mask).all()
        rows = torch.arange(3)
        assert ((target > 0).sum(1) == 1).all() and torch.equal(target[rows, k - 1], seq[rows, k - 1])
        assert (inp[rows, k - 1] == 50).all() and ((inp == 50).sum(1) == 1).all() and (inp[~m] == 0).all()
        assert torch.equal(inp[m & (inp != 50)], seq[m & (inp != 50)])
        cut_lengths.add(int(k[1]))
    assert cut_lengths == {1, 2, 3, 4, 5, 6}
    no_append = small(max_seq_length=6, append_last_label=False)
    s2, m2 = no_append.training_sequence(ids, mask, labels)
    assert torch.equal(s2, ids) and torch.equal(m2, mask)


def test_masked_loss_path_outputs():
    model = small(max_seq_length=12)
    ids, mask = model.pad_batch([[1, 2, 3], [4, 5, 6, 7]])
    labels = torch.where(mask, ids % 49 + 1, torch.zeros_like(ids))
    model.train()
    out = model(ids, mask, labels=labels)
    assert out.loss.requires_grad and out.logits is None and out.hidden_states.shape[-1] == 16
    out.loss.backward()
    assert model.item_embedding.weight.grad[50].abs().sum() > 0       # the [MASK] row is trained
    model.eval()
    out = model(ids, mask, labels=labels)
    assert out.logits.shape == (2, 50) and torch.isfinite(out.loss)
    # [B] labels: next-item CE at the [MASK] appended after the history
    out = model(ids, mask, labels=torch.tensor([4, 8]))
    ref = torch.nn.functional.cross_entropy(model(ids, mask).logits, torch.tensor([4, 8]))
    assert torch.allclose(out.loss, ref)


def _fixed_mask_loss(model, ids, labels):
    """Masked-item loss in eval mode averaged over 8 fixed mask draws (same draws before and after training)."""
    was = model.training
    model.eval()
    losses = []
    with torch.no_grad():
        for s in range(8):
            torch.manual_seed(1000 + s)
            losses.append(model(ids, labels=labels).loss.item())
    model.train(was)
    return sum(losses) / len(losses)


def test_training_reduces_masked_loss():
    torch.manual_seed(0)
    V, L, B = 21, 12, 32
    model = BERT4RecModel(BERT4RecConfig(n_items=V, max_seq_length=L, hidden_size=32, num_heads=2, inner_size=64,
                                         hidden_dropout=0.1, attn_dropout=0.1, mask_ratio=0.3))
    starts = torch.randint(0, V - 1, (B, 1))
    seq = (starts + torch.arange(L + 1)[None]) % (V - 1) + 1     # next item = previous + 1 (cyclic)
    ids, labels = seq[:, :-1], seq[:, 1:]
    before = _fixed_mask_loss(model, ids, labels)
    acc0 = (model.predict(ids).argmax(1) == labels[:, -1]).float().mean().item()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(100):
        out = model(ids, labels=labels)   # masks drawn afresh every step (one ft/random draw per batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = _fixed_mask_loss(model, ids, labels)
    acc = (model.predict(ids).argmax(1) == labels[:, -1]).float().mean().item()
    print(f"BERT4Rec synthetic masked-item loss (fixed masks, eval) {before:.3f} -> {after:.3f}; "
          f"next-item accuracy {acc0:.2f} -> {acc:.2f}")
    assert before > 2.5  # ~ log(21)
    assert after < 0.7 * before   # seed 0 here: ~3.06 -> ~1.07 (other seeds 0.47x-0.67x)
    assert acc > 0.3 > acc0       # chance is 1/20


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs():
    model = small(max_seq_length=8)
    with pytest.raises(ValueError, match="out of range"):       # the [MASK] id cannot be passed by users
        model(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match="max_seq_length"):
        model(torch.randint(1, 50, (2, 9)))
    with pytest.raises(ValueError, match="right"):
        model(torch.tensor([[0, 0, 3, 4]]), torch.tensor([[0, 0, 1, 1]]))
    with pytest.raises(TypeError, match=r"input_ids must be an integer tensor \(int64, .*\), got dtype torch.float32"):
        model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="labels"):
        model(torch.tensor([[1, 2]]), labels=torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="out of range"):
        model(torch.tensor([[1, 2]]), labels=torch.tensor([[2, 50]]))
    with pytest.raises(ValueError, match=r"hidden_size \(10\) must be a positive multiple of num_heads \(3\)"):
        BERT4RecConfig(hidden_size=10, num_heads=3)
    with pytest.raises(ValueError, match=r"inference_mask must be one of .*got 'middle'"):
        BERT4RecConfig(inference_mask="middle")
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\], got 0.0"):
        BERT4RecConfig(mask_ratio=0.0)


# ------------------------------------------------------------------ save / load + parameter count
def test_save_load_roundtrip(tmp_path):
    from transformers import AutoModel

    model = small(max_seq_length=20, inference_mask="append")
    model.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files and "config.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    with open(tmp_path / "config.json") as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "bert4rec" and cfg["inference_mask"] == "append" and cfg["mask_ratio"] == 0.2
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is BERT4RecModel and loaded.config.inference_mask == "append"
    assert torch.equal(loaded.output_bias, model.output_bias)                # not re-initialised on load
    ids, mask = model.pad_batch([[1, 2, 3], [4, 5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(model(ids, mask).logits, loaded(ids, mask).logits)
    again = BERT4RecModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(ids, mask).logits, again(ids, mask).logits)
    for _, cls in MODELS.values():
        if cls is not BERT4RecModel:
            with pytest.raises(ValueError, match=rf"holds a 'bert4rec' checkpoint; it cannot be loaded into "
                                                 rf"{cls.__name__} "):
                cls.from_pretrained(tmp_path)


def test_default_parameter_count():
    cfg = BERT4RecConfig()
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.inner_size, cfg.max_seq_length, cfg.n_items) == \
        (64, 2, 2, 256, 200, 3417)
    assert (cfg.hidden_dropout, cfg.attn_dropout, cfg.hidden_act, cfg.layer_norm_eps, cfg.mask_ratio,
            cfg.ft_ratio) == (0.2, 0.2, "gelu", 1e-12, 0.2, 0.5)
    model = BERT4RecModel(cfg)
    n = sum(p.numel() for p in model.parameters())
    D, I = 64, 256
    layer = 4 * (D * D + D) + 2 * D + (D * I + I) + (I * D + D) + 2 * D       # attention + FFN + their 2 LNs
    hand = ((3417 + 1) * D        # item table incl. [MASK] row
            + 200 * D             # positions
            + 2 * D               # input LayerNorm
            + 2 * layer           # 2 Transformer layers (49,984 each)
            + D * D + D + 2 * D   # output_ffn + output_ln
            + 3417)               # output_bias
    print(f"BERT4Rec default parameters: {n:,} (hand count {hand:,})")
    assert n == hand == 339_353
    assert model.item_embedding.weight.shape == (3418, 64) and model.output_bias.shape == (3417,)
    assert torch.equal(model.output_bias, torch.zeros(3417))


def test_training_mask_keeps_the_rightmost_capped_slots():
    """When more positions are masked than the cap allows, the targets are the rightmost capped masked slots (as
    RecBole, whose training windows end at the newest items); the leftmost ones would pass every other test."""
    cap_model = small(max_seq_length=10, mask_ratio=0.2, ft_ratio=0.0)
    long_seq = torch.arange(1, 11)[None].repeat(200, 1)
    inp, target, _ = cap_model.mask_items(long_seq, torch.ones_like(long_seq, dtype=torch.bool))
    masked = inp == 50
    from_right = masked.long().flip(1).cumsum(1).flip(1)
    assert torch.equal(target > 0, masked & (from_right <= 2))


# ------------------------------------------------------------------ mutation audit 6 (E): masking and the Cloze loss path
def test_mask_cap_uses_max_seq_length_and_is_at_least_one():
    """The number of predicted slots per row is ``max(1, int(mask_ratio * max_seq_length))`` (RecBole's
    ``mask_item_length``), whatever the width of the batch: a cap from the batch width (2 here instead of 4) or
    without the floor of 1 (0 here: nothing predicted) passed every other test."""
    model = small(max_seq_length=10, mask_ratio=0.4, ft_ratio=0.0)          # cap = int(0.4 * 10) = 4
    seq = torch.arange(1, 7)[None].repeat(300, 1)                            # batch width 6 < max_seq_length
    inp, target, _ = model.mask_items(seq, torch.ones_like(seq, dtype=torch.bool))
    masked = inp == 50
    from_right = masked.long().flip(1).cumsum(1).flip(1)
    assert torch.equal(target > 0, masked & (from_right <= 4))
    assert ((target > 0).sum(1) == 4).any()                                  # the cap of 4 is reached by some rows
    tiny = small(max_seq_length=10, mask_ratio=0.05, ft_ratio=0.0)          # int(0.05 * 10) = 0 -> cap 1
    seq = torch.arange(1, 11)[None].repeat(400, 1)
    inp, target, _ = tiny.mask_items(seq, torch.ones_like(seq, dtype=torch.bool))
    masked = inp == 50
    assert masked.any(1).sum() > 10
    assert torch.equal((target > 0).sum(1), masked.any(1).long())            # exactly one predicted per masked row
    last_masked = 9 - masked.long().flip(1).argmax(1)
    rows = masked.any(1).nonzero()[:, 0]
    assert torch.equal(target[rows, last_masked[rows]], seq[rows, last_masked[rows]])


@pytest.mark.parametrize("ft_ratio", [0.0, 1.0])
def test_masked_loss_is_the_ce_of_the_drawn_masks(ft_ratio):
    """``forward(labels [B, L])`` = CE over the slots ``mask_items`` predicts, encoded with the attention mask that
    ``mask_items`` returns (for a prefix-cut ft batch: the prefix only). Encoding the cut rows with the uncut mask
    (the zeroed tail attended as real items) changed the loss but passed every other test."""
    model = small(max_seq_length=12, ft_ratio=ft_ratio, mask_ratio=0.5)
    hists = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16], [17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27]]
    ids, mask = model.pad_batch(hists)
    labels = torch.where(mask, ids % 49 + 1, torch.zeros_like(ids))
    cut = False
    for s in range(6):
        torch.manual_seed(s)
        out = model(ids, mask, labels=labels)
        torch.manual_seed(s)
        seq, seq_mask = model.training_sequence(ids, mask, labels)
        inp, target, m = model.mask_items(seq, seq_mask)
        cut |= bool((m.sum(1) < seq_mask.sum(1)).any())
        with torch.no_grad():
            hidden = model.encode_raw(inp, m)
            sel = target > 0
            ref = torch.nn.functional.cross_entropy(model.score(hidden[sel]), target[sel])
        torch.testing.assert_close(out.hidden_states, hidden, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out.loss, ref, atol=1e-6, rtol=1e-6)
    assert cut == (ft_ratio == 1.0)                                          # ft batches did cut rows to prefixes


def test_masked_loss_without_any_predicted_slot_is_a_differentiable_zero():
    """A batch in which no slot is masked (possible for tiny batches) gives a loss of exactly 0 that still backpropagates
    (a constant zero tensor made ``loss.backward()`` fail in the training loop)."""
    model = small(max_seq_length=8, mask_ratio=1e-7, ft_ratio=0.0).train()
    ids, mask = model.pad_batch([[1, 2], [3]])
    out = model(ids, mask, labels=torch.tensor([[2, 4], [0, 0]]))
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    assert model.item_embedding.weight.grad is not None and torch.all(model.item_embedding.weight.grad == 0)


def test_training_sequence_drops_the_oldest_item_only_on_overflow():
    """Appending the last label to a window one item short of ``max_seq_length`` fills it exactly: nothing is dropped
    (an overflow test with ``>=`` dropped the oldest item of such rows)."""
    model = small(max_seq_length=6)
    ids, mask = model.pad_batch([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16]])
    labels = torch.tensor([[0, 0, 0, 0, 20, 0], [0, 0, 0, 0, 0, 21], [0, 0, 0, 0, 0, 0]])
    seq, seq_mask = model.training_sequence(ids, mask, labels)
    assert seq.tolist() == [[1, 2, 3, 4, 5, 20], [7, 8, 9, 10, 11, 21], [12, 13, 14, 15, 16, 0]]
    assert seq_mask.sum(1).tolist() == [6, 6, 5]


def test_config_refuses_out_of_range_ratios_and_activation():
    """``ft_ratio`` outside [0, 1], ``mask_ratio`` above 1 and an unknown ``hidden_act`` are errors naming the value
    (only ``mask_ratio = 0`` and the layout were checked)."""
    with pytest.raises(ValueError, match=r"ft_ratio must be in \[0, 1\], got 1.5"):
        BERT4RecConfig(ft_ratio=1.5)
    with pytest.raises(ValueError, match=r"ft_ratio must be in \[0, 1\], got -0.1"):
        BERT4RecConfig(ft_ratio=-0.1)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\], got 1.5"):
        BERT4RecConfig(mask_ratio=1.5)
    with pytest.raises(ValueError, match=r"hidden_act must be one of \[.*'gelu'.*\], got 'elu'"):
        BERT4RecConfig(hidden_act="elu")
    assert BERT4RecConfig(ft_ratio=0.0, mask_ratio=1.0).ft_ratio == 0.0
