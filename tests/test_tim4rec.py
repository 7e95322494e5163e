"""TiM4Rec (faithful, window-recompute step) and TiM4Rec-causal (exact recurrent step)."""

import copy
import json
import random

import pytest
import torch
from transformers import AutoModel

import zoo
from equivalence import check_low_precision_state, check_step_equivalence, check_window_step_equivalence
from mamba2_reference import official_tim4rec_logits, randomise
from zoo.models.tim4rec import TiM4RecConfig, TiM4RecModel
from zoo.models.tim4rec_causal import TiM4RecCausalConfig, TiM4RecCausalModel

SMALL = dict(n_items=53, hidden_size=16, d_state=8, head_dim=8, chunk_size=4, dropout_prob=0.0,
             time_dropout_prob=0.0)


def perturb(model, scale=0.3, seed=0):
    """Random weights of a useful magnitude (at init the time path is ~0 and logits are tiny)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
        for m in model.modules():   # Δ = softplus(dt_bias) ~ 0.5..1 instead of 1e-3..0.1: the SSD path matters
            if hasattr(m, "dt_bias"):
                m.dt_bias.copy_(torch.randn(m.dt_bias.shape, generator=g) * 0.5)
    return model.eval()


def faithful(**kw):
    return perturb(TiM4RecModel(TiM4RecConfig(**{**SMALL, "max_seq_length": 12, **kw})))


def causal(**kw):
    return perturb(TiM4RecCausalModel(TiM4RecCausalConfig(**{**SMALL, "max_seq_length": 600, **kw})))


def history(n, seed=0, V=53):
    rng = random.Random(seed)
    items = [rng.randrange(1, V) for _ in range(n)]
    ts, t = [], float(rng.randrange(10**8, 2 * 10**8))
    for _ in range(n):
        t += rng.choice([0, 1, 30, 600, 86400, 10**6])
        ts.append(t)
    return items, ts


# ------------------------------------------------------------------------------ faithful TiM4Rec
def test_parameter_counts_match_official():
    n = lambda m: sum(p.numel() for p in m.parameters())
    cfg = TiM4RecConfig()
    assert (cfg.hidden_size, cfg.num_layers, cfg.d_state, cfg.n_heads, cfg.chunk_size, cfg.max_seq_length) == \
        (64, 2, 32, 4, 32, 200)
    assert cfg.activation == "hardswish"
    assert n(TiM4RecModel(cfg)) == 508_818
    assert n(TiM4RecModel(TiM4RecConfig(is_time=False))) == 346_336


def test_official_config_forward_and_init():
    model = TiM4RecModel(TiM4RecConfig()).eval()
    mixer = model.layers[0].mixer
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert (-torch.exp(mixer.A_log)).max() <= -1 + 1e-5 and (-torch.exp(mixer.A_log)).min() >= -16 - 1e-4
    assert torch.all(mixer.conv1d.bias == 0) and abs(mixer.conv1d.weight.std().item() - (2 / 768) ** 0.5) < 0.01
    ids, mask, ts = model.pad_batch([[1, 2, 3], list(range(1, 251))],
                                    timestamps=[[9e8, 9e8 + 5, 9e8 + 99], [9e8 + 60 * i for i in range(250)]])
    assert ids.shape == (2, 200)
    out = model(ids, mask, timestamps=ts)
    assert out.logits.shape == (2, 3417) and torch.isfinite(out.logits).all()


def test_window_step_equals_forward_on_same_window():
    """Histories (with timestamps) below, at and beyond max_seq_length = 12, stepped alone and then together in one
    batch: each new position equals a forward over its own last-12 items and timestamps."""
    worst = check_window_step_equivalence(faithful(), [5, 12, 30], chunk_plan="mixed", atol=1e-4, timestamps=True)
    print(f"TiM4Rec window step: max abs diff {worst:.3g}")


def test_window_padding_and_time_sensitivity():
    model = faithful()
    items, ts = history(8, seed=3)
    ids, mask, tsb = model.pad_batch([items, items[:3]], timestamps=[ts, ts[:3]])
    wide = torch.nn.functional.pad(ids, (0, 4)), torch.nn.functional.pad(mask, (0, 4)), \
        torch.nn.functional.pad(tsb, (0, 4))
    with torch.no_grad():
        a = model(ids, mask, timestamps=tsb).logits
        b = model(*wide[:2], timestamps=wide[2]).logits        # always re-padded to max_seq_length inside
        single = model(torch.tensor([items[:3]]), timestamps=torch.tensor([ts[:3]], dtype=torch.float64)).logits
        # a full window (no padding): regular 60 s gaps vs alternating 60 s / 1 day gaps
        f_ids = torch.arange(1, 13)[None]
        even = 1e9 + 60.0 * torch.arange(12, dtype=torch.float64)[None]
        bursty = 1e9 + torch.cumsum(torch.tensor([0.0] + [60.0, 86400.0] * 5 + [60.0], dtype=torch.float64), 0)[None]
        c0 = model(f_ids, timestamps=even).logits
        c1 = model(f_ids, timestamps=bursty).logits
        c2 = model(f_ids, timestamps=1e9 + (even - 1e9) * 7.0).logits    # LN over the window: scale-invariant
    assert (a - b).abs().max() <= 1e-5 and (a[1] - single[0]).abs().max() <= 1e-5
    assert (c0 - c1).abs().max() > 1e-2, "timestamps must influence the prediction"
    assert (c0 - c2).abs().max() <= 1e-4
    # RecBole's float32 timestamps: 64-second resolution around 1e9 s (opt-in emulation)
    f32 = faithful(float32_timestamps=True)
    f32.load_state_dict(model.state_dict())
    with torch.no_grad():
        jitter = even.clone()
        jitter[0, 5] += 20.0                                              # below float32 resolution at 1e9
        assert torch.equal(f32(f_ids, timestamps=even).logits, f32(f_ids, timestamps=jitter).logits)
        assert (model(f_ids, timestamps=even).logits - model(f_ids, timestamps=jitter).logits).abs().max() > 1e-4
    with pytest.raises(ValueError, match="fixed window"):
        model(torch.ones(1, 13, dtype=torch.long), timestamps=torch.arange(13.0)[None])
    no_time = faithful(is_time=False)
    assert not no_time.uses_timestamps
    assert no_time(ids, mask).logits.shape == (2, 53)
    lg, st = no_time.step(torch.tensor([[1, 2]]), no_time.init_state(1))
    assert lg.shape == (1, 53)


@pytest.mark.parametrize("kw", [{}, {"p2p_residual": True, "num_layers": 1}, {"is_time": False}])
def test_narrow_batch_equals_the_padded_window(kw):
    """encode() at width L_in < max_seq_length skips the pad slots of the causal hidden path; it must equal the
    explicitly right-padded window (what the official model computes) on its first L_in slots."""
    model = faithful(chunk_size=4, **kw)
    M = model.config.max_seq_length
    for seed, (n, width) in enumerate([(1, 1), (3, 5), (7, 7), (5, 11), (12, 12)]):
        items, ts = history(n, seed=10 + seed)
        rows = [(items, ts), (items[:max(1, n - 2)], ts[:max(1, n - 2)])]
        ids, mask, tsb = model.pad_batch([r[0] for r in rows], timestamps=[r[1] for r in rows])
        ids, mask, tsb = (torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in (ids, mask, tsb))
        full = [torch.nn.functional.pad(t, (0, M - width)) for t in (ids, mask, tsb)]
        with torch.no_grad():
            narrow_h = model.encode(ids, mask, tsb if model.uses_timestamps else None)
            full_h = model.encode(full[0], full[1], full[2] if model.uses_timestamps else None)
        assert narrow_h.shape == (2, width, model.config.hidden_size)
        assert (narrow_h - full_h[:, :width]).abs().max() <= 1e-5


def test_all_position_labels_use_the_prefix_objective():
    """[B, L] labels must not leak the targets' timestamps through the window-level time features."""
    model = faithful()
    items, ts = history(6, seed=6)
    ids, mask, tsb = model.pad_batch([items, items[:4]], timestamps=[ts, ts[:4]])
    labels = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]])
    with torch.no_grad():
        loss = model(ids, mask, labels=labels, timestamps=tsb).loss
        singles = [model(ids[r:r + 1, :t + 1], labels=labels[r:r + 1, t], timestamps=tsb[r:r + 1, :t + 1]).loss
                   for r, n in [(0, 6), (1, 4)] for t in range(n)]
    assert abs(loss.item() - torch.stack(singles).mean().item()) <= 1e-5


