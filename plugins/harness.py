"""Thin ctypes harness: call the plugins' CUDA kernels (``libzoo_scan_kernels.so``) on torch CUDA tensors and compare
them with the PyTorch references; also times them against the reference and the memory-bandwidth floor.

No TensorRT is involved: the TensorRT plugins call exactly these launchers (``plugins/common/zooScanKernels.h``).

    python plugins/harness.py [--lib build/plugins/libzoo_scan_kernels.so] [--check] [--bench]
    python plugins/harness.py --emulate --check          # no GPU: the same kernel sources, CPU-emulated

``--emulate`` compiles the kernels for the CPU against ``plugins/emu/`` (``python -m export.build_plugins
--emulated``): every CUDA thread runs as a fiber, warp shuffles are resolved per warp and their undefined uses fail
the launch. Outputs then sit between guard words and start as a NaN pattern, so a write outside an output or an
element never written fails the check. It shows the kernels' arithmetic and indexing on every case below; the GPU's
own behaviour (its expf, scheduling, timing) still needs a GPU.

References: Mamba-1 -> ``zoo.ops.selective_scan.selective_scan_loop``; LRU -> ``zoo.ops.lru.lru_scan_loop``;
SSD (Mamba-2, per-head scalar decay) -> ``zoo.ops.ssd.ssd_scan_loop`` (or :func:`ssd_scan_ref` below, same loop). The
references run on the same (possibly half-precision) input values, in float64; the kernels keep the state in fp32.

Tolerances (max abs error, see :data:`TOLERANCE`): fp32 1e-4 absolute; fp16 / bf16 outputs are rounded to the
activation dtype, so ``atol + rtol * max|ref|`` with rtol = 2 ulp of the dtype (fp16 2e-3, bf16 1.6e-2); states are
fp32 in every precision and use the fp32 tolerance scaled by max(1, max|ref|).

Exit statuses (the shared table of every command, :data:`export.fsutil.EXIT_CODES`): 0 every case checked passed;
1 the kernels library could not be built or loaded (``--lib``, or the build folder's); 2 usage error (a bad or
conflicting option: ``--asan``/``--plugin`` without ``--emulate``, ``--bench`` with it, a ``--lib`` that is not an
emulated build under ``--emulate``); 3 verification failed: a kernel's output differs from its PyTorch reference
beyond the tolerance (an error a kernel reports -- a CUDA error, or under the emulator a write outside its output --
stops the run with a traceback, status 1); 4 something needed is missing here: no CUDA device (without
``--emulate``), or a C++ compiler / its AddressSanitizer runtime (``--emulate``, ``--asan``).
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from export.fsutil import (EXIT_CODES, EXIT_ERROR, EXIT_MISSING, EXIT_OK, EXIT_USAGE,  # noqa: E402
                           EXIT_VERIFY_FAILED)
from zoo.ops.lru import lru_scan_loop  # noqa: E402
from zoo.ops.selective_scan import selective_scan_loop  # noqa: E402

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: (atol, rtol) per activation dtype, for activation outputs; states use TOLERANCE[torch.float32] scaled
TOLERANCE = {torch.float32: (1e-4, 0.0), torch.float16: (1e-3, 2e-3), torch.bfloat16: (1e-2, 1.6e-2)}
STATE_TOL = 1e-4


def default_lib() -> Path:
    """``$ZOO_SCAN_KERNELS_LIB``, else the kernels library where ``python -m export.build_plugins`` builds it."""
    from export.build_plugins import library_path

    return library_path(kind="kernels")


#: bit patterns the emulated outputs start as (a NaN of each dtype) and the guard words around them hold
_SENTINEL = {torch.float32: (torch.int32, 0x7FA5A5A5), torch.float16: (torch.int16, 0x7D5A),
             torch.bfloat16: (torch.int16, 0x7FA5)}
_GUARD = 64


class ScanKernels:
    """ctypes binding of libzoo_scan_kernels.so (or libzoo_trt_plugins.so, which exports the same C ABI), or of the
    CPU-emulated build of the same kernels (libzoo_scan_kernels_emu.so: host pointers, ``device == 'cpu'``)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path or default_lib())
        self.lib = ctypes.CDLL(str(self.path))
        #: the emulated build exports zoo_emu_last_error; it takes CPU tensors and no stream
        self.emulated = hasattr(self.lib, "zoo_emu_last_error")
        self.device = "cpu" if self.emulated else "cuda"
        self._guards: list[tuple[torch.Tensor, int, int, str]] = []
        if self.emulated:
            self.lib.zoo_emu_last_error.restype = ctypes.c_char_p
            self.lib.zoo_emu_last_error.argtypes = []
            self.lib.zoo_emu_reset_error.argtypes = []
        P, I = ctypes.c_void_p, ctypes.c_int32
        self.lib.zoo_selective_scan.argtypes = [I] + [P] * 11 + [I] * 5 + [P]
        self.lib.zoo_ssd_scan.argtypes = [I] + [P] * 10 + [I] * 7 + [P]
        self.lib.zoo_lru_scan.argtypes = [I] + [P] * 8 + [I] * 3 + [P]
        for f in ("zoo_selective_scan", "zoo_ssd_scan", "zoo_lru_scan", "zoo_scan_max_state"):
            getattr(self.lib, f).restype = I
        self.lib.zoo_trt_plugins_spec_json.restype = ctypes.c_char_p
        self.lib.zoo_trt_plugins_spec_json.argtypes = []

    def spec(self) -> dict:
        return json.loads(self.lib.zoo_trt_plugins_spec_json().decode())

    def max_state(self) -> int:
        return int(self.lib.zoo_scan_max_state())

    def _p(self, t):
        if t is None:
            return None
        if t.device.type != self.device or not t.is_contiguous():
            raise ValueError(f"kernel inputs must be contiguous {'CPU' if self.emulated else 'CUDA'} tensors"
                             + (" (this is the CPU-emulated kernels library)" if self.emulated else ""))
        return ctypes.c_void_p(t.data_ptr())

    def _reset(self):
        """Before each call: no output guards yet, and (emulator) no error message left from an earlier call."""
        self._guards = []
        if self.emulated:
            self.lib.zoo_emu_reset_error()

    def set_schedule(self, mode: str = "in-order", seed: int = 0) -> None:
        """Emulator only: the order CUDA blocks and threads run in on this thread ("in-order", "reversed", "random"
        with ``seed``). A kernel whose outputs change with it has a race."""
        if not self.emulated:
            raise RuntimeError("set_schedule is the emulator's: a GPU schedules its own threads")
        self.lib.zoo_emu_set_schedule.argtypes = [ctypes.c_int32, ctypes.c_uint64]
        self.lib.zoo_emu_set_schedule({"in-order": 0, "reversed": 1, "random": 2}[mode], seed)

    def _stream(self):
        return None if self.emulated else ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)

    def _empty(self, shape, dtype, like_device) -> torch.Tensor:
        """An output buffer; in the emulator it starts as a NaN pattern between two guard words (checked by
        :meth:`_rc`), so an element the kernel never writes, or a write past either end, is caught."""
        if not self.emulated:
            return torch.empty(shape, dtype=dtype, device=like_device)
        n = 1
        for d in shape:
            n *= int(d)
        idt, bits = _SENTINEL[dtype]
        buf = torch.full((n + 2 * _GUARD,), bits, dtype=idt)
        self._guards.append((buf, n, bits, f"{dtype} output of shape {list(shape)}"))
        return buf[_GUARD:_GUARD + n].view(dtype).view(*shape)

    def _rc(self, rc: int, what: str):
        guards, self._guards = self._guards, []
        if rc != 0:
            msg = self.lib.zoo_emu_last_error().decode() if self.emulated else ""
            raise RuntimeError(f"{what}: CUDA error {rc}" + (f": {msg}" if msg else ""))
        for buf, n, bits, name in guards:
            if not (bool((buf[:_GUARD] == bits).all()) and bool((buf[_GUARD + n:] == bits).all())):
                raise RuntimeError(f"{what} wrote outside its {name} (guard words changed)")

    def selective_scan(self, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus=True, out=None, h_out=None):
        """Same math as ``selective_scan_loop(..., return_last_state=True, initial_state=h0)``; returns (y, h).
        ``h_out`` may be ``h0`` itself (in-place state update, as the TensorRT plugin does with aliased I/O)."""
        self._reset()
        b, e, T = u.shape
        n = A.shape[1]
        y = out if out is not None else self._empty(u.shape, u.dtype, u.device)
        h = h_out if h_out is not None else self._empty((b, e, n), torch.float32, u.device)
        p = self._p
        self._rc(self.lib.zoo_selective_scan(DTYPE_CODE[u.dtype], p(u), p(delta), p(A), p(B), p(C), p(D), p(z),
                                             p(delta_bias), p(h0), p(y), p(h), b, e, n, T, int(delta_softplus),
                                             self._stream()), "zoo_selective_scan")
        return y, h

    def ssd_scan(self, x, dt, A, B, C, D, dt_bias, h0, dt_softplus=True, h_out=None):
        self._reset()
        b, T, H, P = x.shape
        G, N = B.shape[2], B.shape[3]
        y = self._empty(x.shape, x.dtype, x.device)
        h = h_out if h_out is not None else self._empty((b, H, P, N), torch.float32, x.device)
        p = self._p
        self._rc(self.lib.zoo_ssd_scan(DTYPE_CODE[x.dtype], p(x), p(dt), p(A), p(B), p(C), p(D), p(dt_bias), p(h0),
                                       p(y), p(h), b, T, H, P, G, N, int(dt_softplus), self._stream()), "zoo_ssd_scan")
        return y, h

    def lru_scan(self, u_re, u_im, lam_re, lam_im, h0_re=None, h0_im=None):
        self._reset()
        b, T, N = u_re.shape
        h_re, h_im = self._empty(u_re.shape, u_re.dtype, u_re.device), self._empty(u_im.shape, u_im.dtype, u_im.device)
        p = self._p
        self._rc(self.lib.zoo_lru_scan(DTYPE_CODE[u_re.dtype], p(u_re), p(u_im), p(lam_re), p(lam_im), p(h0_re),
                                       p(h0_im), p(h_re), p(h_im), b, T, N, self._stream()), "zoo_lru_scan")
        return h_re, h_im

    def plugin_enqueue(self, op_type: str, fields: dict, inputs: list, outputs: list):
        """The TensorRT plugin's runtime path without TensorRT (emulated plugin library only,
        ``build_emulated(plugins=True)``; :func:`export.emulated_plugins.enqueue`): the creator named ``op_type`` makes
        the plugin from ``fields`` (int32 values), and its ``enqueue`` runs on ``inputs`` / ``outputs`` in the spec's
        order (an output may be an input's very tensor: aliased state). Raises ``RuntimeError`` with the reason."""
        from export.emulated_plugins import enqueue, prepare

        prepare(self.lib, self.path)
        enqueue(self.lib, op_type, fields, [(self._p(t).value, tuple(t.shape), DTYPE_CODE[t.dtype]) for t in inputs],
                [(self._p(t).value, tuple(t.shape), DTYPE_CODE[t.dtype]) for t in outputs])
        self._rc(0, f"{op_type} plugin enqueue")     # the guard words of the outputs made by _empty


