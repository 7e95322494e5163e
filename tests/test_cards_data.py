"""The model cards' Data section: every card says where its data comes from, how a reader gets it and what to pass in
place of the path its commands name (the team's ``../shared/data`` copy, which a Hub reader does not have); the
bundled cards are exactly what :func:`zoo.hub.make_card` writes from their stored inputs; and the ways the sections
give (``zoo.download``'s ``ratings.dat`` with ``--time-ties item``, the ``awk`` cut of users 1-2999, the Amazon
conversion) give the data the cards were measured on, as far as it can be checked without GroupLens' or Amazon's
files (the users 1-2999 of ML-1M are the only ones whose real timestamps the team's data holds)."""
from __future__ import annotations

import gzip
import json
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zoo import hub
from zoo.data import load_dataset
from zoo.data.benchmarks import recognise_benchmark

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted(p.parent.name for p in (ROOT / "hub_cards").glob("*/README.md"))
#: a bundled card's model-index dataset type -> what its Data section must name as the way to get the data
OBTAIN = {"ml-1m": "`python -m zoo.download ml-1m --dir data/`", "amazon-beauty": "`reviews_Beauty_5.json.gz`"}
ML1M_FLAGS = "--data data/ml-1m.ratings.dat --time-ties item"


def _readme(card: str) -> str:
    return (ROOT / "hub_cards" / card / "README.md").read_text()


def _data_section(text: str) -> str:
    return text.split("\n## Data\n", 1)[1].split("\n## ", 1)[0]


def _train_data(text: str) -> str:
    argv = shlex.split(re.search(r"^- Command: `python -m zoo\.(?:train|soup) (.*?)`$", text, re.M).group(1))
    return argv[argv.index("--data") + 1]


@pytest.mark.parametrize("card", CARDS)
def test_every_bundled_card_says_where_its_data_comes_from(card):
    """The cards gave only ``--data ../shared/data/...``, a path of the team's machines: each now has a Data section
    between its example and its evaluation that names a way to get the data, and the evaluation's first lines say
    that the commands' path is the team's copy and what to pass instead."""
    text = _readme(card)
    assert text.index("```python") < text.index("\n## Data\n") < text.index("\n## Evaluation"), card
    section = _data_section(text)
    kind = hub._card_dataset(ROOT / "hub_cards" / card)["type"]
    assert OBTAIN[kind] in section, (card, section)
    path = _train_data(text)
    evaluation = text.split("\n## Evaluation", 1)[1].split("\n| metric |", 1)[0]
    assert f"`{path}` in this card's commands is the zoo team's copy of this data; " in evaluation, evaluation
    if kind == "ml-1m" and path.endswith("ml-1m.5core.seq.gz"):          # the sequence file has no timestamps
        assert f"`{ML1M_FLAGS}` in place of `--data {path}`" in section and f"`{ML1M_FLAGS}`" in evaluation
    if "users0001-2999" in path:
        assert "awk -F:: '$1 <= 2999' data/ml-1m.ratings.dat > data/ml-1m.users0001-2999.ratings.dat" in section
    if kind == "amazon-beauty":                     # said plainly: the public file cannot re-measure this model
        assert "cannot be re-measured from the public file" in section


def regenerated_readme(card: Path, data_dir: Path) -> str:
    """What :func:`zoo.hub.make_card` writes for the bundled card folder ``card`` from its stored inputs (its
    ``eval_results.json``, ``training_log.json``, notes, and the data file its commands name, read from
    ``data_dir`` with the run's options), with the ONNX section that ``export.onnx --card-dir`` appends carried
    over; nothing is measured."""
    import tempfile

    text = (card / "README.md").read_text()
    info = json.loads((card / "eval_results.json").read_text())
    stages = json.loads((card / "training_log.json").read_text())["stages"]
    argv = shlex.split(info["protocol"]["command"])
    options = hub.run_data_options(info)
    loaded = load_dataset(data_dir / info["data_file"], **options)
    names = hub._card_dataset(card)
    source = recognise_benchmark(loaded)
    dataset = {"name": names["name"], "type": names["type"], "benchmark": source, "source": source,
               "users": int(re.search(r"on ([\d,]+) test users", text).group(1).replace(",", "")),
               "description": re.search(r"^- Data: (.*)$", text, re.M).group(1),
               "path": argv[argv.index("--data") + 1], "timed": loaded.timestamps is not None, "options": options,
               "item_id_type": loaded.vocab.id_type}
    ref = info.get("reference_protocol")
    with tempfile.TemporaryDirectory() as tmp:
        for f in ("config.json", "item_vocab.json"):
            shutil.copyfile(card / f, Path(tmp) / f)
        new = Path(hub.make_card(tmp, card.name, info["metrics"], info["protocol"], dataset, stages[-1],
                                 extra_sections=hub._stages_markdown(stages) + hub._marked_notes(hub.card_notes(card)),
                                 reference_metrics={"metrics": ref["metrics"], "command": ref["command"]} if ref
                                 else None, intervals={k: tuple(v) for k, v in info["intervals_95"].items()},
                                 baselines=info["baselines"], bundled=True)).read_text()
    from export.onnx import CARD_BEGIN

    if CARD_BEGIN in text:                          # export.onnx's write_card_section appends it so
        new = new.rstrip("\n") + "\n\n" + text[text.index(CARD_BEGIN):]
    return new


