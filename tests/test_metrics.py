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


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_rank_of_target_counts_a_few_rows_at_a_time_with_the_same_ranks(monkeypatch, ties, chunk_rows, dtype):
    """The rank count goes over blocks (a [B, V] comparison counted at once makes an int64 copy of it): on the CPU
    numpy's, RANK_BLOCK elements at a time (whole rows, or a row's columns), else (integer scores here, CUDA) torch's,
    RANK_CHUNK_BYTES at a time; the ranks are those of the whole-matrix formula, ties and -inf included, for any block
    size (here 1 element or row to all rows)."""
    import zoo.metrics as M

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(-3, 4, (7, 11), generator=g).float()        # many ties
    scores[:, 0] = float("-inf")
    scores[2, 5] = float("-inf")
    if dtype == torch.int64:                                           # integer scores: the torch path
        scores = scores.clamp(min=-10).long()
    targets = torch.randint(1, 11, (7,), generator=g)
    t = scores.gather(1, targets[:, None])
    whole = (scores >= t).sum(1) if ties == "pessimistic" else (scores > t).sum(1) + 1
    monkeypatch.setattr(M, "RANK_CHUNK_BYTES", 5 * 11 * chunk_rows)
    monkeypatch.setattr(M, "RANK_BLOCK", {1: 1, 3: 5, 7: 11 * 3, 100: 11 * 100}[chunk_rows])
    assert torch.equal(rank_of_target(scores, targets, ties=ties), whole)
    assert rank_of_target(scores[:0], targets[:0], ties=ties).shape == (0,)


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


# ------------------------------------------------------------------ mutation audit, round 6 (B): guards found missing
def test_rank_of_target_refuses_a_negative_target():
    """A negative target must be the same ValueError as one past the end (the ``min() < 0`` half of the range check
    was untested: without it torch's gather raised an IndexError/RuntimeError instead)."""
    with pytest.raises(ValueError, match=r"target index out of range 0\.\.2"):
        rank_of_target(torch.zeros(2, 3), torch.tensor([1, -1]))


def test_history_in_top_k_never_counts_the_padding_index():
    """Index 0 of a padded window is not history even when its score is finite and on top (a model's raw logits before
    ``predict`` masks them): without ``seen[:, 0] = False`` the scattered padding zeros counted as a history item."""
    scores = torch.tensor([[9.0, 1.0, 3.0, 2.0],                  # order 0 (padding), 2, 3, 1
                           [9.0, 3.0, 2.0, 1.0]])                 # order 0 (padding), 1, 2, 3
    hist = torch.tensor([[0, 0, 1],
                         [0, 2, 3]])
    assert history_in_top_k(scores, hist, 1).tolist() == [0, 0]
    assert history_in_top_k(scores, hist, 2).tolist() == [0, 0]
    assert history_in_top_k(scores, hist, 3).tolist() == [0, 1]
    assert history_in_top_k(scores, hist, 4).tolist() == [1, 2]


def test_compute_metrics_without_hr_has_no_recall_alias_and_refuses_cutoff_zero():
    """``Recall@K`` is HR@K's alias only when HR is asked for (it raised KeyError 'HR@K' without HR); a cut-off 0
    (HR@0 = 0 for every model) is refused, not reported."""
    m = compute_metrics([1, 3], ks=(2,), metrics=("NDCG", "MRR"))
    assert list(m) == ["NDCG@2", "MRR@2"]
    assert m["MRR@2"] == pytest.approx(0.5) and m["NDCG@2"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"cut-offs must be >= 1, got \[5, 0\]"):
        compute_metrics([1, 3], ks=(5, 0))


def test_bootstrap_interval_bounds_are_the_normal_ones_and_draw_every_user():
    """The 95% percentile interval of a mean over 3000 users sits at mean -/+ 1.96 standard errors (each bound within
    0.15 se; the quantiles 0.05/0.975 put the low bound at -1.64 se); a resample can draw the last user (with ten users
    and only the last one a hit the upper bound is above 0; a draw over users 0..U-2 gave (0, 0)); no ranks, a
    confidence of 0 or 1 are errors."""
    from zoo.metrics import bootstrap_interval

    rng = np.random.default_rng(5)
    r = rng.integers(1, 40, 3000)
    lo, hi = bootstrap_interval(r, ks=(10,), metrics=("HR",), n_boot=4000, seed=2)["HR@10"]
    p = float(np.mean(r <= 10))
    se = math.sqrt(p * (1 - p) / len(r))
    assert lo == pytest.approx(p - 1.96 * se, abs=0.15 * se) and hi == pytest.approx(p + 1.96 * se, abs=0.15 * se)
    last = bootstrap_interval([50] * 9 + [1], ks=(10,), metrics=("HR",), n_boot=1000)["HR@10"]
    assert last[0] == 0.0 and last[1] >= 0.1
    with pytest.raises(ValueError, match="no ranks given"):
        bootstrap_interval([], n_boot=100)
    for c in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
            bootstrap_interval([1, 2], n_boot=100, confidence=c)


