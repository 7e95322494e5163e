"""What the full cross-entropy and sampled softmax (``zoo.train --loss sampled-softmax``) cost one training step as
the catalogue grows: time and memory, side by side in one run (a benchmark, not a test).

Mamba4Rec in the bundled card's configuration (``hub_cards/mamba4rec-ml1m/config.json``) with its item table resized
to each catalogue (``--catalogues``; ML-1M has 3,417 rows), random items; every position of ``--batch`` windows of
``--seq-len`` items is a target, as ``zoo.train`` trains it. Rows: the full cross-entropy, then sampled softmax with
each ``--negatives`` count (uniform proposal; the popularity proposal costs the same), each with the dense item
gradient and Adam (the default) and with ``zoo.train --sparse-item-grad`` (sparse item gradient, lazy Adam on the
item table: ``torch.optim.SparseAdam``).

    python bench/bench_sampled_softmax.py [--catalogues 3417 100001 1000001] [--negatives 256 1024] [--markdown F]

Columns, one thread, best of ``--repeats`` after a warm-up, the losses alternating within every repeat:

* forward + backward (ms);
* the optimizer step (ms). PyTorch's embedding gradient is dense by default, so Adam updates every row of the item
  table whatever the loss: sampled softmax alone does not make this part cheaper, and on a large catalogue it becomes
  the cost left. With the sparse gradient only the rows the batch read are updated;
* the step's total per target (ms), and its ratio to the full cross-entropy's on the same catalogue;
* the memory one forward + backward adds (MiB): the growth of the peak resident set in a fresh interpreter (Linux;
  approximate, what the allocator keeps counts). The full cross-entropy's logits alone are ``targets x catalogue x 4``
  bytes, and their gradient as much again.
"""

from __future__ import annotations

import argparse
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


def build(n_items: int):
    """Mamba4Rec with the card's config and ``n_items`` item rows, random weights, in training mode."""
    import zoo  # noqa: F401  (registers the models)
    from zoo.models import get_model_class

    cfg_cls, model_cls = get_model_class("mamba4rec")
    fields = {**card_config(CARD), "n_items": n_items}
    torch.manual_seed(0)
    return model_cls(cfg_cls(**fields)).train()