@pytest.mark.parametrize("card", CARDS)
def test_bundled_cards_are_what_make_card_writes(card, shared_file):
    """A bundled card's README is what the generator writes from the card's stored inputs, Data section included:
    a change of :func:`zoo.hub.make_card` reaches the bundled cards, and no card's text drifts from it by hand."""
    info = json.loads((ROOT / "hub_cards" / card / "eval_results.json").read_text())
    data_dir = shared_file(info["data_file"]).parent
    text = regenerated_readme(ROOT / "hub_cards" / card, data_dir)
    assert "\n## Data\n" in text and text == _readme(card), card


def _config(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "gru4rec", "n_items": 3417}))


def test_make_card_writes_the_data_section(tmp_path):
    """make_card writes the Data section before the evaluation and, where the commands name a path, the sentence
    after the measuring command that says what it is and what to pass in its place."""
    _config(tmp_path)
    metrics = {"HR@10": 0.2, "NDCG@10": 0.1}
    protocol = {"name": "RecBole protocol", "history_masked": False,
                "command": "python -m zoo.evaluate --model m --data ../shared/data/ml-1m.5core.seq.gz"}
    log = {"stopped": "max epochs", "epochs": [{}], "train": {}}
    seq = {"name": "MovieLens-1M (5-core)", "type": "ml-1m", "users": 6040, "benchmark": None,
           "source": "ml-1m-5core", "path": "../shared/data/ml-1m.5core.seq.gz", "timed": False,
           "options": {"kcore": "auto", "time_ties": "file"}, "item_id_type": "int"}
    text = Path(hub.make_card(tmp_path, "m", metrics, protocol, seq, log)).read_text()
    section = _data_section(text)
    assert text.index("```\n\n## Data\n\nMovieLens-1M") < text.index("\n## Evaluation")
    assert OBTAIN["ml-1m"] in section and "https://files.grouplens.org/datasets/movielens/ml-1m.zip" in section
    assert f"`{ML1M_FLAGS}` in place of `--data ../shared/data/ml-1m.5core.seq.gz`" in section
    assert (f"{protocol['command']}` on 6,040 test users.\n\n`../shared/data/ml-1m.5core.seq.gz` in this card's "
            f"commands is the zoo team's copy of this data; `{ML1M_FLAGS}` reads the same data from GroupLens' "
            "file in its place (see *Data*).\n\n| metric |") in text
    # data the zoo does not know: said so, and no sentence about the path
    other = {"name": "shop.csv", "type": "shop", "users": 30, "benchmark": None, "source": None, "path": "shop.csv",
             "description": "`shop.csv`: 30 users, 9 items, 300 interactions"}
    text = Path(hub.make_card(tmp_path, "m", metrics, protocol, other, log)).read_text()
    assert ("## Data\n\n`shop.csv`: 30 users, 9 items, 300 interactions. It is not one of the public benchmarks the "
            "zoo recognises") in text
    assert "test users.\n\n| metric |" in text and "in this card's commands is" not in text


