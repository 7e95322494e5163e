"""mamba-ssm's Triton kernels, run in Triton's CPU interpreter, against the zoo's PyTorch references.

Run by ``tests/test_mamba_ssm_interp.py`` with the python of ``tests/mamba_ssm_env.sh``'s venv (triton + mamba-ssm's
sources; the main environment never imports Triton)::

    .venv-mamba-interp/bin/python tests/mamba_ssm_interp.py .venv-mamba-interp/mamba-ssm-src

Prints one JSON object: ``{"versions": ..., "cases": [{"kernel", "case", "errors": {name: max abs error / max(1,
max |ref|)}, "seconds"}, ...]}``. Kernels:

* ``mamba_chunk_scan_combined`` through :func:`zoo.ops.ssd.ssd_scan_kernel` -- the zoo's own call of it, exactly
  what ``ssd_scan_fn`` runs on CUDA -- vs the reference path of ``ssd_scan_fn`` (chunked SSD, PyTorch);
* ``selective_state_update`` (the Mamba-1 step, and the Mamba-2 step in its heads form, as mamba-ssm's ``Mamba2.step``
  calls it) vs :func:`zoo.ops.selective_scan.selective_state_update_ref` / :func:`zoo.ops.ssd.ssd_step_ref`;
* ``rmsnorm_fn`` (gated RMSNorm) vs :func:`zoo.ops.ssd.rmsnorm_gated_ref`.

Three things a CPU needs, all confined to this process: mamba-ssm's package ``__init__`` imports its CUDA extension,
so the package is entered without it; mamba-ssm enters the tensors' CUDA device, which CPU tensors do not have; the
autotuners time each config on a GPU, so here every config ties and the first one runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
import time
import types

os.environ["TRITON_INTERPRET"] = "1"
SRC = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".venv-mamba-interp",
                                                          "mamba-ssm-src")
pkg = types.ModuleType("mamba_ssm")
pkg.__path__ = [os.path.join(SRC, "mamba_ssm")]
sys.modules["mamba_ssm"] = pkg

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

_cuda_device = torch.cuda.device
torch.cuda.device = lambda idx: contextlib.nullcontext() if idx is None else _cuda_device(idx)

import triton  # noqa: E402
import triton.runtime.autotuner as autotuner  # noqa: E402

autotuner.Autotuner.do_bench = property(lambda self: (lambda fn, quantiles=None: [0.0, 0.0, 0.0]))

from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn  # noqa: E402
from mamba_ssm.ops.triton.selective_state_update import selective_state_update  # noqa: E402
from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from zoo.ops import ssd as S  # noqa: E402
from zoo.ops.selective_scan import selective_state_update_ref  # noqa: E402

S._mamba_chunk_scan_combined = mamba_chunk_scan_combined      # what `import mamba_ssm` gives the zoo on a GPU box

if os.environ.get("ZOO_MAMBA_INTERP_NEGATIVE") == "1":
    # negative control (tests/test_mamba_ssm_interp.py): the mistakes an argument mapping makes -- dt_bias dropped,
    # softplus flipped, the gate on the wrong side of the norm -- must show as errors
    S._mamba_chunk_scan_combined = lambda *a, **k: mamba_chunk_scan_combined(*a, **{**k, "dt_bias": None})
    _ssu = selective_state_update
    selective_state_update = lambda *a, **k: _ssu(*a, **{**k, "dt_softplus": not k["dt_softplus"]})  # noqa: E731
    _rms = rmsnorm_fn
    rmsnorm_fn = lambda *a, **k: _rms(*a, **{**k, "norm_before_gate": not k["norm_before_gate"]})  # noqa: E731


def err(got, ref) -> float:
    return ((got.float() - ref.float()).abs().max() / max(1.0, ref.float().abs().max().item())).item()


def ssd_cases():
    # (b, L, h, p, g, n, chunk, initial state, D and dt_bias, dt_softplus, packed sequences, dtype)
    yield 2, 40, 4, 8, 1, 16, 16, True, True, True, False, torch.float32
    yield 1, 33, 6, 4, 2, 8, 8, False, True, True, False, torch.float32       # L not a multiple of the chunk
    yield 2, 1, 2, 16, 1, 32, 64, True, False, False, False, torch.float32    # one step
    yield 2, 24, 4, 8, 2, 16, 8, False, True, True, True, torch.float32       # packed sequences (seq_idx)
    yield 2, 20, 4, 8, 1, 16, 8, True, True, True, False, torch.float16


def main() -> int:
    out = {"versions": {"triton": triton.__version__, "torch": torch.__version__,
                        "mamba_ssm": pathlib.Path(SRC, "mamba_ssm", "__init__.py").read_text().split('"')[1]},
           "cases": []}
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731

    def record(kernel, case, t0, **errors):
        out["cases"].append({"kernel": kernel, "case": case, "errors": errors, "seconds": time.perf_counter() - t0})

    for b, L, h, p, ng, n, chunk, with_h0, with_d, softplus, packed, dtype in ssd_cases():
        x, dt = r(b, L, h, p).to(dtype), (r(b, L, h) * 0.5 - 1.0).to(dtype)
        A, B, C = -torch.exp(r(h) * 0.5), r(b, L, ng, n).to(dtype), r(b, L, ng, n).to(dtype)
        D, dt_bias = (r(h), r(h) * 0.1) if with_d else (None, None)
        if not softplus:
            dt = dt.float().abs().to(dtype) * 0.3                               # a positive step size as it is
        h0 = r(b, h, p, n).to(dtype) if with_h0 else None
        seq_idx = None
        if packed:
            seq_idx = torch.zeros(b, L, dtype=torch.int64)
            seq_idx[:, 10:] = 1
            seq_idx[:, 17:] = 2
        t0 = time.perf_counter()
        y, last = S.ssd_scan_kernel(x, dt, A, B, C, chunk, D, dt_bias, softplus, h0, seq_idx)
        yr, lr = S.ssd_scan_fn(x, dt, A, B, C, chunk, D, dt_bias, softplus, h0, seq_idx)   # CPU: the reference
        assert y.dtype == yr.dtype == dtype and y.shape == yr.shape and last.shape == lr.shape
        assert last.dtype == lr.dtype == torch.float32, (last.dtype, lr.dtype)     # the final state: float32
        record("mamba_chunk_scan_combined", f"b{b} L{L} h{h} p{p} g{ng} n{n} chunk{chunk} h0={with_h0} "
               f"D={with_d} softplus={softplus} seq_idx={packed} {str(dtype).replace('torch.', '')}", t0,
               y=err(y, yr), final_state=err(last, lr))

    for b, e, n, with_z, softplus in ((3, 24, 16, True, True), (2, 10, 5, False, False)):   # Mamba-1 step
        state, x, dt = r(b, e, n), r(b, e), r(b, e) * 0.5 - 1.0
        A, B, C, D, z, dt_bias = -torch.exp(r(e, n) * 0.5), r(b, n), r(b, n), r(e), r(b, e), r(e) * 0.1
        if not softplus:
            dt = dt.abs() * 0.3
        z = z if with_z else None
        yr, sr = selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, softplus)
        st = state.clone()
        t0 = time.perf_counter()
        y = selective_state_update(st, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=softplus)
        record("selective_state_update", f"Mamba-1 b{b} E{e} N{n} z={with_z} softplus={softplus}", t0,
               y=err(y, yr), state=err(st, sr))

    for b, h, p, ng, n in ((2, 4, 8, 1, 16), (1, 6, 4, 2, 8)):                # Mamba-2 step, as Mamba2.step calls it
        state, x, dt = r(b, h, p, n), r(b, h, p), r(b, h) * 0.5 - 1.0
        A, B, C, D, dt_bias = -torch.exp(r(h) * 0.5), r(b, ng, n), r(b, ng, n), r(h), r(h) * 0.1
        yr, sr = S.ssd_step_ref(state, x, F.softplus(dt + dt_bias), A, B, C, D)
        st = state.clone()
        t0 = time.perf_counter()
        y = selective_state_update(st, x, dt[..., None].expand(b, h, p), A[:, None, None].expand(h, p, n), B, C,
                                   D=D[:, None].expand(h, p), z=None, dt_bias=dt_bias[:, None].expand(h, p),
                                   dt_softplus=True)
        record("selective_state_update", f"Mamba-2 heads b{b} H{h} P{p} G{ng} N{n}", t0, y=err(y, yr),
               state=err(st, sr))

    for rows, e, group, before, with_z in ((6, 32, None, False, True), (4, 48, 16, False, True),
                                           (5, 32, 8, True, True), (3, 24, None, True, False)):
        x, z, w = r(rows, e), r(rows, e), 1.0 + 0.1 * r(e)
        z = z if with_z else None
        t0 = time.perf_counter()
        y = rmsnorm_fn(x, w, None, z=z, eps=1e-5, group_size=group, norm_before_gate=before)
        record("rmsnorm_fn", f"rows{rows} E{e} group={group} norm_before_gate={before} z={with_z}", t0,
               y=err(y, S.rmsnorm_gated_ref(x, z, w, eps=1e-5, group_size=group, norm_before_gate=before)))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
