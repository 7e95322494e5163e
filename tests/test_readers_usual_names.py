"""The readers find the user, item and time columns of public datasets' raw tables by their usual names: Amazon
reviews (``reviewerID``, ``asin`` / ``parent_asin``, ``unixReviewTime``) and RetailRocket (``visitorid``), in any
case; names whose values are text dates (``date``, ``reviewTime``) are still not guessed."""

import warnings

import pytest

from zoo.data import load_dataset
from zoo.data.readers import COLUMN_ROLES, detect_format, read_interactions

# Amazon 2014 / 2018 reviews exported as a table: unixReviewTime is Unix seconds, reviewTime a text date
AMAZON = ('reviewerID,asin,overall,reviewTime,unixReviewTime\n'
          'A1,B7,5,"01 3, 2014",1388707200\nA1,B9,4,"01 1, 2014",1388534400\nA2,B7,3,"01 2, 2014",1388620800\n')


def _quiet_read(path, **kw):
    """read_interactions with every warning an error (no "no time column" warning may be given)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_interactions(path, **kw)


def test_amazon_raw_names_are_usual_names(tmp_path):
    p = tmp_path / "reviews.csv"
    p.write_text(AMAZON)
    x = _quiet_read(p)
    assert x.format == "delimited"
    assert x.user.tolist() == ["A1", "A1", "A2"] and x.item.tolist() == ["B7", "B9", "B7"]
    assert x.timestamp.tolist() == [1388707200.0, 1388534400.0, 1388620800.0]     # unixReviewTime, not reviewTime
    ds = load_dataset(str(p), kcore=None)
    assert ds.vocab.decode(ds.sequences[0].tolist()) == ["B9", "B7"]              # A1's items in time order
    # naming only the user and item (as the README's example did) finds the time column too: no warning, no row order
    x = _quiet_read(p, columns={"user": "reviewerID", "item": "asin"})
    assert x.timestamp.tolist() == [1388707200.0, 1388534400.0, 1388620800.0]
    # time=None still reads no time column
    assert read_interactions(p, columns={"time": None}).timestamp is None


def test_usual_names_any_case_and_tab_separated(tmp_path):
    p = tmp_path / "reviews.tsv"
    p.write_text("REVIEWERID\tASIN\tUnixReviewTime\nu\ta\t20\nu\tb\t10\n")
    x = _quiet_read(p)
    assert x.user.tolist() == ["u", "u"] and x.item.tolist() == ["a", "b"] and x.timestamp.tolist() == [20.0, 10.0]
    assert detect_format(str(p), "REVIEWERID\tASIN\tUnixReviewTime") == "delimited"
    # the lists keep the datasets' own spelling (shown in messages), matched in any case
    assert "reviewerID" in COLUMN_ROLES["user"] and "unixReviewTime" in COLUMN_ROLES["time"]


def test_amazon_2023_parent_asin_is_the_item(tmp_path):
    """The 2023 release has both: parent_asin is the product (older releases' asin), asin a variant of it; its
    timestamp is milliseconds, which a time-aware model refuses by name."""
    p = tmp_path / "reviews23.csv"
    p.write_text("rating,asin,parent_asin,user_id,timestamp\n5,V1,P1,u1,1588687728923\n4,V2,P1,u1,1588687729923\n"
                 "3,V3,P2,u2,1588687730923\n")
    x = _quiet_read(p)
    assert x.item.tolist() == ["P1", "P1", "P2"] and x.user.tolist() == ["u1", "u1", "u2"]
    ds = load_dataset(str(p), kcore=None)
    with pytest.raises(ValueError, match="look like milliseconds .*TiM4Rec reads Unix seconds"):
        ds.check_timestamps_for("TiM4Rec")


def test_retailrocket_events(tmp_path):
    p = tmp_path / "events.csv"
    p.write_text("timestamp,visitorid,event,itemid,transactionid\n1433221332117,257597,view,355908,\n"
                 "1433224214164,992329,addtocart,248676,\n1433221999827,257597,transaction,111016,4000\n")
    x = _quiet_read(p)
    assert x.user.tolist() == [257597, 992329, 257597] and x.item.tolist() == [355908, 248676, 111016]
    assert x.timestamp.tolist() == [1433221332117.0, 1433224214164.0, 1433221999827.0]


def test_amazon_names_in_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow (the [parquet] extra) is not installed")
    import pyarrow.parquet as pq

    p = tmp_path / "reviews.parquet"
    pq.write_table(pa.table({"reviewerID": ["A1", "A1"], "asin": ["B7", "B9"], "overall": [5.0, 4.0],
                             "unixReviewTime": [300, 100]}), p)
    x = _quiet_read(p)
    assert x.format == "parquet" and x.item.tolist() == ["B7", "B9"] and x.timestamp.tolist() == [300.0, 100.0]


def test_text_date_columns_are_not_guessed(tmp_path):
    """Yelp's ``date`` and Amazon's ``reviewTime`` hold text dates: never taken for the time column by their name
    (``business_id`` is not a usual name either: Yelp's table still needs --columns)."""
    p = tmp_path / "amazon_no_unix.csv"
    p.write_text('reviewerID,asin,reviewTime\nA1,B7,"01 3, 2014"\nA1,B9,"01 1, 2014"\n')
    with pytest.warns(UserWarning, match=r"no time column among \['reviewTime'\]"):
        assert read_interactions(p).timestamp is None
    yelp = tmp_path / "yelp.csv"
    yelp.write_text("review_id,user_id,business_id,stars,date\nr1,u1,b1,5,2016-03-09 00:44:42\n")
    with pytest.raises(ValueError, match="unknown interaction file format"):
        read_interactions(yelp)
    with pytest.warns(UserWarning, match=r"no time column among \['review_id', 'stars', 'date'\]"):
        assert read_interactions(yelp, columns={"item": "business_id"}).timestamp is None