def test_data_texts_follow_how_the_run_read_its_data():
    """What a reader passes depends on the card's file and options: a file with timestamps keeps its own order of
    ties (no --time-ties item added), the sequence file read with --kcore none is replaced whole (the interaction
    file needs its 5-core), a path outside the team's folder is the file the card was made with, and Amazon data
    with its own ids is not said to be renumbered."""
    timed = {"source": "ml-1m-5core", "path": "/data/ml-1m.ratings.dat", "timed": True,
             "options": {"kcore": "auto", "time_ties": "file"}}
    section, pointer = hub.card_data_texts(timed)
    assert "`--data data/ml-1m.ratings.dat` in place of `--data /data/ml-1m.ratings.dat`" in section
    assert "--time-ties" not in section and "same-second ratings in the file's order" in section
    assert pointer.startswith("`/data/ml-1m.ratings.dat` in this card's commands is the file this card was made with")
    section, _ = hub.card_data_texts({**timed, "options": {"kcore": "auto", "time_ties": "item"}})
    assert ("`--data data/ml-1m.ratings.dat --time-ties item` in place of `--data /data/ml-1m.ratings.dat "
            "--time-ties item`") in section
    seq = {"source": "ml-1m-5core", "path": "../shared/data/ml-1m.5core.seq.gz", "timed": False,
           "options": {"kcore": None, "time_ties": "file"}}
    section, _ = hub.card_data_texts(seq)
    assert f"`{ML1M_FLAGS}` in place of `--data ../shared/data/ml-1m.5core.seq.gz --kcore none`" in section
    section, _ = hub.card_data_texts({**seq, "options": {"kcore": 10, "time_ties": "file"}})
    assert "`--data data/ml-1m.ratings.dat --kcore 10 --time-ties item` in place of" in section
    own = {"source": "beauty-5core", "path": "beauty.tsv", "timed": True, "item_id_type": "str",
           "options": {"kcore": "auto", "time_ties": "file"}}
    section, pointer = hub.card_data_texts(own)
    assert "`reviews_Beauty_5.json.gz`" in section and "not published" not in section and "*Data*" in pointer
    section, pointer = hub.card_data_texts({"source": "ml-100k", "options": {"kcore": None}})
    assert "`python -m zoo.download ml-100k --dir data/`" in section and "`--data data/ml-100k.inter --kcore none` " \
        "in place of `--data FILE --kcore none`" in section and pointer == ""
    section, _ = hub.card_data_texts({"source": "sports-5core", "path": "../shared/data/sports.inter.gz"})
    assert "`reviews_Sports_and_Outdoors_5.json.gz` (35,598 users, 18,357 items, 296,337 reviews" in section


def test_build_card_folder_gives_make_card_the_data_it_read(tmp_path, monkeypatch):
    """zoo.hub card passes the card's data path, its timestamps and the run's options on to the Data section: a run
    whose file is taken for ML-100K says to pass the downloaded file in place of the path as given."""
    from tests.test_hub_convert import _tiny_gru4rec_run

    data, _ = _tiny_gru4rec_run(tmp_path)
    monkeypatch.setattr(hub, "recognise_benchmark", lambda ds: "ml-100k-5core")
    hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(tmp_path / "card"), progress=False)
    text = (tmp_path / "card" / "README.md").read_text()
    assert f"`--data data/ml-100k.inter --kcore none` in place of `--data {data} --kcore none`" in _data_section(text)
    assert (f"`{data}` in this card's commands is the file this card was made with; `--data data/ml-100k.inter "
            "--kcore none` reads the same data from GroupLens' file in its place") in text


# ------------------------------------------------------------------------------ the sections' ways, on real data
def _ratings_dat(shared_file, shuffle: bool) -> tuple[list[str], list[str], dict]:
    """``(users 1-2999 lines, users 3000-6040 lines, 5-core sequences)`` in ``ratings.dat`` form (``u::i::r::t``):
    users 1-2999 are their real ratings (the team's file; ``shuffle``: each user's rows in a random order, as
    GroupLens' file is not in time order), users 3000-6040 the 5-core's items with made-up increasing times."""
    five = load_dataset(shared_file("ml-1m.5core.seq.gz"))
    want = {u: five.vocab.decode(s) for u, s in zip(five.users, five.sequences, strict=True)}
    with gzip.open(shared_file("ml-1m.users0001-2999.inter.gz"), "rt") as f:
        rows = [line.split("\t") for line in f.read().splitlines()[1:]]
    low = ["::".join(r) for r in rows]
    if shuffle:
        by_user: dict = {}
        for line in low:
            by_user.setdefault(int(line.split("::")[0]), []).append(line)
        rng, low = random.Random(0), []
        for u in sorted(by_user):
            rng.shuffle(by_user[u])
            low += by_user[u]
    high = [f"{u}::{i}::3::{978300000 + k}" for u in sorted(x for x in want if x > 2999)
            for k, i in enumerate(want[u])]
    return low, high, want


