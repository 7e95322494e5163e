"""``python -m zoo.recommend``: batch mode (``--all-users``) and the history options, on small random models."""

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.models import MODELS
from zoo.recommend import main
from zoo.vocab import ItemVocab

ITEMS = [100 + 7 * i for i in range(30)]          # external ids


def _model(tmp_path, model_type="gru4rec", max_len=4, **kw):
    """A small random model saved as a zoo.train run of the unfiltered data would be (its train_log.json logs
    --kcore none, which zoo.recommend reads --data with by default)."""
    cfg_cls, cls = MODELS[model_type]
    torch.manual_seed(0)
    model = cls(cfg_cls(n_items=len(ITEMS) + 1, max_seq_length=max_len, **kw)).eval()
    model.set_item_vocab(ItemVocab(ITEMS))
    model.save_pretrained(tmp_path / model_type)
    (tmp_path / model_type / "train_log.json").write_text(json.dumps({"data_options": {"kcore": None}}))
    return model, str(tmp_path / model_type)


def _data(path, n_users=9, length=(2, 11), items=ITEMS, seed=0):
    """A TSV of users with histories longer than the models' window (4); returns ``{user: (items, timestamps)}``."""
    rng = random.Random(seed)
    lines, users = ["user_id\titem_id\ttimestamp"], {}
    for u in range(1, n_users + 1):
        t, hist = 1_000 * u, []
        for _ in range(rng.randint(*length)):
            t += rng.randint(1, 50)
            hist.append((rng.choice(items), float(t)))
            lines.append(f"u{u}\t{hist[-1][0]}\t{t}")
        users[f"u{u}"] = ([x for x, _ in hist], [s for _, s in hist])
    path.write_text("\n".join(lines) + "\n")
    return users


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("model_type,kw", [("gru4rec", {"embedding_size": 16, "hidden_size": 16}),
                                           ("tim4rec_causal", {"hidden_size": 16})])
def test_all_users_equal_one_recommend_call_per_user(tmp_path, model_type, kw):
    """Every user of the file gets one line, in the file's order, with what ``model.recommend`` returns for that user's
    whole history (the model reads its last max_seq_length items; timestamps for the time-aware model)."""
    model, path = _model(tmp_path, model_type, **kw)
    users = _data(tmp_path / "d.tsv")
    out = tmp_path / "recs" / "r.jsonl"
    summary = main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--all-users", "--out", str(out), "--no-progress", "--k", "5",
                    "--batch-size", "4"])
    assert summary["users"] == len(users) and summary["dropped_users"] == 0
    rows = _lines(out)
    assert [r["user"] for r in rows] == list(users)
    for r in rows:
        hist, ts = users[r["user"]]
        want = model.recommend([hist], k=5, timestamps=[ts] if model.uses_timestamps else None)
        assert r["items"] == want.items[0], r["user"]
        assert r["scores"] == pytest.approx(want.scores[0].tolist(), abs=1e-5)


def test_all_users_exclude_seen_covers_the_whole_history(tmp_path):
    """--exclude-seen in batch mode leaves out every item the user had, also those older than the model's window; a
    user who has seen all but 2 items gets those 2 (no -inf rows, valid JSON)."""
    _, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    users = _data(tmp_path / "d.tsv", length=(8, 14), items=ITEMS[:12])
    with open(tmp_path / "d.tsv", "a") as f:                         # a user who has seen 28 of the 30 items
        f.writelines(f"full\t{x}\t{99_000 + i}\n" for i, x in enumerate(ITEMS[2:]))
    out = tmp_path / "r.jsonl"
    main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--all-users", "--out", str(out), "--no-progress", "--k", "10",
          "--exclude-seen"])
    rows = {r["user"]: r for r in _lines(out)}
    for u, (hist, _) in users.items():
        assert len(rows[u]["items"]) == 10 and not set(rows[u]["items"]) & set(hist), u
    assert sorted(rows["full"]["items"]) == ITEMS[:2] and len(rows["full"]["scores"]) == 2


def test_all_users_unknown_items_and_an_interrupted_run(tmp_path, monkeypatch, capsys):
    """Items the model does not know are an error naming the remedy, or (--unknown-items drop) left out, a user with
    none left dropped and counted; a run that fails midway leaves an existing --out as it was, and no stray file."""
    _, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    _data(tmp_path / "d.tsv")
    with open(tmp_path / "d.tsv", "a") as f:
        f.write("u1\t5\t999999\nnew\t5\t1\nnew\t6\t2\n")               # items 5 and 6 are not in the vocabulary
    out = tmp_path / "r.jsonl"
    out.write_text("previous run\n")
    argv = ["--model", path, "--data", str(tmp_path / "d.tsv"), "--all-users", "--out", str(out), "--no-progress"]
    with pytest.raises(SystemExit, match=r"2 of the \d+ items of d.tsv \(3 interactions\) are not in the model's item "
                                         r"vocabulary.*--unknown-items"):
        main(argv)
    import zoo.modeling_utils

    calls = []

    def failing(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return original(self, *a, **k)

    original = zoo.modeling_utils.SeqRecPreTrainedModel.predict
    monkeypatch.setattr(zoo.modeling_utils.SeqRecPreTrainedModel, "predict", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        main(argv + ["--unknown-items", "drop", "--batch-size", "4"])
    assert out.read_text() == "previous run\n" and sorted(os.listdir(tmp_path)) == ["d.tsv", "gru4rec", "r.jsonl"]
    monkeypatch.undo()
    summary = main(argv + ["--unknown-items", "drop", "--json"])
    assert summary["users"] == 9 and summary["dropped_users"] == 1 and "dropped" in summary["vocab"]
    assert [r["user"] for r in _lines(out)] == [f"u{i}" for i in range(1, 10)]
    assert json.loads(capsys.readouterr().out)["users"] == 9


def test_one_user_unknown_items_drop(tmp_path):
    """--data/--user: the user's history alone decides (other users' unknown items do not matter); with
    --unknown-items drop the unknown items of the history are left out, as if never seen."""
    model, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    users = _data(tmp_path / "d.tsv")
    with open(tmp_path / "d.tsv", "a") as f:
        f.write("u2\t5\t999999\nnew\t6\t1\n")
    out = main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--user", "u1", "--k", "3"])
    assert out["items"] == model.recommend([users["u1"][0]], k=3).items[0]
    with pytest.raises(SystemExit, match=r"unknown item .*\(--unknown-items drop leaves such items out of the history\)$"):
        main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--user", "u2"])
    out = main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--user", "u2", "--k", "3",
                "--unknown-items", "drop"])
    assert out["items"] == model.recommend([users["u2"][0]], k=3).items[0]
    with pytest.raises(SystemExit, match="knows none of the history's items"):
        main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--user", "new", "--unknown-items", "drop"])


