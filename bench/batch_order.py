"""``zoo.train``'s batches by length (``--batch-order by-length``, what every bundled card was trained with) against
plain shuffled batches (``--batch-order random``) on the same data, model, settings and seeds: seconds per epoch, the
best validation NDCG@10 and the test HR@10 / NDCG@10 of each run, and the paired difference per seed (a measurement,
not a test).

By length, the shuffled training windows are taken 50 batches at a time, sorted by length inside that pool, cut into
batches and the batches shuffled (``zoo.data.iterate_batches(..., bucket_by_length=True)``): little padding, but a
batch of 64 windows holds users of similar history length, where RecBole's batch of 2,048 prefixes comes from about
as many random users. Random batches pad each batch to its longest window. Both arms of a seed start from the same
initial weights and differ only in how the windows are grouped (and so in the order the optimiser sees them). Each run
trains a fixed number of epochs (``--patience`` = ``--epochs``: no early stopping) with the learning rate decayed
linearly to 0 over them, validates every epoch and tests the best epoch's weights (full ranking, RecBole protocol).
The window length decides how much the two orders differ: at the cards' 200 items a window is a user's whole history
for most ML-100K users, as on ML-1M, and batching by length groups users of similar activity; at 50, most windows are
full length and the two orders form more alike batches. The two arms of a seed run one after the other, alternating
which goes first.

    python bench/batch_order.py [--models sasrec mamba4rec] [--max-len 200 50] [--seeds 0 1 2] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import HelpFormatter, command_line, markdown_path, scratch_folder, write_table  # noqa: E402
from zoo.cli import EXIT_CODES, EXIT_ERROR, exit_with, positive_float, positive_int, run_cli  # noqa: E402
from zoo.train import BATCH_ORDERS  # noqa: E402

DATA = os.path.join(os.environ.get("ZOO_DATA_DIR", os.path.join(ROOT, "..", "shared", "data")), "ml-100k.inter.gz")
#: the model config each model trains with (``--set``): the ML-1M cards' (hidden 64; SASRec 2 layers with the card's
#: dropout 0.2, Mamba4Rec 1 layer)
MODEL_SETTINGS = {"sasrec": ["hidden_size=64", "num_layers=2", "hidden_dropout=0.2", "attn_dropout=0.2"],
                  "mamba4rec": ["hidden_size=64", "num_layers=1"]}
#: the two arms, the cards' first
ORDERS = BATCH_ORDERS


def run(args, model: str, max_len: int, order: str, seed: int, out: str) -> dict:
    """One ``zoo.train`` run; its per-epoch seconds (training and the epoch's validation), best validation NDCG@10,
    best epoch, test HR@10 / NDCG@10 and the number of test users."""
    from zoo.train import main as train_main

    t0 = time.time()
    log = train_main(["--model", model, "--data", args.data, "--out", out, "--seed", str(seed),
                      "--max-len", str(max_len), "--epochs", str(args.epochs), "--patience", str(args.epochs),
                      "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--lr-schedule", "linear",
                      "--batch-order", order,
                      "--set", *MODEL_SETTINGS[model], "--no-progress", "--threads", str(args.threads)])
    epochs = log["epochs"]
    return {"model": model, "max_len": max_len, "order": order, "seed": seed, "epochs": len(epochs),
            "epoch_s": statistics.mean(e["seconds"] for e in epochs), "wall_s": time.time() - t0,
            "best_epoch": log["best_epoch"], "valid": log["best_valid_NDCG10"], "HR@10": log["test"]["HR@10"],
            "NDCG@10": log["test"]["NDCG@10"], "users": log["dataset"]["users"]}


def spread(values: list[float]) -> str:
    """``+0.0012 (sd 0.0020, -0.0010..+0.0031)``: the mean of paired differences, their standard deviation and range
    (one value: the value alone)."""
    if len(values) < 2:
        return f"{values[0]:+.4f}"
    return (f"{statistics.mean(values):+.4f} (sd {statistics.stdev(values):.4f}, {min(values):+.4f}.."
            f"{max(values):+.4f})")


def tables(args, rows: list[dict], argv) -> list[str]:
    """The results file's lines: the runs, the means per model, window and order, the paired differences per seed."""
    arms = [(m, n) for m in args.models for n in args.max_len]
    lines = [f"Produced by `{command_line('bench/batch_order.py', argv)}` ({time.strftime('%Y-%m-%d')}, cpu, "
             f"{args.threads} thread(s), runs one after the other; torch {torch.__version__}) on "
             f"`{os.path.basename(args.data)}`: each model with the ML-1M cards' config "
             f"({'; '.join(f'{m}: ' + ' '.join(MODEL_SETTINGS[m]) for m in args.models)}), max_seq_length "
             f"(window) {' and '.join(map(str, args.max_len))}, batch {args.batch_size} windows, Adam lr {args.lr:g} "
             f"decayed linearly to 0 over {args.epochs} epochs (no weight decay, no clipping, no early stopping); "
             "validation NDCG@10 every epoch, the best epoch tested (full ranking, RecBole protocol). Seconds per "
             "epoch include the epoch's validation (the same work in both orders).", "",
             "| model | window | batch order | seed | epochs | s/epoch | best epoch | best valid NDCG@10 | "
             "test HR@10 | test NDCG@10 |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]

    def runs(model: str, max_len: int, order: str) -> list[dict]:
        return [r for r in rows if (r["model"], r["max_len"], r["order"]) == (model, max_len, order)]

    for model, max_len in arms:
        for order in ORDERS:
            for r in runs(model, max_len, order):
                lines.append(f"| {model} | {max_len} | {order} | {r['seed']} | {r['epochs']} | {r['epoch_s']:.1f} | "
                             f"{r['best_epoch']} | {r['valid']:.4f} | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} |")
    lines += ["", "| model | window | batch order | mean s/epoch | mean best valid NDCG@10 | mean test HR@10 | "
              "mean test NDCG@10 |", "|---|---:|---|---:|---:|---:|---:|"]
    for model, max_len in arms:
        for order in ORDERS:
            rs = runs(model, max_len, order)
            lines.append(f"| {model} | {max_len} | {order} | {statistics.mean(r['epoch_s'] for r in rs):.1f} | "
                         + " | ".join(f"{statistics.mean(r[k] for r in rs):.4f}" for k in ("valid", "HR@10", "NDCG@10"))
                         + " |")
    lines += ["", "Paired differences, random minus by-length, per seed (the same seed: the same initial weights):", "",
              "| model | window | seed | s/epoch ratio | best valid NDCG@10 | test HR@10 | test NDCG@10 |",
              "|---|---:|---|---:|---:|---:|---:|"]
    for model, max_len in arms:
        by = {(r["order"], r["seed"]): r for o in ORDERS for r in runs(model, max_len, o)}
        diffs: dict[str, list[float]] = {"valid": [], "HR@10": [], "NDCG@10": []}
        ratios = []
        for seed in args.seeds:
            a, b = by[("by-length", seed)], by[("random", seed)]
            ratios.append(b["epoch_s"] / a["epoch_s"])
            for k in diffs:
                diffs[k].append(b[k] - a[k])
            lines.append(f"| {model} | {max_len} | {seed} | {ratios[-1]:.2f}x | "
                         + " | ".join(f"{diffs[k][-1]:+.4f}" for k in diffs) + " |")
        lines.append(f"| {model} | {max_len} | mean (sd, range) | {statistics.mean(ratios):.2f}x | "
                     + " | ".join(spread(diffs[k]) for k in diffs) + " |")
    users = rows[0]["users"]
    hr = statistics.mean(r["HR@10"] for r in rows)
    lines += ["", f"For scale: one run's test HR@10 of about {hr:.3f} over {users:,} test users has a sampling "
              f"standard error of about {math.sqrt(hr * (1 - hr) / users):.4f} (binomial); the two runs of a pair "
              "are tested on the same users, so the spread of the paired differences over the seeds is the noise to "
              "read them against."]
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--data", default=DATA, help="the interaction file every run trains on (default: "
                                                "$ZOO_DATA_DIR/ml-100k.inter.gz)")
    p.add_argument("--models", nargs="+", choices=sorted(MODEL_SETTINGS), default=["sasrec"],
                   help="the models trained, each with both batch orders, every window and every seed")
    p.add_argument("--max-len", type=positive_int, nargs="+", default=[200],
                   help="the models' max_seq_length (training window), one set of runs each")
    p.add_argument("--epochs", type=positive_int, default=20,
                   help="epochs of each run (the learning rate decays to 0 over them; no early stopping)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, a pair of runs each")
    p.add_argument("--batch-size", type=positive_int, default=64, help="windows per batch")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam's learning rate, decayed linearly to 0")
    p.add_argument("--threads", type=positive_int, default=1, help="torch's CPU threads of each run")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    args = p.parse_args(argv)
    for flag, values in (("--seeds", args.seeds), ("--models", args.models), ("--max-len", args.max_len)):
        if len(set(values)) != len(values):
            p.error(f"{flag} {' '.join(map(str, values))}: a value given twice")
    if not os.path.isfile(args.data):
        exit_with(EXIT_ERROR, f"error: --data {args.data}: no such file (set ZOO_DATA_DIR or give --data)")
    rows = []
    with scratch_folder("bench_batch_order_") as tmp:
        for model in args.models:
            for max_len in args.max_len:
                for i, seed in enumerate(args.seeds):
                    for order in (ORDERS if i % 2 == 0 else ORDERS[::-1]):      # alternate which runs first
                        r = run(args, model, max_len, order, seed,
                                os.path.join(tmp, f"{model}-{max_len}-{order}-{seed}"))
                        rows.append(r)
                        print(f"{model} window {max_len} {order} seed {seed}: {r['epochs']} epochs, "
                              f"{r['epoch_s']:.1f} s/epoch, best epoch {r['best_epoch']}, valid NDCG@10 "
                              f"{r['valid']:.4f}, test HR@10 {r['HR@10']:.4f} NDCG@10 {r['NDCG@10']:.4f} "
                              f"({r['wall_s']:.0f} s)", flush=True)
    write_table(tables(args, rows, argv), "Batches by length against random batches (zoo.train --batch-order)",
                args.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/batch_order.py")
