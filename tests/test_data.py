"""Readers, k-core, sequences, leave-one-out and batching on hand-made files (plus one ML-1M check)."""

import gzip

import numpy as np
import pytest
import torch

from zoo.data import (EvalExamples, Interactions, build_sequences, eval_batches, iterate_batches, kcore_filter,
                      leave_one_out, load_dataset, pad_sequences, read_interactions, training_windows)
from zoo.vocab import ItemVocab, UnknownItemError


def write(path, text, gz=False):
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------- readers
ATOMIC = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
          "1\t10\t4\t100\n1\t20\t5\t50\n2\t10\t3\t70\n")


@pytest.mark.parametrize("gz", [False, True])
def test_atomic_inter(tmp_path, gz):
    p = write(tmp_path / ("x.inter.gz" if gz else "x.inter"), ATOMIC, gz)
    x = read_interactions(p)
    assert x.format == "atomic"
    assert x.user.dtype == np.int64 and x.item.dtype == np.int64
    assert x.user.tolist() == [1, 1, 2] and x.item.tolist() == [10, 20, 10]
    assert x.timestamp.dtype == np.float64 and x.timestamp.tolist() == [100.0, 50.0, 70.0]


def test_atomic_columns_by_name_any_order(tmp_path):
    p = write(tmp_path / "y.inter", "timestamp:float\trating:float\titem_id:token\tuser_id:token\n"
                                    "5\t1\tA\tu1\n6\t2\tB\tu2\n")
    x = read_interactions(p)
    assert x.user.tolist() == ["u1", "u2"] and x.item.tolist() == ["A", "B"]   # str ids kept as str
    assert x.timestamp.tolist() == [5.0, 6.0]


def test_columns_named_by_role(tmp_path):
    """A header whose columns have other names (a shop's export) is read with columns= naming them by role; a role not
    named is found by its usual names; a named column must be there, exactly. (Amazon's reviewerID/asin/
    unixReviewTime are usual names: tests/test_readers_usual_names.py.)"""
    export = write(tmp_path / "reviews.csv", "customerID,product,overall,reviewedAt\nA1,B7,5,300\nA1,B9,4,100\n"
                                             "A2,B7,3,200\n")
    with pytest.raises(ValueError, match="unknown interaction file format.*--columns user=NAME item=NAME"):
        read_interactions(export)
    x = read_interactions(export, columns={"user": "customerID", "item": "product", "time": "reviewedAt"})
    assert x.format == "delimited" and x.user.tolist() == ["A1", "A1", "A2"] and x.item.tolist() == ["B7", "B9", "B7"]
    assert x.timestamp.tolist() == [300.0, 100.0, 200.0]
    # the same file without its time column named: no timestamps (the usual names are not in the header)
    assert read_interactions(export, columns={"user": "customerID", "item": "product"}).timestamp is None
    # one role named, the others by their usual names; an atomic header compares the name before ':'
    shop = write(tmp_path / "shop.tsv", "user_id\tsku\ttimestamp\nu\ts1\t1\nu\ts2\t2\n")
    assert read_interactions(shop, columns={"item": "sku"}).item.tolist() == ["s1", "s2"]
    typed = write(tmp_path / "x.inter", "session:token\tproduct:token\tts:float\n1\t10\t5\n")
    x = read_interactions(typed, columns={"user": "session", "item": "product"})
    assert x.format == "atomic" and x.user.tolist() == [1] and x.timestamp.tolist() == [5.0]
    ds = load_dataset(export, kcore=None, columns={"user": "customerID", "item": "product", "time": "reviewedAt"})
    assert ds.vocab.decode(ds.sequences[0].tolist()) == ["B9", "B7"]                # A1's items in time order
    for columns, message in [
            ({"user": "customer", "item": "product"}, r"no user column 'customer' in the header \['customerID', "),
            ({"user": "customerid", "item": "product"}, "no user column 'customerid'"),      # exact, not any case
            ({"usr": "customerID"}, r"unknown role\(s\) \['usr'\]; the roles are \['user', 'item', 'time'\]"),
            ({"user": " ", "item": "product"}, r"an empty column name for \['user'\]"),
            ({"user": "product", "item": "product"}, "one header column given two roles")]:
        with pytest.raises(ValueError, match=message):
            read_interactions(export, columns=columns)
    # a role named only implicitly twice: the item column found by its usual name is the one named for the user
    both = write(tmp_path / "both.csv", "item_id,x\n1,2\n")
    with pytest.raises(ValueError, match="one header column found for two roles"):
        read_interactions(both, columns={"user": "item_id"})
    # formats whose columns are fixed take no names
    seq = write(tmp_path / "s.seq", "user_id\titem_ids_chronological\n1\t1 2 3\n")
    with pytest.raises(ValueError, match="a seq file's columns are fixed"):
        read_interactions(seq, columns={"user": "user_id"})
    ml = write(tmp_path / "ratings.dat", "1::10::5::100\n")
    with pytest.raises(ValueError, match="a movielens file's columns are fixed"):
        read_interactions(ml, columns={"user": "u"})


def test_gzip_detected_by_magic_not_name(tmp_path):
    p = write(tmp_path / "noext.inter", ATOMIC, gz=True)
    assert len(read_interactions(p)) == 3


def test_a_file_whose_name_lies_about_its_compression(tmp_path):
    """A plain-text file named ``.gz`` is read as the text it is (compression is told by the first bytes); one that is
    neither gzip nor text (``head -c 1000 /dev/urandom > bad.inter.gz``) is refused as not gzip, not as "byte 0xf6 is
    not UTF-8 ... iconv"; the same for a ``.parquet`` name; bzip2/xz/zstd/zip files are named as such, not read."""
    assert read_interactions(write(tmp_path / "plain.inter.gz", ATOMIC)).user.tolist() == [1, 1, 2]
    noise = b"\xf6\x00" + np.random.default_rng(0).bytes(998)
    with pytest.raises(ValueError, match=r"bad.inter.gz: not a gzip file \(its first bytes are f6 00, not gzip's 1f "
                                         r"8b\) and not UTF-8 text either: rename it or gzip it"):
        read_interactions(write_bytes(tmp_path / "bad.inter.gz", noise))
    with pytest.raises(ValueError, match=r"bad.parquet: not a Parquet file .* rename it or write it again as Parquet"):
        read_interactions(write_bytes(tmp_path / "bad.parquet", noise))
    with pytest.raises(ValueError, match=r"bad.tsv, line 1: a NUL byte"):      # a name that promises nothing: as was
        read_interactions(write_bytes(tmp_path / "bad.tsv", noise))
    import bz2
    import lzma
    for name, kind, packed in [("b.inter.bz2", "bzip2", bz2.compress(ATOMIC.encode())),
                               ("b.inter.xz", "xz", lzma.compress(ATOMIC.encode())),
                               ("b.inter.gz", "bzip2", bz2.compress(ATOMIC.encode())),   # the name lies, bytes tell
                               ("b.inter.zst", "zstd", b"\x28\xb5\x2f\xfd" + noise),
                               ("b.inter.zip", "zip", b"PK\x03\x04" + noise)]:
        with pytest.raises(ValueError, match=rf"{name}: compressed with {kind} \(by its first bytes\), which is not "
                                             r"read .*recompress it with gzip"):
            read_interactions(write_bytes(tmp_path / name, packed))


def test_movielens_ratings_dat(tmp_path):
    p = write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    x = read_interactions(p)
    assert x.format == "movielens"
    assert x.user.tolist() == [1, 1, 2] and x.item.tolist() == [1193, 661, 1193]
    assert x.timestamp.tolist() == [978300760.0, 978302109.0, 978298413.0]


@pytest.mark.parametrize("text", [
    "user_id\titem_id\ttimestamp\n1\t5\t10\n1\t6\t11\n",
    "user,item,time\n1,5,10\n1,6,11\n",
    "user;item;rating;time\n1;5;3;10\n1;6;3;11\n",
])
def test_delimited(tmp_path, text):
    p = write(tmp_path / "d.csv", text)
    x = read_interactions(p)
    assert x.format == "delimited"
    assert x.user.tolist() == [1, 1] and x.item.tolist() == [5, 6] and x.timestamp.tolist() == [10.0, 11.0]


def test_delimited_without_timestamp_and_blank_lines(tmp_path):
    p = write(tmp_path / "d.tsv", "user_id\titem_id\n1\t5\n\n2\t6\n\n")
    x = read_interactions(p)
    assert x.timestamp is None and x.item.tolist() == [5, 6]


def test_quoted_csv(tmp_path):
    p = write(tmp_path / "q.csv", 'user_id,item_id,timestamp\n"a","x, y",1\n"b","z",2\n')
    x = read_interactions(p)
    assert x.user.tolist() == ["a", "b"] and x.item.tolist() == ["x, y", "z"]


@pytest.mark.parametrize("text", [
    '"user_id","item_id","timestamp"\n"a","x, y",1\n"b","z",2\n',          # R's write.csv, pandas QUOTE_ALL
    'user_id;item_id;timestamp\n"a";"x; y";1\nb;"z";2\n',
    'user_id\titem_id\ttimestamp\n"a"\t"x, y"\t1\n"b"\tz\t2\n',
])
def test_quoted_headers_and_fields_with_any_separator(tmp_path, text):
    """Quotes around header names and fields are the CSV quoting for ``;`` and tab files too: a quoted header used to
    match no column (unknown format), and ``;`` / tab files kept the quotes inside the ids."""
    x = read_interactions(write(tmp_path / "q.txt", text))
    assert x.format == "delimited" and x.user.tolist() == ["a", "b"]
    assert x.item.tolist() == [text.split("\n")[1].split('"')[3], "z"] and x.timestamp.tolist() == [1.0, 2.0]


def test_whitespace_only_lines_before_the_header(tmp_path):
    """Lines of spaces before the header are blank lines like empty ones (the first used to be taken for the header:
    "unknown interaction file format"), and line numbers in messages count them."""
    x = read_interactions(write(tmp_path / "w.csv", "  \n\t\nuser_id,item_id\n1,2\n"))
    assert x.user.tolist() == [1] and x.item.tolist() == [2]
    with pytest.raises(ValueError, match=r"w2.csv, line 4: expected 2 fields, found 3"):
        read_interactions(write(tmp_path / "w2.csv", " \n\nuser_id,item_id\n1,x,3\n"))
    s = read_interactions(write(tmp_path / "w.seq", " \nuser_id\titem_ids_chronological\n7\t3 1\n"))
    assert s.user.tolist() == [7, 7] and s.item.tolist() == [3, 1]


