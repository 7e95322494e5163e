"""User and item ids end to end: what is an id, and which two ids are one.

``007`` and ``7`` are two ids (the readers keep them apart, and so must every mapping onto a model's vocabulary);
``None``, a NaN, a float or a bool is no id of a str vocabulary; user ids are a str or an int whatever the store;
``#hash`` in an id file is an id; floats beyond 2**53 are no exact ids; ids are compared exactly (NFC and NFD are two
ids, and the error says so); files carrying ids are UTF-8 whatever the locale.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
import torch

from test_train import TINY, _markov_file, refused                         # noqa: F401
from zoo.data.readers import Interactions
from zoo.data.split import build_sequences
from zoo.models import MODELS
from zoo.vocab import ItemVocab, UnknownItemError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
STR_ITEMS = ["None", "nan", "1.0", "True", "7", "#hash", "# x", NFC, "東京", "a", "b", "c"]
INT_ITEMS = [7, 5, 42, 100, -3, 6, 8, 9]
K = 3


def _gru(items, seed=0):
    cfg_cls, cls = MODELS["gru4rec"]
    torch.manual_seed(seed)
    model = cls(cfg_cls(n_items=len(items) + 1, max_seq_length=4, embedding_size=8, hidden_size=8)).eval()
    model.set_item_vocab(ItemVocab(items))
    return model


def _data(items_per_user: dict, name="data"):
    users, items = [], []
    for u, its in items_per_user.items():
        users += [u] * len(its)
        items += its
    return build_sequences(Interactions(np.array(users), np.array(items, dtype=object if any(
        isinstance(x, str) for x in items) else np.int64), None, source=name), name=name)


# ------------------------------------------------------------------------ 1. '007' is not the int item 7
def test_a_non_canonical_int_text_is_an_unknown_id_of_an_int_vocabulary():
    """ItemVocab: '007', ' 7 ' and '-0' are other ids than the ints 7 and 0 (the readers keep '007' and '7' apart):
    unknown in encode and `in`, refused by extended (an int vocabulary cannot hold them); '7' is still 7."""
    v = ItemVocab([7, 5, 0])
    assert v.encode(["7", 7, np.int64(5), "0"]) == [1, 1, 2, 3]
    for other in ("007", " 7 ", "-0", "05"):
        assert other not in v
        with pytest.raises(UnknownItemError, match=rf"unknown item id '{other}'"):
            v.encode([other])
    with pytest.raises(UnknownItemError, match="'007' is not the canonical spelling of the int id 7"):
        v.encode(["007"])
    with pytest.raises(TypeError, match=r"item id '007' \(str\) at position 1 is not an int id"):
        v.extended([5, "007"])
    assert v.extended(["42"])[1] == [42]


def test_data_ids_spelled_otherwise_are_unknown_to_an_int_model():
    """SequenceDataset.reencode (zoo.evaluate, zoo.recommend --data, zoo.embed, zoo.train --init-from): the data's
    '007' (a str column, as the readers read it) is an unknown item of an int vocabulary, never merged into item 7."""
    ds = _data({"u1": ["007", "5", "7"], "u2": ["007", "42"]})
    assert ds.vocab.id_type == "str"
    vocab = ItemVocab([7, 5, 42])
    with pytest.raises(UnknownItemError, match=r"1 of the 4 items .*\(2 interactions\).*\['007'\].*canonical"):
        ds.reencode(vocab)
    out = ds.reencode(vocab, unknown="drop")
    assert [vocab.decode(s) for s in out.sequences] == [[5, 7], [42]]


def test_runtime_reads_non_canonical_int_text_as_an_unknown_id(tmp_path):
    """export.runtime, as zoo.vocab: '007' is unknown to a graph with an int vocabulary (it was item 7)."""
    pytest.importorskip("onnxruntime")
    from export.onnx import export_model
    from export.runtime import OnnxStepSession, UnknownItemIdError

    export_model(_gru(INT_ITEMS), tmp_path / "g", topk=K, verify=False)
    sess = OnnxStepSession(tmp_path / "g")
    assert sess.encode([[7, "7", np.int64(5)]]) == [[1, 1, 2]]
    for other in ("007", " 7 "):
        with pytest.raises(UnknownItemIdError, match=rf"history 0: unknown item id '{other}'.*canonical"):
            sess.encode([[other]])


# --------------------------------------------------- 2. None / NaN / floats / bools are no str ids
@pytest.mark.parametrize("bad", [None, float("nan"), 1.0, True, np.float32(0.5), np.bool_(True), b"a"])
def test_a_str_vocabulary_refuses_ids_that_are_no_str(bad):
    """A str vocabulary holding 'None', 'nan', '1.0', 'True': None, NaN, 1.0, True are not those items (a missing
    value of a DataFrame scored as the item 'nan'); a TypeError naming the id and its position. Ints are their text,
    numpy ints too."""
    v = ItemVocab(STR_ITEMS)
    with pytest.raises(TypeError, match=r"item id .* at position 1 is not a str id; this vocabulary holds str ids"):
        v.encode(["a", bad])
    assert bad not in v
    with pytest.raises(TypeError, match="at position 0 is not a str id"):
        v.extended([bad])
    assert v.encode([7, np.int64(7), "7", np.str_("a")]) == [5, 5, 5, 10]


@pytest.fixture(scope="module")
def str_graph(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from export.onnx import export_model

    folder = tmp_path_factory.mktemp("str_graph")
    export_model(_gru(STR_ITEMS), folder, topk=K, verify=False)
    return folder


def test_runtime_refuses_ids_that_are_no_str(str_graph):
    """export.runtime's str vocabulary: None, NaN, 1.0, True are refused naming the id and position (they found
    the items 'None', 'nan', '1.0', 'True'); ints (numpy's too) are their text."""
    from export.runtime import OnnxStepSession

    sess = OnnxStepSession(str_graph)
    for bad in (None, float("nan"), 1.0, True, np.float64(7.0)):
        with pytest.raises(TypeError, match=r"history 0, position 1: item id .* is not a str id"):
            sess.encode([["a", bad]])
    assert sess.encode([[7, np.int64(7), "7", "None"]]) == [[5, 5, 5, 1]]


# ----------------------------------------------------------------- 3. user ids: str or int, every store
def test_every_store_takes_str_or_int_user_ids_only(str_graph):
    """UserStateRecommender with its default dict: user 7.0 continued user 7's state, True user 1's, and a NaN user
    left a new orphan entry at every event. Now the SQLite store's rule for every store: a TypeError naming the id;
    numpy ints are ints (one user with 7)."""
    from export.runtime import UserStateRecommender

    rec = UserStateRecommender(str_graph)
    fresh = rec.recommend("fresh", ["a"])
    rec.recommend(7, ["b", "c"])
    rec.recommend(1, ["c", "b"])
    for bad in (7.0, np.float64(7), True, np.bool_(True), float("nan"), None, (7,), [7], b"7"):
        with pytest.raises(TypeError, match=r"the user id of event 0 must be a str or an int .*got"):
            rec.recommend(bad, ["a"])
        with pytest.raises(TypeError, match="must be a str or an int"):
            rec.forget(bad)
    assert sorted(map(str, rec.store)) == ["1", "7", "fresh"] and all(type(u) in (int, str) for u in rec.store)
    rec.recommend(np.int64(7), ["a"])
    assert sorted(map(str, rec.store)) == ["1", "7", "fresh"] and type(next(u for u in rec.store if u == 7)) is int
    rec.forget(np.int64(7))
    assert 7 not in rec.store and rec.recommend("other", ["a"]) == fresh


def test_explicit_state_client_takes_str_or_int_user_ids_only(monkeypatch):
    """export.triton_client.ExplicitStateRecommender(store={}) (every generated README's snippet) accepted user 7.0
    as user 7: refused as the runtime and the SQLite store refuse it, before anything is sent."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from test_triton import STEP_IO, _fake_http_client

    from export.triton_client import ExplicitStateRecommender

    ins, outs = {**STEP_IO[0], "h": ("FP32", (-1, 2))}, {**STEP_IO[1], "h_out": ("FP32", (-1, 2))}
    calls, _ = _fake_http_client(monkeypatch, ins, outs, {"state_init": json.dumps({"h": 0.0})})
    store = {}
    rec = ExplicitStateRecommender("127.0.0.1:1", "m", protocol="http", store=store)
    rec.recommend(7, [1])
    n = len(calls)
    for bad in (7.0, True, float("nan"), None, [7]):
        with pytest.raises(TypeError, match="must be a str or an int"):
            rec.recommend(bad, [1])
        with pytest.raises(TypeError, match="must be a str or an int"):
            rec.forget(bad)
    assert len(calls) == n and list(store) == [7]
    rec.recommend(np.int64(7), [1])
    assert list(store) == [7]


# ---------------------------------------------------------------------- 4. '#hash' in an id file
def test_an_id_starting_with_hash_is_an_id_in_id_files(tmp_path, capsys):
    """--exclude-items-file / --candidates-file / export.onnx --exclude-items: '#hash' was skipped as a comment (a
    retired item stayed recommended). Only '#' alone or '#' then a space starts a comment; '\\# x' is the id '# x'."""
    from zoo.recommend import ID_FILE_RULE, id_of_line, main, read_id_list

    model = _gru(STR_ITEMS)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "ids.txt").write_text("# retired items\n#\n#hash\n\n  a  \n\\# x\n\\\\#y\n#\tnote\n", encoding="utf-8")
    assert read_id_list(tmp_path / "ids.txt", model) == ["#hash", "a", "# x", "\\#y"]
    assert [id_of_line(x) for x in ("#", "# c", "#hash", "\\#hash")] == [None, None, "#hash", "#hash"]
    (tmp_path / "ids.txt").write_text("#hash\n# x\n", encoding="utf-8")
    hist = ["b", "c"]
    top = model.recommend([hist], k=len(STR_ITEMS) - 2).items[0]
    out = main(["--model", str(tmp_path / "m"), "--history", *hist, "--k", "3", "--exclude-items-file",
                str(tmp_path / "ids.txt")])
    assert "#hash" not in out["items"] and out["items"] == [x for x in top if x != "#hash"][:3]
    out = main(["--model", str(tmp_path / "m"), "--history", *hist, "--k", "1", "--candidates-file",
                str(tmp_path / "ids.txt")])
    assert out["items"] == ["#hash"]
    assert "'#hash' is an id" in ID_FILE_RULE
    helps = subprocess.run([sys.executable, "-m", "zoo.recommend", "--help"], capture_output=True, text=True,
                           cwd=ROOT, env={**os.environ, "COLUMNS": "200"}).stdout
    assert "'#hash' is an id" in helps


def test_export_exclude_items_reads_hash_ids(tmp_path):
    pytest.importorskip("onnx")
    from export.onnx import excluded_indices

    model = _gru(STR_ITEMS)
    (tmp_path / "ids.txt").write_text("# retired\n#hash\n", encoding="utf-8")
    assert excluded_indices(model, str(tmp_path / "ids.txt")) == model.item_vocab.encode(["#hash"])


# ----------------------------------------------------------------------- 5. float ids beyond 2**53
def test_float_ids_beyond_2_53_are_refused():
    """Two int64 ids 2**53 and 2**53+1 are one float64: a float id column there was accepted, merging them (and the
    id read back was not the one given). Refused naming the row; float32 from 2**24."""
    big = np.array([2 ** 53, 2 ** 53 + 1, 5], dtype=np.int64)
    with pytest.raises(ValueError, match=r"row 1, column 'item': id 9007199254740992 is a float64 at or beyond "
                                         r"2\*\*53.*int64 or as strings"):
        Interactions(np.array([1, 1, 2]), big.astype(np.float64), None)
    with pytest.raises(ValueError, match=r"row 2, column 'user'.*float32 at or beyond 2\*\*24"):
        Interactions(np.array([1, 2 ** 24 + 2, 3], dtype=np.float32), np.array([1, 2, 3]), None)
    ok = Interactions(np.array([1.0, 2.0, 3.0]), np.array([2.0 ** 53 - 1, -(2.0 ** 53 - 1), 5.0]), None)
    assert ok.item.dtype == np.int64 and ok.item.tolist() == [2 ** 53 - 1, -(2 ** 53 - 1), 5]


# ------------------------------------------------- 6. --init-from an int model, --unknown-items add, str ids
def test_init_from_an_int_model_with_string_items_to_add_is_a_usage_error(tmp_path, capsys):
    """zoo.train --init-from <int vocabulary> --unknown-items add on data with string item ids ('abc', '007') was a
    TypeError traceback; now the one-line usage error the README promises."""
    from zoo.train import main as train_main

    base = ["--model", "gru4rec", "--max-len", "20", "--kcore", "0", "--no-progress", "--epochs", "1",
            "--batch-size", "16", "--set", *TINY["gru4rec"]]
    a = _markov_file(tmp_path / "a.tsv", n_users=30)
    train_main(base + ["--data", str(a), "--out", str(tmp_path / "a")])
    head, *rows = a.read_text().splitlines()
    u, i, t = rows[0].split("\t")
    b = tmp_path / "b.tsv"
    b.write_text("\n".join([head, *rows, f"{u}\tabc\t{int(t) + 1}", f"{u}\t007\t{int(t) + 2}"]) + "\n")
    for unknown in ("add", None):
        extra = ["--unknown-items", unknown] if unknown else []
        with refused(capsys, r"--init-from .*: (the data's item ids are strings .*'abc'.*cannot add|2 of the data's)"):
            train_main(base + ["--data", str(b), "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a"),
                               *extra])
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------- 7. UTF-8 whatever the locale
def test_ranks_round_trip_with_non_ascii_ids_under_an_ascii_locale(tmp_path):
    """zoo.evaluate --ranks-out then zoo.compare with non-ASCII user and item ids, in a process whose locale encoding
    is ASCII (LC_ALL=C, no UTF-8 mode): the ranks file was written in the locale's encoding (UnicodeEncodeError) and
    read back in it; now UTF-8 both ways. item_vocab.json with a non-ASCII id written by hand loads too."""
    items = ["東京", "🍕", NFC, "שלום"] + [f"i{j}" for j in range(8)]
    rng = np.random.default_rng(0)
    lines = ["user_id\titem_id\ttimestamp"]
    for u in ("ü1", "用户2", "u3", "u4", "u5", "u6"):
        for t, x in enumerate(rng.choice(items, size=6)):
            lines.append(f"{u}\t{x}\t{t}")
    (tmp_path / "d.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = _gru(items)
    model.save_pretrained(tmp_path / "m")
    vocab = tmp_path / "m" / "item_vocab.json"                      # as a person would write it: raw UTF-8
    vocab.write_text(json.dumps(json.loads(vocab.read_text(encoding="utf-8")), ensure_ascii=False), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "PYTHONUTF8", "LANG", "LANGUAGE")}
    env.update(LC_ALL="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0", PYTHONPATH=ROOT)

    def run(*args):
        p = subprocess.run([sys.executable, "-X", "utf8=0", *args], capture_output=True, text=True, env=env,
                           cwd=tmp_path, encoding="utf-8", errors="replace")
        assert p.returncode == 0, p.stderr[-2000:]
        return p

    assert run("-c", "import locale; print(locale.getpreferredencoding(False))").stdout.strip() != "UTF-8"
    run("-m", "zoo.evaluate", "--model", "m", "--data", "d.tsv", "--kcore", "none", "--no-progress",
        "--ranks-out", "a.csv")
    text = (tmp_path / "a.csv").read_text(encoding="utf-8")
    assert "用户2" in text and "ü1" in text
    run("-m", "zoo.compare", "a.csv", "a.csv", "--bootstrap", "100", "--ks", "5", "10")
    run("-c", "from zoo.vocab import ItemVocab; v = ItemVocab.load('m'); assert v.encode(['\\u6771\\u4eac']) == [1]")


# ------------------------------------------------------------ 8. NFC and NFD look-alikes: said in the error
def test_an_unknown_id_in_another_unicode_normal_form_is_said_so(str_graph):
    """Ids are compared exactly (NFC and NFD 'café' are two ids: nothing is normalised silently), but the "unknown
    item id" error printed both the same; it now names the normal form and shows both escaped."""
    v = ItemVocab(STR_ITEMS)
    assert NFD not in v
    with pytest.raises(UnknownItemError, match=r"the vocabulary holds 'caf\\xe9', the same text in Unicode normal "
                                               r"form NFC \(this id is 'cafe\\u0301'\): ids are compared exactly"):
        v.encode([NFD])
    with pytest.raises(UnknownItemError, match=r"unknown item id 'x': not in the model's item vocabulary "
                                               r"\(12 items\)$"):
        v.encode(["x"])
    ds = _data({"u": [NFD, "a"]})
    with pytest.raises(UnknownItemError, match="Unicode normal form NFC"):
        ds.reencode(v)
    from export.runtime import OnnxStepSession

    with pytest.raises(KeyError, match=r"history 0: unknown item id .*Unicode normal form NFC"):
        OnnxStepSession(str_graph).encode([[NFD]])
