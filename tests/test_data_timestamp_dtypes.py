"""Dtypes of what users build by hand for the data layer (``zoo.data``): timestamps given to
:class:`~zoo.data.readers.Interactions`, a hand-built :class:`~zoo.data.split.SequenceDataset` or
:class:`~zoo.data.split.EvalExamples`, :func:`~zoo.data.batching.training_windows`, and the cut times of
:func:`~zoo.data.split.temporal_split` are all read by the one check ``zoo.data.readers._time_seconds`` (the models'
rules): bools (read as 0 / 1 s before), complex numbers, strings, float16 / float32 seconds too large for their dtype
and NaN / inf cuts are refused naming the argument and dtype; ``datetime64`` of any unit becomes seconds (a
``datetime64[D]`` row was read as one second a day, a ``datetime64[D]`` cut raised a bare TypeError). Item indices of
a hand-built dataset are checked too (a float sequence was cut to ints by the splits, a bool one read as items 0/1)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from zoo.data import (EvalExamples, Interactions, SequenceDataset, eval_batches, item_counts, leave_one_out,
                      temporal_split, training_windows)
from zoo.vocab import ItemVocab

DAY0 = np.datetime64("2023-01-01", "D")
DAY0_S = float((DAY0 - np.datetime64("1970-01-01", "D")) / np.timedelta64(1, "s"))
SEQS = [np.array([1, 2, 3, 4]), np.array([2, 3, 4])]
DAY_TS = [DAY0 + np.arange(4), DAY0 + np.arange(1, 4)]          # datetime64[D], one item a day
SEC_TS = [DAY0_S + 86400.0 * np.arange(4), DAY0_S + 86400.0 * np.arange(1, 4)]


def _ds(timestamps=None, sequences=None, users=("u", "v"), name="h"):
    return SequenceDataset(list(users), SEQS if sequences is None else sequences, timestamps,
                           ItemVocab([10, 20, 30, 40]), name)


NOT_SECONDS = [
    (np.array([True, False, True]), r"got dtype bool such as True"),
    (np.array([1 + 0j, 2, 3]), r"got dtype complex128"),
    (np.array(["1", "2", "3"]), r"got dtype <U1 such as '1'"),
    (np.array([b"1", b"2", b"3"]), r"got dtype \|S1"),
    (np.array([1.0, None, 3.0], dtype=object), r"got None \(NoneType\)"),
]


@pytest.mark.parametrize("ts, dtype", NOT_SECONDS)
def test_interactions_refuse_timestamps_that_are_not_seconds(ts, dtype):
    """Bools were read as 0 / 1 s (strings of digits parsed, complex cut with a warning); refused as the models refuse
    them, naming the source, the column and the dtype, and what to pass."""
    with pytest.raises(ValueError, match=rf"^t.csv: the timestamp column is not numbers \(seconds\): .*{dtype}.*; pass "
                                         r"float64 or int64 Unix seconds or numpy datetime64$"):
        Interactions(np.array([1, 1, 2]), np.array([5, 6, 7]), ts, source="t.csv")


@pytest.mark.parametrize("ts, dtype", NOT_SECONDS)
def test_hand_built_datasets_and_examples_refuse_timestamps_that_are_not_seconds(ts, dtype):
    """The same rule for a hand-built SequenceDataset (naming the user), EvalExamples (naming the history) and
    training_windows (naming the sequence): bools were 0 / 1 s there, silently."""
    rows = [ts, SEC_TS[1]]
    with pytest.raises(ValueError, match=rf"^h: the timestamp row of user 'u' is not numbers \(seconds\): .*{dtype}"):
        _ds(rows, sequences=[np.array([1, 2, 3]), SEQS[1]])
    with pytest.raises(ValueError, match=rf"^EvalExamples: the timestamp row of history 1 \(user 'v'\) is not numbers "
                                         rf"\(seconds\): .*{dtype}"):
        EvalExamples([np.array([1, 2]), np.array([1, 2, 3])], np.array([3, 4]), ["u", "v"], [SEC_TS[0][:2], ts])
    with pytest.raises(ValueError, match=rf"^EvalExamples: target_timestamps is not numbers \(seconds\): .*{dtype}"):
        EvalExamples([np.array([1]), np.array([2]), np.array([3])], np.array([2, 3, 4]), ["a", "b", "c"],
                     None, ts)
    with pytest.raises(ValueError, match=rf"^the timestamp row of sequence 0 is not numbers \(seconds\): .*{dtype}"):
        training_windows([np.array([1, 2, 3])], 4, timestamps=[ts])


def test_narrow_floats_too_large_for_whole_seconds_are_refused_everywhere():
    """float16 holds whole seconds up to 2**11 only (float32: 2**24): widened, the gaps were already wrong."""
    f16 = np.array([3000, 3001, 3002, 3003], dtype=np.float16)            # 3000 3000 3002 3004 in float16
    with pytest.raises(ValueError, match=r"^h: the timestamps of user 'u' are torch.float16 and reach 3004 s.*pass "
                                         r"float64"):
        _ds([f16, SEC_TS[1]])
    with pytest.raises(ValueError, match=r"^EvalExamples: the timestamps of history 0 \(user 'a'\) are torch.float16"):
        EvalExamples([np.array([1, 2, 3, 4])], np.array([2]), ["a"], [f16])
    with pytest.raises(ValueError, match=r"^the timestamps of sequence 0 are torch.float32 and reach"):
        training_windows([np.array([1, 2])], 4, timestamps=[np.array([1.7e9, 1.7e9 + 7], dtype=np.float32)])
    small = np.array([0, 7, 14, 2047], dtype=np.float16)                   # exact in float16: widened, kept
    ds = _ds([small, SEC_TS[1]])
    assert ds.timestamps[0].dtype == np.float64 and ds.timestamps[0].tolist() == [0.0, 7.0, 14.0, 2047.0]


def test_datetime64_rows_become_seconds_as_interactions_read_them():
    """A datetime64[D] row was read as one second a day by training_windows and eval_batches (np.asarray(..., float64)
    gives the count of days); now it is seconds since the epoch wherever it is given."""
    ds = _ds(DAY_TS)
    assert [t.tolist() for t in ds.timestamps] == [t.tolist() for t in SEC_TS]
    assert Interactions(np.array([1, 1]), np.array([1, 2]), DAY_TS[1][:2]).timestamp.tolist() == SEC_TS[1][:2].tolist()
    ds.check_timestamps_for("TiM4RecCausalModel")
    split = leave_one_out(ds)
    assert split.test.target_timestamps.tolist() == [SEC_TS[0][-1], SEC_TS[1][-1]]
    ex = EvalExamples([np.array([1, 2, 3])], np.array([4]), ["u"], [DAY_TS[0][:3]], DAY_TS[0][3:])
    assert ex.history_timestamps[0].tolist() == SEC_TS[0][:3].tolist()
    assert ex.target_timestamps.tolist() == [SEC_TS[0][3]]
    batch = next(eval_batches(ex, None, "right"))
    assert batch["timestamps"].tolist() == [SEC_TS[0][:3].tolist()]
    windows = training_windows(SEQS, 4, timestamps=DAY_TS)
    assert windows.timestamps.tolist() == SEC_TS[0][:-1].tolist() + SEC_TS[1][:-1].tolist()
    with pytest.raises(ValueError, match=r"^h: the timestamps of user 'v', position 1: NaT is a missing time$"):
        _ds([DAY_TS[0], np.array(["2023-01-02", "NaT", "2023-01-04"], dtype="datetime64[D]")])


def test_hand_built_dataset_rows_are_checked_naming_the_user():
    """Item indices: a float row was cut to ints by leave_one_out's targets (1.7 -> 1), a bool row read as items 0 and
    1, -1 as the vocabulary's last item by reencode's lookup; timestamps one per item and oldest first (the splits take
    a user's last items as the latest; temporal_split's binary search needs them sorted)."""
    cases = [
        (dict(sequences=[np.array([1.0, 2.7, 3.0, 4.0]), SEQS[1]]),
         r"^h: the sequence of user 'u' must be a 1-D array of int item indices >= 1, got float64 values \[1.0, 2.7, "
         r"3.0\] ...; pass int64 indices$"),
        (dict(sequences=[SEQS[0], np.array([True, False, True])]), r"user 'v' must be .* got bool values"),
        (dict(sequences=[SEQS[0], np.array([2, -1, 3])]),
         r"^h: the sequence of user 'v' has item index -1 at position 1: internal item indices are 1..4 \(the "
         r"vocabulary's 4 items\); 0 is padding$"),
        (dict(sequences=[SEQS[0], np.array([2, 0, 3])]), r"user 'v' has item index 0 at position 1"),
        (dict(sequences=[SEQS[0], np.array([2, 5, 3])]), r"user 'v' has item index 5 at position 1"),
        (dict(users=["u"]), r"^h: 1 user for 2 sequences; pass one user id per sequence$"),
        (dict(users=["u", "u"]), r"^h: user 'u' has two sequences \(rows 0 and 1\); pass one sequence per user"),
        (dict(timestamps=[SEC_TS[0]]), r"^h: 1 timestamp row for 2 sequences"),
        (dict(timestamps=[SEC_TS[0], SEC_TS[1][:2]]),
         r"^h: the timestamp row of user 'v' holds 2 timestamps for 3 items; pass one timestamp per item$"),
        (dict(timestamps=[SEC_TS[0], SEC_TS[1][::-1].copy()]),
         r"^h: the timestamps of user 'v' decrease at position 1 .*; pass each sequence oldest first"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            _ds(**kw)
    listed = _ds(sequences=[[1, 2, 3, 4], [2, 3, 4]], timestamps=[list(SEC_TS[0]), list(SEC_TS[1])])
    assert all(s.dtype == np.int64 for s in listed.sequences) and listed.timestamps[1].dtype == np.float64
    nan = _ds([np.array([1.0, np.nan, 3.0, 4.0]), SEC_TS[1]])               # NaN: left to check_timestamps_for
    with pytest.raises(ValueError, match=r"h: 1 NaN or infinite timestamp \(user 'u' has nan at position 1\)"):
        nan.check_timestamps_for("M")
    with pytest.raises(ValueError, match=r"^h: user 'u' has timestamp nan at position 1; a temporal split needs "
                                         r"finite Unix seconds$"):
        temporal_split(nan, 5.0, 2.0)
    with pytest.raises(ValueError, match=r"^EvalExamples: 2 histories, 1 target and 2 users"):
        EvalExamples([np.array([1]), np.array([2])], np.array([3]), ["a", "b"])
    with pytest.raises(ValueError, match=r"^EvalExamples: the timestamp row of history 0 \(user 'a'\) holds 2 "
                                         r"timestamps for 1 item;"):
        EvalExamples([np.array([1])], np.array([3]), ["a"], [np.array([1.0, 2.0])])


def test_temporal_split_cut_times_are_read_as_the_timestamps():
    """A datetime64 cut is seconds since the epoch (it raised a bare TypeError, a datetime64[D] row would be days);
    a bool (1.0 s), a complex number, a string of digits, a datetime object and a float16 cut too large for whole
    seconds are refused naming the cut; NaN / inf / NaT name the cut too."""
    ds = _ds(SEC_TS)
    want = temporal_split(ds, SEC_TS[0][3], SEC_TS[0][2])
    for kw in (dict(test_from=DAY0 + 3, valid_from=DAY0 + 2),
               dict(test_from=(DAY0 + 3).astype("datetime64[ns]"), valid_from=np.datetime64("2023-01-03T00:00", "m")),
               dict(test_from=np.int64(SEC_TS[0][3]), valid_from=np.int64(SEC_TS[0][2]))):
        got = temporal_split(ds, **kw)
        assert got.cuts == want.cuts and got.test.targets.tolist() == want.test.targets.tolist()
    bad = [
        (True, r"^the cut time test_from is not numbers \(seconds\): got dtype bool such as True; pass float64 or "
               r"int64 Unix seconds or numpy datetime64$"),
        (1.7e9 + 0j, r"^the cut time test_from is not numbers \(seconds\): got dtype complex128"),
        ("1700000000", r"^the cut time test_from is not numbers \(seconds\): got dtype <U10 such as '1700000000'"),
        (dt.datetime(2023, 1, 4), r"^the cut time test_from holds datetime objects .*pass Unix seconds "
                                  r"\(dt.timestamp\(\)\) or numpy datetime64$"),
        (np.float16(3000), r"^the seconds of the cut time test_from are torch.float16 and reach 3000 s"),
        (np.float32(1.7e9), r"^the seconds of the cut time test_from are torch.float32 and reach"),
        (float("nan"), r"^the cut time test_from must be a finite time \(Unix seconds\), got nan$"),
        (float("inf"), r"^the cut time test_from must be a finite time \(Unix seconds\), got inf$"),
        (np.datetime64("NaT", "s"), r"^the cut time test_from \(.*NaT.*\) is a missing time$"),
        (np.array([1.0, 2.0]), r"^the cut time test_from must be one time \(Unix seconds\), got shape \[2\]$"),
    ]
    for value, message in bad:
        with pytest.raises(ValueError, match=message):
            temporal_split(ds, test_from=value, valid_from=SEC_TS[0][0])
    with pytest.raises(ValueError, match=r"^the cut time valid_from must be a finite time \(Unix seconds\), got -inf"):
        temporal_split(ds, test_from=SEC_TS[0][3], valid_from=-np.inf)


def test_item_counts_refuse_float_and_bool_indices():
    """item_counts cast every sequence to int64: 1.7 counted as item 1, True as item 1."""
    with pytest.raises(ValueError, match=r"^sequence 1 must be a 1-D array of int item indices, got float64 values "
                                         r"\[1.7\]; pass int64 indices$"):
        item_counts([np.array([1, 2]), np.array([1.7])], 4)
    with pytest.raises(ValueError, match=r"sequence 0 must be .* got bool values"):
        item_counts([np.array([True, True])], 4)
    with pytest.raises(ValueError, match=r"n_items must be an int >= 1, got 4.0"):
        item_counts([np.array([1, 2])], 4.0)
    assert item_counts([np.array([1, 2]), [2, 3], np.array([], dtype=np.float64)], 4).tolist() == [0, 1, 2, 1]


def test_the_pipeline_functions_name_a_wrong_input_type():
    """A DataFrame or arrays given where an Interactions / SequenceDataset goes failed deep inside (AttributeError),
    or -- kcore_filter with thresholds <= 1 -- went through unchecked."""
    from zoo.data import build_sequences, kcore_filter, temporal_cuts

    arrays = (np.array([1, 1]), np.array([1, 2]))
    for call in (lambda: build_sequences(arrays), lambda: kcore_filter(arrays, 1, 1)):
        with pytest.raises(TypeError, match=r"needs a zoo.data.Interactions \(read_interactions\(path\), or "
                                            r"Interactions\(user, item, timestamp\) from arrays\), got tuple$"):
            call()
    for call in (lambda: temporal_split(SEQS, 5, 2), lambda: temporal_cuts(SEQS, 0.1, 0.1)):
        with pytest.raises(TypeError, match=r"needs a zoo.data.SequenceDataset .*got list$"):
            call()