def test_ratings_dat_with_time_ties_item_reads_as_the_5core_sequences(shared_file, tmp_path):
    """The ML-1M cards' claim, as far as the team's data can check it: GroupLens' ``ratings.dat`` read with the
    default 5-core and ``--time-ties item`` is the team's ``ml-1m.5core.seq.gz`` -- here a ``ratings.dat`` of the real
    ratings of users 1-2999 (all their items, rare ones too, in a shuffled order) and the 5-core's items of the other
    users gives 6,040 / 3,416 / 999,611 and every user's sequence, and ``zoo.download``'s check accepts it. Not
    checked: the other users' real timestamps and the ratings the 5-core dropped from them (no copy here)."""
    from zoo.download import check

    flags = shlex.split(re.search(r"`(--data data/ml-1m\.ratings\.dat[^`]*)` in place of",
                                  _data_section(_readme("mamba4rec-ml1m"))).group(1))     # as the cards give them
    assert flags[:2] == ["--data", "data/ml-1m.ratings.dat"] and len(flags) == 4, flags
    low, high, want = _ratings_dat(shared_file, shuffle=True)
    path = tmp_path / "ml-1m.ratings.dat"
    path.write_text("\n".join(low + high) + "\n")
    ds = load_dataset(path, **{flags[2].lstrip("-").replace("-", "_"): flags[3]})      # time_ties="item"
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (6040, 3416, 999_611)
    assert {u: ds.vocab.decode(s) for u, s in zip(ds.users, ds.sequences, strict=True)} == want
    check(str(path), "ml-1m")


def test_the_cards_awk_cut_gives_the_u2999_data(shared_file, tmp_path):
    """The u2999 card's ``awk`` command, run as written on a ``ratings.dat`` holding users 1-2999 in the team's order
    and later users, keeps exactly users 1-2999, which the commands read (defaults) as the team's file: same users,
    items, vocabulary order and sequences (2,999 / 3,266 / 486,907 after the 5-core). That the team's file keeps
    ``ratings.dat``'s order of same-second ratings is its README's statement, not checked here."""
    if shutil.which("awk") is None:
        pytest.skip("no awk on this machine")
    section = _data_section(_readme("tim4rec-causal-ml1m-u2999"))
    command = re.search(r"`(awk [^`]*)`", section).group(1)
    low, high, _ = _ratings_dat(shared_file, shuffle=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ml-1m.ratings.dat").write_text("\n".join(low + high[:500]) + "\n")
    subprocess.run(command, shell=True, check=True, cwd=tmp_path)
    cut = load_dataset(tmp_path / "data" / "ml-1m.users0001-2999.ratings.dat")
    team = load_dataset(shared_file("ml-1m.users0001-2999.inter.gz"))
    assert (cut.n_users, cut.n_items, cut.n_interactions) == (2999, 3266, 486_907)
    assert cut.users == team.users and cut.vocab.items == team.vocab.items
    assert all((a == b).all() for a, b in zip(cut.sequences, team.sequences, strict=True))


def test_the_amazon_conversion_writes_a_file_the_loader_reads(tmp_path):
    """The Beauty cards' ``python -c`` conversion, run as written on a small file in the 2014 review data's form
    (one JSON object a line, gzipped, with text fields holding tabs and quotes), writes a table that ``--data`` reads
    with Amazon's ids and the review days as times."""
    section = _data_section(_readme("tim4rec-beauty"))
    command = re.search(r'`(python -c "[^`]*)`', section).group(1)
    reviews = [{"reviewerID": f"A{u}X", "asin": f"B00{i:04d}", "unixReviewTime": 1_300_000_000 + 86_400 * k,
                "reviewText": 'tab\there "quoted"', "overall": 5.0}
               for u in range(6) for k, i in enumerate(range(u, u + 6))]
    with gzip.open(tmp_path / "reviews_Beauty_5.json.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in reviews))
    subprocess.run(command.replace("python", shlex.quote(sys.executable), 1), shell=True, check=True, cwd=tmp_path)
    ds = load_dataset(tmp_path / "beauty.tsv", kcore=None)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (6, 11, 36)
    assert ds.users[0] == "A0X" and ds.vocab.decode(ds.sequences[0]) == [f"B00{i:04d}" for i in range(6)]
    assert ds.timestamps[0][1] - ds.timestamps[0][0] == 86_400