@pytest.mark.parametrize("argv,message", [
    (["--all-users", "--out", "r.jsonl"], "--all-users needs --data"),
    (["--all-users", "--data", "x.tsv"], "--all-users needs --data (the users' interactions) and --out"),
    (["--all-users", "--data", "x.tsv", "--out", "r.jsonl", "--user", "3"], "--user and --stepwise are for one"),
    (["--history", "1", "--out", "r.jsonl"], "--out is the file of --all-users"),
    (["--k", "0"], "argument --k: expected an int >= 1"),
    (["--data", "x.tsv"], "--data needs --user (or --all-users)"),
])
def test_batch_mode_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_all_users_none_known(tmp_path):
    _, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    (tmp_path / "d.tsv").write_text("user_id\titem_id\ttimestamp\na\t5\t1\nb\t6\t2\n")
    with pytest.raises(SystemExit, match="no user of d.tsv has an item the model knows"):
        main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--all-users", "--out", str(tmp_path / "r.jsonl"),
              "--unknown-items", "drop", "--no-progress"])
    assert not (tmp_path / "r.jsonl").exists()


def test_missing_model_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"error: --model ./no-such-folder: .* neither a local folder"):
        main(["--model", "./no-such-folder"])


def test_time_ties_orders_a_users_same_second_history(tmp_path):
    """--time-ties item: the history read from --data has its same-second interactions sorted by item id (the order
    the model may have been trained on); the default keeps the file order."""
    model, path = _model(tmp_path, max_len=8, embedding_size=16, hidden_size=16)
    a, b, c, d = ITEMS[:4]
    (tmp_path / "t.tsv").write_text("user_id\titem_id\ttimestamp\n" + "".join(
        f"t\t{x}\t{s}\n" for x, s in [(d, 1), (c, 5), (a, 5), (b, 5)]))
    argv = ["--model", path, "--data", str(tmp_path / "t.tsv"), "--user", "t", "--k", "5"]
    by_file, by_item = main(argv), main(argv + ["--time-ties", "item"])
    assert by_file["items"] == model.recommend([[d, c, a, b]], k=5).items[0]
    assert by_item["items"] == model.recommend([[d, a, b, c]], k=5).items[0]              # a < b < c
    assert by_file["items"] != by_item["items"]                    # the two histories end differently


def test_all_users_out_that_is_the_data_or_cannot_be_written_is_refused_before_scoring(tmp_path, capsys):
    """--out naming the --data file (it was replaced by the recommendations), a folder, or a path under a file is a
    usage error before any user is scored (were silent data loss, or IsADirectoryError / FileExistsError after
    scoring every user); the data file is left as it was."""
    _, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    data = tmp_path / "d.tsv"
    _data(data)
    before = data.read_text()
    (tmp_path / "afile").write_text("")
    for out, message in ((data, f"--out {data} is the input --data"), (tmp_path, f"--out {tmp_path} is a folder"),
                         (tmp_path / "afile" / "r.jsonl", f"{tmp_path / 'afile'} is a file, not a folder")):
        with pytest.raises(SystemExit) as e:
            main(["--model", path, "--data", str(data), "--all-users", "--out", str(out), "--no-progress"])
        assert e.value.code == 2 and message in capsys.readouterr().err, out
    assert data.read_text() == before


def test_out_that_is_an_input_file_or_a_model_file_is_refused_before_scoring(tmp_path, capsys):
    """--out naming the --exclude-items-file / --candidates-file it reads, or a file of the --model folder (its
    config, weights, vocabulary), is a usage error before any work: each was silently replaced by the
    recommendations, which destroyed the model or the list."""
    _, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    data = tmp_path / "d.tsv"
    _data(data)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{ITEMS[0]}\n")
    files = {f: (Path(path) / f).read_bytes() for f in ("config.json", "model.safetensors")}
    base = ["--model", path, "--data", str(data), "--all-users", "--no-progress"]
    for extra, message in (
            (["--exclude-items-file", str(ids), "--out", str(ids)], f"--out {ids} is the input --exclude-items-file"),
            (["--candidates-file", str(ids), "--out", str(ids)], f"--out {ids} is the input --candidates-file"),
            (["--out", str(Path(path) / "config.json")], "is the input --model's config.json"),
            (["--out", str(Path(path) / "model.safetensors")], "is the input --model's model.safetensors")):
        with pytest.raises(SystemExit) as e:
            main(base + extra)
        assert e.value.code == 2 and message in capsys.readouterr().err, extra
    assert ids.read_text() == f"{ITEMS[0]}\n"
    assert all((Path(path) / f).read_bytes() == b for f, b in files.items())


# ------------------------------------------------------------------ one history: exclude_seen, ids, API misuse
def test_exclude_seen_masks_the_whole_history_and_never_returns_a_masked_item(tmp_path, capsys):
    """exclude_seen means the whole given history (also items older than the window of 4), for the API, the CLI and
    --stepwise alike; a k above the items left is refused naming both numbers, never filled with seen (-inf) items
    or the padding index."""
    model, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    hist = ITEMS[:10] + ITEMS[:3]                                     # 10 distinct items, window 4
    rec = model.recommend([hist], k=20, exclude_seen=True)
    assert sorted(rec.items[0]) == ITEMS[10:] and torch.isfinite(rec.scores).all()
    for k in (21, 29):
        with pytest.raises(ValueError, match=rf"k={k} is more than the 20 items left .* history 1 .*30 items, 10 of"):
            model.recommend([[ITEMS[0]], hist], k=k, exclude_seen=True)
    assert len(model.recommend([hist], k=30).items[0]) == 30           # without exclude_seen all 30 may come back
    (tmp_path / "d.tsv").write_text("user_id\titem_id\ttimestamp\n" + "".join(f"a\t{x}\t{i}\n" for i, x in enumerate(hist)))
    for argv in (["--data", str(tmp_path / "d.tsv"), "--user", "a"], ["--history", *map(str, hist)]):
        out = main(["--model", path, *argv, "--k", "20", "--exclude-seen", "--stepwise"])
        assert sorted(out["items"]) == ITEMS[10:] and out["stepwise_items"] == out["items"]
        with pytest.raises(SystemExit, match="k=21 is more than the 20 items left"):
            main(["--model", path, *argv, "--k", "21", "--exclude-seen", "--stepwise"])


def test_exclude_seen_over_several_batches_masks_each_rows_own_history(tmp_path):
    """exclude_seen with histories spread over several forward passes (batch_size 2 of 7 rows) masks each row's own
    history -- the same lists as one pass, and no row gets one of its own items back."""
    model, _ = _model(tmp_path, embedding_size=16, hidden_size=16)
    rng = random.Random(3)
    hs = [rng.sample(ITEMS, rng.randint(2, 12)) for _ in range(7)]
    one = model.recommend(hs, k=10, exclude_seen=True)
    batched = model.recommend(hs, k=10, exclude_seen=True, batch_size=2)
    assert batched.items == one.items and torch.allclose(batched.scores, one.scores, atol=1e-6)
    for h, items in zip(hs, batched.items, strict=True):
        assert len(items) == 10 and not set(items) & set(h), (h, items)


