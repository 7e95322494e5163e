"""SSD4Rec: bidirectionality, window-recompute step, prefix objective, item masking, save/load, parameter count."""

import copy
import json
import random

import pytest
import torch
from transformers import AutoModel

import zoo
from equivalence import check_window_step_equivalence
from mamba2_reference import official_ssd4rec_logits, randomise
from zoo.models.ssd4rec import SSD4RecConfig, SSD4RecModel
from zoo.ops.ssd import ssd_scan_loop


def small(**kw):
    cfg = dict(n_items=53, hidden_size=16, d_state=8, head_dim=4, chunk_size=8, max_seq_length=10, dropout_prob=0.0,
               mask_ratio=0.0)
    cfg.update(kw)
    model = SSD4RecModel(SSD4RecConfig(**cfg))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # weights of a useful magnitude; Δ = softplus(dt_bias) around 0.5..1
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
        for layer in model.layers:
            layer.mamba.dt_bias.copy_(torch.randn(layer.mamba.dt_bias.shape, generator=g) * 0.5)
    return model.eval()


def test_parameter_count_matches_official():
    cfg = SSD4RecConfig()
    assert (cfg.hidden_size, cfg.d_state, cfg.head_dim, cfg.n_heads, cfg.num_layers, cfg.chunk_size) == \
        (256, 64, 16, 32, 2, 32)
    model = SSD4RecModel(cfg)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(model) == 2_804_416
    assert n(model.item_embedding) == 874_752
    assert n(model.layers[0].mamba) == 437_984
    assert n(model.layers[0]) == 964_576
    m = model.layers[0].mamba
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.in_proj.out_features == 1184
    assert model.item_embedding.padding_idx is None


def test_bidirectional_first_item_changes_last_output():
    model = small()
    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 0, 0]])
    ids2 = ids.clone()
    ids2[0, 0] = 9
    with torch.no_grad():
        a, b = model(ids), model(ids2)
    assert (a.logits - b.logits).abs().max() > 1e-3
    # and the LAST item changes the FIRST position (a causal model could not)
    ids3 = ids.clone()
    ids3[0, 5] = 9
    with torch.no_grad():
        c = model(ids3)
    assert (a.hidden_states[0, 0] - c.hidden_states[0, 0]).abs().max() > 1e-3


def test_mixer_matches_reference_and_reversal_not_reflipped():
    """One layer, computed by hand: f = Mamba2(x), b = Mamba2(x reversed within the row), LN(f + β b + x)."""
    model = small(num_layers=1)
    layer = model.layers[0]
    ids = torch.tensor([[3, 4, 5, 6, 7, 0, 0], [8, 9, 10, 0, 0, 0, 0]])
    mask = ids != 0
    with torch.no_grad():
        x = model.layer_norm(model.item_embedding(ids))
        got = layer(x, model.reverse_index(mask))
        mix = layer.mamba
        for r, n in enumerate(mask.sum(1).tolist()):
            xr = x[r:r + 1, :n]
            f = mix(xr)
            b = mix(xr.flip(1))                                              # the reverse pass, not flipped back
            h = layer.layer_norm(f + 0.1 * b + xr)
            assert (layer.ffn(h) - got[r:r + 1, :n]).abs().max() <= 1e-5
        # the SSD inside Mamba2 == the naive loop
        z, xs, Bm, Cm, dt, _ = mix.project(x)
        dts = torch.nn.functional.softplus(dt + mix.dt_bias)
        y_ref, _ = ssd_scan_loop(xs.double(), dts.double(), -torch.exp(mix.A_log.double()), Bm.double(), Cm.double(),
                                 mix.D.double())
        from zoo.ops.ssd import ssd_chunk_scan_ref
        y, _ = ssd_chunk_scan_ref(xs, dts, -torch.exp(mix.A_log), Bm, Cm, 3, mix.D)
        assert (y.double() - y_ref).abs().max() <= 1e-4


def test_padding_invariance():
    model = small(max_seq_length=40)
    hist = [[random.Random(i).randrange(1, 53) for _ in range(n)] for i, n in enumerate([1, 7, 23])]
    ids, mask = model.pad_batch(hist)
    with torch.no_grad():
        batched = model(torch.nn.functional.pad(ids, (0, 5))).logits
        for r, h in enumerate(hist):
            assert (batched[r] - model(torch.tensor([h])).logits[0]).abs().max() <= 1e-4


