"""Tests of zoo.models.sasrec (RecBole v1.2.0 SASRec)."""

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
from zoo.modeling_utils import SeqRecConfig, SeqRecPreTrainedModel  # noqa: E402
from zoo.models import MODELS  # noqa: E402
from zoo.models.sasrec import SASRecConfig, SASRecModel  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def small(**kw) -> SASRecModel:
    cfg = dict(n_items=50, max_seq_length=600, hidden_size=16, num_heads=2, inner_size=32, num_layers=2)
    cfg.update(kw)
    torch.manual_seed(0)
    return SASRecModel(SASRecConfig(**cfg)).eval()


# ------------------------------------------------------------------ (a) central invariant
@pytest.mark.parametrize("plan", ["ones", "mixed"])
def test_step_equivalence(plan):
    model = small()
    worst = check_step_equivalence(model, [1, 3, 50, 600], chunk_plan=plan, atol=1e-4)
    assert worst <= 1e-4


@pytest.mark.parametrize("plan", ["ones", [5, 30, 1, 64], [100], [31, 1, 1, 67]])
def test_step_window_reencode_beyond_max_seq_length(plan):
    """Histories below, at and beyond max_seq_length = 32, stepped in chunks that end before, at and past it, then
    together in one batch: each new position equals a forward over its own last-32 window."""
    worst = check_window_step_equivalence(small(max_seq_length=32), [3, 32, 100], chunk_plan=plan, atol=1e-4)
    print(f"SASRec window re-encode, plan {plan if isinstance(plan, str) else plan[:4]}: max abs diff {worst:.3g}")


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


def test_too_long_input_raises():
    model = small(max_seq_length=8)
    with pytest.raises(ValueError, match="max_seq_length"):
        model(torch.randint(1, 50, (2, 9)))
    ids, mask = model.pad_batch([list(range(1, 20))])  # pad_batch truncates to the window
    assert ids.shape == (1, 8) and ids[0].tolist() == list(range(12, 20))


# ------------------------------------------------------------------ RecBole reference (additive -10000 mask)
def _recbole_forward(model, ids):
    """Literal RecBole v1.2.0 SASRec.forward (eval) using the model's weights, additive 0/-10000 mask."""
    cfg = model.config
    B, L = ids.shape
    x = model.item_embedding(ids) + model.position_embedding(torch.arange(L))[None]
    x = model.LayerNorm(x)
    ext = (ids != 0)[:, None, None, :]
    ext = torch.tril(ext.expand(-1, -1, L, -1))
    add = torch.where(ext, 0.0, -10000.0)
    H, hd = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    for layer in model.trm_encoder.layer:
        a = layer.multi_head_attention
        q, k, v = (t.view(B, L, H, hd).permute(0, 2, 1, 3) for t in (a.query(x), a.key(x), a.value(x)))
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd) + add
        ctx = torch.matmul(torch.softmax(s, -1), v).permute(0, 2, 1, 3).reshape(B, L, -1)
        x = a.LayerNorm(a.dense(ctx) + x)
        f = layer.feed_forward
        h = f.dense_2(torch.nn.functional.gelu(f.dense_1(x)))
        x = f.LayerNorm(h + x)
    last = x[torch.arange(B), (ids != 0).sum(1) - 1]
    return last @ model.item_embedding.weight.t()


def test_matches_recbole_reference():
    model = small(max_seq_length=20)
    ids, mask = model.pad_batch([[3, 4, 5], list(range(1, 21)), [7]])
    with torch.no_grad():
        ours = model(ids, mask).logits
        ref = _recbole_forward(model, ids)
    assert (ours - ref).abs().max().item() < 1e-5


# ------------------------------------------------------------------ (b) causality / padding
def test_causality():
    model = small(max_seq_length=20)
    ids = torch.randint(1, 50, (2, 12))
    ids2 = ids.clone()
    ids2[:, 7] = (ids[:, 7] % 49) + 1
    with torch.no_grad():
        h1 = model(ids).hidden_states
        h2 = model(ids2).hidden_states
    assert torch.allclose(h1[:, :7], h2[:, :7], atol=1e-6)
    assert not torch.allclose(h1[:, 7:], h2[:, 7:], atol=1e-6)


def test_padding_invariance():
    model = small(max_seq_length=30)
    hists = [[5, 6, 7, 8], [9, 10]]
    ids, mask = model.pad_batch(hists)
    ids_more = torch.nn.functional.pad(ids, (0, 10))
    mask_more = torch.nn.functional.pad(mask, (0, 10))
    with torch.no_grad():
        a = model(ids, mask)
        b = model(ids_more, mask_more)
        single = model(torch.tensor([[9, 10]])).logits
    for r, h in enumerate(hists):
        n = len(h)
        assert torch.allclose(a.hidden_states[r, :n], b.hidden_states[r, :n], atol=1e-6)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.logits[1], single[0], atol=1e-5)


def test_left_padding_rejected():
    model = small(max_seq_length=10)
    with pytest.raises(ValueError, match="right"):
        model(torch.tensor([[0, 0, 3, 4]]), torch.tensor([[0, 0, 1, 1]]))


