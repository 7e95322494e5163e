"""LRURec: the real/imag LRU scan op, the model's central invariant (step == full forward), padding, save/load,
the official parameter count, faithfulness to the official algorithm, and that it trains."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))

import zoo  # noqa: E402,F401  (registers the models with AutoConfig / AutoModel)
from equivalence import check_low_precision_state, check_step_equivalence  # noqa: E402
from zoo.models.lrurec import LRURecConfig, LRURecModel, convert_official_state_dict  # noqa: E402
from zoo.ops.lru import lru_scan_doubling, lru_scan_loop, lru_scan_ref, lru_step_ref  # noqa: E402


def _rand_lambda(n, dtype=torch.float64, r_lo=0.3, r_hi=0.995):
    r = torch.rand(n, dtype=dtype) * (r_hi - r_lo) + r_lo
    th = torch.rand(n, dtype=dtype) * 2 * math.pi
    return r * torch.cos(th), r * torch.sin(th)


def _left_mask(B, L, lengths):
    return torch.arange(L)[None, :] >= (L - torch.as_tensor(lengths))[:, None]


def small_model(**kw):
    cfg = dict(hidden_size=16, n_items=50, max_seq_length=64)
    cfg.update(kw)
    return LRURecModel(LRURecConfig(**cfg))


# ----------------------------------------------------------------------------------------------------------- op
@pytest.mark.parametrize("L", [1, 2, 7, 20, 37, 64, 200, 257])
@pytest.mark.parametrize("mask_kind", [None, "left", "random"])
@pytest.mark.parametrize("with_h0", [False, True])
def test_scan_matches_loop(L, mask_kind, with_h0):
    B, N = 3, 6
    u_re, u_im = torch.randn(B, L, N, dtype=torch.float64), torch.randn(B, L, N, dtype=torch.float64)
    lam_re, lam_im = _rand_lambda(N)
    mask = None
    if mask_kind == "left":
        mask = _left_mask(B, L, [L, max(1, L // 2), 1])
    elif mask_kind == "random":
        mask = torch.rand(B, L) > 0.3
    h0 = (torch.randn(B, N, dtype=torch.float64), torch.randn(B, N, dtype=torch.float64)) if with_h0 else (None, None)
    ref = lru_scan_loop(u_re, u_im, lam_re, lam_im, mask, *h0)
    for chunk in (1, 4, 16, 20):
        out = lru_scan_ref(u_re, u_im, lam_re, lam_im, mask, *h0, chunk_size=chunk)
        assert out[0].shape == (B, L, N) and out[1].shape == (B, L, N)
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(lru_scan_doubling(u_re, u_im, lam_re, lam_im, mask, *h0), ref, atol=1e-10, rtol=1e-10)


def test_scan_left_padding_is_exact():
    """Extra left padding (with arbitrary garbage inputs there) changes nothing at real positions; with h0 the state
    enters at the first real position."""
    B, L, N, P = 2, 30, 5, 13
    u_re, u_im = torch.randn(B, L, N, dtype=torch.float64), torch.randn(B, L, N, dtype=torch.float64)
    lam_re, lam_im = _rand_lambda(N)
    h0 = (torch.randn(B, N, dtype=torch.float64), torch.randn(B, N, dtype=torch.float64))
    base = lru_scan_ref(u_re, u_im, lam_re, lam_im, None, *h0)
    g_re, g_im = torch.randn(B, P, N, dtype=torch.float64) * 100, torch.randn(B, P, N, dtype=torch.float64) * 100
    mask = _left_mask(B, L + P, [L, L])
    out = lru_scan_ref(torch.cat([g_re, u_re], 1), torch.cat([g_im, u_im], 1), lam_re, lam_im, mask, *h0)
    torch.testing.assert_close((out[0][:, P:], out[1][:, P:]), base, atol=1e-10, rtol=1e-10)
    assert out[0][:, :P].abs().max() == 0 and out[1][:, :P].abs().max() == 0    # no state before the first item
    # the step form continues the scan exactly
    s = lru_step_ref(u_re[:, -1], u_im[:, -1], lam_re, lam_im, base[0][:, -2], base[1][:, -2])
    torch.testing.assert_close(s, (base[0][:, -1], base[1][:, -1]), atol=1e-12, rtol=1e-12)


def test_scan_grads_finite_and_match_loop():
    B, L, N = 2, 45, 4
    u_re = torch.randn(B, L, N, dtype=torch.float64, requires_grad=True)
    u_im = torch.randn(B, L, N, dtype=torch.float64, requires_grad=True)
    nu_log = torch.randn(N, dtype=torch.float64).mul(0.5).sub(2).requires_grad_()
    th_log = torch.randn(N, dtype=torch.float64).requires_grad_()
    mask = _left_mask(B, L, [L, 17])
    h0 = (torch.randn(B, N, dtype=torch.float64, requires_grad=True),
          torch.randn(B, N, dtype=torch.float64, requires_grad=True))
    leaves = [u_re, u_im, nu_log, th_log, *h0]
    w = torch.randn(B, L, N, dtype=torch.float64)

    def grads(fn):
        lam_re = torch.exp(-torch.exp(nu_log)) * torch.cos(torch.exp(th_log))
        lam_im = torch.exp(-torch.exp(nu_log)) * torch.sin(torch.exp(th_log))
        h_re, h_im = fn(u_re, u_im, lam_re, lam_im, mask, *h0)
        loss = (w * h_re).sum() + (h_im ** 2).sum()
        return torch.autograd.grad(loss, leaves)

    g_ref, g_loop = grads(lru_scan_ref), grads(lru_scan_loop)
    for a, b in zip(g_ref, g_loop, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: lru_scan_ref(a, b, c, d, mask[:, :9], chunk_size=4),
        (torch.randn(B, 9, 3, dtype=torch.float64, requires_grad=True),
         torch.randn(B, 9, 3, dtype=torch.float64, requires_grad=True),
         *[t.requires_grad_() for t in _rand_lambda(3)]))


def test_scan_train_shape_float32_matches_the_float64_loop(one_thread):
    """At the training shape (B=128, L=200, N=128: many chunks, rows of every length) in the model's channel-first
    layout and float32, the chunked scan's states and gradients are the float64 loop's to float32 rounding, and
    finite. (Speed is never asserted: bench/bench_train_cost.py measures LRURec's training step, this scan included.)"""
    B, L, N = 128, 200, 128
    u_re = torch.randn(N, B * L).t().reshape(B, L, N).requires_grad_()  # any layout works; this one is the model's
    u_im = torch.randn(B, L, N, requires_grad=True)
    lam_re, lam_im = (t.float().requires_grad_() for t in _rand_lambda(N))
    mask = _left_mask(B, L, torch.randint(1, L + 1, (B,)))
    w = torch.randn(B, L, N)
    leaves = [u_re, u_im, lam_re, lam_im]

    def run(fn, dtype):
        h_re, h_im = fn(*(t.to(dtype) for t in leaves), mask)
        loss = (w.to(dtype) * h_re).sum() + h_im.square().mean()
        return (h_re, h_im), torch.autograd.grad(loss, leaves)

    got, g_got = run(lru_scan_ref, torch.float32)
    want, g_want = run(lru_scan_loop, torch.float64)
    assert got[0].dtype == torch.float32 and got[0].shape == (B, L, N)
    for a, b in zip((*got, *g_got), (*want, *g_want), strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b.double(), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ central invariant
@pytest.mark.parametrize("plan", ["ones", "mixed"])
def test_step_equivalence(plan, one_thread):
    # initializer_range 0.1 (cutoff 0.2), not 0.02: at 0.02 the history moved the last logits by only ~2e-3, 20x atol
    model = small_model(initializer_range=0.1, initializer_cutoff=0.2)
    worst = check_step_equivalence(model, [1, 2, 37, 200, 600], chunk_plan=plan, atol=1e-4, seed=1)
    print(f"LRURec step vs full forward ({plan}): max abs diff {worst:.3g}")
    assert worst < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_step_runs_the_recurrence_in_float32(dtype, one_thread):
    """A bfloat16/float16 model's step cast the float32 state down to the model's dtype and ran the recurrence there:
    one-item steps re-rounded the state every event (bfloat16: ~2e-2 of its scale after 50 items here; 1.2 of the
    logits, scale 23, on the bundled card). The recurrence now runs in float32 from the float32 state (``u`` and ``lam`` cast up), in
    the forward and the many-item step too."""
    model = small_model(initializer_range=0.1, initializer_cutoff=0.2).to(dtype)
    rel = check_low_precision_state(model, ["lru_state_re", "lru_state_im"], n=50)
    print(f"lrurec {dtype}: {rel}")


def test_step_multi_item_and_state_untouched():
    model = small_model().eval()
    ids = torch.randint(1, 50, (3, 11))
    state = model.init_state(3)
    assert set(state) == {"lru_state_re", "lru_state_im"}
    assert state["lru_state_re"].shape == (3, 2, 32) and state["lru_state_re"].dtype == torch.float32
    logits_all, s_all = model.step(ids, state, all_positions=True)
    assert all(v.abs().max() == 0 for v in state.values())                      # not modified in place
    s, outs = state, []
    for t in range(11):
        before = {k: v.clone() for k, v in s.items()}
        lg, s_new = model.step(ids[:, t:t + 1], s)
        assert all(torch.equal(before[k], s[k]) for k in s)
        outs.append(lg)
        s = s_new
    torch.testing.assert_close(torch.stack(outs, 1), logits_all, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, s_all, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        full = model(*model.pad_batch(ids.tolist())).logits
    torch.testing.assert_close(logits_all[:, -1], full, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------- padding
def test_padding_invariance():
    model = small_model().eval()
    hist = [[3, 4, 5, 6, 7, 8, 9], [10, 11], [12]]
    ids, mask = model.pad_batch(hist)
    assert model.padding_side == "left" and mask[:, -1].all()
    with torch.no_grad():
        out = model(ids, mask)
        P = 25                                                                   # extra left pads
        ids2 = torch.cat([torch.zeros(3, P, dtype=torch.long), ids], 1)
        mask2 = torch.cat([torch.zeros(3, P, dtype=torch.bool), mask], 1)
        out2 = model(ids2, mask2)
        torch.testing.assert_close(out2.logits, out.logits, atol=1e-5, rtol=1e-5)
        for r, h in enumerate(hist):
            n = len(h)
            single = model(torch.tensor([h]))                                    # no padding at all
            torch.testing.assert_close(out.hidden_states[r, -n:], single.hidden_states[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out2.hidden_states[r, -n:], single.hidden_states[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="left-padded"):
        model(torch.tensor([[5, 6, 0]]))


# ----------------------------------------------------------------------------------------------------- faithfulness
def _official_algorithm_logits(model, ids):
    """Independent re-implementation of the official forward from the spec (models.md §6.1-6.2): complex dtype,
    left padding to a power of two, recursive-doubling scan whose carry is masked when it comes from padding."""
    cd = torch.complex128
    mask = ids > 0
    x = F.layer_norm(F.embedding(ids, model.item_embedding.weight.double()), (model.config.hidden_size,),
                     model.emb_layer_norm.weight.double(), model.emb_layer_norm.bias.double(), model.config.layer_norm_eps)
    L = ids.shape[1]
    Lp = 2 ** math.ceil(math.log2(L)) if L > 1 else 1
    x = F.pad(x, (0, 0, Lp - L, 0))
    mask = F.pad(mask, (Lp - L, 0))
    B = ids.shape[0]
    for blk in model.lru_blocks:
        lay = blk.lru_layer
        nu, theta, gamma = torch.exp(lay.params_log.double())
        lam = torch.exp(torch.complex(-nu, theta))
        W_in = torch.complex(lay.in_proj.weight_re.double(), lay.in_proj.weight_im.double())
        b_in = torch.complex(lay.in_proj.bias_re.double(), lay.in_proj.bias_im.double())
        W_out = torch.complex(lay.out_proj.weight_re.double(), lay.out_proj.weight_im.double())
        b_out = torch.complex(lay.out_proj.bias_re.double(), lay.out_proj.bias_im.double())
        h = (x.to(cd) @ W_in.T + b_in) * gamma
        N = h.shape[-1]
        powers = lam.unsqueeze(0)                                                # [l/2, N]
        for i in range(1, int(math.log2(Lp)) + 1):
            l = 2 ** i
            hh = h.reshape(B * Lp // l, l, N)
            mm = mask.reshape(B * Lp // l, l)
            if i > 1:
                powers = torch.cat([powers, powers * powers[-1]], 0)
            h1, h2 = hh[:, : l // 2], hh[:, l // 2:]
            h2 = h2 + powers * h1[:, -1:] * mm[:, l // 2 - 1: l // 2].unsqueeze(-1)
            h = torch.cat([h1, h2], 1).reshape(B, Lp, N)
        y = (h @ W_out.T + b_out).real + x
        y = F.layer_norm(y, y.shape[-1:], lay.layer_norm.weight.double(), lay.layer_norm.bias.double(), lay.layer_norm.eps)
        ff = blk.feed_forward
        z = F.gelu(F.linear(y, ff.w_1.weight.double(), ff.w_1.bias.double()))
        z = F.linear(z, ff.w_2.weight.double(), ff.w_2.bias.double()) + y
        x = F.layer_norm(z, z.shape[-1:], ff.layer_norm.weight.double(), ff.layer_norm.bias.double(), ff.layer_norm.eps)
    x = x[:, -L:]
    return x @ model.item_embedding.weight.double().T + model.item_bias.double()


def test_matches_official_algorithm():
    model = small_model().eval()
    hist = [list(torch.randint(1, 50, (n,)).tolist()) for n in (1, 5, 37, 100)]
    ids, mask = model.pad_batch(hist, max_length=100)                           # L = 100 -> official pads to 128
    ref = _official_algorithm_logits(model, ids)
    with torch.no_grad():
        ours = model.double()(ids, mask).hidden_states
        ours = model.score(ours)
    for r, h in enumerate(hist):
        n = len(h)
        torch.testing.assert_close(ours[r, -n:], ref[r, -n:], atol=1e-9, rtol=1e-9)


def test_official_state_dict_conversion():
    model = small_model()
    sd = model.state_dict()
    official = {"embedding.token.weight": sd["item_embedding.weight"], "model.bias": sd["item_bias"]}
    for k in ("weight", "bias"):
        official[f"embedding.layer_norm.{k}"] = sd[f"emb_layer_norm.{k}"]
    for k, v in sd.items():
        if k.startswith("lru_blocks.") and not k.endswith("_im"):
            if k.endswith("_re"):
                official["model." + k[:-3]] = torch.complex(v, sd[k[:-3] + "_im"])
            else:
                official["model." + k] = v
    conv = convert_official_state_dict(official)
    assert set(conv) == set(sd)
    for k in sd:
        assert torch.equal(conv[k], sd[k]), k


def test_init_is_official():
    model = LRURecModel(LRURecConfig())
    for name, p in model.named_parameters():
        if "layer_norm" in name:
            assert torch.all(p == (1.0 if name.endswith("weight") else 0.0)), name
        elif "params_log" in name:
            nu, theta, gamma = torch.exp(p.detach().double())
            r = torch.exp(-nu)
            assert r.min() >= 0.8 - 1e-6 and r.max() <= 0.99 + 1e-6
            assert theta.min() >= 0 and theta.max() <= 2 * math.pi + 1e-6
            torch.testing.assert_close(gamma, torch.sqrt(1 - r ** 2), atol=1e-6, rtol=1e-5)
        else:
            assert p.abs().max() <= 0.04 + 1e-7, name
            assert 0.012 < p.std() < 0.02, (name, p.std())                          # N(0, .02) cut at 2 std: .0176


def test_parameter_count_official():
    """Official count (complex parameters counted once): 322,841 for ML-1M defaults.

    Each complex tensor is stored here as a *_re / *_im pair, so the raw numel is 355,993 (= 322,841 + the 33,152
    imaginary parts of in_proj / out_proj in the two blocks: 2 x (64*128 + 128 + 128*64 + 64))."""
    model = LRURecModel(LRURecConfig(n_items=3417))
    named = dict(model.named_parameters())
    pairs = [n for n in named if n.endswith("_re")]
    assert all(n[:-3] + "_im" in named and named[n].shape == named[n[:-3] + "_im"].shape for n in pairs)
    official = sum(p.numel() for n, p in named.items() if not n.endswith("_im"))
    assert official == 322_841
    assert sum(p.numel() for p in model.parameters()) == 355_993
    assert model.item_embedding.weight.numel() == 218_688
    block = sum(p.numel() for n, p in model.lru_blocks[0].named_parameters() if not n.endswith("_im"))
    assert block == 50_304


# --------------------------------------------------------------------------------------------------------- save/load
def test_save_load_roundtrip(tmp_path):
    from transformers import AutoModel

    model = small_model().eval()
    model.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files and "config.json" in files
    assert not [f for f in files if f.endswith(".bin") or f.endswith(".pt") or f.endswith(".pth")], files
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is LRURecModel and loaded.config.model_type == "lrurec"
    loaded.eval()
    ids, mask = model.pad_batch([[1, 2, 3, 4], [5, 6], [7, 8, 9, 10, 11, 12, 13]])
    with torch.no_grad():
        assert torch.equal(model(ids, mask).logits, loaded(ids, mask).logits)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


# -------------------------------------------------------------------------------------------------------------- train
def test_trains_on_synthetic_next_item(one_thread):
    torch.manual_seed(0)
    V, B, L = 30, 32, 16
    model = small_model(n_items=V, hidden_size=32, hidden_dropout=0.1, attn_dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def batch():
        start = torch.randint(0, V - 1, (B, 1))
        seq = (start + torch.arange(L + 1)) % (V - 1) + 1                        # next item = item + 1 (mod)
        lengths = torch.randint(2, L + 1, (B,))
        mask = _left_mask(B, L, lengths)
        ids = torch.where(mask, seq[:, :-1], 0)
        labels = torch.where(mask, seq[:, 1:], 0)
        return ids, mask, labels

    model.train()
    losses = []
    for _ in range(40):
        ids, mask, labels = batch()
        loss = model(ids, mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.0
    assert sum(losses[-5:]) / 5 < 0.25 * losses[0], losses
    model.eval()
    ids, mask, labels = batch()
    acc = (model.predict(ids, mask).argmax(1) == labels[:, -1]).float().mean()
    assert acc > 0.9


# ---------------------------------------------------------------------------------------------------------------- onnx
def test_no_complex_dtype_and_onnx_export(tmp_path):
    """Real/imag pairs only, so encode + score trace to plain ONNX (legacy exporter, fixed length, left padding)."""
    model = small_model().eval()
    assert not any(torch.is_complex(t) for t in model.state_dict().values())
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")

    class Head(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            return self.m.score(self.m.encode(ids, mask)[:, -1])

    head = Head(model).eval()
    ids, mask = model.pad_batch([[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11]], max_length=40)
    pad = 40 - ids.shape[1]
    ids = torch.cat([torch.zeros(2, pad, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(2, pad, dtype=torch.bool), mask], 1)
    path = str(tmp_path / "lrurec.onnx")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(head, (ids, mask), path, dynamo=False, opset_version=18, input_names=["ids", "mask"])
    sess = ort.InferenceSession(path)
    out = sess.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})[0]
    with torch.no_grad():
        ref = head(ids, mask).numpy()
    assert abs(out - ref).max() < 1e-4


def test_step_refuses_non_finite_state():
    """A NaN or infinite state value is an error naming the tensor (it gave NaN logits)."""
    model = small_model().eval()
    for name in ("lru_state_re", "lru_state_im"):
        st = model.init_state(2)
        st[name][1, 0, 3] = float("nan") if name.endswith("re") else float("-inf")
        with pytest.raises(ValueError, match=rf"state\['{name}'\] holds NaN or infinite values"):
            model.step(torch.tensor([[1], [2]]), st)


def test_config_refuses_a_ring_with_r_min_above_r_max():
    """The ring init of the eigenvalues needs 0 < r_min <= r_max < 1; reversed bounds are an error naming them."""
    with pytest.raises(ValueError, match="r_min <= r_max"):
        LRURecConfig(r_min=0.95, r_max=0.9)


# ------------------------------------------------------------------ mutation audit 6 (E): init, training path, validation
def test_ring_init_phase_covers_the_full_circle():
    """Official ring init: ``theta = 2 pi u2`` (u2 ~ U(0, 1)); a phase drawn on [0, pi) (half the circle: every
    eigenvalue in the upper half-plane) passed ``test_init_is_official``, which only bounds theta by 2 pi."""
    model = LRURecModel(LRURecConfig())                                      # N = 128 channels per layer
    for blk in model.lru_blocks:
        theta = torch.exp(blk.lru_layer.params_log[1].detach().double())
        assert theta.max() > 1.5 * math.pi and theta.min() < 0.5 * math.pi
        lam_re, lam_im = blk.lru_layer.lam()
        assert (lam_im < 0).sum() > 32 and (lam_im > 0).sum() > 32           # both half-planes populated


def test_training_embedding_is_dropped_out_then_layernormed():
    """Official order ``LN(Dropout(E[s]))``: in training every embedded row is still layer-normalised (mean 0, variance
    1 at init), while ``Dropout(LN(...))`` (identical in eval) leaves zeros and x2-scaled entries. (Init std 1 so that
    LayerNorm's eps = 1e-5 is negligible against the row variance.)"""
    model = small_model(hidden_dropout=0.5, initializer_range=1.0, initializer_cutoff=2.0).train()
    ids = torch.randint(1, 50, (4, 30))
    x = model.embed(ids)
    assert not torch.allclose(x, model.eval().embed(ids))                    # dropout did act in training
    assert (x == 0).sum() == 0
    torch.testing.assert_close(x.mean(-1), torch.zeros(4, 30), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.var(-1, unbiased=False), torch.ones(4, 30), atol=1e-3, rtol=0)


def test_item_embedding_has_no_padding_idx_so_row_0_trains():
    """The official embedding has no ``padding_idx``: row 0 is a scored output class (its logit enters the softmax) and
    gets a gradient; ``padding_idx=0`` froze it (and every other test still passed)."""
    model = small_model().train()
    assert model.item_embedding.padding_idx is None
    ids, mask = model.pad_batch([[3, 4, 5], [6, 7]])
    labels = torch.where(mask, ids % 49 + 1, torch.zeros_like(ids))
    model(ids, mask, labels=labels).loss.backward()
    assert model.item_embedding.weight.grad[0].abs().sum() > 0


def test_config_refuses_bad_chunk_size_and_init_range():
    """``scan_chunk_size = 0`` was silently treated as 1 without the check; a non-positive (or NaN: ``<= 0`` let it
    through) init std/cutoff is refused, naming the field."""
    with pytest.raises(ValueError, match=r"scan_chunk_size must be >= 1, got 0"):
        LRURecConfig(scan_chunk_size=0)
    for field in ("initializer_range", "initializer_cutoff"):
        for bad in (0.0, -0.1, float("nan")):
            with pytest.raises(ValueError, match=rf"{field} must be a finite number > 0, got {bad}"):
                LRURecConfig(**{field: bad})
    assert LRURecConfig(dropout=0.3).hidden_dropout == 0.3                    # the documented alias


def test_from_pretrained_takes_the_dropout_alias_as_hidden_dropout(tmp_path):
    """``LRURecModel.from_pretrained(path, dropout=0.5)`` was refused as "dropout is not a field of LRURecConfig (did
    you mean attn_dropout?)" and ``AutoConfig.from_pretrained(path, dropout=0.5)`` ignored it with a warning, though
    the config takes ``dropout`` as the documented alias of ``hidden_dropout`` (official ``bert_dropout``): it
    overrides the saved ``hidden_dropout`` on every entry point now, checked and named as the constructor does, and
    refused beside a ``hidden_dropout`` that differs. A name that is neither a field nor an alias is still refused."""
    from transformers import AutoConfig, AutoModel

    small_model().save_pretrained(tmp_path)
    for load in (LRURecModel.from_pretrained, AutoModel.from_pretrained):
        model = load(tmp_path, dropout=0.5)
        assert model.config.hidden_dropout == 0.5 and model.emb_dropout.p == 0.5
        assert load(tmp_path, dropout=0.3, hidden_dropout=0.3).config.hidden_dropout == 0.3
        with pytest.raises(ValueError, match=r"^dropout=0.5 contradicts hidden_dropout=0.4: dropout is an alias of "
                                             r"hidden_dropout; give one of them$"):
            load(tmp_path, dropout=0.5, hidden_dropout=0.4)
        with pytest.raises(ValueError, match=r"^dropout must be in \[0, 1\), got 1.5$"):
            load(tmp_path, dropout=1.5)
        with pytest.raises(ValueError, match=r"^dropuot is not a field of LRURecConfig "):
            load(tmp_path, dropuot=0.5)
    for load in (LRURecConfig.from_pretrained, AutoConfig.from_pretrained):
        assert load(tmp_path, dropout=0.5).hidden_dropout == 0.5
        assert load(tmp_path).hidden_dropout == small_model().config.hidden_dropout       # the saved value otherwise
    with pytest.raises(ValueError, match=r"^dropout is an alias of hidden_dropout, a field of LRURecConfig: with "
                                         r"config= given, set hidden_dropout on that config instead of passing "
                                         r"dropout= to from_pretrained$"):
        LRURecModel.from_pretrained(tmp_path, config=small_model().config, dropout=0.5)


def test_official_state_dict_conversion_strips_module_prefix_and_refuses_unknown_keys():
    """A DataParallel-style ``module.`` prefix on every key is removed (documented); an unknown key is a KeyError
    naming it instead of being dropped."""
    model = small_model()
    sd = model.state_dict()
    official = {"embedding.token.weight": sd["item_embedding.weight"], "model.bias": sd["item_bias"],
                "embedding.layer_norm.weight": sd["emb_layer_norm.weight"],
                "embedding.layer_norm.bias": sd["emb_layer_norm.bias"]}
    for k, v in sd.items():
        if k.startswith("lru_blocks.") and not k.endswith("_im"):
            official["model." + (k[:-3] if k.endswith("_re") else k)] = (
                torch.complex(v, sd[k[:-3] + "_im"]) if k.endswith("_re") else v)
    conv = convert_official_state_dict({"module." + k: v for k, v in official.items()})
    assert set(conv) == set(sd) and all(torch.equal(conv[k], sd[k]) for k in sd)
    for wrapper in ("model.", "module.model."):    # the documented model. wrapper was not stripped (a KeyError)
        conv = convert_official_state_dict({wrapper + k: v for k, v in official.items()})
        assert set(conv) == set(sd) and all(torch.equal(conv[k], sd[k]) for k in sd)
    with pytest.raises(KeyError, match="unexpected key in the official LRURec state dict: 'decoder.weight'"):
        convert_official_state_dict({**official, "decoder.weight": torch.zeros(2)})


def test_scan_refuses_mismatched_mask_and_lambda_shapes():
    """Shape errors of ``lru_scan_ref`` name the expected shapes (a mask of the wrong length was a broadcast error or
    silently broadcast)."""
    u = torch.randn(2, 5, 3)
    lam_re, lam_im = torch.full((3,), 0.5), torch.zeros(3)
    with pytest.raises(ValueError, match=r"mask must be \[B, L\] = \[2, 5\], got \[2, 6\]"):
        lru_scan_ref(u, u, lam_re, lam_im, torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must be \[B, L\] = \[2, 5\], got \[1, 5\]"):
        lru_scan_ref(u, u, lam_re, lam_im, torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"lam_re/lam_im must be \[N\] = \[3\], got \[4\] and \[3\]"):
        lru_scan_ref(u, u, torch.zeros(4), lam_im)


def test_config_defaults_are_the_documented_official_ones():
    """The documented defaults (official LRURec ML-1M template; PyTorch's LayerNorm eps, not RecBole's 1e-12). The
    parameter count pins the sizes only: a changed dropout or eps default went unnoticed."""
    c = LRURecConfig()
    assert (c.n_items, c.max_seq_length, c.hidden_size, c.num_layers, c.state_expansion, c.lru_state_size) == \
        (3417, 200, 64, 2, 2, 128)
    assert (c.hidden_dropout, c.attn_dropout, c.layer_norm_eps) == (0.2, 0.2, 1e-5)
    assert (c.r_min, c.r_max, c.initializer_range, c.initializer_cutoff, c.scan_chunk_size) == \
        (0.8, 0.99, 0.02, 0.04, 20)
    m = small_model()
    lay = m.lru_blocks[0]
    assert m.emb_layer_norm.eps == 1e-5 and lay.lru_layer.layer_norm.eps == 1e-5
    assert (m.emb_dropout.p, lay.lru_layer.dropout.p, lay.feed_forward.dropout.p) == (0.2, 0.2, 0.2)