@pytest.mark.parametrize("make", [faithful, causal])
def test_timestamp_validation(make):
    model = make()
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="pass timestamps"):
        model(ids)
    with pytest.raises(ValueError, match="NaN"):
        model(ids, timestamps=torch.tensor([[1.0, float("nan"), 3.0]]))
    with pytest.raises(ValueError, match="decrease"):
        model(ids, timestamps=torch.tensor([[5.0, 4.0, 6.0]]))
    with pytest.raises(ValueError, match="shape"):
        model(ids, timestamps=torch.tensor([[5.0, 6.0]]))
    with pytest.raises(ValueError, match="negative"):
        model(ids, timestamps=torch.tensor([[-5.0, 6.0, 7.0]]))
    _, state = model.step(ids, model.init_state(1), timestamps=torch.tensor([[1.0, 2.0, 100.0]]))
    with pytest.raises(ValueError, match="back in time"):
        model.step(torch.tensor([[4]]), state, timestamps=torch.tensor([[99.0]]))
    with pytest.raises(ValueError, match="pass timestamps"):
        model.step(torch.tensor([[4]]), state)


@pytest.mark.parametrize("make", [faithful, causal])
def test_timestamps_of_too_little_precision_are_refused(make):
    """float32 (float16, bfloat16) timestamps beyond the whole seconds they hold exactly were rounded before the model
    could widen them (Unix seconds ~1e9 to 64-s steps): refused, asking for float64 / int64, in forward and step.
    Small ones (relative seconds, synthetic tests) stay accepted."""
    model = make()
    ids = torch.tensor([[1, 2, 3]])
    t = [[978300760.0, 978300790.0, 978300850.0]]
    for dtype, exact in ((torch.float32, 2**24), (torch.bfloat16, 2**8)):
        with pytest.raises(ValueError, match=rf"timestamps are {dtype} and reach \d+ s, beyond the {exact} s up to "
                                             r"which .* pass float64 \(or int64\) seconds"):
            model(ids, timestamps=torch.tensor(t, dtype=dtype))
        with pytest.raises(ValueError, match=rf"timestamps are {dtype} and reach"):
            model.step(ids, model.init_state(1), timestamps=torch.tensor(t, dtype=dtype))
    with pytest.raises(ValueError, match=r"torch.float16 and reach 3000 s, beyond the 2048 s"):
        model(ids, timestamps=torch.tensor([[1.0, 30.0, 3000.0]], dtype=torch.float16))
    want = model(ids, timestamps=torch.tensor(t, dtype=torch.float64)).logits
    assert torch.equal(model(ids, timestamps=torch.tensor(t, dtype=torch.int64)).logits, want)
    small = [[0.0, 30.0, float(2**24)]]                                   # exact in float32
    torch.testing.assert_close(model(ids, timestamps=torch.tensor(small)).logits,
                               model(ids, timestamps=torch.tensor(small, dtype=torch.float64)).logits)
    # only the real positions count: the padding slots may hold anything finite
    ids2, mask = model.pad_batch([[1, 2, 3], [4]], timestamps=[[1.0, 2.0, 3.0], [5.0]])[:2]
    ts = torch.tensor([[1.0, 2.0, 3.0], [5.0, 0.0, 0.0]])
    pad = ts.clone()
    pad[~mask] = 1e9
    torch.testing.assert_close(model(ids2, mask, timestamps=pad).logits, model(ids2, mask, timestamps=ts).logits)


