"""rank_of_target's CPU path (numpy, a block of RANK_BLOCK elements at a time) against a plain reference and against
its torch path (CUDA tensors, integer scores): the same ranks for both tie rules, every float dtype, any layout and
block size, -inf / +inf scores, and NaN refused wherever it sits."""

import numpy as np
import pytest
import torch

import zoo.metrics as M
from zoo.metrics import rank_of_target

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def reference(scores: torch.Tensor, targets: torch.Tensor, ties: str) -> list[int]:
    """The rank by its definition, one row at a time in Python floats (exact for every dtype here)."""
    out = []
    for row, tgt in zip(scores.double().tolist(), targets.tolist()):
        s = row[tgt]
        out.append(sum(x >= s for x in row) if ties == "pessimistic" else 1 + sum(x > s for x in row))
    return out


def tied_scores(b: int, v: int, seed: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``[b, v]`` small integers cast to ``dtype`` (many exact ties, exactly representable in every dtype), column 0
    (padding) and some items at ``-inf``, a few at ``+inf``; ``[b]`` targets, some of them on ``-inf`` / ``+inf``."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(-4, 5, (b, v), generator=g).double()
    s[torch.rand(b, v, generator=g) < 0.1] = float("-inf")
    s[torch.rand(b, v, generator=g) < 0.02] = float("inf")
    s[:, 0] = float("-inf")
    targets = torch.randint(0, v, (b,), generator=g)
    return s.to(dtype), targets


def layouts(s: torch.Tensor):
    """The same values as a contiguous, a transposed (column-major), a column-sliced and a row-expanded tensor."""
    yield "contiguous", s, None
    yield "transposed", s.t().contiguous().t(), None
    wide = torch.zeros(s.shape[0], 2 * s.shape[1], dtype=s.dtype)
    wide[:, ::2] = s
    yield "every-other-column", wide[:, ::2], None
    yield "expanded", s[:1].expand(s.shape[0], -1), s[:1].expand(s.shape[0], -1).contiguous()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("block", [1, 7, 37, 38, 3 * 37 + 1, 2**16])
@pytest.mark.parametrize("by_row", [True, False])
def test_cpu_path_matches_the_reference_for_every_dtype_layout_and_block(monkeypatch, dtype, ties, block, by_row):
    """Blocks of 1 element, part of a row (7), exactly a row (37, 38: one more), several rows and a remainder, all
    rows; counted a row at a time (np.count_nonzero) or a block at a time (uint8 sums); the layouts are read as they
    are (strided numpy views), not copied whole."""
    monkeypatch.setattr(M, "RANK_BLOCK", block)
    monkeypatch.setattr(M, "_COUNT_BY_ROW_FROM", 0 if by_row else 10**9)
    s, targets = tied_scores(9, 37, seed=block, dtype=dtype)
    for name, x, same in layouts(s):
        want = reference(x if same is None else same, targets, ties)
        got = rank_of_target(x, targets, ties=ties)
        assert got.dtype == torch.int64 and got.tolist() == want, name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", range(4))
def test_cpu_path_equals_the_torch_path(monkeypatch, dtype, seed):
    """The numpy count and the torch count (what a CUDA tensor gets) give the same ranks, both tie rules, on scores
    with many ties, masked and +inf items (a wider catalogue than a block: 3 column blocks a row; counted by row
    for odd seeds)."""
    s, targets = tied_scores(16, 500, seed=seed, dtype=dtype)
    monkeypatch.setattr(M, "RANK_BLOCK", 200)
    monkeypatch.setattr(M, "_COUNT_BY_ROW_FROM", 0 if seed % 2 else 10**9)
    fast = {ties: rank_of_target(s, targets, ties=ties) for ties in ("pessimistic", "optimistic")}
    monkeypatch.setattr(M, "_NUMPY_RANK_DTYPES", ())                # every dtype by torch
    for ties, got in fast.items():
        assert torch.equal(got, rank_of_target(s, targets, ties=ties)), ties


def test_special_targets_empty_batches_and_grad():
    """A target on -inf ranks V (last, with every masked item), on +inf ranks after the +inf items tied with it (or
    first, optimistic); an empty batch gives an empty int64 tensor for every dtype; scores that require grad rank."""
    inf = float("inf")
    s = torch.tensor([[-inf, 1.0, inf, inf, -inf], [-inf, 1.0, inf, 0.0, 2.0]])
    for dtype in DTYPES:
        x = s.to(dtype)
        assert rank_of_target(x, torch.tensor([4, 2])).tolist() == [5, 1]
        assert rank_of_target(x, torch.tensor([2, 1])).tolist() == [2, 3]
        assert rank_of_target(x, torch.tensor([2, 0]), ties="optimistic").tolist() == [1, 5]
        empty = rank_of_target(x[:0], torch.zeros(0, dtype=torch.long))
        assert empty.dtype == torch.int64 and empty.shape == (0,)
    assert rank_of_target(s.clone().requires_grad_(), torch.tensor([1, 4])).tolist() == [3, 2]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("where", [(0, 0), (5, 36), (8, 20)])
def test_nan_anywhere_is_refused_with_any_block(monkeypatch, dtype, where):
    """The NaN check goes with the count, a block at a time: a NaN in the first, a middle or the last block of a
    row (not the target's) is a ValueError, as a whole-matrix check made it."""
    monkeypatch.setattr(M, "RANK_BLOCK", 10)
    s, targets = tied_scores(9, 37, seed=1, dtype=dtype)
    s[where] = float("nan")
    targets[where[0]] = 1 if where[1] != 1 else 2
    with pytest.raises(ValueError, match="NaN"):
        rank_of_target(s, targets)


def test_big_catalogue_rows_are_counted_by_column_blocks():
    """A row longer than RANK_BLOCK (the default) is counted in column blocks: ranks of a 3-row, 3 * RANK_BLOCK + 5
    catalogue with ties straddling the blocks agree with numpy's whole-matrix count."""
    v = 3 * M.RANK_BLOCK + 5
    g = torch.Generator().manual_seed(3)
    s = torch.randint(0, 50, (3, v), generator=g).float()
    targets = torch.tensor([0, v - 1, M.RANK_BLOCK])
    t = s.gather(1, targets[:, None]).numpy()
    want = np.count_nonzero(s.numpy() >= t, axis=1)
    assert rank_of_target(s, targets).tolist() == want.tolist()


def test_rank_bench_runs(tmp_path):
    """bench/bench_rank.py end to end on tiny sizes: a row per catalogue and thread count, every count (old, new,
    the candidates) checked to give rank_of_target's ranks; its old count is the torch formula, both tie rules."""
    from bench import bench_rank

    out = tmp_path / "r.md"
    bench_rank.main(["--batch", "5", "--catalogues", "40", "3000", "--threads", "1", "2", "--repeats", "2",
                     "--candidates", "--markdown", str(out)])
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith("| 5 x ")]
    assert [(r[0], r[1]) for r in rows] == [("5 x 40", "1"), ("5 x 40", "2"), ("5 x 3,000", "1"), ("5 x 3,000", "2")]
    assert all(len(r) == 5 + len(bench_rank.CANDIDATES) for r in rows)
    s, targets = tied_scores(6, 30, seed=0, dtype=torch.float32)
    for ties in ("pessimistic", "optimistic"):
        assert bench_rank.old_rank(s, targets, ties).tolist() == reference(s, targets, ties)


@pytest.mark.parametrize("v", [30, 3000])
@pytest.mark.parametrize("by_row", [True, False])
def test_top_k_counts_with_numpy_and_keeps_its_tie_rule(monkeypatch, v, by_row):
    """top_k's row counts (numpy's on the CPU, a row at a time or as uint8 sums) keep its rule: the values of
    torch.topk, tied items by the lower index first, in which enter at slot k too; many ties, -inf / +inf items."""
    from zoo.metrics import _count_true, top_k

    monkeypatch.setattr(M, "_COUNT_BY_ROW_FROM", 0 if by_row else 10**9)
    s, _ = tied_scores(6, v, seed=v, dtype=torch.float32)
    for k in (1, 7, v // 2, v):
        values, indices = top_k(s, k, dim=1)
        want = np.stack([np.lexsort((np.arange(v), -row))[:k] for row in s.numpy()])
        assert indices.tolist() == want.tolist() and torch.equal(values, torch.topk(s, k, dim=1).values), k
    mask = torch.rand(5, v) < 0.3
    assert _count_true(mask).tolist() == mask.sum(1).tolist() and _count_true(mask[:0]).shape == (0,)
