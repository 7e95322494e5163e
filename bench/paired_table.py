"""Which differences between the bundled ML-1M models the test set resolves: the README's paired-comparison table,
measured again from the cards as they are now (a measurement, not a test).

Each card in the pairs is evaluated once per protocol with ``python -m zoo.evaluate --model hub_cards/<name> --data
ML1M [--exclude-history] --ranks-out <name>.<protocol>.csv`` (the same code path as the card's own numbers), then each
pair with ``python -m zoo.compare`` (paired bootstrap over the test users, 10,000 resamples, seed 0). It prints a
markdown table of ``a - b`` with its 95% interval and p; ``--update README.md`` replaces the README's table (between
``<!-- paired-table:begin -->`` and ``<!-- paired-table:end -->``) with it, so that the table is never older than
the cards it names when this is re-run after a re-card. The line above the table records the command that made it;
an ``--update`` whose ``--pairs`` would drop rows the table has is refused (exit 2, naming them) unless
``--replace-table`` says so.

    python bench/paired_table.py [--data ../shared/data/ml-1m.5core.seq.gz] [--ranks-dir DIR] [--update README.md]
                                 [--pairs lrurec:mamba4rec-ml1m:sasrec-ml1m ...]

A pair is ``PROTOCOL:A:B`` (``lrurec`` = history masked, ``recbole`` = not), ``A`` and ``B`` card folders under
``--cards``; each is evaluated with the data options (k-core, order of ties) its ``eval_results.json`` records. The
ranks files are kept in ``--ranks-dir`` (default: a temporary folder) and re-used when they are of the same ``--data``
and newer than the card's weights.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import shlex
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.benchutil import HelpFormatter, command_line  # noqa: E402
from zoo.cli import EXIT_CODES, EXIT_ERROR, cannot, exit_with, positive_int, run_cli, written_whole  # noqa: E402
from zoo.compare import compare, read_ranks  # noqa: E402
from zoo.evaluate import main as evaluate_main  # noqa: E402
from zoo.hub import data_flags, run_data_options  # noqa: E402

BEGIN, END = "<!-- paired-table:begin -->", "<!-- paired-table:end -->"
PROTOCOLS = ("lrurec", "recbole")
DEFAULT_PAIRS = (
    "lrurec:mamba4rec-ml1m:sasrec-ml1m",
    "lrurec:mamba4rec-ml1m:lrurec-ml1m",
    "lrurec:sasrec-ml1m:lrurec-ml1m",
    "lrurec:lrurec-ml1m:gru4rec-ml1m",
    "lrurec:gru4rec-ml1m:bert4rec-ml1m",
    "recbole:mamba4rec-ml1m:sasrec-ml1m",
    "recbole:mamba4rec-ml1m:lrurec-ml1m",
    "recbole:sasrec-ml1m:lrurec-ml1m",
    "recbole:lrurec-ml1m:gru4rec-ml1m",
)
METRICS = ("HR@10", "NDCG@10")


def parse_pair(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in PROTOCOLS or not parts[1] or not parts[2]:
        raise argparse.ArgumentTypeError(f"{text!r}: a pair is PROTOCOL:A:B with PROTOCOL one of {PROTOCOLS}")
    return parts[0], parts[1], parts[2]


def ranks_file(card: str, protocol: str, cards: str, data: str, ranks_dir: str) -> str:
    """The ``--ranks-out`` file of ``card`` under ``protocol``, evaluated now unless a newer one is there."""
    folder = os.path.join(cards, card)
    weights = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(weights):
        raise SystemExit(f"error: {folder}: no model.safetensors (not a card folder)")
    out = os.path.join(ranks_dir, f"{card}.{protocol}.csv")
    if (os.path.isfile(out) and os.path.getmtime(out) > os.path.getmtime(weights)
            and read_ranks(out)[0].get("data") == os.path.abspath(data)):
        return out
    # the data loaded as the card's own numbers were (its k-core and order of ties, from eval_results.json)
    results = os.path.join(folder, "eval_results.json")
    options = {}
    if os.path.isfile(results):
        with open(results, encoding="utf-8") as f:
            options = json.load(f)
    argv = ["--model", folder, "--data", data, "--ranks-out", out, "--no-progress",
            *shlex.split(data_flags(run_data_options(options)))]
    if protocol == "lrurec":
        argv.append("--exclude-history")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluate_main(argv)
    print(f"[paired] evaluated {card} ({protocol} protocol) -> {out}", file=sys.stderr)
    return out


def signed(x: float) -> str:
    """``+0.0065`` / ``−0.0007`` (the README's minus sign)."""
    return f"{x:+.4f}".replace("-", "\u2212")


def fmt_p(p: float, n_boot: int) -> str:
    """``<1e-4`` below the bootstrap's resolution (``1 / n_boot``), else two significant digits (``0.0002``,
    ``0.004``, ``0.44``); never ``0.000``."""
    floor = 1.0 / n_boot
    if p < floor:
        return f"<{floor:.0e}".replace("e-0", "e-")
    return f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def row_name(protocol: str, a: str, b: str) -> str:
    """The first two cells of a pair's row, ``mamba4rec − sasrec | LRURec`` (what tells the rows of a table apart)."""
    return f"{a.removesuffix('-ml1m')} − {b.removesuffix('-ml1m')} | {'LRURec' if protocol == 'lrurec' else 'RecBole'}"


def table_rows(block: str) -> list[str]:
    """The :func:`row_name` of each row of the table in ``block`` (the text between the markers), in its order."""
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines()
             if line.startswith("| ") and not line.startswith("| a − b |")]
    return [f"{c[0]} | {c[1]}" for c in cells if len(c) >= 2]


