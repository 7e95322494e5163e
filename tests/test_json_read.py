"""One refusal of a JSON document that cannot be read (``export.fsutil.read_json`` / ``parse_json`` /
``json_depth_guard``), shared by every reader of the zoo's JSON files: the item vocabulary, ``state_spec.json``, a
stored state's header, a model's ``config.json`` and weight index, and what ``zoo.hub`` reads from a run or card
folder. A file that is not UTF-8, not JSON, or nested too deeply (``[[[...]]]``: Python's JSON reader raised
``RecursionError``, a traceback from every command) is one line naming the file and the problem, in each reader's
own exception type, with the one wording "nested too deeply to read"."""

from __future__ import annotations

import json
import re

import pytest

from export.fsutil import (JSONNestedTooDeep, JSONReadError, json_depth_guard, json_too_deep_reason,
                           nested_deeper_than, parse_json, read_json)

#: deeper than Python's JSON reader goes (its RecursionError)
BOMB = "[" * 100_000 + "]" * 100_000
TOO_DEEP = "nested too deeply to read"


def test_parse_json_names_the_document_and_the_problem():
    assert parse_json('{"a": [1, 2]}', "x") == {"a": [1, 2]}
    assert parse_json(b'{"a": 1}', "x") == {"a": 1}                     # bytes as json.loads reads them
    cases = [("{oops", r"^doc: Expecting property name enclosed in double quotes: line 1 column 2 \(char 1\)$"),
             (b'{"a": "\x80"}', r"^doc: 'utf-8' codec can't decode byte 0x80 in position 7"),
             ("", r"^doc: Expecting value: line 1 column 1 \(char 0\)$"),
             (BOMB, rf"^doc: {TOO_DEEP}$")]
    for text, message in cases:
        with pytest.raises(JSONReadError, match=message) as e:
            parse_json(text, "doc")
        assert isinstance(e.value, ValueError) and e.value.what == "doc" and str(e.value) == f"doc: {e.value.reason}"
    with pytest.raises(JSONNestedTooDeep, match=rf"^doc: {TOO_DEEP}$"):
        parse_json(BOMB, "doc")
    deep = "[" * 5 + "]" * 5
    assert parse_json(deep, "doc", max_depth=5) == [[[[[]]]]]
    with pytest.raises(JSONNestedTooDeep, match=rf"^doc: {TOO_DEEP} \(more than 4 levels\)$"):
        parse_json(deep, "doc", max_depth=4)


def test_nested_deeper_than_counts_levels_without_recursion():
    assert not nested_deeper_than(7, 0) and not nested_deeper_than({}, 1) and nested_deeper_than({}, 0)
    assert not nested_deeper_than({"a": [1, {"b": 2}]}, 3) and nested_deeper_than({"a": [1, {"b": 2}]}, 2)
    assert nested_deeper_than(json.loads("[" * 900 + "]" * 900), 899)                       # no RecursionError
    assert json_too_deep_reason() == TOO_DEEP and json_too_deep_reason(100) == f"{TOO_DEEP} (more than 100 levels)"


def test_read_json_reads_utf8_text_and_leaves_a_missing_file_to_open(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}', encoding="utf-8")
    assert read_json(path) == {"a": 1}
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}')                  # a byte-order mark is no JSON (nor for transformers)
    with pytest.raises(JSONReadError, match=rf"^{re.escape(str(path))}: Unexpected UTF-8 BOM"):
        read_json(path)
    path.write_bytes(b"\x80")
    with pytest.raises(JSONReadError, match=r"^named: 'utf-8' codec can't decode byte 0x80 in position 0"):
        read_json(path, "named")
    path.write_text(BOMB)
    with pytest.raises(JSONNestedTooDeep, match=rf"^{re.escape(str(path))}: {TOO_DEEP}$"):
        read_json(path)
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")


def test_json_depth_guard_turns_a_readers_recursion_error_into_one_line():
    with pytest.raises(JSONNestedTooDeep, match=rf"^cfg.json: {TOO_DEEP}$"):
        with json_depth_guard("cfg.json"):
            json.loads(BOMB)
    called = []

    def what():
        called.append(1)
        return "lazy.json"

    with json_depth_guard(what):
        json.loads("[1]")
    assert not called                                              # named only when it is refused
    with pytest.raises(OSError, match=rf"^lazy.json! {TOO_DEEP} \(more than 3 levels\)$"):
        with json_depth_guard(what, 3, error=lambda w, r: OSError(f"{w}! {r}")):
            json.loads(BOMB)
    with pytest.raises(ValueError, match="^other$"):               # any other error goes on as it was
        with json_depth_guard("x"):
            raise ValueError("other")


