"""zoo.hub's JSON reads go through the project's one reader (export.fsutil.read_json): a run's log, a card's training
history or eval results, a soup log or a model config that is not UTF-8, not JSON, nested too deeply (``[[[...]]]``,
a RecursionError traceback before) or no JSON object is one line naming the file, exit status 1 on the command
line."""

import json
import re
from pathlib import Path

import pytest

from zoo import hub

#: corrupt contents of a JSON file, and what the one line says of each
CORRUPT = {
    "not UTF-8": (b'\xff\xfe{"stages": []}', "'utf-8' codec can't decode byte 0xff"),
    "not JSON": (b'{"stages": [', "Expecting value: line 1 column 13"),
    "nested too deeply": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply to read"),
    "no JSON object": (b"[1, 2]", "a JSON list, not a JSON object"),
}


def _card_folder(folder: Path, **files) -> Path:
    """A folder that passes ``zoo.hub card``'s checks before the training history is read (a config recording no
    vocabulary file, weights, a vocabulary), with ``files`` (name -> bytes or a JSON value) written into it."""
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "sasrec"}')
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "item_vocab.json").write_text("[]")
    for name, content in files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return folder


def _case(tmp_path: Path, place: str, content: bytes) -> tuple[list[str], str, Path]:
    """``(argv, what, path)``: a ``zoo.hub card`` command that reaches ``place`` with ``content`` in the file
    ``path``, and the words the message names that file by."""
    if place == "card history":                 # --run a card folder: training_stages reads its training_log.json
        run = _card_folder(tmp_path / "card", **{hub.STAGES_FILE: content})
        return [str(run), str(tmp_path / "out")], "the card's training history", run / hub.STAGES_FILE
    if place == "soup log":                     # --run a zoo.soup folder: training_stages reads its soup_log.json
        run = _card_folder(tmp_path / "soup", **{hub.SOUP_LOG: content})
        return [str(run), str(tmp_path / "out")], "the soup log", run / hub.SOUP_LOG
    if place == "init_from log":                # --run a finished run: training_stages follows its --init-from
        start = _card_folder(tmp_path / "start", **{"train_log.json": content})
        run = _card_folder(tmp_path / "run", **{"train_log.json": {
            "command": "train run", "init_from": str(start), "stopped": "max epochs", "best_epoch": 1, "test": {}}})
        return [str(run), str(tmp_path / "out")], "the training log", start / "train_log.json"
    assert place == "eval results"              # a card re-measured in place: _check_same_protocol reads its results
    card = _card_folder(tmp_path / "card", **{hub.STAGES_FILE: {"stages": [{"command": "train card"}]},
                                              "eval_results.json": content})
    return [str(card), str(card)], "the card's eval results", card / "eval_results.json"


@pytest.mark.parametrize("corrupt", list(CORRUPT))
@pytest.mark.parametrize("place", ["card history", "soup log", "init_from log", "eval results"])
def test_card_names_a_json_file_it_cannot_read_in_one_line(tmp_path, place, corrupt):
    """``zoo.hub card`` reaching each of training_stages' reads (a card's training_log.json, a soup_log.json, the
    train_log.json of the run an --init-from names) and _check_same_protocol's (eval_results.json): a traceback for
    ``[[[...]]]`` (RecursionError), a line that named no file for the rest; now one line naming the file and the
    problem, status 1, and nothing written."""
    content, reason = CORRUPT[corrupt]
    (run, out), what, path = _case(tmp_path, place, content)
    before = sorted(p.name for p in Path(out).iterdir()) if Path(out).is_dir() else None
    with pytest.raises(SystemExit) as e:
        hub.main(["card", "--run", run, "--name", "tiny", "--data", str(tmp_path / "d.tsv"), "--out", out])
    said = e.value.code
    assert isinstance(said, str) and "\n" not in said, said                         # sys.exit(line): status 1
    assert said.startswith(f"card not written: {what} {path}: cannot read it (") and reason in said, said
    assert (sorted(p.name for p in Path(out).iterdir()) if Path(out).is_dir() else None) == before


@pytest.mark.parametrize("corrupt", list(CORRUPT))
def test_list_names_a_bundled_folder_it_cannot_read_and_lists_the_others(tmp_path, monkeypatch, capsys, corrupt):
    """``zoo.hub list`` over a bundled folder whose config.json or eval_results.json is corrupt (card_summary): it
    was a traceback; now one line per such folder on stderr naming the file, the readable folders still listed on
    stdout, and status 1."""
    content, reason = CORRUPT[corrupt]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    good = _card_folder(bundle / "aaa-good")
    config = _card_folder(bundle / "broken-config", **{"config.json": content})
    results = _card_folder(bundle / "broken-results", **{"eval_results.json": content})
    monkeypatch.setenv("ZOO_BUNDLED_DIR", str(bundle))
    with pytest.raises(SystemExit) as e:
        hub.main(["list"])
    out, err = capsys.readouterr()
    assert e.value.code == 1 and "Traceback" not in err, err
    assert f"{hub.HUB_ORG}/aaa-good\t{good}\tsasrec\t-\t-\t-\t-" in out.splitlines(), out
    assert "broken" not in out, out
    lines = err.splitlines()
    assert len(lines) == 2, err
    for line, name, what, path in [(lines[0], "broken-config", "the model config", config / "config.json"),
                                   (lines[1], "broken-results", "the card's eval results",
                                    results / "eval_results.json")]:
        assert line.startswith(f"cannot list {hub.HUB_ORG}/{name}: {what} {path}: cannot read it (") \
            and reason in line, line


@pytest.mark.parametrize("corrupt", list(CORRUPT))
def test_make_card_names_a_config_it_cannot_read(tmp_path, corrupt):
    """The card writer's config.json read (make_card; on the command line the run's config is read and refused
    before, by check_card_vocabulary): a ValueError naming the file, not a RecursionError or a JSON error that named
    none; no README.md written."""
    content, reason = CORRUPT[corrupt]
    folder = _card_folder(tmp_path / "card", **{"config.json": content})
    with pytest.raises(ValueError) as e:
        hub.make_card(str(folder), "tiny", {"HR@10": 0.1}, {"name": "RecBole protocol"}, {}, {})
    assert re.match(re.escape(f"the model config {folder / 'config.json'}: cannot read it ("), str(e.value)) \
        and reason in str(e.value), str(e.value)
    assert not (folder / "README.md").exists()


def test_a_card_history_without_its_stages_is_named(tmp_path):
    """A card's training_log.json that is a JSON object without a list of stage logs: a KeyError ('stages') or a
    later crash before; now a ValueError naming the file."""
    for content in ({}, {"stages": []}, {"stages": [1]}):
        run = _card_folder(tmp_path / f"card{len(list(tmp_path.iterdir()))}", **{hub.STAGES_FILE: content})
        with pytest.raises(ValueError, match=re.escape(f"the card's training history {run / hub.STAGES_FILE}: cannot "
                                                       'read it (no "stages" list of stage logs')):
            hub.training_stages(run)
