"""The documentation's commands and code stay true to the code.

Every ``python -m zoo.X`` / ``python -m export.X`` / ``python bench/X.py`` / ``python plugins/X.py`` command written
in the project's Markdown files (README, export and plugin READMEs, every model card -- whose training command is the
card's reproduction recipe --, the benchmark results) and in its shell scripts is parsed by that command's own
argument parser, as a user pasting it would have it parsed (nothing after parsing runs). A renamed flag, a dropped
choice or a misspelt value therefore fails here, naming the file and line, instead of failing a user. Commands with
shell variables (``$common``) or elisions (``...``) cannot be parsed whole; each of their ``--flags`` must still be an
option of the command. ``zoo.train``'s ``--set KEY=VALUE`` fields are also checked against the model's config.

The README's Python example runs as written, on the bundled model, and its stepwise logits equal a full forward;
every model card's Python blocks run as written from the card's folder (the time-aware cards' example once called
``recommend`` without the timestamps their models require).
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

DOC_GLOBS = ("README.md", "export/README.md", "zoo/models/README.md", "plugins/**/README.md", "hub_cards/*/README.md",
             "bench/*.md", "tests/data/*/README.md", "bench/*.sh", ".ci/run")

# the command's start: a module run with -m, or a script of the tree
COMMAND = re.compile(r"python3? (?:-m ((?:zoo|export)\.[a-z_]+)\b|((?:bench|plugins)/[a-z_]+\.py)\b)")
# what ends a command: a newline (an escaped one was blanked before), a shell separator, a comment, a code span's end
COMMAND_END = re.compile(r"\n|;|&&|\|\||\||\s#|`|\)")


def _segments(path: Path) -> list[tuple[int, str, bool]]:
    """``(offset, text, inline)`` of the parts of ``path`` that hold commands: the whole file for a script; for Markdown, the
    fenced blocks and the inline code spans (a span may wrap over lines). Escaped newlines and a span's newlines
    become spaces of the same length, so offsets still give line numbers."""
    text = path.read_text()
    if path.suffix != ".md":
        return [(0, text.replace("\\\n", "  "), False)]
    segments = []            # (offset, text, inline)
    fence = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
    for m in fence.finditer(text):
        segments.append((m.start(1), m.group(1).replace("\\\n", "  "), False))
    outside = fence.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)     # same offsets, fences blanked
    for m in re.finditer(r"`([^`]+)`", outside):
        segments.append((m.start(1), m.group(1).replace("\n", " "), True))
    return segments


def documented_commands() -> list[tuple[str, int, str, str, bool]]:
    """``(file, line, target, arguments, inline)`` of every command found in :data:`DOC_GLOBS`; ``target`` is a
    module (``zoo.train``) or a script path (``bench/paired_table.py``); ``inline``: in a Markdown code span."""
    found = []
    files = sorted({p for g in DOC_GLOBS for p in ROOT.glob(g) if p.is_file()})
    for path in files:
        text = path.read_text()
        for offset, seg, inline in _segments(path):
            for m in COMMAND.finditer(seg):
                end = COMMAND_END.search(seg, m.end())
                args = seg[m.end(): end.start() if end else len(seg)]
                line = text.count("\n", 0, offset + m.start()) + 1
                found.append((str(path.relative_to(ROOT)), line, m.group(1) or m.group(2), args.strip(), inline))
    return found


COMMANDS = documented_commands()


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace | None):
        self.parser, self.namespace = parser, namespace


def load_script(target: str, monkeypatch):
    """A script of the tree (``bench/x.py``) loaded as ``python bench/x.py`` runs it: its folder first on
    ``sys.path`` (both undone after the test). Also used by ``tests/test_bench.py``."""
    path = ROOT / target
    monkeypatch.syspath_prepend(str(path.parent))
    name = "_script_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def _entry_point(target: str, monkeypatch):
    """The ``main`` a command line runs: ``zoo.train`` -> ``zoo.train.main``; ``bench/x.py`` -> that file's ``main``
    (:func:`load_script`)."""
    if not target.endswith(".py"):
        return importlib.import_module(target).main
    return load_script(target, monkeypatch).main


def _run_parser(target: str, argv: list[str], parse: bool, monkeypatch, required: bool = True) -> _Parsed:
    """Call the command's ``main`` with ``argv`` and stop it inside ``parse_args``: after parsing (``parse``) or
    before it (to read the parser's options). Raises SystemExit with argparse's message when parsing fails.
    ``required=False`` parses with no argument required (a command quoted in prose for one of its flags)."""
    original = argparse.ArgumentParser.parse_args

    def stop(self, args=None, namespace=None):
        if not required:
            for group in [*self._actions, *self._mutually_exclusive_groups]:
                group.required = False
        raise _Parsed(self, original(self, args, namespace) if parse else None)

    main = _entry_point(target, monkeypatch)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    monkeypatch.setattr(sys, "argv", [target, *argv])          # for a main() that reads sys.argv itself
    with pytest.raises(_Parsed) as info:
        main(argv) if inspect.signature(main).parameters else main()
    return info.value


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of ``parser`` and of its sub-commands."""
    options = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= _option_strings(sub)
    return options


def test_commands_are_found():
    """The extraction itself: the README's two first commands, a card's training command and a script's are seen
    (so that an extraction that finds nothing cannot pass the test below)."""
    seen = {(f, target, args) for f, _, target, args, _ in COMMANDS}
    assert ("README.md", "zoo.recommend", "--stepwise") in seen
    assert ("README.md", "bench/paired_table.py", "--update README.md") in seen
    cards = {f for f, _, target, _, _ in COMMANDS if target == "zoo.train" and f.startswith("hub_cards/")}
    assert {f"hub_cards/{p.name}/README.md" for p in (ROOT / "hub_cards").iterdir() if p.is_dir()} <= cards
    assert len(COMMANDS) >= 80, len(COMMANDS)


@pytest.mark.parametrize("doc,line,target,args,inline", COMMANDS,
                         ids=[f"{f}:{line}:{t}" for f, line, t, _, _ in COMMANDS])
def test_documented_command_parses(doc, line, target, args, inline, monkeypatch, capsys):
    """A command line of a code block or script must parse whole; one quoted in a prose code span may leave out
    required arguments (`python -m export.onnx --time-input gaps`), but what it shows must parse."""
    where = f"{doc}:{line}: python {'-m ' if not target.endswith('.py') else ''}{target} {args}"
    argv = [t.strip("[]") for t in shlex.split(args)]              # [--flag VALUE]: an optional part, shown
    argv = [t for t in argv if t]
    if not argv:                                                   # a mention of the command, not a command line
        assert callable(_entry_point(target, monkeypatch)), where
        return
    if any("$" in t or t == "..." for t in argv):                  # not parseable whole: its flags must exist
        parser = _run_parser(target, [], parse=False, monkeypatch=monkeypatch).parser
        options = _option_strings(parser)
        unknown = [t for t in argv if t.startswith("--") and t.split("=")[0] not in options]
        assert not unknown, f"{where}\n  unknown options {unknown}"
        return
    try:
        parsed = _run_parser(target, argv, parse=True, monkeypatch=monkeypatch, required=not inline).namespace
    except SystemExit as e:
        pytest.fail(f"{where}\n  does not parse (exit {e.code}): {capsys.readouterr().err.strip()}")
    if target == "zoo.train" and parsed.set:
        from zoo.models import get_model_class
        from zoo.train import check_config_overrides, parse_overrides

        check_config_overrides(get_model_class(parsed.model)[0], parse_overrides(parsed.set), where=where)


def test_parse_check_can_fail(monkeypatch, capsys):
    """The parse check rejects what a user's shell would have rejected: an unknown flag, a bad choice, and (for
    ``zoo.train``) a ``--set`` field the model's config does not have."""
    with pytest.raises(SystemExit):
        _run_parser("zoo.evaluate", ["--model", "m", "--data", "d", "--no-such-flag"], True, monkeypatch)
    assert "--no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run_parser("zoo.train", ["--model", "m", "--data", "d", "--out", "o", "--lr-schedule", "step"], True,
                    monkeypatch)
    assert "invalid choice: 'step'" in capsys.readouterr().err
    parsed = _run_parser("zoo.train", ["--model", "sasrec", "--data", "d", "--out", "o", "--set", "hiden_dropout=0.1"],
                         True, monkeypatch).namespace
    from zoo.models import get_model_class
    from zoo.train import check_config_overrides, parse_overrides

    with pytest.raises(ValueError, match="hiden_dropout"):
        check_config_overrides(get_model_class("sasrec")[0], parse_overrides(parsed.set), where="doc")
    with pytest.raises(SystemExit):                                 # a code block's command must be whole
        _run_parser("export.onnx", ["--time-input", "gaps"], True, monkeypatch)
    assert "required: --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):                                 # a prose mention's values are still checked
        _run_parser("export.onnx", ["--time-input", "deltas"], True, monkeypatch, required=False)
    assert "invalid choice: 'deltas'" in capsys.readouterr().err
    hub = _option_strings(_run_parser("zoo.hub", [], False, monkeypatch).parser)
    assert {"--run", "--repo-id", "--keep-notes"} <= hub               # sub-commands' options are collected


