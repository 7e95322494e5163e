"""ISO 8601 date-times read alike on every Python ``requires-python`` allows: 3.10's ``datetime.fromisoformat``
refused ``-0500``-style offsets and fractions of 1, 2, 4 or 5 digits (which the readers' pattern admits and 3.11+
reads), so a file read on 3.11 was "not a valid date-time" on 3.10; the readers now hand ``fromisoformat`` the text
as ``isoformat()`` writes it. And messages that count one thing say it in the singular (``zoo.train
--init-from``'s unknown items, ``zoo.recommend --timestamps``, the card's dropped interactions)."""

import re
import sys
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np
import pytest

from zoo import hub
from zoo.data import Interactions, load_dataset, read_interactions
from zoo.data.readers import _ISO_TIME, _iso_normalised
from zoo.recommend import main as recommend_main
from zoo.train import fit_data_to_checkpoint
from zoo.vocab import ItemVocab

#: what ``datetime.isoformat()`` writes (a space or ``T``, seconds optional, a fraction of exactly 6 digits, the
#: offset with its colon): what Python 3.10's ``fromisoformat`` reads
ISOFORMAT = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{6})?)?[+-]\d{2}:\d{2}")
#: the parts of an ISO date-time with an offset, read without ``fromisoformat``
PARTS = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?(Z|([+-])(\d{2}):?(\d{2}))")

#: the QA report's strings (h_port finding 2) and their Unix seconds, worked out by hand
KNOWN = {"1997-09-22T16:57:58-05:00": 874965478.0, "1997-09-22T16:57:58-0500": 874965478.0,
         "1997-09-22T16:57:58.5Z": 874947478.5, "1997-09-22T16:57:58.1234Z": 874947478.1234,
         "1997-09-22T16:57:58.123Z": 874947478.123, "1997-09-22 16:57Z": 874947420.0,
         "1997-09-22T16:57:58+0530": 874927678.0, "2027-03-01T12:00:00.5Z": 1803902400.5,
         "1997-09-22T16:57:58.12-0000": 874947478.12, "1997-09-22T16:57:58.00001+1400": 874897078.00001}


def _by_hand(text: str) -> datetime:
    """The date-time ``text`` is, from its digits alone (no ``fromisoformat``)."""
    y, mo, d, h, mi, s, frac, off, sign, oh, om = PARTS.fullmatch(text).groups()
    tz = timezone.utc if off == "Z" else timezone((-1 if sign == "-" else 1) * timedelta(hours=int(oh),
                                                                                          minutes=int(om)))
    return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0), int((frac or "0").ljust(6, "0")), tz)