def treat_as_transformers_own(monkeypatch, cls):
    """Transformers 5.2x skips the post-load init of a fully loaded module only for code it counts as custom; 5.6
    has no such rule. ``is_custom_code = False`` gives a 5.2x the 5.6 behaviour (on 5.6 the attribute is unused)."""
    monkeypatch.setattr(cls, "is_custom_code", classmethod(lambda c: False), raising=False)


def mark_loaded(model, skip=()):
    """Flag every parameter but ``skip`` as loaded, as transformers' loader flags each tensor it loads, and clear the
    modules' done-flags that ``post_init`` set (``from_pretrained`` builds the model without running the init)."""
    for m in model.modules():
        m.__dict__.pop("_is_hf_initialized", None)
    for name, p in model.named_parameters():
        if name not in skip:
            p._is_hf_initialized = True


@pytest.mark.parametrize("make,missing", [(faithful, "layers.0.mixer.dt_bias"), (faithful, "layers.1.mixer.A_log"),
                                          (faithful, "layers.0.mixer.conv1d.weight"),
                                          (causal, "layers.0.mixer.conv1d.bias"), (causal, "item_embedding.weight")])
def test_init_pass_after_loading_changes_only_the_missing_parameter(monkeypatch, make, missing):
    """``from_pretrained``'s init pass (``init_weights``) after a load with one missing key re-initialises that key
    only: the loaded SSD, time and conv parameters keep their values (they were overwritten on transformers 5.6)."""
    model = make()
    treat_as_transformers_own(monkeypatch, type(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mark_loaded(model, skip={missing})
    model.init_weights()
    after = model.state_dict()
    assert {k for k in before if not torch.equal(before[k], after[k])} == {missing}


def test_ssd_init_writes_only_parameters_that_were_not_loaded():
    """``_init_weights`` on an SSD mixer whose ``A_log``, ``D`` and gated-norm weight were loaded keeps them and
    re-initialises ``dt_bias`` (softplus(dt_bias) in [dt_init_floor, dt_max]); a loaded conv keeps its weights."""
    model = faithful()
    mixer, cfg = model.layers[0].mixer, model.config
    before = {n: p.clone() for n, p in mixer.named_parameters()}
    for n in ("A_log", "D", "norm_weight", "conv1d.weight", "conv1d.bias"):
        mixer.get_parameter(n)._is_hf_initialized = True
    model._init_weights(mixer)
    model._init_weights(mixer.conv1d)
    for n in ("A_log", "D", "norm_weight", "conv1d.weight", "conv1d.bias"):
        assert torch.equal(mixer.get_parameter(n), before[n]), n
    dt = torch.nn.functional.softplus(mixer.dt_bias.detach())
    assert not torch.equal(mixer.dt_bias, before["dt_bias"])
    assert ((dt >= cfg.dt_init_floor * (1 - 1e-5)) & (dt <= cfg.dt_max * (1 + 1e-5))).all()


@pytest.mark.parametrize("transformers_skips", [True, False], ids=["custom-code-rule", "5.6-rule"])
@pytest.mark.parametrize("make,cls", [(faithful, TiM4RecModel), (causal, TiM4RecCausalModel)])
def test_save_load_roundtrip(tmp_path, monkeypatch, make, cls, transformers_skips):
    model = make()
    if not transformers_skips:
        treat_as_transformers_own(monkeypatch, cls)
    model.set_item_vocab(zoo.ItemVocab(list(range(1000, 1052))))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == model.config.model_type
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is cls and loaded.item_vocab == model.item_vocab
    items, ts = history(9, seed=4)
    ids, mask, tsb = model.pad_batch([items], timestamps=[ts])
    with torch.no_grad():
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
        torch.testing.assert_close(model(ids, mask, timestamps=tsb).logits, loaded(ids, mask, timestamps=tsb).logits,
                                   atol=1e-5, rtol=1e-5)
    rec = loaded.recommend([[1000, 1001, 1002]], k=5, timestamps=[[1e9, 1e9 + 60, 1e9 + 7200]])
    assert all(1000 <= i <= 1051 for i in rec.items[0])
    other = TiM4RecCausalModel if cls is TiM4RecModel else TiM4RecModel
    with pytest.raises(ValueError, match="cannot be loaded into"):
        other.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------ TiM4Rec-causal
@pytest.mark.parametrize("plan,lengths,layers", [("ones", [1, 2, 5, 37], 2), ("ones", [600], 1),
                                                 ("mixed", [1, 3, 600, 213], 2), ("all", [1, 64], 2)])
def test_causal_step_equals_full_forward(plan, lengths, layers):
    model = causal(num_layers=layers)
    worst = check_step_equivalence(model, lengths, chunk_plan=plan, atol=1e-4, timestamps=True)
    print(f"tim4rec_causal plan={plan}: max |step - full| = {worst:.2e}")


def test_causal_state_layout_and_time_use():
    model = causal(num_layers=3)
    spec = {s.name: s for s in model.state_spec(2)}
    c = model.config
    assert spec["conv_state"].shape == (2, 3, c.d_inner + 2 * c.d_state, c.d_conv - 1)
    assert spec["ssm_state"].shape == (2, 3, c.n_heads, c.head_dim, c.d_state)
    assert spec["time_conv_state"].shape == (2, 3, 2, c.n_heads, c.d_conv - 1)
    assert spec["last_ts"].dtype == torch.float64 and spec["last_ts"].init == -1.0
    items = torch.tensor([[3, 4, 5, 6]])
    t1 = torch.tensor([[1e9, 1e9 + 10, 1e9 + 20, 1e9 + 30]], dtype=torch.float64)
    t2 = torch.tensor([[1e9, 1e9 + 10, 1e9 + 86400, 1e9 + 86410]], dtype=torch.float64)
    with torch.no_grad():
        a, b = model(items, timestamps=t1).logits, model(items, timestamps=t2).logits
        shifted = model(items, timestamps=t1 + 12345.0).logits          # only gaps matter
        prefix = model(items[:, :2], timestamps=t1[:, :2]).hidden_states
        full = model(items, timestamps=t2).hidden_states
    assert (a - b).abs().max() > 1e-4 and (a - shifted).abs().max() <= 1e-5
    assert (prefix - full[:, :2]).abs().max() <= 1e-5, "causal: later timestamps never change earlier positions"
    _, st = model.step(items, model.init_state(1), timestamps=t1)
    assert float(st["last_ts"]) == 1e9 + 30


def test_causal_trains_on_time_dependent_task():
    """Next item = 51 after a long gap (> 1 h), else 52: only learnable through the time branch."""
    torch.manual_seed(0)
    model = TiM4RecCausalModel(TiM4RecCausalConfig(**{**SMALL, "max_seq_length": 8, "num_layers": 1}))
    g = torch.Generator().manual_seed(1)
    n, L = 128, 6
    ids = torch.randint(1, 50, (n, L), generator=g)
    gaps = torch.where(torch.rand(n, L, generator=g) < 0.5, torch.full((n, L), 30.0), torch.full((n, L), 86400.0))
    gaps[:, 0] = 0
    ts = 1e9 + torch.cumsum(gaps.double(), 1)
    labels = torch.where(gaps[:, -1] > 3600, 51, 52)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(40):
        out = model(ids, timestamps=ts, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    model.eval()
    with torch.no_grad():
        pred = model(ids, timestamps=ts).logits[:, 51:53].argmax(1) + 51
    acc = (pred == labels).float().mean().item()
    print(f"tim4rec_causal toy task: loss {losses[0]:.3f} -> {losses[-1]:.3f}, accuracy {acc:.3f}")
    assert losses[-1] < 0.5 * losses[0] and acc > 0.9


def test_causal_step_refuses_non_finite_state_and_a_last_ts_that_is_no_timestamp():
    """Only -1 in last_ts means 'no event yet'; NaN/inf in any state tensor or another negative last_ts is an error
    naming the tensor (it gave NaN logits, or was silently treated as an empty history)."""
    model = causal()
    items, ts = torch.tensor([[3, 4]]), torch.tensor([[10.0, 20.0]], dtype=torch.float64)
    fresh = model.init_state(1)
    model.step(items, fresh, timestamps=ts)
    for name in fresh:
        for v in (float("nan"), float("inf")):
            st = {k: t.clone() for k, t in fresh.items()}
            st[name][..., 0] = v
            with pytest.raises(ValueError, match=rf"state\['{name}'\] holds NaN or infinite values"):
                model.step(items, st, timestamps=ts)
    for v in (-7.0, -0.5):
        with pytest.raises(ValueError, match=rf"state\['last_ts'\] of batch row 0 is {v}: .* or -1 \(no event yet\)"):
            model.step(items, {**fresh, "last_ts": torch.full((1, 1), v, dtype=torch.float64)}, timestamps=ts)


# ------------------------------------------------------------------------------ hand-written references (time path)
def _capture_mixers(model):
    """Forward hooks recording each layer's mixer ``(hidden, T) -> (out, T_next)``."""
    seen, handles = [], []
    for layer in model.layers:
        handles.append(layer.mixer.register_forward_hook(lambda m, inp, out: seen.append((inp, out))))
    return seen, handles


def test_time_path_matches_hand_computation():
    """Faithful time branch, written out from the reference (models.md §4): d = [0, τ1-τ0, ...] over the right-padded
    window (the first pad slot carries -τ_last), T = LN_M(d); per layer τ̃ = act(conv_t2(act(conv_t1(T ⊙ MLP(T))))),
    δ' = δ ⊙ τ̃, g = σ(Linear(T)), T_next = LN_M(g ⊙ T + (1 - g) ⊙ τ̃) carried to the next layer; act = Hardswish
    (H = 4)."""
    model = faithful(num_layers=2)
    assert model.config.n_heads == 4 and model.config.activation == "hardswish"
    M, H = model.config.max_seq_length, model.config.n_heads
    ts = torch.tensor([[1e9, 1e9 + 60, 1e9 + 86460, 1e9 + 86490, 0, 0],
                       [2e9, 2e9 + 5, 0, 0, 0, 0]], dtype=torch.float64)
    ids = torch.tensor([[3, 4, 5, 6, 0, 0], [7, 8, 0, 0, 0, 0]])
    mask = ids != 0
    with torch.no_grad():
        d = torch.zeros(2, M, dtype=torch.float64)
        d[0, 1:5] = torch.tensor([60.0, 86400.0, 30.0, -(1e9 + 86490)])
        d[1, 1:3] = torch.tensor([5.0, -(2e9 + 5)])
        want_T = torch.nn.functional.layer_norm(d.float(), (M,), model.time_norm.weight, model.time_norm.bias,
                                                model.config.norm_eps)
        got_T = model.time_features(torch.nn.functional.pad(ts, (0, M - 6)), torch.nn.functional.pad(mask, (0, M - 6)))
        assert got_T.shape == (2, H, M)
        assert (got_T - want_T[:, None]).abs().max() <= 1e-5, "time features: T = LN over the window of [0, diffs]"
        seen, handles = _capture_mixers(model)
        try:
            model(ids, mask, timestamps=ts)
        finally:
            for h in handles:
                h.remove()
        T = want_T[:, None].expand(-1, H, -1)
        act = torch.nn.functional.hardswish
        for i, (layer, ((hidden, T_in), (out, T_next))) in enumerate(zip(model.layers, seen)):
            mix = layer.mixer
            assert (T_in - T).abs().max() <= 1e-5, f"layer {i}: the time feature T it gets is not the carried one"
            tau = T * mix.time_mlp(T)
            tau = act(mix.time_conv1(tau)[..., :M])           # nn.Conv1d(padding=K-1)[..., :M]: causal
            tau = act(mix.time_conv2(tau)[..., :M])
            g = torch.sigmoid(mix.time_gate(T))
            want_next = mix.time_norm(g * T + (1 - g) * tau)
            assert (T_next - want_next).abs().max() <= 1e-5, f"layer {i}: T_next != LN(g*T + (1-g)*tau)"
            z, x, Bm, Cm, dt, _ = mix.project(hidden)
            want_out, _ = mix.scan_and_out(z, x, Bm, Cm, dt * tau[..., :hidden.shape[1]].transpose(1, 2))
            assert (out - want_out).abs().max() <= 1e-5, f"layer {i}: the SSD's dt is not scaled by tau"
            T = want_next


@pytest.mark.parametrize("kw", [{}, {"num_layers": 1, "p2p_residual": True},
                                {"num_layers": 3, "head_dim": 4, "norm_eps": 1e-5},
                                {"is_time": False}, {"is_ffn": False, "chunk_size": 5}],
                         ids=["2layers", "1layer-p2p", "3layers-H8-silu-eps", "no-time", "no-ffn"])
def test_forward_matches_the_official_computation(kw):
    """The model against official TiM4Rec (TiSSD = Mamba-2 with its time path) written out independently in float64
    loops (tests/mamba2_reference.py, from models.md §2.2/§4; it shares only the parameters, and runs the whole
    right-padded window as the official model does): the hand-computation test above reuses the model's own
    in_proj split and SSD, so a gate on the wrong side of the RMSNorm, B/C or z/xBC swapped, a GELU FFN or a dropped
    residual passed every test; each fails here. Every parameter is randomised (norms, biases, D, dt_bias, A_log,
    time convs included); histories below and at the window, in one padded batch and alone (narrow batches), the model
    in float64 (to 1e-10) and float32 (to 1e-5); Hardswish (H = 4) and SiLU (H = 8) convs."""
    model = randomise(TiM4RecModel(TiM4RecConfig(**{**SMALL, "max_seq_length": 12, **kw})), seed=5, big=("time",))
    hist = [history(n, seed=20 + n) for n in (1, 3, 7, 12)]
    refs = [official_tim4rec_logits(model, torch.tensor(i), torch.tensor(t, dtype=torch.float64)) for i, t in hist]
    use_ts = model.uses_timestamps
    ids, mask, tsb = model.pad_batch([i for i, _ in hist], timestamps=[t for _, t in hist])
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        m = copy.deepcopy(model).to(dtype)
        with torch.no_grad():
            batch = m(ids, mask, timestamps=tsb if use_ts else None).logits.double()
            alone = [m(torch.tensor([i]), timestamps=torch.tensor([t], dtype=torch.float64) if use_ts else None)
                     .logits[0].double() for i, t in hist]
        for r, ref in enumerate(refs):
            for ours in (batch[r], alone[r]):
                assert (ours - ref).abs().max() <= tol, (dtype, r, (ours - ref).abs().max().item())
    assert min((ref - refs[0]).abs().max() for ref in refs[1:]) > 1e-2            # the histories matter
    if use_ts:                       # and so do the gaps (on a full window: a pad slot's -τ_last flattens them)
        items, ts = hist[-1]
        gaps = torch.diff(torch.tensor(ts, dtype=torch.float64))
        reordered = ts[0] + torch.cat([torch.zeros(1, dtype=torch.float64), gaps.flip(0).cumsum(0)])
        assert (official_tim4rec_logits(model, torch.tensor(items), reordered) - refs[-1]).abs().max() > 1e-2


def test_training_embedding_and_time_diffs_are_dropped_out_then_layernormed():
    """Official order (models.md §4.1): x = LN(Dropout(E[s])) and T = LN_M(Dropout(d)). In training each embedded row
    and each head's time row reaching the first layer is still normalised (mean 0, variance 1 at init); the swapped
    order (identical in eval, so no other test sees it) leaves zeros."""
    torch.manual_seed(0)
    model = TiM4RecModel(TiM4RecConfig(**{**SMALL, "max_seq_length": 30, "dropout_prob": 0.5})).train()
    seen = []
    model.layers[0].register_forward_pre_hook(lambda m, args: seen.append([a.detach().clone() for a in args]))
    rows = [history(30, seed=s) for s in range(4)]
    ids, mask, ts = model.pad_batch([i for i, _ in rows], timestamps=[t for _, t in rows])
    model(ids, mask, timestamps=ts)
    x, T = seen[-1]
    with torch.no_grad():
        model.eval()(ids, mask, timestamps=ts)
    assert not torch.allclose(x, seen[-1][0]) and not torch.allclose(T, seen[-1][1])   # dropout did act
    for v, shape in ((x, (4, 30)), (T, (4, model.config.n_heads))):
        assert (v == 0).sum() == 0
        torch.testing.assert_close(v.mean(-1), torch.zeros(shape), atol=1e-5, rtol=0)
        torch.testing.assert_close(v.var(-1, unbiased=False), torch.ones(shape), atol=1e-3, rtol=0)


def test_prefix_objective_returns_the_batch_logits():
    """With [B, L] labels the loss is the prefix objective, but logits / hidden_states are those of the batch."""
    model = faithful()
    items, ts = history(5, seed=8)
    ids, mask, tsb = model.pad_batch([items, items[:3]], timestamps=[ts, ts[:3]])
    labels = torch.tensor([[5, 6, 7, 8, 9], [11, 12, 13, 0, 0]])
    with torch.no_grad():
        out = model(ids, mask, labels=labels, timestamps=tsb)
        plain = model(ids, mask, timestamps=tsb)
    assert out.logits.shape == (2, 53) and out.hidden_states.shape == plain.hidden_states.shape
    assert torch.allclose(out.logits, plain.logits, atol=1e-6)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="multiple of head_dim"):
        TiM4RecConfig(hidden_size=16, expand=2, head_dim=6)
    with pytest.raises(ValueError, match="conv_activation must be"):
        TiM4RecConfig(conv_activation="relu")
    assert TiM4RecConfig(hidden_size=64, head_dim=16).activation == "silu"       # H = 8: SiLU
    for bad in ({"time_unit": 0.0}, {"time_scale": 0.0}, {"time_unit": -60.0}, {"time_unit": float("nan")},
                {"time_scale": float("inf")}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a finite number > 0"):
            TiM4RecCausalConfig(**bad)


# ------------------------------------------------------------------------------ TiM4Rec-causal references
def test_causal_gap_features_and_time_carry_by_hand():
    """f = log1p(gap / 60) / 10 (first event and pads: gap 0); per layer T_next = γ ⊙ (g ⊙ T + (1-g) ⊙ τ̃) + β,
    carried to the next layer."""
    model = causal(num_layers=2)
    ts = torch.tensor([[1e9, 1e9, 1e9 + 60, 1e9 + 86460], [5e8, 5e8 + 3600, 0, 0]], dtype=torch.float64)
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    gaps = torch.tensor([[0.0, 0.0, 60.0, 86400.0], [0.0, 3600.0, 0.0, 0.0]], dtype=torch.float64)
    f = torch.log1p(gaps / 60.0) / 10.0
    assert abs(f[0, 2].item() - 0.0693147) < 1e-6 and abs(f[0, 3].item() - 0.727309) < 1e-5
    seen, handles = _capture_mixers(model)
    try:
        with torch.no_grad():
            model(ids, ids != 0, timestamps=ts)
    finally:
        for h in handles:
            h.remove()
    T = f.float()[..., None] * model.time_in_weight + model.time_in_bias
    with torch.no_grad():
        for i, (layer, ((hidden, T_in, *_), (out, T_next, *_))) in enumerate(zip(model.layers, seen)):
            mix = layer.mixer
            assert (T_in - T).abs().max() <= 1e-5, f"layer {i}: T is not the carried / log-gap feature"
            tau = T * mix.time_mlp(T)
            tau = torch.nn.functional.hardswish(mix.time_conv1(tau.transpose(1, 2))[..., :4])
            tau = torch.nn.functional.hardswish(mix.time_conv2(tau)[..., :4]).transpose(1, 2)
            g = torch.sigmoid(mix.time_gate(T))
            want = mix.time_weight * (g * T + (1 - g) * tau) + mix.time_bias
            assert (T_next - want).abs().max() <= 1e-5, f"layer {i}: T_next != γ(g T + (1-g) τ̃) + β"
            T = want


def test_causal_step_from_timestamp_zero():
    """A history starting at t = 0 s: last_ts = 0 is a real event (only -1 means none), so the next gap is 60 s."""
    model = causal()
    ids, ts = torch.tensor([[3, 4, 5]]), torch.tensor([[0.0, 60.0, 86460.0]], dtype=torch.float64)
    with torch.no_grad():
        full = model.score(model(ids, timestamps=ts).hidden_states)[0]
        state, steps = model.init_state(1), []
        for t in range(3):
            lg, state = model.step(ids[:, t:t + 1], state, timestamps=ts[:, t:t + 1])
            steps.append(lg[0])
        assert float(state["last_ts"]) == 86460.0
    assert (torch.stack(steps) - full).abs().max() <= 1e-4


# ------------------------------------------------------------------------------ dtypes
def test_causal_float64_one_step_matches_the_forward_to_float64_precision():
    """The one-item step cast its inputs to float32 (``.float()``): a float64 model's first step differed from its
    forward by ~1e-7 where float64 gives ~1e-15. It computes in the model's precision now. (The state between
    ``step`` calls is float32 by the state spec, so only a step from the initial state is compared here.)"""
    model = causal(num_layers=2).double()
    ids = torch.tensor([[3], [7], [11]])
    ts = torch.tensor([[1e9], [1e9 + 60], [5e8]], dtype=torch.float64)
    with torch.no_grad():
        want = model(ids, timestamps=ts).logits
        got, _ = model.step(ids, model.init_state(3), timestamps=ts)
    assert got.dtype == want.dtype == torch.float64
    assert (got - want).abs().max().item() <= 1e-10


@pytest.mark.parametrize("make", [faithful, causal], ids=["tim4rec", "tim4rec_causal"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_forward_and_step_run_in_the_models_dtype(make, dtype):
    """The time features were cast with ``.float()`` before a LayerNorm / Linear of the model's dtype: TiM4Rec failed
    in float64 and bfloat16 ("mixed dtype"), TiM4Rec-causal in bfloat16. They follow the model's dtype now, and
    agree with the float32 model (bfloat16 to its precision)."""
    ref = make()
    model = copy.deepcopy(ref).to(dtype)
    items, ts = history(9, seed=2)
    ids, mask, tsb = model.pad_batch([items, items[:5]], timestamps=[ts, ts[:5]])
    with torch.no_grad():
        out = model(ids, mask, timestamps=tsb).logits
        want = ref(ids, mask, timestamps=tsb).logits
        step, _ = model.step(ids[:1, :3], model.init_state(1), timestamps=tsb[:1, :3])
    # logits in the model's dtype; a 16-bit model's in float32 (SeqRecPreTrainedModel.score: 16-bit logits tie)
    logits_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    assert out.dtype == step.dtype == logits_dtype and torch.isfinite(out).all() and torch.isfinite(step).all()
    tol = 1e-4 if dtype == torch.float64 else 0.1 * (1 + want.abs().max().item())
    assert (out.float() - want).abs().max().item() <= tol


def test_window_state_timestamps_are_checked_like_a_history():
    """A TiM4Rec window state whose window_ts decrease, are negative, or are milliseconds within its window_len items
    was re-encoded as it was (forward refuses such a history): refused naming the state tensor and the row. Slots past
    window_len are not read and not checked."""
    model = faithful()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    _, st = model.step(ids, model.init_state(2), timestamps=torch.tensor([[1000.0, 1100.0, 1200.0]] * 2,
                                                                          dtype=torch.float64))
    new, ts = torch.tensor([[7], [8]]), torch.tensor([[1300.0], [1300.0]], dtype=torch.float64)
    want, _ = model.step(new, st, timestamps=ts)
    for values, message in (([1200.0, 1100.0, 1000.0], r"timestamps of batch row 1 decrease"),
                            ([-5.0, 1100.0, 1200.0], r"timestamps contain negative values"),
                            ([1.39e12] * 3, r"timestamps of batch row 1 reach .* look like milliseconds")):
        bad = {k: v.clone() for k, v in st.items()}
        bad["window_ts"][1, :3] = torch.tensor(values, dtype=torch.float64)
        with pytest.raises(ValueError, match=rf"^state\['window_ts'\]: {message}"):
            model.step(new, bad, timestamps=ts)
    junk = {k: v.clone() for k, v in st.items()}
    junk["window_ts"][:, 3:] = -7.0                                            # beyond window_len: ignored
    torch.testing.assert_close(model.step(new, junk, timestamps=ts)[0], want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_causal_low_precision_step_keeps_the_ssd_state_in_float32(dtype):
    """TiM4Rec-causal in bfloat16/float16: a step of T > 1 items took the chunked scan's final state in the model's
    dtype, so a state carried on from it held only that dtype's values (bfloat16: ~2e-3 of its scale off the
    one-item steps' after 50 items). The scans' float32 state is kept now, whichever path made it."""
    rel = check_low_precision_state(causal(num_layers=2).to(dtype), ["ssm_state"], n=50, timestamps=True)
    print(f"tim4rec_causal {dtype}: {rel}")
