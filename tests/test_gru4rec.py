"""Tests of zoo.models.gru4rec (RecBole v1.2.0 GRU4Rec)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zoo  # noqa: E402,F401  (registers the models with AutoConfig / AutoModel)
from equivalence import check_step_equivalence  # noqa: E402
from zoo.models import MODELS  # noqa: E402
from zoo.models.gru4rec import GRU4RecConfig, GRU4RecModel  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def small(**kw) -> GRU4RecModel:
    cfg = dict(n_items=50, max_seq_length=600, embedding_size=16, hidden_size=24, num_layers=2)
    cfg.update(kw)
    torch.manual_seed(0)
    return GRU4RecModel(GRU4RecConfig(**cfg)).eval()


def test_registered():
    assert MODELS["gru4rec"] == (GRU4RecConfig, GRU4RecModel)


# ------------------------------------------------------------------ (a) central invariant: step == forward
@pytest.mark.parametrize("plan", ["ones", "mixed", "all"])
@pytest.mark.parametrize("layers", [1, 2])
def test_step_equivalence(plan, layers):
    model = small(num_layers=layers)
    worst = check_step_equivalence(model, [1, 3, 50, 600], chunk_plan=plan, atol=1e-5)
    print(f"GRU4Rec step vs forward ({layers} layer(s), plan {plan}): max abs diff {worst:.3g}")
    assert worst <= 1e-5


def test_step_batched_and_state_untouched():
    model = small()
    ids, mask = model.pad_batch([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]])
    with torch.no_grad():
        full = model(ids, mask).logits
        st = model.init_state(2)
        _, st2 = model.step(ids[:, :2], st)
        assert torch.equal(st["gru_state"], torch.zeros_like(st["gru_state"]))  # input state not modified
        logits, st3 = model.step(ids[:, 2:], st2)
    assert torch.allclose(logits, full, atol=1e-5)
    assert st3["gru_state"].dtype == torch.float32 and st3["gru_state"].shape == (2, 2, 24)


def test_state_spec_and_bad_state():
    model = small()
    st = model.init_state(3)
    assert list(st) == ["gru_state"] and st["gru_state"].shape == (3, 2, 24)
    assert model.has_exact_step is True
    with pytest.raises(ValueError, match=r"state\['gru_state'\] has shape \[3, 1, 24\], expected \[3, 2, 24\]"):
        model.step(torch.tensor([[1], [2], [3]]), {"gru_state": torch.zeros(3, 1, 24)})
    with pytest.raises(TypeError, match=r"state\['gru_state'\] has dtype torch.float64, expected torch.float32"):
        model.step(torch.tensor([[1], [2], [3]]), {"gru_state": torch.zeros(3, 2, 24, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"state has wrong tensors: missing \['gru_state'\]"):
        model.step(torch.tensor([[1], [2], [3]]), {})
    bad = torch.zeros(3, 2, 24)
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.step(torch.tensor([[1], [2], [3]]), {"gru_state": bad})
    with pytest.raises(ValueError, match="padding"):
        model.step(torch.tensor([[1], [0], [3]]), st)


# ------------------------------------------------------------------ reference: the GRU equations by hand
def _reference_logits(model, hist):
    """Bias-free GRU (PyTorch gate order r, z, n) in float64, one layer at a time, then dense and tied scores."""
    x = model.item_embedding.weight.double()[torch.tensor(hist)]                     # [T, E]
    H = model.config.hidden_size
    for k in range(model.config.num_layers):
        w_ih = getattr(model.gru_layers, f"weight_ih_l{k}").double()
        w_hh = getattr(model.gru_layers, f"weight_hh_l{k}").double()
        h, outs = torch.zeros(H, dtype=torch.float64), []
        for t in range(x.shape[0]):
            gi, gh = w_ih @ x[t], w_hh @ h
            r = torch.sigmoid(gi[:H] + gh[:H])
            z = torch.sigmoid(gi[H:2 * H] + gh[H:2 * H])
            n = torch.tanh(gi[2 * H:] + r * gh[2 * H:])
            h = (1 - z) * n + z * h
            outs.append(h)
        x = torch.stack(outs)
    z = x[-1] @ model.dense.weight.double().t() + model.dense.bias.double()
    return z @ model.item_embedding.weight.double().t()


def test_matches_hand_written_gru():
    model = small()
    hists = [[3, 4, 5], [7], list(range(1, 40))]
    ids, mask = model.pad_batch(hists)
    with torch.no_grad():
        ours = model(ids, mask).logits.double()
        for r, h in enumerate(hists):
            assert (ours[r] - _reference_logits(model, h)).abs().max().item() < 1e-5


def test_padding_invariance_and_no_length_limit():
    model = small(max_seq_length=8)
    hists = [[5, 6, 7, 8], [9, 10]]
    ids, mask = model.pad_batch(hists)
    with torch.no_grad():
        a = model(ids, mask)
        b = model(torch.nn.functional.pad(ids, (0, 10)), torch.nn.functional.pad(mask, (0, 10)))
        single = model(torch.tensor([[9, 10]])).logits
        long = model(torch.randint(1, 50, (2, 30))).logits      # longer than max_seq_length: fine for a GRU
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    assert torch.allclose(a.logits[1], single[0], atol=1e-6)
    assert long.shape == (2, 50)


def test_bad_inputs():
    model = small()
    with pytest.raises(TypeError, match=r"input_ids must be an integer tensor \(int64, .*\), got dtype torch.float32"):
        model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="out of range"):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match="right"):
        model(torch.tensor([[0, 0, 3, 4]]), torch.tensor([[0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="empty"):
        model(torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match=r"labels must be \[batch\] or \[batch, seq_len\] = \[1, 2\], got \[1, 3\]"):
        model(torch.tensor([[1, 2]]), labels=torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match=r"dropout_prob must be in \[0, 1\), got 1.5"):
        GRU4RecConfig(dropout_prob=1.5)
    with pytest.raises(ValueError, match=r"num_layers must be >= 1, got 0"):
        GRU4RecConfig(num_layers=0)


# ------------------------------------------------------------------ save / load
def test_save_load_roundtrip(tmp_path):
    from transformers import AutoModel

    model = small()
    model.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files and "config.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    with open(tmp_path / "config.json") as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "gru4rec" and cfg["embedding_size"] == 16 and cfg["hidden_size"] == 24
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is GRU4RecModel
    ids, mask = model.pad_batch([[1, 2, 3], [4, 5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(model(ids, mask).logits, loaded(ids, mask).logits)
        s1 = model.step(ids[:1, :3], model.init_state(1))[0]
        s2 = loaded.step(ids[:1, :3], loaded.init_state(1))[0]
    assert torch.equal(s1, s2)
    again = GRU4RecModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(ids, mask).logits, again(ids, mask).logits)
    for _, cls in MODELS.values():
        if cls is not GRU4RecModel:
            with pytest.raises(ValueError, match=rf"holds a 'gru4rec' checkpoint; it cannot be loaded into "
                                                 rf"{cls.__name__} "):
                cls.from_pretrained(tmp_path)


# ------------------------------------------------------------------ parameter count + init
def test_default_parameter_count_and_init():
    cfg = GRU4RecConfig()
    assert (cfg.embedding_size, cfg.hidden_size, cfg.num_layers, cfg.dropout_prob, cfg.n_items,
            cfg.max_seq_length) == (64, 128, 1, 0.3, 3417, 200)
    model = GRU4RecModel(cfg)
    n = sum(p.numel() for p in model.parameters())
    # by hand (ML-1M defaults, n_items 3417 incl. padding, GRU without biases):
    emb = 3417 * 64                      # item_embedding            218,688
    gru = 3 * 128 * 64 + 3 * 128 * 128   # weight_ih_l0 + weight_hh_l0 73,728
    dense = 128 * 64 + 64                # dense (with bias)          8,256
    print(f"GRU4Rec default parameters: {n:,} (hand count {emb + gru + dense:,})")
    assert n == emb + gru + dense == 300_672
    assert {k for k, _ in model.named_parameters()} == {
        "item_embedding.weight", "gru_layers.weight_ih_l0", "gru_layers.weight_hh_l0", "dense.weight", "dense.bias"}
    # RecBole init: xavier_normal_ embeddings (std sqrt(2 / (3417 + 64))), xavier_uniform_ GRU weights
    std = model.item_embedding.weight.std().item()
    assert abs(std - (2 / (3417 + 64)) ** 0.5) < 0.002
    bound = (6 / (3 * 128 + 64)) ** 0.5
    w = model.gru_layers.weight_ih_l0
    assert w.abs().max().item() <= bound + 1e-6 and w.abs().max().item() > 0.9 * bound
    # dense keeps PyTorch's default Linear init (RecBole does not re-initialise it)
    assert model.dense.weight.abs().max().item() <= 1 / 128 ** 0.5 + 1e-6
    assert model.dense.weight.std().item() > 0.03


# ------------------------------------------------------------------ training
def test_training_reduces_loss():
    torch.manual_seed(0)
    V, L, B = 21, 12, 32
    model = GRU4RecModel(GRU4RecConfig(n_items=V, max_seq_length=L, embedding_size=32, hidden_size=32,
                                       dropout_prob=0.1))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    starts = torch.randint(0, V - 1, (B, 1))
    seq = (starts + torch.arange(L + 1)[None]) % (V - 1) + 1     # next item = previous + 1 (cyclic)
    ids, labels = seq[:, :-1], seq[:, 1:]
    losses = []
    for i in range(80):
        out = model(ids, labels=labels if i % 2 else labels[:, -1])  # both label forms
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    print(f"GRU4Rec synthetic training loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[0] > 2.5  # ~ log(21)
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    acc = (model.predict(ids).argmax(1) == labels[:, -1]).float().mean().item()
    assert acc > 0.9


def test_dropout_on_embeddings_only_in_training():
    """RecBole's emb_dropout: in training the GRU's input (the item embeddings) is dropped, not its output; eval is
    deterministic."""
    model = small(dropout_prob=0.5)
    seen = []
    model.gru_layers.register_forward_hook(lambda m, inp, out: seen.append((inp[0].clone(), out[0].clone())))
    ids = torch.randint(1, 50, (4, 12))
    model.train()
    model(ids)
    gru_in, gru_out = seen[-1]
    frac = (gru_in == 0).float().mean().item()
    assert 0.35 < frac < 0.65, f"{frac:.2f} of the GRU input is zero in training, want ~dropout_prob = 0.5"
    assert (gru_out == 0).float().mean().item() < 0.05, "dropout must not act on the GRU output"
    model.eval()
    with torch.no_grad():
        a, b = model(ids).logits, model(ids).logits
    assert torch.equal(a, b) and (seen[-1][0] != 0).all(), "no dropout in eval"