def test_window_step_equals_forward_on_same_window():
    """Histories below, at and beyond max_seq_length = 10, stepped alone and then together in one batch: each new
    position equals a forward over its own last-10 items; the state is the window only."""
    model = small()
    worst = check_window_step_equivalence(model, [4, 10, 27], chunk_plan="mixed", atol=1e-4)
    print(f"SSD4Rec window step: max abs diff {worst:.3g}")
    assert set(model.init_state(1)) == {"window_ids", "window_len"}


def test_prefix_objective_and_item_masking():
    model = small()
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    labels = torch.tensor([[4, 5, 6, 9], [8, 10, 0, 0]])
    with torch.no_grad():
        loss = model(ids, labels=labels).loss
        singles = []
        for r, t in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]:
            out = model(ids[r:r + 1, :t + 1], labels=labels[r:r + 1, t])
            singles.append(out.loss)
    assert abs(loss.item() - torch.stack(singles).mean().item()) <= 1e-5
    # masking: in training, ~mask_ratio of the real items become the mask token 0; eval is deterministic
    masked = small(mask_ratio=0.5)
    masked.train()
    seen = []
    orig = masked.item_embedding.forward
    masked.item_embedding.forward = lambda x: (seen.append(x.clone()), orig(x))[1]
    big = torch.randint(1, 53, (8, 10))
    masked(big)
    frac = (seen[-1] == 0).float().mean().item()
    assert 0.3 < frac < 0.7
    masked.eval()
    masked(big)
    assert (seen[-1] == big).all()


def treat_as_transformers_own(monkeypatch):
    """Transformers 5.2x skips the post-load init of a fully loaded module only for code it counts as custom; 5.6
    has no such rule. ``is_custom_code = False`` gives a 5.2x the 5.6 behaviour (on 5.6 the attribute is unused)."""
    monkeypatch.setattr(SSD4RecModel, "is_custom_code", classmethod(lambda c: False), raising=False)