def test_readme_python_example_runs():
    """README's "Use" block, run as written (bundled Mamba4Rec, no network), then checked: ten recommendations, and
    the two ``step`` calls' logits equal a full forward over the same six items (the central invariant)."""
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    assert blocks, "README.md has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md:python", "exec"), namespace)
    model, rec, logits = namespace["model"], namespace["rec"], namespace["logits"]
    assert len(rec.items) == 1 and len(rec.items[0]) == 10 and len(rec.scores[0]) == 10
    assert not {1, 588, 364, 595, 480} & set(rec.items[0])                      # exclude_seen=True
    ids = model.encode_histories([[1, 588, 364, 595, 480, 2571]])
    with torch.no_grad():
        full = model(torch.tensor(ids), attention_mask=torch.ones(1, 6, dtype=torch.long)).logits
    assert logits.shape == full.shape == (1, model.config.n_items)
    torch.testing.assert_close(logits, full, atol=1e-4, rtol=0)


def test_readme_catalogue_example_runs():
    """README's "A catalogue that gains items" block, run as written: the two ids get the rows after the bundled
    model's 3,416 items, and the old items' scores are those of the model as loaded, to float rounding (the new ones
    are not in the top 10)."""
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
              if "add_items" in b]
    assert len(blocks) == 1, "README.md: expected one python block with add_items"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md:python (catalogue)", "exec"), namespace)
    model, added, grown = namespace["model"], namespace["added"], namespace["grown"]
    assert added == [5001, 5002] and model.item_vocab.encode(added) == [3417, 3418] and model.config.n_items == 3419
    from transformers import AutoModel

    as_loaded = AutoModel.from_pretrained("ssm-rec-zoo/mamba4rec-ml1m").recommend([[1, 588, 364]], k=10)
    assert grown.items == as_loaded.items and not {5001, 5002} & set(grown.items[0])
    torch.testing.assert_close(grown.scores, as_loaded.scores, atol=1e-5, rtol=0)   # a wider matmul rounds anew