def test_unknown_items_drop_keeps_the_timestamps_of_the_kept_items(tmp_path, monkeypatch):
    """A time-aware model with --unknown-items drop (--history/--timestamps and --data/--user): an unknown item leaves
    the history together with its timestamp, so the model gets the kept items with their own timestamps and the
    result is theirs (a tiny random model barely reads time, so the timestamps it is given are checked too)."""
    model, path = _model(tmp_path, "tim4rec_causal", hidden_size=16)
    hist, ts = [ITEMS[3], 5, ITEMS[7], ITEMS[1], 6], [100.0, 200.0, 5_000.0, 90_000.0, 90_100.0]    # 5, 6 unknown
    kept, kept_ts = [ITEMS[3], ITEMS[7], ITEMS[1]], [100.0, 5_000.0, 90_000.0]
    want = model.recommend([kept], k=5, timestamps=[kept_ts])
    calls, real = [], type(model).recommend

    def spy(self, histories, *a, **kw):
        calls.append((list(histories[0]), list(kw["timestamps"][0])))
        return real(self, histories, *a, **kw)

    monkeypatch.setattr(type(model), "recommend", spy)
    (tmp_path / "d.tsv").write_text("user_id\titem_id\ttimestamp\n" + "".join(
        f"a\t{x}\t{t:.0f}\n" for x, t in zip(hist, ts, strict=True)))
    for argv in (["--history", *map(str, hist), "--timestamps", *map(str, ts)],
                 ["--data", str(tmp_path / "d.tsv"), "--user", "a"]):
        calls.clear()
        out = main(["--model", path, *argv, "--k", "5", "--unknown-items", "drop"])
        assert calls == [(kept, kept_ts)], argv
        assert out["history_tail"] == kept and out["items"] == want.items[0], argv
        assert out["scores"] == pytest.approx(want.scores[0].tolist(), abs=1e-4)


def test_command_line_ids_are_taken_as_written(tmp_path):
    """A string-id model/data keeps '007' as '007' (not the int 7, nor the item '7'); only ASCII digits make an int,
    so '³' or Arabic-Indic digits are one-line errors, not a traceback or a silently different item."""
    cfg_cls, cls = MODELS["gru4rec"]
    torch.manual_seed(0)
    names = ["007", "7", "u1", "u2", "x"]
    model = cls(cfg_cls(n_items=len(names) + 1, max_seq_length=4, embedding_size=8, hidden_size=8)).eval()
    model.set_item_vocab(ItemVocab(names))
    model.save_pretrained(tmp_path / "s")
    out = main(["--model", str(tmp_path / "s"), "--history", "007", "u1", "--k", "3"])
    assert out["history_tail"] == ["007", "u1"] and out["items"] == model.recommend([["007", "u1"]], k=3).items[0]
    (tmp_path / "u.tsv").write_text("user_id\titem_id\ttimestamp\n007\tu1\t1\n007\tx\t2\n7\tu2\t3\n")
    for user, hist in (("007", ["u1", "x"]), ("7", ["u2"])):
        out = main(["--model", str(tmp_path / "s"), "--data", str(tmp_path / "u.tsv"), "--user", user, "--k", "3",
                    "--kcore", "none"])
        assert out["history_tail"] == hist, user
    _, path = _model(tmp_path, embedding_size=16, hidden_size=16)    # int ids 100, 107, ...
    assert main(["--model", path, "--history", "100", "--k", "3"])["history_tail"] == [100]
    with pytest.raises(SystemExit, match="unknown item id '0100'.*not the canonical spelling of the int id 100"):
        main(["--model", path, "--history", "0100", "--k", "3"])     # as the data files read it: not 100
    for bad in ("³", "\u0661\u0660\u0660"):                          # '³', Arabic-Indic '100'
        with pytest.raises(SystemExit, match=f"item id '{bad}' .*is not an int id"):
            main(["--model", path, "--history", bad])


def test_recommend_refuses_bad_arguments_by_name(tmp_path):
    model, _ = _model(tmp_path, embedding_size=16, hidden_size=16)
    h = [ITEMS[:3]]
    assert model.recommend(h, k=np.int64(3)).items == model.recommend(h, k=3).items
    assert model.recommend(h, k=3, batch_size=np.int32(1)).items == model.recommend(h, k=3).items
    for kw, message in [({"k": True}, "k must be an int 1..30, got True"), ({"k": 3.0}, "k must be an int"),
                        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
                        ({"batch_size": -1}, "batch_size must be an int >= 1, got -1"),
                        ({"timestamps": [[1.0, 2.0, 3.0]]}, "GRU4RecModel does not use timestamps")]:
        with pytest.raises(ValueError, match=message):
            model.recommend(h, **{"k": 3, **kw})
    for hist in ({ITEMS[0]: 1}, {ITEMS[0]}, "100"):
        with pytest.raises(TypeError, match="history 0 must be a sequence of item ids"):
            model.recommend([hist], k=3)
    with pytest.raises(TypeError, match="histories must be a sequence"):
        model.recommend({0: ITEMS[:3]}, k=3)
    ids, mask = model.pad_batch([[1, 2, 3]])
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        model(ids, attention_mask=mask.long() * 2)


def test_init_state_and_step_refuse_bad_state(tmp_path):
    model, _ = _model(tmp_path, embedding_size=16, hidden_size=16)
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            model.init_state(n)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            model.init_state(1, device="cuda")
    meta = {k: v.to("meta") for k, v in model.init_state(1).items()}
    with pytest.raises(ValueError, match=r"state\['gru_state'\] is on the meta device"):
        model.step(torch.tensor([[1]]), meta)


# ------------------------------------------------------------------ mutation audit round 6 (G): CLI paths untested
def test_user_written_with_leading_zeros_names_an_int_user(tmp_path):
    """Int user ids in --data: ``--user 007`` is user 7 (its ASCII integer value), as the help says; a dropped
    fallback made it 'user not found'."""
    model, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    (tmp_path / "d.tsv").write_text("user_id\titem_id\ttimestamp\n7\t100\t1\n7\t107\t2\n12\t114\t3\n7\t121\t4\n")
    for user in ("7", "007"):
        out = main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--user", user, "--k", "3"])
        assert out["history_tail"] == [100, 107, 121], user
        assert out["items"] == model.recommend([[100, 107, 121]], k=3).items[0]
    with pytest.raises(SystemExit, match="user '8' not found in"):
        main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--user", "8"])


def test_all_users_refuses_data_without_timestamps_for_a_time_aware_model(tmp_path):
    """--all-users with a time-aware model and a file without a timestamp column is a one-line error naming the
    model and the file (without the check: a TypeError traceback at the first batch)."""
    _, path = _model(tmp_path, "tim4rec_causal", hidden_size=16)
    (tmp_path / "d.tsv").write_text("user_id\titem_id\na\t100\na\t107\nb\t114\n")
    with pytest.raises(SystemExit, match=r"error: TiM4RecCausalModel reads timestamps, but d.tsv has none"):
        main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--all-users", "--out", str(tmp_path / "r.jsonl"),
              "--no-progress"])
    assert not (tmp_path / "r.jsonl").exists()


