"""SSD (Mamba-2) reference ops: chunked == loop == steps, seq_idx isolation, gated RMSNorm, gradients."""

import pytest
import torch
import torch.nn.functional as F

from zoo.ops.conv import causal_conv1d_ref

from zoo.ops.ssd import (causal_conv1d_act, rmsnorm_gated_ref, ssd_chunk_scan_ref, ssd_scan_fn, ssd_scan_loop,
                         ssd_step_ref)


def inputs(b=2, L=37, h=4, p=3, g=2, n=5, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)
    x = r(b, L, h, p)
    dt = F.softplus(r(b, L, h) - 1)
    A = -torch.exp(r(h) * 0.5)
    B, C = r(b, L, g, n), r(b, L, g, n)
    D = r(h)
    h0 = r(b, h, p, n)
    return x, dt, A, B, C, D, h0


@pytest.mark.parametrize("chunk", [1, 3, 8, 32, 64])
@pytest.mark.parametrize("with_init", [False, True])
def test_chunked_equals_loop(chunk, with_init):
    x, dt, A, B, C, D, h0 = inputs()
    h0 = h0 if with_init else None
    y, s = ssd_chunk_scan_ref(x, dt, A, B, C, chunk, D, h0)
    y2, s2 = ssd_scan_loop(x, dt, A, B, C, D, h0)
    assert y.shape == x.shape and s.shape == (2, 4, 3, 5)
    torch.testing.assert_close(y, y2, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(s, s2, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("chunk", [1, 3, 8, 32, 64])
def test_seq_idx_blocks_state_flow(chunk):
    x, dt, A, B, C, D, h0 = inputs(b=2, L=30)
    cuts = [[0] * 7 + [1] * 13 + [2] * 10, [0] * 30]
    seq_idx = torch.tensor(cuts)
    y, s = ssd_chunk_scan_ref(x, dt, A, B, C, chunk, D, h0, seq_idx)
    y2, s2 = ssd_scan_loop(x, dt, A, B, C, D, h0, seq_idx)
    torch.testing.assert_close(y, y2, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(s, s2, atol=1e-10, rtol=1e-9)
    # each segment equals an independent scan of that segment alone (zero initial state after the first)
    for lo, hi in [(0, 7), (7, 20), (20, 30)]:
        init = h0[:1] if lo == 0 else None
        ys, ss = ssd_scan_loop(x[:1, lo:hi], dt[:1, lo:hi], A, B[:1, lo:hi], C[:1, lo:hi], D, init)
        torch.testing.assert_close(y[:1, lo:hi], ys, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(s[:1], ss, atol=1e-10, rtol=1e-9)
    with pytest.raises(ValueError, match="non-decreasing"):
        ssd_chunk_scan_ref(x, dt, A, B, C, 8, D, None, seq_idx.flip(1))


def test_steps_equal_loop_and_chunks_continue():
    x, dt, A, B, C, D, h0 = inputs(L=20)
    y_ref, s_ref = ssd_scan_loop(x, dt, A, B, C, D, h0)
    s = h0
    for t in range(20):
        y, s = ssd_step_ref(s, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        torch.testing.assert_close(y, y_ref[:, t], atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(s, s_ref, atol=1e-10, rtol=1e-9)
    # chunked scan over two halves with the state carried == one pass
    ya, sa = ssd_chunk_scan_ref(x[:, :9], dt[:, :9], A, B[:, :9], C[:, :9], 4, D, h0)
    yb, sb = ssd_chunk_scan_ref(x[:, 9:], dt[:, 9:], A, B[:, 9:], C[:, 9:], 4, D, sa)
    torch.testing.assert_close(torch.cat([ya, yb], 1), y_ref, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(sb, s_ref, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_final_state_comes_back_in_the_compute_dtype(dtype):
    """Every SSD entry computes in float32 (float64 for float64) and returns ``y`` in x's dtype and the final state in
    the compute dtype: a 16-bit x's final state was rounded to x's dtype, so a state carried on from a many-item step
    (TiM4Rec-causal) was re-rounded. For 16-bit inputs the results are the float32 computation's exactly."""
    args = [t.to(dtype) for t in inputs(L=11)]
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    up = [t.to(ct) for t in args]
    bias = torch.linspace(-0.3, 0.3, 4)
    entries = {"ssd_chunk_scan_ref": lambda x, dt, A, B, C, D, h0: ssd_chunk_scan_ref(x, dt, A, B, C, 4, D, h0),
               "ssd_scan_loop": ssd_scan_loop,
               "ssd_step_ref": lambda x, dt, A, B, C, D, h0: ssd_step_ref(h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0],
                                                                          D),
               "ssd_scan_fn": lambda x, dt, A, B, C, D, h0: ssd_scan_fn(x, dt, A, B, C, 4, D, bias, True, h0)}
    for name, fn in entries.items():
        (y, last), (y32, last32) = fn(*args), fn(*up)
        assert y.dtype == dtype and last.dtype == ct, (name, y.dtype, last.dtype)
        assert torch.equal(last, last32) and torch.equal(y, y32.to(dtype)), name


def test_float32_long_sequence_and_scan_fn():
    x, dt, A, B, C, D, h0 = inputs(b=1, L=600, h=2, p=4, g=1, n=8, dtype=torch.float32, seed=1)
    raw = torch.randn(1, 600, 2)
    bias = torch.tensor([0.3, -0.5])
    y, s = ssd_scan_fn(x, raw, A, B, C, 32, D, dt_bias=bias, dt_softplus=True)
    y2, s2 = ssd_scan_loop(x.double(), F.softplus(raw + bias).double(), A.double(), B.double(), C.double(),
                           D.double())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.double(), s2, atol=1e-4, rtol=1e-4)


def test_gradients_finite_and_match_loop():
    x, dt, A, B, C, D, h0 = inputs(L=13)
    leaves = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C, D, h0)]
    y, s = ssd_chunk_scan_ref(*leaves[:5], 4, leaves[5], leaves[6])
    (y.square().sum() + s.sum()).backward()
    g1 = [t.grad.clone() for t in leaves]
    assert all(torch.isfinite(g).all() for g in g1)
    leaves2 = [t.detach().clone().requires_grad_(True) for t in (x, dt, A, B, C, D, h0)]
    y2, s2 = ssd_scan_loop(*leaves2[:5], leaves2[5], leaves2[6])
    (y2.square().sum() + s2.sum()).backward()
    for a, b in zip(g1, leaves2, strict=True):
        torch.testing.assert_close(a, b.grad, atol=1e-8, rtol=1e-7)


def test_rmsnorm_gated():
    y, z, w = torch.randn(3, 5, 8), torch.randn(3, 5, 8), torch.randn(8)
    out = rmsnorm_gated_ref(y, z, w, eps=1e-6)
    g = y * F.silu(z)
    torch.testing.assert_close(out, g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + 1e-6) * w)
    out2 = rmsnorm_gated_ref(y, z, w, eps=1e-6, group_size=4, norm_before_gate=True)
    yg = y.reshape(3, 5, 2, 4)
    ref = (yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + 1e-6)).reshape(3, 5, 8) * w * F.silu(z)
    torch.testing.assert_close(out2, ref)
    with pytest.raises(ValueError, match="group_size"):
        rmsnorm_gated_ref(y, z, w, group_size=3)


def test_causal_conv_hardswish_with_state():
    x, w, b = torch.randn(2, 6, 11), torch.randn(6, 4), torch.randn(6)
    full, tail = causal_conv1d_act(x, w, b, None, "hardswish")
    o1, s1 = causal_conv1d_act(x[..., :5], w, b, None, "hardswish")
    o2, s2 = causal_conv1d_act(x[..., 5:], w, b, s1, "hardswish")
    torch.testing.assert_close(torch.cat([o1, o2], -1), full)
    torch.testing.assert_close(s2, tail)
    ref, ref_tail = causal_conv1d_ref(x, w, b, None, None)
    torch.testing.assert_close(full, F.hardswish(ref))
    torch.testing.assert_close(tail, ref_tail)
    silu, _ = causal_conv1d_act(x[..., :2], w, b, torch.randn(2, 6, 3), "silu")   # L < K - 1
    assert silu.shape == (2, 6, 2)
    with pytest.raises(ValueError, match="unsupported"):
        causal_conv1d_act(x, w, b, None, "relu")


def test_shape_errors():
    x, dt, A, B, C, D, h0 = inputs()
    with pytest.raises(ValueError, match="dt must have shape"):
        ssd_chunk_scan_ref(x, dt[:, :3], A, B, C, 8)
    with pytest.raises(ValueError, match="multiple of groups"):
        ssd_chunk_scan_ref(x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1), 8)


# ------------------------------------------------------------------------------------------ GPU fast path
#: (L, chunk, with_init, groups) of the mamba-ssm SSD kernel comparison
_KERNEL_CASES = [(L, chunk, init, g) for L, chunk in [(1, 64), (37, 16), (300, 64), (300, 256)]
                 for init in (False, True) for g in (1, 2)]
#: max abs error / max(1, |ref|) allowed in fp32 where Triton's fp32 ``tl.dot`` is IEEE, and where it is not (TF32:
#: the kernels round C·Bᵀ, cb·x and C·prev_states to TF32, ~5e-4 typical and up to ~1e-3 at these shapes)
_FP32_TOL, _TF32_TOL = 1e-3, 3e-3


def _kernel_case(L, chunk, with_init, groups, seed):
    """One comparison of mamba-ssm's ``mamba_chunk_scan_combined`` (through ``ssd_scan_fn``) with the reference, on
    CUDA, fresh random inputs: ``{name: (max abs error, max |ref|)}`` for the fp32 y and final state and the bf16 y."""
    x, dt, A, B, C, D, h0 = (t.float().cuda() for t in inputs(b=3, L=L, h=8, p=16, g=groups, n=32, seed=seed))
    gen = torch.Generator(device="cuda").manual_seed(seed)
    dt_raw = torch.randn(dt.shape, device="cuda", generator=gen) - 1.0
    dt_bias = torch.randn(8, device="cuda", generator=gen) * 0.1
    h0 = h0 if with_init else None
    y, s = ssd_scan_fn(x, dt_raw, A, B, C, chunk, D, dt_bias, dt_softplus=True, initial_state=h0)
    y_ref, s_ref = ssd_chunk_scan_ref(x, F.softplus(dt_raw + dt_bias), A, B, C, chunk, D, h0)
    yb, _ = ssd_scan_fn(x.bfloat16(), dt_raw, A, B.bfloat16(), C.bfloat16(), chunk, D, dt_bias, dt_softplus=True,
                        initial_state=h0)
    return {name: ((got.float() - ref).abs().max().item(), ref.abs().max().item())
            for name, got, ref in (("y", y, y_ref), ("final state", s, s_ref), ("bf16 y", yb, y_ref))}


def _kernel_cases_main(cases) -> dict:
    """The child process of :func:`ssd_kernel_results`: every case, and whether this Triton honoured
    ``TRITON_F32_DEFAULT`` (read when a kernel compiles: ``triton.knobs.language.fp32_default`` in Triton >= 3.4,
    ``os.getenv`` in ``tl.dot`` before)."""
    import inspect

    import triton
    import triton.language.core as tlc

    torch.backends.cuda.matmul.allow_tf32 = False                  # the reference's einsums: IEEE fp32 too
    knobs = getattr(triton, "knobs", None)
    honoured = (getattr(getattr(knobs, "language", None), "fp32_default", None) == "ieee" if knobs is not None
                else "TRITON_F32_DEFAULT" in inspect.getsource(tlc))
    return {"ieee": bool(honoured), "triton": triton.__version__,
            "cases": {"-".join(map(str, c[:4])): _kernel_case(*c) for c in cases}}


@pytest.fixture(scope="module")
def ssd_kernel_results(tmp_path_factory):
    """All the kernel comparisons, run once in a child process started with ``TRITON_F32_DEFAULT=ieee``: Triton's
    fp32 ``tl.dot`` (which mamba-ssm's SSD kernels call without ``input_precision``) defaults to TF32 on Ampere and
    Hopper, whose rounding alone reaches the fp32 tolerance. The setting is read when a kernel compiles, and Triton's
    in-memory kernel cache is not keyed on it, so it must hold from the process's first compile: hence a fresh
    process, with its own ``TRITON_CACHE_DIR`` (an older Triton's disk cache may not be keyed on it either)."""
    import json
    import os
    import random
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("mamba_ssm", reason="mamba-ssm not installed (pip install ssm-rec-zoo[gpu])")
    import zoo.ops.ssd as ssd

    if ssd._mamba_chunk_scan_combined is None:
        pytest.skip("mamba_ssm imported but its Triton SSD kernel did not (no triton?)")
    base = random.SystemRandom().randrange(2**31 - 64)             # fresh inputs each run; printed with each case
    cases = [(*c, base + i) for i, c in enumerate(_KERNEL_CASES)]
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, TRITON_F32_DEFAULT="ieee", TRITON_CACHE_DIR=str(tmp_path_factory.mktemp("triton_ieee")),
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    env.pop("ZOO_SSD_KERNEL", None)                                # =0 would compare the reference with itself
    r = subprocess.run([sys.executable, __file__, json.dumps(cases)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"kernel comparison process failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["seeds"] = {"-".join(map(str, c[:4])): c[4] for c in cases}
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("L,chunk,with_init,groups", _KERNEL_CASES)
def test_mamba_ssm_ssd_kernel_matches_reference(ssd_kernel_results, L, chunk, with_init, groups):
    """mamba-ssm's Triton ``mamba_chunk_scan_combined`` (what ``ssd_scan_fn`` dispatches to on CUDA) == the reference,
    fresh random inputs, fp32: max abs error <= 1e-3 * max(1, |ref|) with Triton's fp32 ``tl.dot`` forced to IEEE
    (:func:`ssd_kernel_results`); by default it runs in TF32 on Hopper, whose rounding alone reaches ~1e-3 at these
    shapes (a Triton that ignores ``TRITON_F32_DEFAULT`` gets 3e-3 for that reason). bf16 inputs: 5e-2."""
    res = ssd_kernel_results
    key = f"{L}-{chunk}-{with_init}-{groups}"
    seed, got = res["seeds"][key], res["cases"][key]
    fp32_tol = _FP32_TOL if res["ieee"] else _TF32_TOL
    for name, factor in (("y", fp32_tol), ("final state", fp32_tol), ("bf16 y", 5e-2)):
        err, scale = got[name]
        tol = factor * max(1.0, scale)
        print(f"SSD kernel vs fp32 reference (triton {res['triton']}, fp32 dot {'ieee' if res['ieee'] else 'tf32'}) "
              f"L={L} chunk={chunk} init={with_init} G={groups} seed={seed}: {name} max abs err {err:.3g} "
              f"(tol {tol:.3g})")
        assert err <= tol, f"{name}: {err} > {tol} (seed {seed})"


@pytest.mark.gpu
def test_ssd_scan_fn_reference_switch_on_cuda(monkeypatch):
    """``ZOO_SSD_KERNEL=0`` forces the reference on CUDA; both paths agree (the dispatch itself is exercised)."""
    x, dt, A, B, C, D, h0 = (t.float().cuda() for t in inputs(b=2, L=50, h=4, p=8, g=1, n=16))
    a = ssd_scan_fn(x, dt, A, B, C, 32, D, None, False, h0)
    monkeypatch.setenv("ZOO_SSD_KERNEL", "0")
    b = ssd_scan_fn(x, dt, A, B, C, 32, D, None, False, h0)
    for u, v in zip(a, b, strict=True):
        assert (u - v).abs().max().item() <= 1e-3 * max(1.0, v.abs().max().item())


if __name__ == "__main__":      # the child process of ssd_kernel_results: python tests/test_ssd_ops.py '<cases json>'
    import json
    import sys

    print(json.dumps(_kernel_cases_main(json.loads(sys.argv[1]))))