# ------------------------------------------------------------------ every reader: its own type, the one wording
def test_the_vocabulary_and_the_state_header_refuse_a_bomb_in_the_one_wording(tmp_path):
    from export.state_store import from_bytes
    from export.vocab_format import load_vocab_json

    path = tmp_path / "item_vocab.json"
    path.write_text(BOMB)
    with pytest.raises(ValueError, match=rf"^corrupt item vocabulary {re.escape(str(path))}: {TOO_DEEP}$"):
        load_vocab_json(path)
    header = BOMB.encode()
    with pytest.raises(ValueError, match=rf"^not a stored zoo state: its header is not JSON: {TOO_DEEP}$"):
        from_bytes(len(header).to_bytes(4, "little") + header)
    with pytest.raises(ValueError, match=r"^not a stored zoo state: its header is not JSON: Expecting value: line 1 "
                                         r"column 1 \(char 0\)$"):
        from_bytes(b"\x05\x00\x00\x00hello")


def test_read_spec_refuses_a_bomb_naming_the_file_and_what_writes_it(tmp_path):
    runtime = pytest.importorskip("export.runtime")
    spec = tmp_path / "state_spec.json"
    spec.write_text(BOMB)
    with pytest.raises(ValueError, match=rf"^corrupt {re.escape(str(spec))}: {TOO_DEEP} \(a state_spec.json written "
                                         r"by python -m export.onnx\)$"):
        runtime.read_spec(spec)
    spec.write_text("{oops")
    with pytest.raises(ValueError, match=rf"^corrupt {re.escape(str(spec))}: Expecting property name enclosed in "
                                         r"double quotes: line 1 column 2 \(char 1\) \(a state_spec.json"):
        runtime.read_spec(spec)


def _tiny_saved(folder):
    from tiny_models import tiny

    from zoo.vocab import ItemVocab

    model = tiny("gru4rec")
    model.set_item_vocab(ItemVocab(list(range(100, 111))))
    model.save_pretrained(folder)
    return model


def test_a_config_json_bomb_is_the_invalid_json_oserror_on_every_loader(tmp_path):
    """transformers' own reader (AutoConfig, AutoModel) raised RecursionError; the zoo's loaders gave "nested more
    than 100 levels deep": one OSError, transformers' line for invalid JSON, with the one wording on each."""
    from transformers import AutoConfig

    from zoo.modeling_utils import SeqRecPreTrainedModel
    from zoo.models.gru4rec import GRU4RecConfig, GRU4RecModel

    _tiny_saved(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(BOMB)
    message = (rf"^It looks like the config file at '{re.escape(str(config))}' is not a valid JSON file: {TOO_DEEP} "
               r"\(more than 100 levels\)$")
    for load in (SeqRecPreTrainedModel.from_pretrained, GRU4RecModel.from_pretrained, GRU4RecConfig.from_pretrained):
        with pytest.raises(OSError, match=message):
            load(tmp_path)
    with pytest.raises(RecursionError):                  # transformers' own loader: the hub guards it (below)
        AutoConfig.from_pretrained(tmp_path)


def test_a_weight_index_bomb_names_the_index(tmp_path):
    from zoo.models.gru4rec import GRU4RecModel

    from tiny_models import tiny

    tiny("gru4rec").save_pretrained(tmp_path, max_shard_size="1KB")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(BOMB)
    with pytest.raises(ValueError, match=rf"^corrupt weight index {re.escape(str(index))}: {TOO_DEEP}$"):
        GRU4RecModel.from_pretrained(tmp_path)
    index.write_text("[1]")
    with pytest.raises(ValueError, match=rf"^corrupt weight index {re.escape(str(index))}: list indices must be"):
        GRU4RecModel.from_pretrained(tmp_path)


def test_the_hub_readers_refuse_a_bomb_in_one_line(tmp_path, monkeypatch):
    """zoo.hub read a card's state_spec.json, a run's config.json and train_log.json, and loaded a run or card with
    transformers' AutoModel: each [[[...]]] was a RecursionError traceback (or a wording of its own)."""
    from zoo import hub

    (tmp_path / "onnx").mkdir()
    spec = tmp_path / "onnx" / "state_spec.json"
    spec.write_text(BOMB)
    with pytest.raises(ValueError, match=rf"^corrupt {re.escape(str(spec))}: {TOO_DEEP}$"):
        hub.existing_onnx_exports(tmp_path)
    run = tmp_path / "run"
    _tiny_saved(run)
    (run / "README.md").write_text("---\n---\n")
    (run / "config.json").write_text(BOMB)
    config = re.escape(str(run / "config.json"))
    with pytest.raises(ValueError, match=rf"^the model config {config}: cannot read it \({TOO_DEEP}\)$"):
        hub.check_card_vocabulary(run)
    monkeypatch.setenv("HF_TOKEN", "")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(run))} does not load, so it is not pushed: {config}: "
                                         rf"{TOO_DEEP}$"):
        hub.push(str(run), "me/x")
    (run / "train_log.json").write_text(BOMB)
    log = re.escape(str(run / "train_log.json"))
    with pytest.raises(ValueError, match=rf"^the training log {log}: cannot read it \({TOO_DEEP}\)$"):
        hub.check_finished(run)
    assert hub.checkpoint_log(run) is None                          # a log that cannot be read: none, as documented