def test_seq_lines_with_other_whitespace_keep_their_items(tmp_path):
    """A line with two spaces between items and another with a tab: the per-line counts came from single spaces,
    checked only in total, so the two errors cancelled and user 1 got user 9's first item."""
    x = read_interactions(write(tmp_path / "s.seq", "user_id\titem_ids_chronological\n1\t2  3\n9\t4\t5\n"))
    assert list(zip(x.user.tolist(), x.item.tolist())) == [(1, 2), (1, 3), (9, 4), (9, 5)]
    x = read_interactions(write(tmp_path / "t.seq", "user_id\titem_ids_chronological\n1\t2 3\u00a04\n9\t5\n"))
    assert list(zip(x.user.tolist(), x.item.tolist())) == [(1, 2), (1, 3), (1, 4), (9, 5)]   # a no-break space


def test_seq_format(tmp_path):
    p = write(tmp_path / "s.seq.gz", "user_id\titem_ids_chronological\n7\t3 1 2\n8\t2  5\n", gz=True)
    x = read_interactions(p)
    assert x.format == "seq" and x.timestamp is None
    assert x.user.tolist() == [7, 7, 7, 8, 8] and x.item.tolist() == [3, 1, 2, 2, 5]


def test_check_timestamps_for_a_time_aware_model(tmp_path):
    """Order-only data and negative timestamps are refused before a time-aware model meets them, naming the file and
    the first user (the models read Unix seconds >= 0; TiM4Rec-causal's graphs use -1 for "no event yet")."""
    seq = load_dataset(write(tmp_path / "s.seq", "user_id\titem_ids_chronological\n7\t3 1 2\n"), kcore=None)
    with pytest.raises(ValueError, match=r"TiM4RecModel reads timestamps, but s.seq has none \(order-only.*another "
                                         r"name than the usual ones: --columns time=NAME\)"):
        seq.check_timestamps_for("TiM4RecModel")
    text = "user_id\titem_id\ttimestamp\n1\t5\t100\n1\t6\t200\n2\t5\t-30\n2\t6\t-10\n2\t7\t5\n"
    neg = load_dataset(write(tmp_path / "n.tsv", text), kcore=None)
    with pytest.raises(ValueError, match=r"n.tsv: 2 negative timestamps \(user 2 starts at -30\); M reads Unix"):
        neg.check_timestamps_for("M")
    load_dataset(write(tmp_path / "ok.tsv", text.replace("-", "")), kcore=None).check_timestamps_for("M")
    ms = "user_id\titem_id\ttimestamp\n1\t5\t100\n1\t6\t200\n2\t5\t1700000000000\n2\t6\t1700000060000\n"
    with pytest.raises(ValueError, match=r"ms.tsv: 2 timestamps beyond 1e\+11 s, the year ~5000 \(user 2 reaches "
                                         r"1\.7e\+12\): they look like milliseconds .*; M reads Unix seconds"):
        load_dataset(write(tmp_path / "ms.tsv", ms), kcore=None).check_timestamps_for("M")


def test_in_memory_timestamps_must_be_finite():
    """An in-memory table refuses NaN / inf timestamps as the file readers do, naming the row (a NaN row would
    otherwise sort last and become the test target); a dataset built by hand is checked before a time-aware model."""
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match=rf"<memory>, row 2: timestamp {bad!r} is not a finite number \(NaN/inf\)"):
            load_dataset(Interactions(np.array([1] * 5), np.array([10, 11, 12, 13, 14]),
                                      np.array([1.0, bad, 3.0, 2.0, 4.0])), kcore=None)
    with pytest.raises(ValueError, match=r"t.csv, row 2: timestamp nan .*\(2 such rows\)"):
        Interactions(np.array([1, 1, 1]), np.array([5, 6, 7]), [1.0, float("nan"), float("inf")], source="t.csv")
    with pytest.raises(ValueError, match=r"<memory>: the timestamp column is not numbers"):
        Interactions(np.array([1]), np.array([5]), np.array(["noon"]))
    from zoo.data.split import SequenceDataset
    from zoo.vocab import ItemVocab
    ds = SequenceDataset([7], [np.array([1, 2, 3])], [np.array([1.0, 2.0, np.nan])], ItemVocab([4, 5, 6]), "h")
    with pytest.raises(ValueError, match=r"h: 1 NaN or infinite timestamp \(user 7 has nan at position 2\); M reads"):
        ds.check_timestamps_for("M")


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_interactions(tmp_path / "missing.inter")
    with pytest.raises(ValueError, match="unknown interaction file format"):
        read_interactions(write(tmp_path / "a.txt", "foo\tbar\n1\t2\n"))
    with pytest.raises(ValueError, match="unknown format"):
        read_interactions(write(tmp_path / "b.txt", ATOMIC), format="xlsx")
    with pytest.raises(ValueError, match="no item column"):
        read_interactions(write(tmp_path / "c.tsv", "user_id\tfoo\n1\t2\n"), format="delimited")
    with pytest.raises(ValueError, match=r"line 3, column 'timestamp'.*not a number"):
        read_interactions(write(tmp_path / "d.tsv", "user_id\titem_id\ttimestamp\n1\t2\t3\n1\t3\tabc\n"))
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(ValueError, match=rf"e.tsv, line 3, column 'timestamp': timestamp '{bad}' is not a finite "
                                             r"number \(NaN/inf\)"):
            read_interactions(write(tmp_path / "e.tsv", f"user_id\titem_id\ttimestamp\n1\t2\t3\n1\t2\t{bad}\n"))
    with pytest.raises(ValueError, match=r"line 3: expected 3 fields, found 2"):
        read_interactions(write(tmp_path / "f.tsv", "user_id\titem_id\ttimestamp\n1\t2\t3\n1\t2\n"))
    with pytest.raises(ValueError, match="empty file"):
        read_interactions(write(tmp_path / "g.tsv", "\n"))
    with pytest.raises(ValueError, match="f2.dat.*line 2"):
        read_interactions(write(tmp_path / "f2.dat", "1::2::3::4\n1::2::3\n"))
    bad_gz = tmp_path / "h.inter.gz"
    bad_gz.write_bytes(gzip.compress(ATOMIC.encode())[:-12])        # gzip magic, truncated stream
    with pytest.raises(ValueError, match=r"h.inter.gz: corrupt gzip file"):
        read_interactions(bad_gz)
    damaged = bytearray(gzip.compress(ATOMIC.encode() * 50))          # whole length, deflate data damaged inside:
    damaged[20:-12] = bytes(b ^ 0x5A for b in damaged[20:-12])         # zlib.error, not OSError/EOFError
    bad_gz.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"h.inter.gz: corrupt gzip file \(Error -3 while decompressing"):
        read_interactions(bad_gz)
    (tmp_path / "dir.inter").mkdir()
    with pytest.raises(IsADirectoryError, match=r"dir.inter is a directory, expected an interaction file"):
        read_interactions(tmp_path / "dir.inter")
    with pytest.raises(ValueError, match=r"i.tsv: no interactions after the header"):
        read_interactions(write(tmp_path / "i.tsv", "user_id\titem_id\ttimestamp\n\n"))
    with pytest.raises(ValueError, match=r"j.seq: no sequences after the header"):
        read_interactions(write(tmp_path / "j.seq", "user_id\titem_ids_chronological\n\n"))
    with pytest.raises(ValueError, match=r"k.seq, line 3: expected 'user<TAB>item item \.\.\.', got 'lonely'"):
        read_interactions(write(tmp_path / "k.seq", "user_id\titem_ids_chronological\n1\t1 2\nlonely\n"))


def test_interactions_column_lengths_must_match():
    with pytest.raises(ValueError, match=r"user, item and timestamp columns have different lengths \(2, 1, None\)"):
        Interactions(np.array([1, 2]), np.array([5]))
    with pytest.raises(ValueError, match=r"different lengths \(2, 2, 3\)"):
        Interactions(np.array([1, 2]), np.array([5, 6]), np.array([1.0, 2.0, 3.0]))


@pytest.mark.parametrize("name, text, line, found", [
    # a row with an extra field and one with a missing field: the total token count matches, each line does not
    ("r.csv", "user_id,item_id,timestamp\n1,10,100,extra\n2,20\n", 2, 4),
    ("r.tsv", "user_id\titem_id\ttimestamp\n1\t10\t100\n2\t20\n3\t30\t300\t9\n", 3, 2),
    ("r.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t10\n2\t20\t200\t9\n", 2, 2),
    ("ratings.dat", "1::10::5::100::x\n2::20::5\n", 1, 5),
    ("b.tsv", "user_id\titem_id\n1\t5\n\n2\t6\t7\n3\n", 4, 3),       # blank line: slow path, real line number
    ("w.txt", "user_id item_id\n1 5 6\n2\n", 2, 3),                   # whitespace separated
    ("e.dat", "1::2::3::4:\n:5::6::7\n", 2, 3),                     # ':' at a line edge must not fuse with '::'
])
def test_ragged_rows_refused_per_line(tmp_path, name, text, line, found):
    """Missing and extra fields on different lines cancel out in a total count; each line is checked, and the first
    bad line is named with its field count (they used to be read shifted, e.g. users ['1', 'extra'])."""
    with pytest.raises(ValueError, match=rf"{name}, line {line}: expected \d fields, found {found}"):
        read_interactions(write(tmp_path / name, text))


def test_distinct_id_spellings_stay_distinct(tmp_path):
    """'007', '07' and '7' are three ids: a column is integer only when every id is a canonical integer (int() would
    merge them, and '+7', '-0', '1_0', non-ASCII digits); surrounding blanks are not part of an id."""
    x = read_interactions(write(tmp_path / "z.csv", "user_id,item_id\n1,007\n1,07\n1,7\n2,+7\n2,1_0\n2,-0\n2,\u0663\n"))
    assert x.user.dtype == np.int64 and x.item.dtype.kind == "U"
    assert x.item.tolist() == ["007", "07", "7", "+7", "1_0", "-0", "\u0663"] and x.n_items == 7
    ml = read_interactions(write(tmp_path / "ratings.dat", "007::1::5::1\n7::1::5::2\n"))
    assert ml.user.tolist() == ["007", "7"] and ml.item.dtype == np.int64
    seq = read_interactions(write(tmp_path / "s.seq", "user_id\titem_ids_chronological\n1\t07 7\n01\t7\n"))
    assert seq.user.tolist() == ["1", "1", "01"] and seq.item.tolist() == ["07", "7", "7"]
    ints = read_interactions(write(tmp_path / "i.csv", "user_id, item_id\n 1, 0\n2, -9223372036854775808\n"
                                                       "10, 9223372036854775807\n"))
    assert ints.user.tolist() == [1, 2, 10] and ints.item.tolist() == [0, -2 ** 63, 2 ** 63 - 1]