def batch(n_items: int, n_windows: int, seq_len: int):
    """``(ids, mask, labels)``: random windows whose every position is a target."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, n_items, (n_windows, seq_len), generator=g)
    labels = torch.randint(1, n_items, (n_windows, seq_len), generator=g)
    return ids, torch.ones(n_windows, seq_len, dtype=torch.bool), labels


def sampler(n_items: int, negatives: int | None):
    """The uniform :class:`~zoo.losses.NegativeSampler` of a row, None for the full cross-entropy."""
    from zoo.losses import NegativeSampler

    return None if negatives is None else NegativeSampler(n_items, negatives, "uniform")


def optimizer(model, sparse: bool):
    """Adam, or (``sparse``) Adam + lazy Adam on the item table with the table's gradient made sparse, as
    ``zoo.train --sparse-item-grad`` sets them up."""
    from zoo.train import make_optimizer

    model.set_sparse_item_grad(sparse)
    return make_optimizer(model, "adam", 1e-3, 0.0, sparse_items=sparse)


def forward_backward(model, inputs, neg_sampler) -> None:
    ids, mask, labels = inputs
    negatives = neg_sampler.sample() if neg_sampler is not None else None
    model(ids, mask, labels=labels, negatives=negatives).loss.backward()


def step_memory_mb(n_items: int, negatives: int | None, sparse: bool, n_windows: int, seq_len: int) -> float:
    """MiB one forward + backward adds to the process: peak resident set growth (Linux)."""
    model, inputs, s = build(n_items), batch(n_items, n_windows, seq_len), sampler(n_items, negatives)
    optimizer(model, sparse)
    before = reset_peak_rss()
    forward_backward(model, inputs, s)
    return (status_kb("VmHWM") - before) / 1024


def ratio(x: float) -> str:
    """``0.56x``; below 0.1 with three decimals (``0.003x``), so that a small ratio does not print as 0."""
    return f"{x:.2f}x" if x >= 0.1 else f"{x:.3f}x"


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--catalogues", type=positive_int, nargs="+", default=[3417, 100_001, 1_000_001],
                   help="item table rows (padding included), a row each")
    p.add_argument("--negatives", type=positive_int, nargs="+", default=[256, 1024],
                   help="sampled negatives of the sampled-softmax rows, a row each")
    p.add_argument("--batch", type=positive_int, default=8, help="windows per step")
    p.add_argument("--seq-len", type=positive_int, default=50, help="items per window (every one a target)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed steps per row (the best is kept)")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    p.add_argument("--memory-of", type=int, nargs=3, metavar=("ITEMS", "NEGATIVES", "SPARSE"),
                   help=argparse.SUPPRESS)                           # the per-row subprocess (0 = full CE; 1 = sparse)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.memory_of:
        items, neg, sparse = a.memory_of
        print(step_memory_mb(items, neg or None, bool(sparse), a.batch, a.seq_len))
        return
    if any(n < 2 for n in a.catalogues) or any(k < 1 for k in a.negatives):
        p.error("--catalogues need >= 2 rows and --negatives >= 1")
    targets = a.batch * a.seq_len
    lines = [f"Produced by `{command_line('bench/bench_sampled_softmax.py', argv)}` ({time.strftime('%Y-%m-%d')}, "
             f"cpu, one thread; torch {torch.__version__}, {platform.processor() or platform.machine()}): Mamba4Rec "
             f"({CARD}'s config, the item table resized), one training step on {a.batch} windows of {a.seq_len} items "
             f"({targets:,} targets), best of {a.repeats} after a warm-up, the losses alternating.", "",
             "| catalogue (item rows) | loss | item gradient, optimizer | forward + backward (ms) | "
             "optimizer step (ms) | ms per target | "
             "step vs full CE | memory added by forward + backward (MiB) | full-CE logits (MiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n_items in a.catalogues:
        rows = []
        for neg, sparse in [(None, False), *((k, sp) for k in a.negatives for sp in (False, True))]:
            model = build(n_items)
            rows.append({"neg": neg, "sparse": sparse, "model": model, "opt": optimizer(model, sparse),
                         "sampler": sampler(n_items, neg), "fb": float("inf"), "opt_s": float("inf")})
        inputs = batch(n_items, a.batch, a.seq_len)
        for rep in range(a.repeats + 1):                 # rep 0: warm-up (and the optimizer's first, allocating, step)
            for r in rows:
                t = time.perf_counter()
                forward_backward(r["model"], inputs, r["sampler"])
                t1 = time.perf_counter()
                r["opt"].step()
                t2 = time.perf_counter()
                r["opt"].zero_grad(set_to_none=True)             # as zoo.train does
                if rep:
                    r["fb"], r["opt_s"] = min(r["fb"], t1 - t), min(r["opt_s"], t2 - t1)
        full_step = rows[0]["fb"] + rows[0]["opt_s"]
        for r in rows:
            memory = float(fresh_run(__file__, ["--memory-of", n_items, r["neg"] or 0, int(r["sparse"]),
                                                "--batch", a.batch, "--seq-len", a.seq_len]))
            total = r["fb"] + r["opt_s"]
            loss = "full cross-entropy" if r["neg"] is None else f"sampled softmax, {r['neg']} negatives"
            grad = "sparse, lazy Adam on the table" if r["sparse"] else "dense, Adam"
            lines.append(f"| {n_items:,} | {loss} | {grad} | {r['fb'] * 1e3:.1f} | {r['opt_s'] * 1e3:.1f} | "
                         f"{total * 1e3 / targets:.3f} | {ratio(total / full_step)} | {memory:.0f} | "
                         f"{targets * n_items * 4 / 2**20:.0f} |")
    write_table(lines, "Full cross-entropy vs sampled softmax: one training step as the catalogue grows", a.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/bench_sampled_softmax.py")