def _random_texts(n: int, seed: int = 0) -> list:
    """``n`` ISO date-times with an offset as the readers' pattern admits them: every fraction length (none, 1-6
    digits), offsets with and without the colon and Z, ``T`` or a space, seconds or none."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        text = (f"{rng.integers(1970, 2100)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
                f"{'T' if rng.random() < 0.5 else ' '}{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}")
        if rng.random() < 0.8:
            text += f":{rng.integers(0, 60):02d}"
            digits = int(rng.integers(0, 7))
            if digits:
                text += "." + "".join(str(d) for d in rng.integers(0, 10, digits))
        kind = rng.integers(0, 3)
        if kind == 0:
            text += "Z"
        else:
            text += f"{'+-'[rng.integers(0, 2)]}{rng.integers(0, 15):02d}{':' if kind == 1 else ''}"
            text += f"{rng.choice([0, 15, 30, 45]):02d}"
        out.append(text)
    return out


def _check_normalised(text: str) -> None:
    m = _ISO_TIME.fullmatch(text)
    assert m and m.group(1), text
    normalised = _iso_normalised(m)
    assert ISOFORMAT.fullmatch(normalised), (text, normalised)
    read = datetime.fromisoformat(normalised)
    assert read == _by_hand(text) and read.utcoffset() == _by_hand(text).utcoffset(), (text, normalised)
    if sys.version_info >= (3, 11):                 # 3.11+ reads the text as written: the readers' old path
        assert read == datetime.fromisoformat(text.replace("Z", "+00:00")), text


@pytest.mark.parametrize("text", list(KNOWN))
def test_the_normalised_text_is_what_3_10_reads_and_the_same_date_time(text):
    """Each text the pattern admits is handed to ``fromisoformat`` as ``isoformat()`` writes it (which Python 3.10
    reads), naming the same instant to the microsecond as its digits do, and as 3.11+ reads the text as written."""
    _check_normalised(text)
    if sys.version_info < (3, 11):
        print(f"Python {sys.version.split()[0]}: fromisoformat reads only the normalised text; compared by hand")


def test_random_date_times_normalise_to_the_same_instant():
    """The same on 2000 random texts of every shape the pattern admits."""
    for text in _random_texts(2000):
        _check_normalised(text)


def test_a_file_of_such_date_times_reads_as_their_seconds(tmp_path):
    """A CSV of the strings 3.10 refused reads as their Unix seconds (exactly: to the microsecond)."""
    path = tmp_path / "iso.csv"
    path.write_text("user,item,ts\n" + "".join(f"u,{i},{t}\n" for i, t in enumerate(KNOWN)))
    got = read_interactions(path).timestamp.tolist()
    assert got == [(_by_hand(t) - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(seconds=1) for t in KNOWN]
    assert got == pytest.approx(list(KNOWN.values()), abs=1e-6, rel=0)


@pytest.mark.parametrize("text, says", [
    ("1997-09-22T16:57:58.1234567Z", "is not an ISO 8601 date-time with a UTC offset"),     # 7 digits: as before
    ("1997-13-22T16:57:58-0500", "is not a valid date-time"),
    ("1997-09-22T16:57:58+2400", "is not a valid date-time"),
    ("1997-09-31T16:57:58.5Z", "is not a valid date-time")])
def test_what_the_reader_refuses_it_still_refuses(tmp_path, text, says):
    """More than 6 fraction digits stay refused by the pattern (as on 3.11 before); a month 13, an offset of 24
    hours or September 31st stay "not a valid date-time", naming the value as written."""
    path = tmp_path / "bad.csv"
    path.write_text(f"user,item,ts\nu,1,1997-09-22T16:57:58Z\nu,2,{text}\n")
    with pytest.raises(ValueError, match=rf"line 3, column 'ts': timestamp {re.escape(repr(text))} {says}"):
        read_interactions(path)


def _dataset(items, users):
    return load_dataset(Interactions(np.array(users), np.array(items), None), kcore=None, name="d")


@pytest.mark.parametrize("items, users, says", [
    ([10, 30], ["a", "a"], r"1 of the data's 2 items \(1 interaction\) is not in the checkpoint's item vocabulary "
                           r"\(1 item\), e\.g\. \[30\]"),
    ([30], ["a"], r"1 of the data's 1 item \(1 interaction\) is not in the checkpoint's item vocabulary \(1 item\)"),
    ([10, 30, 40, 30], ["a", "a", "b", "b"], r"2 of the data's 3 items \(3 interactions\) are not in the "
                                             r"checkpoint's item vocabulary \(1 item\)")])
def test_init_from_counts_unknown_items_in_the_singular_for_one(items, users, says):
    """``zoo.train --init-from``'s refusal said "(1 interactions) are not"; one is singular, more stay plural."""
    model = SimpleNamespace(item_vocab=ItemVocab([10]))
    with pytest.raises(ValueError, match=r"^--init-from: " + says + r".*: --unknown-items add"):
        fit_data_to_checkpoint(_dataset(items, users), model)


@pytest.mark.parametrize("argv, says", [
    (["--history", "100", "107", "--timestamps", "1000"], "--timestamps gives 1 timestamp for 2 --history items"),
    (["--history", "100", "--timestamps", "1000", "1001"], "--timestamps gives 2 timestamps for 1 --history item"),
    (["--history", "1", "2", "3", "--timestamps", "1", "2"], "--timestamps gives 2 timestamps for 3 --history items")])
def test_recommend_counts_timestamps_in_the_singular_for_one(tmp_path, capsys, argv, says):
    """``zoo.recommend --timestamps`` of another length than ``--history``: a usage error (before any model is
    read: the --model path does not exist) that says "1 timestamp", "1 --history item"."""
    with pytest.raises(SystemExit) as e:
        recommend_main(["--model", str(tmp_path / "no model"), *argv])
    assert e.value.code == 2
    assert f"{says}: give one per item, oldest first" in capsys.readouterr().err


@pytest.mark.parametrize("dropped, says", [
    ({"items": 1, "interactions": 1, "users": 1},
     "the interactions of the 1 item the model's item vocabulary lacks were dropped before the split: "
     "1 interaction (1 user left with none)."),
    ({"items": 1234, "interactions": 12345, "users": 0},
     "the interactions of the 1,234 items the model's item vocabulary lacks were dropped before the split: "
     "12,345 interactions (0 users left with none)."),
    ({"items": 2, "interactions": 1001, "users": 1},
     "the interactions of the 2 items the model's item vocabulary lacks were dropped before the split: "
     "1,001 interactions (1 user left with none).")])
def test_the_card_counts_what_was_dropped_in_the_singular_for_one(dropped, says):
    """The card's data line said "1 interactions (1 users left with none)"; it keeps the thousands separator."""
    text = hub._with_dropped("Some data.", dropped)
    assert text.startswith("Some data. As in training (`--unknown-items drop`), " + says), text