@pytest.mark.parametrize("text, where", [
    ("user_id,item_id\n1,\n1,5\n", r"line 2, column 'item_id': empty id"),
    ("user_id\titem_id\ttimestamp\n1\t5\t1\n\n \t6\t2\n", r"line 4, column 'user_id': empty id"),
    ('user_id,item_id\n"a",""\n', r"line 2, column 'item_id': empty id"),
])
def test_empty_id_refused(tmp_path, text, where):
    with pytest.raises(ValueError, match=rf"e.csv, {where}"):
        read_interactions(write(tmp_path / "e.csv", text))
    with pytest.raises(ValueError, match=r"e.dat, line 2, column 'item \(2nd field\)': empty id"):
        read_interactions(write(tmp_path / "e.dat", "1::2::3::4\n1::::3::4\n"))


@pytest.mark.parametrize("text, message", [
    ("1\t1 588 364\n2\t595 480\n", (r"n.seq, line 1: expected the header 'user_id<TAB>item_ids_chronological'.*"
                                    r"got '1\\t1 588 364'; a .seq file without its header line would lose its first")),
    # duplicate and empty user: the first bad line is named
    ("user_id\titem_ids_chronological\n1\t1 2 3\n1\t4 5\n2\t\n", r"user '1' is listed twice \(lines 2 and 3\)"),
    ("user_id\titem_ids_chronological\n1\t1,588,364\n", r"line 2: items must be space separated, found a comma"),
    ("user_id\titem_ids_chronological\n1\t1 2 3\n2\t4\n1\t4 5\n", r"user '1' is listed twice \(lines 2 and 4\)"),
    ("user_id\titem_ids_chronological\n1\t1 2 3\n\n2\t\n", r"n.seq, line 4: user '2' has no items"),
])
def test_seq_malformed_refused(tmp_path, text, message):
    """.seq files: no header, comma-separated items, a user on two lines, a user without items -- each used to be
    read silently wrong (first user lost, one item '1,588,364', histories merged, user dropped)."""
    with pytest.raises(ValueError, match=message):
        read_interactions(write(tmp_path / "n.seq", text))


# ----------------------------------------------------------------------------------------------- k-core
def test_kcore_cascade():
    # u4 has 1 row -> dropped; then i3 has 1 row -> dropped; then u3 has 1 row -> dropped. A single pass keeps u3.
    users = np.array([1, 1, 2, 2, 3, 3, 4])
    items = np.array([1, 2, 1, 2, 2, 3, 3])
    x = kcore_filter(Interactions(users, items), 2, 2)
    assert x.user.tolist() == [1, 1, 2, 2] and x.item.tolist() == [1, 2, 1, 2]
    for k in (None, 0, 1):       # disabled (None / 0) and k=1 (every row has >= 1 interaction): rows unchanged
        same = kcore_filter(Interactions(users, items), k, k)
        assert same.user.tolist() == users.tolist() and same.item.tolist() == items.tolist()
    one = kcore_filter(Interactions(users, items), 2, 1)     # item_k=1: u4 dropped, but no cascade to u3 via i3
    assert one.user.tolist() == [1, 1, 2, 2, 3, 3] and one.item.tolist() == [1, 2, 1, 2, 2, 3]
    assert len(kcore_filter(Interactions(users, items), 3, 3)) == 0


def test_kcore_of_a_long_chain_converges():
    """Users sharing items one by one along a chain: each round drops only the chain's end, so it takes as many rounds
    as rows; a cap of 1,000 rounds raised a RuntimeError (a traceback from the CLIs) on such valid data."""
    n = 2500
    users = np.repeat(np.arange(n), 2)[1:-1]                          # u_j: items j-1 and j
    items = np.repeat(np.arange(n - 1), 2)
    x = kcore_filter(Interactions(users, items), 2, 2)
    assert len(x) == 0
    with pytest.raises(RuntimeError, match="did not converge in 10 rounds"):
        kcore_filter(Interactions(users, items), 2, 2, max_iterations=10)


def _naive_kcore(users, items, k):
    rows = list(zip(users.tolist(), items.tolist(), strict=True))
    while True:
        uc, ic = {}, {}
        for u, i in rows:
            uc[u] = uc.get(u, 0) + 1
            ic[i] = ic.get(i, 0) + 1
        new = [(u, i) for u, i in rows if uc[u] >= k and ic[i] >= k]
        if len(new) == len(rows):
            return new
        rows = new


def test_kcore_matches_naive_on_random_data():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 40, 600), rng.integers(0, 60, 600)
    x = kcore_filter(Interactions(users, items), 5, 5)
    assert list(zip(x.user.tolist(), x.item.tolist(), strict=True)) == _naive_kcore(users, items, 5)
    # string ids go through the np.unique path
    xs = kcore_filter(Interactions(users.astype(str), items.astype(str)), 5, 5)
    assert len(xs) == len(x)


# ----------------------------------------------------------------------------------------------- sequences
def test_build_sequences_stable_ties_and_vocab_order():
    # user 2 appears first; ties at t=5 keep file order (30 before 10)
    x = Interactions(np.array([2, 1, 2, 2, 1]), np.array([30, 20, 10, 40, 30]),
                     np.array([5.0, 1.0, 5.0, 1.0, 0.0]))
    ds = build_sequences(x, name="t")
    assert ds.users == [2, 1]
    assert ds.vocab.items == [30, 20, 10, 40]               # first appearance in file order
    assert [ds.vocab.decode(s) for s in ds.sequences] == [[40, 30, 10], [30, 20]]
    assert [t.tolist() for t in ds.timestamps] == [[1.0, 5.0, 5.0], [0.0, 1.0]]
    assert all(s.dtype == np.int64 for s in ds.sequences)
    assert ds.n_users == 2 and ds.n_items == 4 and ds.n_interactions == 5


def test_time_ties_item_sorts_equal_timestamps_by_item_id(tmp_path):
    """time_ties="item" (LRURec) orders one user's rows with equal timestamps by item id -- numerically for integer
    ids, as strings otherwise -- where "file" (RecBole) keeps the file order; the vocabulary is the same either way."""
    rows = "user_id\titem_id\ttimestamp\n" + "".join(f"1\t{i}\t{t}\n" for i, t in [(9, 1), (30, 5), (4, 5), (100, 5),
                                                                                 (2, 7)])
    p = write(tmp_path / "t.tsv", rows)
    by_file, by_item = load_dataset(p, kcore=None), load_dataset(p, kcore=None, time_ties="item")
    assert by_file.vocab.decode(by_file.sequences[0]) == [9, 30, 4, 100, 2]
    assert by_item.vocab.decode(by_item.sequences[0]) == [9, 4, 30, 100, 2]       # 4 < 30 < 100, not "100" < "30"
    assert by_item.vocab.items == by_file.vocab.items and by_item.time_ties == "item" and by_file.time_ties == "file"
    assert by_item.timestamps[0].tolist() == [1.0, 5.0, 5.0, 5.0, 7.0]
    x = Interactions(np.array([1, 1, 1]), np.array(["b10", "a", "b2"]), np.array([3.0, 3.0, 1.0]))
    ds = build_sequences(x, time_ties="item")
    assert ds.vocab.decode(ds.sequences[0]) == ["b2", "a", "b10"]
    assert build_sequences(x).reencode(build_sequences(x).vocab).time_ties == "file"
    with pytest.raises(ValueError, match="time_ties must be one of"):
        load_dataset(p, time_ties="timestamp")
    seq = write(tmp_path / "s.seq", "user_id\titem_ids_chronological\n7\t3 1 2\n")
    with pytest.raises(ValueError, match="no timestamps"):
        load_dataset(seq, time_ties="item")


def test_load_dataset_seq_has_no_filter_by_default(tmp_path):
    p = write(tmp_path / "s.seq", "user_id\titem_ids_chronological\n1\t5 6 7\n2\t6\n")
    ds = load_dataset(p)
    assert ds.n_users == 2 and ds.kcore is None
    assert [ds.vocab.decode(s) for s in ds.sequences] == [[5, 6, 7], [6]]
    assert load_dataset(p, kcore=2, item_k=0).n_users == 1   # allowed on request
    with pytest.raises(ValueError, match="no interactions left"):
        load_dataset(p, kcore=2)


def test_load_dataset_inter_kcore_auto(tmp_path):
    rows = "".join(f"{u}\t{i}\t{i}\n" for u in range(1, 7) for i in range(1, 6)) + "9\t1\t1\n"
    ds = load_dataset(write(tmp_path / "x.tsv", "user_id\titem_id\ttimestamp\n" + rows))
    assert ds.kcore == (5, 5) and ds.n_users == 6 and ds.n_items == 5      # user 9 (1 row) filtered
    assert load_dataset(tmp_path / "x.tsv", kcore=None).n_users == 7


def test_reencode_with_model_vocab():
    x = Interactions(np.array([1, 1, 2]), np.array([10, 20, 30]), np.array([1.0, 2.0, 3.0]))
    ds = build_sequences(x)
    v = ItemVocab([30, 20, 10, 99])
    r = ds.reencode(v)
    assert [s.tolist() for s in r.sequences] == [[3, 2], [1]] and r.vocab is v
    with pytest.raises(UnknownItemError, match=r"1 of the 3 items .*\(1 interaction\) is not in"):
        ds.reencode(ItemVocab([10, 20]))
    d = ds.reencode(ItemVocab([10, 20]), unknown="drop")
    assert d.users == [1] and d.timestamps[0].tolist() == [1.0, 2.0]


# ----------------------------------------------------------------------------------------------- leave-one-out
def test_leave_one_out():
    x = Interactions(np.array([1] * 5 + [2] * 3 + [3] * 2), np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 1]),
                     np.arange(10, dtype=float))
    ds = build_sequences(x)
    sp = leave_one_out(ds)
    dec = ds.vocab.decode
    assert [dec(s) for s in sp.train] == [[1, 2, 3], [6], [9, 1]]          # short user 3: whole sequence
    assert sp.train_users == [1, 2, 3]
    assert [t.tolist() for t in sp.train_timestamps] == [[0, 1, 2], [5], [8, 9]]
    assert sp.valid.users == [1, 2] and sp.test.users == [1, 2]            # user 3 (2 items) not evaluated
    assert [dec(h) for h in sp.valid.histories] == [[1, 2, 3], [6]]
    assert dec(sp.valid.targets) == [4, 7]
    assert [t.tolist() for t in sp.valid.history_timestamps] == [[0.0, 1.0, 2.0], [5.0]]
    assert sp.valid.target_timestamps.tolist() == [3.0, 6.0]
    assert [dec(h) for h in sp.test.histories] == [[1, 2, 3, 4], [6, 7]]
    assert dec(sp.test.targets) == [5, 8]
    assert sp.test.target_timestamps.tolist() == [4.0, 7.0]
    assert [t.tolist() for t in sp.test.history_timestamps] == [[0, 1, 2, 3], [5, 6]]
    assert len(sp.test.head(1)) == 1
    with pytest.raises(ValueError, match="no user has >= 3 items"):
        leave_one_out(build_sequences(Interactions(np.array([1, 1]), np.array([1, 2]))))


