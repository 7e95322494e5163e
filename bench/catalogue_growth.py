"""A catalogue that gains items: continue a checkpoint on newer data (``zoo.train --init-from --unknown-items add``)
or train afresh? Splits an interaction file by time, trains on the part before the cut, then trains on the whole file
both ways, side by side, and tables the outcome.

    python bench/catalogue_growth.py --data ../shared/data/beauty.inter.gz --before 2014-02-01 \\
        --work runs/ss/catalogue --markdown bench/RESULTS_CATALOGUE_GROWTH.md

Runs (each a ``python -m zoo.train`` with the same ``--train-args``; two at a time, one thread each):

* ``old``: a fresh model on the interactions before ``--before`` (``--old-kcore``, 5 by default: the catalogue the
  old model knows);
* ``continued``: ``--init-from old --unknown-items add`` on the whole file (the new items get rows);
* ``fresh``: a fresh model on the whole file;
* ``continued-N`` / ``fresh-N`` (``--short-epochs N``): the same two, cut to N epochs (a short retraining budget).

Each whole-file model is evaluated on the whole file's test split (``zoo.evaluate --ranks-out``); the table gives the
test metrics over every user and over the users whose target is an item the old model did not know, and the paired
bootstrap (``zoo.metrics.paired_bootstrap``) of each continued run against its fresh twin. A run folder that already
holds ``train_log.json`` is reused (``--rerun`` trains it again). Wall times are only comparable within one table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchutil import HelpFormatter, command_line, markdown_path, spawn, write_table  # noqa: E402
from zoo.cli import (EXIT_CODES, EXIT_ERROR, exit_with, kcore, made_folder, nonnegative_int, positive_int,  # noqa: E402
                     run_cli, written_whole)
from zoo.models import MODELS  # noqa: E402

RECIPE = ("--max-len 50 --set hidden_dropout=0.5 attn_dropout=0.5 --lr 1e-3 --batch-size 128 --loss-weighting target "
          "--epochs 200 --patience 5 --seed 2020")


def cut_time(text: str) -> float:
    """``--before``: a date ``YYYY-MM-DD`` (UTC midnight) or Unix seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"--before wants YYYY-MM-DD or Unix seconds, got {text!r}") from None


def write_before(data: str, before: float, path: str) -> dict:
    """The interactions of ``data`` with a timestamp before ``before`` as a ``user_id item_id timestamp`` TSV."""
    from zoo.data.readers import read_interactions

    rows = read_interactions(data)
    if rows.timestamp is None:
        raise SystemExit(f"{data} has no timestamps: it cannot be split by time")
    keep = rows.timestamp < before
    if not keep.any() or keep.all():
        raise SystemExit(f"--before {before:.0f}: {int(keep.sum())} of {len(rows)} interactions are before it; "
                         "choose a cut inside the data's time range")
    old = rows.select(keep)
    with written_whole(path) as f:                   # whole or not at all: a stop mid-write leaves no part file
        f.write("user_id\titem_id\ttimestamp\n")
        f.writelines(f"{u}\t{i}\t{t:.0f}\n" for u, i, t in zip(old.user, old.item, old.timestamp))
    return {"interactions": int(keep.sum()), "of": len(rows)}