def test_readme_retrieval_example_runs():
    """README's "Retrieval vectors and similar items" block, run as written after the "Use" block (whose ``model`` it
    takes): the inner products are the model's logits of every item, and the similar items are two lists of ten."""
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    vectors = [b for b in blocks if "user_vectors" in b]
    assert len(vectors) == 1, "README.md: expected one python block with user_vectors"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md:python", "exec"), namespace)
    exec(compile(vectors[0], "README.md:python (vectors)", "exec"), namespace)
    model, scores, items = namespace["model"], namespace["scores"], namespace["items"]
    ids, mask = model.pad_batch(model.encode_histories([[1, 588, 364, 595, 480]]))
    with torch.no_grad():
        logits = model(ids, mask).logits
    assert items.ids == model.decode_items(range(1, model.config.n_items))
    torch.testing.assert_close(scores, logits[:, 1:], atol=1e-5, rtol=0)
    similar = model.similar_items([1, 2571], k=10)
    assert [len(x) for x in similar.items] == [10, 10] and 1 not in similar.items[0]


CARDS = sorted(p.parent.name for p in (ROOT / "hub_cards").glob("*/README.md"))


@pytest.mark.parametrize("card", CARDS)
def test_card_python_examples_run(card, monkeypatch, capsys):
    """Every Python block of a model card runs as written, from the card's folder (where its ``onnx`` paths point),
    and loads that card's own model: ten recommendations printed for the example history (a time-aware model's
    example passes timestamps; the history's ids are the model's dataset's)."""
    folder = ROOT / "hub_cards" / card
    blocks = re.findall(r"^```python\n(.*?)^```", (folder / "README.md").read_text(), re.S | re.M)
    assert blocks, f"hub_cards/{card}/README.md has no python block"
    monkeypatch.chdir(folder)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"hub_cards/{card}/README.md:python[{i}]", "exec"), namespace)
    model = namespace["model"]
    assert model.config.model_type == json.loads((folder / "config.json").read_text())["model_type"]
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(ast.literal_eval(printed[0])[0]) == 10, printed


