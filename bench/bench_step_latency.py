"""Per-event cost of serving a next-item recommendation after each new event, on this CPU (a benchmark, not a test).

Compared side by side, at history lengths L = 50, 200, 2000 and batch sizes B = 1 and B = 256 (one new event per row
per call):

* ``ORT step``: the exported stepwise ONNX graph (``python -m export.onnx``) of Mamba4Rec and LRURec in ONNX Runtime:
  ``T = 1`` new item + state in, top-10 + new state out (the state was primed with ``L`` items first);
* ``torch step``: the same with ``model.step`` in PyTorch (top-10 included);
* ``torch re-encode``: what a model without a recurrent step must do per event: re-encode the whole history of
  ``L`` items (PyTorch ``model.forward`` + top-10) with SASRec (one model with position embeddings for the longest L,
  the first L used; window = L) and with Mamba4Rec (full forward, fused CPU scan kernel when it builds; the
  environment line says whether it did).

All models use their ML-1M default configs (n_items 3417, hidden 64) with random weights (latency does not depend on
the weights). Everything runs on ONE thread (torch.set_num_threads(1), ORT intra_op_num_threads=1), so the numbers
are per core. Per-event latency = time of one call; throughput = B / latency (events per second per core).
Calls are timed in process CPU time by default (the benchmark machine is shared; ``--wall`` for wall-clock time).

    OMP_NUM_THREADS=1 python bench/bench_step_latency.py [--lengths 50 200 2000] [--batches 1 256]
                                                         [--min-time 0.5] [--markdown bench/RESULTS.md]
                                                         [--plot bench/step_latency.png] [--rounds 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zoo  # noqa: E402,F401
from benchutil import (HelpFormatter, command_line, markdown_path, omp_prefix, scratch_folder,  # noqa: E402
                       write_markdown)
from zoo.cli import (EXIT_CODES, EXIT_MISSING, check_outputs, exit_with, positive_float, positive_int,  # noqa: E402
                     run_cli, written_whole_path)
from export.onnx import export_model  # noqa: E402
from export.runtime import OnnxStepSession  # noqa: E402
from zoo.models.lrurec import LRURecConfig, LRURecModel  # noqa: E402
from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel  # noqa: E402
from zoo.models.sasrec import SASRecConfig, SASRecModel  # noqa: E402

K = 10


CLOCK = time.process_time      # CPU seconds of this process: robust to other jobs sharing the cores (--wall: wall)


MEDIANS: dict = {}  # (method, L, B) -> median seconds per call (the tables report the best of N, see below)


def timeit(fn, min_time: float, max_reps: int = 2000, warmup: int = 2, key=None) -> float:
    """Best-of-N seconds per call (at least 3 timed calls unless one call takes ``2 * min_time`` or more).

    The minimum is the estimator the ``timeit`` docs recommend: slower repeats are interference from other processes
    (this machine is shared). The median is kept in :data:`MEDIANS` and printed too.
    """
    for _ in range(warmup):
        fn()
    times = []
    t_start = CLOCK()
    while len(times) < max_reps:
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
        spent = CLOCK() - t_start
        if spent >= min_time and len(times) >= 3 or times[-1] >= min_time * 2:
            break
    if key is not None:
        MEDIANS[key] = statistics.median(times)
    return min(times)


def bench(lengths, batches, min_time, log):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with scratch_folder("bench_onnx_") as tmp:              # the exported step graphs, removed after
        return _bench(lengths, batches, min_time, log, tmp)


def _bench(lengths, batches, min_time, log, tmp: str):
    """:func:`bench`'s timings, the step graphs exported under ``tmp``."""
    n_items = 3417
    results = {}  # (method, L, B) -> seconds per call
    scaled = {}  # cells timed on a sub-batch and scaled to B: the rows timed
    step_models = {"Mamba4Rec": Mamba4RecModel(Mamba4RecConfig(n_items=n_items)).eval(),
                   "LRURec": LRURecModel(LRURecConfig(n_items=n_items)).eval()}
    sessions = {}
    for name, m in step_models.items():
        export_model(m, os.path.join(tmp, name), topk=K, verify=False)
        sessions[name] = OnnxStepSession(os.path.join(tmp, name), threads=1)
    rng = np.random.default_rng(0)
    Lmax = max(lengths)
    sas = SASRecModel(SASRecConfig(n_items=n_items, max_seq_length=Lmax)).eval()
    m4r_full = step_models["Mamba4Rec"]
    for L in lengths:
        for B in batches:
            hist = rng.integers(1, n_items, size=(B, L + 1))
            nxt = hist[:, -1:]
            # ---- stepwise: prime with L items, then time one T = 1 event
            for name, m in step_models.items():
                s = sessions[name]
                st = s.prime(hist[:, :L]).state
                feeds = {"item_ids": nxt.astype(np.int64), **st}
                # the graph itself (what a server runs); the checked wrapper s.step adds ~20-50 µs of NumPy checks
                results[(f"ORT step {name}", L, B)] = timeit(lambda: s.raw_run(feeds), min_time,
                                                             key=(f"ORT step {name}", L, B))
                with torch.no_grad():
                    _, tst = m.step(torch.from_numpy(hist[:, :L]), m.init_state(B))
                    tn = torch.from_numpy(nxt)

                    def tstep():
                        logits, _ = m.step(tn, tst)
                        logits[:, 0] = -float("inf")
                        torch.topk(logits, K)

                    results[(f"torch step {name}", L, B)] = timeit(tstep, min_time, key=(f"torch step {name}", L, B))
            # ---- re-encoding the full history per event
            ids = torch.from_numpy(hist[:, 1:])                  # the L most recent items incl. the new one
            mask = torch.ones_like(ids, dtype=torch.bool)
            for name, m in (("SASRec", sas), ("Mamba4Rec", m4r_full)):
                # the biggest cells would take minutes per call on one core: time a sub-batch and scale linearly
                cap = 200 * 200 * 16 // (L * L) if name == "SASRec" else 200 * 64 // L
                sub = max(1, min(B, cap))
                sid, smask = ids[:sub], mask[:sub]

                def reenc():
                    with torch.no_grad():
                        sc = m.predict(sid, smask)
                        torch.topk(sc, K)

                key = (f"torch re-encode {name}", L, B)
                t = timeit(reenc, min_time, warmup=1 if L * sub > 100000 or L >= 2000 else 2, key=key)
                results[key] = t * B / sub
                MEDIANS[key] *= B / sub
                if sub < B:
                    scaled[key] = sub
            log(f"L={L:5d} B={B:4d}: " + ", ".join(f"{k[0]} {1e3 * v:.3f} ms (median {1e3 * MEDIANS[k]:.3f})"
                                                   for k, v in results.items() if k[1] == L and k[2] == B))
    return results, scaled