def test_paired_bootstrap_p_value_is_two_sided_and_empty_ranks_are_refused():
    """Two users, B better by one hit for the first only: the resampled mean difference is 0 with probability 1/4, so
    the two-sided p is 2 * 1/4 = 0.5 (a one-sided p gave 0.25); empty rank lists are an error (were numpy's
    'high <= 0' from the resampler)."""
    from zoo.metrics import paired_bootstrap

    res = paired_bootstrap([20, 1], [1, 1], ks=(10,), metrics=("HR",), n_boot=4000, seed=0)["HR@10"]
    assert res["diff"] == 0.5 and res["a"] == 0.5 and res["b"] == 1.0
    assert res["p"] == pytest.approx(0.5, abs=0.04)
    assert res["ci_low"] == 0.0 and res["ci_high"] == 1.0
    with pytest.raises(ValueError, match="same, non-zero number of examples; got 0 and 0"):
        paired_bootstrap([], [], n_boot=100)


# ------------------------------------------------------------- numerics QA (findings 2 and 7): top-K ties, cut-offs
SEEN = float(np.finfo(np.float32).min)       # export.runtime.SEEN_SCORE (not imported: that module needs onnxruntime)


def test_rank_in_top_k_is_pessimistic_within_the_list_and_a_tie_group_reaching_slot_k_is_a_miss():
    """A hand-made top-4 output with exact ties, in the order ONNX Runtime's TopK gives them (by item index): the
    target ranks after every slot tied with it, not at its own slot; a tie group of two or more slots reaching slot K
    may go on beyond the list, so it is a miss (K + 1), as is a target not listed; a target alone at slot K keeps K;
    empty slots (id 0, -inf) are never tied with a finite target; a history item of an --exclude-seen graph
    (SEEN_SCORE) is masked, so a miss even where the list reaches it."""
    from zoo.metrics import rank_in_top_k

    inf = float("-inf")
    ids = [[5, 3, 7, 2], [5, 3, 7, 2], [5, 3, 7, 2], [4, 1, 6, 8], [4, 1, 6, 8], [1, 2, 3, 4], [3, 0, 0, 0],
           [2, 9, 4, 0], [2, 9, 4, 0]]
    scores = [[0.9, 0.5, 0.5, 0.1], [0.9, 0.5, 0.5, 0.1], [0.9, 0.5, 0.5, 0.1], [0.9, 0.2, 0.2, 0.2],
              [0.9, 0.2, 0.2, 0.2], [0.3, 0.3, 0.3, 0.3], [0.4, inf, inf, inf], [0.3, SEEN, SEEN, inf],
              [0.3, SEEN, SEEN, inf]]
    targets = [3, 7, 2, 1, 9, 1, 3, 9, 2]
    want = [3, 3, 4, 5, 5, 5, 1, 5, 1]
    assert rank_in_top_k(np.array(ids), np.array(scores, np.float32), np.array(targets),
                         masked_at=SEEN).tolist() == want
    # by default only -inf is masked: the two SEEN_SCORE slots are then a tie group ending before slot K
    assert rank_in_top_k(ids, scores, targets)[7].item() == 3
    with pytest.raises(ValueError, match="NaN"):
        rank_in_top_k([[1, 2]], [[0.5, float("nan")]], [1])
    with pytest.raises(ValueError, match=r"expected topk_ids and topk_scores \[B, K\]"):
        rank_in_top_k([[1, 2]], [[0.5]], [1])


@pytest.mark.parametrize("seed", range(4))
def test_rank_in_top_k_agrees_with_the_full_pessimistic_rank(seed):
    """On scores with many exact ties, the rank from torch.topk's list alone is the full pessimistic rank whenever it
    is below K, and never a hit the full rank is not (a target alone at slot K, rank K, is the one thing the list
    cannot tell: an item beyond it may tie)."""
    from zoo.metrics import rank_in_top_k

    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 12, (200, 30), generator=g).float()
    scores[:, 0] = float("-inf")
    targets = torch.randint(1, 30, (200,), generator=g)
    full = rank_of_target(scores, targets)
    k = 8
    vals, ids = scores.topk(k, dim=1)
    got = rank_in_top_k(ids, vals, targets)
    assert ((got == full) | (got > k - 1) & (full >= k)).all()
    assert (got < k).sum() > 20 and (got == k + 1).sum() > 20                   # both sides are exercised


def test_compute_metrics_refuses_cutoffs_above_the_items_ranked():
    """Given the number of items ranked, a cut-off above it is an error naming both (HR@K would be 1 whatever the
    model: the QA's HR@50 = HR@1000 = 1.0 on a 49-item catalogue); without n_items the ranks alone cannot tell."""
    from zoo.metrics import check_cutoffs

    assert compute_metrics([1, 9], ks=(5, 9), n_items=9)["HR@9"] == 1.0
    with pytest.raises(ValueError, match=r"cut-off @50: the evaluation ranks 49 items; use cut-offs <= 49"):
        compute_metrics([1, 9], ks=(10, 50), n_items=49)
    assert compute_metrics([1, 9], ks=(10, 50))["HR@50"] == 1.0
    assert check_cutoffs((3, 1), 3, "model") == [3, 1]
    with pytest.raises(ValueError, match=r"cut-off @4: the model ranks 3 items; use cut-offs <= 3"):
        check_cutoffs([4], 3, "model")
    with pytest.raises(ValueError, match=r"cut-offs must be >= 1"):
        check_cutoffs([0], 3)