def test_card_example_uses_the_models_own_ids_and_time(tmp_path):
    """The generated example: ML-1M's example ids when the vocabulary has them, else the vocabulary's first three
    (a Beauty ASIN vocabulary), and timestamps exactly for the models that read time (TiM4Rec with ``is_time``)."""
    from zoo.hub import EXAMPLE_ITEMS, _usage_example
    from zoo.vocab import ItemVocab

    ItemVocab(["B0001", "B0002", "B0003", "B0004"]).save(str(tmp_path))
    line = _usage_example(tmp_path, {"model_type": "sasrec"})
    assert line.startswith('print(model.recommend([["B0001", "B0002", "B0003"]], k=10).items)')
    ItemVocab(list(range(1, 200))).save(str(tmp_path))
    assert f"recommend({json.dumps([EXAMPLE_ITEMS])}, k=10)" in _usage_example(tmp_path, {"model_type": "mamba4rec"})
    assert "timestamps=[[978300760, 978302109, 978824268]]" in _usage_example(tmp_path, {"model_type": "tim4rec"})
    assert "timestamps=" in _usage_example(tmp_path, {"model_type": "tim4rec_causal"})
    assert "timestamps=" not in _usage_example(tmp_path, {"model_type": "tim4rec", "is_time": False})


def test_export_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    """export/README.md's ONNX Runtime examples run as written against the bundled graphs they stand for
    (``exported/mamba4rec`` = mamba4rec-ml1m's, ``exported/tim4rec_causal`` = tim4rec-causal-ml1m-u2999's)."""
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "export" / "README.md").read_text(), re.S | re.M)
    assert len(blocks) == 2, len(blocks)
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "mamba4rec").symlink_to(ROOT / "hub_cards" / "mamba4rec-ml1m" / "onnx")
    (tmp_path / "exported" / "tim4rec_causal").symlink_to(ROOT / "hub_cards" / "tim4rec-causal-ml1m-u2999" / "onnx")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "export/README.md:python", "exec"), namespace)
    out = namespace["out"]
    # the Mamba4Rec lines alone: the event after priming is an external id too, mapped as the history was
    mamba: dict = {}
    exec(compile(blocks[0].split("\n\n")[0], "export/README.md:python (Mamba4Rec)", "exec"), mamba)
    sess = mamba["sess"]
    want = sess.step(sess.encode([[1270]]), sess.prime(sess.encode([[3186, 1022, 2355]])).state)
    assert mamba["out"].topk_ids.tolist() == want.topk_ids.tolist()
    assert out.topk_ids.shape == (1, 10) and out.state["last_ts"].dtype.name == "float64"
    assert float(out.state["last_ts"][0, 0]) == 1.6e9 + 90000
    printed = capsys.readouterr().out
    assert printed.count("[") >= 2, printed                    # the Mamba4Rec step's decoded ids and scores
    # the UserStateRecommender block, with a dict as the store: both users stored, tagged with the graph's fingerprint
    users: dict = {"my_store": {}}
    exec(compile(blocks[1], "export/README.md:python (users)", "exec"), users)
    spec = json.loads((ROOT / "hub_cards" / "mamba4rec-ml1m" / "onnx" / "state_spec.json").read_text())
    assert set(users["my_store"]) == {"user-42", "user-7"}
    assert all(str(st["state_fingerprint"]) == spec["state_fingerprint"] for st in users["my_store"].values())


