"""Sampled metrics (``zoo.evaluate --sampled uniN|popN``): the negatives, the ranks among them, and the command.

The negatives are checked for what the protocol promises (N distinct items per user, never one of the user's history
items or the target, drawn by training count for ``pop``, the same for every evaluation with the same seed, whatever
the model or ``--max-users``); the ranks against a brute-force count on a hand-made model and on random scores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from test_evaluate import (M, NextItemConfig, NextItemModel, _random_examples, _tiny, examples, exits, metrics_of,
                           save_model)

from zoo.evaluate import evaluate_model, evaluate_popularity, main, parse_sampled, sample_negatives, sampled_ranks
from zoo.metrics import rank_of_target

pytestmark = pytest.mark.usefixtures("one_thread")


def test_parse_sampled():
    assert parse_sampled("uni100") == ("uni", 100) and parse_sampled("pop5") == ("pop", 5)
    for bad in ("uni0", "uni", "pop-3", "random100", "UNI100", "uni100x"):
        with pytest.raises(ValueError, match="uniN or popN"):
            parse_sampled(bad)


def test_uniform_negatives_are_distinct_new_to_the_user_and_fixed_by_the_seed():
    ex = _random_examples(n=200, n_items=40)
    negs = sample_negatives(ex, 40, 10, "uni", seed=3)
    assert negs.shape == (200, 10) and negs.dtype == np.int64
    for h, t, row in zip(ex.histories, ex.targets, negs, strict=True):
        assert len(set(row.tolist())) == 10 and row.min() >= 1 and row.max() < 40
        assert not set(row.tolist()) & (set(h.tolist()) | {int(t)})
    np.testing.assert_array_equal(negs, sample_negatives(ex, 40, 10, "uni", seed=3))        # the same draws again
    assert (negs != sample_negatives(ex, 40, 10, "uni", seed=4)).any()                       # another seed, others
    np.testing.assert_array_equal(negs[:50], sample_negatives(ex.head(50), 40, 10, "uni", seed=3))  # --max-users
    # uniform: every allowed item about equally often over many draws
    many = sample_negatives(_random_examples(n=2000, n_items=40, seed=1), 40, 5, "uni", seed=0)
    counts = np.bincount(many.ravel(), minlength=40)[1:]
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()


def test_popularity_negatives_follow_the_training_counts():
    ex = _random_examples(n=3000, n_items=40, seed=2)
    counts = np.zeros(40, dtype=np.int64)
    counts[1:11] = 1000                         # items 1..10 popular, 11..20 rare, the rest never trained on
    counts[11:21] = 10
    negs = sample_negatives(ex, 40, 3, "pop", seed=0, counts=counts)
    drawn = np.bincount(negs.ravel(), minlength=40)
    assert drawn[21:].sum() == 0                                   # never an item without a training count
    assert drawn[1:11].sum() > 20 * drawn[11:21].sum() > 0         # ~100x as often; the rare ones still come up
    for h, t, row in zip(ex.histories, ex.targets, negs, strict=True):
        assert not set(row.tolist()) & (set(h.tolist()) | {int(t)}) and len(set(row.tolist())) == 3


def test_sampling_refuses_what_cannot_be_drawn():
    ex = _random_examples(n=10, n_items=40)
    with pytest.raises(ValueError, match=r"user 'u\d+': \d+ items left to draw as negatives, fewer than 39"):
        sample_negatives(ex, 40, 39, "uni")
    counts = np.zeros(40, dtype=np.int64)
    counts[1:4] = 5
    with pytest.raises(ValueError, match="items with a training count"):
        sample_negatives(ex, 40, 3, "pop", counts=counts)
    with pytest.raises(ValueError, match="training counts"):
        sample_negatives(ex, 40, 3, "pop")
    with pytest.raises(ValueError, match="how must be"):
        sample_negatives(ex, 40, 3, "zipf")


def test_sampled_ranks_by_hand_and_against_brute_force():
    scores = torch.tensor([[0.0, 5.0, 3.0, 3.0, 1.0, 9.0]])
    # target 2 (score 3) among negatives 3 (tie: pessimistic), 4 (lower), 5 (higher) -> rank 3
    assert sampled_ranks(scores, torch.tensor([2]), torch.tensor([[3, 4, 5]])).tolist() == [3]
    assert sampled_ranks(scores, torch.tensor([2]), torch.tensor([[4]])).tolist() == [1]
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 50, generator=g)
    scores[:, 7] = float("-inf")                                   # a masked target ranks last among its candidates
    targets = torch.randint(1, 50, (64,), generator=g)
    targets[:4] = 7
    negs = torch.tensor([[j for j in (torch.randperm(49, generator=g) + 1).tolist() if j != t][:10]
                         for t in targets.tolist()])                        # never the target, as sampled
    got = sampled_ranks(scores, targets, negs)
    for r in range(64):
        t = float(scores[r, targets[r]])
        want = 1 + sum(float(scores[r, j]) >= t for j in negs[r].tolist())
        assert got[r] == want, r
    assert got[:4].tolist() == [11] * 4                                    # the masked targets: last of 1 + 10


def test_evaluate_model_with_negatives_ranks_among_them_only():
    """The hand-made model prefers x+1, x+2, ... after item x: with negatives the rank counts only the negatives it
    prefers to the target."""
    model = NextItemModel(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    test = examples().test                          # histories [1,2,3]->4, [5,1]->3, [2,4,1]->5: full ranks 1, 2, 4
    negs = np.array([[1, 2], [2, 4], [2, 4]])       # preferred to the target: none; 2; 2 and 4 (x=1: 2,3,4,5)
    m, ranks = evaluate_model(model, test, ks=(1, 3), progress=False, return_ranks=True, negatives=negs)
    assert ranks.tolist() == [1, 2, 3]
    for k, v in metrics_of([1, 2, 3], (1, 3)).items():
        assert m[k] == pytest.approx(v), k
    with pytest.raises(ValueError, match="negatives must be int64"):
        evaluate_model(model, test, progress=False, negatives=negs[:2])
    with pytest.raises(ValueError, match="outside 1..5"):
        evaluate_model(model, test, progress=False, negatives=np.array([[1, 6]] * 3))
    with pytest.raises(ValueError, match="history_share"):
        evaluate_model(model, test, progress=False, negatives=negs, history_share=True)


def test_sampled_evaluation_of_a_real_model_equals_brute_force():
    model = _tiny("gru4rec")
    ex = _random_examples(n=60, n_items=40)
    negs = sample_negatives(ex, 40, 8, "uni", seed=1)
    _, ranks = evaluate_model(model, ex, ks=(5,), progress=False, return_ranks=True, negatives=negs, batch_size=7)
    ids, mask = model.pad_batch([h.tolist()[-12:] for h in ex.histories])
    scores = model.predict(ids, mask)
    full = rank_of_target(scores, torch.as_tensor(ex.targets))
    for r in range(60):
        t = float(scores[r, ex.targets[r]])
        assert ranks[r] == 1 + sum(float(scores[r, j]) >= t for j in negs[r])
    assert (ranks <= full).all() and (ranks < full).any()        # among 8 negatives, never worse than among all


def test_popularity_baseline_with_negatives():
    sp = examples()
    negs = np.array([[1, 2], [2, 4], [2, 4]])
    _, ranks = evaluate_popularity(sp.train, sp.test, M + 1, ks=(1,), return_ranks=True, negatives=negs)
    counts = np.bincount(np.concatenate(sp.train), minlength=M + 1)
    for r, (t, row) in enumerate(zip(sp.test.targets, negs, strict=True)):
        assert ranks[r] == 1 + sum(counts[j] >= counts[t] for j in row)


def test_cli_sampled(tmp_path, capsys):
    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n3\t20 40 10 50\n1\t10 20 30 40\n2\t50 10 30\n")
    # each test user has 1-2 items left outside its history and target: 1 negative each
    res = main(["--model", str(d), "--data", str(data), "--sampled", "uni1", "--ks", "1", "2", "--json",
                str(tmp_path / "r.json"), "--ranks-out", str(tmp_path / "r.csv"), "--no-progress"])
    p = res["protocol"]
    assert p["name"] == "recbole-uni1-seed0" and p["sampled"] == {
        "sampler": "uni", "negatives": 1, "seed": 0, "drawn": "uniformly",
        "never": "the user's history items and the target"}
    assert "sampled: the target among 1 negatives" in p["ranking"]
    header = json.loads((tmp_path / "r.csv").read_text().splitlines()[0].split(" ", 3)[3])
    assert header["protocol"] == "recbole-uni1-seed0" and header["n_items"] == 2
    assert json.loads((tmp_path / "r.json").read_text())["protocol"]["sampled"]["negatives"] == 1
    again = main(["--model", str(d), "--data", str(data), "--sampled", "uni1", "--ks", "1", "--sample-seed", "5",
                  "--no-progress", "--ranks-out", str(tmp_path / "r5.csv")])
    assert again["protocol"]["name"] == "recbole-uni1-seed5"
    from zoo.compare import compare

    with pytest.raises(ValueError, match="differ in protocol"):        # other negatives: not paired examples
        compare(str(tmp_path / "r.csv"), str(tmp_path / "r5.csv"), ks=(1,))
    wide = tmp_path / "w.seq"                       # 9 items, each user rates 4: 5 left to draw, most trained on
    wide.write_text("user_id\titem_ids_chronological\n" + "".join(
        f"{u}\t{' '.join(str(10 * (1 + (u + j) % 9)) for j in range(4))}\n" for u in range(1, 10)))
    base = main(["--baseline", "pop", "--data", str(wide), "--sampled", "pop2", "--ks", "1", "3", "--no-progress"])
    assert base["protocol"]["name"] == "recbole-pop2-seed0" and base["n_users"] == 9
    capsys.readouterr()
    # usage errors (exit 2): options that conflict, or ask more than the model and data have
    for argv, message in [(["--sampled", "uni1", "--ks", "3"], "--ks 3: the --sampled uni1 protocol ranks 2 items"),
                          (["--sampled", "uni3"], "--sampled uni3: user "),
                          (["--sample-seed", "2"], "--sample-seed 2 seeds the --sampled negatives"),
                          (["--sampled", "uni1", "--history-share"], "--sampled ranks the target"),
                          (["--sampled", "uni0"], "uniN or popN")]:
        exits(capsys, ["--model", str(d), "--data", str(data), "--no-progress", *argv], 2, message)
    exits(capsys, ["--onnx", str(tmp_path), "--data", str(data), "--sampled", "uni1"], 2, "an --onnx graph")
