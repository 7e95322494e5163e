"""A user's own interaction file served by a trained model (session 46's bring-your-own-data findings): serving
reads each user's whole history (no k-core unless asked), says which users it left out and why, and the readers
say what they did with a header's other columns, a date written as text, and the file's first bad line."""

import json
import warnings

import pytest
import torch

import zoo.cli as zoo_cli
from zoo.data.readers import check_columns, read_interactions
from zoo.embed import main as embed_main
from zoo.models import MODELS
from zoo.recommend import main
from zoo.vocab import ItemVocab

ITEMS = [100 + 7 * i for i in range(30)]


def _model(tmp_path, kcore=5, model_type="gru4rec", **kw):
    """A small random model saved as a ``zoo.train`` run whose log says it read its data with ``--kcore kcore``."""
    cfg_cls, cls = MODELS[model_type]
    torch.manual_seed(0)
    kw = kw or {"embedding_size": 8, "hidden_size": 8}
    model = cls(cfg_cls(n_items=len(ITEMS) + 1, max_seq_length=4, **kw)).eval()
    model.set_item_vocab(ItemVocab(ITEMS))
    model.save_pretrained(tmp_path / "run")
    (tmp_path / "run" / "train_log.json").write_text(json.dumps({"data_options": {"kcore": kcore}}))
    return model, str(tmp_path / "run")


def _write(path, rows, header="user_id,item_id,timestamp"):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return str(path)


def _shop(tmp_path):
    """``(big, small)``: a file of 6 users, and one holding only user a's rows (the same rows) and user b's."""
    rows = [(u, ITEMS[(i * (k + 1)) % 12], 10 * k + i) for k, u in enumerate("abcdef") for i in range(8)]
    big = _write(tmp_path / "big.csv", rows)
    small = _write(tmp_path / "small.csv", [r for r in rows if r[0] in "ab"])
    return big, small, [x for u, x, _ in rows if u == "a"]


def test_serving_reads_a_users_whole_history_whoever_else_is_in_the_file(tmp_path):
    """The run's 5-core was applied to the serving file: user a's history (and top items) depended on who else was
    in the file -- items fewer than 5 of its users had were dropped. Now both files give a's whole history."""
    model, path = _model(tmp_path, kcore=5)
    big, small, history = _shop(tmp_path)
    one = main(["--model", path, "--data", big, "--user", "a", "--k", "3"])
    two = main(["--model", path, "--data", small, "--user", "a", "--k", "3"])
    assert one["history_length"] == two["history_length"] == len(history)
    assert one["items"] == two["items"] == model.recommend([history], k=3).items[0]
    vec = tmp_path / "v.safetensors"
    assert embed_main(["--model", path, "--data", small, "--out", str(vec), "--no-progress"])["users"] == 2
    # zoo.evaluate (and the library default) keep the run's k-core: its split is reproduced
    assert zoo_cli.model_data_options(path)["kcore"] == 5
    assert zoo_cli.model_data_options(path, zoo_cli.WHOLE_HISTORY)["kcore"] is None


def test_an_explicit_kcore_applies_and_all_users_says_who_got_no_line(tmp_path, capsys):
    """--all-users printed "wrote top-3 for 9 users of FILE" for a file of 10 users; it now says how many of the
    file's users it wrote, and why the others have none: the --kcore filter, or no item the model knows."""
    _, path = _model(tmp_path)
    rows = [(u, x, t) for u in "abc" for t, x in enumerate(ITEMS[:3])] + [("d", ITEMS[0], 9), ("z", 999, 9)]
    data = _write(tmp_path / "d.csv", rows)
    out = str(tmp_path / "r.jsonl")
    argv = ["--model", path, "--data", data, "--all-users", "--out", out, "--no-progress", "--k", "2"]
    summary = main(argv + ["--kcore", "3"])
    text = capsys.readouterr().out
    assert summary["users"] == 3 and summary["file_users"] == 5 and summary["kcore_dropped_users"] == 2
    assert f"wrote top-2 for 3 of 5 users of {data}" in text
    assert "the --kcore 3/3 filter removed 2 interactions and 2 users" in text, text
    summary = main(argv + ["--unknown-items", "drop"])
    text = capsys.readouterr().out
    assert summary["users"] == 4 and summary["kcore"] is None and summary["kcore_dropped_users"] == 0
    assert f"for 4 of 5 users of {data}" in text and "1 user had no item the model knows" in text, text
    assert "--kcore" not in text
    with pytest.raises(SystemExit, match=r"not in the model's item vocabulary.*read whole \(no k-core\) for "
                                         r"serving.*--kcore K filters --data first"):
        main(argv)


