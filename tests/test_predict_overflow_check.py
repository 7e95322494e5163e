"""``SeqRecPreTrainedModel.predict`` refuses scores that are NaN or infinite at a real item (an overflow: NaN is
ranked first by ``torch.topk``), naming the batch rows, from each row's max and min (NaN propagating) -- not from
``torch.isfinite`` over the whole ``[B, n_items]`` scores, whose float and bool copies took 1.7 GB at 256 x 10^6 items
(bench/RESULTS_EVAL_MEMORY.md). Column 0 is padding: what it holds is no overflow."""

import math

import pytest
import torch

from tiny_models import TINY
from zoo.models import MODELS
from zoo.modeling_utils import ScoreOverflow

N_ITEMS = 50


def _gru(n_items: int):
    cfg_cls, model_cls = MODELS["gru4rec"]
    torch.manual_seed(0)
    return model_cls(cfg_cls(n_items=n_items, max_seq_length=6, **TINY["gru4rec"])).eval()


def _model_scoring(monkeypatch, logits: torch.Tensor):
    """A tiny GRU4Rec whose forward returns ``logits [B, N_ITEMS]``."""
    model = _gru(logits.shape[1])
    real_forward = model.forward

    def forward(*args, **kw):
        out = real_forward(*args, **kw)
        out.logits = logits.clone()
        return out

    monkeypatch.setattr(model, "forward", forward)
    return model


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("rows", [[0], [2], [1, 3]])
def test_a_nan_or_infinite_real_score_is_refused_naming_its_rows(monkeypatch, bad, rows):
    torch.manual_seed(len(rows))
    logits = torch.randn(4, N_ITEMS)
    for r in rows:
        logits[r, 1 + (7 * r) % (N_ITEMS - 1)] = bad                      # one real item per bad row
    model = _model_scoring(monkeypatch, logits)
    ids = torch.randint(1, N_ITEMS, (4, 5))
    with pytest.raises(ScoreOverflow, match=r"NaN or infinite in batch rows " + str(rows).replace("[", r"\[")) as e:
        model.predict(ids, torch.ones_like(ids, dtype=torch.bool))
    assert e.value.rows == rows


def test_finite_scores_and_the_padding_column_pass(monkeypatch):
    logits = torch.randn(3, N_ITEMS)
    logits[:, 0] = math.nan                                              # padding: overwritten with -inf
    logits[1, 5] = 3.0e38                                                # large, but a number
    model = _model_scoring(monkeypatch, logits)
    ids = torch.randint(1, N_ITEMS, (3, 4))
    scores = model.predict(ids, torch.ones_like(ids, dtype=torch.bool))
    assert torch.isneginf(scores[:, 0]).all()
    assert torch.equal(scores[:, 1:], logits[:, 1:])


def test_the_check_makes_no_copy_of_the_scores(monkeypatch):
    """The finiteness check runs over [B] row maxima and minima, not over the [B, n_items] scores."""
    n = 20_000
    logits = torch.randn(4, n)
    model = _gru(n)
    real_forward = model.forward

    def forward(*args, **kw):
        out = real_forward(*args, **kw)
        out.logits = logits                                              # no clone: the predict's own tensor
        return out

    monkeypatch.setattr(model, "forward", forward)
    seen = []
    real_isfinite = torch.isfinite

    def isfinite(t):
        seen.append(t.numel())
        return real_isfinite(t)

    monkeypatch.setattr(torch, "isfinite", isfinite)
    ids = torch.randint(1, n, (4, 3))
    model.predict(ids, torch.ones_like(ids, dtype=torch.bool))
    assert seen and max(seen) <= 4, f"torch.isfinite ran over {max(seen)} elements: a whole-score copy"
