"""What ``--exclude-seen`` costs a step graph: per-event latency of the exported ONNX step graph with and without the
``seen [B, n_items]`` state, side by side in one run (a benchmark, not a test).

For Mamba4Rec and LRURec (ML-1M default configs, hidden 64, random weights) at catalog sizes ``n_items`` (default:
3,417 = ML-1M, 18,358 = Amazon Sports, 100,001) and batch sizes ``B`` (default 1 and 256): the state is primed with
``L = 200`` items, then one ``T = 1`` event per row is timed through ``OnnxStepSession.raw_run`` (the graph alone, as a
server runs it). The ``seen`` state is ``4 * n_items`` bytes per sequence; the table lists it beside the recurrent
state. Best of N calls in process CPU time on one thread (``bench_step_latency.py`` explains the estimator), the two
graphs of a row timed in alternating rounds (:data:`ROUNDS`; each cell: the best round, and the lowest round median).

    OMP_NUM_THREADS=1 python bench/bench_exclude_seen.py [--items 3417 18358 100001] [--batches 1 256]
                                                        [--min-time 0.5] [--markdown bench/RESULTS_EXCLUDE_SEEN.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zoo  # noqa: E402,F401
from benchutil import HelpFormatter, command_line, markdown_path, scratch_folder, write_markdown  # noqa: E402
from zoo.cli import EXIT_CODES, int_at_least, positive_float, positive_int, run_cli  # noqa: E402
from bench_step_latency import MEDIANS, fmt_lat, omp_prefix, timeit  # noqa: E402
from export.onnx import export_model  # noqa: E402
from export.runtime import OnnxStepSession  # noqa: E402
from zoo.models.lrurec import LRURecConfig, LRURecModel  # noqa: E402
from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel  # noqa: E402

K = 10
L = 200
#: timing rounds per row: plain and --exclude-seen alternate, each round ``min_time / ROUNDS`` per graph
ROUNDS = 3


def bench(items, batches, min_time, log):
    torch.set_num_threads(1)
    with scratch_folder("bench_seen_") as tmp:              # the exported graphs, removed after
        return _bench(items, batches, min_time, log, tmp)


def _bench(items, batches, min_time, log, tmp: str) -> list[dict]:
    """:func:`bench`'s rows, the graphs exported under ``tmp``."""
    rows = []
    for n_items in items:
        torch.manual_seed(0)
        models = {"Mamba4Rec": Mamba4RecModel(Mamba4RecConfig(n_items=n_items)).eval(),
                  "LRURec": LRURecModel(LRURecConfig(n_items=n_items)).eval()}
        for name, m in models.items():
            sess = {}
            for ex in (False, True):
                d = os.path.join(tmp, f"{name}-{n_items}-{int(ex)}")
                export_model(m, d, topk=K, exclude_seen=ex, verify=False)
                sess[ex] = OnnxStepSession(d, threads=1)
            state_bytes = sum(4 * int(np.prod(s["shape"][1:])) for s in sess[False].spec["state"])
            for B in batches:
                rng = np.random.default_rng(0)
                hist = rng.integers(1, n_items, size=(B, L + 1))
                feeds = {ex: {"item_ids": hist[:, L:].astype(np.int64), **s.prime(hist[:, :L]).state}
                         for ex, s in sess.items()}
                t, med = {}, {}
                for _ in range(ROUNDS):          # the two graphs alternate, so a change in load hits both alike
                    for ex, s in sess.items():
                        key = (name, n_items, B, ex)
                        best = timeit(lambda s=s, ex=ex: s.raw_run(feeds[ex]), min_time / ROUNDS, key=key)
                        t[ex], med[ex] = min(best, t.get(ex, best)), min(MEDIANS[key], med.get(ex, MEDIANS[key]))
                rows.append({"model": name, "n_items": n_items, "B": B, "plain": t[False], "seen": t[True],
                             "plain_med": med[False], "seen_med": med[True], "state_bytes": state_bytes})
                log(f"{name} n_items={n_items:,} B={B}: plain {fmt_lat(t[False])}, --exclude-seen {fmt_lat(t[True])} "
                    f"({t[True] / t[False]:.2f}x)")
    return rows


def markdown(rows) -> str:
    out = ["| model | n_items | B | step | step `--exclude-seen` | ratio (best / median) | state per sequence "
           "(recurrent + seen) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['n_items']:,} | {r['B']} | {fmt_lat(r['plain'])} | {fmt_lat(r['seen'])} | "
                   f"{r['seen'] / r['plain']:.2f}× / {r['seen_med'] / r['plain_med']:.2f}× | "
                   f"{r['state_bytes'] / 1024:.1f} KiB + {4 * r['n_items'] / 1024:.1f} KiB |")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    # export_model's rule, checked as the options are parsed (was: a traceback from the export): K <= n_items - 1
    p.add_argument("--items", type=int_at_least(K + 1), nargs="+", default=[3417, 18358, 100001],
                   help=f"catalogue sizes n_items (at least {K + 1}: item 0 is padding, the graphs return top-{K}), "
                        "a row each")
    p.add_argument("--batches", type=positive_int, nargs="+", default=[1, 256], help="batch sizes B, a row each")
    p.add_argument("--min-time", type=positive_float, default=0.5, help="seconds of timed calls per cell (at least)")
    p.add_argument("--markdown", type=markdown_path, default=None,
                   help="also write the table to this file (default: print it only)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = bench(args.items, args.batches, args.min_time, lambda m: print(m, flush=True))
    md = markdown(rows)
    print()
    print(md)
    if args.markdown:
        import onnxruntime as ort

        env = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs (1 thread), torch "
               f"{torch.__version__}, onnxruntime {ort.__version__}")
        write_markdown(args.markdown,
                       "# `--exclude-seen`: cost of the `seen` state in a step graph (CPU)\n\n"
                       f"Produced by `{omp_prefix()}{command_line('bench/bench_exclude_seen.py', argv)}` "
                       f"({time.strftime('%Y-%m-%d')}, {env}; "
                       f"{time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f} at the end). "
                       f"One `T = 1` event per row after priming with {L} items, the ONNX step graph alone "
                       "(`raw_run`), top-10 in the graph; best of N calls in process CPU time; the two graphs of a row "
                       f"timed in {ROUNDS} alternating rounds (best round; lowest round median).\n\n" + md)


if __name__ == "__main__":
    run_cli(main, prog="python bench/bench_exclude_seen.py")
