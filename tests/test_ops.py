"""Reference ops vs naive loops, on fresh random inputs (fp32 unless stated)."""

import os

import pytest
import torch

from zoo.ops import (causal_conv1d_ref, causal_conv1d_update_ref, linear_scan, selective_scan_loop,
                     selective_scan_ref, selective_state_update_ref)
from zoo.ops.selective_scan import selective_scan_fn


def _inputs(b=2, e=6, L=37, n=5, dtype=torch.float32, with_state=True):
    g = torch.Generator().manual_seed(L * 31 + n)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return dict(u=r(b, e, L), delta=r(b, e, L) * 0.5, A=-torch.rand(e, n, generator=g, dtype=dtype) * 4 - 0.1,
                B=r(b, n, L), C=r(b, n, L), D=r(e), z=r(b, e, L), delta_bias=r(e) * 0.1,
                initial_state=r(b, e, n) if with_state else None)


@pytest.mark.parametrize("L", [1, 2, 7, 64, 201])
@pytest.mark.parametrize("with_state", [False, True])
def test_selective_scan_ref_matches_loop(L, with_state):
    kw = _inputs(L=L, with_state=with_state)
    out, last = selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
    out2, last2 = selective_scan_loop(**kw, delta_softplus=True, return_last_state=True)
    assert (out - out2).abs().max() <= 1e-5 * max(1.0, out2.abs().max().item())
    assert (last - last2).abs().max() <= 1e-5 * max(1.0, last2.abs().max().item())


def test_selective_scan_ref_optional_args_and_grads():
    kw = _inputs(L=19, dtype=torch.float64)
    for drop in ("D", "z", "delta_bias", "initial_state"):
        k2 = dict(kw, **{drop: None})
        a = selective_scan_ref(**k2, delta_softplus=False)
        b = selective_scan_loop(**k2, delta_softplus=False)
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9), drop
    leaves = {k: v.clone().requires_grad_(True) for k, v in kw.items()}
    out, last = selective_scan_ref(**leaves, delta_softplus=True, return_last_state=True)
    (out.square().sum() + last.sum()).backward()
    grads = {k: v.grad.clone() for k, v in leaves.items()}
    leaves2 = {k: v.clone().requires_grad_(True) for k, v in kw.items()}
    out2, last2 = selective_scan_loop(**leaves2, delta_softplus=True, return_last_state=True)
    (out2.square().sum() + last2.sum()).backward()
    for k in grads:
        assert torch.allclose(grads[k], leaves2[k].grad, atol=1e-9, rtol=1e-7), k


def test_selective_scan_shape_errors():
    kw = _inputs(L=5)
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan_ref(**dict(kw, B=kw["B"][:, :, :3]))
    with pytest.raises(ValueError, match="initial_state must have shape"):
        selective_scan_ref(**dict(kw, initial_state=torch.zeros(2, 6, 4)))