# ------------------------------------------------------------------------------------------------ references
def ssd_scan_ref(x, dt, A, B, C, D=None, dt_bias=None, h0=None, dt_softplus=True):
    """Mamba-2 / SSD recurrence (textbook loop; float64 if x is float64, else fp32): x [B,T,H,P], dt [B,T,H], A [H],
    B/C [B,T,G,N], h0 [B,H,P,N]."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, dt, B, C, A = x.to(ct), dt.to(ct), B.to(ct), C.to(ct), A.to(ct)
    D = D.to(ct) if D is not None else None
    dt_bias = dt_bias.to(ct) if dt_bias is not None else None
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    rep = H // G
    B, C = B.repeat_interleave(rep, dim=2), C.repeat_interleave(rep, dim=2)     # [B, T, H, N]
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    h = h0.to(ct).clone() if h0 is not None else x.new_zeros(b, H, P, N)
    ys = []
    for t in range(T):
        dA = torch.exp(dt[:, t] * A)                                              # [B, H]
        h = dA[:, :, None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", h, C[:, t])
        if D is not None:
            y = y + D[:, None] * x[:, t]
        ys.append(y)
    return torch.stack(ys, 1), h


# ------------------------------------------------------------------------------------------------ test cases
@dataclass
class Case:
    op: str
    dtype: torch.dtype
    T: int
    with_h0: bool
    shape: dict

    @property
    def id(self) -> str:
        s = "x".join(f"{k}{v}" for k, v in self.shape.items())
        return f"{self.op}-{str(self.dtype).replace('torch.', '')}-T{self.T}-{'h0' if self.with_h0 else 'zero'}-{s}"


SHAPES = {
    "SelectiveScan": [dict(B=2, E=64, N=16), dict(B=3, E=40, N=32), dict(B=1, E=8, N=5), dict(B=2, E=16, N=64)],
    "SSDScan": [dict(B=2, H=4, P=16, G=1, N=16), dict(B=1, H=6, P=8, G=2, N=32), dict(B=2, H=2, P=4, G=2, N=7)],
    "LRUScan": [dict(B=2, N=64), dict(B=3, N=33)],
}


def cases(long_T: int = 200):
    for op, shapes in SHAPES.items():
        for shape, dtype, T, h0 in itertools.product(shapes, DTYPE_CODE, (1, long_T), (False, True)):
            yield Case(op, dtype, T, h0, shape)


def make_inputs(case: Case, device="cuda", seed: int = 0) -> dict:
    """Fresh random inputs for a case (activations in case.dtype, parameters and states fp32)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    act = lambda t: t.to(case.dtype).to(device).contiguous()  # noqa: E731
    f32 = lambda t: t.float().to(device).contiguous()  # noqa: E731
    s, T = case.shape, case.T
    if case.op == "SelectiveScan":
        b, e, n = s["B"], s["E"], s["N"]
        d = dict(u=act(r(b, e, T)), delta=act(r(b, e, T) * 0.5 - 1.0), A=f32(-torch.exp(r(e, n) * 0.5)),
                 B=act(r(b, n, T)), C=act(r(b, n, T)), D=f32(r(e)), z=act(r(b, e, T)), delta_bias=f32(r(e) * 0.1),
                 h0=f32(r(b, e, n)) if case.with_h0 else None)
    elif case.op == "SSDScan":
        b, H, P, G, n = s["B"], s["H"], s["P"], s["G"], s["N"]
        d = dict(x=act(r(b, T, H, P)), dt=act(r(b, T, H) * 0.5 - 1.0), A=f32(-torch.exp(r(H) * 0.5)),
                 B=act(r(b, T, G, n)), C=act(r(b, T, G, n)), D=f32(r(H)), dt_bias=f32(r(H) * 0.1),
                 h0=f32(r(b, H, P, n)) if case.with_h0 else None)
    else:
        b, n = s["B"], s["N"]
        mod = torch.exp(-torch.exp(r(n) * 0.5 - 2.0))
        th = torch.rand(n, generator=g) * 3.0
        d = dict(u_re=act(r(b, T, n)), u_im=act(r(b, T, n)), lam_re=f32(mod * torch.cos(th)),
                 lam_im=f32(mod * torch.sin(th)), h0_re=f32(r(b, n)) if case.with_h0 else None,
                 h0_im=f32(r(b, n)) if case.with_h0 else None)
    return d


