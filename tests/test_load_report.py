"""What load_dataset read and what its k-core filter removed: kept by the data layer (``SequenceDataset.loaded``,
``stats()``), said by zoo.evaluate's text header and JSON and by a hub card's data line; exact repeats of a
(user, item, time) row are counted and kept."""

import json

import numpy as np
import pytest

from zoo import hub
from zoo.data import Interactions, build_sequences, load_dataset, read_interactions, split
from zoo.evaluate import main as evaluate_main
from zoo.vocab import ItemVocab

OLD_KEYS = ("users", "items", "interactions", "avg_length", "median_length", "min_length", "max_length")
NEW_KEYS = ("read", "repeated_rows", "kcore", "kcore_removed")


def _write(path, rows, header="user_id\titem_id\ttimestamp"):
    path.write_text("\n".join([header] + ["\t".join(map(str, r)) for r in rows]) + "\n")
    return path


def _two_core_file(path, repeats=()):
    """9 rows of 4 users and 5 items; its 2-core keeps users 1 and 2 with items 1-3 (6 rows): item 4 (one row)
    goes, then user 3 (one row left), and user 4 with item 5 (one row each). ``repeats``: rows appended as is."""
    rows = [(u, i, 10 * i) for u in (1, 2) for i in (1, 2, 3)] + [(3, 1, 5), (3, 4, 6), (4, 5, 7)]
    return _write(path, rows + list(repeats))


def test_load_dataset_keeps_the_files_counts_and_what_the_kcore_filter_removed(tmp_path):
    """stats() keeps its keys and values (those of the filtered sequences) and adds the file's rows, users and
    items as read, the k-core applied and what it removed; all JSON values, so a logged copy compares equal."""
    f = _two_core_file(tmp_path / "d.tsv")
    ds = load_dataset(f, kcore=2)
    stats = ds.stats()
    same = build_sequences(split.kcore_filter(read_interactions(f), 2, 2)).stats()
    assert {k: stats[k] for k in OLD_KEYS} == same and set(same) == set(OLD_KEYS)
    assert (stats["users"], stats["items"], stats["interactions"]) == (2, 3, 6)
    assert stats["read"] == {"rows": 9, "users": 4, "items": 5}
    assert stats["kcore"] == [2, 2] and stats["kcore_removed"] == {"rows": 3, "users": 2, "items": 2}
    assert stats["repeated_rows"] == 0
    assert json.loads(json.dumps(stats)) == stats            # zoo.train --resume compares the logged copy
    assert ds.load_note() == ("9 rows of 4 users and 5 items; after the 2-core filter (3 rows, 2 users and 2 items "
                              "removed) 6 interactions, 2 users, 3 items")
    one_side = load_dataset(f, kcore=None, item_k=2)        # user_k 0: only the item with one row goes
    assert one_side.stats()["kcore"] == [0, 2]
    assert one_side.stats()["kcore_removed"] == {"rows": 2, "users": 1, "items": 2}   # item 4, then item 5's user
    assert "after the 0/2-core (user/item) filter" in one_side.load_note()


def test_a_filter_that_removes_nothing_and_no_filter_say_so():
    """A k-core that keeps every row is said to remove nothing; unfiltered data has nothing to say (kcore and
    kcore_removed None) and a dataset built without load_dataset keeps the old stats() keys only."""
    inter = Interactions(np.array([1, 1, 2, 2]), np.array([7, 8, 7, 8]), np.array([1.0, 2.0, 1.0, 2.0]))
    kept = load_dataset(inter, kcore=2)
    assert kept.stats()["kcore_removed"] == {"rows": 0, "users": 0, "items": 0}
    assert kept.load_note() == "4 rows of 2 users and 2 items; the 2-core filter removed nothing"
    plain = load_dataset(inter, kcore=None)
    assert plain.stats()["kcore"] is None and plain.stats()["kcore_removed"] is None
    assert plain.stats()["read"] == {"rows": 4, "users": 2, "items": 2} and plain.load_note() == ""
    built = build_sequences(inter)
    assert built.loaded is None and tuple(built.stats()) == OLD_KEYS and built.load_note() == ""


