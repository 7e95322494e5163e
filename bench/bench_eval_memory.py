"""What full-ranking evaluation (``zoo.evaluate``, and ``zoo.train``'s validation) costs as the catalogue grows, and
what ``--window all`` costs as one user's history grows: time and peak memory, side by side in one run (a benchmark,
not a test).

Mamba4Rec in the bundled card's configuration (``hub_cards/mamba4rec-ml1m/config.json``), random weights and
histories. Every measurement runs in a fresh interpreter, so that its peak resident set is its own (Linux; what the
allocator keeps counts).

The catalogue table: the item table resized to each catalogue (``--catalogues``); ``--batch`` users of ``--seq-len``
items, as ``evaluate_model`` scores them (``batch_size`` 256 by default); best of 2:

* ``evaluate_model`` on one batch: the model's ``[batch, catalogue]`` scores and the ranks of the targets;
* the rank count alone on those scores, by ``zoo.metrics.rank_of_target`` (on the CPU: numpy over blocks of
  ``zoo.metrics.RANK_BLOCK`` = 2^16 score elements, one bool block reused, so its memory is bounded whatever the
  catalogue), and by the whole-matrix torch count it replaced (``(scores >= target).sum(1)``, which makes an int64
  copy of the ``[batch, catalogue]`` comparison).

The ``--window all`` table: one user of ``--long-histories`` items (the card's catalogue, 3,417 rows), scored by
``evaluate_model(max_len="all")`` both ways: in one forward over the whole history (the path before 2026-12-07, and
still that of models without an exact step, e.g. SSD4Rec: ``zoo.evaluate.STEP_CHUNK_TOKENS`` set above the history),
and fed ``STEP_CHUNK_TOKENS`` (2^16) items at a time through ``step`` (Mamba4Rec, LRURec, GRU4Rec, TiM4Rec-causal);
both give the same rank. One timed run after a short warm-up. The one-forward path grows with the history (about 5.5
KiB an item here), so it is run only where the previous row's per-item peak says it fits in ``--one-forward-limit-mb``.

    python bench/bench_eval_memory.py [--catalogues 3417 100001 1000001] [--batch 256]
        [--long-histories 100000 1000000] [--one-forward-limit-mb 3072] [--markdown F]

(``bench/RESULTS_EVAL_MEMORY.md`` was made with ``--long-histories 100000 1000000``; without it, the catalogue
table only.)
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
#: the ``--window all`` measurements: one forward over the whole history, and chunks through ``step``
LONG = ("all-one-forward", "all-chunked")


def whole_matrix_rank(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The whole-matrix torch count that ``rank_of_target`` replaced (pessimistic ties), for comparison."""
    t = scores.gather(1, targets[:, None])
    return (scores >= t).sum(1).long()


def measure_long(what: str, length: int) -> dict:
    """``{"seconds", "peak_mb", "rank"}`` of ``evaluate_model(max_len="all")`` on one user of ``length`` items in this
    interpreter: ``what`` ``"all-one-forward"`` (one forward) or ``"all-chunked"`` (through ``step``); one timed run
    after a warm-up on a 2-item history."""
    import numpy as np

    import zoo.evaluate as ev
    from zoo.models import get_model_class

    torch.set_num_threads(1)
    cfg_cls, model_cls = get_model_class("mamba4rec")
    torch.manual_seed(0)
    model = model_cls(cfg_cls(**card_config(CARD))).eval()
    n_items = int(model.config.n_items)
    if what == "all-one-forward":
        ev.STEP_CHUNK_TOKENS = length + 1                 # above the history: the one forward of other models
    hist = np.random.default_rng(1).integers(1, n_items, length)
    ev.evaluate_model(model, ev.EvalExamples([hist[:2]], np.array([1]), ["w"]), ks=(10,), progress=False,
                      max_len="all")                                                              # warm
    ex = ev.EvalExamples([hist], np.array([1]), ["u"])
    before = reset_peak_rss()
    t = time.perf_counter()
    _, ranks = ev.evaluate_model(model, ex, ks=(10,), progress=False, max_len="all", return_ranks=True)
    return {"seconds": time.perf_counter() - t, "peak_mb": (status_kb("VmHWM") - before) / 1024,
            "rank": int(ranks[0])}