def reference(case: Case, d: dict):
    """(activation output(s), state output(s)) from the PyTorch reference, computed in float64 from the very same
    (possibly fp16/bf16) input values, returned as float32."""
    d = {k: (v.double() if v is not None else None) for k, v in d.items()}
    if case.op == "SelectiveScan":
        y, h = selective_scan_loop(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["z"], d["delta_bias"],
                                   delta_softplus=True, return_last_state=True, initial_state=d["h0"])
        outs = [y], [h]
    elif case.op == "SSDScan":
        try:  # the zoo's own SSD oracle when present (zoo.ops.ssd), else the loop below (same math)
            from zoo.ops.ssd import ssd_scan_loop

            dt = F.softplus(d["dt"] + d["dt_bias"])
            y, h = ssd_scan_loop(d["x"], dt, d["A"], d["B"], d["C"], d["D"], d["h0"])
        except ImportError:
            y, h = ssd_scan_ref(d["x"], d["dt"], d["A"], d["B"], d["C"], d["D"], d["dt_bias"], d["h0"])
        outs = [y], [h]
    else:
        h_re, h_im = lru_scan_loop(d["u_re"], d["u_im"], d["lam_re"], d["lam_im"], None, d["h0_re"], d["h0_im"])
        outs = [h_re, h_im], [h_re[:, -1], h_im[:, -1]]
    return [t.float() for t in outs[0]], [t.float() for t in outs[1]]


