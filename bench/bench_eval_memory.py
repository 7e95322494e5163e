"""What full-ranking evaluation (``zoo.evaluate``, and ``zoo.train``'s validation) costs as the catalogue grows: time
and peak memory of one batch, and of its rank count, side by side in one run (a benchmark, not a test).

Mamba4Rec in the bundled card's configuration (``hub_cards/mamba4rec-ml1m/config.json``) with its item table resized
to each catalogue (``--catalogues``), random weights and histories; ``--batch`` users of ``--seq-len`` items, as
``evaluate_model`` scores them (``batch_size`` 256 by default). Every row runs in a fresh interpreter, so that its
peak resident set is its own (Linux; what the allocator keeps counts):

* ``evaluate_model`` on one batch: the model's ``[batch, catalogue]`` scores and the ranks of the targets;
* the rank count alone on those scores, by ``zoo.metrics.rank_of_target`` (a few rows at a time) and by the
  whole-matrix count it replaced (``(scores >= target).sum(1)``, which makes an int64 copy of the ``[batch,
  catalogue]`` comparison).

    python bench/bench_eval_memory.py [--catalogues 3417 100001 1000001] [--batch 256] [--markdown F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import (  # noqa: E402
    HelpFormatter, card_config, command_line, fresh_run, markdown_path, reset_peak_rss, status_kb, write_table)
from zoo.cli import EXIT_CODES, positive_int, run_cli  # noqa: E402

CARD = "mamba4rec-ml1m"
WHAT = ("evaluate", "rank", "whole")


def whole_matrix_rank(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The rank count before it went by row chunks (pessimistic ties), for comparison."""
    t = scores.gather(1, targets[:, None])
    return (scores >= t).sum(1).long()


def measure(what: str, n_items: int, batch: int, seq_len: int) -> dict:
    """``{"seconds", "peak_mb"}`` of one ``what`` in this interpreter (best of 2 for the time; the peak of both)."""
    import zoo  # noqa: F401  (registers the models)
    from zoo.evaluate import EvalExamples, evaluate_model
    from zoo.metrics import rank_of_target
    from zoo.models import get_model_class

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(1, n_items, (batch,), generator=g)
    if what == "evaluate":
        cfg_cls, model_cls = get_model_class("mamba4rec")
        torch.manual_seed(0)
        model = model_cls(cfg_cls(**{**card_config(CARD), "n_items": n_items})).eval()
        hist = torch.randint(1, n_items, (batch, seq_len), generator=g).tolist()
        ex = EvalExamples(hist, targets.numpy(), list(range(batch)))
        evaluate_model(model, EvalExamples(hist[:2], targets[:2].numpy(), [0, 1]), ks=(10,), progress=False)  # warm

        def run():
            return evaluate_model(model, ex, ks=(10,), batch_size=batch, progress=False)
    else:
        scores = torch.randn(batch, n_items, generator=g)
        fn = rank_of_target if what == "rank" else whole_matrix_rank

        def run():
            return fn(scores, targets)
    before = reset_peak_rss()
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return {"seconds": best, "peak_mb": (status_kb("VmHWM") - before) / 1024}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--catalogues", type=positive_int, nargs="+", default=[3417, 100_001, 1_000_001],
                   help="item table rows (padding included), a row each")
    p.add_argument("--batch", type=positive_int, default=256, help="users per batch (evaluate_model's batch_size)")
    p.add_argument("--seq-len", type=positive_int, default=50, help="items per history")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    p.add_argument("--measure", nargs=2, metavar=("WHAT", "ITEMS"), help=argparse.SUPPRESS)   # the per-row process
    a = p.parse_args(argv)
    if a.measure:
        print(json.dumps(measure(a.measure[0], int(a.measure[1]), a.batch, a.seq_len)))
        return
    if any(n < 2 for n in a.catalogues) or a.batch < 1 or a.seq_len < 1:
        p.error("--catalogues need >= 2 rows, --batch and --seq-len >= 1")
    lines = [f"Produced by `{command_line('bench/bench_eval_memory.py', argv)}` ({time.strftime('%Y-%m-%d')}, cpu, "
             f"one thread; torch {torch.__version__}, {platform.processor() or platform.machine()}): one batch of "
             f"{a.batch} users ({a.seq_len}-item histories), each row in a fresh interpreter, best of 2.", "",
             "| catalogue (item rows) | scores [batch, catalogue] (MiB) | evaluate_model: ms per user | "
             "evaluate_model: peak memory (MiB) | rank count, by row chunks: ms / peak MiB | "
             "rank count, whole matrix: ms / peak MiB |",
             "|---|---|---|---|---|---|"]
    for n_items in a.catalogues:
        r = {}
        for what in WHAT:
            r[what] = json.loads(fresh_run(__file__, ["--measure", what, n_items, "--batch", a.batch,
                                                       "--seq-len", a.seq_len]))
        lines.append(f"| {n_items:,} | {a.batch * n_items * 4 / 2**20:.0f} | "
                     f"{r['evaluate']['seconds'] * 1e3 / a.batch:.2f} | {r['evaluate']['peak_mb']:.0f} | "
                     f"{r['rank']['seconds'] * 1e3:.1f} / {r['rank']['peak_mb']:.0f} | "
                     f"{r['whole']['seconds'] * 1e3:.1f} / {r['whole']['peak_mb']:.0f} |")
    write_table(lines, "Full-ranking evaluation as the catalogue grows: time and peak memory", a.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/bench_eval_memory.py")