def test_all_users_refuses_stepwise(capsys):
    """--stepwise is for one history: with --all-users it is a usage error, not silently ignored."""
    with pytest.raises(SystemExit) as e:
        main(["--all-users", "--data", "x.tsv", "--out", "r.jsonl", "--stepwise"])
    assert e.value.code == 2 and "--user and --stepwise are for one history" in capsys.readouterr().err


def test_history_tail_is_the_last_ten_items(tmp_path):
    """The output names the history's length and its last 10 items (not the first 10)."""
    _, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    hist = ITEMS[:13]
    out = main(["--model", path, "--history", *map(str, hist), "--k", "3"])
    assert out["history_length"] == 13 and out["history_tail"] == ITEMS[3:13]


def test_stepwise_never_returns_the_padding_index(tmp_path, monkeypatch):
    """--stepwise masks the padding column 0 of the step logits: a step whose padding logit is the largest still gives
    the same real items as recommend() (unmasked, index 0 was decoded: IndexError traceback)."""
    model, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    real = type(model).step

    def step(self, *a, **kw):
        logits, state = real(self, *a, **kw)
        logits = logits.clone()
        logits[:, 0] = 1e6
        return logits, state

    monkeypatch.setattr(type(model), "step", step)
    out = main(["--model", path, "--history", *map(str, ITEMS[:6]), "--k", "5", "--stepwise"])
    assert out["stepwise_items"] == out["items"] and len(out["items"]) == 5
    assert out["stepwise_max_abs_diff"] < 1e-5


def test_stepwise_reports_the_largest_score_difference_and_the_state_size(tmp_path, monkeypatch):
    """stepwise_max_abs_diff is the largest |step score - recommend score| over the top k (a step that doubles every
    logit keeps the order, and the difference is then the largest |score|); state_bytes counts bytes (GRU4Rec, one
    layer of 16 float32 units: 64), not elements."""
    model, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    argv = ["--model", path, "--history", *map(str, ITEMS[:6]), "--k", "5", "--stepwise"]
    exact = main(argv)
    assert exact["state_bytes"] == 64 == sum(t.numel() * t.element_size() for t in model.init_state(1).values())
    assert exact["stepwise_max_abs_diff"] < 1e-5
    real = type(model).step

    def doubled(self, *a, **kw):
        logits, state = real(self, *a, **kw)
        return logits * 2, state

    monkeypatch.setattr(type(model), "step", doubled)
    out = main(argv)
    want = model.recommend([ITEMS[:6]], k=5).scores[0].abs()
    assert out["stepwise_items"] == out["items"] and want.max() > want.min() + 1e-3
    assert out["stepwise_max_abs_diff"] == pytest.approx(float(want.max()), abs=1e-5)


def test_kcore_filters_the_data_before_picking_users(tmp_path, capsys):
    """--kcore 3 filters --data first: a user with fewer than 3 interactions is gone, and an item fewer than 3 users
    had leaves the histories (one history and --all-users alike); the default keeps every user and item."""
    model, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    x, y, z, w = ITEMS[:4]
    rows = [(u, i) for u in "abc" for i in (x, y, z)] + [("a", w), ("d", x)]
    (tmp_path / "d.tsv").write_text("user_id\titem_id\ttimestamp\n" + "".join(
        f"{u}\t{i}\t{t}\n" for t, (u, i) in enumerate(rows)))
    argv = ["--model", path, "--data", str(tmp_path / "d.tsv")]
    assert main(argv + ["--user", "a", "--k", "3"])["history_tail"] == [x, y, z, w]
    out = main(argv + ["--user", "a", "--k", "3", "--kcore", "3"])
    assert out["history_tail"] == [x, y, z] and out["items"] == model.recommend([[x, y, z]], k=3).items[0]
    with pytest.raises(SystemExit, match=r"user 'd' has 1 interaction in .*d\.tsv, all removed by the --kcore 3/3 "
                                         r"filter .*without --kcore the whole file is read"):
        main(argv + ["--user", "d", "--kcore", "3"])      # in the file: not "not found"
    summary = main(argv + ["--all-users", "--out", str(tmp_path / "r.jsonl"), "--no-progress", "--kcore", "3"])
    assert summary["users"] == 3 and [r["user"] for r in _lines(tmp_path / "r.jsonl")] == ["a", "b", "c"]
    assert main(argv + ["--all-users", "--out", str(tmp_path / "r.jsonl"), "--no-progress"])["users"] == 4


def test_all_users_k_above_the_vocabulary_is_refused(tmp_path, capsys):
    """--all-users --k 31 for a model of 30 items is a usage error naming the range, before the data is read (was:
    31 columns ranked, the padding column among them; then an exit-1 error once the data was read)."""
    _, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    _data(tmp_path / "d.tsv", n_users=2)
    with pytest.raises(SystemExit) as e:
        main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--all-users", "--out", str(tmp_path / "r.jsonl"),
              "--no-progress", "--k", "31"])
    assert e.value.code == 2
    assert "--k 31: the model's catalogue has 30 items; use --k <= 30" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


# ------------------------------------------------------------------------------ items never to recommend
def test_exclude_items_are_recommended_to_nobody_and_the_others_keep_their_scores(tmp_path):
    """``exclude_items`` (retired or unavailable items): never in anyone's list, every other item keeps its score and
    rank; with exclude_seen both sets are taken away before k is checked; an unknown id is refused naming it."""
    model, _ = _model(tmp_path, embedding_size=16, hidden_size=16)
    hs = [ITEMS[:5], ITEMS[10:12], ITEMS[3:4]]
    full = model.recommend(hs, k=30)
    gone = [x for x in full.items[0][:3]] + [ITEMS[20]]                   # user 0's top 3 and one more
    rec = model.recommend(hs, k=10, exclude_items=gone)
    for r, items in enumerate(rec.items):
        want = [x for x in full.items[r] if x not in gone][:10]
        assert items == want and not set(items) & set(gone)
        torch.testing.assert_close(rec.scores[r], full.scores[r][[full.items[r].index(x) for x in want]])
    assert model.recommend(hs, k=10, exclude_items=[]).items == model.recommend(hs, k=10).items
    with pytest.raises(ValueError, match=r"k=27 is more than the 26 items left .* history 0 \(30 items, 4 in exclude"):
        model.recommend(hs, k=27, exclude_items=gone)
    left = 30 - len(set(gone) | set(hs[0]))                               # the two sets may share items
    with pytest.raises(ValueError, match=rf"k={left + 1} is more than the {left} items left .*5 of them in the "
                                         "history, 4 in exclude_items"):
        model.recommend(hs, k=left + 1, exclude_items=gone, exclude_seen=True)
    both = model.recommend(hs, k=left, exclude_items=gone, exclude_seen=True)
    assert not set(both.items[0]) & (set(gone) | set(hs[0])) and torch.isfinite(both.scores).all()
    from zoo.vocab import UnknownItemError

    with pytest.raises(UnknownItemError, match="exclude_items: unknown item id 5"):
        model.recommend(hs, k=5, exclude_items=[ITEMS[0], 5])
    with pytest.raises(TypeError, match="exclude_items must be a sequence of item ids"):
        model.recommend(hs, k=5, exclude_items=ITEMS[0])


