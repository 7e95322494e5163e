"""Timestamp dtypes in the data layer (``zoo.data``): read as the models read them (``zoo.modeling_utils``
``_as_seconds`` / ``_check_exact_seconds``, ``export.timestamps.seconds``). float32 / float16 seconds beyond the
whole seconds their dtype holds (2**24 / 2**11) are refused, in a Parquet column and in an in-memory
:class:`~zoo.data.readers.Interactions` (float32 has rounded Unix seconds ~1.7e9 to 128-s steps: widened silently,
7-s gaps became 0); numpy ``datetime64`` of any unit is converted to seconds since the epoch (``[D]`` was read as one
second a day, ``[ns]`` as 1.7e18), and ``NaT`` is refused naming its row."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.data import load_dataset
from zoo.data.readers import Interactions

USERS = np.repeat(np.arange(1, 4), 6)
ITEMS = np.tile(np.arange(1, 7), 3)
SEVEN_S = 1.7e9 + np.tile(np.arange(6) * 7.0, 3)                 # 7-s gaps at today's epoch
DAYS = np.datetime64("2023-01-01T00:00:00", "s") + np.tile(np.arange(6) * 86400, 3).astype("timedelta64[s]")
DAYS_S = (DAYS - np.datetime64("1970-01-01T00:00:00", "s")).astype(np.int64).astype(np.float64)


def _parquet(path, timestamp):
    pa = pytest.importorskip("pyarrow", reason="reading Parquet needs pyarrow (pip install -e '.[parquet]')")
    pq = pytest.importorskip("pyarrow.parquet", reason="reading Parquet needs pyarrow (pip install -e '.[parquet]')")
    pq.write_table(pa.table({"user_id": USERS, "item_id": ITEMS, "timestamp": pa.array(timestamp)}), str(path))
    return path


@pytest.mark.parametrize("dtype, values", [(np.float32, SEVEN_S), (np.float16, np.tile(np.arange(6), 3) + 3000.0)])
def test_narrow_float_timestamps_beyond_their_exact_seconds_are_refused(tmp_path, dtype, values):
    """The message names the file and column (or the in-memory source), the dtype, and what to pass instead."""
    name = np.dtype(dtype).name
    with pytest.raises(ValueError, match=rf"t.parquet: the timestamps \(column 'timestamp'\) are torch.{name} and "
                                         rf"reach .* beyond the {2 ** (np.finfo(dtype).nmant + 1)} s.*pass float64"):
        load_dataset(_parquet(tmp_path / "t.parquet", values.astype(dtype)), kcore=1)
    with pytest.raises(ValueError, match=rf"<memory>: the timestamps are torch.{name} .*pass float64 \(or int64\)"):
        Interactions(USERS, ITEMS, values.astype(dtype))
    with pytest.raises(ValueError, match=rf"t.csv: the timestamps are torch.{name}"):   # a list of numpy scalars too
        Interactions(USERS, ITEMS, list(values.astype(dtype)), source="t.csv")


def test_narrow_floats_within_their_exact_seconds_are_read_as_the_models_read_them(tmp_path):
    """Whole seconds up to 2**24 (float32) / 2**11 (float16) are exact there: accepted, as ``model.step`` accepts
    them (``_check_exact_seconds``: ``|t| > 2**24`` is refused, 2**24 itself is not)."""
    f32 = np.array([0, 7, 14, 100_000, 2 ** 24 - 1, 2 ** 24] * 3, dtype=np.float32)
    np.testing.assert_array_equal(Interactions(USERS, ITEMS, f32).timestamp, f32.astype(np.float64))
    got = load_dataset(_parquet(tmp_path / "ok.parquet", f32), kcore=1)
    np.testing.assert_array_equal(np.diff(got.timestamps[0]), [7, 7, 99_986, 2 ** 24 - 100_001, 1])
    f16 = np.array([0, 1, 2, 1000, 2047, 2048] * 3, dtype=np.float16)
    assert Interactions(USERS, ITEMS, f16).timestamp.tolist() == f16.astype(np.float64).tolist()
    assert Interactions(USERS, ITEMS, f16).timestamp.dtype == np.float64
    with pytest.raises(ValueError, match=r"torch.float32 and reach 16777218 s"):
        Interactions(USERS, ITEMS, np.where(np.arange(18) == 5, 2 ** 24 + 2, 0).astype(np.float32))


def test_float64_and_integer_timestamps_are_unchanged(tmp_path):
    """The usual types keep their values: float64 and int64 (and uint32) seconds at today's epoch, 7-s gaps kept."""
    for ts in (SEVEN_S, SEVEN_S.astype(np.int64), SEVEN_S.astype(np.uint32)):
        got = Interactions(USERS, ITEMS, ts)
        assert got.timestamp.dtype == np.float64 and got.timestamp.tolist() == SEVEN_S.tolist()
        ds = load_dataset(_parquet(tmp_path / f"{ts.dtype}.parquet", ts), kcore=1)
        assert np.diff(ds.timestamps[0]).tolist() == [7.0] * 5
    with pytest.warns(UserWarning, match=r"row 2: timestamp 9007199254740993 is beyond 2\*\*53"):
        Interactions(np.array([1, 1]), np.array([1, 2]), np.array([1, 2 ** 53 + 1], dtype=np.int64))


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns", "m", "h", "D"])
def test_datetime64_of_any_unit_is_seconds_since_the_epoch(unit):
    """``datetime64[D]`` is 86,400 s a day, not 1 (and ``[ns]``, pandas' unit, is not 1.7e18): the same seconds for
    every unit, those of ``model.step`` / ``export.timestamps.seconds``, and a time-aware model takes them."""
    ds = load_dataset(Interactions(USERS, ITEMS, DAYS.astype(f"datetime64[{unit}]")), kcore=1)
    assert np.concatenate(ds.timestamps).tolist() == DAYS_S.tolist()
    assert np.diff(ds.timestamps[0]).tolist() == [86400.0] * 5
    ds.check_timestamps_for("TiM4RecCausalModel")
    from export.timestamps import seconds
    assert Interactions(USERS, ITEMS, DAYS.astype(f"datetime64[{unit}]")).timestamp.tolist() == seconds(DAYS).tolist()


