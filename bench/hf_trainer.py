"""``zoo.train`` against transformers' ``Trainer`` (``zoo.hf_trainer``) on the same data, model and settings, side by
side in one run: wall time, best validation NDCG@10 and test metrics of each, over several seeds (a measurement, not
a test).

Both train the same config from scratch with Adam (no weight decay), the same learning rate decayed linearly to 0 over
the same number of steps, the same batch size, no gradient clipping, on the same all-position windows with the loss
averaged over each batch's targets; both validate every epoch and test the best epoch's weights. What differs is the
batch composition (``zoo.train`` groups windows of similar length into a batch, the ``Trainer`` draws them at random)
and each loop's own overhead (the ``Trainer``: accelerate, its logging and checkpoint files; ``zoo.train``: its resume
state after every epoch).

    python bench/hf_trainer.py [--data ../shared/data/ml-100k.inter.gz] [--model sasrec] [--epochs 20] [--seeds 0 1 2] [--markdown bench/RESULTS_HF_TRAINER.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import HelpFormatter, command_line, markdown_path, write_table  # noqa: E402
from zoo.cli import EXIT_CODES, positive_float, positive_int, run_cli  # noqa: E402
from zoo.models import MODELS  # noqa: E402

DATA = os.path.join(os.environ.get("ZOO_DATA_DIR", os.path.join(ROOT, "..", "shared", "data")), "ml-100k.inter.gz")
METRICS = ("HR@10", "NDCG@10", "MRR@10")


def run_zoo_train(args, seed: int, out: str) -> dict:
    from zoo.train import main as train_main

    t0 = time.time()
    log = train_main(["--model", args.model, "--data", args.data, "--out", out, "--seed", str(seed),
                      "--max-len", str(args.max_len), "--epochs", str(args.epochs), "--patience", str(args.epochs),
                      "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--lr-schedule", "linear",
                      # the Trainer side's optimiser, whatever the model's preset (LRURec's is AdamW, decay, clipping)
                      "--optimizer", "adam", "--weight-decay", "0", "--clip", "0",
                      "--set", "hidden_size=64", "--no-progress",
                      "--threads", str(args.threads)])
    return {"seconds": time.time() - t0, "best_epoch": log["best_epoch"], "valid": log["best_valid_NDCG10"],
            **{m: log["test"][m] for m in METRICS}}


def run_hf_trainer(args, seed: int, out: str) -> dict:
    from transformers import Trainer, TrainingArguments, set_seed

    from zoo.data import leave_one_out, load_dataset
    from zoo.hf_trainer import trainer_kwargs
    from zoo.train import build_model

    t0 = time.time()
    set_seed(seed)
    ds = load_dataset(args.data)
    split = leave_one_out(ds)
    model = build_model(args.model, ds.vocab.n_items, {"max_seq_length": args.max_len, "hidden_size": 64})
    model.set_item_vocab(ds.vocab)
    targs = TrainingArguments(out, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
                              learning_rate=args.lr, lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=0.0,
                              optim="adamw_torch", eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
                              metric_for_best_model="NDCG@10", load_best_model_at_end=True, use_cpu=True,
                              report_to=[], disable_tqdm=True, logging_strategy="no", seed=seed,
                              per_device_eval_batch_size=256)
    trainer = Trainer(model=model, args=targs, **trainer_kwargs(model, split, ks=(10,)))
    trainer.train()
    test = trainer.evaluate(trainer_kwargs(model, split, ks=(10,), eval_on="test")["eval_dataset"],
                            metric_key_prefix="test")
    best_epoch = next(round(e["epoch"]) for e in trainer.state.log_history
                      if e.get("eval_NDCG@10") == trainer.state.best_metric)
    return {"seconds": time.time() - t0, "best_epoch": best_epoch, "valid": trainer.state.best_metric,
            **{m: test[f"test_{m}"] for m in METRICS}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--data", default=DATA, help="the interaction file both train on (default: "
                                                "$ZOO_DATA_DIR/ml-100k.inter.gz)")
    p.add_argument("--model", default="sasrec", choices=sorted(MODELS), help="the model type both train")
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs of each run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, a pair of runs each")
    p.add_argument("--max-len", type=positive_int, default=50, help="the model's max_seq_length (window length)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="windows per batch")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam's learning rate, decayed linearly to 0")
    p.add_argument("--threads", type=positive_int, default=1, help="torch's CPU threads")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    args = p.parse_args(argv)
    if not os.path.exists(args.data):
        sys.exit(f"data not found: {args.data} (set ZOO_DATA_DIR or --data)")
    torch.set_num_threads(args.threads)
    import transformers

    rows = {"zoo.train": [], "Trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, seed in enumerate(args.seeds):
            order = [("zoo.train", run_zoo_train), ("Trainer", run_hf_trainer)]
            for name, fn in (order if i % 2 == 0 else order[::-1]):       # alternate which runs first
                r = fn(args, seed, os.path.join(tmp, f"{name}-{seed}"))
                torch.set_num_threads(args.threads)     # zoo.train --threads sets it too; keep both loops equal
                rows[name].append(r)
                print(f"{name} seed {seed}: {r}", flush=True)
    lines = [f"Produced by `{command_line('bench/hf_trainer.py', argv)}` ({time.strftime('%Y-%m-%d')}, cpu, "
             f"{args.threads} thread(s); torch {torch.__version__}, transformers {transformers.__version__}): "
             f"{args.model} (hidden 64, max_seq_length {args.max_len}) on `{os.path.basename(args.data)}`, "
             f"{args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr:g} decayed linearly to 0, no weight "
             "decay, no clipping; validation NDCG@10 every epoch, the best epoch tested (full ranking, RecBole "
             "protocol). Seeds alternate which loop runs first.", "",
             "| loop | seed | wall s | best epoch | valid NDCG@10 | " + " | ".join(f"test {m}" for m in METRICS) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(METRICS)]
    for name, rs in rows.items():
        for seed, r in zip(args.seeds, rs):
            lines.append(f"| {name} | {seed} | {r['seconds']:.0f} | {r['best_epoch']} | {r['valid']:.4f} | "
                         + " | ".join(f"{r[m]:.4f}" for m in METRICS) + " |")
    lines += ["", "| loop | mean wall s | mean valid NDCG@10 | " + " | ".join(f"mean test {m}" for m in METRICS) + " |",
              "|---|---:|---:|" + "---:|" * len(METRICS)]
    for name, rs in rows.items():
        lines.append(f"| {name} | {statistics.mean(r['seconds'] for r in rs):.0f} | "
                     f"{statistics.mean(r['valid'] for r in rs):.4f} | "
                     + " | ".join(f"{statistics.mean(r[m] for r in rs):.4f}" for m in METRICS) + " |")
    a, b = rows["zoo.train"], rows["Trainer"]
    ratio = statistics.mean(r["seconds"] for r in b) / statistics.mean(r["seconds"] for r in a)
    lines += ["", f"Trainer / zoo.train wall time: {ratio:.2f}x (same epochs, validations and test)."]
    write_table(lines, "zoo.train against transformers' Trainer", args.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/hf_trainer.py")