def test_exclude_items_on_the_command_line_and_from_a_file(tmp_path, capsys):
    """--exclude-items and --exclude-items-file (one id a line, # comments) for one history, --stepwise and
    --all-users alike; an unknown id is an error naming it unless --unknown-items drop."""
    model, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    users = _data(tmp_path / "d.tsv")
    top = main(["--model", path, "--history", *map(str, ITEMS[:3]), "--k", "5"])["items"]
    (tmp_path / "retired.txt").write_text(f"# retired\n{top[0]}\n\n{top[1]}\n")
    out = main(["--model", path, "--history", *map(str, ITEMS[:3]), "--k", "5", "--stepwise",
                "--exclude-items", str(top[2]), "--exclude-items-file", str(tmp_path / "retired.txt")])
    assert out["items"][:2] == top[3:5] and not set(out["items"]) & set(top[:3])
    assert out["stepwise_items"] == out["items"] and out["excluded_items"] == 3
    rows = tmp_path / "r.jsonl"
    summary = main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--all-users", "--out", str(rows), "--k", "5",
                    "--no-progress", "--exclude-items-file", str(tmp_path / "retired.txt")])
    assert summary["excluded_items"] == 2 and len(_lines(rows)) == len(users)
    for r in _lines(rows):
        assert r["items"] == model.recommend([users[r["user"]][0]], k=5, exclude_items=top[:2]).items[0]
    with pytest.raises(SystemExit, match="--exclude-items: unknown item id 5"):
        main(["--model", path, "--history", str(ITEMS[0]), "--exclude-items", "5", str(top[0])])
    out = main(["--model", path, "--history", str(ITEMS[0]), "--exclude-items", "5", str(top[0]),
                "--unknown-items", "drop"])
    assert top[0] not in out["items"] and out["excluded_items"] == 1
    with pytest.raises(SystemExit, match="--exclude-items-file .*nothing.txt: cannot read it"):
        main(["--model", path, "--history", str(ITEMS[0]), "--exclude-items-file", str(tmp_path / "nothing.txt")])


def test_an_id_list_file_may_start_with_a_byte_order_mark(tmp_path):
    """A UTF-8 byte-order mark (Notepad's) before the first id is no part of it, as in the interaction readers: the
    first id is read, not refused as '\\ufeff...' (or, in a str vocabulary, taken for an unknown id)."""
    from zoo.recommend import read_id_list
    model, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    top = main(["--model", path, "--history", *map(str, ITEMS[:3]), "--k", "5"])["items"]
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + f"{top[0]}\n{top[1]}\n".encode())
    assert read_id_list(tmp_path / "bom.txt", model) == top[:2]
    out = main(["--model", path, "--history", *map(str, ITEMS[:3]), "--k", "3",
                "--exclude-items-file", str(tmp_path / "bom.txt")])
    assert out["items"] == top[2:5] and out["excluded_items"] == 2
    model.set_item_vocab(ItemVocab([f"i{x}" for x in ITEMS]))
    (tmp_path / "bom_str.txt").write_bytes(b"\xef\xbb\xbfi107\ni100\n")
    assert read_id_list(tmp_path / "bom_str.txt", model) == ["i107", "i100"]


def test_serving_reads_data_whole_and_evaluate_with_the_runs_k_core(tmp_path):
    """Serving (zoo.recommend, zoo.embed) reads --data with no k-core by default: each user's whole history, whoever
    else is in the file (it used to take the run's 5-core, so a user's history and recommendations depended on the
    other users of the file); items the model does not know are --unknown-items' (error, naming --kcore; or drop), an
    explicit --kcore filters first. zoo.evaluate keeps the run's k-core, to reproduce the run's split."""
    from zoo.embed import main as embed_main

    core, rng = ITEMS[:8], random.Random(0)
    lines = ["user_id,item_id,timestamp"] + [f"u{u},{x},{t}" for u in range(6)
                                             for t, x in enumerate(rng.sample(core, 8))] + ["z,999,1", f"z,{core[0]},2"]
    (tmp_path / "shop.csv").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    cfg_cls, cls = MODELS["gru4rec"]
    model = cls(cfg_cls(n_items=len(core) + 1, max_seq_length=4, embedding_size=8, hidden_size=8)).eval()
    model.set_item_vocab(ItemVocab(core))                       # what zoo.train's 5-core of shop.csv holds
    model.save_pretrained(tmp_path / "shop")
    argv = ["--model", str(tmp_path / "shop"), "--data", str(tmp_path / "shop.csv"), "--no-progress"]
    rec = ["--k", "3"]
    with pytest.raises(SystemExit, match=r"1 of the 9 items .*not in the model's item vocabulary.*read whole \(no "
                                         r"k-core\) for serving.*--kcore K filters --data first"):
        main(argv + rec + ["--all-users", "--out", str(tmp_path / "r.jsonl")])
    with pytest.raises(SystemExit, match=r"read whole \(no k-core\) for serving"):
        embed_main(argv + ["--out", str(tmp_path / "v.safetensors")])
    summary = main(argv + rec + ["--all-users", "--out", str(tmp_path / "r.jsonl"), "--unknown-items", "drop"])
    assert summary["users"] == 7 and [r["user"] for r in _lines(tmp_path / "r.jsonl")][-1] == "z"
    summary = main(argv + rec + ["--all-users", "--out", str(tmp_path / "r.jsonl"), "--kcore", "5"])
    assert summary["users"] == 6 and [r["user"] for r in _lines(tmp_path / "r.jsonl")] == [f"u{u}" for u in range(6)]
    assert embed_main(argv + ["--out", str(tmp_path / "v.safetensors"), "--kcore", "5"])["users"] == 6
    # a user's history does not depend on who else is in the file: u0 alone gives u0's recommendations
    (tmp_path / "u0.csv").write_text("\n".join(x for x in lines if not x.startswith(("u1", "u2", "u3", "u4", "u5",
                                                                                       "z,"))) + "\n")
    one = main(["--model", str(tmp_path / "shop"), "--data", str(tmp_path / "u0.csv"), "--user", "u0", *rec])
    assert one == main(argv[:-1] + rec + ["--user", "u0"])
    # zoo.evaluate reads --data with the run's k-core: a run that logged --kcore none (zoo.train --kcore 0) meets z's
    # unknown item, an explicit --kcore 5 does not
    (tmp_path / "shop" / "train_log.json").write_text(json.dumps({"data_options": {"kcore": None}}))
    from zoo.evaluate import main as evaluate_main

    with pytest.raises(SystemExit, match="not in the model's item vocabulary"):
        evaluate_main(argv)
    assert evaluate_main(argv + ["--kcore", "5"])["n_users"] == 6
    (tmp_path / "shop" / "train_log.json").write_text(json.dumps({"data_options": {"kcore": 5}}))
    assert evaluate_main(argv)["protocol"]["kcore"] == (5, 5)
    assert evaluate_main(argv + ["--kcore", "none", "--unknown-items", "drop"])["protocol"]["kcore"] is None