def test_exact_repeats_are_counted_kept_and_count_in_the_kcore(tmp_path):
    """Rows that repeat an earlier (user, item, timestamp) row are counted (the first of each group is not) and
    kept: here item 5's repeat lets it and user 4 pass the 2-core. A repeated (user, item) at another time is no
    repeat, and a file without timestamps has none to count (None)."""
    f = _two_core_file(tmp_path / "d.tsv", repeats=[(4, 5, 7), (1, 1, 10), (1, 1, 10), (2, 2, 99)])
    ds = load_dataset(f, kcore=2)
    stats = ds.stats()
    assert stats["repeated_rows"] == 3 and stats["read"] == {"rows": 13, "users": 4, "items": 5}
    assert stats["kcore_removed"] == {"rows": 2, "users": 1, "items": 1}          # user 3 and item 4 only
    assert stats["interactions"] == 11 and 4 in ds.users and 5 in ds.vocab
    assert ds.load_note().endswith("; 3 rows repeat an earlier (user, item, time) row; kept, as RecBole keeps them")
    unfiltered = load_dataset(f, kcore=None)
    assert unfiltered.load_note() == "3 rows repeat an earlier (user, item, time) row; kept, as RecBole keeps them"
    one = Interactions(np.array(["a", "a"]), np.array(["x", "x"]), np.array([5.0, 5.0]))
    assert split.repeated_rows(one) == 1 and "1 row repeats an earlier" in load_dataset(one, kcore=None).load_note()
    untimed = _write(tmp_path / "n.tsv", [(1, 1), (1, 1), (1, 2), (2, 1), (2, 2)], header="user_id\titem_id")
    ds = load_dataset(untimed, kcore=None)
    assert ds.stats()["repeated_rows"] is None and ds.load_note() == ""
    assert split.load_report(read_interactions(untimed), None)["repeated_rows"] is None


def test_reencode_keeps_what_the_load_read(tmp_path):
    """A dataset re-indexed with a model's vocabulary (items it lacks dropped) still says what the file held and
    what the k-core removed; its own counts are those of the sequences left."""
    ds = load_dataset(_two_core_file(tmp_path / "d.tsv"), kcore=2)
    out = ds.reencode(ItemVocab([1, 2]), unknown="drop")
    assert out.loaded == ds.loaded and out.kcore == ds.kcore
    stats = out.stats()
    assert stats["interactions"] == 4 and stats["read"]["rows"] == 9 and stats["kcore_removed"]["rows"] == 3


