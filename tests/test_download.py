"""python -m zoo.download on local archives (no network here): a download is kept only when it loads as the
benchmark, and a failure leaves the folder as it was. The archives are built from ../shared/data in the publisher's
layout (ml-100k.zip's headerless u.data, ml-1m.zip's ratings.dat)."""

import gzip
import zipfile

import pytest

from zoo import download as D
from zoo.data import load_dataset
from zoo.data.benchmarks import BENCHMARKS, SOURCES, recognise_benchmark


def _rows(path) -> list[str]:
    """The data rows of a gzipped interaction file of ../shared/data (its header dropped)."""
    with gzip.open(path, "rt") as f:
        return f.read().splitlines()[1:]


def _zip(path, member: str, lines: list[str]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, "\n".join(lines) + "\n")
    return path


@pytest.fixture
def ml100k_zip(shared_file, tmp_path):
    """ml-100k.zip as GroupLens publishes it: ml-100k/u.data, tab-separated user item rating timestamp, no header."""
    return _zip(tmp_path / "ml-100k.zip", "ml-100k/u.data", _rows(shared_file("ml-100k.inter.gz")))


def test_an_archive_becomes_the_benchmark_file_and_is_checked_again_when_asked_twice(ml100k_zip, tmp_path, capsys):
    out = tmp_path / "data"
    path = D.main(["ml-100k", "--dir", str(out), "--from-zip", str(ml100k_zip)])
    assert path == str(out / "ml-100k.inter") and sorted(p.name for p in out.iterdir()) == ["ml-100k.inter"]
    assert recognise_benchmark(load_dataset(path, kcore=None)) == "ml-100k"
    assert recognise_benchmark(load_dataset(path)) == "ml-100k-5core"            # what the commands train on
    assert capsys.readouterr().out.startswith(f"wrote: {path} (MovieLens-100K, checked); ")
    before = (out / "ml-100k.inter").stat().st_mtime_ns
    D.main(["ml-100k", "--dir", str(out)])                                       # no archive, no network: checked
    assert capsys.readouterr().out.startswith(f"already there: {path}")
    assert (out / "ml-100k.inter").stat().st_mtime_ns == before


def test_a_download_is_fetched_streamed_and_checked(ml100k_zip, tmp_path, monkeypatch):
    """The network path, on a file:// URL (urllib's own handler): fetched into the folder's staging area, then kept."""
    monkeypatch.setitem(SOURCES, "ml-100k", D.Source(**{**vars(SOURCES["ml-100k"]), "url": ml100k_zip.as_uri()}))
    path, written = D.download("ml-100k", str(tmp_path / "data"), progress=False)
    assert written and recognise_benchmark(load_dataset(path, kcore=None)) == "ml-100k"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["ml-100k.inter"]


def test_the_download_bar_is_shown_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    """The download bar went to stderr whatever it was (a CI log, a file), its carriage returns gluing the next line
    to it: it is shown only when stderr is a terminal now (and never with progress=False)."""
    import sys

    src = tmp_path / "archive.bin"
    src.write_bytes(b"x" * 200_000)
    D.fetch(src.as_uri(), str(tmp_path / "a"), progress=True)
    assert (tmp_path / "a").read_bytes() == src.read_bytes() and capsys.readouterr().err == ""   # no terminal here
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    D.fetch(src.as_uri(), str(tmp_path / "b"), progress=True)
    assert "archive.bin" in capsys.readouterr().err
    D.fetch(src.as_uri(), str(tmp_path / "c"), progress=False)
    assert capsys.readouterr().err == ""