# ----------------------------------------------------------------------------------------------- batching
def test_training_windows_chunked_from_end():
    seqs = [np.arange(1, 8), np.array([5]), np.array([3, 4])]
    ts = [np.arange(7, dtype=float), np.array([0.0]), np.array([1.0, 2.0])]
    w = training_windows(seqs, max_len=4, timestamps=ts)
    got = [tuple(a.tolist() for a in w.window(i)) for i in range(len(w))]
    assert got == [([1, 2], [2, 3]), ([3, 4, 5, 6], [4, 5, 6, 7]), ([3], [4])]
    assert w.users.tolist() == [0, 0, 2] and w.n_positions == 7
    assert w.timestamps[w.starts[1]:w.starts[1] + 4].tolist() == [2.0, 3.0, 4.0, 5.0]
    # exact multiple: two full windows, no empty one
    w2 = training_windows([np.arange(1, 10)], max_len=4)
    assert w2.lengths.tolist() == [4, 4]
    with pytest.raises(ValueError, match="no training sequence"):
        training_windows([np.array([1])], 4)


def _targets_with_context(w, side, batch_size=3, **kw):
    """(label, number of real items up to and including its input) for every supervised batch position."""
    out = []
    for b in iterate_batches(w, batch_size, side, **kw):
        for r, c in zip(*np.nonzero(b["labels"].numpy()), strict=True):
            out.append((int(b["labels"][r, c]), int(b["attention_mask"][r, :c + 1].sum())))
    return sorted(out)


@pytest.mark.parametrize("side", ["right", "left"])
def test_strided_windows_give_prefix_contexts(side):
    # hand-made: pairs of [1..11] are (1->2) ... (10->11); L = 4
    seqs = [np.arange(1, 12), np.array([3, 4, 5]), np.arange(20, 29)]
    w = training_windows(seqs, max_len=4, stride=2)
    # user 0 (10 pairs): windows end at 10, 8, 6, 4 -> starts 6, 4, 2, 0; only the leftmost supervises all 4
    assert w.starts[:4].tolist() == [0, 2, 4, 6] and w.lengths[:4].tolist() == [4, 4, 4, 4]
    assert w.skip[:4].tolist() == [0, 2, 2, 2] and w.stride == 2
    assert w.n_positions == 10 + 2 + 8 and w.n_computed == 16 + 2 + 12
    # user 0 alone: label -> context (the leftmost window gives 1..4, then each target sees >= L - s + 1 = 3)
    got0 = _targets_with_context(training_windows(seqs[:1], max_len=4, stride=2), side, shuffle=False)
    assert got0 == [(2, 1), (3, 2), (4, 3), (5, 4), (6, 3), (7, 4), (8, 3), (9, 4), (10, 3), (11, 4)]
    got = _targets_with_context(w, side, shuffle=False)
    # every pair of every user is a target exactly once: same multiset of labels as the non-overlapping windows
    base = training_windows(seqs, max_len=4)
    assert sorted(l for l, _ in got) == sorted(l for l, _ in _targets_with_context(base, side, shuffle=False))
    # stride 1 == RecBole's prefix augmentation: every target sees min(i + 1, L) items
    w1 = training_windows([np.arange(1, 12)], max_len=4, stride=1)
    assert _targets_with_context(w1, side, shuffle=True, seed=3) == [(i + 2, min(i + 1, 4)) for i in range(10)]
    # stride = max_len is the non-overlapping scheme
    wl = training_windows(seqs, max_len=4, stride=4)
    assert wl.starts.tolist() == base.starts.tolist() and not wl.skip.any()
    for bad in (0, 5):
        with pytest.raises(ValueError, match="stride must be in"):
            training_windows(seqs, max_len=4, stride=bad)


def test_strided_windows_realistic_context_floor():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 50, size=n) for n in rng.integers(2, 700, size=40)]
    L, s = 200, 50
    w = training_windows(seqs, max_len=L, stride=s)
    assert w.n_positions == sum(len(q) - 1 for q in seqs)
    pos = np.arange(L)
    for i in range(len(w)):
        if w.skip[i]:
            # supervised positions of an overlapping window all have >= L - s + 1 items of context
            assert w.lengths[i] == L and (pos[w.skip[i]:] + 1).min() == L - s + 1


@pytest.mark.parametrize("side", ["right", "left"])
def test_iterate_batches_padding(side):
    w = training_windows([np.arange(1, 8), np.array([3, 4])], max_len=4, timestamps=[np.arange(7.0), np.array([1.0, 2.0])])
    b = next(iterate_batches(w, batch_size=3, padding_side=side, shuffle=False))
    assert b["input_ids"].dtype == torch.int64 and b["attention_mask"].dtype == torch.bool
    assert b["labels"].dtype == torch.int64 and b["timestamps"].dtype == torch.float64
    if side == "right":
        assert b["input_ids"].tolist() == [[1, 2, 0, 0], [3, 4, 5, 6], [3, 0, 0, 0]]
        assert b["labels"].tolist() == [[2, 3, 0, 0], [4, 5, 6, 7], [4, 0, 0, 0]]
        assert b["timestamps"][0].tolist() == [0.0, 1.0, 0.0, 0.0]
    else:
        assert b["input_ids"].tolist() == [[0, 0, 1, 2], [3, 4, 5, 6], [0, 0, 0, 3]]
        assert b["labels"].tolist() == [[0, 0, 2, 3], [4, 5, 6, 7], [0, 0, 0, 4]]
    assert b["attention_mask"].tolist() == (b["input_ids"] != 0).tolist()


def test_iterate_batches_shuffle_deterministic_and_complete():
    seqs = [np.arange(1, n + 2) for n in range(1, 30)]
    w = training_windows(seqs, max_len=5)
    epoch = lambda **kw: [b["labels"][b["attention_mask"]].tolist() for b in iterate_batches(w, 7, "left", **kw)]
    a, b = epoch(seed=1), epoch(seed=1)
    assert a == b and a != epoch(seed=2)
    flat = sorted(x for batch in a for x in batch)
    assert flat == sorted(w.labels.tolist())
    c = epoch(seed=1, bucket_by_length=True)
    assert sorted(x for batch in c for x in batch) == flat
    assert sum(len(x) for x in epoch(seed=0, drop_last=True)) <= len(w.labels)


@pytest.mark.parametrize("side", ["right", "left"])
def test_eval_batches(side):
    ex = EvalExamples([np.array([1, 2, 3, 4]), np.array([5])], np.array([7, 8]), ["a", "b"],
                      [np.array([1.0, 2, 3, 4]), np.array([9.0])], np.array([5.0, 10.0]))
    (b,) = list(eval_batches(ex, max_len=3, padding_side=side, batch_size=8))
    exp = [[2, 3, 4], [5, 0, 0]] if side == "right" else [[2, 3, 4], [0, 0, 5]]
    assert b["input_ids"].tolist() == exp and b["targets"].tolist() == [7, 8]
    assert b["timestamps"][0].tolist() == [2.0, 3.0, 4.0]
    assert len(list(eval_batches(ex, 3, side, batch_size=1))) == 2
    vals, mask = pad_sequences([[1], [2, 3]], side)
    assert mask.sum() == 3


# ----------------------------------------------------------------------------------------------- ML-1M (shared data)
def test_ml1m_5core_stats(shared_data):
    ds = load_dataset(shared_data / "ml-1m.5core.seq.gz")
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (6040, 3416, 999_611)
    assert ds.vocab.items[0] == 3186 and ds.sequences[0][0] == 1
    sp = leave_one_out(ds)
    assert len(sp.valid) == len(sp.test) == 6040
    assert sum(len(s) - 1 for s in sp.train) == 981_491          # RecBole's train samples (models.md §1.1)
    assert all(len(h) == len(g) + 1 for h, g in zip(sp.test.histories[:50], sp.valid.histories[:50], strict=True))


def test_ml1m_time_ties_item_reproduces_the_5core_order(shared_file):
    """The 5-core sequence file orders equal timestamps by item id (the data README): ML-1M's raw ratings of users
    1-2999 with time_ties="item", restricted to the 5-core's items, give exactly its sequences for those users. With
    RecBole's file order 807 of the 2,999 users get another test item (and 1,126 another validation item): the order
    of ties is part of the protocol."""
    path = shared_file("ml-1m.users0001-2999.inter.gz")
    five = load_dataset(shared_file("ml-1m.5core.seq.gz"))
    want = {u: five.vocab.decode(s) for u, s in zip(five.users, five.sequences, strict=True)}
    got = {}
    for ties in ("item", "file"):
        ds = load_dataset(path, kcore=None, time_ties=ties).reencode(five.vocab, unknown="drop")
        got[ties] = {u: ds.vocab.decode(s) for u, s in zip(ds.users, ds.sequences, strict=True)}
    assert len(got["item"]) == 2999 and all(got["item"][u] == want[u] for u in got["item"])
    assert sum(got["file"][u][-1] != want[u][-1] for u in got["file"]) == 807
    assert sum(got["file"][u][-2] != want[u][-2] for u in got["file"]) == 1126


def test_bucketing_groups_similar_lengths_and_drop_last_drops():
    """Length bucketing makes each batch's lengths much closer than random batching (else the padding it exists to
    save comes back silently); drop_last leaves only full batches."""
    from zoo.data.batching import training_windows

    rng = np.random.default_rng(0)
    w = training_windows([np.arange(1, n + 2) for n in rng.integers(1, 40, 400)], max_len=50)

    def spread(batches):
        return np.mean([b["attention_mask"].sum(1).max().item() - b["attention_mask"].sum(1).min().item()
                        for b in batches])

    bucketed = spread(list(iterate_batches(w, 8, "right", seed=0, bucket_by_length=True)))
    assert bucketed < 0.25 * spread(list(iterate_batches(w, 8, "right", seed=0)))
    sizes = [len(b["labels"]) for b in iterate_batches(w, 7, "right", seed=0, drop_last=True)]
    assert set(sizes) == {7} and len(sizes) == len(w) // 7