def table(pairs, cards: str, data: str, ranks_dir: str, n_boot: int) -> tuple[str, int]:
    """The markdown table of the pairs, and the number of test users it pairs."""
    head = ("| a − b | protocol | " + " | ".join(f"{m} | p" for m in METRICS) + " |\n"
            "|---|---|" + "---|---|" * len(METRICS))
    rows, n_users = [head], 0
    for protocol, a, b in pairs:
        # zoo.compare gives B - A: A is the pair's b
        res = compare(ranks_file(b, protocol, cards, data, ranks_dir), ranks_file(a, protocol, cards, data, ranks_dir),
                      ks=(10,), n_boot=n_boot, metrics=("HR", "NDCG"))
        n_users = res["n_users"]
        cells = []
        for m in METRICS:
            s = res["metrics"][m]
            cells.append(f"{signed(s['diff'])} [{signed(s['ci_low'])}, {signed(s['ci_high'])}] | {fmt_p(s['p'], n_boot)}")
        rows.append(f"| {row_name(protocol, a, b)} | " + " | ".join(cells) + " |")
    return "\n".join(rows), n_users


def marked(path: str) -> tuple[str, str, str]:
    """The text of ``path`` before its begin marker, between the markers and after its end marker (``SystemExit``
    naming the problem when the file cannot be read or does not hold the two markers, in that order, once each)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: {cannot('--update', path, e, 'read')}") from None
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"error: --update {path}: needs one {BEGIN} followed by one {END}")
    head, rest = text.split(BEGIN)
    body, tail = rest.split(END)
    return head, body, tail


def update(path: str, block: str) -> None:
    """Replace the text between the markers in ``path`` with ``block`` (the file is rewritten whole)."""
    head, _, tail = marked(path)
    with written_whole(path) as f:
        f.write(f"{head}{BEGIN}\n{block}\n{END}{tail}")


def main(argv=None) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--data", default=os.path.join(os.environ.get("ZOO_DATA_DIR", os.path.join(root, "..", "shared",
                                                                                               "data")),
                                                  "ml-1m.5core.seq.gz"),
                   help="the data the cards are evaluated on (default: $ZOO_DATA_DIR/ml-1m.5core.seq.gz)")
    p.add_argument("--cards", default=os.path.join(root, "hub_cards"), help="folder of the card folders")
    p.add_argument("--pairs", nargs="+", type=parse_pair, default=[parse_pair(x) for x in DEFAULT_PAIRS],
                   metavar="PROTOCOL:A:B", help=f"pairs to compare, a row each: PROTOCOL one of {', '.join(PROTOCOLS)} "
                                                f"(lrurec: history masked), A and B card folders under --cards "
                                                f"(default: {' '.join(DEFAULT_PAIRS)})")
    p.add_argument("--ranks-dir", help="keep the ranks files here (default: a temporary folder)")
    p.add_argument("--bootstrap", type=positive_int, default=10_000, help="bootstrap resamples per pair (>= 100)")
    p.add_argument("--update", metavar="README", help="replace the table between the paired-table markers of this "
                                                      "file (default: print the table only)")
    p.add_argument("--replace-table", action="store_true",
                   help="let --update drop rows of the table that --pairs does not measure (refused without it)")
    args = p.parse_args(argv)
    if args.bootstrap < 100:
        p.error(f"--bootstrap must be >= 100, got {args.bootstrap}")
    if args.update:                             # before any work
        dropped = [r for r in table_rows(marked(args.update)[1]) if r not in {row_name(*x) for x in args.pairs}]
        if dropped and not args.replace_table:
            p.error(f"--update {args.update}: --pairs would drop {len(dropped)} row(s) of its table "
                    f"({'; '.join(dropped)}); measure them too, or pass --replace-table")
    if not os.path.isfile(args.data):
        exit_with(EXIT_ERROR, f"error: --data {args.data}: no such file (set ZOO_DATA_DIR or pass --data)")
    with contextlib.ExitStack() as stack:
        ranks_dir = args.ranks_dir or stack.enter_context(tempfile.TemporaryDirectory())
        os.makedirs(ranks_dir, exist_ok=True)
        body, n_users = table(args.pairs, args.cards, args.data, ranks_dir, args.bootstrap)
    block = (f"Measured {datetime.date.today().isoformat()} by `{command_line('bench/paired_table.py', argv)}` from "
             f"the cards as bundled then (paired bootstrap over the {n_users:,} test users, {args.bootstrap:,} "
             "resamples): difference a − b, its 95% interval, p.\n\n" + body)
    print(block)
    if args.update:
        update(args.update, block)
        print(f"[paired] {args.update}: table replaced", file=sys.stderr)
    return block


if __name__ == "__main__":
    run_cli(main, prog="python bench/paired_table.py")
