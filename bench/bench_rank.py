"""What the rank count of full-ranking evaluation costs (``zoo.metrics.rank_of_target``): the torch count it used on
the CPU (``(scores >= t).sum(1, dtype=int32)`` a few rows at a time, after a whole-matrix NaN check) against the
numpy count it uses now (``np.count_nonzero`` of one row's bool block, a block of ``RANK_BLOCK`` elements at a time,
the NaN check in the same blocks), side by side in one process (a benchmark, not a test).

Random float32 scores ``[batch, catalogue]`` and targets; for each catalogue (``--catalogues``) and torch thread
count (``--threads``: the old count is torch's, which may use them; numpy's count is single-threaded), the two are
timed in turn ``--repeats`` times (the best, ms per batch: the machine's other load only adds) and their ranks
compared (they must be equal, both tie rules). With ``--candidates``, the other counts tried are timed too (same
row chunks as the old count: only the counting differs). The peak memory beyond the scores (Linux VmHWM, MiB) is
that of one call of each.

With ``--top-k K``, ``zoo.metrics.top_k`` instead (the recommendation's top-K with its fixed tie rule): plain
``torch.topk`` (no tie rule), the ``top_k`` before its fast path (``old_top_k``: several ``[B, V]`` masks a call)
and ``top_k`` now (its set from ``torch.topk(K + 1)`` where slot K holds no tie), on the same random float32 scores
(column 0 at ``-inf``, as padding); the old and new ``top_k`` must give bit-identical values and indices. Its table
has a title of its own: give ``--markdown`` another file than the rank count's (the hand-written part of
bench/RESULTS_RANK.md holds the last one).

    python bench/bench_rank.py [--batch 256] [--catalogues 3417 50000 1000000] [--threads 1 2] [--repeats 7]
        [--candidates | --top-k K] [--markdown F]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import (  # noqa: E402
    HelpFormatter, command_line, markdown_path, reset_peak_rss, status_kb, write_table)
from zoo.cli import EXIT_CODES, positive_int, run_cli  # noqa: E402
from zoo.metrics import RANK_BLOCK, RANK_CHUNK_BYTES, _count_true, rank_of_target, top_k  # noqa: E402


def _row_chunks(scores: torch.Tensor, t: torch.Tensor, ties: str, count) -> torch.Tensor:
    """``count(bool comparison chunk) -> [rows]`` over the old count's row chunks (5 bytes an element)."""
    rows = max(1, RANK_CHUNK_BYTES // (5 * max(1, scores.shape[1])))
    cmp = torch.ge if ties == "pessimistic" else torch.gt
    out = [torch.as_tensor(count(cmp(scores[i:i + rows], t[i:i + rows]))).long()
           for i in range(0, scores.shape[0], rows)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def old_rank(scores: torch.Tensor, targets: torch.Tensor, ties: str = "pessimistic", count=None) -> torch.Tensor:
    """The CPU rank count before the numpy path (checks as now; ``count``: another count of a bool chunk)."""
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; cannot rank")
    t = scores.gather(1, targets.long()[:, None])
    counts = _row_chunks(scores, t, ties, count or (lambda c: c.sum(1, dtype=torch.int32)))
    return counts if ties == "pessimistic" else counts + 1


#: the other counts of a bool chunk ``c`` tried (``--candidates``)
CANDIDATES = {
    "torch.count_nonzero(dim=1)": lambda c: torch.count_nonzero(c, dim=1),
    "torch uint8 view .sum(int32)": lambda c: c.view(torch.uint8).sum(1, dtype=torch.int32),
    "np.count_nonzero(axis=1)": lambda c: np.count_nonzero(c.numpy(), axis=1),
    "numpy .sum(1)": lambda c: c.numpy().sum(1),
}


def timed(fn, repeats: int) -> tuple[list[float], torch.Tensor]:
    """``repeats`` wall times (s) of ``fn()`` and its last result."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def peak_mb(fn) -> float:
    """Peak resident memory (MiB) one call of ``fn`` adds to the process (Linux)."""
    before = reset_peak_rss()
    fn()
    return (status_kb("VmHWM") - before) / 1024


def measure(batch: int, n_items: int, threads: int, repeats: int, candidates: bool) -> dict:
    """``{name: (best ms, peak MiB)}`` for the old and the new count (and the candidates), after checking that
    every one gives the new count's ranks for both tie rules."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(n_items)
    scores = torch.randn(batch, n_items, generator=g)
    scores[:, 0] = float("-inf")                                              # padding, as evaluate masks it
    targets = torch.randint(1, n_items, (batch,), generator=g)
    fns = {"old": lambda: old_rank(scores, targets), "new": lambda: rank_of_target(scores, targets)}
    if candidates:
        fns.update({k: (lambda c=c: old_rank(scores, targets, count=c)) for k, c in CANDIDATES.items()})
    for ties in ("pessimistic", "optimistic"):
        want = rank_of_target(scores, targets, ties=ties)
        for name, fn in fns.items():
            got = old_rank(scores, targets, ties, CANDIDATES.get(name)) if name != "new" else want
            if not torch.equal(got, want):
                raise RuntimeError(f"{name} gives other {ties} ranks than rank_of_target at {batch} x {n_items}")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):                                                  # in turn: the same machine load
        for name, fn in fns.items():
            times[name] += timed(fn, 1)[0]
    return {name: (min(times[name]) * 1e3, peak_mb(fn)) for name, fn in fns.items()}


def old_top_k(scores: torch.Tensor, k: int, dim: int = -1):
    """``zoo.metrics.top_k`` before its fast path: the set of every row from ``[R, V]`` masks of the items above and
    tied with the k-th score (row counts by ``zoo.metrics._count_true``, numpy's on the CPU, as it counted them)."""
    moved = scores.movedim(dim, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    thr = flat.topk(k, dim=1).values[:, -1:]
    nan, thr_nan = flat.isnan(), thr.isnan()
    above = (flat > thr) | (nan & ~thr_nan)
    tied = torch.where(thr_nan, nan, flat == thr)
    need = k - _count_true(above)[:, None]
    take = above | tied
    over = _count_true(tied) > need[:, 0]
    if bool(over.any()):
        rows = over.nonzero().squeeze(1)
        take[rows] = above[rows] | (tied[rows] & (tied[rows].cumsum(1) <= need[rows]))
    idx = take.nonzero()[:, 1].view(-1, k)
    sel = flat.gather(1, idx)
    order = torch.sort(sel, dim=1, descending=True, stable=True).indices
    values, indices = sel.gather(1, order), idx.gather(1, order)
    shape = moved.shape[:-1] + (k,)
    return values.view(shape).movedim(-1, dim), indices.view(shape).movedim(-1, dim)


def measure_top_k(batch: int, n_items: int, k: int, threads: int, repeats: int) -> dict:
    """``{name: best ms}`` of ``torch.topk``, the old ``top_k`` and ``top_k`` on random float32 scores ``[batch,
    n_items]`` (column 0 at ``-inf``), timed in turn, after checking that the old and new ``top_k`` agree bit for
    bit (``RuntimeError`` if not)."""
    torch.set_num_threads(threads)
    scores = torch.randn(batch, n_items, generator=torch.Generator().manual_seed(n_items))
    scores[:, 0] = float("-inf")
    fns = {"torch.topk": lambda: torch.topk(scores, k, dim=1), "old": lambda: old_top_k(scores, k),
           "new": lambda: top_k(scores, k)}
    (ov, oi), (nv, ni) = fns["old"](), fns["new"]()
    if not (torch.equal(oi, ni) and torch.equal(ov.view(torch.int32), nv.view(torch.int32))):
        raise RuntimeError(f"top_k differs from the old top_k at {batch} x {n_items}, k={k}")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name] += timed(fn, 1)[0]
    return {name: min(t) * 1e3 for name, t in times.items()}


def main_top_k(a, argv) -> None:
    """The ``--top-k`` table: a row per catalogue and thread count."""
    lines = [f"Produced by `{command_line('bench/bench_rank.py', argv)}` ({time.strftime('%Y-%m-%d')}, cpu: "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}): "
             f"float32 scores [batch, catalogue] (column 0 at -inf), k = {a.top_k}, best of {a.repeats} calls each, "
             "taken in turn. The old and new top_k gave bit-identical values and indices.", "",
             "| batch x catalogue | torch threads | torch.topk, ms | old top_k (masks), ms | new top_k (topk(k+1) fast "
             "path), ms | old / new | new / torch.topk |",
             "|---|---|---|---|---|---|---|"]
    for n_items in a.catalogues:
        for threads in a.threads:
            r = measure_top_k(a.batch, n_items, a.top_k, threads, a.repeats)
            lines.append(f"| {a.batch} x {n_items:,} | {threads} | {r['torch.topk']:.2f} | {r['old']:.2f} | "
                         f"{r['new']:.2f} | {r['old'] / r['new']:.1f}x | {r['new'] / r['torch.topk']:.2f}x |")
            print(lines[-1], flush=True)
    write_table(lines, f"zoo.metrics.top_k: torch.topk vs the old top_k vs its fast path (k = {a.top_k})",
                a.markdown)


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--batch", type=positive_int, default=256, help="users per batch (evaluate_model's batch_size)")
    p.add_argument("--catalogues", type=positive_int, nargs="+", default=[3417, 50_000, 1_000_000],
                   help="items ranked per row (padding included), a row each")
    p.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2], help="torch.set_num_threads values")
    p.add_argument("--repeats", type=positive_int, default=7, help="timed calls of each count (the best is shown)")
    p.add_argument("--candidates", action="store_true", help="also time the other counts tried")
    p.add_argument("--top-k", type=positive_int, metavar="K",
                   help="time zoo.metrics.top_k (k = K) against torch.topk and the old top_k instead of the rank count")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    a = p.parse_args(argv)
    if any(n < 2 for n in a.catalogues):
        p.error("--catalogues need >= 2 items")
    if a.top_k is not None:
        if a.candidates:
            p.error("--candidates and --top-k conflict: --candidates are rank counts")
        if a.top_k >= min(a.catalogues):
            p.error(f"--top-k {a.top_k} needs catalogues of more than {a.top_k} items")
        return main_top_k(a, argv)
    extra = list(CANDIDATES) if a.candidates else []
    lines = [f"Produced by `{command_line('bench/bench_rank.py', argv)}` ({time.strftime('%Y-%m-%d')}, cpu: "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
             f"numpy {np.__version__}; RANK_BLOCK {RANK_BLOCK}): float32 scores [batch, catalogue], best of "
             f"{a.repeats} calls each, taken in turn; peak: memory one call adds beyond the scores. Every count "
             "gave the same ranks (both tie rules).", "",
             "| batch x catalogue | torch threads | old: torch sum(int32), ms / peak MiB | "
             "new: numpy count_nonzero by blocks, ms / peak MiB | speed-up |"
             + "".join(f" {name}, ms |" for name in extra),
             "|---|---|---|---|---|" + "---|" * len(extra)]
    for n_items in a.catalogues:
        for threads in a.threads:
            r = measure(a.batch, n_items, threads, a.repeats, a.candidates)
            lines.append(f"| {a.batch} x {n_items:,} | {threads} | {r['old'][0]:.2f} / {r['old'][1]:.0f} | "
                         f"{r['new'][0]:.2f} / {r['new'][1]:.0f} | {r['old'][0] / r['new'][0]:.1f}x |"
                         + "".join(f" {r[name][0]:.2f} |" for name in extra))
            print(lines[-1], flush=True)
    write_table(lines, "Rank count of full-ranking evaluation: old torch count vs numpy count", a.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/bench_rank.py")