def test_export_readme_states_export_models_signature_and_every_option(monkeypatch):
    """export/README.md's ``export_model(...)`` line is the function's signature (every parameter, in order, with its
    default), and its commands and Options paragraph name every flag of ``python -m export.onnx``."""
    import export.onnx as E

    text = (ROOT / "export" / "README.md").read_text()
    shown = re.search(r"`export\.onnx\.export_model\((.*?)\)` returns", text, re.S)
    assert shown, "export/README.md: no export_model(...) signature"
    params = [a.strip() for a in " ".join(shown.group(1).split()).split(", ")]
    sig = inspect.signature(E.export_model).parameters
    assert [a.split("=")[0] for a in params] == list(sig), params
    for a in params[2:]:
        name, value = a.split("=")
        assert value.replace('"', "'") == repr(sig[name].default), a
    options = text.split("**Size.**")[0]
    parser = _run_parser("export.onnx", [], False, monkeypatch).parser
    missing = [o for o in _option_strings(parser) if o.startswith("--") and o != "--help"
               and not re.search(rf"(?<![\w-]){o}(?![\w-])", options)]
    assert not missing, f"export/README.md does not name {missing}"


def test_console_scripts_exit_0_after_a_successful_run(monkeypatch, capsys, request):
    """pyproject's console scripts run as pip's wrappers run them, ``sys.exit(entry())``: status 0 after success
    (they pointed at the ``main`` functions, whose returned dict -- the recommendations, a run's log, the metrics --
    became an exit status of 1 and a dict dumped on stderr), and each runs its own command (its argv reaches it).
    pyproject.toml is read with tomllib (Python 3.11+), else its backport tomli (Python 3.10, which the project
    supports: requires-python >= 3.10), else the test is skipped naming them."""
    try:
        import tomllib
    except ImportError:
        tomllib = pytest.importorskip("tomli", reason=f"Python {sys.version.split()[0]} has no tomllib (3.11+) to read "
                                      "pyproject.toml, and its backport tomli is not installed: pip install tomli")

    import export.fsutil
    from export.fsutil import SCRIPTS

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert set(scripts) == set(SCRIPTS.values())
    # the wrappers mark the process as run by a script (usage lines then name it): undone at the end, or later tests'
    # `python -m` usage lines would name the last script
    request.addfinalizer(lambda saved=export.fsutil._running_script: setattr(export.fsutil, "_running_script", saved))
    for module_name, name in SCRIPTS.items():
        module, attr = scripts[name].split(":")
        entry = getattr(importlib.import_module(module), attr)
        command = importlib.import_module(module_name)
        seen = []
        # a zoo command's main returns its result (a dict: status 0), an exporter's its exit status
        result = 3 if module_name.startswith("export.") else {"a": "result"}
        monkeypatch.setattr(command, "main", lambda argv=None: seen.append(sys.argv[1:]) or result)
        monkeypatch.setattr(sys, "argv", [name, "--flag"])
        with pytest.raises(SystemExit) as exit_:
            sys.exit(entry())
        want = (3,) if module_name.startswith("export.") else (None, 0)
        assert exit_.value.code in want and seen == [["--flag"]], (name, exit_.value.code, seen)
        monkeypatch.undo()
    capsys.readouterr()
    recommend = getattr(importlib.import_module("zoo.cli"), "recommend_script")
    monkeypatch.setattr(sys, "argv", ["zoo-recommend", "--history", "1", "588", "364"])
    with pytest.raises(SystemExit) as exit_:
        sys.exit(recommend())
    out = capsys.readouterr()
    assert exit_.value.code is None and out.err == "" and "588" in out.out, out


def _code_span_commands(text: str, target: str) -> list[list[str]]:
    """The argument lists of the ``python -m <target>`` commands of ``text``'s code spans and blocks."""
    found = []
    for m in re.finditer(rf"python -m {re.escape(target)} ([^`\n]*(?:\n[^`\n]*)*?)`", text):
        found.append(shlex.split(m.group(1).replace("\n", " ")))
    return found


