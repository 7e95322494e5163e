"""Item vocabulary: caller ids <-> internal indices, saved as plain JSON."""

import json

import pytest

from zoo.vocab import ItemVocab, UnknownItemError


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
    assert v.encode([np.int64(588), np.int32(1), torch.tensor(589), " 589 ", "0588"]) == [1, 3, 2, 2, 1]
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