def test_ranks_must_be_whole_finite_numbers():
    """A NaN rank compared False with every cut-off and counted as a miss (and `min() < 1` missed it: NaN < 1 is
    False); a fractional rank gave fractional metrics (MRR@2 = 0.667 for rank 1.5)."""
    from zoo.metrics import bootstrap_interval

    for ranks, shown in (([1, float("nan")], r"ranks\[1\] is nan"), ([1.5], r"ranks\[0\] is 1.5"),
                         (torch.tensor([2.0, float("inf")]), r"ranks\[1\] is inf")):
        with pytest.raises(ValueError, match=rf"ranks must be whole numbers >= 1; {shown}"):
            compute_metrics(ranks, [1, 2])
        with pytest.raises(ValueError, match="ranks must be whole numbers"):
            hit_at_k(ranks, 1)
    with pytest.raises(ValueError, match="ranks must be whole numbers"):
        bootstrap_interval(np.array([1.0, np.nan] * 50), n_boot=100)
    assert compute_metrics(np.array([1.0, 3.0]), [1])["HR@1"] == 0.5        # whole floats are ranks


def test_float_targets_cutoffs_and_k_are_refused_not_truncated():
    """rank_of_target read target 1.9 as item 1, check_cutoffs([2.7]) gave [2], compute_metrics(ks=[2.5]) HR@2."""
    from zoo.metrics import check_cutoffs

    with pytest.raises(ValueError, match=r"targets must be integer item indices, got torch.float32"):
        rank_of_target(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([1.9]))
    with pytest.raises(ValueError, match=r"targets must be integer item indices, got torch.float64"):
        rank_of_target(torch.tensor([[1.0, 2.0, 3.0]]), np.array([1.0]))
    assert rank_of_target(torch.tensor([[1.0, 2.0, 3.0]]), np.array([1], dtype=np.int32)).tolist() == [2]
    for ks in ([2.7], [2, 0.5], [True]):
        with pytest.raises(ValueError, match=r"cut-offs must be whole numbers, got"):
            check_cutoffs(ks, 3)
        with pytest.raises(ValueError, match=r"cut-offs must be whole numbers, got"):
            compute_metrics([1, 2], ks)
    assert check_cutoffs([2.0, np.int64(3), "1"], 3) == [2, 3, 1]
    with pytest.raises(ValueError, match=r"cut-offs must be whole numbers, got 1.5"):
        history_in_top_k(torch.zeros(1, 3), torch.zeros(1, 1, dtype=torch.long), 1.5)


def test_top_k_breaks_ties_by_the_lower_item_index_as_onnx_topk():
    """torch.topk leaves tied items' order (and which enter at slot k) unspecified; zoo.metrics.top_k takes the lower
    index first, ONNX TopK's rule, so Python and the exported graphs recommend the same tied items in one order."""
    from zoo.metrics import top_k

    g = torch.Generator().manual_seed(7)
    for _ in range(300):                                    # fresh random small-integer scores: many exact ties
        V = int(torch.randint(1, 40, (1,), generator=g))
        x = torch.randint(0, 4, (5, V), generator=g).float()
        x[torch.rand(5, V, generator=g) < 0.2] = float("-inf")
        k = int(torch.randint(1, V + 1, (1,), generator=g))
        values, indices = top_k(x, k)
        for b in range(5):
            assert indices[b].tolist() == sorted(range(V), key=lambda j: (-x[b, j].item(), j))[:k]
        assert torch.equal(values, torch.topk(x, k).values)
    x = torch.full((2, 9), 1.0)
    assert top_k(x, 3).indices.tolist() == [[0, 1, 2]] * 2 and top_k(x, 5).indices[0, :3].tolist() == [0, 1, 2]
    nan = torch.tensor([[1.0, float("nan"), 2.0, float("nan")]])
    assert top_k(nan, 3).indices.tolist() == [[1, 3, 2]]  # NaN above every number, as torch.topk; NaNs tie
    y = torch.randn(3, 6, 4)                                # another axis, no ties: the same as torch.topk
    r, t = top_k(y, 2, dim=1), torch.topk(y, 2, dim=1)
    assert torch.equal(r.values, t.values) and torch.equal(r.indices, t.indices)


def test_onnx_topk_breaks_ties_as_top_k():
    """The reference rule above is ONNX Runtime's: a TopK node on the same tied scores gives the same indices."""
    pytest.importorskip("onnx", reason="onnx not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from onnx import TensorProto, helper

    from zoo.metrics import top_k

    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, largest=1, sorted=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None]),
                                            helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("v", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("i", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randint(0, 3, (64, 50), generator=torch.Generator().manual_seed(3)).float()
    for k in (1, 7, 20, 50):
        _, ids = sess.run(None, {"x": x.numpy(), "k": np.array([k], np.int64)})
        assert ids.tolist() == top_k(x, k).indices.tolist()