# ----------------------------------------------------------------------------------------------- mutation audit 6 (C)
def test_cr_line_endings_bom_and_latin1_are_decoded(tmp_path):
    """Old-Mac '\\r' line endings end lines (else header and rows are one line), a UTF-8 byte-order mark is not part
    of the first column's name (else no user column is found), and a file that is not UTF-8 is read as latin-1 (the
    MovieLens files) instead of turning its non-ASCII ids into replacement characters."""
    cr = tmp_path / "cr.tsv"
    cr.write_bytes(b"user_id\titem_id\ttimestamp\r1\t5\t10\r2\t6\t11\r")
    x = read_interactions(cr)
    assert x.user.tolist() == [1, 2] and x.item.tolist() == [5, 6] and x.timestamp.tolist() == [10.0, 11.0]
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfuser_id,item_id\n1,5\n")
    b = read_interactions(bom)
    assert b.format == "delimited" and b.user.tolist() == [1] and b.item.tolist() == [5]
    lat = tmp_path / "ratings.dat"
    lat.write_bytes("1::caf\xe9::5::1\n2::na\xefve::4::2\n".encode("latin-1"))
    assert read_interactions(lat).item.tolist() == ["caf\xe9", "na\xefve"]


def test_header_names_are_matched_case_insensitively(tmp_path):
    """'UserID,ItemID,Timestamp' headers (common in exported CSVs) name the user/item/time columns."""
    x = read_interactions(write(tmp_path / "c.csv", "UserID,ItemID,Rating,Timestamp\n1,5,3,10\n2,6,4,11\n"))
    assert x.format == "delimited" and x.user.tolist() == [1, 2] and x.item.tolist() == [5, 6]
    assert x.timestamp.tolist() == [10.0, 11.0]


@pytest.mark.parametrize("format", ["movielens", "auto"])
def test_movielens_line_numbers_count_leading_blank_lines(tmp_path, format):
    """A ratings.dat starting with a blank line: the bad line is named with its real line number (3, not 2), whether
    the format is given or detected."""
    with pytest.raises(ValueError, match=r"m.dat, line 3: expected 4 fields, found 3"):
        read_interactions(write(tmp_path / "m.dat", "\n1::2::3::4\n1::2::3\n"), format=format)


@pytest.mark.parametrize("name, text, message", [
    ("lead.tsv", "\n\nuser_id\titem_id\ttimestamp\n1\t2\t3\n1\t3\tabc\n",
     r"lead.tsv, line 5, column 'timestamp': timestamp 'abc' is not a number"),           # fast path
    ("gap.tsv", "\n\nuser_id\titem_id\ttimestamp\n1\t2\t3\n\n1\t3\tabc\n",
     r"gap.tsv, line 6, column 'timestamp': timestamp 'abc' is not a number"),            # blank line inside too
    ("lead.csv", "\n\nuser_id,item_id\n1,2\n1,2,3\n", r"lead.csv, line 5: expected 2 fields, found 3"),
    ("q.csv", '\nuser_id,item_id\n"1",2\n1,2,3\n', r"q.csv, line 4: expected 2 fields, found 3"),  # quoted CSV
    ("a.inter", "\nuser_id:token\titem_id:token\n\t2\n", r"a.inter, line 3, column 'user_id': empty id"),
    ("l.seq", "\n\nuser_id\titem_ids_chronological\n1\t1 2\n1\t3\n",
     r"l.seq: user '1' is listed twice \(lines 4 and 5\)"),
    ("h.seq", "\n\n1\t2 3\n", r"h.seq, line 3: expected the header"),
])
def test_line_numbers_count_blank_lines_before_the_header(tmp_path, name, text, message):
    """Blank lines before a header are skipped, and every message still names the file's real line (they were
    stripped first and then not counted, so each line number came out short by their count)."""
    with pytest.raises(ValueError, match=message):
        read_interactions(write(tmp_path / name, text))


def test_format_detected_from_gz_name_typed_columns_and_seq_header(tmp_path):
    """'.seq.gz' is a .seq file whatever its header says (the '.gz' is dropped before the name check); a .seq file
    with another name is recognised by its 'user_id<TAB>item_ids...' header; atomic headers with '_seq' types
    ('genres:token_seq') are still atomic."""
    x = read_interactions(write(tmp_path / "x.seq.gz", "uid\tsequence\n7\t3 1 2\n", gz=True))
    assert x.format == "seq" and x.user.tolist() == [7, 7, 7] and x.item.tolist() == [3, 1, 2]
    y = read_interactions(write(tmp_path / "seqs.txt", "user_id\titem_ids_chronological\n7\t3 1 2\n8\t5\n"))
    assert y.format == "seq" and y.user.tolist() == [7, 7, 7, 8] and y.item.tolist() == [3, 1, 2, 5]
    z = read_interactions(write(tmp_path / "a.inter", "user_id:token\titem_id:token\ttimestamp:float\t"
                                                      "genres:token_seq\n1\t10\t5\tx y\n2\t11\t6\tz\n"))
    assert z.format == "atomic" and z.item.tolist() == [10, 11] and z.timestamp.tolist() == [5.0, 6.0]


def test_empty_user_id_named_with_its_line(tmp_path):
    """Fast path (no blank lines): an empty user id is named on its own line, 3 (the header is line 1)."""
    with pytest.raises(ValueError, match=r"u.csv, line 3, column 'user_id': empty id"):
        read_interactions(write(tmp_path / "u.csv", "user_id,item_id\n1,5\n,6\n"))


def test_string_and_sparse_ids_keep_first_appearance_order():
    """factorize's np.unique path (str ids, integer ids too sparse for the lookup table) gives codes by first
    appearance, not sorted order: users and item indices follow the file as for dense integer ids."""
    from zoo.data.split import factorize

    codes, uniq = factorize(np.array(["b", "a", "c", "a", "b"]))
    assert codes.tolist() == [0, 1, 2, 1, 0] and uniq.tolist() == ["b", "a", "c"]
    codes, uniq = factorize(np.array([10 ** 12, 5, 10 ** 12, 7]))          # hi - lo > 4 N + 1024
    assert codes.tolist() == [0, 1, 0, 2] and uniq.tolist() == [10 ** 12, 5, 7] and uniq.dtype == np.int64
    ds = build_sequences(Interactions(np.array(["u2", "u1", "u2"]), np.array(["z", "y", "x"]),
                                      np.array([1.0, 2.0, 0.0])))
    assert ds.users == ["u2", "u1"] and ds.vocab.items == ["z", "y", "x"]
    assert [s.tolist() for s in ds.sequences] == [[3, 1], [2]]


def test_many_equal_timestamps_keep_file_order():
    """time_ties="file" is a stable sort by (user, time) also beyond 16 rows, where numpy's default sort is no longer
    an (accidentally stable) insertion sort; checked against Python's stable sorted()."""
    rng = np.random.default_rng(0)
    n = 40
    users, ts, items = rng.integers(0, 2, n), rng.integers(0, 3, n).astype(float), np.arange(1, n + 1)
    ds = build_sequences(Interactions(users, items, ts))
    assert ds.users == [int(users[0]), 1 - int(users[0])]
    for u, s, t in zip(ds.users, ds.sequences, ds.timestamps, strict=True):
        want = sorted((r for r in range(n) if users[r] == u), key=lambda r: ts[r])
        assert ds.vocab.decode(s) == [int(items[r]) for r in want] and t.tolist() == [ts[r] for r in want]


def test_load_dataset_one_side_override_and_kcore_type(tmp_path):
    """user_k=0 / item_k=0 turn one side off even when kcore is set (0 is not 'unset'), ds.kcore reports each side,
    and a str kcore other than 'auto' is refused (the CLI's '5' must go through parse_kcore)."""
    p = write(tmp_path / "s.seq", "user_id\titem_ids_chronological\n1\t5 6 7\n2\t6\n")
    items_only = load_dataset(p, kcore=2, user_k=0)           # item 6 (2 users) stays; no user threshold
    assert items_only.users == [1, 2] and items_only.kcore == (0, 2)
    assert [items_only.vocab.decode(s) for s in items_only.sequences] == [[6], [6]]
    users_only = load_dataset(p, kcore=2, item_k=0)
    assert users_only.users == [1] and users_only.kcore == (2, 0)
    with pytest.raises(ValueError, match=r"kcore must be an int, None or 'auto', got '5'"):
        load_dataset(p, kcore="5")