def test_one_user_of_data_without_timestamps_for_a_time_aware_model_names_the_file(tmp_path, capsys):
    """``--data FILE --user ID`` with a time-aware model and a file without a time column asked for "--timestamps
    (one per item) or --data/--user" -- which had been given; the error names the file and what it lacks."""
    _, path = _model(tmp_path, "tim4rec_causal", hidden_size=16)
    (tmp_path / "d.tsv").write_text("user_id\titem_id\na\t100\na\t107\nb\t114\n")
    with pytest.raises(SystemExit) as e:
        main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--user", "a"])
    said = str(e.value.code)
    assert f"error: {tmp_path / 'd.tsv'} has no timestamps" in said and "interaction file with a time column" in said
    assert "or --data/--user" not in said
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:                                   # no file: the options to give (usage)
        main(["--model", path, "--history", "100", "107"])
    assert e.value.code == 2
    assert "reads timestamps: pass --timestamps (one per --history item) or --data/--user" in capsys.readouterr().err


def test_a_bundled_models_short_name_suggests_its_hub_id():
    """``--model sasrec-ml1m`` (as ``zoo.hub list`` shows the folder) suggests ``ssm-rec-zoo/sasrec-ml1m``."""
    from zoo.pretrained import HUB_ORG

    with pytest.raises(SystemExit, match=f"did you mean {HUB_ORG}/sasrec-ml1m"):
        main(["--model", "sasrec-ml1m", "--history", "1", "2"])


# ------------------------------------------------------------------ command-line consistency (exit statuses, --device)
def test_item_ids_on_the_command_line_are_read_as_the_data_files_read_them(tmp_path):
    """Every item id option reads '0100' as the data files and the vocabulary do: another id than the int 100 (a
    data file holding both keeps them apart), so an int vocabulary refuses it as unknown, naming the canonical
    spelling; --unknown-items drop leaves it out, as it drops the data's '0100'."""
    model, path = _model(tmp_path, embedding_size=16, hidden_size=16)         # int ids 100, 107, ...
    (tmp_path / "ids.txt").write_text("0100\n")
    hint = r"unknown item id '0100'.*not the canonical spelling of the int id 100 \(ids are read as written"
    for option in (["--history", "0100"], ["--similar-to", "0100"], ["--history", "107", "--candidates", "0100"],
                   ["--history", "107", "--exclude-items", "0100"],
                   ["--history", "107", "--candidates-file", str(tmp_path / "ids.txt")],
                   ["--history", "107", "--exclude-items-file", str(tmp_path / "ids.txt")]):
        with pytest.raises(SystemExit, match=hint) as e:
            main(["--model", path, "--k", "3", *option])
        assert str(e.value.code).startswith("error: "), option                # status 1: one line, no usage
    dropped = main(["--model", path, "--history", "0100", "107", "--unknown-items", "drop", "--k", "3"])
    assert dropped["history_tail"] == [107] and dropped["items"] == model.recommend([[107]], k=3).items[0]
    (tmp_path / "d.tsv").write_text("user_id\titem_id\ttimestamp\na\t0100\t1\na\t107\t2\n")
    from_file = main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--user", "a", "--unknown-items", "drop",
                      "--k", "3"])
    assert from_file["items"] == dropped["items"]                            # the file's '0100' is dropped alike
    kept = main(["--model", path, "--history", "107", "--exclude-items", "0100", "100", "--unknown-items", "drop",
                 "--k", "29"])
    assert 100 not in kept["items"] and kept["excluded_items"] == 1            # 100 excluded, '0100' left out


@pytest.mark.parametrize("given", [["--kcore", "3"], ["--time-ties", "item"], ["--columns", "user=a", "item=b"],
                                   ["--kcore", "none", "--time-ties", "file"]])
def test_data_options_without_data_are_usage_errors(tmp_path, given, capsys):
    """--kcore/--time-ties/--columns apply to --data: without it zoo.recommend and zoo.embed ran and ignored them."""
    from zoo.embed import main as embed_main

    for command, argv in ((main, ["--history", "1"]), (embed_main, ["--out", str(tmp_path / "v.safetensors")])):
        with pytest.raises(SystemExit) as e:
            command(argv + given)
        err = capsys.readouterr().err
        flags = "/".join(x for x in given if x.startswith("--"))
        assert e.value.code == 2 and f"{flags} appl" in err and "to --data: give --data" in err, err
    assert not (tmp_path / "v.safetensors").exists()


@pytest.mark.parametrize("given", [["--batch-size", "7"], ["--no-progress"]])
def test_batch_options_without_all_users_are_usage_errors(given, capsys):
    """--batch-size and --no-progress are --all-users' options: one history ran and ignored them."""
    with pytest.raises(SystemExit) as e:
        main(["--history", "1", *given])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--batch-size and --no-progress are for --all-users" in err, err


def test_device_and_threads_options(tmp_path, capsys, monkeypatch):
    """--device cpu runs there (single history, --stepwise, --all-users, --similar-to); a malformed device is a usage
    error (2), a CUDA device this machine lacks exits 4 with one line; --threads sets torch's threads."""
    model, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    _data(tmp_path / "d.tsv")
    base = ["--model", path, "--k", "3"]
    out = main(base + ["--history", "100", "107", "--stepwise", "--device", "cpu", "--exclude-seen",
                       "--candidates", *map(str, ITEMS[:10]), "--exclude-items", str(ITEMS[5])])
    assert out["items"] == out["stepwise_items"] == model.recommend(
        [[100, 107]], k=3, exclude_seen=True, candidates=ITEMS[:10], exclude_items=[ITEMS[5]]).items[0]
    assert main(base + ["--similar-to", "100", "--device", "cpu"])["items"] == model.similar_items([100], k=3).items
    summary = main(base + ["--data", str(tmp_path / "d.tsv"), "--all-users", "--out", str(tmp_path / "r.jsonl"),
                           "--no-progress", "--device", "cpu"])
    assert summary["users"] == len(_lines(tmp_path / "r.jsonl")) == 9
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(base + ["--history", "100", "--device", "gpu"])
    assert e.value.code == 2 and "--device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            main(base + ["--history", "100", "--device", "cuda"])
        err = capsys.readouterr().err
        assert e.value.code == 4 and err.count("\n") == 1 and "--device" in err and "CUDA is not available" in err
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    main(base + ["--history", "100", "--threads", "2"])
    assert calls == [2]
    with pytest.raises(SystemExit) as e:
        main(base + ["--history", "100", "--threads", "0"])
    assert e.value.code == 2 and "--threads" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["recommend", "embed", "soup"])