def run_plugin(k: ScanKernels, case: Case, d: dict, in_place: bool = False, fields: dict | None = None):
    """Like :func:`run_kernel`, through the TensorRT plugin's ``enqueue`` (CPU-emulated plugin library): inputs in the
    spec's order (a missing initial state is fed as zeros, as the exported graphs do), ``in_place`` aliases the state
    output to the h0 input (IPluginV3OneBuildV2 aliasing)."""
    from export.plugin_spec import SCAN_OPS

    spec = SCAN_OPS[case.op]
    d = dict(d)
    if case.op == "LRUScan":
        for n in ("h0_re", "h0_im"):
            if d[n] is None:
                d[n] = torch.zeros(d["u_re"].shape[0], d["u_re"].shape[2], device=k.device)
    elif d["h0"] is None:
        b = d["u" if case.op == "SelectiveScan" else "x"].shape[0]
        d["h0"] = torch.zeros(b, *(d["u"].shape[1:2] + d["A"].shape[1:2] if case.op == "SelectiveScan" else
                                   (d["x"].shape[2], d["x"].shape[3], d["B"].shape[3])), device=k.device)
    elif in_place:
        d["h0"] = d["h0"].clone()
    ins = [d[n] for n in spec.input_names]
    k._reset()
    if case.op == "LRUScan":
        outs = [k._empty(d["u_re"].shape, d["u_re"].dtype, k.device),
                k._empty(d["u_im"].shape, d["u_im"].dtype, k.device)]
    else:
        act = d["u" if case.op == "SelectiveScan" else "x"]
        h = d["h0"] if in_place else k._empty(d["h0"].shape, torch.float32, k.device)
        outs = [k._empty(act.shape, act.dtype, k.device), h]
    defaults = {a: v[1] for a, v in spec.attributes.items()}
    k.plugin_enqueue(case.op, {**defaults, **(fields or {})}, ins, outs)
    if case.op == "LRUScan":
        return outs, [outs[0][:, -1].float(), outs[1][:, -1].float()]
    return [outs[0]], [outs[1]]


