"""Sampled metrics against full ranking on ML-1M: what ``zoo.evaluate --sampled uni100 / pop100`` says about the
bundled models, and whether it orders them as full ranking does (a measurement, not a test).

Each bundled ML-1M model (and the most-popular baseline) scores every test user once; the same scores are then ranked
under full ranking (the cards' protocol), ``uni100`` and ``pop100`` (100 negatives per user, uniform or by training
count, never from the user's history; seed 0, the same negatives for every model), and ``uni100`` under four more seeds
(how much the draw alone moves a number). The ordering table counts the pairs of models that a sampled protocol puts in
the other order than full ranking does (Krichene & Rendle, "On Sampled Metrics for Item Recommendation", KDD 2020).

    python bench/sampled_metrics.py [--models mamba4rec-ml1m sasrec-ml1m ...] [--markdown bench/RESULTS_SAMPLED_METRICS.md]
"""

from __future__ import annotations

import itertools
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import cards_data, cards_parser, command_line, write_table  # noqa: E402
from zoo.cli import positive_int, run_cli  # noqa: E402
PROTOCOLS = [("full", None), ("uni100", ("uni", 100)), ("pop100", ("pop", 100))]
EXTRA_SEEDS = (1, 2, 3, 4)


def model_scores(model, examples, batch_size: int = 256) -> torch.Tensor:
    """``[U, n_items]`` float32 next-item scores of every example (its window, padding at -inf), as
    :func:`zoo.evaluate.evaluate_model` computes them."""
    from zoo.data.batching import eval_batches

    out = torch.empty(len(examples), int(model.config.n_items))
    for batch in eval_batches(examples, int(model.config.max_seq_length), model.padding_side, batch_size):
        out[batch["index"]] = model.predict(batch["input_ids"], batch["attention_mask"]).float()
    return out


def ranks_under(scores: torch.Tensor, targets: torch.Tensor, negatives: np.ndarray | None) -> torch.Tensor:
    from zoo.evaluate import sampled_ranks
    from zoo.metrics import rank_of_target

    if negatives is None:
        return rank_of_target(scores, targets)
    return sampled_ranks(scores, targets, torch.from_numpy(negatives))


def flips(values: dict[str, float], reference: dict[str, float]) -> int:
    """Pairs of entries ordered one way by ``values`` and the other by ``reference``."""
    return sum((values[a] - values[b]) * (reference[a] - reference[b]) < 0
               for a, b in itertools.combinations(sorted(values), 2))