def test_state_update_matches_scan_one_step():
    kw = _inputs(L=1)
    out, last = selective_scan_loop(**kw, delta_softplus=True, return_last_state=True)
    y, st = selective_state_update_ref(kw["initial_state"], kw["u"][..., 0], kw["delta"][..., 0], kw["A"],
                                       kw["B"][..., 0], kw["C"][..., 0], kw["D"], kw["z"][..., 0],
                                       kw["delta_bias"], dt_softplus=True)
    assert torch.allclose(y, out[..., 0], atol=1e-6) and torch.allclose(st, last, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_last_state_comes_back_in_the_compute_dtype(dtype):
    """Every selective-scan entry computes in float32 (float64 for float64) and returns ``y`` in u's dtype and the
    last state in the compute dtype: a 16-bit u's state was rounded to u's dtype, so a state carried from call to
    call (Mamba4Rec's step) was re-rounded every call. For 16-bit inputs the results are the float32 computation's
    exactly (the inputs are cast up first; the dispatch's is the reference's, a float32 u's its CPU kernel's)."""
    kw = {k: v.to(dtype) for k, v in _inputs(L=9).items()}
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    up = {k: v.to(ct) for k, v in kw.items()}
    one, one_up = ({k: v[..., 0] if k in ("u", "delta", "B", "C", "z") else v for k, v in a.items()} for a in (kw, up))

    def step(a):
        return selective_state_update_ref(a["initial_state"], a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"],
                                          a["z"], a["delta_bias"], dt_softplus=True)

    ref = selective_scan_ref(**up, delta_softplus=True, return_last_state=True)
    for name, (y, last), (y32, last32) in (
            ("selective_scan_ref", selective_scan_ref(**kw, delta_softplus=True, return_last_state=True), ref),
            ("selective_scan_loop", selective_scan_loop(**kw, delta_softplus=True, return_last_state=True),
             selective_scan_loop(**up, delta_softplus=True, return_last_state=True)),
            ("selective_scan_fn", selective_scan_fn(**kw, delta_softplus=True, return_last_state=True), ref),
            ("selective_state_update_ref", step(one), step(one_up))):
        assert y.dtype == dtype and last.dtype == ct, (name, y.dtype, last.dtype)
        if name == "selective_scan_fn" and dtype == torch.float32:                  # the CPU kernel
            torch.testing.assert_close((y, last), (y32, last32), atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(last, last32) and torch.equal(y, y32.to(dtype)), name


def test_dispatch_matches_reference_on_cpu(monkeypatch):
    """CPU float32 goes through the fused C++ kernel (else this compared the reference with itself)."""
    if os.environ.get("ZOO_CPU_KERNEL", "1") == "0":
        pytest.skip("ZOO_CPU_KERNEL=0 forces the reference: the dispatch has no kernel to compare")
    from zoo.ops import selective_scan_cpu
    assert selective_scan_cpu.is_available(), \
        f"selective_scan_cpu extension did not build: {selective_scan_cpu.unavailable_reason()}"
    calls = []
    kernel = selective_scan_cpu.selective_scan_cpu
    monkeypatch.setattr(selective_scan_cpu, "selective_scan_cpu", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    kw = _inputs(L=50)
    a = selective_scan_fn(**kw, delta_softplus=True)
    assert len(calls) == 1, "selective_scan_fn did not dispatch to the C++ kernel on CPU float32"
    b = selective_scan_ref(**kw, delta_softplus=True)
    assert (a - b).abs().max() <= 1e-4


def test_linear_scan_grad_matches_loop():
    a = torch.rand(3, 33, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 33, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: linear_scan(a, b, 1), (a, b))


@pytest.mark.parametrize("L", [1, 2, 3, 10])
def test_causal_conv_state_continuation(L):
    x = torch.randn(2, 5, 3 + L)
    w, bias = torch.randn(5, 4), torch.randn(5)
    full, _ = causal_conv1d_ref(x, w, bias, activation="silu")
    head, st = causal_conv1d_ref(x[..., :3], w, bias, activation="silu")
    tail, st2 = causal_conv1d_ref(x[..., 3:], w, bias, st, activation="silu")
    assert torch.allclose(torch.cat([head, tail], -1), full, atol=1e-6)
    one, st3 = causal_conv1d_update_ref(x[..., 3], st, w, bias, "silu")
    assert torch.allclose(one, full[..., 3], atol=1e-6)
    assert torch.equal(st, x[..., :3])                            # state = last width-1 = 3 inputs
    assert torch.equal(st2, x[..., -3:])                           # x has 3 + L >= 4 steps
    assert torch.equal(st3, x[..., 1:4])                           # one step on: window shifted by one


@pytest.mark.gpu
def test_mamba_ssm_kernel_matches_reference():
    """mamba-ssm's CUDA selective scan == our reference (fp32, atol 1e-4)."""
    pytest.importorskip("mamba_ssm", reason="mamba-ssm not installed (pip install ssm-rec-zoo[gpu])")
    from zoo.ops.selective_scan import _mamba_selective_scan_fn
    kw = {k: (v.cuda() if v is not None else None) for k, v in _inputs(b=4, e=64, L=300, n=16, with_state=False).items()}
    kw.pop("initial_state")
    out, last = _mamba_selective_scan_fn(**kw, delta_softplus=True, return_last_state=True)
    ref, last_ref = selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
    assert (out - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())
    assert (last - last_ref).abs().max() <= 1e-4 * max(1.0, last_ref.abs().max().item())


# ------------------------------------------------------------------ mutation audit 6 (E): conv edge cases and validation
def test_causal_conv_kernel_width_one_has_an_empty_state():
    """``d_conv = 1``: the carried state holds the last K-1 = 0 inputs, ``[B, E, 0]`` (slicing ``[-(k - 1):]`` = ``[0:]``
    returned the whole input as the 'state'), and the conv is a per-channel scale + bias."""
    x, w, bias = torch.randn(2, 5, 7), torch.randn(5, 1), torch.randn(5)
    out, st = causal_conv1d_ref(x, w, bias)
    assert st.shape == (2, 5, 0)
    torch.testing.assert_close(out, x * w + bias[:, None])
    out2, st2 = causal_conv1d_ref(x[..., 3:], w, bias, st)
    assert st2.shape == (2, 5, 0)
    torch.testing.assert_close(out2, out[..., 3:])
    one, st3 = causal_conv1d_update_ref(x[..., 0], st, w, bias)
    assert st3.shape == (2, 5, 0)
    torch.testing.assert_close(one, out[..., 0])


def test_causal_conv_state_shorter_than_kernel_and_errors():
    """Fewer new inputs than K-1 (L = 1, 2 with K = 4): the new state is the old state's tail followed by the inputs;
    a bad weight / state shape or an unknown activation is an error naming it (each was silently accepted or a raw
    broadcast error)."""
    x, w = torch.randn(2, 5, 2), torch.randn(5, 4)
    st = torch.randn(2, 5, 3)
    _, new = causal_conv1d_ref(x, w, None, st)
    assert torch.equal(new, torch.cat([st[..., 2:], x], -1))
    with pytest.raises(ValueError, match=r"conv_state must be \[2, 5, 3\], got \[2, 5, 2\]"):
        causal_conv1d_ref(x, w, None, st[..., :2])
    with pytest.raises(ValueError, match=r"conv_state must be \[2, 5, 3\], got \[1, 5, 3\]"):
        causal_conv1d_ref(x, w, None, st[:1])
    with pytest.raises(ValueError, match=r"weight must be \[E=5, K\], got \[4, 4\]"):
        causal_conv1d_ref(x, w[:4])
    with pytest.raises(ValueError, match="unsupported activation 'relu'"):
        causal_conv1d_ref(x, w, activation="relu")


@pytest.mark.parametrize("name, bad, message", [
    ("D", (1,), r"D must have shape \[6\], got \[1\]"),
    ("delta_bias", (1,), r"delta_bias must have shape \[6\], got \[1\]"),
    ("z", (2, 6, 1), r"z must have shape \[2, 6, 5\], got \[2, 6, 1\]"),
])
def test_selective_scan_refuses_broadcastable_wrong_shapes(name, bad, message):
    """Parameters with a wrong but *broadcastable* shape (``D [1]``, ``z [B, E, 1]``...) are refused by the reference
    and the loop, naming the expected shape (without the check they broadcast silently: a different model)."""
    kw = dict(_inputs(L=5), **{name: torch.ones(bad)})
    for fn in (selective_scan_ref, selective_scan_loop):
        with pytest.raises(ValueError, match=message):
            fn(**kw, delta_softplus=True)


def test_selective_scan_cpu_refuses_chunk_below_one():
    """The checkpoint interval must be >= 1 (checked in Python with a clear ValueError before the kernel runs)."""
    from zoo.ops import selective_scan_cpu
    kw = _inputs(L=5)
    with pytest.raises(ValueError, match="selective_scan_cpu: chunk must be >= 1"):
        selective_scan_cpu.selective_scan_cpu(**kw, chunk=0)


# ------------------------------------------------------- CUDA dispatch, checked on CPU with the kernels' own checks
class _FakeCuda(torch.Tensor):
    """A CPU tensor that answers ``is_cuda`` (and so takes the dispatchers' CUDA branches) without a GPU."""

    @property
    def is_cuda(self):
        return True


def _fake(t):
    return None if t is None else t.as_subclass(_FakeCuda)


def _plain(t):
    return None if t is None else t.as_subclass(torch.Tensor)


def _causal_conv1d_stub(calls):
    """causal-conv1d's ``causal_conv1d_fn`` on CPU: its wrapper's ``.contiguous()``, then the TORCH_CHECKs of
    ``causal_conv1d_fwd`` (csrc/causal_conv1d.cpp) as assertions, then the reference's result; records each x."""
    def stub(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
             final_states_out=None, activation=None):
        assert activation in (None, "silu", "swish"), "activation must be None, silu, or swish"
        if x.stride(2) != 1 and x.stride(1) != 1:
            x = x.contiguous()
        ok = (torch.float32, torch.float16, torch.bfloat16)
        assert x.dtype in ok and weight.dtype in ok, f"input type {x.dtype} / weight type {weight.dtype}"
        assert x.is_cuda and weight.is_cuda
        dim, width = x.shape[1], weight.shape[-1]
        assert weight.shape == (dim, width)
        assert x.stride(2) == 1 or x.stride(1) == 1
        if x.stride(1) == 1 and x.stride(2) > 1:
            assert dim % 8 == 0, f"causal_conv1d only supports channel dimension divisible by 8 (dim={dim})"
            assert x.stride(2) % 8 == 0 and x.stride(0) % 8 == 0, f"channel-last strides {x.stride()}"
            assert x.storage_offset() % 8 == 0, "channel-last x off the 16-byte vector alignment"
        assert 2 <= width <= 4, f"causal_conv1d only supports width between 2 and 4 (width={width})"
        if bias is not None:
            assert bias.dtype == weight.dtype and bias.is_cuda and bias.shape == (dim,)
        calls.append(tuple(x.stride()))
        return causal_conv1d_ref(_plain(x), _plain(weight), _plain(bias), None, activation)[0]
    return stub


def _channel_last(b, e, L, dtype=torch.float32):
    """``[B, E, L]`` with ``stride(1) == 1``: the first half of a transposed ``[B, L, 2E]`` projection, as
    Mamba4Rec's conv input."""
    return torch.randn(b, L, 2 * e, dtype=dtype).transpose(1, 2)[:, :e]


@pytest.mark.parametrize("case, kernel", [
    ("channel-first", True), ("channel-last E=16", True), ("channel-last E=18", True), ("width 1", False),
    ("width 5", False), ("float64", False), ("bias in another dtype", False), ("state carried in", False),
])
def test_causal_conv1d_cuda_dispatch_takes_the_kernel_only_where_it_accepts_the_input(monkeypatch, case, kernel):
    """On CUDA with causal-conv1d installed, the dispatch hands the kernel only what its TORCH_CHECKs accept: widths
    2..4, its dtypes, and a channel-last x (Mamba4Rec's) only with channels and strides multiples of 8, else the same
    x channel-first. Without that a Mamba4Rec with ``d_conv`` 1 or 5+, or ``expand * hidden`` not a multiple of 8,
    trained on CPU and raised in its first CUDA forward. Either way the result is the reference's."""
    import zoo.ops.conv as conv

    calls = []
    monkeypatch.setattr(conv, "_causal_conv1d_fn", _causal_conv1d_stub(calls))
    e, k, dtype, state = 6, 4, torch.float32, None
    x = torch.randn(2, e, 9)
    if case.startswith("channel-last"):
        e = int(case.split("=")[1])
        x = _channel_last(2, e, 9)
    elif case.startswith("width"):
        k = int(case.split()[1])
    elif case == "float64":
        x, dtype = x.double(), torch.float64
    elif case == "state carried in":
        state = torch.randn(2, e, k - 1)
    w, bias = torch.randn(e, k, dtype=dtype), torch.randn(e, dtype=dtype)
    if case == "bias in another dtype":                          # the reference's error, not the kernel's
        with pytest.raises(RuntimeError, match="bias type"):
            conv.causal_conv1d(_fake(x), _fake(w), _fake(bias.bfloat16()), None, "silu")
        assert not calls
        return
    ref = causal_conv1d_ref(x, w, bias, state, "silu")
    out, tail = conv.causal_conv1d(_fake(x), _fake(w), _fake(bias), _fake(state), "silu")
    assert len(calls) == int(kernel), calls
    if case == "channel-last E=16":
        assert calls[0][1] == 1, "an accepted channel-last x is passed as it is (no copy)"
    if case == "channel-last E=18":
        assert calls[0][2] == 1, "a channel-last x the kernel refuses is passed channel-first"
    torch.testing.assert_close(_plain(out), ref[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(_plain(tail), ref[1])


@pytest.mark.parametrize("kw", [dict(hidden_size=16), dict(hidden_size=18), dict(hidden_size=16, d_conv=1),
                                dict(hidden_size=16, d_conv=5)])
def test_mamba4rec_forward_through_the_causal_conv1d_kernel_checks(monkeypatch, kw):
    """The models that train on CPU also run their CUDA forward with causal-conv1d's checks (QA: hidden 18, so
    E = 36 channel-last, and ``d_conv`` 1 or 5 were refused by the kernel), with the CPU forward's output."""
    import zoo.models.mamba4rec as M
    import zoo.ops.conv as conv
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

    calls = []
    monkeypatch.setattr(conv, "_causal_conv1d_fn", _causal_conv1d_stub(calls))
    real = conv.causal_conv1d
    monkeypatch.setattr(M, "causal_conv1d", lambda x, w, b=None, s=None, a=None: real(
        _fake(x) if s is None else x, _fake(w), _fake(b), s, a))
    m = Mamba4RecModel(Mamba4RecConfig(n_items=30, num_layers=1, d_state=4, **kw)).eval()
    ids, mask = m.pad_batch([[1, 2, 3, 4], [5, 6]])
    with torch.no_grad():
        got = _plain(m.encode(ids, mask))
        monkeypatch.setattr(M, "causal_conv1d", real)
        want = m.encode(ids, mask)
    assert len(calls) == (1 if 2 <= kw.get("d_conv", 4) <= 4 else 0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _mamba_selective_scan_stub(calls):
    """mamba-ssm's ``selective_scan_fn`` on CPU: its wrapper's ``.contiguous()`` calls, the TORCH_CHECKs of
    ``selective_scan_cuda.fwd`` (csrc/selective_scan/selective_scan.cpp) as assertions, then the reference's output
    and, like mamba-ssm, a float32 last state that no gradient flows back from."""
    def stub(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        u, delta, B, C = (t if t.stride(-1) == 1 else t.contiguous() for t in (u, delta, B, C))
        ok = (torch.float32, torch.float16, torch.bfloat16)
        assert u.dtype in ok, f"input type {u.dtype}"
        assert A.dtype == torch.float32, f"weight type {A.dtype}"
        for name, t in (("delta", delta), ("B", B), ("C", C), ("z", z)):
            assert t is None or t.dtype == u.dtype, f"{name} {t.dtype} != input type {u.dtype}"
        for name, t in (("D", D), ("delta_bias", delta_bias)):
            assert t is None or t.dtype == torch.float32, f"{name} must be float32, got {t.dtype}"
        assert delta_bias is None or delta_bias.stride(-1) == 1 or delta_bias.shape[-1] == 1
        assert A.shape[-1] <= 256, "selective_scan only supports state dimension <= 256"
        assert all(t is None or t.is_cuda for t in (u, delta, A, B, C, D, z, delta_bias))
        calls.append({"u": u.dtype, "B": B.dtype, "A": A.dtype})
        args = [_plain(t) for t in (u, delta, A, B, C, D, z, delta_bias)]
        res = selective_scan_ref(*args, delta_softplus=delta_softplus, return_last_state=return_last_state)
        return (res[0], res[1].float().detach()) if return_last_state else res
    return stub


@pytest.mark.parametrize("case, kernel", [
    ("float32", True), ("bfloat16 under autocast", True), ("float32 u, bfloat16 B and C", True),
    ("bfloat16 model", True), ("float64", False), ("bfloat16 u, float32 B", False), ("bfloat16 u, float32 z", False),
    ("state carried in", False),
])
def test_selective_scan_cuda_dispatch_takes_mamba_ssm_only_where_it_gives_the_reference(monkeypatch, case, kernel):
    """On CUDA with mamba-ssm installed, the dispatch hands its kernel only inputs its TORCH_CHECKs accept and whose
    result is the reference's: a float64 u (the kernel takes float/half/bfloat16 only) and a 16-bit u with a wider
    delta/B/C/z go to the reference; a float32 u's bfloat16 B/C and A/D/delta_bias of another dtype are cast to
    float32 as the reference casts them. Before, each of these reached the kernel uncast and was refused."""
    import zoo.ops.selective_scan as ss

    calls = []
    monkeypatch.setattr(ss, "_mamba_selective_scan_fn", _mamba_selective_scan_stub(calls))
    kw = _inputs(b=2, e=8, L=11, n=4, with_state=case == "state carried in")
    kw["delta_bias"] = (torch.randn(8, 2) * 0.1)[:, 0]                  # strided: the kernel wants unit stride
    bf = torch.bfloat16
    if case == "float64":
        kw = {k: None if v is None else v.double() for k, v in kw.items()}
    elif case == "bfloat16 under autocast":                              # Mamba4Rec's call under bf16 autocast
        kw.update({k: kw[k].to(bf) for k in ("u", "delta", "B", "C", "z")})
    elif case == "float32 u, bfloat16 B and C":
        kw.update(B=kw["B"].to(bf), C=kw["C"].to(bf))
    elif case == "bfloat16 model":
        kw = {k: v.to(bf) for k, v in kw.items() if v is not None}
    elif case == "bfloat16 u, float32 B":
        kw.update({k: kw[k].to(bf) for k in ("u", "delta", "C", "z")})
    elif case == "bfloat16 u, float32 z":
        kw.update({k: kw[k].to(bf) for k in ("u", "delta", "B", "C")})
    ref = selective_scan_ref(**kw, delta_softplus=True)
    out = ss.selective_scan_fn(**{k: _fake(v) for k, v in kw.items()}, delta_softplus=True)
    assert len(calls) == int(kernel), calls
    assert out.dtype == ref.dtype == kw["u"].dtype
    tol = 1e-6 if kw["u"].dtype in (torch.float32, torch.float64) else 1e-2
    torch.testing.assert_close(_plain(out), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_scan_cuda_dispatch_last_state_as_the_reference(monkeypatch, dtype):
    """mamba-ssm returns the last state in float32, as the reference does (its compute dtype, also for a 16-bit u:
    a state carried from call to call is not re-rounded each call), and ignores the gradient that flows into it ("not
    considered in the backward pass"): the dispatch sends ``return_last_state`` with a gradient being recorded to the
    reference, so that the state's gradient reaches the inputs."""
    import zoo.ops.selective_scan as ss

    calls = []
    monkeypatch.setattr(ss, "_mamba_selective_scan_fn", _mamba_selective_scan_stub(calls))
    kw = {k: v.to(dtype) for k, v in _inputs(b=2, e=8, L=11, n=4, with_state=False).items() if v is not None}
    kw["A"], kw["D"], kw["delta_bias"] = kw["A"].float(), kw["D"].float(), kw["delta_bias"].float()
    with torch.no_grad():
        out, last = ss.selective_scan_fn(**{k: _fake(v) for k, v in kw.items()}, delta_softplus=True,
                                         return_last_state=True)
    assert len(calls) == 1
    ref, last_ref = selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
    assert last.dtype == last_ref.dtype == torch.float32
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(_plain(last), last_ref, atol=tol, rtol=tol)

    leaves = {k: v.clone().requires_grad_(True) for k, v in kw.items()}
    out, last = ss.selective_scan_fn(**{k: _fake(v) for k, v in leaves.items()}, delta_softplus=True,
                                     return_last_state=True)
    assert len(calls) == 1, "return_last_state with a gradient went to mamba-ssm, which drops the state's gradient"
    (out.float().square().sum() + last.float().sum()).backward()
    leaves2 = {k: v.clone().requires_grad_(True) for k, v in kw.items()}
    out2, last2 = selective_scan_ref(**leaves2, delta_softplus=True, return_last_state=True)
    (out2.float().square().sum() + last2.float().sum()).backward()
    for k in leaves:
        torch.testing.assert_close(_plain(leaves[k].grad), leaves2[k].grad, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ causal-conv1d's CUDA kernel against the reference
@pytest.mark.gpu
@pytest.mark.parametrize("k", [1, 2, 4, 5])
@pytest.mark.parametrize("layout", ["channel-first", "channel-last E=16", "channel-last E=12"])
def test_causal_conv1d_cuda_kernel_matches_reference(monkeypatch, layout, k):
    """The CUDA fast path (Dao-AILab causal-conv1d, taken with no state carried in) gives the reference's output and
    returned tail, which the dispatch computes itself (zeros in front when L < K-1), for L = 1, 2, 3, 37, with and
    without bias, no activation or SiLU; fp32, atol 1e-5, against the reference on CPU (no TF32). x channel-first,
    or channel-last as Mamba4Rec's (a slice of the transposed input projection; E = 12 misses the kernel's multiples
    of 8 and goes channel-first). Widths 2..4 reach the kernel (counted: else the test would compare the reference
    with itself); 1 and 5, which it refuses, the reference."""
    pytest.importorskip("causal_conv1d", reason="causal-conv1d not installed (pip install ssm-rec-zoo[gpu])")
    import zoo.ops.conv as conv

    assert conv._causal_conv1d_fn is not None, "causal_conv1d imports, but zoo.ops.conv did not take its kernel"
    calls = []

    def counted(*args, **kw):
        calls.append(tuple(args[0].stride()))
        return kernel(*args, **kw)

    kernel = conv._causal_conv1d_fn
    monkeypatch.setattr(conv, "_causal_conv1d_fn", counted)
    gen = torch.Generator().manual_seed(k)
    e = 6 if layout == "channel-first" else int(layout.split("=")[1])
    n = 0
    for L in (1, 2, 3, 37):
        for with_bias in (False, True):
            for activation in (None, "silu"):
                w = torch.randn(e, k, generator=gen)
                bias = torch.randn(e, generator=gen) if with_bias else None
                if layout == "channel-first":
                    x = torch.randn(3, e, L, generator=gen)
                    xc = x.cuda()
                else:                                   # the first half of a transposed [B, L, 2E] projection
                    base = torch.randn(3, L, 2 * e, generator=gen)
                    x, xc = base.transpose(1, 2)[:, :e], base.cuda().transpose(1, 2)[:, :e]
                    assert xc.stride(1) == 1
                want, want_tail = causal_conv1d_ref(x, w, bias, None, activation)
                out, tail = conv.causal_conv1d(xc, w.cuda(), None if bias is None else bias.cuda(), None, activation)
                what = (layout, k, L, with_bias, activation)
                assert out.is_cuda and out.shape == want.shape and tail.shape == want_tail.shape == (3, e, k - 1), what
                torch.testing.assert_close(out.cpu(), want, atol=1e-5, rtol=1e-5, msg=lambda m: f"{what}: {m}")
                torch.testing.assert_close(tail.cpu(), want_tail, atol=0, rtol=0, msg=lambda m: f"{what}: {m}")
                n += 1
    assert len(calls) == (n if 2 <= k <= 4 else 0), calls
    if layout == "channel-last E=16" and calls:
        assert all(s[1] == 1 for s in calls), "an accepted channel-last x is passed as it is"
    if layout == "channel-last E=12" and calls:
        assert all(s[2] == 1 for s in calls), "a channel-last x the kernel refuses is passed channel-first"