def run_kernel(k: ScanKernels, case: Case, d: dict, in_place: bool = False):
    """(activation output(s), state output(s)) from the CUDA kernel. ``in_place``: the state output is written into
    the h0 buffer (aliased I/O, as in the TensorRT engine)."""
    if case.op == "SelectiveScan":
        h0 = d["h0"].clone() if (in_place and d["h0"] is not None) else d["h0"]
        y, h = k.selective_scan(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["z"], d["delta_bias"], h0,
                                h_out=h0 if in_place else None)
        return [y], [h]
    if case.op == "SSDScan":
        h0 = d["h0"].clone() if (in_place and d["h0"] is not None) else d["h0"]
        y, h = k.ssd_scan(d["x"], d["dt"], d["A"], d["B"], d["C"], d["D"], d["dt_bias"], h0,
                          h_out=h0 if in_place else None)
        return [y], [h]
    h_re, h_im = k.lru_scan(d["u_re"], d["u_im"], d["lam_re"], d["lam_im"], d["h0_re"], d["h0_im"])
    return [h_re, h_im], [h_re[:, -1].float(), h_im[:, -1].float()]


def _nanmax(a: float, b: float) -> float:
    return a if a != a else (b if b != b else max(a, b))


def compare(case: Case, got, ref) -> dict:
    """Max abs errors and pass/fail under :data:`TOLERANCE` (a NaN anywhere -- e.g. an element the emulated kernel
    never wrote -- is reported as a NaN error and fails)."""
    atol, rtol = TOLERANCE[case.dtype]
    res = {"case": case.id, "act_err": 0.0, "state_err": 0.0, "ok": True}
    for g, r in zip(got[0], ref[0], strict=True):
        err = (g.float() - r).abs().max().item()
        scale = r.abs().max().item()
        res["act_err"] = _nanmax(res["act_err"], err)
        res["ok"] &= err <= atol + rtol * scale
    for g, r in zip(got[1], ref[1], strict=True):
        err = (g.float() - r).abs().max().item()
        res["state_err"] = _nanmax(res["state_err"], err)
        # LRU "states" are the last activation row (act dtype); Mamba states are fp32
        scale = r.abs().max().item()
        tol = (atol + rtol * scale) if case.op == "LRUScan" else STATE_TOL * max(1.0, scale)
        res["ok"] &= err <= tol
    return res


