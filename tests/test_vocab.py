"""Item vocabulary: caller ids <-> internal indices, saved as plain JSON."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.vocab import ItemVocab, UnknownItemError

ROOT = Path(__file__).resolve().parents[1]


def test_int_and_str_round_trip(tmp_path):
    v = ItemVocab([3186, 1022, 1270])
    assert v.n_items == 4 and len(v) == 3
    assert v.encode([1270, "3186"]) == [3, 1]
    assert v.decode([1, 3]) == [3186, 1270]
    v.save(tmp_path)
    assert ItemVocab.load(tmp_path) == v and ItemVocab.load(tmp_path).id_type == "int"
    s = ItemVocab(["B00A", "B00B"])
    s.save(tmp_path)
    back = ItemVocab.load(tmp_path / "item_vocab.json")
    assert back.decode([2]) == ["B00B"] and back.id_type == "str"


def test_errors_name_the_problem(tmp_path):
    v = ItemVocab([10, 20])
    with pytest.raises(UnknownItemError, match="unknown item id 30"):
        v.encode([10, 30])
    with pytest.raises(TypeError, match="not an int id"):
        v.encode([1.5])
    with pytest.raises(IndexError, match="out of range 1..2"):
        v.decode([0])
    with pytest.raises(ValueError, match="unique"):
        ItemVocab([1, 2, 1])
    with pytest.raises(ValueError, match="all int or all str"):
        ItemVocab([1, "a"])
    with pytest.raises(ValueError, match="at least one item"):
        ItemVocab([])
    (tmp_path / "item_vocab.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt item vocabulary"):
        ItemVocab.load(tmp_path)
    (tmp_path / "item_vocab.json").write_text(json.dumps({"items": [1]}))
    with pytest.raises(ValueError, match="not a zoo item vocabulary"):
        ItemVocab.load(tmp_path)


def test_an_interrupted_save_keeps_the_saved_vocabulary(tmp_path, monkeypatch):
    ItemVocab([5, 7, 9]).save(tmp_path)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", fail)                  # interrupted while the new vocabulary is written
    with pytest.raises(KeyboardInterrupt):
        ItemVocab(list(range(100))).save(tmp_path)
    monkeypatch.undo()
    assert ItemVocab.load(tmp_path / "item_vocab.json").items == [5, 7, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["item_vocab.json"]    # no temporary file left beside it


def test_only_integer_ids_for_an_int_vocabulary():
    """numpy / torch integer scalars are ids; floats (numpy's too, whose fraction would be cut off), bools and strings
    of non-ASCII digits are refused like a Python float, never truncated or read as another item."""
    import numpy as np          # hard dependencies of the zoo: a missing one must fail, not skip
    import torch
    v = ItemVocab([588, 589, 1])
    assert v.encode([np.int64(588), np.int32(1), torch.tensor(589), "589"]) == [1, 3, 2, 2]
    for other in (" 589 ", "0588"):                         # another spelling is another id: unknown here
        with pytest.raises(UnknownItemError, match="not the canonical spelling of the int id"):
            v.encode([other])
        assert other not in v
    for bad in (np.float64(588.9), np.float32(588.0), torch.tensor(588.0), np.bool_(True), True, "³", "\u0665\u0668\u0668"):
        with pytest.raises(TypeError, match="is not an int id"):
            v.encode([bad])
        assert bad not in v


def test_int_ids_against_a_string_vocabulary_are_their_text():
    """A string vocabulary of digit ids ('7', '007'): an int id is looked up as its text, so 7 is '7' and '007' stays
    its own item (an int not turned into text was an unknown id)."""
    import numpy as np
    v = ItemVocab(["7", "007"])
    assert v.id_type == "str" and v.encode([7, "007", np.int64(7)]) == [1, 2, 1]
    assert 7 in v and 8 not in v
    with pytest.raises(UnknownItemError, match="unknown item id 8"):
        v.encode([8])


# ------------------------------------------------------------------ mutation audit round 6 (G)
def test_bools_are_not_int_item_ids():
    """A list of bools is no vocabulary (True/False would silently become items 1 and 0)."""
    for items in ([True, False], [1, True]):
        with pytest.raises(ValueError, match=r"all int or all str, got types \[.*'bool'"):
            ItemVocab(items)


def test_negative_int_ids_written_as_text():
    """'-3' is the int id -3 of an int vocabulary, not a refused string; ' -3 ' is another spelling: unknown."""
    v = ItemVocab([-3, 5])
    assert v.encode(["-3", -3, "5"]) == [1, 1, 2] and "-3" in v and "-4" not in v and " -3 " not in v


def test_saved_file_is_the_documented_format(tmp_path):
    """item_vocab.json holds exactly format, id_type (the vocabulary's own), pad_index 0 and the items."""
    for items, kind in ((["7", "007"], "str"), ([3186, 1022], "int")):
        path = ItemVocab(items).save(tmp_path)
        with open(path) as f:
            assert json.load(f) == {"format": "zoo-item-vocab/1", "id_type": kind, "pad_index": 0, "items": items}


def test_id_type_str_makes_string_ids_of_numbers_in_the_file():
    """A file that says id_type "str" gives string ids even where its items are written as JSON numbers."""
    v = ItemVocab.from_dict({"format": "zoo-item-vocab/1", "id_type": "str", "pad_index": 0, "items": [7, 8]})
    assert v.id_type == "str" and v.items == ["7", "8"] and v.decode([2]) == ["8"]


def test_a_file_whose_id_type_does_not_fit_its_items_is_refused(tmp_path):
    """id_type "int" with string (or float, bool) items would silently make a str vocabulary, whose ids then never
    match the data's int ids: refused naming the file, the field and the first such item; so are an unknown id_type
    and items that are no list. A file without id_type keeps reading its items as they are."""
    head = {"format": "zoo-item-vocab/1", "pad_index": 0}
    path = tmp_path / "item_vocab.json"
    for items, bad in ((["1", "2", "a"], r"items\[0\] is '1' \(str\)"), ([1, 2, "a"], r"items\[2\] is 'a' \(str\)"),
                       ([1, 2.0], r"items\[1\] is 2.0 \(float\)"), ([1, True], r"items\[1\] is True \(bool\)")):
        path.write_text(json.dumps({**head, "id_type": "int", "items": items}))
        with pytest.raises(ValueError, match=rf"item_vocab.json: id_type is 'int' but {bad}: write the ids as JSON "
                                             "integers, or id_type 'str'"):
            ItemVocab.load(tmp_path)
    path.write_text(json.dumps({**head, "id_type": "float", "items": [1, 2]}))
    with pytest.raises(ValueError, match=r"item_vocab.json: id_type must be 'int' or 'str', got 'float'"):
        ItemVocab.load(tmp_path)
    with pytest.raises(ValueError, match=r"v.json: items must be a list of item ids, got dict"):
        ItemVocab.from_dict({**head, "id_type": "int", "items": {"1": 1}}, source="v.json")
    assert ItemVocab.from_dict({**head, "items": [5, 6]}).id_type == "int"
    assert ItemVocab.from_dict({**head, "items": ["5", "6"]}).id_type == "str"


_HEAD = {"format": "zoo-item-vocab/1", "pad_index": 0}
#: (what is wrong, the file's bytes, the problem its error must name besides the file)
_BAD_VOCABS = [
    ("not JSON", b"{oops", r"^corrupt item vocabulary .*: Expecting property name"),
    ("not UTF-8", b"\xff\xfe\x00\x01", r"^corrupt item vocabulary .*: 'utf-8' codec can't decode"),
    ("a bare list", json.dumps([1, 2]), r"is not a zoo item vocabulary \(expected a JSON object with format"),
    ("another format", json.dumps({**_HEAD, "format": "zoo-item-vocab/2", "items": [1, 2]}), "is not a zoo item"),
    ("no format", json.dumps({"items": [1, 2]}), "is not a zoo item vocabulary"),
    ("no items", json.dumps({**_HEAD, "id_type": "int"}), "is not a zoo item vocabulary"),
    ("items no list", json.dumps({**_HEAD, "items": {"1": 1}}), r": items must be a list of item ids, got dict"),
    ("items null", json.dumps({**_HEAD, "items": None}), r": items must be a list of item ids, got NoneType"),
    ("unknown id_type", json.dumps({**_HEAD, "id_type": "float", "items": [1, 2]}),
     r": id_type must be 'int' or 'str', got 'float'"),
    ("id_type int, str items", json.dumps({**_HEAD, "id_type": "int", "items": ["1", "2"]}),
     r": id_type is 'int' but items\[0\] is '1' \(str\): write the ids as JSON integers, or id_type 'str'"),
    ("id_type int, a float", json.dumps({**_HEAD, "id_type": "int", "items": [1, 2.0]}),
     r": id_type is 'int' but items\[1\] is 2.0 \(float\)"),
    ("id_type int, a bool", json.dumps({**_HEAD, "id_type": "int", "items": [1, True]}),
     r": id_type is 'int' but items\[1\] is True \(bool\)"),
    ("mixed int and str", json.dumps({**_HEAD, "items": [1, "a"]}),
     r": items must be all int or all str, got types \['int', 'str'\] \(items\[1\] is 'a'\)"),
    ("mixed str and int", json.dumps({**_HEAD, "items": ["a", 1]}), r"all int or all str.*\(items\[1\] is 1\)"),
    ("floats", json.dumps({**_HEAD, "items": [1.5, 2.5]}), r"all int or all str, got types \['float'\]"),
    ("bools", json.dumps({**_HEAD, "items": [True, False]}), r"all int or all str, got types \['bool'\]"),
    ("an int and a bool", json.dumps({**_HEAD, "items": [1, True]}), r"all int or all str.*\(items\[1\] is True\)"),
    ("null ids", json.dumps({**_HEAD, "items": [None, None]}), r"all int or all str, got types \['NoneType'\]"),
    ("lists as ids", json.dumps({**_HEAD, "items": [[1], [2]]}), r"all int or all str, got types \['list'\]"),
    ("pad_index 1", json.dumps({**_HEAD, "pad_index": 1, "items": [1, 2]}),
     r": pad_index must be 0 \(items\[i\] is index i \+ 1\), got 1"),
    ("pad_index false", json.dumps({**_HEAD, "pad_index": False, "items": [1, 2]}), r": pad_index must be 0"),
    ("no ids", json.dumps({**_HEAD, "items": []}), r" holds no items"),
    ("no str ids", json.dumps({**_HEAD, "id_type": "str", "items": []}), r" holds no items"),
    ("an int twice", json.dumps({**_HEAD, "items": [1, 2, 1]}),
     r" holds an item id more than once: 1 is items\[0\] and items\[2\]"),
    ("a str twice", json.dumps({**_HEAD, "id_type": "str", "items": ["a", "b", "b"]}),
     r" holds an item id more than once: 'b' is items\[1\] and items\[2\]"),
    ("the same text twice", json.dumps({**_HEAD, "id_type": "str", "items": [7, "7"]}),
     r" holds an item id more than once: '7' is items\[0\] and items\[1\]"),
    # JSON nested deeper than the parser goes: json.load's RecursionError was a traceback through every reader
    ("nested too deeply", b'{"format": "zoo-item-vocab/1", "items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     r"^corrupt item vocabulary .*: nested too deeply to read$"),
    # id_type "str" took any item as its Python text: null was the id 'None', {"x": 1} the id "{'x': 1}"
    ("id_type str, a null", json.dumps({**_HEAD, "id_type": "str", "items": ["a", None]}),
     r": id_type is 'str' but items\[1\] is null: write the ids as JSON strings \(an integer is read as its text\)$"),
    ("id_type str, a bool", json.dumps({**_HEAD, "id_type": "str", "items": [7, "b", True]}),
     r": id_type is 'str' but items\[2\] is true: write the ids as JSON strings"),
    ("id_type str, false", json.dumps({**_HEAD, "id_type": "str", "items": [False, "b"]}),
     r": id_type is 'str' but items\[0\] is false: write the ids as JSON strings"),
    ("id_type str, a float", json.dumps({**_HEAD, "id_type": "str", "items": ["a", 1.5]}),
     r": id_type is 'str' but items\[1\] is 1.5: write the ids as JSON strings"),
    ("id_type str, a whole float", json.dumps({**_HEAD, "id_type": "str", "items": ["a", 2.0]}),
     r": id_type is 'str' but items\[1\] is 2.0: write the ids as JSON strings"),
    ("id_type str, a NaN", json.dumps({**_HEAD, "id_type": "str", "items": ["a", float("nan")]}),
     r": id_type is 'str' but items\[1\] is NaN: write the ids as JSON strings"),
    ("id_type str, an object", json.dumps({**_HEAD, "id_type": "str", "items": ["a", {"x": 1}]}),
     r": id_type is 'str' but items\[1\] is a JSON object: write the ids as JSON strings"),
    ("id_type str, an array", json.dumps({**_HEAD, "id_type": "str", "items": ["a", "b", [1]]}),
     r": id_type is 'str' but items\[2\] is a JSON array: write the ids as JSON strings"),
]


@pytest.mark.parametrize("what,text,problem", _BAD_VOCABS, ids=[b[0] for b in _BAD_VOCABS])
def test_both_readers_refuse_each_bad_vocabulary_alike(tmp_path, what, text, problem):
    """The model's reader (ItemVocab.load / from_dict) and the torch-free serving runtime's
    (export.runtime.read_vocab) were written separately: the runtime took an empty vocabulary (and ItemVocab.load
    raised a bare UnicodeDecodeError for a non-UTF-8 file), ItemVocab named no file for a duplicate id, mixed types
    or no items. Both check the format in one place now: each bad file is one ValueError naming it and the problem,
    the same from each (the runtime's count check, n_items - 1 ids, is never the reason here)."""
    runtime = pytest.importorskip("export.runtime")         # needs onnxruntime (the export extra)
    path = tmp_path / "item_vocab.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        d = None
    items = d.get("items") if isinstance(d, dict) else None
    n_items = len(items) + 1 if isinstance(items, list) else 3     # the count fits wherever there is one
    errors = []
    from export.triton import check_vocab                   # the Triton generator's --vocab check reads it too

    for read in (lambda: runtime.read_vocab(path, n_items), lambda: ItemVocab.load(tmp_path),
                 lambda: ItemVocab.load(path), lambda: check_vocab(path, {"n_items": n_items})):
        with pytest.raises(ValueError) as e:
            read()
        errors.append(str(e.value))
    if not isinstance(text, bytes) and not text.startswith("{oops"):
        with pytest.raises(ValueError) as e:
            ItemVocab.from_dict(json.loads(text), source=str(path))
        errors.append(str(e.value))
    for message in errors:
        assert str(path) in message and re.search(problem, message), message
    assert len(set(errors)) == 1, errors                    # one check, one wording, whichever reader asks


@pytest.mark.parametrize("vocab,items,str_ids", [
    ({"items": [5, 6]}, [5, 6], False), ({"items": ["5", "6"]}, ["5", "6"], True),
    ({"id_type": "int", "items": [5, 6]}, [5, 6], False), ({"id_type": "str", "items": [7, "b"]}, ["7", "b"], True),
])
def test_both_readers_read_a_good_vocabulary_alike(tmp_path, vocab, items, str_ids):
    runtime = pytest.importorskip("export.runtime")
    path = tmp_path / "item_vocab.json"
    path.write_text(json.dumps({**_HEAD, **vocab}))
    assert runtime.read_vocab(path, len(items) + 1) == (items, str_ids)
    v = ItemVocab.load(path)
    assert v.items == items and v.id_type == ("str" if str_ids else "int")
    with pytest.raises(ValueError, match=rf"item vocabulary {re.escape(str(path))} holds {len(items)} items, but the "
                                         rf"graph has {len(items) + 1}"):
        runtime.read_vocab(path, len(items) + 2)


def test_an_array_is_not_an_item_id():
    """A numpy array of several ids given as one id is a TypeError naming it (like any non-int id), never the
    ValueError numpy's .item() raises."""
    import numpy as np
    v = ItemVocab([1, 2])
    with pytest.raises(TypeError, match="is not an int id"):
        v.encode([np.array([1, 2])])
    assert np.array([1, 2]) not in v
    assert v.encode([np.array([2])]) == [2]                    # a one-element array is its element


def test_vocabularies_equal_only_with_the_same_items_in_order():
    assert ItemVocab([1, 2]) == ItemVocab([1, 2]) and ItemVocab([1, 2]) != ItemVocab([2, 1])
    assert ItemVocab([1, 2]) != ItemVocab([1, 3]) and ItemVocab([1]) != [1]


def test_numpy_and_torch_integer_ids_make_an_int_vocabulary():
    """A vocabulary built from a numpy array or a pandas-style column of int64 (or torch scalars) is an int vocabulary
    equal to the one from Python ints (it was refused: "must be all int or all str, got types ['int64']"); numpy
    floats and bools stay refused."""
    import numpy as np

    ref = ItemVocab([7, 3, 11])
    for items in (np.array([7, 3, 11]), list(np.array([7, 3, 11], dtype=np.int32)), list(torch.tensor([7, 3, 11]))):
        v = ItemVocab(items)
        assert v == ref and v.id_type == "int" and all(type(x) is int for x in v.items)
    with pytest.raises(ValueError, match=r"must be all int or all str, got types \['float64'\]"):
        ItemVocab(np.array([7.0, 3.0]))
    with pytest.raises(ValueError, match=r"must be all int or all str, got types \['bool"):
        ItemVocab(np.array([True, False]))


def test_numpy_string_ids_make_a_str_vocabulary():
    """A numpy array of strings (elements ``np.str_``) was refused ("got types ['str_']"), also when it extended a
    string vocabulary (``model.add_items(np.array([...]))``), though numpy integer arrays were taken."""
    import numpy as np

    v = ItemVocab(np.array(["b", "a"]))
    assert v == ItemVocab(["b", "a"]) and v.id_type == "str" and all(type(x) is str for x in v.items)
    grown, added = ItemVocab(["b", "a"]).extended(np.array(["c", "a"]))
    assert grown.items == ["b", "a", "c"] and added == ["c"] and type(added[0]) is str
    assert v.encode(np.array(["a"])) == [2]


def test_extended_keeps_every_index_and_appends_the_new_ids_in_order():
    v = ItemVocab([5, 3, 9])
    grown, added = v.extended([3, "12", 7, 12, np.int64(7)])
    assert added == [12, 7] and grown.items == [5, 3, 9, 12, 7] and grown.encode([5, 3, 9]) == [1, 2, 3]
    assert v.extended([9, 5]) == (v, [])
    with pytest.raises(TypeError, match="is not an int id"):
        v.extended(["sku-1"])
    s, added = ItemVocab(["a", "b"]).extended([4, "a"])               # an int id in a str vocabulary is its text
    assert added == ["4"] and s.items == ["a", "b", "4"]


def test_decode_refuses_an_index_that_is_not_a_whole_number():
    """decode([1.9]) gave the id at index 1 (int() cut the fraction); whole numbers of any type still decode."""
    v = ItemVocab([10, 20])
    with pytest.raises(ValueError, match=r"internal item index 1.9 is not a whole number"):
        v.decode([1.9])
    with pytest.raises(ValueError, match=r"is not a whole number"):
        v.decode(torch.tensor([1.5]))
    assert v.decode([1, 2.0, np.int64(2), torch.tensor(1)]) == [10, 20, 20, 10]


@pytest.mark.parametrize("bad,error,message", [
    ([True], TypeError, r"internal item index True \(bool\) at position 0 is not an int"),
    (["2"], TypeError, r"internal item index '2' \(str\) at position 0 is not an int"),
    ([1, None], TypeError, r"index None \(NoneType\) at position 1"),
    (3, TypeError, r"must be a sequence of ints, got int"),
    ("12", TypeError, r"must be a sequence of ints, got str"),
    ([0], IndexError, r"index 0 at position 0 out of range 1\.\.2 \(0 is padding\)"),
    ([3], IndexError, r"index 3 at position 0 out of range"),
    ([-1], IndexError, r"index -1 at position 0 out of range")])
def test_decode_refuses_what_is_no_internal_index_with_and_without_a_vocabulary(bad, error, message):
    """The QA's findings: ItemVocab.decode took True and "2" for index 2 (and raw int() errors for None or junk),
    and a model without a vocabulary decoded 0, -1, 999, 1.7 and True as they came. Both read indices one way now:
    an int in 1..n, else an error naming the index and its position."""
    from zoo.models.gru4rec import GRU4RecConfig, GRU4RecModel

    with pytest.raises(error, match=message):
        ItemVocab([10, 20]).decode(bad)
    bare = GRU4RecModel(GRU4RecConfig(n_items=3, embedding_size=4, hidden_size=4))     # no vocabulary: 1..2
    with pytest.raises(error, match=message):
        bare.decode_items(bad)
    with pytest.raises(ValueError, match="not a whole number"):
        bare.decode_items([1.7])
    assert bare.decode_items([1, np.int64(2), torch.tensor(1), 2.0]) == [1, 2, 1, 2]


def test_the_triton_generators_vocab_check_reads_without_torch(tmp_path):
    """export.triton's --onnx --vocab check read the file with zoo.vocab.ItemVocab (importing zoo loads torch and
    transformers) where the serving runtime reads it without: it reads it as the runtime does now, in an interpreter
    where torch cannot be imported, and still refuses a count that does not fit the graph."""
    path = tmp_path / "item_vocab.json"
    path.write_text(json.dumps({"format": "zoo-item-vocab/1", "id_type": "int", "items": [4, 5, 6]}),
                    encoding="utf-8")
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "from export.triton import check_vocab\n"
            f"check_vocab({str(path)!r}, {{'n_items': 4}})\n"
            "try:\n"
            f"    check_vocab({str(path)!r}, {{'n_items': 9}})\n"
            "except ValueError as e:\n"
            "    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert f"item vocabulary {path} holds 3 items, but the graph has 8" in done.stdout, done.stdout
