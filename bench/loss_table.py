"""Side-by-side table of ``zoo.train`` runs that differ in their loss (``--loss``, ``--negatives``,
``--negative-sampler``, ``--sparse-item-grad``): per run and per loss, the best validation NDCG@10, the test metrics,
the epochs and the time (a measurement, not a test).

    python bench/loss_table.py RUN_DIR [RUN_DIR ...] [--markdown out.md]

Each ``RUN_DIR`` is a finished run's ``--out`` folder (its ``train_log.json`` holds the test metrics). Runs are grouped
by their loss; a group's mean row follows its runs. The runs must share the data, model type and protocol (refused
otherwise: a table of runs that differ in more than the loss would compare nothing), and each group should hold the
same seeds. Runs that cannot be tabled -- unfinished, or of another model, data or protocol -- are bad input, status
1 (as ``zoo.compare``'s ranks files of two splits), naming the run; one run named twice (``A`` and ``A/``), which
its mean would count twice, is a usage error, 2. The header says the split and the history masking the logs'
``protocol`` records (``unknown`` where it does not).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchutil import HelpFormatter, command_line, markdown_path, write_markdown  # noqa: E402
from zoo.cli import EXIT_CODES, EXIT_ERROR, exit_with, run_cli  # noqa: E402

COLUMNS = ("best valid NDCG@10", "test HR@10", "test NDCG@10", "test MRR@10", "epochs (best)", "s per epoch",
           "minutes")


def loss_name(log: dict) -> str:
    """``full cross-entropy`` or ``sampled softmax, K <sampler>`` from the log's ``loss`` entry, ``+ sparse item
    gradient`` for a ``--sparse-item-grad`` run (the same loss, another optimizer of the item table: its own group)."""
    loss = log.get("loss") or {"type": "ce"}
    if loss["type"] == "ce":
        return "full cross-entropy"
    sparse = " + sparse item gradient" if (log.get("train") or {}).get("sparse_item_grad") else ""
    return f"sampled softmax, {loss['negatives']} {loss['sampler']}{sparse}"


def run_row(log: dict) -> dict:
    """The table's numbers of one finished run; ValueError for an unfinished one (its log has no test metrics),
    KeyError for a log without a field the table shows."""
    if "test" not in log:
        raise ValueError("the run has not finished (its train_log.json has no test metrics)")
    epochs = log["epochs"]
    return {"best valid NDCG@10": log["best_valid_NDCG10"], "test HR@10": log["test"]["HR@10"],
            "test NDCG@10": log["test"]["NDCG@10"], "test MRR@10": log["test"]["MRR@10"],
            "epochs": len(epochs), "best epoch": log["best_epoch"],
            "s per epoch": sum(e["seconds"] for e in epochs) / len(epochs), "minutes": log["train_minutes"]}


#: what the runs of one table share, and how a refusal names each: the log's field -> its words
SHARED = {"model_type": "model", "data": "data", "protocol": "protocol"}


def table(runs: dict[str, dict]) -> list[str]:
    """Markdown lines: one row per run (``runs``: folder -> log), grouped by loss, each group closed by its mean.
    ValueError naming the run -- the first that differs from the first run in model, data (its file name) or
    protocol, or one that is unfinished or whose log lacks a field the table reads."""
    groups: dict[str, list[tuple[str, dict]]] = {}
    first = None
    for folder, log in runs.items():
        try:
            shared = {"model_type": log["model_type"], "data": os.path.basename(log["data"]),
                      "protocol": json.dumps(log["protocol"], sort_keys=True)}
            row = {**run_row(log), "seed": log["seed"]}
            name = loss_name(log)
        except (KeyError, TypeError) as e:      # a field missing, or of another type (a JSON list for the log)
            what = f"no {e}" if isinstance(e, KeyError) else str(e)
            raise ValueError(f"{folder}: its train_log.json is not a zoo.train log ({what})") from None
        except ValueError as e:
            raise ValueError(f"{folder}: {e}") from None
        first = first or (folder, shared)
        differ = [k for k in SHARED if shared[k] != first[1][k]]
        if differ:
            k = differ[0]
            raise ValueError(f"{folder} and {first[0]} differ in {SHARED[k]} ({shared[k]} vs {first[1][k]}): a "
                             "table of runs that differ in more than their loss compares nothing")
        groups.setdefault(name, []).append((folder, row))
    lines = ["| loss | run | seed | " + " | ".join(COLUMNS) + " |", "|---" * (3 + len(COLUMNS)) + "|"]
    for name, rows in groups.items():
        for folder, r in rows:
            lines.append(f"| {name} | `{os.path.basename(os.path.normpath(folder))}` | {r['seed']} | "
                         f"{r['best valid NDCG@10']:.4f} | {r['test HR@10']:.4f} | {r['test NDCG@10']:.4f} | "
                         f"{r['test MRR@10']:.4f} | {r['epochs']} ({r['best epoch']}) | {r['s per epoch']:.0f} | "
                         f"{r['minutes']:.1f} |")
        if len(rows) > 1:
            m = {k: statistics.mean(r[k] for _, r in rows) for k in rows[0][1] if k != "seed"}
            lines.append(f"| **{name}** | mean of {len(rows)} | | {m['best valid NDCG@10']:.4f} | "
                         f"{m['test HR@10']:.4f} | {m['test NDCG@10']:.4f} | {m['test MRR@10']:.4f} | "
                         f"{m['epochs']:.1f} ({m['best epoch']:.1f}) | {m['s per epoch']:.0f} | {m['minutes']:.1f} |")
    return lines


def masking_words(protocol) -> str:
    """How the tabled runs were tested, from their logs' ``protocol`` entry (the runs share it): ``history masked``
    (``history_masked`` true), ``history not masked`` (false), ``history masking unknown`` where the log does not
    say -- a log from before the entry, or a protocol that is no JSON object -- and, for a value that is not true
    or false, that value as the log has it (``history masking unknown (the logs say "yes")``): not read as true."""
    if not isinstance(protocol, dict) or "history_masked" not in protocol:
        return "history masking unknown (not in the logs)"
    value = protocol["history_masked"]
    if value is True or value is False:
        return "history masked" if value else "history not masked"
    return f"history masking unknown (the logs say {json.dumps(value)})"


def split_words(protocol, split=None) -> str:
    """The split the tabled runs were tested on, from their logs' ``protocol`` entry (the runs share it; ``zoo.train``
    writes its ``split``: ``"leave-one-out by time (...)"``, or ``"temporal: {cuts}"`` for ``--temporal-split``):
    ``the leave-one-out split``, ``the temporal split`` -- ``at test share T, validation share V`` when the log's own
    ``split`` record (``split``: ``{"kind": "temporal", "cuts": {...}}``) gives the shares -- and
    ``an unknown split, not in the logs`` where the protocol does not say (a log from before the entry, a protocol
    that is no JSON object), or ``an unknown split, the logs say VALUE`` for a value that names neither split."""
    said = protocol.get("split") if isinstance(protocol, dict) else None
    if said is None:
        return "an unknown split, not in the logs"
    if isinstance(said, str) and said.startswith("leave-one-out"):
        return "the leave-one-out split"
    if isinstance(said, str) and said.startswith("temporal"):
        cuts = split.get("cuts") if isinstance(split, dict) and split.get("kind") == "temporal" else None
        shares = [cuts.get(k) for k in ("test_share", "valid_share")] if isinstance(cuts, dict) else []
        if len(shares) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in shares):
            return f"the temporal split at test share {shares[0]:g}, validation share {shares[1]:g}"
        return "the temporal split"
    return f"an unknown split, the logs say {json.dumps(said)}"


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("runs", nargs="+", help="finished zoo.train --out folders")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    a = p.parse_args(argv)
    seen: dict[str, str] = {}
    for folder in a.runs:                       # one run named twice: its mean would count it twice (usage, 2)
        key = os.path.realpath(folder)
        if key in seen:
            p.error(f"{seen[key]} and {folder} are the same run; name each run once")
        seen[key] = folder
    runs = {}
    for folder in a.runs:                       # a run that is not there or cannot be read: the run failed (1)
        path = os.path.join(folder, "train_log.json")
        if not os.path.isdir(folder):
            exit_with(EXIT_ERROR, f"error: {folder}: no such folder (a zoo.train --out folder)")
        if not os.path.isfile(path):
            exit_with(EXIT_ERROR, f"error: {folder}: no train_log.json (not a zoo.train --out folder)")
        try:
            with open(path, encoding="utf-8") as f:
                runs[folder] = json.load(f)
        except (OSError, ValueError) as e:      # ValueError: not JSON, not UTF-8
            exit_with(EXIT_ERROR, f"error: {path}: cannot read it ({getattr(e, 'strerror', None) or e})")
    try:                                        # runs that cannot be tabled together: bad input, the run failed (1)
        lines = table(runs)
    except ValueError as e:
        exit_with(EXIT_ERROR, f"error: {e}")
    any_log = next(iter(runs.values()))
    head = (f"Produced by `{command_line('bench/loss_table.py', argv)}`: {any_log['model_type']} on "
            f"`{os.path.basename(any_log['data'])}`, test on {split_words(any_log['protocol'], any_log.get('split'))} "
            f"(full ranking, {masking_words(any_log['protocol'])}).")
    print(head + "\n\n" + "\n".join(lines))
    if a.markdown:
        write_markdown(a.markdown, head + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    run_cli(main, prog="python bench/loss_table.py")
