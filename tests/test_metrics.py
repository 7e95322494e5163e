"""Full-ranking metrics on hand-computed ranks."""

import math

import numpy as np
import pytest
import torch

from zoo.metrics import compute_metrics, history_in_top_k, hit_at_k, mrr_at_k, ndcg_at_k, rank_of_target


def test_rank_of_target():
    scores = torch.tensor([[-math.inf, 0.9, 0.5, 0.1, 0.7],
                           [-math.inf, 0.1, 0.2, 0.3, 0.4],
                           [-math.inf, 1.0, 1.0, 1.0, 0.0]])
    assert rank_of_target(scores, torch.tensor([1, 2, 2])).tolist() == [1, 3, 3]   # ties: pessimistic
    assert rank_of_target(scores, torch.tensor([1, 2, 2]), ties="optimistic").tolist() == [1, 3, 1]
    # a target masked to -inf ranks after every other item (here padding and the target itself)
    masked = scores.clone()
    masked[0, 1] = -math.inf
    assert rank_of_target(masked, torch.tensor([1, 1, 1]))[0].item() == 5


def test_rank_errors():
    with pytest.raises(ValueError, match="NaN"):
        rank_of_target(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="out of range"):
        rank_of_target(torch.zeros(1, 3), torch.tensor([3]))
    with pytest.raises(ValueError, match="expected scores"):
        rank_of_target(torch.zeros(3), torch.tensor([0]))
    with pytest.raises(ValueError, match="ties"):
        rank_of_target(torch.zeros(1, 3), torch.tensor([0]), ties="random")


def test_history_in_top_k():
    scores = torch.tensor([[-math.inf, 0.9, 0.5, 0.1, 0.7],      # order 1, 4, 2, 3
                           [-math.inf, 0.1, 0.2, 0.3, 0.4]])     # order 4, 3, 2, 1
    hist = torch.tensor([[0, 0, 4, 1],                            # padding 0 is not history
                         [2, 3, 0, 0]])
    assert history_in_top_k(scores, hist, 1).tolist() == [1, 0]
    assert history_in_top_k(scores, hist, 2).tolist() == [2, 1]
    assert history_in_top_k(scores, hist, 4).tolist() == [2, 2]
    # a history item masked to -inf (the LRURec protocol) cannot be in the top-k while finite items remain
    masked = scores.clone()
    masked[0, [1, 4]] = -math.inf
    assert history_in_top_k(masked, hist, 2).tolist()[0] == 0
    assert history_in_top_k(masked, hist, 4).tolist()[0] == 0      # -inf items are not recommended, even in the top-k
    with pytest.raises(ValueError, match="k must be"):
        history_in_top_k(scores, hist, 0)
    with pytest.raises(ValueError, match="out of range"):
        history_in_top_k(scores, torch.tensor([[5], [1]]), 1)
    with pytest.raises(ValueError, match="expected scores"):
        history_in_top_k(scores, hist[0], 1)


def test_per_user_metrics():
    r = torch.tensor([1, 3, 11])
    assert hit_at_k(r, 2).tolist() == [1.0, 0.0, 0.0]
    assert ndcg_at_k(r, 10).tolist() == pytest.approx([1.0, 0.5, 0.0])     # 1/log2(4) = 0.5
    assert mrr_at_k(r, 10).tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert hit_at_k(np.array([3]), 3).item() == 1.0 and hit_at_k([3], 2).item() == 0.0


def test_compute_metrics():
    m = compute_metrics([1, 3, 11, 2], ks=(2, 10))
    assert list(m)[:6] == ["HR@2", "HR@10", "NDCG@2", "NDCG@10", "MRR@2", "MRR@10"]
    assert m["HR@2"] == pytest.approx(0.5) and m["HR@10"] == pytest.approx(0.75)
    assert m["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert m["NDCG@10"] == pytest.approx((1 + 0.5 + 1 / math.log2(3)) / 4)
    assert m["MRR@10"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 4)
    assert m["Recall@10"] == m["HR@10"]
    assert "Recall@2" not in compute_metrics([1], ks=(2,), recall_alias=False)
    assert all(isinstance(v, float) for v in m.values())
    with pytest.raises(ValueError, match="1-based"):
        compute_metrics([0, 1])
    with pytest.raises(ValueError, match="no ranks"):
        compute_metrics([])
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_metrics([1], metrics=("AUC",))
