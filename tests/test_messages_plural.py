"""Messages that count things say "1 interaction", "1 user", ... (not "1 interactions"), and keep the plural for
other counts: the data messages of zoo/data/split.py and zoo.evaluate's vocabulary note."""

import numpy as np
import pytest

from zoo.data import Interactions, load_dataset
from zoo.data.split import EvalExamples, SequenceDataset, kcore_filter
from zoo.evaluate import align_with_vocab
from zoo.vocab import ItemVocab, UnknownItemError


def _dataset(items, users, times=None):
    return load_dataset(Interactions(np.array(users), np.array(items), None if times is None else np.array(times)),
                        kcore=None, name="d")


def test_unknown_items_and_dropped_interactions_singular():
    ds = _dataset([10, 20, 30, 10], ["a", "a", "b", "b"])          # item 30: one item, one interaction, user b
    with pytest.raises(UnknownItemError, match=r"^1 of the 3 items of d \(1 interaction\) is not in the model's item "
                                               r"vocabulary \(2 items\), e\.g\. \[30\]"):
        ds.reencode(ItemVocab([10, 20]))
    _, note = align_with_vocab(ds, ItemVocab([10, 20]), 3, unknown="drop")
    assert note.startswith("WARNING: 1 interaction with items the model does not know dropped (0 users left with "
                           "none)"), note
    alone = _dataset([30, 10], ["b", "c"])                          # user b has only the unknown item
    _, note = align_with_vocab(alone, ItemVocab([10]), 2, unknown="drop")
    assert note.startswith("WARNING: 1 interaction with items the model does not know dropped (1 user left with "
                           "none): not the full data's protocol; item ids mapped through the model's vocabulary "
                           "(1 item)"), note


def test_unknown_items_and_dropped_interactions_plural():
    ds = _dataset([10, 30, 40, 30, 40], ["a", "a", "a", "b", "b"])
    with pytest.raises(UnknownItemError, match=r"^2 of the 3 items of d \(4 interactions\) are not in the model's item "
                                               r"vocabulary \(1 item\)"):
        ds.reencode(ItemVocab([10]))
    _, note = align_with_vocab(ds, ItemVocab([10]), 2, unknown="drop")
    assert note.startswith("WARNING: 4 interactions with items the model does not know dropped (1 user left with "
                           "none)"), note
    assert repr(ds) == "SequenceDataset('d': 2 users, 3 items, 5 interactions, order only)"
    assert repr(_dataset([10], ["a"], [5.0])) == "SequenceDataset('d': 1 user, 1 item, 1 interaction, timestamps)"


@pytest.mark.parametrize("times, message", [
    ([-5.0, 1.0, 2.0], r"^d: 1 negative timestamp \(user 'a' starts at -5\); M reads"),
    ([-5.0, -1.0, 2.0], r"^d: 2 negative timestamps \(user 'a' starts at -5\); M reads"),
    ([1.0, 2.0, 2e12], r"^d: 1 timestamp beyond 1e\+11 s, the year ~5000 \(user 'b' reaches 2e\+12\): it looks like "
                       r"milliseconds"),
    ([1.0, 3e12, 2e12], r"^d: 2 timestamps beyond 1e\+11 s, .*: they look like milliseconds")])
def test_timestamp_refusals(times, message):
    ds = _dataset([10, 20, 30], ["a", "a", "b"], times)
    with pytest.raises(ValueError, match=message):
        ds.check_timestamps_for("M")


def test_shape_mismatches():
    vocab = ItemVocab([10, 20])
    seqs = [np.array([1, 2]), np.array([1])]
    with pytest.raises(ValueError, match=r"^h: 1 user for 2 sequences; pass one user id per sequence$"):
        SequenceDataset(["u"], seqs, None, vocab, "h")
    with pytest.raises(ValueError, match=r"^h: 1 timestamp row for 2 sequences; pass one row per user"):
        SequenceDataset(["u", "v"], seqs, [np.array([1.0, 2.0])], vocab, "h")
    with pytest.raises(ValueError, match=r"^h: the timestamp row of user 'v' holds 2 timestamps for 1 item; pass one "):
        SequenceDataset(["u", "v"], seqs, [np.array([1.0, 2.0]), np.array([1.0, 2.0])], vocab, "h")
    with pytest.raises(ValueError, match=r"^h: the timestamp row of user 'u' holds 1 timestamp for 2 items; pass one "):
        SequenceDataset(["u", "v"], seqs, [np.array([1.0]), np.array([1.0])], vocab, "h")
    with pytest.raises(ValueError, match=r"^h: the sequence of user 'u' has item index 3 at position 1: internal item "
                                         r"indices are 1\.\.1 \(the vocabulary's 1 item\)"):
        SequenceDataset(["u"], [np.array([1, 3])], None, ItemVocab([10]), "h")
    with pytest.raises(ValueError, match=r"^EvalExamples: 1 history, 2 targets and 1 user; pass one target"):
        EvalExamples([np.array([1])], np.array([3, 4]), ["a"])
    with pytest.raises(ValueError, match=r"^EvalExamples: 1 history timestamp row for 2 histories; pass one row"):
        EvalExamples([np.array([1]), np.array([2])], np.array([3, 4]), ["a", "b"], [np.array([1.0])])


def test_kcore_not_converging():
    inter = Interactions(np.array(["a", "a", "b"]), np.array([1, 2, 1]))
    with pytest.raises(RuntimeError, match=r"did not converge in 0 rounds \(1 row still to drop\)"):
        kcore_filter(inter, user_k=2, item_k=None, max_iterations=0)
