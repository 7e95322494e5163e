"""``python -m zoo.recommend`` records which checkpoint it read: ``--revision`` / ``--subfolder`` beside ``model`` in
every mode's JSON (one history, ``--similar-to``, the ``--all-users`` summary), as zoo.evaluate, zoo.embed and
zoo.train record them; neither key when not given. No network: the Hub is an offline cache built locally."""

import pytest
import torch

from test_pretrained_cache import PROXY_VARS, files_of, snapshot, tiny
from zoo.recommend import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def nested(tmp_path):
    """A folder holding a tiny Mamba4Rec (ids 100-128) in ``sub/`` only, and interactions of its items."""
    torch.manual_seed(0)
    tiny().save_pretrained(tmp_path / "nested" / "sub")
    data = tmp_path / "d.tsv"
    data.write_text("user_id\titem_id\ttimestamp\n" + "".join(f"u{u}\t{100 + (u + t) % 9}\t{1000 + t}\n"
                                                              for u in range(3) for t in range(5)))
    return tmp_path / "nested", data


def _modes(model: str, data, tmp_path, *hub: str) -> list[dict]:
    """The JSON of each mode of zoo.recommend for ``--model model`` and the ``hub`` options."""
    one = main(["--model", model, *hub, "--history", "100", "101", "--k", "3", "--json"])
    similar = main(["--model", model, *hub, "--similar-to", "100", "--k", "3", "--json"])
    summary = main(["--model", model, *hub, "--data", str(data), "--all-users", "--out", str(tmp_path / "r.jsonl"),
                    "--no-progress", "--kcore", "none", "--k", "3", "--json"])
    return [one, similar, summary]


def test_subfolder_is_recorded_in_every_mode(nested, tmp_path, capsys):
    """``--subfolder sub`` was not in zoo.recommend's JSON (zoo.evaluate's and zoo.embed's have it): the record did
    not say which checkpoint of the folder ranked the items."""
    folder, data = nested
    outs = _modes(str(folder), data, tmp_path, "--subfolder", "sub")
    printed = capsys.readouterr().out
    for out in outs:
        assert out["model"] == str(folder) and out["subfolder"] == "sub" and "revision" not in out, out
    assert printed.count('"subfolder": "sub"') == 3, printed
    for out in _modes(str(folder / "sub"), data, tmp_path):                    # not given: not recorded
        assert "subfolder" not in out and "revision" not in out, out


def test_revision_is_recorded(nested, tmp_path, monkeypatch, capsys):
    """``--revision v1`` of a Hub id (an offline cache) is recorded as ``revision``, beside ``subfolder``."""
    import huggingface_hub.constants as c

    folder, data = nested
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in PROXY_VARS + ("HF_ENDPOINT", "ZOO_HUB_PROBE_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    snapshot(tmp_path / "hf", "acme/nested", files_of(folder / "sub", "sub/"), rev="d" * 40, refs=("v1",))
    outs = _modes("acme/nested", data, tmp_path, "--revision", "v1", "--subfolder", "sub")
    for out in outs:
        assert out["revision"] == "v1" and out["subfolder"] == "sub", out
    assert capsys.readouterr().out.count('"revision": "v1"') == 3                # what each mode printed
