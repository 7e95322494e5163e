"""Fused CPU selective scan (zoo/ops/csrc/selective_scan_cpu.cpp) vs a naive per-step loop.

The oracle below is a plain PyTorch loop over time written independently of the kernel,
evaluated in float64 (forward and autograd gradients), and compared to the float32 kernel.
Tolerances: out / last_state max |err| <= 1e-5 * (1 + max|ref|); every gradient
max |err| <= 1e-4 * (1 + max|ref grad|).  A float64 gradcheck covers the backward exactly.
"""

import itertools
import os

import pytest
import torch

from zoo.ops import selective_scan_cpu as ssc


@pytest.fixture(scope="module", autouse=True)
def _ext():
    if not ssc.is_available():
        pytest.skip(f"selective_scan_cpu extension could not be built: {ssc.unavailable_reason()}")


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
               return_last_state=False, initial_state=None):
    """Oracle: literal per-step recursion (no tricks)."""
    bsz, E, L = u.shape
    N = A.shape[1]
    dt = delta
    if delta_bias is not None:
        dt = dt + delta_bias[None, :, None]
    if delta_softplus:
        dt = torch.where(dt > 20, dt, torch.log1p(torch.exp(dt)))
    h = initial_state if initial_state is not None else u.new_zeros(bsz, E, N)
    ys = []
    for t in range(L):
        dt_t = dt[:, :, t]                                       # [b, E]
        dA = torch.exp(dt_t[:, :, None] * A[None])               # [b, E, N]
        dBu = dt_t[:, :, None] * B[:, None, :, t] * u[:, :, t, None]
        h = dA * h + dBu
        y = (h * C[:, None, :, t]).sum(-1)
        if D is not None:
            y = y + D[None] * u[:, :, t]
        ys.append(y)
    out = torch.stack(ys, dim=-1) if L > 0 else u.new_zeros(bsz, E, 0)
    if z is not None:
        out = out * torch.nn.functional.silu(z)
    return (out, h) if return_last_state else out


def make_inputs(bsz, E, L, N, *, with_D, with_z, with_bias, with_h0, dtype=torch.float32, seed=0,
                positive_delta=False):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    inp = dict(
        u=r(bsz, E, L),
        delta=r(bsz, E, L, scale=0.5) - 1.0,                      # softplus(≈-1) ≈ 0.3, like Mamba
        A=-torch.exp(r(E, N, scale=0.5).double()).to(dtype),      # negative real A
        B=r(bsz, N, L),
        C=r(bsz, N, L),
        D=r(E) if with_D else None,
        z=r(bsz, E, L) if with_z else None,
        delta_bias=r(E, scale=0.3) if with_bias else None,
        initial_state=r(bsz, E, N) if with_h0 else None,
    )
    if positive_delta:  # used without softplus: keep dt > 0 so the recursion is stable
        inp["delta"] = torch.nn.functional.softplus(inp["delta"].double()).to(dtype)
        if inp["delta_bias"] is not None:
            inp["delta_bias"] = inp["delta_bias"].abs()
    return inp


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def _check(got, ref, tol, what):
    scale = 1.0 + (ref.double().abs().max().item() if ref.numel() else 0.0)
    err = _max_err(got, ref)
    assert err <= tol * scale, f"{what}: max abs err {err:.3e} > {tol:.0e} * {scale:.3g}"


SHAPES = [(2, 3, 1, 16), (2, 4, 7, 16), (3, 5, 200, 32), (1, 2, 33, 32), (2, 3, 64, 17)]
FLAGS = list(itertools.product([False, True], repeat=5))  # D, z, bias, softplus, h0


def _cases():
    # all flag combinations on two shapes, a rotating subset on the others (keeps runtime low)
    for si, shape in enumerate(SHAPES):
        for fi, flags in enumerate(FLAGS):
            if si in (1, 2) or fi % 8 == si % 8 or all(flags) or not any(flags):
                yield pytest.param(shape, flags, id=f"{'x'.join(map(str, shape))}-" +
                                   "".join(n for n, f in zip(["D", "z", "b", "s", "h"], flags, strict=True) if f))


