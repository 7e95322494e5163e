"""Leave-one-out against a global temporal split on the benchmarks with timestamps: how much of the future
leave-one-out trains on, and what the rankings without a model (most popular, first-order transitions) score under
each (a measurement, not a test).

Leave-one-out holds out each user's last two items, whenever they happened: a test target of 2001 is predicted by a
model trained on other users' interactions of 2003. The temporal split (``zoo.data.temporal_split``) cuts one
timeline: the last ``--test-share`` of all interactions is the test period, the ``--valid-share`` before it
validation, and only what came before is trained on.

    python bench/temporal_split.py [--data ml-100k.inter.gz beauty.inter.gz ...] [--test-share 0.1] [--valid-share 0.1] [--markdown bench/RESULTS_TEMPORAL_SPLIT.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import HelpFormatter, command_line, markdown_path, write_table  # noqa: E402
from zoo.cli import EXIT_CODES, run_cli  # noqa: E402

DATA_DIR = os.environ.get("ZOO_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))
DATA = ["ml-100k.inter.gz", "ml-1m.users0001-2999.inter.gz", "beauty.inter.gz", "sports.inter.gz"]


def future_share(split) -> float:
    """Mean over the test users of the share of all training interactions that happened after the user's test
    target (0 under a temporal split: nothing after the cuts is trained on)."""
    train_ts = np.sort(np.concatenate([t for t in split.train_timestamps if len(t)]))
    later = len(train_ts) - np.searchsorted(train_ts, split.test.target_timestamps, side="right")
    return float(np.mean(later / len(train_ts)))


def share(value: str) -> float:
    """``--test-share`` / ``--valid-share``: a fraction strictly between 0 and 1; anything else is a usage error."""
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not 0 < x < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {value!r}")
    return x


def main(argv=None) -> None:
    from zoo.data import leave_one_out, load_dataset, temporal_cuts, temporal_split
    from zoo.evaluate import evaluate_baseline

    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--data", nargs="+", default=DATA, help="files in $ZOO_DATA_DIR (or paths)")
    p.add_argument("--test-share", type=share, default=0.1,
                   help="share of all interactions, the last ones, in the test period (0 < share < 1)")
    p.add_argument("--valid-share", type=share, default=0.1,
                   help="share of all interactions, those just before the test period, in validation (0 < share < 1)")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    args = p.parse_args(argv)
    if args.test_share + args.valid_share >= 1:
        p.error(f"--test-share {args.test_share:g} + --valid-share {args.valid_share:g} must be < 1 (something must "
                "be left to train on)")
    lines = [f"Produced by `{command_line('bench/temporal_split.py', argv)}` ({time.strftime('%Y-%m-%d')}): each file "
             "5-core filtered (as the cards), full ranking, RecBole protocol (history not masked), test users. "
             f"Temporal: the last {args.test_share:g} of the interactions is the test period, the {args.valid_share:g} "
             "before it validation; a user is tested on their first item of the test period, from everything before "
             "it.", "",
             "| data | split | test users | training interactions | training interactions after the test target "
             "(mean share) | pop HR@10 | pop NDCG@10 | transitions HR@10 | transitions NDCG@10 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in args.data:
        path = name if os.path.exists(name) else os.path.join(DATA_DIR, name)
        if not os.path.exists(path):
            sys.exit(f"data not found: {path} (set ZOO_DATA_DIR)")
        ds = load_dataset(path)
        valid_from, test_from = temporal_cuts(ds, args.test_share, args.valid_share)
        for label, split in (("leave-one-out", leave_one_out(ds)),
                             ("temporal", temporal_split(ds, test_from, valid_from))):
            n_items = ds.vocab.n_items
            pop = evaluate_baseline("pop", split.train, split.test, n_items, ks=(10,))
            markov = evaluate_baseline("markov", split.train, split.test, n_items, ks=(10,))
            lines.append(f"| {os.path.basename(path)} | {label} | {len(split.test):,} | "
                         f"{sum(len(s) for s in split.train):,} | {future_share(split):.3f} | {pop['HR@10']:.4f} | "
                         f"{pop['NDCG@10']:.4f} | {markov['HR@10']:.4f} | {markov['NDCG@10']:.4f} |")
            print(lines[-1], flush=True)
    write_table(lines, "Leave-one-out against a global temporal split", args.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/temporal_split.py")