def test_leave_one_out_min_length_and_head():
    """min_length > 3: a shorter user keeps its whole sequence in train (never evaluated, nothing lost); < 3 is
    refused; EvalExamples.head cuts every field, timestamps included."""
    x = Interactions(np.array([1] * 5 + [2] * 3), np.arange(1, 9), np.arange(8, dtype=float))
    ds = build_sequences(x)
    dec = ds.vocab.decode
    sp = leave_one_out(ds, min_length=4)
    assert [dec(s) for s in sp.train] == [[1, 2, 3], [6, 7, 8]]
    assert [t.tolist() for t in sp.train_timestamps] == [[0.0, 1.0, 2.0], [5.0, 6.0, 7.0]]
    assert sp.valid.users == [1] and sp.test.users == [1] and dec(sp.test.targets) == [5]
    with pytest.raises(ValueError, match=r"min_length must be >= 3"):
        leave_one_out(ds, min_length=2)
    h = leave_one_out(ds).test.head(1)
    assert h.users == [1] and dec(h.targets) == [5] and [dec(a) for a in h.histories] == [[1, 2, 3, 4]]
    assert len(h.history_timestamps) == 1 and h.history_timestamps[0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert h.target_timestamps.tolist() == [4.0]


def test_training_windows_refuse_misaligned_timestamps():
    """One timestamp array per sequence, as long as it: else the flat timestamps would silently shift."""
    seqs = [np.array([1, 2, 3]), np.array([4, 5])]
    with pytest.raises(ValueError, match=r"sequence 1 has 2 items but 3 timestamps"):
        training_windows(seqs, 4, timestamps=[np.arange(3.0), np.arange(3.0)])
    with pytest.raises(ValueError, match=r"got 1 timestamp arrays for 2 sequences"):
        training_windows(seqs, 4, timestamps=[np.arange(3.0)])


def test_training_windows_refuse_nan_and_decreasing_timestamps():
    """NaN/inf or decreasing timestamps name the sequence and position (the model's own check names only a batch
    row); a drop from one user's last timestamp to the next user's first is no decrease."""
    seqs = [np.array([1, 2, 3]), np.array([4, 5, 6])]
    ok = training_windows(seqs, 4, timestamps=[np.array([5.0, 6, 7]), np.array([1.0, 1, 2])])
    assert ok.timestamps.tolist() == [5.0, 6.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"sequence 1 has timestamp nan at position 2"):
        training_windows(seqs, 4, timestamps=[np.array([5.0, 6, 7]), np.array([1.0, 2, np.nan])])
    with pytest.raises(ValueError, match=r"sequence 1's timestamps decrease at position 1 \(3 -> 2\)"):
        training_windows(seqs, 4, timestamps=[np.array([5.0, 6, 7]), np.array([3.0, 2, 4])])
    with pytest.raises(ValueError, match=r"sequence 0 has timestamp inf at position 0"):
        training_windows(seqs, 4, timestamps=[np.array([np.inf, 6, 7]), np.array([3.0, 2, 4])])


def test_eval_batches_and_pad_sequences_check_ids():
    """A float history would be cut to ints (1.7 -> item 1) and an index 0 or below read as padding or wrapped: both
    name the row or example instead. Only the part of a history the window keeps is checked."""
    with pytest.raises(ValueError, match=r"row 1 must be a 1-D array of int ids, got float64 values \[1.7\]"):
        pad_sequences([np.array([1]), np.array([1.7])], "right")
    with pytest.raises(ValueError, match=r"row 0 must be a 1-D array of int ids, got bool values"):
        pad_sequences([np.array([True, False])], "left")
    assert pad_sequences([np.array([1.5, 2.0])], "right", dtype=np.float64)[0].tolist() == [[1.5, 2.0]]
    assert pad_sequences([np.array([], dtype=np.float64), [3]], "right")[0].tolist() == [[0], [3]]
    ex = EvalExamples([np.array([1, 2]), np.array([4, 0, 5])], np.array([7, 8]), ["a", "b"])
    with pytest.raises(ValueError, match=r"example 1 \(user 'b'\) has item index 0 in its history"):
        list(eval_batches(ex, None, "right"))
    assert [b["input_ids"].tolist() for b in eval_batches(ex, 1, "right")] == [[[2], [5]]]   # 0 cut off
    ex = EvalExamples([np.array([1, 2]), np.array([4])], np.array([7, -1]), ["a", "b"])
    with pytest.raises(ValueError, match=r"example 1 \(user 'b'\) has target item index -1"):
        list(eval_batches(ex, None, "left", max_tokens=4))
    ex = EvalExamples([np.array([1, 2])], np.array([7.5]), ["a"])
    with pytest.raises(ValueError, match=r"targets must be int item indices >= 1, got float64 values \[7.5\]"):
        list(eval_batches(ex, None, "left"))


def test_bucketed_batches_are_shuffled_and_batch_size_checked():
    """bucket_by_length sorts inside a pool, then shuffles the batches (else every epoch runs short to long windows
    in the same order); without shuffle the sorted order stays. batch_size 0 is refused by name."""
    w = training_windows([np.arange(1, n + 2) for n in range(1, 21)], max_len=50)   # 20 windows, lengths 1..20
    longest = lambda **kw: [int(b["attention_mask"].sum(1).max()) for b in iterate_batches(w, 2, "right", **kw)]
    shuffled = longest(seed=0, bucket_by_length=True)
    assert sorted(shuffled) == list(range(2, 21, 2)) and shuffled != sorted(shuffled)
    assert longest(shuffle=False, bucket_by_length=True) == list(range(2, 21, 2))
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        next(iterate_batches(w, 0, "right"))


def test_eval_and_pad_refusals_name_the_problem():
    """An empty history is named by its index in the examples (not in its batch) and its user; max_len 0 is refused
    (r[-0:] would silently keep whole histories); pad_sequences of no rows says so."""
    ex = EvalExamples([np.array([1, 2]), np.array([3]), np.array([], np.int64)], np.array([5, 6, 7]), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"example 2 \(user 'c'\) has an empty history"):
        list(eval_batches(ex, max_len=4, padding_side="left", batch_size=2))
    with pytest.raises(ValueError, match=r"max_len must be >= 1 \(or None: whole histories\), got 0"):
        next(eval_batches(ex, max_len=0, padding_side="left", batch_size=2))
    with pytest.raises(ValueError, match="no sequences given"):
        pad_sequences([], "left")
    for bad in (0, -1, 1.5, True):        # the QA's: 0 kept whole rows, -1 cut the oldest item, 1.5 a raw slice error
        with pytest.raises(ValueError, match=rf"max_len must be (an int )?>= 1 \(or None: no truncation\), got {bad}"):
            pad_sequences([np.array([1, 2, 3])], "right", max_len=bad)
    assert pad_sequences([np.array([1, 2, 3])], "right", max_len=np.int64(2))[0].tolist() == [[2, 3]]


def test_load_dataset_takes_interactions_in_memory(tmp_path):
    """A table already in memory (a DataFrame's columns) loads as the same file would: same k-core, ties, vocabulary
    and sequences."""
    text = "user_id\titem_id\ttimestamp\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in
                                                      [(1, 5, 3), (1, 6, 3), (2, 5, 1), (1, 7, 2), (2, 6, 9), (3, 5, 4)])
    f = write(tmp_path / "x.tsv", text)
    inter = read_interactions(f)
    mem = Interactions(inter.user.copy(), inter.item.copy(), inter.timestamp.copy())
    for kw in ({"kcore": None}, {"kcore": 2}, {"kcore": None, "time_ties": "item"}):
        a, b = load_dataset(mem, **kw), load_dataset(f, **kw)
        assert a.vocab.items == b.vocab.items and a.users == b.users, kw
        assert [s.tolist() for s in a.sequences] == [s.tolist() for s in b.sequences], kw
    assert "<memory>" in repr(load_dataset(mem, kcore=None))


# ----------------------------------------------------------------------------------------------- QA fuzz findings
@pytest.mark.parametrize("name, text, line, problem", [
    # a quote left open read on into the next lines: users 2 and 3 vanished, user 1 got user 3's timestamp
    ("a.tsv", 'user_id\titem_id\tnote\ttimestamp\n1\t10\t"odd\t100\n2\t20\tok\t200\n3\t30\tfine"\t300\n4\t40\tx\t400\n',
     2, "a quoted field is not closed on its line"),
    ("a2.tsv", 'user_id\titem_id\n1\t"x\n2\ty\n', 2, "a quoted field is not closed on its line"),   # item 'x2\ty'
    # a blank line and a short line after the open quote: the merged rows named line 3, the short line is line 7
    ("h.tsv", 'user_id\titem_id\tnote\ttimestamp\n1\t10\t"odd\t100\n2\t20\tok\t200\n\n3\t30\tfine"\t300\n4\t40\tx\n',
     2, "a quoted field is not closed on its line"),
    ("q.csv", '\nuser_id,item_id\n1,"a"\n2,"b\n3,c\n', 4, "a quoted field is not closed on its line"),
    ("m.tsv", 'user_id\titem_id\n1\t"x"y\n2\tab"c\n', 2, "text after a quoted field's closing quote"),   # was 'xy'
])
def test_an_unbalanced_quote_is_refused_naming_its_line(tmp_path, name, text, line, problem):
    with pytest.raises(ValueError, match=rf"{name}, line {line}: {problem}"):
        read_interactions(write(tmp_path / name, text))


def test_a_quote_inside_a_field_is_part_of_the_id_and_quoted_fields_keep_one_row_per_line(tmp_path):
    x = read_interactions(write(tmp_path / "q.tsv", 'user_id\titem_id\tnote\n1\tab"c\t"a\tb"\n2\t"x""y"\tz\n'))
    assert x.user.tolist() == [1, 2] and x.item.tolist() == ['ab"c', 'x"y']


def test_a_file_that_is_not_utf8_is_refused_naming_the_line_and_byte(tmp_path):
    """One latin-1 byte anywhere made the whole file latin-1: every UTF-8 id turned into other characters ('café'
    into 'cafÃ©') and no longer matched a model's vocabulary. Only a MovieLens .dat file may be latin-1, and not
    with UTF-8 text in it."""
    mixed = "user_id\titem_id\n1\tcafé\n2\tx\n".encode() + b"3\tna\xefve\n"
    with pytest.raises(ValueError, match=r"b.tsv, line 4: byte 0xef \(offset 32\) is not UTF-8; delimited files are "
                                         r"read as UTF-8.*iconv"):
        read_interactions(write_bytes(tmp_path / "b.tsv", mixed))
    latin1 = "user_id:token\titem_id:token\n1\tcaf\xe9\n".encode("latin-1")
    with pytest.raises(ValueError, match=r"b.inter, line 2: byte 0xe9 \(offset 33\) is not UTF-8; atomic files"):
        read_interactions(write_bytes(tmp_path / "b.inter", latin1))
    with pytest.raises(ValueError, match=r"b.tsv.gz, line 4: byte 0xef \(offset 35\) is not UTF-8"):   # BOM counted
        read_interactions(write_bytes(tmp_path / "b.tsv.gz", gzip.compress(b"\xef\xbb\xbf" + mixed)))
    with pytest.raises(ValueError, match=r"s.seq, line 2: byte 0xe9 .* not UTF-8; seq files"):
        read_interactions(write_bytes(tmp_path / "s.seq", b"user_id\titem_ids_chronological\n1\tcaf\xe9 x\n"))
    with pytest.raises(ValueError, match=r"u.txt, line 1: byte 0xe9 .* not UTF-8; interaction files"):   # no format
        read_interactions(write_bytes(tmp_path / "u.txt", b"caf\xe9\tbar\n1\t2\n"))
    ml = write_bytes(tmp_path / "ratings.dat", "1::café::5::1\n".encode() + b"2::na\xefve::4::2\n")
    with pytest.raises(ValueError, match=r"ratings.dat, line 2: byte 0xef .* not UTF-8, and line 1 holds UTF-8 text"):
        read_interactions(ml)
    lat = write_bytes(tmp_path / "lat.dat", "1::caf\xe9::5::1\n".encode("latin-1"))      # MovieLens latin-1: as before
    assert read_interactions(lat).item.tolist() == ["caf\xe9"]


def write_bytes(path, data):
    path.write_bytes(data)
    return path


