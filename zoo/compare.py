"""Compare two models on the same users: ``python -m zoo.compare A.csv B.csv [--ks 10 20] [--bootstrap 10000]``.

The inputs are ``zoo.evaluate --ranks-out`` files (each user's held-out target and its rank). The two must hold the
same users with the same targets, from the same split and protocol (the history window read, ``zoo.evaluate
--window``, may differ: it is the input compared, e.g. a model's window against its whole history); the comparison
is paired: per metric, the means of A and B, the difference ``B - A``, its percentile bootstrap interval over users,
and a two-sided bootstrap p-value (:func:`zoo.metrics.paired_bootstrap`). A difference whose interval excludes 0 is
one the test set supports; one that does not may be seed noise (compare two seeds of one model to see how large that
is).

``--other-targets`` pairs the users even where their held-out items differ: two versions of the same users' data,
e.g. the two orders of ML-1M's same-second ratings (``zoo.evaluate --time-ties``), each with a model trained on it.
The difference then mixes the models' with that of the tasks; the result counts the users whose targets differ.

``--by-length E1 E2 ...`` also compares the users of each history-length bucket (``1..E1``, ``E1+1..E2``, ...,
``> E_last``, by the ``history`` column of the ranks files), each with its own paired bootstrap;
``--by-popularity E1 E2 ...`` the same by the target's training count (``0..E1``, ...; the ``target_count`` column),
each bucket also counting its distinct targets (``items``, as ``zoo.evaluate --by-popularity`` does).

``--json -`` writes the comparison on standard output, and the tables on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Sequence

import numpy as np

from export.fsutil import strict_json

from .cli import (EXIT_CODES, EXIT_ERROR, STDOUT_PATH, cannot, check_outputs, command_prog, exit_with,
                  int_at_least, nonnegative_int, positive_int, text_stream, written_whole)
from .evaluate import (RANKS_COLUMNS, RANKS_HEADER, UsageError, bucket_label, length_buckets,
                       protocol_without_window)
from .metrics import METRICS, paired_bootstrap


#: the most ``--bootstrap`` resamples: beyond a million a p-value's Monte Carlo error (about 0.0002 at p = 0.05) is
#: below the digits printed, while the resampled means, ``[metrics, N]`` floats, and the time grow with N
MAX_BOOTSTRAP = 1_000_000


def bootstrap_count(value: str) -> int:
    """An argparse ``type=`` for ``--bootstrap``: an int in ``100 .. MAX_BOOTSTRAP``; anything else is a usage error
    naming the bound (checked before any file is read)."""
    n = int_at_least(100)(value)
    if n > MAX_BOOTSTRAP:
        raise argparse.ArgumentTypeError(f"expected an int from 100 to {MAX_BOOTSTRAP} (beyond, the p-values and "
                                         f"intervals move less than the digits printed), got {value!r}")
    return n


def read_ranks(path: str | os.PathLike) -> tuple[dict, list, list, np.ndarray]:
    """``(meta, users, targets, ranks [U] int64)`` of a ``--ranks-out`` file; ``ValueError`` naming the file and
    line for anything else (no header line, wrong columns, a rank that is not an int >= 1, text that is not UTF-8);
    ``OSError`` for a file that cannot be read."""
    return _read(path)[:4]


#: the per-user columns after ``rank`` that a ranks file may lack (written before they existed), with what their
#: buckets are called in a message
BUCKET_COLUMNS = dict(zip(RANKS_COLUMNS[3:], ("history-length", "--by-popularity"), strict=True))


def _read(path: str | os.PathLike) -> tuple[dict, list, list, np.ndarray, dict]:
    """:func:`read_ranks` and the optional columns: ``{"history": [U] int64 history lengths, "target_count": [U]
    int64 training counts of the targets}``, each None in a file written before it existed."""
    try:
        return _read_text(path)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a zoo.evaluate --ranks-out file (not UTF-8 text)") from None


def _read_text(path: str | os.PathLike) -> tuple[dict, list, list, np.ndarray, dict]:
    """:func:`_read` of a file that decodes (``UnicodeDecodeError`` for one that does not)."""
    with open(path, encoding="utf-8", newline="") as f:        # as written (zoo.cli.written_whole), any locale
        first = f.readline()
        if not first.startswith(RANKS_HEADER):
            raise ValueError(f"{path}: not a zoo.evaluate --ranks-out file (its first line should start with "
                             f"{RANKS_HEADER.strip()!r})")
        try:
            meta = json.loads(first[len(RANKS_HEADER):])
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line 1: unreadable header ({e})") from None
        top = _rank_cap(path, meta)
        rows = csv.reader(f)
        columns = next(rows, None)
        if columns not in (RANKS_COLUMNS, RANKS_COLUMNS[:4], RANKS_COLUMNS[:3]):
            raise ValueError(f"{path}, line 2: expected the columns {','.join(RANKS_COLUMNS)} (or, from earlier "
                             "versions, without target_count, or without history and target_count)")
        users, targets, ranks, extra = [], [], [], []
        line_of: dict = {}
        for line, row in enumerate(rows, start=3):
            if (len(row) != len(columns) or not all(c.isascii() and c.isdigit() for c in row[2:])
                    or not all(int(c) >= 1 for c in row[2:4])):
                raise ValueError(f"{path}, line {line}: expected {','.join(columns)} with a rank (and a history "
                                 f"length) >= 1{' and a target count >= 0' if len(columns) == 5 else ''}, got {row}")
            if top and int(row[2]) > top[0]:
                raise ValueError(f"{path}, line {line}: rank {row[2]} is above the largest possible, {top[0]} = "
                                 f"{top[1]}")
            if row[0] in line_of:
                raise ValueError(f"{path}, line {line}: user {row[0]} again (first on line {line_of[row[0]]}); a "
                                 "ranks file holds one row per user")
            line_of[row[0]] = line
            users.append(row[0])
            targets.append(row[1])
            ranks.append(int(row[2]))
            extra.append([int(c) for c in row[3:]])
    if not ranks:
        raise ValueError(f"{path}: no examples")
    table = np.asarray(extra, dtype=np.int64).reshape(len(ranks), len(columns) - 3)
    return (meta, users, targets, np.asarray(ranks, dtype=np.int64),
            {name: table[:, i] if i < table.shape[1] else None for i, name in enumerate(BUCKET_COLUMNS)})


def _rank_cap(path, meta) -> tuple[int, str] | None:
    """``(the largest possible rank, why)`` from a ranks file's header (``max_rank`` K: misses written as K + 1;
    ``n_items``: full ranking among that many items), or ``None``; ``ValueError`` naming the file for a header that
    is not what ``zoo.evaluate`` writes."""
    if not isinstance(meta, dict):
        raise ValueError(f"{path}, line 1: the header should be a JSON object, got {type(meta).__name__}")
    missing = [k for k in ("model", "split", "protocol") if k not in meta]
    if missing:
        raise ValueError(f"{path}, line 1: the header lacks {', '.join(missing)}")
    for key in ("max_rank", "n_items"):
        v = meta.get(key)
        if v is not None and (type(v) is not int or v < 1):
            raise ValueError(f"{path}, line 1: {key} should be an int >= 1 or null, got {v!r}")
    if meta.get("max_rank"):
        return meta["max_rank"] + 1, f"the file's max_rank {meta['max_rank']} + 1 (a miss of its top-K graph)"
    if meta.get("n_items"):
        return meta["n_items"] + 1, (f"the file's n_items {meta['n_items']} + 1 (full ranking; a masked target "
                                     "ranks behind the padding row)")
    return None


def compare(path_a: str, path_b: str, ks: Sequence[int] = (10, 20), n_boot: int = 10_000, seed: int = 0,
            confidence: float = 0.95, metrics: Sequence[str] = METRICS, other_targets: bool = False,
            by_length: Sequence[int] | None = None, by_popularity: Sequence[int] | None = None) -> dict:
    """Paired comparison of two ``--ranks-out`` files (see the module doc); ``ValueError`` when they are not the same
    examples (users, targets -- unless ``other_targets`` --, split, protocol), and its subclass
    :class:`zoo.evaluate.UsageError` when an option asks what the files cannot give: a cut-off above a top-K-only
    graph's K or the items a file ranks (its ``n_items``: every target would be a hit), buckets by a column a file
    lacks; ``OSError`` for a file that cannot be read. ``by_length`` (edges): also
    ``result["by_length"]``, one ``{"lengths", "users", "metrics"}`` per history-length bucket (``metrics`` None for
    an empty one), from the files' ``history`` column, which must agree;
    ``by_popularity`` likewise ``result["by_popularity"]``, one ``{"counts", "users", "items", "metrics"}`` per bucket
    (buckets from 0) by ``target_count``, ``items`` the distinct held-out items of its users as ``zoo.evaluate
    --by-popularity`` counts them (A's and B's together: they are one set unless ``other_targets``)."""
    meta_a, users_a, targets_a, ranks_a, cols_a = _read(path_a)
    meta_b, users_b, targets_b, ranks_b, cols_b = _read(path_b)
    for key in ("split", "protocol"):
        # the history window (zoo.evaluate --window, a suffix of the protocol's name) may differ: it is the input
        same = protocol_without_window if key == "protocol" else (lambda v: v)
        if same(meta_a.get(key)) != same(meta_b.get(key)):
            raise ValueError(f"A and B differ in {key} ({meta_a.get(key)!r} vs {meta_b.get(key)!r}): their metrics are "
                             "not comparable")
    if users_a != users_b:
        extra = sorted(set(users_a) ^ set(users_b))
        raise ValueError(f"A has {len(users_a)} users, B {len(users_b)}"
                         + (f"; e.g. {extra[:3]} in only one" if extra else "; the same users in another order")
                         + ": evaluate both on the same data and split")
    differ = [i for i, (x, y) in enumerate(zip(targets_a, targets_b, strict=True)) if x != y]
    if differ and not other_targets:
        bad = differ[0]
        raise ValueError(f"user {users_a[bad]}: target {targets_a[bad]} in A, {targets_b[bad]} in B: not the same "
                         f"held-out items ({len(differ)} of {len(users_a)} users; another data file, k-core, split or "
                         "order of ties); --other-targets pairs the users anyway")
    caps = [m["max_rank"] for m in (meta_a, meta_b) if m.get("max_rank")]
    if caps and max(ks) > min(caps):
        raise UsageError(f"--ks {max(ks)}: a file holds ranks censored above {min(caps)} (a top-{min(caps)} graph "
                         f"without scores); use cut-offs <= {min(caps)}")
    ranked = {name: m["n_items"] for name, m in (("A", meta_a), ("B", meta_b)) if m.get("n_items")}
    if ranked and max(ks) > min(ranked.values()):      # as zoo.evaluate: every target would be a hit (HR@K = 1)
        name = min(ranked, key=ranked.get)
        raise UsageError(f"--ks {max(ks)}: {name} ranks {ranked[name]} items (its n_items); use cut-offs <= "
                         f"{ranked[name]}")
    stats = paired_bootstrap(ranks_a, ranks_b, ks=ks, metrics=metrics, n_boot=n_boot, seed=seed,
                             confidence=confidence)
    result = {"a": {"file": os.path.abspath(path_a), **meta_a}, "b": {"file": os.path.abspath(path_b), **meta_b},
              "n_users": len(users_a), "targets_differ": len(differ), "n_boot": n_boot, "seed": seed,
              "confidence": confidence, "metrics": stats}
    for flag, edges, column, key, start, said in (
            ("--by-length", by_length, "history", "lengths", 1, "a history of {} items"),
            ("--by-popularity", by_popularity, "target_count", "counts", 0, "a target with a training count of {}")):
        if not edges:
            continue
        a, b = cols_a[column], cols_b[column]
        missing = [name for name, c in (("A", a), ("B", b)) if c is None]
        if missing:
            raise UsageError(f"{flag}: {' and '.join(missing)} {'has' if len(missing) == 1 else 'have'} no {column} "
                             f"column (a ranks file from before "
                             f"{'2026-12-05' if column == 'history' else 'it existed'}); write it again with "
                             "zoo.evaluate --ranks-out")
        if not np.array_equal(a, b):
            bad = int(np.flatnonzero(a != b)[0])
            raise ValueError(f"{flag}: user {users_a[bad]} has {said.format(a[bad])} in A, {b[bad]} in B: not the "
                             "same data")
        result[flag[2:].replace("-", "_")] = [
            {key: [low, high], "users": int(inside.sum()),
             **({"items": _distinct(targets_a, targets_b, inside)} if column == "target_count" else {}),
             "metrics": paired_bootstrap(ranks_a[inside], ranks_b[inside], ks=ks, metrics=metrics, n_boot=n_boot,
                                         seed=seed, confidence=confidence) if inside.any() else None}
            for low, high, inside in length_buckets(a, edges, start=start, what=BUCKET_COLUMNS[column])]
    return result


def _distinct(targets_a: Sequence[str], targets_b: Sequence[str], inside: np.ndarray) -> int:
    """How many distinct held-out items the users of a bucket (``inside [U]`` bool) have, in A or in B."""
    return len({t for targets in (targets_a, targets_b) for t, keep in zip(targets, inside, strict=True) if keep})


def format_comparison(result: dict) -> str:
    """One row per metric: A, B, B - A, the interval, p."""
    c = int(round(result["confidence"] * 100))
    floor = 1.0 / result["n_boot"]
    lines = [f"{'metric':<9} {'A':>7} {'B':>7} {'B - A':>8}  {f'{c}% interval':>19}  {'p':>7}"]
    for name, m in result["metrics"].items():
        p = f"<{floor:.0e}" if m["p"] < floor else f"{m['p']:.4f}"
        lines.append(f"{name:<9} {m['a']:7.4f} {m['b']:7.4f} {m['diff']:+8.4f}  "
                     f"[{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]  {p:>7}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """Entry point of ``python -m zoo.compare``; returns the comparison (also printed). Options that conflict, or that
    the files cannot honour (:class:`zoo.evaluate.UsageError`), are usage errors (exit 2); a file that cannot be read,
    is not a ranks file, or is not paired with the other exits 1."""
    p = argparse.ArgumentParser(allow_abbrev=False,
                                prog=command_prog("zoo.compare"), description=__doc__.split("\n\n")[0],
                                epilog=EXIT_CODES)
    p.add_argument("a", metavar="A", help="ranks of model A (python -m zoo.evaluate ... --ranks-out A.csv)")
    p.add_argument("b", metavar="B", help="ranks of model B, on the same data and split")
    p.add_argument("--ks", type=positive_int, nargs="+", default=[10, 20],
                   help="cut-offs K of the metrics compared (default: 10 20)")
    p.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS),
                   help=f"the metrics compared (default: all, {' '.join(METRICS)})")
    p.add_argument("--bootstrap", type=bootstrap_count, default=10_000,
                   help=f"resamples (100 to {MAX_BOOTSTRAP:,}; default 10000)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the bootstrap's resampling (default 0)")
    p.add_argument("--json", metavar="FILE",
                   help=f"also write the comparison to this JSON file; {STDOUT_PATH}: on standard output (the tables "
                        "then go to stderr)")
    p.add_argument("--by-length", type=positive_int, nargs="+", default=None, metavar="EDGE",
                   help="also compare the users of each history-length bucket cut at these increasing edges, e.g. "
                        "--by-length 50 100 200 (each bucket its own paired bootstrap)")
    p.add_argument("--by-popularity", type=nonnegative_int, nargs="+", default=None, metavar="EDGE",
                   help="also compare the users of each bucket of their target's training count cut at these "
                        "increasing edges, e.g. --by-popularity 100 300 1000 (0-100, 101-300, 301-1000, > 1000)")
    p.add_argument("--other-targets", action="store_true",
                   help="pair the users even where their held-out items differ (two versions of the same users' "
                        "data, e.g. two orders of ties); the result counts those users")
    args = p.parse_args(argv)
    if args.json != STDOUT_PATH:
        try:
            check_outputs({"--json": args.json}, {"A": args.a, "B": args.b})
        except ValueError as e:
            p.error(str(e))
    try:
        result = compare(args.a, args.b, ks=sorted(set(args.ks)), n_boot=args.bootstrap, seed=args.seed,
                         metrics=args.metrics, other_targets=args.other_targets, by_length=args.by_length,
                         by_popularity=args.by_popularity)
    except UsageError as e:
        p.error(str(e))
    except OSError as e:                        # A is read first: a path given as both is A's
        name, path = ("A", args.a) if e.filename in (args.a, None) else ("B", args.b)
        exit_with(EXIT_ERROR, f"{p.prog}: error: {cannot(name, path, e, 'read')}")
    except ValueError as e:
        exit_with(EXIT_ERROR, f"{p.prog}: error: {e}")
    if args.json:
        try:                    # strict JSON (jq refuses NaN), made whole before any of it (or a table) is written
            text = strict_json(result, indent=1) + "\n"
        except ValueError as e:
            exit_with(EXIT_ERROR, f"{p.prog}: error: --json {args.json}: not written: {e}")
    out = text_stream(args.json)                                      # stdout may hold the JSON
    pa, pb = result["a"]["protocol"], result["b"]["protocol"]
    print(f"A: {result['a']['model']}\nB: {result['b']['model']}\n{result['n_users']:,} users, "
          f"{result['a']['split']} split, " + (f"{pa} protocol" if pa == pb else f"protocols {pa} (A), {pb} (B)")
          + f"; paired bootstrap over users, {args.bootstrap:,} resamples (seed {args.seed})"
          + (f"; the held-out items differ for {result['targets_differ']:,} of them" if result["targets_differ"]
             else ""), file=out)
    print(format_comparison(result), file=out)
    for bucket in result.get("by_length", []) + result.get("by_popularity", []):
        what = (f"history {bucket_label(*bucket['lengths'])} items" if "lengths" in bucket else
                f"target's training count {bucket_label(*bucket['counts'])}")
        items = f", {bucket['items']:,} distinct targets" if "items" in bucket else ""
        print(f"\n{what}: {bucket['users']:,} users{items}", file=out)
        if bucket["metrics"]:
            print(format_comparison(dict(result, metrics=bucket["metrics"])), file=out)
    if args.json == STDOUT_PATH:
        sys.stdout.write(text)
        sys.stdout.flush()
    elif args.json:
        try:
            with written_whole(args.json) as f:
                f.write(text)
        except OSError as e:
            exit_with(EXIT_ERROR, f"{p.prog}: error: {cannot('--json', args.json, e)}")
    return result

if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
