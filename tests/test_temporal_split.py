"""The global temporal split (``zoo.data.temporal_split``, ``--temporal-split`` of ``zoo.train`` / ``zoo.evaluate``):
hand-made data with known answers, no interaction at or after a cut ever trained on or seen before it is predicted,
a run's test metrics reproduced by ``zoo.evaluate``, and the tools that report leave-one-out refusing such runs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from test_train import _markov_file
from zoo.data import Interactions, load_dataset, temporal_cuts, temporal_split


def _ds():
    """Three users on one timeline (times 1..10); user c starts after the validation cut."""
    rows = [("a", 1, 1), ("a", 2, 2), ("a", 3, 6), ("a", 4, 8), ("a", 5, 9),
            ("b", 2, 3), ("b", 3, 5), ("b", 6, 10),
            ("c", 1, 7), ("c", 2, 9)]
    u, i, t = zip(*rows)
    return load_dataset(Interactions(np.array(u), np.array(i), np.array(t, dtype=float)), kcore=None)


def test_temporal_split_on_hand_made_data():
    ds = _ds()
    sp = temporal_split(ds, test_from=8, valid_from=6)
    enc = ds.vocab.encode
    assert sp.kind == "temporal" and sp.cuts == {"valid_from": 6.0, "test_from": 8.0}
    # train: every user's items before valid_from (c has none)
    assert [s.tolist() for s in sp.train] == [enc([1, 2]), enc([2, 3]), []]
    # valid: a's first item at/after 6 is item 3 at 6 (< 8); b's is item 6 at 10 (not before test_from): no example;
    # c has no item before 6
    assert sp.valid.users == ["a"] and sp.valid.targets.tolist() == enc([3])
    assert [h.tolist() for h in sp.valid.histories] == [enc([1, 2])]
    # test: a -> item 4 at 8 (history 1, 2, 3), b -> item 6 at 10 (history 2, 3), c -> item 2 at 9 (history 1)
    assert sp.test.users == ["a", "b", "c"] and sp.test.targets.tolist() == enc([4, 6, 2])
    assert [h.tolist() for h in sp.test.histories] == [enc([1, 2, 3]), enc([2, 3]), enc([1])]
    assert sp.test.target_timestamps.tolist() == [8.0, 10.0, 9.0]
    assert [t.tolist() for t in sp.test.history_timestamps] == [[1.0, 2.0, 6.0], [3.0, 5.0], [7.0]]


def test_temporal_cuts_are_the_shares_quantiles():
    ds = _ds()                                                 # times 1 2 3 5 6 7 8 9 9 10
    valid_from, test_from = temporal_cuts(ds, test_share=0.2, valid_share=0.3)
    assert (valid_from, test_from) == (7.0, 9.0)               # 5 of 10 at or after 7; 3 at or after 9 (tie after)
    for bad in [(0.0, 0.1), (0.1, 1.0), (0.6, 0.5), (True, 0.1)]:
        with pytest.raises(ValueError, match="must be"):
            temporal_cuts(ds, *bad)


def test_temporal_cuts_count_the_shares_exactly():
    """ceil((1 - 0.7) * 10) is ceil(3.0000000000000004) = 4 in floats: the cuts came one interaction late (6 test
    interactions instead of 7, for 59 of the sizes 2..299 with shares (0.7, 0.1)). Every size and share pair now puts
    floor(share * n) interactions at or after each cut (distinct times)."""
    def ds_of(n):
        return load_dataset(Interactions(np.zeros(n, np.int64), np.arange(n), np.arange(n, dtype=float)), kcore=None)

    assert temporal_cuts(ds_of(10), 0.7, 0.1) == (2.0, 3.0)
    for n in range(2, 300):
        ds = ds_of(n)
        for test, valid in ((0.7, 0.1), (0.1, 0.1), (0.2, 0.1), (0.05, 0.05), (0.3, 0.3), (0.15, 0.15)):
            valid_from, test_from = temporal_cuts(ds, test, valid)
            for cut, share in ((test_from, test), (valid_from, round(test + valid, 10))):
                expected = max(1, int(round(share * 1000)) * n // 1000)      # floor(share * n), integers only
                assert n - cut == expected, (n, test, valid, cut)


def test_nothing_at_or_after_a_cut_is_trained_on_or_seen_before_it_is_predicted(tmp_path):
    ds = load_dataset(_markov_file(tmp_path / "m.tsv"), kcore=None)
    valid_from, test_from = temporal_cuts(ds, 0.15, 0.15)
    sp = temporal_split(ds, test_from, valid_from)
    assert all((t < valid_from).all() for t in sp.train_timestamps)
    for ex, cut in ((sp.valid, valid_from), (sp.test, test_from)):
        assert all((t < cut).all() for t in ex.history_timestamps) and (ex.target_timestamps >= cut).all()
    assert (sp.valid.target_timestamps < test_from).all() and len(sp.valid) and len(sp.test)


def test_temporal_split_refusals(tmp_path):
    ds = _ds()
    with pytest.raises(ValueError, match="valid_from <= test_from"):
        temporal_split(ds, test_from=5, valid_from=6)
    with pytest.raises(ValueError, match="no user has an item before and one after the test cut"):
        temporal_split(ds, test_from=11, valid_from=6)
    (tmp_path / "x.seq").write_text("user_id\titem_ids_chronological\n1\t1 2 3\n2\t2 3 4\n")
    with pytest.raises(ValueError, match="needs timestamps"):
        temporal_split(load_dataset(tmp_path / "x.seq"), 2, 1)


def test_a_temporal_run_is_reproduced_by_zoo_evaluate_and_refused_by_cards_soups_and_save_run(tmp_path, capsys):
    from zoo.evaluate import main as eval_main
    from zoo.train import main as train_main

    data = _markov_file(tmp_path / "m.tsv")
    run = tmp_path / "run"
    log = train_main(["--model", "gru4rec", "--data", str(data), "--out", str(run), "--epochs", "2", "--max-len",
                      "30", "--kcore", "0", "--no-progress", "--temporal-split", "0.1", "0.1",
                      "--set", "embedding_size=16", "hidden_size=16"])
    assert log["split"]["kind"] == "temporal" and log["split"]["cuts"]["test_share"] == 0.1
    res = eval_main(["--model", str(run), "--data", str(data), "--kcore", "none", "--temporal-split", "0.1", "0.1",
                     "--no-progress", "--json", str(tmp_path / "e.json")])
    for k in ("HR@10", "NDCG@10", "MRR@10"):
        assert res["metrics"][k] == pytest.approx(log["test"][k], abs=1e-9), k
    proto = json.loads((tmp_path / "e.json").read_text())["protocol"]
    assert proto["name"] == "recbole-temporal-t0.1-v0.1" and proto["cuts"] == log["split"]["cuts"]
    assert "leave_one_out" not in proto
    # another split than the run's is refused, naming the run's: leave-one-out, other shares
    for argv, message in (([], r"trained on a temporal split \(--temporal-split 0.1 0.1, .*evaluate it with "
                                r"--temporal-split 0.1 0.1"),
                          (["--temporal-split", "0.2", "0.1"], r"--temporal-split 0.2 0.1: .* was trained on "
                                                               r"--temporal-split 0.1 0.1")):
        with pytest.raises(SystemExit) as e:                # a usage error (exit 2) naming the run's split
            eval_main(["--model", str(run), "--data", str(data), "--kcore", "none", "--no-progress", *argv])
        assert e.value.code == 2 and re.search(message, capsys.readouterr().err)
    from zoo.hub import build_card_folder

    with pytest.raises(ValueError, match="trained on a temporal split"):
        build_card_folder(str(run), "x", str(data), out_dir=str(tmp_path / "card"))
    assert not (tmp_path / "card").exists()
    from zoo.soup import main as soup_main

    other = tmp_path / "run2"
    train_main(["--model", "gru4rec", "--data", str(data), "--out", str(other), "--epochs", "1", "--max-len", "30",
                "--kcore", "0", "--no-progress", "--set", "embedding_size=16", "hidden_size=16"])
    with pytest.raises(SystemExit) as e:
        eval_main(["--model", str(other), "--data", str(data), "--kcore", "none", "--temporal-split", "0.1", "0.1",
                   "--no-progress"])
    assert e.value.code == 2 and re.search("--temporal-split: .* was trained on leave-one-out .*evaluate it without "
                                           "--temporal-split", capsys.readouterr().err)
    with pytest.raises(SystemExit):
        soup_main(["--models", str(other), str(run), "--data", str(data), "--kcore", "none", "--out",
                   str(tmp_path / "soup")])
    assert "trained on a temporal split" in capsys.readouterr().err


def test_the_trainer_trains_on_a_temporal_split_but_save_run_refuses_it(tmp_path):
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    from transformers import Trainer, TrainingArguments

    from zoo.hf_trainer import save_run, trainer_kwargs
    from zoo.train import build_model

    data = _markov_file(tmp_path / "m.tsv")
    ds = load_dataset(data, kcore=None)
    valid_from, test_from = temporal_cuts(ds, 0.1, 0.1)
    sp = temporal_split(ds, test_from, valid_from)
    model = build_model("gru4rec", ds.vocab.n_items, {"embedding_size": 16, "hidden_size": 16, "max_seq_length": 30})
    model.set_item_vocab(ds.vocab)
    trainer = Trainer(model=model, args=TrainingArguments(str(tmp_path / "t"), max_steps=2, use_cpu=True, report_to=[],
                                                          disable_tqdm=True, save_strategy="no"),
                      **trainer_kwargs(model, sp))
    trainer.train()
    assert trainer.evaluate()["eval_NDCG@10"] >= 0
    with pytest.raises(ValueError, match="trained on a temporal split"):
        save_run(trainer, tmp_path / "run", str(data), data_options={"kcore": None})
