"""Benchmark: fused CPU selective scan vs a naive per-step loop vs zoo.ops.selective_scan_ref.

    python bench/bench_selective_scan_cpu.py [--batch 64 --dim 128 --state 32 --lens 200 50]

Prints one table: forward and forward+backward wall time (median of --repeat runs, after a
warm-up) for each implementation, float32, Mamba4Rec-style inputs (softplus dt, D, z,
delta_bias).  Threads: torch.get_num_threads() (set OMP_NUM_THREADS / --threads to change).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import pathlib

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.benchutil import RawDescriptionHelpFormatter  # noqa: E402
from zoo.cli import EXIT_CODES, positive_int, run_cli  # noqa: E402
from zoo.ops import selective_scan_cpu as ssc  # noqa: E402


def naive_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
               return_last_state=False, initial_state=None):
    bsz, E, L = u.shape
    dt = delta if delta_bias is None else delta + delta_bias[None, :, None]
    if delta_softplus:
        dt = torch.nn.functional.softplus(dt)
    h = initial_state if initial_state is not None else u.new_zeros(bsz, E, A.shape[1])
    ys = []
    for t in range(L):
        d = dt[:, :, t, None]
        h = torch.exp(d * A) * h + d * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D[None, :, None] * u
    if z is not None:
        y = y * torch.nn.functional.silu(z)
    return (y, h) if return_last_state else y


def make_inputs(bsz, E, L, N, requires_grad):
    g = torch.Generator().manual_seed(0)
    t = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = dict(u=t(bsz, E, L), delta=t(bsz, E, L) * 0.5 - 1.0, A=-torch.exp(t(E, N) * 0.5),
             B=t(bsz, N, L), C=t(bsz, N, L), D=t(E), z=t(bsz, E, L), delta_bias=t(E) * 0.3)
    if requires_grad:
        x = {k: v.requires_grad_(True) for k, v in x.items()}
    return x


def timeit(fn, repeat, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_one(name, fn, bsz, E, L, N, repeat):
    def fwd():
        with torch.no_grad():
            fn(**make_inputs_cached[(L, False)], delta_softplus=True)

    def fwd_bwd():
        x = make_inputs_cached[(L, True)]
        for v in x.values():
            v.grad = None
        out = fn(**x, delta_softplus=True)
        out.backward(grad_cached[L])

    try:
        tf = timeit(fwd, repeat)
        tb = timeit(fwd_bwd, repeat)
    except RuntimeError as exc:  # e.g. out of memory for the reference
        print(f"  {name}: failed ({exc})")
        return None, None
    return tf, tb


make_inputs_cached: dict = {}
grad_cached: dict = {}


def main(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False,
                                 description=__doc__, epilog=EXIT_CODES, formatter_class=RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=positive_int, default=64, help="sequences per call (B)")
    ap.add_argument("--dim", type=positive_int, default=128, help="E (channels = d_inner)")
    ap.add_argument("--state", type=positive_int, default=32, help="N (the state size per channel)")
    ap.add_argument("--lens", type=positive_int, nargs="+", default=[200, 50], help="sequence lengths L, rows each")
    ap.add_argument("--repeat", type=positive_int, default=3, help="timed runs per row (the median is shown)")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="torch's CPU threads (default: torch's own, OMP_NUM_THREADS or the cores)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    impls = []
    t0 = time.perf_counter()
    if ssc.is_available():
        impls.append(("fused_cpu (this)", ssc.selective_scan_cpu))
        print(f"extension ready in {time.perf_counter() - t0:.1f}s (build or cache load)")
    else:
        print(f"fused extension unavailable: {ssc.unavailable_reason()}")
    impls.append(("naive_loop", naive_loop))
    try:
        from zoo.ops.selective_scan import selective_scan_ref
        impls.append(("zoo selective_scan_ref", selective_scan_ref))
    except Exception as exc:  # noqa: BLE001
        print(f"zoo.ops.selective_scan.selective_scan_ref not importable: {exc}")

    bsz, E, N = args.batch, args.dim, args.state
    print(f"B={bsz} E={E} N={N} float32, threads={torch.get_num_threads()}, median of {args.repeat}; torch "
          f"{torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs")
    rows = []
    for L in args.lens:
        make_inputs_cached[(L, False)] = make_inputs(bsz, E, L, N, False)
        make_inputs_cached[(L, True)] = make_inputs(bsz, E, L, N, True)
        grad_cached[L] = torch.randn(bsz, E, L)
        base = None
        for name, fn in impls:
            tf, tb = bench_one(name, fn, bsz, E, L, N, args.repeat)
            if base is None:
                base = (tf, tb)
            rows.append((L, name, tf, tb))
    w = max(len(r[1]) for r in rows)
    print(f"\n{'L':>5}  {'impl':<{w}}  {'fwd ms':>10}  {'fwd+bwd ms':>11}  {'fwd x':>7}  {'fwd+bwd x':>9}")
    ref_by_L = {}
    for L, name, tf, tb in rows:
        ref_by_L.setdefault(L, (tf, tb))
        rf, rb = ref_by_L[L]
        fmt = lambda v: f"{v * 1e3:10.1f}" if v is not None else f"{'n/a':>10}"  # noqa: E731
        sf = f"{tf / rf:7.1f}" if tf and rf else f"{'':>7}"
        sb = f"{tb / rb:9.1f}" if tb and rb else f"{'':>9}"
        print(f"{L:>5}  {name:<{w}}  {fmt(tf)}  {fmt(tb):>11}  {sf}  {sb}")
    print("(x = time relative to the first row of the same L; >1 means slower)")


if __name__ == "__main__":
    run_cli(main, prog="python bench/bench_selective_scan_cpu.py")