def in_place_runs(case: Case) -> tuple[bool, ...]:
    """The runs a case gets: out of place, and in place too (the state output written into the h0 buffer) where the op
    has an initial state it updates in place (not LRUScan, whose state outputs are a sequence)."""
    return (False, True) if case.op != "LRUScan" and case.with_h0 else (False,)


def check_case(k: ScanKernels, case: Case, seed: int, plugin: bool = False) -> list[dict]:
    """Runs one case on ``k`` (GPU or emulated) against the float64 reference: out-of-place, and in place (the state
    output written into the h0 buffer) where the op has an initial state. One result dict per run. ``plugin``: through
    the TensorRT plugin's enqueue (:func:`run_plugin`, emulated plugin library) instead of the kernel's C ABI."""
    d = make_inputs(case, device=k.device, seed=seed)
    ref = reference(case, {kk: (v.cpu() if v is not None else None) for kk, v in d.items()})
    ref = ([r.to(k.device) for r in ref[0]], [r.to(k.device) for r in ref[1]])
    out = []
    for in_place in in_place_runs(case):
        got = (run_plugin if plugin else run_kernel)(k, case, d, in_place=in_place)
        if not k.emulated:
            torch.cuda.synchronize()
        res = compare(case, got, ref)
        res["in_place"] = in_place
        out.append(res)
    return out


def check_all(k: ScanKernels, long_T: int = 200, verbose: bool = True, only: str | None = None,
              plugin: bool = False) -> list[dict]:
    out = []
    for i, case in enumerate(cases(long_T)):
        if only and only not in case.id:
            continue
        for res in check_case(k, case, seed=i, plugin=plugin):
            out.append(res)
            if verbose:
                print(f"{'ok  ' if res['ok'] else 'FAIL'} {case.id:<58} in_place={res['in_place']!s:<5} "
                      f"act {res['act_err']:.2e} state {res['state_err']:.2e}")
    return out


# ------------------------------------------------------------------------------------------------ timing
def _bytes(d: dict, outs) -> int:
    n = sum(v.numel() * v.element_size() for v in d.values() if v is not None)
    return n + sum(t.numel() * t.element_size() for grp in outs for t in grp)


#: published peak DRAM bandwidth (bytes/s) by device name (first match, spaces and dashes ignored), for a torch that
#: does not expose the memory clock; "H100" alone is the SXM part (its name is "NVIDIA H100 80GB HBM3")
PEAK_BANDWIDTH = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12),
                  ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12))


def peak_bandwidth(props) -> tuple[float, str]:
    """``(bytes/s, where the figure comes from)``: 2 * memory clock (kHz) * bus width (bits) / 8 when torch exposes
    them, else the published figure for the device's name (:data:`PEAK_BANDWIDTH`); ``(nan, ...)`` when neither is
    known. Printed beside the measured bandwidth that the floor uses."""
    clk, width = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clk and width:
        return 2 * clk * 1e3 * width / 8, f"memory clock {clk / 1e3:.0f} MHz x {width}-bit bus, from torch"
    name = getattr(props, "name", "")

    def norm(x):
        return x.replace(" ", "").replace("-", "").lower()

    for key, value in PEAK_BANDWIDTH:
        if norm(key) in norm(name):
            return value, f"published figure for {key} (torch does not expose the memory clock)"
    return float("nan"), f"unknown for {name!r}"


