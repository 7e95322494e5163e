"""What one training step costs each zoo model: seconds per step and per supervised target, and the memory the step
adds, in ML-1M configurations, side by side in one run (a benchmark, not a test).

Each model trains as ``zoo.train`` trains it (``forward`` with all-position ``labels [B, L]``): the causal models
(Mamba4Rec, LRURec, GRU4Rec, SASRec, TiM4Rec-causal) supervise every position of a window in one pass; BERT4Rec's
Cloze objective predicts the masked positions of the window (``mask_ratio``); the bidirectional or window-normalised
models (SSD4Rec, faithful TiM4Rec) re-encode one prefix per supervised position (RecBole's prefix augmentation), so
they supervise only the last ``--prefixes`` positions of each window here and their cost is per prefix. The column
that compares models is therefore milliseconds per supervised target, relative to Mamba4Rec's.

    python bench/bench_train_cost.py [--batch 8] [--prefixes 4] [--repeats 3] [--markdown out.md]

Time: one forward + backward, best of ``--repeats`` after a warm-up step, the models alternating within every repeat
(so a change in the machine's load hits all rows alike), one thread (CPU) or the GPU when ``--device cuda``. Memory:
on CPU (Linux), how far the process's peak resident set (VmHWM, reset just before) grows above its resident set during
the first step, each model in a fresh interpreter (approximate: what the allocator keeps counts); on CUDA,
``torch.cuda.max_memory_allocated`` above the allocation before the step.
Configs: the bundled cards' (``hub_cards/<name>/config.json``), else the model's defaults (the official ML-1M ones)
with ML-1M's 3,417 item rows; random weights, items and timestamps.
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
from zoo.cli import EXIT_CODES, cli_device, positive_int, run_cli  # noqa: E402

#: model type -> the card whose config it trains with (None: the model's defaults with ML-1M's item rows)
MODELS = {"mamba4rec": "mamba4rec-ml1m", "lrurec": "lrurec-ml1m", "gru4rec": "gru4rec-ml1m", "sasrec": "sasrec-ml1m",
          "bert4rec": "bert4rec-ml1m", "tim4rec_causal": "tim4rec-causal-ml1m-u2999", "tim4rec": None,
          "ssd4rec": None}
N_ITEMS = 3417


def build(model_type: str, seq_len: int):
    """``(model, where the config came from)``: the card's config (its item rows set to ML-1M's) or the defaults."""
    import zoo  # noqa: F401  (registers the models)
    from zoo.models import get_model_class

    cfg_cls, model_cls = get_model_class(model_type)
    card = MODELS[model_type]
    if card:
        fields = card_config(card)
        source = f"card {card}"
    else:
        fields, source = {}, "defaults (official ML-1M)"
    fields.update(n_items=N_ITEMS, max_seq_length=max(seq_len, fields.get("max_seq_length", seq_len)))
    torch.manual_seed(0)
    return model_cls(cfg_cls(**fields)).train(), source


def is_prefix_model(model_type: str) -> bool:
    """Whether ``model_type`` re-encodes one prefix per supervised position (``WindowRecomputeMixin``: it
    supervises only the last ``--prefixes`` positions of each window here)."""
    from zoo.models import get_model_class
    from zoo.models.tim4rec import WindowRecomputeMixin

    return issubclass(get_model_class(model_type)[1], WindowRecomputeMixin)


#: the seed every timed step runs under (BERT4Rec's masks, dropout): each repeat does the same work
STEP_SEED = 2


def inputs(model, batch: int, seq_len: int, prefixes: int, device):
    """``(ids, mask, timestamps or None, labels, supervised targets)`` of one training batch for ``model``."""
    from zoo.models.tim4rec import WindowRecomputeMixin

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, N_ITEMS, (batch, seq_len), generator=g)
    mask = torch.ones(batch, seq_len, dtype=torch.bool)
    labels = torch.randint(1, N_ITEMS, (batch, seq_len), generator=g)
    if isinstance(model, WindowRecomputeMixin):          # one re-encoded prefix per supervised position
        labels[:, :seq_len - prefixes] = 0
    ts = None
    if model.uses_timestamps:
        ts = 1e9 + torch.cumsum(torch.randint(1, 86_400, (batch, seq_len), generator=g).double(), 1)
    move = (lambda t: None if t is None else t.to(device))
    ids, mask, ts, labels = move(ids), move(mask), move(ts), move(labels)
    if model.config.model_type == "bert4rec":           # the positions its timed step predicts (masks of STEP_SEED)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(STEP_SEED)
            seq, seq_mask = model.training_sequence(ids, mask, labels)
            targets = int((model.mask_items(seq, seq_mask)[1] > 0).sum())
    else:
        targets = int((labels > 0).sum())
    return ids, mask, ts, labels, targets


def step(model, ids, mask, ts, labels) -> None:
    model(ids, mask, labels=labels, timestamps=ts).loss.backward()
    model.zero_grad(set_to_none=True)


def peak_memory_mb(model_type: str, batch: int, seq_len: int, prefixes: int, device: str) -> float:
    """MiB the first training step adds to the process (CPU: peak resident set growth; CUDA: peak allocation)."""
    model, _ = build(model_type, seq_len)
    model.to(device)
    batch_in = inputs(model, batch, seq_len, prefixes, device)[:4]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(model, *batch_in)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    before = reset_peak_rss()
    step(model, *batch_in)
    return (status_kb("VmHWM") - before) / 1024


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--batch", type=positive_int, default=8, help="windows per step")
    p.add_argument("--seq-len", type=positive_int, default=200, help="items per window")
    p.add_argument("--prefixes", type=positive_int, default=4,
                   help="supervised positions per window of the prefix models")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed steps per model (the best is kept)")
    p.add_argument("--device", default="cpu", help="where the steps run: cpu, cuda or cuda:N")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS), metavar="MODEL",
                   help=f"model types, a row each: any of {', '.join(sorted(MODELS))}")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    p.add_argument("--memory-of", choices=sorted(MODELS), help=argparse.SUPPRESS)   # the per-model subprocess
    a = p.parse_args(argv)
    twice = sorted({m for m in a.models if a.models.count(m) > 1})
    if twice:                                            # one row (and one best time) per model
        p.error(f"--models names {', '.join(twice)} more than once")
    prefix_models = [m for m in a.models if is_prefix_model(m)]
    if prefix_models and a.prefixes > a.seq_len:
        p.error(f"--prefixes {a.prefixes} exceeds --seq-len {a.seq_len}: the prefix models "
                f"({', '.join(prefix_models)}) supervise the last --prefixes positions of each window")
    device = cli_device(a.device)                        # a malformed device: exit 2; CUDA missing here: exit 4
    torch.set_num_threads(1)
    if a.memory_of:
        print(peak_memory_mb(a.memory_of, a.batch, a.seq_len, a.prefixes, a.device))
        return
    rows = []
    for m in a.models:
        model, source = build(m, a.seq_len)
        model.to(device)
        batch = inputs(model, a.batch, a.seq_len, a.prefixes, device)
        if not batch[4]:                                 # BERT4Rec's Cloze mask picked no position: no ms per target
            p.error(f"--batch {a.batch} --seq-len {a.seq_len} give {m} no supervised target in the timed step (its "
                    "masks pick none of so few positions); give a larger --batch or --seq-len")
        rows.append({"model": m, "source": source, "model_obj": model,
                     "params": sum(q.numel() for q in model.parameters()), "batch": batch})
    best = {r["model"]: float("inf") for r in rows}
    for rep in range(a.repeats + 1):                     # rep 0: warm-up
        for r in rows:
            ids, mask, ts, labels, _ = r["batch"]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(STEP_SEED)                # BERT4Rec draws the same masks every repeat
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                step(r["model_obj"], ids, mask, ts, labels)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t
            if rep:
                best[r["model"]] = min(best[r["model"]], dt)
    for r in rows:
        r["memory_mb"] = float(fresh_run(__file__, ["--memory-of", r["model"], "--batch", a.batch, "--seq-len",
                                                    a.seq_len, "--prefixes", a.prefixes, "--device", a.device]))
    ref = next((r for r in rows if r["model"] == "mamba4rec"), rows[0])
    ref_ms = best[ref["model"]] * 1e3 / ref["batch"][4]
    where = (f"{a.device}, one thread" if device.type == "cpu" else torch.cuda.get_device_name(device))
    lines = [f"Produced by `{command_line('bench/bench_train_cost.py', argv)}` ({time.strftime('%Y-%m-%d')}, "
             f"{where}; torch {torch.__version__}, {platform.processor() or platform.machine()}): one training step "
             f"(forward + backward) on {a.batch} windows of {a.seq_len} items, best of {a.repeats} after a warm-up "
             "step, models alternating.", "",
             "| model | config | parameters | supervised targets per step | s per step | ms per target | "
             f"per target vs {ref['model']} | memory added by a step (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        targets = r["batch"][4]
        ms = best[r["model"]] * 1e3 / targets
        lines.append(f"| {r['model']} | {r['source']} | {r['params']:,} | {targets:,} | {best[r['model']]:.4f} | "
                     f"{ms:.3f} | {ms / ref_ms:.1f}x | {r['memory_mb']:.0f} |")
    write_table(lines, "Training cost per step and per target", a.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/bench_train_cost.py")