def run_all(jobs: list[tuple[str, list[str]]], work: str, parallel: int, rerun: bool) -> None:
    """``python -m zoo.train`` for each ``(name, args)`` not done yet, ``parallel`` at a time; logs in ``work``. When a
    run fails, or this is stopped (Ctrl-C, SIGTERM under ``run_cli``), the runs still going are stopped (SIGTERM:
    ``zoo.train`` keeps what ``--resume`` continues from) and reaped before this raises: none trains on unseen. Each
    run is started by :func:`benchutil.spawn`: in a session of its own (a Ctrl-C at the terminal reaches the bench,
    which stops them as said) and, on Linux, killed with the bench where that is killed outright (SIGKILL, a crash),
    which can stop nothing -- such runs trained on, two at a time, for hours."""
    todo = [(n, a) for n, a in jobs if rerun or not os.path.exists(os.path.join(work, n, "train_log.json"))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    for start in range(0, len(todo), parallel):
        procs = []
        try:
            for name, args in todo[start:start + parallel]:
                cmd = [sys.executable, "-m", "zoo.train", *args, "--out", os.path.join(work, name), "--threads", "1",
                       "--no-progress"] + (["--overwrite"] if rerun else [])
                print("running:", " ".join(cmd), flush=True)
                log = open(os.path.join(work, name + ".log"), "w", encoding="utf-8")
                try:
                    proc = spawn(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                except BaseException:
                    log.close()
                    raise
                procs.append((name, proc, log))
            for name, p, log in procs:
                if p.wait() != 0:
                    raise SystemExit(f"{name} failed (exit {p.returncode}); see {log.name}")
        finally:
            for _, p, _ in procs:
                if p.poll() is None:
                    p.terminate()
            for _, p, log in procs:
                p.wait()
                log.close()


def ranks_of(work: str, name: str, data: str, rerun: bool = False) -> tuple[list, np.ndarray]:
    """``(targets, ranks)`` of a whole-file model on the test split (``zoo.evaluate --ranks-out``, written once, and
    again with ``rerun``: the model was trained again). The evaluation is a child of the bench as the training runs
    are (:func:`benchutil.spawn`; stopped and reaped when this is stopped); one that fails ends the bench (status 1)
    naming it."""
    from zoo.compare import read_ranks

    path = os.path.join(work, name + ".ranks.csv")
    if rerun or not os.path.exists(path):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        proc = spawn([sys.executable, "-m", "zoo.evaluate", "--model", os.path.join(work, name), "--data", data,
                      "--ranks-out", path, "--json", path + ".json", "--no-progress"], env=env,
                     stdout=subprocess.DEVNULL)
        try:
            if proc.wait() != 0:
                raise SystemExit(f"zoo.evaluate of {name} failed (exit {proc.returncode}); its error is above")
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    _, _, targets, ranks = read_ranks(path)
    return targets, ranks


def _means(ranks: np.ndarray) -> tuple[float, float]:
    hit = ranks <= 10
    return float(hit.mean()), float((hit / np.log2(ranks + 1.0)).mean())


def kcore_word(value: str) -> str:
    """``--old-kcore``: a value ``zoo.train --kcore`` takes, checked as the options are parsed (:func:`zoo.cli.kcore`: a
    usage error, not a failed run after the cut), kept as typed for that command line."""
    kcore(value)
    return value


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, help="interaction file with timestamps")
    p.add_argument("--before", required=True, type=cut_time, help="the cut: YYYY-MM-DD (UTC) or Unix seconds")
    p.add_argument("--work", required=True, help="folder for the cut file, the runs, their logs and ranks")
    p.add_argument("--model", default="sasrec", choices=sorted(MODELS), help="zoo.train's --model: the model type")
    p.add_argument("--train-args", default=RECIPE, help=f"zoo.train options shared by every run (default: {RECIPE})")
    p.add_argument("--old-kcore", type=kcore_word, default="5",
                   help="zoo.train's --kcore of the old model's data: int, 'none' or 'auto' (default 5)")
    p.add_argument("--short-epochs", type=nonnegative_int, default=3, help="the short-budget twins' epochs (0: none)")
    p.add_argument("--parallel", type=positive_int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--rerun", action="store_true", help="train again runs whose folder holds a finished run")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    args = p.parse_args(argv)
    from zoo.metrics import paired_bootstrap
    from zoo.vocab import ItemVocab

    if not os.path.isfile(args.data):                  # before --work is made
        exit_with(EXIT_ERROR, f"error: --data {args.data}: no such file")
    day = dt.datetime.fromtimestamp(args.before, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    old_file = os.path.join(args.work, "before.tsv")
    with made_folder(args.work):                       # a cut that fails (no timestamps, outside the data) or is
        cut = write_before(args.data, args.before, old_file)      # stopped leaves no --work folder it made
    common = ["--model", args.model, *shlex.split(args.train_args)]
    whole = [*common, "--data", args.data]
    grow = ["--init-from", os.path.join(args.work, "old"), "--unknown-items", "add"]
    run_all([("old", [*common, "--data", old_file, "--kcore", args.old_kcore])], args.work, 1, args.rerun)
    jobs = [("continued", whole + grow), ("fresh", whole)]
    if args.short_epochs:
        n = str(args.short_epochs)
        jobs += [(f"continued-{n}", whole + grow + ["--epochs", n]), (f"fresh-{n}", whole + ["--epochs", n])]
    run_all(jobs, args.work, args.parallel, args.rerun)

    old_vocab = ItemVocab.load(os.path.join(args.work, "old"))
    logs = {}
    for n in ["old"] + [j[0] for j in jobs]:
        with open(os.path.join(args.work, n, "train_log.json"), encoding="utf-8") as f:
            logs[n] = json.load(f)
    ranks = {n: ranks_of(args.work, n, args.data, args.rerun) for n, _ in jobs}
    targets = ranks["fresh"][0]
    new = np.array([t not in old_vocab for t in targets])
    grown = logs["continued"]["init_items"]
    lines = [f"Produced by `{command_line('bench/catalogue_growth.py', argv)}` on {dt.date.today()}.", "",
             f"{args.model} on `{os.path.basename(args.data)}` cut at {day}: the old model trains on the "
             f"{cut['interactions']:,} of {cut['of']:,} interactions before the cut ({args.old_kcore}-core: "
             f"{len(old_vocab):,} items, {logs['old']['dataset']['users']:,} users); on the whole file "
             f"({grown['data_items']:,} items) the continued runs add {grown['added']:,} items to it. Shared "
             f"options: `{args.train_args}`. Test: the whole file's leave-one-out split, full ranking, history not "
             f"masked; {int(new.sum()):,} of {len(targets):,} test targets are items the old model did not know.", "",
             "| run | epochs (best) | minutes | valid NDCG@10 after 1 / 3 epochs | best valid NDCG@10 | test HR@10 "
             "| test NDCG@10 | HR@10 / NDCG@10, new-item targets |", "|---|---|---|---|---|---|---|---|"]
    for name, _ in jobs:
        log, (_, r) = logs[name], ranks[name]
        curve = [e["valid_NDCG@10"] for e in log["epochs"]]
        early = " / ".join(f"{curve[i]:.4f}" if len(curve) > i else "–" for i in (0, 2))
        hr, nd = _means(r)
        new_cell = "– (none)" if not new.any() else " / ".join(f"{m:.4f}" for m in _means(r[new]))
        lines.append(f"| `{name}` | {len(curve)} ({log['best_epoch']}) | {log['train_minutes']:.1f} | {early} | "
                     f"{log['best_valid_NDCG10']:.4f} | {hr:.4f} | {nd:.4f} | {new_cell} |")
    lines += ["", "Continued minus fresh, paired bootstrap over the test users (10,000 resamples, seed 0):", "",
              "| pair | users | HR@10 diff [95% interval] | NDCG@10 diff [95% interval] | p (NDCG@10) |",
              "|---|---|---|---|---|"]
    pairs = [("continued", "fresh")] + ([(f"continued-{args.short_epochs}", f"fresh-{args.short_epochs}")]
                                        if args.short_epochs else [])
    for a, b in pairs:
        for label, sel in (("all", slice(None)), ("new-item targets", new)):
            if not np.asarray(ranks[a][1][sel]).size:           # no test target is a new item: no pair to compare
                lines.append(f"| `{a}` − `{b}`, {label} | 0 | – | – | – |")
                continue
            st = paired_bootstrap(ranks[b][1][sel], ranks[a][1][sel], ks=(10,), metrics=("HR", "NDCG"))
            hr, nd = st["HR@10"], st["NDCG@10"]
            lines.append(f"| `{a}` − `{b}`, {label} | {len(ranks[a][1][sel]):,} | {hr['diff']:+.4f} "
                         f"[{hr['ci_low']:+.4f}, {hr['ci_high']:+.4f}] | {nd['diff']:+.4f} "
                         f"[{nd['ci_low']:+.4f}, {nd['ci_high']:+.4f}] | {nd['p']:.3f} |")
    write_table(lines, "A catalogue that gains items: continue or train afresh", args.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/catalogue_growth.py")