@pytest.mark.parametrize("missing", ["layers.0.mamba.dt_bias", "layers.1.mamba.D", "layers.0.mamba.in_proj.weight"])
def test_init_pass_after_loading_changes_only_the_missing_parameter(monkeypatch, missing):
    """``from_pretrained``'s init pass (``init_weights``) after a load with one missing key re-initialises that key
    only: the loaded SSD parameters (``A_log``, ``dt_bias``, ``D``, gated-norm weight) keep their values (transformers
    5.6 overwrote them)."""
    model = small()
    treat_as_transformers_own(monkeypatch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for m in model.modules():          # from_pretrained builds the model without post_init's done-flags ...
        m.__dict__.pop("_is_hf_initialized", None)
    for name, p in model.named_parameters():
        if name != missing:            # ... and flags each tensor it loads
            p._is_hf_initialized = True
    model.init_weights()
    after = model.state_dict()
    assert {k for k in before if not torch.equal(before[k], after[k])} == {missing}


@pytest.mark.parametrize("transformers_skips", [True, False], ids=["custom-code-rule", "5.6-rule"])
def test_save_load_roundtrip(tmp_path, monkeypatch, transformers_skips):
    if not transformers_skips:
        treat_as_transformers_own(monkeypatch)
    model = small()
    model.set_item_vocab(zoo.ItemVocab(list(range(1000, 1052))))
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "ssd4rec" and "activation" not in cfg
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is SSD4RecModel and loaded.item_vocab == model.item_vocab
    ids = torch.randint(1, 53, (3, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, loaded(ids).logits, atol=1e-5, rtol=1e-5)
    rec = loaded.recommend([[1000, 1001], [1051]], k=4)
    assert rec.scores.shape == (2, 4)
    from zoo.models.tim4rec import TiM4RecModel
    with pytest.raises(ValueError, match="cannot be loaded into"):
        TiM4RecModel.from_pretrained(tmp_path)


def test_item_masking_rate_and_config_validation():
    """Training masks each real item with probability mask_ratio (not 1 - mask_ratio); mask_ratio must be
    in [0, 1) and H = expand * D / head_dim must be whole."""
    model = small(mask_ratio=0.2).train()
    seen = []
    orig = model.item_embedding.forward
    model.item_embedding.forward = lambda x: (seen.append(x.clone()), orig(x))[1]
    torch.manual_seed(1)
    ids = torch.randint(1, 53, (16, 10))
    ids[:, 7:] = 0                                                   # right padding
    model(ids)
    frac = (seen[-1][:, :7] == 0).float().mean().item()
    assert 0.1 < frac < 0.3, f"masked fraction {frac:.2f} of real items, want ~mask_ratio = 0.2"
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
            SSD4RecConfig(mask_ratio=bad)
    with pytest.raises(ValueError, match="multiple of head_dim"):
        SSD4RecConfig(hidden_size=16, head_dim=6)


def test_step_is_deterministic_on_a_model_in_training_mode():
    """A model fresh from its constructor is in training mode: step() ran SSD4Rec's random item masking and dropout
    there (two calls gave other logits, neither predict()'s). It runs in eval mode now, as predict() does, and leaves
    the model in the mode it was in."""
    torch.manual_seed(0)
    model = SSD4RecModel(SSD4RecConfig(n_items=20, max_seq_length=8, hidden_size=16, d_state=4, head_dim=8,
                                       mask_ratio=0.5, dropout_prob=0.3))
    assert model.training
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a, sa = model.step(ids, model.init_state(2))
    b, sb = model.step(ids, model.init_state(2))
    assert torch.equal(a, b) and all(torch.equal(sa[k], sb[k]) for k in sa) and model.training
    torch.testing.assert_close(a[:, 1:], model.predict(ids)[:, 1:], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ independent reference (official code)
@pytest.mark.parametrize("kw", [{"num_layers": 1}, {"num_layers": 2, "beta": 0.35, "rmsnorm_eps": 1e-3},
                                {"num_layers": 2, "norm_embedding": False, "head_dim": 8, "chunk_size": 5}],
                         ids=["1layer", "2layers-beta-eps", "no-emb-norm-H4"])
def test_forward_matches_the_official_computation(kw):
    """The model against official SSD4Rec + mamba_ssm's Mamba2 written out independently in float64 loops
    (tests/mamba2_reference.py, from models.md §2.2/§5.2; it shares only the parameters): the by-hand layer test reuses
    the model's own mixer and FFN, so a gate on the wrong side of the RMSNorm, B/C or z/xBC swapped in in_proj's
    output, a ReLU FFN without residual or a misplaced LayerNorm passed every test; each fails here. Every parameter is
    randomised (norms, biases, D, dt_bias, A_log included); histories of several lengths, right-padded in one batch
    (chunk boundaries crossed), the model in float64 (to 1e-10) and in float32 (to 1e-5)."""
    model = randomise(SSD4RecModel(SSD4RecConfig(**{**dict(n_items=53, hidden_size=16, d_state=8, head_dim=4,
                                                            chunk_size=4, max_seq_length=40), **kw})), seed=7)
    g = torch.Generator().manual_seed(8)
    hist = [torch.randint(1, 53, (n,), generator=g) for n in (1, 2, 5, 17, 40)]
    ids, mask = model.pad_batch([h.tolist() for h in hist])
    ids, mask = torch.nn.functional.pad(ids, (0, 3)), torch.nn.functional.pad(mask, (0, 3))
    refs = [official_ssd4rec_logits(model, h) for h in hist]
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        with torch.no_grad():
            ours = copy.deepcopy(model).to(dtype)(ids, mask).logits.double()
        for r, ref in enumerate(refs):
            assert (ours[r] - ref).abs().max() <= tol, (dtype, len(hist[r]), (ours[r] - ref).abs().max().item())
    assert min((ref - refs[0]).abs().max() for ref in refs[1:]) > 1e-2            # the histories matter


def test_training_embedding_is_dropped_out_then_layernormed():
    """Official order (models.md §5.2): item embedding -> Dropout -> LayerNorm. In training each embedded row reaching
    the first layer is still normalised (mean 0, variance 1 at init); the swapped order (identical in eval, so no
    other test sees it) leaves zeros."""
    torch.manual_seed(0)
    model = SSD4RecModel(SSD4RecConfig(n_items=53, hidden_size=16, d_state=8, head_dim=4, max_seq_length=30,
                                       dropout_prob=0.5, mask_ratio=0.0)).train()
    seen = []
    model.layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    ids = torch.randint(1, 53, (4, 30))
    model(ids)
    x = seen[-1]
    with torch.no_grad():
        model.eval()(ids)
    assert not torch.allclose(x, seen[-1])                                         # dropout did act in training
    assert (x == 0).sum() == 0
    torch.testing.assert_close(x.mean(-1), torch.zeros(4, 30), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.var(-1, unbiased=False), torch.ones(4, 30), atol=1e-3, rtol=0)