def test_what_is_not_the_benchmark_is_refused_and_nothing_is_left(shared_file, tmp_path):
    out = tmp_path / "data"
    rows = _rows(shared_file("ml-100k.inter.gz"))
    short = _zip(tmp_path / "short.zip", "ml-100k/u.data", rows[:-10])           # a truncated download
    with pytest.raises(D.DownloadError, match=r"is not MovieLens-100K: it loads as 943 users, 1,682 items, 99,990 "
                                              r"interactions \(k-core None\), expected 943 / 1,682 / 100,000"):
        D.download("ml-100k", str(out), str(short))
    assert not out.exists()                                   # no staging folder left, nor the folder it made
    # ML-1M's archive layout (ratings.dat, user::item::rating::time), holding only users 1-2999: not ML-1M
    u2999 = [line.replace("\t", "::") for line in _rows(shared_file("ml-1m.users0001-2999.inter.gz"))]
    part = _zip(tmp_path / "ml-1m.zip", "ml-1m/ratings.dat", u2999)
    with pytest.raises(D.DownloadError, match=r"is not MovieLens-1M \(5-core\): it loads as 2,999 users"):
        D.download("ml-1m", str(out), str(part))
    assert not out.exists()


def test_a_file_in_place_that_is_not_the_benchmark_is_named_and_kept(ml100k_zip, tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "ml-100k.inter").write_text("user_id\titem_id\n1\t2\n")
    with pytest.raises(SystemExit, match=r"is not MovieLens-100K: .*left as it is \(--overwrite replaces it\)"):
        D.main(["ml-100k", "--dir", str(out), "--from-zip", str(ml100k_zip)])
    assert (out / "ml-100k.inter").read_text() == "user_id\titem_id\n1\t2\n"
    D.main(["ml-100k", "--dir", str(out), "--from-zip", str(ml100k_zip), "--overwrite"])
    assert recognise_benchmark(load_dataset(out / "ml-100k.inter", kcore=None)) == "ml-100k"


def test_unreachable_sources_and_bad_archives_are_named(tmp_path, monkeypatch):
    """Without network (a refused port here), a wrong member or a file that is no zip: one error naming the problem
    and the way out (--from-zip), nothing written."""
    out = tmp_path / "data"
    monkeypatch.setitem(SOURCES, "ml-100k", D.Source(**{**vars(SOURCES["ml-100k"]), "url": "http://127.0.0.1:9/x.zip"}))
    with pytest.raises(SystemExit, match=r"^error: cannot download http://127.0.0.1:9/x.zip \(.*\); download it by "
                                         r"hand and pass it with --from-zip$"):
        D.main(["ml-100k", "--dir", str(out), "--no-progress"])
    other = _zip(tmp_path / "other.zip", "ml-100k/u.item", ["1|Toy Story"])
    with pytest.raises(D.DownloadError, match=r"other.zip: no ml-100k/u.data in the archive "
                                              r"\(is it http://127.0.0.1:9/x.zip\?\)"):
        D.download("ml-100k", str(out), str(other))
    (tmp_path / "not.zip").write_text("hello")
    with pytest.raises(D.DownloadError, match="not.zip: not a readable zip archive"):
        D.download("ml-100k", str(out), str(tmp_path / "not.zip"))
    assert not out.exists()                                   # the folder the failed calls made is gone again
    with pytest.raises(D.DownloadError, match="not.zip: not a readable zip archive"):    # and its parents too
        D.download("ml-100k", str(tmp_path / "a" / "b"), str(tmp_path / "not.zip"))
    assert not (tmp_path / "a").exists()
    good = bytearray(_zip(tmp_path / "damaged.zip", "ml-100k/u.data", [f"{u}\t{u * 7 % 1600}\t3\t{u}"
                                                                       for u in range(3000)]).read_bytes())
    data_at = 30 + len("ml-100k/u.data")                      # the member's deflate data follows its local header
    good[data_at + 10:data_at + 200] = bytes(b ^ 0x5A for b in good[data_at + 10:data_at + 200])
    (tmp_path / "damaged.zip").write_bytes(bytes(good))       # a zip whose member is damaged inside: zlib.error
    with pytest.raises(D.DownloadError, match=r"damaged.zip: not a readable zip archive \(Error -3 while decomp"):
        D.download("ml-100k", str(out), str(tmp_path / "damaged.zip"))
    assert not out.exists()
    with pytest.raises(SystemExit):                                               # a usage error, before any work
        D.main(["ml-100k", "--dir", str(out), "--from-zip", str(tmp_path / "missing.zip")])
    assert set(SOURCES) <= {k.split("-5core")[0] for k in BENCHMARKS} and all(s.benchmark in BENCHMARKS
                                                                              for s in SOURCES.values())