METHODS = ["ORT step Mamba4Rec", "ORT step LRURec", "torch step Mamba4Rec", "torch step LRURec",
           "torch re-encode SASRec", "torch re-encode Mamba4Rec"]


def fmt_lat(s: float) -> str:
    return f"{s * 1e6:,.0f} µs" if s < 1e-3 else (f"{s * 1e3:,.2f} ms" if s < 1 else f"{s:,.2f} s")


def markdown(results, lengths, batches, scaled=None) -> str:
    out, scaled = [], scaled or {}
    for B in batches:
        out.append(f"**B = {B}** (one new event per row per call; per-event latency = one call, throughput = "
                   f"{B} / latency)\n")
        head = "| method | " + " | ".join(f"L = {L:,}" for L in lengths) + " |"
        out += [head, "|---|" + "---|" * len(lengths)]
        for m in METHODS:
            cells = []
            for L in lengths:
                s = results.get((m, L, B))
                mark = " †" if (m, L, B) in scaled else ""
                cells.append("-" if s is None else f"{fmt_lat(s)} · {B / s:,.0f} ev/s{mark}")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        ratio = []
        for L in lengths:
            a, b = results.get(("torch re-encode SASRec", L, B)), results.get(("ORT step Mamba4Rec", L, B))
            c = results.get(("ORT step LRURec", L, B))
            ratio.append("-" if None in (a, b, c) else f"{a / b:,.0f}× / {a / c:,.0f}×")
        out.append("| *SASRec re-encode ÷ ORT step (Mamba4Rec / LRURec)* | " + " | ".join(ratio) + " |")
        med = []
        for L in lengths:
            a, b = MEDIANS.get(("torch re-encode SASRec", L, B)), MEDIANS.get(("ORT step Mamba4Rec", L, B))
            c = MEDIANS.get(("ORT step LRURec", L, B))
            med.append("-" if None in (a, b, c) else f"{a / b:,.0f}× / {a / c:,.0f}×")
        out.append("| *same ratio from medians instead of best-of-N* | " + " | ".join(med) + " |")
        out.append("")
    if scaled:
        subs = "; ".join(f"{m.removeprefix('torch re-encode ')} at L = {L:,}, B = {B}: {n} row{'s' * (n > 1)}"
                         for (m, L, B), n in scaled.items())
        out.append(f"† timed on a sub-batch ({subs}) and scaled linearly to B (one call would take minutes on one "
                   "core).\n")
    return "\n".join(out)


