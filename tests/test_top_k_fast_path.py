"""zoo.metrics.top_k's fast path (the set of a row fixed by ``torch.topk(k + 1)`` when its k-th score is strictly above
its (k + 1)-th; only rows tied or NaN at slot k resolved by [R, V] masks) against the implementation it replaced, kept
in bench/bench_rank.py as ``old_top_k``: bit-identical values and indices on inputs full of ties, -inf / +inf blocks,
NaNs and signed zeros, every float dtype, k = 1 .. V, any item axis and batch shape."""

import pytest
import torch

import zoo.metrics as M
from bench.bench_rank import old_top_k as reference_top_k   # top_k before the fast path, kept there for the bench
from zoo.metrics import top_k

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
        torch.bfloat16: torch.int16}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no CUDA device: the CUDA path is not run"))]


def hostile_scores(shape, seed: int, dtype, device="cpu", spread: int = 3) -> torch.Tensor:
    """``shape`` (items last) of integers in ``-spread..spread`` (3: ties at nearly every slot; 10**4: few, so most
    rows take the fast path), with ``-inf`` blocks and
    scattered ``-inf``, a few ``+inf`` and NaNs, signed zeros, and whole rows of one value, of ``-inf`` and of NaN."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(-spread, spread + 1, shape, generator=g).double()
    v = shape[-1]
    s[torch.rand(shape, generator=g) < 0.15] = float("-inf")
    s[..., v // 3: v // 3 + max(1, v // 4)] = float("-inf")                 # a masked block
    s[torch.rand(shape, generator=g) < 0.03] = float("inf")
    s[torch.rand(shape, generator=g) < 0.05] = float("nan")
    zeros = s == 0
    s[zeros & (torch.rand(shape, generator=g) < 0.5)] = -0.0
    flat = s.view(-1, v)
    if flat.shape[0] >= 6:
        flat[0] = 1.0                                                         # one tie group over the whole row
        flat[1] = float("-inf")
        flat[2] = float("nan")
        flat[3] = torch.randperm(v, generator=g).double()                     # no tie at all
        flat[4, : v // 2] = float("nan")                                      # NaN groups straddling slot k
    return s.to(dtype).to(device)


def assert_same(got, want, what):
    gv, gi = got
    wv, wi = want
    assert gi.dtype == wi.dtype == torch.int64 and torch.equal(gi, wi), what
    assert gv.dtype == wv.dtype and gv.shape == wv.shape, what
    bits = BITS.get(gv.dtype)
    assert torch.equal(gv.view(bits), wv.view(bits)) if bits else torch.equal(gv, wv), what


def ks(v: int):
    """k = 1, 2, 3, V/2, V-2, V-1 and V (those in 1..V)."""
    return sorted(k for k in {1, 2, 3, v // 2, v - 2, v - 1, v} if 1 <= k <= v)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("v", [1, 2, 9, 64, 300])
@pytest.mark.parametrize("spread", [3, 10**4])
def test_bit_identical_to_the_reference_on_hostile_scores(device, dtype, v, spread):
    for seed in range(3):
        s = hostile_scores((12, v), seed * 1000 + v, dtype, device, spread)
        for k in ks(v):
            assert_same(top_k(s, k), reference_top_k(s, k), (seed, k))
            assert_same(top_k(s, k, dim=1), reference_top_k(s, k, dim=1), (seed, k))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bit_identical_on_any_item_axis_and_batch_shape(device, dtype):
    """Items on axis 0 of [V, B], on the middle axis of [2, V, 3], batched [2, 3, V], a transposed (non-contiguous)
    tensor, an empty batch, and a 1-D row."""
    v = 40
    base = hostile_scores((2, 3, v), 7, dtype, device)
    cases = [(base, -1), (base.movedim(-1, 1).contiguous(), 1), (base.reshape(6, v).t(), 0),
             (base.reshape(6, v).t().contiguous(), 0), (base[:0], -1), (base[0, 0], 0)]
    for n, (s, dim) in enumerate(cases):
        for k in ks(v):
            assert_same(top_k(s, k, dim=dim), reference_top_k(s, k, dim=dim), (n, k))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32], ids=str)
def test_integer_scores_bit_identical(dtype):
    g = torch.Generator().manual_seed(5)
    s = torch.randint(-2, 3, (10, 50), generator=g).to(dtype)
    s[3] = torch.randperm(50, generator=g).to(dtype)
    for k in ks(50):
        assert_same(top_k(s, k), reference_top_k(s, k), k)


def test_only_rows_tied_at_slot_k_build_row_masks(monkeypatch):
    """The [R, V] masks (counted by _count_true) are made only for the rows whose k-th and (k+1)-th scores tie (or are
    NaN): none for rows of distinct scores, only the tied rows' otherwise -- and the result stays the reference's."""
    counted = []
    real = M._count_true
    monkeypatch.setattr(M, "_count_true", lambda mask: counted.append(tuple(mask.shape)) or real(mask))
    g = torch.Generator().manual_seed(11)
    s = torch.stack([torch.randperm(500, generator=g) for _ in range(8)]).float()
    for k in (1, 10, 499):
        assert_same(top_k(s, k), reference_top_k(s, k), k)
    assert counted == []
    s[2, :] = 0.0                                                             # every item tied
    s[5, 7] = s[5, 100] = 1000.0                                              # tied at slots 1 and 2
    s[6, 9] = float("nan")                                                    # NaN at slot 1: left to the masks
    assert_same(top_k(s, 1), reference_top_k(s, 1), "k=1")
    assert counted and all(shape == (3, 500) for shape in counted), counted
    counted.clear()
    assert_same(top_k(s, 2), reference_top_k(s, 2), "k=2")
    assert counted and all(shape == (1, 500) for shape in counted), counted  # row 5 is settled at k=2, row 6 too


def test_gradient_flows_to_the_chosen_items_as_before():
    g = torch.Generator().manual_seed(3)
    base = torch.randint(-2, 3, (4, 30), generator=g).float()
    grads = []
    for fn in (top_k, reference_top_k):
        s = base.clone().requires_grad_(True)
        fn(s, 5)[0].mul(torch.arange(5.0)).sum().backward()
        grads.append(s.grad)
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


def test_k_above_the_items_is_still_refused():
    with pytest.raises(RuntimeError):
        top_k(torch.zeros(2, 4), 5)