def test_evaluate_says_what_the_kcore_removed_under_its_header(tmp_path, capsys):
    """zoo.evaluate's text header is followed by the load's note (the filter's counts and the repeats), and its
    JSON's ``dataset`` holds the same counts; data the load left whole adds no line."""
    rows = [(u, 100 + (u + j) % 8, 1000 + j) for u in range(1, 13) for j in range(6)]
    rows += [(1, 999, 2000), (2, 100 + 2 % 8, 1000)]         # item 999 once (5-core drops it); one exact repeat
    f = _write(tmp_path / "e.tsv", rows)
    result = evaluate_main(["--baseline", "pop", "--data", str(f), "--no-progress"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("most-popular baseline on e.tsv: test, 12 users")
    assert lines[1] == ("data e.tsv: 74 rows of 12 users and 9 items; after the 5-core filter (1 row, 0 users and 1 "
                        "item removed) 73 interactions, 12 users, 8 items; 1 row repeats an earlier (user, item, "
                        "time) row; kept, as RecBole keeps them")
    assert result["dataset"]["read"] == {"rows": 74, "users": 12, "items": 9}
    assert result["dataset"]["kcore"] == [5, 5] and result["dataset"]["repeated_rows"] == 1
    assert result["dataset"]["kcore_removed"] == {"rows": 1, "users": 0, "items": 1}
    evaluate_main(["--baseline", "pop", "--data", str(f), "--no-progress", "--kcore", "none"])
    assert capsys.readouterr().out.splitlines()[1] == ("data e.tsv: 1 row repeats an earlier (user, item, time) "
                                                       "row; kept, as RecBole keeps them")
    whole = _write(tmp_path / "w.tsv", rows[:-2])
    evaluate_main(["--baseline", "pop", "--data", str(whole), "--no-progress", "--kcore", "none"])
    assert capsys.readouterr().out.splitlines()[1].startswith("metric ")


def test_a_cards_data_line_gives_the_files_counts_and_the_filters(tmp_path):
    """A card's data line (its Data section for data the zoo does not know, and its Training section) gives the
    file's rows, users and items, then what the run's k-core left; unfiltered data keeps the plain counts."""
    f = _two_core_file(tmp_path / "shop.tsv", repeats=[(1, 1, 10)])
    ds = load_dataset(f, kcore=2)
    assert hub._data_description("shop.tsv", ds, ds) == (
        "`shop.tsv`: 10 rows of 4 users and 5 items; after the 2-core filter (3 rows, 2 users and 2 items removed) "
        "7 interactions, 2 users, 3 items; 1 row repeats an earlier (user, item, time) row; kept, as RecBole keeps "
        "them")
    plain = load_dataset(_two_core_file(tmp_path / "p.tsv"), kcore=None)
    assert hub._data_description("p.tsv", plain, plain) == "`p.tsv`: 4 users, 5 items, 9 interactions"


def test_a_card_built_from_a_run_names_the_kcore_it_was_read_with(tmp_path, capsys):
    """zoo.hub card on a run trained with the default k-core: the card's Data section says how many rows, users and
    items the file had and what the 5-core left, and eval_results.json keeps the counts (``dataset``)."""
    import torch

    from tests.test_train import TINY, _markov_file
    from zoo.train import main as train_main

    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "shop.tsv", n_users=30, length=(12, 20))
    with open(data, "a") as fh:
        fh.write("1\t7777\t2000000\n2\t8888\t2000000\n")          # two items of one row each: the 5-core drops them
    train_main(["--model", "gru4rec", "--data", str(data), "--epochs", "1", "--max-len", "20", "--no-progress",
                "--set", *TINY["gru4rec"], "--out", str(tmp_path / "run")])
    said = capsys.readouterr().out            # zoo.train's summary says what the filter removed, below its data line
    assert "[zoo.train] data shop.tsv: " in said and "after the 5-core filter (2 rows, 0 users and 2 items removed)" \
        in said, said
    card = tmp_path / "card"
    hub.build_card_folder(str(tmp_path / "run"), "tiny", str(data), out_dir=str(card), progress=False)
    read = read_interactions(data)
    n_items = len(set(read.item.tolist()))
    text = (card / "README.md").read_text()
    section = text[text.index("\n## Data\n"):text.index("\n## Evaluation")]
    assert (f"`shop.tsv`: {len(read):,} rows of 30 users and {n_items} items; after the 5-core filter (2 rows, "
            f"0 users and 2 items removed) {len(read) - 2:,} interactions, 30 users, {n_items - 2} items. It is not "
            "one of the public benchmarks") in section
    info = json.loads((card / "eval_results.json").read_text())
    assert info["dataset"]["kcore"] == [5, 5] and info["dataset"]["kcore_removed"]["items"] == 2
    assert info["dataset"]["read"] == {"rows": len(read), "users": 30, "items": n_items}


@pytest.mark.parametrize("kcore", [None, 2])
def test_stats_of_a_loaded_dataset_survive_a_json_round_trip(tmp_path, kcore):
    """Every value stats() adds is JSON as written (lists, dicts of ints, None), for both a filtered and an
    unfiltered load: zoo.train --resume compares a run's logged stats with the new ones."""
    ds = load_dataset(_two_core_file(tmp_path / "d.tsv", repeats=[(1, 1, 10)]), kcore=kcore)
    stats = ds.stats()
    assert set(NEW_KEYS) <= set(stats) and json.loads(json.dumps(stats)) == stats


def test_a_run_interrupted_before_the_load_counts_existed_resumes(tmp_path, capsys, monkeypatch):
    """zoo.train --resume compares the run's logged dataset stats with the data read now: a run logged before stats()
    held the load's counts (read, repeated_rows, kcore, kcore_removed) compares on the keys it has (it was refused:
    "not the data the run trained on (read: the run's None, now {...})"), while a file edited since is still refused."""
    import zoo.train as T
    from tests.test_train import TINY, _Clock, _markov_file
    from zoo import train_state
    from zoo.train import main as train_main

    monkeypatch.setattr(T, "time", _Clock())
    data = _markov_file(tmp_path / "markov.tsv", n_users=30)
    args = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "3", "--set", *TINY["gru4rec"], "--out", str(tmp_path / "r")]
    train_main(args + ["--max-minutes", "0.0001"])                        # the budget ends it after epoch 1
    state = tmp_path / "r" / "resume" / train_state.STATE_FILE
    saved = json.loads(state.read_text())
    logged = saved["log"]["dataset"]
    assert set(NEW_KEYS) <= set(logged)
    saved["log"]["dataset"] = {k: v for k, v in logged.items() if k not in NEW_KEYS}   # as an older zoo logged it
    state.write_text(json.dumps(saved))
    capsys.readouterr()
    log = train_main(args + ["--resume", "--max-minutes", "5"])
    assert len(log["epochs"]) == 3 and log["stopped"] == "max epochs"
