"""Items like this one, and recommendations from precomputed vectors: what each bundled ML-1M model's item table and
user vectors give (a measurement, not a test).

On ML-1M's leave-one-out test examples (RecBole protocol: full ranking, history not masked, pessimistic ties) it
ranks the held-out next item five ways per model:

1. ``full``: the model on the user's history (its card's number);
2. ``last item``: the model on a history of the last item alone (``recommend([[item]])``: "what follows this item");
3. ``cosine``: the items nearest to the last item by cosine similarity of the model's item embeddings
   (``model.similar_items``; the query item itself is never returned);

beside two baselines that need no model: ``transitions`` (how often each item followed the last item in the training
sequences, ties by popularity: ``zoo.evaluate --baseline markov``) and ``popularity`` (``--baseline pop``). It also checks that the model's retrieval vectors reproduce its
ranking: ``user_vectors @ item_vectors.T`` against ``predict`` (max |score difference| and whether every rank is the
same), and times the two halves of serving from precomputed vectors: the user vectors (one forward per user) and the
scoring (one matrix product and top-10 for all users).

    python bench/item_similarity.py [--models mamba4rec-ml1m sasrec-ml1m ...] [--markdown bench/RESULTS_ITEM_SIMILARITY.md]
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import cards_data, cards_parser, command_line, write_table  # noqa: E402
from zoo.cli import run_cli  # noqa: E402


def ranks_of(score_rows, targets: np.ndarray, batch: int = 512) -> torch.Tensor:
    """``[B]`` pessimistic ranks of ``targets`` under the ``[b, V]`` score blocks ``score_rows(start, stop)``."""
    from zoo.metrics import rank_of_target

    out = []
    for s in range(0, len(targets), batch):
        stop = min(s + batch, len(targets))
        out.append(rank_of_target(score_rows(s, stop), torch.as_tensor(targets[s:stop])))
    return torch.cat(out)


def main(argv=None) -> None:
    args = cards_parser(__doc__.split("\n\n")[0]).parse_args(argv)

    import zoo  # noqa: F401
    from transformers import AutoModel

    from zoo.data import EvalExamples, leave_one_out
    from zoo.evaluate import align_with_model, evaluate_baseline, evaluate_model
    from zoo.metrics import compute_metrics

    ds0 = cards_data(args)
    rows, checks = [], []
    base_done = False
    for card in args.models:
        model = AutoModel.from_pretrained(os.path.join(ROOT, "hub_cards", card)).eval()
        ds, _ = align_with_model(ds0, model)
        split = leave_one_out(ds)
        test = split.test
        V = int(model.config.n_items)
        last = np.array([h[-1] for h in test.histories])
        targets = np.asarray(test.targets)
        met = {}
        met["full"] = evaluate_model(model, test, ks=(10,), progress=False)
        one = EvalExamples([h[-1:] for h in test.histories], test.targets, test.users)
        met["last item"] = evaluate_model(model, one, ks=(10,), progress=False)
        unit = F.normalize(model.item_output()[0].detach().float(), dim=1)            # [V, D]

        def cosine_rows(s, e):
            q = torch.as_tensor(last[s:e])
            sims = unit[q] @ unit.t()                                                 # [b, V]
            sims[:, 0] = -float("inf")
            sims[torch.arange(len(q)), q] = -float("inf")                              # never the item itself
            return sims

        met["cosine"] = compute_metrics(ranks_of(cosine_rows, targets), (10,))
        for how in ("full", "last item", "cosine"):
            rows.append((card, how, met[how]))
        if not base_done:                   # the model-free baselines, once (every ML-1M card has the same items)
            for kind, label in (("markov", "transitions"), ("pop", "popularity")):
                rows.append(("(no model)", label, evaluate_baseline(kind, split.train, test, V, ks=(10,))))
            base_done = True
        # retrieval vectors reproduce the ranking; time the two halves of serving from them
        hist = [model.decode_items(h.tolist()) for h in test.histories]
        t0 = time.perf_counter()
        users = model.user_vectors(hist, batch_size=256)                               # [U, D']
        t_users = time.perf_counter() - t0
        items = model.item_vectors().vectors                                           # [V - 1, D']
        t0 = time.perf_counter()
        top = torch.topk(users @ items.t(), 10, dim=1)
        t_score = time.perf_counter() - t0
        diff, same = 0.0, True
        for s in range(0, len(hist), 512):
            ids, mask = model.pad_batch([h.tolist()[-model.config.max_seq_length:] for h in test.histories[s:s + 512]])
            ref = model.predict(ids, mask)[:, 1:]
            mine = users[s:s + 512] @ items.t()
            diff = max(diff, float((mine - ref).abs().max()))
            rk_ref = ranks_of(lambda a, b: F.pad(ref[a:b], (1, 0), value=-float("inf")), targets[s:s + 512])
            rk_mine = ranks_of(lambda a, b: F.pad(mine[a:b], (1, 0), value=-float("inf")), targets[s:s + 512])
            same &= bool(torch.equal(rk_ref, rk_mine))
        del top
        checks.append((card, model.vector_size, diff, same, t_users, t_score, len(hist)))
        print(f"{card}: done", file=sys.stderr)

    lines = [f"Produced by `{command_line('bench/item_similarity.py', argv)}` (torch {torch.__version__}, "
             f"{args.threads} threads, CPU). ML-1M `{os.path.basename(args.data)}`, {len(targets):,} test users, "
             "RecBole protocol (full ranking, history not masked, pessimistic ties).", "",
             "## Ranking the held-out next item", "",
             "| model | from | HR@10 | NDCG@10 | MRR@10 |", "|---|---|---|---|---|"]
    for card, how, m in rows:
        lines.append(f"| {card} | {how} | {m['HR@10']:.4f} | {m['NDCG@10']:.4f} | {m['MRR@10']:.4f} |")
    lines += ["", "`full`: the model on the whole history (window); `last item`: the model on the last item alone; "
              "`cosine`: the last item's nearest items by cosine of the model's item embeddings "
              "(`similar_items`, never the item itself); `transitions`: how often each item followed the last one "
              "in the training sequences.", "",
              "## Serving from precomputed vectors", "",
              "| model | vector size | max \\|user·item − predict\\| | same ranks | user vectors (s) | "
              "score + top-10 (s) | users |", "|---|---|---|---|---|---|---|"]
    for card, size, diff, same, tu, ts, n in checks:
        lines.append(f"| {card} | {size} | {diff:.1e} | {'yes' if same else 'NO'} | {tu:.2f} | {ts:.3f} | {n:,} |")
    write_table(lines, "Similar items and retrieval vectors (ML-1M)", args.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/item_similarity.py")
