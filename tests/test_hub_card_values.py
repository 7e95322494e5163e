"""Values a model card's YAML holds, read robustly: ``zoo.hub list`` and ``zoo.hub card`` (in place) over a README
whose metadata cannot be read (a traceback before; now one line naming the file, in ``zoo.hub push``'s words); a
model-index value that is a quoted number (a TypeError traceback) or not finite (NaN passed as matching) refused by
``zoo.hub push`` before any Hub call; ``ZOO_HUB_PROBE_TIMEOUT`` validated; bench_prefix_objective's verification
failing on a NaN loss. No network: the Hub's calls and the probe's connection are replaced by recorders."""

import math
import re
import shutil

import pytest

from tests.hub_fakes import record_hub_calls
from tests.test_hub_convert import _tiny_gru4rec_run
from tests.test_hub_json import _card_folder
from zoo import hub, pretrained

REPO = "me/tiny"

#: READMEs whose metadata cannot be read, and the start of what the one line says (``{}``: the README's path)
BROKEN_READMES = {
    "not YAML": (b'---\nlicense: "apache-2.0\n---\n# card\n', "{}: its metadata block is not YAML (while scanning"),
    "not a mapping": (b"---\n- a\n- b\n---\n# card\n", "{}: its metadata block is a YAML list, not a mapping"),
    "not UTF-8": (b"---\nlicense: apache-2.0\n---\n\xff\xfe\n",
                  "the card {}: cannot read it ('utf-8' codec can't decode"),
    "a model-index huggingface_hub cannot read": (
        b"---\nmodel-index: 5\n---\n# card\n", "{}: huggingface_hub cannot read its metadata (Invalid `model_index`"),
}

#: a README whose model-index names its dataset by a YAML number (not text)
NUMBER_NAMED = b"""---
model-index:
- name: x
  results:
  - task: {type: sequential-recommendation}
    dataset: {name: 5, type: ml-1m}
    metrics:
    - {type: hr_at_10, value: 0.5, name: HR@10}
---
# card
"""


@pytest.mark.parametrize("broken", list(BROKEN_READMES))
def test_list_names_a_card_whose_readme_cannot_be_read_and_lists_the_others(tmp_path, monkeypatch, capsys, broken):
    """``zoo.hub list`` stopped with a yaml traceback at a card whose README metadata is not YAML, the cards after it
    never listed (an unreadable README or a metadata list gave a line that did not name the file). Now one line on
    stderr naming the README, the others listed (the ones after it too), status 1 as for any corrupt card."""
    content, says = BROKEN_READMES[broken]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    first = _card_folder(bundle / "aaa-good")
    bad = _card_folder(bundle / "broken", **{"README.md": content})
    last = _card_folder(bundle / "zzz-good")
    monkeypatch.setenv("ZOO_BUNDLED_DIR", str(bundle))
    with pytest.raises(SystemExit) as e:
        hub.main(["list"])
    out, err = capsys.readouterr()
    assert e.value.code == 1 and "Traceback" not in err, err
    rows = out.splitlines()                             # the extra folder's cards first, then the project's own
    assert rows[:2] == [f"{hub.HUB_ORG}/aaa-good\t{first}\tsasrec\t-\t-\t-\t-",
                        f"{hub.HUB_ORG}/zzz-good\t{last}\tsasrec\t-\t-\t-\t-"], out
    assert len(rows) == len(pretrained.bundled_models()) - 1, out          # every other card listed, after it too
    (line,) = [x for x in err.splitlines() if x.startswith(f"cannot list {hub.HUB_ORG}/broken:")]
    assert line.startswith(f"cannot list {hub.HUB_ORG}/broken: " + says.format(bad / "README.md")), line


def test_list_shows_a_dataset_name_that_is_not_text_as_a_dash(tmp_path, monkeypatch, capsys):
    """A model-index dataset name that is a YAML number went into the row as an int (a TypeError traceback from the
    row's join); it is shown as ``-``, as card_summary shows any entry that is not text."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    card = _card_folder(bundle / "numbered", **{"README.md": NUMBER_NAMED})
    monkeypatch.setenv("ZOO_BUNDLED_DIR", str(bundle))
    try:
        hub.main(["list"])
    except SystemExit as e:         # a card of the project's own that cannot be read: not this test's to judge
        assert e.code == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"{hub.HUB_ORG}/numbered\t{card}\tsasrec\t-\t-\t-\t-" and "numbered" not in err
    assert hub._card_dataset(card) == {"type": "ml-1m"}


@pytest.fixture(scope="module")
def built_card(tmp_path_factory):
    """``(folder, data)``: a tiny GRU4Rec card written for :data:`REPO` (no ONNX graphs) and its data file, built
    once, copied by :func:`card`."""
    import torch

    tmp = tmp_path_factory.mktemp("values")
    torch.set_num_threads(1)
    data, _ = _tiny_gru4rec_run(tmp)
    hub.build_card_folder(str(tmp / "a"), "tiny", data, out_dir=str(tmp / "tiny"), repo_id=REPO, progress=False)
    return tmp / "tiny", data


@pytest.fixture
def card(built_card, tmp_path):
    """A fresh copy of :func:`built_card`'s card, as ``tmp_path / "tiny"``."""
    return shutil.copytree(built_card[0], tmp_path / "tiny")