def test_a_half_typed_header_keeps_its_timestamps(tmp_path):
    """'timestamp:float' in a header that types only some columns was not found as the time column: the timestamps
    were dropped silently and the sequences followed the file order."""
    p = write(tmp_path / "c.tsv", "user_id\titem_id\ttimestamp:float\n1\t10\t300\n1\t20\t100\n")
    x = read_interactions(p)
    assert x.format == "delimited" and x.timestamp.tolist() == [300.0, 100.0]
    ds = load_dataset(p, kcore=None)
    assert ds.vocab.decode(ds.sequences[0]) == [20, 10]
    y = read_interactions(write(tmp_path / "d.tsv", "user_id\titem_id:token\tTime:Float\n1\t10\t3\n"))
    assert y.item.tolist() == [10] and y.timestamp.tolist() == [3.0]
    for when in ("timestamp:float", "timestamp"):            # columns= by the header's spelling or by the name
        z = read_interactions(p, columns={"time": when})
        assert z.timestamp.tolist() == [300.0, 100.0]


def test_in_memory_ids_are_checked_naming_the_row_and_column():
    """Interactions built from arrays (a DataFrame's columns) checked their timestamps but not their ids: NaN user ids
    (a pandas int column with missing values) became one user, empty ids were ids, and float or None ids failed deep
    inside with messages naming no column."""
    cases = [
        (dict(user=np.array([np.nan, np.nan, 1.0]), item=np.array([10, 20, 10])), r"row 1, column 'user': id nan"),
        (dict(user=np.array([1, 2]), item=np.array([1.0, 2.5])), r"row 2, column 'item': id 2.5 is not an integer"),
        (dict(user=np.array(["", "u"]), item=np.array(["a", "b"])), r"row 1, column 'user': empty id ''"),
        (dict(user=np.array(["u", "v"]), item=np.array(["a", " \t"])), r"row 2, column 'item': empty id"),
        (dict(user=np.array(["u", "v"]), item=np.array(["a", "\u3000"])), r"row 2, column 'item': empty id"),
        (dict(user=np.array([1, 1, 2]), item=np.array(["a", None, "b"], dtype=object)),
         r"row 2, column 'item': id None \(NoneType\) is neither a string nor an integer"),
        (dict(user=np.array([1, 2]), item=np.array(["a", ""], dtype=object)), r"row 2, column 'item': empty id"),
        (dict(user=np.array([1, 2]), item=np.array(["a", 5], dtype=object)), r"row 2, column 'item': id 5 mixes"),
        (dict(user=np.array([[1, 2]]), item=np.array([[3, 4]])), r"the user ids must be a 1-D array, got shape \[1, 2"),
        (dict(user=np.array([True, False]), item=np.array([1, 2])), r"the user ids are bools"),
        (dict(user=np.array([b"a"]), item=np.array([1])), r"the user ids are bytes"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=rf"df.csv(, row \d+)?.*{message}"):
            Interactions(**kw, source="df.csv")
    whole = Interactions(np.array([1.0, 1.0, 2.0]), np.array([10, 20, 10], dtype=object), np.array([1.0, 2.0, 3.0]))
    assert whole.user.dtype == np.int64 and whole.user.tolist() == [1, 1, 2] and whole.item.dtype == np.int64
    ds = load_dataset(Interactions(np.array([1, 1, 2]), np.array([10.0, 20.0, 10.0]), np.array([1.0, 2.0, 3.0])),
                      kcore=None)
    assert ds.vocab.id_type == "int" and ds.vocab.items == [10, 20]
    strs = Interactions(np.array(["a", "a\x00"], dtype=object), np.array(["x", "y"], dtype=object))
    assert strs.n_users == 2                                 # object str arrays are kept (no NUL stripped)
    every_other = np.array(["u", "x", "v", "y"])
    assert Interactions(every_other[::2], every_other[1::2]).user.tolist() == ["u", "v"]   # strided views


def test_nul_bytes_are_refused_naming_the_line(tmp_path):
    """numpy's str arrays drop trailing NULs: the id 'a\\x00' merged with 'a'."""
    with pytest.raises(ValueError, match=r"e.tsv, line 2: a NUL byte"):
        read_interactions(write_bytes(tmp_path / "e.tsv", b"user_id\titem_id\n1\ta\x00\n1\ta\n"))
    with pytest.raises(ValueError, match=r"e.dat, line 3: a NUL byte"):
        read_interactions(write_bytes(tmp_path / "e.dat", b"1::a::1::1\n\n1::\x00::1::1\n"))


def test_integer_timestamps_beyond_2_53_are_warned(tmp_path, recwarn):
    """Nanoseconds since the epoch lose their order in float64 (256 ns steps at ~1.7e18): 100 ns apart compare equal,
    and the tie kept the file order without a word."""
    p = write(tmp_path / "k.tsv", "user_id\titem_id\ttimestamp\n1\t1\t1700000000000000100\n1\t2\t1700000000000000000\n")
    with pytest.warns(UserWarning, match=r"k.tsv, line 2, column 'timestamp': timestamp 1700000000000000100 is beyond "
                                         r"2\*\*53 \(timestamps beyond it: 2\).*steps of 256"):
        read_interactions(p)
    with pytest.warns(UserWarning, match=r"<memory>, row 1: timestamp 9007199254740993 is beyond 2\*\*53"):
        Interactions(np.array([1, 1]), np.array([1, 2]), np.array([2 ** 53 + 1, 5]))
    recwarn.clear()
    read_interactions(write(tmp_path / "s.tsv", "user_id\titem_id\ttimestamp\n1\t1\t1700000000\n1\t2\t1.7e12\n"))
    Interactions(np.array([1, 1]), np.array([1, 2]), np.array([2 ** 52, 5]))
    assert not [w for w in recwarn.list if "2**53" in str(w.message)]


@pytest.mark.parametrize("text", [
    "user_id\titem_id\n1\t10\n\t\n2\t20\n",                  # fast path: was 'line 3, column 'user_id': empty id'
    "user_id\titem_id\n1\t10\n\t\n2\t20\n\n3\t30\n",         # a blank line elsewhere: the line-aware path skipped it
    'user_id\titem_id\n1\t10\n \t \n"2"\t20\n',              # a quote elsewhere: the same
])
def test_a_line_of_blanks_only_is_a_blank_line_on_every_path(tmp_path, text):
    """A TSV line of tabs and spaces only is blank (as an empty line, or such a line before the header); it was an
    empty id or skipped depending on unrelated content elsewhere in the file. A line with other characters (a CSV
    line ' , ') holds empty ids, refused on every path."""
    x = read_interactions(write(tmp_path / "g.tsv", text))
    assert x.user.tolist()[:2] == [1, 2] and x.item.tolist()[:2] == [10, 20]
    with pytest.raises(ValueError, match=r"g2.tsv, line 4, column 'user_id': empty id"):   # a real empty id: named
        read_interactions(write(tmp_path / "g2.tsv", "user_id\titem_id\n1\t10\n\t\n\t20\n"))
    for csv in ("user_id,item_id\n1,10\n , \n2,20\n", "user_id,item_id\n1,10\n , \n\n2,20\n"):
        with pytest.raises(ValueError, match=r"g.csv, line 3, column 'user_id': empty id"):
            read_interactions(write(tmp_path / "g.csv", csv))


def test_the_first_bad_timestamp_is_named_whatever_its_problem(tmp_path):
    """A non-number was looked for before NaN/inf, so a later 'abc' was named before an earlier 'nan'."""
    with pytest.raises(ValueError, match=r"h2.tsv, line 2, column 'timestamp': timestamp 'nan' is not a finite"):
        read_interactions(write(tmp_path / "h2.tsv", "user_id\titem_id\ttimestamp\n1\t1\tnan\n1\t2\tabc\n"))
    with pytest.raises(ValueError, match=r"h3.tsv, line 2, column 'timestamp': timestamp 'abc' is not a number"):
        read_interactions(write(tmp_path / "h3.tsv", "user_id\titem_id\ttimestamp\n1\t1\tabc\n1\t2\tinf\n"))


def test_kcore_max_iterations_counts_the_rounds_that_drop_rows():
    """The pass that finds nothing left to drop counted against the cap: a filter converged in m rounds raised."""
    x = kcore_filter(Interactions(np.array([1, 1, 2]), np.array([5, 5, 6])), 2, 2, max_iterations=1)
    assert x.user.tolist() == [1, 1] and x.item.tolist() == [5, 5]
    assert len(kcore_filter(Interactions(np.array([1, 1]), np.array([5, 5])), 2, 2, max_iterations=0)) == 2
    with pytest.raises(RuntimeError, match=r"did not converge in 0 rounds \(1 row still to drop\)"):
        kcore_filter(Interactions(np.array([1, 1, 2]), np.array([5, 5, 6])), 2, 2, max_iterations=0)
    with pytest.raises(ValueError, match="max_iterations must be >= 0"):
        kcore_filter(Interactions(np.array([1, 1]), np.array([5, 5])), 2, 2, max_iterations=-1)


# ----------------------------------------------------------------------------------------------- blanks around ids
def test_a_quoted_id_keeps_its_blanks_items_and_users(tmp_path):
    """QA s40 #4: blanks were stripped after the csv module unquoted a field, so the quoted ids ' pad' and 'pad ' and
    the unquoted 'pad' became one item, and users ' u1' (quoted) and 'u1' one user with both histories interleaved
    ([[1, 3, 2, 4]]). A quoted field keeps its blanks, as pandas and RecBole read it."""
    items = write(tmp_path / "sp.tsv", 'user_id\titem_id\ttimestamp\nu1\t" pad"\t1\nu1\tpad\t2\nu1\t"pad "\t3\n')
    assert read_interactions(items).item.tolist() == [" pad", "pad", "pad "]
    assert load_dataset(items, kcore=0).vocab.items == [" pad", "pad", "pad "]
    users = write(tmp_path / "su.csv", 'user_id,item_id,timestamp\n" u1",a,1\n" u1",b,2\nu1,c,1\nu1,d,2\n')
    assert read_interactions(users).user.tolist() == [" u1", " u1", "u1", "u1"]
    ds = load_dataset(users, kcore=0)
    assert ds.n_users == 2 and [s.tolist() for s in ds.sequences] == [[1, 2], [3, 4]]


@pytest.mark.parametrize("name, text, column, first, second, read_as", [
    # unquoted ' pad' and 'pad' / 'pad ' (csv.writer writes them so): one id after stripping -- refused, fast path
    ("e.csv", "user_id,item_id,timestamp\nu0, pad,1\nu0,pad,2\n", "item_id", "' pad' (line 2)", "'pad' (line 3)",
     "pad"),
    ("e.tsv", "user_id\titem_id\nu0\t pad\nu0\tx\nu0\tpad \n", "item_id", "' pad' (line 2)", "'pad ' (line 4)", "pad"),
    ("e.inter", "user_id:token\titem_id:token\nu1\ta\nu1 \tb\n", "user_id", "'u1' (line 2)", "'u1 ' (line 3)", "u1"),
    # users, with blank lines (the line-aware path): the lines named are the file's
    ("u.csv", "user_id,item_id\nu1,a\n\nu1 ,b\n", "user_id", "'u1' (line 2)", "'u1 ' (line 4)", "u1"),
    # a quoted 'pad' and an unquoted ' pad' (csv path)
    ("q.csv", 'user_id,item_id\nu0, pad\nu0,"pad"\n', "item_id", "' pad' (line 2)", "'\"pad\"' (line 3)", "pad"),
    # MovieLens .dat (string ids; no quoting there)
    ("ratings.dat", "u1::a::5::1\nu1:: a::5::2\n", "item (2nd field)", "'a' (line 1)", "' a' (line 2)", "a"),
])
def test_stripping_blanks_that_would_merge_two_ids_is_refused(tmp_path, name, text, column, first, second, read_as):
    """Blanks around an unquoted id are still dropped, but when that makes two spellings one id the file is refused,
    naming the file, the column, both spellings and a line of each, and the way out; they were merged silently."""
    way_out = "quote the ids whose blanks" if name != "ratings.dat" else "this format has no quoting"
    with pytest.raises(ValueError) as e:
        read_interactions(write(tmp_path / name, text))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / name}: column {column!r}: the ids {first} and {second} are both read as "
                          f"{read_as!r}") and "merge two ids into one silently" in msg and way_out in msg, msg