def test_datetime64_subsecond_and_before_the_epoch():
    t = np.array(["1969-12-31T23:59:59.500", "1970-01-01T00:00:01.250"], dtype="datetime64[ms]")
    assert Interactions(np.array([1, 1]), np.array([1, 2]), t).timestamp.tolist() == [-0.5, 1.25]
    ns = np.array(["2023-01-01T00:00:00.000001", "2023-01-01T00:00:07"], dtype="datetime64[ns]")
    gap = np.diff(Interactions(np.array([1, 1]), np.array([1, 2]), ns).timestamp)       # float64 at 1.7e9 s: ~0.2 us
    np.testing.assert_allclose(gap, [6.999999], rtol=0, atol=2e-7)


def test_nat_and_other_non_seconds_are_refused_naming_the_problem():
    t = DAYS.astype("datetime64[ns]").copy()
    t[[4, 9]] = np.datetime64("NaT")
    with pytest.raises(ValueError, match=r"t.csv, row 5: timestamp NaT is a missing time \(2 such rows\)"):
        Interactions(USERS, ITEMS, t, source="t.csv")
    with pytest.raises(ValueError, match=r"holds timedelta64\[D\] durations; pass Unix seconds"):
        Interactions(USERS, ITEMS, np.arange(18).astype("timedelta64[D]"))
    import datetime as dt
    when = np.array([dt.datetime(2023, 1, 1)] * 18, dtype=object)
    with pytest.raises(ValueError, match=r"holds datetime objects .*pass Unix seconds \(dt.timestamp\(\)\) or numpy "
                                         r"datetime64"):
        Interactions(USERS, ITEMS, when)
    with pytest.raises(ValueError, match=r"the timestamps must be a 1-D array, got shape \[18, 1\]"):
        Interactions(USERS, ITEMS, DAYS.reshape(18, 1))


def test_parquet_float32_nan_is_still_named_by_row(tmp_path):
    """The finiteness check still names the row of a NaN in a float32 column (the dtype check leaves NaN to it)."""
    ts = np.tile(np.arange(6), 3).astype(np.float32)
    ts[3] = np.nan
    with pytest.raises(ValueError, match=r"row 4, column 'timestamp': timestamp nan is not a finite number"):
        load_dataset(_parquet(tmp_path / "nan.parquet", ts), kcore=1)