def mermaid(results, lengths, B) -> str:
    """A mermaid xychart (renders on GitHub) of per-event latency vs L, log10(µs) on the y axis."""
    lines = ["```mermaid", "xychart-beta",
             f'  title "Per-event latency, B = {B}, 1 CPU thread (log10 µs)"',
             "  x-axis \"history length L\" [" + ", ".join(f'"{L}"' for L in lengths) + "]",
             '  y-axis "log10(latency / µs)" 0 --> 7']
    for m in METHODS:
        vals = [results.get((m, L, B)) for L in lengths]
        if any(v is None for v in vals):
            continue
        lines.append("  line [" + ", ".join(f"{np.log10(v * 1e6):.2f}" for v in vals) + "]")
    lines.append("```")
    legend = f"Lines, top to bottom at L = {lengths[-1]}: " + ", ".join(
        sorted((m for m in METHODS if (m, lengths[-1], B) in results), key=lambda m: -results[(m, lengths[-1], B)]))
    return "\n".join(lines) + "\n\n" + legend + "\n"


def plot(results, lengths, batches, path: str) -> None:
    """Per-event latency vs history length (log-log), one panel per batch size, written whole to ``path`` in the
    format of its extension (:data:`PLOT_FORMATS`; needs matplotlib: the ``bench`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches), 4.2), squeeze=False)
    for ax, B in zip(axes[0], batches, strict=True):
        for m in METHODS:
            pts = [(L, results[(m, L, B)]) for L in lengths if (m, L, B) in results]
            if pts:
                style = "-o" if m.startswith("ORT") else ("--s" if "re-encode" in m else ":^")
                ax.plot([p[0] for p in pts], [p[1] * 1e6 for p in pts], style, label=m)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(lengths, [f"{L:,}" for L in lengths])
        ax.set_xlabel("history length L (items)")
        ax.set_ylabel("latency per call (µs, log)")
        ax.set_title(f"B = {B} (one new event per row per call)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Stepwise inference vs re-encoding the history, 1 CPU thread", fontsize=11)
    fig.tight_layout()
    with written_whole_path(path) as tmp:              # whole or not at all; the format named: tmp has no extension
        fig.savefig(tmp, dpi=110, format=os.path.splitext(path)[1][1:].lower())
    plt.close(fig)


#: the formats ``--plot`` writes, by the path's extension (a path without one gets ``.png``)
PLOT_FORMATS = (".png", ".svg", ".pdf")


def plot_path(path: str) -> str:
    """The ``type`` of ``--plot PATH``: ``path`` with ``.png`` added when it has no extension, checked when the options
    are parsed as ``--markdown`` is (a file, not a folder; a place it can be written), and refused with an extension
    other than :data:`PLOT_FORMATS` -- not after the whole sweep."""
    ext = os.path.splitext(path)[1].lower()
    if ext and ext not in PLOT_FORMATS:
        raise argparse.ArgumentTypeError(f"{path}: give a {', '.join(PLOT_FORMATS)} file (or no extension: .png)")
    try:
        check_outputs({"--plot": path})               # a folder is refused as it is given, not as FOLDER.png
        if not ext:
            path += ".png"
            check_outputs({"--plot": path})
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--plot ")) from None
    return path


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--lengths", type=positive_int, nargs="+", default=[50, 200, 2000],
                   help="history lengths L, a row each")
    p.add_argument("--batches", type=positive_int, nargs="+", default=[1, 256], help="batch sizes B, a table each")
    p.add_argument("--min-time", type=positive_float, default=0.5, help="seconds of timed calls per cell (at least)")
    p.add_argument("--wall", action="store_true", help="time wall-clock instead of process CPU time")
    p.add_argument("--markdown", type=markdown_path, default=None,
                   help="also write the tables (and a mermaid plot) to this file (default: print them only)")
    p.add_argument("--plot", type=plot_path, default=None,
                   help=f"also draw the latencies into this {', '.join(PLOT_FORMATS)} file (.png added to a path "
                        "without an extension; needs matplotlib; default: no plot)")
    p.add_argument("--rounds", type=positive_int, default=1,
                   help="repeat the whole sweep; each cell reports its best round (robust to bursts of load)")
    args = p.parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:     # said before the sweep, not after it
        exit_with(EXIT_MISSING, "error: --plot needs matplotlib, which is not installed here (pip install -e "
                                "'.[bench]')")                        # a missing package: exit 4, not a usage error
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    t0 = time.perf_counter()
    res, scaled, medians = {}, {}, {}
    for r in range(args.rounds):          # whole sweeps, one after another: a burst of load hits one round's cell
        if args.rounds > 1:
            print(f"--- round {r + 1} of {args.rounds}", flush=True)
        MEDIANS.clear()
        res_r, scaled = bench(args.lengths, args.batches, args.min_time, lambda m: print(m, flush=True))
        for k, v in res_r.items():
            res[k] = min(v, res.get(k, v))
            medians[k] = min(MEDIANS[k], medians.get(k, MEDIANS[k]))
    MEDIANS.update(medians)
    import onnxruntime as ort

    from zoo.ops import selective_scan_cpu

    env = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs (benchmark on 1 thread), "
           f"torch {torch.__version__}, onnxruntime {ort.__version__}, Python {platform.python_version()}, Mamba4Rec "
           "re-encode on the " + ("fused CPU scan kernel" if selective_scan_cpu.is_available()
                                  else "PyTorch reference scan"))
    md = markdown(res, args.lengths, args.batches, scaled)
    print()
    print(md)
    if args.markdown:
        f = io.StringIO()
        f.write("# Stepwise inference vs re-encoding: per-event latency on CPU\n\n")
        f.write(f"Produced by `{omp_prefix()}{command_line('bench/bench_step_latency.py', argv)}` "
                f"({time.strftime('%Y-%m-%d')}, {env}; {time.perf_counter() - t0:.0f} s).\n")
        f.write("ML-1M default configs (n_items 3,417, hidden 64; Mamba4Rec 1 layer, d_state 32; LRURec 2 layers; "
                "SASRec 2 layers, window = L), random weights, top-10 included in every method. "
                f"Best of N repeated calls (as the timeit docs recommend: slower repeats are interference), "
                f"best of {args.rounds} whole sweep(s) per cell (medians: the lowest round median), timed as "
                f"{'wall-clock' if args.wall else 'process CPU'} time "
                "(single-threaded, so CPU time = the latency on an otherwise idle core; load average "
                f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end). "
                "Cell = per-event latency · throughput (events/s per core).\n\n")
        f.write(md + "\n")
        f.write(mermaid(res, args.lengths, args.batches[0]) + "\n")
        write_markdown(args.markdown, f.getvalue())
    if args.plot:
        plot(res, args.lengths, args.batches, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    run_cli(main, prog="python bench/bench_step_latency.py")