def measure(what: str, n_items: int, batch: int, seq_len: int) -> dict:
    """``{"seconds", "peak_mb"}`` of one ``what`` in this interpreter (best of 2 for the time; the peak of both)."""
    if what in LONG:
        return measure_long(what, n_items)
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
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--catalogues", type=positive_int, nargs="+", default=[3417, 100_001, 1_000_001],
                   help="item table rows (padding included), a row each")
    p.add_argument("--batch", type=positive_int, default=256, help="users per batch (evaluate_model's batch_size)")
    p.add_argument("--seq-len", type=positive_int, default=50, help="items per history")
    p.add_argument("--long-histories", type=positive_int, nargs="+", default=[], metavar="ITEMS",
                   help="history lengths of the --window all table, a row each, ascending, e.g. 100000 1000000 "
                        "(default: none, no such table)")
    p.add_argument("--one-forward-limit-mb", type=positive_int, default=3072,
                   help="run the one-forward path of a --window all row only where the previous row's peak per "
                        "item says it stays under this many MiB")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    p.add_argument("--measure", nargs=2, metavar=("WHAT", "ITEMS"), help=argparse.SUPPRESS)   # the per-row process
    a = p.parse_args(argv)
    if a.measure:
        print(json.dumps(measure(a.measure[0], int(a.measure[1]), a.batch, a.seq_len)))
        return
    if any(n < 2 for n in a.catalogues) or a.batch < 1 or a.seq_len < 1:
        p.error("--catalogues need >= 2 rows, --batch and --seq-len >= 1")
    if a.long_histories != sorted(a.long_histories):
        p.error("--long-histories must ascend (each row's one-forward peak is estimated from the one before)")
    machine = (f"cpu, one thread, on a loaded 2-core box (other jobs running: times are rough, peaks are this "
               f"process's own); torch {torch.__version__}, {platform.processor() or platform.machine()}")
    lines = [f"Produced by `{command_line('bench/bench_eval_memory.py', argv)}` ({time.strftime('%Y-%m-%d')}, "
             f"{machine}).", "",
             f"One batch of {a.batch} users ({a.seq_len}-item histories), each cell in a fresh interpreter, best of 2. "
             "The rank count by `zoo.metrics.rank_of_target` goes with numpy over blocks of `RANK_BLOCK` = 2^16 "
             "score elements on the CPU; the whole-matrix count is the torch `(scores >= target).sum(1)` it "
             "replaced.", "",
             "| catalogue (item rows) | scores [batch, catalogue] (MiB) | evaluate_model: ms per user | "
             "evaluate_model: peak memory (MiB) | rank count, rank_of_target (numpy blocks): ms / peak MiB | "
             "rank count, whole matrix (torch): ms / peak MiB |",
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
    if a.long_histories:
        lines += ["", "## `--window all`: one user's whole history, one forward vs chunks through `step`", "",
                  "`evaluate_model(max_len=\"all\")` on one user (catalogue 3,417), each cell in a fresh "
                  "interpreter, one timed run after a warm-up. One forward: the whole history at once (the path "
                  "before 2026-12-07; still that of SSD4Rec, which has no exact step). Chunked: "
                  "`zoo.evaluate.STEP_CHUNK_TOKENS` = 2^16 items at a time through `step` (Mamba4Rec, LRURec, "
                  "GRU4Rec, TiM4Rec-causal). Same rank both ways.", "",
                  "| history (items) | one forward: s / peak MiB | chunked through step: s / peak MiB | "
                  "same rank |", "|---|---|---|---|"]
        per_item = None                                     # MiB an item of the one forward, from the row before
        for length in a.long_histories:
            chunked = json.loads(fresh_run(__file__, ["--measure", "all-chunked", length]))
            if per_item is None or per_item * length <= a.one_forward_limit_mb:
                one = json.loads(fresh_run(__file__, ["--measure", "all-one-forward", length]))
                per_item = one["peak_mb"] / length
                one_cell, same = f"{one['seconds']:.1f} / {one['peak_mb']:.0f}", str(one["rank"] == chunked["rank"])
            else:
                one_cell = f"not run: ~{per_item * length:,.0f} MiB by the row above (over {a.one_forward_limit_mb:,})"
                same = "–"
            lines.append(f"| {length:,} | {one_cell} | {chunked['seconds']:.1f} / {chunked['peak_mb']:.0f} | {same} |")
    write_table(lines, "Full-ranking evaluation as the catalogue grows, and --window all as the history grows: "
                "time and peak memory", a.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/bench_eval_memory.py")