def _contents(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def no_loading(monkeypatch):
    """The names of the loaders called (the model's weights and hash, the data), each refused, so that a test sees
    that a card is refused before any loading (before: only after the model was evaluated)."""
    import transformers

    import zoo.data

    called = []

    def refuse(name):
        def loader(*args, **kwargs):
            called.append(name)
            raise RuntimeError(f"{name} called before the old card was read")
        return loader

    monkeypatch.setattr(zoo.data, "load_dataset", refuse("load_dataset"))
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse("AutoModel.from_pretrained"))
    monkeypatch.setattr(hub, "weights_sha256", refuse("weights_sha256"))
    return called


@pytest.mark.usefixtures("one_thread")
def test_card_in_place_refuses_a_card_whose_old_readme_is_not_yaml(built_card, card, capsys, no_loading):
    """``zoo.hub card --run F --out F`` over a card whose README metadata is not YAML ended in a yaml traceback. The
    old README is what the new card keeps its dataset names (and --keep-notes text) from, so it is not ignored: one
    line naming it, status 1, and the folder left exactly as it was (nothing already written is lost), refused
    before the model or the data is loaded (it was refused only after the model had been evaluated)."""
    readme = card / "README.md"
    readme.write_text(readme.read_text().replace("license: apache-2.0", 'license: "apache-2.0', 1))
    before = _contents(card)
    with pytest.raises(SystemExit) as e:
        hub.main(["card", "--run", str(card), "--out", str(card), "--name", "tiny", "--data", built_card[1],
                  "--no-progress"])
    said = e.value.code
    assert isinstance(said, str) and "\n" not in said, said                 # sys.exit(line): status 1
    assert said.startswith(f"card not written: {readme}: its metadata block is not YAML ("), said
    assert "Traceback" not in capsys.readouterr().err
    assert _contents(card) == before
    assert no_loading == []


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("broken", list(BROKEN_READMES))
def test_card_in_place_refuses_an_unreadable_old_readme_before_any_loading(built_card, card, no_loading, broken):
    """Every README whose metadata cannot be read (:data:`BROKEN_READMES`) is refused by ``build_card_folder`` in
    its one line before the model, its weights' hash or the data is loaded, the folder left as it was; the data
    path does not even exist (it would be refused, later, as a missing file)."""
    content, says = BROKEN_READMES[broken]
    (card / "README.md").write_bytes(content)
    before = _contents(card)
    with pytest.raises(ValueError) as e:
        hub.build_card_folder(str(card), "tiny", str(card / "no such data.csv"), out_dir=str(card), repo_id=REPO,
                              progress=False)
    assert str(e.value).startswith(says.format(card / "README.md")) and "\n" not in str(e.value), e.value
    assert no_loading == [] and _contents(card) == before


def _first_value(card, value: str) -> str:
    """Replace the first model-index ``value:`` of the card's README by ``value``; the metric's name."""
    readme = card / "README.md"
    text = readme.read_text()
    match = re.search(r"      value: (\S+)\n      name: (\S+)\n", text)
    assert match, text
    readme.write_text(text[:match.start(1)] + value + text[match.end(1):])
    return match.group(2)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("value, shown", [('"0.25"', "'0.25'"), (".nan", "nan"), (".inf", "inf"),
                                          ("-.inf", "-inf"), ("true", "True")])
def test_push_refuses_a_model_index_value_that_is_not_a_finite_number(card, monkeypatch, capsys, value, shown):
    """A quoted model-index number (huggingface_hub keeps it as text) was a TypeError traceback from push's
    README-against-eval_results.json check, and NaN passed it as matching (``abs(x - nan) > 1e-6`` is False): the
    card would be published with HR = NaN. Both are refused now before any Hub call, naming the metric and the value,
    as a wrong number is."""
    hub_calls = record_hub_calls(monkeypatch, token_path=card.parent / "no-token-file")
    metric = _first_value(card, value)
    with pytest.raises(SystemExit) as e:
        hub.main(["push", str(card), "--repo-id", REPO])
    said = e.value.code
    assert isinstance(said, str) and "\n" not in said, said
    assert f"README.md's model-index {metric} value {shown} is not a finite number" in said, said
    assert "Traceback" not in capsys.readouterr().err and hub_calls == []