def test_help_states_defaults_and_exit_statuses(module, capsys, monkeypatch):
    """Every option with a default says it in its help, and the epilog is the shared exit-status table."""
    import argparse
    import importlib

    from export.fsutil import EXIT_CODES

    command = importlib.import_module(f"zoo.{module}").main
    with pytest.raises(SystemExit) as e:
        command(["--help"])
    assert e.value.code == 0 and " ".join(EXIT_CODES.split()) in " ".join(capsys.readouterr().out.split())
    parsers = []

    def grab(self, args=None, namespace=None):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    with pytest.raises(SystemExit):
        command([])
    for action in parsers[0]._actions:
        if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
            assert "default" in (action.help or ""), action.option_strings


def test_all_users_out_dash_prints_the_lines_on_stdout(tmp_path, capsys, monkeypatch):
    """--all-users --out - prints the JSON lines on stdout (and the summary on stderr), creating no file named '-';
    zoo.embed --out - is a usage error (a safetensors file is not written to stdout)."""
    from zoo.embed import main as embed_main

    _, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    _data(tmp_path / "d.tsv")
    argv = ["--model", path, "--data", str(tmp_path / "d.tsv"), "--all-users", "--no-progress", "--k", "3"]
    main(argv + ["--out", str(tmp_path / "r.jsonl")])
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    summary = main(argv + ["--out", "-", "--json"])
    captured = capsys.readouterr()
    assert [json.loads(x) for x in captured.out.splitlines()] == _lines(tmp_path / "r.jsonl")
    assert json.loads(captured.err)["out"] == summary["out"] == "-" and not (tmp_path / "-").exists()
    with pytest.raises(SystemExit) as e:
        embed_main(["--model", path, "--out", "-"])
    assert e.value.code == 2 and "--out -" in capsys.readouterr().err and not (tmp_path / "-").exists()


@pytest.mark.gpu
def test_recommend_and_embed_on_cuda_match_the_cpu(tmp_path):
    """--device cuda moves the model and every tensor the commands make (the --stepwise path's ids, timestamps and
    masks, --all-users' candidate mask) there; the results come back on the CPU, equal to the CPU's."""
    from zoo.embed import load_vectors, main as embed_main

    _, path = _model(tmp_path, "tim4rec_causal", hidden_size=16)
    users = _data(tmp_path / "d.tsv")
    hist, ts = users["u1"]
    one = ["--model", path, "--history", *map(str, hist), "--timestamps", *map(str, ts), "--k", "3", "--stepwise",
           "--exclude-seen", "--candidates", *map(str, ITEMS[:20]), "--exclude-items", str(ITEMS[3])]
    cpu, gpu = main(one + ["--device", "cpu"]), main(one + ["--device", "cuda"])
    assert gpu["items"] == cpu["items"] and gpu["stepwise_items"] == cpu["stepwise_items"]
    assert gpu["stepwise_max_abs_diff"] < 1e-3
    batch = ["--model", path, "--data", str(tmp_path / "d.tsv"), "--all-users", "--no-progress", "--k", "3",
             "--candidates", *map(str, ITEMS[:20])]
    main(batch + ["--out", str(tmp_path / "cpu.jsonl"), "--device", "cpu"])
    main(batch + ["--out", str(tmp_path / "gpu.jsonl"), "--device", "cuda"])
    assert [r["items"] for r in _lines(tmp_path / "gpu.jsonl")] == [r["items"] for r in _lines(tmp_path / "cpu.jsonl")]
    vectors = ["--model", path, "--data", str(tmp_path / "d.tsv"), "--no-progress"]
    embed_main(vectors + ["--out", str(tmp_path / "cpu.safetensors"), "--device", "cpu"])
    embed_main(vectors + ["--out", str(tmp_path / "gpu.safetensors"), "--device", "cuda"])
    a, b = load_vectors(tmp_path / "cpu.safetensors"), load_vectors(tmp_path / "gpu.safetensors")
    torch.testing.assert_close(b.users, a.users, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.items, a.items, atol=0, rtol=0)


class _RecordingStdout:
    """A stdout that records each write and flush, in order, in ``events`` (shared with the batches' records)."""

    def __init__(self, events):
        self.events = events

    def write(self, text):
        self.events.append(("write", text))
        return len(text)

    def flush(self):
        self.events.append(("flush", None))


def test_all_users_out_dash_streams_each_batch_as_it_is_scored_with_the_files_bytes(tmp_path, monkeypatch,
                                                                                   capsysbinary):
    """--all-users --out - writes (and flushes) each batch's lines before the next batch is scored -- not all at the
    end -- with the progress bar on stderr; what stdout receives is the --out file's bytes, byte for byte."""
    import sys

    import zoo.modeling_utils

    _, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    _data(tmp_path / "d.tsv")                                                  # 9 users: batches of 4, 4, 1
    argv = ["--model", path, "--data", str(tmp_path / "d.tsv"), "--all-users", "--k", "3", "--batch-size", "4"]
    main(argv + ["--out", str(tmp_path / "r.jsonl"), "--no-progress"])
    want = (tmp_path / "r.jsonl").read_bytes()
    capsysbinary.readouterr()
    with monkeypatch.context() as m:
        m.setattr(sys.stderr, "isatty", lambda: True)                          # the bar: on a terminal only
        main(argv + ["--out", "-"])                                            # with the bar (stderr)
    captured = capsysbinary.readouterr()
    assert captured.out == want and b"recommend" in captured.err

    events = []
    batches = zoo.modeling_utils.SeqRecPreTrainedModel.padded_batches

    def recorded(self, *a, **k):
        for batch in batches(self, *a, **k):
            events.append(("batch", len(batch[0])))
            yield batch

    monkeypatch.setattr(zoo.modeling_utils.SeqRecPreTrainedModel, "padded_batches", recorded)
    monkeypatch.setattr(sys, "stdout", _RecordingStdout(events))
    main(argv + ["--out", "-"])
    monkeypatch.undo()
    # each batch's lines, written at once and flushed, before the next batch is made
    assert [kind for kind, _ in events if kind != "flush"] == ["batch", "write"] * 3, events
    assert all(events[i + 1][0] == "flush" for i, (kind, _) in enumerate(events) if kind == "write"), events
    written = [text for kind, text in events if kind == "write"]
    assert [text.count("\n") for text in written] == [4, 4, 1]
    assert "".join(written).encode() == want