def test_a_user_the_filter_removed_is_not_reported_as_missing_from_the_file(tmp_path):
    """A user of the file whose rows the k-core removed got "user 'd' not found in FILE"; the error now says it has
    rows there and what removed them (and a user the file lacks is still "not found")."""
    _, path = _model(tmp_path)
    rows = [(u, x, t) for u in "abc" for t, x in enumerate(ITEMS[:3])] + [("d", ITEMS[0], 9), ("z", 999, 9)]
    data = _write(tmp_path / "d.csv", rows)
    argv = ["--model", path, "--data", data, "--k", "2"]
    with pytest.raises(SystemExit, match=r"^error: user 'd' has 1 interaction in .*d\.csv, all removed by the "
                                         r"--kcore 3/3 filter"):
        main(argv + ["--user", "d", "--kcore", "3"])
    assert main(argv + ["--user", "d"])["history_length"] == 1                  # whole file: d is there
    with pytest.raises(SystemExit, match=r"^error: user 'nobody' not found in "):
        main(argv + ["--user", "nobody", "--kcore", "3"])
    with pytest.raises(SystemExit, match=r"knows none of the history's items \(user 'z': 1 interaction in "):
        main(argv + ["--user", "z", "--unknown-items", "drop"])


def test_a_header_without_a_time_column_but_with_other_columns_is_noted(tmp_path):
    """created_at was dropped without a word and the row order became the time order; now one warning names the
    unused columns and --columns time=NAME. Not when every column is used or time=None says there is none."""
    rows = [(u, x, 1000 + t) for u in (1, 2) for t, x in enumerate(ITEMS[:3])]
    data = _write(tmp_path / "c.csv", rows, header="user_id,item_id,created_at")
    with pytest.warns(UserWarning, match=r"no time column among \['created_at'\]: the file's row order is taken as "
                                         r"the time order; name one with --columns time=NAME"):
        inter = read_interactions(data)
    assert inter.timestamp is None
    assert read_interactions(data, columns={"time": "created_at"}).timestamp.tolist()[:2] == [1000.0, 1001.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_interactions(data, columns={"time": None})
        read_interactions(_write(tmp_path / "plain.csv", [r[:2] for r in rows], header="user_id,item_id"))
        read_interactions(_write(tmp_path / "t.csv", rows))
    # a time-aware model on such a file: the error names --columns time=NAME
    _, path = _model(tmp_path, kcore=None, model_type="tim4rec_causal", hidden_size=16)
    for how in (["--user", "1"], ["--all-users", "--out", str(tmp_path / "r.jsonl"), "--no-progress"]):
        with pytest.warns(UserWarning, match="no time column"), pytest.raises(
                SystemExit, match=r"(has no timestamps|has none).*name it.*--columns time=NAME"):
            main(["--model", path, "--data", data, *how])


def test_iso_date_times_with_an_offset_are_read_as_seconds_others_say_what_to_do(tmp_path):
    """An ISO-8601 time column was refused as "not a number" with no way out but rewriting the file. Date-times with
    a UTC offset (or Z) are now read as exact Unix seconds; a naive one is refused saying to add the offset; any
    other text names the conversion and --columns time=none, which reads the file without its time column."""
    stamps = ["1997-09-22T16:57:58-05:00", "1997-09-22 21:57:59Z", "1997-09-22T23:58:00.25+02:00",
              "1997-09-23T03:28:01+0530"]
    data = _write(tmp_path / "iso.csv", [(1, x, t) for x, t in zip(ITEMS, stamps)], header="user,item,ts")
    want = [874965478.0, 874965479.0, 874965480.25, 874965481.0]
    assert read_interactions(data).timestamp.tolist() == want
    assert read_interactions(_write(tmp_path / "q.csv", [(1, x, f'"{t}"') for x, t in zip(ITEMS, stamps)],
                                    header="user,item,ts")).timestamp.tolist() == want            # quoted fields
    naive = _write(tmp_path / "naive.csv", [(1, ITEMS[0], stamps[0]), (1, ITEMS[1], "1997-09-22T16:58:00")],
                   header="user,item,ts")
    with pytest.raises(ValueError, match=r"line 3, column 'ts': timestamp '1997-09-22T16:58:00' is a date-time "
                                         r"without a UTC offset.*add the offset \('Z' for UTC"):
        read_interactions(naive)
    mixed = _write(tmp_path / "mixed.csv", [(1, ITEMS[0], stamps[0]), (1, ITEMS[1], 874965479)], header="user,item,ts")
    with pytest.raises(ValueError, match=r"line 3, column 'ts': timestamp '874965479' is not an ISO 8601 date-time"):
        read_interactions(mixed)
    dates = _write(tmp_path / "d.csv", [(u, x, f"22/09/1997 16:5{t}") for u in (1, 2) for t, x in enumerate(ITEMS[:3])],
                   header="user,item,ts")
    with pytest.raises(ValueError, match=r"line 2, column 'ts': timestamp '22/09/1997 16:50' is not a number"):
        read_interactions(dates)
    with pytest.raises(ValueError, match=r"1997-09-22/x' is not a number but a date as text.*pd.to_datetime.*"
                                         r"Parquet with a timestamp column.*--columns time=none"):
        read_interactions(_write(tmp_path / "e.csv", [(1, 5, 1), (1, 6, "1997-09-22/x")], header="user,item,ts"))
    inter = read_interactions(dates, columns={"time": None})
    assert inter.timestamp is None and inter.user.tolist() == [1, 1, 1, 2, 2, 2]
    assert zoo_cli._column("time=none") == ("time", None) and zoo_cli._column("user=none") == ("user", "none")
    assert zoo_cli.columns_argv(check_columns({"user": "u", "time": None})) == ["--columns", "user=u", "time=none"]
    with pytest.raises(ValueError, match="empty column name"):
        check_columns({"user": None})
    _, path = _model(tmp_path, kcore=None)
    out = main(["--model", path, "--data", dates, "--columns", "time=none", "--user", "2", "--k", "2"])
    assert out["history_tail"] == ITEMS[:3]


def test_iso_date_times_in_a_parquet_string_column(tmp_path):
    """A Parquet string time column of ISO 8601 date-times with offsets reads as the CSV does (pandas writes such
    a column when the dates were never parsed)."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user": [1, 1], "item": ITEMS[:2], "ts": ["1997-09-22T16:57:58-05:00",
                                                                        "1997-09-22T21:57:59Z"]}), tmp_path / "t.pq")
    assert read_interactions(tmp_path / "t.pq").timestamp.tolist() == [874965478.0, 874965479.0]
    pq.write_table(pa.table({"user": [1, 1], "item": ITEMS[:2], "ts": ["22/09/1997", "23/09/1997"]}), tmp_path / "d.pq")
    with pytest.raises(ValueError, match=r"column 'ts' holds string.*--columns time=none"):
        read_interactions(tmp_path / "d.pq")
    assert read_interactions(tmp_path / "d.pq", columns={"time": None}).timestamp is None


@pytest.mark.parametrize("bad,line,column", [({7: 1, 19: 2, 32: 0}, 7, "item"),     # item, time, user
                                             ({5: 2, 9: 0}, 5, "ts"), ({6: 0, 3: 2}, 3, "ts")])
def test_the_files_first_bad_line_is_named_whatever_its_column(tmp_path, bad, line, column):
    """With several bad rows the error named the first bad row of the user column (line 32), then the item's: the
    file took three runs to fix, in the wrong order. Now the file's first bad line comes first."""
    rows = [[1, ITEMS[i % 5], 100 + i] for i in range(40)]
    for ln, c in bad.items():
        rows[ln - 2][c] = ""
    data = _write(tmp_path / "k.csv", rows, header="user,item,ts")
    with pytest.raises(ValueError, match=rf"k\.csv, line {line}, column '{column}'"):
        read_interactions(data)
