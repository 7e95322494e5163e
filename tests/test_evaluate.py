"""evaluate_model and the zoo-evaluate CLI on a tiny deterministic model with known ranks."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel

from zoo.data import EvalExamples, build_sequences, leave_one_out, Interactions
from zoo.evaluate import evaluate_model, main
from zoo.modeling_utils import SeqRecConfig, SeqRecPreTrainedModel
from zoo.vocab import ItemVocab

M = 5  # real items 1..5


class NextItemConfig(SeqRecConfig):
    model_type = "test_next_item"

    def __init__(self, **kwargs):  # transformers 5: a config subclass needs its own __init__ to run the parent's
        super().__init__(**kwargs)


class NextItemModel(SeqRecPreTrainedModel):
    """After last item x the preference order is x+1, x+2, ... (cyclic over 1..M): rank(t | x) = (t - x - 1) % M + 1.

    Scores are a fixed table lookup of the last item (hidden = table row, score = identity), so no ties.
    """

    config_class = NextItemConfig

    def __init__(self, config):
        super().__init__(config)
        self.table = torch.nn.Embedding(config.n_items, config.n_items)
        self.post_init()
        with torch.no_grad():
            for x in range(1, config.n_items):
                for j in range(1, config.n_items):
                    self.table.weight[x, j] = -float((j - x - 1) % (config.n_items - 1))
                self.table.weight[x, 0] = 100.0          # padding logit: predict() must mask it

    def encode(self, input_ids, attention_mask, timestamps=None):
        return self.table(input_ids)

    def score(self, hidden):
        return hidden


class LeftNextItemModel(NextItemModel):
    padding_side = "left"


AutoConfig.register(NextItemConfig.model_type, NextItemConfig, exist_ok=True)
AutoModel.register(NextItemConfig, NextItemModel, exist_ok=True)


def expected_rank(hist, target, exclude=(), n=M):
    x = hist[-1]
    order = [(x + d) % n + 1 for d in range(n)]       # x+1, x+2, ... cyclic in 1..n
    order = [i for i in order if i not in exclude or i == target]
    return order.index(target) + 1 if target not in exclude else None


# internal-index sequences: test ranks 1, 2, 4 (see expected_rank)
SEQS = [[1, 2, 3, 4], [5, 1, 3], [2, 4, 1, 5]]


def examples():
    x = Interactions(np.repeat([1, 2, 3], [len(s) for s in SEQS]), np.concatenate(SEQS))
    ds = build_sequences(x)
    ds = ds.reencode(ItemVocab(list(range(1, M + 1))))       # internal index == external id
    return leave_one_out(ds)


def metrics_of(ranks, ks):
    r = np.asarray(ranks, float)
    out = {}
    for k in ks:
        out[f"HR@{k}"] = float(np.mean(r <= k))
        out[f"NDCG@{k}"] = float(np.mean(np.where(r <= k, 1 / np.log2(r + 1), 0)))
        out[f"MRR@{k}"] = float(np.mean(np.where(r <= k, 1 / r, 0)))
    return out


@pytest.mark.parametrize("cls", [NextItemModel, LeftNextItemModel])
def test_evaluate_model_known_ranks(cls):
    model = cls(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    sp = examples()
    assert [expected_rank(list(h), t) for h, t in zip(sp.test.histories, sp.test.targets)] == [1, 2, 4]
    m, ranks = evaluate_model(model, sp.test, ks=(1, 3), progress=False, return_ranks=True)
    assert ranks.tolist() == [1, 2, 4]
    for k, v in metrics_of([1, 2, 4], (1, 3)).items():
        assert m[k] == pytest.approx(v), k
    assert m["NDCG@3"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    # batch size does not change anything
    assert evaluate_model(model, sp.test, ks=(1, 3), progress=False, batch_size=1) == m
    # valid split: histories [1,2]->3, [5]->1, [2,4]->1
    _, vr = evaluate_model(model, sp.valid, ks=(1,), progress=False, return_ranks=True)
    assert vr.tolist() == [1, 1, 2]


def test_exclude_history_uses_the_window():
    sp = examples()
    model = NextItemModel(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    _, r = evaluate_model(model, sp.test, ks=(1,), exclude_history=True, progress=False, return_ranks=True)
    assert r.tolist() == [1, 2, 2]        # user 3: items 2 and 4 above target 5 are in the history
    # window of 2: user 3's window is [4, 1], so item 2 is no longer excluded -> rank 3
    small = NextItemModel(NextItemConfig(n_items=M + 1, max_seq_length=2, hidden_size=M + 1))
    _, r2 = evaluate_model(small, sp.test, ks=(1,), exclude_history=True, progress=False, return_ranks=True)
    assert r2.tolist() == [1, 2, 3]


def test_evaluate_errors():
    model = NextItemModel(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    bad = EvalExamples([np.array([1])], np.array([M + 3]), ["u"])
    with pytest.raises(ValueError, match="out of range"):
        evaluate_model(model, bad, progress=False)
    with pytest.raises(ValueError, match="no evaluation examples"):
        evaluate_model(model, EvalExamples([], np.zeros(0, np.int64), []), progress=False)


def save_model(tmp_path, vocab_items):
    model = NextItemModel(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    model.set_item_vocab(ItemVocab(vocab_items))
    d = tmp_path / "model"
    model.save_pretrained(d)
    return d


def test_cli_maps_ids_through_model_vocab(tmp_path, capsys):
    d = save_model(tmp_path, [10, 20, 30, 40, 50])           # external 10*i -> internal i
    # the file's first-appearance order (20, 40, 10, 50, 30) differs from the model's vocabulary
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n3\t20 40 10 50\n1\t10 20 30 40\n2\t50 10 30\n")
    out = tmp_path / "res" / "r.json"
    res = main(["--model", str(d), "--data", str(data), "--ks", "1", "3", "--json", str(out), "--no-progress"])
    want = metrics_of([4, 1, 2], (1, 3))
    for k, v in want.items():
        assert res["metrics"][k] == pytest.approx(v)
    saved = json.loads(out.read_text())
    assert saved["n_users"] == 3 and saved["protocol"]["split"] == "test" and saved["protocol"]["kcore"] is None
    assert saved["model_type"] == "test_next_item" and saved["data"].endswith("d.seq")
    text = capsys.readouterr().out
    assert "HR" in text and "NDCG" in text and "@3" in text
    # valid split, history exclusion, first user only
    res = main(["--model", str(d), "--data", str(data), "--split", "valid", "--exclude-history", "--max-users", "1",
                "--ks", "1", "--no-progress"])
    assert res["n_users"] == 1 and res["protocol"]["name"] == "lrurec"


def test_cli_inter_file_and_unknown_items(tmp_path):
    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    data = tmp_path / "d.inter"
    data.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                    "1\t10\t1\n1\t20\t2\n1\t30\t3\n1\t40\t4\n")
    res = main(["--model", str(d), "--data", str(data), "--kcore", "none", "--ks", "1", "--no-progress"])
    assert res["metrics"]["HR@1"] == 1.0
    data.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                    "1\t10\t1\n1\t60\t2\n1\t70\t3\n1\t40\t4\n")
    with pytest.raises(KeyError, match=r"2 of the 4 items .*not in the model's item vocabulary"):
        main(["--model", str(d), "--data", str(data), "--kcore", "none", "--no-progress"])