# ------------------------------------------------------------------ (c) save / load
def test_save_load_roundtrip(tmp_path):
    from transformers import AutoModel

    model = small(max_seq_length=20)
    model.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files and "config.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is SASRecModel
    assert loaded.config.to_dict()["num_heads"] == 2 and loaded.config.max_seq_length == 20
    ids, mask = model.pad_batch([[1, 2, 3], [4, 5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(model(ids, mask).logits, loaded(ids, mask).logits)
    again = SASRecModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(ids, mask).logits, again(ids, mask).logits)


# ------------------------------------------------------------------ (d) parameter count
def test_default_parameter_count():
    cfg = SASRecConfig()
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.inner_size, cfg.max_seq_length, cfg.n_items) == \
        (64, 2, 2, 256, 200, 3417)
    assert (cfg.hidden_dropout, cfg.attn_dropout, cfg.hidden_act, cfg.layer_norm_eps) == (0.5, 0.5, "gelu", 1e-12)
    model = SASRecModel(cfg)
    assert sum(p.numel() for p in model.parameters()) == 331_584


def test_bad_config():
    with pytest.raises(ValueError, match=r"hidden_size \(10\) must be a positive multiple of num_heads \(3\)"):
        SASRecConfig(hidden_size=10, num_heads=3)
    with pytest.raises(ValueError, match=r"hidden_act must be one of \[.*'gelu'.*\], got 'nope'"):
        SASRecConfig(hidden_act="nope")


# ------------------------------------------------------------------ (e) training
def test_training_reduces_loss():
    torch.manual_seed(0)
    V, L, B = 21, 12, 32
    model = SASRecModel(SASRecConfig(n_items=V, max_seq_length=L, hidden_size=32, num_heads=2, inner_size=64,
                                     hidden_dropout=0.1, attn_dropout=0.1))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    # next item = previous + 1 (cyclic over 1..V-1): learnable from the last item alone
    starts = torch.randint(0, V - 1, (B, 1))
    seq = (starts + torch.arange(L + 1)[None]) % (V - 1) + 1
    ids, labels = seq[:, :-1], seq[:, 1:]
    losses = []
    for _ in range(60):
        out = model(ids, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[0] > 2.5  # ~ log(21)
    assert losses[-1] < 0.3 * losses[0], losses[::10]


# ------------------------------------------------------------------ (f) wrong class
class _OtherConfig(SeqRecConfig):
    model_type = "sasrec_test_other"


class _OtherModel(SeqRecPreTrainedModel):
    config_class = _OtherConfig

    def __init__(self, config):
        super().__init__(config)
        self.item_embedding = torch.nn.Embedding(config.n_items, config.hidden_size)
        self.post_init()


def test_load_into_wrong_class_raises(tmp_path):
    model = small(max_seq_length=20)
    model.save_pretrained(tmp_path)
    for _, cls in MODELS.values():
        if cls is SASRecModel:
            continue
        with pytest.raises(ValueError, match=rf"holds a 'sasrec' checkpoint; it cannot be loaded into {cls.__name__} "):
            cls.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cannot be loaded"):
        _OtherModel.from_pretrained(tmp_path)
    # (SeqRecPreTrainedModel.from_pretrained itself is not tested here: the abstract base never runs post_init, so
    # transformers fails with an AttributeError before the strict-key check; see the SASRec report.)


def test_config_model_type_in_json(tmp_path):
    model = small(max_seq_length=20)
    model.save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["model_type"] == "sasrec"


# ------------------------------------------------------------------ mutation audit 6 (E): training path, activations, config
def test_training_embedding_is_layernormed_then_dropped_out():
    """RecBole order: ``Dropout(LN(E_item + E_pos))``. In eval both orders agree, so only a training-mode check sees a
    swapped ``LN(Dropout(...))``: every input of the first layer must be 0 or ``LN(...) / (1 - p)``."""
    model = small(max_seq_length=20, hidden_dropout=0.5).train()
    seen = []
    hook = model.trm_encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    ids = torch.randint(1, 50, (4, 20))
    try:
        model(ids)
    finally:
        hook.remove()
    with torch.no_grad():
        ref = model.LayerNorm(model.item_embedding(ids) + model.position_embedding(torch.arange(20))[None])
    got = seen[0]
    zero = got == 0
    assert 0.35 < zero.float().mean().item() < 0.65                      # p = 0.5 of the entries dropped
    torch.testing.assert_close(got[~zero], ref[~zero] * 2.0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("act", ["gelu", "relu", "swish", "tanh", "sigmoid"])
def test_each_hidden_act_is_the_named_function(act):
    """Each ``hidden_act`` name maps to its function in the FFN (only "gelu" was exercised: a wrong table entry such
    as ``"swish": F.gelu`` passed every test)."""
    expected = {
        "gelu": lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))),   # RecBole's exact erf GELU
        "relu": lambda x: x.clamp(min=0),
        "swish": lambda x: x * torch.sigmoid(x),
        "tanh": torch.tanh,
        "sigmoid": lambda x: 1.0 / (1.0 + torch.exp(-x)),
    }[act]
    model = small(max_seq_length=8, hidden_act=act)
    ff = model.trm_encoder.layer[1].feed_forward
    x = torch.randn(3, 5, 16) * 3
    with torch.no_grad():
        ref = ff.LayerNorm(ff.dense_2(expected(ff.dense_1(x))) + x)
        torch.testing.assert_close(ff(x), ref, atol=1e-5, rtol=1e-5)


def test_config_refuses_zero_or_negative_num_heads():
    """``num_heads`` must be positive: 0 was a ZeroDivisionError and a negative count that divides hidden_size was
    accepted without the positivity check."""
    with pytest.raises(ValueError, match=r"hidden_size \(64\) must be a positive multiple of num_heads \(0\)"):
        SASRecConfig(num_heads=0)
    with pytest.raises(ValueError, match=r"hidden_size \(64\) must be a positive multiple of num_heads \(-2\)"):
        SASRecConfig(num_heads=-2)