def measured_bandwidth(n_bytes: int = 1 << 30, iters: int = 10) -> float:
    """Device-memory bandwidth measured here (bytes/s): the best of ``iters`` device-to-device copies of ``n_bytes``
    (each reads and writes ``n_bytes``), timed with CUDA events -- what a memory-bound kernel can reach on this GPU."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        dst.copy_(src)
        e.record()
        torch.cuda.synchronize()
        best = min(best, s.elapsed_time(e) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n_bytes / best


def bench(k: ScanKernels, iters: int = 20) -> list[dict]:
    """Kernel vs PyTorch reference (on the GPU) vs the memory-bandwidth floor (bytes moved / bandwidth measured by
    :func:`measured_bandwidth`; the device's peak is printed beside it)."""
    from zoo.ops.lru import lru_scan_ref
    from zoo.ops.selective_scan import selective_scan_ref

    peak, source = peak_bandwidth(torch.cuda.get_device_properties(0))
    bw = measured_bandwidth()
    print(f"memory-bandwidth floor at the measured {bw / 1e12:.2f} TB/s (1 GiB device-to-device copy, best of 10); "
          f"peak {peak / 1e12:.2f} TB/s ({source}), so the copy reaches {bw / peak:.0%} of it")
    rows = []
    configs = [Case("SelectiveScan", torch.float32, T, True, dict(B=256, E=128, N=32)) for T in (1, 50, 200)]
    configs += [Case("SelectiveScan", torch.bfloat16, 200, True, dict(B=256, E=128, N=32))]
    configs += [Case("SSDScan", torch.float32, T, True, dict(B=256, H=8, P=16, G=1, N=32)) for T in (1, 200)]
    configs += [Case("LRUScan", torch.float32, T, True, dict(B=256, N=128)) for T in (1, 200)]

    def t_ms(fn):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(iters):
            fn()
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e) / iters

    for case in configs:
        d = make_inputs(case)
        outs = run_kernel(k, case, d)
        if case.op == "SelectiveScan":
            ref = lambda: selective_scan_ref(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["z"],  # noqa: E731
                                            d["delta_bias"], True, True, d["h0"])
        elif case.op == "SSDScan":
            ref = lambda: ssd_scan_ref(d["x"], d["dt"], d["A"], d["B"], d["C"], d["D"],  # noqa: E731
                                       d["dt_bias"], d["h0"])
        else:
            ref = lambda: lru_scan_ref(d["u_re"], d["u_im"], d["lam_re"], d["lam_im"], None,  # noqa: E731
                                       d["h0_re"], d["h0_im"])
        kt = t_ms(lambda: run_kernel(k, case, d))
        rt = t_ms(ref)
        floor = _bytes(d, outs) / bw * 1e3
        rows.append({"case": case.id, "kernel_ms": kt, "torch_ref_ms": rt, "bw_floor_ms": floor,
                     "kernel_vs_floor": kt / floor, "measured_bytes_per_s": bw, "peak_bytes_per_s": peak,
                     "peak_source": source})
        print(f"{case.id:<60} kernel {kt:8.4f} ms  torch ref {rt:8.4f} ms  floor {floor:8.4f} ms  "
              f"({kt / floor:5.1f}x floor)")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0], epilog=EXIT_CODES)
    ap.add_argument("--lib", default=None)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--long-T", type=int, default=200)
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--emulate", action="store_true",
                    help="no GPU: build the kernels for the CPU emulator (python -m export.build_plugins --emulated) "
                         "and check them there (--lib names an emulated build instead)")
    ap.add_argument("--asan", action="store_true",
                    help="with --emulate: build the emulated kernels with AddressSanitizer and run the checks under "
                         "it (this command runs again with the ASan runtime preloaded), so any read or write outside "
                         "a tensor fails")
    ap.add_argument("--cases", default=None, help="only the cases whose id contains this text (one must match)")
    ap.add_argument("--start-only", action="store_true",
                    help="load the kernels library and stop before any case (times the command's start)")
    ap.add_argument("--plugin", action="store_true",
                    help="with --emulate: run each case through the TensorRT plugin's enqueue (creator, fields, shape "
                         "mapping; the emulated plugin library, needs the TensorRT headers) instead of the kernel ABI")
    a = ap.parse_args(argv)
    if a.long_T < 1:
        ap.error(f"--long-T must be >= 1 (the long cases' sequence length), got {a.long_T}")
    if a.cases is not None and not any(a.cases in c.id for c in cases(a.long_T)):
        ap.error(f"--cases {a.cases!r} matches no case id (they look like {next(cases(a.long_T)).id!r}): nothing would "
                 "be checked")
    if (a.asan or a.plugin) and not a.emulate:
        print(f"{'--asan' if a.asan else '--plugin'} needs --emulate (it checks the CPU-emulated build)",
              file=sys.stderr)
        return EXIT_USAGE
    if a.emulate:
        if a.bench:
            print("--bench needs a GPU: the emulator's timings say nothing about the kernels'", file=sys.stderr)
            return EXIT_USAGE
        from export.build_plugins import (ASAN_FLAGS, EMULATED_ASAN_LIBRARY, EMULATED_PLUGIN_ASAN_LIBRARY, BuildError,
                                          ToolMissing, asan_runtime, build_emulated)

        def build_failed(flag: str, e: BuildError) -> int:
            """Say why on stderr; 4 for a tool missing here (a C++ compiler), else 1 (the build ran and failed)."""
            print(f"{flag}: {e}", file=sys.stderr)
            return EXIT_MISSING if isinstance(e, ToolMissing) else EXIT_ERROR

        if a.asan:
            try:
                rt = str(asan_runtime())
            except BuildError as e:                   # no C++ compiler, or one without the AddressSanitizer runtime
                return build_failed("--asan", e)      # ToolMissing: 4
            try:
                lib = a.lib or str(build_emulated(
                    out_name=EMULATED_PLUGIN_ASAN_LIBRARY if a.plugin else EMULATED_ASAN_LIBRARY,
                    extra_flags=ASAN_FLAGS, plugins=a.plugin))
            except BuildError as e:
                return build_failed("--asan", e)
            if rt not in os.environ.get("LD_PRELOAD", ""):
                import subprocess

                env = dict(os.environ, LD_PRELOAD=" ".join(x for x in (rt, os.environ.get("LD_PRELOAD")) if x),
                           ASAN_OPTIONS=":".join(x for x in ("detect_leaks=0", os.environ.get("ASAN_OPTIONS")) if x))
                args = list(sys.argv[1:] if argv is None else argv)
                if not a.lib:
                    args += ["--lib", lib]
                return subprocess.call([sys.executable, str(Path(__file__).resolve()), *args], env=env)
            a.lib = lib
        try:
            k = ScanKernels(a.lib or build_emulated(plugins=a.plugin))
        except BuildError as e:
            return build_failed("--emulate", e)
        except OSError as e:                          # a --lib that does not exist or does not load
            print(f"--emulate: cannot load the kernels library: {e}", file=sys.stderr)
            return EXIT_ERROR
        if not k.emulated:
            print(f"{k.path} is not an emulated build (no zoo_emu_last_error): give --emulate an emulated --lib, or "
                  "leave --lib out to build one", file=sys.stderr)
            return EXIT_USAGE
    elif not torch.cuda.is_available():
        print("no CUDA device: the kernels can only be compared with the references on a GPU (or on the CPU "
              "emulator: --emulate)", file=sys.stderr)
        return EXIT_MISSING
    else:
        try:
            k = ScanKernels(a.lib)
        except OSError as e:                          # not built yet (python -m export.build_plugins), or not loadable
            print(f"cannot load the kernels library: {e} (build it with python -m export.build_plugins, or give "
                  "--lib)", file=sys.stderr)
            return EXIT_ERROR
    res = {}
    if a.start_only:
        res["check"] = []
    elif a.check or not a.bench:
        res["check"] = check_all(k, a.long_T, only=a.cases, plugin=a.plugin)
    if a.bench:
        res["bench"] = bench(k)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    bad = [r for r in res.get("check", []) if not r["ok"]]
    print(f"{len(res.get('check', [])) - len(bad)} passed, {len(bad)} failed")
    return EXIT_VERIFY_FAILED if bad else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