def test_all_users_out_dash_to_a_closed_stdout_ends_quietly_with_141(tmp_path):
    """``--all-users --out - | head``: a reader gone before the lines are written ends the command with status 141
    (run_cli) and no traceback or error line -- it was 'error: --out -: cannot write it (Broken pipe)', status 1."""
    import subprocess
    import sys

    from export.fsutil import EXIT_BROKEN_PIPE

    _, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    _data(tmp_path / "d.tsv")
    root = Path(__file__).resolve().parents[1]
    r, w = os.pipe()
    os.close(r)                                                                # the reader is gone before the start
    try:
        p = subprocess.run([sys.executable, "-m", "zoo.recommend", "--model", path, "--data", str(tmp_path / "d.tsv"),
                            "--all-users", "--out", "-", "--no-progress", "--batch-size", "4"], stdout=w,
                           stderr=subprocess.PIPE, text=True, timeout=300, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"})
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (EXIT_BROKEN_PIPE, ""), p.stderr


def _overflowing_model(tmp_path, users, user="u1", model_type="gru4rec", **kw):
    """The saved _model with finite weights whose scores overflow float32: an item ``user`` never had, its row at
    +-3e38 aligned with ``user``'s vector (GRU4Rec: its score for ``user`` is +inf, which predict lets through), or,
    for SASRec, all at 3e38: NaN scores (inf - inf), which predict refuses naming a batch row."""
    model, path = _model(tmp_path, model_type, **kw)
    hist = users[user][0]
    item = next(x for x in ITEMS if x not in hist)
    row = model.item_vocab.encode([item])[0]
    with torch.no_grad():
        ids = torch.tensor([model.item_vocab.encode(hist[-4:])])
        h = model.query_vectors(ids, torch.ones_like(ids, dtype=torch.bool))[0]
        model.get_input_embeddings().weight[row] = torch.sign(h) * 3e38 if model_type == "gru4rec" else 3e38
    model.save_pretrained(path)
    return path, hist


@pytest.mark.parametrize("model_type,kw", [("gru4rec", {"embedding_size": 16, "hidden_size": 16}),
                                           ("sasrec", {"hidden_size": 16})])
def test_scores_that_overflow_are_refused_in_both_modes_naming_the_user(tmp_path, capsys, model_type, kw):
    """A score at +inf (finite weights, a float32 overflow) is refused as predict refuses NaN, in one line naming the
    user, in both modes -- one history printed "scores": [Infinity, ...] (not JSON) with exit 0, --all-users dropped
    the item (the -inf filter took it) and wrote the line; NaN named the rows of a batch, not the users."""
    users = _data(tmp_path / "d.tsv")
    path, hist = _overflowing_model(tmp_path, users, model_type=model_type, **kw)
    what = r"the model's scores are NaN or infinite "
    for argv, who in ((["--data", str(tmp_path / "d.tsv"), "--user", "u1"], r"for user 'u1' \("),
                      (["--history", *map(str, hist)], r"for the history \("),
                      (["--data", str(tmp_path / "d.tsv"), "--all-users", "--out", str(tmp_path / "r.jsonl"),
                        "--no-progress"], r"for users? ('u\d', )*'u1'")):
        with pytest.raises(SystemExit, match="^error: " + what + who) as e:
            main(["--model", path, "--k", "3", "--json", *argv])
        assert isinstance(e.value.code, str) and capsys.readouterr().out == ""    # exit 1, nothing printed
    assert not (tmp_path / "r.jsonl").exists()


def test_scores_have_six_decimals_in_every_mode(tmp_path, capsys):
    """The same user's scores are the same numbers in --json (4 decimals before: 0.0817 beside --all-users' 0.081731)
    and in --all-users, 6 decimals as --similar-to's cosines; every JSON output is strict (no NaN/Infinity)."""
    model, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    users = _data(tmp_path / "d.tsv")
    one = main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--user", "u3", "--k", "5", "--json"])
    printed = capsys.readouterr().out
    main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--all-users", "--out", str(tmp_path / "r.jsonl"),
          "--k", "5", "--no-progress"])
    line = next(r for r in _lines(tmp_path / "r.jsonl") if r["user"] == "u3")
    want = model.recommend([users["u3"][0]], k=5).scores[0].tolist()
    assert one["scores"] == line["scores"] == [round(x, 6) for x in want]
    assert json.loads(printed, parse_constant=lambda c: pytest.fail(c))["scores"] == one["scores"]
    similar = main(["--model", path, "--similar-to", str(ITEMS[0]), "--k", "3", "--json"])
    assert similar["scores"][0] == [round(float(x), 6) for x in model.similar_items([ITEMS[0]], k=3).scores[0]]
    assert any(x != round(x, 4) for x in one["scores"] + similar["scores"][0])


def test_all_users_shows_a_progress_bar_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    """Without --no-progress the bar goes to stderr only while it is a terminal: `2> log` or a CI log got its \r
    fragments glued to the summary line."""
    import sys

    _, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    _data(tmp_path / "d.tsv")
    for tty in (False, True):
        monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
        main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--all-users", "--out", "-", "--k", "3"])
        err = capsys.readouterr().err
        assert ("recommend:" in err) == tty and ("\r" in err) == tty and err.splitlines()[-1].startswith("wrote top-3")


def test_timestamps_that_do_not_match_the_history_are_a_usage_error_before_the_model_loads(tmp_path, capsys):
    """``--timestamps`` of another length than ``--history``, and no ``--timestamps`` for a time-aware model, are
    missing or conflicting options: exit 2 naming them (they were exit 1, after the model had loaded)."""
    _, path = _model(tmp_path, "tim4rec_causal", hidden_size=16)
    for argv, said in ((["--history", "100", "107", "--timestamps", "1000"],
                        "--timestamps gives 1 timestamp for 2 --history items: give one per item, oldest first"),
                       (["--history", "100", "107"], "tim4rec_causal reads timestamps: pass --timestamps")):
        with pytest.raises(SystemExit) as e:
            main(["--model", path, *argv])
        assert e.value.code == 2
        assert said in capsys.readouterr().err
    out = main(["--model", path, "--history", "100", "107", "--timestamps", "1000", "1060", "--json"])
    assert out["history_length"] == 2


def test_stepwise_step_that_refuses_nan_logits_is_one_error_line(tmp_path, monkeypatch):
    """step() raises ScoreOverflow on NaN / inf logits (a state that overflows, which the window forward of
    recommend() may not hit): --stepwise turns it into the one-line overflow error, not a traceback."""
    from zoo.evaluate import ScoreOverflow

    model, path = _model(tmp_path, embedding_size=16, hidden_size=16)

    def step(self, *a, **kw):
        raise ScoreOverflow("the model's step logits are NaN or infinite in batch rows [0]", rows=[0])

    monkeypatch.setattr(type(model), "step", step)
    with pytest.raises(SystemExit) as e:
        main(["--model", path, "--history", *map(str, ITEMS[:6]), "--k", "5", "--stepwise"])
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: --stepwise: ") \
        and "\n" not in e.value.code, e.value.code
