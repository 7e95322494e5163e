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
