"""Same-day ties in the Amazon sets: how much the order of a user's same-day reviews moves leave-one-out numbers (an
evaluation study, not a test).

Amazon Beauty and Sports have day-resolution timestamps, so a user's last items often share a day and their order is
not in the data: ``--time-ties file`` keeps the file's order (RecBole's stable sort), ``--time-ties item`` sorts them by
item id. The order decides which item is the test (and validation) item, and, within a day, which item "follows"
which. This study reports, per data set:

1. how many users' test item shares its day with the item before it (and how many validation items do);
2. the most-popular and first-order transitions rankings (``zoo.evaluate --baseline pop|markov``) under both orders;
3. the given models (cards or training runs on that data), each evaluated under both orders, RecBole protocol.

    python bench/day_ties.py [--data beauty.inter.gz sports.inter.gz] [--models hub_cards/tim4rec-causal-beauty ...]
                             [--markdown bench/DAY_TIES.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import (  # noqa: E402
    CARDS_DIR, HelpFormatter, card_name, cards_help, command_line, markdown_path, missing_folders, write_table)
from zoo.cli import EXIT_CODES, kcore, positive_int, run_cli  # noqa: E402

DATA_DIR = os.environ.get("ZOO_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))
ORDERS = ("file", "item")


def tie_shares(ds) -> tuple[float, float, int]:
    """``(share of users whose last item shares its timestamp with the one before, the same for the second-to-last
    item, users with >= 3 items)``."""
    test = valid = n = 0
    for t in ds.timestamps:
        if len(t) < 3:
            continue
        n += 1
        test += bool(t[-1] == t[-2])
        valid += bool(t[-2] == t[-3])
    return test / max(n, 1), valid / max(n, 1), n


def model_data(model_dir: str) -> str | None:
    """The data file a card or a training run was measured or trained on (its base name), if it says."""
    for name, key in (("eval_results.json", "data_file"), ("train_log.json", "data")):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                value = json.load(f).get(key)
            if value:
                return os.path.basename(value)
    return None


def model_folder(value: str) -> str:
    """``--models``: a card or run folder as given, or a bundled card named as the zoo names it (``NAME`` or
    ``ssm-rec-zoo/NAME``: its ``hub_cards`` folder); anything else is a usage error listing the cards
    (:func:`bench.benchutil.card_name`)."""
    name = card_name(folders=True)(value)
    return value if os.path.isdir(value) or "/" in name else os.path.join(CARDS_DIR, name)   # name: a card's


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--data", nargs="+", default=["beauty.inter.gz", "sports.inter.gz"],
                   help=f"interaction files (names in $ZOO_DATA_DIR, {DATA_DIR}, or paths)")
    p.add_argument("--models", nargs="*", type=model_folder, default=[], metavar="MODEL",
                   help="card or run folders, or bundled cards (each evaluated on its own data, which must be among "
                        f"--data; default: none, the data's tables only), {cards_help()}")
    p.add_argument("--labels", nargs="*", default=None,
                   help="a table label per --models entry (default: each folder's name)")
    p.add_argument("--kcore", type=kcore, default="auto",
                   help="k-core filter of the data: int, 'none' or 'auto' (zoo.evaluate's --kcore; default auto: 5)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch's CPU threads")
    p.add_argument("--markdown", type=markdown_path,
                   help="also write the tables to this file (default: print them only)")
    args = p.parse_args(argv)
    missing_folders("--models", args.models)
    torch.set_num_threads(args.threads)
    if args.labels is not None and len(args.labels) != len(args.models):
        p.error("--labels needs one label per --models entry")
    names = [os.path.basename(d) for d in args.data]
    trained_on_of = {m: model_data(m) for m in args.models}
    for m, trained_on in trained_on_of.items():     # each model is evaluated on its own data: none here is an error
        if trained_on is None:
            p.error(f"--models {m}: says no data it was measured or trained on (no data_file in eval_results.json, "
                    "no data in train_log.json)")
        if trained_on not in names:
            p.error(f"--models {m}: measured on {trained_on}, which is not among --data ({', '.join(names)})")

    import zoo  # noqa: F401
    from transformers import AutoModel

    from zoo.data import leave_one_out, load_dataset
    from zoo.evaluate import align_with_model, evaluate_baseline, evaluate_model

    labels = args.labels or [os.path.basename(os.path.normpath(m)) for m in args.models]
    lines = [f"Produced by `{command_line('bench/day_ties.py', argv)}` (torch {torch.__version__}, {args.threads} "
             "threads, CPU). Leave-one-out test split, RecBole protocol (full ranking, history not masked, pessimistic "
             "ties); `file`: same-day reviews in the file's order (RecBole's stable sort), `item`: by item id.", ""]
    out: dict = {}
    for data in args.data:
        path = data if os.path.exists(data) else os.path.join(DATA_DIR, data)
        if not os.path.exists(path):
            sys.exit(f"data not found: {path} (set ZOO_DATA_DIR)")
        name = os.path.basename(path)
        loaded = {order: load_dataset(path, kcore=args.kcore, time_ties=order) for order in ORDERS}
        ds = loaded["file"]
        test_share, valid_share, n = tie_shares(ds)
        splits = {order: leave_one_out(loaded[order]) for order in ORDERS}
        moved = float(np.mean(np.asarray(splits["file"].test.targets) != np.asarray(splits["item"].test.targets)))
        res = out[name] = {"test_tied": test_share, "valid_tied": valid_share, "test_item_moved": moved, "rows": {}}
        lines += [f"## {name}", "",
                  f"{n:,} users: the test item shares its day with the item before it for {100 * test_share:.1f}%, the "
                  f"validation item for {100 * valid_share:.1f}%; the two orders give another test item for "
                  f"{100 * moved:.1f}% of the users.", "",
                  "| ranking | HR@10 file | HR@10 item | NDCG@10 file | NDCG@10 item |", "|---|---|---|---|---|"]
        rows = {}
        for kind, label in (("pop", "most popular (`--baseline pop`)"),
                            ("markov", "first-order transitions (`--baseline markov`)")):
            rows[label] = {o: evaluate_baseline(kind, splits[o].train, splits[o].test, loaded[o].n_items + 1,
                                                ks=(10,)) for o in ORDERS}
        for model_dir, label in zip(args.models, labels, strict=True):
            if trained_on_of[model_dir] != name:
                continue
            model = AutoModel.from_pretrained(model_dir).eval()
            rows[label] = {}
            for o in ORDERS:
                aligned, _ = align_with_model(loaded[o], model)
                rows[label][o] = evaluate_model(model, leave_one_out(aligned).test, ks=(10,), progress=False)
            print(f"{label}: done", file=sys.stderr)
        for label, m in rows.items():
            lines.append(f"| {label} | {m['file']['HR@10']:.4f} | {m['item']['HR@10']:.4f} | "
                         f"{m['file']['NDCG@10']:.4f} | {m['item']['NDCG@10']:.4f} |")
        lines.append("")
        res["rows"] = rows
    write_table(lines, "Same-day ties in the Amazon sets", args.markdown)
    return out


if __name__ == "__main__":
    run_cli(main, prog="python bench/day_ties.py")