def main(argv=None) -> dict:
    p = cards_parser(__doc__.split("\n\n")[0])
    p.add_argument("--max-users", type=positive_int, default=None,
                   help="the first N test users only (quick runs; default: all)")
    args = p.parse_args(argv)

    import zoo  # noqa: F401
    from transformers import AutoModel

    from zoo.data import item_counts, leave_one_out
    from zoo.evaluate import align_with_model, popularity_scores, sample_negatives
    from zoo.metrics import compute_metrics

    ds0 = cards_data(args)
    results: dict[str, dict[str, dict]] = {}           # name -> protocol -> metrics
    spread: dict[str, list[float]] = {}                # name -> uni100 HR@10 over the seeds
    negatives = None
    for name in ["(popularity)"] + list(args.models):
        if name == "(popularity)":
            model = AutoModel.from_pretrained(os.path.join(ROOT, "hub_cards", args.models[0]))
            ds, _ = align_with_model(ds0, model)       # the cards share ML-1M's items; indices of the first card
        else:
            model = AutoModel.from_pretrained(os.path.join(ROOT, "hub_cards", name)).eval()
            ds, _ = align_with_model(ds0, model)
        split = leave_one_out(ds)
        test = split.test.head(args.max_users) if args.max_users else split.test
        V = int(model.config.n_items)
        if negatives is None:                          # drawn once: every model meets the same negatives
            counts = item_counts(split.train, V)
            negatives = {(how, n, seed): sample_negatives(test, V, n, how, seed, counts)
                         for seed in (0, *EXTRA_SEEDS) for how, n in [("uni", 100)]}
            negatives[("pop", 100, 0)] = sample_negatives(test, V, 100, "pop", 0, counts)
            vocab0 = model.item_vocab
        if model.item_vocab != vocab0:
            sys.exit(f"{name}: another item vocabulary than {args.models[0]}'s; the shared negatives would differ")
        with torch.no_grad():
            scores = (popularity_scores(split.train, V).float().expand(len(test), -1) if name == "(popularity)"
                      else model_scores(model, test))
        targets = torch.as_tensor(np.asarray(test.targets))
        results[name] = {}
        for label, spec in PROTOCOLS:
            negs = None if spec is None else negatives[(*spec, 0)]
            results[name][label] = compute_metrics(ranks_under(scores, targets, negs), (10,))
        spread[name] = [results[name]["uni100"]["HR@10"]] + [
            compute_metrics(ranks_under(scores, targets, negatives[("uni", 100, s)]), (10,))["HR@10"]
            for s in EXTRA_SEEDS]
        print(f"{name}: done", file=sys.stderr)

    names = list(results)
    lines = [f"Produced by `{command_line('bench/sampled_metrics.py', argv)}` (torch {torch.__version__}, "
             f"{args.threads} threads, CPU). ML-1M `{os.path.basename(args.data)}`, {len(targets):,} test users; "
             "the bundled models' windows, history not masked, pessimistic ties. `uni100` / `pop100`: the target "
             "among 100 negatives drawn per user uniformly / by training count, never from the user's history, seed "
             "0 (`python -m zoo.evaluate --sampled uni100`); every model meets the same negatives.", "",
             "## HR@10 and NDCG@10 under each protocol", "",
             "| model | full HR@10 | full NDCG@10 | uni100 HR@10 | uni100 NDCG@10 | pop100 HR@10 | pop100 NDCG@10 | "
             "uni100 HR@10 over 5 seeds |", "|---|---|---|---|---|---|---|---|"]
    for n in names:
        r = results[n]
        s = np.asarray(spread[n])
        lines.append(f"| {n} | {r['full']['HR@10']:.4f} | {r['full']['NDCG@10']:.4f} | {r['uni100']['HR@10']:.4f} | "
                     f"{r['uni100']['NDCG@10']:.4f} | {r['pop100']['HR@10']:.4f} | {r['pop100']['NDCG@10']:.4f} | "
                     f"{s.mean():.4f} ± {s.std(ddof=1):.4f} (range {s.max() - s.min():.4f}) |")
    lines += ["", "## Orderings", "",
              "| protocol | models by NDCG@10, best first | pairs in the other order than full ranking (NDCG@10 / "
              "HR@10) |", "|---|---|---|"]
    pairs = len(names) * (len(names) - 1) // 2
    ref_n = {n: results[n]["full"]["NDCG@10"] for n in names}
    ref_h = {n: results[n]["full"]["HR@10"] for n in names}
    out = {"results": results, "spread": spread, "flips": {}}
    for label, _ in PROTOCOLS:
        by_n = {n: results[n][label]["NDCG@10"] for n in names}
        by_h = {n: results[n][label]["HR@10"] for n in names}
        order = " > ".join(sorted(names, key=lambda n: -by_n[n]))
        out["flips"][label] = (flips(by_n, ref_n), flips(by_h, ref_h))
        lines.append(f"| {label} | {order} | {out['flips'][label][0]} / {out['flips'][label][1]} of {pairs} |")
    lines += ["", "For context (another preprocessing of ML-1M, not a target): the SASRec paper (Kang & McAuley, 2018) "
              "reports HR@10 0.8245 / NDCG@10 0.5905 under its 100 uniformly sampled negatives."]
    write_table(lines, "Sampled metrics against full ranking (ML-1M)", args.markdown)
    return out


if __name__ == "__main__":
    run_cli(main, prog="python bench/sampled_metrics.py")