def test_a_folder_at_the_target_and_a_bad_download_are_named_in_one_line(ml100k_zip, tmp_path, monkeypatch):
    """A folder where the interaction file goes is refused in one line (not an IsADirectoryError traceback); a bad
    download is named by its URL and archive member, not by the deleted staging path."""
    out = tmp_path / "data"
    (out / "ml-100k.inter").mkdir(parents=True)
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit, match=r"^error: .*ml-100k.inter is a folder, not the interaction file"):
            D.main(["ml-100k", "--dir", str(out), "--from-zip", str(ml100k_zip), *extra])
    with pytest.raises(D.DownloadError, match="cannot read it"):
        D.check(str(out / "ml-100k.inter"), "ml-100k")
    (tmp_path / "not.zip").write_text("hello")
    url = (tmp_path / "not.zip").as_uri()
    monkeypatch.setitem(SOURCES, "ml-100k", D.Source(**{**vars(SOURCES["ml-100k"]), "url": url}))
    with pytest.raises(D.DownloadError, match=rf"^{url}: not a readable zip archive"):
        D.download("ml-100k", str(tmp_path / "d2"), progress=False)
    short = _zip(tmp_path / "short.zip", "ml-100k/u.data", ["1\t2\t3\t4"])
    monkeypatch.setitem(SOURCES, "ml-100k", D.Source(**{**vars(SOURCES["ml-100k"]), "url": short.as_uri()}))
    with pytest.raises(D.DownloadError, match=rf"^ml-100k/u.data of {short.as_uri()} is not MovieLens-100K"):
        D.download("ml-100k", str(tmp_path / "d3"), progress=False)


def test_dir_defaults_to_zoo_data_dir_else_data_and_exit_statuses(ml100k_zip, tmp_path, monkeypatch, capsys):
    """``--dir`` defaults to ``$ZOO_DATA_DIR`` (the folder the tests and bench scripts read) when it is set, else to
    ``./data`` (it was always ``./data``); the help says so. A default that is a file is a usage error naming the
    variable (2), an archive that is not there a failed run (1)."""
    env = tmp_path / "env"
    monkeypatch.setenv("ZOO_DATA_DIR", str(env))
    assert D.main(["ml-100k", "--from-zip", str(ml100k_zip), "--no-progress"]) == str(env / "ml-100k.inter")
    assert sorted(p.name for p in env.iterdir()) == ["ml-100k.inter"]
    monkeypatch.delenv("ZOO_DATA_DIR")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert D.main(["ml-100k", "--from-zip", str(ml100k_zip)]) == "data/ml-100k.inter"
    assert (tmp_path / "cwd" / "data" / "ml-100k.inter").is_file()
    capsys.readouterr()
    monkeypatch.setenv("ZOO_DATA_DIR", str(ml100k_zip))                          # a file
    with pytest.raises(SystemExit) as e:
        D.main(["ml-100k", "--from-zip", str(ml100k_zip)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is a file, not a folder ($ZOO_DATA_DIR, the default of --dir)" in err, err
    with pytest.raises(SystemExit) as e:
        D.main(["ml-100k", "--dir", str(tmp_path / "d"), "--from-zip", str(tmp_path / "missing.zip")])
    assert e.value.code == 1 and "--from-zip" in capsys.readouterr().err and not (tmp_path / "d").exists()
    with pytest.raises(SystemExit) as e:
        D.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and "(default: $ZOO_DATA_DIR when it is set, else ./data)" in text
    assert "--no-progress no progress bar while downloading" in text
