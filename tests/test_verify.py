"""export.verify's judgement of non-finite numbers: a NaN state fails the verification whichever state tensor holds it,
and the report's summary keeps it (tests/test_export_onnx.py covers the verifier on the exported graphs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export import onnx as E
from export import verify as V
from zoo.models.lrurec import LRURecConfig, LRURecModel

pytestmark = pytest.mark.usefixtures("one_thread")

#: small verification sizes: priming 8 + 4 single steps, 16 top-k rows
FAST = dict(prime_len=8, n_steps=4, batch=2, topk_cases=16, topk_prime=8)


@pytest.fixture(scope="module")
def lrurec(tmp_path_factory):
    """(model, ExportResult) of a tiny LRURec step graph: two states, ``lru_state_re`` then ``lru_state_im``."""
    torch.manual_seed(0)
    model = LRURecModel(LRURecConfig(n_items=40, hidden_size=8, num_layers=1)).eval()
    res = E.export_model(model, tmp_path_factory.mktemp("lrurec"), topk=5, verify=False)
    assert [i["name"] for i in res.spec["inputs"]][1:] == ["lru_state_re", "lru_state_im"]
    return model, res


class _NaNState:
    """ONNX Runtime on the graph, with ``state``'s output set to NaN in every single-step answer (T = 1): the last
    answer of random/topk then has a NaN state and correct scores."""

    def __init__(self, graph, state):
        self.sess, self.state = V.scores_session(graph), state

    def run(self, names, feeds):
        out = self.sess.run(names, feeds)
        if feeds["item_ids"].shape[1] == 1:
            i = names.index(f"{self.state}_out")
            out[i] = np.full_like(out[i], np.nan)
        return out


@pytest.mark.parametrize("state", ["lru_state_re", "lru_state_im"])
def test_a_nan_state_fails_whichever_state_holds_it(lrurec, state):
    """The state error was Python's max() over the states' errors, which keeps a NaN only when it comes first: a NaN
    in lru_state_im (the second state) gave the error of lru_state_re, and random/topk passed with a NaN state."""
    model, res = lrurec
    rep = V.verify_export(model, res.graph_path, res.spec, runner=_NaNState(res.graph_path, state), **FAST)
    topk = {c.name: c for c in rep.cases}["random/topk"]
    assert topk.max_abs_err <= V.SCORE_ATOL, rep.table()              # its scores are right: only the state is NaN
    assert np.isnan(topk.state_err) and not topk.ok and topk.reason == "state error nan > 0.001", rep.table()
    assert not rep.ok
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["passed"] is False and np.isnan(d["state_err"])
    clean = V.verify_export(model, res.graph_path, res.spec, **FAST)  # the control: the same graph, untouched
    assert clean.ok and clean.to_dict()["state_err"] < V.STATE_ATOL, clean.table()


def test_report_summary_keeps_a_nan_of_any_case():
    """to_dict's worst errors keep a NaN in any case, not only in the first one."""
    good = V.CaseResult("a", 1e-5, 1e-5, 1.0, 10, 2e-4)
    nan = V.CaseResult("b", float("nan"), float("nan"), float("nan"), 10, float("nan"), topk_overlap=float("nan"))
    for cases in ([good, nan], [nan, good]):
        d = V.VerifyReport("step", "m", cases).to_dict()
        assert all(np.isnan(d[k]) for k in ("max_abs_err", "max_rel_err", "topk_agreement", "topk_overlap",
                                            "state_err")), d
    d = V.VerifyReport("step", "m", [good]).to_dict()
    assert (d["max_abs_err"], d["topk_agreement"], d["topk_overlap"], d["state_err"]) == (1e-5, 1.0, None, 2e-4)
    assert V.VerifyReport("step", "m", []).to_dict()["state_err"] is None


def test_overlap_counts_items_tied_at_the_kth_score_as_found():
    """With --exclude-seen, a row with fewer than k unseen items fills its last slots with items of the history, all
    at SEEN_SCORE: which of them the graph returns is not defined, yet the overlap counted PyTorch's choice only, so
    an exact graph scored below 1 at 100% ordered agreement (0.96-0.99 on random histories), eating the int8
    criterion's margin. Ties at the k-th score (within SCORE_ATOL) now count as found, as _rows_agree counts them;
    a real miss, or an item PyTorch does not rank at all (-inf), still does not."""
    from export.runtime import SEEN_SCORE

    seen = np.float32(SEEN_SCORE)
    ref = np.full((4, 12), seen, np.float32)                    # items 1..11; column 0 is padding
    ref[:, 0] = -np.inf
    ref[:, 1:4] = [[3.0, 2.0, 1.0]]                             # three unseen items, then the history at SEEN_SCORE
    ref_ids = V._topk_ref(ref, 5)
    tail = [i for i in range(4, 12) if i not in ref_ids[0, 3:]]
    graph = np.array([[1, 2, 3, *tail[:2]],                     # other seen items than PyTorch's: a tie, found
                      [1, 2, 3, *ref_ids[0, 3:]],              # PyTorch's own choice
                      [1, 2, 3, *tail[:2]],
                      [1, 2, 3, *tail[:2]]], np.int64)
    ref[2, tail[:2]] = -np.inf                                  # row 2: the graph's tail is not ranked by PyTorch
    ref[3, 4:] = 0.5                                            # row 3: one of them a real miss (1e-3 below)...
    ref[3, tail[0]] = 0.5 - 1e-3
    ref[3, tail[1]] = 0.5 - V.SCORE_ATOL / 2                    # ...the other within SCORE_ATOL: a tie
    ref_ids = V._topk_ref(ref, 5)
    assert V._rows_agree(graph[:2], ref[:2], 5, ref_ids[:2]).all()
    assert V._rows_overlap(graph, ref, 5, ref_ids).tolist() == [1.0, 1.0, 0.6, 0.8]