@pytest.mark.parametrize("shape,flags", list(_cases()))
def test_matches_naive_loop(shape, flags):
    bsz, E, L, N = shape
    with_D, with_z, with_bias, softplus, with_h0 = flags
    inp = make_inputs(bsz, E, L, N, with_D=with_D, with_z=with_z, with_bias=with_bias,
                      with_h0=with_h0, seed=hash((shape, flags)) % 10_000, positive_delta=not softplus)
    names = [k for k, v in inp.items() if v is not None]

    # kernel (float32)
    x32 = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    out, last = ssc.selective_scan_cpu(**x32, delta_softplus=softplus, return_last_state=True)
    assert out.shape == (bsz, E, L) and out.dtype == torch.float32
    assert last.shape == (bsz, E, N)
    # oracle (float64)
    x64 = {k: (v.double().clone().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    rout, rlast = naive_scan(**x64, delta_softplus=softplus, return_last_state=True)

    _check(out, rout, 1e-5, "out")
    _check(last, rlast, 1e-5, "last_state")

    # gradients of every input through out and last_state
    g = torch.Generator().manual_seed(1)
    gout = torch.randn(bsz, E, L, generator=g, dtype=torch.float64)
    glast = torch.randn(bsz, E, N, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * gout.float()).sum() + (last * glast.float()).sum(),
                                [x32[k] for k in names])
    rgrads = torch.autograd.grad((rout * gout).sum() + (rlast * glast).sum(), [x64[k] for k in names])
    for k, gk, rk in zip(names, grads, rgrads, strict=True):
        assert gk.shape == rk.shape, k
        _check(gk, rk, 1e-4, f"grad {k}")


def test_out_only_and_no_last_state_grad():
    inp = make_inputs(2, 4, 50, 16, with_D=True, with_z=True, with_bias=True, with_h0=False)
    x = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    out = ssc.selective_scan_cpu(**x, delta_softplus=True)
    assert isinstance(out, torch.Tensor)
    out.square().sum().backward()
    x64 = {k: (v.double().clone().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    naive_scan(**x64, delta_softplus=True).square().sum().backward()
    for k in x:
        if x[k] is not None:
            _check(x[k].grad, x64[k].grad, 1e-4, f"grad {k}")


@pytest.mark.parametrize("chunk", [1, 5, 32, 1000])
def test_chunk_sizes_agree(chunk):
    inp = make_inputs(2, 3, 70, 16, with_D=True, with_z=False, with_bias=True, with_h0=True)
    x = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    out, last = ssc.selective_scan_cpu(**x, delta_softplus=True, return_last_state=True, chunk=chunk)
    (out.sum() + last.sum()).backward()
    x64 = {k: (v.double().clone().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    r, rl = naive_scan(**x64, delta_softplus=True, return_last_state=True)
    (r.sum() + rl.sum()).backward()
    _check(out, r, 1e-5, "out")
    for k in x:
        if x[k] is not None:
            _check(x[k].grad, x64[k].grad, 1e-4, f"grad {k}")


def test_gradcheck_float64():
    inp = make_inputs(2, 3, 11, 4, with_D=True, with_z=True, with_bias=True, with_h0=True,
                      dtype=torch.float64)
    names = list(inp)
    tensors = [inp[k].clone().requires_grad_(True) for k in names]

    def f(*ts):
        kw = dict(zip(names, ts, strict=True))
        out, last = ssc.selective_scan_cpu(**kw, delta_softplus=True, return_last_state=True, chunk=4)
        return out, last

    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_float64_matches_naive_tightly():
    inp = make_inputs(2, 3, 40, 8, with_D=True, with_z=True, with_bias=True, with_h0=True,
                      dtype=torch.float64)
    out, last = ssc.selective_scan_cpu(**inp, delta_softplus=True, return_last_state=True)
    rout, rlast = naive_scan(**inp, delta_softplus=True, return_last_state=True)
    assert _max_err(out, rout) < 1e-12 and _max_err(last, rlast) < 1e-12


def test_extreme_values():
    # large delta (softplus threshold branch), big |dt*A| (exp underflow), positive A
    inp = make_inputs(1, 2, 20, 16, with_D=True, with_z=False, with_bias=False, with_h0=True)
    inp["delta"] = inp["delta"] * 30.0
    inp["A"] = inp["A"] * 10.0
    inp["A"][0, :4] = 0.05
    out, last = ssc.selective_scan_cpu(**inp, delta_softplus=True, return_last_state=True)
    rout, rlast = naive_scan(**{k: (v.double() if v is not None else None) for k, v in inp.items()},
                             delta_softplus=True, return_last_state=True)
    assert torch.isfinite(out).all()
    _check(out, rout, 1e-5, "out")
    _check(last, rlast, 1e-5, "last_state")


def test_input_errors():
    inp = make_inputs(2, 3, 5, 4, with_D=True, with_z=False, with_bias=False, with_h0=False)
    with pytest.raises(TypeError, match="dtype"):
        ssc.selective_scan_cpu(**{**inp, "B": inp["B"].double()})
    with pytest.raises(ValueError, match="shape"):
        ssc.selective_scan_cpu(**{**inp, "C": inp["C"][:, :, :4]})
    with pytest.raises(ValueError, match="B must be"):
        ssc.selective_scan_cpu(**{**inp, "B": inp["B"][:, None]})
    with pytest.raises(TypeError, match="float32/float64"):
        ssc.selective_scan_cpu(**{**inp, "u": inp["u"].half()})
    # non-contiguous inputs are accepted
    u_nc = inp["u"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not u_nc.is_contiguous()
    torch.testing.assert_close(ssc.selective_scan_cpu(**{**inp, "u": u_nc}), ssc.selective_scan_cpu(**inp))


def test_matches_lead_reference():
    from zoo.ops.selective_scan import selective_scan_ref as ref
    inp = make_inputs(2, 4, 30, 16, with_D=True, with_z=True, with_bias=True, with_h0=False)
    out, last = ssc.selective_scan_cpu(**inp, delta_softplus=True, return_last_state=True)
    rout, rlast = ref(**inp, delta_softplus=True, return_last_state=True)
    _check(out, rout, 1e-4, "out vs zoo.ops.selective_scan.selective_scan_ref")
    _check(last, rlast, 1e-4, "last_state vs zoo.ops.selective_scan.selective_scan_ref")


def test_a_build_killed_half_way_does_not_hang_the_next_one(tmp_path, monkeypatch):
    """torch's build (torch <= 2.13: its file baton) leaves its ``lock`` file behind when the process is killed
    mid-build, and the next build waits on it forever (a CI run killed during the kernel build hung the next one).
    Builds run under an flock the kernel drops when its holder dies: the stale ``lock`` is removed under it, with a
    warning; a live holder is waited for. (The file baton is made present here, whatever torch runs the test.)"""
    import subprocess
    import sys
    import time

    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setattr(cpp_extension, "FileBaton", object, raising=False)

    (tmp_path / "lock").write_text("")                          # what a killed build leaves
    with pytest.warns(UserWarning, match="build lock behind"):
        with ssc._build_lock(str(tmp_path)):
            assert not (tmp_path / "lock").exists()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from zoo.ops import selective_scan_cpu as s\n"
        "with s._build_lock(sys.argv[2]):\n    print('held', flush=True); time.sleep(60)"),
        str(ssc._SRC.parents[3]), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / "lock").write_text("")                      # a live build's torch lock: not ours to remove
        import fcntl
        with open(tmp_path / ".zoo-build.flock", "w") as f:
            with pytest.raises(BlockingIOError):
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)    # held by the live builder
        assert (tmp_path / "lock").exists()
    finally:
        holder.kill()                                           # killed mid-build: the kernel drops its flock
        holder.wait()
        holder.stdout.close()
    t = time.monotonic()
    with pytest.warns(UserWarning, match="build lock behind"):
        with ssc._build_lock(str(tmp_path)):
            assert not (tmp_path / "lock").exists()
    assert time.monotonic() - t < 5


def test_each_checkout_builds_into_its_own_folder(tmp_path, monkeypatch):
    """ninja's build file names the source's path: two checkouts sharing one build folder rebuilt the kernel in turn
    at every load. The folder is per torch version and per source path (and stable for one checkout)."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    here = ssc._build_dir()
    assert here == ssc._build_dir() and torch.__version__.replace("+", "_") in here
    monkeypatch.setattr(ssc, "_SRC", tmp_path / "other-checkout" / "selective_scan_cpu.cpp")
    other = ssc._build_dir()
    assert other != here and os.path.dirname(other) == os.path.dirname(here) == str(tmp_path)


@pytest.mark.parametrize("cast", [
    {"A": torch.float64, "D": torch.float64, "initial_state": torch.float64},   # float64 SSM parameters
    {"B": torch.bfloat16, "C": torch.bfloat16},                               # autocast-like activations
    {"delta": torch.float16, "z": torch.float64, "delta_bias": torch.bfloat16},
])
def test_dispatch_with_mixed_dtypes_equals_the_reference(cast, monkeypatch):
    """``selective_scan_fn`` claims the reference's signature and result, but sent a float32 ``u`` to the fused kernel
    with whatever the other tensors were, which it refuses ("A has dtype torch.float64, expected torch.float32"). The
    others are cast to float32 first now, as the reference casts them: same output, last state and gradients (in each
    input's own dtype)."""
    from zoo.ops import selective_scan as sscan

    monkeypatch.setenv("ZOO_CPU_KERNEL", "1")
    inp = make_inputs(2, 4, 9, 3, with_D=True, with_z=True, with_bias=True, with_h0=True)
    inp = {k: (v.to(cast[k]) if k in cast else v).requires_grad_() for k, v in inp.items()}
    called, real = [], ssc.selective_scan_cpu
    monkeypatch.setattr(ssc, "selective_scan_cpu", lambda *a, **k: called.append(1) or real(*a, **k))
    out, last = sscan.selective_scan_fn(**inp, delta_softplus=True, return_last_state=True)
    rout, rlast = sscan.selective_scan_ref(**inp, delta_softplus=True, return_last_state=True)
    assert called, "the fused kernel was not used"
    assert out.dtype == last.dtype == torch.float32
    torch.testing.assert_close(out, rout, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, rlast, atol=1e-5, rtol=1e-5)
    names = list(inp)
    g = torch.autograd.grad((out.sum() + last.sum()), [inp[n] for n in names])
    rg = torch.autograd.grad((rout.sum() + rlast.sum()), [inp[n] for n in names])
    for n, a, b in zip(names, g, rg):
        assert a.dtype == inp[n].dtype, n
        tol = 2e-2 if inp[n].dtype in (torch.bfloat16, torch.float16) else 1e-4
        torch.testing.assert_close(a.float(), b.float(), atol=tol * (1 + b.float().abs().max().item()), rtol=tol)


def test_torch_flock_lock_file_is_left_alone_without_a_warning(tmp_path, monkeypatch):
    """torch >= 2.14 locks its extension builds with an flock on ``lock`` and keeps the file after every normal build
    (no file baton): finding it is normal, so it is neither removed nor warned about (a false "interrupted build"
    warning in every process that loaded the kernel, and a removal that would break torch's own mutual exclusion)."""
    import warnings

    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.delattr(cpp_extension, "FileBaton", raising=False)
    assert not ssc._torch_uses_file_baton()
    (tmp_path / "lock").write_text("")                          # what torch >= 2.14 leaves after a good build
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ssc._build_lock(str(tmp_path)):
            assert (tmp_path / "lock").exists()
    assert (tmp_path / "lock").exists()