@pytest.mark.parametrize("card", CARDS)
def test_card_commands_name_the_data_file_they_were_measured_with(card):
    """The cards' "Measured by" and baseline commands gave a bare ``--data ml-1m.5core.seq.gz``, which fails as
    written (the CLIs read no data folder) while the same card's training command names ``../shared/data/...``: every
    ``zoo.evaluate`` command of a card (and of its eval_results.json) names the path its training command does."""
    folder = ROOT / "hub_cards" / card
    text = (folder / "README.md").read_text()
    train = re.search(r"^- Command: `python -m zoo\.(?:train|soup) (.*?)`$", text, re.M)
    assert train, f"hub_cards/{card}: no training command"
    argv = shlex.split(train.group(1))
    data = argv[argv.index("--data") + 1]
    assert "/" in data, data
    info = json.loads((folder / "eval_results.json").read_text())
    commands = [shlex.split(c)[3:] for c in (info["protocol"]["command"],
                                             *(b["command"] for b in info["baselines"].values()),
                                             *([info["reference_protocol"]["command"]]
                                               if "reference_protocol" in info else []))]
    commands += _code_span_commands(text, "zoo.evaluate")
    checked = [a for a in commands if "--data" in a]
    assert len(checked) >= 6, checked                           # the card's own three, twice
    for a in checked:
        assert a[a.index("--data") + 1] in (data, "FILE") or "..." in a, (card, a)


@pytest.mark.parametrize("command,option,says", [
    ("zoo.recommend", "--k", "default 10"),
    ("zoo.compare", "--ks", "default: 10 20"),
    ("zoo.soup", "--method", "greedy (default"),
    ("export.perf_data", "--users", "default 256"),
    ("export.perf_data", "--events", "default 10"),
    ("export.perf_data", "--prime", "default 200"),
    ("zoo.evaluate", "--intervals", "half-width"),
    ("zoo.evaluate", "--intervals", "exact, possibly asymmetric, bounds"),
    ("zoo.embed", "--data", "last max_seq_length items"),
    ("zoo.recommend", "--all-users", "last max_seq_length items"),
    ("zoo.hub", "--out", "under the current directory"),
])
def test_help_states_defaults_and_what_is_printed(command, option, says, monkeypatch):
    """Options whose ``--help`` gave no default (README refers to them), ``--intervals``' printed half-widths against
    the JSON's exact bounds, and the windows batch mode and user vectors are read from."""
    parser = _run_parser(command, [], False, monkeypatch).parser
    actions = [a for p in [parser, *(s for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                                     for s in a.choices.values())] for a in p._actions if option in a.option_strings]
    assert actions, (command, option)
    assert any(says in " ".join((a.help or "").split()) for a in actions), [a.help for a in actions]


def test_readme_batch_mode_and_overwrite_rule_say_what_the_commands_do():
    """README said batch mode recommends "from their whole history" (it scores the last max_seq_length items; only
    --exclude-seen reads the whole history), and presented --overwrite as the rule for replacing a folder without
    saying that export.onnx re-exports into an --out that holds another export (by design)."""
    text = " ".join((ROOT / "README.md").read_text().split())
    assert "every user of a file from their whole history" not in text
    assert "every user of a file, scored from the last `max_seq_length` items of their history" in text
    rule = text.split("replace a folder that already holds files only with `--overwrite`")[1][:1500]
    assert "`python -m export.onnx` is not one of them" in rule and "writes `hub_cards/<name>` under the current" \
        in rule


def test_export_readme_examples_use_bundled_ids_or_say_the_run_is_yours():
    """export/README.md's first block loaded ``runs/...`` checkpoints a new user does not have; its commands use the
    bundled models (``org/<name>``), and the one that needs a run of one's own says so."""
    from zoo.pretrained import PLACEHOLDER_ORGS, bundled_models

    block = re.search(r"^```bash\n(.*?)^```", (ROOT / "export" / "README.md").read_text(), re.S | re.M).group(1)
    for line in block.splitlines():
        if "python -m export.onnx" not in line:
            continue
        model = shlex.split(line.split("#")[0])[4]
        org, _, name = model.partition("/")
        assert (org in PLACEHOLDER_ORGS and name in bundled_models()) or "your own run" in line, line
