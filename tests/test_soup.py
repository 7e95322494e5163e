"""zoo.soup: weight averages of checkpoints of one model, chosen on validation."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import TINY, _markov_file  # noqa: E402

from zoo.soup import average_state_dicts, check_ingredients, main, make_soup  # noqa: E402
from zoo.train import main as train_main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_average_state_dicts():
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.float16), "i": torch.tensor([3, 4])}
    b = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([2.0], dtype=torch.float16), "i": torch.tensor([3, 4])}
    avg = average_state_dicts([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and avg["h"].dtype == torch.float16
    assert float(avg["h"]) == 1.5 and torch.equal(avg["i"], a["i"])
    with pytest.raises(ValueError, match="non-floating tensor 'i' differs"):
        average_state_dicts([a, {**b, "i": torch.tensor([3, 5])}])
    with pytest.raises(ValueError, match="no state dicts"):
        average_state_dicts([])


def test_greedy_keeps_an_ingredient_only_if_the_soup_does_not_drop():
    """Ingredients scored alone, sorted best first; each next one is kept only if the soup's score does not drop.
    Scores here: the mean weight itself (the best soup is the one with the highest average)."""
    sds = {n: {"w": torch.tensor([v])} for n, v in (("a", 5.0), ("b", 9.0), ("c", 1.0), ("d", 8.0))}
    score = lambda sd: float(sd["w"])                                   # noqa: E731
    soup, rows, best = make_soup(sds, score, "greedy")
    assert [(r["path"], r["in_soup"]) for r in rows] == [("b", True), ("d", False), ("a", False), ("c", False)]
    assert best == 9.0 and float(soup["w"]) == 9.0
    sds["d"]["w"] = torch.tensor([9.0])                                  # a tie keeps the ingredient
    soup, rows, best = make_soup(sds, score, "greedy")
    assert [r["path"] for r in rows if r["in_soup"]] == ["b", "d"] and best == 9.0
    soup, rows, best = make_soup(sds, score, "uniform")
    assert all(r["in_soup"] for r in rows) and best == float(soup["w"]) == (5 + 9 + 1 + 9) / 4
    with pytest.raises(ValueError, match="method must be one of"):
        make_soup(sds, score, "best")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny SASRec runs on the same data (different seeds) and a GRU4Rec run."""
    tmp = tmp_path_factory.mktemp("soup")
    data = _markov_file(tmp / "markov.tsv", n_users=60)
    args = ["--data", str(data), "--epochs", "2", "--max-len", "20", "--batch-size", "16", "--lr", "5e-3",
            "--kcore", "0", "--no-progress"]
    for seed in (1, 2):
        train_main(args + ["--model", "sasrec", "--out", str(tmp / f"s{seed}"), "--seed", str(seed),
                           "--set", *TINY["sasrec"]])
    train_main(args + ["--model", "gru4rec", "--out", str(tmp / "g"), "--set", *TINY["gru4rec"]])
    return tmp, data


def test_soup_writes_the_average_and_its_log(runs, capsys):
    """The soup folder loads with from_pretrained; its weights are the mean of the kept ingredients' (each copied
    before scoring: a state_dict() holds the model's own tensors, which scoring overwrites); the log lists every
    ingredient with its validation NDCG@10, and the soup's score is the folder's validation NDCG@10."""
    from transformers import AutoModel

    from zoo.data import leave_one_out, load_dataset
    from zoo.evaluate import align_with_model, evaluate_model

    tmp, data = runs
    out = tmp / "soup"
    log = main(["--models", str(tmp / "s1"), str(tmp / "s2"), "--data", str(data), "--out", str(out), "--kcore", "0",
                "--method", "uniform"])
    assert "uniform soup of 2 of 2 checkpoints" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "item_vocab.json", "model.safetensors",
                                                      "soup_log.json"]
    assert json.loads((out / "soup_log.json").read_text()) == log
    assert [r["in_soup"] for r in log["ingredients"]] == [True, True]
    a, b, soup = (load_file(p / "model.safetensors") for p in (tmp / "s1", tmp / "s2", out))
    assert soup.keys() == a.keys()
    for k in a:
        torch.testing.assert_close(soup[k], (a[k] + b[k]) / 2, atol=1e-7, rtol=0)
    model = AutoModel.from_pretrained(str(out)).eval()
    ds, _ = align_with_model(load_dataset(str(data), kcore=0), model)
    valid = evaluate_model(model, leave_one_out(ds).valid, ks=(10,), progress=False)["NDCG@10"]
    assert valid == pytest.approx(log["valid_NDCG@10"], abs=1e-12)
    own = {r["path"]: r["valid_NDCG@10"] for r in log["ingredients"]}
    for name in ("s1", "s2"):
        m = AutoModel.from_pretrained(str(tmp / name)).eval()
        assert own[str(tmp / name)] == pytest.approx(
            evaluate_model(m, leave_one_out(ds).valid, ks=(10,), progress=False)["NDCG@10"], abs=1e-12)


def _refused(capsys, match, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and re.search(match, err), err


def test_soup_refusals(runs, capsys, tmp_path):
    """Checkpoints of different models or shapes, one checkpoint, an --out that holds files: refused, naming why; an
    --out refused keeps its files."""
    tmp, data = runs
    base = ["--data", str(data), "--kcore", "0"]
    _refused(capsys, "is a gru4rec model, .* a sasrec: a soup averages checkpoints of one model",
             ["--models", str(tmp / "s1"), str(tmp / "g"), "--out", str(tmp_path / "x"), *base])
    _refused(capsys, "at least two different checkpoints",
             ["--models", str(tmp / "s1"), str(tmp / "s1"), "--out", str(tmp_path / "x"), *base])
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "f.txt").write_text("mine")
    _refused(capsys, "already holds files .*--overwrite",
             ["--models", str(tmp / "s1"), str(tmp / "s2"), "--out", str(keep), *base])
    assert (keep / "f.txt").read_text() == "mine"


def test_check_ingredients_names_shape_and_vocabulary_differences(runs):
    from transformers import AutoModel

    from zoo.models.sasrec import SASRecConfig, SASRecModel
    from zoo.vocab import ItemVocab

    tmp, _ = runs
    s1 = AutoModel.from_pretrained(str(tmp / "s1"))
    wide = SASRecModel(SASRecConfig(**{**s1.config.to_dict(), "hidden_size": 32, "inner_size": 32}))
    with pytest.raises(ValueError, match="differ in the shape of"):
        check_ingredients([s1, wide], ["s1", "wide"])
    other = AutoModel.from_pretrained(str(tmp / "s2"))
    other.set_item_vocab(ItemVocab(list(reversed(s1.item_vocab.items))))
    with pytest.raises(ValueError, match="different item vocabularies"):
        check_ingredients([s1, other], ["s1", "other"])
    drop = AutoModel.from_pretrained(str(tmp / "s2"))
    drop.config.hidden_dropout = 0.3
    assert check_ingredients([s1, drop], ["s1", "s2"]) == ["s2: hidden_dropout = 0.3 (s1: 0.1); the soup keeps 0.1"]