@pytest.mark.usefixtures("one_thread")
def test_push_refuses_a_nan_in_eval_results_against_the_readme_number(card, monkeypatch):
    """eval_results.json's number NaN (Python's json reads it) against the README's finite one: it passed as matching;
    it differs now, as another number does. The untouched card passes the check."""
    import json

    from huggingface_hub import ModelCard
    from transformers import AutoModel

    model = AutoModel.from_pretrained(card)
    text = (card / "README.md").read_text()
    card_data = ModelCard(text)
    assert hub.card_weights_problems(card, model, text, card_data) == []
    results = json.loads((card / "eval_results.json").read_text())
    metric = card_data.data.eval_results[0].metric_name
    results["metrics"][metric] = math.nan
    (card / "eval_results.json").write_text(json.dumps(results))
    (problem,) = hub.card_weights_problems(card, model, text, card_data)
    assert problem.startswith("README.md's model-index and eval_results.json give other numbers (") \
        and f"{metric} {card_data.data.eval_results[0].metric_value} against nan" in problem, problem


# ------------------------------------------------------------------------------------------ the probe's timeout
@pytest.fixture
def probes(monkeypatch):
    """The probe online (no proxy, the default endpoint), its connection recorded: the list of timeouts asked."""
    from net_fakes import FakeConnection
    from tests.test_pretrained_cache import PROXY_VARS

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for var in PROXY_VARS + ("HF_ENDPOINT", "ZOO_HUB_PROBE_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    asked = []

    def create_connection(address, timeout=None):
        asked.append(timeout)
        return FakeConnection()

    monkeypatch.setattr(pretrained.socket, "create_connection", create_connection)
    return asked


@pytest.mark.parametrize("value", ["abc", "", "0", "-1", "nan", "inf", "1e400"])
def test_a_probe_timeout_setting_that_is_no_number_of_seconds_is_named(probes, monkeypatch, value):
    """``ZOO_HUB_PROBE_TIMEOUT=abc`` was "could not convert string to float: 'abc'" naming no setting; ``-1`` and
    ``nan`` reached the socket (its "Timeout value out of range", or a DNS failure first, read as the Hub not being
    reachable). Each is a ValueError naming the setting and its value now, before any connection."""
    monkeypatch.setenv("ZOO_HUB_PROBE_TIMEOUT", value)
    with pytest.raises(ValueError, match=re.escape(f"ZOO_HUB_PROBE_TIMEOUT={value!r}: not a number of seconds > 0")):
        pretrained.hub_reachable()
    assert probes == []


def test_the_probe_timeout_argument_wins_over_the_setting(probes, monkeypatch):
    """The setting (else 1.5 s) when no ``timeout`` is passed; an explicit ``timeout`` argument wins over the setting
    (it was the other way round: the argument was only the fallback), and is checked the same way."""
    assert pretrained.hub_reachable() is True and probes == [1.5]
    monkeypatch.setenv("ZOO_HUB_PROBE_TIMEOUT", " 2.5 ")
    assert pretrained.hub_reachable() is True and probes == [1.5, 2.5]
    assert pretrained.hub_reachable(timeout=0.25) is True and probes == [1.5, 2.5, 0.25]
    for bad in (0, -1.0, math.nan, "x"):
        with pytest.raises(ValueError, match=re.escape(f"hub_reachable(timeout=...)={bad!r}: not a number of seconds")):
            pretrained.hub_reachable(timeout=bad)
    assert probes == [1.5, 2.5, 0.25]


def test_recommend_names_a_bad_probe_timeout_setting(probes, monkeypatch, capsys):
    """On the command line (a Hub name not cached, online): one line naming the setting, status 1."""
    from zoo import recommend

    monkeypatch.setenv("ZOO_HUB_PROBE_TIMEOUT", "abc")
    with pytest.raises(SystemExit) as e:
        recommend.main(["--model", "someone/x", "--history", "1", "2", "3"])
    err = capsys.readouterr().err + (e.value.code if isinstance(e.value.code, str) else "")
    assert e.value.code in (1, err) and "ZOO_HUB_PROBE_TIMEOUT='abc': not a number of seconds > 0" in err, err
    assert "Traceback" not in err and probes == []


# --------------------------------------------------------------------------------------- bench_prefix_objective
def test_prefix_objective_bench_fails_on_a_nan_loss(monkeypatch, tmp_path, capsys):
    """``if diff > 1e-5`` passed a NaN loss (``nan > 1e-5`` is False) and wrote the table as verified; a NaN
    difference is a failed verification now (exit 3, no results file)."""
    from tests.test_bench import _bench

    b = _bench("bench_prefix_objective", monkeypatch)
    tiny = dict(n_items=40, max_seq_length=8, hidden_size=16, num_layers=1, d_state=8, head_dim=8, chunk_size=4)
    monkeypatch.setattr(b, "CONFIGS", {"tiny": (tiny, 2, (3,))})

    class NaNLoss(b.PaddedTiM4Rec):
        def encode(self, *a, **k):
            return super().encode(*a, **k) * math.nan

    monkeypatch.setattr(b, "PaddedTiM4Rec", NaNLoss)
    out = tmp_path / "p.md"
    with pytest.raises(SystemExit) as e:
        b.main(["--repeats", "1", "--markdown", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 3 and err.startswith("error: tiny n=3: the two computations disagree (loss diff nan)"), err
    assert not out.exists()
