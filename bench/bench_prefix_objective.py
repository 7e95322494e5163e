"""What TiM4Rec's prefix objective costs per training step, with the hidden path computed only as wide as the batch
(``TiM4RecModel.encode`` today) against every prefix padded to the full ``max_seq_length`` window (the official
model's computation, and this project's before the change), side by side in one run (a benchmark, not a test).

Faithful TiM4Rec trains with RecBole's prefix augmentation (``WindowRecomputeMixin.forward``): each labelled position
of a window is its own sample. Its time features mix all ``M`` slots of the window, pad slots included, but its hidden
path is causal, so the slots after a prefix need not be computed; both variants give the same loss (checked here to
1e-5 on every row -- a disagreement ends the run with exit status 3, nothing written -- and in
``tests/test_tim4rec.py``). Each row: one forward + backward of the prefix objective on
``B`` windows of ``n`` items (all ``n`` positions labelled), random weights and timestamps, best of ``--repeats`` in
wall time on one thread (``torch.set_num_threads(1)``).

    python bench/bench_prefix_objective.py [--repeats 3] [--configs beauty ml-1m] [--lengths N ...] [--markdown out.md]

A small run (under a minute on one core): ``--configs beauty --lengths 5 10 --repeats 1``.

Configs: Beauty (official 64d Beauty config: M = 50, p2p_residual, 12,101 items) and ML-1M (official 64d ML-1M config:
M = 200, 3,416 items).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.benchutil import HelpFormatter, command_line, markdown_path, write_markdown  # noqa: E402
from export.fsutil import EXIT_VERIFY_FAILED  # noqa: E402
from zoo.cli import EXIT_CODES, exit_with, positive_int, run_cli  # noqa: E402
from zoo.models.tim4rec import TiM4RecConfig, TiM4RecModel  # noqa: E402

TITLE = "TiM4Rec prefix objective: batch-wide hidden path vs every prefix padded to the window"
CONFIGS = {
    "beauty": (dict(n_items=12102, max_seq_length=50, dropout_prob=0.4, time_dropout_prob=0.0, norm_eps=1e-5,
                    p2p_residual=True, kaiming_init=False), 64, (5, 10, 25, 50)),
    "ml-1m": (dict(n_items=3417, max_seq_length=200), 4, (25, 100, 200)),
}


class PaddedTiM4Rec(TiM4RecModel):
    """Every input right-padded to ``max_seq_length`` before the whole model runs (the official computation)."""

    def encode(self, input_ids, attention_mask, timestamps=None):
        M, L_in = self.config.max_seq_length, input_ids.shape[1]
        pad = (0, M - L_in)
        ts = F.pad(timestamps, pad) if timestamps is not None else None
        return super().encode(F.pad(input_ids, pad), F.pad(attention_mask, pad), ts)[:, :L_in]


def step_seconds(models, ids, mask, ts, labels, repeats) -> list[float]:
    """Best-of-``repeats`` seconds of one training step (forward + backward) for each model, after one untimed warm-up
    step each; the models alternate within every repeat, so a change in the machine's load hits all columns alike.
    Every step draws its dropout masks from the same seed."""
    best = [float("inf")] * len(models)
    for rep in range(repeats + 1):                     # rep 0: warm-up
        for i, model in enumerate(models):
            with torch.random.fork_rng():
                torch.manual_seed(1)
                t = time.perf_counter()
                model(ids, mask, labels=labels, timestamps=ts).loss.backward()
                dt = time.perf_counter() - t
            model.zero_grad(set_to_none=True)
            if rep:
                best[i] = min(best[i], dt)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--repeats", type=positive_int, default=3, help="timed steps per row (the best is kept)")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), metavar="CONFIG",
                   help=f"the configs measured, rows each: any of {', '.join(CONFIGS)}")
    p.add_argument("--lengths", nargs="+", type=positive_int, metavar="N",
                   help="items per window n, a row each, instead of each config's own (each at most the config's M; "
                        "default: " + "; ".join(f"{k}: {' '.join(map(str, v[2]))}" for k, v in CONFIGS.items()) + ")")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    args = p.parse_args(argv)
    if len(set(args.configs)) < len(args.configs):
        p.error("--configs names a config more than once")
    for name in args.configs:
        M = CONFIGS[name][0]["max_seq_length"]
        if args.lengths and max(args.lengths) > M:
            p.error(f"--lengths {max(args.lengths)} exceeds the window of {name} (M = {M})")
    torch.set_num_threads(1)
    lines = [f"Produced by `{command_line('bench/bench_prefix_objective.py', argv)}` ({time.strftime('%Y-%m-%d')}).",
             "",
             (f"TiM4Rec prefix objective, one training step (forward + backward), best of {args.repeats} after a "
              f"warm-up step, the two columns alternating, one "
              f"thread; torch {torch.__version__}, {platform.processor() or platform.machine()}"), "",
             ("| config | M | windows B | items per window n | prefixes | padded to M (s) | batch width (s) | "
              "speed-up | loss diff |"), "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in args.configs:
        cfg, B, lengths = CONFIGS[name]
        lengths = args.lengths or lengths
        torch.manual_seed(0)
        fast = TiM4RecModel(TiM4RecConfig(**cfg)).train()
        slow = PaddedTiM4Rec(fast.config).train()
        slow.load_state_dict(fast.state_dict())
        for n in lengths:
            g = torch.Generator().manual_seed(n)
            ids = torch.randint(1, cfg["n_items"], (B, n), generator=g)
            mask = torch.ones(B, n, dtype=torch.bool)
            ts = 1e9 + torch.cumsum(torch.randint(0, 86400, (B, n), generator=g).double(), 1)
            labels = torch.randint(1, cfg["n_items"], (B, n), generator=g)
            t_slow, t_fast = step_seconds([slow, fast], ids, mask, ts, labels, args.repeats)
            with torch.no_grad():                       # same loss without dropout (the masks' shapes differ)
                fast.eval(), slow.eval()
                diff = abs(fast(ids, mask, labels=labels, timestamps=ts).loss.item()
                           - slow(ids, mask, labels=labels, timestamps=ts).loss.item())
                fast.train(), slow.train()
            if not diff <= 1e-5:                        # a verification failed (NaN too): exit 3, nothing written
                exit_with(EXIT_VERIFY_FAILED, f"error: {name} n={n}: the two computations disagree (loss diff "
                                              f"{diff:.2e}); nothing written")
            row = (f"| {name} | {cfg['max_seq_length']} | {B} | {n} | {B * n} | {t_slow:.3f} | {t_fast:.3f} | "
                   f"{t_slow / t_fast:.1f}x | {diff:.1e} |")
            lines.append(row)
            print(row, flush=True)
    if args.markdown:
        write_markdown(args.markdown, f"# {TITLE}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    run_cli(main, prog="python bench/bench_prefix_objective.py")