def test_an_id_quoted_on_one_line_and_not_on_another_is_refused(tmp_path):
    """' pad' quoted keeps its blank, ' pad' unquoted loses it: one spelling would be two ids -- refused too."""
    with pytest.raises(ValueError, match=r"s.csv: column 'item_id': the id ' pad' is read as 'pad' on line 2 "
                                         r"\(' pad'\) and as ' pad' on line 3 \('\" pad\"'\).*make one id two"):
        read_interactions(write(tmp_path / "s.csv", 'user_id,item_id\nu0, pad\nu0," pad"\n'))


def test_blanks_around_ids_without_a_collision_are_dropped_unless_quoted(tmp_path):
    """No two spellings meet: unquoted ids lose their blanks as before ('1, 2, 3' files, trailing spaces), quoted ones
    keep them in the same file; integer columns are integers whatever the blanks (' 7', '" 7"' and '7' are 7)."""
    x = read_interactions(write(tmp_path / "n.csv", 'user_id, item_id, timestamp\nu1, a , 1\nu1," b", 2\n'
                                                    'u2 , a , 3\n'))
    assert x.user.tolist() == ["u1", "u1", "u2"] and x.item.tolist() == ["a", " b", "a"]
    ints = read_interactions(write(tmp_path / "i.csv", 'user_id,item_id\n" 7",1\n7, 2\n8,"2 "\n'))
    assert ints.user.dtype == np.int64 and ints.user.tolist() == [7, 7, 8] and ints.item.tolist() == [1, 2, 2]
    seq = read_interactions(write(tmp_path / "n.seq", "user_id\titem_ids_chronological\n u1 \ta b\nu2\tc\n"))
    assert seq.user.tolist() == ["u1", "u1", "u2"]


def test_a_seq_user_spelled_with_and_without_blanks_is_named_with_both_spellings(tmp_path):
    with pytest.raises(ValueError, match=r"s.seq: user 'u1' is listed twice, as 'u1' \(line 2\) and ' u1' \(line 3\): "
                                         r"blanks around an id are dropped"):
        read_interactions(write(tmp_path / "s.seq", "user_id\titem_ids_chronological\nu1\ta b\n u1\tc\n"))


def test_parquet_string_ids_that_differ_only_in_blanks_are_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "a ", "b"]}), tmp_path / "p.parquet")
    with pytest.raises(ValueError, match=r"p.parquet: column 'item_id': the ids 'a' \(row 1\) and 'a ' \(row 2\) are "
                                         r"both read as 'a'.*this format has no quoting"):
        read_interactions(tmp_path / "p.parquet")
    pq.write_table(pa.table({"user_id": [" u1", "u1 "], "item_id": ["a", "b"]}), tmp_path / "p2.parquet")
    with pytest.raises(ValueError, match=r"column 'user_id': the ids ' u1' \(row 1\) and 'u1 ' \(row 2\)"):
        read_interactions(tmp_path / "p2.parquet")


def _loo_ds():
    return build_sequences(Interactions(np.array([1, 1, 1, 2, 2, 2]), np.array([5, 6, 7, 5, 6, 7])))


def _kcore_file(tmp_path):
    return write(tmp_path / "k.inter", "user_id:token\titem_id:token\n" + "".join(f"{u}\t{i}\n" for u in range(4)
                                                                                  for i in range(3)))


_SEQS = [np.arange(1, 8), np.array([3, 4])]


@pytest.mark.parametrize("call, error, message", [
    # ids that an int64 cast would cut (1.7 -> item 1) or that are padding / negative
    (lambda p: training_windows([[1.7, 2.2, 3.9]], 5), ValueError,
     r"sequence 0 must be a 1-D array of int item indices >= 1, got float64 values \[1.7, 2.2, 3.9\]"),
    (lambda p: training_windows([[True, True, False]], 5), ValueError, r"sequence 0 .* got bool values"),
    (lambda p: training_windows([np.array([1, 2]), ["1", "2"]], 5), ValueError, r"sequence 1 .* got <U1 values"),
    (lambda p: training_windows([[1, 2], [3, -1, 4]], 5), ValueError,
     r"sequence 1 has item index -1 at position 1: internal item indices are >= 1 \(0 is padding\)"),
    (lambda p: training_windows([[1, 2, 0]], 5), ValueError, r"sequence 0 has item index 0 at position 2"),
    (lambda p: training_windows([[0, 2, 3]], 5), ValueError, r"sequence 0 has item index 0 at position 0"),
    # integer settings that int() would cut or read as 1
    (lambda p: training_windows(_SEQS, 1.5), ValueError, r"max_len must be an int >= 1, got 1\.5"),
    (lambda p: training_windows(_SEQS, True), ValueError, r"max_len must be an int >= 1, got True"),
    (lambda p: training_windows(_SEQS, 4, stride=1.5), ValueError,
     r"stride must be in \[1, max_len = 4\] \(an int\), got 1\.5"),
    (lambda p: next(iterate_batches(training_windows(_SEQS, 4), 1.5, "left")), ValueError,
     r"batch_size must be an int >= 1, got 1\.5"),
    (lambda p: next(eval_batches(leave_one_out(_loo_ds()).test, True, "left")), ValueError,
     r"max_len must be an int >= 1 \(or None: whole histories\), got True"),
    (lambda p: next(eval_batches(leave_one_out(_loo_ds()).test, 4, "left", batch_size=1.5)), ValueError,
     r"batch_size must be an int >= 1, got 1\.5"),
    (lambda p: next(eval_batches(leave_one_out(_loo_ds()).test, 4, "left", max_tokens=64.0)), ValueError,
     r"max_tokens must be an int >= 1 \(or None\), got 64\.0"),
    (lambda p: leave_one_out(_loo_ds(), min_length="3"), ValueError, r"min_length must be an int >= 3 .*got '3'"),
    (lambda p: leave_one_out(_loo_ds(), min_length=3.5), ValueError, r"min_length must be an int >= 3 .*got 3\.5"),
    (lambda p: leave_one_out(None), TypeError, r"leave_one_out needs a zoo.data.SequenceDataset .*got NoneType"),
    (lambda p: load_dataset(p, kcore=2.5), ValueError, r"kcore must be an int, None or 'auto', got 2\.5"),
    (lambda p: load_dataset(p, kcore=True), ValueError, r"kcore must be an int, None or 'auto', got True"),
    (lambda p: load_dataset(p, kcore=2, item_k=1.5), ValueError, r"item_k must be an int or None, got 1\.5"),
], ids=["float-ids", "bool-ids", "str-ids", "negative-id", "padding-id", "padding-id-first", "max_len-float",
        "max_len-bool", "stride-float", "iterate-batch_size-float", "eval-max_len-bool", "eval-batch_size-float",
        "eval-max_tokens-float", "min_length-str", "min_length-float", "loo-None", "kcore-float", "kcore-bool",
        "item_k-float"])
def test_data_functions_refuse_what_they_would_coerce(tmp_path, call, error, message):
    """zoo.data refuses, naming the argument, what it used to coerce silently: float/bool/str ids cut or read as
    items, ids 0 / -1 inside a sequence, and int() on settings (1.5 -> 1, True -> 1, a 2.5 k-core threshold)."""
    with pytest.raises(error, match=message):
        call(_kcore_file(tmp_path))


def test_data_functions_take_numpy_int_settings_and_ids(tmp_path):
    """Valid calls are unchanged: numpy integer settings give what the Python ints give, and any integer id dtype
    (int32, uint16, a list of ints) gives the same int64 windows."""
    ref = training_windows(_SEQS, 4, stride=2)
    for seqs in (_SEQS, [s.astype(np.int32) for s in _SEQS], [s.astype(np.uint16) for s in _SEQS],
                 [s.tolist() for s in _SEQS]):
        w = training_windows(seqs, np.int64(4), stride=np.int32(2))
        assert w.inputs.dtype == np.int64 and w.max_len == 4 and type(w.max_len) is int and w.stride == 2
        assert np.array_equal(w.inputs, ref.inputs) and np.array_equal(w.labels, ref.labels)
        assert np.array_equal(w.starts, ref.starts) and np.array_equal(w.skip, ref.skip)
    a = [b["input_ids"].tolist() for b in iterate_batches(ref, np.int64(2), "left", seed=0)]
    assert a == [b["input_ids"].tolist() for b in iterate_batches(ref, 2, "left", seed=0)] and len(a) == 2
    test = leave_one_out(_loo_ds(), min_length=np.int64(3)).test
    for kw in ({}, {"max_tokens": np.int64(1)}):                 # 1 token: one row a batch either way
        got = [b["input_ids"].tolist() for b in eval_batches(test, np.int64(1), "left", np.int64(1), **kw)]
        assert got == [[[2]], [[2]]]
    p = _kcore_file(tmp_path)
    assert load_dataset(p, kcore=np.int64(2)).kcore == (2, 2) == load_dataset(p, kcore=2).kcore
    assert load_dataset(p, kcore=0).kcore is None and load_dataset(p, kcore=None).kcore is None
