"""How much the order of same-second ratings moves ML-1M's leave-one-out numbers (an evaluation study, not a test).

ML-1M users rate many movies within the same second. ``ml-1m.5core.seq.gz`` (the data of our ML-1M cards, and of
LRURec's protocol) orders such ties by item id; RecBole keeps the source file's order (``ratings.dat``) -- and not only
for same-second ties: it sorts by the timestamps *as float32* (64-second steps around 1e9 s; shown by
``bench/recbole_reference.py order-probe``), so every rating within one float32 step of another keeps the file order.
``ml-1m.users0001-2999.inter.gz`` still has the real timestamps but keeps the source order only among same-second
ratings, so RecBole's exact order cannot be rebuilt from it; the "source file" order here applies the file order to
same-second ties only (and the statistics say how many users' last items fall in a shared float32 step). This study
uses users 1-2999:

1. how often the last (test) and second-to-last (valid) item differ between the two tie orders;
2. every bundled ML-1M model (trained on the item-id order) evaluated on the same 2,999 users with both orders
   (items outside the model's vocabulary dropped, as the 5-core filter did), RecBole protocol (history not masked)
   and LRURec's (window masked).

    python bench/eval_tie_order.py [--models mamba4rec-ml1m sasrec-ml1m gru4rec-ml1m lrurec-ml1m]
                                   [--data ../shared/data/ml-1m.users0001-2999.inter.gz] [--markdown bench/TIE_ORDER.md]
    python bench/eval_tie_order.py --write-seq DIR     # the two orders as .seq files, to train a model on each

``--write-seq DIR`` writes ``u2999-item.seq.gz`` and ``u2999-file.seq.gz``: the ratings of the data's users restricted
to the items of ``ml-1m.5core.seq.gz`` (as the 5-core filter left them), same-second ties by item id (these sequences
equal the 5-core file's for those users) and in file order. Keep them outside the project (the data's terms).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import io
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import zoo  # noqa: E402,F401
from benchutil import (HelpFormatter, card_name, cards_help, command_line, markdown_path,  # noqa: E402
                       missing_folders, write_markdown)
from transformers import AutoModel  # noqa: E402
from zoo.data.readers import read_interactions  # noqa: E402
from zoo.data.split import TIME_TIES, EvalExamples, load_dataset  # noqa: E402
from zoo.cli import EXIT_CODES, EXIT_ERROR, exit_with, run_cli  # noqa: E402
from zoo.evaluate import evaluate_model  # noqa: E402

ORDERS = {"item id (ml-1m.5core.seq, LRURec)": lambda e: (e[0], e[2]),
          "source file on same-second ties (~RecBole)": lambda e: (e[0], e[1])}


def events_by_user(path: str) -> dict:
    """user -> [(timestamp, row in file, item)] from an interaction file with timestamps."""
    inter = read_interactions(path)
    if inter.timestamp is None:
        raise SystemExit(f"{path} has no timestamps: the tie order cannot be rebuilt")
    by = collections.defaultdict(list)
    for j, (u, i, t) in enumerate(zip(inter.user.tolist(), inter.item.tolist(), inter.timestamp.tolist(), strict=True)):
        by[u].append((float(t), j, i))
    return by


def tie_stats(by: dict) -> dict:
    n = len(by)
    last = [sorted(ev, key=ORDERS[k]) for ev in by.values() for k in ORDERS]
    a, b = last[0::2], last[1::2]
    f32 = [np.float32([e[0] for e in ev]) for ev in a]
    return {"users": n,
            "last two in the same second": sum(ev[-1][0] == ev[-2][0] for ev in a) / n,
            "test item shares its float32 step": sum(int((t == t[-1]).sum()) > 1 for t in f32) / n,
            "valid item shares its second": sum(sum(e[0] == ev[-2][0] for e in ev) > 1 for ev in a) / n,
            "valid item shares its float32 step": sum(int((t == t[-2]).sum()) > 1 for t in f32) / n,
            "test item differs": sum(x[-1][2] != y[-1][2] for x, y in zip(a, b, strict=True)) / n,
            "valid item differs": sum(x[-2][2] != y[-2][2] for x, y in zip(a, b, strict=True)) / n}


def examples(by: dict, vocab, key) -> EvalExamples:
    H, T, U = [], [], []
    for u, ev in by.items():
        ev = sorted((e for e in ev if e[2] in vocab), key=key)
        if len(ev) < 3:
            continue
        ids = vocab.encode([e[2] for e in ev])
        H.append(np.asarray(ids[:-1], dtype=np.int64))
        T.append(ids[-1])
        U.append(u)
    return EvalExamples(H, np.asarray(T, dtype=np.int64), U)


def write_seq(path: str, out_dir: str) -> list[str]:
    """The users of ``path`` restricted to the 5-core's items, in each order of ties, as ``.seq.gz`` files."""
    five = load_dataset(os.path.join(os.path.dirname(path), "ml-1m.5core.seq.gz"))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for ties in TIME_TIES:
        ds = load_dataset(path, kcore=None, time_ties=ties).reencode(five.vocab, unknown="drop")
        out = os.path.join(out_dir, f"u2999-{ties}.seq.gz")
        with gzip.open(out, "wt") as f:
            f.write("user_id\titem_ids_chronological\n")
            for u, s in zip(ds.users, ds.sequences, strict=True):
                f.write(f"{u}\t{' '.join(map(str, ds.vocab.decode(s)))}\n")
        print(f"wrote {out}: {ds.n_users:,} users, {ds.n_items:,} items, {ds.n_interactions:,} interactions "
              f"(same-second ties: {ties} order)")
        written.append(out)
    return written


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--models", nargs="+", type=card_name(folders=True), metavar="MODEL",
                   default=["mamba4rec-ml1m", "sasrec-ml1m", "gru4rec-ml1m", "lrurec-ml1m"],
                   help=f"model folders (e.g. training runs on ML-1M) or bundled cards, {cards_help()}")
    p.add_argument("--data", default=os.path.join(os.environ.get("ZOO_DATA_DIR", os.path.join(ROOT, "..", "shared",
                                                                                          "data")),
                                                  "ml-1m.users0001-2999.inter.gz"),
                   help="ML-1M ratings with real timestamps (default: $ZOO_DATA_DIR/ml-1m.users0001-2999.inter.gz)")
    p.add_argument("--markdown", type=markdown_path, default=None,
                   help="also write the tables to this file (default: print them only)")
    p.add_argument("--stats-only", action="store_true", help="print the tie statistics and stop (no models)")
    p.add_argument("--write-seq", metavar="DIR", help="write the two orders as .seq files into DIR and stop")
    args = p.parse_args(argv)
    missing_folders("--models", args.models)
    if not os.path.isfile(args.data):                  # before --write-seq makes its folder, or any work
        exit_with(EXIT_ERROR, f"error: --data {args.data}: no such file (set ZOO_DATA_DIR or pass --data)")
    if args.write_seq:
        return write_seq(args.data, args.write_seq)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    by = events_by_user(args.data)
    st = tie_stats(by)
    lines = [f"Users {st['users']:,}: the last two ratings share a second for {st['last two in the same second']:.1%}; "
             f"the test item differs between the two tie orders for {st['test item differs']:.1%} of users, the "
             f"validation item for {st['valid item differs']:.1%}. RecBole compares float32 timestamps (64-s steps): "
             f"the test item shares its float32 timestamp with another rating for "
             f"{st['test item shares its float32 step']:.1%} of users (its exact second for "
             f"{st['last two in the same second']:.1%}), the validation item for "
             f"{st['valid item shares its float32 step']:.1%} ({st['valid item shares its second']:.1%}); there "
             "RecBole's order is the file's, which this file does not keep across seconds.", "",
             "| model | test tie order | HR@10 | NDCG@10 | MRR@10 | masked HR@10 | "
             "masked NDCG@10 |", "|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    if args.stats_only:
        return
    for name in args.models:
        path = name if os.path.isdir(name) else os.path.join(ROOT, "hub_cards", name)   # a card name or a folder
        model = AutoModel.from_pretrained(path).eval()
        for order, key in ORDERS.items():
            ex = examples(by, model.item_vocab, key)
            m = evaluate_model(model, ex, ks=(10,), progress=False)
            mm = evaluate_model(model, ex, ks=(10,), exclude_history=True, progress=False)
            row = (f"| {name} | {order} | {m['HR@10']:.4f} | {m['NDCG@10']:.4f} | {m['MRR@10']:.4f} | "
                   f"{mm['HR@10']:.4f} | {mm['NDCG@10']:.4f} |")
            lines.append(row)
            print(row, flush=True)
    md = "\n".join(lines) + "\n"
    if args.markdown:
        f = io.StringIO()
        f.write("# ML-1M: the order of same-second ratings and the leave-one-out numbers\n\n")
        f.write(f"Produced by `{command_line('bench/eval_tie_order.py', argv)}` "
                f"({time.strftime('%Y-%m-%d')}, {time.perf_counter() - t0:.0f} s) on "
                f"`{os.path.basename(args.data)}` (real timestamps, source order kept on ties): its users, "
                "leave-one-out (last item = test), full ranking; items outside a model's vocabulary dropped.\n\n")
        f.write(md)
        write_markdown(args.markdown, f.getvalue())


if __name__ == "__main__":
    run_cli(main, prog="python bench/eval_tie_order.py")
